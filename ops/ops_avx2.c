/* ops: the AVX2/FMA/F16C kernel family.  Every function matches its scalar twin in ops.c
 * bit for bit: one 8-lane accumulator per output element, fused multiply-adds over k in
 * increasing order, the canonical lane combine (ops_lanes_sum).  Speed comes from working
 * on several independent outputs at once, never from reassociating one output's sum. */
#include <immintrin.h>
#include <string.h>

#include "ops_impl.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline __m256 load8(const void *base, ops_dtype t, int64_t i)
{
    switch (t) {
    case OPS_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case OPS_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    default:
        return _mm256_loadu_ps((const float *)base + i);
    }
}

/* The last k % 8 elements, zero-padded to 8 (as the scalar path pads). */
AVX2 static inline __m256 load_tail(const void *base, ops_dtype t, int64_t i, int64_t rem)
{
    size_t es = ops_dtype_size(t);
    uint8_t tmp[32] = {0};
    memcpy(tmp, (const uint8_t *)base + (size_t)i * es, (size_t)rem * es);
    return load8(tmp, t, 0);
}

AVX2 static inline float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));                 /* (l0+l4)+(l2+l6), (l1+l5)+(l3+l7) */
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AVX2 void ops_avx2_to_f32(float *dst, const void *src, ops_dtype t, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8(src, t, i));
    if (i < n) {
        float tmp[8];
        _mm256_storeu_ps(tmp, load_tail(src, t, i, n - i));
        memcpy(dst + i, tmp, (size_t)(n - i) * sizeof *dst);
    }
}

AVX2 float ops_avx2_dot(const float *a, const void *b, ops_dtype bt, int64_t k)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b, bt, i), acc);
    if (i < k)
        acc = _mm256_fmadd_ps(load_tail(a, OPS_F32, i, k - i), load_tail(b, bt, i, k - i), acc);
    return hsum(acc);
}

/* Few input rows (decode): widen weights on the fly, 4 weight rows at a time so that each
 * loaded x vector feeds 4 independent accumulators. */
AVX2 static void matmul_few_rows(float *out, int64_t ldo, const float *const *x, int64_t m,
                                 const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1)
{
    size_t row_bytes = (size_t)k * ops_dtype_size(wt);
    const uint8_t *wb = w;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        const void *w0 = wb + (size_t)n * row_bytes, *w1 = wb + (size_t)(n + 1) * row_bytes;
        const void *w2 = wb + (size_t)(n + 2) * row_bytes, *w3 = wb + (size_t)(n + 3) * row_bytes;
        for (int64_t r = 0; r < m; r++) {
            const float *xr = x[r];
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int64_t i = 0;
            for (; i + 8 <= k; i += 8) {
                __m256 xv = _mm256_loadu_ps(xr + i);
                a0 = _mm256_fmadd_ps(xv, load8(w0, wt, i), a0);
                a1 = _mm256_fmadd_ps(xv, load8(w1, wt, i), a1);
                a2 = _mm256_fmadd_ps(xv, load8(w2, wt, i), a2);
                a3 = _mm256_fmadd_ps(xv, load8(w3, wt, i), a3);
            }
            if (i < k) {
                __m256 xv = load_tail(xr, OPS_F32, i, k - i);
                a0 = _mm256_fmadd_ps(xv, load_tail(w0, wt, i, k - i), a0);
                a1 = _mm256_fmadd_ps(xv, load_tail(w1, wt, i, k - i), a1);
                a2 = _mm256_fmadd_ps(xv, load_tail(w2, wt, i, k - i), a2);
                a3 = _mm256_fmadd_ps(xv, load_tail(w3, wt, i, k - i), a3);
            }
            float *o = out + r * ldo + n;
            o[0] = hsum(a0);
            o[1] = hsum(a1);
            o[2] = hsum(a2);
            o[3] = hsum(a3);
        }
    }
    for (; n < n1; n++) {
        const void *wr = wb + (size_t)n * row_bytes;
        for (int64_t r = 0; r < m; r++)
            out[r * ldo + n] = ops_avx2_dot(x[r], wr, wt, k);
    }
}

/* Many input rows (prefill, grouped experts): widen OPS_PANEL_ROWS weight rows once into a
 * zero-padded f32 panel, then run a 4 x 2 (rows x outputs) register tile over it. */
AVX2 static void matmul_panel(float *out, int64_t ldo, const float *const *x, int64_t m,
                              const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1,
                              float *panel)
{
    int64_t k8 = (k + 7) / 8 * 8, kfull = k / 8 * 8;
    size_t row_bytes = (size_t)k * ops_dtype_size(wt);
    for (int64_t nb = n0; nb < n1; nb += OPS_PANEL_ROWS) {
        int64_t nr = n1 - nb < OPS_PANEL_ROWS ? n1 - nb : OPS_PANEL_ROWS;
        for (int64_t j = 0; j < nr; j++) {
            float *prow = panel + j * k8;
            ops_avx2_to_f32(prow, (const uint8_t *)w + (size_t)(nb + j) * row_bytes, wt, k);
            for (int64_t i = k; i < k8; i++)
                prow[i] = 0.0f;
        }
        int64_t r = 0;
        for (; r + 4 <= m; r += 4) {
            const float *x0 = x[r], *x1 = x[r + 1], *x2 = x[r + 2], *x3 = x[r + 3];
            int64_t j = 0;
            for (; j + 2 <= nr; j += 2) {
                const float *p0 = panel + j * k8, *p1 = p0 + k8;
                __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00;
                __m256 c20 = c00, c21 = c00, c30 = c00, c31 = c00;
                int64_t i = 0;
                for (; i < kfull; i += 8) {
                    __m256 w0v = _mm256_load_ps(p0 + i), w1v = _mm256_load_ps(p1 + i);
                    __m256 xv = _mm256_loadu_ps(x0 + i);
                    c00 = _mm256_fmadd_ps(xv, w0v, c00);
                    c01 = _mm256_fmadd_ps(xv, w1v, c01);
                    xv = _mm256_loadu_ps(x1 + i);
                    c10 = _mm256_fmadd_ps(xv, w0v, c10);
                    c11 = _mm256_fmadd_ps(xv, w1v, c11);
                    xv = _mm256_loadu_ps(x2 + i);
                    c20 = _mm256_fmadd_ps(xv, w0v, c20);
                    c21 = _mm256_fmadd_ps(xv, w1v, c21);
                    xv = _mm256_loadu_ps(x3 + i);
                    c30 = _mm256_fmadd_ps(xv, w0v, c30);
                    c31 = _mm256_fmadd_ps(xv, w1v, c31);
                }
                if (i < k8) {
                    __m256 w0v = _mm256_load_ps(p0 + i), w1v = _mm256_load_ps(p1 + i);
                    __m256 xv = load_tail(x0, OPS_F32, i, k - i);
                    c00 = _mm256_fmadd_ps(xv, w0v, c00);
                    c01 = _mm256_fmadd_ps(xv, w1v, c01);
                    xv = load_tail(x1, OPS_F32, i, k - i);
                    c10 = _mm256_fmadd_ps(xv, w0v, c10);
                    c11 = _mm256_fmadd_ps(xv, w1v, c11);
                    xv = load_tail(x2, OPS_F32, i, k - i);
                    c20 = _mm256_fmadd_ps(xv, w0v, c20);
                    c21 = _mm256_fmadd_ps(xv, w1v, c21);
                    xv = load_tail(x3, OPS_F32, i, k - i);
                    c30 = _mm256_fmadd_ps(xv, w0v, c30);
                    c31 = _mm256_fmadd_ps(xv, w1v, c31);
                }
                int64_t n = nb + j;
                out[r * ldo + n] = hsum(c00);
                out[r * ldo + n + 1] = hsum(c01);
                out[(r + 1) * ldo + n] = hsum(c10);
                out[(r + 1) * ldo + n + 1] = hsum(c11);
                out[(r + 2) * ldo + n] = hsum(c20);
                out[(r + 2) * ldo + n + 1] = hsum(c21);
                out[(r + 3) * ldo + n] = hsum(c30);
                out[(r + 3) * ldo + n + 1] = hsum(c31);
            }
            for (; j < nr; j++)
                for (int64_t rr = r; rr < r + 4; rr++)
                    out[rr * ldo + nb + j] = ops_avx2_dot(x[rr], panel + j * k8, OPS_F32, k);
        }
        for (; r < m; r++)
            for (int64_t j = 0; j < nr; j++)
                out[r * ldo + nb + j] = ops_avx2_dot(x[r], panel + j * k8, OPS_F32, k);
    }
}

AVX2 void ops_avx2_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                          const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1,
                          float *panel)
{
    if (m < 4 || panel == NULL)
        matmul_few_rows(out, ldo, x_rows, m, w, wt, k, n0, n1);
    else
        matmul_panel(out, ldo, x_rows, m, w, wt, k, n0, n1, panel);
}

AVX2 void ops_avx2_attention_head(float *out, const float *q, const float *k_cache,
                                  const float *v_cache, int64_t kv_stride, int64_t pos,
                                  int64_t hd, float scale, float *scores)
{
    int64_t n = pos + 1;
    int64_t j = 0;
    /* four keys at a time share each loaded q vector */
    if (hd % 8 == 0) {
        for (; j + 4 <= n; j += 4) {
            const float *k0 = k_cache + j * kv_stride, *k1 = k0 + kv_stride;
            const float *k2 = k1 + kv_stride, *k3 = k2 + kv_stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < hd; i += 8) {
                __m256 qv = _mm256_loadu_ps(q + i);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
            }
            scores[j] = hsum(a0) * scale;
            scores[j + 1] = hsum(a1) * scale;
            scores[j + 2] = hsum(a2) * scale;
            scores[j + 3] = hsum(a3) * scale;
        }
    }
    for (; j < n; j++)
        scores[j] = ops_avx2_dot(q, k_cache + j * kv_stride, OPS_F32, hd) * scale;
    ops_softmax(scores, n);
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t t = 0; t < n; t++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(scores[t]),
                                  _mm256_loadu_ps(v_cache + t * kv_stride + d), acc);
        _mm256_storeu_ps(out + d, acc);
    }
    for (; d < hd; d++) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n; t++)
            acc = __builtin_fmaf(scores[t], v_cache[t * kv_stride + d], acc);
        out[d] = acc;
    }
}

AVX2 void ops_avx2_weighted_sum(float *out, const float *const *rows, const float *w,
                                int64_t n_rows, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 acc = _mm256_mul_ps(_mm256_set1_ps(w[0]), _mm256_loadu_ps(rows[0] + i));
        for (int64_t j = 1; j < n_rows; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(rows[j] + i), acc);
        _mm256_storeu_ps(out + i, acc);
    }
    for (; i < n; i++) {
        float acc = w[0] * rows[0][i];
        for (int64_t j = 1; j < n_rows; j++)
            acc = __builtin_fmaf(w[j], rows[j][i], acc);
        out[i] = acc;
    }
}

AVX2 uint64_t ops_avx2_touch_read(const void *p, size_t bytes)
{
    const uint8_t *b = p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 128 <= bytes; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(b + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(b + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(b + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(b + i + 96)));
    }
    __m256i x = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, x);
    uint64_t acc = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
    for (; i < bytes; i++)
        acc ^= b[i];
    return acc;
}
