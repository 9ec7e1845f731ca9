/*
 * server/files.h - the file store behind /v1/files (OpenAI's files API): uploaded training
 * data and job result files, encrypted at rest. Internal to server/.
 *
 * On disk, under <data-dir>/files/:
 *   <id>        the content, sealed (auth/seal.h, purpose "file", object id = the file id)
 *   <id>.json   the metadata, written atomically (0600): {"id", "object": "file", "bytes",
 *               "created_at", "filename", "purpose", "status", "owner", "seq"} where owner is
 *               the key id that uploaded it ("" when auth is off) and seq a creation counter
 *               (ids are random, so files made in the same second are ordered by seq)
 * A file exists once its metadata exists; the content is written (and fsynced) first. Deleting
 * removes the metadata first, then the content: a crash leaves at most an orphan content file,
 * which file_store_open() removes. Names holding ".tmp." are temporaries of the writers (also
 * removed at open). A metadata file that does not parse is left alone and logged, not loaded.
 *
 * Ids are "file-" + 24 base62 characters from the OS CSPRNG.
 *
 * Ownership: every call takes the caller's key id (owner) and whether it is admin. A non-admin
 * caller sees only files it owns: another key's file answers INF_ENOTFOUND, exactly as a file
 * that does not exist.
 *
 * Threads: every function is thread-safe (one mutex over the in-memory index; file I/O happens
 * outside it).
 */
#ifndef INFERA_SERVER_FILES_H
#define INFERA_SERVER_FILES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "auth/auth.h"
#include "common/common.h"

#define FILE_ID_MAX   40
#define FILE_NAME_MAX 255 /* bytes of the client's filename kept (cut on a UTF-8 boundary) */
#define FILE_ID_LEN   29  /* "file-" + 24 base62 */

struct file_store;

/* A file's public facts (OpenAI's file object) plus its owner. */
struct file_info {
    char id[FILE_ID_MAX];
    char filename[FILE_NAME_MAX + 1];
    char purpose[32]; /* "fine-tune", "fine-tune-results" */
    char owner[KEY_ID_LEN + 1];
    uint64_t bytes;     /* plaintext size */
    int64_t created_at; /* unix seconds */
};

/* Validation limits of an uploaded training file; 0 means no limit. */
struct file_limits {
    size_t max_bytes;      /* whole file (413 above) */
    size_t max_lines;      /* examples (non-blank lines) */
    size_t max_line_bytes; /* one JSONL line, without its line end */
};

/* True if id has the shape of a file id ("file-" + 24 base62). Says nothing of existence. */
bool file_id_valid(const char *id);

/*
 * Opens (creating 0700 if missing) <data_dir>/files with the master key (borrowed; must outlive
 * the store) and loads the index. Removes orphans and temporaries. Returns a new store (caller
 * frees with file_store_free) or NULL with e set.
 */
struct file_store *file_store_open(const char *data_dir, const struct master_key *mk,
                                   struct err *e);
void file_store_free(struct file_store *fs);

/*
 * Checks that data[0..len) is a training file: JSONL (blank lines allowed, LF or CRLF line
 * ends), each line an object with "input" (an array of numbers, nested arrays of numbers, or a
 * string) and exactly one of "label" (string or integer) or "target" (number or array of
 * numbers), no other fields but "weight"/"id"/"metadata" (ignored); every line the same kind
 * (label or target); at least one example. Also consistent across lines, since one model
 * trains on the whole file: the input kind (text or tensor), the number of input values of a
 * tensor, the number of target values. Nested input arrays must be rectangular (depth <= 8);
 * a label integer must be >= 0.
 * Fails fast (at the first bad line) with INF_EINVAL and a message naming the line
 * ("line 17: ..."), or INF_ELIMIT for the limits. *n_examples (optional) gets the count.
 * A tensor line's "input" array is scanned without jansson (oip_fast_extract_member); lines
 * the fast path does not take, and every error, go through jansson (same verdicts, same
 * messages).
 */
int file_validate_training(const char *data, size_t len, const struct file_limits *lim,
                           size_t *n_examples, struct err *e);

/* file_validate_training with every line through jansson: the reference tests compare with. */
int file_validate_training_reference(const char *data, size_t len, const struct file_limits *lim,
                                     size_t *n_examples, struct err *e);

/*
 * Stores data[0..len) as a new file (sealed, fsynced, then its metadata atomically) and fills
 * *out. filename is the client's (any bytes; cut to FILE_NAME_MAX, made valid UTF-8); purpose
 * is stored as given (the caller validates it). Returns 0, INF_EIO, INF_ENOMEM.
 */
int file_store_put(struct file_store *fs, const char *filename, const char *purpose,
                   const char *owner, const void *data, size_t len, struct file_info *out,
                   struct err *e);

/* Copies the facts of file id into *out if the caller may see it; INF_ENOTFOUND otherwise
 * (also for an id that is not file-shaped). */
int file_store_get(struct file_store *fs, const char *id, const char *owner, bool admin,
                   struct file_info *out);

/*
 * Reads and decrypts file id's content into a new NUL-terminated buffer (caller frees *data;
 * the NUL is not counted in *len). INF_ENOTFOUND if absent or not visible to the caller;
 * INF_EINVAL if the content fails authentication (tampered, or another master key) or its size
 * differs from the metadata; INF_EIO, INF_ENOMEM. Nothing is returned unless all of it
 * authenticated.
 */
int file_store_read(struct file_store *fs, const char *id, const char *owner, bool admin,
                    char **data, size_t *len, struct err *e);

/*
 * Deletes file id (metadata, then content, then a directory fsync). INF_ENOTFOUND as above;
 * INF_EIO if the metadata cannot be removed (the file then stays, listed). A content file that
 * cannot be removed after its metadata is logged and left as an orphan for the next open.
 */
int file_store_delete(struct file_store *fs, const char *id, const char *owner, bool admin,
                      struct err *e);

/*
 * Lists the files the caller may see, newest first (order "desc", the default) or oldest first
 * ("asc"), by created_at then creation order; only purpose (NULL: any), starting after the file
 * with id after (NULL: from the start; the cursor may be a file of another purpose), at most
 * limit (1..10000). *out is a new array of *n entries (caller frees with free(); NULL when
 * *n == 0), *has_more tells whether more follow. INF_ENOTFOUND when after names no visible
 * file; INF_EINVAL for a limit out of range.
 */
int file_store_list(struct file_store *fs, const char *owner, bool admin, const char *purpose,
                    bool ascending, const char *after, size_t limit, struct file_info **out,
                    size_t *n, bool *has_more, struct err *e);

/* OpenAI's file object for info: {"id", "object": "file", "bytes", "created_at", "filename",
 * "purpose", "status": "processed", "status_details": null}. New reference. The owner is not
 * part of it. */
json_t *file_info_json(const struct file_info *info);

#endif /* INFERA_SERVER_FILES_H */
