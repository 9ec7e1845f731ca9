/*
 * tests/model/test_train.c - the training loop's contract: exact resume from a checkpoint
 * (weights and optimizer state, with shuffle and dropout on), cancellation within one batch,
 * callbacks, validation split, checkpoints that refuse a model they were not made for, and
 * optimizer steps taken inside the backward pass that equal the plain order bit for bit.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"
#include "model/model.h"
#include "tests/test.h"

static const char mlp_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [6]},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 6, \"out_features\": 16},"
    "  {\"type\": \"ReLU\"}, {\"type\": \"Dropout\", \"p\": 0.25},"
    "  {\"type\": \"Linear\", \"in_features\": 16, \"out_features\": 3}],"
    " \"training\": {\"optimizer\": \"adam\", \"learning_rate\": 0.01, \"batch_size\": 8,"
    "  \"epochs\": 4, \"shuffle\": true, \"seed\": 7}}";

static const char other_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [6]},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 6, \"out_features\": 5},"
    "  {\"type\": \"ReLU\"}, {\"type\": \"Linear\", \"in_features\": 5, \"out_features\": 3}]}";

static struct model *load(const char *json)
{
    struct err e = {0};
    struct model *m = model_load_buffers(json, strlen(json), NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    return m;
}

/* 60 samples (not a multiple of the batch: the last partial batch is kept) of a simple rule. */
static void make_data(struct model_dataset *ds)
{
    struct err e = {0};
    CHECK(model_dataset_init(ds, 60, 6, 0, &e) == INF_OK);
    struct rng r;
    rng_seed(&r, 99);
    for (size_t i = 0; i < ds->n; i++) {
        float s = 0;
        for (size_t j = 0; j < 6; j++) {
            float v = (float)(rng_uniform(&r) * 2 - 1);
            ds->x[i * 6 + j] = v;
            s += v * (float)(j + 1);
        }
        ds->labels[i] = s < -1.0f ? 0 : (s < 1.0f ? 1 : 2);
    }
}

/* Trains a fresh model for all epochs, or in two legs through a checkpoint; returns params. */
static float *train_run(const struct model_training *cfg, const struct model_dataset *ds,
                        int split_at)
{
    struct err e = {0};
    struct model *m = load(mlp_json);
    if (m == NULL)
        return NULL;
    struct model_training t = *cfg;
    float *out = malloc(model_get_info(m)->n_params * sizeof *out);
    if (split_at > 0) {
        /* Leg 1: train split_at epochs, checkpoint, throw the trainer and model away. */
        t.epochs = split_at;
        struct model_trainer *tr = model_trainer_new(m, &t, ds, NULL, &e);
        CHECK(tr != NULL);
        CHECK(model_trainer_run(tr, NULL, NULL, NULL, &e) == INF_OK);
        char *ck = NULL;
        size_t len = 0;
        CHECK(model_trainer_checkpoint_serialize(tr, &ck, &len, &e) == INF_OK);
        model_trainer_free(tr);
        model_free(m);
        /* Leg 2: a new process would load the base model again and restore. */
        m = load(mlp_json);
        t.epochs = cfg->epochs;
        tr = model_trainer_new(m, &t, ds, NULL, &e);
        CHECK(model_trainer_checkpoint_restore(tr, ck, len, &e) == INF_OK);
        CHECK(model_trainer_epochs_done(tr) == split_at);
        CHECK_MSG(model_trainer_run(tr, NULL, NULL, NULL, &e) == INF_OK, "%s", e.msg);
        model_trainer_free(tr);
        free(ck);
    } else {
        struct model_trainer *tr = model_trainer_new(m, &t, ds, NULL, &e);
        CHECK(model_trainer_run(tr, NULL, NULL, NULL, &e) == INF_OK);
        model_trainer_free(tr);
    }
    memcpy(out, model_params(m), model_get_info(m)->n_params * sizeof *out);
    model_free(m);
    return out;
}

static void check_resume(enum model_optimizer opt, double momentum, bool nesterov)
{
    struct model_dataset ds;
    make_data(&ds);
    struct model *m = load(mlp_json);
    struct model_training cfg = model_get_info(m)->training;
    size_t n = model_get_info(m)->n_params;
    model_free(m);
    cfg.optimizer = opt;
    cfg.momentum = momentum;
    cfg.nesterov = nesterov;
    cfg.learning_rate = opt == MODEL_OPTIM_SGD ? 0.05 : 0.01;
    if (opt == MODEL_OPTIM_ADAMW)
        cfg.weight_decay = 0.01;
    float *full = train_run(&cfg, &ds, 0);
    float *resumed = train_run(&cfg, &ds, 2);
    float *again = train_run(&cfg, &ds, 0);
    m = load(mlp_json);
    CHECK(full && resumed && again);
    /* The run is deterministic, resumption is exact, and training moved the weights. */
    CHECK(memcmp(full, again, n * sizeof *full) == 0);
    CHECK_MSG(memcmp(full, resumed, n * sizeof *full) == 0, "optimizer %s: resumed run differs",
              model_optimizer_name(opt));
    CHECK(memcmp(full, model_params(m), n * sizeof *full) != 0);
    model_free(m);
    free(full);
    free(resumed);
    free(again);
    model_dataset_deinit(&ds);
}

static void test_resume_adam(void)
{
    check_resume(MODEL_OPTIM_ADAM, 0, false);
}

static void test_resume_adamw(void)
{
    check_resume(MODEL_OPTIM_ADAMW, 0, false);
}

static void test_resume_sgd_momentum(void)
{
    check_resume(MODEL_OPTIM_SGD, 0.9, true);
}

struct cancel_ctx {
    int calls;
    int cancel_at;
    int epochs_seen;
    double first_loss, last_loss;
};

static bool cancel_after(void *user)
{
    struct cancel_ctx *c = user;
    return ++c->calls > c->cancel_at;
}

static int count_epochs(const struct model_epoch_stats *s, void *user)
{
    struct cancel_ctx *c = user;
    c->epochs_seen++;
    if (s->epoch == 1)
        c->first_loss = s->train_loss;
    c->last_loss = s->train_loss;
    CHECK(s->step == (uint64_t)s->epoch * 8); /* 60 samples, batch 8: 8 steps per epoch */
    CHECK(s->has_valid);
    CHECK(s->valid_accuracy >= 0 && s->valid_accuracy <= 1);
    return 0;
}

static int stop_after_two(const struct model_epoch_stats *s, void *user)
{
    (void)user;
    return s->epoch >= 2;
}

static void test_cancel_and_callbacks(void)
{
    struct err e = {0};
    struct model_dataset ds;
    make_data(&ds);
    struct model *m = load(mlp_json);
    struct model_training cfg = model_get_info(m)->training;
    cfg.epochs = 30;

    /* Cancel is checked before every batch: 11 batches run, the 12th is refused. */
    struct cancel_ctx c = {0, 11, 0, 0, 0};
    struct model_trainer *tr = model_trainer_new(m, &cfg, &ds, NULL, &e);
    CHECK(model_trainer_run(tr, NULL, cancel_after, &c, &e) == INF_ECANCELLED);
    CHECK(c.calls == 12);
    CHECK(model_trainer_epochs_done(tr) == 1);
    model_trainer_free(tr);

    /* An epoch callback can stop training. */
    err_clear(&e);
    tr = model_trainer_new(m, &cfg, &ds, NULL, &e);
    CHECK(model_trainer_run(tr, stop_after_two, NULL, NULL, &e) == INF_ECANCELLED);
    CHECK(model_trainer_epochs_done(tr) == 2);
    model_trainer_free(tr);

    /* Every epoch is reported, with validation figures, and the loss falls. */
    struct model_dataset ds2, tr_set, va_set;
    make_data(&ds2);
    err_clear(&e);
    CHECK(model_dataset_split(&ds2, 0.25, 1, &tr_set, &va_set, &e) == INF_OK);
    model_dataset_deinit(&ds2);
    CHECK(tr_set.n == 45 && va_set.n == 15);
    struct model *m2 = load(mlp_json);
    struct cancel_ctx c2 = {0};
    /* 45 samples with batch 8 would be 6 steps per epoch; use the full set for the count. */
    tr = model_trainer_new(m2, &cfg, &ds, &va_set, &e);
    CHECK(model_trainer_run(tr, count_epochs, NULL, &c2, &e) == INF_OK);
    CHECK(c2.epochs_seen == 30);
    CHECK_MSG(c2.last_loss < 0.5 * c2.first_loss, "loss %g -> %g", c2.first_loss, c2.last_loss);
    double loss, acc;
    CHECK(model_evaluate(m2, &ds, &loss, &acc, &e) == INF_OK);
    CHECK_MSG(acc > 0.85, "accuracy %g", acc);
    model_trainer_free(tr);
    model_free(m2);
    model_dataset_deinit(&tr_set);
    model_dataset_deinit(&va_set);
    model_free(m);
    model_dataset_deinit(&ds);
}

static void test_split_deterministic(void)
{
    struct err e = {0};
    struct model_dataset ds, a1, b1, a2, b2, a3, b3;
    make_data(&ds);
    CHECK(model_dataset_split(&ds, 0.2, 5, &a1, &b1, &e) == INF_OK);
    CHECK(model_dataset_split(&ds, 0.2, 5, &a2, &b2, &e) == INF_OK);
    CHECK(model_dataset_split(&ds, 0.2, 6, &a3, &b3, &e) == INF_OK);
    CHECK(b1.n == 12 && a1.n == 48);
    CHECK(memcmp(b1.x, b2.x, b1.n * 6 * sizeof(float)) == 0);
    CHECK(memcmp(b1.x, b3.x, b1.n * 6 * sizeof(float)) != 0);
    CHECK(model_dataset_split(&ds, 1.0, 5, &a3, &b3, &e) == INF_EINVAL);
    model_dataset_deinit(&a1);
    model_dataset_deinit(&b1);
    model_dataset_deinit(&a2);
    model_dataset_deinit(&b2);
    model_dataset_deinit(&a3);
    model_dataset_deinit(&b3);
    model_dataset_deinit(&ds);
}

static void test_checkpoint_mismatch(void)
{
    struct err e = {0};
    struct model_dataset ds;
    make_data(&ds);
    struct model *a = load(mlp_json), *b = load(other_json);
    struct model_training cfg = model_get_info(a)->training;
    cfg.epochs = 1;
    struct model_trainer *ta = model_trainer_new(a, &cfg, &ds, NULL, &e);
    struct model_trainer *tb = model_trainer_new(b, &cfg, &ds, NULL, &e);
    CHECK(model_trainer_run(ta, NULL, NULL, NULL, &e) == INF_OK);
    char *ck = NULL;
    size_t len = 0;
    CHECK(model_trainer_checkpoint_serialize(ta, &ck, &len, &e) == INF_OK);
    size_t nb = model_get_info(b)->n_params;
    float *before = malloc(nb * sizeof *before);
    memcpy(before, model_params(b), nb * sizeof *before);
    CHECK(model_trainer_checkpoint_restore(tb, ck, len, &e) == INF_EINVAL);
    CHECK(model_trainer_epochs_done(tb) == 0);
    CHECK(memcmp(before, model_params(b), nb * sizeof *before) == 0);

    /* A checkpoint made with another optimizer is refused too. */
    err_clear(&e);
    struct model_training sgd = cfg;
    sgd.optimizer = MODEL_OPTIM_SGD;
    struct model *a2 = load(mlp_json);
    struct model_trainer *ta2 = model_trainer_new(a2, &sgd, &ds, NULL, &e);
    CHECK(model_trainer_checkpoint_restore(ta2, ck, len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "optimizer");

    /* A truncated checkpoint is an error, at every length. */
    for (size_t cut = 0; cut < len; cut += 7) {
        struct err e2 = {0};
        CHECK(model_trainer_checkpoint_restore(ta2, ck, cut, &e2) != INF_OK);
    }
    model_trainer_free(ta2);
    model_free(a2);
    free(before);
    free(ck);
    model_trainer_free(ta);
    model_trainer_free(tb);
    model_free(a);
    model_free(b);
    model_dataset_deinit(&ds);
}

static void test_bad_training_data(void)
{
    struct err e = {0};
    struct model_dataset ds;
    make_data(&ds);
    ds.labels[3] = 3; /* the model has 3 classes */
    struct model *m = load(mlp_json);
    struct model_trainer *tr = model_trainer_new(m, &model_get_info(m)->training, &ds, NULL, &e);
    CHECK(tr == NULL);
    CHECK_ERR_HAS(&e, "sample 3");
    ds.labels[3] = 0;
    ds.x[5] = NAN;
    err_clear(&e);
    tr = model_trainer_new(m, &model_get_info(m)->training, &ds, NULL, &e);
    CHECK(tr == NULL);
    CHECK_ERR_HAS(&e, "not finite");
    model_free(m);
    model_dataset_deinit(&ds);
}

/* ------------------------------------------------------------------------------------------
 * The trainer steps each layer inside the backward pass (and lets the backward pass add into
 * gradients it keeps at zero). That must give the same bits as the plain order: the whole
 * backward pass into a fresh gradient buffer, then one torch.optim step over every
 * parameter, written here as in torch's single-tensor implementations.
 * ---------------------------------------------------------------------------------------- */

/* Two Linear layers with ReLU between, and a Conv2d net, no dropout, so the reference below
 * needs no dropout masks. */
static const char plain_mlp_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [6]},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 6, \"out_features\": 16},"
    "  {\"type\": \"ReLU\"}, {\"type\": \"Linear\", \"in_features\": 16, \"out_features\": 8},"
    "  {\"type\": \"Tanh\"}, {\"type\": \"Linear\", \"in_features\": 8, \"out_features\": 3}]}";

static const char plain_conv_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [1, 2, 3]},"
    " \"layers\": [{\"type\": \"Conv2d\", \"in_channels\": 1, \"out_channels\": 2,"
    "  \"kernel_size\": 2, \"padding\": 1}, {\"type\": \"ReLU\"}, {\"type\": \"Flatten\"},"
    "  {\"type\": \"Linear\", \"in_features\": 24, \"out_features\": 3}]}";

/* One optimizer step over all n parameters, after the whole backward pass. */
static void reference_step(const struct model_training *c, uint64_t step, float *p, const float *g,
                           float *s1, float *s2, bool *s1_init, size_t n)
{
    const float lr = (float)c->learning_rate, wd = (float)c->weight_decay;
    if (c->optimizer == MODEL_OPTIM_SGD) {
        const float mom = (float)c->momentum, damp = 1.0f - (float)c->dampening;
        for (size_t i = 0; i < n; i++) {
            float d = g[i] + wd * p[i];
            if (mom != 0.0f) {
                s1[i] = *s1_init ? mom * s1[i] + damp * d : d;
                d = c->nesterov ? d + mom * s1[i] : s1[i];
            }
            p[i] -= lr * d;
        }
        *s1_init = mom != 0.0f;
        return;
    }
    const bool decoupled = c->optimizer == MODEL_OPTIM_ADAMW;
    const float b1 = (float)c->beta1, b2 = (float)c->beta2;
    const float omb1 = (float)(1.0 - c->beta1), omb2 = (float)(1.0 - c->beta2);
    const float step_size = (float)(c->learning_rate / (1.0 - pow(c->beta1, (double)step)));
    const float inv_bc2_sqrt = (float)(1.0 / sqrt(1.0 - pow(c->beta2, (double)step)));
    const float eps = (float)c->eps, decay = decoupled ? 1.0f - lr * wd : 1.0f;
    for (size_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float gi = g[i] + (decoupled ? 0.0f : wd) * pi;
        s1[i] = s1[i] * b1 + gi * omb1;
        s2[i] = s2[i] * b2 + gi * gi * omb2;
        p[i] = pi - step_size * (s1[i] / (sqrtf(s2[i]) * inv_bc2_sqrt + eps));
    }
}

/* Trains json's model for 2 epochs of ds (file order) with the trainer and with the reference
 * loop above; the weights must agree bit for bit. */
static void check_against_reference(const char *json, const struct model_dataset *ds,
                                    enum model_optimizer opt, double momentum, bool nesterov,
                                    double dampening, double weight_decay)
{
    struct err e = {0};
    struct model *m = load(json), *ref = load(json);
    if (m == NULL || ref == NULL)
        goto out;
    struct model_training cfg = model_get_info(m)->training;
    cfg.optimizer = opt;
    cfg.learning_rate = opt == MODEL_OPTIM_SGD ? 0.05 : 0.01;
    cfg.momentum = momentum;
    cfg.nesterov = nesterov;
    cfg.dampening = dampening;
    cfg.weight_decay = weight_decay;
    cfg.batch_size = 8;
    cfg.epochs = 2;
    cfg.shuffle = false;
    struct model_trainer *tr = model_trainer_new(m, &cfg, ds, NULL, &e);
    CHECK_MSG(tr != NULL && model_trainer_run(tr, NULL, NULL, NULL, &e) == INF_OK, "%s", e.msg);
    model_trainer_free(tr);

    const size_t n = ref->n_params, O = ref->info.out_size, F = ds->x_dim;
    struct model_workspace *ws = model_workspace_new(ref, cfg.batch_size, &e);
    float *g = calloc(n, sizeof *g), *s1 = calloc(n, sizeof *s1), *s2 = calloc(n, sizeof *s2);
    float *dout = malloc(cfg.batch_size * O * sizeof *dout);
    CHECK(ws && g && s1 && s2 && dout);
    bool s1_init = false;
    uint64_t step = 0;
    for (int epoch = 0; ws && g && s1 && s2 && dout && epoch < cfg.epochs; epoch++) {
        for (size_t start = 0; start < ds->n; start += cfg.batch_size) {
            size_t B = ds->n - start < cfg.batch_size ? ds->n - start : cfg.batch_size;
            const float *out = forward_pass(ref, ws, ds->x + start * F, B, true, NULL);
            loss_cross_entropy(out, ds->labels + start, B, O, dout);
            memset(g, 0xff, n * sizeof *g); /* NaNs: every gradient must be written */
            backward_pass(ref, ws, dout, B, g, NULL, NULL);
            reference_step(&cfg, ++step, ref->params, g, s1, s2, &s1_init, n);
            ref->wt_fresh = false;
        }
        params_transpose(ref);
    }
    CHECK_MSG(memcmp(model_params(m), ref->params, n * sizeof *g) == 0,
              "%s momentum %g nesterov %d: the trainer differs from the reference",
              model_optimizer_name(opt), momentum, nesterov);
    model_workspace_free(ws);
    free(g);
    free(s1);
    free(s2);
    free(dout);
out:
    model_free(m);
    model_free(ref);
}

static void test_steps_match_reference(void)
{
    struct model_dataset ds, img;
    struct err e = {0};
    make_data(&ds);
    CHECK(model_dataset_init(&img, ds.n, 6, 0, &e) == INF_OK); /* the same rows as 1x2x3 */
    memcpy(img.x, ds.x, ds.n * 6 * sizeof *ds.x);
    memcpy(img.labels, ds.labels, ds.n * sizeof *ds.labels);
    const char *nets[2] = {plain_mlp_json, plain_conv_json};
    const struct model_dataset *data[2] = {&ds, &img};
    for (int k = 0; k < 2; k++) {
        check_against_reference(nets[k], data[k], MODEL_OPTIM_ADAM, 0, false, 0, 0);
        check_against_reference(nets[k], data[k], MODEL_OPTIM_ADAM, 0, false, 0, 0.01);
        check_against_reference(nets[k], data[k], MODEL_OPTIM_ADAMW, 0, false, 0, 0.01);
        check_against_reference(nets[k], data[k], MODEL_OPTIM_SGD, 0, false, 0, 0.001);
        check_against_reference(nets[k], data[k], MODEL_OPTIM_SGD, 0.9, false, 0.1, 0.001);
        check_against_reference(nets[k], data[k], MODEL_OPTIM_SGD, 0.9, true, 0, 0.001);
    }
    model_dataset_deinit(&ds);
    model_dataset_deinit(&img);
}

int main(void)
{
    RUN(test_resume_adam);
    RUN(test_resume_adamw);
    RUN(test_resume_sgd_momentum);
    RUN(test_steps_match_reference);
    RUN(test_cancel_and_callbacks);
    RUN(test_split_deterministic);
    RUN(test_checkpoint_mismatch);
    RUN(test_bad_training_data);
    return test_finish();
}
