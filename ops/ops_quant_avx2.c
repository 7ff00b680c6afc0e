/* ops: block-quantized weights, AVX2/FMA/F16C half.  Bit-identical to ops_quant.c: each
 * weight is dequantized with the same float32 operations (a separate multiply and, for the
 * K-quants with mins, a separate subtract: never fused), and the dot products follow the
 * canonical order of ops.h.  A quant step of 32 elements is one 32-element step of that
 * order, and every layout below puts element 8c + j of a step in lane j of chain c's
 * vector, so the weights go straight from the quantized bytes into the four chains: the
 * decode GEMV reads each quantized row once and never writes an f32 copy. */
#include <immintrin.h>
#include <string.h>

#include "ops_impl.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INL AVX2 static inline __attribute__((always_inline))

/* Decode GEMVs prefetch each weight stream this many bytes ahead (as ops_avx2.c's). */
#define QGEMV_PREFETCH 1024

INL float f16_at(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* 8 bytes at p zero- / sign-extended to 8 dwords (lane j = byte j) */
INL __m256i ld8u(const uint8_t *p)
{
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}
INL __m256i ld8s(const uint8_t *p)
{
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

INL __m256 combine4(__m256 c0, __m256 c1, __m256 c2, __m256 c3)
{
    __m256 v = _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s)); /* (l0+l4)+(l2+l6), (l1+l5)+(l3+l7) */
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm256_castps128_ps256(s);
}

INL bool is_kquant(ops_dtype t)
{
    return t == OPS_Q4_K || t == OPS_Q5_K || t == OPS_Q6_K;
}

/* What a block's steps share: the f16 d of a 32-block, or a K-block's float32 sub-block
 * scales (d * sc) and mins (dmin * m), formed as gguf-py forms them. */
typedef struct {
    __m256 d;
    float sc[16];
    float mn[8];
} qprep;

INL void q_prep(ops_dtype t, const uint8_t *b, qprep *p)
{
    switch (t) {
    case OPS_Q8_0:
    case OPS_Q4_0:
    case OPS_Q5_0: p->d = _mm256_set1_ps(f16_at(b)); break;
    case OPS_Q4_K:
    case OPS_Q5_K: {
        /* quants.py get_scale_min on 32-bit words: bytes 0-3 (a), 4-7 (m), 8-11 (c) */
        uint32_t a, m, c;
        memcpy(&a, b + 4, 4);
        memcpy(&m, b + 8, 4);
        memcpy(&c, b + 12, 4);
        uint32_t sc_lo = a & 0x3f3f3f3fu, mn_lo = m & 0x3f3f3f3fu;
        uint32_t sc_hi = (c & 0x0f0f0f0fu) | (a >> 2 & 0x30303030u);
        uint32_t mn_hi = (c >> 4 & 0x0f0f0f0fu) | (m >> 2 & 0x30303030u);
        __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32((int)sc_lo, (int)sc_hi, 0, 0)));
        __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_setr_epi32((int)mn_lo, (int)mn_hi, 0, 0)));
        _mm256_storeu_ps(p->sc, _mm256_mul_ps(_mm256_set1_ps(f16_at(b)), sc));
        _mm256_storeu_ps(p->mn, _mm256_mul_ps(_mm256_set1_ps(f16_at(b + 2)), mn));
        break;
    }
    case OPS_Q6_K: {
        __m256 d = _mm256_set1_ps(f16_at(b + 208));
        _mm256_storeu_ps(p->sc, _mm256_mul_ps(d, _mm256_cvtepi32_ps(ld8s(b + 192))));
        _mm256_storeu_ps(p->sc + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(ld8s(b + 200))));
        break;
    }
    default: break;
    }
}

/* Shift a dword lane's bits left (n > 0) or right (n < 0) */
INL __m256i shl(__m256i v, int n)
{
    return n > 0 ? _mm256_slli_epi32(v, n) : n < 0 ? _mm256_srli_epi32(v, -n) : v;
}

/* The 32 weights of step s (0 for a 32-block, 0..7 for a K-block): chain c in w[c]. */
INL void q_step(ops_dtype t, const uint8_t *b, const qprep *p, int s, __m256 w[4])
{
    const __m256i m15 = _mm256_set1_epi32(15);
    switch (t) {
    case OPS_Q8_0: /* x * d */
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            w[c] = _mm256_mul_ps(_mm256_cvtepi32_ps(ld8s(b + 2 + 8 * c)), p->d);
        break;
    case OPS_Q4_0:
    case OPS_Q5_0: { /* d * (q - 8), d * (q - 16): elements 0-15 low nibbles, 16-31 high */
        const uint8_t *qs = b + (t == OPS_Q5_0 ? 6 : 2);
        __m256i v0 = ld8u(qs), v1 = ld8u(qs + 8);
        __m256i q[4] = {_mm256_and_si256(v0, m15), _mm256_and_si256(v1, m15),
                        _mm256_srli_epi32(v0, 4), _mm256_srli_epi32(v1, 4)};
        __m256i off = _mm256_set1_epi32(8);
        if (t == OPS_Q5_0) {
            /* bit 8c + j of qh moved to bit 4 of lane j: chains 0-1 from qh << 4, 2-3 from
             * qh >> 12, each shifted right by its lane's position */
            uint32_t qh;
            memcpy(&qh, b + 2, 4);
            const __m256i s0 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256i s1 = _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15);
            const __m256i m16 = _mm256_set1_epi32(16);
            __m256i lo = _mm256_set1_epi32((int)(qh << 4)), hi = _mm256_set1_epi32((int)(qh >> 12));
            q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_srlv_epi32(lo, s0), m16));
            q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_srlv_epi32(lo, s1), m16));
            q[2] = _mm256_or_si256(q[2], _mm256_and_si256(_mm256_srlv_epi32(hi, s0), m16));
            q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_srlv_epi32(hi, s1), m16));
            off = m16;
        }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            w[c] = _mm256_mul_ps(p->d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[c], off)));
        break;
    }
    case OPS_Q4_K:
    case OPS_Q5_K: { /* (d * sc) * q - (dmin * m) */
        const uint8_t *qs = b + (t == OPS_Q5_K ? 48 : 16) + 32 * (s / 2);
        __m256 ds = _mm256_broadcast_ss(&p->sc[s]), dm = _mm256_broadcast_ss(&p->mn[s]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i v = ld8u(qs + 8 * c);
            __m256i q = s % 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, m15);
            if (t == OPS_Q5_K) /* bit s of qh[8c + j] -> bit 4 */
                q = _mm256_or_si256(q, _mm256_and_si256(shl(ld8u(b + 16 + 8 * c), 4 - s),
                                                        _mm256_set1_epi32(16)));
            w[c] = _mm256_sub_ps(_mm256_mul_ps(ds, _mm256_cvtepi32_ps(q)), dm);
        }
        break;
    }
    case OPS_Q6_K: { /* (d * sc[e / 16]) * (q - 32) */
        int h = s / 4, tq = s % 4;
        const uint8_t *ql = b + 64 * h + 32 * (tq & 1), *qh = b + 128 + 32 * h;
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i v = ld8u(ql + 8 * c);
            __m256i lo = tq >> 1 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, m15);
            __m256i hi = _mm256_and_si256(shl(ld8u(qh + 8 * c), 4 - 2 * tq), _mm256_set1_epi32(0x30));
            __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, hi), _mm256_set1_epi32(32));
            w[c] = _mm256_mul_ps(_mm256_broadcast_ss(&p->sc[2 * s + c / 2]), _mm256_cvtepi32_ps(q));
        }
        break;
    }
    default: break;
    }
}

/* The canonical dots of x with quantized row r, and (when two) with row s too: the rows'
 * blocks are decoded side by side and every x load feeds both.  One row: pass s = r. */
INL void q_rows(ops_dtype t, const float *x, const uint8_t *r, const uint8_t *s, int64_t nb,
                size_t bb, bool two, float *out_r, float *out_s)
{
    const int steps = is_kquant(t) ? 8 : 1;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *rb = r + (size_t)i * bb, *sb = s + (size_t)i * bb;
        for (size_t o = 0; o < bb; o += 64) {
            _mm_prefetch((const char *)rb + QGEMV_PREFETCH + o, _MM_HINT_T0);
            if (two)
                _mm_prefetch((const char *)sb + QGEMV_PREFETCH + o, _MM_HINT_T0);
        }
        qprep pr, ps;
        q_prep(t, rb, &pr);
        if (two)
            q_prep(t, sb, &ps);
        const float *xb = x + i * 32 * steps;
#pragma GCC unroll 8
        for (int st = 0; st < steps; st++) {
            const float *xs = xb + 32 * st;
            __m256 w[4];
            q_step(t, rb, &pr, st, w);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xs), w[0], a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 8), w[1], a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 16), w[2], a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 24), w[3], a3);
            if (two) {
                q_step(t, sb, &ps, st, w);
                b0 = _mm256_fmadd_ps(_mm256_loadu_ps(xs), w[0], b0);
                b1 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 8), w[1], b1);
                b2 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 16), w[2], b2);
                b3 = _mm256_fmadd_ps(_mm256_loadu_ps(xs + 24), w[3], b3);
            }
        }
    }
    *out_r = _mm256_cvtss_f32(combine4(a0, a1, a2, a3));
    if (two)
        *out_s = _mm256_cvtss_f32(combine4(b0, b1, b2, b3));
}

/* Rows n and n + half stream together (two sequential weight streams, as eo_gemv); an odd
 * count runs its last row alone. */
INL void q_gemv(ops_dtype t, float *out, const float *x, const uint8_t *w, int64_t k,
                int64_t n0, int64_t n1)
{
    size_t bb = ops_dtype_block_bytes(t), rb = ops_row_bytes(t, k);
    int64_t nb = k / ops_dtype_block_elems(t), cnt = n1 - n0, half = cnt / 2;
    for (int64_t n = n0; n < n0 + half; n++)
        q_rows(t, x, w + (size_t)n * rb, w + (size_t)(n + half) * rb, nb, bb, true, &out[n],
               &out[n + half]);
    if (cnt % 2)
        {
        const uint8_t *last = w + (size_t)(n1 - 1) * rb;
        q_rows(t, x, last, last, nb, bb, false, &out[n1 - 1], NULL);
    }
}

INL void q_to_f32(ops_dtype t, float *dst, const uint8_t *src, int64_t n)
{
    size_t bb = ops_dtype_block_bytes(t);
    const int steps = is_kquant(t) ? 8 : 1;
    for (int64_t i = 0; i < n / (32 * steps); i++) {
        const uint8_t *b = src + (size_t)i * bb;
        qprep p;
        q_prep(t, b, &p);
#pragma GCC unroll 8
        for (int st = 0; st < steps; st++) {
            __m256 w[4];
            q_step(t, b, &p, st, w);
            float *y = dst + (i * steps + st) * 32;
    #pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
                _mm256_storeu_ps(y + 8 * c, w[c]);
        }
    }
}

/* One instance of each kernel per type, the type a constant inside. */
#define Q_KERNELS(T, name)                                                                    \
    AVX2 static void gemv_##name(float *out, const float *x, const uint8_t *w, int64_t k,    \
                                 int64_t n0, int64_t n1)                                      \
    {                                                                                         \
        q_gemv(T, out, x, w, k, n0, n1);                                                      \
    }                                                                                         \
    AVX2 static float dot_##name(const float *a, const uint8_t *b, int64_t k)                 \
    {                                                                                         \
        float r;                                                                              \
        q_rows(T, a, b, b, k / ops_dtype_block_elems(T), ops_dtype_block_bytes(T), false, &r,  \
               NULL);                                                                        \
        return r;                                                                             \
    }                                                                                         \
    AVX2 static void to_f32_##name(float *dst, const uint8_t *src, int64_t n)                 \
    {                                                                                         \
        q_to_f32(T, dst, src, n);                                                             \
    }
Q_KERNELS(OPS_Q4_0, q4_0)
Q_KERNELS(OPS_Q5_0, q5_0)
Q_KERNELS(OPS_Q8_0, q8_0)
Q_KERNELS(OPS_Q4_K, q4_k)
Q_KERNELS(OPS_Q5_K, q5_k)
Q_KERNELS(OPS_Q6_K, q6_k)

#define Q_DISPATCH(t, call)                                                                   \
    switch (t) {                                                                              \
    case OPS_Q4_0: call(q4_0); break;                                                         \
    case OPS_Q5_0: call(q5_0); break;                                                         \
    case OPS_Q8_0: call(q8_0); break;                                                         \
    case OPS_Q4_K: call(q4_k); break;                                                         \
    case OPS_Q5_K: call(q5_k); break;                                                         \
    case OPS_Q6_K: call(q6_k); break;                                                         \
    default: break;                                                                           \
    }

AVX2 void ops_avx2_q_gemv(float *out, const float *x, const uint8_t *w, ops_dtype t, int64_t k,
                          int64_t n0, int64_t n1)
{
#define CALL(name) gemv_##name(out, x, w, k, n0, n1)
    Q_DISPATCH(t, CALL)
#undef CALL
}

AVX2 float ops_avx2_q_dot(const float *a, const uint8_t *b, ops_dtype t, int64_t k)
{
    float r = 0.0f;
#define CALL(name) r = dot_##name(a, b, k)
    Q_DISPATCH(t, CALL)
#undef CALL
    return r;
}

AVX2 void ops_avx2_q_to_f32(float *dst, const uint8_t *src, ops_dtype t, int64_t n)
{
#define CALL(name) to_f32_##name(dst, src, n)
    Q_DISPATCH(t, CALL)
#undef CALL
}
