/* hip_kernels: the device kernels of the HIP backend and their launchers (hip/kernels.hip),
 * called by the host side (hip/backend_hip.hip).  C++ (both files are compiled by hipcc or
 * nvcc).  Every launcher enqueues on `stream` and returns the launch status
 * (hipGetLastError), so that a bad configuration is caught at the op that made it.
 *
 * Determinism: every output element is computed by one thread or one warp with a fixed
 * order (serial chains and fixed xor-butterfly trees); no floating-point atomics; grid
 * sizes never change what a thread computes (grid-stride loops over independent rows).
 * Integer atomics are not used either: MoE grouping is a ballot/popcount scan.
 */
#ifndef MOERT_HIP_KERNELS_H
#define MOERT_HIP_KERNELS_H

#include <stdint.h>

#include "hip_compat.h"
#include "hip_host.h"
#include "hip_scratch.h"

/* Weight element types: the values of ops_dtype up to HIP_DT_Q6_K.  The block types (ggml's
 * layouts, ops.h) stay quantized in device memory; the kernels dequantize them in registers
 * exactly as ops_to_f32 does (hip_wload.h).  Rows are addressed in bytes (k / block * block
 * bytes).  The X4 types are device layouts of Q8_0 and Q6_K made at upload: groups of four
 * blocks whose f16 scales come first and whose remaining bytes follow block by block, so that
 * a row of whole groups keeps every quant 8-byte aligned (Q8_0's 34- and Q6_K's 210-byte
 * blocks are only 2-byte aligned); the same bytes per row, the same values. */
enum {
    HIP_DT_F32 = 0, HIP_DT_BF16 = 1, HIP_DT_F16 = 2,
    HIP_DT_Q4_0 = 3, HIP_DT_Q5_0 = 4, HIP_DT_Q8_0 = 5, /* blocks of 32 */
    HIP_DT_Q4_K = 6, HIP_DT_Q5_K = 7, HIP_DT_Q6_K = 8, /* blocks of 256 */
    HIP_DT_Q8_0X4 = 9, HIP_DT_Q6_KX4 = 10,            /* groups of 128 and 1024 elements */
    HIP_DT_COUNT
};
#define HIP_DT_OPS_COUNT (HIP_DT_Q6_K + 1) /* the types that are ops_dtype values */

/* The ops_dtype whose values and row bytes a kernel type has (itself but for the X4 types). */
static inline int hip_dt_base(int dt)
{
    return dt == HIP_DT_Q8_0X4 ? HIP_DT_Q8_0 : dt == HIP_DT_Q6_KX4 ? HIP_DT_Q6_K : dt;
}
#define HIP_X4_Q8_0_GROUP (4 * 34)  /* bytes of a group of four Q8_0 blocks */
#define HIP_X4_Q6_K_GROUP (4 * 210) /* and of four Q6_K blocks */
/* Bytes of a group of four blocks of an X4 type's base, 0 for the other types. */
static inline int hip_dt_x4_group_bytes(int dt)
{
    return dt == HIP_DT_Q8_0X4 ? HIP_X4_Q8_0_GROUP : dt == HIP_DT_Q6_KX4 ? HIP_X4_Q6_K_GROUP : 0;
}
/* The X4 type of a row of k elements of ops type dt where one applies (rows of whole groups:
 * k % 128 == 0 for Q8_0, k % 1024 == 0 for Q6_K), else dt. */
static inline int hip_dt_device(int dt, long long k)
{
    if (dt == HIP_DT_Q8_0 && k > 0 && k % 128 == 0)
        return HIP_DT_Q8_0X4;
    if (dt == HIP_DT_Q6_K && k > 0 && k % 1024 == 0)
        return HIP_DT_Q6_KX4;
    return dt;
}
/* Byte offset of the f16 scale d in a block of an X4 type's base (hip_host_x4_pack's d_off). */
static inline int hip_dt_x4_d_off(int dt)
{
    return dt == HIP_DT_Q6_KX4 ? 208 : 0;
}
/* bytes (whole groups) of X4 type dt's base blocks at src written at dst in dt's layout */
static inline void hip_dt_x4_pack(int dt, unsigned char *dst, const unsigned char *src, size_t bytes)
{
    const int gb = hip_dt_x4_group_bytes(dt);
    hip_host_x4_pack(dst, src, bytes / (size_t)gb, gb / 4, hip_dt_x4_d_off(dt));
}

/* Block sizes (fixed: results never depend on the device). */
#define HIP_GEMV_THREADS 128
#define HIP_GEMV_RW 2          /* rows per warp in the GEMV */
#define HIP_ATTN_THREADS 128
#define HIP_ATTN_TILE 32       /* keys per attention tile */
/* HIP_ATTN_SPLIT, HIP_MOE_BM, HIP_ARGMAX_BLOCKS and hip_step_params: hip_scratch.h (the
 * planner sizes the backend's scratch from them) */
#define HIP_GEMM_BN 128

/* ---- GEMV: y[n] = dot(x, W_seg[n]) over up to 3 row segments, one x row ------------
 * All segments have the launch's dtype (a matmul whose segments differ is launched once
 * per run of equal dtypes, by the caller). */
typedef struct hip_gemv_args {
    const float *x;
    const void *w[3];
    long long seg_end[3];  /* cumulative row ends; unused segments repeat n_total */
    float *y;
    float *y2;             /* NULL, or a second copy of y (a traced row's snapshot) */
    long long n_total;
    long long k;
    /* Decode fusions (NULL when unused).  Norm prologue: x is the un-normed row; every block
     * computes RMSNorm(x) * nw in registers with k_rmsnorm's bits (its 1024-thread tree) and
     * block 0 writes the normed row to xn (and xn2).  Residual epilogue: xadd[r] += y[r] (and
     * the sum to xadd2), the ADD that follows the GEMV. */
    const void *nw;
    int nw_dt;
    float eps;
    float *xn, *xn2;
    float *xadd, *xadd2;
} hip_gemv_args;
hipError_t hip_launch_gemv(int dtype, const hip_gemv_args *a, int grid, hipStream_t s);
/* Whether hip_launch_gemv takes a norm prologue for this dtype and k (the streaming GEMV
 * in one round, k <= 4096, rows not staged); it refuses one it does not take. */
bool hip_gemv_norm_takes(int dtype, long long k);
/* pv, pi: HIP_ARGMAX_BLOCKS partials (device scratch); the pick goes to out and, when not
 * NULL, to host_out[sp->parity] (mapped host memory, two slots) */
hipError_t hip_launch_argmax(const float *logits, long long V, int all_rows, const hip_step_params *sp,
                             float *pv, int *pi, int32_t *out, int32_t *host_out, hipStream_t s);

/* ---- GEMM: C[m, n] = A[m, :] . W[n, :] ------------------------------------------------ */
enum { HIP_A_PLAIN = 0, HIP_A_GATHER = 1, HIP_A_SWIGLU = 2 };
typedef struct hip_gemm_args {
    const float *a;        /* PLAIN/GATHER: A rows; SWIGLU: gate rows */
    const float *a2;       /* SWIGLU: up rows (same lda) */
    long long lda;
    const int32_t *gather; /* GATHER: A row of tile row p = a + (gather[p] / gdiv) * lda */
    int gdiv;
    const void *w;         /* [n, k] (grouped: expert 0's) */
    long long w_estride;   /* grouped: BYTES between consecutive experts' matrices */
    float *c;
    long long ldc;
    int m, n, k;
    const int32_t *tiles;  /* grouped: [0] = count, then (expert, row0, row1) triples */
    int max_tiles;         /* grouped: grid rows */
} hip_gemm_args;
/* bm: 64 (plain) or HIP_MOE_BM (grouped). */
hipError_t hip_launch_gemm(int dtype, int amode, int bm, const hip_gemm_args *a, hipStream_t s);

/* ---- element-wise and row kernels --------------------------------------------------- */
/* tok: the tokens buffer (written from sp->tok first when sp->n_tok > 0, or from *pick, the
 * last greedy pick, when sp->fed) */
/* emb: [V, H] of any weight type (rows dequantized exactly) */
/* x2, out2, w2, ids2 (here and below): NULL, or a second copy of what the kernel writes to x,
 * out, w, ids (the snapshot of a traced row, read by the step's trace capture at its end) */
hipError_t hip_launch_embed(int32_t *tok, const hip_step_params *sp, const int32_t *pick, const void *emb, int dt,
                            float *x, float *x2, long long H, long long V, int rows, int *err_flag, hipStream_t s);
hipError_t hip_launch_rmsnorm(const float *x, const void *w, int dt, float *out, float *out2, long long n,
                              float eps, int rows, hipStream_t s);
/* x += y, then out = rmsnorm(x): the residual add fused with the next layer norm. */
hipError_t hip_launch_add_rmsnorm(float *x, const float *y, const void *w, int dt, float *out, float *x2,
                                  float *out2, long long n, float eps, int rows, hipStream_t s);
hipError_t hip_launch_add(float *x, const float *y, float *x2, long long n, hipStream_t s);

typedef struct hip_qkn_args {
    float *qkv;
    const void *qn, *kn;
    int qn_dt, kn_dt;
    const float *cos_t, *sin_t;
    float *kc, *vc;        /* non-NULL: also store k (after RoPE) and v at pos0 + r */
    const hip_step_params *sp;
    int nh, nkv, hd;
    long long qkv_dim, q_dim, kv_dim, max_seq;
    float eps;
    int *err_flag;
} hip_qkn_args;
hipError_t hip_launch_qk_norm_rope(const hip_qkn_args *a, int rows, hipStream_t s);
hipError_t hip_launch_kv_store(const float *qkv, float *kc, float *vc, const hip_step_params *sp,
                               long long qkv_dim, long long q_dim, long long kv_dim, int hd,
                               long long max_seq, int rows, int *err_flag, hipStream_t s);

typedef struct hip_attn_args {
    const float *qkv, *kc, *vc;
    float *out;
    const hip_step_params *sp;
    int nh, nkv, hd;
    long long qkv_dim, q_dim, kv_dim, max_seq;
    float scale;
    float *part;           /* decode partials [nh][max_splits][hd + 2] */
    int max_splits;
    int *tickets;          /* decode: per kv head, splits done this step (0 between steps) */
    int *err_flag;
} hip_attn_args;
size_t hip_attn_smem_bytes(int nh, int nkv, int hd);
/* Prefill: query tiles (hip_attn_prefill.h) where the shape allows and MOERT_HIP_ATTN is
 * not "row", else one block per (row, kv head).  Decode (rows == 1): split over keys +
 * combine. */
hipError_t hip_launch_attention(const hip_attn_args *a, int rows, bool split, hipStream_t s);

hipError_t hip_launch_route(const float *logits, float *w, int32_t *ids, float *w2, int32_t *ids2, int E,
                            int K, int norm, int rows, hipStream_t s);

/* ---- MoE ------------------------------------------------------------------------------ */
typedef struct hip_moe_index_args {
    const int32_t *ids;    /* [rk] expert of assignment (token t, slot j) = t * K + j */
    int rk, E, bm;
    int32_t *counts;       /* [E] */
    int32_t *offs;         /* [E + 1] */
    int32_t *order;        /* [rk] assignment at sorted position p */
    int32_t *inv;          /* [rk] sorted position of assignment a */
    int32_t *tiles;        /* [1 + 3 * max_tiles] */
    int *err_flag;
} hip_moe_index_args;
hipError_t hip_launch_moe_index(const hip_moe_index_args *a, hipStream_t s);
hipError_t hip_launch_moe_combine(const float *down, const int32_t *inv, const float *tw,
                                  float *out, int K, long long H, int rows, hipStream_t s);

/* Single-token expert FFN (decode) and the dense MLP (ids == NULL, tw == NULL, kslots 1). */
typedef struct hip_moe_dec_args {
    const float *x;        /* [H] */
    const int32_t *ids;    /* [kslots] */
    const float *tw;       /* [kslots] */
    const void *gate, *up, *down;
    long long estride_gu, estride_d; /* BYTES between consecutive experts' matrices */
    int E, kslots;
    long long I, H;
    float *h;              /* [kslots, I] silu(gate) * up */
    float *out;            /* [H] */
    float *out2;           /* NULL, or a copy of out */
    float *xadd, *xadd2;   /* NULL, or the residual: xadd[i] += out[i] (and the sum to xadd2) */
    int *err_flag;
    int release_late;      /* hip_moe_dec_early: the gate/up lets the down launch only after its
                            * wait, and the down loads its routed weights before its own */
} hip_moe_dec_args;
hipError_t hip_launch_moe_gateup_dec(int dtype, const hip_moe_dec_args *a, int grid, hipStream_t s);
hipError_t hip_launch_moe_down_dec(int dtype, const hip_moe_dec_args *a, int grid, hipStream_t s);
/* Whether a decode MoE of gate/up type dt_gu and down type dt_down takes the down that loads
 * its weights before its wait (MOERT_HIP_DOWNEARLY, default on): both of its kernels must
 * then be launched with release_late set. */
bool hip_moe_dec_early(int dt_gu, int dt_down, const hip_moe_dec_args *a);

/* ---- trace ------------------------------------------------------------------------- */
typedef struct hip_trace_args {
    const float *src;
    const int32_t *src2;   /* moe_router ids, or NULL */
    unsigned char *ring;
    unsigned long long *shadow; /* [2][n_trace][4] ring headers as of the step's start */
    int ti, n_trace;
    long long width;
    unsigned long long record_bytes;
    long long cap;
    int tensor_mode, overwrite, logits_last;
    const hip_step_params *sp;
    void *part;            /* hip_launch_trace_wide: HIP_TRACE_WIDE_PART_BYTES of scratch */
} hip_trace_args;
hipError_t hip_launch_trace(const hip_trace_args *a, int grid, hipStream_t s);
/* The block size of a slot's capture (it fixes the order of the stats' sums). */
#define HIP_TRACE_BATCH_THREADS 256
static inline int hip_trace_threads(long long width)
{
    return width > 16384 ? 1024 : HIP_TRACE_BATCH_THREADS;
}
/* n slots of one row each, block b capturing tab[b] (device memory), every one with
 * hip_trace_threads(width) == HIP_TRACE_BATCH_THREADS: the same records as hip_launch_trace. */
hipError_t hip_launch_trace_batch(const hip_trace_args *tab, int n, hipStream_t s);
/* A wide slot's one-row capture (hip_trace_threads(width) == 1024) on 16 blocks of 64
 * threads, in three kernels: the same record as hip_launch_trace with grid 1. */
hipError_t hip_launch_trace_wide(const hip_trace_args *a, hipStream_t s);

/* Raises the dynamic shared-memory limit of the kernels that need more than 48 KB for this
 * model (GEMV x rows, attention); returns the first failure. */
hipError_t hip_kernels_set_smem(size_t gemv_bytes, size_t moe_down_bytes, size_t attn_bytes);
/* Reads MOERT_HIP_QSTAGE for the decode GEMVs launched from now on (each backend init):
 * 0 W8 loads straight from global memory, 1 (default) Q6_K rows staged through shared memory
 * with 16-byte loads, 2 Q8_0 / Q4_0 / Q5_0 as well, 3 Q4_K / Q5_K too.  The same bits each way. */
void hip_kernels_qstage_from_env(void);
/* Reads MOERT_HIP_SGPIPE likewise: 1 (default) staged GEMVs of many row groups (the Q6_K LM
 * head) on a resident grid whose blocks load their next rows while they multiply, 0 never, 2
 * every block-typed GEMV, on a grid of a few blocks (tests), 3 as 1 for every type (A/B).  The
 * same bits each way. */
void hip_kernels_sgpipe_from_env(void);
/* Reads MOERT_HIP_X4ROWS likewise: Q8_0X4's decode kernels take 2 (default) or 1 times the
 * rows per block of the others'; and MOERT_HIP_DOWNR: the MoE down's rows per block, 1, 2 or
 * 4 (unset: by type).  The same bits each way. */
void hip_kernels_rows_from_env(void);
#if MOERT_HIP_TIMELINE
/* The timeline build (hip/NOTES.md "Profiling"): the stamps since the last call (at most max),
 * their count in n, then the count reset. */
hipError_t hip_timeline_take(unsigned long long *t, unsigned *line, unsigned *n, unsigned max);
#endif

#endif
