/*
 * tests/auth/test_audit.c - the tamper-evident, durable audit log.
 *
 *   basics       records of every value type verify; files are 0600 in a 0700 directory;
 *                non-ASCII text is written as \uXXXX and round-trips; bad records are refused.
 *   flat lines   audit_line_flat (flat records serialised without jansson's dump) against
 *                json_dump_checked on 20,000 random records (seeded, seed printed): tricky key
 *                orders, every control character, escapes, 2-4 byte UTF-8, U+2028/2029,
 *                INT64_MIN/MAX; the same bytes, offsets and errors (invalid UTF-8 set with
 *                *_nocheck, too long), except that two keys that are not UTF-8 are refused
 *                where json_dump_checked let them through; non-flat records still go through
 *                jansson; each allocation failing in turn; random records through audit_append
 *                verify and are the bytes jansson writes. Prints audit_line_prepare's time per
 * record. concurrency  8 threads append at once: seqs unique and contiguous, fewer fsyncs than
 *                records (group commit), the chain verifies.
 *   segments     a tiny segment_bytes makes many segments, each opening with segment_start;
 *                reopening continues the seq and the chain.
 *   tampering    every kind of edit is found, with a message naming file, line and what:
 *                an edited value byte, an edited key byte, a deleted, inserted (copied) or
 *                swapped line, a non-canonical rewrite, removed first / middle segments,
 *                renamed segments, joined segments, a torn tail.
 *   torn tails   a partial last line, an unparsable last line, a torn or empty new segment are
 *                cut at open and recorded with audit.tail_truncated; an edited complete last
 *                line makes audit_open refuse.
 *   failures     the audit directory moved away and replaced by a file: INF_EIO and unhealthy,
 *                then healthy again (by itself, without appends) once the directory is back;
 *                a new empty directory continues with a new segment.
 *   crashes      a child appending from 4 threads is SIGKILLed at random moments (from inside
 *                audit_open's recovery to mid-append); half the time the bytes after the last
 *                acknowledged record are then cut at a random offset, as a power cut may lose
 *                unsynced data. Each time the log reopens, verifies, and holds every record the
 *                child was told was durable, with the seq it was told.
 *   write errors a write cut short by RLIMIT_FSIZE (as by a full disk) is truncated away and the
 *                chain continues from the last durable record.
 */
#include "tests/test.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Not only auth/audit.h: test_flat_lines calls audit_line_flat and audit_line_prepare. */
#include "auth/audit_internal.h"
#include "common/json_dump.h"

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static const uint8_t KEY[AUDIT_KEY_BYTES] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11,
                                             12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
                                             23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static char scratch[256];

static void die(const char *what)
{
    fprintf(stderr, "test setup failed: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void path_of(char *out, size_t cap, const char *dir, const char *name)
{
    if ((size_t)snprintf(out, cap, "%s/%s", dir, name) >= cap)
        die("path too long");
}

/* A fresh empty directory scratch/name; returns its path in out. */
static void fresh_dir(char *out, size_t cap, const char *name)
{
    path_of(out, cap, scratch, name);
    fs_remove_tree(out);
    if (mkdir(out, 0700) != 0)
        die(out);
}

static char *slurp(const char *path, size_t *len)
{
    char *data = NULL;
    size_t n = 0;
    struct err e = {0};
    if (fs_read_file(path, (size_t)1 << 30, &data, &n, &e) != INF_OK)
        return NULL;
    if (len != NULL)
        *len = n;
    return data;
}

static void spit(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, data, len) != (ssize_t)len || close(fd) != 0)
        die(path);
}

static void append_bytes(const char *path, const char *data)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    if (fd < 0 || write(fd, data, strlen(data)) != (ssize_t)strlen(data) || close(fd) != 0)
        die(path);
}

static void seg_path(char *out, size_t cap, const char *dir, unsigned num)
{
    char name[64];
    snprintf(name, sizeof name, "audit-%06u.jsonl", num);
    path_of(out, cap, dir, name);
}

/* Copies the regular files of src into a fresh scratch/name. */
static void copy_dir(const char *src, char *out, size_t cap, const char *name)
{
    fresh_dir(out, cap, name);
    DIR *d = opendir(src);
    if (d == NULL)
        die(src);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char from[512], to[512];
        size_t len;
        path_of(from, sizeof from, src, de->d_name);
        path_of(to, sizeof to, out, de->d_name);
        char *data = slurp(from, &len);
        if (data == NULL)
            die(from);
        spit(to, data, len);
        free(data);
    }
    closedir(d);
}

/* The lines of a file (each with its '\n'), at most 4096. */
struct lines {
    char *v[4096];
    size_t n;
};

static void lines_read(const char *path, struct lines *l)
{
    size_t len;
    char *data = slurp(path, &len);
    if (data == NULL)
        die(path);
    l->n = 0;
    for (size_t i = 0; i < len && l->n < 4096;) {
        size_t j = i;
        while (j < len && data[j] != '\n')
            j++;
        size_t n = j < len ? j - i + 1 : j - i;
        l->v[l->n] = calloc(1, n + 1);
        memcpy(l->v[l->n++], data + i, n);
        i += n;
    }
    free(data);
}

static void lines_write(const char *path, const struct lines *l)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        die(path);
    for (size_t i = 0; i < l->n; i++)
        if (write(fd, l->v[i], strlen(l->v[i])) != (ssize_t)strlen(l->v[i]))
            die(path);
    close(fd);
}

static void lines_free(struct lines *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    l->n = 0;
}

/* Calls fn with every line of every segment in dir (segment 1 on, until one is missing), parsed
 * (NULL if it does not parse). */
static void log_each_record(const char *dir, void (*fn)(const json_t *rec, void *ctx), void *ctx)
{
    char p[512];
    for (unsigned seg = 1;; seg++) {
        struct lines l;
        seg_path(p, sizeof p, dir, seg);
        if (access(p, F_OK) != 0)
            break;
        lines_read(p, &l);
        for (size_t i = 0; i < l.n; i++) {
            json_t *j = json_loads(l.v[i], 0, NULL);
            fn(j, ctx);
            json_decref(j);
        }
        lines_free(&l);
    }
}

static json_t *request_record(int i)
{
    json_t *r = json_object();
    json_object_set_new(r, "event", json_string("http.request"));
    json_object_set_new(r, "request_id", json_sprintf("req-%06d", i));
    json_object_set_new(r, "key_id", i % 3 ? json_string("k1") : json_null());
    json_object_set_new(r, "client", json_string("127.0.0.1"));
    json_object_set_new(r, "method", json_string(i % 2 ? "POST" : "GET"));
    json_object_set_new(r, "route", json_string("/v2/models/{m}/infer"));
    json_object_set_new(r, "status", json_integer(200));
    json_object_set_new(r, "outcome", json_string("ok"));
    json_object_set_new(r, "latency_ms", json_real(1.25 + i));
    json_object_set_new(r, "bytes_in", json_integer(100 + i));
    json_object_set_new(r, "ok", json_true());
    return r;
}

static int append_n(struct audit_log *log, int from, int n)
{
    int fails = 0;
    for (int i = from; i < from + n; i++) {
        json_t *r = request_record(i);
        struct err e = {0};
        if (audit_append(log, r, NULL, &e) != INF_OK) {
            fprintf(stderr, "append %d: %s\n", i, e.msg);
            fails++;
        }
        json_decref(r);
    }
    return fails;
}

static int verify_ok(const char *dir, struct audit_verify_report *rep)
{
    struct err e = {0};
    int rc = audit_verify(dir, KEY, rep, &e);
    if (rc != INF_OK)
        fprintf(stderr, "verify %s: %s\n", dir, e.msg);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Basics
 * ---------------------------------------------------------------------------------------- */

static void test_basics(void)
{
    char dir[256], p[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    path_of(dir, sizeof dir, scratch, "basics/audit"); /* parents are created */
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    uint64_t seq = 0;
    json_t *r = request_record(7);
    CHECK(audit_append(log, r, &seq, &e) == INF_OK);
    CHECK(seq == 2); /* seq 1 is the segment_start */
    CHECK(json_object_size(r) == 11 && json_object_get(r, "seq") == NULL); /* not modified */
    json_decref(r);
    CHECK(audit_healthy(log));
    CHECK(append_n(log, 0, 20) == 0);

    /* Non-ASCII text is escaped, so lines are ASCII, and it round-trips through verify. */
    r = json_pack("{s:s, s:s, s:f, s:I}", "event", "model.loaded", "name",
                  "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80 \"q\" \\ / \t", "x", -0.1, "big",
                  (json_int_t)9007199254740993LL);
    CHECK(audit_append(log, r, &seq, &e) == INF_OK);
    CHECK(seq == 23);
    json_decref(r);
    struct audit_stats st;
    audit_stats_get(log, &st);
    CHECK(st.records == 23 && st.last_seq == 23 && st.failures == 0);
    CHECK(st.fsyncs >= 1 && st.fsyncs <= 23 && st.fsync_seconds_total >= 0);
    audit_close(log);

    seg_path(p, sizeof p, dir, 1);
    size_t len;
    char *data = slurp(p, &len);
    CHECK(data != NULL);
    if (data != NULL) {
        bool ascii = true;
        for (size_t i = 0; i < len; i++)
            ascii = ascii && (unsigned char)data[i] < 0x80;
        CHECK(ascii);
        CHECK(strstr(data, "caf\\u00e9") != NULL || strstr(data, "caf\\u00E9") != NULL);
        CHECK(strstr(data, "\"event\":\"audit.segment_start\"") != NULL);
        CHECK(strstr(data, "\"prev_seq\":0,") != NULL);
        CHECK(data[len - 1] == '\n');
        /* The first line is canonical, has ts with milliseconds and UTC, and a 64-hex mac. */
        char *nl = strchr(data, '\n');
        json_t *first = json_loadb(data, (size_t)(nl - data), 0, NULL);
        CHECK(first != NULL);
        const char *ts = json_string_value(json_object_get(first, "ts"));
        CHECK(ts != NULL && strlen(ts) == 24 && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
        const char *mac = json_string_value(json_object_get(first, "mac"));
        CHECK(mac != NULL && strlen(mac) == 64 && strspn(mac, "0123456789abcdef") == 64);
        json_decref(first);
    }
    free(data);
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 0777) == 0600);
    CHECK(stat(dir, &sb) == 0 && (sb.st_mode & 0777) == 0700);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.segments == 1 && rep.records == 23 && rep.last_seq == 23 && rep.first_bad[0] == 0);

    /* Missing directory and an empty one. */
    err_clear(&e);
    path_of(p, sizeof p, scratch, "no-such-dir");
    CHECK(audit_verify(p, KEY, NULL, &e) == INF_ENOTFOUND);
    fresh_dir(p, sizeof p, "empty");
    err_clear(&e);
    CHECK(audit_verify(p, KEY, &rep, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "missing first segment");
    /* A wrong key fails at the first record. */
    uint8_t other[AUDIT_KEY_BYTES] = {0};
    err_clear(&e);
    CHECK(audit_verify(dir, other, &rep, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "audit-000001.jsonl line 1 (seq 1): bad mac");
}

static void test_bad_records(void)
{
    char dir[256];
    struct err e = {0};
    struct audit_log *log = NULL;
    fresh_dir(dir, sizeof dir, "bad");
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    const char *bad[] = {
        "[1, 2]",
        "{\"a\": {\"b\": 1}}",
        "{\"a\": [1]}",
        "{\"ts\": \"now\"}",
        "{\"seq\": 5}",
        "{\"mac\": \"00\"}",
        "{\"\": 1}",
        "{\"a b\": 1}",
        "{\"x\\\"mac\": \"v\"}",
        "{\"caf\\u00e9\": 1}",
        "{\"event\": \"audit.segment_start\"}",
        "{\"event\": \"audit.tail_truncated\", \"segment\": 1}",
        "{\"a\": \"nul\\u0000inside\"}",
        "{\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\": 1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *r = json_loads(bad[i], JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        CHECK_MSG(r != NULL, "%s", bad[i]);
        err_clear(&e);
        int rc = audit_append(log, r, NULL, &e);
        CHECK_MSG(rc == INF_EINVAL, "%s: rc %d (%s)", bad[i], rc, e.msg);
        json_decref(r);
    }
    err_clear(&e);
    CHECK(audit_append(log, NULL, NULL, &e) == INF_EINVAL);
    /* A record too long for a line fails alone, with INF_ELIMIT. */
    char *huge = malloc(AUDIT_LINE_MAX);
    memset(huge, 'x', AUDIT_LINE_MAX - 1);
    huge[AUDIT_LINE_MAX - 1] = '\0';
    json_t *r = json_pack("{s:s}", "note", huge);
    err_clear(&e);
    CHECK(audit_append(log, r, NULL, &e) == INF_ELIMIT);
    json_decref(r);
    free(huge);
    uint64_t seq = 0;
    r = json_pack("{s:s, s:s}", "event", "key.created", "key-id.v2", "k_1");
    err_clear(&e);
    CHECK(audit_append(log, r, &seq, &e) == INF_OK);
    CHECK(seq == 2); /* nothing refused took a seq */
    json_decref(r);
    CHECK(audit_healthy(log));
    audit_close(log);
    CHECK(verify_ok(dir, NULL) == INF_OK);
    /* A second open of a directory in use is refused. */
    struct audit_log *a = NULL, *b = NULL;
    err_clear(&e);
    CHECK(audit_open(dir, KEY, NULL, &a, &e) == INF_OK);
    err_clear(&e);
    CHECK(audit_open(dir, KEY, NULL, &b, &e) == INF_EIO);
    CHECK_ERR_HAS(&e, "open in another process");
    audit_close(a);
    audit_close(NULL);
}

/* ------------------------------------------------------------------------------------------
 * Flat lines: audit_line_flat against jansson's dump
 * ---------------------------------------------------------------------------------------- */

/* The test's PRNG (splitmix64): the seed is printed, INFERA_TEST_SEED replays another. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static size_t rng_below(uint64_t *s, size_t n)
{
    return (size_t)(rng_next(s) % n);
}

/* cp (a scalar value) as UTF-8 at out; returns the bytes written. */
static size_t utf8_put(char *out, uint32_t cp)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Byte sequences jansson's utf8_iterate refuses (each is invalid where it stands, whatever
 * follows, except the cut ones, which are placed at the end of their string). */
static const char *const bad_utf8[] = {
    "\x80", /* stray continuation bytes */
    "\xbf",
    "\xc0\x80",         /* overlong NUL */
    "\xc1\xbf",         /* overlong ASCII */
    "\xe0\x80\xaf",     /* overlong '/' */
    "\xe0\x9f\xbf",     /* overlong U+07FF */
    "\xf0\x8f\xbf\xbf", /* overlong U+FFFF */
    "\xed\xa0\x80",     /* surrogates */
    "\xed\xbf\xbf",
    "\xf4\x90\x80\x80", /* above U+10FFFF */
    "\xf5\x80\x80\x80",
    "\xf8\x88\x80\x80\x80",
    "\xfe",
    "\xff",
    "\xc3(", /* a lead byte without its continuation */
    "\xe2\x82(",
};
static const char *const bad_utf8_cut[] = {"\xc3", "\xe2\x82", "\xf0\x9f\x98"};

/* Edge code points: the ends of each UTF-8 length, U+2028/2029, BOM, around the surrogates. */
static const uint32_t edge_cps[] = {0x7F,   0x80,   0x7FF,  0x800,   0xD7FF,  0xE000,
                                    0xFEFF, 0xFFFD, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF,
                                    0x2028, 0x2029, 0xA9,   0xE9,    0x20AC};

/* One random piece of text at out (at most 4 bytes); returns its length. */
static size_t text_piece(uint64_t *rng, char *out)
{
    uint32_t cp;
    switch (rng_below(rng, 12)) {
        case 0:
            cp = (uint32_t)rng_below(rng, 0x20); /* every control character, NUL included */
            break;
        case 1:
            cp = (uint32_t) "\"\\/\x7f \n\t"[rng_below(rng, 7)];
            break;
        case 2:
        case 3:
        case 4:
            cp = 0x20 + (uint32_t)rng_below(rng, 0x5F); /* printable ASCII */
            break;
        case 5:
            cp = 0x80 + (uint32_t)rng_below(rng, 0x800 - 0x80);
            break;
        case 6:
        case 7:
            do
                cp = 0x800 + (uint32_t)rng_below(rng, 0x10000 - 0x800);
            while (cp >= 0xD800 && cp <= 0xDFFF);
            break;
        case 8:
            cp = 0x10000 + (uint32_t)rng_below(rng, 0x110000 - 0x10000);
            break;
        case 9:
            cp = edge_cps[rng_below(rng, sizeof edge_cps / sizeof edge_cps[0])];
            break;
        default:
            cp = (uint32_t) "abAB019_.-mseq"[rng_below(rng, 14)]; /* runs of key-like bytes */
            break;
    }
    return utf8_put(out, cp);
}

/* Random valid UTF-8 text of up to max pieces into buf (cap >= 4 * max); returns its length. */
static size_t random_text(uint64_t *rng, char *buf, size_t max)
{
    size_t len = 0, n = rng_below(rng, max + 1);
    for (size_t i = 0; i < n; i++)
        len += text_piece(rng, buf + len);
    return len;
}

/* Inserts an invalid sequence into buf[0..*len) (cap >= *len + 8) at a random place. */
static void break_utf8(uint64_t *rng, char *buf, size_t *len)
{
    bool cut = rng_below(rng, 4) == 0;
    const char *bad = cut ? bad_utf8_cut[rng_below(rng, 3)]
                          : bad_utf8[rng_below(rng, sizeof bad_utf8 / sizeof bad_utf8[0])];
    size_t n = strlen(bad), at = cut ? *len : rng_below(rng, *len + 1);
    memmove(buf + at + n, buf + at, *len - at);
    memcpy(buf + at, bad, n);
    *len += n;
}

/* Keys that sort in tricky ways: prefixes, case, digits, '_' (0x5F, between upper and lower
 * case), non-ASCII (bytes >= 0x80 after all ASCII), "mac"/"seq" and their neighbours, the
 * empty key, escapes. */
/* clang-format off */
static const char *const tricky_keys[] = {
    "a", "ab", "abc", "aB", "A", "AB", "Z", "_", "a_", "_a", "a0", "a1", "0", "09", "1", "10", "9",
    "ts", "ma", "mac", "mac_", "maca", "mab", "mad", "se", "seq", "seq0", "seq_", "seqa", "sep",
    "ser", "~", "-", ".", "a.b", "a-b", "", "caf\xc3\xa9", "caf", "cafe", "cafz", "\xc3\xa9",
    "\xe2\x82\xac", "\xf0\x9f\x98\x80", "z\xc3\xa9", "a\"b", "a\\b", "a/b", "a\nb", "a\x01",
    "a\x7f", "event", "status", "request_id",
};
/* clang-format on */

/* Sets value (stolen) in rec under a random key: a tricky one or random text (one in 300 not
 * UTF-8, with *bad set). */
static void random_key_into(uint64_t *rng, json_t *rec, json_t *value, bool *bad)
{
    char key[6 * 4 + 16];
    size_t len;
    if (rng_below(rng, 2) == 0) {
        const char *k = tricky_keys[rng_below(rng, sizeof tricky_keys / sizeof tricky_keys[0])];
        len = strlen(k);
        memcpy(key, k, len);
    } else {
        len = random_text(rng, key, 6);
    }
    if (rng_below(rng, 300) == 0) {
        break_utf8(rng, key, &len);
        *bad = true;
    }
    /* setn_new_nocheck: keys may hold NUL (escaped as \u0000) or, from break_utf8, bad UTF-8. */
    if (json_object_setn_new_nocheck(rec, key, len, value) != 0)
        die("json_object_setn_new_nocheck");
}

static json_int_t random_int(uint64_t *rng)
{
    /* clang-format off */
    static const json_int_t edges[] = {
        0, 1, -1, 9, 10, -9, -10, 99, 100, -100, INT64_MAX, INT64_MIN, INT64_MAX - 1,
        INT64_MIN + 1, (json_int_t)1 << 53, -((json_int_t)1 << 53) - 1,
    };
    /* clang-format on */
    switch (rng_below(rng, 3)) {
        case 0:
            return edges[rng_below(rng, sizeof edges / sizeof edges[0])];
        case 1:
            return (json_int_t)rng_next(rng); /* any 64-bit value */
        default: {                            /* every digit count */
            json_int_t v = (json_int_t)(rng_next(rng) >> (1 + rng_below(rng, 63)));
            return rng_below(rng, 2) ? v : -v;
        }
    }
}

/* A random value (one in 100 a real, array or object); *bad set for invalid UTF-8. */
static json_t *random_value(uint64_t *rng, bool *bad)
{
    char text[300 * 4 + 16];
    size_t len;
    switch (rng_below(rng, 400)) {
        case 0:
            return json_real(rng_below(rng, 2) ? 0.1 : -1e300);
        case 1:
            return json_pack("[i,s]", 1, "x");
        case 2:
            return json_pack("{s:{s:n}}", "k", "\xc3\xa9", "y");
        case 3:
            return json_array();
        default:
            break;
    }
    switch (rng_below(rng, 10)) {
        case 0:
            return json_null();
        case 1:
            return json_true();
        case 2:
            return json_false();
        case 3:
        case 4:
            return json_integer(random_int(rng));
        default:
            len = random_text(rng, text, rng_below(rng, 20) == 0 ? 300 : 24);
            if (rng_below(rng, 100) == 0) {
                break_utf8(rng, text, &len);
                *bad = true;
            }
            return json_stringn_nocheck(text, len); /* nocheck: may hold invalid UTF-8 */
    }
}

/* A shallow copy of the object rec that keeps every key whole: json_copy cuts keys at a NUL. */
static json_t *copy_keys(const json_t *rec)
{
    const char *key;
    size_t key_len;
    json_t *value, *c = json_object();
    if (c == NULL)
        die("copy_keys");
    json_object_keylen_foreach((json_t *)rec, key, key_len, value)
    {
        if (json_object_setn_nocheck(c, key, key_len, value) != 0)
            die("copy_keys");
    }
    return c;
}

/* Whether a and b hold the same keys with the same value objects (json_equal looks keys up
 * without their length, so it cannot compare keys that hold a NUL). */
static bool same_members(const json_t *a, const json_t *b)
{
    const char *key;
    size_t key_len;
    json_t *v;
    if (json_object_size(a) != json_object_size(b))
        return false;
    json_object_keylen_foreach((json_t *)a, key, key_len, v)
    {
        if (json_object_getn(b, key, key_len) != v)
            return false;
    }
    return true;
}

/* Whether the old path dumps rec with only strings, integers, true, false and null: members
 * named "seq" and "mac" do not count (it replaces them). */
static bool record_is_flat(const json_t *rec)
{
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach((json_t *)rec, key, key_len, v)
    {
        bool placeholder =
            key_len == 3 && (memcmp(key, "seq", 3) == 0 || memcmp(key, "mac", 3) == 0);
        if (!placeholder && !json_is_string(v) && !json_is_integer(v) && !json_is_boolean(v) &&
            !json_is_null(v))
            return false;
    }
    return true;
}

/* What audit_line_prepare did before audit_line_flat, on a copy of the record: the jansson way
 * (audit_line_dump). Same contract as audit_line_prepare; rec is not changed. */
static int reference_prepare(struct audit_line *it, const json_t *rec, struct err *e)
{
    json_t *c = copy_keys(rec);
    int rc = audit_line_dump(c, it, e);
    json_decref(c);
    return rc;
}

/* Whether every key of rec is UTF-8 (json_stringn checks, as jansson's setters do). */
static bool keys_utf8(const json_t *rec)
{
    const char *key;
    size_t key_len;
    json_t *v;
    json_object_keylen_foreach((json_t *)rec, key, key_len, v)
    {
        json_t *k = json_stringn(key, key_len);
        if (k == NULL)
            return false;
        json_decref(k);
    }
    return true;
}

/* Records with keys that are not UTF-8 which the old path wrote anyway (see test_flat_lines). */
static int old_path_took_bad_keys;

/*
 * Checks audit_line_prepare (and, for a flat record, audit_line_flat itself) against
 * reference_prepare on rec: the same status and message, the same bytes, the same offsets, rec
 * unchanged. audit_line_flat must take a flat record and leave any other to jansson. One deliberate
 * difference: a flat record with a key that is not UTF-8 is always refused (INF_EINVAL), where
 * json_dump_checked can let one through. Returns the status; what names rec in messages.
 */
static int check_prepare(const json_t *rec, const char *what)
{
    struct audit_line ref = {0}, got = {0};
    struct err eref = {0}, egot = {0};
    bool flat = record_is_flat(rec);
    json_t *before = copy_keys(rec);
    int rref = reference_prepare(&ref, rec, &eref);
    int rgot = audit_line_flat(rec, &got, &egot);
    if (flat) {
        CHECK_MSG(rgot != AUDIT_LINE_NOT_FLAT, "%s: audit_line_flat did not take a flat record",
                  what);
    } else {
        CHECK_MSG(rgot == AUDIT_LINE_NOT_FLAT && got.text == NULL,
                  "%s: audit_line_flat took it: %d", what, rgot);
        json_t *c = copy_keys(rec); /* audit_line_prepare sets seq and mac on it */
        rgot = audit_line_prepare(c, &got, &egot);
        json_decref(c);
    }
    if (flat && !keys_utf8(rec)) {
        CHECK_MSG(rgot == INF_EINVAL && got.text == NULL, "%s: a key that is not UTF-8: %d", what,
                  rgot);
        CHECK_ERR_HAS(&egot, "the audit record cannot be serialised (invalid UTF-8?)");
        CHECK_MSG(rref == INF_OK || (rref == rgot && strcmp(egot.msg, eref.msg) == 0),
                  "%s: status %d \"%s\", want %d \"%s\"", what, rgot, egot.msg, rref, eref.msg);
        old_path_took_bad_keys += rref == INF_OK;
    } else {
        CHECK_MSG(rgot == rref && strcmp(egot.msg, eref.msg) == 0,
                  "%s: status %d \"%s\", want %d \"%s\"\n  got  %.4096s\n  want %.4096s", what,
                  rgot, egot.msg, rref, eref.msg, got.text ? got.text : "-",
                  ref.text ? ref.text : "-");
    }
    if (rgot == INF_OK && rref == INF_OK) {
        bool same = got.len == ref.len && memcmp(got.text, ref.text, ref.len + 1) == 0;
        CHECK_MSG(same, "%s:\n  got  %.*s\n  want %s", what, (int)(got.len < 4096 ? got.len : 4096),
                  got.text, ref.text);
        CHECK_MSG(got.mac_off == ref.mac_off && got.seq_off == ref.seq_off,
                  "%s: offsets %zu %zu, want %zu %zu", what, got.mac_off, got.seq_off, ref.mac_off,
                  ref.seq_off);
    } else if (rgot != INF_OK) {
        CHECK_MSG(got.text == NULL, "%s: a line on failure", what);
    }
    CHECK_MSG(same_members(before, rec), "%s: the record was modified", what);
    if (flat) { /* audit_line_prepare takes the same way */
        struct audit_line again = {0};
        struct err eagain = {0};
        json_t *c = copy_keys(rec);
        int ragain = audit_line_prepare(c, &again, &eagain);
        CHECK_MSG(ragain == rgot && (ragain != INF_OK || strcmp(again.text, got.text) == 0),
                  "%s: audit_line_prepare differs from audit_line_flat", what);
        json_decref(c);
        free(again.text);
    }
    json_decref(before);
    free(ref.text);
    free(got.text);
    return rgot;
}

/* For the allocation sweep: jansson's allocator failing its Nth call, blocks counted. */
static size_t oom_calls, oom_fail_at, oom_live;

static void *oom_malloc(size_t n)
{
    if (++oom_calls == oom_fail_at)
        return NULL;
    void *p = malloc(n);
    oom_live += p != NULL;
    return p;
}

static void oom_free(void *p)
{
    oom_live -= p != NULL;
    free(p);
}

/* A copy of src with "ts" set, as the writer's record_new makes its working record. */
static json_t *record_new(const json_t *src)
{
    json_t *rec = json_copy((json_t *)src);
    if (rec == NULL ||
        json_object_set_new(rec, "ts", json_string("2026-11-29T06:00:00.123456Z")) != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

/* An http.request record as guard_audit_request builds it (15 members), with "ts". */
static json_t *typical_record(int i)
{
    json_t *r = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:s, s:I, s:I, s:I, s:s}", "event",
        "http.request", "request_id", "01HZX3J5Q7N6V8W2Y4A1B3C5D7", "key_id", "k_7f3a9c21",
        "client", "203.0.113.42", "method", "POST", "route", "/v2/models/{m}/versions/{v}/infer",
        "model", "digits-mlp", "version", 3, "status", 200, "outcome", "ok", "latency_us",
        (json_int_t)1830 + i, "bytes_in", (json_int_t)3211, "bytes_out", (json_int_t)187,
        "body_sha256", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    json_t *full = r != NULL ? record_new(r) : NULL;
    json_decref(r);
    if (full == NULL)
        die("typical_record");
    return full;
}

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* ns per record: record_new's copy of src as audit_append makes it (how: 0), then
 * audit_line_prepare on it (1), or the old way: "seq" and "mac" set, json_dump_checked, strstr (2).
 */
static double bench_prepare(const json_t *src, int n, int how)
{
    char zeros[AUDIT_MAC_HEX + 1];
    memset(zeros, '0', AUDIT_MAC_HEX);
    zeros[AUDIT_MAC_HEX] = '\0';
    double t0 = now_ns();
    for (int i = 0; i < n; i++) {
        struct audit_line it = {0};
        struct err e = {0};
        json_t *rec = record_new(src);
        int rc = rec != NULL ? INF_OK : INF_ENOMEM;
        if (how == 1) {
            rc = audit_line_prepare(rec, &it, &e);
        } else if (how == 2) {
            json_object_set_new(rec, "seq", json_integer(0));
            json_object_set_new(rec, "mac", json_string(zeros));
            it.text = json_dump_checked(rec, AUDIT_DUMP_FLAGS);
            rc = it.text != NULL && strstr(it.text, "\"mac\":\"") != NULL &&
                         strstr(it.text, "\"seq\":0") != NULL
                     ? INF_OK
                     : INF_EINVAL;
        }
        if (rc != INF_OK)
            die("bench_prepare");
        json_decref(rec);
        free(it.text);
    }
    return (now_ns() - t0) / n;
}

static void test_flat_lines(void)
{
    uint64_t seed = 0x1f2e3d4c5b6a7988ull;
    const char *env = getenv("INFERA_TEST_SEED");
    if (env != NULL)
        seed = strtoull(env, NULL, 0);
    fprintf(stderr, "  seed 0x%016llx (INFERA_TEST_SEED replays another)\n",
            (unsigned long long)seed);
    uint64_t rng = seed;
    char what[64];

    /* Every ASCII character, NUL included, as a key and in a value; every edge code point. */
    json_t *rec = json_object();
    char text[1024];
    size_t len = 0;
    for (uint32_t c = 0; c < 0x80; c++) {
        char k[2] = {(char)c, 'k'};
        json_object_setn_new_nocheck(rec, k, 2, json_integer((json_int_t)c - 64));
        len += utf8_put(text + len, c);
    }
    for (size_t i = 0; i < sizeof edge_cps / sizeof edge_cps[0]; i++)
        len += utf8_put(text + len, edge_cps[i]);
    json_object_set_new(rec, "text", json_stringn(text, len));
    json_object_set_new(rec, "min", json_integer(INT64_MIN));
    json_object_set_new(rec, "max", json_integer(INT64_MAX));
    json_object_set_new(rec, "t", json_true());
    json_object_set_new(rec, "f", json_false());
    json_object_set_new(rec, "n", json_null());
    CHECK(check_prepare(rec, "every ASCII character") == INF_OK);
    /* Members named "seq" and "mac" are replaced by the placeholders, whatever their value. */
    json_object_set_new(rec, "seq", json_integer(7));
    json_object_set_new(rec, "mac", json_string("ff"));
    CHECK(check_prepare(rec, "seq and mac members") == INF_OK);
    json_object_set_new(rec, "mac", json_pack("[i]", 1));
    CHECK(check_prepare(rec, "a nested mac member") == INF_OK);
    json_decref(rec);

    /* Invalid UTF-8 (only the *_nocheck setters insert it) in a value and in a key: refused by
     * both, with the same message. */
    old_path_took_bad_keys = 0;
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        rec = json_pack("{s:s}", "ts", "2024-05-01T12:34:56.789Z");
        snprintf(text, sizeof text, "ok %s ok", bad_utf8[i]);
        json_object_set_new(rec, "v", json_string_nocheck(text));
        snprintf(what, sizeof what, "bad UTF-8 value %zu", i);
        CHECK(check_prepare(rec, what) == INF_EINVAL);
        json_object_del(rec, "v");
        json_object_set_new_nocheck(rec, text, json_integer(1));
        snprintf(what, sizeof what, "bad UTF-8 key %zu", i);
        CHECK(check_prepare(rec, what) == INF_EINVAL);
        json_decref(rec);
    }
    for (size_t i = 0; i < sizeof bad_utf8_cut / sizeof bad_utf8_cut[0]; i++) {
        rec = json_object();
        json_object_set_new(rec, "v", json_string_nocheck(bad_utf8_cut[i]));
        CHECK(check_prepare(rec, "a cut sequence at the end") == INF_EINVAL);
        json_decref(rec);
    }
    CHECK(old_path_took_bad_keys == 0);

    /* json_dump_checked's hole: jansson ignores a failed key (dump.c writes the opening quote,
     * stops, and goes on with ':' and the value), and its check of the finished text catches one
     * such key but not two, whose stray quotes pair up: {"mac":"0...0","seq":0,":1,":2} is
     * valid JSON, and the old path wrote that line. audit_line_flat refuses the record. */
    old_path_took_bad_keys = 0;
    rec = json_object();
    json_object_set_new_nocheck(rec, "\xfe", json_integer(1));
    json_object_set_new_nocheck(rec, "\xff", json_integer(2));
    CHECK(check_prepare(rec, "two keys that are not UTF-8") == INF_EINVAL);
    CHECK(old_path_took_bad_keys == 1);
    json_decref(rec);

    /* Non-flat records still go through jansson, with the same line. */
    const char *nested[] = {"{\"a\": 0.1, \"b\": \"x\"}", "{\"a\": [1, \"\\u00e9\"]}",
                            "{\"z\": {\"y\": null}, \"a\": -1e300}", "{\"r\": 1.5e-7}"};
    for (size_t i = 0; i < sizeof nested / sizeof nested[0]; i++) {
        rec = json_loads(nested[i], 0, NULL);
        CHECK(rec != NULL && check_prepare(rec, nested[i]) == INF_OK);
        json_decref(rec);
    }

    /* Around AUDIT_LINE_MAX: the same length decides INF_ELIMIT, with escapes near the end. */
    char *big = malloc(AUDIT_LINE_MAX + 16);
    int too_long = 0, fits = 0;
    for (size_t n = AUDIT_LINE_MAX - 200; n < AUDIT_LINE_MAX - 100; n++) {
        memset(big, 'x', n);
        size_t m = n;
        if (n % 3 == 1)
            m += utf8_put(big + m, 0x1F600); /* 4 bytes written as 12 */
        if (n % 3 == 2)
            big[m++] = '\n';
        rec = json_pack("{s:s, s:s%}", "ts", "2024-05-01T12:34:56.789Z", "note", big, m);
        snprintf(what, sizeof what, "a %zu-byte string", m);
        int rc = check_prepare(rec, what);
        too_long += rc == INF_ELIMIT;
        fits += rc == INF_OK;
        json_decref(rec);
    }
    CHECK(too_long > 0 && fits > 0);
    free(big);

    /* Random records. */
    old_path_took_bad_keys = 0;
    int n = test_quick() ? 2000 : 20000, ok = 0, bad = 0, nonflat = 0, many = 0;
    for (int i = 0; i < n; i++) {
        bool invalid = false;
        size_t members = rng_below(&rng, 10) == 0 ? 30 + rng_below(&rng, 50) : rng_below(&rng, 24);
        rec = json_object();
        for (size_t k = 0; k < members; k++)
            random_key_into(&rng, rec, random_value(&rng, &invalid), &invalid);
        snprintf(what, sizeof what, "random record %d", i);
        int rc = check_prepare(rec, what);
        bool flat = record_is_flat(rec);
        ok += rc == INF_OK;
        bad += flat && invalid && rc == INF_EINVAL;
        nonflat += !flat;
        many += flat && json_object_size(rec) + 2 > 32;
        json_decref(rec);
    }
    fprintf(stderr,
            "  %d random records: %d serialised, %d refused as not UTF-8 (%d of them written by "
            "the old path: keys), %d not flat, %d flat with > %d members\n",
            n, ok, bad, old_path_took_bad_keys, nonflat, many, 32);
    CHECK(ok > n / 2 && bad > 0 && nonflat > 0 && many > 0);

    /* Every allocation of audit_line_flat failing in turn (the member array beyond 32 members, the
     * line): INF_ENOMEM, nothing leaked, nothing set; one more and it succeeds. */
    for (int shape = 0; shape < 2; shape++) {
        rec = typical_record(0);
        for (int k = 0; shape == 1 && k < 40; k++)
            json_object_set_new(rec, (char[]){'x', (char)('A' + k), 0}, json_integer(k));
        size_t allocs = 0;
        for (size_t fail_at = 1;; fail_at++) {
            struct audit_line it = {0};
            struct err e = {0};
            oom_calls = oom_live = 0;
            oom_fail_at = fail_at;
            json_set_alloc_funcs(oom_malloc, oom_free);
            int rc = audit_line_flat(rec, &it, &e);
            json_set_alloc_funcs(malloc, free);
            if (rc == INF_OK) {
                allocs = oom_calls;
                CHECK(it.text != NULL && oom_live == 1);
                free(it.text);
                break;
            }
            CHECK_MSG(rc == INF_ENOMEM && it.text == NULL && oom_live == 0, "fail at %zu: %d %s",
                      fail_at, rc, e.msg);
            CHECK_ERR_HAS(&e, "out of memory");
            if (fail_at > 10)
                break;
        }
        CHECK_MSG(allocs == (size_t)(shape == 0 ? 1 : 2), "%zu allocations", allocs);
        json_decref(rec);
    }

    /* How long audit_line_prepare takes on a typical http.request record (printed, not checked). */
    json_t *src = typical_record(0);
    json_object_del(src, "ts"); /* record_new adds it, as in audit_append */
    int reps = test_quick() ? 2000 : 30000;
    double t_copy = bench_prepare(src, reps, 0);
    double t_new = bench_prepare(src, reps, 1) - t_copy;
    double t_old = bench_prepare(src, reps, 2) - t_copy;
    fprintf(
        stderr,
        "  audit_line_prepare on a %zu-member http.request record: json_dump_checked way %.0f ns, "
        "audit_line_flat %.0f ns (%.1fx), record_new's copy before it %.0f ns\n",
        json_object_size(src) + 3, t_old, t_new, t_old / t_new, t_copy);
    json_decref(src);
}

/* A random value audit_append accepts: no array or object, valid UTF-8, no NUL. New
 * reference. */
static json_t *random_audit_value(uint64_t *rng)
{
    for (;;) {
        bool bad = false;
        json_t *v = random_value(rng, &bad);
        if (bad || json_is_array(v) || json_is_object(v)) {
            json_decref(v);
            continue;
        }
        if (!json_is_string(v))
            return v;
        size_t len = json_string_length(v);
        char *s = malloc(len + 1);
        memcpy(s, json_string_value(v), len + 1);
        for (size_t i = 0; i < len; i++)
            if (s[i] == '\0')
                s[i] = 'x';
        json_decref(v);
        v = json_stringn(s, len);
        free(s);
        return v;
    }
}

/* Random valid records through audit_append: the log verifies, and every line is what jansson
 * dumps for the record with the line's ts, seq and mac. */
static void test_flat_log(void)
{
    enum { N = 300 };
    uint64_t rng = 0x5eed0f1a7109ull;
    char dir[256], p[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    json_t *recs[N];
    fresh_dir(dir, sizeof dir, "flat");
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    for (int i = 0; i < N; i++) {
        recs[i] = json_pack("{s:s, s:i}", "event", "test.flat", "i", i);
        for (size_t k = rng_below(&rng, 20); k > 0; k--) {
            char key[16];
            snprintf(key, sizeof key, "%c%zu", "aAz_.-0"[rng_below(&rng, 7)], rng_below(&rng, 30));
            json_object_set_new(recs[i], key, random_audit_value(&rng));
        }
        err_clear(&e);
        CHECK_MSG(audit_append(log, recs[i], NULL, &e) == INF_OK, "record %d: %s", i, e.msg);
    }
    audit_close(log);
    CHECK(verify_ok(dir, NULL) == INF_OK);
    struct lines l;
    seg_path(p, sizeof p, dir, 1);
    lines_read(p, &l);
    int matched = 0;
    for (size_t k = 0; k < l.n; k++) {
        json_t *line = json_loads(l.v[k], 0, NULL);
        json_t *idx = json_object_get(line, "i");
        if (json_is_integer(idx) && json_integer_value(idx) >= 0 && json_integer_value(idx) < N) {
            json_t *want = json_copy(recs[json_integer_value(idx)]);
            json_object_set(want, "ts", json_object_get(line, "ts"));
            json_object_set(want, "seq", json_object_get(line, "seq"));
            json_object_set(want, "mac", json_object_get(line, "mac"));
            char *s = json_dump_checked(want, AUDIT_DUMP_FLAGS);
            size_t n = s != NULL ? strlen(s) : 0;
            bool same = s != NULL && strlen(l.v[k]) == n + 1 && memcmp(l.v[k], s, n) == 0 &&
                        l.v[k][n] == '\n';
            CHECK_MSG(same, "line %zu:\n  got  %s  want %s", k + 1, l.v[k], s ? s : "(null)");
            matched += same;
            free(s);
            json_decref(want);
        }
        json_decref(line);
    }
    CHECK_MSG(matched == N, "%d of %d records found as jansson writes them", matched, N);
    lines_free(&l);
    for (int i = 0; i < N; i++)
        json_decref(recs[i]);
}

/* ------------------------------------------------------------------------------------------
 * Concurrency and segments
 * ---------------------------------------------------------------------------------------- */

struct worker {
    struct audit_log *log;
    int id, n, fails;
    uint64_t *seqs;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        json_t *r = request_record(w->id * 100000 + i);
        struct err e = {0};
        if (audit_append(w->log, r, &w->seqs[i], &e) != INF_OK)
            w->fails++;
        json_decref(r);
    }
    return NULL;
}

static int u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_concurrent(void)
{
    enum { THREADS = 8 };
    int per = test_quick() ? 100 : 500;
    char dir[256];
    struct err e = {0};
    struct audit_log *log = NULL;
    fresh_dir(dir, sizeof dir, "concurrent");
    struct audit_options opt = {.segment_bytes = 256 << 10, .max_batch = 64};
    CHECK(audit_open(dir, KEY, &opt, &log, &e) == INF_OK);
    uint64_t *seqs = calloc((size_t)THREADS * per, sizeof *seqs);
    struct worker w[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){.log = log, .id = t, .n = per, .seqs = seqs + (size_t)t * per};
        pthread_create(&th[t], NULL, worker_main, &w[t]);
    }
    int fails = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        fails += w[t].fails;
    }
    CHECK(fails == 0);
    size_t total = (size_t)THREADS * per;
    qsort(seqs, total, sizeof *seqs, u64_cmp);
    size_t in_order = 0;
    for (size_t i = 1; i < total; i++)
        in_order += seqs[i] > seqs[i - 1];
    CHECK(in_order == total - 1); /* unique */
    struct audit_stats st;
    audit_stats_get(log, &st);
    /* Seqs are contiguous apart from segment_start records (one per segment). */
    CHECK(seqs[0] == 2 && st.last_seq >= seqs[total - 1] && st.last_seq - total < 64);
    CHECK(st.records == st.last_seq);
    CHECK_MSG(st.fsyncs < st.records, "fsyncs %llu records %llu", (unsigned long long)st.fsyncs,
              (unsigned long long)st.records);
    fprintf(stderr, "  %zu records from %d threads in %llu fsyncs\n", total, THREADS,
            (unsigned long long)st.fsyncs);
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.last_seq == st.last_seq && rep.records == st.records);
    free(seqs);
}

static void test_segments(void)
{
    char dir[256], p[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    fresh_dir(dir, sizeof dir, "segments");
    struct audit_options opt = {.segment_bytes = 2048};
    CHECK(audit_open(dir, KEY, &opt, &log, &e) == INF_OK);
    CHECK(append_n(log, 0, 60) == 0);
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.segments >= 5);
    uint64_t first_last = rep.last_seq;
    for (unsigned s = 1; s <= rep.segments; s++) {
        struct lines l;
        seg_path(p, sizeof p, dir, s);
        lines_read(p, &l);
        CHECK(l.n > 0 && strstr(l.v[0], "\"event\":\"audit.segment_start\"") != NULL);
        char want[64];
        snprintf(want, sizeof want, "\"segment\":%u,", s);
        CHECK(l.n > 0 && strstr(l.v[0], want) != NULL);
        for (size_t i = 1; i < l.n; i++)
            CHECK(strstr(l.v[i], "audit.segment_start") == NULL);
        lines_free(&l);
    }
    /* Reopen continues seq and chain, in the last segment or a new one. */
    err_clear(&e);
    CHECK(audit_open(dir, KEY, &opt, &log, &e) == INF_OK);
    uint64_t seq = 0;
    json_t *r = request_record(1000);
    CHECK(audit_append(log, r, &seq, &e) == INF_OK);
    json_decref(r);
    CHECK(seq == first_last + 1 || seq == first_last + 2);
    CHECK(append_n(log, 1001, 30) == 0);
    audit_close(log);
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.last_seq > seq + 29);
    /* Reopening an unrotated log continues the same segment with no extra record. */
    fresh_dir(dir, sizeof dir, "reopen");
    err_clear(&e);
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    CHECK(append_n(log, 0, 5) == 0);
    audit_close(log);
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    r = request_record(5);
    CHECK(audit_append(log, r, &seq, &e) == INF_OK);
    json_decref(r);
    CHECK(seq == 7);
    audit_close(log);
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.segments == 1 && rep.records == 7);
}

/* ------------------------------------------------------------------------------------------
 * Tampering
 * ---------------------------------------------------------------------------------------- */

/* Verifies dir, which must fail with a message containing each needle. */
static void check_caught(const char *dir, const char *what, const char *n1, const char *n2)
{
    struct err e = {0};
    struct audit_verify_report rep;
    int rc = audit_verify(dir, KEY, &rep, &e);
    CHECK_MSG(rc == INF_EINVAL, "%s: not caught (rc %d)", what, rc);
    CHECK_MSG(strstr(e.msg, n1) != NULL, "%s: \"%s\" lacks \"%s\"", what, e.msg, n1);
    CHECK_MSG(n2 == NULL || strstr(e.msg, n2) != NULL, "%s: \"%s\" lacks \"%s\"", what, e.msg, n2);
    CHECK(strcmp(rep.first_bad, e.msg) == 0);
}

static void test_tampering(void)
{
    char base[256], dir[256], p[512], q[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    struct lines l;
    fresh_dir(base, sizeof base, "tamper-base");
    struct audit_options opt = {.segment_bytes = 2500};
    CHECK(audit_open(base, KEY, &opt, &log, &e) == INF_OK);
    CHECK(append_n(log, 0, 40) == 0);
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(base, &rep) == INF_OK);
    CHECK(rep.segments >= 4);
    unsigned last = (unsigned)rep.segments;

    /* An edited byte in a value: GET -> GEX. */
    copy_dir(base, dir, sizeof dir, "t-value");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    char *m = strstr(l.v[2], "\"method\":\"") + 10;
    m[2] = m[2] == 'T' ? 'X' : 'Y';
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "value edit", "audit-000002.jsonl line 3 (seq ", "bad mac");

    /* An edited byte in a key (order kept, so still canonical). */
    copy_dir(base, dir, sizeof dir, "t-key");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    memcpy(strstr(l.v[2], "\"route\":"), "\"routf\":", 8);
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "key edit", "audit-000002.jsonl line 3 (seq ", "bad mac");

    /* A deleted line. */
    copy_dir(base, dir, sizeof dir, "t-delete");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    free(l.v[2]);
    memmove(&l.v[2], &l.v[3], (l.n - 3) * sizeof l.v[0]);
    l.n--;
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "delete", "audit-000002.jsonl line 3", "seq jumps");

    /* An inserted copy of an earlier line. */
    copy_dir(base, dir, sizeof dir, "t-insert");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    char *dup = strdup(l.v[1]);
    memmove(&l.v[4], &l.v[3], (l.n - 3) * sizeof l.v[0]);
    l.v[3] = dup;
    l.n++;
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "insert", "audit-000002.jsonl line 4", "inserted, copied or reordered");

    /* Two lines swapped. */
    copy_dir(base, dir, sizeof dir, "t-swap");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    char *t = l.v[2];
    l.v[2] = l.v[3];
    l.v[3] = t;
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "swap", "audit-000002.jsonl line 3", "deleted or reordered");

    /* The same JSON with different spacing. */
    copy_dir(base, dir, sizeof dir, "t-canonical");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    json_t *j = json_loads(l.v[2], 0, NULL);
    free(l.v[2]);
    char *re = json_dumps(j, JSON_SORT_KEYS | JSON_ENSURE_ASCII);
    l.v[2] = malloc(strlen(re) + 2);
    memcpy(l.v[2], re, strlen(re));
    memcpy(l.v[2] + strlen(re), "\n", 2);
    free(re);
    json_decref(j);
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "respace", "audit-000002.jsonl line 3", "not canonical");

    /* A line made unparsable in the middle is not a torn tail. */
    copy_dir(base, dir, sizeof dir, "t-garbage");
    seg_path(p, sizeof p, dir, 2);
    lines_read(p, &l);
    l.v[2][0] = '[';
    lines_write(p, &l);
    lines_free(&l);
    check_caught(dir, "garbage", "audit-000002.jsonl line 3", "not parsable JSON");

    /* A removed middle segment, a removed first segment. */
    copy_dir(base, dir, sizeof dir, "t-rm-middle");
    seg_path(p, sizeof p, dir, 2);
    unlink(p);
    check_caught(dir, "removed middle", "missing segment audit-000002.jsonl", NULL);
    copy_dir(base, dir, sizeof dir, "t-rm-first");
    seg_path(p, sizeof p, dir, 1);
    unlink(p);
    check_caught(dir, "removed first", "missing first segment audit-000001.jsonl", NULL);

    /* Renamed segments: two swapped, and one moved past the end. */
    copy_dir(base, dir, sizeof dir, "t-rename-swap");
    char tmp[512];
    seg_path(p, sizeof p, dir, 2);
    seg_path(q, sizeof q, dir, 3);
    path_of(tmp, sizeof tmp, dir, "x");
    CHECK(rename(p, tmp) == 0 && rename(q, p) == 0 && rename(tmp, q) == 0);
    check_caught(dir, "renamed swap", "audit-000002.jsonl line 1", "renamed or reordered");
    copy_dir(base, dir, sizeof dir, "t-rename-far");
    seg_path(p, sizeof p, dir, 2);
    seg_path(q, sizeof q, dir, 90);
    CHECK(rename(p, q) == 0);
    check_caught(dir, "renamed far", "missing segment audit-000002.jsonl", NULL);

    /* The last segment appended to the one before (and removed). */
    copy_dir(base, dir, sizeof dir, "t-join");
    seg_path(p, sizeof p, dir, last - 1);
    seg_path(q, sizeof q, dir, last);
    char *tail = slurp(q, NULL);
    append_bytes(p, tail);
    free(tail);
    unlink(q);
    check_caught(dir, "joined", "segment_start inside a segment", NULL);

    /* A segment replaced by a validly chained one from another log under the same key. */
    char other[256];
    fresh_dir(other, sizeof other, "tamper-other");
    CHECK(audit_open(other, KEY, &opt, &log, &e) == INF_OK);
    CHECK(append_n(log, 500, 40) == 0);
    audit_close(log);
    copy_dir(base, dir, sizeof dir, "t-replace");
    seg_path(p, sizeof p, dir, 2);
    seg_path(q, sizeof q, other, 2);
    char *seg = slurp(q, NULL);
    spit(p, seg, strlen(seg));
    free(seg);
    check_caught(dir, "replaced", "audit-000002.jsonl line 1", "segment");

    /* A torn tail found by verify (audit_open would cut it). */
    copy_dir(base, dir, sizeof dir, "t-torn");
    seg_path(p, sizeof p, dir, last);
    append_bytes(p, "{\"client\":\"127.0");
    check_caught(dir, "torn", "torn tail", "16 bytes");

    /* audit_open refuses an edited complete last line instead of cutting it. */
    copy_dir(base, dir, sizeof dir, "t-open-refuses");
    seg_path(p, sizeof p, dir, last);
    lines_read(p, &l);
    m = strstr(l.v[l.n - 1], "\"status\":200");
    m[10] = '1';
    lines_write(p, &l);
    lines_free(&l);
    err_clear(&e);
    log = NULL;
    CHECK(audit_open(dir, KEY, &opt, &log, &e) == INF_EINVAL);
    CHECK(log == NULL);
    CHECK_ERR_HAS(&e, "bad mac");
    CHECK_ERR_HAS(&e, "refusing");
    check_caught(dir, "refused", "bad mac", NULL); /* nothing was changed */
}

/* ------------------------------------------------------------------------------------------
 * Torn tails
 * ---------------------------------------------------------------------------------------- */

/* Opens dir (must succeed), checks that the last record is audit.tail_truncated with
 * bytes_dropped == dropped (or that there is none when dropped is 0), closes, verifies. */
static void reopen_and_check(const char *dir, const char *what, long long dropped)
{
    struct err e = {0};
    struct audit_log *log = NULL;
    int rc = audit_open(dir, KEY, NULL, &log, &e);
    CHECK_MSG(rc == INF_OK, "%s: %s", what, e.msg);
    audit_close(log);
    struct audit_verify_report rep;
    CHECK_MSG(verify_ok(dir, &rep) == INF_OK, "%s", what);
    char p[512];
    struct lines l;
    seg_path(p, sizeof p, dir, (unsigned)rep.segments);
    lines_read(p, &l);
    json_t *j = l.n > 0 ? json_loads(l.v[l.n - 1], 0, NULL) : NULL;
    const char *ev = json_string_value(json_object_get(j, "event"));
    if (dropped > 0) {
        CHECK_MSG(ev != NULL && strcmp(ev, "audit.tail_truncated") == 0, "%s", what);
        CHECK_MSG(json_integer_value(json_object_get(j, "bytes_dropped")) == dropped, "%s", what);
        CHECK_MSG(json_integer_value(json_object_get(j, "segment")) == (json_int_t)rep.segments,
                  "%s", what);
    } else {
        CHECK_MSG(ev == NULL || strcmp(ev, "audit.tail_truncated") != 0, "%s", what);
    }
    json_decref(j);
    lines_free(&l);
}

static void test_torn_tail(void)
{
    char base[256], dir[256], p[512], q[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    struct audit_options opt = {.segment_bytes = 2500};
    fresh_dir(base, sizeof base, "torn-base");
    CHECK(audit_open(base, KEY, &opt, &log, &e) == INF_OK);
    CHECK(append_n(log, 0, 30) == 0);
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(base, &rep) == INF_OK);
    unsigned last = (unsigned)rep.segments;
    uint64_t last_seq = rep.last_seq;

    /* A partial line. */
    copy_dir(base, dir, sizeof dir, "torn-partial");
    seg_path(p, sizeof p, dir, last);
    append_bytes(p, "{\"bytes_in\":12,\"cli");
    reopen_and_check(dir, "partial line", 19);
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.last_seq == last_seq + 1);

    /* A complete line that does not parse, as a crash can leave. */
    copy_dir(base, dir, sizeof dir, "torn-unparsable");
    seg_path(p, sizeof p, dir, last);
    append_bytes(p, "{\"bytes_in\":12,\"cli\n");
    reopen_and_check(dir, "unparsable last line", 20);

    /* Half of the last line gone (a write cut short): the other half goes too. */
    copy_dir(base, dir, sizeof dir, "torn-half");
    seg_path(p, sizeof p, dir, last);
    struct lines l;
    lines_read(p, &l);
    size_t line_len = strlen(l.v[l.n - 1]);
    lines_free(&l);
    struct stat sb;
    CHECK(stat(p, &sb) == 0);
    size_t cut = line_len / 2;
    CHECK(truncate(p, sb.st_size - (off_t)cut) == 0);
    reopen_and_check(dir, "half of the last line", (long long)(line_len - cut));
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.last_seq == last_seq); /* one lost, one added */

    /* A new segment whose segment_start is torn: it is emptied and started again. */
    copy_dir(base, dir, sizeof dir, "torn-new-segment");
    seg_path(q, sizeof q, dir, last + 1);
    spit(q, "{\"event\":\"audit.segment_start\",\"mac\":\"12", 40);
    check_caught(dir, "torn segment start", "torn tail", NULL);
    reopen_and_check(dir, "torn segment start", 40);
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.segments == last + 1);
    CHECK(rep.last_seq == last_seq + 2);

    /* An empty new segment (a crash right after creating it). */
    copy_dir(base, dir, sizeof dir, "torn-empty-segment");
    seg_path(q, sizeof q, dir, last + 1);
    spit(q, "", 0);
    check_caught(dir, "empty segment", "empty segment", NULL);
    reopen_and_check(dir, "empty segment", 0);
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.segments == last + 1);
    CHECK(rep.last_seq == last_seq + 1);

    /* An empty segment 1 of a log that never got its first record. */
    fresh_dir(dir, sizeof dir, "torn-empty-first");
    seg_path(q, sizeof q, dir, 1);
    spit(q, "", 0);
    reopen_and_check(dir, "empty first segment", 0);
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.records == 1);
}

/* ------------------------------------------------------------------------------------------
 * Failures
 * ---------------------------------------------------------------------------------------- */

static bool wait_healthy(struct audit_log *log, int ms)
{
    for (int i = 0; i < ms / 10 && !audit_healthy(log); i++)
        usleep(10000);
    return audit_healthy(log);
}

static int append_one(struct audit_log *log, int i, uint64_t *seq, struct err *e)
{
    json_t *r = request_record(i);
    err_clear(e);
    int rc = audit_append(log, r, seq, e);
    json_decref(r);
    return rc;
}

static void test_dir_moved(void)
{
    char parent[256], dir[256], moved[512], p[512];
    struct err e = {0};
    struct audit_log *log = NULL;
    uint64_t seq = 0;
    struct audit_stats st;
    fresh_dir(parent, sizeof parent, "moved");
    path_of(dir, sizeof dir, parent, "audit");
    path_of(moved, sizeof moved, parent, "audit.away");
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    CHECK(append_one(log, 0, &seq, &e) == INF_OK && seq == 2);

    /* The directory moved away and a file in its place: fail closed (root is not stopped by
     * permissions, so this is the test that works for every user). */
    CHECK(rename(dir, moved) == 0);
    spit(dir, "not a directory\n", 16);
    CHECK(append_one(log, 1, &seq, &e) == INF_EIO);
    CHECK_ERR_HAS(&e, "audit");
    CHECK(!audit_healthy(log));
    CHECK(append_one(log, 2, &seq, &e) == INF_EIO);
    usleep(600000);
    CHECK(!audit_healthy(log)); /* the background check does not pass either */
    audit_stats_get(log, &st);
    CHECK(st.failures >= 2 && st.last_seq == 2);

    /* Put back: healthy again by itself, and appends continue the same file. */
    CHECK(unlink(dir) == 0 && rename(moved, dir) == 0);
    CHECK(wait_healthy(log, 3000));
    CHECK(append_one(log, 3, &seq, &e) == INF_OK);
    CHECK(seq == 3); /* the refused records took no seq */
    CHECK(audit_healthy(log));
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.segments == 1 && rep.records == 3);

    /* Replaced by a new empty directory: the log goes on there in a new segment. */
    err_clear(&e);
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    CHECK(rename(dir, moved) == 0 && mkdir(dir, 0700) == 0);
    CHECK(append_one(log, 4, &seq, &e) == INF_OK);
    CHECK(seq == 5); /* after the new segment's segment_start */
    audit_close(log);
    seg_path(p, sizeof p, dir, 2);
    CHECK(access(p, F_OK) == 0);
    err_clear(&e);
    CHECK(audit_verify(dir, KEY, &rep, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "missing first segment audit-000001.jsonl");
    char from[512];
    seg_path(from, sizeof from, moved, 1);
    seg_path(p, sizeof p, dir, 1);
    CHECK(rename(from, p) == 0);
    CHECK(verify_ok(dir, &rep) == INF_OK);
    CHECK(rep.segments == 2 && rep.last_seq == 5);

    /* Without root, a directory made read-only also closes the log. */
    if (geteuid() != 0) {
        err_clear(&e);
        CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
        CHECK(chmod(dir, 0500) == 0);
        CHECK(append_one(log, 5, &seq, &e) == INF_EIO);
        CHECK(!audit_healthy(log));
        CHECK(chmod(dir, 0700) == 0);
        CHECK(append_one(log, 6, &seq, &e) == INF_OK && seq == 6);
        audit_close(log);
        CHECK(verify_ok(dir, NULL) == INF_OK);
    } else {
        fprintf(stderr, "  (running as root: the chmod case is skipped)\n");
    }
}

/* A write that fails halfway (file size limit, like a full disk): the partial write is cut
 * off, the chain rolls back, and later records continue it. */
static void test_write_fails(void)
{
    char dir[256];
    struct err e = {0};
    struct audit_log *log = NULL;
    uint64_t seq = 0;
    struct rlimit old, lim;
    fresh_dir(dir, sizeof dir, "efbig");
    CHECK(audit_open(dir, KEY, NULL, &log, &e) == INF_OK);
    CHECK(append_one(log, 0, &seq, &e) == INF_OK && seq == 2);
    char p[512];
    struct stat sb;
    seg_path(p, sizeof p, dir, 1);
    CHECK(stat(p, &sb) == 0);
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)sb.st_size + 100; /* room for part of one line */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    CHECK(append_one(log, 1, &seq, &e) == INF_EIO);
    CHECK(!audit_healthy(log));
    struct stat after;
    CHECK(stat(p, &after) == 0 && after.st_size == sb.st_size); /* the partial line is gone */
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, SIG_DFL);
    CHECK(append_one(log, 2, &seq, &e) == INF_OK && seq == 3);
    CHECK(audit_healthy(log));
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK && rep.records == 3);
}

/*
 * fdatasync as the audit log sees it (this definition wins over libc's at link time): calls
 * number sync_fail_from .. sync_fail_from + sync_fail_count - 1 fail with EIO.
 */
static atomic_int sync_calls, sync_fail_from, sync_fail_count;

int fdatasync(int fd)
{
    int n = atomic_fetch_add(&sync_calls, 1) + 1;
    int from = atomic_load(&sync_fail_from);
    if (from > 0 && n >= from && n < from + atomic_load(&sync_fail_count)) {
        errno = EIO;
        return -1;
    }
    return (int)syscall(SYS_fdatasync, fd);
}

/* The request ids of a log's records by seq (test_sync_fails). */
struct by_seq_ids {
    uint64_t max_seq;
    int *id_at; /* [seq]: 1 + the number in "req-NNNNNN", 0: no request record */
    int logged; /* request records seen */
};

static void note_request_id(const json_t *j, void *ctx)
{
    struct by_seq_ids *b = ctx;
    const char *rid = json_string_value(json_object_get(j, "request_id"));
    json_int_t s = json_integer_value(json_object_get(j, "seq"));
    if (rid != NULL && s > 0 && (uint64_t)s <= b->max_seq) {
        b->id_at[s] = atoi(rid + 4) + 1;
        b->logged++;
    }
}

struct sync_worker {
    struct audit_log *log;
    int id, n, ok;
    int *ok_ids;
    uint64_t *ok_seqs;
};

static void *sync_worker_main(void *arg)
{
    struct sync_worker *w = arg;
    for (int i = 0; i < w->n; i++) {
        int id = w->id * 100000 + i;
        json_t *r = request_record(id);
        struct err e = {0};
        uint64_t seq = 0;
        if (audit_append(w->log, r, &seq, &e) == INF_OK) {
            w->ok_ids[w->ok] = id;
            w->ok_seqs[w->ok++] = seq;
        }
        json_decref(r);
    }
    return NULL;
}

/*
 * fdatasync fails while 8 threads append with 8 commits in flight: the failed commit and the
 * later ones in flight are refused, the log continues from the last acknowledged record, and
 * the log holds exactly the acknowledged records, each at the seq its append returned.
 */
static void test_sync_fails(void)
{
    enum { THREADS = 8 };
    int per = test_quick() ? 60 : 200;
    char dir[256];
    struct err e = {0};
    struct audit_log *log = NULL;
    fresh_dir(dir, sizeof dir, "syncfail");
    struct audit_options opt = {.max_in_flight = 8};
    CHECK(audit_open(dir, KEY, &opt, &log, &e) == INF_OK);
    atomic_store(&sync_fail_count, 3);
    atomic_store(&sync_fail_from, atomic_load(&sync_calls) + 40);
    struct sync_worker w[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct sync_worker){.log = log, .id = t, .n = per};
        w[t].ok_ids = calloc((size_t)per, sizeof(int));
        w[t].ok_seqs = calloc((size_t)per, sizeof(uint64_t));
        pthread_create(&th[t], NULL, sync_worker_main, &w[t]);
    }
    int ok = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        ok += w[t].ok;
    }
    atomic_store(&sync_fail_from, 0);
    struct audit_stats st;
    audit_stats_get(log, &st);
    CHECK_MSG(st.failures >= 1, "failures %llu", (unsigned long long)st.failures);
    CHECK(ok < THREADS * per && ok > THREADS * per / 2);
    CHECK(audit_healthy(log));
    audit_close(log);
    struct audit_verify_report rep;
    CHECK(verify_ok(dir, &rep) == INF_OK);
    /* Exactly the acknowledged records, each at its seq. */
    struct by_seq_ids ids = {.max_seq = rep.last_seq,
                             .id_at = calloc(rep.last_seq + 1, sizeof(int))};
    log_each_record(dir, note_request_id, &ids);
    int *id_at = ids.id_at, logged = ids.logged;
    int found = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < w[t].ok; i++)
            found +=
                w[t].ok_seqs[i] <= rep.last_seq && id_at[w[t].ok_seqs[i]] == w[t].ok_ids[i] + 1;
    CHECK_MSG(found == ok && logged == ok, "%d acknowledged, %d found at their seq, %d logged", ok,
              found, logged);
    fprintf(stderr,
            "  %d of %d appends acknowledged around 3 failed fdatasyncs, %llu failed commits\n", ok,
            THREADS * per, (unsigned long long)st.failures);
    free(id_at);
    for (int t = 0; t < THREADS; t++) {
        free(w[t].ok_ids);
        free(w[t].ok_seqs);
    }
}

/* ------------------------------------------------------------------------------------------
 * Crashes
 * ---------------------------------------------------------------------------------------- */

struct ack {
    uint64_t seq;
    int32_t run, thread, n, pad;
};

struct crash_worker {
    struct audit_log *log;
    int fd, run, thread;
};

static void *crash_worker_main(void *arg)
{
    struct crash_worker *w = arg;
    for (int n = 0;; n++) {
        json_t *r = json_pack("{s:s, s:i, s:i, s:i}", "event", "test.crash", "run", w->run,
                              "thread", w->thread, "n", n);
        struct ack a = {.run = w->run, .thread = w->thread, .n = n};
        struct err e = {0};
        if (r != NULL && audit_append(w->log, r, &a.seq, &e) == INF_OK &&
            write(w->fd, &a, sizeof a) != (ssize_t)sizeof a)
            _exit(3);
        json_decref(r);
    }
    return NULL;
}

static void crash_child(const char *dir, int fd, int run)
{
    struct audit_options opt = {.segment_bytes = 8192, .max_batch = 8};
    struct audit_log *log = NULL;
    struct err e = {0};
    if (audit_open(dir, KEY, &opt, &log, &e) != INF_OK) {
        fprintf(stderr, "child: %s\n", e.msg);
        _exit(2);
    }
    struct crash_worker w[4];
    pthread_t th[4];
    for (int t = 0; t < 4; t++) {
        w[t] = (struct crash_worker){.log = log, .fd = fd, .run = run, .thread = t};
        pthread_create(&th[t], NULL, crash_worker_main, &w[t]);
    }
    for (;;)
        pause();
}

/* Every acknowledged record must be in the log with its seq. */
/* The crash children's records by seq (check_acks). */
struct by_seq_acks {
    uint64_t max_seq;
    int32_t (*at)[3]; /* [seq]: run + 1, thread, n; run 0: no crash-child record */
};

static void note_ack(const json_t *j, void *ctx)
{
    struct by_seq_acks *b = ctx;
    json_int_t s = json_integer_value(json_object_get(j, "seq"));
    if (j != NULL && s > 0 && (uint64_t)s <= b->max_seq && json_object_get(j, "run")) {
        b->at[s][0] = (int32_t)json_integer_value(json_object_get(j, "run")) + 1;
        b->at[s][1] = (int32_t)json_integer_value(json_object_get(j, "thread"));
        b->at[s][2] = (int32_t)json_integer_value(json_object_get(j, "n"));
    }
}

static void check_acks(const char *dir, const struct ack *acks, size_t n, int iter)
{
    size_t found = 0;
    uint64_t max_seq = 0;
    for (size_t i = 0; i < n; i++)
        max_seq = acks[i].seq > max_seq ? acks[i].seq : max_seq;
    int32_t(*by_seq)[3] = calloc(max_seq + 1, sizeof *by_seq);
    struct by_seq_acks b = {.max_seq = max_seq, .at = by_seq};
    log_each_record(dir, note_ack, &b);
    for (size_t i = 0; i < n; i++) {
        const int32_t *r = by_seq[acks[i].seq];
        found += r[0] == acks[i].run + 1 && r[1] == acks[i].thread && r[2] == acks[i].n;
    }
    CHECK_MSG(found == n, "iteration %d: %zu of %zu acknowledged records in the log", iter, found,
              n);
    free(by_seq);
}

/*
 * Simulates losing part of what was written after the last fdatasync (as a power cut can): cuts
 * the last segment at a random byte after the last acknowledged record. Returns bytes cut.
 */
static long cut_unsynced_tail(const char *dir, const struct ack *acks, size_t n, unsigned r)
{
    char p[512], next[512];
    uint64_t max_ack = 0;
    for (size_t i = 0; i < n; i++)
        max_ack = acks[i].seq > max_ack ? acks[i].seq : max_ack;
    unsigned seg = 1;
    for (;; seg++) {
        seg_path(next, sizeof next, dir, seg + 1);
        if (access(next, F_OK) != 0)
            break;
    }
    seg_path(p, sizeof p, dir, seg);
    if (access(p, F_OK) != 0)
        return 0; /* killed inside the first audit_open, before segment 1 existed */
    struct lines l;
    lines_read(p, &l);
    size_t keep = 0, size = 0;
    for (size_t i = 0; i < l.n; i++) {
        size_t len = strlen(l.v[i]);
        json_t *j = json_loads(l.v[i], 0, NULL);
        json_int_t s = json_integer_value(json_object_get(j, "seq"));
        if (j != NULL && s > 0 && (uint64_t)s <= max_ack)
            keep = size + len;
        size += len;
        json_decref(j);
    }
    lines_free(&l);
    if (size <= keep)
        return 0;
    size_t at = keep + r % (size - keep + 1);
    if (truncate(p, (off_t)at) != 0)
        die(p);
    return (long)(size - at);
}

static void test_crash(void)
{
    int iters = test_quick() ? 5 : 20;
    char dir[256];
    fresh_dir(dir, sizeof dir, "crash");
    unsigned rng = (unsigned)time(NULL);
    fprintf(stderr, "  crash seed %u\n", rng);
    size_t cap = 1 << 16, n = 0;
    int cut = 0;
    struct ack *acks = calloc(cap, sizeof *acks);
    for (int it = 0; it < iters; it++) {
        int fds[2];
        if (pipe(fds) != 0)
            die("pipe");
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(fds[0]);
            crash_child(dir, fds[1], it);
        }
        close(fds[1]);
        rng = rng * 1103515245u + 12345u;
        /* From "during audit_open" to well into the appends (longer under valgrind). */
        long us = (long)((rng >> 8) % 60000u) * (test_quick() ? 10 : 1);
        usleep((useconds_t)us);
        kill(pid, SIGKILL);
        int status = 0;
        /* Drain the pipe while the child dies, then reap it. */
        char buf[4096];
        size_t have = 0;
        for (;;) {
            ssize_t got = read(fds[0], buf + have, sizeof buf - have);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0)
                break;
            have += (size_t)got;
            size_t whole = have / sizeof(struct ack) * sizeof(struct ack);
            for (size_t off = 0; off < whole; off += sizeof(struct ack)) {
                if (n == cap) {
                    cap *= 2;
                    acks = realloc(acks, cap * sizeof *acks);
                }
                memcpy(&acks[n++], buf + off, sizeof(struct ack));
            }
            memmove(buf, buf + whole, have - whole);
            have -= whole;
        }
        close(fds[0]);
        waitpid(pid, &status, 0);
        CHECK_MSG(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "iteration %d: child exited with status %d", it, status);
        rng = rng * 1103515245u + 12345u;
        if ((rng >> 16) & 1)
            cut += cut_unsynced_tail(dir, acks, n, rng >> 8) > 0;
        struct err e = {0};
        struct audit_log *log = NULL;
        int rc = audit_open(dir, KEY, NULL, &log, &e);
        CHECK_MSG(rc == INF_OK, "iteration %d: reopen: %s", it, e.msg);
        audit_close(log);
        struct audit_verify_report rep;
        CHECK_MSG(verify_ok(dir, &rep) == INF_OK, "iteration %d", it);
        check_acks(dir, acks, n, it);
    }
    fprintf(stderr, "  %d crashes (%d with unsynced bytes cut), %zu acknowledged records\n", iters,
            cut, n);
    free(acks);
}

int main(void)
{
    char tmpl[] = "/tmp/test_audit.XXXXXX";
    if (mkdtemp(tmpl) == NULL)
        die("mkdtemp");
    snprintf(scratch, sizeof scratch, "%s", tmpl);
    RUN(test_basics);
    RUN(test_bad_records);
    RUN(test_flat_lines);
    RUN(test_flat_log);
    RUN(test_concurrent);
    RUN(test_segments);
    RUN(test_tampering);
    RUN(test_torn_tail);
    RUN(test_dir_moved);
    RUN(test_write_fails);
    RUN(test_sync_fails);
    RUN(test_crash);
    fs_remove_tree(scratch);
    return test_finish();
}
