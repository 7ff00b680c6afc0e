/* The CLI's numeric arguments: the input split at newlines into flag values (--threads,
 * --prefill-chunk, --max-seq-len, --seed, --temp, --top-k, --top-p, --tokens) applied to a
 * tiny config with cli_load_config, each also through the bare parsers; an accepted set of
 * values builds a schedule. */
#include <string.h>

#include "../../runtime/cli/cli_common.h"
#include "../../runtime/sched.h"
#include "fuzz.h"

static cfg_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_strdup(data, size);
    char *v[8] = {0};
    int nv = 0;
    for (char *p = text; nv < 8 && p; nv++) {
        v[nv] = p;
        p = strchr(p, '\n');
        if (p)
            *p++ = '\0';
    }
    moert_err e = {0};
    for (int i = 0; i < nv; i++) {
        int64_t x;
        double d;
        int32_t ids[64];
        int64_t n;
        moert_err e1 = {0}, e2 = {0}, e3 = {0};
        fuzz_check_status(cli_parse_i64("--n", v[i], -5, INT64_MAX, &x, &e1), &e1, false);
        fuzz_check_status(cli_parse_f64("--x", v[i], 0, 1e6, &d, &e2), &e2, false);
        int st = cli_parse_ids("--tokens", v[i], ids, 64, &n, &e3);
        fuzz_check_status(st, &e3, false);
        if (!st)
            FUZZ_ASSERT(n >= 1 && n <= 64);
    }
    cli_overrides ov = {0};
    const char **slots[] = {&ov.threads, &ov.prefill_chunk, &ov.max_seq_len, &ov.seed, &ov.temp, &ov.top_k, &ov.top_p};
    for (int i = 0; i < nv && i < 7; i++)
        *slots[i] = v[i];
    int st = cli_load_config("tests/fuzz/data/tiny.yaml", &ov, 0, &cfg, &e);
    fuzz_check_status(st, &e, false);
    if (!st) {
        FUZZ_ASSERT(cfg.rt.prefill_chunk >= 1 && cfg.rt.prefill_chunk <= cfg.rt.max_seq_len);
        FUZZ_ASSERT(cfg.sampling.top_k >= 0 && cfg.sampling.top_k <= cfg.topo.vocab_size);
        FUZZ_ASSERT(cfg.sampling.top_p > 0 && cfg.sampling.top_p <= 1 && cfg.sampling.temperature >= 0);
        sched s;
        st = sched_build(&cfg.topo, cfg.rt.prefill_chunk, cfg.rt.max_seq_len, cfg.rt.threads > 0 ? cfg.rt.threads : 1,
                         NULL, &s, &e);
        fuzz_check_status(st, &e, false);
        if (!st)
            sched_free(&s);
    }
    free(text);
    return 0;
}
