/*
 * tests/server/test_oip_fast.c - the inputs[0].data fast path against jansson.
 *
 * Hand-written cases (shapes, key placement, decoys, whitespace, 80 malformed bodies with the
 * status each must get), token-level agreement with (float)strtod, a differential test over
 * random valid requests (values bit for bit equal to jansson's json_number_value cast to
 * float, rest equal to the body with data replaced by []), a mutation fuzz checked against
 * jansson, and a micro-benchmark that prints (does not assert) µs per call.
 *
 * Responses: oip_response_encode() writes the JSON itself when no output is binary. Its text is
 * compared byte for byte with json_dump_checked(oip_response_build(...)), the jansson path it
 * replaces, on hand-written cases and thousands of random ones (ids and labels with escapes,
 * 2/3/4-byte UTF-8 and invalid UTF-8, every output selection and top_k, floats from the edges
 * of "%.9g": denormals, powers of ten, ties), and both must fail together (non-finite numbers,
 * strings that are not UTF-8). OIP_RESP_ALL_FLOATS=1 runs every finite float through both.
 *
 * Every body is handed over in a heap buffer of exactly its length with no NUL after it, so
 * under AddressSanitizer any read past the end is caught.
 *
 * Seed: OIP_FAST_SEED in the environment (default 1); printed on failure.
 */
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <time.h>

#include "common/json_dump.h"
#include "server/oip.h"
#include "server/oip_fast.h"
#include "tests/test.h"

#define FLT_EDGE 0x1.ffffffp+127 /* |double| from which (float) is infinite */
#define BIG      ((size_t)1 << 20)

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

struct rng {
    uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0. */
static size_t rng_below(struct rng *r, size_t n)
{
    return (size_t)(rng_next(r) % n);
}

static uint64_t test_seed(void)
{
    const char *s = getenv("OIP_FAST_SEED");
    return s != NULL ? strtoull(s, NULL, 10) : 1;
}

/* A growable string (test-only: aborts on out of memory). */
struct sb {
    char *s;
    size_t len, cap;
};

static void sb_put(struct sb *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        if (b->s == NULL)
            abort();
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_puts(struct sb *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp)
        abort();
    sb_put(b, tmp, (size_t)n);
}

/* Prints n bytes of s as a C string literal. */
static void print_escaped(const char *s, size_t n)
{
    fputc('"', stderr);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(stderr, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x\"\"", c);
    }
    fputs("\"\n", stderr);
}

/* One call's results. Outputs start as sentinels so "not written" can be checked. */
struct res {
    int rc;
    float *vals;
    size_t n;
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank;
    char *rest;
    size_t rest_len;
    struct err e;
};

#define SENTINEL_PTR ((void *)(uintptr_t)0x5a5a5a5a)

/* Runs the fast path on a copy of body in a buffer of exactly len bytes. */
static void run_len(const char *body, size_t len, size_t max, struct res *r)
{
    char *copy = malloc(len ? len : 1);
    if (copy == NULL)
        abort();
    memcpy(copy, body, len);
    r->vals = SENTINEL_PTR;
    r->rest = SENTINEL_PTR;
    r->n = 777;
    r->rank = 77;
    r->rest_len = 777;
    for (int i = 0; i < OIP_FAST_MAX_RANK; i++)
        r->dims[i] = -7;
    err_clear(&r->e);
    r->rc = oip_fast_extract_data(copy, len, max, &r->vals, &r->n, r->dims, &r->rank, &r->rest,
                                  &r->rest_len, &r->e);
    free(copy);
}

static void run(const char *body, size_t max, struct res *r)
{
    run_len(body, strlen(body), max, r);
}

/* True if no output was written. */
static bool untouched(const struct res *r)
{
    bool dims_same = true;
    for (int i = 0; i < OIP_FAST_MAX_RANK; i++)
        dims_same = dims_same && r->dims[i] == -7;
    return r->vals == SENTINEL_PTR && r->rest == SENTINEL_PTR && r->n == 777 && r->rank == 77 &&
           r->rest_len == 777 && dims_same;
}

static void res_free(struct res *r)
{
    if (r->rc == INF_OK) {
        free(r->vals);
        free(r->rest);
    }
    r->vals = NULL;
    r->rest = NULL;
}

static bool same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* Checks an INF_OK result against expected values, dims and rest. */
static void check_ok(const char *body, const struct res *r, const float *want, size_t n,
                     const int64_t *dims, int rank, const char *rest)
{
    CHECK_MSG(r->rc == INF_OK, "%s: rc %d (%s)", body, r->rc, r->e.msg);
    if (r->rc != INF_OK)
        return;
    CHECK_MSG(r->n == n, "%s: n %zu, want %zu", body, r->n, n);
    CHECK_MSG(r->rank == rank, "%s: rank %d, want %d", body, r->rank, rank);
    for (int i = 0; i < rank && i < r->rank; i++)
        CHECK_MSG(r->dims[i] == dims[i], "%s: dims[%d] %lld", body, i, (long long)r->dims[i]);
    for (size_t i = 0; i < n && i < r->n; i++)
        CHECK_MSG(same_bits(r->vals[i], want[i]), "%s: [%zu] %.9g, want %.9g", body, i, r->vals[i],
                  want[i]);
    if (rest != NULL)
        CHECK_MSG(r->rest_len == strlen(rest) && memcmp(r->rest, rest, r->rest_len) == 0 &&
                      r->rest[r->rest_len] == '\0',
                  "%s: rest \"%.*s\", want \"%s\"", body, (int)r->rest_len, r->rest, rest);
}

/* ------------------------------------------------------------------------------------------
 * jansson's view of a body
 * ---------------------------------------------------------------------------------------- */

enum flat { FLAT_OK, FLAT_RAGGED, FLAT_NONFINITE, FLAT_OTHER };

/* inputs[0].data flattened by jansson the way the slow path reads it. */
struct jdata {
    enum flat status;
    float *vals;
    size_t n;
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank;
};

static void jdata_walk(struct jdata *j, const json_t *v, int depth)
{
    if (j->status != FLAT_OK)
        return;
    if (json_is_array(v)) {
        if (depth >= j->rank) {
            j->status = FLAT_RAGGED;
            return;
        }
        if ((int64_t)json_array_size(v) != j->dims[depth]) {
            j->status = json_array_size(v) == 0 ? FLAT_OTHER : FLAT_RAGGED;
            return;
        }
        for (size_t i = 0; i < json_array_size(v); i++)
            jdata_walk(j, json_array_get(v, i), depth + 1);
        return;
    }
    if (!json_is_number(v)) {
        j->status = FLAT_OTHER;
        return;
    }
    if (depth != j->rank) {
        j->status = FLAT_RAGGED;
        return;
    }
    double d = json_number_value(v);
    if (!(fabs(d) < FLT_EDGE)) {
        j->status = FLAT_NONFINITE;
        return;
    }
    j->vals = realloc(j->vals, (j->n + 1) * sizeof *j->vals);
    if (j->vals == NULL)
        abort();
    j->vals[j->n++] = (float)d;
}

/* Returns inputs[0] of doc if the fast path's structure is there (data may be anything). */
static json_t *jinput0(json_t *doc)
{
    json_t *inputs = json_object_get(doc, "inputs");
    json_t *in = json_array_get(inputs, 0);
    return json_is_object(in) && json_object_get(in, "data") != NULL ? in : NULL;
}

/* Flattens data; j->status says whether the fast path must accept it. Free j->vals. */
static void jdata_read(const json_t *data, struct jdata *j)
{
    memset(j, 0, sizeof *j);
    const json_t *v = data;
    if (!json_is_array(v)) {
        j->status = FLAT_OTHER;
        return;
    }
    while (json_is_array(v)) {
        if (json_array_size(v) == 0 || j->rank == OIP_FAST_MAX_RANK) {
            j->status = FLAT_OTHER;
            return;
        }
        j->dims[j->rank++] = (int64_t)json_array_size(v);
        v = json_array_get(v, 0);
    }
    jdata_walk(j, data, 0);
}

/* ------------------------------------------------------------------------------------------
 * Hand-written cases
 * ---------------------------------------------------------------------------------------- */

static void test_examples(void)
{
    struct res r;
    const char *b1 = "{\"inputs\":[{\"name\":\"x\",\"shape\":[6],\"datatype\":\"FP32\","
                     "\"data\":[1,2,3,4,5,6]}]}";
    run(b1, BIG, &r);
    check_ok(b1, &r, (const float[]){1, 2, 3, 4, 5, 6}, 6, (const int64_t[]){6}, 1,
             "{\"inputs\":[{\"name\":\"x\",\"shape\":[6],\"datatype\":\"FP32\",\"data\":[]}]}");
    res_free(&r);

    const char *b2 = "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,3],\"datatype\":\"FP32\","
                     "\"data\":[[1,2,3],[4,5,6]]}]}";
    run(b2, BIG, &r);
    check_ok(b2, &r, (const float[]){1, 2, 3, 4, 5, 6}, 6, (const int64_t[]){2, 3}, 2,
             "{\"inputs\":[{\"name\":\"x\",\"shape\":[2,3],\"datatype\":\"FP32\",\"data\":[]}]}");
    res_free(&r);

    /* Numbers of every form. */
    const char *b3 = "{\"inputs\":[{\"data\":[0.5,-2.25e1,1E-3,0,-0.0,7e+2,123456789]}]}";
    run(b3, BIG, &r);
    check_ok(b3, &r, (const float[]){0.5f, -22.5f, 1e-3f, 0.0f, -0.0f, 700.0f, 123456789.0f}, 7,
             (const int64_t[]){7}, 1, "{\"inputs\":[{\"data\":[]}]}");
    res_free(&r);

    /* A single element, and exactly max_elements. */
    run("{\"inputs\":[{\"data\":[[[42]]]}]}", 1, &r);
    check_ok("[[[42]]]", &r, (const float[]){42}, 1, (const int64_t[]){1, 1, 1}, 3,
             "{\"inputs\":[{\"data\":[]}]}");
    res_free(&r);

    /* e may be NULL. */
    float *v;
    size_t n, rl;
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank;
    char *rest;
    const char *b4 = "{\"inputs\":[{\"data\":[1,x]}]}";
    CHECK(oip_fast_extract_data(b4, strlen(b4), BIG, &v, &n, dims, &rank, &rest, &rl, NULL) ==
          INF_EINVAL);
    CHECK(oip_fast_extract_data(NULL, 0, BIG, &v, &n, dims, &rank, &rest, &rl, NULL) ==
          INF_ENOTFOUND);
}

static void test_nested_4d(void)
{
    struct sb b = {0};
    float want[2 * 3 * 2 * 4];
    size_t k = 0;
    sb_puts(&b, "{\"inputs\":[{\"shape\":[2,3,2,4],\"data\":[");
    for (int i = 0; i < 2; i++) {
        sb_puts(&b, i ? ",[" : "[");
        for (int j = 0; j < 3; j++) {
            sb_puts(&b, j ? ",[" : "[");
            for (int l = 0; l < 2; l++) {
                sb_puts(&b, l ? ",[" : "[");
                for (int m = 0; m < 4; m++) {
                    want[k] = (float)k * 0.25f - 3.0f;
                    sb_printf(&b, "%s%.9g", m ? "," : "", (double)want[k]);
                    k++;
                }
                sb_puts(&b, "]");
            }
            sb_puts(&b, "]");
        }
        sb_puts(&b, "]");
    }
    sb_puts(&b, "],\"datatype\":\"FP32\"}]}");
    struct res r;
    run(b.s, BIG, &r);
    check_ok(b.s, &r, want, k, (const int64_t[]){2, 3, 2, 4}, 4,
             "{\"inputs\":[{\"shape\":[2,3,2,4],\"data\":[],\"datatype\":\"FP32\"}]}");
    res_free(&r);
    free(b.s);
}

struct found_case {
    const char *body;
    float first; /* the first value of the data found */
    const char *rest;
};

static void test_placement_and_decoys(void)
{
    static const struct found_case cases[] = {
        /* data before/after other keys; inputs before/after other keys */
        {"{\"inputs\":[{\"data\":[1],\"name\":\"a\",\"shape\":[1]}],\"id\":\"x\"}", 1,
         "{\"inputs\":[{\"data\":[],\"name\":\"a\",\"shape\":[1]}],\"id\":\"x\"}"},
        {"{\"id\":\"x\",\"outputs\":[{\"name\":\"label\"}],\"inputs\":[{\"name\":\"a\","
         "\"shape\":[1],\"datatype\":\"FP32\",\"data\":[2]}]}",
         2,
         "{\"id\":\"x\",\"outputs\":[{\"name\":\"label\"}],\"inputs\":[{\"name\":\"a\","
         "\"shape\":[1],\"datatype\":\"FP32\",\"data\":[]}]}"},
        /* only inputs[0] counts */
        {"{\"inputs\":[{\"data\":[3]},{\"data\":[9,9]},{\"data\":\"s\"}]}", 3,
         "{\"inputs\":[{\"data\":[]},{\"data\":[9,9]},{\"data\":\"s\"}]}"},
        /* "inputs" inside a string value */
        {"{\"id\":\"{\\\"inputs\\\":[{\\\"data\\\":[1]}]}\",\"inputs\":[{\"data\":[4]}]}", 4,
         "{\"id\":\"{\\\"inputs\\\":[{\\\"data\\\":[1]}]}\",\"inputs\":[{\"data\":[]}]}"},
        /* escaped quotes: the id from the brief */
        {"{\"id\": \"a\\\"inputs\\\":[{\\\"data\\\":[1]}]\", \"inputs\": [{\"data\": [5]}]}", 5,
         "{\"id\": \"a\\\"inputs\\\":[{\\\"data\\\":[1]}]\", \"inputs\": [{\"data\": []}]}"},
        /* a string ending in an escaped backslash: the quote after it closes it */
        {"{\"id\":\"a\\\\\",\"inputs\":[{\"data\":[6]}]}", 6,
         "{\"id\":\"a\\\\\",\"inputs\":[{\"data\":[]}]}"},
        {"{\"id\":\"\\\\\\\"inputs\\\\\",\"inputs\":[{\"data\":[6.5]}]}", 6.5f,
         "{\"id\":\"\\\\\\\"inputs\\\\\",\"inputs\":[{\"data\":[]}]}"},
        /* "inputs" and "data" inside "parameters" and other nested objects */
        {"{\"parameters\":{\"inputs\":[{\"data\":[1]}]},\"inputs\":[{\"data\":[7]}]}", 7,
         "{\"parameters\":{\"inputs\":[{\"data\":[1]}]},\"inputs\":[{\"data\":[]}]}"},
        {"{\"inputs\":[{\"parameters\":{\"data\":[1]},\"x\":[{\"data\":[2]}],\"data\":[8]}]}", 8,
         "{\"inputs\":[{\"parameters\":{\"data\":[1]},\"x\":[{\"data\":[2]}],\"data\":[]}]}"},
        {"{\"x\":[\"inputs\",{\"inputs\":1}],\"inputs\":[{\"d\":\"data\",\"data\":[9]}]}", 9,
         "{\"x\":[\"inputs\",{\"inputs\":1}],\"inputs\":[{\"d\":\"data\",\"data\":[]}]}"},
        /* keys spelled with escapes are the same keys (as for jansson) */
        {"{\"\\u0069nputs\":[{\"d\\u0061ta\":[10]}]}", 10,
         "{\"\\u0069nputs\":[{\"d\\u0061ta\":[]}]}"},
        /* near misses are other keys */
        {"{\"input\":[{\"data\":[1]}],\"Inputs\":1,\"inputs \":2,\"inputs\":[{\"Data\":[1],"
         "\"dat\":[1],\"data\":[11]}]}",
         11,
         "{\"input\":[{\"data\":[1]}],\"Inputs\":1,\"inputs \":2,\"inputs\":[{\"Data\":[1],"
         "\"dat\":[1],\"data\":[]}]}"},
        /* unicode, escapes and literals around */
        {"{\"id\":\"\xc3\xa9\\u00e9\\ud83d\\ude00\\n\\t\\/\",\"p\":[true,false,null,-1.5e-3,"
         "{}],\"inputs\":[{\"data\":[12]}]}",
         12,
         "{\"id\":\"\xc3\xa9\\u00e9\\ud83d\\ude00\\n\\t\\/\",\"p\":[true,false,null,-1.5e-3,"
         "{}],\"inputs\":[{\"data\":[]}]}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct res r;
        run(cases[i].body, BIG, &r);
        CHECK_MSG(r.rc == INF_OK && r.n >= 1 && same_bits(r.vals[0], cases[i].first),
                  "case %zu: %s: rc %d %s", i, cases[i].body, r.rc, r.e.msg);
        if (r.rc == INF_OK)
            CHECK_MSG(strcmp(r.rest, cases[i].rest) == 0 && r.rest_len == strlen(r.rest),
                      "case %zu: rest %s", i, r.rest);
        /* jansson agrees the body is valid */
        json_t *doc = json_loads(cases[i].body, JSON_REJECT_DUPLICATES, NULL);
        CHECK_MSG(doc != NULL, "case %zu: jansson rejects it", i);
        json_decref(doc);
        res_free(&r);
    }
}

static void test_whitespace(void)
{
    const char *body = " \r\n\t{ \"id\" :\t\"a b\" ,\n\"inputs\"\r:\n[ \t{ \"data\" \n:\r\n [ [ 1 ,"
                       "\t2 ] ,\n\r[ 3 , 4\t]\t]\r\n, \"name\" : \"x\" } \n]\t } \r\n\t ";
    struct res r;
    run(body, BIG, &r);
    check_ok(body, &r, (const float[]){1, 2, 3, 4}, 4, (const int64_t[]){2, 2}, 2,
             " \r\n\t{ \"id\" :\t\"a b\" ,\n\"inputs\"\r:\n[ \t{ \"data\" \n:\r\n []\r\n, "
             "\"name\" : \"x\" } \n]\t } \r\n\t ");
    res_free(&r);
}

struct bad_case {
    const char *data; /* put into a request as inputs[0].data, or NULL */
    const char *body; /* the whole body (when data is NULL) */
    size_t max;       /* max_elements, 0 for BIG */
    int rc;
    const char *msg; /* a substring of the message, or NULL */
};

static const struct bad_case bad_cases[] = {
    /* malformed numbers: INF_EINVAL naming the element */
    {"[+1]", NULL, 0, INF_EINVAL, "inputs[0].data[0]: invalid number \"+1\""},
    {"[1,2,3,012]", NULL, 0, INF_EINVAL, "inputs[0].data[3]: invalid number \"012\""},
    {"[.5]", NULL, 0, INF_EINVAL, "invalid number \".5\""},
    {"[5.]", NULL, 0, INF_EINVAL, "invalid number \"5.\""},
    {"[NaN]", NULL, 0, INF_EINVAL, "invalid number \"NaN\""},
    {"[nan]", NULL, 0, INF_EINVAL, "invalid number \"nan\""},
    {"[Infinity]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[-Infinity]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[inf]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[0x10]", NULL, 0, INF_EINVAL, "invalid number \"0x10\""},
    {"[1.5x]", NULL, 0, INF_EINVAL, "invalid number \"1.5x\""},
    {"[1e]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1e+]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1E-]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[-]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[--1]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[-.5]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1.2.3]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1e5.5]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1e1x]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[0.e1]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[0.5e+-1]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[00]", NULL, 0, INF_EINVAL, "invalid number \"00\""},
    {"[-01]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1_000]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1e+1e]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[tru]", NULL, 0, INF_EINVAL, "invalid number \"tru\""},
    {"[nul]", NULL, 0, INF_EINVAL, "invalid number"},
    {"[1,2,\xef\xbc\x91]", NULL, 0, INF_EINVAL, "inputs[0].data[2]: unexpected byte 0xef"},
    {"[1,'2']", NULL, 0, INF_EINVAL, "inputs[0].data[1]: invalid number \"'2'\""},
    /* values that are no finite FP32 value, integers jansson rejects */
    {"[0,1e39]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: 1e39 is not a finite FP32 value"},
    {"[-1e39]", NULL, 0, INF_EINVAL, "not a finite FP32 value"},
    {"[3.5e38]", NULL, 0, INF_EINVAL, "not a finite FP32 value"},
    {"[3.4028235677973366e38]", NULL, 0, INF_EINVAL, "not a finite FP32 value"},
    {"[1e400]", NULL, 0, INF_EINVAL, "not a finite FP32 value"},
    {"[9223372036854775808]", NULL, 0, INF_EINVAL, "integer 9223372036854775808 is out of"},
    {"[-9223372036854775809]", NULL, 0, INF_EINVAL, "out of range"},
    {"[123456789012345678901234567890]", NULL, 0, INF_EINVAL, "out of range"},
    /* syntax inside the data array */
    {"[1 2]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: expected ',' or ']'"},
    {"[1,]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: expected a number after ','"},
    {"[,1]", NULL, 0, INF_EINVAL, "inputs[0].data[0]: unexpected byte 0x2c"},
    {"[1,,2]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: unexpected byte 0x2c"},
    {"[ 1 ; 2 ]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: expected ',' or ']'"},
    {"[1,;]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: invalid number \";\""},
    {"[1}]", NULL, 0, INF_EINVAL, "expected ',' or ']'"},
    {"[[1,2]:[3,4]]", NULL, 0, INF_EINVAL, "expected ',' or ']'"},
    {NULL, "{\"inputs\":[{\"data\":[1", 0, INF_EINVAL, "inputs[0].data[1]: unterminated array"},
    {NULL, "{\"inputs\":[{\"data\":[1,", 0, INF_EINVAL, "unterminated array"},
    {NULL, "{\"inputs\":[{\"data\":[[1,2],[", 0, INF_EINVAL, "unterminated array"},
    {NULL, "{\"inputs\":[{\"data\":[1.", 0, INF_EINVAL, "invalid number \"1.\""},
    {NULL, "{\"inputs\":[{\"data\":[-", 0, INF_EINVAL, "invalid number \"-\""},
    /* ragged nesting */
    {"[[1,2],[3]]", NULL, 0, INF_EINVAL, "inputs[0].data[3]: ragged array"},
    {"[[1,2],[3,4,5]]", NULL, 0, INF_EINVAL, "inputs[0].data[4]: ragged array"},
    {"[[1,2],3]", NULL, 0, INF_EINVAL, "inputs[0].data[2]: ragged array"},
    {"[1,[2]]", NULL, 0, INF_EINVAL, "inputs[0].data[1]: ragged array"},
    {"[[[1]],[2]]", NULL, 0, INF_EINVAL, "ragged array"},
    {"[[1],[[2]]]", NULL, 0, INF_EINVAL, "ragged array"},
    {"[[1,2],[3,4],[5,6,7]]", NULL, 0, INF_EINVAL, "ragged array"},
    {"[[[1,2],[3,4]],[[5,6]]]", NULL, 0, INF_EINVAL, "inputs[0].data[6]: ragged array: 1 "},
    {"[[[1],[2]],[[3],[4],[5]]]", NULL, 0, INF_EINVAL, "inputs[0].data[4]: ragged array: more"},
    /* the element limit */
    {"[1,2,3,4]", NULL, 3, INF_ELIMIT, "inputs[0].data: more than 3 elements"},
    {"[[1],[2]]", NULL, 1, INF_ELIMIT, "more than 1 elements"},
    /* data the fast path does not handle: INF_ENOTFOUND, the slow path explains */
    {"[\"a\",\"b\"]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[[\"a\"],[\"b\"]]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[true,false]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[1,null]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[1,{}]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[[1],[]]", NULL, 0, INF_ENOTFOUND, NULL},
    {"[[[[[[[[[1]]]]]]]]]", NULL, 0, INF_ENOTFOUND, NULL},
    {"\"abc\"", NULL, 0, INF_ENOTFOUND, NULL},
    {"{\"a\":[1]}", NULL, 0, INF_ENOTFOUND, NULL},
    {"null", NULL, 0, INF_ENOTFOUND, NULL},
    /* documents without the structure, or broken outside the data array */
    {NULL, "", 0, INF_ENOTFOUND, NULL},
    {NULL, "   ", 0, INF_ENOTFOUND, NULL},
    {NULL, "[]", 0, INF_ENOTFOUND, NULL},
    {NULL, "[{\"inputs\":[{\"data\":[1]}]}]", 0, INF_ENOTFOUND, NULL},
    {NULL, "{}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":{}}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[1]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"name\":\"x\"}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"name\":\"x\"},{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"p\":{\"data\":[1]}}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"parameters\":{\"inputs\":[{\"data\":[1]}]}}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":\"\\\"inputs\\\":[{\\\"data\\\":[1]}]\"}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}],\"inputs\":[{\"data\":[2]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}],\"\\u0069nputs\":1}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1],\"data\":[2]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":\"x\",\"data\":[2]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1],\"d\\u0061ta\":[2]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}]} x", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}]}{}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}]", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]},]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1],}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}],}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{,\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\" [{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{inputs:[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{'inputs':[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":01,\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":tru,\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":\"abc,\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":\"a\\x\",\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":\"a\\u12\",\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":\"a\tb\",\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"id\":[1,2,\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}],\"x\":[1}]", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}],\"x\":1.}", 0, INF_ENOTFOUND, NULL},
    {NULL, "\xef\xbb\xbf{\"inputs\":[{\"data\":[1]}]}", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":[1]}]}\v", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\"", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inp", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\"", 0, INF_ENOTFOUND, NULL},
    {NULL, "{\"inputs\":[{\"data\":", 0, INF_ENOTFOUND, NULL},
};

static void test_malformed(void)
{
    size_t counts[3] = {0};
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        struct sb b = {0};
        if (c->data != NULL)
            sb_printf(&b, "{\"id\":\"x\",\"inputs\":[{\"name\":\"in\",\"data\":%s,\"shape\":[1]}]}",
                      c->data);
        else
            sb_puts(&b, c->body);
        struct res r;
        run_len(b.s != NULL ? b.s : "", b.len, c->max ? c->max : BIG, &r);
        CHECK_MSG(r.rc == c->rc, "case %zu: %s: rc %d, want %d (%s)", i, b.s, r.rc, c->rc, r.e.msg);
        CHECK_MSG(r.rc == INF_OK || untouched(&r), "case %zu: outputs written", i);
        if (c->rc == INF_ENOTFOUND)
            CHECK_MSG(r.e.status == 0, "case %zu: e set: %s", i, r.e.msg);
        else
            CHECK_MSG(r.e.status == c->rc, "case %zu: e.status %d", i, r.e.status);
        if (c->msg != NULL)
            CHECK_MSG(strstr(r.e.msg, c->msg) != NULL, "case %zu: message \"%s\" lacks \"%s\"", i,
                      r.e.msg, c->msg);
        counts[c->rc == INF_EINVAL ? 0 : c->rc == INF_ENOTFOUND ? 1 : 2]++;
        res_free(&r);
        free(b.s);
    }
    fprintf(stderr, "     malformed: %zu EINVAL, %zu ENOTFOUND, %zu ELIMIT cases\n", counts[0],
            counts[1], counts[2]);
}

/* ------------------------------------------------------------------------------------------
 * Tokens: (float)strtod bit for bit
 * ---------------------------------------------------------------------------------------- */

/* The value the fast path must give for token: jansson's (float)json_number_value. */
static void check_token(const char *tok)
{
    char body[2048];
    int len = snprintf(body, sizeof body, "{\"inputs\":[{\"data\":[%s]}]}", tok);
    if (len < 0 || (size_t)len >= sizeof body)
        abort();
    double d = strtod(tok, NULL);
    if (strcmp(tok, "-0") == 0)
        d = 0.0; /* jansson's integer 0 */
    /* jansson reads integer tokens with strtoll and rejects ERANGE */
    errno = 0;
    (void)strtoll(tok, NULL, 10);
    bool int_range = strpbrk(tok, ".eE") != NULL || errno != ERANGE;
    struct res r;
    run_len(body, (size_t)len, BIG, &r);
    if (!int_range) {
        CHECK_MSG(r.rc == INF_EINVAL, "%s: rc %d", tok, r.rc);
    } else if (!(fabs(d) < FLT_EDGE)) {
        CHECK_MSG(r.rc == INF_EINVAL && strstr(r.e.msg, "not a finite FP32") != NULL,
                  "%s: rc %d %s", tok, r.rc, r.e.msg);
    } else {
        CHECK_MSG(r.rc == INF_OK && r.n == 1 && same_bits(r.vals[0], (float)d),
                  "%s: rc %d, got %a, want %a", tok, r.rc, r.rc == INF_OK ? r.vals[0] : 0.0,
                  (double)(float)d);
    }
    /* and jansson agrees (or rejects the token too) */
    json_t *doc = json_loadb(body, (size_t)len, 0, NULL);
    if (r.rc == INF_OK) {
        json_t *v = json_array_get(
            json_object_get(json_array_get(json_object_get(doc, "inputs"), 0), "data"), 0);
        CHECK_MSG(v != NULL && same_bits((float)json_number_value(v), r.vals[0]),
                  "%s: jansson disagrees", tok);
    } else if (!int_range) {
        CHECK_MSG(doc == NULL, "%s: jansson accepts it", tok);
    }
    json_decref(doc);
    res_free(&r);
}

static float random_float_bits(struct rng *g)
{
    for (;;) {
        uint32_t bits = (uint32_t)rng_next(g);
        float f;
        memcpy(&f, &bits, sizeof f);
        if (isfinite(f))
            return f;
    }
}

/* A random valid number token (finite as FP32 unless wild). */
static void random_token(struct rng *g, char *out, size_t cap, bool wild)
{
    float f =
        rng_below(g, 2) ? random_float_bits(g) : (float)((double)rng_next(g) / 0x1p64 * 20 - 10);
    switch (rng_below(g, wild ? 12 : 10)) {
        case 0:
            snprintf(out, cap, "%.9g", (double)f);
            break;
        case 1:
            snprintf(out, cap, "%g", (double)f);
            break;
        case 2:
            snprintf(out, cap, "%e", (double)f);
            break;
        case 3: { /* integers of every magnitude */
            int bits = (int)rng_below(g, 64);
            int64_t v = (int64_t)(rng_next(g) & (bits == 63 ? INT64_MAX : ((1ULL << bits) - 1)));
            snprintf(out, cap, "%" PRId64, rng_below(g, 2) ? -v : v);
            break;
        }
        case 4: {
            static const char *const zeros[] = {"-0",   "0",     "-0.0",  "0.0",        "-0e0",
                                                "0E+5", "-0e-5", "0e999", "-0.000e-999"};
            snprintf(out, cap, "%s", zeros[rng_below(g, sizeof zeros / sizeof zeros[0])]);
            break;
        }
        case 5: /* a double within float range, all its digits */
            snprintf(out, cap, "%.17g",
                     (double)f * (1 + ((double)rng_next(g) / 0x1p64 - 0.5) * 1e-6));
            break;
        case 6: { /* long mantissas: the strtod path */
            int len = 20 + (int)rng_below(g, 60);
            size_t k = 0;
            if (rng_below(g, 2))
                out[k++] = '-';
            out[k++] = (char)('1' + rng_below(g, 9));
            out[k++] = '.';
            for (int i = 0; i < len; i++)
                out[k++] = (char)('0' + rng_below(g, 10));
            snprintf(out + k, cap - k, "%s%d", rng_below(g, 2) ? "E" : "e",
                     (int)rng_below(g, 70) - 40);
            break;
        }
        case 7: /* leading fraction zeros */
            snprintf(out, cap, "%.*f", (int)rng_below(g, 25), (double)f * 1e-6);
            break;
        case 8: { /* exponent forms */
            snprintf(out, cap, "%d.%dE%s%02d", (int)rng_below(g, 1000), (int)rng_below(g, 1000),
                     rng_below(g, 2) ? "+" : "-", (int)rng_below(g, 36));
            break;
        }
        case 9: { /* near a float midpoint: (float)strtod rounds twice, like jansson */
            float a = fabsf(f), b = nextafterf(a, INFINITY);
            double mid = ((double)a + (double)b) / 2;
            if (!isfinite(b) || a == 0) {
                snprintf(out, cap, "%.9g", (double)a);
                break;
            }
            int n = snprintf(out, cap, "%.60e", mid);
            /* nudge the decimal a hair above or below the midpoint */
            char *e = strchr(out, 'e');
            if (n > 0 && e != NULL && (size_t)n + 8 < cap) {
                char expo[16];
                snprintf(expo, sizeof expo, "%s", e);
                snprintf(e, cap - (size_t)(e - out), "%s%s", rng_below(g, 2) ? "0001" : "", expo);
            }
            break;
        }
        case 10: /* wild: overflow, underflow, huge exponents */
            snprintf(out, cap, "%de%d", (int)rng_below(g, 100), (int)rng_below(g, 1000) - 500);
            break;
        default:
            snprintf(out, cap, "1e%s%" PRIu64, rng_below(g, 2) ? "-" : "", rng_next(g));
            break;
    }
}

static void test_tokens(void)
{
    static const char *const edge[] = {
        "0",
        "-0",
        "0.0",
        "-0.0",
        "-0e0",
        "1",
        "-1",
        "0.1",
        "0.5",
        "1e22",
        "1e23",
        "1e-22",
        "1e-23",
        "123456789",
        "16777217",
        "9007199254740993",
        "9007199254740993.0",
        "123456789012345678e-3",
        "0.1000000000000000055511151231257827021181583404541015625",
        "3.4028234663852886e38",
        "3.40282347e+38",
        "-3.40282347e+38",
        "3.4028235e38",
        "3.4028235677973362e38",
        "3.4028235677973366e38",
        "3.4028235677973370e38",
        "340282346638528859811704183484516925440",
        "1.17549435e-38",
        "1.4e-45",
        "7e-46",
        "7.1e-46",
        "1e-50",
        "1e-400",
        "-1e-400",
        "1e400",
        "1e39",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        "1e0005",
        "1E+00",
        "1e-0",
        "2.5E-3",
        "100000000000000000000000",
        "1.50000000000000000000000000000",
        "0.000000000000000000000000000001",
        "1.00000005960464477539062500001",
        "1.00000005960464477539062499999",
        "1.000000059604644775390625",
        "1e99999999999999999999",
        "1e-99999999999999999999",
        "0e99999999999999999999",
        "4.9406564584124654e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
    };
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        check_token(edge[i]);

    /* (float)strtod rounds twice; the fast path must do the same, not what strtof does. */
    const char *twice = "1.00000005960464477539062500001";
    CHECK(strtof(twice, NULL) != (float)strtod(twice, NULL));
    struct res r;
    run("{\"inputs\":[{\"data\":[1.00000005960464477539062500001]}]}", BIG, &r);
    CHECK(r.rc == INF_OK && r.vals[0] == 1.0f);
    res_free(&r);
    /* The integer -0 is jansson's integer 0; -0.0 keeps its sign. */
    run("{\"inputs\":[{\"data\":[-0,-0.0,-0e1]}]}", BIG, &r);
    CHECK(r.rc == INF_OK && !signbit(r.vals[0]) && signbit(r.vals[1]) && signbit(r.vals[2]));
    res_free(&r);

    struct rng g = {test_seed() * 7919};
    char tok[256];
    for (int i = 0; i < 50000; i++) {
        random_token(&g, tok, sizeof tok, true);
        check_token(tok);
    }
}

/* ------------------------------------------------------------------------------------------
 * Random requests
 * ---------------------------------------------------------------------------------------- */

static void ws(struct rng *g, struct sb *b)
{
    static const char chars[] = " \t\n\r";
    if (rng_below(g, 2))
        return;
    for (size_t n = 1 + rng_below(g, 3); n > 0; n--)
        sb_put(b, &chars[rng_below(g, 4)], 1);
}

static void gen_string(struct rng *g, struct sb *b)
{
    static const char *const pieces[] = {
        "abc",
        " ",
        "inputs",
        "data",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b\\f\\n\\r\\t",
        "\\u00e9",
        "\\u20AC",
        "\\ud83d\\ude00",
        "\xc3\xa9",
        "\xe2\x82\xac",
        "\\\"inputs\\\":[{\\\"data\\\":[1]}]",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\\u0022",
        "\\\\\\\"",
        "'",
    };
    sb_puts(b, "\"");
    for (size_t n = rng_below(g, 6); n > 0; n--)
        sb_puts(b, pieces[rng_below(g, sizeof pieces / sizeof pieces[0])]);
    sb_puts(b, "\"");
}

static void gen_number(struct rng *g, struct sb *b)
{
    char tok[256];
    for (;;) {
        random_token(g, tok, sizeof tok, false);
        errno = 0;
        (void)strtoll(tok, NULL, 10); /* integers jansson rejects as too big */
        if (fabs(strtod(tok, NULL)) < FLT_EDGE && (strpbrk(tok, ".eE") || errno != ERANGE))
            break;
    }
    sb_puts(b, tok);
}

static void gen_value(struct rng *g, struct sb *b, int depth)
{
    static const char *const keys[] = {"data", "inputs", "k", "name", "shape"};
    ws(g, b);
    switch (rng_below(g, depth > 2 ? 5 : 7)) {
        case 0:
            sb_puts(b, "null");
            break;
        case 1:
            sb_puts(b, "true");
            break;
        case 2:
            sb_puts(b, "false");
            break;
        case 3:
            gen_number(g, b);
            break;
        case 4:
            gen_string(g, b);
            break;
        case 5:
            sb_puts(b, "[");
            for (size_t i = 0, n = rng_below(g, 4); i < n; i++) {
                if (i)
                    sb_puts(b, ",");
                gen_value(g, b, depth + 1);
            }
            ws(g, b);
            sb_puts(b, "]");
            break;
        default:
            sb_puts(b, "{");
            for (size_t i = 0, n = rng_below(g, 4); i < n; i++) {
                ws(g, b);
                sb_printf(b, "%s\"%s\"", i ? "," : "", keys[i]);
                ws(g, b);
                sb_puts(b, ":");
                gen_value(g, b, depth + 1);
            }
            ws(g, b);
            sb_puts(b, "}");
            break;
    }
    ws(g, b);
}

static void gen_data(struct rng *g, struct sb *b, const int64_t *dims, int rank)
{
    ws(g, b);
    sb_puts(b, "[");
    for (int64_t i = 0; i < dims[0]; i++) {
        if (i) {
            ws(g, b);
            sb_puts(b, ",");
        }
        if (rank > 1) {
            gen_data(g, b, dims + 1, rank - 1);
        } else {
            ws(g, b);
            gen_number(g, b);
        }
    }
    ws(g, b);
    sb_puts(b, "]");
    ws(g, b);
}

static void shuffle(struct rng *g, int *v, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(g, (size_t)i + 1), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

/* Writes key as JSON, sometimes spelled with a \u escape (the same key for jansson). */
static void gen_key(struct rng *g, struct sb *b, const char *key)
{
    ws(g, b);
    if (rng_below(g, 8) == 0)
        sb_printf(b, "\"\\u%04x%s\"", (unsigned)key[0], key + 1);
    else
        sb_printf(b, "\"%s\"", key);
    ws(g, b);
    sb_puts(b, ":");
    ws(g, b);
}

static void gen_input0(struct rng *g, struct sb *b, size_t max_n)
{
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank = rng_below(g, 20) == 0 ? 5 + (int)rng_below(g, 4) : 1 + (int)rng_below(g, 4);
    for (int i = 0; i < rank; i++)
        dims[i] = 1 + (int64_t)rng_below(g, rank == 1 ? max_n : rank > 4 ? 2 : 5);
    int order[6] = {0, 1, 2, 3, 4, 5};
    shuffle(g, order, 6);
    sb_puts(b, "{");
    bool first = true;
    for (int k = 0; k < 6; k++) {
        if (order[k] >= 4 && rng_below(g, 2))
            continue; /* optional members */
        if (!first)
            sb_puts(b, ",");
        first = false;
        switch (order[k]) {
            case 0:
                gen_key(g, b, "name");
                sb_puts(b, "\"input__0\"");
                break;
            case 1:
                gen_key(g, b, "datatype");
                sb_puts(b, "\"FP32\"");
                break;
            case 2:
                gen_key(g, b, "shape");
                sb_puts(b, "[");
                for (int i = 0; i < rank; i++)
                    sb_printf(b, "%s%lld", i ? "," : "", (long long)dims[i]);
                sb_puts(b, "]");
                break;
            case 3:
                gen_key(g, b, "data");
                gen_data(g, b, dims, rank);
                break;
            case 4:
                gen_key(g, b, "parameters");
                sb_puts(b, "{\"data\":[1,2],\"inputs\":[{\"data\":[3]}]}");
                break;
            default:
                gen_key(g, b, "x");
                gen_value(g, b, 1);
                break;
        }
    }
    ws(g, b);
    sb_puts(b, "}");
}

/* A random valid request whose inputs[0].data holds at most about max_n numbers. */
static void gen_body(struct rng *g, struct sb *b, size_t max_n)
{
    static const char *const keys[] = {"inputs", "id", "parameters", "outputs", "x0", "Inputs"};
    int order[6] = {0, 1, 2, 3, 4, 5};
    shuffle(g, order, 6);
    b->len = 0;
    ws(g, b);
    sb_puts(b, "{");
    bool first = true;
    for (int k = 0; k < 6; k++) {
        if (order[k] != 0 && rng_below(g, 2))
            continue;
        if (!first)
            sb_puts(b, ",");
        first = false;
        gen_key(g, b, keys[order[k]]);
        switch (order[k]) {
            case 0:
                sb_puts(b, "[");
                gen_input0(g, b, max_n);
                for (size_t i = rng_below(g, 3); i > 0; i--) {
                    sb_puts(b, ",");
                    if (rng_below(g, 2))
                        sb_puts(b, "{\"name\":\"b\",\"data\":[\"s\",1],\"shape\":[2]}");
                    else
                        gen_value(g, b, 1);
                }
                ws(g, b);
                sb_puts(b, "]");
                break;
            case 1:
                gen_string(g, b);
                break;
            case 2:
                sb_puts(b, "{\"inputs\":[{\"data\":[1,2,3]}],\"top_k\":");
                gen_value(g, b, 2);
                sb_puts(b, "}");
                break;
            case 3:
                sb_puts(b, "[{\"name\":\"probabilities\"},{\"name\":\"inputs\"}]");
                break;
            default:
                gen_value(g, b, 0);
                break;
        }
        ws(g, b);
    }
    sb_puts(b, "}");
    ws(g, b);
}

/* Fast path vs jansson on a valid body: same values, dims, and rest == body with data []. */
static bool check_against_jansson(const char *body, size_t len, const struct res *r)
{
    json_error_t je;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    json_t *in = jinput0(doc);
    bool ok = false;
    struct jdata j = {0};
    if (in == NULL) {
        fprintf(stderr, "generated body rejected by jansson (%s): %s\n", je.text, body);
        goto out;
    }
    jdata_read(json_object_get(in, "data"), &j);
    if (r->rc != INF_OK || j.status != FLAT_OK || r->n != j.n || r->rank != j.rank ||
        memcmp(r->dims, j.dims, (size_t)j.rank * sizeof *j.dims) != 0) {
        fprintf(stderr, "rc %d (%s), n %zu/%zu, rank %d/%d, flat %d: %s\n", r->rc, r->e.msg, r->n,
                j.n, r->rank, j.rank, (int)j.status, body);
        goto out;
    }
    for (size_t i = 0; i < j.n; i++)
        if (!same_bits(r->vals[i], j.vals[i])) {
            fprintf(stderr, "[%zu] %a, jansson %a: %s\n", i, (double)r->vals[i], (double)j.vals[i],
                    body);
            goto out;
        }
    json_t *rest = json_loadb(r->rest, r->rest_len, JSON_REJECT_DUPLICATES, NULL);
    json_object_set_new(in, "data", json_array());
    ok = rest != NULL && json_equal(rest, doc);
    if (!ok)
        fprintf(stderr, "rest differs: %s\n", r->rest);
    json_decref(rest);
out:
    free(j.vals);
    json_decref(doc);
    return ok;
}

static void test_differential(void)
{
    struct rng g = {test_seed()};
    struct sb b = {0};
    size_t total = 0, failed = 0;
    const int bodies = test_quick() ? 500 : 10000;
    for (int i = 0; i < bodies; i++) {
        gen_body(&g, &b, 64);
        struct res r;
        run_len(b.s, b.len, BIG, &r);
        total += r.rc == INF_OK ? r.n : 0;
        bool same = check_against_jansson(b.s, b.len, &r);
        res_free(&r);
        if (!same && ++failed >= 5)
            break;
    }
    CHECK_MSG(failed == 0, "%zu bodies differ (seed %llu)", failed,
              (unsigned long long)test_seed());
    fprintf(stderr, "     differential: %d bodies, %zu values\n", bodies, total);
    free(b.s);
}

/* ------------------------------------------------------------------------------------------
 * Mutation fuzz
 * ---------------------------------------------------------------------------------------- */

static void mutate(struct rng *g, struct sb *b)
{
    static const char interesting[] = "{}[],:\\\"-+.eE0123456789 \t\n\rtfnu\0\x80\xc3\xff";
    for (size_t m = 1 + rng_below(g, 3); m > 0; m--) {
        size_t at = b->len ? rng_below(g, b->len) : 0;
        char c = rng_below(g, 2) ? interesting[rng_below(g, sizeof interesting - 1)]
                                 : (char)rng_below(g, 256);
        switch (rng_below(g, 6)) {
            case 0: /* replace a byte */
                if (b->len)
                    b->s[at] = c;
                break;
            case 1: /* flip a bit */
                if (b->len)
                    b->s[at] ^= (char)(1 << rng_below(g, 8));
                break;
            case 2: /* truncate */
                b->len = at;
                break;
            case 3: { /* insert a byte */
                char tmp = 0;
                sb_put(b, &tmp, 1);
                memmove(b->s + at + 1, b->s + at, b->len - at - 1);
                b->s[at] = c;
                break;
            }
            case 4: /* delete a byte */
                if (b->len) {
                    memmove(b->s + at, b->s + at + 1, b->len - at - 1);
                    b->len--;
                }
                break;
            default: { /* copy a slice elsewhere: duplicate keys, nesting */
                size_t from = b->len ? rng_below(g, b->len) : 0;
                size_t n = rng_below(g, 24);
                n = from + n > b->len ? b->len - from : n;
                char slice[24];
                memcpy(slice, b->s + from, n);
                size_t old = b->len;
                sb_put(b, slice, n);
                memmove(b->s + at + n, b->s + at, old - at);
                memcpy(b->s + at, slice, n);
                break;
            }
        }
    }
}

static void test_fuzz(void)
{
    struct rng g = {test_seed() * 31337};
    struct sb b = {0};
    size_t count[4] = {0}, ok_invalid = 0, bad = 0;
    const int mutations = test_quick() ? 2000 : 100000;
    for (int i = 0; i < mutations && bad < 5; i++) {
        gen_body(&g, &b, 12);
        mutate(&g, &b);
        struct res r;
        size_t max = rng_below(&g, 8) == 0 ? rng_below(&g, 20) : BIG;
        run_len(b.s, b.len, max, &r);
        json_t *doc = json_loadb(b.s, b.len, JSON_REJECT_DUPLICATES, NULL);
        json_t *in = jinput0(doc);
        struct jdata j = {.status = FLAT_OTHER};
        if (in != NULL)
            jdata_read(json_object_get(in, "data"), &j);
        bool fine = true;
        if (r.rc == INF_OK) {
            count[0]++;
            /* body valid <=> rest valid; if valid, the same data and document */
            json_t *rest = json_loadb(r.rest, r.rest_len, JSON_REJECT_DUPLICATES, NULL);
            fine = (doc != NULL) == (rest != NULL);
            if (doc != NULL) {
                fine = fine && in != NULL && j.status == FLAT_OK && j.n == r.n &&
                       r.rank == j.rank && r.n <= max;
                for (size_t k = 0; fine && k < j.n; k++)
                    fine = same_bits(r.vals[k], j.vals[k]);
                if (fine) {
                    json_object_set_new(in, "data", json_array());
                    fine = json_equal(rest, doc);
                }
            } else {
                ok_invalid++;
            }
            json_decref(rest);
        } else {
            fine = untouched(&r) && (r.rc == INF_ENOTFOUND) == (r.e.status == 0);
            count[r.rc == INF_ENOTFOUND ? 1 : r.rc == INF_EINVAL ? 2 : 3]++;
            /*
             * jansson quirk: it skips a NUL byte right after a number or literal ([0.0\0,1]
             * parses). The fast path rejects such bodies (EINVAL in data, else ENOTFOUND),
             * so jansson's verdict on them does not bind it.
             */
            bool quirk = memchr(b.s, '\0', b.len) != NULL;
            if (doc != NULL && in == NULL) /* valid, but no inputs[0].data */
                fine = fine && r.rc == INF_ENOTFOUND;
            if (doc != NULL && in != NULL && j.status == FLAT_OK && !quirk) /* must be taken */
                fine = fine && r.rc == INF_ELIMIT && j.n > max;
            if (doc != NULL && in != NULL && j.status != FLAT_OK)
                fine = fine && r.rc != INF_ENOMEM;
        }
        if (!fine) {
            bad++;
            fprintf(stderr, "fuzz %d: rc %d (%s), jansson %s, flat %d, max %zu: ", i, r.rc, r.e.msg,
                    doc ? "ok" : "rejects", (int)j.status, max);
            print_escaped(b.s, b.len);
        }
        free(j.vals);
        json_decref(doc);
        res_free(&r);
    }
    CHECK_MSG(bad == 0, "%zu fuzz disagreements (seed %llu)", bad, (unsigned long long)test_seed());
    /* The mutations must reach every outcome, or this test proves little. */
    CHECK(count[0] * 100 > (size_t)mutations && count[1] * 100 > (size_t)mutations &&
          count[2] * 100 > (size_t)mutations && count[3] * 1000 > (size_t)mutations);
    fprintf(stderr,
            "     fuzz: %d mutations: %zu OK (%zu of them on bodies jansson rejects, and "
            "rejects rest too), %zu ENOTFOUND, %zu EINVAL, %zu ELIMIT\n",
            mutations, count[0], ok_invalid, count[1], count[2], count[3]);
    free(b.s);
}

/* ------------------------------------------------------------------------------------------
 * Responses: oip_response_encode() writes the text itself when nothing is binary; it must be
 * byte for byte json_dump_checked(oip_response_build(...), JSON_COMPACT | JSON_REAL_PRECISION(9)),
 * and fail (INF_ENOMEM, nothing written) exactly when that returns NULL.
 * ---------------------------------------------------------------------------------------- */

#define RESP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))

/* Outcomes of resp_compare() over a test: both paths succeeded, both failed, they differed. */
struct resp_tally {
    size_t ok, failed, differ;
};

/* A model of 4 features -> O outputs: a classifier with these labels (NULL: the default "0",
 * "1", ...) or a regressor. Caller frees with model_free(). */
static struct model *resp_model(bool cls, size_t O, char *const *labels)
{
    json_t *cfg = json_pack("{s:s, s:{s:[i]}, s:[{s:s, s:i, s:i}]}", "task",
                            cls ? "classification" : "regression", "input", "shape", 4, "layers",
                            "type", "Linear", "in_features", 4, "out_features", (int)O);
    if (cls && labels != NULL) {
        json_t *l = json_array();
        for (size_t i = 0; i < O; i++)
            json_array_append_new(l, json_string(labels[i]));
        json_object_set_new(cfg, "labels", l);
    }
    char *text = json_dumps(cfg, JSON_COMPACT);
    struct err e = {0};
    struct model *m = text ? model_load_buffers(text, strlen(text), NULL, 0, &e) : NULL;
    CHECK_MSG(m != NULL, "resp_model: %s", e.msg);
    if (m == NULL)
        abort(); /* every later check needs it */
    free(text);
    json_decref(cfg);
    return m;
}

/* Runs both paths on one case and compares; prints the case when they differ. */
static void resp_compare(const struct model *m, const char *name, const char *version,
                         const struct oip_request *req, const float *out, struct resp_tally *t,
                         const char *what)
{
    json_t *res = oip_response_build(m, name, version, req, out);
    char *want = res != NULL ? json_dump_checked(res, RESP_FLAGS) : NULL;
    json_decref(res);
    char *got = SENTINEL_PTR;
    size_t len = 777, json_len = 777;
    int rc = oip_response_encode(m, name, version, req, out, &got, &len, &json_len);
    bool same;
    if (want == NULL)
        same = rc == INF_ENOMEM && got == SENTINEL_PTR && len == 777 && json_len == 777;
    else
        same = rc == INF_OK && len == strlen(want) && json_len == len &&
               memcmp(got, want, len + 1) == 0;
    if (same) {
        want == NULL ? t->failed++ : t->ok++;
    } else if (t->differ++ < 5) {
        /* the first difference with 60 bytes either side, or the side that failed */
        size_t wl = want ? strlen(want) : 0, gl = rc == INF_OK ? len : 0, i = 0;
        while (want != NULL && rc == INF_OK && i < wl && i < gl && want[i] == got[i])
            i++;
        size_t from = i > 60 ? i - 60 : 0;
        fprintf(stderr, "  %s: the direct writer differs (rc %d) at byte %zu of %zu/%zu:\n", what,
                rc, i, wl, gl);
        fputs("  jansson: ", stderr);
        want ? print_escaped(want + from, (wl < i + 60 ? wl : i + 60) - from)
             : (void)fputs("(failed)\n", stderr);
        fputs("  direct:  ", stderr);
        rc == INF_OK ? print_escaped(got + from, (gl < i + 60 ? gl : i + 60) - from)
                     : (void)fputs("(failed)\n", stderr);
    }
    if (rc == INF_OK)
        free(got);
    free(want);
}

/* Appends code point cp (not a surrogate, <= U+10FFFF) as UTF-8. */
static void sb_put_cp(struct sb *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6);
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12);
        u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18);
        u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        u[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    sb_put(b, u, n);
}

/* A code point a client might send in free text, biased to what needs escaping or care. */
static uint32_t random_cp(struct rng *g)
{
    static const uint32_t edges[] = {0x7F,   0x80,   0x7FF,   0x800,   0xD7FF,   0xE000,
                                     0xFFFD, 0xFFFF, 0x10000, 0x1F600, 0x10FFFF, 0x2028};
    uint32_t c;
    switch (rng_below(g, 10)) {
        case 0:
            return 1 + (uint32_t)rng_below(g, 0x1F); /* control characters (no NUL: C strings) */
        case 1:
            return (uint32_t) "\"\\/"[rng_below(g, 3)];
        case 2:
            return edges[rng_below(g, sizeof edges / sizeof edges[0])];
        case 3:
            return 0x80 + (uint32_t)rng_below(g, 0x780); /* 2 bytes */
        case 4:
            do
                c = 0x800 + (uint32_t)rng_below(g, 0xF800); /* 3 bytes */
            while (c >= 0xD800 && c <= 0xDFFF);
            return c;
        case 5:
            return 0x10000 + (uint32_t)rng_below(g, 0x100000); /* 4 bytes */
        default:
            return 0x20 + (uint32_t)rng_below(g, 0x5F); /* printable ASCII */
    }
}

/* Byte sequences json_string() refuses (utf.c), each invalid wherever it is put. */
static const char *const bad_utf8[] = {
    "\x80",
    "\xBF",
    "\xC0\x80",
    "\xC1\xBF",
    "\xC2",
    "\xC2\x41",
    "\xDF",
    "\xE0\x80\x80",
    "\xE0\x9F\xBF",
    "\xED\xA0\x80",
    "\xED\xBF\xBF",
    "\xE2\x82",
    "\xE2\x28\xA1",
    "\xF0\x8F\xBF\xBF",
    "\xF0\x9F\x98",
    "\xF4\x90\x80\x80",
    "\xF5\x80\x80\x80",
    "\xF8\x88\x80\x80\x80",
    "\xFE",
    "\xFF",
};

/* A random string of up to max code points into b (reset first); with bad, one invalid
 * sequence goes in at a random place. */
static void random_text(struct rng *g, struct sb *b, size_t max, bool bad)
{
    b->len = 0;
    sb_put(b, "", 0);
    size_t n = rng_below(g, max + 1), at = rng_below(g, n + 1);
    for (size_t i = 0; i <= n; i++) {
        if (bad && i == at)
            sb_puts(b, bad_utf8[rng_below(g, sizeof bad_utf8 / sizeof bad_utf8[0])]);
        if (i < n)
            sb_put_cp(b, random_cp(g));
    }
}

/* A finite float from one of the families where number formatting has edges. */
static float random_output_float(struct rng *g)
{
    static const float specials[] = {0.0f,   -0.0f,  FLT_MIN, FLT_TRUE_MIN,   FLT_MAX, 1.0f,
                                     0.5f,   0.1f,   1e-4f,   9.99999975e-5f, 1e9f,    16777216.0f,
                                     1e-36f, 1e-37f, 1e30f,   1e31f};
    double u = (double)rng_next(g) / 0x1p64;
    float f;
    switch (rng_below(g, 9)) {
        case 0:
            return random_float_bits(g); /* includes denormals and huge values */
        case 1:
            f = (float)u; /* a probability */
            break;
        case 2:
            f = ldexpf((float)u, -(int)rng_below(g, 150)); /* tiny, down to denormals */
            break;
        case 3: { /* integer-valued */
            int shift = (int)rng_below(g, 64);
            f = (float)(int64_t)(rng_next(g) >> shift);
            break;
        }
        case 4: /* a power of ten, and its neighbours */
        case 5: /* just under a power of ten: where 9 digits round up to the next one */
        {
            int p = (int)rng_below(g, 84) - 45;
            double d = pow(10, p) * (rng_below(g, 2) ? 1.0 : 1.0 - 5e-10);
            f = (float)d;
            for (size_t s = rng_below(g, 4); s > 0; s--)
                f = nextafterf(f, rng_below(g, 2) ? INFINITY : 0.0f);
            break;
        }
        case 6: /* small odd multiples of powers of two: exact ties such as 2^-13 */
        {
            float odd = (float)(1 + 2 * rng_below(g, 2048));
            f = ldexpf(odd, (int)rng_below(g, 250) - 149);
            break;
        }
        case 7:
            f = specials[rng_below(g, sizeof specials / sizeof specials[0])];
            break;
        default:
            f = (float)(u * pow(10, (int)rng_below(g, 20) - 10)); /* a regressor's values */
            break;
    }
    if (!isfinite(f))
        f = FLT_MAX;
    return rng_below(g, 4) == 0 ? -f : f;
}

/* out (n) as a classifier's output: softmax of random logits, some rows with ties. */
static void random_probabilities(struct rng *g, float *out, size_t rows, size_t C)
{
    for (size_t r = 0; r < rows; r++) {
        float *p = out + r * C;
        double z = 0, scale = (double)(1 + rng_below(g, 40));
        for (size_t c = 0; c < C; c++)
            z += p[c] = expf((float)(((double)rng_next(g) / 0x1p64 - 0.5) * scale));
        for (size_t c = 0; c < C; c++)
            p[c] = (float)(p[c] / z);
        if (rng_below(g, 4) == 0 && C > 2) {
            size_t to = rng_below(g, C), from = rng_below(g, C); /* one call per statement */
            p[to] = p[from];                                     /* a tie for top_k's order */
        }
    }
}

static void test_response_examples(void)
{
    char *labels[] = {"cat", "dog \"big\"", "caf\xC3\xA9\n\x01\\/"};
    struct model *m = resp_model(true, 3, labels);
    float out[6] = {0.25f, 0.5f, 0.25f, 1e-20f, 1.0f, 0.0f}; /* 1e-20f is 9.99999968e-21 */
    struct oip_request req = {.id = "r\"1\\\t\xF0\x9F\x98\x80", .batch = 2};
    req.outputs =
        OIP_OUT_PROBABILITIES | OIP_OUT_LABEL | OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES;
    req.top_k = 2;
    char *buf = NULL;
    size_t len = 0, json_len = 0;
    CHECK(oip_response_encode(m, "m", "1", &req, out, &buf, &len, &json_len) == INF_OK);
    const char *want =
        "{\"model_name\":\"m\",\"model_version\":\"1\",\"id\":\"r\\\"1\\\\\\t\xF0\x9F\x98\x80\","
        "\"outputs\":[{\"name\":\"probabilities\",\"datatype\":\"FP32\",\"shape\":[2,3],"
        "\"data\":[0.25,0.5,0.25,9.99999968e-21,1.0,0.0]},{\"name\":\"label\",\"datatype\":"
        "\"BYTES\","
        "\"shape\":[2],\"data\":[\"dog \\\"big\\\"\",\"dog \\\"big\\\"\"]},"
        "{\"name\":\"top_k_labels\",\"datatype\":\"BYTES\",\"shape\":[2,2],\"data\":[\"dog "
        "\\\"big\\\"\",\"cat\",\"dog \\\"big\\\"\",\"cat\"]},{\"name\":\"top_k_probabilities\","
        "\"datatype\":\"FP32\",\"shape\":[2,2],\"data\":[0.5,0.25,1.0,9.99999968e-21]}]}";
    CHECK_MSG(buf != NULL && strcmp(buf, want) == 0 && len == strlen(want) && json_len == len,
              "got %s", buf ? buf : "(null)");
    free(buf);

    struct resp_tally t = {0};
    resp_compare(m, "m", "1", &req, out, &t, "example");
    req.outputs = OIP_OUT_LABEL;
    req.id = NULL;
    out[1] = 2.0f; /* the third label: escapes of \n, \u0001, \\ and a 2-byte é */
    out[2] = 3.0f;
    resp_compare(m, "m", "1", &req, out, &t, "escaped label");
    CHECK(t.ok == 2 && t.differ == 0);

    /* Non-finite outputs: json_real() refuses them, so today's build fails wherever one is
     * put into the document (and handle_infer answers 503); with top_k both top-k arrays are
     * built even if only one is asked for. */
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        float o[6] = {0.2f, 0.3f, 0.5f, 0.1f, 0.1f, 0.8f};
        o[0] = bad[i];
        struct oip_request r = {.batch = 2, .outputs = OIP_OUT_PROBABILITIES | OIP_OUT_LABEL};
        struct resp_tally ti = {0};
        resp_compare(m, "m", "1", &r, o, &ti, "non-finite in probabilities");
        CHECK(ti.failed == 1);
        r.outputs = OIP_OUT_LABEL; /* not written: fine */
        resp_compare(m, "m", "1", &r, o, &ti, "non-finite, label only");
        CHECK(ti.ok == 1);
        r.outputs = OIP_OUT_TOP_K_LABELS; /* index 0 is among the top 3: its number is built */
        r.top_k = 3;
        resp_compare(m, "m", "1", &r, o, &ti, "non-finite, top_k_labels only");
        CHECK(ti.failed == 2 && ti.differ == 0);
    }
    struct model *reg = resp_model(false, 2, NULL);
    float o2[2] = {1.5f, NAN};
    struct oip_request r2 = {.batch = 1, .outputs = OIP_OUT_OUTPUT};
    char *sentinel = SENTINEL_PTR;
    buf = sentinel;
    len = 777;
    CHECK(oip_response_encode(reg, "m", "1", &r2, o2, &buf, &len, &json_len) == INF_ENOMEM);
    CHECK(buf == sentinel && len == 777);
    model_free(reg);

    /* A label that is not UTF-8 (a model could not load one; patched in here) fails where it
     * is written or, for top_k, built; not where it is not. */
    const struct model_info *info = model_get_info(m);
    char *saved = info->labels[1], badlabel[] = "d\xC3";
    info->labels[1] = badlabel;
    float o3[3] = {0.1f, 0.8f, 0.1f};
    struct oip_request r3 = {.batch = 1, .outputs = OIP_OUT_LABEL};
    struct resp_tally tl = {0};
    resp_compare(m, "m", "1", &r3, o3, &tl, "bad label");
    r3.outputs = OIP_OUT_TOP_K_PROBABILITIES;
    r3.top_k = 2;
    resp_compare(m, "m", "1", &r3, o3, &tl, "bad label, top_k_probabilities only");
    r3.outputs = OIP_OUT_PROBABILITIES;
    resp_compare(m, "m", "1", &r3, o3, &tl, "bad label, probabilities only");
    CHECK(tl.failed == 2 && tl.ok == 1 && tl.differ == 0);
    info->labels[1] = saved;
    model_free(m);
}

static double now_us(void);

/* The k largest first, ties to the lower index: the order top_k must give. */
static const float *rank_p;
static int rank_cmp(const void *a, const void *b)
{
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    if (rank_p[i] != rank_p[j])
        return rank_p[i] > rank_p[j] ? -1 : 1;
    return i < j ? -1 : i > j;
}

/*
 * top_k up to the number of classes on a 20,000-class model (many ties): the order of every
 * label and probability is the full ranking, and it takes O(C log k), not the O(k^2 C) it once
 * took (a request could hold a worker for hours).
 */
static void test_response_top_k_large(void)
{
    enum { C = 20000 };
    struct model *m = resp_model(true, C, NULL);
    const struct model_info *info = model_get_info(m);
    float *out = malloc(C * sizeof *out);
    size_t *order = malloc(C * sizeof *order);
    struct rng g = {12345};
    for (size_t i = 0; i < C; i++) {
        out[i] = (float)rng_below(&g, 300) / 300.0f; /* about 67 ties per value */
        order[i] = i;
    }
    rank_p = out;
    qsort(order, C, sizeof *order, rank_cmp);
    static const int ks[] = {1, 3, 100, C};
    for (size_t t = 0; t < sizeof ks / sizeof ks[0]; t++) {
        struct oip_request req = {.batch = 1,
                                  .outputs = OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES,
                                  .top_k = ks[t]};
        char *buf = NULL;
        size_t len = 0, jl = 0;
        double t0 = now_us();
        CHECK(oip_response_encode(m, "big", "1", &req, out, &buf, &len, &jl) == INF_OK);
        double secs = (now_us() - t0) * 1e-6;
        json_t *doc = buf != NULL ? json_loadb(buf, len, 0, NULL) : NULL;
        const json_t *labels =
            json_object_get(json_array_get(json_object_get(doc, "outputs"), 0), "data");
        const json_t *probs =
            json_object_get(json_array_get(json_object_get(doc, "outputs"), 1), "data");
        CHECK_MSG(json_array_size(labels) == (size_t)ks[t] &&
                      json_array_size(probs) == (size_t)ks[t],
                  "top_k %d: %zu labels, %zu probabilities", ks[t], json_array_size(labels),
                  json_array_size(probs));
        size_t wrong = 0;
        for (size_t j = 0; j < json_array_size(labels) && j < json_array_size(probs); j++) {
            const char *l = json_string_value(json_array_get(labels, j));
            wrong += l == NULL || strcmp(l, info->labels[order[j]]) != 0 ||
                     (float)json_real_value(json_array_get(probs, j)) != out[order[j]];
        }
        CHECK_MSG(wrong == 0, "top_k %d: %zu entries out of rank order", ks[t], wrong);
        fprintf(stderr, "     top_k %d of %d classes: %.1f ms\n", ks[t], C, secs * 1e3);
        json_decref(doc);
        free(buf);
    }
    free(order);
    free(out);
    model_free(m);
}

static void test_response_differential(void)
{
    uint64_t seed = test_seed();
    struct rng g = {seed ^ 0x726573706f6e7365ULL};
    fprintf(stderr, "     responses: seed %llu (OIP_FAST_SEED)\n", (unsigned long long)seed);
    /* A pool of models: classifiers with labels that need escaping (some long, to outgrow the
     * first guess at the size), one with the default labels, regressors. */
    enum { N_MODELS = 7 };
    static const size_t sizes[N_MODELS] = {2, 3, 10, 37, 5, 1, 64};
    static const bool cls[N_MODELS] = {true, true, true, true, true, false, false};
    struct model *models[N_MODELS];
    struct sb s = {0}, id = {0}, name = {0};
    for (int k = 0; k < N_MODELS; k++) {
        char **labels = calloc(sizes[k], sizeof *labels);
        for (size_t i = 0; i < sizes[k]; i++) {
            random_text(&g, &s, rng_below(&g, 8) == 0 ? 60 : 6, false);
            sb_printf(&s, "#%zu", i); /* unique, 1 to 256 bytes */
            labels[i] = strdup(s.s);
        }
        models[k] = resp_model(cls[k], sizes[k], k == 4 ? NULL : labels);
        for (size_t i = 0; i < sizes[k]; i++)
            free(labels[i]);
        free(labels);
    }
    const int cases = test_quick() ? 400 : 6000;
    struct resp_tally t = {0};
    size_t invalid_id = 0, nonfinite = 0, bad_labels = 0;
    for (int c = 0; c < cases && t.differ < 5; c++) {
        int k = (int)rng_below(&g, N_MODELS);
        const struct model_info *info = model_get_info(models[k]);
        size_t O = info->out_size, B = 1 + rng_below(&g, rng_below(&g, 8) == 0 ? 40 : 4);
        struct oip_request req = {.batch = B};
        if (info->task == MODEL_TASK_CLASSIFICATION) {
            while (req.outputs == 0)
                req.outputs = (unsigned)rng_below(&g, 32);
            if ((req.outputs & (OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES)) ||
                rng_below(&g, 4) == 0)
                req.top_k = (int)rng_below(&g, O + 1); /* 0 only in hand-made requests */
        } else {
            req.outputs = OIP_OUT_OUTPUT;
        }
        if (rng_below(&g, 6) != 0) {
            bool bad = rng_below(&g, 5) == 0;
            random_text(&g, &id, 40, bad);
            req.id = id.s;
            invalid_id += bad;
        }
        const char *model_name = "model-1", *version = "1";
        if (rng_below(&g, 10) == 0) {
            random_text(&g, &name, 12, rng_below(&g, 4) == 0);
            model_name = name.s;
        }
        if (rng_below(&g, 200) == 0)
            model_name = NULL; /* json_pack("s") refuses NULL */
        if (rng_below(&g, 20) == 0)
            version = "12345";
        float *out = malloc(B * O * sizeof *out);
        if (out == NULL)
            abort();
        if (info->task == MODEL_TASK_CLASSIFICATION && rng_below(&g, 2) == 0) {
            random_probabilities(&g, out, B, O);
        } else {
            for (size_t i = 0; i < B * O; i++)
                out[i] = random_output_float(&g);
        }
        if (rng_below(&g, 30) == 0) {
            static const float nf[] = {NAN, -NAN, INFINITY, -INFINITY};
            size_t at = rng_below(&g, B * O);
            out[at] = nf[rng_below(&g, 4)];
            nonfinite++;
        }
        char *saved = NULL, badlabel[16];
        size_t patched = 0;
        if (info->task == MODEL_TASK_CLASSIFICATION && rng_below(&g, 25) == 0) {
            patched = rng_below(&g, O);
            saved = info->labels[patched];
            snprintf(badlabel, sizeof badlabel, "L%s",
                     bad_utf8[rng_below(&g, sizeof bad_utf8 / sizeof bad_utf8[0])]);
            info->labels[patched] = badlabel;
            bad_labels++;
        }
        char what[64];
        snprintf(what, sizeof what, "case %d (seed %llu)", c, (unsigned long long)seed);
        resp_compare(models[k], model_name, version, &req, out, &t, what);
        if (saved != NULL)
            info->labels[patched] = saved;
        free(out);
    }
    CHECK_MSG(t.differ == 0, "%zu cases differ (the run stops at 5; seed %llu)", t.differ,
              (unsigned long long)seed);
    /* Both outcomes must be exercised, or the comparison proves little. */
    CHECK(t.ok > (size_t)cases / 2 && t.failed > (size_t)cases / 50);
    fprintf(stderr,
            "     responses: %d cases, %zu written, %zu failing in both paths (%zu ids not "
            "UTF-8, %zu non-finite outputs, %zu labels not UTF-8)\n",
            cases, t.ok, t.failed, invalid_id, nonfinite, bad_labels);
    for (int k = 0; k < N_MODELS; k++)
        model_free(models[k]);
    free(s.s);
    free(id.s);
    free(name.s);
}

/*
 * Numbers in bulk: a regressor's output of 1000 values a response. With OIP_RESP_ALL_FLOATS=1
 * in the environment, every finite float instead (2^32 bit patterns through both paths; hours,
 * not part of the suite).
 */
static void test_response_floats(void)
{
    enum { D = 1000, ROWS = 4 };
    struct model *m = resp_model(false, D, NULL);
    struct rng g = {test_seed() ^ 0x666c6f617473ULL};
    float *out = malloc(ROWS * D * sizeof *out);
    if (out == NULL)
        abort();
    struct oip_request req = {.batch = ROWS, .outputs = OIP_OUT_OUTPUT};
    struct resp_tally t = {0};
    const char *all = getenv("OIP_RESP_ALL_FLOATS");
    if (all != NULL && all[0] == '1') {
        for (uint64_t u = 0; u < ((uint64_t)1 << 32) && t.differ < 5;) {
            size_t n = 0;
            for (; n < ROWS * D && u < ((uint64_t)1 << 32); u++) {
                uint32_t bits = (uint32_t)u;
                memcpy(&out[n], &bits, sizeof bits);
                n += isfinite(out[n]) ? 1 : 0;
            }
            for (; n < ROWS * D; n++)
                out[n] = 0.0f;
            resp_compare(m, "m", "1", &req, out, &t, "every float");
            if ((u & 0xFFFFFFF) < ROWS * D)
                fprintf(stderr, "     every float: up to %#llx\n", (unsigned long long)u);
        }
    } else {
        const int responses = test_quick() ? 20 : 250;
        for (int r = 0; r < responses && t.differ < 5; r++) {
            for (size_t i = 0; i < ROWS * D; i++)
                out[i] = random_output_float(&g);
            resp_compare(m, "m", "1", &req, out, &t, "floats");
        }
    }
    CHECK_MSG(t.differ == 0 && t.failed == 0 && t.ok > 0, "%zu responses differ", t.differ);
    fprintf(stderr, "     floats: %zu values in %zu responses\n", t.ok * ROWS * D, t.ok);
    free(out);
    model_free(m);
}

/* ------------------------------------------------------------------------------------------
 * Micro-benchmark (printed, not asserted)
 * ---------------------------------------------------------------------------------------- */

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* The fastest of 5 rounds of iters calls, in µs per call. */
#define BENCH(label, iters, ...)                                                                   \
    do {                                                                                           \
        double best_ = 1e30;                                                                       \
        for (int round_ = 0; round_ < 5; round_++) {                                               \
            double t0_ = now_us();                                                                 \
            for (int it_ = 0; it_ < (iters); it_++) {                                              \
                __VA_ARGS__;                                                                       \
            }                                                                                      \
            double us_ = (now_us() - t0_) / (iters);                                               \
            best_ = us_ < best_ ? us_ : best_;                                                     \
        }                                                                                          \
        fprintf(stderr, "     bench: %-44s %8.2f us/call\n", label, best_);                        \
    } while (0)

static void test_bench(void)
{
    struct rng g = {42};
    struct sb b = {0};
    sb_puts(&b, "{\"id\":\"bench-1\",\"inputs\":[{\"name\":\"input__0\",\"shape\":[1,784],"
                "\"datatype\":\"FP32\",\"data\":[");
    for (int i = 0; i < 784; i++)
        sb_printf(&b, "%s%.9g", i ? "," : "", (double)(float)((double)rng_next(&g) / 0x1p64));
    sb_puts(&b, "]}],\"outputs\":[{\"name\":\"probabilities\"}]}");
    fprintf(stderr, "     bench: body of %zu bytes, 784 floats\n", b.len);
    volatile size_t sink = 0;
    const int iters = 300;

    BENCH("oip_fast_extract_data", iters, {
        struct res r;
        r.rc = oip_fast_extract_data(b.s, b.len, BIG, &r.vals, &r.n, r.dims, &r.rank, &r.rest,
                                     &r.rest_len, NULL);
        sink += r.n;
        res_free(&r);
    });
    BENCH("oip_fast_extract_data + json_loadb(rest)", iters, {
        struct res r;
        r.rc = oip_fast_extract_data(b.s, b.len, BIG, &r.vals, &r.n, r.dims, &r.rank, &r.rest,
                                     &r.rest_len, NULL);
        json_t *doc = json_loadb(r.rest, r.rest_len, JSON_REJECT_DUPLICATES, NULL);
        sink += r.n + json_object_size(doc);
        json_decref(doc);
        res_free(&r);
    });
    BENCH("json_loadb(body)", iters, {
        json_t *doc = json_loadb(b.s, b.len, JSON_REJECT_DUPLICATES, NULL);
        sink += json_object_size(doc);
        json_decref(doc);
    });
    float *out = malloc(784 * sizeof *out);
    const char *first = strchr(strstr(b.s, "\"data\""), '[') + 1;
    BENCH("plain strtof loop over the 784 numbers", iters, {
        char *endp;
        const char *p = first;
        for (size_t k = 0; k < 784; k++, p = endp + 1)
            out[k] = strtof(p, &endp);
        sink += (size_t)out[0];
    });
    BENCH("json_loadb(body) + data to floats", iters, {
        json_t *doc = json_loadb(b.s, b.len, JSON_REJECT_DUPLICATES, NULL);
        json_t *data = json_object_get(jinput0(doc), "data");
        for (size_t k = 0; k < json_array_size(data); k++)
            out[k] = (float)json_number_value(json_array_get(data, k));
        sink += (size_t)out[0];
        json_decref(doc);
    });
    free(out);

    /* Responses: a 10-class classifier, batch 1, probabilities and label. */
    struct model *m = resp_model(true, 10, NULL);
    float p[10];
    random_probabilities(&g, p, 1, 10);
    struct oip_request req = {.id = "bench-1", .batch = 1};
    req.outputs = OIP_OUT_PROBABILITIES | OIP_OUT_LABEL;
    const int resp_iters = test_quick() ? 100 : 5000;
    BENCH("oip_response_encode (10 classes, direct)", resp_iters, {
        char *text = NULL;
        size_t len = 0, json_len = 0;
        if (oip_response_encode(m, "bench", "1", &req, p, &text, &len, &json_len) == INF_OK)
            sink += len;
        free(text);
    });
    BENCH("oip_response_build + json_dump_checked", resp_iters, {
        json_t *res = oip_response_build(m, "bench", "1", &req, p);
        char *text = json_dump_checked(res, RESP_FLAGS);
        sink += text ? strlen(text) : 0;
        free(text);
        json_decref(res);
    });
    model_free(m);
    (void)sink;
    free(b.s);
}

int main(void)
{
    RUN(test_examples);
    RUN(test_nested_4d);
    RUN(test_placement_and_decoys);
    RUN(test_whitespace);
    RUN(test_malformed);
    RUN(test_tokens);
    RUN(test_differential);
    RUN(test_fuzz);
    RUN(test_response_examples);
    RUN(test_response_differential);
    RUN(test_response_top_k_large);
    RUN(test_response_floats);
    RUN(test_bench);
    return test_finish();
}
