/*
 * tests/server/test_multipart.c - the multipart/form-data parser (server/multipart.h) on the
 * bodies real clients send (curl -F, the OpenAI Node SDK through undici, Python's httpx), the
 * edge cases of RFC 2046/7578, every refusal, and random mutations of a valid body.
 *
 * Every body is parsed from an exact-size heap copy, not NUL-terminated, so that a read past
 * its end is caught by AddressSanitizer (the ASan build) or valgrind (the valgrind setup).
 */
#include <stdint.h>

#include "server/multipart.h"
#include "tests/test.h"

/* An exact-size heap copy of len bytes of s (no NUL after it). */
static char *dup_exact(const char *s, size_t len)
{
    char *p = malloc(len ? len : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    memcpy(p, s, len);
    return p;
}

/* Parses body (a C string) as sent with ct; returns the status, *mp on success. The body copy
 * is kept in *copy (caller frees) because parts point into it. */
static int parse(const char *ct, const char *body, struct multipart **mp, char **copy,
                 struct err *e)
{
    size_t len = strlen(body);
    *copy = dup_exact(body, len);
    *mp = NULL;
    err_clear(e);
    return multipart_parse(ct, *copy, len, mp, e);
}

/* Parses and expects failure with a message containing needle. */
static void expect_fail(const char *ct, const char *body, const char *needle)
{
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    int rc = parse(ct, body, &mp, &copy, &e);
    CHECK_MSG(rc == INF_EINVAL, "rc %d for a body that should fail with \"%s\"", rc, needle);
    CHECK(mp == NULL);
    CHECK_ERR_HAS(&e, needle);
    free(mp);
    free(copy);
}

static bool part_is(const struct multipart_part *p, const char *content)
{
    return p != NULL && p->len == strlen(content) && memcmp(p->data, content, p->len) == 0;
}

#define CT_CURL "multipart/form-data; boundary=------------------------d74496d66958873e"
#define B_CURL  "--------------------------d74496d66958873e"

/* ------------------------------------------------------------------------------------------
 * Bodies as real clients send them
 * ---------------------------------------------------------------------------------------- */

static void test_curl_body(void)
{
    /* curl -F purpose=fine-tune -F file=@train.jsonl (curl 7.88) */
    const char *body = B_CURL "\r\n"
                              "Content-Disposition: form-data; name=\"purpose\"\r\n"
                              "\r\n"
                              "fine-tune\r\n" B_CURL "\r\n"
                              "Content-Disposition: form-data; name=\"file\"; "
                              "filename=\"train.jsonl\"\r\n"
                              "Content-Type: application/octet-stream\r\n"
                              "\r\n"
                              "{\"input\": [1, 2], \"label\": \"a\"}\n"
                              "{\"input\": [3, 4], \"label\": \"b\"}\n"
                              "\r\n" B_CURL "--\r\n";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(CT_CURL, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        CHECK(mp->n_parts == 2);
        const struct multipart_part *p = multipart_find(mp, "purpose");
        CHECK(part_is(p, "fine-tune"));
        CHECK(p != NULL && !p->has_filename && p->content_type[0] == '\0');
        const struct multipart_part *f = multipart_find(mp, "file");
        CHECK(part_is(f, "{\"input\": [1, 2], \"label\": \"a\"}\n"
                         "{\"input\": [3, 4], \"label\": \"b\"}\n"));
        CHECK(f != NULL && f->has_filename && strcmp(f->filename, "train.jsonl") == 0);
        CHECK(f != NULL && strcmp(f->content_type, "application/octet-stream") == 0);
        CHECK(f != NULL && f->data >= copy && f->data + f->len <= copy + strlen(body));
        CHECK(multipart_count(mp, "file") == 1 && multipart_count(mp, "nope") == 0);
        CHECK(multipart_find(mp, "nope") == NULL);
    }
    free(mp);
    free(copy);
}

static void test_undici_body(void)
{
    /* The Node openai SDK's files.create({file, purpose}) through Node's fetch (undici):
     * boundary "----formdata-undici-0" + 11 digits, file part first, CRLF everywhere,
     * name and filename with '"' as %22. */
    const char *ct = "multipart/form-data; boundary=----formdata-undici-012345678901";
    const char *body = "------formdata-undici-012345678901\r\n"
                       "Content-Disposition: form-data; name=\"file\"; filename=\"my%22data.jsonl\""
                       "\r\n"
                       "Content-Type: application/jsonl\r\n"
                       "\r\n"
                       "{\"input\": \"hi\", \"label\": 1}\n"
                       "\r\n"
                       "------formdata-undici-012345678901\r\n"
                       "Content-Disposition: form-data; name=\"purpose\"\r\n"
                       "\r\n"
                       "fine-tune\r\n"
                       "------formdata-undici-012345678901--\r\n";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        const struct multipart_part *f = multipart_find(mp, "file");
        CHECK(part_is(f, "{\"input\": \"hi\", \"label\": 1}\n"));
        CHECK(f != NULL && strcmp(f->filename, "my%22data.jsonl") == 0); /* kept as sent */
        CHECK(f != NULL && strcmp(f->content_type, "application/jsonl") == 0);
        CHECK(part_is(multipart_find(mp, "purpose"), "fine-tune"));
    }
    free(mp);
    free(copy);
}

/* The bodies the Node openai SDK sent, captured byte for byte: 7.59 (Node's fetch, chunked
 * transfer encoding, file part first) and 4.104 (form-data-encoder, purpose first, a CRLF after
 * the close delimiter). */
static void test_node_sdk_captures(void)
{
    static const struct {
        const char *ct, *body;
    } caps[] = {
        {"multipart/form-data; boundary=openai-sl440ekuli9",
         "--openai-sl440ekuli9\r\nContent-Disposition: form-data; name=\"file\"; "
         "filename=\"train.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n"
         "{\"input\": [1,2], \"label\": \"a\"}\n{\"input\": [3,4], \"label\": \"b\"}\n\r\n"
         "--openai-sl440ekuli9\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
         "fine-tune\r\n--openai-sl440ekuli9--\r\n"},
        {"multipart/form-data; boundary=form-data-boundary-9luujcc276shkzpa",
         "--form-data-boundary-9luujcc276shkzpa\r\nContent-Disposition: form-data; "
         "name=\"purpose\"\r\n\r\nfine-tune\r\n--form-data-boundary-9luujcc276shkzpa\r\n"
         "Content-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n"
         "Content-Type: application/octet-stream\r\n\r\n"
         "{\"input\": [1,2], \"label\": \"a\"}\n{\"input\": [3,4], \"label\": \"b\"}\n\r\n"
         "--form-data-boundary-9luujcc276shkzpa--\r\n\r\n"},
    };
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        struct multipart *mp = NULL;
        char *copy = NULL;
        struct err e = {0};
        CHECK_MSG(parse(caps[i].ct, caps[i].body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
        if (mp != NULL) {
            CHECK(mp->n_parts == 2);
            CHECK(part_is(multipart_find(mp, "purpose"), "fine-tune"));
            const struct multipart_part *f = multipart_find(mp, "file");
            CHECK(part_is(f, "{\"input\": [1,2], \"label\": \"a\"}\n"
                             "{\"input\": [3,4], \"label\": \"b\"}\n"));
            CHECK(f != NULL && strcmp(f->filename, "train.jsonl") == 0);
        }
        free(mp);
        free(copy);
    }
}

static void test_httpx_body_and_case(void)
{
    /* Python's openai SDK (httpx): a hex boundary; here also header names, the media type and
     * parameter names in other cases, which RFC 2045/9110 make case-insensitive. */
    const char *ct = "Multipart/Form-Data;Boundary=\"8b3f6c0f3a2e4d1c9a7b5e3f1d2c4b6a\"";
    const char *body = "--8b3f6c0f3a2e4d1c9a7b5e3f1d2c4b6a\r\n"
                       "content-disposition: FORM-DATA; NAME=\"purpose\"\r\n"
                       "\r\n"
                       "fine-tune\r\n"
                       "--8b3f6c0f3a2e4d1c9a7b5e3f1d2c4b6a\r\n"
                       "CONTENT-DISPOSITION: form-data; name=file; filename=t.jsonl\r\n"
                       "content-type:application/octet-stream  \r\n"
                       "Content-Transfer-Encoding: binary\r\n"
                       "\r\n"
                       "x\r\n"
                       "--8b3f6c0f3a2e4d1c9a7b5e3f1d2c4b6a--";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        const struct multipart_part *f = multipart_find(mp, "file");
        CHECK(part_is(f, "x"));
        CHECK(f != NULL && strcmp(f->filename, "t.jsonl") == 0);
        CHECK(f != NULL && strcmp(f->content_type, "application/octet-stream") == 0);
        CHECK(part_is(multipart_find(mp, "purpose"), "fine-tune"));
    }
    free(mp);
    free(copy);
}

/* ------------------------------------------------------------------------------------------
 * Edge cases that parse
 * ---------------------------------------------------------------------------------------- */

static void test_preamble_epilogue_padding(void)
{
    const char *ct = "multipart/form-data; charset=utf-8; boundary=XyZ";
    const char *body = "This is a preamble.\r\nIt mentions --XyZ inline but not at a line start."
                       "\r\n--XyZ \t\r\n"
                       "Content-Disposition: form-data; name=\"a\"\r\n"
                       "\r\n"
                       "one\r\n"
                       "--XyZ--\r\n"
                       "epilogue: --XyZ\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        CHECK(mp->n_parts == 1);
        CHECK(part_is(multipart_find(mp, "a"), "one"));
        CHECK(multipart_find(mp, "b") == NULL);
    }
    free(mp);
    free(copy);
}

static void test_empty_parts_and_boundary_like_content(void)
{
    const char *ct = "multipart/form-data; boundary=bnd";
    /* An empty file part, an empty value, and content that holds the boundary in ways that are
     * not delimiters: without the CRLF before it, a longer word after it, and a CRLF with only
     * part of the boundary. */
    const char *body = "--bnd\r\n"
                       "Content-Disposition: form-data; name=\"empty\"; filename=\"e.jsonl\"\r\n"
                       "\r\n"
                       "\r\n"
                       "--bnd\r\n"
                       "Content-Disposition: form-data; name=\"v\"\r\n"
                       "\r\n"
                       "\r\n"
                       "--bnd\r\n"
                       "Content-Disposition: form-data; name=\"tricky\"\r\n"
                       "\r\n"
                       "a--bnd\r\n--bndX\r\n--bn\r\n\r\n--bnd-\r\nz\r\n"
                       "--bnd--\r\n";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        CHECK(mp->n_parts == 3);
        const struct multipart_part *f = multipart_find(mp, "empty");
        CHECK(f != NULL && f->len == 0 && f->has_filename);
        CHECK(part_is(multipart_find(mp, "v"), ""));
        CHECK(part_is(multipart_find(mp, "tricky"), "a--bnd\r\n--bndX\r\n--bn\r\n\r\n--bnd-\r\nz"));
    }
    free(mp);
    free(copy);
}

static void test_binary_content_and_crlf_in_content(void)
{
    const char *ct = "multipart/form-data; boundary=q";
    char body[256];
    size_t n = 0;
    const char *head = "--q\r\nContent-Disposition: form-data; name=\"bin\"\r\n\r\n";
    memcpy(body, head, strlen(head));
    n += strlen(head);
    const char content[] = {'\0', '\r', '\n', '\r', '\n', (char)0xff, '-', '-', 'q', '\0'};
    memcpy(body + n, content, sizeof content);
    n += sizeof content;
    memcpy(body + n, "\r\n--q--", 7);
    n += 7;
    char *copy = dup_exact(body, n);
    struct multipart *mp = NULL;
    struct err e = {0};
    CHECK_MSG(multipart_parse(ct, copy, n, &mp, &e) == INF_OK, "%s", e.msg);
    if (mp != NULL) {
        const struct multipart_part *p = multipart_find(mp, "bin");
        CHECK(p != NULL && p->len == sizeof content && memcmp(p->data, content, p->len) == 0);
    }
    free(mp);
    free(copy);
}

static void test_boundaries_quoted_and_special(void)
{
    /* Every bchar, quoted (it holds ':' and '=' and a space), and the longest boundary. */
    const char *b = "a'()+_,-./:=? z";
    char ct[256], body[512];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=\"%s\"", b);
    snprintf(body, sizeof body,
             "--%s\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--%s--\r\n", b, b);
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    CHECK(mp != NULL && part_is(multipart_find(mp, "x"), "v"));
    free(mp);
    free(copy);

    char b70[71];
    memset(b70, 'b', 70);
    b70[70] = '\0';
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", b70);
    snprintf(body, sizeof body,
             "--%s\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\nv\r\n--%s--", b70, b70);
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    free(mp);
    free(copy);

    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%sb", b70); /* 71 */
    expect_fail(ct, body, "1 to 70 characters");
}

static void test_filenames(void)
{
    const char *ct = "multipart/form-data; boundary=b";
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    /* Backslash escapes (older curl): only \" and \\ are unescaped, other backslashes stay. */
    CHECK_MSG(parse(ct,
                    "--b\r\nContent-Disposition: form-data; name=\"file\"; "
                    "filename=\"a\\\"b\\\\c\\d.jsonl\"\r\n\r\nx\r\n--b--",
                    &mp, &copy, &e) == INF_OK,
              "%s", e.msg);
    CHECK(mp != NULL && strcmp(mp->parts[0].filename, "a\"b\\c\\d.jsonl") == 0);
    free(mp);
    free(copy);
    /* RFC 8187 filename* wins over filename, in either order; UTF-8 kept as bytes. */
    CHECK_MSG(parse(ct,
                    "--b\r\nContent-Disposition: form-data; name=\"file\"; "
                    "filename*=UTF-8''na%C3%AFve%20data.jsonl; filename=\"naive.jsonl\"\r\n\r\nx"
                    "\r\n--b--",
                    &mp, &copy, &e) == INF_OK,
              "%s", e.msg);
    CHECK(mp != NULL && strcmp(mp->parts[0].filename, "na\xc3\xafve data.jsonl") == 0);
    free(mp);
    free(copy);
    /* A bad filename* is ignored, filename stays. */
    CHECK_MSG(parse(ct,
                    "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ok.jsonl\"; "
                    "filename*=UTF-8''bad%0Aname\r\n\r\nx\r\n--b--",
                    &mp, &copy, &e) == INF_OK,
              "%s", e.msg);
    CHECK(mp != NULL && strcmp(mp->parts[0].filename, "ok.jsonl") == 0);
    free(mp);
    free(copy);
    /* Raw UTF-8 (browsers, undici) and a filename over the cap, cut. */
    char body[4096], name[1500];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(body, sizeof body,
             "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n\r\nx\r\n"
             "--b\r\nContent-Disposition: form-data; name=\"g\"; filename=\"\xe6\x97\xa5.jsonl\""
             "\r\n\r\ny\r\n--b--",
             name);
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    CHECK(mp != NULL && strlen(mp->parts[0].filename) == MULTIPART_FILENAME_MAX);
    CHECK(mp != NULL && strcmp(mp->parts[1].filename, "\xe6\x97\xa5.jsonl") == 0);
    free(mp);
    free(copy);
}

/* ------------------------------------------------------------------------------------------
 * Refusals
 * ---------------------------------------------------------------------------------------- */

#define CD_A "Content-Disposition: form-data; name=\"a\"\r\n"

static void test_content_type_refusals(void)
{
    const char *body = "--b\r\n" CD_A "\r\nv\r\n--b--";
    expect_fail(NULL, body, "no Content-Type");
    expect_fail("application/json", body, "not multipart/form-data");
    expect_fail("multipart/form-datax; boundary=b", body, "not multipart/form-data");
    expect_fail("multipart/mixed; boundary=b", body, "not multipart/form-data");
    expect_fail("multipart/form-data", body, "no boundary");
    expect_fail("multipart/form-data; charset=utf-8", body, "no boundary");
    expect_fail("multipart/form-data; boundary=", body, "malformed");
    expect_fail("multipart/form-data; boundary=\"\"", body, "1 to 70");
    expect_fail("multipart/form-data; boundary=\"b \"", body, "not ending in a space");
    expect_fail("multipart/form-data; boundary=b\x01", body, "does not allow");
    expect_fail("multipart/form-data; boundary=a{b", body, "does not allow");
    expect_fail("multipart/form-data; boundary=\"unterminated", body, "malformed");
    expect_fail("multipart/form-data; boundary=b; boundary=c", body, "two boundary");
    expect_fail("multipart/form-data; boundary=b junk", body, "malformed");
}

static void test_body_refusals(void)
{
    const char *ct = "multipart/form-data; boundary=b";
    expect_fail(ct, "", "empty");
    expect_fail(ct, "no delimiter at all", "no delimiter line");
    expect_fail(ct, "--c\r\n" CD_A "\r\nv\r\n--c--", "no delimiter line"); /* wrong boundary */
    expect_fail(ct, "--b--\r\n", "no parts");
    /* LF-only bodies are refused with a message that says why. */
    expect_fail(ct, "--b\nContent-Disposition: form-data; name=\"a\"\n\nv\n--b--\n", "CRLF");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; name=\"a\"\n\r\nv\r\n--b--",
                "control byte");
    /* Cut short: inside the headers, inside the content, in the closing delimiter. */
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; name=\"a\"", "inside its headers");
    expect_fail(ct, "--b\r\n" CD_A "\r\nvalue without end", "no closing boundary");
    expect_fail(ct, "--b\r\n" CD_A "\r\nv\r\n--b", "no closing boundary");
    expect_fail(ct, "--b\r\n" CD_A "\r\nv\r\n--b-", "no closing boundary");
    expect_fail(ct, "--b\r\n" CD_A "\r\nv\r\n--b\r\n" CD_A, "inside its headers");
    /* Parts without what they need. */
    expect_fail(ct, "--b\r\n\r\nv\r\n--b--", "no Content-Disposition");
    expect_fail(ct, "--b\r\nContent-Type: text/plain\r\n\r\nv\r\n--b--", "no Content-Disposition");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data\r\n\r\nv\r\n--b--", "has no name");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; name=\"\"\r\n\r\nv\r\n--b--",
                "has no name");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; filename=\"f\"\r\n\r\nv\r\n--b--",
                "has no name");
    expect_fail(ct, "--b\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nv\r\n--b--",
                "must be form-data");
    expect_fail(ct, "--b\r\n" CD_A CD_A "\r\nv\r\n--b--", "two Content-Disposition");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\nv\r\n--b--",
                "malformed Content-Disposition");
    expect_fail(ct, "--b\r\nContent-Disposition: form-data; name=\"a\"; junk\r\n\r\nv\r\n--b--",
                "malformed Content-Disposition");
    expect_fail(ct, "--b\r\nno colon here\r\n\r\nv\r\n--b--", "malformed header line");
    expect_fail(ct, "--b\r\n: empty name\r\n\r\nv\r\n--b--", "malformed header line");
    expect_fail(ct, "--b\r\n" CD_A " folded: yes\r\n\r\nv\r\n--b--", "folded");
    expect_fail(ct, "--b\r\nX-A: a\x7f\r\n" CD_A "\r\nv\r\n--b--", "control byte");
    expect_fail(ct, "--b\r\nX-A: a\rb\r\n" CD_A "\r\nv\r\n--b--", "control byte");

    /* Caps: a name over MULTIPART_NAME_MAX, a header line over MULTIPART_MAX_LINE, more than
     * MULTIPART_MAX_HEADERS lines, more than MULTIPART_MAX_PARTS parts. */
    static char body[64 * 1024];
    char name[MULTIPART_NAME_MAX + 2];
    memset(name, 'n', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    snprintf(body, sizeof body,
             "--b\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\nv\r\n--b--", name);
    expect_fail(ct, body, "name over");
    char longv[MULTIPART_MAX_LINE + 1];
    memset(longv, 'v', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    snprintf(body, sizeof body, "--b\r\nX-Long: %s\r\n" CD_A "\r\nv\r\n--b--", longv);
    expect_fail(ct, body, "header line is over");
    /* ... and one exactly at the cap passes. */
    snprintf(body, sizeof body, "--b\r\nX-Long: %s\r\n" CD_A "\r\nv\r\n--b--",
             longv + strlen("X-Long: "));
    struct multipart *mp = NULL;
    char *copy = NULL;
    struct err e = {0};
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    free(mp);
    free(copy);
    size_t n = (size_t)snprintf(body, sizeof body, "--b\r\n" CD_A);
    for (int i = 0; i < MULTIPART_MAX_HEADERS; i++)
        n += (size_t)snprintf(body + n, sizeof body - n, "X-H%d: v\r\n", i);
    snprintf(body + n, sizeof body - n, "\r\nv\r\n--b--");
    expect_fail(ct, body, "more than 8 header lines");
    n = 0;
    for (int i = 0; i <= MULTIPART_MAX_PARTS; i++)
        n +=
            (size_t)snprintf(body + n, sizeof body - n,
                             "--b\r\nContent-Disposition: form-data; name=\"p%d\"\r\n\r\nv\r\n", i);
    snprintf(body + n, sizeof body - n, "--b--");
    expect_fail(ct, body, "more than 16 parts");
    /* Exactly MULTIPART_MAX_PARTS parts pass. */
    n = 0;
    for (int i = 0; i < MULTIPART_MAX_PARTS; i++)
        n +=
            (size_t)snprintf(body + n, sizeof body - n,
                             "--b\r\nContent-Disposition: form-data; name=\"p%d\"\r\n\r\nv\r\n", i);
    snprintf(body + n, sizeof body - n, "--b--");
    CHECK_MSG(parse(ct, body, &mp, &copy, &e) == INF_OK, "%s", e.msg);
    CHECK(mp != NULL && mp->n_parts == MULTIPART_MAX_PARTS);
    CHECK(mp != NULL && multipart_count(mp, "p15") == 1);
    free(mp);
    free(copy);
}

/* ------------------------------------------------------------------------------------------
 * Truncations and random mutations
 * ---------------------------------------------------------------------------------------- */

static const char fuzz_ct[] = "multipart/form-data; boundary=----formdata-undici-000000000042";
static const char fuzz_body[] =
    "preamble\r\n"
    "------formdata-undici-000000000042\r\n"
    "Content-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n"
    "Content-Type: application/octet-stream\r\n"
    "\r\n"
    "{\"input\": [1, 2, 3], \"label\": \"x\"}\r\n--\r\n"
    "{\"input\": [4, 5, 6], \"label\": \"y\"}\n"
    "\r\n"
    "------formdata-undici-000000000042\r\n"
    "Content-Disposition: form-data; name=\"purpose\"\r\n"
    "\r\n"
    "fine-tune\r\n"
    "------formdata-undici-000000000042--\r\n";

/* Cutting the body anywhere before the end of its closing delimiter fails; after it parses. */
static void test_every_truncation(void)
{
    size_t len = strlen(fuzz_body);
    const char *close = strstr(fuzz_body, "------formdata-undici-000000000042--");
    size_t need = (size_t)(close - fuzz_body) + strlen("------formdata-undici-000000000042--");
    int wrong = 0;
    for (size_t k = 0; k <= len; k++) {
        char *copy = dup_exact(fuzz_body, k);
        struct multipart *mp = NULL;
        struct err e = {0};
        int rc = multipart_parse(fuzz_ct, copy, k, &mp, &e);
        if ((rc == INF_OK) != (k >= need)) {
            wrong++;
            fprintf(stderr, "cut at %zu: rc %d (%s)\n", k, rc, e.msg);
        }
        if (rc == INF_OK)
            CHECK(mp->n_parts == 2);
        free(mp);
        free(copy);
    }
    CHECK(wrong == 0);
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Random edits of a valid body: flips, insertions of the bytes that matter to the parser,
 * deletions, cuts. The parser must never crash, never read past the body (ASan), and every
 * part it returns must lie inside the body with NUL-terminated names. */
static void test_random_mutations(void)
{
    const char *seed_env = getenv("INFERA_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 0x5eed1234abcdULL;
    uint64_t s = seed ? seed : 1;
    int iters = test_quick() ? 3000 : 60000;
    static const char *const inserts[] = {"\r\n",
                                          "\n",
                                          "\r",
                                          "--",
                                          "\"",
                                          ";",
                                          "\\",
                                          "\0",
                                          "------formdata-undici-000000000042",
                                          "\r\n------formdata-undici-000000000042",
                                          "Content-Disposition: form-data; name=",
                                          "filename*=UTF-8''%",
                                          " ",
                                          "\r\n\r\n"};
    size_t base = strlen(fuzz_body);
    char *buf = malloc(base + 1024);
    int ok = 0, bad_part = 0;
    for (int it = 0; it < iters; it++) {
        memcpy(buf, fuzz_body, base);
        size_t len = base;
        int edits = 1 + (int)(rng_next(&s) % 4);
        for (int k = 0; k < edits; k++) {
            size_t at = len ? rng_next(&s) % (len + 1) : 0;
            switch (rng_next(&s) % 4) {
                case 0: /* flip a byte */
                    if (at < len)
                        buf[at] = (char)rng_next(&s);
                    break;
                case 1: { /* insert a token */
                    size_t w = rng_next(&s) % (sizeof inserts / sizeof inserts[0]);
                    size_t tl = w == 7 ? 1 : strlen(inserts[w]);
                    if (len + tl > base + 1000)
                        break;
                    memmove(buf + at + tl, buf + at, len - at);
                    memcpy(buf + at, inserts[w], tl);
                    len += tl;
                    break;
                }
                case 2: { /* delete a run */
                    size_t dl = 1 + rng_next(&s) % 8;
                    if (at + dl > len)
                        dl = len - at;
                    memmove(buf + at, buf + at + dl, len - at - dl);
                    len -= dl;
                    break;
                }
                default: /* cut */
                    if (rng_next(&s) % 4 == 0)
                        len = at;
                    break;
            }
        }
        char *copy = dup_exact(buf, len);
        struct multipart *mp = NULL;
        struct err e = {0};
        int rc = multipart_parse(fuzz_ct, copy, len, &mp, &e);
        if (rc == INF_OK) {
            ok++;
            for (size_t i = 0; i < mp->n_parts; i++) {
                const struct multipart_part *p = &mp->parts[i];
                if (p->data < copy || p->len > len || p->data + p->len > copy + len ||
                    memchr(p->name, '\0', sizeof p->name) == NULL || p->name[0] == '\0' ||
                    memchr(p->filename, '\0', sizeof p->filename) == NULL)
                    bad_part++;
            }
            CHECK(mp->n_parts >= 1 && mp->n_parts <= MULTIPART_MAX_PARTS);
        } else {
            CHECK(rc == INF_EINVAL && e.msg[0] != '\0' && mp == NULL);
        }
        free(mp);
        free(copy);
    }
    free(buf);
    fprintf(stderr, "  %d mutations (seed %llu), %d still parsed\n", iters,
            (unsigned long long)seed, ok);
    CHECK(bad_part == 0);
    CHECK(ok > 0 && ok < iters); /* the mutations do reach both outcomes */
}

int main(void)
{
    RUN(test_curl_body);
    RUN(test_undici_body);
    RUN(test_node_sdk_captures);
    RUN(test_httpx_body_and_case);
    RUN(test_preamble_epilogue_padding);
    RUN(test_empty_parts_and_boundary_like_content);
    RUN(test_binary_content_and_crlf_in_content);
    RUN(test_boundaries_quoted_and_special);
    RUN(test_filenames);
    RUN(test_content_type_refusals);
    RUN(test_body_refusals);
    RUN(test_every_truncation);
    RUN(test_random_mutations);
    return test_finish();
}
