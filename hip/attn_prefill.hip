/* attn_prefill: the query-tiled prefill attention (hip_attn_prefill.h says what it promises).
 *
 * Block = (pair of items, kv head g).  An item is qt = HIP_AP_ROWS / G consecutive chunk
 * rows times the G q heads of g (row ri = position ri / G, head ri % G); block x takes
 * items x and n - 1 - x one after the other, so every block streams about the same number
 * of key tiles (item i needs about i of them: causal).  Per key tile of 32, for the whole
 * item at once: K and V staged in shared memory (the next tile's global loads issued into
 * registers before this tile's arithmetic), scores as a 4-row x 2-key register tile per
 * thread, the softmax step by 4 threads per row (8 keys each), P.V as a 4-row x 4*HDC-d
 * register tile whose accumulators stay in registers for the whole item.
 *
 * The row kernel (k_attn<false>) does the same operations per output in the same order;
 * what changes is only who does them: a K/V tile is read once per 64 rows instead of once
 * per 8 (one row, G heads), and the arithmetic runs from register tiles.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hip_compat.h"
#include "hip_kernels.h"
#include "hip_attn_prefill.h"

#if defined(MOERT_HIP_AMD)
/* every fused multiply-add below is written out (fmaf); nothing else may be contracted */
#pragma clang fp contract(off)
#endif

#define AP_THREADS 256
#define AP_T HIP_ATTN_TILE       /* keys per tile: the row kernel's, so the same softmax steps */
#define AP_PS (AP_T + 4)         /* P row stride (floats): float4-aligned rows 4 banks apart */
#define AP_HD_MAX 256            /* head_dim limit: HDC = 64-wide d chunks per thread row, <= 4 */

static_assert(AP_T == 32, "the softmax quads hold 8 keys each: 4 x 8 is one tile");
static_assert(HIP_AP_ROWS == 64 && AP_THREADS == 256,
              "16 row groups x 4 rows per thread (scores, P.V), one softmax quad per row");

#define DEV static __device__ __forceinline__

extern __shared__ float4 ap_smem4[];

/* Shared memory: Q [ROWS][hd + 4], K and V [T][hd + 4], P [ROWS][AP_PS], alpha and l per row.
 * Row strides of hd + 4 keep float4 rows aligned and put rows 4 banks apart. */
static size_t ap_smem_bytes(int hd)
{
    const size_t ld = (size_t)hd + 4;
    return sizeof(float) * ((HIP_AP_ROWS + 2 * (size_t)AP_T) * ld + (size_t)HIP_AP_ROWS * AP_PS +
                            2 * (size_t)HIP_AP_ROWS);
}

/* An addition the compiler may not fuse with the product that feeds it (the row kernel's
 * butterfly adds are plain adds). */
DEV float ap_add(float x, float y)
{
    return __fadd_rn(x, y);
}

DEV float4 zero4(void)
{
    return make_float4(0.0f, 0.0f, 0.0f, 0.0f);
}

DEV float comp4(const float4 &v, int e)
{
    return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}

/* Keys 0 .. of row ri of the item (its position + 1); a padding row gets the item's last. */
DEV long long ap_row_keys(int ri, int G, int qt, int nr, long long first_keys, long long last_keys)
{
    return ri < qt * G && ri / G < nr ? first_keys + ri / G : last_keys;
}

/* The K and V rows t0 .. t0 + nk - 1 of one kv head into registers (zeros past nk). */
template <int HDC>
DEV void ap_load_kv(float4 (&kr)[2 * HDC], float4 (&vr)[2 * HDC], const float *kbase, const float *vbase,
                    long long t0, int nk, int hd4)
{
#pragma unroll
    for (int u = 0; u < 2 * HDC; u++) {
        const int i = (int)threadIdx.x + u * AP_THREADS, j = i / hd4, d = 4 * (i % hd4);
        kr[u] = zero4();
        vr[u] = zero4();
        if (j < nk) {
            kr[u] = *(const float4 *)(kbase + (t0 + j) * (long long)(4 * hd4) + d);
            vr[u] = *(const float4 *)(vbase + (t0 + j) * (long long)(4 * hd4) + d);
        }
    }
}

template <int HDC>
DEV void ap_store_kv(const float4 (&kr)[2 * HDC], const float4 (&vr)[2 * HDC], float *ks, float *vs, int hd4)
{
    const int ld = 4 * hd4 + 4;
#pragma unroll
    for (int u = 0; u < 2 * HDC; u++) {
        const int i = (int)threadIdx.x + u * AP_THREADS, j = i / hd4, d = 4 * (i % hd4);
        if (j < AP_T) {
            *(float4 *)(ks + j * ld + d) = kr[u];
            *(float4 *)(vs + j * ld + d) = vr[u];
        }
    }
}

/* o = o * alpha, then o = fmaf(p_j, v_j, o) over the tile's keys j in order, for the
 * thread's rows rp + 16 i and d = 4 dq + 64 c + e.  FULL: every row sees all 32 keys;
 * otherwise row i sees nt[i] (0: the row is past this tile, untouched). */
template <int HDC, bool FULL>
DEV void ap_pv(float (&acc)[4][HDC][4], const int (&nt)[4], const float *ps, const float *vs, const float *al,
               int rp, int dq, int hd)
{
    const int ld = hd + 4;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (FULL || nt[i] > 0) {
            const float a = al[rp + 16 * i];
#pragma unroll
            for (int c = 0; c < HDC; c++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[i][c][e] *= a;
        }
    }
#pragma unroll 2
    for (int j0 = 0; j0 < AP_T; j0 += 4) {
        float4 p4[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            p4[i] = *(const float4 *)(ps + (rp + 16 * i) * AP_PS + j0);
#pragma unroll
        for (int jj = 0; jj < 4; jj++) {
            float4 v[HDC];
#pragma unroll
            for (int c = 0; c < HDC; c++)
                v[c] = 4 * dq + 64 * c < hd ? *(const float4 *)(vs + (j0 + jj) * ld + 4 * dq + 64 * c) : zero4();
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (FULL || j0 + jj < nt[i]) {
                    const float p = comp4(p4[i], jj);
#pragma unroll
                    for (int c = 0; c < HDC; c++) {
                        acc[i][c][0] = fmaf(p, v[c].x, acc[i][c][0]);
                        acc[i][c][1] = fmaf(p, v[c].y, acc[i][c][1]);
                        acc[i][c][2] = fmaf(p, v[c].z, acc[i][c][2]);
                        acc[i][c][3] = fmaf(p, v[c].w, acc[i][c][3]);
                    }
                }
            }
        }
    }
}

template <int HDC>
__global__ void __launch_bounds__(AP_THREADS) k_attn_prefill(hip_attn_args a, int rows, int qt, int nitems)
{
    moert_pdl_wait();
    const int G = a.nh / a.nkv, hd = a.hd, hd4 = hd / 4, ld = hd + 4;
    const int g = (int)blockIdx.y, tid = (int)threadIdx.x;
    float *qs = (float *)ap_smem4;
    float *ks = qs + HIP_AP_ROWS * ld;
    float *vs = ks + AP_T * ld;
    float *ps = vs + AP_T * ld;
    float *al = ps + HIP_AP_ROWS * AP_PS;
    float *ls = al + HIP_AP_ROWS;
    const long long pos0 = a.sp->pos0;
    /* the cache is [kv head][position][d]: kv head g's keys are one contiguous run */
    const float *kbase = a.kc + (long long)g * a.max_seq * hd;
    const float *vbase = a.vc + (long long)g * a.max_seq * hd;
    const int kq = tid % 16, rq = tid / 16; /* scores: keys kq + 16 jj, rows rq + 16 i */
    const int dq = tid % 16, rp = tid / 16; /* P.V: d = 4 dq + 64 c + e, rows rp + 16 i */
    const int sr = tid / 4, sq = tid % 4;   /* softmax: row sr, keys 8 sq .. 8 sq + 7 */
    for (int it = 0; it < 2; it++) {
        const int item = it == 0 ? (int)blockIdx.x : nitems - 1 - (int)blockIdx.x;
        if (it == 1 && item <= (int)blockIdx.x)
            break;
        const int r0 = item * qt, nr = min(qt, rows - r0);
        /* keys of the item's first and last row (causal: a row sees keys 0 .. its position) */
        const long long kfirst = pos0 + r0 + 1, kmax = pos0 + r0 + nr;
        if (pos0 < 0 || kmax > a.max_seq) {
            if (tid == 0)
                *a.err_flag = 2;
            return;
        }
        if (it == 1)
            __syncthreads(); /* the first item's last tile is read until here */
        /* the item's q rows (zeros for padding rows), every load of a thread before its stores */
        {
            float4 qv[4 * HDC];
#pragma unroll
            for (int u = 0; u < 4 * HDC; u++) {
                const int i = tid + u * AP_THREADS, ri = i / hd4, d = 4 * (i % hd4);
                qv[u] = zero4();
                if (ri < qt * G && ri / G < nr)
                    qv[u] = *(const float4 *)(a.qkv + (long long)(r0 + ri / G) * a.qkv_dim +
                                              (long long)(g * G + ri % G) * hd + d);
            }
#pragma unroll
            for (int u = 0; u < 4 * HDC; u++) {
                const int i = tid + u * AP_THREADS, ri = i / hd4, d = 4 * (i % hd4);
                if (ri < HIP_AP_ROWS)
                    *(float4 *)(qs + ri * ld + d) = qv[u];
            }
        }
        float4 kr[2 * HDC], vr[2 * HDC];
        ap_load_kv<HDC>(kr, vr, kbase, vbase, 0, (int)min((long long)AP_T, kmax), hd4);
        ap_store_kv<HDC>(kr, vr, ks, vs, hd4);
        float acc[4][HDC][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int c = 0; c < HDC; c++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    acc[i][c][e] = 0.0f;
        long long pk[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            pk[i] = ap_row_keys(rp + 16 * i, G, qt, nr, kfirst, kmax);
        const long long sk = ap_row_keys(sr, G, qt, nr, kfirst, kmax);
        float m = -INFINITY, l = 0.0f; /* softmax state of row sr (the same in its 4 threads) */
        __syncthreads();
        for (long long t0 = 0; t0 < kmax; t0 += AP_T) {
            const bool more = t0 + AP_T < kmax;
            if (more) /* in flight while this tile is worked on */
                ap_load_kv<HDC>(kr, vr, kbase, vbase, t0 + AP_T, (int)min((long long)AP_T, kmax - t0 - AP_T), hd4);
            /* scores: each one fmaf chain over d from 0, then the scale */
            {
                float sc[4][2];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    sc[i][0] = sc[i][1] = 0.0f;
#pragma unroll 2
                for (int d = 0; d < hd; d += 4) {
                    float4 q[4], k[2];
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        q[i] = *(const float4 *)(qs + (rq + 16 * i) * ld + d);
#pragma unroll
                    for (int jj = 0; jj < 2; jj++)
                        k[jj] = *(const float4 *)(ks + (kq + 16 * jj) * ld + d);
#pragma unroll
                    for (int i = 0; i < 4; i++)
#pragma unroll
                        for (int jj = 0; jj < 2; jj++) {
                            sc[i][jj] = fmaf(q[i].x, k[jj].x, sc[i][jj]);
                            sc[i][jj] = fmaf(q[i].y, k[jj].y, sc[i][jj]);
                            sc[i][jj] = fmaf(q[i].z, k[jj].z, sc[i][jj]);
                            sc[i][jj] = fmaf(q[i].w, k[jj].w, sc[i][jj]);
                        }
                }
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int jj = 0; jj < 2; jj++)
                        ps[(rq + 16 * i) * AP_PS + kq + 16 * jj] = sc[i][jj] * a.scale;
            }
            __syncthreads();
            /* softmax step of row sr: running max, p = expf(s - m), the tile's sum as the
             * butterfly tree over its 32 keys (8 in this thread: masks 1, 2, 4; then the
             * quad: masks 8, 16); shuffles run in every thread, the state only where the
             * row has keys in this tile */
            {
                const int nt = (int)max(0LL, min((long long)AP_T, sk - t0));
                float *pr = ps + sr * AP_PS + 8 * sq;
                const float4 s0 = *(const float4 *)pr, s1 = *(const float4 *)(pr + 4);
                const float s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
                float mx = -INFINITY;
#pragma unroll
                for (int e = 0; e < 8; e++)
                    if (8 * sq + e < nt)
                        mx = fmaxf(mx, s[e]);
                mx = fmaxf(mx, moert_shfl_xor(mx, 1));
                mx = fmaxf(mx, moert_shfl_xor(mx, 2));
                const float mt = fmaxf(m, mx);
                float p[8];
#pragma unroll
                for (int e = 0; e < 8; e++)
                    p[e] = 8 * sq + e < nt ? expf(s[e] - mt) : 0.0f;
                float sum = ap_add(ap_add(ap_add(p[0], p[1]), ap_add(p[2], p[3])),
                                   ap_add(ap_add(p[4], p[5]), ap_add(p[6], p[7])));
                sum = ap_add(sum, moert_shfl_xor(sum, 1));
                sum = ap_add(sum, moert_shfl_xor(sum, 2));
                if (nt > 0) {
                    *(float4 *)pr = make_float4(p[0], p[1], p[2], p[3]);
                    *(float4 *)(pr + 4) = make_float4(p[4], p[5], p[6], p[7]);
                    const float alpha = expf(m - mt); /* exp(-inf) = 0 on the first tile */
                    l = fmaf(l, alpha, sum);
                    m = mt;
                    if (sq == 0) {
                        al[sr] = alpha;
                        ls[sr] = l;
                    }
                }
            }
            __syncthreads();
            {
                int nt[4];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    nt[i] = (int)max(0LL, min((long long)AP_T, pk[i] - t0));
                if (t0 + AP_T <= kfirst) /* block-uniform: every row of the item sees the whole tile */
                    ap_pv<HDC, true>(acc, nt, ps, vs, al, rp, dq, hd);
                else
                    ap_pv<HDC, false>(acc, nt, ps, vs, al, rp, dq, hd);
            }
            if (more) {
                __syncthreads(); /* everyone is done with this tile's K, V and P */
                ap_store_kv<HDC>(kr, vr, ks, vs, hd4);
                __syncthreads();
            }
        }
        /* o / l for the item's real rows */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int ri = rp + 16 * i;
            if (ri < qt * G && ri / G < nr) {
                const float li = ls[ri];
                float *orow = a.out + (long long)(r0 + ri / G) * a.q_dim + (long long)(g * G + ri % G) * hd;
#pragma unroll
                for (int c = 0; c < HDC; c++) {
                    const int d = 4 * dq + 64 * c;
                    if (d < hd)
                        *(float4 *)(orow + d) = make_float4(acc[i][c][0] / li, acc[i][c][1] / li,
                                                            acc[i][c][2] / li, acc[i][c][3] / li);
                }
            }
        }
    }
}

/* ---- host side ----------------------------------------------------------------------- */

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

static int ap_hdc(int hd)
{
    return hd <= 64 ? 1 : hd <= 128 ? 2 : 4;
}

template <int HDC> static bool ap_smem_attr(size_t optin)
{
    const size_t b = ap_smem_bytes(64 * HDC);
    if (b > optin)
        return false;
    return b <= 48u * 1024u || hipFuncSetAttribute((const void *)(k_attn_prefill<HDC>),
                                                   hipFuncAttributeMaxDynamicSharedMemorySize, (int)b) == hipSuccess;
}

/* Once per process: MOERT_HIP_ATTN=row (the row kernel for every prefill), and which head
 * widths the device's shared memory takes (bit c: HDC = 1 << c). */
static int ap_enabled(void)
{
    static int on = -1;
    if (on < 0) {
        const char *v = getenv("MOERT_HIP_ATTN");
        int dev = 0, optin = 0;
        on = 0;
        if (!(v && strcmp(v, "row") == 0) && hipGetDevice(&dev) == hipSuccess &&
            hipDeviceGetAttribute(&optin, MOERT_ATTR_SMEM_OPTIN, dev) == hipSuccess) {
            on = (ap_smem_attr<1>((size_t)optin) ? 1 : 0) | (ap_smem_attr<2>((size_t)optin) ? 2 : 0) |
                 (ap_smem_attr<4>((size_t)optin) ? 4 : 0);
        }
        (void)hipGetLastError();
    }
    return on;
}

bool hip_attn_prefill_takes(const hip_attn_args *a, int rows)
{
    if (rows < 2 || a->nkv <= 0 || a->nh % a->nkv != 0 || a->nh / a->nkv > HIP_AP_ROWS)
        return false;
    if (a->hd <= 0 || a->hd % 4 != 0 || a->hd > AP_HD_MAX || a->qkv_dim % 4 != 0 || a->q_dim % 4 != 0)
        return false;
    if (!aligned16(a->qkv) || !aligned16(a->kc) || !aligned16(a->vc) || !aligned16(a->out))
        return false;
    return (ap_enabled() & ap_hdc(a->hd)) != 0;
}

template <int HDC> static void ap_launch(const hip_attn_args *a, int rows, hipStream_t s)
{
    const int qt = HIP_AP_ROWS / (a->nh / a->nkv), nitems = (rows + qt - 1) / qt;
    dim3 grid((unsigned)((nitems + 1) / 2), (unsigned)a->nkv);
    MOERT_LAUNCH((k_attn_prefill<HDC>), grid, AP_THREADS, ap_smem_bytes(a->hd), s, *a, rows, qt, nitems);
}

hipError_t hip_launch_attn_prefill(const hip_attn_args *a, int rows, hipStream_t s)
{
    switch (ap_hdc(a->hd)) {
    case 1:
        ap_launch<1>(a, rows, s);
        break;
    case 2:
        ap_launch<2>(a, rows, s);
        break;
    default:
        ap_launch<4>(a, rows, s);
        break;
    }
    return hipGetLastError();
}
