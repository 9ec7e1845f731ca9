/*
 * auth/hmac.c - HMAC-SHA256 from two precomputed SHA-256 states (see hmac.h).
 *
 *   HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)), K' = K zero-padded to 64 bytes.
 */
#include "hmac.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define SHA256_BLOCK 64

struct hmac_key {
    EVP_MD *md;
    EVP_MD_CTX *inner; /* SHA-256 after absorbing K' ^ ipad */
    EVP_MD_CTX *outer; /* SHA-256 after absorbing K' ^ opad */
};

/* ctx = SHA-256 state after hashing K' ^ fill (64 bytes). */
static bool absorb_pad(EVP_MD_CTX *ctx, const EVP_MD *md, const uint8_t *key, size_t len,
                       uint8_t fill)
{
    uint8_t pad[SHA256_BLOCK];
    memset(pad, fill, sizeof pad);
    for (size_t i = 0; i < len; i++)
        pad[i] ^= key[i];
    bool ok = EVP_DigestInit_ex(ctx, md, NULL) == 1 && EVP_DigestUpdate(ctx, pad, sizeof pad) == 1;
    OPENSSL_cleanse(pad, sizeof pad);
    return ok;
}

struct hmac_key *hmac_key_new(const uint8_t *key, size_t len)
{
    if (len > HMAC_KEY_MAX || (key == NULL && len > 0))
        return NULL;
    struct hmac_key *k = calloc(1, sizeof *k);
    if (k == NULL)
        return NULL;
    k->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    k->inner = EVP_MD_CTX_new();
    k->outer = EVP_MD_CTX_new();
    if (k->md == NULL || k->inner == NULL || k->outer == NULL ||
        !absorb_pad(k->inner, k->md, key, len, 0x36) ||
        !absorb_pad(k->outer, k->md, key, len, 0x5c)) {
        hmac_key_free(k);
        return NULL;
    }
    return k;
}

void hmac_key_free(struct hmac_key *k)
{
    if (k == NULL)
        return;
    EVP_MD_CTX_free(k->inner); /* frees (and cleanses) the hash state */
    EVP_MD_CTX_free(k->outer);
    EVP_MD_free(k->md);
    free(k);
}

bool hmac_begin(const struct hmac_key *k, EVP_MD_CTX *work)
{
    return EVP_MD_CTX_copy_ex(work, k->inner) == 1;
}

bool hmac_end(const struct hmac_key *k, EVP_MD_CTX *work, uint8_t out[HMAC_SHA256_BYTES])
{
    uint8_t ih[HMAC_SHA256_BYTES];
    unsigned n = 0, m = 0;
    bool ok = EVP_DigestFinal_ex(work, ih, &n) == 1 && n == HMAC_SHA256_BYTES &&
              EVP_MD_CTX_copy_ex(work, k->outer) == 1 && EVP_DigestUpdate(work, ih, n) == 1 &&
              EVP_DigestFinal_ex(work, out, &m) == 1 && m == HMAC_SHA256_BYTES;
    OPENSSL_cleanse(ih, sizeof ih);
    if (!ok)
        memset(out, 0, HMAC_SHA256_BYTES);
    return ok;
}

bool hmac_sha256(const struct hmac_key *k, const void *a, size_t alen, const void *b, size_t blen,
                 uint8_t out[HMAC_SHA256_BYTES])
{
    EVP_MD_CTX *work = EVP_MD_CTX_new();
    bool ok = work != NULL && hmac_begin(k, work) && EVP_DigestUpdate(work, a, alen) == 1 &&
              (blen == 0 || EVP_DigestUpdate(work, b, blen) == 1) && hmac_end(k, work, out);
    EVP_MD_CTX_free(work);
    if (!ok)
        memset(out, 0, HMAC_SHA256_BYTES);
    return ok;
}
