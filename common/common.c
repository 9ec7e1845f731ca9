/*
 * common/common.c - status names, error buffers, logging, checked file I/O.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------
 * Status and errors
 * ---------------------------------------------------------------------------------------- */

const char *inf_status_str(int status)
{
    switch (status) {
        case INF_OK:
            return "ok";
        case INF_EINVAL:
            return "invalid input";
        case INF_ENOMEM:
            return "out of memory";
        case INF_EIO:
            return "I/O error";
        case INF_ENOTFOUND:
            return "not found";
        case INF_ELIMIT:
            return "limit exceeded";
        case INF_ECANCELLED:
            return "cancelled";
        case INF_EUNSUPPORTED:
            return "unsupported";
        default:
            return "unknown error";
    }
}

void err_clear(struct err *e)
{
    if (e == NULL)
        return;
    e->status = 0;
    e->msg[0] = '\0';
}

int err_set(struct err *e, int status, const char *fmt, ...)
{
    if (e == NULL || e->status != 0)
        return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    e->status = status;
    return status;
}

void err_prefix(struct err *e, const char *fmt, ...)
{
    if (e == NULL || e->status == 0)
        return;
    char joined[2 * ERR_MSG_MAX + 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(joined, ERR_MSG_MAX, fmt, ap);
    va_end(ap);
    size_t used = n < 0 ? 0 : ((size_t)n < ERR_MSG_MAX ? (size_t)n : ERR_MSG_MAX - 1);
    memcpy(joined + used, ": ", 2);
    memcpy(joined + used + 2, e->msg, ERR_MSG_MAX);
    joined[sizeof joined - 1] = '\0';
    /* Truncate to the buffer: the prefix and the start of the inner message matter most. */
    memcpy(e->msg, joined, ERR_MSG_MAX - 1);
    e->msg[ERR_MSG_MAX - 1] = '\0';
}

/* ------------------------------------------------------------------------------------------
 * Logging. The sink is written once in main() before threads start (STYLE: one-time setup),
 * so reads from worker threads need no lock.
 * ---------------------------------------------------------------------------------------- */

static void log_default_sink(enum log_level level, const char *msg, void *user);

static struct {
    log_sink_fn sink;
    void *user;
    enum log_level min_level;
} log_config = {log_default_sink, NULL, LOG_INFO};

static const char *log_level_name(enum log_level level)
{
    switch (level) {
        case LOG_DEBUG:
            return "debug";
        case LOG_INFO:
            return "info";
        case LOG_WARN:
            return "warn";
        default:
            return "error";
    }
}

void utc_timestamp(char out[32])
{
    struct timespec ts;
    struct tm tm;
    char when[24];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%.20s.%03uZ", when, (unsigned)(ts.tv_nsec / 1000000L) % 1000u);
}

static void log_default_sink(enum log_level level, const char *msg, void *user)
{
    (void)user;
    char when[32];
    utc_timestamp(when);
    /* One fprintf per line keeps lines from different threads whole (stdio locks the FILE). */
    fprintf(stderr, "%s %s %s\n", when, log_level_name(level), msg);
}

void log_set_sink(log_sink_fn sink, void *user, enum log_level min_level)
{
    log_config.sink = sink != NULL ? sink : log_default_sink;
    log_config.user = user;
    log_config.min_level = min_level;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level < log_config.min_level)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_config.sink(level, line, log_config.user);
}

/* ------------------------------------------------------------------------------------------
 * Files
 * ---------------------------------------------------------------------------------------- */

int fs_read_file(const char *path, size_t max_bytes, char **data, size_t *len, struct err *e)
{
    int rc = INF_OK;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return err_set(e, INF_ENOTFOUND, "%s: no such file", path);
        return err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = err_set(e, INF_EINVAL, "%s: not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > (uint64_t)max_bytes) {
        rc = err_set(e, INF_ELIMIT, "%s: file is %lld bytes, the limit is %zu", path,
                     (long long)st.st_size, max_bytes);
        goto out;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (buf == NULL) {
        rc = err_set(e, INF_ENOMEM, "%s: out of memory reading %zu bytes", path, size);
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = err_set(e, INF_EIO, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break; /* the file shrank while we read: use what is there */
        got += (size_t)n;
    }
    buf[got] = '\0';
    *data = buf;
    *len = got;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

int fs_fsync_dir(const char *dir, struct err *e)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return err_set(e, INF_EIO, "%s: %s", dir, strerror(errno));
    int rc = INF_OK;
    if (fsync(fd) != 0)
        rc = err_set(e, INF_EIO, "fsync %s: %s", dir, strerror(errno));
    close(fd);
    return rc;
}

int fs_fsync_parent(const char *path, struct err *e)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof dir, ".");
    } else if (slash == path) {
        snprintf(dir, sizeof dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir)
            return err_set(e, INF_ELIMIT, "path too long: %s", path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    return fs_fsync_dir(dir, e);
}

int fs_write_atomic(const char *path, const void *data, size_t len, unsigned mode, struct err *e)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return err_set(e, INF_ELIMIT, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return err_set(e, INF_EIO, "%s: %s", tmp, strerror(errno));
    int rc = INF_OK;
    const char *p = data;
    size_t left = len;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = err_set(e, INF_EIO, "write %s: %s", tmp, strerror(errno));
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (rc == INF_OK && fsync(fd) != 0)
        rc = err_set(e, INF_EIO, "fsync %s: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == INF_OK)
        rc = err_set(e, INF_EIO, "close %s: %s", tmp, strerror(errno));
    if (rc == INF_OK && rename(tmp, path) != 0)
        rc = err_set(e, INF_EIO, "rename %s: %s", path, strerror(errno));
    if (rc != INF_OK) {
        unlink(tmp);
        return rc;
    }
    return fs_fsync_parent(path, e);
}

static _Thread_local int remove_tree_failed;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0)
        remove_tree_failed = 1;
    return 0;
}

int fs_remove_tree(const char *path)
{
    remove_tree_failed = 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return -1;
    return remove_tree_failed ? -1 : 0;
}

int fs_mkdir_p(const char *path, unsigned mode, struct err *e)
{
    char buf[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf)
        return err_set(e, INF_EINVAL, "bad directory path");
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, (mode_t)mode) != 0 && errno != EEXIST)
            return err_set(e, INF_EIO, "mkdir %s: %s", buf, strerror(errno));
        buf[i] = saved;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(e, INF_EIO, "%s: not a directory", path);
    return INF_OK;
}

int fs_path_join(char *out, size_t cap, const char *dir, const char *name, struct err *e)
{
    size_t dl = strlen(dir);
    bool slash = dl > 0 && dir[dl - 1] == '/';
    int n = snprintf(out, cap, "%s%s%s", dir, slash ? "" : "/", name);
    if (n < 0 || (size_t)n >= cap)
        return err_set(e, INF_ELIMIT, "path too long: %s/%s", dir, name);
    return INF_OK;
}
