/* server/jobs.c - placeholder until the job queue lands (see jobs.h). */
#include <stdlib.h>

#include "jobs.h"

struct job_queue {
    int unused;
};

struct job_queue *job_queue_open(const struct job_queue_config *cfg, struct err *e)
{
    (void)cfg;
    struct job_queue *q = calloc(1, sizeof *q);
    if (q == NULL)
        err_set(e, INF_ENOMEM, "out of memory");
    return q;
}

int job_queue_start(struct job_queue *q, struct err *e)
{
    (void)q;
    (void)e;
    return INF_OK;
}

void job_queue_stop(struct job_queue *q)
{
    (void)q;
}

void job_queue_free(struct job_queue *q)
{
    free(q);
}
