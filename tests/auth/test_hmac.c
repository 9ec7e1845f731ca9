/*
 * tests/auth/test_hmac.c - the precomputed HMAC-SHA256 (auth/hmac.h) equals RFC 4231's test
 * vectors and OpenSSL's one-shot HMAC() for every key length up to a block and messages
 * across block boundaries, in one piece, split in two and streamed; keys longer than a block
 * are refused; many threads may share one key.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/hmac.h>

#include "auth/hmac.h"
#include "tests/test.h"

static void hex_decode(const char *hex, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        sscanf(hex + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
}

/* RFC 4231 test cases 1, 2 and 4 (keys within one block; case 3 is 0xdd bytes). */
static void test_rfc4231(void)
{
    static const struct {
        const char *key_hex, *msg, *mac_hex;
        size_t msg_len;
    } cases[] = {
        {"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "Hi There",
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7", 8},
        {"4a656665", "what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843", 28},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        uint8_t key[64], want[32], got[32];
        size_t kl = strlen(cases[c].key_hex) / 2;
        hex_decode(cases[c].key_hex, key, kl);
        hex_decode(cases[c].mac_hex, want, 32);
        struct hmac_key *k = hmac_key_new(key, kl);
        CHECK(k != NULL);
        CHECK(hmac_sha256(k, cases[c].msg, cases[c].msg_len, NULL, 0, got));
        CHECK_MSG(memcmp(got, want, 32) == 0, "RFC 4231 case %zu", c);
        hmac_key_free(k);
    }
    /* Case 3: key 20 x 0xaa, data 50 x 0xdd. */
    uint8_t key[20], msg[50], want[32], got[32];
    memset(key, 0xaa, sizeof key);
    memset(msg, 0xdd, sizeof msg);
    hex_decode("773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe", want, 32);
    struct hmac_key *k = hmac_key_new(key, sizeof key);
    CHECK(hmac_sha256(k, msg, 20, msg + 20, 30, got)); /* split input */
    CHECK(memcmp(got, want, 32) == 0);
    hmac_key_free(k);
}

/* Against HMAC(): key lengths 0..64, message lengths around the 64-byte blocks. */
static void test_against_openssl(void)
{
    uint8_t key[HMAC_KEY_MAX], msg[300];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof msg; i++) {
        x = x * 1103515245u + 12345u;
        msg[i] = (uint8_t)(x >> 16);
    }
    static const size_t lens[] = {0, 1, 31, 55, 56, 63, 64, 65, 119, 120, 128, 200, 300};
    size_t mismatches = 0;
    EVP_MD_CTX *work = EVP_MD_CTX_new();
    for (size_t kl = 0; kl <= HMAC_KEY_MAX; kl++) {
        for (size_t i = 0; i < kl; i++)
            key[i] = (uint8_t)(msg[i] ^ kl);
        struct hmac_key *k = hmac_key_new(key, kl);
        CHECK(k != NULL);
        for (size_t li = 0; k != NULL && li < sizeof lens / sizeof lens[0]; li++) {
            size_t ml = lens[li];
            uint8_t want[32], one[32], two[32], streamed[32];
            unsigned n = 0;
            HMAC(EVP_sha256(), key, (int)kl, msg, ml, want, &n);
            bool ok = hmac_sha256(k, msg, ml, NULL, 0, one) &&
                      hmac_sha256(k, msg, ml / 3, msg + ml / 3, ml - ml / 3, two) &&
                      hmac_begin(k, work);
            for (size_t j = 0; ok && j < ml; j += 7)
                ok = EVP_DigestUpdate(work, msg + j, ml - j < 7 ? ml - j : 7) == 1;
            ok = ok && hmac_end(k, work, streamed);
            if (!ok || memcmp(one, want, 32) != 0 || memcmp(two, want, 32) != 0 ||
                memcmp(streamed, want, 32) != 0) {
                mismatches++;
                fprintf(stderr, "key %zu bytes, message %zu bytes: differs from HMAC()\n", kl, ml);
            }
        }
        hmac_key_free(k);
    }
    EVP_MD_CTX_free(work);
    CHECK(mismatches == 0);
    CHECK(hmac_key_new(key, HMAC_KEY_MAX + 1) == NULL); /* longer keys would need hashing */
    hmac_key_free(NULL);
}

/* Eight threads MAC with one shared key at once and all agree with the single-thread result. */
struct worker {
    const struct hmac_key *k;
    uint8_t want[32];
    int bad;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int i = 0; i < 2000; i++) {
        uint8_t got[32];
        if (!hmac_sha256(w->k, "ifr_abcdefgh_", 13, "secret", 6, got) ||
            memcmp(got, w->want, 32) != 0)
            w->bad++;
    }
    return NULL;
}

static void test_threads(void)
{
    uint8_t key[32];
    memset(key, 7, sizeof key);
    struct hmac_key *k = hmac_key_new(key, sizeof key);
    struct worker w[8];
    pthread_t t[8];
    unsigned n = 0;
    uint8_t want[32];
    HMAC(EVP_sha256(), key, (int)sizeof key, (const uint8_t *)"ifr_abcdefgh_secret", 19, want, &n);
    for (int i = 0; i < 8; i++) {
        w[i] = (struct worker){.k = k, .bad = 0};
        memcpy(w[i].want, want, 32);
        CHECK(pthread_create(&t[i], NULL, worker_main, &w[i]) == 0);
    }
    int bad = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(t[i], NULL);
        bad += w[i].bad;
    }
    CHECK(bad == 0);
    hmac_key_free(k);
}

int main(void)
{
    RUN(test_rfc4231);
    RUN(test_against_openssl);
    RUN(test_threads);
    return test_finish();
}
