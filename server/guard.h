/*
 * server/guard.h - where server/ meets auth/: every request to a protected route passes the
 * guard (API key, scope, rate and concurrency limits) and leaves one audit record; key, model
 * and server events leave records too. Internal to server/.
 *
 * The order of the checks on a request's first callback (http.c), before its body is read:
 *   route, method -> a key in the query string (401) -> the Authorization header (401 with
 *   WWW-Authenticate: Bearer; 503 if the key could not be checked for want of memory) -> the
 *   route's scope (403) -> the audit log is writable (503) ->
 *   the key's token bucket and concurrency cap (429 with Retry-After) -> content type, size.
 * Health routes are open; /metrics needs admin unless --metrics-public.
 *
 * The audit record of a request is written, and is durable, before its response is queued
 * (guard_audit_request() runs inside http_respond_extra()): a client never sees an answer the
 * log does not hold. If the record cannot be written the answer becomes 503 (fail closed).
 *
 * Threads: everything here is called from MHD's worker threads at once; the keystore, the
 * limiter and the audit log each have their own lock, and no lock of this file is held while
 * one of theirs is taken.
 */
#ifndef INFERA_SERVER_GUARD_H
#define INFERA_SERVER_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>
#include <microhttpd.h>

#include "auth/auth.h"

struct server;
struct server_options;
struct request;

/* The server's security state; lives in struct server, set up by guard_open(). */
struct guard {
    bool auth;                /* --auth: API keys required on protected routes */
    bool metrics_public;      /* --metrics-public: /metrics needs no key */
    struct master_key master; /* wiped by guard_close() */
    uint8_t mask_key[32];     /* PII masker key (derived "mask") */
    struct keystore *keys;    /* data/keys.json; NULL when auth is off */
    struct limiter *limiter;  /* per-key limits; NULL when auth is off */
    struct audit_log *audit;  /* data/audit/; NULL when audit is off */
    char audit_dir[4200];     /* where the audit segments are (--audit-dir) */
};

/*
 * Opens the master key of opt->data_dir (creating it on an empty data dir), the keystore and
 * the audit log. On a first start it creates one admin key, writes it to data/admin.key (0600)
 * and logs it once. Returns 0 or a status with a message in e (a missing or wrong master key,
 * an unreadable keys.json or audit log); then g holds nothing to free.
 */
int guard_open(struct guard *g, const struct server_options *opt, struct err *e);

/* Flushes and closes the audit log, frees the keystore and limiter, wipes the keys. */
void guard_close(struct guard *g);

/*
 * Runs the checks above for rq (route and method already matched). Returns true when the
 * request may go on; otherwise it has been answered (401/403/429/503) and the caller returns
 * the MHD result in *res.
 */
bool guard_check(struct request *rq, enum MHD_Result *res);

/* Releases what guard_check() took (the concurrency slot). Called once per request at its end. */
void guard_release(struct request *rq);

/*
 * Writes rq's audit record for the answer it is about to get: status, outcome (ok, denied,
 * error) and reason, latency, byte counts, SHA-256 of the body. Returns 0 when the record is
 * durable (or rq needs none: an open route, no route at all, audit off), INF_EIO when the log
 * cannot be written.
 */
int guard_audit_request(struct request *rq, unsigned status, size_t bytes_out);

/*
 * Writes an event record that is not a request: "key.created", "model.loaded", ... fields is a
 * flat object (borrowed); "event" is set from the argument; rq (may be NULL) adds request_id and
 * key_id. Free text in fields must already be masked (guard_mask). Returns 0 or INF_EIO; a
 * no-op returning 0 when audit is off.
 */
int guard_event(struct server *srv, struct request *rq, const char *event, json_t *fields);

/* Masks PII in text (NUL-terminated) into a new string, cut to max_len bytes (0: no cut) on
 * a UTF-8 boundary. Caller frees; NULL when out of memory. */
char *guard_mask(struct server *srv, const char *text, size_t max_len);

/* Is the audit log able to take records? (true when audit is off) */
bool guard_audit_healthy(struct server *srv);

#endif /* INFERA_SERVER_GUARD_H */
