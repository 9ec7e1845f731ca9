/*
 * tests/auth/test_keys.c - the API key store: scopes, token format, create/list/get/revoke
 * through a reopen, verification outcomes (ok, wrong secret, unknown id, revoked, malformed
 * headers, missing), equal work on every path (the stats hook: one HMAC and one
 * CRYPTO_memcmp each), keys.json holding only HMACs in mode 0600, changes by a second handle
 * and by another process seen at once, concurrent verifies during creation, malformed
 * keys.json with clear errors and fail-closed reloads.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/keys.h"
#include "tests/test.h"

static const uint8_t pepper[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

/* ------------------------------------------------------------------------------------------
 * Helpers: a scratch data dir, a log sink that counts errors
 * ---------------------------------------------------------------------------------------- */

struct scratch {
    char dir[64];
    char keys[128];
    char lock[160];
};

static void scratch_init(struct scratch *s)
{
    snprintf(s->dir, sizeof s->dir, "/tmp/infera-keys-XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
    snprintf(s->keys, sizeof s->keys, "%s/keys.json", s->dir);
    snprintf(s->lock, sizeof s->lock, "%s.lock", s->keys);
}

static void scratch_deinit(struct scratch *s)
{
    unlink(s->keys);
    unlink(s->lock);
    CHECK_MSG(rmdir(s->dir) == 0, "scratch dir %s not empty", s->dir);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    if (fs_read_file(path, 1 << 24, &data, &len, &e) != 0)
        return NULL;
    return data;
}

static atomic_int log_errors;

static void count_sink(enum log_level level, const char *msg, void *user)
{
    (void)user;
    if (level == LOG_ERROR) {
        atomic_fetch_add(&log_errors, 1);
        fprintf(stderr, "  (logged) %s\n", msg);
    }
}

static struct keystore *open_ok(const char *path)
{
    struct err e = {0};
    struct keystore *ks = keystore_open(path, pepper, &e);
    CHECK_MSG(ks != NULL, "keystore_open: %s", e.msg);
    if (ks == NULL)
        exit(1);
    return ks;
}

static void create_ok(struct keystore *ks, const char *name, unsigned scopes,
                      const struct key_limits *lim, char token[KEY_TOKEN_MAX],
                      struct key_info *info)
{
    struct err e = {0};
    int rc = keystore_create(ks, name, scopes, lim, token, info, &e);
    CHECK_MSG(rc == 0, "keystore_create: %s", e.msg);
    if (rc != 0)
        exit(1);
}

static void bearer(char *out, size_t cap, const char *token)
{
    snprintf(out, cap, "Bearer %s", token);
}

static bool is_b62(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* ------------------------------------------------------------------------------------------
 * Scopes
 * ---------------------------------------------------------------------------------------- */

static void test_scopes(void)
{
    unsigned s = 99;
    struct err e = {0};
    CHECK(auth_scopes_parse("infer", &s, &e) == 0 && s == AUTH_SCOPE_INFER);
    CHECK(auth_scopes_parse("infer,train", &s, &e) == 0 &&
          s == (AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN));
    CHECK(auth_scopes_parse(" admin , infer,admin", &s, &e) == 0 &&
          s == (AUTH_SCOPE_ADMIN | AUTH_SCOPE_INFER));
    const char *bad[] = {"", "root", "infer,", ",infer", "infer,,train", "Infer", " "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s = 77;
        err_clear(&e);
        CHECK_MSG(auth_scopes_parse(bad[i], &s, &e) == INF_EINVAL, "\"%s\"", bad[i]);
        CHECK(s == 77 && e.msg[0] != '\0');
    }
    err_clear(&e);
    auth_scopes_parse("infer,root", &s, &e);
    CHECK_ERR_HAS(&e, "unknown scope \"root\"");
    err_clear(&e);
    CHECK(auth_scopes_parse(NULL, &s, &e) == INF_EINVAL);

    json_t *a = json_pack("[s,s]", "train", "infer");
    CHECK(auth_scopes_from_json(a, &s, NULL) == 0 && s == (AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN));
    json_decref(a);
    a = json_pack("[s,i]", "train", 3);
    err_clear(&e);
    CHECK(auth_scopes_from_json(a, &s, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "scopes[1]");
    json_decref(a);
    a = json_array();
    CHECK(auth_scopes_from_json(a, &s, NULL) == INF_EINVAL);
    json_decref(a);
    CHECK(auth_scopes_from_json(NULL, &s, NULL) == INF_EINVAL);

    a = auth_scopes_to_json(AUTH_SCOPE_ADMIN);
    char *txt = json_dumps(a, JSON_COMPACT);
    CHECK(txt != NULL && strcmp(txt, "[\"admin\"]") == 0);
    free(txt);
    json_decref(a);
    a = auth_scopes_to_json(AUTH_SCOPE_ALL);
    txt = json_dumps(a, JSON_COMPACT);
    CHECK(txt != NULL && strcmp(txt, "[\"infer\",\"train\",\"admin\"]") == 0);
    free(txt);
    json_decref(a);

    char buf[32];
    CHECK(auth_scopes_format(AUTH_SCOPE_INFER | AUTH_SCOPE_ADMIN, buf, sizeof buf) == 0 &&
          strcmp(buf, "infer,admin") == 0);
    CHECK(auth_scopes_format(AUTH_SCOPE_ALL, buf, 18) == 0 &&
          strcmp(buf, "infer,train,admin") == 0);
    CHECK(auth_scopes_format(AUTH_SCOPE_ALL, buf, 10) == INF_ELIMIT && buf[0] == '\0');
    CHECK(auth_scopes_effective(AUTH_SCOPE_ADMIN) == AUTH_SCOPE_ALL);
    CHECK(auth_scopes_effective(AUTH_SCOPE_TRAIN) == AUTH_SCOPE_TRAIN);

    CHECK(strcmp(auth_result_str(AUTH_OK), "ok") == 0);
    CHECK(strcmp(auth_result_str(AUTH_MISSING), "missing") == 0);
    CHECK(strcmp(auth_result_str(AUTH_MALFORMED), "malformed") == 0);
    CHECK(strcmp(auth_result_str(AUTH_UNKNOWN), "unknown") == 0);
    CHECK(strcmp(auth_result_str(AUTH_REVOKED), "revoked") == 0);
    CHECK(strcmp(auth_result_str(AUTH_BAD_SECRET), "bad_secret") == 0);
    CHECK(strcmp(auth_result_str(AUTH_ERROR), "error") == 0);
}

/* ------------------------------------------------------------------------------------------
 * Create, list, get, revoke, reopen
 * ---------------------------------------------------------------------------------------- */

static void test_round_trip(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys); /* missing file: empty store */
    CHECK(keystore_count(ks) == 0);
    struct key_info *list = NULL;
    size_t n = 99;
    CHECK(keystore_list(ks, &list, &n, NULL) == 0 && n == 0 && list == NULL);

    char t1[KEY_TOKEN_MAX], t2[KEY_TOKEN_MAX], t3[KEY_TOKEN_MAX];
    struct key_info i1, i2, i3;
    int64_t before = (int64_t)time(NULL);
    create_ok(ks, "ci runner", AUTH_SCOPE_INFER, NULL, t1, &i1);
    struct key_limits lim = {.rate = 2.5, .burst = 7, .max_concurrent = 3};
    create_ok(ks, "trainer", AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN, &lim, t2, &i2);
    create_ok(ks, "root", AUTH_SCOPE_ADMIN, NULL, t3, &i3);
    CHECK(strcmp(i1.name, "ci runner") == 0 && i1.scopes == AUTH_SCOPE_INFER && !i1.revoked);
    CHECK(i1.created_at >= before && i1.created_at <= (int64_t)time(NULL));
    CHECK(i2.limits.rate == 2.5 && i2.limits.burst == 7 && i2.limits.max_concurrent == 3);
    CHECK(i1.limits.rate == 0 && i1.limits.burst == 0 && i1.limits.max_concurrent == 0);
    CHECK(keystore_count(ks) == 3);

    struct err e = {0};
    CHECK(keystore_revoke(ks, i2.id, &e) == 0);
    CHECK(keystore_count(ks) == 2);
    struct key_info g;
    CHECK(keystore_get(ks, i2.id, &g) == 0 && g.revoked && g.revoked_at >= before);
    int64_t first_revoked_at = g.revoked_at;
    /* idempotent: succeeds again and keeps the first time */
    CHECK(keystore_revoke(ks, i2.id, &e) == 0);
    CHECK(keystore_get(ks, i2.id, &g) == 0 && g.revoked_at == first_revoked_at);
    err_clear(&e);
    CHECK(keystore_revoke(ks, "zzzzzzzz", &e) == INF_ENOTFOUND);
    CHECK_ERR_HAS(&e, "no key");
    CHECK(keystore_revoke(ks, "bad id!", NULL) == INF_ENOTFOUND);
    CHECK(keystore_revoke(ks, "", NULL) == INF_ENOTFOUND);
    CHECK(keystore_revoke(ks, "ABCDEFGHI", NULL) == INF_ENOTFOUND);
    CHECK(keystore_get(ks, "zzzzzzzz", &g) == INF_ENOTFOUND);
    CHECK(keystore_get(ks, "short", &g) == INF_ENOTFOUND);
    keystore_free(ks);

    /* everything survives a reopen */
    ks = open_ok(sc.keys);
    CHECK(keystore_count(ks) == 2);
    CHECK(keystore_list(ks, &list, &n, &e) == 0 && n == 3);
    if (n == 3) {
        CHECK(memcmp(&list[0], &i1, sizeof i1) == 0);
        CHECK(strcmp(list[1].id, i2.id) == 0 && list[1].revoked &&
              list[1].revoked_at == first_revoked_at);
        CHECK(list[1].limits.rate == 2.5 && list[1].limits.burst == 7 &&
              list[1].limits.max_concurrent == 3);
        CHECK(list[1].scopes == (AUTH_SCOPE_INFER | AUTH_SCOPE_TRAIN));
        CHECK(strcmp(list[2].name, "root") == 0 && list[2].scopes == AUTH_SCOPE_ADMIN);
        CHECK(list[2].created_at == i3.created_at && !list[2].revoked);
    }
    free(list);
    char h[96];
    bearer(h, sizeof h, t1);
    CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_OK);
    bearer(h, sizeof h, t2);
    CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_REVOKED);
    keystore_free(ks);
    keystore_free(NULL);
    OPENSSL_cleanse(t1, sizeof t1);
    scratch_deinit(&sc);
}

static void test_create_rejects(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    char tok[KEY_TOKEN_MAX] = "untouched";
    struct err e = {0};
    char long_name[KEY_NAME_MAX + 2];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    CHECK(keystore_create(ks, "", AUTH_SCOPE_INFER, NULL, tok, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "name");
    CHECK(keystore_create(ks, long_name, AUTH_SCOPE_INFER, NULL, tok, NULL, NULL) == INF_EINVAL);
    long_name[KEY_NAME_MAX] = '\0'; /* exactly the maximum is fine */
    CHECK(keystore_create(ks, long_name, AUTH_SCOPE_INFER, NULL, tok, NULL, NULL) == 0);
    CHECK(keystore_create(ks, "tab\there", AUTH_SCOPE_INFER, NULL, tok, NULL, NULL) == INF_EINVAL);
    CHECK(keystore_create(ks, NULL, AUTH_SCOPE_INFER, NULL, tok, NULL, NULL) == INF_EINVAL);
    err_clear(&e);
    CHECK(keystore_create(ks, "x", 0, NULL, tok, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "scopes");
    CHECK(keystore_create(ks, "x", 8, NULL, tok, NULL, NULL) == INF_EINVAL);
    struct key_limits bad[] = {
        {.rate = -1},        {.burst = 0.5}, {.rate = NAN},
        {.burst = INFINITY}, {.rate = 2e6},  {.max_concurrent = KEY_CONCURRENT_MAX + 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear(&e);
        CHECK_MSG(keystore_create(ks, "x", AUTH_SCOPE_INFER, &bad[i], tok, NULL, &e) == INF_EINVAL,
                  "limits #%zu", i);
    }
    CHECK(keystore_count(ks) == 1);
    keystore_free(ks);

    /* a directory that does not exist: a clear I/O error, no crash */
    char missing[200];
    snprintf(missing, sizeof missing, "%s/nope/keys.json", sc.dir);
    ks = open_ok(missing);
    err_clear(&e);
    CHECK(keystore_create(ks, "x", AUTH_SCOPE_INFER, NULL, tok, NULL, &e) == INF_EIO);
    CHECK_ERR_HAS(&e, "nope");
    keystore_free(ks);
    OPENSSL_cleanse(tok, sizeof tok);
    scratch_deinit(&sc);
}

/* ------------------------------------------------------------------------------------------
 * Tokens and the file
 * ---------------------------------------------------------------------------------------- */

static void test_token_format_and_file(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    char t1[KEY_TOKEN_MAX], t2[KEY_TOKEN_MAX];
    struct key_info i1, i2;
    create_ok(ks, "one", AUTH_SCOPE_INFER, NULL, t1, &i1);
    create_ok(ks, "two", AUTH_SCOPE_INFER, NULL, t2, &i2);

    const char *toks[2] = {t1, t2};
    const struct key_info *infos[2] = {&i1, &i2};
    for (int k = 0; k < 2; k++) {
        const char *t = toks[k];
        CHECK(strlen(t) == KEY_TOKEN_LEN && KEY_TOKEN_LEN == 56);
        CHECK(strncmp(t, "ifr_", 4) == 0 && t[12] == '_');
        CHECK(strncmp(t + 4, infos[k]->id, KEY_ID_LEN) == 0 && strlen(infos[k]->id) == 8);
        bool b62 = true;
        for (size_t i = 4; i < KEY_TOKEN_LEN; i++) {
            if (i != 12 && !is_b62(t[i]))
                b62 = false;
        }
        CHECK_MSG(b62, "token has a non-base62 character");
    }
    CHECK(strcmp(t1, t2) != 0 && strcmp(i1.id, i2.id) != 0);
    CHECK(strcmp(t1 + 13, t2 + 13) != 0);

    /* many secrets: every base62 character shows up, none other (a crude uniformity check) */
    int seen[256] = {0};
    int rounds = test_quick() ? 10 : 40;
    for (int r = 0; r < rounds; r++) {
        char t[KEY_TOKEN_MAX];
        create_ok(ks, "bulk", AUTH_SCOPE_INFER, NULL, t, NULL);
        for (size_t i = 13; i < KEY_TOKEN_LEN; i++)
            seen[(unsigned char)t[i]]++;
    }
    int distinct = 0;
    for (int c = 0; c < 256; c++) {
        if (seen[c] > 0)
            distinct += is_b62((char)c) ? 1 : 1000;
    }
    CHECK_MSG(distinct == 62, "distinct = %d", distinct);

    /* the file holds HMAC-SHA256(pepper, token), never the token or the secret */
    char *text = read_text(sc.keys);
    CHECK(text != NULL);
    if (text != NULL) {
        CHECK(strstr(text, t1) == NULL && strstr(text, t1 + 13) == NULL);
        CHECK(strstr(text, t2) == NULL && strstr(text, t2 + 13) == NULL);
        char half[24]; /* not even a fragment of the secret */
        memcpy(half, t1 + 13, 20);
        half[20] = '\0';
        CHECK(strstr(text, half) == NULL);
        unsigned char mac[32];
        unsigned mac_len = 0;
        HMAC(EVP_sha256(), pepper, 32, (const unsigned char *)t1, strlen(t1), mac, &mac_len);
        char hex[65];
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", mac[i]);
        CHECK_MSG(strstr(text, hex) != NULL, "stored hash is not HMAC-SHA256(pepper, token)");
        CHECK(strstr(text, "\"version\": 1") != NULL);
        free(text);
    }
    struct stat st;
    CHECK(stat(sc.keys, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(stat(sc.lock, &st) == 0 && (st.st_mode & 0077) == 0);
    OPENSSL_cleanse(t1, sizeof t1);
    OPENSSL_cleanse(t2, sizeof t2);
    keystore_free(ks);
    scratch_deinit(&sc);
}

/* ------------------------------------------------------------------------------------------
 * Verification
 * ---------------------------------------------------------------------------------------- */

static void test_verify(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    char ti[KEY_TOKEN_MAX], ta[KEY_TOKEN_MAX], tl[KEY_TOKEN_MAX], tr[KEY_TOKEN_MAX];
    struct key_info ii, ia, il, ir;
    create_ok(ks, "infer", AUTH_SCOPE_INFER, NULL, ti, &ii);
    create_ok(ks, "admin", AUTH_SCOPE_ADMIN, NULL, ta, &ia);
    struct key_limits lim = {.rate = 5};
    create_ok(ks, "limited", AUTH_SCOPE_TRAIN, &lim, tl, &il);
    create_ok(ks, "revoked", AUTH_SCOPE_INFER, NULL, tr, &ir);
    CHECK(keystore_revoke(ks, ir.id, NULL) == 0);

    char h[128], id[KEY_ID_LEN + 1];
    struct principal p;
    bearer(h, sizeof h, ti);
    memset(&p, 0, sizeof p);
    CHECK(keystore_verify(ks, h, &p, id) == AUTH_OK);
    CHECK(strcmp(p.key_id, ii.id) == 0 && strcmp(id, ii.id) == 0);
    CHECK(p.scopes == AUTH_SCOPE_INFER); /* deny by default: nothing else */
    CHECK(p.limits.rate == 100 && p.limits.burst == 200 && p.limits.max_concurrent == 32);

    bearer(h, sizeof h, ta);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_OK);
    CHECK(p.scopes == AUTH_SCOPE_ALL); /* admin implies infer and train */
    CHECK(p.limits.rate == 50 && p.limits.burst == 100 && p.limits.max_concurrent == 16);

    bearer(h, sizeof h, tl);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_OK);
    CHECK(p.scopes == AUTH_SCOPE_TRAIN);
    /* overridden rate; burst follows it (2x); concurrency from the train default */
    CHECK(p.limits.rate == 5 && p.limits.burst == 10 && p.limits.max_concurrent == 8);

    /* changed defaults apply at once */
    struct key_limits defs[3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
    keystore_set_defaults(ks, defs);
    bearer(h, sizeof h, ti);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_OK);
    CHECK(p.limits.rate == 1 && p.limits.burst == 2 && p.limits.max_concurrent == 3);
    struct key_limits eff, ov = {.burst = 3, .max_concurrent = 1};
    keystore_limits_effective(ks, AUTH_SCOPE_ADMIN | AUTH_SCOPE_INFER, &ov, &eff);
    CHECK(eff.rate == 7 && eff.burst == 3 && eff.max_concurrent == 1);

    /* wrong secret: the last character changed */
    char bad[KEY_TOKEN_MAX];
    memcpy(bad, ti, sizeof bad);
    bad[KEY_TOKEN_LEN - 1] = bad[KEY_TOKEN_LEN - 1] == 'a' ? 'b' : 'a';
    bearer(h, sizeof h, bad);
    memset(&p, 0x5a, sizeof p);
    struct principal untouched;
    memcpy(&untouched, &p, sizeof p);
    CHECK(keystore_verify(ks, h, &p, id) == AUTH_BAD_SECRET);
    CHECK(strcmp(id, ii.id) == 0);                /* claimed id, for the audit log */
    CHECK(memcmp(&p, &untouched, sizeof p) == 0); /* *p only on success */

    /* unknown id with a plausible secret */
    memcpy(bad, ti, sizeof bad);
    memcpy(bad + 4, "00000000", 8);
    bearer(h, sizeof h, bad);
    CHECK(keystore_verify(ks, h, &p, id) == AUTH_UNKNOWN && strcmp(id, "00000000") == 0);

    /* another key's id with this key's secret */
    memcpy(bad, ti, sizeof bad);
    memcpy(bad + 4, ia.id, 8);
    bearer(h, sizeof h, bad);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_BAD_SECRET);

    /* revoked: with its right secret, and with a wrong one */
    bearer(h, sizeof h, tr);
    CHECK(keystore_verify(ks, h, &p, id) == AUTH_REVOKED && strcmp(id, ir.id) == 0);
    memcpy(bad, tr, sizeof bad);
    bad[20] = bad[20] == 'Z' ? 'Y' : 'Z';
    bearer(h, sizeof h, bad);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_BAD_SECRET);

    /* malformed headers */
    char variants[16][160];
    int nv = 0;
    snprintf(variants[nv++], 160, "Basic %s", ti);
    snprintf(variants[nv++], 160, "Bearer");
    snprintf(variants[nv++], 160, "Bearer ");
    snprintf(variants[nv++], 160, "Bearer  %s", ti);
    snprintf(variants[nv++], 160, " Bearer %s", ti);
    snprintf(variants[nv++], 160, "Bearer %s ", ti);
    snprintf(variants[nv++], 160, "Bearer %sA", ti);
    snprintf(variants[nv++], 160, "Bearer %.55s", ti);
    snprintf(variants[nv++], 160, "Bearer xfr_%s", ti + 4);
    snprintf(variants[nv++], 160, "Bearer %.12s-%s", ti, ti + 13);
    snprintf(variants[nv++], 160, "Bearer %.30s+%s", ti, ti + 31); /* bad character */
    snprintf(variants[nv++], 160, "Bearer %.30s%%%s", ti, ti + 31);
    snprintf(variants[nv++], 160, "Bearer %s", ti + 4);
    snprintf(variants[nv++], 160, "Bearer ifr_%s", ti); /* too long */
    snprintf(variants[nv++], 160, "%s", ti);            /* no scheme */
    struct keystore_stats s0, s1;
    keystore_stats_get(ks, &s0);
    for (int i = 0; i < nv; i++) {
        memcpy(id, "sentinel", sizeof "sentinel");
        CHECK_MSG(keystore_verify(ks, variants[i], &p, id) == AUTH_MALFORMED, "variant %d: %s", i,
                  variants[i]);
        CHECK(id[0] == '\0');
    }
    /* a NUL inside: the header ends there, so the token is short */
    memcpy(h, "Bearer ", 7);
    memcpy(h + 7, ti, KEY_TOKEN_LEN + 1);
    h[7 + 30] = '\0';
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_MALFORMED);
    CHECK(keystore_verify(ks, NULL, &p, id) == AUTH_MISSING && id[0] == '\0');
    CHECK(keystore_verify(ks, "", &p, NULL) == AUTH_MISSING);
    keystore_stats_get(ks, &s1);
    CHECK(s1.hmacs == s0.hmacs && s1.compares == s0.compares); /* rejected before any work */
    CHECK(s1.verifies == s0.verifies + (uint64_t)nv + 3);
    /* the scheme is case-insensitive (RFC 7235) */
    snprintf(h, sizeof h, "bEARER %s", ti);
    CHECK(keystore_verify(ks, h, &p, NULL) == AUTH_OK);

    OPENSSL_cleanse(ti, sizeof ti);
    OPENSSL_cleanse(ta, sizeof ta);
    keystore_free(ks);
    scratch_deinit(&sc);
}

/* "constant-time comparison used (test the path, not the clock)" */
static void test_equal_work(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    char good[KEY_TOKEN_MAX], rev[KEY_TOKEN_MAX];
    struct key_info gi, ri;
    create_ok(ks, "good", AUTH_SCOPE_INFER, NULL, good, &gi);
    create_ok(ks, "rev", AUTH_SCOPE_INFER, NULL, rev, &ri);
    CHECK(keystore_revoke(ks, ri.id, NULL) == 0);

    char wrong[KEY_TOKEN_MAX], unknown[KEY_TOKEN_MAX];
    memcpy(wrong, good, sizeof wrong);
    wrong[40] = wrong[40] == '0' ? '1' : '0';
    memcpy(unknown, good, sizeof unknown);
    memcpy(unknown + 4, "zZzZzZzZ", 8);

    struct {
        const char *token;
        enum auth_result want;
    } cases[] = {
        {good, AUTH_OK},
        {wrong, AUTH_BAD_SECRET},
        {unknown, AUTH_UNKNOWN},
        {rev, AUTH_REVOKED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char h[96];
        struct keystore_stats a, b;
        bearer(h, sizeof h, cases[i].token);
        keystore_stats_get(ks, &a);
        enum auth_result r = keystore_verify(ks, h, NULL, NULL);
        keystore_stats_get(ks, &b);
        CHECK_MSG(r == cases[i].want, "case %zu: %s", i, auth_result_str(r));
        CHECK_MSG(b.hmacs - a.hmacs == 1 && b.compares - a.compares == 1,
                  "case %s: %llu HMACs, %llu compares", auth_result_str(cases[i].want),
                  (unsigned long long)(b.hmacs - a.hmacs),
                  (unsigned long long)(b.compares - a.compares));
        CHECK(b.reloads == a.reloads); /* nothing changed on disk */
    }
    OPENSSL_cleanse(good, sizeof good);
    keystore_free(ks);
    scratch_deinit(&sc);
}

/* ------------------------------------------------------------------------------------------
 * Live changes: a second handle, another process, threads
 * ---------------------------------------------------------------------------------------- */

static void test_second_handle(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *server = open_ok(sc.keys);
    struct keystore *cli = open_ok(sc.keys);
    char t[KEY_TOKEN_MAX], h[96];
    struct key_info info;
    struct principal p;

    /* created by the "CLI": the server accepts it on the very next request */
    create_ok(cli, "from cli", AUTH_SCOPE_TRAIN, NULL, t, &info);
    bearer(h, sizeof h, t);
    CHECK(keystore_verify(server, h, &p, NULL) == AUTH_OK && p.scopes == AUTH_SCOPE_TRAIN);
    CHECK(keystore_count(server) == 1);

    /* revocation is immediate, with no delay between the write and the check */
    CHECK(keystore_revoke(cli, info.id, NULL) == 0);
    CHECK(keystore_verify(server, h, &p, NULL) == AUTH_REVOKED);
    CHECK(keystore_count(server) == 0);

    /* and the other way round; the writer's in-memory state is current too */
    char t2[KEY_TOKEN_MAX], h2[96];
    struct key_info i2, g;
    create_ok(server, "from server", AUTH_SCOPE_INFER, NULL, t2, &i2);
    CHECK(keystore_get(cli, i2.id, &g) == 0 && strcmp(g.name, "from server") == 0);
    bearer(h2, sizeof h2, t2);
    CHECK(keystore_verify(cli, h2, NULL, NULL) == AUTH_OK);
    CHECK(keystore_verify(server, h2, NULL, NULL) == AUTH_OK);
    /* interleaved writers do not lose each other's keys (each reloads under the lock) */
    for (int i = 0; i < 5; i++) {
        char tt[KEY_TOKEN_MAX];
        create_ok(i % 2 ? server : cli, "x", AUTH_SCOPE_INFER, NULL, tt, NULL);
    }
    CHECK(keystore_count(server) == 6 && keystore_count(cli) == 6);
    CHECK(keystore_revoke(server, i2.id, NULL) == 0);
    CHECK(keystore_verify(cli, h2, NULL, NULL) == AUTH_REVOKED);

    /* the file deleted under a running server: no keys (fail closed), no crash */
    unlink(sc.keys);
    CHECK(keystore_verify(server, h2, NULL, NULL) == AUTH_UNKNOWN);
    CHECK(keystore_count(server) == 0);

    keystore_free(server);
    keystore_free(cli);
    scratch_deinit(&sc);
}

/* Another process creating keys at the same time as this one: the flock serializes the
 * read-modify-write cycles, so no key is lost. */
static void test_other_process(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    int per = test_quick() ? 5 : 20;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        struct err e = {0};
        struct keystore *child = keystore_open(sc.keys, pepper, &e);
        int bad = child == NULL;
        for (int i = 0; i < per && !bad; i++) {
            char t[KEY_TOKEN_MAX];
            bad = keystore_create(child, "child", AUTH_SCOPE_INFER, NULL, t, NULL, &e) != 0;
        }
        if (bad)
            fprintf(stderr, "child: %s\n", e.msg);
        keystore_free(child);
        keystore_free(ks); /* the parent's handle, copied by fork */
        _exit(bad);
    }
    CHECK(pid > 0);
    for (int i = 0; i < per; i++) {
        char t[KEY_TOKEN_MAX];
        create_ok(ks, "parent", AUTH_SCOPE_INFER, NULL, t, NULL);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_MSG(keystore_count(ks) == (size_t)(2 * per), "count %zu", keystore_count(ks));
    struct key_info *list = NULL;
    size_t n = 0;
    CHECK(keystore_list(ks, &list, &n, NULL) == 0 && n == (size_t)(2 * per));
    int children = 0;
    for (size_t i = 0; i < n; i++)
        children += strcmp(list[i].name, "child") == 0;
    CHECK(children == per);
    free(list);
    keystore_free(ks);
    scratch_deinit(&sc);
}

struct verify_arg {
    struct keystore *ks;
    const char *good_header, *revoked_header;
    atomic_bool *stop;
    int failures;
    long rounds;
};

static void *verify_thread(void *arg)
{
    struct verify_arg *a = arg;
    while (!atomic_load(a->stop) || a->rounds < 50) {
        struct principal p;
        if (keystore_verify(a->ks, a->good_header, &p, NULL) != AUTH_OK ||
            p.scopes != AUTH_SCOPE_INFER)
            a->failures++;
        if (keystore_verify(a->ks, a->revoked_header, NULL, NULL) != AUTH_REVOKED)
            a->failures++;
        a->rounds++;
    }
    return NULL;
}

static void test_concurrent(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    struct keystore *other = open_ok(sc.keys);
    char good[KEY_TOKEN_MAX], rev[KEY_TOKEN_MAX], hg[96], hr[96];
    struct key_info ri;
    create_ok(ks, "good", AUTH_SCOPE_INFER, NULL, good, NULL);
    create_ok(ks, "rev", AUTH_SCOPE_INFER, NULL, rev, &ri);
    CHECK(keystore_revoke(ks, ri.id, NULL) == 0);
    bearer(hg, sizeof hg, good);
    bearer(hr, sizeof hr, rev);

    enum { NT = 4 };
    pthread_t th[NT];
    struct verify_arg args[NT];
    atomic_bool stop = false;
    for (int i = 0; i < NT; i++) {
        args[i] = (struct verify_arg){ks, hg, hr, &stop, 0, 0};
        CHECK(pthread_create(&th[i], NULL, verify_thread, &args[i]) == 0);
    }
    /* this thread writes through both handles: in-process installs and on-disk reloads */
    int n = test_quick() ? 10 : 40;
    for (int i = 0; i < n; i++) {
        char t[KEY_TOKEN_MAX], h[96];
        struct key_info info;
        create_ok(i % 2 ? ks : other, "churn", AUTH_SCOPE_INFER, NULL, t, &info);
        bearer(h, sizeof h, t);
        CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_OK);
        if (i % 3 == 0) {
            CHECK(keystore_revoke(i % 2 ? other : ks, info.id, NULL) == 0);
            CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_REVOKED);
        }
        struct key_info *list = NULL;
        size_t ln = 0;
        CHECK(keystore_list(ks, &list, &ln, NULL) == 0 && ln == (size_t)i + 3);
        free(list);
    }
    atomic_store(&stop, true);
    long rounds = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        CHECK_MSG(args[i].failures == 0, "thread %d: %d failures", i, args[i].failures);
        rounds += args[i].rounds;
    }
    struct keystore_stats st;
    keystore_stats_get(ks, &st);
    CHECK(st.reloads > 0);
    fprintf(stderr, "  %ld verify rounds, %llu reloads during %d creations\n", rounds,
            (unsigned long long)st.reloads, n);
    keystore_free(ks);
    keystore_free(other);
    scratch_deinit(&sc);
}

/* ------------------------------------------------------------------------------------------
 * Malformed keys.json
 * ---------------------------------------------------------------------------------------- */

#define HASH64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define KEY_OK "\"id\":\"AbCd1234\",\"name\":\"n\",\"scopes\":[\"infer\"],\"hash\":\"" HASH64 "\""

static void test_malformed_file(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct {
        const char *text;
        const char *needle;
    } cases[] = {
        {"{\"version\":1,\"keys\":[", "line 1"},
        {"", "line"},
        {"[]", "expected a JSON object"},
        {"{\"keys\":[]}", "version"},
        {"{\"version\":2,\"keys\":[]}", "version: expected 1"},
        {"{\"version\":1,\"keys\":{}}", "keys: expected an array"},
        {"{\"version\":1,\"keys\":[7]}", "keys[0]: expected an object"},
        {"{\"version\":1,\"keys\":[{" KEY_OK "}]}", "keys[0].created_at: missing"},
        {"{\"version\":1,\"keys\":[{" KEY_OK ",\"created_at\":-5}]}", "keys[0].created_at"},
        {"{\"version\":1,\"keys\":[{\"id\":\"short\"}]}", "keys[0].id"},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd12!4\"}]}", "keys[0].id"},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd1234\",\"name\":\"\"}]}", "keys[0].name"},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd1234\",\"name\":\"n\",\"scopes\":[\"root\"]}]}",
         "keys[0].scopes[0]: unknown scope \"root\""},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd1234\",\"name\":\"n\",\"scopes\":[]}]}",
         "keys[0].scopes"},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd1234\",\"name\":\"n\",\"scopes\":[\"infer\"],"
         "\"hash\":\"xyz\"}]}",
         "keys[0].hash: expected 64 hex digits"},
        {"{\"version\":1,\"keys\":[{\"id\":\"AbCd1234\",\"name\":\"n\",\"scopes\":[\"infer\"],"
         "\"hash\":\"" HASH64 "\",\"created_at\":1}]}",
         NULL},
        {"{\"version\":1,\"keys\":[{" KEY_OK ",\"created_at\":1},{" KEY_OK ",\"created_at\":2}]}",
         "keys[1].id: duplicate id AbCd1234"},
        {"{\"version\":1,\"keys\":[{" KEY_OK ",\"created_at\":1,\"burst\":0.5}]}",
         "keys[0]: burst"},
        {"{\"version\":1,\"keys\":[{" KEY_OK ",\"created_at\":1,\"rate_limit\":\"fast\"}]}",
         "keys[0].rate_limit"},
        {"{\"version\":1,\"keys\":[{" KEY_OK ",\"created_at\":1,\"max_concurrent\":-1}]}",
         "keys[0].max_concurrent"},
        {"{\"version\":1,\"version\":1,\"keys\":[]}", "duplicate"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_text(sc.keys, cases[i].text);
        chmod(sc.keys, 0600);
        struct err e = {0};
        struct keystore *ks = keystore_open(sc.keys, pepper, &e);
        if (cases[i].needle == NULL) {
            CHECK_MSG(ks != NULL, "case %zu: %s", i, e.msg);
            if (ks != NULL)
                CHECK(keystore_count(ks) == 1);
        } else {
            CHECK_MSG(ks == NULL && e.status == INF_EINVAL, "case %zu opened", i);
            CHECK_ERR_HAS(&e, cases[i].needle);
            CHECK_ERR_HAS(&e, "keys.json"); /* names the file */
        }
        keystore_free(ks);
    }
    /* too big */
    {
        FILE *f = fopen(sc.keys, "w");
        CHECK(f != NULL);
        if (f != NULL) {
            CHECK(fseek(f, KEYSTORE_MAX_FILE + 1, SEEK_SET) == 0 && fputc(' ', f) != EOF);
            fclose(f);
        }
        struct err e = {0};
        CHECK(keystore_open(sc.keys, pepper, &e) == NULL && e.status == INF_ELIMIT);
    }
    scratch_deinit(&sc);
}

/* A keys.json broken under a running server: refuse every key, log once, recover on repair */
static void test_fail_closed_reload(void)
{
    struct scratch sc;
    scratch_init(&sc);
    struct keystore *ks = open_ok(sc.keys);
    char t[KEY_TOKEN_MAX], h[96];
    create_ok(ks, "k", AUTH_SCOPE_INFER, NULL, t, NULL);
    bearer(h, sizeof h, t);
    CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_OK);
    char *good = read_text(sc.keys);
    CHECK(good != NULL);

    int errors0 = atomic_load(&log_errors);
    write_text(sc.keys, "{\"version\": 1, \"keys\": [ oops");
    for (int i = 0; i < 3; i++)
        CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_UNKNOWN);
    CHECK(keystore_count(ks) == 0);
    CHECK(atomic_load(&log_errors) == errors0 + 1); /* once per bad version, not per call */
    struct err e = {0};
    char t2[KEY_TOKEN_MAX];
    CHECK(keystore_create(ks, "k2", AUTH_SCOPE_INFER, NULL, t2, NULL, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "keys.json");
    CHECK(keystore_revoke(ks, "AbCd1234", NULL) == INF_EINVAL);

    if (good != NULL) {
        write_text(sc.keys, good);
        CHECK(keystore_verify(ks, h, NULL, NULL) == AUTH_OK);
        free(good);
    }
    OPENSSL_cleanse(t, sizeof t);
    keystore_free(ks);
    scratch_deinit(&sc);
}

int main(void)
{
    log_set_sink(count_sink, NULL, LOG_WARN);
    RUN(test_scopes);
    RUN(test_round_trip);
    RUN(test_create_rejects);
    RUN(test_token_format_and_file);
    RUN(test_verify);
    RUN(test_equal_work);
    RUN(test_second_handle);
    RUN(test_other_process);
    RUN(test_concurrent);
    RUN(test_malformed_file);
    RUN(test_fail_closed_reload);
    return test_finish();
}
