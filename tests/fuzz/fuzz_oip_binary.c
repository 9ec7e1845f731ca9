/*
 * tests/fuzz/fuzz_oip_binary.c - Triton's binary tensor extension (oip_request_parse_binary):
 * a JSON header followed by raw little-endian elements or length-prefixed BYTES.
 *
 * Input: 2 bytes little-endian J (the Inference-Header-Content-Length), then the body. J may
 * exceed the body (the parser must refuse that) and J == body length is the plain JSON form.
 * Each input is parsed for the three models of fuzz.h.
 *
 * Properties on success: as fuzz_oip_request (batch in range, finite raw values and features,
 * texts NUL-terminated at their length), and the response encodes.
 */
#include <math.h>

#include "server/oip.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    if (size < 2)
        return 0;
    size_t json_len = (size_t)data[0] | (size_t)data[1] << 8;
    const char *body = (const char *)data + 2;
    size_t len = size - 2;
    struct oip_limits lim = oip_limits_default();
    lim.max_batch = 64;
    lim.max_elements = 4096;
    lim.max_text = 4096;
    for (int k = 0; k < FUZZ_MODELS; k++) {
        const struct model *m = fuzz_model((enum fuzz_model_kind)k);
        const struct model_info *info = model_get_info(m);
        struct oip_request req;
        struct err e = {0};
        int rc = oip_request_parse_binary(m, body, len, json_len, &lim, &req, &e);
        FUZZ_DEBUG("model %d: %d %s", k, rc, e.msg);
        if (rc == INF_OK) {
            FUZZ_CHECK(json_len <= len, "accepted a header length beyond the body");
            FUZZ_CHECK(req.batch >= 1 && req.batch <= lim.max_batch, "batch %zu", req.batch);
            if (info->input_kind == MODEL_INPUT_TENSOR) {
                for (size_t i = 0; i < req.batch * info->raw_size; i++)
                    FUZZ_CHECK(isfinite(req.raw[i]), "raw[%zu] = %g", i, (double)req.raw[i]);
            } else {
                for (size_t i = 0; i < req.batch; i++)
                    FUZZ_CHECK(req.texts[i][req.text_lens[i]] == '\0' &&
                                   req.text_lens[i] <= lim.max_text,
                               "texts[%zu]", i);
            }
            for (size_t i = 0; i < req.batch * info->in_size; i++)
                FUZZ_CHECK(isfinite(req.x[i]), "x[%zu] = %g", i, (double)req.x[i]);
            size_t n = req.batch * info->out_size;
            float *out = calloc(n, sizeof *out);
            FUZZ_CHECK(out != NULL, "out of memory");
            char *buf = NULL;
            size_t blen = 0, bjson = 0;
            FUZZ_CHECK(oip_response_encode(m, "fuzz", "1", &req, out, &buf, &blen, &bjson) ==
                           INF_OK,
                       "oip_response_encode failed");
            FUZZ_CHECK(bjson <= blen, "json_len %zu > len %zu", bjson, blen);
            free(buf);
            free(out);
        } else {
            FUZZ_CHECK(rc == INF_EINVAL || rc == INF_ELIMIT || rc == INF_ENOMEM, "status %d (%s)",
                       rc, e.msg);
            FUZZ_CHECK(e.status == rc && e.msg[0] != '\0', "status %d without a message", rc);
        }
        oip_request_deinit(&req);
    }
    return 0;
}
