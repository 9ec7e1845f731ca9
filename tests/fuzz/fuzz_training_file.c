/*
 * tests/fuzz/fuzz_training_file.c - the training file check of an upload
 * (file_validate_training), model-free, with and without limits.
 *
 * Input: the file (any bytes; the check sees an exact-size copy).
 *
 * Every check runs twice, file_validate_training (its fast path scans tensor lines' input
 * arrays without jansson) and file_validate_training_reference (jansson only): the same
 * status, message and count.
 *
 * Properties: the status is INF_OK, INF_EINVAL, INF_ELIMIT or INF_ENOMEM, e.status matches and
 * the message names the line ("line N: ..." with 1 <= N <= the lines of the file) except the
 * file-level ones (empty, only blank lines, over the byte limit). On success the count is the
 * number of non-blank lines (>= 1) and *n_examples is written; on failure it is not. The small
 * limits (FUZZ_LIM_*) only add INF_ELIMIT: limited OK => unlimited OK with the same count;
 * unlimited OK and limited not => INF_ELIMIT; both INF_EINVAL => the same message. A file
 * without CR gives the same answer (status, count, message) with CRLF line ends.
 */
#include "server/files.h"
#include "tests/fuzz/fuzz.h"

#define FUZZ_LIM_BYTES      4096
#define FUZZ_LIM_LINES      8
#define FUZZ_LIM_LINE_BYTES 256

static size_t count_examples(const char *d, size_t n, size_t *lines)
{
    size_t ex = 0;
    *lines = 0;
    for (size_t pos = 0; pos < n;) {
        const char *nl = memchr(d + pos, '\n', n - pos);
        size_t end = nl ? (size_t)(nl - d) : n;
        bool blank = true;
        for (size_t k = pos; k < end && blank; k++)
            blank = d[k] == ' ' || d[k] == '\t' || d[k] == '\r';
        ex += !blank;
        (*lines)++;
        pos = end + 1;
    }
    return ex;
}

/* Validates an exact-size copy of d[0..n); checks the status and message. */
static int validate(const char *d, size_t n, const struct file_limits *lim, size_t *count,
                    struct err *e)
{
    char *copy = malloc(n ? n : 1);
    FUZZ_CHECK(copy != NULL, "out of memory");
    memcpy(copy, d, n);
    const size_t untouched = (size_t)-7;
    *count = untouched;
    int rc = file_validate_training(copy, n, lim, count, e);
    /* The fast path (tensor lines' input arrays without jansson) agrees with jansson. */
    size_t rcount = untouched;
    struct err re = {0};
    int rr = file_validate_training_reference(copy, n, lim, &rcount, &re);
    free(copy);
    if (rc != INF_ENOMEM && rr != INF_ENOMEM)
        FUZZ_CHECK(rr == rc && strcmp(re.msg, e->msg) == 0 && rcount == *count,
                   "fast path %d \"%s\" (%zu), jansson %d \"%s\" (%zu)", rc, e->msg, *count, rr,
                   re.msg, rcount);
    size_t lines = 0, examples = count_examples(d, n, &lines);
    if (rc == INF_OK) {
        FUZZ_CHECK(*count >= 1 && *count == examples, "%zu examples counted, %zu non-blank lines",
                   *count, examples);
        if (lim->max_lines > 0)
            FUZZ_CHECK(*count <= lim->max_lines, "%zu examples over the limit", *count);
        if (lim->max_bytes > 0)
            FUZZ_CHECK(n <= lim->max_bytes, "%zu bytes over the limit", n);
        return rc;
    }
    FUZZ_CHECK(rc == INF_EINVAL || rc == INF_ELIMIT || rc == INF_ENOMEM, "status %d (%s)", rc,
               e->msg);
    FUZZ_CHECK(e->status == rc && e->msg[0] != '\0', "status %d without a message", rc);
    FUZZ_CHECK(*count == untouched, "failure wrote *n_examples");
    if (strncmp(e->msg, "line ", 5) == 0) {
        char *endp = NULL;
        unsigned long long ln = strtoull(e->msg + 5, &endp, 10);
        FUZZ_CHECK(endp != e->msg + 5 && *endp == ':' && ln >= 1 && ln <= lines,
                   "line number out of range (%zu lines): %s", lines, e->msg);
    } else {
        FUZZ_CHECK((rc == INF_ELIMIT && lim->max_bytes > 0 && n > lim->max_bytes) ||
                       (rc == INF_EINVAL && examples == 0),
                   "a message without a line: %s", e->msg);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const char *d = (const char *)data;
    const struct file_limits none = {0};
    const struct file_limits small = {FUZZ_LIM_BYTES, FUZZ_LIM_LINES, FUZZ_LIM_LINE_BYTES};
    struct err e = {0}, el = {0};
    size_t n = 0, nl = 0;
    int rc = validate(d, size, &none, &n, &e);
    int rcl = validate(d, size, &small, &nl, &el);
    FUZZ_DEBUG("unlimited %d (%zu examples) %s | limited %d %s", rc, rc == INF_OK ? n : 0, e.msg,
               rcl, el.msg);
    FUZZ_CHECK(rc != INF_ELIMIT, "ELIMIT without limits: %s", e.msg);
    if (rcl == INF_OK)
        FUZZ_CHECK(rc == INF_OK && n == nl, "limits made it pass: %s", e.msg);
    if (rc == INF_OK && rcl != INF_OK)
        FUZZ_CHECK(rcl == INF_ELIMIT || rcl == INF_ENOMEM, "limited: %d %s", rcl, el.msg);
    if (rc == INF_EINVAL && rcl == INF_EINVAL)
        FUZZ_CHECK(strcmp(e.msg, el.msg) == 0, "\"%s\" vs \"%s\"", e.msg, el.msg);

    /* the count is optional */
    struct err e0 = {0};
    char *copy = malloc(size ? size : 1);
    FUZZ_CHECK(copy != NULL, "out of memory");
    memcpy(copy, d, size);
    FUZZ_CHECK(file_validate_training(copy, size, &none, NULL, &e0) == rc, "NULL n_examples");
    free(copy);

    /* LF -> CRLF (only for files without CR, where the two must read the same) */
    if (memchr(d, '\r', size) == NULL && rc != INF_ENOMEM) {
        size_t lfs = 0;
        for (size_t i = 0; i < size; i++)
            lfs += d[i] == '\n';
        char *crlf = malloc(size + lfs + 1);
        FUZZ_CHECK(crlf != NULL, "out of memory");
        size_t k = 0;
        for (size_t i = 0; i < size; i++) {
            if (d[i] == '\n')
                crlf[k++] = '\r';
            crlf[k++] = d[i];
        }
        struct err ec = {0};
        size_t nc = 0;
        int rcc = validate(crlf, k, &none, &nc, &ec);
        FUZZ_CHECK(rcc == rc || rcc == INF_ENOMEM, "CRLF: status %d, LF: %d (%s | %s)", rcc, rc,
                   ec.msg, e.msg);
        if (rcc == rc)
            FUZZ_CHECK(strcmp(ec.msg, e.msg) == 0 && (rc != INF_OK || nc == n),
                       "CRLF: \"%s\", LF: \"%s\"", ec.msg, e.msg);
        free(crlf);
    }
    return 0;
}
