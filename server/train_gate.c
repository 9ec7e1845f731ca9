/*
 * server/train_gate.c - the training worker's pause between batches while the server is busy
 * (see train_gate.h).
 */
#include "train_gate.h"

struct train_gate train_gate_init(unsigned busy_percent)
{
    struct train_gate g = {busy_percent, TRAIN_GATE_QUIET_NS, 0};
    if (g.busy_percent < 1)
        g.busy_percent = 1;
    if (g.busy_percent > 100)
        g.busy_percent = 100;
    return g;
}

bool train_gate_idle(const struct train_gate *g, int64_t now, long inflight, int64_t last_request)
{
    return inflight <= 0 && (last_request <= 0 || now - last_request >= g->quiet_ns);
}

int64_t train_gate_pause(const struct train_gate *g, int64_t now, long inflight,
                         int64_t last_request)
{
    if (g->busy_percent >= 100 || g->batch_start <= 0 || now <= g->batch_start ||
        train_gate_idle(g, now, inflight, last_request))
        return 0;
    const int64_t cap = 60LL * 1000000000LL; /* pause at most a minute at a time */
    int64_t batch = now - g->batch_start;
    if (batch > cap)
        batch = cap; /* no overflow below */
    int64_t pause = batch * (int64_t)(100 - g->busy_percent) / (int64_t)g->busy_percent;
    return pause < cap ? pause : cap;
}

void train_gate_start(struct train_gate *g, int64_t now)
{
    g->batch_start = now;
}
