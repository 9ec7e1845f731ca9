/*
 * tests/fuzz/fuzz_dataset.c - training JSONL validation (dataset_parse_jsonl), for the three
 * models of fuzz.h; the text model's inputs go through the PII masker as with mask_pii.
 *
 * Input: the JSONL file.
 *
 * Every file is parsed twice, by dataset_parse_jsonl (its fast path converts tensor lines'
 * input arrays without jansson) and dataset_parse_jsonl_reference (jansson only): the same
 * status, message and bits.
 *
 * Properties on success: one sample per non-blank line, the data set fits the model
 * (model_dataset_check), every feature and target finite. On failure: a status and a
 * message naming the line ("line N: ..." or the file-level "the file holds no samples").
 */
#include <math.h>

#include "auth/mask.h"
#include "server/dataset.h"
#include "tests/fuzz/fuzz.h"

static const uint8_t MASK_KEY[MASK_KEY_BYTES] = "fuzz-mask-key-0123456789abcdefgh";

static char *mask_fn(const char *text, size_t len, size_t *out_len, void *user)
{
    (void)user;
    return mask_text_len(MASK_KEY, text, len, NULL, out_len);
}

static size_t count_samples(const uint8_t *data, size_t size)
{
    size_t n = 0;
    bool blank = true;
    for (size_t i = 0; i <= size; i++) {
        if (i == size || data[i] == '\n') {
            n += !blank;
            blank = true;
        } else if (data[i] != ' ' && data[i] != '\t' && data[i] != '\r') {
            blank = false;
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    size_t samples = count_samples(data, size);
    for (int k = 0; k < FUZZ_MODELS; k++) {
        const struct model *m = fuzz_model((enum fuzz_model_kind)k);
        const struct model_info *info = model_get_info(m);
        struct model_dataset ds = {0};
        struct err e = {0};
        int rc = dataset_parse_jsonl(m, (const char *)data, size,
                                     k == FUZZ_MODEL_TEXT ? mask_fn : NULL, NULL, &ds, &e);
        FUZZ_DEBUG("model %d: %d %s", k, rc, e.msg);
        /* The fast path (tensor lines without jansson) agrees with jansson on everything. */
        struct model_dataset rs = {0};
        struct err re = {0};
        int rr = dataset_parse_jsonl_reference(
            m, (const char *)data, size, k == FUZZ_MODEL_TEXT ? mask_fn : NULL, NULL, &rs, &re);
        if (rc != INF_ENOMEM && rr != INF_ENOMEM) {
            FUZZ_CHECK(rr == rc && strcmp(re.msg, e.msg) == 0,
                       "fast path %d \"%s\", jansson %d \"%s\"", rc, e.msg, rr, re.msg);
            if (rc == INF_OK) {
                FUZZ_CHECK(rs.n == ds.n && memcmp(rs.x, ds.x, ds.n * ds.x_dim * sizeof *ds.x) == 0,
                           "the fast path's features differ from jansson's");
                FUZZ_CHECK(
                    (ds.labels == NULL ||
                     memcmp(rs.labels, ds.labels, ds.n * sizeof *ds.labels) == 0) &&
                        (ds.targets == NULL ||
                         memcmp(rs.targets, ds.targets, ds.n * ds.y_dim * sizeof *ds.targets) == 0),
                    "the fast path's labels or targets differ from jansson's");
            }
        }
        if (rr == INF_OK)
            model_dataset_deinit(&rs);
        if (rc != INF_OK) {
            FUZZ_CHECK(rc == INF_EINVAL || rc == INF_ELIMIT || rc == INF_ENOMEM, "status %d (%s)",
                       rc, e.msg);
            FUZZ_CHECK(e.status == rc && e.msg[0] != '\0', "status %d without a message", rc);
            FUZZ_CHECK(strncmp(e.msg, "line ", 5) == 0 || samples == 0, "message: %s", e.msg);
            FUZZ_CHECK(ds.x == NULL && ds.labels == NULL && ds.targets == NULL,
                       "failure left data in ds");
            continue;
        }
        FUZZ_CHECK(ds.n == samples, "%zu samples from %zu non-blank lines", ds.n, samples);
        struct err ce = {0};
        FUZZ_CHECK(model_dataset_check(m, &ds, &ce) == INF_OK, "dataset does not fit: %s", ce.msg);
        for (size_t i = 0; i < ds.n * ds.x_dim; i++)
            FUZZ_CHECK(isfinite(ds.x[i]), "x[%zu] = %g", i, (double)ds.x[i]);
        if (info->task == MODEL_TASK_REGRESSION)
            for (size_t i = 0; i < ds.n * ds.y_dim; i++)
                FUZZ_CHECK(isfinite(ds.targets[i]), "targets[%zu] = %g", i, (double)ds.targets[i]);
        model_dataset_deinit(&ds);
    }
    return 0;
}
