/* hip_wload: weight loaders of the HIP kernels, one per weight type (hip_kernels.h's
 * HIP_DT_*: F32, BF16, F16, ggml's block types Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K and the
 * device regroupings Q8_0X4, Q6_KX4 of two of them):
 *
 *   dt_layout<DT>   block elements and bytes (1 and the element size for plain types): the
 *                   layouts of ops.c's table; a row of k elements is k / be * bb bytes
 *                   (row_bytes_t), so rows of every type are addressed in bytes;
 *   W8<DT>          8 consecutive elements k .. k + 7 (k % 8 == 0) of one row: load() issues
 *                   the loads into registers (load_cs: with the streaming hint), get() widens
 *                   them to fp32 once they are needed, so a GEMV keeps its loads in flight and
 *                   dequantizes in registers;
 *   load_t<DT>      one element i of a row, any alignment (the scalar paths, the embedding).
 *
 * Exactness: every weight comes out as the same float32 value that ops_to_f32 (ops_quant.c,
 * gguf-py's formulas) gives, operation by operation: f16 scales widen exactly, each product
 * (d * q, d * sc, (d * sc) * q) is exact in f32 (at most 11 + 8 + 6 significant bits), and
 * the only rounding step, the K-quant offset subtraction (d * sc) * q - dmin * m, is one
 * IEEE subtraction.  On NVIDIA the products and that subtraction are __fmul_rn / __fsub_rn,
 * which nvcc never contracts into an FMA (nvcc's default is -fmad=true); under clang (hipcc)
 * contraction is switched off inside these functions by pragma.  (A contraction could not
 * change a bit anyway, since the product it would fuse is exact, but nothing relies on it.)
 * Everything here is __host__ __device__, so the host can check it against ops
 * (backend_hip_dequant_selftest, run by the test suite without a GPU).
 *
 * Alignment: W8's loads need the row start aligned as its type's block allows: F32, BF16,
 * F16, Q4_K and Q5_K rows 16-byte aligned (the vector path's check; 144- and 176-byte blocks
 * keep it), Q4_0, Q5_0, Q8_0 and Q6_K blocks are read in 1- and 2-byte pieces (their
 * 18/22/34/210-byte blocks are only 2-byte aligned), Q8_0X4 and Q6_KX4 rows 8-byte aligned
 * (136- and 840-byte groups keep it): one 8-byte load per 8 quants.
 */
#ifndef MOERT_HIP_WLOAD_H
#define MOERT_HIP_WLOAD_H

#include <string.h>

#include <type_traits>

#include "hip_compat.h"
#include "hip_kernels.h"

#ifndef MOERT_LDCS
#define MOERT_LDCS 1 /* streaming-load hint for weights in the streaming GEMVs */
#endif

#define WHD static __host__ __device__ __forceinline__
#define WMHD __host__ __device__ __forceinline__

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define MOERT_WL_DEVICE 1
#endif
#if defined(MOERT_WL_DEVICE)
#define MOERT_WL_UNROLL _Pragma("unroll")
#else
#define MOERT_WL_UNROLL
#endif
#if defined(__clang__)
#define MOERT_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define MOERT_NO_CONTRACT
#endif

/* ---- scalar pieces ------------------------------------------------------------------ */

WHD float u2f(unsigned u)
{
#if defined(MOERT_WL_DEVICE)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* a * b and a - b rounded once each, never fused */
WHD float wl_mul(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    MOERT_NO_CONTRACT
    return a * b;
#endif
}
WHD float wl_sub(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    MOERT_NO_CONTRACT
    return a - b;
#endif
}

WHD float bf16_lo(unsigned w)
{
    return u2f(w << 16);
}
WHD float bf16_hi(unsigned w)
{
    return u2f(w & 0xffff0000u);
}

/* Exact f16 -> f32 (the same values ops_f16_to_f32 gives). */
WHD float f16_to_f32(unsigned h);
/* A block scale widened: the hardware conversion on NVIDIA (exact for every finite or
 * infinite f16; a NaN scale may come out as another NaN), f16_to_f32 elsewhere. */
WHD float scale_f16(unsigned h)
{
#if defined(__CUDA_ARCH__)
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)h));
    return f;
#else
    return f16_to_f32(h);
#endif
}
WHD float f16_to_f32(unsigned h)
{
    unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (e == 0x1fu)
        return u2f(sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u));
    if (e == 0) {
        float f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24: exact */
        return sign ? -f : f;
    }
    return u2f(sign | ((e + 112u) << 23) | (man << 13));
}

/* ---- layouts ------------------------------------------------------------------------ */

template <int DT> struct dt_layout;
template <> struct dt_layout<HIP_DT_F32> { static const int be = 1, bb = 4; };
template <> struct dt_layout<HIP_DT_BF16> { static const int be = 1, bb = 2; };
template <> struct dt_layout<HIP_DT_F16> { static const int be = 1, bb = 2; };
template <> struct dt_layout<HIP_DT_Q4_0> { static const int be = 32, bb = 18; };
template <> struct dt_layout<HIP_DT_Q5_0> { static const int be = 32, bb = 22; };
template <> struct dt_layout<HIP_DT_Q8_0> { static const int be = 32, bb = 34; };
template <> struct dt_layout<HIP_DT_Q4_K> { static const int be = 256, bb = 144; };
template <> struct dt_layout<HIP_DT_Q5_K> { static const int be = 256, bb = 176; };
template <> struct dt_layout<HIP_DT_Q6_K> { static const int be = 256, bb = 210; };
/* X4: a group of four blocks (hip_kernels.h; written by hip_host_x4_pack) */
template <> struct dt_layout<HIP_DT_Q8_0X4> { static const int be = 128, bb = HIP_X4_Q8_0_GROUP; };
template <> struct dt_layout<HIP_DT_Q6_KX4> { static const int be = 1024, bb = HIP_X4_Q6_K_GROUP; };

/* The ops type whose values a kernel type holds (hip_dt_base as a constant). */
template <int DT> struct dt_base {
    static const int v = DT == HIP_DT_Q8_0X4 ? HIP_DT_Q8_0 : DT == HIP_DT_Q6_KX4 ? HIP_DT_Q6_K : DT;
};

/* Bytes of a row of k elements (k a multiple of the block: model_bind guarantees it). */
template <int DT> WHD long long row_bytes_t(long long k)
{
    return k / dt_layout<DT>::be * dt_layout<DT>::bb;
}
/* The block holding element k of a row, and k's index inside it. */
template <int DT> WHD const unsigned char *block_of(const unsigned char *row, long long k)
{
    return row + k / dt_layout<DT>::be * dt_layout<DT>::bb;
}

/* ---- loads (CS: the streaming, evict-first hint on NVIDIA; only a cache hint) ---------- */

template <bool CS> WHD unsigned ld_u8(const unsigned char *p)
{
    return *p;
}
template <bool CS> WHD unsigned ld_u16(const unsigned char *p) /* 2-byte aligned */
{
#if defined(__CUDA_ARCH__) && MOERT_LDCS
    if (CS)
        return __ldcs((const unsigned short *)p);
#endif
    return *(const unsigned short *)p;
}
/* 8 bytes at a 2-byte aligned address, as two little-endian words */
template <bool CS> WHD uint2 ld_u64_a2(const unsigned char *p)
{
    uint2 v;
    v.x = ld_u16<CS>(p) | ld_u16<CS>(p + 2) << 16;
    v.y = ld_u16<CS>(p + 4) | ld_u16<CS>(p + 6) << 16;
    return v;
}
template <bool CS> WHD uint2 ld_u64(const unsigned char *p) /* 8-byte aligned */
{
#if defined(__CUDA_ARCH__) && MOERT_LDCS
    if (CS)
        return __ldcs((const uint2 *)p);
#endif
    return *(const uint2 *)p;
}
template <bool CS> WHD uint4 ld_u128(const unsigned char *p) /* 16-byte aligned */
{
#if defined(__CUDA_ARCH__) && MOERT_LDCS
    if (CS)
        return __ldcs((const uint4 *)p);
#endif
    return *(const uint4 *)p;
}

/* Byte t (0..7) of the 8 bytes held in v. */
WHD unsigned byte8(uint2 v, int t)
{
    return ((t < 4 ? v.x : v.y) >> (8 * (t & 3))) & 0xffu;
}

/* Byte permute (CUDA's __byte_perm): byte i of the result is byte (s >> 4i) & 7 of y:x. */
WHD unsigned wl_prmt(unsigned x, unsigned y, unsigned s)
{
#if defined(MOERT_WL_DEVICE)
    return __byte_perm(x, y, s);
#else
    const unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++)
        r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7u))) & 0xffu) << (8 * i);
    return r;
#endif
}

/* Byte t (0..3) of w as the float 2^23 + byte, exactly (the byte fills the low mantissa
 * bits of 2^23): one byte permute and, by the caller, one exact subtraction give the byte's
 * value as a float with no integer-to-float conversion (a quarter-rate instruction). */
WHD float byte_magic(unsigned w, int t)
{
    return u2f(wl_prmt(w, 0x4b000000u, 0x7540u | (unsigned)t));
}
#define WL_MAGIC 8388608.0f /* 2^23 */

/* ---- one element (scalar paths) ------------------------------------------------------ */

WHD unsigned rd16(const unsigned char *p)
{
    return (unsigned)p[0] | (unsigned)p[1] << 8;
}

/* Q4_K / Q5_K: the 6-bit scale and min of sub-block s from the 12 scale bytes (ops_quant.c's
 * kq_scale_min), given as little-endian words y (bytes 0-3), z (4-7), w (8-11). */
WHD void kq_scale(unsigned y, unsigned z, unsigned w, int s, unsigned &sc, unsigned &mn)
{
    const int sh = 8 * (s & 3);
    const unsigned yb = (y >> sh) & 0xffu, zb = (z >> sh) & 0xffu, wb = (w >> sh) & 0xffu;
    if (s < 4) {
        sc = yb & 63u;
        mn = zb & 63u;
    } else {
        sc = (wb & 15u) | (yb >> 6) << 4;
        mn = (wb >> 4) | (zb >> 6) << 4;
    }
}

WHD unsigned rd32(const unsigned char *p)
{
    return rd16(p) | rd16(p + 2) << 16;
}

/* Q6_K element e (0..255) of a block whose bytes but the scale are at q (ql, qh, the int8
 * scales) and whose f16 scale is d. */
WHD float q6_elem(const unsigned char *q, unsigned d, int e)
{
    MOERT_NO_CONTRACT
    const int h = e / 128, tq = e % 128 / 32, l = e % 32;
    const int lo = (q[64 * h + 32 * (tq & 1) + l] >> (4 * (tq >> 1))) & 15;
    const int hi = (q[128 + 32 * h + l] >> (2 * tq)) & 3;
    const float dsc = wl_mul(f16_to_f32(d), (float)(signed char)q[192 + e / 16]);
    return wl_mul(dsc, (float)((lo | hi << 4) - 32));
}

/* Element e of block b of type DT (a block type; X4: of group b), exactly as
 * ops_q_dequant_block. */
template <int DT> WHD float q_elem(const unsigned char *b, int e)
{
    MOERT_NO_CONTRACT
    if (DT == HIP_DT_Q8_0)
        return wl_mul((float)(signed char)b[2 + e], f16_to_f32(rd16(b)));
    if (DT == HIP_DT_Q8_0X4)
        return wl_mul((float)(signed char)b[8 + e], f16_to_f32(rd16(b + 2 * (e / 32))));
    if (DT == HIP_DT_Q6_KX4)
        return q6_elem(b + 8 + 208 * (e / 256), rd16(b + 2 * (e / 256)), e % 256);
    if (DT == HIP_DT_Q4_0)
        return wl_mul(f16_to_f32(rd16(b)), (float)((int)((b[2 + e % 16] >> (4 * (e / 16))) & 15u) - 8));
    if (DT == HIP_DT_Q5_0) {
        const int q = (int)((b[6 + e % 16] >> (4 * (e / 16))) & 15u) | (int)((rd32(b + 2) >> e) & 1u) << 4;
        return wl_mul(f16_to_f32(rd16(b)), (float)(q - 16));
    }
    if (DT == HIP_DT_Q4_K || DT == HIP_DT_Q5_K) {
        const int s = e / 32, l = e % 32;
        unsigned sc, mn;
        kq_scale(rd32(b + 4), rd32(b + 8), rd32(b + 12), s, sc, mn);
        const float ds = wl_mul(f16_to_f32(rd16(b)), (float)sc), dm = wl_mul(f16_to_f32(rd16(b + 2)), (float)mn);
        const unsigned char *qs = DT == HIP_DT_Q5_K ? b + 48 : b + 16;
        int q = (int)((qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 15u);
        if (DT == HIP_DT_Q5_K)
            q |= (int)((b[16 + l] >> s) & 1u) << 4;
        return wl_sub(wl_mul(ds, (float)q), dm);
    }
    return q6_elem(b, rd16(b + 208), e); /* Q6_K */
}

/* Element i of a row of type DT (any alignment of the row for the block types; plain types
 * need their natural alignment). */
template <int DT> WHD float load_t(const void *p, long long i)
{
    if (DT == HIP_DT_BF16)
        return u2f((unsigned)((const unsigned short *)p)[i] << 16);
    if (DT == HIP_DT_F16)
        return f16_to_f32(((const unsigned short *)p)[i]);
    if (DT == HIP_DT_F32)
        return ((const float *)p)[i];
    return q_elem<DT>(block_of<DT>((const unsigned char *)p, i), (int)(i % dt_layout<DT>::be));
}

/* Bits 0..3 of b, one to the low bit of each byte of the result. */
WHD unsigned spread4(unsigned b)
{
    return (b & 1u) | (b & 2u) << 7 | (b & 4u) << 14 | (b & 8u) << 21;
}
/* Q6_K: four 6-bit quants (unsigned, 0..63), one per byte, from four low-nibble bytes
 * (nibble at bit shl) and four high-pair bytes (pair at bit shh). */
WHD unsigned q6_word(unsigned ql, unsigned qh, int shl, int shh)
{
    return ((ql >> shl) & 0x0f0f0f0fu) | ((qh >> shh) & 0x03030303u) << 4;
}

/* ---- 8 elements at a time ------------------------------------------------------------- */

template <int DT> struct W8;

template <> struct W8<HIP_DT_BF16> {
    uint4 v;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        v = ld_u128<CS>(row + k * 2);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { v.x = v.y = v.z = v.w = 0u; }
    WMHD void get(float f[8]) const
    {
        f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x); f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
        f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z); f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
    }
};

template <> struct W8<HIP_DT_F16> {
    uint4 v;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        v = ld_u128<CS>(row + k * 2);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { v.x = v.y = v.z = v.w = 0u; }
    WMHD void get(float f[8]) const
    {
        f[0] = f16_to_f32(v.x & 0xffffu); f[1] = f16_to_f32(v.x >> 16);
        f[2] = f16_to_f32(v.y & 0xffffu); f[3] = f16_to_f32(v.y >> 16);
        f[4] = f16_to_f32(v.z & 0xffffu); f[5] = f16_to_f32(v.z >> 16);
        f[6] = f16_to_f32(v.w & 0xffffu); f[7] = f16_to_f32(v.w >> 16);
    }
};

template <> struct W8<HIP_DT_F32> {
    uint4 a, b;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        a = ld_u128<CS>(row + k * 4);
        b = ld_u128<CS>(row + k * 4 + 16);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { a.x = a.y = a.z = a.w = 0u; b = a; }
    WMHD void get(float f[8]) const
    {
        f[0] = u2f(a.x); f[1] = u2f(a.y); f[2] = u2f(a.z); f[3] = u2f(a.w);
        f[4] = u2f(b.x); f[5] = u2f(b.y); f[6] = u2f(b.z); f[7] = u2f(b.w);
    }
};

/* Q8_0: d (f16), 32 int8; chunk j of a block = bytes 2 + 8j ..  Q8_0X4: d_0 .. d_3, then
 * 4 x 32 int8; chunk j of a group takes d_(j / 4) and bytes 8 + 8j .. (one aligned load). */
template <int DT> struct W8Q8 {
    uint2 q;
    unsigned d;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        const unsigned char *b = block_of<DT>(row, k);
        if (DT == HIP_DT_Q8_0X4) {
            const int j = (int)(k % 128) / 8;
            d = ld_u16<CS>(b + 2 * (j >> 2));
            q = ld_u64<CS>(b + 8 + 8 * j);
        } else {
            const int j = (int)(k % 32) / 8;
            d = ld_u16<CS>(b);
            q = ld_u64_a2<CS>(b + 2 + 8 * j);
        }
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { q.x = q.y = 0u; d = 0u; }
    WMHD void get(float f[8]) const
    {
        MOERT_NO_CONTRACT
        const float df = scale_f16(d);
        const unsigned w[2] = {q.x ^ 0x80808080u, q.y ^ 0x80808080u}; /* q + 128, unsigned */
        MOERT_WL_UNROLL
        for (int t = 0; t < 8; t++)
            f[t] = wl_mul(byte_magic(w[t >> 2], t & 3) - (WL_MAGIC + 128.0f), df);
    }
};
template <> struct W8<HIP_DT_Q8_0> : W8Q8<HIP_DT_Q8_0> {};
template <> struct W8<HIP_DT_Q8_0X4> : W8Q8<HIP_DT_Q8_0X4> {};

/* Q4_0: d, 16 nibble bytes (elements 0-15 low nibbles, 16-31 high); chunk j = bytes
 * 8 (j & 1) .. + 7, nibble (j >> 1). */
template <> struct W8<HIP_DT_Q4_0> {
    uint2 q;
    unsigned d;
    int sh;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        const unsigned char *b = block_of<HIP_DT_Q4_0>(row, k);
        const int j = (int)(k % 32) / 8;
        d = ld_u16<CS>(b);
        q = ld_u64_a2<CS>(b + 2 + 8 * (j & 1));
        sh = 4 * (j >> 1);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { q.x = q.y = 0u; d = 0u; sh = 0; }
    WMHD void get(float f[8]) const
    {
        MOERT_NO_CONTRACT
        const float df = scale_f16(d);
        const unsigned w[2] = {(q.x >> sh) & 0x0f0f0f0fu, (q.y >> sh) & 0x0f0f0f0fu};
        MOERT_WL_UNROLL
        for (int t = 0; t < 8; t++)
            f[t] = wl_mul(df, byte_magic(w[t >> 2], t & 3) - (WL_MAGIC + 8.0f));
    }
};

/* Q5_0: d, qh (32 high bits, bit i of element i), 16 nibble bytes as Q4_0; chunk j takes
 * qh byte j. */
template <> struct W8<HIP_DT_Q5_0> {
    uint2 q;
    unsigned d, hb;
    int sh;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        const unsigned char *b = block_of<HIP_DT_Q5_0>(row, k);
        const int j = (int)(k % 32) / 8;
        d = ld_u16<CS>(b);
        hb = ld_u8<CS>(b + 2 + j);
        q = ld_u64_a2<CS>(b + 6 + 8 * (j & 1));
        sh = 4 * (j >> 1);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { q.x = q.y = 0u; d = hb = 0u; sh = 0; }
    WMHD void get(float f[8]) const
    {
        MOERT_NO_CONTRACT
        const float df = scale_f16(d);
        const unsigned w[2] = {((q.x >> sh) & 0x0f0f0f0fu) | spread4(hb) << 4,
                               ((q.y >> sh) & 0x0f0f0f0fu) | spread4(hb >> 4) << 4};
        MOERT_WL_UNROLL
        for (int t = 0; t < 8; t++)
            f[t] = wl_mul(df, byte_magic(w[t >> 2], t & 3) - (WL_MAGIC + 16.0f));
    }
};

/* Q4_K: 16-byte header (d, dmin, 12 scale bytes), 128 nibble bytes; sub-block s (32
 * elements) = nibble (s & 1) of bytes 32 (s >> 1) ..; chunk j = sub-block j / 4, elements
 * 8 (j % 4) .. of it.  Q5_K adds 32 high-bit bytes after the header (bit s of byte l). */
template <int DT> struct W8K {
    uint4 hdr;
    uint2 q, qh;
    int s;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        const unsigned char *b = block_of<DT>(row, k);
        const int j = (int)(k % 256) / 8, l0 = 8 * (j & 3);
        s = j >> 2;
        hdr = ld_u128<CS>(b);
        if (DT == HIP_DT_Q5_K) {
            qh = ld_u64<CS>(b + 16 + l0);
            q = ld_u64<CS>(b + 48 + 32 * (s >> 1) + l0);
        } else {
            qh.x = qh.y = 0u;
            q = ld_u64<CS>(b + 16 + 32 * (s >> 1) + l0);
        }
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { hdr.x = hdr.y = hdr.z = hdr.w = 0u; q.x = q.y = qh.x = qh.y = 0u; s = 0; }
    /* The chunk's scale ds, offset dm and quants (one per byte of w[0], w[1]): weight t is
     * ds * q_t - dm. */
    WMHD void parts(float &ds, float &dm, unsigned (&w)[2]) const
    {
        MOERT_NO_CONTRACT
        unsigned sc, mn;
        kq_scale(hdr.y, hdr.z, hdr.w, s, sc, mn);
        ds = wl_mul(scale_f16(hdr.x & 0xffffu), (float)sc);
        dm = wl_mul(scale_f16(hdr.x >> 16), (float)mn);
        const int sh = 4 * (s & 1);
        w[0] = (q.x >> sh) & 0x0f0f0f0fu;
        w[1] = (q.y >> sh) & 0x0f0f0f0fu;
        if (DT == HIP_DT_Q5_K) {
            w[0] |= ((qh.x >> s) & 0x01010101u) << 4;
            w[1] |= ((qh.y >> s) & 0x01010101u) << 4;
        }
    }
    WMHD void get(float f[8]) const
    {
        MOERT_NO_CONTRACT
        float ds, dm;
        unsigned w[2];
        parts(ds, dm, w);
        MOERT_WL_UNROLL
        for (int t = 0; t < 8; t++)
            f[t] = wl_sub(wl_mul(ds, byte_magic(w[t >> 2], t & 3) - WL_MAGIC), dm);
    }
};
template <> struct W8<HIP_DT_Q4_K> : W8K<HIP_DT_Q4_K> {};
template <> struct W8<HIP_DT_Q5_K> : W8K<HIP_DT_Q5_K> {};

/* Q6_K: 128 low-nibble bytes, 64 high-bit-pair bytes, 16 int8 scales, d.  Element e: half
 * h = e / 128, quarter tq = e % 128 / 32, l = e % 32: low nibble (tq >> 1) of byte
 * 64 h + 32 (tq & 1) + l, bits 2 tq of byte 128 + 32 h + l, scale e / 16.  Q6_KX4: d_0 ..
 * d_3, then the four blocks' other 208 bytes (each 8-byte aligned: two aligned loads). */
template <int DT> struct W8Q6 {
    uint2 ql, qh;
    unsigned d;
    int sc, tq;
    template <bool CS> WMHD void fetch(const unsigned char *row, long long k)
    {
        const bool x4 = DT == HIP_DT_Q6_KX4;
        const unsigned char *g = block_of<DT>(row, k);
        const int blk = x4 ? (int)(k % 1024) / 256 : 0;
        const unsigned char *b = x4 ? g + 8 + 208 * blk : g;
        const int j = (int)(k % 256) / 8, h = j >> 4, l0 = 8 * (j & 3);
        tq = (j & 15) >> 2;
        if (x4) {
            ql = ld_u64<CS>(b + 64 * h + 32 * (tq & 1) + l0);
            qh = ld_u64<CS>(b + 128 + 32 * h + l0);
        } else {
            ql = ld_u64_a2<CS>(b + 64 * h + 32 * (tq & 1) + l0);
            qh = ld_u64_a2<CS>(b + 128 + 32 * h + l0);
        }
        sc = (int)(signed char)ld_u8<CS>(b + 192 + (j >> 1));
        d = ld_u16<CS>(x4 ? g + 2 * blk : b + 208);
    }
    WMHD void load(const unsigned char *row, long long k) { fetch<false>(row, k); }
    WMHD void load_cs(const unsigned char *row, long long k) { fetch<true>(row, k); }
    WMHD void zero() { ql.x = ql.y = qh.x = qh.y = 0u; d = 0u; sc = 0; tq = 0; }
    /* The chunk's scale dsc and 6-bit quants (one per byte of w[0], w[1]): weight t is
     * dsc * (q_t - 32). */
    WMHD void parts(float &dsc, unsigned (&w)[2]) const
    {
        MOERT_NO_CONTRACT
        dsc = wl_mul(scale_f16(d), (float)sc);
        const int shl = 4 * (tq >> 1), shh = 2 * tq;
        w[0] = q6_word(ql.x, qh.x, shl, shh);
        w[1] = q6_word(ql.y, qh.y, shl, shh);
    }
    WMHD void get(float f[8]) const
    {
        MOERT_NO_CONTRACT
        float dsc;
        unsigned w[2];
        parts(dsc, w);
        MOERT_WL_UNROLL
        for (int t = 0; t < 8; t++)
            f[t] = wl_mul(dsc, byte_magic(w[t >> 2], t & 3) - (WL_MAGIC + 32.0f));
    }
};
template <> struct W8<HIP_DT_Q6_K> : W8Q6<HIP_DT_Q6_K> {};
template <> struct W8<HIP_DT_Q6_KX4> : W8Q6<HIP_DT_Q6_KX4> {};

/* ---- a chunk's dot product (the decode GEMVs) ------------------------------------------
 * w8_dot(w, x0, x1, sx, s) = s + x . (w's 8 weights), x = x0 (elements 0-3), x1 (4-7), sx
 * their sum x0.x + x0.y + ... + x1.w in that order (read by the K-quants only).  By default
 * the widened weights in one FMA chain.  Q4_K, Q5_K and Q6_K factor the chunk's scale out:
 * s + ds * (x . q) - dm * sx for ds * q - dm, s + dsc * (x . (q - 32)) for Q6_K: per weight a
 * permute, a subtraction and the FMA instead of two more products and a subtraction, with the
 * quants exact in fp32 and every step one fp32 rounding.  Not get()'s values term by term, so
 * not the FMA chain's bits: both are fp32 sums of the same exact products up to rounding (the
 * host self-test holds w8_dot to a double dot of the exact weights).  Measured on bench-gpu:
 * Q4_K_M decode +2.6%; the same factoring for Q8_0 was 4% slower (its GEMVs are bound by the
 * narrow loads, and the shorter arithmetic changed their schedule), so the 32-blocks keep the
 * chain. */
#define W8_DOT_CHAIN(f, x0, x1, s)                                                                  \
    do {                                                                                           \
        s = fmaf(x0.x, f[0], s); s = fmaf(x0.y, f[1], s); s = fmaf(x0.z, f[2], s);                 \
        s = fmaf(x0.w, f[3], s); s = fmaf(x1.x, f[4], s); s = fmaf(x1.y, f[5], s);                 \
        s = fmaf(x1.z, f[6], s); s = fmaf(x1.w, f[7], s);                                          \
    } while (0)

/* The 8 quants of a chunk as exact floats, q - off, from the bytes of w[0] (0-3), w[1] (4-7). */
WHD void w8_quants(const unsigned (&w)[2], float off, float q[8])
{
    MOERT_WL_UNROLL
    for (int t = 0; t < 8; t++)
        q[t] = byte_magic(w[t >> 2], t & 3) - (WL_MAGIC + off);
}
WHD float w8_qdot(const unsigned (&w)[2], float off, float4 x0, float4 x1)
{
    float q[8], d = 0.0f;
    w8_quants(w, off, q);
    W8_DOT_CHAIN(q, x0, x1, d);
    return d;
}

template <int DT> WHD float w8_dot(const W8<DT> &wv, float4 x0, float4 x1, float sx, float s)
{
    (void)sx;
    float f[8];
    wv.get(f);
    W8_DOT_CHAIN(f, x0, x1, s);
    return s;
}
template <int DT> WHD float w8k_dot(const W8K<DT> &wv, float4 x0, float4 x1, float sx, float s)
{
    float ds, dm;
    unsigned w[2];
    wv.parts(ds, dm, w);
    return fmaf(-dm, sx, fmaf(ds, w8_qdot(w, 0.0f, x0, x1), s));
}
template <> WMHD float w8_dot<HIP_DT_Q4_K>(const W8<HIP_DT_Q4_K> &wv, float4 x0, float4 x1, float sx, float s)
{
    return w8k_dot<HIP_DT_Q4_K>(wv, x0, x1, sx, s);
}
template <> WMHD float w8_dot<HIP_DT_Q5_K>(const W8<HIP_DT_Q5_K> &wv, float4 x0, float4 x1, float sx, float s)
{
    return w8k_dot<HIP_DT_Q5_K>(wv, x0, x1, sx, s);
}
template <int DT> WHD float w8q6_dot(const W8Q6<DT> &wv, float4 x0, float4 x1, float s)
{
    float dsc;
    unsigned w[2];
    wv.parts(dsc, w);
    return fmaf(dsc, w8_qdot(w, 32.0f, x0, x1), s);
}
template <> WMHD float w8_dot<HIP_DT_Q6_K>(const W8<HIP_DT_Q6_K> &wv, float4 x0, float4 x1, float sx, float s)
{
    (void)sx;
    return w8q6_dot<HIP_DT_Q6_K>(wv, x0, x1, s);
}
template <> WMHD float w8_dot<HIP_DT_Q6_KX4>(const W8<HIP_DT_Q6_KX4> &wv, float4 x0, float4 x1, float sx, float s)
{
    (void)sx;
    return w8q6_dot<HIP_DT_Q6_KX4>(wv, x0, x1, s);
}
/* x0.x + x0.y + ... + x1.w in order: w8_dot's sx */
WHD float w8_xsum(float4 x0, float4 x1)
{
    return ((((((x0.x + x0.y) + x0.z) + x0.w) + x1.x) + x1.y) + x1.z) + x1.w;
}
/* Whether w8_dot<DT> reads sx: the K-quants (W8K), whose weights carry an offset. */
template <int DT> struct w8_wants_xsum {
    static const bool v = std::is_base_of<W8K<DT>, W8<DT>>::value;
};

#endif
