/*
 * server/oip.c - Open Inference Protocol v2 request bodies -> tensors (responses: oip_response.c).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "oip.h"
#include "oip_fast.h"

struct oip_limits oip_limits_default(void)
{
    return (struct oip_limits){
        .max_batch = 1024,
        .max_elements = (size_t)16 << 20,
        .max_text = (size_t)1 << 20,
    };
}

/* ------------------------------------------------------------------------------------------
 * Datatypes
 * ---------------------------------------------------------------------------------------- */

struct dtype_range {
    const char *name;
    bool integer;
    double lo, hi;
};

static const struct dtype_range dtypes[] = {
    {"FP32", false, -3.4028234663852886e38, 3.4028234663852886e38},
    {"FP64", false, -1.7976931348623157e308, 1.7976931348623157e308},
    {"FP16", false, -65504.0, 65504.0},
    {"BF16", false, -3.3895313892515355e38, 3.3895313892515355e38},
    {"UINT8", true, 0, 255},
    {"UINT16", true, 0, 65535},
    {"UINT32", true, 0, 4294967295.0},
    {"UINT64", true, 0, 18446744073709551615.0},
    {"INT8", true, -128, 127},
    {"INT16", true, -32768, 32767},
    {"INT32", true, -2147483648.0, 2147483647.0},
    {"INT64", true, -9223372036854775808.0, 9223372036854775807.0},
    {"BOOL", true, 0, 1},
};

static const struct dtype_range *dtype_find(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return &dtypes[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * JSON tensors
 * ---------------------------------------------------------------------------------------- */

struct flat_ctx {
    const struct dtype_range *dt;
    float *out;
    size_t n, pos;
    const char *what;
    struct err *e;
};

static int put_number(struct flat_ctx *c, const json_t *v)
{
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v))
        d = json_real_value(v);
    else if (json_is_boolean(v) && strcmp(c->dt->name, "BOOL") == 0)
        d = json_is_true(v) ? 1.0 : 0.0;
    else
        return err_set(c->e, INF_EINVAL, "%s[%zu]: expected a number", c->what, c->pos);
    if (!isfinite(d))
        return err_set(c->e, INF_EINVAL, "%s[%zu]: not a finite number", c->what, c->pos);
    if (d < c->dt->lo || d > c->dt->hi || (c->dt->integer && floor(d) != d))
        return err_set(c->e, INF_EINVAL, "%s[%zu]: %g is not a valid %s value", c->what, c->pos, d,
                       c->dt->name);
    if (c->pos >= c->n)
        return err_set(c->e, INF_EINVAL, "%s: more than the %zu elements the shape declares",
                       c->what, c->n);
    c->out[c->pos++] = (float)d;
    return INF_OK;
}

/* Walks data nested as dims[level..rank). */
static int flatten_nested(struct flat_ctx *c, const json_t *v, const int64_t *dims, int rank,
                          int level)
{
    if (level == rank)
        return put_number(c, v);
    if (!json_is_array(v))
        return err_set(c->e, INF_EINVAL, "%s: nesting does not match the shape at depth %d",
                       c->what, level);
    if ((int64_t)json_array_size(v) != dims[level])
        return err_set(c->e, INF_EINVAL,
                       "%s: an array at depth %d has %zu elements, the shape says %lld", c->what,
                       level, json_array_size(v), (long long)dims[level]);
    for (size_t i = 0; i < json_array_size(v); i++) {
        int rc = flatten_nested(c, json_array_get(v, i), dims, rank, level + 1);
        if (rc)
            return rc;
    }
    return INF_OK;
}

int oip_tensor_from_json(const json_t *data, const char *datatype, const int64_t *dims, int rank,
                         size_t n, float *out, const char *what, struct err *e)
{
    struct flat_ctx c = {dtype_find(datatype), out, n, 0, what, e};
    if (c.dt == NULL)
        return err_set(e, INF_EINVAL, "%s: datatype \"%.32s\" is not a numeric datatype", what,
                       datatype);
    if (!json_is_array(data))
        return err_set(e, INF_EINVAL, "%s: expected an array", what);
    size_t top = json_array_size(data);
    bool flat = top == n && (top == 0 || !json_is_array(json_array_get(data, 0)));
    int rc;
    if (flat) {
        for (size_t i = 0; i < top; i++)
            if ((rc = put_number(&c, json_array_get(data, i))))
                return rc;
    } else if ((rc = flatten_nested(&c, data, dims, rank, 0))) {
        return rc;
    }
    if (c.pos != n)
        return err_set(e, INF_EINVAL, "%s: %zu elements, the shape needs %zu", what, c.pos, n);
    return INF_OK;
}

int oip_label_index(const struct model *m, const char *label)
{
    const struct model_info *info = model_get_info(m);
    for (size_t i = 0; i < info->n_labels; i++)
        if (strcmp(info->labels[i], label) == 0)
            return (int)i;
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * Binary tensor data (Triton's extension): little-endian elements after the JSON header
 * ---------------------------------------------------------------------------------------- */

static size_t dtype_bytes(const char *dt)
{
    if (strcmp(dt, "FP64") == 0 || strcmp(dt, "INT64") == 0 || strcmp(dt, "UINT64") == 0)
        return 8;
    if (strcmp(dt, "FP32") == 0 || strcmp(dt, "INT32") == 0 || strcmp(dt, "UINT32") == 0)
        return 4;
    if (strcmp(dt, "FP16") == 0 || strcmp(dt, "BF16") == 0 || strcmp(dt, "INT16") == 0 ||
        strcmp(dt, "UINT16") == 0)
        return 2;
    return 1; /* INT8, UINT8, BOOL */
}

static uint64_t load_le(const unsigned char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15), exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    float v;
    if (exp == 0)
        v = ldexpf((float)man, -24);
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = ldexpf((float)(man | 0x400), (int)exp - 25);
    return sign ? -v : v;
}

/* Converts n elements of datatype dt at p to floats, rejecting non-finite values. */
static int binary_to_floats(const unsigned char *p, size_t n, const char *dt, float *out,
                            struct err *e)
{
    size_t w = dtype_bytes(dt);
    for (size_t i = 0; i < n; i++, p += w) {
        uint64_t u = load_le(p, w);
        double d;
        if (strcmp(dt, "FP32") == 0) {
            uint32_t b = (uint32_t)u;
            float f;
            memcpy(&f, &b, 4);
            d = f;
        } else if (strcmp(dt, "FP64") == 0) {
            memcpy(&d, &u, 8);
        } else if (strcmp(dt, "FP16") == 0) {
            d = half_to_float((uint16_t)u);
        } else if (strcmp(dt, "BF16") == 0) {
            uint32_t b = (uint32_t)u << 16;
            float f;
            memcpy(&f, &b, 4);
            d = f;
        } else if (dt[0] == 'I') { /* sign-extend INT8..INT64 */
            int shift = (int)(64 - 8 * w);
            d = (double)((int64_t)(u << shift) >> shift);
        } else { /* UINT*, BOOL */
            d = (double)u;
            if (strcmp(dt, "BOOL") == 0 && u > 1)
                return err_set(e, INF_EINVAL, "inputs[0] binary data[%zu]: BOOL must be 0 or 1", i);
        }
        if (!isfinite(d) || d > 3.4028234663852886e38 || d < -3.4028234663852886e38)
            return err_set(e, INF_EINVAL, "inputs[0] binary data[%zu]: not a finite FP32 value", i);
        out[i] = (float)d;
    }
    return INF_OK;
}

/* BYTES in binary form: each element a 4-byte little-endian length, then the bytes. */
static int binary_texts(const unsigned char *p, size_t len, size_t B, const struct oip_limits *lim,
                        struct oip_request *req, const struct model *m, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    req->texts = calloc(B, sizeof *req->texts);
    req->text_lens = calloc(B, sizeof *req->text_lens);
    req->x = malloc(B * info->in_size * sizeof *req->x);
    if (!req->texts || !req->text_lens || !req->x)
        return err_set(e, INF_ENOMEM, "out of memory");
    req->batch = B;
    size_t off = 0;
    for (size_t i = 0; i < B; i++) {
        if (len - off < 4)
            return err_set(e, INF_EINVAL, "inputs[0] binary data: element %zu is truncated", i);
        size_t n = (size_t)load_le(p + off, 4);
        off += 4;
        if (n > len - off)
            return err_set(e, INF_EINVAL, "inputs[0] binary data: element %zu is truncated", i);
        if (n > lim->max_text)
            return err_set(e, INF_ELIMIT,
                           "inputs[0] binary data[%zu]: %zu bytes, the limit is "
                           "%zu",
                           i, n, lim->max_text);
        req->texts[i] = malloc(n + 1);
        if (req->texts[i] == NULL)
            return err_set(e, INF_ENOMEM, "out of memory");
        memcpy(req->texts[i], p + off, n);
        req->texts[i][n] = '\0';
        req->text_lens[i] = n;
        model_featurize_text(m, req->texts[i], n, req->x + i * info->in_size, NULL);
        off += n;
    }
    if (off != len)
        return err_set(e, INF_EINVAL, "inputs[0] binary data: %zu bytes left over", len - off);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------------------------- */

void oip_request_deinit(struct oip_request *req)
{
    if (req == NULL)
        return;
    free(req->id);
    free(req->raw);
    free(req->x);
    if (req->texts != NULL)
        for (size_t i = 0; i < req->batch; i++)
            free(req->texts[i]);
    free(req->texts);
    free(req->text_lens);
    json_decref(req->params);
    memset(req, 0, sizeof *req);
}

static void format_shape(char *buf, size_t cap, const int64_t *dims, int rank, bool batch)
{
    size_t used = 0;
    int n = snprintf(buf, cap, "[%s", batch ? "-1" : "");
    used = n > 0 ? (size_t)n : 0;
    for (int i = 0; i < rank && used + 24 < cap; i++) {
        n = snprintf(buf + used, cap - used, "%s%lld", (i || batch) ? ", " : "",
                     (long long)dims[i]);
        used += n > 0 ? (size_t)n : 0;
    }
    snprintf(buf + used, cap - used, "]");
}

static int parse_outputs(const struct model *m, const json_t *outs, struct oip_request *req,
                         struct err *e)
{
    const struct model_info *info = model_get_info(m);
    bool cls = info->task == MODEL_TASK_CLASSIFICATION;
    if (outs == NULL) {
        req->outputs = cls ? (OIP_OUT_PROBABILITIES | OIP_OUT_LABEL) : OIP_OUT_OUTPUT;
        if (req->top_k > 0)
            req->outputs |= OIP_OUT_TOP_K_LABELS | OIP_OUT_TOP_K_PROBABILITIES;
        return INF_OK;
    }
    if (!json_is_array(outs) || json_array_size(outs) == 0)
        return err_set(e, INF_EINVAL, "outputs: expected a non-empty array of {\"name\": ...}");
    for (size_t i = 0; i < json_array_size(outs); i++) {
        const char *name = json_string_value(json_object_get(json_array_get(outs, i), "name"));
        if (name == NULL)
            return err_set(e, INF_EINVAL, "outputs[%zu].name: missing", i);
        unsigned bit = 0;
        if (cls && strcmp(name, "probabilities") == 0)
            bit = OIP_OUT_PROBABILITIES;
        else if (cls && strcmp(name, "label") == 0)
            bit = OIP_OUT_LABEL;
        else if (cls && req->top_k > 0 && strcmp(name, "top_k_labels") == 0)
            bit = OIP_OUT_TOP_K_LABELS;
        else if (cls && req->top_k > 0 && strcmp(name, "top_k_probabilities") == 0)
            bit = OIP_OUT_TOP_K_PROBABILITIES;
        else if (!cls && strcmp(name, "output") == 0)
            bit = OIP_OUT_OUTPUT;
        if (bit == 0)
            return err_set(e, INF_EINVAL,
                           "outputs[%zu].name: \"%.64s\" is not an output of this "
                           "model (%s)",
                           i, name,
                           cls ? (req->top_k > 0 ? "probabilities, label, top_k_labels, "
                                                   "top_k_probabilities"
                                                 : "probabilities, label")
                               : "output");
        req->outputs |= bit;
        const json_t *bd =
            json_object_get(json_object_get(json_array_get(outs, i), "parameters"), "binary_data");
        if (bd != NULL && !json_is_boolean(bd))
            return err_set(e, INF_EINVAL,
                           "outputs[%zu].parameters.binary_data: expected true or "
                           "false",
                           i);
        if (json_is_true(bd))
            req->binary_outputs |= bit;
    }
    return INF_OK;
}

static int parse_text_input(const struct model *m, const json_t *in, size_t B,
                            const struct oip_limits *lim, struct oip_request *req, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    const json_t *data = json_object_get(in, "data");
    if (!json_is_array(data))
        return err_set(e, INF_EINVAL, "inputs[0].data: expected an array of strings");
    /* Accept [t1, t2] and [[t1], [t2]] for shape [B] or [B, 1]. */
    if (json_array_size(data) != B)
        return err_set(e, INF_EINVAL, "inputs[0].data: %zu strings, the shape says %zu",
                       json_array_size(data), B);
    req->texts = calloc(B, sizeof *req->texts);
    req->text_lens = calloc(B, sizeof *req->text_lens);
    req->x = malloc(B * info->in_size * sizeof *req->x);
    if (!req->texts || !req->text_lens || !req->x)
        return err_set(e, INF_ENOMEM, "out of memory");
    req->batch = B;
    for (size_t i = 0; i < B; i++) {
        const json_t *v = json_array_get(data, i);
        if (json_is_array(v) && json_array_size(v) == 1)
            v = json_array_get(v, 0);
        if (!json_is_string(v))
            return err_set(e, INF_EINVAL, "inputs[0].data[%zu]: expected a string", i);
        size_t len = json_string_length(v);
        if (len > lim->max_text)
            return err_set(e, INF_ELIMIT, "inputs[0].data[%zu]: %zu bytes, the limit is %zu", i,
                           len, lim->max_text);
        req->texts[i] = malloc(len + 1);
        if (req->texts[i] == NULL)
            return err_set(e, INF_ENOMEM, "out of memory");
        memcpy(req->texts[i], json_string_value(v), len + 1);
        req->text_lens[i] = len;
        model_featurize_text(m, req->texts[i], len, req->x + i * info->in_size, NULL);
    }
    return INF_OK;
}

int oip_request_parse(const struct model *m, const char *body, size_t len,
                      const struct oip_limits *lim, struct oip_request *req, struct err *e)
{
    return oip_request_parse_binary(m, body, len, len, lim, req, e);
}

int oip_request_parse_binary(const struct model *m, const char *body, size_t len, size_t json_len,
                             const struct oip_limits *lim, struct oip_request *req, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    json_error_t je;
    int rc = INF_OK;
    memset(req, 0, sizeof *req);
    if (json_len > len)
        return err_set(e, INF_EINVAL,
                       "Inference-Header-Content-Length %zu is beyond the body "
                       "(%zu bytes)",
                       json_len, len);
    const unsigned char *bin = (const unsigned char *)body + json_len;
    size_t bin_len = len - json_len;
    /* Fast path: FP32 tensor data parsed by a tight number parser, jansson for the rest. */
    float *fast = NULL;
    size_t fast_n = 0;
    int64_t fast_dims[OIP_FAST_MAX_RANK];
    int fast_rank = 0;
    json_t *doc = NULL;
    if (json_len == len) {
        char *rest = NULL;
        size_t rest_len = 0;
        rc = oip_fast_extract_data(body, len, lim->max_elements, &fast, &fast_n, fast_dims,
                                   &fast_rank, &rest, &rest_len, e);
        if (rc != INF_OK && rc != INF_ENOTFOUND)
            return rc;
        rc = INF_OK;
        if (fast != NULL) {
            doc = json_loadb(rest, rest_len, JSON_REJECT_DUPLICATES, &je);
            const char *dt0 = json_string_value(
                json_object_get(json_array_get(json_object_get(doc, "inputs"), 0), "datatype"));
            /* Other datatypes check their values' range on doubles: take the full parse. */
            if (doc == NULL || dt0 == NULL || strcmp(dt0, "FP32") != 0) {
                json_decref(doc);
                doc = NULL;
                free(fast);
                fast = NULL;
            }
            free(rest);
        }
    }
    if (doc == NULL)
        doc = json_loadb(body, json_len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL)
        return err_set(e, INF_EINVAL, "invalid JSON at line %d column %d: %s", je.line, je.column,
                       je.text);
    if (!json_is_object(doc)) {
        rc = err_set(e, INF_EINVAL, "the request must be a JSON object");
        goto out;
    }
    const json_t *id = json_object_get(doc, "id");
    if (id != NULL && !json_is_null(id)) {
        if (!json_is_string(id) || json_string_length(id) > 256 ||
            strlen(json_string_value(id)) != json_string_length(id)) {
            rc = err_set(e, INF_EINVAL, "id: expected a string of at most 256 bytes");
            goto out;
        }
        req->id = strdup(json_string_value(id));
        if (req->id == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory");
            goto out;
        }
    }
    json_t *params = json_object_get(doc, "parameters");
    if (params != NULL && !json_is_null(params)) {
        if (!json_is_object(params)) {
            rc = err_set(e, INF_EINVAL, "parameters: expected an object");
            goto out;
        }
        req->params = json_incref(params);
        json_t *tk = json_object_get(params, "top_k");
        if (tk != NULL) {
            if (info->task != MODEL_TASK_CLASSIFICATION || !json_is_integer(tk) ||
                json_integer_value(tk) < 1 || (size_t)json_integer_value(tk) > info->out_size) {
                rc = err_set(e, INF_EINVAL,
                             "parameters.top_k: expected an integer from 1 to %zu (classifiers "
                             "only)",
                             info->out_size);
                goto out;
            }
            req->top_k = (int)json_integer_value(tk);
        }
        const json_t *bdo = json_object_get(params, "binary_data_output");
        if (bdo != NULL && !json_is_boolean(bdo)) {
            rc = err_set(e, INF_EINVAL, "parameters.binary_data_output: expected true or false");
            goto out;
        }
        req->binary_all = json_is_true(bdo);
    }
    if ((rc = parse_outputs(m, json_object_get(doc, "outputs"), req, e)))
        goto out;
    if (req->binary_all)
        req->binary_outputs = req->outputs;

    const json_t *inputs = json_object_get(doc, "inputs");
    if (!json_is_array(inputs) || json_array_size(inputs) != 1) {
        rc = err_set(e, INF_EINVAL, "inputs: expected an array with one input named \"%s\"",
                     info->input_name);
        goto out;
    }
    const json_t *in = json_array_get(inputs, 0);
    const char *name = json_string_value(json_object_get(in, "name"));
    const char *dt = json_string_value(json_object_get(in, "datatype"));
    const json_t *shape = json_object_get(in, "shape");
    if (!json_is_object(in) || name == NULL || dt == NULL || !json_is_array(shape)) {
        rc = err_set(e, INF_EINVAL,
                     "inputs[0]: needs \"name\", \"shape\", \"datatype\" and "
                     "\"data\"");
        goto out;
    }
    if (strcmp(name, info->input_name) != 0) {
        rc = err_set(e, INF_EINVAL, "inputs[0].name: \"%.64s\" is not this model's input \"%s\"",
                     name, info->input_name);
        goto out;
    }
    size_t rank = json_array_size(shape);
    int64_t dims[MODEL_MAX_RANK + 1];
    for (size_t i = 0; i < rank && i <= MODEL_MAX_RANK; i++) {
        const json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            rc = err_set(e, INF_EINVAL, "inputs[0].shape[%zu]: expected a non-negative integer", i);
            goto out;
        }
        dims[i] = json_integer_value(d);
    }
    char want[128];
    format_shape(want, sizeof want, info->input_shape, info->input_rank, true);
    bool text = info->input_kind == MODEL_INPUT_TEXT;
    bool shape_ok = rank == (size_t)info->input_rank + 1 || (text && rank == 1);
    for (size_t i = 1; shape_ok && i < rank; i++)
        shape_ok = dims[i] == info->input_shape[i - 1];
    if (!shape_ok) {
        char got[128];
        format_shape(got, sizeof got, dims, rank <= MODEL_MAX_RANK + 1 ? (int)rank : 0, false);
        rc = err_set(e, INF_EINVAL, "inputs[0].shape: %s does not match the model's input %s", got,
                     want);
        goto out;
    }
    size_t B = (size_t)dims[0];
    if (B == 0 || B > lim->max_batch) {
        rc = err_set(e, B == 0 ? INF_EINVAL : INF_ELIMIT,
                     "inputs[0].shape[0]: batch of %zu; expected 1 to %zu", B, lim->max_batch);
        goto out;
    }
    const json_t *bds = json_object_get(json_object_get(in, "parameters"), "binary_data_size");
    if (bds != NULL) {
        if (!json_is_integer(bds) || json_integer_value(bds) < 0 ||
            (size_t)json_integer_value(bds) != bin_len) {
            rc = err_set(e, INF_EINVAL,
                         "inputs[0].parameters.binary_data_size: %lld, but %zu "
                         "bytes follow the JSON header",
                         (long long)json_integer_value(bds), bin_len);
            goto out;
        }
        if (json_object_get(in, "data") != NULL) {
            rc = err_set(e, INF_EINVAL, "inputs[0]: both \"data\" and binary data");
            goto out;
        }
    } else if (bin_len > 0) {
        rc = err_set(e, INF_EINVAL,
                     "%zu bytes follow the JSON header but no input declares "
                     "parameters.binary_data_size",
                     bin_len);
        goto out;
    }
    if (text && bds != NULL) {
        if (strcmp(dt, "BYTES") != 0) {
            rc =
                err_set(e, INF_EINVAL, "inputs[0].datatype: \"%.32s\"; this model takes BYTES", dt);
            goto out;
        }
        rc = binary_texts(bin, bin_len, B, lim, req, m, e);
        goto out;
    }
    if (text) {
        if (strcmp(dt, "BYTES") != 0) {
            rc =
                err_set(e, INF_EINVAL, "inputs[0].datatype: \"%.32s\"; this model takes BYTES", dt);
            goto out;
        }
        rc = parse_text_input(m, in, B, lim, req, e);
        goto out;
    }
    if (dtype_find(dt) == NULL) {
        rc = err_set(e, INF_EINVAL,
                     "inputs[0].datatype: \"%.32s\" is not a numeric datatype "
                     "(FP32, FP64, INT32, UINT8, ...)",
                     dt);
        goto out;
    }
    size_t n;
    if (!size_mul_ok(B, info->raw_size, &n) || n > lim->max_elements) {
        rc = err_set(e, INF_ELIMIT, "inputs[0]: more than %zu elements", lim->max_elements);
        goto out;
    }
    req->raw = malloc(n * sizeof *req->raw);
    req->x = malloc(B * info->in_size * sizeof *req->x);
    if (req->raw == NULL || req->x == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory for %zu elements", n);
        goto out;
    }
    if (bds != NULL) {
        size_t need;
        if (!size_mul_ok(n, dtype_bytes(dt), &need) || need != bin_len) {
            rc = err_set(e, INF_EINVAL,
                         "inputs[0] binary data: %zu bytes, %zu %s elements need "
                         "%zu",
                         bin_len, n, dt, n * dtype_bytes(dt));
            goto out;
        }
        if ((rc = binary_to_floats(bin, n, dt, req->raw, e)))
            goto out;
    } else if (fast != NULL) {
        bool flat = fast_rank == 1 && (size_t)fast_dims[0] == n;
        bool nested = fast_rank == (int)rank;
        for (size_t i = 0; nested && i < rank; i++)
            nested = fast_dims[i] == dims[i];
        if (!flat && !nested) {
            rc = err_set(e, INF_EINVAL,
                         "inputs[0].data: %zu elements nested %d deep; the shape "
                         "needs %zu, flat or nested as the shape",
                         fast_n, fast_rank, n);
            goto out;
        }
        memcpy(req->raw, fast, n * sizeof *req->raw);
    } else if ((rc = oip_tensor_from_json(json_object_get(in, "data"), dt, dims, (int)rank, n,
                                          req->raw, "inputs[0].data", e))) {
        goto out;
    }
    req->batch = B;
    model_featurize_tensor(m, req->raw, B, req->x, NULL);
out:
    free(fast);
    json_decref(doc);
    return rc;
}
