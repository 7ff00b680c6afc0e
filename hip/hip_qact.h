/* hip_qact: the act-q8 numerics on the GPU (runtime.numerics: act-q8; ops.h defines them),
 * kernels in hip/qact.hip.  C++ (included by qact.hip and backend_hip.hip).
 *
 *   hip_launch_qact      quantizes rows of floats into ops_qact_row's layout, byte for byte
 *                        (both forms: 32-blocks with their sums, and for k % 256 == 0 the
 *                        256-blocks with the sums of each 16), one block per 256 elements;
 *   hip_launch_qmatmul   out[m, n] = qdot(xq[m], W[n]) over up to 3 row segments of one block
 *                        type, for m quantized rows (decode: m = 1): the streaming GEMV of
 *                        kernels.hip (block = R rows, 128 threads split k in chunks of 8,
 *                        weight loads in flight, the first round before the PDL wait), the
 *                        chunk's 8 int8 products summed exactly in int32 (dp4a);
 *   hip_launch_qmoe_*    the expert FFN on quantized rows: gate/up of every (token, slot)
 *                        with SwiGLU (h in floats), then, once h is quantized, down with the
 *                        slots combined in slot order; the dense MLP is one slot, no weight.
 *
 * Order (one per output, whatever the grid): per thread a serial chain over its chunks in
 * increasing k, each chunk adding fmaf((float)isum, dw * da, acc) (K-quants: the sub-block
 * scale and min folded into the integer sums, d * da and dmin * da as the factors), then
 * the warp butterfly and the warps in order.  It is not the CPU's order (ops.h), so results
 * differ from the CPU's act-q8 in the last bits; integer parts are exact on both.
 * Weights must be 16-byte aligned rows of a block type and k a multiple of its block.
 */
#ifndef MOERT_HIP_QACT_H
#define MOERT_HIP_QACT_H

#include <stdint.h>

#include "hip_compat.h"
#include "hip_kernels.h"

/* Where the arrays of a quantized row of k lie (the layout of ops_qact_at, ops/ops_impl.h,
 * which the host self-test compares byte for byte). */
typedef struct hip_qa_offsets {
    long long q32, q256, d32, bs32, d256, bs16;
} hip_qa_offsets;
static inline __host__ __device__ hip_qa_offsets hip_qa_at(long long k)
{
    hip_qa_offsets o;
    o.q32 = 0;
    o.q256 = k;
    o.d32 = 2 * k;
    o.bs32 = 2 * k + k / 8;
    o.d256 = 2 * k + k / 4;
    o.bs16 = 2 * k + k / 4 + k / 64;
    return o;
}

typedef struct hip_qact_args {
    const float *x;
    long long ldx;         /* floats between rows */
    unsigned char *q;
    long long qb;          /* bytes between quantized rows (ops_qact_row_bytes(k) or more) */
    long long k;           /* a multiple of 32 */
    int rows;
} hip_qact_args;
hipError_t hip_launch_qact(const hip_qact_args *a, hipStream_t s);

typedef struct hip_qgemv_args {
    const unsigned char *xq;
    long long qb;          /* bytes between quantized input rows */
    const void *w[3];
    long long seg_end[3];  /* cumulative row ends; unused segments repeat n_total */
    float *y;
    long long ldy;         /* floats between output rows */
    float *y2;             /* NULL, or a copy of row 0's outputs (a traced row's snapshot) */
    long long n_total, k;
    int m;                 /* input rows */
} hip_qgemv_args;
hipError_t hip_launch_qmatmul(int dtype, const hip_qgemv_args *a, hipStream_t s);

typedef struct hip_qmoe_args {
    const unsigned char *xq;
    long long qbx;         /* token rows (H wide), quantized */
    const int32_t *ids;    /* [tokens * K] expert of (token t, slot j) at t * K + j; NULL: dense */
    const float *tw;       /* [tokens * K] routing weights; NULL: dense (one slot, no weight) */
    const void *gate, *up, *down;
    long long estride_gu, estride_d; /* bytes between consecutive experts' matrices */
    int E, K, tokens;
    long long I, H;
    float *h;              /* [tokens * K, I] silu(gate) * up, row t * K + j */
    const unsigned char *hq;
    long long qbh;         /* h rows quantized (by hip_launch_qact between the two kernels) */
    float *out;            /* [tokens, H] */
    float *out2;           /* NULL, or a copy of row 0 of out */
    int *err_flag;
} hip_qmoe_args;
hipError_t hip_launch_qmoe_gateup(int dtype, const hip_qmoe_args *a, hipStream_t s);
hipError_t hip_launch_qmoe_down(int dtype, const hip_qmoe_args *a, hipStream_t s);

/* True for the weight types the act-q8 kernels take (the block types, X4 included). */
static inline bool hip_qact_takes(int dtype)
{
    return dtype >= HIP_DT_Q4_0 && dtype < HIP_DT_COUNT;
}

#endif
