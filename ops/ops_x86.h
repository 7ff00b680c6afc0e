/* Internal to ops/: what the x86 kernel files share, the canonical combine of the four
 * chains in AVX2 and AVX-512 registers (ops.h: ((c0+c1)+(c2+c3)) per lane, then the lane
 * tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))), and the target attributes of each level. */
#ifndef MOERT_OPS_X86_H
#define MOERT_OPS_X86_H

#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))

/* The lane tree of one 8-lane vector. */
AVX2 static inline float ops_x86_hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s)); /* (l0+l4)+(l2+l6), (l1+l5)+(l3+l7) */
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* Four chains, one per 256-bit register. */
AVX2 static inline float ops_x86_combine4(__m256 c0, __m256 c1, __m256 c2, __m256 c3)
{
    return ops_x86_hsum(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
}

/* Four chains, two per 512-bit register (chains 0 | 1 and 2 | 3). */
AVX512 static inline float ops_x86_combine_pairs(__m512 c01, __m512 c23)
{
    __m256 v01 = _mm256_add_ps(_mm512_castps512_ps256(c01), _mm512_extractf32x8_ps(c01, 1));
    __m256 v23 = _mm256_add_ps(_mm512_castps512_ps256(c23), _mm512_extractf32x8_ps(c23, 1));
    return ops_x86_hsum(_mm256_add_ps(v01, v23));
}

#endif
