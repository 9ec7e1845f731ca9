/*
 * server/files.c - the file store behind /v1/files: training files sealed at rest, their
 * metadata beside them, an in-memory index, and the validation of training JSONL. See files.h.
 *
 * The index is an array kept sorted oldest first by (created_at, seq): lists walk it in either
 * direction, lookups scan it (a few thousand files at most per data dir; a scan is cheaper
 * than keeping a second structure right). The mutex guards the index and the seq counter only;
 * sealing, reading and unlinking happen outside it.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "common/json_dump.h"
#include "dataset.h"
#include "files.h"

#define FILE_SEAL_PURPOSE "file"
#define FILE_META_MAX     (64u << 10) /* a metadata file is a few hundred bytes */
#define FILE_PATH_MAX     4352        /* data dir (4096) + "/files/" + id + ".json" */
#define TENSOR_RANK_MAX   8
_Static_assert(OIP_FAST_MAX_RANK <= TENSOR_RANK_MAX, "the fast path must not accept deeper data");

struct file_entry {
    struct file_info info;
    uint64_t seq;
};

struct file_store {
    char dir[FILE_PATH_MAX];
    const struct master_key *mk; /* borrowed */
    pthread_mutex_t lock;        /* guards v, n, cap, next_seq */
    struct file_entry *v;        /* sorted by (created_at, seq), oldest first */
    size_t n, cap;
    uint64_t next_seq;
};

/* ------------------------------------------------------------------------------------------
 * Ids and names
 * ---------------------------------------------------------------------------------------- */

static const char base62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static bool is_base62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

bool file_id_valid(const char *id)
{
    if (id == NULL || strncmp(id, "file-", 5) != 0 || strlen(id) != FILE_ID_LEN)
        return false;
    for (size_t i = 5; i < FILE_ID_LEN; i++)
        if (!is_base62(id[i]))
            return false;
    return true;
}

/* "file-" + 24 uniform base62 characters: bytes >= 248 (4 * 62) are rejected so that % 62 has
 * no bias. */
static int file_id_new(char out[FILE_ID_MAX], struct err *e)
{
    unsigned char buf[48];
    size_t i = 0;
    memcpy(out, "file-", 5);
    while (i < FILE_ID_LEN - 5) {
        if (RAND_bytes(buf, (int)sizeof buf) != 1)
            return err_set(e, INF_EIO, "the random generator failed");
        for (size_t k = 0; k < sizeof buf && i < FILE_ID_LEN - 5; k++)
            if (buf[k] < 248)
                out[5 + i++] = base62[buf[k] % 62];
    }
    out[FILE_ID_LEN] = '\0';
    return INF_OK;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0. Overlong forms and
 * surrogates are invalid. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t k = p[0] < 0x80           ? 1
               : (p[0] >> 5) == 0x6  ? 2
               : (p[0] >> 4) == 0xe  ? 3
               : (p[0] >> 3) == 0x1e ? 4
                                     : 0;
    if (k == 0 || k > n || (k == 2 && p[0] < 0xc2) || (k == 4 && p[0] > 0xf4))
        return 0;
    for (size_t i = 1; i < k; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if (k == 3 && ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] >= 0xa0)))
        return 0;
    if (k == 4 && ((p[0] == 0xf0 && p[1] < 0x90) || (p[0] == 0xf4 && p[1] >= 0x90)))
        return 0;
    return k;
}

/* The client's filename as stored: valid UTF-8 (a bad byte becomes '?'), control characters
 * as '?', cut to FILE_NAME_MAX bytes without splitting a character. */
static void filename_clean(const char *in, char out[FILE_NAME_MAX + 1])
{
    const unsigned char *p = (const unsigned char *)(in ? in : "");
    size_t n = strlen((const char *)p), o = 0;
    while (n > 0) {
        size_t k = utf8_seq(p, n);
        if (k == 0 || (k == 1 && (p[0] < 0x20 || p[0] == 0x7f))) {
            if (o + 1 > FILE_NAME_MAX)
                break;
            out[o++] = '?';
            k = k ? k : 1;
        } else {
            if (o + k > FILE_NAME_MAX)
                break;
            memcpy(out + o, p, k);
            o += k;
        }
        p += k;
        n -= k;
    }
    out[o] = '\0';
}

/* ------------------------------------------------------------------------------------------
 * Validation of training files
 * ---------------------------------------------------------------------------------------- */

/* The shape of a nested array along its first elements; -1 too deep, -2 an empty array. */
static int tensor_shape(const json_t *v, size_t shape[TENSOR_RANK_MAX], int *rank)
{
    int r = 0;
    while (json_is_array(v)) {
        if (r == TENSOR_RANK_MAX)
            return -1;
        shape[r] = json_array_size(v);
        if (shape[r] == 0)
            return -2;
        r++;
        v = json_array_get(v, 0);
    }
    *rank = r;
    return 0;
}

/* Is v exactly a shape[d..rank) array of numbers? */
static bool tensor_fits(const json_t *v, const size_t *shape, int rank, int d)
{
    if (d == rank)
        return json_is_number(v);
    if (!json_is_array(v) || json_array_size(v) != shape[d])
        return false;
    for (size_t i = 0; i < shape[d]; i++)
        if (!tensor_fits(json_array_get(v, i), shape, rank, d + 1))
            return false;
    return true;
}

/* Checks a tensor value (rank >= 1 when need_array) and counts its values into *count. */
static int tensor_check(const json_t *v, const char *what, size_t lineno, size_t *count,
                        struct err *e)
{
    size_t shape[TENSOR_RANK_MAX];
    int rank = 0;
    int r = tensor_shape(v, shape, &rank);
    if (r == -1)
        return err_set(e, INF_EINVAL, "line %zu: %s: arrays nested deeper than %d", lineno, what,
                       TENSOR_RANK_MAX);
    if (r == -2)
        return err_set(e, INF_EINVAL, "line %zu: %s: an empty array", lineno, what);
    if (rank == 0 || !tensor_fits(v, shape, rank, 0))
        return err_set(e, INF_EINVAL,
                       "line %zu: %s: expected numbers in an array (nested arrays must be "
                       "rectangular and hold only numbers)",
                       lineno, what);
    size_t c = 1;
    for (int i = 0; i < rank; i++)
        c *= shape[i]; /* cannot overflow: every value took bytes of the line */
    *count = c;
    return INF_OK;
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
        case JSON_OBJECT:
            return "an object";
        case JSON_ARRAY:
            return "an array";
        case JSON_STRING:
            return "a string";
        case JSON_INTEGER:
        case JSON_REAL:
            return "a number";
        case JSON_TRUE:
        case JSON_FALSE:
            return "a boolean";
        default:
            return "null";
    }
}

/* What the lines seen so far agree on; 0 fields are "not seen yet". */
struct train_shape {
    int kind; /* 1 label, 2 target */
    size_t kind_line;
    int input; /* 1 text, 2 tensor */
    size_t input_line;
    size_t input_values; /* tensor inputs */
    size_t target_values;
    size_t target_line;
};

/* Checks one line's object. pre_values > 0: the "input" array was already checked and
 * counted by the fast path (obj's "input" is then []). */
static int line_check(const json_t *obj, size_t pre_values, size_t lineno, struct train_shape *sh,
                      struct err *e)
{
    if (!json_is_object(obj))
        return err_set(e, INF_EINVAL, "line %zu: expected a JSON object, not %s", lineno,
                       json_kind(obj));
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)obj, key, val)
    {
        if (!dataset_field_known(key))
            return err_set(e, INF_EINVAL,
                           "line %zu: unknown field \"%.64s\" (allowed: input, label or target, "
                           "weight, id, metadata)",
                           lineno, key);
    }
    const json_t *input = json_object_get(obj, "input");
    if (input == NULL)
        return err_set(e, INF_EINVAL, "line %zu: missing \"input\"", lineno);
    int ikind = json_is_string(input) ? 1 : 2;
    size_t ivalues = pre_values;
    if (ikind == 2 && pre_values == 0) {
        if (!json_is_array(input))
            return err_set(e, INF_EINVAL,
                           "line %zu: input: expected a string (text) or an array of numbers, "
                           "not %s",
                           lineno, json_kind(input));
        int rc = tensor_check(input, "input", lineno, &ivalues, e);
        if (rc != INF_OK)
            return rc;
    }
    if (sh->input == 0) {
        sh->input = ikind;
        sh->input_line = lineno;
        sh->input_values = ivalues;
    } else if (sh->input != ikind) {
        return err_set(e, INF_EINVAL, "line %zu: input is %s but on line %zu it is %s", lineno,
                       ikind == 1 ? "text" : "a tensor", sh->input_line,
                       sh->input == 1 ? "text" : "a tensor");
    } else if (ikind == 2 && ivalues != sh->input_values) {
        return err_set(e, INF_EINVAL, "line %zu: input has %zu values but on line %zu it has %zu",
                       lineno, ivalues, sh->input_line, sh->input_values);
    }
    const json_t *label = json_object_get(obj, "label");
    const json_t *target = json_object_get(obj, "target");
    if (label != NULL && target != NULL)
        return err_set(e, INF_EINVAL,
                       "line %zu: has both \"label\" and \"target\"; a file is for a classifier "
                       "(label) or a regressor (target)",
                       lineno);
    if (label == NULL && target == NULL)
        return err_set(e, INF_EINVAL,
                       "line %zu: missing \"label\" (classifier) or \"target\" (regressor)",
                       lineno);
    int kind = label != NULL ? 1 : 2;
    if (sh->kind == 0) {
        sh->kind = kind;
        sh->kind_line = lineno;
    } else if (sh->kind != kind) {
        return err_set(e, INF_EINVAL,
                       "line %zu: has \"%s\" but line %zu has \"%s\"; a file is all labels "
                       "(classifier) or all targets (regressor)",
                       lineno, kind == 1 ? "label" : "target", sh->kind_line,
                       sh->kind == 1 ? "label" : "target");
    }
    if (kind == 1) {
        if (!(json_is_string(label) && json_string_length(label) > 0) &&
            !(json_is_integer(label) && json_integer_value(label) >= 0))
            return err_set(e, INF_EINVAL,
                           "line %zu: label: expected a label string or a class index >= 0, not "
                           "%s",
                           lineno, json_is_integer(label) ? "a negative number" : json_kind(label));
        return INF_OK;
    }
    size_t tvalues = 1;
    if (!json_is_number(target)) {
        if (!json_is_array(target))
            return err_set(e, INF_EINVAL,
                           "line %zu: target: expected a number or an array of numbers, not %s",
                           lineno, json_kind(target));
        int rc = tensor_check(target, "target", lineno, &tvalues, e);
        if (rc != INF_OK)
            return rc;
    }
    if (sh->target_values == 0) {
        sh->target_values = tvalues;
        sh->target_line = lineno;
    } else if (tvalues != sh->target_values) {
        return err_set(e, INF_EINVAL, "line %zu: target has %zu values but on line %zu it has %zu",
                       lineno, tvalues, sh->target_line, sh->target_values);
    }
    return INF_OK;
}

/*
 * The fast path of one line: its "input" array scanned and counted without jansson
 * (oip_fast_extract_member), jansson on the rest. INF_OK: the line is valid and *sh updated;
 * INF_ENOMEM; anything else (INF_ENOTFOUND): the caller checks the line the slow way, whose
 * verdict and message are then the ones reported. A line the fast path accepts the slow path
 * accepts too, with the same count: the scanner's grammar is jansson's and its array
 * rectangular, numeric and at most OIP_FAST_MAX_RANK (<= TENSOR_RANK_MAX) deep. (It is
 * stricter in one respect: numbers beyond FP32, which then go the slow way.)
 */
static int fast_line_check(const char *line, size_t llen, size_t lineno, struct train_shape *sh)
{
    float *vals = NULL;
    size_t n = 0;
    int64_t dims[OIP_FAST_MAX_RANK];
    int rank = 0;
    json_t *obj = NULL;
    int rc = dataset_fast_split(line, llen, llen, &vals, &n, dims, &rank, &obj);
    if (rc != INF_OK)
        return rc;
    free(vals);
    struct err fe = {0};
    struct train_shape before = *sh;
    rc = line_check(obj, n, lineno, sh, &fe);
    json_decref(obj);
    if (rc != INF_OK) {
        *sh = before; /* the slow path checks the line again from the same state */
        return INF_ENOTFOUND;
    }
    return INF_OK;
}

static int validate_training(const char *data, size_t len, const struct file_limits *lim,
                             size_t *n_examples, bool fast, struct err *e)
{
    if (lim->max_bytes > 0 && len > lim->max_bytes)
        return err_set(e, INF_ELIMIT, "the file is %zu bytes, over the limit of %zu", len,
                       lim->max_bytes);
    if (len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0)
        return err_set(e, INF_EINVAL,
                       "line 1: the file starts with a byte order mark (BOM); save it as UTF-8 "
                       "without one");
    struct train_shape sh = {0};
    size_t pos = 0, lineno = 0, n = 0;
    while (pos < len) {
        lineno++;
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t llen = end - pos;
        if (llen > 0 && data[end - 1] == '\r')
            llen--;
        const char *line = data + pos;
        pos = end + 1;
        if (lim->max_line_bytes > 0 && llen > lim->max_line_bytes)
            return err_set(e, INF_ELIMIT, "line %zu: %zu bytes, over the limit of %zu per line",
                           lineno, llen, lim->max_line_bytes);
        bool blank = true;
        for (size_t k = 0; k < llen && blank; k++)
            blank = line[k] == ' ' || line[k] == '\t' || line[k] == '\r';
        if (blank)
            continue;
        if (lim->max_lines > 0 && n == lim->max_lines)
            return err_set(e, INF_ELIMIT, "line %zu: more than %zu examples (the limit)", lineno,
                           lim->max_lines);
        n++;
        int rc = fast ? fast_line_check(line, llen, lineno, &sh) : INF_ENOTFOUND;
        if (rc == INF_OK)
            continue;
        if (rc == INF_ENOMEM)
            return err_set(e, rc, "line %zu: out of memory parsing it", lineno);
        json_error_t je;
        json_t *obj = json_loadb(line, llen, JSON_REJECT_DUPLICATES, &je);
        if (obj == NULL) /* jansson leaves the text empty only when an allocation failed */
            return je.text[0] == '\0'
                       ? err_set(e, INF_ENOMEM, "line %zu: out of memory parsing it", lineno)
                       : err_set(e, INF_EINVAL, "line %zu: invalid JSON at column %d: %s", lineno,
                                 je.column, je.text);
        rc = line_check(obj, 0, lineno, &sh, e);
        json_decref(obj);
        if (rc != INF_OK)
            return rc;
    }
    if (n == 0)
        return err_set(e, INF_EINVAL,
                       len == 0 ? "the file is empty: expected JSONL, one example per line"
                                : "the file holds no examples (only blank lines)");
    if (n_examples != NULL)
        *n_examples = n;
    return INF_OK;
}

int file_validate_training(const char *data, size_t len, const struct file_limits *lim,
                           size_t *n_examples, struct err *e)
{
    return validate_training(data, len, lim, n_examples, true, e);
}

int file_validate_training_reference(const char *data, size_t len, const struct file_limits *lim,
                                     size_t *n_examples, struct err *e)
{
    return validate_training(data, len, lim, n_examples, false, e);
}

/* ------------------------------------------------------------------------------------------
 * The index (callers hold fs->lock)
 * ---------------------------------------------------------------------------------------- */

static bool entry_before(const struct file_entry *a, const struct file_entry *b)
{
    return a->info.created_at != b->info.created_at ? a->info.created_at < b->info.created_at
                                                    : a->seq < b->seq;
}

/* Inserts *ent at its sorted place. */
static int index_insert(struct file_store *fs, const struct file_entry *ent)
{
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 64;
        struct file_entry *nv = realloc(fs->v, cap * sizeof *nv);
        if (nv == NULL)
            return INF_ENOMEM;
        fs->v = nv;
        fs->cap = cap;
    }
    size_t i = fs->n;
    while (i > 0 && entry_before(ent, &fs->v[i - 1]))
        i--;
    memmove(fs->v + i + 1, fs->v + i, (fs->n - i) * sizeof *fs->v);
    fs->v[i] = *ent;
    fs->n++;
    return INF_OK;
}

static bool visible(const struct file_entry *ent, const char *owner, bool admin)
{
    return admin || strcmp(ent->info.owner, owner ? owner : "") == 0;
}

/* The index of the visible file id, or -1. */
static long index_find(const struct file_store *fs, const char *id, const char *owner, bool admin)
{
    if (!file_id_valid(id))
        return -1;
    for (size_t i = 0; i < fs->n; i++)
        if (strcmp(fs->v[i].info.id, id) == 0)
            return visible(&fs->v[i], owner, admin) ? (long)i : -1;
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * Metadata on disk
 * ---------------------------------------------------------------------------------------- */

static int meta_path(const struct file_store *fs, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s.json", fs->dir, id);
    return n > 0 && (size_t)n < cap ? INF_OK : INF_ELIMIT;
}

static int content_path(const struct file_store *fs, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", fs->dir, id);
    return n > 0 && (size_t)n < cap ? INF_OK : INF_ELIMIT;
}

static json_t *meta_json(const struct file_entry *ent)
{
    json_t *o = file_info_json(&ent->info);
    if (o == NULL)
        return NULL;
    json_object_del(o, "status_details");
    json_object_set_new(o, "owner", json_string(ent->info.owner));
    json_object_set_new(o, "seq", json_integer((json_int_t)ent->seq));
    return o;
}

/* Copies a string field of at most cap - 1 bytes; false if absent, not a string or longer. */
static bool str_field(const json_t *o, const char *name, char *out, size_t cap)
{
    const json_t *v = json_object_get(o, name);
    if (!json_is_string(v) || json_string_length(v) >= cap ||
        strlen(json_string_value(v)) != json_string_length(v))
        return false;
    memcpy(out, json_string_value(v), json_string_length(v) + 1);
    return true;
}

/* Loads <dir>/<id>.json into *ent; a message in e on failure. */
static int meta_load(const struct file_store *fs, const char *id, struct file_entry *ent,
                     struct err *e)
{
    char path[FILE_PATH_MAX];
    char *data = NULL;
    size_t len = 0;
    json_t *o = NULL;
    int rc = meta_path(fs, id, path, sizeof path);
    if (rc == INF_OK)
        rc = fs_read_file(path, FILE_META_MAX, &data, &len, e);
    if (rc != INF_OK)
        goto out;
    json_error_t je;
    o = json_loadb(data, len, 0, &je);
    if (o == NULL && je.text[0] == '\0') { /* jansson: an allocation failed */
        rc = err_set(e, INF_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    memset(ent, 0, sizeof *ent);
    const json_t *bytes = json_object_get(o, "bytes"), *created = json_object_get(o, "created_at"),
                 *seq = json_object_get(o, "seq");
    if (!json_is_object(o) || !str_field(o, "id", ent->info.id, sizeof ent->info.id) ||
        strcmp(ent->info.id, id) != 0 ||
        !str_field(o, "filename", ent->info.filename, sizeof ent->info.filename) ||
        !str_field(o, "purpose", ent->info.purpose, sizeof ent->info.purpose) ||
        !str_field(o, "owner", ent->info.owner, sizeof ent->info.owner) ||
        !json_is_integer(bytes) || json_integer_value(bytes) < 0 || !json_is_integer(created) ||
        !json_is_integer(seq) || json_integer_value(seq) < 0) {
        rc = err_set(e, INF_EINVAL, "%s: not a file's metadata", path);
        goto out;
    }
    ent->info.bytes = (uint64_t)json_integer_value(bytes);
    ent->info.created_at = (int64_t)json_integer_value(created);
    ent->seq = (uint64_t)json_integer_value(seq);
    rc = INF_OK;
out:
    json_decref(o);
    free(data);
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * The store
 * ---------------------------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Moves a file whose metadata is damaged aside: <id>.json and <id> become
 * <id>.json.corrupt-<ts> and <id>.corrupt-<ts>, kept for a human, never loaded or removed as
 * orphans (neither name is a file id). */
static void quarantine(struct file_store *fs, const char *id, const char *why)
{
    char from[FILE_PATH_MAX], to[FILE_PATH_MAX + 32];
    long long ts = (long long)time(NULL);
    log_msg(LOG_ERROR, "files: skipped %s.json: %s; damaged: quarantined as %s.corrupt-%lld", id,
            why, id, ts);
    if (content_path(fs, id, from, sizeof from) == INF_OK) {
        snprintf(to, sizeof to, "%s.corrupt-%lld", from, ts);
        if (rename(from, to) != 0 && errno != ENOENT)
            log_msg(LOG_ERROR, "files: cannot move %s aside: %s", from, strerror(errno));
    }
    if (meta_path(fs, id, from, sizeof from) == INF_OK) {
        snprintf(to, sizeof to, "%s.corrupt-%lld", from, ts);
        if (rename(from, to) != 0)
            log_msg(LOG_ERROR, "files: cannot move %s aside: %s", from, strerror(errno));
    }
    fs_fsync_dir(fs->dir, NULL);
}

/* Removes content files without metadata (a crash between the two writes, or during a
 * delete) and the temporaries of writers. */
static void orphans_remove(struct file_store *fs)
{
    DIR *d = opendir(fs->dir);
    if (d == NULL)
        return;
    struct dirent *de;
    bool removed = false;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        char path[FILE_PATH_MAX];
        bool tmp = strncmp(name, "file-", 5) == 0 && strstr(name, ".tmp.") != NULL;
        /* An orphan has no metadata file at all: content whose metadata exists but did not
         * load is kept for a human to look at. */
        char mpath[FILE_PATH_MAX];
        bool orphan = file_id_valid(name) && index_find(fs, name, NULL, true) < 0 &&
                      meta_path(fs, name, mpath, sizeof mpath) == INF_OK &&
                      access(mpath, F_OK) != 0 && errno == ENOENT;
        if (!tmp && !orphan)
            continue;
        if (content_path(fs, name, path, sizeof path) != INF_OK)
            continue;
        if (unlink(path) == 0) {
            removed = true;
            log_msg(LOG_INFO, "files: removed %s %s", tmp ? "temporary" : "orphan", name);
        }
    }
    closedir(d);
    if (removed)
        fs_fsync_dir(fs->dir, NULL);
}

struct file_store *file_store_open(const char *data_dir, const struct master_key *mk, struct err *e)
{
    struct file_store *fs = calloc(1, sizeof *fs);
    DIR *d = NULL;
    if (fs == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&fs->lock, NULL);
    fs->mk = mk;
    if (fs_path_join(fs->dir, sizeof fs->dir, data_dir, "files", e) != INF_OK ||
        fs_mkdir_p(fs->dir, 0700, e) != INF_OK)
        goto fail;
    if ((d = opendir(fs->dir)) == NULL) {
        err_set(e, INF_EIO, "%s: %s", fs->dir, strerror(errno));
        goto fail;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        char id[FILE_ID_MAX];
        size_t n = strlen(de->d_name);
        if (!ends_with(de->d_name, ".json") || n - 5 != FILE_ID_LEN)
            continue;
        memcpy(id, de->d_name, FILE_ID_LEN);
        id[FILE_ID_LEN] = '\0';
        if (!file_id_valid(id))
            continue;
        struct file_entry ent;
        struct err le = {0};
        int mrc = meta_load(fs, id, &ent, &le);
        if (mrc == INF_EINVAL) {
            quarantine(fs, id, le.msg);
            continue;
        }
        if (mrc != INF_OK) {
            log_msg(LOG_WARN, "files: skipped %s: %s", de->d_name, le.msg);
            continue;
        }
        char path[FILE_PATH_MAX];
        if (content_path(fs, id, path, sizeof path) == INF_OK && access(path, F_OK) != 0)
            log_msg(LOG_WARN, "files: %s has metadata but no content; reading it will fail", id);
        if (index_insert(fs, &ent) != INF_OK) {
            err_set(e, INF_ENOMEM, "out of memory");
            goto fail;
        }
        if (ent.seq >= fs->next_seq)
            fs->next_seq = ent.seq + 1;
    }
    closedir(d);
    d = NULL;
    orphans_remove(fs);
    return fs;
fail:
    if (d != NULL)
        closedir(d);
    file_store_free(fs);
    return NULL;
}

void file_store_free(struct file_store *fs)
{
    if (fs == NULL)
        return;
    pthread_mutex_destroy(&fs->lock);
    free(fs->v);
    free(fs);
}

int file_store_put(struct file_store *fs, const char *filename, const char *purpose,
                   const char *owner, const void *data, size_t len, struct file_info *out,
                   struct err *e)
{
    struct file_entry ent;
    memset(&ent, 0, sizeof ent);
    char cpath[FILE_PATH_MAX], mpath[FILE_PATH_MAX];
    char *meta = NULL;
    bool sealed = false;
    filename_clean(filename, ent.info.filename);
    snprintf(ent.info.purpose, sizeof ent.info.purpose, "%s", purpose);
    snprintf(ent.info.owner, sizeof ent.info.owner, "%s", owner ? owner : "");
    ent.info.bytes = len;
    ent.info.created_at = (int64_t)time(NULL);
    int rc;
    pthread_mutex_lock(&fs->lock);
    do /* 143 random bits: a collision is not expected, but costs nothing to rule out */
        rc = file_id_new(ent.info.id, e);
    while (rc == INF_OK && index_find(fs, ent.info.id, NULL, true) >= 0);
    ent.seq = fs->next_seq++;
    pthread_mutex_unlock(&fs->lock);
    if (rc != INF_OK)
        return rc;
    if (content_path(fs, ent.info.id, cpath, sizeof cpath) != INF_OK ||
        meta_path(fs, ent.info.id, mpath, sizeof mpath) != INF_OK) {
        rc = err_set(e, INF_EIO, "the data directory path is too long");
        goto out;
    }
    /* Content first (sealed, fsynced, renamed into place), then the metadata that makes the
     * file exist: a crash in between leaves an orphan that the next open removes. */
    rc = seal_file_write(cpath, fs->mk, FILE_SEAL_PURPOSE, ent.info.id, data, len, 0600, e);
    if (rc != INF_OK)
        goto out;
    sealed = true;
    json_t *mj = meta_json(&ent);
    meta = mj ? json_dump_checked(mj, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(mj);
    if (meta == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    rc = fs_write_atomic(mpath, meta, strlen(meta), 0600, e);
    if (rc != INF_OK)
        goto out;
    pthread_mutex_lock(&fs->lock);
    rc = index_insert(fs, &ent);
    pthread_mutex_unlock(&fs->lock);
    if (rc != INF_OK) {
        unlink(mpath);
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    *out = ent.info;
out:
    if (rc != INF_OK && sealed)
        unlink(cpath);
    free(meta);
    return rc;
}

int file_store_get(struct file_store *fs, const char *id, const char *owner, bool admin,
                   struct file_info *out)
{
    pthread_mutex_lock(&fs->lock);
    long i = index_find(fs, id, owner, admin);
    if (i >= 0)
        *out = fs->v[i].info;
    pthread_mutex_unlock(&fs->lock);
    return i >= 0 ? INF_OK : INF_ENOTFOUND;
}

int file_store_read(struct file_store *fs, const char *id, const char *owner, bool admin,
                    char **data, size_t *len, struct err *e)
{
    struct file_info info;
    if (file_store_get(fs, id, owner, admin, &info) != INF_OK)
        return err_set(e, INF_ENOTFOUND, "no file with id %.40s", id);
    char path[FILE_PATH_MAX];
    if (content_path(fs, info.id, path, sizeof path) != INF_OK)
        return err_set(e, INF_EIO, "the data directory path is too long");
    uint8_t *buf = NULL;
    size_t n = 0;
    /* The cap is the recorded size: the sealed file's size says how much plaintext it holds,
     * so a file grown on disk fails before anything is decrypted. */
    struct err le = {0};
    int rc =
        seal_file_read(path, fs->mk, FILE_SEAL_PURPOSE, info.id, (size_t)info.bytes, &buf, &n, &le);
    if (rc == INF_ENOTFOUND) {
        /* Deleted in the meantime, or its content is missing from disk. */
        if (file_store_get(fs, id, owner, admin, &info) != INF_OK)
            return err_set(e, INF_ENOTFOUND, "no file with id %.40s", id);
        return err_set(e, INF_EIO, "the content of file %s is missing from the data directory",
                       info.id);
    }
    if (rc == INF_ELIMIT || (rc == INF_OK && n != info.bytes)) {
        if (buf != NULL)
            OPENSSL_cleanse(buf, n);
        free(buf);
        return err_set(e, INF_EINVAL,
                       "the content of file %s does not match its recorded size of %llu bytes "
                       "(altered on disk)",
                       info.id, (unsigned long long)info.bytes);
    }
    if (rc != INF_OK) {
        /* The inner message names paths of the data directory: the log gets it, the client
         * a plain one. */
        log_msg(LOG_ERROR, "files: reading %s: %s", info.id, le.msg);
        if (rc == INF_EINVAL)
            return err_set(e, rc,
                           "the content of file %s failed authentication (altered on disk, or "
                           "another master key): it is not served",
                           info.id);
        return err_set(e, rc, "the content of file %s cannot be read (%s)", info.id,
                       inf_status_str(rc));
    }
    *data = (char *)buf;
    *len = n;
    return INF_OK;
}

int file_store_delete(struct file_store *fs, const char *id, const char *owner, bool admin,
                      struct err *e)
{
    char mpath[FILE_PATH_MAX], cpath[FILE_PATH_MAX];
    pthread_mutex_lock(&fs->lock);
    long i = index_find(fs, id, owner, admin);
    struct file_entry ent;
    if (i >= 0) {
        ent = fs->v[i];
        memmove(fs->v + i, fs->v + i + 1, (fs->n - (size_t)i - 1) * sizeof *fs->v);
        fs->n--;
    }
    pthread_mutex_unlock(&fs->lock);
    if (i < 0)
        return err_set(e, INF_ENOTFOUND, "no file with id %.40s", id);
    /* Gone from the index first, so no new reader finds it; then from disk. */
    if (meta_path(fs, ent.info.id, mpath, sizeof mpath) != INF_OK ||
        content_path(fs, ent.info.id, cpath, sizeof cpath) != INF_OK)
        return err_set(e, INF_EIO, "the data directory path is too long");
    if (unlink(mpath) != 0 && errno != ENOENT) {
        int saved = errno;
        pthread_mutex_lock(&fs->lock);
        int rc = index_insert(fs, &ent);
        pthread_mutex_unlock(&fs->lock);
        if (rc != INF_OK)
            log_msg(LOG_ERROR, "files: %s stays on disk but fell out of the index", ent.info.id);
        return err_set(e, INF_EIO, "cannot remove file %s: %s", ent.info.id, strerror(saved));
    }
    if (unlink(cpath) != 0 && errno != ENOENT)
        log_msg(LOG_ERROR, "files: cannot remove the content of %s (%s); removed at next start",
                ent.info.id, strerror(errno));
    struct err le = {0};
    if (fs_fsync_dir(fs->dir, &le) != INF_OK)
        log_msg(LOG_WARN, "files: %s", le.msg);
    return INF_OK;
}

int file_store_list(struct file_store *fs, const char *owner, bool admin, const char *purpose,
                    bool ascending, const char *after, size_t limit, struct file_info **out,
                    size_t *n, bool *has_more, struct err *e)
{
    if (limit < 1 || limit > 10000)
        return err_set(e, INF_EINVAL, "limit must be in 1..10000");
    struct file_info *res = NULL;
    size_t count = 0;
    bool more = false;
    int rc = INF_OK;
    pthread_mutex_lock(&fs->lock);
    /* Walk from the start in the chosen direction, or from just past the cursor. */
    long start = ascending ? 0 : (long)fs->n - 1, step = ascending ? 1 : -1;
    if (after != NULL) {
        long c = index_find(fs, after, owner, admin);
        if (c < 0) {
            rc = err_set(e, INF_ENOTFOUND, "after: no file with id %.40s", after);
            goto out;
        }
        start = c + step;
    }
    size_t want = limit < fs->n ? limit : fs->n;
    if (want > 0 && (res = malloc(want * sizeof *res)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    for (long i = start; i >= 0 && i < (long)fs->n; i += step) {
        const struct file_entry *ent = &fs->v[i];
        if (!visible(ent, owner, admin) ||
            (purpose != NULL && strcmp(ent->info.purpose, purpose) != 0))
            continue;
        if (count == limit) {
            more = true;
            break;
        }
        res[count++] = ent->info;
    }
out:
    pthread_mutex_unlock(&fs->lock);
    if (rc != INF_OK) {
        free(res);
        return rc;
    }
    if (count == 0) {
        free(res);
        res = NULL;
    }
    *out = res;
    *n = count;
    *has_more = more;
    return INF_OK;
}

json_t *file_info_json(const struct file_info *info)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:n}", "id", info->id, "object", "file", "bytes",
                     (json_int_t)info->bytes, "created_at", (json_int_t)info->created_at,
                     "filename", info->filename, "purpose", info->purpose, "status", "processed",
                     "status_details");
}
