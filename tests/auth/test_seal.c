/*
 * tests/auth/test_seal.c - sealing at rest: round trips across chunk boundaries, streaming in
 * odd pieces, and that every kind of damage (a flipped bit anywhere, truncation, reordered,
 * duplicated or dropped chunks, appended bytes, wrong key/purpose/id) is an error that hands
 * out no unauthenticated plaintext. INFERA_TEST_QUICK=1 (valgrind) samples the exhaustive loops.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/seal.h"
#include "common/common.h"
#include "tests/test.h"

#define CS      ((size_t)SEAL_CHUNK_SIZE)
#define STRIDE  (CS + SEAL_TAG_BYTES)
#define PURPOSE "file"
#define OBJ     "file-abc123"
#define BAD_PTR ((uint8_t *)&sentinel)

static char scratch[64];
static struct master_key mk;
static uint8_t sentinel;

static const char *path_of(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", scratch, name);
    return buf;
}

/* Deterministic bytes that differ between offsets and seeds. */
static uint8_t *pattern(size_t len, uint32_t seed)
{
    uint8_t *p = malloc(len + 1);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (uint8_t)x;
    }
    return p;
}

static size_t sealed_size(size_t hdr, size_t len)
{
    size_t chunks = len == 0 ? 1 : (len + CS - 1) / CS;
    return hdr + len + chunks * SEAL_TAG_BYTES;
}

/* 8 magic + 1 version + 1 + "file" + 1 + "file-abc123" + 16 salt + 12 nonce + 4 chunk. */
static const size_t HDR = 8 + 1 + 1 + 4 + 1 + 11 + 16 + 12 + 4;

static bool put_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return false;
    bool ok = len == 0 || write(fd, data, len) == (ssize_t)len;
    return close(fd) == 0 && ok;
}

static uint8_t *get_file(const char *path, size_t *len)
{
    char *data = NULL;
    if (fs_read_file(path, (size_t)1 << 30, &data, len, NULL) != INF_OK)
        return NULL;
    return (uint8_t *)data;
}

/* Entries of the scratch directory whose name contains needle. */
static int count_entries(const char *needle)
{
    int n = 0;
    DIR *d = opendir(scratch);
    struct dirent *de;
    while (d != NULL && (de = readdir(d)) != NULL)
        if (strstr(de->d_name, needle) != NULL)
            n++;
    if (d != NULL)
        closedir(d);
    return n;
}

/*
 * Opens sealed bytes both ways: seal_decrypt on the buffer and a streaming reader on a file
 * (reads of cap bytes). Checks the reader only ever emits a prefix of orig (authenticated
 * chunks), at most max_emit bytes when the damage is expected. Returns the buffer status;
 * both statuses must agree.
 */
static int open_both(const uint8_t *sealed, size_t len, const struct master_key *key,
                     const char *purpose, const char *obj, const uint8_t *orig, size_t orig_len,
                     size_t cap, size_t max_emit, struct err *e)
{
    uint8_t *out = BAD_PTR;
    size_t out_len = 12345;
    err_clear(e);
    int rc = seal_decrypt(key, purpose, obj, sealed, len, &out, &out_len, e);
    if (rc == INF_OK) {
        CHECK(out_len == orig_len && memcmp(out, orig, orig_len) == 0);
        free(out);
    } else {
        CHECK(out == BAD_PTR && out_len == 12345); /* nothing handed out */
    }

    const char *path = path_of("probe.sealed");
    CHECK(put_file(path, sealed, len));
    struct err fe = {0};
    size_t emitted = 0;
    bool prefix_ok = true; /* every byte handed out is the original's at that offset */
    uint8_t *buf = malloc(cap);
    struct seal_reader *r = seal_reader_new(path, key, purpose, obj, &fe);
    int frc = r == NULL ? fe.status : INF_OK;
    while (r != NULL) {
        size_t n = 99;
        frc = seal_reader_read(r, buf, cap, &n, &fe);
        if (frc != INF_OK || n == 0) {
            prefix_ok = prefix_ok && n == 0;
            break;
        }
        if (n > cap || emitted + n > orig_len || memcmp(buf, orig + emitted, n) != 0)
            prefix_ok = false;
        emitted += n;
    }
    CHECK_MSG(prefix_ok, "reader emitted bytes that are not the original's, near %zu", emitted);
    if (r != NULL && frc == INF_OK)
        CHECK(emitted == orig_len);
    if (frc != INF_OK)
        CHECK_MSG(emitted <= max_emit, "emitted %zu > %zu before the error", emitted, max_emit);
    seal_reader_free(r);
    free(buf);
    CHECK_MSG(frc == rc, "file status %d, buffer status %d (%s | %s)", frc, rc, fe.msg, e->msg);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

static const size_t sizes[] = {0,         1,
                               15,        16,
                               17,        1000,
                               65535,     65536,
                               65537,     2 * 65536,
                               3 * 65536, 3 * 65536 + 5,
                               262143,    4 * 65536 + 1};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* Byte strings from hex (test data only). */
static uint8_t *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    uint8_t *b = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(hex_digit(hex[2 * i]) << 4 | hex_digit(hex[2 * i + 1]));
    *len = n;
    return b;
}

/*
 * Known answers made by an independent implementation of the format in seal.h (Python's
 * cryptography: HKDF-SHA256 and AESGCM), master key c0..df, salt 00..0f, nonce 64..6f,
 * purpose "file", object "kat".
 */
static void test_known_answer(void)
{
    static const char *hex[2] = {
        "4946525345414c00010466696c65036b6174000102030405060708090a0b0c0d0e0f6465666768696a6b"
        "6c6d6e6f00010000a4c2df0e0e5069d234e7cd99264ae873b2c23723ba1a9a7f4c3a1bc3510da818ae0562",
        "4946525345414c00010466696c65036b6174000102030405060708090a0b0c0d0e0f6465666768696a6b"
        "6c6d6e6f0001000099be0e61879a8477ac39a8c41d74cd01",
    };
    static const char *plain[2] = {"hello, sealed world", ""};
    for (int i = 0; i < 2; i++) {
        size_t len = 0, olen = 0;
        uint8_t *sealed = unhex(hex[i], &len), *out = NULL;
        struct err e = {0};
        int rc = seal_decrypt(&mk, PURPOSE, "kat", sealed, len, &out, &olen, &e);
        CHECK_MSG(rc == INF_OK, "%s", e.msg);
        CHECK(out != NULL && olen == strlen(plain[i]) && memcmp(out, plain[i], olen) == 0);
        free(out);
        free(sealed);
    }
}

static void test_roundtrip_buffers(void)
{
    for (size_t i = 0; i < NSIZES; i++) {
        size_t len = sizes[i];
        uint8_t *plain = pattern(len, (uint32_t)i), *sealed = NULL, *back = NULL;
        size_t slen = 0, blen = 0;
        struct err e = {0};
        int rc = seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e);
        CHECK_MSG(rc == INF_OK, "%zu: %s", len, e.msg);
        CHECK_MSG(slen == sealed_size(HDR, len), "len %zu sealed %zu", len, slen);
        CHECK(len < 32 || memmem(sealed, slen, plain, 32) == NULL); /* it is encrypted */
        rc = seal_decrypt(&mk, PURPOSE, OBJ, sealed, slen, &back, &blen, &e);
        CHECK_MSG(rc == INF_OK, "%zu: %s", len, e.msg);
        CHECK(back != NULL && blen == len && memcmp(back, plain, len) == 0 && back[len] == 0);
        free(plain);
        free(sealed);
        free(back);
    }
}

static void test_roundtrip_files(void)
{
    const char *path = path_of("rt.sealed");
    static const size_t caps[] = {4096, 65536, 7, 1, 70000}; /* quick: the first two */
    for (size_t i = 0; i < NSIZES; i++) {
        size_t len = sizes[i];
        uint8_t *plain = pattern(len, (uint32_t)(100 + i)), *back = NULL;
        size_t blen = 0;
        struct err e = {0};
        int rc = seal_file_write(path, &mk, PURPOSE, OBJ, plain, len, 0600, &e);
        CHECK_MSG(rc == INF_OK, "%zu: %s", len, e.msg);
        struct stat st;
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
        CHECK((size_t)st.st_size == sealed_size(HDR, len));
        rc = seal_file_read(path, &mk, PURPOSE, OBJ, len, &back, &blen, &e);
        CHECK_MSG(rc == INF_OK, "%zu: %s", len, e.msg);
        CHECK(back != NULL && blen == len && memcmp(back, plain, len) == 0 && back[len] == 0);
        free(back);

        /* The file bytes open as a buffer too, and through readers with small buffers. */
        size_t slen = 0;
        uint8_t *sealed = get_file(path, &slen);
        CHECK(sealed != NULL);
        size_t ncaps = test_quick() && len > 1000 ? 2 : sizeof caps / sizeof caps[0];
        for (size_t c = 0; c < ncaps && sealed != NULL; c++) {
            if (caps[c] == 1 && len > 70000)
                continue; /* byte-at-a-time over 4 chunks adds nothing but time */
            CHECK(open_both(sealed, slen, &mk, PURPOSE, OBJ, plain, len, caps[c], 0, &e) == INF_OK);
        }
        free(sealed);
        free(plain);
    }
    /* A mode other than 0600 is applied exactly. */
    struct err e = {0};
    CHECK(seal_file_write(path, &mk, PURPOSE, OBJ, "x", 1, 0640, &e) == INF_OK);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0640);
}

static void test_streaming_pieces(void)
{
    static const size_t pieces[] = {1, 3, 0, 4093, 65535, 65536, 65537, 100000, 2, 131072, 17};
    size_t total = 0;
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
        total += pieces[i];
    uint8_t *plain = pattern(total, 7), *back = NULL;
    const char *path = path_of("pieces.sealed");
    struct err e = {0};
    struct seal_writer *w = seal_writer_new(path, &mk, "checkpoint", "job-1/epoch-3", 0600, &e);
    CHECK_MSG(w != NULL, "%s", e.msg);
    size_t off = 0;
    for (size_t i = 0; w != NULL && i < sizeof pieces / sizeof pieces[0]; i++) {
        CHECK(seal_writer_write(w, plain + off, pieces[i], &e) == INF_OK);
        off += pieces[i];
    }
    CHECK(access(path, F_OK) != 0); /* not there before the commit */
    CHECK(seal_writer_commit(w, &e) == INF_OK);
    CHECK(seal_writer_write(w, "x", 1, &e) == INF_EINVAL); /* committed */
    err_clear(&e);
    seal_writer_free(w);
    CHECK(count_entries(".tmp.") == 0);

    size_t blen = 0;
    CHECK(seal_file_read(path, &mk, "checkpoint", "job-1/epoch-3", total, &back, &blen, &e) ==
          INF_OK);
    CHECK(back != NULL && blen == total && memcmp(back, plain, total) == 0);
    free(back);

    /* Same plaintext as one buffer: same sealed length (the chunking does not depend on the
     * pieces). */
    struct stat st;
    CHECK(stat(path, &st) == 0);
    CHECK((size_t)st.st_size == sealed_size(8 + 1 + 1 + 10 + 1 + 13 + 28 + 4, total));

    /* A reader with an odd buffer size; reads after the end keep returning 0. */
    struct seal_reader *r = seal_reader_new(path, &mk, "checkpoint", "job-1/epoch-3", &e);
    CHECK_MSG(r != NULL, "%s", e.msg);
    uint8_t buf[3001];
    size_t got = 0, n = 0;
    while (r != NULL && seal_reader_read(r, buf, sizeof buf, &n, &e) == INF_OK && n > 0) {
        CHECK(got + n <= total && memcmp(buf, plain + got, n) == 0);
        got += n;
    }
    CHECK(got == total && e.status == 0);
    CHECK(r != NULL && seal_reader_read(r, buf, sizeof buf, &n, &e) == INF_OK && n == 0);
    CHECK(r != NULL && seal_reader_read(r, buf, 0, &n, &e) == INF_EINVAL && n == 0);
    err_clear(&e);
    seal_reader_free(r);
    free(plain);

    /* Exactly one full chunk written in pieces ends with a full final chunk. */
    plain = pattern(CS, 8);
    w = seal_writer_new(path, &mk, PURPOSE, OBJ, 0600, &e);
    CHECK(w != NULL && seal_writer_write(w, plain, 1000, &e) == INF_OK &&
          seal_writer_write(w, plain + 1000, CS - 1000, &e) == INF_OK &&
          seal_writer_commit(w, &e) == INF_OK);
    seal_writer_free(w);
    CHECK(stat(path, &st) == 0 && (size_t)st.st_size == HDR + STRIDE);
    back = NULL;
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, CS, &back, &blen, &e) == INF_OK);
    CHECK(back != NULL && blen == CS && memcmp(back, plain, CS) == 0);
    free(back);
    free(plain);
}

static void test_flip_every_byte_small(void)
{
    static const uint8_t masks[] = {0x01, 0x80, 0xFF};
    size_t nmasks = test_quick() ? 1 : sizeof masks / sizeof masks[0];
    size_t len = 40, slen = 0;
    uint8_t *plain = pattern(len, 3), *sealed = NULL;
    struct err e = {0};
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
    uint8_t *copy = malloc(slen);
    int detected = 0, tried = 0;
    for (size_t pos = 0; sealed != NULL && pos < slen; pos++) {
        for (size_t m = 0; m < nmasks; m++) {
            memcpy(copy, sealed, slen);
            copy[pos] ^= masks[m];
            int rc = open_both(copy, slen, &mk, PURPOSE, OBJ, plain, len, 16, 0, &e);
            tried++;
            if (rc == INF_EINVAL)
                detected++;
            else
                fprintf(stderr, "flip at %zu mask %02x: status %d\n", pos, masks[m], rc);
        }
    }
    CHECK(tried > 0 && detected == tried);
    /* Past the magic, the message says what happened. */
    memcpy(copy, sealed, slen);
    copy[slen - 1] ^= 1;
    CHECK(open_both(copy, slen, &mk, PURPOSE, OBJ, plain, len, 16, 0, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "authentication failed (wrong key or tampered data)");
    copy[slen - 1] ^= 1;
    copy[0] ^= 1;
    CHECK(open_both(copy, slen, &mk, PURPOSE, OBJ, plain, len, 16, 0, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "not a sealed file");
    free(copy);
    free(sealed);
    free(plain);
}

static void test_flip_multichunk(void)
{
    size_t len = 3 * CS + 1000, slen = 0;
    uint8_t *plain = pattern(len, 11), *sealed = NULL;
    struct err e = {0};
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
    if (sealed == NULL)
        return;
    uint8_t *copy = malloc(slen);
    /* Positions: every header byte, then per chunk its first, middle and last ciphertext
     * bytes and every tag byte; plus pseudo-random ones. */
    size_t pos[400], np = 0;
    for (size_t i = 0; i < HDR; i += test_quick() ? 7 : 1)
        pos[np++] = i;
    for (size_t c = 0; c < 4; c++) {
        size_t start = HDR + c * STRIDE;
        size_t ct = c < 3 ? CS : 1000;
        pos[np++] = start;
        pos[np++] = start + ct / 2;
        pos[np++] = start + ct - 1;
        for (size_t t = 0; t < SEAL_TAG_BYTES; t += test_quick() ? 5 : 1)
            pos[np++] = start + ct + t;
    }
    uint32_t x = 12345;
    for (int i = 0; i < (test_quick() ? 8 : 60); i++) {
        x = x * 1103515245u + 12345u;
        pos[np++] = x % slen;
    }
    int detected = 0;
    for (size_t i = 0; i < np; i++) {
        memcpy(copy, sealed, slen);
        copy[pos[i]] ^= (uint8_t)(1u << (i % 8));
        /* The reader may hand out the chunks before the damaged one, never that one. */
        size_t chunk = pos[i] < HDR ? 0 : (pos[i] - HDR) / STRIDE;
        size_t cap = i % 2 ? 5000 : 65536;
        int rc = open_both(copy, slen, &mk, PURPOSE, OBJ, plain, len, cap, chunk * CS, &e);
        if (rc == INF_EINVAL)
            detected++;
        else
            fprintf(stderr, "flip at %zu: status %d\n", pos[i], rc);
    }
    CHECK(np >= 40 && detected == (int)np);
    free(copy);
    free(sealed);
    free(plain);
}

static void test_truncation(void)
{
    /* Two shapes: a partial last chunk, and a full last chunk (the length a multiple of CS). */
    static const size_t lens[] = {3 * CS + 1000, 3 * CS};
    for (size_t l = 0; l < 2; l++) {
        size_t len = lens[l], slen = 0;
        uint8_t *plain = pattern(len, 21), *sealed = NULL;
        struct err e = {0};
        CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
        if (sealed == NULL)
            continue;
        size_t cuts[64], nc = 0;
        cuts[nc++] = 0;
        cuts[nc++] = 5;
        cuts[nc++] = HDR - 1;
        for (size_t c = 0; c < 4; c++) {
            size_t b = HDR + c * STRIDE;
            if (b >= slen)
                break;
            cuts[nc++] = b; /* at a chunk boundary: no final chunk */
            cuts[nc++] = b + 1;
            cuts[nc++] = b + 15;
            cuts[nc++] = b + 16;
            cuts[nc++] = b + STRIDE / 2;
            cuts[nc++] = b + STRIDE - 1; /* the last tag byte */
        }
        cuts[nc++] = slen - 1;
        for (size_t i = 0; i < nc; i++) {
            if (cuts[i] >= slen)
                continue;
            size_t chunk = cuts[i] < HDR ? 0 : (cuts[i] - HDR) / STRIDE;
            int rc =
                open_both(sealed, cuts[i], &mk, PURPOSE, OBJ, plain, len, 65536, chunk * CS, &e);
            CHECK_MSG(rc == INF_EINVAL, "cut at %zu of %zu: status %d", cuts[i], slen, rc);
        }
        free(sealed);
        free(plain);
    }
}

static void test_reorder_duplicate_append(void)
{
    size_t len = 3 * CS + 1000, slen = 0;
    uint8_t *plain = pattern(len, 31), *sealed = NULL;
    struct err e = {0};
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
    if (sealed == NULL)
        return;
    uint8_t *buf = malloc(slen + STRIDE + 100);
    uint8_t *c0 = sealed + HDR, *c1 = c0 + STRIDE, *c2 = c1 + STRIDE, *c3 = c2 + STRIDE;
    size_t last = slen - (size_t)(c3 - sealed);

    /* Swap chunks 0 and 1. */
    memcpy(buf, sealed, slen);
    memcpy(buf + HDR, c1, STRIDE);
    memcpy(buf + HDR + STRIDE, c0, STRIDE);
    CHECK(open_both(buf, slen, &mk, PURPOSE, OBJ, plain, len, 65536, 0, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "authentication failed");

    /* Swap chunks 1 and 2: chunk 0 may be handed out, nothing after it. */
    memcpy(buf, sealed, slen);
    memcpy(buf + HDR + STRIDE, c2, STRIDE);
    memcpy(buf + HDR + 2 * STRIDE, c1, STRIDE);
    CHECK(open_both(buf, slen, &mk, PURPOSE, OBJ, plain, len, 65536, CS, &e) == INF_EINVAL);

    /* Duplicate chunk 1 (insert a copy after it). */
    size_t n = 0;
    memcpy(buf, sealed, HDR + 2 * STRIDE);
    n = HDR + 2 * STRIDE;
    memcpy(buf + n, c1, STRIDE);
    n += STRIDE;
    memcpy(buf + n, c2, 2 * STRIDE - STRIDE + last);
    n += STRIDE + last;
    CHECK(n == slen + STRIDE);
    CHECK(open_both(buf, n, &mk, PURPOSE, OBJ, plain, len, 65536, 2 * CS, &e) == INF_EINVAL);

    /* Drop chunk 1. */
    memcpy(buf, sealed, HDR + STRIDE);
    memcpy(buf + HDR + STRIDE, c2, STRIDE + last);
    CHECK(open_both(buf, slen - STRIDE, &mk, PURPOSE, OBJ, plain, len, 65536, CS, &e) ==
          INF_EINVAL);

    /* Replace the final chunk with a non-final one (drop the real end). */
    memcpy(buf, sealed, HDR + 3 * STRIDE);
    CHECK(open_both(buf, HDR + 3 * STRIDE, &mk, PURPOSE, OBJ, plain, len, 65536, 2 * CS, &e) ==
          INF_EINVAL);

    /* Appended garbage: 1 byte, 16 bytes, a copy of a whole chunk. */
    static const size_t extra[] = {1, 16, 17};
    for (size_t i = 0; i < 3; i++) {
        memcpy(buf, sealed, slen);
        memset(buf + slen, 0xA5, extra[i]);
        CHECK(open_both(buf, slen + extra[i], &mk, PURPOSE, OBJ, plain, len, 65536, 3 * CS, &e) ==
              INF_EINVAL);
    }
    memcpy(buf, sealed, slen);
    memcpy(buf + slen, c0, STRIDE);
    CHECK(open_both(buf, slen + STRIDE, &mk, PURPOSE, OBJ, plain, len, 65536, 3 * CS, &e) ==
          INF_EINVAL);
    free(buf);
    free(sealed);
    free(plain);

    /* Appended bytes after a full final chunk (the length a multiple of CS). */
    len = 2 * CS;
    plain = pattern(len, 32);
    sealed = NULL;
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
    buf = malloc(slen + 20);
    for (size_t k = 1; sealed != NULL && k <= 20; k += 19) {
        memcpy(buf, sealed, slen);
        memset(buf + slen, 0, k);
        CHECK(open_both(buf, slen + k, &mk, PURPOSE, OBJ, plain, len, 65536, CS, &e) == INF_EINVAL);
    }
    free(buf);
    free(sealed);
    free(plain);
}

static void test_wrong_key_purpose_id(void)
{
    size_t len = CS + 10, slen = 0;
    uint8_t *plain = pattern(len, 41), *sealed = NULL;
    struct err e = {0};
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, len, &sealed, &slen, &e) == INF_OK);
    if (sealed == NULL)
        return;
    struct master_key other = mk;
    other.bytes[17] ^= 0x10;
    CHECK(open_both(sealed, slen, &other, PURPOSE, OBJ, plain, len, 4096, 0, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "authentication failed (wrong key or tampered data)");

    static const char *ids[] = {"file-abc124", "file-abc12", "file-abc1234", "x"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        CHECK(open_both(sealed, slen, &mk, PURPOSE, ids[i], plain, len, 4096, 0, &e) == INF_EINVAL);
        CHECK_ERR_HAS(&e, "authentication failed");
    }
    CHECK(open_both(sealed, slen, &mk, "checkpoint", OBJ, plain, len, 4096, 0, &e) == INF_EINVAL);
    CHECK(open_both(sealed, slen, &mk, "filf", OBJ, plain, len, 4096, 0, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "authentication failed");

    /* Relabelling the header for another object (names of the same length) is caught by the
     * key derivation and the AAD, not only by the name comparison. */
    uint8_t *copy = malloc(slen);
    memcpy(copy, sealed, slen);
    size_t id_at = 8 + 1 + 1 + 4 + 1;
    CHECK(memcmp(copy + id_at, OBJ, 11) == 0);
    copy[id_at + 10] = '4';
    CHECK(open_both(copy, slen, &mk, PURPOSE, "file-abc124", plain, len, 4096, 0, &e) ==
          INF_EINVAL);
    CHECK_ERR_HAS(&e, "authentication failed");
    free(copy);
    free(sealed);
    free(plain);
}

static void test_seals_differ(void)
{
    uint8_t plain[100] = {0};
    uint8_t *a = NULL, *b = NULL;
    size_t al = 0, bl = 0;
    struct err e = {0};
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, sizeof plain, &a, &al, &e) == INF_OK);
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, sizeof plain, &b, &bl, &e) == INF_OK);
    CHECK(a != NULL && b != NULL && al == bl);
    if (a != NULL && b != NULL) {
        CHECK(memcmp(a, b, 8 + 1 + 1 + 4 + 1 + 11) == 0);                    /* same names */
        CHECK(memcmp(a + HDR - 32, b + HDR - 32, 16) != 0);                  /* salt */
        CHECK(memcmp(a + HDR - 16, b + HDR - 16, 12) != 0);                  /* nonce */
        CHECK(memcmp(a + HDR, b + HDR, sizeof plain + SEAL_TAG_BYTES) != 0); /* body */
    }
    free(a);
    free(b);
}

static void test_writer_abort(void)
{
    const char *path = path_of("abort.sealed");
    uint8_t *plain = pattern(200000, 51);
    struct err e = {0};

    /* Abort a fresh file: nothing remains. */
    struct seal_writer *w = seal_writer_new(path, &mk, PURPOSE, OBJ, 0600, &e);
    CHECK(w != NULL);
    CHECK(count_entries("abort.sealed.tmp.") == 1);
    CHECK(seal_writer_write(w, plain, 200000, &e) == INF_OK);
    seal_writer_free(w);
    CHECK(access(path, F_OK) != 0);
    CHECK(count_entries("abort.sealed") == 0);

    /* Abort a replacement: the old file stays whole. */
    CHECK(seal_file_write(path, &mk, PURPOSE, OBJ, "old", 3, 0600, &e) == INF_OK);
    w = seal_writer_new(path, &mk, PURPOSE, OBJ, 0600, &e);
    CHECK(w != NULL && seal_writer_write(w, plain, 100000, &e) == INF_OK);
    seal_writer_free(w);
    uint8_t *back = NULL;
    size_t blen = 0;
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, 100, &back, &blen, &e) == INF_OK);
    CHECK(back != NULL && blen == 3 && memcmp(back, "old", 3) == 0);
    free(back);
    CHECK(count_entries(".tmp.") == 0);

    /* A writer in a directory that does not exist fails cleanly. */
    err_clear(&e);
    CHECK(seal_writer_new(path_of("no/such/dir/x"), &mk, PURPOSE, OBJ, 0600, &e) == NULL);
    CHECK(e.status == INF_EIO);
    seal_writer_free(NULL);
    seal_reader_free(NULL);
    free(plain);
}

static void test_limits_and_names(void)
{
    const char *path = path_of("limit.sealed");
    uint8_t *plain = pattern(70000, 61), *back = BAD_PTR;
    size_t blen = 0;
    struct err e = {0};
    CHECK(seal_file_write(path, &mk, PURPOSE, OBJ, plain, 70000, 0600, &e) == INF_OK);
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, 69999, &back, &blen, &e) == INF_ELIMIT);
    CHECK(back == BAD_PTR);
    CHECK_ERR_HAS(&e, "limit");
    err_clear(&e);
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, 70000, &back, &blen, &e) == INF_OK);
    CHECK(blen == 70000 && back != BAD_PTR && memcmp(back, plain, blen) == 0);
    free(back);
    CHECK(seal_file_write(path, &mk, PURPOSE, OBJ, NULL, 0, 0600, &e) == INF_OK);
    back = NULL;
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, 0, &back, &blen, &e) == INF_OK);
    CHECK(back != NULL && blen == 0 && back[0] == 0);
    free(back);

    /* Not found, not sealed. */
    err_clear(&e);
    back = BAD_PTR;
    CHECK(seal_file_read(path_of("missing"), &mk, PURPOSE, OBJ, 100, &back, &blen, &e) ==
          INF_ENOTFOUND);
    CHECK(put_file(path, "{\"hello\": 1}\n", 13));
    err_clear(&e);
    CHECK(seal_file_read(path, &mk, PURPOSE, OBJ, 100, &back, &blen, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "not a sealed file");
    CHECK(back == BAD_PTR);

    /* Names. */
    char longname[300];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    uint8_t *out = BAD_PTR;
    size_t olen = 0;
    const char *bad_purposes[] = {"", "a/b", longname, NULL};
    for (size_t i = 0; i < 4; i++) {
        err_clear(&e);
        CHECK(seal_encrypt(&mk, bad_purposes[i], OBJ, "x", 1, &out, &olen, &e) == INF_EINVAL);
        CHECK(seal_writer_new(path, &mk, bad_purposes[i], OBJ, 0600, &e) == NULL);
    }
    err_clear(&e);
    CHECK(seal_encrypt(&mk, PURPOSE, "", "x", 1, &out, &olen, &e) == INF_EINVAL);
    CHECK(seal_encrypt(&mk, PURPOSE, longname, "x", 1, &out, &olen, &e) == INF_EINVAL);
    CHECK(out == BAD_PTR);
    /* Longest names are fine. */
    longname[SEAL_NAME_MAX] = '\0';
    err_clear(&e);
    CHECK(seal_encrypt(&mk, longname, longname, "x", 1, &out, &olen, &e) == INF_OK);
    uint8_t *b2 = NULL;
    CHECK(out != BAD_PTR &&
          seal_decrypt(&mk, longname, longname, out, olen, &b2, &blen, &e) == INF_OK);
    CHECK(b2 != NULL && blen == 1 && b2[0] == 'x');
    free(b2);
    if (out != BAD_PTR)
        free(out);

    /* A reader that failed stays failed. */
    size_t slen = 0;
    uint8_t *sealed = NULL;
    CHECK(seal_encrypt(&mk, PURPOSE, OBJ, plain, 70000, &sealed, &slen, &e) == INF_OK);
    CHECK(sealed != NULL && put_file(path, sealed, slen - 1));
    struct seal_reader *r = seal_reader_new(path, &mk, PURPOSE, OBJ, &e);
    CHECK(r != NULL);
    uint8_t buf[70000];
    size_t n = 0;
    CHECK(r != NULL && seal_reader_read(r, buf, sizeof buf, &n, &e) == INF_OK && n == CS);
    err_clear(&e);
    CHECK(r != NULL && seal_reader_read(r, buf, sizeof buf, &n, &e) == INF_EINVAL && n == 0);
    err_clear(&e);
    CHECK(r != NULL && seal_reader_read(r, buf, sizeof buf, &n, &e) == INF_EINVAL && n == 0);
    seal_reader_free(r);
    free(sealed);
    free(plain);
}

int main(void)
{
    snprintf(scratch, sizeof scratch, "/tmp/infera-test-seal-XXXXXX");
    if (mkdtemp(scratch) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    for (int i = 0; i < MASTER_KEY_BYTES; i++)
        mk.bytes[i] = (uint8_t)(0xC0 + i);
    RUN(test_known_answer);
    RUN(test_roundtrip_buffers);
    RUN(test_roundtrip_files);
    RUN(test_streaming_pieces);
    RUN(test_flip_every_byte_small);
    RUN(test_flip_multichunk);
    RUN(test_truncation);
    RUN(test_reorder_duplicate_append);
    RUN(test_wrong_key_purpose_id);
    RUN(test_seals_differ);
    RUN(test_writer_abort);
    RUN(test_limits_and_names);
    fs_remove_tree(scratch);
    master_key_wipe(&mk);
    return test_finish();
}
