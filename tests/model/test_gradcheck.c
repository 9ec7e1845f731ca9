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
 * least MARGIN from 0 and every max-pool window's winner leads the runner-up by MARGIN
 * (measured on "probe" models: a prefix of the layers, followed by Flatten, with the same
 * parameters). Those cases use h = 1e-3: a step moves any pre-activation by at most h times
 * an input or weight (all below 1 here), far inside MARGIN, so L is exactly linear in the
 * perturbed value and only rounding remains. Smooth cases use h = 1e-2, where the truncation
 * error (h^2/6 f''' ~ 2e-5) stays below the rounding noise.
 *
 * Tolerance: |a - n| <= ATOL + RTOL |n| with ATOL = 2e-3, RTOL = 1e-2. The worst errors seen
 * over all cases are ~2e-4 (rounding noise ~ 1e-7 * sum |out R| / 2h), so the tolerance
 * has a 10x margin, yet every case also checks that its gradients are not all tiny (max |n|
 * above 0.05), so a sign flip, a missing term or a wrong index in a backward kernel shows as
 * an error of the size of the gradient itself. Each mutation of layers.c and loss.c listed in
 * the report that introduced this file (sign flips, dropped terms, off-by-one in col2im,
 * dropout without its mask, ...) made this program fail.
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
    const char *layers; /* JSON layer list of the prefix, ending in Flatten */
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
    double scale;     /* IN_UNIFORM range; 0 means 1 */
    bool training;    /* dropout on, masks from a fixed seed */
    struct probe probes[4];
};

struct gc {
    const struct gc_case *c;
    struct model *m;
    struct model_workspace *ws;
    size_t B, F, O, P;
    float *R;       /* (B, O) OBJ_DOT weights */
    int32_t *lab;   /* (B) OBJ_CE labels */
    float *target;  /* (B, O) OBJ_MSE targets */
    float *dout;    /* (B, O) */
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
            fprintf(stderr, "  %s B=%zu %s[%zu]: analytic %.7g, numeric %.7g\n", g->c->name,
                    g->B, what, i, (double)a[i], num);
    }
    CHECK_MSG(bad == 0, "%s B=%zu: %zu of %zu %s gradients off (worst %.3g)", g->c->name, g->B,
              bad, n, what, worst);
    if (getenv("GC_VERBOSE") != NULL)
        fprintf(stderr, "  %-24s B=%zu %-6s n=%-4zu worst %.2e  max|grad| %.3f\n", g->c->name,
                g->B, what, n, worst, big);
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
        char json[1024];
        snprintf(json, sizeof json, "%s", c->json);
        /* The probe: the same document with the layer list cut, as a regressor. */
        char *layers = strstr(json, "'layers'");
        char *task = strstr(json, "'classification'");
        if (task != NULL)
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
        g.target[i] = unif(&r, -1, 1);
    }
    for (size_t b = 0; b < B; b++)
        g.lab[b] = (int32_t)rng_below(&r, g.O);

    gc_loss(&g, x, true);
    backward_pass(g.m, g.ws, g.dout, B, grads, dx);
    /* The early-stop paths must agree with the full one. */
    backward_pass(g.m, g.ws, g.dout, B, grads2, NULL);
    CHECK_MSG(g.P == 0 || memcmp(grads, grads2, g.P * sizeof *grads) == 0,
              "%s B=%zu: grads differ without dx", c->name, B);
    backward_pass(g.m, g.ws, g.dout, B, NULL, dx2);
    CHECK_MSG(memcmp(dx, dx2, B * g.F * sizeof *dx) == 0, "%s B=%zu: dx differs without grads",
              c->name, B);

    double big = 0.0;
    if (g.P > 0)
        big = compare(&g, "param", grads, g.m->params, g.P, x);
    double bigx = compare(&g, "input", dx, x, B * g.F, x);
    CHECK_MSG(g.P == 0 || big > MIN_SIGNAL, "%s B=%zu: parameter gradients too small (%g)",
              c->name, B, big);
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
