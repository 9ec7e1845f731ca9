/*
 * auth/audit_internal.h - what the audit writer (audit.c, audit_line.c) and verifier
 * (audit_verify.c) share: the chain position, the HMAC, a record's line, segment names and the
 * scan of one segment. Not for other modules: they use auth/audit.h.
 */
#ifndef INFERA_AUTH_AUDIT_INTERNAL_H
#define INFERA_AUTH_AUDIT_INTERNAL_H

#include "audit.h"

#define AUDIT_DUMP_FLAGS (JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII)
#define AUDIT_MAC_BYTES  32
#define AUDIT_MAC_HEX    64

/* A position in the chain: the seq and mac of the last record (0 and zeros before any). */
struct audit_chain {
    uint64_t seq;
    uint8_t mac[AUDIT_MAC_BYTES];
};

/* HMAC-SHA256 with K_audit; one per thread (the writer's, or one per audit_verify call). */
struct audit_hmac;
int audit_hmac_new(const uint8_t key[AUDIT_KEY_BYTES], struct audit_hmac **out, struct err *e);
void audit_hmac_free(struct audit_hmac *h);
/* out = HMAC(K, prev || z[0..len)). */
int audit_hmac_line(struct audit_hmac *h, const uint8_t prev[AUDIT_MAC_BYTES], const char *z,
                    size_t len, uint8_t out[AUDIT_MAC_BYTES], struct err *e);

void audit_hex(const uint8_t *bytes, size_t n, char *out); /* out: 2n + 1 chars */

/*
 * A record serialised before it has a place in the chain: the canonical line (AUDIT_DUMP_FLAGS)
 * with "seq":0 and 64 '0' for the mac. The committer splices in the seq and then the HMAC of
 * the line with the seq in and the mac still zeros (audit_verify.c checks the same bytes).
 */
struct audit_line {
    char *text;     /* NUL-terminated, owned: free() (jansson's allocator made it) */
    size_t len;     /* strlen(text) */
    size_t seq_off; /* offset of the seq's '0' */
    size_t mac_off; /* offset of the mac's 64 zeros (before seq: keys are sorted) */
};

/* audit_line_flat's answer for a record it does not take. */
#define AUDIT_LINE_NOT_FLAT 1

/*
 * The line of rec with "mac" and "seq" as placeholders (members of those names are replaced),
 * when rec is flat: an object whose values are all strings, integers, true, false or null (every
 * record on the request path). Written directly (common/json_write.h), byte-for-byte what
 * json_dump_checked(rec + placeholders, AUDIT_DUMP_FLAGS) gives, except that a key that is not
 * UTF-8 always fails (jansson can let two such keys through as valid but wrong JSON). rec is
 * borrowed and not changed. Returns INF_OK and sets *out; AUDIT_LINE_NOT_FLAT, with nothing
 * done, for any other rec; or audit_line_prepare's errors, *out untouched.
 */
int audit_line_flat(const json_t *rec, struct audit_line *out, struct err *e);

/*
 * The line of any record rec the jansson way: "seq" and "mac" set on rec (which is changed),
 * json_dump_checked, the placeholders' offsets found in the text. Returns INF_OK and sets *out;
 * INF_EINVAL if a string is not UTF-8, INF_ELIMIT if the line could pass AUDIT_LINE_MAX once its
 * seq is in (audit_line_err_long's message), INF_ENOMEM.
 */
int audit_line_dump(json_t *rec, struct audit_line *out, struct err *e);

/* The line of the working record rec (from the writer's record_new): audit_line_flat, else
 * (reals, nested values) audit_line_dump. Returns as audit_line_dump. */
int audit_line_prepare(json_t *rec, struct audit_line *out, struct err *e);

/* "the audit record is longer than AUDIT_LINE_MAX bytes": one wording wherever it is raised.
 * Returns INF_ELIMIT. */
int audit_line_err_long(struct err *e);

/* "audit-%06u.jsonl" into out (cap bytes). */
void audit_segment_name(unsigned num, char *out, size_t cap);

/* The segment numbers in dir, ascending, in a new array (caller frees). INF_ENOTFOUND if dir
 * does not exist. */
int audit_segments_list(const char *dir, unsigned **nums, size_t *n, struct err *e);

/* Result of checking one segment file. */
struct audit_scan {
    uint64_t records;       /* lines that verified */
    struct audit_chain end; /* chain position after the last good line */
    uint64_t good_bytes;    /* length of the verified prefix of the file */
    uint64_t file_bytes;    /* bytes read in all */
    bool bad;               /* a line failed; why says which and how */
    bool torn;              /* ...and it is a torn tail (see the header comment) */
    char why[ERR_MSG_MAX];
};

/*
 * Checks segment number num at path. base: the chain position the segment must continue, or
 * NULL to take it from the segment's own segment_start (start-up recovery). Verification
 * problems are reported in *out (return INF_OK); the return is an error only for I/O or memory.
 */
int audit_segment_scan(struct audit_hmac *h, const char *path, unsigned num,
                       const struct audit_chain *base, struct audit_scan *out, struct err *e);

#endif /* INFERA_AUTH_AUDIT_INTERNAL_H */
