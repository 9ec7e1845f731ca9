/*
 * auth/audit.c - the audit log writer: validation, the group-commit thread, segments, and
 * crash recovery at start-up. The format, MAC and verification live in audit_verify.c.
 *
 * Appenders put an item on a FIFO queue and sleep. Committer threads (max_in_flight of them)
 * take turns at the file: the one whose turn it is takes up to max_batch queued items, gives
 * them seqs in queue order, serialises and MACs them into one buffer and write()s it (a group
 * commit); then it hands the turn on and, outside the turn, calls fdatasync. A commit starts
 * at once when none is in flight, and beside others only once the newest has been in flight
 * AUDIT_OVERLAP_NS (may_start). On a disk that syncs faster than that, commits go one at a
 * time and what arrives meanwhile leaves together in the next (few fdatasyncs: they cost CPU);
 * on a disk that takes milliseconds per flush but serves several in parallel (virtual and
 * network block devices, SSDs with queues), several are in flight and a record waits about one
 * flush instead of the rest of the current one plus its own. Measured with fdatasync slowed by
 * 3 ms: 1.75x the requests/s of one commit at a time; on this VM's 0.5 ms disk: 0.93x.
 *
 * Commits are acknowledged strictly in the order they were written (their ticket): a commit's
 * records are durable only when its own fdatasync and every earlier commit's have succeeded.
 * If an fdatasync fails, that commit and every later one still in flight fail (an fdatasync
 * after a failed one can report success for pages the kernel has dropped), and the next turn
 * first waits for every earlier commit to finish, then cuts the file back to the last
 * acknowledged record and continues the chain from there. Segment rotation also waits for the
 * commits in flight on the old segment before closing it.
 */
#include "audit_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define AUDIT_DEFAULT_SEGMENT_BYTES ((size_t)64 << 20)
#define AUDIT_DEFAULT_MAX_BATCH     1024u
#ifndef AUDIT_DEFAULT_IN_FLIGHT
#define AUDIT_DEFAULT_IN_FLIGHT 16u
#endif
#define AUDIT_MAX_IN_FLIGHT 64u
#define AUDIT_KEY_LEN_MAX   64
#define AUDIT_RETRY_NS      500000000L /* background re-check while unhealthy */
#define AUDIT_OVERLAP_NS    1000000L   /* a commit may start beside one this old */
#define AUDIT_PATH_MAX      4096

/* One record waiting for a committer. Lives on the appender's stack until done is set. */
struct audit_item {
    struct audit_line line; /* the record, serialised in the appender's thread */
    struct audit_item *next;
    int rc;             /* outcome, valid once done */
    uint64_t seq;       /* the record's seq if rc == INF_OK */
    struct err err;     /* message if rc != INF_OK */
    pthread_mutex_t mu; /* its own lock, so waking an appender does not contend on the log's */
    pthread_cond_t cv;  /* its appender waits here for done */
    bool done;          /* set (under mu) by its committer; then the item is no longer touched */
};

/* A committer thread and the group commit it has in flight (from its turn to its ack). */
struct audit_committer {
    struct audit_log *log;
    unsigned index;
    pthread_t thread;
    bool started;
    struct audit_item **batch; /* max_batch slots */
    size_t n;
    /* The commit in flight. Set during the turn; done, rc and err also under mu afterwards. */
    uint64_t ticket;
    bool in_flight;        /* under the log's mu: between turn_take and its acknowledgement */
    bool done;             /* its write (and fdatasync) finished; waiting for earlier tickets */
    bool acked;            /* acknowledged (rc final); its thread then wakes the appenders */
    pthread_cond_t ack_cv; /* its thread waits here for acked */
    bool recover;          /* the turn began while the log was poisoned (see the file comment) */
    bool sync_failed;      /* fdatasync failed: poisons the commits after it */
    int rc;                /* the commit's outcome */
    struct err err;        /* its message if rc != INF_OK */
    int fd;                /* the segment it wrote to */
    bool wrote;            /* there were bytes to write and sync */
    uint64_t records;      /* lines written, log-internal ones included */
    double fsync_seconds;  /* time in its fdatasync */
    uint64_t end_size;     /* segment bytes after it */
    struct audit_chain end_chain;
};

struct audit_log {
    /* Set by audit_open, then read-only. */
    char dir[AUDIT_PATH_MAX];
    size_t segment_bytes;
    unsigned max_batch;
    unsigned in_flight;
    int dir_lock_fd; /* holds the flock() on dir */
    struct audit_committer committers[AUDIT_MAX_IN_FLIGHT];

    /* Guarded by mu (a leaf lock: no I/O and no calls out while held). */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* idle committers wait for items, the turn, or stopping */
    pthread_cond_t drain_cv; /* a turn waits here for earlier commits to be acknowledged */
    unsigned draining;       /* turns waiting on drain_cv */
    struct audit_item *head, *tail;
    bool stopping;
    bool healthy;
    bool turn_taken;            /* a committer is serialising and writing */
    unsigned active;            /* commits from their turn to their acknowledgement */
    struct timespec last_start; /* when the newest of them took its turn (monotonic) */
    bool timer_armed;           /* one idle committer waits for may_start's time; others sleep */
    uint64_t next_ticket;       /* ticket of the next turn */
    uint64_t next_ack;          /* the ticket to acknowledge next */
    bool poisoned;              /* an fdatasync failed; cleared by the turn that cuts back */
    struct err poison;          /* why */
    uint64_t durable_size;      /* segment bytes of the acknowledged records */
    struct audit_chain durable_chain;
    struct audit_stats stats;

    /* Turn state: touched by audit_open before the threads start, then only by the committer
     * whose turn it is. */
    struct audit_hmac *hmac;
    int fd;       /* current segment (O_APPEND), -1 before the first one */
    unsigned seg; /* its number */
    char seg_path[AUDIT_PATH_MAX];
    uint64_t seg_size;        /* bytes written to it by successful turns (durable or in flight) */
    struct audit_chain chain; /* seq and mac of the last record written */
    char *out;                /* the lines of the commit being built */
    size_t out_len, out_cap;
};

/* ------------------------------------------------------------------------------------------
 * Records
 * ---------------------------------------------------------------------------------------- */

static bool key_ok(const char *k)
{
    size_t n = strlen(k);
    if (n == 0 || n > AUDIT_KEY_LEN_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* Checks a caller's record against the rules in audit.h. */
static int record_check(const json_t *record, struct err *e)
{
    const char *key;
    json_t *value;
    if (!json_is_object(record))
        return err_set(e, INF_EINVAL, "an audit record must be a JSON object");
    /* json_object_foreach takes a non-const object; it only reads here. */
    json_object_foreach((json_t *)record, key, value)
    {
        if (!key_ok(key))
            return err_set(e, INF_EINVAL,
                           "audit record key \"%.80s\": keys are 1-64 characters of "
                           "[A-Za-z0-9_.-]",
                           key);
        if (strcmp(key, "ts") == 0 || strcmp(key, "seq") == 0 || strcmp(key, "mac") == 0)
            return err_set(e, INF_EINVAL, "audit record key \"%s\" is set by the audit log", key);
        switch (json_typeof(value)) {
            case JSON_STRING:
                if (strlen(json_string_value(value)) != json_string_length(value))
                    return err_set(e, INF_EINVAL, "audit record member \"%s\" contains NUL", key);
                if (strcmp(key, "event") == 0 &&
                    strncmp(json_string_value(value), "audit.", 6) == 0)
                    return err_set(e, INF_EINVAL,
                                   "audit events \"audit.*\" are reserved for the audit log");
                break;
            case JSON_INTEGER:
            case JSON_REAL:
            case JSON_TRUE:
            case JSON_FALSE:
            case JSON_NULL:
                break;
            default:
                return err_set(e, INF_EINVAL,
                               "audit record member \"%s\": nested objects and arrays are not "
                               "allowed",
                               key);
        }
    }
    return INF_OK;
}

/* A new working record with "ts" set, or NULL. The caller's values are shared, not copied:
 * they are scalars, and the log only adds members to its own object. */
static json_t *record_new(const json_t *src)
{
    char ts[32];
    json_t *rec = src != NULL ? json_copy((json_t *)src) : json_object();
    utc_timestamp(ts);
    if (rec == NULL || json_object_set_new(rec, "ts", json_string(ts)) != 0) {
        json_decref(rec);
        return NULL;
    }
    return rec;
}

/* ------------------------------------------------------------------------------------------
 * Writer: lines, segments, commits (writer thread, or audit_open before it starts)
 * ---------------------------------------------------------------------------------------- */

/* Makes room for n more bytes in the commit buffer. */
static int out_reserve(struct audit_log *log, size_t n, struct err *e)
{
    size_t need;
    if (!size_add_ok(log->out_len, n, &need))
        return err_set(e, INF_ENOMEM, "out of memory");
    if (need > log->out_cap) {
        size_t cap = log->out_cap ? log->out_cap : 65536;
        while (cap < need && cap <= SIZE_MAX / 2)
            cap *= 2;
        char *p = cap >= need ? realloc(log->out, cap) : NULL;
        if (p == NULL)
            return err_set(e, INF_ENOMEM, "out of memory");
        log->out = p;
        log->out_cap = cap;
    }
    return INF_OK;
}

/*
 * Gives a prepared item the next seq, MACs its line and adds it to the commit buffer.
 * Advances log->chain only on success.
 */
static int line_add(struct audit_log *log, const struct audit_item *it, uint64_t *seq_out,
                    struct err *e)
{
    char digits[24];
    uint8_t mac[AUDIT_MAC_BYTES];
    uint64_t seq = log->chain.seq + 1;
    size_t nd = (size_t)snprintf(digits, sizeof digits, "%llu", (unsigned long long)seq);
    size_t len = it->line.len - 1 + nd;
    if (len + 1 > AUDIT_LINE_MAX)
        return audit_line_err_long(e);
    int rc = out_reserve(log, len + 1, e);
    if (rc != INF_OK)
        return rc;
    char *dst = log->out + log->out_len;
    memcpy(dst, it->line.text, it->line.seq_off);
    memcpy(dst + it->line.seq_off, digits, nd);
    memcpy(dst + it->line.seq_off + nd, it->line.text + it->line.seq_off + 1,
           it->line.len - it->line.seq_off - 1);
    if ((rc = audit_hmac_line(log->hmac, log->chain.mac, dst, len, mac, e)) != INF_OK)
        return rc;
    char hex[AUDIT_MAC_HEX + 1];
    audit_hex(mac, sizeof mac, hex);
    memcpy(dst + it->line.mac_off, hex, AUDIT_MAC_HEX);
    dst[len] = '\n';
    log->out_len += len + 1;
    log->chain.seq = seq;
    memcpy(log->chain.mac, mac, sizeof mac);
    *seq_out = seq;
    return INF_OK;
}

/*
 * Makes segment num the current one: creates it (0600) or opens it if it exists and is empty
 * (left by a crash or a failed attempt), fsyncs the directory. On failure the current segment
 * stays as it was.
 */
static int segment_begin(struct audit_log *log, unsigned num, struct err *e)
{
    char name[64], path[AUDIT_PATH_MAX];
    struct stat st;
    audit_segment_name(num, name, sizeof name);
    int rc = fs_path_join(path, sizeof path, log->dir, name, e);
    if (rc != INF_OK)
        return rc;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return err_set(e, INF_EIO, "cannot create audit segment %s: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode) || st.st_size != 0) {
        rc = err_set(e, INF_EIO, "audit segment %s already exists and is not empty", path);
    } else {
        rc = fs_fsync_dir(log->dir, e);
    }
    if (rc != INF_OK) {
        close(fd);
        return rc;
    }
    if (log->fd >= 0)
        close(log->fd);
    log->fd = fd;
    log->seg = num;
    log->seg_size = 0;
    memcpy(log->seg_path, path, sizeof path);
    return INF_OK;
}

/*
 * Before a commit: the open segment must hold exactly the durable records, the path must still
 * name it, and it must be writable; otherwise (or when it is full) a new segment begins.
 */
static void drain(struct audit_log *log, const struct audit_committer *c);

static int segment_prepare(struct audit_log *log, const struct audit_committer *c, struct err *e)
{
    struct stat fst, pst;
    bool fresh = log->fd < 0;
    if (!fresh) {
        if (fstat(log->fd, &fst) != 0)
            return err_set(e, INF_EIO, "%s: %s", log->seg_path, strerror(errno));
        if ((uint64_t)fst.st_size != log->seg_size &&
            (ftruncate(log->fd, (off_t)log->seg_size) != 0 || fdatasync(log->fd) != 0))
            return err_set(e, INF_EIO, "cannot truncate a failed write in %s: %s", log->seg_path,
                           strerror(errno));
        /* stat, not access(): chmod does not stop root, but a moved directory shows here. */
        fresh =
            stat(log->seg_path, &pst) != 0 || pst.st_dev != fst.st_dev || pst.st_ino != fst.st_ino;
        if (!fresh && (faccessat(AT_FDCWD, log->dir, W_OK | X_OK, AT_EACCESS) != 0 ||
                       faccessat(AT_FDCWD, log->seg_path, W_OK, AT_EACCESS) != 0))
            return err_set(e, INF_EIO, "audit log %s is not writable: %s", log->seg_path,
                           strerror(errno));
    }
    if (fresh) {
        char was[AUDIT_PATH_MAX];
        memcpy(was, log->seg_path, sizeof was);
        bool moved = log->fd >= 0;
        drain(log, c); /* commits in flight still sync the old segment's fd */
        int rc = segment_begin(log, moved ? log->seg + 1 : log->seg, e);
        if (rc == INF_OK && moved)
            log_msg(LOG_WARN, "audit: %s no longer names the open segment; continuing in %s", was,
                    log->seg_path);
        return rc;
    }
    if (log->seg_size >= log->segment_bytes) {
        drain(log, c);
        return segment_begin(log, log->seg + 1, e);
    }
    return INF_OK;
}

static int write_lines(struct audit_log *log, struct err *e)
{
    size_t off = 0;
    while (off < log->out_len) {
        ssize_t n = write(log->fd, log->out + off, log->out_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return err_set(e, INF_EIO, "write %s: %s", log->seg_path, strerror(errno));
        off += (size_t)n;
    }
    return INF_OK;
}

/* The segment_start record of the current (empty) segment, as the first line of the commit. */
static int add_segment_start(struct audit_log *log, struct err *e)
{
    char hex[AUDIT_MAC_HEX + 1];
    uint64_t seq;
    audit_hex(log->chain.mac, sizeof log->chain.mac, hex);
    json_t *rec = record_new(NULL);
    struct audit_item it = {0};
    int rc = INF_OK;
    if (rec == NULL || json_object_set_new(rec, "event", json_string("audit.segment_start")) != 0 ||
        json_object_set_new(rec, "segment", json_integer(log->seg)) != 0 ||
        json_object_set_new(rec, "prev_seq", json_integer((json_int_t)log->chain.seq)) != 0 ||
        json_object_set_new(rec, "prev_mac", json_string(hex)) != 0)
        rc = err_set(e, INF_ENOMEM, "out of memory");
    else if ((rc = audit_line_prepare(rec, &it.line, e)) == INF_OK)
        rc = line_add(log, &it, &seq, e);
    json_decref(rec);
    free(it.line.text);
    return rc;
}

/*
 * Wakes an idle committer for queued work, unless one is bound to look anyway: the turn holder
 * hands on at the end of its turn, and an armed timer looks when may_start allows. Waking
 * committers that would only go back to sleep costs two context switches a record. Caller
 * holds mu.
 */
static void work_signal(struct audit_log *log)
{
    if (log->turn_taken || (log->active > 0 && log->timer_armed))
        return;
    pthread_cond_signal(&log->work_cv);
}

/* Waits until every commit before c's is acknowledged (c holds the turn). */
static void drain(struct audit_log *log, const struct audit_committer *c)
{
    pthread_mutex_lock(&log->mu);
    log->draining++;
    while (log->next_ack != c->ticket)
        pthread_cond_wait(&log->drain_cv, &log->mu);
    log->draining--;
    pthread_mutex_unlock(&log->mu);
}

/* Acknowledges finished commits in ticket order: settles each one's outcome and tells its
 * thread, which wakes the appenders (items_wake). Caller holds mu. */
static void acks_advance(struct audit_log *log)
{
    for (;;) {
        struct audit_committer *c = NULL;
        for (unsigned i = 0; i < log->in_flight && c == NULL; i++)
            if (log->committers[i].in_flight && log->committers[i].ticket == log->next_ack)
                c = &log->committers[i];
        if (c == NULL || !c->done)
            break;
        if (c->rc == INF_OK && log->poisoned) {
            c->rc = INF_EIO;
            err_set(&c->err, INF_EIO, "%s", log->poison.msg);
        }
        if (c->rc == INF_OK) {
            log->durable_size = c->end_size;
            log->durable_chain = c->end_chain;
            log->stats.records += c->records;
            log->stats.fsyncs += c->wrote ? 1 : 0;
            log->stats.fsync_seconds_total += c->fsync_seconds;
            log->stats.last_seq = c->end_chain.seq;
        } else {
            if (c->sync_failed && !log->poisoned) {
                log->poisoned = true;
                log->poison = c->err;
            }
            log->stats.failures++;
        }
        if (log->healthy && c->rc != INF_OK)
            pthread_cond_broadcast(&log->work_cv); /* committer 0 starts its re-checks */
        log->healthy = c->rc == INF_OK;
        c->in_flight = false;
        c->acked = true;
        log->active--;
        if (log->active == 0 && log->head != NULL)
            pthread_cond_signal(&log->work_cv); /* a commit held back by may_start can go */
        pthread_cond_signal(&c->ack_cv);
        log->next_ack++;
    }
    if (log->draining > 0)
        pthread_cond_broadcast(&log->drain_cv);
}

/* Gives c's appenders their outcome and wakes them. c is acknowledged; caller holds no lock. */
static void items_wake(struct audit_committer *c)
{
    for (size_t i = 0; i < c->n; i++) {
        struct audit_item *it = c->batch[i];
        if (it->rc == INF_OK && c->rc != INF_OK) {
            it->rc = c->rc;
            it->err = c->err;
        }
        pthread_mutex_lock(&it->mu);
        it->done = true;
        pthread_cond_signal(&it->cv);
        pthread_mutex_unlock(&it->mu); /* the appender may free the item from here on */
    }
    c->n = 0;
}

/*
 * Takes the turn for c: up to max_batch items off the queue and the next ticket. Caller holds
 * mu and has checked that the turn is free.
 */
static void turn_take(struct audit_log *log, struct audit_committer *c)
{
    c->n = 0;
    while (log->head != NULL && c->n < log->max_batch) {
        c->batch[c->n++] = log->head;
        log->head = log->head->next;
    }
    if (log->head == NULL)
        log->tail = NULL;
    log->turn_taken = true;
    log->active++;
    clock_gettime(CLOCK_MONOTONIC, &log->last_start);
    c->ticket = log->next_ticket++;
    c->in_flight = true;
    c->done = false;
    c->acked = false;
    c->recover = log->poisoned;
}

/*
 * One group commit of c's batch (n may be 0: then only a pending segment_start is written),
 * from its turn (taken with turn_take) to its acknowledgement. Called without mu; sets every
 * item's outcome and wakes the appenders (in ticket order, see acks_advance). Returns the
 * outcome of c's own write and sync; eout (optional) gets its message.
 */
static int commit(struct audit_log *log, struct audit_committer *c, struct err *eout)
{
    struct err e = {0};
    c->rc = INF_OK;
    err_clear(&c->err);
    c->sync_failed = false;
    c->wrote = false;
    c->records = 0;
    c->fsync_seconds = 0;
    for (size_t i = 0; i < c->n; i++) {
        c->batch[i]->rc = INF_OK;
        err_clear(&c->batch[i]->err);
    }
    if (c->recover) {
        /* An fdatasync failed: once everything before this turn is settled, continue from the
         * last acknowledged record (segment_prepare cuts the file back to it). */
        drain(log, c);
        pthread_mutex_lock(&log->mu);
        if (log->poisoned) {
            log->chain = log->durable_chain;
            log->seg_size = log->durable_size;
            log->poisoned = false;
        }
        pthread_mutex_unlock(&log->mu);
    }
    struct audit_chain before = log->chain;
    log->out_len = 0;
    int rc = segment_prepare(log, c, &e);
    if (rc == INF_OK && log->seg_size == 0 && (rc = add_segment_start(log, &e)) == INF_OK)
        c->records++;
    /* A record that cannot be serialised fails alone; the others still go. */
    for (size_t i = 0; i < c->n && rc == INF_OK; i++) {
        struct audit_item *it = c->batch[i];
        it->rc = line_add(log, it, &it->seq, &it->err);
        if (it->rc == INF_OK)
            c->records++;
    }
    if (rc == INF_OK && log->out_len > 0) {
        c->wrote = true;
        rc = write_lines(log, &e);
    }
    if (rc != INF_OK) {
        /* Nothing of this commit counts: roll the chain back and cut off what reached the
         * file (segment_prepare retries the cut before the next commit if this one fails). */
        log->chain = before;
        if (log->fd >= 0 && ftruncate(log->fd, (off_t)log->seg_size) == 0)
            (void)fdatasync(log->fd);
        c->wrote = false;
        c->rc = rc;
        c->err = e;
    } else {
        log->seg_size += log->out_len;
    }
    c->fd = log->fd;
    c->end_size = log->seg_size;
    c->end_chain = log->chain;
    /* Hand the turn on, then sync outside it. */
    pthread_mutex_lock(&log->mu);
    log->turn_taken = false;
    if (log->head != NULL)
        work_signal(log);
    pthread_mutex_unlock(&log->mu);
    if (c->wrote) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (fdatasync(c->fd) != 0) {
            c->rc = err_set(&c->err, INF_EIO, "fdatasync %s: %s", log->seg_path, strerror(errno));
            c->sync_failed = true;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        c->fsync_seconds =
            (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    }
    rc = c->rc;
    if (rc != INF_OK) {
        err_set(eout, rc, "%s", c->err.msg);
        log_msg(LOG_ERROR, "audit: %zu record(s) not written: %s", c->n, c->err.msg);
    }
    pthread_mutex_lock(&log->mu);
    c->done = true;
    acks_advance(log);
    while (!c->acked)
        pthread_cond_wait(&c->ack_cv, &log->mu);
    pthread_mutex_unlock(&log->mu);
    rc = c->rc; /* an earlier commit's failed fdatasync may have failed this one too */
    items_wake(c);
    return rc;
}

/* While unhealthy and idle: could a commit succeed? Writes nothing. */
static bool writable_probe(struct audit_log *log)
{
    struct stat fst, pst, dst;
    struct statvfs vfs;
    if (stat(log->dir, &dst) != 0 || !S_ISDIR(dst.st_mode) ||
        faccessat(AT_FDCWD, log->dir, W_OK | X_OK, AT_EACCESS) != 0)
        return false;
    if (log->fd >= 0 && fstat(log->fd, &fst) == 0 && stat(log->seg_path, &pst) == 0 &&
        pst.st_dev == fst.st_dev && pst.st_ino == fst.st_ino &&
        faccessat(AT_FDCWD, log->seg_path, W_OK, AT_EACCESS) != 0)
        return false;
    if (statvfs(log->dir, &vfs) != 0 || (vfs.f_flag & ST_RDONLY) != 0)
        return false;
    return geteuid() == 0 ? vfs.f_bfree > 0 : vfs.f_bavail > 0;
}

/* Now plus ns (< 1 s) on the monotonic clock, the clock of work_cv's timed waits. */
static struct timespec deadline_in(long ns)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += ns;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

/*
 * May a new commit start now? Always when none is in flight. Beside commits in flight only
 * once the newest has been in flight AUDIT_OVERLAP_NS: on a disk that syncs in less, commits
 * run one at a time and the records that arrive meanwhile leave together in the next one (fewer
 * fdatasyncs, less CPU); on a slower disk several syncs overlap, about one per AUDIT_OVERLAP_NS,
 * so a record waits about one flush. Otherwise *until gets the time to look again. Caller
 * holds mu.
 */
static bool may_start(const struct audit_log *log, struct timespec *until)
{
    if (log->active == 0 || log->stopping)
        return true;
    *until = log->last_start;
    until->tv_nsec += AUDIT_OVERLAP_NS;
    if (until->tv_nsec >= 1000000000L) {
        until->tv_sec++;
        until->tv_nsec -= 1000000000L;
    }
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec > until->tv_sec ||
           (now.tv_sec == until->tv_sec && now.tv_nsec >= until->tv_nsec);
}

static void *committer_main(void *arg)
{
    struct audit_committer *c = arg;
    struct audit_log *log = c->log;
    pthread_mutex_lock(&log->mu);
    for (;;) {
        struct timespec until;
        if (log->head != NULL && !log->turn_taken && !may_start(log, &until)) {
            if (log->timer_armed) {
                pthread_cond_wait(&log->work_cv, &log->mu);
            } else {
                log->timer_armed = true;
                (void)pthread_cond_timedwait(&log->work_cv, &log->mu, &until);
                log->timer_armed = false;
            }
            continue;
        }
        if (log->head != NULL && !log->turn_taken) {
            turn_take(log, c);
            pthread_mutex_unlock(&log->mu);
            (void)commit(log, c, NULL);
            pthread_mutex_lock(&log->mu);
            continue;
        }
        if (log->head == NULL && log->stopping)
            break; /* the queue is drained */
        if (c->index != 0 || log->healthy || log->head != NULL) {
            pthread_cond_wait(&log->work_cv, &log->mu);
            continue;
        }
        /* Committer 0, idle while the log is unhealthy: re-check now and then. */
        until = deadline_in(AUDIT_RETRY_NS);
        if (pthread_cond_timedwait(&log->work_cv, &log->mu, &until) != 0 && log->head == NULL &&
            !log->healthy && !log->turn_taken) {
            log->turn_taken = true; /* the probe reads the turn state */
            pthread_mutex_unlock(&log->mu);
            bool ok = writable_probe(log);
            pthread_mutex_lock(&log->mu);
            log->turn_taken = false;
            if (log->head != NULL)
                pthread_cond_signal(&log->work_cv);
            if (ok && !log->healthy) {
                log->healthy = true;
                log_msg(LOG_INFO, "audit: %s looks writable again", log->dir);
            }
        }
    }
    /* Wake the others: they may be waiting for work that will not come. */
    pthread_cond_broadcast(&log->work_cv);
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * Start-up recovery
 * ---------------------------------------------------------------------------------------- */

/*
 * Finds the last segment, checks it and sets the writer state to continue it. A torn tail is
 * cut off (*dropped: bytes cut). Leaves log->fd open on the last segment if it holds records,
 * else -1 with log->seg naming the segment to (re)start.
 */
static int recover(struct audit_log *log, uint64_t *dropped, struct err *e)
{
    int rc = INF_OK;
    unsigned *nums = NULL;
    size_t n = 0;
    char name[64], path[AUDIT_PATH_MAX];
    struct audit_scan sc;
    int fd = -1;
    *dropped = 0;
    if ((rc = audit_segments_list(log->dir, &nums, &n, e)) != INF_OK)
        goto out;
    memset(&log->chain, 0, sizeof log->chain);
    log->seg = 1;
    if (n == 0)
        goto out;
    log->seg = nums[n - 1];
    audit_segment_name(log->seg, name, sizeof name);
    if ((rc = fs_path_join(path, sizeof path, log->dir, name, e)) != INF_OK ||
        (rc = audit_segment_scan(log->hmac, path, log->seg, NULL, &sc, e)) != INF_OK)
        goto out;
    if (sc.bad && !sc.torn) {
        rc = err_set(e, INF_EINVAL,
                     "%s; refusing to write to a log that fails verification (run `infera audit "
                     "verify`)",
                     sc.why);
        goto out;
    }
    if (sc.bad) {
        *dropped = sc.file_bytes - sc.good_bytes;
        if (*dropped > 0) {
            log_msg(LOG_WARN, "audit: cutting a torn tail of %llu bytes off %s: %s",
                    (unsigned long long)*dropped, path, sc.why);
            fd = open(path, O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ftruncate(fd, (off_t)sc.good_bytes) != 0 || fsync(fd) != 0) {
                rc = err_set(e, INF_EIO, "cannot truncate %s: %s", path, strerror(errno));
                goto out;
            }
        }
    }
    if (sc.records > 0) {
        log->chain = sc.end;
        log->seg_size = sc.good_bytes;
        log->fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        memcpy(log->seg_path, path, sizeof path);
        if (log->fd < 0)
            rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    /* The last segment is empty (a crash while starting it): continue from the one before. */
    if (log->seg == 1)
        goto out;
    if (n < 2 || nums[n - 2] != log->seg - 1) {
        rc = err_set(e, INF_EINVAL, "audit segment %s is empty and segment %u is missing", name,
                     log->seg - 1);
        goto out;
    }
    audit_segment_name(log->seg - 1, name, sizeof name);
    if ((rc = fs_path_join(path, sizeof path, log->dir, name, e)) != INF_OK ||
        (rc = audit_segment_scan(log->hmac, path, log->seg - 1, NULL, &sc, e)) != INF_OK)
        goto out;
    if (sc.bad) {
        rc = err_set(e, INF_EINVAL, "%s; refusing to write to a log that fails verification",
                     sc.why);
        goto out;
    }
    log->chain = sc.end;
out:
    if (fd >= 0)
        close(fd);
    free(nums);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Public API
 * ---------------------------------------------------------------------------------------- */

int audit_open(const char *dir, const uint8_t key[AUDIT_KEY_BYTES], const struct audit_options *opt,
               struct audit_log **out, struct err *e)
{
    int rc = INF_OK;
    struct audit_log *log = NULL;
    pthread_condattr_t ca;
    uint64_t dropped = 0;
    json_t *tail_rec = NULL;
    struct audit_item item = {0}; /* the tail_truncated record, if any */
    pthread_mutex_init(&item.mu, NULL);
    pthread_cond_init(&item.cv, NULL);
    if (dir == NULL || key == NULL || out == NULL)
        return err_set(e, INF_EINVAL, "audit_open: missing argument");
    if (strlen(dir) + 32 >= AUDIT_PATH_MAX)
        return err_set(e, INF_ELIMIT, "audit directory path is too long");
    if ((log = calloc(1, sizeof *log)) == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    log->fd = -1;
    log->dir_lock_fd = -1;
    memcpy(log->dir, dir, strlen(dir) + 1);
    log->segment_bytes =
        opt != NULL && opt->segment_bytes ? opt->segment_bytes : AUDIT_DEFAULT_SEGMENT_BYTES;
    log->max_batch = opt != NULL && opt->max_batch ? opt->max_batch : AUDIT_DEFAULT_MAX_BATCH;
    log->in_flight =
        opt != NULL && opt->max_in_flight ? opt->max_in_flight : AUDIT_DEFAULT_IN_FLIGHT;
    if (log->in_flight > AUDIT_MAX_IN_FLIGHT)
        log->in_flight = AUDIT_MAX_IN_FLIGHT;
    pthread_mutex_init(&log->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&log->work_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&log->drain_cv, NULL);
    for (unsigned i = 0; i < log->in_flight; i++) {
        struct audit_committer *c = &log->committers[i];
        pthread_cond_init(&c->ack_cv, NULL);
        c->log = log;
        c->index = i;
        c->fd = -1;
        if ((c->batch = calloc(log->max_batch, sizeof *c->batch)) == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory");
            goto out;
        }
    }
    if ((rc = audit_hmac_new(key, &log->hmac, e)) != INF_OK ||
        (rc = fs_mkdir_p(dir, 0700, e)) != INF_OK)
        goto out;
    log->dir_lock_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (log->dir_lock_fd < 0) {
        rc = err_set(e, INF_EIO, "%s: %s", dir, strerror(errno));
        goto out;
    }
    if (flock(log->dir_lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = err_set(e, INF_EIO, "%s: %s", dir,
                     errno == EWOULDBLOCK ? "the audit log is open in another process"
                                          : strerror(errno));
        goto out;
    }
    if ((rc = recover(log, &dropped, e)) != INF_OK)
        goto out;
    /* Write what start-up owes the log (segment_start, tail_truncated) before serving. */
    struct audit_committer *c0 = &log->committers[0];
    c0->n = 0;
    if (dropped > 0) {
        tail_rec = record_new(NULL);
        if (tail_rec == NULL ||
            json_object_set_new(tail_rec, "event", json_string("audit.tail_truncated")) != 0 ||
            json_object_set_new(tail_rec, "segment", json_integer(log->seg)) != 0 ||
            json_object_set_new(tail_rec, "bytes_dropped", json_integer((json_int_t)dropped)) !=
                0) {
            rc = err_set(e, INF_ENOMEM, "out of memory");
            goto out;
        }
        if ((rc = audit_line_prepare(tail_rec, &item.line, e)) != INF_OK)
            goto out;
        log->head = log->tail = &item;
    }
    /* Single-threaded here: the same turn the committers take, with committer 0. */
    pthread_mutex_lock(&log->mu);
    turn_take(log, c0);
    pthread_mutex_unlock(&log->mu);
    rc = commit(log, c0, e);
    if (rc != INF_OK)
        goto out;
    if (c0->n > 0 && item.rc != INF_OK) {
        rc = err_set(e, item.rc, "%s", item.err.msg);
        goto out;
    }
    c0->n = 0;
    log->healthy = true;
    for (unsigned i = 0; i < log->in_flight; i++) {
        struct audit_committer *c = &log->committers[i];
        if (pthread_create(&c->thread, NULL, committer_main, c) != 0) {
            rc = err_set(e, INF_ENOMEM, "cannot start the audit committer threads");
            goto out;
        }
        c->started = true;
    }
    *out = log;
    log = NULL;
out:
    json_decref(tail_rec);
    pthread_cond_destroy(&item.cv);
    pthread_mutex_destroy(&item.mu);
    free(item.line.text);
    audit_close(log);
    return rc;
}

int audit_append(struct audit_log *log, const json_t *record, uint64_t *seq_out, struct err *e)
{
    if (log == NULL)
        return err_set(e, INF_EINVAL, "audit_append: no log");
    int rc = record_check(record, e);
    if (rc != INF_OK)
        return rc;
    struct audit_item item = {0};
    json_t *rec = record_new(record);
    if (rec == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    rc = audit_line_prepare(rec, &item.line, e);
    json_decref(rec);
    if (rc != INF_OK)
        return rc;
    pthread_mutex_init(&item.mu, NULL);
    pthread_cond_init(&item.cv, NULL);
    pthread_mutex_lock(&log->mu);
    bool closing = log->stopping;
    if (closing) {
        item.rc = err_set(&item.err, INF_EIO, "the audit log is closing");
    } else {
        if (log->tail != NULL)
            log->tail->next = &item;
        else
            log->head = &item;
        log->tail = &item;
        work_signal(log);
    }
    pthread_mutex_unlock(&log->mu);
    pthread_mutex_lock(&item.mu);
    while (!closing && !item.done)
        pthread_cond_wait(&item.cv, &item.mu);
    pthread_mutex_unlock(&item.mu);
    pthread_cond_destroy(&item.cv);
    pthread_mutex_destroy(&item.mu);
    free(item.line.text);
    if (item.rc != INF_OK)
        return err_set(e, item.rc, "%s", item.err.msg);
    if (seq_out != NULL)
        *seq_out = item.seq;
    return INF_OK;
}

bool audit_healthy(struct audit_log *log)
{
    if (log == NULL)
        return false;
    pthread_mutex_lock(&log->mu);
    bool ok = log->healthy;
    pthread_mutex_unlock(&log->mu);
    return ok;
}

void audit_stats_get(struct audit_log *log, struct audit_stats *out)
{
    if (log == NULL) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&log->mu);
    *out = log->stats;
    pthread_mutex_unlock(&log->mu);
}

void audit_close(struct audit_log *log)
{
    if (log == NULL)
        return;
    pthread_mutex_lock(&log->mu);
    log->stopping = true;
    pthread_cond_broadcast(&log->work_cv);
    pthread_mutex_unlock(&log->mu);
    for (unsigned i = 0; i < log->in_flight; i++)
        if (log->committers[i].started)
            pthread_join(log->committers[i].thread, NULL);
    if (log->fd >= 0)
        close(log->fd);
    if (log->dir_lock_fd >= 0)
        close(log->dir_lock_fd); /* releases the flock */
    audit_hmac_free(log->hmac);
    for (unsigned i = 0; i < log->in_flight; i++) {
        free(log->committers[i].batch);
        pthread_cond_destroy(&log->committers[i].ack_cv);
    }
    free(log->out);
    pthread_cond_destroy(&log->work_cv);
    pthread_cond_destroy(&log->drain_cv);
    pthread_mutex_destroy(&log->mu);
    free(log);
}
