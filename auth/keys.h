/*
 * auth/keys.h - API keys: creation, storage in data/keys.json, revocation and verification of
 * bearer tokens, scopes and per-key limits (DESIGN.md §3, §5 "Keys, operations", §6).
 *
 * Token format: "ifr_" + id + "_" + secret, 56 characters in all.
 *   - id: KEY_ID_LEN (8) base62 characters, unique in the store, public (lists, audit log).
 *   - secret: KEY_SECRET_LEN (43) base62 characters drawn uniformly (rejection sampling) from
 *     RAND_bytes: 43 * log2(62) = 256.03 bits. Shown once, by keystore_create(), never again.
 *   - base62 is 0-9, A-Z, a-z. Nothing else is accepted anywhere in a token.
 *
 * Storage: keys.json holds HMAC-SHA256(pepper, full token string) in hex per key, never the
 * token or the secret. The pepper (32 bytes) is derived from the master key by the caller.
 *
 *   {"version": 1, "keys": [{"id": "Ab3dE6gH", "name": "ci", "scopes": ["infer"],
 *     "hash": "<64 hex>", "created_at": 1700000000, "revoked_at": 1700000100,
 *     "rate_limit": 5.0, "burst": 10.0, "max_concurrent": 4}]}
 *
 *   revoked_at, rate_limit, burst and max_concurrent are optional (absent: active / default).
 *   Unknown members are ignored so a newer writer does not break an older reader. Keys are
 *   never deleted from the file: a revoked key keeps its entry (and its id stays taken).
 *   Written with fs_write_atomic() in mode 0600.
 *
 * Verification does the same work for every well-formed token: one HMAC and one
 * CRYPTO_memcmp, against the stored hash or against a random dummy hash when the id is
 * unknown; a revoked key is only reported as revoked once its secret compared equal.
 * keystore_stats_get() counts that work so tests can check the path.
 *
 * Live changes: the server and the offline CLI (another process, or a second handle in the
 * same process) may both change keys.json. Every mutation runs read-modify-write under an
 * exclusive flock() on "<path>.lock", reloading the file first, and installs its result in
 * memory before dropping the flock. Every read (verify, list, get, count) first stat()s
 * keys.json and reloads it when (dev, inode, size, mtime ns, ctime ns) changed, so a key
 * created or revoked elsewhere counts on the very next call. Writes only ever grow the file
 * (keys are appended, revocation adds a member), so two versions never share size and
 * identity even when the inode number is reused within one timestamp tick.
 *
 * If a reload fails (a hand-edited, malformed keys.json), the store fails closed: it logs the
 * error once (LOG_ERROR) and holds no keys until the file is fixed, so every token is
 * AUTH_UNKNOWN and every mutation fails with the parse error.
 *
 * Thread safety: every function except keystore_open() and keystore_free() may be called
 * from any thread at once. Inside a struct keystore:
 *   - rw (pthread_rwlock): the in-memory key set, its file identity and the default limits.
 *     verify/list/get/count hold it shared; reloads and installs hold it exclusive.
 *   - mutate (pthread_mutex): serializes this handle's mutations.
 *   Lock order: mutate -> flock(<path>.lock) -> rw. No lock is held across calls, and no
 *   callback runs under a lock. The HMAC is computed outside every lock.
 *
 * Limits: at most KEYSTORE_MAX_KEYS keys (revoked ones included) and KEYSTORE_MAX_FILE bytes.
 */
#ifndef INFERA_AUTH_KEYS_H
#define INFERA_AUTH_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/common.h"

/* ------------------------------------------------------------------------------------------
 * Scopes
 * ---------------------------------------------------------------------------------------- */

/* Deny by default: a key can do only what its scopes name. ADMIN implies INFER and TRAIN. */
enum auth_scope {
    AUTH_SCOPE_INFER = 1u << 0,
    AUTH_SCOPE_TRAIN = 1u << 1,
    AUTH_SCOPE_ADMIN = 1u << 2,
};

#define AUTH_SCOPE_ALL (AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN | AUTH_SCOPE_ADMIN)

/*
 * Parses "infer", "train", "admin" or a comma-separated list of them ("infer,train"; spaces
 * around names are allowed, repeats are harmless) into scope bits. Fails with INF_EINVAL,
 * naming the offending word, on an unknown or empty name or an empty list. *out is written
 * only on success. The bits are the ones named (admin is not expanded here).
 */
int auth_scopes_parse(const char *csv_or_name, unsigned *out, struct err *e);

/*
 * Parses a JSON array of scope names (borrowed) into bits. Fails with INF_EINVAL on a
 * non-array, a non-string element, an unknown name or an empty array.
 */
int auth_scopes_from_json(const json_t *array, unsigned *out, struct err *e);

/*
 * Returns a new JSON array (new reference; caller json_decref()s) naming the bits set in
 * scopes, in the order infer, train, admin. Bits are listed as stored: ADMIN alone gives
 * ["admin"]. Returns NULL when out of memory.
 */
json_t *auth_scopes_to_json(unsigned scopes);

/*
 * Writes the names of the bits set in scopes, comma-separated in the order infer, train,
 * admin ("" for none), into buf (cap bytes, NUL-terminated). 18 bytes always suffice.
 * Returns INF_ELIMIT if it does not fit (buf then holds "").
 */
int auth_scopes_format(unsigned scopes, char *buf, size_t cap);

/* The scopes a key with these stored bits may use: ADMIN adds INFER and TRAIN. */
unsigned auth_scopes_effective(unsigned scopes);

/* ------------------------------------------------------------------------------------------
 * Keys
 * ---------------------------------------------------------------------------------------- */

#define KEY_ID_LEN         8
#define KEY_SECRET_LEN     43
#define KEY_PREFIX         "ifr_"
#define KEY_TOKEN_LEN      (4 + KEY_ID_LEN + 1 + KEY_SECRET_LEN) /* 56 */
#define KEY_TOKEN_MAX      64                                    /* KEY_TOKEN_LEN + NUL fits */
#define KEY_NAME_MAX       127                                   /* bytes, printable ASCII */
#define KEYSTORE_MAX_KEYS  10000
#define KEYSTORE_MAX_FILE  (16u << 20)
#define KEY_RATE_MAX       1e6    /* requests/s */
#define KEY_BURST_MAX      1e6    /* requests */
#define KEY_CONCURRENT_MAX 100000 /* requests in flight */

/*
 * Per-key limits. In struct key_info a 0 field means "the scope default"; in struct principal
 * (effective limits) a 0 rate means unlimited and a 0 max_concurrent means no cap.
 *   rate:           token-bucket refill, requests per second, 0 or (0, KEY_RATE_MAX]
 *   burst:          bucket capacity, 0 or [1, KEY_BURST_MAX]
 *   max_concurrent: requests in flight at once, 0..KEY_CONCURRENT_MAX
 */
struct key_limits {
    double rate;
    double burst;
    unsigned max_concurrent;
};

/* Public facts about a key: never the secret or its hash. */
struct key_info {
    char id[KEY_ID_LEN + 1];
    char name[KEY_NAME_MAX + 1];
    unsigned scopes;          /* as stored; see auth_scopes_effective() */
    struct key_limits limits; /* per-key overrides, 0 fields = scope default */
    int64_t created_at;       /* unix seconds */
    bool revoked;
    int64_t revoked_at; /* unix seconds, 0 unless revoked */
};

/* Opaque; see the top of this file. */
struct keystore;

/*
 * Opens the store backed by path (e.g. "data/keys.json"); the pepper (32 bytes, copied, wiped
 * on free) keys the HMAC. A missing file is an empty store (it is created by the first
 * keystore_create()); its directory must exist by then. A file that is malformed fails with
 * INF_EINVAL and a message naming the file and the problem ("keys[2].hash: expected 64 hex
 * digits"); one that cannot be read with INF_EIO; one over KEYSTORE_MAX_FILE bytes or
 * KEYSTORE_MAX_KEYS keys with INF_ELIMIT. Logs a warning when the file is readable by
 * group or others. Returns a new store (caller frees with keystore_free()) or NULL.
 * Built-in default limits (keystore_set_defaults() changes them):
 *   infer: 100 r/s, burst 200, 32 concurrent
 *   train:  10 r/s, burst  20,  8 concurrent
 *   admin:  50 r/s, burst 100, 16 concurrent
 */
struct keystore *keystore_open(const char *path, const uint8_t pepper[32], struct err *e);

/* Frees ks and wipes the pepper. NULL is a no-op. No other call may be running on ks. */
void keystore_free(struct keystore *ks);

/*
 * Sets the default limits by scope: [0] infer, [1] train, [2] admin (copied). A key's
 * defaults come from its highest scope (admin > train > infer). Here a 0 rate means
 * unlimited and a 0 max_concurrent no cap. Takes effect on the next verify.
 */
void keystore_set_defaults(struct keystore *ks, const struct key_limits defaults_by_scope[3]);

/*
 * Merges a key's overrides with the defaults of its highest scope into effective limits:
 * each non-zero override wins; a burst left 0 under an overridden rate becomes twice the rate
 * (at least 1), the ratio of the built-in defaults, rather than the scope's burst.
 */
void keystore_limits_effective(struct keystore *ks, unsigned scopes,
                               const struct key_limits *overrides, struct key_limits *out);

/*
 * Creates a key: name is 1..KEY_NAME_MAX printable ASCII characters, scopes a non-empty
 * subset of AUTH_SCOPE_ALL, limits the per-key overrides (NULL: all defaults; ranges as for
 * struct key_limits). On success writes the token (KEY_TOKEN_LEN chars + NUL) to token_out:
 * this is the only time the secret exists outside the client, so show it once and wipe it
 * (OPENSSL_cleanse). info_out (optional) gets the key's public facts. Fails with INF_EINVAL
 * on bad arguments, INF_ELIMIT when the store holds KEYSTORE_MAX_KEYS keys, INF_EIO when
 * keys.json or its lock cannot be written, INF_EINVAL when keys.json on disk is malformed.
 * Nothing is written on failure.
 */
int keystore_create(struct keystore *ks, const char *name, unsigned scopes,
                    const struct key_limits *limits, char token_out[KEY_TOKEN_MAX],
                    struct key_info *info_out, struct err *e);

/*
 * Revokes the key with this id, at once for every handle and process using the file.
 * Idempotent: revoking a revoked key succeeds and keeps its first revoked_at (so a retried
 * DELETE or CLI call is not an error). INF_ENOTFOUND when no key has this id (also for a
 * string that is not an id); INF_EIO / INF_EINVAL as keystore_create().
 */
int keystore_revoke(struct keystore *ks, const char *id, struct err *e);

/*
 * Lists every key, revoked ones included (flagged), in creation order. On success *out is a
 * new array of *n entries (caller frees with free(); NULL when *n is 0). INF_ENOMEM on
 * allocation failure.
 */
int keystore_list(struct keystore *ks, struct key_info **out, size_t *n, struct err *e);

/* Copies the public facts of key id into *out. INF_ENOTFOUND when there is no such key. */
int keystore_get(struct keystore *ks, const char *id, struct key_info *out);

/* The number of keys that are not revoked. */
size_t keystore_count(struct keystore *ks);

/* ------------------------------------------------------------------------------------------
 * Verification
 * ---------------------------------------------------------------------------------------- */

enum auth_result {
    AUTH_OK,
    AUTH_MISSING,    /* no Authorization header, or an empty one */
    AUTH_MALFORMED,  /* not exactly "Bearer " + a well-formed token */
    AUTH_UNKNOWN,    /* well-formed, but no key has this id */
    AUTH_REVOKED,    /* right secret of a revoked key */
    AUTH_BAD_SECRET, /* the id exists but the secret is wrong */
    AUTH_ERROR,      /* the token could not be checked (the HMAC failed: out of memory) */
};

/* "ok", "missing", "malformed", "unknown", "revoked", "bad_secret", "error" (static; metrics
 * labels and audit reasons). */
const char *auth_result_str(enum auth_result r);

/* Who a verified token belongs to. */
struct principal {
    char key_id[KEY_ID_LEN + 1];
    unsigned scopes;          /* effective: ADMIN already implies INFER and TRAIN */
    struct key_limits limits; /* effective: overrides merged with the scope defaults */
};

/*
 * Verifies an Authorization header value (borrowed, may be NULL). It must be exactly
 * "Bearer " (the scheme in any case, RFC 7235; one space) + a token of KEY_TOKEN_LEN characters of
 * the form above, with nothing before or after: anything else is AUTH_MALFORMED, and NULL or "" is
 * AUTH_MISSING. For a well-formed token, exactly one HMAC and one CRYPTO_memcmp are done
 * whatever the outcome; if the HMAC itself fails the result is AUTH_ERROR (never AUTH_OK: fail
 * closed; the server answers 503, not 401, since the key may be fine). Fills *p only on AUTH_OK.
 * key_id_out (optional) gets the claimed id of any well-formed token, whatever the result, for the
 * audit log; "" otherwise. Sees keys created or revoked by other handles and processes at once (one
 * stat() per call).
 */
enum auth_result keystore_verify(struct keystore *ks, const char *authorization,
                                 struct principal *p, char key_id_out[KEY_ID_LEN + 1]);

/* Work counters for tests and metrics, monotonic since keystore_open(). */
struct keystore_stats {
    uint64_t verifies; /* keystore_verify() calls */
    uint64_t hmacs;    /* HMACs computed (verify and create) */
    uint64_t compares; /* CRYPTO_memcmp calls of a computed HMAC against a stored/dummy hash */
    uint64_t reloads;  /* times keys.json was re-read because it changed on disk */
};

void keystore_stats_get(struct keystore *ks, struct keystore_stats *out);

#endif /* INFERA_AUTH_KEYS_H */
