/*
 * server/jobs.c - the durable fine-tuning job queue: jobs on disk, the state machine, the
 * training workers and the operations behind /v1/fine_tuning/jobs.
 *
 * On disk, under <data-dir>/jobs/ (0700):
 *   <job-id>/job.json        the job: OpenAI's job object plus private fields starting with '_'
 *                            (_owner, _seq, _idempotency_key, _model_version, _fine_tuned_model,
 *                            _checkpoints, _result_file); rewritten atomically (fs_write_atomic,
 *                            0600) on every change of state and after every epoch.
 *   <job-id>/events.jsonl    one event object per line, appended and fdatasynced (0600). A torn
 *                            last line (a crash mid-append) is cut off at open.
 *   <job-id>/checkpoints/ckpt-step-<N>.sealed   the trainer's checkpoint after the epoch that
 *                            ended at optimizer step N, sealed (auth/seal.h, purpose
 *                            "checkpoint", object id "<job-id>:ckpt-step-<N>"). The newest
 *                            JOB_KEEP_CHECKPOINTS are kept, as OpenAI keeps the last 3 epochs.
 *
 * State machine (job.json "status"):
 *
 *   create --(files do not fit the model)--> failed
 *     |
 *     v
 *   queued --(a worker takes it, oldest first)--> running --(all epochs, model saved)--> succeeded
 *     |  ^                                          |  |  \--(error)--> failed
 *     |  +----(SIGTERM / job_queue_stop: stops within one batch; or found "running" at open)
 *     |                                             |
 *     +--(cancel)--> cancelled <--(cancel: stops within one batch)
 *
 * "validating_files" is reported only in the events: the files are validated synchronously by
 * the create request, before the job exists. A job that goes back to the queue keeps its
 * creation order, so it runs before jobs created after it. Resuming loads the newest
 * checkpoint listed in job.json (an epoch whose checkpoint was sealed but not yet listed is
 * simply trained again: same result, and its metrics event is not repeated).
 *
 * Locking: one mutex (q->lock) guards every job and the list; it is held across the small
 * writes of job.json and events.jsonl and the jobs' audit records, so the order of the writes
 * is the order of the changes. Training, checkpoint sealing, saving and registering the model
 * and storing the result file run without it. Lock order: q->lock, then the audit log's (the
 * audit log never calls back into the queue); the registry and the file store are never
 * called with q->lock held. A worker is the only writer of its running job's document.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "auth/seal.h"
#include "common/json_dump.h"
#include "files.h"
#include "http.h"
#include "jobs.h"
#include "metrics.h"
#include "train_gate.h"

#define JOB_KEEP_CHECKPOINTS 3
#define JOB_MAX_JSON         ((size_t)64 << 20)
#define JOB_MAX_CHECKPOINT   (((size_t)16 << 30))

enum job_status {
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_FAILED,
    JOB_CANCELLED,
};

static const char *const status_names[] = {"queued", "running", "succeeded", "failed", "cancelled"};

struct job {
    char id[JOB_ID_LEN + 1];
    char owner[KEY_ID_LEN + 1];
    uint64_t seq;
    enum job_status status;
    json_t *doc;            /* job.json */
    json_t *events;         /* oldest first */
    int last_metrics_epoch; /* the newest epoch with a metrics event */
    atomic_bool cancel;
};

struct job_queue {
    struct job_queue_config cfg;
    char data_dir[4096];
    char dir[4096]; /* <data>/jobs */
    pthread_mutex_t lock;
    pthread_cond_t work;    /* a job was queued, or the workers must stop */
    pthread_cond_t changed; /* a job left "running" */
    struct job **jobs;      /* creation order */
    size_t n, cap;
    uint64_t next_seq;
    pthread_t *threads;
    unsigned n_threads;
    atomic_bool stopping;
};

/* ------------------------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------------------------- */

/* prefix + 24 base62 characters drawn uniformly (rejection sampling) from the OS CSPRNG. */
static int random_id(char *out, size_t cap, const char *prefix)
{
    static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t p = (size_t)snprintf(out, cap, "%s", prefix);
    if (p + 25 > cap)
        return INF_ELIMIT;
    unsigned char buf[64];
    size_t k = 0;
    while (k < 24) {
        if (RAND_bytes(buf, sizeof buf) != 1)
            return INF_EIO;
        for (size_t i = 0; i < sizeof buf && k < 24; i++)
            if (buf[i] < 248)
                out[p + k++] = b62[buf[i] % 62];
    }
    out[p + 24] = '\0';
    return INF_OK;
}

static bool job_id_valid(const char *s)
{
    if (strncmp(s, "ftjob-", 6) != 0 || strlen(s) != JOB_ID_LEN)
        return false;
    for (const char *p = s + 6; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')))
            return false;
    return true;
}

static const char *str_or(const char *s, const char *dflt)
{
    return s != NULL ? s : dflt;
}

static json_t *num_or_null(double d)
{
    return isfinite(d) ? json_real(d) : json_null();
}

static int64_t now_s(void)
{
    return (int64_t)time(NULL);
}

static bool visible(const struct job *j, const char *owner, bool admin)
{
    return admin || strcmp(j->owner, owner) == 0;
}

static struct job *find_job(struct job_queue *q, const char *id)
{
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->jobs[i]->id, id) == 0)
            return q->jobs[i];
    return NULL;
}

static int job_path(const struct job_queue *q, const struct job *j, const char *name, char *out,
                    size_t cap)
{
    int n = snprintf(out, cap, "%s/%s%s%s", q->dir, j->id, name ? "/" : "", name ? name : "");
    return n < 0 || (size_t)n >= cap ? INF_ELIMIT : INF_OK;
}

static const char *doc_str(const struct job *j, const char *key)
{
    return json_string_value(json_object_get(j->doc, key));
}

/* OpenAI's view of an object: a copy without the private "_" fields. New reference. */
static json_t *public_copy(json_t *obj)
{
    json_t *out = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v)
    {
        if (k[0] != '_')
            json_object_set_new(out, k, json_deep_copy(v));
    }
    return out;
}

static void job_free(struct job *j)
{
    if (j == NULL)
        return;
    json_decref(j->doc);
    json_decref(j->events);
    free(j);
}

/* ------------------------------------------------------------------------------------------
 * Persistence (q->lock held)
 * ---------------------------------------------------------------------------------------- */

static int job_persist(struct job_queue *q, struct job *j, struct err *e)
{
    char path[4200];
    if (job_path(q, j, "job.json", path, sizeof path) != INF_OK)
        return err_set(e, INF_ELIMIT, "job path too long");
    char *s = json_dump_checked(j->doc, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (s == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    int rc = fs_write_atomic(path, s, strlen(s), 0600, e);
    free(s);
    if (rc != INF_OK)
        log_msg(LOG_ERROR, "job %s: job.json not written: %s", j->id, e ? e->msg : "");
    return rc;
}

/* Appends one line to events.jsonl and fdatasyncs it. */
static int append_line(const char *path, const char *line, struct err *e)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
    size_t len = strlen(line), off = 0;
    int rc = INF_OK;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
            break;
        }
        off += (size_t)w;
    }
    if (rc == INF_OK && fdatasync(fd) != 0)
        rc = err_set(e, INF_EIO, "%s: fdatasync: %s", path, strerror(errno));
    close(fd);
    return rc;
}

/* Records an event (data: stolen, may be NULL) in memory and in events.jsonl. */
static void job_event(struct job_queue *q, struct job *j, const char *level, const char *type,
                      json_t *data, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void job_event(struct job_queue *q, struct job *j, const char *level, const char *type,
                      json_t *data, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char id[40];
    if (random_id(id, sizeof id, "ftevent-") != INF_OK) {
        json_decref(data);
        return;
    }
    json_t *ev = json_pack("{s:s,s:s,s:I,s:s,s:s,s:o,s:s}", "object", "fine_tuning.job.event", "id",
                           id, "created_at", (json_int_t)now_s(), "level", level, "message", msg,
                           "data", data ? data : json_object(), "type", type);
    if (ev == NULL) /* message not UTF-8: keep the event without it */
        ev = json_pack("{s:s,s:s,s:I,s:s,s:s,s:o,s:s}", "object", "fine_tuning.job.event", "id", id,
                       "created_at", (json_int_t)now_s(), "level", level, "message", "(event)",
                       "data", json_object(), "type", type);
    if (ev == NULL)
        return;
    json_array_append(j->events, ev);
    char *line = json_dump_checked(ev, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(ev);
    char path[4200];
    struct err e = {0};
    if (line != NULL && job_path(q, j, "events.jsonl", path, sizeof path) == INF_OK) {
        size_t n = strlen(line);
        char *nl = realloc(line, n + 2);
        if (nl != NULL) {
            line = nl;
            memcpy(line + n, "\n", 2);
            if (append_line(path, line, &e) != INF_OK)
                log_msg(LOG_ERROR, "job %s: event not written: %s", j->id, e.msg);
        }
    }
    free(line);
}

static void set_status(struct job *j, enum job_status s)
{
    j->status = s;
    json_object_set_new(j->doc, "status", json_string(status_names[s]));
    if (s == JOB_SUCCEEDED || s == JOB_FAILED || s == JOB_CANCELLED)
        json_object_set_new(j->doc, "finished_at", json_integer((json_int_t)now_s()));
}

/* Audits a job event with flat fields; rq may be NULL (a worker). */
static int job_audit(struct job_queue *q, struct request *rq, struct job *j, const char *event)
{
    json_t *err = json_object_get(j->doc, "error");
    json_t *f = json_pack("{s:s,s:s?,s:s,s:s,s:s?,s:s?}", "job_id", j->id, "model",
                          doc_str(j, "model"), "status", status_names[j->status], "job_owner",
                          j->owner, "fine_tuned_model", doc_str(j, "fine_tuned_model"),
                          "error_code", json_string_value(json_object_get(err, "code")));
    int rc = f ? guard_event(q->cfg.srv, rq, event, f) : INF_ENOMEM;
    json_decref(f);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Opening: rebuilding the queue from disk
 * ---------------------------------------------------------------------------------------- */

/* Reads events.jsonl; cuts a torn tail (a crash mid-append) so later appends stay lines. */
static int load_events(struct job_queue *q, struct job *j)
{
    char path[4200];
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    j->events = json_array();
    if (j->events == NULL || job_path(q, j, "events.jsonl", path, sizeof path) != INF_OK)
        return INF_ENOMEM;
    int rc = fs_read_file(path, JOB_MAX_JSON, &data, &len, &e);
    if (rc == INF_ENOTFOUND)
        return INF_OK;
    if (rc != INF_OK)
        return rc;
    size_t good = 0;
    for (size_t pos = 0; pos < len;) {
        char *nl = memchr(data + pos, '\n', len - pos);
        if (nl == NULL)
            break;
        json_t *ev = json_loadb(data + pos, (size_t)(nl - data) - pos, 0, NULL);
        if (!json_is_object(ev)) {
            json_decref(ev);
            break;
        }
        json_t *d = json_object_get(ev, "data");
        json_t *ep = json_object_get(d, "epoch");
        if (json_is_integer(ep) && (int)json_integer_value(ep) > j->last_metrics_epoch &&
            strcmp(str_or(json_string_value(json_object_get(ev, "type")), ""), "metrics") == 0)
            j->last_metrics_epoch = (int)json_integer_value(ep);
        json_array_append_new(j->events, ev);
        pos = (size_t)(nl - data) + 1;
        good = pos;
    }
    free(data);
    if (good < len) {
        log_msg(LOG_WARN, "job %s: events.jsonl: cutting a torn tail of %zu bytes", j->id,
                len - good);
        if (truncate(path, (off_t)good) != 0)
            return INF_EIO;
    }
    return INF_OK;
}

static int load_job(struct job_queue *q, const char *id, struct job **out)
{
    struct job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return INF_ENOMEM;
    snprintf(j->id, sizeof j->id, "%s", id);
    char path[4200];
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    int rc = job_path(q, j, "job.json", path, sizeof path);
    if (rc == INF_OK)
        rc = fs_read_file(path, JOB_MAX_JSON, &data, &len, &e);
    if (rc == INF_OK) {
        json_error_t je;
        j->doc = json_loadb(data, len, 0, &je);
        free(data);
        if (j->doc == NULL && je.text[0] == '\0') { /* jansson: an allocation failed */
            job_free(j);
            return INF_ENOMEM;
        }
        const char *st = doc_str(j, "status");
        const char *owner = doc_str(j, "_owner");
        json_t *seq = json_object_get(j->doc, "_seq");
        int s = -1;
        for (int k = 0; st != NULL && k < 5; k++)
            if (strcmp(st, status_names[k]) == 0)
                s = k;
        if (st != NULL && strcmp(st, "validating_files") == 0)
            s = JOB_QUEUED;
        if (!json_is_object(j->doc) || s < 0 || owner == NULL || strlen(owner) > KEY_ID_LEN ||
            !json_is_integer(seq) || json_integer_value(seq) < 0 ||
            strcmp(str_or(doc_str(j, "id"), ""), id) != 0 || doc_str(j, "model") == NULL ||
            doc_str(j, "training_file") == NULL) {
            log_msg(LOG_ERROR, "job %s: job.json is not a job; skipped", id);
            rc = INF_EINVAL;
        } else {
            snprintf(j->owner, sizeof j->owner, "%s", owner);
            j->seq = (uint64_t)json_integer_value(seq);
            j->status = (enum job_status)s;
            if (!json_is_array(json_object_get(j->doc, "_checkpoints")))
                json_object_set_new(j->doc, "_checkpoints", json_array());
            rc = load_events(q, j);
        }
    } else {
        log_msg(LOG_ERROR, "job %s: %s", id, e.msg);
    }
    if (rc != INF_OK) {
        job_free(j);
        return rc;
    }
    *out = j;
    return INF_OK;
}

static int by_seq(const void *a, const void *b)
{
    const struct job *x = *(struct job *const *)a, *y = *(struct job *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static int push_job(struct job_queue *q, struct job *j)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? 2 * q->cap : 16;
        struct job **nj = realloc(q->jobs, cap * sizeof *nj);
        if (nj == NULL)
            return INF_ENOMEM;
        q->jobs = nj;
        q->cap = cap;
    }
    q->jobs[q->n++] = j;
    return INF_OK;
}

struct job_queue *job_queue_open(const struct job_queue_config *cfg, struct err *e)
{
    struct job_queue *q = calloc(1, sizeof *q);
    if (q == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        return NULL;
    }
    q->cfg = *cfg;
    snprintf(q->data_dir, sizeof q->data_dir, "%s", cfg->data_dir);
    q->cfg.data_dir = q->data_dir;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->work, NULL);
    pthread_cond_init(&q->changed, NULL);
    if (fs_path_join(q->dir, sizeof q->dir, cfg->data_dir, "jobs", e) != INF_OK ||
        fs_mkdir_p(q->dir, 0700, e) != INF_OK)
        goto fail;
    DIR *d = opendir(q->dir);
    if (d == NULL) {
        err_set(e, INF_EIO, "%s: %s", q->dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!job_id_valid(de->d_name))
            continue;
        char jp[4200];
        struct stat st;
        snprintf(jp, sizeof jp, "%s/%s/job.json", q->dir, de->d_name);
        if (stat(jp, &st) != 0 && errno == ENOENT) {
            /* a create that crashed before its job.json: never answered, never audited */
            snprintf(jp, sizeof jp, "%s/%s", q->dir, de->d_name);
            fs_remove_tree(jp);
            continue;
        }
        struct job *j = NULL;
        int lrc = load_job(q, de->d_name, &j);
        if (lrc == INF_EINVAL) {
            /* Damaged (not a job): move it aside so that it is reported once, never loaded,
             * and kept for a human. The new name is not a job id, so later opens skip it. */
            char from[4200], to[4300];
            snprintf(from, sizeof from, "%s/%s", q->dir, de->d_name);
            snprintf(to, sizeof to, "%s.corrupt-%lld", from, (long long)now_s());
            if (rename(from, to) == 0)
                log_msg(LOG_ERROR, "job %s: quarantined as %s", de->d_name, to);
            else
                log_msg(LOG_ERROR, "job %s: cannot quarantine (%s); skipped", de->d_name,
                        strerror(errno));
        }
        if (lrc != INF_OK)
            continue;
        if (push_job(q, j) != INF_OK) {
            job_free(j);
            closedir(d);
            err_set(e, INF_ENOMEM, "out of memory");
            goto fail;
        }
    }
    closedir(d);
    if (q->n > 1)
        qsort(q->jobs, q->n, sizeof *q->jobs, by_seq);
    size_t requeued = 0, queued = 0;
    for (size_t i = 0; i < q->n; i++) {
        struct job *j = q->jobs[i];
        if (j->seq >= q->next_seq)
            q->next_seq = j->seq + 1;
        if (j->status == JOB_RUNNING || strcmp(doc_str(j, "status"), "validating_files") == 0) {
            set_status(j, JOB_QUEUED);
            size_t nck = json_array_size(json_object_get(j->doc, "_checkpoints"));
            job_event(q, j, "warn", "message", NULL,
                      "The job was interrupted (server restart); it will resume from %s",
                      nck ? "its last checkpoint" : "the start");
            job_persist(q, j, NULL);
            requeued++;
        }
        if (j->status == JOB_QUEUED)
            queued++;
    }
    log_msg(LOG_INFO, "job queue: %zu jobs, %zu queued (%zu interrupted, to resume)", q->n, queued,
            requeued);
    return q;
fail:
    job_queue_free(q);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * Workers
 * ---------------------------------------------------------------------------------------- */

struct run_ctx {
    struct job_queue *q;
    struct job *j;
    char name[JOB_NAME_MAX + 1]; /* the fine-tuned model */
    char **ckpt_files;           /* resume candidates, newest first */
    size_t n_ckpt;
    int hp_epochs;
    size_t hp_batch;
    bool failed; /* persisting an epoch failed */
    struct job_error err;
    struct train_gate gate;    /* pauses between batches while the server answers requests */
    struct persister *persist; /* writes each epoch's checkpoint and state (NULL: inline) */
};

/*
 * Epoch persistence off the training path: the worker hands each epoch's checkpoint to the
 * job's persister thread and trains on while it is sealed, written and fsynced and the
 * metrics event and job.json follow (several milliseconds of syncs per epoch, 2-5% of a short
 * job's time in bench/jobs). One epoch at a time, in order: the worker waits for the previous
 * epoch's persistence before handing over the next, and drains the last one before it writes
 * the job's final state, so job.json never lists a checkpoint that is not on disk, a failure
 * is seen one epoch later at most, and SIGTERM still leaves the last epoch's checkpoint.
 */
struct persister {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool pending; /* an epoch is handed over and not yet persisted: the fields below are its */
    bool quit;
    struct model_epoch_stats s;
    void *ckpt; /* owned by the persister while pending */
    size_t len, n_train;
};

/* Called before every batch: the gate's pause while the server is busy (train_gate.h), in
 * slices of at most 5 ms so that cancel and shutdown still take effect within one batch and
 * the pause ends as soon as the server is idle. */
static bool run_should_cancel(void *user)
{
    struct run_ctx *c = user;
    struct server *srv = c->q->cfg.srv;
    /* No sched_yield() here: the worker runs under SCHED_IDLE, so the scheduler already lets
     * request threads in; yielding on every batch only cost training throughput when other
     * processes compete (measured: -25% on digits on a loaded 2-core machine). */
    int64_t now = mono_ns();
    int64_t pause = train_gate_pause(&c->gate, now, atomic_load(&srv->inflight),
                                     atomic_load(&srv->last_request_ns));
    while (pause > 0 && !atomic_load(&c->j->cancel) && !atomic_load(&c->q->stopping)) {
        int64_t slice = pause < 5000000 ? pause : 5000000;
        struct timespec ts = {0, (long)slice};
        nanosleep(&ts, NULL);
        int64_t t = mono_ns();
        pause -= t - now;
        /* counted as it goes, so /metrics shows a long pause while it lasts */
        metrics_counter_add(srv->metrics, "infera_training_paused_seconds",
                            "Seconds fine-tuning jobs paused between batches for requests "
                            "(--train-busy-percent)",
                            NULL, NULL, (double)(t - now) / 1e9);
        now = t;
        if (train_gate_idle(&c->gate, now, atomic_load(&srv->inflight),
                            atomic_load(&srv->last_request_ns)))
            break;
    }
    train_gate_start(&c->gate, now);
    return atomic_load(&c->j->cancel) || atomic_load(&c->q->stopping);
}

static int run_load_checkpoint(size_t i, void **data, size_t *len, void *user)
{
    struct run_ctx *c = user;
    char path[4400], oid[128];
    snprintf(path, sizeof path, "%s/%s/checkpoints/%s", c->q->dir, c->j->id, c->ckpt_files[i]);
    const char *dot = strrchr(c->ckpt_files[i], '.');
    snprintf(oid, sizeof oid, "%s:%.*s", c->j->id, (int)(dot ? dot - c->ckpt_files[i] : 0),
             c->ckpt_files[i]);
    struct err e = {0};
    uint8_t *buf = NULL;
    int rc =
        seal_file_read(path, c->q->cfg.mk, "checkpoint", oid, JOB_MAX_CHECKPOINT, &buf, len, &e);
    if (rc != INF_OK) {
        log_msg(LOG_WARN, "job %s: checkpoint %s: %s", c->j->id, c->ckpt_files[i], e.msg);
        return rc;
    }
    *data = buf;
    return INF_OK;
}

/* Persists one epoch (the old inline body); sets c->err and returns true on failure. */
static bool persist_epoch(struct run_ctx *c, const struct model_epoch_stats *s, const void *ckpt,
                          size_t len, size_t n_train)
{
    struct job_queue *q = c->q;
    struct job *j = c->j;
    char file[64], oid[128], path[4400], ck_id[40];
    unsigned long long step = (unsigned long long)s->step;
    snprintf(file, sizeof file, "ckpt-step-%llu.sealed", step);
    snprintf(oid, sizeof oid, "%s:ckpt-step-%llu", j->id, step);
    snprintf(path, sizeof path, "%s/%s/checkpoints/%s", q->dir, j->id, file);
    struct err e = {0};
    if (seal_file_write(path, q->cfg.mk, "checkpoint", oid, ckpt, len, 0600, &e) != INF_OK ||
        random_id(ck_id, sizeof ck_id, "ftckpt-") != INF_OK) {
        snprintf(c->err.code, sizeof c->err.code, "server_error");
        snprintf(c->err.message, sizeof c->err.message, "checkpoint not written: %.400s", e.msg);
        return true;
    }
    size_t per_epoch = c->hp_batch ? (n_train + c->hp_batch - 1) / c->hp_batch : 0;
    unsigned long long total = (unsigned long long)per_epoch * (unsigned long long)c->hp_epochs;
    char ckname[JOB_NAME_MAX + 64];
    snprintf(ckname, sizeof ckname, "%s:ckpt-step-%llu", c->name, step);
    json_t *metrics = json_pack(
        "{s:I,s:o,s:o,s:o,s:o}", "step", (json_int_t)step, "train_loss", num_or_null(s->train_loss),
        "valid_loss", num_or_null(s->has_valid ? s->valid_loss : NAN), "valid_accuracy",
        num_or_null(s->has_valid ? s->valid_accuracy : NAN), "valid_mean_token_accuracy",
        num_or_null(s->has_valid ? s->valid_accuracy : NAN));
    json_t *ck =
        json_pack("{s:s,s:s,s:I,s:s,s:s,s:O,s:I,s:s,s:i}", "object", "fine_tuning.job.checkpoint",
                  "id", ck_id, "created_at", (json_int_t)now_s(), "fine_tuned_model_checkpoint",
                  ckname, "fine_tuning_job_id", j->id, "metrics", metrics, "step_number",
                  (json_int_t)step, "_file", file, "_epoch", s->epoch);
    json_t *removed = json_array();
    pthread_mutex_lock(&q->lock);
    if (s->epoch > j->last_metrics_epoch) {
        json_t *data = json_deep_copy(metrics);
        json_object_set_new(data, "epoch", json_integer(s->epoch));
        json_object_set_new(data, "total_steps", json_integer((json_int_t)total));
        json_object_set_new(data, "samples_per_s", num_or_null(s->samples_per_s));
        char vl[96] = "";
        if (s->has_valid)
            snprintf(vl, sizeof vl, ", validation loss=%.4f, validation accuracy=%.4f",
                     s->valid_loss, s->valid_accuracy);
        job_event(q, j, "info", "metrics", data,
                  "Step %llu/%llu (epoch %d/%d): training loss=%.4f%s", step, total, s->epoch,
                  s->epochs, s->train_loss, vl);
        j->last_metrics_epoch = s->epoch;
    }
    json_t *list = json_object_get(j->doc, "_checkpoints");
    /* An epoch trained again after a crash replaces its own entry. */
    for (size_t i = json_array_size(list); i-- > 0;)
        if (json_integer_value(json_object_get(json_array_get(list, i), "step_number")) ==
            (json_int_t)step)
            json_array_remove(list, i);
    if (ck != NULL)
        json_array_append(list, ck);
    while (json_array_size(list) > JOB_KEEP_CHECKPOINTS) {
        json_array_append(removed, json_object_get(json_array_get(list, 0), "_file"));
        json_array_remove(list, 0);
    }
    bool failed = false;
    if (job_persist(q, j, &e) != INF_OK) {
        snprintf(c->err.code, sizeof c->err.code, "server_error");
        snprintf(c->err.message, sizeof c->err.message, "job state not written: %.400s", e.msg);
        failed = true;
    }
    pthread_mutex_unlock(&q->lock);
    size_t i;
    json_t *f;
    json_array_foreach(removed, i, f)
    {
        snprintf(path, sizeof path, "%s/%s/checkpoints/%s", q->dir, j->id, json_string_value(f));
        if (strcmp(json_string_value(f), file) != 0)
            unlink(path);
    }
    json_decref(removed);
    json_decref(ck);
    json_decref(metrics);
    return failed;
}

static void *persister_main(void *arg)
{
    struct run_ctx *c = arg;
    struct persister *p = c->persist;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->pending && !p->quit)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->pending)
            break;
        bool failed = c->failed;
        /* The worker leaves the fields alone while pending. */
        pthread_mutex_unlock(&p->mu);
        if (!failed) /* after a failure later epochs are not persisted: the job fails */
            failed = persist_epoch(c, &p->s, p->ckpt, p->len, p->n_train);
        free(p->ckpt);
        pthread_mutex_lock(&p->mu);
        p->ckpt = NULL;
        c->failed = failed;
        p->pending = false;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Starts the job's persister; without one (no thread), epochs are persisted inline. */
static void persister_start(struct run_ctx *c, struct persister *p)
{
    memset(p, 0, sizeof *p);
    if (pthread_mutex_init(&p->mu, NULL) != 0)
        return;
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        return;
    }
    c->persist = p;
    if (pthread_create(&p->thread, NULL, persister_main, c) != 0) {
        log_msg(LOG_WARN, "job %s: no persister thread; epochs are persisted inline", c->j->id);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        c->persist = NULL;
    }
}

/* Persists what was handed over, then stops the persister. */
static void persister_stop(struct run_ctx *c)
{
    struct persister *p = c->persist;
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    c->persist = NULL;
}

/* The trainer's epoch callback: hands the epoch to the persister (once the previous one is
 * on disk) and goes on training; stops on a persistence failure, cancel or shutdown. */
static int run_on_epoch(const struct model_epoch_stats *s, void *ckpt, size_t len, size_t n_train,
                        void *user)
{
    struct run_ctx *c = user;
    struct persister *p = c->persist;
    bool failed;
    if (p == NULL) {
        if (!c->failed)
            c->failed = persist_epoch(c, s, ckpt, len, n_train);
        failed = c->failed;
    } else {
        pthread_mutex_lock(&p->mu);
        while (p->pending)
            pthread_cond_wait(&p->cv, &p->mu);
        failed = c->failed;
        if (!failed) {
            p->s = *s;
            p->ckpt = ckpt;
            p->len = len;
            p->n_train = n_train;
            p->pending = true;
            ckpt = NULL;
            pthread_cond_broadcast(&p->cv);
        }
        pthread_mutex_unlock(&p->mu);
    }
    free(ckpt);
    return failed || atomic_load(&c->j->cancel) || atomic_load(&c->q->stopping);
}

/* The metrics CSV of the job's epochs (q->lock held). New string or NULL. */
static char *metrics_csv(struct job *j, size_t *len)
{
    size_t cap = 128 + json_array_size(j->events) * 160, n = 0;
    char *s = malloc(cap);
    if (s == NULL)
        return NULL;
    n += (size_t)snprintf(s, cap, "step,epoch,train_loss,valid_loss,valid_accuracy\n");
    size_t i;
    json_t *ev;
    json_array_foreach(j->events, i, ev)
    {
        if (strcmp(str_or(json_string_value(json_object_get(ev, "type")), ""), "metrics") != 0)
            continue;
        json_t *d = json_object_get(ev, "data");
        char v[3][32];
        const char *keys[3] = {"train_loss", "valid_loss", "valid_accuracy"};
        for (int k = 0; k < 3; k++) {
            json_t *x = json_object_get(d, keys[k]);
            if (json_is_number(x))
                snprintf(v[k], sizeof v[k], "%.6f", json_number_value(x));
            else
                v[k][0] = '\0';
        }
        int w =
            snprintf(s + n, cap - n, "%lld,%lld,%s,%s,%s\n",
                     (long long)json_integer_value(json_object_get(d, "step")),
                     (long long)json_integer_value(json_object_get(d, "epoch")), v[0], v[1], v[2]);
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
    *len = n;
    return s;
}

/* Saves, registers and reports the trained model; fills c->err on failure. */
static int run_finish(struct run_ctx *c, struct model *m)
{
    struct job_queue *q = c->q;
    struct job *j = c->j;
    struct server *srv = q->cfg.srv;
    struct err e = {0};
    char dir[4400];
    snprintf(dir, sizeof dir, "%s/models/%s/1", q->data_dir, c->name);
    int rc = model_save(m, dir, &e);
    if (rc == INF_OK)
        rc = registry_load_from_store(srv->registry, c->name, &e);
    if (rc != INF_OK) {
        snprintf(c->err.code, sizeof c->err.code, "server_error");
        snprintf(c->err.message, sizeof c->err.message,
                 "the fine-tuned model was not saved: %.400s", e.msg);
        return rc;
    }
    pthread_mutex_lock(&q->lock);
    size_t len = 0;
    char *csv = json_object_get(j->doc, "_result_file") ? NULL : metrics_csv(j, &len);
    pthread_mutex_unlock(&q->lock);
    struct file_info info = {0};
    if (csv != NULL) {
        rc = file_store_put(srv->files, "step_metrics.csv", "fine-tune-results", j->owner, csv, len,
                            &info, &e);
        free(csv);
        if (rc != INF_OK)
            log_msg(LOG_ERROR, "job %s: result file not stored: %s", j->id, e.msg);
    }
    pthread_mutex_lock(&q->lock);
    if (info.id[0] != '\0')
        json_object_set_new(j->doc, "_result_file", json_string(info.id));
    const char *rf = doc_str(j, "_result_file");
    json_object_set_new(j->doc, "result_files", rf ? json_pack("[s]", rf) : json_array());
    json_object_set_new(j->doc, "fine_tuned_model", json_string(c->name));
    set_status(j, JOB_SUCCEEDED);
    job_event(q, j, "info", "message", NULL, "New fine-tuned model created: %s", c->name);
    job_event(q, j, "info", "message", NULL, "The job has successfully completed");
    job_persist(q, j, NULL);
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    return INF_OK;
}

static void run_job(struct job_queue *q, struct job *j)
{
    struct run_ctx c = {.q = q, .j = j, .gate = train_gate_init(q->cfg.busy_percent)};
    struct job_train_input in = {0};
    /* Copy what the run needs while the lock is held (the doc is rewritten meanwhile). */
    pthread_mutex_lock(&q->lock);
    json_t *doc = json_deep_copy(j->doc);
    pthread_mutex_unlock(&q->lock);
    json_t *hp = json_object_get(doc, "hyperparameters");
    json_t *cks = json_object_get(doc, "_checkpoints");
    snprintf(c.name, sizeof c.name, "%s",
             str_or(json_string_value(json_object_get(doc, "_fine_tuned_model")), ""));
    c.n_ckpt = json_array_size(cks);
    c.ckpt_files = calloc(c.n_ckpt + 1, sizeof *c.ckpt_files);
    for (size_t i = 0; c.ckpt_files != NULL && i < c.n_ckpt; i++)
        c.ckpt_files[i] = (char *)json_string_value(
            json_object_get(json_array_get(cks, c.n_ckpt - 1 - i), "_file"));
    in.srv = q->cfg.srv;
    in.job_id = j->id;
    in.owner = j->owner;
    in.model = json_string_value(json_object_get(doc, "model"));
    in.model_version = (int)json_integer_value(json_object_get(doc, "_model_version"));
    in.training_file = json_string_value(json_object_get(doc, "training_file"));
    in.validation_file = json_string_value(json_object_get(doc, "validation_file"));
    in.hp.n_epochs = (int)json_integer_value(json_object_get(hp, "n_epochs"));
    in.hp.batch_size = (size_t)json_integer_value(json_object_get(hp, "batch_size"));
    in.hp.learning_rate_multiplier =
        json_number_value(json_object_get(hp, "learning_rate_multiplier"));
    in.hp.learning_rate = json_number_value(json_object_get(hp, "learning_rate"));
    int opt =
        model_optimizer_parse(str_or(json_string_value(json_object_get(hp, "optimizer")), ""));
    in.hp.optimizer = opt < 0 ? MODEL_OPTIM_ADAM : (enum model_optimizer)opt;
    in.hp.weight_decay = json_number_value(json_object_get(hp, "weight_decay"));
    in.hp.mask_pii = json_is_true(json_object_get(hp, "mask_pii"));
    in.hp.seed = (uint64_t)json_integer_value(json_object_get(doc, "seed"));
    in.on_epoch = run_on_epoch;
    in.should_cancel = run_should_cancel;
    in.load_checkpoint = run_load_checkpoint;
    in.n_checkpoints = c.ckpt_files ? c.n_ckpt : 0;
    in.user = &c;
    c.hp_epochs = in.hp.n_epochs;
    c.hp_batch = in.hp.batch_size;

    struct model *m = NULL;
    struct job_error je = {"", "", ""};
    struct persister persist;
    persister_start(&c, &persist);
    int rc = job_train_run(&in, &m, &je);
    persister_stop(&c); /* the last epoch is on disk (or c.failed) before the final state */
    if (rc == INF_OK && c.failed) {
        model_free(m);
        m = NULL;
        rc = INF_EIO;
    }
    if (rc == INF_OK) {
        rc = run_finish(&c, m);
        model_free(m);
    }
    pthread_mutex_lock(&q->lock);
    if (rc == INF_OK) {
        /* done in run_finish */
    } else if (rc == INF_ECANCELLED && !c.failed && atomic_load(&j->cancel)) {
        set_status(j, JOB_CANCELLED);
        job_event(q, j, "info", "message", NULL, "The job was cancelled");
    } else if (rc == INF_ECANCELLED && !c.failed) {
        set_status(j, JOB_QUEUED);
        job_event(q, j, "info", "message", NULL,
                  "The server is shutting down: the job goes back to the queue and resumes "
                  "from its last checkpoint");
    } else {
        const struct job_error *fe = c.err.code[0] ? &c.err : &je;
        set_status(j, JOB_FAILED);
        json_object_set_new(j->doc, "error",
                            json_pack("{s:s,s:s,s:s?}", "code",
                                      fe->code[0] ? fe->code : "server_error", "message",
                                      fe->message, "param", fe->param[0] ? fe->param : NULL));
        job_event(q, j, "error", "message", NULL, "The job failed: %s", fe->message);
    }
    if (rc != INF_OK)
        job_persist(q, j, NULL);
    enum job_status st = j->status;
    job_audit(q, NULL, j,
              st == JOB_SUCCEEDED   ? "job.succeeded"
              : st == JOB_FAILED    ? "job.failed"
              : st == JOB_CANCELLED ? "job.cancelled"
                                    : "job.interrupted");
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    log_msg(LOG_INFO, "job %s: %s", j->id, status_names[st]);
    free(c.ckpt_files);
    json_decref(doc);
}

static void *worker_main(void *arg)
{
    struct job_queue *q = arg;
    /* Training yields to inference: SCHED_IDLE for this thread only, so it runs on whatever
     * CPU inference leaves and never takes a core from a request (nice 10 still took ~64% of
     * a core under load: bench/jobs). On an idle machine it trains at full speed. If the
     * policy is refused (a sandbox), nice 10 is the fallback; failure only costs fairness.
     * SCHED_IDLE alone still let a job beside inference triple p99 (shared caches and disk):
     * run_should_cancel adds the train gate's pauses while requests are being served. The
     * job's persister thread inherits the policy. */
    struct sched_param sp = {0};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0 &&
        setpriority(PRIO_PROCESS, (id_t)gettid(), 10) != 0)
        log_msg(LOG_DEBUG, "job worker: setpriority: %s", strerror(errno));
    pthread_mutex_lock(&q->lock);
    while (!atomic_load(&q->stopping)) {
        struct job *j = NULL;
        for (size_t i = 0; i < q->n && j == NULL; i++)
            if (q->jobs[i]->status == JOB_QUEUED)
                j = q->jobs[i];
        if (j == NULL) {
            pthread_cond_wait(&q->work, &q->lock);
            continue;
        }
        atomic_store(&j->cancel, false);
        set_status(j, JOB_RUNNING);
        size_t nck = json_array_size(json_object_get(j->doc, "_checkpoints"));
        if (nck > 0)
            job_event(q, j, "info", "message", NULL, "Fine-tuning job resumed from step %lld",
                      (long long)json_integer_value(json_object_get(
                          json_array_get(json_object_get(j->doc, "_checkpoints"), nck - 1),
                          "step_number")));
        else
            job_event(q, j, "info", "message", NULL, "Fine-tuning job started");
        job_persist(q, j, NULL);
        job_audit(q, NULL, j, "job.started");
        pthread_mutex_unlock(&q->lock);
        run_job(q, j);
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

int job_queue_start(struct job_queue *q, struct err *e)
{
    if (q->cfg.workers == 0 || q->threads != NULL)
        return INF_OK;
    q->threads = calloc(q->cfg.workers, sizeof *q->threads);
    if (q->threads == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    for (unsigned i = 0; i < q->cfg.workers; i++) {
        int rc = pthread_create(&q->threads[i], NULL, worker_main, q);
        if (rc != 0) {
            job_queue_stop(q);
            return err_set(e, INF_EIO, "cannot start a training worker: %s", strerror(rc));
        }
        q->n_threads++;
    }
    log_msg(LOG_INFO, "job queue: %u training workers", q->n_threads);
    return INF_OK;
}

void job_queue_stop(struct job_queue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->lock);
    atomic_store(&q->stopping, true);
    pthread_cond_broadcast(&q->work);
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->n_threads; i++)
        pthread_join(q->threads[i], NULL);
    q->n_threads = 0;
}

void job_queue_free(struct job_queue *q)
{
    if (q == NULL)
        return;
    job_queue_stop(q);
    free(q->threads);
    for (size_t i = 0; i < q->n; i++)
        job_free(q->jobs[i]);
    free(q->jobs);
    pthread_cond_destroy(&q->work);
    pthread_cond_destroy(&q->changed);
    pthread_mutex_destroy(&q->lock);
    free(q);
}

/* ------------------------------------------------------------------------------------------
 * Operations for the HTTP handlers
 * ---------------------------------------------------------------------------------------- */

bool job_model_name(char *out, size_t cap, const char *base, const char *suffix, const char *job_id)
{
    int n = snprintf(out, cap, "ft:%s:%s:%s", base, suffix ? suffix : "", job_id);
    return n > 0 && (size_t)n < cap && (size_t)n <= JOB_NAME_MAX;
}

static struct job *find_idempotent(struct job_queue *q, const char *owner, const char *key)
{
    for (size_t i = 0; i < q->n; i++) {
        const char *k = doc_str(q->jobs[i], "_idempotency_key");
        if (k != NULL && strcmp(k, key) == 0 && strcmp(q->jobs[i]->owner, owner) == 0)
            return q->jobs[i];
    }
    return NULL;
}

json_t *job_queue_find_idempotent(struct job_queue *q, const char *owner, const char *key)
{
    pthread_mutex_lock(&q->lock);
    struct job *j = find_idempotent(q, owner, key);
    json_t *out = j ? public_copy(j->doc) : NULL;
    pthread_mutex_unlock(&q->lock);
    return out;
}

static size_t active_locked(struct job_queue *q, const char *owner)
{
    size_t n = 0;
    for (size_t i = 0; i < q->n; i++)
        if ((q->jobs[i]->status == JOB_QUEUED || q->jobs[i]->status == JOB_RUNNING) &&
            strcmp(q->jobs[i]->owner, owner) == 0)
            n++;
    return n;
}

size_t job_queue_active(struct job_queue *q, const char *owner, unsigned *cap)
{
    pthread_mutex_lock(&q->lock);
    size_t n = active_locked(q, owner);
    pthread_mutex_unlock(&q->lock);
    if (cap != NULL)
        *cap = q->cfg.max_jobs_per_key;
    return n;
}

static json_t *hparams_json(const struct job_hparams *hp)
{
    json_t *o =
        json_pack("{s:i,s:I,s:f,s:f,s:s,s:f}", "n_epochs", hp->n_epochs, "batch_size",
                  (json_int_t)hp->batch_size, "learning_rate_multiplier",
                  hp->learning_rate_multiplier, "learning_rate", hp->learning_rate, "optimizer",
                  model_optimizer_name(hp->optimizer), "weight_decay", hp->weight_decay);
    if (o != NULL && hp->mask_pii)
        json_object_set_new(o, "mask_pii", json_true());
    return o;
}

int job_queue_create(struct job_queue *q, const struct job_spec *spec, struct request *rq,
                     json_t **job, bool *existed, struct err *e)
{
    int rc = INF_OK;
    struct job *j = NULL;
    char dir[4200];
    pthread_mutex_lock(&q->lock);
    if (spec->idempotency_key != NULL) {
        struct job *old = find_idempotent(q, spec->owner, spec->idempotency_key);
        if (old != NULL) {
            *job = public_copy(old->doc);
            *existed = true;
            pthread_mutex_unlock(&q->lock);
            return *job ? INF_OK : err_set(e, INF_ENOMEM, "out of memory");
        }
    }
    if (spec->error_code == NULL && active_locked(q, spec->owner) >= q->cfg.max_jobs_per_key) {
        rc = err_set(e, INF_ELIMIT,
                     "this key already has %zu fine-tuning jobs queued or running (the limit is "
                     "%u per key); wait for one to finish or cancel one",
                     active_locked(q, spec->owner), q->cfg.max_jobs_per_key);
        goto out;
    }
    j = calloc(1, sizeof *j);
    if (j == NULL || (j->events = json_array()) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    do {
        if ((rc = random_id(j->id, sizeof j->id, "ftjob-")) != INF_OK) {
            err_set(e, rc, "no random id");
            goto out;
        }
    } while (find_job(q, j->id) != NULL);
    snprintf(j->owner, sizeof j->owner, "%s", spec->owner);
    j->seq = q->next_seq;
    char name[JOB_NAME_MAX + 1];
    if (!job_model_name(name, sizeof name, spec->model, spec->suffix, j->id)) {
        rc = err_set(e, INF_EINVAL, "the fine-tuned model name would be too long");
        goto out;
    }
    json_t *hp = hparams_json(&spec->hp);
    j->doc = json_pack(
        "{s:s,s:s,s:I,s:n,s:s,s:n,s:s,s:s,s:s,s:s?,s:o,s:{s:s,s:{s:O}},s:[],s:n,s:n,s:I,s:s?,"
        "s:s?,s:O?,s:n,s:[],s:s,s:I,s:s?,s:i,s:s,s:[]}",
        "id", j->id, "object", "fine_tuning.job", "created_at", (json_int_t)now_s(), "finished_at",
        "model", spec->model, "fine_tuned_model", "organization_id", "org-infera", "status",
        "queued", "training_file", spec->training_file, "validation_file", spec->validation_file,
        "hyperparameters", hp, "method", "type", "supervised", "supervised", "hyperparameters", hp,
        "result_files", "trained_tokens", "error", "seed", (json_int_t)spec->hp.seed,
        "user_provided_suffix", spec->suffix, "suffix", spec->suffix, "metadata", spec->metadata,
        "estimated_finish", "integrations", "_owner", spec->owner, "_seq", (json_int_t)j->seq,
        "_idempotency_key", spec->idempotency_key, "_model_version", spec->model_version,
        "_fine_tuned_model", name, "_checkpoints");
    if (j->doc == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    if (spec->metadata == NULL)
        json_object_set_new(j->doc, "metadata", json_null());
    if (spec->validation_file == NULL)
        json_object_set_new(j->doc, "validation_file", json_null());
    if (job_path(q, j, "checkpoints", dir, sizeof dir) != INF_OK ||
        fs_mkdir_p(dir, 0700, e) != INF_OK || fs_fsync_dir(q->dir, e) != INF_OK) {
        rc = INF_EIO;
        goto out_rm;
    }
    job_event(q, j, "info", "message", NULL, "Created fine-tuning job: %s", j->id);
    job_event(q, j, "info", "message", NULL, "Validating training file: %s%s%s",
              spec->training_file, spec->validation_file ? " and validation file: " : "",
              spec->validation_file ? spec->validation_file : "");
    if (spec->error_code != NULL) {
        set_status(j, JOB_FAILED);
        json_object_set_new(j->doc, "error",
                            json_pack("{s:s,s:s,s:s?}", "code", spec->error_code, "message",
                                      spec->error_message ? spec->error_message : "", "param",
                                      spec->error_param));
        job_event(q, j, "error", "message", NULL, "Training file validation failed: %s",
                  spec->error_message ? spec->error_message : "");
    } else {
        set_status(j, JOB_QUEUED);
        job_event(q, j, "info", "message", NULL, "Files validated, moving job to queued state");
    }
    if ((rc = job_persist(q, j, e)) != INF_OK)
        goto out_rm;
    /* On record before anyone can see it; an unrecorded job is taken back (fail closed). */
    if (job_audit(q, rq, j, "job.created") != INF_OK) {
        rc = err_set(e, INF_EIO, "the audit log cannot be written; no job was created");
        goto out_rm;
    }
    if (j->status == JOB_FAILED)
        job_audit(q, rq, j, "job.failed");
    if ((rc = push_job(q, j)) != INF_OK) {
        err_set(e, rc, "out of memory");
        goto out_rm;
    }
    q->next_seq++;
    *job = public_copy(j->doc);
    *existed = false;
    j = NULL;
    pthread_cond_signal(&q->work);
    goto out;
out_rm:
    if (job_path(q, j, NULL, dir, sizeof dir) == INF_OK)
        fs_remove_tree(dir);
out:
    pthread_mutex_unlock(&q->lock);
    job_free(j);
    return rc;
}

int job_queue_get(struct job_queue *q, const char *id, const char *owner, bool admin, json_t **job)
{
    pthread_mutex_lock(&q->lock);
    struct job *j = find_job(q, id);
    int rc = INF_ENOTFOUND;
    if (j != NULL && visible(j, owner, admin)) {
        *job = public_copy(j->doc);
        rc = *job ? INF_OK : INF_ENOMEM;
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

/* Pages items[0..n) (oldest first) into a list envelope, newest first, starting after the
 * item whose "id" is after (NULL: from the newest). Private fields are left out. */
static int page(json_t **items, size_t n, const char *after, size_t limit, json_t **list,
                const char *what, struct err *e)
{
    size_t start = n;
    if (after != NULL) {
        start = SIZE_MAX;
        for (size_t i = n; i-- > 0;)
            if (strcmp(str_or(json_string_value(json_object_get(items[i], "id")), ""), after) == 0)
                start = i;
        if (start == SIZE_MAX)
            return err_set(e, INF_ENOTFOUND, "after: no %s with id %.64s", what, after);
    }
    json_t *data = json_array();
    size_t i = start;
    while (i > 0 && json_array_size(data) < limit)
        json_array_append_new(data, public_copy(items[--i]));
    size_t k = json_array_size(data);
    *list = json_pack("{s:s,s:o,s:b,s:O?,s:O?}", "object", "list", "data", data, "has_more", i > 0,
                      "first_id", k ? json_object_get(json_array_get(data, 0), "id") : NULL,
                      "last_id", k ? json_object_get(json_array_get(data, k - 1), "id") : NULL);
    if (*list == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    if (k == 0) {
        json_object_set_new(*list, "first_id", json_null());
        json_object_set_new(*list, "last_id", json_null());
    }
    return INF_OK;
}

/* True if doc's metadata passes filter (see job_queue_list). */
static bool metadata_matches(const json_t *doc, const json_t *filter)
{
    const json_t *md = json_object_get(doc, "metadata");
    if (filter == NULL)
        return true;
    if (json_is_null(filter))
        return md == NULL || json_is_null(md) || (json_is_object(md) && json_object_size(md) == 0);
    const char *k;
    const json_t *want;
    json_object_foreach((json_t *)filter, k, want)
    {
        const json_t *got = json_object_get(md, k);
        if (!json_is_string(got) || !json_equal(got, want))
            return false;
    }
    return true;
}

int job_queue_list(struct job_queue *q, const char *owner, bool admin, const char *after,
                   const json_t *metadata, size_t limit, json_t **list, struct err *e)
{
    pthread_mutex_lock(&q->lock);
    json_t **items = malloc((q->n + 1) * sizeof *items);
    size_t n = 0;
    int rc = INF_ENOMEM;
    if (items != NULL) {
        /* The after job stays in as the cursor even when the filter leaves it out. */
        for (size_t i = 0; i < q->n; i++)
            if (visible(q->jobs[i], owner, admin) &&
                (metadata_matches(q->jobs[i]->doc, metadata) ||
                 (after != NULL && strcmp(q->jobs[i]->id, after) == 0)))
                items[n++] = q->jobs[i]->doc;
        rc = page(items, n, after, limit, list, "fine-tuning job", e);
    }
    pthread_mutex_unlock(&q->lock);
    free(items);
    return rc;
}

int job_queue_cancel(struct job_queue *q, const char *id, const char *owner, bool admin,
                     struct request *rq, double wait_s, json_t **job, struct err *e)
{
    pthread_mutex_lock(&q->lock);
    struct job *j = find_job(q, id);
    int rc = INF_OK;
    if (j == NULL || !visible(j, owner, admin)) {
        rc = err_set(e, INF_ENOTFOUND, "no fine-tuning job with id %.64s", id);
    } else if (j->status == JOB_QUEUED) {
        set_status(j, JOB_CANCELLED);
        job_event(q, j, "info", "message", NULL, "The job was cancelled");
        rc = job_persist(q, j, e);
        if (rc == INF_OK)
            job_audit(q, rq, j, "job.cancelled");
    } else if (j->status == JOB_RUNNING) {
        atomic_store(&j->cancel, true);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        double whole = floor(wait_s);
        dl.tv_sec += (time_t)whole;
        dl.tv_nsec += (long)((wait_s - whole) * 1e9);
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        while (j->status == JOB_RUNNING && !atomic_load(&q->stopping))
            if (pthread_cond_timedwait(&q->changed, &q->lock, &dl) == ETIMEDOUT)
                break;
    } else {
        rc = err_set(e, INF_EINVAL,
                     "fine-tuning job %s has already %s; only queued or running jobs can be "
                     "cancelled",
                     j->id, status_names[j->status]);
    }
    if (rc == INF_OK) {
        *job = public_copy(j->doc);
        if (*job == NULL)
            rc = err_set(e, INF_ENOMEM, "out of memory");
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

/* Pages one of a job's arrays (oldest first): its events, or its checkpoints. */
static int job_array_page(struct job_queue *q, const char *id, const char *owner, bool admin,
                          bool checkpoints, const char *after, size_t limit, json_t **list,
                          struct err *e)
{
    pthread_mutex_lock(&q->lock);
    struct job *j = find_job(q, id);
    int rc;
    if (j == NULL || !visible(j, owner, admin)) {
        rc = err_set(e, INF_ENOTFOUND, "no fine-tuning job with id %.64s", id);
    } else {
        json_t *arr = checkpoints ? json_object_get(j->doc, "_checkpoints") : j->events;
        size_t n = json_array_size(arr);
        json_t **items = malloc((n + 1) * sizeof *items);
        rc = INF_ENOMEM;
        if (items != NULL) {
            for (size_t i = 0; i < n; i++)
                items[i] = json_array_get(arr, i);
            rc = page(items, n, after, limit, list, checkpoints ? "checkpoint" : "event", e);
        }
        free(items);
    }
    pthread_mutex_unlock(&q->lock);
    return rc;
}

int job_queue_events(struct job_queue *q, const char *id, const char *owner, bool admin,
                     const char *after, size_t limit, json_t **list, struct err *e)
{
    return job_array_page(q, id, owner, admin, false, after, limit, list, e);
}

int job_queue_checkpoints(struct job_queue *q, const char *id, const char *owner, bool admin,
                          const char *after, size_t limit, json_t **list, struct err *e)
{
    return job_array_page(q, id, owner, admin, true, after, limit, list, e);
}
