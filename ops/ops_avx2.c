/* ops: the AVX2/FMA/F16C kernel family.  Every function matches its scalar twin in ops.c
 * bit for bit: four 8-lane chains per output element over 32-element steps, fused
 * multiply-adds in increasing k, the canonical combine ((c0+c1)+(c2+c3), then
 * ops_lanes_sum).  Speed comes from streaming and from working on several outputs at once,
 * never from reassociating one output's sum. */
#include <immintrin.h>
#include <string.h>

#include "ops_impl.h"
#include "ops_x86.h"

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


AVX2 void ops_avx2_to_f32(float *dst, const void *src, ops_dtype t, int64_t n)
{
    if (ops_is_block(t)) { /* whole blocks (the panel widening of quantized rows) */
        ops_avx2_q_to_f32(dst, src, t, n);
        return;
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, load8(src, t, i));
    if (i < n) {
        float tmp[8];
        _mm256_storeu_ps(tmp, load_tail(src, t, i, n - i));
        memcpy(dst + i, tmp, (size_t)(n - i) * sizeof *dst);
    }
}

/* 8 elements at i, zero where i + lane >= k (the canonical zero padding). */
AVX2 static inline __m256 load_part(const void *base, ops_dtype t, int64_t i, int64_t k)
{
    if (i + 8 <= k)
        return load8(base, t, i);
    if (i >= k)
        return _mm256_setzero_ps();
    return load_tail(base, t, i, k - i);
}


AVX2 float ops_avx2_dot(const float *a, const void *b, ops_dtype bt, int64_t k)
{
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    int64_t i = 0;
    for (; i + OPS_STEP <= k; i += OPS_STEP) {
        c0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b, bt, i), c0);
        c1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b, bt, i + 8), c1);
        c2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), load8(b, bt, i + 16), c2);
        c3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), load8(b, bt, i + 24), c3);
    }
    if (i < k) {
        c0 = _mm256_fmadd_ps(load_part(a, OPS_F32, i, k), load_part(b, bt, i, k), c0);
        c1 = _mm256_fmadd_ps(load_part(a, OPS_F32, i + 8, k), load_part(b, bt, i + 8, k), c1);
        c2 = _mm256_fmadd_ps(load_part(a, OPS_F32, i + 16, k), load_part(b, bt, i + 16, k), c2);
        c3 = _mm256_fmadd_ps(load_part(a, OPS_F32, i + 24, k), load_part(b, bt, i + 24, k), c3);
    }
    return ops_x86_combine4(c0, c1, c2, c3);
}

/* Decode GEMVs prefetch each weight stream this many bytes ahead (the hardware prefetcher
 * alone leaves ~10% of the read bandwidth unused). */
#define GEMV_PREFETCH 1024

/* ---- the bf16 decode GEMV ----------------------------------------------------------
 * A 32-byte load holds 16 bf16 weights as 8 dwords, element 2d in the low half of dword d
 * and 2d+1 in the high half: a shift left by 16 widens the even elements, a mask the odd
 * ones, two cheap ALU operations per 16 weights (the zero-extending widen costs a shuffle
 * per 8 and twice the loads).  Accumulator lanes then hold the canonical accumulators in
 * another arrangement:
 *   even(step's 0..15)  = chain 0 lanes 0,2,4,6 | chain 1 lanes 0,2,4,6
 *   odd (step's 0..15)  = chain 0 lanes 1,3,5,7 | chain 1 lanes 1,3,5,7
 *   even/odd (16..31)   = the same for chains 2 and 3,
 * each summing the same products in the same order, so with x permuted to match
 * (eo_permute_x) the combine in eo_combine reproduces the canonical value bit for bit. */

/* x in the lane order above, per 32-element step: x0 x2 .. x14 | x1 x3 .. x15 | x16 x18 ..
 * x30 | x17 x19 .. x31. */
AVX2 static void eo_permute_x(float *xp, const float *x, int64_t k)
{
    const __m256i split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (int64_t i = 0; i < k; i += OPS_STEP) {
        __m256 p0 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i), split);
        __m256 p1 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i + 8), split);
        __m256 p2 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i + 16), split);
        __m256 p3 = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i + 24), split);
        _mm256_store_ps(xp + i, _mm256_permute2f128_ps(p0, p1, 0x20));
        _mm256_store_ps(xp + i + 8, _mm256_permute2f128_ps(p0, p1, 0x31));
        _mm256_store_ps(xp + i + 16, _mm256_permute2f128_ps(p2, p3, 0x20));
        _mm256_store_ps(xp + i + 24, _mm256_permute2f128_ps(p2, p3, 0x31));
    }
}

/* The canonical combine of the rearranged accumulators: (c0 + c1) is even/odd of chains
 * 0-1 folded half onto half, and the lane sum ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)) takes
 * v0, v2, v4, v6 from the even lanes and v1, v3, v5, v7 from the odd ones. */
AVX2 static inline float eo_combine(__m256 e01, __m256 o01, __m256 e23, __m256 o23)
{
    __m128 e = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(e01), _mm256_extractf128_ps(e01, 1)),
                          _mm_add_ps(_mm256_castps256_ps128(e23), _mm256_extractf128_ps(e23, 1)));
    __m128 o = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(o01), _mm256_extractf128_ps(o01, 1)),
                          _mm_add_ps(_mm256_castps256_ps128(o23), _mm256_extractf128_ps(o23, 1)));
    e = _mm_add_ps(e, _mm_movehl_ps(e, e)); /* v0+v4, v2+v6 */
    o = _mm_add_ps(o, _mm_movehl_ps(o, o)); /* v1+v5, v3+v7 */
    e = _mm_add_ss(e, _mm_shuffle_ps(e, e, 1));
    o = _mm_add_ss(o, _mm_shuffle_ps(o, o, 1));
    return _mm_cvtss_f32(_mm_add_ss(e, o));
}

/* out[n] for n in [n0, n1): rows n and n + half run together, two sequential weight
 * streams sharing every x load (the loads, not the arithmetic, bound a one-row loop when
 * the weights arrive at full memory speed).  An odd count pairs its last row with itself. */
AVX2 static void eo_gemv(float *out, const float *xp, const uint16_t *w, int64_t k, int64_t n0,
                         int64_t n1)
{
    const __m256i odd = _mm256_set1_epi32((int)0xffff0000u);
    int64_t half = (n1 - n0 + 1) / 2;
    for (int64_t n = n0; n < n0 + half; n++) {
        int64_t n2 = n + half < n1 ? n + half : n;
        const uint16_t *r = w + (size_t)n * (size_t)k, *s = w + (size_t)n2 * (size_t)k;
        __m256 re01 = _mm256_setzero_ps(), ro01 = re01, re23 = re01, ro23 = re01;
        __m256 se01 = re01, so01 = re01, se23 = re01, so23 = re01;
        for (int64_t i = 0; i < k; i += OPS_STEP) {
            _mm_prefetch((const char *)(r + i) + GEMV_PREFETCH, _MM_HINT_T0);
            _mm_prefetch((const char *)(s + i) + GEMV_PREFETCH, _MM_HINT_T0);
            __m256i ra = _mm256_loadu_si256((const __m256i *)(r + i));
            __m256i sa = _mm256_loadu_si256((const __m256i *)(s + i));
            __m256 xv = _mm256_load_ps(xp + i);
            re01 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_slli_epi32(ra, 16)), re01);
            se01 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_slli_epi32(sa, 16)), se01);
            xv = _mm256_load_ps(xp + i + 8);
            ro01 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_and_si256(ra, odd)), ro01);
            so01 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_and_si256(sa, odd)), so01);
            __m256i rb = _mm256_loadu_si256((const __m256i *)(r + i + 16));
            __m256i sb = _mm256_loadu_si256((const __m256i *)(s + i + 16));
            xv = _mm256_load_ps(xp + i + 16);
            re23 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_slli_epi32(rb, 16)), re23);
            se23 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_slli_epi32(sb, 16)), se23);
            xv = _mm256_load_ps(xp + i + 24);
            ro23 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_and_si256(rb, odd)), ro23);
            so23 = _mm256_fmadd_ps(xv, _mm256_castsi256_ps(_mm256_and_si256(sb, odd)), so23);
        }
        out[n] = eo_combine(re01, ro01, re23, ro23);
        out[n2] = eo_combine(se01, so01, se23, so23);
    }
}

/* One or two input rows (decode): each weight row is streamed once, sequentially, with
 * four independent chains per output; the widened weights feed both rows. */
AVX2 static void matmul_few_rows(float *out, int64_t ldo, const float *const *x, int64_t m,
                                 const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1)
{
    size_t row_bytes = (size_t)k * ops_dtype_size(wt);
    const uint8_t *wb = w;
    int64_t kfull = k / OPS_STEP * OPS_STEP;
    for (int64_t n = n0; n < n1; n++) {
        const void *wr = wb + (size_t)n * row_bytes;
        if (m == 1 && kfull == k) {
            /* the f32/f16 decode GEMV: one sequential, prefetched weight stream */
            const float *x0 = x[0];
            const uint8_t *pb = (const uint8_t *)wr;
            size_t es = ops_dtype_size(wt);
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < k; i += OPS_STEP) {
                _mm_prefetch((const char *)(pb + (size_t)i * es) + GEMV_PREFETCH, _MM_HINT_T0);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), load8(wr, wt, i), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 8), load8(wr, wt, i + 8), a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 16), load8(wr, wt, i + 16), a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 24), load8(wr, wt, i + 24), a3);
            }
            out[n] = ops_x86_combine4(a0, a1, a2, a3);
            continue;
        }
        if (m == 1 || kfull != k) {
            for (int64_t r = 0; r < m; r++)
                out[r * ldo + n] = ops_avx2_dot(x[r], wr, wt, k);
            continue;
        }
        const float *x0 = x[0], *x1 = x[1];
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int64_t i = 0; i < k; i += OPS_STEP) {
            __m256 w0 = load8(wr, wt, i), w1 = load8(wr, wt, i + 8);
            __m256 w2 = load8(wr, wt, i + 16), w3 = load8(wr, wt, i + 24);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i), w0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 8), w1, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 16), w2, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x0 + i + 24), w3, a3);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i), w0, b0);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 8), w1, b1);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 16), w2, b2);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(x1 + i + 24), w3, b3);
        }
        out[n] = ops_x86_combine4(a0, a1, a2, a3);
        out[ldo + n] = ops_x86_combine4(b0, b1, b2, b3);
    }
}


/* ---- AVX-512 panel tile -------------------------------------------------------------
 * The same panel, 4 rows x 4 outputs per pass over k: a 512-bit register holds one pair of
 * chains (elements 32s..32s+15 are chains 0 and 1, 32s+16.. chains 2 and 3, contiguous in
 * memory), so each accumulator still sums its canonical terms in the canonical order, and
 * the zero padding is the same (masked loads of x, a zero-padded panel). */

AVX512 static inline __m512 x16(const float *x, int64_t i, int64_t k)
{
    if (i + 16 <= k)
        return _mm512_loadu_ps(x + i);
    __mmask16 m = i >= k ? 0 : (__mmask16)((1u << (k - i)) - 1u);
    return _mm512_maskz_loadu_ps(m, x + (i < k ? i : 0));
}


/* One pass of a 4 x 4 tile over the steps [i, end) of one chain pair; LOADX loads x. */
#define TILE512_PASS(LOADX)                                                                     \
    for (; i < end; i += OPS_STEP) {                                                            \
        __m512 w0 = _mm512_load_ps(p + i), w1 = _mm512_load_ps(p + kp + i);                     \
        __m512 w2 = _mm512_load_ps(p + 2 * kp + i), w3 = _mm512_load_ps(p + 3 * kp + i);        \
        _Pragma("GCC unroll 4") for (int a = 0; a < 4; a++)                                     \
        {                                                                                       \
            __m512 xv = LOADX;                                                                  \
            acc[a][0] = _mm512_fmadd_ps(xv, w0, acc[a][0]);                                     \
            acc[a][1] = _mm512_fmadd_ps(xv, w1, acc[a][1]);                                     \
            acc[a][2] = _mm512_fmadd_ps(xv, w2, acc[a][2]);                                     \
            acc[a][3] = _mm512_fmadd_ps(xv, w3, acc[a][3]);                                     \
        }                                                                                       \
    }

/* Rows [r, r + 4) x panel rows [j, j + 4): out[(r + a) * ldo + nb + j + b]. */
AVX512 static void tile512(float *out, int64_t ldo, const float *const *x, int64_t r, const float *panel,
                           int64_t kp, int64_t k, int64_t nb, int64_t j)
{
    __m512 part[2][4][4];
    const float *p = panel + j * kp;
    const float *x0 = x[r], *x1 = x[r + 1], *x2 = x[r + 2], *x3 = x[r + 3];
    const float *xr[4] = {x0, x1, x2, x3};
    for (int h = 0; h < 2; h++) {
        __m512 acc[4][4];
#pragma GCC unroll 4
        for (int a = 0; a < 4; a++)
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++)
                acc[a][b] = _mm512_setzero_ps();
        int64_t i = 16 * h, end = (k - 16 * h) / OPS_STEP * OPS_STEP + 16 * h; /* whole 16-runs of x */
        if (end < i)
            end = i;
        TILE512_PASS(_mm512_loadu_ps(xr[a] + i))
        end = kp;
        TILE512_PASS(x16(xr[a], i, k)) /* the zero-padded tail */
#pragma GCC unroll 4
        for (int a = 0; a < 4; a++)
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++)
                part[h][a][b] = acc[a][b];
    }
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            out[(r + a) * ldo + nb + j + b] = ops_x86_combine_pairs(part[0][a][b], part[1][a][b]);
}

/* Many input rows (prefill, grouped experts): widen OPS_PANEL_ROWS weight rows once into a
 * zero-padded f32 panel, then run a 4 x 2 (rows x outputs) register tile over it, one chain
 * at a time (each chain is its own sequential sum, so computing them one after another
 * gives the canonical values), combining the four partials at the end. */
AVX2 static void matmul_panel(float *out, int64_t ldo, const float *const *x, int64_t m,
                              const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1,
                              float *panel)
{
    int64_t kp = (k + OPS_STEP - 1) / OPS_STEP * OPS_STEP;
    size_t row_bytes = ops_row_bytes(wt, k);
    for (int64_t nb = n0; nb < n1; nb += OPS_PANEL_ROWS) {
        int64_t nr = n1 - nb < OPS_PANEL_ROWS ? n1 - nb : OPS_PANEL_ROWS;
        for (int64_t j = 0; j < nr; j++) {
            float *prow = panel + j * kp;
            ops_avx2_to_f32(prow, (const uint8_t *)w + (size_t)(nb + j) * row_bytes, wt, k);
            for (int64_t i = k; i < kp; i++)
                prow[i] = 0.0f;
        }
        int64_t r = 0;
        if (ops_level_current() >= OPS_LEVEL_AVX512 && nr % 4 == 0) {
            for (; r + 4 <= m; r += 4)
                for (int64_t j = 0; j < nr; j += 4)
                    tile512(out, ldo, x, r, panel, kp, k, nb, j);
        }
        for (; r + 4 <= m; r += 4) {
            const float *x0 = x[r], *x1 = x[r + 1], *x2 = x[r + 2], *x3 = x[r + 3];
            int64_t j = 0;
            for (; j + 2 <= nr; j += 2) {
                const float *p0 = panel + j * kp, *p1 = p0 + kp;
                __m256 part[OPS_CHAINS][8];
                for (int c = 0; c < OPS_CHAINS; c++) {
                    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00;
                    __m256 c20 = c00, c21 = c00, c30 = c00, c31 = c00;
                    int64_t i = 8 * c;
                    for (; i + 8 <= k; i += OPS_STEP) {
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
                    for (; i < kp; i += OPS_STEP) { /* the padded tail of this chain */
                        __m256 w0v = _mm256_load_ps(p0 + i), w1v = _mm256_load_ps(p1 + i);
                        __m256 xv = load_part(x0, OPS_F32, i, k);
                        c00 = _mm256_fmadd_ps(xv, w0v, c00);
                        c01 = _mm256_fmadd_ps(xv, w1v, c01);
                        xv = load_part(x1, OPS_F32, i, k);
                        c10 = _mm256_fmadd_ps(xv, w0v, c10);
                        c11 = _mm256_fmadd_ps(xv, w1v, c11);
                        xv = load_part(x2, OPS_F32, i, k);
                        c20 = _mm256_fmadd_ps(xv, w0v, c20);
                        c21 = _mm256_fmadd_ps(xv, w1v, c21);
                        xv = load_part(x3, OPS_F32, i, k);
                        c30 = _mm256_fmadd_ps(xv, w0v, c30);
                        c31 = _mm256_fmadd_ps(xv, w1v, c31);
                    }
                    part[c][0] = c00;
                    part[c][1] = c01;
                    part[c][2] = c10;
                    part[c][3] = c11;
                    part[c][4] = c20;
                    part[c][5] = c21;
                    part[c][6] = c30;
                    part[c][7] = c31;
                }
                for (int o = 0; o < 8; o++)
                    out[(r + o / 2) * ldo + nb + j + o % 2] =
                        ops_x86_combine4(part[0][o], part[1][o], part[2][o], part[3][o]);
            }
            for (; j < nr; j++)
                for (int64_t rr = r; rr < r + 4; rr++)
                    out[rr * ldo + nb + j] = ops_avx2_dot(x[rr], panel + j * kp, OPS_F32, k);
        }
        for (; r < m; r++)
            for (int64_t j = 0; j < nr; j++)
                out[r * ldo + nb + j] = ops_avx2_dot(x[r], panel + j * kp, OPS_F32, k);
    }
}

AVX2 void ops_avx2_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                          const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1,
                          float *panel)
{
    if (ops_is_block(wt)) {
        /* decode: the rows dequantized in registers; prefill: panels widened exactly once */
        if (m > 1 && panel != NULL)
            matmul_panel(out, ldo, x_rows, m, w, wt, k, n0, n1, panel);
        else
            for (int64_t r = 0; r < m; r++)
                (ops_level_current() >= OPS_LEVEL_AVX512 ? ops_avx512_q_gemv
                                                         : ops_avx2_q_gemv)(out + r * ldo, x_rows[r], w, wt, k, n0, n1);
    } else if (m == 1 && wt == OPS_BF16 && k % OPS_STEP == 0 && panel != NULL) {
        eo_permute_x(panel, x_rows[0], k);
        eo_gemv(out, panel, w, k, n0, n1);
    } else if (m <= 2 || panel == NULL)
        matmul_few_rows(out, ldo, x_rows, m, w, wt, k, n0, n1);
    else
        matmul_panel(out, ldo, x_rows, m, w, wt, k, n0, n1, panel);
}

/* ops_expf on 8 lanes: the scalar twin's operations, lane by lane. */
AVX2 static inline __m256 exp8(__m256 x)
{
    __m256 is_nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 hi = _mm256_cmp_ps(x, _mm256_set1_ps(OPS_EXP_HI), _CMP_GT_OQ);
    __m256 lo = _mm256_cmp_ps(x, _mm256_set1_ps(OPS_EXP_LO), _CMP_LT_OQ);
    __m256 special = _mm256_or_ps(is_nan, _mm256_or_ps(hi, lo));
    __m256 xc = _mm256_blendv_ps(x, _mm256_setzero_ps(), special);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(OPS_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-OPS_LN2_HI), xc);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-OPS_LN2_LO), r);
    __m256 p = _mm256_set1_ps(OPS_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(OPS_EXP_P5));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    res = _mm256_blendv_ps(res, _mm256_set1_ps(__builtin_inff()), hi);
    res = _mm256_blendv_ps(res, _mm256_setzero_ps(), lo);
    return _mm256_blendv_ps(res, x, is_nan);
}

AVX2 float ops_avx2_expf(float x)
{
    return _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)));
}

/* Canonical sum (ops.c scalar_sum): the four 8-lane chains over 32-element steps. */
AVX2 static float sum_canonical(const float *x, int64_t n)
{
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    int64_t i = 0;
    for (; i + OPS_STEP <= n; i += OPS_STEP) {
        c0 = _mm256_add_ps(c0, _mm256_loadu_ps(x + i));
        c1 = _mm256_add_ps(c1, _mm256_loadu_ps(x + i + 8));
        c2 = _mm256_add_ps(c2, _mm256_loadu_ps(x + i + 16));
        c3 = _mm256_add_ps(c3, _mm256_loadu_ps(x + i + 24));
    }
    if (i < n) {
        c0 = _mm256_add_ps(c0, load_part(x, OPS_F32, i, n));
        c1 = _mm256_add_ps(c1, load_part(x, OPS_F32, i + 8, n));
        c2 = _mm256_add_ps(c2, load_part(x, OPS_F32, i + 16, n));
        c3 = _mm256_add_ps(c3, load_part(x, OPS_F32, i + 24, n));
    }
    return ops_x86_combine4(c0, c1, c2, c3);
}

AVX2 void ops_avx2_softmax(float *s, int64_t n)
{
    float mx = s[0];
    for (int64_t j = 1; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    __m256 m8 = _mm256_set1_ps(mx);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(s + j, exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), m8)));
    for (; j < n; j++)
        s[j] = ops_avx2_expf(s[j] - mx);
    __m256 sum = _mm256_set1_ps(sum_canonical(s, n));
    for (j = 0; j + 8 <= n; j += 8)
        _mm256_storeu_ps(s + j, _mm256_div_ps(_mm256_loadu_ps(s + j), sum));
    for (; j < n; j++)
        s[j] = s[j] / _mm256_cvtss_f32(sum);
}

AVX2 void ops_avx2_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    int64_t i = 0;
    __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 den = _mm256_add_ps(one, exp8(_mm256_xor_ps(g, sign)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, den), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + ops_avx2_expf(-g)) * up[i];
    }
}

/* o_h[d] += p_h[j] * v_j[d] for four heads h (outputs out_stride apart, probabilities n
 * apart), keys [j0, j1), every d (hd a multiple of 16): per key, each V load feeds all
 * four heads; each (h, d) still accumulates in key order. */
AVX2 static void pv_four_heads(float *o, int64_t out_stride, const float *p, int64_t n,
                               const float *v_cache, int64_t kv_stride, int64_t j0, int64_t j1,
                               int64_t hd)
{
    float *o1 = o + out_stride, *o2 = o1 + out_stride, *o3 = o2 + out_stride;
    const float *p1 = p + n, *p2 = p1 + n, *p3 = p2 + n;
    for (int64_t d = 0; d < hd; d += 16) {
        __m256 a0 = _mm256_loadu_ps(o + d), a1 = _mm256_loadu_ps(o + d + 8);
        __m256 b0 = _mm256_loadu_ps(o1 + d), b1 = _mm256_loadu_ps(o1 + d + 8);
        __m256 c0 = _mm256_loadu_ps(o2 + d), c1 = _mm256_loadu_ps(o2 + d + 8);
        __m256 e0 = _mm256_loadu_ps(o3 + d), e1 = _mm256_loadu_ps(o3 + d + 8);
        for (int64_t j = j0; j < j1; j++) {
            const float *v = v_cache + j * kv_stride + d;
            __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
            __m256 pj = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pj, v0, a0);
            a1 = _mm256_fmadd_ps(pj, v1, a1);
            pj = _mm256_set1_ps(p1[j]);
            b0 = _mm256_fmadd_ps(pj, v0, b0);
            b1 = _mm256_fmadd_ps(pj, v1, b1);
            pj = _mm256_set1_ps(p2[j]);
            c0 = _mm256_fmadd_ps(pj, v0, c0);
            c1 = _mm256_fmadd_ps(pj, v1, c1);
            pj = _mm256_set1_ps(p3[j]);
            e0 = _mm256_fmadd_ps(pj, v0, e0);
            e1 = _mm256_fmadd_ps(pj, v1, e1);
        }
        _mm256_storeu_ps(o + d, a0);
        _mm256_storeu_ps(o + d + 8, a1);
        _mm256_storeu_ps(o1 + d, b0);
        _mm256_storeu_ps(o1 + d + 8, b1);
        _mm256_storeu_ps(o2 + d, c0);
        _mm256_storeu_ps(o2 + d + 8, c1);
        _mm256_storeu_ps(o3 + d, e0);
        _mm256_storeu_ps(o3 + d + 8, e1);
    }
}

/* Grouped-query attention: g query heads against one KV head.  Keys are taken in blocks
 * that stay in L1 while every head of the group scores them; V rows are streamed once,
 * each head's output accumulating sequentially over keys (the canonical order). */
AVX2 void ops_avx2_attention_group(float *out, int64_t out_stride, const float *q,
                                   int64_t q_stride, int64_t g, const float *k_cache,
                                   const float *v_cache, int64_t kv_stride, int64_t pos,
                                   int64_t hd, float scale, float *scores)
{
    int64_t n = pos + 1;
    enum { KEY_BLOCK = 32 };
    for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {
        int64_t j1 = j0 + KEY_BLOCK < n ? j0 + KEY_BLOCK : n;
        for (int64_t h = 0; h < g; h++) {
            const float *qh = q + h * q_stride;
            float *sc = scores + h * n;
            int64_t j = j0;
            if (hd % OPS_STEP == 0) { /* two keys at a time share each loaded q vector */
                for (; j + 2 <= j1; j += 2) {
                    const float *k0 = k_cache + j * kv_stride, *k1 = k0 + kv_stride;
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                    for (int64_t i = 0; i < hd; i += OPS_STEP) {
                        __m256 q0 = _mm256_loadu_ps(qh + i), q1 = _mm256_loadu_ps(qh + i + 8);
                        __m256 q2 = _mm256_loadu_ps(qh + i + 16), q3 = _mm256_loadu_ps(qh + i + 24);
                        a0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k0 + i), a0);
                        a1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k0 + i + 8), a1);
                        a2 = _mm256_fmadd_ps(q2, _mm256_loadu_ps(k0 + i + 16), a2);
                        a3 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(k0 + i + 24), a3);
                        b0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(k1 + i), b0);
                        b1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(k1 + i + 8), b1);
                        b2 = _mm256_fmadd_ps(q2, _mm256_loadu_ps(k1 + i + 16), b2);
                        b3 = _mm256_fmadd_ps(q3, _mm256_loadu_ps(k1 + i + 24), b3);
                    }
                    sc[j] = ops_x86_combine4(a0, a1, a2, a3) * scale;
                    sc[j + 1] = ops_x86_combine4(b0, b1, b2, b3) * scale;
                }
            }
            for (; j < j1; j++)
                sc[j] = ops_avx2_dot(qh, k_cache + j * kv_stride, OPS_F32, hd) * scale;
        }
    }
    for (int64_t h = 0; h < g; h++) {
        ops_avx2_softmax(scores + h * n, n);
        float *o = out + h * out_stride;
        for (int64_t d = 0; d < hd; d++)
            o[d] = 0.0f;
    }
    /* out_h[d] += p_h[j] * v_j[d], sequential in j for every (h, d).  Keys in L1-sized
     * blocks; within a block, 16 output floats of four heads (each V load feeds all four),
     * or 64 of one head, live in registers. */
    int64_t hd64 = hd / 64 * 64;
    for (int64_t j0 = 0; j0 < n; j0 += KEY_BLOCK) {
        int64_t j1 = j0 + KEY_BLOCK < n ? j0 + KEY_BLOCK : n;
        int64_t h0 = 0;
        if (hd % 16 == 0)
            for (; h0 + 4 <= g; h0 += 4)
                pv_four_heads(out + h0 * out_stride, out_stride, scores + h0 * n, n, v_cache,
                              kv_stride, j0, j1, hd);
        for (int64_t h = h0; h < g; h++) {
            float *o = out + h * out_stride;
            const float *p = scores + h * n;
            for (int64_t d = 0; d < hd64; d += 64) {
                __m256 a0 = _mm256_loadu_ps(o + d), a1 = _mm256_loadu_ps(o + d + 8);
                __m256 a2 = _mm256_loadu_ps(o + d + 16), a3 = _mm256_loadu_ps(o + d + 24);
                __m256 a4 = _mm256_loadu_ps(o + d + 32), a5 = _mm256_loadu_ps(o + d + 40);
                __m256 a6 = _mm256_loadu_ps(o + d + 48), a7 = _mm256_loadu_ps(o + d + 56);
                for (int64_t j = j0; j < j1; j++) {
                    const float *v = v_cache + j * kv_stride + d;
                    __m256 pj = _mm256_set1_ps(p[j]);
                    a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v), a0);
                    a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8), a1);
                    a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 16), a2);
                    a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 24), a3);
                    a4 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 32), a4);
                    a5 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 40), a5);
                    a6 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 48), a6);
                    a7 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 56), a7);
                }
                _mm256_storeu_ps(o + d, a0);
                _mm256_storeu_ps(o + d + 8, a1);
                _mm256_storeu_ps(o + d + 16, a2);
                _mm256_storeu_ps(o + d + 24, a3);
                _mm256_storeu_ps(o + d + 32, a4);
                _mm256_storeu_ps(o + d + 40, a5);
                _mm256_storeu_ps(o + d + 48, a6);
                _mm256_storeu_ps(o + d + 56, a7);
            }
            for (int64_t j = j0; j < j1; j++) {
                const float *v = v_cache + j * kv_stride;
                __m256 pj = _mm256_set1_ps(p[j]);
                int64_t d = hd64;
                for (; d + 8 <= hd; d += 8)
                    _mm256_storeu_ps(o + d, _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + d), _mm256_loadu_ps(o + d)));
                for (; d < hd; d++)
                    o[d] = __builtin_fmaf(p[j], v[d], o[d]);
            }
        }
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
