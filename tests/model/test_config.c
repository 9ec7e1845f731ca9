/*
 * tests/model/test_config.c - model.json validation and hostile model directories.
 *
 *   bad configs   more than 50 broken model.json documents: each must fail to load with the
 *                 right status and a message naming the field ("layers[1].in_features",
 *                 "input.shape", "training.optimizer", ...). One asks for 2^40 parameters and
 *                 must be refused before anything is allocated: under AddressSanitizer a
 *                 multi-terabyte malloc would abort the program.
 *   good configs  defaults resolved as torch's (adam, lr 0.001, batch 32, adamw's weight decay
 *                 0.01), kernel_size as a pair, MaxPool2d's stride defaulting to kernel_size
 *                 (checked through the output size after Flatten + Linear), preprocess.
 *   bad weights   hostile weights.safetensors for a valid model.json: every truncation, header
 *                 length beyond the file, missing / extra / transposed / I64 tensors, offsets
 *                 out of range, overlapping or leaving gaps, an empty file. F16, BF16 and F64
 *                 files built from values exact in every dtype (k/64) must load to the same
 *                 parameters and the same forward outputs, bit for bit, as the F32 file.
 *   directories   model_load on temporary directories: default init (deterministic per seed,
 *                 within torch's bounds), a missing directory, save -> load round trips.
 *
 * Nothing here has a numeric tolerance: equal means bit-identical.
 */
#include "tests/test.h"

#include "model/internal.h"

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* JSON written with ' for " (readable C literals); caller frees. */
static char *dq(const char *sq)
{
    size_t n = strlen(sq);
    char *s = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        s[i] = sq[i] == '\'' ? '"' : sq[i];
    return s;
}

static struct model *load_sq(const char *sq, const void *w, size_t wlen, struct err *e)
{
    char *s = dq(sq);
    struct model *m = model_load_buffers(s, strlen(s), w, wlen, e);
    free(s);
    return m;
}

/* A valid classifier: 3 features -> 4 -> 2. Tensors 0.weight (4, 3), 0.bias (4), 2.weight
 * (2, 4), 2.bias (2): 26 parameters, 104 bytes of F32. */
#define MLP_SEED(s)                                                                                \
    "{'task':'classification','input':{'shape':[3]},'labels':['a','b'],'layers':["                 \
    "{'type':'Linear','in_features':3,'out_features':4},{'type':'ReLU'},"                          \
    "{'type':'Linear','in_features':4,'out_features':2}],'training':{'seed':" #s "}}"
#define MLP MLP_SEED(0)

/* ------------------------------------------------------------------------------------------
 * Bad model.json
 * ---------------------------------------------------------------------------------------- */

struct bad {
    const char *json; /* with ' for " */
    const char *needle;
    int status;
};

#define BAD(json, needle)                                                                          \
    {                                                                                              \
        (json), (needle), INF_EINVAL                                                               \
    }

#define T_REG     "'task':'regression'"
#define T_CLS     "'task':'classification'"
#define IN(s)     "'input':{'shape':" s "}"
#define LIN(i, o) "{'type':'Linear','in_features':" #i ",'out_features':" #o "}"
#define L1        "'layers':[" LIN(4, 2) "]"
#define OK_REG    "{" T_REG "," IN("[4]") "," L1
#define IMG       IN("[1,6,6]")
#define CONV(x)   "{'type':'Conv2d','in_channels':1,'out_channels':2,'kernel_size':3" x "}"
#define FLATLIN   ",{'type':'Flatten'}," LIN(32, 2)
#define TEXT(f)   "'input':{'datatype':'BYTES','featurizer':" f "}"

static const struct bad bad_configs[] = {
    BAD(OK_REG ",'bogus':1}", "unknown field \"bogus\""),
    BAD("{" IN("[4]") "," L1 "}", "task: missing"),
    BAD("{'task':'clustering'," IN("[4]") "," L1 "}", "task: \"clustering\""),
    BAD("{" T_REG "," L1 "}", "input: missing"),
    BAD("{" T_REG ",'input':{'datatype':'FP8','shape':[4]}," L1 "}", "input.datatype"),
    BAD("{" T_REG "," IN("[2,2]") "," L1 "}", "input.shape: rank 2"),
    BAD("{" T_REG "," IN("[0]") "," L1 "}", "input.shape[0]"),
    BAD("{" T_REG "," IN("[2147483648]") "," L1 "}", "input.shape[0]"),
    BAD("{" T_REG ",'input':{'shape':[4],'extra':1}," L1 "}", "input: unknown field"),
    BAD("{" T_REG ",'input':{'name':'" /* 64 characters: one too many */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','shape':[4]}," L1 "}",
        "input.name"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[" LIN(4, 8) ",{'type':'ReLU'}," LIN(7, 2) "]}",
        "layers[2].in_features: 7"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[" LIN(4, 8) "," LIN(9, 2) "]}",
        "layers[1].in_features"),
    BAD("{" T_REG "," IMG ",'layers':[" CONV("") "," LIN(32, 2) "]}",
        "layers[1]: Linear needs a flat input"),
    {"{" T_REG "," IN("[4]") ",'layers':[{'type':'Conv3d'}]}", "layers[0].type", INF_EUNSUPPORTED},
    BAD("{" T_REG "," IN("[4]") ",'layers':[{'in_features':4}]}", "layers[0].type: missing"),
    BAD("{" T_REG "," IN(
            "[4]") ",'layers':[{'type':'Linear','in_features':4,'out_features':2,'dilation':1}]}",
        "layers[0]: unknown field \"dilation\""),
    BAD("{" T_REG "," IN("[4]") ",'layers':[{'type':'Linear','in_features':4,'out_features':2,"
                                "'bias':'yes'}]}",
        "layers[0].bias"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[{'type':'Linear','in_features':4,'out_features':2.5}]}",
        "layers[0].out_features"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[" LIN(4, 2147483648) "]}", "layers[0].out_features"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[" LIN(4, 0) "]}", "layers[0].out_features"),
    BAD("{" T_REG "," IN("[2,6,6]") ",'layers':[" CONV("") FLATLIN "]}", "layers[0].in_channels"),
    BAD("{" T_REG "," IN("[1,2,6]") ",'layers':[" CONV("") FLATLIN "]}", "layers[0].kernel_size"),
    BAD("{" T_REG "," IMG ",'layers':[" CONV(",'dilation':2") FLATLIN "]}", "layers[0].dilation"),
    BAD("{" T_REG "," IMG ",'layers':[" CONV(",'groups':2") FLATLIN "]}", "layers[0].groups"),
    {"{" T_REG "," IMG ",'layers':[" CONV(",'padding_mode':'reflect'") FLATLIN "]}",
     "layers[0].padding_mode", INF_EUNSUPPORTED},
    BAD("{" T_REG "," IMG ",'layers':[" CONV(",'stride':[1,2,3]") FLATLIN "]}", "layers[0].stride"),
    BAD("{" T_REG "," IMG ",'layers':[{'type':'MaxPool2d','kernel_size':2,'padding':2}" FLATLIN
        "]}",
        "layers[0].padding"),
    {"{" T_REG "," IMG ",'layers':[{'type':'MaxPool2d','kernel_size':2,'ceil_mode':true}" FLATLIN
     "]}",
     "layers[0].ceil_mode", INF_EUNSUPPORTED},
    BAD("{" T_REG "," IMG ",'layers':[{'type':'MaxPool2d'}" FLATLIN "]}", "layers[0].kernel_size"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[{'type':'Dropout','p':1.0}," LIN(4, 2) "]}",
        "layers[0].p"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[{'type':'GELU','approximate':'fast'}," LIN(4, 2) "]}",
        "layers[0].approximate"),
    BAD("{" T_REG "," IMG ",'layers':[{'type':'Flatten','start_dim':0}," LIN(36, 2) "]}",
        "layers[0].start_dim"),
    BAD("{" T_REG "," IMG ",'layers':[" CONV("") "]}", "layers: the last layer outputs [2, 4, 4]"),
    BAD("{" T_REG "," IN("[4]") ",'layers':[]}", "layers: expected a non-empty array"),
    BAD("{" T_CLS "," IN("[4]") ",'layers':[" LIN(4, 1) "]}", "layers: a classifier needs 2"),
    BAD("{" T_CLS "," IN("[4]") ",'labels':['a','b','c']," L1 "}", "labels: 3 labels"),
    BAD("{" T_CLS "," IN("[4]") ",'labels':['a','a']," L1 "}", "labels[1]: \"a\" repeats"),
    BAD("{" T_CLS "," IN("[4]") ",'labels':['a','']," L1 "}", "labels[1]"),
    BAD("{" T_REG "," IN("[4]") ",'labels':['a','b']," L1 "}", "labels: a regressor has no labels"),
    BAD("{" T_REG ",'input':{'shape':[4],'preprocess':{'std':0}}," L1 "}", "input.preprocess.std"),
    BAD("{" T_REG ",'input':{'shape':[4],'preprocess':{'mean':[1,2,3]}}," L1 "}",
        "input.preprocess.mean: has 3 values"),
    BAD("{" T_REG ",'input':{'shape':[4],'preprocess':{'std':[1,0,1,1]}}," L1 "}",
        "input.preprocess.std[1]"),
    BAD("{" T_REG ",'input':{'datatype':'BYTES'}," L1 "}", "input.featurizer"),
    BAD("{" T_REG "," TEXT("{'type':'hashing','dims':0}") "," L1 "}", "input.featurizer.dims"),
    BAD("{" T_REG "," TEXT("{'type':'hashing','dims':4,'ngrams':4}") "," L1 "}",
        "input.featurizer.ngrams"),
    BAD("{" T_REG "," TEXT("{'type':'bow','dims':4}") "," L1 "}", "input.featurizer.type"),
    BAD("{" T_REG ",'input':{'shape':[4],'featurizer':{'type':'hashing','dims':4}}," L1 "}",
        "input.featurizer: only BYTES"),
    BAD("{" T_CLS "," IN("[4]") "," L1 ",'training':{'loss':'mse'}}", "training.loss"),
    BAD(OK_REG ",'training':{'optimizer':'rmsprop'}}", "training.optimizer"),
    BAD(OK_REG ",'training':{'optimizer':'sgd','nesterov':true}}", "training.nesterov"),
    BAD(OK_REG ",'training':{'betas':[0.9,1.0]}}", "training.betas"),
    BAD(OK_REG ",'training':{'betas':[0.9]}}", "training.betas"),
    BAD(OK_REG ",'training':{'batch_size':0}}", "training.batch_size"),
    BAD(OK_REG ",'training':{'learning_rate':0}}", "training.learning_rate"),
    BAD(OK_REG ",'training':{'validation_split':0.95}}", "training.validation_split"),
    BAD(OK_REG ",'training':{'epoch':3}}", "training: unknown field \"epoch\""),
    BAD(OK_REG ",'serving':{'max_batch_size':0}}", "serving.max_batch_size"),
    BAD(OK_REG ",'format':2}", "format"),
    /* 2^40 parameters: refused from the config alone, before any allocation. */
    {"{" T_REG "," IN("[1048576]") ",'layers':[" LIN(1048576, 1048576) "]}",
     "layers: more than 1073741824 parameters", INF_ELIMIT},
    {"{" T_REG "," IN("[4096,64,64]") ",'layers':[{'type':'Conv2d','in_channels':4096,"
                                      "'out_channels':4096,'kernel_size':64},{'type':'Flatten'}]}",
     "layers: more than", INF_ELIMIT},
    BAD("{" T_REG "," IN("[1,4096,4096]") ",'layers':[{'type':'Conv2d','in_channels':1,"
                                          "'out_channels':16,'kernel_size':1},{'type':'Flatten'}]}",
        "layers[0]: activation too large"),
    BAD("{" T_REG "," IN("[4]") ",'task':'classification'," L1 "}", "duplicate object key"),
    BAD("not json at all", "model.json: line 1"),
    BAD("[" OK_REG "}]", "model.json: expected a JSON object"),
    BAD("", "model.json"),
};

/* The same document with its field removed or wrong in one place: each is refused, names the
 * field, and leaves nothing behind (ASan's leak checker sees every model_free path). */
static void test_bad_configs(void)
{
    size_t n = sizeof bad_configs / sizeof bad_configs[0];
    CHECK(n >= 50);
    for (size_t i = 0; i < n; i++) {
        struct err e = {0};
        struct model *m = load_sq(bad_configs[i].json, NULL, 0, &e);
        CHECK_MSG(m == NULL, "bad_configs[%zu] loaded: %s", i, bad_configs[i].json);
        int want = bad_configs[i].status ? bad_configs[i].status : INF_EINVAL;
        CHECK_MSG(e.status == want, "bad_configs[%zu]: status %d, want %d (%s)", i, e.status, want,
                  e.msg);
        CHECK_MSG(strstr(e.msg, bad_configs[i].needle) != NULL,
                  "bad_configs[%zu]: error \"%s\" lacks \"%s\"", i, e.msg, bad_configs[i].needle);
        CHECK_MSG(strncmp(e.msg, "model.json", 10) == 0, "bad_configs[%zu]: \"%s\" names no file",
                  i, e.msg);
        model_free(m);
    }
}

/* model_load_buffers(s, n) fails with status and a message holding needle; frees s. */
static void expect_refused(char *s, size_t n, int status, const char *needle, int line)
{
    struct err e = {0};
    struct model *m = model_load_buffers(s, n, NULL, 0, &e);
    CHECK_MSG(m == NULL && e.status == status, "line %d: status %d (%s)", line, e.status, e.msg);
    CHECK_MSG(strstr(e.msg, needle) != NULL, "line %d: \"%s\" lacks \"%s\"", line, e.msg, needle);
    model_free(m);
    free(s);
}

/* Structural attacks on the JSON text itself. */
static void test_hostile_json(void)
{
    /* 1000 nested arrays parse (jansson's depth limit is 2048) and are refused as a non-object;
     * 100000 hit the depth limit. Neither may recurse the stack away. */
    const size_t depths[] = {1000, 100000};
    for (size_t k = 0; k < 2; k++) {
        char *s = xmalloc(2 * depths[k]);
        memset(s, '[', depths[k]);
        memset(s + depths[k], ']', depths[k]);
        expect_refused(s, 2 * depths[k], INF_EINVAL, "model.json", __LINE__);
    }
    /* An embedded NUL ends nothing early: the document is invalid. */
    char *s = dq(OK_REG "}");
    size_t n = strlen(s);
    s[n - 1] = '\0';
    expect_refused(s, n, INF_EINVAL, "model.json", __LINE__);
    /* Over the size limit: refused before parsing. */
    s = xmalloc(MODEL_MAX_CONFIG_BYTES + 1);
    memset(s, ' ', MODEL_MAX_CONFIG_BYTES + 1);
    expect_refused(s, MODEL_MAX_CONFIG_BYTES + 1, INF_ELIMIT, "model.json", __LINE__);
    /* 257 layers is over MODEL_MAX_LAYERS. */
    size_t cap = 300 * 24 + 128;
    s = xmalloc(cap);
    n = (size_t)snprintf(s, cap, "{\"task\":\"regression\",\"input\":{\"shape\":[4]},\"layers\":[");
    for (int i = 0; i < 257; i++)
        n += (size_t)snprintf(s + n, cap - n, "%s{\"type\":\"Tanh\"}", i ? "," : "");
    n += (size_t)snprintf(s + n, cap - n, "]}");
    expect_refused(s, n, INF_ELIMIT, "layers: 257 layers", __LINE__);
}

/* ------------------------------------------------------------------------------------------
 * Good model.json
 * ---------------------------------------------------------------------------------------- */

static void test_defaults(void)
{
    struct err e = {0};
    struct model *m = load_sq("{" T_CLS "," IN("[4]") "," L1 "}", NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        const struct model_info *in = model_get_info(m);
        const struct model_training *t = &in->training;
        CHECK(t->loss == MODEL_LOSS_CROSS_ENTROPY && t->optimizer == MODEL_OPTIM_ADAM);
        CHECK(t->learning_rate == 0.001 && t->batch_size == 32 && t->epochs == 10);
        CHECK(t->shuffle && t->seed == 0 && t->validation_split == 0);
        CHECK(t->momentum == 0 && t->dampening == 0 && !t->nesterov && t->weight_decay == 0);
        CHECK(t->beta1 == 0.9 && t->beta2 == 0.999 && t->eps == 1e-8);
        CHECK(strcmp(in->input_name, "input") == 0 && strcmp(in->input_datatype, "FP32") == 0);
        CHECK(in->input_kind == MODEL_INPUT_TENSOR && in->input_rank == 1);
        CHECK(in->raw_size == 4 && in->in_size == 4 && in->out_size == 2);
        CHECK(in->n_labels == 2 && strcmp(in->labels[0], "0") == 0 &&
              strcmp(in->labels[1], "1") == 0);
        CHECK(in->n_layers == 1 && in->n_params == 10);
        CHECK(in->serving.max_batch_size == 0 && in->serving.max_batch_delay_us == 0);
    }
    model_free(m);

    m = load_sq(OK_REG ",'training':{'optimizer':'adamw'}}", NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        CHECK(model_get_info(m)->training.loss == MODEL_LOSS_MSE);
        CHECK(model_get_info(m)->training.optimizer == MODEL_OPTIM_ADAMW);
        CHECK(model_get_info(m)->training.weight_decay == 0.01);
    }
    model_free(m);
    m = load_sq(OK_REG ",'training':{'optimizer':'adamw','weight_decay':0}}", NULL, 0, &e);
    CHECK(m != NULL && model_get_info(m)->training.weight_decay == 0);
    model_free(m);
    m = load_sq(OK_REG ",'training':{'optimizer':'sgd','momentum':0.9,'nesterov':true,"
                       "'batch_size':8.0,'seed':5},'serving':{'max_batch_size':16}}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        const struct model_info *in = model_get_info(m);
        CHECK(in->training.optimizer == MODEL_OPTIM_SGD && in->training.weight_decay == 0);
        CHECK(in->training.nesterov && in->training.momentum == 0.9);
        CHECK(in->training.batch_size == 8 && in->training.seed == 5);
        CHECK(in->serving.max_batch_size == 16);
    }
    model_free(m);
}

static void test_shapes(void)
{
    struct err e = {0};
    /* kernel_size as a pair: (1, 6, 6) -> Conv [3, 2] -> (2, 4, 5) -> 40 -> 3 */
    struct model *m =
        load_sq("{" T_REG "," IMG ",'layers':[{'type':'Conv2d','in_channels':1,"
                "'out_channels':2,'kernel_size':[3,2]},{'type':'Flatten'}," LIN(40, 3) "]}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        CHECK(m->layers[0].kh == 3 && m->layers[0].kw == 2);
        CHECK(m->layers[0].out.c == 2 && m->layers[0].out.h == 4 && m->layers[0].out.w == 5);
        CHECK(m->layers[0].w_shape[2] == 3 && m->layers[0].w_shape[3] == 2);
        CHECK(model_get_info(m)->n_params == 2 * 3 * 2 + 2 + 40 * 3 + 3);
        CHECK(model_get_info(m)->out_size == 3);
    }
    model_free(m);
    /* MaxPool2d stride defaults to kernel_size: (1, 8, 8) -> (1, 4, 4) -> 16. With stride 1
     * the pool would give 49 features and in_features 16 would be refused. */
    m = load_sq("{" T_REG "," IN("[1,8,8]") ",'layers':[{'type':'MaxPool2d','kernel_size':2},"
                                            "{'type':'Flatten'}," LIN(16, 3) "]}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    CHECK(m != NULL && model_get_info(m)->out_size == 3 && m->layers[0].sh == 2);
    model_free(m);
    m = load_sq("{" T_REG "," IN("[1,8,8]") ",'layers':[{'type':'MaxPool2d','kernel_size':2,"
                                            "'stride':1},{'type':'Flatten'}," LIN(49, 3) "]}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL && model_get_info(m)->out_size == 3, "%s", e.msg);
    model_free(m);
    /* A text model: BYTES in, dims features. */
    m = load_sq("{" T_CLS
                "," TEXT("{'type':'hashing','dims':64,'ngrams':2}") ",'layers':[" LIN(64, 3) "]}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        const struct model_info *in = model_get_info(m);
        CHECK(in->input_kind == MODEL_INPUT_TEXT && strcmp(in->input_datatype, "BYTES") == 0);
        CHECK(in->raw_size == 1 && in->in_size == 64 && in->hashing.dims == 64);
        CHECK(in->hashing.ngrams == 2 && in->n_labels == 3);
    }
    model_free(m);
    /* Per-channel preprocess: x' = (x * scale - mean[c]) / std[c]. */
    m = load_sq("{" T_REG ",'input':{'shape':[2,1,2],'preprocess':{'scale':2,'mean':[1,3],"
                "'std':[2,4]}},'layers':[{'type':'Flatten'}," LIN(4, 1) "]}",
                NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    if (m != NULL) {
        float raw[4] = {1, 2, 3, 4}, out[4];
        CHECK(model_featurize_tensor(m, raw, 1, out, &e) == 0);
        CHECK_NEAR(out[0], (2 - 1) / 2.0, 1e-6);
        CHECK_NEAR(out[1], (4 - 1) / 2.0, 1e-6);
        CHECK_NEAR(out[2], (6 - 3) / 4.0, 1e-6);
        CHECK_NEAR(out[3], (8 - 3) / 4.0, 1e-6);
    }
    model_free(m);
}

/* ------------------------------------------------------------------------------------------
 * Weights files for MLP: hostile ones, and other dtypes that convert exactly
 * ---------------------------------------------------------------------------------------- */

/* A safetensors file: the JSON header hdr, then dlen bytes of data (zeros when NULL). */
static unsigned char *st_file_make(const char *hdr, const void *data, size_t dlen, size_t *len)
{
    size_t h = strlen(hdr);
    *len = 8 + h + dlen;
    unsigned char *buf = xmalloc(*len);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, h);
    if (data != NULL)
        memcpy(buf + 8 + h, data, dlen);
    return buf;
}

/* v must be 0 or a normal F16 with at most 10 mantissa bits (k/64 for |k| < 1024 is). */
static uint16_t f16_exact(float v)
{
    if (v == 0)
        return 0;
    int ex;
    double m = frexp(fabs((double)v), &ex); /* |v| = m 2^ex, m in [0.5, 1) */
    uint16_t mant = (uint16_t)((m * 2 - 1) * 1024);
    return (uint16_t)((v < 0 ? 0x8000 : 0) | (uint16_t)((ex - 1 + 15) << 10) | mant);
}

/* Writes v as dtype dt ("F16", "BF16", "F32", "F64") little-endian at p; returns its size. */
static size_t put_value(unsigned char *p, const char *dt, float v)
{
    uint64_t bits;
    uint32_t u;
    double d = v;
    size_t sz = dt[1] == '6' ? 8 : dt[1] == '3' ? 4 : 2;
    memcpy(&u, &v, 4);
    if (sz == 8)
        memcpy(&bits, &d, 8);
    else if (sz == 4)
        bits = u;
    else
        bits = dt[0] == 'B' ? u >> 16 : f16_exact(v);
    for (size_t i = 0; i < sz; i++)
        p[i] = (unsigned char)(bits >> (8 * i));
    return sz;
}

/* The MLP's 26 parameters, k/64 for small k: exact in F16, BF16, F32 and F64. */
static void mlp_values(float *v)
{
    for (int i = 0; i < 26; i++)
        v[i] = (float)((i * 7) % 23 - 11) / 64.0f;
}

/* A weights file for MLP holding v, with tensor i stored as dts[i]. */
static unsigned char *mlp_file(const char *const dts[4], const float *v, size_t *len)
{
    static const char *const names[4] = {"0.weight", "0.bias", "2.weight", "2.bias"};
    static const char *const shapes[4] = {"[4,3]", "[4]", "[2,4]", "[2]"};
    static const size_t counts[4] = {12, 4, 8, 2};
    unsigned char data[26 * 8];
    char hdr[1024];
    size_t at = 0, k = 0, h = (size_t)snprintf(hdr, sizeof hdr, "{");
    for (int t = 0; t < 4; t++) {
        size_t begin = at;
        for (size_t i = 0; i < counts[t]; i++)
            at += put_value(data + at, dts[t], v[k++]);
        h += (size_t)snprintf(hdr + h, sizeof hdr - h,
                              "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                              t ? "," : "", names[t], dts[t], shapes[t], begin, at);
    }
    snprintf(hdr + h, sizeof hdr - h, "}");
    return st_file_make(hdr, data, at, len);
}

/* Loads MLP with the weights w; expects failure with needle in the message. */
static void expect_bad_weights(const unsigned char *w, size_t len, const char *needle, int line)
{
    struct err e = {0};
    struct model *m = load_sq(MLP, w, len, &e);
    CHECK_MSG(m == NULL && e.status < 0, "line %d: loaded", line);
    CHECK_MSG(strstr(e.msg, "weights.safetensors") != NULL && strstr(e.msg, needle) != NULL,
              "line %d: error \"%s\" lacks \"%s\"", line, e.msg, needle);
    model_free(m);
}

/* One header entry, and MLP's four in F32 as the writer lays them out. */
#define E(n, dt, sh, b, e)                                                                         \
    "\"" n "\":{\"dtype\":\"" dt "\",\"shape\":" sh ",\"data_offsets\":[" #b "," #e "]}"
#define W0 E("0.weight", "F32", "[4,3]", 0, 48)
#define B0 E("0.bias", "F32", "[4]", 48, 64)
#define W2 E("2.weight", "F32", "[2,4]", 64, 96)
#define B2 E("2.bias", "F32", "[2]", 96, 104)

static const struct {
    const char *hdr;
    size_t dlen;
    const char *needle;
    int line;
} bad_weights[] = {
    {"{" W0 "," B0 "," W2 "}", 96, "missing tensor \"2.bias\" for layers[2]", __LINE__},
    {"{" W0 "," B0 "," W2 "," B2 "," E("3.weight", "F32", "[1]", 104, 108) "}", 108,
     "unexpected tensor \"3.weight\"", __LINE__},
    {"{" W0 "," B0 "," W2 "," B2 "," E("1.weight", "F32", "[1]", 104, 108) "}", 108,
     "unexpected tensor \"1.weight\"", __LINE__},
    {"{" E("0.weight", "F32", "[3,4]", 0, 48) "," B0 "," W2 "," B2 "}", 104,
     "tensor \"0.weight\": shape [3, 4], but layers[0] (Linear) needs [4, 3]", __LINE__},
    {"{" W0 "," B0 "," W2 "," E("2.bias", "I64", "[2]", 96, 112) "}", 112,
     "dtype \"I64\" is not supported", __LINE__},
    {"{" W0 "," B0 "," W2 "," B2 "}", 100, "end beyond the data", __LINE__},
    {"{" W0 "," E("0.bias", "F32", "[4]", 40, 56) "," E("2.weight", "F32", "[2,4]", 56, 88) "," E(
         "2.bias", "F32", "[2]", 88, 96) "}",
     96, "overlap", __LINE__},
    {"{" W0 "," B0 "," W2 "," B2 "}", 112, "after the last tensor are not covered", __LINE__},
    {"{" W0 "," E("0.bias", "F32", "[4]", 48, 60) "," W2 "," B2 "}", 104, "hold 12 bytes",
     __LINE__},
    {"{" E("0.weight", "F32", "[1099511627776,1099511627776]", 0, 48) "}", 48, "overflows",
     __LINE__},
    {"{" E("0.weight", "F32", "[-4,3]", 0, 48) "}", 48, "shape[0] is not a non-negative", __LINE__},
    {"{\"0.weight\":", 48, "not valid JSON", __LINE__},
    {"{" B0 "," B0 "}", 64, "duplicate key \"0.bias\"", __LINE__},
    /* Non-canonical spellings of a used name are still extra tensors (strict loading). */
    {"{" W0 "," B0 "," W2 "," B2 "," E("00.weight", "F32", "[1]", 104, 108) "}", 108,
     "unexpected tensor \"00.weight\"", __LINE__},
    {"{" W0 "," B0 "," W2 "," B2 "," E("+2.bias", "F32", "[1]", 104, 108) "}", 108,
     "unexpected tensor \"+2.bias\"", __LINE__},
};

static void test_bad_weights(void)
{
    const char *const f32[4] = {"F32", "F32", "F32", "F32"};
    float v[26];
    size_t len;
    struct err e = {0};
    mlp_values(v);
    unsigned char *f = mlp_file(f32, v, &len), *g;
    struct model *m = load_sq(MLP, f, len, &e);
    CHECK_MSG(m != NULL && memcmp(model_params(m), v, sizeof v) == 0, "valid file: %s", e.msg);
    model_free(m);
    /* A bias for a layer declared without one. */
    m = load_sq("{" T_CLS
                "," IN("[3]") ",'layers':[{'type':'Linear','in_features':3,"
                              "'out_features':4,'bias':false},{'type':'ReLU'}," LIN(4, 2) "]}",
                f, len, &e);
    CHECK(m == NULL);
    CHECK_ERR_HAS(&e, "unexpected tensor \"0.bias\"");
    model_free(m);

    /* Every strict prefix of a valid file is refused, the empty file included. */
    size_t refused = 0;
    for (size_t cut = 0; cut < len; cut++) {
        err_clear(&e);
        m = load_sq(MLP, f, cut, &e);
        refused += m == NULL && strstr(e.msg, "weights.safetensors") != NULL;
        model_free(m);
    }
    CHECK_MSG(refused == len, "%zu of %zu truncations refused", refused, len);
    expect_bad_weights(f, 0, "shorter than its 8-byte header length", __LINE__);

    /* Header length beyond the file, and absurdly large. */
    g = xmalloc(len);
    memcpy(g, f, len);
    g[0] = (unsigned char)(len - 7);
    g[1] = (unsigned char)((len - 7) >> 8);
    expect_bad_weights(g, len, "goes beyond", __LINE__);
    memset(g, 0xff, 8);
    g[7] = 0x3f;
    expect_bad_weights(g, len, "exceeds the limit", __LINE__);
    free(g);
    free(f);

    for (size_t i = 0; i < sizeof bad_weights / sizeof bad_weights[0]; i++) {
        f = st_file_make(bad_weights[i].hdr, NULL, bad_weights[i].dlen, &len);
        expect_bad_weights(f, len, bad_weights[i].needle, bad_weights[i].line);
        free(f);
    }
}

/* F16, BF16, F64 and a mix load to the same parameters and the same forward as F32. */
static void test_weight_dtypes(void)
{
    float v[26], x[5 * 3], ref[5 * 2], out[5 * 2];
    const char *const f32[4] = {"F32", "F32", "F32", "F32"};
    const char *const sets[][4] = {{"F16", "F16", "F16", "F16"},
                                   {"BF16", "BF16", "BF16", "BF16"},
                                   {"F64", "F64", "F64", "F64"},
                                   {"F16", "BF16", "F64", "F32"}};
    struct err e = {0};
    size_t len;
    mlp_values(v);
    for (int i = 0; i < 15; i++)
        x[i] = (float)(i % 7) * 0.25f - 0.75f;
    unsigned char *f = mlp_file(f32, v, &len);
    struct model *m32 = load_sq(MLP, f, len, &e);
    free(f);
    struct model_workspace *ws = m32 ? model_workspace_new(m32, 5, &e) : NULL;
    CHECK_MSG(ws != NULL, "%s", e.msg);
    if (ws == NULL || model_forward(m32, ws, x, 5, ref, &e) != 0)
        goto out;
    for (size_t s = 0; s < sizeof sets / sizeof sets[0]; s++) {
        f = mlp_file(sets[s], v, &len);
        err_clear(&e);
        struct model *m = load_sq(MLP, f, len, &e);
        CHECK_MSG(m != NULL, "%s...: %s", sets[s][0], e.msg);
        struct model_workspace *w2 = m ? model_workspace_new(m, 5, &e) : NULL;
        if (w2 != NULL) {
            CHECK_MSG(memcmp(model_params(m), v, sizeof v) == 0, "%s: params differ", sets[s][0]);
            CHECK(model_forward(m, w2, x, 5, out, &e) == 0);
            CHECK_MSG(memcmp(out, ref, sizeof out) == 0, "%s: forward differs", sets[s][0]);
        }
        model_workspace_free(w2);
        model_free(m);
        free(f);
    }
out:
    model_workspace_free(ws);
    model_free(m32);
}

/* ------------------------------------------------------------------------------------------
 * Model directories
 * ---------------------------------------------------------------------------------------- */

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[4096];
    struct err e = {0};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK_MSG(fs_write_atomic(path, data, len, 0644, &e) == 0, "%s", e.msg);
}

static void write_config(const char *dir, const char *sq)
{
    char *s = dq(sq);
    write_file(dir, "model.json", s, strlen(s));
    free(s);
}

/* model_load(dir) fails with status (any if 0) and a message holding needle. */
static void expect_dir_fails(const char *dir, int status, const char *needle)
{
    struct err e = {0};
    struct model *m = model_load(dir, &e);
    CHECK_MSG(m == NULL && e.status < 0 && (status == 0 || e.status == status),
              "%s: status %d (%s)", dir, e.status, e.msg);
    CHECK_MSG(strstr(e.msg, needle) != NULL, "%s: \"%s\" lacks \"%s\"", dir, e.msg, needle);
    model_free(m);
}

static void test_directories(void)
{
    char root[] = "/tmp/infera_test_config_XXXXXX", a[4200], b[4200], c[4200];
    struct err e = {0};
    struct model *m1 = NULL, *m2 = NULL, *m3 = NULL, *back = NULL;
    struct model_workspace *w1 = NULL, *w2 = NULL;
    if (mkdtemp(root) == NULL) {
        CHECK_MSG(false, "mkdtemp failed");
        return;
    }
    snprintf(a, sizeof a, "%s/seed7", root);
    snprintf(b, sizeof b, "%s/seed8", root);
    CHECK(fs_mkdir_p(a, 0755, &e) == 0 && fs_mkdir_p(b, 0755, &e) == 0);
    write_config(a, MLP_SEED(7));
    write_config(b, MLP_SEED(8));

    /* model.json alone: default init, the same for the same seed, within +-1/sqrt(fan_in). */
    m1 = model_load(a, &e);
    m2 = model_load(a, &e);
    m3 = model_load(b, &e);
    CHECK_MSG(m1 && m2 && m3, "%s", e.msg);
    if (!m1 || !m2 || !m3)
        goto out;
    CHECK(memcmp(model_params(m1), model_params(m2), 26 * sizeof(float)) == 0);
    CHECK(memcmp(model_params(m1), model_params(m3), 26 * sizeof(float)) != 0);
    size_t distinct = 0;
    for (size_t i = 0; i < 26; i++) {
        float p = model_params(m1)[i], bound = i < 16 ? 1 / sqrtf(3) : 0.5f;
        CHECK_MSG(fabsf(p) <= bound, "param %zu = %g beyond %g", i, (double)p, (double)bound);
        distinct += i == 0 || p != model_params(m1)[i - 1];
    }
    CHECK(distinct == 26);

    /* Round trip: save (into a directory that does not exist yet), load, compare. */
    struct model_training t = model_get_info(m1)->training;
    t.epochs = 3;
    t.learning_rate = 0.125;
    model_set_training(m1, &t);
    snprintf(c, sizeof c, "%s/out/nested", root);
    CHECK_MSG(model_save(m1, c, &e) == 0, "%s", e.msg);
    back = model_load(c, &e);
    CHECK_MSG(back != NULL, "%s", e.msg);
    if (back == NULL)
        goto out;
    const struct model_info *bi = model_get_info(back);
    CHECK(memcmp(model_params(m1), model_params(back), 26 * sizeof(float)) == 0);
    CHECK(bi->training.epochs == 3 && bi->training.learning_rate == 0.125);
    CHECK(bi->training.seed == 7 && bi->n_labels == 2 && strcmp(bi->labels[1], "b") == 0);
    w1 = model_workspace_new(m1, 4, &e);
    w2 = model_workspace_new(back, 4, &e);
    float x[12], y1[8], y2[8];
    for (int i = 0; i < 12; i++)
        x[i] = (float)i / 6 - 1;
    CHECK(w1 && w2 && model_forward(m1, w1, x, 4, y1, &e) == 0 &&
          model_forward(back, w2, x, 4, y2, &e) == 0);
    CHECK(memcmp(y1, y2, sizeof y1) == 0);
    /* Saving over an existing model replaces it. */
    CHECK(model_save(m3, c, &e) == 0);
    model_free(back);
    back = model_load(c, &e);
    CHECK(back && memcmp(model_params(m3), model_params(back), 26 * sizeof(float)) == 0);

    /* A missing directory, a directory without model.json, a model.json that is a directory,
     * a corrupt weights file: each an error that names what is wrong. */
    snprintf(c, sizeof c, "%s/none", root);
    expect_dir_fails(c, INF_ENOTFOUND, "model.json");
    snprintf(c, sizeof c, "%s/out", root);
    expect_dir_fails(c, INF_ENOTFOUND, "model.json");
    snprintf(c, sizeof c, "%s/dir/model.json", root);
    CHECK(fs_mkdir_p(c, 0755, &e) == 0);
    snprintf(c, sizeof c, "%s/dir", root);
    expect_dir_fails(c, INF_EINVAL, "model.json: not a regular file");
    write_file(a, "weights.safetensors", "\x10\0\0\0\0\0\0\0{}", 10);
    expect_dir_fails(a, INF_EINVAL,
                     "weights.safetensors: safetensors header length 16 goes beyond");
    write_config(b, "{'task':'regression'}");
    expect_dir_fails(b, INF_EINVAL, "model.json: input: missing");
out:
    model_workspace_free(w1);
    model_workspace_free(w2);
    model_free(m1);
    model_free(m2);
    model_free(m3);
    model_free(back);
    CHECK(fs_remove_tree(root) == 0);
}

int main(void)
{
    RUN(test_bad_configs);
    RUN(test_hostile_json);
    RUN(test_defaults);
    RUN(test_shapes);
    RUN(test_bad_weights);
    RUN(test_weight_dtypes);
    RUN(test_directories);
    return test_finish();
}
