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

#include "hip_kernels.h"

/* True when hip_launch_gemm_mma runs this GEMM (dtype, A mode, rows per tile as for
 * hip_launch_gemm) on this device. */
bool hip_gemm_mma_takes(int dtype, int amode, int bm, const hip_gemm_args *a);
/* Enqueues C = A . W^T on tensor cores; only for a GEMM hip_gemm_mma_takes accepted. */
hipError_t hip_launch_gemm_mma(int amode, int bm, const hip_gemm_args *a, hipStream_t s);

#endif
