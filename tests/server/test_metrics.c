/*
 * tests/server/test_metrics.c - the Prometheus registry: exact values after known
 * observations, the text format parsed line by line (HELP/TYPE once per family, families
 * sorted, histograms cumulative with +Inf, _count and _sum), label escaping, the series cap,
 * process metrics, invalid input dropped, and exact totals under 8 concurrent threads.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "server/metrics.h"
#include "tests/test.h"

/* ------------------------------------------------------------------------------------------
 * A strict parser for the text format
 * ---------------------------------------------------------------------------------------- */

#define MAXL 4

struct sample {
    char name[160];
    size_t n_labels;
    char keys[MAXL][32];
    char vals[MAXL][300]; /* unescaped */
    double value;
    size_t fam; /* index into parsed.fams */
};

struct fam {
    char name[160];
    char type[16];
    char help[256];
};

struct parsed {
    struct sample *s;
    size_t n, cap;
    struct fam *fams;
    size_t n_fams, cap_fams;
    bool ok; /* every line well-formed */
};

static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return p;
    *cap = *cap ? *cap * 2 : 64;
    p = realloc(p, *cap * size);
    if (p == NULL) {
        fprintf(stderr, "out of memory in test\n");
        exit(1);
    }
    return p;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Parses one sample line [p, end) into out; false if malformed. */
static bool parse_sample(const char *p, const char *end, struct sample *out)
{
    memset(out, 0, sizeof *out);
    size_t n = 0;
    while (p < end && *p != '{' && *p != ' ' && n + 1 < sizeof out->name)
        out->name[n++] = *p++;
    if (p == end || n == 0)
        return false;
    if (*p == '{') {
        p++;
        while (p < end && *p != '}') {
            if (out->n_labels == MAXL)
                return false;
            size_t k = 0, v = 0;
            while (p < end && *p != '=' && k + 1 < sizeof out->keys[0])
                out->keys[out->n_labels][k++] = *p++;
            if (p + 1 >= end || p[0] != '=' || p[1] != '"')
                return false;
            p += 2;
            char *val = out->vals[out->n_labels];
            while (p < end && *p != '"' && v + 1 < sizeof out->vals[0]) {
                if (*p == '\n')
                    return false;
                if (*p == '\\') {
                    p++;
                    if (p == end || (*p != '\\' && *p != '"' && *p != 'n'))
                        return false;
                    val[v++] = *p == 'n' ? '\n' : *p;
                    p++;
                } else {
                    val[v++] = *p++;
                }
            }
            if (p == end || *p != '"')
                return false;
            p++;
            out->n_labels++;
            if (p < end && *p == ',')
                p++;
        }
        if (p == end)
            return false;
        p++;
    }
    if (p == end || *p != ' ')
        return false;
    p++;
    char num[64];
    size_t len = (size_t)(end - p);
    if (len == 0 || len >= sizeof num)
        return false;
    memcpy(num, p, len);
    num[len] = '\0';
    char *stop;
    out->value = strtod(num, &stop);
    return *stop == '\0';
}

/* Does sample name belong to family f (of its type)? */
static bool sample_in_family(const char *name, const struct fam *f)
{
    char want[200];
    if (strcmp(f->type, "histogram") != 0)
        return strcmp(name, f->name) == 0;
    const char *suffixes[] = {"_bucket", "_sum", "_count"};
    for (int i = 0; i < 3; i++) {
        snprintf(want, sizeof want, "%s%s", f->name, suffixes[i]);
        if (strcmp(name, want) == 0)
            return true;
    }
    return false;
}

/* Orders series of one family by their label values, as the renderer promises. */
static int labels_cmp(const struct sample *a, const struct sample *b)
{
    for (size_t i = 0; i < a->n_labels && i < b->n_labels; i++) {
        int c = strcmp(a->vals[i], b->vals[i]);
        if (c != 0)
            return c;
    }
    return 0;
}

/* Parses text, CHECKing the line-level rules; the caller frees with parsed_free(). */
static struct parsed parse(const char *text, size_t len)
{
    struct parsed p = {.ok = true};
    CHECK(strlen(text) == len);
    CHECK(len > 0 && text[len - 1] == '\n');
    const char *line = text, *stop = text + len;
    size_t last_plain = SIZE_MAX, last_sum = SIZE_MAX;
    while (line < stop) {
        const char *end = memchr(line, '\n', (size_t)(stop - line));
        if (end == NULL)
            end = stop;
        if (strncmp(line, "# HELP ", 7) == 0) {
            p.fams = grow(p.fams, &p.cap_fams, p.n_fams, sizeof *p.fams);
            struct fam *f = &p.fams[p.n_fams];
            memset(f, 0, sizeof *f);
            const char *sp = memchr(line + 7, ' ', (size_t)(end - line - 7));
            CHECK(sp != NULL && (size_t)(sp - line - 7) < sizeof f->name);
            if (sp == NULL || (size_t)(sp - line - 7) >= sizeof f->name) {
                p.ok = false;
                break;
            }
            memcpy(f->name, line + 7, (size_t)(sp - line - 7));
            size_t hl = (size_t)(end - sp - 1);
            memcpy(f->help, sp + 1, hl < sizeof f->help ? hl : sizeof f->help - 1);
            /* Strictly increasing names: sorted, and each family's HELP appears once. */
            CHECK_MSG(p.n_fams == 0 || strcmp(p.fams[p.n_fams - 1].name, f->name) < 0,
                      "family %s out of order or repeated", f->name);
            p.n_fams++;
            last_plain = last_sum = SIZE_MAX;
        } else if (strncmp(line, "# TYPE ", 7) == 0) {
            CHECK(p.n_fams > 0);
            if (p.n_fams == 0) {
                p.ok = false;
                break;
            }
            struct fam *f = &p.fams[p.n_fams - 1];
            size_t nl = strlen(f->name);
            bool named = strncmp(line + 7, f->name, nl) == 0 && line[7 + nl] == ' ';
            CHECK_MSG(named && f->type[0] == '\0', "TYPE of %s misplaced or repeated", f->name);
            size_t tl = named ? (size_t)(end - line - 8 - (long)nl) : 0;
            if (tl < sizeof f->type)
                memcpy(f->type, line + 8 + nl, tl);
            CHECK(strcmp(f->type, "counter") == 0 || strcmp(f->type, "gauge") == 0 ||
                  strcmp(f->type, "histogram") == 0);
        } else {
            p.s = grow(p.s, &p.cap, p.n, sizeof *p.s);
            struct sample *s = &p.s[p.n];
            bool good = parse_sample(line, end, s);
            CHECK_MSG(good, "bad line: %.*s", (int)(end - line), line);
            CHECK(p.n_fams > 0 && p.fams[p.n_fams - 1].type[0] != '\0');
            if (!good || p.n_fams == 0) {
                p.ok = false;
                break;
            }
            s->fam = p.n_fams - 1;
            /* Series sorted by label values: compare with the previous one of this name. */
            bool hist = strcmp(p.fams[s->fam].type, "histogram") == 0;
            size_t *prev = !hist ? &last_plain : ends_with(s->name, "_sum") ? &last_sum : NULL;
            if (prev != NULL) {
                CHECK_MSG(*prev == SIZE_MAX || labels_cmp(&p.s[*prev], s) < 0,
                          "%s series not sorted", s->name);
                *prev = p.n;
            }
            CHECK_MSG(sample_in_family(s->name, &p.fams[s->fam]), "%s outside family %s", s->name,
                      p.fams[s->fam].name);
            if (strcmp(p.fams[s->fam].type, "counter") == 0)
                CHECK(ends_with(s->name, "_total"));
            p.n++;
        }
        line = end + 1;
    }
    return p;
}

static void parsed_free(struct parsed *p)
{
    free(p->s);
    free(p->fams);
}

/* Same labels, ignoring le. */
static bool same_series(const struct sample *a, const struct sample *b)
{
    size_t i = 0, j = 0;
    for (;; i++, j++) {
        while (i < a->n_labels && strcmp(a->keys[i], "le") == 0)
            i++;
        while (j < b->n_labels && strcmp(b->keys[j], "le") == 0)
            j++;
        if (i == a->n_labels || j == b->n_labels)
            return i == a->n_labels && j == b->n_labels;
        if (strcmp(a->keys[i], b->keys[j]) != 0 || strcmp(a->vals[i], b->vals[j]) != 0)
            return false;
    }
}

/*
 * Every histogram series: buckets with increasing le and non-decreasing counts, ending in
 * le="+Inf", then _sum and _count of the same labels, _count equal to the +Inf bucket.
 * Returns the number of histogram series seen.
 */
static size_t check_histograms(const struct parsed *p)
{
    size_t series = 0;
    for (size_t i = 0; i < p->n;) {
        if (!ends_with(p->s[i].name, "_bucket")) {
            i++;
            continue;
        }
        series++;
        size_t j = i;
        double prev_le = -INFINITY, prev_count = 0, inf_count = -1;
        for (; j < p->n && ends_with(p->s[j].name, "_bucket") && same_series(&p->s[i], &p->s[j]);
             j++) {
            const struct sample *b = &p->s[j];
            const char *le = NULL;
            for (size_t k = 0; k < b->n_labels; k++)
                if (strcmp(b->keys[k], "le") == 0)
                    le = b->vals[k];
            CHECK(le != NULL && b->n_labels > 0 && strcmp(b->keys[b->n_labels - 1], "le") == 0);
            double bound = le ? strtod(le, NULL) : NAN;
            CHECK_MSG(bound > prev_le, "le %s not increasing in %s", le ? le : "?", b->name);
            CHECK_MSG(b->value >= prev_count, "bucket counts not cumulative in %s", b->name);
            CHECK(inf_count < 0); /* nothing after +Inf */
            if (le != NULL && strcmp(le, "+Inf") == 0)
                inf_count = b->value;
            prev_le = bound;
            prev_count = b->value;
        }
        CHECK_MSG(inf_count >= 0, "no +Inf bucket in %s", p->s[i].name);
        CHECK(j + 1 < p->n && ends_with(p->s[j].name, "_sum") && same_series(&p->s[i], &p->s[j]));
        CHECK(j + 1 < p->n && ends_with(p->s[j + 1].name, "_count") &&
              same_series(&p->s[i], &p->s[j + 1]) && p->s[j + 1].value == inf_count);
        i = j + 2;
    }
    return series;
}

/* The value of name{k1="v1",...} given as NULL-terminated key, value pairs (in rendered
 * order); NAN if absent or present more than once. */
static double get(const struct parsed *p, const char *name, ...)
{
    const char *kv[2 * MAXL];
    size_t n = 0;
    va_list ap;
    va_start(ap, name);
    for (const char *k; n < 2 * MAXL && (k = va_arg(ap, const char *)) != NULL; n += 2) {
        kv[n] = k;
        kv[n + 1] = va_arg(ap, const char *);
    }
    va_end(ap);
    double found = NAN;
    int hits = 0;
    for (size_t i = 0; i < p->n; i++) {
        const struct sample *s = &p->s[i];
        if (strcmp(s->name, name) != 0 || s->n_labels != n / 2)
            continue;
        bool match = true;
        for (size_t j = 0; match && j < n / 2; j++)
            match = strcmp(s->keys[j], kv[2 * j]) == 0 && strcmp(s->vals[j], kv[2 * j + 1]) == 0;
        if (match) {
            found = s->value;
            hits++;
        }
    }
    return hits == 1 ? found : NAN;
}

static const char *family_type(const struct parsed *p, const char *name)
{
    for (size_t i = 0; i < p->n_fams; i++)
        if (strcmp(p->fams[i].name, name) == 0)
            return p->fams[i].type;
    return "";
}

static size_t count_samples(const struct parsed *p, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++)
        n += strcmp(p->s[i].name, name) == 0;
    return n;
}

/* Renders m, parses and checks the format; *text (if not NULL) receives the raw text. */
static struct parsed render(struct metrics *m, char **text)
{
    size_t len = 0;
    char *t = metrics_render(m, &len);
    CHECK(t != NULL);
    struct parsed p = t ? parse(t, len) : (struct parsed){0};
    CHECK(p.ok);
    check_histograms(&p);
    if (text != NULL)
        *text = t;
    else
        free(t);
    return p;
}

/* ------------------------------------------------------------------------------------------
 * Tests
 * ---------------------------------------------------------------------------------------- */

static void test_null_and_fresh(void)
{
    metrics_free(NULL);
    metrics_observe_request(NULL, "/x", "GET", 200, 0.1, 1, 1);
    metrics_observe_batch(NULL, "m", 1);
    metrics_queue_add(NULL, "m", 1);
    metrics_reject(NULL, "queue_full");
    metrics_set_models(NULL, 1, 1);
    metrics_observe_load(NULL, "m", true);
    metrics_counter_add(NULL, "c", "h", NULL, NULL, 1);
    metrics_gauge_set(NULL, "g", "h", NULL, NULL, 1);
    metrics_histogram_observe(NULL, "h", "h", (const double[]){1}, 1, 1);
    size_t len = 12345;
    CHECK(metrics_render(NULL, &len) == NULL && len == 12345);

    struct metrics *m = metrics_new(NULL);
    CHECK(m != NULL);
    if (m == NULL)
        return;
    char *t = metrics_render(m, NULL); /* len is optional */
    CHECK(t != NULL && strlen(t) > 0);
    free(t);
    struct parsed p = render(m, NULL);
    CHECK(get(&p, "infera_build_info", "version", "unknown", NULL) == 1);
    CHECK(get(&p, "infera_models_loaded", NULL) == 0);
    CHECK(get(&p, "infera_models_failed", NULL) == 0);
    /* Labelled families without series still announce themselves. */
    const char *types[][2] = {
        {"infera_http_requests_total", "counter"},
        {"infera_http_request_duration_seconds", "histogram"},
        {"infera_http_request_bytes_total", "counter"},
        {"infera_http_response_bytes_total", "counter"},
        {"infera_inference_batch_size", "histogram"},
        {"infera_batcher_queue_depth", "gauge"},
        {"infera_rejections_total", "counter"},
        {"infera_models_loaded", "gauge"},
        {"infera_models_failed", "gauge"},
        {"infera_model_loads_total", "counter"},
        {"process_resident_memory_bytes", "gauge"},
        {"process_open_fds", "gauge"},
        {"process_start_time_seconds", "gauge"},
        {"infera_build_info", "gauge"},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        CHECK_MSG(strcmp(family_type(&p, types[i][0]), types[i][1]) == 0, "%s is not a %s",
                  types[i][0], types[i][1]);
    CHECK(p.n_fams == sizeof types / sizeof types[0]);
    parsed_free(&p);
    metrics_free(m);
}

static void test_requests(void)
{
    struct metrics *m = metrics_new("1.2.3");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    const char *infer = "/v2/models/{m}/infer";
    metrics_observe_request(m, infer, "POST", 200, 0.001, 100, 10);
    metrics_observe_request(m, infer, "POST", 200, 0.02, 200, 20);
    metrics_observe_request(m, infer, "POST", 200, 3.0, 300, 30);
    metrics_observe_request(m, infer, "POST", 503, 0.0002, 50, 5);
    metrics_observe_request(m, "other", "GET", 404, -1.0, 0, 9); /* clock step: counts as 0 */
    metrics_observe_request(m, NULL, NULL, 42, 20.0, 0, 0);
    struct parsed p = render(m, NULL);
    const char *R = "infera_http_requests_total";
    CHECK(get(&p, R, "route", infer, "method", "POST", "code", "200", NULL) == 3);
    CHECK(get(&p, R, "route", infer, "method", "POST", "code", "503", NULL) == 1);
    CHECK(get(&p, R, "route", "other", "method", "GET", "code", "404", NULL) == 1);
    CHECK(get(&p, R, "route", "other", "method", "other", "code", "other", NULL) == 1);
    CHECK(count_samples(&p, R) == 4);

    const char *B = "infera_http_request_duration_seconds_bucket";
    /* le is inclusive: 0.001 lands in le="0.001". */
    double want[][2] = {{0.0001, 0}, {0.00025, 1}, {0.0005, 1}, {0.001, 2}, {0.0025, 2},
                        {0.01, 2},   {0.025, 3},   {2.5, 3},    {5, 4},     {10, 4}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        char le[32];
        snprintf(le, sizeof le, "%g", want[i][0]);
        CHECK_MSG(get(&p, B, "route", infer, "le", le, NULL) == want[i][1], "le=%s", le);
    }
    CHECK(get(&p, B, "route", infer, "le", "+Inf", NULL) == 4);
    CHECK(get(&p, "infera_http_request_duration_seconds_count", "route", infer, NULL) == 4);
    CHECK_NEAR(get(&p, "infera_http_request_duration_seconds_sum", "route", infer, NULL),
               0.001 + 0.02 + 3.0 + 0.0002, 1e-12);
    CHECK(get(&p, B, "route", "other", "le", "0.0001", NULL) == 1); /* the -1 s request */
    CHECK(get(&p, B, "route", "other", "le", "10", NULL) == 1);
    CHECK(get(&p, B, "route", "other", "le", "+Inf", NULL) == 2);
    CHECK(get(&p, "infera_http_request_duration_seconds_sum", "route", "other", NULL) == 20);
    CHECK(count_samples(&p, B) == 2 * 17);
    CHECK(get(&p, "infera_http_request_bytes_total", "route", infer, NULL) == 650);
    CHECK(get(&p, "infera_http_response_bytes_total", "route", infer, NULL) == 65);
    CHECK(get(&p, "infera_http_response_bytes_total", "route", "other", NULL) == 9);
    CHECK(get(&p, "infera_build_info", "version", "1.2.3", NULL) == 1);
    parsed_free(&p);
    metrics_free(m);
}

static void test_models_and_batches(void)
{
    struct metrics *m = metrics_new("v");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    size_t sizes[] = {1, 3, 4, 1024, 2000, 0};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        metrics_observe_batch(m, "digits", sizes[i]);
    metrics_queue_add(m, "digits", 5);
    metrics_queue_add(m, "digits", -2);
    metrics_queue_add(m, "iris", 1);
    metrics_queue_add(m, "iris", -1);
    metrics_reject(m, "queue_full");
    metrics_reject(m, "queue_full");
    metrics_reject(m, "draining");
    metrics_set_models(m, 3, 1);
    metrics_set_models(m, 4, 0);
    metrics_observe_load(m, "iris", false); /* first seen, rendered second */
    metrics_observe_load(m, "digits", true);
    metrics_observe_load(m, "digits", true);
    /* Values that are prefixes of one another, first seen in no particular order. */
    const char *reasons[] = {"queue_full", "", "queue", "q", "queue_fullx", "b", "a\xc3\xa9"};
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        for (size_t k = 0; k <= i; k++)
            metrics_reject(m, reasons[i]);
    struct parsed p = render(m, NULL);
    for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
        CHECK_MSG(get(&p, "infera_rejections_total", "reason", reasons[i], NULL) ==
                      (double)(i + 1) + (i == 0 ? 2 : 0),
                  "reason \"%s\"", reasons[i]);
    CHECK(count_samples(&p, "infera_rejections_total") == 8);
    const char *B = "infera_inference_batch_size_bucket";
    CHECK(get(&p, B, "model", "digits", "le", "1", NULL) == 2); /* 0 and 1 */
    CHECK(get(&p, B, "model", "digits", "le", "2", NULL) == 2);
    CHECK(get(&p, B, "model", "digits", "le", "4", NULL) == 4);
    CHECK(get(&p, B, "model", "digits", "le", "512", NULL) == 4);
    CHECK(get(&p, B, "model", "digits", "le", "1024", NULL) == 5);
    CHECK(get(&p, B, "model", "digits", "le", "+Inf", NULL) == 6);
    CHECK(count_samples(&p, B) == 12);
    CHECK(get(&p, "infera_inference_batch_size_sum", "model", "digits", NULL) == 3032);
    CHECK(get(&p, "infera_inference_batch_size_count", "model", "digits", NULL) == 6);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", "digits", NULL) == 3);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", "iris", NULL) == 0);
    CHECK(get(&p, "infera_rejections_total", "reason", "draining", NULL) == 1);
    CHECK(get(&p, "infera_models_loaded", NULL) == 4);
    CHECK(get(&p, "infera_models_failed", NULL) == 0);
    const char *L = "infera_model_loads_total";
    CHECK(get(&p, L, "model", "digits", "result", "success", NULL) == 2);
    CHECK(get(&p, L, "model", "iris", "result", "failure", NULL) == 1);
    CHECK(count_samples(&p, L) == 2);
    /* Series come out sorted by label values whatever the order of first sight. */
    size_t first_digits = p.n, first_iris = p.n;
    for (size_t i = 0; i < p.n; i++) {
        if (strcmp(p.s[i].name, L) == 0 && strcmp(p.s[i].vals[0], "digits") == 0)
            first_digits = first_digits < i ? first_digits : i;
        if (strcmp(p.s[i].name, L) == 0 && strcmp(p.s[i].vals[0], "iris") == 0)
            first_iris = first_iris < i ? first_iris : i;
    }
    CHECK(first_digits < first_iris && first_iris < p.n);
    parsed_free(&p);
    metrics_free(m);
}

static void test_generic(void)
{
    struct metrics *m = metrics_new("v");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    const char *A = "infera_auth_failures";
    for (int i = 0; i < 3; i++)
        metrics_counter_add(m, A, "Auth failures by reason.", "reason", "bad_key", 1);
    metrics_counter_add(m, "infera_auth_failures_total", NULL, "reason", "expired", 2.5);
    metrics_counter_add(m, A, NULL, "reason", "expired", -1);       /* counters only go up */
    metrics_counter_add(m, A, NULL, "reason", "expired", NAN);      /* dropped */
    metrics_counter_add(m, A, NULL, "reason", "expired", INFINITY); /* dropped */
    metrics_counter_add(m, A, NULL, "why", "expired", 1);           /* other label key */
    metrics_counter_add(m, A, NULL, NULL, NULL, 1);                 /* unlabelled */
    metrics_gauge_set(m, "infera_auth_failures_total", NULL, "reason", "x", 1); /* a counter */
    metrics_counter_add(m, "infera_audit_records", "Audit records\nwritten \\ flushed.", NULL, NULL,
                        7);
    metrics_counter_add(m, "bad name", NULL, NULL, NULL, 1);
    metrics_counter_add(m, "9starts_with_digit", NULL, NULL, NULL, 1);
    metrics_counter_add(m, "infera_x", NULL, "__reserved", "v", 1);
    metrics_counter_add(m, "infera_y", NULL, "bad-key", "v", 1);
    metrics_counter_add(m, "infera_http_requests", NULL, NULL, NULL, 1); /* built-in, 3 labels */
    metrics_gauge_set(m, "infera_jobs", "Training jobs by status.", "status", "running", 2);
    metrics_gauge_set(m, "infera_jobs", NULL, "status", "running", 5);
    metrics_gauge_set(m, "infera_jobs", NULL, "status", "queued", -1.5);
    metrics_gauge_set(m, "infera_jobs", NULL, "status", "queued", NAN); /* dropped */
    metrics_gauge_set(m, "infera:ratio", NULL, NULL, NULL, 0.5);        /* recording-rule style */
    const double fsync_b[] = {0.001, 0.01, 0.1};
    const double vals[] = {0.0005, 0.005, 0.05, 0.5, 0.01};
    for (size_t i = 0; i < 5; i++)
        metrics_histogram_observe(m, "infera_audit_fsync_seconds", "fsync latency.", fsync_b, 3,
                                  vals[i]);
    metrics_histogram_observe(m, "infera_audit_fsync_seconds", NULL, NULL, 0, 0.02);
    metrics_histogram_observe(m, "infera_audit_fsync_seconds", NULL, NULL, 0, NAN);
    const double bad_b[] = {0.1, 0.1};
    metrics_histogram_observe(m, "infera_bad_hist", NULL, bad_b, 2, 1);
    metrics_histogram_observe(m, "infera_no_buckets", NULL, NULL, 0, 1);
    metrics_histogram_observe(m, "infera_jobs", NULL, fsync_b, 3, 1); /* a gauge */

    char *text = NULL;
    struct parsed p = render(m, &text);
    const char *AT = "infera_auth_failures_total";
    CHECK(strcmp(family_type(&p, AT), "counter") == 0);
    CHECK(get(&p, AT, "reason", "bad_key", NULL) == 3);
    CHECK(get(&p, AT, "reason", "expired", NULL) == 2.5);
    CHECK(count_samples(&p, AT) == 2);
    CHECK(get(&p, "infera_audit_records_total", NULL) == 7);
    CHECK(
        text != NULL &&
        strstr(text, "# HELP infera_audit_records_total Audit records\\nwritten \\\\ flushed.\n"));
    CHECK(text != NULL && strstr(text, "# HELP infera_auth_failures_total Auth failures by "
                                       "reason.\n# TYPE infera_auth_failures_total counter\n"));
    CHECK(get(&p, "infera_jobs", "status", "running", NULL) == 5);
    CHECK(get(&p, "infera_jobs", "status", "queued", NULL) == -1.5);
    CHECK(strcmp(family_type(&p, "infera_jobs"), "gauge") == 0);
    CHECK(get(&p, "infera:ratio", NULL) == 0.5);
    const char *F = "infera_audit_fsync_seconds";
    CHECK(strcmp(family_type(&p, F), "histogram") == 0);
    CHECK(get(&p, "infera_audit_fsync_seconds_bucket", "le", "0.001", NULL) == 1);
    CHECK(get(&p, "infera_audit_fsync_seconds_bucket", "le", "0.01", NULL) == 3);
    CHECK(get(&p, "infera_audit_fsync_seconds_bucket", "le", "0.1", NULL) == 5);
    CHECK(get(&p, "infera_audit_fsync_seconds_bucket", "le", "+Inf", NULL) == 6);
    CHECK(get(&p, "infera_audit_fsync_seconds_count", NULL) == 6);
    CHECK_NEAR(get(&p, "infera_audit_fsync_seconds_sum", NULL), 0.5855, 1e-12);
    const char *absent[] = {"9starts_with_digit_total", "infera_x_total",
                            "infera_y_total",           "infera_bad_hist",
                            "infera_no_buckets",        "infera_http_requests"};
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        CHECK_MSG(family_type(&p, absent[i])[0] == '\0', "%s registered", absent[i]);
    CHECK(text != NULL && strstr(text, "bad name") == NULL);
    CHECK(count_samples(&p, "infera_http_requests_total") == 0);
    CHECK(p.n_fams == 14 + 5);
    parsed_free(&p);
    free(text);
    metrics_free(m);
}

static void test_escaping_and_truncation(void)
{
    struct metrics *m = metrics_new("v\"1\\\n");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    const char *weird = "we\"ird\\name\nx";
    metrics_queue_add(m, weird, 2);
    metrics_observe_batch(m, weird, 8);
    char longname[300], cut[300];
    memset(longname, 'a', 200);
    longname[200] = '\0';
    memcpy(cut, longname, METRICS_MAX_LABEL_LEN);
    cut[METRICS_MAX_LABEL_LEN] = '\0';
    metrics_queue_add(m, longname, 1);
    longname[150] = 'b'; /* differs after the cut: same series */
    metrics_queue_add(m, longname, 1);
    /* A two-byte character straddling the cut is dropped whole. */
    char utf[300], utf_cut[300];
    memset(utf, 'c', METRICS_MAX_LABEL_LEN - 1);
    memcpy(utf + METRICS_MAX_LABEL_LEN - 1, "\xc3\xa9zzz", 6);
    memcpy(utf_cut, utf, METRICS_MAX_LABEL_LEN - 1);
    utf_cut[METRICS_MAX_LABEL_LEN - 1] = '\0';
    metrics_queue_add(m, utf, 4);

    char *text = NULL;
    struct parsed p = render(m, &text);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", weird, NULL) == 2);
    CHECK(text != NULL && strstr(text, "{model=\"we\\\"ird\\\\name\\nx\"} 2\n") != NULL);
    CHECK(get(&p, "infera_inference_batch_size_bucket", "model", weird, "le", "8", NULL) == 1);
    CHECK(text != NULL &&
          strstr(text, "infera_inference_batch_size_bucket{model=\"we\\\"ird\\\\name\\nx\","
                       "le=\"8\"} 1\n") != NULL);
    CHECK(get(&p, "infera_build_info", "version", "v\"1\\\n", NULL) == 1);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", cut, NULL) == 2);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", utf_cut, NULL) == 4);
    CHECK(count_samples(&p, "infera_batcher_queue_depth") == 3);
    parsed_free(&p);
    free(text);
    metrics_free(m);
}

static void test_series_cap(void)
{
    struct metrics *m = metrics_new("v");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    char name[32];
    for (int i = 0; i < METRICS_MAX_SERIES + 7; i++) {
        snprintf(name, sizeof name, "user-model-%05d", i);
        metrics_queue_add(m, name, 1);
    }
    metrics_queue_add(m, "user-model-00042", 10); /* known series still update */
    metrics_observe_load(m, "late-model", false); /* other families are not affected */
    struct parsed p = render(m, NULL);
    const char *Q = "infera_batcher_queue_depth";
    CHECK(count_samples(&p, Q) == METRICS_MAX_SERIES + 1);
    CHECK(get(&p, Q, "model", "other", NULL) == 7);
    CHECK(get(&p, Q, "model", "user-model-00042", NULL) == 11);
    snprintf(name, sizeof name, "user-model-%05d", METRICS_MAX_SERIES - 1);
    CHECK(get(&p, Q, "model", name, NULL) == 1);
    snprintf(name, sizeof name, "user-model-%05d", METRICS_MAX_SERIES);
    CHECK(isnan(get(&p, Q, "model", name, NULL)));
    CHECK(get(&p, "infera_model_loads_total", "model", "late-model", "result", "failure", NULL) ==
          1);
    parsed_free(&p);
    /* In a two-label family every label value is folded. */
    for (int i = 0; i < METRICS_MAX_SERIES + 2; i++) {
        snprintf(name, sizeof name, "m%d", i);
        metrics_observe_load(m, name, true);
    }
    p = render(m, NULL);
    CHECK(count_samples(&p, "infera_model_loads_total") == METRICS_MAX_SERIES + 1);
    CHECK(get(&p, "infera_model_loads_total", "model", "other", "result", "other", NULL) == 3);
    parsed_free(&p);
    metrics_free(m);
}

/* Open descriptors counted without /proc: fcntl on every number below the limit. */
static int probe_open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 4096; fd++)
        n += fcntl(fd, F_GETFD) != -1;
    return n;
}

/* Entries of /proc/self/fd other than the directory's own descriptor. */
static int list_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    for (const struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] != '.' && strtol(e->d_name, NULL, 10) != dirfd(d);
    closedir(d);
    return n;
}

static void test_process(void)
{
    struct metrics *m = metrics_new("v");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    struct parsed p = render(m, NULL);
    double rss = get(&p, "process_resident_memory_bytes", NULL);
    double fds = get(&p, "process_open_fds", NULL);
    double start = get(&p, "process_start_time_seconds", NULL);
    parsed_free(&p);
    CHECK_MSG(rss > 1e5, "rss %g", rss);
    /* Valgrind's own descriptors show in /proc/self/fd but not to fcntl: hence >= there. */
    CHECK_MSG(fds == list_open_fds() && fds >= probe_open_fds(), "fds %g, listed %d, probed %d",
              fds, list_open_fds(), probe_open_fds());
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    CHECK_MSG(start <= (double)now.tv_sec + 1 && start > (double)now.tv_sec - 600,
              "start %f now %ld", start, (long)now.tv_sec);

    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    p = render(m, NULL);
    CHECK_MSG(get(&p, "process_open_fds", NULL) == fds + 1, "fds %g then %g", fds,
              get(&p, "process_open_fds", NULL));
    CHECK(get(&p, "process_start_time_seconds", NULL) == start);
    parsed_free(&p);
    if (fd >= 0)
        close(fd);
    metrics_free(m);
}

/* ------------------------------------------------------------------------------------------
 * Concurrency: exact totals from 8 threads while a 9th renders
 * ---------------------------------------------------------------------------------------- */

#define THREADS    8
#define PER_THREAD 100000

struct worker {
    struct metrics *m;
    int id;
    atomic_bool *stop;
};

static void *observe_loop(void *arg)
{
    const struct worker *w = arg;
    const char *route = w->id % 2 ? "/v2/models/{m}/infer" : "/v2/health/ready";
    char who[16];
    snprintf(who, sizeof who, "t%d", w->id);
    const double b[] = {0.5, 1};
    for (int i = 0; i < PER_THREAD; i++) {
        metrics_observe_request(w->m, route, "POST", 200, 0.25, 3, 5);
        if (i % 10 == 0) {
            metrics_counter_add(w->m, "infera_test_events", "Test.", "thread", who, 1);
            metrics_histogram_observe(w->m, "infera_test_seconds", "Test.", b, 2, 0.75);
            metrics_queue_add(w->m, "shared", i % 20 == 0 ? 1 : -1);
        }
    }
    return NULL;
}

static void *render_loop(void *arg)
{
    const struct worker *w = arg;
    while (!atomic_load(w->stop)) {
        size_t len;
        free(metrics_render(w->m, &len));
    }
    return NULL;
}

static void test_concurrency(void)
{
    struct metrics *m = metrics_new("v");
    if (m == NULL) {
        CHECK(m != NULL);
        return;
    }
    atomic_bool stop = false;
    pthread_t th[THREADS + 1];
    struct worker w[THREADS + 1];
    for (int i = 0; i <= THREADS; i++) {
        w[i] = (struct worker){m, i, &stop};
        CHECK(pthread_create(&th[i], NULL, i < THREADS ? observe_loop : render_loop, &w[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&stop, true);
    pthread_join(th[THREADS], NULL);

    struct parsed p = render(m, NULL);
    const double half = THREADS / 2 * (double)PER_THREAD;
    const char *routes[] = {"/v2/models/{m}/infer", "/v2/health/ready"};
    for (int r = 0; r < 2; r++) {
        CHECK(get(&p, "infera_http_requests_total", "route", routes[r], "method", "POST", "code",
                  "200", NULL) == half);
        CHECK(get(&p, "infera_http_request_duration_seconds_count", "route", routes[r], NULL) ==
              half);
        CHECK(get(&p, "infera_http_request_duration_seconds_bucket", "route", routes[r], "le",
                  "0.25", NULL) == half);
        CHECK(get(&p, "infera_http_request_duration_seconds_bucket", "route", routes[r], "le",
                  "0.1", NULL) == 0);
        CHECK(get(&p, "infera_http_request_duration_seconds_sum", "route", routes[r], NULL) ==
              half * 0.25);
        CHECK(get(&p, "infera_http_request_bytes_total", "route", routes[r], NULL) == half * 3);
        CHECK(get(&p, "infera_http_response_bytes_total", "route", routes[r], NULL) == half * 5);
    }
    for (int i = 0; i < THREADS; i++) {
        char who[16];
        snprintf(who, sizeof who, "t%d", i);
        CHECK(get(&p, "infera_test_events_total", "thread", who, NULL) == PER_THREAD / 10);
    }
    CHECK(get(&p, "infera_test_seconds_count", NULL) == THREADS * PER_THREAD / 10);
    CHECK(get(&p, "infera_test_seconds_bucket", "le", "0.5", NULL) == 0);
    CHECK(get(&p, "infera_test_seconds_bucket", "le", "1", NULL) == THREADS * PER_THREAD / 10);
    CHECK(get(&p, "infera_test_seconds_sum", NULL) == 0.75 * THREADS * PER_THREAD / 10);
    CHECK(get(&p, "infera_batcher_queue_depth", "model", "shared", NULL) == 0);
    parsed_free(&p);
    metrics_free(m);
}

int main(void)
{
    RUN(test_null_and_fresh);
    RUN(test_requests);
    RUN(test_models_and_batches);
    RUN(test_generic);
    RUN(test_escaping_and_truncation);
    RUN(test_series_cap);
    RUN(test_process);
    RUN(test_concurrency);
    return test_finish();
}
