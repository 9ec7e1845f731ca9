/*
 * tests/model/test_threads.c - one loaded model, many threads (model.h's thread-safety
 * contract: a loaded model is immutable; any number of threads may featurize, forward,
 * predict and attribute at once, each with its own workspace).
 *
 * Three models are loaded once: an MLP with preprocess and Dropout, a small CNN (Conv2d+ReLU,
 * MaxPool2d, Conv2d+ReLU, Linear) and a text classifier with the hashing featurizer. A single
 * thread first computes references: for every batch size B = 1..16 the outputs of
 * model_forward and model_predict on the first B samples, and attributions (saliency,
 * gradient x input, integrated gradients; token scores for the text model) of a few samples.
 * Then NTHREADS threads, released together by a barrier, each with their own workspaces,
 * run ITERS iterations over the three models with batch sizes cycling through 1..16 and
 * attributions every few iterations. Every result must equal the reference bit for bit
 * (memcmp): the engine is deterministic for a given batch size, so any difference means two
 * threads shared scratch memory. Afterwards the parameters must be unchanged.
 *
 * Threads do not touch the CHECK counters (plain globals); each returns its mismatch count
 * and the first mismatch it saw, and the main thread checks them.
 */
#include "tests/test.h"

#include <cblas.h>
#include <pthread.h>

#include "model/model.h"

#define NTHREADS 8
#define ITERS    200
#define MAXB     16
#define NATTR    4 /* samples explained */
#define NMETHODS 3
#define IG_STEPS 12

static const char *const model_json[] = {
    "{\"task\":\"classification\",\"input\":{\"shape\":[64],\"preprocess\":{\"scale\":0.0625}},"
    "\"layers\":[{\"type\":\"Linear\",\"in_features\":64,\"out_features\":128},{\"type\":\"ReLU\"},"
    "{\"type\":\"Dropout\",\"p\":0.1},{\"type\":\"Linear\",\"in_features\":128,\"out_features\":10}"
    "],"
    "\"training\":{\"seed\":3}}",

    "{\"task\":\"classification\",\"input\":{\"shape\":[1,12,12],\"preprocess\":{\"mean\":0.5,"
    "\"std\":0.25}},\"layers\":[{\"type\":\"Conv2d\",\"in_channels\":1,\"out_channels\":4,"
    "\"kernel_size\":3,\"padding\":1},{\"type\":\"ReLU\"},{\"type\":\"MaxPool2d\",\"kernel_size\":"
    "2},"
    "{\"type\":\"Conv2d\",\"in_channels\":4,\"out_channels\":8,\"kernel_size\":3},{\"type\":"
    "\"ReLU\"},"
    "{\"type\":\"Flatten\"},{\"type\":\"Linear\",\"in_features\":128,\"out_features\":5}],"
    "\"training\":{\"seed\":4}}",

    "{\"task\":\"classification\",\"input\":{\"name\":\"text\",\"datatype\":\"BYTES\","
    "\"featurizer\":{\"type\":\"hashing\",\"dims\":256,\"ngrams\":2}},\"labels\":[\"neg\",\"neu\","
    "\"pos\"],\"layers\":[{\"type\":\"Linear\",\"in_features\":256,\"out_features\":16},"
    "{\"type\":\"ReLU\"},{\"type\":\"Linear\",\"in_features\":16,\"out_features\":3}],"
    "\"training\":{\"seed\":5}}",
};
#define NMODELS 3
#define TEXT_M  2

static const char *const texts[MAXB] = {
    "the service was great",
    "Terrible, TERRIBLE food",
    "ok i guess",
    "would come back again",
    "never again!!",
    "the soup was cold but the staff kind",
    "",
    "caf\xc3\xa9 au lait",
    "a b c d e f g",
    "worst. night. ever.",
    "great great great",
    "NOT bad at all",
    "service; food; price",
    "12 34 56",
    "meh",
    "loved the dessert, hated the wait",
};

/* What one model needs: the model, its raw inputs and the single-threaded references. */
struct fixture {
    struct model *m;
    size_t R, F, O, P;
    float *raw;                   /* (MAXB, R) tensor inputs */
    float *params;                /* copy of the parameters before the threads ran */
    float *fwd[MAXB + 1];         /* fwd[B]: (B, O) model_forward of the first B samples */
    float *pred[MAXB + 1];        /* pred[B]: (B, O) model_predict */
    float *attr[NATTR][NMETHODS]; /* (R) tensor attributions */
    int target[NATTR][NMETHODS];
    struct model_token_score *tok[NATTR][NMETHODS]; /* text attributions */
    size_t ntok[NATTR][NMETHODS];
};

static struct fixture fx[NMODELS];

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static const enum model_attr_method methods[NMETHODS] = {
    MODEL_ATTR_SALIENCY, MODEL_ATTR_GRADIENT_X_INPUT, MODEL_ATTR_INTEGRATED_GRADIENTS};

/* Features (B, F) of the first B samples of model k into x. */
static int featurize(int k, size_t B, float *x, struct err *e)
{
    const struct fixture *f = &fx[k];
    if (k != TEXT_M)
        return model_featurize_tensor(f->m, f->raw, B, x, e);
    for (size_t b = 0; b < B; b++) {
        int rc = model_featurize_text(f->m, texts[b], strlen(texts[b]), x + b * f->F, e);
        if (rc)
            return rc;
    }
    return 0;
}

/* Attributions of sample s with method j: attr (R) or tokens. */
static int attribute(int k, struct model_workspace *ws, int s, int j, float *attr,
                     struct model_token_score **tok, size_t *ntok, int *target, struct err *e)
{
    const struct fixture *f = &fx[k];
    struct model_attr_opts o = {.method = methods[j], .target = -1, .steps = IG_STEPS};
    if (k == TEXT_M)
        return model_attribute_text(f->m, ws, texts[s], strlen(texts[s]), &o, tok, ntok, target, e);
    return model_attribute(f->m, ws, f->raw + (size_t)s * f->R, &o, attr, target, e);
}

static bool tokens_equal(const struct model_token_score *a, size_t na,
                         const struct model_token_score *b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++)
        if (strcmp(a[i].token, b[i].token) != 0 || memcmp(&a[i].score, &b[i].score, 4) != 0)
            return false;
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Set-up: load, make inputs, compute the references on one thread
 * ---------------------------------------------------------------------------------------- */

static bool fixture_init(int k)
{
    struct fixture *f = &fx[k];
    struct err e = {0};
    f->m = model_load_buffers(model_json[k], strlen(model_json[k]), NULL, 0, &e);
    CHECK_MSG(f->m != NULL, "model %d: %s", k, e.msg);
    if (f->m == NULL)
        return false;
    const struct model_info *in = model_get_info(f->m);
    f->R = in->raw_size;
    f->F = in->in_size;
    f->O = in->out_size;
    f->P = in->n_params;
    f->params = xmalloc(f->P * sizeof(float));
    memcpy(f->params, model_params(f->m), f->P * sizeof(float));
    f->raw = xmalloc(MAXB * f->R * sizeof(float));
    uint32_t s = 12345u + (uint32_t)k;
    for (size_t i = 0; i < MAXB * f->R; i++) { /* raw pixels / values in [0, 16) */
        s = s * 1664525u + 1013904223u;
        f->raw[i] = (float)(s >> 8) / (float)(1u << 24) * 16.0f;
    }
    if (k == 1)
        for (size_t i = 0; i < MAXB * f->R; i++)
            f->raw[i] /= 16.0f;

    struct model_workspace *ws = model_workspace_new(f->m, MAXB, &e);
    float *x = xmalloc(MAXB * f->F * sizeof(float));
    bool ok = ws != NULL && featurize(k, MAXB, x, &e) == 0;
    for (size_t B = 1; ok && B <= MAXB; B++) {
        f->fwd[B] = xmalloc(B * f->O * sizeof(float));
        f->pred[B] = xmalloc(B * f->O * sizeof(float));
        ok = model_forward(f->m, ws, x, B, f->fwd[B], &e) == 0 &&
             model_predict(f->m, ws, x, B, f->pred[B], &e) == 0;
    }
    for (int s2 = 0; ok && s2 < NATTR; s2++)
        for (int j = 0; ok && j < NMETHODS; j++) {
            f->attr[s2][j] = xmalloc(f->R * sizeof(float));
            ok = attribute(k, ws, s2, j, f->attr[s2][j], &f->tok[s2][j], &f->ntok[s2][j],
                           &f->target[s2][j], &e) == 0;
        }
    CHECK_MSG(ok, "model %d: reference: %s", k, e.msg);
    /* The references mean something: outputs differ between samples, attributions are not
     * all zero, the text model has tokens. */
    if (ok) {
        CHECK(memcmp(f->fwd[2], f->fwd[2] + f->O, f->O * sizeof(float)) != 0);
        float sum = 0;
        for (size_t i = 0; i < f->R; i++)
            sum += fabsf(f->attr[0][0][i]);
        CHECK(k == TEXT_M ? f->ntok[0][0] == 4 : sum > 0);
    }
    model_workspace_free(ws);
    free(x);
    return ok;
}

static void fixture_deinit(int k)
{
    struct fixture *f = &fx[k];
    for (size_t B = 0; B <= MAXB; B++) {
        free(f->fwd[B]);
        free(f->pred[B]);
    }
    for (int s = 0; s < NATTR; s++)
        for (int j = 0; j < NMETHODS; j++) {
            free(f->attr[s][j]);
            model_token_scores_free(f->tok[s][j], f->ntok[s][j]);
        }
    free(f->raw);
    free(f->params);
    model_free(f->m);
    memset(f, 0, sizeof *f);
}

/* ------------------------------------------------------------------------------------------
 * The threads
 * ---------------------------------------------------------------------------------------- */

struct worker {
    pthread_t th;
    int id;
    pthread_barrier_t *start;
    int runs, mismatches, errors;
    char first[1024]; /* the first mismatch or error */
};

static void note(struct worker *w, bool bad_result, const char *what, int k, size_t B,
                 const char *msg)
{
    if (bad_result)
        w->mismatches++;
    else
        w->errors++;
    if (w->first[0] == '\0')
        snprintf(w->first, sizeof w->first, "thread %d, model %d, B=%zu: %s %s", w->id, k, B, what,
                 msg);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct model_workspace *ws[NMODELS] = {0};
    float *x[NMODELS] = {0}, *out[NMODELS] = {0}, *attr[NMODELS] = {0};
    struct err e = {0};
    for (int k = 0; k < NMODELS; k++) {
        ws[k] = model_workspace_new(fx[k].m, MAXB, &e);
        x[k] = xmalloc(MAXB * fx[k].F * sizeof(float));
        out[k] = xmalloc(MAXB * fx[k].O * sizeof(float));
        attr[k] = xmalloc(fx[k].R * sizeof(float));
        if (ws[k] == NULL)
            note(w, false, "workspace", k, 0, e.msg);
    }
    pthread_barrier_wait(w->start);
    for (int it = 0; it < ITERS && w->errors == 0; it++) {
        size_t B = 1 + (size_t)(it * 7 + w->id * 3) % MAXB;
        for (int k = 0; k < NMODELS; k++) {
            size_t n = B * fx[k].O * sizeof(float);
            err_clear(&e);
            if (featurize(k, B, x[k], &e) != 0 ||
                model_forward(fx[k].m, ws[k], x[k], B, out[k], &e) != 0) {
                note(w, false, "forward", k, B, e.msg);
                continue;
            }
            if (memcmp(out[k], fx[k].fwd[B], n) != 0)
                note(w, true, "forward", k, B, "differs");
            if (model_predict(fx[k].m, ws[k], x[k], B, out[k], &e) != 0)
                note(w, false, "predict", k, B, e.msg);
            else if (memcmp(out[k], fx[k].pred[B], n) != 0)
                note(w, true, "predict", k, B, "differs");
            w->runs += 2;
            if ((it + w->id) % 5 != 0)
                continue;
            int s = (it / 5 + w->id) % NATTR, j = (it / 5 + k) % NMETHODS, target = -2;
            struct model_token_score *tok = NULL;
            size_t ntok = 0;
            if (attribute(k, ws[k], s, j, attr[k], &tok, &ntok, &target, &e) != 0) {
                note(w, false, "attribute", k, B, e.msg);
                continue;
            }
            bool same =
                target == fx[k].target[s][j] &&
                (k == TEXT_M ? tokens_equal(tok, ntok, fx[k].tok[s][j], fx[k].ntok[s][j])
                             : memcmp(attr[k], fx[k].attr[s][j], fx[k].R * sizeof(float)) == 0);
            if (!same)
                note(w, true, "attribute", k, B, "differs");
            model_token_scores_free(tok, ntok);
            w->runs++;
        }
    }
    for (int k = 0; k < NMODELS; k++) {
        model_workspace_free(ws[k]);
        free(x[k]);
        free(out[k]);
        free(attr[k]);
    }
    return NULL;
}

static void test_shared_model(void)
{
    struct worker w[NTHREADS];
    pthread_barrier_t start;
    int started = 0;
    for (int k = 0; k < NMODELS; k++)
        if (!fixture_init(k))
            goto out;
    CHECK(pthread_barrier_init(&start, NULL, NTHREADS) == 0);
    for (int i = 0; i < NTHREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].id = i;
        w[i].start = &start;
        if (pthread_create(&w[i].th, NULL, worker_main, &w[i]) != 0)
            break;
        started++;
    }
    CHECK_MSG(started == NTHREADS, "only %d threads started", started);
    if (started < NTHREADS) { /* the barrier would wait forever: let it fill and abort */
        fprintf(stderr, "cannot start threads\n");
        exit(1);
    }
    int runs = 0;
    for (int i = 0; i < NTHREADS; i++) {
        pthread_join(w[i].th, NULL);
        CHECK_MSG(w[i].mismatches == 0 && w[i].errors == 0, "%d mismatches, %d errors; %s",
                  w[i].mismatches, w[i].errors, w[i].first);
        runs += w[i].runs;
    }
    pthread_barrier_destroy(&start);
    /* every thread ran every iteration: 2 calls per model, an attribution every 5th */
    CHECK_MSG(runs == NTHREADS * ITERS * NMODELS * 2 + NTHREADS * (ITERS / 5) * NMODELS,
              "%d calls ran", runs);
    for (int k = 0; k < NMODELS; k++)
        CHECK_MSG(memcmp(model_params(fx[k].m), fx[k].params, fx[k].P * sizeof(float)) == 0,
                  "model %d: parameters changed", k);
out:
    for (int k = 0; k < NMODELS; k++)
        fixture_deinit(k);
}

int main(void)
{
    openblas_set_num_threads(1); /* as infera's main: one source of parallelism */
    RUN(test_shared_model);
    return test_finish();
}
