/*
 * auth/master.c - opening, creating and deriving from the data directory's master key.
 */
#include "master.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#define MASTER_KEY_NAME   "master.key"
#define MASTER_CHECK_NAME "master.check"
#define MASTER_ENV_NAME   "INFERA_MASTER_KEY"
#define CHECK_LABEL       "infera/v1/master-check"
#define CHECK_HEX_LEN     64
#define PATH_CAP          4096

/* ------------------------------------------------------------------------------------------
 * Derivation
 * ---------------------------------------------------------------------------------------- */

int master_key_hkdf(const struct master_key *mk, const void *salt, size_t salt_len,
                    const void *info, size_t info_len, uint8_t *out, size_t out_len)
{
    if (mk == NULL || out == NULL || out_len == 0 || out_len > 255 * 32 || info_len > 1024 ||
        (salt == NULL && salt_len > 0) || (info == NULL && info_len > 0))
        return INF_EINVAL;
    int rc = INF_OK;
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *kctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    if (kctx == NULL) {
        rc = INF_ENOMEM;
        goto out;
    }
    OSSL_PARAM params[5];
    OSSL_PARAM *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ =
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)mk->bytes, sizeof mk->bytes);
    if (info_len > 0)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
    if (salt_len > 0)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
    *p = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(kctx, out, out_len, params) != 1)
        rc = INF_EIO;
out:
    EVP_KDF_CTX_free(kctx);
    EVP_KDF_free(kdf);
    return rc;
}

int master_key_derive(const struct master_key *mk, const char *purpose, uint8_t out[32])
{
    static const char prefix[] = "infera/v1/";
    char info[sizeof prefix - 1 + 256];
    if (purpose == NULL)
        return INF_EINVAL;
    size_t plen = strlen(purpose);
    if (plen == 0 || plen > 255)
        return INF_EINVAL;
    memcpy(info, prefix, sizeof prefix - 1);
    memcpy(info + sizeof prefix - 1, purpose, plen);
    return master_key_hkdf(mk, NULL, 0, info, sizeof prefix - 1 + plen, out, 32);
}

void master_key_wipe(struct master_key *mk)
{
    if (mk != NULL)
        OPENSSL_cleanse(mk->bytes, sizeof mk->bytes);
}

/* ------------------------------------------------------------------------------------------
 * Sources
 * ---------------------------------------------------------------------------------------- */

/* Reads a raw 32-byte key file. INF_ENOTFOUND if it does not exist. */
static int read_key_file(const char *path, struct master_key *out, struct err *e)
{
    int rc = INF_OK;
    uint8_t buf[MASTER_KEY_BYTES];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ENOENT)
            return err_set(e, INF_ENOTFOUND, "master key file %s does not exist", path);
        return err_set(e, INF_EIO, "master key file %s: %s", path, strerror(errno));
    }
    /* fstat on the open descriptor: what we check is what we read. */
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = err_set(e, INF_EIO, "master key file %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(e, INF_EINVAL, "master key file %s is not a regular file", path);
        goto out;
    }
    if ((st.st_mode & 077) != 0) {
        rc = err_set(e, INF_EINVAL,
                     "master key file %s has mode %04o: it is %s by group or others, which a "
                     "secret must not be; run: chmod 600 %s",
                     path, (unsigned)(st.st_mode & 07777),
                     (st.st_mode & 044) != 0 ? "readable" : "writable or executable", path);
        goto out;
    }
    if (st.st_size != MASTER_KEY_BYTES) {
        rc = err_set(e, INF_EINVAL,
                     "master key file %s is %lld bytes; it must hold exactly %d raw random bytes%s",
                     path, (long long)st.st_size, MASTER_KEY_BYTES,
                     st.st_size == 2 * MASTER_KEY_BYTES || st.st_size == 2 * MASTER_KEY_BYTES + 1
                         ? " (it looks like hex: pass hex keys in " MASTER_ENV_NAME " instead)"
                         : "");
        goto out;
    }
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = read(fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = err_set(e, INF_EIO, "master key file %s: %s", path,
                         n < 0 ? strerror(errno) : "file shrank while being read");
            goto out;
        }
        got += (size_t)n;
    }
    memcpy(out->bytes, buf, sizeof buf);
out:
    OPENSSL_cleanse(buf, sizeof buf);
    close(fd);
    return rc;
}

/* Parses 64 hex digits (trailing whitespace allowed). Never echoes the value. */
static int parse_env_hex(const char *value, struct master_key *out, struct err *e)
{
    uint8_t buf[MASTER_KEY_BYTES];
    size_t len = strlen(value);
    while (len > 0 && (value[len - 1] == '\n' || value[len - 1] == '\r' || value[len - 1] == ' ' ||
                       value[len - 1] == '\t'))
        len--;
    if (len != 2 * MASTER_KEY_BYTES)
        return err_set(e, INF_EINVAL,
                       MASTER_ENV_NAME " must be %d hex digits (%d random bytes), it has %zu "
                                       "characters; make one with: openssl rand -hex %d",
                       2 * MASTER_KEY_BYTES, MASTER_KEY_BYTES, len, MASTER_KEY_BYTES);
    for (size_t i = 0; i < MASTER_KEY_BYTES; i++) {
        int hi = hex_digit(value[2 * i]), lo = hex_digit(value[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            OPENSSL_cleanse(buf, sizeof buf);
            return err_set(e, INF_EINVAL,
                           MASTER_ENV_NAME " must be %d hex digits; character %zu is not one",
                           2 * MASTER_KEY_BYTES, 2 * i + (hi < 0 ? 1 : 2));
        }
        buf[i] = (uint8_t)(hi << 4 | lo);
    }
    memcpy(out->bytes, buf, sizeof buf);
    OPENSSL_cleanse(buf, sizeof buf);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * The data directory
 * ---------------------------------------------------------------------------------------- */

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * *empty = data_dir does not exist or holds nothing but "lost+found" and leftovers of a
 * crashed write of our own files. Anything else (dotfiles too) counts as data.
 */
static int dir_is_empty(const char *data_dir, bool *empty, struct err *e)
{
    DIR *d = opendir(data_dir);
    if (d == NULL) {
        if (errno == ENOENT) {
            *empty = true;
            return INF_OK;
        }
        return err_set(e, INF_EIO, "data directory %s: %s", data_dir, strerror(errno));
    }
    bool found = false;
    struct dirent *de;
    errno = 0;
    while (!found && (de = readdir(d)) != NULL) {
        const char *n = de->d_name;
        if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0 || strcmp(n, "lost+found") == 0 ||
            starts_with(n, MASTER_KEY_NAME ".tmp.") || starts_with(n, MASTER_CHECK_NAME ".tmp."))
            continue;
        found = true;
    }
    int rc = INF_OK;
    if (!found && errno != 0)
        rc = err_set(e, INF_EIO, "data directory %s: %s", data_dir, strerror(errno));
    closedir(d);
    if (rc == INF_OK)
        *empty = !found;
    return rc;
}

/*
 * Creates path (in data_dir) holding a new random key, atomically and exclusively: the key is
 * written and fsynced under a temporary name, then hard-linked to path, which fails if path
 * appeared meanwhile. *lost_race is set when another process created path first; then nothing
 * is written and the caller reads that key instead. Where hard links are not supported the
 * link falls back to a rename (atomic, but no longer exclusive).
 */
static int create_key_file(const char *data_dir, const char *path, struct master_key *out,
                           bool *lost_race, struct err *e)
{
    int rc = INF_OK;
    struct master_key k;
    char tmp[PATH_CAP];
    int fd = -1;
    bool tmp_exists = false;
    *lost_race = false;
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    if (n < 0 || (size_t)n >= sizeof tmp)
        return err_set(e, INF_ELIMIT, "path too long: %s", path);
    if (RAND_bytes(k.bytes, sizeof k.bytes) != 1) {
        rc = err_set(e, INF_EIO, "cannot make a master key: the random generator failed");
        goto out;
    }
    fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
    if (fd < 0) {
        rc = err_set(e, INF_EIO, "cannot create %s: %s", tmp, strerror(errno));
        goto out;
    }
    tmp_exists = true;
    size_t done = 0;
    while (done < sizeof k.bytes) {
        ssize_t w = write(fd, k.bytes + done, sizeof k.bytes - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = err_set(e, INF_EIO, "write %s: %s", tmp, strerror(errno));
            goto out;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = err_set(e, INF_EIO, "fsync %s: %s", tmp, strerror(errno));
        goto out;
    }
    int closed = close(fd);
    fd = -1;
    if (closed != 0) {
        rc = err_set(e, INF_EIO, "close %s: %s", tmp, strerror(errno));
        goto out;
    }
    if (link(tmp, path) != 0) {
        if (errno == EEXIST) {
            *lost_race = true;
            goto out;
        }
        if (errno != EPERM && errno != EOPNOTSUPP && errno != ENOSYS) {
            rc = err_set(e, INF_EIO, "cannot create %s: %s", path, strerror(errno));
            goto out;
        }
        if (rename(tmp, path) != 0) {
            rc = err_set(e, INF_EIO, "cannot create %s: %s", path, strerror(errno));
            goto out;
        }
        tmp_exists = false;
    }
    rc = fs_fsync_dir(data_dir, e);
    if (rc == INF_OK)
        *out = k;
out:
    if (fd >= 0)
        close(fd);
    if (tmp_exists)
        unlink(tmp);
    master_key_wipe(&k);
    return rc;
}

/* hex(HMAC-SHA256(derive(mk, "master-check"), CHECK_LABEL)) into hex[65]. */
static int check_value(const struct master_key *mk, char hex[CHECK_HEX_LEN + 1], struct err *e)
{
    static const char digits[] = "0123456789abcdef";
    uint8_t k[32], mac[32];
    unsigned mac_len = 0;
    int rc = master_key_derive(mk, "master-check", k);
    if (rc != INF_OK) {
        rc = err_set(e, rc, "cannot derive the master key check value");
        goto out;
    }
    if (HMAC(EVP_sha256(), k, sizeof k, (const unsigned char *)CHECK_LABEL, sizeof CHECK_LABEL - 1,
             mac, &mac_len) == NULL ||
        mac_len != sizeof mac) {
        rc = err_set(e, INF_EIO, "cannot compute the master key check value");
        goto out;
    }
    for (size_t i = 0; i < sizeof mac; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    hex[CHECK_HEX_LEN] = '\0';
out:
    OPENSSL_cleanse(k, sizeof k);
    return rc;
}

/*
 * Compares <data_dir>/master.check with mk; writes it if missing and may_write. source names
 * where the key came from, for the message.
 */
static int check_data_dir(const char *data_dir, const struct master_key *mk, bool may_write,
                          const char *source, struct err *e)
{
    int rc;
    char path[PATH_CAP], want[CHECK_HEX_LEN + 1];
    char *have = NULL;
    size_t have_len = 0;
    rc = fs_path_join(path, sizeof path, data_dir, MASTER_CHECK_NAME, e);
    if (rc == INF_OK)
        rc = check_value(mk, want, e);
    if (rc != INF_OK)
        return rc;
    struct err re = {0};
    rc = fs_read_file(path, 1024, &have, &have_len, &re);
    if (rc == INF_ENOTFOUND) {
        rc = INF_OK;
        if (may_write) {
            char line[CHECK_HEX_LEN + 1];
            memcpy(line, want, CHECK_HEX_LEN);
            line[CHECK_HEX_LEN] = '\n';
            rc = fs_write_atomic(path, line, sizeof line, 0600, e);
        } else {
            log_msg(LOG_WARN,
                    "%s has no %s: cannot verify that the master key from %s belongs to it",
                    data_dir, MASTER_CHECK_NAME, source);
        }
        goto out;
    }
    if (rc != INF_OK) {
        rc = err_set(e, rc, "%s", re.msg);
        goto out;
    }
    while (have_len > 0 &&
           (have[have_len - 1] == '\n' || have[have_len - 1] == '\r' || have[have_len - 1] == ' '))
        have_len--;
    if (have_len != CHECK_HEX_LEN) {
        rc = err_set(e, INF_EINVAL,
                     "%s is damaged (not %d hex digits); if the master key from %s is right, "
                     "delete %s and start again",
                     path, CHECK_HEX_LEN, source, path);
        goto out;
    }
    if (CRYPTO_memcmp(have, want, CHECK_HEX_LEN) != 0) {
        rc = err_set(e, INF_EINVAL,
                     "master key does not match this data directory (the key from %s is not the "
                     "one %s was created with, per %s); use the directory's own key via "
                     "--master-key-file or " MASTER_ENV_NAME,
                     source, data_dir, path);
        goto out;
    }
out:
    free(have);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Opening
 * ---------------------------------------------------------------------------------------- */

int master_key_open(const char *data_dir, const struct master_source *src, struct master_key *out,
                    bool *created, struct err *e)
{
    int rc = INF_OK;
    struct master_key k;
    char default_path[PATH_CAP];
    bool made = false, was_empty = false, may_write_check = false;
    memset(&k, 0, sizeof k);
    if (data_dir == NULL || data_dir[0] == '\0' || out == NULL)
        return err_set(e, INF_EINVAL, "master_key_open: no data directory");
    rc = fs_path_join(default_path, sizeof default_path, data_dir, MASTER_KEY_NAME, e);
    if (rc != INF_OK)
        return rc;

    const char *key_file = src != NULL ? src->key_file : NULL;
    const char *env = src != NULL ? src->env_value : NULL;
    if (key_file != NULL && (key_file[0] == '\0' || strcmp(key_file, default_path) == 0))
        key_file = NULL;
    if (env != NULL && env[0] == '\0')
        env = NULL;
    if (key_file != NULL && env != NULL)
        return err_set(e, INF_EINVAL,
                       "both --master-key-file (%s) and " MASTER_ENV_NAME
                       " are set; give the master key one way only",
                       key_file);

    /* Emptiness is judged before anything is written, so a first start can be told apart. */
    rc = dir_is_empty(data_dir, &was_empty, e);
    if (rc != INF_OK)
        goto out;

    const char *source;
    if (env != NULL) {
        source = MASTER_ENV_NAME;
        rc = parse_env_hex(env, &k, e);
        if (rc == INF_OK)
            rc = fs_mkdir_p(data_dir, 0700, e);
        may_write_check = was_empty;
    } else if (key_file != NULL) {
        source = key_file;
        rc = read_key_file(key_file, &k, e);
        if (rc == INF_OK)
            rc = fs_mkdir_p(data_dir, 0700, e);
        may_write_check = was_empty;
    } else {
        source = default_path;
        may_write_check = true; /* the directory's own key file is authoritative */
        struct err re = {0};
        rc = read_key_file(default_path, &k, &re);
        if (rc == INF_ENOTFOUND && !was_empty) {
            rc = err_set(e, INF_ENOTFOUND,
                         "data directory %s is not empty but has no master key: %s does not "
                         "exist and neither " MASTER_ENV_NAME
                         " nor --master-key-file is set. Restore the key file or give the key; "
                         "a new key would make the existing data unreadable, so none is made",
                         data_dir, default_path);
        } else if (rc == INF_ENOTFOUND) {
            bool lost_race = false;
            rc = fs_mkdir_p(data_dir, 0700, e);
            if (rc == INF_OK)
                rc = create_key_file(data_dir, default_path, &k, &lost_race, e);
            if (rc == INF_OK && lost_race)
                rc = read_key_file(default_path, &k, e);
            else if (rc == INF_OK)
                made = true;
        } else if (rc != INF_OK) {
            rc = err_set(e, rc, "%s", re.msg);
        }
    }
    if (rc != INF_OK)
        goto out;

    rc = check_data_dir(data_dir, &k, may_write_check, source, e);
    if (rc != INF_OK)
        goto out;
    if (made)
        log_msg(LOG_INFO, "created a new master key in %s", default_path);
    *out = k;
    if (created != NULL)
        *created = made;
out:
    master_key_wipe(&k);
    return rc;
}
