/*
 * server/dataset.c - JSONL training files -> struct model_dataset.
 */
#include <stdlib.h>
#include <string.h>

#include "dataset.h"
#include "oip.h"

/* Parses one line's object into row i of ds. pre: the input's raw_size floats already
 * converted by the fast path (obj's "input" is then []), or NULL. */
static int parse_line(const struct model *m, const json_t *obj, const float *pre, size_t i,
                      size_t lineno, dataset_text_fn text_fn, void *user, struct model_dataset *ds,
                      struct err *e)
{
    const struct model_info *info = model_get_info(m);
    char what[64];
    snprintf(what, sizeof what, "line %zu: input", lineno);
    if (!json_is_object(obj))
        return err_set(e, INF_EINVAL, "line %zu: expected a JSON object", lineno);
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val)
    {
        if (!dataset_field_known(key))
            return err_set(e, INF_EINVAL,
                           "line %zu: unknown field \"%.64s\" (known: input, label, target; "
                           "ignored: weight, id, metadata)",
                           lineno, key);
    }
    const json_t *input = json_object_get(obj, "input");
    if (input == NULL)
        return err_set(e, INF_EINVAL, "line %zu: missing \"input\"", lineno);
    float *x = ds->x + i * ds->x_dim;
    if (info->input_kind == MODEL_INPUT_TEXT) {
        if (!json_is_string(input))
            return err_set(e, INF_EINVAL, "line %zu: input: expected a string for this text model",
                           lineno);
        const char *text = json_string_value(input);
        size_t tlen = json_string_length(input);
        if (text_fn != NULL) {
            size_t mlen = 0;
            char *masked = text_fn(text, tlen, &mlen, user);
            if (masked == NULL)
                return err_set(e, INF_ENOMEM, "line %zu: out of memory", lineno);
            model_featurize_text(m, masked, mlen, x, NULL);
            free(masked);
        } else {
            model_featurize_text(m, text, tlen, x, NULL);
        }
    } else {
        if (pre != NULL) {
            memcpy(x, pre, info->raw_size * sizeof *x);
        } else {
            int rc = oip_tensor_from_json(input, info->input_datatype, info->input_shape,
                                          info->input_rank, info->raw_size, x, what, e);
            if (rc)
                return rc;
        }
        model_featurize_tensor(m, x, 1, x, NULL);
    }
    const json_t *label = json_object_get(obj, "label");
    const json_t *target = json_object_get(obj, "target");
    if (info->task == MODEL_TASK_CLASSIFICATION) {
        if (target != NULL)
            return err_set(e, INF_EINVAL,
                           "line %zu: a classifier trains on \"label\", not "
                           "\"target\"",
                           lineno);
        int idx = -1;
        if (json_is_string(label)) {
            idx = oip_label_index(m, json_string_value(label));
            if (idx < 0)
                return err_set(e, INF_EINVAL,
                               "line %zu: label \"%.64s\" is not one of the "
                               "model's %zu labels",
                               lineno, json_string_value(label), info->n_labels);
        } else if (json_is_integer(label)) {
            json_int_t v = json_integer_value(label);
            if (v < 0 || (size_t)v >= info->out_size)
                return err_set(e, INF_EINVAL, "line %zu: label index %lld is not in [0, %zu)",
                               lineno, (long long)v, info->out_size);
            idx = (int)v;
        } else {
            return err_set(e, INF_EINVAL,
                           "line %zu: missing \"label\" (a label string or a "
                           "class index)",
                           lineno);
        }
        ds->labels[i] = idx;
        return INF_OK;
    }
    if (label != NULL)
        return err_set(e, INF_EINVAL, "line %zu: a regressor trains on \"target\", not \"label\"",
                       lineno);
    if (target == NULL)
        return err_set(e, INF_EINVAL, "line %zu: missing \"target\"", lineno);
    snprintf(what, sizeof what, "line %zu: target", lineno);
    float *t = ds->targets + i * ds->y_dim;
    if (json_is_number(target)) {
        json_t *wrap = json_pack("[O]", target);
        if (wrap == NULL)
            return err_set(e, INF_ENOMEM, "out of memory");
        int64_t one = 1;
        int rc = oip_tensor_from_json(wrap, "FP32", &one, 1, ds->y_dim, t, what, e);
        json_decref(wrap);
        return rc;
    }
    int64_t d = (int64_t)ds->y_dim;
    return oip_tensor_from_json(target, "FP32", &d, 1, ds->y_dim, t, what, e);
}

bool dataset_field_known(const char *key)
{
    static const char *const known[] = {"input", "label", "target", "weight", "id", "metadata"};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(key, known[i]) == 0)
            return true;
    return false;
}

/* See dataset.h. */
int dataset_fast_split(const char *line, size_t len, size_t max_values, float **vals, size_t *n,
                       int64_t *dims, int *rank, json_t **rest)
{
    char *text = NULL;
    size_t text_len = 0;
    struct err fe = {0};
    int rc = oip_fast_extract_member(line, len, "input", max_values, vals, n, dims, rank, &text,
                                     &text_len, &fe);
    if (rc != INF_OK)
        return rc == INF_ENOMEM ? rc : INF_ENOTFOUND;
    json_error_t je;
    *rest = json_loadb(text, text_len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (*rest == NULL) {
        free(*vals);
        *vals = NULL;
        return INF_ENOTFOUND;
    }
    return INF_OK;
}

/*
 * The fast path for one line (see dataset.h): INF_OK with row i filled, or INF_ENOTFOUND for
 * the caller to parse the line with jansson (also when the line has an error: jansson's
 * message is the one reported). Only INF_ENOMEM is final.
 */
static int fast_line(const struct model *m, const char *line, size_t len, size_t i, size_t lineno,
                     dataset_text_fn text_fn, void *user, struct model_dataset *ds)
{
    const struct model_info *info = model_get_info(m);
    float *vals = NULL;
    size_t n = 0;
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank = 0;
    json_t *obj = NULL;
    int rc = dataset_fast_split(line, len, info->raw_size, &vals, &n, dims, &rank, &obj);
    if (rc != INF_OK)
        return rc;
    /* The shapes oip_tensor_from_json accepts: flat, or nested exactly as the input shape. */
    bool fits = n == info->raw_size && (rank == 1 || rank == info->input_rank);
    for (int k = 0; fits && rank > 1 && k < rank; k++)
        fits = dims[k] == info->input_shape[k];
    struct err le = {0};
    rc = fits && parse_line(m, obj, vals, i, lineno, text_fn, user, ds, &le) == INF_OK
             ? INF_OK
             : INF_ENOTFOUND;
    json_decref(obj);
    free(vals);
    return rc;
}

static int parse_jsonl(const struct model *m, const char *data, size_t len, dataset_text_fn text_fn,
                       void *user, struct model_dataset *ds, bool fast, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    /* First pass: count non-blank lines, check line lengths. */
    size_t n = 0, lineno = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        lineno++;
        if (end - pos > DATASET_MAX_LINE)
            return err_set(e, INF_ELIMIT, "line %zu: longer than %zu bytes", lineno,
                           DATASET_MAX_LINE);
        bool blank = true;
        for (size_t k = pos; k < end && blank; k++)
            blank = data[k] == ' ' || data[k] == '\t' || data[k] == '\r';
        n += !blank;
        if (n > DATASET_MAX_LINES)
            return err_set(e, INF_ELIMIT, "more than %zu lines", DATASET_MAX_LINES);
        pos = end + 1;
    }
    if (n == 0)
        return err_set(e, INF_EINVAL, "the file holds no samples");
    size_t y_dim = info->task == MODEL_TASK_REGRESSION ? info->out_size : 0;
    int rc = model_dataset_init(ds, n, info->in_size, y_dim, e);
    if (rc)
        return rc;
    size_t i = 0;
    lineno = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        lineno++;
        bool blank = true;
        for (size_t k = pos; k < end && blank; k++)
            blank = data[k] == ' ' || data[k] == '\t' || data[k] == '\r';
        if (!blank && fast) {
            rc = fast_line(m, data + pos, end - pos, i, lineno, text_fn, user, ds);
            if (rc == INF_ENOMEM) {
                err_set(e, rc, "line %zu: out of memory parsing it", lineno);
                goto fail;
            }
            if (rc == INF_OK) {
                i++;
                pos = end + 1;
                continue;
            }
        }
        if (!blank) {
            json_error_t je;
            json_t *obj = json_loadb(data + pos, end - pos, JSON_REJECT_DUPLICATES, &je);
            if (obj == NULL) {
                /* jansson leaves the text empty only when an allocation failed */
                rc = je.text[0] == '\0'
                         ? err_set(e, INF_ENOMEM, "line %zu: out of memory parsing it", lineno)
                         : err_set(e, INF_EINVAL, "line %zu: invalid JSON at column %d: %s", lineno,
                                   je.column, je.text);
                goto fail;
            }
            rc = parse_line(m, obj, NULL, i, lineno, text_fn, user, ds, e);
            json_decref(obj);
            if (rc)
                goto fail;
            i++;
        }
        pos = end + 1;
    }
    return INF_OK;
fail:
    model_dataset_deinit(ds);
    return rc;
}

int dataset_parse_jsonl(const struct model *m, const char *data, size_t len,
                        dataset_text_fn text_fn, void *user, struct model_dataset *ds,
                        struct err *e)
{
    const struct model_info *info = model_get_info(m);
    bool fast = info->input_kind != MODEL_INPUT_TEXT && strcmp(info->input_datatype, "FP32") == 0;
    return parse_jsonl(m, data, len, text_fn, user, ds, fast, e);
}

int dataset_parse_jsonl_reference(const struct model *m, const char *data, size_t len,
                                  dataset_text_fn text_fn, void *user, struct model_dataset *ds,
                                  struct err *e)
{
    return parse_jsonl(m, data, len, text_fn, user, ds, false, e);
}

int dataset_load_jsonl(const struct model *m, const char *path, size_t max_bytes,
                       struct model_dataset *ds, struct err *e)
{
    char *data = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, max_bytes, &data, &len, e);
    if (rc == INF_OK) {
        rc = dataset_parse_jsonl(m, data, len, NULL, NULL, ds, e);
        if (rc)
            err_prefix(e, "%s", path);
    }
    free(data);
    return rc;
}
