/* ops: kernels against hand-computed values and float64 references, and the determinism
 * invariants the whole runtime stands on: SIMD == scalar bit for bit; a row's result does
 * not depend on how many rows are computed with it nor on how outputs are split. */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/ops.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
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
static uint16_t to_bf16_trunc(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return (uint16_t)(b >> 16);
}
static void fill(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_uniform();
}
static bool same_bits(const float *a, const float *b, int64_t n)
{
    return memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

static void test_conversions(void)
{
    CU_ASSERT_EQUAL(ops_bf16_to_f32(0x3f80), 1.0f);
    CU_ASSERT_EQUAL(ops_bf16_to_f32(0xc020), -2.5f);
    CU_ASSERT_EQUAL(ops_f16_to_f32(0x3c00), 1.0f);
    CU_ASSERT_EQUAL(ops_f16_to_f32(0xc100), -2.5f);
    CU_ASSERT_EQUAL(ops_f16_to_f32(0x7bff), 65504.0f);
    CU_ASSERT_EQUAL(ops_f16_to_f32(0x0001), ldexpf(1.0f, -24)); /* smallest subnormal */
    CU_ASSERT_EQUAL(ops_f16_to_f32(0x03ff), ldexpf(1023.0f, -24));
    CU_ASSERT(isinf(ops_f16_to_f32(0x7c00)));
    CU_ASSERT(isnan(ops_f16_to_f32(0x7e00)));
    CU_ASSERT(signbit(ops_f16_to_f32(0x8000)));
    /* SIMD widening equals scalar for every f16 and bf16 bit pattern */
    uint16_t *h = malloc(65536 * sizeof *h);
    float *a = malloc(65536 * sizeof *a), *b = malloc(65536 * sizeof *b);
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    for (int t = OPS_BF16; t <= OPS_F16; t++) {
        ops_use_simd(false);
        ops_to_f32(a, h, (ops_dtype)t, 65536);
        ops_use_simd(true);
        ops_to_f32(b, h, (ops_dtype)t, 65536);
        CU_ASSERT(same_bits(a, b, 65536));
    }
    free(h);
    free(a);
    free(b);
}

static void test_dot_hand(void)
{
    /* 1..10 . 1..10 = 385, exact in every order */
    float a[10];
    for (int i = 0; i < 10; i++)
        a[i] = (float)(i + 1);
    CU_ASSERT_EQUAL(ops_dot(a, a, OPS_F32, 10), 385.0f);
    /* The canonical order is visible with values that cancel.  k = 0 and k = 32 land in
     * the same accumulator (chain 0, lane 0): 1e8 - 1e8 = 0 there, and the 1 at k = 1
     * (chain 0, lane 1) survives: result 1.  A left-to-right float sum gives 0
     * (1e8 + 1 rounds to 1e8). */
    float x[40] = {0}, ones[40];
    x[0] = 1e8f;
    x[1] = 1.0f;
    x[32] = -1e8f;
    for (int i = 0; i < 40; i++)
        ones[i] = 1.0f;
    CU_ASSERT_EQUAL(ops_dot(x, ones, OPS_F32, 40), 1.0f);
    ops_use_simd(false);
    CU_ASSERT_EQUAL(ops_dot(x, ones, OPS_F32, 40), 1.0f);
    ops_use_simd(true);
    /* k = 8 is chain 1: (c0 + c1) meets 1e8 and -1e8 in one add -> 0, plus lane 1's 1 */
    x[32] = 0.0f;
    x[8] = -1e8f;
    CU_ASSERT_EQUAL(ops_dot(x, ones, OPS_F32, 40), 1.0f);
}

static void test_simd_equals_scalar(void)
{
    if (!ops_simd_available()) {
        ops_use_simd(false);
        return;
    }
    enum { K = 203, N = 37, M = 9 }; /* K: 6 full steps of 32 and a tail of 11 */
    float *x = malloc(sizeof(float) * M * K), *wf = malloc(sizeof(float) * N * K);
    uint16_t *wb = malloc(sizeof(uint16_t) * N * K);
    fill(x, M * K);
    fill(wf, N * K);
    for (int i = 0; i < N * K; i++)
        wb[i] = to_bf16_trunc(wf[i]);
    const float *rows[M];
    for (int r = 0; r < M; r++)
        rows[r] = x + r * K;
    float *panel = aligned_alloc(64, ops_matmul_panel_floats(K) * sizeof(float) + 64);
    float o1[M * N], o2[M * N];
    for (int t = 0; t < 2; t++) {
        const void *w = t ? (const void *)wb : (const void *)wf;
        ops_dtype wt = t ? OPS_BF16 : OPS_F32;
        ops_use_simd(false);
        ops_matmul(o1, N, rows, M, w, wt, K, 0, N, panel);
        ops_use_simd(true);
        ops_matmul(o2, N, rows, M, w, wt, K, 0, N, panel);
        CU_ASSERT(same_bits(o1, o2, M * N));
        /* close to a float64 reference */
        double worst = 0;
        for (int r = 0; r < M; r++)
            for (int n = 0; n < N; n++) {
                double ref = 0;
                for (int i = 0; i < K; i++)
                    ref += (double)x[r * K + i] *
                           (t ? (double)ops_bf16_to_f32(wb[n * K + i]) : (double)wf[n * K + i]);
                double e = fabs(ref - o2[r * N + n]);
                worst = e > worst ? e : worst;
            }
        CU_ASSERT(worst < 1e-4);
    }
    /* attention (hd 64: the paired-key path; hd 40: the padded path) and weighted sum */
    enum { HD = 64, POS = 13 };
    float q[HD], kc[(POS + 1) * HD], vc[(POS + 1) * HD], s1[POS + 1], s2[POS + 1], a1[HD], a2[HD];
    fill(q, HD);
    fill(kc, (POS + 1) * HD);
    fill(vc, (POS + 1) * HD);
    ops_use_simd(false);
    ops_attention_head(a1, q, kc, vc, HD, POS, HD, 0.3f, s1);
    ops_use_simd(true);
    ops_attention_head(a2, q, kc, vc, HD, POS, HD, 0.3f, s2);
    CU_ASSERT(same_bits(a1, a2, HD));
    ops_use_simd(false);
    ops_attention_head(a1, q, kc, vc, HD, POS, 40, 0.3f, s1);
    ops_use_simd(true);
    ops_attention_head(a2, q, kc, vc, HD, POS, 40, 0.3f, s2);
    CU_ASSERT(same_bits(a1, a2, 40));
    const float *vr[4] = {vc, vc + HD, vc + 2 * HD, vc + 3 * HD};
    float wts[4] = {0.4f, 0.3f, 0.2f, 0.1f};
    ops_use_simd(false);
    ops_weighted_sum(a1, vr, wts, 4, HD - 3);
    ops_use_simd(true);
    ops_weighted_sum(a2, vr, wts, 4, HD - 3);
    CU_ASSERT(same_bits(a1, a2, HD - 3));
    free(x);
    free(wf);
    free(wb);
    free(panel);
}

/* The one-row (decode) GEMV has its own bf16 kernel: the weights widened as even/odd
 * halves of 32-bit words, x permuted to match, two rows streamed at once.  It must give the
 * canonical value bit for bit: against the scalar kernels on random data over odd row
 * counts and sub-ranges, and on values whose cancellation exposes the lane order. */
static void test_decode_gemv(void)
{
    if (!ops_simd_available()) {
        ops_use_simd(false);
        return;
    }
    enum { N = 37 };
    const int64_t ks[3] = {32, 96, 256};
    for (int ki = 0; ki < 3; ki++) {
        int64_t K = ks[ki];
        float *x = malloc(sizeof(float) * (size_t)K), *wf = malloc(sizeof(float) * N * (size_t)K);
        uint16_t *wb = malloc(sizeof(uint16_t) * N * (size_t)K);
        float *panel = aligned_alloc(64, ops_matmul_panel_floats(K) * sizeof(float));
        fill(x, K);
        fill(wf, N * K);
        for (int64_t i = 0; i < N * K; i++)
            wb[i] = to_bf16_trunc(wf[i]);
        const float *rows[1] = {x};
        const int64_t ranges[4][2] = {{0, N}, {3, 4}, {5, 17}, {1, N}};
        for (int t = 0; t < 3; t++) { /* bf16 (the new kernel), then f32 and f16 */
            const void *w = t == 1 ? (const void *)wf : (const void *)wb;
            ops_dtype wt = t == 0 ? OPS_BF16 : t == 1 ? OPS_F32 : OPS_F16;
            for (int r = 0; r < 4; r++) {
                float o1[N] = {0}, o2[N] = {0}, o3[N] = {0};
                int64_t n0 = ranges[r][0], n1 = ranges[r][1];
                ops_use_simd(false);
                ops_matmul(o1, N, rows, 1, w, wt, K, n0, n1, panel);
                ops_use_simd(true);
                ops_matmul(o2, N, rows, 1, w, wt, K, n0, n1, panel);
                ops_matmul(o3, N, rows, 1, w, wt, K, n0, n1, NULL); /* no scratch: plain path */
                CU_ASSERT(same_bits(o1, o2, N));
                CU_ASSERT(same_bits(o1, o3, N));
            }
        }
        free(x);
        free(wf);
        free(wb);
        free(panel);
    }
    /* Cancellation (see test_dot_hand): 1e8 at k = 0 and -1e8 at k = 32 share chain 0 lane
     * 0, the 1 at k = 1 is lane 1: canonical result 1, whatever the row's neighbours. */
    enum { K = 64, R = 3 };
    float x[K] = {0}, *panel = aligned_alloc(64, ops_matmul_panel_floats(K) * sizeof(float));
    uint16_t w[R * K];
    for (int i = 0; i < R * K; i++)
        w[i] = 0x3f80; /* 1.0 */
    x[0] = 1e8f;
    x[1] = 1.0f;
    x[32] = -1e8f;
    const float *rows[1] = {x};
    float o[R];
    ops_matmul(o, R, rows, 1, w, OPS_BF16, K, 0, R, panel);
    for (int r = 0; r < R; r++)
        CU_ASSERT_EQUAL(o[r], 1.0f);
    /* k = 8 (chain 1, lane 0) meets k = 0 in (c0 + c1): 1e8 - 1e8 = 0, plus lane 1's 1 */
    x[32] = 0.0f;
    x[8] = -1e8f;
    ops_matmul(o, R, rows, 1, w, OPS_BF16, K, 0, R, panel);
    for (int r = 0; r < R; r++)
        CU_ASSERT_EQUAL(o[r], 1.0f);
    free(panel);
}

/* Grouped-query attention over 1..9 query heads sharing a KV head (four at a time in the
 * SIMD kernel, the rest one by one): SIMD == scalar bit for bit, for head sizes with and
 * without a multiple of 16, and rows that are not packed (kv_stride > hd). */
static void test_attention_group_simd(void)
{
    if (!ops_simd_available()) {
        ops_use_simd(false);
        return;
    }
    enum { HMAX = 9, HD = 128, POS = 70, STRIDE = 136 };
    float *q = malloc(sizeof(float) * HMAX * HD), *kc = malloc(sizeof(float) * (POS + 1) * STRIDE);
    float *vc = malloc(sizeof(float) * (POS + 1) * STRIDE), *sc = malloc(sizeof(float) * HMAX * (POS + 1));
    float *a1 = malloc(sizeof(float) * HMAX * HD), *a2 = malloc(sizeof(float) * HMAX * HD);
    fill(q, HMAX * HD);
    fill(kc, (POS + 1) * STRIDE);
    fill(vc, (POS + 1) * STRIDE);
    const int64_t hds[3] = {128, 48, 40};
    for (int hi = 0; hi < 3; hi++)
        for (int64_t g = 1; g <= HMAX; g++) {
            int64_t hd = hds[hi];
            ops_use_simd(false);
            ops_attention_group(a1, HD, q, HD, g, kc, vc, STRIDE, POS, hd, 0.2f, sc);
            ops_use_simd(true);
            ops_attention_group(a2, HD, q, HD, g, kc, vc, STRIDE, POS, hd, 0.2f, sc);
            bool same = true;
            for (int64_t h = 0; h < g; h++)
                same = same && same_bits(a1 + h * HD, a2 + h * HD, hd);
            CU_ASSERT(same);
        }
    free(q);
    free(kc);
    free(vc);
    free(sc);
    free(a1);
    free(a2);
}

/* A row's result must not depend on the batch it runs in, nor on the output split. */
static void test_batch_and_split_invariance(void)
{
    enum { K = 256, N = 50, M = 13 };
    float *x = malloc(sizeof(float) * M * K);
    uint16_t *w = malloc(sizeof(uint16_t) * N * K);
    fill(x, M * K);
    for (int i = 0; i < N * K; i++)
        w[i] = to_bf16_trunc(rng_uniform());
    const float *rows[M];
    for (int r = 0; r < M; r++)
        rows[r] = x + r * K;
    float *panel = aligned_alloc(64, ops_matmul_panel_floats(K) * sizeof(float));
    float full[M * N], one[N], split[M * N];
    ops_matmul(full, N, rows, M, w, OPS_BF16, K, 0, N, panel);
    for (int r = 0; r < M; r++) {
        ops_matmul(one, N, rows + r, 1, w, OPS_BF16, K, 0, N, panel);
        CU_ASSERT(same_bits(one, full + r * N, N));
    }
    ops_matmul(split, N, rows, M, w, OPS_BF16, K, 0, 7, panel);
    ops_matmul(split, N, rows, M, w, OPS_BF16, K, 7, 31, panel);
    ops_matmul(split, N, rows, M, w, OPS_BF16, K, 31, N, panel);
    CU_ASSERT(same_bits(split, full, M * N));
    for (int r = 0; r < M; r++)
        CU_ASSERT_EQUAL(full[r * N + 5], ops_dot(x + r * K, w + 5 * K, OPS_BF16, K));
    free(x);
    free(w);
    free(panel);
}

static void test_rmsnorm_hand(void)
{
    /* x = [3, 4]: mean(x^2) = 12.5, r = 1/sqrt(12.5) */
    float x[2] = {3, 4}, w[2] = {2, 0.5f}, out[2];
    ops_rmsnorm(out, x, w, OPS_F32, 2, 0.0f);
    CU_ASSERT_DOUBLE_EQUAL(out[0], 2 * 3 / sqrt(12.5), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(out[1], 0.5 * 4 / sqrt(12.5), 1e-6);
}

static void test_rope_hand(void)
{
    enum { HD = 4, NP = 3 };
    float c[NP * HD / 2], s[NP * HD / 2];
    ops_rope_table(c, s, NP, HD, 10000.0);
    /* inv_freq = [1, 1/100]; position 2 -> angles [2, 0.02] */
    CU_ASSERT_DOUBLE_EQUAL(c[2 * 2 + 0], cos(2.0), 1e-7);
    CU_ASSERT_DOUBLE_EQUAL(s[2 * 2 + 1], sin(0.02), 1e-7);
    float x[HD] = {1, 2, 3, 4};
    ops_rope(x, c + 2 * 2, s + 2 * 2, HD);
    /* rotate-half pairs (x0, x2) by 2 rad and (x1, x3) by 0.02 rad */
    CU_ASSERT_DOUBLE_EQUAL(x[0], 1 * cos(2.0) - 3 * sin(2.0), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(x[2], 3 * cos(2.0) + 1 * sin(2.0), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(x[1], 2 * cos(0.02) - 4 * sin(0.02), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(x[3], 4 * cos(0.02) + 2 * sin(0.02), 1e-6);
}

static void test_attention_hand(void)
{
    /* one head, hd 2, keys at positions 0 and 1; q.k = [0, ln 3] -> p = [1/4, 3/4] */
    float q[2] = {1, 0}, k[4] = {0, 0, logf(3.0f), 0}, v[4] = {4, 8, 0, 4}, out[2], sc[2];
    ops_attention_head(out, q, k, v, 2, 1, 2, 1.0f, sc);
    CU_ASSERT_DOUBLE_EQUAL(out[0], 1.0, 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(out[1], 5.0, 1e-6);
    /* position 0 sees only key 0 */
    ops_attention_head(out, q, k, v, 2, 0, 2, 1.0f, sc);
    CU_ASSERT_EQUAL(out[0], 4.0f);
    CU_ASSERT_EQUAL(out[1], 8.0f);
}

static void test_topk_route(void)
{
    /* probs ~ softmax; ties resolved to the lower index */
    float logits[5] = {1.0f, 3.0f, 3.0f, -1.0f, 2.0f}, probs[5], w[3];
    int32_t idx[3];
    ops_topk_route(logits, 5, 3, true, idx, w, probs);
    CU_ASSERT_EQUAL(idx[0], 1);
    CU_ASSERT_EQUAL(idx[1], 2);
    CU_ASSERT_EQUAL(idx[2], 4);
    double e3 = exp(3.0), e2 = exp(2.0);
    CU_ASSERT_DOUBLE_EQUAL(w[0], e3 / (2 * e3 + e2), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(w[2], e2 / (2 * e3 + e2), 1e-6);
    ops_topk_route(logits, 5, 2, false, idx, w, probs);
    double z = exp(1.0) + 2 * e3 + exp(-1.0) + e2;
    CU_ASSERT_DOUBLE_EQUAL(w[0], e3 / z, 1e-6);
    /* k = E selects every expert exactly once */
    int32_t all[5];
    float wa[5];
    ops_topk_route(logits, 5, 5, true, all, wa, probs);
    int seen = 0;
    for (int i = 0; i < 5; i++)
        seen |= 1 << all[i];
    CU_ASSERT_EQUAL(seen, 31);
}

static void test_swiglu_argmax(void)
{
    float g[3] = {0, 1, -2}, u[3] = {5, 2, 1}, o[3];
    ops_swiglu(o, g, u, 3);
    CU_ASSERT_EQUAL(o[0], 0.0f);
    CU_ASSERT_DOUBLE_EQUAL(o[1], 2.0 / (1 + exp(-1.0)), 1e-6);
    CU_ASSERT_DOUBLE_EQUAL(o[2], -2.0 / (1 + exp(2.0)), 1e-6);
    float v[5] = {1, 7, 3, 7, -1};
    CU_ASSERT_EQUAL(ops_argmax(v, 5), 1);
}

void suite_ops(void)
{
    CU_pSuite s = CU_add_suite("ops", NULL, NULL);
    CU_add_test(s, "conversions", test_conversions);
    CU_add_test(s, "dot hand-computed", test_dot_hand);
    CU_add_test(s, "simd equals scalar", test_simd_equals_scalar);
    CU_add_test(s, "decode GEMV equals scalar", test_decode_gemv);
    CU_add_test(s, "grouped attention equals scalar", test_attention_group_simd);
    CU_add_test(s, "batch and split invariance", test_batch_and_split_invariance);
    CU_add_test(s, "rmsnorm", test_rmsnorm_hand);
    CU_add_test(s, "rope", test_rope_hand);
    CU_add_test(s, "attention", test_attention_hand);
    CU_add_test(s, "top-k routing", test_topk_route);
    CU_add_test(s, "swiglu, argmax", test_swiglu_argmax);
}
