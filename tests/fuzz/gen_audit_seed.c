/*
 * tests/fuzz/gen_audit_seed.c - writes the seed corpus of fuzz_audit_verify with auth's own
 * writer (audit_open / audit_append), so the seeds are valid chains under the harness's key.
 *
 *     gen_audit_seed OUT_DIR
 *
 * Run once by `tests/fuzz/run --gen-seeds`; its output is committed under
 * tests/fuzz/corpus/audit_verify/. Each seed is the log's segments joined by one NUL byte
 * (the harness's input format):
 *   valid_multi     12 records of every value type in segments of ~700 bytes (4-5 segments)
 *   valid_single    one record in one segment
 *   valid_recovered a torn tail cut by audit_open (an audit.tail_truncated record), then more
 *   seg1_only       the first segment of valid_multi alone
 *   torn_tail       valid_multi with its last line cut short
 *   bad_mac         valid_multi with one hex digit of the 3rd line's mac changed
 *   swapped         valid_multi with lines 2 and 3 of segment 1 swapped
 *   missing_seg     valid_multi without its second segment
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/audit.h"
#include "tests/fuzz/fuzz.h"

struct buf {
    char *p;
    size_t len;
};

static void die(const char *what, const struct err *e)
{
    fprintf(stderr, "gen_audit_seed: %s: %s\n", what, e != NULL ? e->msg : "");
    exit(1);
}

static void key_init(uint8_t key[AUDIT_KEY_BYTES])
{
    for (int i = 0; i < AUDIT_KEY_BYTES; i++)
        key[i] = (uint8_t)i; /* the key fuzz_audit_verify.c uses */
}

static void append(struct audit_log *log, json_t *rec)
{
    struct err e = {0};
    if (rec == NULL || audit_append(log, rec, NULL, &e) != INF_OK)
        die("audit_append", &e);
    json_decref(rec);
}

/* Joins dir's segments 1.. (skipping number skip, 0: none) with NUL bytes. */
static struct buf join_segments(const char *dir, unsigned skip, size_t *nseg)
{
    struct buf b = {0};
    unsigned used = 0;
    for (unsigned i = 1;; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/audit-%06u.jsonl", dir, i);
        char *data = NULL;
        size_t len = 0;
        struct err e = {0};
        if (fs_read_file(path, 1 << 20, &data, &len, &e) != INF_OK)
            break;
        if (nseg != NULL)
            *nseg = i;
        if (i != skip) {
            b.p = realloc(b.p, b.len + len + 2); /* a separator and a NUL after the end */
            if (b.p == NULL)
                die("out of memory", NULL);
            if (used++ > 0)
                b.p[b.len++] = '\0';
            memcpy(b.p + b.len, data, len);
            b.len += len;
            b.p[b.len] = '\0'; /* not counted in len: for strstr */
        }
        free(data);
    }
    return b;
}

static void save(const char *out_dir, const char *name, const char *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", out_dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        die(path, NULL);
}

static void remove_log(const char *dir)
{
    fuzz_rmdir_files(dir);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
        return 2;
    }
    fuzz_setup_once();
    const char *out = argv[1];
    uint8_t key[AUDIT_KEY_BYTES];
    key_init(key);
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/infera-gen-audit-%ld", (long)getpid());
    struct err e = {0};
    struct audit_log *log = NULL;
    struct audit_options opt = {.segment_bytes = 700, .max_batch = 0};

    /* valid_multi and the variants derived from it */
    remove_log(dir);
    if (audit_open(dir, key, &opt, &log, &e) != INF_OK)
        die("audit_open", &e);
    append(log, json_pack("{s:s, s:s, s:i}", "event", "request", "key", "Ab3dE6gH", "status", 200));
    append(log, json_pack("{s:s, s:s}", "event", "denied", "reason", "bad_secret"));
    append(log,
           json_pack("{s:s, s:f, s:b, s:n}", "event", "model.load", "ms", 0.1, "ok", 1, "note"));
    append(log, json_pack("{s:s, s:s}", "event", "note", "text",
                          "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\"\t\\"));
    append(log, json_pack("{s:s, s:I, s:f}", "event", "job", "id", (json_int_t)-9007199254740993LL,
                          "loss", 1e-300));
    for (int i = 0; i < 7; i++)
        append(log, json_pack("{s:s, s:i, s:s}", "event", "request", "n", i, "path",
                              "/v2/models/digits/infer"));
    audit_close(log);
    log = NULL;
    size_t nseg = 0;
    struct buf multi = join_segments(dir, 0, &nseg);
    if (nseg < 3)
        die("expected at least 3 segments", NULL);
    save(out, "valid_multi", multi.p, multi.len);
    const char *first_nul = memchr(multi.p, '\0', multi.len);
    save(out, "seg1_only", multi.p, (size_t)(first_nul - multi.p));
    save(out, "torn_tail", multi.p, multi.len - 20);
    struct buf miss = join_segments(dir, 2, NULL);
    save(out, "missing_seg", miss.p, miss.len);
    free(miss.p);
    {
        char *c = malloc(multi.len + 1);
        memcpy(c, multi.p, multi.len + 1);
        char *l2 = memchr(c, '\n', multi.len) + 1;
        char *l3 = memchr(l2, '\n', multi.len - (size_t)(l2 - c)) + 1;
        char *mac = strstr(l3, "\"mac\":\"") + 7;
        *mac = *mac == '0' ? '1' : '0';
        save(out, "bad_mac", c, multi.len);
        /* swap lines 2 and 3 (segment 1 holds segment_start + at least 3 records) */
        memcpy(c, multi.p, multi.len);
        char *l4 = memchr(l3, '\n', multi.len - (size_t)(l3 - c)) + 1;
        size_t n2 = (size_t)(l3 - l2), n3 = (size_t)(l4 - l3);
        memcpy(l2, multi.p + (l3 - c), n3);
        memcpy(l2 + n3, multi.p + (l2 - c), n2);
        save(out, "swapped", c, multi.len);
        free(c);
    }
    free(multi.p);
    remove_log(dir);

    /* valid_single */
    if (audit_open(dir, key, NULL, &log, &e) != INF_OK)
        die("audit_open", &e);
    append(log, json_pack("{s:s}", "event", "start"));
    audit_close(log);
    log = NULL;
    struct buf single = join_segments(dir, 0, NULL);
    save(out, "valid_single", single.p, single.len);
    free(single.p);
    remove_log(dir);

    /* valid_recovered: a torn tail that audit_open cuts and records */
    if (audit_open(dir, key, NULL, &log, &e) != INF_OK)
        die("audit_open", &e);
    append(log, json_pack("{s:s, s:i}", "event", "request", "status", 201));
    audit_close(log);
    log = NULL;
    {
        char path[1024];
        snprintf(path, sizeof path, "%s/audit-000001.jsonl", dir);
        FILE *f = fopen(path, "ab");
        if (f == NULL || fputs("{\"event\":\"request\",\"mac\":\"00", f) < 0 || fclose(f) != 0)
            die("cannot tear the tail", NULL);
    }
    if (audit_open(dir, key, NULL, &log, &e) != INF_OK)
        die("audit_open after a torn tail", &e);
    append(log, json_pack("{s:s, s:i}", "event", "request", "status", 202));
    audit_close(log);
    log = NULL;
    struct buf rec = join_segments(dir, 0, NULL);
    if (strstr(rec.p, "audit.tail_truncated") == NULL)
        die("no audit.tail_truncated record", NULL);
    save(out, "valid_recovered", rec.p, rec.len);
    free(rec.p);
    remove_log(dir);
    return 0;
}
