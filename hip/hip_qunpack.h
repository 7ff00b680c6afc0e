/* hip_qunpack: the weight side of the act-q8 tensor-core GEMM (hip/gemm_qmma.hip): GGUF block
 * bytes turned into the plain int8 operands the integer MMA takes, and the integer scales.
 *
 * Written in the subset C11 and CUDA/HIP C++ share: the functions are __host__ __device__
 * in a GPU build and plain static inline in C, so the CPU-only test suite checks them on the
 * host against ops' scalar weight formulas (tests/test_hip.c), with no GPU and no HIP build.
 *
 * Operand values, per element of a block, such that the weight = scale * operand (- min):
 *   Q8_0 the int8 quant; Q4_0 nibble - 8 (-8..7); Q5_0 (nibble | high bit << 4) - 16;
 *   Q4_K the nibble (0..15); Q5_K nibble | high bit << 4 (0..31); Q6_K (4 low | 2 high
 *   bits) - 32 (-32..31).  The K-quants' mins are applied apart, from the activations'
 *   sums (ops.h's act-q8 definition), so their operands stay unsigned.
 * Block types are ops.h's ops_dtype values (equal to hip_kernels.h's HIP_DT_*). */
#ifndef MOERT_HIP_QUNPACK_H
#define MOERT_HIP_QUNPACK_H

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define QUHD static __host__ __device__ __forceinline__
#else
#define QUHD static inline
#endif

/* Byte offsets of the f16 scales in a block: d (all types) and dmin (Q4_K, Q5_K). */
#define HIP_QU_D_OFF(dt) ((dt) == 8 /* Q6_K */ ? 208 : 0)
#define HIP_QU_DMIN_OFF 2

/* Elements e .. e + 3 (e % 4 == 0, e < the block's elements) of block b as 4 int8
 * operands, element e in the low byte. */
QUHD uint32_t hip_qu_pack4(const uint8_t *b, int dt, int e)
{
    uint32_t out = 0;
    for (int i = 0; i < 4; i++) {
        int x = e + i, q;
        switch (dt) {
        case 5: /* Q8_0 */
            q = (int8_t)b[2 + x];
            break;
        case 3: /* Q4_0: elements 0-15 low nibbles, 16-31 high nibbles */
            q = ((b[2 + x % 16] >> (4 * (x / 16))) & 15) - 8;
            break;
        case 4: /* Q5_0: the 32 high bits at bytes 2-5, nibbles from byte 6 */
            q = (((b[6 + x % 16] >> (4 * (x / 16))) & 15) | ((b[2 + x / 8] >> (x % 8)) & 1) << 4) - 16;
            break;
        case 6: /* Q4_K: sub-block s = x / 32 in nibble s % 2 of bytes 16 + 32 (s / 2) .. */
            q = (b[16 + 32 * (x / 64) + x % 32] >> (4 * (x / 32 % 2))) & 15;
            break;
        case 7: /* Q5_K: nibbles from byte 48, bit s of qh[x % 32] (bytes 16-47) */
            q = ((b[48 + 32 * (x / 64) + x % 32] >> (4 * (x / 32 % 2))) & 15) | ((b[16 + x % 32] >> (x / 32)) & 1) << 4;
            break;
        default: { /* Q6_K: half h = x / 128 of ql (bytes 0-127), qh (128-191) */
            int h = x / 128, tq = x % 128 / 32, l = x % 32;
            int lo = (b[64 * h + 32 * (tq & 1) + l] >> (4 * (tq >> 1))) & 15;
            int hi = (b[128 + 32 * h + l] >> (2 * tq)) & 3;
            q = (lo | hi << 4) - 32;
            break;
        }
        }
        out |= (uint32_t)(uint8_t)(int8_t)q << (8 * i);
    }
    return out;
}

/* Q4_K / Q5_K: the 6-bit scale (*sc) and min (*mn) of sub-block j (0..7), from the 12 bytes at
 * b + 4 (gguf-py's get_scale_min). */
QUHD void hip_qu_kscale(const uint8_t *b, int j, int *sc, int *mn)
{
    const uint8_t *s = b + 4;
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        *mn = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
    }
}

/* Q6_K: the int8 scale of sub-block j (0..15, 16 elements each). */
QUHD int hip_qu_q6scale(const uint8_t *b, int j)
{
    return (int8_t)b[192 + j];
}

#endif
