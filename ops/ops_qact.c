/* ops: the act-q8 numerics (ops.h), portable half: the activation quantizer and the integer
 * dot products written out plainly.  This file is the reference: the AVX-512 VNNI kernels
 * (ops_qact_avx512.c) compute the same integers and the same float operations in the same
 * order, which a test checks bit for bit. */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "ops_impl.h"

size_t ops_qact_row_bytes(int64_t k)
{
    if (k <= 0 || k % 32)
        return 0;
    size_t b = (size_t)(2 * k + k / 4 + k / 64 + k / 8);
    return (b + 63) / 64 * 64;
}

size_t ops_qact_bound_bytes(int64_t k)
{
    return k > 0 ? ops_qact_row_bytes((k + 31) / 32 * 32) : 0;
}

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

/* One block of n: its scale, quants and (when sums) the sum of each `per` quants. */
static float quant_block(int8_t *q, const float *x, int n)
{
    float amax = 0.0f;
    bool bad = false;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]))
            bad = true;
        else if (fabsf(x[i]) > amax)
            amax = fabsf(x[i]);
    }
    if (bad || amax < OPS_QACT_TINY) {
        memset(q, 0, (size_t)n);
        return bad ? NAN : 0.0f;
    }
    float id = 127.0f / amax;
    for (int i = 0; i < n; i++) {
        float v = nearbyintf(x[i] * id); /* the default rounding: to nearest even */
        q[i] = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
    }
    return amax / 127.0f;
}

static void scalar_qact_row(void *dst, const float *x, int64_t k)
{
    ops_qact_view v = ops_qact_at(dst, k);
    int8_t *q32 = (int8_t *)v.q32, *q256 = (int8_t *)v.q256;
    float *d32 = (float *)v.d32, *d256 = (float *)v.d256;
    int32_t *bs32 = (int32_t *)v.bs32;
    int16_t *bs16 = (int16_t *)v.bs16;
    for (int64_t b = 0; b < k / 32; b++) {
        d32[b] = quant_block(q32 + 32 * b, x + 32 * b, 32);
        int32_t s = 0;
        for (int i = 0; i < 32; i++)
            s += q32[32 * b + i];
        bs32[b] = s;
    }
    if (k % 256)
        return;
    for (int64_t b = 0; b < k / 256; b++)
        d256[b] = quant_block(q256 + 256 * b, x + 256 * b, 256);
    for (int64_t j = 0; j < k / 16; j++) {
        int s = 0;
        for (int i = 0; i < 16; i++)
            s += q256[16 * j + i];
        bs16[j] = (int16_t)s;
    }
}

/* The signed integer weight of element i of a 32-block. */
static inline int w32(const uint8_t *b, ops_dtype t, int i)
{
    switch (t) {
    case OPS_Q8_0: return (int8_t)b[2 + i];
    case OPS_Q4_0: return ((b[2 + i % 16] >> (4 * (i / 16))) & 15) - 8;
    default: { /* Q5_0 */
        uint32_t qh = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
        return (((b[6 + i % 16] >> (4 * (i / 16))) & 15) | (int)((qh >> i) & 1) << 4) - 16;
    }
    }
}

static float qdot32(const ops_qact_view *a, const uint8_t *w, ops_dtype t, int64_t k)
{
    size_t bb = ops_dtype_block_bytes(t);
    float acc[16] = {0};
    for (int64_t b = 0; b < k / 32; b++) {
        const uint8_t *blk = w + (size_t)b * bb;
        int32_t s = 0;
        for (int i = 0; i < 32; i++)
            s += w32(blk, t, i) * a->q32[32 * b + i];
        float sc = ops_f16_to_f32(rd16(blk)) * a->d32[b];
        int l = 4 * (int)(b % 4) + (int)(b % 16) / 4;
        acc[l] = fmaf((float)s, sc, acc[l]);
    }
    float v[8];
    for (int j = 0; j < 8; j++)
        v[j] = acc[j] + acc[j + 8];
    return ops_lanes_sum(v);
}

static float qdot_k(const ops_qact_view *a, const uint8_t *w, ops_dtype t, int64_t k)
{
    size_t bb = ops_dtype_block_bytes(t);
    float acc = 0.0f;
    for (int64_t b = 0; b < k / 256; b++) {
        const uint8_t *blk = w + (size_t)b * bb;
        const int8_t *q = a->q256 + 256 * b;
        const int16_t *bs = a->bs16 + 16 * b;
        float da = a->d256[b], term;
        if (t == OPS_Q6_K) {
            const uint8_t *ql = blk, *qh = blk + 128;
            int32_t isum = 0;
            for (int j = 0; j < 16; j++) {
                int32_t s = 0;
                for (int e = 16 * j; e < 16 * j + 16; e++) {
                    int h = e / 128, tq = e % 128 / 32, l = e % 32;
                    int lo = (ql[64 * h + 32 * (tq & 1) + l] >> (4 * (tq >> 1))) & 15;
                    int hi = (qh[32 * h + l] >> (2 * tq)) & 3;
                    s += ((lo | hi << 4) - 32) * q[e];
                }
                isum += (int8_t)blk[192 + j] * s;
            }
            float ds = ops_f16_to_f32(rd16(blk + 208)) * da;
            term = ds * (float)isum;
        } else { /* Q4_K, Q5_K */
            uint8_t sc[8], mn[8];
            ops_kq_scale_min(blk + 4, sc, mn);
            const uint8_t *qh = blk + 16, *qs = t == OPS_Q5_K ? blk + 48 : blk + 16;
            int32_t isum = 0, imin = 0;
            for (int s = 0; s < 8; s++) {
                int32_t p = 0;
                for (int e = 0; e < 32; e++) {
                    int qv = (qs[32 * (s / 2) + e] >> (4 * (s % 2))) & 15;
                    if (t == OPS_Q5_K)
                        qv |= ((qh[e] >> s) & 1) << 4;
                    p += qv * q[32 * s + e];
                }
                isum += sc[s] * p;
                imin += mn[s] * (bs[2 * s] + bs[2 * s + 1]);
            }
            float ds = ops_f16_to_f32(rd16(blk)) * da, dm = ops_f16_to_f32(rd16(blk + 2)) * da;
            term = ds * (float)isum - dm * (float)imin;
        }
        acc = acc + term;
    }
    return acc;
}

/* ---- dispatch ----------------------------------------------------------------------- */

static bool use_vnni(void)
{
    return ops_level_current() >= OPS_LEVEL_AVX512 && ops_avx512_qact_available();
}

const char *ops_qact_kernels(void)
{
    return use_vnni() ? "avx512-vnni" : "scalar";
}

void ops_qact_row(void *dst, const float *x, int64_t k)
{
    if (ops_qact_row_bytes(k) == 0)
        return;
    if (use_vnni())
        ops_avx512_qact_row(dst, x, k);
    else
        scalar_qact_row(dst, x, k);
}

/* Weight rows go through in stretches of this many, each stretch against every input row,
 * so a prefill chunk reads a stretch from memory once (it stays in cache for the rows). */
#define QACT_STRETCH 16

void ops_matmul_qact(float *out, int64_t ldo, const void *const *qrows, int64_t m, const void *w,
                     ops_dtype wt, int64_t k, int64_t n0, int64_t n1)
{
    size_t rb = ops_row_bytes(wt, k);
    bool kq = wt == OPS_Q4_K || wt == OPS_Q5_K || wt == OPS_Q6_K;
    if (!ops_is_block(wt) || rb == 0 || k == 0) {
        for (int64_t r = 0; r < m; r++) /* not a block type, or k not whole blocks: refused */
            for (int64_t n = n0; n < n1; n++)
                out[r * ldo + n] = NAN;
        return;
    }
    bool vnni = use_vnni();
    if (vnni && m > 1 && ops_avx512_qact_gemm(out, ldo, qrows, m, w, wt, k, n0, n1))
        return;
    for (int64_t s0 = n0; s0 < n1; s0 += QACT_STRETCH) {
        int64_t s1 = n1 - s0 < QACT_STRETCH ? n1 : s0 + QACT_STRETCH;
        if (m == 1)
            s1 = n1; /* decode: one pass over the whole range */
        for (int64_t r = 0; r < m; r++) {
            if (vnni) {
                ops_avx512_qact_gemv(out + r * ldo, qrows[r], w, wt, k, s0, s1);
                continue;
            }
            ops_qact_view a = ops_qact_at(qrows[r], k);
            for (int64_t n = s0; n < s1; n++) {
                const uint8_t *row = (const uint8_t *)w + (size_t)n * rb;
                out[r * ldo + n] = kq ? qdot_k(&a, row, wt, k) : qdot32(&a, row, wt, k);
            }
        }
        if (m == 1)
            break;
    }
}
