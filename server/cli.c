/*
 * server/cli.c - the offline subcommands: predict, train, eval. They use the same request
 * parsing (server/oip.c) and training-file parsing (server/dataset.c) as the HTTP API, so
 * what works offline works over HTTP and the other way round.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/json_dump.h"
#include "dataset.h"
#include "oip.h"
#include "server.h"

#define CLI_MAX_STDIN      ((size_t)256 << 20)
#define CLI_MAX_TRAIN_FILE ((size_t)4 << 30)

/* ------------------------------------------------------------------------------------------
 * Argument helpers: "--name value" or "--name=value"
 * ---------------------------------------------------------------------------------------- */

struct cli_opt {
    const char *name; /* without the leading dashes */
    bool takes_value;
    const char *value; /* set when seen: the value, or "" for a flag */
};

/* Fills opts from argv; returns 0, or 2 after printing a usage error. */
static int cli_parse(int argc, char **argv, struct cli_opt *opts, size_t n, const char *usage)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fprintf(stdout, "%s", usage);
            return 3;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "infera: unexpected argument \"%s\"\n%s", a, usage);
            return 2;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        struct cli_opt *o = NULL;
        for (size_t k = 0; k < n; k++)
            if (strlen(opts[k].name) == nlen && strncmp(opts[k].name, a, nlen) == 0)
                o = &opts[k];
        if (o == NULL) {
            fprintf(stderr, "infera: unknown option --%.*s\n%s", (int)nlen, a, usage);
            return 2;
        }
        if (!o->takes_value) {
            if (eq != NULL) {
                fprintf(stderr, "infera: --%s takes no value\n", o->name);
                return 2;
            }
            o->value = "";
        } else if (eq != NULL) {
            o->value = eq + 1;
        } else if (i + 1 < argc) {
            o->value = argv[++i];
        } else {
            fprintf(stderr, "infera: --%s needs a value\n", o->name);
            return 2;
        }
    }
    return 0;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static int read_all(FILE *f, size_t cap, char **data, size_t *len)
{
    size_t size = 0, alloc = 65536;
    char *buf = malloc(alloc);
    if (buf == NULL)
        return INF_ENOMEM;
    for (;;) {
        if (size == alloc) {
            if (alloc >= cap) {
                free(buf);
                return INF_ELIMIT;
            }
            alloc = alloc * 2 > cap ? cap : alloc * 2;
            char *nb = realloc(buf, alloc);
            if (nb == NULL) {
                free(buf);
                return INF_ENOMEM;
            }
            buf = nb;
        }
        size_t got = fread(buf + size, 1, alloc - size, f);
        size += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        free(buf);
        return INF_EIO;
    }
    *data = buf;
    *len = size;
    return INF_OK;
}

/* Prints {"error": msg} on stdout (what the HTTP API would answer) and msg on stderr. */
static int fail_json(const char *msg)
{
    json_t *j = json_pack("{s:s}", "error", msg);
    char *s = j ? json_dump_checked(j, JSON_COMPACT) : NULL;
    if (s != NULL)
        printf("%s\n", s);
    fprintf(stderr, "infera: %s\n", msg);
    free(s);
    json_decref(j);
    return 1;
}

/* ------------------------------------------------------------------------------------------
 * predict
 * ---------------------------------------------------------------------------------------- */

static const char predict_usage[] =
    "usage: infera predict --model DIR [--name NAME] < request.json\n"
    "  Reads an Open Inference Protocol v2 request on stdin, writes the response on stdout.\n";

int cli_predict(int argc, char **argv)
{
    struct cli_opt opts[] = {{"model", true, NULL}, {"name", true, NULL}};
    int rc = cli_parse(argc, argv, opts, 2, predict_usage);
    if (rc)
        return rc == 3 ? 0 : rc;
    if (opts[0].value == NULL) {
        fprintf(stderr, "infera predict: --model is required\n%s", predict_usage);
        return 2;
    }
    struct err e = {0};
    struct model *m = NULL;
    struct model_workspace *ws = NULL;
    struct oip_request req = {0};
    char *body = NULL, *text = NULL;
    float *out = NULL;
    size_t len = 0;
    int status = 1;

    m = model_load(opts[0].value, &e);
    if (m == NULL) {
        status = fail_json(e.msg);
        goto out;
    }
    int r = read_all(stdin, CLI_MAX_STDIN, &body, &len);
    if (r != INF_OK) {
        status = fail_json(r == INF_ELIMIT ? "request on stdin is too large"
                                           : "cannot read the request from stdin");
        goto out;
    }
    struct oip_limits lim = oip_limits_default();
    if (oip_request_parse(m, body, len, &lim, &req, &e) != INF_OK) {
        status = fail_json(e.msg);
        goto out;
    }
    const struct model_info *info = model_get_info(m);
    ws = model_workspace_new(m, req.batch, &e);
    out = malloc(req.batch * info->out_size * sizeof *out);
    if (ws == NULL || out == NULL || model_predict(m, ws, req.x, req.batch, out, &e) != INF_OK) {
        status = fail_json(e.status ? e.msg : "out of memory");
        goto out;
    }
    const char *name = opts[1].value;
    if (name == NULL) { /* the directory's last component */
        const char *d = opts[0].value;
        size_t dl = strlen(d);
        while (dl > 1 && d[dl - 1] == '/')
            dl--;
        const char *slash = d + dl;
        while (slash > d && slash[-1] != '/')
            slash--;
        static char base[256];
        snprintf(base, sizeof base, "%.*s", (int)(d + dl - slash), slash);
        name = base;
    }
    json_t *res = oip_response_build(m, name, "1", &req, out);
    text = res ? json_dump_checked(res, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(res);
    if (text == NULL) {
        status = fail_json("out of memory");
        goto out;
    }
    printf("%s\n", text);
    status = 0;
out:
    free(text);
    free(out);
    free(body);
    oip_request_deinit(&req);
    model_workspace_free(ws);
    model_free(m);
    return status;
}

/* ------------------------------------------------------------------------------------------
 * train
 * ---------------------------------------------------------------------------------------- */

static const char train_usage[] =
    "usage: infera train --model DIR --data train.jsonl --out DIR [options]\n"
    "  Trains with the model's \"training\" section; options override it:\n"
    "  --epochs N  --batch-size N  --learning-rate X  --optimizer sgd|adam|adamw\n"
    "  --momentum X  --weight-decay X  --seed N  --shuffle | --no-shuffle\n"
    "  --validation-split F   hold out a fraction F of the data, report its loss/accuracy\n"
    "  --checkpoint FILE      save a checkpoint after every epoch\n"
    "  --resume FILE          continue from a checkpoint (exact resume)\n"
    "  --quiet                no per-epoch progress\n";

struct train_ctx {
    struct model_trainer *trainer;
    const char *checkpoint;
    bool quiet;
    struct err *e;
};

static int train_on_epoch(const struct model_epoch_stats *s, void *user)
{
    struct train_ctx *c = user;
    if (!c->quiet) {
        fprintf(stderr, "epoch %d/%d  train_loss %.6f", s->epoch, s->epochs, s->train_loss);
        if (s->has_valid) {
            fprintf(stderr, "  valid_loss %.6f", s->valid_loss);
            if (!isnan(s->valid_accuracy))
                fprintf(stderr, "  valid_accuracy %.4f", s->valid_accuracy);
        }
        fprintf(stderr, "  %.0f samples/s\n", s->samples_per_s);
    }
    if (c->checkpoint != NULL &&
        model_trainer_checkpoint_save(c->trainer, c->checkpoint, c->e) != INF_OK)
        return 1;
    return 0;
}

/* Applies command-line overrides to t; returns 0 or 2 after printing the bad option. */
static int train_overrides(const struct cli_opt *o, struct model_training *t)
{
    long v;
    double d;
    if (o[3].value) {
        if (!parse_long(o[3].value, 1, 1000000, &v))
            goto bad_epochs;
        t->epochs = (int)v;
    }
    if (o[4].value) {
        if (!parse_long(o[4].value, 1, 65536, &v)) {
            fprintf(stderr, "infera train: --batch-size must be 1 to 65536\n");
            return 2;
        }
        t->batch_size = (size_t)v;
    }
    if (o[5].value) {
        if (!parse_double(o[5].value, 1e-12, 1e6, &d)) {
            fprintf(stderr, "infera train: --learning-rate must be a positive number\n");
            return 2;
        }
        t->learning_rate = d;
    }
    if (o[6].value) {
        int opt = model_optimizer_parse(o[6].value);
        if (opt < 0) {
            fprintf(stderr, "infera train: --optimizer must be sgd, adam or adamw\n");
            return 2;
        }
        t->optimizer = (enum model_optimizer)opt;
    }
    if (o[7].value) {
        if (!parse_long(o[7].value, 0, 2147483647L, &v)) {
            fprintf(stderr, "infera train: --seed must be a non-negative integer\n");
            return 2;
        }
        t->seed = (uint64_t)v;
    }
    if (o[8].value)
        t->shuffle = true;
    if (o[9].value)
        t->shuffle = false;
    if (o[10].value) {
        if (!parse_double(o[10].value, 0, 0.9, &d)) {
            fprintf(stderr, "infera train: --validation-split must be in [0, 0.9]\n");
            return 2;
        }
        t->validation_split = d;
    }
    if (o[14].value) {
        if (!parse_double(o[14].value, 0, 1e6, &d)) {
            fprintf(stderr, "infera train: --momentum must be a non-negative number\n");
            return 2;
        }
        t->momentum = d;
    }
    if (o[15].value) {
        if (!parse_double(o[15].value, 0, 1e6, &d)) {
            fprintf(stderr, "infera train: --weight-decay must be a non-negative number\n");
            return 2;
        }
        t->weight_decay = d;
    }
    return 0;
bad_epochs:
    fprintf(stderr, "infera train: --epochs must be 1 to 1000000\n");
    return 2;
}

int cli_train(int argc, char **argv)
{
    struct cli_opt o[] = {
        {"model", true, NULL},
        {"data", true, NULL},
        {"out", true, NULL},
        {"epochs", true, NULL},
        {"batch-size", true, NULL},
        {"learning-rate", true, NULL},
        {"optimizer", true, NULL},
        {"seed", true, NULL},
        {"shuffle", false, NULL},
        {"no-shuffle", false, NULL},
        {"validation-split", true, NULL},
        {"checkpoint", true, NULL},
        {"resume", true, NULL},
        {"quiet", false, NULL},
        {"momentum", true, NULL},
        {"weight-decay", true, NULL},
    };
    const size_t n_opts = sizeof o / sizeof o[0];
    int rc = cli_parse(argc, argv, o, n_opts, train_usage);
    if (rc)
        return rc == 3 ? 0 : rc;
    if (o[0].value == NULL || o[1].value == NULL || o[2].value == NULL) {
        fprintf(stderr, "infera train: --model, --data and --out are required\n%s", train_usage);
        return 2;
    }
    struct err e = {0};
    struct model *m = model_load(o[0].value, &e);
    if (m == NULL) {
        fprintf(stderr, "infera train: %s\n", e.msg);
        return 1;
    }
    struct model_training t = model_get_info(m)->training;
    if ((rc = train_overrides(o, &t))) {
        model_free(m);
        return rc;
    }
    struct model_dataset all = {0}, train = {0}, valid = {0};
    struct model_trainer *tr = NULL;
    int status = 1;
    if (dataset_load_jsonl(m, o[1].value, CLI_MAX_TRAIN_FILE, &all, &e) != INF_OK)
        goto fail;
    if (t.validation_split > 0) {
        if (model_dataset_split(&all, t.validation_split, t.seed, &train, &valid, &e) != INF_OK)
            goto fail;
    } else {
        train = all;
        all = (struct model_dataset){0};
    }
    model_set_training(m, &t);
    tr = model_trainer_new(m, &t, &train, valid.n > 0 ? &valid : NULL, &e);
    if (tr == NULL)
        goto fail;
    if (o[12].value != NULL) {
        if (model_trainer_checkpoint_load(tr, o[12].value, &e) != INF_OK)
            goto fail;
        if (o[13].value == NULL)
            fprintf(stderr, "resuming after epoch %d\n", model_trainer_epochs_done(tr));
    }
    if (o[13].value == NULL)
        fprintf(stderr, "training %zu samples (%zu held out), %d epochs, %s, batch %zu\n", train.n,
                valid.n, t.epochs, model_optimizer_name(t.optimizer), t.batch_size);
    struct train_ctx ctx = {tr, o[11].value, o[13].value != NULL, &e};
    if (model_trainer_run(tr, train_on_epoch, NULL, &ctx, &e) != INF_OK)
        goto fail;
    if (model_save(m, o[2].value, &e) != INF_OK)
        goto fail;
    if (o[13].value == NULL)
        fprintf(stderr, "saved %s\n", o[2].value);
    status = 0;
    goto out;
fail:
    fprintf(stderr, "infera train: %s\n", e.msg);
out:
    model_trainer_free(tr);
    model_dataset_deinit(&all);
    model_dataset_deinit(&train);
    model_dataset_deinit(&valid);
    model_free(m);
    return status;
}

/* ------------------------------------------------------------------------------------------
 * eval
 * ---------------------------------------------------------------------------------------- */

static const char eval_usage[] =
    "usage: infera eval --model DIR --data FILE.jsonl\n"
    "  Prints {\"samples\": N, \"loss\": L, \"accuracy\": A} (accuracy null for regressors).\n";

int cli_eval(int argc, char **argv)
{
    struct cli_opt o[] = {{"model", true, NULL}, {"data", true, NULL}};
    int rc = cli_parse(argc, argv, o, 2, eval_usage);
    if (rc)
        return rc == 3 ? 0 : rc;
    if (o[0].value == NULL || o[1].value == NULL) {
        fprintf(stderr, "infera eval: --model and --data are required\n%s", eval_usage);
        return 2;
    }
    struct err e = {0};
    struct model_dataset ds = {0};
    double loss = 0, acc = 0;
    int status = 1;
    struct model *m = model_load(o[0].value, &e);
    if (m == NULL || dataset_load_jsonl(m, o[1].value, CLI_MAX_TRAIN_FILE, &ds, &e) != INF_OK ||
        model_evaluate(m, &ds, &loss, &acc, &e) != INF_OK) {
        fprintf(stderr, "infera eval: %s\n", e.msg);
        goto out;
    }
    if (isnan(acc))
        printf("{\"samples\": %zu, \"loss\": %.9g, \"accuracy\": null}\n", ds.n, loss);
    else
        printf("{\"samples\": %zu, \"loss\": %.9g, \"accuracy\": %.9g}\n", ds.n, loss, acc);
    status = 0;
out:
    model_dataset_deinit(&ds);
    model_free(m);
    return status;
}
