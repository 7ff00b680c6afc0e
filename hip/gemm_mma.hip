/* gemm_mma: the tensor-core prefill GEMM (hip_gemm_mma.h says what it promises).
 *
 * Block tile BM x BN, k tiles of 32 double-buffered in shared memory as bf16, k-contiguous
 * rows padded to 80 bytes (conflict-free 16-byte row reads); warps own 32 x 32 outputs.
 * A (fp32 activations) goes through registers: loaded one k tile ahead, SwiGLU applied,
 * split into hi / lo / lo2 and stored as three bf16 tiles.  W (bf16) is copied as is.
 * Dense: 64 x 64 tiles; grouped (MoE): HIP_MOE_BM x 128 tiles, one per tile-table entry.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_devmath.h"
#include "hip_gemm_mma.h"
#include "hip_kernels.h"

/* Threads per warp of the devices this kernel runs on (CDNA is wave64), known to the host
 * too: the launch is sized from it. */
#if defined(MOERT_HIP_AMD)
#define MMA_WARP 64
#else
#define MMA_WARP 32
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define MMA_NV 1
#elif defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
#define MMA_AMD 1
#endif

#define MMA_BK 32            /* k per tile */
#define MMA_LDS (MMA_BK + 8) /* bf16 per shared-memory row */
#define MMA_TERMS 3          /* activation terms: hi, lo, lo2 */
#define MMA_DENSE_BN 64
#define MMA_MOE_BN 128

#define DEV static __device__ __forceinline__

#if defined(MMA_NV) || defined(MMA_AMD)
/* bf16 bits of v rounded to nearest even (NaN stays NaN, overflow gives Inf) */
DEV uint32_t bf16_rn(float v)
{
    uint32_t u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

/* v = hi + lo + lo2 within 2^-27 |v|: both remainders are exact in fp32 */
DEV void split3(float v, uint32_t *hi, uint32_t *lo, uint32_t *lo2)
{
    *hi = bf16_rn(v);
    float r = v - __uint_as_float(*hi << 16);
    if (!(r == r) || r - r != 0.0f) /* v infinite or NaN: hi carries it */
        r = 0.0f;
    *lo = bf16_rn(r);
    float r2 = r - __uint_as_float(*lo << 16);
    *lo2 = bf16_rn(r2);
}
#endif

#if defined(MMA_NV)
DEV void ldsm_x4(uint32_t r[4], const void *p)
{
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
DEV void mma_16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* per 32 x 32 warp tile: 2 m16 x 4 n8 fragments of 4 floats */
#define MMA_ACC 32
#elif defined(MMA_AMD)
typedef short mma_s4 __attribute__((ext_vector_type(4)));
typedef float mma_f4 __attribute__((ext_vector_type(4)));
/* per 32 x 32 wave tile: 2 x 2 16 x 16 fragments of 4 floats */
#define MMA_ACC 16
#endif

template <int AMODE, int BM, int BN>
__global__ void __launch_bounds__((BM / 32) * (BN / 32) * MMA_WARP) k_gemm_mma(hip_gemm_args a)
{
    moert_pdl_wait();
#if defined(MMA_NV) || defined(MMA_AMD)
    constexpr int BK = MMA_BK, LDS = MMA_LDS;
    constexpr int WN = BN / 32, NT = (BM / 32) * WN * MMA_WARP;
    constexpr int ACH = BM * BK / 4 / NT; /* A float4 chunks per thread per k tile */
    constexpr int BCH = BN * BK / 8 / NT; /* W 16-byte chunks per thread per k tile */
    static_assert(ACH >= 1 && ACH * NT * 4 == BM * BK && BCH >= 1 && BCH * NT * 8 == BN * BK,
                  "k_gemm_mma: tile / thread split");
    __shared__ __align__(16) uint16_t As[2][MMA_TERMS][BM][LDS];
    __shared__ __align__(16) uint16_t Bs[2][BN][LDS];
    const int tid = threadIdx.x, lane = tid % MMA_WARP, warp = tid / MMA_WARP;
    const int wm = warp / WN, wn = warp % WN;
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

    /* A chunk i: row (tid + i NT) / 8, float4 (tid + i NT) % 8 of the k tile */
    const float *arow[ACH], *arow2[ACH];
    bool a_ok[ACH];
#pragma unroll
    for (int i = 0; i < ACH; i++) {
        int p = m0 + (tid + i * NT) / 8;
        a_ok[i] = p < m_end;
        arow[i] = arow2[i] = a.a;
        if (a_ok[i]) {
            if (AMODE == HIP_A_GATHER)
                arow[i] = a.a + (long long)(a.gather[p] / a.gdiv) * a.lda;
            else
                arow[i] = a.a + (long long)p * a.lda;
            if (AMODE == HIP_A_SWIGLU)
                arow2[i] = a.a2 + (long long)p * a.lda;
        }
    }
    /* W chunk i: row (tid + i NT) / 4, 8 bf16 at (tid + i NT) % 4 of the k tile */
    const uint16_t *wrow[BCH];
    bool w_ok[BCH];
#pragma unroll
    for (int i = 0; i < BCH; i++) {
        int n = n0 + (tid + i * NT) / 4;
        w_ok[i] = n < a.n;
        wrow[i] = (const uint16_t *)((const unsigned char *)a.w + e * a.w_estride) +
                  (long long)(w_ok[i] ? n : 0) * K;
    }

    float4 ra[ACH];
    uint4 rb[BCH];
    auto load_tile = [&](long long k0) {
#pragma unroll
        for (int i = 0; i < ACH; i++) {
            long long ka = k0 + ((tid + i * NT) % 8) * 4;
            if (a_ok[i] && ka < K) {
                float4 v = *(const float4 *)(arow[i] + ka);
                if (AMODE == HIP_A_SWIGLU) {
                    float4 u = *(const float4 *)(arow2[i] + ka);
                    v.x = silu_mul(v.x, u.x);
                    v.y = silu_mul(v.y, u.y);
                    v.z = silu_mul(v.z, u.z);
                    v.w = silu_mul(v.w, u.w);
                }
                ra[i] = v;
            } else {
                ra[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
#pragma unroll
        for (int i = 0; i < BCH; i++) {
            long long kb = k0 + ((tid + i * NT) % 4) * 8;
            if (w_ok[i] && kb < K)
                rb[i] = *(const uint4 *)(wrow[i] + kb);
            else
                rb[i] = make_uint4(0u, 0u, 0u, 0u);
        }
    };
    auto store_tile = [&](int buf) {
#pragma unroll
        for (int i = 0; i < ACH; i++) {
            int c = tid + i * NT, r = c / 8, k = (c % 8) * 4;
            float v[4] = {ra[i].x, ra[i].y, ra[i].z, ra[i].w};
            uint32_t h[4], l[4], l2[4];
#pragma unroll
            for (int q = 0; q < 4; q++)
                split3(v[q], &h[q], &l[q], &l2[q]);
            *(uint2 *)&As[buf][0][r][k] = make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
            *(uint2 *)&As[buf][1][r][k] = make_uint2(l[0] | l[1] << 16, l[2] | l[3] << 16);
            *(uint2 *)&As[buf][2][r][k] = make_uint2(l2[0] | l2[1] << 16, l2[2] | l2[3] << 16);
        }
#pragma unroll
        for (int i = 0; i < BCH; i++) {
            int c = tid + i * NT;
            *(uint4 *)&Bs[buf][c / 4][(c % 4) * 8] = rb[i];
        }
    };

    float acc[MMA_ACC], part[MMA_ACC];
#pragma unroll
    for (int i = 0; i < MMA_ACC; i++)
        acc[i] = 0.0f;

    const int ntiles = (int)((K + BK - 1) / BK);
    load_tile(0);
    store_tile(0);
    __syncthreads();
    for (int t = 0; t < ntiles; t++) {
        const int cur = t & 1;
        if (t + 1 < ntiles)
            load_tile((long long)(t + 1) * BK);
#pragma unroll
        for (int i = 0; i < MMA_ACC; i++)
            part[i] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
#if defined(MMA_NV)
            /* b[j]: n8 fragment j of the warp's 32 columns (ldmatrix: 2 per x4) */
            uint32_t b[4][2];
#pragma unroll
            for (int nb = 0; nb < 2; nb++) {
                uint32_t r[4];
                ldsm_x4(r, &Bs[cur][wn * 32 + nb * 16 + (lane & 7) + ((lane >> 4) << 3)]
                              [ks * 16 + ((lane >> 3) & 1) * 8]);
                b[2 * nb][0] = r[0];
                b[2 * nb][1] = r[1];
                b[2 * nb + 1][0] = r[2];
                b[2 * nb + 1][1] = r[3];
            }
#pragma unroll
            for (int q = 0; q < MMA_TERMS; q++)
#pragma unroll
                for (int mb = 0; mb < 2; mb++) {
                    uint32_t af[4];
                    ldsm_x4(af, &As[cur][q][wm * 32 + mb * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        mma_16816(&part[(mb * 4 + j) * 4], af, b[j][0], b[j][1]);
                }
#else
            mma_s4 b[2];
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
                b[nb] = *(const mma_s4 *)&Bs[cur][wn * 32 + nb * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 4];
#pragma unroll
            for (int q = 0; q < MMA_TERMS; q++)
#pragma unroll
                for (int mb = 0; mb < 2; mb++) {
                    mma_s4 av = *(const mma_s4 *)&As[cur][q][wm * 32 + mb * 16 + (lane & 15)]
                                                    [ks * 16 + (lane >> 4) * 4];
#pragma unroll
                    for (int nb = 0; nb < 2; nb++) {
                        float *pp = &part[(mb * 2 + nb) * 4];
                        mma_f4 cv = {pp[0], pp[1], pp[2], pp[3]};
                        cv = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(av, b[nb], cv, 0, 0, 0);
                        pp[0] = cv[0];
                        pp[1] = cv[1];
                        pp[2] = cv[2];
                        pp[3] = cv[3];
                    }
                }
#endif
        }
        /* one IEEE addition per k tile: the MMA unit's own rounding stays within 32 terms */
#pragma unroll
        for (int i = 0; i < MMA_ACC; i++)
            acc[i] += part[i];
        if (t + 1 < ntiles)
            store_tile(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < MMA_ACC; i++) {
#if defined(MMA_NV)
        /* fragment f = mb * 4 + j, element q: row g (+ 8 for q >= 2), columns 2 tig + (q & 1) */
        int f = i / 4, q = i % 4, mb = f / 4, j = f % 4;
        int r = wm * 32 + mb * 16 + (lane >> 2) + (q >> 1) * 8;
        int col = wn * 32 + j * 8 + (lane & 3) * 2 + (q & 1);
#else
        /* fragment f = mb * 2 + nb, element q: row 4 (lane / 16) + q, column lane % 16 */
        int f = i / 4, q = i % 4, mb = f / 2, nb = f % 2;
        int r = wm * 32 + mb * 16 + (lane >> 4) * 4 + q;
        int col = wn * 32 + nb * 16 + (lane & 15);
#endif
        int p = m0 + r, n = n0 + col;
        if (p < m_end && n < a.n)
            a.c[(long long)p * a.ldc + n] = acc[i];
    }
#else
    (void)a;
#endif
}

/* ---- host side ----------------------------------------------------------------------- */

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

/* Once per process: the MOERT_HIP_GEMM choice and whether the device has the instructions. */
static bool mma_enabled(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("MOERT_HIP_GEMM");
        int dev = 0;
        on = 0;
        if (v && strcmp(v, "fma") == 0) {
            on = 0;
        } else if (hipGetDevice(&dev) == hipSuccess) {
#if defined(MOERT_HIP_AMD)
            hipDeviceProp_t p;
            if (v && strcmp(v, "mma") == 0 && hipGetDeviceProperties(&p, dev) == hipSuccess)
                on = strncmp(p.gcnArchName, "gfx90a", 6) == 0 || strncmp(p.gcnArchName, "gfx94", 5) == 0;
#else
            int major = 0;
            if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess)
                on = major >= 8;
#endif
        }
    }
    return on == 1;
}

bool hip_gemm_mma_takes(int dtype, int amode, int bm, const hip_gemm_args *a)
{
    if (dtype != HIP_DT_BF16 || (bm != 64 && bm != HIP_MOE_BM))
        return false;
    if (a->k % 8 != 0 || a->lda % 4 != 0 || a->w_estride % 16 != 0 || !aligned16(a->a) ||
        !aligned16(a->w) || (amode == HIP_A_SWIGLU && !aligned16(a->a2)))
        return false;
    return mma_enabled();
}

template <int AM, int BM, int BN>
static void launch_mma(const hip_gemm_args *a, hipStream_t s)
{
    dim3 grid((unsigned)((a->n + BN - 1) / BN), (unsigned)(a->tiles ? a->max_tiles : (a->m + BM - 1) / BM));
    MOERT_LAUNCH((k_gemm_mma<AM, BM, BN>), grid, (BM / 32) * (BN / 32) * MMA_WARP, 0, s, *a);
}

hipError_t hip_launch_gemm_mma(int amode, int bm, const hip_gemm_args *a, hipStream_t s)
{
    if (a->n <= 0 || (!a->tiles && a->m <= 0))
        return hipSuccess;
    if (bm == 64 && amode == HIP_A_PLAIN)
        launch_mma<HIP_A_PLAIN, 64, MMA_DENSE_BN>(a, s);
    else if (bm == 64 && amode == HIP_A_SWIGLU)
        launch_mma<HIP_A_SWIGLU, 64, MMA_DENSE_BN>(a, s);
    else if (bm == HIP_MOE_BM && amode == HIP_A_GATHER)
        launch_mma<HIP_A_GATHER, HIP_MOE_BM, MMA_MOE_BN>(a, s);
    else if (bm == HIP_MOE_BM && amode == HIP_A_SWIGLU)
        launch_mma<HIP_A_SWIGLU, HIP_MOE_BM, MMA_MOE_BN>(a, s);
    else
        return hipErrorInvalidValue;
    return hipGetLastError();
}
