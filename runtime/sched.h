/* sched: the static schedule of one forward step, built once at init from the topology,
 * the runtime limits and the trace plan.
 *
 * A step processes n_rows tokens (1 <= n_rows <= max_rows) at positions pos0.. : a prefill
 * chunk has up to max_rows = prefill_chunk rows, a decode step has one.  Both run the SAME
 * op list over the SAME buffers, so a token's arithmetic cannot depend on the step it
 * lands in.  Ops name buffers by id; buffers carry their size and their lifetime (first
 * and last op index that touches them), which is all the arena planner needs.  Weights
 * are named by role and layer, never by pointer, so the schedule can be built and planned
 * without weights present and every backend binds roles to its own copy of the weights.
 */
#ifndef MOERT_SCHED_H
#define MOERT_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "err.h"

typedef enum sched_kind {
    SCHED_EMBED,        /* tokens -> out[rows, H] */
    SCHED_RMSNORM,      /* in[rows, n] -> out, weight w[0] */
    SCHED_MATMUL,       /* in[rows, k] -> out[rows, n]; n = sum of up to 3 weight segments */
    SCHED_QK_NORM_ROPE, /* qkv in place: per-head RMSNorm of q and k, then RoPE */
    SCHED_KV_STORE,     /* k, v parts of qkv -> this layer's KV cache rows pos0.. */
    SCHED_ATTENTION,    /* q part of qkv + KV cache -> out[rows, q_dim] */
    SCHED_ADD,          /* out[rows, H] += in[rows, H]  (the residual stream) */
    SCHED_ROUTE,        /* router logits -> top-k weights (out0) and expert ids (out1) */
    SCHED_MOE,          /* in = ffn_norm, topk w, topk ids -> out; selected experts only */
    SCHED_MLP,          /* dense SwiGLU MLP in -> out */
    SCHED_LOGITS,       /* final-norm rows -> logits: last row, or all rows when asked */
    SCHED_TRACE,        /* capture a stage's rows into its ring (trace module) */
    SCHED_KIND_COUNT
} sched_kind;

typedef enum sched_weight {
    SCHED_W_NONE = 0,
    SCHED_W_EMBED, SCHED_W_ATTN_NORM, SCHED_W_Q, SCHED_W_K, SCHED_W_V, SCHED_W_O,
    SCHED_W_Q_NORM, SCHED_W_K_NORM, SCHED_W_FFN_NORM, SCHED_W_ROUTER, SCHED_W_EXPERTS,
    SCHED_W_MLP, SCHED_W_FINAL_NORM, SCHED_W_LM_HEAD,
    SCHED_W_COUNT
} sched_weight;

typedef enum sched_elem { SCHED_F32 = 0, SCHED_I32 = 1, SCHED_BYTES = 2 } sched_elem;

#define SCHED_NO_BUF (-1)
#define SCHED_NAME_MAX 48

typedef struct sched_buffer {
    char name[SCHED_NAME_MAX]; /* "l3.qkv", "kv.l3.k", "x", ... */
    sched_elem elem;
    int64_t rows, cols;        /* rows x cols elements (BYTES: cols bytes per row) */
    uint64_t bytes;
    int32_t first, last;       /* op-index lifetime (set by sched_build) */
    bool persistent;           /* alive across steps: KV cache, RoPE tables, trace rings */
    int32_t layer;             /* -1 when not a layer's */
    uint64_t align;            /* offset alignment; 0: ARENA_MIN_ALIGN (a backend's scratch may
                                  ask for more) */
} sched_buffer;

typedef struct sched_op {
    sched_kind kind;
    int32_t layer;             /* -1 for embed / final ops */
    int32_t stage;             /* cfg_stage captured (TRACE), or -1 */
    int32_t in[3];             /* buffer ids or SCHED_NO_BUF */
    int32_t out[2];
    int32_t scratch[4];        /* op-private scratch buffers (router probs, expert activations);
                                  a backend's own scratch is its request (backend.h) */
    sched_weight w[3];         /* weights by role (MATMUL: segments in output order) */
    int64_t n, k;              /* output / input features where meaningful */
    int32_t trace_index;       /* TRACE: index of the traced (stage, layer) */
} sched_op;

/* Buffers the executor and backends address directly. */
typedef struct sched_known {
    int32_t tokens;            /* i32 [max_rows] input ids of the step */
    int32_t x;                 /* f32 [max_rows, H] residual stream */
    int32_t final_norm;        /* f32 [max_rows, H] */
    int32_t logits;            /* f32 [logit_rows, V] */
    int32_t rope_cos, rope_sin;/* f32 [max_seq, head_dim/2] */
    int32_t *k_cache, *v_cache;/* per layer f32 [kv heads * max_seq, head_dim]: [kv head][pos][d],
                                  so attention reads each kv head's keys as one contiguous run */
    /* sampling scratch, used between steps (persistent): radix-sort keys and ids */
    int32_t sample_keys, sample_keys2, sample_ids, sample_ids2, sample_probs;
} sched_known;

typedef struct sched {
    cfg_topology topo;
    int64_t max_rows;          /* prefill chunk */
    int64_t max_seq;           /* KV cache rows */
    int64_t logit_rows;        /* 1, or max_rows when logits of all rows are traced */
    int32_t threads;           /* CPU threads (sizes the CPU backend's per-thread scratch) */
    int32_t gpus;              /* expert-parallel ranks (runtime.gpus; sizes the CPU backend's
                                  gather buffer): set by plan_build, 0 or 1 = one */
    bool act_q8;               /* runtime.numerics act-q8 (sizes the CPU backend's quantized
                                  activations): set by plan_build */
    bool batch_invariant;      /* runtime.batch_invariant: a backend runs one-row steps (decode)
                                  through its multi-row kernels: set by plan_build */
    int64_t q_dim, kv_dim, qkv_dim;
    sched_op *ops;
    int32_t n_ops;
    sched_buffer *bufs;
    int32_t n_bufs;
    sched_known known;
} sched;

/* Hook through which the trace module adds its rings: called once per traced
 * (stage, layer) pair with the stage's row width; returns the ring's bytes. */
typedef struct sched_trace_hooks {
    const cfg_trace_plan *plan;   /* NULL or !enabled: no TRACE ops */
    uint64_t (*ring_bytes)(void *ctx, cfg_stage stage, int32_t layer, int64_t row_elems);
    void *ctx;
} sched_trace_hooks;

/* Largest buffer, and largest sum of buffers, a schedule may ask for (256 TiB, 4 PiB): far
 * past any machine, and far enough below 2^63 that no size arithmetic after it overflows. */
#define SCHED_MAX_BUFFER_BYTES (INT64_C(1) << 48)
#define SCHED_MAX_TOTAL_BYTES (INT64_C(1) << 52)

/* Builds the schedule.  `threads` (>= 1) sizes per-thread scratch only.  `trace` may be
 * NULL.  Every buffer gets its lifetime; sched_free releases everything.  A buffer larger
 * than SCHED_MAX_BUFFER_BYTES (or buffers summing past SCHED_MAX_TOTAL_BYTES) is
 * MOERT_ECONFIG naming the buffer: sizes never overflow, whatever the limits. */
int sched_build(const cfg_topology *topo, int64_t max_rows, int64_t max_seq, int32_t threads,
                const sched_trace_hooks *trace, sched *out, moert_err *err);
void sched_free(sched *s);

/* Appends a buffer that no op names: a backend's own scratch (backend_request), alive
 * through every op of a step or, when persistent, across steps.  The size bounds of
 * sched_build apply (MOERT_ECONFIG naming the buffer); align is a power of two or 0.
 * Returns the buffer id, or SCHED_NO_BUF with err set. */
int32_t sched_add_scratch(sched *s, const char *name, uint64_t bytes, uint64_t align, bool persistent,
                          moert_err *err);

const char *sched_kind_name(sched_kind k);
const char *sched_weight_name(sched_weight w);

/* Width (elements per row) of a stage's captured tensor; for moe_router the weights (the
 * ids companion has the same width). */
int64_t sched_stage_width(const sched *s, cfg_stage stage);

/* The widest input row of a dense matmul: hidden, q_dim (o's input) or a dense MLP's
 * intermediate (its down's input).  Backends size per-row scratch from it. */
int64_t sched_dense_kmax(const sched *s);

#endif
