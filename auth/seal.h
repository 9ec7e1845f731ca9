/*
 * auth/seal.h - encryption at rest: AES-256-GCM with a per-object key, chunked so that large
 * files stream in bounded memory and truncation, reordering and splicing are detected.
 * Used for uploaded training files and checkpoints.
 *
 * Sealed format, version 1 (all integers big-endian):
 *
 *   header  magic     8 bytes  "IFRSEAL\0"
 *           version   u8       1
 *           purpose   u8 len (1..255) + bytes, no '/'     e.g. "file", "checkpoint"
 *           object id u8 len (1..255) + bytes             e.g. "file-abc123"
 *           salt      16 random bytes
 *           nonce     12 random bytes (base nonce)
 *           chunk     u32 plaintext chunk size (the writer uses SEAL_CHUNK_SIZE; readers accept
 *                     1..SEAL_CHUNK_MAX)
 *   chunks  chunk i = AES-256-GCM ciphertext || 16-byte tag, where
 *             key   = HKDF-SHA256(ikm = master key, salt, info = "infera/v1/seal/" purpose "/" id)
 *                     (one key per sealed object: the random salt makes every seal distinct)
 *             nonce = base nonce with its last 8 bytes XORed with u64 i
 *             AAD   = the whole header || u64 i || u8 final (1 for the last chunk, else 0)
 *           Every chunk but the last holds exactly `chunk` plaintext bytes; the last holds
 *           0..chunk bytes (0 only when the whole plaintext is empty). There is always a last
 *           chunk. Nothing follows it.
 *
 * What that buys: a flipped bit anywhere fails a tag (the header is in every chunk's AAD);
 * dropping, reordering or duplicating chunks changes their index; cutting the file at a chunk
 * boundary leaves a last chunk that was sealed with final = 0; appending bytes turns the real
 * last chunk into a non-final one; a wrong master key, purpose or object id gives a different
 * key. Each is an error (INF_EINVAL, "<what>: authentication failed (wrong key or tampered
 * data)..."), and no plaintext reaches the caller from a chunk that failed.
 * Sealed size = header + plaintext + 16 * max(1, ceil(plaintext / chunk)).
 *
 * A streaming reader hands out each chunk only after its tag checks, but it learns that the
 * stream is complete only at the end: a caller that acts on data as it reads must treat a later
 * error as "the whole object is bad" (undo what it did). seal_file_read() and seal_decrypt()
 * are all-or-nothing.
 *
 * Names: purpose is one of a small fixed set chosen by the code (it must not contain '/', so
 * the HKDF info is unambiguous); object_id names the object (the file or job id). Both are
 * 1..255 bytes. Opening an object needs the same pair it was sealed with.
 *
 * Thread safety: the functions are reentrant; one writer or reader is used by one thread at a
 * time. The master key is borrowed only during the call that takes it (writers and readers
 * keep their own derived key, wiped by _free).
 */
#ifndef INFERA_AUTH_SEAL_H
#define INFERA_AUTH_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "auth/master.h"
#include "common/common.h"

#define SEAL_VERSION    1
#define SEAL_CHUNK_SIZE 65536u   /* plaintext bytes per chunk written */
#define SEAL_CHUNK_MAX  1048576u /* the largest chunk size a reader accepts */
#define SEAL_TAG_BYTES  16
#define SEAL_NAME_MAX   255 /* purpose and object id length */

/* ------------------------------------------------------------------------------------------
 * Buffers
 * ---------------------------------------------------------------------------------------- */

/*
 * Seals len bytes of plain (NULL allowed when len == 0) into a new buffer. On success the
 * caller frees *out with free(); *out_len is its size. INF_EINVAL for bad names, INF_ELIMIT if
 * the sealed size would overflow, INF_ENOMEM, INF_EIO if OpenSSL or the random generator fail.
 */
int seal_encrypt(const struct master_key *mk, const char *purpose, const char *object_id,
                 const void *plain, size_t len, uint8_t **out, size_t *out_len, struct err *e);

/*
 * Opens len bytes of sealed data. On success the caller frees *out with free() (never NULL;
 * one NUL byte follows the *out_len plaintext bytes for convenience). Any authentication
 * failure is INF_EINVAL and nothing is returned.
 */
int seal_decrypt(const struct master_key *mk, const char *purpose, const char *object_id,
                 const void *sealed, size_t len, uint8_t **out, size_t *out_len, struct err *e);

/* ------------------------------------------------------------------------------------------
 * Streaming writer: the file appears at path atomically on commit
 * ---------------------------------------------------------------------------------------- */

struct seal_writer;

/*
 * Starts sealing into a temporary file "<path>.tmp.XXXXXX" in path's directory (directory
 * listings should skip names containing ".tmp."), created with exactly the given mode (e.g.
 * 0600). Returns a new writer (free with seal_writer_free) or NULL with e set. path is copied.
 * Memory: two chunk buffers (~128 KiB).
 */
struct seal_writer *seal_writer_new(const char *path, const struct master_key *mk,
                                    const char *purpose, const char *object_id, unsigned mode,
                                    struct err *e);

/* Appends len bytes (data may be NULL when len == 0). After any error the writer is failed:
 * later writes and the commit fail too, and free removes the temporary file. */
int seal_writer_write(struct seal_writer *w, const void *data, size_t len, struct err *e);

/* Writes the last chunk, fsyncs, renames the temporary file over path and fsyncs the
 * directory. A crash leaves either the old file at path or the new one. Call once. If only the
 * directory fsync fails (INF_EIO), the new file is in place but may not survive a crash. */
int seal_writer_commit(struct seal_writer *w, struct err *e);

/* Removes the temporary file unless committed, wipes the key and buffers, frees. NULL ok. */
void seal_writer_free(struct seal_writer *w);

/* ------------------------------------------------------------------------------------------
 * Streaming reader: only authenticated plaintext, chunk by chunk
 * ---------------------------------------------------------------------------------------- */

struct seal_reader;

/*
 * Opens path and authenticates its header and first chunk, so a wrong key, purpose or object
 * id fails here. Returns a new reader (free with seal_reader_free) or NULL with e set:
 * INF_ENOTFOUND if path does not exist, INF_EINVAL if it is not a sealed file or fails
 * authentication, INF_EIO. Memory: ~2 chunk sizes.
 */
struct seal_reader *seal_reader_new(const char *path, const struct master_key *mk,
                                    const char *purpose, const char *object_id, struct err *e);

/*
 * Copies up to cap (> 0) bytes of authenticated plaintext into buf and sets *n. *n == 0 with INF_OK
 * means the authenticated end (the final chunk was seen and nothing follows); a missing final
 * chunk, a truncated or altered chunk is INF_EINVAL. After an error the reader is failed and
 * every later call returns the same status. *n is 0 on error.
 */
int seal_reader_read(struct seal_reader *r, void *buf, size_t cap, size_t *n, struct err *e);

/* Closes the file, wipes the key and buffers, frees. NULL ok. */
void seal_reader_free(struct seal_reader *r);

/* ------------------------------------------------------------------------------------------
 * Whole files
 * ---------------------------------------------------------------------------------------- */

/* Seals len bytes into path (atomically, with the given mode). */
int seal_file_write(const char *path, const struct master_key *mk, const char *purpose,
                    const char *object_id, const void *data, size_t len, unsigned mode,
                    struct err *e);

/*
 * Reads and opens the whole sealed file at path. If its plaintext would exceed max_bytes
 * (judged from the file size before anything is decrypted): INF_ELIMIT. On success the caller
 * frees *data with free() (NUL-terminated; the NUL is not counted in *len). Errors as
 * seal_reader_new/seal_reader_read; nothing is returned unless the whole file authenticated.
 */
int seal_file_read(const char *path, const struct master_key *mk, const char *purpose,
                   const char *object_id, size_t max_bytes, uint8_t **data, size_t *len,
                   struct err *e);

#endif /* INFERA_AUTH_SEAL_H */
