/*
 * server/metrics.c - the Prometheus registry behind GET /metrics.
 *
 * Layout: struct metrics holds the families in an array sorted by name (binary search for the
 * generic entry points; the server's own families are also kept in b[]). A family holds its
 * series in an array sorted by label values, so a known label set costs a binary search of a
 * few string compares and no allocation, and rendering walks the arrays in order. A new label
 * set costs an allocation and a memmove of pointers, at most METRICS_MAX_SERIES of them.
 * One mutex guards everything.
 */
#include "metrics.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
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
 * values[] points to. For a histogram, value is the sum and buckets[] holds per-bucket (not
 * cumulative) counts, the last one for +Inf.
 */
struct series {
    const char *values[MAX_LABELS];
    double value;
    uint64_t count;
    uint64_t buckets[];
};

/* One allocation: the struct, bounds[], then the strings name, help and keys point to. */
struct family {
    const char *name; /* as rendered; counters end in _total */
    const char *help;
    enum kind kind;
    size_t n_labels;
    const char *keys[MAX_LABELS];
    struct series **series; /* (n) sorted by label values */
    size_t n, cap;
    size_t n_bounds;
    double bounds[]; /* (n_bounds) histogram upper bounds, strictly increasing */
};

/* clang-format off */
enum builtin {
    B_REQUESTS, B_DURATION, B_BYTES_IN, B_BYTES_OUT, B_BATCH, B_QUEUE, B_REJECTIONS, B_LOADS,
    B_LOADED, B_FAILED, B_RSS, B_FDS, B_START, B_BUILD, B_COUNT
};
/* clang-format on */

struct metrics {
    pthread_mutex_t lock;
    struct family **fams; /* (n_fams) sorted by name */
    size_t n_fams, cap_fams;
    struct family *b[B_COUNT]; /* the server's own families, borrowed from fams[] */
};

/* A label value as used for lookup: cut to METRICS_MAX_LABEL_LEN, not NUL-terminated. */
struct lv {
    const char *p;
    size_t len;
};

/* ------------------------------------------------------------------------------------------
 * Series
 * ---------------------------------------------------------------------------------------- */

static struct lv lv_make(const char *s)
{
    if (s == NULL)
        return (struct lv){"", 0};
    size_t len = strnlen(s, METRICS_MAX_LABEL_LEN + 1);
    if (len > METRICS_MAX_LABEL_LEN) {
        /* Cutting before a UTF-8 continuation byte would leave half a character behind. */
        len = METRICS_MAX_LABEL_LEN;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    return (struct lv){s, len};
}

/* Orders label values v against series s like strcmp() on each value in turn. */
static int lv_cmp(const struct lv *v, size_t n, const struct series *s)
{
    for (size_t i = 0; i < n; i++) {
        int c = strncmp(v[i].p, s->values[i], v[i].len);
        if (c != 0)
            return c;
        if (s->values[i][v[i].len] != '\0') /* s->values[i] is longer */
            return -1;
    }
    return 0;
}

/* The series with label values v, or NULL with *at set to where it would be inserted. */
static struct series *series_find(const struct family *f, const struct lv *v, size_t *at)
{
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = lv_cmp(v, f->n_labels, f->series[mid]);
        if (c == 0)
            return f->series[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    *at = lo;
    return NULL;
}

static struct series *series_add(struct family *f, size_t at, const struct lv *v)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct series **arr = realloc(f->series, cap * sizeof *arr);
        if (arr == NULL)
            return NULL;
        f->series = arr;
        f->cap = cap;
    }
    /* Sizes are bounded: <= 65 buckets, <= 3 labels of <= METRICS_MAX_LABEL_LEN bytes. */
    size_t n_buckets = f->kind == KIND_HISTOGRAM ? f->n_bounds + 1 : 0;
    size_t size = sizeof(struct series) + n_buckets * sizeof(uint64_t);
    for (size_t i = 0; i < f->n_labels; i++)
        size += v[i].len + 1;
    struct series *s = calloc(1, size);
    if (s == NULL)
        return NULL;
    char *p = (char *)(s->buckets + n_buckets);
    for (size_t i = 0; i < f->n_labels; i++) {
        memcpy(p, v[i].p, v[i].len);
        p[v[i].len] = '\0';
        s->values[i] = p;
        p += v[i].len + 1;
    }
    memmove(f->series + at + 1, f->series + at, (f->n - at) * sizeof *f->series);
    f->series[at] = s;
    f->n++;
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
    size_t at = 0;
    struct series *s = series_find(f, v, &at);
    if (s == NULL && f->n >= METRICS_MAX_SERIES) {
        for (size_t i = 0; i < f->n_labels; i++)
            v[i] = (struct lv){"other", 5};
        s = series_find(f, v, &at);
    }
    return s != NULL ? s : series_add(f, at, v);
}

enum op { OP_ADD, OP_SET, OP_OBSERVE };

/*
 * Caller holds the lock. Adds x to, sets to x, or observes x in the series of f with the
 * label values vals[0 .. f->n_labels). False only on out of memory.
 */
static bool apply(struct family *f, const char *const *vals, enum op op, double x)
{
    struct series *s = series_get(f, vals);
    if (s == NULL)
        return false;
    if (op == OP_ADD) {
        s->value += x;
    } else if (op == OP_SET) {
        s->value = x;
    } else {
        size_t i = 0;
        while (i < f->n_bounds && x > f->bounds[i]) /* le is inclusive */
            i++;
        s->buckets[i]++;
        s->count++;
        s->value += x;
    }
    return true;
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
    free(f);
}

/* Copies len bytes of s and a NUL to *at; returns the copy and advances *at past it. */
static const char *carve(char **at, const char *s, size_t len)
{
    char *copy = *at;
    memcpy(copy, s, len);
    copy[len] = '\0';
    *at += len + 1;
    return copy;
}

/* Names and keys are checked (and so bounded) by the caller; help is cut to MAX_HELP. */
static struct family *family_new(const char *name, const char *help, enum kind kind,
                                 const char *const *keys, size_t n_keys, const double *bounds,
                                 size_t n_bounds)
{
    help = help ? help : "";
    size_t name_len = strlen(name), help_len = strnlen(help, MAX_HELP);
    size_t size = sizeof(struct family) + n_bounds * sizeof(double) + name_len + help_len + 2;
    for (size_t i = 0; i < n_keys; i++)
        size += strlen(keys[i]) + 1;
    struct family *f = calloc(1, size);
    if (f == NULL)
        return NULL;
    f->kind = kind;
    f->n_bounds = n_bounds;
    if (n_bounds > 0)
        memcpy(f->bounds, bounds, n_bounds * sizeof(double));
    char *at = (char *)(f->bounds + n_bounds);
    f->name = carve(&at, name, name_len);
    f->help = carve(&at, help, help_len);
    for (f->n_labels = 0; f->n_labels < n_keys; f->n_labels++)
        f->keys[f->n_labels] = carve(&at, keys[f->n_labels], strlen(keys[f->n_labels]));
    return f;
}

/* Index of the family called name, or where it would be inserted (*found false). */
static size_t family_index(const struct metrics *m, const char *name, bool *found)
{
    size_t lo = 0, hi = m->n_fams;
    *found = false;
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
 * For the generic entry points: finds the family called name, or registers it after checking
 * the names and buckets. NULL if the arguments are invalid or disagree with the registered
 * family, or on out of memory.
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

/* ------------------------------------------------------------------------------------------
 * Process metrics from /proc
 * ---------------------------------------------------------------------------------------- */

static double clock_seconds(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Reads up to cap - 1 bytes of a small file into buf, NUL-terminated; false if empty. */
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
 * boot, and CLOCK_BOOTTIME the time since boot. Falls back to now.
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
    return now - clock_seconds(CLOCK_BOOTTIME) + (double)start / (double)ticks;
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
    for (const struct dirent *e; (e = readdir(d)) != NULL;)
        n += e->d_name[0] >= '0' && e->d_name[0] <= '9';
    closedir(d);
    return n - 1;
}

/* ------------------------------------------------------------------------------------------
 * Lifetime
 * ---------------------------------------------------------------------------------------- */

static const double duration_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                         0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

static const struct builtin_spec {
    const char *name;
    enum kind kind;
    const char *keys[MAX_LABELS];
    const double *bounds;
    size_t n_bounds;
    const char *help;
} builtins[B_COUNT] = {
    /* clang-format off */
    [B_REQUESTS] = {"infera_http_requests_total", KIND_COUNTER, {"route", "method", "code"},
                    NULL, 0, "HTTP requests by route template, method and status code."},
    [B_DURATION] = {"infera_http_request_duration_seconds", KIND_HISTOGRAM, {"route"},
                    duration_bounds, sizeof duration_bounds / sizeof duration_bounds[0],
                    "HTTP request latency by route template."},
    [B_BYTES_IN] = {"infera_http_request_bytes_total", KIND_COUNTER, {"route"}, NULL, 0,
                    "HTTP request body bytes received by route template."},
    [B_BYTES_OUT] = {"infera_http_response_bytes_total", KIND_COUNTER, {"route"}, NULL, 0,
                     "HTTP response body bytes sent by route template."},
    [B_BATCH] = {"infera_inference_batch_size", KIND_HISTOGRAM, {"model"},
                 batch_bounds, sizeof batch_bounds / sizeof batch_bounds[0],
                 "Rows per model forward pass."},
    [B_QUEUE] = {"infera_batcher_queue_depth", KIND_GAUGE, {"model"}, NULL, 0,
                 "Requests waiting or running in a model's batcher."},
    [B_REJECTIONS] = {"infera_rejections_total", KIND_COUNTER, {"reason"}, NULL, 0,
                      "Requests refused before handling, by reason."},
    [B_LOADS] = {"infera_model_loads_total", KIND_COUNTER, {"model", "result"}, NULL, 0,
                 "Model load and reload attempts by result."},
    [B_LOADED] = {"infera_models_loaded", KIND_GAUGE, {NULL}, NULL, 0,
                  "Models loaded and serving."},
    [B_FAILED] = {"infera_models_failed", KIND_GAUGE, {NULL}, NULL, 0,
                  "Models whose last load failed."},
    [B_RSS] = {"process_resident_memory_bytes", KIND_GAUGE, {NULL}, NULL, 0,
               "Resident memory size in bytes."},
    [B_FDS] = {"process_open_fds", KIND_GAUGE, {NULL}, NULL, 0,
               "Number of open file descriptors."},
    [B_START] = {"process_start_time_seconds", KIND_GAUGE, {NULL}, NULL, 0,
                 "Start time of the process since the Unix epoch in seconds."},
    [B_BUILD] = {"infera_build_info", KIND_GAUGE, {"version"}, NULL, 0,
                 "The infera version, always 1."},
    /* clang-format on */
};

struct metrics *metrics_new(const char *version)
{
    struct metrics *m = calloc(1, sizeof *m);
    if (m == NULL)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    for (size_t i = 0; i < B_COUNT; i++) {
        const struct builtin_spec *b = &builtins[i];
        size_t n_keys = 0;
        while (n_keys < MAX_LABELS && b->keys[n_keys] != NULL)
            n_keys++;
        m->b[i] =
            family_register(m, b->name, b->help, b->kind, b->keys, n_keys, b->bounds, b->n_bounds);
        /* Unlabelled families show 0 until first set. */
        if (m->b[i] == NULL || (n_keys == 0 && !apply(m->b[i], NULL, OP_SET, 0)))
            goto fail;
    }
    const char *v[] = {version ? version : "unknown"};
    if (!apply(m->b[B_START], NULL, OP_SET, process_start_time()) ||
        !apply(m->b[B_BUILD], v, OP_SET, 1))
        goto fail;
    return m;
fail:
    metrics_free(m);
    return NULL;
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
 * Observations: each takes the lock once; out of memory drops the observation
 * ---------------------------------------------------------------------------------------- */

static void update(struct metrics *m, enum builtin which, const char *const *vals, enum op op,
                   double x)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    apply(m->b[which], vals, op, x);
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_request(struct metrics *m, const char *route, const char *method, int status,
                             double seconds, size_t bytes_in, size_t bytes_out)
{
    if (m == NULL)
        return;
    bool valid = status >= 100 && status <= 999;
    char code[4] = "000";
    for (int i = 2, rest = status; valid && i >= 0; i--, rest /= 10)
        code[i] = (char)('0' + rest % 10);
    /* The route-only families read the first element. */
    const char *v[] = {route ? route : "other", method ? method : "other", valid ? code : "other"};
    pthread_mutex_lock(&m->lock);
    apply(m->b[B_REQUESTS], v, OP_ADD, 1);
    apply(m->b[B_DURATION], v, OP_OBSERVE, seconds > 0 ? seconds : 0); /* NaN counts as 0 */
    apply(m->b[B_BYTES_IN], v, OP_ADD, (double)bytes_in);
    apply(m->b[B_BYTES_OUT], v, OP_ADD, (double)bytes_out);
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_batch(struct metrics *m, const char *model, size_t batch_size)
{
    update(m, B_BATCH, &model, OP_OBSERVE, (double)batch_size);
}

void metrics_queue_add(struct metrics *m, const char *model, long delta)
{
    update(m, B_QUEUE, &model, OP_ADD, (double)delta);
}

void metrics_reject(struct metrics *m, const char *reason)
{
    update(m, B_REJECTIONS, &reason, OP_ADD, 1);
}

void metrics_set_models(struct metrics *m, size_t loaded, size_t failed)
{
    if (m == NULL)
        return;
    pthread_mutex_lock(&m->lock);
    apply(m->b[B_LOADED], NULL, OP_SET, (double)loaded);
    apply(m->b[B_FAILED], NULL, OP_SET, (double)failed);
    pthread_mutex_unlock(&m->lock);
}

void metrics_observe_load(struct metrics *m, const char *model, bool ok)
{
    const char *v[] = {model, ok ? "success" : "failure"};
    update(m, B_LOADS, v, OP_ADD, 1);
}

static void generic(struct metrics *m, const char *name, const char *help, enum kind kind,
                    const char *key, const char *value, const double *bounds, size_t n_bounds,
                    enum op op, double x)
{
    pthread_mutex_lock(&m->lock);
    struct family *f = family_get(m, name, help, kind, key, bounds, n_bounds);
    if (f != NULL)
        apply(f, &value, op, x);
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
    generic(m, full, help, KIND_COUNTER, label_key, label_value, NULL, 0, OP_ADD, delta);
}

void metrics_gauge_set(struct metrics *m, const char *name, const char *help, const char *label_key,
                       const char *label_value, double value)
{
    if (m != NULL && name != NULL && !isnan(value))
        generic(m, name, help, KIND_GAUGE, label_key, label_value, NULL, 0, OP_SET, value);
}

void metrics_histogram_observe(struct metrics *m, const char *name, const char *help,
                               const double *buckets, size_t n_buckets, double value)
{
    if (m != NULL && name != NULL && !isnan(value))
        generic(m, name, help, KIND_HISTOGRAM, NULL, NULL, buckets, n_buckets, OP_OBSERVE, value);
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
    if (n >= METRICS_MAX_RENDER - b->len) { /* keeps room for the NUL */
        b->failed = true;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 16384;
        while (cap < b->len + n + 1)
            cap *= 2;
        cap = cap < METRICS_MAX_RENDER ? cap : METRICS_MAX_RENDER;
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

/* Appends the NUL-terminated strings given, up to a NULL. */
static void tb_cat(struct tbuf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;)
        tb_put(b, s, strlen(s));
    va_end(ap);
}

/* Escapes backslash and newline, and double quote unless in a HELP line. */
static void tb_escaped(struct tbuf *b, const char *s, bool quote)
{
    const char *run = s;
    for (; *s != '\0'; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n" : NULL;
        esc = *s == '"' && quote ? "\\\"" : esc;
        if (esc != NULL) {
            tb_put(b, run, (size_t)(s - run));
            tb_put(b, esc, 2);
            run = s + 1;
        }
    }
    tb_put(b, run, (size_t)(s - run));
}

/* The shorter of %.15g and %.17g that reads back exactly; Prometheus' NaN and Inf. */
static const char *fmt_double(char out[32], double x)
{
    if (isnan(x) || isinf(x))
        return isnan(x) ? "NaN" : x > 0 ? "+Inf" : "-Inf";
    snprintf(out, 32, "%.15g", x);
    if (strtod(out, NULL) != x)
        snprintf(out, 32, "%.17g", x);
    return out;
}

/* One line: name suffix{k="v",...[,le="le"]} value */
static void tb_sample(struct tbuf *b, const struct family *f, const struct series *s,
                      const char *suffix, const char *le, const char *value)
{
    tb_cat(b, f->name, suffix, NULL);
    for (size_t i = 0; i < f->n_labels; i++) {
        tb_cat(b, i ? "," : "{", f->keys[i], "=\"", NULL);
        tb_escaped(b, s->values[i], true);
        tb_cat(b, "\"", NULL);
    }
    if (le != NULL)
        tb_cat(b, f->n_labels ? ",le=\"" : "{le=\"", le, "\"", NULL);
    tb_cat(b, f->n_labels || le ? "} " : " ", value, "\n", NULL);
}

static void render_family(struct tbuf *b, const struct family *f)
{
    static const char *const kind_names[] = {"counter", "gauge", "histogram"};
    char num[32], le[32];
    tb_cat(b, "# HELP ", f->name, " ", NULL);
    tb_escaped(b, f->help, false);
    tb_cat(b, "\n# TYPE ", f->name, " ", kind_names[f->kind], "\n", NULL);
    for (size_t i = 0; i < f->n; i++) {
        const struct series *s = f->series[i];
        if (f->kind != KIND_HISTOGRAM) {
            tb_sample(b, f, s, "", NULL, fmt_double(num, s->value));
            continue;
        }
        uint64_t cumulative = 0;
        for (size_t j = 0; j <= f->n_bounds; j++) {
            cumulative += s->buckets[j];
            snprintf(num, sizeof num, "%" PRIu64, cumulative);
            tb_sample(b, f, s, "_bucket", fmt_double(le, j < f->n_bounds ? f->bounds[j] : INFINITY),
                      num);
        }
        tb_sample(b, f, s, "_sum", NULL, fmt_double(num, s->value));
        snprintf(num, sizeof num, "%" PRIu64, s->count);
        tb_sample(b, f, s, "_count", NULL, num);
    }
}

char *metrics_render(struct metrics *m, size_t *len)
{
    if (m == NULL)
        return NULL;
    double rss = process_rss_bytes(), fds = process_open_fds(); /* outside the lock */
    struct tbuf b = {0};
    pthread_mutex_lock(&m->lock);
    if (rss >= 0)
        apply(m->b[B_RSS], NULL, OP_SET, rss);
    if (fds >= 0)
        apply(m->b[B_FDS], NULL, OP_SET, fds);
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
