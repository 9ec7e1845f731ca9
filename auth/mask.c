/*
 * auth/mask.c - hand-written recognizers for personal data and the masking pass.
 *
 * The pass walks the text once. At each position where a value may begin (never right after
 * a letter or digit) it asks every recognizer that can start with that byte for the end of
 * the value starting there, keeps the one reaching furthest, copies the text before it and
 * writes a token. Recognizers look ahead a bounded distance (the longest, email, a few hundred
 * bytes), and the email recognizer only runs where a run of local-part characters begins, so
 * the scan is linear in the input. Each value then costs one HMAC (two SHA-256 blocks), which
 * dominates for text made of nothing but short values.
 *
 * Recognizers take (t, len, i) and return the end (exclusive) of the value starting at i, or
 * 0 for none; a value is never empty, so 0 cannot be a real end. They never read t[len], and
 * look behind i at most two bytes, never before t[0]: the pass hands them the text from the
 * end of the previous value on.
 */
#include "auth/hmac.h"
#include "auth/mask.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/common.h"

/* ------------------------------------------------------------------------------------------
 * Character classes (ASCII only: bytes >= 0x80 are never part of a value)
 * ---------------------------------------------------------------------------------------- */

enum {
    C_DIGIT = 1,  /* 0-9 */
    C_ALPHA = 2,  /* A-Z a-z */
    C_HEX = 4,    /* 0-9 A-F a-f */
    C_LOCAL = 8,  /* email local part as people write it: alnum and ._%+-' (RFC 5322 allows more) */
    C_START = 16, /* may begin a value: C_LOCAL, '(' and ':' */
};

/* Classes of the ASCII bytes; the rest of the table (bytes >= 0x80) is 0. */
static const unsigned char char_class[256] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 0x00 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 0x10 */
    0,  0,  0,  0,  0,  24, 0,  24, 16, 0,  0,  24, 0,  24, 24, 0,  /* 0x20  %'(+-. */
    29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 16, 0,  0,  0,  0,  0,  /* 0x30  0-9 : */
    0,  30, 30, 30, 30, 30, 30, 26, 26, 26, 26, 26, 26, 26, 26, 26, /* 0x40  A-O */
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 0,  0,  0,  0,  24, /* 0x50  P-Z _ */
    0,  30, 30, 30, 30, 30, 30, 26, 26, 26, 26, 26, 26, 26, 26, 26, /* 0x60  a-o */
    26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 26, 0,  0,  0,  0,  0,  /* 0x70  p-z */
};

static bool is_digit(unsigned char c)
{
    return char_class[c] & C_DIGIT;
}

static bool is_alpha(unsigned char c)
{
    return char_class[c] & C_ALPHA;
}

static bool is_alnum(unsigned char c)
{
    return char_class[c] & (C_DIGIT | C_ALPHA);
}

static bool is_hex(unsigned char c)
{
    return char_class[c] & C_HEX;
}

static bool is_local(unsigned char c)
{
    return char_class[c] & C_LOCAL;
}

/* Separators inside phone numbers. */
static bool is_sep(unsigned char c)
{
    return c == ' ' || c == '-' || c == '.';
}

static unsigned char to_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static unsigned char to_upper(unsigned char c)
{
    return c >= 'a' && c <= 'z' ? (unsigned char)(c - 32) : c;
}

/*
 * Which bytes join digit groups into one longer number: "12-415-555-0123", "1.2.3.4.5",
 * "0958 12:30" (a phone number's last group must not be the hour of a time).
 */
enum glue { GLUE_NONE, GLUE_DOT, GLUE_NUM };

static bool is_glue(unsigned char c, enum glue g)
{
    if (g == GLUE_NONE)
        return false;
    return c == '.' || (g == GLUE_NUM && (c == '-' || c == '/' || c == ':'));
}

/*
 * A value starting at i is not glued to what precedes it: the byte before is not a letter or
 * digit, nor a glue byte that itself follows a digit.
 */
static bool left_free(const unsigned char *t, size_t i, enum glue glue)
{
    if (i == 0)
        return true;
    if (is_alnum(t[i - 1]))
        return false;
    return !(i >= 2 && is_glue(t[i - 1], glue) && is_digit(t[i - 2]));
}

/* The mirror image for a value ending at e. */
static bool right_free(const unsigned char *t, size_t len, size_t e, enum glue glue)
{
    if (e >= len)
        return true;
    if (is_alnum(t[e]))
        return false;
    return !(e + 1 < len && is_glue(t[e], glue) && is_digit(t[e + 1]));
}

/* Length of the digit run at t[p..], counting at most max + 1 so callers can see "too long". */
static size_t digits_at(const unsigned char *t, size_t len, size_t p, size_t max)
{
    size_t n = 0;
    while (p + n < len && n <= max && is_digit(t[p + n]))
        n++;
    return n;
}

/* The number written by n digits at t[p..]. */
static unsigned num_at(const unsigned char *t, size_t p, size_t n)
{
    unsigned v = 0;
    for (size_t k = 0; k < n; k++)
        v = v * 10 + (unsigned)(t[p + k] - '0');
    return v;
}

/* ------------------------------------------------------------------------------------------
 * EMAIL
 * ---------------------------------------------------------------------------------------- */

#define EMAIL_LOCAL_MAX  64
#define EMAIL_DOMAIN_MAX 253
#define EMAIL_LABEL_MAX  63

static bool tld_ok(const unsigned char *s, size_t n)
{
    if (n >= 5 && to_lower(s[0]) == 'x' && to_lower(s[1]) == 'n' && s[2] == '-' && s[3] == '-')
        return true;
    if (n < 2)
        return false;
    for (size_t k = 0; k < n; k++)
        if (!is_alpha(s[k]))
            return false;
    return true;
}

/*
 * i must begin a run of local-part characters; leading punctuation of the run is left out of
 * the value, whose start goes to *start.
 */
static size_t scan_email(const unsigned char *t, size_t len, size_t i, size_t *start)
{
    if (!is_local(t[i]) || (i > 0 && is_local(t[i - 1])))
        return 0;
    size_t at = i;
    while (at < len && at - i <= EMAIL_LOCAL_MAX && is_local(t[at]))
        at++;
    if (at >= len || t[at] != '@' || at - i > EMAIL_LOCAL_MAX)
        return 0;
    size_t s = i;
    while (s < at && !is_alnum(t[s]))
        s++;
    if (s == at)
        return 0;

    size_t p = at + 1, best = 0;
    int labels = 0;
    while (p < len) {
        size_t q = p;
        while (q < len && q - p <= EMAIL_LABEL_MAX && (is_alnum(t[q]) || t[q] == '-'))
            q++;
        size_t n = q - p;
        if (n == 0 || n > EMAIL_LABEL_MAX || t[p] == '-' || t[q - 1] == '-')
            break;
        if (q - (at + 1) > EMAIL_DOMAIN_MAX)
            break;
        labels++;
        if (labels >= 2 && tld_ok(t + p, n))
            best = q;
        if (q + 1 < len && t[q] == '.' && is_alnum(t[q + 1])) {
            p = q + 1;
            continue;
        }
        break;
    }
    if (best == 0)
        return 0;
    *start = s;
    return best;
}

/* ------------------------------------------------------------------------------------------
 * PHONE
 * ---------------------------------------------------------------------------------------- */

#define PHONE_MIN_DIGITS 8
#define PHONE_MAX_DIGITS 15

/*
 * A NANP number at p without trunk prefix: "(AAA) EEE-SSSS" (separator after the exchange
 * '-', '.', ' ' or none, space after ')' optional), "(AAA)EEESSSS", or "AAA s EEE s SSSS"
 * with s one of "-. " used twice. *sep gets s, or 0 for the parenthesized forms.
 */
static size_t nanp_core(const unsigned char *t, size_t len, size_t p, unsigned char *sep)
{
    size_t area, exch, q;

    if (p < len && t[p] == '(') {
        if (digits_at(t, len, p + 1, 3) != 3 || p + 4 >= len || t[p + 4] != ')')
            return 0;
        area = p + 1;
        q = p + 5;
        if (q < len && t[q] == ' ')
            q++;
        exch = q;
        size_t d = digits_at(t, len, q, 7);
        if (d == 7) {
            q += 7;
        } else if (d == 3 && q + 3 < len && is_sep(t[q + 3])) {
            if (digits_at(t, len, q + 4, 4) != 4)
                return 0;
            q += 8;
        } else {
            return 0;
        }
        *sep = 0;
    } else {
        if (digits_at(t, len, p, 3) != 3 || p + 3 >= len || !is_sep(t[p + 3]))
            return 0;
        unsigned char s = t[p + 3];
        if (digits_at(t, len, p + 4, 3) != 3 || p + 7 >= len || t[p + 7] != s ||
            digits_at(t, len, p + 8, 4) != 4)
            return 0;
        area = p;
        exch = p + 4;
        q = p + 12;
        *sep = s;
    }
    if (t[area] < '2' || t[exch] < '2')
        return 0;
    return q;
}

/* NANP without '+': at a digit or '(' ; an optional trunk "1" uses the same separator. */
static size_t scan_nanp(const unsigned char *t, size_t len, size_t i)
{
    unsigned char sep = 0;
    if (!left_free(t, i, GLUE_NUM))
        return 0;
    size_t e = nanp_core(t, len, i, &sep);
    if (e == 0 && t[i] == '1' && i + 1 < len && is_sep(t[i + 1])) {
        e = nanp_core(t, len, i + 2, &sep);
        if (sep != 0 && sep != t[i + 1])
            e = 0;
    }
    if (e == 0 || !right_free(t, len, e, GLUE_NUM))
        return 0;
    return e;
}

/* International forms at '+'. */
static size_t scan_phone_plus(const unsigned char *t, size_t len, size_t i)
{
    unsigned char sep;
    if (!left_free(t, i, GLUE_NUM) || i + 1 >= len || !is_digit(t[i + 1]))
        return 0;

    if (t[i + 1] == '1') {
        size_t p = i + 2, e;
        if (digits_at(t, len, p, 10) == 10 && t[p] >= '2' && t[p + 3] >= '2') {
            e = p + 10;
        } else {
            if (p < len && is_sep(t[p]))
                p++;
            e = nanp_core(t, len, p, &sep);
        }
        if (e == 0 || !right_free(t, len, e, GLUE_NUM))
            return 0;
        return e;
    }

    /* Items: digit groups and "(d..)" groups, joined by at most one of "-. ". */
    size_t p = i + 1, best = 0, ndig = 0;
    bool first = true;
    for (;;) {
        size_t g;
        if (p < len && is_digit(t[p])) {
            g = digits_at(t, len, p, PHONE_MAX_DIGITS);
            p += g;
        } else if (!first && p < len && t[p] == '(') {
            g = digits_at(t, len, p + 1, 4);
            if (g == 0 || g > 4 || p + 1 + g >= len || t[p + 1 + g] != ')')
                break;
            p += g + 2;
        } else {
            break;
        }
        first = false;
        ndig += g;
        if (ndig > PHONE_MAX_DIGITS)
            break;
        if (ndig >= PHONE_MIN_DIGITS && t[p - 1] != ')' && right_free(t, len, p, GLUE_NUM))
            best = p;
        if (p + 1 < len && is_sep(t[p]) && (is_digit(t[p + 1]) || t[p + 1] == '('))
            p++;
        else if (!(p < len && (t[p] == '(' || (t[p - 1] == ')' && is_digit(t[p])))))
            break;
    }
    return best;
}

/* ------------------------------------------------------------------------------------------
 * CARD
 * ---------------------------------------------------------------------------------------- */

#define CARD_MIN_DIGITS 13
#define CARD_MAX_DIGITS 19
#define CARD_MAX_GROUPS 6

static bool luhn_ok(const unsigned char *d, size_t n)
{
    unsigned sum = 0;
    for (size_t k = 0; k < n; k++) {
        unsigned v = d[n - 1 - k];
        if (k % 2 == 1) {
            v *= 2;
            if (v > 9)
                v -= 9;
        }
        sum += v;
    }
    return sum % 10 == 0;
}

/* Group sizes g[0..n) with g[0] == 4 form a card layout. */
static bool card_layout_ok(const size_t *g, size_t n)
{
    if (n == 3 && g[1] == 6 && (g[2] == 4 || g[2] == 5))
        return true; /* 4-6-5 (Amex), 4-6-4 (Diners) */
    for (size_t k = 1; k + 1 < n; k++)
        if (g[k] != 4)
            return false;
    return g[n - 1] >= 1 && g[n - 1] <= 4;
}

/*
 * t[i] follows "XX00 ", the head of an IBAN written in groups: digits there belong to an
 * IBAN, maybe one with a typo, and one in ten such tails passes Luhn by chance.
 */
static bool after_iban_head(const unsigned char *t, size_t i)
{
    return i >= 5 && t[i - 1] == ' ' && is_alpha(t[i - 5]) && is_alpha(t[i - 4]) &&
           is_digit(t[i - 3]) && is_digit(t[i - 2]) && (i == 5 || !is_alnum(t[i - 6]));
}

static size_t scan_card(const unsigned char *t, size_t len, size_t i)
{
    unsigned char d[CARD_MAX_DIGITS];
    size_t g[CARD_MAX_GROUPS], ends[CARD_MAX_GROUPS];

    if (!left_free(t, i, GLUE_NUM) || t[i] < '2' || t[i] > '6' || after_iban_head(t, i))
        return 0;
    size_t run = digits_at(t, len, i, CARD_MAX_DIGITS);
    if (run >= CARD_MIN_DIGITS) {
        if (run > CARD_MAX_DIGITS || !right_free(t, len, i + run, GLUE_NUM))
            return 0;
        for (size_t k = 0; k < run; k++)
            d[k] = (unsigned char)(t[i + k] - '0');
        return luhn_ok(d, run) ? i + run : 0;
    }
    if (run != 4 || i + 5 >= len || !(t[i + 4] == ' ' || t[i + 4] == '-'))
        return 0;

    unsigned char sep = t[i + 4];
    size_t n = 0, nd = 0, p = i;
    for (;;) {
        size_t k = digits_at(t, len, p, 6);
        if (k == 0 || k > 6 || nd + k > CARD_MAX_DIGITS)
            break;
        for (size_t j = 0; j < k; j++)
            d[nd + j] = (unsigned char)(t[p + j] - '0');
        nd += k;
        p += k;
        g[n] = k;
        ends[n] = p;
        n++;
        if (n == CARD_MAX_GROUPS || p + 1 >= len || t[p] != sep || !is_digit(t[p + 1]))
            break;
        p++;
    }
    /* Longest layout first: a trailing group that does not fit is left out. */
    for (size_t k = n; k >= 2; k--) {
        size_t total = 0;
        for (size_t j = 0; j < k; j++)
            total += g[j];
        if (total < CARD_MIN_DIGITS || !card_layout_ok(g, k))
            continue;
        if (right_free(t, len, ends[k - 1], GLUE_NUM) && luhn_ok(d, total))
            return ends[k - 1];
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * IBAN
 * ---------------------------------------------------------------------------------------- */

#define IBAN_MIN 15
#define IBAN_MAX 34

/* Lengths from the SWIFT IBAN registry; 0 for a country not listed. */
static size_t iban_country_len(unsigned char a, unsigned char b)
{
    static const char table[] =
        "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BI27BR29BY28CH21CR22CY28CZ24DE22DJ27DK18DO28"
        "EE20EG29ES24FI18FK18FO18FR27GB22GE22GI23GL18GR27GT28HN28HR21HU28IE22IL23IQ23IS26"
        "IT27JO30KW30KZ20LB28LC32LI21LT20LU20LV21LY25MC27MD24ME22MK19MN20MR27MT31MU30NI28"
        "NL18NO15OM23PK24PL28PS29PT25QA29RO24RS22RU33SA24SC31SD18SE24SI19SK24SM27SO23ST25"
        "SV28TL23TN24TR26UA29VA22VG24XK20YE30";
    unsigned want = (unsigned)to_upper(a) << 8 | to_upper(b);
    size_t lo = 0, hi = (sizeof table - 1) / 4; /* binary search: the table is sorted */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *e = table + 4 * mid;
        unsigned code = (unsigned)(unsigned char)e[0] << 8 | (unsigned char)e[1];
        if (code == want)
            return (size_t)(e[2] - '0') * 10 + (size_t)(e[3] - '0');
        if (code < want)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* r = (r followed by the decimal expansion of c) mod 97; letters count as 10..35. */
static unsigned mod97_push(unsigned r, unsigned char c)
{
    if (is_digit(c))
        return (r * 10 + (unsigned)(c - '0')) % 97;
    return (r * 100 + (unsigned)(to_upper(c) - 'A' + 10)) % 97;
}

/* r is the BBAN's remainder; adds the country and check digits at t[i..i+4) and checks. */
static bool iban_check(const unsigned char *t, size_t i, unsigned r)
{
    for (size_t k = 0; k < 4; k++)
        r = mod97_push(r, t[i + k]);
    return r == 1;
}

static size_t scan_iban(const unsigned char *t, size_t len, size_t i)
{
    if (!left_free(t, i, GLUE_NONE) || i + 5 >= len || !is_alpha(t[i]) || !is_alpha(t[i + 1]) ||
        !is_digit(t[i + 2]) || !is_digit(t[i + 3]))
        return 0;
    size_t want = iban_country_len(t[i], t[i + 1]);
    unsigned r = 0;

    if (is_alnum(t[i + 4])) {
        size_t n = 4;
        while (i + n < len && n <= IBAN_MAX && is_alnum(t[i + n]))
            n++;
        if (n < IBAN_MIN || n > IBAN_MAX || (want != 0 && n != want))
            return 0;
        for (size_t k = 4; k < n; k++)
            r = mod97_push(r, t[i + k]);
        return iban_check(t, i, r) ? i + n : 0;
    }

    /* Groups of 4 after single spaces; only the last may be shorter. */
    size_t p = i + 4, n = 4, best = 0;
    while (p + 1 < len && t[p] == ' ' && is_alnum(t[p + 1])) {
        size_t k = 0;
        while (p + 1 + k < len && k <= 4 && is_alnum(t[p + 1 + k]))
            k++;
        if (k > 4 || n + k > IBAN_MAX)
            break;
        for (size_t j = 0; j < k; j++)
            r = mod97_push(r, t[p + 1 + j]);
        n += k;
        p += 1 + k;
        if (n >= IBAN_MIN && (want == 0 || n == want) && iban_check(t, i, r))
            best = p;
        if (k < 4)
            break;
    }
    return best;
}

/* ------------------------------------------------------------------------------------------
 * IPV4 and IPV6
 * ---------------------------------------------------------------------------------------- */

/* A dotted quad at p, no boundary checks; octets to o. */
static size_t scan_quad(const unsigned char *t, size_t len, size_t p, unsigned o[4])
{
    for (int k = 0; k < 4; k++) {
        if (k > 0) {
            if (p >= len || t[p] != '.')
                return 0;
            p++;
        }
        size_t n = digits_at(t, len, p, 3);
        if (n == 0 || n > 3)
            return 0;
        o[k] = num_at(t, p, n);
        if (o[k] > 255)
            return 0;
        p += n;
    }
    return p;
}

static size_t scan_ipv4(const unsigned char *t, size_t len, size_t i, unsigned o[4])
{
    if (!left_free(t, i, GLUE_DOT))
        return 0;
    size_t e = scan_quad(t, len, i, o);
    if (e == 0 || !right_free(t, len, e, GLUE_DOT))
        return 0;
    return e;
}

/*
 * The longest IPv6 address at i; its 8 groups go to out. Parses greedily and remembers the
 * last point where what was read is a complete address.
 */
static size_t scan_ipv6(const unsigned char *t, size_t len, size_t i, uint16_t out[8])
{
    uint16_t g[8];
    int n = 0, dc = -1, best_n = 0, best_dc = -1;
    size_t p = i, best = 0;

    if (i > 0 && (is_alnum(t[i - 1]) || t[i - 1] == ':'))
        return 0;
    if (p + 1 < len && t[p] == ':' && t[p + 1] == ':') {
        dc = 0;
        p += 2;
    }
    for (;;) {
        size_t h = 0;
        while (p + h < len && h <= 4 && is_hex(t[p + h]))
            h++;
        if (h == 0 || h > 4)
            break;
        if (p + h < len && t[p + h] == '.') {
            unsigned o[4];
            size_t q = scan_quad(t, len, p, o);
            if (q != 0 && (dc >= 0 ? n + 2 <= 7 : n + 2 == 8)) {
                g[n++] = (uint16_t)(o[0] << 8 | o[1]);
                g[n++] = (uint16_t)(o[2] << 8 | o[3]);
                best = q;
                best_n = n;
                best_dc = dc;
            }
            break;
        }
        if (n == 8)
            break;
        unsigned v = 0;
        for (size_t k = 0; k < h; k++)
            v = v * 16 + (unsigned)hex_digit((char)t[p + k]);
        g[n++] = (uint16_t)v;
        p += h;
        if (dc >= 0 ? n <= 7 : n == 8) {
            best = p;
            best_n = n;
            best_dc = dc;
        }
        if (p + 1 < len && t[p] == ':' && t[p + 1] == ':') {
            if (dc >= 0 || n > 7)
                break;
            dc = n;
            p += 2;
            best = p;
            best_n = n;
            best_dc = dc;
            continue;
        }
        if (p + 1 < len && t[p] == ':' && is_hex(t[p + 1])) {
            p++;
            continue;
        }
        break;
    }
    if (best == 0 || best_n == 0)
        return 0;

    bool has_digit = false;
    for (size_t k = i; k < best && !has_digit; k++)
        has_digit = is_digit(t[k]);
    if (!has_digit)
        return 0;
    if (best < len) {
        unsigned char c = t[best];
        bool next_hex = best + 1 < len && (is_hex(t[best + 1]) || t[best + 1] == ':');
        if (is_alnum(c) || (c == ':' && next_hex) ||
            (c == '.' && best + 1 < len && is_digit(t[best + 1])))
            return 0;
    }

    int tail = best_dc >= 0 ? best_n - best_dc : 0;
    int head = best_n - tail;
    memset(out, 0, 8 * sizeof out[0]);
    memcpy(out, g, (size_t)head * sizeof g[0]);
    memcpy(out + 8 - tail, g + head, (size_t)tail * sizeof g[0]);
    return best;
}

/* ------------------------------------------------------------------------------------------
 * SSN
 * ---------------------------------------------------------------------------------------- */

static size_t scan_ssn(const unsigned char *t, size_t len, size_t i)
{
    if (!left_free(t, i, GLUE_NUM) || len - i < 11)
        return 0;
    if (digits_at(t, len, i, 3) != 3 || t[i + 3] != '-' || digits_at(t, len, i + 4, 2) != 2 ||
        t[i + 6] != '-' || digits_at(t, len, i + 7, 4) != 4)
        return 0;
    unsigned area = num_at(t, i, 3), group = num_at(t, i + 4, 2), serial = num_at(t, i + 7, 4);
    if (area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0)
        return 0;
    if (!right_free(t, len, i + 11, GLUE_NUM))
        return 0;
    return i + 11;
}

/* ------------------------------------------------------------------------------------------
 * Choosing the value at a position
 * ---------------------------------------------------------------------------------------- */

struct match {
    size_t start, end; /* t[start..end) is the value */
    enum mask_kind kind;
    uint16_t ip6[8]; /* the groups when kind == MASK_IPV6 */
    unsigned ip4[4]; /* the octets when kind == MASK_IPV4 */
};

/*
 * Keeps the candidate if it reaches further than the best so far, or as far from an earlier
 * start; on a full tie the earlier call (the more specific kind) stays. Returns true if kept.
 */
static bool consider(struct match *best, bool *found, enum mask_kind kind, size_t start, size_t end)
{
    if (end == 0)
        return false;
    if (*found && (end < best->end || (end == best->end && start >= best->start)))
        return false;
    best->start = start;
    best->end = end;
    best->kind = kind;
    *found = true;
    return true;
}

/*
 * Whether a value (or the leading punctuation of an email) may begin at i: never inside a
 * word or number, and only at a byte some recognizer starts with.
 */
static bool may_start(const unsigned char *t, size_t i)
{
    return (char_class[t[i]] & C_START) && !(i > 0 && is_alnum(t[i - 1]));
}

/* The first position after i where a value may begin, or len. */
static size_t next_start(const unsigned char *t, size_t len, size_t i)
{
    i++;
    while (i < len && !may_start(t, i))
        i++;
    return i;
}

/*
 * The value to mask that begins at i (possibly after leading punctuation), if any. A glance
 * at the digit or hex run at i decides which recognizers can match at all, which keeps digit
 * soup cheap; the recognizers check everything again themselves.
 */
static bool find_at(const unsigned char *t, size_t len, size_t i, struct match *m)
{
    unsigned char c = t[i];
    bool found = false;

    if (!may_start(t, i))
        return false;
    if (is_local(c)) {
        size_t s = i;
        size_t e = scan_email(t, len, i, &s);
        consider(m, &found, MASK_EMAIL, s, e);
    }
    if (is_alpha(c))
        consider(m, &found, MASK_IBAN, i, scan_iban(t, len, i));
    if (c == '+')
        consider(m, &found, MASK_PHONE, i, scan_phone_plus(t, len, i));
    if (c == '(')
        consider(m, &found, MASK_PHONE, i, scan_nanp(t, len, i));
    if (is_digit(c)) {
        size_t run = digits_at(t, len, i, CARD_MAX_DIGITS);
        unsigned char nx = i + run < len ? t[i + run] : 0;
        if (run >= CARD_MIN_DIGITS || (run == 4 && (nx == ' ' || nx == '-')))
            consider(m, &found, MASK_CARD, i, scan_card(t, len, i));
        if (run == 3 && nx == '-')
            consider(m, &found, MASK_SSN, i, scan_ssn(t, len, i));
        if ((run == 3 || (run == 1 && c == '1')) && is_sep(nx))
            consider(m, &found, MASK_PHONE, i, scan_nanp(t, len, i));
        if (run <= 3 && nx == '.') {
            unsigned o[4];
            if (consider(m, &found, MASK_IPV4, i, scan_ipv4(t, len, i, o)))
                memcpy(m->ip4, o, sizeof o);
        }
    }
    if (is_hex(c) || c == ':') {
        size_t h = 0;
        while (i + h < len && h <= 4 && is_hex(t[i + h]))
            h++;
        if (i + h + 1 < len && t[i + h] == ':' && h <= 4 && (h > 0 || t[i + 1] == ':')) {
            uint16_t g[8];
            if (consider(m, &found, MASK_IPV6, i, scan_ipv6(t, len, i, g)))
                memcpy(m->ip6, g, sizeof g);
        }
    }
    return found;
}

/* ------------------------------------------------------------------------------------------
 * Normalized values
 * ---------------------------------------------------------------------------------------- */

/* The longest normalized value: an email of 64 + 1 + 253 bytes. */
#define NORM_MAX 320

struct norm {
    char s[NORM_MAX];
    size_t n;
};

static void norm_put(struct norm *v, char c)
{
    if (v->n < NORM_MAX) /* the recognizers' bounds keep every value shorter */
        v->s[v->n++] = c;
}

static void norm_put_dec(struct norm *v, unsigned x)
{
    char tmp[12];
    size_t k = 0;
    do {
        tmp[k++] = (char)('0' + x % 10);
        x /= 10;
    } while (x != 0 && k < sizeof tmp);
    while (k > 0)
        norm_put(v, tmp[--k]);
}

static void norm_put_hex(struct norm *v, unsigned x)
{
    static const char hex[] = "0123456789abcdef";
    bool started = false;
    for (int shift = 12; shift >= 0; shift -= 4) {
        unsigned d = (x >> shift) & 0xf;
        if (d != 0 || started || shift == 0) {
            norm_put(v, hex[d]);
            started = true;
        }
    }
}

/* RFC 5952: the longest run of two or more zero groups (the first on a tie) becomes "::". */
static void norm_ipv6(struct norm *v, const uint16_t g[8])
{
    int run_at = -1, run_len = 0;
    for (int k = 0; k < 8;) {
        int j = k;
        while (j < 8 && g[j] == 0)
            j++;
        if (j - k > run_len && j - k >= 2) {
            run_at = k;
            run_len = j - k;
        }
        k = j > k ? j : k + 1;
    }
    for (int k = 0; k < 8; k++) {
        if (k == run_at) {
            norm_put(v, ':');
            norm_put(v, ':');
            k += run_len - 1;
            continue;
        }
        if (k > 0 && k != run_at + run_len)
            norm_put(v, ':');
        norm_put_hex(v, g[k]);
    }
}

static void normalize(const unsigned char *t, const struct match *m, struct norm *v)
{
    v->n = 0;
    switch (m->kind) {
        case MASK_EMAIL:
            for (size_t k = m->start; k < m->end; k++)
                norm_put(v, (char)to_lower(t[k]));
            break;
        case MASK_IBAN:
            for (size_t k = m->start; k < m->end; k++)
                if (is_alnum(t[k]))
                    norm_put(v, (char)to_upper(t[k]));
            break;
        case MASK_CARD:
        case MASK_SSN:
            for (size_t k = m->start; k < m->end; k++)
                if (is_digit(t[k]))
                    norm_put(v, (char)t[k]);
            break;
        case MASK_PHONE:
            if (t[m->start] == '+') {
                norm_put(v, '+');
                for (size_t k = m->start; k < m->end; k++) {
                    if (t[k] == '(' && k + 2 < m->end && t[k + 1] == '0' && t[k + 2] == ')')
                        k += 2; /* "(0)" is a trunk prefix dialled only at home */
                    else if (is_digit(t[k]))
                        norm_put(v, (char)t[k]);
                }
            } else {
                /* NANP: 10 digits, or 11 with the trunk '1' which is dropped. */
                size_t k = m->start;
                if (digits_at(t, m->end, k, 1) == 1 && t[k] == '1')
                    k++;
                norm_put(v, '+');
                norm_put(v, '1');
                for (; k < m->end; k++)
                    if (is_digit(t[k]))
                        norm_put(v, (char)t[k]);
            }
            break;
        case MASK_IPV4:
            for (int k = 0; k < 4; k++) {
                if (k > 0)
                    norm_put(v, '.');
                norm_put_dec(v, m->ip4[k]);
            }
            break;
        case MASK_IPV6:
            norm_ipv6(v, m->ip6);
            break;
        case MASK_KINDS:
            break;
    }
}

/* ------------------------------------------------------------------------------------------
 * HMAC-SHA256 with the key schedule done once per call
 * ---------------------------------------------------------------------------------------- */

/*
 * Logs repeat the same client address or user many times, and each HMAC costs two SHA-256
 * blocks plus EVP's context copies, so recent tokens are remembered in a small direct-mapped
 * table. It lives for one mask_text call only.
 */
#define CACHE_SLOTS     64
#define CACHE_VALUE_MAX 48

struct cache_slot {
    unsigned char kind1; /* kind + 1; 0 for an empty slot */
    unsigned char n;     /* value length */
    char value[CACHE_VALUE_MAX];
    char hex[MASK_TOKEN_HEX];
};

static const char *const kind_names[MASK_KINDS] = {
    [MASK_EMAIL] = "EMAIL", [MASK_PHONE] = "PHONE", [MASK_CARD] = "CARD", [MASK_IBAN] = "IBAN",
    [MASK_IPV4] = "IPV4",   [MASK_IPV6] = "IPV6",   [MASK_SSN] = "SSN",
};

struct hasher {
    struct hmac_key *key;
    EVP_MD_CTX *work;
    struct cache_slot cache[CACHE_SLOTS];
};

static void hasher_free(struct hasher *h)
{
    hmac_key_free(h->key);
    EVP_MD_CTX_free(h->work);
    h->key = NULL;
    h->work = NULL;
}

static bool hasher_start(struct hasher *h, const uint8_t key[MASK_KEY_BYTES])
{
    h->key = hmac_key_new(key, MASK_KEY_BYTES);
    h->work = EVP_MD_CTX_new();
    if (h->key == NULL || h->work == NULL) {
        hasher_free(h);
        return false;
    }
    return true;
}

/* hex gets the token's MASK_TOKEN_HEX digits of HMAC(key, kind ":" value). */
static bool hasher_token(struct hasher *h, enum mask_kind kind, const struct norm *v,
                         char hex[MASK_TOKEN_HEX])
{
    static const char digits[] = "0123456789abcdef";
    const char *name = kind_names[kind];
    uint8_t oh[HMAC_SHA256_BYTES];

    uint32_t x = 2166136261u ^ (uint32_t)kind; /* FNV-1a */
    for (size_t k = 0; k < v->n; k++)
        x = (x ^ (unsigned char)v->s[k]) * 16777619u;
    struct cache_slot *slot = &h->cache[x % CACHE_SLOTS];
    bool cacheable = v->n <= CACHE_VALUE_MAX;
    if (cacheable && slot->kind1 == kind + 1 && slot->n == v->n &&
        memcmp(slot->value, v->s, v->n) == 0) {
        memcpy(hex, slot->hex, MASK_TOKEN_HEX);
        return true;
    }

    if (!hmac_begin(h->key, h->work) || !EVP_DigestUpdate(h->work, name, strlen(name)) ||
        !EVP_DigestUpdate(h->work, ":", 1) || !EVP_DigestUpdate(h->work, v->s, v->n) ||
        !hmac_end(h->key, h->work, oh))
        return false;
    for (size_t k = 0; k < MASK_TOKEN_HEX / 2; k++) {
        hex[2 * k] = digits[oh[k] >> 4];
        hex[2 * k + 1] = digits[oh[k] & 0xf];
    }
    if (cacheable) {
        slot->kind1 = (unsigned char)(kind + 1);
        slot->n = (unsigned char)v->n;
        memcpy(slot->value, v->s, v->n);
        memcpy(slot->hex, hex, MASK_TOKEN_HEX);
    }
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Output buffer with a hard cap
 * ---------------------------------------------------------------------------------------- */

struct outbuf {
    char *data;
    size_t len, cap, max;
};

static bool outbuf_append(struct outbuf *b, const void *p, size_t n)
{
    size_t need;
    if (!size_add_ok(b->len, n, &need) || !size_add_ok(need, 1, &need) || need > b->max)
        return false;
    if (need > b->cap) {
        size_t cap = b->cap;
        while (cap < need)
            cap = cap > b->max / 2 ? b->max : cap * 2;
        char *d = realloc(b->data, cap);
        if (d == NULL)
            return false;
        b->data = d;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return true;
}

/* ------------------------------------------------------------------------------------------
 * Public functions
 * ---------------------------------------------------------------------------------------- */

const char *mask_kind_name(enum mask_kind k)
{
    if ((unsigned)k >= MASK_KINDS)
        return "UNKNOWN";
    return kind_names[k];
}

/*
 * The longest token is "<EMAIL:" + 8 + ">" = 16 bytes and the shortest value 3 ("::1"), so
 * the output is at most 16/3 of the input; the cap below is that bound, not a guess.
 */
#define TOKEN_MAX 16

char *mask_text_len(const uint8_t key[MASK_KEY_BYTES], const char *text, size_t len,
                    size_t counts[MASK_KINDS], size_t *out_len)
{
    const unsigned char *t = (const unsigned char *)text;
    struct outbuf ob = {0};
    struct hasher *h = NULL; /* ~4 KB: on the heap, set up at the first value */
    size_t found[MASK_KINDS] = {0};
    size_t i = 0, copied = 0;
    char *res = NULL;

    if (!size_mul_ok(len / 3 + 1, TOKEN_MAX, &ob.max) || !size_add_ok(ob.max, len + 1, &ob.max))
        goto out;
    ob.cap = len < SIZE_MAX / 2 ? len + len / 8 + 64 : len;
    if (ob.cap > ob.max)
        ob.cap = ob.max;
    ob.data = malloc(ob.cap);
    if (ob.data == NULL)
        goto out;

    while (i < len) {
        /*
         * Recognizers see the text from the end of the last value on: a masked value is a
         * boundary like the start of the text, so "+44 20 7946 0958.ann@example.com" also
         * masks the address and "10.0.0.1-415-555-0123" the phone number.
         */
        const unsigned char *rest = t + copied;
        struct match m;
        if (!find_at(rest, len - copied, i - copied, &m)) {
            i = copied + next_start(rest, len - copied, i - copied);
            continue;
        }
        m.start += copied;
        m.end += copied;
        if (h == NULL) {
            h = calloc(1, sizeof *h);
            if (h == NULL || !hasher_start(h, key))
                goto out;
        }
        struct norm v;
        char tok[TOKEN_MAX];
        const char *name = kind_names[m.kind];
        size_t nl = strlen(name);
        normalize(t, &m, &v);
        tok[0] = '<';
        memcpy(tok + 1, name, nl);
        tok[1 + nl] = ':';
        if (!hasher_token(h, m.kind, &v, tok + 2 + nl))
            goto out;
        tok[2 + nl + MASK_TOKEN_HEX] = '>';
        if (!outbuf_append(&ob, t + copied, m.start - copied) ||
            !outbuf_append(&ob, tok, 3 + nl + MASK_TOKEN_HEX))
            goto out;
        found[m.kind]++;
        i = copied = m.end;
    }
    if (len > copied && !outbuf_append(&ob, t + copied, len - copied))
        goto out;
    ob.data[ob.len] = '\0';
    res = ob.data;
    ob.data = NULL;
    if (counts != NULL)
        memcpy(counts, found, sizeof found);
    if (out_len != NULL)
        *out_len = ob.len;
out:
    if (h != NULL)
        hasher_free(h);
    free(h);
    free(ob.data);
    return res;
}

char *mask_text(const uint8_t key[MASK_KEY_BYTES], const char *text, size_t len,
                size_t counts[MASK_KINDS])
{
    return mask_text_len(key, text, len, counts, NULL);
}

bool mask_contains_pii(const char *text, size_t len)
{
    const unsigned char *t = (const unsigned char *)text;
    for (size_t i = 0; i < len; i = next_start(t, len, i)) {
        struct match m;
        if (find_at(t, len, i, &m))
            return true;
    }
    return false;
}
