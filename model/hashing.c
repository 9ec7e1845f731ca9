/*
 * model/hashing.c - FNV-1a-32 and the hashing text featurizer (DESIGN §4; rules in hashing.h).
 *
 * The featurizer streams: it keeps the last HASH_MAX_NGRAMS tokens as (start, len) pairs and
 * hashes each n-gram straight from the text, lowercasing and inserting the joining space on
 * the fly (FNV-1a consumes one byte at a time), so it allocates nothing whatever the text.
 */
#include <math.h>
#include <string.h>

#include "model.h"
#include "hashing.h"

#define FNV1A32_OFFSET 2166136261u
#define FNV1A32_PRIME  16777619u

/* ------------------------------------------------------------------------------------------
 * Bytes and tokens
 * ---------------------------------------------------------------------------------------- */

/* Not <ctype.h>: its answers depend on the locale, and bytes >= 0x80 must count as letters. */
static int is_word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

static unsigned char lower_byte(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

static uint32_t fnv1a32_byte(uint32_t h, unsigned char c)
{
    return (h ^ c) * FNV1A32_PRIME;
}

/*
 * Finds the next token at or after *pos. Returns 1 and fills *tok, leaving *pos just past the
 * token, or returns 0 when the text has no more tokens.
 */
static int next_token(const unsigned char *s, size_t len, size_t *pos, struct hash_token *tok)
{
    size_t i = *pos;

    while (i < len && !is_word_byte(s[i]))
        i++;
    if (i == len) {
        *pos = len;
        return 0;
    }
    tok->start = i;
    while (i < len && is_word_byte(s[i]))
        i++;
    tok->len = i - tok->start;
    *pos = i;
    return 1;
}

/* FNV-1a-32 of the lowercased, space-joined n-gram toks[0 .. n-1]. */
static uint32_t ngram_hash(const unsigned char *s, const struct hash_token *toks, size_t n)
{
    uint32_t h = FNV1A32_OFFSET;

    for (size_t k = 0; k < n; k++) {
        if (k > 0)
            h = fnv1a32_byte(h, ' ');
        const unsigned char *p = s + toks[k].start;
        for (size_t j = 0; j < toks[k].len; j++)
            h = fnv1a32_byte(h, lower_byte(p[j]));
    }
    return h;
}

/* ------------------------------------------------------------------------------------------
 * Public functions
 * ---------------------------------------------------------------------------------------- */

uint32_t model_fnv1a32(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint32_t h = FNV1A32_OFFSET;

    for (size_t i = 0; i < len; i++)
        h = fnv1a32_byte(h, p[i]);
    return h;
}

size_t hash_tokenize(const char *text, size_t len, struct hash_token *toks, size_t cap)
{
    const unsigned char *s = (const unsigned char *)text;
    struct hash_token tok;
    size_t pos = 0, count = 0;

    while (next_token(s, len, &pos, &tok)) {
        if (count < cap)
            toks[count] = tok;
        count++;
    }
    return count;
}

uint32_t hash_ngram_bucket(const char *text, const struct hash_token *toks, size_t first, size_t n,
                           uint32_t dims)
{
    if (dims == 0)
        return 0;
    return ngram_hash((const unsigned char *)text, toks + first, n) % dims;
}

/*
 * ngrams outside 1..HASH_MAX_NGRAMS is clamped into it (the config loader rejects such values;
 * a free function for tools should not index out of its window). dims == 0 does nothing.
 *
 * Counts accumulate in out itself: a float holds every integer up to 2^24 exactly, which a
 * bucket only passes for a text of at least ~11 MB (2^24 / 3 two-byte tokens all landing in
 * one bucket); beyond that the count stops growing. Callers serving requests should cap text
 * sizes well below that.
 */
void model_hash_text(const char *text, size_t len, uint32_t dims, int ngrams, float *out)
{
    const unsigned char *s = (const unsigned char *)text;
    struct hash_token window[HASH_MAX_NGRAMS]; /* the last `have` tokens, oldest first */
    size_t have = 0, pos = 0;
    struct hash_token tok;

    if (dims == 0)
        return;
    if (ngrams < 1)
        ngrams = 1;
    if (ngrams > HASH_MAX_NGRAMS)
        ngrams = HASH_MAX_NGRAMS;
    memset(out, 0, (size_t)dims * sizeof(*out));

    while (next_token(s, len, &pos, &tok)) {
        if (have < (size_t)ngrams) {
            window[have++] = tok;
        } else {
            memmove(window, window + 1, (have - 1) * sizeof(window[0]));
            window[have - 1] = tok;
        }
        /* Count each n-gram once, at its last token: those ending with tok. */
        for (size_t n = 1; n <= have; n++)
            out[ngram_hash(s, window + have - n, n) % dims] += 1.0f;
    }

    double sumsq = 0.0;
    for (uint32_t i = 0; i < dims; i++)
        sumsq += (double)out[i] * (double)out[i];
    if (sumsq == 0.0)
        return;
    double norm = sqrt(sumsq);
    for (uint32_t i = 0; i < dims; i++) {
        if (out[i] != 0.0f)
            out[i] = (float)((double)out[i] / norm);
    }
}
