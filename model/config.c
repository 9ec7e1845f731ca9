/*
 * model/config.c - model.json: parsing, validation, shape inference, parameter layout.
 *
 * Every error names the field as a JSON path ("layers[3].out_features: ..."), so a user can
 * fix a hand-written file without reading our code. Unknown fields are errors: a misspelt
 * "paddding" silently ignored would serve wrong numbers.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------------------------------
 * Small typed getters. Each returns 0, or INF_EINVAL with the field named.
 * ---------------------------------------------------------------------------------------- */

/* Rejects any key of obj not in the NULL-terminated list allowed. */
static int check_keys(const json_t *obj, const char *path, const char *const *allowed,
                      struct err *e)
{
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] != NULL; i++)
            if (strcmp(key, allowed[i]) == 0)
                ok = true;
        if (!ok)
            return err_set(e, INF_EINVAL, "%s: unknown field \"%.64s\"", path, key);
    }
    return INF_OK;
}

/* Integer field in [lo, hi]; absent -> *out = def (or an error if def_missing_is_error). */
static int get_int(const json_t *obj, const char *path, const char *key, bool required,
                   long long def, long long lo, long long hi, long long *out, struct err *e)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        if (required)
            return err_set(e, INF_EINVAL, "%s.%s: missing", path, key);
        *out = def;
        return INF_OK;
    }
    long long x;
    if (json_is_integer(v)) {
        x = (long long)json_integer_value(v);
    } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v);
    } else {
        return err_set(e, INF_EINVAL, "%s.%s: expected an integer", path, key);
    }
    if (x < lo || x > hi)
        return err_set(e, INF_EINVAL, "%s.%s: %lld is out of range [%lld, %lld]", path, key, x, lo,
                       hi);
    *out = x;
    return INF_OK;
}

/* Finite number field in [lo, hi]. */
static int get_num(const json_t *obj, const char *path, const char *key, bool required, double def,
                   double lo, double hi, double *out, struct err *e)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        if (required)
            return err_set(e, INF_EINVAL, "%s.%s: missing", path, key);
        *out = def;
        return INF_OK;
    }
    if (!json_is_number(v))
        return err_set(e, INF_EINVAL, "%s.%s: expected a number", path, key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return err_set(e, INF_EINVAL, "%s.%s: %g is out of range [%g, %g]", path, key, x, lo, hi);
    *out = x;
    return INF_OK;
}

static int get_bool(const json_t *obj, const char *path, const char *key, bool def, bool *out,
                    struct err *e)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        *out = def;
        return INF_OK;
    }
    if (!json_is_boolean(v))
        return err_set(e, INF_EINVAL, "%s.%s: expected true or false", path, key);
    *out = json_is_true(v);
    return INF_OK;
}

/* String field; *out borrowed from obj (NULL if absent and not required). */
static int get_str(const json_t *obj, const char *path, const char *key, bool required,
                   const char **out, struct err *e)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        if (required)
            return err_set(e, INF_EINVAL, "%s.%s: missing", path, key);
        *out = NULL;
        return INF_OK;
    }
    if (!json_is_string(v))
        return err_set(e, INF_EINVAL, "%s.%s: expected a string", path, key);
    *out = json_string_value(v);
    return INF_OK;
}

/* An int or a [a, b] pair (PyTorch's _pair) with each value in [lo, hi]. */
static int get_pair(const json_t *obj, const char *path, const char *key, bool required, int def,
                    int lo, int hi, int *a, int *b, struct err *e)
{
    json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v)) {
        if (required)
            return err_set(e, INF_EINVAL, "%s.%s: missing", path, key);
        *a = *b = def;
        return INF_OK;
    }
    long long x[2];
    if (json_is_integer(v)) {
        x[0] = x[1] = (long long)json_integer_value(v);
    } else if (json_is_array(v) && json_array_size(v) == 2 &&
               json_is_integer(json_array_get(v, 0)) && json_is_integer(json_array_get(v, 1))) {
        x[0] = (long long)json_integer_value(json_array_get(v, 0));
        x[1] = (long long)json_integer_value(json_array_get(v, 1));
    } else {
        return err_set(e, INF_EINVAL, "%s.%s: expected an integer or a pair of integers", path,
                       key);
    }
    for (int i = 0; i < 2; i++)
        if (x[i] < lo || x[i] > hi)
            return err_set(e, INF_EINVAL, "%s.%s: %lld is out of range [%d, %d]", path, key, x[i],
                           lo, hi);
    *a = (int)x[0];
    *b = (int)x[1];
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Names
 * ---------------------------------------------------------------------------------------- */

static const struct {
    const char *name;
    enum layer_type type;
} layer_names[] = {
    {"Linear", LAYER_LINEAR},       {"ReLU", LAYER_RELU},       {"LeakyReLU", LAYER_LEAKY_RELU},
    {"Sigmoid", LAYER_SIGMOID},     {"Tanh", LAYER_TANH},       {"GELU", LAYER_GELU},
    {"Dropout", LAYER_DROPOUT},     {"Flatten", LAYER_FLATTEN}, {"Conv2d", LAYER_CONV2D},
    {"MaxPool2d", LAYER_MAXPOOL2D},
};

const char *layer_type_name(enum layer_type t)
{
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (layer_names[i].type == t)
            return layer_names[i].name;
    return "?";
}

const char *model_optimizer_name(enum model_optimizer o)
{
    switch (o) {
        case MODEL_OPTIM_SGD:
            return "sgd";
        case MODEL_OPTIM_ADAM:
            return "adam";
        default:
            return "adamw";
    }
}

int model_optimizer_parse(const char *name)
{
    if (strcmp(name, "sgd") == 0)
        return MODEL_OPTIM_SGD;
    if (strcmp(name, "adam") == 0)
        return MODEL_OPTIM_ADAM;
    if (strcmp(name, "adamw") == 0)
        return MODEL_OPTIM_ADAMW;
    return -1;
}

const char *model_task_name(enum model_task t)
{
    return t == MODEL_TASK_CLASSIFICATION ? "classification" : "regression";
}

/* ------------------------------------------------------------------------------------------
 * training
 * ---------------------------------------------------------------------------------------- */

int config_parse_training(const json_t *obj, enum model_task task, struct model_training *t,
                          struct err *e)
{
    static const char *const keys[] = {
        "loss",         "optimizer", "learning_rate", "batch_size",       "epochs",
        "shuffle",      "seed",      "momentum",      "dampening",        "nesterov",
        "weight_decay", "betas",     "eps",           "validation_split", NULL};
    const char *path = "training";
    memset(t, 0, sizeof *t);
    t->loss = task == MODEL_TASK_CLASSIFICATION ? MODEL_LOSS_CROSS_ENTROPY : MODEL_LOSS_MSE;
    t->optimizer = MODEL_OPTIM_ADAM;
    t->learning_rate = 0.001;
    t->batch_size = 32;
    t->epochs = 10;
    t->shuffle = true;
    t->beta1 = 0.9;
    t->beta2 = 0.999;
    t->eps = 1e-8;
    if (obj == NULL)
        return INF_OK;
    if (!json_is_object(obj))
        return err_set(e, INF_EINVAL, "training: expected an object");
    int rc = check_keys(obj, path, keys, e);
    if (rc)
        return rc;

    const char *s = NULL;
    if ((rc = get_str(obj, path, "loss", false, &s, e)))
        return rc;
    if (s != NULL) {
        if (strcmp(s, "cross_entropy") == 0)
            t->loss = MODEL_LOSS_CROSS_ENTROPY;
        else if (strcmp(s, "mse") == 0)
            t->loss = MODEL_LOSS_MSE;
        else
            return err_set(e, INF_EINVAL,
                           "training.loss: \"%.64s\" is not one of cross_entropy, mse", s);
    }
    if (task == MODEL_TASK_CLASSIFICATION && t->loss != MODEL_LOSS_CROSS_ENTROPY)
        return err_set(e, INF_EINVAL, "training.loss: a classifier trains with cross_entropy");
    if (task == MODEL_TASK_REGRESSION && t->loss != MODEL_LOSS_MSE)
        return err_set(e, INF_EINVAL, "training.loss: a regressor trains with mse");

    if ((rc = get_str(obj, path, "optimizer", false, &s, e)))
        return rc;
    if (s != NULL) {
        int o = model_optimizer_parse(s);
        if (o < 0)
            return err_set(e, INF_EINVAL,
                           "training.optimizer: \"%.64s\" is not one of sgd, adam, adamw", s);
        t->optimizer = (enum model_optimizer)o;
    }
    long long v;
    if ((rc = get_num(obj, path, "learning_rate", false, 0.001, 0, 1e6, &t->learning_rate, e)))
        return rc;
    if (t->learning_rate <= 0)
        return err_set(e, INF_EINVAL, "training.learning_rate: must be greater than 0");
    if ((rc = get_int(obj, path, "batch_size", false, 32, 1, 65536, &v, e)))
        return rc;
    t->batch_size = (size_t)v;
    if ((rc = get_int(obj, path, "epochs", false, 10, 1, 1000000, &v, e)))
        return rc;
    t->epochs = (int)v;
    if ((rc = get_bool(obj, path, "shuffle", true, &t->shuffle, e)))
        return rc;
    if ((rc = get_int(obj, path, "seed", false, 0, 0, (1LL << 53), &v, e)))
        return rc;
    t->seed = (uint64_t)v;
    if ((rc = get_num(obj, path, "momentum", false, 0, 0, 1e6, &t->momentum, e)))
        return rc;
    if ((rc = get_num(obj, path, "dampening", false, 0, 0, 1, &t->dampening, e)))
        return rc;
    if ((rc = get_bool(obj, path, "nesterov", false, &t->nesterov, e)))
        return rc;
    if (t->nesterov && (t->momentum <= 0 || t->dampening != 0))
        return err_set(e, INF_EINVAL,
                       "training.nesterov: needs a momentum above 0 and zero dampening");
    double wd_default = t->optimizer == MODEL_OPTIM_ADAMW ? 0.01 : 0.0;
    if ((rc = get_num(obj, path, "weight_decay", false, wd_default, 0, 1e6, &t->weight_decay, e)))
        return rc;
    json_t *betas = json_object_get(obj, "betas");
    if (betas != NULL && !json_is_null(betas)) {
        if (!json_is_array(betas) || json_array_size(betas) != 2 ||
            !json_is_number(json_array_get(betas, 0)) || !json_is_number(json_array_get(betas, 1)))
            return err_set(e, INF_EINVAL, "training.betas: expected two numbers");
        t->beta1 = json_number_value(json_array_get(betas, 0));
        t->beta2 = json_number_value(json_array_get(betas, 1));
        if (!(t->beta1 >= 0 && t->beta1 < 1 && t->beta2 >= 0 && t->beta2 < 1))
            return err_set(e, INF_EINVAL, "training.betas: each must be in [0, 1)");
    }
    if ((rc = get_num(obj, path, "eps", false, 1e-8, 0, 1, &t->eps, e)))
        return rc;
    if (t->eps <= 0 && t->optimizer != MODEL_OPTIM_SGD)
        return err_set(e, INF_EINVAL, "training.eps: must be greater than 0");
    if ((rc = get_num(obj, path, "validation_split", false, 0, 0, 0.9, &t->validation_split, e)))
        return rc;
    return INF_OK;
}

json_t *config_training_to_json(const struct model_training *t)
{
    json_t *betas = json_pack("[ff]", t->beta1, t->beta2);
    if (betas == NULL)
        return NULL;
    /* json_pack "o" steals betas, also on failure. */
    return json_pack("{s:s, s:s, s:f, s:I, s:i, s:b, s:I, s:f, s:f, s:b, s:f, s:o, s:f, s:f}",
                     "loss", t->loss == MODEL_LOSS_MSE ? "mse" : "cross_entropy", "optimizer",
                     model_optimizer_name(t->optimizer), "learning_rate", t->learning_rate,
                     "batch_size", (json_int_t)t->batch_size, "epochs", t->epochs, "shuffle",
                     t->shuffle, "seed", (json_int_t)t->seed, "momentum", t->momentum, "dampening",
                     t->dampening, "nesterov", t->nesterov, "weight_decay", t->weight_decay,
                     "betas", betas, "eps", t->eps, "validation_split", t->validation_split);
}

/* ------------------------------------------------------------------------------------------
 * input
 * ---------------------------------------------------------------------------------------- */

static const char *const tensor_datatypes[] = {"FP32",   "FP64",   "FP16",   "BF16", "UINT8",
                                               "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                               "INT32",  "INT64",  NULL};

/* A number or an array of numbers of length 1, n1 or n2 (per channel / per feature),
 * expanded to R values with channel stride `plane`. */
static int get_stat(const json_t *pre, const char *key, double def, size_t R, size_t C,
                    size_t plane, bool nonzero, double *out, struct err *e)
{
    json_t *v = json_object_get(pre, key);
    if (v == NULL || json_is_null(v)) {
        for (size_t i = 0; i < R; i++)
            out[i] = def;
        return INF_OK;
    }
    if (json_is_number(v)) {
        double x = json_number_value(v);
        if (!isfinite(x) || (nonzero && x == 0))
            return err_set(e, INF_EINVAL, "input.preprocess.%s: must be a finite%s number", key,
                           nonzero ? ", non-zero" : "");
        for (size_t i = 0; i < R; i++)
            out[i] = x;
        return INF_OK;
    }
    if (!json_is_array(v))
        return err_set(e, INF_EINVAL, "input.preprocess.%s: expected a number or an array", key);
    size_t n = json_array_size(v);
    if (n != R && n != C)
        return err_set(e, INF_EINVAL,
                       "input.preprocess.%s: has %zu values, expected 1, %zu (per channel) or "
                       "%zu (per feature)",
                       key, n, C, R);
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(v, i);
        double d = json_is_number(x) ? json_number_value(x) : NAN;
        if (!isfinite(d) || (nonzero && d == 0))
            return err_set(e, INF_EINVAL, "input.preprocess.%s[%zu]: must be a finite%s number",
                           key, i, nonzero ? ", non-zero" : "");
        if (n == R)
            out[i] = d;
        else
            for (size_t j = 0; j < plane; j++)
                out[i * plane + j] = d;
    }
    return INF_OK;
}

static int parse_preprocess(struct model *m, const json_t *pre, struct err *e)
{
    static const char *const keys[] = {"scale", "mean", "std", NULL};
    const struct model_info *info = &m->info;
    int rc = INF_OK;
    double *mean = NULL, *std = NULL;
    if (!json_is_object(pre))
        return err_set(e, INF_EINVAL, "input.preprocess: expected an object");
    if ((rc = check_keys(pre, "input.preprocess", keys, e)))
        return rc;
    double scale;
    if ((rc = get_num(pre, "input.preprocess", "scale", false, 1.0, -1e30, 1e30, &scale, e)))
        return rc;
    size_t R = info->raw_size;
    size_t C = info->input_rank == 3 ? (size_t)info->input_shape[0] : R;
    size_t plane = info->input_rank == 3 ? R / C : 1;
    mean = malloc(R * sizeof *mean);
    std = malloc(R * sizeof *std);
    m->pre_a = malloc(R * sizeof *m->pre_a);
    m->pre_b = malloc(R * sizeof *m->pre_b);
    if (!mean || !std || !m->pre_a || !m->pre_b) {
        rc = err_set(e, INF_ENOMEM, "input.preprocess: out of memory");
        goto out;
    }
    if ((rc = get_stat(pre, "mean", 0.0, R, C, plane, false, mean, e)))
        goto out;
    if ((rc = get_stat(pre, "std", 1.0, R, C, plane, true, std, e)))
        goto out;
    for (size_t i = 0; i < R; i++) {
        m->pre_a[i] = (float)(scale / std[i]);
        m->pre_b[i] = (float)(-mean[i] / std[i]);
    }
    m->has_preprocess = true;
out:
    free(mean);
    free(std);
    return rc;
}

static int parse_input(struct model *m, const json_t *in, struct err *e)
{
    static const char *const keys[] = {"name",       "datatype",   "shape",
                                       "preprocess", "featurizer", NULL};
    struct model_info *info = &m->info;
    int rc;
    if (!json_is_object(in))
        return err_set(e, INF_EINVAL, "input: expected an object");
    if ((rc = check_keys(in, "input", keys, e)))
        return rc;
    const char *name = NULL, *dt = NULL;
    if ((rc = get_str(in, "input", "name", false, &name, e)))
        return rc;
    if (name == NULL)
        name = "input";
    if (strlen(name) == 0 || strlen(name) >= sizeof info->input_name)
        return err_set(e, INF_EINVAL, "input.name: must be 1 to %zu characters",
                       sizeof info->input_name - 1);
    snprintf(info->input_name, sizeof info->input_name, "%s", name);
    if ((rc = get_str(in, "input", "datatype", false, &dt, e)))
        return rc;
    if (dt == NULL)
        dt = "FP32";
    json_t *shape = json_object_get(in, "shape");
    json_t *feat = json_object_get(in, "featurizer");
    json_t *pre = json_object_get(in, "preprocess");

    if (strcmp(dt, "BYTES") == 0) {
        static const char *const fkeys[] = {"type", "dims", "ngrams", NULL};
        info->input_kind = MODEL_INPUT_TEXT;
        snprintf(info->input_datatype, sizeof info->input_datatype, "BYTES");
        if (shape != NULL && !(json_is_array(shape) && json_array_size(shape) == 1 &&
                               json_is_integer(json_array_get(shape, 0)) &&
                               json_integer_value(json_array_get(shape, 0)) == 1))
            return err_set(e, INF_EINVAL, "input.shape: a BYTES input has shape [1]");
        info->input_rank = 1;
        info->input_shape[0] = 1;
        info->raw_size = 1;
        if (pre != NULL)
            return err_set(e, INF_EINVAL, "input.preprocess: not allowed on a BYTES input");
        if (feat == NULL || !json_is_object(feat))
            return err_set(e, INF_EINVAL,
                           "input.featurizer: a BYTES input needs a featurizer "
                           "object ({\"type\": \"hashing\", \"dims\": N})");
        if ((rc = check_keys(feat, "input.featurizer", fkeys, e)))
            return rc;
        const char *type = NULL;
        if ((rc = get_str(feat, "input.featurizer", "type", true, &type, e)))
            return rc;
        if (strcmp(type, "hashing") != 0)
            return err_set(e, INF_EINVAL, "input.featurizer.type: \"%.64s\" is not \"hashing\"",
                           type);
        long long dims, ngrams;
        if ((rc = get_int(feat, "input.featurizer", "dims", true, 0, 1, MODEL_MAX_HASH_DIMS, &dims,
                          e)))
            return rc;
        if ((rc = get_int(feat, "input.featurizer", "ngrams", false, 1, 1, 3, &ngrams, e)))
            return rc;
        info->hashing.dims = (uint32_t)dims;
        info->hashing.ngrams = (int)ngrams;
        info->in_size = (size_t)dims;
        return INF_OK;
    }

    bool known = false;
    for (size_t i = 0; tensor_datatypes[i] != NULL; i++)
        if (strcmp(dt, tensor_datatypes[i]) == 0)
            known = true;
    if (!known)
        return err_set(e, INF_EINVAL, "input.datatype: \"%.32s\" is not a supported datatype", dt);
    snprintf(info->input_datatype, sizeof info->input_datatype, "%s", dt);
    info->input_kind = MODEL_INPUT_TENSOR;
    if (feat != NULL)
        return err_set(e, INF_EINVAL, "input.featurizer: only BYTES inputs take a featurizer");
    if (shape == NULL || !json_is_array(shape))
        return err_set(e, INF_EINVAL, "input.shape: missing (an array like [64] or [1, 28, 28])");
    size_t rank = json_array_size(shape);
    if (rank != 1 && rank != 3)
        return err_set(e, INF_EINVAL,
                       "input.shape: rank %zu; expected [features] or [channels, height, width]",
                       rank);
    size_t R = 1;
    for (size_t i = 0; i < rank; i++) {
        json_t *d = json_array_get(shape, i);
        if (!json_is_integer(d) || json_integer_value(d) < 1 ||
            json_integer_value(d) > MODEL_MAX_DIM)
            return err_set(e, INF_EINVAL, "input.shape[%zu]: expected an integer in [1, %u]", i,
                           MODEL_MAX_DIM);
        info->input_shape[i] = json_integer_value(d);
        if (!size_mul_ok(R, (size_t)info->input_shape[i], &R) || R > MODEL_MAX_ACTIVATION)
            return err_set(e, INF_EINVAL, "input.shape: too many elements");
    }
    info->input_rank = (int)rank;
    info->raw_size = R;
    info->in_size = R;
    if (pre != NULL)
        return parse_preprocess(m, pre, e);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * layers
 * ---------------------------------------------------------------------------------------- */

static int shape_size(const struct act_shape *s, size_t *out)
{
    size_t n;
    if (!size_mul_ok((size_t)s->c, (size_t)s->h, &n) || !size_mul_ok(n, (size_t)s->w, &n))
        return -1;
    *out = n;
    return 0;
}

/* Parses layers[i] (object o) given its input shape; fills l and l->out. */
static int parse_layer(struct layer *l, const json_t *o, size_t i, struct act_shape in,
                       struct err *e)
{
    char path[32];
    snprintf(path, sizeof path, "layers[%zu]", i);
    if (!json_is_object(o))
        return err_set(e, INF_EINVAL, "%s: expected an object", path);
    const char *type = NULL;
    int rc = get_str(o, path, "type", true, &type, e);
    if (rc)
        return rc;
    bool found = false;
    for (size_t k = 0; k < sizeof layer_names / sizeof layer_names[0]; k++)
        if (strcmp(type, layer_names[k].name) == 0) {
            l->type = layer_names[k].type;
            found = true;
        }
    if (!found)
        return err_set(e, INF_EUNSUPPORTED,
                       "%s.type: unknown layer type \"%.64s\" (supported: Linear, ReLU, "
                       "LeakyReLU, Sigmoid, Tanh, GELU, Dropout, Flatten, Conv2d, MaxPool2d)",
                       path, type);
    l->in = in;
    l->out = in;
    long long v;
    switch (l->type) {
        case LAYER_LINEAR: {
            static const char *const keys[] = {"type", "in_features", "out_features", "bias", NULL};
            bool bias = true;
            if ((rc = check_keys(o, path, keys, e)))
                return rc;
            if ((rc = get_int(o, path, "in_features", true, 0, 1, MODEL_MAX_DIM, &v, e)))
                return rc;
            l->in_features = (int)v;
            if ((rc = get_int(o, path, "out_features", true, 0, 1, MODEL_MAX_DIM, &v, e)))
                return rc;
            l->out_features = (int)v;
            if ((rc = get_bool(o, path, "bias", true, &bias, e)))
                return rc;
            if (in.rank != 1)
                return err_set(e, INF_EINVAL,
                               "%s: Linear needs a flat input but gets [%d, %d, %d]; add a "
                               "Flatten layer before it",
                               path, in.c, in.h, in.w);
            if (in.c != l->in_features)
                return err_set(e, INF_EINVAL,
                               "%s.in_features: %d, but the layer's input has %d features", path,
                               l->in_features, in.c);
            l->out = (struct act_shape){1, l->out_features, 1, 1};
            l->w_rank = 2;
            l->w_shape[0] = l->out_features;
            l->w_shape[1] = l->in_features;
            if (!size_mul_ok((size_t)l->out_features, (size_t)l->in_features, &l->w_n))
                return err_set(e, INF_EINVAL, "%s: too many parameters", path);
            l->b_n = bias ? (size_t)l->out_features : 0;
            break;
        }
        case LAYER_CONV2D: {
            static const char *const keys[] = {
                "type", "in_channels", "out_channels", "kernel_size",  "stride", "padding",
                "bias", "dilation",    "groups",       "padding_mode", NULL};
            bool bias = true;
            int d0, d1;
            if ((rc = check_keys(o, path, keys, e)))
                return rc;
            if ((rc = get_int(o, path, "in_channels", true, 0, 1, MODEL_MAX_DIM, &v, e)))
                return rc;
            l->in_channels = (int)v;
            if ((rc = get_int(o, path, "out_channels", true, 0, 1, MODEL_MAX_DIM, &v, e)))
                return rc;
            l->out_channels = (int)v;
            if ((rc = get_pair(o, path, "kernel_size", true, 0, 1, 4096, &l->kh, &l->kw, e)) ||
                (rc = get_pair(o, path, "stride", false, 1, 1, 4096, &l->sh, &l->sw, e)) ||
                (rc = get_pair(o, path, "padding", false, 0, 0, 4096, &l->ph, &l->pw, e)) ||
                (rc = get_pair(o, path, "dilation", false, 1, 1, 1, &d0, &d1, e)) ||
                (rc = get_int(o, path, "groups", false, 1, 1, 1, &v, e)))
                return rc;
            const char *pm = NULL;
            if ((rc = get_str(o, path, "padding_mode", false, &pm, e)))
                return rc;
            if (pm != NULL && strcmp(pm, "zeros") != 0)
                return err_set(e, INF_EUNSUPPORTED, "%s.padding_mode: only \"zeros\"", path);
            if ((rc = get_bool(o, path, "bias", true, &bias, e)))
                return rc;
            if (in.rank != 3)
                return err_set(e, INF_EINVAL,
                               "%s: Conv2d needs a [channels, height, width] input but gets %d "
                               "features",
                               path, in.c);
            if (in.c != l->in_channels)
                return err_set(e, INF_EINVAL,
                               "%s.in_channels: %d, but the layer's input has %d channels", path,
                               l->in_channels, in.c);
            long long oh = ((long long)in.h + 2LL * l->ph - l->kh) / l->sh + 1;
            long long ow = ((long long)in.w + 2LL * l->pw - l->kw) / l->sw + 1;
            if ((long long)in.h + 2LL * l->ph < l->kh || (long long)in.w + 2LL * l->pw < l->kw)
                return err_set(e, INF_EINVAL,
                               "%s.kernel_size: [%d, %d] is larger than the padded input "
                               "[%d, %d]",
                               path, l->kh, l->kw, in.h + 2 * l->ph, in.w + 2 * l->pw);
            l->out = (struct act_shape){3, l->out_channels, (int)oh, (int)ow};
            l->w_rank = 4;
            l->w_shape[0] = l->out_channels;
            l->w_shape[1] = l->in_channels;
            l->w_shape[2] = l->kh;
            l->w_shape[3] = l->kw;
            size_t n;
            if (!size_mul_ok((size_t)l->out_channels, (size_t)l->in_channels, &n) ||
                !size_mul_ok(n, (size_t)l->kh, &n) || !size_mul_ok(n, (size_t)l->kw, &n))
                return err_set(e, INF_EINVAL, "%s: too many parameters", path);
            l->w_n = n;
            l->b_n = bias ? (size_t)l->out_channels : 0;
            break;
        }
        case LAYER_MAXPOOL2D: {
            static const char *const keys[] = {"type",           "kernel_size", "stride",
                                               "padding",        "dilation",    "ceil_mode",
                                               "return_indices", NULL};
            bool flag;
            int d0, d1;
            if ((rc = check_keys(o, path, keys, e)))
                return rc;
            if ((rc = get_pair(o, path, "kernel_size", true, 0, 1, 4096, &l->kh, &l->kw, e)))
                return rc;
            if ((rc = get_pair(o, path, "stride", false, 0, 1, 4096, &l->sh, &l->sw, e)) ||
                (rc = get_pair(o, path, "padding", false, 0, 0, 4096, &l->ph, &l->pw, e)) ||
                (rc = get_pair(o, path, "dilation", false, 1, 1, 1, &d0, &d1, e)))
                return rc;
            if (l->sh == 0) { /* stride defaults to kernel_size, as in PyTorch */
                l->sh = l->kh;
                l->sw = l->kw;
            }
            if ((rc = get_bool(o, path, "ceil_mode", false, &flag, e)))
                return rc;
            if (flag)
                return err_set(e, INF_EUNSUPPORTED, "%s.ceil_mode: only false", path);
            if ((rc = get_bool(o, path, "return_indices", false, &flag, e)))
                return rc;
            if (flag)
                return err_set(e, INF_EUNSUPPORTED, "%s.return_indices: only false", path);
            if (in.rank != 3)
                return err_set(e, INF_EINVAL,
                               "%s: MaxPool2d needs a [channels, height, width] input", path);
            if (2 * l->ph > l->kh || 2 * l->pw > l->kw)
                return err_set(e, INF_EINVAL, "%s.padding: must be at most half of kernel_size",
                               path);
            if ((long long)in.h + 2LL * l->ph < l->kh || (long long)in.w + 2LL * l->pw < l->kw)
                return err_set(e, INF_EINVAL, "%s.kernel_size: larger than the padded input", path);
            l->in_channels = l->out_channels = in.c;
            l->out = (struct act_shape){3, in.c, (in.h + 2 * l->ph - l->kh) / l->sh + 1,
                                        (in.w + 2 * l->pw - l->kw) / l->sw + 1};
            break;
        }
        case LAYER_FLATTEN: {
            static const char *const keys[] = {"type", "start_dim", "end_dim", NULL};
            if ((rc = check_keys(o, path, keys, e)))
                return rc;
            if ((rc = get_int(o, path, "start_dim", false, 1, 1, 1, &v, e)) ||
                (rc = get_int(o, path, "end_dim", false, -1, -1, -1, &v, e)))
                return rc;
            size_t n;
            if (shape_size(&in, &n) != 0)
                return err_set(e, INF_EINVAL, "%s: too many elements", path);
            l->out = (struct act_shape){1, (int)n, 1, 1};
            break;
        }
        case LAYER_LEAKY_RELU: {
            static const char *const keys[] = {"type", "negative_slope", "inplace", NULL};
            double slope;
            bool inplace;
            if ((rc = check_keys(o, path, keys, e)) ||
                (rc = get_num(o, path, "negative_slope", false, 0.01, -1e6, 1e6, &slope, e)) ||
                (rc = get_bool(o, path, "inplace", false, &inplace, e)))
                return rc;
            l->negative_slope = (float)slope;
            break;
        }
        case LAYER_GELU: {
            static const char *const keys[] = {"type", "approximate", NULL};
            const char *ap = NULL;
            if ((rc = check_keys(o, path, keys, e)) ||
                (rc = get_str(o, path, "approximate", false, &ap, e)))
                return rc;
            /* negative_slope doubles as the GELU variant flag: 0 exact (erf), 1 tanh. */
            if (ap == NULL || strcmp(ap, "none") == 0)
                l->negative_slope = 0;
            else if (strcmp(ap, "tanh") == 0)
                l->negative_slope = 1;
            else
                return err_set(e, INF_EINVAL,
                               "%s.approximate: \"%.32s\" is not \"none\" or \"tanh\"", path, ap);
            break;
        }
        case LAYER_DROPOUT: {
            static const char *const keys[] = {"type", "p", "inplace", NULL};
            double p;
            bool inplace;
            if ((rc = check_keys(o, path, keys, e)) ||
                (rc = get_num(o, path, "p", false, 0.5, 0, 1, &p, e)) ||
                (rc = get_bool(o, path, "inplace", false, &inplace, e)))
                return rc;
            if (p >= 1)
                return err_set(e, INF_EINVAL, "%s.p: must be below 1", path);
            l->p = (float)p;
            break;
        }
        default: { /* ReLU, Sigmoid, Tanh: no attributes but PyTorch's inplace flag */
            static const char *const keys[] = {"type", "inplace", NULL};
            bool inplace;
            if ((rc = check_keys(o, path, keys, e)) ||
                (rc = get_bool(o, path, "inplace", false, &inplace, e)))
                return rc;
            break;
        }
    }
    if (l->out.h < 1 || l->out.w < 1 || l->out.c < 1)
        return err_set(e, INF_EINVAL, "%s: output would be empty", path);
    if (shape_size(&l->in, &l->in_size) != 0 || shape_size(&l->out, &l->out_size) != 0 ||
        l->out_size > MODEL_MAX_ACTIVATION)
        return err_set(e, INF_EINVAL, "%s: activation too large", path);
    return INF_OK;
}

static int parse_layers(struct model *m, const json_t *arr, struct err *e)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return err_set(e, INF_EINVAL, "layers: expected a non-empty array");
    size_t n = json_array_size(arr);
    if (n > MODEL_MAX_LAYERS)
        return err_set(e, INF_ELIMIT, "layers: %zu layers, the limit is %d", n, MODEL_MAX_LAYERS);
    m->layers = calloc(n, sizeof *m->layers);
    if (m->layers == NULL)
        return err_set(e, INF_ENOMEM, "layers: out of memory");
    m->n_layers = n;

    struct act_shape s;
    const struct model_info *info = &m->info;
    if (info->input_kind == MODEL_INPUT_TEXT || info->input_rank == 1)
        s = (struct act_shape){1, (int)info->in_size, 1, 1};
    else
        s = (struct act_shape){3, (int)info->input_shape[0], (int)info->input_shape[1],
                               (int)info->input_shape[2]};
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        struct layer *l = &m->layers[i];
        int rc = parse_layer(l, json_array_get(arr, i), i, s, e);
        if (rc)
            return rc;
        l->w_off = off;
        if (l->type == LAYER_LINEAR) {
            l->wt_off = m->n_wt;
            m->n_wt += l->w_n; /* <= n_params, checked below */
        }
        if (!size_add_ok(off, l->w_n, &off))
            return err_set(e, INF_EINVAL, "layers: too many parameters");
        l->b_off = off;
        if (!size_add_ok(off, l->b_n, &off) || off > MODEL_MAX_PARAMS)
            return err_set(e, INF_ELIMIT, "layers: more than %zu parameters",
                           (size_t)MODEL_MAX_PARAMS);
        s = l->out;
    }
    if (s.rank != 1)
        return err_set(e, INF_EINVAL,
                       "layers: the last layer outputs [%d, %d, %d]; add Flatten and Linear to "
                       "produce a flat output",
                       s.c, s.h, s.w);
    m->n_params = off;
    m->info.n_params = off;
    m->info.n_layers = n;
    m->info.out_size = (size_t)s.c;

    /* Fusion: Linear/Conv2d + ReLU compute max(0, .) in the producer's bias loop; Flatten and
     * Dropout only reinterpret or mask their input, so they work in place. */
    for (size_t i = 0; i < n; i++) {
        struct layer *l = &m->layers[i];
        if ((l->type == LAYER_LINEAR || l->type == LAYER_CONV2D) && i + 1 < n &&
            m->layers[i + 1].type == LAYER_RELU) {
            l->fuse_relu = true;
            m->layers[i + 1].in_place = true;
        }
        if (l->type == LAYER_FLATTEN)
            l->in_place = true;
        if (l->type == LAYER_DROPOUT) {
            /* Dropout masks its input buffer in place unless a layer that owns or shares that
             * buffer takes its derivative from its output value (Sigmoid, Tanh): masking would
             * change what their backward reads. ReLU only reads the sign, which survives. */
            bool safe = true;
            for (size_t k = i; k-- > 0;) {
                enum layer_type t = m->layers[k].type;
                if (t == LAYER_SIGMOID || t == LAYER_TANH)
                    safe = false;
                if (!m->layers[k].in_place)
                    break;
            }
            l->in_place = safe;
        }
    }
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * The document
 * ---------------------------------------------------------------------------------------- */

static int parse_labels(struct model *m, const json_t *labels, struct err *e)
{
    struct model_info *info = &m->info;
    size_t C = info->out_size;
    if (info->task == MODEL_TASK_REGRESSION) {
        if (labels != NULL)
            return err_set(e, INF_EINVAL, "labels: a regressor has no labels");
        return INF_OK;
    }
    if (C < 2 || C > MODEL_MAX_LABELS)
        return err_set(e, INF_EINVAL, "layers: a classifier needs 2 to %d outputs, got %zu",
                       MODEL_MAX_LABELS, C);
    if (labels != NULL) {
        if (!json_is_array(labels))
            return err_set(e, INF_EINVAL, "labels: expected an array of strings");
        if (json_array_size(labels) != C)
            return err_set(e, INF_EINVAL, "labels: %zu labels, but the last layer has %zu outputs",
                           json_array_size(labels), C);
    }
    info->labels = calloc(C, sizeof *info->labels);
    if (info->labels == NULL)
        return err_set(e, INF_ENOMEM, "labels: out of memory");
    info->n_labels = C;
    for (size_t i = 0; i < C; i++) {
        char num[32];
        const char *s = num;
        if (labels != NULL) {
            json_t *v = json_array_get(labels, i);
            if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256 ||
                strlen(json_string_value(v)) != json_string_length(v))
                return err_set(e, INF_EINVAL, "labels[%zu]: expected a string of 1 to 256 bytes",
                               i);
            s = json_string_value(v);
            for (size_t j = 0; j < i; j++)
                if (strcmp(info->labels[j], s) == 0)
                    return err_set(e, INF_EINVAL, "labels[%zu]: \"%.64s\" repeats labels[%zu]", i,
                                   s, j);
        } else {
            snprintf(num, sizeof num, "%zu", i);
        }
        info->labels[i] = strdup(s);
        if (info->labels[i] == NULL)
            return err_set(e, INF_ENOMEM, "labels: out of memory");
    }
    return INF_OK;
}

static int parse_serving(struct model *m, const json_t *sv, struct err *e)
{
    static const char *const keys[] = {"max_batch_size", "max_batch_delay_us", NULL};
    if (sv == NULL)
        return INF_OK;
    if (!json_is_object(sv))
        return err_set(e, INF_EINVAL, "serving: expected an object");
    int rc = check_keys(sv, "serving", keys, e);
    long long v;
    if (rc || (rc = get_int(sv, "serving", "max_batch_size", false, 0, 1, 65536, &v, e)))
        return rc;
    m->info.serving.max_batch_size = (size_t)v;
    if ((rc = get_int(sv, "serving", "max_batch_delay_us", false, 0, 0, 10000000, &v, e)))
        return rc;
    m->info.serving.max_batch_delay_us = v;
    return INF_OK;
}

int config_parse(struct model *m, json_t *doc, struct err *e)
{
    static const char *const keys[] = {"format",      "task",     "input",    "labels",
                                       "layers",      "training", "serving",  "name",
                                       "description", "version",  "metadata", NULL};
    if (!json_is_object(doc))
        return err_set(e, INF_EINVAL, "model.json: expected a JSON object");
    int rc = check_keys(doc, "model.json", keys, e);
    if (rc)
        return rc;
    long long format;
    if ((rc = get_int(doc, "model.json", "format", false, 1, 1, 1, &format, e)))
        return rc;
    const char *task = NULL;
    if ((rc = get_str(doc, "model.json", "task", true, &task, e)))
        return rc;
    if (strcmp(task, "classification") == 0)
        m->info.task = MODEL_TASK_CLASSIFICATION;
    else if (strcmp(task, "regression") == 0)
        m->info.task = MODEL_TASK_REGRESSION;
    else
        return err_set(e, INF_EINVAL, "task: \"%.64s\" is not classification or regression", task);
    json_t *input = json_object_get(doc, "input");
    if (input == NULL)
        return err_set(e, INF_EINVAL, "input: missing");
    if ((rc = parse_input(m, input, e)) ||
        (rc = parse_layers(m, json_object_get(doc, "layers"), e)))
        return rc;
    if ((rc = parse_labels(m, json_object_get(doc, "labels"), e)) ||
        (rc = config_parse_training(json_object_get(doc, "training"), m->info.task,
                                    &m->info.training, e)) ||
        (rc = parse_serving(m, json_object_get(doc, "serving"), e)))
        return rc;
    m->config = json_incref(doc);
    return INF_OK;
}
