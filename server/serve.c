/*
 * server/serve.c - `infera serve`: options (flags and INFERA_* environment variables), start,
 * signals (SIGHUP reloads the model store; SIGTERM/SIGINT drain and exit 0).
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "http.h"
#include "jobs.h"
#include "metrics.h"
#include "server.h"

/* ------------------------------------------------------------------------------------------
 * Options: one table, flags and environment alike
 * ---------------------------------------------------------------------------------------- */

enum opt_kind { OPT_STR, OPT_UINT, OPT_SIZE, OPT_I64, OPT_SECONDS, OPT_BOOL };

struct opt_def {
    const char *flag; /* without "--"; the variable is INFERA_<FLAG, upper, '-' -> '_'> */
    enum opt_kind kind;
    size_t offset;
    size_t size; /* OPT_STR: buffer size */
    double lo, hi;
    const char *help;
};

#define OFF(f) offsetof(struct server_options, f)
static const struct opt_def opt_defs[] = {
    {"listen", OPT_STR, OFF(listen), sizeof(((struct server_options *)0)->listen), 0, 0,
     "address:port to listen on (port 0: any free port)"},
    {"data-dir", OPT_STR, OFF(data_dir), 4096, 0, 0, "data directory"},
    {"models", OPT_STR, OFF(models_dir), 4096, 0, 0, "model repository directory"},
    {"http-threads", OPT_UINT, OFF(http_threads), 0, 0, 1024,
     "HTTP worker threads (0: one thread per connection)"},
    {"infer-workers", OPT_UINT, OFF(infer_workers), 0, 1, 256,
     "forward passes of one model at once"},
    {"max-batch-size", OPT_SIZE, OFF(max_batch_size), 0, 1, 4096,
     "rows merged into one forward (1: no batching)"},
    {"max-batch-delay-us", OPT_I64, OFF(max_batch_delay_us), 0, 0, 10000000,
     "how long a batch waits to fill"},
    {"queue-size", OPT_SIZE, OFF(queue_size), 0, 1, 1000000, "waiting requests per model"},
    {"max-body-bytes", OPT_SIZE, OFF(max_body_bytes), 0, 1024, 4294967296.0,
     "largest request body"},
    {"max-header-bytes", OPT_SIZE, OFF(connection_memory), 0, 4096, 1048576,
     "per-connection buffer for the request line and headers (431 above)"},
    {"max-connections", OPT_UINT, OFF(max_connections), 0, 1, 1000000, "open connections"},
    {"connection-timeout", OPT_UINT, OFF(connection_timeout_s), 0, 1, 3600,
     "idle connection timeout, seconds"},
    {"drain-delay", OPT_SECONDS, OFF(drain_delay_s), 0, 0, 3600,
     "seconds between SIGTERM and closing the listener"},
    {"drain-timeout", OPT_SECONDS, OFF(drain_timeout_s), 0, 0, 3600,
     "seconds in-flight requests get to finish"},
    {"access-log", OPT_BOOL, OFF(access_log), 0, 0, 1, "one log line per request (1/0)"},
    {"auth", OPT_BOOL, OFF(auth), 0, 0, 1,
     "API keys required on every route but health (1/0; 0 only on a trusted network)"},
    {"audit", OPT_BOOL, OFF(audit), 0, 0, 1, "the tamper-evident audit log in <data-dir>/audit"},
    {"audit-segment-bytes", OPT_SIZE, OFF(audit_segment_bytes), 0, 4096, 1099511627776.0,
     "audit segment size before rotation"},
    {"audit-dir", OPT_STR, OFF(audit_dir), 4096, 0, 0,
     "audit log directory (default <data-dir>/audit; each replica needs its own)"},
    {"metrics-public", OPT_BOOL, OFF(metrics_public), 0, 0, 1, "/metrics without an admin key"},
    {"tls-cert", OPT_STR, OFF(tls_cert), 4096, 0, 0, "PEM certificate chain: serve HTTPS"},
    {"tls-key", OPT_STR, OFF(tls_key), 4096, 0, 0, "PEM private key of --tls-cert"},
    {"max-file-bytes", OPT_SIZE, OFF(max_file_bytes), 0, 1024, 17179869184.0,
     "largest uploaded training file (POST /v1/files)"},
    {"max-file-lines", OPT_SIZE, OFF(max_file_lines), 0, 1, 100000000,
     "examples in one training file"},
    {"train-workers", OPT_UINT, OFF(train_workers), 0, 0, 64,
     "fine-tuning jobs running at once (0: jobs queue but do not run)"},
    {"train-busy-percent", OPT_UINT, OFF(train_busy_percent), 0, 1, 100,
     "percent of the time a fine-tuning job may compute while requests are being served (100: "
     "no limit)"},
    {"max-jobs-per-key", OPT_UINT, OFF(max_jobs_per_key), 0, 1, 100000,
     "queued + running fine-tuning jobs of one API key"},
    {"master-key-file", OPT_STR, OFF(master_key_file), 4096, 0, 0,
     "master key file (default <data-dir>/master.key; or INFERA_MASTER_KEY, 64 hex digits)"},
};
#define N_OPTS (sizeof opt_defs / sizeof opt_defs[0])

static void options_default(struct server_options *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->listen, sizeof o->listen, "127.0.0.1:8080");
    snprintf(o->data_dir, sizeof o->data_dir, "./data");
    snprintf(o->models_dir, sizeof o->models_dir, "./models");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    /* One forward worker per core. Half the cores (so that batches form while the other half
     * parses) measured no better on the 784-512-512-10 model: small batches cost OpenBLAS
     * nearly as much as single rows (bench/http/README.md). */
    o->infer_workers = cores > 0 ? (unsigned)cores : 1;
    /* One thread per connection: handlers block (a batch computing, an audit record
     * committing), and a pool ties each connection to one pool thread, so a blocked handler
     * would stall the other connections of its thread (bench/auth/README.md measured 2 of 16
     * pool threads busy at 16 connections, and ~1 audit record per fsync). */
    o->http_threads = 0;
    o->max_batch_size = 64;
    o->max_batch_delay_us = 0;
    o->queue_size = 256;
    o->max_body_bytes = (size_t)32 << 20;
    o->max_connections = 1024;
    o->connection_timeout_s = 30;
    /* libmicrohttpd zeroes a connection's whole buffer after every request: at 64 KiB that
     * memset was 12% of the CPU of a small inference request, at 16 KiB 2%. */
    o->connection_memory = 16 * 1024;
    o->drain_delay_s = 2;
    o->drain_timeout_s = 30;
    o->access_log = true;
    o->auth = true;
    o->audit = true;
    o->audit_segment_bytes = (size_t)64 << 20;
    o->max_file_bytes = (size_t)256 << 20;
    o->max_file_lines = 10000000;
    o->train_workers = 1;
    /* bench/jobs: with a job computing beside inference all the time, p99 at 4 connections
     * was 2-5x idle; at 10% of the time it stays within the 2x. */
    o->train_busy_percent = 10;
    o->max_jobs_per_key = 8;
    o->limits = oip_limits_default();
}

static int option_set(struct server_options *o, const struct opt_def *d, const char *val,
                      const char *source)
{
    void *p = (char *)o + d->offset;
    if (d->kind == OPT_STR) {
        if (strlen(val) >= d->size) {
            fprintf(stderr, "infera serve: %s: value too long\n", source);
            return 2;
        }
        snprintf(p, d->size, "%s", val);
        return 0;
    }
    char *end = NULL;
    errno = 0;
    double v = strtod(val, &end);
    if (d->kind == OPT_BOOL && (strcmp(val, "true") == 0 || strcmp(val, "false") == 0)) {
        v = val[0] == 't';
        end = (char *)val + strlen(val);
    }
    if (errno != 0 || end == val || *end != '\0' || !isfinite(v) || v < d->lo || v > d->hi ||
        (d->kind != OPT_SECONDS && floor(v) != v)) {
        fprintf(stderr, "infera serve: %s: \"%s\" is not a number in [%g, %g]\n", source, val,
                d->lo, d->hi);
        return 2;
    }
    switch (d->kind) {
        case OPT_UINT:
            *(unsigned *)p = (unsigned)v;
            break;
        case OPT_SIZE:
            *(size_t *)p = (size_t)v;
            break;
        case OPT_I64:
            *(int64_t *)p = (int64_t)v;
            break;
        case OPT_SECONDS:
            *(double *)p = v;
            break;
        case OPT_BOOL:
            *(bool *)p = v != 0;
            break;
        default:
            break;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: infera serve [options]\n"
               "Every option also reads from INFERA_<OPTION> (e.g. INFERA_LISTEN); flags win.\n");
    for (size_t i = 0; i < N_OPTS; i++)
        fprintf(f, "  --%-22s %s\n", opt_defs[i].flag, opt_defs[i].help);
}

/* Environment first, then flags. Returns 0, or an exit code. */
static int options_parse(struct server_options *o, int argc, char **argv)
{
    options_default(o);
    for (size_t i = 0; i < N_OPTS; i++) {
        char env[64] = "INFERA_";
        size_t k = strlen(env);
        for (const char *c = opt_defs[i].flag; *c && k + 1 < sizeof env; c++)
            env[k++] = *c == '-' ? '_' : (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
        env[k] = '\0';
        const char *v = getenv(env);
        if (v != NULL && option_set(o, &opt_defs[i], v, env) != 0)
            return 2;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "infera serve: unexpected argument \"%s\"\n", a);
            return 2;
        }
        const char *eq = strchr(a + 2, '=');
        size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        const struct opt_def *d = NULL;
        for (size_t k = 0; k < N_OPTS; k++)
            if (strlen(opt_defs[k].flag) == n && strncmp(opt_defs[k].flag, a + 2, n) == 0)
                d = &opt_defs[k];
        if (d == NULL) {
            fprintf(stderr, "infera serve: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (val == NULL) {
            fprintf(stderr, "infera serve: %s needs a value\n", a);
            return 2;
        }
        if (option_set(o, d, val, a) != 0)
            return 2;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Run
 * ---------------------------------------------------------------------------------------- */

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleeps up to seconds, returning early on SIGINT/SIGTERM (a second signal: hurry). */
static bool wait_or_signal(const sigset_t *set, double seconds)
{
    if (seconds <= 0)
        return false;
    struct timespec ts = {(time_t)seconds, (long)((seconds - floor(seconds)) * 1e9)};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig == SIGINT || sig == SIGTERM;
}

static void drain(struct server *srv, const sigset_t *set)
{
    atomic_store(&srv->draining, true);
    atomic_store(&srv->ready, false);
    log_msg(LOG_INFO, "draining: readiness is 503; the listener closes in %.1f s",
            srv->opt.drain_delay_s);
    bool hurry = wait_or_signal(set, srv->opt.drain_delay_s);
    MHD_socket fd = MHD_quiesce_daemon(srv->daemon);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    double deadline = monotonic_s() + (hurry ? 0 : srv->opt.drain_timeout_s);
    while (atomic_load(&srv->inflight) > 0 && monotonic_s() < deadline)
        if (wait_or_signal(set, 0.01))
            break;
    long left = atomic_load(&srv->inflight);
    if (left > 0)
        log_msg(LOG_WARN, "drain timeout: %ld requests still open are cut off", left);
    http_stop(srv);
    log_msg(LOG_INFO, "stopped");
}

int cli_serve(int argc, char **argv)
{
    struct server srv;
    memset(&srv, 0, sizeof srv);
    pthread_mutex_init(&srv.watch.mu, NULL);
    pthread_cond_init(&srv.watch.cv, NULL);
    int rc = options_parse(&srv.opt, argc, argv);
    if (rc)
        return rc == 1 ? 0 : rc;
    struct err e = {0};

    /* Signals go to this thread only: block them before any thread starts. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    srv.metrics = metrics_new(INFERA_VERSION);
    struct registry_config rc_cfg = {
        .models_dir = srv.opt.models_dir[0] ? srv.opt.models_dir : NULL,
        .data_dir = srv.opt.data_dir[0] ? srv.opt.data_dir : NULL,
        .batch = {srv.opt.max_batch_size, srv.opt.max_batch_delay_us, srv.opt.queue_size,
                  srv.opt.infer_workers},
    };
    if (srv.metrics == NULL || (srv.registry = registry_new(&rc_cfg, srv.metrics, &e)) == NULL) {
        fprintf(stderr, "infera serve: %s\n", e.status ? e.msg : "out of memory");
        metrics_free(srv.metrics);
        return 1;
    }
    if (!srv.opt.data_dir[0]) {
        log_msg(LOG_ERROR, "--data-dir is required: it holds the master key, API keys and the "
                           "audit log");
        goto fail;
    }
    if (guard_open(&srv.guard, &srv.opt, &e) != INF_OK) {
        log_msg(LOG_ERROR, "%s", e.msg);
        goto fail;
    }
    if ((srv.files = file_store_open(srv.opt.data_dir, &srv.guard.master, &e)) == NULL) {
        log_msg(LOG_ERROR, "file store: %s", e.msg);
        goto fail;
    }
    struct job_queue_config jq = {
        srv.opt.data_dir,      &srv.guard.master,        &srv,
        srv.opt.train_workers, srv.opt.max_jobs_per_key, srv.opt.train_busy_percent};
    if ((srv.jobs = job_queue_open(&jq, &e)) == NULL) {
        log_msg(LOG_ERROR, "job queue: %s", e.msg);
        goto fail;
    }
    /* Listen first so probes get answers (live 200, ready 503) while models load. */
    if (http_start(&srv, &e) != INF_OK) {
        log_msg(LOG_ERROR, "%s", e.msg);
        goto fail;
    }
    char threads[48];
    if (srv.opt.http_threads == 0)
        snprintf(threads, sizeof threads, "a thread per connection");
    else
        snprintf(threads, sizeof threads, "%u HTTP threads", srv.opt.http_threads);
    log_msg(LOG_INFO, "infera %s listening on %s (port %u, %s), %s", INFERA_VERSION, srv.opt.listen,
            srv.port, srv.opt.tls_cert[0] ? "https" : "http", threads);
    json_t *ev = json_pack("{s:s,s:s,s:b,s:b}", "version", INFERA_VERSION, "listen", srv.opt.listen,
                           "tls", srv.opt.tls_cert[0] != 0, "auth", srv.opt.auth);
    guard_event(&srv, NULL, "server.started", ev);
    json_decref(ev);
    int failures = registry_scan(srv.registry);
    size_t loaded, failed;
    registry_counts(srv.registry, &loaded, &failed);
    log_msg(LOG_INFO, "%zu model versions loaded, %d failed; ready", loaded, failures);
    /* Jobs start after the models they fine-tune are loaded. */
    if (job_queue_start(srv.jobs, &e) != INF_OK) {
        log_msg(LOG_ERROR, "job queue: %s", e.msg);
        goto fail;
    }
    atomic_store(&srv.ready, true);

    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            log_msg(LOG_INFO, "SIGHUP: rescanning the model store");
            registry_scan(srv.registry);
            continue;
        }
        log_msg(LOG_INFO, "%s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        break;
    }
    drain(&srv, &set);
    job_queue_free(srv.jobs); /* running jobs stop within a batch and go back to the queue */
    file_store_free(srv.files);
    registry_free(srv.registry);
    guard_event(&srv, NULL, "server.stopped", NULL);
    guard_close(&srv.guard);
    metrics_free(srv.metrics);
    return 0;
fail:
    http_stop(&srv);
    job_queue_free(srv.jobs);
    file_store_free(srv.files);
    registry_free(srv.registry);
    guard_close(&srv.guard);
    metrics_free(srv.metrics);
    return 1;
}
