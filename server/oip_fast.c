/*
 * server/oip_fast.c - inputs[0].data of an OIP v2 request without jansson.
 *
 * Two parts: a validating JSON scanner that walks the document to inputs[0].data and on to
 * its end (only to find those keys, so it keeps no values), and a parser for the data array
 * itself that converts each number as it meets it. See oip_fast.h for the contract.
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "oip_fast.h"

#ifdef __FAST_MATH__
#error "oip_fast.c relies on exact IEEE double arithmetic: do not build it with -ffast-math"
#endif

/*
 * Clinger's fast path (see num_value) needs each double operation rounded once, to double.
 * With excess precision (x87, FLT_EVAL_METHOD != 0) it would round twice: use strtod always.
 */
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
#define CLINGER_FAST_PATH 1
#else
#define CLINGER_FAST_PATH 0
#endif

/* Containers nested deeper than this outside the data array send the body to jansson. */
#define SCAN_MAX_DEPTH 512

/* Doubles at or beyond this magnitude round to an infinite float: it is the midpoint between
 * FLT_MAX (0x1.fffffep127, odd significand) and 2^128, and a tie rounds to even, 2^128. */
#define FLT_OVERFLOW_EDGE 0x1.ffffffp+127

/* ------------------------------------------------------------------------------------------
 * Tokens
 * ---------------------------------------------------------------------------------------- */

/* A cursor over the body; nothing at or past end is ever read. */
struct scan {
    const char *p;
    const char *end;
};

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static const char *ws_skip(const char *p, const char *end)
{
    while (p < end && is_ws(*p))
        p++;
    return p;
}

static void skip_ws(struct scan *s)
{
    s->p = ws_skip(s->p, s->end);
}

/* Consumes c after optional whitespace; false (cursor after the whitespace) if c is not next. */
static bool eat(struct scan *s, char c)
{
    skip_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return true;
    }
    return false;
}

/* True if the next byte (no whitespace skipped) is c. */
static bool at(const struct scan *s, char c)
{
    return s->p < s->end && *s->p == c;
}

/*
 * Moves s past the string that starts at s->p (a '"'), checking what JSON requires of its
 * bytes: no raw control characters, only the escapes \" \\ \/ \b \f \n \r \t \uXXXX. If name
 * is not NULL, *match tells whether the decoded string equals name (ASCII), so a key spelled
 * "\u0069nputs" is "inputs" here as it is for jansson. UTF-8 validity is left to jansson.
 */
static bool scan_string(struct scan *s, const char *name, bool *match)
{
    const char *p = s->p + 1, *end = s->end;
    bool same = name != NULL;
    size_t i = 0; /* next byte of name to compare */
    while (p < end && *p != '"') {
        unsigned code = (unsigned char)*p++;
        if (code < 0x20)
            return false;
        if (code == '\\') {
            if (p == end)
                return false;
            static const char esc[] = "\"\\/bfnrt", dec[] = "\"\\/\b\f\n\r\t";
            const char *simple = *p != '\0' ? strchr(esc, *p) : NULL;
            if (simple != NULL) {
                code = (unsigned char)dec[simple - esc];
                p++;
            } else if (*p == 'u' && end - p >= 5) {
                code = 0;
                for (int k = 1; k <= 4; k++) {
                    int h = hex_digit(p[k]);
                    if (h < 0)
                        return false;
                    code = code * 16 + (unsigned)h;
                }
                p += 5;
            } else {
                return false;
            }
        }
        /* A raw byte >= 0x80 or an escape above 0x7f never equals an ASCII name's byte. */
        if (same) {
            same = name[i] != '\0' && (unsigned char)name[i] == code;
            i++;
        }
    }
    if (p == end)
        return false;
    s->p = p + 1;
    if (match != NULL)
        *match = same && name[i] == '\0';
    return true;
}

/* Moves s past true, false or null at s->p. */
static bool scan_literal(struct scan *s)
{
    static const char *const lits[] = {"true", "false", "null"};
    for (size_t i = 0; i < sizeof lits / sizeof lits[0]; i++) {
        size_t l = strlen(lits[i]);
        if ((size_t)(s->end - s->p) >= l && memcmp(s->p, lits[i], l) == 0) {
            s->p += l;
            return true;
        }
    }
    return false;
}

/* A number token taken apart: its value is (neg ? -1 : 1) * mant * 10^exp10 when exact. */
struct num {
    const char *text; /* the token in the body */
    size_t len;
    bool neg;
    bool integer;  /* no fraction, no exponent: jansson makes it a json_integer */
    bool exact;    /* mant and exp10 hold the value exactly (else only strtod knows it) */
    uint64_t mant; /* the first 19 significant digits */
    int64_t exp10;
};

/* Exponent digits stop accumulating here; a token that reaches it is left to strtod. */
#define EXP_SATURATE 100000000

/*
 * Reads the JSON number at p: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. Returns the end
 * of the longest such token, or NULL if p does not start one. The byte after the token is the
 * caller's to judge ("012" reads as "0" followed by '1').
 */
static const char *scan_number(const char *p, const char *end, struct num *n)
{
    const char *q = p;
    uint64_t m = 0;
    int64_t e10 = 0;
    int digits = 0; /* significant digits in m */
    bool exact = true;
    n->neg = q < end && *q == '-';
    if (n->neg)
        q++;
    if (q == end || !is_digit(*q))
        return NULL;
    if (*q == '0') {
        q++;
    } else {
        for (; q < end && is_digit(*q); q++) {
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                digits++;
            } else {
                e10++; /* a dropped digit: exact only while it is 0 */
                exact = exact && *q == '0';
            }
        }
    }
    n->integer = true;
    if (q < end && *q == '.') {
        q++;
        n->integer = false;
        if (q == end || !is_digit(*q))
            return NULL;
        for (; q < end && is_digit(*q); q++) {
            if (m == 0 && *q == '0') {
                e10--; /* 0.00x: leading zeros only move the point */
            } else if (digits < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                digits++;
                e10--;
            } else {
                exact = exact && *q == '0'; /* a trailing 0 can be dropped as is */
            }
        }
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        n->integer = false;
        bool eneg = q < end && *q == '-';
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (q == end || !is_digit(*q))
            return NULL;
        int64_t x = 0;
        for (; q < end && is_digit(*q); q++)
            if (x < EXP_SATURATE)
                x = x * 10 + (*q - '0');
        exact = exact && x < EXP_SATURATE;
        e10 += eneg ? -x : x;
    }
    n->text = p;
    n->len = (size_t)(q - p);
    n->exact = exact;
    n->mant = m;
    n->exp10 = e10;
    return q;
}

/* ------------------------------------------------------------------------------------------
 * Numbers to values, the way jansson does it
 * ---------------------------------------------------------------------------------------- */

static const double pow10_exact[23] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/*
 * The double jansson stores for the token: for an integer token (double)strtoll, for others
 * strtod - both the double nearest to the token's value (ties to even), except that the
 * integer -0 is the integer 0, i.e. +0.0. Returns INF_EINVAL for an integer outside int64
 * (jansson rejects it), INF_ENOTFOUND if strtod stops early (not the "C" locale: leave the
 * body to jansson), INF_ENOMEM.
 */
static int num_value(const struct num *n, double *out)
{
    if (n->integer) {
        /* No leading zeros, so more than 19 digits is >= 10^19 > 2^63. */
        uint64_t lim = n->neg ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
        if (n->exp10 > 0 || n->mant > lim)
            return INF_EINVAL;
        /* Integer -> double rounds to nearest, as jansson's (double)json_int_t does. */
        double d = (double)n->mant;
        *out = n->neg && n->mant != 0 ? -d : d;
        return INF_OK;
    }
    if (n->mant == 0) { /* every digit 0: the exponent does not matter */
        *out = n->neg ? -0.0 : 0.0;
        return INF_OK;
    }
#if CLINGER_FAST_PATH
    /*
     * Clinger (1990): mant <= 2^53 and 10^k for k <= 22 (5^22 < 2^53) are exact doubles, and
     * IEEE multiplication and division round the exact result once. So mant * 10^e and
     * mant / 10^-e are the double nearest to the token, the same double a correctly rounded
     * strtod (glibc's is) returns.
     */
    if (n->exact && n->mant <= (uint64_t)1 << 53 && n->exp10 >= -22 && n->exp10 <= 22) {
        double d = (double)n->mant;
        d = n->exp10 < 0 ? d / pow10_exact[-n->exp10] : d * pow10_exact[n->exp10];
        *out = n->neg ? -d : d;
        return INF_OK;
    }
#endif
    char stack[64], *buf = stack, *endp;
    if (n->len >= sizeof stack && (buf = malloc(n->len + 1)) == NULL)
        return INF_ENOMEM;
    memcpy(buf, n->text, n->len);
    buf[n->len] = '\0';
    *out = strtod(buf, &endp); /* overflow gives +-HUGE_VAL, caught by the FP32 check */
    bool whole = endp == buf + n->len;
    if (buf != stack)
        free(buf);
    return whole ? INF_OK : INF_ENOTFOUND;
}

/* ------------------------------------------------------------------------------------------
 * The data array
 * ---------------------------------------------------------------------------------------- */

struct data {
    float *vals; /* (cap) the numbers so far, row-major */
    size_t n, cap, max;
    int rank;                        /* levels of nesting; 0 until the first number */
    int64_t dims[OIP_FAST_MAX_RANK]; /* 0 until the first array at that level closes */
    size_t count[OIP_FAST_MAX_RANK]; /* elements so far in the open array at each level */
    const char *begin, *end;         /* the array in the body, once parsed */
    const char *name;                /* the array in messages: "inputs[0].data" or the key */
};

static int data_err(const struct data *d, struct err *e, const char *what)
{
    return err_set(e, INF_EINVAL, "%s[%zu]: %s", d->name, d->n, what);
}

/* A byte that cannot end a number: whatever it is part of is reported as the "number". */
static bool is_token_byte(char c)
{
    return c > ' ' && c < 0x7f && c != ',' && c != '[' && c != ']' && c != '{' && c != '}' &&
           c != ':' && c != '"';
}

static int bad_number(const struct data *d, const char *p, const char *end, struct err *e)
{
    size_t len = 0;
    while (p + len < end && len < 32 && is_token_byte(p[len]))
        len++;
    if (len == 0)
        return p == end ? data_err(d, e, "unterminated array")
                        : err_set(e, INF_EINVAL, "%s[%zu]: unexpected byte 0x%02x", d->name, d->n,
                                  (unsigned char)*p);
    return err_set(e, INF_EINVAL, "%s[%zu]: invalid number \"%.*s\"", d->name, d->n, (int)len, p);
}

static int data_push(struct data *d, float v, struct err *e)
{
    if (d->n == d->cap) {
        if (d->n >= d->max)
            return err_set(e, INF_ELIMIT, "%s: more than %zu elements", d->name, d->max);
        size_t cap = d->cap == 0 ? (d->max < 1024 ? d->max : 1024)
                                 : (d->cap <= d->max / 2 ? d->cap * 2 : d->max);
        size_t bytes;
        float *grown = NULL;
        if (size_mul_ok(cap, sizeof *grown, &bytes))
            grown = realloc(d->vals, bytes);
        if (grown == NULL)
            return err_set(e, INF_ENOMEM, "out of memory for %zu elements", cap);
        d->vals = grown;
        d->cap = cap;
    }
    d->vals[d->n++] = v;
    return INF_OK;
}

/* Parses the number, or rejects the non-number, at *pp; moves *pp past it. */
static int data_element(struct data *d, const char **pp, const char *end, struct err *e)
{
    const char *p = *pp;
    struct num n;
    if (*p == '"' || *p == '{')
        return INF_ENOTFOUND; /* BYTES data, or an error the slow path words better */
    if (*p == 't' || *p == 'f' || *p == 'n') {
        struct scan lit = {p, end};
        return scan_literal(&lit) ? INF_ENOTFOUND : bad_number(d, p, end, e);
    }
    const char *q = scan_number(p, end, &n);
    if (q == NULL || (q < end && is_token_byte(*q))) /* 012, 1.5x, 0x10, 1e5.5 */
        return bad_number(d, p, end, e);
    double v;
    int rc = num_value(&n, &v);
    if (rc == INF_EINVAL)
        return err_set(e, rc, "%s[%zu]: integer %.*s is out of range", d->name, d->n,
                       n.len > 32 ? 32 : (int)n.len, p);
    if (rc != INF_OK)
        return rc == INF_ENOMEM ? err_set(e, rc, "out of memory") : rc;
    if (!(fabs(v) < FLT_OVERFLOW_EDGE))
        return err_set(e, INF_EINVAL, "%s[%zu]: %.*s is not a finite FP32 value", d->name, d->n,
                       n.len > 32 ? 32 : (int)n.len, p);
    *pp = q;
    return data_push(d, (float)v, e);
}

/* Counts one more element (number or array) at level, the array that depth level + 1 opens. */
static int count_element(struct data *d, int level, struct err *e)
{
    if (++d->count[level] > (size_t)d->dims[level] && d->dims[level] != 0)
        return err_set(e, INF_EINVAL,
                       "%s[%zu]: ragged array: more than the %lld elements of the "
                       "first array at depth %d",
                       d->name, d->n, (long long)d->dims[level], level);
    return INF_OK;
}

/*
 * Parses the data array at s->p (a '[') into d and moves s past it. Arrays nest as a
 * rectangle: the first number fixes the rank, the first array to close at each level fixes
 * that level's size, and every later array and number must agree. Errors name the index of
 * the element at fault (the number, or the first number of the array) or where it is missing.
 */
static int parse_data(struct scan *s, struct data *d, struct err *e)
{
    const char *p = s->p, *end = s->end;
    int depth = 0; /* arrays open */
    int rc;
    for (;;) {
        /* p is at a value (whitespace skipped). */
        if (p == end)
            return data_err(d, e, "unterminated array");
        if (*p == '[') {
            if (d->rank != 0 && depth >= d->rank)
                return data_err(d, e, "ragged array: an array where a number belongs");
            if (depth == OIP_FAST_MAX_RANK)
                return INF_ENOTFOUND;
            if (depth > 0 && (rc = count_element(d, depth - 1, e)))
                return rc;
            d->count[depth++] = 0;
            p = ws_skip(p + 1, end);
            if (p < end && *p == ']')
                return INF_ENOTFOUND; /* empty: no tensor a model takes, the slow path says why */
            continue;
        }
        if (d->rank == 0)
            d->rank = depth;
        else if (depth != d->rank)
            return data_err(d, e, "ragged array: a number where an array belongs");
        if ((rc = count_element(d, depth - 1, e)) || (rc = data_element(d, &p, end, e)))
            return rc;
        /* After a value: ',' to the next one, or ']' closing arrays. */
        for (;;) {
            p = ws_skip(p, end);
            if (p < end && *p == ',') {
                p = ws_skip(p + 1, end);
                if (p < end && *p == ']')
                    return data_err(d, e, "expected a number after ','");
                break;
            }
            if (p == end || *p != ']')
                return p == end ? data_err(d, e, "unterminated array")
                                : data_err(d, e, "expected ',' or ']'");
            p++;
            int level = --depth;
            if (d->dims[level] == 0)
                d->dims[level] = (int64_t)d->count[level];
            else if ((size_t)d->dims[level] != d->count[level])
                return err_set(e, INF_EINVAL,
                               "%s[%zu]: ragged array: %zu elements in an array at "
                               "depth %d, the first there has %lld",
                               d->name, d->n, d->count[level], level, (long long)d->dims[level]);
            if (depth == 0) {
                s->p = p;
                return INF_OK;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * The document around it
 * ---------------------------------------------------------------------------------------- */

static bool skip_value(struct scan *s, int depth);

/* Moves s past the object or array at s->p; depth counts the containers it is in. */
static bool skip_container(struct scan *s, int depth)
{
    bool object = *s->p == '{';
    char close = object ? '}' : ']';
    if (depth > SCAN_MAX_DEPTH)
        return false;
    s->p++;
    if (eat(s, close))
        return true;
    do {
        if (object) {
            skip_ws(s);
            if (!at(s, '"') || !scan_string(s, NULL, NULL) || !eat(s, ':'))
                return false;
        }
        if (!skip_value(s, depth))
            return false;
    } while (eat(s, ','));
    return eat(s, close);
}

/* Moves s past one JSON value (and the whitespace before it), checking its grammar. */
static bool skip_value(struct scan *s, int depth)
{
    struct num n;
    skip_ws(s);
    if (s->p == s->end)
        return false;
    char c = *s->p;
    if (c == '"')
        return scan_string(s, NULL, NULL);
    if (c == '{' || c == '[')
        return skip_container(s, depth + 1);
    if (c == 't' || c == 'f' || c == 'n')
        return scan_literal(s);
    const char *q = scan_number(s->p, s->end, &n);
    s->p = q != NULL ? q : s->p;
    return q != NULL;
}

/*
 * Steps to the next member of an object whose '{' has been consumed. Returns 1 with s after
 * the key's ':' and *match telling whether the key is name, 0 after the closing '}', -1 on a
 * syntax error. *first is true before the first member.
 */
static int member_next(struct scan *s, bool *first, const char *name, bool *match)
{
    skip_ws(s);
    if (at(s, '}')) {
        s->p++;
        return 0;
    }
    if (!*first && !eat(s, ','))
        return -1;
    *first = false;
    skip_ws(s);
    if (!at(s, '"') || !scan_string(s, name, match) || !eat(s, ':'))
        return -1;
    return 1;
}

/* inputs[0]: the object at s->p. */
static int parse_input(struct scan *s, struct data *d, struct err *e)
{
    bool first = true, is_data, seen = false;
    int k, rc;
    s->p++;
    while ((k = member_next(s, &first, "data", &is_data)) > 0) {
        if (!is_data) {
            if (!skip_value(s, 3))
                return INF_ENOTFOUND;
            continue;
        }
        skip_ws(s);
        if (seen || !at(s, '['))
            return INF_ENOTFOUND; /* a duplicate (jansson rejects it) or not an array */
        seen = true;
        d->begin = s->p;
        if ((rc = parse_data(s, d, e)))
            return rc;
        d->end = s->p;
    }
    return k == 0 && seen ? INF_OK : INF_ENOTFOUND;
}

/* The value of the top-level "inputs" key, at s->p (whitespace before it not yet skipped). */
static int parse_inputs(struct scan *s, struct data *d, struct err *e)
{
    int rc;
    if (!eat(s, '['))
        return INF_ENOTFOUND;
    skip_ws(s);
    if (!at(s, '{'))
        return INF_ENOTFOUND;
    if ((rc = parse_input(s, d, e)))
        return rc;
    while (eat(s, ','))
        if (!skip_value(s, 2))
            return INF_ENOTFOUND;
    return eat(s, ']') ? INF_OK : INF_ENOTFOUND;
}

/* The top-level object: the data array is inputs[0].data when key is NULL, else the value of
 * the top-level member key. */
static int parse_document(struct scan *s, struct data *d, const char *key, struct err *e)
{
    bool first = true, is_key, seen = false;
    int k, rc;
    if (!eat(s, '{'))
        return INF_ENOTFOUND;
    while ((k = member_next(s, &first, key ? key : "inputs", &is_key)) > 0) {
        if (!is_key) {
            if (!skip_value(s, 1))
                return INF_ENOTFOUND;
            continue;
        }
        if (seen)
            return INF_ENOTFOUND; /* a duplicate: jansson rejects it */
        seen = true;
        if (key == NULL) {
            rc = parse_inputs(s, d, e);
        } else {
            skip_ws(s);
            if (!at(s, '['))
                return INF_ENOTFOUND;
            d->begin = s->p;
            rc = parse_data(s, d, e);
            d->end = s->p;
        }
        if (rc)
            return rc;
    }
    if (k < 0 || !seen)
        return INF_ENOTFOUND;
    skip_ws(s);
    return s->p == s->end ? INF_OK : INF_ENOTFOUND;
}

static int extract(const char *body, size_t len, const char *key, size_t max_elements, float **vals,
                   size_t *n, int64_t *dims, int *rank, char **rest, size_t *rest_len,
                   struct err *e)
{
    struct data d = {.max = max_elements, .name = key ? key : "inputs[0].data"};
    size_t head, tail, rlen;
    char *r;
    if (body == NULL)
        return INF_ENOTFOUND;
    struct scan s = {body, body + len};
    int rc = parse_document(&s, &d, key, e);
    if (rc != INF_OK)
        goto out;
    /* The array is at least "[0]", so rest is shorter than body: no overflow. */
    head = (size_t)(d.begin - body);
    tail = (size_t)(body + len - d.end);
    rlen = head + 2 + tail;
    r = malloc(rlen + 1);
    if (r == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory");
        goto out;
    }
    memcpy(r, body, head);
    memcpy(r + head, "[]", 2);
    memcpy(r + head + 2, d.end, tail);
    r[rlen] = '\0';
    *vals = d.vals;
    d.vals = NULL;
    *n = d.n;
    memcpy(dims, d.dims, (size_t)d.rank * sizeof *dims);
    *rank = d.rank;
    *rest = r;
    *rest_len = rlen;
out:
    free(d.vals);
    return rc;
}

int oip_fast_extract_data(const char *body, size_t len, size_t max_elements, float **vals,
                          size_t *n, int64_t *dims, int *rank, char **rest, size_t *rest_len,
                          struct err *e)
{
    return extract(body, len, NULL, max_elements, vals, n, dims, rank, rest, rest_len, e);
}

int oip_fast_extract_member(const char *body, size_t len, const char *key, size_t max_elements,
                            float **vals, size_t *n, int64_t *dims, int *rank, char **rest,
                            size_t *rest_len, struct err *e)
{
    if (key == NULL)
        return INF_ENOTFOUND;
    return extract(body, len, key, max_elements, vals, n, dims, rank, rest, rest_len, e);
}
