/*
 * server/audit_api.c - GET /v1/audit (admin): the latest audit records, newest first, for the
 * console and for operators who would rather not shell into the data dir.
 *
 * Query: limit (1..1000, default 100); before_seq (only records with a smaller seq: the next
 * page). Records are returned as written (already masked; they never hold bodies or secrets).
 * Reading races the writer harmlessly: a line still being written (no newline yet) is skipped.
 * Only the newest segments are read, at most AUDIT_READ_MAX bytes from the end of each.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define AUDIT_READ_MAX ((size_t)8 << 20)

/* Segment numbers in dir, ascending (audit-NNNNNN.jsonl); caller frees. */
static int segments(const char *dir, unsigned **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL)
        return INF_ENOTFOUND;
    size_t cap = 0;
    struct dirent *de;
    int rc = INF_OK;
    while ((de = readdir(d)) != NULL) {
        unsigned num;
        char tail[8];
        if (sscanf(de->d_name, "audit-%6u.%7s", &num, tail) != 2 || strcmp(tail, "jsonl") != 0 ||
            strlen(de->d_name) != 18)
            continue;
        if (*n == cap) {
            size_t nc = cap ? cap * 2 : 16;
            unsigned *g = realloc(*out, nc * sizeof *g);
            if (g == NULL) {
                rc = INF_ENOMEM;
                break;
            }
            *out = g;
            cap = nc;
        }
        (*out)[(*n)++] = num;
    }
    closedir(d);
    for (size_t i = 1; i < *n; i++) /* few segments: insertion sort */
        for (size_t k = i; k > 0 && (*out)[k - 1] > (*out)[k]; k--) {
            unsigned t = (*out)[k];
            (*out)[k] = (*out)[k - 1];
            (*out)[k - 1] = t;
        }
    return rc;
}

/* Appends, newest first, the complete records of one segment with seq < before to data until
 * it holds limit. */
static void read_segment(const char *path, uint64_t before, size_t limit, json_t *data)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    char *buf = NULL;
    size_t len = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        size_t want = size < 0 ? 0 : (size_t)size;
        size_t from = want > AUDIT_READ_MAX ? want - AUDIT_READ_MAX : 0;
        buf = malloc(want - from + 1);
        if (buf != NULL && fseek(f, (long)from, SEEK_SET) == 0)
            len = fread(buf, 1, want - from, f);
    }
    fclose(f);
    if (buf == NULL)
        return;
    /* Walk complete lines backwards: each ends with '\n'. */
    size_t end = len;
    while (end > 0 && buf[end - 1] != '\n')
        end--; /* a line still being written */
    while (end > 0 && json_array_size(data) < limit) {
        size_t start = end - 1;
        while (start > 0 && buf[start - 1] != '\n')
            start--;
        json_t *rec = json_loadb(buf + start, end - 1 - start, 0, NULL);
        json_int_t seq = json_integer_value(json_object_get(rec, "seq"));
        if (json_is_object(rec) && seq > 0 && (uint64_t)seq < before)
            json_array_append(data, rec);
        json_decref(rec);
        end = start;
    }
    free(buf);
}

enum MHD_Result handle_audit_list(struct request *rq)
{
    if (rq->srv->guard.audit == NULL)
        return http_respond_error(rq, MHD_HTTP_NOT_FOUND, "the audit log is off (--audit 0)");
    const char *ls = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "limit");
    const char *bs = MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, "before_seq");
    char *end = NULL;
    long limit = 100;
    unsigned long long before = UINT64_MAX;
    if (ls != NULL && ((limit = strtol(ls, &end, 10)) < 1 || limit > 1000 || *end != '\0'))
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "limit: expected 1..1000");
    if (bs != NULL && ((before = strtoull(bs, &end, 10)) < 1 || *end != '\0' || bs[0] == '-'))
        return http_respond_error(rq, MHD_HTTP_BAD_REQUEST, "before_seq: expected a positive seq");
    const char *dir = rq->srv->guard.audit_dir;
    unsigned *nums = NULL;
    size_t n = 0;
    segments(dir, &nums, &n);
    json_t *data = json_array();
    /* One more than asked tells whether more follow. */
    for (size_t i = n; i > 0 && data != NULL && json_array_size(data) <= (size_t)limit; i--) {
        char path[4300];
        snprintf(path, sizeof path, "%s/audit-%06u.jsonl", dir, nums[i - 1]);
        read_segment(path, before, (size_t)limit + 1, data);
    }
    free(nums);
    bool more = json_array_size(data) > (size_t)limit;
    if (more)
        json_array_remove(data, (size_t)limit);
    return http_respond_json(
        rq, MHD_HTTP_OK,
        json_pack("{s:s,s:o,s:b}", "object", "list", "data", data, "has_more", more));
}
