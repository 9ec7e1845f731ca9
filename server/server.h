/*
 * server/server.h - the public face of the server library: the subcommands of the `infera`
 * binary. main() does one-time library setup (OpenBLAS threads, log sink) and dispatches here.
 *
 * Each cli_* function takes the arguments after the subcommand name, writes its result on
 * stdout and progress or errors on stderr, and returns the process exit code (0 success,
 * 1 failure, 2 bad usage). None of them calls exit().
 */
#ifndef INFERA_SERVER_H
#define INFERA_SERVER_H

/* infera serve [options]: the HTTP service (server/serve.c) */
int cli_serve(int argc, char **argv);

/* infera predict --model DIR  < request.json  > response.json */
int cli_predict(int argc, char **argv);

/* infera train --model DIR --data FILE --out DIR [overrides] */
int cli_train(int argc, char **argv);

/* infera eval --model DIR --data FILE: prints {"samples", "loss", "accuracy"} */
int cli_eval(int argc, char **argv);

/* infera keys create|list|revoke: API keys of a data directory (server/cli_admin.c) */
int cli_keys(int argc, char **argv);

/* infera audit verify: checks the audit log's chain (server/cli_admin.c) */
int cli_audit(int argc, char **argv);

#endif /* INFERA_SERVER_H */
