/*
 * server/main.c - the `infera` binary: one-time library setup, then a subcommand.
 */
#include <stdio.h>
#include <string.h>

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

int main(int argc, char **argv)
{
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
