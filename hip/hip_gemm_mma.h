/* hip_gemm_mma: the prefill GEMMs of hip_kernels.h (dense, grouped-expert with gathered
 * rows, SwiGLU applied on load) on tensor cores, for BF16 weights (hip/gemm_mma.hip).
 *
 * Numerics: the weights are bf16, so exact as MMA operands; each fp32 activation a is split
 * into three bf16 terms hi + lo + lo2 (8 significand bits each, by truncation), whose sum is
 * a exactly (for |a| >= 2^-103; within 2^-126 below).  Every product is then exact; a k
 * tile of 32 is summed by the
 * MMA unit into a zeroed accumulator and added to the fp32 result with one IEEE addition,
 * so the rounding is that of an fp32 sum of 32-element partials (hip/NOTES.md has the
 * measured error).  One fixed order per output: bit-identical run to run, no atomics.
 *
 * Where: NVIDIA sm_80 and later (mma.sync m16n8k16 bf16 -> f32); AMD CDNA gfx90a / gfx94x
 * (MFMA 16x16x16 bf16), only when MOERT_HIP_GEMM=mma asks for it (compiled, not yet run on
 * an AMD GPU).  MOERT_HIP_GEMM=fma keeps every GEMM on the FMA kernel.  Other weight types
 * and shapes the kernel does not take stay on the FMA kernel (k_gemm).
 */
#ifndef MOERT_HIP_GEMM_MMA_H
#define MOERT_HIP_GEMM_MMA_H

#include <stdint.h>

#include "hip_kernels.h"

/* Once per process: whether the device's matrix instructions may run (MOERT_HIP_GEMM is not
 * "fma"; NVIDIA sm_80 or later; AMD gfx90a / gfx94x only with MOERT_HIP_GEMM=mma).  The
 * BF16 and the act-q8 int8 tensor-core GEMMs both ask it. */
bool hip_mma_device(void);
/* The count of a warp's live m16 fragments (0, 1, 2) as a type: both tensor-core GEMMs branch
 * on it once per k tile, so the unrolled MMA code inside carries no per-fragment branch. */
template <int N> struct hip_mma_nmb {
    static constexpr int value = N;
};
/* True when hip_launch_gemm_mma runs this GEMM (dtype, A mode, rows per tile as for
 * hip_launch_gemm) on this device. */
bool hip_gemm_mma_takes(int dtype, int amode, int bm, const hip_gemm_args *a);
/* Enqueues C = A . W^T on tensor cores; only for a GEMM hip_gemm_mma_takes accepted. */
hipError_t hip_launch_gemm_mma(int amode, int bm, const hip_gemm_args *a, hipStream_t s);

/* ---- the planes path (NVIDIA): A split once per GEMM, both operands by cp.async ---------
 * hip_mma_split writes A (SwiGLU(a, a2) when a2 is non-NULL) as three bf16 planes
 * [3][rows][k] (hi, lo, lo2 of the split above, plane q at q * rows * k); the GEMMs below read
 * them, so a k tile's terms are the same bits as the per-tile split's and every output the
 * same sum in the same order: results are bit-identical to hip_launch_gemm_mma's. */
typedef struct hip_mma_args {
    const uint16_t *ap;    /* A planes: row r of plane q at ap + q * ps + r * k */
    long long ps;          /* elements between planes */
    const int32_t *gather; /* grouped: NULL (tile row p is planes row p), or planes row gather[p] / gdiv */
    int gdiv;
    const void *w[3];      /* bf16 [n, k] each.  Dense: segments of the output columns (w[i] holds
                            * columns [seg_end[i-1], seg_end[i])); grouped: w[0] expert 0's;
                            * gate-up: w[0] gate, w[1] up (expert 0's) */
    long long seg_end[3];
    long long w_estride;   /* grouped: BYTES between consecutive experts' matrices */
    float *c;              /* dense, grouped: C [m, n] (row stride ldc) */
    long long ldc;
    uint16_t *hp;          /* gate-up: SwiGLU(gate, up) as planes [3][hrows][n], plane stride hps */
    long long hps;
    int m, n, k;           /* gate-up: n = columns of gate (= of up, = of h) */
    const int32_t *tiles;  /* grouped, gate-up: the MoE tile table (hip_kernels.h) */
    int max_tiles;
    int kparts;            /* dense: > 1 splits k into that many parts of whole k tiles */
    float *part;           /* dense, kparts > 1: kparts x [m, n] partials (hip_scratch_planes) */
} hip_mma_args;

/* True when the planes path runs on this device (MOERT_HIP_GEMM unset or "mma"; "tile" keeps
 * the per-tile split kernel, "fma" the FMA kernel) for BF16 weights of k columns, n outputs. */
bool hip_mma_planes_takes(int n, int k);
hipError_t hip_mma_split(const float *a, const float *a2, long long lda, int rows, int k, uint16_t *planes,
                         hipStream_t s);
/* C = A . W^T, A from planes of a->m rows.  With kparts > 1 (hip_splitk_parts: a narrow
 * GEMM that would fill less than a wave) each part sums its k tiles as above into a->part,
 * then the parts are added in part order: a fixed order that depends on n and k only, never
 * on the rows, so a row's bits are the same in a prompt and in a one-row step. */
hipError_t hip_mma_dense(const hip_mma_args *a, hipStream_t s);
/* the down GEMM of the MoE: tiles of gathered (or, gather NULL, sorted) rows */
hipError_t hip_mma_grouped(const hip_mma_args *a, hipStream_t s);
/* gate and up in one GEMM: h = SwiGLU(A . gate^T, A . up^T) as planes (the down GEMM's A) */
hipError_t hip_mma_gateup(const hip_mma_args *a, hipStream_t s);

#endif
