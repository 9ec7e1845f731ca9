/*
 * tests/auth/test_limiter.c - per-key token buckets and concurrency caps on explicit
 * monotonic times: a burst then 429 with a sane Retry-After, recovery after exactly that
 * wait, the concurrency cap and release, unlimited rates, changed limits, many keys and
 * eviction of idle entries, and the cap held under 8 threads on the real clock.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth/limiter.h"
#include "tests/test.h"

#define SEC 1000000000LL
#define T0  (1000 * SEC) /* an arbitrary monotonic start */

static struct limiter *new_ok(void)
{
    struct limiter *l = limiter_new();
    if (l == NULL) {
        fprintf(stderr, "limiter_new failed\n");
        exit(1);
    }
    return l;
}

/* Acquires and releases at once; returns the result. */
static enum limit_result hit(struct limiter *l, const char *id, const struct key_limits *lim,
                             int64_t now, unsigned *retry)
{
    enum limit_result r = limiter_acquire(l, id, lim, now, retry);
    if (r == LIMIT_OK)
        limiter_release(l, id);
    return r;
}

static void test_burst_then_429(void)
{
    struct limiter *l = new_ok();
    struct key_limits lim = {.rate = 2, .burst = 3, .max_concurrent = 0};
    unsigned retry = 0;
    for (int i = 0; i < 3; i++)
        CHECK(hit(l, "key00001", &lim, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "key00001", &lim, T0, &retry) == LIMIT_RATE);
    CHECK_MSG(retry == 1, "retry %u", retry); /* 2/s: a token in 0.5 s, rounded up to 1 */
    /* still empty a moment later, still a sane answer */
    retry = 0;
    CHECK(hit(l, "key00001", &lim, T0 + SEC / 4, &retry) == LIMIT_RATE && retry == 1);
    /* recovers after the advertised wait */
    CHECK(hit(l, "key00001", &lim, T0 + SEC / 2, &retry) == LIMIT_OK);
    CHECK(hit(l, "key00001", &lim, T0 + SEC / 2, &retry) == LIMIT_RATE);
    /* other keys are not affected */
    CHECK(hit(l, "key00002", &lim, T0 + SEC / 2, &retry) == LIMIT_OK);

    /* a slow rate gives a longer Retry-After, and it is honest */
    struct key_limits slow = {.rate = 0.1, .burst = 1};
    CHECK(hit(l, "slow0001", &slow, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "slow0001", &slow, T0, &retry) == LIMIT_RATE);
    CHECK_MSG(retry == 10, "retry %u", retry);
    CHECK(hit(l, "slow0001", &slow, T0 + 9 * SEC, &retry) == LIMIT_RATE && retry == 1);
    CHECK(hit(l, "slow0001", &slow, T0 + 10 * SEC, &retry) == LIMIT_OK);

    /* Retry-After is capped for absurdly slow rates */
    struct key_limits glacial = {.rate = 1e-9, .burst = 1};
    CHECK(hit(l, "glacial1", &glacial, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "glacial1", &glacial, T0, &retry) == LIMIT_RATE);
    CHECK(retry == LIMITER_RETRY_AFTER_MAX);

    /* a fractional wait rounds up: 3/s with 0.4 tokens left needs 0.2 s -> 1 */
    struct key_limits r3 = {.rate = 3, .burst = 1};
    CHECK(hit(l, "r3r3r3r3", &r3, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "r3r3r3r3", &r3, T0 + SEC * 4 / 10 / 3, &retry) == LIMIT_RATE && retry == 1);
    CHECK(strcmp(limit_result_str(LIMIT_RATE), "rate") == 0);
    CHECK(strcmp(limit_result_str(LIMIT_CONCURRENCY), "concurrency") == 0);
    CHECK(strcmp(limit_result_str(LIMIT_OK), "ok") == 0);
    limiter_free(l);
    limiter_free(NULL);
}

static void test_refill(void)
{
    struct limiter *l = new_ok();
    struct key_limits lim = {.rate = 10, .burst = 5};
    unsigned retry;
    for (int i = 0; i < 5; i++)
        CHECK(hit(l, "k", &lim, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "k", &lim, T0, &retry) == LIMIT_RATE);
    /* 0.35 s at 10/s: 3 tokens (and a half) */
    int ok = 0;
    for (int i = 0; i < 10; i++)
        ok += hit(l, "k", &lim, T0 + SEC * 35 / 100, &retry) == LIMIT_OK;
    CHECK_MSG(ok == 3, "ok = %d", ok);
    /* an hour later the bucket holds burst tokens, not 36000 */
    ok = 0;
    for (int i = 0; i < 20; i++)
        ok += hit(l, "k", &lim, T0 + 3600 * SEC, &retry) == LIMIT_OK;
    CHECK_MSG(ok == 5, "ok = %d", ok);
    /* a time earlier than the last one counts as the last one: no refill, no crash */
    CHECK(hit(l, "k", &lim, T0, &retry) == LIMIT_RATE);
    /* a lowered burst cuts a full bucket down at once */
    struct key_limits small = {.rate = 10, .burst = 2};
    ok = 0;
    for (int i = 0; i < 10; i++)
        ok += hit(l, "k", &small, T0 + 7200 * SEC, &retry) == LIMIT_OK;
    CHECK_MSG(ok == 2, "ok = %d", ok);
    /* burst below 1 counts as 1, so a limited key is never locked out for good */
    struct key_limits zero_burst = {.rate = 1, .burst = 0};
    CHECK(hit(l, "zb", &zero_burst, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "zb", &zero_burst, T0, &retry) == LIMIT_RATE && retry == 1);
    CHECK(hit(l, "zb", &zero_burst, T0 + SEC, &retry) == LIMIT_OK);
    /* now_ns = 0 reads the real monotonic clock */
    CHECK(hit(l, "realclock", &lim, 0, &retry) == LIMIT_OK);
    limiter_free(l);
}

static void test_concurrency_cap(void)
{
    struct limiter *l = new_ok();
    struct key_limits lim = {.rate = 1, .burst = 3, .max_concurrent = 2};
    unsigned retry = 0;
    CHECK(limiter_acquire(l, "c", &lim, T0, &retry) == LIMIT_OK);
    CHECK(limiter_acquire(l, "c", &lim, T0, &retry) == LIMIT_OK);
    CHECK(limiter_acquire(l, "c", &lim, T0, &retry) == LIMIT_CONCURRENCY && retry == 1);
    /* turned away for concurrency: no token spent, so the third token is still there */
    limiter_release(l, "c");
    CHECK(limiter_acquire(l, "c", &lim, T0, &retry) == LIMIT_OK);
    limiter_release(l, "c");
    limiter_release(l, "c");
    CHECK(limiter_acquire(l, "c", &lim, T0, &retry) == LIMIT_RATE && retry == 1);
    /* unmatched releases are ignored: the cap still holds afterwards */
    limiter_release(l, "c");
    limiter_release(l, "never-seen");
    struct key_limits unl = {.rate = 0, .max_concurrent = 1};
    CHECK(limiter_acquire(l, "c", &unl, T0, &retry) == LIMIT_OK);
    CHECK(limiter_acquire(l, "c", &unl, T0, &retry) == LIMIT_CONCURRENCY);
    limiter_release(l, "c");
    CHECK(limiter_acquire(l, "c", &unl, T0, &retry) == LIMIT_OK);
    limiter_release(l, "c");
    limiter_free(l);
}

static void test_unlimited(void)
{
    struct limiter *l = new_ok();
    struct key_limits lim = {.rate = 0, .burst = 0, .max_concurrent = 0};
    unsigned retry = 12345;
    int ok = 0;
    for (int i = 0; i < 10000; i++)
        ok += limiter_acquire(l, "u", &lim, T0, &retry) == LIMIT_OK; /* never released */
    CHECK(ok == 10000 && retry == 12345);                            /* untouched on OK */
    for (int i = 0; i < 10000; i++)
        limiter_release(l, "u");
    /* negative and NaN rates are "no rate limit" too, not a lockout */
    struct key_limits neg = {.rate = -5, .burst = 1};
    struct key_limits nan_rate = {.rate = NAN, .burst = 1};
    CHECK(hit(l, "n", &neg, T0, &retry) == LIMIT_OK && hit(l, "n", &neg, T0, &retry) == LIMIT_OK);
    CHECK(hit(l, "m", &nan_rate, T0, &retry) == LIMIT_OK &&
          hit(l, "m", &nan_rate, T0, &retry) == LIMIT_OK);
    limiter_free(l);
}

static void test_many_keys(void)
{
    struct limiter *l = new_ok();
    struct key_limits lim = {.rate = 1, .burst = 2, .max_concurrent = 4};
    int n = test_quick() ? 1000 : 5000;
    unsigned retry;
    char id[16];
    int ok = 0;
    for (int i = 0; i < n; i++) {
        snprintf(id, sizeof id, "k%07d", i);
        ok += hit(l, id, &lim, T0, &retry) == LIMIT_OK;
        ok += hit(l, id, &lim, T0, &retry) == LIMIT_OK;
        ok += hit(l, id, &lim, T0, &retry) == LIMIT_RATE; /* each key has its own bucket */
    }
    CHECK(ok == 3 * n);
    CHECK(limiter_size(l) == (size_t)n);
    /* one key still has a request in flight */
    CHECK(limiter_acquire(l, "k0000007", &lim, T0 + 100 * SEC, &retry) == LIMIT_OK);
    /* not yet refilled: nothing is dropped */
    CHECK(limiter_evict_idle(l, T0 + SEC) == 0 && limiter_size(l) == (size_t)n);
    /* refilled: all but the busy one are dropped, and dropping changes nothing */
    CHECK(limiter_evict_idle(l, T0 + 100 * SEC) == (size_t)n - 1 && limiter_size(l) == 1);
    CHECK(hit(l, "k0000003", &lim, T0 + 100 * SEC, &retry) == LIMIT_OK);
    CHECK(hit(l, "k0000003", &lim, T0 + 100 * SEC, &retry) == LIMIT_OK);
    CHECK(hit(l, "k0000003", &lim, T0 + 100 * SEC, &retry) == LIMIT_RATE);
    limiter_release(l, "k0000007");
    /* acquire sweeps by itself every LIMITER_SWEEP_EVERY calls */
    for (int i = 0; i < LIMITER_SWEEP_EVERY; i++)
        hit(l, "k0000001", &lim, T0 + (200 + i) * SEC, &retry);
    CHECK_MSG(limiter_size(l) == 1, "size %zu", limiter_size(l));
    limiter_free(l);
}

struct cap_arg {
    struct limiter *l;
    atomic_int *in_flight;
    atomic_int *max_seen;
    int ok, refused, iters;
};

static void *cap_thread(void *arg)
{
    struct cap_arg *a = arg;
    struct key_limits lim = {.rate = 0, .max_concurrent = 4};
    for (int i = 0; i < a->iters; i++) {
        unsigned retry = 0;
        if (limiter_acquire(a->l, "shared", &lim, 0, &retry) != LIMIT_OK) {
            a->refused += retry == 1;
            continue;
        }
        int now = atomic_fetch_add(a->in_flight, 1) + 1;
        int prev = atomic_load(a->max_seen);
        while (now > prev && !atomic_compare_exchange_weak(a->max_seen, &prev, now))
            ;
        atomic_fetch_sub(a->in_flight, 1);
        limiter_release(a->l, "shared");
        a->ok++;
    }
    return NULL;
}

static void test_threads(void)
{
    struct limiter *l = new_ok();
    enum { NT = 8 };
    pthread_t th[NT];
    struct cap_arg args[NT];
    atomic_int in_flight = 0, max_seen = 0;
    int iters = test_quick() ? 2000 : 20000;
    for (int i = 0; i < NT; i++) {
        args[i] = (struct cap_arg){l, &in_flight, &max_seen, 0, 0, iters};
        CHECK(pthread_create(&th[i], NULL, cap_thread, &args[i]) == 0);
    }
    int ok = 0, refused = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
        refused += args[i].refused;
    }
    CHECK(ok + refused == NT * iters);
    CHECK_MSG(atomic_load(&max_seen) <= 4, "max in flight %d", atomic_load(&max_seen));
    CHECK(ok > 0);
    /* everything released: the full cap is available again */
    struct key_limits lim = {.rate = 0, .max_concurrent = 4};
    unsigned retry;
    for (int i = 0; i < 4; i++)
        CHECK(limiter_acquire(l, "shared", &lim, 0, &retry) == LIMIT_OK);
    CHECK(limiter_acquire(l, "shared", &lim, 0, &retry) == LIMIT_CONCURRENCY);
    limiter_free(l);
}

int main(void)
{
    RUN(test_burst_then_429);
    RUN(test_refill);
    RUN(test_concurrency_cap);
    RUN(test_unlimited);
    RUN(test_many_keys);
    RUN(test_threads);
    return test_finish();
}
