/* alloc: after init, generating allocates nothing.  The whole process's allocator is
 * interposed (tests/alloc_count.c), so libc and libgomp calls count too. */
#include <CUnit/CUnit.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/session.h"
#include "alloc_count.h"
#include "util.h"

static void run_counted_mode(const char *model, bool trace, double temperature, int32_t threads, int32_t gpus,
                             cfg_numerics numerics)
{
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_PTR_NOT_NULL_FATAL(model);
    CU_ASSERT_EQUAL_FATAL(cfg_load(model, &cfg, &err), MOERT_OK);
    cfg.rt.threads = threads;
    cfg.rt.gpus = gpus;
    cfg.rt.numerics = numerics;
    cfg.rt.prefill_chunk = 8;
    cfg.sampling.temperature = temperature;
    cfg.sampling.top_k = temperature > 0 ? 40 : 0;
    cfg.sampling.top_p = temperature > 0 ? 0.9 : 1.0;
    cfg.trace.enabled = trace;
    cfg.trace.mode = CFG_TRACE_TENSOR;
    cfg.trace.positions = CFG_TRACE_ALL;
    cfg.trace.stages = (1u << CFG_STAGE_COUNT) - 1;
    cfg.trace.all_layers = true;
    cfg.trace.capacity = 16; /* smaller than the run: the rings wrap and count drops */
    snprintf(cfg.trace.out_path, sizeof cfg.trace.out_path, "%s/alloc.trace", test_tmpdir());
    sess s;
    CU_ASSERT_EQUAL_FATAL(sess_open(&s, &cfg, 0, &err), MOERT_OK);
    int32_t prompt[20];
    for (int i = 0; i < 20; i++)
        prompt[i] = (int32_t)((1000 + 37 * i) % cfg.topo.vocab_size);
    alloc_count_start();
    int st = sess_prefill(&s, prompt, 20, &err);
    for (int i = 0; i < 32 && st == MOERT_OK; i++)
        st = sess_decode(&s, sess_sample(&s), &err);
    uint64_t n = alloc_count_stop();
    CU_ASSERT_EQUAL(st, MOERT_OK);
    if (n)
        fprintf(stderr, "\n    %llu allocator calls after init (trace %d, temperature %g, threads %d)\n",
                (unsigned long long)n, trace, temperature, threads);
    for (int i = 0; i < 8 && i < (int)n; i++) {
        Dl_info info;
        void *ra = alloc_count_caller(i);
        if (dladdr(ra, &info) && info.dli_fname)
            fprintf(stderr, "    caller %d: %s %s+%#lx\n", i, info.dli_fname,
                    info.dli_sname ? info.dli_sname : "?",
                    (unsigned long)((char *)ra - (char *)(info.dli_sname ? info.dli_saddr : info.dli_fbase)));
    }
    CU_ASSERT_EQUAL(n, 0);
    sess_close(&s);
}

static void run_counted_gpus(const char *model, bool trace, double temperature, int32_t threads, int32_t gpus)
{
    run_counted_mode(model, trace, temperature, threads, gpus, CFG_NUMERICS_EXACT);
}

static void run_counted_on(const char *model, bool trace, double temperature, int32_t threads)
{
    run_counted_gpus(model, trace, temperature, threads, 1);
}

static void run_counted(bool trace, double temperature, int32_t threads)
{
    run_counted_on("configs/qwen3moe.yaml", trace, temperature, threads);
}

/* A GGUF model (block-quantized weights, K mix with fallbacks) allocates nothing either. */
static void test_no_alloc_gguf(void)
{
    run_counted_on(test_synth_gguf("q4_k_m"), false, 0.0, 2);
    run_counted_on(test_synth_gguf("q8_0"), true, 0.8, 2);
}

/* numerics act-q8 quantizes into arena scratch: nothing allocates (prefill chunks, decode,
 * the simulated ranks' path too). */
static void test_no_alloc_act_q8(void)
{
    run_counted_mode(test_synth_gguf("q4_k_m"), true, 0.0, 2, 1, CFG_NUMERICS_ACT_Q8);
    run_counted_mode(test_synth_gguf("q5_0"), false, 0.8, 2, 2, CFG_NUMERICS_ACT_Q8);
}

static void test_no_alloc_greedy(void)
{
    run_counted(false, 0.0, 2);
}

static void test_no_alloc_sampling_traced(void)
{
    run_counted(true, 0.8, 2);
    run_counted(true, 0.0, 1);
}

/* Routing replay reads the mapped trace and precision simulation rounds in place: neither
 * allocates.  The replay fixture's own prompt and tokens are run, forced to its routing. */
static void test_no_alloc_route_sim(void)
{
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
    cfg.rt.threads = 2;
    cfg.rt.prefill_chunk = 4;
    cfg.rt.sim_precision = CFG_SIM_BF16;
    snprintf(cfg.rt.route_from, sizeof cfg.rt.route_from, "tests/fixtures/replay/default.trace");
    cfg.trace.enabled = true;
    cfg.trace.positions = CFG_TRACE_ALL;
    cfg.trace.stages = (1u << CFG_STAGE_COUNT) - 1;
    cfg.trace.all_layers = true;
    cfg.trace.capacity = 64;
    snprintf(cfg.trace.out_path, sizeof cfg.trace.out_path, "%s/alloc-route.trace", test_tmpdir());
    sess s;
    CU_ASSERT_EQUAL_FATAL(sess_open(&s, &cfg, 0, &err), MOERT_OK);
    const int32_t *prompt, *gen;
    int64_t n_prompt, n_gen;
    trace_route_ids(s.route, &prompt, &n_prompt, &gen, &n_gen);
    CU_ASSERT_FATAL(n_gen > 2);
    alloc_count_start();
    int st = sess_prefill(&s, prompt, n_prompt, &err);
    for (int64_t i = 0; i + 1 < n_gen && st == MOERT_OK; i++)
        st = sess_decode(&s, gen[i], &err);
    uint64_t n = alloc_count_stop();
    CU_ASSERT_EQUAL(st, MOERT_OK);
    CU_ASSERT_EQUAL(n, 0);
    sess_close(&s);
}

/* Expert parallelism on the CPU (4 simulated ranks, the loopback's all-gather): its
 * gather buffer is an arena request, so nothing allocates either. */
static void test_no_alloc_expert_parallel(void)
{
    run_counted_gpus("configs/qwen3moe.yaml", true, 0.8, 2, 4);
    run_counted_gpus("configs/qwen3moe.yaml", false, 0.0, 1, 2);
}

/* The counter itself must see allocations, or the tests above prove nothing. */
static void test_counter_counts(void)
{
    alloc_count_start();
    char *volatile p = malloc(17);
    free(p);
    CU_ASSERT_EQUAL(alloc_count_stop(), 2);
}

void suite_alloc(void)
{
    CU_pSuite s = CU_add_suite("alloc", NULL, NULL);
    CU_add_test(s, "the counter counts", test_counter_counts);
    CU_add_test(s, "no allocation after init: prefill + 32 greedy decode steps", test_no_alloc_greedy);
    CU_add_test(s, "no allocation after init: sampling, tensor tracing", test_no_alloc_sampling_traced);
    CU_add_test(s, "no allocation after init: GGUF models", test_no_alloc_gguf);
    CU_add_test(s, "no allocation after init: numerics act-q8", test_no_alloc_act_q8);
    CU_add_test(s, "no allocation after init: --route-from, --sim-precision", test_no_alloc_route_sim);
    CU_add_test(s, "no allocation after init: --gpus 2, 4 (CPU loopback)", test_no_alloc_expert_parallel);
}
