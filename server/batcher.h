/*
 * server/batcher.h - dynamic batching of concurrent inference requests for one model version.
 * Internal to server/.
 *
 * There are no batcher threads. A request thread that finds a free worker slot and stands at
 * the head of the queue becomes the leader: it waits up to max_delay for more requests (not at
 * all when max_delay is 0), takes queued requests up to max_batch rows in FIFO order, runs one
 * forward pass on them with the slot's workspace, hands each request its rows of the output,
 * and wakes the next head. Under load, requests that arrive while a batch computes queue up
 * and leave together in the next batch; an idle server answers a lone request with no hand-off
 * to another thread at all. At most `workers` forwards of one model run at once (each
 * single-threaded BLAS, so workers ~ cores); the queue holds at most queue_cap requests and
 * refuses more (the caller answers 503).
 *
 * Thread safety: batcher_run may be called from any number of threads. batcher_free must not
 * race with batcher_run (the registry frees a batcher only after its last reference is gone).
 */
#ifndef INFERA_SERVER_BATCHER_H
#define INFERA_SERVER_BATCHER_H

#include <stdint.h>

#include "model/model.h"

struct metrics;

struct batcher_config {
    size_t max_batch;     /* rows merged into one forward (>= 1; 1 turns batching off) */
    int64_t max_delay_us; /* how long a leader waits for the batch to fill (0: never waits) */
    size_t queue_cap;     /* requests waiting at most; more are refused with INF_ELIMIT */
    size_t workers;       /* forwards of this model at once */
};

struct batcher;

/*
 * Makes a batcher for m (borrowed: must outlive the batcher). name labels metrics (copied);
 * metrics may be NULL. Returns NULL and fills e on failure.
 */
struct batcher *batcher_new(const struct model *m, const struct batcher_config *cfg,
                            struct metrics *metrics, const char *name, struct err *e);
void batcher_free(struct batcher *b);

/*
 * Runs x (B, F) through the model, merged with concurrent callers, and writes model_predict's
 * output (B, O) to out (probabilities for a classifier). Blocks until done. Returns INF_OK,
 * INF_ELIMIT when the queue is full (nothing was run), or another status with e filled.
 */
int batcher_run(struct batcher *b, const float *x, size_t B, float *out, struct err *e);

/* Requests queued or running right now (for metrics and drain). */
size_t batcher_depth(struct batcher *b);

#endif /* INFERA_SERVER_BATCHER_H */
