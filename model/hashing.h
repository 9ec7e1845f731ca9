/*
 * model/hashing.h - the hashing text featurizer's tokenizer and n-gram buckets (DESIGN §4).
 * Internal to model/: the featurizer (model_hash_text, model_featurize_text) and the text
 * explanations (model_attribute_text) share these so that they can never disagree on what a
 * token or a bucket is. Tests may include it.
 *
 * The rules, once:
 *   - A token is a maximal run of "word bytes": ASCII letters, ASCII digits, and every byte
 *     >= 0x80 (so a UTF-8 word stays whole; invalid UTF-8 is kept byte for byte). Every other
 *     byte (space, punctuation, '_', control bytes, NUL) separates tokens.
 *   - Tokens are lowercased for hashing by mapping A-Z to a-z only; other bytes are unchanged.
 *   - The n-gram of n consecutive tokens is their lowercased bytes joined by one space byte;
 *     its bucket is model_fnv1a32(n-gram bytes) % dims.
 *
 * Every function here takes `text` as len bytes that may contain NUL bytes and need not be
 * NUL-terminated; text is only read, never retained, and may be NULL when len is 0. Nothing
 * here allocates. All functions are pure and thread-safe.
 */
#ifndef INFERA_MODEL_HASHING_H
#define INFERA_MODEL_HASHING_H

#include <stddef.h>
#include <stdint.h>

/* The largest n-gram order the featurizer supports (model.json "ngrams" is 1..3). */
#define HASH_MAX_NGRAMS 3

/* One token: the bytes text[start .. start+len-1], len >= 1, as they appear in the text
 * (not lowercased). */
struct hash_token {
    size_t start, len;
};

/*
 * Splits text (len bytes) into tokens, in order. Writes the first min(count, cap) tokens to
 * toks (caller-owned; may be NULL when cap is 0) and returns count, the total number of
 * tokens in the text, whatever cap is. So `hash_tokenize(t, n, NULL, 0)` counts, and a second
 * call with cap equal to that count fills the array.
 */
size_t hash_tokenize(const char *text, size_t len, struct hash_token *toks, size_t cap);

/*
 * Returns the bucket (0 .. dims-1) of the n-gram made of toks[first .. first+n-1]: their
 * bytes in text, lowercased and joined by single spaces, hashed with FNV-1a-32, modulo dims.
 * toks must come from hash_tokenize() on the same text, and first+n must not exceed the
 * number of tokens stored there. n is normally 1..HASH_MAX_NGRAMS (any n >= 1 works; n == 0
 * gives the bucket of the empty string). Returns 0 if dims is 0.
 */
uint32_t hash_ngram_bucket(const char *text, const struct hash_token *toks, size_t first, size_t n,
                           uint32_t dims);

#endif /* INFERA_MODEL_HASHING_H */
