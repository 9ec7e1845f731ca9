/*
 * tests/auth/test_master.c - the data directory's master key: first start, reopen, refusal of
 * a missing or wrong key, the key sources and their checks, and HKDF derivation (checked
 * against values computed with Python's hmac/hashlib).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/master.h"
#include "common/common.h"
#include "tests/test.h"

static char scratch[64];

/* scratch/<name>, a path for one test's data directory. */
static const char *dir_path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", scratch, name);
    return buf;
}

static void path_in(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

static bool write_file(const char *path, const void *data, size_t len, unsigned mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, (mode_t)mode);
    if (fd < 0)
        return false;
    bool ok = write(fd, data, len) == (ssize_t)len;
    ok = close(fd) == 0 && ok;
    return ok && chmod(path, (mode_t)mode) == 0;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void to_hex(const uint8_t *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* ------------------------------------------------------------------------------------------ */

static void test_create_and_reopen(void)
{
    char dir[256], kpath[300], cpath[300];
    snprintf(dir, sizeof dir, "%s", dir_path("fresh/nested")); /* does not exist yet */
    path_in(kpath, sizeof kpath, dir, "master.key");
    path_in(cpath, sizeof cpath, dir, "master.check");

    struct err e = {0};
    struct master_key k1, k2;
    bool created = false;
    int rc = master_key_open(dir, NULL, &k1, &created, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(created);

    struct stat st;
    CHECK(stat(dir, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK(stat(kpath, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(st.st_size == MASTER_KEY_BYTES);
    CHECK(stat(cpath, &st) == 0 && st.st_size == 65);

    /* The file holds the key; the check file does not. */
    char *data = NULL;
    size_t len = 0;
    CHECK(fs_read_file(kpath, 100, &data, &len, NULL) == INF_OK);
    CHECK(len == MASTER_KEY_BYTES && data != NULL && memcmp(data, k1.bytes, len) == 0);
    free(data);
    char hex[2 * MASTER_KEY_BYTES + 1];
    to_hex(k1.bytes, sizeof k1.bytes, hex);
    data = NULL;
    CHECK(fs_read_file(cpath, 100, &data, &len, NULL) == INF_OK);
    CHECK(data != NULL && strstr(data, hex) == NULL);
    free(data);

    /* Not all zeros: the random generator ran. */
    static const uint8_t zero[MASTER_KEY_BYTES];
    CHECK(memcmp(k1.bytes, zero, sizeof zero) != 0);

    err_clear(&e);
    created = true;
    rc = master_key_open(dir, NULL, &k2, &created, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(!created);
    CHECK(memcmp(k1.bytes, k2.bytes, sizeof k1.bytes) == 0);

    /* The default path spelled out counts as the default source. */
    struct master_source src = {.key_file = kpath};
    err_clear(&e);
    rc = master_key_open(dir, &src, &k2, NULL, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(memcmp(k1.bytes, k2.bytes, sizeof k1.bytes) == 0);

    /* A directory's own key file is authoritative: a deleted master.check comes back. */
    CHECK(unlink(cpath) == 0);
    err_clear(&e);
    rc = master_key_open(dir, NULL, &k2, NULL, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(exists(cpath));

    master_key_wipe(&k1);
    master_key_wipe(&k2);
    CHECK(memcmp(k1.bytes, zero, sizeof zero) == 0);
}

static void test_default_path_on_empty_dir(void)
{
    /* A caller that fills in <data_dir>/master.key as the key file still gets a first start. */
    char kpath[300];
    const char *dir = dir_path("spelled");
    path_in(kpath, sizeof kpath, dir, "master.key");
    struct master_source src = {.key_file = kpath, .env_value = ""};
    struct master_key k;
    bool created = false;
    struct err e = {0};
    int rc = master_key_open(dir, &src, &k, &created, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(created && exists(kpath));
    master_key_wipe(&k);
}

static void test_lost_found_is_empty(void)
{
    char sub[300];
    const char *dir = dir_path("volume");
    CHECK(mkdir(dir, 0755) == 0);
    path_in(sub, sizeof sub, dir, "lost+found");
    CHECK(mkdir(sub, 0700) == 0);
    struct master_key k;
    bool created = false;
    struct err e = {0};
    int rc = master_key_open(dir, NULL, &k, &created, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(created);
    master_key_wipe(&k);
}

static void test_nonempty_without_key(void)
{
    char dir[256], kpath[300], other[300];
    snprintf(dir, sizeof dir, "%s", dir_path("populated"));
    CHECK(mkdir(dir, 0700) == 0);
    path_in(other, sizeof other, dir, "keys.json");
    CHECK(write_file(other, "{}", 2, 0600));
    path_in(kpath, sizeof kpath, dir, "master.key");

    struct master_key k;
    memset(&k, 0xAB, sizeof k);
    bool created = true;
    struct err e = {0};
    int rc = master_key_open(dir, NULL, &k, &created, &e);
    CHECK(rc == INF_ENOTFOUND);
    CHECK_ERR_HAS(&e, kpath);
    CHECK_ERR_HAS(&e, "INFERA_MASTER_KEY");
    CHECK_ERR_HAS(&e, "not empty");
    CHECK(!exists(kpath)); /* never a silent new key */
    CHECK(created);        /* outputs untouched on failure */
    CHECK(k.bytes[0] == 0xAB && k.bytes[31] == 0xAB);

    /* A dotfile is data too. */
    const char *dir2 = dir_path("dotfile");
    CHECK(mkdir(dir2, 0700) == 0);
    path_in(other, sizeof other, dir2, ".gitkeep");
    CHECK(write_file(other, "", 0, 0600));
    err_clear(&e);
    CHECK(master_key_open(dir2, NULL, &k, NULL, &e) == INF_ENOTFOUND);
}

static void test_wrong_key(void)
{
    char a[256], b[256], akey[300], bkey[300], hex[2 * MASTER_KEY_BYTES + 1];
    snprintf(a, sizeof a, "%s", dir_path("dir-a"));
    snprintf(b, sizeof b, "%s", dir_path("dir-b"));
    path_in(akey, sizeof akey, a, "master.key");
    path_in(bkey, sizeof bkey, b, "master.key");
    struct master_key ka, kb, k;
    struct err e = {0};
    CHECK(master_key_open(a, NULL, &ka, NULL, &e) == INF_OK);
    CHECK(master_key_open(b, NULL, &kb, NULL, &e) == INF_OK);
    CHECK(memcmp(ka.bytes, kb.bytes, sizeof ka.bytes) != 0);

    /* b's key file for a. */
    struct master_source src = {.key_file = bkey};
    err_clear(&e);
    CHECK(master_key_open(a, &src, &k, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "master key does not match this data directory");
    CHECK_ERR_HAS(&e, bkey);

    /* b's key as hex in the environment for a; a's own key as hex works. */
    to_hex(kb.bytes, sizeof kb.bytes, hex);
    struct master_source env = {.env_value = hex};
    err_clear(&e);
    CHECK(master_key_open(a, &env, &k, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "master key does not match this data directory");
    CHECK_ERR_HAS(&e, "INFERA_MASTER_KEY");

    to_hex(ka.bytes, sizeof ka.bytes, hex);
    err_clear(&e);
    bool created = true;
    CHECK(master_key_open(a, &env, &k, &created, &e) == INF_OK);
    CHECK(!created);
    CHECK(memcmp(k.bytes, ka.bytes, sizeof k.bytes) == 0);

    /* Both sources at once are ambiguous. */
    struct master_source both = {.key_file = bkey, .env_value = hex};
    err_clear(&e);
    CHECK(master_key_open(a, &both, &k, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "one way only");

    /* An explicit key file that does not exist is never created. */
    char missing[300];
    path_in(missing, sizeof missing, scratch, "no-such.key");
    struct master_source miss = {.key_file = missing};
    err_clear(&e);
    CHECK(master_key_open(dir_path("dir-c"), &miss, &k, NULL, &e) == INF_ENOTFOUND);
    CHECK_ERR_HAS(&e, missing);
    CHECK(!exists(missing));

    /* A damaged master.check is reported as such. */
    char cpath[300];
    path_in(cpath, sizeof cpath, a, "master.check");
    CHECK(write_file(cpath, "zz\n", 3, 0600));
    err_clear(&e);
    CHECK(master_key_open(a, NULL, &k, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "damaged");
    master_key_wipe(&ka);
    master_key_wipe(&kb);
    master_key_wipe(&k);
}

static void test_env_source(void)
{
    const char *hex = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";
    char dir[256], kpath[300], cpath[300], buf[100];
    snprintf(dir, sizeof dir, "%s", dir_path("env"));
    path_in(kpath, sizeof kpath, dir, "master.key");
    path_in(cpath, sizeof cpath, dir, "master.check");

    struct master_source src = {.env_value = hex};
    struct master_key k;
    bool created = true;
    struct err e = {0};
    int rc = master_key_open(dir, &src, &k, &created, &e);
    CHECK_MSG(rc == INF_OK, "%s", e.msg);
    CHECK(!created);
    for (int i = 0; i < MASTER_KEY_BYTES; i++)
        CHECK(k.bytes[i] == i);
    CHECK(!exists(kpath)); /* the key stays where it came from */
    CHECK(exists(cpath));

    /* The check value matches Python: hmac(hkdf(k, info="infera/v1/master-check"), label). */
    char *data = NULL;
    size_t len = 0;
    CHECK(fs_read_file(cpath, 100, &data, &len, NULL) == INF_OK);
    CHECK(data != NULL &&
          strcmp(data, "4a1dc95057de4ea5a241b5f45f4d446917396a997b223c666296e159f9fd2e8f\n") == 0);
    free(data);

    /* A trailing newline (a Kubernetes secret file) is fine. */
    snprintf(buf, sizeof buf, "%s\n", hex);
    src.env_value = buf;
    err_clear(&e);
    CHECK(master_key_open(dir, &src, &k, NULL, &e) == INF_OK);

    static const char *bad[] = {
        "0001",                                                               /* short */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f00", /* long */
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g",   /* not hex */
        " 00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",   /* leading blank */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        src.env_value = bad[i];
        err_clear(&e);
        memset(&k, 0x5A, sizeof k);
        CHECK(master_key_open(dir, &src, &k, NULL, &e) == INF_EINVAL);
        CHECK_ERR_HAS(&e, "INFERA_MASTER_KEY");
        CHECK_ERR_HAS(&e, "hex digits");
        CHECK_MSG(strstr(e.msg, "0a0b0c") == NULL, "message echoes the key: %s", e.msg);
        CHECK(k.bytes[0] == 0x5A);
    }
    master_key_wipe(&k);
}

static void test_key_file_checks(void)
{
    char dir[256], kpath[300], ext[300];
    snprintf(dir, sizeof dir, "%s", dir_path("modes"));
    path_in(kpath, sizeof kpath, dir, "master.key");
    struct master_key k, k2;
    struct err e = {0};
    CHECK(master_key_open(dir, NULL, &k, NULL, &e) == INF_OK);

    CHECK(chmod(kpath, 0644) == 0);
    err_clear(&e);
    CHECK(master_key_open(dir, NULL, &k2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "chmod 600");
    CHECK_ERR_HAS(&e, "readable");
    CHECK_ERR_HAS(&e, "0644");

    CHECK(chmod(kpath, 0620) == 0);
    err_clear(&e);
    CHECK(master_key_open(dir, NULL, &k2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "chmod 600");

    CHECK(chmod(kpath, 0400) == 0); /* read-only for the owner is fine */
    err_clear(&e);
    CHECK(master_key_open(dir, NULL, &k2, NULL, &e) == INF_OK);
    CHECK(memcmp(k.bytes, k2.bytes, sizeof k.bytes) == 0);

    /* Wrong sizes, in an explicit key file. */
    path_in(ext, sizeof ext, scratch, "short.key");
    CHECK(write_file(ext, k.bytes, 31, 0600));
    struct master_source src = {.key_file = ext};
    err_clear(&e);
    CHECK(master_key_open(dir, &src, &k2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "is 31 bytes");
    CHECK_ERR_HAS(&e, "exactly 32");

    char hex[2 * MASTER_KEY_BYTES + 2];
    to_hex(k.bytes, sizeof k.bytes, hex);
    hex[64] = '\n';
    CHECK(write_file(ext, hex, 65, 0600));
    err_clear(&e);
    CHECK(master_key_open(dir, &src, &k2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "looks like hex");

    /* The right bytes in an explicit file work. */
    CHECK(write_file(ext, k.bytes, 32, 0600));
    err_clear(&e);
    CHECK(master_key_open(dir, &src, &k2, NULL, &e) == INF_OK);
    CHECK(memcmp(k.bytes, k2.bytes, sizeof k.bytes) == 0);

    /* A directory is not a key file. */
    src.key_file = scratch;
    err_clear(&e);
    CHECK(master_key_open(dir, &src, &k2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "not a regular file");
    master_key_wipe(&k);
    master_key_wipe(&k2);
}

static void test_derive(void)
{
    struct master_key mk;
    for (int i = 0; i < MASTER_KEY_BYTES; i++)
        mk.bytes[i] = (uint8_t)i;
    uint8_t a1[32], a2[32], b[32];
    char hex[65];
    CHECK(master_key_derive(&mk, "audit", a1) == INF_OK);
    CHECK(master_key_derive(&mk, "audit", a2) == INF_OK);
    CHECK(memcmp(a1, a2, 32) == 0);
    /* HKDF-SHA256(ikm = 00..1f, no salt, info = "infera/v1/audit"), from Python's hmac. */
    to_hex(a1, 32, hex);
    CHECK_MSG(strcmp(hex, "2a3e09ad6c6e3b53ae33a7e836be83883889ca6b930ab06e8a15d7a69c9d3a9a") == 0,
              "%s", hex);

    CHECK(master_key_derive(&mk, "key-pepper", b) == INF_OK);
    CHECK(memcmp(a1, b, 32) != 0);
    CHECK(master_key_derive(&mk, "mask", b) == INF_OK);
    CHECK(memcmp(a1, b, 32) != 0);

    struct master_key other = mk;
    other.bytes[0] ^= 1;
    CHECK(master_key_derive(&other, "audit", b) == INF_OK);
    CHECK(memcmp(a1, b, 32) != 0);

    /* Bad purposes leave out alone. */
    char longp[300];
    memset(longp, 'p', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    memset(b, 0x77, sizeof b);
    CHECK(master_key_derive(&mk, "", b) == INF_EINVAL);
    CHECK(master_key_derive(&mk, NULL, b) == INF_EINVAL);
    CHECK(master_key_derive(&mk, longp, b) == INF_EINVAL);
    CHECK(b[0] == 0x77 && b[31] == 0x77);

    /* The salted form: a salt changes the output, the same salt repeats it. */
    uint8_t s1[32], s2[32];
    static const uint8_t salt[16] = {1, 2, 3};
    CHECK(master_key_hkdf(&mk, salt, sizeof salt, "x", 1, s1, 32) == INF_OK);
    CHECK(master_key_hkdf(&mk, salt, sizeof salt, "x", 1, s2, 32) == INF_OK);
    CHECK(memcmp(s1, s2, 32) == 0);
    CHECK(master_key_hkdf(&mk, NULL, 0, "x", 1, s2, 32) == INF_OK);
    CHECK(memcmp(s1, s2, 32) != 0);
    CHECK(master_key_hkdf(&mk, NULL, 0, "x", 1, s2, 0) == INF_EINVAL);
}

int main(void)
{
    snprintf(scratch, sizeof scratch, "/tmp/infera-test-master-XXXXXX");
    if (mkdtemp(scratch) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_create_and_reopen);
    RUN(test_default_path_on_empty_dir);
    RUN(test_lost_found_is_empty);
    RUN(test_nonempty_without_key);
    RUN(test_wrong_key);
    RUN(test_env_source);
    RUN(test_key_file_checks);
    RUN(test_derive);
    fs_remove_tree(scratch);
    return test_finish();
}
