/*
 * common/common.h - status codes, error buffers, logging and file helpers shared by
 * model/, auth/ and server/.
 *
 * Conventions (see STYLE.md):
 *   - A function that can fail returns 0 (INF_OK) or a negative enum inf_status value and,
 *     when given a non-NULL struct err *, writes a message meant for the user. The first
 *     error wins: later err_set() calls on an already-set err are ignored, so the innermost
 *     (most precise) message survives while callers unwind.
 *   - Outputs are written only on success.
 *
 * Thread safety: everything here is reentrant; the log sink is set once in main() before
 * threads start.
 */
#ifndef INFERA_COMMON_H
#define INFERA_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* ------------------------------------------------------------------------------------------
 * Status codes
 * ---------------------------------------------------------------------------------------- */

enum inf_status {
    INF_OK = 0,
    INF_EINVAL = -1,       /* input is malformed or inconsistent (the caller's fault) */
    INF_ENOMEM = -2,       /* an allocation failed */
    INF_EIO = -3,          /* a read, write, fsync or rename failed */
    INF_ENOTFOUND = -4,    /* a file or named object does not exist */
    INF_ELIMIT = -5,       /* input is well-formed but exceeds a configured limit */
    INF_ECANCELLED = -6,   /* a callback asked to stop */
    INF_EUNSUPPORTED = -7, /* valid in PyTorch, not (yet) supported by infera */
};

/* Returns a static, human-readable name for a status ("invalid input", ...). */
const char *inf_status_str(int status);

/* ------------------------------------------------------------------------------------------
 * Error buffer: first error wins
 * ---------------------------------------------------------------------------------------- */

#define ERR_MSG_MAX 512

struct err {
    int status;            /* 0 until set, then the status passed to err_set() */
    char msg[ERR_MSG_MAX]; /* NUL-terminated message for the user */
};

/* Clears e (NULL allowed). */
void err_clear(struct err *e);

/*
 * Records status and a printf-style message in e unless e is NULL or already set.
 * Returns status, so callers can write `return err_set(e, INF_EINVAL, "...")`.
 */
int err_set(struct err *e, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * Prefixes the message already in e with "prefix: " (printf-style), e.g. to add the file name
 * around an inner error. No-op if e is NULL or not set.
 */
void err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------------------------------
 * Logging through a sink set once at start-up
 * ---------------------------------------------------------------------------------------- */

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

typedef void (*log_sink_fn)(enum log_level level, const char *msg, void *user);

/*
 * Sets the process-wide sink (default: one line on stderr with a UTC timestamp) and the
 * minimum level. Not thread-safe: call once from main() before threads start.
 */
void log_set_sink(log_sink_fn sink, void *user, enum log_level min_level);

/* Writes the current UTC time as RFC 3339 with milliseconds ("2026-11-28T23:44:04.070Z",
 * 24 characters and a NUL) into out. */
void utc_timestamp(char out[32]);

/* Formats and writes one log line. Never logs request bodies or secrets: callers pass ids. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------------------------------
 * Checked arithmetic for sizes from outside
 * ---------------------------------------------------------------------------------------- */

/* *out = a * b; returns false (and leaves *out unchanged) on overflow. */
static inline bool size_mul_ok(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

/* *out = a + b; returns false (and leaves *out unchanged) on overflow. */
static inline bool size_add_ok(size_t a, size_t b, size_t *out)
{
    size_t r;
    if (__builtin_add_overflow(a, b, &r))
        return false;
    *out = r;
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Time
 * ---------------------------------------------------------------------------------------- */

/* ts in nanoseconds (fits int64 for 292 years from the clock's epoch). */
static inline int64_t timespec_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

/* CLOCK_MONOTONIC now, in nanoseconds. */
static inline int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return timespec_ns(&ts);
}

/* The value of a hexadecimal digit (0-9, a-f, A-F), or -1. */
static inline int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * Files
 * ---------------------------------------------------------------------------------------- */

/*
 * Reads the whole file at path into a new buffer (NUL-terminated for convenience; the NUL is
 * not counted in *len). Fails with INF_ELIMIT if the file is larger than max_bytes, with
 * INF_ENOTFOUND if it does not exist. On success the caller frees *data with free().
 */
int fs_read_file(const char *path, size_t max_bytes, char **data, size_t *len, struct err *e);

/*
 * Writes len bytes to path atomically: a temporary file in the same directory, fsync,
 * rename over path, fsync of the directory. A crash leaves either the old or the new file.
 * The file gets the given mode (e.g. 0644, or 0600 for secrets).
 */
int fs_write_atomic(const char *path, const void *data, size_t len, unsigned mode, struct err *e);

/* fsyncs directory dir, so that entries created or renamed in it are durable. */
int fs_fsync_dir(const char *dir, struct err *e);

/* fsyncs the directory that holds path ("." for a bare name). */
int fs_fsync_parent(const char *path, struct err *e);

/* Removes path and, if it is a directory, everything under it (symbolic links are removed, not
 * followed). Goes on past entries it cannot remove. Returns 0 if everything went, -1 if not
 * (a missing path is -1). */
int fs_remove_tree(const char *path);

/* Creates directory path and its missing parents with the given mode. Existing is fine. */
int fs_mkdir_p(const char *path, unsigned mode, struct err *e);

/*
 * Joins dir and name with one '/' into out (size cap bytes). Fails with INF_ELIMIT if the
 * result would not fit.
 */
int fs_path_join(char *out, size_t cap, const char *dir, const char *name, struct err *e);

#endif /* INFERA_COMMON_H */
