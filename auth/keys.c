/*
 * auth/keys.c - API keys: token generation, keys.json load/save, verification.
 * The contract (format, locking, reload rules) is in auth/keys.h.
 */
#include "auth/hmac.h"
#include "auth/keys.h"
#include "common/json_dump.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#define HASH_LEN   32 /* HMAC-SHA256 */
#define PEPPER_LEN 32
#define PATH_MAX_  4096
#define BEARER     "Bearer "

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
static const char *const scope_names[3] = {"infer", "train", "admin"};

/* ------------------------------------------------------------------------------------------
 * Scopes
 * ---------------------------------------------------------------------------------------- */

static int scope_lookup(const char *s, size_t n, unsigned *bit)
{
    for (unsigned i = 0; i < 3; i++) {
        if (strlen(scope_names[i]) == n && memcmp(scope_names[i], s, n) == 0) {
            *bit = 1u << i;
            return 0;
        }
    }
    return -1;
}

int auth_scopes_parse(const char *csv_or_name, unsigned *out, struct err *e)
{
    if (csv_or_name == NULL || csv_or_name[0] == '\0')
        return err_set(e, INF_EINVAL, "no scopes given: name one or more of infer, train, admin");
    unsigned bits = 0;
    const char *p = csv_or_name;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (n > 0 && *s == ' ') {
            s++;
            n--;
        }
        while (n > 0 && s[n - 1] == ' ')
            n--;
        unsigned bit;
        if (n == 0)
            return err_set(e, INF_EINVAL, "empty scope name in \"%.64s\"", csv_or_name);
        if (scope_lookup(s, n, &bit) != 0)
            return err_set(e, INF_EINVAL, "unknown scope \"%.*s\" (expected infer, train, admin)",
                           n > 64 ? 64 : (int)n, s);
        bits |= bit;
        if (end == NULL)
            break;
        p = end + 1;
    }
    *out = bits;
    return INF_OK;
}

int auth_scopes_from_json(const json_t *array, unsigned *out, struct err *e)
{
    if (!json_is_array(array))
        return err_set(e, INF_EINVAL, "scopes: expected an array of scope names");
    if (json_array_size(array) == 0)
        return err_set(e, INF_EINVAL, "scopes: name one or more of infer, train, admin");
    unsigned bits = 0;
    for (size_t i = 0; i < json_array_size(array); i++) {
        /* json_array_get takes a non-const array in jansson's API; it does not modify it */
        const json_t *v = json_array_get((json_t *)array, i);
        unsigned bit;
        if (!json_is_string(v))
            return err_set(e, INF_EINVAL, "scopes[%zu]: expected a string", i);
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (scope_lookup(s, n, &bit) != 0)
            return err_set(e, INF_EINVAL,
                           "scopes[%zu]: unknown scope \"%.*s\" (expected infer, train, admin)", i,
                           n > 64 ? 64 : (int)n, s);
        bits |= bit;
    }
    *out = bits;
    return INF_OK;
}

json_t *auth_scopes_to_json(unsigned scopes)
{
    json_t *a = json_array();
    if (a == NULL)
        return NULL;
    for (unsigned i = 0; i < 3; i++) {
        if ((scopes & (1u << i)) && json_array_append_new(a, json_string(scope_names[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

int auth_scopes_format(unsigned scopes, char *buf, size_t cap)
{
    size_t used = 0;
    if (cap == 0)
        return INF_ELIMIT;
    buf[0] = '\0';
    for (unsigned i = 0; i < 3; i++) {
        if (!(scopes & (1u << i)))
            continue;
        int w = snprintf(buf + used, cap - used, "%s%s", used ? "," : "", scope_names[i]);
        if (w < 0 || (size_t)w >= cap - used) {
            buf[0] = '\0';
            return INF_ELIMIT;
        }
        used += (size_t)w;
    }
    return INF_OK;
}

unsigned auth_scopes_effective(unsigned scopes)
{
    if (scopes & AUTH_SCOPE_ADMIN)
        scopes |= AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN;
    return scopes & AUTH_SCOPE_ALL;
}

const char *auth_result_str(enum auth_result r)
{
    switch (r) {
        case AUTH_OK:
            return "ok";
        case AUTH_MISSING:
            return "missing";
        case AUTH_MALFORMED:
            return "malformed";
        case AUTH_UNKNOWN:
            return "unknown";
        case AUTH_REVOKED:
            return "revoked";
        case AUTH_BAD_SECRET:
            return "bad_secret";
        case AUTH_ERROR:
            return "error";
    }
    return "invalid";
}

/* ------------------------------------------------------------------------------------------
 * Key records, key sets and the store
 * ---------------------------------------------------------------------------------------- */

struct key_rec {
    struct key_info info;
    uint8_t hash[HASH_LEN];
};

/* One parsed version of keys.json. */
struct key_set {
    struct key_rec *v;
    size_t n, cap;
};

enum file_state { FILE_MISSING, FILE_PRESENT, FILE_ERROR };

/* What identifies one version of keys.json on disk (see the header on why this suffices). */
struct file_ident {
    enum file_state state;
    int err_no; /* FILE_ERROR: the stat errno */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
};

struct keystore {
    char path[PATH_MAX_];
    char lock_path[PATH_MAX_];
    struct hmac_key *pepper;      /* HMAC-SHA256 key schedule of the pepper */
    uint8_t dummy_hash[HASH_LEN]; /* compared against when the id is unknown */

    pthread_mutex_t mutate; /* lock order: mutate -> flock -> rw */
    pthread_rwlock_t rw;    /* guards set, ident, defaults */
    struct key_set set;
    struct file_ident ident; /* of the file set was read from */
    struct key_limits defaults[3];

    atomic_uint_fast64_t n_verifies, n_hmacs, n_compares, n_reloads;
};

static const struct key_limits builtin_defaults[3] = {
    {.rate = 100, .burst = 200, .max_concurrent = 32}, /* infer */
    {.rate = 10, .burst = 20, .max_concurrent = 8},    /* train */
    {.rate = 50, .burst = 100, .max_concurrent = 16},  /* admin */
};

static void key_set_free(struct key_set *s)
{
    if (s->v != NULL)
        OPENSSL_cleanse(s->v, s->cap * sizeof *s->v);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int key_set_push(struct key_set *s, const struct key_rec *r, struct err *e)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16, bytes;
        if (!size_mul_ok(cap, sizeof *s->v, &bytes))
            return err_set(e, INF_ENOMEM, "too many keys");
        struct key_rec *v = realloc(s->v, bytes);
        if (v == NULL)
            return err_set(e, INF_ENOMEM, "out of memory for %zu keys", cap);
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = *r;
    return INF_OK;
}

/* Every key is looked at, so where an id sits in the file does not change the work. */
static struct key_rec *key_set_find(const struct key_set *s, const char *id)
{
    struct key_rec *found = NULL;
    for (size_t i = 0; i < s->n; i++) {
        if (memcmp(s->v[i].info.id, id, KEY_ID_LEN + 1) == 0)
            found = &s->v[i];
    }
    return found;
}

static bool is_base62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static bool id_valid(const char *id)
{
    for (size_t i = 0; i < KEY_ID_LEN; i++) {
        if (!is_base62(id[i]))
            return false;
    }
    return id[KEY_ID_LEN] == '\0';
}

static bool name_valid(const char *name, size_t n)
{
    if (n == 0 || n > KEY_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (name[i] < 0x20 || name[i] > 0x7e)
            return false;
    }
    return true;
}

/* Checks per-key overrides; what names the field in messages ("rate_limit" etc.). */
static int limits_check(const struct key_limits *l, struct err *e)
{
    if (!isfinite(l->rate) || l->rate < 0 || l->rate > KEY_RATE_MAX)
        return err_set(e, INF_EINVAL, "rate_limit must be between 0 (default) and %g requests/s",
                       KEY_RATE_MAX);
    if (!isfinite(l->burst) || l->burst < 0 || l->burst > KEY_BURST_MAX ||
        (l->burst > 0 && l->burst < 1))
        return err_set(e, INF_EINVAL, "burst must be 0 (default) or between 1 and %g",
                       KEY_BURST_MAX);
    if (l->max_concurrent > KEY_CONCURRENT_MAX)
        return err_set(e, INF_EINVAL, "max_concurrent must be between 0 (default) and %d",
                       KEY_CONCURRENT_MAX);
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * keys.json <-> key_set
 * ---------------------------------------------------------------------------------------- */

static int parse_time(json_t *k, const char *field, size_t i, bool required, int64_t *out,
                      struct err *e)
{
    json_t *v = json_object_get(k, field);
    if (v == NULL || (!required && json_is_null(v))) {
        if (required)
            return err_set(e, INF_EINVAL, "keys[%zu].%s: missing", i, field);
        *out = 0;
        return INF_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return err_set(e, INF_EINVAL, "keys[%zu].%s: expected a unix time in seconds", i, field);
    *out = (int64_t)json_integer_value(v);
    return INF_OK;
}

static int parse_number(json_t *k, const char *field, size_t i, double *out, struct err *e)
{
    json_t *v = json_object_get(k, field);
    *out = 0;
    if (v == NULL || json_is_null(v))
        return INF_OK;
    if (!json_is_number(v))
        return err_set(e, INF_EINVAL, "keys[%zu].%s: expected a number", i, field);
    *out = json_number_value(v);
    return INF_OK;
}

static int parse_key(json_t *k, size_t i, struct key_rec *r, struct err *e)
{
    int rc;
    memset(r, 0, sizeof *r);
    if (!json_is_object(k))
        return err_set(e, INF_EINVAL, "keys[%zu]: expected an object", i);

    json_t *v = json_object_get(k, "id");
    if (!json_is_string(v) || json_string_length(v) != KEY_ID_LEN ||
        !id_valid(json_string_value(v)))
        return err_set(e, INF_EINVAL, "keys[%zu].id: expected %d base62 characters", i, KEY_ID_LEN);
    memcpy(r->info.id, json_string_value(v), KEY_ID_LEN + 1);

    v = json_object_get(k, "name");
    if (!json_is_string(v) || !name_valid(json_string_value(v), json_string_length(v)))
        return err_set(e, INF_EINVAL, "keys[%zu].name: expected 1 to %d printable characters", i,
                       KEY_NAME_MAX);
    memcpy(r->info.name, json_string_value(v), json_string_length(v) + 1);

    struct err inner = {0};
    if (auth_scopes_from_json(json_object_get(k, "scopes"), &r->info.scopes, &inner) != 0)
        return err_set(e, INF_EINVAL, "keys[%zu].%s", i, inner.msg);

    v = json_object_get(k, "hash");
    if (!json_is_string(v) || json_string_length(v) != 2 * HASH_LEN)
        return err_set(e, INF_EINVAL, "keys[%zu].hash: expected %d hex digits", i, 2 * HASH_LEN);
    const char *h = json_string_value(v);
    for (size_t j = 0; j < HASH_LEN; j++) {
        int hi = hex_digit(h[2 * j]), lo = hex_digit(h[2 * j + 1]);
        if (hi < 0 || lo < 0)
            return err_set(e, INF_EINVAL, "keys[%zu].hash: expected %d hex digits", i,
                           2 * HASH_LEN);
        r->hash[j] = (uint8_t)(hi << 4 | lo);
    }

    if ((rc = parse_time(k, "created_at", i, true, &r->info.created_at, e)) != 0)
        return rc;
    if ((rc = parse_time(k, "revoked_at", i, false, &r->info.revoked_at, e)) != 0)
        return rc;
    v = json_object_get(k, "revoked_at");
    r->info.revoked = v != NULL && !json_is_null(v);

    if ((rc = parse_number(k, "rate_limit", i, &r->info.limits.rate, e)) != 0)
        return rc;
    if ((rc = parse_number(k, "burst", i, &r->info.limits.burst, e)) != 0)
        return rc;
    v = json_object_get(k, "max_concurrent");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > KEY_CONCURRENT_MAX)
            return err_set(e, INF_EINVAL, "keys[%zu].max_concurrent: expected an integer 0..%d", i,
                           KEY_CONCURRENT_MAX);
        r->info.limits.max_concurrent = (unsigned)json_integer_value(v);
    }
    if (limits_check(&r->info.limits, &inner) != 0)
        return err_set(e, INF_EINVAL, "keys[%zu]: %s", i, inner.msg);
    return INF_OK;
}

/* Parses text into *out (empty on entry). Messages name the problem, not the file. */
static int key_set_parse(const char *text, size_t len, struct key_set *out, struct err *e)
{
    int rc = INF_OK;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) /* jansson leaves the text empty only when an allocation failed */
        return jerr.text[0] == '\0' ? err_set(e, INF_ENOMEM, "out of memory parsing it")
                                    : err_set(e, INF_EINVAL, "line %d column %d: %s", jerr.line,
                                              jerr.column, jerr.text);
    json_t *ver = json_object_get(root, "version");
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_object(root)) {
        rc = err_set(e, INF_EINVAL, "expected a JSON object {\"version\": 1, \"keys\": [...]}");
        goto out;
    }
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        rc = err_set(e, INF_EINVAL, "version: expected 1");
        goto out;
    }
    if (!json_is_array(keys)) {
        rc = err_set(e, INF_EINVAL, "keys: expected an array");
        goto out;
    }
    if (json_array_size(keys) > KEYSTORE_MAX_KEYS) {
        rc = err_set(e, INF_ELIMIT, "keys: %zu keys, the limit is %d", json_array_size(keys),
                     KEYSTORE_MAX_KEYS);
        goto out;
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        struct key_rec r;
        if ((rc = parse_key(json_array_get(keys, i), i, &r, e)) != 0)
            goto out;
        if (key_set_find(out, r.info.id) != NULL) {
            rc = err_set(e, INF_EINVAL, "keys[%zu].id: duplicate id %s", i, r.info.id);
            goto out;
        }
        if ((rc = key_set_push(out, &r, e)) != 0)
            goto out;
    }
out:
    json_decref(root);
    if (rc != 0)
        key_set_free(out);
    return rc;
}

static int set_new(json_t *obj, const char *key, json_t *v)
{
    return v == NULL ? -1 : json_object_set_new(obj, key, v);
}

/* Serializes s into a new NUL-terminated buffer (caller frees). */
static int key_set_dump(const struct key_set *s, char **text, size_t *len, struct err *e)
{
    int rc = INF_OK;
    json_t *root = json_object(), *keys = json_array();
    char *out = NULL;
    if (root == NULL || keys == NULL)
        goto oom;
    if (set_new(root, "version", json_integer(1)) != 0)
        goto oom;
    if (json_object_set(root, "keys", keys) != 0)
        goto oom;
    for (size_t i = 0; i < s->n; i++) {
        const struct key_rec *r = &s->v[i];
        char hex[2 * HASH_LEN + 1];
        for (size_t j = 0; j < HASH_LEN; j++) {
            hex[2 * j] = "0123456789abcdef"[r->hash[j] >> 4];
            hex[2 * j + 1] = "0123456789abcdef"[r->hash[j] & 15];
        }
        hex[2 * HASH_LEN] = '\0';
        json_t *k = json_object();
        if (k == NULL || json_array_append_new(keys, k) != 0)
            goto oom;
        if (set_new(k, "id", json_string(r->info.id)) != 0 ||
            set_new(k, "name", json_string(r->info.name)) != 0 ||
            set_new(k, "scopes", auth_scopes_to_json(r->info.scopes)) != 0 ||
            set_new(k, "hash", json_string(hex)) != 0 ||
            set_new(k, "created_at", json_integer(r->info.created_at)) != 0)
            goto oom;
        if (r->info.revoked && set_new(k, "revoked_at", json_integer(r->info.revoked_at)) != 0)
            goto oom;
        if (r->info.limits.rate > 0 && set_new(k, "rate_limit", json_real(r->info.limits.rate)))
            goto oom;
        if (r->info.limits.burst > 0 && set_new(k, "burst", json_real(r->info.limits.burst)))
            goto oom;
        if (r->info.limits.max_concurrent > 0 &&
            set_new(k, "max_concurrent", json_integer(r->info.limits.max_concurrent)))
            goto oom;
    }
    out = json_dump_checked(root, JSON_INDENT(2));
    if (out == NULL)
        goto oom;
    size_t n = strlen(out);
    char *grown = realloc(out, n + 2); /* a trailing newline, for people who cat the file */
    if (grown == NULL)
        goto oom;
    out = grown;
    out[n] = '\n';
    out[n + 1] = '\0';
    *text = out;
    *len = n + 1;
    out = NULL;
    goto done;
oom:
    rc = err_set(e, INF_ENOMEM, "out of memory writing keys.json");
done:
    free(out);
    json_decref(keys);
    json_decref(root);
    return rc;
}

static void file_ident_get(const char *path, struct file_ident *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) != 0) {
        id->state = errno == ENOENT ? FILE_MISSING : FILE_ERROR;
        id->err_no = id->state == FILE_ERROR ? errno : 0;
        return;
    }
    id->state = FILE_PRESENT;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtim = st.st_mtim;
    id->ctim = st.st_ctim;
}

static bool file_ident_eq(const struct file_ident *a, const struct file_ident *b)
{
    return a->state == b->state && a->err_no == b->err_no && a->dev == b->dev && a->ino == b->ino &&
           a->size == b->size && a->mtim.tv_sec == b->mtim.tv_sec &&
           a->mtim.tv_nsec == b->mtim.tv_nsec && a->ctim.tv_sec == b->ctim.tv_sec &&
           a->ctim.tv_nsec == b->ctim.tv_nsec;
}

/*
 * Reads path into *out (empty on entry) and sets *ident to the identity of what was read.
 * The identity is taken before reading: if the file changes in between, the content is
 * newer than the identity and the next check reloads once more, never the other way round.
 */
static int key_set_load(const char *path, struct key_set *out, struct file_ident *ident,
                        struct err *e)
{
    char *text = NULL;
    size_t len = 0;
    file_ident_get(path, ident);
    if (ident->state == FILE_MISSING)
        return INF_OK;
    if (ident->state == FILE_ERROR)
        return err_set(e, INF_EIO, "%s: %s", path, strerror(ident->err_no));
    int rc = fs_read_file(path, KEYSTORE_MAX_FILE, &text, &len, e);
    if (rc == INF_ENOTFOUND) { /* deleted since the stat: an empty store, as at open */
        err_clear(e);
        ident->state = FILE_MISSING;
        return INF_OK;
    }
    if (rc != 0)
        return rc;
    rc = key_set_parse(text, len, out, e);
    if (rc != 0)
        err_prefix(e, "%s", path);
    free(text);
    return rc;
}

/* Swaps fresh in as the live set; frees the old one. Caller holds rw exclusively. */
static void install_locked(struct keystore *ks, struct key_set *fresh,
                           const struct file_ident *ident)
{
    key_set_free(&ks->set);
    ks->set = *fresh;
    ks->ident = *ident;
    memset(fresh, 0, sizeof *fresh);
}

/*
 * Makes the in-memory set match keys.json if the file changed since it was read. The reload
 * runs under the exclusive lock so that two threads cannot install versions out of order.
 */
static void keystore_refresh(struct keystore *ks)
{
    struct file_ident now;
    file_ident_get(ks->path, &now);
    pthread_rwlock_rdlock(&ks->rw);
    bool same = file_ident_eq(&now, &ks->ident);
    pthread_rwlock_unlock(&ks->rw);
    if (same)
        return;

    struct err e = {0};
    pthread_rwlock_wrlock(&ks->rw);
    file_ident_get(ks->path, &now);
    if (!file_ident_eq(&now, &ks->ident)) {
        struct key_set fresh = {0};
        struct file_ident ident;
        /* fail closed: no keys until the file is fixed (logged once per bad version, since
         * the bad version's identity is installed with the empty set). Running out of memory
         * says nothing about the file: keep the current set and retry at the next call. */
        int rc = key_set_load(ks->path, &fresh, &ident, &e);
        if (rc != 0)
            key_set_free(&fresh);
        if (rc != INF_ENOMEM) {
            install_locked(ks, &fresh, &ident);
            atomic_fetch_add_explicit(&ks->n_reloads, 1, memory_order_relaxed);
        }
    }
    pthread_rwlock_unlock(&ks->rw);
    if (e.status == INF_ENOMEM) /* the log sink is a callback: never called under rw */
        log_msg(LOG_ERROR, "keys: %s; keeping the keys already loaded, retrying", e.msg);
    else if (e.status != 0)
        log_msg(LOG_ERROR, "keys: %s; refusing every key until it is fixed", e.msg);
}

/* ------------------------------------------------------------------------------------------
 * Open, free, defaults
 * ---------------------------------------------------------------------------------------- */

struct keystore *keystore_open(const char *path, const uint8_t pepper[32], struct err *e)
{
    struct keystore *ks = NULL;
    bool mutex_ok = false, rw_ok = false;
    if (path == NULL || pepper == NULL) {
        err_set(e, INF_EINVAL, "keystore_open: path and pepper are required");
        goto fail;
    }
    ks = calloc(1, sizeof *ks);
    if (ks == NULL) {
        err_set(e, INF_ENOMEM, "out of memory opening %s", path);
        goto fail;
    }
    int n = snprintf(ks->path, sizeof ks->path, "%s", path);
    int m = snprintf(ks->lock_path, sizeof ks->lock_path, "%s.lock", path);
    if (n < 0 || (size_t)n >= sizeof ks->path || m < 0 || (size_t)m >= sizeof ks->lock_path) {
        err_set(e, INF_ELIMIT, "path too long: %.200s", path);
        goto fail;
    }
    if ((ks->pepper = hmac_key_new(pepper, PEPPER_LEN)) == NULL) {
        err_set(e, INF_ENOMEM, "cannot set up HMAC-SHA256 (OpenSSL)");
        goto fail;
    }
    if (RAND_bytes(ks->dummy_hash, HASH_LEN) != 1) {
        err_set(e, INF_EIO, "the OS random generator failed");
        goto fail;
    }
    memcpy(ks->defaults, builtin_defaults, sizeof ks->defaults);
    if (pthread_mutex_init(&ks->mutate, NULL) != 0) {
        err_set(e, INF_ENOMEM, "cannot create a mutex");
        goto fail;
    }
    mutex_ok = true;
    if (pthread_rwlock_init(&ks->rw, NULL) != 0) {
        err_set(e, INF_ENOMEM, "cannot create a rwlock");
        goto fail;
    }
    rw_ok = true;
    atomic_init(&ks->n_verifies, 0);
    atomic_init(&ks->n_hmacs, 0);
    atomic_init(&ks->n_compares, 0);
    atomic_init(&ks->n_reloads, 0);
    if (key_set_load(ks->path, &ks->set, &ks->ident, e) != 0)
        goto fail;
    struct stat st;
    if (ks->ident.state == FILE_PRESENT && stat(ks->path, &st) == 0 && (st.st_mode & 077))
        log_msg(LOG_WARN, "keys: %s is readable by others (mode %03o); it should be 0600", ks->path,
                (unsigned)(st.st_mode & 0777));
    return ks;
fail:
    if (ks != NULL) {
        if (rw_ok)
            pthread_rwlock_destroy(&ks->rw);
        if (mutex_ok)
            pthread_mutex_destroy(&ks->mutate);
        hmac_key_free(ks->pepper);
        free(ks);
    }
    return NULL;
}

void keystore_free(struct keystore *ks)
{
    if (ks == NULL)
        return;
    key_set_free(&ks->set);
    pthread_rwlock_destroy(&ks->rw);
    pthread_mutex_destroy(&ks->mutate);
    hmac_key_free(ks->pepper);
    free(ks);
}

void keystore_set_defaults(struct keystore *ks, const struct key_limits defaults_by_scope[3])
{
    pthread_rwlock_wrlock(&ks->rw);
    memcpy(ks->defaults, defaults_by_scope, sizeof ks->defaults);
    pthread_rwlock_unlock(&ks->rw);
}

static void limits_merge(const struct key_limits defaults[3], unsigned scopes,
                         const struct key_limits *o, struct key_limits *out)
{
    const struct key_limits *d = (scopes & AUTH_SCOPE_ADMIN)   ? &defaults[2]
                                 : (scopes & AUTH_SCOPE_TRAIN) ? &defaults[1]
                                                               : &defaults[0];
    struct key_limits r = *d;
    if (o != NULL) {
        if (o->rate > 0) {
            r.rate = o->rate;
            r.burst = o->rate * 2 < 1 ? 1 : o->rate * 2;
        }
        if (o->burst > 0)
            r.burst = o->burst;
        if (o->max_concurrent > 0)
            r.max_concurrent = o->max_concurrent;
    }
    *out = r;
}

void keystore_limits_effective(struct keystore *ks, unsigned scopes,
                               const struct key_limits *overrides, struct key_limits *out)
{
    pthread_rwlock_rdlock(&ks->rw);
    limits_merge(ks->defaults, scopes, overrides, out);
    pthread_rwlock_unlock(&ks->rw);
}

/* ------------------------------------------------------------------------------------------
 * Tokens and HMAC
 * ---------------------------------------------------------------------------------------- */

/* Fills out[0..n) with uniform base62 characters: bytes >= 248 (= 4 * 62) are rejected so
 * that b % 62 has no bias. */
static int random_base62(char *out, size_t n)
{
    unsigned char buf[64];
    size_t have = 0, pos = 0;
    int rc = INF_OK;
    for (size_t i = 0; i < n;) {
        if (pos == have) {
            if (RAND_bytes(buf, (int)sizeof buf) != 1) {
                rc = INF_EIO;
                break;
            }
            have = sizeof buf;
            pos = 0;
        }
        unsigned char b = buf[pos++];
        if (b < 248)
            out[i++] = base62[b % 62];
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}

static bool key_hmac(struct keystore *ks, const char *token, size_t len, uint8_t mac[HASH_LEN])
{
    atomic_fetch_add_explicit(&ks->n_hmacs, 1, memory_order_relaxed);
    return hmac_sha256(ks->pepper, token, len, NULL, 0, mac);
}

/* True if tok is exactly "ifr_" + 8 base62 + "_" + 43 base62 and then NUL; copies the id. */
static bool token_parse(const char *tok, char id[KEY_ID_LEN + 1])
{
    if (strnlen(tok, KEY_TOKEN_LEN + 1) != KEY_TOKEN_LEN)
        return false;
    if (memcmp(tok, KEY_PREFIX, 4) != 0 || tok[4 + KEY_ID_LEN] != '_')
        return false;
    for (size_t i = 4; i < KEY_TOKEN_LEN; i++) {
        if (i != 4 + KEY_ID_LEN && !is_base62(tok[i]))
            return false;
    }
    memcpy(id, tok + 4, KEY_ID_LEN);
    id[KEY_ID_LEN] = '\0';
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Mutations: read-modify-write under mutate + flock
 * ---------------------------------------------------------------------------------------- */

/* Takes the mutate mutex and the file lock, then reloads keys.json into *cur. On success the
 * caller ends with mutation_end(). */
static int mutation_begin(struct keystore *ks, int *lock_fd, struct key_set *cur,
                          struct file_ident *ident, struct err *e)
{
    pthread_mutex_lock(&ks->mutate);
    int fd = open(ks->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int rc = err_set(e, INF_EIO, "%s: %s", ks->lock_path, strerror(errno));
        pthread_mutex_unlock(&ks->mutate);
        return rc;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            int rc = err_set(e, INF_EIO, "lock %s: %s", ks->lock_path, strerror(errno));
            close(fd);
            pthread_mutex_unlock(&ks->mutate);
            return rc;
        }
    }
    int rc = key_set_load(ks->path, cur, ident, e);
    if (rc != 0) {
        key_set_free(cur);
        close(fd); /* drops the flock */
        pthread_mutex_unlock(&ks->mutate);
        return rc;
    }
    *lock_fd = fd;
    return INF_OK;
}

/*
 * Writes cur (if write) and installs it as the live set while the flock is still held, so no
 * other writer's newer version can be overwritten in memory by this older one. Then drops the
 * locks. Frees cur.
 */
static int mutation_end(struct keystore *ks, int lock_fd, struct key_set *cur,
                        struct file_ident *ident, bool write, struct err *e)
{
    int rc = INF_OK;
    char *text = NULL;
    size_t len = 0;
    if (write) {
        rc = key_set_dump(cur, &text, &len, e);
        if (rc == 0)
            rc = fs_write_atomic(ks->path, text, len, 0600, e);
        if (rc == 0)
            file_ident_get(ks->path, ident);
    }
    if (rc == 0) {
        pthread_rwlock_wrlock(&ks->rw);
        install_locked(ks, cur, ident);
        pthread_rwlock_unlock(&ks->rw);
    }
    key_set_free(cur);
    free(text);
    close(lock_fd);
    pthread_mutex_unlock(&ks->mutate);
    return rc;
}

int keystore_create(struct keystore *ks, const char *name, unsigned scopes,
                    const struct key_limits *limits, char token_out[KEY_TOKEN_MAX],
                    struct key_info *info_out, struct err *e)
{
    struct key_limits none = {0};
    if (limits == NULL)
        limits = &none;
    if (name == NULL || !name_valid(name, strnlen(name, KEY_NAME_MAX + 1)))
        return err_set(e, INF_EINVAL, "name must be 1 to %d printable ASCII characters",
                       KEY_NAME_MAX);
    if (scopes == 0 || (scopes & ~(unsigned)AUTH_SCOPE_ALL))
        return err_set(e, INF_EINVAL, "scopes must name one or more of infer, train, admin");
    int rc = limits_check(limits, e);
    if (rc != 0)
        return rc;

    struct key_set cur = {0};
    struct file_ident ident;
    struct key_rec r;
    char token[KEY_TOKEN_MAX];
    int lock_fd = -1;
    memset(&r, 0, sizeof r);
    memset(token, 0, sizeof token);
    if ((rc = mutation_begin(ks, &lock_fd, &cur, &ident, e)) != 0)
        return rc;

    if (cur.n >= KEYSTORE_MAX_KEYS) {
        rc = err_set(e, INF_ELIMIT, "the store holds %d keys, the limit", KEYSTORE_MAX_KEYS);
        goto abort;
    }
    /* 62^8 ids: a collision is rare, and a few tries make a repeat practically impossible */
    for (int tries = 0;; tries++) {
        if (tries == 16) {
            rc = err_set(e, INF_EIO, "could not draw an unused key id");
            goto abort;
        }
        if (random_base62(r.info.id, KEY_ID_LEN) != 0) {
            rc = err_set(e, INF_EIO, "the OS random generator failed");
            goto abort;
        }
        r.info.id[KEY_ID_LEN] = '\0';
        if (key_set_find(&cur, r.info.id) == NULL)
            break;
    }
    memcpy(token, KEY_PREFIX, 4);
    memcpy(token + 4, r.info.id, KEY_ID_LEN);
    token[4 + KEY_ID_LEN] = '_';
    if (random_base62(token + 5 + KEY_ID_LEN, KEY_SECRET_LEN) != 0) {
        rc = err_set(e, INF_EIO, "the OS random generator failed");
        goto abort;
    }
    token[KEY_TOKEN_LEN] = '\0';
    if (!key_hmac(ks, token, KEY_TOKEN_LEN, r.hash)) {
        rc = err_set(e, INF_EIO, "HMAC-SHA256 failed");
        goto abort;
    }
    memcpy(r.info.name, name, strlen(name) + 1);
    r.info.scopes = scopes;
    r.info.limits = *limits;
    r.info.created_at = (int64_t)time(NULL);
    if ((rc = key_set_push(&cur, &r, e)) != 0)
        goto abort;
    rc = mutation_end(ks, lock_fd, &cur, &ident, true, e);
    if (rc == 0) {
        memcpy(token_out, token, KEY_TOKEN_LEN + 1);
        if (info_out != NULL)
            *info_out = r.info;
        log_msg(LOG_INFO, "keys: created key %s", r.info.id);
    }
    goto out;
abort:
    mutation_end(ks, lock_fd, &cur, &ident, false, NULL);
out:
    OPENSSL_cleanse(token, sizeof token);
    OPENSSL_cleanse(&r, sizeof r);
    return rc;
}

int keystore_revoke(struct keystore *ks, const char *id, struct err *e)
{
    if (id == NULL || strnlen(id, KEY_ID_LEN + 1) != KEY_ID_LEN || !id_valid(id))
        return err_set(e, INF_ENOTFOUND, "no key with that id");
    struct key_set cur = {0};
    struct file_ident ident;
    int lock_fd = -1;
    int rc = mutation_begin(ks, &lock_fd, &cur, &ident, e);
    if (rc != 0)
        return rc;
    struct key_rec *r = key_set_find(&cur, id);
    if (r == NULL) {
        err_set(e, INF_ENOTFOUND, "no key with id %s", id);
        mutation_end(ks, lock_fd, &cur, &ident, false, NULL);
        return INF_ENOTFOUND;
    }
    bool write = !r->info.revoked;
    if (write) {
        r->info.revoked = true;
        r->info.revoked_at = (int64_t)time(NULL);
    }
    rc = mutation_end(ks, lock_fd, &cur, &ident, write, e);
    if (rc == 0 && write)
        log_msg(LOG_INFO, "keys: revoked key %s", id);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Reads
 * ---------------------------------------------------------------------------------------- */

int keystore_list(struct keystore *ks, struct key_info **out, size_t *n, struct err *e)
{
    int rc = INF_OK;
    keystore_refresh(ks);
    pthread_rwlock_rdlock(&ks->rw);
    struct key_info *v = NULL;
    size_t count = ks->set.n, bytes;
    if (count > 0) {
        if (!size_mul_ok(count, sizeof *v, &bytes) || (v = malloc(bytes)) == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory listing %zu keys", count);
            goto out;
        }
        for (size_t i = 0; i < count; i++)
            v[i] = ks->set.v[i].info;
    }
    *out = v;
    *n = count;
out:
    pthread_rwlock_unlock(&ks->rw);
    return rc;
}

int keystore_get(struct keystore *ks, const char *id, struct key_info *out)
{
    if (id == NULL || strnlen(id, KEY_ID_LEN + 1) != KEY_ID_LEN)
        return INF_ENOTFOUND;
    keystore_refresh(ks);
    pthread_rwlock_rdlock(&ks->rw);
    const struct key_rec *r = key_set_find(&ks->set, id);
    if (r != NULL)
        *out = r->info;
    pthread_rwlock_unlock(&ks->rw);
    return r != NULL ? INF_OK : INF_ENOTFOUND;
}

size_t keystore_count(struct keystore *ks)
{
    size_t n = 0;
    keystore_refresh(ks);
    pthread_rwlock_rdlock(&ks->rw);
    for (size_t i = 0; i < ks->set.n; i++)
        n += !ks->set.v[i].info.revoked;
    pthread_rwlock_unlock(&ks->rw);
    return n;
}

enum auth_result keystore_verify(struct keystore *ks, const char *authorization,
                                 struct principal *p, char key_id_out[KEY_ID_LEN + 1])
{
    char id[KEY_ID_LEN + 1];
    uint8_t mac[HASH_LEN];
    atomic_fetch_add_explicit(&ks->n_verifies, 1, memory_order_relaxed);
    if (key_id_out != NULL)
        key_id_out[0] = '\0';
    if (authorization == NULL || authorization[0] == '\0')
        return AUTH_MISSING;
    /* The scheme is case-insensitive (RFC 7235: "bearer" from some clients is fine), then
     * exactly one space and the token with nothing around it. */
    if (strncasecmp(authorization, BEARER, sizeof BEARER - 1) != 0)
        return AUTH_MALFORMED;
    const char *tok = authorization + sizeof BEARER - 1;
    if (!token_parse(tok, id))
        return AUTH_MALFORMED;
    if (key_id_out != NULL)
        memcpy(key_id_out, id, KEY_ID_LEN + 1);

    keystore_refresh(ks);
    bool mac_ok = key_hmac(ks, tok, KEY_TOKEN_LEN, mac);

    enum auth_result res;
    pthread_rwlock_rdlock(&ks->rw);
    const struct key_rec *r = key_set_find(&ks->set, id);
    /* same work whether or not the id exists: compare against the dummy hash */
    int diff = CRYPTO_memcmp(mac, r != NULL ? r->hash : ks->dummy_hash, HASH_LEN);
    atomic_fetch_add_explicit(&ks->n_compares, 1, memory_order_relaxed);
    if (!mac_ok)
        res = AUTH_ERROR;
    else if (r == NULL)
        res = AUTH_UNKNOWN;
    else if (diff != 0)
        res = AUTH_BAD_SECRET;
    else if (r->info.revoked)
        res = AUTH_REVOKED;
    else
        res = AUTH_OK;
    if (res == AUTH_OK && p != NULL) {
        memcpy(p->key_id, id, KEY_ID_LEN + 1);
        p->scopes = auth_scopes_effective(r->info.scopes);
        limits_merge(ks->defaults, r->info.scopes, &r->info.limits, &p->limits);
    }
    pthread_rwlock_unlock(&ks->rw);
    OPENSSL_cleanse(mac, sizeof mac);
    return res;
}

void keystore_stats_get(struct keystore *ks, struct keystore_stats *out)
{
    out->verifies = atomic_load_explicit(&ks->n_verifies, memory_order_relaxed);
    out->hmacs = atomic_load_explicit(&ks->n_hmacs, memory_order_relaxed);
    out->compares = atomic_load_explicit(&ks->n_compares, memory_order_relaxed);
    out->reloads = atomic_load_explicit(&ks->n_reloads, memory_order_relaxed);
}
