/*
 * model/explain.c - attributions: saliency, gradient x input, integrated gradients, and the
 * mapping of hashed-feature attributions back to the tokens of a text.
 *
 * The explained quantity f_t is the target's logit (classifier) or output (regressor), as
 * Captum does for a model whose forward returns logits. Gradients are taken with respect to
 * the input as the client sent it: the preprocess x' = a x + b is affine, so
 * d f / d x = a * d f / d x'.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hashing.h"
#include "internal.h"

#define ATTR_DEFAULT_STEPS 50
#define ATTR_MAX_STEPS     1024

int model_attr_method_parse(const char *name)
{
    if (strcmp(name, "saliency") == 0)
        return MODEL_ATTR_SALIENCY;
    if (strcmp(name, "gradient_x_input") == 0)
        return MODEL_ATTR_GRADIENT_X_INPUT;
    if (strcmp(name, "integrated_gradients") == 0)
        return MODEL_ATTR_INTEGRATED_GRADIENTS;
    return -1;
}

/* Picks the target: o->target if given (checked), else the argmax of out (classifier) or 0. */
static int pick_target(const struct model *m, const struct model_attr_opts *o, const float *out,
                       int *target, struct err *e)
{
    size_t O = m->info.out_size;
    if (o->target >= 0) {
        if ((size_t)o->target >= O)
            return err_set(e, INF_EINVAL, "target %d is out of range: the model has %zu outputs",
                           o->target, O);
        *target = o->target;
        return INF_OK;
    }
    size_t best = 0;
    if (m->info.task == MODEL_TASK_CLASSIFICATION)
        for (size_t j = 1; j < O; j++)
            if (out[j] > out[best])
                best = j;
    *target = (int)best;
    return INF_OK;
}

/*
 * Gradient of f_target with respect to the features for B feature rows x (B, F):
 * grad (B, F). Uses ws->logits as the one-hot seed.
 */
static void feature_grad(const struct model *m, struct model_workspace *ws, const float *x,
                         size_t B, int target, float *grad)
{
    size_t O = m->info.out_size;
    forward_pass(m, ws, x, B, false, NULL);
    memset(ws->logits, 0, B * O * sizeof(float));
    for (size_t r = 0; r < B; r++)
        ws->logits[r * O + (size_t)target] = 1.0f;
    backward_pass(m, ws, ws->logits, B, NULL, grad, NULL);
}

/*
 * Feature-space attributions of one sample: x (F) features; for integrated gradients the path
 * runs from featurize(baseline) to x in feature space, which equals the raw-space path because
 * the featurizer is affine (tensors) or the baseline is the empty text (zeros).
 *   attr (F) receives the attribution with respect to the features; grad_out (F), if not NULL,
 *   the (mean) gradient.
 */
static int feature_attr(const struct model *m, struct model_workspace *ws, const float *x,
                        const float *x0, const struct model_attr_opts *o, float *attr,
                        float *grad_out, int *target, struct err *e)
{
    size_t F = m->info.in_size, O = m->info.out_size;
    size_t cap = model_workspace_max_batch(ws);
    float *grad = NULL, *pts = NULL, *out = NULL;
    int rc = INF_OK;
    size_t steps = o->steps ? o->steps : ATTR_DEFAULT_STEPS;
    if (o->method == MODEL_ATTR_INTEGRATED_GRADIENTS && steps > ATTR_MAX_STEPS)
        return err_set(e, INF_ELIMIT, "steps: %zu is more than %d", steps, ATTR_MAX_STEPS);
    size_t chunk = o->method == MODEL_ATTR_INTEGRATED_GRADIENTS ? (steps < cap ? steps : cap) : 1;
    grad = malloc(chunk * F * sizeof *grad);
    pts = malloc(chunk * F * sizeof *pts);
    out = malloc(O * sizeof *out);
    if (grad == NULL || pts == NULL || out == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto done;
    }
    memcpy(out, forward_pass(m, ws, x, 1, false, NULL), O * sizeof *out);
    if ((rc = pick_target(m, o, out, target, e)))
        goto done;
    if (o->method != MODEL_ATTR_INTEGRATED_GRADIENTS) {
        feature_grad(m, ws, x, 1, *target, grad);
        for (size_t i = 0; i < F; i++)
            attr[i] = o->method == MODEL_ATTR_SALIENCY ? grad[i] : grad[i] * x[i];
        if (grad_out != NULL)
            memcpy(grad_out, grad, F * sizeof *grad);
        goto done;
    }
    /* Midpoint Riemann sum of the gradient along the straight path x0 -> x. */
    double *sum = calloc(F, sizeof *sum);
    if (sum == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t k0 = 0; k0 < steps; k0 += chunk) {
        size_t B = steps - k0 < chunk ? steps - k0 : chunk;
        for (size_t r = 0; r < B; r++) {
            float alpha = (float)(((double)(k0 + r) + 0.5) / (double)steps);
            for (size_t i = 0; i < F; i++)
                pts[r * F + i] = x0[i] + alpha * (x[i] - x0[i]);
        }
        feature_grad(m, ws, pts, B, *target, grad);
        for (size_t r = 0; r < B; r++)
            for (size_t i = 0; i < F; i++)
                sum[i] += grad[r * F + i];
    }
    for (size_t i = 0; i < F; i++) {
        float mean = (float)(sum[i] / (double)steps);
        attr[i] = (x[i] - x0[i]) * mean;
        if (grad_out != NULL)
            grad_out[i] = mean;
    }
    free(sum);
done:
    free(grad);
    free(pts);
    free(out);
    return rc;
}

int model_attribute(const struct model *m, struct model_workspace *ws, const float *raw,
                    const struct model_attr_opts *o, float *attr, int *target_out, struct err *e)
{
    const struct model_info *info = &m->info;
    if (info->input_kind != MODEL_INPUT_TENSOR)
        return err_set(e, INF_EINVAL, "a text model is explained with model_attribute_text");
    if (ws->model != m)
        return err_set(e, INF_EINVAL, "workspace was made for another model");
    size_t R = info->raw_size;
    float *x = malloc(R * sizeof *x), *x0 = calloc(R, sizeof *x0);
    float *fattr = malloc(R * sizeof *fattr), *grad = malloc(R * sizeof *grad);
    int rc = INF_OK, target = 0;
    if (x == NULL || x0 == NULL || fattr == NULL || grad == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    if (o->baseline != NULL)
        memcpy(x0, o->baseline, R * sizeof *x0);
    model_featurize_tensor(m, raw, 1, x, NULL);
    model_featurize_tensor(m, x0, 1, x0, NULL);
    if ((rc = feature_attr(m, ws, x, x0, o, fattr, grad, &target, e)))
        goto out;
    for (size_t i = 0; i < R; i++) {
        float a = m->has_preprocess ? m->pre_a[i] : 1.0f;
        float g = grad[i] * a; /* d f / d raw */
        switch (o->method) {
            case MODEL_ATTR_SALIENCY:
                attr[i] = fabsf(g);
                break;
            case MODEL_ATTR_GRADIENT_X_INPUT:
                attr[i] = g * raw[i];
                break;
            default: /* (raw - raw0) * mean grad_raw == (x - x0) * mean grad_x */
                attr[i] = fattr[i];
                break;
        }
    }
    *target_out = target;
out:
    free(x);
    free(x0);
    free(fattr);
    free(grad);
    return rc;
}

void model_token_scores_free(struct model_token_score *tokens, size_t n_tokens)
{
    if (tokens == NULL)
        return;
    for (size_t i = 0; i < n_tokens; i++)
        free(tokens[i].token);
    free(tokens);
}

int model_attribute_text(const struct model *m, struct model_workspace *ws, const char *text,
                         size_t len, const struct model_attr_opts *o,
                         struct model_token_score **tokens, size_t *n_tokens, int *target_out,
                         struct err *e)
{
    const struct model_info *info = &m->info;
    if (info->input_kind != MODEL_INPUT_TEXT)
        return err_set(e, INF_EINVAL, "model_attribute_text needs a text model");
    if (ws->model != m)
        return err_set(e, INF_EINVAL, "workspace was made for another model");
    const uint32_t dims = info->hashing.dims;
    const size_t ng = (size_t)info->hashing.ngrams;
    size_t nt = hash_tokenize(text, len, NULL, 0);
    struct hash_token *toks = malloc((nt ? nt : 1) * sizeof *toks);
    float *x = malloc(dims * sizeof *x), *x0 = calloc(dims, sizeof *x0);
    float *fattr = malloc(dims * sizeof *fattr), *count = calloc(dims, sizeof *count);
    struct model_token_score *res = calloc(nt ? nt : 1, sizeof *res);
    int rc = INF_OK, target = 0;
    if (!toks || !x || !x0 || !fattr || !count || !res) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto fail;
    }
    hash_tokenize(text, len, toks, nt);
    model_hash_text(text, len, dims, (int)ng, x);
    /* The baseline of a text is the empty text: all-zero features. */
    struct model_attr_opts fo = *o;
    fo.baseline = NULL;
    if ((rc = feature_attr(m, ws, x, x0, &fo, fattr, NULL, &target, e)))
        goto fail;
    if (o->method == MODEL_ATTR_SALIENCY)
        for (uint32_t i = 0; i < dims; i++)
            fattr[i] = fabsf(fattr[i]);
    /* How many n-grams landed in each bucket, then each n-gram's share to its tokens. */
    for (size_t n = 1; n <= ng; n++)
        for (size_t t = 0; t + n <= nt; t++)
            count[hash_ngram_bucket(text, toks, t, n, dims)] += 1.0f;
    for (size_t t = 0; t < nt; t++) {
        res[t].token = malloc(toks[t].len + 1);
        if (res[t].token == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory");
            goto fail;
        }
        for (size_t k = 0; k < toks[t].len; k++) {
            unsigned char ch = (unsigned char)text[toks[t].start + k];
            res[t].token[k] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
        }
        res[t].token[toks[t].len] = '\0';
    }
    for (size_t n = 1; n <= ng; n++)
        for (size_t t = 0; t + n <= nt; t++) {
            uint32_t b = hash_ngram_bucket(text, toks, t, n, dims);
            float share = fattr[b] / count[b] / (float)n;
            for (size_t k = t; k < t + n; k++)
                res[k].score += share;
        }
    *tokens = res;
    *n_tokens = nt;
    *target_out = target;
    res = NULL;
    goto out;
fail:
    model_token_scores_free(res, nt);
out:
    free(toks);
    free(x);
    free(x0);
    free(fattr);
    free(count);
    return rc;
}
