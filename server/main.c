/*
 * server/main.c - the `infera` binary: one-time library setup, then a subcommand.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <sys/auxv.h>
#endif

#include <cblas.h>
#include <jansson.h>

#include "server/server.h"

static const char usage[] =
    "usage: infera <command> [options]\n"
    "commands:\n"
    "  serve     the HTTP service: Open Inference Protocol v2 (see --help)\n"
    "  predict   run an Open Inference Protocol v2 request (stdin) through a model directory\n"
    "  train     train a model directory on a JSONL file and write a servable model\n"
    "  eval      loss and accuracy of a model directory on a JSONL file\n"
    "  keys      create, list and revoke API keys of a data directory\n"
    "  audit     verify the audit log of a data directory\n"
    "  version   print the version\n"
    "Run `infera <command> --help` for the options of a command.\n";

/* Environment setting that turns glibc's per-thread malloc cache (tcache) off for `serve`. */
#define SERVE_TUNABLE "glibc.malloc.tcache_count=0"

/*
 * serve_malloc_setup - makes `infera serve` run with glibc's tcache off, by setting
 * GLIBC_TUNABLES and re-executing itself once (tunables are read only at program start; mallopt
 * has no tcache option). Returns only if it does not re-execute: not glibc, the operator set a
 * tcache tunable already (which is also how the re-executed process sees the setting, so this
 * runs once), a set-uid start (glibc may drop GLIBC_TUNABLES there), valgrind (it replaces
 * malloc, and an exec would leave it), no /proc, or a failed exec. Any of those leaves glibc's
 * defaults, which are correct, only larger.
 *
 * Why: with a thread per connection, 256 open connections are 256 threads, each with its own
 * tcache of up to 7 freed chunks per size class (up to 1 KiB). Chunks parked in one thread's
 * cache cannot be reused by the others nor merged with their free neighbours, so under a steady
 * load the malloc arenas keep growing although the live heap is flat: bench/soak measured RSS
 * +11.5% from 30 s to 5 minutes with the tcache on, +3.7% and +5.3% with it off, at no measured
 * throughput cost (bench/soak/README.md). The arena count (M_ARENA_MAX) was not the cause.
 */
static void serve_malloc_setup(char **argv)
{
#if defined(__GLIBC__)
    const char *t = getenv("GLIBC_TUNABLES");
    const char *pre = getenv("LD_PRELOAD");
    if ((t != NULL && strstr(t, "glibc.malloc.tcache_count") != NULL) || getauxval(AT_SECURE) ||
        (pre != NULL && strstr(pre, "vgpreload") != NULL))
        return;
    char buf[4096];
    int n = t != NULL && t[0] ? snprintf(buf, sizeof buf, "%s:%s", t, SERVE_TUNABLE)
                              : snprintf(buf, sizeof buf, "%s", SERVE_TUNABLE);
    if (n < 0 || (size_t)n >= sizeof buf || setenv("GLIBC_TUNABLES", buf, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    /* The exec failed (no /proc, say): carry on as started, without the variable. t is still
     * valid: glibc's setenv never frees a value it replaces. */
    if (t != NULL)
        setenv("GLIBC_TUNABLES", t, 1);
    else
        unsetenv("GLIBC_TUNABLES");
#else
    (void)argv;
#endif
}

int main(int argc, char **argv)
{
    /* First, before any thread starts (an exec would end them): `serve` may re-execute. */
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        serve_malloc_setup(argv);
    /* One source of parallelism: each request or training worker runs single-threaded BLAS.
     * Set once here, before any thread starts. */
    openblas_set_num_threads(1);
    json_object_seed(0);

    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(argc - 2, argv + 2);
    if (strcmp(cmd, "predict") == 0)
        return cli_predict(argc - 2, argv + 2);
    if (strcmp(cmd, "train") == 0)
        return cli_train(argc - 2, argv + 2);
    if (strcmp(cmd, "eval") == 0)
        return cli_eval(argc - 2, argv + 2);
    if (strcmp(cmd, "keys") == 0)
        return cli_keys(argc - 2, argv + 2);
    if (strcmp(cmd, "audit") == 0)
        return cli_audit(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("infera %s\n", INFERA_VERSION);
        return 0;
    }
    fprintf(stderr, "infera: unknown command \"%s\"\n%s", cmd, usage);
    return 2;
}
