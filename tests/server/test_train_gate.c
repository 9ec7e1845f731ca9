/*
 * tests/server/test_train_gate.c - the training worker's pause between batches: none on an idle
 * server, the batch's time x (100 - p) / p while requests run, none at 100%, the quiet time
 * after the newest request, the clamps, and the share of the time a job computes under
 * steady load when a worker follows the gate (simulated clock).
 */
#include "server/train_gate.h"
#include "tests/test.h"

#define MS 1000000LL

static void test_idle_server_never_pauses(void)
{
    struct train_gate g = train_gate_init(10);
    CHECK(train_gate_pause(&g, 1000 * MS, 0, 0) == 0); /* no batch yet */
    train_gate_start(&g, 1000 * MS);
    /* no request ever, none in flight */
    CHECK(train_gate_pause(&g, 1050 * MS, 0, 0) == 0);
    /* the newest request started 10 ms or more ago and none is in flight */
    CHECK(train_gate_pause(&g, 1050 * MS, 0, 1040 * MS) == 0);
    CHECK(train_gate_pause(&g, 1050 * MS, 0, 500 * MS) == 0);
    CHECK(train_gate_idle(&g, 1050 * MS, 0, 1040 * MS));
}

static void test_busy_server_pauses_in_proportion(void)
{
    struct train_gate g = train_gate_init(10);
    train_gate_start(&g, 1000 * MS);
    /* a request in flight: a 20 ms batch earns 180 ms of pause at 10% */
    CHECK(train_gate_pause(&g, 1020 * MS, 1, 0) == 180 * MS);
    /* a request started 9 ms ago (finished): still busy */
    CHECK(train_gate_pause(&g, 1020 * MS, 0, 1011 * MS) == 180 * MS);
    CHECK(!train_gate_idle(&g, 1020 * MS, 0, 1011 * MS));
    CHECK(!train_gate_idle(&g, 1020 * MS, 3, 0));

    struct train_gate h = train_gate_init(50);
    train_gate_start(&h, 1000 * MS);
    CHECK(train_gate_pause(&h, 1004 * MS, 2, 0) == 4 * MS);

    struct train_gate one = train_gate_init(1);
    train_gate_start(&one, 1000 * MS);
    CHECK(train_gate_pause(&one, 1001 * MS, 1, 0) == 99 * MS);
}

static void test_hundred_percent_and_clamps(void)
{
    struct train_gate g = train_gate_init(100);
    train_gate_start(&g, 1000 * MS);
    CHECK(train_gate_pause(&g, 5000 * MS, 7, 4999 * MS) == 0);
    CHECK(train_gate_init(0).busy_percent == 1);
    CHECK(train_gate_init(250).busy_percent == 100);
    /* a batch of 10 minutes pauses at most a minute; no overflow */
    struct train_gate s = train_gate_init(1);
    train_gate_start(&s, 1);
    CHECK(train_gate_pause(&s, 1 + 600000 * MS, 1, 0) == 60000 * MS);
    /* a clock that went nowhere (or back) pauses nothing */
    train_gate_start(&s, 2000 * MS);
    CHECK(train_gate_pause(&s, 2000 * MS, 1, 0) == 0);
    CHECK(train_gate_pause(&s, 1999 * MS, 1, 0) == 0);
}

/* A worker following the gate under a request always in flight computes busy_percent of the
 * time; when the load stops mid-pause (the worker re-checks every 5 ms), it resumes at once
 * and computes all the time. */
static void test_share_under_steady_load(void)
{
    const unsigned pcts[] = {1, 10, 25, 50};
    for (size_t k = 0; k < sizeof pcts / sizeof pcts[0]; k++) {
        struct train_gate g = train_gate_init(pcts[k]);
        int64_t now = 1000 * MS, computing = 0, start = now;
        for (int b = 0; b < 1000; b++) {
            int64_t pause = train_gate_pause(&g, now, 1, now);
            now += pause;
            train_gate_start(&g, now);
            int64_t batch = (3 + b % 7) * MS; /* uneven batches */
            now += batch;
            computing += batch;
        }
        double share = (double)computing / (double)(now - start);
        CHECK_MSG(fabs(share - pcts[k] / 100.0) < 0.002, "%u%%: computed %.4f of the time", pcts[k],
                  share);
    }
    /* load stops at t = 1 s: from the first check 10 ms after the last request, no pause */
    struct train_gate g = train_gate_init(10);
    int64_t now = 0, last_request = 1000 * MS;
    train_gate_start(&g, 995 * MS);
    now = 1000 * MS;
    int64_t pause = train_gate_pause(&g, now, 1, last_request);
    CHECK(pause == 45 * MS);
    int64_t waited = 0;
    while (pause > 0) { /* the worker's loop: 5 ms slices, stop when idle */
        now += 5 * MS;
        waited += 5 * MS;
        pause -= 5 * MS;
        if (train_gate_idle(&g, now, 0, last_request))
            break;
    }
    CHECK(waited == 10 * MS);
}

int main(void)
{
    RUN(test_idle_server_never_pauses);
    RUN(test_busy_server_pauses_in_proportion);
    RUN(test_hundred_percent_and_clamps);
    RUN(test_share_under_steady_load);
    return test_finish();
}
