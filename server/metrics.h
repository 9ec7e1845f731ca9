/*
 * server/metrics.h - a thread-safe Prometheus metrics registry for the server, rendered in the
 * text exposition format 0.0.4 for GET /metrics. Internal to server/.
 *
 * Model of the registry:
 *   - A family is a metric name with a type (counter, gauge, histogram), a HELP text and a
 *     fixed list of label keys. A series is one set of label values inside a family.
 *   - The server's own families (below, under metrics_render) exist from metrics_new() on.
 *     Later subsystems add families on first use through metrics_counter_add(),
 *     metrics_gauge_set() and metrics_histogram_observe(); the first call fixes the family's
 *     type, label key, HELP text and buckets, and a later call that disagrees on type or label
 *     key is dropped.
 *
 * Observations never fail a request: every observe/add/set function returns void and drops
 * the observation silently when its arguments are invalid (m NULL, bad metric or label name,
 * NaN, negative counter increment) or when memory runs out. After the first time a label set
 * is seen, recording it again allocates nothing: a binary search and an update under the lock.
 *
 * Bounds (label values may come from users, e.g. model names):
 *   - At most METRICS_MAX_SERIES distinct label sets per family. Once a family is full, an
 *     observation with a new label set is folded into the series whose every label value is
 *     "other" (so a family holds at most METRICS_MAX_SERIES + 1 series). That series merges
 *     with a real label value "other" (e.g. the route of unmatched requests), on purpose.
 *   - Label values are cut to METRICS_MAX_LABEL_LEN bytes (at a UTF-8 character boundary);
 *     names that agree on that prefix share a series. NULL label values count as "".
 *   - At most METRICS_MAX_FAMILIES families; rendered text is capped at METRICS_MAX_RENDER.
 *
 * Thread safety: every function except metrics_new() and metrics_free() may be called from
 * any thread at any time. One mutex inside struct metrics guards the whole registry;
 * metrics_render() holds it while formatting (time linear in the number of series).
 */
#ifndef INFERA_SERVER_METRICS_H
#define INFERA_SERVER_METRICS_H

#include <stdbool.h>
#include <stddef.h>

#define METRICS_MAX_SERIES    10000
#define METRICS_MAX_LABEL_LEN 128
#define METRICS_MAX_FAMILIES  1024
#define METRICS_MAX_RENDER    ((size_t)64 << 20)

struct metrics;

/*
 * Returns a new registry with the server's families registered, or NULL on out of memory.
 * version (copied; NULL means "unknown") is the label of infera_build_info. Reads the process
 * start time from /proc once. Caller frees with metrics_free().
 */
struct metrics *metrics_new(const char *version);

/* Frees m and everything it holds. NULL is a no-op. No other thread may be using m. */
void metrics_free(struct metrics *m);

/*
 * Records one finished HTTP request:
 *   infera_http_requests_total{route,method,code} += 1
 *   infera_http_request_duration_seconds{route} observes seconds (negative counts as 0)
 *   infera_http_request_bytes_total{route} += bytes_in
 *   infera_http_response_bytes_total{route} += bytes_out
 * route is a route template ("/v2/models/{m}/infer", or "other" for unmatched), never the raw
 * path; method "GET", "POST", ...; status the HTTP code (outside 100..999 is labelled "other").
 * NULL route or method count as "other". All strings are borrowed for the call only.
 */
void metrics_observe_request(struct metrics *m, const char *route, const char *method, int status,
                             double seconds, size_t bytes_in, size_t bytes_out);

/* One forward of batch_size rows: infera_inference_batch_size{model} observes batch_size. */
void metrics_observe_batch(struct metrics *m, const char *model, size_t batch_size);

/* infera_batcher_queue_depth{model} += delta (requests waiting or running in its batcher). */
void metrics_queue_add(struct metrics *m, const char *model, long delta);

/* infera_rejections_total{reason} += 1; reason e.g. "queue_full", "draining", "body_too_large",
 * "rate_limited", "unauthorized". */
void metrics_reject(struct metrics *m, const char *reason);

/* Sets the gauges infera_models_loaded and infera_models_failed. */
void metrics_set_models(struct metrics *m, size_t loaded, size_t failed);

/* One model (re)load attempt: infera_model_loads_total{model,result="success"|"failure"}. */
void metrics_observe_load(struct metrics *m, const char *model, bool ok);

/*
 * Generic counter: name{label_key="label_value"} += delta. The rendered name always ends in
 * "_total" (appended when name lacks it). label_key NULL means an unlabelled counter (then
 * label_value is ignored). help may be NULL. delta must be finite and >= 0. name must match
 * [a-zA-Z_:][a-zA-Z0-9_:]*, label_key [a-zA-Z_][a-zA-Z0-9_]* without a leading "__".
 * All strings are borrowed for the call only.
 */
void metrics_counter_add(struct metrics *m, const char *name, const char *help,
                         const char *label_key, const char *label_value, double delta);

/* Generic gauge: name{label_key="label_value"} = value. Same rules as metrics_counter_add(),
 * without the "_total" suffix; value must not be NaN. */
void metrics_gauge_set(struct metrics *m, const char *name, const char *help, const char *label_key,
                       const char *label_value, double value);

/*
 * Generic unlabelled histogram: name observes value (not NaN). buckets holds n_buckets upper
 * bounds, finite and strictly increasing (1 <= n_buckets <= 64; +Inf is implicit); only the
 * first call's buckets are used, later calls may pass the same array or anything. buckets is
 * borrowed for the call only.
 */
void metrics_histogram_observe(struct metrics *m, const char *name, const char *help,
                               const double *buckets, size_t n_buckets, double value);

/*
 * Renders every family in the Prometheus text format 0.0.4, sorted by family name, series
 * sorted by label values: "# HELP" and "# TYPE" once per family (also for a labelled family
 * with no series yet), counters named *_total, histograms as cumulative *_bucket{le="..."}
 * ending with le="+Inf", then *_sum and *_count. Label values escape backslash, double quote
 * and newline; HELP escapes backslash and newline.
 *
 * Families: infera_http_requests_total{route,method,code},
 * infera_http_request_duration_seconds{route} (buckets 0.0001 .. 10 s),
 * infera_http_request_bytes_total{route}, infera_http_response_bytes_total{route},
 * infera_inference_batch_size{model} (buckets 1, 2, 4, ..., 1024),
 * infera_batcher_queue_depth{model}, infera_rejections_total{reason}, infera_models_loaded,
 * infera_models_failed, infera_model_loads_total{model,result},
 * process_resident_memory_bytes and process_open_fds (read from /proc at render time),
 * process_start_time_seconds, infera_build_info{version} 1, and the generic families.
 *
 * Returns a new NUL-terminated buffer (caller frees with free()) and, if len is not NULL, its
 * length in *len. Returns NULL (and leaves *len unchanged) if m is NULL, on out of memory, or
 * if the text would exceed METRICS_MAX_RENDER bytes.
 */
char *metrics_render(struct metrics *m, size_t *len);

#endif /* INFERA_SERVER_METRICS_H */
