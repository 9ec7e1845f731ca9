/*
 * model/model.c - model lifecycle: load from a directory or buffers, clone, save, free.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#include "common/json_dump.h"

/* ------------------------------------------------------------------------------------------
 * Lifecycle
 * ---------------------------------------------------------------------------------------- */

void model_free(struct model *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->info.n_labels; i++)
        free(m->info.labels[i]);
    free(m->info.labels);
    json_decref(m->config);
    free(m->pre_a);
    free(m->pre_b);
    free(m->layers);
    free(m->params);
    free(m->wt);
    free(m);
}

struct model *model_load_buffers(const char *config, size_t config_len, const void *weights,
                                 size_t weights_len, struct err *e)
{
    struct model *m = NULL;
    json_t *doc = NULL;
    struct st_file f = {0};
    bool have_st = false;
    json_error_t je;

    if (config_len > MODEL_MAX_CONFIG_BYTES) {
        err_set(e, INF_ELIMIT, "model.json: %zu bytes, the limit is %zu", config_len,
                (size_t)MODEL_MAX_CONFIG_BYTES);
        goto fail;
    }
    doc = json_loadb(config, config_len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL) {
        /* jansson leaves the text empty only when an allocation failed */
        if (je.text[0] == '\0')
            err_set(e, INF_ENOMEM, "model.json: out of memory parsing it");
        else
            err_set(e, INF_EINVAL, "model.json: line %d column %d: %s", je.line, je.column,
                    je.text);
        goto fail;
    }
    m = calloc(1, sizeof *m);
    if (m == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        goto fail;
    }
    if (config_parse(m, doc, e) != INF_OK) {
        if (e != NULL && strncmp(e->msg, "model.json", 10) != 0)
            err_prefix(e, "model.json");
        goto fail;
    }
    /* Parse the weights before allocating parameters: a tiny config must not make us allocate
     * gigabytes that a weights file of a few bytes cannot fill. */
    if (weights != NULL) {
        if (weights_len > MODEL_MAX_WEIGHTS_BYTES) {
            err_set(e, INF_ELIMIT, "weights.safetensors: %zu bytes is over the limit", weights_len);
            goto fail;
        }
        if (st_parse(weights, weights_len, &f, e) != INF_OK) {
            err_prefix(e, "weights.safetensors");
            goto fail;
        }
        have_st = true;
        /* m->params is still NULL: this checks every name and shape without copying. */
        if (params_from_safetensors(m, &f, e) != INF_OK) {
            err_prefix(e, "weights.safetensors");
            goto fail;
        }
    }
    size_t bytes;
    if (!size_mul_ok(m->n_params ? m->n_params : 1, sizeof(float), &bytes) ||
        (m->params = malloc(bytes)) == NULL) {
        err_set(e, INF_ENOMEM, "out of memory for %zu parameters", m->n_params);
        goto fail;
    }
    if ((m->wt = malloc((m->n_wt ? m->n_wt : 1) * sizeof(float))) == NULL) {
        err_set(e, INF_ENOMEM, "out of memory for %zu parameters", m->n_params);
        goto fail;
    }
    if (!have_st) {
        params_default_init(m, m->info.training.seed);
    } else {
        if (params_from_safetensors(m, &f, e) != INF_OK) {
            err_prefix(e, "weights.safetensors");
            goto fail;
        }
        st_file_deinit(&f);
        have_st = false;
    }
    params_transpose(m);
    json_decref(doc);
    return m;
fail:
    if (have_st)
        st_file_deinit(&f);
    json_decref(doc);
    model_free(m);
    return NULL;
}

struct model *model_load(const char *dir, struct err *e)
{
    char path[4096];
    char *config = NULL, *weights = NULL;
    size_t config_len = 0, weights_len = 0;
    struct model *m = NULL;

    if (fs_path_join(path, sizeof path, dir, "model.json", e) != INF_OK)
        return NULL;
    if (fs_read_file(path, MODEL_MAX_CONFIG_BYTES, &config, &config_len, e) != INF_OK)
        return NULL;
    if (fs_path_join(path, sizeof path, dir, "weights.safetensors", e) != INF_OK)
        goto out;
    struct err we = {0};
    int rc = fs_read_file(path, MODEL_MAX_WEIGHTS_BYTES, &weights, &weights_len, &we);
    if (rc != INF_OK && rc != INF_ENOTFOUND) {
        err_set(e, rc, "%s", we.msg);
        goto out;
    }
    m = model_load_buffers(config, config_len, weights, weights_len, e);
    if (m == NULL)
        err_prefix(e, "%s", dir);
out:
    free(config);
    free(weights);
    return m;
}

struct model *model_clone(const struct model *src, struct err *e)
{
    char *config = model_config_dump(src);
    if (config == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        return NULL;
    }
    /* Re-parsing the config is the simplest deep copy that cannot drift from loading. */
    struct model *m = model_load_buffers(config, strlen(config), NULL, 0, e);
    free(config);
    if (m == NULL)
        return NULL;
    memcpy(m->params, src->params, src->n_params * sizeof(float));
    params_transpose(m);
    m->info.training = src->info.training;
    return m;
}

/* ------------------------------------------------------------------------------------------
 * Saving
 * ---------------------------------------------------------------------------------------- */

char *model_config_dump(const struct model *m)
{
    json_t *doc = json_deep_copy(m->config);
    json_t *tr = config_training_to_json(&m->info.training);
    char *s = NULL;
    if (doc != NULL && tr != NULL && json_object_set_new(doc, "training", tr) == 0) {
        tr = NULL;
        s = json_dump_checked(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    }
    json_decref(tr);
    json_decref(doc);
    return s;
}

int model_weights_serialize(const struct model *m, char **data, size_t *len, struct err *e)
{
    return params_serialize(m, NULL, 0, NULL, data, len, e);
}

int model_save(const struct model *m, const char *dir, struct err *e)
{
    char path[4096];
    char *config = NULL, *weights = NULL;
    size_t weights_len = 0;
    int rc = fs_mkdir_p(dir, 0755, e);
    if (rc)
        return rc;
    config = model_config_dump(m);
    if (config == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    if ((rc = model_weights_serialize(m, &weights, &weights_len, e)))
        goto out;
    /* Weights first: a crash between the two writes leaves the old config with new weights of
     * the same architecture, which still loads. */
    if ((rc = fs_path_join(path, sizeof path, dir, "weights.safetensors", e)) ||
        (rc = fs_write_atomic(path, weights, weights_len, 0644, e)))
        goto out;
    size_t clen = strlen(config);
    config[clen] = '\0';
    if ((rc = fs_path_join(path, sizeof path, dir, "model.json", e)))
        goto out;
    /* A trailing newline makes the file friendlier to cat and diff. */
    char *withnl = realloc(config, clen + 2);
    if (withnl == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    config = withnl;
    config[clen] = '\n';
    config[clen + 1] = '\0';
    rc = fs_write_atomic(path, config, clen + 1, 0644, e);
out:
    free(config);
    free(weights);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Accessors
 * ---------------------------------------------------------------------------------------- */

const struct model_info *model_get_info(const struct model *m)
{
    return &m->info;
}

void model_set_training(struct model *m, const struct model_training *t)
{
    m->info.training = *t;
}

const float *model_params(const struct model *m)
{
    return m->params;
}
