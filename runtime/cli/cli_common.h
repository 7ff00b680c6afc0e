/* cli_common: what the run-like commands share: loading CONFIG|MODEL_DIR and applying the
 * command-line overrides (--threads, --prefill-chunk, ...), with checks, before anything
 * starts; and printing a command's --json result.  Part of the CLI layer: apart from that
 * result on stdout, it formats messages but never prints. */
#ifndef MOERT_CLI_COMMON_H
#define MOERT_CLI_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "../config.h"
#include "../err.h"

typedef struct cli_overrides {
    const char *threads, *prefill_chunk, *max_seq_len, *backend, *weights, *gpus, *numerics, *batch_invariant;
    const char *seed, *temp, *top_k, *top_p;
    const char *trace_file, *trace_mode, *trace_positions, *contract;
} cli_overrides;

/* If argv[*i] is one of the shared override flags, stores its value, advances *i past it
 * and returns 1; returns 0 when it is not one; returns -1 (err set) when the value is
 * missing. */
int cli_take_override(int argc, char **argv, int *i, cli_overrides *o, moert_err *err);

/* Applies the runtime overrides (threads, prefill chunk, max_seq_len, backend, gpus,
 * numerics, batch invariance, weights) to a loaded config, checking each value: what run and replay share. */
int cli_apply_runtime(const cli_overrides *o, unsigned cfg_flags, cfg_config *cfg, moert_err *err);

/* Loads path (YAML or model directory) and applies the overrides, checking each value. */
int cli_load_config(const char *path, const cli_overrides *o, unsigned cfg_flags, cfg_config *cfg,
                    moert_err *err);

/* Strict number parsing for flags: the whole string must be a number in [lo, hi]. */
int cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out,
                  moert_err *err);
int cli_parse_f64(const char *flag, const char *s, double lo, double hi, double *out,
                  moert_err *err);

/* Token ids as text: non-negative decimal integers (at most 2^31 - 1) separated by
 * whitespace and/or one comma; no empty field ("1,,2"), no leading or trailing comma, no
 * other byte (a NUL included).  `len` bytes of s (NUL need not end it); at most cap ids
 * (*n set).  Errors (MOERT_EUSAGE) name `what` and the byte offset. */
int cli_parse_id_list(const char *what, const char *s, size_t len, int32_t *ids, size_t cap, size_t *n,
                      moert_err *err);

/* --tokens: the grammar above over a NUL-terminated flag value; no ids is an error. */
int cli_parse_ids(const char *flag, const char *s, int32_t *ids, int64_t cap, int64_t *n,
                  moert_err *err);

/* detokenize's input: a JSON array of ids, or the list grammar above; *out malloc'd (the
 * caller frees).  Errors are MOERT_EFORMAT naming `what` ("stdin") and the byte offset or
 * JSON line:column. */
int cli_read_ids(const char *what, const char *s, size_t len, int32_t **out, size_t *n, moert_err *err);

/* Prints o as JSON text (jansson `flags`) and a newline on stdout, then releases o.
 * MOERT_ENOMEM when the text cannot be built (nothing printed). */
int cli_print_json(json_t *o, size_t flags, moert_err *err);

#endif
