/*
 * auth/audit_line.c - an audit record serialised into its line, with the placeholders the
 * committer fills in (see audit_internal.h). Runs in the appender's thread, so a commit's turn
 * does no JSON work.
 *
 * Flat records do not go through jansson's dump. json_dump_callback builds a loop-detection
 * hashtable and a sorted key array per record and calls back per token; under load that was
 * ~6.5% of the server's CPU (malloc is slow there: glibc's tcache is off). A flat record (every
 * value a string, integer, true, false or null: every record on the request path) is written
 * here in two passes, one that sizes and validates and one that writes into a single exact
 * allocation, with the bytes jansson 2.14 (src/dump.c, src/utf.c) writes for AUDIT_DUMP_FLAGS:
 *   - members in compare_keys order: memcmp over the shorter key, then the shorter key first;
 *   - keys and strings as dump_string with JSON_ENSURE_ASCII and without JSON_ESCAPE_SLASH:
 *     '"' and '\' backslashed; \b \f \n \r \t; every other control character (NUL too) and
 *     every code point above U+007F as \uXXXX with uppercase hex, a surrogate pair above
 *     U+FFFF; '/' and DEL as they are;
 *   - text that is not UTF-8 as utf8_iterate judges it (a stray continuation byte, C0, C1,
 *     F5-FF, a cut sequence, an overlong form, a surrogate, a code point above U+10FFFF) fails
 *     the record with json_dump_checked's error (json_string refuses such text; the *_nocheck
 *     setters can insert it). One difference, on purpose: json_dump_checked lets a record with
 *     two such keys through (jansson ignores a failed key, and the two stray quotes pair up
 *     into valid JSON that misstates the record); here any such key fails. Audit keys are
 *     ASCII (record_check), so no record from audit_append meets either;
 *   - integers as "%" JSON_INTEGER_FORMAT prints them; true, false, null.
 * Reals (rare: key events; jansson's %.17g and its clean-up are not worth copying) and nested
 * values go through json_dump_checked. tests/auth/test_audit.c (test_flat_lines) checks that
 * both give the same bytes and the same errors on 20,000 random records. For a 17-member
 * http.request record audit_line_flat took ~2.5 us against ~15 us for the jansson way (dev VM).
 */

#include "audit_internal.h"
#include "common/json_dump.h"
#include "common/json_write.h"

#include <stdlib.h>
#include <string.h>

#define FLAT_STACK_MEMBERS 32 /* members sorted in place on the stack; more: one allocation */

enum flat_kind {
    FLAT_STRING,
    FLAT_INTEGER,
    FLAT_TRUE,
    FLAT_FALSE,
    FLAT_NULL,
    FLAT_MAC, /* the "mac" placeholder: 64 '0' */
    FLAT_SEQ, /* the "seq" placeholder: 0 */
};

/* One member of a flat record. The text is borrowed from the record (or a literal). */
struct flat_member {
    const char *key;
    size_t key_len;
    size_t key_size; /* escaped (set by the sizing pass); == key_len: nothing to escape */
    enum flat_kind kind;
    const char *str; /* FLAT_STRING: the value */
    size_t str_len;
    size_t str_size;    /* FLAT_STRING: escaped, without quotes, like key_size */
    json_int_t integer; /* FLAT_INTEGER: the value */
};

static int audit_line_err_invalid(struct err *e)
{
    return err_set(e, INF_EINVAL, "the audit record cannot be serialised (invalid UTF-8?)");
}

int audit_line_err_long(struct err *e)
{
    return err_set(e, INF_ELIMIT, "the audit record is longer than %d bytes", AUDIT_LINE_MAX);
}

/* jansson's compare_keys: bytewise (unsigned) over the shorter length, then the shorter key
 * first. A loop, not memcmp: keys are short and the call cost most of the sort. */
static int flat_member_cmp(const void *a, const void *b)
{
    const struct flat_member *x = a, *y = b;
    const unsigned char *kx = (const unsigned char *)x->key, *ky = (const unsigned char *)y->key;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    for (size_t i = 0; i < n; i++)
        if (kx[i] != ky[i])
            return kx[i] < ky[i] ? -1 : 1;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

/* Sorts m[0..n) with flat_member_cmp: insertion sort for the usual ~20 members, qsort beyond
 * (insertion sort is quadratic). Keys are distinct, so the order is unique. */
static void flat_sort(struct flat_member *m, size_t n)
{
    if (n > FLAT_STACK_MEMBERS) {
        qsort(m, n, sizeof *m, flat_member_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        struct flat_member x = m[i];
        size_t j = i;
        for (; j > 0 && flat_member_cmp(&m[j - 1], &x) > 0; j--)
            m[j] = m[j - 1];
        m[j] = x;
    }
}

/* Writes str[0..len) escaped to size bytes (json_write_string_size), without quotes, at p;
 * returns the end or NULL (see json_write_string). Text with nothing to escape (most) is copied at
 * once. */
static char *flat_text_put(char *p, const char *str, size_t len, size_t size)
{
    if (size != len) /* every escape is longer than what it stands for */
        return json_write_string(p, str, len, true);
    memcpy(p, str, len);
    return p + len;
}

/* The length of m's value as written, into *out (and m->str_size for a string); false for a
 * string json_write_string_size refuses. */
static bool flat_value_size(struct flat_member *m, size_t *out)
{
    char digits[JSON_WRITE_INT_CHARS];
    switch (m->kind) {
        case FLAT_STRING:
            if (!json_write_string_size(m->str, m->str_len, true, JSON_DUMP_MAX, &m->str_size))
                return false;
            *out = m->str_size + 2;
            return true;
        case FLAT_INTEGER:
            *out = (size_t)(digits + sizeof digits -
                            json_write_int(m->integer, digits + sizeof digits));
            return true;
        case FLAT_FALSE:
            *out = 5;
            return true;
        case FLAT_MAC:
            *out = AUDIT_MAC_HEX + 2;
            return true;
        case FLAT_SEQ:
            *out = 1;
            return true;
        default: /* true, null */
            *out = 4;
            return true;
    }
}

/* See audit_internal.h. */
int audit_line_flat(const json_t *rec, struct audit_line *out, struct err *e)
{
    struct flat_member stack[FLAT_STACK_MEMBERS], *m = stack;
    json_malloc_t alloc_fn;
    json_free_t free_fn;
    size_t cap, n = 0, total = 2; /* the braces */
    size_t mac_off = 0, seq_off = 0;
    char *line = NULL, *p;
    int rc = INF_OK;
    if (!json_is_object(rec))
        return AUDIT_LINE_NOT_FLAT;
    json_get_alloc_funcs(&alloc_fn, &free_fn);
    if (!size_add_ok(json_object_size(rec), 2, &cap))
        return err_set(e, INF_ENOMEM, "out of memory");
    if (cap > FLAT_STACK_MEMBERS) {
        size_t bytes;
        if (!size_mul_ok(cap, sizeof *m, &bytes) || (m = alloc_fn(bytes)) == NULL)
            return err_set(e, INF_ENOMEM, "out of memory");
    }
    /* json_object_iter takes a non-const object; it only reads here. */
    for (void *iter = json_object_iter((json_t *)rec); iter != NULL;
         iter = json_object_iter_next((json_t *)rec, iter)) {
        struct flat_member *f = &m[n];
        const json_t *v = json_object_iter_value(iter);
        f->key = json_object_iter_key(iter);
        f->key_len = json_object_iter_key_len(iter);
        if (f->key_len == 3 && (memcmp(f->key, "mac", 3) == 0 || memcmp(f->key, "seq", 3) == 0))
            continue; /* replaced by the placeholder */
        switch (json_typeof(v)) {
            case JSON_STRING:
                f->kind = FLAT_STRING;
                f->str = json_string_value(v);
                f->str_len = json_string_length(v);
                break;
            case JSON_INTEGER:
                f->kind = FLAT_INTEGER;
                f->integer = json_integer_value(v);
                break;
            case JSON_TRUE:
                f->kind = FLAT_TRUE;
                break;
            case JSON_FALSE:
                f->kind = FLAT_FALSE;
                break;
            case JSON_NULL:
                f->kind = FLAT_NULL;
                break;
            default:
                rc = AUDIT_LINE_NOT_FLAT;
                goto out;
        }
        n++;
    }
    m[n++] = (struct flat_member){.key = "mac", .key_len = 3, .kind = FLAT_MAC};
    m[n++] = (struct flat_member){.key = "seq", .key_len = 3, .kind = FLAT_SEQ};

    /* Size and validate everything first: a record json_dump_checked refuses is INF_EINVAL even
     * when it is also too long. Every term is at most JSON_DUMP_MAX + 3, so the sum stays below
     * 4 * JSON_DUMP_MAX: no overflow. */
    for (size_t i = 0; i < n; i++) {
        size_t vn;
        if (!json_write_string_size(m[i].key, m[i].key_len, true, JSON_DUMP_MAX, &m[i].key_size) ||
            !flat_value_size(&m[i], &vn)) {
            rc = audit_line_err_invalid(e);
            goto out;
        }
        total += (i > 0) + m[i].key_size + 3 + vn; /* ',' "key": value */
        if (total > JSON_DUMP_MAX) {
            rc = audit_line_err_invalid(e);
            goto out;
        }
    }
    if (total + 20 + 1 > AUDIT_LINE_MAX) { /* as audit_line_prepare checks: seq up to 20 digits */
        rc = audit_line_err_long(e);
        goto out;
    }
    flat_sort(m, n);
    if ((line = alloc_fn(total + 1)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    p = line;
    *p++ = '{';
    for (size_t i = 0; i < n && p != NULL; i++) {
        char digits[JSON_WRITE_INT_CHARS], *d;
        if (i > 0)
            *p++ = ',';
        *p++ = '"';
        if ((p = flat_text_put(p, m[i].key, m[i].key_len, m[i].key_size)) == NULL)
            break;
        *p++ = '"';
        *p++ = ':';
        switch (m[i].kind) {
            case FLAT_STRING:
                *p++ = '"';
                if ((p = flat_text_put(p, m[i].str, m[i].str_len, m[i].str_size)) != NULL)
                    *p++ = '"';
                break;
            case FLAT_INTEGER:
                d = json_write_int(m[i].integer, digits + sizeof digits);
                memcpy(p, d, (size_t)(digits + sizeof digits - d));
                p += digits + sizeof digits - d;
                break;
            case FLAT_TRUE:
                memcpy(p, "true", 4);
                p += 4;
                break;
            case FLAT_FALSE:
                memcpy(p, "false", 5);
                p += 5;
                break;
            case FLAT_NULL:
                memcpy(p, "null", 4);
                p += 4;
                break;
            case FLAT_MAC:
                *p++ = '"';
                mac_off = (size_t)(p - line);
                memset(p, '0', AUDIT_MAC_HEX);
                p += AUDIT_MAC_HEX;
                *p++ = '"';
                break;
            case FLAT_SEQ:
                seq_off = (size_t)(p - line);
                *p++ = '0';
                break;
        }
    }
    if (p == NULL) {
        rc = audit_line_err_invalid(e);
        goto out;
    }
    *p++ = '}';
    *p = '\0';
    out->text = line;
    out->len = total;
    out->mac_off = mac_off;
    out->seq_off = seq_off;
    line = NULL;
out:
    if (line != NULL)
        free_fn(line);
    if (m != stack)
        free_fn(m);
    return rc;
}

/* See audit_internal.h. Keys are restricted and quotes in strings escaped, so in jansson's text
 * the first "mac":" and "seq": are the members. */
int audit_line_dump(json_t *rec, struct audit_line *out, struct err *e)
{
    char zeros[AUDIT_MAC_HEX + 1];
    memset(zeros, '0', AUDIT_MAC_HEX);
    zeros[AUDIT_MAC_HEX] = '\0';
    if (json_object_set_new(rec, "seq", json_integer(0)) != 0 ||
        json_object_set_new(rec, "mac", json_string(zeros)) != 0)
        return err_set(e, INF_ENOMEM, "out of memory");
    char *s = json_dump_checked(rec, AUDIT_DUMP_FLAGS);
    if (s == NULL)
        return audit_line_err_invalid(e);
    size_t len = strlen(s);
    const char *m = strstr(s, "\"mac\":\"");
    const char *q = strstr(s, "\"seq\":0");
    if (len + 20 + 1 > AUDIT_LINE_MAX) {
        free(s);
        return audit_line_err_long(e);
    }
    if (m == NULL || q == NULL || m > q) {
        free(s);
        return err_set(e, INF_EINVAL, "the audit record has no mac or seq member");
    }
    out->text = s;
    out->len = len;
    out->mac_off = (size_t)(m - s) + 7;
    out->seq_off = (size_t)(q - s) + 6;
    return INF_OK;
}

int audit_line_prepare(json_t *rec, struct audit_line *out, struct err *e)
{
    int rc = audit_line_flat(rec, out, e);
    return rc != AUDIT_LINE_NOT_FLAT ? rc : audit_line_dump(rec, out, e);
}
