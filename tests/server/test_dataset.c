/*
 * tests/server/test_dataset.c - the JSONL fast path of training files against jansson: for
 * thousands of random files, valid and broken (numbers in every JSON form, nested and flat
 * inputs, extra fields holding their own "input" keys, escaped keys, duplicates, ragged or
 * non-numeric arrays, values beyond FP32, bad labels), dataset_parse_jsonl gives the same
 * status, the same message and bit-identical rows as dataset_parse_jsonl_reference, and
 * file_validate_training the same verdict, message and count as its reference. Plus exact
 * values for hand-written lines.
 */
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "server/dataset.h"
#include "server/files.h"
#include "tests/test.h"

static const char *const CLF =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [1, 2, 3]},"
    " \"labels\": [\"a\", \"b\", \"c\"],"
    " \"layers\": [{\"type\": \"Flatten\"},"
    "              {\"type\": \"Linear\", \"in_features\": 6, \"out_features\": 3}]}";
static const char *const REG =
    "{\"format\": 1, \"task\": \"regression\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [3],"
    "            \"preprocess\": {\"mean\": [1, 2, 3], \"std\": [2, 2, 2]}},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 3, \"out_features\": 2}]}";
static const char *const REG_PLAIN =
    "{\"format\": 1, \"task\": \"regression\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"FP32\", \"shape\": [3]},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 3, \"out_features\": 2}]}";
static const char *const U8 =
    "{\"format\": 1, \"task\": \"classification\","
    " \"input\": {\"name\": \"input\", \"datatype\": \"UINT8\", \"shape\": [6]},"
    " \"layers\": [{\"type\": \"Linear\", \"in_features\": 6, \"out_features\": 2}]}";

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static unsigned below(unsigned n)
{
    return (unsigned)(next() % n);
}

struct buf {
    char s[1 << 16];
    size_t n;
};
static void put(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b->s + b->n, sizeof b->s - b->n, fmt, ap);
    va_end(ap);
    if (w > 0 && (size_t)w < sizeof b->s - b->n)
        b->n += (size_t)w;
}

/* One JSON number in a random form (valid JSON unless bad). */
static void number(struct buf *b, bool bad)
{
    static const char *const odd[] = {"-0",
                                      "0.0",
                                      "-0.0",
                                      "1e0",
                                      "1E+2",
                                      "-2.5e-3",
                                      "1e-45",
                                      "3.4028234663852886e38",
                                      "0.1",
                                      "16",
                                      "123456789012345678",
                                      "9007199254740993",
                                      "1.00000017881393432617187499",
                                      "5e-324",
                                      "-1e-400"};
    static const char *const broken[] = {
        "+1",   "012",   ".5",   "5.",    "NaN",  "Infinity", "0x10",
        "1e39", "-1e39", "1.5x", "\"3\"", "true", "null",     "99999999999999999999",
        "[]",   "{}"};
    if (bad) {
        put(b, "%s", broken[below(sizeof broken / sizeof broken[0])]);
        return;
    }
    switch (below(4)) {
        case 0:
            put(b, "%d", (int)below(33) - 16);
            break;
        case 1:
            put(b, "%.*g", 1 + (int)below(17),
                ((double)(next() >> 11) / 9007199254740992.0 - 0.5) * 100);
            break;
        case 2:
            put(b, "%de%d", (int)below(2000) - 1000, (int)below(80) - 40);
            break;
        default:
            put(b, "%s", odd[below(sizeof odd / sizeof odd[0])]);
    }
}

static void ws(struct buf *b)
{
    static const char *const w[] = {"", "", " ", "  ", "\t"};
    put(b, "%s", w[below(5)]);
}

/* The input tensor: 6 numbers flat or as [1][2][3] (or a broken variant). */
static void input_tensor(struct buf *b, size_t count, bool nested, int bad)
{
    /* bad: 0 none, 1 a bad number, 2 ragged, 3 wrong count, 4 empty, 5 a string input */
    if (bad == 4) {
        put(b, "[]");
        return;
    }
    if (bad == 5) {
        put(b, "\"text\"");
        return;
    }
    size_t n = bad == 3 ? count + 1 : count;
    size_t badi = bad == 1 ? below((unsigned)n) : (size_t)-1;
    put(b, "[");
    if (nested && count == 6) { /* [1][2][3]: the outer "[" above, one more here */
        put(b, "[");
        for (int r = 0; r < 2; r++) {
            put(b, r ? ", [" : "[");
            int cols = bad == 2 && r == 1 ? 2 : 3;
            for (int c = 0; c < cols; c++) {
                if (c)
                    put(b, ",");
                ws(b);
                number(b, (size_t)(r * 3 + c) == badi);
            }
            put(b, "]");
        }
        put(b, "]");
    } else {
        for (size_t i = 0; i < n; i++) {
            if (i)
                put(b, ",");
            ws(b);
            if (bad == 2 && i == 1)
                put(b, "[1]");
            else
                number(b, i == badi);
        }
    }
    put(b, "]");
}

/* One line for the classifier (reg false) or the regressor; broken now and then. */
static void line(struct buf *b, bool reg, bool allow_bad)
{
    int bad = allow_bad && below(8) == 0 ? 1 + (int)below(12) : 0;
    const char *key = bad == 6 ? "\"\\u0069nput\"" : "\"input\"";
    put(b, "{");
    ws(b);
    if (below(3) == 0)
        put(b, "\"metadata\": {\"input\": [1, 2], \"note\": \"x\\\"y\"}, ");
    bool input_first = below(2) == 0;
    if (input_first && bad != 11) {
        put(b, "%s:", key);
        ws(b);
        input_tensor(b, reg ? 3 : 6, !reg && below(2), bad >= 1 && bad <= 5 ? bad : 0);
        put(b, ", ");
    }
    if (bad == 7)
        put(b, "\"input\": [1, 2, 3, 4, 5, 6], ");
    if (reg) {
        if (bad == 8) {
            put(b, "\"label\": 1");
        } else if (below(2)) {
            put(b, "\"target\": ");
            number(b, bad == 9);
        } else {
            put(b, "\"target\": [");
            number(b, bad == 9);
            put(b, ", ");
            number(b, false);
            put(b, "]");
        }
        put(b, "]");
    } else {
        static const char *const labels[] = {"0", "2", "\"a\"", "\"c\"", "1"};
        static const char *const badl[] = {"3", "-1", "\"z\"", "1.5", "null"};
        put(b, "\"label\": %s", bad == 8 ? badl[below(5)] : labels[below(5)]);
    }
    if (bad == 10)
        put(b, ", \"colour\": 1");
    if (below(4) == 0)
        put(b, ", \"id\": \"r%u\", \"weight\": 1", below(1000));
    if (!input_first && bad != 11) {
        put(b, ", %s:", key);
        ws(b);
        input_tensor(b, reg ? 3 : 6, !reg && below(2), bad >= 1 && bad <= 5 ? bad : 0);
    }
    ws(b);
    put(b, bad == 12 ? "} x" : "}");
}

static bool same_dataset(const struct model_dataset *a, const struct model_dataset *b)
{
    if (a->n != b->n || a->x_dim != b->x_dim || a->y_dim != b->y_dim)
        return false;
    if (memcmp(a->x, b->x, a->n * a->x_dim * sizeof(float)) != 0)
        return false;
    if ((a->labels == NULL) != (b->labels == NULL) ||
        (a->labels && memcmp(a->labels, b->labels, a->n * sizeof *a->labels) != 0))
        return false;
    if ((a->targets == NULL) != (b->targets == NULL) ||
        (a->targets && memcmp(a->targets, b->targets, a->n * a->y_dim * sizeof(float)) != 0))
        return false;
    return true;
}

static struct model *load(const char *cfg)
{
    struct err e = {0};
    struct model *m = model_load_buffers(cfg, strlen(cfg), NULL, 0, &e);
    CHECK_MSG(m != NULL, "%s", e.msg);
    return m;
}

static void compare(const struct model *m, const struct buf *f, int *fails)
{
    struct model_dataset a = {0}, r = {0};
    struct err ea = {0}, er = {0};
    int ra = dataset_parse_jsonl(m, f->s, f->n, NULL, NULL, &a, &ea);
    int rr = dataset_parse_jsonl_reference(m, f->s, f->n, NULL, NULL, &r, &er);
    bool ok = ra == rr && strcmp(ea.msg, er.msg) == 0 && (ra != INF_OK || same_dataset(&a, &r));
    if (!ok && (*fails)++ < 3)
        fprintf(stderr, "dataset differs: fast %d \"%s\", reference %d \"%s\" on:\n%.*s\n", ra,
                ea.msg, rr, er.msg, (int)f->n, f->s);
    CHECK(ok);
    if (ra == INF_OK)
        model_dataset_deinit(&a);
    if (rr == INF_OK)
        model_dataset_deinit(&r);

    struct file_limits lim = {1 << 20, 1000, 4096};
    size_t na = 0, nr = 0;
    struct err fa = {0}, fr = {0};
    int va = file_validate_training(f->s, f->n, &lim, &na, &fa);
    int vr = file_validate_training_reference(f->s, f->n, &lim, &nr, &fr);
    ok = va == vr && strcmp(fa.msg, fr.msg) == 0 && na == nr;
    if (!ok && (*fails)++ < 3)
        fprintf(stderr,
                "validation differs: fast %d \"%s\" (%zu), reference %d \"%s\" (%zu) on:\n%.*s\n",
                va, fa.msg, na, vr, fr.msg, nr, (int)f->n, f->s);
    CHECK(ok);
}

static void test_random_files_match_jansson(void)
{
    struct model *clf = load(CLF), *reg = load(REG), *u8 = load(U8);
    if (clf == NULL || reg == NULL || u8 == NULL)
        return;
    int fails = 0, errors = 0;
    static struct buf f;
    for (int k = 0; k < 3000; k++) {
        bool is_reg = k % 3 == 1;
        f.n = 0;
        int lines = 1 + (int)below(12);
        bool allow_bad = k % 2 == 0;
        for (int i = 0; i < lines; i++) {
            line(&f, is_reg, allow_bad);
            put(&f, below(10) == 0 ? "\r\n\n" : "\n");
        }
        const struct model *m = is_reg ? reg : (k % 3 == 2 ? u8 : clf);
        struct model_dataset d = {0};
        struct err e = {0};
        if (dataset_parse_jsonl(m, f.s, f.n, NULL, NULL, &d, &e) == INF_OK)
            model_dataset_deinit(&d);
        else
            errors++;
        compare(m, &f, &fails);
    }
    /* Both kinds were exercised. */
    CHECK_MSG(errors > 300 && errors < 2700, "%d of 3000 files were rejected", errors);
    model_free(clf);
    model_free(reg);
    model_free(u8);
}

static void test_exact_values(void)
{
    struct model *reg = load(REG_PLAIN);
    if (reg == NULL)
        return;
    const char *text =
        "{\"input\": [1e0, -0, 0.1], \"target\": [1, 2]}\n"
        "{\"target\": [3, 4], \"input\": [9007199254740993, 1.00000017881393432617187499, "
        "-0.0]}\n";
    struct model_dataset d = {0};
    struct err e = {0};
    CHECK(dataset_parse_jsonl(reg, text, strlen(text), NULL, NULL, &d, &e) == INF_OK);
    if (d.n == 2) {
        const float want[6] = {
            1.0f, 0.0f, (float)0.1, (float)9007199254740993.0, (float)1.00000017881393432617187499,
            -0.0f};
        CHECK(memcmp(d.x, want, sizeof want) == 0); /* bits: -0 is +0, -0.0 is -0.0 */
        CHECK(d.targets[0] == 1.0f && d.targets[3] == 4.0f);
        model_dataset_deinit(&d);
    }
    /* An error keeps jansson's wording and the line number. */
    const char *bad = "{\"input\": [1, 2, 3], \"target\": [1, 1]}\n\n"
                      "{\"input\": [1, 2, 1e39], \"target\": [1, 1]}\n";
    CHECK(dataset_parse_jsonl(reg, bad, strlen(bad), NULL, NULL, &d, &e) == INF_EINVAL);
    CHECK_MSG(strstr(e.msg, "line 3: input[2]") != NULL, "%s", e.msg);
    model_free(reg);
}

int main(void)
{
    RUN(test_exact_values);
    RUN(test_random_files_match_jansson);
    return test_finish();
}
