/* hip_gemm_qmma: the act-q8 prefill GEMMs on int8 tensor cores (hip/gemm_qmma.hip):
 * C[p, n] = qdot(A row p, W row n) as ops.h defines act-q8, for the six block types.
 *
 * A: quantized activation rows in ops_qact_row's layout (ops/ops_impl.h ops_qact_at), row r
 * at a + r * a_stride bytes, or, with a row table, tile row p at a + (gather[p] / gdiv) *
 * a_stride.  W: n rows of k elements in their GGUF block bytes (Q8_0, Q4_0, Q5_0 blocks of
 * 32; Q4_K, Q5_K, Q6_K super-blocks of 256), row n at w + n * ops_row_bytes(dt, k); grouped
 * GEMMs take expert e's matrix at w + e * w_estride bytes and their tiles from the MoE tile
 * table ([0] = count, then (expert, row0, row1) triples; rows row0 .. row1 - 1 <= HIP_MOE_BM).
 *
 * Numerics: the weight quants are unpacked into int8 operands in shared memory (hip_qunpack.h)
 * and multiplied with the activation quants by the MMA unit in exact int32 arithmetic, per
 * block of 32 (Q8_0, Q4_0, Q5_0; Q4_K and Q5_K sub-blocks) or 16 (Q6_K sub-blocks).  Then:
 *   32-blocks: acc = fmaf((float)i_b, dw_b * da_b, acc), blocks in order from 0 (one chain,
 *     where ops_matmul_qact keeps 16: the same terms summed in another order, ~1e-7 apart);
 *   K-quants: the super-block's integer sums and ops.h's float steps exactly as
 *     ops_matmul_qact does them ((d * da) * i - (dmin * da) * m, acc = acc + t), so these
 *     outputs equal the CPU's bit for bit.
 * One fixed order per output: bit-identical run to run, no atomics, independent of m.
 *
 * Where: NVIDIA sm_80 and later (mma.sync m16n8k32 / m16n8k16 s8 -> s32); AMD CDNA gfx90a
 * (MFMA i32 16x16x16 i8) and gfx94x (16x16x32 i8) only when MOERT_HIP_GEMM=mma asks for it
 * (compiled, never run on an AMD GPU); nowhere else (hip_qgemm_takes says false).
 * MOERT_HIP_GEMM=fma turns it off (act-q8 prefill then runs hip_qact.h's GEMVs per row).
 */
#ifndef MOERT_HIP_GEMM_QMMA_H
#define MOERT_HIP_GEMM_QMMA_H

#include "hip_kernels.h"

typedef struct hip_qgemm_args {
    const void *a;         /* quantized activation rows (ops_qact layout for k) */
    long long a_stride;    /* bytes between rows: ops_qact_row_bytes(k) (a multiple of 16) */
    const int32_t *gather; /* NULL, or the row table (see above) */
    int gdiv;
    const void *w;         /* [n, k] in blocks (grouped: expert 0's) */
    long long w_estride;   /* grouped: bytes between consecutive experts' matrices */
    float *c;
    long long ldc;
    int m, n, k;           /* m: rows of a plain GEMM (grouped: from the tiles) */
    const int32_t *tiles;  /* grouped: the MoE tile table; NULL: dense */
    int max_tiles;         /* grouped: grid rows */
} hip_qgemm_args;

/* True when hip_launch_qgemm runs this GEMM (dt an HIP_DT_* block type) on this device:
 * k whole blocks, a, a_stride, w (grouped: and w_estride) 16-byte aligned (the weight region's tensors
 * and experts are: WLAYOUT_ALIGN). */
bool hip_qgemm_takes(int dt, const hip_qgemm_args *a);
/* Enqueues the GEMM; only for one hip_qgemm_takes accepted. */
hipError_t hip_launch_qgemm(int dt, const hip_qgemm_args *a, hipStream_t s);
/* h[i] = silu(g[i]) * u[i] (hip_devmath.h's silu_mul, the CPU's formula) for i < n: the
 * grouped down's input, quantized next; h may be g. */
hipError_t hip_launch_qmma_swiglu(const float *g, const float *u, float *h, long long n, hipStream_t s);

#endif
