/*
 * server/guard.c - API keys, scopes, limits and the audit record of every protected request
 * (see guard.h for the order of the checks).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "guard.h"
#include "http.h"
#include "metrics.h"

/* ------------------------------------------------------------------------------------------
 * Open and close
 * ---------------------------------------------------------------------------------------- */

/* First start: one admin key, written to data/admin.key (0600) and logged this once. */
static int create_first_admin_key(struct guard *g, const char *data_dir, struct err *e)
{
    char token[KEY_TOKEN_MAX];
    struct key_info info;
    int rc = keystore_create(g->keys, "admin", AUTH_SCOPE_ADMIN, NULL, token, &info, e);
    if (rc != INF_OK)
        return rc;
    char path[4200];
    char line[KEY_TOKEN_MAX + 1];
    size_t n = strlen(token);
    memcpy(line, token, n);
    line[n] = '\n';
    rc = fs_path_join(path, sizeof path, data_dir, "admin.key", e);
    if (rc == INF_OK)
        rc = fs_write_atomic(path, line, n + 1, 0600, e);
    if (rc == INF_OK)
        log_msg(LOG_WARN,
                "first start: created the admin API key %s (id %s), also written to %s; it is "
                "shown this once",
                token, info.id, path);
    OPENSSL_cleanse(token, sizeof token);
    OPENSSL_cleanse(line, sizeof line);
    return rc;
}

int guard_open(struct guard *g, const struct server_options *opt, struct err *e)
{
    memset(g, 0, sizeof *g);
    g->auth = opt->auth;
    g->metrics_public = opt->metrics_public;
    struct master_source src = {
        .key_file = opt->master_key_file[0] ? opt->master_key_file : NULL,
        .env_value = getenv("INFERA_MASTER_KEY"),
    };
    bool created = false;
    char path[4200];
    uint8_t k[32];
    int rc = master_key_open(opt->data_dir, &src, &g->master, &created, e);
    if (rc != INF_OK)
        return rc;
    if (master_key_derive(&g->master, "mask", g->mask_key) != INF_OK) {
        rc = err_set(e, INF_EIO, "cannot derive the masking key");
        goto fail;
    }
    if (opt->audit) {
        struct audit_options ao = {.segment_bytes = opt->audit_segment_bytes};
        if (opt->audit_dir[0])
            snprintf(path, sizeof path, "%s", opt->audit_dir);
        else if ((rc = fs_path_join(path, sizeof path, opt->data_dir, "audit", e)) != INF_OK)
            goto fail;
        snprintf(g->audit_dir, sizeof g->audit_dir, "%s", path);
        if (master_key_derive(&g->master, "audit", k) != INF_OK) {
            rc = err_set(e, INF_EIO, "cannot derive the audit key");
            goto fail;
        }
        rc = audit_open(path, k, &ao, &g->audit, e);
        OPENSSL_cleanse(k, sizeof k);
        if (rc != INF_OK) {
            err_prefix(e, "audit log %s", path);
            goto fail;
        }
    }
    if (opt->auth) {
        if ((rc = fs_path_join(path, sizeof path, opt->data_dir, "keys.json", e)) != INF_OK)
            goto fail;
        if (master_key_derive(&g->master, "key-pepper", k) != INF_OK) {
            rc = err_set(e, INF_EIO, "cannot derive the key pepper");
            goto fail;
        }
        g->keys = keystore_open(path, k, e);
        OPENSSL_cleanse(k, sizeof k);
        g->limiter = limiter_new();
        if (g->keys == NULL) {
            rc = e && e->status ? e->status : INF_ENOMEM;
            goto fail;
        }
        if (g->limiter == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory");
            goto fail;
        }
        /* Per-key defaults by highest scope (keys may override). Inference keys are backends
         * that may send thousands of requests a second (one server does ~15k/s): the rate is
         * a guard against runaway clients, the cap on requests in flight is the real share. */
        static const struct key_limits defaults[3] = {
            {20000, 40000, 256}, /* infer */
            {100, 200, 16},      /* train */
            {20000, 40000, 256}, /* admin */
        };
        keystore_set_defaults(g->keys, defaults);
        if (created && (rc = create_first_admin_key(g, opt->data_dir, e)) != INF_OK)
            goto fail;
        if (keystore_count(g->keys) == 0)
            log_msg(LOG_WARN,
                    "no active API key: create one with `infera keys create --name NAME "
                    "--scopes admin --data-dir %s`",
                    opt->data_dir);
    } else {
        log_msg(LOG_WARN, "--auth 0: every route is open to anyone who can reach %s", opt->listen);
    }
    return INF_OK;
fail:
    guard_close(g);
    return rc;
}

void guard_close(struct guard *g)
{
    audit_close(g->audit);
    keystore_free(g->keys);
    limiter_free(g->limiter);
    master_key_wipe(&g->master);
    OPENSSL_cleanse(g->mask_key, sizeof g->mask_key);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------------------------
 * Checks
 * ---------------------------------------------------------------------------------------- */

/* The scope a route needs for this server (ROUTE_OPEN: none). */
static unsigned route_needs(const struct guard *g, const struct route *rt)
{
    if (rt->access == ROUTE_METRICS)
        return g->metrics_public ? ROUTE_OPEN : AUTH_SCOPE_ADMIN;
    return rt->access;
}

static const char *scope_name(unsigned scope)
{
    return scope == AUTH_SCOPE_ADMIN ? "admin" : scope == AUTH_SCOPE_TRAIN ? "train" : "infer";
}

/* A key must never travel in a URL (proxies and access logs keep URLs). */
struct query_scan {
    bool has_key;
};

static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    struct query_scan *q = cls;
    static const char *const names[] = {"api_key", "apikey", "key", "token", "access_token"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (key != NULL && strcasecmp(key, names[i]) == 0)
            q->has_key = true;
    if ((value != NULL && strncmp(value, "ifr_", 4) == 0) ||
        (key != NULL && strncmp(key, "ifr_", 4) == 0))
        q->has_key = true;
    return MHD_YES;
}

static void count_denial(struct server *srv, const char *reason)
{
    if (srv->metrics != NULL)
        metrics_counter_add(srv->metrics, "infera_auth_failures",
                            "Requests refused by the guard, by reason", "reason", reason, 1);
}

bool guard_check(struct request *rq, enum MHD_Result *res)
{
    struct server *srv = rq->srv;
    struct guard *g = &srv->guard;
    unsigned need = route_needs(g, rq->route);
    /* A key in a URL is refused everywhere, open routes included: it is leaked already. */
    struct query_scan q = {false};
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    if (q.has_key) {
        rq->deny_reason = "key_in_url";
        count_denial(srv, rq->deny_reason);
        *res = http_respond_error(rq, MHD_HTTP_UNAUTHORIZED,
                                  "API keys are accepted only in the Authorization header "
                                  "(Authorization: Bearer <key>), never in the URL; this key "
                                  "may have leaked into logs: revoke it");
        return false;
    }
    if (need == ROUTE_OPEN)
        return true;
    if (g->auth) {
        const char *authz =
            MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        enum auth_result ar = keystore_verify(g->keys, authz, &rq->principal, rq->key_id);
        if (ar == AUTH_ERROR) {
            rq->deny_reason = "auth_error";
            count_denial(srv, rq->deny_reason);
            *res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                      "the API key could not be checked just now (the server is "
                                      "short of memory); retry later");
            return false;
        }
        if (ar != AUTH_OK) {
            rq->deny_reason = auth_result_str(ar);
            count_denial(srv, rq->deny_reason);
            const char *msg =
                ar == AUTH_MISSING ? "an API key is required: send Authorization: Bearer <key>"
                : ar == AUTH_MALFORMED
                    ? "malformed Authorization header: expected \"Bearer ifr_<id>_<secret>\""
                : ar == AUTH_REVOKED ? "this API key has been revoked"
                                     : "invalid API key";
            *res = http_respond_error(rq, MHD_HTTP_UNAUTHORIZED, "%s", msg);
            return false;
        }
        rq->authenticated = true;
        unsigned have = rq->principal.scopes;
        if (have & AUTH_SCOPE_ADMIN)
            have |= AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN;
        if ((have & need) == 0) {
            rq->deny_reason = "scope";
            count_denial(srv, rq->deny_reason);
            *res = http_respond_error(rq, MHD_HTTP_FORBIDDEN,
                                      "this API key lacks the \"%s\" scope that %s %s needs",
                                      scope_name(need), rq->route->method, rq->route->pattern);
            return false;
        }
    }
    if (!guard_audit_healthy(srv)) {
        rq->deny_reason = "audit_unavailable";
        if (srv->metrics != NULL)
            metrics_reject(srv->metrics, "audit_unavailable");
        *res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "the audit log cannot be written: protected routes are closed "
                                  "until it can; retry later");
        return false;
    }
    if (g->limiter != NULL && rq->authenticated) {
        unsigned retry = 1;
        enum limit_result lr =
            limiter_acquire(g->limiter, rq->principal.key_id, &rq->principal.limits, 0, &retry);
        if (lr != LIMIT_OK) {
            rq->deny_reason = lr == LIMIT_RATE ? "rate" : "concurrency";
            count_denial(srv, rq->deny_reason);
            snprintf(rq->retry_buf, sizeof rq->retry_buf, "%u", retry > 0 ? retry : 1);
            rq->retry_after = rq->retry_buf;
            if (lr == LIMIT_RATE)
                *res = http_respond_error(
                    rq, MHD_HTTP_TOO_MANY_REQUESTS,
                    "rate limit of this API key (%g requests/s, burst %g) exceeded; retry after "
                    "%s s",
                    rq->principal.limits.rate, rq->principal.limits.burst, rq->retry_buf);
            else
                *res = http_respond_error(rq, MHD_HTTP_TOO_MANY_REQUESTS,
                                          "this API key already has %u requests in flight, its "
                                          "limit; retry after %s s",
                                          rq->principal.limits.max_concurrent, rq->retry_buf);
            return false;
        }
        rq->holds_slot = true;
    }
    return true;
}

void guard_release(struct request *rq)
{
    if (rq->holds_slot && rq->srv->guard.limiter != NULL)
        limiter_release(rq->srv->guard.limiter, rq->principal.key_id);
    rq->holds_slot = false;
}

/* ------------------------------------------------------------------------------------------
 * Audit records
 * ---------------------------------------------------------------------------------------- */

bool guard_audit_healthy(struct server *srv)
{
    return srv->guard.audit == NULL || audit_healthy(srv->guard.audit);
}

/* Cuts s (NUL-terminated) to at most max bytes without splitting a UTF-8 character. */
static void utf8_cut(char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    s[max] = '\0';
}

char *guard_mask(struct server *srv, const char *text, size_t max_len)
{
    size_t n = strlen(text);
    char *m =
        mask_contains_pii(text, n) ? mask_text(srv->guard.mask_key, text, n, NULL) : strdup(text);
    if (m != NULL && max_len > 0)
        utf8_cut(m, max_len);
    return m;
}

static void client_address(struct MHD_Connection *conn, char *out, size_t cap)
{
    snprintf(out, cap, "-");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)cap);
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char d[32];
    unsigned int n = 0;
    EVP_Digest(data, len, d, &n, EVP_sha256(), NULL);
    for (size_t i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = '\0';
}

/* The route's captured parameters under their audit names: {m} model, {v} version, any other
 * object_id. */
static void add_route_params(json_t *rec, const struct request *rq)
{
    const char *p = rq->route->pattern;
    for (int k = 0; k < ROUTE_MAX_PARAMS && (p = strchr(p, '{')) != NULL; k++, p++) {
        const char *name = p[1] == 'm' ? "model" : p[1] == 'v' ? "version" : "object_id";
        if (rq->params[k][0] == '\0')
            continue;
        if (p[1] == 'v') {
            char *end = NULL;
            long v = strtol(rq->params[k], &end, 10);
            if (end != rq->params[k] && *end == '\0') {
                json_object_set_new(rec, name, json_integer(v));
                continue;
            }
        }
        /* Route segments are client text: they go through the masker like any free text. */
        char *m = mask_text(rq->srv->guard.mask_key, rq->params[k], strlen(rq->params[k]), NULL);
        if (m != NULL)
            json_object_set_new(rec, name, json_string(m));
        free(m);
    }
    if (rq->model_version > 0 && json_object_get(rec, "version") == NULL)
        json_object_set_new(rec, "version", json_integer(rq->model_version));
}

int guard_audit_request(struct request *rq, unsigned status, size_t bytes_out)
{
    struct server *srv = rq->srv;
    if (srv->guard.audit == NULL || rq->route == NULL)
        return INF_OK;
    bool denied = status == 401 || status == 403 || status == 429;
    if (route_needs(&srv->guard, rq->route) == ROUTE_OPEN && !denied)
        return INF_OK;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double ms = (double)(now.tv_sec - rq->start.tv_sec) * 1e3 +
                (double)(now.tv_nsec - rq->start.tv_nsec) * 1e-6;
    char client[INET6_ADDRSTRLEN + 1];
    client_address(rq->conn, client, sizeof client);
    const char *outcome = status < 400 ? "ok" : denied ? "denied" : "error";
    json_t *rec = json_object();
    if (rec == NULL)
        return INF_ENOMEM;
    json_object_set_new(rec, "event", json_string("http.request"));
    /* The request id may be the client's (X-Request-Id): free text like any other. */
    char *rid = guard_mask(srv, rq->id, 0);
    json_object_set_new(rec, "request_id", json_string(rid ? rid : "-"));
    free(rid);
    json_object_set_new(rec, "key_id", rq->key_id[0] ? json_string(rq->key_id) : json_null());
    json_object_set_new(rec, "client", json_string(client));
    json_object_set_new(rec, "method", json_string(rq->route->method));
    json_object_set_new(rec, "route", json_string(rq->route->pattern));
    add_route_params(rec, rq);
    json_object_set_new(rec, "status", json_integer(status));
    json_object_set_new(rec, "outcome", json_string(outcome));
    const char *why = rq->deny_reason;
    char *masked = NULL;
    if (status >= 400 && rq->reason != NULL && (masked = guard_mask(srv, rq->reason, 240)))
        json_object_set_new(rec, "message", json_string(masked));
    free(masked);
    if (why != NULL)
        json_object_set_new(rec, "reason", json_string(why));
    json_object_set_new(rec, "latency_us", json_integer((json_int_t)(ms * 1e3)));
    json_object_set_new(rec, "bytes_in", json_integer((json_int_t)(rq->body_len + rq->discarded)));
    json_object_set_new(rec, "bytes_out", json_integer((json_int_t)bytes_out));
    if (rq->body != NULL && rq->body_len > 0 && !rq->body_too_large) {
        char hex[65];
        sha256_hex(rq->body, rq->body_len, hex);
        json_object_set_new(rec, "body_sha256", json_string(hex));
    }
    struct err e = {0};
    int rc = audit_append(srv->guard.audit, rec, NULL, &e);
    json_decref(rec);
    if (rc != INF_OK) {
        if (srv->metrics != NULL)
            metrics_reject(srv->metrics, "audit_unavailable");
        log_msg(LOG_ERROR, "audit: request %s refused: %s", rq->id, e.msg);
    }
    return rc;
}

int guard_event(struct server *srv, struct request *rq, const char *event, json_t *fields)
{
    if (srv == NULL || srv->guard.audit == NULL)
        return INF_OK;
    json_t *rec = fields ? json_copy(fields) : json_object();
    if (rec == NULL)
        return INF_ENOMEM;
    json_object_set_new(rec, "event", json_string(event));
    if (rq != NULL) {
        char *rid = guard_mask(srv, rq->id, 0);
        json_object_set_new(rec, "request_id", json_string(rid ? rid : "-"));
        free(rid);
        json_object_set_new(rec, "key_id", rq->key_id[0] ? json_string(rq->key_id) : json_null());
    }
    struct err e = {0};
    int rc = audit_append(srv->guard.audit, rec, NULL, &e);
    json_decref(rec);
    if (rc != INF_OK)
        log_msg(LOG_ERROR, "audit: event %s not recorded: %s", event, e.msg);
    return rc;
}
