/* gemm_qmma: the act-q8 prefill GEMM on int8 tensor cores (hip_gemm_qmma.h says what it
 * promises).
 *
 * Block tile BM x BN, k tiles of 256 (one K-quant super-block, eight 32-blocks); warps own
 * 32 x QM_WT outputs.  Per k tile: the activation quants (int8, 256 bytes a row) and scales
 * are copied into shared memory; the weight rows' block bytes of the tile (contiguous in
 * every type, only 2-byte aligned for Q8_0 / Q6_K / Q4_0 / Q5_0) are copied as the aligned
 * 16-byte chunks that cover them, then unpacked by word operations into int8 operand rows
 * (hip_qunpack.h) and their scales; then the
 * MMA products of each 32 (Q6_K: 16) and the float combine of hip_gemm_qmma.h.
 * Dense: 64 x 64 tiles; grouped (MoE): HIP_MOE_BM x 128 tiles, one per tile-table entry.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_kernels.h"
#include "hip_wload.h"
#include "hip_devmath.h"
#include "hip_gemm_mma.h"
#include "hip_qunpack.h"
#include "hip_gemm_qmma.h"
extern "C" {
#include "../ops/ops.h"
#include "../ops/ops_impl.h"
#include "../runtime/backend.h"
}

static_assert((int)HIP_DT_Q4_0 == (int)OPS_Q4_0 && (int)HIP_DT_Q5_0 == (int)OPS_Q5_0 &&
                  (int)HIP_DT_Q8_0 == (int)OPS_Q8_0 && (int)HIP_DT_Q4_K == (int)OPS_Q4_K &&
                  (int)HIP_DT_Q5_K == (int)OPS_Q5_K && (int)HIP_DT_Q6_K == (int)OPS_Q6_K,
              "hip_qunpack.h takes ops_dtype values");

#if defined(MOERT_HIP_AMD)
#define QM_WARP 64
#else
#define QM_WARP 32
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define QM_NV 1
#elif defined(__gfx90a__)
#define QM_AMD 1
#elif defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
#define QM_AMD 1
#define QM_AMD_K32 1 /* gfx94x has the 16x16x32 i8 MFMA, not the 16x16x16 one */
#endif

#define QM_BK 256             /* k per tile */
#define QM_LDQ (QM_BK + 16)   /* bytes per int8 operand row: 68 words, conflict-free reads */
#define QM_DENSE_BN 64
#define QM_MOE_BN 128
/* warps own 32 x QM_WT outputs: 8 warps a block, and registers cut so that QM_MINB blocks fit
 * an SM (16 warps: the products' dependent chains need them to keep the SM issuing) */
#define QM_WT 16
#define QM_MINB 2

#define DEV static __device__ __forceinline__

/* Per block type: elements and bytes of a block (Q6_KX4: of a block's bytes but its scale,
 * which the group holds apart), bytes of a row's k tile, the 16-byte chunks that hold those
 * bytes from any even offset within a chunk, and the u32 words of a raw row (the chunks;
 * cp.async 16 wants 16-byte aligned rows).  A tile of Q8_0X4 is two whole groups (k % 128 ==
 * 0), unpacked a group (ue elements, ub bytes) at a time; one of Q6_KX4 is one block. */
template <int DT> struct qm_t {
    static constexpr int base = dt_base<DT>::v;
    static constexpr int be = base >= HIP_DT_Q4_K ? 256 : 32;
    static constexpr int bb = base == HIP_DT_Q4_0 ? 18 : base == HIP_DT_Q5_0 ? 22 : base == HIP_DT_Q8_0 ? 34
                            : base == HIP_DT_Q4_K ? 144 : base == HIP_DT_Q5_K ? 176 : DT == HIP_DT_Q6_KX4 ? 208 : 210;
    static constexpr int tb = QM_BK / be * bb;
    static constexpr int ue = DT == HIP_DT_Q8_0X4 ? 128 : be, ub = DT == HIP_DT_Q8_0X4 ? dt_layout<DT>::bb : bb;
    static constexpr int rc = (tb + 14 + 15) / 16;
    static constexpr int rw = 4 * rc;
    static constexpr bool kq = base >= HIP_DT_Q4_K;
    /* the unpack's type (hip_qunpack.h): a Q6_KX4 tile's bytes are a Q6_K block's but d */
    static constexpr int ut = DT == HIP_DT_Q6_KX4 ? HIP_DT_Q6_K : DT;
    /* where k tile t's bytes start in a row */
    static __host__ __device__ long long tile_off(int t)
    {
        return DT == HIP_DT_Q6_KX4 ? (long long)(t / 4) * dt_layout<DT>::bb + 8 + (t % 4) * bb : (long long)t * tb;
    }
    /* the f16 scale of 32-block j of a tile, from the tile's first byte (32-block types) */
    static __device__ int d32_off(int j) { return DT == HIP_DT_Q8_0X4 ? (j >> 2) * dt_layout<DT>::bb + 2 * (j & 3) : j * bb; }
};

/* dynamic shared memory of k_qgemm<DT, BM, BN>: two stages of the A side (quants, and per
 * row 16 words of scales: 32-blocks d[8]; K-quants d at word 0, the bs16 sums at words 8-15),
 * one of the W side (block bytes, operands, scales) */
template <int DT, int BM, int BN> struct qm_smem {
    static constexpr size_t aq = (size_t)BM * QM_LDQ, asc = (size_t)BM * 16 * 4;
    static constexpr size_t astage = aq + asc;
    static constexpr size_t wq = (size_t)BN * QM_LDQ;
    static constexpr size_t raw = (size_t)BN * qm_t<DT>::rw * 4;
    static constexpr size_t wd = (size_t)BN * 8 * 4, wsc = (size_t)BN * 16 * 4;
    /* + 16: hip_qu_ld32 reads one word past the last row's bytes */
    static constexpr size_t bytes = 2 * astage + wq + raw + wd + wsc + 16;
};

/* Global -> shared without registers: cp.async on NVIDIA (4 or 16 bytes of which src_bytes
 * are read, the rest zero), a plain load and store elsewhere. */
#if defined(QM_NV)
DEV void cp4(void *sdst, const void *gsrc, int src_bytes)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(sa), "l"(gsrc), "r"(src_bytes) : "memory");
}
DEV void cp16(void *sdst, const void *gsrc, int src_bytes)
{
    unsigned sa = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(sa), "l"(gsrc), "r"(src_bytes)
                 : "memory");
}
DEV void cp_wait_all(void)
{
    asm volatile("cp.async.wait_all;" ::: "memory");
}
#elif defined(QM_AMD)
DEV void cp4(void *sdst, const void *gsrc, int src_bytes)
{
    *(uint32_t *)sdst = src_bytes == 4 ? *(const uint32_t *)gsrc
                        : src_bytes == 2 ? (uint32_t) * (const uint16_t *)gsrc
                                         : 0u;
}
DEV void cp16(void *sdst, const void *gsrc, int src_bytes)
{
    if (src_bytes == 16) {
        *(uint4 *)sdst = *(const uint4 *)gsrc;
        return;
    }
    for (int i = 0; i < 16; i++)
        ((uint8_t *)sdst)[i] = i < src_bytes ? ((const uint8_t *)gsrc)[i] : 0;
}
DEV void cp_wait_all(void) {}
#endif

/* the layout of an A row (ops_qact_at), as byte offsets from the row start */
struct qm_aoff {
    long long q, d, bs;
};

struct qm_params {
    hip_qgemm_args a;
    qm_aoff off;
    long long wrb; /* bytes of a weight row */
};

#if defined(QM_NV)
/* warp tile 32 x WT: 2 m16 x WT / 8 n8 fragments of 4 int32; fragment f = mb * nb + n8 */
template <int WT> struct qm_acc {
    static constexpr int nb = WT / 8, n = 2 * nb * 4;
};
template <int WT> DEV int acc_row(int i, int lane)
{
    return (i / (4 * qm_acc<WT>::nb)) * 16 + (lane >> 2) + ((i % 4) >> 1) * 8;
}
template <int WT> DEV int acc_col(int i, int lane)
{
    return (i / 4 % qm_acc<WT>::nb) * 8 + (lane & 3) * 2 + (i & 1);
}
DEV void mma_k32(int c[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1, int c0)
{
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(c0));
}
DEV void mma_k16(int c[4], uint32_t a0, uint32_t a1, uint32_t b0, int c0)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 "
                 "{%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(c0));
}
/* s = c0 + the integer products of the warp's 32 x WT tile over k [ks, ks + KS), KS 32 or 16
 * (an empty m16 half: c0 alone) */
template <int KS, int WT, int NMB>
DEV void warp_products(int *s, const uint8_t *Aq, const uint8_t *Wq, int wm, int wn, int ks, int lane, int c0)
{
    constexpr int NB = qm_acc<WT>::nb;
    const int g = lane >> 2, t4 = (lane & 3) * 4;
    uint32_t b[NB][2];
#pragma unroll
    for (int nb = 0; nb < NB; nb++) {
        const uint8_t *r = Wq + (size_t)(wn * WT + nb * 8 + g) * QM_LDQ + ks + t4;
        b[nb][0] = *(const uint32_t *)r;
        b[nb][1] = KS == 32 ? *(const uint32_t *)(r + 16) : 0u;
    }
#pragma unroll
    for (int mb = 0; mb < 2; mb++) {
        if (mb >= NMB) {
#pragma unroll
            for (int i = 0; i < 4 * NB; i++)
                s[mb * 4 * NB + i] = c0;
            continue;
        }
        const uint8_t *r0 = Aq + (size_t)(wm * 32 + mb * 16 + g) * QM_LDQ + ks + t4, *r1 = r0 + 8 * QM_LDQ;
        uint32_t a0 = *(const uint32_t *)r0, a1 = *(const uint32_t *)r1;
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            if (KS == 32)
                mma_k32(&s[(mb * NB + nb) * 4], a0, a1, *(const uint32_t *)(r0 + 16), *(const uint32_t *)(r1 + 16),
                        b[nb][0], b[nb][1], c0);
            else
                mma_k16(&s[(mb * NB + nb) * 4], a0, a1, b[nb][0], c0);
        }
    }
}
#elif defined(QM_AMD)
/* wave tile 32 x WT: 2 x WT / 16 16 x 16 fragments of 4 int32; fragment f = mb * nb + n16,
 * element q: row 4 (lane / 16) + q, column lane % 16 */
typedef int qm_i4 __attribute__((ext_vector_type(4)));
template <int WT> struct qm_acc {
    static constexpr int nb = WT / 16, n = 2 * nb * 4;
};
template <int WT> DEV int acc_row(int i, int lane)
{
    return (i / (4 * qm_acc<WT>::nb)) * 16 + (lane >> 4) * 4 + (i % 4);
}
template <int WT> DEV int acc_col(int i, int lane)
{
    return (i / 4 % qm_acc<WT>::nb) * 16 + (lane & 15);
}
template <int KS, int WT, int NMB>
DEV void warp_products(int *s, const uint8_t *Aq, const uint8_t *Wq, int wm, int wn, int ks, int lane, int c0)
{
    constexpr int NB = qm_acc<WT>::nb;
#pragma unroll
    for (int mb = 0; mb < 2; mb++)
#pragma unroll
        for (int nb = 0; nb < NB; nb++) {
            int *pp = &s[(mb * NB + nb) * 4];
            qm_i4 cv = {c0, c0, c0, c0};
            if (mb < NMB) {
                const uint8_t *ar = Aq + (size_t)(wm * 32 + mb * 16 + (lane & 15)) * QM_LDQ + ks;
                const uint8_t *br = Wq + (size_t)(wn * WT + nb * 16 + (lane & 15)) * QM_LDQ + ks;
#if defined(QM_AMD_K32)
                /* lane holds k (lane / 16) * 8 .. + 7 of 32; a k16 step leaves the upper half zero */
                int kk = (lane >> 4) * 8;
                long av = 0, bv = 0;
                if (kk < KS) {
                    av = *(const long *)(ar + kk);
                    bv = *(const long *)(br + kk);
                }
                cv = __builtin_amdgcn_mfma_i32_16x16x32_i8(av, bv, cv, 0, 0, 0);
#else
                /* lane holds k (lane / 16) * 4 .. + 3 of each 16 */
#pragma unroll
                for (int h = 0; h < KS / 16; h++) {
                    int av = *(const int *)(ar + 16 * h + (lane >> 4) * 4);
                    int bv = *(const int *)(br + 16 * h + (lane >> 4) * 4);
                    cv = __builtin_amdgcn_mfma_i32_16x16x16i8(av, bv, cv, 0, 0, 0);
                }
#endif
            }
            pp[0] = cv[0];
            pp[1] = cv[1];
            pp[2] = cv[2];
            pp[3] = cv[3];
        }
}
#endif

#if defined(QM_NV) || defined(QM_AMD)
/* a + b rounded once (wl_mul, wl_sub: hip_wload.h); fmaf is one rounding by definition */
DEV float qm_add(float a, float b)
{
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    MOERT_NO_CONTRACT
    return a + b;
#endif
}
/* The 32-blocks' products start from QM_MAGIC (1.5 * 2^23 as a float's bits): the MMA then
 * leaves the bits of the float 1.5 * 2^23 + i for the block's integer sum i (|i| <= 32 * 128
 * * 127 < 2^22, so it stays in the binade where floats are the integers), and one exact
 * subtraction gives (float)i: an FP32 add where I2F runs at a quarter of its rate. */
#define QM_MAGIC 0x4B400000
DEV float qm_i2f(int bits)
{
    return wl_sub(__int_as_float(bits), 12582912.0f);
}
#endif

template <int DT, int BM, int BN, int WT>
__global__ void __launch_bounds__((BM / 32) * (BN / WT) * QM_WARP, QM_MINB) k_qgemm(qm_params P)
{
    moert_pdl_wait();
#if defined(QM_NV) || defined(QM_AMD)
    typedef qm_t<DT> L;
    typedef qm_smem<DT, BM, BN> S;
    constexpr int WN = BN / WT, NT = (BM / 32) * WN * QM_WARP, NACC = qm_acc<WT>::n;
    constexpr int ACH = BM * 16 / NT; /* A items per thread per k tile */
    static_assert(ACH >= 1 && ACH * NT == BM * 16, "k_qgemm: tile / thread split");
    extern __shared__ __align__(16) unsigned char qm_smem_buf[];
    uint8_t *Wq = qm_smem_buf + 2 * S::astage;
    uint32_t *raw = (uint32_t *)(Wq + S::wq);
    float *wd = (float *)((unsigned char *)raw + S::raw);
    int *wsc = (int *)((unsigned char *)wd + S::wd);

    const hip_qgemm_args &a = P.a;
    const int tid = threadIdx.x, lane = tid % QM_WARP, warp = tid / QM_WARP;
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
    const int K = a.k, nblk = K / L::be; /* blocks of a row */
    const uint8_t *wbase = (const uint8_t *)a.w + e * a.w_estride;
    /* A item i of a k tile (quants: 16-byte chunk, scales: word): row (tid + i NT) / 16,
     * (tid + i NT) % 16; the rows' addresses looked up once */
    const uint8_t *a_row[ACH];
#pragma unroll
    for (int i = 0; i < ACH; i++) {
        int p = m0 + (tid + i * NT) / 16;
        long long r = p < m_end ? (a.gather ? (long long)(a.gather[p] / a.gdiv) : (long long)p) : -1;
        a_row[i] = r >= 0 ? (const uint8_t *)a.a + r * a.a_stride : NULL;
    }
    const bool mb_on[2] = {m0 + wm * 32 < m_end, m0 + wm * 32 + 16 < m_end};
    const int ntiles = (K + QM_BK - 1) / QM_BK;
    auto tile_blocks = [&](int t) { return min(QM_BK / L::be, nblk - t * (QM_BK / L::be)); };
    /* the k tile's first byte of weight row r of the block tile, from a 16-byte boundary
     * (w is 16-byte aligned; mod 16 survives the 32-bit wrap) */
    auto w_shift = [&](int r, int t) {
        return (int)(((unsigned)(n0 + r) * (unsigned)P.wrb + (unsigned)L::tile_off(t)) & 15u);
    };

    /* A side of tile t into stage t % 2: quants and scales */
    auto copy_a = [&](int t) {
        uint8_t *Aq = qm_smem_buf + (t & 1) * S::astage;
        uint32_t *asc = (uint32_t *)(Aq + S::aq);
        const int k0 = t * QM_BK, tblk = tile_blocks(t);
#pragma unroll
        for (int i = 0; i < ACH; i++) {
            int c = tid + i * NT, r = c / 16, j = c % 16;
            const uint8_t *ar = a_row[i];
            bool ok = ar && k0 + 16 * j < K;
            cp16(Aq + (size_t)r * QM_LDQ + 16 * j, ok ? ar + P.off.q + k0 + 16 * j : a.a, ok ? 16 : 0);
            const uint8_t *src = NULL;
            if (ar && !L::kq && j < tblk)
                src = ar + P.off.d + 4 * (t * 8 + j);
            else if (ar && L::kq && j == 0)
                src = ar + P.off.d + 4 * t;
            else if (ar && L::kq && j >= 8)
                src = ar + P.off.bs + 32 * t + 4 * (j - 8);
            cp4(asc + c, src ? src : a.a, src ? 4 : 0);
        }
    };
    /* W block bytes of tile t: the aligned 16-byte chunks that cover them, the last one of a
     * row cut at the row's tile end (nothing past it is read; the rest zero-filled) */
    auto copy_w = [&](int t) {
        const int tbytes = tile_blocks(t) * L::bb;
#pragma unroll 2
        for (int c = tid; c < BN * L::rc; c += NT) {
            int r = c / L::rc, ci = c % L::rc, n = n0 + r;
            int sh = w_shift(r, t), nb = 0;
            const uint8_t *al = wbase + (long long)n * P.wrb + L::tile_off(t) - sh + 16 * ci;
            if (n < a.n)
                nb = max(0, min(16, sh + tbytes - 16 * ci));
            cp16(raw + 4 * c, nb ? (const void *)al : a.w, nb);
        }
    };

    float acc[NACC];
    int isum[NACC], s[NACC];
#pragma unroll
    for (int i = 0; i < NACC; i++)
        acc[i] = 0.0f;

    /* Iteration t: W bytes of t unpacked, barrier, A of t + 1 and W bytes of t + 1 on their
     * way (the raw buffer is free once unpacked; A goes to the other stage), products of t,
     * wait, barrier. */
    copy_a(0);
    copy_w(0);
    cp_wait_all();
    __syncthreads();
    for (int t = 0; t < ntiles; t++) {
        const int tblk = tile_blocks(t);
        const uint8_t *Aq = qm_smem_buf + (t & 1) * S::astage;
        const float *asf = (const float *)(Aq + S::aq);
        const int16_t *asb = (const int16_t *)(Aq + S::aq);
        /* ---- unpack: int8 operand rows and the weight scales */
        {
            /* a thread keeps its word of the row (elements el .. el + 3) over rows */
            static_assert(NT % (QM_BK / 4) == 0, "k_qgemm: unpack split");
            const int el = (tid % (QM_BK / 4)) * 4, bi = el / L::ue, ee = el % L::ue;
            const bool bok = el / L::be < tblk;
#pragma unroll 4
            for (int r = tid / (QM_BK / 4); r < BN; r += NT / (QM_BK / 4)) {
                uint32_t v = 0u;
                if (bok && n0 + r < a.n)
                    v = hip_qu_pack4(raw + (size_t)r * L::rw, w_shift(r, t) + bi * L::ub, L::ut, ee);
                *(uint32_t *)(Wq + (size_t)r * QM_LDQ + el) = v;
            }
        }
        constexpr int NSC = L::base == HIP_DT_Q6_K ? 16 : 8;
        for (int c = tid; c < BN * NSC; c += NT) {
            int r = c / NSC, j = c % NSC, n = n0 + r;
            const uint8_t *rb = (const uint8_t *)(raw + (size_t)r * L::rw) + w_shift(r, t);
            bool ok = n < a.n;
            if (!L::kq) {
                wd[r * 8 + j] = ok && j < tblk ? scale_f16(rd16(rb + L::d32_off(j))) : 0.0f;
            } else if (L::base == HIP_DT_Q6_K) {
                wsc[r * 16 + j] = ok ? hip_qu_q6scale(rb, j) : 0;
                /* Q6_KX4: d from the group's head in global memory (outside the tile's bytes) */
                const uint8_t *dp = DT == HIP_DT_Q6_KX4 ? wbase + (long long)n * P.wrb + (long long)(t / 4) * dt_layout<DT>::bb + 2 * (t % 4)
                                                         : rb + HIP_QU_D_OFF(DT);
                if (j == 0)
                    wd[r * 8] = ok ? scale_f16(rd16(dp)) : 0.0f;
            } else {
                int sc = 0, mn = 0;
                if (ok)
                    hip_qu_kscale(rb, j, &sc, &mn);
                wsc[r * 16 + j] = sc;
                wsc[r * 16 + 8 + j] = mn;
                if (j == 0) {
                    wd[r * 8] = ok ? scale_f16(rd16(rb)) : 0.0f;
                    wd[r * 8 + 1] = ok ? scale_f16(rd16(rb + HIP_QU_DMIN_OFF)) : 0.0f;
                }
            }
        }
        __syncthreads();
        if (t + 1 < ntiles) {
            copy_a(t + 1);
            copy_w(t + 1);
        }
        /* ---- products and the float combine (hip_gemm_qmma.h's order) */
        const float *adw = asf + (size_t)wm * 32 * 16;
        const int16_t *absw = asb + (size_t)wm * 32 * 32 + 16; /* the bs16 words 8-15 of a row */
        const float *wdw = wd + (size_t)wn * WT * 8;
        const int *wscw = wsc + (size_t)wn * WT * 16;
        /* the warp's live m16 fragments are a per-block fact: one branch here, straight-line
         * products below */
        auto products = [&](auto nmb) {
            constexpr int NMB = decltype(nmb)::value;
            if (!L::kq) {
                for (int j = 0; j < tblk; j++) {
                    warp_products<32, WT, NMB>(s, Aq, Wq, wm, wn, 32 * j, lane, QM_MAGIC);
#pragma unroll
                    for (int i = 0; i < NACC; i++) {
                        float sc = wl_mul(wdw[acc_col<WT>(i, lane) * 8 + j], adw[acc_row<WT>(i, lane) * 16 + j]);
                        acc[i] = fmaf(qm_i2f(s[i]), sc, acc[i]);
                    }
                }
            } else {
#pragma unroll
                for (int i = 0; i < NACC; i++)
                    isum[i] = 0;
                if (L::base == HIP_DT_Q6_K) {
#pragma unroll 2
                    for (int j = 0; j < 16; j++) {
                        warp_products<16, WT, NMB>(s, Aq, Wq, wm, wn, 16 * j, lane, 0);
#pragma unroll
                        for (int i = 0; i < NACC; i++)
                            isum[i] += wscw[acc_col<WT>(i, lane) * 16 + j] * s[i];
                    }
#pragma unroll
                    for (int i = 0; i < NACC; i++) {
                        float ds = wl_mul(wdw[acc_col<WT>(i, lane) * 8], adw[acc_row<WT>(i, lane) * 16]);
                        acc[i] = qm_add(acc[i], wl_mul(ds, (float)isum[i]));
                    }
                } else {
#pragma unroll 2
                    for (int j = 0; j < 8; j++) {
                        warp_products<32, WT, NMB>(s, Aq, Wq, wm, wn, 32 * j, lane, 0);
#pragma unroll
                        for (int i = 0; i < NACC; i++)
                            isum[i] += wscw[acc_col<WT>(i, lane) * 16 + j] * s[i];
                    }
#pragma unroll
                    for (int i = 0; i < NACC; i++) {
                        const int *mn = wscw + acc_col<WT>(i, lane) * 16 + 8;
                        const int16_t *bs = absw + acc_row<WT>(i, lane) * 32;
                        int imin = 0;
#pragma unroll
                        for (int j = 0; j < 8; j++)
                            imin += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
                        float da = adw[acc_row<WT>(i, lane) * 16];
                        float ds = wl_mul(wdw[acc_col<WT>(i, lane) * 8], da), dm = wl_mul(wdw[acc_col<WT>(i, lane) * 8 + 1], da);
                        acc[i] = qm_add(acc[i], wl_sub(wl_mul(ds, (float)isum[i]), wl_mul(dm, (float)imin)));
                    }
                }
            }
        };
        if (mb_on[1])
            products(hip_mma_nmb<2>{});
        else if (mb_on[0])
            products(hip_mma_nmb<1>{});
        else
            products(hip_mma_nmb<0>{});
        cp_wait_all();
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < NACC; i++) {
        int p = m0 + wm * 32 + acc_row<WT>(i, lane), n = n0 + wn * WT + acc_col<WT>(i, lane);
        if (p < m_end && n < a.n)
            a.c[(long long)p * a.ldc + n] = acc[i];
    }
#else
    (void)P;
#endif
}

/* ---- host side ----------------------------------------------------------------------- */

template <int DT, int BM, int BN>
static bool smem_attr(void)
{
    return hipFuncSetAttribute((const void *)(k_qgemm<DT, BM, BN, QM_WT>), hipFuncAttributeMaxDynamicSharedMemorySize,
                               (int)(qm_smem<DT, BM, BN>::bytes)) == hipSuccess;
}
template <int DT>
static bool smem_attr_dt(void)
{
    return smem_attr<DT, 64, QM_DENSE_BN>() && smem_attr<DT, HIP_MOE_BM, QM_MOE_BN>();
}

/* Once per process: the device's matrix instructions (hip_mma_device: MOERT_HIP_GEMM=fma
 * sends act-q8 prefill to the quantized GEMVs row by row, hip_qact.h) and the kernels'
 * shared-memory allowance. */
static bool qmma_enabled(void)
{
    static int on = -1;
    if (on < 0)
        on = hip_mma_device() && smem_attr_dt<HIP_DT_Q4_0>() && smem_attr_dt<HIP_DT_Q5_0>() &&
             smem_attr_dt<HIP_DT_Q8_0>() && smem_attr_dt<HIP_DT_Q4_K>() && smem_attr_dt<HIP_DT_Q5_K>() &&
             smem_attr_dt<HIP_DT_Q6_K>() && smem_attr_dt<HIP_DT_Q8_0X4>() && smem_attr_dt<HIP_DT_Q6_KX4>();
    return on == 1;
}

bool hip_qgemm_takes(int dt, const hip_qgemm_args *a)
{
    if (dt < HIP_DT_Q4_0 || dt >= HIP_DT_COUNT || a->k <= 0)
        return false;
    int64_t be = hip_dt_base(dt) >= HIP_DT_Q4_K ? 256 : 32;
    if (a->k % be != 0 || (dt != hip_dt_base(dt) && hip_dt_device(hip_dt_base(dt), a->k) != dt) || a->a_stride % 16 != 0 || ((uintptr_t)a->a & 15u) != 0 || ((uintptr_t)a->w & 15u) != 0 ||
        (a->tiles && a->w_estride % 16 != 0) || (long long)ops_qact_row_bytes(a->k) > a->a_stride)
        return false;
    return qmma_enabled();
}

template <int DT, int BM, int BN>
static void launch_q(const qm_params *P, hipStream_t s)
{
    const hip_qgemm_args *a = &P->a;
    dim3 grid((unsigned)((a->n + BN - 1) / BN), (unsigned)(a->tiles ? a->max_tiles : (a->m + BM - 1) / BM));
    MOERT_LAUNCH((k_qgemm<DT, BM, BN, QM_WT>), grid, (BM / 32) * (BN / QM_WT) * QM_WARP, (qm_smem<DT, BM, BN>::bytes), s,
                 *P);
}
template <int DT>
static void launch_dt(const qm_params *P, hipStream_t s)
{
    if (P->a.tiles)
        launch_q<DT, HIP_MOE_BM, QM_MOE_BN>(P, s);
    else
        launch_q<DT, 64, QM_DENSE_BN>(P, s);
}

hipError_t hip_launch_qgemm(int dt, const hip_qgemm_args *a, hipStream_t s)
{
    if (a->n <= 0 || (!a->tiles && a->m <= 0))
        return hipSuccess;
    qm_params P;
    P.a = *a;
    /* the row layout from its one definition; a is a device address, only offsets are taken */
    ops_qact_view v = ops_qact_at(a->a, a->k);
    const uint8_t *base = (const uint8_t *)a->a;
    bool kq = hip_dt_base(dt) >= HIP_DT_Q4_K;
    P.off.q = (const uint8_t *)(kq ? v.q256 : v.q32) - base;
    P.off.d = (const uint8_t *)(kq ? v.d256 : v.d32) - base;
    P.off.bs = (const uint8_t *)v.bs16 - base;
    P.wrb = (long long)ops_row_bytes((ops_dtype)hip_dt_base(dt), a->k);
    switch (dt) {
    case HIP_DT_Q4_0: launch_dt<HIP_DT_Q4_0>(&P, s); break;
    case HIP_DT_Q5_0: launch_dt<HIP_DT_Q5_0>(&P, s); break;
    case HIP_DT_Q8_0: launch_dt<HIP_DT_Q8_0>(&P, s); break;
    case HIP_DT_Q4_K: launch_dt<HIP_DT_Q4_K>(&P, s); break;
    case HIP_DT_Q5_K: launch_dt<HIP_DT_Q5_K>(&P, s); break;
    case HIP_DT_Q6_K: launch_dt<HIP_DT_Q6_K>(&P, s); break;
    case HIP_DT_Q8_0X4: launch_dt<HIP_DT_Q8_0X4>(&P, s); break;
    case HIP_DT_Q6_KX4: launch_dt<HIP_DT_Q6_KX4>(&P, s); break;
    default: return hipErrorInvalidValue;
    }
    return hipGetLastError();
}

/* ---- h = silu(g) * u, the grouped down's input before it is quantized ---------------- */

__global__ void k_qmma_swiglu(const float *g, const float *u, float *h, long long n)
{
    moert_pdl_wait();
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        h[i] = silu_mul(g[i], u[i]);
}

hipError_t hip_launch_qmma_swiglu(const float *g, const float *u, float *h, long long n, hipStream_t s)
{
    if (n <= 0)
        return hipSuccess;
    long long blocks = (n + 255) / 256;
    MOERT_LAUNCH(k_qmma_swiglu, (unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, s, g, u, h, n);
    return hipGetLastError();
}

/* ---- one GEMM over host data, for the GPU test (backend.h) ---------------------------- */

extern "C" int backend_hip_qgemm_run(int dt, const void *qa, int n_arows, const void *w, int n_exp, int n, int k,
                                     const int32_t *tiles, int n_tiles, const int32_t *gather, int gdiv, int m,
                                     float *out, char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    int count = 0;
    if (hipGetDeviceCount(&count) != hipSuccess || count == 0) {
        snprintf(why, cap, "no GPU");
        return -2;
    }
    size_t arb = ops_qact_row_bytes(k), wrb = ops_row_bytes((ops_dtype)dt, k);
    size_t a_bytes = arb * (size_t)n_arows, w_bytes = wrb * (size_t)n * (size_t)n_exp;
    size_t c_bytes = sizeof(float) * (size_t)m * (size_t)n;
    size_t t_bytes = tiles ? sizeof(int32_t) * (size_t)(1 + 3 * n_tiles) : 0, g_bytes = tiles ? sizeof(int32_t) * (size_t)m : 0;
    void *d_a = NULL, *d_w = NULL, *d_c = NULL, *d_t = NULL, *d_g = NULL;
    int rc = 1;
    hipError_t e = hipSuccess;
    hip_qgemm_args a;
    memset(&a, 0, sizeof a);
    /* the device layout the backend's upload gives such rows (an X4 regrouping where k allows) */
    const int ddt = hip_dt_device(dt, k), gb = hip_dt_x4_group_bytes(ddt);
    unsigned char *wx = NULL;
    if (gb) {
        if (!(wx = (unsigned char *)malloc(w_bytes))) {
            snprintf(why, cap, "out of memory");
            return 1;
        }
        hip_dt_x4_pack(ddt, wx, (const unsigned char *)w, w_bytes);
        w = wx;
    }
#define QM_TRY(x)                                                                                                  \
    do {                                                                                                           \
        if ((e = (x)) != hipSuccess)                                                                               \
            goto out;                                                                                              \
    } while (0)
    QM_TRY(hipMalloc(&d_a, a_bytes));
    QM_TRY(hipMalloc(&d_w, w_bytes));
    QM_TRY(hipMalloc(&d_c, c_bytes));
    QM_TRY(hipMemcpy(d_a, qa, a_bytes, hipMemcpyHostToDevice));
    QM_TRY(hipMemcpy(d_w, w, w_bytes, hipMemcpyHostToDevice));
    QM_TRY(hipMemset(d_c, 0xff, c_bytes)); /* NaN: an output never written shows */
    if (tiles) {
        QM_TRY(hipMalloc(&d_t, t_bytes));
        QM_TRY(hipMalloc(&d_g, g_bytes));
        QM_TRY(hipMemcpy(d_t, tiles, t_bytes, hipMemcpyHostToDevice));
        QM_TRY(hipMemcpy(d_g, gather, g_bytes, hipMemcpyHostToDevice));
    }
    a.a = d_a;
    a.a_stride = (long long)arb;
    a.gather = (const int32_t *)d_g;
    a.gdiv = gdiv;
    a.w = d_w;
    a.w_estride = (long long)(wrb * (size_t)n);
    a.c = (float *)d_c;
    a.ldc = n;
    a.m = m;
    a.n = n;
    a.k = k;
    a.tiles = (const int32_t *)d_t;
    a.max_tiles = n_tiles + 2; /* grid rows past the table's count exit at once */
    if (!hip_qgemm_takes(ddt, &a)) {
        snprintf(why, cap, "the act-q8 tensor-core GEMM does not run on this device (or these arguments)");
        rc = -2;
        goto out;
    }
    QM_TRY(hip_launch_qgemm(ddt, &a, 0));
    QM_TRY(hipDeviceSynchronize());
    QM_TRY(hipMemcpy(out, d_c, c_bytes, hipMemcpyDeviceToHost));
    rc = 0;
out:
#undef QM_TRY
    if (e != hipSuccess)
        snprintf(why, cap, "act-q8 GEMM on the GPU: %s", hipGetErrorString(e));
    void *bufs[] = {d_a, d_w, d_c, d_t, d_g};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i] && hipFree(bufs[i]) != hipSuccess && rc == 0)
            rc = 1;
    free(wx);
    return rc;
}
