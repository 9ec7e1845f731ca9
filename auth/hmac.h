/*
 * auth/hmac.h - HMAC-SHA256 with the key schedule done once.
 *
 * Why: OpenSSL 3's one-shot HMAC() (EVP_Q_mac) looks the algorithm up by name, builds a MAC
 * context and hashes the key pads on every call: about 7 us per call here, and the name
 * lookup takes a lock shared by every thread. An API key check and every audit line need one
 * HMAC each, under a fixed key. An hmac_key hashes key ^ ipad and key ^ opad once; each MAC then
 * copies those two SHA-256 states and hashes only the message (about 1.3 us).
 *
 * The result is exactly HMAC-SHA256(key, message) (RFC 2104), for keys up to one SHA-256
 * block (64 bytes; every infera key is 32).
 *
 * Thread safety: an hmac_key is immutable after hmac_key_new and may be used by any number of
 * threads at once; each call uses its own work context (hmac_sha256) or the caller's
 * (hmac_begin / hmac_end: one work context per thread).
 */
#ifndef INFERA_AUTH_HMAC_H
#define INFERA_AUTH_HMAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#define HMAC_SHA256_BYTES 32
#define HMAC_KEY_MAX      64 /* one SHA-256 block */

struct hmac_key;

/*
 * A new key schedule for key[0..len), len <= HMAC_KEY_MAX. Returns NULL when len is too large
 * or OpenSSL or an allocation fails. The key bytes are not kept (only the two hashed pads,
 * which are as secret as the key: hmac_key_free wipes them with the contexts).
 */
struct hmac_key *hmac_key_new(const uint8_t *key, size_t len);

/* Frees k (NULL is fine). */
void hmac_key_free(struct hmac_key *k);

/*
 * out = HMAC-SHA256(k, a[0..alen) || b[0..blen)); b may be NULL when blen is 0. Returns false,
 * with out zeroed, when OpenSSL or an allocation fails.
 */
bool hmac_sha256(const struct hmac_key *k, const void *a, size_t alen, const void *b, size_t blen,
                 uint8_t out[HMAC_SHA256_BYTES]);

/*
 * Streaming form on a caller-owned work context (EVP_MD_CTX_new()): hmac_begin, then any
 * number of EVP_DigestUpdate(work, ...), then hmac_end. Both return false if OpenSSL fails
 * (hmac_end then zeroes out).
 */
bool hmac_begin(const struct hmac_key *k, EVP_MD_CTX *work);
bool hmac_end(const struct hmac_key *k, EVP_MD_CTX *work, uint8_t out[HMAC_SHA256_BYTES]);

#endif /* INFERA_AUTH_HMAC_H */
