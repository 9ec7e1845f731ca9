/*
 * server/jobs_api.c - OpenAI's fine-tuning jobs API on the job queue (jobs.h):
 *   POST /v1/fine_tuning/jobs                  create (Idempotency-Key honoured)
 *   GET  /v1/fine_tuning/jobs?after&limit      list, newest first
 *   GET  /v1/fine_tuning/jobs/{id}             retrieve
 *   POST /v1/fine_tuning/jobs/{id}/cancel      cancel
 *   GET  /v1/fine_tuning/jobs/{id}/events      events, newest first
 *   GET  /v1/fine_tuning/jobs/{id}/checkpoints checkpoints, newest first
 *
 * Create validates everything synchronously: the body (unknown fields are 400), the base model
 * (served now; its version is pinned), the files (visible to the key, purpose "fine-tune") and
 * then the training data itself, parsed for that model: data that does not fit the model
 * (wrong input size, unknown label) creates the job "failed" with error code
 * "invalid_training_file" and the line number, as OpenAI's validation does; everything else
 * wrong in the request is a 400 naming the param. "auto" hyperparameters resolve at create
 * from the base model's "training" section (n_epochs, batch_size; multiplier 1).
 *
 * Extensions (documented in the README): hyperparameters.optimizer ("sgd", "adam", "adamw"),
 * learning_rate (absolute; excludes learning_rate_multiplier), weight_decay, and mask_pii
 * (true, or metadata {"mask_pii": "true"}): training text passes the PII masker first.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "dataset.h"
#include "files.h"
#include "http.h"
#include "jobs.h"

#define CANCEL_WAIT_S 10.0

/* ------------------------------------------------------------------------------------------
 * Answers
 * ---------------------------------------------------------------------------------------- */

/* OpenAI's error object with a param and a code (both may be NULL). */
static enum MHD_Result oai_error(struct request *rq, unsigned status, const char *code,
                                 const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result oai_error(struct request *rq, unsigned status, const char *code,
                                 const char *param, const char *fmt, ...)
{
    char msg[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", msg, "type",
                          status >= 500 ? "server_error" : "invalid_request_error", "param", param,
                          "code", code);
    if (o == NULL) /* msg is not UTF-8 (a cut client string): the generic path cleans it */
        return http_respond_error(rq, status, "%s", msg);
    if (rq->reason == NULL)
        rq->reason = strdup(msg);
    return http_respond_json(rq, status, o);
}

static void caller(const struct request *rq, const char **owner, bool *admin)
{
    *owner = rq->authenticated ? rq->principal.key_id : "";
    *admin = !rq->authenticated || (rq->principal.scopes & AUTH_SCOPE_ADMIN) != 0;
}

static enum MHD_Result respond_status(struct request *rq, int rc, const struct err *e)
{
    if (rc == INF_ENOTFOUND)
        return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "%s", e->msg);
    return http_respond_error(rq, http_status_of(rc), "%s", e->status ? e->msg : "error");
}

/* ?after=&limit= of a list; returns false after answering 400. */
static bool page_args(struct request *rq, size_t def, const char **after, size_t *limit,
                      enum MHD_Result *res)
{
    *after = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "after");
    const char *l = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "limit");
    *limit = def;
    if (*after != NULL && (*after)[0] == '\0')
        *after = NULL;
    if (l != NULL) {
        char *end = NULL;
        long v = strtol(l, &end, 10);
        if (end == l || *end != '\0' || v < 1 || v > JOB_LIST_MAX) {
            *res = oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", "limit",
                             "limit must be an integer from 1 to %d", JOB_LIST_MAX);
            return false;
        }
        *limit = (size_t)v;
    }
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Create
 * ---------------------------------------------------------------------------------------- */

struct create_err {
    char msg[ERR_MSG_MAX];
    char param[64];
};

static bool fail(struct create_err *ce, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(struct create_err *ce, const char *param, const char *fmt, ...)
{
    if (ce->msg[0] != '\0')
        return false;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ce->msg, sizeof ce->msg, fmt, ap);
    va_end(ap);
    snprintf(ce->param, sizeof ce->param, "%s", param);
    return false;
}

static bool is_auto(const json_t *v)
{
    return json_is_string(v) && strcmp(json_string_value(v), "auto") == 0;
}

/* A whole number in [lo, hi] (integral reals allowed) or "auto"/absent (*set false). */
static bool int_or_auto(json_t *hp, const char *key, long lo, long hi, long *out, bool *set,
                        struct create_err *ce)
{
    char param[64];
    snprintf(param, sizeof param, "hyperparameters.%s", key);
    json_t *v = json_object_get(hp, key);
    *set = false;
    if (v == NULL || json_is_null(v) || is_auto(v))
        return true;
    double d = json_number_value(v);
    if (!json_is_number(v) || d != floor(d) || d < (double)lo || d > (double)hi)
        return fail(ce, param, "%s must be an integer from %ld to %ld or \"auto\"", param, lo, hi);
    *out = (long)d;
    *set = true;
    return true;
}

/* A finite number > 0 (or >= 0 when zero_ok) up to max, or "auto"/absent (*set false). */
static bool num_or_auto(json_t *hp, const char *key, bool zero_ok, double max, double *out,
                        bool *set, struct create_err *ce)
{
    char param[64];
    snprintf(param, sizeof param, "hyperparameters.%s", key);
    json_t *v = json_object_get(hp, key);
    *set = false;
    if (v == NULL || json_is_null(v) || is_auto(v))
        return true;
    double d = json_number_value(v);
    if (!json_is_number(v) || !isfinite(d) || d < 0 || (d == 0 && !zero_ok) || d > max)
        return fail(ce, param, "%s must be a number %s 0 (at most %g) or \"auto\"", param,
                    zero_ok ? ">=" : ">", max);
    *out = d;
    *set = true;
    return true;
}

/* Resolves the hyperparameters object hp (may be NULL) against the base model's settings. */
static bool resolve_hparams(json_t *hp, const struct model_training *base, struct job_hparams *out,
                            struct create_err *ce)
{
    static const char *const known[] = {"n_epochs",      "batch_size", "learning_rate_multiplier",
                                        "learning_rate", "optimizer",  "weight_decay",
                                        "mask_pii"};
    if (hp != NULL && !json_is_object(hp) && !json_is_null(hp))
        return fail(ce, "hyperparameters", "hyperparameters must be an object");
    const char *k;
    json_t *v;
    json_object_foreach(hp, k, v)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || strcmp(k, known[i]) == 0;
        if (!ok)
            return fail(ce, "hyperparameters",
                        "unknown hyperparameter \"%.64s\" (known: n_epochs, batch_size, "
                        "learning_rate_multiplier, and the extensions learning_rate, optimizer, "
                        "weight_decay, mask_pii)",
                        k);
    }
    long n;
    double d;
    bool set;
    out->n_epochs = base->epochs > 1000 ? 1000 : base->epochs;
    out->batch_size = base->batch_size;
    out->optimizer = base->optimizer;
    out->weight_decay = base->weight_decay;
    out->learning_rate_multiplier = 1;
    out->learning_rate = base->learning_rate;
    if (!int_or_auto(hp, "n_epochs", 1, 1000, &n, &set, ce))
        return false;
    if (set)
        out->n_epochs = (int)n;
    if (!int_or_auto(hp, "batch_size", 1, 65536, &n, &set, ce))
        return false;
    if (set)
        out->batch_size = (size_t)n;
    json_t *opt = json_object_get(hp, "optimizer");
    if (opt != NULL && !json_is_null(opt) && !is_auto(opt)) {
        int o = json_is_string(opt) ? model_optimizer_parse(json_string_value(opt)) : -1;
        if (o < 0)
            return fail(ce, "hyperparameters.optimizer",
                        "hyperparameters.optimizer must be \"sgd\", \"adam\" or \"adamw\"");
        if ((enum model_optimizer)o != base->optimizer) /* torch's default for the new one */
            out->weight_decay = o == MODEL_OPTIM_ADAMW ? 0.01 : 0;
        out->optimizer = (enum model_optimizer)o;
    }
    if (!num_or_auto(hp, "weight_decay", true, 1e6, &d, &set, ce))
        return false;
    if (set)
        out->weight_decay = d;
    bool mult_set, lr_set;
    double mult = 1, lr = 0;
    if (!num_or_auto(hp, "learning_rate_multiplier", false, 1e6, &mult, &mult_set, ce) ||
        !num_or_auto(hp, "learning_rate", false, 1e6, &lr, &lr_set, ce))
        return false;
    if (mult_set && lr_set)
        return fail(ce, "hyperparameters.learning_rate",
                    "give hyperparameters.learning_rate_multiplier or the extension "
                    "hyperparameters.learning_rate, not both");
    if (mult_set) {
        out->learning_rate_multiplier = mult;
        out->learning_rate = base->learning_rate * mult;
    } else if (lr_set) {
        out->learning_rate = lr;
        out->learning_rate_multiplier = base->learning_rate > 0 ? lr / base->learning_rate : 1;
    }
    json_t *mp = json_object_get(hp, "mask_pii");
    if (mp != NULL && !json_is_null(mp) && !json_is_boolean(mp))
        return fail(ce, "hyperparameters.mask_pii", "hyperparameters.mask_pii must be a boolean");
    out->mask_pii = json_is_true(mp);
    return true;
}

/* The method object: only {"type": "supervised", "supervised": {"hyperparameters"}}. Sets
 * *hp to the method's hyperparameters (borrowed) if any. */
static bool parse_method(json_t *method, json_t **hp, struct create_err *ce)
{
    if (method == NULL || json_is_null(method))
        return true;
    const char *type = json_string_value(json_object_get(method, "type"));
    if (!json_is_object(method) || type == NULL)
        return fail(ce, "method", "method must be an object {\"type\": \"supervised\", ...}");
    if (strcmp(type, "supervised") != 0)
        return fail(ce, "method.type",
                    "method.type \"%.32s\" is not supported: infera fine-tunes \"supervised\" only",
                    type);
    const char *k;
    json_t *v;
    json_object_foreach(method, k, v)
    {
        if (strcmp(k, "type") != 0 && strcmp(k, "supervised") != 0)
            return fail(ce, "method", "unknown field method.%.64s", k);
    }
    json_t *sup = json_object_get(method, "supervised");
    if (sup == NULL || json_is_null(sup))
        return true;
    if (!json_is_object(sup))
        return fail(ce, "method.supervised", "method.supervised must be an object");
    json_object_foreach(sup, k, v)
    {
        if (strcmp(k, "hyperparameters") != 0)
            return fail(ce, "method.supervised", "unknown field method.supervised.%.64s", k);
    }
    *hp = json_object_get(sup, "hyperparameters");
    return true;
}

static bool parse_metadata(json_t *md, bool *mask_pii, struct create_err *ce)
{
    if (md == NULL || json_is_null(md))
        return true;
    if (!json_is_object(md) || json_object_size(md) > 16)
        return fail(ce, "metadata", "metadata must be an object of at most 16 string values");
    const char *k;
    json_t *v;
    json_object_foreach(md, k, v)
    {
        if (strlen(k) > 64 || !json_is_string(v) || json_string_length(v) > 512)
            return fail(ce, "metadata",
                        "metadata keys are at most 64 characters and values strings of at most "
                        "512");
        if (strcmp(k, "mask_pii") == 0)
            *mask_pii = *mask_pii || strcmp(json_string_value(v), "true") == 0;
    }
    return true;
}

static bool suffix_ok(const char *s)
{
    size_t n = strlen(s);
    if (n > JOB_SUFFIX_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
            return false;
    return true;
}

/* A file the caller may use for training: visible, purpose fine-tune. */
static bool check_file(struct request *rq, const char *id, const char *param, const char *owner,
                       bool admin, struct create_err *ce)
{
    struct file_info info;
    if (file_store_get(rq->srv->files, id, owner, admin, &info) != INF_OK)
        return fail(ce, param, "%s: no file with id %.64s", param, id);
    if (strcmp(info.purpose, "fine-tune") != 0)
        return fail(ce, param,
                    "%s: file %s has purpose \"%s\"; upload training data with "
                    "purpose \"fine-tune\"",
                    param, id, info.purpose);
    return true;
}

/* Parses file id as a data set for m: 0 when it fits; otherwise the message in e. */
static int check_data(struct request *rq, const struct model *m, const char *id, const char *owner,
                      bool admin, bool mask_pii, struct err *e)
{
    char *data = NULL;
    size_t len = 0;
    int rc = file_store_read(rq->srv->files, id, owner, admin, &data, &len, e);
    if (rc != INF_OK)
        return rc;
    struct model_dataset ds = {0};
    rc = dataset_parse_jsonl(m, data, len, mask_pii ? job_mask_text : NULL, rq->srv, &ds, e);
    free(data);
    model_dataset_deinit(&ds);
    return rc;
}

enum MHD_Result handle_jobs_create(struct request *rq)
{
    static const char *const known[] = {
        "model",  "training_file", "validation_file", "hyperparameters", "method",
        "suffix", "seed",          "metadata",        "integrations"};
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    json_error_t jerr;
    json_t *body =
        json_loadb(rq->body ? rq->body : "", rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(body)) {
        json_decref(body);
        return oai_error(rq, MHD_HTTP_BAD_REQUEST, NULL, NULL,
                         "expected a JSON object {\"model\", \"training_file\", ...}: %s",
                         body ? "not an object" : jerr.text);
    }
    struct create_err ce = {"", ""};
    struct job_spec spec = {0};
    struct model_version *v = NULL;
    enum MHD_Result res;
    const char *k;
    json_t *val;
    json_object_foreach(body, k, val)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || strcmp(k, known[i]) == 0;
        if (!ok) {
            fail(&ce, k,
                 "unknown field \"%.64s\" (known: model, training_file, validation_file, "
                 "hyperparameters, method, suffix, seed, metadata)",
                 k);
            break;
        }
    }
    json_t *integ = json_object_get(body, "integrations");
    if (integ != NULL && !json_is_null(integ) &&
        !(json_is_array(integ) && json_array_size(integ) == 0))
        fail(&ce, "integrations", "integrations are not supported");
    spec.owner = owner;
    spec.model = json_string_value(json_object_get(body, "model"));
    spec.training_file = json_string_value(json_object_get(body, "training_file"));
    json_t *vf = json_object_get(body, "validation_file");
    spec.validation_file = json_string_value(vf);
    json_t *sfx = json_object_get(body, "suffix");
    spec.suffix = json_string_value(sfx);
    json_t *seed = json_object_get(body, "seed");
    spec.metadata = json_object_get(body, "metadata");
    if (spec.model == NULL)
        fail(&ce, "model", "model (the name of a served model) is required");
    if (spec.training_file == NULL)
        fail(&ce, "training_file", "training_file (a file id) is required");
    if (vf != NULL && !json_is_null(vf) && spec.validation_file == NULL)
        fail(&ce, "validation_file", "validation_file must be a file id");
    if (sfx != NULL && !json_is_null(sfx) && (spec.suffix == NULL || !suffix_ok(spec.suffix)))
        fail(&ce, "suffix", "suffix must be at most %d characters of A-Z, a-z, 0-9, '-' and '_'",
             JOB_SUFFIX_MAX);
    if (spec.suffix != NULL && spec.suffix[0] == '\0')
        spec.suffix = NULL;
    if (seed != NULL && !json_is_null(seed) &&
        (!json_is_integer(seed) || json_integer_value(seed) < 0 ||
         json_integer_value(seed) > 2147483647))
        fail(&ce, "seed", "seed must be an integer from 0 to 2147483647");
    json_t *hp = json_object_get(body, "hyperparameters");
    json_t *mhp = NULL;
    parse_method(json_object_get(body, "method"), &mhp, &ce);
    if (hp != NULL && !json_is_null(hp) && mhp != NULL && !json_is_null(mhp))
        fail(&ce, "method",
             "give hyperparameters at the top level or in "
             "method.supervised.hyperparameters, not both");
    if (mhp != NULL && !json_is_null(mhp))
        hp = mhp;
    bool md_mask = false;
    parse_metadata(spec.metadata, &md_mask, &ce);
    if (json_is_null(spec.metadata))
        spec.metadata = NULL;
    const char *idem = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, "Idempotency-Key");
    if (idem != NULL) {
        size_t n = strlen(idem);
        bool ok = n > 0 && n <= JOB_IDEM_MAX;
        for (size_t i = 0; ok && i < n; i++)
            ok = idem[i] > 0x20 && idem[i] < 0x7f;
        if (!ok)
            fail(&ce, "Idempotency-Key",
                 "the Idempotency-Key header must be 1 to %d printable ASCII characters",
                 JOB_IDEM_MAX);
        spec.idempotency_key = idem;
    }
    if (ce.msg[0] != '\0') {
        res = oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", ce.param, "%s", ce.msg);
        goto out;
    }
    if (idem != NULL) { /* a repeat answers the first job, whatever it became */
        json_t *old = job_queue_find_idempotent(rq->srv->jobs, owner, idem);
        if (old != NULL) {
            res = http_respond_json(rq, MHD_HTTP_OK, old);
            goto out;
        }
    }
    struct err e = {0};
    v = registry_get(rq->srv->registry, spec.model, 0, &e);
    if (v == NULL) {
        res = oai_error(rq, MHD_HTTP_BAD_REQUEST, "model_not_found", "model",
                        "model %.128s is not available for fine-tuning: %s", spec.model, e.msg);
        goto out;
    }
    spec.model_version = v->version;
    char name[JOB_NAME_MAX + 64];
    if (!job_model_name(name, sizeof name, spec.model, spec.suffix,
                        "ftjob-000000000000000000000000")) {
        res = oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", spec.suffix ? "suffix" : "model",
                        "the fine-tuned model name ft:<model>:<suffix>:<job-id> would be longer "
                        "than %d characters; use a shorter suffix",
                        JOB_NAME_MAX);
        goto out;
    }
    if (!resolve_hparams(hp, &model_get_info(v->model)->training, &spec.hp, &ce))
        goto bad;
    spec.hp.mask_pii = spec.hp.mask_pii || md_mask;
    if (seed != NULL && json_is_integer(seed)) {
        spec.hp.seed = (uint64_t)json_integer_value(seed);
    } else { /* drawn and reported, so that a resumed job repeats its run exactly */
        uint32_t r = 0;
        if (RAND_bytes((unsigned char *)&r, sizeof r) != 1) {
            res = http_respond_error(rq, MHD_HTTP_INTERNAL_SERVER_ERROR, "no random seed");
            goto out;
        }
        spec.hp.seed = r & 0x7fffffffu;
    }
    if (!check_file(rq, spec.training_file, "training_file", owner, admin, &ce) ||
        (spec.validation_file != NULL &&
         !check_file(rq, spec.validation_file, "validation_file", owner, admin, &ce)))
        goto bad;
    if (spec.idempotency_key == NULL ||
        job_queue_find_idempotent(rq->srv->jobs, owner, idem) == NULL) {
        unsigned cap = 0;
        size_t active = job_queue_active(rq->srv->jobs, owner, &cap);
        if (active >= cap) {
            /* Waiting does not help until a job ends: tell the SDKs not to sleep and retry. */
            rq->retry_after = "30";
            rq->no_retry = true;
            res = http_respond_error(rq, MHD_HTTP_TOO_MANY_REQUESTS,
                                     "this key already has %zu fine-tuning jobs queued or running "
                                     "(the limit is %u per key, --max-jobs-per-key); wait for one "
                                     "to finish or cancel one",
                                     active, cap);
            goto out;
        }
    }
    /* The data itself, featurized for this model: a mismatch fails the job (OpenAI's way). */
    char emsg[ERR_MSG_MAX + 64] = "";
    struct err de = {0};
    if (check_data(rq, v->model, spec.training_file, owner, admin, spec.hp.mask_pii, &de) !=
        INF_OK) {
        snprintf(emsg, sizeof emsg, "training_file %s: %s", spec.training_file, de.msg);
        spec.error_code = "invalid_training_file";
        spec.error_param = "training_file";
    } else if (spec.validation_file != NULL && check_data(rq, v->model, spec.validation_file, owner,
                                                          admin, spec.hp.mask_pii, &de) != INF_OK) {
        snprintf(emsg, sizeof emsg, "validation_file %s: %s", spec.validation_file, de.msg);
        spec.error_code = "invalid_validation_file";
        spec.error_param = "validation_file";
    }
    spec.error_message = emsg;
    json_t *job = NULL;
    bool existed = false;
    int rc = job_queue_create(rq->srv->jobs, &spec, rq, &job, &existed, &e);
    if (rc == INF_ELIMIT) {
        rq->retry_after = "30";
        rq->no_retry = true;
        res = http_respond_error(rq, MHD_HTTP_TOO_MANY_REQUESTS, "%s", e.msg);
    } else if (rc == INF_EIO) {
        res = http_respond_error(rq, http_status_of_write(rq->srv, rc, 4096), "%s", e.msg);
    } else if (rc != INF_OK) {
        res = respond_status(rq, rc, &e);
    } else {
        res = http_respond_json(rq, MHD_HTTP_OK, job);
    }
    goto out;
bad:
    res =
        oai_error(rq, MHD_HTTP_BAD_REQUEST,
                  strcmp(ce.param, "training_file") == 0 || strcmp(ce.param, "validation_file") == 0
                      ? "invalid_file"
                      : "invalid_value",
                  ce.param, "%s", ce.msg);
out:
    model_version_release(v);
    json_decref(body);
    return res;
}

/* ------------------------------------------------------------------------------------------
 * Read, cancel
 * ---------------------------------------------------------------------------------------- */

/* Collects OpenAI's list filter: metadata[k]=v (each k once) or metadata=null. */
struct metadata_filter {
    json_t *pairs; /* k -> v strings */
    bool none;     /* metadata=null */
    bool oom;      /* a filter could not be stored */
    char bad[ERR_MSG_MAX];
};

static enum MHD_Result metadata_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    struct metadata_filter *f = cls;
    (void)kind;
    if (strcmp(key, "metadata") == 0) {
        if (value == NULL || strcmp(value, "null") != 0)
            snprintf(f->bad, sizeof f->bad,
                     "metadata: expected metadata[key]=value or metadata=null");
        else
            f->none = true;
        return MHD_YES;
    }
    if (strncmp(key, "metadata[", 9) != 0)
        return MHD_YES;
    size_t n = strlen(key + 9);
    if (n < 2 || key[9 + n - 1] != ']' || memchr(key + 9, ']', n - 1) != NULL || n - 1 > 64) {
        snprintf(f->bad, sizeof f->bad,
                 "metadata: a filter key is metadata[key], key 1 to 64 "
                 "characters");
        return MHD_YES;
    }
    char k[65];
    memcpy(k, key + 9, n - 1);
    k[n - 1] = '\0';
    json_t *v = json_string(value != NULL ? value : "");
    if (v == NULL) {
        snprintf(f->bad, sizeof f->bad, "metadata[%.64s]: the value is not UTF-8", k);
        return MHD_YES;
    }
    if (json_object_get(f->pairs, k) != NULL) {
        json_decref(v); /* not handed over: ours to free */
        snprintf(f->bad, sizeof f->bad, "metadata[%.64s]: given twice", k);
    } else if (json_object_set_new(f->pairs, k, v) != 0) { /* steals v either way */
        f->oom = true;
    }
    return MHD_YES;
}

enum MHD_Result handle_jobs_list(struct request *rq)
{
    const char *owner, *after;
    bool admin;
    size_t limit;
    enum MHD_Result res;
    caller(rq, &owner, &admin);
    if (!page_args(rq, 20, &after, &limit, &res))
        return res;
    struct metadata_filter f = {.pairs = json_object()};
    if (f.pairs == NULL)
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, metadata_arg, &f);
    if (f.oom) {
        json_decref(f.pairs);
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    if (f.bad[0] == '\0' && f.none && json_object_size(f.pairs) > 0)
        snprintf(f.bad, sizeof f.bad, "metadata: null and metadata[key] filters together");
    if (f.bad[0] != '\0') {
        json_decref(f.pairs);
        return oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", "metadata", "%s", f.bad);
    }
    const json_t *filter = f.none ? json_null() : json_object_size(f.pairs) > 0 ? f.pairs : NULL;
    json_t *list = NULL;
    struct err e = {0};
    int rc = job_queue_list(rq->srv->jobs, owner, admin, after, filter, limit, &list, &e);
    json_decref(f.pairs);
    if (rc == INF_ENOTFOUND)
        return oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", "after", "%s", e.msg);
    if (rc != INF_OK)
        return respond_status(rq, rc, &e);
    return http_respond_json(rq, MHD_HTTP_OK, list);
}

enum MHD_Result handle_jobs_get(struct request *rq)
{
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    json_t *job = NULL;
    if (job_queue_get(rq->srv->jobs, rq->params[0], owner, admin, &job) != INF_OK)
        return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no fine-tuning job with id %.64s",
                                  rq->params[0]);
    return http_respond_json(rq, MHD_HTTP_OK, job);
}

enum MHD_Result handle_jobs_cancel(struct request *rq)
{
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    json_t *job = NULL;
    struct err e = {0};
    int rc =
        job_queue_cancel(rq->srv->jobs, rq->params[0], owner, admin, rq, CANCEL_WAIT_S, &job, &e);
    if (rc == INF_EINVAL) {
        rq->no_retry = true; /* the SDKs retry a 409 (a lock timeout to them) otherwise */
        return oai_error(rq, MHD_HTTP_CONFLICT, "job_not_cancellable", NULL, "%s", e.msg);
    }
    if (rc != INF_OK)
        return respond_status(rq, rc, &e);
    return http_respond_json(rq, MHD_HTTP_OK, job);
}

static enum MHD_Result job_sublist(struct request *rq, bool events)
{
    const char *owner, *after;
    bool admin;
    size_t limit;
    enum MHD_Result res;
    caller(rq, &owner, &admin);
    if (!page_args(rq, events ? 20 : 10, &after, &limit, &res))
        return res;
    json_t *list = NULL;
    struct err e = {0};
    int rc = events ? job_queue_events(rq->srv->jobs, rq->params[0], owner, admin, after, limit,
                                       &list, &e)
                    : job_queue_checkpoints(rq->srv->jobs, rq->params[0], owner, admin, after,
                                            limit, &list, &e);
    if (rc == INF_ENOTFOUND && after != NULL && strncmp(e.msg, "after:", 6) == 0)
        return oai_error(rq, MHD_HTTP_BAD_REQUEST, "invalid_value", "after", "%s", e.msg);
    if (rc != INF_OK)
        return respond_status(rq, rc, &e);
    return http_respond_json(rq, MHD_HTTP_OK, list);
}

enum MHD_Result handle_jobs_events(struct request *rq)
{
    return job_sublist(rq, true);
}

enum MHD_Result handle_jobs_checkpoints(struct request *rq)
{
    return job_sublist(rq, false);
}
