/* sched: the static schedule's invariants, and the arena planner on real schedules (the
 * shipped configs, Qwen3-30B-A3B included): proven non-overlapping by arena_check and
 * within 1.10 x the lower bound. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../arena/arena.h"
#include "../runtime/config.h"
#include "../runtime/sched.h"
#include "../runtime/trace/trace.h"
#include "util.h"

/* Every op's buffers exist, lie inside their lifetimes, and every buffer is used. */
static void check_invariants(const sched *s)
{
    int *used = calloc((size_t)s->n_bufs, sizeof *used);
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        int32_t ids[9] = {op->in[0], op->in[1], op->in[2], op->out[0], op->out[1],
                          op->scratch[0], op->scratch[1], op->scratch[2], op->scratch[3]};
        for (int k = 0; k < 9; k++) {
            if (ids[k] == SCHED_NO_BUF)
                continue;
            CU_ASSERT_FATAL(ids[k] >= 0 && ids[k] < s->n_bufs);
            const sched_buffer *b = &s->bufs[ids[k]];
            CU_ASSERT(b->first <= i && i <= b->last);
            used[ids[k]] = 1;
        }
    }
    for (int32_t b = 0; b < s->n_bufs; b++) {
        bool host_side = b == s->known.sample_keys || b == s->known.sample_keys2 ||
                         b == s->known.sample_ids || b == s->known.sample_ids2 ||
                         b == s->known.sample_probs;
        if (!used[b] && !host_side)
            fprintf(stderr, "\n    buffer %s is never used by an op\n", s->bufs[b].name);
        CU_ASSERT(used[b] || host_side);
        CU_ASSERT(s->bufs[b].bytes > 0);
    }
    free(used);
}

static double plan_ratio(const sched *s, uint64_t *arena_bytes)
{
    arena_request *req = calloc((size_t)s->n_bufs, sizeof *req);
    uint64_t *off = calloc((size_t)s->n_bufs, sizeof *off);
    for (int32_t i = 0; i < s->n_bufs; i++)
        req[i] = (arena_request){s->bufs[i].bytes, 64, s->bufs[i].first, s->bufs[i].last,
                                 s->bufs[i].persistent};
    arena_stats st;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(req, (size_t)s->n_bufs, off, &st, &err), MOERT_OK);
    CU_ASSERT_EQUAL(arena_check(req, (size_t)s->n_bufs, off, st.arena_bytes, &err), MOERT_OK);
    /* the scratch alone, without the persistent buffers hiding a poor placement */
    size_t n = 0;
    for (int32_t i = 0; i < s->n_bufs; i++)
        if (!req[i].persistent)
            req[n++] = req[i];
    arena_stats scratch;
    CU_ASSERT_EQUAL(arena_plan(req, n, off, &scratch, &err), MOERT_OK);
    CU_ASSERT(scratch.arena_bytes <= scratch.lower_bound_bytes * 11 / 10);
    free(req);
    free(off);
    *arena_bytes = st.arena_bytes;
    return (double)st.arena_bytes / (double)st.lower_bound_bytes;
}

static void plan_config(const char *path, bool traced)
{
    cfg_config cfg;
    moert_err err = {0};
    int rc = cfg_load_ex(path, CFG_ALLOW_MISSING_WEIGHTS, &cfg, &err);
    if (rc) {
        fprintf(stderr, "\n    %s: %s\n", path, err.msg);
        CU_FAIL("config does not load");
        return;
    }
    trace_rt *tr = NULL;
    sched_trace_hooks hooks = {0};
    if (traced) {
        cfg.trace.enabled = true;
        cfg.trace.mode = CFG_TRACE_TENSOR;
        cfg.trace.positions = CFG_TRACE_ALL;
        cfg.trace.stages = (1u << CFG_STAGE_COUNT) - 1;
        cfg.trace.all_layers = true;
        cfg.trace.capacity = 8;
        CU_ASSERT_EQUAL_FATAL(trace_rt_create(&cfg.trace, &tr, &err), MOERT_OK);
        hooks = trace_rt_hooks(tr, &cfg.trace);
    }
    sched s;
    CU_ASSERT_EQUAL_FATAL(sched_build(&cfg.topo, cfg.rt.prefill_chunk, cfg.rt.max_seq_len, 2,
                                      traced ? &hooks : NULL, &s, &err),
                          MOERT_OK);
    check_invariants(&s);
    if (traced) {
        CU_ASSERT_EQUAL(trace_rt_bind(tr, &s, &err), MOERT_OK);
        /* 11 stages, 8 of them per layer, routers only on sparse layers */
        int64_t sparse = 0;
        for (int64_t l = 0; l < cfg.topo.num_hidden_layers; l++)
            sparse += cfg_layer_is_sparse(&cfg.topo, l);
        CU_ASSERT_EQUAL((int64_t)trace_rt_count(tr), 3 + 6 * cfg.topo.num_hidden_layers + 2 * sparse);
        CU_ASSERT_EQUAL(s.logit_rows, s.max_rows);
    } else {
        CU_ASSERT_EQUAL(s.logit_rows, 1);
    }
    uint64_t bytes = 0;
    double ratio = plan_ratio(&s, &bytes);
    if (ratio > 1.10)
        fprintf(stderr, "\n    %s: arena / lower bound = %.4f\n", path, ratio);
    CU_ASSERT(ratio <= 1.10);
    sched_free(&s);
    trace_rt_free(tr);
}

static void test_real_schedules(void)
{
    const char *configs[] = {"configs/qwen3moe.yaml", "configs/qwen3-30b-a3b.yaml",
                             "configs/bench-cpu.yaml", "configs/bench-gpu.yaml",
                             "configs/bench-gpu-48.yaml"};
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++) {
        plan_config(configs[i], false);
        plan_config(configs[i], true);
    }
}

/* One prefill chunk and one decode step are the same op list: decode is not a special
 * path, which is what lets a token's arithmetic be independent of chunking. */
static void test_op_order(void)
{
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
    sched s;
    CU_ASSERT_EQUAL_FATAL(sched_build(&cfg.topo, 8, 64, 1, NULL, &s, &err), MOERT_OK);
    CU_ASSERT_EQUAL(s.ops[0].kind, SCHED_EMBED);
    CU_ASSERT_EQUAL(s.ops[s.n_ops - 1].kind, SCHED_LOGITS);
    int moe = 0, mlp = 0, attn = 0;
    for (int32_t i = 0; i < s.n_ops; i++) {
        moe += s.ops[i].kind == SCHED_MOE;
        mlp += s.ops[i].kind == SCHED_MLP;
        attn += s.ops[i].kind == SCHED_ATTENTION;
    }
    CU_ASSERT_EQUAL(attn, 4);
    CU_ASSERT_EQUAL(mlp, 1); /* mlp_only_layers: [0] */
    CU_ASSERT_EQUAL(moe, 3);
    /* the KV cache persists; a layer's q/k/v scratch does not */
    CU_ASSERT(s.bufs[s.known.k_cache[2]].persistent);
    CU_ASSERT_EQUAL(s.bufs[s.known.k_cache[2]].rows, 64 * cfg.topo.num_key_value_heads);
    CU_ASSERT_EQUAL(s.bufs[s.known.k_cache[2]].cols, cfg.topo.head_dim);
    sched_free(&s);
    CU_ASSERT_NOT_EQUAL(sched_build(&cfg.topo, 65, 64, 1, NULL, &s, &err), MOERT_OK);
    CU_ASSERT_NOT_EQUAL(sched_build(&cfg.topo, 8, 64, 0, NULL, &s, &err), MOERT_OK);
}


/* Extreme but checked sizes (every dim and limit at 2^31 - 1): once signed overflow in the
 * scratch sizes, now the first buffer too large is named and nothing overflows. */
static void test_extreme_sizes_refused(void)
{
    cfg_topology t = {0};
    t.vocab_size = 1000;
    t.hidden_size = 64;
    t.num_hidden_layers = 2;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 2;
    t.head_dim = 16;
    t.num_experts = INT64_C(2147483647);
    t.num_experts_per_tok = INT64_C(2147483647);
    t.moe_intermediate_size = 64;
    t.decoder_sparse_step = 1;
    t.rope_theta = 1e4;
    t.rms_norm_eps = 1e-6;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_check_topology(&t, "t", &err), MOERT_OK);
    sched s;
    int64_t big = INT64_C(2147483647);
    CU_ASSERT_EQUAL(sched_build(&t, big, big, 4096, NULL, &s, &err), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(err.msg, "schedule: buffer l0.router_logits needs more than 2^63 bytes, expected at most "
                                    "281474976710656 bytes per buffer (lower prefill_chunk, max_seq_len or threads)");
    /* under the per-buffer bound but not in all: the running total is named */
    t.num_experts = 8;
    t.num_experts_per_tok = 2;
    t.num_hidden_layers = 512;
    t.num_attention_heads = 64;
    t.num_key_value_heads = 64;
    t.head_dim = 128;
    CU_ASSERT_EQUAL_FATAL(cfg_check_topology(&t, "t", &err), MOERT_OK);
    CU_ASSERT_EQUAL(sched_build(&t, 1, big, 1, NULL, &s, &err), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(err.msg, "schedule: buffers up to kv.l31.v need more than 4503599627370496 bytes in all, "
                                    "expected at most that (lower prefill_chunk, max_seq_len or threads)");
    /* the largest sizes that fit still build */
    t.num_hidden_layers = 2;
    CU_ASSERT_EQUAL(sched_build(&t, 1, big, 1, NULL, &s, &err), MOERT_OK);
    sched_free(&s);
}

void suite_sched(void)
{
    CU_pSuite s = CU_add_suite("sched", NULL, NULL);
    CU_add_test(s, "real schedules: invariants, proven plans, <= 1.10 x lower bound", test_real_schedules);
    CU_add_test(s, "op list shape", test_op_order);
    CU_add_test(s, "extreme sizes: refused by name, no overflow", test_extreme_sizes_refused);
}
