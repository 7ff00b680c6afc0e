/* A Hugging Face config.json (cfg_import_hf), and the same file as a model directory. */
#include "../../runtime/config.h"
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
    const char *path = fuzz_file("config.json", data, size);
    cfg_topology t;
    moert_err e = {0};
    int st = cfg_import_hf(path, &t, &e);
    fuzz_check_status(st, &e, false);
    if (!st)
        FUZZ_ASSERT(cfg_check_topology(&t, "fuzz", &e) == MOERT_OK);
    moert_err e2 = {0};
    int st2 = cfg_load_ex(fuzz_dir(), CFG_ALLOW_MISSING_WEIGHTS, &cfg, &e2);
    fuzz_check_status(st2, &e2, false);
    FUZZ_ASSERT((st == MOERT_OK) == (st2 == MOERT_OK));
    if (!st2)
        FUZZ_ASSERT(cfg.rt.prefill_chunk >= 1 && cfg.rt.prefill_chunk <= cfg.rt.max_seq_len);
    return 0;
}
