/*
 * model/forward.c - workspaces, the forward and backward passes over the layer list, and the
 * public inference entry points.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ------------------------------------------------------------------------------------------
 * Workspace
 * ---------------------------------------------------------------------------------------- */

void model_workspace_free(struct model_workspace *ws)
{
    if (ws == NULL)
        return;
    free(ws->act);
    free(ws->act_mem);
    free(ws->grad_a);
    free(ws->grad_b);
    free(ws->col);
    free(ws->dcol);
    free(ws->pool_idx);
    free(ws->pool_off);
    free(ws->drop_mask);
    free(ws->drop_off);
    free(ws->logits);
    free(ws->feat);
    free(ws->in_copy);
    free(ws);
}

/* n floats (or int32s) for max_batch samples of `per` elements, overflow-checked. */
static void *alloc_batch(size_t max_batch, size_t per, size_t elem, bool *ok)
{
    size_t n;
    if (!size_mul_ok(max_batch, per, &n) || !size_mul_ok(n, elem, &n)) {
        *ok = false;
        return NULL;
    }
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        *ok = false;
    return p;
}

struct model_workspace *model_workspace_new(const struct model *m, size_t max_batch, struct err *e)
{
    if (max_batch == 0 || max_batch > 1u << 20) {
        err_set(e, INF_EINVAL, "workspace: batch size %zu out of range", max_batch);
        return NULL;
    }
    struct model_workspace *ws = calloc(1, sizeof *ws);
    bool ok = ws != NULL;
    if (!ok)
        goto fail;
    ws->model = m;
    ws->max_batch = max_batch;
    size_t L = m->n_layers;
    size_t max_act = m->info.in_size, act_total = 0, col = 1, pool_total = 0, drop_total = 0;
    for (size_t i = 0; i < L; i++) {
        const struct layer *l = &m->layers[i];
        if (l->out_size > max_act)
            max_act = l->out_size;
        if (!l->in_place)
            act_total += l->out_size;
        if (l->type == LAYER_CONV2D) {
            size_t k = (size_t)l->in_channels * l->kh * l->kw * (size_t)l->out.h * l->out.w;
            if (k > col)
                col = k;
        }
        if (l->type == LAYER_MAXPOOL2D)
            pool_total += l->out_size;
        if (l->type == LAYER_DROPOUT)
            drop_total += l->out_size;
    }
    ws->max_act = max_act;
    ws->act = calloc(L + 1, sizeof *ws->act);
    ws->pool_off = calloc(L, sizeof *ws->pool_off);
    ws->drop_off = calloc(L, sizeof *ws->drop_off);
    ok = ws->act && ws->pool_off && ws->drop_off;
    ws->act_mem = alloc_batch(max_batch, act_total, sizeof(float), &ok);
    ws->grad_a = alloc_batch(max_batch, max_act, sizeof(float), &ok);
    ws->grad_b = alloc_batch(max_batch, max_act, sizeof(float), &ok);
    ws->col = alloc_batch(1, col, sizeof(float), &ok);
    ws->dcol = alloc_batch(1, col, sizeof(float), &ok);
    ws->pool_idx = alloc_batch(max_batch, pool_total, sizeof(int32_t), &ok);
    ws->drop_mask = alloc_batch(max_batch, drop_total, sizeof(float), &ok);
    ws->logits = alloc_batch(max_batch, m->info.out_size, sizeof(float), &ok);
    ws->feat = alloc_batch(max_batch, m->info.in_size, sizeof(float), &ok);
    if (L > 0 && m->layers[0].in_place)
        ws->in_copy = alloc_batch(max_batch, m->info.in_size, sizeof(float), &ok);
    if (!ok)
        goto fail;
    /* Carve activations: an in-place layer shares its input's buffer. */
    size_t off = 0, poff = 0, doff = 0;
    for (size_t i = 0; i < L; i++) {
        const struct layer *l = &m->layers[i];
        if (!l->in_place) {
            ws->act[i + 1] = ws->act_mem + off * max_batch;
            off += l->out_size;
        }
        ws->pool_off[i] = poff * max_batch;
        ws->drop_off[i] = doff * max_batch;
        if (l->type == LAYER_MAXPOOL2D)
            poff += l->out_size;
        if (l->type == LAYER_DROPOUT)
            doff += l->out_size;
    }
    return ws;
fail:
    model_workspace_free(ws);
    err_set(e, INF_ENOMEM, "workspace: out of memory for batch %zu", max_batch);
    return NULL;
}

size_t model_workspace_max_batch(const struct model_workspace *ws)
{
    return ws->max_batch;
}

/* ------------------------------------------------------------------------------------------
 * Passes
 * ---------------------------------------------------------------------------------------- */

const float *forward_pass(const struct model *m, struct model_workspace *ws, const float *x,
                          size_t B, bool training, struct rng *rng)
{
    if (ws->in_copy != NULL) {
        memcpy(ws->in_copy, x, B * m->info.in_size * sizeof *x);
        x = ws->in_copy;
    }
    ws->act[0] = (float *)x; /* only written through when in_copy made it private */
    ws->training = training;
    ws->passes++;
    const float *wt = m->wt_fresh ? m->wt : NULL;
    for (size_t i = 0; i < m->n_layers; i++) {
        const struct layer *l = &m->layers[i];
        if (l->in_place)
            ws->act[i + 1] = ws->act[i];
        layer_forward(l, m->params, wt, ws->act[i], ws->act[i + 1], B, ws, i, training, rng);
    }
    return ws->act[m->n_layers];
}

void backward_pass(const struct model *m, struct model_workspace *ws, const float *dout, size_t B,
                   float *grads, float *dx, const struct backward_hook *hook)
{
    size_t L = m->n_layers;
    /* Without dx, nothing below the first layer with parameters needs a gradient. */
    size_t stop = 0;
    if (dx == NULL) {
        stop = L;
        for (size_t i = 0; i < L; i++)
            if (m->layers[i].w_n > 0) {
                stop = i;
                break;
            }
        if (stop == L || grads == NULL)
            return;
    }
    const bool grads_zero = hook != NULL && hook->grads_zero;
    float *g = ws->grad_a;
    memcpy(g, dout, B * m->info.out_size * sizeof *g);
    for (size_t i = L; i-- > stop;) {
        const struct layer *l = &m->layers[i];
        float *din;
        if (i == stop)
            din = dx; /* NULL when only parameter gradients are wanted */
        else if (l->in_place)
            din = g;
        else
            din = g == ws->grad_a ? ws->grad_b : ws->grad_a;
        layer_backward(l, m->params, ws->act[i], ws->act[i + 1], g, din, grads, grads_zero, B, ws,
                       i);
        if (hook != NULL && grads != NULL)
            hook->layer_done(hook->user, l);
        g = din;
    }
}

/* ------------------------------------------------------------------------------------------
 * Public inference
 * ---------------------------------------------------------------------------------------- */

static int check_batch(const struct model *m, const struct model_workspace *ws, size_t B,
                       struct err *e)
{
    if (ws->model != m)
        return err_set(e, INF_EINVAL, "workspace was made for another model");
    if (B == 0 || B > ws->max_batch)
        return err_set(e, INF_ELIMIT, "batch of %zu samples; this workspace takes 1 to %zu", B,
                       ws->max_batch);
    return INF_OK;
}

int model_forward(const struct model *m, struct model_workspace *ws, const float *x, size_t B,
                  float *out, struct err *e)
{
    int rc = check_batch(m, ws, B, e);
    if (rc)
        return rc;
    const float *y = forward_pass(m, ws, x, B, false, NULL);
    memcpy(out, y, B * m->info.out_size * sizeof *out);
    return INF_OK;
}

void model_softmax(const float *logits, size_t B, size_t C, float *probs)
{
    for (size_t r = 0; r < B; r++) {
        const float *z = logits + r * C;
        float *p = probs + r * C;
        float mx = z[0];
        for (size_t j = 1; j < C; j++)
            if (z[j] > mx)
                mx = z[j];
        double sum = 0.0;
        for (size_t j = 0; j < C; j++) {
            p[j] = expf(z[j] - mx);
            sum += p[j];
        }
        float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < C; j++)
            p[j] *= inv;
    }
}

int model_predict(const struct model *m, struct model_workspace *ws, const float *x, size_t B,
                  float *out, struct err *e)
{
    int rc = model_forward(m, ws, x, B, out, e);
    if (rc == INF_OK && m->info.task == MODEL_TASK_CLASSIFICATION)
        model_softmax(out, B, m->info.out_size, out);
    return rc;
}
