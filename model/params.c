/*
 * model/params.c - parameter names (torch.nn.Sequential state_dict), default init, loading
 * weights from a parsed safetensors file.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

void params_default_init(struct model *m, uint64_t seed)
{
    /* PyTorch: Linear and Conv2d weights use kaiming_uniform_(a=sqrt(5)), which is
     * uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); biases use the same bound. The values differ
     * from torch's (another generator) but the distribution is the same. */
    struct rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < m->n_layers; i++) {
        const struct layer *l = &m->layers[i];
        if (l->w_n == 0)
            continue;
        double fan_in = l->type == LAYER_LINEAR ? (double)l->in_features
                                                : (double)l->in_channels * l->kh * l->kw;
        double bound = 1.0 / sqrt(fan_in);
        for (size_t k = 0; k < l->w_n; k++)
            m->params[l->w_off + k] = (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
        for (size_t k = 0; k < l->b_n; k++)
            m->params[l->b_off + k] = (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
    }
}

void params_transpose(struct model *m)
{
    for (size_t i = 0; i < m->n_layers; i++) {
        const struct layer *l = &m->layers[i];
        if (l->type != LAYER_LINEAR)
            continue;
        const size_t I = (size_t)l->in_features, O = (size_t)l->out_features;
        const float *w = m->params + l->w_off; /* (O, I) */
        float *wt = m->wt + l->wt_off;         /* (I, O) */
        /* In square tiles: row by row, every write of a large W^T lands on another cache line
         * and page (a trainer rebuilds it after each epoch; tiles made it about 3x faster). */
        enum { TILE = 64 };
        for (size_t o0 = 0; o0 < O; o0 += TILE) {
            const size_t o1 = O - o0 < TILE ? O : o0 + TILE;
            for (size_t k0 = 0; k0 < I; k0 += TILE) {
                const size_t k1 = I - k0 < TILE ? I : k0 + TILE;
                for (size_t k = k0; k < k1; k++)
                    for (size_t o = o0; o < o1; o++)
                        wt[k * O + o] = w[o * I + k];
            }
        }
    }
    m->wt_fresh = true;
}

static int format_shape(char *buf, size_t cap, int rank, const int64_t *shape)
{
    size_t used = 0;
    int n = snprintf(buf, cap, "[");
    used = (size_t)n;
    for (int i = 0; i < rank && used < cap; i++) {
        n = snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        used += (size_t)n;
    }
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
    return 0;
}

static int load_one(struct model *m, const struct st_file *f, size_t li, bool is_bias,
                    size_t *found, struct err *e)
{
    const struct layer *l = &m->layers[li];
    char name[48];
    snprintf(name, sizeof name, "%zu.%s", li, is_bias ? "bias" : "weight");
    int rank = is_bias ? 1 : l->w_rank;
    int64_t want[4];
    if (is_bias)
        want[0] = (int64_t)l->b_n;
    else
        memcpy(want, l->w_shape, sizeof want);
    const struct st_tensor *t = st_find(f, name);
    if (t == NULL)
        return err_set(e, INF_EINVAL, "missing tensor \"%s\" for layers[%zu] (%s)", name, li,
                       layer_type_name(l->type));
    bool same = t->rank == rank;
    for (int k = 0; same && k < rank; k++)
        same = t->shape[k] == want[k];
    if (!same) {
        char got[128], exp[128];
        format_shape(got, sizeof got, t->rank, t->shape);
        format_shape(exp, sizeof exp, rank, want);
        return err_set(e, INF_EINVAL, "tensor \"%s\": shape %s, but layers[%zu] (%s) needs %s",
                       name, got, li, layer_type_name(l->type), exp);
    }
    if (m->params != NULL) /* NULL: only check names and shapes */
        st_to_f32(t, m->params + (is_bias ? l->b_off : l->w_off));
    (*found)++;
    return INF_OK;
}

int params_from_safetensors(struct model *m, const struct st_file *f, struct err *e)
{
    size_t found = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        const struct layer *l = &m->layers[i];
        int rc;
        if (l->w_n > 0 && (rc = load_one(m, f, i, false, &found, e)))
            return rc;
        if (l->b_n > 0 && (rc = load_one(m, f, i, true, &found, e)))
            return rc;
    }
    if (found != f->n) {
        /* As load_state_dict(strict=True): a tensor we do not use means the file was made
         * for another architecture. */
        for (size_t k = 0; k < f->n; k++) {
            const char *nm = f->tensors[k].name;
            unsigned long idx;
            char kind[16];
            int consumed = 0;
            bool used = false;
            char canon[48];
            /* Only the canonical spelling counts: "00.weight" or "+0.weight" is an extra. */
            if (sscanf(nm, "%lu.%15[a-z]%n", &idx, kind, &consumed) == 2 && nm[consumed] == '\0' &&
                idx < m->n_layers && snprintf(canon, sizeof canon, "%lu.%s", idx, kind) > 0 &&
                strcmp(canon, nm) == 0) {
                const struct layer *l = &m->layers[idx];
                used = (strcmp(kind, "weight") == 0 && l->w_n > 0) ||
                       (strcmp(kind, "bias") == 0 && l->b_n > 0);
            }
            if (!used)
                return err_set(e, INF_EINVAL,
                               "unexpected tensor \"%.64s\": no layer of model.json uses it", nm);
        }
    }
    return INF_OK;
}

int params_serialize(const struct model *m, const struct st_out *extra, size_t n_extra,
                     const json_t *metadata, char **data, size_t *len, struct err *e)
{
    struct st_out *outs = calloc(2 * m->n_layers + n_extra + 1, sizeof *outs);
    char(*names)[32] = calloc(2 * m->n_layers + 1, sizeof *names);
    int64_t *bshape = calloc(m->n_layers + 1, sizeof *bshape);
    int rc = INF_OK;
    if (outs == NULL || names == NULL || bshape == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        const struct layer *l = &m->layers[i];
        if (l->w_n > 0) {
            snprintf(names[n], sizeof names[n], "%zu.weight", i);
            outs[n] = (struct st_out){names[n], l->w_rank, l->w_shape, m->params + l->w_off};
            n++;
        }
        if (l->b_n > 0) {
            bshape[i] = (int64_t)l->b_n;
            snprintf(names[n], sizeof names[n], "%zu.bias", i);
            outs[n] = (struct st_out){names[n], 1, &bshape[i], m->params + l->b_off};
            n++;
        }
    }
    for (size_t k = 0; k < n_extra; k++)
        outs[n++] = extra[k];
    rc = st_serialize(outs, n, metadata, data, len, e);
out:
    free(outs);
    free(names);
    free(bshape);
    return rc;
}
