/* kernels: the device side of the HIP backend (see hip_kernels.h for the contracts).
 *
 * Arithmetic is fp32 throughout (weights widen exactly from bf16/f16 and dequantize exactly
 * from ggml's block types, in registers: hip_wload.h; nothing is rounded to bf16 or tf32),
 * statistics of traced rows in double.  Each output element has one fixed
 * order of operations: serial fused multiply-add chains per thread and xor-butterfly trees
 * (masks 1, 2, 4, ...) across a warp, so results are bit-identical run to run.
 */
#include <float.h>
#include <math.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_kernels.h"
#include "hip_wload.h"
#include "hip_devmath.h"
#include "hip_gemm_mma.h"
#include "hip_attn_prefill.h"
#include "../runtime/trace/record.h"

/* Tuning switches (chosen by measurement on an H200; see hip/NOTES.md) */
#ifndef MOERT_GEMV_U
#define MOERT_GEMV_U 4 /* 8 measured 36 us/step slower */
#endif
#ifndef MOERT_MOE_MINB
#define MOERT_MOE_MINB 1 /* 4 (a register cap) helped alone but cost 0.14 ms/step with resident grids */
#endif
#ifndef MOERT_RESIDENT_GRID
#define MOERT_RESIDENT_GRID 1 /* persistent grids sized to residency (-119 us/step) */
#endif
#ifndef MOERT_ATTN_FUSED_MERGE
#define MOERT_ATTN_FUSED_MERGE 0 /* 1 measured 0.43 ms/step slower on an H200 */
#endif

#ifndef MOERT_SGEMV
#define MOERT_SGEMV 1 /* decode GEMVs as streaming blocks (rows per block, threads split k) */
#endif
#ifndef MOERT_SG_WIDE
#define MOERT_SG_WIDE 1 /* 2: twice the rows per streaming-GEMV block (16 loads in flight) */
#endif

/* Kernels that read, before their PDL wait, only what no kernel of the current step writes
 * (weights, the step parameters the host copied in before the step, RoPE tables, KV-cache
 * rows of earlier positions) begin with this marker instead of the wait (tools/check-pdl.sh). */
#define PDL_EARLY_READS

#if defined(__CUDACC__) && !defined(MOERT_HIP_AMD)
bool moert_pdl_enabled = false;
#endif

#define DEV static __device__ __forceinline__

/* ---- small helpers ------------------------------------------------------------------ */

/* Norm weights: plain float types only (model_bind keeps vectors float; the backend checks). */
DEV float load_elem(const void *p, int dt, long long i)
{
    if (dt == HIP_DT_BF16)
        return __uint_as_float((unsigned)((const unsigned short *)p)[i] << 16);
    if (dt == HIP_DT_F16)
        return f16_to_f32(((const unsigned short *)p)[i]);
    return ((const float *)p)[i];
}

/* An output row element: y[r] (and its copy y2); with a residual epilogue also
 * xadd[r] += y[r] (and the sum to xadd2): the ADD after the op, with its bits. */
DEV void put_out(float *y, float *y2, float *xadd, float *xadd2, long long r, float v)
{
    y[r] = v;
    if (y2)
        y2[r] = v;
    if (xadd) {
        const float t = xadd[r] + v;
        xadd[r] = t;
        if (xadd2)
            xadd2[r] = t;
    }
}

DEV unsigned long long mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Warp reductions: the butterfly with masks 1, 2, 4, ... ; every lane ends with the same
 * bits (IEEE addition is commutative). */
DEV float warp_sum(float v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v += moert_shfl_xor(v, m);
    return v;
}
DEV double warp_sum_d(double v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v += moert_shfl_xor(v, m);
    return v;
}
DEV unsigned long long warp_sum_u64(unsigned long long v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v += moert_shfl_xor(v, m);
    return v;
}
DEV float warp_max(float v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v = fmaxf(v, moert_shfl_xor(v, m));
    return v;
}
DEV double warp_min_d(double v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v = fmin(v, moert_shfl_xor(v, m));
    return v;
}
DEV double warp_max_d(double v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v = fmax(v, moert_shfl_xor(v, m));
    return v;
}

#define MAX_WARPS 32 /* 1024 threads / 32 */

/* Block reductions: warp results in shared memory, then every warp reduces the same
 * partials (padded with the identity), so every thread returns identical bits.
 * blockDim.x must be a multiple of the warp size. */
DEV float block_sum(float v, float *sm)
{
    int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    int nw = blockDim.x / MOERT_WARP;
    v = warp_sum(v);
    __syncthreads(); /* sm may still be read by a previous reduction */
    if (lane == 0)
        sm[w] = v;
    __syncthreads();
    return warp_sum(lane < nw ? sm[lane] : 0.0f);
}
DEV double block_sum_d(double v, double *sm)
{
    int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    int nw = blockDim.x / MOERT_WARP;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0)
        sm[w] = v;
    __syncthreads();
    return warp_sum_d(lane < nw ? sm[lane] : 0.0);
}
/* (value, index) arg-max: larger value wins, equal values -> lower index.  A total order on
 * distinct indices, so the result does not depend on the tree. */
DEV bool better(float v, int i, float bv, int bi)
{
    return v > bv || (v == bv && i < bi);
}
DEV void block_argmax(float &v, int &i, float *smv, int *smi)
{
    int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    int nw = blockDim.x / MOERT_WARP;
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1) {
        float ov = moert_shfl_xor(v, m);
        int oi = moert_shfl_xor(i, m);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
    __syncthreads();
    if (lane == 0) {
        smv[w] = v;
        smi[w] = i;
    }
    __syncthreads();
    v = lane < nw ? smv[lane] : -INFINITY;
    i = lane < nw ? smi[lane] : 0x7fffffff;
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1) {
        float ov = moert_shfl_xor(v, m);
        int oi = moert_shfl_xor(i, m);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

/* ---- GEMV core ----------------------------------------------------------------------
 * One warp computes RW dot products of length k: lane l takes the 8-element chunks at
 * k = 8 l, 8 (l + WARP), ... (16-byte loads of bf16, coalesced across the warp; a block
 * type's chunk is its 8 elements' quants and scales, W8), U chunks per row in flight, a
 * serial FMA chain per lane, then the butterfly.  x rows come from shared memory.  Requires
 * k % 8 == 0 and 16-byte aligned rows (the caller checks). */
template <int DT, int RW, int U>
DEV void gemv_core(const float *const xs[RW], const unsigned char *const wrow[RW],
                   const bool valid[RW], long long k, float acc[RW])
{
    const int lane = threadIdx.x % MOERT_WARP;
#pragma unroll
    for (int i = 0; i < RW; i++)
        acc[i] = 0.0f;
    for (long long k0 = (long long)lane * 8; k0 < k; k0 += (long long)U * MOERT_WARP * 8) {
        W8<DT> wv[U][RW];
#pragma unroll
        for (int u = 0; u < U; u++) {
            long long kk = k0 + (long long)u * MOERT_WARP * 8;
#pragma unroll
            for (int i = 0; i < RW; i++) {
                if (valid[i] && kk < k)
                    wv[u][i].load(wrow[i], kk);
                else
                    wv[u][i].zero();
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            long long kk = k0 + (long long)u * MOERT_WARP * 8;
            if (kk < k) {
#pragma unroll
                for (int i = 0; i < RW; i++) {
                    float4 x0 = *(const float4 *)(xs[i] + kk);
                    float4 x1 = *(const float4 *)(xs[i] + kk + 4);
                    float f[8];
                    wv[u][i].get(f);
                    float s = acc[i];
                    s = fmaf(x0.x, f[0], s);
                    s = fmaf(x0.y, f[1], s);
                    s = fmaf(x0.z, f[2], s);
                    s = fmaf(x0.w, f[3], s);
                    s = fmaf(x1.x, f[4], s);
                    s = fmaf(x1.y, f[5], s);
                    s = fmaf(x1.z, f[6], s);
                    s = fmaf(x1.w, f[7], s);
                    acc[i] = s;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RW; i++)
        acc[i] = warp_sum(acc[i]);
}

/* The same dot with scalar loads (any k, any alignment): lane l takes k = l, l + WARP, ... */
template <int DT, int RW>
DEV void gemv_core_scalar(const float *const xs[RW], const unsigned char *const wrow[RW],
                          const bool valid[RW], long long k, float acc[RW])
{
    const int lane = threadIdx.x % MOERT_WARP;
#pragma unroll
    for (int i = 0; i < RW; i++) {
        float s = 0.0f;
        if (valid[i])
            for (long long kk = lane; kk < k; kk += MOERT_WARP)
                s = fmaf(xs[i][kk], load_t<DT>(wrow[i], kk), s);
        acc[i] = warp_sum(s);
    }
}

template <int DT, bool VEC, int RW>
DEV void gemv_dot(const float *const xs[RW], const unsigned char *const wrow[RW],
                  const bool valid[RW], long long k, float acc[RW])
{
    if (VEC)
        gemv_core<DT, RW, 4>(xs, wrow, valid, k, acc);
    else
        gemv_core_scalar<DT, RW>(xs, wrow, valid, k, acc);
}

/* Copies n floats of x into shared memory (the whole block). */
DEV void stage_x(float *xs, const float *x, long long n)
{
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        xs[i] = x[i];
    __syncthreads();
}

extern __shared__ float4 dyn_smem4[];

/* Weight row r of a (possibly segmented) GEMV. */
template <int DT> DEV const unsigned char *gemv_row(const hip_gemv_args &a, long long r)
{
    int sg = r >= a.seg_end[0] ? (r >= a.seg_end[1] ? 2 : 1) : 0;
    long long local = r - (sg == 0 ? 0 : sg == 1 ? a.seg_end[0] : a.seg_end[1]);
    const void *base = sg == 0 ? a.w[0] : sg == 1 ? a.w[1] : a.w[2];
    return (const unsigned char *)base + local * row_bytes_t<DT>(a.k);
}

/* Before waiting for the previous kernel (programmatic dependent launch): the weights do
 * not depend on it, so the warp's first rows start streaming into L2 at once. */
template <int DT> DEV void pdl_prefetch_gemv(const hip_gemv_args &a)
{
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const long long g = (long long)blockIdx.x * (blockDim.x / MOERT_WARP) + warp;
    const long long bytes = row_bytes_t<DT>(a.k);
    for (int i = 0; i < HIP_GEMV_RW; i++) {
        long long r = g * HIP_GEMV_RW + i;
        if (r >= a.n_total)
            break;
        const unsigned char *w = gemv_row<DT>(a, r);
        for (long long off = (long long)lane * 128; off < bytes; off += (long long)MOERT_WARP * 128)
            moert_prefetch_l2(w + off);
    }
}

template <int DT, bool VEC>
__global__ void __launch_bounds__(HIP_GEMV_THREADS) k_gemv(hip_gemv_args a)
{
    pdl_prefetch_gemv<DT>(a);
    moert_pdl_wait();
    float *xs = (float *)dyn_smem4;
    stage_x(xs, a.x, a.k);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    for (long long g = (long long)blockIdx.x * nw + warp; g * HIP_GEMV_RW < a.n_total;
         g += (long long)gridDim.x * nw) {
        const float *xr[HIP_GEMV_RW];
        const unsigned char *wr[HIP_GEMV_RW];
        bool valid[HIP_GEMV_RW];
        long long rows[HIP_GEMV_RW];
#pragma unroll
        for (int i = 0; i < HIP_GEMV_RW; i++) {
            long long r = g * HIP_GEMV_RW + i;
            rows[i] = r;
            valid[i] = r < a.n_total;
            xr[i] = xs;
            wr[i] = valid[i] ? gemv_row<DT>(a, r) : (const unsigned char *)a.w[0];
        }
        float acc[HIP_GEMV_RW];
        /* chunks per row in flight */
        if (VEC)
            gemv_core<DT, HIP_GEMV_RW, MOERT_GEMV_U>(xr, wr, valid, a.k, acc);
        else
            gemv_core_scalar<DT, HIP_GEMV_RW>(xr, wr, valid, a.k, acc);
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < HIP_GEMV_RW; i++)
                if (valid[i])
                    put_out(a.y, a.y2, a.xadd, a.xadd2, rows[i], acc[i]);
        }
    }
}

/* ---- GEMM ----------------------------------------------------------------------------
 * Block tile BM x 128 outputs, k tiles of 16, double-buffered in shared memory (both
 * operands stored k-major and widened to fp32: block types are dequantized 8 elements at a
 * time on their way into the weight tile), thread tile 4 x 8 (two groups of 4 columns
 * 64 apart, so shared-memory reads are conflict-free float4s).  Each output is one serial
 * FMA chain over k in increasing order. */
#define GEMM_BK 16

template <int DT, int AMODE, int BM, bool VEC>
__global__ void __launch_bounds__(BM * 4) k_gemm(hip_gemm_args a)
{
    moert_pdl_wait();
    constexpr int BN = HIP_GEMM_BN, BK = GEMM_BK, NT = BM * 4;
    constexpr int GPT = 256 / NT; /* weight 8-groups per thread per tile (2 per row) */
    __shared__ __align__(16) float As[2][BK][BM + 4];
    __shared__ __align__(16) float Ws[2][BK][BN + 4];
    const int tid = threadIdx.x;
    const int n0 = blockIdx.x * BN;
    long long e = 0;
    int m0, m_end;
    if (a.tiles) {
        int t = blockIdx.y;
        if (t >= a.tiles[0])
            return;
        e = a.tiles[1 + 3 * t];
        m0 = a.tiles[2 + 3 * t];
        m_end = a.tiles[3 + 3 * t];
    } else {
        m0 = blockIdx.y * BM;
        m_end = min(m0 + BM, a.m);
    }
    const long long K = a.k;

    /* A loader: row lm, 4-float chunk ac of the 16-wide k tile. */
    const int lm = tid % BM, ac = tid / BM;
    const int pa = m0 + lm;
    const bool a_ok = pa < m_end;
    const float *arow = a.a, *arow2 = a.a2;
    if (a_ok) {
        if (AMODE == HIP_A_GATHER)
            arow = a.a + (long long)(a.gather[pa] / a.gdiv) * a.lda;
        else
            arow = a.a + (long long)pa * a.lda;
        if (AMODE == HIP_A_SWIGLU)
            arow2 = a.a2 + (long long)pa * a.lda;
    }
    /* W loader: row wn, 8-groups wg0 .. wg0 + GPT - 1. */
    const int wn = tid % BN, wg0 = (tid / BN) * GPT;
    const bool w_ok = n0 + wn < a.n;
    const unsigned char *wrow = (const unsigned char *)a.w + e * a.w_estride +
                                (long long)(w_ok ? n0 + wn : 0) * row_bytes_t<DT>(K);

    float ra[4];
    float rw[GPT][8];
    W8<DT> rwv[GPT];

    auto load_tile = [&](long long k0) {
        long long ka = k0 + ac * 4;
        if (VEC) {
            if (a_ok && ka < K) {
                float4 v = *(const float4 *)(arow + ka);
                if (AMODE == HIP_A_SWIGLU) {
                    float4 u = *(const float4 *)(arow2 + ka);
                    ra[0] = silu_mul(v.x, u.x);
                    ra[1] = silu_mul(v.y, u.y);
                    ra[2] = silu_mul(v.z, u.z);
                    ra[3] = silu_mul(v.w, u.w);
                } else {
                    ra[0] = v.x;
                    ra[1] = v.y;
                    ra[2] = v.z;
                    ra[3] = v.w;
                }
            } else {
                ra[0] = ra[1] = ra[2] = ra[3] = 0.0f;
            }
#pragma unroll
            for (int g = 0; g < GPT; g++) {
                long long kw = k0 + (wg0 + g) * 8;
                if (w_ok && kw < K)
                    rwv[g].load(wrow, kw);
                else
                    rwv[g].zero();
            }
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                long long kq = ka + q;
                float v = 0.0f;
                if (a_ok && kq < K) {
                    v = arow[kq];
                    if (AMODE == HIP_A_SWIGLU)
                        v = silu_mul(v, arow2[kq]);
                }
                ra[q] = v;
            }
#pragma unroll
            for (int g = 0; g < GPT; g++)
#pragma unroll
                for (int q = 0; q < 8; q++) {
                    long long kq = k0 + (wg0 + g) * 8 + q;
                    rw[g][q] = (w_ok && kq < K) ? load_t<DT>(wrow, kq) : 0.0f;
                }
        }
    };
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int q = 0; q < 4; q++)
            As[buf][ac * 4 + q][lm] = ra[q];
#pragma unroll
        for (int g = 0; g < GPT; g++) {
            float f[8];
            if (VEC) {
                rwv[g].get(f);
            } else {
#pragma unroll
                for (int q = 0; q < 8; q++)
                    f[q] = rw[g][q];
            }
#pragma unroll
            for (int q = 0; q < 8; q++)
                Ws[buf][(wg0 + g) * 8 + q][wn] = f[q];
        }
    };

    const int tm = tid / 16, tn = tid % 16;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
            acc[i][j] = 0.0f;

    const int ntiles = (int)((K + BK - 1) / BK);
    load_tile(0);
    store_tile(0);
    __syncthreads();
    for (int t = 0; t < ntiles; t++) {
        const int cur = t & 1;
        if (t + 1 < ntiles)
            load_tile((long long)(t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float4 av = *(const float4 *)&As[cur][kk][tm * 4];
            float4 b0 = *(const float4 *)&Ws[cur][kk][tn * 4];
            float4 b1 = *(const float4 *)&Ws[cur][kk][64 + tn * 4];
            float ar[4] = {av.x, av.y, av.z, av.w};
            float br[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 8; j++)
                    acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
        }
        if (t + 1 < ntiles)
            store_tile(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        int p = m0 + tm * 4 + i;
        if (p >= m_end)
            continue;
        float *crow = a.c + (long long)p * a.ldc;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            int n = n0 + (j < 4 ? tn * 4 + j : 64 + tn * 4 + (j - 4));
            if (n < a.n)
                crow[n] = acc[i][j];
        }
    }
}

/* ---- narrow GEMM: F32 weights with few outputs a row (the MoE router of a GGUF model) ----
 * k_gemm's 64 x 128 tiles give a 512 x 128 router 8 blocks; here a block owns 16 rows x 32
 * columns (a thread 2 x 2 outputs), the next k tile held in registers while this one is
 * multiplied.  Each output is the same serial fmaf chain over k, in increasing order from
 * 0, as k_gemm's, so the values are the same (k_gemm's zero padding of a ragged k tile aside). */
#define GN_BM 16
#define GN_BN 32
#define GN_BK 64
#define GN_NT 128
__global__ void __launch_bounds__(GN_NT) k_gemm_narrow(hip_gemm_args a)
{
    moert_pdl_wait();
    __shared__ float As[GN_BM][GN_BK + 1];
    __shared__ float Ws[GN_BN][GN_BK + 1];
    constexpr int AL = GN_BM * GN_BK / GN_NT, WL = GN_BN * GN_BK / GN_NT;
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    const int m0 = blockIdx.y * GN_BM, n0 = blockIdx.x * GN_BN;
    const long long K = a.k;
    const float *w = (const float *)a.w;
    float ra[AL], rw[WL];
    /* element i of a thread's share: row (tid + i NT) / BK, k (tid + i NT) % BK */
    auto load = [&](long long k0) {
#pragma unroll
        for (int i = 0; i < AL; i++) {
            int c = tid + i * GN_NT, r = c / GN_BK;
            long long kk = k0 + c % GN_BK;
            ra[i] = m0 + r < a.m && kk < K ? a.a[(long long)(m0 + r) * a.lda + kk] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < WL; i++) {
            int c = tid + i * GN_NT, r = c / GN_BK;
            long long kk = k0 + c % GN_BK;
            rw[i] = n0 + r < a.n && kk < K ? w[(long long)(n0 + r) * K + kk] : 0.0f;
        }
    };
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    load(0);
    for (long long k0 = 0; k0 < K; k0 += GN_BK) {
#pragma unroll
        for (int i = 0; i < AL; i++)
            As[(tid + i * GN_NT) / GN_BK][(tid + i * GN_NT) % GN_BK] = ra[i];
#pragma unroll
        for (int i = 0; i < WL; i++)
            Ws[(tid + i * GN_NT) / GN_BK][(tid + i * GN_NT) % GN_BK] = rw[i];
        __syncthreads();
        if (k0 + GN_BK < K)
            load(k0 + GN_BK);
        const int kn = (int)(K - k0 < GN_BK ? K - k0 : GN_BK);
        for (int kk = 0; kk < kn; kk++) {
            float a0 = As[2 * tr][kk], a1 = As[2 * tr + 1][kk], w0 = Ws[tc][kk], w1 = Ws[tc + 16][kk];
            acc[0][0] = fmaf(a0, w0, acc[0][0]);
            acc[0][1] = fmaf(a0, w1, acc[0][1]);
            acc[1][0] = fmaf(a1, w0, acc[1][0]);
            acc[1][1] = fmaf(a1, w1, acc[1][1]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int p = m0 + 2 * tr + i, n = n0 + tc + 16 * j;
            if (p < a.m && n < a.n)
                a.c[(long long)p * a.ldc + n] = acc[i][j];
        }
}

/* ---- embed, norms, add -------------------------------------------------------------- */

template <int DT>
__global__ void __launch_bounds__(256) k_embed(int32_t *tok, const hip_step_params *sp, const int32_t *pick,
                                               const void *emb, float *x, float *x2, long long H, long long V,
                                               int *err)
{
    moert_pdl_wait();
    int r = blockIdx.x;
    const bool fed = sp->fed && r == 0, inl = !fed && r < sp->n_tok;
    long long t = fed ? *pick : inl ? sp->tok[r] : tok[r];
    if ((inl || fed) && threadIdx.x == 0)
        tok[r] = (int32_t)t; /* the tokens buffer holds the step's ids either way */
    if (t < 0 || t >= V) {
        if (threadIdx.x == 0)
            *err = 1;
        t = 0;
    }
    /* rows are whole blocks, so row t's element i is element t * H + i of the flat matrix */
    for (long long i = threadIdx.x; i < H; i += blockDim.x) {
        const float v = load_t<DT>(emb, t * H + i);
        x[(long long)r * H + i] = v;
        if (x2)
            x2[(long long)r * H + i] = v;
    }
}

/* RMSNorm of one row per block: sum of squares (per-thread serial, then the block tree),
 * r = 1 / sqrt(mean + eps), out = w * (x * r) as ops_rmsnorm. */
/* Row norms: one block of 1024 threads per row; each thread keeps its (at most
 * NORM_PER_THREAD) elements in registers, so the row is read once with every load in
 * flight, and the weights are loaded while the sum reduces. */
#define NORM_THREADS 1024
#define NORM_PER_THREAD 8

__global__ void __launch_bounds__(NORM_THREADS) k_rmsnorm(const float *__restrict__ x, const void *w,
                                                          int dt, float *__restrict__ out,
                                                          float *__restrict__ out2, long long n, float eps)
{
    PDL_EARLY_READS;
    const bool regs = n <= (long long)NORM_PER_THREAD * blockDim.x;
    float wv[NORM_PER_THREAD]; /* the norm weights, loaded while the previous kernel drains */
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            wv[k] = i < n ? load_elem(w, dt, i) : 0.0f;
        }
    }
    moert_pdl_wait();
    __shared__ float sm[MAX_WARPS];
    const float *xr = x + (long long)blockIdx.x * n;
    float *o = out + (long long)blockIdx.x * n;
    float *o2 = out2 ? out2 + (long long)blockIdx.x * n : nullptr;
    float v[NORM_PER_THREAD];
    float s = 0.0f;
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            v[k] = i < n ? xr[i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++)
            s = fmaf(v[k], v[k], s);
    } else {
        for (long long i = threadIdx.x; i < n; i += blockDim.x)
            s = fmaf(xr[i], xr[i], s);
    }
    s = block_sum(s, sm);
    float r = 1.0f / sqrtf(s / (float)n + eps);
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            if (i < n) {
                o[i] = wv[k] * (v[k] * r);
                if (o2)
                    o2[i] = o[i];
            }
        }
    } else {
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
            o[i] = load_elem(w, dt, i) * (xr[i] * r);
            if (o2)
                o2[i] = o[i];
        }
    }
}

__global__ void __launch_bounds__(NORM_THREADS) k_add_rmsnorm(float *__restrict__ x,
                                                              const float *__restrict__ y,
                                                              const void *w, int dt,
                                                              float *__restrict__ out, float *__restrict__ x2,
                                                              float *__restrict__ out2, long long n,
                                                              float eps)
{
    PDL_EARLY_READS;
    const bool regs = n <= (long long)NORM_PER_THREAD * blockDim.x;
    float wv[NORM_PER_THREAD]; /* the norm weights, loaded while the previous kernel drains */
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            wv[k] = i < n ? load_elem(w, dt, i) : 0.0f;
        }
    }
    moert_pdl_wait();
    __shared__ float sm[MAX_WARPS];
    float *xr = x + (long long)blockIdx.x * n;
    const float *yr = y + (long long)blockIdx.x * n;
    float *o = out + (long long)blockIdx.x * n;
    float *x2r = x2 ? x2 + (long long)blockIdx.x * n : nullptr;
    float *o2 = out2 ? out2 + (long long)blockIdx.x * n : nullptr;
    float v[NORM_PER_THREAD];
    float s = 0.0f;
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            v[k] = i < n ? xr[i] + yr[i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            if (i < n) {
                xr[i] = v[k];
                if (x2r)
                    x2r[i] = v[k];
            }
            s = fmaf(v[k], v[k], s);
        }
    } else {
        for (long long i = threadIdx.x; i < n; i += blockDim.x) {
            float t = xr[i] + yr[i];
            xr[i] = t;
            if (x2r)
                x2r[i] = t;
            s = fmaf(t, t, s);
        }
    }
    s = block_sum(s, sm);
    float r = 1.0f / sqrtf(s / (float)n + eps);
    if (regs) {
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++) {
            long long i = threadIdx.x + (long long)k * blockDim.x;
            if (i < n) {
                o[i] = wv[k] * (v[k] * r);
                if (o2)
                    o2[i] = o[i];
            }
        }
    } else {
        for (long long i = threadIdx.x; i < n; i += blockDim.x) { /* own writes: no barrier needed */
            o[i] = load_elem(w, dt, i) * (xr[i] * r);
            if (o2)
                o2[i] = o[i];
        }
    }
}
__global__ void __launch_bounds__(256) k_add(float *x, const float *y, float *x2, long long n)
{
    moert_pdl_wait();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        x[i] += y[i];
        if (x2)
            x2[i] = x[i];
    }
}

/* ---- QK norm + RoPE (+ KV store) ---------------------------------------------------
 * One warp per head of one row: q heads, then k heads (RMSNorm over head_dim with the
 * q_norm / k_norm weight, then rotate-half RoPE at position pos0 + row), then, when the KV
 * store is fused, v heads (copied to the cache). */
/* RMSNorm over one head (weight w) then rotate-half RoPE with this position's cos/sin, by one
 * warp: src -> dst (may be the same memory: every lane has read its elements before any lane
 * writes, the butterfly in between), and -> dst2 when not NULL (the KV cache row). */
#define NR_MAX 4 /* per lane: (weight pair, cos, sin) for head_dim <= 2 * NR_MAX * warp */
typedef struct nr_pre {
    float wa[NR_MAX], wb[NR_MAX], c[NR_MAX], s[NR_MAX];
    bool ok;
} nr_pre;
/* Loads what norm_rope_head reads besides its input (weights and this position's cos/sin,
 * which no kernel of the step writes), so that it can happen before a PDL wait. */
DEV void nr_preload(nr_pre &p, const void *w, int wdt, const float *cs, const float *sn, int hd)
{
    const int lane = threadIdx.x % MOERT_WARP, half = hd / 2;
    p.ok = half <= NR_MAX * MOERT_WARP;
#pragma unroll
    for (int m = 0; m < NR_MAX; m++) {
        const int i = lane + m * MOERT_WARP;
        const bool in = p.ok && i < half;
        p.wa[m] = in ? load_elem(w, wdt, i) : 0.0f;
        p.wb[m] = in ? load_elem(w, wdt, i + half) : 0.0f;
        p.c[m] = in ? cs[i] : 0.0f;
        p.s[m] = in ? sn[i] : 0.0f;
    }
}

/* Rotate-half RoPE of the normalised pair (na, nb) at (i, i + half), into dst and dst2. */
DEV void rope_store(float *dst, float *dst2, int i, int half, float na, float nb, float c, float s)
{
    const float ra = fmaf(na, c, -(nb * s)), rb = fmaf(nb, c, na * s);
    dst[i] = ra;
    dst[i + half] = rb;
    if (dst2) {
        dst2[i] = ra;
        dst2[i + half] = rb;
    }
}

DEV void norm_rope_head(const float *src, float *dst, float *dst2, const void *w, int wdt, const float *cs,
                        const float *sn, int hd, float eps, const nr_pre *pre = nullptr)
{
    const int lane = threadIdx.x % MOERT_WARP, half = hd / 2;
    float ss = 0.0f;
#pragma unroll 4
    for (int d = lane; d < hd; d += MOERT_WARP)
        ss = fmaf(src[d], src[d], ss);
    ss = warp_sum(ss);
    const float rr = 1.0f / sqrtf(ss / (float)hd + eps);
    if (pre && pre->ok) { /* the same arithmetic on the preloaded values */
#pragma unroll
        for (int m = 0; m < NR_MAX; m++) {
            const int i = lane + m * MOERT_WARP;
            if (i >= half)
                break;
            rope_store(dst, dst2, i, half, pre->wa[m] * (src[i] * rr), pre->wb[m] * (src[i + half] * rr),
                       pre->c[m], pre->s[m]);
        }
    } else
#pragma unroll 2
    for (int i = lane; i < half; i += MOERT_WARP) {
        rope_store(dst, dst2, i, half, load_elem(w, wdt, i) * (src[i] * rr),
                   load_elem(w, wdt, i + half) * (src[i + half] * rr), cs[i], sn[i]);
    }
    if ((hd & 1) && lane == 0) { /* odd head_dim: the last element is normalised only */
        const float nl = load_elem(w, wdt, hd - 1) * (src[hd - 1] * rr);
        dst[hd - 1] = nl;
        if (dst2)
            dst2[hd - 1] = nl;
    }
}

__global__ void __launch_bounds__(128) k_qk_norm_rope(hip_qkn_args a)
{
    PDL_EARLY_READS;
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const int r = blockIdx.x;
    const bool store = a.kc != nullptr;
    const int nheads = a.nh + a.nkv + (store ? a.nkv : 0);
    const long long pos = a.sp->pos0 + r;
    if (pos < 0 || pos >= a.max_seq) {
        if (threadIdx.x == 0)
            *a.err_flag = 2;
        return;
    }
    float *row = a.qkv + (long long)r * a.qkv_dim;
    const int hd = a.hd, half = hd / 2;
    const float *cs = a.cos_t + pos * half, *sn = a.sin_t + pos * half;
    /* the first head's weights and cos/sin while the previous kernel drains */
    const int h_first = blockIdx.y * nw + warp;
    nr_pre pre;
    pre.ok = false;
    if (gridDim.x == 1 && h_first < a.nh + a.nkv) /* decode (prefill measured faster without) */
        nr_preload(pre, h_first < a.nh ? a.qn : a.kn, h_first < a.nh ? a.qn_dt : a.kn_dt, cs, sn, hd);
    moert_pdl_wait();
    /* grid.y is sized for 4 warps per block; wider warps loop */
    for (int h = blockIdx.y * nw + warp; h < nheads; h += gridDim.y * nw) {
        if (h >= a.nh + a.nkv) { /* v head: copy into the cache */
            int hv = h - a.nh - a.nkv;
            const float *src = row + a.q_dim + a.kv_dim + (long long)hv * hd;
            float *dst = a.vc + ((long long)hv * a.max_seq + pos) * hd;
            for (int d = lane; d < hd; d += MOERT_WARP)
                dst[d] = src[d];
            continue;
        }
        float *v = row + (long long)h * hd;
        float *kdst = (store && h >= a.nh) ? a.kc + ((long long)(h - a.nh) * a.max_seq + pos) * hd
                                           : nullptr;
        const nr_pre *pp = h == h_first ? &pre : nullptr;
        if (h < a.nh)
            norm_rope_head(v, v, nullptr, a.qn, a.qn_dt, cs, sn, hd, a.eps, pp);
        else
            norm_rope_head(v, v, kdst, a.kn, a.kn_dt, cs, sn, hd, a.eps, pp);
    }
}

__global__ void __launch_bounds__(256) k_kv_store(const float *qkv, float *kc, float *vc,
                                                  const hip_step_params *sp, long long qkv_dim,
                                                  long long q_dim, long long kv_dim, int hd,
                                                  long long max_seq, int *err)
{
    moert_pdl_wait();
    const int r = blockIdx.x;
    const long long pos = sp->pos0 + r;
    if (pos < 0 || pos >= max_seq) {
        if (threadIdx.x == 0)
            *err = 2;
        return;
    }
    const float *row = qkv + (long long)r * qkv_dim;
    for (long long i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        const long long at = (i / hd * max_seq + pos) * hd + i % hd; /* [kv head][pos][d] */
        kc[at] = row[q_dim + i];
        vc[at] = row[q_dim + kv_dim + i];
    }
}

/* ---- attention -----------------------------------------------------------------------
 * Block = (row, kv head g): the G = nh / nkv query heads sharing g.  Keys in tiles of
 * HIP_ATTN_TILE: the K tile is staged in shared memory (padded rows), scores are serial
 * dots, then per head a running max m, sum l and output o (online softmax, tiles in key
 * order).  Split mode (decode): block x = split s covers keys [s * SPLIT, (s+1) * SPLIT)
 * and writes (m, l, o) partials; the last split of a kv head to finish merges them in
 * split order. */
size_t hip_attn_smem_bytes(int nh, int nkv, int hd)
{
    size_t G = (size_t)(nh / nkv), T = HIP_ATTN_TILE;
    return sizeof(float) * (2 * G * (size_t)hd + T * (size_t)(hd + 1) + T * (size_t)(hd + 4) +
                            G * T + 3 * G);
}

/* Stages keys t0 + j, j in [j0, j1), of one kv head (rows of hd floats, contiguous) into
 * the K (stride hd + 1) and V (stride hd + 4) tiles: every load of a thread in flight
 * before its first store. */
DEV void stage_kv_vec(float *ks, float *vs, const float *kbase, const float *vbase,
                      long long t0, int j0, int j1, int hd)
{
    const int q4 = hd / 4, n = (j1 - j0) * q4;
    for (int i0 = threadIdx.x; i0 < n; i0 += 8 * blockDim.x) {
        float4 kv[8], vv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x;
            if (i < n) {
                const int j = j0 + i / q4, d = 4 * (i % q4);
                kv[u] = *(const float4 *)(kbase + (t0 + j) * hd + d);
                vv[u] = *(const float4 *)(vbase + (t0 + j) * hd + d);
            }
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x;
            if (i < n) {
                const int j = j0 + i / q4, d = 4 * (i % q4);
                float *kd = ks + j * (hd + 1) + d;
                kd[0] = kv[u].x;
                kd[1] = kv[u].y;
                kd[2] = kv[u].z;
                kd[3] = kv[u].w;
                *(float4 *)(vs + j * (hd + 4) + d) = vv[u];
            }
        }
    }
}

/* K rows are stored with stride hd + 1 (a warp's threads read different keys at the same d:
 * conflict-free), V rows with stride hd + 4 (threads read consecutive d of one key; the
 * stride keeps float4 stores aligned).  Softmax of a tile: one warp per head, lane j =
 * key j, fixed butterfly reductions (HIP_ATTN_TILE <= warp size). */
template <bool SPLIT>
__global__ void __launch_bounds__(HIP_ATTN_THREADS) k_attn(hip_attn_args a)
{
    PDL_EARLY_READS;
    const int G = a.nh / a.nkv, hd = a.hd, T = HIP_ATTN_TILE;
    float *qs = (float *)dyn_smem4;
    float *os = qs + G * hd;
    float *ks = os + G * hd;
    float *vs = ks + T * (hd + 1);
    float *ss = vs + T * (hd + 4);
    float *ms = ss + G * T;
    float *ls = ms + G;
    float *al = ls + G;
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nwarps = blockDim.x / MOERT_WARP;
    const int r = SPLIT ? 0 : blockIdx.x;
    const int g = blockIdx.y;
    const long long pos = a.sp->pos0 + r;
    if (pos < 0 || pos >= a.max_seq) {
        if (threadIdx.x == 0)
            *a.err_flag = 2;
        return;
    }
    const long long nkeys = pos + 1;
    long long kbeg = 0, kend = nkeys;
    if (SPLIT) {
        kbeg = (long long)blockIdx.x * HIP_ATTN_SPLIT;
        if (kbeg >= nkeys)
            return; /* this split is past the last key; combine never reads it */
        kend = min(kbeg + (long long)HIP_ATTN_SPLIT, nkeys);
    }
    /* the cache is [kv head][position][d]: kv head g's keys are one contiguous run */
    const float *kbase = a.kc + (long long)g * a.max_seq * hd;
    const float *vbase = a.vc + (long long)g * a.max_seq * hd;
    const bool vec = (hd % 4) == 0;
    /* decode: this split's keys before pos were stored by earlier steps, so they are staged
     * while the previous kernel drains; only key pos (this step's) waits */
    int pre = 0;
    if (SPLIT && vec && HIP_ATTN_SPLIT <= HIP_ATTN_TILE && min(kend, pos) > kbeg) {
        pre = (int)(min(kend, pos) - kbeg);
        stage_kv_vec(ks, vs, kbase, vbase, kbeg, 0, pre, hd);
    }
    moert_pdl_wait();
    const float *qrow = a.qkv + (long long)r * a.qkv_dim + (long long)g * G * hd;
    /* loads first, 8 per thread in flight, then the stores: one memory round trip */
    for (int i0 = threadIdx.x; i0 < G * hd; i0 += 8 * blockDim.x) {
        float qv[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x;
            qv[u] = i < G * hd ? qrow[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            const int i = i0 + u * blockDim.x;
            if (i < G * hd) {
                qs[i] = qv[u];
                os[i] = 0.0f;
            }
        }
    }
    for (int h = threadIdx.x; h < G; h += blockDim.x) {
        ms[h] = -INFINITY;
        ls[h] = 0.0f;
    }
    __syncthreads();
    for (long long t0 = kbeg; t0 < kend; t0 += T) {
        const int nt = (int)min((long long)T, kend - t0);
        if (vec && SPLIT) {
            stage_kv_vec(ks, vs, kbase, vbase, t0, t0 == kbeg ? pre : 0, nt, hd);
        } else if (vec) { /* prefill: many tiles per block; this simpler loop measured faster */
            const int q4 = hd / 4;
            for (int i = threadIdx.x; i < nt * q4; i += blockDim.x) {
                int j = i / q4, d = 4 * (i % q4);
                float4 kv = *(const float4 *)(kbase + (t0 + j) * hd + d);
                float4 vv = *(const float4 *)(vbase + (t0 + j) * hd + d);
                float *kd = ks + j * (hd + 1) + d;
                kd[0] = kv.x;
                kd[1] = kv.y;
                kd[2] = kv.z;
                kd[3] = kv.w;
                *(float4 *)(vs + j * (hd + 4) + d) = vv;
            }
        } else {
            for (int i = threadIdx.x; i < nt * hd; i += blockDim.x) {
                int j = i / hd, d = i % hd;
                ks[j * (hd + 1) + d] = kbase[(t0 + j) * hd + d];
                vs[j * (hd + 4) + d] = vbase[(t0 + j) * hd + d];
            }
        }
        __syncthreads();
        /* scores: lane = key, warp = up to 4 heads at once (independent chains sharing
         * each K element; every score is still one serial chain over d) */
        if (lane < nt) {
            const float *kr = ks + lane * (hd + 1);
            for (int h0 = warp; h0 < G; h0 += 4 * nwarps) {
                float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                const bool hv[4] = {true, h0 + nwarps < G, h0 + 2 * nwarps < G, h0 + 3 * nwarps < G};
#pragma unroll 4
                for (int d = 0; d < hd; d++) {
                    const float kd = kr[d];
#pragma unroll
                    for (int m = 0; m < 4; m++)
                        if (hv[m])
                            sc[m] = fmaf(qs[(h0 + m * nwarps) * hd + d], kd, sc[m]);
                }
#pragma unroll
                for (int m = 0; m < 4; m++)
                    if (hv[m])
                        ss[(h0 + m * nwarps) * T + lane] = sc[m] * a.scale;
            }
        }
        __syncthreads();
        for (int h = warp; h < G; h += nwarps) {
            float sc = lane < nt ? ss[h * T + lane] : -INFINITY;
            float mold = ms[h];
            float mt = fmaxf(mold, warp_max(sc));
            float p = lane < nt ? expf(sc - mt) : 0.0f;
            float sum = warp_sum(p);
            if (lane < nt)
                ss[h * T + lane] = p;
            if (lane == 0) {
                float alpha = expf(mold - mt); /* exp(-inf) = 0 on the first tile */
                al[h] = alpha;
                ls[h] = ls[h] * alpha + sum;
                ms[h] = mt;
            }
        }
        __syncthreads();
        /* P V: thread = element d of up to 8 heads (independent chains sharing each V
         * element; every output still one serial chain over the keys) */
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            for (int h0 = 0; h0 < G; h0 += 8) {
                float o[8];
#pragma unroll
                for (int m = 0; m < 8; m++)
                    o[m] = h0 + m < G ? os[(h0 + m) * hd + d] * al[h0 + m] : 0.0f;
#pragma unroll 4
                for (int j = 0; j < nt; j++) {
                    const float vd = vs[j * (hd + 4) + d];
#pragma unroll
                    for (int m = 0; m < 8; m++)
                        if (h0 + m < G)
                            o[m] = fmaf(ss[(h0 + m) * T + j], vd, o[m]);
                }
#pragma unroll
                for (int m = 0; m < 8; m++)
                    if (h0 + m < G)
                        os[(h0 + m) * hd + d] = o[m];
            }
        }
        __syncthreads();
    }
    if (SPLIT) {
        const int sp = blockIdx.x;
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
            int h = i / hd, d = i % hd;
            float *pp = a.part + ((long long)(g * G + h) * a.max_splits + sp) * (hd + 2);
            pp[2 + d] = os[i];
            if (d == 0) {
                pp[0] = ms[h];
                pp[1] = ls[h];
            }
        }
#if MOERT_ATTN_FUSED_MERGE
        /* The last split of this kv head to finish merges all of them, in split order (the
         * ticket only decides which block does it, never the arithmetic). */
        __threadfence();
        __syncthreads();
        __shared__ int last;
        const int nsplit = (int)((nkeys + HIP_ATTN_SPLIT - 1) / HIP_ATTN_SPLIT);
        if (threadIdx.x == 0)
            last = atomicAdd(&a.tickets[g], 1) == nsplit - 1;
        __syncthreads();
        if (!last)
            return;
        __threadfence();
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
            int h = i / hd, d = i % hd;
            const volatile float *base = a.part + (long long)(g * G + h) * a.max_splits * (hd + 2);
            float m = -INFINITY;
            for (int q = 0; q < nsplit; q++)
                m = fmaxf(m, base[(long long)q * (hd + 2)]);
            float l = 0.0f, o = 0.0f;
            for (int q = 0; q < nsplit; q++) {
                const volatile float *pp = base + (long long)q * (hd + 2);
                float f = expf(pp[0] - m);
                l = fmaf(pp[1], f, l);
                o = fmaf(pp[2 + d], f, o);
            }
            a.out[(long long)(g * G + h) * hd + d] = o / l;
        }
        if (threadIdx.x == 0)
            a.tickets[g] = 0; /* ready for the next layer / step */
#endif
    } else {
        float *orow = a.out + (long long)r * a.q_dim + (long long)g * G * hd;
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x)
            orow[i] = os[i] / ls[i / hd];
    }
}

/* Greedy choice on the device: arg-max of the last token's logits (ties -> lower index, as
 * ops_argmax), so a greedy decode step reads back 4 bytes instead of the whole row.  Two
 * passes over a fixed partition (HIP_ARGMAX_BLOCKS contiguous chunks, then one block over
 * the partials): the result is the same total order whatever the partition. */
__global__ void __launch_bounds__(256) k_argmax_part(const float *logits, long long V, int all_rows,
                                                     const hip_step_params *sp, float *pv, int *pi)
{
    moert_pdl_wait();
    __shared__ float smv[32];
    __shared__ int smi[32];
    const float *row = logits + (all_rows ? (sp->n_rows - 1) * V : 0);
    long long chunk = (V + gridDim.x - 1) / gridDim.x, b0 = (long long)blockIdx.x * chunk;
    long long b1 = min(V, b0 + chunk);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (long long i = b0 + threadIdx.x; i < b1; i += blockDim.x) {
        float v = row[i];
        if (better(v, (int)i, bv, bi)) {
            bv = v;
            bi = (int)i;
        }
    }
    block_argmax(bv, bi, smv, smi);
    if (threadIdx.x == 0) {
        pv[blockIdx.x] = bv;
        pi[blockIdx.x] = bi;
    }
}

__global__ void __launch_bounds__(256) k_argmax_final(const float *pv, const int *pi, int n, int32_t *out,
                                                      int32_t *host_out, const hip_step_params *sp)
{
    moert_pdl_wait();
    __shared__ float smv[32];
    __shared__ int smi[32];
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (better(pv[i], pi[i], bv, bi)) {
            bv = pv[i];
            bi = pi[i];
        }
    block_argmax(bv, bi, smv, smi);
    if (threadIdx.x == 0) {
        *out = bi == 0x7fffffff ? 0 : bi;
        if (host_out) /* one slot per parity: the host may read a step's pick after the next began */
            host_out[sp->parity] = *out;
    }
}

hipError_t hip_launch_argmax(const float *logits, long long V, int all_rows, const hip_step_params *sp,
                             float *pv, int *pi, int32_t *out, int32_t *host_out, hipStream_t s)
{
    MOERT_LAUNCH(k_argmax_part, HIP_ARGMAX_BLOCKS, 256, 0, s, logits, V, all_rows, sp, pv, pi);
    hipError_t e = hipGetLastError();
    if (e != hipSuccess)
        return e;
    MOERT_LAUNCH(k_argmax_final, 1, 256, 0, s, (const float *)pv, (const int *)pi, HIP_ARGMAX_BLOCKS, out,
                 host_out, sp);
    return hipGetLastError();
}

#if !MOERT_ATTN_FUSED_MERGE
/* Output element d's l and o over splits [0, n) of rows pp0 (stride hd + 2: m, l, o[hd]) for
 * the max m over all splits, in split order: both merge kernels, so the same bits. */
DEV void merge_sums(const float *pp0, int n, int hd, int d, float m, float &l, float &o)
{
#pragma unroll 8
    for (int s = 0; s < n; s++) {
        const float *pp = pp0 + (long long)s * (hd + 2);
        float f = expf(pp[0] - m);
        l = fmaf(pp[1], f, l);
        o = fmaf(pp[2 + d], f, o);
    }
}

/* Merges the decode splits of one head, in split order. */
__global__ void __launch_bounds__(128) k_attn_combine(hip_attn_args a)
{
    PDL_EARLY_READS;
    const int h = blockIdx.x, hd = a.hd;
    const long long pos = a.sp->pos0; /* step parameter */
    if (pos < 0 || pos >= a.max_seq)
        return;
    moert_pdl_wait();
    const int n = (int)((pos + 1 + HIP_ATTN_SPLIT - 1) / HIP_ATTN_SPLIT);
    const float *base = a.part + (long long)h * a.max_splits * (hd + 2);
    float m = -INFINITY;
#pragma unroll 8
    for (int s = 0; s < n; s++)
        m = fmaxf(m, base[(long long)s * (hd + 2)]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float l = 0.0f, o = 0.0f;
        merge_sums(base, n, hd, d, m, l, o);
        a.out[(long long)h * hd + d] = o / l;
    }
}

/* MOERT_HIP_MERGESTAGE=1 (off by default: not yet measured): k_attn_combine_staged for heads
 * it takes.  The row kernel's thread loads its splits' m, then l and o, in batches of 8:
 * about six dependent L2 round trips (4.2 us a layer in the timeline).  This one copies the
 * partials into shared memory with every load of a thread in flight, then runs the same
 * arithmetic from there: the max over all splits (fmaxf: the same value in any order, and a
 * zero's sign does not reach expf(pp[0] - m)) and merge_sums. */
#define MERGE_THREADS 128
#define MERGE_SMEM (46 * 1024) /* under the 48 KB a launch gets without opting in */
#define MERGE_LOADS 16
static __host__ __device__ int merge_tile(int hd)
{
    const int t = MERGE_SMEM / (int)(sizeof(float) * (size_t)(hd + 2));
    return t < 64 ? t : 64;
}
/* float2 rows (hd + 2 even), at most two output elements a thread (merge_tile is then >= 44) */
static bool merge_stage_takes(int hd)
{
    return hd % 2 == 0 && hd <= 2 * MERGE_THREADS;
}

/* n floats (even) from src to dst, as float2, MERGE_LOADS a thread in flight before its stores */
DEV void merge_stage(float *dst, const float *src, long long n)
{
    const long long n2 = n / 2;
    for (long long i0 = threadIdx.x; i0 < n2; i0 += (long long)MERGE_LOADS * blockDim.x) {
        float2 v[MERGE_LOADS];
#pragma unroll
        for (int u = 0; u < MERGE_LOADS; u++) {
            const long long i = i0 + (long long)u * blockDim.x;
            if (i < n2)
                v[u] = ((const float2 *)src)[i];
        }
#pragma unroll
        for (int u = 0; u < MERGE_LOADS; u++) {
            const long long i = i0 + (long long)u * blockDim.x;
            if (i < n2)
                ((float2 *)dst)[i] = v[u];
        }
    }
}

__global__ void __launch_bounds__(MERGE_THREADS) k_attn_combine_staged(hip_attn_args a)
{
    PDL_EARLY_READS;
    __shared__ float wmax[MERGE_THREADS / MOERT_WARP];
    float *cs = (float *)dyn_smem4;
    const int h = blockIdx.x, hd = a.hd, T = merge_tile(hd), lane = threadIdx.x % MOERT_WARP;
    const long long pos = a.sp->pos0; /* step parameter */
    if (pos < 0 || pos >= a.max_seq)
        return;
    moert_pdl_wait();
    const int n = (int)((pos + 1 + HIP_ATTN_SPLIT - 1) / HIP_ATTN_SPLIT);
    const float *base = a.part + (long long)h * a.max_splits * (hd + 2);
    float m = -INFINITY;
    if (n <= T) {
        merge_stage(cs, base, (long long)n * (hd + 2));
        __syncthreads();
        for (int s = 0; s < n; s++)
            m = fmaxf(m, cs[(long long)s * (hd + 2)]);
    } else { /* the max first, over every split in parallel */
        for (int s = threadIdx.x; s < n; s += blockDim.x)
            m = fmaxf(m, base[(long long)s * (hd + 2)]);
        for (int off = MOERT_WARP / 2; off > 0; off >>= 1)
            m = fmaxf(m, moert_shfl_xor(m, off));
        if (lane == 0)
            wmax[threadIdx.x / MOERT_WARP] = m;
        __syncthreads();
        for (int w = 0; w < (int)blockDim.x / MOERT_WARP; w++)
            m = fmaxf(m, wmax[w]);
    }
    float l[2] = {0.0f, 0.0f}, o[2] = {0.0f, 0.0f};
    for (int t0 = 0; t0 < n; t0 += T) {
        const int nt = min(T, n - t0);
        if (n > T) {
            __syncthreads(); /* the previous tile is read */
            merge_stage(cs, base + (long long)t0 * (hd + 2), (long long)nt * (hd + 2));
            __syncthreads();
        }
        for (int u = 0; u < 2; u++) {
            const int d = threadIdx.x + u * blockDim.x;
            if (d < hd)
                merge_sums(cs, nt, hd, d, m, l[u], o[u]);
        }
    }
    for (int u = 0; u < 2; u++) {
        const int d = threadIdx.x + u * blockDim.x;
        if (d < hd)
            a.out[(long long)h * hd + d] = o[u] / l[u];
    }
}
#endif

/* ---- router: softmax over E, top-k (ties -> lower index), optional renormalisation ---- */
/* Warp arg-max under better(): every lane ends with the winner. */
DEV void warp_argmax(float &v, int &i)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1) {
        float ov = moert_shfl_xor(v, m);
        int oi = moert_shfl_xor(i, m);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

DEV int warp_min_i(int v)
{
#pragma unroll
    for (int m = 1; m < MOERT_WARP; m <<= 1)
        v = min(v, moert_shfl_xor(v, m));
    return v;
}

/* Router: one warp per row.  Lane l owns experts l, l + WARP, ...: it alone reads and
 * writes their probabilities and taken flags, so the k selection rounds need shuffles
 * only.  Softmax (max, exp, butterfly sum), then k arg-max rounds (ties -> lower index),
 * then the renormalisation as a sequential sum in slot order. */
/* Copies a row's E floats into shared memory, lane-owned (lane l: l, l + WARP, ...), with
 * 4 loads in flight per lane. */
DEV void stage_lane_owned(float *dst, const float *src, int E, int lane)
{
    for (int i0 = lane; i0 < E; i0 += 4 * MOERT_WARP) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * MOERT_WARP;
            v[u] = i < E ? src[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * MOERT_WARP;
            if (i < E)
                dst[i] = v[u];
        }
    }
}

/* One warp routes one row.  On entry smem holds the row's E logits (lane l wrote l,
 * l + WARP, ...: each lane reads only its own); smem = E floats + E ints + K floats. */
/* The softmax of one warp's staged logits, in place (the top-k kernels' common first part). */
DEV void route_softmax(float *probs, int E)
{
    const int lane = threadIdx.x % MOERT_WARP;
    float mx = -INFINITY;
    for (int i = lane; i < E; i += MOERT_WARP)
        mx = fmaxf(mx, probs[i]);
    mx = warp_max(mx);
    float s = 0.0f;
    for (int i = lane; i < E; i += MOERT_WARP) {
        float p = expf(probs[i] - mx);
        probs[i] = p;
        s += p;
    }
    s = warp_sum(s);
    for (int i = lane; i < E; i += MOERT_WARP)
        probs[i] = probs[i] / s;
}

/* One thread: the routing weights of the K selected probabilities (renormalised with norm). */
DEV void route_weights(float *wr, const float *sel, int K, int norm)
{
    float sum = 0.0f;
    if (norm)
        for (int j = 0; j < K; j++)
            sum += sel[j];
    for (int j = 0; j < K; j++)
        wr[j] = norm ? sel[j] / sum : sel[j];
}

/* One thread: the snapshots of a traced row (each output on its own: either may be rewritten
 * later in the step without the other). */
DEV void route_snapshot(const float *wr, const int32_t *ir, float *w2, int32_t *ids2, long long r, int K)
{
    for (int j = 0; j < K; j++) {
        if (w2)
            w2[r * K + j] = wr[j];
        if (ids2)
            ids2[r * K + j] = ir[j];
    }
}

DEV void route_warp(float *w_row, int32_t *id_row, int E, int K, int norm, void *smem)
{
    float *probs = (float *)smem;
    int *taken = (int *)(probs + E);
    float *sel = (float *)(taken + E);
    const int lane = threadIdx.x % MOERT_WARP;
    route_softmax(probs, E);
    for (int i = lane; i < E; i += MOERT_WARP)
        taken[i] = 0;
    float *wr = w_row;
    int32_t *ir = id_row;
    for (int j = 0; j < K; j++) {
        float bv = -1.0f; /* below every probability */
        int bi = 0x7fffffff;
        for (int i = lane; i < E; i += MOERT_WARP)
            if (!taken[i] && better(probs[i], i, bv, bi)) {
                bv = probs[i];
                bi = i;
            }
        warp_argmax(bv, bi);
        if (bi < 0 || bi >= E) { /* only NaN probabilities left: the lowest free index */
            int lf = 0x7fffffff;
            for (int i = lane; i < E; i += MOERT_WARP)
                if (!taken[i]) {
                    lf = i;
                    break;
                }
            bi = warp_min_i(lf);
        }
        float mine = (bi % MOERT_WARP) == lane ? probs[bi] : 0.0f;
        float pw = moert_shfl(mine, bi % MOERT_WARP);
        if ((bi % MOERT_WARP) == lane)
            taken[bi] = 1;
        if (lane == 0) {
            ir[j] = bi;
            sel[j] = pw;
        }
    }
    if (lane == 0)
        route_weights(wr, sel, K, norm);
}

__global__ void __launch_bounds__(64) k_route(const float *logits, float *w, int32_t *ids, float *w2,
                                              int32_t *ids2, int E, int K, int norm)
{
    moert_pdl_wait();
    if (threadIdx.x >= MOERT_WARP)
        return;
    const int r = blockIdx.x, lane = threadIdx.x;
    float *probs = (float *)dyn_smem4;
    stage_lane_owned(probs, logits + (long long)r * E, E, lane);
    route_warp(w + (long long)r * K, ids + (long long)r * K, E, K, norm, dyn_smem4);
    if (lane == 0) /* lane 0 wrote all of both */
        route_snapshot(w + (long long)r * K, ids + (long long)r * K, w2, ids2, r, K);
}

/* The same choice as k_route with the k arg-max rounds replaced by ranks: warp 0 computes
 * the softmax (route_softmax, as route_warp), then each of the block's threads ranks its experts
 * under better() (a strict total order on probabilities that are not NaN), and rank j < K
 * is slot j: the expert round j of route_warp picks.  A row with a NaN probability is
 * routed by route_warp itself. */
#define ROUTE_RANK_THREADS 128
#define HIP_ROUTE_MAX_K 32 /* slots a row (Qwen3-30B-A3B: 8); more take k_route */
__global__ void __launch_bounds__(ROUTE_RANK_THREADS) k_route_rank(const float *logits, float *w, int32_t *ids,
                                                                   float *w2, int32_t *ids2, int E, int K,
                                                                   int norm)
{
    moert_pdl_wait();
    const int r = blockIdx.x, lane = threadIdx.x % MOERT_WARP;
    const bool w0 = threadIdx.x < MOERT_WARP;
    float *probs = (float *)dyn_smem4;
    float *sel = probs + E + E; /* route_warp's layout: probs, taken, sel */
    __shared__ int sel_id[HIP_ROUTE_MAX_K];
    float *wr = w + (long long)r * K;
    int32_t *ir = ids + (long long)r * K;
    if (w0) {
        stage_lane_owned(probs, logits + (long long)r * E, E, lane);
        route_softmax(probs, E);
    }
    __syncthreads();
    int nan_seen = 0;
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        const float p = probs[i];
        nan_seen |= p != p;
        int rank = 0;
#pragma unroll 8
        for (int j = 0; j < E; j++)
            rank += better(probs[j], j, p, i) ? 1 : 0;
        if (rank < K) {
            sel_id[rank] = i;
            sel[rank] = p;
        }
    }
    if (__syncthreads_or(nan_seen)) {
        if (w0) {
            stage_lane_owned(probs, logits + (long long)r * E, E, lane);
            route_warp(wr, ir, E, K, norm, dyn_smem4);
        }
    } else if (threadIdx.x == 0) {
        for (int j = 0; j < K; j++)
            ir[j] = sel_id[j];
        route_weights(wr, sel, K, norm);
    }
    if (threadIdx.x == 0)
        route_snapshot(wr, ir, w2, ids2, r, K);
}

/* ---- MoE grouping (prefill) ------------------------------------------------------------
 * k_moe_rank: block e finds the assignments routed to expert e in assignment order with a
 * ballot/popcount scan (the stable rank of each within its expert) and their count.
 * k_moe_place: one block scans the counts into offsets (in parallel: a serial walk over
 * the experts was a chain of dependent loads, tens of microseconds a layer), writes the GEMM
 * tile table, and places each assignment at offs[e] + rank.  No atomics; identical every run. */
DEV int safe_expert(int32_t id, int E, int *err)
{
    if (id < 0 || id >= E) {
        *err = 3;
        return 0;
    }
    return id;
}

__global__ void __launch_bounds__(256) k_moe_rank(hip_moe_index_args a)
{
    moert_pdl_wait();
    __shared__ int wtot[MAX_WARPS];
    const int e = blockIdx.x;
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const uint64_t below = lane == 0 ? 0ull : (~0ull >> (64 - lane));
    int running = 0;
    for (int base = 0; base < a.rk; base += blockDim.x) {
        int i = base + threadIdx.x;
        int flag = i < a.rk && safe_expert(a.ids[i], a.E, a.err_flag) == e;
        uint64_t m = moert_ballot(flag);
        int lp = moert_popc64(m & below);
        if (lane == 0)
            wtot[w] = moert_popc64(m);
        __syncthreads();
        int woff = 0, tot = 0;
        for (int q = 0; q < nw; q++) {
            woff += q < w ? wtot[q] : 0;
            tot += wtot[q];
        }
        if (flag)
            a.inv[i] = running + woff + lp;
        running += tot;
        __syncthreads();
    }
    if (threadIdx.x == 0)
        a.counts[e] = running;
}

/* Exclusive prefix sums of (v0, v1) over the block's threads (blockDim.x a multiple of the
 * warp, at most 1024): each warp scans by shuffles, then the warp totals are scanned once.
 * *t0, *t1 receive the block's totals. */
DEV void block_scan2(int v0, int v1, int *x0, int *x1, int *t0, int *t1)
{
    __shared__ int ws[2][MAX_WARPS];
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP, nw = blockDim.x / MOERT_WARP;
    int s0 = v0, s1 = v1;
    for (int d = 1; d < MOERT_WARP; d *= 2) {
        int u0 = moert_shfl_up(s0, d), u1 = moert_shfl_up(s1, d);
        if (lane >= d) {
            s0 += u0;
            s1 += u1;
        }
    }
    if (lane == MOERT_WARP - 1) {
        ws[0][w] = s0;
        ws[1][w] = s1;
    }
    __syncthreads();
    int b0 = 0, b1 = 0, a0 = 0, a1 = 0;
    for (int q = 0; q < nw; q++) {
        b0 += q < w ? ws[0][q] : 0;
        b1 += q < w ? ws[1][q] : 0;
        a0 += ws[0][q];
        a1 += ws[1][q];
    }
    *x0 = b0 + s0 - v0;
    *x1 = b1 + s1 - v1;
    *t0 = a0;
    *t1 = a1;
    __syncthreads(); /* ws is reused by the next call */
}

/* The counts scanned into offsets and tile counts into tile-table positions, blockDim.x
 * experts at a time (the table equals a serial walk over experts 0 .. E-1); each expert's
 * thread writes its own tiles. */
__global__ void __launch_bounds__(256) k_moe_place(hip_moe_index_args a)
{
    moert_pdl_wait();
    int off = 0, nt = 0;
    for (int e0 = 0; e0 < a.E; e0 += blockDim.x) {
        const int e = e0 + threadIdx.x;
        const int c = e < a.E ? a.counts[e] : 0, tc = (c + a.bm - 1) / a.bm;
        int xo, xt, to, tt;
        block_scan2(c, tc, &xo, &xt, &to, &tt);
        if (e < a.E) {
            const int o = off + xo;
            a.offs[e] = o;
            for (int q = 0; q < tc; q++) {
                int t = nt + xt + q;
                a.tiles[1 + 3 * t] = e;
                a.tiles[2 + 3 * t] = o + q * a.bm;
                a.tiles[3 + 3 * t] = o + min((q + 1) * a.bm, c);
            }
        }
        off += to;
        nt += tt;
    }
    if (threadIdx.x == 0) {
        a.offs[a.E] = off;
        a.tiles[0] = nt;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < a.rk; i += blockDim.x) {
        int e = safe_expert(a.ids[i], a.E, a.err_flag);
        int p = a.offs[e] + a.inv[i];
        a.inv[i] = p;
        a.order[p] = i;
    }
}

/* out[t] = sum over slots j in top-k order of w[t, j] * down[position of (t, j)]: the first
 * term a product, then fused multiply-adds (ops_weighted_sum's order). */
__global__ void __launch_bounds__(256) k_moe_combine(const float *down, const int32_t *inv,
                                                     const float *tw, float *out, int K,
                                                     long long H)
{
    moert_pdl_wait();
    const int t = blockIdx.y;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= H)
        return;
    const int32_t *iv = inv + (long long)t * K;
    const float *w = tw + (long long)t * K;
    float acc = w[0] * down[(long long)iv[0] * H + i];
    for (int j = 1; j < K; j++)
        acc = fmaf(w[j], down[(long long)iv[j] * H + i], acc);
    out[(long long)t * H + i] = acc;
}

/* ---- MoE / MLP for one token (decode) ------------------------------------------------
 * gate/up: a warp computes gate row n and up row n of the slot's expert and writes
 * h[slot, n] = silu(gate) * up.  down: a warp computes output row i for every slot (two
 * slots in flight) and combines them in slot order. */
template <int DT, bool VEC>
__global__ void __launch_bounds__(HIP_GEMV_THREADS, MOERT_MOE_MINB) k_moe_gateup_dec(hip_moe_dec_args a)
{
    moert_pdl_wait();
    {   /* the expert ids are known now: start this warp's first rows towards L2 while the
         * block stages x (a hint only) */
        const int ln = threadIdx.x % MOERT_WARP;
        const long long g0 = (long long)blockIdx.x * (blockDim.x / MOERT_WARP) + threadIdx.x / MOERT_WARP;
        const long long pairs = (a.I + 1) / 2;
        if (g0 < (long long)a.kslots * pairs) {
            int id = a.ids ? a.ids[g0 / pairs] : 0;
            if (id >= 0 && id < a.E) {
                const long long n0 = 2 * (g0 % pairs), bytes = row_bytes_t<DT>(a.H);
                for (long long q = 0; q < 2 && n0 + q < a.I; q++) {
                    const unsigned char *gw = (const unsigned char *)a.gate + (long long)id * a.estride_gu + (n0 + q) * bytes;
                    const unsigned char *uw = (const unsigned char *)a.up + (long long)id * a.estride_gu + (n0 + q) * bytes;
                    for (long long off = (long long)ln * 128; off < bytes; off += (long long)MOERT_WARP * 128) {
                        moert_prefetch_l2(gw + off);
                        moert_prefetch_l2(uw + off);
                    }
                }
            }
        }
    }
    float *xs = (float *)dyn_smem4;
    stage_x(xs, a.x, a.H);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long rb = row_bytes_t<DT>(a.H);
    /* a warp task: rows n and n + 1 of one slot's gate and up (four streams in flight) */
    const long long pairs = (a.I + 1) / 2, total = (long long)a.kslots * pairs;
    for (long long g = (long long)blockIdx.x * nw + warp; g < total; g += (long long)gridDim.x * nw) {
        const int j = (int)(g / pairs);
        const long long n = 2 * (g % pairs);
        const bool two = n + 1 < a.I;
        const long long e = a.ids ? safe_expert(a.ids[j], a.E, a.err_flag) : 0;
        const long long n1 = two ? n + 1 : n;
        const float *xr[4] = {xs, xs, xs, xs};
        const unsigned char *wr[4] = {
            (const unsigned char *)a.gate + e * a.estride_gu + n * rb,
            (const unsigned char *)a.up + e * a.estride_gu + n * rb,
            (const unsigned char *)a.gate + e * a.estride_gu + n1 * rb,
            (const unsigned char *)a.up + e * a.estride_gu + n1 * rb};
        const bool valid[4] = {true, true, two, two};
        float acc[4];
        gemv_dot<DT, VEC, 4>(xr, wr, valid, a.H, acc);
        if (lane == 0) {
            a.h[(long long)j * a.I + n] = silu_mul(acc[0], acc[1]);
            if (two)
                a.h[(long long)j * a.I + n + 1] = silu_mul(acc[2], acc[3]);
        }
    }
}

/* down: a warp computes output row i for up to 8 slots at once (their weight rows all in
 * flight) and combines them in slot order. */
/* The down projection's first output row for every slot, before the wait: the expert ids
 * were written by the route kernel two launches back (complete once the gate/up kernel
 * passed its wait); were one stale, the prefetch would only be wasted, never wrong. */
template <int DT> DEV void pdl_prefetch_moe_down(const hip_moe_dec_args &a)
{
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const long long i = (long long)blockIdx.x * (blockDim.x / MOERT_WARP) + warp;
    if (i >= a.H)
        return;
    const long long bytes = row_bytes_t<DT>(a.I);
    for (int j = 0; j < a.kslots; j++) {
        int id = a.ids ? a.ids[j] : 0;
        if (id < 0 || id >= a.E)
            continue;
        const unsigned char *w = (const unsigned char *)a.down + (long long)id * a.estride_d + i * bytes;
        for (long long off = (long long)lane * 128; off < bytes; off += (long long)MOERT_WARP * 128)
            moert_prefetch_l2(w + off);
    }
}

template <int DT, bool VEC>
__global__ void __launch_bounds__(HIP_GEMV_THREADS, MOERT_MOE_MINB) k_moe_down_dec(hip_moe_dec_args a)
{
    pdl_prefetch_moe_down<DT>(a);
    moert_pdl_wait();
    float *hs = (float *)dyn_smem4;
    stage_x(hs, a.h, (long long)a.kslots * a.I);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long rb = row_bytes_t<DT>(a.I);
    for (long long i = (long long)blockIdx.x * nw + warp; i < a.H; i += (long long)gridDim.x * nw) {
        float res = 0.0f;
        for (int j0 = 0; j0 < a.kslots; j0 += 8) {
            const float *xr[8];
            const unsigned char *wr[8];
            bool valid[8];
#pragma unroll
            for (int q = 0; q < 8; q++) {
                const int j = j0 + q < a.kslots ? j0 + q : j0;
                const long long e = a.ids ? safe_expert(a.ids[j], a.E, a.err_flag) : 0;
                xr[q] = hs + (long long)j * a.I;
                wr[q] = (const unsigned char *)a.down + e * a.estride_d + i * rb;
                valid[q] = j0 + q < a.kslots;
            }
            float acc[8];
            if (VEC)
                gemv_core<DT, 8, 2>(xr, wr, valid, a.I, acc);
            else
                gemv_core_scalar<DT, 8>(xr, wr, valid, a.I, acc);
            for (int q = 0; q < 8 && j0 + q < a.kslots; q++) {
                const int j = j0 + q;
                if (!a.tw)
                    res = acc[q]; /* dense MLP: one slot, no routing weight */
                else
                    res = j == 0 ? a.tw[0] * acc[q] : fmaf(a.tw[j], acc[q], res);
            }
        }
        if (lane == 0)
            put_out(a.out, a.out2, a.xadd, a.xadd2, i, res);
    }
}

/* ---- streaming GEMV (decode) ------------------------------------------------------------
 * Block = R consecutive output rows; its SG_T threads split every row's k into 16-byte
 * chunks (thread t: chunks t, t + SG_T, ...; CU of them per row in flight), so all of a
 * block's weight loads are issued at once, and the first ones before the PDL wait (weights
 * are never written by a kernel).  No shared-memory staging: each thread reads the x
 * elements of its own chunks.  Per row: a serial chain per thread over its chunks in
 * increasing k (w8_dot: the FMA chain of the widened weights, for block types the chunk's
 * scale factored out), the warp butterfly, then the warps' sums added in warp order.  One
 * fixed order per output; the grid never changes it.  Many short blocks: the block scheduler
 * keeps HBM busy across waves without a tail of double-duty warps (k_sgemv_p below is the
 * persistent form for GEMVs whose blocks are long, block types with many rows). */
#define SG_T 128

template <int DT, int R, int CU>
DEV void sg_load(W8<DT> (&wv)[CU][R], const unsigned char *const (&wr)[R], long long c0, long long nc)
{
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * SG_T;
#pragma unroll
        for (int i = 0; i < R; i++) {
            if (wr[i] && c < nc)
                wv[u][i].load_cs(wr[i], c * 8);
            else
                wv[u][i].zero();
        }
    }
}

/* acc[i] = w8_dot(chunk i, x0 x1, acc[i]) for one chunk of R rows. */
template <int DT, int R>
DEV void sg_fma1(const W8<DT> (&wv)[R], float4 x0, float4 x1, float (&acc)[R])
{
    const float sx = w8_wants_xsum<DT>::v ? w8_xsum(x0, x1) : 0.0f; /* once for the R rows */
#pragma unroll
    for (int i = 0; i < R; i++)
        acc[i] = w8_dot<DT>(wv[i], x0, x1, sx, acc[i]);
}

/* acc[i] = w8_dot(chunk, x[c*8 .. c*8+8), acc[i]), for the CU chunks of this round. */
template <int DT, int R, int CU>
DEV void sg_fma(const W8<DT> (&wv)[CU][R], const float *x, long long c0, long long nc, float (&acc)[R])
{
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * SG_T;
        if (c < nc)
            sg_fma1<DT, R>(wv[u], *(const float4 *)(x + c * 8), *(const float4 *)(x + c * 8 + 4), acc);
    }
}

/* ---- RMSNorm as a GEMV prologue (decode) -------------------------------------------------
 * A one-round GEMV block holds every element of its row: thread t the chunks t + SG_T u, so
 * elements 8t + j + 1024 u.  Those are exactly the elements thread 8t + j of k_rmsnorm's
 * 1024 holds (i + 1024 u), so the block recomputes that kernel's per-thread sums, its warp
 * butterflies (virtual lanes 8 (t % (WARP / 8)) + j: the first three levels inside a thread,
 * the others across lanes) and its warp-order total: the normed row has k_rmsnorm's bits,
 * and so does every product of the GEMV. */
static_assert(SG_T * 8 == NORM_THREADS, "a GEMV block's chunks are k_rmsnorm's threads");

template <int CU>
DEV void sg_norm(const hip_gemv_args &a, long long c0, long long nc, const float (&nwv)[CU][8], float4 (&xo)[CU][2])
{
    __shared__ float sm[NORM_THREADS / MOERT_WARP];
    float v[CU][8];
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * SG_T;
        float4 p0 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), p1 = p0;
        if (c < nc) {
            p0 = *(const float4 *)(a.x + c * 8);
            p1 = *(const float4 *)(a.x + c * 8 + 4);
        }
        v[u][0] = p0.x, v[u][1] = p0.y, v[u][2] = p0.z, v[u][3] = p0.w;
        v[u][4] = p1.x, v[u][5] = p1.y, v[u][6] = p1.z, v[u][7] = p1.w;
    }
    float s[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s[j] = 0.0f;
#pragma unroll
        for (int u = 0; u < CU; u++)
            s[j] = fmaf(v[u][j], v[u][j], s[j]);
    }
#pragma unroll
    for (int m = 1; m < 8; m <<= 1) {
        float t[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            t[j] = s[j] + s[j ^ m];
#pragma unroll
        for (int j = 0; j < 8; j++)
            s[j] = t[j];
    }
    float w = s[0];
#pragma unroll
    for (int m = 1; m < MOERT_WARP / 8; m <<= 1)
        w += moert_shfl_xor(w, m);
    if (threadIdx.x % (MOERT_WARP / 8) == 0)
        sm[threadIdx.x / (MOERT_WARP / 8)] = w;
    __syncthreads();
    const int lane = threadIdx.x % MOERT_WARP;
    const float tot = warp_sum(lane < NORM_THREADS / MOERT_WARP ? sm[lane] : 0.0f);
    const float r = 1.0f / sqrtf(tot / (float)a.k + a.eps);
#pragma unroll
    for (int u = 0; u < CU; u++) {
        float o[8];
#pragma unroll
        for (int j = 0; j < 8; j++)
            o[j] = nwv[u][j] * (v[u][j] * r);
        xo[u][0] = make_float4(o[0], o[1], o[2], o[3]);
        xo[u][1] = make_float4(o[4], o[5], o[6], o[7]);
        const long long c = c0 + (long long)u * SG_T;
        if (blockIdx.x == 0 && a.xn && c < nc) {
            *(float4 *)(a.xn + c * 8) = xo[u][0];
            *(float4 *)(a.xn + c * 8 + 4) = xo[u][1];
            if (a.xn2) {
                *(float4 *)(a.xn2 + c * 8) = xo[u][0];
                *(float4 *)(a.xn2 + c * 8 + 4) = xo[u][1];
            }
        }
    }
}

/* Reduces R per-thread partials over the block: warp butterflies into red[i][warp]; after
 * the barrier, row i's total is red[i][0] + red[i][1] + ... in warp order (sg_total). */
template <int R> DEV void sg_reduce(float (&acc)[R], float (*red)[MAX_WARPS])
{
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
#pragma unroll
    for (int i = 0; i < R; i++) {
        float v = warp_sum(acc[i]);
        if (lane == 0)
            red[i][w] = v;
    }
    __syncthreads();
}
DEV float sg_total(const float *red_row)
{
    const int nw = blockDim.x / MOERT_WARP;
    float s = red_row[0];
    for (int q = 1; q < nw; q++)
        s += red_row[q];
    return s;
}

/* ---- staged block-type loads (MOERT_HIP_QSTAGE) ------------------------------------------
 * Rows of Q8_0 / Q6_K / Q4_0 / Q5_0 start at any 2-byte offset, so W8 reads them in 1- and
 * 2-byte pieces: about ten load instructions per 8 weights, each asking L2 again for the
 * sectors its neighbours asked for (the Q6_K LM head streamed at 0.92 TB/s, bf16 at 4.6).
 * Staged, a warp copies the bytes of the 8 * WARP elements its lanes take next from one row
 * (a "piece": one Q6_K block, 8 Q8_0 blocks; it starts at a multiple of 256 elements, so at
 * a block boundary) into its own shared memory, one 16-byte load per lane over the span
 * rounded out to 16 bytes, at the same offset mod 16; the lanes then run the same W8 fetch
 * and get() on that copy: the same bytes in the same registers, the same products in the
 * same FMA order, so the outputs are the unstaged kernels' bits.  Warp-private buffers: no
 * block barrier; the loops that use them run warp-uniformly (a partial __syncwarp would
 * hang). */
template <int DT> struct qst {
    static const int pe = 8 * MOERT_WARP;                             /* elements of a piece */
    static const int pb = pe / dt_layout<DT>::be * dt_layout<DT>::bb; /* its bytes */
    static const int n16 = (14 + pb + 15) / 16; /* 16-byte words over it at any even offset */
    static_assert(dt_layout<DT>::be == 1 || dt_base<DT>::v != DT || (pe % dt_layout<DT>::be == 0 && n16 <= MOERT_WARP),
                  "a piece is whole blocks, one word a lane (plain and X4 types are never staged)");
};

/* 0: off; 1 (default): Q6_K only, the one type measured faster staged (bench-gpu Q4_K_M
 * decode 858 -> 872-884 tok/s, its Q6_K tensors; Q8_0 staged was slower, 1078 -> 926);
 * 2: the four 2-byte aligned types; 3: every block type (A/B for Q4_K, Q5_K). */
static int g_qstage = 1;

/* A one-digit setting: the digit d of variable `name` when bit d of `allowed` is set, else
 * `dflt` (unset, empty, longer or not allowed). */
static int env_digit(const char *name, unsigned allowed, int dflt)
{
    const char *v = getenv(name);
    return v && v[0] >= '0' && v[0] <= '9' && !v[1] && (allowed >> (v[0] - '0') & 1u) ? v[0] - '0' : dflt;
}

void hip_kernels_qstage_from_env(void)
{
    g_qstage = env_digit("MOERT_HIP_QSTAGE", 0xfu, 1); /* 0 .. 3 */
}

static bool qstage_for(int dt)
{
    if (dt == HIP_DT_Q6_K)
        return g_qstage >= 1;
    if (dt == HIP_DT_Q8_0 || dt == HIP_DT_Q4_0 || dt == HIP_DT_Q5_0)
        return g_qstage >= 2;
    return (dt == HIP_DT_Q4_K || dt == HIP_DT_Q5_K) && g_qstage == 3;
}

DEV void qst_syncwarp()
{
#if defined(MOERT_HIP_AMD)
    __builtin_amdgcn_fence(__ATOMIC_SEQ_CST, "wavefront"); /* a wave runs in lockstep: order LDS only */
    __builtin_amdgcn_wave_barrier();
#else
    __syncwarp();
#endif
}

/* The bytes of the piece of row elements e0 .. (e0 % pe == 0), where it starts */
template <int DT> DEV const unsigned char *qst_at(const unsigned char *row, long long e0)
{
    return row + e0 / dt_layout<DT>::be * dt_layout<DT>::bb;
}

/* This lane's 16-byte word of the piece at e0 of a row of k elements (zero past its span). */
template <int DT> DEV uint4 qst_word(const unsigned char *row, long long e0, long long k)
{
    const int lane = threadIdx.x % MOERT_WARP;
    const unsigned char *p = qst_at<DT>(row, e0);
    const long long e1 = e0 + qst<DT>::pe < k ? e0 + qst<DT>::pe : k;
    const long long nb = (e1 - e0) / dt_layout<DT>::be * dt_layout<DT>::bb;
    const unsigned off = (unsigned)((uintptr_t)p & 15u);
    const unsigned char *p16 = p - off;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (lane < (int)((off + nb + 15) / 16))
        v = ld_u128<true>(p16 + 16 * lane);
    return v;
}

/* Issues the global loads of a round: for the lane's chunks c0 + u * ST (u < CU), the
 * warp's piece of each row starts at chunk c0 - lane + u * ST. */
template <int DT, int R, int CU, int ST>
DEV void qst_load(uint4 (&pv)[CU][R], const unsigned char *const (&wr)[R], long long c0, long long nc, long long k)
{
    const int lane = threadIdx.x % MOERT_WARP;
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long cw = c0 - lane + (long long)u * ST;
#pragma unroll
        for (int i = 0; i < R; i++)
            pv[u][i] = wr[i] && cw < nc ? qst_word<DT>(wr[i], cw * 8, k) : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* Stores a round's words into the warp's buffers sm[CU][R][n16] (the caller syncs the warp
 * before, so no lane still reads the last round, and after). */
template <int DT, int R, int CU> DEV void qst_put(const uint4 (&pv)[CU][R], uint4 *sm)
{
    const int lane = threadIdx.x % MOERT_WARP;
    if (lane < qst<DT>::n16)
#pragma unroll
        for (int u = 0; u < CU; u++)
#pragma unroll
            for (int i = 0; i < R; i++)
                sm[(u * R + i) * qst<DT>::n16 + lane] = pv[u][i];
}

/* sg_load's chunks, fetched by W8 from the staged copy instead of global memory. */
template <int DT, int R, int CU, int ST>
DEV void qst_fetch(W8<DT> (&wv)[CU][R], const unsigned char *const (&wr)[R], const uint4 *sm, long long c0,
                   long long nc)
{
    const int lane = threadIdx.x % MOERT_WARP;
#pragma unroll
    for (int u = 0; u < CU; u++) {
        const long long c = c0 + (long long)u * ST;
#pragma unroll
        for (int i = 0; i < R; i++) {
            if (wr[i] && c < nc) {
                const unsigned off = (unsigned)((uintptr_t)qst_at<DT>(wr[i], (c - lane) * 8) & 15u);
                wv[u][i].load((const unsigned char *)(sm + (u * R + i) * qst<DT>::n16) + off, 8ll * lane);
            } else {
                wv[u][i].zero();
            }
        }
    }
}

/* QS: the weights staged through shared memory (qst), else loaded by W8 directly. */
/* NI: the norm prologue (sg_norm; one round, no staging). */
template <int DT, int R, int CU, bool QS, bool NI = false>
__global__ void __launch_bounds__(SG_T) k_sgemv(hip_gemv_args a)
{
    PDL_EARLY_READS;
    __shared__ float red[R][MAX_WARPS];
    __shared__ uint4 qsm[QS ? SG_T / MOERT_WARP * CU * R * qst<DT>::n16 : 1];
    const long long nc = a.k / 8, r0 = (long long)blockIdx.x * R;
    const unsigned char *wr[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        wr[i] = r0 + i < a.n_total ? gemv_row<DT>(a, r0 + i) : nullptr;
    float acc[R];
#pragma unroll
    for (int i = 0; i < R; i++)
        acc[i] = 0.0f;
    W8<DT> wv[CU][R];
    long long c0 = threadIdx.x;
    if (QS) {
        uint4 *sm = qsm + threadIdx.x / MOERT_WARP * (CU * R * qst<DT>::n16);
        uint4 pv[CU][R];
        qst_load<DT, R, CU, SG_T>(pv, wr, c0, nc, a.k);
        moert_pdl_wait();
        for (;;) { /* warp-uniform: the round's first chunk c0 - threadIdx.x is the block's */
            qst_put<DT, R, CU>(pv, sm);
            qst_syncwarp();
            qst_fetch<DT, R, CU, SG_T>(wv, wr, sm, c0, nc);
            const long long c1 = c0 + (long long)CU * SG_T;
            if (c1 - threadIdx.x < nc) /* the next round's loads in flight during this one's FMAs */
                qst_load<DT, R, CU, SG_T>(pv, wr, c1, nc, a.k);
            sg_fma<DT, R, CU>(wv, a.x, c0, nc, acc);
            c0 = c1;
            if (c0 - threadIdx.x >= nc)
                break;
            qst_syncwarp();
        }
    } else if constexpr (NI) {
        static_assert(!QS, "the norm prologue takes unstaged rows");
        float nwv[CU][8]; /* the norm weights, loaded while the previous kernel drains */
#pragma unroll
        for (int u = 0; u < CU; u++)
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const long long c = c0 + (long long)u * SG_T;
                nwv[u][j] = c < nc ? load_elem(a.nw, a.nw_dt, c * 8 + j) : 0.0f;
            }
        sg_load<DT, R, CU>(wv, wr, c0, nc);
        moert_pdl_wait();
        float4 xn[CU][2];
        sg_norm<CU>(a, c0, nc, nwv, xn);
#pragma unroll
        for (int u = 0; u < CU; u++)
            if (c0 + (long long)u * SG_T < nc)
                sg_fma1<DT, R>(wv[u], xn[u][0], xn[u][1], acc);
    } else {
        sg_load<DT, R, CU>(wv, wr, c0, nc);
        moert_pdl_wait();
        for (;;) {
            sg_fma<DT, R, CU>(wv, a.x, c0, nc, acc);
            c0 += (long long)CU * SG_T;
            if (c0 >= nc)
                break;
            sg_load<DT, R, CU>(wv, wr, c0, nc);
        }
    }
    sg_reduce<R>(acc, red);
    if (threadIdx.x < R && r0 + threadIdx.x < a.n_total)
        put_out(a.y, a.y2, a.xadd, a.xadd2, r0 + threadIdx.x, sg_total(red[threadIdx.x]));
}

/* ---- persistent streaming GEMV (GEMVs of many row groups: the LM head) ------------------
 * k_sgemv's blocks each load R rows, wait, then multiply: for block types the multiply (the
 * widening) is long, few blocks are resident (the staged Q6_K kernel holds 128 registers), and
 * HBM idles while they compute (the Q6_K LM head read 0.94 TB/s).  Here a resident grid walks
 * the row groups g = blockIdx.x, + gridDim.x, ...; the loads of the block's next group are in
 * flight while it multiplies the current one.  One round per group (k <= CU * SG_T * 8).  Each
 * output has k_sgemv's order (the same chunks per thread, FMA chain, butterfly and warp order),
 * so the bits are k_sgemv's whatever the grid.  QS: the next group's raw words wait in
 * registers and are staged after the multiply; else the next group's W8 loads do. */
template <int DT, int R> DEV void sgp_rows(const hip_gemv_args &a, long long g, const unsigned char *(&wr)[R])
{
#pragma unroll
    for (int i = 0; i < R; i++)
        wr[i] = g * R + i < a.n_total ? gemv_row<DT>(a, g * R + i) : nullptr;
}

template <int DT, int R, int CU, bool QS>
__global__ void __launch_bounds__(SG_T) k_sgemv_p(hip_gemv_args a)
{
    PDL_EARLY_READS;
    __shared__ float red[2][R][MAX_WARPS]; /* by group parity: a reader of the last group's sums
                                              is past the next reduce's barrier before a write */
    __shared__ uint4 qsm[QS ? SG_T / MOERT_WARP * CU * R * qst<DT>::n16 : 1];
    const long long nc = a.k / 8, ng = (a.n_total + R - 1) / R, c0 = threadIdx.x;
    long long g = blockIdx.x;
    const unsigned char *wr[R];
    sgp_rows<DT, R>(a, g, wr);
    W8<DT> wv[CU][R];
    uint4 pv[QS ? CU : 1][QS ? R : 1];
    uint4 *sm = qsm + (QS ? threadIdx.x / MOERT_WARP * (CU * R * qst<DT>::n16) : 0);
    if constexpr (QS)
        qst_load<DT, R, CU, SG_T>(pv, wr, c0, nc, a.k);
    else
        sg_load<DT, R, CU>(wv, wr, c0, nc);
    moert_pdl_wait();
    for (int par = 0; g < ng; par ^= 1) { /* block-uniform: the staged copies stay warp-uniform */
        if constexpr (QS) {
            qst_put<DT, R, CU>(pv, sm);
            qst_syncwarp();
            qst_fetch<DT, R, CU, SG_T>(wv, wr, sm, c0, nc);
        }
        const long long gn = g + gridDim.x;
        const unsigned char *wn[R];
        sgp_rows<DT, R>(a, gn, wn);
        W8<DT> wnext[QS ? 1 : CU][QS ? 1 : R];
        if (gn < ng) {
            if constexpr (QS)
                qst_load<DT, R, CU, SG_T>(pv, wn, c0, nc, a.k);
            else
                sg_load<DT, R, CU>(wnext, wn, c0, nc);
        }
        float acc[R];
#pragma unroll
        for (int i = 0; i < R; i++)
            acc[i] = 0.0f;
        sg_fma<DT, R, CU>(wv, a.x, c0, nc, acc);
        sg_reduce<R>(acc, red[par]);
        const long long r0 = g * R;
        if (threadIdx.x < R && r0 + threadIdx.x < a.n_total)
            put_out(a.y, a.y2, a.xadd, a.xadd2, r0 + threadIdx.x, sg_total(red[par][threadIdx.x]));
        g = gn;
#pragma unroll
        for (int i = 0; i < R; i++)
            wr[i] = wn[i];
        if constexpr (QS)
            qst_syncwarp(); /* every lane has read its copy before the next put */
        else
#pragma unroll
            for (int u = 0; u < CU; u++)
#pragma unroll
                for (int i = 0; i < R; i++)
                    wv[u][i] = wnext[u][i];
    }
}

/* MoE gate/up for one token: block = (slot j, rows n0 .. n0 + R - 1 of its expert's gate
 * and up); h[j, n] = silu(gate . x) * (up . x).  The expert id comes from the previous
 * kernel, so every load waits. */
template <int DT, int R, int CU, bool QS>
__global__ void __launch_bounds__(SG_T) k_smoe_gateup(hip_moe_dec_args a)
{
    moert_pdl_wait_release(a.release_late); /* late: k_smoe_down_early follows */
    __shared__ float red[2 * R][MAX_WARPS];
    __shared__ uint4 qsm[QS ? SG_T / MOERT_WARP * CU * 2 * R * qst<DT>::n16 : 1];
    const long long blocks_per_slot = (a.I + R - 1) / R;
    const int j = (int)(blockIdx.x / blocks_per_slot);
    const long long n0 = (blockIdx.x % blocks_per_slot) * R, nc = a.H / 8;
    const long long rb = row_bytes_t<DT>(a.H);
    const long long e = a.ids ? safe_expert(a.ids[j], a.E, a.err_flag) : 0;
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
    if (QS) {
        uint4 *sm = qsm + threadIdx.x / MOERT_WARP * (CU * 2 * R * qst<DT>::n16);
        uint4 pv[CU][2 * R];
        for (long long c0 = threadIdx.x; c0 - threadIdx.x < nc; c0 += (long long)CU * SG_T) { /* warp-uniform */
            qst_load<DT, 2 * R, CU, SG_T>(pv, wr, c0, nc, a.H);
            qst_syncwarp();
            qst_put<DT, 2 * R, CU>(pv, sm);
            qst_syncwarp();
            qst_fetch<DT, 2 * R, CU, SG_T>(wv, wr, sm, c0, nc);
            sg_fma<DT, 2 * R, CU>(wv, a.x, c0, nc, acc);
        }
    } else {
        for (long long c0 = threadIdx.x; c0 < nc; c0 += (long long)CU * SG_T) {
            sg_load<DT, 2 * R, CU>(wv, wr, c0, nc);
            sg_fma<DT, 2 * R, CU>(wv, a.x, c0, nc, acc);
        }
    }
    sg_reduce<2 * R>(acc, red);
    if (threadIdx.x < R && n0 + threadIdx.x < a.I)
        a.h[(long long)j * a.I + n0 + threadIdx.x] = silu_mul(sg_total(red[threadIdx.x]), sg_total(red[R + threadIdx.x]));
}

/* MoE down for one token (and the dense MLP's down: ids == NULL, one slot, no weight):
 * block = R output rows; warp w takes slots w, w + 4, ... (SPW of them at a time), lane l
 * the chunks l, l + WARP, ... (CPL at a time) of each.  Each slot's dot is one warp's
 * butterfly; thread i < R then combines the slots in slot order as the CPU does. */
#define SD_SPW 2
#define SD_CPL 3
/* Slot j0 + s * (warps)'s row pointers and h rows (ids read through L2, moert_ldcg, when EARLY: the
 * ids were written in this step, see k_smoe_down_early) */
template <int DT, int R, bool EARLY>
DEV void sd_rows(const hip_moe_dec_args &a, int j0, int nw, long long i0, long long rb,
                 const unsigned char *(&wr)[SD_SPW][R], const float *(&hr)[SD_SPW])
{
#pragma unroll
    for (int s = 0; s < SD_SPW; s++) {
        const int j = j0 + s * nw;
        const bool okj = j < a.kslots;
        const long long e =
            okj && a.ids ? safe_expert(EARLY ? moert_ldcg(a.ids + j) : a.ids[j], a.E, a.err_flag) : 0;
        hr[s] = a.h + (long long)(okj ? j : 0) * a.I;
#pragma unroll
        for (int i = 0; i < R; i++)
            wr[s][i] = okj && i0 + i < a.H ? (const unsigned char *)a.down + e * a.estride_d + (i0 + i) * rb
                                           : nullptr;
    }
}

/* The round's weight chunks c0 + m * WARP, loaded directly (unstaged types) */
template <int DT, int R>
DEV void sd_load(W8<DT> (&wv)[SD_SPW][SD_CPL][R], const unsigned char *const (&wr)[SD_SPW][R], long long c0,
                 long long nc)
{
#pragma unroll
    for (int s = 0; s < SD_SPW; s++)
#pragma unroll
        for (int m = 0; m < SD_CPL; m++)
#pragma unroll
            for (int i = 0; i < R; i++) {
                const long long c = c0 + (long long)m * MOERT_WARP;
                if (wr[s][i] && c < nc)
                    wv[s][m][i].load_cs(wr[s][i], c * 8);
                else
                    wv[s][m][i].zero();
            }
}

template <int DT, int R>
DEV void sd_dots(const W8<DT> (&wv)[SD_SPW][SD_CPL][R], const float *const (&hr)[SD_SPW], long long c0,
                 long long nc, float (&acc)[SD_SPW][R])
{
#pragma unroll
    for (int s = 0; s < SD_SPW; s++)
#pragma unroll
        for (int m = 0; m < SD_CPL; m++) {
            const long long c = c0 + (long long)m * MOERT_WARP;
            if (c >= nc)
                continue;
            const float4 x0 = *(const float4 *)(hr[s] + c * 8), x1 = *(const float4 *)(hr[s] + c * 8 + 4);
            const float sx = w8_wants_xsum<DT>::v ? w8_xsum(x0, x1) : 0.0f;
#pragma unroll
            for (int i = 0; i < R; i++)
                acc[s][i] = w8_dot<DT>(wv[s][m][i], x0, x1, sx, acc[s][i]);
        }
}

/* Each slot's dot reduced by its warp into dots[i][j] */
template <int R>
DEV void sd_store(float (&acc)[SD_SPW][R], float *dots, int j0, int nw, int kslots, int lane)
{
#pragma unroll
    for (int s = 0; s < SD_SPW; s++) {
        const int j = j0 + s * nw;
#pragma unroll
        for (int i = 0; i < R; i++) {
            float v = warp_sum(acc[s][i]);
            if (lane == 0 && j < kslots)
                dots[i * kslots + j] = v;
        }
    }
}

/* Thread i < R: the slots in slot order, times their routing weights (after a barrier) */
template <int R> DEV void sd_combine(const hip_moe_dec_args &a, const float *dots, long long i0)
{
    if (threadIdx.x < R && i0 + threadIdx.x < a.H) {
        const float *d = dots + threadIdx.x * a.kslots;
        float res = 0.0f;
        for (int j = 0; j < a.kslots; j++) {
            if (!a.tw)
                res = d[j];
            else
                res = j == 0 ? a.tw[0] * d[0] : fmaf(a.tw[j], d[j], res);
        }
        put_out(a.out, a.out2, a.xadd, a.xadd2, i0 + threadIdx.x, res);
    }
}

template <int DT, int R, bool QS>
__global__ void __launch_bounds__(SG_T) k_smoe_down(hip_moe_dec_args a)
{
    pdl_prefetch_moe_down<DT>(a);
    moert_pdl_wait();
    float *dots = (float *)dyn_smem4; /* [R][kslots] */
    __shared__ uint4 qsm[QS ? SG_T / MOERT_WARP * SD_SPW * SD_CPL * R * qst<DT>::n16 : 1];
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long i0 = (long long)blockIdx.x * R, nc = a.I / 8, rb = row_bytes_t<DT>(a.I);
    for (int j0 = w; j0 < a.kslots; j0 += nw * SD_SPW) {
        const unsigned char *wr[SD_SPW][R];
        const float *hr[SD_SPW];
        float acc[SD_SPW][R];
        sd_rows<DT, R, false>(a, j0, nw, i0, rb, wr, hr);
#pragma unroll
        for (int s = 0; s < SD_SPW; s++)
#pragma unroll
            for (int i = 0; i < R; i++)
                acc[s][i] = 0.0f;
        /* QS: warp-uniform rounds (a lane past nc takes no chunk: the same sums) */
        for (long long c0 = lane; QS ? c0 - lane < nc : c0 < nc; c0 += (long long)SD_CPL * MOERT_WARP) {
            W8<DT> wv[SD_SPW][SD_CPL][R];
            if (QS) {
                uint4 *sm = qsm + w * (SD_SPW * SD_CPL * R * qst<DT>::n16);
                uint4 pv[SD_SPW][SD_CPL][R];
#pragma unroll
                for (int s = 0; s < SD_SPW; s++)
                    qst_load<DT, R, SD_CPL, MOERT_WARP>(pv[s], wr[s], c0, nc, a.I);
                qst_syncwarp();
#pragma unroll
                for (int s = 0; s < SD_SPW; s++)
                    qst_put<DT, R, SD_CPL>(pv[s], sm + s * (SD_CPL * R * qst<DT>::n16));
                qst_syncwarp();
#pragma unroll
                for (int s = 0; s < SD_SPW; s++)
                    qst_fetch<DT, R, SD_CPL, MOERT_WARP>(wv[s], wr[s], sm + s * (SD_CPL * R * qst<DT>::n16), c0, nc);
            } else {
                sd_load<DT, R>(wv, wr, c0, nc);
            }
            sd_dots<DT, R>(wv, hr, c0, nc, acc);
        }
        sd_store<R>(acc, dots, j0, nw, a.kslots, lane);
    }
    __syncthreads();
    sd_combine<R>(a, dots, i0);
}

/* The MoE down of one round (every slot in one warp pass, every chunk in one lane pass:
 * sd_early_takes) with its weights loaded before the wait: the expert ids are this step's,
 * but the launcher takes this kernel only after a k_smoe_gateup that lets its dependents
 * launch after its own wait, so the route that wrote them has completed before this grid
 * starts (read through L2: moert_ldcg).  The same products in the same order as k_smoe_down. */
template <int DT, int R>
__global__ void __launch_bounds__(SG_T) k_smoe_down_early(hip_moe_dec_args a)
{
    PDL_EARLY_READS;
    float *dots = (float *)dyn_smem4; /* [R][kslots] */
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long i0 = (long long)blockIdx.x * R, nc = a.I / 8, rb = row_bytes_t<DT>(a.I);
    const unsigned char *wr[SD_SPW][R];
    const float *hr[SD_SPW];
    float acc[SD_SPW][R];
    W8<DT> wv[SD_SPW][SD_CPL][R];
    sd_rows<DT, R, true>(a, w, nw, i0, rb, wr, hr);
    sd_load<DT, R>(wv, wr, lane, nc);
    moert_pdl_wait();
#pragma unroll
    for (int s = 0; s < SD_SPW; s++)
#pragma unroll
        for (int i = 0; i < R; i++)
            acc[s][i] = 0.0f;
    sd_dots<DT, R>(wv, hr, lane, nc, acc);
    sd_store<R>(acc, dots, w, nw, a.kslots, lane);
    __syncthreads();
    sd_combine<R>(a, dots, i0);
}

/* ---- trace capture -----------------------------------------------------------------
 * Same rings and records as runtime/trace/trace.c.  Blocks take captured rows; the slot of the
 * i-th record of the step follows from the ring header as of the step's start (kept in a
 * shadow, double-buffered by step parity, because the real header is rewritten by block 0
 * during the kernel).  Stats in double with the block trees; the hash is an integer sum. */
/* The pieces of one slot's capture, shared by the one-block capture (trace_slot) and the
 * wide one (k_trace_wide*), so that both compute the same bits. */
typedef struct trace_acc {
    double sum, sumsq, fin, n_nan, n_inf, mn, mx;
    unsigned long long h;
} trace_acc;

/* Ring state as of the step's start, and where record i of the step goes. */
typedef struct trace_pos {
    long long n_rows, row0, n, cap, shift, W;
    int par;
    unsigned long long written0, stored0, drops0, next0;
} trace_pos;

DEV trace_pos trace_pos_of(const hip_trace_args &a)
{
    trace_pos p;
    const hip_step_params *sp = a.sp;
    p.n_rows = sp->n_rows;
    p.row0 = sp->trace_row0 < 0 ? 0 : sp->trace_row0;
    p.n = p.row0 < p.n_rows ? p.n_rows - p.row0 : 0;
    p.par = sp->parity & 1;
    const unsigned long long *hin = a.shadow + ((long long)p.par * a.n_trace + a.ti) * TRACE_HDR_WORDS;
    p.written0 = hin[TRACE_HDR_WRITTEN];
    p.stored0 = hin[TRACE_HDR_STORED];
    p.drops0 = hin[TRACE_HDR_DROPS];
    p.next0 = hin[TRACE_HDR_NEXT];
    p.cap = a.cap;
    p.shift = a.logits_last ? p.n_rows - 1 : 0;
    p.W = a.width;
    return p;
}

/* Row r's record, or NULL when the ring does not take it. */
DEV unsigned char *trace_rec_of(const hip_trace_args &a, const trace_pos &p, long long r)
{
    const long long i = r - p.row0;
    const bool accepted = a.overwrite ? (i + p.cap >= p.n) : ((long long)p.stored0 + i < p.cap);
    if (!accepted)
        return nullptr;
    const unsigned long long slot = (p.next0 + (unsigned long long)i) % (unsigned long long)p.cap;
    return a.ring + TRACE_RING_HEADER + slot * a.record_bytes;
}

/* The capture loops visit a virtual thread's elements t, t + nt, ... in that order (the
 * order of its sums), TRACE_LOADS at a time, with the next round's loads issued before this
 * round's elements are taken: a loop that waited for each load (L2 latency) made the
 * capture of a 151,936-wide row take tens of us. */
#define TRACE_LOADS 8
DEV void trace_load_round(float (&v)[TRACE_LOADS], const float *row, long long W, long long k0, long long nt)
{
#pragma unroll
    for (int j = 0; j < TRACE_LOADS; j++)
        v[j] = k0 + j * nt < W ? row[k0 + j * nt] : 0.0f;
}
template <typename F> DEV void trace_each(const float *row, long long W, long long t, long long nt, F &&f)
{
    float v[TRACE_LOADS], nv[TRACE_LOADS];
    trace_load_round(v, row, W, t, nt);
    for (long long k0 = t; k0 < W; k0 += TRACE_LOADS * nt) {
        trace_load_round(nv, row, W, k0 + TRACE_LOADS * nt, nt);
#pragma unroll
        for (int j = 0; j < TRACE_LOADS; j++)
            if (k0 + j * nt < W)
                f(v[j], k0 + j * nt);
#pragma unroll
        for (int j = 0; j < TRACE_LOADS; j++)
            v[j] = nv[j];
    }
}

/* Virtual thread t of `nt`: its serial share of the first pass. */
DEV trace_acc trace_pass1(const float *row, const int32_t *ids, long long W, long long t, long long nt)
{
    trace_acc s = {0, 0, 0, 0, 0, INFINITY, -INFINITY, 0};
    trace_each(row, W, t, nt, [&](float v, long long k) {
        s.h += mix64(((unsigned long long)k << 32) | __float_as_uint(v));
        if (isnan(v)) {
            s.n_nan += 1;
        } else if (isinf(v)) {
            s.n_inf += 1;
        } else {
            double d = v;
            s.fin += 1;
            s.sum += d;
            s.sumsq += d * d;
            s.mn = fmin(s.mn, d);
            s.mx = fmax(s.mx, d);
        }
    });
    if (ids)
        for (long long k = t; k < W; k += nt) /* an integer sum: its order does not matter */
            s.h += mix64(((unsigned long long)(W + k) << 32) | (unsigned)ids[k]);
    return s;
}

DEV double trace_pass2(const float *row, long long W, double mean, long long t, long long nt)
{
    double var = 0;
    trace_each(row, W, t, nt, [&](float v, long long) {
        if (isfinite(v)) {
            double d = (double)v - mean;
            var += d * d;
        }
    });
    return var;
}

/* The first (in-warp) stage of block_stats. */
DEV void trace_warp_reduce(trace_acc &s)
{
    s.sum = warp_sum_d(s.sum);
    s.sumsq = warp_sum_d(s.sumsq);
    s.fin = warp_sum_d(s.fin);
    s.n_nan = warp_sum_d(s.n_nan);
    s.n_inf = warp_sum_d(s.n_inf);
    s.mn = warp_min_d(s.mn);
    s.mx = warp_max_d(s.mx);
    s.h = warp_sum_u64(s.h);
}

/* The second stage of block_stats over nw warp results (lane l holds warp l's, if l < nw). */
DEV void trace_warps_reduce(trace_acc &s, const trace_acc &mine, bool in)
{
    s.sum = warp_sum_d(in ? mine.sum : 0.0);
    s.sumsq = warp_sum_d(in ? mine.sumsq : 0.0);
    s.fin = warp_sum_d(in ? mine.fin : 0.0);
    s.n_nan = warp_sum_d(in ? mine.n_nan : 0.0);
    s.n_inf = warp_sum_d(in ? mine.n_inf : 0.0);
    s.mn = warp_min_d(in ? mine.mn : INFINITY);
    s.mx = warp_max_d(in ? mine.mx : -INFINITY);
    s.h = warp_sum_u64(in ? mine.h : 0ull);
}

DEV void trace_write_rec(unsigned char *rec, const hip_trace_args &a, long long r, long long W, bool ids,
                         const trace_acc &s, double mean, double var)
{
    long long *hd = (long long *)rec;
    hd[TRACE_REC_STEP_OFF / 8] = a.sp->gen_step;
    hd[TRACE_REC_POS_OFF / 8] = a.sp->pos0 + r;
    unsigned long long nw = (unsigned long long)W + (ids ? (unsigned long long)W : 0ull);
    *(unsigned long long *)(rec + TRACE_REC_HASH_OFF) = mix64(s.h ^ nw);
    hd[TRACE_REC_PAD_OFF / 8] = 0;
    double *st = (double *)(rec + TRACE_REC_STATS_OFF);
    st[TRACE_STAT_COUNT] = (double)W;
    st[TRACE_STAT_L2] = sqrt(s.sumsq);
    st[TRACE_STAT_MEAN] = mean;
    st[TRACE_STAT_STD] = s.fin > 0 ? sqrt(var / s.fin) : NAN;
    st[TRACE_STAT_MIN] = s.fin > 0 ? s.mn : NAN;
    st[TRACE_STAT_MAX] = s.fin > 0 ? s.mx : NAN;
    st[TRACE_STAT_NAN] = s.n_nan;
    st[TRACE_STAT_INF] = s.n_inf;
}

/* Tensor mode: the row's values (and ids) after the stats; threads t of nt. */
DEV void trace_copy_values(unsigned char *rec, const float *row, const int32_t *ids, long long W, long long t,
                           long long nt)
{
    unsigned *dv = (unsigned *)(rec + TRACE_REC_VALUES_OFF);
    trace_each(row, W, t, nt, [&](float v, long long k) { dv[k] = __float_as_uint(v); });
    if (ids) {
        int32_t *di = (int32_t *)(rec + TRACE_REC_VALUES_OFF + W * 4);
        for (long long k = t; k < W; k += nt)
            di[k] = ids[k];
    }
}

DEV void trace_write_header(const hip_trace_args &a, const trace_pos &p)
{
    unsigned long long un = (unsigned long long)p.n, ucap = (unsigned long long)(p.cap > 0 ? p.cap : 0);
    unsigned long long stored, drops, next;
    if (a.overwrite) {
        stored = p.stored0 + un < ucap ? p.stored0 + un : ucap;
        drops = p.drops0 + un - (stored - p.stored0);
        next = ucap ? (p.next0 + un) % ucap : 0;
    } else {
        unsigned long long room = ucap > p.stored0 ? ucap - p.stored0 : 0;
        unsigned long long acc = un < room ? un : room;
        stored = p.stored0 + acc;
        drops = p.drops0 + un - acc;
        next = ucap ? (p.next0 + acc) % ucap : 0;
    }
    unsigned long long *hdr = (unsigned long long *)a.ring;
    unsigned long long *hout = a.shadow + ((long long)(p.par ^ 1) * a.n_trace + a.ti) * TRACE_HDR_WORDS;
    hdr[TRACE_HDR_WRITTEN] = hout[TRACE_HDR_WRITTEN] = p.written0 + un;
    hdr[TRACE_HDR_STORED] = hout[TRACE_HDR_STORED] = stored;
    hdr[TRACE_HDR_DROPS] = hout[TRACE_HDR_DROPS] = drops;
    hdr[TRACE_HDR_NEXT] = hout[TRACE_HDR_NEXT] = next;
}

/* One slot's capture by blocks bid of nb (the rows are split over them; block 0 writes the
 * ring header).  The block size matters (the stats' order): 256 threads, 1024 for wide rows. */
DEV void trace_slot(const hip_trace_args &a, int bid, int nb)
{
    __shared__ double smd[MAX_WARPS];
    __shared__ trace_acc smw[MAX_WARPS];
    const trace_pos p = trace_pos_of(a);
    const long long W = p.W;
    const int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    for (long long r = p.row0 + bid; r < p.n_rows && p.cap > 0; r += nb) {
        unsigned char *rec = trace_rec_of(a, p, r);
        if (!rec)
            continue;
        const float *row = a.src + (r - p.shift) * W;
        const int32_t *ids = a.src2 ? a.src2 + (r - p.shift) * W : nullptr;
        trace_acc s = trace_pass1(row, ids, W, threadIdx.x, blockDim.x);
        trace_warp_reduce(s);
        __syncthreads();
        if (lane == 0)
            smw[w] = s;
        __syncthreads();
        trace_warps_reduce(s, smw[lane < nw ? lane : 0], lane < nw);
        const double mean = s.fin > 0 ? s.sum / s.fin : NAN;
        double var = block_sum_d(trace_pass2(row, W, mean, threadIdx.x, blockDim.x), smd);
        if (threadIdx.x == 0)
            trace_write_rec(rec, a, r, W, ids != nullptr, s, mean, var);
        if (a.tensor_mode)
            trace_copy_values(rec, row, ids, W, threadIdx.x, blockDim.x);
    }
    if (bid == 0 && threadIdx.x == 0)
        trace_write_header(a, p);
}

__global__ void __launch_bounds__(1024) k_trace(hip_trace_args a)
{
    moert_pdl_wait();
    trace_slot(a, blockIdx.x, gridDim.x);
}

/* The captures of a whole decode step at its end: block b does slot tab[b] (one row). */
__global__ void __launch_bounds__(HIP_TRACE_BATCH_THREADS) k_trace_batch(const hip_trace_args *tab)
{
    moert_pdl_wait();
    trace_slot(tab[blockIdx.x], 0, 1);
}

/* A wide slot's one-row capture spread over TW / TWB blocks: thread j of block b plays
 * thread t = b * TWB + j of the 1024-thread block of k_trace, so each pass's per-thread sums
 * and in-warp trees are that thread's and that warp's (TWB is a multiple of the warp); the
 * across-warp tree runs over the warps' results (a.part), by every warp of pass 2 and of the
 * final kernel.  Same bits as k_trace, 16 SMs instead of one. */
#define TW 1024
#define TWB 64
__global__ void __launch_bounds__(TWB) k_trace_wide1(hip_trace_args a)
{
    moert_pdl_wait();
    const trace_pos p = trace_pos_of(a);
    const long long r = p.row0;
    unsigned char *rec = r < p.n_rows && p.cap > 0 ? trace_rec_of(a, p, r) : nullptr;
    if (!rec)
        return;
    const long long t = (long long)blockIdx.x * TWB + threadIdx.x;
    const float *row = a.src + (r - p.shift) * p.W;
    const int32_t *ids = a.src2 ? a.src2 + (r - p.shift) * p.W : nullptr;
    trace_acc s = trace_pass1(row, ids, p.W, t, TW);
    trace_warp_reduce(s);
    if (t % MOERT_WARP == 0)
        ((trace_acc *)a.part)[t / MOERT_WARP] = s;
    if (a.tensor_mode)
        trace_copy_values(rec, row, ids, p.W, t, TW);
}

DEV void trace_wide_stats(const hip_trace_args &a, trace_acc &s, double &mean)
{
    const int nwarps = TW / MOERT_WARP, lane = threadIdx.x % MOERT_WARP;
    const bool in = lane < nwarps;
    const trace_acc *part = (const trace_acc *)a.part;
    trace_warps_reduce(s, part[in ? lane : 0], in);
    mean = s.fin > 0 ? s.sum / s.fin : NAN;
}

__global__ void __launch_bounds__(TWB) k_trace_wide2(hip_trace_args a)
{
    moert_pdl_wait();
    const trace_pos p = trace_pos_of(a);
    const long long r = p.row0;
    if (!(r < p.n_rows && p.cap > 0 && trace_rec_of(a, p, r)))
        return;
    trace_acc s;
    double mean;
    trace_wide_stats(a, s, mean);
    const long long t = (long long)blockIdx.x * TWB + threadIdx.x;
    double var = warp_sum_d(trace_pass2(a.src + (r - p.shift) * p.W, p.W, mean, t, TW));
    if (t % MOERT_WARP == 0)
        ((double *)((trace_acc *)a.part + TW / MOERT_WARP))[t / MOERT_WARP] = var;
}

__global__ void __launch_bounds__(TWB) k_trace_wide3(hip_trace_args a)
{
    moert_pdl_wait();
    const trace_pos p = trace_pos_of(a);
    const long long r = p.row0;
    unsigned char *rec = r < p.n_rows && p.cap > 0 ? trace_rec_of(a, p, r) : nullptr;
    if (rec) {
        trace_acc s;
        double mean;
        trace_wide_stats(a, s, mean);
        const int nwarps = TW / MOERT_WARP, lane = threadIdx.x % MOERT_WARP;
        const double *vp = (const double *)((const trace_acc *)a.part + nwarps);
        double var = warp_sum_d(lane < nwarps ? vp[lane] : 0.0);
        if (threadIdx.x == 0)
            trace_write_rec(rec, a, r, p.W, a.src2 != nullptr, s, mean, var);
    }
    if (threadIdx.x == 0)
        trace_write_header(a, p);
}

/* ---- launchers ------------------------------------------------------------------------ */

static inline bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* The grid of a grid-stride (persistent) kernel: no more blocks than can be resident at
 * once, or the surplus runs as a second wave that pays every fixed cost again.  Cached
 * per (kernel, shared memory) so that eager launches do not query each time. */
template <typename K> static int resident_grid(K kernel, int threads, size_t smem, int want)
{
    static struct {
        const void *k;
        size_t smem;
        int cap;
    } cache[64];
    static int n_cache, sms;
    if (!sms) {
        int dev = 0;
        if (hipGetDevice(&dev) != hipSuccess ||
            hipDeviceGetAttribute(&sms, hipDeviceAttributeMultiprocessorCount, dev) != hipSuccess || sms < 1)
            sms = 1;
    }
    int cap = 0;
    for (int i = 0; i < n_cache; i++)
        if (cache[i].k == (const void *)kernel && cache[i].smem == smem)
            cap = cache[i].cap;
    if (!cap) {
        int per_sm = 0;
        if (hipOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != hipSuccess ||
            per_sm < 1)
            per_sm = 1;
        cap = per_sm * sms;
        if (n_cache < 64)
            cache[n_cache++] = {(const void *)kernel, smem, cap};
    }
    return !MOERT_RESIDENT_GRID || want < cap ? want : cap;
}

static unsigned blocks_for(long long n, int per)
{
    return (unsigned)((n + per - 1) / per);
}

/* Runs f(dt_tag<DT>()) for the weight type dt; false when dt is no HIP_DT_* value. */
template <int DT> struct dt_tag {
    static const int v = DT;
};
template <typename F> static bool with_dt(int dt, F &&f)
{
    switch (dt) {
    case HIP_DT_F32: f(dt_tag<HIP_DT_F32>()); return true;
    case HIP_DT_BF16: f(dt_tag<HIP_DT_BF16>()); return true;
    case HIP_DT_F16: f(dt_tag<HIP_DT_F16>()); return true;
    case HIP_DT_Q4_0: f(dt_tag<HIP_DT_Q4_0>()); return true;
    case HIP_DT_Q5_0: f(dt_tag<HIP_DT_Q5_0>()); return true;
    case HIP_DT_Q8_0: f(dt_tag<HIP_DT_Q8_0>()); return true;
    case HIP_DT_Q4_K: f(dt_tag<HIP_DT_Q4_K>()); return true;
    case HIP_DT_Q5_K: f(dt_tag<HIP_DT_Q5_K>()); return true;
    case HIP_DT_Q6_K: f(dt_tag<HIP_DT_Q6_K>()); return true;
    case HIP_DT_Q8_0X4: f(dt_tag<HIP_DT_Q8_0X4>()); return true;
    case HIP_DT_Q6_KX4: f(dt_tag<HIP_DT_Q6_KX4>()); return true;
    default: return false;
    }
}

/* MOERT_HIP_SGPIPE (read at each backend init): 1 (default) staged GEMVs (qstage_for: Q6_K
 * by default) of at least SGP_WAVES resident grids of row groups (the LM head) on k_sgemv_p
 * (measured: the Q6_K LM head 271 -> 240 us, Q4_K_M decode +2.4%; Q8_0's unstaged one 160 ->
 * 203 us, so not there; nor the X4 heads: Q8_0 decode 1219 -> 1181-1200, Q4_K_M 1005-1017 ->
 * 991-995 with them on it); 0 never; 2 every block-typed GEMV it takes, staged or not, on a grid
 * of at most SGP_TEST_GRID blocks, so that each block walks several groups (the bit test's
 * setting); 3 as 1, unstaged and plain types too (A/B: bf16 -0.8%, Q8_0 -4%). */
#define SGP_WAVES 8
#define SGP_TEST_GRID 3
static int g_sgpipe = 1;

void hip_kernels_sgpipe_from_env(void)
{
    g_sgpipe = env_digit("MOERT_HIP_SGPIPE", 0xfu, 1); /* 0 .. 3 */
}

/* k_sgemv_p for a GEMV it suits; false: the caller launches k_sgemv. */
template <int DT, int R, int CU, bool QS> static bool launch_sgemv_p(const hip_gemv_args *a, hipStream_t s)
{
    if ((dt_layout<DT>::be == 1 && g_sgpipe != 3) || g_sgpipe == 0 || (g_sgpipe == 1 && !QS))
        return false;
    const long long groups = (a->n_total + R - 1) / R;
    const int want = groups < INT_MAX ? (int)groups : INT_MAX;
    const int cap = resident_grid(k_sgemv_p<DT, R, CU, QS>, SG_T, 0, want);
    int grid = cap;
    if (g_sgpipe == 2)
        grid = want < SGP_TEST_GRID ? want : SGP_TEST_GRID;
    else if (groups < (long long)SGP_WAVES * cap)
        return false;
    MOERT_LAUNCH((k_sgemv_p<DT, R, CU, QS>), (unsigned)grid, SG_T, 0, s, *a);
    return true;
}

/* MOERT_HIP_X4ROWS (read at each backend init): the rows per block of Q8_0X4's decode kernels,
 * as a multiple (1 or 2) of the other types' (a chunk of Q8_0X4 is 10 bytes in two loads,
 * bf16's 16 in one: more rows keep as many bytes in flight; measured on bench-gpu Q8_0: decode
 * 1173 -> 1220 tok/s; the same for Q6_KX4, whose chunks hold 7 registers, took Q4_K_M from
 * 1005 to 634).  A thread's chunks of a row do not depend on the rows per block: the same bits
 * each way. */
static int g_x4rows = 2;
/* Output rows per block of the streaming MoE down, times W (MOERT_HIP_DOWNR; 0: by type).
 * Every block reads all slots' h (8 x 768 floats), so more rows a block read h fewer times
 * but hold more loads in registers.  Measured (BENCHMARKS.md, 2026-12-03): bf16 best at 1
 * (2: -0.5%, 4: -0.8%), Q8_0X4 at 4 (+3.1% and +3.5% decode over 1), Q4_K_M's Q4_K and
 * Q6_K at 2 (+1.5%; 4: -1%).  A row's sums do not depend on it: warp w still takes slots w,
 * w + 4 and lane l chunks l, l + 32, l + 64 of each, whatever the rows a block. */
static int g_downr = 0;
/* MOERT_HIP_DOWNEARLY (default 1): the routed MoE down loads its weights before its wait
 * (k_smoe_down_early; 0: k_smoe_down).  The same products in the same order. */
static bool g_down_early = true;
/* MOERT_HIP_ROUTERANK (default 1): the decode and prefill top-k by ranks (k_route_rank; 0:
 * k_route's arg-max rounds).  The same experts, slots and weights. */
static bool g_route_rank = true;
/* MOERT_HIP_MERGESTAGE (default 0): the decode split merge on k_attn_combine_staged. */
static bool g_merge_stage = false;

void hip_kernels_rows_from_env(void)
{
    g_x4rows = env_digit("MOERT_HIP_X4ROWS", 1u << 1 | 1u << 2, 2);
    g_downr = env_digit("MOERT_HIP_DOWNR", 1u << 1 | 1u << 2 | 1u << 4, 0);
    g_down_early = env_digit("MOERT_HIP_DOWNEARLY", 1u << 0 | 1u << 1, 1) != 0;
    g_route_rank = env_digit("MOERT_HIP_ROUTERANK", 1u << 0 | 1u << 1, 1) != 0;
    g_merge_stage = env_digit("MOERT_HIP_MERGESTAGE", 1u << 0 | 1u << 1, 0) != 0;
}

/* The MoE down's rows per block (before W) for weight type DT. */
template <int DT> static int downr_for()
{
    if (g_downr)
        return g_downr;
    return DT == HIP_DT_Q8_0X4 ? 4 : (DT == HIP_DT_Q4_K || DT == HIP_DT_Q6_K) ? 2 : 1;
}

/* f(W) with W the rows-per-block multiple of type DT's decode kernels */
template <int DT, typename F> static void with_rows(F &&f)
{
    if constexpr (DT == HIP_DT_Q8_0X4) {
        if (g_x4rows == 2) {
            f(std::integral_constant<int, 2>());
            return;
        }
    }
    f(std::integral_constant<int, 1>());
}

/* One streaming GEMV of R rows a block, CU chunks a thread per round: with the norm prologue
 * (a->nw; hip_gemv_norm_takes: unstaged, one round), else on the persistent grid where it
 * takes the GEMV (PIPE: the one-round shapes), else on k_sgemv. */
template <int DT, int R, int CU, bool QS, bool PIPE> static void launch_sgemv_rc(const hip_gemv_args *a, hipStream_t s)
{
    if constexpr (!QS)
        if (a->nw) {
            MOERT_LAUNCH((k_sgemv<DT, R, CU, false, true>), blocks_for(a->n_total, R), SG_T, 0, s, *a);
            return;
        }
    if (PIPE && launch_sgemv_p<DT, R, CU, QS>(a, s))
        return;
    MOERT_LAUNCH((k_sgemv<DT, R, CU, QS>), blocks_for(a->n_total, R), SG_T, 0, s, *a);
}

template <int DT, bool QS, int W> static void launch_sgemv_w(const hip_gemv_args *a, hipStream_t s)
{
    const long long nc = a->k / 8; /* about 8 weight loads in flight per thread */
    constexpr int RW = MOERT_SG_WIDE * W;
    if (nc <= SG_T)
        launch_sgemv_rc<DT, 8 * RW, 1, QS, true>(a, s);
    else if (nc <= 2 * SG_T)
        launch_sgemv_rc<DT, 4 * RW, 2, QS, true>(a, s);
    else
        launch_sgemv_rc<DT, 2 * RW, 4, QS, false>(a, s);
}
template <int DT, bool QS> static void launch_sgemv_t(const hip_gemv_args *a, hipStream_t s)
{
    with_rows<DT>([&](auto w) { launch_sgemv_w<DT, QS, decltype(w)::value>(a, s); });
}

/* The 2-byte aligned block types only: plain and X4 types (aligned loads) never instantiate
 * a staged kernel. */
template <int DT> struct qst_ok {
    static const bool v = dt_layout<DT>::be > 1 && dt_base<DT>::v == DT;
};
/* Whether type DT's decode GEMVs and MoE kernels stage their rows (MOERT_HIP_QSTAGE). */
template <int DT> static bool staged_for()
{
    return qstage_for(DT) && qst_ok<DT>::v;
}

template <int DT>
static void launch_gemv_t(const hip_gemv_args *a, int grid, hipStream_t s, bool vec)
{
    size_t sm = (size_t)a->k * sizeof(float);
    if (MOERT_SGEMV && vec) {
        if (staged_for<DT>())
            launch_sgemv_t<DT, qst_ok<DT>::v>(a, s);
        else
            launch_sgemv_t<DT, false>(a, s);
    } else if (vec)
        MOERT_LAUNCH((k_gemv<DT, true>), resident_grid(k_gemv<DT, true>, HIP_GEMV_THREADS, sm, grid),
                     HIP_GEMV_THREADS, sm, s, *a);
    else
        MOERT_LAUNCH((k_gemv<DT, false>), resident_grid(k_gemv<DT, false>, HIP_GEMV_THREADS, sm, grid),
                     HIP_GEMV_THREADS, sm, s, *a);
}

bool hip_gemv_norm_takes(int dtype, long long k)
{
    bool staged = true;
    if (!with_dt(dtype, [&](auto t) { staged = staged_for<decltype(t)::v>(); }))
        return false;
    return MOERT_SGEMV && !staged && k > 0 && k % 8 == 0 && k <= 4LL * SG_T * 8;
}

hipError_t hip_launch_gemv(int dtype, const hip_gemv_args *a, int grid, hipStream_t s)
{
    bool vec = a->k % 8 == 0 && aligned16(a->x);
    for (int i = 0; i < 3; i++)
        vec = vec && aligned16(a->w[i]);
    if (a->nw && (!vec || !hip_gemv_norm_takes(dtype, a->k) || !aligned16(a->xn) ||
                  (a->xn2 && !aligned16(a->xn2))))
        return hipErrorInvalidValue; /* the backend asks hip_gemv_norm_takes first */
    if (grid < 1)
        grid = 1;
    if (!with_dt(dtype, [&](auto t) { launch_gemv_t<decltype(t)::v>(a, grid, s, vec); }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

template <int DT, int AM, int BM>
static void launch_gemm_t(const hip_gemm_args *a, dim3 grid, hipStream_t s, bool vec)
{
    if (vec)
        MOERT_LAUNCH((k_gemm<DT, AM, BM, true>), grid, BM * 4, 0, s, *a);
    else
        MOERT_LAUNCH((k_gemm<DT, AM, BM, false>), grid, BM * 4, 0, s, *a);
}

template <int DT>
static void launch_gemm_dt(int amode, int bm, const hip_gemm_args *a, dim3 grid, hipStream_t s,
                           bool vec)
{
    if (bm == 64) {
        if (amode == HIP_A_PLAIN)
            launch_gemm_t<DT, HIP_A_PLAIN, 64>(a, grid, s, vec);
        else
            launch_gemm_t<DT, HIP_A_SWIGLU, 64>(a, grid, s, vec);
    } else {
        if (amode == HIP_A_GATHER)
            launch_gemm_t<DT, HIP_A_GATHER, HIP_MOE_BM>(a, grid, s, vec);
        else
            launch_gemm_t<DT, HIP_A_SWIGLU, HIP_MOE_BM>(a, grid, s, vec);
    }
}

hipError_t hip_launch_gemm(int dtype, int amode, int bm, const hip_gemm_args *a, hipStream_t s)
{
    if (a->n <= 0 || (!a->tiles && a->m <= 0))
        return hipSuccess;
    /* Supported combinations: plain and swiglu at 64 rows; gather and swiglu at 32 (MoE). */
    if ((bm == 64 && amode == HIP_A_GATHER) || (bm != 64 && amode == HIP_A_PLAIN) ||
        (bm != 64 && bm != HIP_MOE_BM))
        return hipErrorInvalidValue;
    if (hip_gemm_mma_takes(dtype, amode, bm, a))
        return hip_launch_gemm_mma(amode, bm, a, s);
    if (dtype == HIP_DT_F32 && amode == HIP_A_PLAIN && a->n <= HIP_GEMM_BN) {
        dim3 g((unsigned)((a->n + GN_BN - 1) / GN_BN), (unsigned)((a->m + GN_BM - 1) / GN_BM));
        MOERT_LAUNCH(k_gemm_narrow, g, GN_NT, 0, s, *a);
        return hipGetLastError();
    }
    bool vec = a->k % 8 == 0 && a->lda % 4 == 0 && aligned16(a->a) && aligned16(a->w) &&
               (amode != HIP_A_SWIGLU || aligned16(a->a2));
    dim3 grid((unsigned)((a->n + HIP_GEMM_BN - 1) / HIP_GEMM_BN),
              (unsigned)(a->tiles ? a->max_tiles : (a->m + bm - 1) / bm));
    if (!with_dt(dtype, [&](auto t) { launch_gemm_dt<decltype(t)::v>(amode, bm, a, grid, s, vec); }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

hipError_t hip_launch_embed(int32_t *tok, const hip_step_params *sp, const int32_t *pick, const void *emb, int dt,
                            float *x, float *x2, long long H, long long V, int rows, int *err_flag, hipStream_t s)
{
    if (!with_dt(dt, [&](auto t) {
            MOERT_LAUNCH((k_embed<decltype(t)::v>), rows, 256, 0, s, tok, sp, pick, emb, x, x2, H, V, err_flag);
        }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

hipError_t hip_launch_rmsnorm(const float *x, const void *w, int dt, float *out, float *out2, long long n,
                              float eps, int rows, hipStream_t s)
{
    MOERT_LAUNCH(k_rmsnorm, rows, NORM_THREADS, 0, s, x, w, dt, out, out2, n, eps);
    return hipGetLastError();
}

hipError_t hip_launch_add_rmsnorm(float *x, const float *y, const void *w, int dt, float *out, float *x2,
                                  float *out2, long long n, float eps, int rows, hipStream_t s)
{
    MOERT_LAUNCH(k_add_rmsnorm, rows, NORM_THREADS, 0, s, x, y, w, dt, out, x2, out2, n, eps);
    return hipGetLastError();
}

hipError_t hip_launch_add(float *x, const float *y, float *x2, long long n, hipStream_t s)
{
    if (n <= 0)
        return hipSuccess;
    MOERT_LAUNCH(k_add, (unsigned)((n + 255) / 256), 256, 0, s, x, y, x2, n);
    return hipGetLastError();
}

hipError_t hip_launch_qk_norm_rope(const hip_qkn_args *a, int rows, hipStream_t s)
{
    int heads = a->nh + a->nkv + (a->kc ? a->nkv : 0);
    /* 128 threads hold at least 2 warps on every device; size y for 32-wide warps and let
     * wider-warp devices skip the surplus blocks. */
    dim3 grid((unsigned)rows, (unsigned)((heads + 3) / 4));
    MOERT_LAUNCH(k_qk_norm_rope, grid, 128, 0, s, *a);
    return hipGetLastError();
}

hipError_t hip_launch_kv_store(const float *qkv, float *kc, float *vc, const hip_step_params *sp,
                               long long qkv_dim, long long q_dim, long long kv_dim, int hd,
                               long long max_seq, int rows, int *err_flag, hipStream_t s)
{
    MOERT_LAUNCH(k_kv_store, rows, 256, 0, s, qkv, kc, vc, sp, qkv_dim, q_dim, kv_dim, hd, max_seq,
                 err_flag);
    return hipGetLastError();
}

hipError_t hip_launch_attention(const hip_attn_args *a, int rows, bool split, hipStream_t s)
{
    size_t sm = hip_attn_smem_bytes(a->nh, a->nkv, a->hd);
    if (split) {
        dim3 grid((unsigned)a->max_splits, (unsigned)a->nkv);
        MOERT_LAUNCH((k_attn<true>), grid, HIP_ATTN_THREADS, sm, s, *a);
#if !MOERT_ATTN_FUSED_MERGE
        hipError_t e = hipGetLastError();
        if (e != hipSuccess)
            return e;
        if (g_merge_stage && merge_stage_takes(a->hd))
            MOERT_LAUNCH(k_attn_combine_staged, a->nh, MERGE_THREADS,
                         (size_t)merge_tile(a->hd) * (size_t)(a->hd + 2) * sizeof(float), s, *a);
        else
            MOERT_LAUNCH(k_attn_combine, a->nh, 128, 0, s, *a);
#endif
    } else if (hip_attn_prefill_takes(a, rows)) {
        return hip_launch_attn_prefill(a, rows, s); /* query tiles; the same bits */
    } else {
        dim3 grid((unsigned)rows, (unsigned)a->nkv);
        MOERT_LAUNCH((k_attn<false>), grid, HIP_ATTN_THREADS, sm, s, *a);
    }
    return hipGetLastError();
}

static hipError_t launch_route(bool rank, const float *logits, float *w, int32_t *ids, float *w2, int32_t *ids2,
                               int E, int K, int norm, int rows, hipStream_t s);
hipError_t hip_launch_route(const float *logits, float *w, int32_t *ids, float *w2, int32_t *ids2, int E,
                            int K, int norm, int rows, hipStream_t s)
{
    return launch_route(g_route_rank, logits, w, ids, w2, ids2, E, K, norm, rows, s);
}

static hipError_t launch_route(bool rank, const float *logits, float *w, int32_t *ids, float *w2, int32_t *ids2,
                               int E, int K, int norm, int rows, hipStream_t s)
{
    size_t sm = (size_t)E * (sizeof(float) + sizeof(int)) + (size_t)K * sizeof(float);
    if (rank && K <= HIP_ROUTE_MAX_K)
        MOERT_LAUNCH(k_route_rank, rows, ROUTE_RANK_THREADS, sm, s, logits, w, ids, w2, ids2, E, K, norm);
    else
        MOERT_LAUNCH(k_route, rows, 64, sm, s, logits, w, ids, w2, ids2, E, K, norm);
    return hipGetLastError();
}

extern "C" int backend_hip_route_run(int rows, int E, int K, int norm, const float *logits, int rank, float *w,
                                     int32_t *ids, char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    int count = 0;
    if (hipGetDeviceCount(&count) != hipSuccess || count == 0) {
        snprintf(why, cap, "no GPU");
        return -2;
    }
    const size_t lb = sizeof(float) * (size_t)rows * (size_t)E, ob = sizeof(float) * (size_t)rows * (size_t)K;
    void *d_l = NULL, *d_w = NULL, *d_i = NULL;
    hipError_t e = hipMalloc(&d_l, lb);
    if (e == hipSuccess)
        e = hipMalloc(&d_w, ob);
    if (e == hipSuccess)
        e = hipMalloc(&d_i, ob);
    if (e == hipSuccess)
        e = hipMemcpy(d_l, logits, lb, hipMemcpyHostToDevice);
    if (e == hipSuccess)
        e = hipMemset(d_w, 0xff, ob);
    if (e == hipSuccess)
        e = hipMemset(d_i, 0xff, ob);
    if (e == hipSuccess)
        e = launch_route(rank != 0, (const float *)d_l, (float *)d_w, (int32_t *)d_i, NULL, NULL, E, K, norm, rows, 0);
    if (e == hipSuccess)
        e = hipDeviceSynchronize();
    if (e == hipSuccess)
        e = hipMemcpy(w, d_w, ob, hipMemcpyDeviceToHost);
    if (e == hipSuccess)
        e = hipMemcpy(ids, d_i, ob, hipMemcpyDeviceToHost);
    (void)hipFree(d_l);
    (void)hipFree(d_w);
    (void)hipFree(d_i);
    if (e != hipSuccess) {
        snprintf(why, cap, "route test: %s", hipGetErrorString(e));
        return 1;
    }
    return 0;
}

hipError_t hip_launch_moe_index(const hip_moe_index_args *a, hipStream_t s)
{
    MOERT_LAUNCH(k_moe_rank, a->E, 256, 0, s, *a);
    hipError_t e = hipGetLastError();
    if (e != hipSuccess)
        return e;
    MOERT_LAUNCH(k_moe_place, 1, 256, 0, s, *a);
    return hipGetLastError();
}

hipError_t hip_launch_moe_combine(const float *down, const int32_t *inv, const float *tw,
                                  float *out, int K, long long H, int rows, hipStream_t s)
{
    dim3 grid((unsigned)((H + 255) / 256), (unsigned)rows);
    MOERT_LAUNCH(k_moe_combine, grid, 256, 0, s, down, inv, tw, out, K, H);
    return hipGetLastError();
}

/* The down's shape for k_smoe_down_early: one round of slots and of chunks (Qwen3-30B-A3B:
 * 8 slots, 96 chunks). */
static bool sd_one_round(const hip_moe_dec_args *a)
{
    return a->kslots <= (SG_T / MOERT_WARP) * SD_SPW && a->I / 8 <= (long long)SD_CPL * MOERT_WARP;
}

template <int DT, bool QS, int W> static void launch_smoe_w(bool down, const hip_moe_dec_args *a, hipStream_t s)
{
    const bool early = a->release_late && !QS && sd_one_round(a); /* hip_moe_dec_early */
    if (!down) {
        const long long nc = a->H / 8;
        if (nc <= SG_T)
            MOERT_LAUNCH((k_smoe_gateup<DT, 4 * W, 1, QS>), (unsigned)a->kslots * blocks_for(a->I, 4 * W), SG_T, 0, s, *a);
        else if (nc <= 2 * SG_T)
            MOERT_LAUNCH((k_smoe_gateup<DT, 2 * W, 2, QS>), (unsigned)a->kslots * blocks_for(a->I, 2 * W), SG_T, 0, s, *a);
        else
            MOERT_LAUNCH((k_smoe_gateup<DT, W, 4, QS>), (unsigned)a->kslots * blocks_for(a->I, W), SG_T, 0, s, *a);
    } else {
        auto go = [&](auto r) {
            constexpr int R = decltype(r)::value * W;
            if (early)
                MOERT_LAUNCH((k_smoe_down_early<DT, R>), blocks_for(a->H, R), SG_T,
                             (size_t)R * (size_t)a->kslots * sizeof(float), s, *a);
            else
                MOERT_LAUNCH((k_smoe_down<DT, R, QS>), blocks_for(a->H, R), SG_T,
                             (size_t)R * (size_t)a->kslots * sizeof(float), s, *a);
        };
        const int dr = downr_for<DT>();
        if (dr == 4)
            go(std::integral_constant<int, 4>());
        else if (dr == 2)
            go(std::integral_constant<int, 2>());
        else
            go(std::integral_constant<int, 1>());
    }
}
template <int DT, bool QS> static void launch_smoe_t(bool down, const hip_moe_dec_args *a, hipStream_t s)
{
    with_rows<DT>([&](auto w) { launch_smoe_w<DT, QS, decltype(w)::value>(down, a, s); });
}

template <int DT>
static void launch_moe_dec_t(bool down, const hip_moe_dec_args *a, int grid, hipStream_t s,
                             bool vec)
{
    if (MOERT_SGEMV && vec) {
        if (staged_for<DT>())
            launch_smoe_t<DT, qst_ok<DT>::v>(down, a, s);
        else
            launch_smoe_t<DT, false>(down, a, s);
        return;
    }
    if (!down) {
        size_t sm = (size_t)a->H * sizeof(float);
        if (vec)
            MOERT_LAUNCH((k_moe_gateup_dec<DT, true>),
                         resident_grid(k_moe_gateup_dec<DT, true>, HIP_GEMV_THREADS, sm, grid),
                         HIP_GEMV_THREADS, sm, s, *a);
        else
            MOERT_LAUNCH((k_moe_gateup_dec<DT, false>),
                         resident_grid(k_moe_gateup_dec<DT, false>, HIP_GEMV_THREADS, sm, grid),
                         HIP_GEMV_THREADS, sm, s, *a);
    } else {
        size_t sm = (size_t)a->kslots * (size_t)a->I * sizeof(float);
        if (vec)
            MOERT_LAUNCH((k_moe_down_dec<DT, true>),
                         resident_grid(k_moe_down_dec<DT, true>, HIP_GEMV_THREADS, sm, grid),
                         HIP_GEMV_THREADS, sm, s, *a);
        else
            MOERT_LAUNCH((k_moe_down_dec<DT, false>),
                         resident_grid(k_moe_down_dec<DT, false>, HIP_GEMV_THREADS, sm, grid),
                         HIP_GEMV_THREADS, sm, s, *a);
    }
}

/* 16-byte chunks need k % 8 == 0 for every row and slot (h rows are I apart), and
 * 16-byte aligned experts (strides in bytes). */
static bool moe_dec_vec(const hip_moe_dec_args *a, bool down)
{
    return (down ? a->I % 8 == 0 : a->H % 8 == 0) && aligned16(a->gate) && aligned16(a->up) &&
           aligned16(a->down) && a->estride_gu % 16 == 0 && a->estride_d % 16 == 0;
}

template <int DT> static bool moe_dec_staged()
{
    return staged_for<DT>() && qst_ok<DT>::v;
}

bool hip_moe_dec_early(int dt_gu, int dt_down, const hip_moe_dec_args *a)
{
    if (!MOERT_SGEMV || !g_down_early || !a->ids || !moe_dec_vec(a, false) || !moe_dec_vec(a, true) ||
        !sd_one_round(a))
        return false;
    bool staged = true;
    return with_dt(dt_gu, [](auto) {}) &&
           with_dt(dt_down, [&](auto t) { staged = moe_dec_staged<decltype(t)::v>(); }) && !staged;
}

static hipError_t launch_moe_dec(int dtype, bool down, const hip_moe_dec_args *a, int grid,
                                 hipStream_t s)
{
    const bool vec = moe_dec_vec(a, down);
    if (grid < 1)
        grid = 1;
    if (!with_dt(dtype, [&](auto t) { launch_moe_dec_t<decltype(t)::v>(down, a, grid, s, vec); }))
        return hipErrorInvalidValue;
    return hipGetLastError();
}

hipError_t hip_launch_moe_gateup_dec(int dtype, const hip_moe_dec_args *a, int grid, hipStream_t s)
{
    return launch_moe_dec(dtype, false, a, grid, s);
}

hipError_t hip_launch_moe_down_dec(int dtype, const hip_moe_dec_args *a, int grid, hipStream_t s)
{
    return launch_moe_dec(dtype, true, a, grid, s);
}

hipError_t hip_launch_trace(const hip_trace_args *a, int grid, hipStream_t s)
{
    if (grid < 1)
        grid = 1;
    /* one block per captured row: wide rows (logits) get more threads */
    MOERT_LAUNCH(k_trace, grid, hip_trace_threads(a->width), 0, s, *a);
    return hipGetLastError();
}

hipError_t hip_launch_trace_wide(const hip_trace_args *a, hipStream_t s)
{
    if (!a->part || hip_trace_threads(a->width) != TW)
        return hipErrorInvalidValue;
    MOERT_LAUNCH(k_trace_wide1, TW / TWB, TWB, 0, s, *a);
    MOERT_LAUNCH(k_trace_wide2, TW / TWB, TWB, 0, s, *a);
    MOERT_LAUNCH(k_trace_wide3, 1, TWB, 0, s, *a);
    return hipGetLastError();
}

hipError_t hip_launch_trace_batch(const hip_trace_args *tab, int n, hipStream_t s)
{
    if (n <= 0)
        return hipSuccess;
    MOERT_LAUNCH(k_trace_batch, n, HIP_TRACE_BATCH_THREADS, 0, s, tab);
    return hipGetLastError();
}

template <typename F> static hipError_t raise_smem(F f, size_t bytes)
{
    if (bytes <= 48u * 1024u)
        return hipSuccess;
    return hipFuncSetAttribute((const void *)f, hipFuncAttributeMaxDynamicSharedMemorySize,
                               (int)bytes);
}

template <int DT> static hipError_t raise_gemv_smem(size_t gemv_bytes, size_t down_bytes)
{
    hipError_t e;
    if ((e = raise_smem(k_gemv<DT, true>, gemv_bytes)) != hipSuccess ||
        (e = raise_smem(k_gemv<DT, false>, gemv_bytes)) != hipSuccess ||
        (e = raise_smem(k_moe_gateup_dec<DT, true>, gemv_bytes)) != hipSuccess ||
        (e = raise_smem(k_moe_gateup_dec<DT, false>, gemv_bytes)) != hipSuccess ||
        (e = raise_smem(k_moe_down_dec<DT, true>, down_bytes)) != hipSuccess ||
        (e = raise_smem(k_moe_down_dec<DT, false>, down_bytes)) != hipSuccess)
        return e;
    return hipSuccess;
}

hipError_t hip_kernels_set_smem(size_t gemv_bytes, size_t moe_down_bytes, size_t attn_bytes)
{
    hipError_t e = hipSuccess;
    for (int dt = 0; dt < HIP_DT_COUNT && e == hipSuccess; dt++)
        with_dt(dt, [&](auto t) { e = raise_gemv_smem<decltype(t)::v>(gemv_bytes, moe_down_bytes); });
    if (e != hipSuccess || (e = raise_smem(k_attn<true>, attn_bytes)) != hipSuccess ||
        (e = raise_smem(k_attn<false>, attn_bytes)) != hipSuccess)
        return e;
    return hipSuccess;
}

/* ---- host check of the weight loaders ---------------------------------------------------
 * W8 and load_t are __host__ __device__: the host runs the very code the kernels inline. */
extern "C" {
#include "../ops/ops.h"
#include "../runtime/backend.h"
}
#define SAME_DT(h, o) ((int)(h) == (int)(o))
static_assert(SAME_DT(HIP_DT_F32, OPS_F32) && SAME_DT(HIP_DT_BF16, OPS_BF16) && SAME_DT(HIP_DT_F16, OPS_F16) &&
                  SAME_DT(HIP_DT_Q4_0, OPS_Q4_0) && SAME_DT(HIP_DT_Q5_0, OPS_Q5_0) && SAME_DT(HIP_DT_Q8_0, OPS_Q8_0) &&
                  SAME_DT(HIP_DT_Q4_K, OPS_Q4_K) && SAME_DT(HIP_DT_Q5_K, OPS_Q5_K) && SAME_DT(HIP_DT_Q6_K, OPS_Q6_K) &&
                  SAME_DT(HIP_DT_OPS_COUNT, OPS_DTYPE_COUNT),
              "HIP_DT_* must be the ops_dtype values (the backend maps st_dtype_ops onto them)");
#undef SAME_DT

static const char *selftest_name(int dt)
{
    return dt == HIP_DT_Q8_0X4 ? "Q8_0X4" : dt == HIP_DT_Q6_KX4 ? "Q6_KX4" : ops_dtype_name((ops_dtype)dt);
}

/* f16 field at b: made finite (an exponent of 31 loses its top bit), so that a random block
 * decodes to finite values whose bits must match exactly. */
static void finite_f16(unsigned char *b)
{
    if (((b[1] >> 2) & 31) == 31)
        b[1] &= (unsigned char)~0x40u;
}

/* The loaders of DT on random blocks of its ops type (an X4 type: regrouped by
 * hip_host_x4_pack, as at upload) against ops_to_f32 of the original bytes. */
template <int DT> static int selftest_dt(unsigned long long seed, char *why, size_t cap)
{
    const int BASE = dt_base<DT>::v, x4 = hip_dt_x4_group_bytes(DT);
    const long long K = DT == HIP_DT_Q6_KX4 ? 1024 : 512, rows = 3;
    const size_t rb = ops_row_bytes((ops_dtype)BASE, K);
    if (rb == 0 || (long long)rb != row_bytes_t<DT>(K) || (x4 && hip_dt_device(BASE, K) != DT)) {
        snprintf(why, cap, "%s (device type %d): row bytes %zu (ops) vs %lld (device)", selftest_name(DT),
                 DT, rb, row_bytes_t<DT>(K));
        return 1;
    }
    unsigned char *raw = (unsigned char *)malloc(rb * rows); /* 16-byte aligned (glibc) */
    unsigned char *buf = x4 ? (unsigned char *)malloc(rb * rows) : raw;
    float *ref = (float *)malloc(sizeof(float) * (size_t)(K * rows));
    if (!raw || !buf || !ref) {
        free(raw);
        if (x4)
            free(buf);
        free(ref);
        snprintf(why, cap, "out of memory");
        return 1;
    }
    unsigned long long z = seed;
    for (size_t i = 0; i < rb * rows; i++) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        raw[i] = (unsigned char)(z >> 56);
    }
    const size_t bb = ops_row_bytes((ops_dtype)BASE, dt_layout<BASE>::be);
    for (size_t o = 0; dt_layout<BASE>::be > 1 && o < rb * rows; o += bb) {
        if (BASE == HIP_DT_Q6_K) {
            finite_f16(raw + o + 208);
        } else {
            finite_f16(raw + o);
            if (BASE == HIP_DT_Q4_K || BASE == HIP_DT_Q5_K)
                finite_f16(raw + o + 2);
        }
    }
    ops_to_f32(ref, raw, (ops_dtype)BASE, K * rows);
    if (x4)
        hip_dt_x4_pack(DT, buf, raw, rb * rows);
    int bad = 0;
    for (long long r = 0; r < rows && !bad; r++) {
        const unsigned char *row = buf + (size_t)r * rb;
        for (long long k = 0; k < K && !bad; k += 8) {
            for (int cs = 0; cs < 2 && !bad; cs++) {
                W8<DT> w;
                if (cs)
                    w.load_cs(row, k);
                else
                    w.load(row, k);
                float f[8];
                w.get(f);
                for (int t = 0; t < 8 && !bad; t++) {
                    const float g = f[t], c = ref[r * K + k + t];
                    if (memcmp(&g, &c, sizeof g) != 0) {
                        snprintf(why, cap, "%s row %lld element %lld: W8%s %.9g vs ops %.9g",
                                 selftest_name(DT), r, k + t, cs ? " (streaming)" : "", (double)g,
                                 (double)c);
                        bad = 1;
                    }
                }
            }
            /* w8_dot against the double dot of the exact weights (x pseudo-random in [-1, 1)):
             * within 1e-6 of the terms' magnitudes, the factored scale and offset terms counted
             * at up to 64 times the chunk's largest weight (a wrong scale, offset or quant is far off) */
            if (!bad) {
                W8<DT> w;
                w.load(row, k);
                float xs[8];
                for (int t = 0; t < 8; t++) {
                    z = z * 6364136223846793005ull + 1442695040888963407ull;
                    xs[t] = (float)((double)(z >> 40) / 8388608.0 - 1.0);
                }
                const float4 x0 = make_float4(xs[0], xs[1], xs[2], xs[3]), x1 = make_float4(xs[4], xs[5], xs[6], xs[7]);
                double exact = 0.0, mag = 0.0, xabs = 0.0, wmax = 0.0;
                for (int t = 0; t < 8; t++) {
                    const double c = ref[r * K + k + t];
                    exact += (double)xs[t] * c;
                    mag += fabs((double)xs[t] * c);
                    xabs += fabs((double)xs[t]);
                    wmax = fabs(c) > wmax ? fabs(c) : wmax;
                }
                const float got = w8_dot<DT>(w, x0, x1, w8_xsum(x0, x1), 0.0f);
                const double tol = 1e-6 * (mag + 64.0 * xabs * wmax);
                /* random bits: chunks near fp32 overflow, Inf or NaN say nothing */
                if (mag + 64.0 * xabs * wmax < 1e37 && !(fabs((double)got - exact) <= tol)) {
                    snprintf(why, cap, "%s row %lld chunk at %lld: w8_dot %.9g vs exact %.9g (tolerance %.3g)",
                             selftest_name(DT), r, k, (double)got, exact, tol);
                    bad = 1;
                }
            }
            W8<DT> zw;
            zw.zero();
            float f[8];
            zw.get(f);
            if (!bad && w8_dot<DT>(zw, make_float4(1.f, 2.f, 3.f, 4.f), make_float4(5.f, 6.f, 7.f, 8.f), 36.0f, 0.5f) != 0.5f) {
                snprintf(why, cap, "%s: a zeroed W8's w8_dot adds to its sum", selftest_name(DT));
                bad = 1;
            }
            for (int t = 0; t < 8 && !bad; t++)
                if (f[t] != 0.0f) {
                    snprintf(why, cap, "%s: a zeroed W8 gives %.9g", selftest_name(DT), (double)f[t]);
                    bad = 1;
                }
        }
        for (long long i = 0; i < K && !bad; i++) {
            const float g = load_t<DT>(row, i), c = ref[r * K + i];
            if (memcmp(&g, &c, sizeof g) != 0) {
                snprintf(why, cap, "%s row %lld element %lld: load_t %.9g vs ops %.9g",
                         selftest_name(DT), r, i, (double)g, (double)c);
                bad = 1;
            }
        }
    }
    /* the embedding's flat addressing: element t * K + i of the matrix is row t's i */
    for (long long i = 0; i < K * rows && !bad; i += 7) {
        const float g = load_t<DT>(buf, i), c = ref[i];
        if (memcmp(&g, &c, sizeof g) != 0) {
            snprintf(why, cap, "%s flat element %lld: load_t %.9g vs ops %.9g", selftest_name(DT), i,
                     (double)g, (double)c);
            bad = 1;
        }
    }
    free(raw);
    if (x4)
        free(buf);
    free(ref);
    return bad;
}

extern "C" int backend_hip_dequant_selftest(char *why, size_t cap)
{
    int bad = 0;
    for (int dt = 0; dt < HIP_DT_COUNT && !bad; dt++)
        for (unsigned long long seed = 1; seed <= 4 && !bad; seed++)
            if (!with_dt(dt, [&](auto t) { bad = selftest_dt<decltype(t)::v>(seed * 0x9e3779b97f4a7c15ull + (unsigned)dt, why, cap); })) {
                snprintf(why, cap, "weight type %d has no loader", dt);
                bad = 1;
            }
    return bad;
}

#if MOERT_HIP_TIMELINE
hipError_t hip_timeline_take(unsigned long long *t, unsigned *line, unsigned *n, unsigned max)
{
    hipError_t e = hipMemcpyFromSymbol(n, HIP_SYMBOL(moert_tl_n), sizeof *n);
    if (e != hipSuccess)
        return e;
    unsigned m = *n < max ? *n : max;
    if (m && ((e = hipMemcpyFromSymbol(t, HIP_SYMBOL(moert_tl_t), m * sizeof *t)) != hipSuccess ||
              (e = hipMemcpyFromSymbol(line, HIP_SYMBOL(moert_tl_line), m * sizeof *line)) != hipSuccess))
        return e;
    unsigned z = 0;
    return hipMemcpyToSymbol(HIP_SYMBOL(moert_tl_n), &z, sizeof z);
}
#endif
