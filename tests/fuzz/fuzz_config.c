/* A config YAML, loaded as `moert plan` loads it, then planned: the schedule and the arena
 * plan (proved by arena_check) whenever the config loads. The scratch directory holds the
 * files a config may name: tokenizer.json, contract.yaml, model.safetensors, config.json. */
#include <string.h>

#include "../../arena/arena.h"
#include "../../runtime/config.h"
#include "../../runtime/sched.h"
#include "../../runtime/trace/trace.h"
#include "fuzz.h"

static cfg_config cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_file("tokenizer.json", "{}", 2);
    fuzz_file("contract.yaml", "", 0);
    fuzz_file("model.safetensors", "", 0);
    FILE *f = fopen("tests/fixtures/qwen3-30b-a3b-hub/config.json", "rb");
    FUZZ_ASSERT(f != NULL); /* run from the repository root */
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    fuzz_file("config.json", buf, n);
    return 0;
}

static void plan(const cfg_config *c)
{
    moert_err e = {0};
    trace_rt *tr = NULL;
    sched s = {0};
    sched_trace_hooks hooks = {0};
    cfg_trace_plan tp = c->trace;
    if (tp.capacity > c->rt.max_seq_len) /* as sess_open does */
        tp.capacity = c->rt.max_seq_len;
    if (tp.enabled) {
        FUZZ_ASSERT(trace_rt_create(&tp, &tr, &e) == MOERT_OK);
        hooks = trace_rt_hooks(tr, &tp);
    }
    int32_t threads = c->rt.threads > 0 ? c->rt.threads : 2;
    int st = sched_build(&c->topo, c->rt.prefill_chunk, c->rt.max_seq_len, threads, tr ? &hooks : NULL, &s, &e);
    fuzz_check_status(st, &e, false);
    if (!st && tr)
        FUZZ_ASSERT(trace_rt_bind(tr, &s, &e) == MOERT_OK);
    if (!st && s.n_bufs <= 4096) { /* the planner is O(n log n) per strategy: keep runs fast */
        arena_request *req = calloc((size_t)s.n_bufs, sizeof *req);
        uint64_t *off = calloc((size_t)s.n_bufs, sizeof *off);
        FUZZ_ASSERT(req && off);
        for (int32_t i = 0; i < s.n_bufs; i++)
            req[i] = (arena_request){s.bufs[i].bytes ? s.bufs[i].bytes : 1, ARENA_MIN_ALIGN, s.bufs[i].first,
                                     s.bufs[i].last, s.bufs[i].persistent};
        arena_stats as;
        st = arena_plan(req, (size_t)s.n_bufs, off, &as, &e);
        fuzz_check_status(st, &e, false);
        if (!st)
            FUZZ_ASSERT(arena_check(req, (size_t)s.n_bufs, off, as.arena_bytes, &e) == MOERT_OK);
        free(req);
        free(off);
    }
    sched_free(&s);
    trace_rt_free(tr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("config.yaml", data, size);
    moert_err e = {0};
    int st = cfg_load_ex(path, CFG_ALLOW_MISSING_WEIGHTS, &cfg, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    FUZZ_ASSERT(cfg_check_topology(&cfg.topo, "fuzz", &e) == MOERT_OK);
    FUZZ_ASSERT(cfg.rt.prefill_chunk >= 1 && cfg.rt.prefill_chunk <= cfg.rt.max_seq_len);
    plan(&cfg);
    return 0;
}
