/* kernels: the device side of the HIP backend (see hip_kernels.h for the contracts).
 *
 * Arithmetic is fp32 throughout (weights widen exactly from bf16/f16; nothing is rounded to
 * bf16 or tf32), statistics of traced rows in double.  Each output element has one fixed
 * order of operations: serial fused multiply-add chains per thread and xor-butterfly trees
 * (masks 1, 2, 4, ...) across a warp, so results are bit-identical run to run.
 */
#include <float.h>
#include <math.h>

#include "hip_compat.h"
#include "hip_kernels.h"

#define DEV static __device__ __forceinline__

/* ---- small helpers ------------------------------------------------------------------ */

DEV float bf16_lo(unsigned w)
{
    return __uint_as_float(w << 16);
}
DEV float bf16_hi(unsigned w)
{
    return __uint_as_float(w & 0xffff0000u);
}

/* Exact f16 -> f32 (the same values ops_f16_to_f32 gives). */
DEV float f16_to_f32(unsigned h)
{
    unsigned sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (e == 0x1fu)
        return __uint_as_float(sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u));
    if (e == 0) {
        float f = (float)man * 5.9604644775390625e-8f; /* man * 2^-24: exact */
        return sign ? -f : f;
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (man << 13));
}

DEV float load_elem(const void *p, int dt, long long i)
{
    if (dt == HIP_DT_BF16)
        return __uint_as_float((unsigned)((const unsigned short *)p)[i] << 16);
    if (dt == HIP_DT_F16)
        return f16_to_f32(((const unsigned short *)p)[i]);
    return ((const float *)p)[i];
}

template <int DT> DEV float load_t(const void *p, long long i)
{
    if (DT == HIP_DT_BF16)
        return __uint_as_float((unsigned)((const unsigned short *)p)[i] << 16);
    if (DT == HIP_DT_F16)
        return f16_to_f32(((const unsigned short *)p)[i]);
    return ((const float *)p)[i];
}

template <int DT> struct dt_size { static const int v = DT == HIP_DT_F32 ? 4 : 2; };

DEV unsigned long long mix64(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

DEV float silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
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
DEV float block_max(float v, float *sm)
{
    int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    int nw = blockDim.x / MOERT_WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sm[w] = v;
    __syncthreads();
    return warp_max(lane < nw ? sm[lane] : -INFINITY);
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

/* ---- weight chunks: 8 consecutive elements of one row ------------------------------- */

template <int DT> struct W8;
template <> struct W8<HIP_DT_BF16> {
    uint4 v;
    __device__ __forceinline__ void load(const unsigned char *row, long long k)
    {
        v = *(const uint4 *)(row + k * 2);
    }
    __device__ __forceinline__ void zero()
    {
        v = make_uint4(0u, 0u, 0u, 0u);
    }
    __device__ __forceinline__ void get(float f[8]) const
    {
        f[0] = bf16_lo(v.x); f[1] = bf16_hi(v.x); f[2] = bf16_lo(v.y); f[3] = bf16_hi(v.y);
        f[4] = bf16_lo(v.z); f[5] = bf16_hi(v.z); f[6] = bf16_lo(v.w); f[7] = bf16_hi(v.w);
    }
};
template <> struct W8<HIP_DT_F16> {
    uint4 v;
    __device__ __forceinline__ void load(const unsigned char *row, long long k)
    {
        v = *(const uint4 *)(row + k * 2);
    }
    __device__ __forceinline__ void zero()
    {
        v = make_uint4(0u, 0u, 0u, 0u);
    }
    __device__ __forceinline__ void get(float f[8]) const
    {
        f[0] = f16_to_f32(v.x & 0xffffu); f[1] = f16_to_f32(v.x >> 16);
        f[2] = f16_to_f32(v.y & 0xffffu); f[3] = f16_to_f32(v.y >> 16);
        f[4] = f16_to_f32(v.z & 0xffffu); f[5] = f16_to_f32(v.z >> 16);
        f[6] = f16_to_f32(v.w & 0xffffu); f[7] = f16_to_f32(v.w >> 16);
    }
};
template <> struct W8<HIP_DT_F32> {
    float4 a, b;
    __device__ __forceinline__ void load(const unsigned char *row, long long k)
    {
        const float4 *p = (const float4 *)(row + k * 4);
        a = p[0];
        b = p[1];
    }
    __device__ __forceinline__ void zero()
    {
        a = make_float4(0.f, 0.f, 0.f, 0.f);
        b = a;
    }
    __device__ __forceinline__ void get(float f[8]) const
    {
        f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
        f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
    }
};

/* ---- GEMV core ----------------------------------------------------------------------
 * One warp computes RW dot products of length k: lane l takes the 8-element chunks at
 * k = 8 l, 8 (l + WARP), ... (16-byte loads of bf16, coalesced across the warp), U chunks
 * per row in flight, a serial FMA chain per lane, then the butterfly.  x rows come from
 * shared memory.  Requires k % 8 == 0 and 16-byte aligned rows (the caller checks). */
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

template <int DT, bool VEC>
__global__ void __launch_bounds__(HIP_GEMV_THREADS) k_gemv(hip_gemv_args a)
{
    float *xs = (float *)dyn_smem4;
    stage_x(xs, a.x, a.k);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long es = dt_size<DT>::v;
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
            int sg = r >= a.seg_end[0] ? (r >= a.seg_end[1] ? 2 : 1) : 0;
            long long local = r - (sg == 0 ? 0 : sg == 1 ? a.seg_end[0] : a.seg_end[1]);
            const void *base = sg == 0 ? a.w[0] : sg == 1 ? a.w[1] : a.w[2];
            xr[i] = xs;
            wr[i] = valid[i] ? (const unsigned char *)base + local * a.k * es
                             : (const unsigned char *)a.w[0];
        }
        float acc[HIP_GEMV_RW];
        gemv_dot<DT, VEC, HIP_GEMV_RW>(xr, wr, valid, a.k, acc);
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < HIP_GEMV_RW; i++)
                if (valid[i])
                    a.y[rows[i]] = acc[i];
        }
    }
}

/* ---- GEMM ----------------------------------------------------------------------------
 * Block tile BM x 128 outputs, k tiles of 16, double-buffered in shared memory (both
 * operands stored k-major and widened to fp32), thread tile 4 x 8 (two groups of 4 columns
 * 64 apart, so shared-memory reads are conflict-free float4s).  Each output is one serial
 * FMA chain over k in increasing order. */
#define GEMM_BK 16

template <int DT, int AMODE, int BM, bool VEC>
__global__ void __launch_bounds__(BM * 4) k_gemm(hip_gemm_args a)
{
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
    const long long es = dt_size<DT>::v;

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
    const unsigned char *wrow =
        (const unsigned char *)a.w + (e * a.w_estride + (long long)(w_ok ? n0 + wn : 0) * K) * es;

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

/* ---- embed, norms, add -------------------------------------------------------------- */

__global__ void __launch_bounds__(256) k_embed(const int32_t *tok, const void *emb, int dt,
                                               float *x, long long H, long long V, int *err)
{
    int r = blockIdx.x;
    long long t = tok[r];
    if (t < 0 || t >= V) {
        if (threadIdx.x == 0)
            *err = 1;
        t = 0;
    }
    for (long long i = threadIdx.x; i < H; i += blockDim.x)
        x[(long long)r * H + i] = load_elem(emb, dt, t * H + i);
}

/* RMSNorm of one row per block: sum of squares (per-thread serial, then the block tree),
 * r = 1 / sqrt(mean + eps), out = w * (x * r) as ops_rmsnorm. */
__global__ void __launch_bounds__(256) k_rmsnorm(const float *x, const void *w, int dt, float *out,
                                                 long long n, float eps)
{
    __shared__ float sm[MAX_WARPS];
    const float *xr = x + (long long)blockIdx.x * n;
    float *o = out + (long long)blockIdx.x * n;
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        s = fmaf(xr[i], xr[i], s);
    s = block_sum(s, sm);
    float r = 1.0f / sqrtf(s / (float)n + eps);
    for (long long i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = load_elem(w, dt, i) * (xr[i] * r);
}

__global__ void __launch_bounds__(256) k_add_rmsnorm(float *x, const float *y, const void *w,
                                                     int dt, float *out, long long n, float eps)
{
    __shared__ float sm[MAX_WARPS];
    float *xr = x + (long long)blockIdx.x * n;
    const float *yr = y + (long long)blockIdx.x * n;
    float *o = out + (long long)blockIdx.x * n;
    float s = 0.0f;
    for (long long i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        s = fmaf(v, v, s);
    }
    s = block_sum(s, sm);
    float r = 1.0f / sqrtf(s / (float)n + eps);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) /* own writes: no barrier needed */
        o[i] = load_elem(w, dt, i) * (xr[i] * r);
}

__global__ void __launch_bounds__(256) k_add(float *x, const float *y, long long n)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] += y[i];
}

/* ---- QK norm + RoPE (+ KV store) ---------------------------------------------------
 * One warp per head of one row: q heads, then k heads (RMSNorm over head_dim with the
 * q_norm / k_norm weight, then rotate-half RoPE at position pos0 + row), then, when the KV
 * store is fused, v heads (copied to the cache). */
__global__ void __launch_bounds__(128) k_qk_norm_rope(hip_qkn_args a)
{
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
    /* grid.y is sized for 4 warps per block; wider warps loop */
    for (int h = blockIdx.y * nw + warp; h < nheads; h += gridDim.y * nw) {
        if (h >= a.nh + a.nkv) { /* v head: copy into the cache */
            int hv = h - a.nh - a.nkv;
            const float *src = row + a.q_dim + a.kv_dim + (long long)hv * hd;
            float *dst = a.vc + pos * a.kv_dim + (long long)hv * hd;
            for (int d = lane; d < hd; d += MOERT_WARP)
                dst[d] = src[d];
            continue;
        }
        float *v = row + (long long)h * hd;
        const void *w = h < a.nh ? a.qn : a.kn;
        const int wdt = h < a.nh ? a.qn_dt : a.kn_dt;
        float ss = 0.0f;
        for (int d = lane; d < hd; d += MOERT_WARP)
            ss = fmaf(v[d], v[d], ss);
        ss = warp_sum(ss); /* every lane has read its elements before any lane writes */
        float rr = 1.0f / sqrtf(ss / (float)hd + a.eps);
        float *kdst = (store && h >= a.nh) ? a.kc + pos * a.kv_dim + (long long)(h - a.nh) * hd
                                           : nullptr;
        for (int i = lane; i < half; i += MOERT_WARP) {
            float na = load_elem(w, wdt, i) * (v[i] * rr);
            float nb = load_elem(w, wdt, i + half) * (v[i + half] * rr);
            float c = cs[i], s = sn[i];
            float ra = na * c - nb * s, rb = nb * c + na * s;
            v[i] = ra;
            v[i + half] = rb;
            if (kdst) {
                kdst[i] = ra;
                kdst[i + half] = rb;
            }
        }
        if ((hd & 1) && lane == 0) { /* odd head_dim: the last element is normalised only */
            float nl = load_elem(w, wdt, hd - 1) * (v[hd - 1] * rr);
            v[hd - 1] = nl;
            if (kdst)
                kdst[hd - 1] = nl;
        }
    }
}

__global__ void __launch_bounds__(256) k_kv_store(const float *qkv, float *kc, float *vc,
                                                  const hip_step_params *sp, long long qkv_dim,
                                                  long long q_dim, long long kv_dim,
                                                  long long max_seq, int *err)
{
    const int r = blockIdx.x;
    const long long pos = sp->pos0 + r;
    if (pos < 0 || pos >= max_seq) {
        if (threadIdx.x == 0)
            *err = 2;
        return;
    }
    const float *row = qkv + (long long)r * qkv_dim;
    for (long long i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kc[pos * kv_dim + i] = row[q_dim + i];
        vc[pos * kv_dim + i] = row[q_dim + kv_dim + i];
    }
}

/* ---- attention -----------------------------------------------------------------------
 * Block = (row, kv head g): the G = nh / nkv query heads sharing g.  Keys in tiles of
 * HIP_ATTN_TILE: the K tile is staged in shared memory (padded rows), scores are serial
 * dots, then per head a running max m, sum l and output o (online softmax, tiles in key
 * order).  Split mode (decode): block x = split s covers keys [s * SPLIT, (s+1) * SPLIT)
 * and writes (m, l, o) partials that k_attn_combine merges in split order. */
size_t hip_attn_smem_bytes(int nh, int nkv, int hd)
{
    size_t G = (size_t)(nh / nkv);
    return sizeof(float) * (2 * G * (size_t)hd + (size_t)HIP_ATTN_TILE * (size_t)(hd + 1) +
                            G * HIP_ATTN_TILE + 3 * G);
}

template <bool SPLIT>
__global__ void __launch_bounds__(HIP_ATTN_THREADS) k_attn(hip_attn_args a)
{
    const int G = a.nh / a.nkv, hd = a.hd, T = HIP_ATTN_TILE;
    float *qs = (float *)dyn_smem4;
    float *os = qs + G * hd;
    float *ks = os + G * hd;
    float *ss = ks + T * (hd + 1);
    float *ms = ss + G * T;
    float *ls = ms + G;
    float *al = ls + G;
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
    const float *qrow = a.qkv + (long long)r * a.qkv_dim + (long long)g * G * hd;
    for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
        qs[i] = qrow[i];
        os[i] = 0.0f;
    }
    for (int h = threadIdx.x; h < G; h += blockDim.x) {
        ms[h] = -INFINITY;
        ls[h] = 0.0f;
    }
    __syncthreads();
    const float *kbase = a.kc + (long long)g * hd, *vbase = a.vc + (long long)g * hd;
    for (long long t0 = kbeg; t0 < kend; t0 += T) {
        const int nt = (int)min((long long)T, kend - t0);
        for (int i = threadIdx.x; i < nt * hd; i += blockDim.x) {
            int j = i / hd, d = i % hd;
            ks[j * (hd + 1) + d] = kbase[(t0 + j) * a.kv_dim + d];
        }
        __syncthreads();
        for (int i = threadIdx.x; i < G * nt; i += blockDim.x) {
            int h = i / nt, j = i % nt;
            const float *q = qs + h * hd, *kr = ks + j * (hd + 1);
            float s = 0.0f;
            for (int d = 0; d < hd; d++)
                s = fmaf(q[d], kr[d], s);
            ss[h * T + j] = s * a.scale;
        }
        __syncthreads();
        for (int h = threadIdx.x; h < G; h += blockDim.x) {
            float mt = ms[h];
            for (int j = 0; j < nt; j++)
                mt = fmaxf(mt, ss[h * T + j]);
            float alpha = expf(ms[h] - mt); /* exp(-inf) = 0 on the first tile */
            float sum = 0.0f;
            for (int j = 0; j < nt; j++) {
                float p = expf(ss[h * T + j] - mt);
                ss[h * T + j] = p;
                sum += p;
            }
            ls[h] = ls[h] * alpha + sum;
            ms[h] = mt;
            al[h] = alpha;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
            int h = i / hd, d = i % hd;
            float o = os[i] * al[h];
            const float *p = ss + h * T;
            for (int j = 0; j < nt; j++)
                o = fmaf(p[j], vbase[(t0 + j) * a.kv_dim + d], o);
            os[i] = o;
        }
        __syncthreads();
    }
    if (SPLIT) {
        const int s = blockIdx.x;
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x) {
            int h = i / hd, d = i % hd;
            float *pp = a.part + ((long long)(g * G + h) * a.max_splits + s) * (hd + 2);
            pp[2 + d] = os[i];
            if (d == 0) {
                pp[0] = ms[h];
                pp[1] = ls[h];
            }
        }
    } else {
        float *orow = a.out + (long long)r * a.q_dim + (long long)g * G * hd;
        for (int i = threadIdx.x; i < G * hd; i += blockDim.x)
            orow[i] = os[i] / ls[i / hd];
    }
}

/* Merges the decode splits of one head, in split order. */
__global__ void __launch_bounds__(128) k_attn_combine(hip_attn_args a)
{
    const int h = blockIdx.x, hd = a.hd;
    const long long pos = a.sp->pos0;
    if (pos < 0 || pos >= a.max_seq)
        return;
    const int n = (int)((pos + 1 + HIP_ATTN_SPLIT - 1) / HIP_ATTN_SPLIT);
    const float *base = a.part + (long long)h * a.max_splits * (hd + 2);
    float m = -INFINITY;
    for (int s = 0; s < n; s++)
        m = fmaxf(m, base[(long long)s * (hd + 2)]);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float l = 0.0f, o = 0.0f;
        for (int s = 0; s < n; s++) {
            const float *pp = base + (long long)s * (hd + 2);
            float f = expf(pp[0] - m);
            l = fmaf(pp[1], f, l);
            o = fmaf(pp[2 + d], f, o);
        }
        a.out[(long long)h * hd + d] = o / l;
    }
}

/* ---- router: softmax over E, top-k (ties -> lower index), optional renormalisation ---- */
__global__ void __launch_bounds__(256) k_route(const float *logits, float *w, int32_t *ids, int E,
                                               int K, int norm)
{
    float *probs = (float *)dyn_smem4;
    int *taken = (int *)(probs + E);
    __shared__ float smf[MAX_WARPS];
    __shared__ int smi[MAX_WARPS];
    const int r = blockIdx.x;
    const float *l = logits + (long long)r * E;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        mx = fmaxf(mx, l[i]);
    mx = block_max(mx, smf);
    float s = 0.0f;
    for (int i = threadIdx.x; i < E; i += blockDim.x) {
        float p = expf(l[i] - mx);
        probs[i] = p;
        taken[i] = 0;
        s += p;
    }
    s = block_sum(s, smf);
    for (int i = threadIdx.x; i < E; i += blockDim.x)
        probs[i] = probs[i] / s;
    __syncthreads();
    float *wr = w + (long long)r * K;
    int32_t *ir = ids + (long long)r * K;
    for (int j = 0; j < K; j++) {
        float bv = -1.0f; /* below every probability */
        int bi = 0x7fffffff;
        for (int i = threadIdx.x; i < E; i += blockDim.x)
            if (!taken[i] && better(probs[i], i, bv, bi)) {
                bv = probs[i];
                bi = i;
            }
        block_argmax(bv, bi, smf, smi);
        if (threadIdx.x == 0) {
            if (bi < 0 || bi >= E) { /* only NaN probabilities left: lowest free index */
                bi = 0;
                while (bi < E - 1 && taken[bi])
                    bi++;
            }
            ir[j] = bi;
            wr[j] = probs[bi];
            taken[bi] = 1;
        }
        __syncthreads();
    }
    if (norm && threadIdx.x == 0) {
        float sum = 0.0f;
        for (int j = 0; j < K; j++)
            sum += wr[j];
        for (int j = 0; j < K; j++)
            wr[j] = wr[j] / sum;
    }
}

/* ---- MoE grouping (prefill) ------------------------------------------------------------
 * k_moe_rank: block e finds the assignments routed to expert e in assignment order with a
 * ballot/popcount scan (the stable rank of each within its expert) and their count.
 * k_moe_place: one block scans the counts into offsets, writes the GEMM tile table, and
 * places each assignment at offs[e] + rank.  No atomics; identical every run. */
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

__global__ void __launch_bounds__(256) k_moe_place(hip_moe_index_args a)
{
    if (threadIdx.x == 0) {
        int off = 0, nt = 0;
        for (int e = 0; e < a.E; e++) {
            a.offs[e] = off;
            int c = a.counts[e];
            for (int p = 0; p < c; p += a.bm) {
                a.tiles[1 + 3 * nt] = e;
                a.tiles[2 + 3 * nt] = off + p;
                a.tiles[3 + 3 * nt] = off + min(p + a.bm, c);
                nt++;
            }
            off += c;
        }
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
__global__ void __launch_bounds__(HIP_GEMV_THREADS) k_moe_gateup_dec(hip_moe_dec_args a)
{
    float *xs = (float *)dyn_smem4;
    stage_x(xs, a.x, a.H);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long es = dt_size<DT>::v;
    const long long total = (long long)a.kslots * a.I;
    for (long long g = (long long)blockIdx.x * nw + warp; g < total; g += (long long)gridDim.x * nw) {
        const int j = (int)(g / a.I);
        const long long n = g % a.I;
        const long long e = a.ids ? safe_expert(a.ids[j], a.E, a.err_flag) : 0;
        const float *xr[2] = {xs, xs};
        const unsigned char *wr[2] = {
            (const unsigned char *)a.gate + (e * a.estride_gu + n * a.H) * es,
            (const unsigned char *)a.up + (e * a.estride_gu + n * a.H) * es};
        const bool valid[2] = {true, true};
        float acc[2];
        gemv_dot<DT, VEC, 2>(xr, wr, valid, a.H, acc);
        if (lane == 0)
            a.h[g] = silu_mul(acc[0], acc[1]);
    }
}

template <int DT, bool VEC>
__global__ void __launch_bounds__(HIP_GEMV_THREADS) k_moe_down_dec(hip_moe_dec_args a)
{
    float *hs = (float *)dyn_smem4;
    stage_x(hs, a.h, (long long)a.kslots * a.I);
    const int lane = threadIdx.x % MOERT_WARP, warp = threadIdx.x / MOERT_WARP;
    const int nw = blockDim.x / MOERT_WARP;
    const long long es = dt_size<DT>::v;
    for (long long i = (long long)blockIdx.x * nw + warp; i < a.H; i += (long long)gridDim.x * nw) {
        float res = 0.0f;
        for (int j = 0; j < a.kslots; j += 2) {
            const int j1 = j + 1 < a.kslots ? j + 1 : j;
            const long long e0 = a.ids ? safe_expert(a.ids[j], a.E, a.err_flag) : 0;
            const long long e1 = a.ids ? safe_expert(a.ids[j1], a.E, a.err_flag) : 0;
            const float *xr[2] = {hs + (long long)j * a.I, hs + (long long)j1 * a.I};
            const unsigned char *wr[2] = {
                (const unsigned char *)a.down + (e0 * a.estride_d + i * a.I) * es,
                (const unsigned char *)a.down + (e1 * a.estride_d + i * a.I) * es};
            const bool valid[2] = {true, j + 1 < a.kslots};
            float acc[2];
            gemv_dot<DT, VEC, 2>(xr, wr, valid, a.I, acc);
            if (!a.tw) {
                res = acc[0]; /* dense MLP: one slot, no routing weight */
            } else {
                res = j == 0 ? a.tw[0] * acc[0] : fmaf(a.tw[j], acc[0], res);
                if (j + 1 < a.kslots)
                    res = fmaf(a.tw[j + 1], acc[1], res);
            }
        }
        if (lane == 0)
            a.out[i] = res;
    }
}

/* The seven statistics and the hash of a row, reduced over the block in one round (warp
 * butterflies, one shared-memory exchange, every warp finishing the same partials). */
typedef struct stats_smem {
    double d[7][MAX_WARPS];
    unsigned long long h[MAX_WARPS];
} stats_smem;

DEV void block_stats(double &sum, double &sumsq, double &fin, double &n_nan, double &n_inf,
                     double &mn, double &mx, unsigned long long &h, stats_smem &sm)
{
    int lane = threadIdx.x % MOERT_WARP, w = threadIdx.x / MOERT_WARP;
    int nw = blockDim.x / MOERT_WARP;
    sum = warp_sum_d(sum);
    sumsq = warp_sum_d(sumsq);
    fin = warp_sum_d(fin);
    n_nan = warp_sum_d(n_nan);
    n_inf = warp_sum_d(n_inf);
    mn = warp_min_d(mn);
    mx = warp_max_d(mx);
    h = warp_sum_u64(h);
    __syncthreads();
    if (lane == 0) {
        sm.d[0][w] = sum;
        sm.d[1][w] = sumsq;
        sm.d[2][w] = fin;
        sm.d[3][w] = n_nan;
        sm.d[4][w] = n_inf;
        sm.d[5][w] = mn;
        sm.d[6][w] = mx;
        sm.h[w] = h;
    }
    __syncthreads();
    bool in = lane < nw;
    sum = warp_sum_d(in ? sm.d[0][lane] : 0.0);
    sumsq = warp_sum_d(in ? sm.d[1][lane] : 0.0);
    fin = warp_sum_d(in ? sm.d[2][lane] : 0.0);
    n_nan = warp_sum_d(in ? sm.d[3][lane] : 0.0);
    n_inf = warp_sum_d(in ? sm.d[4][lane] : 0.0);
    mn = warp_min_d(in ? sm.d[5][lane] : INFINITY);
    mx = warp_max_d(in ? sm.d[6][lane] : -INFINITY);
    h = warp_sum_u64(in ? sm.h[lane] : 0ull);
}

/* ---- trace capture -----------------------------------------------------------------
 * Same rings and records as runtime/trace.c.  Blocks take captured rows; the slot of the
 * i-th record of the step follows from the ring header as of the step's start (kept in a
 * shadow, double-buffered by step parity, because the real header is rewritten by block 0
 * during the kernel).  Stats in double with the block trees; the hash is an integer sum. */
__global__ void __launch_bounds__(1024) k_trace(hip_trace_args a)
{
    __shared__ double smd[MAX_WARPS];
    __shared__ stats_smem sms;
    const hip_step_params *sp = a.sp;
    const long long n_rows = sp->n_rows, row0 = sp->trace_row0 < 0 ? 0 : sp->trace_row0;
    const long long n = row0 < n_rows ? n_rows - row0 : 0;
    const int par = sp->parity & 1;
    const unsigned long long *hin = a.shadow + ((long long)par * a.n_trace + a.ti) * 4;
    const unsigned long long written0 = hin[0], stored0 = hin[1], drops0 = hin[2], next0 = hin[3];
    const long long cap = a.cap;
    const long long shift = a.logits_last ? n_rows - 1 : 0;
    const long long W = a.width;
    for (long long r = row0 + blockIdx.x; r < n_rows && cap > 0; r += gridDim.x) {
        const long long i = r - row0;
        const bool accepted = a.overwrite ? (i + cap >= n) : ((long long)stored0 + i < cap);
        if (!accepted)
            continue;
        const unsigned long long slot = (next0 + (unsigned long long)i) % (unsigned long long)cap;
        unsigned char *rec = a.ring + 64 + slot * a.record_bytes;
        const float *row = a.src + (r - shift) * W;
        const int32_t *ids = a.src2 ? a.src2 + (r - shift) * W : nullptr;
        const unsigned *rw = (const unsigned *)row;
        double sum = 0, sumsq = 0, mn = INFINITY, mx = -INFINITY, fin = 0, n_nan = 0, n_inf = 0;
        unsigned long long h = 0;
        for (long long k = threadIdx.x; k < W; k += blockDim.x) {
            float v = row[k];
            h += mix64(((unsigned long long)k << 32) | rw[k]);
            if (isnan(v)) {
                n_nan += 1;
            } else if (isinf(v)) {
                n_inf += 1;
            } else {
                double d = v;
                fin += 1;
                sum += d;
                sumsq += d * d;
                mn = fmin(mn, d);
                mx = fmax(mx, d);
            }
        }
        if (ids)
            for (long long k = threadIdx.x; k < W; k += blockDim.x)
                h += mix64(((unsigned long long)(W + k) << 32) | (unsigned)ids[k]);
        block_stats(sum, sumsq, fin, n_nan, n_inf, mn, mx, h, sms);
        const double mean = fin > 0 ? sum / fin : NAN;
        double var = 0;
        for (long long k = threadIdx.x; k < W; k += blockDim.x) {
            float v = row[k];
            if (isfinite(v)) {
                double d = (double)v - mean;
                var += d * d;
            }
        }
        var = block_sum_d(var, smd);
        if (threadIdx.x == 0) {
            long long *hd = (long long *)rec;
            hd[0] = sp->gen_step;
            hd[1] = sp->pos0 + r;
            unsigned long long nw = (unsigned long long)W + (ids ? (unsigned long long)W : 0ull);
            ((unsigned long long *)rec)[2] = mix64(h ^ nw);
            hd[3] = 0;
            double *st = (double *)(rec + 32);
            st[0] = (double)W;
            st[1] = sqrt(sumsq);
            st[2] = mean;
            st[3] = fin > 0 ? sqrt(var / fin) : NAN;
            st[4] = fin > 0 ? mn : NAN;
            st[5] = fin > 0 ? mx : NAN;
            st[6] = n_nan;
            st[7] = n_inf;
        }
        if (a.tensor_mode) {
            unsigned *dv = (unsigned *)(rec + 96);
            for (long long k = threadIdx.x; k < W; k += blockDim.x)
                dv[k] = rw[k];
            if (ids) {
                int32_t *di = (int32_t *)(rec + 96 + W * 4);
                for (long long k = threadIdx.x; k < W; k += blockDim.x)
                    di[k] = ids[k];
            }
        }
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long un = (unsigned long long)n, ucap = (unsigned long long)(cap > 0 ? cap : 0);
        unsigned long long stored, drops, next;
        if (a.overwrite) {
            stored = stored0 + un < ucap ? stored0 + un : ucap;
            drops = drops0 + un - (stored - stored0);
            next = ucap ? (next0 + un) % ucap : 0;
        } else {
            unsigned long long room = ucap > stored0 ? ucap - stored0 : 0;
            unsigned long long acc = un < room ? un : room;
            stored = stored0 + acc;
            drops = drops0 + un - acc;
            next = ucap ? (next0 + acc) % ucap : 0;
        }
        unsigned long long *hdr = (unsigned long long *)a.ring;
        unsigned long long *hout = a.shadow + ((long long)(par ^ 1) * a.n_trace + a.ti) * 4;
        hdr[0] = hout[0] = written0 + un;
        hdr[1] = hout[1] = stored;
        hdr[2] = hout[2] = drops;
        hdr[3] = hout[3] = next;
    }
}

/* ---- launchers ------------------------------------------------------------------------ */

static inline bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

template <int DT>
static void launch_gemv_t(const hip_gemv_args *a, int grid, hipStream_t s, bool vec)
{
    size_t sm = (size_t)a->k * sizeof(float);
    if (vec)
        k_gemv<DT, true><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
    else
        k_gemv<DT, false><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
}

hipError_t hip_launch_gemv(int dtype, const hip_gemv_args *a, int grid, hipStream_t s)
{
    bool vec = a->k % 8 == 0 && aligned16(a->x);
    for (int i = 0; i < 3; i++)
        vec = vec && aligned16(a->w[i]);
    if (grid < 1)
        grid = 1;
    if (dtype == HIP_DT_BF16)
        launch_gemv_t<HIP_DT_BF16>(a, grid, s, vec);
    else if (dtype == HIP_DT_F16)
        launch_gemv_t<HIP_DT_F16>(a, grid, s, vec);
    else
        launch_gemv_t<HIP_DT_F32>(a, grid, s, vec);
    return hipGetLastError();
}

template <int DT, int AM, int BM>
static void launch_gemm_t(const hip_gemm_args *a, dim3 grid, hipStream_t s, bool vec)
{
    if (vec)
        k_gemm<DT, AM, BM, true><<<grid, BM * 4, 0, s>>>(*a);
    else
        k_gemm<DT, AM, BM, false><<<grid, BM * 4, 0, s>>>(*a);
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
    bool vec = a->k % 8 == 0 && a->lda % 4 == 0 && aligned16(a->a) && aligned16(a->w) &&
               (amode != HIP_A_SWIGLU || aligned16(a->a2));
    dim3 grid((unsigned)((a->n + HIP_GEMM_BN - 1) / HIP_GEMM_BN),
              (unsigned)(a->tiles ? a->max_tiles : (a->m + bm - 1) / bm));
    if (dtype == HIP_DT_BF16)
        launch_gemm_dt<HIP_DT_BF16>(amode, bm, a, grid, s, vec);
    else if (dtype == HIP_DT_F16)
        launch_gemm_dt<HIP_DT_F16>(amode, bm, a, grid, s, vec);
    else
        launch_gemm_dt<HIP_DT_F32>(amode, bm, a, grid, s, vec);
    return hipGetLastError();
}

hipError_t hip_launch_embed(const int32_t *tok, const void *emb, int dt, float *x, long long H,
                            long long V, int rows, int *err_flag, hipStream_t s)
{
    k_embed<<<rows, 256, 0, s>>>(tok, emb, dt, x, H, V, err_flag);
    return hipGetLastError();
}

hipError_t hip_launch_rmsnorm(const float *x, const void *w, int dt, float *out, long long n,
                              float eps, int rows, hipStream_t s)
{
    k_rmsnorm<<<rows, 256, 0, s>>>(x, w, dt, out, n, eps);
    return hipGetLastError();
}

hipError_t hip_launch_add_rmsnorm(float *x, const float *y, const void *w, int dt, float *out,
                                  long long n, float eps, int rows, hipStream_t s)
{
    k_add_rmsnorm<<<rows, 256, 0, s>>>(x, y, w, dt, out, n, eps);
    return hipGetLastError();
}

hipError_t hip_launch_add(float *x, const float *y, long long n, hipStream_t s)
{
    if (n <= 0)
        return hipSuccess;
    k_add<<<(unsigned)((n + 255) / 256), 256, 0, s>>>(x, y, n);
    return hipGetLastError();
}

hipError_t hip_launch_qk_norm_rope(const hip_qkn_args *a, int rows, hipStream_t s)
{
    int heads = a->nh + a->nkv + (a->kc ? a->nkv : 0);
    /* 128 threads hold at least 2 warps on every device; size y for 32-wide warps and let
     * wider-warp devices skip the surplus blocks. */
    dim3 grid((unsigned)rows, (unsigned)((heads + 3) / 4));
    k_qk_norm_rope<<<grid, 128, 0, s>>>(*a);
    return hipGetLastError();
}

hipError_t hip_launch_kv_store(const float *qkv, float *kc, float *vc, const hip_step_params *sp,
                               long long qkv_dim, long long q_dim, long long kv_dim,
                               long long max_seq, int rows, int *err_flag, hipStream_t s)
{
    k_kv_store<<<rows, 256, 0, s>>>(qkv, kc, vc, sp, qkv_dim, q_dim, kv_dim, max_seq, err_flag);
    return hipGetLastError();
}

hipError_t hip_launch_attention(const hip_attn_args *a, int rows, bool split, hipStream_t s)
{
    size_t sm = hip_attn_smem_bytes(a->nh, a->nkv, a->hd);
    if (split) {
        dim3 grid((unsigned)a->max_splits, (unsigned)a->nkv);
        k_attn<true><<<grid, HIP_ATTN_THREADS, sm, s>>>(*a);
        hipError_t e = hipGetLastError();
        if (e != hipSuccess)
            return e;
        k_attn_combine<<<a->nh, 128, 0, s>>>(*a);
    } else {
        dim3 grid((unsigned)rows, (unsigned)a->nkv);
        k_attn<false><<<grid, HIP_ATTN_THREADS, sm, s>>>(*a);
    }
    return hipGetLastError();
}

hipError_t hip_launch_route(const float *logits, float *w, int32_t *ids, int E, int K, int norm,
                            int rows, hipStream_t s)
{
    size_t sm = (size_t)E * (sizeof(float) + sizeof(int));
    k_route<<<rows, 256, sm, s>>>(logits, w, ids, E, K, norm);
    return hipGetLastError();
}

hipError_t hip_launch_moe_index(const hip_moe_index_args *a, hipStream_t s)
{
    k_moe_rank<<<a->E, 256, 0, s>>>(*a);
    hipError_t e = hipGetLastError();
    if (e != hipSuccess)
        return e;
    k_moe_place<<<1, 256, 0, s>>>(*a);
    return hipGetLastError();
}

hipError_t hip_launch_moe_combine(const float *down, const int32_t *inv, const float *tw,
                                  float *out, int K, long long H, int rows, hipStream_t s)
{
    dim3 grid((unsigned)((H + 255) / 256), (unsigned)rows);
    k_moe_combine<<<grid, 256, 0, s>>>(down, inv, tw, out, K, H);
    return hipGetLastError();
}

template <int DT>
static void launch_moe_dec_t(bool down, const hip_moe_dec_args *a, int grid, hipStream_t s,
                             bool vec)
{
    if (!down) {
        size_t sm = (size_t)a->H * sizeof(float);
        if (vec)
            k_moe_gateup_dec<DT, true><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
        else
            k_moe_gateup_dec<DT, false><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
    } else {
        size_t sm = (size_t)a->kslots * (size_t)a->I * sizeof(float);
        if (vec)
            k_moe_down_dec<DT, true><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
        else
            k_moe_down_dec<DT, false><<<grid, HIP_GEMV_THREADS, sm, s>>>(*a);
    }
}

static hipError_t launch_moe_dec(int dtype, bool down, const hip_moe_dec_args *a, int grid,
                                 hipStream_t s)
{
    /* 16-byte chunks need k % 8 == 0 for every row and slot (h rows are I apart). */
    bool vec = down ? a->I % 8 == 0 : a->H % 8 == 0;
    vec = vec && aligned16(a->gate) && aligned16(a->up) && aligned16(a->down) &&
          a->estride_gu % 8 == 0 && a->estride_d % 8 == 0;
    if (grid < 1)
        grid = 1;
    if (dtype == HIP_DT_BF16)
        launch_moe_dec_t<HIP_DT_BF16>(down, a, grid, s, vec);
    else if (dtype == HIP_DT_F16)
        launch_moe_dec_t<HIP_DT_F16>(down, a, grid, s, vec);
    else
        launch_moe_dec_t<HIP_DT_F32>(down, a, grid, s, vec);
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
    k_trace<<<grid, a->width > 16384 ? 1024 : 256, 0, s>>>(*a);
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
    hipError_t e;
    if ((e = raise_gemv_smem<HIP_DT_F32>(gemv_bytes, moe_down_bytes)) != hipSuccess ||
        (e = raise_gemv_smem<HIP_DT_BF16>(gemv_bytes, moe_down_bytes)) != hipSuccess ||
        (e = raise_gemv_smem<HIP_DT_F16>(gemv_bytes, moe_down_bytes)) != hipSuccess ||
        (e = raise_smem(k_attn<true>, attn_bytes)) != hipSuccess ||
        (e = raise_smem(k_attn<false>, attn_bytes)) != hipSuccess)
        return e;
    return hipSuccess;
}
