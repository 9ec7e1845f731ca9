/*
 * tests/model/test_hashing.c - the hashing text featurizer against reference vectors from an
 * independent Python implementation (tests/model/gen_hashing.py -> hashing_vectors.json),
 * plus the tokenizer and n-gram bucket helpers the explanations use.
 *
 * Tolerance: each nonzero bucket within 1e-6 of the double reference (the C result is a
 * float, so about 6e-8 relative error is expected); every other bucket exactly 0.
 */
#include <jansson.h>
#include <stdint.h>

#include "tests/test.h"
#include "model/model.h"
#include "model/hashing.h"

#define VECTORS_REL "model/hashing_vectors.json"
#define TOL         1e-6

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes standard padded base64 into a new buffer (caller frees); NULL if malformed. */
static unsigned char *b64_decode(const char *s, size_t *out_len)
{
    size_t n = strlen(s);
    if (n % 4 != 0)
        return NULL;
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = b64_value((unsigned char)s[i + k])) < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(w >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)w;
    }
    *out_len = o;
    return out;
}

/*
 * The bytes of a vector entry: "text" (a JSON string) or "text_b64". On success *buf is a new
 * buffer the caller frees (possibly empty); returns 0, or -1 if the entry has neither.
 */
static int entry_text(json_t *entry, unsigned char **buf, size_t *len)
{
    json_t *t = json_object_get(entry, "text");
    json_t *b = json_object_get(entry, "text_b64");

    if (json_is_string(t)) {
        size_t n = json_string_length(t);
        *buf = malloc(n + 1);
        if (*buf == NULL)
            return -1;
        memcpy(*buf, json_string_value(t), n);
        *len = n;
        return 0;
    }
    if (json_is_string(b)) {
        *buf = b64_decode(json_string_value(b), len);
        return *buf != NULL ? 0 : -1;
    }
    return -1;
}

static json_t *load_vectors(void)
{
    json_error_t jerr;
    const char *src = getenv("INFERA_TEST_SRC");
    json_t *root = NULL;

    if (src != NULL && src[0] != '\0') {
        char path[4096];
        int n = snprintf(path, sizeof(path), "%s/%s", src, VECTORS_REL);
        if (n > 0 && (size_t)n < sizeof(path))
            root = json_load_file(path, 0, &jerr);
    }
    if (root == NULL)
        root = json_load_file(VECTORS_REL, 0, &jerr);
    if (root == NULL)
        fprintf(stderr, "cannot load %s: %s (line %d)\n", VECTORS_REL, jerr.text, jerr.line);
    return root;
}

/* ------------------------------------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------------------------------- */

static json_t *vectors;

static void test_fnv_published(void)
{
    /* Fowler/Noll/Vo's published FNV-1a-32 values. */
    CHECK(model_fnv1a32("", 0) == 0x811c9dc5u);
    CHECK(model_fnv1a32(NULL, 0) == 0x811c9dc5u);
    CHECK(model_fnv1a32("a", 1) == 0xe40c292cu);
    CHECK(model_fnv1a32("foobar", 6) == 0xbf9cf968u);
}

static void test_fnv_vectors(void)
{
    json_t *list = json_object_get(vectors, "fnv");
    size_t i;
    json_t *entry;

    CHECK(json_array_size(list) >= 3);
    json_array_foreach(list, i, entry)
    {
        unsigned char *buf = NULL;
        size_t len = 0;
        json_t *h = json_object_get(entry, "hash");
        CHECK_MSG(entry_text(entry, &buf, &len) == 0 && json_is_integer(h), "fnv entry %zu", i);
        if (buf != NULL && json_is_integer(h))
            CHECK_MSG(model_fnv1a32(buf, len) == (uint32_t)json_integer_value(h),
                      "fnv entry %zu: got 0x%08x", i, model_fnv1a32(buf, len));
        free(buf);
    }
}

static void check_case(size_t idx, json_t *c)
{
    unsigned char *text = NULL;
    float *out = NULL;
    double *want = NULL;
    json_t *nz = json_object_get(c, "nonzero");
    json_int_t dims = json_integer_value(json_object_get(c, "dims"));
    json_int_t ngrams = json_integer_value(json_object_get(c, "ngrams"));
    size_t len = 0, i;
    json_t *pair;

    if (entry_text(c, &text, &len) != 0 || !json_is_array(nz) || dims < 1 ||
        dims > (json_int_t)MODEL_MAX_HASH_DIMS || ngrams < 1 || ngrams > 3) {
        CHECK_MSG(0, "case %zu is malformed", idx);
        goto out;
    }
    out = malloc((size_t)dims * sizeof(*out));
    want = calloc((size_t)dims, sizeof(*want));
    if (out == NULL || want == NULL) {
        CHECK_MSG(0, "case %zu: out of memory", idx);
        goto out;
    }
    json_array_foreach(nz, i, pair)
    {
        json_int_t b = json_integer_value(json_array_get(pair, 0));
        json_t *v = json_array_get(pair, 1);
        if (b < 0 || b >= dims || !json_is_number(v)) {
            CHECK_MSG(0, "case %zu: bad nonzero entry %zu", idx, i);
            goto out;
        }
        want[b] = json_number_value(v);
    }
    /* Garbage in, so the test sees that the featurizer zeroes out itself. */
    for (json_int_t k = 0; k < dims; k++)
        out[k] = 12345.0f;

    model_hash_text((const char *)text, len, (uint32_t)dims, (int)ngrams, out);

    size_t bad = 0;
    for (json_int_t k = 0; k < dims; k++) {
        int ok = want[k] != 0.0 ? fabs((double)out[k] - want[k]) <= TOL : out[k] == 0.0f;
        if (!ok && bad++ < 5)
            fprintf(stderr, "case %zu (dims %lld, ngrams %lld): bucket %lld = %.9g, want %.9g\n",
                    idx, (long long)dims, (long long)ngrams, (long long)k, (double)out[k], want[k]);
    }
    CHECK_MSG(bad == 0, "case %zu: %zu buckets differ", idx, bad);
out:
    free(text);
    free(out);
    free(want);
}

static void test_vectors(void)
{
    json_t *cases = json_object_get(vectors, "cases");
    size_t i;
    json_t *c;

    CHECK(json_array_size(cases) >= 25);
    json_array_foreach(cases, i, c)
    {
        check_case(i, c);
    }
}

static void test_tokenize(void)
{
    struct hash_token t[8];

    CHECK(hash_tokenize(NULL, 0, NULL, 0) == 0);
    CHECK(hash_tokenize(" ,.-_\t\n", 7, t, 8) == 0);

    /* Underscore and punctuation split; the tokens keep their original case. */
    const char *s = "a-b_C.d";
    CHECK(hash_tokenize(s, strlen(s), t, 8) == 4);
    for (size_t k = 0; k < 4; k++)
        CHECK(t[k].start == 2 * k && t[k].len == 1);

    /* Leading/trailing separators, runs of separators, digits. */
    s = "  Hello,  WORLD42!! ";
    CHECK(hash_tokenize(s, strlen(s), t, 8) == 2);
    CHECK(t[0].start == 2 && t[0].len == 5);
    CHECK(t[1].start == 10 && t[1].len == 7);

    /* Bytes >= 0x80 are word bytes, valid UTF-8 or not; NUL separates; no terminator needed:
     * len stops at "x", the "yz" after it is never read as part of the text. */
    const char b[] = "caf\xc3\xa9\0\xff\xfe xyz";
    CHECK(hash_tokenize(b, 10, t, 8) == 3);
    CHECK(t[0].start == 0 && t[0].len == 5);
    CHECK(t[1].start == 6 && t[1].len == 2);
    CHECK(t[2].start == 9 && t[2].len == 1);

    /* The edges of the word-byte classes: 0x7f, '@', '[', '`', '{', '/', ':' separate,
     * 0x80 does not. (The literal is split so "\x80b" is not read as one hex escape.) */
    const char e[] = "a\x80"
                     "b\x7f"
                     "0@9[Z`z{A/a:0";
    CHECK(hash_tokenize(e, sizeof(e) - 1, t, 8) == 8);
    CHECK(t[0].start == 0 && t[0].len == 3);
    CHECK(t[7].start == 16 && t[7].len == 1);

    /* cap 0 counts; a short cap writes only cap tokens and still returns the count. */
    s = "one two three four five";
    CHECK(hash_tokenize(s, strlen(s), NULL, 0) == 5);
    t[2].start = 999;
    CHECK(hash_tokenize(s, strlen(s), t, 2) == 5);
    CHECK(t[0].start == 0 && t[1].start == 4 && t[2].start == 999);
}

static void test_ngram_bucket(void)
{
    const char *s = "Hello, WORLD";
    const uint32_t dims = 1000;
    struct hash_token t[2];
    float out[1000];

    CHECK(hash_tokenize(s, strlen(s), t, 2) == 2);
    uint32_t b0 = hash_ngram_bucket(s, t, 0, 1, dims);
    uint32_t b1 = hash_ngram_bucket(s, t, 1, 1, dims);
    uint32_t b01 = hash_ngram_bucket(s, t, 0, 2, dims);
    CHECK(b0 == model_fnv1a32("hello", 5) % dims);
    CHECK(b1 == model_fnv1a32("world", 5) % dims);
    CHECK(b01 == model_fnv1a32("hello world", 11) % dims);
    CHECK(hash_ngram_bucket(s, t, 0, 2, 0) == 0);

    /* The featurizer puts 1 into each of the three buckets, then normalizes. */
    float want[1000] = {0};
    want[b0] += 1.0f;
    want[b1] += 1.0f;
    want[b01] += 1.0f;
    double norm = 0.0;
    for (uint32_t k = 0; k < dims; k++)
        norm += (double)want[k] * want[k];
    norm = sqrt(norm);
    model_hash_text(s, strlen(s), dims, 2, out);
    size_t bad = 0;
    for (uint32_t k = 0; k < dims; k++)
        bad += !(fabs((double)out[k] - want[k] / norm) <= TOL);
    CHECK(bad == 0);
}

static void test_edges(void)
{
    const char *s = "to be or not to be";
    float a[64], b[64];

    /* dims 0 touches nothing (out may be NULL); NULL text with len 0 gives zeros. */
    model_hash_text(s, strlen(s), 0, 2, NULL);
    a[0] = 1.0f;
    model_hash_text(NULL, 0, 64, 2, a);
    CHECK(a[0] == 0.0f);

    /* ngrams outside 1..3 is clamped. */
    model_hash_text(s, strlen(s), 64, 7, a);
    model_hash_text(s, strlen(s), 64, 3, b);
    CHECK(memcmp(a, b, sizeof(a)) == 0);
    model_hash_text(s, strlen(s), 64, 0, a);
    model_hash_text(s, strlen(s), 64, 1, b);
    CHECK(memcmp(a, b, sizeof(a)) == 0);

    /* The result has unit norm. */
    double n2 = 0.0;
    for (int k = 0; k < 64; k++)
        n2 += (double)b[k] * b[k];
    CHECK_NEAR(n2, 1.0, 1e-6);

    /* Only A-Z fold: "HeLLo" and "hello" agree, "É" (C3 89) and "é" (C3 A9) do not. */
    float c[1000], d[1000];
    model_hash_text("HeLLo", 5, 1000, 1, c);
    model_hash_text("hello", 5, 1000, 1, d);
    CHECK(memcmp(c, d, sizeof(c)) == 0);
    CHECK(model_fnv1a32("\xc3\x89", 2) % 1000 != model_fnv1a32("\xc3\xa9", 2) % 1000);
    model_hash_text("\xc3\x89", 2, 1000, 1, c);
    model_hash_text("\xc3\xa9", 2, 1000, 1, d);
    CHECK(memcmp(c, d, sizeof(c)) != 0);
}

int main(void)
{
    vectors = load_vectors();
    CHECK(vectors != NULL);
    RUN(test_fnv_published);
    if (vectors != NULL) {
        RUN(test_fnv_vectors);
        RUN(test_vectors);
    }
    RUN(test_tokenize);
    RUN(test_ngram_bucket);
    RUN(test_edges);
    json_decref(vectors);
    return test_finish();
}
