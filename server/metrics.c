/*
 * server/metrics.c - the Prometheus registry behind GET /metrics.
 *
 * Layout: struct metrics holds the families in an array sorted by name (binary search on the
 * generic entry points; the server's own families are also kept as direct pointers). A family
 * holds its series in an append-only array plus an open-addressing hash index keyed by the
 * label values, so a known label set costs one hash and a few compares, no allocation. The
 * series array is sorted by label values only when rendering. One mutex guards everything.
 */
#include "metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_LABELS  3
#define MAX_BUCKETS 64
#define MAX_NAME    200
#define MAX_HELP    1024

enum kind { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM };

/*
 * One label set, in one allocation: the struct, then buckets[], then the label value strings
 * that values[] point to (values[i] is NULL for i >= the family's label count). For a
 * histogram, value is the sum and buckets[] the per-bucket (not cumulative) counts, the last
 * one for +Inf.
 */
struct series {
    uint64_t hash;
    const char *values[MAX_LABELS];
    double value;
    uint64_t count;
    uint64_t buckets[];
};

struct family {
    char *name; /* as rendered; counters end in _total */
    char *help;
    enum kind kind;
    size_t n_labels;
    char *keys[MAX_LABELS];
    double *bounds; /* (n_bounds) histogram upper bounds, strictly increasing */
    size_t n_bounds;
    struct series **series; /* (n) in order of creation; sorted while rendering */
    size_t n, cap;
    struct series **slots; /* (n_slots) hash index, NULL = empty, n_slots a power of two */
    size_t n_slots;
};

struct metrics {
    pthread_mutex_t lock;
    struct family **fams; /* (n_fams) sorted by name */
    size_t n_fams, cap_fams;
    /* The server's own families, owned through fams[]. */
    struct family *http_requests, *http_duration, *http_bytes_in, *http_bytes_out;
    struct family *batch_size, *queue_depth, *rejections, *model_loads;
    struct family *models_loaded, *models_failed, *rss, *open_fds;
};

/* A label value as used for lookup: cut to METRICS_MAX_LABEL_LEN, not NUL-terminated. */
struct lv {
    const char *p;
    size_t len;
};

/* ------------------------------------------------------------------------------------------
 * Series lookup
 * ---------------------------------------------------------------------------------------- */

static struct lv lv_make(const char *s)
{
    if (s == NULL)
        return (struct lv){"", 0};
    size_t len = strnlen(s, METRICS_MAX_LABEL_LEN + 1);
    if (len > METRICS_MAX_LABEL_LEN) {
        /* Cut before a UTF-8 continuation byte would leave half a character behind. */
        len = METRICS_MAX_LABEL_LEN;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    return (struct lv){s, len};
}

static uint64_t lv_hash(const struct lv *v, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < v[i].len; j++)
            h = (h ^ (unsigned char)v[i].p[j]) * 1099511628211ULL;
        h = (h ^ 0xFF) * 1099511628211ULL; /* 0xFF never occurs in UTF-8: a clean separator */
    }
    return h;
}

static bool series_matches(const struct series *s, uint64_t hash, const struct lv *v, size_t n)
{
    if (s->hash != hash)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strncmp(s->values[i], v[i].p, v[i].len) != 0 || s->values[i][v[i].len] != '\0')
            return false;
    return true;
}

static struct series *series_find(const struct family *f, uint64_t hash, const struct lv *v)
{
    if (f->n_slots == 0)
        return NULL;
    for (size_t i = hash & (f->n_slots - 1);; i = (i + 1) & (f->n_slots - 1)) {
        struct series *s = f->slots[i];
        if (s == NULL || series_matches(s, hash, v, f->n_labels))
            return s;
    }
}

static void index_put(struct series **slots, size_t n_slots, struct series *s)
{
    size_t i = s->hash & (n_slots - 1);
    while (slots[i] != NULL)
        i = (i + 1) & (n_slots - 1);
    slots[i] = s;
}

/* Makes room for one more series (index load stays <= 1/2). False on out of memory. */
static bool family_reserve(struct family *f)
{
    if ((f->n + 1) * 2 > f->n_slots) {
        size_t n_slots = f->n_slots ? f->n_slots * 2 : 16;
        struct series **slots = calloc(n_slots, sizeof *slots);
        if (slots == NULL)
            return false;
        for (size_t i = 0; i < f->n; i++)
            index_put(slots, n_slots, f->series[i]);
        free(f->slots);
        f->slots = slots;
        f->n_slots = n_slots;
    }
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct series **arr = realloc(f->series, cap * sizeof *arr);
        if (arr == NULL)
            return false;
        f->series = arr;
        f->cap = cap;
    }
    return true;
}

static struct series *series_add(struct family *f, uint64_t hash, const struct lv *v)
{
    if (!family_reserve(f))
        return NULL;
    /* Sizes are bounded: <= 65 buckets, <= 3 labels of <= METRICS_MAX_LABEL_LEN bytes. */
    size_t n_buckets = f->kind == KIND_HISTOGRAM ? f->n_bounds + 1 : 0;
    size_t size = sizeof(struct series) + n_buckets * sizeof(uint64_t);
    for (size_t i = 0; i < f->n_labels; i++)
        size += v[i].len + 1;
    struct series *s = calloc(1, size);
    if (s == NULL)
        return NULL;
    s->hash = hash;
    char *p = (char *)(s->buckets + n_buckets);
    for (size_t i = 0; i < f->n_labels; i++) {
        memcpy(p, v[i].p, v[i].len);
        p[v[i].len] = '\0';
        s->values[i] = p;
        p += v[i].len + 1;
    }
    f->series[f->n++] = s;
    index_put(f->slots, f->n_slots, s);
    return s;
}

/*
 * Returns the series for the label values vals[0 .. f->n_labels), created on first sight,
 * or the all-"other" series once the family is full; NULL on out of memory.
 */
static struct series *series_get(struct family *f, const char *const *vals)
{
    struct lv v[MAX_LABELS];
    for (size_t i = 0; i < f->n_labels; i++)
        v[i] = lv_make(vals[i]);
    uint64_t hash = lv_hash(v, f->n_labels);
    struct series *s = series_find(f, hash, v);
    if (s != NULL)
        return s;
    if (f->n >= METRICS_MAX_SERIES) {
        for (size_t i = 0; i < f->n_labels; i++)
            v[i] = (struct lv){"other", 5};
        hash = lv_hash(v, f->n_labels);
        s = series_find(f, hash, v);
        if (s != NULL)
            return s;
    }
    return series_add(f, hash, v);
}

static void histogram_put(const struct family *f, struct series *s, double x)
{
    size_t i = 0;
    while (i < f->n_bounds && x > f->bounds[i])
        i++;
    s->buckets[i]++;
    s->count++;
    s->value += x;
}

/* ------------------------------------------------------------------------------------------
 * Families
 * ---------------------------------------------------------------------------------------- */

/* [a-zA-Z_:][a-zA-Z0-9_:]* for metric names, [a-zA-Z_][a-zA-Z0-9_]* and no "__" for labels. */
static bool name_ok(const char *s, bool metric)
{
    size_t max = MAX_NAME + sizeof "_total", len = strnlen(s, max + 1);
    if (len == 0 || len > max || (!metric && strncmp(s, "__", 2) == 0))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                  (metric && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static void family_free(struct family *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->series[i]);
    free(f->series);
    free(f->slots);
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->keys[i]);
    free(f->bounds);
    free(f->help);
    free(f->name);
    free(f);
}

static struct family *family_new(const char *name, const char *help, enum kind kind,
                                 const char *const *keys, size_t n_keys, const double *bounds,
                                 size_t n_bounds)
{
    struct family *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    f->kind = kind;
    f->name = strdup(name);
    f->help = strndup(help ? help : "", MAX_HELP);
    bool ok = f->name != NULL && f->help != NULL;
    for (; ok && f->n_labels < n_keys; f->n_labels++)
        ok = (f->keys[f->n_labels] = strdup(keys[f->n_labels])) != NULL;
    if (ok && n_bounds > 0) {
        ok = (f->bounds = malloc(n_bounds * sizeof *bounds)) != NULL;
        if (ok) {
            memcpy(f->bounds, bounds, n_bounds * sizeof *bounds);
            f->n_bounds = n_bounds;
        }
    }
    if (!ok) {
        family_free(f);
        return NULL;
    }
    return f;
}

/* Index of the family called name, or where it would be inserted (*found false). */
static size_t family_index(const struct metrics *m, const char *name, bool *found)
{
    size_t lo = 0, hi = m->n_fams;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(m->fams[mid]->name, name);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Creates and registers a family; NULL on out of memory, too many families or a name taken. */
static struct family *family_register(struct metrics *m, const char *name, const char *help,
                                      enum kind kind, const char *const *keys, size_t n_keys,
                                      const double *bounds, size_t n_bounds)
{
    bool found;
    size_t at = family_index(m, name, &found);
    if (found || m->n_fams >= METRICS_MAX_FAMILIES)
        return NULL;
    if (m->n_fams == m->cap_fams) {
        size_t cap = m->cap_fams ? m->cap_fams * 2 : 32;
        struct family **arr = realloc(m->fams, cap * sizeof *arr);
        if (arr == NULL)
            return NULL;
        m->fams = arr;
        m->cap_fams = cap;
    }
    struct family *f = family_new(name, help, kind, keys, n_keys, bounds, n_bounds);
    if (f == NULL)
        return NULL;
    memmove(m->fams + at + 1, m->fams + at, (m->n_fams - at) * sizeof *m->fams);
    m->fams[at] = f;
    m->n_fams++;
    return f;
}

/*
 * The generic entry points: finds the family called name, or registers it after checking the
 * names and buckets. NULL if the arguments are invalid, disagree with the registered family,
 * or memory runs out.
 */
static struct family *family_get(struct metrics *m, const char *name, const char *help,
                                 enum kind kind, const char *key, const double *bounds,
                                 size_t n_bounds)
{
    bool found;
    size_t at = family_index(m, name, &found);
    if (found) {
        struct family *f = m->fams[at];
        bool same = f->kind == kind && f->n_labels == (key != NULL ? 1u : 0u) &&
                    (key == NULL || strcmp(f->keys[0], key) == 0);
        return same ? f : NULL;
    }
    if (!name_ok(name, true) || (key != NULL && !name_ok(key, false)))
        return NULL;
    if (kind == KIND_HISTOGRAM) {
        if (bounds == NULL || n_bounds == 0 || n_bounds > MAX_BUCKETS)
            return NULL;
        for (size_t i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1])))
                return NULL;
    }
    return family_register(m, name, help, kind, &key, key != NULL, bounds, n_bounds);
}

/* Sets the single series of an unlabelled family; false on out of memory. */
static bool family_set(struct family *f, double x)
{
    struct series *s = series_get(f, NULL);
    if (s != NULL)
        s->value = x;
    return s != NULL;
}

/* ------------------------------------------------------------------------------------------
 * Lifetime
 * ---------------------------------------------------------------------------------------- */

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads up to cap - 1 bytes of a (/proc) file into buf, NUL-terminated; false on error. */
static bool read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    size_t len = 0;
    ssize_t r;
    while (len < cap - 1 && (r = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    close(fd);
    buf[len] = '\0';
    return len > 0;
}

/*
 * Process start as Unix time: field 22 of /proc/self/stat is the start in clock ticks after
 * boot, and CLOCK_BOOTTIME is the time since boot. Falls back to now.
 */
static double process_start_time(void)
{
    double now = clock_seconds(CLOCK_REALTIME);
    char buf[1024];
    long ticks = sysconf(_SC_CLK_TCK);
    if (ticks <= 0 || !read_small("/proc/self/stat", buf, sizeof buf))
        return now;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    if (p == NULL || p[1] == '\0' || p[2] == '\0')
        return now;
    p += 3; /* past ") " and the one-letter state, field 3 */
    unsigned long long start = 0;
    for (int field = 4; field <= 22; field++) {
        char *end;
        start = strtoull(p, &end, 10);
        if (end == p)
            return now;
        p = end;
    }
    double since_boot = clock_seconds(CLOCK_BOOTTIME);
    return now - since_boot + (double)start / (double)ticks;
}

struct metrics *metrics_new(const char *version)
{
    static const double duration_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                             1,      2.5,     5,      10};
    static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
    static const char *const route[] = {"route"}, *const model[] = {"model"};
    static const char *const rmc[] = {"route", "method", "code"};
    static const char *const reason[] = {"reason"}, *const load[] = {"model", "result"};
    static const char *const ver[] = {"version"};
    const size_t n_dur = sizeof duration_bounds / sizeof duration_bounds[0];
    const size_t n_batch = sizeof batch_bounds / sizeof batch_bounds[0];

    struct metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    const enum kind C = KIND_COUNTER, G = KIND_GAUGE, H = KIND_HISTOGRAM;
    struct family *build, *start;
    const char *vv[] = {version ? version : "unknown"};
    bool ok =
        (m->http_requests = family_register(m, "infera_http_requests_total",
                                            "HTTP requests by route template, method and status "
                                            "code.",
                                            C, rmc, 3, NULL, 0)) &&
        (m->http_duration = family_register(m, "infera_http_request_duration_seconds",
                                            "HTTP request latency by route template.", H, route, 1,
                                            duration_bounds, n_dur)) &&
        (m->http_bytes_in = family_register(m, "infera_http_request_bytes_total",
                                            "HTTP request body bytes received by route template.",
                                            C, route, 1, NULL, 0)) &&
        (m->http_bytes_out = family_register(m, "infera_http_response_bytes_total",
                                             "HTTP response body bytes sent by route template.", C,
                                             route, 1, NULL, 0)) &&
        (m->batch_size =
             family_register(m, "infera_inference_batch_size", "Rows per model forward pass.", H,
                             model, 1, batch_bounds, n_batch)) &&
        (m->queue_depth = family_register(m, "infera_batcher_queue_depth",
                                          "Requests waiting or running in a model's batcher.", G,
                                          model, 1, NULL, 0)) &&
        (m->rejections = family_register(m, "infera_rejections_total",
                                         "Requests refused before handling, by reason.", C, reason,
                                         1, NULL, 0)) &&
        (m->model_loads =
             family_register(m, "infera_model_loads_total",
                             "Model load and reload attempts by result.", C, load, 2, NULL, 0)) &&
        (m->models_loaded = family_register(m, "infera_models_loaded", "Models loaded and serving.",
                                            G, NULL, 0, NULL, 0)) &&
        (m->models_failed = family_register(
             m, "infera_models_failed", "Models whose last load failed.", G, NULL, 0, NULL, 0)) &&
        (m->rss = family_register(m, "process_resident_memory_bytes",
                                  "Resident memory size in bytes.", G, NULL, 0, NULL, 0)) &&
        (m->open_fds = family_register(m, "process_open_fds", "Number of open file descriptors.", G,
                                       NULL, 0, NULL, 0)) &&
        (start = family_register(m, "process_start_time_seconds",
                                 "Start time of the process since the Unix epoch in seconds.", G,
                                 NULL, 0, NULL, 0)) &&
        (build = family_register(m, "infera_build_info", "The infera version, always 1.", G, ver, 1,
                                 NULL, 0)) &&
        family_set(m->models_loaded, 0) && family_set(m->models_failed, 0) &&
        family_set(m->rss, 0) && family_set(m->open_fds, 0) &&
        family_set(start, process_start_time()) && series_get(build, vv) != NULL;
    if (!ok) {
        metrics_free(m);
        return NULL;
    }
    series_get(build, vv)->value = 1;
    return m;
}

void metrics_free(struct metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n_fams; i++)
        family_free(m->fams[i]);
    free(m->fams);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ------------------------------------------------------------------------------------------
 * Observations
 * ---------------------------------------------------------------------------------------- */

void metrics_observe_request(struct metrics *m, const char *route, const char *method, int status,
                             double seconds, size_t bytes_in, size_t bytes_out)
{
    if (m == NULL)
        return;
    char code[4] = "000";
    if (status >= 100 && status <= 999) {
        for (int i = 2, rest = status; i >= 0; i--, rest /= 10)
            code[i] = (char)('0' + rest % 10);
    }
    const char *rmc[] = {route ? route : "other", method ? method : "other",
                         status >= 100 && status <= 999 ? code : "other"};
    double secs = seconds > 0 ? seconds : 0; /* also turns NaN into 0 */
    pthread_mutex_lock(&m->lock);
    struct series *s = series_get(m->http_requests, rmc);
    if (s != NULL)
        s->value += 1;
    if ((s = series_get(m->http_duration, rmc)) != NULL)
        histogram_put(m->http_duration, s, secs);
    if ((s = series_get(m->http_bytes_in, rmc)) != NULL)
        s->value += (double)bytes_in;
    if ((s = series_get(m->http_bytes_out, rmc)) != NULL)
        s->value += (double)bytes_out;
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_batch(struct metrics *m, const char *model, size_t batch_size)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = series_get(m->batch_size, &model);
    if (s != NULL)
        histogram_put(m->batch_size, s, (double)batch_size);
    pthread_mutex_unlock(&m->lock);
}

void metrics_queue_add(struct metrics *m, const char *model, long delta)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = series_get(m->queue_depth, &model);
    if (s != NULL)
        s->value += (double)delta;
    pthread_mutex_unlock(&m->lock);
}

void metrics_reject(struct metrics *m, const char *reason)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    struct series *s = series_get(m->rejections, &reason);
    if (s != NULL)
        s->value += 1;
    pthread_mutex_unlock(&m->lock);
}

void metrics_set_models(struct metrics *m, size_t loaded, size_t failed)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    family_set(m->models_loaded, (double)loaded);
    family_set(m->models_failed, (double)failed);
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_load(struct metrics *m, const char *model, bool ok)
{
    if (m == NULL)
        return;
    const char *v[] = {model, ok ? "success" : "failure"};
    pthread_mutex_lock(&m->lock);
    struct series *s = series_get(m->model_loads, v);
    if (s != NULL)
        s->value += 1;
    pthread_mutex_unlock(&m->lock);
}

void metrics_counter_add(struct metrics *m, const char *name, const char *help,
                         const char *label_key, const char *label_value, double delta)
{
    if (m == NULL || name == NULL || !(delta >= 0) || isinf(delta))
        return;
    /* The family is registered under its rendered name, "_total" included. */
    char full[MAX_NAME + sizeof "_total"];
    size_t len = strnlen(name, MAX_NAME + 1);
    if (len > MAX_NAME)
        return;
    memcpy(full, name, len);
    full[len] = '\0';
    if (len < 6 || strcmp(full + len - 6, "_total") != 0)
        memcpy(full + len, "_total", sizeof "_total");
    pthread_mutex_lock(&m->lock);
    struct family *f = family_get(m, full, help, KIND_COUNTER, label_key, NULL, 0);
    struct series *s = f ? series_get(f, &label_value) : NULL;
    if (s != NULL)
        s->value += delta;
    pthread_mutex_unlock(&m->lock);
}

void metrics_gauge_set(struct metrics *m, const char *name, const char *help, const char *label_key,
                       const char *label_value, double value)
{
    if (m == NULL || name == NULL || isnan(value))
        return;
    pthread_mutex_lock(&m->lock);
    struct family *f = family_get(m, name, help, KIND_GAUGE, label_key, NULL, 0);
    struct series *s = f ? series_get(f, &label_value) : NULL;
    if (s != NULL)
        s->value = value;
    pthread_mutex_unlock(&m->lock);
}

void metrics_histogram_observe(struct metrics *m, const char *name, const char *help,
                               const double *buckets, size_t n_buckets, double value)
{
    if (m == NULL || name == NULL || isnan(value))
        return;
    pthread_mutex_lock(&m->lock);
    struct family *f = family_get(m, name, help, KIND_HISTOGRAM, NULL, buckets, n_buckets);
    struct series *s = f ? series_get(f, NULL) : NULL;
    if (s != NULL)
        histogram_put(f, s, value);
    pthread_mutex_unlock(&m->lock);
}

/* ------------------------------------------------------------------------------------------
 * Rendering
 * ---------------------------------------------------------------------------------------- */

/* A growable text buffer capped at METRICS_MAX_RENDER; the first failure sticks. */
struct tbuf {
    char *p;
    size_t len, cap;
    bool failed;
};

static void tb_put(struct tbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n >= METRICS_MAX_RENDER - b->len) { /* room for the NUL too */
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > METRICS_MAX_RENDER)
            cap = METRICS_MAX_RENDER;
        char *p = realloc(b->p, cap);
        if (p == NULL) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void tb_str(struct tbuf *b, const char *s)
{
    tb_put(b, s, strlen(s));
}

/* Escapes backslash and newline, and double quote unless in a HELP line. */
static void tb_escaped(struct tbuf *b, const char *s, bool quote)
{
    const char *run = s;
    for (; *s != '\0'; s++) {
        const char *esc = *s == '\\'           ? "\\\\"
                          : *s == '\n'         ? "\\n"
                          : *s == '"' && quote ? "\\\""
                                               : NULL;
        if (esc != NULL) {
            tb_put(b, run, (size_t)(s - run));
            tb_put(b, esc, 2);
            run = s + 1;
        }
    }
    tb_put(b, run, (size_t)(s - run));
}

/* Shortest of %.15g / %.17g that reads back exactly; Prometheus spellings of NaN and Inf. */
static void tb_double(struct tbuf *b, double x)
{
    char out[32];
    if (isnan(x) || isinf(x)) {
        tb_str(b, isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(out, sizeof out, "%.15g", x);
    if (strtod(out, NULL) != x)
        snprintf(out, sizeof out, "%.17g", x);
    tb_str(b, out);
}

static void tb_u64(struct tbuf *b, uint64_t u)
{
    char out[24];
    snprintf(out, sizeof out, "%" PRIu64, u);
    tb_str(b, out);
}

/* name suffix {k="v",...[,le="bound"]} */
static void tb_sample_name(struct tbuf *b, const struct family *f, const struct series *s,
                           const char *suffix, const double *le)
{
    tb_str(b, f->name);
    tb_str(b, suffix);
    if (f->n_labels == 0 && le == NULL)
        return;
    tb_str(b, "{");
    for (size_t i = 0; i < f->n_labels; i++) {
        tb_str(b, i ? "," : "");
        tb_str(b, f->keys[i]);
        tb_str(b, "=\"");
        tb_escaped(b, s->values[i], true);
        tb_str(b, "\"");
    }
    if (le != NULL) {
        tb_str(b, f->n_labels ? ",le=\"" : "le=\"");
        tb_double(b, *le);
        tb_str(b, "\"");
    }
    tb_str(b, "}");
}

static int series_cmp(const void *pa, const void *pb)
{
    const struct series *a = *(const struct series *const *)pa;
    const struct series *b = *(const struct series *const *)pb;
    for (size_t i = 0; i < MAX_LABELS && a->values[i] != NULL; i++) {
        int c = strcmp(a->values[i], b->values[i]);
        if (c != 0)
            return c;
    }
    return 0;
}

static void render_family(struct tbuf *b, struct family *f)
{
    static const char *const kind_names[] = {"counter", "gauge", "histogram"};
    tb_str(b, "# HELP ");
    tb_str(b, f->name);
    tb_str(b, " ");
    tb_escaped(b, f->help, false);
    tb_str(b, "\n# TYPE ");
    tb_str(b, f->name);
    tb_str(b, " ");
    tb_str(b, kind_names[f->kind]);
    tb_str(b, "\n");
    if (f->n > 1) /* the index points at series, not positions: sorting in place is safe */
        qsort(f->series, f->n, sizeof *f->series, series_cmp);
    for (size_t i = 0; i < f->n; i++) {
        const struct series *s = f->series[i];
        if (f->kind != KIND_HISTOGRAM) {
            tb_sample_name(b, f, s, "", NULL);
            tb_str(b, " ");
            tb_double(b, s->value);
            tb_str(b, "\n");
            continue;
        }
        uint64_t cumulative = 0;
        for (size_t j = 0; j <= f->n_bounds; j++) {
            double le = j < f->n_bounds ? f->bounds[j] : INFINITY;
            cumulative += s->buckets[j];
            tb_sample_name(b, f, s, "_bucket", &le);
            tb_str(b, " ");
            tb_u64(b, cumulative);
            tb_str(b, "\n");
        }
        tb_sample_name(b, f, s, "_sum", NULL);
        tb_str(b, " ");
        tb_double(b, s->value);
        tb_str(b, "\n");
        tb_sample_name(b, f, s, "_count", NULL);
        tb_str(b, " ");
        tb_u64(b, s->count);
        tb_str(b, "\n");
    }
}

/* Resident set size from /proc/self/statm (field 2, in pages); -1 if unreadable. */
static double process_rss_bytes(void)
{
    char buf[256];
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0 || !read_small("/proc/self/statm", buf, sizeof buf))
        return -1;
    char *end;
    strtoull(buf, &end, 10);
    const char *p = end;
    unsigned long long pages = strtoull(p, &end, 10);
    return end == p ? -1 : (double)pages * (double)page;
}

/* Entries of /proc/self/fd, not counting the one used to read it; -1 if unreadable. */
static double process_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    double n = 0;
    const struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] >= '0' && e->d_name[0] <= '9')
            n++;
    closedir(d);
    return n - 1;
}

char *metrics_render(struct metrics *m, size_t *len)
{
    if (m == NULL)
        return NULL;
    double rss = process_rss_bytes(), fds = process_open_fds();
    struct tbuf b = {0};
    pthread_mutex_lock(&m->lock);
    if (rss >= 0)
        family_set(m->rss, rss);
    if (fds >= 0)
        family_set(m->open_fds, fds);
    for (size_t i = 0; i < m->n_fams; i++)
        render_family(&b, m->fams[i]);
    pthread_mutex_unlock(&m->lock);
    if (b.failed || b.p == NULL) {
        free(b.p);
        return NULL;
    }
    if (len != NULL)
        *len = b.len;
    return b.p;
}
