/*
 * server/http.c - libmicrohttpd glue: the daemon, routing, body limits, responses, the access
 * log.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "common/json_dump.h"
#include "http.h"
#include "metrics.h"

/* ------------------------------------------------------------------------------------------
 * Routes: the one table of every endpoint
 * ---------------------------------------------------------------------------------------- */

static const struct route routes[] = {
    {"GET", "/v2/health/live", handle_live, BODY_NONE, ROUTE_OPEN},
    {"GET", "/v2/health/ready", handle_ready, BODY_NONE, ROUTE_OPEN},
    {"GET", "/v2", handle_server_meta, BODY_NONE, ROUTE_INFER},
    {"GET", "/v2/models", handle_models_list, BODY_NONE, ROUTE_INFER},
    {"GET", "/v2/models/{m}", handle_model_meta, BODY_NONE, ROUTE_INFER},
    {"GET", "/v2/models/{m}/versions/{v}", handle_model_meta, BODY_NONE, ROUTE_INFER},
    {"GET", "/v2/models/{m}/ready", handle_model_ready, BODY_NONE, ROUTE_INFER},
    {"GET", "/v2/models/{m}/versions/{v}/ready", handle_model_ready, BODY_NONE, ROUTE_INFER},
    {"POST", "/v2/models/{m}/infer", handle_infer, BODY_JSON, ROUTE_INFER},
    {"POST", "/v2/models/{m}/versions/{v}/infer", handle_infer, BODY_JSON, ROUTE_INFER},
    {"POST", "/v2/models/{m}/explain", handle_explain, BODY_JSON, ROUTE_INFER},
    {"POST", "/v2/models/{m}/versions/{v}/explain", handle_explain, BODY_JSON, ROUTE_INFER},
    {"POST", "/v2/repository/index", handle_repo_index, BODY_JSON, ROUTE_ADMIN},
    {"POST", "/v2/repository/models/{m}/load", handle_repo_load, BODY_JSON, ROUTE_ADMIN},
    {"POST", "/v2/repository/models/{m}/unload", handle_repo_unload, BODY_JSON, ROUTE_ADMIN},
    {"POST", "/v1/keys", handle_keys_create, BODY_JSON, ROUTE_ADMIN},
    {"GET", "/v1/keys", handle_keys_list, BODY_NONE, ROUTE_ADMIN},
    {"GET", "/v1/keys/{k}", handle_keys_get, BODY_NONE, ROUTE_ADMIN},
    {"DELETE", "/v1/keys/{k}", handle_keys_revoke, BODY_NONE, ROUTE_ADMIN},
    {"POST", "/v1/files", handle_files_create, BODY_UPLOAD, ROUTE_TRAIN},
    {"GET", "/v1/files", handle_files_list, BODY_NONE, ROUTE_TRAIN},
    {"GET", "/v1/files/{f}", handle_files_get, BODY_NONE, ROUTE_TRAIN},
    {"GET", "/v1/files/{f}/content", handle_files_content, BODY_NONE, ROUTE_TRAIN},
    {"DELETE", "/v1/files/{f}", handle_files_delete, BODY_NONE, ROUTE_TRAIN},
    {"POST", "/v1/fine_tuning/jobs", handle_jobs_create, BODY_JSON, ROUTE_TRAIN},
    {"GET", "/v1/fine_tuning/jobs", handle_jobs_list, BODY_NONE, ROUTE_TRAIN},
    {"GET", "/v1/fine_tuning/jobs/{j}", handle_jobs_get, BODY_NONE, ROUTE_TRAIN},
    {"POST", "/v1/fine_tuning/jobs/{j}/cancel", handle_jobs_cancel, BODY_JSON, ROUTE_TRAIN},
    {"GET", "/v1/fine_tuning/jobs/{j}/events", handle_jobs_events, BODY_NONE, ROUTE_TRAIN},
    {"GET", "/v1/fine_tuning/jobs/{j}/checkpoints", handle_jobs_checkpoints, BODY_NONE,
     ROUTE_TRAIN},
    {"GET", "/v1/audit", handle_audit_list, BODY_NONE, ROUTE_ADMIN},
    {"GET", "/metrics", handle_metrics, BODY_NONE, ROUTE_METRICS},
    {"GET", "/console", handle_console, BODY_NONE, ROUTE_OPEN},
    {"GET", "/console/{a}", handle_console, BODY_NONE, ROUTE_OPEN},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

/*
 * Matches url against pattern, capturing {x} segments into params (each NUL-terminated).
 * Returns the number of captures, or -1 if url does not match; then params may hold partial
 * captures.
 */
static int route_match(const char *pattern, const char *url,
                       char params[ROUTE_MAX_PARAMS][REGISTRY_NAME_MAX + 1])
{
    const char *p = pattern, *u = url;
    int k = 0;
    while (*p != '\0') {
        if (*p == '{') {
            const char *pe = strchr(p, '}');
            const char *ue = u;
            while (*ue != '\0' && *ue != '/')
                ue++;
            size_t n = (size_t)(ue - u);
            if (n == 0 || n > REGISTRY_NAME_MAX || k >= ROUTE_MAX_PARAMS)
                return -1;
            memcpy(params[k], u, n);
            params[k][n] = '\0';
            k++;
            p = pe + 1;
            u = ue;
            continue;
        }
        if (*p != *u)
            return -1;
        p++;
        u++;
    }
    /* tolerate one trailing slash */
    return *u == '\0' || (u[0] == '/' && u[1] == '\0') ? k : -1;
}

/* "req-" and n in lowercase hex into out (at least 21 bytes). */
static void request_id_generate(char *out, uint64_t n)
{
    static const char digits[] = "0123456789abcdef";
    char rev[16];
    int k = 0;
    do {
        rev[k++] = digits[n & 15];
        n >>= 4;
    } while (n != 0);
    memcpy(out, "req-", 4);
    for (int i = 0; i < k; i++)
        out[4 + i] = rev[k - 1 - i];
    out[4 + k] = '\0';
}

/* ------------------------------------------------------------------------------------------
 * Responses
 * ---------------------------------------------------------------------------------------- */

enum MHD_Result http_respond(struct request *rq, unsigned status, const char *content_type,
                             const char *body, size_t len)
{
    return http_respond_extra(rq, status, content_type, body, len, NULL, NULL);
}

/* The body of an error answer: {"error": message} on OIP routes, OpenAI's error object on /v1/.
 * Returns a new string (caller frees) or NULL when out of memory. */
static char *error_body(const struct request *rq, unsigned status, const char *msg)
{
    json_t *obj;
    if (rq->openai) {
        const char *type = status == 401   ? "authentication_error"
                           : status == 403 ? "permission_error"
                           : status == 429 ? "rate_limit_error"
                           : status >= 500 ? "server_error"
                                           : "invalid_request_error";
        const char *code = status == 401   ? "invalid_api_key"
                           : status == 404 ? "not_found"
                           : status == 429 ? "rate_limit_exceeded"
                                           : NULL;
        obj = json_pack("{s:{s:s,s:s,s:n,s:s?}}", "error", "message", msg, "type", type, "param",
                        "code", code);
    } else {
        obj = json_pack("{s:s}", "error", msg);
    }
    char *s = obj ? json_dump_checked(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    return s;
}

enum MHD_Result http_respond_extra(struct request *rq, unsigned status, const char *content_type,
                                   const char *body, size_t len, const char *header,
                                   const char *value)
{
    char *closed = NULL;
    /* The audit record first: an answer the log does not hold is never sent. */
    if (guard_audit_request(rq, status, len) != INF_OK) {
        status = MHD_HTTP_SERVICE_UNAVAILABLE;
        closed = error_body(rq, status,
                            "the audit log cannot be written: the request was not "
                            "carried out; retry later");
        static const char fallback[] = "{\"error\":\"audit log unavailable\"}";
        body = closed ? closed : fallback;
        len = strlen(body);
        content_type = "application/json";
        header = NULL;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    free(closed);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, "X-Request-Id", rq->id);
    if (header != NULL)
        MHD_add_response_header(r, header, value);
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == MHD_HTTP_TOO_MANY_REQUESTS)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER,
                                rq->retry_after ? rq->retry_after : "1");
    if (rq->no_retry)
        MHD_add_response_header(r, "x-should-retry", "false");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                rq->deny_reason != NULL && strcmp(rq->deny_reason, "missing") != 0
                                    ? "Bearer realm=\"infera\", error=\"invalid_token\""
                                    : "Bearer realm=\"infera\"");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rq->allow);
    if (rq->body_too_large || rq->close_conn)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result res = MHD_queue_response(rq->conn, status, r);
    MHD_destroy_response(r);
    rq->status = (int)status;
    rq->bytes_out = len;
    rq->answered = true;
    return res;
}

/* Answers with the JSON text s (taken: freed here); NULL, an allocation that failed, answers
 * 503 "out of memory" instead. */
static enum MHD_Result respond_json_text(struct request *rq, unsigned status, char *s)
{
    if (s == NULL) {
        static const char oom[] = "{\"error\":\"out of memory\"}";
        return http_respond(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "application/json", oom,
                            sizeof oom - 1);
    }
    enum MHD_Result res = http_respond(rq, status, "application/json", s, strlen(s));
    free(s);
    return res;
}

enum MHD_Result http_respond_json(struct request *rq, unsigned status, json_t *obj)
{
    char *s = obj ? json_dump_checked(obj, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(obj);
    return respond_json_text(rq, status, s);
}

/* Makes s valid UTF-8 in place: messages quote client text, which may be cut mid-character by
 * a %.64s or hold bytes that are not UTF-8 at all. Bad bytes become '?'. */
static void utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p != '\0') {
        size_t n = *p < 0x80           ? 1
                   : (*p >> 5) == 0x6  ? 2
                   : (*p >> 4) == 0xe  ? 3
                   : (*p >> 3) == 0x1e ? 4
                                       : 0;
        bool ok = n > 0 && !(n == 2 && *p < 0xc2) && !(n == 4 && *p > 0xf4);
        for (size_t k = 1; ok && k < n; k++)
            ok = (p[k] & 0xc0) == 0x80;
        if (ok && n == 3) /* no overlong forms, no surrogates */
            ok = !(p[0] == 0xe0 && p[1] < 0xa0) && !(p[0] == 0xed && p[1] >= 0xa0);
        if (ok && n == 4)
            ok = !(p[0] == 0xf0 && p[1] < 0x90) && !(p[0] == 0xf4 && p[1] >= 0x90);
        if (!ok) {
            *p++ = '?';
            continue;
        }
        p += n;
    }
}

enum MHD_Result http_respond_error(struct request *rq, unsigned status, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    utf8_sanitize(msg);
    if (rq->reason == NULL)
        rq->reason = strdup(msg); /* for the audit record; masked there */
    return respond_json_text(rq, status, error_body(rq, status, msg));
}

unsigned http_status_of_write(const struct server *srv, int rc, size_t len)
{
    if (rc != INF_EIO)
        return http_status_of(rc);
    struct statvfs v;
    bool full = statvfs(srv->opt.data_dir, &v) != 0
                    ? errno == ENOSPC
                    : (unsigned long long)v.f_bavail * v.f_frsize < (unsigned long long)len + 65536;
    return full ? MHD_HTTP_INSUFFICIENT_STORAGE : MHD_HTTP_SERVICE_UNAVAILABLE;
}

unsigned http_status_of(int status)
{
    switch (status) {
        case INF_EINVAL:
        case INF_EUNSUPPORTED:
            return MHD_HTTP_BAD_REQUEST;
        case INF_ELIMIT:
            return MHD_HTTP_CONTENT_TOO_LARGE;
        case INF_ENOTFOUND:
            return MHD_HTTP_NOT_FOUND;
        case INF_ENOMEM:
            return MHD_HTTP_SERVICE_UNAVAILABLE;
        default:
            return MHD_HTTP_INTERNAL_SERVER_ERROR;
    }
}

/* ------------------------------------------------------------------------------------------
 * The access handler
 * ---------------------------------------------------------------------------------------- */

static bool request_id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return false;
    }
    return true;
}

/* The upload route takes multipart/form-data and --max-file-bytes; every other body is JSON
 * (or binary tensors) under --max-body-bytes. */
static bool is_upload(const struct request *rq)
{
    return rq->route != NULL && rq->route->body == BODY_UPLOAD;
}

static size_t body_cap(const struct request *rq)
{
    return is_upload(rq) ? rq->srv->opt.max_file_bytes : rq->srv->opt.max_body_bytes;
}

/* Is the content type acceptable for the route's body? Absent is fine for JSON (curl
 * --data-binary); an upload must say multipart/form-data (it carries the boundary). */
static bool content_type_ok(const struct request *rq, const char *ct)
{
    if (is_upload(rq))
        return ct != NULL && strncasecmp(ct, "multipart/form-data", 19) == 0;
    if (ct == NULL)
        return true;
    size_t n = strcspn(ct, "; \t");
    return (n == 16 && strncasecmp(ct, "application/json", n) == 0) ||
           (n == 24 && strncasecmp(ct, "application/octet-stream", n) == 0);
}

static struct request *request_new(struct server *srv, struct MHD_Connection *conn, const char *url,
                                   const char *method)
{
    struct request *rq = calloc(1, sizeof *rq);
    if (rq == NULL)
        return NULL;
    rq->srv = srv;
    rq->conn = conn;
    rq->method = method;
    rq->openai = strncmp(url, "/v1/", 4) == 0 || strcmp(url, "/v1") == 0;
    clock_gettime(CLOCK_MONOTONIC, &rq->start);
    const char *cid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    if (cid != NULL && request_id_ok(cid))
        memcpy(rq->id, cid, strlen(cid) + 1); /* at most 64 chars (request_id_ok) */
    else
        request_id_generate(rq->id, (uint64_t)atomic_fetch_add(&srv->next_id, 1));
    /* HEAD is GET without a body (MHD drops it). */
    const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
    const struct route *path_match = NULL;
    char params[ROUTE_MAX_PARAMS][REGISTRY_NAME_MAX + 1];
    for (size_t i = 0; i < N_ROUTES; i++) {
        int k = route_match(routes[i].pattern, url, params);
        if (k < 0)
            continue;
        path_match = &routes[i];
        if (strstr(rq->allow, routes[i].method) == NULL)
            snprintf(rq->allow + strlen(rq->allow), sizeof rq->allow - strlen(rq->allow), "%s%s",
                     rq->allow[0] ? ", " : "", routes[i].method);
        if (strcmp(routes[i].method, m) == 0 && rq->route == NULL) {
            rq->route = &routes[i];
            memcpy(rq->params, params, (size_t)k * sizeof params[0]); /* the rest stay zero */
        }
    }
    if (rq->route == NULL && path_match != NULL)
        rq->route = path_match; /* for the 405's Allow header; flagged by the method */
    atomic_fetch_add(&srv->inflight, 1);
    atomic_store_explicit(&srv->last_request_ns, timespec_ns(&rq->start), memory_order_relaxed);
    return rq;
}

/* ------------------------------------------------------------------------------------------
 * Slow-header watchdog (see struct conn_watch)
 * ---------------------------------------------------------------------------------------- */

struct conn_slot {
    struct conn_slot *next, *prev;
    MHD_socket fd;
    struct timespec since; /* connected, or the last request ended */
    bool busy;             /* a request is in progress (its headers arrived) */
    bool cut;              /* already shut down */
};

static double since_s(const struct timespec *t)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t->tv_sec) + (double)(now.tv_nsec - t->tv_nsec) * 1e-9;
}

/* MHD calls this when a connection opens and when it closes, before its socket is closed: the
 * slot leaves the list under the lock, so the watchdog never shuts down a reused fd. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    struct server *srv = cls;
    struct conn_watch *w = &srv->watch;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct conn_slot *c = calloc(1, sizeof *c);
        if (c == NULL || ci == NULL) {
            free(c);
            return;
        }
        c->fd = ci->connect_fd;
        clock_gettime(CLOCK_MONOTONIC, &c->since);
        pthread_mutex_lock(&w->mu);
        c->next = w->head;
        if (w->head != NULL)
            w->head->prev = c;
        w->head = c;
        pthread_mutex_unlock(&w->mu);
        *socket_context = c;
        return;
    }
    struct conn_slot *c = *socket_context;
    if (c == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&w->mu);
    free(c);
    *socket_context = NULL;
}

static void conn_watch_busy(struct server *srv, struct MHD_Connection *conn, bool busy)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn_slot *c = ci ? ci->socket_context : NULL;
    if (c == NULL)
        return;
    pthread_mutex_lock(&srv->watch.mu);
    c->busy = busy;
    clock_gettime(CLOCK_MONOTONIC, &c->since);
    pthread_mutex_unlock(&srv->watch.mu);
}

static void *watch_main(void *arg)
{
    struct server *srv = arg;
    struct conn_watch *w = &srv->watch;
    double limit = (double)srv->opt.connection_timeout_s;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        for (struct conn_slot *c = w->head; c != NULL; c = c->next)
            if (!c->busy && !c->cut && since_s(&c->since) > limit) {
                /* No complete request head within the timeout, however many bytes trickled
                 * in: shut the socket; MHD sees the error and closes the connection. */
                shutdown(c->fd, SHUT_RDWR);
                c->cut = true;
            }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 250 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Request framing as RFC 9112 section 6 demands of a server: more than one Content-Length with
 * different values, or Transfer-Encoding beside Content-Length, are how requests get smuggled
 * past a proxy (400, close); a transfer coding other than chunked is not implemented (501). */
struct framing {
    int content_lengths;
    const char *first_cl;
    bool cl_differ;
    int transfer_encodings;
    bool te_chunked_only;
};

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    struct framing *f = cls;
    if (key == NULL || value == NULL)
        return MHD_YES;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        if (f->content_lengths++ == 0)
            f->first_cl = value;
        else if (strcmp(f->first_cl, value) != 0)
            f->cl_differ = true;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encodings++;
        f->te_chunked_only = strcasecmp(value, "chunked") == 0;
    }
    return MHD_YES;
}

/* Returns 0 when the framing is sound, else the status to answer (the connection closes). */
static unsigned framing_check(struct MHD_Connection *conn, const char **why)
{
    struct framing f = {0, NULL, false, 0, false};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, framing_header, &f);
    if (f.transfer_encodings > 1 || (f.transfer_encodings == 1 && !f.te_chunked_only)) {
        *why = "a transfer coding other than chunked";
        return MHD_HTTP_NOT_IMPLEMENTED;
    }
    if (f.cl_differ) {
        *why = "conflicting Content-Length headers";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.transfer_encodings > 0 && f.content_lengths > 0) {
        *why = "Transfer-Encoding and Content-Length together";
        return MHD_HTTP_BAD_REQUEST;
    }
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL) {
        rq = request_new(srv, conn, url, method);
        if (rq == NULL)
            return MHD_NO;
        *con_cls = rq;
        conn_watch_busy(srv, conn, true);
        const char *why = NULL;
        unsigned bad = framing_check(conn, &why);
        if (bad != 0) {
            rq->close_conn = true;
            return http_respond_error(rq, bad, "request framing refused: %s", why);
        }
        const char *m = strcmp(method, "HEAD") == 0 ? "GET" : method;
        if (rq->route == NULL)
            return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no route for %s %s", method, url);
        if (strcmp(rq->route->method, m) != 0)
            return http_respond_error(rq, MHD_HTTP_METHOD_NOT_ALLOWED, "%s is not allowed on %s",
                                      method, rq->route->pattern);
        enum MHD_Result res;
        if (!guard_check(rq, &res))
            return res;
        const char *ct =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (rq->route->body != BODY_NONE && !content_type_ok(rq, ct))
            return http_respond_error(
                rq, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
                is_upload(rq)
                    ? "Content-Type \"%.64s\" is not supported: upload files as "
                      "multipart/form-data (curl: -F purpose=fine-tune -F file=@data.jsonl)"
                    : "Content-Type \"%.64s\" is not supported: send application/json "
                      "(curl: -H 'Content-Type: application/json')",
                ct ? ct : "(none)");
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL) {
            char *end = NULL;
            unsigned long long n = strtoull(cl, &end, 10);
            if (end != cl && *end == '\0' && n > body_cap(rq)) {
                rq->body_too_large = true;
                if (srv->metrics != NULL)
                    metrics_reject(srv->metrics, "body_too_large");
                return http_respond_error(rq, MHD_HTTP_CONTENT_TOO_LARGE,
                                          "request body of %llu bytes is over the limit of %zu", n,
                                          body_cap(rq));
            }
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (rq->answered)
            return MHD_YES; /* discard what follows an early answer */
        if (rq->body_too_large) {
            rq->discarded += n;
            return rq->discarded > 4 * body_cap(rq) ? MHD_NO : MHD_YES;
        }
        if (rq->route->body == BODY_NONE)
            return MHD_YES; /* GET with a body: ignored */
        if (rq->body_len + n > body_cap(rq)) {
            /* libmicrohttpd 0.9.75 cannot answer in the middle of an upload: drop the body,
             * keep reading (up to 4x the limit, then cut the connection) and answer 413 at
             * its end. */
            if (!rq->body_too_large && srv->metrics != NULL)
                metrics_reject(srv->metrics, "body_too_large");
            rq->body_too_large = true;
            free(rq->body);
            rq->body = NULL;
            rq->body_cap = 0;
            rq->discarded += n;
            return rq->discarded > 4 * body_cap(rq) ? MHD_NO : MHD_YES;
        }
        if (rq->body_len + n + 1 > rq->body_cap) {
            size_t cap = rq->body_cap ? rq->body_cap : 16384;
            while (cap < rq->body_len + n + 1)
                cap *= 2;
            char *nb = realloc(rq->body, cap);
            if (nb == NULL)
                return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
            rq->body = nb;
            rq->body_cap = cap;
        }
        memcpy(rq->body + rq->body_len, upload_data, n);
        rq->body_len += n;
        rq->body[rq->body_len] = '\0';
        return MHD_YES;
    }
    if (rq->answered)
        return MHD_YES;
    if (rq->body_too_large)
        return http_respond_error(rq, MHD_HTTP_CONTENT_TOO_LARGE,
                                  "request body is over the limit of %zu bytes", body_cap(rq));
    if (rq->body == NULL) {
        rq->body = calloc(1, 1);
        if (rq->body == NULL)
            return MHD_NO;
    }
    return rq->route->handler(rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct server *srv = cls;
    struct request *rq = *con_cls;
    if (rq == NULL)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double secs =
        (double)(now.tv_sec - rq->start.tv_sec) + (double)(now.tv_nsec - rq->start.tv_nsec) * 1e-9;
    const char *route = rq->route ? rq->route->pattern : "other";
    int status = rq->answered ? rq->status : 0;
    /* The method is the client's word: label only the known ones, so junk cannot fill the
     * metrics' label sets. */
    static const char *const methods[] = {"GET",  "POST",  "PUT",    "DELETE",
                                          "HEAD", "PATCH", "OPTIONS"};
    const char *method = "other";
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
        if (strcmp(rq->method, methods[i]) == 0)
            method = methods[i];
    if (srv->metrics != NULL)
        metrics_observe_request(srv->metrics, route, method, status, secs, rq->body_len,
                                rq->bytes_out);
    /* The request id (X-Request-Id) and the model segment are client text: masked. */
    char *id_masked = srv->opt.access_log ? guard_mask(srv, rq->id, 0) : NULL;
    bool has_model = rq->route != NULL && strstr(rq->route->pattern, "{m}") != NULL;
    char *model_masked = srv->opt.access_log && has_model && registry_name_valid(rq->params[0])
                             ? guard_mask(srv, rq->params[0], 0)
                             : NULL;
    if (srv->opt.access_log)
        log_msg(LOG_INFO,
                "access id=%s method=%s route=%s model=%s status=%d latency_ms=%.3f in=%zu "
                "out=%zu%s",
                id_masked ? id_masked : "-", method, route, model_masked ? model_masked : "-",
                status, secs * 1e3, rq->body_len, rq->bytes_out,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " aborted=1");
    free(id_masked);
    free(model_masked);
    conn_watch_busy(srv, conn, false);
    guard_release(rq);
    free(rq->reason);
    free(rq->body);
    free(rq);
    *con_cls = NULL;
    atomic_fetch_sub(&srv->inflight, 1);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_msg(LOG_WARN, "http: %s", msg);
}

/*
 * Percent-decoding of the URL path and query as MHD's own, except that "%00" stays as it is:
 * a NUL would cut the path short of what the client sent ("/metrics%00x" routing as
 * "/metrics"), and no route or model name can hold one.
 */
static size_t unescape_keep_nul(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    char *w = s;
    for (const char *r = s; *r != '\0';) {
        int hi, lo;
        if (r[0] == '%' && (hi = hex_digit(r[1])) >= 0 && (lo = hex_digit(r[2])) >= 0 &&
            (hi | lo) != 0) {
            *w++ = (char)(hi * 16 + lo);
            r += 3;
        } else {
            *w++ = *r++;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

/* ------------------------------------------------------------------------------------------
 * Daemon
 * ---------------------------------------------------------------------------------------- */

/* Parses "host:port" or "[v6]:port" into addr. */
static int parse_listen(const char *spec, struct sockaddr_storage *addr, bool *v6, struct err *e)
{
    char host[256];
    const char *port;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (close == NULL || close[1] != ':')
            return err_set(e, INF_EINVAL, "--listen %s: expected [address]:port", spec);
        snprintf(host, sizeof host, "%.*s", (int)(close - spec - 1), spec + 1);
        port = close + 2;
    } else {
        const char *colon = strrchr(spec, ':');
        if (colon == NULL)
            return err_set(e, INF_EINVAL, "--listen %s: expected address:port", spec);
        snprintf(host, sizeof host, "%.*s", (int)(colon - spec), spec);
        port = colon + 1;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return err_set(e, INF_EINVAL, "--listen %s: not a numeric address and port", spec);
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    *v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    return INF_OK;
}

/* TLS 1.2 and 1.3 only, GnuTLS's NORMAL cipher suites otherwise: pinned here, not taken from
 * the system's default policy. */
static const char tls_priorities[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:%SERVER_PRECEDENCE";

int http_start(struct server *srv, struct err *e)
{
    struct sockaddr_storage addr;
    bool v6 = false;
    char *cert = NULL, *key = NULL;
    size_t cert_len = 0, key_len = 0;
    int rc = parse_listen(srv->opt.listen, &addr, &v6, e);
    if (rc)
        return rc;
    bool tls = srv->opt.tls_cert[0] || srv->opt.tls_key[0];
    if (tls && !(srv->opt.tls_cert[0] && srv->opt.tls_key[0]))
        return err_set(e, INF_EINVAL, "--tls-cert and --tls-key go together");
    if (tls) {
        if ((rc = fs_read_file(srv->opt.tls_cert, 1 << 20, &cert, &cert_len, e)) != INF_OK ||
            (rc = fs_read_file(srv->opt.tls_key, 1 << 20, &key, &key_len, e)) != INF_OK) {
            err_prefix(e, "TLS");
            goto out;
        }
    }
    /* Handlers block (a batch computing, an audit record committing): with a pool, MHD ties
     * each connection to one pool thread, so a blocked handler stalls every other connection
     * of its thread. One thread per connection keeps connections independent. */
    bool per_conn = srv->opt.http_threads == 0;
    unsigned flags = (per_conn ? MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD
                               : MHD_USE_AUTO_INTERNAL_THREAD) |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (v6)
        flags |= MHD_USE_IPv6;
    if (tls)
        flags |= MHD_USE_TLS;
    /* Options that depend on the settings: a pool size only for a pool, TLS only with TLS. */
    struct MHD_OptionItem opts[5];
    size_t k = 0;
    if (!per_conn)
        opts[k++] =
            (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, srv->opt.http_threads, NULL};
    if (tls) {
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, cert};
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, key};
        opts[k++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)tls_priorities};
    }
    opts[k] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    srv->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, srv,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape_keep_nul, NULL, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, srv->opt.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, srv->opt.connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, srv->opt.connection_memory, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, srv, MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U, MHD_OPTION_STRICT_FOR_CLIENT, 1, MHD_OPTION_ARRAY,
        opts, MHD_OPTION_END);
    if (srv->daemon == NULL) {
        rc = err_set(e, INF_EIO,
                     tls ? "cannot start HTTPS on %s (address in use, or the certificate and key "
                           "are not a matching PEM pair?)"
                         : "cannot listen on %s (address in use or not permitted?)",
                     srv->opt.listen);
        goto out;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->daemon, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : 0;
    srv->watch.stop = false;
    if (pthread_create(&srv->watch.thread, NULL, watch_main, srv) == 0)
        srv->watch.running = true;
    else
        log_msg(LOG_WARN, "no slow-header watchdog: cannot start its thread");
    rc = INF_OK;
out:
    /* GnuTLS holds its own parsed copy from here on: wipe ours. */
    if (key != NULL)
        OPENSSL_cleanse(key, key_len);
    free(key);
    free(cert);
    return rc;
}

void http_stop(struct server *srv)
{
    if (srv->watch.running) {
        pthread_mutex_lock(&srv->watch.mu);
        srv->watch.stop = true;
        pthread_cond_signal(&srv->watch.cv);
        pthread_mutex_unlock(&srv->watch.mu);
        pthread_join(srv->watch.thread, NULL);
        srv->watch.running = false;
    }
    if (srv->daemon != NULL)
        MHD_stop_daemon(srv->daemon);
    srv->daemon = NULL;
}
