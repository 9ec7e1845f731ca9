/*
 * model/train.c - data sets, the training loop, optimizers (torch.optim semantics),
 * checkpoints with exact resume, evaluation.
 *
 * Determinism: the shuffle permutation and the dropout masks of epoch k are drawn from
 * generators seeded by (seed, k), so a run resumed at an epoch boundary from a checkpoint
 * (weights + optimizer state + counters) continues bit for bit as if never stopped.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* ------------------------------------------------------------------------------------------
 * Data sets
 * ---------------------------------------------------------------------------------------- */

int model_dataset_init(struct model_dataset *ds, size_t n, size_t x_dim, size_t y_dim,
                       struct err *e)
{
    memset(ds, 0, sizeof *ds);
    size_t nx, ny;
    if (!size_mul_ok(n, x_dim, &nx) || !size_mul_ok(nx, sizeof(float), &nx) ||
        !size_mul_ok(n, y_dim ? y_dim : 1, &ny) || !size_mul_ok(ny, sizeof(float), &ny))
        return err_set(e, INF_ELIMIT, "data set of %zu samples is too large", n);
    ds->x = calloc(1, nx ? nx : 1);
    if (y_dim > 0)
        ds->targets = calloc(1, ny ? ny : 1);
    else
        ds->labels = calloc(n ? n : 1, sizeof *ds->labels);
    if (ds->x == NULL || (ds->targets == NULL && ds->labels == NULL)) {
        model_dataset_deinit(ds);
        return err_set(e, INF_ENOMEM, "out of memory for %zu samples", n);
    }
    ds->n = n;
    ds->x_dim = x_dim;
    ds->y_dim = y_dim;
    return INF_OK;
}

void model_dataset_deinit(struct model_dataset *ds)
{
    if (ds == NULL)
        return;
    free(ds->x);
    free(ds->labels);
    free(ds->targets);
    memset(ds, 0, sizeof *ds);
}

static void dataset_copy_row(struct model_dataset *dst, size_t di, const struct model_dataset *src,
                             size_t si)
{
    memcpy(dst->x + di * dst->x_dim, src->x + si * src->x_dim, src->x_dim * sizeof(float));
    if (src->y_dim > 0)
        memcpy(dst->targets + di * dst->y_dim, src->targets + si * src->y_dim,
               src->y_dim * sizeof(float));
    else
        dst->labels[di] = src->labels[si];
}

int model_dataset_split(const struct model_dataset *src, double fraction, uint64_t seed,
                        struct model_dataset *train, struct model_dataset *valid, struct err *e)
{
    if (!(fraction >= 0 && fraction < 1))
        return err_set(e, INF_EINVAL, "validation split %g is not in [0, 1)", fraction);
    size_t nv = (size_t)llround(fraction * (double)src->n);
    if (nv >= src->n && src->n > 0)
        nv = src->n - 1;
    bool *is_valid = calloc(src->n ? src->n : 1, sizeof *is_valid);
    size_t *perm = malloc((src->n ? src->n : 1) * sizeof *perm);
    int rc = INF_OK;
    if (is_valid == NULL || perm == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    struct rng r;
    rng_seed(&r, rng_derive(seed, 0x5917));
    for (size_t i = 0; i < src->n; i++)
        perm[i] = i;
    for (size_t i = src->n; i > 1; i--) {
        size_t j = (size_t)rng_below(&r, i);
        size_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
    for (size_t i = 0; i < nv; i++)
        is_valid[perm[i]] = true;
    if ((rc = model_dataset_init(train, src->n - nv, src->x_dim, src->y_dim, e)))
        goto out;
    if ((rc = model_dataset_init(valid, nv, src->x_dim, src->y_dim, e))) {
        model_dataset_deinit(train);
        goto out;
    }
    size_t ti = 0, vi = 0;
    for (size_t i = 0; i < src->n; i++) {
        if (is_valid[i])
            dataset_copy_row(valid, vi++, src, i);
        else
            dataset_copy_row(train, ti++, src, i);
    }
out:
    free(is_valid);
    free(perm);
    return rc;
}

int model_dataset_check(const struct model *m, const struct model_dataset *ds, struct err *e)
{
    const struct model_info *info = &m->info;
    if (ds->x_dim != info->in_size)
        return err_set(e, INF_EINVAL, "data has %zu features per sample, the model takes %zu",
                       ds->x_dim, info->in_size);
    if (info->task == MODEL_TASK_CLASSIFICATION) {
        if (ds->labels == NULL)
            return err_set(e, INF_EINVAL, "a classifier trains on labels");
        for (size_t i = 0; i < ds->n; i++)
            if (ds->labels[i] < 0 || (size_t)ds->labels[i] >= info->out_size)
                return err_set(e, INF_EINVAL, "sample %zu: label index %d is not in [0, %zu)", i,
                               ds->labels[i], info->out_size);
    } else {
        if (ds->targets == NULL || ds->y_dim != info->out_size)
            return err_set(e, INF_EINVAL, "a regressor trains on targets of %zu values",
                           info->out_size);
        for (size_t i = 0; i < ds->n * ds->y_dim; i++)
            if (!isfinite(ds->targets[i]))
                return err_set(e, INF_EINVAL, "sample %zu: target is not a finite number",
                               i / ds->y_dim);
    }
    for (size_t i = 0; i < ds->n * ds->x_dim; i++)
        if (!isfinite(ds->x[i]))
            return err_set(e, INF_EINVAL, "sample %zu: input is not finite after preprocess",
                           i / ds->x_dim);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Trainer
 * ---------------------------------------------------------------------------------------- */

struct model_trainer {
    struct model *m; /* borrowed, mutated */
    struct model_training cfg;
    const struct model_dataset *train; /* borrowed */
    const struct model_dataset *valid; /* borrowed, may be NULL */
    struct model_workspace *ws;        /* max_batch = batch_size */
    float *grads;                      /* (n_params) zeros between steps (see Optimizers) */
    float *opt1;                       /* (n_params) Adam exp_avg, or SGD momentum_buffer */
    float *opt2;                       /* (n_params) Adam exp_avg_sq */
    bool opt1_init;                    /* SGD: momentum buffer exists (after the first step) */
    uint64_t step;
    int epochs_done;
    float *xb;    /* (batch, F) gathered inputs when shuffling */
    int32_t *yb;  /* (batch) gathered labels */
    float *tb;    /* (batch, O) gathered targets */
    float *dout;  /* (batch, O) dL/doutput */
    size_t *perm; /* (N) sample order of the current epoch */
};

void model_trainer_free(struct model_trainer *t)
{
    if (t == NULL)
        return;
    model_workspace_free(t->ws);
    free(t->grads);
    free(t->opt1);
    free(t->opt2);
    free(t->xb);
    free(t->yb);
    free(t->tb);
    free(t->dout);
    free(t->perm);
    free(t);
}

struct model_trainer *model_trainer_new(struct model *m, const struct model_training *cfg,
                                        const struct model_dataset *train,
                                        const struct model_dataset *valid, struct err *e)
{
    const struct model_info *info = &m->info;
    if (m->n_params == 0) {
        err_set(e, INF_EINVAL, "the model has no trainable parameters");
        return NULL;
    }
    if (train->n == 0) {
        err_set(e, INF_EINVAL, "the training set is empty");
        return NULL;
    }
    if (model_dataset_check(m, train, e) != INF_OK ||
        (valid != NULL && valid->n > 0 && model_dataset_check(m, valid, e) != INF_OK))
        return NULL;
    struct model_trainer *t = calloc(1, sizeof *t);
    if (t == NULL)
        goto oom;
    t->m = m;
    t->cfg = *cfg;
    t->train = train;
    t->valid = (valid != NULL && valid->n > 0) ? valid : NULL;
    size_t bs = cfg->batch_size;
    t->ws = model_workspace_new(m, bs, e);
    if (t->ws == NULL)
        goto fail;
    t->grads = calloc(m->n_params, sizeof(float));
    t->opt1 = calloc(m->n_params, sizeof(float));
    t->opt2 = calloc(m->n_params, sizeof(float));
    t->xb = malloc(bs * info->in_size * sizeof(float));
    t->yb = malloc(bs * sizeof(int32_t));
    t->tb = malloc(bs * info->out_size * sizeof(float));
    t->dout = malloc(bs * info->out_size * sizeof(float));
    t->perm = malloc(train->n * sizeof(size_t));
    if (!t->grads || !t->opt1 || !t->opt2 || !t->xb || !t->yb || !t->tb || !t->dout || !t->perm)
        goto oom;
    return t;
oom:
    err_set(e, INF_ENOMEM, "out of memory for the trainer");
fail:
    model_trainer_free(t);
    return NULL;
}

int model_trainer_epochs_done(const struct model_trainer *t)
{
    return t->epochs_done;
}

/* ------------------------------------------------------------------------------------------
 * Optimizers: the same arithmetic as torch.optim's single-tensor implementations, element by
 * element. A step is applied layer by layer inside the backward pass (backward_hook), as soon
 * as a layer's gradient is final: the gradient is read back while still in cache instead of
 * after the whole pass, and the first layer, updated last, leaves its weights in cache for the
 * next forward. Every element's update depends only on its own parameter, gradient and state,
 * so the order of ranges does not change a bit of the result. (An optimizer that needs every
 * gradient before any update, such as global gradient-norm clipping, would have to step after
 * the pass instead.) Each update sets the gradient it consumed back to 0, so t->grads is all
 * zeros between steps and the backward pass may add into it (backward_hook.grads_zero).
 * ---------------------------------------------------------------------------------------- */

/* Per-step constants, computed once by optimizer_begin. */
struct optim_consts {
    float lr, wd;
    float mom, damp;    /* SGD */
    bool sgd_first;     /* SGD with momentum: this step creates the buffer */
    float b1, b2;       /* Adam */
    float omb1, omb2;   /* 1 - beta in double, then rounded */
    float step_size;    /* lr / (1 - beta1^step) */
    float inv_bc2_sqrt; /* 1 / sqrt(1 - beta2^step) */
    float eps;
    float adam_wd; /* L2 term added to the gradient (Adam), 0 for AdamW */
    float decay;   /* decoupled decay factor (AdamW), 1 for Adam */
};

/* Parameters [off, off + n) by SGD; zeroes their gradients. */
MODEL_HOT static void sgd_update(struct model_trainer *t, const struct optim_consts *c, size_t off,
                                 size_t n)
{
    float *restrict p = t->m->params + off;
    float *restrict buf = t->opt1 + off;
    float *restrict g = t->grads + off;
    const float lr = c->lr, wd = c->wd, mom = c->mom, damp = c->damp;
    const bool nesterov = t->cfg.nesterov;
    if (mom == 0.0f) {
        for (size_t i = 0; i < n; i++) {
            p[i] -= lr * (g[i] + wd * p[i]);
            g[i] = 0.0f;
        }
        return;
    }
    /* The buffer loops zero g unless Nesterov's update still reads it. */
    if (c->sgd_first) { /* torch: the first step's buffer is the gradient itself */
        for (size_t i = 0; i < n; i++) {
            buf[i] = g[i] + wd * p[i];
            g[i] = nesterov ? g[i] : 0.0f;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            buf[i] = mom * buf[i] + damp * (g[i] + wd * p[i]);
            g[i] = nesterov ? g[i] : 0.0f;
        }
    }
    if (nesterov) {
        for (size_t i = 0; i < n; i++) {
            p[i] -= lr * ((g[i] + wd * p[i]) + mom * buf[i]);
            g[i] = 0.0f;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            p[i] -= lr * buf[i];
    }
}

/* Parameters [off, off + n) by Adam or AdamW; zeroes their gradients. */
MODEL_HOT static void adam_update(struct model_trainer *t, const struct optim_consts *c, size_t off,
                                  size_t n)
{
    float *restrict p = t->m->params + off;
    float *restrict m1 = t->opt1 + off;
    float *restrict m2 = t->opt2 + off;
    float *restrict g = t->grads + off;
    const float b1 = c->b1, b2 = c->b2, omb1 = c->omb1, omb2 = c->omb2;
    const float step_size = c->step_size, inv_bc2_sqrt = c->inv_bc2_sqrt, eps = c->eps;
    const float adam_wd = c->adam_wd, decay = c->decay;
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float gi = g[i] + adam_wd * pi;
        float a = m1[i] * b1 + gi * omb1;
        float v = m2[i] * b2 + gi * gi * omb2;
        m1[i] = a;
        m2[i] = v;
        p[i] = pi - step_size * (a / (sqrtf(v) * inv_bc2_sqrt + eps));
        g[i] = 0.0f;
    }
}

/* Counts the step and computes its constants; the updates follow per layer. */
static void optimizer_begin(struct model_trainer *t, struct optim_consts *c)
{
    const struct model_training *cfg = &t->cfg;
    t->step++;
    t->m->wt_fresh = false; /* the transposed inference copy no longer matches */
    const double step = (double)t->step;
    memset(c, 0, sizeof *c);
    c->lr = (float)cfg->learning_rate;
    c->wd = (float)cfg->weight_decay;
    c->mom = (float)cfg->momentum;
    c->damp = 1.0f - (float)cfg->dampening;
    c->sgd_first = !t->opt1_init;
    c->b1 = (float)cfg->beta1;
    c->b2 = (float)cfg->beta2;
    /* 1 - beta in double, then rounded, as torch does: (1.0f - 0.999f) is off by 1.3e-5. */
    c->omb1 = (float)(1.0 - cfg->beta1);
    c->omb2 = (float)(1.0 - cfg->beta2);
    c->step_size = (float)(cfg->learning_rate / (1.0 - pow(cfg->beta1, step)));
    c->inv_bc2_sqrt = (float)(1.0 / sqrt(1.0 - pow(cfg->beta2, step)));
    c->eps = (float)cfg->eps;
    const bool decoupled = cfg->optimizer == MODEL_OPTIM_ADAMW;
    c->adam_wd = decoupled ? 0.0f : c->wd;
    c->decay = decoupled ? 1.0f - c->lr * c->wd : 1.0f;
}

/* The step's constants and its trainer, for the backward hook. */
struct optim_pass {
    struct model_trainer *t;
    struct optim_consts c;
};

/* backward_hook: steps layer l's weight and bias. */
static void optimizer_layer_done(void *user, const struct layer *l)
{
    struct optim_pass *op = user;
    const bool sgd = op->t->cfg.optimizer == MODEL_OPTIM_SGD;
    const size_t off[2] = {l->w_off, l->b_off}, n[2] = {l->w_n, l->b_n};
    for (int k = 0; k < 2; k++) {
        if (n[k] == 0)
            continue;
        if (sgd)
            sgd_update(op->t, &op->c, off[k], n[k]);
        else
            adam_update(op->t, &op->c, off[k], n[k]);
    }
}

/* After every layer has stepped. */
static void optimizer_end(struct model_trainer *t, const struct optim_consts *c)
{
    if (t->cfg.optimizer == MODEL_OPTIM_SGD && c->mom != 0.0f)
        t->opt1_init = true;
}

/* ------------------------------------------------------------------------------------------
 * The loop
 * ---------------------------------------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Loss of out (B, O) against rows [start, start+B) of the batch buffers; fills dout. */
static double batch_loss(const struct model_trainer *t, const float *out, const int32_t *labels,
                         const float *targets, size_t B, float *dout)
{
    const struct model_info *info = &t->m->info;
    if (info->task == MODEL_TASK_CLASSIFICATION)
        return loss_cross_entropy(out, labels, B, info->out_size, dout);
    return loss_mse(out, targets, B, info->out_size, dout);
}

static int run_epoch(struct model_trainer *t, model_cancel_fn should_cancel, void *user,
                     double *mean_loss, struct err *e)
{
    const struct model_dataset *ds = t->train;
    const size_t N = ds->n, F = ds->x_dim, O = t->m->info.out_size;
    const size_t bs = t->cfg.batch_size;
    const uint64_t epoch = (uint64_t)t->epochs_done;
    struct rng shuffle_rng, dropout_rng;
    rng_seed(&shuffle_rng, rng_derive(t->cfg.seed, 2 * epoch + 1));
    rng_seed(&dropout_rng, rng_derive(t->cfg.seed, 2 * epoch + 2));
    for (size_t i = 0; i < N; i++)
        t->perm[i] = i;
    if (t->cfg.shuffle)
        for (size_t i = N; i > 1; i--) {
            size_t j = (size_t)rng_below(&shuffle_rng, i);
            size_t tmp = t->perm[i - 1];
            t->perm[i - 1] = t->perm[j];
            t->perm[j] = tmp;
        }
    double total = 0.0;
    for (size_t start = 0; start < N; start += bs) {
        if (should_cancel != NULL && should_cancel(user))
            return err_set(e, INF_ECANCELLED, "training cancelled");
        size_t B = N - start < bs ? N - start : bs;
        const float *x;
        const int32_t *labels = NULL;
        const float *targets = NULL;
        if (!t->cfg.shuffle) { /* file order: rows are contiguous already */
            x = ds->x + start * F;
            labels = ds->labels ? ds->labels + start : NULL;
            targets = ds->targets ? ds->targets + start * O : NULL;
        } else {
            for (size_t r = 0; r < B; r++) {
                size_t s = t->perm[start + r];
                memcpy(t->xb + r * F, ds->x + s * F, F * sizeof(float));
                if (ds->labels)
                    t->yb[r] = ds->labels[s];
                else
                    memcpy(t->tb + r * O, ds->targets + s * O, O * sizeof(float));
            }
            x = t->xb;
            labels = t->yb;
            targets = t->tb;
        }
        const float *out = forward_pass(t->m, t->ws, x, B, true, &dropout_rng);
        double loss = batch_loss(t, out, labels, targets, B, t->dout);
        if (!isfinite(loss))
            return err_set(e, INF_EINVAL,
                           "loss became %g at step %llu: lower the learning rate or check the "
                           "data",
                           loss, (unsigned long long)t->step + 1);
        struct optim_pass op = {.t = t};
        const struct backward_hook hook = {optimizer_layer_done, &op, true};
        optimizer_begin(t, &op.c);
        backward_pass(t->m, t->ws, t->dout, B, t->grads, NULL, &hook);
        optimizer_end(t, &op.c);
        total += loss * (double)B;
    }
    *mean_loss = total / (double)N;
    return INF_OK;
}

int model_trainer_run(struct model_trainer *t, model_epoch_fn on_epoch,
                      model_cancel_fn should_cancel, void *user, struct err *e)
{
    while (t->epochs_done < t->cfg.epochs) {
        struct model_epoch_stats s = {0};
        double t0 = now_seconds();
        int rc = run_epoch(t, should_cancel, user, &s.train_loss, e);
        if (rc)
            return rc;
        t->epochs_done++;
        params_transpose(t->m);
        s.seconds = now_seconds() - t0;
        s.samples_per_s = s.seconds > 0 ? (double)t->train->n / s.seconds : 0;
        s.epoch = t->epochs_done;
        s.epochs = t->cfg.epochs;
        s.step = t->step;
        s.valid_loss = NAN;
        s.valid_accuracy = NAN;
        if (t->valid != NULL) {
            s.has_valid = true;
            if ((rc = model_evaluate(t->m, t->valid, &s.valid_loss, &s.valid_accuracy, e)))
                return rc;
        }
        if (on_epoch != NULL && on_epoch(&s, user) != 0)
            return err_set(e, INF_ECANCELLED, "training stopped after epoch %d", s.epoch);
    }
    return INF_OK;
}

int model_evaluate(const struct model *m, const struct model_dataset *ds, double *loss,
                   double *accuracy, struct err *e)
{
    const struct model_info *info = &m->info;
    int rc = model_dataset_check(m, ds, e);
    if (rc)
        return rc;
    if (ds->n == 0)
        return err_set(e, INF_EINVAL, "the evaluation set is empty");
    const size_t bs = 256, O = info->out_size, F = ds->x_dim;
    struct model_workspace *ws = model_workspace_new(m, bs, e);
    if (ws == NULL)
        return INF_ENOMEM;
    double total = 0.0;
    size_t correct = 0;
    for (size_t start = 0; start < ds->n; start += bs) {
        size_t B = ds->n - start < bs ? ds->n - start : bs;
        const float *out = forward_pass(m, ws, ds->x + start * F, B, false, NULL);
        if (info->task == MODEL_TASK_CLASSIFICATION) {
            total += loss_cross_entropy(out, ds->labels + start, B, O, NULL) * (double)B;
            for (size_t r = 0; r < B; r++) {
                const float *z = out + r * O;
                size_t best = 0;
                for (size_t j = 1; j < O; j++)
                    if (z[j] > z[best])
                        best = j;
                correct += best == (size_t)ds->labels[start + r];
            }
        } else {
            total += loss_mse(out, ds->targets + start * O, B, O, NULL) * (double)B;
        }
    }
    model_workspace_free(ws);
    *loss = total / (double)ds->n;
    *accuracy = info->task == MODEL_TASK_CLASSIFICATION ? (double)correct / (double)ds->n : NAN;
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Checkpoints: safetensors with the weights under their state_dict names, the optimizer state
 * as flat "optimizer.*" tensors, and counters in __metadata__.
 * ---------------------------------------------------------------------------------------- */

#define CKPT_FORMAT "infera-checkpoint-1"

int model_trainer_checkpoint_serialize(const struct model_trainer *t, char **data, size_t *len,
                                       struct err *e)
{
    const struct model *m = t->m;
    char num[32];
    json_t *meta = json_object();
    if (meta == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    int64_t flat = (int64_t)m->n_params;
    const struct st_out opt[2] = {{"optimizer.state1", 1, &flat, t->opt1},
                                  {"optimizer.state2", 1, &flat, t->opt2}};
    json_object_set_new(meta, "format", json_string(CKPT_FORMAT));
    json_object_set_new(meta, "optimizer", json_string(model_optimizer_name(t->cfg.optimizer)));
    snprintf(num, sizeof num, "%d", t->epochs_done);
    json_object_set_new(meta, "epoch", json_string(num));
    snprintf(num, sizeof num, "%llu", (unsigned long long)t->step);
    json_object_set_new(meta, "step", json_string(num));
    json_object_set_new(meta, "momentum_init", json_string(t->opt1_init ? "1" : "0"));
    int rc = params_serialize(m, opt, 2, meta, data, len, e);
    json_decref(meta);
    return rc;
}

int model_trainer_checkpoint_save(const struct model_trainer *t, const char *path, struct err *e)
{
    char *data = NULL;
    size_t len = 0;
    int rc = model_trainer_checkpoint_serialize(t, &data, &len, e);
    if (rc == INF_OK)
        rc = fs_write_atomic(path, data, len, 0600, e);
    free(data);
    return rc;
}

static int meta_u64(const json_t *meta, const char *key, unsigned long long max,
                    unsigned long long *out, struct err *e)
{
    const char *s = json_string_value(json_object_get(meta, key));
    char *end = NULL;
    if (s == NULL || *s < '0' || *s > '9')
        return err_set(e, INF_EINVAL, "checkpoint: metadata \"%s\" missing", key);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end != '\0' || v > max)
        return err_set(e, INF_EINVAL, "checkpoint: metadata \"%s\" is invalid", key);
    *out = v;
    return INF_OK;
}

int model_trainer_checkpoint_restore(struct model_trainer *t, const void *data, size_t len,
                                     struct err *e)
{
    struct model *m = t->m;
    struct st_file f;
    float *params = NULL;
    int rc = st_parse(data, len, &f, e);
    if (rc) {
        err_prefix(e, "checkpoint");
        return rc;
    }
    unsigned long long epoch, step, mom;
    const char *fmt = json_string_value(json_object_get(f.metadata, "format"));
    const char *opt = json_string_value(json_object_get(f.metadata, "optimizer"));
    if (fmt == NULL || strcmp(fmt, CKPT_FORMAT) != 0) {
        rc = err_set(e, INF_EINVAL, "checkpoint: not an infera checkpoint");
        goto out;
    }
    if (opt == NULL || strcmp(opt, model_optimizer_name(t->cfg.optimizer)) != 0) {
        rc = err_set(e, INF_EINVAL, "checkpoint: made with optimizer %s, training uses %s",
                     opt ? opt : "?", model_optimizer_name(t->cfg.optimizer));
        goto out;
    }
    if ((rc = meta_u64(f.metadata, "epoch", 1000000, &epoch, e)) ||
        (rc = meta_u64(f.metadata, "step", UINT64_MAX, &step, e)) ||
        (rc = meta_u64(f.metadata, "momentum_init", 1, &mom, e)))
        goto out;
    const struct st_tensor *s1 = st_find(&f, "optimizer.state1");
    const struct st_tensor *s2 = st_find(&f, "optimizer.state2");
    if (s1 == NULL || s2 == NULL || s1->numel != m->n_params || s2->numel != m->n_params ||
        s1->rank != 1 || s2->rank != 1) {
        rc = err_set(e, INF_EINVAL, "checkpoint: optimizer state does not fit this model");
        goto out;
    }
    /* Load weights into a scratch copy first so a bad file leaves the trainer unchanged. */
    params = malloc(m->n_params * sizeof *params);
    if (params == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    float *live = m->params;
    m->params = params;
    /* The optimizer tensors are expected extras: check the weights on a view without them. */
    struct st_file weights_only = f;
    weights_only.n = 0;
    weights_only.tensors = calloc(f.n ? f.n : 1, sizeof *weights_only.tensors);
    if (weights_only.tensors == NULL) {
        m->params = live;
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < f.n; i++)
        if (strncmp(f.tensors[i].name, "optimizer.", 10) != 0)
            weights_only.tensors[weights_only.n++] = f.tensors[i];
    rc = params_from_safetensors(m, &weights_only, e);
    free(weights_only.tensors);
    m->params = live;
    if (rc) {
        err_prefix(e, "checkpoint");
        goto out;
    }
    memcpy(m->params, params, m->n_params * sizeof *params);
    params_transpose(m);
    st_to_f32(s1, t->opt1);
    st_to_f32(s2, t->opt2);
    t->epochs_done = (int)epoch;
    t->step = step;
    t->opt1_init = mom == 1;
out:
    free(params);
    st_file_deinit(&f);
    return rc;
}

int model_trainer_checkpoint_load(struct model_trainer *t, const char *path, struct err *e)
{
    char *data = NULL;
    size_t len = 0;
    int rc = fs_read_file(path, MODEL_MAX_WEIGHTS_BYTES * 3, &data, &len, e);
    if (rc == INF_OK)
        rc = model_trainer_checkpoint_restore(t, data, len, e);
    free(data);
    return rc;
}
