/*
 * auth/audit.c - the audit log writer: validation, the group-commit thread, segments, and
 * crash recovery at start-up. The format, MAC and verification live in audit_verify.c.
 *
 * Appenders put an item on a FIFO queue and sleep. The writer thread takes up to max_batch
 * items, gives them seqs in queue order, serialises and MACs them into one buffer, and makes
 * that durable with one write() and one fdatasync() (a group commit); then it wakes the
 * appenders. Under load, records that arrive during an fdatasync leave together with the next
 * one, so records per fsync grows with the number of concurrent appenders.
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
#define AUDIT_KEY_LEN_MAX           64
#define AUDIT_RETRY_NS              500000000L /* background re-check while unhealthy */
#define AUDIT_GATHER_NS             250000L    /* at most 0.25 ms spent gathering a group commit */
#define AUDIT_PATH_MAX              4096

/* One record waiting for the writer. Lives on the appender's stack until done is set. */
struct audit_item {
    json_t *rec; /* owned working copy with "ts" set; the writer adds "seq" and "mac" */
    struct audit_item *next;
    bool done;         /* set by the writer under mu, after which it no longer touches the item */
    int rc;            /* outcome, valid once done */
    uint64_t seq;      /* the record's seq if rc == INF_OK */
    struct err err;    /* message if rc != INF_OK */
    pthread_cond_t cv; /* its appender waits here: a commit wakes only its own appenders */
};

struct audit_log {
    /* Set by audit_open, then read-only. */
    char dir[AUDIT_PATH_MAX];
    size_t segment_bytes;
    unsigned max_batch;
    size_t queued;     /* items on the queue (under mu) */
    size_t last_batch; /* records in the last commit: how many appenders run concurrently */
    int dir_lock_fd;   /* holds the flock() on dir */
    pthread_t thread;
    bool thread_started;

    /* Guarded by mu (a leaf lock: no I/O and no calls out while held). */
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* the writer waits for items or stopping */
    struct audit_item *head, *tail;
    bool stopping;
    bool healthy;
    struct audit_stats stats;

    /* Writer state: touched by audit_open before the thread starts, then only by the writer. */
    struct audit_hmac *hmac;
    struct audit_item **batch; /* max_batch slots */
    int fd;                    /* current segment (O_APPEND), -1 before the first one */
    unsigned seg;              /* its number */
    char seg_path[AUDIT_PATH_MAX];
    uint64_t seg_size;        /* bytes of durable records in it */
    struct audit_chain chain; /* seq and mac of the last record (durable between commits) */
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

/* A new working record with "ts" set, or NULL. */
static json_t *record_new(const json_t *src)
{
    char ts[32];
    json_t *rec = src != NULL ? json_deep_copy(src) : json_object();
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

static int out_append(struct audit_log *log, const char *s, size_t n, struct err *e)
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
    memcpy(log->out + log->out_len, s, n);
    log->out_len = need;
    return INF_OK;
}

/*
 * Gives rec the next seq, serialises it with the mac and adds the line to the commit buffer.
 * Advances log->chain only on success; rec is modified ("seq", "mac").
 */
static int line_add(struct audit_log *log, json_t *rec, uint64_t *seq_out, struct err *e)
{
    int rc = INF_OK;
    char zeros[AUDIT_MAC_HEX + 1], hex[AUDIT_MAC_HEX + 1];
    uint8_t mac[AUDIT_MAC_BYTES];
    uint64_t seq = log->chain.seq + 1;
    char *s = NULL;
    memset(zeros, '0', AUDIT_MAC_HEX);
    zeros[AUDIT_MAC_HEX] = '\0';
    if (json_object_set_new(rec, "seq", json_integer((json_int_t)seq)) != 0 ||
        json_object_set_new(rec, "mac", json_string(zeros)) != 0)
        return err_set(e, INF_ENOMEM, "out of memory");
    if ((s = json_dumps(rec, AUDIT_DUMP_FLAGS)) == NULL)
        return err_set(e, INF_EINVAL, "the audit record cannot be serialised (invalid UTF-8?)");
    size_t len = strlen(s);
    /* Keys are restricted and quotes in strings escaped, so this finds the mac member. */
    char *m = strstr(s, "\"mac\":\"");
    if (len + 1 > AUDIT_LINE_MAX) {
        rc = err_set(e, INF_ELIMIT, "the audit record is longer than %d bytes", AUDIT_LINE_MAX);
        goto out;
    }
    if (m == NULL) {
        rc = err_set(e, INF_EINVAL, "the audit record has no mac member");
        goto out;
    }
    if ((rc = audit_hmac_line(log->hmac, log->chain.mac, s, len, mac, e)) != INF_OK)
        goto out;
    audit_hex(mac, sizeof mac, hex);
    memcpy(m + 7, hex, AUDIT_MAC_HEX);
    if ((rc = out_append(log, s, len, e)) != INF_OK || (rc = out_append(log, "\n", 1, e)) != 0)
        goto out;
    log->chain.seq = seq;
    memcpy(log->chain.mac, mac, sizeof mac);
    *seq_out = seq;
out:
    free(s);
    return rc;
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
static int segment_prepare(struct audit_log *log, struct err *e)
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
        int rc = segment_begin(log, moved ? log->seg + 1 : log->seg, e);
        if (rc == INF_OK && moved)
            log_msg(LOG_WARN, "audit: %s no longer names the open segment; continuing in %s", was,
                    log->seg_path);
        return rc;
    }
    if (log->seg_size >= log->segment_bytes)
        return segment_begin(log, log->seg + 1, e);
    return INF_OK;
}

static int write_all(struct audit_log *log, double *fsync_seconds, struct err *e)
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
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (fdatasync(log->fd) != 0)
        return err_set(e, INF_EIO, "fdatasync %s: %s", log->seg_path, strerror(errno));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *fsync_seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return INF_OK;
}

/* The segment_start record of the current (empty) segment, as the first line of the commit. */
static int add_segment_start(struct audit_log *log, struct err *e)
{
    char hex[AUDIT_MAC_HEX + 1];
    uint64_t seq;
    audit_hex(log->chain.mac, sizeof log->chain.mac, hex);
    json_t *rec = record_new(NULL);
    int rc = INF_OK;
    if (rec == NULL || json_object_set_new(rec, "event", json_string("audit.segment_start")) != 0 ||
        json_object_set_new(rec, "segment", json_integer(log->seg)) != 0 ||
        json_object_set_new(rec, "prev_seq", json_integer((json_int_t)log->chain.seq)) != 0 ||
        json_object_set_new(rec, "prev_mac", json_string(hex)) != 0)
        rc = err_set(e, INF_ENOMEM, "out of memory");
    else
        rc = line_add(log, rec, &seq, e);
    json_decref(rec);
    return rc;
}

/*
 * One group commit of items[0..n) (n may be 0: then only a pending segment_start is written).
 * Sets every item's outcome and wakes the appenders. Returns the commit's status; eout
 * (optional) gets its message.
 */
static int commit(struct audit_log *log, struct audit_item **items, size_t n, struct err *eout)
{
    struct err e = {0};
    struct audit_chain durable = log->chain;
    uint64_t records = 0;
    double fsync_seconds = 0;
    bool wrote = false;
    for (size_t i = 0; i < n; i++) {
        items[i]->rc = INF_OK;
        err_clear(&items[i]->err);
    }
    log->out_len = 0;
    int rc = segment_prepare(log, &e);
    if (rc == INF_OK && log->seg_size == 0 && (rc = add_segment_start(log, &e)) == INF_OK)
        records++;
    /* A record that cannot be serialised fails alone; the others still go. */
    for (size_t i = 0; i < n && rc == INF_OK; i++) {
        items[i]->rc = line_add(log, items[i]->rec, &items[i]->seq, &items[i]->err);
        if (items[i]->rc == INF_OK)
            records++;
    }
    if (rc == INF_OK && log->out_len > 0) {
        wrote = true;
        rc = write_all(log, &fsync_seconds, &e);
    }
    if (rc != INF_OK) {
        /* Nothing of this commit counts: roll the chain back and cut off what reached the
         * file (segment_prepare retries the cut before the next commit if this one fails). */
        log->chain = durable;
        if (log->fd >= 0 && ftruncate(log->fd, (off_t)log->seg_size) == 0)
            (void)fdatasync(log->fd);
        for (size_t i = 0; i < n; i++) {
            if (items[i]->err.status == 0) {
                items[i]->rc = rc;
                items[i]->err = e;
            }
        }
        err_set(eout, rc, "%s", e.msg);
        log_msg(LOG_ERROR, "audit: %zu record(s) not written: %s", n, e.msg);
    } else {
        log->seg_size += log->out_len;
    }
    pthread_mutex_lock(&log->mu);
    if (rc == INF_OK) {
        log->stats.records += records;
        log->stats.fsyncs += wrote ? 1 : 0;
        log->stats.fsync_seconds_total += fsync_seconds;
        log->stats.last_seq = log->chain.seq;
    } else {
        log->stats.failures++;
    }
    log->healthy = rc == INF_OK;
    for (size_t i = 0; i < n; i++) {
        items[i]->done = true;
        pthread_cond_signal(&items[i]->cv);
    }
    pthread_mutex_unlock(&log->mu);
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

static void *writer_main(void *arg)
{
    struct audit_log *log = arg;
    pthread_mutex_lock(&log->mu);
    for (;;) {
        while (log->head == NULL && !log->stopping) {
            if (log->healthy) {
                pthread_cond_wait(&log->work_cv, &log->mu);
                continue;
            }
            struct timespec until = deadline_in(AUDIT_RETRY_NS);
            if (pthread_cond_timedwait(&log->work_cv, &log->mu, &until) != 0 && log->head == NULL &&
                !log->healthy) {
                pthread_mutex_unlock(&log->mu);
                bool ok = writable_probe(log);
                pthread_mutex_lock(&log->mu);
                if (ok && !log->healthy) {
                    log->healthy = true;
                    log_msg(LOG_INFO, "audit: %s looks writable again", log->dir);
                }
            }
        }
        if (log->head == NULL)
            break; /* stopping, and the queue is drained */
        /* Group commit that gathers: when the last commit carried several records, appenders
         * run concurrently, and the ones that were waiting on that commit are about to come
         * back with their next record. Waiting a little for them (at most AUDIT_GATHER_NS,
         * never when a lone client is served) turns several fdatasyncs into one. */
        /* The target grows by one each commit while records keep arriving in time, so the
         * batch settles near the number of concurrent appenders. */
        size_t target = log->last_batch + 1;
        if (log->last_batch > 1 && log->queued < target && !log->stopping) {
            struct timespec until = deadline_in(AUDIT_GATHER_NS);
            while (log->queued < target && !log->stopping &&
                   pthread_cond_timedwait(&log->work_cv, &log->mu, &until) == 0)
                ;
        }
        size_t n = 0;
        while (log->head != NULL && n < log->max_batch) {
            log->batch[n++] = log->head;
            log->head = log->head->next;
        }
        log->queued -= n;
        log->last_batch = n;
        if (log->head == NULL)
            log->tail = NULL;
        pthread_mutex_unlock(&log->mu);
        (void)commit(log, log->batch, n, NULL);
        pthread_mutex_lock(&log->mu);
    }
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
    pthread_mutex_init(&log->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&log->work_cv, &ca);
    pthread_condattr_destroy(&ca);
    if ((log->batch = calloc(log->max_batch, sizeof *log->batch)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
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
    struct audit_item item = {0};
    struct audit_item *items[1] = {&item};
    size_t nitems = 0;
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
        item.rec = tail_rec;
        nitems = 1;
    }
    if ((rc = commit(log, items, nitems, e)) != INF_OK)
        goto out;
    if (nitems > 0 && item.rc != INF_OK) {
        rc = err_set(e, item.rc, "%s", item.err.msg);
        goto out;
    }
    log->healthy = true;
    if (pthread_create(&log->thread, NULL, writer_main, log) != 0) {
        rc = err_set(e, INF_ENOMEM, "cannot start the audit writer thread");
        goto out;
    }
    log->thread_started = true;
    *out = log;
    log = NULL;
out:
    json_decref(tail_rec);
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
    struct audit_item item = {.rec = record_new(record)};
    if (item.rec == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    pthread_cond_init(&item.cv, NULL);
    pthread_mutex_lock(&log->mu);
    if (log->stopping) {
        item.done = true;
        item.rc = err_set(&item.err, INF_EIO, "the audit log is closing");
    } else {
        if (log->tail != NULL)
            log->tail->next = &item;
        else
            log->head = &item;
        log->tail = &item;
        log->queued++;
        pthread_cond_signal(&log->work_cv);
    }
    while (!item.done)
        pthread_cond_wait(&item.cv, &log->mu);
    pthread_mutex_unlock(&log->mu);
    pthread_cond_destroy(&item.cv);
    json_decref(item.rec);
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
    if (log->thread_started) {
        pthread_mutex_lock(&log->mu);
        log->stopping = true;
        pthread_cond_signal(&log->work_cv);
        pthread_mutex_unlock(&log->mu);
        pthread_join(log->thread, NULL);
    }
    if (log->fd >= 0)
        close(log->fd);
    if (log->dir_lock_fd >= 0)
        close(log->dir_lock_fd); /* releases the flock */
    audit_hmac_free(log->hmac);
    free(log->batch);
    free(log->out);
    pthread_cond_destroy(&log->work_cv);
    pthread_mutex_destroy(&log->mu);
    free(log);
}
