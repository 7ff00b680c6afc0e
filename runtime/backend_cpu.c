/* backend_cpu: runs schedule ops on the host arena with OpenMP threads.
 *
 * Work is split between threads by OUTPUT ranges only (weight-row blocks, (row, head)
 * pairs, (expert, block) items); every output element is computed whole by one thread with
 * the kernels' canonical order, so results are identical for every thread count and
 * schedule.  Nothing here allocates after init.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../arena/arena.h"
#include "../ops/ops.h"
#include "backend.h"
#include "comm.h"
#include "shard.h"
#include "trace/trace.h"
#include "trace/trace_route.h"

typedef struct cpu_ctx {
    const sched *s;
    int32_t panel, rowptrs, scores, gather; /* this backend's scratch (its requests) */
    int32_t ranks;                  /* expert-parallel ranks simulated (runtime.gpus) */
    comm comm;                      /* their collectives: the in-process loopback */
    int64_t panel_floats;           /* per-thread share of panel */
    const model_weights *w;
    arena mem;
    uint8_t **ptr;        /* per buffer: base + offset */
    int32_t threads;
    float attn_scale;
    trace_rt *trace;
    const trace_route *route; /* routing replay, or NULL */
    ops_dtype sim;            /* precision simulation: BF16 / F16, or F32 = off */
    bool qact;                /* numerics act-q8: block-quantized products take int8 rows */
    const void **qptr_a, **qptr_b; /* act-q8 row pointers: inputs, MoE hidden rows */
    uint8_t *qrows_a, *qrows_b;    /* ... and the quantized rows they point at */
} cpu_ctx;

#define BLOCK OPS_PANEL_ROWS

/* Runs fn(ctx, lo, hi, thread) over [0, n): dynamic hands out one item at a time; static
 * gives each thread one contiguous range (the ranges OpenMP's static schedule would), so a
 * kernel can stream a thread's whole stretch of weights in one call.  With one thread, or
 * one item, no parallel region is opened at all: libgomp allocates a team for every region
 * it runs serially. */
typedef void (*range_fn)(void *ctx, int64_t lo, int64_t hi, int tid);

static void par_ranges(int32_t threads, int64_t n, bool dynamic, range_fn fn, void *ctx)
{
    if (threads <= 1 || n <= 1) {
        if (n > 0)
            fn(ctx, 0, n, 0);
    } else if (dynamic) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t i = 0; i < n; i++)
            fn(ctx, i, i + 1, omp_get_thread_num());
    } else {
#pragma omp parallel num_threads(threads)
        {
            int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
            int64_t lo = n * t / nt, hi = n * (t + 1) / nt;
            if (lo < hi)
                fn(ctx, lo, hi, (int)t);
        }
    }
}

/* Item-at-a-time form of par_ranges. */
typedef void (*item_fn)(void *ctx, int64_t i, int tid);
typedef struct item_job {
    item_fn fn;
    void *ctx;
} item_job;

static void run_items(void *ctx, int64_t lo, int64_t hi, int tid)
{
    const item_job *j = ctx;
    for (int64_t i = lo; i < hi; i++)
        j->fn(j->ctx, i, tid);
}

static void par_for(int32_t threads, int64_t n, bool dynamic, item_fn fn, void *ctx)
{
    item_job j = {fn, ctx};
    par_ranges(threads, n, dynamic, run_items, &j);
}

/* model_bind and the GGUF mapping admit only dtypes with a kernel type. */
static ops_dtype ops_type(st_dtype t)
{
    int o = st_dtype_ops(t);
    return o < 0 ? OPS_F32 : (ops_dtype)o;
}

static inline float *fbuf(cpu_ctx *c, int32_t id)
{
    return (float *)c->ptr[id];
}

static inline float *thread_panel(cpu_ctx *c, int tid)
{
    return fbuf(c, c->panel) + (size_t)tid * (size_t)c->panel_floats;
}

/* ---- scratch requests ------------------------------------------------------------------ */

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

/* Floats of one thread's matmul panel (a 64-byte multiple) for the widest k of s. */
/* The widest input of a matmul other than the MoE's hidden rows. */
static int64_t panel_floats(const sched *s)
{
    int64_t kmax = sched_dense_kmax(s);
    if (s->topo.moe_intermediate_size > kmax)
        kmax = s->topo.moe_intermediate_size;
    return ((int64_t)ops_matmul_panel_floats(kmax) + 15) / 16 * 16;
}

static int64_t topk_slots(const sched *s)
{
    return s->topo.num_experts_per_tok > 1 ? s->topo.num_experts_per_tok : 1;
}

/* act-q8 scratch: two pointer arrays of max_rows * top-k, then max_rows input rows and
 * max_rows * top-k MoE hidden rows, quantized (ops_qact_row). */
static uint64_t qact_scratch(const sched *s)
{
    uint64_t rk = sat_mul((uint64_t)s->max_rows, (uint64_t)topk_slots(s));
    uint64_t p = sat_mul(2 * rk, sizeof(void *)), a = sat_mul((uint64_t)s->max_rows, ops_qact_bound_bytes(sched_dense_kmax(s)));
    uint64_t b = sat_mul(rk, ops_qact_bound_bytes(s->topo.moe_intermediate_size));
    return p + a < p || p + a + b < p + a ? UINT64_MAX : p + a + b;
}

int backend_cpu_requests(const sched *s, backend_request *reqs)
{
    uint64_t T = (uint64_t)s->threads, K = (uint64_t)topk_slots(s);
    uint64_t group = (uint64_t)(s->topo.num_attention_heads / s->topo.num_key_value_heads);
    /* per thread: one matmul panel */
    reqs[CPU_REQ_PANEL] = (backend_request){"cpu.panel", sat_mul(sat_mul(T, (uint64_t)panel_floats(s)), 4),
                                            ARENA_MIN_ALIGN, false};
    /* two row-pointer arrays of max_rows * top-k entries, plus top-k per thread */
    uint64_t ptrs = sat_mul(2 * K, (uint64_t)s->max_rows);
    ptrs = ptrs + sat_mul(T, K) < ptrs ? UINT64_MAX : ptrs + sat_mul(T, K);
    reqs[CPU_REQ_ROWPTRS] = (backend_request){"cpu.rowptrs", sat_mul(ptrs, sizeof(void *)), ARENA_MIN_ALIGN, false};
    /* per thread: the scores of one KV head's group of query heads */
    reqs[CPU_REQ_SCORES] = (backend_request){
        "cpu.scores", sat_mul(sat_mul(sat_mul(T, group), (uint64_t)s->max_seq), 4), ARENA_MIN_ALIGN, false};
    /* expert parallelism (s->gpus ranks): every rank's slot outputs, gathered (shard.h) */
    uint64_t gather = shard_gather_bytes(s, s->gpus);
    reqs[CPU_REQ_GATHER] = (backend_request){"cpu.ep_gather", gather ? gather : 64, ARENA_MIN_ALIGN, false};
    /* numerics act-q8: the quantized activations */
    reqs[CPU_REQ_QACT] = (backend_request){"cpu.act_q8", s->act_q8 ? qact_scratch(s) : 64, ARENA_MIN_ALIGN, false};
    return CPU_REQ_COUNT;
}

/* out[r * ldo + n] = rows[r] . w[n] for r in [0, m), n in [n0, n1); with act-q8 rows (qrows,
 * the same rows quantized) a block-quantized w takes the integer products. */
static void matmul_tensor(float *out, int64_t ldo, const float *const *rows, const void *const *qrows,
                          int64_t m, const model_tensor *w, int64_t k, int64_t n0, int64_t n1, float *panel)
{
    ops_dtype t = ops_type(w->dtype);
    if (qrows && ops_dtype_block_elems(t) > 1)
        ops_matmul_qact(out, ldo, qrows, m, w->data, t, k, n0, n1);
    else
        ops_matmul(out, ldo, rows, m, w->data, t, k, n0, n1, panel);
}

/* act-q8: rows r (rows[r], or x + r * stride; k wide) quantized into dst, qb bytes apart,
 * with ptrs[r] pointing at each (ptrs may be NULL). */
typedef struct qact_job {
    const float *const *rows;
    const float *x;
    int64_t k, stride;
    uint8_t *dst;
    size_t qb;
    const void **ptrs;
} qact_job;

static void qact_item(void *ctx, int64_t r, int tid)
{
    const qact_job *j = ctx;
    (void)tid;
    ops_qact_row(j->dst + (size_t)r * j->qb, j->rows ? j->rows[r] : j->x + r * j->stride, j->k);
    if (j->ptrs)
        j->ptrs[r] = j->dst + (size_t)r * j->qb;
}

/* Quantizes n rows when the mode is on and k whole 32-blocks; returns their pointers, or
 * NULL (the exact kernels then run). */
static const void *const *qact_rows(cpu_ctx *c, const float *const *rows, const float *x, int64_t n,
                                    int64_t k, int64_t stride, uint8_t *dst, const void **ptrs)
{
    if (!c->qact || k % 32)
        return NULL;
    qact_job j = {rows, x, k, stride, dst, ops_qact_row_bytes(k), ptrs};
    par_for(c->threads, n, false, qact_item, &j);
    return ptrs;
}

/* Columns [n0, n1) of gate = silu(rows . g) * (rows . u) for m rows of width k, both
 * outputs with row stride ld (up is scratch). */
static void gate_up_swiglu(float *gate, float *up, const float *const *rows, const void *const *qrows,
                           int64_t m, const model_tensor *g, const model_tensor *u, int64_t k, int64_t ld,
                           int64_t n0, int64_t n1, float *panel)
{
    matmul_tensor(gate, ld, rows, qrows, m, g, k, n0, n1, panel);
    matmul_tensor(up, ld, rows, qrows, m, u, k, n0, n1, panel);
    for (int64_t r = 0; r < m; r++)
        ops_swiglu(gate + r * ld + n0, gate + r * ld + n0, up + r * ld + n0, n1 - n0);
}

static int cpu_init(backend *b, const backend_init *in, moert_err *err)
{
    cpu_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return err_set(err, MOERT_ENOMEM, "cpu backend: out of memory");
    c->s = in->s;
    c->w = in->w;
    c->threads = in->threads;
    c->panel = in->scratch0 + CPU_REQ_PANEL;
    c->rowptrs = in->scratch0 + CPU_REQ_ROWPTRS;
    c->scores = in->scratch0 + CPU_REQ_SCORES;
    c->gather = in->scratch0 + CPU_REQ_GATHER;
    c->ranks = in->s->gpus > 1 ? in->s->gpus : 1;
    int cst = comm_init(&c->comm, COMM_LOOPBACK, c->ranks, err);
    if (cst) {
        free(c);
        return cst;
    }
    c->panel_floats = panel_floats(in->s);
    c->trace = in->trace;
    c->route = in->route;
    c->sim = in->sim == CFG_SIM_BF16 ? OPS_BF16 : in->sim == CFG_SIM_F16 ? OPS_F16 : OPS_F32;
    c->qact = in->s->act_q8;
    c->attn_scale = (float)(1.0 / sqrt((double)in->s->topo.head_dim));
    c->ptr = calloc((size_t)in->s->n_bufs, sizeof *c->ptr);
    if (!c->ptr) {
        free(c);
        return err_set(err, MOERT_ENOMEM, "cpu backend: out of memory");
    }
    int st = arena_init(&c->mem, in->arena_bytes, err);
    if (st) {
        free(c->ptr);
        free(c);
        return st;
    }
    for (int32_t i = 0; i < in->s->n_bufs; i++)
        c->ptr[i] = c->mem.base + in->offsets[i];
    if (c->qact) {
        int64_t rk = in->s->max_rows * topk_slots(in->s);
        c->qptr_a = (const void **)c->ptr[in->scratch0 + CPU_REQ_QACT];
        c->qptr_b = c->qptr_a + rk;
        c->qrows_a = (uint8_t *)(c->qptr_b + rk);
        c->qrows_b = c->qrows_a + (size_t)in->s->max_rows * ops_qact_bound_bytes(sched_dense_kmax(in->s));
    }
    omp_set_dynamic(0);
    /* Start the worker team now so that its creation is part of init, not of token 1, and
     * pin each worker to its own CPU of the process's set (decode streams weights: a thread
     * that migrates loses its prefetch streams).  Results never depend on placement; a
     * user's own OMP_PROC_BIND / GOMP_CPU_AFFINITY is left alone. */
    cpu_set_t allowed;
    bool pin = !getenv("OMP_PROC_BIND") && !getenv("GOMP_CPU_AFFINITY") &&
               sched_getaffinity(0, sizeof allowed, &allowed) == 0 &&
               CPU_COUNT(&allowed) >= c->threads;
#pragma omp parallel num_threads(c->threads)
    {
        int tid = omp_get_thread_num();
        if (pin) {
            int seen = -1;
            for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
                if (CPU_ISSET(cpu, &allowed) && ++seen == tid) {
                    cpu_set_t one;
                    CPU_ZERO(&one);
                    CPU_SET(cpu, &one);
                    (void)pthread_setaffinity_np(pthread_self(), sizeof one, &one);
                    break;
                }
        }
    }
    b->ctx = c;
    return MOERT_OK;
}

static void cpu_shutdown(backend *b)
{
    cpu_ctx *c = b->ctx;
    if (!c)
        return;
    arena_free(&c->mem);
    comm_free(&c->comm);
    free(c->ptr);
    free(c);
    b->ctx = NULL;
}

static int cpu_write(backend *b, int32_t buf, uint64_t offset, const void *src, uint64_t n,
                     moert_err *err)
{
    cpu_ctx *c = b->ctx;
    if (buf < 0 || buf >= c->s->n_bufs || offset + n > c->s->bufs[buf].bytes)
        return err_set(err, MOERT_EINTERNAL, "cpu backend: write outside buffer %d", buf);
    memcpy(c->ptr[buf] + offset, src, n);
    return MOERT_OK;
}

static int cpu_sync(backend *b, moert_err *err)
{
    (void)b;
    (void)err;
    return MOERT_OK; /* ops run synchronously */
}

static int cpu_read(backend *b, int32_t buf, uint64_t offset, void *dst, uint64_t n,
                    moert_err *err)
{
    cpu_ctx *c = b->ctx;
    if (buf < 0 || buf >= c->s->n_bufs || offset + n > c->s->bufs[buf].bytes)
        return err_set(err, MOERT_EINTERNAL, "cpu backend: read outside buffer %d", buf);
    if (dst != c->ptr[buf] + offset) /* reading into the arena itself: nothing to copy */
        memcpy(dst, c->ptr[buf] + offset, n);
    return MOERT_OK;
}

static void *cpu_host_ptr(backend *b, int32_t buf)
{
    cpu_ctx *c = b->ctx;
    return c->ptr[buf];
}

static int cpu_begin_step(backend *b, const exec_step *st, bool *ops_done, moert_err *err)
{
    (void)b;
    (void)st;
    (void)err;
    *ops_done = false;
    return MOERT_OK;
}

static int cpu_end_step(backend *b, const exec_step *st, moert_err *err)
{
    (void)b;
    (void)st;
    (void)err;
    return MOERT_OK;
}

/* ---- ops -------------------------------------------------------------------------- */

static void run_embed(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    const int32_t *tok = (const int32_t *)c->ptr[op->in[0]];
    float *x = fbuf(c, op->out[0]);
    const model_tensor *e = &c->w->embed;
    int64_t H = op->n;
    size_t row_bytes = (size_t)st_dtype_row_bytes(e->dtype, (uint64_t)H);
    for (int64_t r = 0; r < st->n_rows; r++)
        ops_to_f32(x + r * H, (const uint8_t *)e->data + (size_t)tok[r] * row_bytes,
                   ops_type(e->dtype), H);
}

typedef struct norm_job {
    const model_tensor *w;
    const float *x;
    float *out;
    int64_t n;
    float eps;
} norm_job;

static void norm_row(void *ctx, int64_t r, int tid)
{
    const norm_job *j = ctx;
    (void)tid;
    ops_rmsnorm(j->out + r * j->n, j->x + r * j->n, j->w->data, ops_type(j->w->dtype), j->n, j->eps);
}

static void run_rmsnorm(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    norm_job j = {backend_weight(c->w, op->w[0], op->layer, 0), fbuf(c, op->in[0]),
                  fbuf(c, op->out[0]), op->n, (float)c->s->topo.rms_norm_eps};
    par_for(c->threads, st->n_rows, false, norm_row, &j);
}

typedef struct mm_job {
    cpu_ctx *c;
    const float *const *rows;
    const void *const *qrows; /* act-q8, or NULL */
    int64_t m, ldo, k;
    float *out;
    const model_tensor *const *seg;
    int n_seg;
    int64_t seg_begin[4], seg_blocks[4];
} mm_job;

/* Blocks [lo, hi) of the concatenated segments: one ops_matmul per segment touched. */
static void mm_range(void *ctx, int64_t lo, int64_t hi, int tid)
{
    const mm_job *j = ctx;
    int64_t first = 0; /* the segment's first block */
    for (int i = 0; i < j->n_seg && lo < hi; first += j->seg_blocks[i], i++) {
        int64_t end = first + j->seg_blocks[i];
        if (lo >= end)
            continue;
        const model_tensor *w = j->seg[i];
        int64_t b1 = hi < end ? hi : end;
        int64_t n0 = (lo - first) * BLOCK, n1 = (b1 - first) * BLOCK;
        matmul_tensor(j->out + j->seg_begin[i], j->ldo, j->rows, j->qrows, j->m, w, j->k, n0,
                      n1 < w->rows ? n1 : w->rows, thread_panel(j->c, tid));
        lo = b1;
    }
}

/* out[rows, sum of segment widths] = x rows . segments; blocks of BLOCK output features,
 * split statically so each thread streams one contiguous stretch of weights. */
static void matmul_segments(cpu_ctx *c, const float *const *rows, int64_t m, float *out,
                            int64_t ldo, const model_tensor *const *seg, int n_seg, int64_t k)
{
    /* act-q8: the rows quantized once, for every segment and thread */
    const void *const *q = qact_rows(c, rows, NULL, m, k, 0, c->qrows_a, c->qptr_a);
    mm_job j = {.c = c, .rows = rows, .qrows = q, .m = m, .ldo = ldo, .k = k, .out = out, .seg = seg,
                .n_seg = n_seg};
    int64_t total_blocks = 0;
    for (int i = 0; i < n_seg; i++) {
        j.seg_begin[i + 1] = j.seg_begin[i] + seg[i]->rows;
        j.seg_blocks[i] = (seg[i]->rows + BLOCK - 1) / BLOCK;
        total_blocks += j.seg_blocks[i];
    }
    par_ranges(c->threads, total_blocks, false, mm_range, &j);
}

static const float **row_pointers(cpu_ctx *c, const float *base, int64_t n, int64_t stride,
                                  int which)
{
    const float **p = (const float **)c->ptr[c->rowptrs] +
                      (size_t)which * (size_t)(c->s->max_rows * topk_slots(c->s));
    for (int64_t r = 0; r < n; r++)
        p[r] = base + r * stride;
    return p;
}

static void run_matmul(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    const model_tensor *seg[3];
    int n_seg = 0;
    for (int i = 0; i < 3 && op->w[i] != SCHED_W_NONE; i++)
        seg[n_seg++] = backend_weight(c->w, op->w[i], op->layer, 0);
    const float **rows = row_pointers(c, fbuf(c, op->in[0]), st->n_rows, op->k, 0);
    matmul_segments(c, rows, st->n_rows, fbuf(c, op->out[0]), op->n, seg, n_seg, op->k);
}

typedef struct rope_job {
    const sched *s;
    const model_tensor *qn, *kn;
    const float *cos_tab, *sin_tab;
    float *qkv;
    int64_t pos0;
} rope_job;

static void rope_row(void *ctx, int64_t r, int tid)
{
    const rope_job *j = ctx;
    const cfg_topology *t = &j->s->topo;
    int64_t hd = t->head_dim, nh = t->num_attention_heads, half = hd / 2, pos = j->pos0 + r;
    float *row = j->qkv + r * j->s->qkv_dim;
    (void)tid;
    for (int64_t h = 0; h < nh + t->num_key_value_heads; h++) {
        float *v = row + h * hd; /* q heads, then k heads */
        const model_tensor *nw = h < nh ? j->qn : j->kn;
        ops_rmsnorm(v, v, nw->data, ops_type(nw->dtype), hd, (float)t->rms_norm_eps);
        ops_rope(v, j->cos_tab + pos * half, j->sin_tab + pos * half, hd);
    }
}

static void run_qk_norm_rope(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    rope_job j = {c->s, backend_weight(c->w, SCHED_W_Q_NORM, op->layer, 0),
                  backend_weight(c->w, SCHED_W_K_NORM, op->layer, 0), fbuf(c, op->in[0]),
                  fbuf(c, op->in[1]), fbuf(c, op->out[0]), st->pos0};
    par_for(c->threads, st->n_rows, false, rope_row, &j);
}

static void run_kv_store(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    const sched *s = c->s;
    const float *qkv = fbuf(c, op->in[0]);
    float *kc = fbuf(c, op->out[0]), *vc = fbuf(c, op->out[1]);
    int64_t hd = s->topo.head_dim, nkv = s->topo.num_key_value_heads;
    size_t hd_bytes = (size_t)hd * sizeof(float);
    for (int64_t r = 0; r < st->n_rows; r++) {
        int64_t pos = st->pos0 + r;
        const float *row = qkv + r * s->qkv_dim;
        for (int64_t h = 0; h < nkv; h++) { /* the cache is [kv head][pos][d] */
            memcpy(kc + (h * s->max_seq + pos) * hd, row + s->q_dim + h * hd, hd_bytes);
            memcpy(vc + (h * s->max_seq + pos) * hd, row + s->q_dim + s->kv_dim + h * hd, hd_bytes);
        }
    }
}

typedef struct attn_job {
    const cpu_ctx *c;
    const float *qkv, *kc, *vc;
    float *out, *scores;
    int64_t pos0;
} attn_job;

static void attn_item(void *ctx, int64_t it, int tid)
{
    const attn_job *j = ctx;
    const sched *s = j->c->s;
    int64_t hd = s->topo.head_dim, nkv = s->topo.num_key_value_heads;
    int64_t group = s->topo.num_attention_heads / nkv, r = it / nkv, kvh = it % nkv;
    float *scores = j->scores + (size_t)tid * (size_t)(group * s->max_seq);
    size_t head_at = (size_t)(kvh * s->max_seq * hd); /* the cache is [kv head][pos][d] */
    ops_attention_group(j->out + r * s->q_dim + kvh * group * hd, hd,
                        j->qkv + r * s->qkv_dim + kvh * group * hd, hd, group, j->kc + head_at,
                        j->vc + head_at, hd, j->pos0 + r, hd, j->c->attn_scale, scores);
}

/* Items are (row, KV head): the query heads sharing a KV head read it once together. */
static void run_attention(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    attn_job j = {c, fbuf(c, op->in[0]), fbuf(c, op->in[1]), fbuf(c, op->in[2]),
                  fbuf(c, op->out[0]), fbuf(c, c->scores), st->pos0};
    par_for(c->threads, st->n_rows * c->s->topo.num_key_value_heads, false, attn_item, &j);
}

static void run_add(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    ops_add(fbuf(c, op->out[0]), fbuf(c, op->in[0]), st->n_rows * op->n);
}

static int run_route(cpu_ctx *c, const sched_op *op, const exec_step *st, moert_err *err)
{
    const float *logits = fbuf(c, op->in[0]);
    float *w = fbuf(c, op->out[0]), *probs = fbuf(c, op->scratch[0]);
    int32_t *ids = (int32_t *)c->ptr[op->out[1]];
    int64_t K = op->n, E = op->k;
    bool norm = c->s->topo.norm_topk_prob;
    for (int64_t r = 0; r < st->n_rows; r++) {
        if (c->route) { /* routing replay: the recording's choice, not the router's */
            const int32_t *rid;
            const float *rw;
            if (!trace_route_row(c->route, op->layer, st->pos0 + r, &rid, &rw))
                return err_set(err, MOERT_EUSAGE, "--route-from %s: no recorded routing for layer %d, position %lld",
                               trace_route_path(c->route), op->layer, (long long)(st->pos0 + r));
            memcpy(ids + r * K, rid, (size_t)K * sizeof *ids);
            memcpy(w + r * K, rw, (size_t)K * sizeof *w);
            continue;
        }
        ops_topk_route(logits + r * E, E, K, norm, ids + r * K, w + r * K, probs + r * E);
    }
    return MOERT_OK;
}

/* --sim-precision: the op's activation outputs rounded to the simulated format.  The KV
 * cache (persistent) receives rows already rounded by the op before it; expert ids are not
 * floats; a replayed routing is an input, not this run's arithmetic. */
static void sim_round(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    if (op->kind == SCHED_ROUTE && c->route)
        return;
    for (int i = 0; i < 2; i++) {
        int32_t id = op->out[i];
        if (id < 0)
            continue;
        const sched_buffer *b = &c->s->bufs[id];
        if (b->elem != SCHED_F32 || b->persistent)
            continue;
        int64_t rows = st->n_rows < b->rows ? st->n_rows : b->rows;
        ops_round_to(fbuf(c, id), rows * b->cols, c->sim);
    }
}

/* Routed experts.  Assignments (token t, slot j) are grouped by expert so each expert is
 * one matrix product over its tokens; the combine then walks each token's slots in top-k
 * order.  Work items are (active expert, output block): any thread may take any item. */
typedef struct moe_job {
    cpu_ctx *c;
    const model_layer *L;
    const int32_t *offs, *active, *inv;
    const float *const *xrows, *const *hrows;
    const void *const *qx, *const *qh; /* act-q8: the same rows quantized, or NULL */
    const float *tw;
    float *gate, *up, *down, *out;
    const float **slot_base;
    int64_t K, H, I, iblocks, hblocks;
    const int32_t *ids;      /* expert parallelism: each (token, slot)'s expert, */
    const float *gathered;   /* the gathered slot outputs [ranks][RK][H], */
    int64_t RK;              /* rows * top-k, */
    int32_t ranks;           /* and the rank count */
} moe_job;

/* Items [*lo, hi) are (active expert, block) pairs, nblocks blocks per expert: the next run
 * of one expert's blocks as rows [*n0, *n1) of its weight (rows in all).  Advances *lo past
 * the run and returns the expert, so each run is one matrix product per weight. */
static int64_t expert_run(const moe_job *j, int64_t *lo, int64_t hi, int64_t nblocks,
                          int64_t rows, int64_t *n0, int64_t *n1)
{
    int64_t e = j->active[*lo / nblocks], b0 = *lo % nblocks;
    int64_t b1 = b0 + (hi - *lo) < nblocks ? b0 + (hi - *lo) : nblocks;
    *n0 = b0 * BLOCK;
    *n1 = b1 * BLOCK < rows ? b1 * BLOCK : rows;
    *lo += b1 - b0;
    return e;
}

static void moe_gate_up(void *ctx, int64_t lo, int64_t hi, int tid)
{
    const moe_job *j = ctx;
    int64_t I = j->I, n0, n1;
    while (lo < hi) {
        int64_t e = expert_run(j, &lo, hi, j->iblocks, I, &n0, &n1);
        int64_t o = j->offs[e], m = j->offs[e + 1] - o;
        gate_up_swiglu(j->gate + o * I, j->up + o * I, j->xrows + o, j->qx ? j->qx + o : NULL, m, &j->L->gate[e],
                       &j->L->up[e], j->H, I, n0, n1, thread_panel(j->c, tid));
    }
}

static void moe_down(void *ctx, int64_t lo, int64_t hi, int tid)
{
    const moe_job *j = ctx;
    int64_t H = j->H, n0, n1;
    while (lo < hi) {
        int64_t e = expert_run(j, &lo, hi, j->hblocks, H, &n0, &n1);
        int64_t o = j->offs[e], m = j->offs[e + 1] - o;
        matmul_tensor(j->down + o * H, H, j->hrows + o, j->qh ? j->qh + o : NULL, m, &j->L->down[e], j->I, n0, n1,
                      thread_panel(j->c, tid));
    }
}

static void moe_combine(void *ctx, int64_t t, int tid)
{
    const moe_job *j = ctx;
    const float **slots = j->slot_base + (size_t)tid * (size_t)j->K;
    for (int64_t k = 0; k < j->K; k++)
        slots[k] = j->down + (int64_t)j->inv[t * j->K + k] * j->H;
    ops_weighted_sum(j->out + t * j->H, slots, j->tw + t * j->K, j->K, j->H);
}

/* Expert parallelism: slot (t, k)'s output read from its owner's slice of the gather. */
static void moe_combine_ep(void *ctx, int64_t t, int tid)
{
    const moe_job *j = ctx;
    const float **slots = j->slot_base + (size_t)tid * (size_t)j->K;
    for (int64_t k = 0; k < j->K; k++) {
        int64_t a = t * j->K + k;
        slots[k] = j->gathered + ((int64_t)shard_expert_owner(j->ids[a], j->ranks) * j->RK + a) * j->H;
    }
    ops_weighted_sum(j->out + t * j->H, slots, j->tw + t * j->K, j->K, j->H);
}

/* act-q8: the hidden rows of the listed experts quantized for their down products. */
static void moe_qact_hidden(cpu_ctx *c, const moe_job *j, const int32_t *experts, int64_t n)
{
    if (!j->qh)
        return;
    size_t qb = ops_qact_row_bytes(j->I);
    for (int64_t i = 0; i < n; i++) {
        int64_t o = j->offs[experts[i]], m = j->offs[experts[i] + 1] - o;
        qact_rows(c, NULL, j->gate + o * j->I, m, j->I, j->I, c->qrows_b + (size_t)o * qb, c->qptr_b + o);
    }
}

/* N simulated ranks (shard.h): rank r computes only the active experts it owns, exactly as
 * the one-rank path computes them (the same tokens per expert, so the same products), and
 * packs its slots' outputs, in (token, slot) order, into its slice of the gather buffer;
 * the all-gather shares the slices and the combine walks each token's slots in top-k order
 * as the one-rank path does.  No sum depends on N: only where a slot's row is read from. */
static int moe_expert_parallel(cpu_ctx *c, moe_job *j, const int32_t *active, int64_t n_active,
                               int32_t *rank_active, int64_t R, moert_err *err)
{
    const int32_t N = c->ranks;
    float *gath = fbuf(c, c->gather);
    j->gathered = gath;
    j->RK = R * j->K;
    for (int32_t r = 0; r < N; r++) {
        int64_t n = 0;
        for (int64_t i = 0; i < n_active; i++)
            if (shard_expert_owner(active[i], N) == r)
                rank_active[n++] = active[i];
        j->active = rank_active;
        par_ranges(c->threads, n * j->iblocks, R > 1, moe_gate_up, j);
        moe_qact_hidden(c, j, rank_active, n);
        par_ranges(c->threads, n * j->hblocks, R > 1, moe_down, j);
        float *slice = gath + (int64_t)r * j->RK * j->H;
        for (int64_t a = 0; a < j->RK; a++)
            if (shard_expert_owner(j->ids[a], N) == r)
                memcpy(slice + a * j->H, j->down + (int64_t)j->inv[a] * j->H, (size_t)j->H * sizeof *slice);
    }
    /* every simulated rank's gather buffer is this one arena buffer */
    void *bufs[COMM_MAX_RANKS];
    for (int32_t r = 0; r < N; r++)
        bufs[r] = gath;
    int st = comm_allgather(&c->comm, bufs, (size_t)(j->RK * j->H) * sizeof *gath, err);
    if (st)
        return st;
    par_for(c->threads, R, false, moe_combine_ep, j);
    return MOERT_OK;
}

static int run_moe(cpu_ctx *c, const sched_op *op, const exec_step *st, moert_err *err)
{
    const sched *s = c->s;
    int64_t E = s->topo.num_experts, K = s->topo.num_experts_per_tok;
    int64_t H = s->topo.hidden_size, I = s->topo.moe_intermediate_size, R = st->n_rows;
    const float *xn = fbuf(c, op->in[0]);
    const int32_t *ids = (const int32_t *)c->ptr[op->in[2]];
    /* index scratch: offsets [E+1], cursors [E], active experts [E], order [R*K], inverse [R*K] */
    int32_t *offs = (int32_t *)c->ptr[op->scratch[0]];
    int32_t *cursor = offs + E + 1, *active = cursor + E, *order = active + E;
    int32_t *inv = order + s->max_rows * K;
    float *gate = fbuf(c, op->scratch[1]);

    memset(offs, 0, (size_t)(E + 1) * sizeof *offs);
    for (int64_t a = 0; a < R * K; a++)
        offs[ids[a] + 1]++;
    int64_t n_active = 0;
    for (int64_t e = 0; e < E; e++) {
        if (offs[e + 1])
            active[n_active++] = (int32_t)e;
        offs[e + 1] += offs[e];
        cursor[e] = offs[e];
    }
    for (int64_t a = 0; a < R * K; a++) { /* token order within each expert */
        int32_t p = cursor[ids[a]]++;
        order[p] = (int32_t)a;
        inv[a] = p;
    }
    const float **xrows = (const float **)c->ptr[c->rowptrs];
    const float **hrows = xrows + s->max_rows * K;
    for (int64_t p = 0; p < R * K; p++) {
        xrows[p] = xn + (order[p] / K) * H;
        hrows[p] = gate + p * I;
    }
    const void **qx = NULL;
    if (c->qact && H % 32 == 0) { /* each token's row quantized once, for its k experts */
        size_t qb = ops_qact_row_bytes(H);
        qact_rows(c, NULL, xn, R, H, H, c->qrows_a, NULL);
        for (int64_t p = 0; p < R * K; p++)
            c->qptr_a[p] = c->qrows_a + (size_t)(order[p] / K) * qb;
        qx = c->qptr_a;
    }
    moe_job j = {c, &c->w->layers[op->layer], offs, active, inv, xrows, hrows, qx,
                 c->qact && I % 32 == 0 ? c->qptr_b : NULL, fbuf(c, op->in[1]), gate, fbuf(c, op->scratch[2]), fbuf(c, op->scratch[3]),
                 fbuf(c, op->out[0]), hrows + s->max_rows * K, K, H, I,
                 (I + BLOCK - 1) / BLOCK, (H + BLOCK - 1) / BLOCK, ids, NULL, 0, c->ranks};
    if (c->ranks > 1) /* the cursors are done with: they list each rank's experts */
        return moe_expert_parallel(c, &j, active, n_active, cursor, R, err);
    /* Prefill: experts carry unequal loads, so items are handed out dynamically; a decode
     * step's items are equal and a static split keeps each thread's weights contiguous. */
    par_ranges(c->threads, n_active * j.iblocks, R > 1, moe_gate_up, &j);
    moe_qact_hidden(c, &j, active, n_active);
    par_ranges(c->threads, n_active * j.hblocks, R > 1, moe_down, &j);
    par_for(c->threads, R, false, moe_combine, &j);
    return MOERT_OK;
}

typedef struct mlp_job {
    cpu_ctx *c;
    const model_tensor *g, *u;
    const float *const *xrows;
    const void *const *qrows; /* act-q8, or NULL */
    float *gate, *up;
    int64_t R, H, I;
} mlp_job;

static void mlp_gate_up(void *ctx, int64_t lo, int64_t hi, int tid)
{
    const mlp_job *j = ctx;
    int64_t I = j->I, n0 = lo * BLOCK, n1 = hi * BLOCK < I ? hi * BLOCK : I;
    gate_up_swiglu(j->gate, j->up, j->xrows, j->qrows, j->R, j->g, j->u, j->H, I, n0, n1,
                   thread_panel(j->c, tid));
}

static void run_mlp(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    const sched *s = c->s;
    int64_t H = s->topo.hidden_size, I = s->topo.intermediate_size, R = st->n_rows;
    float *gate = fbuf(c, op->scratch[0]);
    const float **xrows = row_pointers(c, fbuf(c, op->in[0]), R, H, 0);
    mlp_job j = {c, backend_weight(c->w, SCHED_W_MLP, op->layer, 0),
                 backend_weight(c->w, SCHED_W_MLP, op->layer, 1), xrows,
                 qact_rows(c, xrows, NULL, R, H, 0, c->qrows_a, c->qptr_a), gate, fbuf(c, op->scratch[1]), R, H, I};
    par_ranges(c->threads, (I + BLOCK - 1) / BLOCK, false, mlp_gate_up, &j);
    const model_tensor *segs[1] = {backend_weight(c->w, SCHED_W_MLP, op->layer, 2)};
    matmul_segments(c, row_pointers(c, gate, R, I, 1), R, fbuf(c, op->out[0]), H, segs, 1, I);
}

static void run_logits(cpu_ctx *c, const sched_op *op, const exec_step *st)
{
    const sched *s = c->s;
    int64_t H = s->topo.hidden_size;
    const float *fn = fbuf(c, op->in[0]);
    int64_t first = s->logit_rows == 1 ? st->n_rows - 1 : 0;
    const float **rows = row_pointers(c, fn + first * H, st->n_rows - first, H, 0);
    const model_tensor *segs[1] = {&c->w->lm_head};
    matmul_segments(c, rows, st->n_rows - first, fbuf(c, op->out[0]), s->topo.vocab_size, segs, 1,
                    H);
}

static int cpu_run(backend *b, const sched_op *op, const exec_step *st, moert_err *err)
{
    cpu_ctx *c = b->ctx;
    switch (op->kind) {
    case SCHED_EMBED: run_embed(c, op, st); break;
    case SCHED_RMSNORM: run_rmsnorm(c, op, st); break;
    case SCHED_MATMUL: run_matmul(c, op, st); break;
    case SCHED_QK_NORM_ROPE: run_qk_norm_rope(c, op, st); break;
    case SCHED_KV_STORE: run_kv_store(c, op, st); break;
    case SCHED_ATTENTION: run_attention(c, op, st); break;
    case SCHED_ADD: run_add(c, op, st); break;
    case SCHED_ROUTE: {
        int rc = run_route(c, op, st, err);
        if (rc)
            return rc;
        break;
    }
    case SCHED_MOE: {
        int rc = run_moe(c, op, st, err);
        if (rc)
            return rc;
        break;
    }
    case SCHED_MLP: run_mlp(c, op, st); break;
    case SCHED_LOGITS: run_logits(c, op, st); break;
    case SCHED_TRACE:
        return trace_capture_host(c->trace, op, st, (const void *)c->ptr[op->in[0]],
                                  op->in[1] >= 0 ? (const void *)c->ptr[op->in[1]] : NULL,
                                  c->ptr[op->out[0]], err);
    default:
        return err_set(err, MOERT_EINTERNAL, "cpu backend: unknown op kind %d", (int)op->kind);
    }
    if (c->sim != OPS_F32)
        sim_round(c, op, st);
    return MOERT_OK;
}

const backend_vtable backend_cpu_vtable = {
    .name = "cpu",
    .init = cpu_init,
    .write = cpu_write,
    .begin_step = cpu_begin_step,
    .run = cpu_run,
    .end_step = cpu_end_step,
    .sync = cpu_sync,
    .read = cpu_read,
    .host_ptr = cpu_host_ptr,
    .shutdown = cpu_shutdown,
};
