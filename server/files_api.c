/*
 * server/files_api.c - OpenAI's files API on the file store (files.h):
 *
 *   POST   /v1/files               multipart/form-data: file, purpose=fine-tune -> 200 file object
 *   GET    /v1/files               ?purpose&limit&after&order -> {"object": "list", "data",
 *                                  "has_more", "first_id", "last_id"}
 *   GET    /v1/files/{id}          the file object
 *   GET    /v1/files/{id}/content  the bytes as uploaded (application/octet-stream)
 *   DELETE /v1/files/{id}          {"id", "object": "file", "deleted": true}
 *
 * The caller is its key: a key sees and deletes only its own files (another key's file is 404,
 * as one that does not exist), admin keys see all. With --auth 0 every caller is admin and owns
 * files as "". Uploads and deletions are audit events (file.uploaded, file.deleted) besides the
 * request's own record; the client's filename is masked there and never logged. Contents are
 * never logged.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "dataset.h"
#include "files.h"
#include "guard.h"
#include "http.h"
#include "multipart.h"

#define FILES_LIST_MAX 10000 /* OpenAI's limit range is 1..10000, default 10000 */

/* The caller's identity for the store. */
static void caller(const struct request *rq, const char **owner, bool *admin)
{
    if (rq->authenticated) {
        *owner = rq->principal.key_id;
        *admin = (rq->principal.scopes & AUTH_SCOPE_ADMIN) != 0;
    } else {
        *owner = "";
        *admin = !rq->srv->guard.auth; /* auth off: everyone is admin */
    }
}

/* The flat audit fields of a file event (filename masked). New reference or NULL. */
static json_t *event_fields(struct server *srv, const struct file_info *info)
{
    char *masked = guard_mask(srv, info->filename, FILE_NAME_MAX);
    json_t *o = json_pack("{s:s,s:I,s:s,s:s?}", "file_id", info->id, "bytes",
                          (json_int_t)info->bytes, "purpose", info->purpose, "filename", masked);
    free(masked);
    return o;
}

/* ------------------------------------------------------------------------------------------
 * POST /v1/files
 * ---------------------------------------------------------------------------------------- */

enum MHD_Result handle_files_create(struct request *rq)
{
    struct server *srv = rq->srv;
    struct multipart *mp = NULL;
    struct err e = {0};
    enum MHD_Result res;
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    const char *ct =
        MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    int rc = multipart_parse(ct, rq->body, rq->body_len, &mp, &e);
    if (rc != INF_OK)
        return http_respond_error(rq, http_status_of(rc), "%s", e.msg);
    const struct multipart_part *purpose = multipart_find(mp, "purpose");
    const struct multipart_part *file = multipart_find(mp, "file");
    if (multipart_count(mp, "purpose") > 1 || multipart_count(mp, "file") > 1) {
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                 "send one \"file\" and one \"purpose\" field, not more");
        goto out;
    }
    if (purpose == NULL) {
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                 "\"purpose\" is required: set it to \"fine-tune\" (curl: -F "
                                 "purpose=fine-tune)");
        goto out;
    }
    if (purpose->len != 9 || memcmp(purpose->data, "fine-tune", 9) != 0) {
        int n = purpose->len > 32 ? 32 : (int)purpose->len;
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                 "purpose \"%.*s\" is not supported for uploads: the allowed value "
                                 "is \"fine-tune\"",
                                 n, purpose->data);
        goto out;
    }
    if (file == NULL) {
        res = http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                 "\"file\" is required: the training data as a file field (curl: "
                                 "-F file=@train.jsonl)");
        goto out;
    }
    struct file_limits lim = {srv->opt.max_file_bytes, srv->opt.max_file_lines, DATASET_MAX_LINE};
    size_t examples = 0;
    rc = file_validate_training(file->data, file->len, &lim, &examples, &e);
    if (rc != INF_OK) {
        res = http_respond_error(rq, http_status_of(rc), "invalid training file: %s", e.msg);
        goto out;
    }
    const char *filename = file->has_filename && file->filename[0] ? file->filename : "file";
    struct file_info info;
    rc = file_store_put(srv->files, filename, "fine-tune", owner, file->data, file->len, &info, &e);
    if (rc != INF_OK) {
        log_msg(LOG_ERROR, "files: upload failed: %s", e.msg);
        /* The store's messages carry strerror(): a full disk is the operator's to fix, and the
         * client should know it is not its file (507, RFC 4918). */
        if (http_status_of_write(srv, rc, file->len) == MHD_HTTP_INSUFFICIENT_STORAGE)
            res = http_respond_error(rq, MHD_HTTP_INSUFFICIENT_STORAGE,
                                     "the server has no space left to store the file; retry "
                                     "later");
        else
            res = http_respond_error(rq,
                                     rc == INF_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE
                                                      : MHD_HTTP_INTERNAL_SERVER_ERROR,
                                     "the file could not be stored (%s)", inf_status_str(rc));
        goto out;
    }
    json_t *ev = event_fields(srv, &info);
    if (ev != NULL)
        json_object_set_new(ev, "examples", json_integer((json_int_t)examples));
    rc = ev != NULL ? guard_event(srv, rq, "file.uploaded", ev) : INF_ENOMEM;
    json_decref(ev);
    if (rc != INF_OK) {
        /* Stored but not on record: take it back, fail closed. */
        file_store_delete(srv->files, info.id, owner, true, NULL);
        res = http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                 "the audit log cannot be written; the file was not stored");
        goto out;
    }
    log_msg(LOG_INFO, "files: %s uploaded by %s (%llu bytes, %zu examples)", info.id,
            owner[0] ? owner : "-", (unsigned long long)info.bytes, examples);
    res = http_respond_json(rq, MHD_HTTP_OK, file_info_json(&info));
out:
    free(mp);
    return res;
}

/* ------------------------------------------------------------------------------------------
 * GET /v1/files
 * ---------------------------------------------------------------------------------------- */

/* A query argument, NULL when absent or empty. */
static const char *query_arg(const struct request *rq, const char *name)
{
    const char *v = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

enum MHD_Result handle_files_list(struct request *rq)
{
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    const char *limit_s = query_arg(rq, "limit"), *order = query_arg(rq, "order");
    const char *purpose = query_arg(rq, "purpose"), *after = query_arg(rq, "after");
    size_t limit = FILES_LIST_MAX;
    if (limit_s != NULL) {
        size_t v = 0, i = 0;
        for (; limit_s[i] >= '0' && limit_s[i] <= '9' && v <= FILES_LIST_MAX; i++)
            v = v * 10 + (size_t)(limit_s[i] - '0');
        if (i == 0 || limit_s[i] != '\0' || v < 1 || v > FILES_LIST_MAX)
            return http_respond_error(rq, MHD_HTTP_BAD_REQUEST,
                                      "limit must be an integer from 1 to %d", FILES_LIST_MAX);
        limit = v;
    }
    bool ascending = false;
    if (order != NULL && strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0)
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "order must be \"asc\" or \"desc\"");
    ascending = order != NULL && strcmp(order, "asc") == 0;
    struct file_info *files = NULL;
    size_t n = 0;
    bool more = false;
    struct err e = {0};
    int rc = file_store_list(rq->srv->files, owner, admin, purpose, ascending, after, limit, &files,
                             &n, &more, &e);
    if (rc != INF_OK)
        return http_respond_error(rq, http_status_of(rc), "%s", e.msg);
    json_t *data = json_array();
    for (size_t i = 0; i < n && data != NULL; i++)
        json_array_append_new(data, file_info_json(&files[i]));
    /* s? packs a NULL as null, as OpenAI answers an empty page. */
    json_t *out = data ? json_pack("{s:s,s:o,s:b,s:s?,s:s?}", "object", "list", "data", data,
                                   "has_more", more, "first_id", n ? files[0].id : NULL, "last_id",
                                   n ? files[n - 1].id : NULL)
                       : NULL;
    free(files);
    return http_respond_json(rq, MHD_HTTP_OK, out);
}

/* ------------------------------------------------------------------------------------------
 * GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}
 * ---------------------------------------------------------------------------------------- */

static enum MHD_Result not_found(struct request *rq)
{
    return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "no file with id \"%.64s\"", rq->params[0]);
}

enum MHD_Result handle_files_get(struct request *rq)
{
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    struct file_info info;
    if (file_store_get(rq->srv->files, rq->params[0], owner, admin, &info) != INF_OK)
        return not_found(rq);
    return http_respond_json(rq, MHD_HTTP_OK, file_info_json(&info));
}

enum MHD_Result handle_files_content(struct request *rq)
{
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    int rc = file_store_read(rq->srv->files, rq->params[0], owner, admin, &data, &len, &e);
    if (rc == INF_ENOTFOUND)
        return not_found(rq);
    if (rc != INF_OK)
        /* An authentication failure is the server's data gone bad, not the client's fault:
         * 500, never the bytes. */
        return http_respond_error(
            rq, rc == INF_ENOMEM ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_INTERNAL_SERVER_ERROR,
            "%s", e.msg);
    enum MHD_Result res = http_respond(rq, MHD_HTTP_OK, "application/octet-stream", data, len);
    OPENSSL_cleanse(data, len);
    free(data);
    return res;
}

enum MHD_Result handle_files_delete(struct request *rq)
{
    struct server *srv = rq->srv;
    const char *owner;
    bool admin;
    caller(rq, &owner, &admin);
    struct file_info info;
    struct err e = {0};
    if (file_store_get(srv->files, rq->params[0], owner, admin, &info) != INF_OK)
        return not_found(rq);
    int rc = file_store_delete(srv->files, info.id, owner, admin, &e);
    if (rc == INF_ENOTFOUND) /* deleted by a concurrent request */
        return not_found(rq);
    if (rc != INF_OK) {
        log_msg(LOG_ERROR, "files: delete %s: %s", info.id, e.msg);
        return http_respond_error(rq, MHD_HTTP_INTERNAL_SERVER_ERROR,
                                  "file %s could not be deleted (%s)", info.id, inf_status_str(rc));
    }
    json_t *ev = event_fields(srv, &info);
    rc = ev != NULL ? guard_event(srv, rq, "file.deleted", ev) : INF_ENOMEM;
    json_decref(ev);
    if (rc != INF_OK) /* deleted all the same: the data is gone, only its record is missing */
        return http_respond_error(rq, MHD_HTTP_SERVICE_UNAVAILABLE,
                                  "the file is deleted, but the audit log cannot be written");
    log_msg(LOG_INFO, "files: %s deleted", info.id);
    return http_respond_json(
        rq, MHD_HTTP_OK, json_pack("{s:s,s:s,s:b}", "id", info.id, "object", "file", "deleted", 1));
}
