/*
 * server/cli_admin.c - `infera keys create|list|revoke` and `infera audit verify`: offline
 * administration on a data directory. They may run while a server uses the same directory:
 * the keystore locks keys.json for every change and the server sees the change at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "auth/auth.h"
#include "server.h"

struct admin_args {
    const char *data_dir;
    const char *master_key_file;
    const char *audit_dir;
    const char *name;
    const char *scopes;
    double rate, burst, max_concurrent;
    const char *positional;
};

/* Parses the shared flags; returns 0, or 2 after printing the problem. */
static int admin_parse(const char *cmd, int argc, char **argv, struct admin_args *a)
{
    memset(a, 0, sizeof *a);
    a->data_dir = getenv("INFERA_DATA_DIR") ? getenv("INFERA_DATA_DIR") : "./data";
    a->master_key_file = getenv("INFERA_MASTER_KEY_FILE");
    a->audit_dir = getenv("INFERA_AUDIT_DIR");
    for (int i = 0; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        double *num = strcmp(f, "--rate") == 0             ? &a->rate
                      : strcmp(f, "--burst") == 0          ? &a->burst
                      : strcmp(f, "--max-concurrent") == 0 ? &a->max_concurrent
                                                           : NULL;
        const char **str = strcmp(f, "--data-dir") == 0          ? &a->data_dir
                           : strcmp(f, "--master-key-file") == 0 ? &a->master_key_file
                           : strcmp(f, "--audit-dir") == 0       ? &a->audit_dir
                           : strcmp(f, "--name") == 0            ? &a->name
                           : strcmp(f, "--scopes") == 0          ? &a->scopes
                                                                 : NULL;
        if (num == NULL && str == NULL) {
            if (f[0] == '-' || a->positional != NULL) {
                fprintf(stderr, "infera %s: unexpected argument \"%s\"\n", cmd, f);
                return 2;
            }
            a->positional = f;
            continue;
        }
        if (v == NULL) {
            fprintf(stderr, "infera %s: %s needs a value\n", cmd, f);
            return 2;
        }
        i++;
        if (str != NULL) {
            *str = v;
            continue;
        }
        char *end = NULL;
        *num = strtod(v, &end);
        if (end == v || *end != '\0' || !(*num > 0 && *num <= 1e6)) {
            fprintf(stderr, "infera %s: %s: expected a number in (0, 1e6]\n", cmd, f);
            return 2;
        }
    }
    return 0;
}

/* The data dir's master key. Never creates one: that is `infera serve`'s first start, so a
 * mistyped --data-dir is an error here rather than a new, empty data directory. */
static int open_master(const struct admin_args *a, struct master_key *mk, struct err *e)
{
    struct master_source src = {a->master_key_file, getenv("INFERA_MASTER_KEY")};
    char path[4200];
    struct stat st;
    if (src.key_file == NULL && src.env_value == NULL &&
        fs_path_join(path, sizeof path, a->data_dir, "master.key", e) == INF_OK &&
        stat(path, &st) != 0)
        return err_set(e, INF_ENOTFOUND,
                       "%s has no master key (%s): is --data-dir right? `infera serve` creates "
                       "it on first start; or set INFERA_MASTER_KEY / --master-key-file",
                       a->data_dir, path);
    if (e != NULL && e->status)
        return e->status;
    bool created = false;
    return master_key_open(a->data_dir, &src, mk, &created, e);
}

static struct keystore *open_keys(const struct admin_args *a, struct err *e)
{
    struct master_key mk;
    if (open_master(a, &mk, e) != INF_OK)
        return NULL;
    uint8_t pepper[32];
    char path[4200];
    struct keystore *ks = NULL;
    if (master_key_derive(&mk, "key-pepper", pepper) == INF_OK &&
        fs_path_join(path, sizeof path, a->data_dir, "keys.json", e) == INF_OK)
        ks = keystore_open(path, pepper, e);
    OPENSSL_cleanse(pepper, sizeof pepper);
    master_key_wipe(&mk);
    return ks;
}

static void print_key(const struct key_info *k)
{
    const char *scopes = (k->scopes & AUTH_SCOPE_ADMIN) ? "admin"
                         : (k->scopes & AUTH_SCOPE_INFER) && (k->scopes & AUTH_SCOPE_TRAIN)
                             ? "infer,train"
                         : (k->scopes & AUTH_SCOPE_TRAIN) ? "train"
                                                          : "infer";
    printf("%-8s  %-20s  %-12s  %s\n", k->id, k->name, scopes, k->revoked ? "revoked" : "active");
}

static const char keys_usage[] =
    "usage: infera keys create --name NAME --scopes infer,train,admin [--rate R --burst B "
    "--max-concurrent C]\n"
    "       infera keys list\n"
    "       infera keys revoke ID\n"
    "options: --data-dir DIR (default ./data, INFERA_DATA_DIR), --master-key-file F\n"
    "A new key is printed once on stdout; infera keeps only its HMAC.\n";

int cli_keys(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(keys_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    const char *sub = argv[0];
    struct admin_args a;
    if (admin_parse("keys", argc - 1, argv + 1, &a) != 0)
        return 2;
    bool create = strcmp(sub, "create") == 0, list = strcmp(sub, "list") == 0,
         revoke = strcmp(sub, "revoke") == 0;
    if (!create && !list && !revoke) {
        fprintf(stderr, "infera keys: unknown command \"%s\"\n%s", sub, keys_usage);
        return 2;
    }
    if ((create && (a.name == NULL || a.scopes == NULL || a.positional)) ||
        (revoke && a.positional == NULL) || (list && a.positional)) {
        fputs(keys_usage, stderr);
        return 2;
    }
    struct err e = {0};
    unsigned scopes = 0;
    if (create && auth_scopes_parse(a.scopes, &scopes, &e) != INF_OK) {
        fprintf(stderr, "infera keys: --scopes: %s\n", e.msg);
        return 2;
    }
    struct keystore *ks = open_keys(&a, &e);
    if (ks == NULL) {
        fprintf(stderr, "infera keys: %s\n", e.msg);
        return 1;
    }
    int code = 0;
    if (create) {
        struct key_limits lim = {a.rate, a.burst, (unsigned)a.max_concurrent};
        char token[KEY_TOKEN_MAX];
        struct key_info info;
        if (keystore_create(ks, a.name, scopes, &lim, token, &info, &e) != INF_OK) {
            fprintf(stderr, "infera keys: %s\n", e.msg);
            code = 1;
        } else {
            printf("%s\n", token);
            fprintf(stderr, "created key %s (\"%s\"); the line above is its only copy\n", info.id,
                    info.name);
            OPENSSL_cleanse(token, sizeof token);
        }
    } else if (list) {
        struct key_info *keys = NULL;
        size_t n = 0;
        if (keystore_list(ks, &keys, &n, &e) != INF_OK) {
            fprintf(stderr, "infera keys: %s\n", e.msg);
            code = 1;
        } else {
            printf("%-8s  %-20s  %-12s  %s\n", "ID", "NAME", "SCOPES", "STATE");
            for (size_t i = 0; i < n; i++)
                print_key(&keys[i]);
        }
        free(keys);
    } else if (keystore_revoke(ks, a.positional, &e) != INF_OK) {
        fprintf(stderr, "infera keys: %s\n", e.msg);
        code = 1;
    } else {
        fprintf(stderr, "revoked key %s\n", a.positional);
    }
    keystore_free(ks);
    return code;
}

static const char audit_usage[] =
    "usage: infera audit verify [--data-dir DIR] [--audit-dir DIR] [--master-key-file F]\n"
    "Checks every record of <data-dir>/audit: the MAC chain, sequence numbers and segments.\n"
    "Exit status 0 when the whole log verifies, 1 at the first bad record (named).\n";

int cli_audit(int argc, char **argv)
{
    if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
        fputs(audit_usage, argc < 1 ? stderr : stdout);
        return argc < 1 ? 2 : 0;
    }
    struct admin_args a;
    if (strcmp(argv[0], "verify") != 0 || admin_parse("audit", argc - 1, argv + 1, &a) != 0 ||
        a.positional != NULL) {
        fputs(audit_usage, stderr);
        return 2;
    }
    struct err e = {0};
    struct master_key mk;
    if (open_master(&a, &mk, &e) != INF_OK) {
        fprintf(stderr, "infera audit: %s\n", e.msg);
        return 1;
    }
    uint8_t k[32];
    char dir[4200];
    int rc = master_key_derive(&mk, "audit", k);
    master_key_wipe(&mk);
    if (rc == INF_OK && a.audit_dir != NULL && a.audit_dir[0])
        snprintf(dir, sizeof dir, "%s", a.audit_dir);
    else if (rc == INF_OK)
        rc = fs_path_join(dir, sizeof dir, a.data_dir, "audit", &e);
    struct audit_verify_report rep;
    memset(&rep, 0, sizeof rep);
    if (rc == INF_OK)
        rc = audit_verify(dir, k, &rep, &e);
    OPENSSL_cleanse(k, sizeof k);
    if (rc != INF_OK) {
        fprintf(stderr, "infera audit: FAILED: %s\n", e.status ? e.msg : "cannot verify");
        return 1;
    }
    printf("audit log %s verifies: %zu segments, %llu records, last seq %llu\n", dir, rep.segments,
           (unsigned long long)rep.records, (unsigned long long)rep.last_seq);
    return 0;
}
