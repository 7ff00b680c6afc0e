/* A trace manifest (the fuzzer's bytes) inside the tensors of a small recorded trace
 * (tests/fuzz/data/tiny.trace): trace_file_open's ring checks, then replay's checks of the
 * recorded run (trace_manifest_run), and the recording's self-consistency check
 * (trace_verify, as trace_replay_open does).  Nothing is run. */
#include <string.h>

#include "../../runtime/st.h"
#include "../../runtime/trace/replay.h"
#include "../../runtime/trace/trace_file.h"
#include "fuzz.h"

static st_set *base;
static st_write_spec *specs;
static size_t n_specs;
static cfg_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moert_err e = {0};
    if (st_open("tests/fuzz/data/tiny.trace", &base, &e)) {
        fprintf(stderr, "fuzz_replay_manifest: %s (run from the repository root)\n", e.msg);
        exit(2);
    }
    n_specs = st_count(base);
    specs = calloc(n_specs + 1, sizeof *specs);
    FUZZ_ASSERT(specs != NULL);
    for (size_t i = 0; i < n_specs; i++) {
        const st_tensor *t = st_at(base, i);
        specs[i] = (st_write_spec){t->name, t->dtype, t->ndim, {0}};
        memcpy(specs[i].shape, t->shape, sizeof t->shape);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *manifest = fuzz_strdup(data, size);
    const char *keys[] = {"format", "moert_version", "manifest"};
    const char *vals[] = {"moert-trace", "0.1.0", manifest};
    void *hdr = NULL;
    size_t hl = 0;
    uint64_t dl = 0;
    moert_err e = {0};
    if (st_header_encode(specs, n_specs, keys, vals, 3, &hdr, &hl, &dl, &e)) { /* not UTF-8 */
        free(manifest);
        return 0;
    }
    size_t total = hl + (size_t)dl;
    uint8_t *file = malloc(total);
    FUZZ_ASSERT(file != NULL);
    memcpy(file, hdr, hl);
    size_t at = hl;
    for (size_t i = 0; i < n_specs; i++) { /* data in spec order, as st_header_encode laid it out */
        const st_tensor *t = st_at(base, i);
        memcpy(file + at, t->data, t->nbytes);
        at += t->nbytes;
    }
    const char *path = fuzz_file("manifest.trace", file, total);
    free(file);
    free(hdr);
    free(manifest);
    trace_file tf;
    int st = trace_file_open(path, &tf, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    moert_err ev = {0};
    int vst = trace_verify(&tf, path, &ev);
    fuzz_check_status(vst, &ev, false);
    int32_t *prompt, *gen;
    int64_t np, ng;
    st = trace_manifest_run(tf.manifest, path, &cfg, &prompt, &np, &gen, &ng, &e);
    fuzz_check_status(st, &e, false);
    if (!st) {
        FUZZ_ASSERT(np >= 1 && prompt && gen);
        FUZZ_ASSERT(cfg.rt.threads >= 1 && cfg.rt.threads <= 1024);
        FUZZ_ASSERT(cfg.rt.prefill_chunk >= 1 && cfg.rt.prefill_chunk <= cfg.rt.max_seq_len);
        FUZZ_ASSERT(np + (ng > 0 ? ng - 1 : 0) <= cfg.rt.max_seq_len);
        for (int64_t i = 0; i < np; i++)
            FUZZ_ASSERT(prompt[i] >= 0 && prompt[i] < cfg.topo.vocab_size);
        free(prompt);
        free(gen);
    }
    trace_file_close(&tf);
    return 0;
}
