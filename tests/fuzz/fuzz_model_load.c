/*
 * tests/fuzz/fuzz_model_load.c - model.json + weights.safetensors as a hostile model directory
 * would hand them over (model_load_buffers).
 *
 * Input: the model.json text, then optionally one NUL byte followed by the safetensors bytes
 * (JSON text cannot hold a raw NUL, so the first NUL is the split). Without a NUL the model
 * gets its default init from training.seed.
 *
 * Properties on success:
 *   - the model round-trips: model_config_dump() + model_weights_serialize() load again, with
 *     the same info (task, sizes, labels) and the same parameters bit for bit;
 *   - small models (at most 64 Ki parameters, 4 Ki raw inputs) run one forward pass on a
 *     featurized all-zero input (an empty text for text models), so shapes that the config
 *     parser accepted are checked by use, under the sanitizers.
 * A failure must come with a status and a message.
 */
#include "tests/fuzz/fuzz.h"

#define FORWARD_MAX_PARAMS ((size_t)1 << 16)
#define FORWARD_MAX_RAW    ((size_t)4096)

static void check_same(const struct model *a, const struct model *b)
{
    const struct model_info *x = model_get_info(a), *y = model_get_info(b);
    FUZZ_CHECK(x->task == y->task && x->input_kind == y->input_kind && x->raw_size == y->raw_size &&
                   x->in_size == y->in_size && x->out_size == y->out_size &&
                   x->n_labels == y->n_labels && x->n_layers == y->n_layers &&
                   x->n_params == y->n_params && x->input_rank == y->input_rank,
               "reloaded model differs in its info");
    FUZZ_CHECK(strcmp(x->input_name, y->input_name) == 0 &&
                   strcmp(x->input_datatype, y->input_datatype) == 0,
               "input name/datatype differ");
    for (size_t i = 0; i < x->n_labels; i++)
        FUZZ_CHECK(strcmp(x->labels[i], y->labels[i]) == 0, "label %zu differs", i);
    FUZZ_CHECK(x->n_params == 0 ||
                   memcmp(model_params(a), model_params(b), x->n_params * sizeof(float)) == 0,
               "parameters differ after a round trip");
}

static void roundtrip(const struct model *m)
{
    char *cfg = model_config_dump(m);
    char *w = NULL;
    size_t wlen = 0;
    struct err e = {0};
    if (cfg == NULL || model_weights_serialize(m, &w, &wlen, &e) != INF_OK) {
        /* Only out of memory may fail here (large models under the allocator's cap). */
        FUZZ_CHECK(cfg == NULL || e.status == INF_ENOMEM, "serialize: %s", e.msg);
        free(cfg);
        return;
    }
    err_clear(&e);
    struct model *again = model_load_buffers(cfg, strlen(cfg), w, wlen, &e);
    FUZZ_CHECK(again != NULL || e.status == INF_ENOMEM, "the dumped model does not load: %s\n%s",
               e.msg, cfg);
    if (again != NULL)
        check_same(m, again);
    model_free(again);
    free(w);
    free(cfg);
}

static void forward(const struct model *m)
{
    const struct model_info *info = model_get_info(m);
    if (info->n_params > FORWARD_MAX_PARAMS || info->raw_size > FORWARD_MAX_RAW ||
        info->in_size > FORWARD_MAX_RAW)
        return;
    struct err e = {0};
    struct model_workspace *ws = model_workspace_new(m, 1, &e);
    float *raw = calloc(info->raw_size, sizeof *raw);
    float *x = calloc(info->in_size, sizeof *x);
    float *out = calloc(info->out_size, sizeof *out);
    if (ws == NULL || raw == NULL || x == NULL || out == NULL)
        goto out; /* out of memory under the allocator cap: nothing to check */
    int rc = info->input_kind == MODEL_INPUT_TEXT ? model_featurize_text(m, "", 0, x, &e)
                                                  : model_featurize_tensor(m, raw, 1, x, &e);
    FUZZ_CHECK(rc == INF_OK, "featurize: %s", e.msg);
    rc = model_predict(m, ws, x, 1, out, &e);
    FUZZ_CHECK(rc == INF_OK, "model_predict: %s", e.msg);
out:
    free(out);
    free(x);
    free(raw);
    model_workspace_free(ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const uint8_t *nul = memchr(data, '\0', size);
    size_t cfg_len = nul != NULL ? (size_t)(nul - data) : size;
    const void *weights = nul != NULL ? nul + 1 : NULL;
    size_t weights_len = nul != NULL ? size - cfg_len - 1 : 0;
    struct err e = {0};
    struct model *m = model_load_buffers((const char *)data, cfg_len, weights, weights_len, &e);
    FUZZ_DEBUG("%s %s", m != NULL ? "loaded" : "refused", e.msg);
    if (m == NULL) {
        FUZZ_CHECK(e.status < 0 && e.msg[0] != '\0', "load failed without a message");
        return 0;
    }
    FUZZ_CHECK(e.status == 0, "success with an error set: %s", e.msg);
    roundtrip(m);
    forward(m);
    model_free(m);
    return 0;
}
