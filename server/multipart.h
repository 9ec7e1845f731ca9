/*
 * server/multipart.h - a parser of buffered multipart/form-data bodies (RFC 7578 on RFC 2046),
 * as curl -F, browsers and the OpenAI SDKs send them. Internal to server/.
 *
 * The body is hostile: every length is checked, nothing is read outside body[0..len), and the
 * parse fails with a message for the client on anything it does not understand.
 *
 * What is accepted:
 *   - Content-Type "multipart/form-data" (any case) with a boundary parameter, quoted or not,
 *     1..70 characters of RFC 2046's bchars, not ending in a space.
 *   - An optional preamble; the first delimiter "--boundary" at the very start of the body or
 *     after CRLF. Every delimiter line is "--boundary", optional spaces/tabs, CRLF; the last one
 *     is "--boundary--", after which anything (the epilogue) is ignored.
 *   - Each part: header lines "Name: value" ended by CRLF, an empty line, then the content up to
 *     the CRLF before the next delimiter. Content-Disposition must be form-data with a name;
 *     filename is optional (quoted-string with \-escapes, or a token; filename* with UTF-8''
 *     percent-encoding is preferred when present); Content-Type is optional. Other headers are
 *     ignored.
 *   - "\r\n--boundary" inside content followed by anything but "--" or optional padding and
 *     CRLF is content, not a delimiter (senders must avoid it; being lenient costs nothing).
 *
 * What is refused (INF_EINVAL unless said otherwise): a missing or invalid boundary, bare-LF
 * line ends (RFC 7578 requires CRLF; all real clients send it), a body that ends before its
 * closing delimiter, a part without a name or without Content-Disposition: form-data, more
 * than MULTIPART_MAX_PARTS parts or MULTIPART_MAX_HEADERS header lines in a part, a header line
 * over MULTIPART_MAX_LINE bytes or holding control bytes, folded header lines, a name over
 * MULTIPART_NAME_MAX bytes, no parts at all.
 *
 * Filenames longer than MULTIPART_FILENAME_MAX bytes are cut (bytes, not characters; the file
 * store makes them valid UTF-8). Names and filenames are copied out (they need unescaping);
 * the contents are not: they point into the caller's body.
 *
 * Thread safety: reentrant; no shared state.
 */
#ifndef INFERA_SERVER_MULTIPART_H
#define INFERA_SERVER_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#include "common/common.h"

#define MULTIPART_MAX_PARTS    16
#define MULTIPART_MAX_HEADERS  8    /* header lines in one part */
#define MULTIPART_MAX_LINE     2048 /* bytes in one header line, without its CRLF */
#define MULTIPART_NAME_MAX     128  /* bytes of a part's name */
#define MULTIPART_FILENAME_MAX 1024 /* bytes of a filename kept */
#define MULTIPART_CTYPE_MAX    127  /* bytes of a part's Content-Type kept */

struct multipart_part {
    char name[MULTIPART_NAME_MAX + 1];
    bool has_filename; /* the part carried filename= or filename* (maybe empty) */
    char filename[MULTIPART_FILENAME_MAX + 1];
    char content_type[MULTIPART_CTYPE_MAX + 1]; /* "" when absent; cut when longer */
    const char *data; /* borrowed: points into the body passed to multipart_parse() */
    size_t len;
};

struct multipart {
    struct multipart_part parts[MULTIPART_MAX_PARTS];
    size_t n_parts; /* >= 1 after a successful parse */
};

/*
 * Parses body[0..len) (need not be NUL-terminated) sent with the given Content-Type header
 * value (NULL counts as missing). On success *out is a new struct (caller frees with free());
 * its parts point into body, which must outlive them. On failure returns INF_EINVAL (or
 * INF_ENOMEM) with a message in e naming the problem ("multipart: part 2: ..."), and *out is
 * unchanged.
 */
int multipart_parse(const char *content_type, const char *body, size_t len, struct multipart **out,
                    struct err *e);

/* The first part named name, or NULL. Borrowed from mp. */
const struct multipart_part *multipart_find(const struct multipart *mp, const char *name);

/* How many parts are named name. */
size_t multipart_count(const struct multipart *mp, const char *name);

#endif /* INFERA_SERVER_MULTIPART_H */
