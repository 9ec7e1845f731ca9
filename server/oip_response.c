/*
 * server/oip_response.c - Open Inference Protocol v2 responses: the json_t document
 * (oip_response_build, for the CLI and binary outputs) and the same text written directly
 * (oip_response_encode's fast path). Requests are parsed in oip.c.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/json_dump.h"
#include "common/json_write.h"
#include "oip.h"

/* ------------------------------------------------------------------------------------------
 * Responses
 * ---------------------------------------------------------------------------------------- */

static json_t *tensor_json(const char *name, const char *datatype, size_t d0, size_t d1, bool two_d,
                           json_t *data)
{
    json_t *shape = two_d ? json_pack("[II]", (json_int_t)d0, (json_int_t)d1)
                          : json_pack("[I]", (json_int_t)d0);
    if (shape == NULL || data == NULL) {
        json_decref(shape);
        json_decref(data);
        return NULL;
    }
    return json_pack("{s:s, s:s, s:o, s:o}", "name", name, "datatype", datatype, "shape", shape,
                     "data", data);
}

static json_t *floats_json(const float *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < n; i++)
        if (json_array_append_new(a, json_real(v[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

static int append_new(json_t *arr, json_t *v)
{
    if (v == NULL)
        return -1;
    return json_array_append_new(arr, v);
}

/* Whether class a ranks before class b: the larger value, ties to the lower index; NaN after
 * every number. */
static bool ranks_before(const float *p, size_t a, size_t b)
{
    if (isnan(p[a]) || isnan(p[b]))
        return !isnan(p[a]) || (isnan(p[b]) && a < b);
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}

/* Restores the heap idx[0..n) (the class ranking last at the root) below position i. */
static void heap_sift(const float *p, size_t *idx, size_t n, size_t i)
{
    for (;;) {
        size_t worst = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_before(p, idx[worst], idx[l]))
            worst = l;
        if (r < n && ranks_before(p, idx[worst], idx[r]))
            worst = r;
        if (worst == i)
            return;
        size_t t = idx[i];
        idx[i] = idx[worst];
        idx[worst] = t;
        i = worst;
    }
}

/*
 * Indices of the k (1..C) largest of p (C), largest first (ties: lower index first; NaN last).
 * O(C log k) with no allocation: idx itself holds a heap of the best k seen, then is sorted
 * (a request may ask for top_k up to the number of classes, which may be 100,000).
 */
static void top_k_indices(const float *p, size_t C, int k, size_t *idx)
{
    size_t n = 0, K = (size_t)k;
    for (size_t c = 0; c < C; c++) {
        if (n < K) {
            idx[n++] = c;
            if (n == K)
                for (size_t i = K / 2; i-- > 0;)
                    heap_sift(p, idx, K, i);
        } else if (ranks_before(p, c, idx[0])) {
            idx[0] = c;
            heap_sift(p, idx, K, 0);
        }
    }
    if (n < K) /* k > C: not reached (the parser caps top_k at C) */
        for (size_t i = n / 2; i-- > 0;)
            heap_sift(p, idx, n, i);
    for (size_t m = n; m > 1; m--) { /* heap sort: the last-ranked moves to the end */
        size_t t = idx[0];
        idx[0] = idx[m - 1];
        idx[m - 1] = t;
        heap_sift(p, idx, m - 1, 0);
    }
}

json_t *oip_response_build(const struct model *m, const char *model_name, const char *model_version,
                           const struct oip_request *req, const float *out)
{
    const struct model_info *info = model_get_info(m);
    size_t B = req->batch, O = info->out_size;
    json_t *res = json_pack("{s:s, s:s}", "model_name", model_name, "model_version", model_version);
    json_t *outs = json_array();
    size_t *idx = calloc(req->top_k > 0 ? (size_t)req->top_k : 1, sizeof *idx);
    if (res == NULL || outs == NULL || idx == NULL)
        goto fail;
    if (req->id != NULL && json_object_set_new(res, "id", json_string(req->id)) != 0)
        goto fail;
    if (req->outputs & OIP_OUT_OUTPUT)
        if (append_new(outs, tensor_json("output", "FP32", B, O, true, floats_json(out, B * O))))
            goto fail;
    if (req->outputs & OIP_OUT_PROBABILITIES)
        if (append_new(outs,
                       tensor_json("probabilities", "FP32", B, O, true, floats_json(out, B * O))))
            goto fail;
    if (req->outputs & OIP_OUT_LABEL) {
        json_t *labels = json_array();
        for (size_t r = 0; labels != NULL && r < B; r++) {
            size_t best = 0;
            top_k_indices(out + r * O, O, 1, &best);
            if (json_array_append_new(labels, json_string(info->labels[best])) != 0) {
                json_decref(labels);
                labels = NULL;
            }
        }
        if (append_new(outs, tensor_json("label", "BYTES", B, 0, false, labels)))
            goto fail;
    }
    if (req->outputs & (OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES)) {
        size_t k = (size_t)req->top_k;
        json_t *labels = json_array(), *probs = json_array();
        for (size_t r = 0; labels != NULL && probs != NULL && r < B; r++) {
            top_k_indices(out + r * O, O, req->top_k, idx);
            for (size_t j = 0; j < k; j++) {
                json_array_append_new(labels, json_string(info->labels[idx[j]]));
                json_array_append_new(probs, json_real(out[r * O + idx[j]]));
            }
        }
        if (labels == NULL || probs == NULL || json_array_size(probs) != B * k ||
            json_array_size(labels) != B * k) {
            json_decref(labels);
            json_decref(probs);
            goto fail;
        }
        if (!(req->outputs & OIP_OUT_TOP_K_LABELS)) {
            json_decref(labels);
            labels = NULL;
        }
        if (!(req->outputs & OIP_OUT_TOP_K_PROBABILITIES)) {
            json_decref(probs);
            probs = NULL;
        }
        if (labels != NULL &&
            append_new(outs, tensor_json("top_k_labels", "BYTES", B, k, true, labels))) {
            json_decref(probs); /* not handed over yet: ours to free */
            goto fail;
        }
        if (probs != NULL &&
            append_new(outs, tensor_json("top_k_probabilities", "FP32", B, k, true, probs)))
            goto fail;
    }
    if (json_object_set_new(res, "outputs", outs) != 0) {
        outs = NULL;
        goto fail;
    }
    free(idx);
    return res;
fail:
    free(idx);
    json_decref(outs);
    json_decref(res);
    return NULL;
}

/* Appends the binary form of a JSON output's data (FP32 numbers or BYTES strings) to buf. */
static int append_binary(const json_t *tensor, char **buf, size_t *len, size_t *cap)
{
    const json_t *data = json_object_get(tensor, "data");
    bool bytes = strcmp(json_string_value(json_object_get(tensor, "datatype")), "BYTES") == 0;
    for (size_t i = 0; i < json_array_size(data); i++) {
        const json_t *v = json_array_get(data, i);
        size_t n = bytes ? 4 + json_string_length(v) : 4;
        if (*len + n > *cap) {
            size_t nc = *cap * 2 + n;
            char *nb = realloc(*buf, nc);
            if (nb == NULL)
                return INF_ENOMEM;
            *buf = nb;
            *cap = nc;
        }
        unsigned char *p = (unsigned char *)*buf + *len;
        uint32_t word;
        if (bytes) {
            word = (uint32_t)json_string_length(v);
        } else {
            float f = (float)json_number_value(v);
            memcpy(&word, &f, 4);
        }
        for (int k = 0; k < 4; k++)
            p[k] = (unsigned char)(word >> (8 * k));
        if (bytes)
            memcpy(p + 4, json_string_value(v), json_string_length(v));
        *len += n;
    }
    return INF_OK;
}

static unsigned output_bit(const char *name)
{
    if (strcmp(name, "probabilities") == 0)
        return OIP_OUT_PROBABILITIES;
    if (strcmp(name, "label") == 0)
        return OIP_OUT_LABEL;
    if (strcmp(name, "output") == 0)
        return OIP_OUT_OUTPUT;
    if (strcmp(name, "top_k_labels") == 0)
        return OIP_OUT_TOP_K_LABELS;
    return OIP_OUT_TOP_K_PROBABILITIES;
}

/* ------------------------------------------------------------------------------------------
 * Responses written directly: the text json_dump_checked(oip_response_build(...),
 * JSON_COMPACT | JSON_REAL_PRECISION(9)) gives, byte for byte, without a json_t per number.
 * What is copied from jansson 2.14 is named where it is used: dump.c (member order is insertion
 * order, compact separators, dump_string's escapes), strconv.c (jsonp_dtostr), utf.c (which
 * strings json_string() accepts). tests/server/test_oip_fast.c holds the two paths side by side.
 * ---------------------------------------------------------------------------------------- */

/* The response text: grows by doubling up to JSON_DUMP_MAX bytes (json_dump_checked()'s cap);
 * the first failure latches and later writes do nothing. */
struct resp_buf {
    char *data; /* cap bytes from malloc, or NULL */
    size_t len; /* bytes written, without a NUL */
    size_t cap; /* > len once data != NULL: room for the NUL */
    int rc;     /* INF_OK, or INF_ENOMEM once anything failed */
};

/* Room for n more bytes and the NUL: where to write them, or NULL (failure latched). */
static char *resp_room(struct resp_buf *b, size_t n)
{
    size_t need;
    if (b->rc != INF_OK)
        return NULL;
    if (!size_add_ok(b->len, n, &need) || need > JSON_DUMP_MAX) {
        b->rc = INF_ENOMEM;
        return NULL;
    }
    if (need + 1 > b->cap) {
        /* the first call sizes the buffer from resp_estimate(); later ones double it */
        size_t cap = b->cap != 0 ? b->cap : need + 1;
        while (cap < need + 1)
            cap = cap > (JSON_DUMP_MAX + 1) / 2 ? JSON_DUMP_MAX + 1 : cap * 2;
        char *grown = realloc(b->data, cap);
        if (grown == NULL) {
            b->rc = INF_ENOMEM;
            return NULL;
        }
        b->data = grown;
        b->cap = cap;
    }
    return b->data + b->len;
}

static void resp_put(struct resp_buf *b, const char *s, size_t n)
{
    char *p = resp_room(b, n);
    if (p != NULL) {
        memcpy(p, s, n);
        b->len += n;
    }
}

#define RESP_LIT(b, lit) resp_put((b), (lit), sizeof(lit) - 1)

/* s as a JSON string: dump_string() without JSON_ENSURE_ASCII or JSON_ESCAPE_SLASH
 * (common/json_write.h). A NULL s or one that is not UTF-8 is a failure, as in
 * json_string()/json_pack("s"). */
static void resp_put_string(struct resp_buf *b, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0, esc = 0;
    if (s == NULL || !json_write_string_size(s, n, false, JSON_DUMP_MAX, &esc)) {
        b->rc = INF_ENOMEM;
        return;
    }
    char *p = resp_room(b, esc + 2);
    if (p == NULL)
        return;
    *p++ = '"';
    p = json_write_string(p, s, n, false);
    *p = '"';
    b->len += esc + 2;
}

/* v as JSON_INTEGER_FORMAT ("%lld") prints it. */
static void resp_put_int(struct resp_buf *b, long long v)
{
    char tmp[JSON_WRITE_INT_CHARS];
    const char *p = json_write_int(v, tmp + sizeof tmp);
    resp_put(b, p, (size_t)(tmp + sizeof tmp - p));
}

/*
 * f (finite) as jansson 2.14 writes json_real((double)f) under JSON_REAL_PRECISION(9): strconv.c
 * jsonp_dtostr() prints "%.9g", turns the locale's decimal point into '.', appends ".0" when the
 * text has neither '.' nor 'e', and drops the exponent's '+' and leading zeros ("1e+20" ->
 * "1e20", "1.5e-07" -> "1.5e-7"). Writes at most 31 bytes and a NUL to out; returns the length.
 */
static int real_format_printf(char *out, float f)
{
    int n = snprintf(out, 32, "%.9g", (double)f);
    if (n < 0 || n >= 32)
        return -1;
    for (int i = 0; i < n; i++)
        if ((out[i] < '0' || out[i] > '9') && out[i] != '-' && out[i] != '+' && out[i] != 'e') {
            out[i] = '.'; /* the locale's decimal point; a no-op in the "C" locale */
            break;
        }
    char *e = memchr(out, 'e', (size_t)n);
    if (e == NULL && memchr(out, '.', (size_t)n) == NULL) {
        memcpy(out + n, ".0", 3);
        return n + 2;
    }
    if (e != NULL) {
        char *start = e + 1, *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, (size_t)(out + n - end) + 1);
            n -= (int)(end - start);
        }
    }
    return n;
}

/*
 * The same text as real_format_printf() without printf, or -1 when it cannot be sure of it:
 * the caller then takes real_format_printf(). "%.9g" keeps N, the 9 significant digits of |f|
 * rounded to nearest, and their decimal exponent X. Here N comes from d = |f| * 10^(8 - X) in
 * doubles: the powers of ten up to 1e22 are exact, so d is off by at most two roundings (2^-52
 * relative, < 3e-7 absolute for d < 1.1e9). That decides the rounding unless d is within 1e-6
 * of a half (ties and near-ties go to printf, which rounds exact halves to even). X itself is
 * only in doubt when d is within rounding of 10^8 or 10^9, and there both candidates round to
 * the same power of ten (99999999.9999999 with one exponent is 999999999.999999 with the
 * next, and both print as 1 followed by zeros). Covers roughly 1e-36 <= |f| < 1e31; denormals
 * and larger exponents go to printf. Needs IEEE doubles without excess precision (checked
 * below) and the default rounding mode (the server never changes it). Every finite float was
 * checked against real_format_printf(); see tests/server/test_oip_fast.c for the checks kept.
 */
static int real_format_fast(char *out, float f)
{
#if FLT_EVAL_METHOD == 0 && !defined(__FAST_MATH__)
    static const double pow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    double a = fabs((double)f);
    char *p = out;
    if (signbit(f))
        *p++ = '-';
    if (a == 0) {
        memcpy(p, "0.0", 4);
        return (int)(p - out) + 3;
    }
    int e2;
    frexp(a, &e2); /* a in [2^(e2-1), 2^e2): X is floor((e2 - 1) log10 2) or one more */
    int x = (int)floor((e2 - 1) * 0.30102999566398120);
    double d = 0;
    for (int tries = 0; tries < 2; tries++) {
        int k = 8 - x;
        if (k < -22 || k > 44)
            return -1;
        d = k < 0 ? a / pow10[-k] : k <= 22 ? a * pow10[k] : a * 1e22 * pow10[k - 22];
        if (d >= 1e9 && tries == 0)
            x++;
        else if (d < 1e8 && tries == 0)
            x--; /* only when d rounded to just under 10^8 */
        else
            break;
    }
    double fl = floor(d);
    if (fabs(d - fl - 0.5) < 1e-6)
        return -1;
    uint64_t n = (uint64_t)fl + (d - fl > 0.5);
    if (n < 100000000 || n > 1000000000)
        return -1;
    if (n == 1000000000) {
        n = 100000000;
        x++;
    }
    char dig[9];
    for (int i = 8; i >= 0; i--, n /= 10)
        dig[i] = (char)('0' + n % 10);
    int nd = 9; /* significant digits left once trailing zeros go, as %g drops them */
    while (dig[nd - 1] == '0')
        nd--;
    if (x < -4 || x >= 9) { /* %e: d.dddde[-]X */
        *p++ = dig[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)nd - 1);
            p += nd - 1;
        }
        *p++ = 'e';
        if (x < 0)
            *p++ = '-';
        int ax = x < 0 ? -x : x;
        if (ax >= 10)
            *p++ = (char)('0' + ax / 10);
        *p++ = (char)('0' + ax % 10);
    } else if (x >= 0) { /* %f: X + 1 digits before the point; ".0" when none after */
        memcpy(p, dig, (size_t)x + 1);
        p += x + 1;
        *p++ = '.';
        if (nd > x + 1) {
            memcpy(p, dig + x + 1, (size_t)(nd - x - 1));
            p += nd - x - 1;
        } else {
            *p++ = '0';
        }
    } else { /* %f below 1: "0.", -X - 1 zeros, the digits */
        memcpy(p, "0.000", (size_t)(1 - x));
        p += 1 - x;
        memcpy(p, dig, (size_t)nd);
        p += nd;
    }
    *p = '\0';
    return (int)(p - out);
#else
    (void)out;
    (void)f;
    return -1;
#endif
}

/* f as json_real((double)f) prints under JSON_REAL_PRECISION(9); a failure if f is not finite
 * (json_real() refuses NaN and infinities). */
static void resp_put_real(struct resp_buf *b, float f)
{
    char tmp[32];
    int n = -1;
    if (isfinite(f)) {
        n = real_format_fast(tmp, f);
        if (n < 0)
            n = real_format_printf(tmp, f);
    }
    if (n < 0) {
        b->rc = INF_ENOMEM;
        return;
    }
    resp_put(b, tmp, (size_t)n);
}

/* Opens one element of "outputs" up to the data array: tensor_json()'s members in order. */
static void resp_tensor_open(struct resp_buf *b, bool *first, const char *name,
                             const char *datatype, size_t d0, size_t d1, bool two_d)
{
    if (!*first)
        RESP_LIT(b, ",");
    *first = false;
    RESP_LIT(b, "{\"name\":");
    resp_put_string(b, name);
    RESP_LIT(b, ",\"datatype\":");
    resp_put_string(b, datatype);
    RESP_LIT(b, ",\"shape\":[");
    resp_put_int(b, (long long)(json_int_t)d0);
    if (two_d) {
        RESP_LIT(b, ",");
        resp_put_int(b, (long long)(json_int_t)d1);
    }
    RESP_LIT(b, "],\"data\":[");
}

static void resp_put_reals(struct resp_buf *b, const float *v, size_t n)
{
    for (size_t i = 0; i < n && b->rc == INF_OK; i++) {
        if (i > 0)
            RESP_LIT(b, ",");
        resp_put_real(b, v[i]);
    }
}

/* A first guess at the text's size, so that most responses take one allocation. */
static size_t resp_estimate(const char *model_name, const char *model_version,
                            const struct oip_request *req, size_t O)
{
    size_t est = 128 + (model_name ? strlen(model_name) : 0) +
                 (model_version ? strlen(model_version) : 0) + (req->id ? strlen(req->id) : 0);
    size_t floats = 0, labels = 0, n;
    if (size_mul_ok(req->batch, O, &n)) {
        floats = ((req->outputs & OIP_OUT_OUTPUT) ? n : 0) +
                 ((req->outputs & OIP_OUT_PROBABILITIES) ? n : 0);
        labels = (req->outputs & OIP_OUT_LABEL) ? req->batch : 0;
    }
    if (req->top_k > 0 && size_mul_ok(req->batch, (size_t)req->top_k, &n)) {
        floats += (req->outputs & OIP_OUT_TOP_K_PROBABILITIES) ? n : 0;
        labels += (req->outputs & OIP_OUT_TOP_K_LABELS) ? n : 0;
    }
    /* at most 15 characters and a comma per number ("-1.17549435e-38"); labels vary */
    if (floats > JSON_DUMP_MAX / 16 || labels > JSON_DUMP_MAX / 32)
        return JSON_DUMP_MAX;
    est += 5 * 96 + floats * 16 + labels * 32;
    return est < JSON_DUMP_MAX ? est : JSON_DUMP_MAX;
}

/*
 * Writes oip_response_build()'s document to b, member by member in the same order, and fails
 * exactly where it returns NULL: a name, version, id or label that is not UTF-8, a non-finite
 * number in an output it builds. With top_k it builds both top_k arrays even when only one is
 * asked for, so the other one's labels and numbers are checked here too.
 */
static int response_write(const struct model *m, const char *model_name, const char *model_version,
                          const struct oip_request *req, const float *out, struct resp_buf *b)
{
    const struct model_info *info = model_get_info(m);
    size_t B = req->batch, O = info->out_size;
    size_t *idx = NULL;
    bool first = true;
    RESP_LIT(b, "{\"model_name\":");
    resp_put_string(b, model_name);
    RESP_LIT(b, ",\"model_version\":");
    resp_put_string(b, model_version);
    if (req->id != NULL) {
        RESP_LIT(b, ",\"id\":");
        resp_put_string(b, req->id);
    }
    RESP_LIT(b, ",\"outputs\":[");
    if (req->outputs & OIP_OUT_OUTPUT) {
        resp_tensor_open(b, &first, "output", "FP32", B, O, true);
        resp_put_reals(b, out, B * O);
        RESP_LIT(b, "]}");
    }
    if (req->outputs & OIP_OUT_PROBABILITIES) {
        resp_tensor_open(b, &first, "probabilities", "FP32", B, O, true);
        resp_put_reals(b, out, B * O);
        RESP_LIT(b, "]}");
    }
    if (req->outputs & OIP_OUT_LABEL) {
        resp_tensor_open(b, &first, "label", "BYTES", B, 0, false);
        for (size_t r = 0; r < B && b->rc == INF_OK; r++) {
            size_t best = 0;
            top_k_indices(out + r * O, O, 1, &best);
            if (r > 0)
                RESP_LIT(b, ",");
            resp_put_string(b, info->labels[best]);
        }
        RESP_LIT(b, "]}");
    }
    if (req->outputs & (OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES)) {
        size_t k = (size_t)req->top_k;
        idx = calloc(k > 0 ? k : 1, sizeof *idx);
        if (idx == NULL)
            b->rc = INF_ENOMEM;
        bool want_labels = req->outputs & OIP_OUT_TOP_K_LABELS;
        size_t label_size;
        bool want_probs = req->outputs & OIP_OUT_TOP_K_PROBABILITIES;
        if (want_labels)
            resp_tensor_open(b, &first, "top_k_labels", "BYTES", B, k, true);
        for (size_t r = 0; r < B && b->rc == INF_OK; r++) {
            top_k_indices(out + r * O, O, req->top_k, idx);
            for (size_t j = 0; j < k; j++) {
                const char *label = info->labels[idx[j]];
                if (want_labels) {
                    if (r > 0 || j > 0)
                        RESP_LIT(b, ",");
                    resp_put_string(b, label);
                } else if (label == NULL || !json_write_string_size(label, strlen(label), false,
                                                                    JSON_DUMP_MAX, &label_size)) {
                    b->rc = INF_ENOMEM;
                }
                if (!want_probs && !isfinite(out[r * O + idx[j]]))
                    b->rc = INF_ENOMEM;
            }
        }
        if (want_labels)
            RESP_LIT(b, "]}");
        if (want_probs) {
            resp_tensor_open(b, &first, "top_k_probabilities", "FP32", B, k, true);
            for (size_t r = 0; r < B && b->rc == INF_OK; r++) {
                top_k_indices(out + r * O, O, req->top_k, idx);
                for (size_t j = 0; j < k; j++) {
                    if (r > 0 || j > 0)
                        RESP_LIT(b, ",");
                    resp_put_real(b, out[r * O + idx[j]]);
                }
            }
            RESP_LIT(b, "]}");
        }
    }
    RESP_LIT(b, "]}");
    free(idx);
    return b->rc;
}

int oip_response_encode(const struct model *m, const char *model_name, const char *model_version,
                        const struct oip_request *req, const float *out, char **buf, size_t *len,
                        size_t *json_len)
{
    if (req->binary_outputs == 0) {
        struct resp_buf b = {0};
        size_t est = resp_estimate(model_name, model_version, req, model_get_info(m)->out_size);
        if (resp_room(&b, est) == NULL ||
            response_write(m, model_name, model_version, req, out, &b) != INF_OK) {
            free(b.data);
            return INF_ENOMEM;
        }
        b.data[b.len] = '\0';
        *buf = b.data;
        *len = b.len;
        *json_len = b.len;
        return INF_OK;
    }
    json_t *res = oip_response_build(m, model_name, model_version, req, out);
    char *bin = NULL, *text = NULL;
    size_t blen = 0, bcap = 0;
    int rc = INF_ENOMEM;
    if (res == NULL)
        goto out;
    if (req->binary_outputs != 0) {
        json_t *outs = json_object_get(res, "outputs");
        for (size_t i = 0; i < json_array_size(outs); i++) {
            json_t *t = json_array_get(outs, i);
            if (!(req->binary_outputs & output_bit(json_string_value(json_object_get(t, "name")))))
                continue;
            size_t before = blen;
            if (append_binary(t, &bin, &blen, &bcap) != INF_OK)
                goto out;
            json_object_del(t, "data");
            if (json_object_set_new(
                    t, "parameters",
                    json_pack("{s:I}", "binary_data_size", (json_int_t)(blen - before))) != 0)
                goto out; /* a 200 without binary_data_size could not be parsed */
        }
    }
    text = json_dump_checked(res, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (text == NULL)
        goto out;
    size_t tl = strlen(text);
    char *all = realloc(text, tl + blen + 1);
    if (all == NULL)
        goto out;
    text = all;
    if (blen > 0)
        memcpy(text + tl, bin, blen);
    text[tl + blen] = '\0';
    *buf = text;
    *len = tl + blen;
    *json_len = tl;
    text = NULL;
    rc = INF_OK;
out:
    free(text);
    free(bin);
    json_decref(res);
    return rc;
}
