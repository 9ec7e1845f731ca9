/*
 * bench/bench_engine.c - the engine side of the benchmark (bench/README.md): trains and runs
 * the workloads a-d through model/model.h exactly as a caller would, times them with
 * CLOCK_MONOTONIC, and measures the sgemm ceiling that OpenBLAS reaches on workload c's
 * shapes in the same process. bench/bench_torch.py does the same workloads in PyTorch;
 * bench/run runs both and prints the ratios.
 *
 * Output: one JSON object per line on stdout, one per workload, then the ceiling:
 *   {"workload":"a","seconds":..,"samples_per_s":..,...}
 * Everything else (errors) goes to stderr.
 *
 * Usage: bench_engine [--only LIST] [--quick]
 *   --only LIST  comma-separated subset of a,b,c,d,ceiling (default: all)
 *   --quick      a tenth of the epochs/iterations, for smoke tests; figures are not comparable
 *
 * Dimension key: B batch, N samples, I/O a Linear layer's in/out features.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model/model.h"

/* ------------------------------------------------------------------------------------------
 * Small helpers: clock, a seeded generator (splitmix64), sorting
 * ---------------------------------------------------------------------------------------- */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct bench_rng {
    uint64_t state;
};

static uint64_t bench_rng_next(struct bench_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi). */
static float bench_rng_uniform(struct bench_rng *r, float lo, float hi)
{
    double u = (double)(bench_rng_next(r) >> 11) * 0x1.0p-53;
    return lo + (float)u * (hi - lo);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ------------------------------------------------------------------------------------------
 * Workloads: model.json text plus the data-set shape. Linear layers are listed in linears[]
 * as (in, out) pairs so the FLOP count follows the architecture.
 * ---------------------------------------------------------------------------------------- */

#define BENCH_MAX_LINEARS 4

struct workload {
    const char *name;
    const char *config; /* model.json */
    size_t n;           /* N training samples */
    size_t in, out;     /* F and O */
    bool classify;
    size_t n_linears;
    size_t linears[BENCH_MAX_LINEARS][2]; /* (I, O) of each Linear, in order */
};

static const struct workload workload_a = {
    .name = "a",
    .config =
        "{\"format\": 1, \"task\": \"regression\","
        " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [2]},"
        " \"layers\": [{\"type\": \"Linear\", \"in_features\": 2, \"out_features\": 10},"
        "              {\"type\": \"Tanh\"},"
        "              {\"type\": \"Linear\", \"in_features\": 10, \"out_features\": 1}],"
        " \"training\": {\"loss\": \"mse\", \"optimizer\": \"sgd\", \"learning_rate\": 0.01,"
        "              \"batch_size\": 1000, \"epochs\": 1000, \"shuffle\": false, \"seed\": 0}}",
    .n = 1000,
    .in = 2,
    .out = 1,
    .classify = false,
    .n_linears = 2,
    .linears = {{2, 10}, {10, 1}},
};

static const struct workload workload_b = {
    .name = "b",
    .config = "{\"format\": 1, \"task\": \"classification\","
              " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [1000]},"
              " \"layers\": [{\"type\": \"Linear\", \"in_features\": 1000, \"out_features\": 100},"
              "              {\"type\": \"ReLU\"},"
              "              {\"type\": \"Linear\", \"in_features\": 100, \"out_features\": 10}],"
              " \"training\": {\"loss\": \"cross_entropy\", \"optimizer\": \"sgd\","
              "              \"learning_rate\": 0.01, \"batch_size\": 64, \"epochs\": 5,"
              "              \"shuffle\": false, \"seed\": 0}}",
    .n = 10000,
    .in = 1000,
    .out = 10,
    .classify = true,
    .n_linears = 2,
    .linears = {{1000, 100}, {100, 10}},
};

static const struct workload workload_c = {
    .name = "c",
    .config = "{\"format\": 1, \"task\": \"classification\","
              " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [784]},"
              " \"layers\": [{\"type\": \"Linear\", \"in_features\": 784, \"out_features\": 512},"
              "              {\"type\": \"ReLU\"},"
              "              {\"type\": \"Linear\", \"in_features\": 512, \"out_features\": 512},"
              "              {\"type\": \"ReLU\"},"
              "              {\"type\": \"Linear\", \"in_features\": 512, \"out_features\": 10}],"
              " \"training\": {\"loss\": \"cross_entropy\", \"optimizer\": \"adam\","
              "              \"learning_rate\": 0.001, \"batch_size\": 128, \"epochs\": 3,"
              "              \"shuffle\": false, \"seed\": 0}}",
    .n = 20000,
    .in = 784,
    .out = 10,
    .classify = true,
    .n_linears = 3,
    .linears = {{784, 512}, {512, 512}, {512, 10}},
};

/*
 * FLOPs of one training step on B samples, counted as the engine's GEMMs do the work:
 * forward 2*B*I*O per Linear, backward 4*B*I*O (dW and dX) except the first Linear, which
 * needs no dX: 2*B*I*O. Bias, activations, loss and the optimizer are not counted.
 */
static double train_step_flops(const struct workload *w, size_t B)
{
    double f = 0.0;
    for (size_t i = 0; i < w->n_linears; i++) {
        double mnk = (double)B * (double)w->linears[i][0] * (double)w->linears[i][1];
        f += 2.0 * mnk + (i == 0 ? 2.0 : 4.0) * mnk;
    }
    return f;
}

/* Fills ds with N uniform inputs in [-1, 1) and labels or targets from a fixed random teacher
 * T (F, O) uniform in [-1, 1): a classifier's label is argmax_o (x T)_o, a regressor's target
 * is y_o = tanh((x T)_o) + 0.5 x_0 x_{F-1}. It is a speed test: the data only has to be
 * learnable enough that the loss stays finite. */
static int dataset_make(const struct workload *w, uint64_t seed, struct model_dataset *ds,
                        struct err *e)
{
    int rc = model_dataset_init(ds, w->n, w->in, w->classify ? 0 : w->out, e);
    if (rc)
        return rc;
    struct bench_rng r = {seed};
    for (size_t i = 0; i < w->n * w->in; i++)
        ds->x[i] = bench_rng_uniform(&r, -1.0f, 1.0f);
    float *teacher = malloc(w->in * w->out * sizeof *teacher); /* (F, O) */
    if (teacher == NULL) {
        model_dataset_deinit(ds);
        return err_set(e, INF_ENOMEM, "out of memory for the teacher");
    }
    for (size_t i = 0; i < w->in * w->out; i++)
        teacher[i] = bench_rng_uniform(&r, -1.0f, 1.0f);
    for (size_t s = 0; s < w->n; s++) {
        const float *x = ds->x + s * w->in;
        size_t best = 0;
        float best_v = -INFINITY;
        for (size_t o = 0; o < w->out; o++) {
            float v = 0.0f;
            for (size_t i = 0; i < w->in; i++)
                v += x[i] * teacher[i * w->out + o];
            if (w->classify && v > best_v) {
                best_v = v;
                best = o;
            }
            if (!w->classify)
                ds->targets[s * w->out + o] = tanhf(v) + 0.5f * x[0] * x[w->in - 1];
        }
        if (w->classify)
            ds->labels[s] = (int32_t)best;
    }
    free(teacher);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * Training workloads a, b, c
 * ---------------------------------------------------------------------------------------- */

static int record_loss(const struct model_epoch_stats *s, void *user)
{
    *(double *)user = s->train_loss;
    return 0;
}

/*
 * Loads w's model (default init), trains it for `epochs` epochs on the first n samples of ds
 * and stores the wall time of model_trainer_run alone in *seconds and the last epoch's mean
 * loss in *loss. ds is borrowed.
 */
static int train_once(const struct workload *w, const struct model_dataset *ds, size_t n,
                      int epochs, double *seconds, double *loss, struct err *e)
{
    struct model *m = model_load_buffers(w->config, strlen(w->config), NULL, 0, e);
    struct model_trainer *t = NULL;
    int rc = INF_OK;
    if (m == NULL)
        return e->status ? e->status : INF_EINVAL;
    struct model_training cfg = model_get_info(m)->training;
    cfg.epochs = epochs;
    struct model_dataset view = *ds; /* borrowed rows [0, n): never deinited */
    view.n = n;
    t = model_trainer_new(m, &cfg, &view, NULL, e);
    if (t == NULL) {
        rc = e->status ? e->status : INF_ENOMEM;
        goto out;
    }
    double last_loss = NAN;
    double t0 = now_seconds();
    rc = model_trainer_run(t, record_loss, NULL, &last_loss, e);
    double t1 = now_seconds();
    if (rc == INF_OK) {
        *seconds = t1 - t0;
        *loss = last_loss;
    }
out:
    model_trainer_free(t);
    model_free(m);
    return rc;
}

/* Runs a training workload: a short warm-up on a separate model, then the timed run. On
 * success *flops_per_s receives the GEMM FLOP rate of the timed run (may be NULL). */
static int bench_train(const struct workload *w, bool quick, double *flops_per_s, struct err *e)
{
    struct model_dataset ds = {0};
    int rc = dataset_make(w, 42, &ds, e);
    if (rc)
        return rc;
    struct model *probe = model_load_buffers(w->config, strlen(w->config), NULL, 0, e);
    if (probe == NULL) {
        rc = e->status ? e->status : INF_EINVAL;
        goto out;
    }
    const struct model_training cfg = model_get_info(probe)->training;
    model_free(probe);
    int epochs = quick ? (cfg.epochs >= 10 ? cfg.epochs / 10 : 1) : cfg.epochs;

    /* Warm-up: page in the data, let OpenBLAS allocate its buffers, warm the caches. */
    size_t warm_n = 20 * cfg.batch_size < w->n ? 20 * cfg.batch_size : w->n;
    int warm_epochs = cfg.batch_size >= w->n ? 20 : 1;
    double secs, loss;
    if ((rc = train_once(w, &ds, warm_n, warm_epochs, &secs, &loss, e)))
        goto out;
    if ((rc = train_once(w, &ds, w->n, epochs, &secs, &loss, e)))
        goto out;

    size_t full = w->n / cfg.batch_size, rest = w->n % cfg.batch_size;
    double steps_per_epoch = (double)full + (rest ? 1.0 : 0.0);
    double flops_per_epoch =
        (double)full * train_step_flops(w, cfg.batch_size) + train_step_flops(w, rest);
    double samples = (double)w->n * epochs;
    printf("{\"workload\":\"%s\",\"seconds\":%.6f,\"samples_per_s\":%.1f,\"epochs\":%d,"
           "\"steps\":%.0f,\"us_per_step\":%.3f,\"train_flops_per_s\":%.6e,\"final_loss\":%.6g}\n",
           w->name, secs, samples / secs, epochs, steps_per_epoch * epochs,
           secs / (steps_per_epoch * epochs) * 1e6, flops_per_epoch * epochs / secs, loss);
    fflush(stdout);
    if (flops_per_s != NULL)
        *flops_per_s = flops_per_epoch * epochs / secs;
out:
    model_dataset_deinit(&ds);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Workload d: inference latency (batch 1) and throughput (batch 64) of workload c's model
 * ---------------------------------------------------------------------------------------- */

static int bench_forward(bool quick, struct err *e)
{
    const struct workload *w = &workload_c;
    const size_t max_b = 64;
    const int iters1 = quick ? 500 : 5000, iters64 = quick ? 100 : 1000;
    struct model *m = model_load_buffers(w->config, strlen(w->config), NULL, 0, e);
    struct model_workspace *ws = NULL;
    float *x = NULL, *out = NULL;
    double *lat = NULL;
    int rc = INF_OK;
    if (m == NULL)
        return e->status ? e->status : INF_EINVAL;
    ws = model_workspace_new(m, max_b, e);
    x = malloc(max_b * w->in * sizeof *x);      /* (64, 784) */
    out = malloc(max_b * w->out * sizeof *out); /* (64, 10) */
    lat = malloc((size_t)iters1 * sizeof *lat);
    if (ws == NULL || x == NULL || out == NULL || lat == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory for the forward benchmark");
        goto out;
    }
    struct bench_rng r = {7};
    for (size_t i = 0; i < max_b * w->in; i++)
        x[i] = bench_rng_uniform(&r, -1.0f, 1.0f);

    /* Batch 1: each call timed alone; the median is robust to a stray interrupt. */
    for (int i = 0; i < 200; i++)
        if ((rc = model_forward(m, ws, x + (size_t)(i % 64) * w->in, 1, out, e)))
            goto out;
    for (int i = 0; i < iters1; i++) {
        const float *xi = x + (size_t)(i % 64) * w->in;
        double t0 = now_seconds();
        rc = model_forward(m, ws, xi, 1, out, e);
        lat[i] = now_seconds() - t0;
        if (rc)
            goto out;
    }
    qsort(lat, (size_t)iters1, sizeof *lat, cmp_double);
    double median1 = lat[iters1 / 2], p90 = lat[iters1 * 9 / 10];

    /* Batch 64: throughput over back-to-back calls. */
    for (int i = 0; i < 20; i++)
        if ((rc = model_forward(m, ws, x, max_b, out, e)))
            goto out;
    double t0 = now_seconds();
    for (int i = 0; i < iters64; i++)
        if ((rc = model_forward(m, ws, x, max_b, out, e)))
            goto out;
    double secs64 = now_seconds() - t0;
    printf("{\"workload\":\"d1\",\"median_us\":%.3f,\"p90_us\":%.3f,\"iterations\":%d}\n",
           median1 * 1e6, p90 * 1e6, iters1);
    printf("{\"workload\":\"d64\",\"seconds\":%.6f,\"samples_per_s\":%.1f,\"us_per_call\":%.3f,"
           "\"iterations\":%d}\n",
           secs64, (double)max_b * iters64 / secs64, secs64 / iters64 * 1e6, iters64);
    fflush(stdout);
out:
    free(lat);
    free(x);
    free(out);
    model_workspace_free(ws);
    model_free(m);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * The ceiling: raw cblas_sgemm on workload c's training GEMMs at B = 128, called exactly as
 * model/layers.c linear_forward / linear_backward call them (row-major):
 *   forward  y (B, O)  = x (B, I) W^T          NoTrans, Trans     M=B N=O K=I
 *   dW       dW (O, I) = dy^T (O, B) x (B, I)  Trans,   NoTrans   M=O N=I K=B
 *   dX       dx (B, I) = dy (B, O) W (O, I)    NoTrans, NoTrans   M=B N=I K=O (not layer 1)
 * ---------------------------------------------------------------------------------------- */

struct gemm_shape {
    const char *what;
    size_t layer; /* index into workload_c.linears */
    int kind;     /* 0 forward, 1 dW, 2 dX */
};

/* Times one shape: the best of 5 rounds of `reps` calls; returns seconds per call. */
static double time_gemm(const struct gemm_shape *g, size_t B, const float *a, const float *b,
                        float *c, int reps)
{
    /* cblas.h pulls in complex.h, whose I macro forbids the usual names */
    const int ni = (int)workload_c.linears[g->layer][0], no = (int)workload_c.linears[g->layer][1];
    const int nb = (int)B;
    double best = INFINITY;
    for (int round = 0; round < 5; round++) {
        double t0 = now_seconds();
        for (int k = 0; k < reps; k++) {
            if (g->kind == 0) /* a = x (B, I), b = W (O, I), c = y (B, O) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, no, ni, 1.0f, a, ni, b, ni,
                            0.0f, c, no);
            else if (g->kind == 1) /* a = dy (B, O), b = x (B, I), c = dW (O, I) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, no, ni, nb, 1.0f, a, no, b, ni,
                            0.0f, c, ni);
            else /* a = dy (B, O), b = W (O, I), c = dx (B, I) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nb, ni, no, 1.0f, a, no, b,
                            ni, 0.0f, c, ni);
        }
        double dt = (now_seconds() - t0) / reps;
        if (dt < best)
            best = dt;
    }
    return best;
}

/* Measures the ceiling; if c_flops > 0 (workload c ran in this process) also prints c's
 * training FLOP/s as a fraction of it. */
static int bench_ceiling(bool quick, double c_flops, struct err *e)
{
    static const struct gemm_shape shapes[] = {
        {"fwd1", 0, 0}, {"dW1", 0, 1},  {"fwd2", 1, 0}, {"dW2", 1, 1},
        {"dX2", 1, 2},  {"fwd3", 2, 0}, {"dW3", 2, 1},  {"dX3", 2, 2},
    };
    const size_t B = 128, big = 1024; /* every operand fits in big*big floats */
    float *a = malloc(big * big * sizeof *a), *b = malloc(big * big * sizeof *b);
    float *c = malloc(big * big * sizeof *c);
    if (a == NULL || b == NULL || c == NULL) {
        free(a);
        free(b);
        free(c);
        return err_set(e, INF_ENOMEM, "out of memory for the sgemm ceiling");
    }
    struct bench_rng r = {11};
    for (size_t i = 0; i < big * big; i++) {
        a[i] = bench_rng_uniform(&r, -1.0f, 1.0f);
        b[i] = bench_rng_uniform(&r, -1.0f, 1.0f);
        c[i] = 0.0f;
    }
    double total_flops = 0.0, total_secs = 0.0;
    printf("{\"workload\":\"ceiling\",\"batch\":%zu,\"shapes\":[", B);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const struct gemm_shape *g = &shapes[s];
        double flops = 2.0 * (double)B * (double)workload_c.linears[g->layer][0] *
                       (double)workload_c.linears[g->layer][1];
        time_gemm(g, B, a, b, c, 3); /* warm-up */
        int reps = flops > 1e7 ? (quick ? 10 : 50) : (quick ? 100 : 1000);
        double secs = time_gemm(g, B, a, b, c, reps);
        total_flops += flops;
        total_secs += secs;
        printf("%s{\"gemm\":\"%s\",\"us\":%.3f,\"flops_per_s\":%.6e}", s ? "," : "", g->what,
               secs * 1e6, flops / secs);
    }
    /* The ceiling is the rate of a training step made of nothing but these GEMMs. */
    double ceiling = total_flops / total_secs;
    printf("],\"step_us\":%.3f,\"flops_per_s\":%.6e", total_secs * 1e6, ceiling);
    if (c_flops > 0)
        printf(",\"c_train_flops_per_s\":%.6e,\"c_fraction\":%.4f", c_flops, c_flops / ceiling);
    printf("}\n");
    fflush(stdout);
    free(a);
    free(b);
    free(c);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------------------------- */

static bool wanted(const char *only, const char *name)
{
    if (only == NULL)
        return true;
    size_t n = strlen(name);
    for (const char *p = only; *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len + (end ? 1 : 0);
    }
    return false;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            only = argv[++i];
        } else {
            fprintf(stderr, "usage: bench_engine [--only a,b,c,d,ceiling] [--quick]\n");
            return 2;
        }
    }
    /* One BLAS thread per worker; this benchmark is one worker. */
    openblas_set_num_threads(1);

    struct err e = {0};
    int rc = INF_OK;
    double c_flops = 0.0;
    if (rc == INF_OK && wanted(only, "a"))
        rc = bench_train(&workload_a, quick, NULL, &e);
    if (rc == INF_OK && wanted(only, "b"))
        rc = bench_train(&workload_b, quick, NULL, &e);
    if (rc == INF_OK && wanted(only, "c"))
        rc = bench_train(&workload_c, quick, &c_flops, &e);
    if (rc == INF_OK && wanted(only, "d"))
        rc = bench_forward(quick, &e);
    if (rc == INF_OK && wanted(only, "ceiling"))
        rc = bench_ceiling(quick, c_flops, &e);
    if (rc != INF_OK) {
        fprintf(stderr, "bench_engine: %s\n", e.status ? e.msg : inf_status_str(rc));
        return 1;
    }
    return 0;
}
