/*
 * server/handlers.c - the Open Inference Protocol v2 endpoints: health, metadata, infer,
 * explain, the repository extension, metrics.
 */
#include <openssl/evp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "metrics.h"

/* ------------------------------------------------------------------------------------------
 * Health and metadata
 * ---------------------------------------------------------------------------------------- */

enum MHD_Result handle_live(struct request *rq)
{
    return http_respond_json(rq, MHD_HTTP_OK, json_pack("{s:b}", "live", 1));
}

enum MHD_Result handle_ready(struct request *rq)
{
    bool audit_ok = guard_audit_healthy(rq->srv);
    bool ready = atomic_load(&rq->srv->ready) && !atomic_load(&rq->srv->draining) && audit_ok;
    json_t *body = json_pack("{s:b}", "ready", ready);
    if (!audit_ok && body != NULL)
        json_object_set_new(body, "reason", json_string("the audit log cannot be written"));
    return http_respond_json(rq, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, body);
}

enum MHD_Result handle_server_meta(struct request *rq)
{
    return http_respond_json(rq, MHD_HTTP_OK,
                             json_pack("{s:s, s:s, s:[s,s,s]}", "name", "infera", "version",
                                       INFERA_VERSION, "extensions", "model_repository", "explain",
                                       "metrics"));
}

enum MHD_Result handle_models_list(struct request *rq)
{
    return http_respond_json(rq, MHD_HTTP_OK,
                             json_pack("{s:o}", "models", registry_list(rq->srv->registry)));
}

/* Parses the {v} capture; 0 when the route has none. Returns false if malformed. */
static bool route_version(const struct request *rq, int *version)
{
    *version = 0;
    if (strstr(rq->route->pattern, "{v}") == NULL)
        return true;
    const char *s = rq->params[1];
    long v = 0;
    if (*s < '1' || *s > '9' || strlen(s) > 9)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
        v = v * 10 + (*s - '0');
    }
    *version = (int)v;
    return true;
}

/* Looks up {m}/{v}; answers the error itself and returns NULL when there is none. */
static struct model_version *lookup(struct request *rq, enum MHD_Result *res)
{
    int version;
    if (!registry_name_valid(rq->params[0])) {
        *res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                  "invalid model name: use letters, digits and ._:- (at most "
                                  "%d characters)",
                                  REGISTRY_NAME_MAX);
        return NULL;
    }
    if (!route_version(rq, &version)) {
        *res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                  "invalid version: expected a positive integer");
        return NULL;
    }
    struct err e = {0};
    struct model_version *v = registry_get(rq->srv->registry, rq->params[0], version, &e);
    if (v != NULL)
        rq->model_version = v->version; /* the version that answers, for the audit record */
    if (v == NULL)
        *res = http_respond_error(
            rq, e.status == INF_ENOTFOUND ? MHD_HTTP_NOT_FOUND : MHD_HTTP_BAD_REQUEST, "%s", e.msg);
    return v;
}

/* [-1, d0, d1, ...] */
static json_t *batch_shape(const int64_t *dims, int rank)
{
    json_t *a = json_array();
    json_array_append_new(a, json_integer(-1));
    for (int i = 0; i < rank; i++)
        json_array_append_new(a, json_integer(dims[i]));
    return a;
}

enum MHD_Result handle_model_meta(struct request *rq)
{
    enum MHD_Result res;
    struct model_version *v = lookup(rq, &res);
    if (v == NULL)
        return res;
    const struct model_info *info = model_get_info(v->model);
    json_t *in_shape = info->input_kind == MODEL_INPUT_TEXT
                           ? json_pack("[i]", -1)
                           : batch_shape(info->input_shape, info->input_rank);
    json_t *outputs;
    int64_t O = (int64_t)info->out_size;
    if (info->task == MODEL_TASK_CLASSIFICATION)
        outputs = json_pack("[{s:s, s:s, s:o}, {s:s, s:s, s:[i]}]", "name", "probabilities",
                            "datatype", "FP32", "shape", batch_shape(&O, 1), "name", "label",
                            "datatype", "BYTES", "shape", -1);
    else
        outputs = json_pack("[{s:s, s:s, s:o}]", "name", "output", "datatype", "FP32", "shape",
                            batch_shape(&O, 1));
    json_t *labels = json_array();
    for (size_t i = 0; i < info->n_labels; i++)
        json_array_append_new(labels, json_string(info->labels[i]));
    json_t *versions = registry_versions(rq->srv->registry, v->name);
    json_t *meta = json_pack(
        "{s:s, s:o, s:s, s:[{s:s, s:s, s:o}], s:o, s:{s:s, s:o, s:I, s:I}}", "name", v->name,
        "versions", versions ? versions : json_array(), "platform", "infera", "inputs", "name",
        info->input_name, "datatype", info->input_datatype, "shape", in_shape, "outputs", outputs,
        "parameters", "task", model_task_name(info->task), "labels", labels, "parameters_count",
        (json_int_t)info->n_params, "layers", (json_int_t)info->n_layers);
    if (meta != NULL && strstr(rq->route->pattern, "{v}") != NULL) {
        char vs[16];
        snprintf(vs, sizeof vs, "%d", v->version);
        json_object_set_new(meta, "version", json_string(vs));
    }
    model_version_release(v);
    return http_respond_json(rq, MHD_HTTP_OK, meta);
}

enum MHD_Result handle_model_ready(struct request *rq)
{
    enum MHD_Result res;
    struct model_version *v = lookup(rq, &res);
    if (v == NULL)
        return res;
    json_t *body = json_pack("{s:s, s:b}", "name", v->name, "ready", 1);
    model_version_release(v);
    return http_respond_json(rq, MHD_HTTP_OK, body);
}

/* ------------------------------------------------------------------------------------------
 * Inference
 * ---------------------------------------------------------------------------------------- */

static enum MHD_Result refuse_draining(struct request *rq)
{
    if (rq->srv->metrics != NULL)
        metrics_reject(rq->srv->metrics, "draining");
    return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                              "the server is shutting down; retry on another replica");
}

/* A request over a limit of its content (batch rows, elements, text length) is a 400: 413 is
 * kept for the body size, answered before parsing. */
static enum MHD_Result parse_error(struct request *rq, const struct err *e)
{
    return http_respond_error(
        rq, e->status == INF_ELIMIT ? MHD_HTTP_BAD_REQUEST : http_status_of(e->status), "%s",
        e->msg);
}

/*
 * The common front of infer and explain: refuses while draining, looks up {m}/{v} and parses
 * the body into req (with Triton's binary form when binary is true). Returns the version (a
 * reference the caller releases) with req filled, or NULL after answering the error itself;
 * req needs oip_request_deinit() either way.
 */
static struct model_version *begin_inference(struct request *rq, bool binary,
                                             struct oip_request *req, enum MHD_Result *res)
{
    memset(req, 0, sizeof *req);
    if (atomic_load(&rq->srv->draining)) {
        *res = refuse_draining(rq);
        return NULL;
    }
    struct model_version *v = lookup(rq, res);
    if (v == NULL)
        return NULL;
    size_t json_len = rq->body_len;
    const char *hl = binary ? MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
                                                          "Inference-Header-Content-Length")
                            : NULL;
    if (hl != NULL) {
        char *end = NULL;
        unsigned long long n = strtoull(hl, &end, 10);
        if (end == hl || *end != '\0' || n > rq->body_len) {
            *res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                      "Inference-Header-Content-Length: expected the length of "
                                      "the JSON header, at most the body's %zu bytes",
                                      rq->body_len);
            model_version_release(v);
            return NULL;
        }
        json_len = (size_t)n;
    }
    struct err e = {0};
    if (oip_request_parse_binary(v->model, rq->body, rq->body_len, json_len, &rq->srv->opt.limits,
                                 req, &e) != INF_OK) {
        *res = parse_error(rq, &e);
        model_version_release(v);
        return NULL;
    }
    return v;
}

enum MHD_Result handle_infer(struct request *rq)
{
    enum MHD_Result res;
    struct oip_request req;
    struct model_version *v = begin_inference(rq, true, &req, &res);
    if (v == NULL) {
        oip_request_deinit(&req);
        return res;
    }
    struct err e = {0};
    float *out = NULL;
    char vs[16];
    snprintf(vs, sizeof vs, "%d", v->version);
    const struct model_info *info = model_get_info(v->model);
    out = malloc(req.batch * info->out_size * sizeof *out);
    if (out == NULL) {
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
        goto out;
    }
    int rc = batcher_run(v->batcher, req.x, req.batch, out, &e);
    if (rc == INF_ELIMIT) {
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "%s", e.msg);
        goto out;
    }
    if (rc != INF_OK) {
        res = http_respond_error(rq, http_status_of(rc), "%s", e.msg);
        goto out;
    }
    /* JSON has no NaN or infinity: a model that produced one is the server's fault, not the
     * client's, and the client should hear that rather than "out of memory". */
    size_t n_cols = model_get_info(v->model)->out_size;
    for (size_t i = 0; i < req.batch * n_cols; i++)
        if (!isfinite(out[i])) {
            res = http_respond_error(rq, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                     "model %.128s version %s produced a non-finite output (NaN "
                                     "or infinity) at row %zu, output %zu",
                                     v->name, vs, i / n_cols, i % n_cols);
            goto out;
        }
    char *resp = NULL;
    size_t resp_len = 0, resp_json = 0;
    if (oip_response_encode(v->model, v->name, vs, &req, out, &resp, &resp_len, &resp_json) !=
        INF_OK) {
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
        goto out;
    }
    if (resp_json == resp_len) {
        res = http_respond(rq, MHD_HTTP_OK, "application/json", resp, resp_len);
    } else {
        char hdr[32];
        snprintf(hdr, sizeof hdr, "%zu", resp_json);
        res = http_respond_extra(rq, MHD_HTTP_OK, "application/octet-stream", resp, resp_len,
                                 "Inference-Header-Content-Length", hdr);
    }
    free(resp);
out:
    free(out);
    oip_request_deinit(&req);
    model_version_release(v);
    return res;
}

/* ------------------------------------------------------------------------------------------
 * Explain
 * ---------------------------------------------------------------------------------------- */

/* Reads parameters.method/target/steps/baseline into o (baseline buffer: R floats). */
static int explain_options(const struct model *m, const json_t *params, struct model_attr_opts *o,
                           float *baseline, struct err *e)
{
    const struct model_info *info = model_get_info(m);
    *o = (struct model_attr_opts){MODEL_ATTR_SALIENCY, -1, 0, NULL};
    if (params == NULL)
        return INF_OK;
    const json_t *method = json_object_get(params, "method");
    if (method != NULL) {
        int mm = json_is_string(method) ? model_attr_method_parse(json_string_value(method)) : -1;
        if (mm < 0)
            return err_set(e, INF_EINVAL,
                           "parameters.method: expected saliency, "
                           "gradient_x_input or integrated_gradients");
        o->method = (enum model_attr_method)mm;
    }
    const json_t *target = json_object_get(params, "target");
    if (target != NULL) {
        if (json_is_integer(target) && json_integer_value(target) >= 0 &&
            (size_t)json_integer_value(target) < info->out_size)
            o->target = (int)json_integer_value(target);
        else if (json_is_string(target) &&
                 (o->target = oip_label_index(m, json_string_value(target))) >= 0)
            ;
        else
            return err_set(e, INF_EINVAL,
                           "parameters.target: expected a label or an output "
                           "index below %zu",
                           info->out_size);
    }
    const json_t *steps = json_object_get(params, "steps");
    if (steps != NULL) {
        if (!json_is_integer(steps) || json_integer_value(steps) < 1 ||
            json_integer_value(steps) > 1024)
            return err_set(e, INF_EINVAL, "parameters.steps: expected an integer from 1 to 1024");
        o->steps = (size_t)json_integer_value(steps);
    }
    const json_t *base = json_object_get(params, "baseline");
    if (base != NULL && info->input_kind == MODEL_INPUT_TENSOR) {
        if (json_is_number(base)) {
            for (size_t i = 0; i < info->raw_size; i++)
                baseline[i] = (float)json_number_value(base);
        } else {
            int rc = oip_tensor_from_json(base, "FP32", info->input_shape, info->input_rank,
                                          info->raw_size, baseline, "parameters.baseline", e);
            if (rc)
                return rc;
        }
        o->baseline = baseline;
    }
    return INF_OK;
}

enum MHD_Result handle_explain(struct request *rq)
{
    enum MHD_Result res;
    struct oip_request req;
    struct model_version *v = begin_inference(rq, false, &req, &res);
    if (v == NULL) {
        oip_request_deinit(&req);
        return res;
    }
    const struct model *m = v->model;
    const struct model_info *info = model_get_info(m);
    struct err e = {0};
    struct model_workspace *ws = NULL;
    float *baseline = NULL, *attr = NULL;
    json_t *targets = NULL, *data = NULL, *tokens = NULL;
    char vs[16];
    snprintf(vs, sizeof vs, "%d", v->version);
    struct model_attr_opts o;
    baseline = malloc(info->raw_size * sizeof *baseline);
    attr = malloc(info->raw_size * sizeof *attr);
    targets = json_array();
    data = json_array();
    tokens = info->input_kind == MODEL_INPUT_TEXT ? json_array() : NULL;
    if (!baseline || !attr || !targets || !data ||
        (info->input_kind == MODEL_INPUT_TEXT && !tokens)) {
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
        goto out;
    }
    if (explain_options(m, req.params, &o, baseline, &e) != INF_OK) {
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "%s", e.msg);
        goto out;
    }
    /* Saliency and gradient x input take one forward and backward pass of one sample; only
     * integrated gradients runs up to 64 points of its path per pass. A workspace for 64 is
     * about 120 KiB (digits) taken and freed per request: under many connections these blocks
     * set how far the malloc arenas grow (bench/soak/README.md). */
    ws = model_workspace_new(m, o.method == MODEL_ATTR_INTEGRATED_GRADIENTS ? 64 : 1, &e);
    if (ws == NULL) {
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
        goto out;
    }
    for (size_t b = 0; b < req.batch; b++) {
        int target = -1;
        if (info->input_kind == MODEL_INPUT_TEXT) {
            struct model_token_score *ts = NULL;
            size_t nt = 0;
            if (model_attribute_text(m, ws, req.texts[b], req.text_lens[b], &o, &ts, &nt, &target,
                                     &e) != INF_OK)
                break;
            json_t *row = json_array();
            double total = 0;
            for (size_t k = 0; k < nt; k++) {
                json_array_append_new(row, json_pack("{s:s, s:f}", "token", ts[k].token, "score",
                                                     (double)ts[k].score));
                total += ts[k].score;
            }
            model_token_scores_free(ts, nt);
            json_array_append_new(tokens, row);
            json_array_append_new(data, json_real(total));
        } else {
            if (model_attribute(m, ws, req.raw + b * info->raw_size, &o, attr, &target, &e) !=
                INF_OK)
                break;
            for (size_t i = 0; i < info->raw_size; i++)
                json_array_append_new(data, json_real(attr[i]));
        }
        json_array_append_new(targets, info->n_labels ? json_string(info->labels[target])
                                                      : json_integer(target));
    }
    if (e.status != 0) {
        res = http_respond_error(rq, http_status_of(e.status), "%s", e.msg);
        goto out;
    }
    static const char *const method_names[] = {"saliency", "gradient_x_input",
                                               "integrated_gradients"};
    json_t *shape = info->input_kind == MODEL_INPUT_TEXT
                        ? json_pack("[I]", (json_int_t)req.batch)
                        : batch_shape(info->input_shape, info->input_rank);
    if (info->input_kind == MODEL_INPUT_TENSOR)
        json_array_set_new(shape, 0, json_integer((json_int_t)req.batch));
    json_t *body = json_pack("{s:s, s:s, s:s, s:O, s:[{s:s, s:s, s:o, s:O}]}", "model_name",
                             v->name, "model_version", vs, "method", method_names[o.method],
                             "targets", targets, "outputs", "name", "attributions", "datatype",
                             "FP32", "shape", shape, "data", data);
    if (body != NULL && req.id != NULL)
        json_object_set_new(body, "id", json_string(req.id));
    if (body != NULL && tokens != NULL)
        json_object_set(body, "tokens", tokens);
    res = http_respond_json(rq, MHD_HTTP_OK, body);
out:
    json_decref(targets);
    json_decref(data);
    json_decref(tokens);
    free(baseline);
    free(attr);
    model_workspace_free(ws);
    oip_request_deinit(&req);
    model_version_release(v);
    return res;
}

/* ------------------------------------------------------------------------------------------
 * Repository extension
 * ---------------------------------------------------------------------------------------- */

enum MHD_Result handle_repo_index(struct request *rq)
{
    return http_respond_json(rq, MHD_HTTP_OK, registry_index(rq->srv->registry));
}

/* Decodes standard base64 (no whitespace) into a new buffer. */
static int base64_decode(const char *s, size_t n, unsigned char **out, size_t *out_len,
                         struct err *e)
{
    if (n % 4 != 0 || n > (size_t)INT32_MAX)
        return err_set(e, INF_EINVAL, "parameters[\"file:weights.safetensors\"]: not base64");
    unsigned char *buf = malloc(n / 4 * 3 + 1);
    if (buf == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    int len = n ? EVP_DecodeBlock(buf, (const unsigned char *)s, (int)n) : 0;
    if (len < 0) {
        free(buf);
        return err_set(e, INF_EINVAL, "parameters[\"file:weights.safetensors\"]: not base64");
    }
    /* EVP_DecodeBlock counts the bytes that '=' padding stands for. */
    if (n >= 1 && s[n - 1] == '=')
        len--;
    if (n >= 2 && s[n - 2] == '=')
        len--;
    *out = buf;
    *out_len = (size_t)len;
    return INF_OK;
}

/* An audit event for a change of the served models (the request's own record follows). A
 * failure here surfaces as the request record's failure: the answer becomes 503. */
static void model_event(struct request *rq, const char *event, const char *name, int version,
                        const char *source)
{
    json_t *f = json_pack("{s:s,s:s?}", "model", name, "source", source);
    if (f != NULL && version > 0)
        json_object_set_new(f, "version", json_integer(version));
    guard_event(rq->srv, rq, event, f);
    json_decref(f);
}

enum MHD_Result handle_repo_load(struct request *rq)
{
    const char *name = rq->params[0];
    if (!registry_name_valid(name))
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                  "invalid model name: use letters, digits and ._:- (at most "
                                  "%d characters)",
                                  REGISTRY_NAME_MAX);
    struct err e = {0};
    json_t *doc = NULL;
    if (rq->body_len > 0) {
        json_error_t je;
        doc = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &je);
        if (doc == NULL || !json_is_object(doc)) {
            json_decref(doc);
            return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "invalid JSON: %s",
                                      doc ? "expected an object" : je.text);
        }
    }
    const json_t *params = json_object_get(doc, "parameters");
    const char *config = json_string_value(json_object_get(params, "config"));
    const json_t *wj = json_object_get(params, "file:weights.safetensors");
    enum MHD_Result res;
    if (config == NULL && json_object_get(params, "config") != NULL) {
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                 "parameters.config: expected model.json as a string");
    } else if (config != NULL) {
        unsigned char *weights = NULL;
        size_t wlen = 0;
        int version = 0;
        if (wj != NULL && !json_is_string(wj)) {
            res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                     "parameters[\"file:weights.safetensors\"]: expected base64");
        } else if (wj != NULL && base64_decode(json_string_value(wj), json_string_length(wj),
                                               &weights, &wlen, &e) != INF_OK) {
            res = http_respond_error(rq, http_status_of(e.status), "%s", e.msg);
        } else if (registry_load_buffers(rq->srv->registry, name, config,
                                         json_string_length(json_object_get(params, "config")),
                                         weights, wlen, &version, &e) != INF_OK) {
            res = http_respond_error(rq, http_status_of(e.status), "%s", e.msg);
        } else {
            char vs[16];
            snprintf(vs, sizeof vs, "%d", version);
            model_event(rq, "model.loaded", name, version, "api");
            res = http_respond_json(rq, MHD_HTTP_OK,
                                    json_pack("{s:s, s:s}", "name", name, "version", vs));
        }
        free(weights);
    } else if (registry_load_from_store(rq->srv->registry, name, &e) != INF_OK) {
        res = http_respond_error(rq, http_status_of(e.status), "%s", e.msg);
    } else {
        model_event(rq, "model.loaded", name, 0, "store");
        res = http_respond_json(rq, MHD_HTTP_OK, json_pack("{s:s}", "name", name));
    }
    json_decref(doc);
    return res;
}

enum MHD_Result handle_repo_unload(struct request *rq)
{
    const char *name = rq->params[0];
    struct err e = {0};
    if (!registry_name_valid(name))
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "invalid model name");
    if (registry_unload(rq->srv->registry, name, &e) != INF_OK)
        return http_respond_error(rq, http_status_of(e.status), "%s", e.msg);
    model_event(rq, "model.unloaded", name, 0, NULL);
    return http_respond_json(rq, MHD_HTTP_OK, json_pack("{s:s}", "name", name));
}

/* ------------------------------------------------------------------------------------------
 * Metrics
 * ---------------------------------------------------------------------------------------- */

/* The audit log's figures, read at scrape time. */
static void audit_metrics(struct server *srv)
{
    if (srv->guard.audit == NULL || srv->metrics == NULL)
        return;
    struct audit_stats st;
    audit_stats_get(srv->guard.audit, &st);
    metrics_gauge_set(srv->metrics, "infera_audit_records_written",
                      "Audit records made durable since start", NULL, NULL, (double)st.records);
    metrics_gauge_set(srv->metrics, "infera_audit_fsyncs", "Audit group commits (fdatasync)", NULL,
                      NULL, (double)st.fsyncs);
    metrics_gauge_set(srv->metrics, "infera_audit_fsync_seconds_sum",
                      "Seconds spent in audit fdatasync", NULL, NULL, st.fsync_seconds_total);
    metrics_gauge_set(srv->metrics, "infera_audit_write_failures", "Failed audit group commits",
                      NULL, NULL, (double)st.failures);
    metrics_gauge_set(srv->metrics, "infera_audit_healthy", "1 while the audit log is writable",
                      NULL, NULL, audit_healthy(srv->guard.audit) ? 1 : 0);
}

enum MHD_Result handle_metrics(struct request *rq)
{
    audit_metrics(rq->srv);
    size_t len = 0;
    char *text = metrics_render(rq->srv->metrics, &len);
    if (text == NULL)
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    enum MHD_Result res =
        http_respond(rq, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
    free(text);
    return res;
}
