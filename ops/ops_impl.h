/* Internal to ops/: the AVX2 kernel family (ops_avx2.c) behind the dispatch in ops.c.
 * Each function computes exactly what its scalar twin in ops.c computes, bit for bit. */
#ifndef MOERT_OPS_IMPL_H
#define MOERT_OPS_IMPL_H

#include "ops.h"

float ops_avx2_dot(const float *a, const void *b, ops_dtype bt, int64_t k);
void ops_avx2_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                     const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1, float *panel);
void ops_avx2_attention_group(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                              int64_t g, const float *k_cache, const float *v_cache,
                              int64_t kv_stride, int64_t pos, int64_t hd, float scale,
                              float *scores);
void ops_avx2_softmax(float *x, int64_t n);
void ops_avx2_swiglu(float *out, const float *gate, const float *up, int64_t n);
float ops_avx2_expf(float x);
void ops_avx2_weighted_sum(float *out, const float *const *rows, const float *w, int64_t n_rows,
                           int64_t n);
uint64_t ops_avx2_touch_read(const void *p, size_t bytes);
void ops_avx2_to_f32(float *dst, const void *src, ops_dtype t, int64_t n);

/* Block-quantized weights (ops_quant.c, ops_quant_avx2.c).  k and n are whole blocks (the
 * dispatch in ops.c refuses anything else before calling these). */
static inline bool ops_is_block(ops_dtype t)
{
    return t >= OPS_Q4_0 && t < OPS_DTYPE_COUNT;
}
/* Scalar: one block to f32, exactly gguf-py's float32 values; the canonical dot of a with
 * the dequantized row b. */
void ops_q_dequant_block(float *y, const uint8_t *blk, ops_dtype t);
float ops_q_scalar_dot(const float *a, const uint8_t *b, ops_dtype t, int64_t k);
/* AVX2 twins: the same values bit for bit. */
void ops_avx2_q_to_f32(float *dst, const uint8_t *src, ops_dtype t, int64_t n);
float ops_avx2_q_dot(const float *a, const uint8_t *b, ops_dtype t, int64_t k);
/* Decode GEMV out[n] = dot(x, w[n], k) for n in [n0, n1), the rows dequantized in
 * registers and streamed once, two rows at a time. */
void ops_avx2_q_gemv(float *out, const float *x, const uint8_t *w, ops_dtype t, int64_t k,
                     int64_t n0, int64_t n1);
/* The same GEMV with 512-bit registers (kernel level OPS_LEVEL_AVX512). */
void ops_avx512_q_gemv(float *out, const float *x, const uint8_t *w, ops_dtype t, int64_t k,
                       int64_t n0, int64_t n1);

/* quants.py Q4_K.get_scale_min: 8 six-bit scales and mins from 12 bytes.  Sub-blocks 0-3
 * keep theirs in the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take
 * their low 4 bits from bytes 8-11 (scale low nibble, min high nibble) and their top 2 bits
 * from bits 6-7 of bytes 0-3 (scales) and 4-7 (mins). */
static inline void ops_kq_scale_min(const uint8_t *s, uint8_t sc[8], uint8_t mn[8])
{
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | (s[j] >> 6) << 4);
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
}

/* act-q8: a block whose largest magnitude is below this is quantized to zeros (ops.h). */
#define OPS_QACT_TINY 0x1p-100f

/* A quantized activation row (ops_qact_row): where each array of a row of k lies. */
typedef struct ops_qact_view {
    const int8_t *q32, *q256;  /* form A / form B quants [k] */
    const float *d32, *d256;   /* scales [k / 32], [k / 256] */
    const int32_t *bs32;       /* form A block sums [k / 32] */
    const int16_t *bs16;       /* form B sums of each 16 [k / 16] */
} ops_qact_view;

static inline ops_qact_view ops_qact_at(const void *row, int64_t k)
{
    const uint8_t *p = (const uint8_t *)row; /* cast: the HIP launchers include this as C++ */
    ops_qact_view v;
    v.q32 = (const int8_t *)p;
    v.q256 = (const int8_t *)(p + k);
    v.d32 = (const float *)(p + 2 * k);
    v.bs32 = (const int32_t *)(p + 2 * k + k / 8);
    v.d256 = (const float *)(p + 2 * k + k / 4);
    v.bs16 = (const int16_t *)(p + 2 * k + k / 4 + k / 64);
    return v;
}

/* The AVX-512 VNNI twins of the act-q8 kernels (ops_qact_avx512.c): the same bits. */
bool ops_avx512_qact_available(void);
void ops_avx512_qact_row(void *dst, const float *x, int64_t k);
void ops_avx512_qact_gemv(float *out, const void *qrow, const uint8_t *w, ops_dtype t, int64_t k,
                          int64_t n0, int64_t n1);
/* Several input rows at once, the weights unpacked once per row for all of them (false,
 * nothing done, for a type it does not take). */
bool ops_avx512_qact_gemm(float *out, int64_t ldo, const void *const *qrows, int64_t m, const uint8_t *w,
                          ops_dtype t, int64_t k, int64_t n0, int64_t n1);

#define OPS_CHAINS 4
#define OPS_STEP 32 /* elements per step of the four chains */

/* The canonical 8-lane combine, shared by both families. */
static inline float ops_lanes_sum(const float l[8])
{
    float a0 = l[0] + l[4], a1 = l[1] + l[5], a2 = l[2] + l[6], a3 = l[3] + l[7];
    float b0 = a0 + a2, b1 = a1 + a3;
    return b0 + b1;
}

/* ops_expf's constants (Cephes' single-precision exp). */
#define OPS_EXP_HI 88.3762626647949f
#define OPS_EXP_LO (-87.3365478515625f)
#define OPS_LOG2E 1.44269504088896341f
#define OPS_LN2_HI 0.693359375f
#define OPS_LN2_LO (-2.12194440e-4f)
#define OPS_EXP_P0 1.9875691500e-4f
#define OPS_EXP_P1 1.3981999507e-3f
#define OPS_EXP_P2 8.3334519073e-3f
#define OPS_EXP_P3 4.1665795894e-2f
#define OPS_EXP_P4 1.6666665459e-1f
#define OPS_EXP_P5 5.0000001201e-1f

#endif
