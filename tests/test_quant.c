/* ops, block-quantized weights: blocks built byte by byte with hand-computed values (the
 * ggml layouts and gguf-py's float32 formulas, worked out in the comments), the SIMD ==
 * scalar and quantized == dequantized-f32 identities of every kernel, and the encoder's
 * round trip. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/ops.h"
#include "util.h"

static const ops_dtype qtypes[] = {OPS_Q4_0, OPS_Q5_0, OPS_Q8_0, OPS_Q4_K, OPS_Q5_K, OPS_Q6_K};
#define N_QTYPES (int)(sizeof qtypes / sizeof qtypes[0])

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_uniform(void) /* [-1, 1) */
{
    return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static bool same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}
static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ops_to_f32 of one block under both kernel families; true when they agree bit for bit. */
static bool dequant_both(float *y, const uint8_t *blk, ops_dtype t)
{
    int64_t n = ops_dtype_block_elems(t);
    float y2[256];
    ops_use_simd(false);
    ops_to_f32(y, blk, t, n);
    ops_use_simd(true);
    ops_to_f32(y2, blk, t, n);
    return same_bits(y, y2, n);
}

/* A dot with a one-hot x picks out one weight exactly (every other product is +-0). */
static float pick(const uint8_t *blk, ops_dtype t, int e)
{
    float x[256] = {0};
    x[e] = 1.0f;
    return ops_dot(x, blk, t, ops_dtype_block_elems(t));
}

static void test_hand_q8_0(void)
{
    /* y = q * d.  Block 0: d = f16 0x3800 = 0.5; block 1: d = 0xc000 = -2 */
    uint8_t b[68] = {0};
    put16(b, 0x3800);
    const int8_t q[6] = {0, 1, -1, 127, -128, 5};
    for (int i = 0; i < 6; i++)
        b[2 + i] = (uint8_t)q[i];
    b[2 + 31] = (uint8_t)(int8_t)-7;
    put16(b + 34, 0xc000);
    b[34 + 2 + 8] = 3; /* element 8: chain 1 */
    float y[64];
    ops_use_simd(false);
    ops_to_f32(y, b, OPS_Q8_0, 64);
    float y2[64];
    ops_use_simd(true);
    ops_to_f32(y2, b, OPS_Q8_0, 64);
    CU_ASSERT(same_bits(y, y2, 64));
    const float want[6] = {0.0f, 0.5f, -0.5f, 63.5f, -64.0f, 2.5f};
    for (int i = 0; i < 6; i++)
        CU_ASSERT_EQUAL(y[i], want[i]);
    CU_ASSERT_EQUAL(y[31], -3.5f);
    CU_ASSERT_EQUAL(y[32 + 8], -6.0f);
    CU_ASSERT_EQUAL(y[32 + 9], 0.0f);
    CU_ASSERT_EQUAL(pick(b, OPS_Q8_0, 3), 63.5f);
}

static void test_hand_q4_0(void)
{
    /* y = d * (q - 8), d = f16 0x4000 = 2; element i < 16 is the low nibble of qs[i],
     * element 16 + i its high nibble */
    uint8_t b[18] = {0};
    put16(b, 0x4000);
    b[2 + 0] = 0xf0;  /* element 0: 0 -> -16; element 16: 15 -> 14 */
    b[2 + 15] = 0x89; /* element 15: 9 -> 2; element 31: 8 -> 0 */
    b[2 + 9] = 0x3c;  /* element 9: 12 -> 8; element 25: 3 -> -10 */
    float y[32];
    CU_ASSERT(dequant_both(y, b, OPS_Q4_0));
    CU_ASSERT_EQUAL(y[0], -16.0f);
    CU_ASSERT_EQUAL(y[16], 14.0f);
    CU_ASSERT_EQUAL(y[15], 2.0f);
    CU_ASSERT_EQUAL(y[31], 0.0f);
    CU_ASSERT_EQUAL(y[9], 8.0f);
    CU_ASSERT_EQUAL(y[25], -10.0f);
    CU_ASSERT_EQUAL(y[1], -16.0f); /* q = 0 */
    CU_ASSERT_EQUAL(pick(b, OPS_Q4_0, 25), -10.0f);
}

static void test_hand_q5_0(void)
{
    /* y = d * ((ql | hb << 4) - 16), d = 1; hb of element i is bit i of the little-endian
     * u32 qh.  Bits 0, 8, 17, 24, 31 set: one in each chain, the top bit included. */
    uint8_t b[22] = {0};
    put16(b, 0x3c00);
    uint32_t qh = 1u << 0 | 1u << 8 | 1u << 17 | 1u << 24 | 1u << 31;
    for (int i = 0; i < 4; i++)
        b[2 + i] = (uint8_t)(qh >> (8 * i));
    uint8_t *qs = b + 6;
    qs[0] = 0x3a;  /* element 0: 10 | 16 -> 10; element 16: 3 -> -13 */
    qs[1] = 0x50;  /* element 1: 0 -> -16; element 17: 5 | 16 -> 5 */
    qs[15] = 0x7f; /* element 15: 15 -> -1; element 31: 7 | 16 -> 7 */
    float y[32];
    CU_ASSERT(dequant_both(y, b, OPS_Q5_0));
    CU_ASSERT_EQUAL(y[0], 10.0f);
    CU_ASSERT_EQUAL(y[16], -13.0f);
    CU_ASSERT_EQUAL(y[1], -16.0f);
    CU_ASSERT_EQUAL(y[17], 5.0f);
    CU_ASSERT_EQUAL(y[15], -1.0f);
    CU_ASSERT_EQUAL(y[31], 7.0f);
    CU_ASSERT_EQUAL(y[8], 0.0f);  /* 0 | 16 */
    CU_ASSERT_EQUAL(y[24], 0.0f); /* 0 | 16 */
    CU_ASSERT_EQUAL(y[9], -16.0f);
    CU_ASSERT_EQUAL(pick(b, OPS_Q5_0, 17), 5.0f);
}

/* The 12-byte K-quant scale packing, written out by hand for
 *   sc = {1, 2, 63, 4, 5, 6, 40, 63}, m = {0, 3, 1, 63, 2, 33, 0, 48}:
 * bytes 0-3 = sc[j] | (sc[j+4] >> 4) << 6  -> 0x01 0x02 0xbf 0xc4  (40 >> 4 = 2, 63 >> 4 = 3)
 * bytes 4-7 = m[j] | (m[j+4] >> 4) << 6    -> 0x00 0x83 0x01 0xff  (33 >> 4 = 2, 48 >> 4 = 3)
 * bytes 8-11 = (sc[j+4] & 15) | (m[j+4] & 15) << 4 -> 0x25 0x16 0x08 0x0f */
static const uint8_t kq_scales[12] = {0x01, 0x02, 0xbf, 0xc4, 0x00, 0x83,
                                      0x01, 0xff, 0x25, 0x16, 0x08, 0x0f};

static void test_hand_q4_k(void)
{
    /* y = (d * sc[s]) * q - (dmin * m[s]) for sub-block s = e / 32; d = 1, dmin = 0.5.
     * Sub-blocks 2g and 2g + 1 are the low and high nibbles of qs[32g .. 32g + 31]. */
    uint8_t b[288] = {0};
    put16(b, 0x3c00);
    put16(b + 2, 0x3800);
    memcpy(b + 4, kq_scales, 12);
    uint8_t *qs = b + 16;
    qs[0] = 0xf3;      /* e 0: 1*3 - 0 = 3;          e 32: 2*15 - 1.5 = 28.5 */
    qs[32 + 5] = 0x7a; /* e 69: 63*10 - 0.5 = 629.5; e 101: 4*7 - 31.5 = -3.5 */
    qs[64 + 31] = 0x0c; /* e 159: 5*12 - 1 = 59;     e 191: 6*0 - 16.5 = -16.5 */
    qs[96] = 0x91;     /* e 192: 40*1 - 0 = 40;      e 224: 63*9 - 24 = 543 */
    /* block 1: the one rounding a K-quant weight can see is the final subtract: d = 1,
     * dmin = f16 0x0001 = 2^-24 (subnormal), sc[0] = m[0] = 1: 15 - 2^-24 rounds to 15 */
    uint8_t *b1 = b + 144;
    put16(b1, 0x3c00);
    put16(b1 + 2, 0x0001);
    b1[4] = 1;
    b1[8] = 1;
    b1[16] = 0x0f;
    float y[512];
    CU_ASSERT(dequant_both(y, b, OPS_Q4_K));
    CU_ASSERT(dequant_both(y + 256, b1, OPS_Q4_K));
    CU_ASSERT_EQUAL(y[0], 3.0f);
    CU_ASSERT_EQUAL(y[32], 28.5f);
    CU_ASSERT_EQUAL(y[69], 629.5f);
    CU_ASSERT_EQUAL(y[101], -3.5f);
    CU_ASSERT_EQUAL(y[159], 59.0f);
    CU_ASSERT_EQUAL(y[191], -16.5f);
    CU_ASSERT_EQUAL(y[192], 40.0f);
    CU_ASSERT_EQUAL(y[224], 543.0f);
    CU_ASSERT_EQUAL(y[1], 0.0f);    /* q = 0, m = 0 */
    CU_ASSERT_EQUAL(y[33], -1.5f);  /* q = 0: -(0.5 * 3) */
    CU_ASSERT_EQUAL(y[100], -31.5f); /* q = 0: -(0.5 * 63) */
    CU_ASSERT_EQUAL(y[255], -24.0f);
    CU_ASSERT_EQUAL(y[256], 15.0f);
    CU_ASSERT_EQUAL(y[257], -ldexpf(1.0f, -24));
    CU_ASSERT_EQUAL(pick(b, OPS_Q4_K, 224), 543.0f);
}

static void test_hand_q5_k(void)
{
    /* Q4_K's formula with q = ql | hb << 4, hb of element 32s + e = bit s of qh[e].
     * d = dmin = 1; sc = {1 x 7, 3}, m = {0 x 7, 17}: bytes 0-3 = 1, bytes 4-7 = 0 except
     * byte 7 = 0 | (17 >> 4) << 6 = 0x40, bytes 8-11 = 1, 1, 1, 3 | (17 & 15) << 4 = 0x13. */
    uint8_t b[176] = {0};
    put16(b, 0x3c00);
    put16(b + 2, 0x3c00);
    const uint8_t sc12[12] = {1, 1, 1, 1, 0, 0, 0, 0x40, 1, 1, 1, 0x13};
    memcpy(b + 4, sc12, 12);
    uint8_t *qh = b + 16, *qs = b + 48;
    qh[0] = 0x81;  /* hb of e 0 (s 0) and e 224 (s 7) */
    qh[31] = 0x10; /* hb of e 159 (s 4) */
    qs[0] = 0x52;  /* e 0: 2 | 16 = 18;   e 32: 5 (bit 1 of qh[0] clear) */
    qs[96] = 0xa0; /* e 192: 0;           e 224: 10 | 16 = 26 -> 3*26 - 17 = 61 */
    qs[95] = 0x0e; /* e 159: 14 | 16 = 30; e 191: 0 */
    float y[256];
    CU_ASSERT(dequant_both(y, b, OPS_Q5_K));
    CU_ASSERT_EQUAL(y[0], 18.0f);
    CU_ASSERT_EQUAL(y[32], 5.0f);
    CU_ASSERT_EQUAL(y[192], 0.0f);
    CU_ASSERT_EQUAL(y[224], 61.0f);
    CU_ASSERT_EQUAL(y[225], -17.0f);
    CU_ASSERT_EQUAL(y[159], 30.0f);
    CU_ASSERT_EQUAL(y[191], 0.0f);
    CU_ASSERT_EQUAL(pick(b, OPS_Q5_K, 224), 61.0f);
    /* the packed scales of sub-blocks 4-7 in Q5_K too: kq_scales with d = 1, dmin = 0.5 */
    memset(b, 0, sizeof b);
    put16(b, 0x3c00);
    put16(b + 2, 0x3800);
    memcpy(b + 4, kq_scales, 12);
    qh[7] = 0x80;  /* e 224 + 7 gets hb */
    qs[96 + 7] = 0x30; /* e 231: 3 | 16 = 19 -> 63*19 - 24 = 1173; e 199: 0 -> 40*0 - 0 */
    qs[64 + 2] = 0x01; /* e 130: 5*1 - 1 = 4; e 162: 6*0 - 16.5 */
    CU_ASSERT(dequant_both(y, b, OPS_Q5_K));
    CU_ASSERT_EQUAL(y[231], 1173.0f);
    CU_ASSERT_EQUAL(y[199], 0.0f);
    CU_ASSERT_EQUAL(y[130], 4.0f);
    CU_ASSERT_EQUAL(y[162], -16.5f);
    CU_ASSERT_EQUAL(y[96], -31.5f);
}

static void test_hand_q6_k(void)
{
    /* y = (d * sc[e / 16]) * (q - 32), q = lo | hi << 4, d = 0.5, int8 scales.  For e in
     * half h (e / 128) with r = e % 128, t = r / 32, l = r % 32: lo is nibble t / 2 of
     * ql[64h + 32(t % 2) + l], hi is bits 2t..2t+1 of qh[32h + l]. */
    uint8_t b[210] = {0};
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    put16(b + 208, 0x3800);
    for (int j = 0; j < 16; j++)
        sc[j] = 1;
    sc[0] = 2;
    sc[1] = -3;
    sc[2] = 127;
    sc[3] = -128;
    sc[4] = -1;
    sc[8] = 7;
    sc[15] = 100;
    ql[0] = 0x5f;
    qh[0] = 3 | 1 << 2 | 2 << 4 | 3 << 6; /* t0 = 3, t1 = 1, t2 = 2, t3 = 3 */
    ql[32] = 0x08;
    ql[48] = 0x01;
    ql[64] = 0x03;
    qh[32] = 0x02;
    ql[127] = 0xc0;
    qh[63] = 0x40;
    float y[256];
    CU_ASSERT(dequant_both(y, b, OPS_Q6_K));
    CU_ASSERT_EQUAL(y[0], 31.0f);    /* 15 | 3 << 4 = 63 -> 31; 0.5 * 2 * 31 */
    CU_ASSERT_EQUAL(y[32], -508.0f); /* 8 | 1 << 4 = 24 -> -8; 0.5 * 127 * -8 */
    CU_ASSERT_EQUAL(y[64], -2.5f);   /* 5 | 2 << 4 = 37 -> 5; 0.5 * -1 * 5 */
    CU_ASSERT_EQUAL(y[96], 8.0f);    /* 0 | 3 << 4 = 48 -> 16; 0.5 * 1 * 16 */
    CU_ASSERT_EQUAL(y[16], 48.0f);   /* 0 -> -32; 0.5 * -3 * -32 */
    CU_ASSERT_EQUAL(y[48], 1984.0f); /* 1 -> -31; 0.5 * -128 * -31 */
    CU_ASSERT_EQUAL(y[128], 10.5f);  /* 3 | 2 << 4 = 35 -> 3; 0.5 * 7 * 3 */
    CU_ASSERT_EQUAL(y[255], -200.0f); /* 12 | 1 << 4 = 28 -> -4; 0.5 * 100 * -4 */
    CU_ASSERT_EQUAL(y[200], -16.0f); /* zeros: 0.5 * 1 * -32 */
    CU_ASSERT_EQUAL(pick(b, OPS_Q6_K, 48), 1984.0f);
}

/* Random blocks over every byte pattern, with the f16 scales kept in [2^-10, 2^-2) in
 * magnitude (any sign) so sums stay finite; one block in four encoded from real data. */
static void random_row(uint8_t *w, ops_dtype t, int64_t k)
{
    size_t bb = ops_dtype_block_bytes(t);
    int64_t be = ops_dtype_block_elems(t), nb = k / be;
    for (size_t i = 0; i < (size_t)nb * bb; i++)
        w[i] = (uint8_t)rng_next();
    for (int64_t i = 0; i < nb; i++) {
        uint8_t *b = w + (size_t)i * bb;
        if (rng_next() % 4 == 0) {
            float x[256];
            for (int e = 0; e < be; e++)
                x[e] = rng_uniform();
            ops_quantize_row(b, x, t, be);
            continue;
        }
        int off[2] = {0, 2}, nf = t == OPS_Q4_K || t == OPS_Q5_K ? 2 : 1;
        if (t == OPS_Q6_K)
            off[0] = 208;
        for (int f = 0; f < nf; f++) {
            uint16_t h = (uint16_t)(rng_next() & 0x83ff);
            h |= (uint16_t)((5 + rng_next() % 8) << 10);
            put16(b + off[f], h);
        }
    }
}

static float *alloc_panel(int64_t k)
{
    return aligned_alloc(64, (ops_matmul_panel_floats(k) * sizeof(float) + 63) / 64 * 64);
}

static void test_simd_equals_scalar_q(void)
{
    if (!ops_simd_available()) {
        TEST_SKIP("no AVX2/FMA/F16C on this CPU");
        ops_use_simd(false);
        return;
    }
    enum { N = 11, M = 5 };
    const int64_t ks[4] = {256, 512, 768, 2048};
    const int64_t ranges[4][2] = {{0, N}, {3, 4}, {1, 10}, {2, 7}};
    bool ok_f32 = true, ok_dot = true, ok_m1 = true, ok_m5 = true;
    for (int ti = 0; ti < N_QTYPES; ti++)
        for (int ki = 0; ki < 4; ki++) {
            ops_dtype t = qtypes[ti];
            int64_t k = ks[ki];
            size_t rb = ops_row_bytes(t, k);
            uint8_t *w = malloc(rb * N);
            /* x rows one float past an aligned start: no alignment is assumed */
            float *xb = malloc(sizeof(float) * (size_t)(M * k + 1)), *x = xb + 1;
            float *d1 = malloc(sizeof(float) * (size_t)k), *d2 = malloc(sizeof(float) * (size_t)k);
            float *panel = alloc_panel(k);
            for (int n = 0; n < N; n++)
                random_row(w + (size_t)n * rb, t, k);
            for (int64_t i = 0; i < M * k; i++)
                x[i] = rng_uniform();
            const float *rows[M];
            for (int r = 0; r < M; r++)
                rows[r] = x + r * k;
            for (int n = 0; n < N; n++) {
                const uint8_t *wr = w + (size_t)n * rb;
                ops_use_simd(false);
                ops_to_f32(d1, wr, t, k);
                float s = ops_dot(x, wr, t, k);
                ops_use_simd(true);
                ops_to_f32(d2, wr, t, k);
                ok_f32 = ok_f32 && same_bits(d1, d2, k);
                float v = ops_dot(x, wr, t, k);
                ok_dot = ok_dot && memcmp(&s, &v, sizeof s) == 0;
            }
            for (int ri = 0; ri < 4; ri++) {
                int64_t n0 = ranges[ri][0], n1 = ranges[ri][1];
                float o1[M * N], o2[M * N], o3[M * N];
                for (int i = 0; i < M * N; i++)
                    o1[i] = o2[i] = o3[i] = -1.0f;
                ops_use_simd(false);
                ops_matmul(o1, N, rows, 1, w, t, k, n0, n1, panel);
                ops_use_simd(true);
                ops_matmul(o2, N, rows, 1, w, t, k, n0, n1, panel);
                ops_matmul(o3, N, rows, 1, w, t, k, n0, n1, NULL);
                ok_m1 = ok_m1 && same_bits(o1, o2, N) && same_bits(o1, o3, N);
                ops_use_simd(false);
                ops_matmul(o1, N, rows, M, w, t, k, n0, n1, panel);
                ops_use_simd(true);
                ops_matmul(o2, N, rows, M, w, t, k, n0, n1, panel);
                ops_matmul(o3, N, rows, M, w, t, k, n0, n1, NULL);
                ok_m5 = ok_m5 && same_bits(o1, o2, M * N) && same_bits(o1, o3, M * N);
            }
            free(w);
            free(xb);
            free(d1);
            free(d2);
            free(panel);
        }
    CU_ASSERT(ok_f32);
    CU_ASSERT(ok_dot);
    CU_ASSERT(ok_m1);
    CU_ASSERT(ok_m5);
}

/* The AVX-512 level (two chains per 512-bit register: the decode GEMV of block types and
 * the prefill panel tile of every type) equals the scalar and the AVX2 kernels bit for
 * bit: every type, decode (m = 1) and prefill (m = 6: a 4-row tile and a remainder), panels
 * of 16 rows (all tiles) and of 13 (a remainder), odd ranges, k with a tail, unaligned x. */
static void test_avx512_levels(void)
{
    if (ops_level_available() < OPS_LEVEL_AVX512) {
        TEST_SKIP("no AVX-512 (F, BW, VL, DQ) on this CPU: the AVX-512 level is not exercised");
        return;
    }
    enum { NMAX = 16, M = 6 };
    const ops_dtype types[] = {OPS_Q4_0, OPS_Q5_0, OPS_Q8_0, OPS_Q4_K, OPS_Q5_K, OPS_Q6_K, OPS_F32, OPS_BF16, OPS_F16};
    const int64_t ks[4] = {256, 768, 4096, 100};
    const int64_t ranges[4][2] = {{0, 16}, {0, 13}, {5, 6}, {2, 11}};
    bool ok = true;
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
        for (int ki = 0; ki < 4; ki++) {
            ops_dtype t = types[ti];
            int64_t k = ks[ki];
            size_t rb = ops_row_bytes(t, k);
            if (!rb)
                continue; /* k = 100 only for the plain types */
            uint8_t *w = malloc(rb * NMAX);
            float *xb = malloc(sizeof(float) * (size_t)(M * k + 1)), *x = xb + 1;
            float *panel = alloc_panel(k);
            if (ops_dtype_block_elems(t) > 1)
                for (int n = 0; n < NMAX; n++)
                    random_row(w + (size_t)n * rb, t, k);
            else
                for (size_t i = 0; i < rb * NMAX; i += 2) {
                    uint16_t h = (uint16_t)((rng_next() & 0x83ff) | ((uint32_t)(5 + rng_next() % 8) << 10));
                    if (t == OPS_BF16)
                        h = (uint16_t)(((uint32_t)h & 0x807f) | 0x3c00u);
                    put16(w + i, h);
                }
            for (int64_t i = 0; i < M * k; i++)
                x[i] = rng_uniform();
            const float *rows[M];
            for (int r = 0; r < M; r++)
                rows[r] = x + r * k;
            for (int ri = 0; ri < 4; ri++)
                for (int m = 1; m <= M; m += M - 1) {
                    float o[3][M * NMAX];
                    const ops_level lv[3] = {OPS_LEVEL_SCALAR, OPS_LEVEL_AVX2, OPS_LEVEL_AVX512};
                    for (int l = 0; l < 3; l++) {
                        for (int i = 0; i < M * NMAX; i++)
                            o[l][i] = -1.0f;
                        ops_set_level(lv[l]);
                        CU_ASSERT_EQUAL(ops_level_current(), lv[l]);
                        ops_matmul(o[l], NMAX, rows, m, w, t, k, ranges[ri][0], ranges[ri][1], panel);
                    }
                    bool same = same_bits(o[0], o[1], M * NMAX) && same_bits(o[0], o[2], M * NMAX);
                    if (!same)
                        printf("\n    %s k %lld m %d rows [%lld, %lld): levels differ\n", ops_dtype_name(t),
                               (long long)k, m, (long long)ranges[ri][0], (long long)ranges[ri][1]);
                    ok = ok && same;
                }
            free(w);
            free(xb);
            free(panel);
        }
    ops_use_simd(true);
    CU_ASSERT(ok);
}

/* A quantized matmul is, bit for bit, the f32 matmul of its exactly dequantized weights,
 * for the decode GEMV (m = 1, rows paired and an odd one alone), the small batches and
 * the panel tiles (m = 2, 5, 13), in both families; and a row's result does not depend on
 * the batch it runs in. */
static void test_quant_equals_dequant(void)
{
    enum { N = 9, M = 13, K = 512 };
    const int ms[4] = {1, 2, 5, 13};
    bool ok = true, ok_batch = true;
    float *x = malloc(sizeof(float) * M * K), *wf = malloc(sizeof(float) * N * K);
    float *panel = alloc_panel(K);
    for (int i = 0; i < M * K; i++)
        x[i] = rng_uniform();
    const float *rows[M];
    for (int r = 0; r < M; r++)
        rows[r] = x + r * K;
    for (int ti = 0; ti < N_QTYPES; ti++) {
        ops_dtype t = qtypes[ti];
        size_t rb = ops_row_bytes(t, K);
        uint8_t *w = malloc(rb * N);
        for (int n = 0; n < N; n++)
            random_row(w + (size_t)n * rb, t, K);
        ops_to_f32(wf, w, t, (int64_t)N * K); /* rows are whole blocks: one call */
        for (int simd = 0; simd < 2; simd++) {
            if (simd && !ops_simd_available())
                break;
            ops_use_simd(simd);
            for (int mi = 0; mi < 4; mi++) {
                float oq[M * N], of[M * N];
                ops_matmul(oq, N, rows, ms[mi], w, t, K, 0, N, panel);
                ops_matmul(of, N, rows, ms[mi], wf, OPS_F32, K, 0, N, panel);
                ok = ok && same_bits(oq, of, ms[mi] * N);
                if (mi == 3)
                    for (int r = 0; r < M; r++) {
                        float one[N];
                        ops_matmul(one, N, rows + r, 1, w, t, K, 0, N, panel);
                        ok_batch = ok_batch && same_bits(one, oq + r * N, N);
                    }
            }
        }
        ops_use_simd(true);
        free(w);
    }
    CU_ASSERT(ok);
    CU_ASSERT(ok_batch);
    free(x);
    free(wf);
    free(panel);
}

/* Cancellation exposes the order: 1e8 at k = 0 and -1e8 at k = 32 share chain 0 lane 0
 * (so cancel first), the 1 at k = 1 survives: the canonical value is 1 where a
 * left-to-right sum gives 0.  Q8_0 weights all 1 (d = 1, q = 1), rows paired and alone. */
static void test_quant_order(void)
{
    enum { K = 64, N = 3 };
    uint8_t w[N * 68];
    memset(w, 0, sizeof w);
    for (int b = 0; b < N * 2; b++) {
        put16(w + 34 * b, 0x3c00);
        memset(w + 34 * b + 2, 1, 32);
    }
    float x[K] = {0};
    x[0] = 1e8f;
    x[1] = 1.0f;
    x[32] = -1e8f;
    const float *rows[1] = {x};
    for (int simd = 0; simd < 2; simd++) {
        ops_use_simd(simd);
        float o[N];
        ops_matmul(o, N, rows, 1, w, OPS_Q8_0, K, 0, N, NULL);
        for (int n = 0; n < N; n++)
            CU_ASSERT_EQUAL(o[n], 1.0f);
        CU_ASSERT_EQUAL(ops_dot(x, w, OPS_Q8_0, K), 1.0f);
    }
    ops_use_simd(true);
}

/* Relative RMS error of one quantize -> dequantize round trip over rows of uniform data,
 * per type; re-encoding the decoded values of the 32-blocks gives the same bytes, and for
 * the K-quants a second round trip stays within the same bound. */
static void test_round_trip(void)
{
    enum { K = 2048 };
    const double bound[N_QTYPES] = {0.12, 0.06, 0.01, 0.10, 0.05, 0.03}; /* Q4_0 .. Q6_K */
    float *x = malloc(sizeof(float) * K), *y = malloc(sizeof(float) * K), *z = malloc(sizeof(float) * K);
    uint8_t *q = malloc(ops_row_bytes(OPS_Q8_0, K)), *q2 = malloc(ops_row_bytes(OPS_Q8_0, K));
    for (int ti = 0; ti < N_QTYPES; ti++) {
        ops_dtype t = qtypes[ti];
        size_t rb = ops_row_bytes(t, K);
        for (int i = 0; i < K; i++) /* varied block magnitudes, some sign-biased */
            x[i] = rng_uniform() * (float)(1 + i / 256) * 0.3f + (i / 512 == 2 ? 0.5f : 0.0f);
        CU_ASSERT_EQUAL(ops_quantize_row(q, x, t, K), rb);
        ops_to_f32(y, q, t, K);
        double se = 0, sx = 0, se2 = 0;
        for (int i = 0; i < K; i++) {
            se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]);
            sx += (double)x[i] * x[i];
        }
        CU_ASSERT(sqrt(se / sx) < bound[ti]);
        CU_ASSERT_EQUAL(ops_quantize_row(q2, y, t, K), rb);
        if (t == OPS_Q8_0 || t == OPS_Q4_0 || t == OPS_Q5_0)
            CU_ASSERT(memcmp(q, q2, rb) == 0);
        ops_to_f32(z, q2, t, K);
        for (int i = 0; i < K; i++)
            se2 += ((double)z[i] - x[i]) * ((double)z[i] - x[i]);
        CU_ASSERT(sqrt(se2 / sx) < bound[ti]);
    }
    /* all-zero input encodes to blocks that decode to zero */
    memset(x, 0, sizeof(float) * K);
    for (int ti = 0; ti < N_QTYPES; ti++) {
        ops_quantize_row(q, x, qtypes[ti], K);
        ops_to_f32(y, q, qtypes[ti], K);
        bool zero = true;
        for (int i = 0; i < K; i++)
            zero = zero && y[i] == 0.0f;
        CU_ASSERT(zero);
    }
    free(x);
    free(y);
    free(z);
    free(q);
    free(q2);
}

/* Plain types through the encoder, and everything a block type cannot do refused loudly. */
static void test_quant_edges(void)
{
    float v[2] = {1.0f / 3.0f, -2.5f};
    uint8_t b[8];
    CU_ASSERT_EQUAL(ops_quantize_row(b, v, OPS_F16, 2), 4);
    CU_ASSERT(b[0] == 0x55 && b[1] == 0x35); /* 1/3 -> f16 0x3555 */
    CU_ASSERT(b[2] == 0x00 && b[3] == 0xc1); /* -2.5 -> 0xc100 */
    CU_ASSERT_EQUAL(ops_quantize_row(b, v, OPS_BF16, 2), 4);
    CU_ASSERT(b[0] == 0xab && b[1] == 0x3e); /* 1/3 -> bf16 0x3eab */
    CU_ASSERT_EQUAL(ops_quantize_row(b, v, OPS_F32, 2), 8);
    CU_ASSERT(memcmp(b, v, 8) == 0);
    float x[256] = {0}, y[64];
    uint8_t q[300] = {0};
    CU_ASSERT_EQUAL(ops_quantize_row(q, x, OPS_Q8_0, 48), 0); /* not whole blocks */
    CU_ASSERT_EQUAL(ops_quantize_row(q, x, OPS_Q4_K, 32), 0);
    CU_ASSERT_EQUAL(ops_quantize_row(q, x, OPS_DTYPE_COUNT, 32), 0);
    for (int simd = 0; simd < 2; simd++) {
        ops_use_simd(simd && ops_simd_available());
        CU_ASSERT(isnan(ops_dot(x, q, OPS_Q8_0, 48)));
        ops_to_f32(y, q, OPS_Q8_0, 40); /* one block, then 8 elements of nothing */
        CU_ASSERT_EQUAL(y[31], 0.0f);
        CU_ASSERT(isnan(y[32]) && isnan(y[39]));
        const float *rows[1] = {x};
        float o[2];
        ops_matmul(o, 2, rows, 1, q, OPS_Q4_K, 128, 0, 2, NULL);
        CU_ASSERT(isnan(o[0]) && isnan(o[1]));
        float out[32];
        ops_rmsnorm(out, x, q, OPS_Q8_0, 32, 1e-6f);
        CU_ASSERT(isnan(out[0]) && isnan(out[31]));
    }
    ops_use_simd(true);
}

/* ---- act-q8 (ops_qact_row, ops_matmul_qact) ------------------------------------------ */

static uint8_t *qact_rows(const float *x, int64_t m, int64_t k, const void **ptrs)
{
    size_t qb = ops_qact_row_bytes(k);
    uint8_t *q = aligned_alloc(64, qb * (size_t)m);
    for (int64_t r = 0; r < m; r++) {
        ops_qact_row(q + (size_t)r * qb, x + r * k, k);
        ptrs[r] = q + (size_t)r * qb;
    }
    return q;
}

/* Hand-computed: a Q8_0 weight block with d = 1 and a one-hot quant picks out one
 * quantized activation, q * (amax / 127); and a block with NaN, and one below 2^-100. */
static void test_qact_hand(void)
{
    uint8_t w[4][34] = {{0}};
    for (int r = 0; r < 4; r++)
        put16(w[r], 0x3c00); /* 1.0 */
    w[0][2 + 1] = 1;  /* element 1 */
    w[1][2 + 2] = 1;  /* element 2 */
    w[2][2 + 5] = 2;  /* 2 x element 5 */
    w[3][2 + 0] = (uint8_t)-1;
    float x[3][32] = {{0}};
    x[0][0] = 1.0f;   /* amax: q = 127, d = 1 / 127 */
    x[0][1] = -0.5f;  /* -63.5: a tie, to even -64 */
    x[0][2] = 0.25f;  /* 31.75 -> 32 */
    x[0][5] = 0.75f;  /* 95.25 -> 95 */
    x[1][3] = NAN;
    x[1][0] = 1.0f;
    for (int i = 0; i < 32; i++)
        x[2][i] = 1e-31f;
    const float da = 1.0f / 127.0f;
    for (int lvl = 0; lvl < 2; lvl++) {
        ops_set_level(lvl ? OPS_LEVEL_AVX512 : OPS_LEVEL_SCALAR);
        const void *q[3];
        uint8_t *buf = qact_rows(&x[0][0], 3, 32, q);
        float o[3][4];
        for (int r = 0; r < 3; r++)
            ops_matmul_qact(o[r], 4, &q[r], 1, w, OPS_Q8_0, 32, 0, 4);
        CU_ASSERT_EQUAL(o[0][0], -64.0f * da);
        CU_ASSERT_EQUAL(o[0][1], 32.0f * da);
        CU_ASSERT_EQUAL(o[0][2], fmaf(190.0f, da, 0.0f));
        CU_ASSERT_EQUAL(o[0][3], -127.0f * da);
        for (int n = 0; n < 4; n++) {
            CU_ASSERT(isnan(o[1][n]));
            CU_ASSERT(o[2][n] == 0.0f);
        }
        /* a plain-type weight is refused loudly */
        float f[32] = {0};
        ops_matmul_qact(o[0], 4, &q[0], 1, f, OPS_F32, 32, 0, 1);
        CU_ASSERT(isnan(o[0][0]));
        free(buf);
    }
    ops_use_simd(true);
}

/* The SIMD kernels equal the scalar reference bit for bit (quantized rows and outputs) for
 * every type, k and row range, decode and prefill; a row's result does not depend on the
 * batch; and each result lies within the activation-rounding bound of the exact dot:
 * |qdot - dot| <= sum_i |w_i| * (amax of x_i's block) / 254, plus float slack. */
static void test_qact_simd_equals_scalar(void)
{
    if (ops_level_available() < OPS_LEVEL_AVX512) {
        TEST_SKIP("no AVX-512 on this CPU: the act-q8 SIMD kernels are not exercised");
        return;
    }
    enum { NMAX = 16, M = 5 };
    const int64_t ks[] = {256, 384, 1024, 544, 768};
    const int64_t ranges[3][2] = {{0, 16}, {0, 13}, {5, 6}};
    bool ok = true, within = true;
    ops_set_level(OPS_LEVEL_AVX512);
    CU_ASSERT_STRING_EQUAL(ops_qact_kernels(), "avx512-vnni");
    for (int ti = 0; ti < N_QTYPES; ti++)
        for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++) {
            ops_dtype t = qtypes[ti];
            int64_t k = ks[ki];
            size_t rb = ops_row_bytes(t, k);
            if (!rb)
                continue;
            uint8_t *w = malloc(rb * NMAX);
            float *x = malloc(sizeof(float) * (size_t)(M * k)), *wf = malloc(sizeof(float) * (size_t)k);
            for (int n = 0; n < NMAX; n++)
                random_row(w + (size_t)n * rb, t, k);
            for (int64_t i = 0; i < M * k; i++)
                x[i] = rng_uniform() * (i % 97 == 0 ? 8.0f : 1.0f);
            for (int i = 0; i < 32; i++) /* row 1: a zero block; row 2: a tiny one */
                x[k + 32 + i] = 0.0f, x[2 * k + i] = 1e-33f;
            const void *qs[M], *qv[M];
            ops_set_level(OPS_LEVEL_SCALAR);
            uint8_t *bs = qact_rows(x, M, k, qs);
            ops_set_level(OPS_LEVEL_AVX512);
            uint8_t *bv = qact_rows(x, M, k, qv);
            bool qsame = true;
            for (int r = 0; r < M; r++) /* form B is only written when k % 256 == 0 */
                qsame = qsame && (k % 256 ? memcmp(qs[r], qv[r], (size_t)k) == 0 && /* no form B */
                                                memcmp((const uint8_t *)qs[r] + 2 * k, (const uint8_t *)qv[r] + 2 * k, (size_t)(k / 4)) == 0
                                          : memcmp(qs[r], qv[r], (size_t)(2 * k + k / 4 + k / 64 + k / 8)) == 0);
            if (!qsame)
                printf("\n    act-q8 k %lld: quantized rows differ\n", (long long)k);
            ok = ok && qsame;
            for (int ri = 0; ri < 3; ri++)
                for (int m = 1; m <= M; m += M - 1) {
                    float o[3][M * NMAX];
                    for (int l = 0; l < 3; l++)
                        for (int i = 0; i < M * NMAX; i++)
                            o[l][i] = -1.0f;
                    ops_set_level(OPS_LEVEL_SCALAR);
                    ops_matmul_qact(o[0], NMAX, qs, m, w, t, k, ranges[ri][0], ranges[ri][1]);
                    ops_set_level(OPS_LEVEL_AVX512);
                    ops_matmul_qact(o[1], NMAX, qv, m, w, t, k, ranges[ri][0], ranges[ri][1]);
                    for (int r = 0; r < m; r++) /* each row alone */
                        ops_matmul_qact(o[2] + r * NMAX, NMAX, &qv[r], 1, w, t, k, ranges[ri][0], ranges[ri][1]);
                    bool same = same_bits(o[0], o[1], M * NMAX) && same_bits(o[0], o[2], M * NMAX);
                    if (!same)
                        printf("\n    act-q8 %s k %lld m %d rows [%lld, %lld): kernels differ\n", ops_dtype_name(t),
                               (long long)k, m, (long long)ranges[ri][0], (long long)ranges[ri][1]);
                    ok = ok && same;
                    for (int r = 0; r < m && ri == 0; r++)
                        for (int n = 0; n < NMAX; n++) {
                            ops_to_f32(wf, w + (size_t)n * rb, t, k);
                            double exact = 0, bound = 0;
                            int64_t bsz = t >= OPS_Q4_K ? 256 : 32; /* the activation block */
                            double amax = 0;
                            for (int64_t i = 0; i < k; i++) {
                                if (i % bsz == 0) {
                                    amax = 0;
                                    for (int64_t e = i; e < i + bsz; e++)
                                        amax = fmax(amax, fabs(x[r * k + e]));
                                }
                                exact += (double)wf[i] * x[r * k + i];
                                bound += fabs((double)wf[i]) * amax / 254.0;
                            }
                            double err = fabs(o[1][r * NMAX + n] - exact);
                            if (!(err <= bound * 1.01 + 1e-5 * fabs(exact) + 1e-6)) {
                                within = false;
                                printf("\n    act-q8 %s k %lld row %d out %d: %g vs exact %g, bound %g\n",
                                       ops_dtype_name(t), (long long)k, r, n, o[1][r * NMAX + n], exact, bound);
                            }
                        }
                }
            free(w);
            free(x);
            free(wf);
            free(bs);
            free(bv);
        }
    ops_use_simd(true);
    CU_ASSERT(ok);
    CU_ASSERT(within);
}

void suite_quant(void)
{
    CU_pSuite s = CU_add_suite("quant", NULL, NULL);
    CU_add_test(s, "Q8_0 hand-computed", test_hand_q8_0);
    CU_add_test(s, "Q4_0 hand-computed", test_hand_q4_0);
    CU_add_test(s, "Q5_0 hand-computed", test_hand_q5_0);
    CU_add_test(s, "Q4_K hand-computed", test_hand_q4_k);
    CU_add_test(s, "Q5_K hand-computed", test_hand_q5_k);
    CU_add_test(s, "Q6_K hand-computed", test_hand_q6_k);
    CU_add_test(s, "simd equals scalar", test_simd_equals_scalar_q);
    CU_add_test(s, "act-q8 hand-computed", test_qact_hand);
    CU_add_test(s, "act-q8: AVX-512 VNNI equals scalar, within the rounding bound", test_qact_simd_equals_scalar);
    CU_add_test(s, "AVX-512 level equals AVX2 and scalar (decode and prefill)", test_avx512_levels);
    CU_add_test(s, "quantized equals dequantized f32", test_quant_equals_dequant);
    CU_add_test(s, "canonical order", test_quant_order);
    CU_add_test(s, "encoder round trip", test_round_trip);
    CU_add_test(s, "plain encodings, refusals", test_quant_edges);
}
