/* Shared test helpers: where fixtures live, and honest skipping.
 *
 * A test that needs something absent (../shared on a fresh clone) calls TEST_SKIP with the
 * reason and returns: it asserts nothing, and the runner lists every skip at the end, so a
 * skip is never mistaken for a pass. */
#ifndef MOERT_TEST_UTIL_H
#define MOERT_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>

/* Directory of the HF reference checkpoints (../shared/reference relative to the repo root,
 * or $MOERT_SHARED_REFERENCE) when every entry of `parts` (space-separated names inside it,
 * e.g. "gguf-tiny gguf-vocab") exists; NULL otherwise. */
const char *test_shared_parts(const char *parts);

/* Repo-relative path joined into buf (tests run from the repo root). */
const char *test_path(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a skip with its reason (printed by test_print_skips). */
void test_skip(const char *test, const char *reason);
void test_print_skips(void);
#define TEST_SKIP(reason) test_skip(__func__, (reason))

/* True when the suite runs under ASan/UBSan (MOERT_TEST_SANITIZED=1): heavy tests shrink. */
bool test_sanitized(void);

/* Runs `cmd` through /bin/sh, capturing stdout and stderr (each truncated to cap-1 bytes,
 * NUL-terminated; either may be NULL).  Returns the exit status, or -1 when it could not
 * run or was killed by a signal. */
int test_run_cmd(const char *cmd, char *out, size_t out_cap, char *errbuf, size_t err_cap);

/* The "prompt_ids" of DIR/reference.json as "1,2,3" (for --tokens); false if unreadable. */
bool test_reference_prompt(const char *dir, char *ids, size_t cap);

/* test_run_cmd with a printf-style command line. */
int test_run_cmdf(char *out, size_t out_cap, char *errbuf, size_t err_cap, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Byte offset of tensor `name`'s data in the single safetensors file `file` (a weights
 * shard or a trace), from the file's own header; -1 when absent or unreadable. */
long test_st_offset(const char *file, const char *name);

/* A fresh empty directory under build/test-tmp/ for this process. */
const char *test_tmpdir(void);

/* Removes this process's test_tmpdir (the runner calls it when every test passed; a failed
 * run keeps its files for inspection). */
void test_tmpdir_remove(void);

/* The small topology of the project's own GGUF test models (hidden 256, expert rows 384). */
struct cfg_topology;
void test_gguf_topology(struct cfg_topology *t);

/* A GGUF of test_gguf_topology's seeded weights (seed 77, f32 source) in type mix `mix`
 * ("q4_k_m", "q8_0", ...), written once per process into test_tmpdir(); NULL on failure
 * (the reason is printed). */
const char *test_synth_gguf(const char *mix);
/* The same with tie_word_embeddings (no output.weight: the LM head is token_embd). */
const char *test_synth_gguf_tied(const char *mix);

#endif
