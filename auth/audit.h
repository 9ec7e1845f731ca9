/*
 * auth/audit.h - the tamper-evident, durable audit log.
 *
 * One JSON line per event (a protected request, a denied request, a key, model, file or job
 * event), chained with HMAC-SHA256 so that any edit, insertion, deletion or reordering is
 * found by audit_verify, and group-committed with fdatasync so that a record is on disk
 * before audit_append returns.
 *
 * Files. dir holds segments audit-000001.jsonl, audit-000002.jsonl, ... (mode 0600, the
 * directory 0700 when created here; the number has at least six digits). A segment is closed
 * once it has reached segment_bytes; it can exceed that by at most one group commit. Creating
 * a segment fsyncs the directory. Nothing else in dir is read or written. While open, the log
 * holds an flock() on dir, so a second audit_open of the same dir (any process) fails.
 *
 * Line format. Every line is one flat JSON object, serialised with
 *     json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)
 * and followed by one '\n'. With jansson 2.14 that means: keys sorted bytewise, no spaces,
 * every non-ASCII character as \uXXXX (uppercase hex; beyond U+FFFF as a surrogate pair),
 * control characters escaped, reals with 17 significant digits (0.1 is 0.10000000000000001).
 * A line is canonical when parsing it and dumping it again with those flags gives back the
 * same bytes; every line must be canonical (and is pure ASCII, so no Unicode normalisation
 * question arises). Members set by the log:
 *
 *     "ts"   string  UTC time of the audit_append call, "2024-05-01T12:34:56.789Z"
 *     "seq"  integer 1, 2, 3, ... in log order, across segments, no gaps
 *     "mac"  string  64 lowercase hex digits, see below
 *
 * plus the caller's members. Keys are 1-64 characters of [A-Za-z0-9_.-]; values are strings
 * (no NUL), integers, reals, true, false or null. Because keys are restricted and '"' inside a
 * string is always escaped, the bytes "mac":" occur exactly once in a line: at the mac member.
 * Lines are at most AUDIT_LINE_MAX bytes including the newline.
 *
 * MAC chain. For line i (without its '\n'), let Z_i be the line with the 64 hex digits of its
 * mac value replaced by 64 '0' characters (equivalently: the canonical dump of the record with
 * "mac" set to 64 zeros). Then
 *     mac_i = HMAC-SHA256(K_audit, mac_{i-1} || Z_i)      (mac_{i-1}: 32 raw bytes)
 * with mac_0 = 32 zero bytes for the first record of segment 1. The chain runs on across
 * segments: the first record of segment n chains from the last mac of segment n-1. K_audit is
 * the key passed to audit_open (the server derives it from the master key).
 *
 * Records written by the log itself ("event" values starting with "audit." are reserved):
 *   - Every segment starts with
 *       {"event":"audit.segment_start","segment":n,"prev_seq":S,"prev_mac":"<hex>",...}
 *     where S and prev_mac are the seq and mac of the last record before it (0 and 64 zeros
 *     for segment 1). So a removed, renamed, reordered or concatenated segment is found, and
 *     the last segment can be checked on its own at start-up.
 *   - After a crash, audit_open truncates a torn tail and then writes
 *       {"event":"audit.tail_truncated","segment":n,"bytes_dropped":B,...}
 *
 * Torn tail versus tampering. Only the last line of the last segment can be torn: it has no
 * trailing '\n', or it has one but is not parsable JSON (or the last segment is empty). A
 * complete, parsable line that fails any other check (MAC, seq, canonical form) is tampering:
 * audit_open refuses to open such a log (INF_EINVAL naming the line) instead of truncating it,
 * and an operator must investigate with audit_verify. audit_open checks only the last segment
 * (from its segment_start); audit_verify checks everything. A crash during audit_open itself,
 * after the cut and before the tail_truncated record is durable, loses that note (the cut
 * bytes were never acknowledged to anyone either way).
 *
 * Failures. Before each group commit the committer checks that the segment path still names the
 * open file (stat(path) against fstat(fd): same device and inode), that the directory and the
 * segment are writable for the effective user, and that the file has exactly the size of the
 * records written. If a write or a check fails, every record of that commit gets INF_EIO, the
 * partial write is truncated away, the chain state returns to the record before, and the log
 * is unhealthy. If an fdatasync fails, that commit and every later one in flight fail the same
 * way, and the next commit cuts the file back to the last acknowledged record. (The permission
 * checks use faccessat with AT_EACCESS, which root passes; the inode check is what catches a moved
 * directory for root.) The server answers 503 on protected routes and reports not-ready while
 * audit_healthy() is false. Every audit_append still tries (so service resumes with the first
 * commit that succeeds) and, while idle, a committer re-checks every 500 ms without writing records
 * (directory exists and is writable, file system not read-only and not full) and turns healthy when
 * those pass; the next real write decides.
 *
 * If the segment path no longer names the open file (the directory was moved away, replaced,
 * or the segment removed), the log does not write to the old file; it starts segment n+1 at
 * the path, chained from the last durable record. If the directory is missing or not a
 * directory that fails (INF_EIO) and is retried on every commit. When the original directory is
 * put back, the path names the open file again and the log simply continues in it. When a new,
 * empty directory is put there instead, the log continues in it with segment n+1: audit_verify
 * of the new directory alone then reports "missing first segment" (segments 1..n are in the
 * moved directory); verifying a directory holding the old segments plus the new ones passes.
 *
 * Limits of what verify can prove: removing records or whole segments at the END of the log is
 * not detectable from the log alone (compare the last seq with audit_stats / the server's
 * metrics or an external copy); everything before the last record is covered.
 *
 * Threads. audit_append may be called from any number of threads at once; audit_healthy and
 * audit_stats_get from any thread. audit_open and audit_close must not race with other calls
 * on the same log. Each open log has max_in_flight committer threads that do all file I/O:
 * they take turns to serialise and write a group commit, and each syncs its own commit outside
 * the turn. A commit starts beside others in flight only once the newest has been in flight
 * 1 ms, so on a fast disk commits go one at a time (and group what arrives meanwhile), and on a
 * slow one up to max_in_flight fdatasyncs run at once (a record waits about one flush, not the
 * rest of the current one plus its own). Commits are acknowledged in the order they were
 * written; a failed fdatasync fails its commit and every later one in flight, and the log then
 * continues from the last acknowledged record (see Failures).
 *
 * Locks. The log has one mutex (queue, health, stats); it is a leaf: never held while calling
 * out of this module or while doing I/O. audit_append blocks for a disk flush (milliseconds):
 * callers should not hold locks other threads need meanwhile.
 */
#ifndef INFERA_AUTH_AUDIT_H
#define INFERA_AUTH_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

#define AUDIT_KEY_BYTES 32
#define AUDIT_LINE_MAX  65536 /* bytes per line, newline included */

struct audit_options {
    size_t segment_bytes;   /* close a segment once it holds this many bytes; 0: 64 MiB */
    unsigned max_batch;     /* records per group commit at most; 0: 1024 */
    unsigned max_in_flight; /* group commits in their fdatasync at once; 0: 16, at most 64 */
};

struct audit_log;

/*
 * Opens the audit log in dir (created 0700 if missing; parents too), verifies the chain of its
 * last segment, truncates a torn tail (ftruncate + fsync, then an "audit.tail_truncated"
 * record), writes the segment_start of a new or empty segment, and starts the committer threads.
 * key (K_audit) is copied. opt may be NULL for defaults.
 * Returns INF_OK and *out (caller closes with audit_close); INF_EINVAL if the last segment
 * fails verification other than a torn tail (e->msg names file, line, seq and the problem);
 * INF_EIO if dir cannot be created, read, locked or written; INF_ENOMEM.
 */
int audit_open(const char *dir, const uint8_t key[AUDIT_KEY_BYTES], const struct audit_options *opt,
               struct audit_log **out, struct err *e);

/*
 * Appends one record and blocks until it is durable (written and fdatasync'd).
 * record: a flat JSON object, borrowed for the call and not modified (the log works on a deep
 * copy). Keys as described above; the keys "ts", "seq" and "mac", and "event" values starting
 * with "audit.", are refused.
 * Returns INF_OK when durable, and *seq_out (optional) gets the record's seq.
 * INF_EIO: the log cannot be written now; the record is NOT in the log (e->msg says why).
 * INF_EINVAL: a bad record (nested value, reserved or malformed key, NUL in a string, invalid
 * UTF-8). INF_ELIMIT: the line would exceed AUDIT_LINE_MAX. INF_ENOMEM.
 * Must not be called after (or concurrently with) audit_close.
 */
int audit_append(struct audit_log *log, const json_t *record, uint64_t *seq_out, struct err *e);

/* True while the last write attempt or background check succeeded (see Failures above).
 * NULL: false. */
bool audit_healthy(struct audit_log *log);

struct audit_stats {
    uint64_t records;           /* records made durable, log-internal ones included */
    uint64_t fsyncs;            /* successful fdatasync calls on segments */
    uint64_t failures;          /* group commits that failed (each failing all its records) */
    double fsync_seconds_total; /* time spent in fdatasync, summed over concurrent calls */
    uint64_t last_seq;          /* seq of the last durable record (0: none yet) */
};

/* Copies the counters (a consistent snapshot) into *out; all zero for a NULL log. */
void audit_stats_get(struct audit_log *log, struct audit_stats *out);

/* Makes every queued record durable (or fails it), stops the committers, closes files, wipes the
 * key. NULL is a no-op. */
void audit_close(struct audit_log *log);

struct audit_verify_report {
    size_t segments;     /* segment files checked (all of them when the log verifies) */
    uint64_t records;    /* records that verified */
    uint64_t last_seq;   /* seq of the last record that verified */
    char first_bad[512]; /* "" or the same text as e->msg on INF_EINVAL */
};

/*
 * Checks every segment in dir offline: file numbering from 1 without gaps, each segment's
 * segment_start against the previous segment, each line complete, parsable, canonical, with
 * seq one more than the line before and a correct mac. Needs no writer (may run while a log
 * is open: records being written may then show as a torn tail).
 * Returns INF_OK if the whole log verifies; INF_EINVAL for the first bad record, with e->msg
 * like "audit-000002.jsonl line 17 (seq 4113): bad mac: the record was edited or forged";
 * INF_ENOTFOUND if dir does not exist; INF_EIO, INF_ENOMEM. report (optional) is filled in
 * every case (counts up to the first bad record).
 */
int audit_verify(const char *dir, const uint8_t key[AUDIT_KEY_BYTES],
                 struct audit_verify_report *report, struct err *e);

#endif /* INFERA_AUTH_AUDIT_H */
