/*
 * model/internal.h - structures shared by the files of the model library. Not installed, not
 * included outside model/ (tests may include it to reach internals).
 */
#ifndef INFERA_MODEL_INTERNAL_H
#define INFERA_MODEL_INTERNAL_H

#include <jansson.h>

#include "model.h"

/*
 * Element-wise hot loops (activations, bias, optimizers) are compiled twice on x86-64, for AVX2
 * and for the baseline, and the loader picks one at start (GCC's target_clones, an ifunc):
 * one binary runs everywhere and uses 8-wide vectors where it can. The C standard mode keeps
 * floating-point contraction off, so both clones compute bit-identical results.
 */
/* Not under sanitizers: an ifunc resolver runs before their runtimes start (ThreadSanitizer
 * crashes in it at load). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                             \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define MODEL_HOT __attribute__((target_clones("avx2", "default")))
#else
#define MODEL_HOT
#endif

/* ------------------------------------------------------------------------------------------
 * Layers
 * ---------------------------------------------------------------------------------------- */

enum layer_type {
    LAYER_LINEAR,
    LAYER_RELU,
    LAYER_LEAKY_RELU,
    LAYER_SIGMOID,
    LAYER_TANH,
    LAYER_GELU,
    LAYER_DROPOUT,
    LAYER_FLATTEN,
    LAYER_CONV2D,
    LAYER_MAXPOOL2D,
};

/* A per-sample activation shape: rank 1 (n) or rank 3 (c, h, w). */
struct act_shape {
    int rank;
    int c, h, w; /* rank 1: c = n, h = w = 1 */
};

struct layer {
    enum layer_type type;
    struct act_shape in, out;
    size_t in_size, out_size; /* elements per sample */

    /* Parameters: offsets into model.params (floats). n == 0 when absent. */
    size_t w_off, w_n, b_off, b_n;
    size_t wt_off; /* Linear: offset of W^T (I, O) in model.wt */
    int w_rank;
    int64_t w_shape[4]; /* as torch's state_dict: Linear (out, in), Conv2d (oc, ic, kh, kw) */

    /* Linear */
    int in_features, out_features;
    /* Conv2d and MaxPool2d */
    int in_channels, out_channels;
    int kh, kw, sh, sw, ph, pw;
    /* LeakyReLU */
    float negative_slope;
    /* Dropout */
    float p;

    /* Fusion and aliasing, decided once at load:
     *  fuse_relu   this Linear/Conv2d applies the following ReLU in its own output loop
     *  in_place    forward writes its output over its input (fused ReLU, Flatten, Dropout),
     *              so the workspace gives it no buffer of its own */
    bool fuse_relu;
    bool in_place;
};

const char *layer_type_name(enum layer_type t);

struct model {
    struct model_info info;
    json_t *config; /* the model.json document as loaded (owned) */

    /* preprocess, expanded to one (scale, shift) pair per raw feature: x' = x * a + b */
    bool has_preprocess;
    float *pre_a; /* (R) */
    float *pre_b; /* (R) */

    size_t n_layers;
    struct layer *layers;

    size_t n_params;
    float *params; /* (n_params) all weights in one allocation, state_dict order */

    /* Inference copy of every Linear weight, transposed to (I, O): OpenBLAS multiplies
     * X (B, I) by it as NoTrans/NoTrans two to three times faster for small B than by W (O, I)
     * as NoTrans/Trans, which repacks W on every call. Valid while wt_fresh; a trainer marks it
     * stale on every step and rebuilds it after each epoch. */
    float *wt;
    size_t n_wt;
    bool wt_fresh;
};

/* ------------------------------------------------------------------------------------------
 * model.json (config.c)
 * ---------------------------------------------------------------------------------------- */

/*
 * Parses and validates a model.json document into m (which must be zeroed): info, layers with
 * shapes and parameter offsets, preprocess. Takes a new reference to doc on success.
 */
int config_parse(struct model *m, json_t *doc, struct err *e);

/* Parses a "training" object into t (defaults filled for the task). */
int config_parse_training(const json_t *obj, enum model_task task, struct model_training *t,
                          struct err *e);

/* Returns a new JSON object describing t (for model.json "training" and checkpoints). */
json_t *config_training_to_json(const struct model_training *t);

/* ------------------------------------------------------------------------------------------
 * safetensors (safetensors.c)
 * ---------------------------------------------------------------------------------------- */

#define ST_MAX_RANK    8
#define ST_MAX_TENSORS 100000
#define ST_MAX_HEADER  ((size_t)100 << 20) /* the reference implementation's limit */

enum st_dtype { ST_F32, ST_F16, ST_BF16, ST_F64 };

struct st_tensor {
    char *name; /* owned by the st_file */
    enum st_dtype dtype;
    int rank;
    int64_t shape[ST_MAX_RANK];
    size_t numel;
    const unsigned char *data; /* borrowed from the parsed buffer */
    size_t nbytes;
};

struct st_file {
    size_t n;
    struct st_tensor *tensors; /* sorted by name */
    json_t *metadata;          /* "__metadata__" object (string -> string), or NULL; owned */
};

/*
 * Parses a safetensors buffer: u64 LE header length, JSON header, data. Checks everything a
 * hostile file could get wrong (header beyond the file, offsets out of range, overlapping or
 * leaving gaps, sizes that disagree with shape and dtype, unknown dtypes, duplicate names)
 * before trusting it. Tensor data pointers borrow buf, which must outlive f.
 * Caller calls st_file_deinit(f) on success.
 */
int st_parse(const void *buf, size_t len, struct st_file *f, struct err *e);
void st_file_deinit(struct st_file *f);

/* Returns the tensor called name, or NULL. */
const struct st_tensor *st_find(const struct st_file *f, const char *name);

/* Converts t's data (any supported dtype, little-endian) to numel floats in out. */
void st_to_f32(const struct st_tensor *t, float *out);

/* One tensor to write: F32 data (numel = product of shape), borrowed. */
struct st_out {
    const char *name;
    int rank;
    const int64_t *shape;
    const float *data;
};

/*
 * Serializes n tensors (data written in the order given; header keys sorted by name) and optional
 * string metadata (a JSON object of strings, borrowed, may be NULL) into a new buffer the caller
 * frees. The header is padded with spaces to a multiple of 8 bytes.
 */
int st_serialize(const struct st_out *ts, size_t n, const json_t *metadata, char **data,
                 size_t *len, struct err *e);

/* ------------------------------------------------------------------------------------------
 * Parameters: names, init, load (params.c)
 * ---------------------------------------------------------------------------------------- */

/* Fills m->params with PyTorch's default init drawn from seed. */
void params_default_init(struct model *m, uint64_t seed);

/*
 * Serializes m's weights under their state_dict names, followed by n_extra more tensors
 * (borrowed) and optional string metadata, as safetensors; caller frees *data.
 */
int params_serialize(const struct model *m, const struct st_out *extra, size_t n_extra,
                     const json_t *metadata, char **data, size_t *len, struct err *e);

/* Rebuilds m->wt from m->params and marks it fresh. */
void params_transpose(struct model *m);

/* Copies every "<i>.weight"/"<i>.bias" tensor of f into m->params; errors name the tensor.
 * With m->params NULL it only checks that f holds exactly the tensors the layers need. */
int params_from_safetensors(struct model *m, const struct st_file *f, struct err *e);

/* ------------------------------------------------------------------------------------------
 * Random numbers: xoshiro256** seeded by splitmix64. Deterministic across platforms.
 * ---------------------------------------------------------------------------------------- */

struct rng {
    uint64_t s[4];
};

void rng_seed(struct rng *r, uint64_t seed);
uint64_t rng_next(struct rng *r);
/* Uniform in [0, 1). */
double rng_uniform(struct rng *r);
/* Uniform integer in [0, n). */
uint64_t rng_below(struct rng *r, uint64_t n);
/* A seed for stream `stream` derived from seed (e.g. one per epoch). */
uint64_t rng_derive(uint64_t seed, uint64_t stream);

/* ------------------------------------------------------------------------------------------
 * Forward / backward (forward.c, layers.c)
 * ---------------------------------------------------------------------------------------- */

struct model_workspace {
    const struct model *model;
    size_t max_batch;
    float **act;    /* n_layers + 1 pointers; act[0] is the input (borrowed during a pass) */
    float *act_mem; /* owned storage behind act[1..] */
    float *grad_a;  /* two ping-pong buffers for activation gradients (max_act * max_batch) */
    float *grad_b;
    float *col; /* im2col scratch (per sample) */
    float *dcol;
    int32_t *pool_idx; /* argmax indices per MaxPool2d layer output, one block for all */
    size_t *pool_off;  /* n_layers offsets into pool_idx */
    float *drop_mask;  /* dropout masks (training), one block */
    size_t *drop_off;
    size_t max_act; /* largest per-sample activation, including the input */
    float *logits;  /* (max_batch, O) scratch for predict/attribute */
    float *feat;    /* (max_batch, F) scratch for attributions */
    float *in_copy; /* (max_batch, F) private input copy when layer 0 works in place */
    bool training;  /* whether the last forward_pass drew dropout masks */
    /* Forward passes so far (wraps). A single-row dense Linear visits its weight rows forwards
     * on even passes and backwards on odd ones (layers.c): a pass then starts on the rows the
     * previous one read last, which are still in L2. Each output is computed the same way in
     * either order, so results do not depend on it. */
    unsigned passes;
};

/*
 * Forward over B samples of x (B, F). training enables dropout (masks drawn from rng).
 * Leaves every activation in ws->act; returns a pointer to the output (B, O) inside ws.
 */
const float *forward_pass(const struct model *m, struct model_workspace *ws, const float *x,
                          size_t B, bool training, struct rng *rng);

/*
 * layer_done is called by backward_pass right after layer_backward of a layer: its parameter
 * gradients are final and the pass reads none of its parameters again (its dx, the last use
 * of its weights, is done). A trainer applies the optimizer to that layer there, while the
 * gradient it just wrote is still in cache and before the weights of the layer below are
 * needed.
 *
 * grads_zero promises that grads holds zeros on entry to the pass (layer_done sets each
 * gradient back to 0 as it consumes it): a layer may then add its products into grads, which
 * spares OpenBLAS the separate pass that zeroes C for beta = 0 (5% of a step of a
 * 784-512-512-10 MLP). 0 + x is x, so the gradients are the same bits either way.
 */
struct backward_hook {
    void (*layer_done)(void *user, const struct layer *l);
    void *user;
    bool grads_zero;
};

/*
 * Backward from dout (B, O) through every layer, after forward_pass on the same ws.
 * grads (n_params, same layout as params) receives dL/dparams (overwritten, not accumulated)
 * unless NULL; dx (B, F) receives dL/dx unless NULL. dout is not modified. hook, if not NULL
 * (and grads not NULL), is called after each layer from the last to the first that has
 * parameters; it may change that layer's parameters in m->params (m is const to this
 * function, which only reads it).
 */
void backward_pass(const struct model *m, struct model_workspace *ws, const float *dout, size_t B,
                   float *grads, float *dx, const struct backward_hook *hook);

/* Layer kernels (layers.c). in (B, in_size) -> out (B, out_size). wt is m->wt when fresh, else
 * NULL. Reads ws->passes (see above), does not change it. */
void layer_forward(const struct layer *l, const float *params, const float *wt, const float *in,
                   float *out, size_t B, struct model_workspace *ws, size_t li, bool training,
                   struct rng *rng);
/* dout (B, out_size) -> din (B, in_size) unless din is NULL; grads as backward_pass.
 * grads_zero: this layer's gradients in grads are 0 on entry (see struct backward_hook). */
void layer_backward(const struct layer *l, const float *params, const float *in, const float *out,
                    const float *dout, float *din, float *grads, bool grads_zero, size_t B,
                    struct model_workspace *ws, size_t li);

/* ------------------------------------------------------------------------------------------
 * Losses (loss.c): mean-reduced as torch; dlogits may be NULL.
 * ---------------------------------------------------------------------------------------- */

/* logits (B, C), labels (B) -> mean cross-entropy; dlogits (B, C) = (softmax - onehot) / B. */
double loss_cross_entropy(const float *logits, const int32_t *labels, size_t B, size_t C,
                          float *dlogits);
/* out (B, D), target (B, D) -> mean squared error; dout = 2 (out - target) / (B D). */
double loss_mse(const float *out, const float *target, size_t B, size_t D, float *dout);

#endif /* INFERA_MODEL_INTERNAL_H */
