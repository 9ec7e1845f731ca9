/*
 * tests/fuzz/fuzz_multipart.c - multipart/form-data upload bodies (multipart_parse), as
 * POST /v1/files receives them.
 *
 * Input: the Content-Type header value, one '\n', then the body (any bytes). Without a '\n' the
 * whole input is the body and the Content-Type is missing (NULL). The body is parsed from an
 * exact-size copy, so a read past its end is a sanitizer report.
 *
 * Properties on failure: INF_EINVAL (or INF_ENOMEM) with a "multipart: ..." message, *out
 * unchanged. On success: 1..MULTIPART_MAX_PARTS parts in body order, each content inside the
 * body and after the previous one, preceded by the CRLF CRLF that ends its headers; names,
 * filenames and content types NUL-terminated within their arrays and bounded by the header
 * limits, names non-empty, no control bytes but tab, no filename unless has_filename;
 * multipart_find / multipart_count agree with the parts. When the Content-Type has the plain
 * form `multipart/form-data; boundary=B` (B maybe quoted, no backslash), B is known and also:
 * each content is followed by "\r\n--B" and then padding + CRLF (or "--" after the last part),
 * and no content holds a real delimiter. Metamorphic: a preamble line "xx\r\n" in front of a
 * non-empty body changes nothing (same status and message; the same parts 4 bytes later), and
 * bytes appended to a body that parsed are epilogue (the same parts).
 */
#include <strings.h>

#include "server/multipart.h"
#include "tests/fuzz/fuzz.h"

/* B of a Content-Type of the plain form `multipart/form-data; boundary=B` (any case; B quoted
 * without escapes, or a token to the end); false for any other form. */
static bool plain_boundary(const char *ct, char *out, size_t cap)
{
    static const char pre[] = "multipart/form-data; boundary=";
    if (ct == NULL || strncasecmp(ct, pre, sizeof pre - 1) != 0)
        return false;
    const char *v = ct + sizeof pre - 1;
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
        if (memchr(v, '"', n) != NULL || memchr(v, '\\', n) != NULL)
            return false;
    } else if (strpbrk(v, "\"; \t") != NULL) {
        return false;
    }
    if (n == 0 || n >= cap)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* Is there a delimiter "\r\n" + delim + ("--" | padding CRLF) at body[at..]? */
static bool real_delim_at(const char *b, size_t n, size_t at, const char *delim, size_t dlen)
{
    if (at + 2 + dlen > n || b[at] != '\r' || b[at + 1] != '\n' ||
        memcmp(b + at + 2, delim, dlen) != 0)
        return false;
    size_t p = at + 2 + dlen;
    if (p + 2 <= n && b[p] == '-' && b[p + 1] == '-')
        return true;
    while (p < n && (b[p] == ' ' || b[p] == '\t'))
        p++;
    return p + 2 <= n && b[p] == '\r' && b[p + 1] == '\n';
}

static bool str_ok(const char *s, size_t cap, size_t max_len)
{
    const char *nul = memchr(s, '\0', cap);
    if (nul == NULL || (size_t)(nul - s) > max_len)
        return false;
    for (const char *p = s; p < nul; p++)
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return true;
}

static void check_parts(const struct multipart *mp, const char *ct, const char *body, size_t len)
{
    FUZZ_CHECK(mp->n_parts >= 1 && mp->n_parts <= MULTIPART_MAX_PARTS, "%zu parts", mp->n_parts);
    const char *prev_end = body;
    for (size_t i = 0; i < mp->n_parts; i++) {
        const struct multipart_part *p = &mp->parts[i];
        FUZZ_CHECK(p->data != NULL && p->data >= body + 4 && p->data <= body + len &&
                       p->len <= (size_t)(body + len - p->data),
                   "part %zu outside the body", i + 1);
        FUZZ_CHECK(p->data > prev_end, "part %zu overlaps or precedes part %zu", i + 1, i);
        FUZZ_CHECK(memcmp(p->data - 4, "\r\n\r\n", 4) == 0,
                   "part %zu: content not after an empty header line", i + 1);
        prev_end = p->data + p->len;
        FUZZ_CHECK(str_ok(p->name, sizeof p->name, MULTIPART_NAME_MAX) && p->name[0] != '\0',
                   "part %zu: bad name", i + 1);
        FUZZ_CHECK(str_ok(p->filename, sizeof p->filename, MULTIPART_FILENAME_MAX),
                   "part %zu: bad filename", i + 1);
        FUZZ_CHECK(p->has_filename || p->filename[0] == '\0', "part %zu: filename without flag",
                   i + 1);
        FUZZ_CHECK(str_ok(p->content_type, sizeof p->content_type, MULTIPART_CTYPE_MAX),
                   "part %zu: bad content type", i + 1);
        const struct multipart_part *f = multipart_find(mp, p->name);
        FUZZ_CHECK(f != NULL && f <= p && strcmp(f->name, p->name) == 0,
                   "multipart_find(\"%s\") is not the first part of that name", p->name);
        for (const struct multipart_part *q = mp->parts; q < f; q++)
            FUZZ_CHECK(strcmp(q->name, p->name) != 0, "multipart_find skipped a part");
        size_t c = 0;
        for (size_t k = 0; k < mp->n_parts; k++)
            c += strcmp(mp->parts[k].name, p->name) == 0;
        FUZZ_CHECK(multipart_count(mp, p->name) == c, "multipart_count(\"%s\")", p->name);
    }
    char b[MULTIPART_MAX_LINE + 1], delim[MULTIPART_MAX_LINE + 3];
    if (!plain_boundary(ct, b, sizeof b))
        return;
    size_t dlen = (size_t)snprintf(delim, sizeof delim, "--%s", b);
    for (size_t i = 0; i < mp->n_parts; i++) {
        const struct multipart_part *p = &mp->parts[i];
        size_t off = (size_t)(p->data - body), end = off + p->len;
        FUZZ_CHECK(real_delim_at(body, len, end, delim, dlen),
                   "part %zu is not followed by a delimiter", i + 1);
        bool close = end + 4 + dlen <= len && memcmp(body + end + 2 + dlen, "--", 2) == 0;
        FUZZ_CHECK(close == (i + 1 == mp->n_parts), "part %zu: close delimiter %s", i + 1,
                   close ? "too early" : "missing after the last part");
        for (size_t at = off; at < end; at++)
            FUZZ_CHECK(!real_delim_at(body, len, at, delim, dlen),
                       "part %zu holds a delimiter at byte %zu", i + 1, at);
    }
}

/* Parses an exact-size copy of body. *mp_out gets the parse (caller frees) or NULL. */
static int parse_copy(const char *ct, const char *pre, size_t pre_len, const char *body, size_t len,
                      const char *post, size_t post_len, char **copy, struct multipart **mp_out,
                      struct err *e)
{
    size_t n = pre_len + len + post_len;
    *copy = malloc(n ? n : 1);
    FUZZ_CHECK(*copy != NULL, "out of memory");
    memcpy(*copy, pre, pre_len);
    memcpy(*copy + pre_len, body, len);
    memcpy(*copy + pre_len + len, post, post_len);
    struct multipart *sentinel = (struct multipart *)(uintptr_t)0x1;
    struct multipart *mp = sentinel;
    int rc = multipart_parse(ct, *copy, n, &mp, e);
    if (rc != INF_OK) {
        FUZZ_CHECK(rc == INF_EINVAL || rc == INF_ENOMEM, "status %d (%s)", rc, e->msg);
        FUZZ_CHECK(e->status == rc && e->msg[0] != '\0', "status %d without a message", rc);
        FUZZ_CHECK(strncmp(e->msg, "multipart: ", 11) == 0 || rc == INF_ENOMEM, "message: %s",
                   e->msg);
        FUZZ_CHECK(mp == sentinel, "failure changed *out");
        mp = NULL;
    } else {
        FUZZ_CHECK(mp != NULL && mp != sentinel, "success without a result");
        check_parts(mp, ct, *copy, n);
    }
    *mp_out = mp;
    return rc;
}

static void same_parts(const struct multipart *a, const char *abody, const struct multipart *b,
                       const char *bbody, size_t shift, const char *what)
{
    FUZZ_CHECK(a->n_parts == b->n_parts, "%s: %zu parts, then %zu", what, a->n_parts, b->n_parts);
    for (size_t i = 0; i < a->n_parts; i++) {
        const struct multipart_part *p = &a->parts[i], *q = &b->parts[i];
        FUZZ_CHECK((size_t)(q->data - bbody) == (size_t)(p->data - abody) + shift &&
                       q->len == p->len,
                   "%s: part %zu moved", what, i + 1);
        FUZZ_CHECK(strcmp(p->name, q->name) == 0 && strcmp(p->filename, q->filename) == 0 &&
                       p->has_filename == q->has_filename &&
                       strcmp(p->content_type, q->content_type) == 0,
                   "%s: part %zu headers differ", what, i + 1);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const char *in = (const char *)data;
    const char *nl = memchr(in, '\n', size);
    char *ct = NULL;
    const char *body = in;
    size_t len = size;
    if (nl != NULL) {
        size_t n = (size_t)(nl - in);
        ct = malloc(n + 1);
        FUZZ_CHECK(ct != NULL, "out of memory");
        memcpy(ct, in, n);
        ct[n] = '\0'; /* an embedded NUL ends it early, as in a C string header */
        body = nl + 1;
        len = size - n - 1;
    }

    char *copy = NULL;
    struct multipart *mp = NULL;
    struct err e = {0};
    int rc = parse_copy(ct, "", 0, body, len, "", 0, &copy, &mp, &e);
    FUZZ_DEBUG("%d parts, rc %d %s", mp ? (int)mp->n_parts : 0, rc, e.msg);

    if (len > 0) { /* a preamble line changes nothing */
        char *copy2 = NULL;
        struct multipart *mp2 = NULL;
        struct err e2 = {0};
        int rc2 = parse_copy(ct, "xx\r\n", 4, body, len, "", 0, &copy2, &mp2, &e2);
        FUZZ_CHECK(rc2 == rc, "preamble: status %d, then %d (%s)", rc, rc2, e2.msg);
        FUZZ_CHECK(strcmp(e.msg, e2.msg) == 0, "preamble: \"%s\", then \"%s\"", e.msg, e2.msg);
        if (rc == INF_OK)
            same_parts(mp, copy, mp2, copy2, 4, "preamble");
        free(mp2);
        free(copy2);
    }
    if (rc == INF_OK) { /* after the close delimiter everything is epilogue */
        static const char tail[] =
            "\r\n--x--\r\nContent-Disposition: form-data; name=\"z\"\r\n\r\n";
        char *copy3 = NULL;
        struct multipart *mp3 = NULL;
        struct err e3 = {0};
        int rc3 = parse_copy(ct, "", 0, body, len, tail, sizeof tail - 1, &copy3, &mp3, &e3);
        FUZZ_CHECK(rc3 == INF_OK, "epilogue: %s", e3.msg);
        same_parts(mp, copy, mp3, copy3, 0, "epilogue");
        free(mp3);
        free(copy3);
    }
    free(mp);
    free(copy);
    free(ct);
    return 0;
}
