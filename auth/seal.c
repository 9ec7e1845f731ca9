/*
 * auth/seal.c - AES-256-GCM sealing of buffers and files (format in seal.h).
 */
#include "seal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define SEAL_MAGIC       "IFRSEAL" /* with its NUL: 8 bytes */
#define SEAL_MAGIC_LEN   8
#define SEAL_SALT_BYTES  16
#define SEAL_NONCE_BYTES 12
#define SEAL_KEY_BYTES   32
#define SEAL_HEADER_MAX                                                                            \
    (SEAL_MAGIC_LEN + 1 + 1 + SEAL_NAME_MAX + 1 + SEAL_NAME_MAX + SEAL_SALT_BYTES +                \
     SEAL_NONCE_BYTES + 4)
#define SEAL_INFO_PREFIX "infera/v1/seal/"
#define WHAT_CAP         512
#define PATH_CAP         4096

#define AUTH_FAILED "authentication failed (wrong key or tampered data)"

/* ------------------------------------------------------------------------------------------
 * Header and chunk crypto shared by the buffer and file forms
 * ---------------------------------------------------------------------------------------- */

struct seal_hdr {
    uint8_t bytes[SEAL_HEADER_MAX]; /* the header as written: the AAD prefix of every chunk */
    size_t len;
    size_t salt_off; /* offsets into bytes */
    size_t nonce_off;
    uint32_t chunk_size;
};

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int names_check(const char *purpose, const char *object_id, struct err *e)
{
    if (purpose == NULL || purpose[0] == '\0' || strlen(purpose) > SEAL_NAME_MAX ||
        strchr(purpose, '/') != NULL)
        return err_set(e, INF_EINVAL, "seal: purpose must be 1..%d bytes without '/'",
                       SEAL_NAME_MAX);
    if (object_id == NULL || object_id[0] == '\0' || strlen(object_id) > SEAL_NAME_MAX)
        return err_set(e, INF_EINVAL, "seal: object id must be 1..%d bytes", SEAL_NAME_MAX);
    return INF_OK;
}

/* The header length for these names (checked by names_check). */
static size_t hdr_len_for(const char *purpose, const char *object_id)
{
    return SEAL_MAGIC_LEN + 1 + 1 + strlen(purpose) + 1 + strlen(object_id) + SEAL_SALT_BYTES +
           SEAL_NONCE_BYTES + 4;
}

/* A new header with a fresh random salt and base nonce. */
static int hdr_build(struct seal_hdr *h, const char *purpose, const char *object_id, struct err *e)
{
    size_t plen = strlen(purpose), ilen = strlen(object_id), p = 0;
    memcpy(h->bytes, SEAL_MAGIC, SEAL_MAGIC_LEN);
    p = SEAL_MAGIC_LEN;
    h->bytes[p++] = SEAL_VERSION;
    h->bytes[p++] = (uint8_t)plen;
    memcpy(h->bytes + p, purpose, plen);
    p += plen;
    h->bytes[p++] = (uint8_t)ilen;
    memcpy(h->bytes + p, object_id, ilen);
    p += ilen;
    h->salt_off = p;
    h->nonce_off = p + SEAL_SALT_BYTES;
    if (RAND_bytes(h->bytes + p, SEAL_SALT_BYTES + SEAL_NONCE_BYTES) != 1)
        return err_set(e, INF_EIO, "seal: the random generator failed");
    p += SEAL_SALT_BYTES + SEAL_NONCE_BYTES;
    h->chunk_size = SEAL_CHUNK_SIZE;
    put_u32(h->bytes + p, h->chunk_size);
    h->len = p + 4;
    return INF_OK;
}

/*
 * Parses the header at buf (avail bytes, which may run past it) for the expected names. The
 * stored names are compared, never printed: they are unauthenticated input.
 */
static int hdr_parse(struct seal_hdr *h, const uint8_t *buf, size_t avail, const char *purpose,
                     const char *object_id, const char *what, struct err *e)
{
    size_t plen = strlen(purpose), ilen = strlen(object_id);
    size_t want = hdr_len_for(purpose, object_id);
    if (avail < SEAL_MAGIC_LEN || memcmp(buf, SEAL_MAGIC, SEAL_MAGIC_LEN) != 0)
        return err_set(e, INF_EINVAL, "%s: not a sealed file (bad magic)", what);
    if (avail < SEAL_MAGIC_LEN + 1)
        return err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": header is cut short", what);
    if (buf[SEAL_MAGIC_LEN] != SEAL_VERSION)
        return err_set(e, INF_EINVAL, "%s: unsupported format version %u (this build reads %d)",
                       what, buf[SEAL_MAGIC_LEN], SEAL_VERSION);
    if (avail < want)
        return err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": header is cut short", what);
    size_t p = SEAL_MAGIC_LEN + 1;
    if (buf[p] != plen || memcmp(buf + p + 1, purpose, plen) != 0 || buf[p + 1 + plen] != ilen ||
        memcmp(buf + p + 2 + plen, object_id, ilen) != 0)
        return err_set(e, INF_EINVAL,
                       "%s: " AUTH_FAILED ": it was not sealed for purpose \"%s\", object \"%s\"",
                       what, purpose, object_id);
    p += 2 + plen + ilen;
    h->salt_off = p;
    h->nonce_off = p + SEAL_SALT_BYTES;
    p += SEAL_SALT_BYTES + SEAL_NONCE_BYTES;
    h->chunk_size = get_u32(buf + p);
    if (h->chunk_size == 0 || h->chunk_size > SEAL_CHUNK_MAX)
        return err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": bad chunk size %u", what,
                       (unsigned)h->chunk_size);
    h->len = want;
    memcpy(h->bytes, buf, want);
    return INF_OK;
}

/* A cipher context keyed with this object's key (the key itself is wiped at once). */
static int cipher_new(const struct master_key *mk, const struct seal_hdr *h, const char *purpose,
                      const char *object_id, bool encrypt, EVP_CIPHER_CTX **out, struct err *e)
{
    char info[sizeof SEAL_INFO_PREFIX + 2 * SEAL_NAME_MAX + 1];
    uint8_t key[SEAL_KEY_BYTES];
    int rc = INF_OK;
    EVP_CIPHER_CTX *ctx = NULL;
    int n = snprintf(info, sizeof info, SEAL_INFO_PREFIX "%s/%s", purpose, object_id);
    if (n < 0 || (size_t)n >= sizeof info)
        return err_set(e, INF_EINVAL, "seal: names too long");
    rc = master_key_hkdf(mk, h->bytes + h->salt_off, SEAL_SALT_BYTES, info, (size_t)n, key,
                         sizeof key);
    if (rc != INF_OK) {
        rc = err_set(e, rc, "seal: key derivation failed");
        goto out;
    }
    ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) {
        rc = err_set(e, INF_ENOMEM, "seal: out of memory");
        goto out;
    }
    /* Key now, nonce per chunk: re-initialising with only an IV keeps the key schedule. */
    if ((encrypt ? EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
                 : EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)) != 1) {
        rc = err_set(e, INF_EIO, "seal: AES-256-GCM is not available");
        goto out;
    }
    *out = ctx;
    ctx = NULL;
out:
    EVP_CIPHER_CTX_free(ctx);
    OPENSSL_cleanse(key, sizeof key);
    return rc;
}

/* Nonce and AAD tail of chunk i. */
static void chunk_params(const struct seal_hdr *h, uint64_t index, bool final,
                         uint8_t nonce[SEAL_NONCE_BYTES], uint8_t tail[9])
{
    memcpy(nonce, h->bytes + h->nonce_off, SEAL_NONCE_BYTES);
    uint8_t ctr[8];
    put_u64(ctr, index);
    for (int i = 0; i < 8; i++)
        nonce[SEAL_NONCE_BYTES - 8 + i] ^= ctr[i];
    put_u64(tail, index);
    tail[8] = final ? 1 : 0;
}

/* Seals n plaintext bytes (n <= chunk size) into out[n + 16]. Returns 0 or -1. */
static int chunk_seal(EVP_CIPHER_CTX *ctx, const struct seal_hdr *h, uint64_t index, bool final,
                      const uint8_t *in, size_t n, uint8_t *out)
{
    uint8_t nonce[SEAL_NONCE_BYTES], tail[9];
    int outl = 0;
    chunk_params(h, index, final, nonce, tail);
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &outl, h->bytes, (int)h->len) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &outl, tail, sizeof tail) != 1)
        return -1;
    if (n > 0 && (EVP_EncryptUpdate(ctx, out, &outl, in, (int)n) != 1 || (size_t)outl != n))
        return -1;
    if (EVP_EncryptFinal_ex(ctx, out + n, &outl) != 1 || outl != 0 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_BYTES, out + n) != 1)
        return -1;
    return 0;
}

/*
 * Opens a chunk of len = ciphertext + tag bytes into out[len - 16]. Returns 0, or -1 when it
 * does not authenticate; then out is wiped (GCM decrypts before it checks the tag).
 */
static int chunk_open(EVP_CIPHER_CTX *ctx, const struct seal_hdr *h, uint64_t index, bool final,
                      const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t nonce[SEAL_NONCE_BYTES], tail[9], tag[SEAL_TAG_BYTES];
    int outl = 0;
    if (len < SEAL_TAG_BYTES)
        return -1;
    size_t n = len - SEAL_TAG_BYTES;
    memcpy(tag, in + n, SEAL_TAG_BYTES);
    chunk_params(h, index, final, nonce, tail);
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &outl, h->bytes, (int)h->len) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &outl, tail, sizeof tail) != 1)
        return -1;
    if (n > 0 && (EVP_DecryptUpdate(ctx, out, &outl, in, (int)n) != 1 || (size_t)outl != n))
        goto fail;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_BYTES, tag) != 1 ||
        EVP_DecryptFinal_ex(ctx, out + n, &outl) != 1)
        goto fail;
    return 0;
fail:
    OPENSSL_cleanse(out, n);
    return -1;
}

/*
 * Plaintext size of a well-formed body of body_len bytes with this chunk size, or false when
 * no well-formed body has that length (too short for a final chunk's tag).
 */
static bool plain_len_of(uint64_t body_len, uint32_t chunk_size, uint64_t *plain)
{
    uint64_t stride = (uint64_t)chunk_size + SEAL_TAG_BYTES;
    if (body_len < SEAL_TAG_BYTES)
        return false;
    uint64_t full = (body_len - 1) / stride; /* chunks before the last */
    uint64_t last = body_len - full * stride;
    if (last < SEAL_TAG_BYTES)
        return false;
    *plain = full * chunk_size + (last - SEAL_TAG_BYTES);
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Buffers
 * ---------------------------------------------------------------------------------------- */

int seal_encrypt(const struct master_key *mk, const char *purpose, const char *object_id,
                 const void *plain, size_t len, uint8_t **out, size_t *out_len, struct err *e)
{
    int rc;
    struct seal_hdr h;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    if (mk == NULL || out == NULL || out_len == NULL || (plain == NULL && len > 0))
        return err_set(e, INF_EINVAL, "seal_encrypt: bad arguments");
    rc = names_check(purpose, object_id, e);
    if (rc == INF_OK)
        rc = hdr_build(&h, purpose, object_id, e);
    if (rc != INF_OK)
        return rc;
    size_t chunks = len / h.chunk_size + (len % h.chunk_size != 0 || len == 0);
    size_t tags, total;
    if (!size_mul_ok(chunks, SEAL_TAG_BYTES, &tags) || !size_add_ok(len, tags, &total) ||
        !size_add_ok(total, h.len, &total))
        return err_set(e, INF_ELIMIT, "seal_encrypt: %zu bytes is too large to seal", len);
    buf = malloc(total);
    if (buf == NULL) {
        rc = err_set(e, INF_ENOMEM, "seal_encrypt: out of memory for %zu bytes", total);
        goto out;
    }
    rc = cipher_new(mk, &h, purpose, object_id, true, &ctx, e);
    if (rc != INF_OK)
        goto out;
    memcpy(buf, h.bytes, h.len);
    const uint8_t *src = plain;
    uint8_t *dst = buf + h.len;
    for (size_t i = 0; i < chunks; i++) {
        size_t n = i + 1 < chunks ? h.chunk_size : len - i * (size_t)h.chunk_size;
        if (chunk_seal(ctx, &h, i, i + 1 == chunks, src, n, dst) != 0) {
            rc = err_set(e, INF_EIO, "seal_encrypt: AES-256-GCM failed");
            goto out;
        }
        src += n;
        dst += n + SEAL_TAG_BYTES;
    }
    *out = buf;
    *out_len = total;
    buf = NULL;
out:
    free(buf);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int seal_decrypt(const struct master_key *mk, const char *purpose, const char *object_id,
                 const void *sealed, size_t len, uint8_t **out, size_t *out_len, struct err *e)
{
    int rc;
    struct seal_hdr h;
    EVP_CIPHER_CTX *ctx = NULL;
    uint8_t *buf = NULL;
    uint64_t plain_len = 0;
    char what[WHAT_CAP];
    if (mk == NULL || out == NULL || out_len == NULL || (sealed == NULL && len > 0))
        return err_set(e, INF_EINVAL, "seal_decrypt: bad arguments");
    rc = names_check(purpose, object_id, e);
    if (rc != INF_OK)
        return rc;
    snprintf(what, sizeof what, "sealed data (%s %s)", purpose, object_id);
    rc = hdr_parse(&h, sealed, len, purpose, object_id, what, e);
    if (rc != INF_OK)
        return rc;
    const uint8_t *p = (const uint8_t *)sealed + h.len;
    size_t left = len - h.len;
    if (!plain_len_of(left, h.chunk_size, &plain_len))
        return err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": the final chunk is missing", what);
    buf = malloc((size_t)plain_len + 1); /* plain_len < len: no overflow */
    if (buf == NULL) {
        rc = err_set(e, INF_ENOMEM, "%s: out of memory for %llu bytes", what,
                     (unsigned long long)plain_len);
        goto out;
    }
    rc = cipher_new(mk, &h, purpose, object_id, false, &ctx, e);
    if (rc != INF_OK)
        goto out;
    size_t stride = (size_t)h.chunk_size + SEAL_TAG_BYTES, done = 0;
    for (uint64_t i = 0;; i++) {
        bool final = left <= stride;
        size_t n = final ? left : stride;
        if (chunk_open(ctx, &h, i, final, p, n, buf + done) != 0) {
            rc = err_set(e, INF_EINVAL, "%s: " AUTH_FAILED " in chunk %llu", what,
                         (unsigned long long)i);
            goto out;
        }
        done += n - SEAL_TAG_BYTES;
        p += n;
        left -= n;
        if (final)
            break;
    }
    buf[done] = '\0';
    *out = buf;
    *out_len = done;
    buf = NULL;
out:
    if (buf != NULL)
        OPENSSL_cleanse(buf, (size_t)plain_len);
    free(buf);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * File helpers
 * ---------------------------------------------------------------------------------------- */

static int write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Reads until len bytes or end of file; *got says how many. Returns 0 or -1 (errno). */
static int read_full(int fd, void *buf, size_t len, size_t *got)
{
    uint8_t *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t r = read(fd, p + done, len - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Streaming writer
 * ---------------------------------------------------------------------------------------- */

struct seal_writer {
    int fd;
    char path[PATH_CAP];
    char tmp[PATH_CAP];
    bool committed; /* the temporary file is gone (renamed) */
    bool failed;
    EVP_CIPHER_CTX *ctx;
    struct seal_hdr h;
    uint64_t index;  /* of the next chunk */
    uint8_t *plain;  /* [chunk_size] pending plaintext */
    size_t fill;     /* bytes in plain */
    uint8_t *sealed; /* [chunk_size + 16] one sealed chunk */
};

struct seal_writer *seal_writer_new(const char *path, const struct master_key *mk,
                                    const char *purpose, const char *object_id, unsigned mode,
                                    struct err *e)
{
    struct seal_writer *w = NULL;
    if (path == NULL || mk == NULL) {
        err_set(e, INF_EINVAL, "seal_writer_new: bad arguments");
        return NULL;
    }
    if (names_check(purpose, object_id, e) != INF_OK)
        return NULL;
    size_t plen = strlen(path);
    if (plen + sizeof ".tmp.XXXXXX" > PATH_CAP) {
        err_set(e, INF_ELIMIT, "path too long: %s", path);
        return NULL;
    }
    w = calloc(1, sizeof *w);
    if (w == NULL) {
        err_set(e, INF_ENOMEM, "seal: out of memory");
        return NULL;
    }
    w->fd = -1;
    memcpy(w->path, path, plen + 1);
    memcpy(w->tmp, path, plen);
    memcpy(w->tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    w->committed = true; /* nothing to remove until the temporary file exists */
    if (hdr_build(&w->h, purpose, object_id, e) != INF_OK ||
        cipher_new(mk, &w->h, purpose, object_id, true, &w->ctx, e) != INF_OK)
        goto fail;
    w->plain = malloc(w->h.chunk_size);
    w->sealed = malloc((size_t)w->h.chunk_size + SEAL_TAG_BYTES);
    if (w->plain == NULL || w->sealed == NULL) {
        err_set(e, INF_ENOMEM, "seal: out of memory");
        goto fail;
    }
    w->fd = mkostemp(w->tmp, O_CLOEXEC);
    if (w->fd < 0) {
        err_set(e, INF_EIO, "cannot create %s: %s", w->tmp, strerror(errno));
        goto fail;
    }
    w->committed = false;
    if (fchmod(w->fd, (mode_t)mode) != 0) {
        err_set(e, INF_EIO, "chmod %s: %s", w->tmp, strerror(errno));
        goto fail;
    }
    if (write_all(w->fd, w->h.bytes, w->h.len) != 0) {
        err_set(e, INF_EIO, "write %s: %s", w->tmp, strerror(errno));
        goto fail;
    }
    return w;
fail:
    seal_writer_free(w);
    return NULL;
}

/* Seals and writes one chunk of n bytes from in. */
static int writer_emit(struct seal_writer *w, const uint8_t *in, size_t n, bool final,
                       struct err *e)
{
    if (chunk_seal(w->ctx, &w->h, w->index, final, in, n, w->sealed) != 0) {
        w->failed = true;
        return err_set(e, INF_EIO, "seal %s: AES-256-GCM failed", w->path);
    }
    if (write_all(w->fd, w->sealed, n + SEAL_TAG_BYTES) != 0) {
        w->failed = true;
        return err_set(e, INF_EIO, "write %s: %s", w->tmp, strerror(errno));
    }
    w->index++;
    return INF_OK;
}

int seal_writer_write(struct seal_writer *w, const void *data, size_t len, struct err *e)
{
    if (w == NULL || (data == NULL && len > 0))
        return err_set(e, INF_EINVAL, "seal_writer_write: bad arguments");
    if (w->failed || w->committed)
        return err_set(e, INF_EINVAL, "seal %s: the writer has %s", w->path,
                       w->failed ? "failed earlier" : "been committed");
    const uint8_t *p = data;
    size_t cs = w->h.chunk_size;
    while (len > 0) {
        /* A full chunk is written only once more data follows: the last chunk is final. */
        if (w->fill == cs) {
            int rc = writer_emit(w, w->plain, cs, false, e);
            if (rc != INF_OK)
                return rc;
            w->fill = 0;
        }
        if (w->fill == 0 && len > cs) { /* whole chunks straight from the caller's buffer */
            int rc = writer_emit(w, p, cs, false, e);
            if (rc != INF_OK)
                return rc;
            p += cs;
            len -= cs;
            continue;
        }
        size_t take = cs - w->fill < len ? cs - w->fill : len;
        memcpy(w->plain + w->fill, p, take);
        w->fill += take;
        p += take;
        len -= take;
    }
    return INF_OK;
}

int seal_writer_commit(struct seal_writer *w, struct err *e)
{
    if (w == NULL)
        return err_set(e, INF_EINVAL, "seal_writer_commit: no writer");
    if (w->failed || w->committed)
        return err_set(e, INF_EINVAL, "seal %s: the writer has %s", w->path,
                       w->failed ? "failed earlier" : "been committed");
    int rc = writer_emit(w, w->plain, w->fill, true, e);
    if (rc != INF_OK)
        return rc;
    w->fill = 0;
    w->failed = true; /* until the rename succeeds */
    if (fsync(w->fd) != 0)
        return err_set(e, INF_EIO, "fsync %s: %s", w->tmp, strerror(errno));
    int closed = close(w->fd);
    w->fd = -1;
    if (closed != 0)
        return err_set(e, INF_EIO, "close %s: %s", w->tmp, strerror(errno));
    if (rename(w->tmp, w->path) != 0)
        return err_set(e, INF_EIO, "rename %s: %s", w->path, strerror(errno));
    w->committed = true;
    w->failed = false;
    return fs_fsync_parent(w->path, e);
}

void seal_writer_free(struct seal_writer *w)
{
    if (w == NULL)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (!w->committed)
        unlink(w->tmp);
    EVP_CIPHER_CTX_free(w->ctx); /* cleanses the key schedule */
    if (w->plain != NULL)
        OPENSSL_cleanse(w->plain, w->h.chunk_size);
    free(w->plain);
    free(w->sealed);
    free(w);
}

/* ------------------------------------------------------------------------------------------
 * Streaming reader
 * ---------------------------------------------------------------------------------------- */

struct seal_reader {
    int fd;
    char what[WHAT_CAP]; /* "sealed file <path>" for messages */
    EVP_CIPHER_CTX *ctx;
    struct seal_hdr h;
    uint64_t body_len; /* file size minus header, from fstat at open */
    uint64_t index;    /* of the next chunk */
    bool final_seen;
    int failed;     /* status of the first error, sticky */
    uint8_t *in;    /* [chunk_size + 16 + 1]: a chunk and one byte of look-ahead */
    size_t carry;   /* look-ahead bytes already at in[0] */
    uint8_t *plain; /* [chunk_size] authenticated plaintext of the current chunk */
    size_t plain_len, plain_pos;
};

/*
 * Reads and opens the next chunk. Whether it is the last is decided by what follows it: one
 * byte of look-ahead tells a full non-final chunk from a full final one at end of file.
 */
static int reader_next(struct seal_reader *r, struct err *e)
{
    size_t stride = (size_t)r->h.chunk_size + SEAL_TAG_BYTES, got = 0;
    if (read_full(r->fd, r->in + r->carry, stride + 1 - r->carry, &got) != 0) {
        r->failed = err_set(e, INF_EIO, "%s: %s", r->what, strerror(errno));
        return r->failed;
    }
    got += r->carry;
    bool final = got <= stride;
    size_t n = final ? got : stride;
    if (n == 0) {
        r->failed =
            err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": the final chunk is missing", r->what);
        return r->failed;
    }
    if (chunk_open(r->ctx, &r->h, r->index, final, r->in, n, r->plain) != 0) {
        r->failed = err_set(e, INF_EINVAL, "%s: " AUTH_FAILED " in chunk %llu", r->what,
                            (unsigned long long)r->index);
        return r->failed;
    }
    r->plain_len = n - SEAL_TAG_BYTES;
    r->plain_pos = 0;
    r->index++;
    r->final_seen = final;
    r->carry = final ? 0 : 1;
    if (!final)
        r->in[0] = r->in[stride];
    return INF_OK;
}

struct seal_reader *seal_reader_new(const char *path, const struct master_key *mk,
                                    const char *purpose, const char *object_id, struct err *e)
{
    struct seal_reader *r = NULL;
    uint8_t hbuf[SEAL_HEADER_MAX];
    if (path == NULL || mk == NULL) {
        err_set(e, INF_EINVAL, "seal_reader_new: bad arguments");
        return NULL;
    }
    if (names_check(purpose, object_id, e) != INF_OK)
        return NULL;
    r = calloc(1, sizeof *r);
    if (r == NULL) {
        err_set(e, INF_ENOMEM, "seal: out of memory");
        return NULL;
    }
    snprintf(r->what, sizeof r->what, "sealed file %s", path);
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0) {
        if (errno == ENOENT)
            err_set(e, INF_ENOTFOUND, "%s: no such file", r->what);
        else
            err_set(e, INF_EIO, "%s: %s", r->what, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(r->fd, &st) != 0) {
        err_set(e, INF_EIO, "%s: %s", r->what, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(e, INF_EINVAL, "%s: not a regular file", r->what);
        goto fail;
    }
    /* Exactly the header these names make: a longer stored name fails the comparison. */
    size_t want = hdr_len_for(purpose, object_id), got = 0;
    if (read_full(r->fd, hbuf, want, &got) != 0) {
        err_set(e, INF_EIO, "%s: %s", r->what, strerror(errno));
        goto fail;
    }
    if (hdr_parse(&r->h, hbuf, got, purpose, object_id, r->what, e) != INF_OK)
        goto fail;
    r->body_len = (uint64_t)st.st_size > want ? (uint64_t)st.st_size - want : 0;
    if (cipher_new(mk, &r->h, purpose, object_id, false, &r->ctx, e) != INF_OK)
        goto fail;
    r->in = malloc((size_t)r->h.chunk_size + SEAL_TAG_BYTES + 1);
    r->plain = malloc(r->h.chunk_size);
    if (r->in == NULL || r->plain == NULL) {
        err_set(e, INF_ENOMEM, "seal: out of memory");
        goto fail;
    }
    if (reader_next(r, e) != INF_OK)
        goto fail;
    return r;
fail:
    seal_reader_free(r);
    return NULL;
}

int seal_reader_read(struct seal_reader *r, void *buf, size_t cap, size_t *n, struct err *e)
{
    if (n != NULL)
        *n = 0;
    /* cap == 0 is refused: *n == 0 must only ever mean the end. */
    if (r == NULL || n == NULL || buf == NULL || cap == 0)
        return err_set(e, INF_EINVAL, "seal_reader_read: bad arguments");
    if (r->failed != INF_OK)
        return err_set(e, r->failed, "%s: the reader failed earlier", r->what);
    /* A non-final chunk always holds data, so one step of this loop finds some or the end. */
    while (r->plain_pos == r->plain_len) {
        if (r->final_seen)
            return INF_OK;
        int rc = reader_next(r, e);
        if (rc != INF_OK)
            return rc;
    }
    size_t take = r->plain_len - r->plain_pos;
    if (take > cap)
        take = cap;
    memcpy(buf, r->plain + r->plain_pos, take);
    r->plain_pos += take;
    *n = take;
    return INF_OK;
}

void seal_reader_free(struct seal_reader *r)
{
    if (r == NULL)
        return;
    if (r->fd >= 0)
        close(r->fd);
    EVP_CIPHER_CTX_free(r->ctx);
    if (r->plain != NULL)
        OPENSSL_cleanse(r->plain, r->h.chunk_size);
    free(r->plain);
    free(r->in);
    free(r);
}

/* ------------------------------------------------------------------------------------------
 * Whole files
 * ---------------------------------------------------------------------------------------- */

int seal_file_write(const char *path, const struct master_key *mk, const char *purpose,
                    const char *object_id, const void *data, size_t len, unsigned mode,
                    struct err *e)
{
    struct err le = {0}; /* the status must survive a NULL e */
    struct seal_writer *w = seal_writer_new(path, mk, purpose, object_id, mode, &le);
    if (w == NULL)
        return err_set(e, le.status, "%s", le.msg);
    int rc = seal_writer_write(w, data, len, e);
    if (rc == INF_OK)
        rc = seal_writer_commit(w, e);
    seal_writer_free(w);
    return rc;
}

int seal_file_read(const char *path, const struct master_key *mk, const char *purpose,
                   const char *object_id, size_t max_bytes, uint8_t **data, size_t *len,
                   struct err *e)
{
    int rc = INF_OK;
    uint8_t *buf = NULL;
    uint64_t expect = 0;
    size_t done = 0;
    if (data == NULL || len == NULL)
        return err_set(e, INF_EINVAL, "seal_file_read: bad arguments");
    struct err le = {0}; /* the status must survive a NULL e */
    struct seal_reader *r = seal_reader_new(path, mk, purpose, object_id, &le);
    if (r == NULL)
        return err_set(e, le.status, "%s", le.msg);
    /* The first chunk authenticated, so the chunk size is genuine; the body length is not
     * authenticated yet, but a file that lies about it fails below. */
    if (!plain_len_of(r->body_len, r->h.chunk_size, &expect)) {
        rc = err_set(e, INF_EINVAL, "%s: " AUTH_FAILED ": the final chunk is missing", r->what);
        goto out;
    }
    if (expect > max_bytes) {
        rc = err_set(e, INF_ELIMIT, "%s: holds %llu bytes, the limit is %zu", r->what,
                     (unsigned long long)expect, max_bytes);
        goto out;
    }
    buf = malloc((size_t)expect + 1);
    if (buf == NULL) {
        rc = err_set(e, INF_ENOMEM, "%s: out of memory for %llu bytes", r->what,
                     (unsigned long long)expect);
        goto out;
    }
    for (;;) {
        size_t n = 0, room = (size_t)expect - done;
        /* One spare byte of room (buf has expect + 1) catches a file that grew. */
        rc = seal_reader_read(r, buf + done, room + 1, &n, e);
        if (rc != INF_OK)
            goto out;
        if (n == 0)
            break;
        done += n;
        if (done > expect) {
            rc = err_set(e, INF_EINVAL, "%s: the file changed while being read", r->what);
            goto out;
        }
    }
    buf[done] = '\0';
    *data = buf;
    *len = done;
    buf = NULL;
out:
    if (buf != NULL)
        OPENSSL_cleanse(buf, (size_t)expect + 1);
    free(buf);
    seal_reader_free(r);
    return rc;
}
