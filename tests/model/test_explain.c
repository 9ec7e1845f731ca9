/*
 * tests/model/test_explain.c - attributions: saliency and gradient x input against finite
 * differences of the target logit with respect to the raw input (so the chain rule through
 * preprocess is checked), integrated gradients' completeness (attributions sum to
 * f(x) - f(baseline)), target selection, and the mapping of text features back to tokens.
 *
 * Tolerances: finite differences of a float32 network with h = 1e-2 on a smooth (Tanh) model
 * agree with the analytic gradient to about 1e-3 relative; integrated gradients with 256
 * midpoint steps on a smooth model are within 1e-3 of the exact path integral.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "tests/test.h"

static const char mlp_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [5],"
    "  \"preprocess\": {\"scale\": 0.5, \"mean\": [0.1, -0.2, 0.3, 0, 1], \"std\": 2}},"
    " \"labels\": [\"a\", \"b\", \"c\"],"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 5, \"out_features\": 8},"
    "  {\"type\": \"Tanh\"}, {\"type\": \"Linear\", \"in_features\": 8, \"out_features\": 3}],"
    " \"training\": {\"seed\": 3}}";

static const char text_json[] =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"text\", \"datatype\": \"BYTES\", \"shape\": [1],"
    "  \"featurizer\": {\"type\": \"hashing\", \"dims\": 64, \"ngrams\": 2}},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 64, \"out_features\": 4},"
    "  {\"type\": \"Tanh\"}, {\"type\": \"Linear\", \"in_features\": 4, \"out_features\": 2}]}";

static struct model *load(const char *json)
{
    struct err e = {0};
    struct model *m = model_load_buffers(json, strlen(json), NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    return m;
}

/* The target's logit for one raw input. */
static double logit(const struct model *m, struct model_workspace *ws, const float *raw, int target)
{
    float x[5], out[3];
    model_featurize_tensor(m, raw, 1, x, NULL);
    model_forward(m, ws, x, 1, out, NULL);
    return out[target];
}

static void test_gradients_match_finite_differences(void)
{
    struct err e = {0};
    struct model *m = load(mlp_json);
    struct model_workspace *ws = model_workspace_new(m, 64, &e);
    const float raw[5] = {0.7f, -1.3f, 2.0f, 0.25f, -0.6f};
    for (int target = 0; target < 3; target++) {
        struct model_attr_opts o = {MODEL_ATTR_GRADIENT_X_INPUT, target, 0, NULL};
        float gxi[5], sal[5];
        int used = -1;
        CHECK(model_attribute(m, ws, raw, &o, gxi, &used, &e) == INF_OK);
        CHECK(used == target);
        o.method = MODEL_ATTR_SALIENCY;
        CHECK(model_attribute(m, ws, raw, &o, sal, &used, &e) == INF_OK);
        for (int i = 0; i < 5; i++) {
            float p[5], q[5];
            memcpy(p, raw, sizeof p);
            memcpy(q, raw, sizeof q);
            const float h = 1e-2f;
            p[i] += h;
            q[i] -= h;
            double num = (logit(m, ws, p, target) - logit(m, ws, q, target)) / (2.0 * h);
            CHECK_NEAR(sal[i], fabs(num), 1e-3 * fmax(1.0, fabs(num)));
            CHECK_NEAR(gxi[i], num * raw[i], 1e-3 * fmax(1.0, fabs(num * raw[i])));
        }
    }
    model_workspace_free(ws);
    model_free(m);
}

static void test_integrated_gradients_completeness(void)
{
    struct err e = {0};
    struct model *m = load(mlp_json);
    /* A workspace smaller than the step count makes the engine chunk the path. */
    struct model_workspace *ws = model_workspace_new(m, 48, &e);
    const float raw[5] = {1.5f, -0.5f, 0.25f, 2.0f, -1.0f};
    const float base[5] = {0.1f, 0.2f, -0.3f, 0.0f, 0.5f};
    struct model_attr_opts o = {MODEL_ATTR_INTEGRATED_GRADIENTS, -1, 256, base};
    float attr[5];
    int target = -1;
    CHECK(model_attribute(m, ws, raw, &o, attr, &target, &e) == INF_OK);
    /* Default target: the predicted class. */
    double best = -1e30;
    int argmax = 0;
    for (int t = 0; t < 3; t++)
        if (logit(m, ws, raw, t) > best) {
            best = logit(m, ws, raw, t);
            argmax = t;
        }
    CHECK(target == argmax);
    double sum = 0;
    for (int i = 0; i < 5; i++)
        sum += attr[i];
    double delta = logit(m, ws, raw, target) - logit(m, ws, base, target);
    CHECK_NEAR(sum, delta, 1e-3 * fmax(1.0, fabs(delta)));
    CHECK(fabs(delta) > 1e-3); /* the check above must not pass trivially */

    /* Without a baseline, the path starts at zeros. */
    o.baseline = NULL;
    CHECK(model_attribute(m, ws, raw, &o, attr, &target, &e) == INF_OK);
    const float zeros[5] = {0};
    sum = 0;
    for (int i = 0; i < 5; i++)
        sum += attr[i];
    delta = logit(m, ws, raw, target) - logit(m, ws, zeros, target);
    CHECK_NEAR(sum, delta, 1e-3 * fmax(1.0, fabs(delta)));

    /* Bad targets and step counts are errors, not crashes. */
    o.target = 3;
    err_clear(&e);
    CHECK(model_attribute(m, ws, raw, &o, attr, &target, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "target 3");
    o.target = 0;
    o.steps = 100000;
    err_clear(&e);
    CHECK(model_attribute(m, ws, raw, &o, attr, &target, &e) == INF_ELIMIT);
    CHECK(model_attr_method_parse("integrated_gradients") == MODEL_ATTR_INTEGRATED_GRADIENTS);
    CHECK(model_attr_method_parse("shap") == -1);
    model_workspace_free(ws);
    model_free(m);
}

static void test_text_tokens(void)
{
    struct err e = {0};
    struct model *m = load(text_json);
    struct model_workspace *ws = model_workspace_new(m, 16, &e);
    const char text[] = "Good FOOD, good food; bad service!";
    struct model_attr_opts o = {MODEL_ATTR_GRADIENT_X_INPUT, 1, 0, NULL};
    struct model_token_score *toks = NULL;
    size_t n = 0;
    int target = -1;
    CHECK(model_attribute_text(m, ws, text, strlen(text), &o, &toks, &n, &target, &e) == INF_OK);
    CHECK(target == 1);
    const char *want[] = {"good", "food", "good", "food", "bad", "service"};
    CHECK(n == 6);
    for (size_t i = 0; i < n && i < 6; i++)
        CHECK_MSG(strcmp(toks[i].token, want[i]) == 0, "token %zu is %s", i, toks[i].token);
    /* Gradient x input over the hashed features sums to the same total as the tokens: every
     * present feature's attribution is handed out in full to the n-grams in its bucket. */
    float x[64], feat_attr_sum = 0;
    model_featurize_text(m, text, strlen(text), x, NULL);
    struct model_attr_opts ig = {MODEL_ATTR_INTEGRATED_GRADIENTS, 1, 128, NULL};
    struct model_token_score *t2 = NULL;
    size_t n2 = 0;
    CHECK(model_attribute_text(m, ws, text, strlen(text), &ig, &t2, &n2, &target, &e) == INF_OK);
    double tok_sum = 0;
    for (size_t i = 0; i < n2; i++)
        tok_sum += t2[i].score;
    float out[2], zeros[64] = {0}, out0[2];
    model_forward(m, ws, x, 1, out, NULL);
    model_forward(m, ws, zeros, 1, out0, NULL);
    feat_attr_sum = out[1] - out0[1];
    CHECK_NEAR(tok_sum, feat_attr_sum, 1e-3);
    CHECK(fabs(feat_attr_sum) > 1e-4); /* the sum check must not pass trivially */
    model_token_scores_free(toks, n);
    model_token_scores_free(t2, n2);

    /* Empty text: no tokens, no crash. */
    CHECK(model_attribute_text(m, ws, "", 0, &o, &toks, &n, &target, &e) == INF_OK);
    CHECK(n == 0);
    model_token_scores_free(toks, n);
    /* A text model is not explained as a tensor, and the other way round. */
    float attr[1];
    err_clear(&e);
    CHECK(model_attribute(m, ws, attr, &o, attr, &target, &e) == INF_EINVAL);
    model_workspace_free(ws);
    model_free(m);
}

int main(void)
{
    RUN(test_gradients_match_finite_differences);
    RUN(test_integrated_gradients_completeness);
    RUN(test_text_tokens);
    return test_finish();
}
