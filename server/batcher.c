/*
 * server/batcher.c - leader-based dynamic batching (see batcher.h for the scheme).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batcher.h"
#include "metrics.h"

/* One waiting request. Lives on its caller's stack; linked into the queue while pending. */
struct batch_item {
    const float *x; /* (B, F) borrowed */
    float *out;     /* (B, O) borrowed */
    size_t B;
    pthread_cond_t cond; /* signalled when done, or when this item may lead */
    bool done;
    int rc;
    struct err err;
    struct batch_item *next;
};

/* A worker slot: one workspace and gather buffers, used by one leader at a time. */
struct batch_slot {
    struct model_workspace *ws;
    float *x;   /* (max_batch, F) merged inputs */
    float *out; /* (max_batch, O) merged outputs */
    bool busy;
};

struct batcher {
    const struct model *model;
    struct batcher_config cfg;
    struct metrics *metrics;
    char *name;
    pthread_mutex_t lock; /* guards everything below */
    struct batch_item *head, *tail;
    size_t queued;                     /* items in the queue */
    size_t queued_rows;                /* their rows */
    size_t running;                    /* items taken by a leader and not yet done */
    size_t active;                     /* leaders running */
    struct batch_item *waiting_leader; /* a leader sleeping until the batch fills */
    struct batch_slot *slots;          /* cfg.workers */
};

void batcher_free(struct batcher *b)
{
    if (b == NULL)
        return;
    for (size_t i = 0; b->slots != NULL && i < b->cfg.workers; i++) {
        model_workspace_free(b->slots[i].ws);
        free(b->slots[i].x);
        free(b->slots[i].out);
    }
    free(b->slots);
    free(b->name);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

struct batcher *batcher_new(const struct model *m, const struct batcher_config *cfg,
                            struct metrics *metrics, const char *name, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    if (cfg->max_batch == 0 || cfg->workers == 0 || cfg->queue_cap == 0) {
        err_set(e, INF_EINVAL, "batcher: max_batch, workers and queue_cap must be positive");
        return NULL;
    }
    struct batcher *b = calloc(1, sizeof *b);
    if (b == NULL)
        goto oom;
    pthread_mutex_init(&b->lock, NULL);
    b->model = m;
    b->cfg = *cfg;
    b->metrics = metrics;
    b->name = strdup(name);
    b->slots = calloc(cfg->workers, sizeof *b->slots);
    if (b->name == NULL || b->slots == NULL)
        goto oom;
    for (size_t i = 0; i < cfg->workers; i++) {
        struct batch_slot *s = &b->slots[i];
        s->ws = model_workspace_new(m, cfg->max_batch, e);
        if (s->ws == NULL)
            goto fail;
        s->x = malloc(cfg->max_batch * info->in_size * sizeof(float));
        s->out = malloc(cfg->max_batch * info->out_size * sizeof(float));
        if (s->x == NULL || s->out == NULL)
            goto oom;
    }
    return b;
oom:
    err_set(e, INF_ENOMEM, "batcher: out of memory");
fail:
    batcher_free(b);
    return NULL;
}

size_t batcher_depth(struct batcher *b)
{
    pthread_mutex_lock(&b->lock);
    size_t d = b->queued + b->running;
    pthread_mutex_unlock(&b->lock);
    return d;
}

static void deadline_after(struct timespec *ts, int64_t us)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += us / 1000000;
    ts->tv_nsec += (long)(us % 1000000) * 1000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Runs rows of items taken by a leader through slot s (lock not held). */
static void run_batch(struct batcher *b, struct batch_slot *s, struct batch_item *items,
                      size_t n_items, size_t rows)
{
    const struct model_info *info = model_get_info(b->model);
    const size_t F = info->in_size, O = info->out_size;
    if (n_items == 1 && items->B <= b->cfg.max_batch) {
        items->rc = model_predict(b->model, s->ws, items->x, items->B, items->out, &items->err);
        return;
    }
    if (n_items == 1) { /* a request larger than max_batch runs alone, in chunks */
        struct batch_item *it = items;
        for (size_t r = 0; r < it->B && it->rc == INF_OK; r += b->cfg.max_batch) {
            size_t n = it->B - r < b->cfg.max_batch ? it->B - r : b->cfg.max_batch;
            it->rc = model_predict(b->model, s->ws, it->x + r * F, n, it->out + r * O, &it->err);
        }
        return;
    }
    size_t off = 0;
    for (struct batch_item *it = items; it != NULL; it = it->next) {
        memcpy(s->x + off * F, it->x, it->B * F * sizeof(float));
        off += it->B;
    }
    struct err e = {0};
    int rc = model_predict(b->model, s->ws, s->x, rows, s->out, &e);
    off = 0;
    for (struct batch_item *it = items; it != NULL; it = it->next) {
        it->rc = rc;
        if (rc == INF_OK)
            memcpy(it->out, s->out + off * O, it->B * O * sizeof(float));
        else
            it->err = e;
        off += it->B;
    }
}

/* Called with the lock held by the head item's thread when a slot is free. */
static void lead(struct batcher *b, struct batch_item *self)
{
    b->active++;
    if (b->cfg.max_delay_us > 0 && b->queued_rows < b->cfg.max_batch) {
        struct timespec deadline;
        deadline_after(&deadline, b->cfg.max_delay_us);
        b->waiting_leader = self;
        while (b->queued_rows < b->cfg.max_batch &&
               pthread_cond_timedwait(&self->cond, &b->lock, &deadline) != ETIMEDOUT)
            ;
        b->waiting_leader = NULL;
    }
    /* Take whole requests from the head, FIFO, up to max_batch rows (at least one). */
    struct batch_item *first = b->head, *last = b->head;
    size_t rows = first->B, n = 1;
    while (last->next != NULL && rows + last->next->B <= b->cfg.max_batch) {
        last = last->next;
        rows += last->B;
        n++;
    }
    b->head = last->next;
    if (b->head == NULL)
        b->tail = NULL;
    last->next = NULL;
    b->queued -= n;
    b->queued_rows -= rows;
    b->running += n;
    struct batch_slot *slot = NULL;
    for (size_t i = 0; i < b->cfg.workers && slot == NULL; i++)
        if (!b->slots[i].busy)
            slot = &b->slots[i];
    slot->busy = true;
    /* Another worker may lead the next batch while this one computes. */
    if (b->head != NULL && b->active < b->cfg.workers)
        pthread_cond_signal(&b->head->cond);
    pthread_mutex_unlock(&b->lock);

    run_batch(b, slot, first, n, rows);
    if (b->metrics != NULL)
        metrics_observe_batch(b->metrics, b->name, rows);

    pthread_mutex_lock(&b->lock);
    slot->busy = false;
    b->active--;
    b->running -= n;
    for (struct batch_item *it = first; it != NULL;) {
        struct batch_item *next = it->next; /* it may be freed once done is seen */
        it->done = true;
        if (it != self)
            pthread_cond_signal(&it->cond);
        it = next;
    }
    if (b->head != NULL)
        pthread_cond_signal(&b->head->cond);
}

int batcher_run(struct batcher *b, const float *x, size_t B, float *out, struct err *e)
{
    struct batch_item item = {.x = x, .out = out, .B = B};
    pthread_condattr_t attr; /* timed waits measure the monotonic clock */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&item.cond, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_lock(&b->lock);
    if (b->queued >= b->cfg.queue_cap) {
        pthread_mutex_unlock(&b->lock);
        pthread_cond_destroy(&item.cond);
        if (b->metrics != NULL)
            metrics_reject(b->metrics, "queue_full");
        return err_set(e, INF_ELIMIT,
                       "the queue of this model is full (%zu requests); retry "
                       "later",
                       b->cfg.queue_cap);
    }
    if (b->tail != NULL)
        b->tail->next = &item;
    else
        b->head = &item;
    b->tail = &item;
    b->queued++;
    b->queued_rows += B;
    if (b->metrics != NULL)
        metrics_queue_add(b->metrics, b->name, 1);
    if (b->waiting_leader != NULL && b->queued_rows >= b->cfg.max_batch)
        pthread_cond_signal(&b->waiting_leader->cond);
    while (!item.done) {
        if (b->head == &item && b->active < b->cfg.workers)
            lead(b, &item);
        else
            pthread_cond_wait(&item.cond, &b->lock);
    }
    pthread_mutex_unlock(&b->lock);
    pthread_cond_destroy(&item.cond);
    if (b->metrics != NULL)
        metrics_queue_add(b->metrics, b->name, -1);
    if (item.rc != INF_OK)
        err_set(e, item.rc, "%s", item.err.msg);
    return item.rc;
}
