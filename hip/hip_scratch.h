/* hip_scratch: the HIP backend's device scratch, stated as planner requests (backend.h).
 *
 * Plain C, without HIP headers: the planner of every build (a CPU-only one included) asks
 * for the HIP backend's scratch, and the backend carves each piece from its planned offset
 * in the one device arena, so the only device allocations are the arena and the weights
 * region.  The sizes follow from the block sizes below, which the kernels share
 * (hip_kernels.h includes this header).
 */
#ifndef MOERT_HIP_SCRATCH_H
#define MOERT_HIP_SCRATCH_H

#include <stdbool.h>
#include <stdint.h>

struct sched;
struct backend_request;

/* Per-step values every kernel reads from device memory, so that a captured decode graph
 * replays with the new position and generation step. */
#define HIP_PARAM_TOKENS 4
typedef struct hip_step_params {
    long long pos0;       /* position of row 0 */
    long long n_rows;     /* rows of this step */
    long long gen_step;   /* trace record step (0 = prompt) */
    long long trace_row0; /* first captured row (trace_rt_rows rule); n_rows: none */
    int parity;           /* step index & 1: which trace header shadow is current */
    int n_tok;            /* > 0: the step's first n_tok input ids travel here (one copy per
                           * step instead of two); the embed kernel stores them in the tokens
                           * buffer as well */
    int32_t tok[HIP_PARAM_TOKENS];
    int fed;              /* 1: the input id is the last greedy pick (exec_step.fed), read by
                           * the embed kernel from the device */
    int pad;
} hip_step_params;

#ifndef HIP_ATTN_SPLIT
#define HIP_ATTN_SPLIT 32      /* keys per decode split (at most one tile, or a multiple of it) */
#endif
#define HIP_MOE_BM 32          /* rows per grouped-GEMM tile (MoE) */
#define HIP_MMA_BK 32          /* k per tile of the bf16 tensor-core GEMMs (split-k cuts whole tiles) */
#define HIP_ARGMAX_BLOCKS 128  /* partials of the greedy pick */
#define HIP_SCRATCH_ALIGN 256  /* every piece starts on a 256-byte boundary */

/* The requests, in this order (request i is buffer backend_init.scratch0 + i). */
enum {
    HIP_REQ_PARAMS,       /* hip_step_params (persistent: written by each step's copy) */
    HIP_REQ_FLAGS,        /* the device error flag (int at 0) and the greedy pick (int32 at 128) */
    HIP_REQ_SHADOW,       /* trace header shadows: 2 parities x traced rings x 4 u64 */
    HIP_REQ_ATTN_PART,    /* decode attention split partials: heads x splits x (head_dim + 2) f32 */
    HIP_REQ_ATTN_TICKETS, /* per kv head: splits done (int; back to 0 after each use) */
    HIP_REQ_MOE_TILES,    /* MoE tile table: 1 + 3 x max tiles int32 */
    HIP_REQ_ARGMAX_PART,  /* the greedy pick's per-block partials: value f32, index int */
    HIP_REQ_TRACE_BATCH,  /* end-of-step trace capture (hip_scratch_trace_layout) */
    HIP_REQ_QACT,         /* numerics act-q8: quantized activation rows (hip_scratch_qact_layout) */
    HIP_REQ_A_PLANES,     /* prefill GEMM activations split into bf16 planes (hip_scratch_planes) */
    HIP_REQ_COUNT
};
#define HIP_FLAGS_ARGMAX_OFFSET 128
/* End-of-step capture of a decode step's trace slots: the producers' row snapshots (at most
 * two inputs per TRACE op, each rounded up to 64 floats), then a table of capture arguments
 * (at most HIP_TRACE_ARGS_MAX_BYTES per slot; the backend asserts its struct fits), then
 * HIP_TRACE_WIDE_PART_BYTES of partial sums per wide slot.  The plan holds the bound over
 * every slot; the backend uses what its analysis at init needs, never more. */
#define HIP_TRACE_ARGS_MAX_BYTES 128
#define HIP_TRACE_WIDE_PART_BYTES 2304 /* at most 32 warps x (8 + 1) x 8 bytes */
typedef struct hip_trace_layout {
    uint64_t snap_bytes_max, tab_offset, part_offset, bytes;
} hip_trace_layout;

/* numerics act-q8: rows quantized in ops_qact_row's layout.  Region A holds max_rows rows of
 * the widest dense matmul input (hidden, q_dim, the dense MLP's intermediate: the inputs of
 * qkv, o, the dense MLP, the LM head and the MoE's token rows); region B (at b_offset) the
 * MoE hidden rows after SwiGLU, max_rows x top-k of moe_intermediate (and the dense MLP's
 * max_rows hidden rows).  A row of width k sits at a multiple of ops_qact_row_bytes(k) (the
 * row stride a kernel uses); the bounds below hold for every width up to the widest. */
typedef struct hip_qact_layout {
    uint64_t a_row_bytes, b_offset, b_row_bytes, b_rows, bytes;
} hip_qact_layout;

/* The tensor-core prefill GEMMs' activation planes (hip/hip_gemm_mma.h): each fp32 input
 * value as three bf16 terms, 6 bytes.  x: the A of any dense GEMM or the MoE input (max_rows
 * rows of the widest k), at offset 0; h: the MoE's SwiGLU output (max_rows x experts per
 * token rows of moe_intermediate_size), at h_offset, written while x is read. */
#define HIP_PLANE_BYTES 6
typedef struct hip_planes_layout {
    uint64_t x_bytes, h_offset, h_bytes, bytes;
    /* the split-k partials of a dense GEMM (hip_splitk_parts), at part_offset: they share
     * h's bytes (a MATMUL op and the MoE op never overlap), the region holds the larger */
    uint64_t part_offset, part_bytes;
} hip_planes_layout;

/* Split-k of the tensor-core dense GEMMs: a GEMM of n outputs gets parts so that about
 * HIP_SPLITK_COLS columns of 64-wide tiles are in flight (the o projection's 2048 -> 3, a
 * 128-expert router -> 8), at most HIP_SPLITK_MAX and at least HIP_SPLITK_MIN_TILES k tiles of
 * 32 a part.  A function of n and k alone (never of the rows): the planner sizes the partials
 * by it and the backend launches by it. */
#define HIP_SPLITK_COLS 6144
#define HIP_SPLITK_MAX 8
#define HIP_SPLITK_MIN_TILES 8

#ifdef __cplusplus
extern "C" {
#endif

/* The act-q8 region of schedule s (bytes 0 when s->act_q8 is off). */
hip_qact_layout hip_scratch_qact_layout(const struct sched *s);

/* Fills reqs[0..HIP_REQ_COUNT) for schedule s; returns HIP_REQ_COUNT. */
int hip_scratch_requests(const struct sched *s, struct backend_request *reqs);
/* Decode attention splits per head, and MoE tiles at most (0 when no layer is sparse). */
int64_t hip_scratch_max_splits(const struct sched *s);
int64_t hip_scratch_max_tiles(const struct sched *s);
/* The trace-batch region for snapshots of snap_floats floats (the bound when
 * snap_floats < 0): offsets of the table and the wide partials, total bytes. */
hip_trace_layout hip_scratch_trace_layout(const struct sched *s, int64_t snap_floats);
/* The activation planes' region for schedule s (0 bytes when no step has several rows). */
hip_planes_layout hip_scratch_planes(const struct sched *s);
/* Parts of the split-k rule above for a dense GEMM of n outputs and k inputs (1: no split). */
int hip_splitk_parts(int64_t n, int64_t k);
/* Traced rings: the TRACE ops of s. */
int64_t hip_scratch_traced(const struct sched *s);
/* MOERT_HIP_CHECK: 0 off, 1 the first prefill and decode step, 2 ("all") every step.  In
 * check mode the backend runs the CPU kernels alongside and so needs their scratch too. */
int hip_check_mode(void);

#ifdef __cplusplus
}
#endif

#endif
