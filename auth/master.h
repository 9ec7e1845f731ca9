/*
 * auth/master.h - the master key of a data directory and the keys derived from it.
 *
 * The master key is 32 random bytes. It comes from exactly one source:
 *   - <data_dir>/master.key (raw 32 bytes, mode 0600), the default;
 *   - a key file named by --master-key-file (same format, never created by infera);
 *   - the INFERA_MASTER_KEY environment variable (64 hex digits).
 * Everything secret at rest (API key pepper, audit MAC key, sealed files) uses keys derived
 * from it with HKDF-SHA256; the master key itself is never written anywhere else.
 *
 * <data_dir>/master.check holds a key-check value, hex(HMAC-SHA256(K_check,
 * "infera/v1/master-check")) with K_check = master_key_derive(mk, "master-check"). It lets a
 * start with the wrong key fail at once with a clear message instead of later with
 * "authentication failed" on every file. It reveals nothing about the key.
 *
 * Thread safety: all functions are reentrant; a struct master_key may be shared read-only by
 * any number of threads.
 */
#ifndef INFERA_AUTH_MASTER_H
#define INFERA_AUTH_MASTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define MASTER_KEY_BYTES 32

/* Key material: wipe with master_key_wipe() when done. */
struct master_key {
    uint8_t bytes[MASTER_KEY_BYTES];
};

/*
 * Where the key comes from. Both fields NULL (or the whole struct NULL): the default file.
 * An empty string counts as NULL, and a key_file spelled exactly <data_dir>/master.key (as
 * fs_path_join writes it) is the default source, so callers may fill in the default path.
 */
struct master_source {
    const char *key_file;  /* borrowed; NULL: <data_dir>/master.key */
    const char *env_value; /* borrowed; NULL, or INFERA_MASTER_KEY's value: 64 hex digits */
};

/*
 * Opens the master key of data_dir into *out.
 *
 * Default source (<data_dir>/master.key):
 *   - the file exists: it is read and checked;
 *   - it does not exist and data_dir is empty or does not exist: data_dir is created (0700),
 *     32 bytes from RAND_bytes are written to master.key (0600, atomically and exclusively: a
 *     concurrent first start loses the race and reads the winner's key) and *created = true;
 *   - it does not exist and data_dir has entries: INF_ENOTFOUND with a message naming the file
 *     and INFERA_MASTER_KEY. A new key is never made for a directory that holds data.
 *   "Empty" ignores "lost+found" (the root of a fresh ext4 volume) and temporary files left
 *   by a crashed atomic write of master.key or master.check; everything else counts.
 * Explicit sources (src->key_file or src->env_value; giving both is INF_EINVAL): the key must
 * be there (a missing key file is INF_ENOTFOUND); data_dir is created (0700) if missing.
 *
 * A key file must be a regular file of exactly 32 bytes with no group or other permission
 * bits; otherwise INF_EINVAL saying which and how to fix it (chmod 600). An env value must be
 * 64 hex digits (trailing whitespace is ignored); the message never echoes it.
 *
 * master.check: if it exists and does not match the key, INF_EINVAL "master key does not
 * match this data directory (...)". If it is missing, it is written when data_dir was empty
 * before this call or the key came from <data_dir>/master.key itself (that file is
 * authoritative); for an explicit key and a non-empty directory without one, nothing is
 * written (a warning is logged), since writing would bless a key that may be wrong.
 *
 * created may be NULL. On success *out holds the key (wipe it with master_key_wipe) and
 * *created tells whether a new key was made. On failure *out and *created are unchanged.
 */
int master_key_open(const char *data_dir, const struct master_source *src, struct master_key *out,
                    bool *created, struct err *e);

/*
 * out = HKDF-SHA256(ikm = master key, no salt, info = "infera/v1/" || purpose), 32 bytes.
 * purpose is a non-empty string such as "audit", "key-pepper", "mask" (at most 255 bytes).
 * Deterministic; different purposes give independent keys. Returns INF_OK, INF_EINVAL (bad
 * purpose) or INF_ENOMEM/INF_EIO (OpenSSL failed); out is written only on success.
 */
int master_key_derive(const struct master_key *mk, const char *purpose, uint8_t out[32]);

/*
 * The general form used by seal: out_len bytes of HKDF-SHA256(ikm = master key, salt, info).
 * salt may be NULL when salt_len is 0 (HKDF then uses a zero salt); info_len <= 1024;
 * 1 <= out_len <= 8160. Same returns as master_key_derive.
 */
int master_key_hkdf(const struct master_key *mk, const void *salt, size_t salt_len,
                    const void *info, size_t info_len, uint8_t *out, size_t out_len);

/* Overwrites the key with zeros (OPENSSL_cleanse, not optimized away). NULL ok. */
void master_key_wipe(struct master_key *mk);

#endif /* INFERA_AUTH_MASTER_H */
