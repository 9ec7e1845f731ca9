/*
 * common/json_write.h - JSON strings and integers written exactly as jansson 2.14 dumps them,
 * for the hot paths that write their JSON text directly instead of building a json_t tree and
 * calling json_dumps (an inference response, an audit line): same escapes, same UTF-8 checks,
 * same digits, so the text is byte-for-byte what json_dump_checked() would give.
 *
 * jansson's rules (src/dump.c dump_string, src/utf.c utf8_iterate):
 *   - '"' and '\' are backslashed; \b \f \n \r \t; every other byte below 0x20 (NUL too) is
 *     \u00XX with uppercase hex; '/' and DEL stay as they are (no JSON_ESCAPE_SLASH);
 *   - with JSON_ENSURE_ASCII (ascii = true) every code point above U+007F is \uXXXX, a
 *     surrogate pair above U+FFFF; without it UTF-8 is copied as it is (U+2028/2029 too);
 *   - text that is not UTF-8 fails: a stray continuation byte, C0/C1, F5-FF, a cut sequence, an
 *     overlong form, a surrogate, a code point above U+10FFFF;
 *   - integers as "%lld" prints them.
 *
 * Thread safety: pure functions.
 */
#ifndef INFERA_COMMON_JSON_WRITE_H
#define INFERA_COMMON_JSON_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Room for any long long in decimal, sign included. */
#define JSON_WRITE_INT_CHARS 24

/*
 * The UTF-8 sequence at s[0..avail) (avail > 0, s[0] >= 0x80) as jansson decodes it: returns
 * its length (2-4) and sets *cp, or returns 0 if the bytes are not UTF-8.
 */
size_t json_write_utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp);

/*
 * The length of s[0..len) written as a JSON string's contents (escaped, quotes not counted)
 * into *out. Returns false if s is not UTF-8 or the length would pass max (the caller's cap
 * on its whole text; also keeps the caller's sums from overflowing).
 */
bool json_write_string_size(const char *s, size_t len, bool ascii, size_t max, size_t *out);

/*
 * Writes s[0..len) escaped, without quotes, at p, which has room for the size that
 * json_write_string_size gave for the same s and ascii. Returns the end, or NULL if s is not
 * UTF-8 (not reached after json_write_string_size accepted s).
 */
char *json_write_string(char *p, const char *s, size_t len, bool ascii);

/* v in decimal, written so that it ends just before end (which has JSON_WRITE_INT_CHARS bytes
 * of room before it); returns its first character. */
char *json_write_int(long long v, char *end);

#endif /* INFERA_COMMON_JSON_WRITE_H */
