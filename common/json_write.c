/*
 * common/json_write.c - jansson's string escapes and integer digits, written directly (see
 * json_write.h).
 */
#include "common/json_write.h"

#include <string.h>

/* Bytes an ASCII character takes inside a string: 1 as it is, 2 as a short escape (\" \\ \b
 * \f \n \r \t), 6 as \u00XX. 0 for bytes >= 0x80: UTF-8, decoded. */
static const unsigned char ascii_width[256] = {
    6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 6, 2, 2, 6, 6, /* 0x00 */
    6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, /* 0x10 */
    1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x20: '"' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, /* 0x50: '\' */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 0x70: '/' and DEL as they are */
};

size_t json_write_utf8_decode(const unsigned char *s, size_t avail, uint32_t *cp)
{
    size_t n;
    uint32_t v;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        n = 2;
        v = s[0] & 0x1F;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        n = 3;
        v = s[0] & 0x0F;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        n = 4;
        v = s[0] & 0x07;
    } else {
        return 0; /* a continuation byte, C0/C1 (overlong ASCII) or F5-FF */
    }
    if (n > avail)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (n == 3 && v < 0x800) ||
        (n == 4 && v < 0x10000))
        return 0;
    *cp = v;
    return n;
}

bool json_write_string_size(const char *str, size_t len, bool ascii, size_t max, size_t *out)
{
    const unsigned char *s = (const unsigned char *)str;
    uint64_t n = 0; /* at most 12 per 4 bytes: with len <= max below 6 * max, no overflow */
    if (len > max)
        return false;
    for (size_t i = 0; i < len;) {
        unsigned w = ascii_width[s[i]];
        if (w != 0) {
            n += w;
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = json_write_utf8_decode(s + i, len - i, &cp);
        if (k == 0)
            return false;
        n += !ascii ? k : cp < 0x10000 ? 6 : 12;
        i += k;
    }
    if (n > max)
        return false;
    *out = (size_t)n;
    return true;
}

/* "\uXXXX" at p (uppercase hex, as jansson's "\\u%04X"); returns the end. */
static char *put_u(char *p, uint32_t u)
{
    static const char hex[] = "0123456789ABCDEF";
    *p++ = '\\';
    *p++ = 'u';
    *p++ = hex[u >> 12 & 0xF];
    *p++ = hex[u >> 8 & 0xF];
    *p++ = hex[u >> 4 & 0xF];
    *p++ = hex[u & 0xF];
    return p;
}

char *json_write_string(char *p, const char *str, size_t len, bool ascii)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len;) {
        size_t run = i; /* the longest run written as it is */
        while (run < len && ascii_width[s[run]] == 1)
            run++;
        memcpy(p, s + i, run - i);
        p += run - i;
        if ((i = run) == len)
            break;
        uint32_t cp = s[i];
        if (cp < 0x80) {
            i++;
        } else {
            size_t k = json_write_utf8_decode(s + i, len - i, &cp);
            if (k == 0)
                return NULL;
            if (!ascii) {
                memcpy(p, s + i, k);
                p += k;
                i += k;
                continue;
            }
            i += k;
        }
        char esc = cp == '"'    ? '"'
                   : cp == '\\' ? '\\'
                   : cp == '\b' ? 'b'
                   : cp == '\f' ? 'f'
                   : cp == '\n' ? 'n'
                   : cp == '\r' ? 'r'
                   : cp == '\t' ? 't'
                                : 0;
        if (esc != 0) {
            *p++ = '\\';
            *p++ = esc;
        } else if (cp < 0x10000) {
            p = put_u(p, cp);
        } else {
            cp -= 0x10000;
            p = put_u(p, 0xD800 | cp >> 10);
            p = put_u(p, 0xDC00 | (cp & 0x3FF));
        }
    }
    return p;
}

char *json_write_int(long long v, char *end)
{
    unsigned long long u = (unsigned long long)v; /* modulo 2^64: right for the minimum too */
    if (v < 0)
        u = 0 - u;
    char *p = end;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        *--p = '-';
    return p;
}
