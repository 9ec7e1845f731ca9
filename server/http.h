/*
 * server/http.h - the HTTP front end: the server state, one request's state, the route table,
 * and response helpers. Internal to server/.
 *
 * Every request is answered with JSON (or Prometheus text for /metrics). Errors are
 * {"error": "message"} with the status that fits: 400 malformed or invalid, 404 unknown model
 * or route, 405 wrong method (with Allow), 413 body too large (answered from Content-Length
 * before the body is read), 415 wrong content type, 503 + Retry-After when a queue is full or
 * the server drains.
 *
 * Threads: libmicrohttpd runs handlers on its pool of --http-threads threads; a handler may
 * block (the batcher). Shared state lives in struct server: immutable options, the registry
 * and metrics (each with its own lock) and a few atomics.
 */
#ifndef INFERA_SERVER_HTTP_H
#define INFERA_SERVER_HTTP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include <microhttpd.h>

#include "guard.h"
#include "oip.h"
#include "registry.h"

struct metrics;
struct file_store;
struct job_queue;

/* `infera serve` settings: flags, or INFERA_* environment variables (see serve.c). */
struct server_options {
    char listen[256]; /* host:port; port 0 picks a free port (logged) */
    char data_dir[4096];
    char models_dir[4096];
    unsigned http_threads;
    unsigned infer_workers; /* forwards of one model at once */
    size_t max_batch_size;
    int64_t max_batch_delay_us;
    size_t queue_size; /* waiting requests per model */
    size_t max_body_bytes;
    unsigned max_connections;
    unsigned connection_timeout_s;
    size_t connection_memory; /* --max-header-bytes: per-connection buffer, caps the request line
                                 and headers */
    double drain_delay_s;
    double drain_timeout_s;
    bool access_log;
    bool auth;           /* API keys on protected routes */
    bool audit;          /* the audit log */
    bool metrics_public; /* /metrics without a key */
    char tls_cert[4096]; /* PEM files; both set: HTTPS only */
    char tls_key[4096];
    char master_key_file[4096]; /* default: <data-dir>/master.key */
    size_t audit_segment_bytes;
    char audit_dir[4096];        /* default <data-dir>/audit; one per replica */
    size_t max_file_bytes;       /* an uploaded training file (POST /v1/files body) */
    size_t max_file_lines;       /* examples in one training file */
    unsigned train_workers;      /* fine-tuning jobs running at once */
    unsigned train_busy_percent; /* wall-clock share of a job while requests run (train_gate.h) */
    unsigned max_jobs_per_key;   /* queued + running jobs of one key (429 above) */
    struct oip_limits limits;
};

/* Connections that have not started a request yet (or sit between requests): the slow-header
 * watchdog closes them after --connection-timeout, which MHD's idle timeout alone does not do
 * for a client that sends one byte a second (slowloris). */
struct conn_watch {
    pthread_mutex_t mu;
    struct conn_slot *head; /* every open connection */
    pthread_t thread;
    bool running, stop;
    pthread_cond_t cv;
};

struct server {
    struct server_options opt;
    struct registry *registry;
    struct metrics *metrics;
    struct guard guard;
    struct file_store *files; /* <data-dir>/files (files.h) */
    struct job_queue *jobs;   /* <data-dir>/jobs and the training workers (jobs.h) */
    struct MHD_Daemon *daemon;
    struct conn_watch watch;
    uint16_t port;
    atomic_bool ready; /* started, initial scan done, not draining */
    atomic_bool draining;
    atomic_long inflight;         /* requests between their first byte and their completion */
    atomic_llong last_request_ns; /* CLOCK_MONOTONIC start of the newest request (train_gate.h) */
    atomic_ulong next_id;
};

#define ROUTE_MAX_PARAMS 2

struct request;
typedef enum MHD_Result (*route_fn)(struct request *rq);

/* Who may call a route: ROUTE_OPEN needs no key; otherwise a key with the scope (admin implies
 * infer and train). ROUTE_METRICS is admin unless --metrics-public. */
enum route_access {
    ROUTE_OPEN = 0,
    ROUTE_INFER = AUTH_SCOPE_INFER,
    ROUTE_TRAIN = AUTH_SCOPE_TRAIN,
    ROUTE_ADMIN = AUTH_SCOPE_ADMIN,
    ROUTE_METRICS = 1u << 8,
};

/* The body a route reads: none (a body sent anyway is ignored), JSON (or binary tensors) under
 * --max-body-bytes, or a multipart/form-data upload under --max-file-bytes. */
enum route_body { BODY_NONE, BODY_JSON, BODY_UPLOAD };

struct route {
    const char *method;
    const char *pattern; /* "/v2/models/{m}/versions/{v}/infer": {x} captures one segment */
    route_fn handler;
    enum route_body body; /* what the route reads */
    unsigned access;      /* enum route_access */
};

/* One request, from its first callback to completion (MHD's con_cls). */
struct request {
    struct server *srv;
    struct MHD_Connection *conn;
    const struct route *route;
    const char *method;
    char params[ROUTE_MAX_PARAMS][REGISTRY_NAME_MAX + 1]; /* captured {m}, {v} */
    char *body;                                           /* the request body, NUL-terminated */
    size_t body_len, body_cap;
    bool body_too_large;
    size_t discarded; /* bytes dropped after the body went over the limit */
    bool answered;    /* a response was queued */
    struct timespec start;
    char id[72]; /* X-Request-Id: the client's if well-formed, else generated */
    int status;
    size_t bytes_out;
    int model_version;           /* the model version that answered, or 0 */
    bool openai;                 /* a /v1/ URL: errors in OpenAI's shape */
    bool authenticated;          /* the key passed guard_check() */
    bool holds_slot;             /* a limiter slot to release */
    struct principal principal;  /* valid when authenticated */
    char key_id[KEY_ID_LEN + 1]; /* the claimed key id (also when denied), or "" */
    const char *deny_reason;     /* static: "missing", "scope", "rate", ... for the audit */
    char *reason;                /* an error answer's message (masked at audit time), or NULL */
    const char *retry_after;     /* a 429's Retry-After value (static or rq->retry_buf) */
    bool no_retry;   /* x-should-retry: false: the OpenAI SDKs would otherwise retry a 409/429 */
    bool close_conn; /* answer with Connection: close (bad framing, 413) */
    char allow[64];  /* every method of the routes that match the path (405) */
    char retry_buf[16];
};

/* Starts and stops the daemon (http.c). */
int http_start(struct server *srv, struct err *e);
void http_stop(struct server *srv);

/* Response helpers: each queues one response, records the status, returns MHD's result. */
enum MHD_Result http_respond(struct request *rq, unsigned status, const char *content_type,
                             const char *body, size_t len);
/* The same with one extra response header (header and value borrowed). */
enum MHD_Result http_respond_extra(struct request *rq, unsigned status, const char *content_type,
                                   const char *body, size_t len, const char *header,
                                   const char *value);
/* Serializes obj (steals the reference) as compact JSON. */
enum MHD_Result http_respond_json(struct request *rq, unsigned status, json_t *obj);
/* {"error": message}; 503 responses get Retry-After: 1. */
enum MHD_Result http_respond_error(struct request *rq, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Maps an engine status to an HTTP status: EINVAL 400, ELIMIT 413 or 503, ENOTFOUND 404,
 * ENOMEM 503, others 500. */
unsigned http_status_of(int status);
/* For a failed write of about len bytes under the data dir: 507 Insufficient Storage when rc is
 * INF_EIO and the data dir's file system has less than len + 64 KiB free (the client should know
 * it is not its request: RFC 4918), else http_status_of(rc), with INF_EIO as 503 (retry). */
unsigned http_status_of_write(const struct server *srv, int rc, size_t len);

/* The v2 endpoint handlers (handlers.c). */
enum MHD_Result handle_live(struct request *rq);
enum MHD_Result handle_ready(struct request *rq);
enum MHD_Result handle_server_meta(struct request *rq);
enum MHD_Result handle_models_list(struct request *rq);
enum MHD_Result handle_model_meta(struct request *rq);
enum MHD_Result handle_model_ready(struct request *rq);
enum MHD_Result handle_infer(struct request *rq);
enum MHD_Result handle_explain(struct request *rq);
enum MHD_Result handle_repo_index(struct request *rq);
enum MHD_Result handle_repo_load(struct request *rq);
enum MHD_Result handle_repo_unload(struct request *rq);
enum MHD_Result handle_metrics(struct request *rq);

/* OpenAI's files API (files_api.c): POST takes multipart/form-data (file, purpose) up to
 * --max-file-bytes; the others answer file objects. Ownership as in files.h. */
enum MHD_Result handle_files_create(struct request *rq);
enum MHD_Result handle_files_list(struct request *rq);
enum MHD_Result handle_files_get(struct request *rq);
enum MHD_Result handle_files_content(struct request *rq);
enum MHD_Result handle_files_delete(struct request *rq);

/* OpenAI's fine-tuning jobs API (jobs_api.c) on the job queue (jobs.h). */
enum MHD_Result handle_jobs_create(struct request *rq);
enum MHD_Result handle_jobs_list(struct request *rq);
enum MHD_Result handle_jobs_get(struct request *rq);
enum MHD_Result handle_jobs_cancel(struct request *rq);
enum MHD_Result handle_jobs_events(struct request *rq);
enum MHD_Result handle_jobs_checkpoints(struct request *rq);

/* The web console (console.c): static HTML/CSS/JS embedded in the binary, open like a login
 * page; everything it shows comes from the API with the key the user pastes. */
enum MHD_Result handle_console(struct request *rq);

/* GET /v1/audit (audit_api.c, admin): the latest audit records, newest first. */
enum MHD_Result handle_audit_list(struct request *rq);

/* The key management endpoints (keys_api.c). */
enum MHD_Result handle_keys_create(struct request *rq);
enum MHD_Result handle_keys_list(struct request *rq);
enum MHD_Result handle_keys_get(struct request *rq);
enum MHD_Result handle_keys_revoke(struct request *rq);

#endif /* INFERA_SERVER_HTTP_H */
