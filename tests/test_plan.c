/* plan: the one plan step that `moert run` (sess_open) and `moert plan` share, and the
 * backends' scratch requests in it: every backend buffer placed in the arena and proven
 * by the checker, the HIP backend's included, on a machine without a GPU. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../arena/arena.h"
#include "../hip/hip_scratch.h"
#include "../runtime/backend.h"
#include "../runtime/plan.h"
#include "../runtime/session.h"
#include "util.h"

static void load(const char *path, cfg_config *cfg)
{
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load(path, cfg, &err), MOERT_OK);
}

static void trace_everything(cfg_config *cfg)
{
    cfg->trace.enabled = true;
    cfg->trace.mode = CFG_TRACE_STATS;
    cfg->trace.positions = CFG_TRACE_LAST;
    cfg->trace.stages = (1u << CFG_STAGE_COUNT) - 1;
    cfg->trace.all_layers = true;
    cfg->trace.capacity = 16;
}

static int32_t find_buf(const sched *s, const char *name)
{
    for (int32_t i = 0; i < s->n_bufs; i++)
        if (!strcmp(s->bufs[i].name, name))
            return i;
    return SCHED_NO_BUF;
}

/* The independent checker accepts the plan as built, every buffer lies in the arena at its
 * alignment, and no op names a backend's scratch (the schedule does not know backends). */
static void check_plan(const plan_run *p)
{
    const sched *s = &p->schedule;
    arena_request *req = calloc((size_t)s->n_bufs, sizeof *req);
    CU_ASSERT_FATAL(req != NULL);
    for (int32_t i = 0; i < s->n_bufs; i++) {
        req[i] = plan_request(&s->bufs[i]);
        CU_ASSERT(p->offsets[i] % req[i].align == 0);
        CU_ASSERT(p->offsets[i] + s->bufs[i].bytes <= p->stats.arena_bytes);
    }
    moert_err err = {0};
    CU_ASSERT_EQUAL(arena_check(req, (size_t)s->n_bufs, p->offsets, p->stats.arena_bytes, &err), MOERT_OK);
    free(req);
    CU_ASSERT_EQUAL(p->scratch0 + p->n_scratch, s->n_bufs);
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        int32_t ids[9] = {op->in[0], op->in[1], op->in[2], op->out[0], op->out[1],
                          op->scratch[0], op->scratch[1], op->scratch[2], op->scratch[3]};
        for (int k = 0; k < 9; k++)
            CU_ASSERT(ids[k] < p->scratch0);
    }
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* The split-k rule (hip_scratch.h) on hand-worked shapes, and the partials' bytes on
 * bench-gpu (Qwen3-30B-A3B's layer): the o projection (2048 outputs of 4096) splits in 3,
 * the router (128 of 2048) in 8, qkv (5120 of 2048) and the LM head not at all; the largest
 * partials, o's 3 x 512 x 2048 floats, share the MoE h planes' bytes. */
static void test_hip_splitk(void)
{
    CU_ASSERT_EQUAL(hip_splitk_parts(2048, 4096), 3);  /* (6144 + 1024) / 2048 */
    CU_ASSERT_EQUAL(hip_splitk_parts(128, 2048), 8);   /* 48, capped at 8; 64 k tiles / 8 = 8 */
    CU_ASSERT_EQUAL(hip_splitk_parts(128, 1024), 4);   /* 32 k tiles: at most 4 parts of 8 */
    CU_ASSERT_EQUAL(hip_splitk_parts(5120, 2048), 1);  /* (6144 + 2560) / 5120 */
    CU_ASSERT_EQUAL(hip_splitk_parts(151936, 2048), 1);
    CU_ASSERT_EQUAL(hip_splitk_parts(16, 128), 1);     /* 4 k tiles: too short to split */
    CU_ASSERT_EQUAL(hip_splitk_parts(0, 4096), 1);
    cfg_config cfg;
    load("configs/bench-gpu.yaml", &cfg);
    plan_run p;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
    check_plan(&p);
    const sched *s = &p.schedule;
    hip_planes_layout L = hip_scratch_planes(s);
    uint64_t rows = 512, x = rows * 4096 * 6, h = rows * 8 * 768 * 6, part = 3 * rows * 2048 * 4;
    CU_ASSERT_EQUAL(s->max_rows, 512);
    CU_ASSERT_EQUAL(L.x_bytes, x);
    CU_ASSERT_EQUAL(L.h_offset, x);
    CU_ASSERT_EQUAL(L.part_offset, x);
    CU_ASSERT_EQUAL(L.part_bytes, part);
    CU_ASSERT_EQUAL(L.bytes, x + (h > part ? h : part));
    int32_t b = find_buf(s, "hip.a_planes");
    CU_ASSERT_FATAL(b >= 0);
    CU_ASSERT_EQUAL(s->bufs[b].bytes, L.bytes);
    plan_free(&p);
}

/* The HIP backend's requests against sizes worked out from the kernels' layouts
 * (hip/kernels.hip: attention partials [head][split][head_dim + 2], the tile table
 * 1 + 3 x tiles, two shadow parities of 4 words per ring). */
static void test_hip_requests(void)
{
    cfg_config cfg;
    load("configs/qwen3moe.yaml", &cfg);
    cfg.rt.backend = CFG_BACKEND_HIP;
    trace_everything(&cfg);
    plan_run p;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
    check_plan(&p);
    const sched *s = &p.schedule;
    const cfg_topology *t = &s->topo;
    CU_ASSERT_EQUAL(p.n_scratch, HIP_REQ_COUNT);
    int64_t rings = (int64_t)trace_rt_count(p.trace);
    CU_ASSERT(rings > 0);
    /* end-of-step capture: a snapshot of every TRACE op's inputs (64-float units), a table
     * entry of at most 128 bytes and 2304 bytes of wide partials per ring */
    uint64_t snap = 0;
    for (int32_t i = 0; i < s->n_ops; i++)
        for (int q = 0; q < 2; q++)
            if (s->ops[i].kind == SCHED_TRACE && s->ops[i].in[q] >= 0)
                snap += ceil_div((uint64_t)s->bufs[s->ops[i].in[q]].cols, 64) * 64 * 4;
    uint64_t batch = ceil_div(ceil_div(snap, 256) * 256 + 128 * (uint64_t)rings, 256) * 256 + 2304 * (uint64_t)rings;
    uint64_t kmax = (uint64_t)t->hidden_size, qdim = (uint64_t)(t->num_attention_heads * t->head_dim);
    kmax = qdim > kmax ? qdim : kmax;
    uint64_t planes = ceil_div(6 * (uint64_t)s->max_rows * kmax, 256) * 256 +
                      ceil_div(6 * (uint64_t)(s->max_rows * t->num_experts_per_tok * t->moe_intermediate_size), 256) * 256;
    struct {
        const char *name;
        uint64_t bytes;
        bool persistent;
    } want[] = {
        {"hip.params", 64, true}, /* 4 long long, 2 int, 4 int32 tokens, 2 int of padding */
        {"hip.flags", 132, true},
        {"hip.trace_shadow", 2 * 4 * 8 * (uint64_t)rings, true},
        {"hip.attn_part",
         (uint64_t)t->num_attention_heads * ceil_div((uint64_t)s->max_seq, 32) * (uint64_t)(t->head_dim + 2) * 4,
         false},
        {"hip.attn_tickets", 4 * (uint64_t)t->num_key_value_heads, true},
        {"hip.moe_tiles",
         4 * (1 + 3 * (ceil_div((uint64_t)(s->max_rows * t->num_experts_per_tok), 32) + (uint64_t)t->num_experts)),
         false},
        {"hip.argmax_part", 2 * 4 * 128, false},
        {"hip.trace_batch", batch, true},
        {"hip.act_q8", 1, false}, /* numerics exact: nothing (one alignment unit) */
        /* 3 bf16 planes: the widest dense GEMM input or the MoE input, then the MoE's SwiGLU rows */
        {"hip.a_planes", planes, false},
    };
    CU_ASSERT_EQUAL_FATAL(sizeof want / sizeof want[0], HIP_REQ_COUNT);
    for (int i = 0; i < HIP_REQ_COUNT; i++) {
        const sched_buffer *b = &s->bufs[p.scratch0 + i];
        CU_ASSERT_STRING_EQUAL(b->name, want[i].name);
        CU_ASSERT_EQUAL(b->bytes, ceil_div(want[i].bytes, 256) * 256); /* whole alignment units */
        CU_ASSERT_EQUAL(b->persistent, want[i].persistent);
        CU_ASSERT_EQUAL(b->align, HIP_SCRATCH_ALIGN);
        CU_ASSERT(p.offsets[p.scratch0 + i] % HIP_SCRATCH_ALIGN == 0);
    }
    /* the CPU backend's scratch is not in the device arena */
    CU_ASSERT_EQUAL(find_buf(s, "cpu.panel"), SCHED_NO_BUF);
    CU_ASSERT_EQUAL(find_buf(s, "cpu.rowptrs"), SCHED_NO_BUF);
    CU_ASSERT_EQUAL(find_buf(s, "cpu.scores"), SCHED_NO_BUF);
    plan_free(&p);

    /* numerics act-q8: max_rows quantized rows of the widest dense input (ops_qact_row_bytes:
     * 2k + k/4 + k/64 + k/8 rounded up to 64), then max_rows x top-k MoE hidden rows */
    cfg.rt.numerics = CFG_NUMERICS_ACT_Q8;
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
    check_plan(&p);
    {
        const sched *q = &p.schedule;
        const cfg_topology *u = &q->topo;
        int64_t ka = u->hidden_size > q->q_dim ? u->hidden_size : q->q_dim;
        if (u->intermediate_size > ka)
            ka = u->intermediate_size;
        int64_t kb = u->moe_intermediate_size > u->intermediate_size ? u->moe_intermediate_size : u->intermediate_size;
        uint64_t ra = ceil_div((uint64_t)(2 * ka + ka / 4 + ka / 64 + ka / 8), 64) * 64;
        uint64_t rb = ceil_div((uint64_t)(2 * kb + kb / 4 + kb / 64 + kb / 8), 64) * 64;
        uint64_t qa = ceil_div((uint64_t)q->max_rows * ra, 256) * 256 +
                      (uint64_t)(q->max_rows * u->num_experts_per_tok) * rb;
        int32_t b = find_buf(q, "hip.act_q8");
        CU_ASSERT_EQUAL(b, p.scratch0 + HIP_REQ_QACT);
        CU_ASSERT_EQUAL(q->bufs[b].bytes, ceil_div(qa, 256) * 256);
        CU_ASSERT(q->bufs[b].bytes > 256);
    }
    plan_free(&p);
    cfg.rt.numerics = CFG_NUMERICS_EXACT;

    /* MOERT_HIP_CHECK runs the CPU kernels alongside: their scratch follows the HIP's */
    setenv("MOERT_HIP_CHECK", "1", 1);
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
    unsetenv("MOERT_HIP_CHECK");
    check_plan(&p);
    CU_ASSERT_EQUAL(p.n_scratch, HIP_REQ_COUNT + CPU_REQ_COUNT);
    CU_ASSERT_EQUAL(find_buf(&p.schedule, "cpu.panel"), p.scratch0 + HIP_REQ_COUNT + CPU_REQ_PANEL);
    plan_free(&p);
}

/* The CPU backend's requests: per-thread panels and scores scale with the threads. */
static void test_cpu_requests(void)
{
    cfg_config cfg;
    load("configs/qwen3moe.yaml", &cfg);
    uint64_t panel[2], scores[2];
    for (int k = 0; k < 2; k++) {
        cfg.rt.threads = k ? 6 : 3;
        plan_run p;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
        check_plan(&p);
        CU_ASSERT_EQUAL(p.n_scratch, CPU_REQ_COUNT);
        CU_ASSERT_EQUAL(find_buf(&p.schedule, "hip.params"), SCHED_NO_BUF);
        const sched *s = &p.schedule;
        panel[k] = s->bufs[p.scratch0 + CPU_REQ_PANEL].bytes;
        scores[k] = s->bufs[p.scratch0 + CPU_REQ_SCORES].bytes;
        CU_ASSERT_STRING_EQUAL(s->bufs[p.scratch0 + CPU_REQ_SCORES].name, "cpu.scores");
        /* one KV head's group of query heads x every position, per thread */
        CU_ASSERT_EQUAL(scores[k], (uint64_t)cfg.rt.threads *
                                       (uint64_t)(s->topo.num_attention_heads / s->topo.num_key_value_heads) *
                                       (uint64_t)s->max_seq * 4);
        plan_free(&p);
    }
    CU_ASSERT_EQUAL(panel[1], 2 * panel[0]);
    CU_ASSERT(panel[0] % 64 == 0);
}

/* `run` executes the plan `plan` prints: sess_open's schedule, offsets, arena and trace
 * rings are plan_build's, and the contract is checked in the plan step. */
static void test_run_executes_the_plan(void)
{
    cfg_config cfg;
    load("configs/qwen3moe.yaml", &cfg);
    trace_everything(&cfg);
    cfg.rt.threads = 2;
    plan_run p;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, 0, &p, &err), MOERT_OK);
    CU_ASSERT_PTR_NOT_NULL(p.trace);
    CU_ASSERT(p.contract.name[0] != 0);
    sess *s = calloc(1, sizeof *s);
    CU_ASSERT_FATAL(s != NULL);
    CU_ASSERT_EQUAL_FATAL(sess_open(s, &cfg, 0, &err), MOERT_OK);
    CU_ASSERT_EQUAL(s->schedule.n_bufs, p.schedule.n_bufs);
    CU_ASSERT_EQUAL(s->schedule.n_ops, p.schedule.n_ops);
    CU_ASSERT_EQUAL(s->plan_stats.arena_bytes, p.stats.arena_bytes);
    CU_ASSERT_EQUAL(s->scratch0, p.scratch0);
    CU_ASSERT_EQUAL(trace_rt_count(s->trace), trace_rt_count(p.trace));
    CU_ASSERT_STRING_EQUAL(s->contract.name, p.contract.name);
    if (s->schedule.n_bufs == p.schedule.n_bufs) {
        CU_ASSERT_EQUAL(memcmp(s->offsets, p.offsets, (size_t)p.schedule.n_bufs * sizeof *p.offsets), 0);
        for (int32_t i = 0; i < p.schedule.n_bufs; i++)
            CU_ASSERT_STRING_EQUAL(s->schedule.bufs[i].name, p.schedule.bufs[i].name);
    }
    /* and it runs */
    int32_t ids[3] = {1, 2, 3}, out[2];
    int64_t n_out = 0;
    CU_ASSERT_EQUAL(sess_generate(s, ids, 3, 2, out, &n_out, NULL, NULL, &err), MOERT_OK);
    CU_ASSERT_EQUAL(n_out, 2);
    sess_close(s);
    free(s);
    plan_free(&p);

    /* without tracing, the same config plans no rings and loads no contract */
    CU_ASSERT_EQUAL_FATAL(plan_build(&cfg, PLAN_NO_TRACE, &p, &err), MOERT_OK);
    CU_ASSERT_PTR_NULL(p.trace);
    CU_ASSERT_EQUAL(p.contract.name[0], 0);
    plan_free(&p);
}

/* The CLI: `moert run` reports the arena `moert plan` printed, traced or not. */
static json_int_t cli_arena(const char *cmd, const char *flags)
{
    size_t cap = (size_t)8 << 20;
    char *out = malloc(cap), errb[4096];
    json_int_t bytes = -1;
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL(test_run_cmdf(out, cap, errb, sizeof errb, "./moert %s configs/qwen3moe.yaml --threads 2 --json %s",
                                  cmd, flags),
                    0);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL(o);
    if (o)
        bytes = json_integer_value(json_object_get(o, "arena_bytes"));
    json_decref(o);
    free(out);
    return bytes;
}

static void test_cli_run_matches_plan(void)
{
    char traced[512];
    snprintf(traced, sizeof traced, "--trace %s/p.trace --trace-mode tensor --trace-positions all", test_tmpdir());
    const char *variants[] = {"", traced};
    for (int v = 0; v < 2; v++) {
        json_int_t planned = cli_arena("plan", variants[v]);
        CU_ASSERT(planned > 0);
        char run[600];
        snprintf(run, sizeof run, "--tokens 1,2,3 -n 2 %s", variants[v]);
        CU_ASSERT_EQUAL(cli_arena("run", run), planned);
    }
}

/* A backend request the planner cannot place is refused by name, like a schedule buffer. */
static void test_scratch_bounds(void)
{
    cfg_config cfg;
    load("configs/qwen3moe.yaml", &cfg);
    sched s;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(sched_build(&cfg.topo, 4, 64, 1, NULL, &s, &err), MOERT_OK);
    int32_t n = s.n_bufs;
    CU_ASSERT_EQUAL(sched_add_scratch(&s, "x.huge", UINT64_C(1) << 49, 256, false, &err), SCHED_NO_BUF);
    CU_ASSERT_EQUAL(err.code, MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "x.huge"));
    CU_ASSERT_EQUAL(sched_add_scratch(&s, "x.odd", 64, 48, false, &err), SCHED_NO_BUF);
    CU_ASSERT_EQUAL(s.n_bufs, n);
    int32_t id = sched_add_scratch(&s, "x.ok", 100, 512, true, &err);
    CU_ASSERT_EQUAL(id, n);
    CU_ASSERT_EQUAL(s.bufs[id].bytes, 100);
    CU_ASSERT_EQUAL(s.bufs[id].first, 0);
    CU_ASSERT_EQUAL(s.bufs[id].last, s.n_ops - 1);
    sched_free(&s);
}

/* `moert plan --backend hip --json` on the GPU benchmark model: every device byte is the
 * arena or the weights region, the HIP scratch among the arena's buffers. */
static void test_cli_device_bytes(void)
{
    size_t cap = (size_t)16 << 20;
    char *out = malloc(cap), errb[4096];
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL_FATAL(test_run_cmd("./moert plan configs/bench-gpu.yaml --backend hip --json", out, cap, errb,
                                       sizeof errb),
                          0);
    json_error_t je;
    json_t *o = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    json_t *dv = json_object_get(o, "device");
    CU_ASSERT_PTR_NOT_NULL_FATAL(dv);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(dv, "unplanned_device_bytes")), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(dv, "backend")), "hip");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(dv, "backend_scratch_buffers")), HIP_REQ_COUNT);
    json_int_t arena_end = json_integer_value(json_object_get(o, "arena_bytes"));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(dv, "arena_bytes")), arena_end);
    CU_ASSERT(json_integer_value(json_object_get(dv, "weights_region_bytes")) > 0);
    size_t i;
    json_t *b;
    int hip = 0, cpu = 0;
    json_int_t scratch = 0;
    json_array_foreach(json_object_get(o, "buffers"), i, b) {
        const char *name = json_string_value(json_object_get(b, "name"));
        json_int_t end = json_integer_value(json_object_get(b, "offset")) + json_integer_value(json_object_get(b, "bytes"));
        CU_ASSERT(end <= arena_end);
        if (json_is_true(json_object_get(b, "backend_scratch"))) {
            hip += !strncmp(name, "hip.", 4);
            scratch += json_integer_value(json_object_get(b, "bytes"));
        }
        cpu += !strncmp(name, "cpu.", 4) || !strncmp(name, "scratch.", 8);
    }
    CU_ASSERT_EQUAL(hip, HIP_REQ_COUNT);
    CU_ASSERT_EQUAL(cpu, 0);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(dv, "backend_scratch_bytes")), scratch);
    json_decref(o);
    /* the text form says the same */
    CU_ASSERT_EQUAL(test_run_cmd("./moert plan configs/bench-gpu.yaml --backend hip", out, cap, errb, sizeof errb), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "unplanned device bytes 0"));
    /* numerics act-q8: the quantized rows are one more planned request, nothing unplanned */
    CU_ASSERT_EQUAL_FATAL(test_run_cmd("./moert plan configs/bench-gpu.yaml --backend hip --numerics act-q8 --json", out,
                                       cap, errb, sizeof errb),
                          0);
    o = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    dv = json_object_get(o, "device");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(dv, "unplanned_device_bytes")), 0);
    json_int_t qbytes = 0;
    json_array_foreach(json_object_get(o, "buffers"), i, b) {
        if (!strcmp(json_string_value(json_object_get(b, "name")), "hip.act_q8"))
            qbytes = json_integer_value(json_object_get(b, "bytes"));
    }
    CU_ASSERT(qbytes > 256); /* bench-gpu: 2048 wide, 4096-wide q rows */
    json_decref(o);
    free(out);
}

/* The plan step refuses a trace plan the contract rejects, so `plan` says what `run` would. */
static void test_plan_refuses_contract(void)
{
    char cmd[1024], errb[4096];
    const char *dir = test_tmpdir();
    snprintf(cmd, sizeof cmd,
             "sed 's/^\\(  attn_out: *{shape: \\[tokens, \\)hidden_size\\]/\\17]/' contracts/qwen3moe-trace-v1.yaml "
             "> %s/narrow.yaml && ./moert plan configs/qwen3moe.yaml --trace %s/x.trace --contract %s/narrow.yaml",
             dir, dir, dir);
    CU_ASSERT_EQUAL(test_run_cmd(cmd, NULL, 0, errb, sizeof errb), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "attn_out"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "contract"));
}

void suite_plan(void)
{
    CU_pSuite s = CU_add_suite("plan", NULL, NULL);
    CU_add_test(s, "HIP scratch requests: sizes from the kernels' layouts, placed and proven", test_hip_requests);
    CU_add_test(s, "HIP split-k parts and their partials in hip.a_planes", test_hip_splitk);
    CU_add_test(s, "CPU scratch requests scale with the threads", test_cpu_requests);
    CU_add_test(s, "run executes the plan that plan prints", test_run_executes_the_plan);
    CU_add_test(s, "run reports the arena plan printed, traced or not", test_cli_run_matches_plan);
    CU_add_test(s, "scratch bounds refused by name", test_scratch_bounds);
    CU_add_test(s, "plan --backend hip --json: 0 unplanned device bytes", test_cli_device_bytes);
    CU_add_test(s, "plan refuses a trace plan the contract rejects", test_plan_refuses_contract);
}
