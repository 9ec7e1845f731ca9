/*
 * auth/audit_verify.c - the audit log's line format checks, MAC chain and offline verification.
 *
 * The writer (audit.c) uses the same scanner at start-up to check the last segment and find a
 * torn tail, so the rules for "what is a good line" live only here.
 */
#include "audit_internal.h"
#include "auth/hmac.h"
#include "common/json_dump.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ------------------------------------------------------------------------------------------
 * HMAC-SHA256 and hex
 * ---------------------------------------------------------------------------------------- */

struct audit_hmac {
    struct hmac_key *key; /* K_audit's key schedule */
    EVP_MD_CTX *work;     /* one line at a time: the caller serialises (audit_internal.h) */
};

int audit_hmac_new(const uint8_t key[AUDIT_KEY_BYTES], struct audit_hmac **out, struct err *e)
{
    struct audit_hmac *h = calloc(1, sizeof *h);
    if (h == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    h->key = hmac_key_new(key, AUDIT_KEY_BYTES);
    h->work = EVP_MD_CTX_new();
    if (h->key == NULL || h->work == NULL) {
        audit_hmac_free(h);
        return err_set(e, INF_EIO, "cannot set up HMAC-SHA256 (OpenSSL)");
    }
    *out = h;
    return INF_OK;
}

void audit_hmac_free(struct audit_hmac *h)
{
    if (h == NULL)
        return;
    hmac_key_free(h->key);
    EVP_MD_CTX_free(h->work);
    free(h);
}

int audit_hmac_line(struct audit_hmac *h, const uint8_t prev[AUDIT_MAC_BYTES], const char *z,
                    size_t len, uint8_t out[AUDIT_MAC_BYTES], struct err *e)
{
    if (!hmac_begin(h->key, h->work) || EVP_DigestUpdate(h->work, prev, AUDIT_MAC_BYTES) != 1 ||
        EVP_DigestUpdate(h->work, z, len) != 1 || !hmac_end(h->key, h->work, out))
        return err_set(e, INF_EIO, "HMAC-SHA256 failed (OpenSSL)");
    return INF_OK;
}

void audit_hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Parses exactly 64 lowercase hex digits (the only form the writer produces). */
static bool mac_parse(const char *s, size_t len, uint8_t out[AUDIT_MAC_BYTES])
{
    if (len != AUDIT_MAC_HEX)
        return false;
    for (size_t i = 0; i < AUDIT_MAC_BYTES; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0 || (s[2 * i] >= 'A' && s[2 * i] <= 'F') ||
            (s[2 * i + 1] >= 'A' && s[2 * i + 1] <= 'F'))
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Segment files
 * ---------------------------------------------------------------------------------------- */

#define SEGMENT_NUM_MAX 99999999u

void audit_segment_name(unsigned num, char *out, size_t cap)
{
    snprintf(out, cap, "audit-%06u.jsonl", num);
}

/* The number of a segment file name, or 0 if name is not exactly what audit_segment_name
 * makes (so "audit-1.jsonl" or "audit-000001.jsonl.bak" are not segments). */
static unsigned segment_num_of(const char *name)
{
    if (strncmp(name, "audit-", 6) != 0)
        return 0;
    unsigned num = 0;
    const char *p = name + 6;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (num > SEGMENT_NUM_MAX / 10)
            return 0;
        num = num * 10 + (unsigned)(*p - '0');
    }
    char canon[64];
    audit_segment_name(num, canon, sizeof canon);
    return num > 0 && num <= SEGMENT_NUM_MAX && strcmp(canon, name) == 0 ? num : 0;
}

static int num_cmp(const void *a, const void *b)
{
    unsigned x = *(const unsigned *)a, y = *(const unsigned *)b;
    return x < y ? -1 : x > y;
}

int audit_segments_list(const char *dir, unsigned **nums, size_t *n, struct err *e)
{
    int rc = INF_OK;
    unsigned *v = NULL;
    size_t len = 0, cap = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        if (errno == ENOENT)
            return err_set(e, INF_ENOTFOUND, "%s does not exist", dir);
        return err_set(e, INF_EIO, "%s: %s", dir, strerror(errno));
    }
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                rc = err_set(e, INF_EIO, "%s: %s", dir, strerror(errno));
            break;
        }
        unsigned num = segment_num_of(de->d_name);
        if (num == 0)
            continue;
        if (len == cap) {
            size_t ncap = cap ? 2 * cap : 64, bytes;
            unsigned *nv;
            if (!size_mul_ok(ncap, sizeof *v, &bytes) || (nv = realloc(v, bytes)) == NULL) {
                rc = err_set(e, INF_ENOMEM, "out of memory");
                break;
            }
            v = nv;
            cap = ncap;
        }
        v[len++] = num;
    }
    closedir(d);
    if (rc != INF_OK) {
        free(v);
        return rc;
    }
    if (len > 0)
        qsort(v, len, sizeof *v, num_cmp);
    *nums = v;
    *n = len;
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Reading lines with a cap
 * ---------------------------------------------------------------------------------------- */

#define READER_CAP (4 * AUDIT_LINE_MAX)

struct line_reader {
    int fd;
    char *buf; /* READER_CAP bytes; [start, end) not yet returned */
    size_t start, end;
    bool eof;
};

enum { LINE_EOF = 0, LINE_OK = 1, LINE_TOO_LONG = 2 };

/* Next line in [*line, *line + *len) without its '\n'; *nl tells whether it had one (only the
 * last line of a file can lack it). Returns LINE_OK, LINE_EOF, LINE_TOO_LONG or INF_EIO. */
static int reader_next(struct line_reader *r, const char **line, size_t *len, bool *nl,
                       struct err *e)
{
    for (;;) {
        char *p = memchr(r->buf + r->start, '\n', r->end - r->start);
        if (p != NULL) {
            *line = r->buf + r->start;
            *len = (size_t)(p - *line);
            *nl = true;
            r->start = (size_t)(p + 1 - r->buf);
            return *len + 1 > AUDIT_LINE_MAX ? LINE_TOO_LONG : LINE_OK;
        }
        if (r->end - r->start >= AUDIT_LINE_MAX)
            return LINE_TOO_LONG;
        if (r->eof) {
            if (r->start == r->end)
                return LINE_EOF;
            *line = r->buf + r->start;
            *len = r->end - r->start;
            *nl = false;
            r->start = r->end;
            return LINE_OK;
        }
        if (r->start > 0) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            r->end -= r->start;
            r->start = 0;
        }
        ssize_t got = read(r->fd, r->buf + r->end, READER_CAP - r->end);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return err_set(e, INF_EIO, "read: %s", strerror(errno));
        if (got == 0)
            r->eof = true;
        r->end += (size_t)got;
    }
}

/* ------------------------------------------------------------------------------------------
 * One line
 * ---------------------------------------------------------------------------------------- */

enum { LC_OK = 0, LC_BAD = 1, LC_UNPARSABLE = 2 };

struct line_ctx {
    struct audit_hmac *h;
    unsigned num;           /* segment number from the file name */
    unsigned long lineno;   /* 1-based */
    struct audit_chain cur; /* position before this line */
    bool have_base;         /* cur is known (else taken from the segment_start) */
    long long seq;          /* the line's seq if it has one, else -1 */
    char why[ERR_MSG_MAX];
};

static bool get_uint(json_t *obj, const char *key, long long min, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < min)
        return false;
    *out = json_integer_value(v);
    return true;
}

static bool get_mac(json_t *obj, const char *key, uint8_t out[AUDIT_MAC_BYTES])
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) && mac_parse(json_string_value(v), json_string_length(v), out);
}

#define BAD(...) (snprintf(c->why, sizeof c->why, __VA_ARGS__), LC_BAD)

/* Checks the start-of-segment rules of a segment's first line and sets c->cur if unknown. */
static int check_segment_start(struct line_ctx *c, json_t *obj)
{
    long long segment, prev_seq;
    uint8_t prev_mac[AUDIT_MAC_BYTES];
    json_t *ev = json_object_get(obj, "event");
    if (!json_is_string(ev) || strcmp(json_string_value(ev), "audit.segment_start") != 0)
        return BAD("the segment does not begin with an audit.segment_start record");
    if (!get_uint(obj, "segment", 1, &segment) || !get_uint(obj, "prev_seq", 0, &prev_seq) ||
        !get_mac(obj, "prev_mac", prev_mac))
        return BAD("malformed audit.segment_start record");
    if ((unsigned long long)segment != c->num)
        return BAD("audit.segment_start names segment %lld: segment files were renamed or "
                   "reordered",
                   segment);
    if (!c->have_base) {
        c->cur.seq = (uint64_t)prev_seq;
        memcpy(c->cur.mac, prev_mac, sizeof prev_mac);
        c->have_base = true;
        return LC_OK;
    }
    if ((uint64_t)prev_seq != c->cur.seq)
        return BAD("the segment starts after seq %lld but the previous segment ends at seq %llu: "
                   "a segment was removed, replaced or reordered",
                   prev_seq, (unsigned long long)c->cur.seq);
    if (CRYPTO_memcmp(prev_mac, c->cur.mac, sizeof prev_mac) != 0)
        return BAD("prev_mac does not match the last mac of the previous segment: a segment was "
                   "replaced");
    return LC_OK;
}

/* Returns LC_OK (c->cur advanced), LC_BAD or LC_UNPARSABLE (c->why set), or an error status. */
static int line_check(struct line_ctx *c, const char *line, size_t len, struct err *e)
{
    int rc = LC_OK;
    char *canon = NULL, *zeroed = NULL;
    long long seq = -1;
    uint8_t mac[AUDIT_MAC_BYTES], want[AUDIT_MAC_BYTES];
    json_error_t jerr;
    c->seq = -1;
    json_t *obj = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (obj == NULL) {
        snprintf(c->why, sizeof c->why, "not parsable JSON (%s at column %d)", jerr.text,
                 jerr.column);
        rc = LC_UNPARSABLE;
        goto out;
    }
    if (!json_is_object(obj)) {
        rc = BAD("not a JSON object");
        goto out;
    }
    if (get_uint(obj, "seq", 1, &seq))
        c->seq = seq;
    canon = json_dump_checked(obj, AUDIT_DUMP_FLAGS);
    if (canon == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    if (strlen(canon) != len || memcmp(canon, line, len) != 0) {
        rc = BAD("not canonical JSON (spacing, key order or escaping differs): the line was "
                 "rewritten");
        goto out;
    }
    if (c->seq < 0) {
        rc = BAD("no valid seq");
        goto out;
    }
    if (!get_mac(obj, "mac", mac) || !json_is_string(json_object_get(obj, "ts"))) {
        rc = BAD("no valid mac or ts");
        goto out;
    }
    if (c->lineno == 1) {
        if ((rc = check_segment_start(c, obj)) != LC_OK)
            goto out;
    } else {
        json_t *ev = json_object_get(obj, "event");
        if (json_is_string(ev) && strcmp(json_string_value(ev), "audit.segment_start") == 0) {
            rc = BAD("audit.segment_start inside a segment: segments were joined or a record "
                     "inserted");
            goto out;
        }
    }
    if ((uint64_t)seq > c->cur.seq + 1) {
        rc = BAD("seq jumps from %llu to %lld: record(s) deleted or reordered",
                 (unsigned long long)c->cur.seq, seq);
        goto out;
    }
    if ((uint64_t)seq <= c->cur.seq) {
        rc = BAD("seq %lld repeats or goes back after seq %llu: a record was inserted, copied "
                 "or reordered",
                 seq, (unsigned long long)c->cur.seq);
        goto out;
    }
    /* Z_i: the canonical dump with the mac zeroed; for a canonical line, exactly the line with
     * its 64 mac digits replaced by '0' (see audit.h). */
    char zeros[AUDIT_MAC_HEX + 1];
    memset(zeros, '0', AUDIT_MAC_HEX);
    zeros[AUDIT_MAC_HEX] = '\0';
    if (json_object_set_new(obj, "mac", json_string(zeros)) != 0 ||
        (zeroed = json_dump_checked(obj, AUDIT_DUMP_FLAGS)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = audit_hmac_line(c->h, c->cur.mac, zeroed, strlen(zeroed), want, e)) != INF_OK)
        goto out;
    if (CRYPTO_memcmp(want, mac, sizeof mac) != 0) {
        rc = BAD("bad mac: the record was edited or forged");
        goto out;
    }
    c->cur.seq = (uint64_t)seq;
    memcpy(c->cur.mac, mac, sizeof mac);
out:
    free(canon);
    free(zeroed);
    json_decref(obj);
    return rc;
}

#undef BAD

/* ------------------------------------------------------------------------------------------
 * One segment
 * ---------------------------------------------------------------------------------------- */

static void scan_bad(struct audit_scan *out, const char *name, const struct line_ctx *c,
                     const char *what, bool torn)
{
    out->bad = true;
    out->torn = torn;
    if (c->seq >= 0)
        snprintf(out->why, sizeof out->why, "%s line %lu (seq %lld): %.400s", name, c->lineno,
                 c->seq, what);
    else if (c->have_base)
        snprintf(out->why, sizeof out->why, "%s line %lu (after seq %llu): %.400s", name, c->lineno,
                 (unsigned long long)c->cur.seq, what);
    else
        snprintf(out->why, sizeof out->why, "%s line %lu (seq ?): %.400s", name, c->lineno, what);
}

int audit_segment_scan(struct audit_hmac *h, const char *path, unsigned num,
                       const struct audit_chain *base, struct audit_scan *out, struct err *e)
{
    int rc = INF_OK;
    struct line_reader r = {.fd = -1};
    struct line_ctx c = {.h = h, .num = num, .seq = -1};
    struct stat st;
    const char *slash = strrchr(path, '/');
    const char *name = slash != NULL ? slash + 1 : path;
    memset(out, 0, sizeof *out);
    if (base != NULL) {
        c.cur = *base;
        c.have_base = true;
    }
    r.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r.fd < 0) {
        rc = err_set(e, errno == ENOENT ? INF_ENOTFOUND : INF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(r.fd, &st) != 0) {
        rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    out->file_bytes = (uint64_t)st.st_size;
    if ((r.buf = malloc(READER_CAP)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    for (;;) {
        const char *line = NULL;
        size_t len = 0;
        bool nl = false;
        int got = reader_next(&r, &line, &len, &nl, e);
        if (got < 0) {
            rc = got;
            err_prefix(e, "%s", path);
            goto out;
        }
        if (got == LINE_EOF)
            break;
        c.lineno++;
        c.seq = -1;
        if (got == LINE_TOO_LONG) {
            scan_bad(out, name, &c, "line longer than AUDIT_LINE_MAX", false);
            break;
        }
        if (!nl) {
            char what[128];
            snprintf(what, sizeof what,
                     "torn tail: %zu bytes without a trailing newline (a crash during a write; "
                     "audit_open truncates it)",
                     len);
            scan_bad(out, name, &c, what, true);
            break;
        }
        int lc = line_check(&c, line, len, e);
        if (lc < 0) {
            rc = lc;
            goto out;
        }
        if (lc == LC_UNPARSABLE) {
            /* Torn only if it is the last line of the file. */
            const char *l2;
            size_t n2;
            bool nl2;
            int next = reader_next(&r, &l2, &n2, &nl2, e);
            if (next < 0) {
                rc = next;
                err_prefix(e, "%s", path);
                goto out;
            }
            if (next == LINE_EOF) {
                char what[ERR_MSG_MAX];
                snprintf(what, sizeof what,
                         "torn tail: the last line is %.200s (a crash during a write; "
                         "audit_open truncates it)",
                         c.why);
                scan_bad(out, name, &c, what, true);
            } else {
                scan_bad(out, name, &c, c.why, false);
            }
            break;
        }
        if (lc == LC_BAD) {
            scan_bad(out, name, &c, c.why, false);
            break;
        }
        out->records++;
        out->good_bytes += len + 1;
        out->end = c.cur;
    }
    if (!out->bad && out->records == 0) {
        c.lineno = 1;
        scan_bad(out, name, &c,
                 "empty segment (a crash while the segment was started; audit_open resumes it)",
                 true);
    }
    if (out->records == 0 && base != NULL)
        out->end = *base;
out:
    if (r.fd >= 0)
        close(r.fd);
    free(r.buf);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * The whole log
 * ---------------------------------------------------------------------------------------- */

int audit_verify(const char *dir, const uint8_t key[AUDIT_KEY_BYTES],
                 struct audit_verify_report *report, struct err *e)
{
    int rc = INF_OK;
    struct audit_verify_report rep = {0};
    struct audit_hmac *h = NULL;
    unsigned *nums = NULL;
    size_t n = 0;
    struct audit_chain chain = {0};
    char path[4096], name[64], prev[64];
    if ((rc = audit_segments_list(dir, &nums, &n, e)) != INF_OK)
        goto out;
    if ((rc = audit_hmac_new(key, &h, e)) != INF_OK)
        goto out;
    if (n == 0) {
        snprintf(rep.first_bad, sizeof rep.first_bad,
                 "no audit segments in %.400s: missing first segment audit-000001.jsonl", dir);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned want = (unsigned)i + 1;
        audit_segment_name(nums[i], name, sizeof name);
        if (nums[i] != want) {
            audit_segment_name(want, prev, sizeof prev);
            if (want == 1)
                snprintf(rep.first_bad, sizeof rep.first_bad,
                         "missing first segment %s: the log starts at %s", prev, name);
            else
                snprintf(rep.first_bad, sizeof rep.first_bad,
                         "missing segment %s: %s follows segment %u (removed or renamed)", prev,
                         name, want - 1);
            goto out;
        }
        struct audit_scan sc;
        if ((rc = fs_path_join(path, sizeof path, dir, name, e)) != INF_OK ||
            (rc = audit_segment_scan(h, path, nums[i], &chain, &sc, e)) != INF_OK)
            goto out;
        rep.records += sc.records;
        if (sc.records > 0)
            rep.last_seq = sc.end.seq;
        if (sc.bad) {
            snprintf(rep.first_bad, sizeof rep.first_bad, "%s", sc.why);
            goto out;
        }
        chain = sc.end;
        rep.segments++;
    }
out:
    if (rc == INF_OK && rep.first_bad[0] != '\0')
        rc = err_set(e, INF_EINVAL, "%s", rep.first_bad);
    if (report != NULL)
        *report = rep;
    free(nums);
    audit_hmac_free(h);
    return rc;
}
