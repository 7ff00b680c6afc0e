/* ops: the act-q8 numerics (ops.h) with AVX-512 VNNI.  The integer sums are exact however
 * they are formed, so the instructions may pair and reorder them freely (vpdpbusd for the
 * 32-blocks, vpmaddubsw + vpdpwssd for the K-quants, whose sub-block scales multiply in
 * 16-bit lanes); the float operations are ops_qact.c's, one for one and in its order. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "ops_impl.h"

#define VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define INLV VNNI static inline __attribute__((always_inline))

#define QACT_PREFETCH 1024   /* bytes ahead of each weight stream */

bool ops_avx512_qact_available(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return false;
#endif
}

/* ---- the quantizer ------------------------------------------------------------------- */

/* A block of n (32 or 256): quants into q, the sum of each 16 into s16; returns d. */
INLV float qblock(int8_t *q, int32_t *s16, const float *x, int n)
{
    __m512 mx = _mm512_setzero_ps();
    __mmask16 bad = 0;
    for (int i = 0; i < n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        bad |= _mm512_fpclass_ps_mask(v, 0x99); /* NaN, +Inf, -Inf */
        mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
    }
    float amax = _mm512_reduce_max_ps(mx); /* exact: a max of finite values */
    if (bad || amax < OPS_QACT_TINY) {
        memset(q, 0, (size_t)n);
        for (int j = 0; j < n / 16; j++)
            s16[j] = 0;
        return bad ? NAN : 0.0f;
    }
    __m512 id = _mm512_set1_ps(127.0f / amax);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int i = 0; i < n; i += 16) {
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), id)); /* to nearest even */
        r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
        _mm_storeu_si128((__m128i *)(q + i), _mm512_cvtepi32_epi8(r));
        s16[i / 16] = _mm512_reduce_add_epi32(r);
    }
    return amax / 127.0f;
}

VNNI void ops_avx512_qact_row(void *dst, const float *x, int64_t k)
{
    ops_qact_view v = ops_qact_at(dst, k);
    int32_t s16[16];
    for (int64_t b = 0; b < k / 32; b++) {
        ((float *)v.d32)[b] = qblock((int8_t *)v.q32 + 32 * b, s16, x + 32 * b, 32);
        ((int32_t *)v.bs32)[b] = s16[0] + s16[1];
    }
    if (k % 256)
        return;
    for (int64_t b = 0; b < k / 256; b++) {
        ((float *)v.d256)[b] = qblock((int8_t *)v.q256 + 256 * b, s16, x + 256 * b, 256);
        for (int j = 0; j < 16; j++)
            ((int16_t *)v.bs16)[16 * b + j] = (int16_t)s16[j];
    }
}

/* ---- 32-blocks: Q8_0, Q4_0, Q5_0 ----------------------------------------------------- */

/* The 64 weight quants of blocks p0 and p1 as unsigned bytes (signed quant + the type's
 * offset: 128, 8, 16). */
INLV __m512i pair_bytes(ops_dtype t, const uint8_t *p0, const uint8_t *p1)
{
    const __m512i m0f = _mm512_set1_epi8(15);
    switch (t) {
    case OPS_Q8_0: {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2))),
                                       _mm256_loadu_si256((const __m256i *)(p1 + 2)), 1);
        return _mm512_xor_si512(v, _mm512_set1_epi8((char)0x80));
    }
    case OPS_Q4_0:
    case OPS_Q5_0: {
        int o = t == OPS_Q4_0 ? 2 : 6;
        __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p0 + o)))),
            _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(p1 + o))), 1);
        /* each 16 bytes twice: low nibbles (elements 0-15), then high (16-31) */
        const __m512i cnt = _mm512_set_epi64(0x0004000400040004ll, 0x0004000400040004ll, 0, 0,
                                             0x0004000400040004ll, 0x0004000400040004ll, 0, 0);
        __m512i q = _mm512_and_si512(_mm512_srlv_epi16(v, cnt), m0f);
        if (t == OPS_Q5_0) {
            uint32_t h0, h1;
            memcpy(&h0, p0 + 2, 4);
            memcpy(&h1, p1 + 2, 4);
            q = _mm512_or_si512(q, _mm512_maskz_mov_epi8((__mmask64)h0 | (__mmask64)h1 << 32,
                                                         _mm512_set1_epi8(16)));
        }
        return q;
    }
    default: return _mm512_setzero_si512();
    }
}

/* Eight vectors of block-pair partial sums (v[p]: dwords 0-7 block 2p, 8-15 block 2p+1)
 * to one of 16 block sums: dword 4L + j holds block 4j + L. */
INLV __m512i reduce16(const __m512i v[8])
{
    __m512i w[4];
    for (int m = 0; m < 4; m++)
        w[m] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * m], v[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(v[2 * m], v[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512i x0 = _mm512_add_epi32(_mm512_unpacklo_epi32(w[0], w[1]), _mm512_unpackhi_epi32(w[0], w[1]));
    __m512i x1 = _mm512_add_epi32(_mm512_unpacklo_epi32(w[2], w[3]), _mm512_unpackhi_epi32(w[2], w[3]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(x0, x1), _mm512_unpackhi_epi64(x0, x1));
}

INLV float hsum16(__m512 v) /* v[j] + v[j + 8], then the canonical lane tree */
{
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

/* R (1 or 2) weight rows against one input row: every activation load feeds both. */
INLV void q32_rows(ops_dtype t, const ops_qact_view *a, const uint8_t *const rw[2], int R, int64_t nb, size_t bb,
                   float *out[2])
{
    /* lane l holds block perm[l] = 4 (l % 4) + l / 4 of each group of 16 */
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i boff = _mm512_mullo_epi32(perm, _mm512_set1_epi32((int)bb));
    const int sh = t == OPS_Q8_0 ? 7 : t == OPS_Q4_0 ? 3 : 4;
    __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < nb; g += 16) {
        int n = nb - g < 16 ? (int)(nb - g) : 16;
        const uint8_t *gb[2];
        for (int r = 0; r < R; r++) {
            gb[r] = rw[r] + (size_t)g * bb;
            for (size_t o = 0; o < 16 * bb; o += 64)
                _mm_prefetch((const char *)gb[r] + QACT_PREFETCH + o, _MM_HINT_T0);
        }
        __m512i v[2][8];
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) {
            int b0 = 2 * p;
            if (b0 >= n) {
                v[0][p] = v[1][p] = _mm512_setzero_si512();
                continue;
            }
            const int8_t *xq = a->q32 + 32 * (g + b0);
            __m512i x = b0 + 1 < n ? _mm512_loadu_si512((const void *)xq)
                                   : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)xq));
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) {
                const uint8_t *p0 = gb[r] + (size_t)b0 * bb, *p1 = b0 + 1 < n ? p0 + bb : p0;
                v[r][p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair_bytes(t, p0, p1), x);
            }
        }
        __mmask16 bm = (__mmask16)((1u << n) - 1u); /* blocks present, in block order */
        __mmask16 lm = _mm512_cmplt_epi32_mask(perm, _mm512_set1_epi32(n)); /* ... in lane order */
        __m512i bs = _mm512_slli_epi32(_mm512_permutexvar_epi32(perm, _mm512_maskz_loadu_epi32(bm, a->bs32 + g)), sh);
        __m512 da = _mm512_permutexvar_ps(perm, _mm512_maskz_loadu_ps(bm, a->d32 + g));
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            __m512i is = _mm512_sub_epi32(reduce16(v[r]), bs);
            __m512i dwi = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lm, boff, gb[r], 1);
            __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dwi));
            acc[r] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, da), acc[r], lm);
        }
    }
    for (int r = 0; r < R; r++)
        *out[r] = hsum16(acc[r]);
}

/* One weight row against M (1..4) input rows (prefill): each group's weights unpacked and
 * scales gathered once; per input row the same operations as q32_row. */
INLV void q32_cols(ops_dtype t, const ops_qact_view *a, int M, const uint8_t *row, int64_t nb, size_t bb,
                   float *out[4])
{
    const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512i boff = _mm512_mullo_epi32(perm, _mm512_set1_epi32((int)bb));
    const int sh = t == OPS_Q8_0 ? 7 : t == OPS_Q4_0 ? 3 : 4;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < nb; g += 16) {
        int n = nb - g < 16 ? (int)(nb - g) : 16;
        const uint8_t *gb = row + (size_t)g * bb;
        __m512i wq[8];
#pragma GCC unroll 8
        for (int p = 0; p < 8; p++) {
            int b0 = 2 * p;
            const uint8_t *p0 = gb + (size_t)(b0 < n ? b0 : 0) * bb, *p1 = b0 + 1 < n ? p0 + bb : p0;
            wq[p] = b0 < n ? pair_bytes(t, p0, p1) : _mm512_setzero_si512();
        }
        __mmask16 bm = (__mmask16)((1u << n) - 1u);
        __mmask16 lm = _mm512_cmplt_epi32_mask(perm, _mm512_set1_epi32(n));
        __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_mask_i32gather_epi32(_mm512_setzero_si512(), lm, boff, gb, 1)));
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (r >= M)
                continue;
            __m512i v[8];
#pragma GCC unroll 8
            for (int p = 0; p < 8; p++) {
                int b0 = 2 * p;
                if (b0 >= n) {
                    v[p] = _mm512_setzero_si512();
                    continue;
                }
                const int8_t *xq = a[r].q32 + 32 * (g + b0);
                __m512i x = b0 + 1 < n ? _mm512_loadu_si512((const void *)xq)
                                       : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)xq));
                v[p] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[p], x);
            }
            __m512i bs = _mm512_permutexvar_epi32(perm, _mm512_maskz_loadu_epi32(bm, a[r].bs32 + g));
            __m512i is = _mm512_sub_epi32(reduce16(v), _mm512_slli_epi32(bs, sh));
            __m512 da = _mm512_permutexvar_ps(perm, _mm512_maskz_loadu_ps(bm, a[r].d32 + g));
            acc[r] = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, da), acc[r], lm);
        }
    }
    for (int r = 0; r < M; r++)
        *out[r] = hsum16(acc[r]);
}

/* ---- K-quants: Q4_K, Q5_K, Q6_K ------------------------------------------------------ */

/* The sums of four vectors' dwords (exact: integers). */
INLV __m128i hsum4_256(__m256i b0, __m256i b1, __m256i b2, __m256i b3)
{
    __m256i u = _mm256_hadd_epi32(_mm256_hadd_epi32(b0, b1), _mm256_hadd_epi32(b2, b3));
    return _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}
INLV __m256i fold512(__m512i v)
{
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

INLV __m512i idx16(int lo, int hi) /* word w: lo for w < 16, hi after */
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16((short)lo)), _mm256_set1_epi16((short)hi), 1);
}

/* Q6_K super-block: sum_j sc_j * sum (q - 32) * x over its 16 sub-blocks, in 16 dwords. */
INLV __m512i q6k_block(const uint8_t *b, const __m512i x[4], __m256i bs)
{
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
    __m512i scz = _mm512_castsi256_si512(sc16);
    __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
        __m512i v = _mm512_loadu_si512((const void *)(b + 64 * h));
        __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)));
        /* elements 128h + 0..63: low nibbles, qh bits 0-1 | 2-3; 64..127: high, bits 4-5 | 6-7 */
        __m512i lq = _mm512_or_si512(_mm512_and_si512(v, m0f), _mm512_and_si512(_mm512_sllv_epi16(hb, idx16(4, 2)), m30));
        __m512i hq = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), m0f),
                                     _mm512_and_si512(_mm512_srlv_epi16(hb, idx16(0, 2)), m30));
        /* word w of group g (64 elements) belongs to sub-block 4g + w / 8 */
        const __m512i i0 = _mm512_set_epi64(0x0003000300030003ll, 0x0003000300030003ll, 0x0002000200020002ll,
                                            0x0002000200020002ll, 0x0001000100010001ll, 0x0001000100010001ll, 0, 0);
        __m512i g0 = _mm512_add_epi16(i0, _mm512_set1_epi16((short)(8 * h))), g1 = _mm512_add_epi16(g0, _mm512_set1_epi16(4));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(lq, x[2 * h]), _mm512_permutexvar_epi16(g0, scz));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(hq, x[2 * h + 1]), _mm512_permutexvar_epi16(g1, scz));
    }
    __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5); /* 32 * sum_j sc_j * bsum_j */
    return _mm512_sub_epi32(acc, _mm512_zextsi256_si512(corr));
}

/* Q4_K / Q5_K super-block: sum_s sc_s * sum q * x in 16 dwords; scw holds the row's 8 scales
 * as words at word offset `o` (0 or 8) of its 256-bit half. */
INLV __m512i q45k_block(ops_dtype t, const uint8_t *b, const __m512i xa[2], const __m512i xb[2], __m512i scz,
                        int o)
{
    const __m512i m0f = _mm512_set1_epi8(15), m10 = _mm512_set1_epi8(16);
    const uint8_t *qs = t == OPS_Q5_K ? b + 48 : b + 16;
    __m512i hb = _mm512_setzero_si512();
    if (t == OPS_Q5_K)
        hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
    __m512i acc = _mm512_setzero_si512();
#pragma GCC unroll 2
    for (int p = 0; p < 2; p++) {
        /* bytes 0-31: sub-blocks 4p (low nibbles) and 4p+1 (high); 32-63: 4p+2, 4p+3 */
        __m512i v = _mm512_loadu_si512((const void *)(qs + 64 * p));
        __m512i A = _mm512_and_si512(v, m0f), B = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
        if (t == OPS_Q5_K) { /* bit s of qh[e] to bit 4 */
            __m512i ha = p == 0 ? _mm512_sllv_epi16(hb, idx16(4, 2)) : _mm512_srlv_epi16(hb, idx16(0, 2));
            __m512i hbb = p == 0 ? _mm512_sllv_epi16(hb, idx16(3, 1)) : _mm512_srlv_epi16(hb, idx16(1, 3));
            A = _mm512_or_si512(A, _mm512_and_si512(ha, m10));
            B = _mm512_or_si512(B, _mm512_and_si512(hbb, m10));
        }
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(A, xa[p]),
                                  _mm512_permutexvar_epi16(idx16(o + 4 * p, o + 4 * p + 2), scz));
        acc = _mm512_dpwssd_epi32(acc, _mm512_maddubs_epi16(B, xb[p]),
                                  _mm512_permutexvar_epi16(idx16(o + 4 * p + 1, o + 4 * p + 3), scz));
    }
    return acc;
}

INLV uint32_t ld32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* The K-quant scales of four rows' blocks at once (quants.py get_scale_min on 32-bit words:
 * bytes 4-7 a, 8-11 m, 12-15 c of each block): rows 0-1 and 2-3's scales and mins as
 * words (row r at word 8 (r % 2) of its vector), and the rows' d and dmin. */
typedef struct k45_prep {
    __m256i sc01, sc23, mn01, mn23;
    __m128 d, dmin;
} k45_prep;

INLV void k45_prepare(const uint8_t *const b[4], k45_prep *p)
{
    __m128i a = _mm_setr_epi32((int)ld32(b[0] + 4), (int)ld32(b[1] + 4), (int)ld32(b[2] + 4), (int)ld32(b[3] + 4));
    __m128i m = _mm_setr_epi32((int)ld32(b[0] + 8), (int)ld32(b[1] + 8), (int)ld32(b[2] + 8), (int)ld32(b[3] + 8));
    __m128i c = _mm_setr_epi32((int)ld32(b[0] + 12), (int)ld32(b[1] + 12), (int)ld32(b[2] + 12), (int)ld32(b[3] + 12));
    __m128i dd = _mm_setr_epi32((int)ld32(b[0]), (int)ld32(b[1]), (int)ld32(b[2]), (int)ld32(b[3]));
    const __m128i m3f = _mm_set1_epi8(0x3f), m0f = _mm_set1_epi8(15), m30 = _mm_set1_epi8(0x30);
    __m128i sc_lo = _mm_and_si128(a, m3f), mn_lo = _mm_and_si128(m, m3f);
    __m128i sc_hi = _mm_or_si128(_mm_and_si128(c, m0f), _mm_and_si128(_mm_srli_epi32(a, 2), m30));
    __m128i mn_hi = _mm_or_si128(_mm_and_si128(_mm_srli_epi32(c, 4), m0f), _mm_and_si128(_mm_srli_epi32(m, 2), m30));
    p->sc01 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi32(sc_lo, sc_hi));
    p->sc23 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi32(sc_lo, sc_hi));
    p->mn01 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi32(mn_lo, mn_hi));
    p->mn23 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi32(mn_lo, mn_hi));
    __m256 h = _mm256_cvtph_ps(dd); /* d0, dmin0, d1, dmin1, ... */
    p->d = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
    p->dmin = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(h, _mm256_setr_epi32(1, 3, 5, 7, 0, 0, 0, 0)));
}

/* sum_s m_s * (bs16[2s] + bs16[2s+1]) of two rows' mins (words, row r at 8 r): dwords 0-3 row
 * 0's partial sums, 4-7 row 1's.  blo / bhi: the block's bs16 words 0-7 / 8-15 in both halves. */
INLV __m256i k45_mins2(__m256i mn, __m256i blo, __m256i bhi)
{
    return _mm256_add_epi32(_mm256_madd_epi16(_mm256_unpacklo_epi16(mn, mn), blo),
                            _mm256_madd_epi16(_mm256_unpackhi_epi16(mn, mn), bhi));
}

INLV uint16_t rd16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

INLV __m512i cat256(const int8_t *lo, const int8_t *hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
}

/* R (1..4) rows of a K-quant at once: every activation load feeds all of them, and the
 * four rows' integer sums are reduced together; the float combine runs one row per lane.
 * Rows past R repeat row 0 (read, never stored). */
INLV void qk_rows(ops_dtype t, const ops_qact_view *a, const uint8_t *const rw[4], int R, int64_t nb,
                  size_t bb, float *out[4])
{
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const int8_t *xq = a->q256 + 256 * i;
        __m256i bs = _mm256_loadu_si256((const __m256i *)(a->bs16 + 16 * i));
        const uint8_t *b[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            b[r] = rw[r < R ? r : 0] + (size_t)i * bb;
            if (r < R)
                for (size_t o = 0; o < bb; o += 64)
                    _mm_prefetch((const char *)b[r] + QACT_PREFETCH + o, _MM_HINT_T0);
        }
        __m256i is[4];
        __m128 da = _mm_set1_ps(a->d256[i]), term;
        if (t == OPS_Q6_K) {
            __m512i x[4];
            for (int g = 0; g < 4; g++)
                x[g] = _mm512_loadu_si512((const void *)(xq + 64 * g));
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                is[r] = r < R ? fold512(q6k_block(b[r], x, bs)) : _mm256_setzero_si256();
            __m128 dw = _mm_cvtph_ps(_mm_setr_epi16((short)rd16(b[0] + 208), (short)rd16(b[1] + 208),
                                                    (short)rd16(b[2] + 208), (short)rd16(b[3] + 208), 0, 0, 0, 0));
            term = _mm_mul_ps(_mm_mul_ps(dw, da), _mm_cvtepi32_ps(hsum4_256(is[0], is[1], is[2], is[3])));
        } else {
            __m512i xa[2], xb[2];
            for (int p = 0; p < 2; p++) {
                xa[p] = cat256(xq + 128 * p, xq + 128 * p + 64);
                xb[p] = cat256(xq + 128 * p + 32, xq + 128 * p + 96);
            }
            k45_prep kp;
            k45_prepare(b, &kp);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++)
                is[r] = r < R ? fold512(q45k_block(t, b[r], xa, xb, _mm512_castsi256_si512(r < 2 ? kp.sc01 : kp.sc23),
                                                   8 * (r % 2)))
                              : _mm256_setzero_si256();
            __m256i blo = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(bs));
            __m256i bhi = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(bs, 1));
            /* rows 0, 1 in the halves of m01, rows 2, 3 of m23: four partials each */
            __m256i h = _mm256_hadd_epi32(k45_mins2(kp.mn01, blo, bhi), k45_mins2(kp.mn23, blo, bhi));
            h = _mm256_hadd_epi32(h, h); /* half 0: rows 0, 2; half 1: rows 1, 3 */
            __m128i im = _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            term = _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(kp.d, da), _mm_cvtepi32_ps(hsum4_256(is[0], is[1], is[2], is[3]))),
                              _mm_mul_ps(_mm_mul_ps(kp.dmin, da), _mm_cvtepi32_ps(im)));
        }
        acc = _mm_add_ps(acc, term);
    }
    float o[4];
    _mm_storeu_ps(o, acc);
    for (int r = 0; r < R; r++)
        *out[r] = o[r];
}

/* One weight row of a K-quant against M (1..4) input rows: the weights are unpacked once
 * per block for all of them (prefill); each (input row, weight row) pair computes exactly
 * the integers and float operations of qk_rows (d * da is the same product either way). */
INLV void qk_cols(ops_dtype t, const ops_qact_view *a, int M, const uint8_t *row, int64_t nb, size_t bb,
                  float *out[4])
{
    const __m512i m0f = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30), m10 = _mm512_set1_epi8(16);
    __m128 acc = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = row + (size_t)i * bb;
        int ar[4]; /* the input row of each lane (lanes past M repeat row 0) */
        for (int r = 0; r < 4; r++)
            ar[r] = r < M ? r : 0;
        __m256i is[4];
        __m128 da = _mm_setr_ps(a[ar[0]].d256[i], a[ar[1]].d256[i], a[ar[2]].d256[i], a[ar[3]].d256[i]), term;
        if (t == OPS_Q6_K) {
            __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
            __m512i scz = _mm512_castsi256_si512(sc16), wq[4], sw[4];
            const __m512i i0 = _mm512_set_epi64(0x0003000300030003ll, 0x0003000300030003ll, 0x0002000200020002ll,
                                                0x0002000200020002ll, 0x0001000100010001ll, 0x0001000100010001ll, 0, 0);
            for (int h = 0; h < 2; h++) { /* as q6k_block */
                __m512i v = _mm512_loadu_si512((const void *)(b + 64 * h));
                __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)));
                wq[2 * h] = _mm512_or_si512(_mm512_and_si512(v, m0f), _mm512_and_si512(_mm512_sllv_epi16(hb, idx16(4, 2)), m30));
                wq[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), m0f),
                                                _mm512_and_si512(_mm512_srlv_epi16(hb, idx16(0, 2)), m30));
                __m512i g0 = _mm512_add_epi16(i0, _mm512_set1_epi16((short)(8 * h)));
                sw[2 * h] = _mm512_permutexvar_epi16(g0, scz);
                sw[2 * h + 1] = _mm512_permutexvar_epi16(_mm512_add_epi16(g0, _mm512_set1_epi16(4)), scz);
            }
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                if (r >= M) {
                    is[r] = _mm256_setzero_si256();
                    continue;
                }
                const int8_t *xq = a[r].q256 + 256 * i;
                __m512i s = _mm512_setzero_si512();
                for (int g = 0; g < 4; g++)
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wq[g], _mm512_loadu_si512((const void *)(xq + 64 * g))), sw[g]);
                __m256i bs = _mm256_loadu_si256((const __m256i *)(a[r].bs16 + 16 * i));
                __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
                is[r] = fold512(_mm512_sub_epi32(s, _mm512_zextsi256_si512(corr)));
            }
            __m128 dw = _mm_cvtph_ps(_mm_set1_epi16((short)rd16(b + 208)));
            term = _mm_mul_ps(_mm_mul_ps(dw, da), _mm_cvtepi32_ps(hsum4_256(is[0], is[1], is[2], is[3])));
        } else {
            const uint8_t *bq[4] = {b, b, b, b};
            k45_prep kp;
            k45_prepare(bq, &kp);
            __m512i scz = _mm512_castsi256_si512(kp.sc01), wa[2], wb[2], swa[2], swb[2];
            const uint8_t *qs = t == OPS_Q5_K ? b + 48 : b + 16;
            __m512i hb = _mm512_setzero_si512();
            if (t == OPS_Q5_K)
                hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
            for (int p = 0; p < 2; p++) { /* as q45k_block */
                __m512i v = _mm512_loadu_si512((const void *)(qs + 64 * p));
                wa[p] = _mm512_and_si512(v, m0f);
                wb[p] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m0f);
                if (t == OPS_Q5_K) {
                    __m512i ha = p == 0 ? _mm512_sllv_epi16(hb, idx16(4, 2)) : _mm512_srlv_epi16(hb, idx16(0, 2));
                    __m512i hbb = p == 0 ? _mm512_sllv_epi16(hb, idx16(3, 1)) : _mm512_srlv_epi16(hb, idx16(1, 3));
                    wa[p] = _mm512_or_si512(wa[p], _mm512_and_si512(ha, m10));
                    wb[p] = _mm512_or_si512(wb[p], _mm512_and_si512(hbb, m10));
                }
                swa[p] = _mm512_permutexvar_epi16(idx16(4 * p, 4 * p + 2), scz);
                swb[p] = _mm512_permutexvar_epi16(idx16(4 * p + 1, 4 * p + 3), scz);
            }
            __m128i mnw = _mm256_castsi256_si128(kp.mn01); /* the row's 8 mins */
            __m256i m16 = _mm256_set_m128i(_mm_unpackhi_epi16(mnw, mnw), _mm_unpacklo_epi16(mnw, mnw));
            __m256i im[4];
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                if (r >= M) {
                    is[r] = im[r] = _mm256_setzero_si256();
                    continue;
                }
                const int8_t *xq = a[r].q256 + 256 * i;
                __m512i s = _mm512_setzero_si512();
                for (int p = 0; p < 2; p++) {
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wa[p], cat256(xq + 128 * p, xq + 128 * p + 64)), swa[p]);
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wb[p], cat256(xq + 128 * p + 32, xq + 128 * p + 96)), swb[p]);
                }
                is[r] = fold512(s);
                im[r] = _mm256_madd_epi16(m16, _mm256_loadu_si256((const __m256i *)(a[r].bs16 + 16 * i)));
            }
            __m128 d = _mm_set1_ps(_mm_cvtss_f32(kp.d)), dmin = _mm_set1_ps(_mm_cvtss_f32(kp.dmin));
            term = _mm_sub_ps(_mm_mul_ps(_mm_mul_ps(d, da), _mm_cvtepi32_ps(hsum4_256(is[0], is[1], is[2], is[3]))),
                              _mm_mul_ps(_mm_mul_ps(dmin, da), _mm_cvtepi32_ps(hsum4_256(im[0], im[1], im[2], im[3]))));
        }
        acc = _mm_add_ps(acc, term);
    }
    float o[4];
    _mm_storeu_ps(o, acc);
    for (int r = 0; r < M; r++)
        *out[r] = o[r];
}

/* Prefill: weight rows [n0, n1) against m input rows, four input rows per pass over each
 * weight row. */
INLV void qact_gemm(ops_dtype t, float *out, int64_t ldo, const void *const *qrows, int64_t m, const uint8_t *w,
                    int64_t k, int64_t n0, int64_t n1)
{
    size_t bb = ops_dtype_block_bytes(t), rb = ops_row_bytes(t, k);
    int64_t nb = k / ops_dtype_block_elems(t);
    for (int64_t n = n0; n < n1; n++)
        for (int64_t r0 = 0; r0 < m; r0 += 4) {
            int M = m - r0 < 4 ? (int)(m - r0) : 4;
            ops_qact_view a[4];
            float *o[4];
            for (int r = 0; r < 4; r++) {
                int64_t rr = r0 + (r < M ? r : 0);
                a[r] = ops_qact_at(qrows[rr], k);
                o[r] = out + rr * ldo + n;
            }
            if (t == OPS_Q8_0 || t == OPS_Q4_0 || t == OPS_Q5_0)
                q32_cols(t, a, M, w + (size_t)n * rb, nb, bb, o);
            else
                qk_cols(t, a, M, w + (size_t)n * rb, nb, bb, o);
        }
}

INLV void qact_gemv(ops_dtype t, float *out, const void *qrow, const uint8_t *w, int64_t k, int64_t n0,
                    int64_t n1)
{
    ops_qact_view a = ops_qact_at(qrow, k);
    size_t bb = ops_dtype_block_bytes(t), rb = ops_row_bytes(t, k);
    int64_t nb = k / ops_dtype_block_elems(t);
    if (t == OPS_Q8_0 || t == OPS_Q4_0 || t == OPS_Q5_0) { /* rows n and n + half together */
        int64_t half = (n1 - n0) / 2;
        for (int64_t n = n0; n < n0 + half; n++) {
            const uint8_t *rw[2] = {w + (size_t)n * rb, w + (size_t)(n + half) * rb};
            float *o[2] = {&out[n], &out[n + half]};
            q32_rows(t, &a, rw, 2, nb, bb, o);
        }
        if ((n1 - n0) % 2) {
            const uint8_t *rw[2] = {w + (size_t)(n1 - 1) * rb, w + (size_t)(n1 - 1) * rb};
            float *o[2] = {&out[n1 - 1], &out[n1 - 1]};
            q32_rows(t, &a, rw, 1, nb, bb, o);
        }
        return;
    }
    /* four rows n, n + q, n + 2q, n + 3q stream together (as the exact GEMV), then pairs,
     * then a last row */
    for (int R = 4; R >= 1; R /= 2) {
        int64_t q = (n1 - n0) / R;
        for (int64_t n = n0; n < n0 + q; n++) {
            const uint8_t *rw[4];
            float *o[4];
            for (int r = 0; r < 4; r++) {
                int64_t row = n + (r < R ? r : 0) * q;
                rw[r] = w + (size_t)row * rb;
                o[r] = &out[row];
            }
            if (R == 4)
                qk_rows(t, &a, rw, 4, nb, bb, o);
            else if (R == 2)
                qk_rows(t, &a, rw, 2, nb, bb, o);
            else
                qk_rows(t, &a, rw, 1, nb, bb, o);
        }
        n0 += R * q;
    }
}

#define QACT_KERNEL(T, name)                                                                           \
    VNNI static void qact_gemv_##name(float *out, const void *qrow, const uint8_t *w, int64_t k, int64_t n0, \
                                      int64_t n1)                                                      \
    {                                                                                                  \
        qact_gemv(T, out, qrow, w, k, n0, n1);                                                         \
    }
#define QACT_GEMM(T, name)                                                                             \
    VNNI static void qact_gemm_##name(float *out, int64_t ldo, const void *const *qrows, int64_t m,    \
                                      const uint8_t *w, int64_t k, int64_t n0, int64_t n1)             \
    {                                                                                                  \
        qact_gemm(T, out, ldo, qrows, m, w, k, n0, n1);                                                \
    }
QACT_GEMM(OPS_Q4_0, q4_0)
QACT_GEMM(OPS_Q5_0, q5_0)
QACT_GEMM(OPS_Q8_0, q8_0)
QACT_GEMM(OPS_Q4_K, q4_k)
QACT_GEMM(OPS_Q5_K, q5_k)
QACT_GEMM(OPS_Q6_K, q6_k)
QACT_KERNEL(OPS_Q4_0, q4_0)
QACT_KERNEL(OPS_Q5_0, q5_0)
QACT_KERNEL(OPS_Q8_0, q8_0)
QACT_KERNEL(OPS_Q4_K, q4_k)
QACT_KERNEL(OPS_Q5_K, q5_k)
QACT_KERNEL(OPS_Q6_K, q6_k)

VNNI void ops_avx512_qact_gemv(float *out, const void *qrow, const uint8_t *w, ops_dtype t, int64_t k,
                               int64_t n0, int64_t n1)
{
    switch (t) {
    case OPS_Q4_0: qact_gemv_q4_0(out, qrow, w, k, n0, n1); break;
    case OPS_Q5_0: qact_gemv_q5_0(out, qrow, w, k, n0, n1); break;
    case OPS_Q8_0: qact_gemv_q8_0(out, qrow, w, k, n0, n1); break;
    case OPS_Q4_K: qact_gemv_q4_k(out, qrow, w, k, n0, n1); break;
    case OPS_Q5_K: qact_gemv_q5_k(out, qrow, w, k, n0, n1); break;
    case OPS_Q6_K: qact_gemv_q6_k(out, qrow, w, k, n0, n1); break;
    default: break;
    }
}

VNNI bool ops_avx512_qact_gemm(float *out, int64_t ldo, const void *const *qrows, int64_t m, const uint8_t *w,
                               ops_dtype t, int64_t k, int64_t n0, int64_t n1)
{
    switch (t) {
    case OPS_Q4_0: qact_gemm_q4_0(out, ldo, qrows, m, w, k, n0, n1); return true;
    case OPS_Q5_0: qact_gemm_q5_0(out, ldo, qrows, m, w, k, n0, n1); return true;
    case OPS_Q8_0: qact_gemm_q8_0(out, ldo, qrows, m, w, k, n0, n1); return true;
    case OPS_Q4_K: qact_gemm_q4_k(out, ldo, qrows, m, w, k, n0, n1); return true;
    case OPS_Q5_K: qact_gemm_q5_k(out, ldo, qrows, m, w, k, n0, n1); return true;
    case OPS_Q6_K: qact_gemm_q6_k(out, ldo, qrows, m, w, k, n0, n1); return true;
    default: return false;
    }
}
