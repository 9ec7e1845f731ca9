/*
 * auth/audit_internal.h - what the audit writer (audit.c) and verifier (audit_verify.c) share:
 * the chain position, the HMAC, segment names and the scan of one segment. Not for other
 * modules: they use auth/audit.h.
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
