/*
 * tests/model/test_gradcheck.c - every layer's backward against finite differences.
 *
 * For each case a small model is built from a model.json string with model_load_buffers()
 * (no weights: default init from the seed), fed a random input x (B, F), and reduced to a
 * scalar L: L = sum(out * R) for a fixed random R (B, O), or the real cross-entropy / MSE
 * loss for the loss cases. The analytic gradients come from forward_pass + backward_pass
 * (dL/dparams for every parameter, dL/dx for every input element); the numeric ones from
 * central differences, perturbing one float at a time:
 *
 *     n = (L(p + h) - L(p - h)) / ((float)(p + h) - (float)(p - h))
 *
 * (dividing by the step the floats really took). L is accumulated in double from the float
 * outputs, so the numeric gradient's noise is the float32 forward's rounding (~1e-7 of each
 * output) over 2h. Dropout cases run forward_pass with training = true and an rng seeded
 * identically for every evaluation, so every L(.) sees the same mask.
 *
 * Piecewise-linear layers (ReLU, LeakyReLU, MaxPool2d) are only differentiable away from their
 * kinks: inputs are resampled, one sample at a time, until every ReLU pre-activation is at
 * least MARGIN = 0.02 from 0 and every max-pool window's winner leads the runner-up by
 * MARGIN (measured on "probe" models: a prefix of the layers, with Flatten appended for an
 * image, sharing the model's parameters). Those cases use h = 1e-3: a step moves any
 * pre-activation by a few times h at most (inputs are at most 2.5, weights at most 1), far
 * inside MARGIN, so L is exactly linear in the perturbed value and only rounding remains.
 * Smooth cases (Sigmoid, Tanh, GELU, conv and linear chains) use h = 1e-2: the truncation
 * error h^2/6 f''' stays around 1e-4, and the rounding noise shrinks with the larger step.
 *
 * Tolerance: |a - n| <= ATOL + RTOL |n| with ATOL = 2e-3, RTOL = 1e-2. The worst error seen
 * over all cases is below 2e-4 (GC_VERBOSE=1 prints each case's), so the tolerance has a 10x
 * margin; every case also checks that its gradients are not all tiny (max |n| above 0.05, 25x
 * ATOL), so a sign flip, a dropped term or a wrong index in a backward kernel shows as an
 * error of the size of the gradient itself. When this file was written, each of 23 one-line
 * mutations made it fail: a sign or term changed in each activation's derivative, ReLU's
 * y > 0 as y >= 0, Linear's dx/dW/db losing a row or a factor (sgemv and sgemm paths),
 * col2im overwriting instead of adding or shifted by a row, Conv2d's db/dW not accumulated
 * over the batch, the 1x1 path's dx halved, max-pool routing to the wrong channel or not
 * accumulating, Dropout's backward without its mask, a fused ReLU that leaks, cross-entropy's
 * one-hot unscaled, MSE without its factor 2, and backward's ping-pong buffers aliased.
 *
 * Each case runs at B = 1 (Linear takes the sgemv path) and B = 3 (sgemm), and also checks
 * that backward_pass gives the same parameter gradients without dx and the same dx without
 * parameter gradients (the early-stop path).
 */
#include "tests/test.h"

#include "model/internal.h"

#define MARGIN     0.02
#define ATOL       2e-3
#define RTOL       1e-2
#define MIN_SIGNAL 0.05
#define MAX_TRIES  5000

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* model.json text written with ' for " (readable C literals) -> a loaded model, or NULL. */
static struct model *load_sq(const char *sq, const char *what)
{
    size_t n = strlen(sq);
    char *s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = sq[i] == '\'' ? '"' : sq[i];
    struct err e = {0};
    struct model *m = model_load_buffers(s, n, NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s: %s", what, e.msg);
    free(s);
    /* This test writes m->params directly, as a trainer does: the transposed inference copy
     * of the Linear weights must not be used (a trainer marks it stale the same way). */
    if (m != NULL)
        m->wt_fresh = false;
    return m;
}

/* Uniform in [lo, hi). */
static float unif(struct rng *r, double lo, double hi)
{
    return (float)(lo + (hi - lo) * rng_uniform(r));
}

/* ------------------------------------------------------------------------------------------
 * Kink probes: a prefix of the model's layers + Flatten, sharing its parameters
 * ---------------------------------------------------------------------------------------- */

enum probe_kind {
    PROBE_NONE,
    PROBE_RELU, /* the probe outputs ReLU (or LeakyReLU) pre-activations: |z| >= MARGIN */
    PROBE_POOL, /* the probe outputs a max-pool input (c, h, w): windows have a clear winner */
};

struct probe {
    enum probe_kind kind;
    const char *layers; /* JSON layer list of the prefix (+ Flatten for an image) */
    int c, h, w;        /* PROBE_POOL: the pool's input shape */
    int k, s, p;        /* PROBE_POOL: square kernel, stride, padding */
};

/* Every window's largest value leads the next by MARGIN, unless it is 0 after a ReLU: then
 * ties are harmless, because the ReLU passes no gradient to any of them. */
static bool pool_ok(const struct probe *pr, const float *v)
{
    int oh = (pr->h + 2 * pr->p - pr->k) / pr->s + 1, ow = (pr->w + 2 * pr->p - pr->k) / pr->s + 1;
    for (int c = 0; c < pr->c; c++)
        for (int i = 0; i < oh; i++)
            for (int j = 0; j < ow; j++) {
                double best = -INFINITY, second = -INFINITY;
                for (int a = i * pr->s - pr->p; a < i * pr->s - pr->p + pr->k; a++)
                    for (int b = j * pr->s - pr->p; b < j * pr->s - pr->p + pr->k; b++) {
                        if (a < 0 || a >= pr->h || b < 0 || b >= pr->w)
                            continue;
                        double x = v[((size_t)c * pr->h + a) * pr->w + b];
                        if (x > best) {
                            second = best;
                            best = x;
                        } else if (x > second) {
                            second = x;
                        }
                    }
                if (best > 0 && best - second < MARGIN)
                    return false;
            }
    return true;
}

/* Whether sample row of x (F) keeps clear of every kink the probes describe. */
static bool probes_ok(const struct probe *probes, struct model **pm, struct model_workspace **pws,
                      const float *x)
{
    for (int i = 0; probes[i].kind != PROBE_NONE; i++) {
        const float *y = forward_pass(pm[i], pws[i], x, 1, false, NULL);
        size_t n = model_get_info(pm[i])->out_size;
        if (probes[i].kind == PROBE_POOL) {
            if (!pool_ok(&probes[i], y))
                return false;
            continue;
        }
        for (size_t k = 0; k < n; k++)
            if (fabs(y[k]) < MARGIN)
                return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------
 * The check
 * ---------------------------------------------------------------------------------------- */

enum objective { OBJ_DOT, OBJ_CE, OBJ_MSE };
enum input_kind {
    IN_UNIFORM,  /* uniform in [-scale, scale] */
    IN_AWAY,     /* |x| in [0.05, 1]: a ReLU applied to the input has no kink nearby */
    IN_DISTINCT, /* a shuffle of values 0.05 apart: max-pool windows on the input never tie */
};

struct gc_case {
    const char *name;
    const char *json; /* model.json with ' for " */
    double h;
    enum objective obj;
    enum input_kind in;
    double scale;  /* IN_UNIFORM range; 0 means 1 */
    bool training; /* dropout on, masks from a fixed seed */
    struct probe probes[4];
};

struct gc {
    const struct gc_case *c;
    struct model *m;
    struct model_workspace *ws;
    size_t B, F, O, P;
    float *R;      /* (B, O) OBJ_DOT weights */
    int32_t *lab;  /* (B) OBJ_CE labels */
    float *target; /* (B, O) OBJ_MSE targets */
    float *dout;   /* (B, O) */
};

#define DROP_SEED 0x5eedULL

/* L at input x (B, F) with the model's current parameters; dL/dout into g->dout if want_d. */
static double gc_loss(struct gc *g, const float *x, bool want_d)
{
    struct rng r;
    rng_seed(&r, DROP_SEED);
    const float *y = forward_pass(g->m, g->ws, x, g->B, g->c->training, &r);
    size_t n = g->B * g->O;
    switch (g->c->obj) {
        case OBJ_CE:
            return loss_cross_entropy(y, g->lab, g->B, g->O, want_d ? g->dout : NULL);
        case OBJ_MSE:
            return loss_mse(y, g->target, g->B, g->O, want_d ? g->dout : NULL);
        default: {
            double L = 0.0;
            for (size_t i = 0; i < n; i++)
                L += (double)y[i] * g->R[i];
            if (want_d)
                memcpy(g->dout, g->R, n * sizeof *g->dout);
            return L;
        }
    }
}

/* Central difference of L in the float *v. */
static double numeric(struct gc *g, float *v, const float *x)
{
    float keep = *v;
    float up = (float)(keep + g->c->h), down = (float)(keep - g->c->h);
    *v = up;
    double lp = gc_loss(g, x, false);
    *v = down;
    double lm = gc_loss(g, x, false);
    *v = keep;
    return (lp - lm) / ((double)up - (double)down);
}

/* Compares analytic a (n) with numerics of n floats at v; returns the largest |numeric|. */
static double compare(struct gc *g, const char *what, const float *a, float *v, size_t n,
                      const float *x)
{
    double worst = 0.0, big = 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        double num = numeric(g, &v[i], x);
        double err = fabs((double)a[i] - num);
        if (fabs(num) > big)
            big = fabs(num);
        if (err > worst)
            worst = err;
        if (!(err <= ATOL + RTOL * fabs(num)) && bad++ < 5)
            fprintf(stderr, "  %s B=%zu %s[%zu]: analytic %.7g, numeric %.7g\n", g->c->name, g->B,
                    what, i, (double)a[i], num);
    }
    CHECK_MSG(bad == 0, "%s B=%zu: %zu of %zu %s gradients off (worst %.3g)", g->c->name, g->B, bad,
              n, what, worst);
    if (getenv("GC_VERBOSE") != NULL)
        fprintf(stderr, "  %-24s B=%zu %-6s n=%-4zu worst %.2e  max|grad| %.3f\n", g->c->name, g->B,
                what, n, worst, big);
    return big;
}

/* Fills x (B, F) for the case, resampling samples that sit near a kink. */
static bool make_input(const struct gc_case *c, const struct model *m, size_t B, size_t F,
                       struct rng *r, float *x)
{
    struct model *pm[4] = {0};
    struct model_workspace *pws[4] = {0};
    bool ok = true;
    int np = 0;
    for (; c->probes[np].kind != PROBE_NONE; np++) {
        /* The probe: the same document with the layer list cut, as a regressor. */
        char json[2048];
        char *layers = NULL, *task;
        if (strlen(c->json) < sizeof json / 2) {
            snprintf(json, sizeof json, "%s", c->json);
            layers = strstr(json, "'layers'");
        }
        CHECK_MSG(layers != NULL, "%s: cannot build the probe", c->name);
        if (layers == NULL) {
            ok = false;
            break;
        }
        if ((task = strstr(json, "'classification'")) != NULL)
            memcpy(task, "'regression'    ", 16);
        snprintf(layers, sizeof json - (size_t)(layers - json), "'layers':%s}",
                 c->probes[np].layers);
        pm[np] = load_sq(json, c->name);
        ok = ok && pm[np] != NULL && pm[np]->n_params <= m->n_params;
        if (ok) { /* a prefix of the layers has a prefix of the parameters */
            pws[np] = model_workspace_new(pm[np], 1, NULL);
            memcpy(pm[np]->params, m->params, pm[np]->n_params * sizeof(float));
            ok = pws[np] != NULL;
        }
    }
    for (size_t b = 0; ok && b < B; b++) {
        float *row = x + b * F;
        int tries = 0;
        do {
            if (c->in == IN_DISTINCT) {
                for (size_t i = 0; i < F; i++) /* 0.05 apart, centred on 0 */
                    row[i] = (float)(0.05 * ((double)i - (double)F / 2));
                for (size_t i = F; i > 1; i--) {
                    size_t j = (size_t)rng_below(r, i);
                    float t = row[i - 1];
                    row[i - 1] = row[j];
                    row[j] = t;
                }
            } else {
                double s = c->scale > 0 ? c->scale : 1.0;
                for (size_t i = 0; i < F; i++) {
                    row[i] = unif(r, -s, s);
                    if (c->in == IN_AWAY)
                        row[i] = (row[i] < 0 ? -0.05f : 0.05f) + 0.95f * row[i];
                }
            }
        } while (!probes_ok(c->probes, pm, pws, row) && ++tries < MAX_TRIES);
        CHECK_MSG(tries < MAX_TRIES, "%s: no input clear of kinks", c->name);
        ok = tries < MAX_TRIES;
    }
    for (int i = 0; i < np; i++) {
        model_workspace_free(pws[i]);
        model_free(pm[i]);
    }
    return ok;
}

static void gc_run(const struct gc_case *c, size_t B)
{
    struct gc g = {.c = c, .B = B};
    float *x = NULL, *grads = NULL, *dx = NULL, *grads2 = NULL, *dx2 = NULL;
    struct rng r;
    rng_seed(&r, 1234 + B);

    g.m = load_sq(c->json, c->name);
    if (g.m == NULL)
        return;
    g.F = model_get_info(g.m)->in_size;
    g.O = model_get_info(g.m)->out_size;
    g.P = g.m->n_params;
    g.ws = model_workspace_new(g.m, B, NULL);
    x = xmalloc(B * g.F * sizeof *x);
    dx = xmalloc(B * g.F * sizeof *dx);
    dx2 = xmalloc(B * g.F * sizeof *dx2);
    grads = xmalloc(g.P * sizeof *grads);
    grads2 = xmalloc(g.P * sizeof *grads2);
    g.R = xmalloc(B * g.O * sizeof *g.R);
    g.target = xmalloc(B * g.O * sizeof *g.target);
    g.dout = xmalloc(B * g.O * sizeof *g.dout);
    g.lab = xmalloc(B * sizeof *g.lab);
    CHECK(g.ws != NULL);
    if (g.ws == NULL || !make_input(c, g.m, B, g.F, &r, x))
        goto out;
    for (size_t i = 0; i < B * g.O; i++) {
        g.R[i] = unif(&r, -1, 1);
        g.target[i] = unif(&r, -3, 3); /* far from the outputs: MSE gradients of size */
    }
    for (size_t b = 0; b < B; b++)
        g.lab[b] = (int32_t)rng_below(&r, g.O);

    gc_loss(&g, x, true);
    backward_pass(g.m, g.ws, g.dout, B, grads, dx, NULL);
    /* The early-stop paths must agree with the full one. */
    backward_pass(g.m, g.ws, g.dout, B, grads2, NULL, NULL);
    CHECK_MSG(g.P == 0 || memcmp(grads, grads2, g.P * sizeof *grads) == 0,
              "%s B=%zu: grads differ without dx", c->name, B);
    backward_pass(g.m, g.ws, g.dout, B, NULL, dx2, NULL);
    CHECK_MSG(memcmp(dx, dx2, B * g.F * sizeof *dx) == 0, "%s B=%zu: dx differs without grads",
              c->name, B);

    double big = 0.0;
    if (g.P > 0)
        big = compare(&g, "param", grads, g.m->params, g.P, x);
    double bigx = compare(&g, "input", dx, x, B * g.F, x);
    CHECK_MSG(g.P == 0 || big > MIN_SIGNAL, "%s B=%zu: parameter gradients too small (%g)", c->name,
              B, big);
    CHECK_MSG(bigx > MIN_SIGNAL, "%s B=%zu: input gradients too small (%g)", c->name, B, bigx);
out:
    free(x);
    free(dx);
    free(dx2);
    free(grads);
    free(grads2);
    free(g.R);
    free(g.target);
    free(g.dout);
    free(g.lab);
    model_workspace_free(g.ws);
    model_free(g.m);
}

/* ------------------------------------------------------------------------------------------
 * Cases. Layers come last in each document (the probes replace them).
 * ---------------------------------------------------------------------------------------- */

#define REG(shape) "{'task':'regression','input':{'shape':" shape "},'layers':"
#define CLS(shape) "{'task':'classification','input':{'shape':" shape "},'layers':"
#define LIN(i, o)  "{'type':'Linear','in_features':" #i ",'out_features':" #o "}"
#define ACT(t)     "{'type':'" t "'}"
#define FLAT       "{'type':'Flatten'}"

static void run_all(const struct gc_case *cs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        gc_run(&cs[i], 1);
        gc_run(&cs[i], 3);
    }
}

#define RUN_TABLE(t)   run_all(t, sizeof t / sizeof t[0])
#define CASE(n, j, hh) .name = (n), .json = (j), .h = (hh)

static void test_linear_and_activations(void)
{
    static const struct gc_case t[] = {
        {CASE("linear", REG("[5]") "[" LIN(5, 4) "]}", 1e-2)},
        {CASE("linear_nobias",
              REG("[5]") "[{'type':'Linear','in_features':5,'out_features':4,'bias':false}]}",
              1e-2)},
        {CASE("relu_on_input", REG("[6]") "[" ACT("ReLU") "," LIN(6, 3) "]}", 1e-3), .in = IN_AWAY},
        {CASE("relu_after_tanh",
              REG("[5]") "[" LIN(5, 6) "," ACT("Tanh") "," ACT("ReLU") "," LIN(6, 3) "]}", 1e-3),
         .probes = {{.kind = PROBE_RELU, .layers = "[" LIN(5, 6) "]"}}},
        {CASE("leaky_relu",
              REG("[5]") "[" LIN(5, 6) ",{'type':'LeakyReLU','negative_slope':0.1}," LIN(6, 3) "]}",
              1e-3),
         .probes = {{.kind = PROBE_RELU, .layers = "[" LIN(5, 6) "]"}}},
        {CASE("sigmoid", REG("[5]") "[" LIN(5, 6) "," ACT("Sigmoid") "," LIN(6, 3) "]}", 1e-2),
         .scale = 3},
        {CASE("tanh", REG("[5]") "[" LIN(5, 6) "," ACT("Tanh") "," LIN(6, 3) "]}", 1e-2),
         .scale = 3},
        {CASE("gelu", REG("[5]") "[" LIN(5, 6) "," ACT("GELU") "," LIN(6, 3) "]}", 1e-2),
         .scale = 3},
        {CASE("gelu_tanh",
              REG("[5]") "[" LIN(5, 6) ",{'type':'GELU','approximate':'tanh'}," LIN(6, 3) "]}",
              1e-2),
         .scale = 3},
        {CASE("flatten_on_input", REG("[2, 3, 3]") "[" FLAT "," LIN(18, 4) "]}", 1e-2)},
    };
    RUN_TABLE(t);
}

#define DROP(p) "{'type':'Dropout','p':" #p "}"

static void test_dropout(void)
{
    static const struct gc_case t[] = {
        {CASE("dropout_after_gelu",
              REG("[6]") "[" LIN(6, 8) "," ACT("GELU") "," DROP(0.4) "," LIN(8, 3) "]}", 1e-2),
         .scale = 2, .training = true},
        {CASE("dropout_on_input", REG("[6]") "[" DROP(0.5) "," LIN(6, 3) "]}", 1e-2),
         .training = true},
        {CASE("dropout_last", REG("[6]") "[" LIN(6, 5) "," DROP(0.3) "]}", 1e-2), .training = true},
        {CASE("dropout_p0", REG("[6]") "[" LIN(6, 5) "," ACT("Tanh") "," DROP(0) "," LIN(5, 2) "]}",
              1e-2),
         .training = true},
        {CASE("dropout_after_fused_relu",
              REG("[5]") "[" LIN(5, 6) "," ACT("ReLU") "," DROP(0.5) "," LIN(6, 3) "]}", 1e-3),
         .training = true, .probes = {{.kind = PROBE_RELU, .layers = "[" LIN(5, 6) "]"}}},
        /* Sigmoid and Tanh take their derivative from their output, which an in-place
         * Dropout right after them overwrites with the masked, rescaled values. */
        {CASE("dropout_after_sigmoid",
              REG("[5]") "[" LIN(5, 6) "," ACT("Sigmoid") "," DROP(0.3) "," LIN(6, 3) "]}", 1e-2),
         .scale = 3, .training = true},
        {CASE("dropout_after_tanh",
              REG("[5]") "[" LIN(5, 6) "," ACT("Tanh") "," DROP(0.3) "," LIN(6, 3) "]}", 1e-2),
         .scale = 3, .training = true},
        {CASE("dropout_inference",
              REG("[5]") "[" LIN(5, 6) "," ACT("Sigmoid") "," DROP(0.3) "," LIN(6, 3) "]}", 1e-2),
         .scale = 3},
    };
    RUN_TABLE(t);
}

/* Dropout's gradient is dout * mask, and the mask is 0 or 1/(1-p), about p of it 0. */
static void test_dropout_mask(void)
{
    const size_t B = 64, O = 5;
    struct model *m = load_sq(REG("[6]") "[" LIN(6, 5) "," DROP(0.3) "]}", "mask");
    struct model_workspace *ws = m ? model_workspace_new(m, B, NULL) : NULL;
    float x[64 * 6], R[64 * 5], grads[6 * 5 + 5];
    struct rng r;
    CHECK(ws != NULL);
    if (ws == NULL)
        goto out;
    rng_seed(&r, 7);
    for (size_t i = 0; i < B * 6; i++)
        x[i] = unif(&r, -1, 1);
    for (size_t i = 0; i < B * O; i++)
        R[i] = unif(&r, -1, 1);
    rng_seed(&r, DROP_SEED);
    forward_pass(m, ws, x, B, true, &r);
    backward_pass(m, ws, R, B, grads, NULL, NULL);
    const float *mask = ws->drop_mask + ws->drop_off[1];
    size_t zeros = 0, bad = 0;
    for (size_t i = 0; i < B * O; i++) {
        zeros += mask[i] == 0.0f;
        bad += mask[i] != 0.0f && mask[i] != 1.0f / 0.7f;
    }
    CHECK_MSG(bad == 0, "%zu mask values are neither 0 nor 1/(1-p)", bad);
    CHECK_MSG(zeros > 60 && zeros < 132, "%zu of 320 dropped, expected about 96", zeros);
    for (size_t j = 0; j < O; j++) { /* the bias gradient is the column sum of dout * mask */
        double s = 0.0;
        for (size_t b = 0; b < B; b++)
            s += (double)R[b * O + j] * mask[b * O + j];
        CHECK_NEAR(grads[30 + j], s, 1e-4);
    }
out:
    model_workspace_free(ws);
    model_free(m);
}

#define CONV(ic, oc, extra)                                                                        \
    "{'type':'Conv2d','in_channels':" #ic ",'out_channels':" #oc "," extra "}"

/* (2, 7, 6) -> (3, 4, 7); (1, 6, 7) -> (2, 4, 3); (2, 6, 6) -> (3, 6, 6) -> (2, 3, 3) */
#define CONV_RECT  CONV(2, 3, "'kernel_size':[3,2],'stride':[2,1],'padding':[1,1]")
#define CONV_ROWS  CONV(1, 2, "'kernel_size':[2,3],'stride':2,'padding':[1,0]")
#define CONV_NOB   CONV(2, 3, "'kernel_size':3,'padding':1,'bias':false")
#define CONV_PW    CONV(3, 4, "'kernel_size':1")
#define CONV_PW_S2 CONV(3, 2, "'kernel_size':1,'stride':2")
#define CONV_A     CONV(2, 3, "'kernel_size':3,'padding':1")
#define CONV_B     CONV(3, 2, "'kernel_size':2,'stride':2")

static void test_conv(void)
{
    static const struct gc_case t[] = {
        {CASE("conv_rect_pad_stride", REG("[2, 7, 6]") "[" CONV_RECT "," FLAT "]}", 1e-2)},
        {CASE("conv_stride2_pad_rows", REG("[1, 6, 7]") "[" CONV_ROWS "," FLAT "]}", 1e-2)},
        {CASE("conv_nobias", REG("[2, 5, 5]") "[" CONV_NOB "," FLAT "]}", 1e-2)},
        {CASE("conv_1x1", REG("[3, 4, 4]") "[" CONV_PW "," FLAT "]}", 1e-2)},
        {CASE("conv_1x1_stride2", REG("[3, 5, 5]") "[" CONV_PW_S2 "," FLAT "]}", 1e-2)},
        {CASE("conv_chain", REG("[2, 6, 6]") "[" CONV_A "," CONV_B "," FLAT "," LIN(18, 3) "]}",
              1e-2)},
    };
    RUN_TABLE(t);
}

#define POOL(extra) "{'type':'MaxPool2d'," extra "}"
#define POOL_PAD    POOL("'kernel_size':3,'stride':2,'padding':1")             /* 7x7 -> 4x4 */
#define POOL_RECT   POOL("'kernel_size':[2,3],'stride':[1,2],'padding':[1,1]") /* 6x7 -> 7x4 */
#define POOL2       POOL("'kernel_size':2")

static void test_maxpool(void)
{
    static const struct gc_case t[] = {
        {CASE("pool_pad_stride", REG("[2, 7, 7]") "[" POOL_PAD "," FLAT "]}", 1e-3),
         .in = IN_DISTINCT},
        {CASE("pool_rect", REG("[2, 6, 7]") "[" POOL_RECT "," FLAT "]}", 1e-3), .in = IN_DISTINCT},
        {CASE("pool_default_stride", REG("[1, 6, 6]") "[" POOL2 "," FLAT "," LIN(9, 2) "]}", 1e-3),
         .in = IN_DISTINCT},
    };
    RUN_TABLE(t);
}

#define RELU  ACT("ReLU")
#define HID2  LIN(5, 6) "," RELU "," LIN(6, 4) /* two Linear layers, the first fused with ReLU */
#define C1    CONV(1, 3, "'kernel_size':3,'padding':1") /* keeps H and W */
#define C2    CONV(3, 2, "'kernel_size':2")             /* (3, 3, 3) -> (2, 2, 2) */
#define CNN_A C1 "," RELU "," POOL2 "," C2

static void test_fused(void)
{
    static const struct gc_case t[] = {
        {CASE("fused_linear_relu", REG("[5]") "[" HID2 "," RELU "," LIN(4, 3) "]}", 1e-3),
         .probes = {{.kind = PROBE_RELU, .layers = "[" LIN(5, 6) "]"},
                    {.kind = PROBE_RELU, .layers = "[" HID2 "]"}}},
        {CASE("fused_relu_last", REG("[5]") "[" LIN(5, 6) "," RELU "]}", 1e-3),
         .probes = {{.kind = PROBE_RELU, .layers = "[" LIN(5, 6) "]"}}},
        {CASE("fused_conv_relu", REG("[1, 5, 5]") "[" C1 "," RELU "," FLAT "," LIN(75, 3) "]}",
              1e-3),
         .probes = {{.kind = PROBE_RELU, .layers = "[" C1 "," FLAT "]"}}},
        {CASE("cnn", REG("[1, 6, 6]") "[" CNN_A "," RELU "," FLAT "," LIN(8, 3) "]}", 1e-3),
         .scale = 2,
         .probes = {{.kind = PROBE_RELU, .layers = "[" C1 "," FLAT "]"},
                    {PROBE_POOL, "[" C1 "," RELU "," FLAT "]", 3, 6, 6, 2, 2, 0},
                    {.kind = PROBE_RELU, .layers = "[" CNN_A "," FLAT "]"}}},
    };
    RUN_TABLE(t);
}

/* ------------------------------------------------------------------------------------------
 * Losses
 * ---------------------------------------------------------------------------------------- */

static void test_losses_through_model(void)
{
    static const struct gc_case t[] = {
        {CASE("cross_entropy_mlp", CLS("[4]") "[" LIN(4, 6) "," ACT("Tanh") "," LIN(6, 3) "]}",
              1e-2),
         .obj = OBJ_CE, .scale = 2},
        {CASE("mse_mlp", REG("[4]") "[" LIN(4, 5) "," ACT("GELU") "," LIN(5, 2) "]}", 1e-2),
         .obj = OBJ_MSE, .scale = 2},
    };
    RUN_TABLE(t);
}

/* The loss functions alone, in double: values against a direct computation, gradients
 * against central differences (the loss is a double, so h = 1e-3 leaves ~1e-9 of noise and
 * 1e-7 of truncation: 1e-5 is a wide tolerance that still sees any wrong factor). */
static void test_losses_direct(void)
{
    enum { B = 4, C = 5 };
    float z[B * C], t[B * C], d[B * C];
    int32_t lab[B] = {0, 3, 4, 3};
    struct rng r;
    rng_seed(&r, 99);
    for (int i = 0; i < B * C; i++) {
        z[i] = unif(&r, -3, 3);
        t[i] = unif(&r, -1, 1);
    }
    double want = 0.0;
    for (int b = 0; b < B; b++) {
        double s = 0.0;
        for (int j = 0; j < C; j++)
            s += exp((double)z[b * C + j]);
        want += (log(s) - z[b * C + lab[b]]) / B;
    }
    CHECK_NEAR(loss_cross_entropy(z, lab, B, C, d), want, 1e-6);
    for (int i = 0; i < B * C; i++) {
        float keep = z[i], up = keep + 1e-3f, down = keep - 1e-3f;
        z[i] = up;
        double lp = loss_cross_entropy(z, lab, B, C, NULL);
        z[i] = down;
        double lm = loss_cross_entropy(z, lab, B, C, NULL);
        z[i] = keep;
        CHECK_NEAR(d[i], (lp - lm) / ((double)up - (double)down), 1e-5);
    }
    want = 0.0;
    for (int i = 0; i < B * C; i++)
        want += ((double)z[i] - t[i]) * ((double)z[i] - t[i]) / (B * C);
    CHECK_NEAR(loss_mse(z, t, B, C, d), want, 1e-6);
    for (int i = 0; i < B * C; i++) {
        float keep = z[i], up = keep + 1e-3f, down = keep - 1e-3f;
        z[i] = up;
        double lp = loss_mse(z, t, B, C, NULL);
        z[i] = down;
        double lm = loss_mse(z, t, B, C, NULL);
        z[i] = keep;
        CHECK_NEAR(d[i], (lp - lm) / ((double)up - (double)down), 1e-5);
    }
    /* Huge logits stay finite, and each gradient row sums to 0. */
    float big[2 * 3] = {1000, -1000, 999, -500, 800, 800};
    int32_t bl[2] = {1, 2};
    double L = loss_cross_entropy(big, bl, 2, 3, d);
    CHECK_NEAR(L, (2000 + log1p(exp(-1.0)) + log(2.0)) / 2, 1e-3);
    for (int b = 0; b < 2; b++)
        CHECK_NEAR(d[b * 3] + d[b * 3 + 1] + d[b * 3 + 2], 0.0, 1e-6);
}

int main(void)
{
    RUN(test_linear_and_activations);
    RUN(test_dropout);
    RUN(test_dropout_mask);
    RUN(test_conv);
    RUN(test_maxpool);
    RUN(test_fused);
    RUN(test_losses_through_model);
    RUN(test_losses_direct);
    return test_finish();
}
