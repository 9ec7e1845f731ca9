/*
 * model/layers.c - forward and backward kernels of every layer type, batched.
 *
 * Layout: activations are row-major (B, in_size) / (B, out_size); an image sample is
 * (C, H, W). Parameters follow torch's state_dict: Linear weight (O, I), Conv2d weight
 * (OC, IC, KH, KW). Matrix products go to OpenBLAS: sgemm for a batch, sgemv for a single row
 * (sgemm would pack the whole weight matrix for one row), except that a single row through a
 * Linear layer uses this file's own AVX2/FMA kernels where the CPU has them.
 *
 * Each layer_forward has its layer_backward right below it. Backward overwrites parameter
 * gradients (one backward per optimizer step), it never accumulates across calls (a Linear
 * adds into them only when the caller promises zeros: grads_zero).
 */
#include <cblas.h>
#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LINEAR_ROW_AVX2 1
#endif

#include "internal.h"

/* ------------------------------------------------------------------------------------------
 * Linear: y (B, O) = x (B, I) W^T (I, O) + b
 * ---------------------------------------------------------------------------------------- */

/* Adds the bias to each of B rows of y (B, n) and, if relu, clamps at 0: one pass. */
MODEL_HOT static void bias_act_rows(float *y, const float *b, size_t B, size_t n, bool relu)
{
    for (size_t r = 0; r < B; r++) {
        float *row = y + r * n;
        if (b != NULL && relu) {
            for (size_t j = 0; j < n; j++) {
                float v = row[j] + b[j];
                row[j] = v > 0.0f ? v : 0.0f;
            }
        } else if (b != NULL) {
            for (size_t j = 0; j < n; j++)
                row[j] += b[j];
        } else if (relu) {
            for (size_t j = 0; j < n; j++)
                row[j] = row[j] > 0.0f ? row[j] : 0.0f;
        }
    }
}

/*
 * A few rows through a Linear layer when most inputs are zero (raw pixels, hashed text, every
 * layer after a ReLU): y (B, O) = sum over nonzero x[r][i] of x[r][i] * W^T[i] (O). A row of
 * W^T is read from memory only if some input row needs it, and then reused from L1 by every
 * row that does: reading the weights is what a small batch is bound by, so both a single row
 * and a batch gain (a batch of 8 reads the union of its rows' weights once). Returns false,
 * with nothing written, when the inputs are too dense for this to beat sgemv/sgemm.
 */
#define LINEAR_SPARSE_MAX_B 8
MODEL_HOT static bool linear_sparse_rows(const float *x, const float *wt, float *y, size_t B,
                                         int NI, int NO)
{
    size_t nnz = 0; /* the axpys to do; each reads a weight row at most once per batch */
    for (size_t k = 0; k < B * (size_t)NI; k++)
        nnz += x[k] != 0.0f;
    if (nnz * 3 > B * (size_t)NI * 2) /* above two thirds nonzero, BLAS's dense kernels win */
        return false;
    memset(y, 0, B * (size_t)NO * sizeof *y);
    for (int i = 0; i < NI; i++) {
        const float *w = wt + (size_t)i * (size_t)NO;
        for (size_t r = 0; r < B; r++) {
            const float xi = x[r * (size_t)NI + (size_t)i];
            if (xi == 0.0f)
                continue;
            float *yr = y + r * (size_t)NO;
            for (int o = 0; o < NO; o++)
                yr[o] += xi * w[o];
        }
    }
    return true;
}

#ifdef LINEAR_ROW_AVX2
/*
 * One row through a Linear layer, hand-vectorised for AVX2 with FMA (checked at run time; the
 * portable path below stays for other CPUs). Batch-1 inference is bound by reading the
 * weights, which do not fit in L2, and OpenBLAS's sgemv and the plain sparse loop read them
 * at well below the memory system's streaming rate; these read every weight byte once, in
 * long ascending runs, with enough independent accumulators to keep the loads in flight.
 * Fused multiply-adds round once where the portable path rounds twice: results differ from
 * it in the last bits, never between two calls on the same machine.
 */

static inline __attribute__((target("avx2,fma"), always_inline)) float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[o .. o+3] = act(W[o .. o+3] (4, NI) . x (NI) + b): four dot products sharing x's loads. */
static inline __attribute__((target("avx2,fma"), always_inline)) void
dot4_avx2(const float *W, const float *x, const float *b, float *y, int o, int NI, bool relu)
{
    const float *w0 = W + (size_t)o * (size_t)NI, *w1 = w0 + NI, *w2 = w1 + NI, *w3 = w2 + NI;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0; /* even 8-float steps */
    __m256 c0 = a0, c1 = a0, c2 = a0, c3 = a0;                  /* odd ones */
    int i = 0;
    for (; i + 16 <= NI; i += 16) {
        __m256 xa = _mm256_loadu_ps(x + i), xb = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xa, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xa, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xa, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xa, a3);
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i + 8), xb, c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i + 8), xb, c1);
        c2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i + 8), xb, c2);
        c3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i + 8), xb, c3);
    }
    if (i + 8 <= NI) {
        __m256 xa = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xa, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xa, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xa, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xa, a3);
        i += 8;
    }
    float s[4] = {hsum256(_mm256_add_ps(a0, c0)), hsum256(_mm256_add_ps(a1, c1)),
                  hsum256(_mm256_add_ps(a2, c2)), hsum256(_mm256_add_ps(a3, c3))};
    for (; i < NI; i++) {
        s[0] = fmaf(w0[i], x[i], s[0]);
        s[1] = fmaf(w1[i], x[i], s[1]);
        s[2] = fmaf(w2[i], x[i], s[2]);
        s[3] = fmaf(w3[i], x[i], s[3]);
    }
    for (int k = 0; k < 4; k++) {
        float v = s[k] + (b != NULL ? b[o + k] : 0.0f);
        y[o + k] = relu && !(v > 0.0f) ? 0.0f : v;
    }
}

/* The same for one row (the NO % 4 left over). */
static inline __attribute__((target("avx2,fma"), always_inline)) void
dot1_avx2(const float *W, const float *x, const float *b, float *y, int o, int NI, bool relu)
{
    const float *w = W + (size_t)o * (size_t)NI;
    __m256 a = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= NI; i += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a);
    float s = hsum256(a);
    for (; i < NI; i++)
        s = fmaf(w[i], x[i], s);
    float v = s + (b != NULL ? b[o] : 0.0f);
    y[o] = relu && !(v > 0.0f) ? 0.0f : v;
}

/*
 * y (NO) = act(W (NO, NI) x (NI) + b), b may be NULL. Rows go in blocks of four, ascending, or
 * descending when reverse: alternating the two between calls makes each call start on the
 * weights the previous one read last, which are still in L2 (about 20% faster when the weights
 * are larger than L2). Every output is computed the same way in either order.
 */
__attribute__((target("avx2,fma"))) static void gemv_rows_avx2(const float *W, const float *x,
                                                               const float *b, float *y, int NO,
                                                               int NI, bool relu, bool reverse)
{
    const int nblk = NO / 4;
    for (int k = 0; k < nblk; k++)
        dot4_avx2(W, x, b, y, 4 * (reverse ? nblk - 1 - k : k), NI, relu);
    for (int o = 4 * nblk; o < NO; o++)
        dot1_avx2(W, x, b, y, o, NI, relu);
}

/* y (NO) += x0 w0 + x1 w1 + x2 w2 + x3 w3, in that order, each a rounded FMA: the same result
 * as four single-row updates. */
static inline __attribute__((target("avx2,fma"), always_inline)) void
axpy4_avx2(float *y, const float *wt, const float *x, const int *idx, int NO)
{
    const float *w0 = wt + (size_t)idx[0] * (size_t)NO, *w1 = wt + (size_t)idx[1] * (size_t)NO;
    const float *w2 = wt + (size_t)idx[2] * (size_t)NO, *w3 = wt + (size_t)idx[3] * (size_t)NO;
    const float s0 = x[idx[0]], s1 = x[idx[1]], s2 = x[idx[2]], s3 = x[idx[3]];
    const __m256 x0 = _mm256_set1_ps(s0), x1 = _mm256_set1_ps(s1);
    const __m256 x2 = _mm256_set1_ps(s2), x3 = _mm256_set1_ps(s3);
    int o = 0;
    for (; o + 8 <= NO; o += 8) {
        __m256 a = _mm256_loadu_ps(y + o);
        a = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w0 + o), a);
        a = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w1 + o), a);
        a = _mm256_fmadd_ps(x2, _mm256_loadu_ps(w2 + o), a);
        a = _mm256_fmadd_ps(x3, _mm256_loadu_ps(w3 + o), a);
        _mm256_storeu_ps(y + o, a);
    }
    for (; o < NO; o++)
        y[o] = fmaf(s3, w3[o], fmaf(s2, w2[o], fmaf(s1, w1[o], fmaf(s0, w0[o], y[o]))));
}

static inline __attribute__((target("avx2,fma"), always_inline)) void
axpy1_avx2(float *y, const float *wt, const float *x, int i, int NO)
{
    const float *w = wt + (size_t)i * (size_t)NO;
    const float s = x[i];
    const __m256 xv = _mm256_set1_ps(s);
    int o = 0;
    for (; o + 8 <= NO; o += 8) {
        __m256 a = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + o), _mm256_loadu_ps(y + o));
        _mm256_storeu_ps(y + o, a);
    }
    for (; o < NO; o++)
        y[o] = fmaf(s, w[o], y[o]);
}

/*
 * y (NO) = sum over nonzero x[i], ascending, of x[i] W^T[i] (NO), for one sparse row (the
 * caller adds the bias). The nonzero positions are gathered without branches, a chunk at a
 * time, so that a random half-zero input (a layer after ReLU) costs no mispredictions; then
 * the selected weight rows are added four per pass over y.
 */
#define AXPY_CHUNK 256
__attribute__((target("avx2,fma"))) static void axpy_rows_avx2(const float *x, const float *wt,
                                                               float *y, int NI, int NO)
{
    int idx[AXPY_CHUNK];
    memset(y, 0, (size_t)NO * sizeof *y);
    for (int c = 0; c < NI; c += AXPY_CHUNK) {
        const int end = NI - c < AXPY_CHUNK ? NI : c + AXPY_CHUNK;
        int n = 0;
        for (int i = c; i < end; i++) {
            idx[n] = i;
            n += x[i] != 0.0f;
        }
        int k = 0;
        for (; k + 4 <= n; k += 4)
            axpy4_avx2(y, wt, x, idx + k, NO);
        for (; k < n; k++)
            axpy1_avx2(y, wt, x, idx[k], NO);
    }
}

static bool cpu_has_avx2_fma(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif /* LINEAR_ROW_AVX2 */

/*
 * One input row (B = 1) on AVX2/FMA: sparse rows through W^T when wt is there and at most two
 * thirds of x are nonzero (the threshold of linear_sparse_rows), else every row of W. Returns
 * false, with nothing written, where these kernels do not apply.
 */
static bool linear_forward_row(const struct layer *l, const float *params, const float *wt,
                               const float *x, float *y, bool reverse)
{
#ifdef LINEAR_ROW_AVX2
    const int NI = l->in_features, NO = l->out_features;
    const float *W = params + l->w_off;                 /* (O, I) */
    const float *b = l->b_n ? params + l->b_off : NULL; /* (O) */
    if (!cpu_has_avx2_fma())
        return false;
    size_t nnz = 0;
    for (int i = 0; i < NI; i++)
        nnz += x[i] != 0.0f;
    if (wt != NULL && nnz * 3 <= (size_t)NI * 2) {
        axpy_rows_avx2(x, wt + l->wt_off, y, NI, NO);
        bias_act_rows(y, b, 1, (size_t)NO, l->fuse_relu);
    } else {
        gemv_rows_avx2(W, x, b, y, NO, NI, l->fuse_relu, reverse);
    }
    return true;
#else
    (void)l, (void)params, (void)wt, (void)x, (void)y, (void)reverse;
    return false;
#endif
}

static void linear_forward(const struct layer *l, const float *params, const float *wt,
                           const float *x, float *y, size_t B, bool reverse)
{
    const int NI = l->in_features, NO = l->out_features;
    const float *W = params + l->w_off;                 /* (O, I) */
    const float *b = l->b_n ? params + l->b_off : NULL; /* (O) */
    if (B == 1 && linear_forward_row(l, params, wt, x, y, reverse))
        return; /* bias and activation applied */
    if (wt != NULL && B <= LINEAR_SPARSE_MAX_B &&
        linear_sparse_rows(x, wt + l->wt_off, y, B, NI, NO)) {
        /* done: only the weight rows that nonzero inputs select were read */
    } else if (B == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, NO, NI, 1.0f, W, NI, x, 1, 0.0f, y, 1);
    } else if (wt != NULL) { /* y (B, O) = x (B, I) W^T (I, O), both NoTrans */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, NO, NI, 1.0f, x, NI,
                    wt + l->wt_off, NO, 0.0f, y, NO);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)B, NO, NI, 1.0f, x, NI, W, NI,
                    0.0f, y, NO);
    }
    bias_act_rows(y, b, B, (size_t)NO, l->fuse_relu);
}

/* With grads_zero, dW is accumulated into its zeros (beta = 1): OpenBLAS then skips the pass
 * that zeroes C for beta = 0. */
static void linear_backward(const struct layer *l, const float *params, const float *x,
                            const float *dy, float *dx, float *grads, bool grads_zero, size_t B)
{
    const int NI = l->in_features, NO = l->out_features;
    const float *W = params + l->w_off; /* (O, I) */
    if (grads != NULL) {
        float *dW = grads + l->w_off; /* (O, I) = dy^T (O, B) x (B, I) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, NO, NI, (int)B, 1.0f, dy, NO, x, NI,
                    grads_zero ? 1.0f : 0.0f, dW, NI);
        if (l->b_n) {
            float *db = grads + l->b_off; /* (O) = sum over rows of dy */
            memcpy(db, dy, (size_t)NO * sizeof *db);
            for (size_t r = 1; r < B; r++) {
                const float *row = dy + r * (size_t)NO;
                for (int j = 0; j < NO; j++)
                    db[j] += row[j];
            }
        }
    }
    if (dx != NULL) { /* (B, I) = dy (B, O) W (O, I) */
        if (B == 1)
            cblas_sgemv(CblasRowMajor, CblasTrans, NO, NI, 1.0f, W, NI, dy, 1, 0.0f, dx, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)B, NI, NO, 1.0f, dy, NO, W,
                        NI, 0.0f, dx, NI);
    }
}

/* ------------------------------------------------------------------------------------------
 * Conv2d via im2col: per sample, y (OC, OH*OW) = W (OC, IC*KH*KW) col (IC*KH*KW, OH*OW)
 * ---------------------------------------------------------------------------------------- */

/* x (C, H, W) -> col (C*KH*KW, OH*OW), zeros where the window covers padding. */
static void im2col(const struct layer *l, const float *x, float *col)
{
    const int C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < l->kh; ki++)
            for (int kj = 0; kj < l->kw; kj++) {
                float *row = col + ((size_t)(c * l->kh + ki) * l->kw + kj) * (size_t)(OH * OW);
                const float *plane = x + (size_t)c * H * W;
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * l->sh - l->ph + ki;
                    float *dst = row + (size_t)oh * OW;
                    if (ih < 0 || ih >= H) {
                        memset(dst, 0, (size_t)OW * sizeof *dst);
                        continue;
                    }
                    const float *src = plane + (size_t)ih * W;
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * l->sw - l->pw + kj;
                        dst[ow] = (iw >= 0 && iw < W) ? src[iw] : 0.0f;
                    }
                }
            }
}

/* Adds col (C*KH*KW, OH*OW) back into dx (C, H, W): the adjoint of im2col. */
static void col2im_add(const struct layer *l, const float *col, float *dx)
{
    const int C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    for (int c = 0; c < C; c++)
        for (int ki = 0; ki < l->kh; ki++)
            for (int kj = 0; kj < l->kw; kj++) {
                const float *row =
                    col + ((size_t)(c * l->kh + ki) * l->kw + kj) * (size_t)(OH * OW);
                float *plane = dx + (size_t)c * H * W;
                for (int oh = 0; oh < OH; oh++) {
                    int ih = oh * l->sh - l->ph + ki;
                    if (ih < 0 || ih >= H)
                        continue;
                    const float *src = row + (size_t)oh * OW;
                    float *dst = plane + (size_t)ih * W;
                    for (int ow = 0; ow < OW; ow++) {
                        int iw = ow * l->sw - l->pw + kj;
                        if (iw >= 0 && iw < W)
                            dst[iw] += src[ow];
                    }
                }
            }
}

/* A 1x1 convolution with stride 1 and no padding reads its input as the column matrix. */
static bool conv_is_pointwise(const struct layer *l)
{
    return l->kh == 1 && l->kw == 1 && l->sh == 1 && l->sw == 1 && l->ph == 0 && l->pw == 0;
}

static void conv2d_forward(const struct layer *l, const float *params, const float *x, float *y,
                           size_t B, struct model_workspace *ws)
{
    const int OC = l->out_channels, K = l->in_channels * l->kh * l->kw;
    const int P = l->out.h * l->out.w;
    const float *W = params + l->w_off;                 /* (OC, K) */
    const float *b = l->b_n ? params + l->b_off : NULL; /* (OC) */
    for (size_t n = 0; n < B; n++) {
        const float *xn = x + n * l->in_size;
        float *yn = y + n * l->out_size; /* (OC, P) */
        const float *col = xn;
        if (!conv_is_pointwise(l)) {
            im2col(l, xn, ws->col);
            col = ws->col;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, P, K, 1.0f, W, K, col, P, 0.0f,
                    yn, P);
        for (int oc = 0; oc < OC; oc++) {
            float *row = yn + (size_t)oc * P;
            float bias = b ? b[oc] : 0.0f;
            if (l->fuse_relu) {
                for (int p = 0; p < P; p++) {
                    float v = row[p] + bias;
                    row[p] = v > 0.0f ? v : 0.0f;
                }
            } else if (b != NULL) {
                for (int p = 0; p < P; p++)
                    row[p] += bias;
            }
        }
    }
}

static void conv2d_backward(const struct layer *l, const float *params, const float *x,
                            const float *dy, float *dx, float *grads, size_t B,
                            struct model_workspace *ws)
{
    const int OC = l->out_channels, K = l->in_channels * l->kh * l->kw;
    const int P = l->out.h * l->out.w;
    const float *W = params + l->w_off; /* (OC, K) */
    float *dW = grads ? grads + l->w_off : NULL;
    float *db = (grads && l->b_n) ? grads + l->b_off : NULL;
    if (db != NULL)
        memset(db, 0, (size_t)OC * sizeof *db);
    for (size_t n = 0; n < B; n++) {
        const float *xn = x + n * l->in_size;
        const float *dyn = dy + n * l->out_size; /* (OC, P) */
        if (dW != NULL) {
            const float *col = xn;
            if (!conv_is_pointwise(l)) {
                im2col(l, xn, ws->col);
                col = ws->col;
            }
            /* dW (OC, K) += dy_n (OC, P) col^T (P, K) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, K, P, 1.0f, dyn, P, col, P,
                        n == 0 ? 0.0f : 1.0f, dW, K);
        }
        if (db != NULL)
            for (int oc = 0; oc < OC; oc++) {
                const float *row = dyn + (size_t)oc * P;
                float s = 0.0f;
                for (int p = 0; p < P; p++)
                    s += row[p];
                db[oc] += s;
            }
        if (dx != NULL) {
            float *dxn = dx + n * l->in_size;
            if (conv_is_pointwise(l)) { /* dx_n (K, P) = W^T (K, OC) dy_n (OC, P) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, OC, 1.0f, W, K, dyn, P,
                            0.0f, dxn, P);
            } else {
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, P, OC, 1.0f, W, K, dyn, P,
                            0.0f, ws->dcol, P);
                memset(dxn, 0, l->in_size * sizeof *dxn);
                col2im_add(l, ws->dcol, dxn);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * MaxPool2d: padding counts as -inf, as in PyTorch; NaN propagates.
 * ---------------------------------------------------------------------------------------- */

static void maxpool_forward(const struct layer *l, const float *x, float *y, size_t B, int32_t *idx)
{
    const int C = l->in.c, H = l->in.h, W = l->in.w, OH = l->out.h, OW = l->out.w;
    for (size_t n = 0; n < B; n++)
        for (int c = 0; c < C; c++) {
            const float *plane = x + n * l->in_size + (size_t)c * H * W;
            for (int oh = 0; oh < OH; oh++)
                for (int ow = 0; ow < OW; ow++) {
                    int h0 = oh * l->sh - l->ph, w0 = ow * l->sw - l->pw;
                    float best = -INFINITY;
                    int besti = -1;
                    for (int i = h0; i < h0 + l->kh; i++) {
                        if (i < 0 || i >= H)
                            continue;
                        for (int j = w0; j < w0 + l->kw; j++) {
                            if (j < 0 || j >= W)
                                continue;
                            float v = plane[i * W + j];
                            if (besti < 0 || v > best || isnan(v)) {
                                best = v;
                                besti = i * W + j;
                                if (isnan(v))
                                    goto found;
                            }
                        }
                    }
                found:;
                    size_t o = n * l->out_size + ((size_t)c * OH + oh) * OW + ow;
                    y[o] = best;
                    idx[o] = c * H * W + besti;
                }
        }
}

static void maxpool_backward(const struct layer *l, const float *dy, float *dx, size_t B,
                             const int32_t *idx)
{
    memset(dx, 0, B * l->in_size * sizeof *dx);
    for (size_t n = 0; n < B; n++)
        for (size_t o = 0; o < l->out_size; o++)
            dx[n * l->in_size + (size_t)idx[n * l->out_size + o]] += dy[n * l->out_size + o];
}

/* ------------------------------------------------------------------------------------------
 * Element-wise activations
 * ---------------------------------------------------------------------------------------- */

#define GELU_TANH_K 0.7978845608028654f /* sqrt(2 / pi) */

/*
 * expf and tanhf without calls, so that the compiler vectorises the activation loops (libm's
 * scalar tanhf was most of a small net's training step). Cephes' single-precision
 * algorithms: exp by x = n ln2 + r, a degree-6 polynomial for e^r, 2^n through the exponent
 * bits (error about 1 ulp); tanh by a degree-11 odd polynomial below |x| = 0.625, else
 * 1 - 2 / (e^2|x| + 1). Both stay within 2e-7 relative of libm; the PyTorch reference tests
 * hold them to 1e-4 absolute.
 */
static inline __attribute__((always_inline)) float fast_expf(float x)
{
    x = x > 88.3762626647949f ? 88.3762626647949f : x;
    x = x < -87.3365447505531f ? -87.3365447505531f : x;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick: no branch, no floor (|x / ln2| <= 128) */
    float fl = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - fl * 0.693359375f + fl * 2.12194440e-4f;
    float z = r * r;
    float y = ((((((1.9875691500E-4f * r + 1.3981999507E-3f) * r + 8.3334519073E-3f) * r +
                  4.1665795894E-2f) *
                     r +
                 1.6666665459E-1f) *
                    r +
                5.0000001201E-1f) *
               z) +
              r + 1.0f;
    /* The clamps above let NaN through (comparisons with NaN are false); converting a NaN fl to
     * int is undefined behaviour, so convert 0 instead: y is NaN already and carries it out. */
    int32_t bits = ((int32_t)(fl == fl ? fl : 0.0f) + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

static inline __attribute__((always_inline)) float fast_tanhf(float x)
{
    float ax = fabsf(x);
    float z = x * x;
    float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z +
                    1.33314422036E-1f) *
                       z -
                   3.33332819422E-1f) *
                      z * x +
                  x;
    float big = copysignf(1.0f - 2.0f / (fast_expf(2.0f * ax) + 1.0f), x);
    return ax < 0.625f ? small : big;
}

MODEL_HOT static void act_forward(const struct layer *l, const float *x, float *y, size_t n)
{
    switch (l->type) {
        case LAYER_RELU:
            for (size_t i = 0; i < n; i++)
                y[i] = x[i] > 0.0f ? x[i] : 0.0f;
            break;
        case LAYER_LEAKY_RELU: {
            const float s = l->negative_slope;
            for (size_t i = 0; i < n; i++)
                y[i] = x[i] > 0.0f ? x[i] : s * x[i];
            break;
        }
        case LAYER_SIGMOID:
            for (size_t i = 0; i < n; i++)
                y[i] = 1.0f / (1.0f + fast_expf(-x[i]));
            break;
        case LAYER_TANH:
            for (size_t i = 0; i < n; i++)
                y[i] = fast_tanhf(x[i]);
            break;
        case LAYER_GELU:
            if (l->negative_slope == 0) {
                for (size_t i = 0; i < n; i++)
                    y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
            } else {
                for (size_t i = 0; i < n; i++) {
                    float u = GELU_TANH_K * (x[i] + 0.044715f * x[i] * x[i] * x[i]);
                    y[i] = 0.5f * x[i] * (1.0f + fast_tanhf(u));
                }
            }
            break;
        default:
            break;
    }
}

/* dx = dy * f'(x), using whichever of x (input) or y (output) the derivative needs. dx may
 * alias dy. */
MODEL_HOT static void act_backward(const struct layer *l, const float *x, const float *y,
                                   const float *dy, float *dx, size_t n)
{
    switch (l->type) {
        case LAYER_RELU:
            for (size_t i = 0; i < n; i++)
                dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
            break;
        case LAYER_LEAKY_RELU: {
            const float s = l->negative_slope;
            for (size_t i = 0; i < n; i++)
                dx[i] = x[i] > 0.0f ? dy[i] : s * dy[i];
            break;
        }
        case LAYER_SIGMOID:
            for (size_t i = 0; i < n; i++)
                dx[i] = dy[i] * y[i] * (1.0f - y[i]);
            break;
        case LAYER_TANH:
            for (size_t i = 0; i < n; i++)
                dx[i] = dy[i] * (1.0f - y[i] * y[i]);
            break;
        case LAYER_GELU:
            if (l->negative_slope == 0) {
                const float inv_sqrt_2pi = 0.3989422804014327f;
                for (size_t i = 0; i < n; i++) {
                    float cdf = 0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2));
                    float pdf = inv_sqrt_2pi * fast_expf(-0.5f * x[i] * x[i]);
                    dx[i] = dy[i] * (cdf + x[i] * pdf);
                }
            } else {
                for (size_t i = 0; i < n; i++) {
                    float x2 = x[i] * x[i];
                    float t = fast_tanhf(GELU_TANH_K * (x[i] + 0.044715f * x2 * x[i]));
                    float du = GELU_TANH_K * (1.0f + 3.0f * 0.044715f * x2);
                    dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * x[i] * (1.0f - t * t) * du);
                }
            }
            break;
        default:
            break;
    }
}

/* ------------------------------------------------------------------------------------------
 * Dispatch
 * ---------------------------------------------------------------------------------------- */

void layer_forward(const struct layer *l, const float *params, const float *wt, const float *in,
                   float *out, size_t B, struct model_workspace *ws, size_t li, bool training,
                   struct rng *rng)
{
    size_t n = B * l->out_size;
    switch (l->type) {
        case LAYER_LINEAR:
            linear_forward(l, params, wt, in, out, B, (ws->passes & 1) != 0);
            break;
        case LAYER_CONV2D:
            conv2d_forward(l, params, in, out, B, ws);
            break;
        case LAYER_MAXPOOL2D:
            maxpool_forward(l, in, out, B, ws->pool_idx + ws->pool_off[li]);
            break;
        case LAYER_FLATTEN:
            break; /* in place: (C, H, W) and (C*H*W) are the same bytes */
        case LAYER_DROPOUT:
            /* out aliases in unless a Sigmoid/Tanh output lies beneath (config.c). */
            if (training && l->p > 0) {
                /* mask holds 0 or 1/(1-p), as torch scales at train time. */
                float *mask = ws->drop_mask + ws->drop_off[li];
                const float keep = 1.0f / (1.0f - l->p);
                for (size_t i = 0; i < n; i++) {
                    mask[i] = rng_uniform(rng) >= (double)l->p ? keep : 0.0f;
                    out[i] = in[i] * mask[i];
                }
            } else if (out != in) {
                memcpy(out, in, n * sizeof *out);
            }
            break;
        case LAYER_RELU:
            if (l->in_place)
                break; /* the producer already applied max(0, .) */
            act_forward(l, in, out, n);
            break;
        default:
            act_forward(l, in, out, n);
            break;
    }
}

void layer_backward(const struct layer *l, const float *params, const float *in, const float *out,
                    const float *dout, float *din, float *grads, bool grads_zero, size_t B,
                    struct model_workspace *ws, size_t li)
{
    size_t n = B * l->out_size;
    switch (l->type) {
        case LAYER_LINEAR:
            linear_backward(l, params, in, dout, din, grads, grads_zero, B);
            break;
        case LAYER_CONV2D:
            conv2d_backward(l, params, in, dout, din, grads, B, ws);
            break;
        case LAYER_MAXPOOL2D:
            if (din != NULL)
                maxpool_backward(l, dout, din, B, ws->pool_idx + ws->pool_off[li]);
            break;
        case LAYER_FLATTEN:
            if (din != NULL && din != dout)
                memcpy(din, dout, n * sizeof *din);
            break;
        case LAYER_DROPOUT:
            /* Backward only follows a training forward, which drew the mask. */
            if (din != NULL) {
                const float *mask = ws->drop_mask + ws->drop_off[li];
                if (l->p > 0 && ws->training)
                    for (size_t i = 0; i < n; i++)
                        din[i] = dout[i] * mask[i];
                else if (din != dout)
                    memcpy(din, dout, n * sizeof *din);
            }
            break;
        default:
            if (din != NULL)
                act_backward(l, in, out, dout, din, n);
            break;
    }
}
