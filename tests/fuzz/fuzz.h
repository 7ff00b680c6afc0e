/* Shared by the libFuzzer harnesses in tests/fuzz/ (built by `make fuzz` with clang,
 * libFuzzer, ASan and UBSan).  Each harness feeds the fuzzer's bytes through the library
 * API, as a file in a scratch directory where the API takes a path.  What every harness
 * asserts besides "no crash, no leak, no UB": a failure is bad input (exit code 2, or 1
 * where a check may find violations) with a message, never an internal error. */
#ifndef MOERT_FUZZ_H
#define MOERT_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../runtime/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* This process's scratch directory (made on first use, removed at exit). */
const char *fuzz_dir(void);

/* Writes size bytes to fuzz_dir()/name (replacing it) and returns the path. */
const char *fuzz_file(const char *name, const void *data, size_t size);

/* A NUL-terminated copy of the input (freed by the caller). */
char *fuzz_strdup(const uint8_t *data, size_t size);

/* A broken invariant: libFuzzer records the input that caused it. */
#define FUZZ_ASSERT(c)                                                                       \
    do {                                                                                     \
        if (!(c)) {                                                                          \
            fprintf(stderr, "fuzz: invariant broken: %s (%s:%d)\n", #c, __FILE__, __LINE__); \
            abort();                                                                         \
        }                                                                                    \
    } while (0)

/* st must be MOERT_OK, or a status that maps to exit 2 (exit 1 too when may_check) with a
 * message in e. */
void fuzz_check_status(int st, const moert_err *e, bool may_check);

/* Sends stdout to /dev/null (for harnesses that call a CLI command). */
void fuzz_quiet_stdout(void);

#endif
