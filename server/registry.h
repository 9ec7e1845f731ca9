/*
 * server/registry.h - the served models: versions, loading, hot replacement, reference counts.
 * Internal to server/.
 *
 * Models come from two stores:
 *   - the model repository (--models DIR): DIR/<name>/model.json is version 1 of <name>;
 *     DIR/<name>/<version>/model.json (version a positive integer) are explicit versions;
 *   - the data dir (DATA/models/<name>/<version>/): models loaded through the API and, later,
 *     fine-tuned models. The data dir wins when both hold the same name and version.
 * Model names are letters, digits and "._:-", 1 to 128 characters, not starting with '.'; a
 * name never reaches a path any other way, so "..", "/", "%2f" or NUL cannot escape a store.
 *
 * Lifetime: registry_get() returns a version with a new reference; the caller releases it with
 * model_version_release(). Replacing or unloading a version removes it from the registry at
 * once, but its model and batcher live until the last request that holds it finishes.
 *
 * Thread safety: every function may be called from any thread. Lock order: registry lock,
 * then a batcher's lock (the registry never calls into a batcher while holding its lock).
 */
#ifndef INFERA_SERVER_REGISTRY_H
#define INFERA_SERVER_REGISTRY_H

#include <stdatomic.h>

#include <jansson.h>

#include "batcher.h"
#include "model/model.h"

struct metrics;

#define REGISTRY_NAME_MAX 128

struct registry_config {
    const char *models_dir;      /* may be NULL */
    const char *data_dir;        /* DATA; models live in DATA/models; may be NULL */
    struct batcher_config batch; /* defaults; a model's "serving" section overrides */
};

/* A loaded model version, reference counted. Fields are read-only after load. */
struct model_version {
    char name[REGISTRY_NAME_MAX + 1];
    int version;
    struct model *model;
    struct batcher *batcher;
    /* private */
    atomic_int refs;
    char source[4096];
    long long mtime_ns; /* newest mtime of model.json/weights.safetensors at load */
};

struct registry;

/* Makes an empty registry (copies cfg strings). Returns NULL and fills e on failure. */
struct registry *registry_new(const struct registry_config *cfg, struct metrics *metrics,
                              struct err *e);
/* Frees r; versions still referenced by requests are freed by their last release. */
void registry_free(struct registry *r);

/*
 * Scans both stores: loads new versions, reloads changed ones (model.json or weights newer
 * than at load), unloads versions whose directory is gone. A version that fails to load is
 * recorded with its error (registry_index, logs, metrics) and does not stop the others; if an
 * older copy of it was serving, that copy keeps serving. Returns the number of failures.
 */
int registry_scan(struct registry *r);

/* True if name is a valid model name (see above). */
bool registry_name_valid(const char *name);

/*
 * Finds name at version (0: the newest loaded version). Returns a new reference, or NULL with
 * e set: INF_ENOTFOUND (no such model/version) or INF_EUNSUPPORTED (known but failed to load;
 * the message holds the load error).
 */
struct model_version *registry_get(struct registry *r, const char *name, int version,
                                   struct err *e);
void model_version_release(struct model_version *v);

/* All loaded versions of name, ascending, as a new JSON array of strings; NULL if none. */
json_t *registry_versions(struct registry *r, const char *name);

/* GET /v2/models: a new JSON array of {"name", "versions", "ready"} (loaded models). */
json_t *registry_list(struct registry *r);

/* POST /v2/repository/index: a new array of {"name", "version", "state", "reason"} over every
 * model found in the stores or loaded, including failed ones. */
json_t *registry_index(struct registry *r);

/*
 * (Re)loads every version of name from the stores. INF_ENOTFOUND if neither store has it.
 */
int registry_load_from_store(struct registry *r, const char *name, struct err *e);

/*
 * Creates a new version of name from model.json text and optional safetensors bytes: checks
 * that they load, writes them to DATA/models/<name>/<next version>/ (atomically), serves
 * them. *version_out receives the new version. Needs a data dir.
 */
int registry_load_buffers(struct registry *r, const char *name, const char *config,
                          size_t config_len, const void *weights, size_t weights_len,
                          int *version_out, struct err *e);

/* Stops serving every version of name (until the next load). INF_ENOTFOUND if none. */
int registry_unload(struct registry *r, const char *name, struct err *e);

/* Counts for readiness and metrics. */
void registry_counts(struct registry *r, size_t *loaded, size_t *failed);

#endif /* INFERA_SERVER_REGISTRY_H */
