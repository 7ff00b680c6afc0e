/* qact: the act-q8 kernels of the HIP backend (contracts in hip_qact.h).
 *
 * The quantizer's formulas (qa_scale, qa_quant) and the integer dot of one 8-element chunk
 * (qa_dot8, on the weight loaders' registers: hip_wload.h's W8) are __host__ __device__, so
 * the host self-test (backend_hip_qact_selftest) runs the very code the kernels inline:
 * quantized rows equal ops_qact_row byte for byte, and the products agree with
 * ops_matmul_qact within float rounding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_kernels.h"
#include "hip_wload.h"
#include "hip_devmath.h"
#include "hip_qact.h"

/* Kernels that read, before their PDL wait, only what no kernel of the step writes (here:
 * weights) begin with this marker instead of the wait (tools/check-pdl.sh). */
#define PDL_EARLY_READS

#define QDEV static __device__ __forceinline__
#define QA_THREADS 256 /* quantizer: one 256-element block per thread block */
#define QG_T 128       /* GEMV threads (as kernels.hip's streaming GEMV) */
#define QMAX_WARPS 32
#define QA_TINY 0x1p-100f /* ops_impl.h's OPS_QACT_TINY */

/* ---- the quantizer's formulas (ops.h: "ops_qact_row") ---------------------------------- */

/* A block's scale: NaN when it holds a NaN or Inf, 0 when its largest magnitude is tiny. */
WHD float qa_scale(float amax, bool bad)
{
    if (bad)
        return u2f(0x7fc00000u); /* the NAN of the CPU's quantizer */
    if (amax < QA_TINY)
        return 0.0f;
    return amax / 127.0f;
}

/* x's quant in a block of largest finite magnitude amax: rne(x * (127 / amax)), clamped. */
WHD int qa_quant(float x, float amax, bool bad)
{
    if (bad || amax < QA_TINY)
        return 0;
    const float v = rintf(wl_mul(x, 127.0f / amax)); /* the default rounding: nearest even */
    return v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v;
}

/* ---- the integer dot of one chunk -------------------------------------------------------
 * acc + (the chunk's 8 weights) . (its 8 activation quants x0, x1), given the activation
 * block's scale da.  The signed weight quants are formed per byte: q - o as
 * ((q + 128 - o) ^ 0x80) for the offset o of the type (8, 16, 32), no carries across bytes. */
template <int DT> WHD float qa_dot8(const W8<DT> &w, unsigned x0, unsigned x1, float da, float acc)
{
    constexpr int BASE = dt_base<DT>::v; /* an X4 type has its base's registers */
    if constexpr (BASE == HIP_DT_Q8_0) {
        int s = moert_dp4a((int)w.q.x, (int)x0, 0);
        s = moert_dp4a((int)w.q.y, (int)x1, s);
        return fmaf((float)s, wl_mul(scale_f16(w.d), da), acc);
    } else if constexpr (DT == HIP_DT_Q4_0 || DT == HIP_DT_Q5_0) {
        unsigned a = (w.q.x >> w.sh) & 0x0f0f0f0fu, b = (w.q.y >> w.sh) & 0x0f0f0f0fu;
        unsigned off = 0x78787878u;
        if constexpr (DT == HIP_DT_Q5_0) {
            a |= spread4(w.hb) << 4;
            b |= spread4(w.hb >> 4) << 4;
            off = 0x70707070u;
        }
        int s = moert_dp4a((int)((a + off) ^ 0x80808080u), (int)x0, 0);
        s = moert_dp4a((int)((b + off) ^ 0x80808080u), (int)x1, s);
        return fmaf((float)s, wl_mul(scale_f16(w.d), da), acc);
    } else if constexpr (BASE == HIP_DT_Q6_K) {
        const int shl = 4 * (w.tq >> 1), shh = 2 * w.tq;
        const unsigned a = q6_word(w.ql.x, w.qh.x, shl, shh), b = q6_word(w.ql.y, w.qh.y, shl, shh);
        int s = moert_dp4a((int)((a + 0x60606060u) ^ 0x80808080u), (int)x0, 0);
        s = moert_dp4a((int)((b + 0x60606060u) ^ 0x80808080u), (int)x1, s);
        return fmaf((float)(w.sc * s), wl_mul(scale_f16(w.d), da), acc);
    } else { /* Q4_K, Q5_K: (d sc) q - dmin mn per weight, so sc * (q . x) and mn * sum(x) */
        unsigned sc, mn;
        kq_scale(w.hdr.y, w.hdr.z, w.hdr.w, w.s, sc, mn);
        const int sh = 4 * (w.s & 1);
        unsigned a = (w.q.x >> sh) & 0x0f0f0f0fu, b = (w.q.y >> sh) & 0x0f0f0f0fu;
        if constexpr (DT == HIP_DT_Q5_K) {
            a |= ((w.qh.x >> w.s) & 0x01010101u) << 4;
            b |= ((w.qh.y >> w.s) & 0x01010101u) << 4;
        }
        int s = moert_dp4a((int)a, (int)x0, 0);
        s = moert_dp4a((int)b, (int)x1, s);
        int xs = moert_dp4a(0x01010101, (int)x0, 0);
        xs = moert_dp4a(0x01010101, (int)x1, xs);
        acc = fmaf((float)((int)sc * s), wl_mul(scale_f16(w.hdr.x & 0xffffu), da), acc);
        return fmaf(-(float)((int)mn * xs), wl_mul(scale_f16(w.hdr.x >> 16), da), acc);
    }
}

/* K-quants take the 256-blocks of a quantized row, the others the 32-blocks. */
template <int DT> struct qa_form {
    static const bool kq = DT == HIP_DT_Q4_K || DT == HIP_DT_Q5_K || dt_base<DT>::v == HIP_DT_Q6_K;
};
/* The chunk c's 8 quants and its block's scale in quantized row xq of k. */
template <int DT> WHD void qa_chunk(const unsigned char *xq, long long k, long long c, unsigned &x0, unsigned &x1,
                                    float &da)
{
    const hip_qa_offsets o = hip_qa_at(k);
    const unsigned char *p = xq + (qa_form<DT>::kq ? o.q256 : o.q32) + c * 8;
    uint2 v;
    memcpy(&v, p, sizeof v);
    x0 = v.x;
    x1 = v.y;
    const float *d = (const float *)(xq + (qa_form<DT>::kq ? o.d256 : o.d32));
    da = d[qa_form<DT>::kq ? c / 32 : c / 4];
}

/* ---- the quantizer kernel: block = (256 elements, row) ---------------------------------- */

QDEV float qmax32(float v) /* lanes of one 32-block (xor masks below 32: also on wave64) */
{
#pragma unroll
    for (int m = 1; m < 32; m <<= 1)
        v = fmaxf(v, moert_shfl_xor(v, m));
    return v;
}
template <int N> QDEV int qsum(int v) /* the sum over N consecutive lanes */
{
#pragma unroll
    for (int m = 1; m < N; m <<= 1)
        v += moert_shfl_xor(v, m);
    return v;
}

__global__ void __launch_bounds__(QA_THREADS) k_qact(hip_qact_args a)
{
    moert_pdl_wait();
    __shared__ float s_amax[QA_THREADS / 32];
    __shared__ int s_bad[QA_THREADS / 32];
    const int t = threadIdx.x, g = t / 32, l = t % 32;
    const long long r = blockIdx.y, e = (long long)blockIdx.x * QA_THREADS + t;
    const bool in = e < a.k; /* uniform per 32 lanes: k % 32 == 0 */
    const hip_qa_offsets o = hip_qa_at(a.k);
    unsigned char *q = a.q + r * a.qb;
    const float v = in ? a.x[r * a.ldx + e] : 0.0f;
    const int badv = in && !isfinite(v);
    const float am = qmax32(badv ? 0.0f : fabsf(v)); /* the largest finite magnitude */
    const int bad = qsum<32>(badv) != 0;
    if (in) {
        const int qi = qa_quant(v, am, bad);
        q[o.q32 + e] = (unsigned char)(signed char)qi;
        const int bs = qsum<32>(qi);
        if (l == 0) {
            ((float *)(q + o.d32))[e / 32] = qa_scale(am, bad);
            ((int32_t *)(q + o.bs32))[e / 32] = bs;
        }
    }
    if (a.k % 256)
        return;
    if (l == 0) {
        s_amax[g] = am;
        s_bad[g] = bad;
    }
    __syncthreads();
    float am2 = s_amax[0];
    int bad2 = s_bad[0];
#pragma unroll
    for (int i = 1; i < QA_THREADS / 32; i++) {
        am2 = fmaxf(am2, s_amax[i]);
        bad2 |= s_bad[i];
    }
    const int q2 = qa_quant(v, am2, bad2 != 0);
    q[o.q256 + e] = (unsigned char)(signed char)q2;
    const int s16 = qsum<16>(q2);
    if (l % 16 == 0)
        ((int16_t *)(q + o.bs16))[e / 16] = (int16_t)s16;
    if (t == 0)
        ((float *)(q + o.d256))[e / 256] = qa_scale(am2, bad2 != 0);
}

/* ---- reductions (the streaming GEMV's: butterfly, then the warps in order) -------------- */

QDEV float qwarp_sum(float v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v += moert_shfl_xor(v, m);
    return v;
}
template <int R> QDEV void qreduce(float (&acc)[R], float (*red)[QMAX_WARPS])
{
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
#pragma unroll
    for (int i = 0; i < R; i++) {
        const float v = qwarp_sum(acc[i]);
        if (lane == 0)
            red[i][w] = v;
    }
    __syncthreads();
}
QDEV float qtotal(const float *red_row)
{
    const int nw = blockDim.x / MOERT_WARP;
    float s = red_row[0];
    for (int q = 1; q < nw; q++)
        s += red_row[q];
    return s;
}

template <int DT, int R, int CU>
QDEV void qg_load(W8<DT> (&wv)[CU][R], const unsigned char *const (&wr)[R], long long c0, long long nc)
{
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * QG_T;
#pragma unroll
        for (int i = 0; i < R; i++) {
            if (wr[i] && c < nc)
                wv[u][i].load_cs(wr[i], c * 8);
            else
                wv[u][i].zero();
        }
    }
}
template <int DT, int R, int CU>
QDEV void qg_dot(const W8<DT> (&wv)[CU][R], const unsigned char *xq, long long k, long long c0, long long nc,
                 float (&acc)[R])
{
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * QG_T;
        if (c < nc) {
            unsigned x0, x1;
            float da;
            qa_chunk<DT>(xq, k, c, x0, x1, da);
#pragma unroll
            for (int i = 0; i < R; i++)
                acc[i] = qa_dot8<DT>(wv[u][i], x0, x1, da, acc[i]);
        }
    }
}

/* ---- GEMV on quantized rows: block = (R output rows, input row) ------------------------- */
template <int DT>
QDEV const unsigned char *qg_row(const hip_qgemv_args &a, long long r)
{
    const long long rb = row_bytes_t<DT>(a.k);
    if (r < a.seg_end[0])
        return (const unsigned char *)a.w[0] + r * rb;
    if (r < a.seg_end[1])
        return (const unsigned char *)a.w[1] + (r - a.seg_end[0]) * rb;
    return (const unsigned char *)a.w[2] + (r - a.seg_end[1]) * rb;
}

template <int DT, int R, int CU>
__global__ void __launch_bounds__(QG_T) k_qgemv(hip_qgemv_args a)
{
    PDL_EARLY_READS;
    __shared__ float red[R][QMAX_WARPS];
    const long long nc = a.k / 8, r0 = (long long)blockIdx.x * R, m = blockIdx.y;
    const unsigned char *wr[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        wr[i] = r0 + i < a.n_total ? qg_row<DT>(a, r0 + i) : nullptr;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        acc[i] = 0.0f;
    W8<DT> wv[CU][R];
    long long c0 = threadIdx.x;
    qg_load<DT, R, CU>(wv, wr, c0, nc); /* weights only: nothing of the step writes them */
    moert_pdl_wait();
    const unsigned char *xq = a.xq + m * a.qb;
    for (;;) {
        qg_dot<DT, R, CU>(wv, xq, a.k, c0, nc, acc);
        c0 += (long long)CU * QG_T;
        if (c0 >= nc)
            break;
        qg_load<DT, R, CU>(wv, wr, c0, nc);
    }
    qreduce<R>(acc, red);
    if (threadIdx.x < R && r0 + threadIdx.x < a.n_total) {
        const float v = qtotal(red[threadIdx.x]);
        a.y[m * a.ldy + r0 + threadIdx.x] = v;
        if (a.y2 && m == 0)
            a.y2[r0 + threadIdx.x] = v;
    }
}

/* ---- expert FFN on quantized rows -------------------------------------------------------- */
QDEV int qsafe_expert(int32_t id, int E, int *err)
{
    if (id < 0 || id >= E) {
        *err = 3;
        return 0;
    }
    return id;
}

/* gate/up: block = (rows n0 .. n0 + R - 1, assignment p = t * K + j); h[p, n] = silu(gate) * up.
 * The expert id comes from the previous kernel, so every load waits. */
template <int DT, int R, int CU>
__global__ void __launch_bounds__(QG_T) k_qmoe_gateup(hip_qmoe_args a)
{
    moert_pdl_wait();
    __shared__ float red[2 * R][QMAX_WARPS];
    const long long p = blockIdx.y, n0 = (long long)blockIdx.x * R, nc = a.H / 8;
    const long long rb = row_bytes_t<DT>(a.H);
    const long long e = a.ids ? qsafe_expert(a.ids[p], a.E, a.err_flag) : 0;
    const unsigned char *xq = a.xq + (p / a.K) * a.qbx;
    const unsigned char *wr[2 * R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        const bool ok = n0 + i < a.I;
        wr[i] = ok ? (const unsigned char *)a.gate + e * a.estride_gu + (n0 + i) * rb : nullptr;
        wr[R + i] = ok ? (const unsigned char *)a.up + e * a.estride_gu + (n0 + i) * rb : nullptr;
    }
    float acc[2 * R];
#pragma unroll
    for (int i = 0; i < 2 * R; i++)
        acc[i] = 0.0f;
    W8<DT> wv[CU][2 * R];
    for (long long c0 = threadIdx.x; c0 < nc; c0 += (long long)CU * QG_T) {
        qg_load<DT, 2 * R, CU>(wv, wr, c0, nc);
        qg_dot<DT, 2 * R, CU>(wv, xq, a.H, c0, nc, acc);
    }
    qreduce<2 * R>(acc, red);
    if (threadIdx.x < R && n0 + threadIdx.x < a.I)
        a.h[p * a.I + n0 + threadIdx.x] = silu_mul(qtotal(red[threadIdx.x]), qtotal(red[R + threadIdx.x]));
}

/* down: block = (output row i, token t); warp w takes slots w, w + 4, ... (SPW at a time),
 * lane l the chunks l, l + WARP, ... (CPL at a time) of each; each slot's dot is its warp's
 * butterfly, then thread 0 combines the slots in slot order. */
#define QD_SPW 2
#define QD_CPL 3
template <int DT>
__global__ void __launch_bounds__(QG_T) k_qmoe_down(hip_qmoe_args a)
{
    moert_pdl_wait();
    extern __shared__ float qdots[]; /* [K] */
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long i = blockIdx.x, t = blockIdx.y, nc = a.I / 8, rb = row_bytes_t<DT>(a.I);
    for (int j0 = w; j0 < a.K; j0 += nw * QD_SPW) {
        const unsigned char *wr[QD_SPW][1];
        const unsigned char *hq[QD_SPW];
        float acc[QD_SPW];
#pragma unroll
        for (int s = 0; s < QD_SPW; s++) {
            const int j = j0 + s * nw;
            const bool okj = j < a.K;
            const long long pa = t * a.K + (okj ? j : 0);
            const long long e = okj && a.ids ? qsafe_expert(a.ids[pa], a.E, a.err_flag) : 0;
            hq[s] = a.hq + pa * a.qbh;
            wr[s][0] = okj ? (const unsigned char *)a.down + e * a.estride_d + i * rb : nullptr;
            acc[s] = 0.0f;
        }
        for (long long c0 = lane; c0 < nc; c0 += (long long)QD_CPL * MOERT_WARP) {
            W8<DT> wv[QD_SPW][QD_CPL];
#pragma unroll
            for (int s = 0; s < QD_SPW; s++)
#pragma unroll
                for (int m = 0; m < QD_CPL; m++) {
                    const long long c = c0 + (long long)m * MOERT_WARP;
                    if (wr[s][0] && c < nc)
                        wv[s][m].load_cs(wr[s][0], c * 8);
                    else
                        wv[s][m].zero();
                }
#pragma unroll
            for (int s = 0; s < QD_SPW; s++)
#pragma unroll
                for (int m = 0; m < QD_CPL; m++) {
                    const long long c = c0 + (long long)m * MOERT_WARP;
                    if (c >= nc || !wr[s][0])
                        continue;
                    unsigned x0, x1;
                    float da;
                    qa_chunk<DT>(hq[s], a.I, c, x0, x1, da);
                    acc[s] = qa_dot8<DT>(wv[s][m], x0, x1, da, acc[s]);
                }
        }
#pragma unroll
        for (int s = 0; s < QD_SPW; s++) {
            const int j = j0 + s * nw;
            const float v = qwarp_sum(acc[s]);
            if (lane == 0 && j < a.K)
                qdots[j] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const float *tw = a.tw ? a.tw + t * a.K : nullptr;
        float res = 0.0f;
        for (int j = 0; j < a.K; j++)
            res = !tw ? qdots[j] : j == 0 ? tw[0] * qdots[0] : fmaf(tw[j], qdots[j], res);
        a.out[t * a.H + i] = res;
        if (a.out2 && t == 0)
            a.out2[i] = res;
    }
}

/* ---- launchers --------------------------------------------------------------------------- */

template <int DT> struct qdt_tag {
    static const int v = DT;
};
template <typename F> static bool with_qdt(int dt, F &&f)
{
    switch (dt) {
    case HIP_DT_Q4_0: f(qdt_tag<HIP_DT_Q4_0>()); return true;
    case HIP_DT_Q5_0: f(qdt_tag<HIP_DT_Q5_0>()); return true;
    case HIP_DT_Q8_0: f(qdt_tag<HIP_DT_Q8_0>()); return true;
    case HIP_DT_Q4_K: f(qdt_tag<HIP_DT_Q4_K>()); return true;
    case HIP_DT_Q5_K: f(qdt_tag<HIP_DT_Q5_K>()); return true;
    case HIP_DT_Q6_K: f(qdt_tag<HIP_DT_Q6_K>()); return true;
    case HIP_DT_Q8_0X4: f(qdt_tag<HIP_DT_Q8_0X4>()); return true;
    case HIP_DT_Q6_KX4: f(qdt_tag<HIP_DT_Q6_KX4>()); return true;
    default: return false;
    }
}

static inline bool qaligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}
static unsigned qblocks(long long n, int per)
{
    return (unsigned)((n + per - 1) / per);
}

hipError_t hip_launch_qact(const hip_qact_args *a, hipStream_t s)
{
    if (a->k <= 0 || a->k % 32 || a->rows < 1 || ((uintptr_t)a->q & 63u) || a->qb % 64)
        return hipErrorInvalidValue;
    MOERT_LAUNCH(k_qact, dim3(qblocks(a->k, QA_THREADS), (unsigned)a->rows), QA_THREADS, 0, s, *a);
    return hipGetLastError();
}

hipError_t hip_launch_qmatmul(int dtype, const hip_qgemv_args *a, hipStream_t s)
{
    bool ok = a->k % 32 == 0 && a->m >= 1 && a->n_total >= 1 && a->qb % 64 == 0;
    for (int i = 0; i < 3; i++)
        ok = ok && qaligned16(a->w[i]);
    if (!ok)
        return hipErrorInvalidValue;
    const long long nc = a->k / 8;
    const unsigned m = (unsigned)a->m;
    if (!with_qdt(dtype, [&](auto t) {
            constexpr int DT = decltype(t)::v;
            if (nc <= QG_T)
                MOERT_LAUNCH((k_qgemv<DT, 8, 1>), dim3(qblocks(a->n_total, 8), m), QG_T, 0, s, *a);
            else if (nc <= 2 * QG_T)
                MOERT_LAUNCH((k_qgemv<DT, 4, 2>), dim3(qblocks(a->n_total, 4), m), QG_T, 0, s, *a);
            else
                MOERT_LAUNCH((k_qgemv<DT, 2, 4>), dim3(qblocks(a->n_total, 2), m), QG_T, 0, s, *a);
        }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

static bool qmoe_ok(const hip_qmoe_args *a)
{
    return a->H % 32 == 0 && a->I % 32 == 0 && a->K >= 1 && a->tokens >= 1 && qaligned16(a->gate) &&
           qaligned16(a->up) && qaligned16(a->down) && a->estride_gu % 16 == 0 && a->estride_d % 16 == 0 &&
           a->qbx % 64 == 0 && a->qbh % 64 == 0;
}

hipError_t hip_launch_qmoe_gateup(int dtype, const hip_qmoe_args *a, hipStream_t s)
{
    if (!qmoe_ok(a))
        return hipErrorInvalidValue;
    const long long nc = a->H / 8;
    const unsigned p = (unsigned)a->tokens * (unsigned)a->K;
    if (!with_qdt(dtype, [&](auto t) {
            constexpr int DT = decltype(t)::v;
            if (nc <= QG_T)
                MOERT_LAUNCH((k_qmoe_gateup<DT, 4, 1>), dim3(qblocks(a->I, 4), p), QG_T, 0, s, *a);
            else if (nc <= 2 * QG_T)
                MOERT_LAUNCH((k_qmoe_gateup<DT, 2, 2>), dim3(qblocks(a->I, 2), p), QG_T, 0, s, *a);
            else
                MOERT_LAUNCH((k_qmoe_gateup<DT, 1, 4>), dim3(qblocks(a->I, 1), p), QG_T, 0, s, *a);
        }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

hipError_t hip_launch_qmoe_down(int dtype, const hip_qmoe_args *a, hipStream_t s)
{
    if (!qmoe_ok(a))
        return hipErrorInvalidValue;
    const size_t sm = (size_t)a->K * sizeof(float);
    if (!with_qdt(dtype, [&](auto t) {
            constexpr int DT = decltype(t)::v;
            MOERT_LAUNCH((k_qmoe_down<DT>), dim3((unsigned)a->H, (unsigned)a->tokens), QG_T, sm, s, *a);
        }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

/* ---- host self-test ---------------------------------------------------------------------- */
extern "C" {
#include "../ops/ops.h"
#include "../runtime/backend.h"
}

/* One row quantized on the host by the kernel's formulas, block by block as k_qact does. */
static void host_qact_row(unsigned char *q, const float *x, long long k)
{
    const hip_qa_offsets o = hip_qa_at(k);
    for (int form = 0; form < 2; form++) {
        const long long n = form ? 256 : 32;
        if (form && k % 256)
            break;
        for (long long b = 0; b < k / n; b++) {
            float am = 0.0f;
            bool bad = false;
            for (long long i = b * n; i < (b + 1) * n; i++) {
                if (!isfinite(x[i]))
                    bad = true;
                else
                    am = fmaxf(am, fabsf(x[i]));
            }
            int sum = 0;
            for (long long i = b * n; i < (b + 1) * n; i++) {
                const int qi = qa_quant(x[i], am, bad);
                q[(form ? o.q256 : o.q32) + i] = (unsigned char)(signed char)qi;
                sum += qi;
                if (form && i % 16 == 15) {
                    const int16_t s16 = (int16_t)sum;
                    memcpy(q + o.bs16 + 2 * (i / 16), &s16, 2);
                    sum = 0;
                }
            }
            const float d = qa_scale(am, bad);
            memcpy(q + (form ? o.d256 : o.d32) + 4 * b, &d, 4);
            if (!form)
                memcpy(q + o.bs32 + 4 * b, &sum, 4);
        }
    }
}

static unsigned long long qlcg(unsigned long long *z)
{
    *z = *z * 6364136223846793005ull + 1442695040888963407ull;
    return *z >> 11;
}

/* Rows with rounding ties, NaN/Inf blocks, tiny blocks and spread magnitudes. */
static void fill_row(float *x, long long k, unsigned long long *z, int kind)
{
    for (long long i = 0; i < k; i++) {
        const double u = (double)(qlcg(z) & 0xffffff) / 16777216.0 - 0.5;
        x[i] = (float)(u * (kind == 2 ? 1e-3 : 4.0) * (1 + (i % 7)));
    }
    if (kind == 1) {
        for (long long i = 0; i < k; i += 32)
            x[i] = 127.0f; /* amax 127: id 1, so x.5 values are exact ties */
        for (long long i = 1; i < k; i += 32)
            x[i] = (i / 32) % 2 ? 2.5f : -3.5f;
        x[33 % k] = NAN;
        if (k > 100)
            x[100] = INFINITY;
        for (long long i = 64; i < 96 && i < k; i++)
            x[i] = 1e-31f; /* below 2^-100 */
    }
}

/* The device dot of DT on random rows of its ops type (an X4 type: regrouped by
 * hip_host_x4_pack, as at upload) against ops_matmul_qact on the original bytes. */
template <int DT> static int qdot_selftest_dt(unsigned long long seed, char *why, size_t cap)
{
    const int BASE = dt_base<DT>::v, x4 = hip_dt_x4_group_bytes(DT);
    const long long K = DT == HIP_DT_Q6_KX4 ? 1024 : 512, rows = 5;
    const size_t rb = ops_row_bytes((ops_dtype)BASE, K), qb = ops_qact_row_bytes(K);
    unsigned char *w = (unsigned char *)malloc(rb * rows), *xq = (unsigned char *)malloc(qb);
    unsigned char *wd = x4 ? (unsigned char *)malloc(rb * rows) : w;
    float *x = (float *)malloc(sizeof(float) * K), ref[5];
    if (!w || !wd || !xq || !x) {
        free(w);
        if (x4)
            free(wd);
        free(xq);
        free(x);
        snprintf(why, cap, "out of memory");
        return 1;
    }
    unsigned long long z = seed;
    for (size_t i = 0; i < rb * rows; i++)
        w[i] = (unsigned char)(qlcg(&z) >> 20);
    const size_t bb = ops_row_bytes((ops_dtype)BASE, dt_layout<BASE>::be);
    for (size_t o = 0; o < rb * rows; o += bb) { /* small finite scales */
        unsigned char *hs = w + o + (BASE == HIP_DT_Q6_K ? 208 : 0);
        hs[1] = (unsigned char)(0x20 | (hs[1] & 0x83));
        if (BASE == HIP_DT_Q4_K || BASE == HIP_DT_Q5_K)
            w[o + 3] = (unsigned char)(0x20 | (w[o + 3] & 0x83));
    }
    fill_row(x, K, &z, 0);
    ops_qact_row(xq, x, K);
    const void *qrows[1] = {xq};
    ops_matmul_qact(ref, rows, qrows, 1, w, (ops_dtype)BASE, K, 0, rows);
    if (x4)
        hip_dt_x4_pack(DT, wd, w, rb * rows);
    int bad = 0;
    for (long long r = 0; r < rows && !bad; r++) {
        /* the kernel's per-thread chain over chunks, taken here in one chain: the integer
         * parts are exact, so only float rounding separates it from the CPU's order */
        float acc = 0.0f;
        double mag = 0.0;
        for (long long c = 0; c < K / 8; c++) {
            W8<DT> wv;
            wv.load_cs(wd + (size_t)r * rb, c * 8);
            unsigned x0, x1;
            float da;
            qa_chunk<DT>(xq, K, c, x0, x1, da);
            const float before = acc;
            acc = qa_dot8<DT>(wv, x0, x1, da, acc);
            mag += fabs((double)acc - (double)before);
        }
        const double err = fabs((double)acc - (double)ref[r]);
        if (!(err <= 1e-5 * (mag + 1e-30))) {
            snprintf(why, cap, "%s (device type %d) row %lld: device dot %.9g vs ops_matmul_qact %.9g (sum of |terms| %.3g)",
                     ops_dtype_name((ops_dtype)BASE), DT, r, (double)acc, (double)ref[r], mag);
            bad = 1;
        }
    }
    free(w);
    if (x4)
        free(wd);
    free(xq);
    free(x);
    return bad;
}

extern "C" int backend_hip_qact_selftest(char *why, size_t cap)
{
    static const long long ks[] = {32, 96, 256, 512, 768, 2048};
    int bad = 0;
    unsigned long long z = 0x5eed;
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks && !bad; ki++) {
        const long long k = ks[ki];
        const size_t qb = ops_qact_row_bytes(k);
        unsigned char *a = (unsigned char *)malloc(qb), *b = (unsigned char *)malloc(qb);
        float *x = (float *)malloc(sizeof(float) * (size_t)k);
        if (!a || !b || !x) {
            free(a);
            free(b);
            free(x);
            snprintf(why, cap, "out of memory");
            return 1;
        }
        for (int kind = 0; kind < 3 && !bad; kind++) {
            fill_row(x, k, &z, kind);
            memset(a, 0xa5, qb); /* bytes neither writes (form B when k % 256) stay equal */
            memset(b, 0xa5, qb);
            ops_qact_row(a, x, k);
            host_qact_row(b, x, k);
            for (size_t i = 0; i < qb && !bad; i++)
                if (a[i] != b[i]) {
                    snprintf(why, cap, "act-q8 row of k %lld (kind %d): byte %zu is %u, ops_qact_row's %u", k, kind, i,
                             b[i], a[i]);
                    bad = 1;
                }
        }
        free(a);
        free(b);
        free(x);
    }
    for (int dt = HIP_DT_Q4_0; dt < HIP_DT_COUNT && !bad; dt++)
        for (unsigned long long seed = 1; seed <= 3 && !bad; seed++)
            with_qdt(dt, [&](auto t) { bad = qdot_selftest_dt<decltype(t)::v>(seed * 0x9e3779b97f4a7c15ull + (unsigned)dt, why, cap); });
    return bad;
}
