/*
 * tests/common/test_json_dump.c - json_dump_checked(): complete JSON or NULL, never a fragment.
 *
 *   same text     without failures the text is byte for byte json_dumps()'s, for compact,
 *                 indented, sorted, ordered, ASCII-only and slash-escaping flags.
 *   every N       jansson's allocator (json_set_alloc_funcs) fails its Nth call, for every N
 *                 from 1 to K+1 (K: the allocations of a clean dump), while a nested object
 *                 with long, escaped and sorted keys is dumped: the result is NULL exactly
 *                 when an allocation failed, and otherwise parses back equal to the original;
 *                 nothing leaks. Random documents get the same sweep. json_dumps() under the
 *                 same sweep is counted, not asserted: the number of invalid texts it returns
 *                 shows that the sweep reaches jansson's unchecked key writes.
 *   refusals      a key that is not UTF-8 (inserted with *_nocheck: no allocation fails, the
 *                 text check must catch it), JSON_EMBED, NULL, a scalar without
 *                 JSON_ENCODE_ANY, a circular reference, nesting past JSON_DUMP_MAX_DEPTH.
 */
#include "tests/test.h"

#include <stdbool.h>
#include <stdint.h>

#include "common/json_dump.h"

/* ------------------------------------------------------------------------------------------
 * A jansson allocator that fails its Nth call (malloc has no context: file-level state)
 * ---------------------------------------------------------------------------------------- */

static struct {
    long fail_at; /* 1-based call to fail; 0: none */
    long calls;   /* calls since counting_arm() */
    long failed;  /* calls that returned NULL */
    long live;    /* blocks allocated here and not yet freed */
} alloc_state;

static void *counting_malloc(size_t n)
{
    if (++alloc_state.calls == alloc_state.fail_at) {
        alloc_state.failed++;
        return NULL;
    }
    void *p = malloc(n);
    if (p != NULL)
        alloc_state.live++;
    return p;
}

/* Frees blocks of either origin: objects built before arming came from plain malloc. Only the
 * blocks allocated while armed are counted, so only frees of NULL are told apart. */
static void counting_free(void *p)
{
    if (p != NULL)
        alloc_state.live--;
    free(p);
}

static void counting_arm(long fail_at)
{
    alloc_state.fail_at = fail_at;
    alloc_state.calls = 0;
    alloc_state.failed = 0;
    alloc_state.live = 0;
    json_set_alloc_funcs(counting_malloc, counting_free);
}

static void counting_disarm(void)
{
    json_set_alloc_funcs(malloc, free);
}

/* ------------------------------------------------------------------------------------------
 * Documents
 * ---------------------------------------------------------------------------------------- */

/* A key of n bytes: long keys make the key write itself grow the buffer, which is the write
 * whose failure json_dumps() ignores. */
static json_t *long_key_object(size_t n, char fill)
{
    char key[600];
    if (n >= sizeof key)
        n = sizeof key - 1;
    memset(key, fill, n);
    key[n] = '\0';
    return json_pack("{s:i}", key, (int)n);
}

/* Nested objects and arrays; keys that need escaping and sorting (inserted out of order), long
 * keys, non-ASCII and astral characters, reals, integers and literals. */
static json_t *nested_doc(void)
{
    json_t *doc = json_pack(
        "{s:s, s:i, s:f, s:b, s:n, s:[i,f,s,{s:s,s:[]}], s:{s:{s:{s:s}}}, s:s, s:s, s:{}}",
        "zeta \"quoted\" \\ back", "tab\there, newline\nthere", "id", 42, "alpha/slash", 0.1,
        "\xc3\xa9t\xc3\xa9", 1, "ctrl\x01\x1f", "arr", 1, -2.5e-7, "\xf0\x9f\x98\x80 emoji", "k",
        "v\"", "empty", "deep", "d1", "d2", "leaf", "line1\nline2\r\n", "A", "upper first", "",
        "the empty key", "empty object");
    if (doc == NULL)
        return NULL;
    for (size_t i = 0; i < 12; i++) {
        char k[32];
        snprintf(k, sizeof k, "long%02zu", 11 - i);
        json_object_set_new(doc, k, long_key_object(40 + i * 45, (char)('a' + i)));
    }
    json_object_set_new(doc, "big", json_integer(INT64_MAX));
    json_object_set_new(doc, "neg", json_real(-1e300));
    return doc;
}

/* xorshift64 */
static uint64_t rnd_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* A string of up to 89 bytes, most of them needing an escape; valid UTF-8. */
static void random_key(uint64_t *s, char *out, size_t cap)
{
    static const char alphabet[] = "ab\"\\/\n\x01 z\xc3\xa9";
    size_t n = (size_t)(rnd_next(s) % 90);
    size_t len = 0;
    for (size_t i = 0; i < n && len + 3 < cap; i++) {
        size_t k = (size_t)(rnd_next(s) % (sizeof alphabet - 1));
        if (alphabet[k] == '\xc3') { /* keep the two-byte character whole */
            out[len++] = '\xc3';
            out[len++] = '\xa9';
        } else if (alphabet[k] != '\xa9') {
            out[len++] = alphabet[k];
        }
    }
    out[len] = '\0';
}

/* A random document, depth at most 4; deterministic for a seed. Reals are exact in 7
 * significant digits, so that JSON_REAL_PRECISION(9) round-trips them. */
static json_t *random_doc(uint64_t *s, int depth)
{
    unsigned kind = depth >= 4 ? 2 + (unsigned)(rnd_next(s) % 4) : (unsigned)(rnd_next(s) % 6);
    switch (kind) {
        case 0: {
            json_t *o = json_object();
            size_t n = (size_t)(rnd_next(s) % 7);
            for (size_t i = 0; i < n; i++) {
                char k[200];
                random_key(s, k, sizeof k);
                json_object_set_new(o, k, random_doc(s, depth + 1));
            }
            return o;
        }
        case 1: {
            json_t *a = json_array();
            size_t n = (size_t)(rnd_next(s) % 5);
            for (size_t i = 0; i < n; i++)
                json_array_append_new(a, random_doc(s, depth + 1));
            return a;
        }
        case 2: {
            char k[200];
            random_key(s, k, sizeof k);
            return json_string(k);
        }
        case 3:
            return json_integer((json_int_t)(rnd_next(s) % 2000000) - 1000000);
        case 4:
            return json_real((double)((int64_t)(rnd_next(s) % 200000) - 100000) / 4.0);
        default:
            return rnd_next(s) % 2 ? json_true() : json_null();
    }
}

/* ------------------------------------------------------------------------------------------
 * The sweep
 * ---------------------------------------------------------------------------------------- */

static const size_t flag_sets[] = {
    JSON_COMPACT | JSON_SORT_KEYS,
    JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENSURE_ASCII,
    JSON_INDENT(3) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17) | JSON_ESCAPE_SLASH,
    JSON_COMPACT | JSON_REAL_PRECISION(9),
};

/* json_dumps() results under the same failures that are not valid JSON (reported at the end). */
static long upstream_bad;

/* True if text parses back equal to doc (parsed with the plain allocator). */
static bool round_trips(const char *text, const json_t *doc, size_t flags)
{
    json_error_t err;
    json_t *back = json_loads(text, (flags & JSON_ENCODE_ANY) ? JSON_DECODE_ANY : 0, &err);
    bool ok = back != NULL && json_equal(back, doc);
    json_decref(back);
    return ok;
}

/* Fails the Nth allocation for N = 1..K+1 around json_dump_checked(doc, flags). Returns K. */
static long sweep(const json_t *doc, size_t flags, const char *what)
{
    char *want = json_dumps(doc, flags);
    CHECK_MSG(want != NULL, "%s: json_dumps failed without a failure", what);

    counting_arm(0);
    char *clean = json_dump_checked(doc, flags);
    long k = alloc_state.calls;
    counting_disarm();
    CHECK_MSG(clean != NULL && want != NULL && strcmp(clean, want) == 0,
              "%s: the text differs from json_dumps():\n%s\n%s", what, clean ? clean : "(null)",
              want ? want : "(null)");
    CHECK_MSG(k > 0, "%s: no allocation counted", what);
    free(clean);

    for (long n = 1; n <= k + 1; n++) {
        counting_arm(n);
        char *got = json_dump_checked(doc, flags);
        long failed = alloc_state.failed, live = alloc_state.live;
        counting_disarm();
        if (failed > 0) {
            CHECK_MSG(got == NULL, "%s N=%ld: an allocation failed, yet a text came back: %s", what,
                      n, got);
            CHECK_MSG(live == 0, "%s N=%ld: %ld blocks leaked", what, n, live);
        } else {
            CHECK_MSG(got != NULL && round_trips(got, doc, flags),
                      "%s N=%ld: nothing failed, yet no equal text: %s", what, n,
                      got ? got : "(null)");
            CHECK_MSG(live == 1, "%s N=%ld: %ld blocks live, want 1 (the text)", what, n, live);
        }
        /* Whatever happened: NULL, or a text that parses back equal. */
        CHECK_MSG(got == NULL || round_trips(got, doc, flags), "%s N=%ld: invalid text: %s", what,
                  n, got);
        free(got);

        /* The same failure in plain json_dumps(), for the record. */
        counting_arm(n);
        char *up = json_dumps(doc, flags);
        counting_disarm();
        if (up != NULL && !round_trips(up, doc, flags))
            upstream_bad++;
        free(up);
    }
    /* N = K+1 fails nothing: the sweep covered the whole call. */
    counting_arm(k + 1);
    char *last = json_dump_checked(doc, flags);
    CHECK_MSG(last != NULL && alloc_state.failed == 0, "%s: N=K+1 did not succeed", what);
    counting_disarm();
    free(last);
    free(want);
    return k;
}

static void test_nested_every_allocation_fails_once(void)
{
    json_t *doc = nested_doc();
    CHECK(doc != NULL);
    if (doc == NULL)
        return;
    for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "nested, flags %#zx", flag_sets[i]);
        sweep(doc, flag_sets[i], what);
    }
    json_decref(doc);
}

static void test_random_every_allocation_fails_once(void)
{
    uint64_t s = 0x9e3779b97f4a7c15u;
    int docs = test_quick() ? 10 : 60;
    for (int d = 0; d < docs; d++) {
        json_t *doc = random_doc(&s, 0);
        size_t flags = flag_sets[(size_t)d % (sizeof flag_sets / sizeof flag_sets[0])];
        if (!json_is_object(doc) && !json_is_array(doc))
            flags |= JSON_ENCODE_ANY;
        char what[64];
        snprintf(what, sizeof what, "random doc %d", d);
        sweep(doc, flags, what);
        json_decref(doc);
    }
}

/* ------------------------------------------------------------------------------------------
 * Refusals and edges
 * ---------------------------------------------------------------------------------------- */

/* A key that is not UTF-8 makes jansson stop the key after its opening quote without failing
 * the call: no allocation fails, only the text check can see it. */
static void test_key_not_utf8(void)
{
    const size_t flags[] = {JSON_COMPACT, JSON_COMPACT | JSON_SORT_KEYS, JSON_INDENT(2)};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        json_t *o = json_pack("{s:i, s:s}", "a", 1, "z", "x");
        CHECK(json_object_set_new_nocheck(o, "b\xff", json_string("y")) == 0);
        char *got = json_dump_checked(o, flags[i]);
        CHECK_MSG(got == NULL, "flags %#zx: %s", flags[i], got);
        free(got);
        char *up = json_dumps(o, flags[i]);
        json_t *back = up ? json_loads(up, 0, NULL) : NULL;
        if (up != NULL && back == NULL)
            fprintf(stderr, "  note: json_dumps() with a non-UTF-8 key returns invalid JSON: %s\n",
                    up);
        json_decref(back);
        free(up);
        json_decref(o);
    }
}

static void test_refusals(void)
{
    json_t *o = json_pack("{s:[i,i]}", "a", 1, 2);
    CHECK(json_dump_checked(NULL, JSON_COMPACT) == NULL);
    CHECK(json_dump_checked(o, JSON_COMPACT | JSON_EMBED) == NULL);

    json_t *str = json_string("x\"y");
    CHECK(json_dump_checked(str, JSON_COMPACT) == NULL); /* not a container */
    char *s = json_dump_checked(str, JSON_ENCODE_ANY);
    CHECK(s != NULL && strcmp(s, "\"x\\\"y\"") == 0);
    free(s);
    json_decref(str);

    const double reals[] = {0.0, -0.0, 1e300, -5e-324, 0.1, 123456789.0};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        json_t *r = json_real(reals[i]);
        char *a = json_dump_checked(r, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        char *b = json_dumps(r, JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
        CHECK_MSG(a != NULL && b != NULL && strcmp(a, b) == 0, "%g: %s vs %s", reals[i],
                  a ? a : "(null)", b ? b : "(null)");
        free(a);
        free(b);
        json_decref(r);
    }

    /* A circular reference: jansson refuses it. */
    json_t *outer = json_array(), *inner = json_array();
    json_array_append(outer, inner);
    json_array_append(inner, outer);
    CHECK(json_dump_checked(outer, JSON_COMPACT) == NULL);
    json_array_clear(inner);
    json_decref(inner);
    json_decref(outer);
    json_decref(o);
}

/* JSON_DUMP_MAX_DEPTH containers nest fine; one more is refused. */
static void test_depth(void)
{
    for (int extra = 0; extra <= 1; extra++) {
        json_t *root = json_array(), *cur = root;
        for (int d = 1; d < JSON_DUMP_MAX_DEPTH + extra; d++) {
            json_t *next = d % 2 ? json_object() : json_array();
            if (json_is_array(cur))
                json_array_append_new(cur, next);
            else
                json_object_set_new(cur, "k", next);
            cur = next;
        }
        char *s = json_dump_checked(root, JSON_COMPACT);
        if (extra == 0)
            CHECK_MSG(s != NULL && round_trips(s, root, 0), "depth %d refused",
                      JSON_DUMP_MAX_DEPTH);
        else
            CHECK_MSG(s == NULL, "depth %d accepted", JSON_DUMP_MAX_DEPTH + 1);
        free(s);
        json_decref(root);
    }
}

int main(void)
{
    RUN(test_nested_every_allocation_fails_once);
    RUN(test_random_every_allocation_fails_once);
    RUN(test_key_not_utf8);
    RUN(test_refusals);
    RUN(test_depth);
    fprintf(stderr, "  note: under the same failures json_dumps() returned %ld invalid texts\n",
            upstream_bad);
    return test_finish();
}
