/*
 * server/registry.c - model versions from the repository and the data dir, hot reload,
 * reference counting.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "metrics.h"
#include "registry.h"

/* One (name, version) the registry knows of: loaded, failed, or unloaded by the API. */
struct reg_entry {
    char name[REGISTRY_NAME_MAX + 1];
    int version;
    struct model_version *live; /* serving copy (the registry's reference), or NULL */
    bool failed;
    char error[ERR_MSG_MAX];
    bool unloaded; /* unloaded through the API: scans leave it alone until the next load */
    bool seen;     /* scratch for registry_scan */
};

struct registry {
    struct registry_config cfg;
    char *models_dir, *data_dir;
    struct metrics *metrics;
    pthread_mutex_t scan_lock; /* serializes scans and API loads (slow, disk) */
    pthread_mutex_t lock;      /* guards entries; never held while loading from disk */
    struct reg_entry *entries;
    size_t n, cap;
};

/* ------------------------------------------------------------------------------------------
 * Versions
 * ---------------------------------------------------------------------------------------- */

static void version_destroy(struct model_version *v)
{
    batcher_free(v->batcher);
    model_free(v->model);
    free(v);
}

void model_version_release(struct model_version *v)
{
    if (v != NULL && atomic_fetch_sub(&v->refs, 1) == 1)
        version_destroy(v);
}

static struct model_version *version_ref(struct model_version *v)
{
    atomic_fetch_add(&v->refs, 1);
    return v;
}

static long long mtime_ns(const char *dir)
{
    char path[4200];
    long long best = 0;
    const char *files[] = {"model.json", "weights.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        if (stat(path, &st) == 0) {
            long long t = timespec_ns(&st.st_mtim);
            if (t > best)
                best = t;
        }
    }
    return best;
}

static struct model_version *version_load(struct registry *r, const char *name, int version,
                                          const char *dir, struct err *e)
{
    struct model_version *v = calloc(1, sizeof *v);
    if (v == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        return NULL;
    }
    snprintf(v->name, sizeof v->name, "%s", name);
    snprintf(v->source, sizeof v->source, "%s", dir);
    v->version = version;
    atomic_init(&v->refs, 1);
    v->mtime_ns = mtime_ns(dir);
    v->model = model_load(dir, e);
    if (v->model == NULL)
        goto fail;
    struct batcher_config bc = r->cfg.batch;
    const struct model_serving *sv = &model_get_info(v->model)->serving;
    if (sv->max_batch_size > 0)
        bc.max_batch = sv->max_batch_size;
    if (sv->max_batch_delay_us > 0)
        bc.max_delay_us = sv->max_batch_delay_us;
    v->batcher = batcher_new(v->model, &bc, r->metrics, name, e);
    if (v->batcher == NULL)
        goto fail;
    return v;
fail:
    version_destroy(v);
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * Entries (registry lock held)
 * ---------------------------------------------------------------------------------------- */

static struct reg_entry *entry_find(struct registry *r, const char *name, int version)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->entries[i].version == version && strcmp(r->entries[i].name, name) == 0)
            return &r->entries[i];
    return NULL;
}

static struct reg_entry *entry_get(struct registry *r, const char *name, int version)
{
    struct reg_entry *en = entry_find(r, name, version);
    if (en != NULL)
        return en;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct reg_entry *ne = realloc(r->entries, cap * sizeof *ne);
        if (ne == NULL)
            return NULL;
        r->entries = ne;
        r->cap = cap;
    }
    struct reg_entry fresh = {0};
    snprintf(fresh.name, sizeof fresh.name, "%s", name);
    fresh.version = version;
    r->entries[r->n] = fresh;
    return &r->entries[r->n++];
}

/* Installs a freshly loaded version (or records a failure) and publishes metrics. */
static void entry_install(struct registry *r, const char *name, int version,
                          struct model_version *v, const struct err *e)
{
    struct model_version *old = NULL;
    pthread_mutex_lock(&r->lock);
    struct reg_entry *en = entry_get(r, name, version);
    if (en != NULL) {
        if (v != NULL) {
            old = en->live;
            en->live = v;
            en->failed = false;
            en->error[0] = '\0';
            en->unloaded = false;
        } else {
            en->failed = true;
            snprintf(en->error, sizeof en->error, "%s", e->msg);
        }
    } else {
        old = v; /* out of memory for the table: drop the new version */
    }
    pthread_mutex_unlock(&r->lock);
    model_version_release(old);
    if (r->metrics != NULL)
        metrics_observe_load(r->metrics, name, v != NULL);
    if (v != NULL)
        log_msg(LOG_INFO, "model %s version %d loaded from %s", name, version, v->source);
    else
        log_msg(LOG_ERROR, "model %s version %d failed to load: %s", name, version, e->msg);
}

static void publish_counts(struct registry *r)
{
    size_t loaded, failed;
    registry_counts(r, &loaded, &failed);
    if (r->metrics != NULL)
        metrics_set_models(r->metrics, loaded, failed);
}

/* ------------------------------------------------------------------------------------------
 * Names and stores
 * ---------------------------------------------------------------------------------------- */

bool registry_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > REGISTRY_NAME_MAX || name[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

static bool parse_version(const char *s, int *out)
{
    if (*s < '1' || *s > '9' || strlen(s) > 9)
        return false;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (*s - '0');
    }
    *out = (int)v;
    return true;
}

static bool has_model_json(const char *dir)
{
    char path[4400];
    struct stat st;
    snprintf(path, sizeof path, "%s/model.json", dir);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* A version found on disk. */
struct found {
    char name[REGISTRY_NAME_MAX + 1];
    int version;
    char dir[4096];
};

struct found_list {
    struct found *v;
    size_t n, cap;
};

static void found_add(struct found_list *l, const char *name, int version, const char *dir)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].version == version && strcmp(l->v[i].name, name) == 0) {
            snprintf(l->v[i].dir, sizeof l->v[i].dir, "%s", dir); /* later store wins */
            return;
        }
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        struct found *nv = realloc(l->v, cap * sizeof *nv);
        if (nv == NULL)
            return;
        l->v = nv;
        l->cap = cap;
    }
    struct found *f = &l->v[l->n++];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->version = version;
    snprintf(f->dir, sizeof f->dir, "%s", dir);
}

/* Lists root/<name>[/<version>] into l; only_name restricts to one model (NULL: all). */
static void store_list(const char *root, bool allow_unversioned, const char *only_name,
                       struct found_list *l)
{
    if (root == NULL)
        return;
    DIR *d = opendir(root);
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (!registry_name_valid(name) || (only_name != NULL && strcmp(name, only_name) != 0))
            continue;
        char mdir[4096];
        if (snprintf(mdir, sizeof mdir, "%s/%s", root, name) >= (int)sizeof mdir)
            continue;
        if (allow_unversioned && has_model_json(mdir)) {
            found_add(l, name, 1, mdir);
            continue;
        }
        DIR *vd = opendir(mdir);
        if (vd == NULL)
            continue;
        struct dirent *ve;
        while ((ve = readdir(vd)) != NULL) {
            int version;
            char vdir[4200];
            if (!parse_version(ve->d_name, &version))
                continue;
            snprintf(vdir, sizeof vdir, "%s/%s", mdir, ve->d_name);
            if (has_model_json(vdir))
                found_add(l, name, version, vdir);
        }
        closedir(vd);
    }
    closedir(d);
}

static void stores_list(struct registry *r, const char *only_name, struct found_list *l)
{
    store_list(r->models_dir, true, only_name, l);
    if (r->data_dir != NULL) {
        char root[4096];
        snprintf(root, sizeof root, "%s/models", r->data_dir);
        store_list(root, false, only_name, l);
    }
}

/* ------------------------------------------------------------------------------------------
 * Registry
 * ---------------------------------------------------------------------------------------- */

struct registry *registry_new(const struct registry_config *cfg, struct metrics *metrics,
                              struct err *e)
{
    struct registry *r = calloc(1, sizeof *r);
    if (r == NULL) {
        err_set(e, INF_ENOMEM, "out of memory");
        return NULL;
    }
    r->cfg = *cfg;
    r->metrics = metrics;
    r->models_dir = cfg->models_dir ? strdup(cfg->models_dir) : NULL;
    r->data_dir = cfg->data_dir ? strdup(cfg->data_dir) : NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->scan_lock, NULL);
    return r;
}

void registry_free(struct registry *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n; i++)
        model_version_release(r->entries[i].live);
    free(r->entries);
    free(r->models_dir);
    free(r->data_dir);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->scan_lock);
    free(r);
}

/* Loads l's versions that are new or changed; with prune, drops loaded versions of the
 * listed names (or of all names when only_name is NULL) that l does not hold. */
static int sync_versions(struct registry *r, const struct found_list *l, const char *only_name,
                         bool force)
{
    int failures = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n; i++)
        r->entries[i].seen = false;
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < l->n; i++) {
        const struct found *f = &l->v[i];
        bool need = true;
        pthread_mutex_lock(&r->lock);
        struct reg_entry *en = entry_find(r, f->name, f->version);
        if (en != NULL) {
            en->seen = true;
            if (!force && en->unloaded)
                need = false;
            else if (!force && en->live != NULL && strcmp(en->live->source, f->dir) == 0 &&
                     en->live->mtime_ns == mtime_ns(f->dir))
                need = false;
        }
        pthread_mutex_unlock(&r->lock);
        if (!need)
            continue;
        struct err e = {0};
        struct model_version *v = version_load(r, f->name, f->version, f->dir, &e);
        failures += v == NULL;
        entry_install(r, f->name, f->version, v, &e);
        pthread_mutex_lock(&r->lock);
        en = entry_find(r, f->name, f->version);
        if (en != NULL)
            en->seen = true;
        pthread_mutex_unlock(&r->lock);
    }
    /* Versions whose directory disappeared stop serving. */
    struct model_version **drop = NULL;
    size_t n_drop = 0;
    pthread_mutex_lock(&r->lock);
    drop = calloc(r->n ? r->n : 1, sizeof *drop);
    size_t w = 0;
    for (size_t i = 0; i < r->n; i++) {
        struct reg_entry *en = &r->entries[i];
        bool in_scope = only_name == NULL || strcmp(en->name, only_name) == 0;
        if (drop != NULL && in_scope && !en->seen && !en->unloaded) {
            if (en->live != NULL)
                drop[n_drop++] = en->live;
            continue; /* forget the entry (out of memory: keep it until the next scan) */
        }
        r->entries[w++] = *en;
    }
    r->n = w;
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n_drop; i++) {
        log_msg(LOG_INFO, "model %s version %d unloaded: its directory is gone", drop[i]->name,
                drop[i]->version);
        model_version_release(drop[i]);
    }
    free(drop);
    publish_counts(r);
    return failures;
}

int registry_scan(struct registry *r)
{
    struct found_list l = {0};
    pthread_mutex_lock(&r->scan_lock);
    stores_list(r, NULL, &l);
    int failures = sync_versions(r, &l, NULL, false);
    pthread_mutex_unlock(&r->scan_lock);
    free(l.v);
    return failures;
}

int registry_load_from_store(struct registry *r, const char *name, struct err *e)
{
    struct found_list l = {0};
    pthread_mutex_lock(&r->scan_lock);
    stores_list(r, name, &l);
    int rc = INF_OK;
    if (l.n == 0) {
        rc = err_set(e, INF_ENOTFOUND, "model \"%s\" is not in the model repository", name);
    } else if (sync_versions(r, &l, name, true) > 0) {
        pthread_mutex_lock(&r->lock);
        for (size_t i = 0; i < r->n; i++)
            if (strcmp(r->entries[i].name, name) == 0 && r->entries[i].failed) {
                rc = err_set(e, INF_EINVAL, "model \"%s\" version %d failed to load: %s", name,
                             r->entries[i].version, r->entries[i].error);
                break;
            }
        pthread_mutex_unlock(&r->lock);
    }
    pthread_mutex_unlock(&r->scan_lock);
    free(l.v);
    return rc;
}

int registry_load_buffers(struct registry *r, const char *name, const char *config,
                          size_t config_len, const void *weights, size_t weights_len,
                          int *version_out, struct err *e)
{
    if (r->data_dir == NULL)
        return err_set(e, INF_EUNSUPPORTED, "no data dir: models cannot be uploaded");
    struct model *check = model_load_buffers(config, config_len, weights, weights_len, e);
    if (check == NULL)
        return INF_EINVAL;
    model_free(check);
    pthread_mutex_lock(&r->scan_lock);
    int next = 1;
    struct found_list l = {0};
    stores_list(r, name, &l);
    for (size_t i = 0; i < l.n; i++)
        if (l.v[i].version >= next)
            next = l.v[i].version + 1;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n; i++)
        if (strcmp(r->entries[i].name, name) == 0 && r->entries[i].version >= next)
            next = r->entries[i].version + 1;
    pthread_mutex_unlock(&r->lock);
    free(l.v);
    char dir[4096], path[4200];
    snprintf(dir, sizeof dir, "%s/models/%s/%d", r->data_dir, name, next);
    int rc = fs_mkdir_p(dir, 0755, e);
    if (rc == INF_OK && weights != NULL) {
        snprintf(path, sizeof path, "%s/weights.safetensors", dir);
        rc = fs_write_atomic(path, weights, weights_len, 0644, e);
    }
    if (rc == INF_OK) { /* model.json last: a version directory counts once it is complete */
        snprintf(path, sizeof path, "%s/model.json", dir);
        rc = fs_write_atomic(path, config, config_len, 0644, e);
    }
    if (rc == INF_OK) {
        struct model_version *v = version_load(r, name, next, dir, e);
        if (v == NULL) {
            rc = e->status ? e->status : INF_EIO;
        } else {
            entry_install(r, name, next, v, e);
            *version_out = next;
        }
    }
    pthread_mutex_unlock(&r->scan_lock);
    publish_counts(r);
    return rc;
}

int registry_unload(struct registry *r, const char *name, struct err *e)
{
    struct model_version **drop = NULL;
    size_t n_drop = 0;
    pthread_mutex_lock(&r->lock);
    drop = calloc(r->n ? r->n : 1, sizeof *drop);
    bool found = false;
    for (size_t i = 0; i < r->n && drop != NULL; i++) {
        struct reg_entry *en = &r->entries[i];
        if (strcmp(en->name, name) != 0)
            continue;
        found = true;
        en->unloaded = true;
        if (en->live != NULL)
            drop[n_drop++] = en->live;
        en->live = NULL;
    }
    pthread_mutex_unlock(&r->lock);
    for (size_t i = 0; i < n_drop; i++)
        model_version_release(drop[i]);
    free(drop);
    publish_counts(r);
    if (!found)
        return err_set(e, INF_ENOTFOUND, "model \"%s\" is not loaded", name);
    log_msg(LOG_INFO, "model %s unloaded", name);
    return INF_OK;
}

struct model_version *registry_get(struct registry *r, const char *name, int version, struct err *e)
{
    struct model_version *v = NULL;
    const struct reg_entry *failed = NULL;
    bool known = false;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n; i++) {
        const struct reg_entry *en = &r->entries[i];
        if (strcmp(en->name, name) != 0 || (version != 0 && en->version != version))
            continue;
        known = true;
        if (en->live != NULL && (v == NULL || en->version > v->version))
            v = en->live;
        if (en->failed)
            failed = en;
    }
    if (v != NULL)
        version_ref(v);
    else if (failed != NULL)
        err_set(e, INF_EUNSUPPORTED, "model \"%s\" version %d failed to load: %s", name,
                failed->version, failed->error);
    else if (known)
        err_set(e, INF_ENOTFOUND, "model \"%s\" is not loaded", name);
    else if (version != 0)
        err_set(e, INF_ENOTFOUND, "model \"%s\" has no version %d", name, version);
    else
        err_set(e, INF_ENOTFOUND, "no model named \"%s\"", name);
    pthread_mutex_unlock(&r->lock);
    return v;
}

/* Loaded versions of name, ascending, as a new array of strings (lock held). */
static json_t *versions_locked(struct registry *r, const char *name)
{
    json_t *a = json_array();
    int last = 0;
    for (;;) { /* ascending without sorting the table */
        int next = INT_MAX;
        for (size_t i = 0; i < r->n; i++)
            if (r->entries[i].live != NULL && strcmp(r->entries[i].name, name) == 0 &&
                r->entries[i].version > last && r->entries[i].version < next)
                next = r->entries[i].version;
        if (next == INT_MAX || a == NULL)
            break;
        char s[16];
        snprintf(s, sizeof s, "%d", next);
        json_array_append_new(a, json_string(s));
        last = next;
    }
    return a;
}

json_t *registry_versions(struct registry *r, const char *name)
{
    pthread_mutex_lock(&r->lock);
    json_t *a = versions_locked(r, name);
    pthread_mutex_unlock(&r->lock);
    if (a != NULL && json_array_size(a) == 0) {
        json_decref(a);
        return NULL;
    }
    return a;
}

json_t *registry_list(struct registry *r)
{
    json_t *out = json_array();
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n && out != NULL; i++) {
        const struct reg_entry *en = &r->entries[i];
        if (en->live == NULL)
            continue;
        bool listed = false; /* one row per name: the first loaded entry of it */
        for (size_t k = 0; k < i && !listed; k++)
            listed = r->entries[k].live != NULL && strcmp(r->entries[k].name, en->name) == 0;
        if (!listed)
            json_array_append_new(out, json_pack("{s:s, s:o, s:b}", "name", en->name, "versions",
                                                 versions_locked(r, en->name), "ready", 1));
    }
    pthread_mutex_unlock(&r->lock);
    return out;
}

json_t *registry_index(struct registry *r)
{
    struct found_list l = {0};
    stores_list(r, NULL, &l);
    json_t *out = json_array();
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n; i++) {
        const struct reg_entry *en = &r->entries[i];
        const char *state = en->live ? "READY" : (en->failed ? "UNAVAILABLE" : "UNLOADED");
        char v[16];
        snprintf(v, sizeof v, "%d", en->version);
        json_array_append_new(out,
                              json_pack("{s:s, s:s, s:s, s:s}", "name", en->name, "version", v,
                                        "state", state, "reason", en->failed ? en->error : ""));
    }
    for (size_t i = 0; i < l.n; i++) {
        if (entry_find(r, l.v[i].name, l.v[i].version) != NULL)
            continue;
        char v[16];
        snprintf(v, sizeof v, "%d", l.v[i].version);
        json_array_append_new(out, json_pack("{s:s, s:s, s:s, s:s}", "name", l.v[i].name, "version",
                                             v, "state", "UNLOADED", "reason", ""));
    }
    pthread_mutex_unlock(&r->lock);
    free(l.v);
    return out;
}

void registry_counts(struct registry *r, size_t *loaded, size_t *failed)
{
    size_t a = 0, b = 0;
    pthread_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n; i++) {
        a += r->entries[i].live != NULL;
        b += r->entries[i].failed && r->entries[i].live == NULL;
    }
    pthread_mutex_unlock(&r->lock);
    *loaded = a;
    *failed = b;
}
