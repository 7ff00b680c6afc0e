/* gemm_mma: the tensor-core prefill GEMM (hip_gemm_mma.h says what it promises).
 *
 * Block tile BM x BN, k tiles of 32 double-buffered in shared memory as bf16, k-contiguous
 * rows padded to 80 bytes (conflict-free 16-byte row reads); warps own 32 x 32 outputs.
 * A (fp32 activations) goes through registers: loaded one k tile ahead, SwiGLU applied,
 * split into hi / lo / lo2 and stored as three bf16 tiles.  W (bf16) is copied as is.
 * Dense: 64 x 64 tiles; grouped (MoE): HIP_MOE_BM x 128 tiles, one per tile-table entry.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_devmath.h"
#include "hip_gemm_mma.h"
#include "hip_kernels.h"
extern "C" {
#include "../runtime/backend.h"
}

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

#define MMA_BK HIP_MMA_BK    /* k per tile */
#define MMA_LDS (MMA_BK + 8) /* bf16 per shared-memory row */
#define MMA_TERMS 3          /* activation terms: hi, lo, lo2 */
#define MMA_DENSE_BN 64
#define MMA_MOE_BN 128

#define DEV static __device__ __forceinline__

/* float bits both ways, on the host (the self-test) and the device */
#define HD static __host__ __device__ __forceinline__
HD uint32_t f2u(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}
HD float u2f(uint32_t u)
{
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* v = hi + lo + lo2 exactly, each term the truncated top half of what is left: hi holds the
 * significand's first 8 bits, lo the next 8 (v - hi has at most 16 significant bits, and
 * the subtraction is exact), lo2 the last 8 (exact in bf16).  Returns the three fp32 bit
 * patterns; their high halves are the bf16 terms.  Exact for |v| >= 2^-103 (every remainder
 * is then a normal float); below, within 2^-126.  Inf and NaN travel in hi alone. */
HD void split3(float v, uint32_t *hi, uint32_t *lo, uint32_t *lo2)
{
    uint32_t u = f2u(v);
    bool special = (u & 0x7f800000u) == 0x7f800000u;
    /* a NaN whose payload lies in the low half must not truncate to Inf: set the quiet bit */
    *hi = (u & 0xffff0000u) | (special && (u & 0x007fffffu) ? 0x00400000u : 0u);
    float r = special ? 0.0f : v - u2f(*hi);
    *lo = f2u(r) & 0xffff0000u;
    *lo2 = f2u(r - u2f(*lo));
}
/* the bf16 pair (high halves of x, y) as one 32-bit word, x in the low half */
HD uint32_t pack_hi(uint32_t x, uint32_t y)
{
    return (x >> 16) | (y & 0xffff0000u);
}

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
/* the same with C = 0: a k tile's first product starts its partial sums */
DEV void mma_16816_z(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
                 : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "f"(0.0f));
}
/* per 32 x 32 warp tile: 2 m16 x 4 n8 fragments of 4 floats */
#define MMA_ACC 32
#elif defined(MMA_AMD)
typedef short mma_s4 __attribute__((ext_vector_type(4)));
typedef float mma_f4 __attribute__((ext_vector_type(4)));
/* per 32 x 32 wave tile: 2 x 2 16 x 16 fragments of 4 floats */
#define MMA_ACC 16
#endif

/* W tiles travel global -> shared without registers: cp.async on NVIDIA (a ring of
 * MMA_STAGES tiles in flight), an ordinary load and store elsewhere. */
#define MMA_STAGES 4
#if defined(MMA_NV)
DEV void copy16(void *sdst, const void *gsrc, bool valid)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(sa), "l"(gsrc), "r"(valid ? 16 : 0)
                 : "memory");
}
DEV void copy_commit(void)
{
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N> DEV void copy_wait(void)
{
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#elif defined(MMA_AMD)
DEV void copy16(void *sdst, const void *gsrc, bool valid)
{
    *(uint4 *)sdst = valid ? *(const uint4 *)gsrc : make_uint4(0u, 0u, 0u, 0u);
}
DEV void copy_commit(void) {}
template <int N> DEV void copy_wait(void) {}
#endif

/* dynamic shared memory of k_gemm_mma<., BM, BN>: the split A tiles (2 buffers x 3 terms)
 * and the W ring */
#define MMA_SMEM_BYTES(BM, BN) ((2 * MMA_TERMS * (BM) + MMA_STAGES * (BN)) * MMA_LDS * 2)

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
    extern __shared__ __align__(16) unsigned char mma_smem[];
    typedef uint16_t a_tile[MMA_TERMS][BM][LDS];
    typedef uint16_t b_tile[BN][LDS];
    a_tile *As = (a_tile *)mma_smem;
    b_tile *Bs = (b_tile *)(mma_smem + 2 * sizeof(a_tile));
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
    auto copy_w = [&](int t) {
        const long long k0 = (long long)t * BK;
        b_tile &dst = Bs[t % MMA_STAGES];
#pragma unroll
        for (int i = 0; i < BCH; i++) {
            int c = tid + i * NT;
            long long kb = k0 + (c % 4) * 8;
            bool ok = w_ok[i] && kb < K;
            copy16(&dst[c / 4][(c % 4) * 8], ok ? (const void *)(wrow[i] + kb) : (const void *)wrow[i], ok);
        }
    };
    auto load_a = [&](long long k0) {
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
    };
    auto store_a = [&](int buf) {
#pragma unroll
        for (int i = 0; i < ACH; i++) {
            int c = tid + i * NT, r = c / 8, k = (c % 8) * 4;
            float v[4] = {ra[i].x, ra[i].y, ra[i].z, ra[i].w};
            uint32_t h[4], l[4], l2[4];
#pragma unroll
            for (int q = 0; q < 4; q++)
                split3(v[q], &h[q], &l[q], &l2[q]);
            *(uint2 *)&As[buf][0][r][k] = make_uint2(pack_hi(h[0], h[1]), pack_hi(h[2], h[3]));
            *(uint2 *)&As[buf][1][r][k] = make_uint2(pack_hi(l[0], l[1]), pack_hi(l[2], l[3]));
            *(uint2 *)&As[buf][2][r][k] = make_uint2(pack_hi(l2[0], l2[1]), pack_hi(l2[2], l2[3]));
        }
    };

    float acc[MMA_ACC], part[MMA_ACC];
#pragma unroll
    for (int i = 0; i < MMA_ACC; i++)
        acc[i] = part[i] = 0.0f;
    /* m16 fragments holding no row of this tile are skipped (warp-uniform): grouped tiles
     * are often partly filled */
    const bool mb_on[2] = {m0 + wm * 32 < m_end, m0 + wm * 32 + 16 < m_end};

    /* Iteration t: A of tile t + 1 into registers, W of tile t + STAGES - 1 on its way,
     * products of tile t, A of t + 1 split into shared memory, then one barrier once W of
     * t + 1 has landed.  Every copy group is committed (empty ones too), so the wait count
     * is fixed. */
    const int ntiles = (int)((K + BK - 1) / BK);
#pragma unroll
    for (int t = 0; t < MMA_STAGES - 1; t++) {
        if (t < ntiles)
            copy_w(t);
        copy_commit();
    }
    load_a(0);
    store_a(0);
    copy_wait<MMA_STAGES - 2>();
    __syncthreads();
    for (int t = 0; t < ntiles; t++) {
        const int cur = t & 1, wb = t % MMA_STAGES;
        if (t + 1 < ntiles)
            load_a((long long)(t + 1) * BK);
        if (t + MMA_STAGES - 1 < ntiles)
            copy_w(t + MMA_STAGES - 1);
        copy_commit();
#if !defined(MMA_NV)
#pragma unroll
        for (int i = 0; i < MMA_ACC; i++)
            part[i] = 0.0f;
#endif
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
#if defined(MMA_NV)
            /* b[j]: n8 fragment j of the warp's 32 columns (ldmatrix: 2 per x4) */
            uint32_t b[4][2];
#pragma unroll
            for (int nb = 0; nb < 2; nb++) {
                uint32_t r[4];
                ldsm_x4(r, &Bs[wb][wn * 32 + nb * 16 + (lane & 7) + ((lane >> 4) << 3)]
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
                    if (!mb_on[mb])
                        continue;
                    uint32_t af[4];
                    ldsm_x4(af, &As[cur][q][wm * 32 + mb * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        if (ks == 0 && q == 0)
                            mma_16816_z(&part[(mb * 4 + j) * 4], af, b[j][0], b[j][1]);
                        else
                            mma_16816(&part[(mb * 4 + j) * 4], af, b[j][0], b[j][1]);
                    }
                }
#else
            mma_s4 b[2];
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
                b[nb] = *(const mma_s4 *)&Bs[wb][wn * 32 + nb * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 4];
#pragma unroll
            for (int q = 0; q < MMA_TERMS; q++)
#pragma unroll
                for (int mb = 0; mb < 2; mb++) {
                    if (!mb_on[mb])
                        continue;
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
            store_a(cur ^ 1);
        copy_wait<MMA_STAGES - 2>();
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

/* ---- the planes path: A split once per GEMM (hip_gemm_mma.h) -------------------------- */

/* Four values per thread: SwiGLU when a2 is given, the split, three 8-byte plane stores. */
template <bool SWIGLU>
__global__ void __launch_bounds__(256) k_mma_split(const float *a, const float *a2, long long lda, long long rows,
                                                   int k, uint16_t *pl)
{
    moert_pdl_wait();
    const long long q4 = k / 4, i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * q4)
        return;
    const long long r = i / q4, c = (i % q4) * 4;
    float4 v = *(const float4 *)(a + r * lda + c);
    if (SWIGLU) {
        float4 u = *(const float4 *)(a2 + r * lda + c);
        v.x = silu_mul(v.x, u.x);
        v.y = silu_mul(v.y, u.y);
        v.z = silu_mul(v.z, u.z);
        v.w = silu_mul(v.w, u.w);
    }
    float x[4] = {v.x, v.y, v.z, v.w};
    uint32_t h[4], l[4], l2[4];
#pragma unroll
    for (int j = 0; j < 4; j++)
        split3(x[j], &h[j], &l[j], &l2[j]);
    const long long ps = rows * k, o = r * k + c;
    *(uint2 *)(pl + o) = make_uint2(pack_hi(h[0], h[1]), pack_hi(h[2], h[3]));
    *(uint2 *)(pl + ps + o) = make_uint2(pack_hi(l[0], l[1]), pack_hi(l[2], l[3]));
    *(uint2 *)(pl + 2 * ps + o) = make_uint2(pack_hi(l2[0], l2[1]), pack_hi(l2[2], l2[3]));
}

enum { PL_DENSE, PL_GROUPED, PL_GATEUP };

/* dynamic shared memory of k_gemm_pl<., BM, BN, ., S>: S stages of 3 A planes and one W tile */
#define PL_SMEM_BYTES(BM, BN, S) ((S) * (MMA_TERMS * (BM) + (BN)) * MMA_LDS * 2)

/* Block tile BM x BN (BN columns of W: gate-up holds BN / 2 of gate and the same BN / 2 of up,
 * each warp's WTN columns split half and half, so that a thread owns both halves of its h),
 * warps of 32 x WTN, an S-stage cp.async ring carrying both operands, one barrier per k tile.
 * Per output fragment the MMAs run in the per-tile kernel's order (k16 step, then term), the
 * first from zero, and each k tile's partial joins the result by one fp32 addition. */
template <int MODE, int BM, int BN, int WTN, int S, int MINB>
__global__ void __launch_bounds__((BM / 32) * (BN / WTN) * 32, MINB) k_gemm_pl(hip_mma_args a)
{
    moert_pdl_wait();
#if defined(MMA_NV)
    constexpr int BK = MMA_BK, LDS = MMA_LDS, NJ = WTN / 8, ACC = 2 * NJ * 4;
    constexpr int WN = BN / WTN, NT = (BM / 32) * WN * 32;
    constexpr int ACH = MMA_TERMS * BM * 4 / NT, BCH = BN * 4 / NT;
    static_assert(ACH >= 1 && ACH * NT == MMA_TERMS * BM * 4 && BCH >= 1 && BCH * NT == BN * 4,
                  "k_gemm_pl: tile / thread split");
    extern __shared__ __align__(16) unsigned char mma_smem[];
    typedef uint16_t a_tile[MMA_TERMS][BM][LDS];
    typedef uint16_t b_tile[BN][LDS];
    typedef struct {
        a_tile A;
        b_tile B;
    } stage;
    stage *sm = (stage *)mma_smem;
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp / WN, wn = warp % WN;
    const int n0 = blockIdx.x * (MODE == PL_GATEUP ? BN / 2 : BN);
    long long e = 0;
    int m0, m_end;
    if (MODE != PL_DENSE) {
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
    const int K = a.k;
    /* dense split-k: part blockIdx.z of kparts takes k tiles [t_begin, t_end) */
    const int ktiles = (K + BK - 1) / BK;
    int t_begin = 0, t_end = ktiles;
    if (MODE == PL_DENSE && a.kparts > 1) {
        const int per = (ktiles + a.kparts - 1) / a.kparts;
        t_begin = min((int)blockIdx.z * per, ktiles);
        t_end = min(t_begin + per, ktiles);
    }

    /* A chunk i: term c / (4 BM), row (c / 4) % BM, 8 bf16 at (c % 4) * 8 of the k tile */
    const uint16_t *asrc[ACH];
    bool a_ok[ACH];
#pragma unroll
    for (int i = 0; i < ACH; i++) {
        int c = tid + i * NT, q = c / (4 * BM), r = (c / 4) % BM, p = m0 + r;
        a_ok[i] = p < m_end;
        long long row = 0;
        if (a_ok[i])
            row = MODE != PL_DENSE && a.gather ? a.gather[p] / a.gdiv : p;
        asrc[i] = a.ap + q * a.ps + row * K + (c % 4) * 8;
    }
    /* W chunk i: smem row c / 4, 8 bf16 at (c % 4) * 8 of the k tile */
    const uint16_t *wsrc[BCH];
    bool w_ok[BCH];
#pragma unroll
    for (int i = 0; i < BCH; i++) {
        int c = tid + i * NT, r = c / 4, n, mat = 0;
        if (MODE == PL_GATEUP) {
            n = n0 + (r / WTN) * (WTN / 2) + r % (WTN / 2);
            mat = (r % WTN) / (WTN / 2);
        } else {
            n = n0 + r;
        }
        w_ok[i] = n < a.n;
        if (!w_ok[i])
            n = 0;
        const unsigned char *base;
        long long row = n;
        if (MODE == PL_DENSE) {
            int sg = n < a.seg_end[0] ? 0 : n < a.seg_end[1] ? 1 : 2;
            base = (const unsigned char *)a.w[sg];
            row = n - (sg ? a.seg_end[sg - 1] : 0);
        } else {
            base = (const unsigned char *)a.w[mat] + e * a.w_estride;
        }
        wsrc[i] = (const uint16_t *)base + row * K + (c % 4) * 8;
    }

    auto load = [&](int t) {
        const int k0 = (t_begin + t) * BK;
        stage &dst = sm[t % S];
#pragma unroll
        for (int i = 0; i < ACH; i++) {
            int c = tid + i * NT;
            bool ok = a_ok[i] && k0 + (c % 4) * 8 < K;
            copy16(&dst.A[c / (4 * BM)][(c / 4) % BM][(c % 4) * 8], ok ? (const void *)(asrc[i] + k0) : (const void *)a.ap,
                   ok);
        }
#pragma unroll
        for (int i = 0; i < BCH; i++) {
            int c = tid + i * NT;
            bool ok = w_ok[i] && k0 + (c % 4) * 8 < K;
            copy16(&dst.B[c / 4][(c % 4) * 8], ok ? (const void *)(wsrc[i] + k0) : (const void *)a.ap, ok);
        }
    };

    float acc[ACC], part[ACC];
#pragma unroll
    for (int i = 0; i < ACC; i++)
        acc[i] = part[i] = 0.0f;
    const bool mb_on[2] = {m0 + wm * 32 < m_end, m0 + wm * 32 + 16 < m_end};

    /* one k tile's MMAs for the warp's first NMB m16 fragments (k16 step, then term; the
     * first from zero) */
    auto tile_mma = [&](const stage &cur, auto nmb) {
        constexpr int NMB = decltype(nmb)::value;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++) {
            uint32_t b[NJ][2];
#pragma unroll
            for (int nb = 0; nb < NJ / 2; nb++) {
                uint32_t r[4];
                ldsm_x4(r, &cur.B[wn * WTN + nb * 16 + (lane & 7) + ((lane >> 4) << 3)][ks * 16 + ((lane >> 3) & 1) * 8]);
                b[2 * nb][0] = r[0];
                b[2 * nb][1] = r[1];
                b[2 * nb + 1][0] = r[2];
                b[2 * nb + 1][1] = r[3];
            }
#pragma unroll
            for (int q = 0; q < MMA_TERMS; q++)
#pragma unroll
                for (int mb = 0; mb < NMB; mb++) {
                    uint32_t af[4];
                    ldsm_x4(af, &cur.A[q][wm * 32 + mb * 16 + (lane & 15)][ks * 16 + (lane >> 4) * 8]);
#pragma unroll
                    for (int j = 0; j < NJ; j++) {
                        if (ks == 0 && q == 0)
                            mma_16816_z(&part[(mb * NJ + j) * 4], af, b[j][0], b[j][1]);
                        else
                            mma_16816(&part[(mb * NJ + j) * 4], af, b[j][0], b[j][1]);
                    }
                }
        }
    };

    const int ntiles = t_end - t_begin;
#pragma unroll
    for (int t = 0; t < S - 1; t++) {
        if (t < ntiles)
            load(t);
        copy_commit();
    }
    for (int t = 0; t < ntiles; t++) {
        /* tile t has landed (every group is committed, empty ones too); after the barrier no
         * warp still reads the stage of tile t - 1, which tile t + S - 1 refills */
        copy_wait<S - 2>();
        __syncthreads();
        if (t + S - 1 < ntiles)
            load(t + S - 1);
        copy_commit();
        const stage &cur = sm[t % S];
        /* the live m16 fragments are known per block: branch once per k tile, not around
         * every ldmatrix / MMA, so the unrolled tile is straight-line code */
        if (mb_on[1])
            tile_mma(cur, hip_mma_nmb<2>{});
        else if (mb_on[0])
            tile_mma(cur, hip_mma_nmb<1>{});
#pragma unroll
        for (int i = 0; i < ACC; i++)
            acc[i] += part[i];
    }

    if (MODE == PL_GATEUP) {
        /* gate fragment j pairs with up fragment j + NJ / 2: the same rows and columns */
#pragma unroll
        for (int mb = 0; mb < 2; mb++)
#pragma unroll
            for (int j = 0; j < NJ / 2; j++)
#pragma unroll
                for (int hr = 0; hr < 2; hr++) {
                    int p = m0 + wm * 32 + mb * 16 + (lane >> 2) + hr * 8;
                    int n = n0 + wn * (WTN / 2) + j * 8 + (lane & 3) * 2;
                    if (p >= m_end || n >= a.n)
                        continue;
                    const float *g = &acc[(mb * NJ + j) * 4 + hr * 2], *u = &acc[(mb * NJ + j + NJ / 2) * 4 + hr * 2];
                    uint32_t h[2], l[2], l2[2];
#pragma unroll
                    for (int x = 0; x < 2; x++)
                        split3(silu_mul(g[x], u[x]), &h[x], &l[x], &l2[x]);
                    uint16_t *o = a.hp + (long long)p * a.n + n;
                    *(uint32_t *)o = pack_hi(h[0], h[1]);
                    *(uint32_t *)(o + a.hps) = pack_hi(l[0], l[1]);
                    *(uint32_t *)(o + 2 * a.hps) = pack_hi(l2[0], l2[1]);
                }
    } else {
        /* a split-k part goes to its own [m, n] slice of the partials */
        const bool split = MODE == PL_DENSE && a.kparts > 1;
        float *cb = split ? a.part + (long long)blockIdx.z * a.m * a.n : a.c;
        const long long ldc = split ? a.n : a.ldc;
#pragma unroll
        for (int i = 0; i < ACC; i++) {
            /* fragment f = mb * NJ + j, element q: row g (+ 8 for q >= 2), columns 2 tig + (q & 1) */
            int f = i / 4, q = i % 4, mb = f / NJ, j = f % NJ;
            int p = m0 + wm * 32 + mb * 16 + (lane >> 2) + (q >> 1) * 8;
            int n = n0 + wn * WTN + j * 8 + (lane & 3) * 2 + (q & 1);
            if (p < m_end && n < a.n)
                cb[(long long)p * ldc + n] = acc[i];
        }
    }
#else
    (void)a;
#endif
}

/* C = the split-k parts added in part order (part 0 first), one output per thread */
__global__ void __launch_bounds__(256) k_splitk_sum(const float *part, int parts, int m, int n, float *c,
                                                    long long ldc)
{
    moert_pdl_wait();
    const long long mn = (long long)m * n, i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= mn)
        return;
    float v = part[i];
    for (int q = 1; q < parts; q++)
        v += part[q * mn + i];
    c[(i / n) * ldc + i % n] = v;
}

/* ---- host side ----------------------------------------------------------------------- */

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

template <int AM, int BM, int BN>
static bool smem_attr(void)
{
    return hipFuncSetAttribute((const void *)(k_gemm_mma<AM, BM, BN>), hipFuncAttributeMaxDynamicSharedMemorySize,
                               MMA_SMEM_BYTES(BM, BN)) == hipSuccess;
}

bool hip_mma_device(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("MOERT_HIP_GEMM");
        int dev = 0;
        on = 0;
        if (!(v && strcmp(v, "fma") == 0) && hipGetDevice(&dev) == hipSuccess) {
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

/* Once per process: the device's matrix instructions (hip_mma_device) and the kernels'
 * shared-memory allowance (above the default 48 KB). */
static bool mma_enabled(void)
{
    static int on = -1;
    if (on < 0)
        on = hip_mma_device() && smem_attr<HIP_A_PLAIN, 64, MMA_DENSE_BN>() &&
             smem_attr<HIP_A_SWIGLU, 64, MMA_DENSE_BN>() && smem_attr<HIP_A_GATHER, HIP_MOE_BM, MMA_MOE_BN>() &&
             smem_attr<HIP_A_SWIGLU, HIP_MOE_BM, MMA_MOE_BN>();
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
    MOERT_LAUNCH((k_gemm_mma<AM, BM, BN>), grid, (BM / 32) * (BN / 32) * MMA_WARP, MMA_SMEM_BYTES(BM, BN), s,
                 *a);
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

/* ---- host self-test of the activation split (backend.h) ------------------------------ */

static bool split_ok(float v, char *why, size_t cap)
{
    uint32_t h, l, l2;
    split3(v, &h, &l, &l2);
    const char *bad = NULL;
    /* what the MMA sees: the high halves */
    double sum = (double)u2f(h) + (double)u2f(l) + (double)u2f(l2 & 0xffff0000u);
    if (isnan(v)) {
        if (!isnan(u2f(h)) || (h >> 31) != (f2u(v) >> 31) || l != 0 || l2 != 0)
            bad = "NaN not carried by hi alone";
    } else if (isinf(v)) {
        if (h != f2u(v) || l != 0 || l2 != 0)
            bad = "Inf not carried by hi alone";
    } else if (fabs(v) >= 0x1p-103) {
        if ((l2 & 0xffffu) != 0)
            bad = "lo2 is not a bf16 value";
        else if (sum != (double)v)
            bad = "hi + lo + lo2 != v";
    } else if (fabs(sum - (double)v) >= 0x1p-126) {
        bad = "tiny value: hi + lo + lo2 off by 2^-126 or more";
    }
    if (bad)
        snprintf(why, cap, "activation split of %a (bits 0x%08x): %s (terms 0x%08x 0x%08x 0x%08x)", (double)v,
                 f2u(v), bad, h, l, l2);
    return bad == NULL;
}

extern "C" int backend_hip_mma_split_selftest(char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    static const uint32_t edge[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x007fffffu, 0x00800000u,
                                    0x00ffffffu, 0x3f800000u, 0x3fffffffu, 0xbf7fffffu, 0x7f7fffffu,
                                    0xff7fffffu, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                                    0x3f80ffffu, 0x3f808080u, 0x33800001u};
    for (size_t i = 0; i < sizeof edge / sizeof edge[0]; i++)
        if (!split_ok(u2f(edge[i]), why, cap))
            return 1;
    /* random bit patterns over every exponent, and activations' usual range */
    uint64_t z = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 1 << 20; i++) {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        uint32_t u = (uint32_t)(z >> 32);
        if (i & 1)
            u = (u & 0x807fffffu) | ((uint32_t)(112 + (z & 31)) << 23); /* |v| in [2^-15, 2^16) */
        if (!split_ok(u2f(u), why, cap))
            return 1;
    }
    if (pack_hi(0x12340000u, 0xabcd0000u) != 0xabcd1234u) {
        snprintf(why, cap, "pack_hi: 0x%08x, expected 0xabcd1234", pack_hi(0x12340000u, 0xabcd0000u));
        return 1;
    }
    return 0;
}

/* ---- host side of the planes path --------------------------------------------------- */

/* Tile shapes: dense GEMMs wide enough for two waves of 64 x 128 tiles take them (warps of
 * 32 x 64 read a third fewer shared-memory bytes per MMA than 32 x 32), narrower ones
 * (o projection, router) 64 x 64 tiles at 3 blocks per SM; the MoE GEMMs take 32-row tiles
 * (about one expert's rows) of 256 columns.  MOERT_HIP_MMA_DENSE=64|128 forces a dense shape. */
#define PL_DS_BM 64
#define PL_DS_BN 64
#define PL_DS_S 3
#define PL_DB_BM 64
#define PL_DB_BN 128
#define PL_DB_S 4
#define PL_MOE_BN 256
#define PL_MOE_S 4

#define PL_DS PL_DENSE, PL_DS_BM, PL_DS_BN, 32, PL_DS_S, 3
#define PL_DB PL_DENSE, PL_DB_BM, PL_DB_BN, 64, PL_DB_S, 2
#define PL_GR PL_GROUPED, HIP_MOE_BM, PL_MOE_BN, 64, PL_MOE_S, 2
#define PL_GU PL_GATEUP, HIP_MOE_BM, PL_MOE_BN, 64, PL_MOE_S, 2

template <int MODE, int BM, int BN, int WTN, int S, int MINB>
static bool pl_attr(void)
{
    return hipFuncSetAttribute((const void *)(k_gemm_pl<MODE, BM, BN, WTN, S, MINB>),
                               hipFuncAttributeMaxDynamicSharedMemorySize, PL_SMEM_BYTES(BM, BN, S)) == hipSuccess;
}

static int pl_sms = 0, pl_dense_bn = 0; /* 0: by shape */

static bool planes_enabled(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("MOERT_HIP_GEMM");
        on = 0;
#if defined(MOERT_HIP_NVIDIA)
        int dev = 0;
        if (!(v && strcmp(v, "tile") == 0) && mma_enabled() && hipGetDevice(&dev) == hipSuccess &&
            cudaDeviceGetAttribute(&pl_sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
            on = pl_attr<PL_DS>() && pl_attr<PL_DB>() && pl_attr<PL_GR>() && pl_attr<PL_GU>();
        const char *d = getenv("MOERT_HIP_MMA_DENSE");
        if (d && (strcmp(d, "64") == 0 || strcmp(d, "128") == 0))
            pl_dense_bn = atoi(d);
#else
        (void)v;
#endif
    }
    return on == 1;
}

bool hip_mma_planes_takes(int n, int k)
{
    return n > 0 && k > 0 && k % 8 == 0 && n % 8 == 0 && planes_enabled();
}

hipError_t hip_mma_split(const float *a, const float *a2, long long lda, int rows, int k, uint16_t *planes,
                         hipStream_t s)
{
    long long n4 = (long long)rows * (k / 4);
    if (n4 <= 0)
        return hipSuccess;
    unsigned grid = (unsigned)((n4 + 255) / 256);
    if (a2)
        MOERT_LAUNCH((k_mma_split<true>), grid, 256, 0, s, a, a2, lda, (long long)rows, k, planes);
    else
        MOERT_LAUNCH((k_mma_split<false>), grid, 256, 0, s, a, a2, lda, (long long)rows, k, planes);
    return hipGetLastError();
}

template <int MODE, int BM, int BN, int WTN, int S, int MINB>
static hipError_t launch_pl(const hip_mma_args *a, unsigned gx, unsigned gy, unsigned gz, hipStream_t s)
{
    MOERT_LAUNCH((k_gemm_pl<MODE, BM, BN, WTN, S, MINB>), dim3(gx, gy, gz), (BM / 32) * (BN / WTN) * 32,
                 PL_SMEM_BYTES(BM, BN, S), s, *a);
    return hipGetLastError();
}

hipError_t hip_mma_dense(const hip_mma_args *a, hipStream_t s)
{
    if (a->m <= 0 || a->n <= 0)
        return hipSuccess;
    const unsigned parts = a->kparts > 1 ? (unsigned)a->kparts : 1u;
    long long big = (long long)((a->m + PL_DB_BM - 1) / PL_DB_BM) * ((a->n + PL_DB_BN - 1) / PL_DB_BN) * parts;
    bool wide = pl_dense_bn ? pl_dense_bn == 128 : big >= 2LL * 2 * pl_sms; /* two waves of 2 per SM */
    hipError_t e;
    if (wide)
        e = launch_pl<PL_DB>(a, (unsigned)((a->n + PL_DB_BN - 1) / PL_DB_BN),
                             (unsigned)((a->m + PL_DB_BM - 1) / PL_DB_BM), parts, s);
    else
        e = launch_pl<PL_DS>(a, (unsigned)((a->n + PL_DS_BN - 1) / PL_DS_BN),
                             (unsigned)((a->m + PL_DS_BM - 1) / PL_DS_BM), parts, s);
    if (e != hipSuccess || parts == 1)
        return e;
    const long long mn = (long long)a->m * a->n;
    MOERT_LAUNCH(k_splitk_sum, (unsigned)((mn + 255) / 256), 256, 0, s, a->part, (int)parts, a->m, a->n, a->c,
                 a->ldc);
    return hipGetLastError();
}

hipError_t hip_mma_grouped(const hip_mma_args *a, hipStream_t s)
{
    if (a->n <= 0 || a->max_tiles <= 0)
        return hipSuccess;
    return launch_pl<PL_GR>(a, (unsigned)((a->n + PL_MOE_BN - 1) / PL_MOE_BN), (unsigned)a->max_tiles, 1u, s);
}

hipError_t hip_mma_gateup(const hip_mma_args *a, hipStream_t s)
{
    if (a->n <= 0 || a->max_tiles <= 0)
        return hipSuccess;
    return launch_pl<PL_GU>(a, (unsigned)((a->n + PL_MOE_BN / 2 - 1) / (PL_MOE_BN / 2)), (unsigned)a->max_tiles, 1u, s);
}

/* ---- the GPU test's entry: one dense planes GEMM over host data (backend.h) ----------- */

extern "C" int backend_hip_mma_dense_run(int m, int n, int k, const float *a, const uint16_t *w, int kparts,
                                         float *out, char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    int count = 0;
    if (hipGetDeviceCount(&count) != hipSuccess || count == 0) {
        snprintf(why, cap, "no GPU");
        return -2;
    }
    if (!hip_mma_planes_takes(n, k)) {
        snprintf(why, cap, "the tensor-core planes GEMM does not run on this device (or n %d, k %d)", n, k);
        return -2;
    }
    const size_t a_bytes = sizeof(float) * (size_t)m * (size_t)k, w_bytes = sizeof(uint16_t) * (size_t)n * (size_t)k;
    const size_t c_bytes = sizeof(float) * (size_t)m * (size_t)n, pl_bytes = HIP_PLANE_BYTES * (size_t)m * (size_t)k;
    const size_t part_bytes = c_bytes * (size_t)(kparts > 1 ? kparts : 1);
    void *d_a = NULL, *d_w = NULL, *d_c = NULL, *d_pl = NULL, *d_part = NULL;
    int rc = 1;
    hipError_t e = hipSuccess;
    hip_mma_args g;
    memset(&g, 0, sizeof g);
#define MD_TRY(x)                                                                                                  \
    do {                                                                                                           \
        if ((e = (x)) != hipSuccess)                                                                               \
            goto out;                                                                                              \
    } while (0)
    MD_TRY(hipMalloc(&d_a, a_bytes));
    MD_TRY(hipMalloc(&d_w, w_bytes));
    MD_TRY(hipMalloc(&d_c, c_bytes));
    MD_TRY(hipMalloc(&d_pl, pl_bytes));
    MD_TRY(hipMalloc(&d_part, part_bytes));
    MD_TRY(hipMemcpy(d_a, a, a_bytes, hipMemcpyHostToDevice));
    MD_TRY(hipMemcpy(d_w, w, w_bytes, hipMemcpyHostToDevice));
    MD_TRY(hipMemset(d_c, 0xff, c_bytes)); /* NaN: an output never written shows */
    MD_TRY(hipMemset(d_part, 0xff, part_bytes));
    g.ap = (const uint16_t *)d_pl;
    g.ps = (long long)m * k;
    g.w[0] = d_w;
    g.seg_end[0] = n;
    g.seg_end[1] = g.seg_end[2] = LLONG_MAX;
    g.c = (float *)d_c;
    g.ldc = n;
    g.m = m;
    g.n = n;
    g.k = k;
    g.kparts = kparts;
    g.part = (float *)d_part;
    MD_TRY(hip_mma_split((const float *)d_a, NULL, k, m, k, (uint16_t *)d_pl, 0));
    MD_TRY(hip_mma_dense(&g, 0));
    MD_TRY(hipDeviceSynchronize());
    MD_TRY(hipMemcpy(out, d_c, c_bytes, hipMemcpyDeviceToHost));
    rc = 0;
out:
#undef MD_TRY
    if (e != hipSuccess)
        snprintf(why, cap, "planes GEMM on the GPU: %s", hipGetErrorString(e));
    void *bufs[] = {d_a, d_w, d_c, d_pl, d_part};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i] && hipFree(bufs[i]) != hipSuccess && rc == 0)
            rc = 1;
    return rc;
}
