/*
 * tests/model/test_reference.c - the engine against PyTorch.
 *
 * tests/model/gen_reference.py wrote one model directory per case under tests/model/ref/ and
 * listed them in ref/index.json (kind, epochs, tolerance). Every case is loaded with
 * model_load() exactly as the server would load it, then:
 *
 *   forward  io.safetensors x (B, R) raw -> model_featurize_tensor -> model_forward, compared
 *            with torch's y (B, O): once as one batch, then row by row (B = 1) through a
 *            one-sample workspace and through the batch-sized one.
 *   train    train.safetensors x (N, R), labels (N) or targets (N, O) -> model_trainer_run with
 *            the model's own "training" settings; model_params() is compared with torch's
 *            state_dict after training (expected.safetensors, laid out "0.weight", "0.bias",
 *            "2.weight", ... in layer order) and the outputs on x with its y.
 *
 * The tolerance (1e-4 absolute, from index.json) and why it holds are explained at the top of
 * the generator. Each case prints its largest difference so a drift shows before it fails.
 *
 * Runs from the tests directory (meson's workdir) or from $INFERA_TEST_SRC.
 */
#include "tests/test.h"

#include <jansson.h>

#include "common/common.h"
#include "model/model.h"
#include "model/internal.h"

#define REF_MAX_FILE ((size_t)64 << 20)

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static const char *tests_dir(void)
{
    const char *s = getenv("INFERA_TEST_SRC");
    return s != NULL && s[0] != '\0' ? s : ".";
}

/* A parsed safetensors file and the buffer its tensors borrow. */
struct st_buf {
    char *data;
    size_t len;
    struct st_file f;
    bool ok;
};

static bool st_buf_load(struct st_buf *b, const char *dir, const char *file)
{
    char path[4096];
    struct err e = {0};

    memset(b, 0, sizeof(*b));
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    if (fs_read_file(path, REF_MAX_FILE, &b->data, &b->len, &e) != 0) {
        CHECK_MSG(false, "%s: %s", path, e.msg);
        return false;
    }
    if (st_parse(b->data, b->len, &b->f, &e) != 0) {
        CHECK_MSG(false, "%s: %s", path, e.msg);
        free(b->data);
        b->data = NULL;
        return false;
    }
    b->ok = true;
    return true;
}

static void st_buf_deinit(struct st_buf *b)
{
    if (b->ok)
        st_file_deinit(&b->f);
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/*
 * Returns a new F32 copy (caller frees) of tensor name if it has rank 2 with shape
 * (rows, cols), or rank 1 with (rows) when cols == 0. A dimension passed as 0 in *rows is
 * taken from the file. NULL (and a failed check) otherwise.
 */
static float *tensor_get(const struct st_file *f, const char *what, const char *name, size_t *rows,
                         size_t cols)
{
    const struct st_tensor *t = st_find(f, name);
    int rank = cols == 0 ? 1 : 2;
    float *out;

    if (t == NULL) {
        CHECK_MSG(false, "%s: no tensor \"%s\"", what, name);
        return NULL;
    }
    if (t->rank != rank || t->shape[0] <= 0 || (*rows != 0 && (size_t)t->shape[0] != *rows) ||
        (rank == 2 && (size_t)t->shape[1] != cols)) {
        CHECK_MSG(false, "%s: tensor \"%s\" has rank %d, shape[0] %lld; want (%zu, %zu)", what,
                  name, t->rank, (long long)(t->rank > 0 ? t->shape[0] : -1), *rows, cols);
        return NULL;
    }
    *rows = (size_t)t->shape[0];
    out = malloc((t->numel > 0 ? t->numel : 1) * sizeof(float));
    if (out == NULL) {
        CHECK_MSG(false, "out of memory");
        return NULL;
    }
    st_to_f32(t, out);
    return out;
}

/* Largest |a - b| over n floats; a NaN anywhere counts as infinitely far. */
static double max_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

static json_t *index_load(void)
{
    char path[4096];
    json_error_t je;
    json_t *doc;

    snprintf(path, sizeof(path), "%s/model/ref/index.json", tests_dir());
    doc = json_load_file(path, 0, &je);
    CHECK_MSG(doc != NULL, "%s:%d: %s", path, je.line, je.text);
    if (doc != NULL)
        CHECK_MSG(json_array_size(json_object_get(doc, "cases")) > 0, "%s: no cases", path);
    return doc;
}

/* Calls fn for every case of the given kind in index.json; returns how many ran. */
static int index_each(const char *kind,
                      void (*fn)(const char *dir, const char *name, double tol, int epochs))
{
    json_t *doc = index_load(), *c;
    size_t i;
    int ran = 0;

    if (doc == NULL)
        return 0;
    json_array_foreach(json_object_get(doc, "cases"), i, c)
    {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *k = json_string_value(json_object_get(c, "kind"));
        double tol = json_number_value(json_object_get(c, "tolerance"));
        int epochs = (int)json_integer_value(json_object_get(c, "epochs"));
        char dir[4096];

        CHECK_MSG(name != NULL && k != NULL && tol > 0, "index.json: case %zu malformed", i);
        if (name == NULL || k == NULL || strcmp(k, kind) != 0)
            continue;
        snprintf(dir, sizeof(dir), "%s/model/ref/%s", tests_dir(), name);
        fn(dir, name, tol, epochs);
        ran++;
    }
    json_decref(doc);
    return ran;
}

/* ------------------------------------------------------------------------------------------
 * Forward cases
 * ---------------------------------------------------------------------------------------- */

static void forward_case(const char *dir, const char *name, double tol, int epochs)
{
    struct err e = {0};
    struct model *m = NULL;
    struct model_workspace *ws = NULL, *ws1 = NULL;
    struct st_buf io = {0};
    float *x = NULL, *y = NULL, *feat = NULL, *feat_copy = NULL, *inplace = NULL;
    float *out = NULL, *out_rows = NULL, *out_rows_big = NULL;
    size_t B = 0, yB, R, F, O;
    double d_batch, d_rows, d_rows_big;

    (void)epochs;
    m = model_load(dir, &e);
    CHECK_MSG(m != NULL, "%s: model_load: %s", name, e.msg);
    if (m == NULL)
        goto out;
    R = model_get_info(m)->raw_size;
    F = model_get_info(m)->in_size;
    O = model_get_info(m)->out_size;
    if (!st_buf_load(&io, dir, "io.safetensors"))
        goto out;
    x = tensor_get(&io.f, name, "x", &B, R);
    yB = B;
    y = x != NULL ? tensor_get(&io.f, name, "y", &yB, O) : NULL;
    if (y == NULL)
        goto out;

    feat = malloc(B * F * sizeof(float));
    feat_copy = malloc(B * F * sizeof(float));
    inplace = malloc(B * (R > F ? R : F) * sizeof(float));
    out = malloc(B * O * sizeof(float));
    out_rows = malloc(B * O * sizeof(float));
    out_rows_big = malloc(B * O * sizeof(float));
    if (feat == NULL || feat_copy == NULL || inplace == NULL || out == NULL || out_rows == NULL ||
        out_rows_big == NULL) {
        CHECK_MSG(false, "out of memory");
        goto out;
    }

    if (model_featurize_tensor(m, x, B, feat, &e) != 0) {
        CHECK_MSG(false, "%s: featurize: %s", name, e.msg);
        goto out;
    }
    /* raw and out may be the same buffer (model.h). */
    memcpy(inplace, x, B * R * sizeof(float));
    CHECK_MSG(model_featurize_tensor(m, inplace, B, inplace, &e) == 0, "%s: featurize: %s", name,
              e.msg);
    CHECK_MSG(max_diff(inplace, feat, B * F) == 0.0, "%s: in-place featurize differs", name);
    memcpy(feat_copy, feat, B * F * sizeof(float));

    ws = model_workspace_new(m, B, &e);
    CHECK_MSG(ws != NULL, "%s: workspace: %s", name, e.msg);
    ws1 = model_workspace_new(m, 1, &e);
    CHECK_MSG(ws1 != NULL, "%s: workspace: %s", name, e.msg);
    if (ws == NULL || ws1 == NULL)
        goto out;

    /* Whole batch. */
    CHECK_MSG(model_forward(m, ws, feat, B, out, &e) == 0, "%s: forward: %s", name, e.msg);
    CHECK_MSG(memcmp(feat, feat_copy, B * F * sizeof(float)) == 0,
              "%s: model_forward wrote into its input", name);
    d_batch = max_diff(out, y, B * O);

    /* Row by row, through a one-sample workspace and through the batch-sized one. */
    for (size_t i = 0; i < B; i++) {
        CHECK_MSG(model_forward(m, ws1, feat + i * F, 1, out_rows + i * O, &e) == 0,
                  "%s: forward row %zu: %s", name, i, e.msg);
        CHECK_MSG(model_forward(m, ws, feat + i * F, 1, out_rows_big + i * O, &e) == 0,
                  "%s: forward row %zu: %s", name, i, e.msg);
    }
    CHECK_MSG(memcmp(feat, feat_copy, B * F * sizeof(float)) == 0,
              "%s: model_forward wrote into its input", name);
    d_rows = max_diff(out_rows, y, B * O);
    d_rows_big = max_diff(out_rows_big, y, B * O);

    fprintf(stderr, "  %-26s forward B=%zu O=%-3zu max|diff| batch %.2e  rows %.2e / %.2e\n", name,
            B, O, d_batch, d_rows, d_rows_big);
    CHECK_MSG(d_batch <= tol, "%s: batch output off by %.3g (tol %g)", name, d_batch, tol);
    CHECK_MSG(d_rows <= tol, "%s: row-by-row output off by %.3g (tol %g)", name, d_rows, tol);
    CHECK_MSG(d_rows_big <= tol, "%s: row-by-row (batch workspace) output off by %.3g (tol %g)",
              name, d_rows_big, tol);
    if (d_batch > tol || d_rows > tol) {
        for (size_t i = 0; i < B * O && i < 8; i++)
            fprintf(stderr, "    y[%zu] want %.7g got %.7g (rows %.7g)\n", i, y[i], out[i],
                    out_rows[i]);
    }

out:
    free(x);
    free(y);
    free(feat);
    free(feat_copy);
    free(inplace);
    free(out);
    free(out_rows);
    free(out_rows_big);
    model_workspace_free(ws);
    model_workspace_free(ws1);
    st_buf_deinit(&io);
    model_free(m);
}

static void test_forward(void)
{
    int n = index_each("forward", forward_case);
    CHECK_MSG(n >= 20, "only %d forward cases in index.json", n);
}

/* ------------------------------------------------------------------------------------------
 * Training cases
 * ---------------------------------------------------------------------------------------- */

/*
 * Compares model_params(m) with the state_dict tensors of expected.safetensors, walking the
 * layers of dir/model.json: each Linear/Conv2d at index i owns "<i>.weight" then, unless
 * "bias": false, "<i>.bias". Returns the largest difference (INFINITY if something is missing).
 */
static double params_diff(const struct model *m, const char *dir, const char *name,
                          const struct st_file *exp)
{
    const float *p = model_params(m);
    size_t n_params = model_get_info(m)->n_params, off = 0, i;
    double worst = 0.0;
    char path[4096];
    json_error_t je;
    json_t *doc, *layer;

    snprintf(path, sizeof(path), "%s/model.json", dir);
    doc = json_load_file(path, 0, &je);
    CHECK_MSG(doc != NULL, "%s:%d: %s", path, je.line, je.text);
    if (doc == NULL)
        return INFINITY;
    json_array_foreach(json_object_get(doc, "layers"), i, layer)
    {
        const char *type = json_string_value(json_object_get(layer, "type"));
        json_t *bias = json_object_get(layer, "bias");
        const char *suffix[2] = {"weight", "bias"};
        int n_tensors;

        if (type == NULL || (strcmp(type, "Linear") != 0 && strcmp(type, "Conv2d") != 0))
            continue;
        n_tensors = bias != NULL && json_is_false(bias) ? 1 : 2;
        for (int k = 0; k < n_tensors; k++) {
            char tname[64];
            const struct st_tensor *t;
            float *want;
            double d;

            snprintf(tname, sizeof(tname), "%zu.%s", i, suffix[k]);
            t = st_find(exp, tname);
            CHECK_MSG(t != NULL, "%s: expected.safetensors lacks %s", name, tname);
            if (t == NULL) {
                worst = INFINITY;
                goto out;
            }
            CHECK_MSG(off + t->numel <= n_params, "%s: %s beyond the %zu parameters", name, tname,
                      n_params);
            if (off + t->numel > n_params) {
                worst = INFINITY;
                goto out;
            }
            want = malloc(t->numel * sizeof(float));
            if (want == NULL) {
                CHECK_MSG(false, "out of memory");
                worst = INFINITY;
                goto out;
            }
            st_to_f32(t, want);
            d = max_diff(p + off, want, t->numel);
            if (d > 1e-4)
                fprintf(stderr, "    %s: %s off by %.3g (first: want %.7g got %.7g)\n", name, tname,
                        d, want[0], p[off]);
            if (!(d <= worst))
                worst = d;
            free(want);
            off += t->numel;
        }
    }
    CHECK_MSG(off == n_params, "%s: state_dict has %zu floats, the model %zu", name, off, n_params);
out:
    json_decref(doc);
    return worst;
}

static void train_case(const char *dir, const char *name, double tol, int epochs)
{
    struct err e = {0};
    struct model *m = NULL;
    struct model_trainer *t = NULL;
    struct model_workspace *ws = NULL;
    struct model_dataset ds = {0};
    struct st_buf tr = {0}, exp = {0};
    float *x = NULL, *labels = NULL, *targets = NULL, *y = NULL, *out = NULL;
    const struct model_info *info;
    size_t N = 0, n2, R, F, O, yN;
    bool classifier;
    double d_params, d_out;

    m = model_load(dir, &e);
    CHECK_MSG(m != NULL, "%s: model_load: %s", name, e.msg);
    if (m == NULL)
        goto out;
    info = model_get_info(m);
    R = info->raw_size;
    F = info->in_size;
    O = info->out_size;
    classifier = info->task == MODEL_TASK_CLASSIFICATION;
    CHECK_MSG(info->training.epochs == epochs, "%s: model.json says %d epochs, index %d", name,
              info->training.epochs, epochs);
    CHECK_MSG(!info->training.shuffle, "%s: shuffle must be off", name);

    if (!st_buf_load(&tr, dir, "train.safetensors") ||
        !st_buf_load(&exp, dir, "expected.safetensors"))
        goto out;
    x = tensor_get(&tr.f, name, "x", &N, R);
    if (x == NULL)
        goto out;
    n2 = N;
    if (classifier)
        labels = tensor_get(&tr.f, name, "labels", &n2, 0);
    else
        targets = tensor_get(&tr.f, name, "targets", &n2, O);
    if (labels == NULL && targets == NULL)
        goto out;

    if (model_dataset_init(&ds, N, F, classifier ? 0 : O, &e) != 0) {
        CHECK_MSG(false, "%s: dataset: %s", name, e.msg);
        goto out;
    }
    if (model_featurize_tensor(m, x, N, ds.x, &e) != 0) {
        CHECK_MSG(false, "%s: featurize: %s", name, e.msg);
        goto out;
    }
    for (size_t i = 0; i < N; i++) {
        if (classifier) {
            CHECK_MSG(labels[i] >= 0 && labels[i] < (float)O && labels[i] == floorf(labels[i]),
                      "%s: label %zu is %g", name, i, labels[i]);
            ds.labels[i] = (int32_t)labels[i];
        }
    }
    if (!classifier)
        memcpy(ds.targets, targets, N * O * sizeof(float));
    CHECK_MSG(model_dataset_check(m, &ds, &e) == 0, "%s: dataset check: %s", name, e.msg);

    t = model_trainer_new(m, &info->training, &ds, NULL, &e);
    CHECK_MSG(t != NULL, "%s: trainer: %s", name, e.msg);
    if (t == NULL)
        goto out;
    CHECK_MSG(model_trainer_run(t, NULL, NULL, NULL, &e) == 0, "%s: train: %s", name, e.msg);
    CHECK_MSG(model_trainer_epochs_done(t) == epochs, "%s: %d epochs done, want %d", name,
              model_trainer_epochs_done(t), epochs);
    model_trainer_free(t);
    t = NULL;

    d_params = params_diff(m, dir, name, &exp.f);

    yN = N;
    y = tensor_get(&exp.f, name, "y", &yN, O);
    ws = model_workspace_new(m, N, &e);
    CHECK_MSG(ws != NULL, "%s: workspace: %s", name, e.msg);
    out = malloc(N * O * sizeof(float));
    if (y == NULL || ws == NULL || out == NULL)
        goto out;
    CHECK_MSG(model_forward(m, ws, ds.x, N, out, &e) == 0, "%s: forward: %s", name, e.msg);
    d_out = max_diff(out, y, N * O);

    fprintf(stderr, "  %-26s train N=%zu E=%d  max|diff| params %.2e  outputs %.2e\n", name, N,
            epochs, d_params, d_out);
    CHECK_MSG(d_params <= tol, "%s: trained weights off by %.3g (tol %g)", name, d_params, tol);
    CHECK_MSG(d_out <= tol, "%s: outputs after training off by %.3g (tol %g)", name, d_out, tol);

out:
    model_trainer_free(t);
    model_workspace_free(ws);
    model_dataset_deinit(&ds);
    free(x);
    free(labels);
    free(targets);
    free(y);
    free(out);
    st_buf_deinit(&tr);
    st_buf_deinit(&exp);
    model_free(m);
}

static void test_train(void)
{
    int n = index_each("train", train_case);
    CHECK_MSG(n >= 10, "only %d training cases in index.json", n);
}

int main(void)
{
    RUN(test_forward);
    RUN(test_train);
    return test_finish();
}
