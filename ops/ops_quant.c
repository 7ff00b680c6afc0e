/* ops: block-quantized weights, portable half.  Dequantization mirrors gguf-py's numpy
 * `gguf.quants.dequantize` (gguf-py/gguf/quants.py, llama.cpp b10573) operation by
 * operation in float32: each product and difference below is one IEEE operation, in the
 * order numpy evaluates it, so every weight is bit-exactly numpy's value (-ffp-contract=off
 * keeps the compiler from fusing).  The encoder (ops_quantize_row) is moert's own simple
 * one: valid blocks, not llama.cpp's error-optimal search. */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "ops_impl.h"

static inline uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static inline uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void ops_q_dequant_block(float *y, const uint8_t *b, ops_dtype t)
{
    switch (t) {
    case OPS_Q8_0: { /* x * d */
        float d = ops_f16_to_f32(rd16(b));
        for (int i = 0; i < 32; i++)
            y[i] = (float)(int8_t)b[2 + i] * d;
        break;
    }
    case OPS_Q4_0: { /* d * (q - 8); elements 0-15 low nibbles, 16-31 high nibbles */
        float d = ops_f16_to_f32(rd16(b));
        for (int i = 0; i < 32; i++)
            y[i] = d * (float)(((b[2 + i % 16] >> (4 * (i / 16))) & 15) - 8);
        break;
    }
    case OPS_Q5_0: { /* d * ((ql | qh bit i << 4) - 16) */
        float d = ops_f16_to_f32(rd16(b));
        uint32_t qh = rd32(b + 2);
        for (int i = 0; i < 32; i++) {
            int q = ((b[6 + i % 16] >> (4 * (i / 16))) & 15) | (int)((qh >> i) & 1) << 4;
            y[i] = d * (float)(q - 16);
        }
        break;
    }
    case OPS_Q4_K:
    case OPS_Q5_K: { /* per sub-block s: (d * sc) * q - (dmin * m) */
        float d = ops_f16_to_f32(rd16(b)), dmin = ops_f16_to_f32(rd16(b + 2));
        uint8_t sc[8], mn[8];
        ops_kq_scale_min(b + 4, sc, mn);
        const uint8_t *qh = b + 16, *qs = t == OPS_Q5_K ? b + 48 : b + 16;
        for (int s = 0; s < 8; s++) {
            float ds = d * (float)sc[s], dm = dmin * (float)mn[s];
            for (int e = 0; e < 32; e++) {
                int q = (qs[32 * (s / 2) + e] >> (4 * (s % 2))) & 15;
                if (t == OPS_Q5_K)
                    q |= ((qh[e] >> s) & 1) << 4;
                y[32 * s + e] = ds * (float)q - dm;
            }
        }
        break;
    }
    case OPS_Q6_K: { /* (d * sc[e / 16]) * (q - 32) */
        const uint8_t *ql = b, *qh = b + 128;
        float d = ops_f16_to_f32(rd16(b + 208));
        for (int e = 0; e < 256; e++) {
            int h = e / 128, tq = e % 128 / 32, l = e % 32;
            int lo = (ql[64 * h + 32 * (tq & 1) + l] >> (4 * (tq >> 1))) & 15;
            int hi = (qh[32 * h + l] >> (2 * tq)) & 3;
            float dsc = d * (float)(int8_t)b[192 + e / 16];
            y[e] = dsc * (float)((lo | hi << 4) - 32);
        }
        break;
    }
    default: break;
    }
}

float ops_q_scalar_dot(const float *a, const uint8_t *b, ops_dtype t, int64_t k)
{
    int64_t be = ops_dtype_block_elems(t);
    size_t bb = ops_dtype_block_bytes(t);
    float w[256], acc[OPS_CHAINS][8] = {{0}};
    for (int64_t i0 = 0; i0 < k; i0 += be) {
        ops_q_dequant_block(w, b + (size_t)(i0 / be) * bb, t);
        for (int64_t s = 0; s < be; s += OPS_STEP)
            for (int c = 0; c < OPS_CHAINS; c++)
                for (int j = 0; j < 8; j++)
                    acc[c][j] = fmaf(a[i0 + s + 8 * c + j], w[s + 8 * c + j], acc[c][j]);
    }
    float lane[8];
    for (int j = 0; j < 8; j++)
        lane[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    return ops_lanes_sum(lane);
}

/* ---- encoder ---------------------------------------------------------------------- */

/* f32 -> f16, round to nearest even; overflow gives inf, NaN stays NaN. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)(x >> 16 & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) /* 65520 and above round to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below 2^-14: an f16 subnormal or zero */
        if (a <= 0x33000000u) /* at most 2^-25: rounds to zero (2^-25 ties to even 0) */
            return sign;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23);
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1)))
            h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = (a - 0x38000000u) >> 13, rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++; /* a carry into the exponent is the right result */
    return (uint16_t)(sign | h);
}

/* f32 -> bf16, round to nearest even; NaN kept quiet. */
static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    return (x & 0x7fffffffu) > 0x7f800000u ? (uint16_t)(x >> 16 | 0x40u)
                                           : (uint16_t)((x + 0x7fffu + (x >> 16 & 1)) >> 16);
}

void ops_round_to(float *x, int64_t n, ops_dtype t)
{
    if (t == OPS_BF16) {
        for (int64_t i = 0; i < n; i++)
            x[i] = ops_bf16_to_f32(f32_to_bf16(x[i]));
    } else if (t == OPS_F16) {
        for (int64_t i = 0; i < n; i++)
            x[i] = ops_f16_to_f32(f32_to_f16(x[i]));
    }
}

/* A block scale as f16: finite (saturated at 65504) so a huge block stays decodable. */
static uint16_t scale_f16(float d)
{
    uint16_t h = f32_to_f16(d);
    return (h & 0x7c00u) == 0x7c00u ? (uint16_t)((h & 0x8000u) | 0x7bffu) : h;
}

static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* round(v) clamped to [lo, hi]; NaN -> lo (the encoder's inputs are meant to be finite). */
static int qround(float v, int lo, int hi)
{
    if (!(v >= (float)lo))
        return lo;
    if (v > (float)hi)
        return hi;
    return (int)lrintf(v);
}

static float finite_or_zero(float v)
{
    return isfinite(v) ? v : 0.0f;
}

/* The element of largest magnitude, with its sign (first among equals). */
static float signed_absmax(const float *x, int n)
{
    float mx = 0.0f, amx = 0.0f;
    for (int i = 0; i < n; i++) {
        float v = finite_or_zero(x[i]);
        if (fabsf(v) > amx) {
            amx = fabsf(v);
            mx = v;
        }
    }
    return mx;
}

/* Q4_0 / Q5_0: d = max / -2^(bits-1), so the largest-magnitude element is exactly
 * representable (q = 0); q = round(x / d) + offset, clamped. */
static void enc_q_0(uint8_t *b, const float *x, int bits)
{
    int off = 1 << (bits - 1), top = (1 << bits) - 1;
    uint16_t h = scale_f16(signed_absmax(x, 32) / (float)-off);
    float d = ops_f16_to_f32(h), id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, h);
    uint8_t *qs = b + (bits == 5 ? 6 : 2);
    uint32_t qh = 0;
    memset(qs, 0, 16);
    for (int i = 0; i < 32; i++) {
        int q = qround(finite_or_zero(x[i]) * id + (float)off, 0, top);
        qs[i % 16] |= (uint8_t)((q & 15) << (4 * (i / 16)));
        qh |= (uint32_t)(q >> 4 & 1) << i;
    }
    if (bits == 5)
        for (int i = 0; i < 4; i++)
            b[2 + i] = (uint8_t)(qh >> (8 * i));
}

static void enc_q8_0(uint8_t *b, const float *x)
{
    uint16_t h = scale_f16(fabsf(signed_absmax(x, 32)) / 127.0f);
    float d = ops_f16_to_f32(h), id = d != 0.0f ? 1.0f / d : 0.0f;
    wr16(b, h);
    for (int i = 0; i < 32; i++)
        b[2 + i] = (uint8_t)(int8_t)qround(finite_or_zero(x[i]) * id, -127, 127);
}

/* Q4_K / Q5_K: each sub-block of 32 covers [min(0, lo), hi] with 2^bits - 1 steps; the
 * sub-block steps and offsets are then quantized to 6 bits against the super-block's d
 * and dmin, and each element takes the nearest level of the stored (decoded) parameters. */
static void enc_kq(uint8_t *b, const float *x, int bits)
{
    int top = (1 << bits) - 1;
    float step[8], off[8], mstep = 0.0f, moff = 0.0f;
    for (int s = 0; s < 8; s++) {
        float lo = 0.0f, hi = 0.0f;
        for (int e = 0; e < 32; e++) {
            float v = finite_or_zero(x[32 * s + e]);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        step[s] = (hi - lo) / (float)top;
        off[s] = -lo;
        mstep = step[s] > mstep ? step[s] : mstep;
        moff = off[s] > moff ? off[s] : moff;
    }
    uint16_t hd = scale_f16(mstep / 63.0f), hm = scale_f16(moff / 63.0f);
    float d = ops_f16_to_f32(hd), dmin = ops_f16_to_f32(hm);
    wr16(b, hd);
    wr16(b + 2, hm);
    uint8_t sc[8], mn[8];
    for (int s = 0; s < 8; s++) {
        sc[s] = (uint8_t)(d > 0.0f ? qround(step[s] / d, 0, 63) : 0);
        mn[s] = (uint8_t)(dmin > 0.0f ? qround(off[s] / dmin, 0, 63) : 0);
    }
    uint8_t *s12 = b + 4;
    for (int j = 0; j < 4; j++) {
        s12[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
        s12[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
        s12[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
    }
    uint8_t *qh = b + 16, *qs = bits == 5 ? b + 48 : b + 16;
    if (bits == 5)
        memset(qh, 0, 32);
    memset(qs, 0, 128);
    for (int s = 0; s < 8; s++) {
        float ds = d * (float)sc[s], dm = dmin * (float)mn[s]; /* as the decoder forms them */
        float id = ds > 0.0f ? 1.0f / ds : 0.0f;
        for (int e = 0; e < 32; e++) {
            int q = qround((finite_or_zero(x[32 * s + e]) + dm) * id, 0, top);
            qs[32 * (s / 2) + e] |= (uint8_t)((q & 15) << (4 * (s % 2)));
            if (bits == 5)
                qh[e] |= (uint8_t)((q >> 4 & 1) << s);
        }
    }
}

/* Q6_K: each sub-block of 16 gets scale max / -32 (its largest-magnitude element exact at
 * q - 32 = -32); those scales are quantized to int8 against d = (largest) / -128, so scales
 * of either sign occur; elements take the nearest level of the decoded d * sc. */
static void enc_q6_k(uint8_t *b, const float *x)
{
    float sub[16], big = 0.0f;
    for (int j = 0; j < 16; j++) {
        sub[j] = signed_absmax(x + 16 * j, 16) / -32.0f;
        big = fabsf(sub[j]) > fabsf(big) ? sub[j] : big;
    }
    uint16_t hd = scale_f16(big / -128.0f);
    float d = ops_f16_to_f32(hd);
    wr16(b + 208, hd);
    float dsc[16];
    for (int j = 0; j < 16; j++) {
        int8_t sc = (int8_t)(d != 0.0f ? qround(sub[j] / d, -128, 127) : 0);
        b[192 + j] = (uint8_t)sc;
        dsc[j] = d * (float)sc;
    }
    uint8_t *ql = b, *qh = b + 128;
    memset(b, 0, 192);
    for (int e = 0; e < 256; e++) {
        float id = dsc[e / 16] != 0.0f ? 1.0f / dsc[e / 16] : 0.0f;
        int q = qround(finite_or_zero(x[e]) * id, -32, 31) + 32;
        int h = e / 128, tq = e % 128 / 32, l = e % 32;
        ql[64 * h + 32 * (tq & 1) + l] |= (uint8_t)((q & 15) << (4 * (tq >> 1)));
        qh[32 * h + l] |= (uint8_t)((q >> 4) << (2 * tq));
    }
}

size_t ops_quantize_row(void *dst, const float *src, ops_dtype t, int64_t k)
{
    size_t rb = ops_row_bytes(t, k);
    if (rb == 0)
        return 0;
    uint8_t *out = dst;
    if (t == OPS_F32) {
        memcpy(out, src, rb);
        return rb;
    }
    if (t == OPS_F16 || t == OPS_BF16) {
        for (int64_t i = 0; i < k; i++) {
            uint16_t h;
            h = t == OPS_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
            wr16(out + 2 * i, h);
        }
        return rb;
    }
    int64_t be = ops_dtype_block_elems(t);
    size_t bb = ops_dtype_block_bytes(t);
    for (int64_t i = 0; i < k / be; i++) {
        uint8_t *b = out + (size_t)i * bb;
        const float *x = src + i * be;
        switch (t) {
        case OPS_Q4_0: enc_q_0(b, x, 4); break;
        case OPS_Q5_0: enc_q_0(b, x, 5); break;
        case OPS_Q8_0: enc_q8_0(b, x); break;
        case OPS_Q4_K: enc_kq(b, x, 4); break;
        case OPS_Q5_K: enc_kq(b, x, 5); break;
        case OPS_Q6_K: enc_q6_k(b, x); break;
        default: return 0;
        }
    }
    return rb;
}
