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
#include "ops_x86.h"

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

/* Bytes shifted within 16-bit lanes (the callers mask off what crosses a byte) */
INL __m256i shl16(__m256i v, int n)
{
    return n > 0 ? _mm256_slli_epi16(v, n) : n < 0 ? _mm256_srli_epi16(v, -n) : v;
}

/* 32 bytes (element 8c + j at byte 8c + j) widened to chain c's 8 dwords, as signed or
 * unsigned bytes: building the 5- and 6-bit quants 32 at a time in bytes and widening once
 * costs fewer operations than assembling them dword by dword. */
INL void widen_s8(__m256i v, __m256i q[4])
{
    __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    q[0] = _mm256_cvtepi8_epi32(lo);
    q[1] = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo));
    q[2] = _mm256_cvtepi8_epi32(hi);
    q[3] = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi));
}
INL void widen_u8(__m256i v, __m256i q[4])
{
    __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
    q[0] = _mm256_cvtepu8_epi32(lo);
    q[1] = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(lo, lo));
    q[2] = _mm256_cvtepu8_epi32(hi);
    q[3] = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(hi, hi));
}

/* The 32 quants of a step as bytes (element e at byte e), built 32 at a time: cheaper than
 * assembling them dword by dword.  Q5_0: q - 16 as signed bytes, the nibble with 0xf0 or-ed
 * in where the high bit is clear (byte e tests bit e % 8 of qh byte e / 8). */
INL __m256i q5_0_bytes(const uint8_t *b)
{
    const __m256i pickb = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201ll);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    __m256i hb = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pickb), bit);
    __m256i neg = _mm256_andnot_si256(_mm256_cmpeq_epi8(hb, bit), _mm256_set1_epi8((char)0xf0));
    __m128i v = _mm_loadu_si128((const __m128i *)(b + 6));
    __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), _mm256_set1_epi8(15));
    return _mm256_or_si256(nib, neg);
}

/* Q5_K step s: unsigned q = nibble | (bit s of qh[e]) << 4. */
INL __m256i q5_k_bytes(const uint8_t *b, int s)
{
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i v = _mm256_loadu_si256((const __m256i *)(b + 48 + 32 * (s / 2)));
    __m256i nib = _mm256_and_si256(s % 2 ? _mm256_srli_epi16(v, 4) : v, m4);
    __m256i hb = _mm256_and_si256(shl16(_mm256_loadu_si256((const __m256i *)(b + 16)), 4 - s),
                                  _mm256_set1_epi8(16));
    return _mm256_or_si256(nib, hb);
}

/* Q6_K step s: q - 32 as signed bytes. */
INL __m256i q6_k_bytes(const uint8_t *b, int s)
{
    int h = s / 4, tq = s % 4;
    __m256i v = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (tq & 1)));
    __m256i vh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
    __m256i lo = _mm256_and_si256(tq >> 1 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(15));
    __m256i hi = _mm256_and_si256(shl16(vh, 4 - 2 * tq), _mm256_set1_epi8(0x30));
    return _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
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
    case OPS_Q4_0: { /* d * (q - 8): elements 0-15 low nibbles, 16-31 high */
        __m256i v0 = ld8u(b + 2), v1 = ld8u(b + 10), off = _mm256_set1_epi32(8);
        __m256i q[4] = {_mm256_and_si256(v0, m15), _mm256_and_si256(v1, m15),
                        _mm256_srli_epi32(v0, 4), _mm256_srli_epi32(v1, 4)};
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            w[c] = _mm256_mul_ps(p->d, _mm256_cvtepi32_ps(_mm256_sub_epi32(q[c], off)));
        break;
    }
    case OPS_Q5_0: { /* d * (q - 16), q = nibble | (bit e of qh) << 4 */
        __m256i q[4];
        widen_s8(q5_0_bytes(b), q);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            w[c] = _mm256_mul_ps(p->d, _mm256_cvtepi32_ps(q[c]));
        break;
    }
    case OPS_Q4_K: { /* (d * sc) * q - (dmin * m) */
        const uint8_t *qs = b + 16 + 32 * (s / 2);
        __m256 ds = _mm256_broadcast_ss(&p->sc[s]), dm = _mm256_broadcast_ss(&p->mn[s]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m256i v = ld8u(qs + 8 * c);
            __m256i q = s % 2 ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, m15);
            w[c] = _mm256_sub_ps(_mm256_mul_ps(ds, _mm256_cvtepi32_ps(q)), dm);
        }
        break;
    }
    case OPS_Q5_K: { /* the same with q = nibble | (bit s of qh[e]) << 4, built in bytes */
        __m256 ds = _mm256_broadcast_ss(&p->sc[s]), dm = _mm256_broadcast_ss(&p->mn[s]);
        __m256i q[4];
        widen_u8(q5_k_bytes(b, s), q);
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            w[c] = _mm256_sub_ps(_mm256_mul_ps(ds, _mm256_cvtepi32_ps(q[c])), dm);
        break;
    }
    case OPS_Q6_K: { /* (d * sc[e / 16]) * (q - 32), q - 32 built in signed bytes */
        __m256i q[4];
        widen_s8(q6_k_bytes(b, s), q);
        __m256 s0 = _mm256_broadcast_ss(&p->sc[2 * s]), s1 = _mm256_broadcast_ss(&p->sc[2 * s + 1]);
        w[0] = _mm256_mul_ps(s0, _mm256_cvtepi32_ps(q[0]));
        w[1] = _mm256_mul_ps(s0, _mm256_cvtepi32_ps(q[1]));
        w[2] = _mm256_mul_ps(s1, _mm256_cvtepi32_ps(q[2]));
        w[3] = _mm256_mul_ps(s1, _mm256_cvtepi32_ps(q[3]));
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
    *out_r = (ops_x86_combine4(a0, a1, a2, a3));
    if (two)
        *out_s = (ops_x86_combine4(b0, b1, b2, b3));
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

/* ---- AVX-512: the same values, 16 lanes at a time ----------------------------------------
 * A 512-bit register holds two chains (elements 0-15 of a step are chains 0 and 1, 16-31
 * chains 2 and 3), so every accumulator still sums exactly the canonical terms in the
 * canonical order; the dequantization is the same float32 operations as above.  Only the
 * decode GEMV uses it: there the 256-bit kernels run out of arithmetic before the memory
 * runs out of bandwidth. */
#define INL512 AVX512 static inline __attribute__((always_inline))

INL512 __m512 cvt16u(__m128i v)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
}
INL512 __m512 cvt16s(__m128i v)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
}

/* The 32 weights of step s: elements 0-15 in w[0], 16-31 in w[1]. */
INL512 void q_step512(ops_dtype t, const uint8_t *b, const qprep *p, int s, __m512 w[2])
{
    switch (t) {
    case OPS_Q8_0: {
        __m512 d = _mm512_set1_ps(_mm256_cvtss_f32(p->d));
        w[0] = _mm512_mul_ps(cvt16s(_mm_loadu_si128((const __m128i *)(b + 2))), d);
        w[1] = _mm512_mul_ps(cvt16s(_mm_loadu_si128((const __m128i *)(b + 18))), d);
        break;
    }
    case OPS_Q4_0: {
        __m512 d = _mm512_set1_ps(_mm256_cvtss_f32(p->d));
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + 2)));
        __m512i off = _mm512_set1_epi32(8), m15 = _mm512_set1_epi32(15);
        w[0] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(v, m15), off)));
        w[1] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(v, 4), off)));
        break;
    }
    case OPS_Q5_0: {
        __m512 d = _mm512_set1_ps(_mm256_cvtss_f32(p->d));
        __m256i q = q5_0_bytes(b);
        w[0] = _mm512_mul_ps(d, cvt16s(_mm256_castsi256_si128(q)));
        w[1] = _mm512_mul_ps(d, cvt16s(_mm256_extracti128_si256(q, 1)));
        break;
    }
    case OPS_Q4_K: {
        /* A sub-block's 32 weights take at most 16 values, (d * sc) * q - (dmin * m) for
         * q = 0..15: computed once into one register (the same float operations, so the
         * same values) and looked up by each element's nibble (vpermps reads index bits
         * 0-3 only, so the low nibble needs no mask). */
        const uint8_t *qs = b + 16 + 32 * (s / 2);
        __m512 ds = _mm512_set1_ps(p->sc[s]), dm = _mm512_set1_ps(p->mn[s]);
        const __m512 q16 = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        __m512 tab = _mm512_sub_ps(_mm512_mul_ps(ds, q16), dm);
        for (int h = 0; h < 2; h++) {
            __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16 * h)));
            w[h] = _mm512_permutexvar_ps(s % 2 ? _mm512_srli_epi32(v, 4) : v, tab);
        }
        break;
    }
    case OPS_Q5_K: {
        __m512 ds = _mm512_set1_ps(p->sc[s]), dm = _mm512_set1_ps(p->mn[s]);
        __m256i q = q5_k_bytes(b, s);
        w[0] = _mm512_sub_ps(_mm512_mul_ps(ds, cvt16u(_mm256_castsi256_si128(q))), dm);
        w[1] = _mm512_sub_ps(_mm512_mul_ps(ds, cvt16u(_mm256_extracti128_si256(q, 1))), dm);
        break;
    }
    case OPS_Q6_K: {
        __m256i q = q6_k_bytes(b, s);
        w[0] = _mm512_mul_ps(_mm512_set1_ps(p->sc[2 * s]), cvt16s(_mm256_castsi256_si128(q)));
        w[1] = _mm512_mul_ps(_mm512_set1_ps(p->sc[2 * s + 1]), cvt16s(_mm256_extracti128_si256(q, 1)));
        break;
    }
    default: break;
    }
}


/* R (1, 2 or 4) rows at once: R weight streams in flight, 2R independent accumulator
 * chains, every x load feeding all rows; each row's sums are its canonical ones. */
INL512 void q_rows512(ops_dtype t, const float *x, const uint8_t *const rw[4], int R, int64_t nb, size_t bb,
                      float *out[4])
{
    const int steps = is_kquant(t) ? 8 : 1;
    __m512 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        qprep pr[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *rb = rw[r] + (size_t)i * bb;
            for (size_t o = 0; o < bb; o += 64)
                _mm_prefetch((const char *)rb + QGEMV_PREFETCH + o, _MM_HINT_T0);
            q_prep(t, rb, &pr[r]);
        }
        const float *xb = x + i * 32 * steps;
#pragma GCC unroll 8
        for (int st = 0; st < steps; st++) {
            const float *xs = xb + 32 * st;
            __m512 x0 = _mm512_loadu_ps(xs), x1 = _mm512_loadu_ps(xs + 16);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) {
                __m512 w[2];
                q_step512(t, rw[r] + (size_t)i * bb, &pr[r], st, w);
                acc[r][0] = _mm512_fmadd_ps(x0, w[0], acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(x1, w[1], acc[r][1]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        *out[r] = ops_x86_combine_pairs(acc[r][0], acc[r][1]);
}

INL512 void q_gemv512(ops_dtype t, float *out, const float *x, const uint8_t *w, int64_t k, int64_t n0,
                      int64_t n1)
{
    size_t bb = ops_dtype_block_bytes(t), rb = ops_row_bytes(t, k);
    int64_t nb = k / ops_dtype_block_elems(t);
    /* quarters of the range stream together (rows n, n + q, n + 2q, n + 3q), then halves of
     * what is left, then a last row alone */
    for (int R = 4; R >= 1; R /= 2) {
        int64_t q = (n1 - n0) / R;
        for (int64_t n = n0; n < n0 + q; n++) {
            const uint8_t *rw[4];
            float *o[4];
            for (int r = 0; r < 4; r++) { /* rows past R are never read */
                int64_t row = n + (r < R ? r : 0) * q;
                rw[r] = w + (size_t)row * rb;
                o[r] = &out[row];
            }
            if (R == 4)
                q_rows512(t, x, rw, 4, nb, bb, o);
            else if (R == 2)
                q_rows512(t, x, rw, 2, nb, bb, o);
            else
                q_rows512(t, x, rw, 1, nb, bb, o);
        }
        n0 += R * q;
    }
}

#define Q_KERNELS512(T, name)                                                                                \
    AVX512 static void gemv512_##name(float *out, const float *x, const uint8_t *w, int64_t k, int64_t n0,  \
                                      int64_t n1)                                                           \
    {                                                                                                        \
        q_gemv512(T, out, x, w, k, n0, n1);                                                                  \
    }
Q_KERNELS512(OPS_Q4_0, q4_0)
Q_KERNELS512(OPS_Q5_0, q5_0)
Q_KERNELS512(OPS_Q8_0, q8_0)
Q_KERNELS512(OPS_Q4_K, q4_k)
Q_KERNELS512(OPS_Q5_K, q5_k)
Q_KERNELS512(OPS_Q6_K, q6_k)

AVX512 void ops_avx512_q_gemv(float *out, const float *x, const uint8_t *w, ops_dtype t, int64_t k, int64_t n0,
                              int64_t n1)
{
#define CALL(name) gemv512_##name(out, x, w, k, n0, n1)
    Q_DISPATCH(t, CALL)
#undef CALL
}
