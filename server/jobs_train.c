/*
 * server/jobs_train.c - one fine-tuning job's training: the base model version, the job's
 * files featurized for it, the newest checkpoint that restores, and the engine's training loop,
 * as `infera train` (cli.c) drives it. Persistence and the job's state live in jobs.c.
 *
 * Determinism: a job's result depends only on the base model version, its files, its resolved
 * hyperparameters and its seed; resuming from a checkpoint gives the same weights bit for bit
 * (model.h), and starting over from the base model gives them too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/mask.h"
#include "dataset.h"
#include "files.h"
#include "http.h"
#include "jobs.h"

#define JOB_MAX_TRAIN_FILE ((size_t)4 << 30)

char *job_mask_text(const char *text, size_t len, size_t *out_len, void *user)
{
    struct server *srv = user;
    return mask_text_len(srv->guard.mask_key, text, len, NULL, out_len);
}

void job_hparams_apply(const struct job_hparams *hp, struct model_training *t)
{
    t->epochs = hp->n_epochs;
    t->batch_size = hp->batch_size;
    t->learning_rate = hp->learning_rate;
    t->optimizer = hp->optimizer;
    t->weight_decay = hp->weight_decay;
    t->seed = hp->seed;
}

static void job_error_set(struct job_error *je, const char *code, const char *param,
                          const char *msg)
{
    snprintf(je->code, sizeof je->code, "%s", code);
    snprintf(je->param, sizeof je->param, "%s", param ? param : "");
    size_t n = strlen(msg);
    if (n >= sizeof je->message) /* cut on a UTF-8 boundary */
        for (n = sizeof je->message - 1; n > 0 && ((unsigned char)msg[n] & 0xc0) == 0x80; n--)
            ;
    memcpy(je->message, msg, n);
    je->message[n] = '\0';
}

/* Reads and featurizes file id for m into ds; fills je (param names the field) on failure. */
static int load_file(const struct job_train_input *in, const struct model *m, const char *id,
                     const char *param, struct model_dataset *ds, struct job_error *je)
{
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    char msg[ERR_MSG_MAX + 64];
    /* Visibility was checked at create; the job reads its own files as the server. */
    int rc = file_store_read(in->srv->files, id, in->owner, true, &data, &len, &e);
    if (rc != INF_OK) {
        snprintf(msg, sizeof msg, "%s %s cannot be read: %s", param, id,
                 e.status ? e.msg : inf_status_str(rc));
        job_error_set(je, "file_not_found", param, msg);
        return rc;
    }
    if (len > JOB_MAX_TRAIN_FILE)
        rc = err_set(&e, INF_ELIMIT, "larger than %zu bytes", JOB_MAX_TRAIN_FILE);
    else
        rc = dataset_parse_jsonl(m, data, len, in->hp.mask_pii ? job_mask_text : NULL, in->srv, ds,
                                 &e);
    free(data);
    if (rc != INF_OK) {
        snprintf(msg, sizeof msg, "%s", e.msg);
        job_error_set(je,
                      strcmp(param, "training_file") == 0 ? "invalid_training_file"
                                                          : "invalid_validation_file",
                      param, msg);
    }
    return rc;
}

struct train_ctx {
    const struct job_train_input *in;
    struct model_trainer *tr;
    size_t n_train;
    struct err e;
};

static int on_epoch(const struct model_epoch_stats *s, void *user)
{
    struct train_ctx *c = user;
    char *ckpt = NULL;
    size_t len = 0;
    if (model_trainer_checkpoint_serialize(c->tr, &ckpt, &len, &c->e) != INF_OK)
        return 1;
    return c->in->on_epoch(s, ckpt, len, c->n_train, c->in->user); /* takes ckpt */
}

static bool should_cancel(void *user)
{
    struct train_ctx *c = user;
    return c->in->should_cancel(c->in->user);
}

int job_train_run(const struct job_train_input *in, struct model **out, struct job_error *je)
{
    struct err e = {0};
    struct model *m = NULL;
    struct model_dataset all = {0}, train = {0}, valid = {0};
    struct model_trainer *tr = NULL;
    char msg[ERR_MSG_MAX + 64];
    int rc;

    struct model_version *v = registry_get(in->srv->registry, in->model, in->model_version, &e);
    if (v == NULL) {
        snprintf(msg, sizeof msg, "base model %s version %d is not served: %s", in->model,
                 in->model_version, e.msg);
        job_error_set(je, "model_not_found", "model", msg);
        return INF_ENOTFOUND;
    }
    m = model_clone(v->model, &e);
    model_version_release(v);
    if (m == NULL) {
        job_error_set(je, "server_error", NULL, "out of memory");
        return INF_ENOMEM;
    }
    struct model_training t = model_get_info(m)->training;
    job_hparams_apply(&in->hp, &t);
    if ((rc = load_file(in, m, in->training_file, "training_file", &all, je)) != INF_OK)
        goto out;
    if (in->validation_file != NULL) {
        if ((rc = load_file(in, m, in->validation_file, "validation_file", &valid, je)) != INF_OK)
            goto out;
        train = all;
        all = (struct model_dataset){0};
    } else if (t.validation_split > 0) {
        rc = model_dataset_split(&all, t.validation_split, t.seed, &train, &valid, &e);
        if (rc != INF_OK) {
            job_error_set(je, "invalid_training_file", "training_file", e.msg);
            goto out;
        }
    } else {
        train = all;
        all = (struct model_dataset){0};
    }
    model_set_training(m, &t);
    tr = model_trainer_new(m, &t, &train, valid.n > 0 ? &valid : NULL, &e);
    if (tr == NULL) {
        rc = e.status ? e.status : INF_ENOMEM;
        job_error_set(je, "invalid_training_file", "training_file", e.msg);
        goto out;
    }
    for (size_t i = 0; i < in->n_checkpoints; i++) {
        void *ck = NULL;
        size_t ck_len = 0;
        struct err ce = {0};
        if (in->load_checkpoint(i, &ck, &ck_len, in->user) != INF_OK)
            continue;
        rc = model_trainer_checkpoint_restore(tr, ck, ck_len, &ce);
        free(ck);
        if (rc == INF_OK)
            break;
        log_msg(LOG_WARN, "job %s: checkpoint %zu does not restore (%s); trying an older one",
                in->job_id, i, ce.msg);
    }
    struct train_ctx ctx = {in, tr, train.n, {0}};
    rc = model_trainer_run(tr, on_epoch, should_cancel, &ctx, &ctx.e);
    if (rc != INF_OK && rc != INF_ECANCELLED) {
        snprintf(msg, sizeof msg, "training failed: %s", ctx.e.msg);
        job_error_set(je, "server_error", NULL, msg);
    } else if (rc == INF_ECANCELLED && ctx.e.status != 0 && ctx.e.status != INF_ECANCELLED) {
        /* on_epoch failed (a checkpoint could not be made), not a stop request */
        rc = ctx.e.status;
        snprintf(msg, sizeof msg, "checkpoint failed: %s", ctx.e.msg);
        job_error_set(je, "server_error", NULL, msg);
    }
out:
    model_trainer_free(tr);
    model_dataset_deinit(&all);
    model_dataset_deinit(&train);
    model_dataset_deinit(&valid);
    if (rc == INF_OK)
        *out = m;
    else
        model_free(m);
    return rc;
}
