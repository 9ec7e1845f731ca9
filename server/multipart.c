/*
 * server/multipart.c - multipart/form-data bodies (RFC 7578, RFC 2046 section 5.1), parsed in
 * place. See multipart.h for what is accepted and refused.
 *
 * Every header line is copied into a bounded local buffer before it is looked at, so the
 * parameter parsers work on NUL-terminated text of known size; contents are only located
 * (memmem), never copied.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "multipart.h"

#define BOUNDARY_MAX 70 /* RFC 2046 */

/* ------------------------------------------------------------------------------------------
 * Header values: tokens, quoted strings, parameters
 * ---------------------------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t';
}

/* RFC 9110 tchar. */
static bool is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RFC 2046 bchars. */
static bool is_bchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("'()+_,-./:=? ", c) != NULL);
}

static const char *skip_ws(const char *p)
{
    while (is_ws(*p))
        p++;
    return p;
}

/*
 * Reads the next "; name=value" from *s (NUL-terminated). The value is a quoted-string (with
 * \-escapes) or a run of bytes up to ';' or white space; it is copied into val (cap bytes with
 * the NUL; longer values set *cut and are truncated). Returns 1 with a parameter, 0 at the end
 * (a trailing ';' is tolerated), -1 on a syntax error. *s advances past the parameter.
 */
static int param_next(const char **s, char *name, size_t name_cap, char *val, size_t val_cap,
                      bool *cut)
{
    const char *p = skip_ws(*s);
    if (*p == '\0')
        return 0;
    if (*p != ';')
        return -1;
    p = skip_ws(p + 1);
    if (*p == '\0') {
        *s = p;
        return 0;
    }
    size_t k = 0;
    while (is_tchar(*p)) {
        if (k + 1 >= name_cap)
            return -1;
        name[k++] = *p++;
    }
    name[k] = '\0';
    if (k == 0)
        return -1;
    p = skip_ws(p);
    if (*p != '=')
        return -1;
    p = skip_ws(p + 1);
    k = 0;
    *cut = false;
    if (*p == '"') {
        p++;
        while (*p != '"') {
            if (*p == '\0')
                return -1; /* unterminated quoted-string */
            char c = *p++;
            if (c == '\\' && (*p == '"' || *p == '\\'))
                c = *p++; /* only \" and \\: a Windows path keeps its other backslashes */
            if (k + 1 < val_cap)
                val[k++] = c;
            else
                *cut = true;
        }
        p++;
    } else {
        while (*p != '\0' && *p != ';' && !is_ws(*p)) {
            if (k + 1 < val_cap)
                val[k++] = *p;
            else
                *cut = true;
            p++;
        }
        if (k == 0)
            return -1;
    }
    val[k] = '\0';
    *s = p;
    return 1;
}

/* Reads the leading token of a header value (up to ';' or white space) and compares it with
 * want, ignoring case. *s advances past it. */
static bool main_token_is(const char **s, const char *want)
{
    const char *p = skip_ws(*s);
    const char *start = p;
    while (*p != '\0' && *p != ';' && !is_ws(*p))
        p++;
    *s = p;
    size_t n = (size_t)(p - start);
    return n == strlen(want) && strncasecmp(start, want, n) == 0;
}

/* Decodes RFC 8187 ext-value "UTF-8'lang'pct-encoded" into out (cap bytes with the NUL,
 * cut when longer). Returns false (out unspecified) for another charset, a bad escape or a
 * control byte. */
static bool ext_value_decode(const char *v, char *out, size_t cap)
{
    if (strncasecmp(v, "utf-8'", 6) != 0)
        return false;
    const char *p = strchr(v + 6, '\'');
    if (p == NULL)
        return false;
    p++;
    size_t k = 0;
    while (*p != '\0') {
        int c = (unsigned char)*p;
        if (c == '%') {
            int hi = hex_digit(p[1]), lo = hi >= 0 ? hex_digit(p[2]) : -1;
            if (lo < 0)
                return false;
            c = hi * 16 + lo;
            p += 3;
        } else {
            p++;
        }
        if (c < 0x20 || c == 0x7f)
            return false;
        if (k + 1 < cap)
            out[k++] = (char)c;
    }
    out[k] = '\0';
    return true;
}

/* ------------------------------------------------------------------------------------------
 * The Content-Type of the body
 * ---------------------------------------------------------------------------------------- */

/* Finds and checks the boundary parameter of ct into out (BOUNDARY_MAX + 1 bytes). */
static int boundary_of(const char *ct, char *out, struct err *e)
{
    if (ct == NULL)
        return err_set(e, INF_EINVAL, "multipart: no Content-Type header");
    const char *p = ct;
    if (!main_token_is(&p, "multipart/form-data"))
        return err_set(e, INF_EINVAL, "multipart: Content-Type is not multipart/form-data");
    char name[32], val[MULTIPART_MAX_LINE + 1];
    bool cut = false, found = false;
    int r;
    while ((r = param_next(&p, name, sizeof name, val, sizeof val, &cut)) == 1) {
        if (strcasecmp(name, "boundary") != 0)
            continue;
        if (found)
            return err_set(e, INF_EINVAL, "multipart: Content-Type has two boundary parameters");
        found = true;
        size_t n = strlen(val);
        if (cut || n == 0 || n > BOUNDARY_MAX || val[n - 1] == ' ')
            return err_set(e, INF_EINVAL,
                           "multipart: the boundary must be 1 to %d characters, not ending in a "
                           "space",
                           BOUNDARY_MAX);
        for (size_t i = 0; i < n; i++)
            if (!is_bchar(val[i]))
                return err_set(e, INF_EINVAL,
                               "multipart: the boundary holds a character RFC 2046 does not "
                               "allow (byte %zu)",
                               i + 1);
        memcpy(out, val, n + 1);
    }
    if (r < 0)
        return err_set(e, INF_EINVAL, "multipart: malformed Content-Type parameters");
    if (!found)
        return err_set(e, INF_EINVAL, "multipart: Content-Type has no boundary parameter");
    return INF_OK;
}

/* ------------------------------------------------------------------------------------------
 * The body
 * ---------------------------------------------------------------------------------------- */

/* After a delimiter at b[at..]: is it the close delimiter ("--"), or a delimiter line (optional
 * padding, CRLF)? Returns 2 for close, 1 for a delimiter line (with *next the first byte after
 * its CRLF), 0 when it is neither. */
static int delim_tail(const char *b, size_t n, size_t at, size_t *next)
{
    if (at + 2 <= n && b[at] == '-' && b[at + 1] == '-')
        return 2;
    while (at < n && is_ws(b[at]))
        at++;
    if (at + 2 <= n && b[at] == '\r' && b[at + 1] == '\n') {
        *next = at + 2;
        return 1;
    }
    return 0;
}

/* The offset of the next "\r\n" + delim (dlen bytes) at or after from that is a real
 * delimiter (see delim_tail), or n when there is none. */
static size_t find_delim(const char *b, size_t n, size_t from, const char *delim, size_t dlen)
{
    size_t unused;
    while (from < n) {
        const char *hit = memmem(b + from, n - from, "\r\n", 2);
        if (hit == NULL)
            return n;
        size_t at = (size_t)(hit - b);
        if (at + 2 + dlen <= n && memcmp(b + at + 2, delim, dlen) == 0 &&
            delim_tail(b, n, at + 2 + dlen, &unused) != 0)
            return at;
        from = at + 1;
    }
    return n;
}

/* Applies one header line (NUL-terminated, no control bytes) to part. k is the part number
 * (1-based) for messages. seen_cd tracks Content-Disposition. */
static int header_apply(struct multipart_part *part, const char *line, size_t k, bool *seen_cd,
                        struct err *e)
{
    if (is_ws(line[0]))
        return err_set(e, INF_EINVAL, "multipart: part %zu: folded header lines are not supported",
                       k);
    const char *colon = strchr(line, ':');
    size_t nlen = colon ? (size_t)(colon - line) : 0;
    for (size_t i = 0; i < nlen; i++)
        if (!is_tchar(line[i]))
            nlen = 0;
    if (nlen == 0)
        return err_set(e, INF_EINVAL, "multipart: part %zu: malformed header line", k);
    const char *v = skip_ws(colon + 1);
    if (nlen == 12 && strncasecmp(line, "Content-Type", 12) == 0) {
        size_t n = strlen(v);
        while (n > 0 && is_ws(v[n - 1]))
            n--;
        if (n > MULTIPART_CTYPE_MAX)
            n = MULTIPART_CTYPE_MAX;
        memcpy(part->content_type, v, n);
        part->content_type[n] = '\0';
        return INF_OK;
    }
    if (!(nlen == 19 && strncasecmp(line, "Content-Disposition", 19) == 0))
        return INF_OK; /* Content-Transfer-Encoding and others: ignored (RFC 7578 4.7) */
    if (*seen_cd)
        return err_set(e, INF_EINVAL, "multipart: part %zu: two Content-Disposition headers", k);
    *seen_cd = true;
    if (!main_token_is(&v, "form-data"))
        return err_set(e, INF_EINVAL, "multipart: part %zu: Content-Disposition must be form-data",
                       k);
    char pname[32], val[MULTIPART_MAX_LINE + 1];
    bool cut = false, have_name = false, have_ext = false;
    int r;
    while ((r = param_next(&v, pname, sizeof pname, val, sizeof val, &cut)) == 1) {
        if (strcasecmp(pname, "name") == 0 && !have_name) {
            size_t n = strlen(val);
            if (cut || n > MULTIPART_NAME_MAX)
                return err_set(e, INF_EINVAL, "multipart: part %zu: name over %d bytes", k,
                               MULTIPART_NAME_MAX);
            memcpy(part->name, val, n + 1);
            have_name = true;
        } else if (strcasecmp(pname, "filename") == 0 && !part->has_filename) {
            size_t n = strlen(val); /* longer filenames are cut (multipart.h) */
            if (n > MULTIPART_FILENAME_MAX)
                n = MULTIPART_FILENAME_MAX;
            memcpy(part->filename, val, n);
            part->filename[n] = '\0';
            part->has_filename = true;
        } else if (strcasecmp(pname, "filename*") == 0 && !have_ext) {
            char dec[MULTIPART_FILENAME_MAX + 1];
            if (ext_value_decode(val, dec, sizeof dec)) {
                memcpy(part->filename, dec, strlen(dec) + 1);
                part->has_filename = true;
                have_ext = true; /* wins over filename= whichever comes first */
            }
        }
    }
    if (r < 0)
        return err_set(e, INF_EINVAL,
                       "multipart: part %zu: malformed Content-Disposition parameters", k);
    if (!have_name || part->name[0] == '\0')
        return err_set(e, INF_EINVAL, "multipart: part %zu has no name", k);
    return INF_OK;
}

/* Reads the header block of part k starting at *pos, up to and including the empty line. */
static int headers_read(const char *b, size_t n, size_t *pos, struct multipart_part *part, size_t k,
                        struct err *e)
{
    char line[MULTIPART_MAX_LINE + 1];
    bool seen_cd = false;
    size_t p = *pos, count = 0;
    for (;;) {
        size_t window = n - p < MULTIPART_MAX_LINE + 2 ? n - p : MULTIPART_MAX_LINE + 2;
        const char *eol = memmem(b + p, window, "\r\n", 2);
        if (eol == NULL)
            return err_set(e, INF_EINVAL,
                           window == n - p ? "multipart: part %zu: the body ends inside its "
                                             "headers"
                                           : "multipart: part %zu: a header line is over %d bytes",
                           k, MULTIPART_MAX_LINE);
        size_t len = (size_t)(eol - (b + p));
        if (len == 0) {
            p += 2;
            break;
        }
        if (++count > MULTIPART_MAX_HEADERS)
            return err_set(e, INF_EINVAL, "multipart: part %zu: more than %d header lines", k,
                           MULTIPART_MAX_HEADERS);
        for (size_t i = 0; i < len; i++) {
            unsigned char c = (unsigned char)b[p + i];
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return err_set(e, INF_EINVAL,
                               "multipart: part %zu: a header line holds a control byte (bare LF "
                               "or CR? line ends must be CRLF)",
                               k);
        }
        memcpy(line, b + p, len);
        line[len] = '\0';
        int rc = header_apply(part, line, k, &seen_cd, e);
        if (rc != INF_OK)
            return rc;
        p += len + 2;
    }
    if (!seen_cd)
        return err_set(e, INF_EINVAL, "multipart: part %zu has no Content-Disposition header", k);
    *pos = p;
    return INF_OK;
}

/* Locates the first delimiter line; *pos gets the byte after it. Returns 2 when it is already
 * the close delimiter. */
static int first_delim(const char *b, size_t n, const char *delim, size_t dlen, size_t *pos,
                       struct err *e)
{
    size_t at, next = 0;
    int t = 0;
    if (n >= dlen && memcmp(b, delim, dlen) == 0)
        t = delim_tail(b, n, dlen, &next);
    if (t == 0 && (at = find_delim(b, n, 0, delim, dlen)) < n)
        t = delim_tail(b, n, at + 2 + dlen, &next);
    if (t == 0) {
        /* Say why: the boundary is there but lines end in bare LF, or it is not there. */
        const char *hit = n >= dlen ? memmem(b, n, delim, dlen) : NULL;
        if (hit != NULL) {
            size_t q = (size_t)(hit - b) + dlen;
            while (q < n && is_ws(b[q]))
                q++;
            if (q < n && b[q] == '\n')
                return err_set(e, INF_EINVAL,
                               "multipart: line ends must be CRLF (RFC 7578), not bare LF");
        }
        return err_set(e, INF_EINVAL,
                       "multipart: the body holds no delimiter line for the boundary of its "
                       "Content-Type");
    }
    *pos = next;
    return t;
}

int multipart_parse(const char *content_type, const char *body, size_t len, struct multipart **out,
                    struct err *e)
{
    char boundary[BOUNDARY_MAX + 1];
    char delim[2 + BOUNDARY_MAX + 1];
    struct multipart *mp = NULL;
    int rc = boundary_of(content_type, boundary, e);
    if (rc != INF_OK)
        return rc;
    size_t dlen = (size_t)snprintf(delim, sizeof delim, "--%s", boundary);
    if (body == NULL)
        len = 0;
    size_t pos = 0;
    int t = len > 0 ? first_delim(body, len, delim, dlen, &pos, e)
                    : err_set(e, INF_EINVAL, "multipart: the body is empty");
    if (t < 0)
        return t;
    if (t == 2)
        return err_set(e, INF_EINVAL, "multipart: the body holds no parts");
    mp = calloc(1, sizeof *mp);
    if (mp == NULL)
        return err_set(e, INF_ENOMEM, "out of memory");
    for (;;) {
        size_t k = mp->n_parts + 1;
        if (mp->n_parts == MULTIPART_MAX_PARTS) {
            rc = err_set(e, INF_EINVAL, "multipart: more than %d parts", MULTIPART_MAX_PARTS);
            goto out;
        }
        struct multipart_part *part = &mp->parts[mp->n_parts];
        if ((rc = headers_read(body, len, &pos, part, k, e)) != INF_OK)
            goto out;
        size_t end = find_delim(body, len, pos, delim, dlen);
        if (end == len) {
            rc = err_set(e, INF_EINVAL,
                         "multipart: part %zu (\"%.64s\") has no closing boundary: the body is "
                         "cut short",
                         k, part->name);
            goto out;
        }
        part->data = body + pos;
        part->len = end - pos;
        mp->n_parts++;
        t = delim_tail(body, len, end + 2 + dlen, &pos);
        if (t == 2)
            break; /* the close delimiter: what follows is the epilogue */
    }
    *out = mp;
    mp = NULL;
    rc = INF_OK;
out:
    free(mp);
    return rc;
}

const struct multipart_part *multipart_find(const struct multipart *mp, const char *name)
{
    for (size_t i = 0; mp != NULL && i < mp->n_parts; i++)
        if (strcmp(mp->parts[i].name, name) == 0)
            return &mp->parts[i];
    return NULL;
}

size_t multipart_count(const struct multipart *mp, const char *name)
{
    size_t c = 0;
    for (size_t i = 0; mp != NULL && i < mp->n_parts; i++)
        c += strcmp(mp->parts[i].name, name) == 0;
    return c;
}
