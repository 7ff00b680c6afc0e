/* hip_scratch: the HIP backend's scratch requests (see hip_scratch.h).  Compiled into every
 * build's library (Makefile LIB_SRC), not only the HIP ones. */
#include "hip_scratch.h"

#include "../ops/ops.h"
#include "../runtime/backend.h"
#include "../runtime/trace/record.h"

#include <stdlib.h>
#include <string.h>

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a + b < a ? UINT64_MAX : a + b;
}

int64_t hip_scratch_max_splits(const sched *s)
{
    return (s->max_seq + HIP_ATTN_SPLIT - 1) / HIP_ATTN_SPLIT;
}

int64_t hip_scratch_max_tiles(const sched *s)
{
    const cfg_topology *t = &s->topo;
    bool any_sparse = false;
    for (int64_t l = 0; l < t->num_hidden_layers; l++)
        any_sparse = any_sparse || cfg_layer_is_sparse(t, l);
    if (!any_sparse)
        return 0;
    uint64_t rk = sat_mul((uint64_t)s->max_rows, (uint64_t)t->num_experts_per_tok);
    uint64_t tiles = sat_add(sat_add(rk, HIP_MOE_BM - 1) / HIP_MOE_BM, (uint64_t)t->num_experts);
    return tiles > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)tiles;
}

int64_t hip_scratch_traced(const sched *s)
{
    int64_t n = 0;
    for (int32_t i = 0; i < s->n_ops; i++)
        n += s->ops[i].kind == SCHED_TRACE;
    return n;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return sat_add(v, a - 1) / a * a;
}

hip_trace_layout hip_scratch_trace_layout(const sched *s, int64_t snap_floats)
{
    hip_trace_layout L = {0};
    uint64_t floats = 0;
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        if (op->kind != SCHED_TRACE)
            continue;
        for (int q = 0; q < 2; q++)
            if (op->in[q] >= 0 && op->in[q] < s->n_bufs)
                floats = sat_add(floats, round_up((uint64_t)s->bufs[op->in[q]].cols, 64));
    }
    uint64_t n = (uint64_t)hip_scratch_traced(s);
    L.snap_bytes_max = sat_mul(floats, sizeof(float));
    uint64_t snap = snap_floats < 0 ? L.snap_bytes_max : sat_mul((uint64_t)snap_floats, sizeof(float));
    L.tab_offset = round_up(snap ? snap : 1, HIP_SCRATCH_ALIGN);
    L.part_offset = round_up(sat_add(L.tab_offset, sat_mul(n ? n : 1, HIP_TRACE_ARGS_MAX_BYTES)), HIP_SCRATCH_ALIGN);
    L.bytes = sat_add(L.part_offset, sat_mul(n, HIP_TRACE_WIDE_PART_BYTES));
    return L;
}

hip_qact_layout hip_scratch_qact_layout(const sched *s)
{
    hip_qact_layout L = {0};
    if (!s->act_q8)
        return L;
    const cfg_topology *t = &s->topo;
    uint64_t rows = (uint64_t)s->max_rows, K = t->num_experts_per_tok > 1 ? (uint64_t)t->num_experts_per_tok : 1;
    L.a_row_bytes = ops_qact_bound_bytes(sched_dense_kmax(s));
    L.b_row_bytes = ops_qact_bound_bytes(t->moe_intermediate_size > t->intermediate_size ? t->moe_intermediate_size
                                                                              : t->intermediate_size);
    L.b_rows = sat_mul(rows, K);
    L.b_offset = round_up(sat_mul(rows, L.a_row_bytes), HIP_SCRATCH_ALIGN);
    L.bytes = sat_add(L.b_offset, sat_mul(L.b_rows, L.b_row_bytes));
    return L;
}

hip_planes_layout hip_scratch_planes(const sched *s)
{
    hip_planes_layout L = {0};
    if (s->max_rows <= 1)
        return L; /* one-row steps run GEMVs */
    const cfg_topology *t = &s->topo;
    uint64_t kmax = 0, hcols = 0;
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        uint64_t k = 0;
        if (op->kind == SCHED_MATMUL || op->kind == SCHED_LOGITS)
            k = (uint64_t)op->k;
        else if (op->kind == SCHED_MOE) {
            k = (uint64_t)t->hidden_size;
            hcols = (uint64_t)t->moe_intermediate_size;
        }
        kmax = k > kmax ? k : kmax;
    }
    uint64_t rows = (uint64_t)s->max_rows;
    L.x_bytes = round_up(sat_mul(sat_mul(rows, kmax), HIP_PLANE_BYTES), HIP_SCRATCH_ALIGN);
    L.h_offset = L.x_bytes;
    L.h_bytes = round_up(sat_mul(sat_mul(sat_mul(rows, (uint64_t)t->num_experts_per_tok), hcols), HIP_PLANE_BYTES),
                         HIP_SCRATCH_ALIGN);
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        if (op->kind != SCHED_MATMUL && op->kind != SCHED_LOGITS)
            continue;
        int parts = hip_splitk_parts(op->n, op->k);
        uint64_t b = parts > 1 ? sat_mul(sat_mul(sat_mul(rows, (uint64_t)op->n), (uint64_t)parts), sizeof(float)) : 0;
        L.part_bytes = b > L.part_bytes ? b : L.part_bytes;
    }
    L.part_offset = L.h_offset;
    L.part_bytes = round_up(L.part_bytes, HIP_SCRATCH_ALIGN);
    L.bytes = sat_add(L.x_bytes, L.h_bytes > L.part_bytes ? L.h_bytes : L.part_bytes);
    return L;
}

int hip_splitk_parts(int64_t n, int64_t k)
{
    if (n <= 0 || k <= 0)
        return 1;
    int64_t p = (HIP_SPLITK_COLS + n / 2) / n, by_k = (k + HIP_MMA_BK - 1) / HIP_MMA_BK / HIP_SPLITK_MIN_TILES;
    p = p < HIP_SPLITK_MAX ? p : HIP_SPLITK_MAX;
    p = p < by_k ? p : by_k;
    return p > 1 ? (int)p : 1;
}

int hip_scratch_requests(const sched *s, backend_request *reqs)
{
    const cfg_topology *t = &s->topo;
    uint64_t heads = (uint64_t)t->num_attention_heads, hd = (uint64_t)t->head_dim;
    uint64_t part = sat_mul(sat_mul(sat_mul(heads, (uint64_t)hip_scratch_max_splits(s)), hd + 2), sizeof(float));
    uint64_t tiles = sat_mul(sat_add(1, sat_mul(3, (uint64_t)hip_scratch_max_tiles(s))), sizeof(int32_t));
    uint64_t shadow = sat_mul(sat_mul(2 * TRACE_HDR_WORDS, (uint64_t)hip_scratch_traced(s)), sizeof(unsigned long long));
    uint64_t bytes[HIP_REQ_COUNT] = {
        [HIP_REQ_PARAMS] = sizeof(hip_step_params),
        [HIP_REQ_FLAGS] = HIP_FLAGS_ARGMAX_OFFSET + sizeof(int32_t),
        [HIP_REQ_SHADOW] = shadow,
        [HIP_REQ_ATTN_PART] = part,
        [HIP_REQ_ATTN_TICKETS] = sat_mul((uint64_t)t->num_key_value_heads, sizeof(int)),
        [HIP_REQ_MOE_TILES] = tiles,
        [HIP_REQ_ARGMAX_PART] = 2 * sizeof(float) * HIP_ARGMAX_BLOCKS,
        [HIP_REQ_TRACE_BATCH] = hip_scratch_traced(s) ? hip_scratch_trace_layout(s, -1).bytes : 0,
        [HIP_REQ_QACT] = hip_scratch_qact_layout(s).bytes,
        [HIP_REQ_A_PLANES] = hip_scratch_planes(s).bytes,
    };
    static const char *const names[HIP_REQ_COUNT] = {
        [HIP_REQ_PARAMS] = "hip.params", [HIP_REQ_FLAGS] = "hip.flags",
        [HIP_REQ_SHADOW] = "hip.trace_shadow", [HIP_REQ_ATTN_PART] = "hip.attn_part",
        [HIP_REQ_ATTN_TICKETS] = "hip.attn_tickets", [HIP_REQ_MOE_TILES] = "hip.moe_tiles",
        [HIP_REQ_ARGMAX_PART] = "hip.argmax_part", [HIP_REQ_TRACE_BATCH] = "hip.trace_batch",
        [HIP_REQ_QACT] = "hip.act_q8",
        [HIP_REQ_A_PLANES] = "hip.a_planes",
    };
    for (int i = 0; i < HIP_REQ_COUNT; i++) {
        /* whole alignment units: a small piece never moves the activation buffers placed
         * after it off a 256-byte boundary (coalesced rows) */
        uint64_t n = sat_add(bytes[i] ? bytes[i] : 1, HIP_SCRATCH_ALIGN - 1) / HIP_SCRATCH_ALIGN * HIP_SCRATCH_ALIGN;
        bool persistent = i == HIP_REQ_PARAMS || i == HIP_REQ_FLAGS || i == HIP_REQ_SHADOW || i == HIP_REQ_ATTN_TICKETS ||
                          i == HIP_REQ_TRACE_BATCH; /* the table is uploaded once at init */
        reqs[i] = (backend_request){names[i], n, HIP_SCRATCH_ALIGN, persistent};
    }
    return HIP_REQ_COUNT;
}

int hip_check_mode(void)
{
    const char *v = getenv("MOERT_HIP_CHECK");
    if (!v || !*v || !strcmp(v, "0"))
        return 0;
    return strcmp(v, "all") == 0 ? 2 : 1;
}
