/*
 * auth/limiter.c - token buckets and in-flight counts per key id, in a chained hash table
 * that doubles when it holds more entries than buckets. Contract in auth/limiter.h.
 */
#include "auth/limiter.h"

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct entry {
    struct entry *next;
    double tokens;      /* as of last_ns */
    double capacity;    /* burst at the last acquire, for eviction */
    double rate;        /* rate at the last acquire, for eviction */
    int64_t last_ns;    /* monotonic time tokens was computed for */
    unsigned in_flight; /* acquired and not yet released */
    uint32_t hash;
    char id[]; /* NUL-terminated key id */
};

struct limiter {
    pthread_mutex_t mu; /* guards everything below */
    struct entry **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
    uint64_t acquires; /* since the last sweep */
};

#define INITIAL_BUCKETS 64

static uint32_t id_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

struct limiter *limiter_new(void)
{
    struct limiter *l = calloc(1, sizeof *l);
    if (l == NULL)
        return NULL;
    l->buckets = calloc(INITIAL_BUCKETS, sizeof *l->buckets);
    if (l->buckets == NULL || pthread_mutex_init(&l->mu, NULL) != 0) {
        free(l->buckets);
        free(l);
        return NULL;
    }
    l->n_buckets = INITIAL_BUCKETS;
    return l;
}

void limiter_free(struct limiter *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n_buckets; i++) {
        struct entry *en = l->buckets[i];
        while (en != NULL) {
            struct entry *next = en->next;
            free(en);
            en = next;
        }
    }
    free(l->buckets);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

const char *limit_result_str(enum limit_result r)
{
    switch (r) {
        case LIMIT_OK:
            return "ok";
        case LIMIT_RATE:
            return "rate";
        case LIMIT_CONCURRENCY:
            return "concurrency";
    }
    return "invalid";
}

static struct entry *find_locked(struct limiter *l, const char *id, uint32_t h)
{
    for (struct entry *en = l->buckets[h & (l->n_buckets - 1)]; en != NULL; en = en->next) {
        if (en->hash == h && strcmp(en->id, id) == 0)
            return en;
    }
    return NULL;
}

/* Doubles the table; on allocation failure keeps the old one (longer chains, still right). */
static void grow_locked(struct limiter *l)
{
    size_t n = l->n_buckets * 2;
    struct entry **b = calloc(n, sizeof *b);
    if (b == NULL)
        return;
    for (size_t i = 0; i < l->n_buckets; i++) {
        struct entry *en = l->buckets[i];
        while (en != NULL) {
            struct entry *next = en->next;
            en->next = b[en->hash & (n - 1)];
            b[en->hash & (n - 1)] = en;
            en = next;
        }
    }
    free(l->buckets);
    l->buckets = b;
    l->n_buckets = n;
}

/* Brings en's bucket up to now under (rate, capacity). */
static void refill(struct entry *en, double rate, double capacity, int64_t now_ns)
{
    if (now_ns > en->last_ns) {
        if (rate > 0)
            en->tokens += rate * (double)(now_ns - en->last_ns) / 1e9;
        en->last_ns = now_ns;
    }
    if (en->tokens > capacity)
        en->tokens = capacity;
}

static size_t evict_locked(struct limiter *l, int64_t now_ns)
{
    size_t dropped = 0;
    for (size_t i = 0; i < l->n_buckets; i++) {
        struct entry **pp = &l->buckets[i];
        while (*pp != NULL) {
            struct entry *en = *pp;
            refill(en, en->rate, en->capacity, now_ns);
            if (en->in_flight == 0 && (en->rate <= 0 || en->tokens >= en->capacity)) {
                *pp = en->next;
                free(en);
                dropped++;
            } else {
                pp = &en->next;
            }
        }
    }
    l->n_entries -= dropped;
    return dropped;
}

enum limit_result limiter_acquire(struct limiter *l, const char *key_id,
                                  const struct key_limits *lim, int64_t now_ns,
                                  unsigned *retry_after_s)
{
    if (now_ns == 0)
        now_ns = mono_ns();
    double rate = lim->rate > 0 && isfinite(lim->rate) ? lim->rate : 0;
    double capacity = lim->burst >= 1 && isfinite(lim->burst) ? lim->burst : 1;
    uint32_t h = id_hash(key_id);
    enum limit_result res = LIMIT_OK;
    unsigned retry = 0;

    pthread_mutex_lock(&l->mu);
    if (++l->acquires >= LIMITER_SWEEP_EVERY) {
        l->acquires = 0;
        evict_locked(l, now_ns);
    }
    struct entry *en = find_locked(l, key_id, h);
    if (en == NULL) {
        size_t len = strlen(key_id);
        en = malloc(sizeof *en + len + 1);
        if (en == NULL) {
            res = LIMIT_CONCURRENCY;
            retry = 1;
            goto out;
        }
        memcpy(en->id, key_id, len + 1);
        en->hash = h;
        en->tokens = capacity;
        en->last_ns = now_ns;
        en->in_flight = 0;
        if (l->n_entries >= l->n_buckets)
            grow_locked(l);
        en->next = l->buckets[h & (l->n_buckets - 1)];
        l->buckets[h & (l->n_buckets - 1)] = en;
        l->n_entries++;
    }
    en->rate = rate;
    en->capacity = capacity;
    refill(en, rate, capacity, now_ns);

    if (lim->max_concurrent > 0 && en->in_flight >= lim->max_concurrent) {
        res = LIMIT_CONCURRENCY;
        retry = 1;
        goto out;
    }
    if (rate > 0) {
        if (en->tokens < 1) {
            double wait = ceil((1 - en->tokens) / rate);
            res = LIMIT_RATE;
            retry = wait < 1                         ? 1
                    : wait > LIMITER_RETRY_AFTER_MAX ? LIMITER_RETRY_AFTER_MAX
                                                     : (unsigned)wait;
            goto out;
        }
        en->tokens -= 1;
    }
    en->in_flight++;
out:
    pthread_mutex_unlock(&l->mu);
    if (res != LIMIT_OK && retry_after_s != NULL)
        *retry_after_s = retry;
    return res;
}

void limiter_release(struct limiter *l, const char *key_id)
{
    uint32_t h = id_hash(key_id);
    pthread_mutex_lock(&l->mu);
    struct entry *en = find_locked(l, key_id, h);
    if (en != NULL && en->in_flight > 0)
        en->in_flight--;
    pthread_mutex_unlock(&l->mu);
}

size_t limiter_evict_idle(struct limiter *l, int64_t now_ns)
{
    if (now_ns == 0)
        now_ns = mono_ns();
    pthread_mutex_lock(&l->mu);
    size_t n = evict_locked(l, now_ns);
    pthread_mutex_unlock(&l->mu);
    return n;
}

size_t limiter_size(struct limiter *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->n_entries;
    pthread_mutex_unlock(&l->mu);
    return n;
}
