/*
 * tests/auth/test_mask.c - the PII masker.
 *
 *   corpus        tests/auth/mask_corpus.tsv: every positive comes out as its text with the
 *                 raw value replaced by exactly one token of the expected kind (and the raw
 *                 value nowhere in the output); every negative comes out byte for byte;
 *                 mask_contains_pii agrees; masking the output again changes nothing. Every
 *                 prefix of every line is also masked from an exact-size heap copy, so a
 *                 recognizer reading past len trips AddressSanitizer or valgrind.
 *   tokens        the token is HMAC-SHA256 computed independently with OpenSSL's one-shot
 *                 HMAC(); equal values in different spellings give equal tokens, different
 *                 keys different tokens; kind names; counts; adjacent values.
 *   bytes         NUL bytes and invalid UTF-8 pass through, with values around them masked.
 *   hostile       4 MB of random bytes, 4 MB of digit/punctuation soup and long runs built
 *                 to defeat a naive scanner finish quickly (a quadratic scan would take
 *                 minutes); a 10 MB log-like text is timed and the throughput printed.
 */
#include "tests/test.h"

#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/mask.h"
#include "common/common.h"

static const uint8_t key_a[MASK_KEY_BYTES] = "0123456789abcdef0123456789abcdef";
static const uint8_t key_b[MASK_KEY_BYTES] = "fedcba9876543210fedcba9876543210";

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Masks a NUL-terminated string with key_a; caller frees. */
static char *mask_s(const char *s, size_t counts[MASK_KINDS])
{
    char *out = mask_text(key_a, s, strlen(s), counts);
    if (out == NULL) {
        fprintf(stderr, "mask_text: out of memory\n");
        exit(2);
    }
    return out;
}

/* The token mask_text should write for kind and normalized value, computed with HMAC(). */
static void expected_token(const uint8_t *key, const char *kind, const char *norm, char *out,
                           size_t cap)
{
    char msg[512];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    snprintf(msg, sizeof msg, "%s:%s", kind, norm);
    HMAC(EVP_sha256(), key, MASK_KEY_BYTES, (const unsigned char *)msg, strlen(msg), md, &n);
    snprintf(out, cap, "<%s:%02x%02x%02x%02x>", kind, md[0], md[1], md[2], md[3]);
}

/* s is "<KIND:" + 8 lowercase hex + ">"; returns its length or 0. */
static size_t token_len_at(const char *s, const char *kind)
{
    size_t kl = strlen(kind);
    if (s[0] != '<' || strncmp(s + 1, kind, kl) != 0 || s[1 + kl] != ':')
        return 0;
    for (size_t k = 0; k < MASK_TOKEN_HEX; k++) {
        char c = s[2 + kl + k];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return s[2 + kl + MASK_TOKEN_HEX] == '>' ? 3 + kl + MASK_TOKEN_HEX : 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ------------------------------------------------------------------------------------------
 * Corpus
 * ---------------------------------------------------------------------------------------- */

static int kind_of(const char *name)
{
    static const char *const names[MASK_KINDS] = {"email", "phone", "card", "iban",
                                                  "ipv4",  "ipv6",  "ssn"};
    for (int k = 0; k < MASK_KINDS; k++)
        if (strcmp(name, names[k]) == 0)
            return k;
    return -1;
}

/* Masks every prefix of text from an exact-size heap copy; only memory safety is checked. */
static void mask_prefixes(const char *text, size_t len)
{
    for (size_t n = 0; n <= len; n++) {
        char *copy = xmalloc(n);
        memcpy(copy, text, n);
        char *out = mask_text(key_a, copy, n, NULL);
        CHECK(out != NULL);
        (void)mask_contains_pii(copy, n);
        free(out);
        free(copy);
    }
}

static void check_positive(int line, int kind, const char *text, const char *raw)
{
    size_t counts[MASK_KINDS];
    const char *name = mask_kind_name((enum mask_kind)kind);
    const char *at = strstr(text, raw);
    CHECK_MSG(at != NULL, "line %d: raw value \"%s\" not in text", line, raw);
    if (at == NULL)
        return;
    size_t pre = (size_t)(at - text), rl = strlen(raw);

    char *out = mask_s(text, counts);
    size_t ol = strlen(out), tl = 0;
    bool shape = ol > pre && memcmp(out, text, pre) == 0 &&
                 (tl = token_len_at(out + pre, name)) != 0 && strcmp(out + pre + tl, at + rl) == 0;
    CHECK_MSG(shape, "line %d: \"%s\" -> \"%s\", want \"%s\" as one %s token", line, text, out, raw,
              name);
    CHECK_MSG(strstr(out, raw) == NULL, "line %d: raw value survives in \"%s\"", line, out);
    for (int k = 0; k < MASK_KINDS; k++)
        CHECK_MSG(counts[k] == (k == kind ? 1u : 0u), "line %d: counts[%s] = %zu", line,
                  mask_kind_name((enum mask_kind)k), counts[k]);
    CHECK_MSG(mask_contains_pii(text, strlen(text)), "line %d: not detected", line);
    CHECK_MSG(!mask_contains_pii(out, ol), "line %d: output \"%s\" still has PII", line, out);

    char *again = mask_s(out, NULL);
    CHECK_MSG(strcmp(again, out) == 0, "line %d: not idempotent: \"%s\"", line, again);
    free(again);
    free(out);
}

static void check_negative(int line, const char *text)
{
    size_t counts[MASK_KINDS];
    char *out = mask_s(text, counts);
    CHECK_MSG(strcmp(out, text) == 0, "line %d: \"%s\" -> \"%s\"", line, text, out);
    size_t total = 0;
    for (int k = 0; k < MASK_KINDS; k++)
        total += counts[k];
    CHECK_MSG(total == 0, "line %d: %zu values counted", line, total);
    CHECK_MSG(!mask_contains_pii(text, strlen(text)), "line %d: detected in \"%s\"", line, text);
    free(out);
}

static void test_corpus(void)
{
    const char *dir = getenv("INFERA_TEST_SRC");
    char path[4096];
    char *data = NULL, *all = NULL;
    size_t len = 0, all_len = 0;
    int per_kind[MASK_KINDS] = {0}, negatives = 0, positives = 0;
    struct err e;
    err_clear(&e);

    snprintf(path, sizeof path, "%s/auth/mask_corpus.tsv", dir ? dir : ".");
    int rc = fs_read_file(path, 1 << 20, &data, &len, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (rc != 0)
        return;
    all = xmalloc(len + 1); /* every positive's text, joined by newlines */

    int line = 0;
    for (char *p = data, *nl; *p != '\0'; p = nl + 1) {
        line++;
        nl = strchr(p, '\n');
        if (nl == NULL)
            nl = p + strlen(p); /* a last line without '\n': stop after it */
        char save = *nl;
        *nl = '\0';
        if (p[0] != '#' && p[0] != '\0') {
            char *tab = strchr(p, '\t');
            CHECK_MSG(tab != NULL, "line %d: no tab", line);
            if (tab != NULL) {
                *tab = '\0';
                char *text = tab + 1, *raw = text, *tab2 = strchr(text, '\t');
                if (tab2 != NULL) {
                    *tab2 = '\0';
                    raw = tab2 + 1;
                }
                mask_prefixes(text, strlen(text));
                if (strcmp(p, "none") == 0) {
                    negatives++;
                    check_negative(line, text);
                } else {
                    int kind = kind_of(p);
                    CHECK_MSG(kind >= 0, "line %d: unknown kind \"%s\"", line, p);
                    if (kind >= 0) {
                        positives++;
                        per_kind[kind]++;
                        check_positive(line, kind, text, raw);
                        size_t tl = strlen(text);
                        memcpy(all + all_len, text, tl);
                        all_len += tl;
                        all[all_len++] = '\n';
                    }
                }
            }
        }
        if (save == '\0')
            break;
    }
    all[all_len] = '\0';

    fprintf(stderr, "corpus: %d positives (", positives);
    for (int k = 0; k < MASK_KINDS; k++)
        fprintf(stderr, "%s %d%s", mask_kind_name((enum mask_kind)k), per_kind[k],
                k + 1 < MASK_KINDS ? ", " : "");
    fprintf(stderr, "), %d negatives\n", negatives);
    CHECK(positives >= 100);
    CHECK(negatives >= 100);
    for (int k = 0; k < MASK_KINDS; k++)
        CHECK_MSG(per_kind[k] >= 10, "only %d %s cases", per_kind[k],
                  mask_kind_name((enum mask_kind)k));

    /* All positives in one text: none of their raw values survives. */
    size_t counts[MASK_KINDS], total = 0;
    char *out = mask_s(all, counts);
    for (int k = 0; k < MASK_KINDS; k++) {
        CHECK_MSG(counts[k] == (size_t)per_kind[k], "joined: %s counted %zu, want %d",
                  mask_kind_name((enum mask_kind)k), counts[k], per_kind[k]);
        total += counts[k];
    }
    CHECK(total == (size_t)positives);
    /* The loop above cut data into pieces: read the file again for the raw values. */
    free(data);
    data = NULL;
    rc = fs_read_file(path, 1 << 20, &data, &len, &e);
    CHECK(rc == 0);
    for (char *p = data; rc == 0 && p != NULL && *p != '\0';) {
        char *nl = strchr(p, '\n');
        if (nl != NULL)
            *nl = '\0';
        char *tab = strchr(p, '\t');
        if (p[0] != '#' && tab != NULL && strncmp(p, "none\t", 5) != 0) {
            char *raw = strrchr(p, '\t') + 1;
            CHECK_MSG(strstr(out, raw) == NULL, "joined: \"%s\" survives", raw);
        }
        p = nl != NULL ? nl + 1 : NULL;
    }
    free(out);
    free(all);
    free(data);
}

/* ------------------------------------------------------------------------------------------
 * Tokens, normalization, counts
 * ---------------------------------------------------------------------------------------- */

static void test_kind_names(void)
{
    CHECK(strcmp(mask_kind_name(MASK_EMAIL), "EMAIL") == 0);
    CHECK(strcmp(mask_kind_name(MASK_PHONE), "PHONE") == 0);
    CHECK(strcmp(mask_kind_name(MASK_CARD), "CARD") == 0);
    CHECK(strcmp(mask_kind_name(MASK_IBAN), "IBAN") == 0);
    CHECK(strcmp(mask_kind_name(MASK_IPV4), "IPV4") == 0);
    CHECK(strcmp(mask_kind_name(MASK_IPV6), "IPV6") == 0);
    CHECK(strcmp(mask_kind_name(MASK_SSN), "SSN") == 0);
    CHECK(strcmp(mask_kind_name(MASK_KINDS), "UNKNOWN") == 0);
    int outside = -1;
    CHECK(strcmp(mask_kind_name((enum mask_kind)outside), "UNKNOWN") == 0);
}

/* The whole of text masks to exactly the HMAC token of (kind, norm). */
static void check_token(const char *text, const char *kind, const char *norm)
{
    char want[64];
    expected_token(key_a, kind, norm, want, sizeof want);
    char *out = mask_s(text, NULL);
    CHECK_MSG(strcmp(out, want) == 0, "\"%s\" -> \"%s\", want %s (%s:%s)", text, out, want, kind,
              norm);
    free(out);
}

static void test_tokens_are_hmac(void)
{
    check_token("John.Doe@Example.COM", "EMAIL", "john.doe@example.com");
    check_token("john.doe@example.com", "EMAIL", "john.doe@example.com");
    check_token("(415) 555-0123", "PHONE", "+14155550123");
    check_token("415.555.0123", "PHONE", "+14155550123");
    check_token("1-415-555-0123", "PHONE", "+14155550123");
    check_token("+1 415 555 0123", "PHONE", "+14155550123");
    check_token("+14155550123", "PHONE", "+14155550123");
    check_token("+44 (0)20 7946 0958", "PHONE", "+442079460958");
    check_token("+44 20 7946 0958", "PHONE", "+442079460958");
    check_token("+49-30-1234567", "PHONE", "+49301234567");
    check_token("4111 1111 1111 1111", "CARD", "4111111111111111");
    check_token("4111-1111-1111-1111", "CARD", "4111111111111111");
    check_token("4111111111111111", "CARD", "4111111111111111");
    check_token("3782 822463 10005", "CARD", "378282246310005");
    check_token("GB82 WEST 1234 5698 7654 32", "IBAN", "GB82WEST12345698765432");
    check_token("gb82west12345698765432", "IBAN", "GB82WEST12345698765432");
    check_token("10.0.0.1", "IPV4", "10.0.0.1");
    check_token("010.000.000.001", "IPV4", "10.0.0.1");
    check_token("2001:DB8:0:0:0:0:0:1", "IPV6", "2001:db8::1");
    check_token("2001:db8::1", "IPV6", "2001:db8::1");
    check_token("2001:0db8:0000:0000:0001:0000:0000:0001", "IPV6", "2001:db8::1:0:0:1");
    check_token("2001:db8:0:1:1:1:1:1", "IPV6", "2001:db8:0:1:1:1:1:1");
    check_token("::1", "IPV6", "::1");
    check_token("fe80::", "IPV6", "fe80::");
    check_token("::ffff:10.0.0.1", "IPV6", "::ffff:a00:1");
    check_token("123-45-6789", "SSN", "123456789");
}

static void test_same_value_same_token(void)
{
    char *a = mask_s("user bob@example.com logged in", NULL);
    char *b = mask_s("mail from BOB@EXAMPLE.COM bounced", NULL);
    const char *ta = strchr(a, '<'), *tb = strchr(b, '<');
    CHECK(ta != NULL && tb != NULL);
    if (ta != NULL && tb != NULL)
        CHECK(strncmp(ta, tb, 16) == 0);
    free(a);
    free(b);

    char *c = mask_s("bob@example.com alice@example.com", NULL);
    CHECK(strncmp(c, c + 17, 16) != 0); /* different values, different tokens */
    free(c);
}

static void test_keys_differ(void)
{
    const char *text = "card 4111 1111 1111 1111 ip 10.0.0.1";
    char *a = mask_text(key_a, text, strlen(text), NULL);
    char *b = mask_text(key_b, text, strlen(text), NULL);
    CHECK(a != NULL && b != NULL);
    if (a != NULL && b != NULL) {
        CHECK(strlen(a) == strlen(b));
        CHECK(strcmp(a, b) != 0);
        CHECK(strncmp(a, "card <CARD:", 11) == 0 && strncmp(b, "card <CARD:", 11) == 0);
        CHECK(strncmp(a + 11, b + 11, 8) != 0);
    }
    free(a);
    free(b);
}

static void test_counts_and_adjacent(void)
{
    size_t counts[MASK_KINDS];
    const char *text = "a@b.com,10.0.0.1;415-555-0123 4111111111111111|123-45-6789 "
                       "DE89370400440532013000|::1 c@d.org c@d.org 10.0.0.1-10.0.0.5";
    char *out = mask_s(text, counts);
    CHECK(counts[MASK_EMAIL] == 3);
    CHECK(counts[MASK_IPV4] == 3);
    CHECK(counts[MASK_PHONE] == 1);
    CHECK(counts[MASK_CARD] == 1);
    CHECK(counts[MASK_SSN] == 1);
    CHECK(counts[MASK_IBAN] == 1);
    CHECK(counts[MASK_IPV6] == 1);
    /* Nothing but tokens and the separators remain. */
    size_t k = 0, tokens = 0;
    while (out[k] != '\0') {
        if (out[k] == '<') {
            size_t tl = 0;
            for (int kind = 0; kind < MASK_KINDS && tl == 0; kind++)
                tl = token_len_at(out + k, mask_kind_name((enum mask_kind)kind));
            CHECK_MSG(tl != 0, "garbled at %zu in %s", k, out);
            if (tl == 0)
                break;
            k += tl;
            tokens++;
        } else {
            CHECK_MSG(strchr(",;| /-", out[k]) != NULL, "'%c' left at %zu in %s", out[k], k, out);
            k++;
        }
    }
    CHECK(tokens == 11);
    /* Equal values, equal tokens: the two c@d.org and the two 10.0.0.1. */
    char *first = strstr(out, "<EMAIL:"), *third = first;
    for (int n = 0; n < 2 && third != NULL; n++)
        third = strstr(third + 1, "<EMAIL:");
    CHECK(third != NULL && third[16] == ' ' && strncmp(third - 17, third, 16) == 0);
    free(out);

    /* counts is left alone when given NULL, zeroed when nothing is found. */
    for (int kind = 0; kind < MASK_KINDS; kind++)
        counts[kind] = 99;
    out = mask_s("nothing here", counts);
    for (int kind = 0; kind < MASK_KINDS; kind++)
        CHECK(counts[kind] == 0);
    free(out);
}

static void test_overlaps(void)
{
    /* An email whose local part looks like a phone number, card or IP is one EMAIL. */
    const char *cases[] = {"415-555-0123@example.com", "4111111111111111@example.com",
                           "10.0.0.1@example.com", "GB82WEST12345698765432@example.com"};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        size_t counts[MASK_KINDS];
        char *out = mask_s(cases[k], counts);
        CHECK_MSG(counts[MASK_EMAIL] == 1 && token_len_at(out, "EMAIL") == strlen(out), "%s -> %s",
                  cases[k], out);
        free(out);
    }
    /* A value right after another is found even where the first took its left boundary. */
    const struct {
        const char *text;
        enum mask_kind a, b;
    } pairs[] = {
        {"+44 20 7946 0958.ann@example.com", MASK_PHONE, MASK_EMAIL},
        {"10.0.0.1-415-555-0123", MASK_IPV4, MASK_PHONE},
        {"10.0.0.1-10.0.0.5", MASK_IPV4, MASK_IPV4},
        {"bob@example.com,+1 415 555 0123", MASK_EMAIL, MASK_PHONE},
        {"fe80::1;10.0.0.1", MASK_IPV6, MASK_IPV4},
    };
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++) {
        size_t counts[MASK_KINDS];
        char *o = mask_s(pairs[k].text, counts);
        size_t ta = token_len_at(o, mask_kind_name(pairs[k].a)), tb = 0;
        if (ta != 0)
            tb = token_len_at(o + ta + 1, mask_kind_name(pairs[k].b));
        CHECK_MSG(ta != 0 && tb != 0 && strlen(o) == ta + 1 + tb, "%s -> %s", pairs[k].text, o);
        free(o);
    }

    /* Greedy groups stop where the layout or checksum does. */
    char *out = mask_s("4111 1111 1111 1111 2024", NULL);
    CHECK_MSG(token_len_at(out, "CARD") == 15 && strcmp(out + 15, " 2024") == 0, "%s", out);
    free(out);
    out = mask_s("+44 20 7946 0958, ext 12", NULL);
    CHECK_MSG(token_len_at(out, "PHONE") == 16 && strcmp(out + 16, ", ext 12") == 0, "%s", out);
    free(out);
}

/* ------------------------------------------------------------------------------------------
 * Bytes: NUL, invalid UTF-8, empty input
 * ---------------------------------------------------------------------------------------- */

static void test_bytes(void)
{
    static const char in[] = "\xff\xfe\0x@y.com\0\xc3(\x80 \xed\xa0\x80 10.0.0.1\0";
    size_t len = sizeof in - 1, out_len = 0, counts[MASK_KINDS];
    char *out = mask_text_len(key_a, in, len, counts, &out_len);
    CHECK(out != NULL);
    if (out == NULL)
        return;
    CHECK(counts[MASK_EMAIL] == 1 && counts[MASK_IPV4] == 1);
    /* Bytes before, between and after the values are unchanged. */
    CHECK(out_len == len - 7 - 8 + 16 + 15);
    CHECK(memcmp(out, "\xff\xfe\0", 3) == 0);
    CHECK(token_len_at(out + 3, "EMAIL") == 16);
    CHECK(memcmp(out + 19, "\0\xc3(\x80 \xed\xa0\x80 ", 9) == 0);
    CHECK(token_len_at(out + 28, "IPV4") == 15);
    CHECK(out[43] == '\0' && out[44] == '\0');
    free(out);

    /* Without PII the bytes come back as they were, whatever they are. */
    char raw[256];
    for (int k = 0; k < 256; k++)
        raw[k] = (char)k;
    out = mask_text_len(key_a, raw, sizeof raw, NULL, &out_len);
    CHECK(out != NULL && out_len == sizeof raw && memcmp(out, raw, sizeof raw) == 0);
    free(out);

    out = mask_text_len(key_a, NULL, 0, counts, &out_len);
    CHECK(out != NULL && out_len == 0 && out[0] == '\0');
    free(out);
    CHECK(!mask_contains_pii(NULL, 0));
    /* A value cut by len is not a value, and nothing past len is read. */
    CHECK(!mask_contains_pii("10.0.0.1", 6));
    CHECK(mask_contains_pii("10.0.0.1", 8));
    CHECK(!mask_contains_pii("123-45-67899", 10));
}

/* ------------------------------------------------------------------------------------------
 * Properties on random mixtures of values, near-values and separators
 * ---------------------------------------------------------------------------------------- */

struct part {
    const char *text;
    int kind; /* enum mask_kind, or -1 for text that stays */
};

/*
 * Values and look-alikes joined by separators in random order: every value is masked (its raw
 * text is gone and counted under its kind), every look-alike stays, and masking the output
 * again changes nothing.
 */
static void test_separated_mixtures(void)
{
    static const struct part parts[] = {
        {"john.doe@example.com", MASK_EMAIL},
        {"a@b.co", MASK_EMAIL},
        {"415-555-0123", MASK_PHONE},
        {"(212) 555-0147", MASK_PHONE},
        {"+44 20 7946 0958", MASK_PHONE},
        {"+1 617 555 0199", MASK_PHONE},
        {"4111 1111 1111 1111", MASK_CARD},
        {"5555555555554444", MASK_CARD},
        {"378282246310005", MASK_CARD},
        {"GB82 WEST 1234 5698 7654 32", MASK_IBAN},
        {"DE89370400440532013000", MASK_IBAN},
        {"10.0.0.1", MASK_IPV4},
        {"192.168.1.254", MASK_IPV4},
        {"2001:db8::1", MASK_IPV6},
        {"::1", MASK_IPV6},
        {"fe80::1ff:fe23:4567:890a", MASK_IPV6},
        {"::ffff:10.0.0.2", MASK_IPV6},
        {"123-45-6789", MASK_SSN},
        {"2024-03-15", -1},
        {"12:30:45", -1},
        {"v1.2.3", -1},
        {"$1,299.99", -1},
        {"order", -1},
        {"12345678901234", -1},
        {"1.2.3.4.5", -1},
        {"x", -1},
        {"@", -1},
        {"-", -1},
        {"4111 1111 1111 1112", -1},
        {"std::map", -1},
    };
    static const char *const seps[] = {" ", ", ", "; ", " | ", "\n", "\t", " (", ") ", " <", "> "};
    size_t n_parts = sizeof parts / sizeof parts[0], n_seps = sizeof seps / sizeof seps[0];
    int rounds = test_quick() ? 1000 : 10000, bad = 0;

    for (int r = 0; r < rounds && bad < 10; r++) {
        char text[1024];
        size_t len = 0, want[MASK_KINDS] = {0}, pieces = 1 + rng_next() % 10;
        const struct part *used[10];
        for (size_t k = 0; k < pieces; k++) {
            const struct part *p = &parts[rng_next() % n_parts];
            const char *sep = k == 0 ? "" : seps[rng_next() % n_seps];
            len += (size_t)snprintf(text + len, sizeof text - len, "%s%s", sep, p->text);
            used[k] = p;
            if (p->kind >= 0)
                want[p->kind]++;
        }
        size_t counts[MASK_KINDS], out_len = 0;
        char *out = mask_text_len(key_a, text, len, counts, &out_len);
        CHECK(out != NULL);
        if (out == NULL)
            return;
        bool ok = memcmp(counts, want, sizeof want) == 0 && !mask_contains_pii(out, out_len);
        for (size_t k = 0; k < pieces; k++)
            ok = ok && (used[k]->kind < 0 ? strstr(out, used[k]->text) != NULL
                                          : strstr(out, used[k]->text) == NULL);
        char *again = mask_text_len(key_a, out, out_len, NULL, NULL);
        ok = ok && again != NULL && strcmp(again, out) == 0;
        if (!ok) {
            bad++;
            CHECK_MSG(ok, "\"%s\" -> \"%s\"", text, out);
        }
        free(again);
        free(out);
    }
    CHECK(bad == 0);
}

/*
 * Values, fragments and separators glued together at random: whatever is found,
 * mask_contains_pii agrees with mask_text and every value counted is one well-formed token.
 * (Idempotence is not asked here: text glued to a value can become maskable once that value
 * is a token, e.g. "0958::ffff:" before an address glued to a word.)
 */
static void test_glued_mixtures(void)
{
    static const char *const parts[] = {"john.doe@example.com",
                                        "a@b.co",
                                        "415-555-0123",
                                        "(415) 555-0123",
                                        "+44 20 7946 0958",
                                        "+1 415 555 0123",
                                        "4111 1111 1111 1111",
                                        "4111111111111111",
                                        "378282246310005",
                                        "GB82 WEST 1234 5698 7654 32",
                                        "DE89370400440532013000",
                                        "10.0.0.1",
                                        "192.168.1.254",
                                        "2001:db8::1",
                                        "::1",
                                        "fe80::1ff:fe23:4567:890a",
                                        "::ffff:10.0.0.1",
                                        "123-45-6789",
                                        "2024-03-15",
                                        "12:30:45",
                                        "v1.2.3",
                                        "$1,299.99",
                                        "order",
                                        "12345678901234",
                                        "1.2.3.4.5",
                                        "x",
                                        "7",
                                        "42",
                                        ".",
                                        "-",
                                        ":",
                                        "::",
                                        "@",
                                        "+",
                                        "(",
                                        ")",
                                        " ",
                                        " ",
                                        ",",
                                        "/",
                                        "_",
                                        "\xff",
                                        "a",
                                        "Z",
                                        "0",
                                        "1",
                                        "415",
                                        "555",
                                        "4111",
                                        "GB82",
                                        "10.0",
                                        "db8",
                                        "<",
                                        ">"};
    size_t n_parts = sizeof parts / sizeof parts[0];
    int rounds = test_quick() ? 2000 : 20000, bad = 0;

    for (int r = 0; r < rounds && bad < 10; r++) {
        char text[512];
        size_t len = 0, pieces = 1 + rng_next() % 8;
        for (size_t k = 0; k < pieces; k++) {
            const char *p = parts[rng_next() % n_parts];
            size_t pl = strlen(p);
            memcpy(text + len, p, pl);
            len += pl;
        }
        size_t counts[MASK_KINDS], out_len = 0, total = 0, tokens = 0;
        char *out = mask_text_len(key_a, text, len, counts, &out_len);
        CHECK(out != NULL);
        if (out == NULL)
            return;
        for (int k = 0; k < MASK_KINDS; k++)
            total += counts[k];
        bool ok = mask_contains_pii(text, len) == (total > 0);
        /* Every value became one well-formed token (the parts hold no token of their own). */
        for (size_t o = 0; o < out_len; o++)
            for (int k = 0; k < MASK_KINDS && out[o] == '<'; k++)
                tokens += token_len_at(out + o, mask_kind_name((enum mask_kind)k)) != 0;
        ok = ok && tokens == total;
        if (!ok) {
            bad++;
            CHECK_MSG(ok, "\"%.*s\" -> \"%s\"", (int)len, text, out);
        }
        free(out);
    }
    CHECK(bad == 0);
}

/* ------------------------------------------------------------------------------------------
 * Hostile and large inputs
 * ---------------------------------------------------------------------------------------- */

/* Masks buf and returns seconds taken; checks the output is well formed in size. */
static double time_mask(const char *what, const char *buf, size_t len, size_t *n_values)
{
    size_t counts[MASK_KINDS], out_len = 0, total = 0;
    double t0 = now_s();
    char *out = mask_text_len(key_a, buf, len, counts, &out_len);
    double dt = now_s() - t0;
    CHECK_MSG(out != NULL, "%s: NULL", what);
    for (int k = 0; k < MASK_KINDS; k++)
        total += counts[k];
    /* Each value of >= 3 bytes became a token of <= 16 bytes. */
    CHECK_MSG(out_len <= len + 13 * total, "%s: %zu bytes out of %zu", what, out_len, len);
    CHECK_MSG(dt < 20.0, "%s: %.1f s", what, dt); /* a quadratic scan takes far longer */
    fprintf(stderr, "  %-28s %6.1f MB in %.3f s (%.0f MB/s), %zu values\n", what, (double)len / 1e6,
            dt, (double)len / 1e6 / dt, total);
    if (n_values != NULL)
        *n_values = total;
    free(out);
    return dt;
}

static void fill_repeat(char *buf, size_t len, const char *unit)
{
    size_t ul = strlen(unit);
    for (size_t k = 0; k < len; k++)
        buf[k] = unit[k % ul];
}

static void test_hostile(void)
{
    size_t mb = test_quick() ? 1 : 4, len = mb << 20;
    char *buf = xmalloc(len);

    for (size_t k = 0; k < len; k++)
        buf[k] = (char)(rng_next() >> 56);
    time_mask("random bytes", buf, len, NULL);

    static const char soup[] = "0123456789..::--++ ()@/abcdefABCDEF,";
    for (size_t k = 0; k < len; k++)
        buf[k] = soup[rng_next() % (sizeof soup - 1)];
    time_mask("digit soup", buf, len, NULL);

    static const char dense[] = "0123456789.:- ";
    for (size_t k = 0; k < len; k++)
        buf[k] = dense[rng_next() % (sizeof dense - 1)];
    time_mask("dense digit soup", buf, len, NULL);

    /* Runs that make a scanner without bounds or start rules go quadratic. */
    static const char *const units[] = {
        "a",    "a.",      "1.",   "1:",    "1-",    "4111 ", "1 ",
        "a@",   "@a.",     "+1 ",  "::",    "ab12 ", "(",     "1.1.1.1 ",
        "::1 ", "x@y.zz ", "+4 4", "1111:", "GB82 ", "a-b.",  "4111-1111-"};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        char what[64];
        fill_repeat(buf, len, units[u]);
        snprintf(what, sizeof what, "run of \"%s\"", units[u]);
        time_mask(what, buf, len, NULL);
    }
    /* One long local part, then '@'. */
    memset(buf, 'a', len);
    memcpy(buf + len - 12, "@example.com", 12);
    time_mask("long local part", buf, len, NULL);
    free(buf);
}

/*
 * Log-like text: ten line shapes, five of them with one value; the values vary (random user
 * names, addresses, phone numbers) so few tokens repeat. Prints the throughput.
 */
static void test_throughput(void)
{
    size_t len = (test_quick() ? 1u : 10u) * 1000 * 1000, used = 0, n = 0, values = 0;
    char *buf = xmalloc(len + 256);
    while (used < len) {
        unsigned r = (unsigned)rng_next();
        char *p = buf + used;
        size_t cap = len + 256 - used;
        int w = 0;
        switch (n++ % 10) {
            case 0:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:%02u.123Z INFO  request id=%08x model=iris "
                             "v=1.2.3 took %u.%u ms\n",
                             r % 60, r, r % 50, r % 10);
                break;
            case 1:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:30.456Z WARN  upload by user%u.name@example.com "
                             "rejected: size %u\n",
                             r % 100000, r % 9999999);
                break;
            case 2:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:31.001Z INFO  job 20240315-%04u epoch %u/100 "
                             "loss 0.%04u acc 98.7%%\n",
                             r % 10000, r % 100, r % 10000);
                break;
            case 3:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:31.200Z ERROR client 10.%u.%u.%u:51234 sent "
                             "malformed JSON at 1:17\n",
                             r & 255, (r >> 8) & 255, (r >> 16) & 255);
                break;
            case 4:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:31.300Z INFO  order 1%013u total $%u,%03u.99 "
                             "paid\n",
                             r, r % 10, r % 1000);
                break;
            case 5:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:32.000Z WARN  training text contained "
                             "4111 1111 1111 1111, masked\n");
                break;
            case 6:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:32.100Z INFO  peer 2001:db8::%x connected "
                             "via proxy\n",
                             r & 0xffff);
                break;
            case 7:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:33.100Z INFO  callback +44 20 7946 %04u "
                             "scheduled at 14:30\n",
                             r % 10000);
                break;
            case 8:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:34.100Z INFO  the quick brown fox jumps over "
                             "the lazy dog %u times\n",
                             r % 100);
                break;
            default:
                w = snprintf(p, cap,
                             "2024-03-15T10:20:35.100Z DEBUG cache hit ratio 0.%02u for key "
                             "model:iris:v3\n",
                             r % 100);
                break;
        }
        used += (size_t)w;
    }
    len = used;
    time_mask("log-like text", buf, len, &values);
    CHECK_MSG(values == n / 2 || values == n / 2 + 1, "%zu values in %zu lines", values, n);
    free(buf);
}

int main(void)
{
    RUN(test_kind_names);
    RUN(test_tokens_are_hmac);
    RUN(test_same_value_same_token);
    RUN(test_keys_differ);
    RUN(test_counts_and_adjacent);
    RUN(test_overlaps);
    RUN(test_bytes);
    RUN(test_corpus);
    RUN(test_separated_mixtures);
    RUN(test_glued_mixtures);
    RUN(test_hostile);
    RUN(test_throughput);
    return test_finish();
}
