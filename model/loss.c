/*
 * model/loss.c - mean-reduced losses with their gradients, as torch.nn.functional's
 * cross_entropy (on logits) and mse_loss.
 */
#include <math.h>

#include "internal.h"

double loss_cross_entropy(const float *logits, const int32_t *labels, size_t B, size_t C,
                          float *dlogits)
{
    double total = 0.0;
    const float invB = 1.0f / (float)B;
    for (size_t r = 0; r < B; r++) {
        const float *z = logits + r * C;
        float mx = z[0];
        for (size_t j = 1; j < C; j++)
            if (z[j] > mx)
                mx = z[j];
        double sum = 0.0;
        for (size_t j = 0; j < C; j++)
            sum += exp((double)(z[j] - mx));
        double lse = log(sum) + mx;
        total += lse - z[labels[r]];
        if (dlogits != NULL) {
            float *d = dlogits + r * C;
            for (size_t j = 0; j < C; j++)
                d[j] = (float)exp((double)z[j] - lse) * invB;
            d[labels[r]] -= invB;
        }
    }
    return total / (double)B;
}

double loss_mse(const float *out, const float *target, size_t B, size_t D, float *dout)
{
    size_t n = B * D;
    double total = 0.0;
    const float scale = 2.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        float diff = out[i] - target[i];
        total += (double)diff * diff;
        if (dout != NULL)
            dout[i] = scale * diff;
    }
    return total / (double)n;
}
