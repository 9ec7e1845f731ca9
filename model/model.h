/*
 * model/model.h - infera's neural network engine: model files, forward/backward, training,
 * attributions. The only public header of the model library (DESIGN.md §4).
 *
 * model/ knows nothing of HTTP, JSON request bodies, API keys or files beyond its own model
 * directories (model.json + weights.safetensors) and checkpoints.
 *
 * Dimension key used in shape comments:
 *   B  batch size            F  features per sample fed to the first layer (model_in_size)
 *   R  raw input elements per sample as a client sends them (model_raw_size; == F for tensors)
 *   O  outputs per sample (classes C for a classifier, D for a regressor)
 *   N  samples in a dataset
 *
 * Thread safety: a loaded struct model is immutable. Any number of threads may call
 * model_forward(), model_predict(), model_featurize_*() and model_attribute*() on one model at
 * once, each with its own struct model_workspace. A struct model_trainer mutates the model it
 * was given and must be its only user while it runs (train a model_clone() of a served one).
 * The engine calls OpenBLAS; main() sets OpenBLAS to one thread (one source of parallelism).
 */
#ifndef INFERA_MODEL_H
#define INFERA_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* ------------------------------------------------------------------------------------------
 * Limits: hostile model files are checked against these before anything is allocated.
 * ---------------------------------------------------------------------------------------- */

#define MODEL_MAX_LAYERS        256
#define MODEL_MAX_DIM           (1u << 24)        /* any single dimension */
#define MODEL_MAX_PARAMS        ((size_t)1 << 30) /* 4 GiB of F32 parameters */
#define MODEL_MAX_ACTIVATION    ((size_t)1 << 24) /* elements per sample per layer */
#define MODEL_MAX_LABELS        100000
#define MODEL_MAX_CONFIG_BYTES  ((size_t)16 << 20)
#define MODEL_MAX_WEIGHTS_BYTES (((size_t)4 << 30) + ((size_t)100 << 20))
#define MODEL_MAX_HASH_DIMS     (1u << 22)

/* ------------------------------------------------------------------------------------------
 * What a model is (parsed model.json, every field resolved to its default)
 * ---------------------------------------------------------------------------------------- */

enum model_task { MODEL_TASK_CLASSIFICATION, MODEL_TASK_REGRESSION };
enum model_input_kind { MODEL_INPUT_TENSOR, MODEL_INPUT_TEXT };
enum model_loss { MODEL_LOSS_CROSS_ENTROPY, MODEL_LOSS_MSE };
enum model_optimizer { MODEL_OPTIM_SGD, MODEL_OPTIM_ADAM, MODEL_OPTIM_ADAMW };

/* model.json "training": the defaults are torch.optim's defaults. */
struct model_training {
    enum model_loss loss;           /* default: cross_entropy for classifiers, mse otherwise */
    enum model_optimizer optimizer; /* default: adam */
    double learning_rate;           /* default: 0.001 */
    size_t batch_size;              /* default: 32 */
    int epochs;                     /* default: 10 */
    bool shuffle;                   /* default: true */
    uint64_t seed;                  /* default: 0; also seeds default init and dropout */
    double momentum;                /* SGD, default 0 */
    double dampening;               /* SGD, default 0 */
    bool nesterov;                  /* SGD, default false */
    double weight_decay;            /* default 0, or 0.01 for adamw (as torch) */
    double beta1, beta2;            /* Adam/AdamW, default 0.9, 0.999 */
    double eps;                     /* Adam/AdamW, default 1e-8 */
    double validation_split;        /* fraction held out for validation, default 0 */
};

/* model.json "serving" (optional): 0 means "use the server's default". */
struct model_serving {
    size_t max_batch_size;
    int64_t max_batch_delay_us;
};

/* The hashing text featurizer (DESIGN §4). */
struct model_hashing {
    uint32_t dims; /* number of buckets = F */
    int ngrams;    /* 1 = unigrams, 2 = unigrams + bigrams, up to 3 */
};

#define MODEL_MAX_RANK 4

/* Read-only description of a loaded model; borrowed from the model, valid until model_free. */
struct model_info {
    enum model_task task;
    enum model_input_kind input_kind;
    char input_name[64];
    char input_datatype[16]; /* "FP32", "UINT8", ... or "BYTES" for text */
    int input_rank;          /* rank of one sample as sent (without the batch dimension) */
    int64_t input_shape[MODEL_MAX_RANK];
    size_t raw_size; /* R: elements per sample as sent (1 for text) */
    size_t in_size;  /* F: features into the first layer */
    size_t out_size; /* O */
    size_t n_labels; /* == O for classifiers, 0 for regressors */
    char **labels;   /* n_labels NUL-terminated strings */
    size_t n_layers;
    size_t n_params;              /* trainable parameters */
    struct model_hashing hashing; /* valid when input_kind == MODEL_INPUT_TEXT */
    struct model_training training;
    struct model_serving serving;
};

struct model;

/* ------------------------------------------------------------------------------------------
 * Loading and saving
 * ---------------------------------------------------------------------------------------- */

/*
 * Loads the model directory dir: dir/model.json and, if present, dir/weights.safetensors.
 * Without a weights file the parameters start from PyTorch's default init (uniform in
 * +-1/sqrt(fan_in)) drawn from training.seed. Both files are parsed as hostile. On error
 * returns NULL and fills e with a message naming the file and the field.
 * Caller frees the result with model_free().
 */
struct model *model_load(const char *dir, struct err *e);

/*
 * Builds a model from model.json text (len bytes) and optional safetensors bytes (weights may
 * be NULL: default init). Same checks and ownership as model_load(); nothing is retained from
 * the buffers.
 */
struct model *model_load_buffers(const char *config, size_t config_len, const void *weights,
                                 size_t weights_len, struct err *e);

/* Frees m. model_free(NULL) is a no-op. */
void model_free(struct model *m);

/* Returns a deep copy of m (new parameters, same config), or NULL on out of memory. */
struct model *model_clone(const struct model *m, struct err *e);

/*
 * Writes m as a servable directory: dir/model.json (the config it was loaded from, with the
 * "training" section replaced by m's current one) and dir/weights.safetensors (F32,
 * state_dict names). dir is created if missing. Each file is written atomically.
 */
int model_save(const struct model *m, const char *dir, struct err *e);

/*
 * Serializes m's weights as safetensors (F32, "<i>.weight"/"<i>.bias", header padded to 8
 * bytes). On success *data is a new buffer the caller frees with free().
 */
int model_weights_serialize(const struct model *m, char **data, size_t *len, struct err *e);

/* Returns the config as compact JSON text; caller frees with free(). NULL on out of memory. */
char *model_config_dump(const struct model *m);

/* Borrowed description of m, valid until model_free(m). */
const struct model_info *model_get_info(const struct model *m);

/* Replaces m's training settings (e.g. command-line overrides). The caller validates them. */
void model_set_training(struct model *m, const struct model_training *t);

/* Borrowed pointer to the flat parameter array (n_params floats) in state_dict order. */
const float *model_params(const struct model *m);

/* ------------------------------------------------------------------------------------------
 * Featurizers: from what a client sends to the first layer's input
 * ---------------------------------------------------------------------------------------- */

/*
 * Applies the model's preprocess (x' = (x * scale - mean) / std) to n samples.
 *   raw (n, R) -> out (n, F). raw and out may be the same buffer.
 * Returns INF_EINVAL if the model takes text.
 */
int model_featurize_tensor(const struct model *m, const float *raw, size_t n, float *out,
                           struct err *e);

/*
 * Hashing featurizer (DESIGN §4) for one text of len bytes -> out (F). Any bytes are accepted
 * (empty text gives all zeros). Returns INF_EINVAL if the model does not take text.
 */
int model_featurize_text(const struct model *m, const char *text, size_t len, float *out,
                         struct err *e);

/*
 * The same featurizer as a free function, for tools and tests: counts unigrams..ngrams into
 * dims buckets of out (dims floats) and L2-normalizes.
 */
void model_hash_text(const char *text, size_t len, uint32_t dims, int ngrams, float *out);

/* FNV-1a 32-bit of len bytes. */
uint32_t model_fnv1a32(const void *data, size_t len);

/* ------------------------------------------------------------------------------------------
 * Forward
 * ---------------------------------------------------------------------------------------- */

struct model_workspace;

/*
 * Scratch for forward/backward of m on at most max_batch samples at once. A workspace belongs
 * to one thread at a time. Caller frees with model_workspace_free(). Returns NULL and fills e
 * if max_batch is 0 or the memory would exceed limits.
 */
struct model_workspace *model_workspace_new(const struct model *m, size_t max_batch, struct err *e);
void model_workspace_free(struct model_workspace *ws);
size_t model_workspace_max_batch(const struct model_workspace *ws);

/*
 * Forward pass in inference mode (dropout is the identity).
 *   x (B, F) features -> out (B, O): logits for a classifier, values for a regressor.
 * B must be 1..model_workspace_max_batch(ws). ws must have been made for m.
 */
int model_forward(const struct model *m, struct model_workspace *ws, const float *x, size_t B,
                  float *out, struct err *e);

/*
 * model_forward() followed, for a classifier, by softmax: out (B, O) holds probabilities.
 */
int model_predict(const struct model *m, struct model_workspace *ws, const float *x, size_t B,
                  float *out, struct err *e);

/* Row-wise numerically stable softmax: logits (B, C) -> probs (B, C); may alias. */
void model_softmax(const float *logits, size_t B, size_t C, float *probs);

/* ------------------------------------------------------------------------------------------
 * Attributions (explanations)
 * ---------------------------------------------------------------------------------------- */

enum model_attr_method {
    MODEL_ATTR_SALIENCY,             /* |d f_t / d x| */
    MODEL_ATTR_GRADIENT_X_INPUT,     /* d f_t / d x * x */
    MODEL_ATTR_INTEGRATED_GRADIENTS, /* (x - x0) * mean_k d f_t / d x at x0 + (k+.5)/S (x-x0) */
};

/* Parses "saliency", "gradient_x_input", "integrated_gradients"; returns -1 if unknown. */
int model_attr_method_parse(const char *name);

struct model_attr_opts {
    enum model_attr_method method;
    int target;            /* output index; -1: the predicted class (regressor: output 0) */
    size_t steps;          /* integrated gradients steps (0: 50), at most 1024 */
    const float *baseline; /* (R) raw-space baseline for IG; NULL: all zeros. Borrowed. */
};

/*
 * Attributions of f_t, the target's logit (classifier) or output (regressor), with respect to
 * one raw tensor input as sent, before preprocess:
 *   raw (R) -> attr (R). *target_out receives the target index used.
 * Integrated gradients uses the midpoint Riemann sum over `steps` points, so the attributions
 * sum to about f_t(raw) - f_t(baseline).
 */
int model_attribute(const struct model *m, struct model_workspace *ws, const float *raw,
                    const struct model_attr_opts *o, float *attr, int *target_out, struct err *e);

/* One token of a text explanation. */
struct model_token_score {
    char *token; /* NUL-terminated, lowercased as the featurizer saw it */
    float score; /* share of the hashed-feature attributions that this token carries */
};

/*
 * Attributions for a text model: the hashed-feature attributions are mapped back to the
 * tokens. Each feature's attribution is split among the n-grams that hashed into it in
 * proportion to their counts, and each n-gram's share is split equally among its tokens.
 * On success *tokens is a new array of *n_tokens entries; free it with
 * model_token_scores_free(). *target_out receives the target index used.
 */
int model_attribute_text(const struct model *m, struct model_workspace *ws, const char *text,
                         size_t len, const struct model_attr_opts *o,
                         struct model_token_score **tokens, size_t *n_tokens, int *target_out,
                         struct err *e);
void model_token_scores_free(struct model_token_score *tokens, size_t n_tokens);

/* ------------------------------------------------------------------------------------------
 * Training
 * ---------------------------------------------------------------------------------------- */

/*
 * A featurized data set: x (N, F) and either labels (N) for a classifier or targets (N, O) for
 * a regressor. Owns its arrays (model_dataset_init / model_dataset_deinit).
 */
struct model_dataset {
    size_t n;        /* N */
    size_t x_dim;    /* F */
    size_t y_dim;    /* O for targets; 0 when labels are used */
    float *x;        /* (N, F) */
    int32_t *labels; /* (N) class indices, or NULL */
    float *targets;  /* (N, O), or NULL */
};

/*
 * Allocates room for n samples of x_dim features and, if y_dim > 0, n*y_dim targets, else n
 * labels. Contents are zeroed. Deinit frees (safe on a zeroed or deinited struct).
 */
int model_dataset_init(struct model_dataset *ds, size_t n, size_t x_dim, size_t y_dim,
                       struct err *e);
void model_dataset_deinit(struct model_dataset *ds);

/*
 * Splits src into train and valid: round(fraction * N) samples, chosen by a permutation drawn
 * from seed, go to valid (kept in their original order), the rest to train (original order).
 * fraction must be in [0, 1). Both outputs are new data sets the caller deinits.
 */
int model_dataset_split(const struct model_dataset *src, double fraction, uint64_t seed,
                        struct model_dataset *train, struct model_dataset *valid, struct err *e);

/* Checks that ds fits m: x_dim == F, labels in range or y_dim == O. */
int model_dataset_check(const struct model *m, const struct model_dataset *ds, struct err *e);

/* What happened in one epoch, passed to the epoch callback. */
struct model_epoch_stats {
    int epoch;         /* 1-based number of the epoch just finished */
    int epochs;        /* total planned */
    uint64_t step;     /* optimizer steps taken since the start of training */
    double train_loss; /* mean loss over the epoch's training samples */
    bool has_valid;
    double valid_loss;     /* on the validation set, inference mode */
    double valid_accuracy; /* classifiers only; NAN for regressors */
    double seconds;        /* wall time of the epoch */
    double samples_per_s;
};

/* Called after each epoch; return nonzero to stop training (the trainer returns
 * INF_ECANCELLED). A typical callback prints progress and saves a checkpoint. */
typedef int (*model_epoch_fn)(const struct model_epoch_stats *s, void *user);

/* Called between batches; return true to cancel within one batch. */
typedef bool (*model_cancel_fn)(void *user);

struct model_trainer;

/*
 * Makes a trainer for m (borrowed and mutated in place: the trainer must be m's only user
 * until model_trainer_free) with the settings cfg (copied), the training set train and an
 * optional validation set valid (both borrowed until model_trainer_free). Optimizer state
 * starts empty, as a fresh torch.optim optimizer.
 */
struct model_trainer *model_trainer_new(struct model *m, const struct model_training *cfg,
                                        const struct model_dataset *train,
                                        const struct model_dataset *valid, struct err *e);
void model_trainer_free(struct model_trainer *t);

/*
 * Runs the remaining epochs (cfg.epochs minus those already done). Batches are taken in file
 * order when shuffle is off (the last partial batch is kept), else from a permutation drawn
 * from (seed, epoch). Returns INF_ECANCELLED if a callback asked to stop; the model then holds
 * the weights after the last completed batch.
 */
int model_trainer_run(struct model_trainer *t, model_epoch_fn on_epoch,
                      model_cancel_fn should_cancel, void *user, struct err *e);

/* Epochs completed so far (restored by model_trainer_checkpoint_load). */
int model_trainer_epochs_done(const struct model_trainer *t);

/*
 * Saves a checkpoint as safetensors: the weights under their state_dict names, the optimizer
 * state, the epoch and step counters and the settings. Resuming from it with
 * model_trainer_checkpoint_load() and model_trainer_run() gives the same weights, bit for bit,
 * as an uninterrupted run. The file is written atomically.
 */
int model_trainer_checkpoint_save(const struct model_trainer *t, const char *path, struct err *e);

/* Serializes the same checkpoint to memory (for callers that encrypt it); caller frees. */
int model_trainer_checkpoint_serialize(const struct model_trainer *t, char **data, size_t *len,
                                       struct err *e);

/* Restores a checkpoint made for the same architecture; fails without changing t otherwise. */
int model_trainer_checkpoint_load(struct model_trainer *t, const char *path, struct err *e);
int model_trainer_checkpoint_restore(struct model_trainer *t, const void *data, size_t len,
                                     struct err *e);

/*
 * Evaluates m on ds in inference mode: mean loss under the model's training loss and, for a
 * classifier, accuracy (NAN for a regressor).
 */
int model_evaluate(const struct model *m, const struct model_dataset *ds, double *loss,
                   double *accuracy, struct err *e);

/* Name helpers for messages and model.json. */
const char *model_optimizer_name(enum model_optimizer o);
int model_optimizer_parse(const char *name); /* -1 if unknown */
const char *model_task_name(enum model_task t);

#endif /* INFERA_MODEL_H */
