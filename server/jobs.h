/*
 * server/jobs.h - the durable fine-tuning job queue behind /v1/fine_tuning/jobs (OpenAI's
 * fine-tuning API) and its training workers. Internal to server/.
 *
 * This header is the lifecycle the server drives (serve.c); the job operations the HTTP
 * handlers (jobs_api.c) use are declared below it. See jobs.c for the on-disk layout under
 * <data-dir>/jobs/ and the state machine.
 */
#ifndef INFERA_SERVER_JOBS_H
#define INFERA_SERVER_JOBS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "auth/auth.h"
#include "common/common.h"

struct server;
struct job_queue;

struct job_queue_config {
    const char *data_dir;        /* borrowed for the queue's life */
    const struct master_key *mk; /* checkpoints are sealed with it; borrowed */
    struct server *srv;          /* registry, files, audit (guard_event), metrics; borrowed */
    unsigned workers;            /* jobs running at once; 0: jobs queue but never run */
    unsigned max_jobs_per_key;   /* queued + running jobs of one key */
};

/*
 * Opens <data_dir>/jobs (created 0700 if missing) and rebuilds the queue from disk: queued jobs
 * stay queued in creation order; a job found "running" (the server stopped or crashed under it)
 * goes back to the queue ahead of newer ones and resumes from its last checkpoint. Starts no
 * thread. Returns a new queue (caller frees with job_queue_free) or NULL with e set.
 */
struct job_queue *job_queue_open(const struct job_queue_config *cfg, struct err *e);

/* Starts the training workers. */
int job_queue_start(struct job_queue *q, struct err *e);

/*
 * Stops the workers for shutdown: a running job stops within one batch, keeps its last
 * checkpoint and is written back as queued, so the next start resumes it. Returns when every
 * worker has exited. Safe to call twice.
 */
void job_queue_stop(struct job_queue *q);

/* Stops (if needed) and frees. NULL is a no-op. */
void job_queue_free(struct job_queue *q);

#endif /* INFERA_SERVER_JOBS_H */
