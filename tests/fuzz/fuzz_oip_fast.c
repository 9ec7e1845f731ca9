/*
 * tests/fuzz/fuzz_oip_fast.c - the fast FP32 parser of inputs[0].data (oip_fast_extract_data)
 * against jansson, the contract of server/oip_fast.h checked on every input.
 *
 * Input: a request body, as for fuzz_oip_request.
 *
 * Properties:
 *   - INF_OK: n >= 1, 1 <= rank <= OIP_FAST_MAX_RANK, dims multiply to n, rest is
 *     NUL-terminated at rest_len; jansson accepts rest exactly when it accepts the body; and
 *     when it does, the body's inputs[0].data is an array of numbers nested as dims whose
 *     values are bit for bit (float)json_number_value() of each element, and rest is the body
 *     with that array replaced by [] (json_equal).
 *   - any other status: nothing written to the outputs; INF_ENOTFOUND leaves e untouched;
 *     INF_EINVAL / INF_ELIMIT set e with a message.
 */
#include <math.h>

#include "server/oip_fast.h"
#include "tests/fuzz/fuzz.h"

#define MAX_ELEMENTS 4096

/* Flattens jansson's data (nested arrays of numbers) into out, checking the nesting against
 * dims[level..rank). Returns the number of elements written, or (size_t)-1 on a mismatch. */
static size_t flatten(const json_t *v, const int64_t *dims, int rank, int level, float *out,
                      size_t pos, size_t cap)
{
    if (level == rank) {
        if (!json_is_number(v) || pos >= cap)
            return (size_t)-1;
        out[pos] = (float)json_number_value(v);
        return pos + 1;
    }
    if (!json_is_array(v) || (int64_t)json_array_size(v) != dims[level])
        return (size_t)-1;
    for (size_t i = 0; i < json_array_size(v) && pos != (size_t)-1; i++)
        pos = flatten(json_array_get(v, i), dims, rank, level + 1, out, pos, cap);
    return pos;
}

static void check_ok(const uint8_t *data, size_t size, const float *vals, size_t n,
                     const int64_t *dims, int rank, const char *rest, size_t rest_len)
{
    FUZZ_CHECK(n >= 1 && n <= MAX_ELEMENTS, "n = %zu", n);
    FUZZ_CHECK(rank >= 1 && rank <= OIP_FAST_MAX_RANK, "rank = %d", rank);
    size_t prod = 1;
    for (int i = 0; i < rank; i++) {
        FUZZ_CHECK(dims[i] >= 1, "dims[%d] = %lld", i, (long long)dims[i]);
        prod *= (size_t)dims[i];
    }
    FUZZ_CHECK(prod == n, "dims multiply to %zu, n = %zu", prod, n);
    FUZZ_CHECK(rest != NULL && rest[rest_len] == '\0', "rest not NUL-terminated");
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(isfinite(vals[i]), "vals[%zu] = %g", i, (double)vals[i]);

    json_error_t je;
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &je);
    json_t *rdoc = json_loadb(rest, rest_len, JSON_REJECT_DUPLICATES, &je);
    FUZZ_CHECK((body == NULL) == (rdoc == NULL), "jansson %s the body but %s rest",
               body ? "accepts" : "rejects", rdoc ? "accepts" : "rejects");
    if (body != NULL) {
        json_t *in0 = json_array_get(json_object_get(body, "inputs"), 0);
        json_t *arr = json_object_get(in0, "data");
        float *ref = malloc(n * sizeof *ref);
        FUZZ_CHECK(ref != NULL, "out of memory");
        size_t got = flatten(arr, dims, rank, 0, ref, 0, n);
        FUZZ_CHECK(got == n, "jansson's data does not nest as the fast path's dims");
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(memcmp(&ref[i], &vals[i], sizeof(float)) == 0,
                       "element %zu: fast %a, jansson %a", i, (double)vals[i], (double)ref[i]);
        free(ref);
        /* rest == body with inputs[0].data := [] */
        json_t *empty = json_array();
        FUZZ_CHECK(empty != NULL && json_object_set_new(in0, "data", empty) == 0, "oom");
        FUZZ_CHECK(json_equal(body, rdoc), "rest is not the body with data replaced by []");
    }
    json_decref(body);
    json_decref(rdoc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    static float sentinel_vals;
    static char sentinel_rest;
    float *vals = &sentinel_vals;
    char *rest = &sentinel_rest;
    size_t n = 12345, rest_len = 54321;
    int64_t dims[OIP_FAST_MAX_RANK] = {7, 7, 7, 7, 7, 7, 7, 7};
    int rank = -7;
    struct err e = {0};
    int rc = oip_fast_extract_data((const char *)data, size, MAX_ELEMENTS, &vals, &n, dims, &rank,
                                   &rest, &rest_len, &e);
    FUZZ_DEBUG("%d %s", rc, e.msg);
    if (rc == INF_OK) {
        FUZZ_CHECK(e.status == 0, "INF_OK with an error set: %s", e.msg);
        check_ok(data, size, vals, n, dims, rank, rest, rest_len);
        free(vals);
        free(rest);
        return 0;
    }
    FUZZ_CHECK(vals == &sentinel_vals && rest == &sentinel_rest && n == 12345 &&
                   rest_len == 54321 && rank == -7 && dims[0] == 7 && dims[7] == 7,
               "status %d wrote an output", rc);
    if (rc == INF_ENOTFOUND)
        FUZZ_CHECK(e.status == 0, "INF_ENOTFOUND set e: %s", e.msg);
    else
        FUZZ_CHECK((rc == INF_EINVAL || rc == INF_ELIMIT) && e.status == rc && e.msg[0] != '\0',
                   "status %d, e.status %d (%s)", rc, e.status, e.msg);
    return 0;
}
