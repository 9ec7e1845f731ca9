/*
 * tests/fuzz/fuzz_audit_verify.c - offline verification of audit log segments (audit_verify).
 *
 * Input: the contents of the segments audit-000001.jsonl, audit-000002.jsonl, ... separated by
 * one NUL byte each (a line of the log never holds a raw NUL), at most MAX_SEGMENTS. They are
 * written to a private directory on tmpfs and verified with the fixed key below, the key
 * tests/fuzz/gen_audit_seed.c signed the seeds with, so mutations of a valid chain get past
 * the first MAC check.
 *
 * Properties: INF_OK or INF_EINVAL (and INF_ENOMEM) only; INF_EINVAL comes with a message and
 * report.first_bad equal to it; INF_OK has an empty first_bad; the report never counts more
 * segments than were written, nor more records than there are lines.
 */
#include "auth/audit.h"
#include "tests/fuzz/fuzz.h"

#define MAX_SEGMENTS 8

/* The seeds' key: bytes 0, 1, ..., 31. */
static void fuzz_audit_key(uint8_t key[AUDIT_KEY_BYTES])
{
    for (int i = 0; i < AUDIT_KEY_BYTES; i++)
        key[i] = (uint8_t)i;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    static unsigned written; /* segments left in the directory by the previous input */
    const char *dir = fuzz_scratch_dir("audit");
    char path[512];
    uint8_t key[AUDIT_KEY_BYTES];
    fuzz_audit_key(key);

    unsigned nseg = 0;
    size_t lines = 0;
    for (size_t pos = 0; nseg < MAX_SEGMENTS;) {
        const uint8_t *nul = memchr(data + pos, '\0', size - pos);
        size_t end = nul != NULL ? (size_t)(nul - data) : size;
        nseg++;
        snprintf(path, sizeof path, "%s/audit-%06u.jsonl", dir, nseg);
        fuzz_write_file(path, data + pos, end - pos);
        for (size_t i = pos; i < end; i++)
            lines += data[i] == '\n';
        if (end > pos && data[end - 1] != '\n')
            lines++; /* a torn last line */
        if (nul == NULL)
            break;
        pos = end + 1;
    }
    for (unsigned i = nseg + 1; i <= written; i++) {
        snprintf(path, sizeof path, "%s/audit-%06u.jsonl", dir, i);
        unlink(path);
    }
    written = nseg;

    struct audit_verify_report rep;
    memset(&rep, 0xa5, sizeof rep);
    struct err e = {0};
    int rc = audit_verify(dir, key, &rep, &e);
    FUZZ_DEBUG("%u segments: %d (%zu segments, %llu records verified) %s", nseg, rc, rep.segments,
               (unsigned long long)rep.records, e.msg);
    FUZZ_CHECK(rc == INF_OK || rc == INF_EINVAL || rc == INF_ENOMEM, "status %d (%s)", rc, e.msg);
    FUZZ_CHECK(memchr(rep.first_bad, '\0', sizeof rep.first_bad) != NULL,
               "first_bad not terminated");
    FUZZ_CHECK(rep.segments <= nseg, "%zu segments reported, %u written", rep.segments, nseg);
    FUZZ_CHECK(rep.records <= lines, "%llu records reported, %zu lines",
               (unsigned long long)rep.records, lines);
    if (rc == INF_OK) {
        FUZZ_CHECK(e.status == 0 && rep.first_bad[0] == '\0', "INF_OK with first_bad \"%s\"",
                   rep.first_bad);
        FUZZ_CHECK(rep.records == 0 || rep.last_seq >= rep.records, "last_seq %llu, %llu records",
                   (unsigned long long)rep.last_seq, (unsigned long long)rep.records);
    } else if (rc == INF_EINVAL) {
        FUZZ_CHECK(e.status == rc && e.msg[0] != '\0', "INF_EINVAL without a message");
        FUZZ_CHECK(strcmp(rep.first_bad, e.msg) == 0, "first_bad \"%s\" but e.msg \"%s\"",
                   rep.first_bad, e.msg);
    }
    return 0;
}
