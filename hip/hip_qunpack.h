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
 * Block types are ops.h's ops_dtype values (equal to hip_kernels.h's HIP_DT_*), and 9 for
 * a group of hip_kernels.h's Q8_0X4 (the four blocks' quants from byte 8; a Q6_KX4 block's
 * bytes but its scale are a Q6_K block's, so it unpacks as type 8). */
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

/* The 4 bytes at byte offset o (even) of little-endian words w, as one word (byte o in the
 * low byte).  Reads w[o / 4 + 1] whatever o is (no branch: a warp's offsets differ in
 * alignment), so one word past the bytes must be readable. */
QUHD uint32_t hip_qu_ld32(const uint32_t *w, int o)
{
    int i = o >> 2;
    return (uint32_t)((((uint64_t)w[i + 1] << 32) | w[i]) >> (8 * (o & 3)));
}

/* the nibbles (hi: the high ones) of the 4 bytes of v, one per byte */
QUHD uint32_t hip_qu_nib(uint32_t v, int hi)
{
    return (v >> (4 * hi)) & 0x0f0f0f0fu;
}

/* per byte b - o (two's complement) for bytes b <= 127 + o: b + 128 - o cannot carry into
 * the next byte, and ^ 0x80 takes 128 back off mod 256 */
QUHD uint32_t hip_qu_sub(uint32_t v, uint32_t o)
{
    return (v + 0x01010101u * (128u - o)) ^ 0x80808080u;
}

/* Elements e .. e + 3 (e % 4 == 0, e < the block's elements) of the block at byte offset
 * boff (even) of the words w (hip_qu_ld32), as 4 int8 operands, element e in the low byte.
 * Word operations only: 1 to 3 word reads per 4 operands. */
QUHD uint32_t hip_qu_pack4(const uint32_t *w, int boff, int dt, int e)
{
    switch (dt) {
    case 5: /* Q8_0: the quants from byte 2 */
        return hip_qu_ld32(w, boff + 2 + e);
    case 9: /* Q8_0X4 (e < 128): the quants from byte 8 */
        return hip_qu_ld32(w, boff + 8 + e);
    case 3: /* Q4_0: elements 0-15 low nibbles, 16-31 high nibbles of bytes 2-17 */
        return hip_qu_sub(hip_qu_nib(hip_qu_ld32(w, boff + 2 + e % 16), e / 16), 8);
    case 4: { /* Q5_0: the 32 high bits at bytes 2-5 (element x: bit x), nibbles from byte 6;
               * bits e .. e + 3 spread to bit 4 of each byte by one multiply (no carries:
               * the four copies of the 4 bits do not overlap) */
        uint32_t h = (hip_qu_ld32(w, boff + 2) >> e) & 15u;
        uint32_t hb = ((h * 0x00204081u) & 0x01010101u) << 4;
        return hip_qu_sub(hip_qu_nib(hip_qu_ld32(w, boff + 6 + e % 16), e / 16) | hb, 16);
    }
    case 6: /* Q4_K: sub-block s = e / 32 in nibble s % 2 of bytes 16 + 32 (s / 2) .. */
        return hip_qu_nib(hip_qu_ld32(w, boff + 16 + 32 * (e / 64) + e % 32), e / 32 % 2);
    case 7: { /* Q5_K: nibbles from byte 48, bit s = e / 32 of qh[e % 32] (bytes 16-47) */
        uint32_t hb = ((hip_qu_ld32(w, boff + 16 + e % 32) >> (e / 32)) & 0x01010101u) << 4;
        return hip_qu_nib(hip_qu_ld32(w, boff + 48 + 32 * (e / 64) + e % 32), e / 32 % 2) | hb;
    }
    default: { /* Q6_K: half h = e / 128: 4 low bits from ql (bytes 0-127), 2 high from qh
                * (128-191), minus 32 */
        int h = e / 128, tq = e % 128 / 32, l = e % 32;
        uint32_t lo = hip_qu_nib(hip_qu_ld32(w, boff + 64 * h + 32 * (tq & 1) + l), tq >> 1);
        uint32_t hi = ((hip_qu_ld32(w, boff + 128 + 32 * h + l) >> (2 * tq)) & 0x03030303u) << 4;
        return hip_qu_sub(lo | hi, 32);
    }
    }
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
