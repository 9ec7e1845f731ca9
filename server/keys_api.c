/*
 * server/keys_api.c - POST/GET/DELETE /v1/keys (admin): API key management over HTTP.
 *
 * A key's secret appears once, in the 201 answer of its creation; lists and GETs never show
 * the secret or its hash. Every change is an audit event (key.created, key.revoked) besides
 * the request's own record, and takes effect at once: the keystore is shared with the guard.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "guard.h"
#include "http.h"

/* The public view of a key: never its secret or hash. New reference. */
static json_t *key_json(const struct key_info *k)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:o,s:I,s:b}", "id", k->id, "object", "api_key", "name",
                          k->name, "scopes", auth_scopes_to_json(k->scopes), "created_at",
                          (json_int_t)k->created_at, "revoked", k->revoked);
    if (o == NULL)
        return NULL;
    if (k->revoked)
        json_object_set_new(o, "revoked_at", json_integer((json_int_t)k->revoked_at));
    if (k->limits.rate > 0)
        json_object_set_new(o, "rate_limit", json_real(k->limits.rate));
    if (k->limits.burst > 0)
        json_object_set_new(o, "burst", json_real(k->limits.burst));
    if (k->limits.max_concurrent > 0)
        json_object_set_new(o, "max_concurrent", json_integer(k->limits.max_concurrent));
    return o;
}

static bool keys_on(struct request *rq, enum MHD_Result *res)
{
    if (rq->srv->guard.keys != NULL)
        return true;
    *res = http_respond_error(rq, MHD_HTTP_NOT_FOUND, "API keys are off on this server (--auth 0)");
    return false;
}

/* A positive finite number field, or absent (0). */
static int number_field(json_t *body, const char *name, double max, double *out, char *msg,
                        size_t cap)
{
    json_t *v = json_object_get(body, name);
    *out = 0;
    if (v == NULL || json_is_null(v))
        return 0;
    double d = json_number_value(v);
    if (!json_is_number(v) || !isfinite(d) || d <= 0 || d > max) {
        snprintf(msg, cap, "\"%s\" must be a number in (0, %g]", name, max);
        return -1;
    }
    *out = d;
    return 0;
}

enum MHD_Result handle_keys_create(struct request *rq)
{
    enum MHD_Result res;
    if (!keys_on(rq, &res))
        return res;
    json_error_t je;
    json_t *body = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(body)) {
        json_decref(body);
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                  "expected a JSON object {\"name\", \"scopes\"}: %s",
                                  body ? "not an object" : je.text);
    }
    char msg[256] = "";
    const char *name = json_string_value(json_object_get(body, "name"));
    json_t *scopes = json_object_get(body, "scopes");
    unsigned bits = 0;
    struct key_limits lim = {0, 0, 0};
    double conc = 0;
    const char *field;
    size_t i;
    json_t *v;
    json_object_foreach(body, field, v)
    {
        static const char *const known[] = {"name", "scopes", "rate_limit", "burst",
                                            "max_concurrent"};
        bool ok = false;
        for (i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || strcmp(field, known[i]) == 0;
        if (!ok) {
            snprintf(msg, sizeof msg,
                     "unknown field \"%.64s\" (known: name, scopes, rate_limit, burst, "
                     "max_concurrent)",
                     field);
            break;
        }
    }
    if (msg[0] == '\0' && name == NULL)
        snprintf(msg, sizeof msg, "\"name\" (a string) is required");
    if (msg[0] == '\0' && !json_is_array(scopes))
        snprintf(msg, sizeof msg,
                 "\"scopes\" (an array of \"infer\", \"train\", \"admin\") is required");
    json_array_foreach(scopes, i, v)
    {
        if (msg[0] != '\0')
            break;
        struct err e = {0};
        unsigned one = 0;
        if (!json_is_string(v) || auth_scopes_parse(json_string_value(v), &one, &e) != INF_OK ||
            (one & (one - 1)) != 0)
            snprintf(msg, sizeof msg, "scopes[%zu]: expected \"infer\", \"train\" or \"admin\"", i);
        bits |= one;
    }
    if (msg[0] == '\0' && bits == 0)
        snprintf(msg, sizeof msg, "\"scopes\" must name at least one scope");
    if (msg[0] == '\0' && number_field(body, "rate_limit", 1e6, &lim.rate, msg, sizeof msg) == 0 &&
        number_field(body, "burst", 1e6, &lim.burst, msg, sizeof msg) == 0)
        number_field(body, "max_concurrent", 1e5, &conc, msg, sizeof msg);
    if (msg[0] == '\0' && conc != floor(conc))
        snprintf(msg, sizeof msg, "\"max_concurrent\" must be a whole number");
    lim.max_concurrent = (unsigned)conc;
    if (msg[0] != '\0') {
        json_decref(body);
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "%s", msg);
    }
    char token[KEY_TOKEN_MAX];
    struct key_info info;
    struct err e = {0};
    int rc = keystore_create(rq->srv->guard.keys, name, bits, &lim, token, &info, &e);
    json_decref(body);
    if (rc != INF_OK)
        return http_respond_error(rq, http_status_of_write(rq->srv, rc, 4096), "%s", e.msg);
    char *masked = guard_mask(rq->srv, info.name, 128);
    char scopes_csv[32] = "";
    auth_scopes_format(info.scopes, scopes_csv, sizeof scopes_csv);
    json_t *ev =
        json_pack("{s:s,s:s?,s:s}", "target_key_id", info.id, "name", masked, "scopes", scopes_csv);
    free(masked);
    rc = guard_event(rq->srv, rq, "key.created", ev);
    json_decref(ev);
    if (rc != INF_OK) {
        /* The key exists but its creation is not on record: take it back, fail closed. */
        keystore_revoke(rq->srv->guard.keys, info.id, NULL);
        OPENSSL_cleanse(token, sizeof token);
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "the audit log cannot be written; no key was created");
    }
    json_t *out = key_json(&info);
    if (out != NULL)
        json_object_set_new(out, "key", json_string(token));
    OPENSSL_cleanse(token, sizeof token);
    res = http_respond_json(rq, MHD_HTTP_CREATED, out);
    return res;
}

enum MHD_Result handle_keys_list(struct request *rq)
{
    enum MHD_Result res;
    if (!keys_on(rq, &res))
        return res;
    struct key_info *keys = NULL;
    size_t n = 0;
    struct err e = {0};
    if (keystore_list(rq->srv->guard.keys, &keys, &n, &e) != INF_OK)
        return http_respond_error(rq, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s", e.msg);
    json_t *data = json_array();
    for (size_t i = 0; i < n && data != NULL; i++)
        json_array_append_new(data, key_json(&keys[i]));
    free(keys);
    return http_respond_json(
        rq, MHD_HTTP_OK, json_pack("{s:s,s:o,s:b}", "object", "list", "data", data, "has_more", 0));
}

enum MHD_Result handle_keys_get(struct request *rq)
{
    enum MHD_Result res;
    if (!keys_on(rq, &res))
        return res;
    struct key_info info;
    if (keystore_get(rq->srv->guard.keys, rq->params[0], &info) != INF_OK)
        return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no API key with this id");
    return http_respond_json(rq, MHD_HTTP_OK, key_json(&info));
}

enum MHD_Result handle_keys_revoke(struct request *rq)
{
    enum MHD_Result res;
    if (!keys_on(rq, &res))
        return res;
    struct err e = {0};
    struct key_info info;
    if (keystore_get(rq->srv->guard.keys, rq->params[0], &info) != INF_OK)
        return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no API key with this id");
    int rc = keystore_revoke(rq->srv->guard.keys, info.id, &e);
    if (rc != INF_OK)
        return http_respond_error(rq, http_status_of(rc), "%s", e.msg);
    json_t *ev = json_pack("{s:s}", "target_key_id", info.id);
    rc = guard_event(rq->srv, rq, "key.revoked", ev);
    json_decref(ev);
    if (rc != INF_OK) /* revoked all the same: failing open here would keep a key alive */
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "the key is revoked, but the audit log cannot be written");
    return http_respond_json(
        rq, MHD_HTTP_OK,
        json_pack("{s:s,s:s,s:b}", "id", info.id, "object", "api_key", "deleted", 1));
}
