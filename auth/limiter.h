/*
 * auth/limiter.h - per-key rate limits (token bucket) and concurrency caps (DESIGN.md §6).
 *
 * Each key id has a bucket of capacity `burst` tokens that refills at `rate` tokens per second
 * on the monotonic clock, and a count of requests in flight. A request takes one token and one
 * slot; when either is missing the server answers 429 with Retry-After.
 *
 * Limits are passed on every call (struct principal's effective limits), not stored, so a
 * changed limit applies to the next request: a bucket above a lowered capacity is cut down to
 * it. A bucket seen for the first time starts full.
 *
 * Memory: one small entry per key id seen. An entry whose bucket has refilled completely and
 * that has nothing in flight holds no information (a new entry would be identical), so it may
 * be dropped: limiter_evict_idle() does this, and limiter_acquire() calls it every
 * LIMITER_SWEEP_EVERY acquisitions. Key ids come from verified principals only, so their
 * number is bounded by the keystore, not by what clients send.
 *
 * Thread safety: every function except limiter_new() and limiter_free() may be called from
 * any thread at once; one mutex inside struct limiter guards all entries (each call holds it
 * for a hash lookup and a few floating-point operations). It takes no other lock.
 */
#ifndef INFERA_AUTH_LIMITER_H
#define INFERA_AUTH_LIMITER_H

#include <stddef.h>
#include <stdint.h>

#include "auth/keys.h"

#define LIMITER_SWEEP_EVERY     4096
#define LIMITER_RETRY_AFTER_MAX 86400 /* seconds: a cap on Retry-After for very slow rates */

struct limiter;

/* Returns a new, empty limiter (caller frees with limiter_free()), or NULL when out of
 * memory. */
struct limiter *limiter_new(void);

/* Frees l and every entry. NULL is a no-op. No other call may be running on l. */
void limiter_free(struct limiter *l);

enum limit_result {
    LIMIT_OK,          /* a token and a slot were taken: call limiter_release() when done */
    LIMIT_RATE,        /* the bucket is empty */
    LIMIT_CONCURRENCY, /* max_concurrent requests are in flight (or, rarely, out of memory) */
};

/* "ok", "rate", "concurrency" (static; metrics labels). */
const char *limit_result_str(enum limit_result r);

/*
 * Takes one token and one concurrency slot for key_id (borrowed, NUL-terminated) under the
 * effective limits lim (borrowed): rate <= 0 means no rate limit, max_concurrent 0 no cap,
 * burst < 1 counts as 1. now_ns is the monotonic time in ns; 0 reads CLOCK_MONOTONIC (tests
 * pass explicit, non-decreasing times; a time earlier than the last one is treated as the
 * last one).
 *
 * LIMIT_OK: the caller MUST call limiter_release(l, key_id) once when the request ends.
 * LIMIT_RATE: nothing is taken; *retry_after_s (optional) gets the whole seconds, rounded up,
 *   until one token is back: at least 1, at most LIMITER_RETRY_AFTER_MAX.
 * LIMIT_CONCURRENCY: nothing is taken; *retry_after_s gets 1. Also returned when a new entry
 *   cannot be allocated (fail closed).
 * The concurrency cap is checked first, so a request turned away for it spends no token.
 */
enum limit_result limiter_acquire(struct limiter *l, const char *key_id,
                                  const struct key_limits *lim, int64_t now_ns,
                                  unsigned *retry_after_s);

/* Gives back the slot taken by a successful limiter_acquire(). An unmatched release is
 * ignored (never drives the count below zero). */
void limiter_release(struct limiter *l, const char *key_id);

/*
 * Drops every entry with nothing in flight whose bucket is full at now_ns (0: read the clock)
 * or that has no rate limit. Returns how many were dropped. Behaviour is unchanged by it.
 */
size_t limiter_evict_idle(struct limiter *l, int64_t now_ns);

/* The number of entries held (for tests and metrics). */
size_t limiter_size(struct limiter *l);

#endif /* INFERA_AUTH_LIMITER_H */
