/*
 * server/jobs.h - the durable fine-tuning job queue behind /v1/fine_tuning/jobs (OpenAI's
 * fine-tuning API) and its training workers. Internal to server/.
 *
 * This header is the lifecycle the server drives (serve.c); the job operations the HTTP
 * handlers (jobs_api.c) use are declared below it. See jobs.c for the on-disk layout under
 * <data-dir>/jobs/ and the state machine; jobs_train.c runs one job's training.
 */
#ifndef INFERA_SERVER_JOBS_H
#define INFERA_SERVER_JOBS_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "auth/auth.h"
#include "common/common.h"
#include "model/model.h"

struct server;
struct request;
struct job_queue;

struct job_queue_config {
    const char *data_dir;        /* borrowed for the queue's life */
    const struct master_key *mk; /* checkpoints are sealed with it; borrowed */
    struct server *srv;          /* registry, files, audit (guard_event), metrics; borrowed */
    unsigned workers;            /* jobs running at once; 0: jobs queue but never run */
    unsigned max_jobs_per_key;   /* queued + running jobs of one key */
    unsigned busy_percent;       /* a job's share of the time while requests run (train_gate.h);
                                    0 counts as 1, 100 never pauses */
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

/* ------------------------------------------------------------------------------------------
 * Job operations for the HTTP handlers (jobs_api.c)
 *
 * Every call takes the caller's key id (owner: "" when auth is off) and whether it is admin.
 * A non-admin caller sees only its own jobs: another key's job answers INF_ENOTFOUND, exactly
 * as a job that does not exist. Answers are OpenAI's objects as new JSON references.
 * Thread safety: every function may be called from any thread (one queue lock).
 * ---------------------------------------------------------------------------------------- */

#define JOB_ID_LEN     30 /* "ftjob-" + 24 base62 */
#define JOB_SUFFIX_MAX 64
#define JOB_IDEM_MAX   255 /* bytes of an Idempotency-Key */
#define JOB_NAME_MAX   128 /* a fine-tuned model's name (the registry's limit) */
#define JOB_LIST_MAX   100 /* largest page */

/* The training settings of a job, every "auto" already resolved against the base model. */
struct job_hparams {
    int n_epochs;                    /* 1..1000 */
    size_t batch_size;               /* 1..65536 */
    double learning_rate_multiplier; /* of the base model's learning rate */
    double learning_rate;            /* the resulting rate */
    enum model_optimizer optimizer;
    double weight_decay;
    bool mask_pii; /* training text goes through auth/mask before featurizing */
    uint64_t seed; /* the client's, or drawn at create and reported */
};

/* A create request the handler has validated (all fields borrowed for the call). */
struct job_spec {
    const char *owner;
    const char *model; /* base model name and the version fine-tuned */
    int model_version;
    const char *training_file;
    const char *validation_file; /* NULL: none */
    const char *suffix;          /* NULL: none */
    const char *idempotency_key; /* NULL: none */
    json_t *metadata;            /* object of strings, or NULL */
    struct job_hparams hp;
    /* A training file that does not fit the model: the job is created "failed" with this
     * error object (code NULL: the files validated). */
    const char *error_code, *error_param, *error_message;
};

/* The fine-tuned model's name for base, suffix (may be NULL) and job id into out (cap bytes):
 * "ft:<base>:<suffix>:<job-id>". Returns false if it would not be a valid model name. */
bool job_model_name(char *out, size_t cap, const char *base, const char *suffix,
                    const char *job_id);

/* The job of owner created with Idempotency-Key key, as a new job object; NULL if none. */
json_t *job_queue_find_idempotent(struct job_queue *q, const char *owner, const char *key);

/* Queued + running jobs of owner; *cap receives the per-key limit. */
size_t job_queue_active(struct job_queue *q, const char *owner, unsigned *cap);

/*
 * Creates a job from spec: writes <data>/jobs/<id>/ (job.json, events.jsonl), audits
 * "job.created" (rq may be NULL) and queues it (or records it failed when spec->error_code is
 * set). On success *job is the new job object and *existed tells whether an earlier job with
 * the same owner and Idempotency-Key was returned instead. INF_ELIMIT when owner already has
 * max_jobs_per_key jobs queued or running, INF_EIO when the job or its audit record cannot be
 * written (then no job exists).
 */
int job_queue_create(struct job_queue *q, const struct job_spec *spec, struct request *rq,
                     json_t **job, bool *existed, struct err *e);

/* The job object of id; INF_ENOTFOUND if absent or not visible to the caller. */
int job_queue_get(struct job_queue *q, const char *id, const char *owner, bool admin, json_t **job);

/*
 * OpenAI's list envelope {"object": "list", "data", "has_more", "first_id", "last_id"}:
 * jobs newest first (after: a job id, NULL for the start; limit 1..JOB_LIST_MAX).
 * metadata (borrowed) filters as OpenAI's metadata[k]=v query does: NULL lists every job,
 * an object only jobs whose metadata holds each of its members (string values, equal), JSON
 * null only jobs without metadata (null or {}). INF_ENOTFOUND when after names no visible job.
 */
int job_queue_list(struct job_queue *q, const char *owner, bool admin, const char *after,
                   const json_t *metadata, size_t limit, json_t **list, struct err *e);

/*
 * Cancels job id: a queued job at once; a running one is asked to stop (within one batch) and
 * this waits up to wait_s seconds for it. *job is the job object after. INF_ENOTFOUND as
 * above; INF_EINVAL when the job already finished (succeeded, failed or cancelled).
 */
int job_queue_cancel(struct job_queue *q, const char *id, const char *owner, bool admin,
                     struct request *rq, double wait_s, json_t **job, struct err *e);

/* The job's events, newest first, as a list envelope (after: an event id). */
int job_queue_events(struct job_queue *q, const char *id, const char *owner, bool admin,
                     const char *after, size_t limit, json_t **list, struct err *e);

/* The job's checkpoints, newest first, as a list envelope (after: a checkpoint id). */
int job_queue_checkpoints(struct job_queue *q, const char *id, const char *owner, bool admin,
                          const char *after, size_t limit, json_t **list, struct err *e);

/* ------------------------------------------------------------------------------------------
 * One job's training (jobs_train.c), driven by the workers of jobs.c
 * ---------------------------------------------------------------------------------------- */

/* An error to report in the job object ({"code", "message", "param"}). */
struct job_error {
    char code[48];
    char param[32]; /* "" for null */
    char message[ERR_MSG_MAX];
};

struct job_train_input {
    struct server *srv;
    const char *job_id;
    const char *owner;
    const char *model;
    int model_version;
    const char *training_file;
    const char *validation_file; /* NULL: none */
    struct job_hparams hp;
    /* After each epoch: the stats and the checkpoint, a malloc'd buffer the callback owns
     * (frees) from then on, even when it fails. Return nonzero to stop training. */
    int (*on_epoch)(const struct model_epoch_stats *s, void *ckpt, size_t ckpt_len, size_t n_train,
                    void *user);
    /* Between batches: true stops training within one batch. */
    bool (*should_cancel)(void *user);
    void *user;
    /* Resume candidates, newest first: checkpoints to try in turn (a bad one is skipped); the
     * job starts from the base model when none restores. */
    int (*load_checkpoint)(size_t i, void **data, size_t *len, void *user);
    size_t n_checkpoints;
};

/*
 * Loads the base model version and the job's files, restores the newest good checkpoint and
 * trains the remaining epochs. On success *out is the trained model (caller frees with
 * model_free). INF_ECANCELLED when a callback stopped it; other failures fill err.
 */
int job_train_run(const struct job_train_input *in, struct model **out, struct job_error *err);

/* The featurizing hook that masks PII in training text (dataset_text_fn; user = server). */
char *job_mask_text(const char *text, size_t len, size_t *out_len, void *user);

/* Applies hp to the base model's settings t. */
void job_hparams_apply(const struct job_hparams *hp, struct model_training *t);

#endif /* INFERA_SERVER_JOBS_H */
