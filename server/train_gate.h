/*
 * server/train_gate.h - how much a fine-tuning job may compute while the server is answering
 * requests. Internal to server/ (used by the training workers in jobs.c).
 *
 * A training worker already runs under SCHED_IDLE, so the kernel gives it only CPU that no
 * request thread wants. That is not enough for latency: a job that shares the two cores with
 * inference still evicts the request threads' caches and keeps the disk busy with its
 * checkpoints, and bench/jobs measured inference p99 at 2-5x its idle value with a CNN job
 * computing beside it. So between two batches the worker asks the gate how long to pause:
 *
 *   - The server is idle when no request is in flight and none has started for quiet_ns.
 *     Then the pause is 0: on an idle server a job trains at full speed.
 *   - While the server is busy, the job may compute busy_percent of the wall-clock time: after
 *     a batch that took b ns, it pauses b * (100 - busy_percent) / busy_percent. A pause ends
 *     early as soon as the server is idle again (the worker checks every few milliseconds, as
 *     it checks for cancel and shutdown). A single pause is at most a minute.
 *
 * So a job never stops under load, it slows to busy_percent (default 10, `infera serve
 * --train-busy-percent`); 100 turns the gate off. The batch's time is its wall-clock time,
 * because that is how long it overlaps the requests.
 *
 * Not thread-safe: one gate per worker thread. Times are CLOCK_MONOTONIC nanoseconds.
 */
#ifndef INFERA_SERVER_TRAIN_GATE_H
#define INFERA_SERVER_TRAIN_GATE_H

#include <stdbool.h>
#include <stdint.h>

#define TRAIN_GATE_QUIET_NS (10 * 1000000LL) /* no request for 10 ms: the server is idle */

struct train_gate {
    unsigned busy_percent; /* 1..100; 100: never pause */
    int64_t quiet_ns;      /* idle once no request started for this long and none in flight */
    int64_t batch_start;   /* when the batch now ending began; 0 before the first */
};

/* A gate with busy_percent clamped to 1..100 and the default quiet time. */
struct train_gate train_gate_init(unsigned busy_percent);

/* Whether the server is idle at now: no request in flight and the newest started (at
 * last_request, 0 = never) at least quiet_ns before now. */
bool train_gate_idle(const struct train_gate *g, int64_t now, long inflight, int64_t last_request);

/*
 * Called between batches, at now: returns how long to pause before the next batch (0: go on)
 * given the server's requests in flight and the start time of its newest request. The batch
 * that just ended is the time since the previous train_gate_start().
 */
int64_t train_gate_pause(const struct train_gate *g, int64_t now, long inflight,
                         int64_t last_request);

/* Marks the start of a batch (call after any pause). */
void train_gate_start(struct train_gate *g, int64_t now);

#endif
