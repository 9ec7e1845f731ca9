/*
 * model/featurize.c - from what a client sends to the first layer's input: the affine
 * preprocess for tensors, the hashing featurizer for text (model/hashing.c).
 */
#include <string.h>

#include "internal.h"

int model_featurize_tensor(const struct model *m, const float *raw, size_t n, float *out,
                           struct err *e)
{
    if (m->info.input_kind != MODEL_INPUT_TENSOR)
        return err_set(e, INF_EINVAL, "model \"%s\" takes text, not a tensor", m->info.input_name);
    size_t R = m->info.raw_size;
    if (!m->has_preprocess) {
        if (out != raw)
            memmove(out, raw, n * R * sizeof *out);
        return INF_OK;
    }
    const float *a = m->pre_a, *b = m->pre_b;
    for (size_t s = 0; s < n; s++) {
        const float *x = raw + s * R;
        float *y = out + s * R;
        for (size_t i = 0; i < R; i++)
            y[i] = x[i] * a[i] + b[i];
    }
    return INF_OK;
}

int model_featurize_text(const struct model *m, const char *text, size_t len, float *out,
                         struct err *e)
{
    if (m->info.input_kind != MODEL_INPUT_TEXT)
        return err_set(e, INF_EINVAL, "this model takes a tensor, not text");
    model_hash_text(text, len, m->info.hashing.dims, m->info.hashing.ngrams, out);
    return INF_OK;
}
