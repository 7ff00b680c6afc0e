/* Internal to ops/: the AVX2 kernel family (ops_avx2.c) behind the dispatch in ops.c.
 * Each function computes exactly what its scalar twin in ops.c computes, bit for bit. */
#ifndef MOERT_OPS_IMPL_H
#define MOERT_OPS_IMPL_H

#include "ops.h"

float ops_avx2_dot(const float *a, const void *b, ops_dtype bt, int64_t k);
void ops_avx2_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                     const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1, float *panel);
void ops_avx2_attention_head(float *out, const float *q, const float *k_cache,
                             const float *v_cache, int64_t kv_stride, int64_t pos, int64_t hd,
                             float scale, float *scores);
void ops_avx2_weighted_sum(float *out, const float *const *rows, const float *w, int64_t n_rows,
                           int64_t n);
uint64_t ops_avx2_touch_read(const void *p, size_t bytes);
void ops_avx2_to_f32(float *dst, const void *src, ops_dtype t, int64_t n);

/* The canonical 8-lane combine, shared by both families. */
static inline float ops_lanes_sum(const float l[8])
{
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    float b0 = a0 + a2, b1 = a1 + a3;
    return b0 + b1;
}

#endif
