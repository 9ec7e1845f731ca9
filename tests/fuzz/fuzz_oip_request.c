/*
 * tests/fuzz/fuzz_oip_request.c - an OIP v2 inference request body -> tensors
 * (oip_request_parse: the fast FP32 data path with jansson for the rest, and the full jansson
 * path for other datatypes, BYTES and whatever the fast path hands back), then the response.
 *
 * Input: the request body, as a client sends it. Each input is parsed for three models (a
 * rank-3 FP32 classifier, an INT8 regressor, a text classifier; see fuzz.h), so one seed
 * reaches the checks of every input kind.
 *
 * Properties checked on success: a batch of 1..max_batch, every raw element and feature
 * finite (oip.h: non-finite numbers are rejected), texts of the recorded length; and the
 * response for that request encodes, with a JSON part no longer than the whole.
 */
#include <math.h>

#include "server/oip.h"
#include "tests/fuzz/fuzz.h"

static void check_request(const struct model *m, const struct oip_request *req,
                          const struct oip_limits *lim)
{
    const struct model_info *info = model_get_info(m);
    FUZZ_CHECK(req->batch >= 1 && req->batch <= lim->max_batch, "batch %zu", req->batch);
    FUZZ_CHECK(req->x != NULL, "no features");
    if (info->input_kind == MODEL_INPUT_TENSOR) {
        FUZZ_CHECK(req->raw != NULL && req->texts == NULL, "tensor request without raw data");
        for (size_t i = 0; i < req->batch * info->raw_size; i++)
            FUZZ_CHECK(isfinite(req->raw[i]), "raw[%zu] = %g", i, (double)req->raw[i]);
    } else {
        FUZZ_CHECK(req->texts != NULL && req->text_lens != NULL, "text request without texts");
        for (size_t i = 0; i < req->batch; i++) {
            FUZZ_CHECK(req->texts[i] != NULL, "texts[%zu] missing", i);
            FUZZ_CHECK(req->texts[i][req->text_lens[i]] == '\0', "texts[%zu] unterminated", i);
            FUZZ_CHECK(req->text_lens[i] <= lim->max_text, "texts[%zu] too long", i);
        }
    }
    for (size_t i = 0; i < req->batch * info->in_size; i++)
        FUZZ_CHECK(isfinite(req->x[i]), "x[%zu] = %g", i, (double)req->x[i]);
    FUZZ_CHECK(req->top_k >= 0 && (size_t)req->top_k <= info->out_size, "top_k %d", req->top_k);
    FUZZ_CHECK((req->binary_outputs & ~req->outputs) == 0, "binary outputs not requested");
}

/* Encodes a response to req with made-up outputs (uniform probabilities, ramp values). */
static void check_response(const struct model *m, const struct oip_request *req)
{
    const struct model_info *info = model_get_info(m);
    size_t n = req->batch * info->out_size;
    float *out = malloc(n * sizeof *out);
    FUZZ_CHECK(out != NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        out[i] = info->task == MODEL_TASK_CLASSIFICATION ? 1.0f / (float)info->out_size
                                                         : (float)i - 1.5f;
    char *buf = NULL;
    size_t len = 0, json_len = 0;
    int rc = oip_response_encode(m, "fuzz", "1", req, out, &buf, &len, &json_len);
    FUZZ_CHECK(rc == INF_OK, "oip_response_encode: %d", rc);
    FUZZ_CHECK(json_len <= len && buf[len] == '\0', "json_len %zu len %zu", json_len, len);
    FUZZ_CHECK((json_len == len) == (req->binary_outputs == 0), "binary part mismatch");
    json_error_t je;
    json_t *doc = json_loadb(buf, json_len, 0, &je);
    FUZZ_CHECK(doc != NULL, "response JSON does not parse: %s", je.text);
    json_decref(doc);
    free(buf);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    struct oip_limits lim = oip_limits_default();
    lim.max_batch = 64; /* keep one input cheap; the checks are the same */
    lim.max_elements = 4096;
    lim.max_text = 4096;
    for (int k = 0; k < FUZZ_MODELS; k++) {
        const struct model *m = fuzz_model((enum fuzz_model_kind)k);
        struct oip_request req;
        struct err e = {0};
        int rc = oip_request_parse(m, (const char *)data, size, &lim, &req, &e);
        FUZZ_DEBUG("model %d: %d %s", k, rc, e.msg);
        if (rc == INF_OK) {
            FUZZ_CHECK(e.status == 0, "success with an error set: %s", e.msg);
            check_request(m, &req, &lim);
            check_response(m, &req);
        } else {
            FUZZ_CHECK(rc == INF_EINVAL || rc == INF_ELIMIT || rc == INF_ENOMEM, "status %d (%s)",
                       rc, e.msg);
            FUZZ_CHECK(e.status == rc && e.msg[0] != '\0', "status %d without a message", rc);
        }
        oip_request_deinit(&req);
    }
    return 0;
}
