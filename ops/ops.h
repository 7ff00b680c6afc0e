/* ops: the CPU kernels of the Qwen3-MoE forward pass.  Plain functions over pointers and
 * sizes: they know nothing about configs, files, threads or the schedule.  The caller
 * (the CPU backend) splits work between threads by output ranges; a kernel never reduces
 * across a range it was not given.
 *
 * Determinism by construction.  Every reduction has ONE order, fixed by the data's shape
 * and never by thread count, batch size, prefill chunking or instruction set:
 *   dot(a, b, K): 32 accumulators, chain c (0..3) x lane j (0..7); accumulator (c, j)
 *   sums a[k]*b[k] with fused multiply-adds over k = 32i + 8c + j, i = 0, 1, ... in order
 *   (a tail is zero-padded to a multiple of 32); then v[j] = (c0[j] + c1[j]) + (c2[j] +
 *   c3[j]) and the 8 lanes are summed as ((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7)).
 * Four chains let one weight row stream at full memory speed (decode is bandwidth-bound)
 * while each output keeps a single, fixed summation tree.  The AVX2 kernels and the
 * portable scalar kernels follow this order exactly, so they give bit-identical results (a
 * test proves it); a decode step (one row) and a prefill row use the same per-element
 * arithmetic.  A softmax denominator is the canonical dot of the exponentials with ones;
 * attention's weighted sum of V and the top-k combine run sequentially in index order.
 * Exponentials use ops_expf, moert's own (a fixed polynomial evaluated the same way in
 * both kernel families), so they do not depend on the libm or on vectorisation.
 */
#ifndef MOERT_OPS_H
#define MOERT_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Weight element types.  The block-quantized ones are laid out exactly as ggml defines
 * them (ggml-common.h's block_q8_0, block_q4_K, ...): a row of k elements is k / block
 * consecutive blocks, and every block is dequantized exactly to the float32 values that
 * gguf-py's `gguf.quants.dequantize` gives (same IEEE operations, same order). */
typedef enum ops_dtype {
    OPS_F32 = 0, OPS_BF16 = 1, OPS_F16 = 2,
    OPS_Q4_0, OPS_Q5_0, OPS_Q8_0, /* blocks of 32 */
    OPS_Q4_K, OPS_Q5_K, OPS_Q6_K, /* blocks of 256 (QK_K) */
    OPS_DTYPE_COUNT
} ops_dtype;

/* Bytes of one element of a plain type (F32, BF16, F16); 0 for block types. */
size_t ops_dtype_size(ops_dtype t);
/* Elements per block (1 for plain types) and bytes per block (the element size for plain
 * types): the one table of block layouts in moert. */
int64_t ops_dtype_block_elems(ops_dtype t);
size_t ops_dtype_block_bytes(ops_dtype t);
/* Bytes of a row of k elements (k a multiple of the block); 0 when k is not. */
size_t ops_row_bytes(ops_dtype t, int64_t k);
const char *ops_dtype_name(ops_dtype t); /* "F32", "Q4_K", ... */

/* Selects the kernel family: true = the widest this CPU runs (default), false = the
 * portable scalar kernels.  Results are identical either way. */
void ops_use_simd(bool on);
bool ops_simd_available(void);
bool ops_simd_enabled(void);

/* The kernel levels, each bit-identical to the scalar one: AVX2/FMA/F16C, and AVX-512
 * (AVX2 plus 512-bit decode GEMVs for block-quantized weights, where 256-bit arithmetic
 * cannot keep up with memory).  ops_set_level clamps to what the CPU has. */
typedef enum ops_level { OPS_LEVEL_SCALAR = 0, OPS_LEVEL_AVX2 = 1, OPS_LEVEL_AVX512 = 2 } ops_level;
ops_level ops_level_available(void);
ops_level ops_level_current(void);
void ops_set_level(ops_level l);
const char *ops_level_name(ops_level l); /* "scalar", "avx2", "avx512" */

/* Element conversions (exact: bf16 and f16 widen to f32 without rounding). */
float ops_bf16_to_f32(uint16_t h);
float ops_f16_to_f32(uint16_t h);
/* Converts n elements of type t starting at src into dst.  For a block type src is at a
 * block boundary and n a multiple of the block; the elements of a trailing partial block
 * come out NaN (refused, never misread).  Block types are dequantized exactly: Q8_0
 * q * d; Q4_0 d * (q - 8); Q5_0 d * (q - 16); Q4_K, Q5_K (d * sc) * q - (dmin * m) per
 * sub-block of 32; Q6_K (d * sc) * (q - 32) per sub-block of 16 (d, dmin f16; each
 * product and difference one float32 rounding, in gguf-py's order). */
void ops_to_f32(float *dst, const void *src, ops_dtype t, int64_t n);

/* dot(a, b, K) in the canonical order above, b of type bt.  A block-quantized b gives
 * exactly the canonical dot of a with b dequantized by ops_to_f32 (a quant block of 32 is
 * one 32-element step of the order); K must then be a multiple of the block, else NaN. */
float ops_dot(const float *a, const void *b, ops_dtype bt, int64_t k);

/* Encodes k floats (finite; k a multiple of the block) as a row of type t: any type, plain
 * (F32 copied, F16 and BF16 rounded to nearest even) or block-quantized (a simple valid
 * encoding: Q8_0 max-abs / 127; Q4_0, Q5_0 the signed max / -8, -16; Q4_K, Q5_K each
 * sub-block's [min(0, lo), hi] range with 6-bit scales and mins; Q6_K signed int8 scales
 * of each sub-block's max / -32 -- not llama.cpp's error-minimising search).  Writes
 * ops_row_bytes(t, k) bytes and returns that count; 0 (nothing written) when k is not
 * a multiple of the block or t is unknown.  For synthetic models and tests. */
size_t ops_quantize_row(void *dst, const float *src, ops_dtype t, int64_t k);

/* Rounds n floats in place to the nearest value of t (BF16 or F16; round to nearest even,
 * f16 overflow to inf, NaN stays NaN), exactly as ops_quantize_row encodes them; any other
 * t leaves x as it is.  Element by element: the precision simulation of `--sim-precision`. */
void ops_round_to(float *x, int64_t n, ops_dtype t);

/* Matrix product against a row-major weight matrix w [N, K] (PyTorch Linear layout):
 *   out[m * ldo + n] = dot(x_rows[m], w[n], K)   for m in [0, M), n in [n0, n1).
 * x_rows[m] points at row m of the input (rows may be scattered: MoE gathers tokens this
 * way without copying).  `panel` is caller scratch of ops_matmul_panel_floats(K) floats
 * (64-byte aligned) used to widen a block of weight rows once for all M rows.
 * Block-quantized w: row n starts at w + n * ops_row_bytes(wt, K) (no alignment needed);
 * K must be a multiple of the block (else every output is NaN).  M == 1 streams the
 * quantized rows and dequantizes in registers (panel unused, may be NULL); M > 1 widens
 * panels of OPS_PANEL_ROWS rows exactly to f32 (without a panel: one fused dot per row). */
void ops_matmul(float *out, int64_t ldo, const float *const *x_rows, int64_t m,
                const void *w, ops_dtype wt, int64_t k, int64_t n0, int64_t n1, float *panel);
size_t ops_matmul_panel_floats(int64_t k);
#define OPS_PANEL_ROWS 16 /* weight rows widened per panel */

/* ---- activation-quantized products (runtime.numerics: act-q8) -------------------------
 * An opt-in second numerics for block-quantized weights, as llama.cpp's CPU kernels do it:
 * the input row is quantized to int8, multiplied with the weight quants in exact integer
 * arithmetic, and the scales are combined in float in one fixed order.  Every step is
 * defined below, so the scalar and the SIMD kernels agree bit for bit and the result does
 * not depend on threads, chunking or batch: only the numbers differ from exact mode.
 *
 * ops_qact_row quantizes a row x of k floats (k a multiple of 32) in two forms:
 *   A: blocks of 32 (for Q8_0, Q4_0, Q5_0 weights), B: blocks of 256 (K-quants; only when
 *   k is a multiple of 256).  Per block: amax = max |x_i|; amax < 2^-100 gives d = 0 and
 *   q = 0; otherwise d = amax / 127 and q_i = rne(x_i * (127 / amax)) clamped to [-127, 127]
 *   (each a float32 operation).  A block holding NaN or Inf gets d = NaN and q = 0, so its
 *   outputs come out NaN.  Form A keeps each block's sum of q, form B the sum of each 16.
 * ops_matmul_qact: out[m * ldo + n] = qdot(qrows[m], w[n]) for the rows of ops_matmul,
 * w block-quantized (plain types are not taken: every output NaN).  qdot:
 *   Q8_0, Q4_0, Q5_0 (form A): per block b, i_b = sum of (signed weight quant) * q, exact;
 *     f = fmaf((float)i_b, dw_b * da_b, acc[l]) into accumulator l = 4 (b % 4) + (b % 16) / 4
 *     of 16; then v[j] = acc[j] + acc[j + 8] and the canonical lane tree of ops.h.
 *   Q4_K, Q5_K (form B): per super-block, i = sum over sub-blocks s of sc_s * sum q_w * q,
 *     m = sum of mn_s * (sum of q over s), exact; t = (d * da) * (float)i - (dmin * da) *
 *     (float)m; Q6_K: i = sum over the 16 sub-blocks of sc_j * sum (q_w - 32) * q,
 *     t = (d * da) * (float)i; then acc = acc + t in super-block order from 0.
 * Each product, difference and sum above is one float32 rounding (never fused). */
size_t ops_qact_row_bytes(int64_t k); /* bytes of one quantized row (a 64-multiple); 0 if k % 32 */
/* Room for one quantized row of any width up to k (k rounded up to whole 32-blocks); 0 if k <= 0. */
size_t ops_qact_bound_bytes(int64_t k);
void ops_qact_row(void *dst, const float *x, int64_t k);
void ops_matmul_qact(float *out, int64_t ldo, const void *const *qrows, int64_t m, const void *w,
                     ops_dtype wt, int64_t k, int64_t n0, int64_t n1);
/* The kernel family ops_matmul_qact uses: "avx512-vnni", or "scalar" (also at the AVX2
 * level: no 256-bit twin yet). */
const char *ops_qact_kernels(void);

/* RMSNorm of one row: out = w * (x * 1/sqrt(mean(x^2) + eps)); w of type wt, n elements.
 * wt must be a plain type (F32, BF16, F16: GGUF keeps norms in F32); a block type is
 * refused loudly, every output NaN (the model binding rejects such a file first).
 * out may alias x. */
void ops_rmsnorm(float *out, const float *x, const void *w, ops_dtype wt, int64_t n, float eps);

/* Rotary embedding, Qwen3's rotate-half form, on one head vector of length hd:
 *   x[i]      = x[i] * cos[i] - x[i+hd/2] * sin[i]
 *   x[i+hd/2] = x[i+hd/2] * cos[i] + x[i] * sin[i]        for i < hd/2.
 * cos/sin hold hd/2 values for the position. */
void ops_rope(float *x, const float *cos_row, const float *sin_row, int64_t hd);

/* RoPE tables for positions [0, n_pos): cos[p*hd/2 + i], sin[...] with
 * inv_freq[i] = 1 / theta^(2i/hd) computed in float and the angle p * inv_freq[i] in float,
 * as HF does, then cos/sin evaluated in double and rounded to float. */
void ops_rope_table(float *cos_tab, float *sin_tab, int64_t n_pos, int64_t hd, double theta);

/* e^x in float: Cody-Waite range reduction and a degree-6 polynomial, every step a fixed
 * IEEE operation, so the scalar and AVX2 kernels agree bit for bit (within ~2 ulp of the
 * true value).  Returns +inf above 88.376, 0 below -87.337, NaN for NaN. */
float ops_expf(float x);

/* Causal attention for one query head at position `pos` (keys 0..pos inclusive):
 *   s[j] = dot(q, k_j) * scale; p = softmax(s); out = sum_j p[j] * v_j (sequential in j).
 * Key/value rows are at k_cache + j*kv_stride and v_cache + j*kv_stride (f32).
 * `scores` is scratch of at least pos+1 floats. */
void ops_attention_head(float *out, const float *q, const float *k_cache, const float *v_cache,
                        int64_t kv_stride, int64_t pos, int64_t hd, float scale, float *scores);

/* Causal attention for g query heads sharing one KV head (grouped-query attention): the
 * same results as g calls of ops_attention_head, reading the KV cache once.  Query head i
 * is at q + i*q_stride, its output at out + i*out_stride; scores holds g*(pos+1) floats. */
void ops_attention_group(float *out, int64_t out_stride, const float *q, int64_t q_stride,
                         int64_t g, const float *k_cache, const float *v_cache,
                         int64_t kv_stride, int64_t pos, int64_t hd, float scale, float *scores);

/* out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).  out may alias gate. */
void ops_swiglu(float *out, const float *gate, const float *up, int64_t n);

/* x[i] += y[i] */
void ops_add(float *x, const float *y, int64_t n);

/* out[i] = sum_j w[j] * rows[j][i], j = 0..n_rows-1 in order (first term w[0]*rows[0][i],
 * then fused multiply-adds). */
void ops_weighted_sum(float *out, const float *const *rows, const float *w, int64_t n_rows,
                      int64_t n);

/* In-place softmax of n values (max-subtracted, ops_expf, canonical sum, division). */
void ops_softmax(float *x, int64_t n);

/* Router: probs = softmax(logits[E]) then the k largest (ties -> lower expert index), in
 * descending order, into idx[k] and weight[k]; when normalize, weights are divided by their
 * sequential sum.  `probs` is scratch of E floats. */
void ops_topk_route(const float *logits, int64_t e, int64_t k, bool normalize, int32_t *idx,
                    float *weight, float *probs);

/* Reads every byte of [p, p + bytes) with wide loads and returns a checksum (so the reads
 * cannot be optimised away): the memory-bandwidth probe of `moert bench`, and the way to
 * fault weights in before timing. */
uint64_t ops_touch_read(const void *p, size_t bytes);

/* Index of the largest value (lowest index among ties). */
int64_t ops_argmax(const float *x, int64_t n);

#endif
