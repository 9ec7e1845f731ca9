/*
 * tests/fuzz/fuzz_keys.c - the API key file (keystore_open on a keys.json) and what is done
 * with the keys it accepts.
 *
 * Input: the contents of keys.json, written to a private directory on tmpfs (mode 0600).
 *
 * Properties when the store opens:
 *   - keystore_list() and keystore_get() agree, keystore_count() counts the unrevoked keys;
 *   - a well-formed token with a listed id and a wrong secret is AUTH_BAD_SECRET (revoked or
 *     not: "revoked" needs the right secret), and one with an unlisted id AUTH_UNKNOWN;
 *   - the file the store writes back parses again: the first key is revoked (a write of the
 *     whole set, as the server does it), the store is reopened from that file and lists the
 *     same keys with the first one revoked.
 * A failure to open comes with a status (INF_EINVAL, INF_ELIMIT, INF_ENOMEM) and a message.
 */
#include "auth/keys.h"
#include "tests/fuzz/fuzz.h"

static const uint8_t PEPPER[32] = "fuzz-pepper-0123456789abcdefghij";
#define WRONG_SECRET "0000000000000000000000000000000000000000000"

static bool same_info(const struct key_info *a, const struct key_info *b, bool ignore_revoked)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->name, b->name) == 0 && a->scopes == b->scopes &&
           a->limits.rate == b->limits.rate && a->limits.burst == b->limits.burst &&
           a->limits.max_concurrent == b->limits.max_concurrent && a->created_at == b->created_at &&
           (ignore_revoked || (a->revoked == b->revoked && a->revoked_at == b->revoked_at));
}

static void check_verify(struct keystore *ks, const struct key_info *keys, size_t n)
{
    char header[128], id_out[KEY_ID_LEN + 1];
    struct principal p;
    for (size_t i = 0; i < n && i < 4; i++) {
        snprintf(header, sizeof header, "Bearer " KEY_PREFIX "%s_%s", keys[i].id, WRONG_SECRET);
        enum auth_result r = keystore_verify(ks, header, &p, id_out);
        FUZZ_CHECK(r == AUTH_BAD_SECRET, "key %s with a wrong secret: %s", keys[i].id,
                   auth_result_str(r));
        FUZZ_CHECK(strcmp(id_out, keys[i].id) == 0, "claimed id %s", id_out);
    }
    /* An id no listed key has: base62 "zzzzzzz" plus a digit not used by any listed key. */
    char id[KEY_ID_LEN + 1] = "zzzzzzz0";
    for (char c = '0'; c <= '9'; c++) {
        id[KEY_ID_LEN - 1] = c;
        bool taken = false;
        for (size_t i = 0; i < n; i++)
            taken = taken || strcmp(keys[i].id, id) == 0;
        if (!taken)
            break;
    }
    snprintf(header, sizeof header, "Bearer " KEY_PREFIX "%s_%s", id, WRONG_SECRET);
    enum auth_result r = keystore_verify(ks, header, &p, id_out);
    bool listed = false;
    for (size_t i = 0; i < n; i++)
        listed = listed || strcmp(keys[i].id, id) == 0;
    FUZZ_CHECK(listed || r == AUTH_UNKNOWN, "unlisted id %s: %s", id, auth_result_str(r));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_setup_once();
    const char *dir = fuzz_scratch_dir("keys");
    char path[512];
    snprintf(path, sizeof path, "%s/keys.json", dir);
    fuzz_write_file(path, data, size);

    struct err e = {0};
    struct keystore *ks = keystore_open(path, PEPPER, &e);
    FUZZ_DEBUG("%s %s", ks != NULL ? "opened" : "refused", e.msg);
    if (ks == NULL) {
        FUZZ_CHECK(e.status == INF_EINVAL || e.status == INF_ELIMIT || e.status == INF_ENOMEM,
                   "status %d (%s)", e.status, e.msg);
        FUZZ_CHECK(e.msg[0] != '\0', "no message");
        return 0;
    }
    struct key_info *keys = NULL, *again = NULL;
    size_t n = 0, n2 = 0, active = 0;
    FUZZ_CHECK(keystore_list(ks, &keys, &n, &e) == INF_OK, "keystore_list: %s", e.msg);
    for (size_t i = 0; i < n; i++) {
        struct key_info one;
        FUZZ_CHECK(keystore_get(ks, keys[i].id, &one) == INF_OK, "get %s", keys[i].id);
        FUZZ_CHECK(same_info(&one, &keys[i], false), "get and list disagree on %s", keys[i].id);
        active += !keys[i].revoked;
        struct key_limits eff;
        keystore_limits_effective(ks, keys[i].scopes, &keys[i].limits, &eff);
    }
    FUZZ_CHECK(keystore_count(ks) == active, "count %zu, %zu unrevoked listed", keystore_count(ks),
               active);
    check_verify(ks, keys, n);

    if (n > 0) {
        bool was_revoked = keys[0].revoked;
        int rc = keystore_revoke(ks, keys[0].id, &e);
        FUZZ_CHECK(rc == INF_OK, "keystore_revoke %s: %s", keys[0].id, e.msg);
        keystore_free(ks);
        ks = keystore_open(path, PEPPER, &e);
        FUZZ_CHECK(ks != NULL, "the file the store wrote does not open: %s", e.msg);
        FUZZ_CHECK(keystore_list(ks, &again, &n2, &e) == INF_OK, "keystore_list: %s", e.msg);
        FUZZ_CHECK(n2 == n, "%zu keys after the rewrite, %zu before", n2, n);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(same_info(&keys[i], &again[i], i == 0), "key %zu changed in the rewrite", i);
        FUZZ_CHECK(again[0].revoked, "the revoked key is not revoked");
        FUZZ_CHECK(!was_revoked || again[0].revoked_at == keys[0].revoked_at,
                   "revoking again changed revoked_at");
    }
    free(again);
    free(keys);
    keystore_free(ks);
    return 0;
}
