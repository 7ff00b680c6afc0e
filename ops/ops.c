/* ops: portable scalar kernels (the reference for the canonical order) and the dispatch to
 * the AVX2 family.  See ops.h for the order every reduction follows. */
#include "ops.h"

#include <math.h>
#include <string.h>

#include "ops_impl.h"

/* ---- dispatch -------------------------------------------------------------------- */

static int level_state = -1; /* -1: not decided yet; else an ops_level */

bool ops_simd_available(void)
{
    return ops_level_available() >= OPS_LEVEL_AVX2;
}

ops_level ops_level_available(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
        return OPS_LEVEL_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return OPS_LEVEL_AVX512;
    return OPS_LEVEL_AVX2;
#else
    return OPS_LEVEL_SCALAR;
#endif
}

ops_level ops_level_current(void)
{
    if (level_state < 0)
        level_state = ops_level_available();
    return (ops_level)level_state;
}

void ops_set_level(ops_level l)
{
    ops_level top = ops_level_available();
    level_state = l < OPS_LEVEL_SCALAR ? OPS_LEVEL_SCALAR : l > top ? top : l;
}

const char *ops_level_name(ops_level l)
{
    return l == OPS_LEVEL_AVX512 ? "avx512" : l == OPS_LEVEL_AVX2 ? "avx2" : "scalar";
}

void ops_use_simd(bool on)
{
    ops_set_level(on ? OPS_LEVEL_AVX512 : OPS_LEVEL_SCALAR);
}

bool ops_simd_enabled(void)
{
    return ops_level_current() >= OPS_LEVEL_AVX2;
}

static const struct {
    const char *name;
    int64_t elems;
    size_t bytes;
} block_layout[OPS_DTYPE_COUNT] = {
    [OPS_F32] = {"F32", 1, 4},       [OPS_BF16] = {"BF16", 1, 2},     [OPS_F16] = {"F16", 1, 2},
    /* ggml-common.h: d (f16) + 16 nibbles; d + qh (u32) + 16 nibbles; d + 32 int8 */
    [OPS_Q4_0] = {"Q4_0", 32, 18},   [OPS_Q5_0] = {"Q5_0", 32, 22},   [OPS_Q8_0] = {"Q8_0", 32, 34},
    /* d, dmin (f16) + 12 scale bytes + 128 nibble bytes (+ 32 high-bit bytes for Q5_K);
     * Q6_K: 128 low-nibble + 64 high-bit bytes + 16 int8 scales + d (f16) */
    [OPS_Q4_K] = {"Q4_K", 256, 144}, [OPS_Q5_K] = {"Q5_K", 256, 176}, [OPS_Q6_K] = {"Q6_K", 256, 210},
};

size_t ops_dtype_size(ops_dtype t)
{
    return (unsigned)t < OPS_DTYPE_COUNT && block_layout[t].elems == 1 ? block_layout[t].bytes : 0;
}

int64_t ops_dtype_block_elems(ops_dtype t)
{
    return (unsigned)t < OPS_DTYPE_COUNT ? block_layout[t].elems : 0;
}

size_t ops_dtype_block_bytes(ops_dtype t)
{
    return (unsigned)t < OPS_DTYPE_COUNT ? block_layout[t].bytes : 0;
}

size_t ops_row_bytes(ops_dtype t, int64_t k)
{
    int64_t be = ops_dtype_block_elems(t);
    if (be <= 0 || k < 0 || k % be)
        return 0;
    return (size_t)(k / be) * block_layout[t].bytes;
}

const char *ops_dtype_name(ops_dtype t)
{
    return (unsigned)t < OPS_DTYPE_COUNT ? block_layout[t].name : "?";
}

/* ---- conversions ----------------------------------------------------------------- */

float ops_bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float ops_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        /* inf, or nan with its payload and the quiet bit set, as F16C's vcvtph2ps does */
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);
    } else if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise; exact in f32 */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400u));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline float load_elem(const void *base, ops_dtype t, int64_t i)
{
    switch (t) {
    case OPS_BF16: return ops_bf16_to_f32(((const uint16_t *)base)[i]);
    case OPS_F16: return ops_f16_to_f32(((const uint16_t *)base)[i]);
    default: return ((const float *)base)[i];
    }
}

static void scalar_to_f32(float *dst, const void *src, ops_dtype t, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = load_elem(src, t, i);
}

void ops_to_f32(float *dst, const void *src, ops_dtype t, int64_t n)
{
    if (ops_is_block(t)) {
        /* whole blocks only; a partial block's elements come out NaN, never misread */
        int64_t be = ops_dtype_block_elems(t), nw = n / be * be;
        if (ops_simd_enabled())
            ops_avx2_q_to_f32(dst, src, t, nw);
        else
            for (int64_t i = 0; i < nw; i += be)
                ops_q_dequant_block(dst + i, (const uint8_t *)src + (size_t)(i / be) *
                                                  ops_dtype_block_bytes(t), t);
        for (int64_t i = nw; i < n; i++)
            dst[i] = NAN;
        return;
    }
    if (ops_simd_enabled())
        ops_avx2_to_f32(dst, src, t, n);
    else
        scalar_to_f32(dst, src, t, n);
}

/* ---- dot and matmul -------------------------------------------------------------- */

static float scalar_dot(const float *a, const void *b, ops_dtype bt, int64_t k)
{
    float acc[OPS_CHAINS][8] = {{0}};
    for (int64_t base = 0; base < k; base += OPS_STEP)
        for (int c = 0; c < OPS_CHAINS; c++)
            for (int j = 0; j < 8; j++) {
                int64_t i = base + 8 * c + j;
                /* zero-padded tail: the same fused adds of 0*0 the SIMD path performs */
                float av = i < k ? a[i] : 0.0f, bv = i < k ? load_elem(b, bt, i) : 0.0f;
                acc[c][j] = fmaf(av, bv, acc[c][j]);
            }
    float lane[8];
    for (int j = 0; j < 8; j++)
        lane[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    return ops_lanes_sum(lane);
}

float ops_dot(const float *a, const void *b, ops_dtype bt, int64_t k)
{
    if (ops_is_block(bt)) {
        if (ops_row_bytes(bt, k) == 0 && k != 0)
            return NAN; /* k not whole blocks: refused loudly */
        return ops_simd_enabled() ? ops_avx2_q_dot(a, b, bt, k) : ops_q_scalar_dot(a, b, bt, k);
    }
    return ops_simd_enabled() ? ops_avx2_dot(a, b, bt, k) : scalar_dot(a, b, bt, k);
}

size_t ops_matmul_panel_floats(int64_t k)
{
    int64_t kp = (k + OPS_STEP - 1) / OPS_STEP * OPS_STEP;
    return (size_t)(OPS_PANEL_ROWS * kp);
}

void ops_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1, float *panel)
{
    size_t row_bytes = ops_row_bytes(wt, k);
    if (ops_is_block(wt) && row_bytes == 0 && k != 0) {
        for (int64_t r = 0; r < m; r++) /* k not whole blocks: refused loudly */
            for (int64_t n = n0; n < n1; n++)
                out[r * ldo + n] = NAN;
        return;
    }
    if (ops_simd_enabled()) {
        ops_avx2_matmul(out, ldo, x_rows, m, w, wt, k, n0, n1, panel);
        return;
    }
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wrow = (const uint8_t *)w + (size_t)n * row_bytes;
        for (int64_t r = 0; r < m; r++)
            out[r * ldo + n] = ops_is_block(wt) ? ops_q_scalar_dot(x_rows[r], wrow, wt, k)
                                                : scalar_dot(x_rows[r], wrow, wt, k);
    }
}

/* ---- norms, rope ----------------------------------------------------------------- */

void ops_rmsnorm(float *out, const float *x, const void *w, ops_dtype wt, int64_t n, float eps)
{
    if (ops_dtype_size(wt) == 0) { /* a block type: refused loudly (see ops.h) */
        for (int64_t i = 0; i < n; i++)
            out[i] = NAN;
        return;
    }
    float sumsq = ops_dot(x, x, OPS_F32, n);
    float r = 1.0f / sqrtf(sumsq / (float)n + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = load_elem(w, wt, i) * (x[i] * r);
}

void ops_rope(float *x, const float *cos_row, const float *sin_row, int64_t hd)
{
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half], c = cos_row[i], s = sin_row[i];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
    }
}

void ops_rope_table(float *cos_tab, float *sin_tab, int64_t n_pos, int64_t hd, double theta)
{
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        /* HF: inv_freq = 1 / base ** (arange(0, dim, 2).float() / dim), in float32 */
        float expo = (float)(2 * i) / (float)hd;
        float inv_freq = 1.0f / powf((float)theta, expo);
        for (int64_t p = 0; p < n_pos; p++) {
            float angle = (float)p * inv_freq; /* HF: freqs in float32 */
            cos_tab[p * half + i] = (float)cos((double)angle);
            sin_tab[p * half + i] = (float)sin((double)angle);
        }
    }
}

/* ---- attention ------------------------------------------------------------------- */

static float scalar_expf(float x)
{
    if (x != x)
        return x;
    if (x > OPS_EXP_HI)
        return INFINITY;
    if (x < OPS_EXP_LO)
        return 0.0f;
    float n = rintf(x * OPS_LOG2E); /* nearest, ties to even: the SIMD rounding mode */
    float r = fmaf(n, -OPS_LN2_HI, x);
    r = fmaf(n, -OPS_LN2_LO, r);
    float p = OPS_EXP_P0;
    p = fmaf(p, r, OPS_EXP_P1);
    p = fmaf(p, r, OPS_EXP_P2);
    p = fmaf(p, r, OPS_EXP_P3);
    p = fmaf(p, r, OPS_EXP_P4);
    p = fmaf(p, r, OPS_EXP_P5);
    float y = fmaf(p, r * r, r) + 1.0f;
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

float ops_expf(float x)
{
    return ops_simd_enabled() ? ops_avx2_expf(x) : scalar_expf(x);
}

/* Canonical sum: the canonical dot with ones (x * 1 + acc rounds as x + acc). */
static float scalar_sum(const float *x, int64_t n)
{
    float acc[OPS_CHAINS][8] = {{0}};
    for (int64_t base = 0; base < n; base += OPS_STEP)
        for (int c = 0; c < OPS_CHAINS; c++)
            for (int j = 0; j < 8; j++) {
                int64_t i = base + 8 * c + j;
                acc[c][j] = acc[c][j] + (i < n ? x[i] : 0.0f);
            }
    float lane[8];
    for (int j = 0; j < 8; j++)
        lane[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    return ops_lanes_sum(lane);
}

static void scalar_softmax(float *s, int64_t n)
{
    float mx = s[0];
    for (int64_t j = 1; j < n; j++)
        mx = s[j] > mx ? s[j] : mx;
    for (int64_t j = 0; j < n; j++)
        s[j] = scalar_expf(s[j] - mx);
    float sum = scalar_sum(s, n);
    for (int64_t j = 0; j < n; j++)
        s[j] = s[j] / sum;
}

void ops_softmax(float *x, int64_t n)
{
    if (ops_simd_enabled())
        ops_avx2_softmax(x, n);
    else
        scalar_softmax(x, n);
}

static void scalar_attention_head(float *out, const float *q, const float *k_cache,
                                  const float *v_cache, int64_t kv_stride, int64_t pos,
                                  int64_t hd, float scale, float *scores)
{
    int64_t n = pos + 1;
    for (int64_t j = 0; j < n; j++)
        scores[j] = scalar_dot(q, k_cache + j * kv_stride, OPS_F32, hd) * scale;
    scalar_softmax(scores, n);
    for (int64_t d = 0; d < hd; d++)
        out[d] = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float *v = v_cache + j * kv_stride;
        for (int64_t d = 0; d < hd; d++)
            out[d] = fmaf(scores[j], v[d], out[d]);
    }
}

void ops_attention_head(float *out, const float *q, const float *k_cache, const float *v_cache,
                        int64_t kv_stride, int64_t pos, int64_t hd, float scale, float *scores)
{
    ops_attention_group(out, hd, q, hd, 1, k_cache, v_cache, kv_stride, pos, hd, scale, scores);
}

void ops_attention_group(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                         int64_t g, const float *k_cache, const float *v_cache,
                         int64_t kv_stride, int64_t pos, int64_t hd, float scale, float *scores)
{
    if (ops_simd_enabled()) {
        ops_avx2_attention_group(out, out_stride, q, q_stride, g, k_cache, v_cache, kv_stride, pos,
                                 hd, scale, scores);
        return;
    }
    for (int64_t i = 0; i < g; i++)
        scalar_attention_head(out + i * out_stride, q + i * q_stride, k_cache, v_cache, kv_stride,
                              pos, hd, scale, scores + i * (pos + 1));
}

/* ---- FFN pieces ------------------------------------------------------------------ */

void ops_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    if (ops_simd_enabled()) {
        ops_avx2_swiglu(out, gate, up, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + scalar_expf(-g)) * up[i];
    }
}

void ops_add(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

void ops_weighted_sum(float *out, const float *const *rows, const float *w, int64_t n_rows,
                      int64_t n)
{
    if (ops_simd_enabled()) {
        ops_avx2_weighted_sum(out, rows, w, n_rows, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        float acc = w[0] * rows[0][i];
        for (int64_t j = 1; j < n_rows; j++)
            acc = fmaf(w[j], rows[j][i], acc);
        out[i] = acc;
    }
}

void ops_topk_route(const float *logits, int64_t e, int64_t k, bool normalize, int32_t *idx,
                    float *weight, float *probs)
{
    memcpy(probs, logits, (size_t)e * sizeof *probs);
    ops_softmax(probs, e);
    /* Selection by repeated scan: e is small (<= a few hundred) and k <= e.  Strictly
     * greater wins, so among equal probabilities the lower expert index comes first. */
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t i = 0; i < e; i++) {
            bool taken = false;
            for (int64_t t = 0; t < j; t++)
                if (idx[t] == (int32_t)i) {
                    taken = true;
                    break;
                }
            if (!taken && (best < 0 || probs[i] > probs[best]))
                best = i;
        }
        idx[j] = (int32_t)best;
        weight[j] = probs[best];
    }
    if (normalize) {
        float sum = 0.0f;
        for (int64_t j = 0; j < k; j++)
            sum += weight[j];
        for (int64_t j = 0; j < k; j++)
            weight[j] = weight[j] / sum;
    }
}

int64_t ops_argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

uint64_t ops_touch_read(const void *p, size_t bytes)
{
    if (ops_simd_enabled())
        return ops_avx2_touch_read(p, bytes);
    const uint8_t *b = p;
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t v;
        memcpy(&v, b + i, 8);
        acc ^= v;
    }
    for (; i < bytes; i++)
        acc ^= b[i];
    return acc;
}
