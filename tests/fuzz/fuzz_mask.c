/*
 * tests/fuzz/fuzz_mask.c - the PII masker (mask_text_len, mask_contains_pii).
 *
 * Input: any bytes, the text to mask.
 *
 * Properties (auth/mask.h):
 *   - the output is NUL-terminated at out_len;
 *   - mask_contains_pii(text) is true exactly when mask_text masked at least one value;
 *   - nothing masked: the output is the input byte for byte;
 *   - something masked: the output holds at least one well-formed token "<KIND:xxxxxxxx>"
 *     per masked value;
 *   - mask_text() (no length out) returns the same bytes (the result is deterministic).
 */
#include "auth/mask.h"
#include "tests/fuzz/fuzz.h"

static const uint8_t KEY[MASK_KEY_BYTES] = "fuzz-mask-key-0123456789abcdefgh";

/* Counts the well-formed tokens "<KIND:8 lowercase hex>" in s[0..len). */
static size_t count_tokens(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '<')
            continue;
        for (int k = 0; k < MASK_KINDS; k++) {
            const char *name = mask_kind_name((enum mask_kind)k);
            size_t nl = strlen(name);
            if (i + 1 + nl + 1 + MASK_TOKEN_HEX + 1 > len || memcmp(s + i + 1, name, nl) != 0 ||
                s[i + 1 + nl] != ':' || s[i + 1 + nl + 1 + MASK_TOKEN_HEX] != '>')
                continue;
            bool hex = true;
            for (size_t h = 0; h < MASK_TOKEN_HEX; h++) {
                char c = s[i + 2 + nl + h];
                hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
            }
            n += hex;
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const char *text = (const char *)data;
    size_t counts[MASK_KINDS];
    size_t out_len = 0;
    char *out = mask_text_len(KEY, text, size, counts, &out_len);
    FUZZ_CHECK(out != NULL, "mask_text_len returned NULL");
    FUZZ_CHECK(out[out_len] == '\0', "output not NUL-terminated at out_len %zu", out_len);
    size_t total = 0;
    for (int k = 0; k < MASK_KINDS; k++)
        total += counts[k];
    bool pii = mask_contains_pii(text, size);
    FUZZ_DEBUG("%zu masked: %.*s", total, (int)(out_len < 300 ? out_len : 300), out);
    FUZZ_CHECK(pii == (total > 0), "mask_contains_pii %d but %zu values masked", pii, total);
    if (total == 0)
        FUZZ_CHECK(out_len == size && memcmp(out, text, size) == 0,
                   "nothing masked but the output differs");
    else
        FUZZ_CHECK(count_tokens(out, out_len) >= total, "%zu values masked, %zu tokens", total,
                   count_tokens(out, out_len));
    char *plain = mask_text(KEY, text, size, NULL);
    FUZZ_CHECK(plain != NULL && memcmp(plain, out, out_len + 1) == 0,
               "mask_text differs from mask_text_len");
    free(plain);
    free(out);
    return 0;
}
