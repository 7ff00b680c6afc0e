/* shard: expert-parallel sharding (runtime/shard.c), the loopback collectives
 * (runtime/comm.c) and the N-rank CPU MoE step: placement arithmetic against hand counts and
 * against wlayout's region, the 235B plan refused on one H200 and fitting on four, and runs
 * with gpus 2, 4, 8 bit-identical to gpus 1 (logits, and every record of a tensor trace). */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/comm.h"
#include "../runtime/ggufmap.h"
#include "../runtime/plan.h"
#include "../runtime/session.h"
#include "../runtime/shard.h"
#include "../runtime/wlayout.h"
#include "util.h"

#define OUTCAP (1 << 20)
static char out[OUTCAP], errb[OUTCAP];
#define sh(...) test_run_cmdf(out, sizeof out, errb, sizeof errb, __VA_ARGS__)

static const char *const fixtures[] = {"tests/fixtures/hf/long-prompt", "tests/fixtures/hf/gqa4-hd24",
                                       "tests/fixtures/hf/f16-mqa-odd", "tests/fixtures/hf/top1-dense-bf16",
                                       "tests/fixtures/hf/topk-all-tied-bf16"};
#define N_FIXTURES (sizeof fixtures / sizeof fixtures[0])

static void test_owner(void)
{
    for (int64_t e = 0; e < 20; e++) {
        CU_ASSERT_EQUAL(shard_expert_owner(e, 1), 0);
        CU_ASSERT_EQUAL(shard_expert_owner(e, 4), e % 4);
    }
    /* 10 experts over 4 ranks: 3, 3, 2, 2, the sum is every expert */
    cfg_topology t = {.vocab_size = 7, .hidden_size = 4, .num_hidden_layers = 2, .num_attention_heads = 2,
                      .num_key_value_heads = 1, .head_dim = 2, .num_experts = 10, .num_experts_per_tok = 2,
                      .moe_intermediate_size = 3, .intermediate_size = 5, .decoder_sparse_step = 1};
    shard_weights w[4];
    shard_weights_topo(&t, 4, 4, w);
    CU_ASSERT_EQUAL(w[0].experts_per_layer, 3);
    CU_ASSERT_EQUAL(w[1].experts_per_layer, 3);
    CU_ASSERT_EQUAL(w[2].experts_per_layer, 2);
    CU_ASSERT_EQUAL(w[3].experts_per_layer, 2);
    /* hand count: embed + lm head 2*7*4, final norm 4; per layer norms 4+4, q 4*4, k, v 2*4 each,
     * o 4*4, q/k norms 2+2, router 10*4 -> 2 * 92; experts 10 * 3 * 3 * 4 per layer */
    uint64_t rep, ex;
    shard_params(&t, &rep, &ex);
    CU_ASSERT_EQUAL(rep, 2 * 7 * 4 + 4 + 2 * (4 + 4 + 16 + 8 + 8 + 16 + 2 + 2 + 40));
    CU_ASSERT_EQUAL(ex, 2 * 10 * 3 * 3 * 4);
    /* every tensor pads to 256 bytes at this size: 3 experts x 3 matrices x 2 layers */
    CU_ASSERT_EQUAL(w[0].expert_bytes, 3 * 3 * 2 * WLAYOUT_ALIGN);
    CU_ASSERT_EQUAL(w[0].replicated_bytes, (3 + 2 * 9) * WLAYOUT_ALIGN);
}

/* The bound fixtures: shard's N = 1 region is wlayout's, the ranks' experts add up to it,
 * and a uniform-dtype model sized from its topology agrees with its bound tensors. */
static void test_weights_vs_wlayout(void)
{
    for (size_t f = 0; f < N_FIXTURES; f++) {
        cfg_config cfg;
        moert_err err = {0};
        st_set *set = NULL;
        model_weights mw = {0};
        wlayout wl = {0};
        CU_ASSERT_EQUAL_FATAL(cfg_load(fixtures[f], &cfg, &err), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(ggufmap_open_weights(cfg.weights.path, &set, &err), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(model_bind(&cfg.topo, set, &mw, &err), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(wlayout_plan(&mw, &wl, &err), MOERT_OK);
        shard_weights one, w[SHARD_MAX_GPUS], tw[SHARD_MAX_GPUS];
        shard_weights_bound(&mw, 1, &one);
        CU_ASSERT_EQUAL(one.replicated_bytes + one.expert_bytes, wl.bytes);
        int dt = -1;
        bool uniform = true;
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (mw.bytes_by_dtype[d]) {
                uniform = uniform && dt < 0;
                dt = d;
            }
        for (int32_t n = 2; n <= 8; n *= 2) {
            shard_weights_bound(&mw, n, w);
            uint64_t sum = 0;
            int64_t experts = 0;
            for (int32_t r = 0; r < n; r++) {
                CU_ASSERT_EQUAL(w[r].replicated_bytes, one.replicated_bytes);
                sum += w[r].expert_bytes;
                experts += w[r].experts_per_layer;
            }
            CU_ASSERT_EQUAL(sum, one.expert_bytes);
            CU_ASSERT_EQUAL(experts, cfg.topo.num_experts);
            if (uniform) {
                shard_weights_topo(&cfg.topo, st_dtype_size((st_dtype)dt), n, tw);
                for (int32_t r = 0; r < n; r++)
                    CU_ASSERT(!memcmp(&tw[r], &w[r], sizeof w[r]));
            }
        }
        wlayout_free(&wl);
        model_unbind(&mw);
        st_close(set);
    }
}

static int plan_235b(int32_t gpus, shard_plan *sp, moert_err *err)
{
    cfg_config *cfg = malloc(sizeof *cfg);
    plan_run *p = malloc(sizeof *p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p);
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3-235b-a22b.yaml", cfg, err), MOERT_OK);
    cfg->rt.gpus = gpus;
    cfg->rt.threads = 2;
    CU_ASSERT_EQUAL_FATAL(plan_build(cfg, 0, p, err), MOERT_OK);
    shard_weights w[SHARD_MAX_GPUS];
    shard_weights_topo(&cfg->topo, 2, gpus, w);
    int st = shard_plan_build(&p->schedule, p->stats.arena_bytes, gpus, w, UINT64_C(139) << 30, sp, err);
    plan_free(p);
    free(p);
    free(cfg);
    return st;
}

/* Qwen3-235B-A22B in bf16: about 235 B parameters (470 GB) refuse one 139 GiB GPU and two,
 * and fit four (each a quarter of the experts plus every replicated tensor). */
static void test_235b(void)
{
    cfg_config *cfg = malloc(sizeof *cfg);
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3-235b-a22b.yaml", cfg, &err), MOERT_OK);
    uint64_t rep, ex;
    shard_params(&cfg->topo, &rep, &ex);
    CU_ASSERT(rep + ex > UINT64_C(234000000000) && rep + ex < UINT64_C(236000000000));
    CU_ASSERT_EQUAL(ex, UINT64_C(94) * 128 * 3 * 1536 * 4096);
    free(cfg);
    shard_plan sp;
    CU_ASSERT_EQUAL(plan_235b(1, &sp, &err), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "over the device memory"));
    CU_ASSERT(!sp.fits && sp.max_total_bytes > (UINT64_C(139) << 30));
    CU_ASSERT_EQUAL(plan_235b(2, &sp, &err), MOERT_ECONFIG);
    CU_ASSERT_EQUAL(plan_235b(4, &sp, &err), MOERT_OK);
    CU_ASSERT(sp.fits);
    for (int32_t r = 0; r < 4; r++) {
        CU_ASSERT_EQUAL(sp.gpu[r].w.experts_per_layer, 32);
        CU_ASSERT(sp.gpu[r].total_bytes <= (UINT64_C(139) << 30));
        CU_ASSERT(sp.gpu[r].kv_bytes > 0 && sp.gpu[r].kv_bytes < sp.gpu[r].arena_bytes);
        /* f32 KV cache: layers x 2 x kv heads x max_seq x head_dim x 4 bytes */
        CU_ASSERT_EQUAL(sp.gpu[r].kv_bytes, UINT64_C(94) * 2 * 4 * 4096 * 128 * 4);
    }
}

static void test_plan_cli(void)
{
    const char *cfg = "configs/qwen3-235b-a22b.yaml";
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 1", cfg), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "over the device memory of 139.00 GiB by"));
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 4 --json", cfg), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"per_gpu\""));
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 8", cfg), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "gpu 7: 16 experts/layer"));
    /* a smaller device refuses what 139 GiB holds */
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 4 --device-memory 80", cfg), 2);
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 3", cfg), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "expected 1, 2, 4 or 8"));
    CU_ASSERT_EQUAL(sh("./moert plan %s --gpus 4 --device-memory lots", cfg), 2);
    /* a CPU plan checks device memory only when asked */
    CU_ASSERT_EQUAL(sh("./moert plan %s --backend cpu --max-seq-len 64", "configs/qwen3-30b-a3b.yaml"), 0);
    /* the CLI's replay takes --gpus: a 4-rank trace replays bit-exactly on 2; 3 is refused */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2,3 -n 3 --gpus 4 --trace build/test-gpus4.trace"), 0);
    CU_ASSERT_EQUAL(sh("./moert replay build/test-gpus4.trace --gpus 2"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
    CU_ASSERT_EQUAL(sh("./moert replay build/test-gpus4.trace --gpus 3"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "expected 1, 2, 4 or 8"));
    remove("build/test-gpus4.trace");
    /* the hip backend refuses more than one GPU by name (before any weights are made) */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --backend hip --gpus 2 --tokens 1,2"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "runtime.gpus = 2"));
}

static void test_config_key(void)
{
    cfg_config *cfg = malloc(sizeof *cfg);
    moert_err err = {0};
    const char *base = "model: {vocab_size: 8, hidden_size: 4, num_hidden_layers: 1, num_attention_heads: 1, "
                       "num_key_value_heads: 1, num_experts: 2, num_experts_per_tok: 1, "
                       "moe_intermediate_size: 2, rope_theta: 10000, rms_norm_eps: 1.0e-6}\n"
                       "weights: {synth: {seed: 1}}\n";
    char yaml[1024];
    CU_ASSERT_EQUAL(cfg_load_string(base, "t.yaml", ".", cfg, &err), MOERT_OK);
    CU_ASSERT_EQUAL(cfg->rt.gpus, 1);
    const int ok[] = {1, 2, 4, 8}, bad[] = {0, 3, 5, 16, -1};
    for (size_t i = 0; i < 4; i++) {
        snprintf(yaml, sizeof yaml, "%sruntime: {gpus: %d}\n", base, ok[i]);
        CU_ASSERT_EQUAL(cfg_load_string(yaml, "t.yaml", ".", cfg, &err), MOERT_OK);
        CU_ASSERT_EQUAL(cfg->rt.gpus, ok[i]);
    }
    for (size_t i = 0; i < 5; i++) {
        snprintf(yaml, sizeof yaml, "%sruntime: {gpus: %d}\n", base, bad[i]);
        CU_ASSERT_EQUAL(cfg_load_string(yaml, "t.yaml", ".", cfg, &err), MOERT_ECONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "t.yaml:3:17"));
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "runtime.gpus"));
    }
    free(cfg);
}

static void test_comm_loopback(void)
{
    comm c;
    moert_err err = {0};
    CU_ASSERT_EQUAL(comm_init(&c, COMM_LOOPBACK, 0, &err), MOERT_EUSAGE);
    CU_ASSERT_EQUAL(comm_init(&c, COMM_LOOPBACK, COMM_MAX_RANKS + 1, &err), MOERT_EUSAGE);
    CU_ASSERT_EQUAL(comm_init(&c, COMM_NCCL, 2, &err), MOERT_ENODEV);
    CU_ASSERT_EQUAL_FATAL(comm_init(&c, COMM_LOOPBACK, 4, &err), MOERT_OK);
    /* distinct buffers: rank r's slice r is r*10 + i; afterwards every buffer holds all */
    int32_t mem[4][4 * 3];
    void *bufs[4];
    for (int r = 0; r < 4; r++) {
        for (int i = 0; i < 12; i++)
            mem[r][i] = -1;
        for (int i = 0; i < 3; i++)
            mem[r][r * 3 + i] = r * 10 + i;
        bufs[r] = mem[r];
    }
    CU_ASSERT_EQUAL(comm_allgather(&c, bufs, 3 * sizeof(int32_t), &err), MOERT_OK);
    for (int q = 0; q < 4; q++)
        for (int r = 0; r < 4; r++)
            for (int i = 0; i < 3; i++)
                CU_ASSERT_EQUAL(mem[q][r * 3 + i], r * 10 + i);
    /* one shared buffer (the CPU's simulated ranks): nothing moves */
    for (int r = 0; r < 4; r++)
        bufs[r] = mem[0];
    CU_ASSERT_EQUAL(comm_allgather(&c, bufs, 3 * sizeof(int32_t), &err), MOERT_OK);
    for (int r = 0; r < 4; r++)
        CU_ASSERT_EQUAL(mem[0][r * 3], r * 10);
    int32_t b[4][2] = {{1, 2}, {0, 0}, {7, 7}, {0, 0}};
    for (int r = 0; r < 4; r++)
        bufs[r] = b[r];
    CU_ASSERT_EQUAL(comm_broadcast(&c, bufs, sizeof b[0], 2, &err), MOERT_OK);
    for (int r = 0; r < 4; r++)
        CU_ASSERT(b[r][0] == 7 && b[r][1] == 7);
    CU_ASSERT_EQUAL(comm_broadcast(&c, bufs, sizeof b[0], 4, &err), MOERT_EUSAGE);
}

static bool logits_after(const char *dir, int32_t gpus, int threads, int64_t chunk, const int32_t *ids, int64_t n,
                         float *logits, int64_t V)
{
    cfg_config cfg;
    moert_err err = {0};
    if (cfg_load(dir, &cfg, &err))
        return false;
    cfg.rt.gpus = gpus;
    cfg.rt.threads = threads;
    cfg.rt.max_seq_len = n + 8;
    cfg.rt.prefill_chunk = chunk;
    sess s;
    bool ok = sess_open(&s, &cfg, SESS_NO_TRACE, &err) == MOERT_OK;
    if (ok)
        ok = sess_prefill(&s, ids, n, &err) == MOERT_OK;
    for (int i = 0; ok && i < 3; i++)
        ok = sess_decode(&s, sess_sample(&s), &err) == MOERT_OK;
    if (ok)
        memcpy(logits, sess_logits(&s), (size_t)V * sizeof *logits);
    else
        fprintf(stderr, "\n    %s gpus %d: %s\n", dir, gpus, err.msg);
    sess_close(&s);
    return ok;
}

/* Every fixture: logits after a chunked prefill and 3 decode steps, bit-identical for
 * gpus 2, 4, 8 (8 ranks over fewer experts leaves ranks idle) and any thread count. */
static void test_logits_bit_identical(void)
{
    for (size_t f = 0; f < N_FIXTURES; f++) {
        cfg_config cfg;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(cfg_load(fixtures[f], &cfg, &err), MOERT_OK);
        int64_t V = cfg.topo.vocab_size;
        int32_t ids[24];
        for (int i = 0; i < 24; i++)
            ids[i] = (int32_t)((7 + 31 * i) % V);
        float *base = malloc((size_t)V * sizeof *base), *other = malloc((size_t)V * sizeof *other);
        CU_ASSERT_FATAL(logits_after(fixtures[f], 1, 1, 24, ids, 24, base, V));
        const struct {
            int32_t gpus;
            int threads;
            int64_t chunk;
        } v[] = {{2, 1, 24}, {4, 2, 5}, {8, 2, 24}, {2, 2, 1}, {4, 1, 24}};
        for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) {
            CU_ASSERT_FATAL(logits_after(fixtures[f], v[k].gpus, v[k].threads, v[k].chunk, ids, 24, other, V));
            bool same = !memcmp(base, other, (size_t)V * sizeof *base);
            if (!same)
                fprintf(stderr, "\n    %s: logits differ at gpus %d threads %d chunk %lld\n", fixtures[f],
                        v[k].gpus, v[k].threads, (long long)v[k].chunk);
            CU_ASSERT(same);
        }
        free(base);
        free(other);
    }
}

static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(len > 0 ? (size_t)len : 1);
    *n = b ? fread(b, 1, (size_t)len, f) : 0;
    fclose(f);
    return b;
}

/* Tensor traces of every stage at every position: the files recorded with gpus 1, 2, 4 are
 * the same bytes, and the one recorded with 4 ranks replays bit-exactly on one. */
static void test_trace_bit_identical(void)
{
    const char *models[] = {"tests/fixtures/replay/record.yaml", "tests/fixtures/hf/long-prompt",
                            "tests/fixtures/hf/topk-all-tied-bf16"};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        char path[3][512];
        char *data[3] = {0};
        size_t len[3] = {0};
        const int32_t gpus[3] = {1, 2, 4};
        for (int g = 0; g < 3; g++) {
            snprintf(path[g], sizeof path[g], "%s/ep%zu-g%d.trace", test_tmpdir(), m, gpus[g]);
            int rc = sh("./moert run %s --tokens 3,1,4,1,5,9,2,6,5,3 -n 4 --threads 2 --gpus %d --trace %s "
                        "--trace-mode tensor --trace-positions all",
                        models[m], gpus[g], path[g]);
            if (rc)
                fprintf(stderr, "\n    %s\n", errb);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            data[g] = slurp(path[g], &len[g]);
            CU_ASSERT_PTR_NOT_NULL_FATAL(data[g]);
        }
        for (int g = 1; g < 3; g++) {
            CU_ASSERT_EQUAL(len[g], len[0]);
            CU_ASSERT(len[g] == len[0] && !memcmp(data[g], data[0], len[0]));
        }
        CU_ASSERT_EQUAL(sh("./moert replay %s", path[2]), 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
        for (int g = 0; g < 3; g++)
            free(data[g]);
    }
}

void suite_shard(void)
{
    CU_pSuite s = CU_add_suite("shard", NULL, NULL);
    CU_add_test(s, "expert ownership and parameter counts by hand", test_owner);
    CU_add_test(s, "per-GPU weights agree with wlayout's region", test_weights_vs_wlayout);
    CU_add_test(s, "Qwen3-235B-A22B bf16: 1 and 2 GPUs refused, 4 fit", test_235b);
    CU_add_test(s, "moert plan --gpus / --device-memory, hip --gpus refused", test_plan_cli);
    CU_add_test(s, "runtime.gpus accepts 1, 2, 4, 8 only", test_config_key);
    CU_add_test(s, "loopback all-gather and broadcast", test_comm_loopback);
    CU_add_test(s, "gpus 2, 4, 8: logits bit-identical to gpus 1 (fixtures)", test_logits_bit_identical);
    CU_add_test(s, "gpus 1, 2, 4: tensor traces byte-identical; replay across N", test_trace_bit_identical);
}
