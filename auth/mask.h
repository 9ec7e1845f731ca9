/*
 * auth/mask.h - masking of personal data in free text before it reaches a log, the audit log
 * or a training set.
 *
 * mask_text() replaces every email address, phone number, payment card number, IBAN, IPv4 or
 * IPv6 address and US social security number in a text with a token
 *
 *     <KIND:xxxxxxxx>      e.g. <EMAIL:3f9a0c12>, <CARD:0b77e1d4>, <IPV4:9e01aa5c>
 *
 * where xxxxxxxx is the first 8 lowercase hex digits of HMAC-SHA256(key, "KIND:" + value) and
 * value is the normalized form below, so equal values give equal tokens (records can still be
 * correlated) while a reader without the key cannot recover or confirm a value from its token
 * by hashing guesses. 8 hex digits are 32 bits: two distinct values share a token with
 * probability 2^-32, so among ~77,000 distinct values of one kind a shared token is likely;
 * tokens link records, they do not prove identity. Everything else passes through byte for
 * byte, including NUL bytes and invalid UTF-8.
 *
 * What is masked, and the normalized value that is hashed:
 *   EMAIL  local@domain.tld: local part of letters, digits and ._%+-' (at most 64 bytes; leading
 *          punctuation stays outside the token), two or more domain labels (letters, digits,
 *          inner '-'), top-level label of >= 2 letters or "xn--" punycode.   -> lowercased.
 *   PHONE  '+' forms: "+1" followed by a NANP number ("+1 415 555 0123", "+1 (415) 555-0123",
 *          "+14155550123"); any other country code followed by digit groups separated by one
 *          space, '-' or '.', with an optional "(0)"-style group, 8-15 digits in all
 *          ("+44 20 7946 0958", "+49-30-1234567"). NANP forms without '+': "(415) 555-0123",
 *          "415-555-0123", "415.555.0123", "415 555 0123" (one separator used throughout),
 *          optionally after a trunk "1-"; area code and exchange start with 2-9.
 *          -> '+' and digits; NANP numbers become "+1" + 10 digits (so "(415) 555-0123" and
 *          "+1 415 555 0123" correlate); a "(0)" trunk group is dropped.
 *   CARD   13-19 digits starting with 2-6, passing Luhn, written contiguously or grouped with
 *          one space or one '-' as 4-4-4-4(-1..3), 4-4-4-1..3, 4-6-5 or 4-6-4.   -> digits.
 *   IBAN   2 letters, 2 check digits, then letters/digits, 15-34 characters in all, contiguous
 *          or in groups of 4 separated by one space; mod-97 must hold and, for the countries
 *          in the IBAN registry that mask.c lists, the length must be the country's length
 *          (other country codes only need 15-34). Letters may be either case.
 *          -> uppercase without spaces.
 *   IPV4   dotted quad, octets 0-255 of 1-3 digits; not part of a longer dotted run
 *          ("1.2.3.4.5" stays, and so does any 3-part version such as "1.2.3"). A port or a
 *          CIDR suffix ("10.0.0.1:8080", "10.0.0.0/8") stays outside the token.
 *          -> decimal octets without leading zeros.
 *   IPV6   RFC 4291 text: 8 groups, or fewer with one "::", an embedded dotted quad allowed at
 *          the end ("::ffff:10.0.0.1"); at most 4 hex digits per group. At least one decimal
 *          digit is required, so C++ "a::b" or "dead::beef" stay, and times such as 12:30:45
 *          (3 groups, no "::") are never addresses. A zone ("%eth0") stays outside the token.
 *          -> RFC 5952 canonical form (lowercase, longest zero run compressed), with an
 *          embedded IPv4 written as two hex groups.
 *   SSN    NNN-NN-NNNN with area not 000, 666 or 900-999, group not 00, serial not 0000.
 *          -> 9 digits.
 *
 * What stays: bare digit runs that are not Luhn-valid card numbers (order ids), prices, dates,
 * times, ISO timestamps, version numbers, hashes, UUIDs, and any value glued to the text
 * around it. Boundaries: no value starts right after a letter or digit or ends right before
 * one ("order12345678901234", "abc415-555-0123xyz", "v1.2.3.4" stay), and numeric values
 * (CARD, SSN, PHONE) are not cut out of a longer run joined by '.', '-', '/' or ':'
 * ("12-415-555-0123" stays); for IPV4 only '.' joins. An underscore or any byte >= 0x80 is a
 * boundary. The end of a masked value counts as a boundary too, so in "10.0.0.1-415-555-0123"
 * both values are masked. Where two candidates overlap, the one reaching furthest wins (an
 * email address whose local part looks like a phone number is an EMAIL), then the earlier
 * start; values never nest and output is never garbled. Masking the output again changes
 * nothing when values are set off by spaces or punctuation; text glued to a value may become
 * maskable once that value is a token ("0958::ffff:" glued to an address glued to a word).
 *
 * Cost: one left-to-right pass; recognizers look ahead a bounded distance (a few hundred
 * bytes at most) and only where a value can begin, so scanning is linear in len whatever the
 * input. Each value costs one HMAC-SHA256 (about 1 us; repeats within a call are cached), so
 * text made of nothing but distinct short values (10 MB of IPv4 addresses) takes about a
 * second; ordinary log text runs at tens of MB/s.
 *
 * Thread safety: all functions are reentrant and keep no state between calls; hashing uses
 * OpenSSL's EVP interface, which is thread-safe.
 */
#ifndef INFERA_AUTH_MASK_H
#define INFERA_AUTH_MASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MASK_KEY_BYTES 32 /* HMAC-SHA256 key length */
#define MASK_TOKEN_HEX 8  /* hex digits of the HMAC in a token */

enum mask_kind {
    MASK_EMAIL,
    MASK_PHONE,
    MASK_CARD,
    MASK_IBAN,
    MASK_IPV4,
    MASK_IPV6,
    MASK_SSN,
    MASK_KINDS /* number of kinds, not a kind */
};

/*
 * Returns the static name used in tokens and hashed values: "EMAIL", "PHONE", "CARD", "IBAN",
 * "IPV4", "IPV6", "SSN" (IPv4 and IPv6 have distinct names; an address of one family never
 * equals one of the other, so nothing that should correlate is split). "UNKNOWN" for a value
 * outside the enum.
 */
const char *mask_kind_name(enum mask_kind k);

/*
 * Masks text[0..len) into a new NUL-terminated string. text need not be NUL-terminated and
 * may hold any bytes, including NUL (which is then also in the output: use mask_text_len()
 * to learn the length); text may be NULL when len is 0. key is borrowed for the call and not
 * retained. counts, if not NULL, must have MASK_KINDS entries and receives the number of
 * values masked per kind; it is written only on success.
 *
 * Returns the new string, which the caller frees with free(), or NULL only when memory (or
 * OpenSSL's SHA-256) could not be had; then counts is unchanged. Never returns partially
 * masked text.
 */
char *mask_text(const uint8_t key[MASK_KEY_BYTES], const char *text, size_t len,
                size_t counts[MASK_KINDS]);

/*
 * As mask_text(), and also stores the output length (without the terminating NUL) in
 * *out_len (if out_len is not NULL) on success.
 */
char *mask_text_len(const uint8_t key[MASK_KEY_BYTES], const char *text, size_t len,
                    size_t counts[MASK_KINDS], size_t *out_len);

/*
 * True if text[0..len) contains anything mask_text() would mask; stops at the first value.
 * Allocates nothing and cannot fail. text may be NULL when len is 0.
 */
bool mask_contains_pii(const char *text, size_t len);

#endif /* INFERA_AUTH_MASK_H */
