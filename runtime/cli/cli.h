/* cli: the `moert` subcommands.  Each cli_<command> parses its own arguments, calls the
 * libraries, prints results to stdout and returns a moert_status; main() prints any error
 * message to stderr and turns the status into the exit code (moert_exit_code). */
#ifndef MOERT_CLI_H
#define MOERT_CLI_H

#include "../err.h"
#include "../version.h"

typedef int (*cli_fn)(int argc, char **argv, moert_err *err);

typedef struct cli_command {
    const char *name;
    cli_fn fn;
    const char *summary;
} cli_command;

/* The subcommands (runtime/cli_*.c).  argv[0] is the command name. */
int cli_run(int argc, char **argv, moert_err *err);
int cli_plan(int argc, char **argv, moert_err *err);
int cli_bench(int argc, char **argv, moert_err *err);
int cli_synth(int argc, char **argv, moert_err *err);
int cli_validate(int argc, char **argv, moert_err *err);
int cli_replay(int argc, char **argv, moert_err *err);
int cli_diff(int argc, char **argv, moert_err *err);
/* runtime/cli_tok.c */
int cli_tokenize(int argc, char **argv, moert_err *err);
int cli_detokenize(int argc, char **argv, moert_err *err);

#endif
