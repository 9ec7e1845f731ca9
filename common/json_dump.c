/*
 * common/json_dump.c - a json_dumps() that fails instead of returning truncated JSON.
 *
 * Two layers (the header lists what each one catches): a writer that latches its first failure,
 * and a single pass over the finished text that accepts exactly one JSON value.
 */
#include "json_dump.h"

#include "common.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------
 * The writer: a growable buffer in jansson's allocator, failure latched
 * ---------------------------------------------------------------------------------------- */

struct dump_buf {
    char *data;  /* NULL until the first write; cap bytes */
    size_t len;  /* bytes written, without the NUL */
    size_t cap;  /* bytes allocated, always > len once data != NULL (room for the NUL) */
    bool failed; /* a write failed: every later write fails too */
    json_malloc_t alloc_fn;
    json_free_t free_fn;
};

/* json_dump_callback_t. Returns 0, or -1 now and for every later call once a write failed. */
static int dump_buf_write(const char *chunk, size_t size, void *user)
{
    struct dump_buf *b = user;
    size_t need;
    if (b->failed)
        return -1;
    /* +1: the NUL json_dump_checked() appends */
    if (!size_add_ok(b->len, size, &need) || !size_add_ok(need, 1, &need) ||
        need > JSON_DUMP_MAX + 1)
        goto fail;
    if (need > b->cap) {
        /* jansson's allocator has no realloc: a new block, a copy, the old one freed. Doubling
         * keeps the copying linear overall. */
        size_t cap = b->cap < 256 ? 256 : b->cap;
        while (cap < need)
            cap = cap > (JSON_DUMP_MAX + 1) / 2 ? JSON_DUMP_MAX + 1 : cap * 2;
        char *grown = b->alloc_fn(cap);
        if (grown == NULL)
            goto fail;
        if (b->data != NULL) {
            memcpy(grown, b->data, b->len);
            b->free_fn(b->data);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, chunk, size);
    b->len += size;
    return 0;
fail:
    b->failed = true;
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * The check: exactly one JSON value (RFC 8259 syntax), no allocation
 * ---------------------------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* s[*i] is '"': moves *i past the closing quote. Bytes >= 0x80 are not checked (jansson wrote
 * them from strings it had validated; a key it could not write breaks the structure instead). */
static bool scan_string(const char *s, size_t len, size_t *i)
{
    size_t p = *i + 1;
    while (p < len) {
        unsigned char c = (unsigned char)s[p];
        if (c == '"') {
            *i = p + 1;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c != '\\') {
            p++;
            continue;
        }
        if (p + 1 >= len)
            return false;
        char esc = s[p + 1];
        if (esc == 'u') {
            if (p + 6 > len)
                return false;
            for (size_t k = p + 2; k < p + 6; k++)
                if (hex_digit(s[k]) < 0)
                    return false;
            p += 6;
        } else if (esc != '\0' && strchr("\"\\/bfnrt", esc) != NULL) {
            p += 2;
        } else {
            return false;
        }
    }
    return false;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at s[*i]; moves *i past it. */
static bool scan_number(const char *s, size_t len, size_t *i)
{
    size_t p = *i;
    if (p < len && s[p] == '-')
        p++;
    if (p < len && s[p] == '0') {
        p++;
    } else if (p < len && is_digit(s[p])) {
        while (p < len && is_digit(s[p]))
            p++;
    } else {
        return false;
    }
    if (p < len && s[p] == '.') {
        if (++p >= len || !is_digit(s[p]))
            return false;
        while (p < len && is_digit(s[p]))
            p++;
    }
    if (p < len && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        if (p < len && (s[p] == '+' || s[p] == '-'))
            p++;
        if (p >= len || !is_digit(s[p]))
            return false;
        while (p < len && is_digit(s[p]))
            p++;
    }
    *i = p;
    return true;
}

/* A string, number or literal at s[*i]; moves *i past it. */
static bool scan_scalar(const char *s, size_t len, size_t *i)
{
    static const char *const literals[] = {"true", "false", "null"};
    if (s[*i] == '"')
        return scan_string(s, len, i);
    for (size_t k = 0; k < sizeof literals / sizeof literals[0]; k++) {
        size_t n = strlen(literals[k]);
        if (len - *i >= n && memcmp(s + *i, literals[k], n) == 0) {
            *i += n;
            return true;
        }
    }
    return scan_number(s, len, i);
}

enum want {
    WANT_VALUE,          /* top level, after ':' or after ',' in an array */
    WANT_VALUE_OR_CLOSE, /* after '[' */
    WANT_KEY,            /* after ',' in an object */
    WANT_KEY_OR_CLOSE,   /* after '{' */
    WANT_COLON,          /* after a key */
    WANT_NEXT,           /* after a value: ',' or the container's close, or the end */
};

/* True if s[0..len) is one JSON value with optional surrounding whitespace. */
static bool json_text_complete(const char *s, size_t len)
{
    /* bit d of open: the container at depth d+1 is an object (1) or an array (0) */
    uint64_t open[JSON_DUMP_MAX_DEPTH / 64] = {0};
    size_t depth = 0, i = 0;
    enum want want = WANT_VALUE;
    for (;;) {
        while (i < len && is_ws(s[i]))
            i++;
        if (i == len)
            return depth == 0 && want == WANT_NEXT;
        char c = s[i];
        bool in_object = depth > 0 && (open[(depth - 1) / 64] >> ((depth - 1) % 64) & 1);
        switch (want) {
            case WANT_KEY_OR_CLOSE:
            case WANT_VALUE_OR_CLOSE:
                if (c == (want == WANT_KEY_OR_CLOSE ? '}' : ']')) {
                    depth--;
                    i++;
                    want = WANT_NEXT;
                    break;
                }
                if (want == WANT_KEY_OR_CLOSE) {
                    want = WANT_KEY;
                    continue;
                }
                want = WANT_VALUE;
                continue;
            case WANT_KEY:
                if (c != '"' || !scan_string(s, len, &i))
                    return false;
                want = WANT_COLON;
                break;
            case WANT_COLON:
                if (c != ':')
                    return false;
                i++;
                want = WANT_VALUE;
                break;
            case WANT_VALUE:
                if (c == '{' || c == '[') {
                    if (depth == JSON_DUMP_MAX_DEPTH)
                        return false;
                    uint64_t bit = (uint64_t)1 << (depth % 64);
                    if (c == '{')
                        open[depth / 64] |= bit;
                    else
                        open[depth / 64] &= ~bit;
                    depth++;
                    i++;
                    want = c == '{' ? WANT_KEY_OR_CLOSE : WANT_VALUE_OR_CLOSE;
                    break;
                }
                if (!scan_scalar(s, len, &i))
                    return false;
                want = WANT_NEXT;
                break;
            case WANT_NEXT:
                if (depth == 0)
                    return false; /* text after the value */
                if (c == ',') {
                    i++;
                    want = in_object ? WANT_KEY : WANT_VALUE;
                    break;
                }
                if (c != (in_object ? '}' : ']'))
                    return false;
                depth--;
                i++;
                break;
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Public
 * ---------------------------------------------------------------------------------------- */

char *json_dump_checked(const json_t *v, size_t flags)
{
    struct dump_buf b = {0};
    if (v == NULL || (flags & JSON_EMBED))
        return NULL;
    json_get_alloc_funcs(&b.alloc_fn, &b.free_fn);
    int rc = json_dump_callback(v, dump_buf_write, &b, flags);
    if (rc != 0 || b.failed || b.data == NULL || !json_text_complete(b.data, b.len)) {
        if (b.data != NULL)
            b.free_fn(b.data);
        return NULL;
    }
    b.data[b.len] = '\0';
    return b.data;
}
