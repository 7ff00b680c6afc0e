/* backend_hip: the schedule on one GPU through HIP (AMD) or CUDA (NVIDIA, via hip_compat.h).
 *
 * Init: device 0; ONE device arena with every schedule buffer at its planned offset; a host
 * mirror of the same size (anonymous mmap: untouched pages cost nothing) behind host_ptr()
 * and read(); ONE device weights region (runtime/wlayout.h) into which every bound tensor
 * is uploaded once in its own dtype, block-quantized weights staying quantized (the kernels
 * dequantize them in registers), through pinned staging, chunked async copies and a
 * progress bar; the experts of a layer are contiguous, so a kernel finds expert e at base +
 * e * stride (bytes).  Those two are the only device allocations: the backend's scratch
 * (step parameters, error flag, trace header shadows, decode attention partials, the MoE
 * tile table, arg-max partials) is its planner request (hip_scratch.h), placed in the arena
 * by the plan and proven by the checker like every schedule buffer.
 *
 * Steps: per-step values (pos0, n_rows, generation step, first traced row, parity, and the
 * input ids of a step of at most HIP_PARAM_TOKENS tokens, which write() holds back) go to a
 * device "step params" block with one async copy in begin_step; kernels read them there.
 * The greedy pick lands in mapped host memory, so reading it needs no copy.
 * The first decode step is captured as a graph and replayed by every later decode step
 * (begin_step sets *ops_done).  Prefill steps run eagerly.  Nothing is allocated per step.
 *
 * Fusions (pure launch savings; the buffers hold what the unfused ops would write): a
 * residual ADD followed by the RMSNORM of the same stream (past TRACE ops of that stream) is
 * one kernel, and a KV_STORE right after its layer's QK_NORM_ROPE is done by that kernel.
 * (Three more decode fusions were measured slower under graphs + PDL and removed: see
 * hip/NOTES.md.)
 *
 * Debugging: MOERT_HIP_DEBUG=1 synchronises after every op and checks the launch status
 * and the device guard flag; MOERT_HIP_CHECK=1 runs a CPU backend alongside and compares
 * every op's output with the CPU kernels on identical inputs on the first prefill and first
 * decode step (MOERT_HIP_CHECK=all: every step), printing each op beyond 1e-4 relative L2
 * error; MOERT_HIP_NOGRAPH=1 runs decode steps eagerly.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "hip_compat.h"
#include "hip_host.h"
#include "hip_gemm_mma.h"
#include "hip_kernels.h"
#include "hip_qact.h"
#include "hip_gemm_qmma.h"

extern "C" {
#include "../arena/arena.h"
#include "../ops/ops.h"
#include "../runtime/backend.h"
#include "../runtime/err.h"
#include "../runtime/trace/trace.h"
#include "../runtime/wlayout.h"
}

#define STAGE_BYTES ((size_t)64 << 20) /* pinned staging per buffer (two of them) */
#define WRITE_STAGE_BYTES ((size_t)1 << 20)

typedef struct dev_tensor {
    const unsigned char *d; /* NULL when absent */
    int dt;
    long long rows, cols;
} dev_tensor;

typedef struct dev_layer {
    dev_tensor attn_norm, q, k, v, o, q_norm, k_norm, ffn_norm, router;
    dev_tensor mlp_gate, mlp_up, mlp_down;
    bool sparse;
    dev_tensor gate, up, down;         /* expert 0 of each part; expert e at + e * stride */
    long long estride_gu, estride_d;   /* bytes */
} dev_layer;

/* OPF_DEC_*: one-row steps only (plan_dec_fusions). */
enum { OPF_SKIP = 1, OPF_FUSE_NEXT = 2, OPF_DEC_EPI = 4, OPF_DEC_NORM = 8, OPF_DEC_SKIP = 16 };

typedef struct hip_ctx {
    const sched *s;
    const uint64_t *offsets;
    const model_weights *w;
    trace_rt *trace;
    int32_t threads;

    hipDeviceProp_t props;
    int sms;
    size_t smem_optin;
    hipStream_t stream;
    hipEvent_t ev_params[2], ev_write; /* per step parity: its parameter copy */
    hipEvent_t ev_pick[2];             /* per step parity: the step has ended (its pick is home) */
    bool ev_ok;

    unsigned char *dev_arena;
    uint64_t arena_bytes;
    arena mirror;
    void *reg_base;           /* host-registered (pinned) part of the mirror: logits */
    size_t reg_bytes;

    unsigned char *dev_weights;
    uint64_t weights_bytes;
    dev_tensor embed, final_norm, lm_head;
    dev_layer *layers;

    hip_step_params *d_params; /* the scratch below: planned, in the arena */
    int *d_err;
    int32_t *d_argmax;         /* the device's greedy pick of the last step */
    float *d_amax_v;           /* its per-block partials */
    int *d_attn_tickets;       /* per kv head: decode attention splits done */
    int *d_amax_i;
    int32_t *h_argmax;         /* pinned; mapped: one slot per step parity */
    int32_t *m_argmax;         /* h_argmax as the device sees it (mapped), or NULL */
    unsigned long long *d_shadow;
    float *d_attn_part;
    int32_t *d_tiles;
    /* numerics act-q8 (hip_scratch.h's HIP_REQ_QACT): region A (matmul inputs, token rows)
     * and B (MoE / MLP hidden rows), quantized in ops_qact_row's layout */
    bool qact;
    /* runtime.batch_invariant: one-row steps (decode) take the multi-row (prefill) kernels, so
     * a token's bits do not depend on whether it came in a prompt or as a decode step */
    bool batch_inv;
    unsigned char *d_qa, *d_qb;
    uint16_t *d_planes;          /* the GEMMs' activation planes (hip_scratch_planes) */
    hip_planes_layout planes;
    bool no_splitk;              /* MOERT_HIP_SPLITK=0: dense GEMMs never split k */
    bool no_x4;                  /* MOERT_HIP_X4=0: Q8_0 / Q6_K keep their file layout */
    int max_splits, max_tiles, n_trace;

    hip_step_params *h_params; /* pinned, one per step parity (the host begins step N + 1
                                * while step N's copy may still be queued) */
    int32_t pend_tok[HIP_PARAM_TOKENS]; /* input ids written since the last step (hip_write) */
    int n_pend_tok;
    unsigned char *h_write;    /* pinned staging of small writes */

    uint8_t *opf;              /* per op: OPF_* */
    int32_t *dec_with;         /* per op: [2 op] the RMSNORM (OPF_DEC_NORM), [2 op + 1] the ADD (OPF_DEC_EPI) it does */
    float eps, attn_scale;

    /* trace plan */
    bool tr_tensor, tr_overwrite, tr_all;
    long long tr_cap;

    /* decode graph */
    bool use_graph, capturing, graph_ready, graph_failed, graph_launched;
    /* one-row steps capture every trace slot at the step's end (see plan_trace_batch):
     * tr_snap[2 * op + o]: where op's launch also writes its output o (NULL: nowhere);
     * d_tr_tab: the narrow slots' capture arguments (device); tr_wide: the other slots */
    bool tr_batch, tr_batch_step, tr_wide1;
    /* captures beside the chain (trace_fork): [0] the narrow slots, [1] the wide ones, each
     * on its own stream, forked after op tr_fork_op[i] (-1: run on the chain at the step's
     * end) and joined at the step's end; MOERT_HIP_TRACE_SERIAL=1 keeps both on the chain,
     * MOERT_HIP_TRACE_NOCAPTURE=1 (measurement only: records stay empty) launches none */
    hipStream_t tr_ss[2];
    hipEvent_t tr_fork[2], tr_join[2];
    int32_t tr_fork_op[2];
    bool tr_forked[2], tr_nocap;
    float **tr_snap;
    float *d_tr_snap;
    hip_trace_args *d_tr_tab;
    int n_tr_tab, n_tr_wide;
    hip_trace_args *tr_wide;
    hipGraph_t graph;
    hipGraphExec_t gexec;

    bool debug;

    /* MOERT_HIP_CHECK */
    int check;                 /* 0 off, 1 first prefill + first decode, 2 every step */
    bool checked_prefill, checked_decode, checking_step;
    backend cpu;
    unsigned char *chk_host;
    uint64_t chk_bytes;
    long long chk_ops, chk_bad;
    double chk_worst;      /* largest rel L2 error of a float output in this step */
    int chk_worst_op;

    /* MOERT_HIP_PROFILE=ops: eager steps with an event pair around every op, summed per
     * op kind; =steps: events around each whole step (graph replay included) */
    int profile;               /* 0 off, 1 steps, 2 ops */
    hipEvent_t *prof_ev;       /* 2 per op (ops mode), 2 per step (steps mode) */
    double prof_ms[2][SCHED_KIND_COUNT];
    long long prof_calls[2][SCHED_KIND_COUNT];
    double prof_step_ms[2], prof_host_ms[2];
    long long prof_steps[2];
    double prof_t0;
} hip_ctx;

/* ---- errors ------------------------------------------------------------------------- */

static int hip_fail(moert_err *err, hipError_t e, const char *what)
{
    return err_set(err, MOERT_EINTERNAL, "backend hip: %s: %s", what, hipGetErrorString(e));
}

#define HIP_TRY(call, what)                                                                       \
    do {                                                                                          \
        hipError_t e_ = (call);                                                                   \
        if (e_ != hipSuccess)                                                                     \
            return hip_fail(err, e_, (what));                                                     \
    } while (0)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static unsigned char *dbuf(hip_ctx *c, int32_t id)
{
    return c->dev_arena + c->offsets[id];
}
static float *fbuf(hip_ctx *c, int32_t id)
{
    return (float *)(c->dev_arena + c->offsets[id]);
}

static int32_t op_index(hip_ctx *c, const sched_op *op)
{
    return (int32_t)(op - c->s->ops);
}

/* Where op oi's launch also writes a copy of its output o this step (a traced row's
 * snapshot, see plan_trace_batch), or NULL. */
static float *snap_of(hip_ctx *c, int32_t oi, int o)
{
    return c->tr_batch_step && c->tr_snap ? c->tr_snap[2 * oi + o] : NULL;
}

/* Whether a step of `rows` rows takes the one-row (decode) kernels: GEMVs, the split
 * attention, the fused expert FFNs.  Never in batch-invariant mode. */
static bool one_row(const hip_ctx *c, long long rows)
{
    return rows == 1 && !c->batch_inv;
}

/* ---- weights ------------------------------------------------------------------------ */

/* The kernel type of a weight dtype: HIP_DT_* equals ops_dtype for every type moert computes
 * with (plain floats and ggml's block types); -1 otherwise. */
static int dt_of(st_dtype t)
{
    int o = st_dtype_ops(t);
    return o >= 0 && o < HIP_DT_OPS_COUNT ? o : -1;
}

/* The kernel type of a weight on the device: its own, or the X4 regrouping of its rows
 * (hip_kernels.h) that the upload writes, unless MOERT_HIP_X4=0 (A/B: the same bits). */
static int dev_dt(const hip_ctx *c, const model_tensor *t)
{
    int dt = dt_of(t->dtype);
    return c->no_x4 || dt < 0 ? dt : hip_dt_device(dt, t->cols);
}

static void set_dev(hip_ctx *c, dev_tensor *d, const model_tensor *t, uint64_t off)
{
    d->d = c->dev_weights + off;
    d->dt = dev_dt(c, t);
    d->rows = t->rows;
    d->cols = t->cols;
}

/* The norm kernels read plain float weights only (model_bind admits nothing else for
 * vectors; checked here so that a change there cannot make them misread). */
static int check_norm(const model_tensor *t, moert_err *err)
{
    int dt = dt_of(t->dtype);
    if (dt == HIP_DT_F32 || dt == HIP_DT_BF16 || dt == HIP_DT_F16)
        return MOERT_OK;
    return err_set(err, MOERT_EFORMAT, "backend hip: norm weight %s has dtype %s (need F32, BF16 or F16)",
                   t->name ? t->name : "?", st_dtype_name(t->dtype));
}

/* Allocates the device weights region planned by wlayout_plan (every bound tensor once, in
 * its own dtype; each layer's experts contiguous per part) and uploads it. */
static int upload_weights(hip_ctx *c, moert_err *err)
{
    const model_weights *w = c->w;
    const cfg_topology *t = &c->s->topo;
    int64_t L = t->num_hidden_layers;
    wlayout p;
    int st = wlayout_plan(w, &p, err);
    if (st)
        return err_prefix(err, "backend hip");
    c->layers = (dev_layer *)calloc((size_t)(L > 0 ? L : 1), sizeof *c->layers);
    if (!c->layers) {
        st = err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
        goto out;
    }
    if ((st = check_norm(&w->final_norm, err)))
        goto out;
    for (int64_t l = 0; l < L; l++) {
        const model_layer *ml = &w->layers[l];
        if ((st = check_norm(&ml->attn_norm, err)) || (st = check_norm(&ml->q_norm, err)) ||
            (st = check_norm(&ml->k_norm, err)) || (st = check_norm(&ml->ffn_norm, err)))
            goto out;
    }
    c->weights_bytes = p.bytes ? p.bytes : 256;
    {
        hipError_t e = hipMalloc((void **)&c->dev_weights, c->weights_bytes);
        if (e != hipSuccess) {
            size_t fr = 0, tot = 0;
            (void)hipMemGetInfo(&fr, &tot);
            st = err_set(err, MOERT_ENOMEM,
                         "backend hip: cannot allocate %.2f GB for the weights on %s (%.2f GB free "
                         "of %.2f): %s",
                         (double)c->weights_bytes / 1e9, c->props.name, (double)fr / 1e9,
                         (double)tot / 1e9, hipGetErrorString(e));
            c->dev_weights = NULL;
            goto out;
        }
    }
    set_dev(c, &c->embed, &w->embed, p.embed);
    set_dev(c, &c->final_norm, &w->final_norm, p.final_norm);
    set_dev(c, &c->lm_head, &w->lm_head, p.lm_head);
    for (int64_t l = 0; l < L; l++) {
        const model_layer *ml = &w->layers[l];
        const wlayout_layer *q = &p.layers[l];
        dev_layer *d = &c->layers[l];
        d->sparse = ml->sparse;
        set_dev(c, &d->attn_norm, &ml->attn_norm, q->attn_norm);
        set_dev(c, &d->q, &ml->q, q->q);
        set_dev(c, &d->k, &ml->k, q->k);
        set_dev(c, &d->v, &ml->v, q->v);
        set_dev(c, &d->o, &ml->o, q->o);
        set_dev(c, &d->q_norm, &ml->q_norm, q->q_norm);
        set_dev(c, &d->k_norm, &ml->k_norm, q->k_norm);
        set_dev(c, &d->ffn_norm, &ml->ffn_norm, q->ffn_norm);
        if (ml->sparse) {
            set_dev(c, &d->router, &ml->router, q->router);
            set_dev(c, &d->gate, &ml->gate[0], q->gate);
            set_dev(c, &d->up, &ml->up[0], q->up);
            set_dev(c, &d->down, &ml->down[0], q->down);
            d->estride_gu = (long long)q->estride_gu;
            d->estride_d = (long long)q->estride_d;
        } else {
            set_dev(c, &d->mlp_gate, &ml->mlp_gate, q->mlp_gate);
            set_dev(c, &d->mlp_up, &ml->mlp_up, q->mlp_up);
            set_dev(c, &d->mlp_down, &ml->mlp_down, q->mlp_down);
        }
    }

    /* Upload: segments in device order, packed into a pinned staging window; two windows
     * alternate so the host fills one while the other is copied. */
    {
        unsigned char *stage[2] = {NULL, NULL};
        hipEvent_t ev[2];
        bool ev_made[2] = {false, false}, busy[2] = {false, false};
        size_t sbytes = STAGE_BYTES;
        if (p.bytes < sbytes)
            sbytes = (size_t)(p.bytes ? p.bytes : 256);
        double t0 = now_s();
        hipError_t e = hipSuccess;
        for (int b = 0; b < 2 && e == hipSuccess; b++) {
            e = hipHostMalloc((void **)&stage[b], sbytes, hipHostMallocDefault);
            if (e == hipSuccess) {
                e = hipEventCreateWithFlags(&ev[b], hipEventDisableTiming);
                ev_made[b] = e == hipSuccess;
            }
        }
        int cur = 0;
        uint64_t win = 0, used = 0, done = 0;
        auto flush = [&]() -> hipError_t {
            if (used == 0)
                return hipSuccess;
            hipError_t fe = hipMemcpyAsync(c->dev_weights + win, stage[cur], used,
                                           hipMemcpyHostToDevice, c->stream);
            if (fe == hipSuccess)
                fe = hipEventRecord(ev[cur], c->stream);
            busy[cur] = true;
            done += used;
            hip_host_progress(done, p.bytes, now_s() - t0);
            cur ^= 1;
            if (fe == hipSuccess && busy[cur])
                fe = hipEventSynchronize(ev[cur]);
            busy[cur] = false;
            return fe;
        };
        for (size_t i = 0; i < p.n_segs && e == hipSuccess; i++) {
            const wlayout_seg *sg = &p.segs[i];
            uint64_t pos = sg->off, left = sg->t->nbytes;
            const unsigned char *src = (const unsigned char *)sg->t->data;
            /* an X4 tensor is regrouped on its way into the window, whole groups at a time */
            const int ddt = dev_dt(c, sg->t), gb = hip_dt_x4_group_bytes(ddt);
            if (gb && left % (uint64_t)gb) {
                e = hipErrorInvalidValue; /* hip_dt_device promised whole groups */
                break;
            }
            while (left > 0 && e == hipSuccess) {
                if (pos >= win + sbytes || pos < win + used || win + sbytes - pos < (uint64_t)gb) {
                    /* the segment starts past this window (or a group would not fit): flush
                     * and open one at pos */
                    if ((e = flush()) != hipSuccess)
                        break;
                    win = pos;
                    used = 0;
                }
                uint64_t room = win + sbytes - pos, n = left < room ? left : room;
                if (gb) {
                    n -= n % (uint64_t)gb;
                    hip_dt_x4_pack(ddt, stage[cur] + (pos - win), src, (size_t)n);
                } else {
                    hip_host_memcpy(stage[cur] + (pos - win), src, (size_t)n);
                }
                used = pos - win + n;
                pos += n;
                src += n;
                left -= n;
            }
        }
        if (e == hipSuccess)
            e = flush();
        if (e == hipSuccess)
            e = hipStreamSynchronize(c->stream);
        if (e == hipSuccess && done < p.bytes)
            hip_host_progress(p.bytes, p.bytes, now_s() - t0);
        for (int b = 0; b < 2; b++) {
            if (ev_made[b])
                (void)hipEventDestroy(ev[b]);
            if (stage[b])
                (void)hipHostFree(stage[b]);
        }
        if (e != hipSuccess)
            st = hip_fail(err, e, "uploading weights");
    }
out:
    wlayout_free(&p);
    return st;
}

static const dev_tensor *dev_weight(const hip_ctx *c, sched_weight role, int32_t layer)
{
    switch (role) {
    case SCHED_W_EMBED: return &c->embed;
    case SCHED_W_FINAL_NORM: return &c->final_norm;
    case SCHED_W_LM_HEAD: return &c->lm_head;
    default: break;
    }
    if (layer < 0 || layer >= c->s->topo.num_hidden_layers)
        return NULL;
    const dev_layer *L = &c->layers[layer];
    switch (role) {
    case SCHED_W_ATTN_NORM: return &L->attn_norm;
    case SCHED_W_Q: return &L->q;
    case SCHED_W_K: return &L->k;
    case SCHED_W_V: return &L->v;
    case SCHED_W_O: return &L->o;
    case SCHED_W_Q_NORM: return &L->q_norm;
    case SCHED_W_K_NORM: return &L->k_norm;
    case SCHED_W_FFN_NORM: return &L->ffn_norm;
    case SCHED_W_ROUTER: return L->sparse ? &L->router : NULL;
    default: return NULL;
    }
}

/* ---- init / shutdown ------------------------------------------------------------------ */

static bool env_on(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

/* Set and not on: a default-on switch turned off ("0" or empty). */
static bool env_off(const char *name)
{
    return getenv(name) && !env_on(name);
}

static void hip_shutdown(backend *b);
static bool plan_trace_batch(hip_ctx *c, size_t *snap_floats);
static_assert(sizeof(hip_trace_args) <= HIP_TRACE_ARGS_MAX_BYTES, "hip_scratch.h's bound on a capture table entry");
static void plan_trace_batch_fill(hip_ctx *c);
static void plan_trace_forks(hip_ctx *c);
static int trace_fork(hip_ctx *c, int side, moert_err *err);

/* The op that op i would fuse with: the next one, except that a residual ADD looks past
 * TRACE ops capturing its stream (the fused norm writes another buffer, so they read the
 * same x either way, and a traced step keeps the fusion). */
static int32_t fuse_partner(const sched *s, int32_t i)
{
    int32_t j = i + 1;
    if (s->ops[i].kind == SCHED_ADD)
        while (j < s->n_ops && s->ops[j].kind == SCHED_TRACE && s->ops[j].in[0] == s->ops[i].out[0] &&
               s->ops[j].in[1] == SCHED_NO_BUF)
            j++;
    return j;
}

/* Decides the fusions (see the file comment). */
static void plan_fusions(hip_ctx *c)
{
    const sched *s = c->s;
    for (int32_t i = 0; i + 1 < s->n_ops; i++) {
        int32_t j = fuse_partner(s, i);
        if (j >= s->n_ops)
            continue;
        const sched_op *op = &s->ops[i], *nx = &s->ops[j];
        if (op->kind == SCHED_ADD && nx->kind == SCHED_RMSNORM && nx->in[0] == op->out[0] &&
            nx->n == op->n && !(c->opf[i] & OPF_SKIP)) {
            c->opf[i] |= OPF_FUSE_NEXT;
            c->opf[j] |= OPF_SKIP;
        } else if (op->kind == SCHED_QK_NORM_ROPE && nx->kind == SCHED_KV_STORE &&
                   nx->in[0] == op->out[0] && nx->layer == op->layer) {
            c->opf[i] |= OPF_FUSE_NEXT;
            c->opf[j] |= OPF_SKIP;
        }
    }
}

/* ---- decode fusions ------------------------------------------------------------------
 * In a one-row step the RMSNorm before a GEMV is computed by the GEMV's blocks (each holds
 * the whole row; hip_gemv_args), and the residual ADD before that norm by the op whose
 * output it adds (the o GEMV, the MoE or the dense MLP: their epilogues).  The norm and the
 * ADD then launch nothing: two latency-bound kernels fewer per layer, with the unfused
 * kernels' bits.  Prefill keeps the kernels apart.  Only TRACE ops may sit between the
 * partners (a one-row step captures them at its end, from the same rows or snapshots), none
 * the point where the capture forks beside the chain; check mode (each op against the CPU),
 * per-op profiling, inline captures and MOERT_HIP_DECFUSE=0 keep them apart; so does
 * act-q8's quantizing path (block-typed weights), which takes neither prologue nor epilogue. */

/* Whether a matmul whose segments include a block type (any_block) takes act-q8's path. */
static bool matmul_q8_takes(const hip_ctx *c, const sched_op *op, bool any_block)
{
    return c->qact && any_block && op->k % 32 == 0; /* inputs of whole 32-blocks */
}

static bool plain_gemv_takes(const hip_ctx *c, const sched_op *op, bool norm)
{
    if (op->kind != SCHED_MATMUL || op->w[0] == SCHED_W_NONE)
        return false;
    bool any_block = false;
    for (int i = 0; i < 3 && op->w[i] != SCHED_W_NONE; i++) {
        const dev_tensor *d = dev_weight(c, op->w[i], op->layer);
        if (!d || !d->d || ((uintptr_t)d->d & 15u) || (norm && !hip_gemv_norm_takes(d->dt, op->k)))
            return false;
        any_block = any_block || hip_qact_takes(d->dt);
    }
    return !matmul_q8_takes(c, op, any_block);
}

static bool ffn_q8_takes(const hip_ctx *c, const dev_tensor *g, const dev_tensor *u, const dev_tensor *d,
                         long long H, long long I);

/* Whether op p (a MATMUL, MoE or MLP) can add its decode output into the residual. */
static bool epi_takes(const hip_ctx *c, const sched_op *p)
{
    if (p->kind == SCHED_MATMUL)
        return plain_gemv_takes(c, p, false);
    if (p->kind != SCHED_MOE && p->kind != SCHED_MLP)
        return false;
    const dev_layer *L = &c->layers[p->layer];
    long long H = c->s->topo.hidden_size;
    if (p->kind == SCHED_MOE)
        return L->sparse && L->gate.d && !ffn_q8_takes(c, &L->gate, &L->up, &L->down, H, c->s->topo.moe_intermediate_size);
    return !L->sparse && L->mlp_gate.d && !ffn_q8_takes(c, &L->mlp_gate, &L->mlp_up, &L->mlp_down, H, c->s->topo.intermediate_size);
}

/* The non-TRACE op before op i (-1: none, or the capture's fork point lies between). */
static int32_t dec_prev(const hip_ctx *c, int32_t i)
{
    for (int32_t j = i - 1; j >= 0; j--) {
        if (c->s->ops[j].kind != SCHED_TRACE)
            return j;
        if (j == c->tr_fork_op[0] || j == c->tr_fork_op[1])
            return -1;
    }
    return -1;
}

/* Ops the last init moved into a neighbour (backend_hip_decfusions). */
static int g_dec_fused;

extern "C" int backend_hip_decfusions(void)
{
    return g_dec_fused;
}

static int plan_dec_fusions(hip_ctx *c, moert_err *err)
{
    const sched *s = c->s;
    g_dec_fused = 0;
    /* inline captures (MOERT_HIP_TRACE_INLINE=1) would read a fused norm's row before its GEMV */
    if (c->check || c->profile == 2 || (c->trace && c->n_trace > 0 && !c->tr_batch) ||
        env_off("MOERT_HIP_DECFUSE"))
        return MOERT_OK;
    c->dec_with = (int32_t *)malloc((size_t)(s->n_ops > 0 ? s->n_ops : 1) * 2 * sizeof *c->dec_with);
    if (!c->dec_with)
        return err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
    for (int32_t i = 0; i < 2 * s->n_ops; i++)
        c->dec_with[i] = -1;
    for (int32_t m = 0; m < s->n_ops; m++) {
        const sched_op *mm = &s->ops[m];
        if (mm->kind != SCHED_MATMUL || (c->opf[m] & OPF_SKIP) || !plain_gemv_takes(c, mm, true))
            continue;
        const int32_t j = dec_prev(c, m);
        if (j < 0)
            continue;
        const sched_op *nj = &s->ops[j];
        if (nj->kind != SCHED_RMSNORM || nj->out[0] != mm->in[0] || nj->n != mm->k)
            continue;
        if (c->opf[j] & OPF_SKIP) {
            /* the second half of an ADD + RMSNORM: the ADD moves into its y's producer */
            const int32_t i = dec_prev(c, j);
            if (i < 0 || s->ops[i].kind != SCHED_ADD || !(c->opf[i] & OPF_FUSE_NEXT) || fuse_partner(s, i) != j)
                continue;
            const int32_t p = dec_prev(c, i);
            if (p < 0 || s->ops[p].out[0] != s->ops[i].in[0] || (c->opf[p] & (OPF_SKIP | OPF_DEC_EPI)) ||
                !epi_takes(c, &s->ops[p]))
                continue;
            c->opf[p] |= OPF_DEC_EPI;
            c->dec_with[2 * p + 1] = i;
            c->opf[i] |= OPF_DEC_SKIP;
            g_dec_fused++;
        } else {
            c->opf[j] |= OPF_DEC_SKIP;
        }
        c->opf[m] |= OPF_DEC_NORM;
        c->dec_with[2 * m] = j;
        g_dec_fused++;
    }
    return MOERT_OK;
}

static int init_check(hip_ctx *c, const backend_init *in, moert_err *err)
{
    c->cpu.vt = &backend_cpu_vtable;
    c->cpu.ctx = NULL;
    backend_init ci = *in;
    ci.scratch0 = in->scratch0 + HIP_REQ_COUNT;
    if (ci.scratch0 + CPU_REQ_COUNT > c->s->n_bufs)
        return err_set(err, MOERT_EINTERNAL, "backend hip: the plan lacks the CPU scratch MOERT_HIP_CHECK needs");
    int st = backend_cpu_vtable.init(&c->cpu, &ci, err);
    if (st) {
        c->cpu.vt = NULL;
        return err_prefix(err, "backend hip: MOERT_HIP_CHECK needs a CPU backend");
    }
    uint64_t mx = 0;
    for (int32_t i = 0; i < c->s->n_bufs; i++)
        if (c->s->bufs[i].bytes > mx)
            mx = c->s->bufs[i].bytes;
    c->chk_bytes = mx ? mx : 64;
    c->chk_host = (unsigned char *)malloc(c->chk_bytes);
    if (!c->chk_host)
        return err_set(err, MOERT_ENOMEM, "backend hip: out of memory (check buffer)");
    fprintf(stderr, "hip check: comparing every op with the CPU kernels on %s\n",
            c->check == 2 ? "every step" : "the first prefill and the first decode step");
    return MOERT_OK;
}

static int hip_init(backend *b, const backend_init *in, moert_err *err)
{
    int n_dev = 0;
    hipError_t e = hipGetDeviceCount(&n_dev);
    if (e != hipSuccess || n_dev < 1)
        return err_set(err, MOERT_ENODEV, "backend hip: no GPU found (hipGetDeviceCount: %s)",
                       e != hipSuccess ? hipGetErrorString(e) : "0 devices");
    hip_ctx *c = (hip_ctx *)calloc(1, sizeof *c);
    if (!c)
        return err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
    b->ctx = c;
    c->tr_fork_op[0] = c->tr_fork_op[1] = -1;
    c->s = in->s;
    c->offsets = in->offsets;
    c->w = in->w;
    c->trace = (trace_rt *)in->trace;
    c->threads = in->threads;
    c->debug = env_on("MOERT_HIP_DEBUG");
    c->no_splitk = env_off("MOERT_HIP_SPLITK");
    c->no_x4 = env_off("MOERT_HIP_X4");
    c->check = hip_check_mode(); /* its CPU scratch is planned after ours (backend_requests) */
    hip_kernels_qstage_from_env();
    hip_kernels_sgpipe_from_env();
    hip_kernels_rows_from_env();
    /* programmatic dependent launch: Hopper and newer; MOERT_HIP_NOPDL=1 turns it off */
    const char *prof = getenv("MOERT_HIP_PROFILE");
    c->profile = !prof || !*prof || !strcmp(prof, "0") ? 0 : !strcmp(prof, "ops") ? 2 : 1;
    c->use_graph = !env_on("MOERT_HIP_NOGRAPH") && !c->debug && !c->check && c->profile != 2;
    const sched *s = c->s;
    const cfg_topology *t = &s->topo;
    c->eps = (float)t->rms_norm_eps;
    c->attn_scale = (float)(1.0 / sqrt((double)t->head_dim));
    int st = MOERT_OK;

#define INIT_TRY(call, what)                                                                      \
    do {                                                                                          \
        hipError_t e_ = (call);                                                                   \
        if (e_ != hipSuccess) {                                                                   \
            st = hip_fail(err, e_, (what));                                                       \
            goto fail;                                                                            \
        }                                                                                         \
    } while (0)

    INIT_TRY(hipSetDevice(0), "hipSetDevice(0)");
    INIT_TRY(hipGetDeviceProperties(&c->props, 0), "hipGetDeviceProperties");
#if !defined(MOERT_HIP_AMD)
    moert_set_pdl(c->props.major >= 9 && !env_on("MOERT_HIP_NOPDL"));
#endif
    c->sms = c->props.multiProcessorCount > 0 ? c->props.multiProcessorCount : 1;
    {
        int optin = 0;
        if (hipDeviceGetAttribute(&optin, MOERT_ATTR_SMEM_OPTIN, 0) !=
                hipSuccess ||
            optin <= 0)
            optin = 48 * 1024;
        c->smem_optin = (size_t)optin;
    }
    INIT_TRY(hipStreamCreateWithFlags(&c->stream, hipStreamNonBlocking), "hipStreamCreate");
    for (int i = 0; i < 2; i++) {
        INIT_TRY(hipEventCreateWithFlags(&c->ev_params[i], hipEventDisableTiming), "hipEventCreate");
        INIT_TRY(hipEventCreateWithFlags(&c->ev_pick[i], hipEventDisableTiming), "hipEventCreate");
    }
    if (c->profile) {
        int32_t nev = 2 * (c->s->n_ops + 1);
        c->prof_ev = (hipEvent_t *)calloc((size_t)nev, sizeof *c->prof_ev);
        if (!c->prof_ev)
            return err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
        for (int32_t i = 0; i < nev; i++)
            INIT_TRY(hipEventCreate(&c->prof_ev[i]), "hipEventCreate");
    }
    INIT_TRY(hipEventCreateWithFlags(&c->ev_write, hipEventDisableTiming), "hipEventCreate");
    c->ev_ok = true;

    /* the arena and its host mirror */
    c->arena_bytes = in->arena_bytes ? in->arena_bytes : 64;
    {
        hipError_t ea = hipMalloc((void **)&c->dev_arena, c->arena_bytes);
        if (ea != hipSuccess) {
            c->dev_arena = NULL;
            st = err_set(err, MOERT_ENOMEM, "backend hip: cannot allocate the %.2f GB arena on %s: %s",
                         (double)c->arena_bytes / 1e9, c->props.name, hipGetErrorString(ea));
            goto fail;
        }
    }
    INIT_TRY(hipMemsetAsync(c->dev_arena, 0, c->arena_bytes, c->stream), "clearing the arena");
    if ((st = arena_init(&c->mirror, c->arena_bytes, err)))
        goto fail;
    {
        /* pin the pages of the logits buffer so the per-step read is a direct DMA */
        long pg = sysconf(_SC_PAGESIZE);
        uintptr_t lo = (uintptr_t)(c->mirror.base + c->offsets[s->known.logits]);
        uintptr_t hi = lo + s->bufs[s->known.logits].bytes;
        lo &= ~(uintptr_t)(pg - 1);
        hi = (hi + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
        if (hipHostRegister((void *)lo, hi - lo, hipHostRegisterDefault) == hipSuccess) {
            c->reg_base = (void *)lo;
            c->reg_bytes = hi - lo;
        } else {
            (void)hipGetLastError(); /* not fatal: reads go through pageable memory */
        }
    }

    /* the backend's scratch: its planned requests (hip_scratch.h), carved from the arena,
     * which the clear above zeroed */
    {
        int32_t s0 = in->scratch0;
        c->n_trace = c->trace ? (int)trace_rt_count(c->trace) : 0;
        c->max_splits = (int)hip_scratch_max_splits(s);
        c->max_tiles = (int)hip_scratch_max_tiles(s);
        if (s0 < 0 || s0 + HIP_REQ_COUNT > s->n_bufs || hip_scratch_traced(s) != c->n_trace) {
            st = err_set(err, MOERT_EINTERNAL, "backend hip: the plan lacks this backend's scratch requests");
            goto fail;
        }
        unsigned char *flags = dbuf(c, s0 + HIP_REQ_FLAGS), *amax = dbuf(c, s0 + HIP_REQ_ARGMAX_PART);
        c->d_params = (hip_step_params *)dbuf(c, s0 + HIP_REQ_PARAMS);
        c->d_err = (int *)flags;
        c->d_argmax = (int32_t *)(flags + HIP_FLAGS_ARGMAX_OFFSET);
        c->d_amax_v = (float *)amax;
        c->d_amax_i = (int *)(amax + sizeof(float) * HIP_ARGMAX_BLOCKS);
        c->d_attn_tickets = (int *)dbuf(c, s0 + HIP_REQ_ATTN_TICKETS);
        c->d_shadow = (unsigned long long *)dbuf(c, s0 + HIP_REQ_SHADOW);
        c->d_attn_part = (float *)dbuf(c, s0 + HIP_REQ_ATTN_PART);
        c->d_tiles = (int32_t *)dbuf(c, s0 + HIP_REQ_MOE_TILES);
        c->qact = s->act_q8;
        c->batch_inv = s->batch_invariant;
        if (c->qact) {
            hip_qact_layout ql = hip_scratch_qact_layout(s);
            if (s->bufs[s0 + HIP_REQ_QACT].bytes < ql.bytes) {
                st = err_set(err, MOERT_EINTERNAL, "backend hip: the plan's act-q8 scratch is too small");
                goto fail;
            }
            c->d_qa = dbuf(c, s0 + HIP_REQ_QACT);
            c->d_qb = c->d_qa + ql.b_offset;
        }
        c->d_planes = (uint16_t *)dbuf(c, s0 + HIP_REQ_A_PLANES);
        c->planes = hip_scratch_planes(s);
    }
    /* mapped: the arg-max kernel stores the greedy pick straight into host memory, so reading
     * it costs no copy, only the wait for the step */
    if (hipHostMalloc((void **)&c->h_argmax, 2 * sizeof(int32_t), hipHostMallocMapped) == hipSuccess) {
        if (hipHostGetDevicePointer((void **)&c->m_argmax, c->h_argmax, 0) != hipSuccess) {
            c->m_argmax = NULL;
            (void)hipGetLastError();
        }
    } else {
        (void)hipGetLastError();
        INIT_TRY(hipHostMalloc((void **)&c->h_argmax, 2 * sizeof(int32_t), hipHostMallocDefault),
                 "allocating pinned memory");
    }
    INIT_TRY(hipHostMalloc((void **)&c->h_params, 2 * sizeof(hip_step_params), hipHostMallocDefault),
             "allocating pinned memory");
    memset(c->h_params, 0, 2 * sizeof *c->h_params);
    INIT_TRY(hipHostMalloc((void **)&c->h_write, WRITE_STAGE_BYTES, hipHostMallocDefault),
             "allocating pinned memory");

    /* shared-memory needs of this model */
    {
        int64_t kmax = t->hidden_size;
        if (s->q_dim > kmax)
            kmax = s->q_dim;
        if (t->moe_intermediate_size > kmax)
            kmax = t->moe_intermediate_size;
        if (t->intermediate_size > kmax)
            kmax = t->intermediate_size;
        size_t gemv_b = (size_t)kmax * sizeof(float);
        size_t down_b = (size_t)t->num_experts_per_tok * (size_t)t->moe_intermediate_size * sizeof(float);
        if ((size_t)t->intermediate_size * sizeof(float) > down_b)
            down_b = (size_t)t->intermediate_size * sizeof(float);
        size_t attn_b = hip_attn_smem_bytes((int)t->num_attention_heads,
                                            (int)t->num_key_value_heads, (int)t->head_dim);
        size_t need = gemv_b > down_b ? gemv_b : down_b;
        if (attn_b > need)
            need = attn_b;
        if (need > c->smem_optin) {
            st = err_set(err, MOERT_ECONFIG,
                         "backend hip: this model needs %zu bytes of shared memory per block "
                         "(GEMV rows %zu, expert activations %zu, attention %zu); %s allows %zu",
                         need, gemv_b, down_b, attn_b, c->props.name, c->smem_optin);
            goto fail;
        }
        INIT_TRY(hip_kernels_set_smem(gemv_b, down_b, attn_b), "raising the shared-memory limit");
    }

    if (c->trace) {
        const cfg_trace_plan *pl = trace_rt_plan(c->trace);
        c->tr_tensor = pl->mode == CFG_TRACE_TENSOR;
        c->tr_overwrite = pl->on_full == CFG_TRACE_OVERWRITE;
        c->tr_all = pl->positions == CFG_TRACE_ALL;
        c->tr_cap = pl->capacity;
    }

    c->opf = (uint8_t *)calloc((size_t)(s->n_ops > 0 ? s->n_ops : 1), 1);
    if (!c->opf) {
        st = err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
        goto fail;
    }
    plan_fusions(c);
    {
        /* one-row steps capture their trace slots at the end (MOERT_HIP_TRACE_INLINE=1: at each
         * TRACE op, as prefill always does; check mode compares each TRACE op, so inline too) */
        size_t snap_floats = 0;
        if (c->trace && c->n_trace > 0 && !c->check && !env_on("MOERT_HIP_TRACE_INLINE") &&
            plan_trace_batch(c, &snap_floats)) {
            c->tr_snap = (float **)calloc((size_t)s->n_ops * 2, sizeof *c->tr_snap);
            c->tr_wide = (hip_trace_args *)calloc((size_t)c->n_trace, sizeof *c->tr_wide);
            if (!c->tr_snap || !c->tr_wide) {
                st = err_set(err, MOERT_ENOMEM, "backend hip: out of memory");
                goto fail;
            }
            /* the planned region (hip_scratch.h): snapshots, the table, the wide partials */
            hip_trace_layout tl = hip_scratch_trace_layout(s, (int64_t)snap_floats);
            int32_t rq = in->scratch0 + HIP_REQ_TRACE_BATCH;
            if ((uint64_t)snap_floats * sizeof(float) > tl.snap_bytes_max ||
                tl.part_offset + (uint64_t)HIP_TRACE_WIDE_PART_BYTES * (uint64_t)c->n_tr_wide > (uint64_t)s->bufs[rq].bytes) {
                st = err_set(err, MOERT_EINTERNAL, "backend hip: the trace snapshots exceed their planned region");
                goto fail;
            }
            c->d_tr_snap = (float *)dbuf(c, rq);
            c->d_tr_tab = (hip_trace_args *)((unsigned char *)c->d_tr_snap + tl.tab_offset);
            size_t o_part = (size_t)tl.part_offset;
            plan_trace_batch_fill(c);
            for (int i = 0; i < c->n_tr_wide; i++)
                c->tr_wide[c->n_tr_tab + i].part =
                    (unsigned char *)c->d_tr_snap + o_part + (size_t)HIP_TRACE_WIDE_PART_BYTES * (size_t)i;
            INIT_TRY(hipMemcpy(c->d_tr_tab, c->tr_wide, sizeof(hip_trace_args) * (size_t)c->n_tr_tab,
                               hipMemcpyHostToDevice),
                     "uploading the trace table");
            c->tr_batch = true;
            c->tr_wide1 = env_on("MOERT_HIP_TRACE_WIDE1");
            c->tr_nocap = env_on("MOERT_HIP_TRACE_NOCAPTURE");
            if (!c->tr_nocap && !env_on("MOERT_HIP_TRACE_SERIAL"))
                plan_trace_forks(c);
            if (c->tr_fork_op[0] >= 0 || c->tr_fork_op[1] >= 0) {
                for (int i = 0; i < 2; i++) {
                    INIT_TRY(hipStreamCreateWithFlags(&c->tr_ss[i], hipStreamNonBlocking), "hipStreamCreate");
                    INIT_TRY(hipEventCreateWithFlags(&c->tr_fork[i], hipEventDisableTiming), "hipEventCreate");
                    INIT_TRY(hipEventCreateWithFlags(&c->tr_join[i], hipEventDisableTiming), "hipEventCreate");
                }
            }
        }
    }

    if ((st = upload_weights(c, err)))
        goto fail;
    if ((st = plan_dec_fusions(c, err)))
        goto fail;
    INIT_TRY(hipStreamSynchronize(c->stream), "init");
    if (c->check && (st = init_check(c, in, err)))
        goto fail;
    return MOERT_OK;
fail:
    hip_shutdown(b);
    return st;
#undef INIT_TRY
}

static void destroy_graph(hip_ctx *c)
{
    if (c->gexec)
        (void)hipGraphExecDestroy(c->gexec);
    if (c->graph)
        (void)hipGraphDestroy(c->graph);
    c->gexec = NULL;
    c->graph = NULL;
    c->graph_ready = false;
}

#if MOERT_HIP_TIMELINE
/* The timeline build (hip/NOTES.md "Profiling"): per stamp of a graph step, the gap to the next
 * stamp and the offset from the first, summed over the steps. */
static unsigned tl_line[MOERT_TL_MAX], tl_nk;
static double tl_gap[MOERT_TL_MAX], tl_off[MOERT_TL_MAX];
static long long tl_steps;
static void timeline_print(void)
{
    if (!tl_steps)
        return;
    double tot = 0;
    for (unsigned i = 0; i + 1 < tl_nk; i++)
        tot += tl_gap[i];
    fprintf(stderr, "timeline: %u stamps, %lld graph steps, first..last %.2f us\n", tl_nk, tl_steps,
            tot / (double)tl_steps);
    for (unsigned i = 0; i + 1 < tl_nk; i++)
        fprintf(stderr, "tl %4u line %5u gap %8.3f us at %9.3f\n", i, tl_line[i], tl_gap[i] / (double)tl_steps,
                tl_off[i] / (double)tl_steps);
}
#endif

static void print_profile(const hip_ctx *c)
{
#if MOERT_HIP_TIMELINE
    timeline_print();
#endif
    for (int ph = 0; ph < 2; ph++) {
        if (!c->prof_steps[ph])
            continue;
        double n = (double)c->prof_steps[ph];
        /* whether decode replayed its graph: a capture that failed (decoding eagerly) shows here */
        fprintf(stderr, "hip profile, %s (%lld steps%s): device %.3f ms/step, host %.3f ms/step\n",
                ph ? "decode" : "prefill", c->prof_steps[ph],
                c->profile == 2 ? ", eager, one event pair per op"
                : ph && c->graph_ready ? ", graph" : ph ? ", eager" : "",
                c->prof_step_ms[ph] / n, c->prof_host_ms[ph] / n);
        for (int k = 0; k < SCHED_KIND_COUNT && c->profile == 2; k++)
            if (c->prof_calls[ph][k])
                fprintf(stderr, "  %-13s %9.4f ms/step  %6.1f us/call  (%lld calls)\n",
                        sched_kind_name((sched_kind)k), c->prof_ms[ph][k] / n,
                        1e3 * c->prof_ms[ph][k] / (double)c->prof_calls[ph][k], c->prof_calls[ph][k]);
    }
}

static void hip_shutdown(backend *b)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    if (!c)
        return;
    if (c->stream)
        (void)hipStreamSynchronize(c->stream);
    if (c->prof_ev) {
        print_profile(c);
        for (int32_t i = 0; i < 2 * (c->s->n_ops + 1); i++)
            if (c->prof_ev[i])
                (void)hipEventDestroy(c->prof_ev[i]);
        free(c->prof_ev);
    }
    destroy_graph(c);
    if (c->cpu.vt)
        c->cpu.vt->shutdown(&c->cpu);
    free(c->chk_host);
    if (c->reg_base)
        (void)hipHostUnregister(c->reg_base);
    arena_free(&c->mirror);
    if (c->dev_arena)
        (void)hipFree(c->dev_arena);
    if (c->dev_weights)
        (void)hipFree(c->dev_weights);
    if (c->h_params)
        (void)hipHostFree(c->h_params);
    if (c->h_argmax)
        (void)hipHostFree(c->h_argmax);
    if (c->h_write)
        (void)hipHostFree(c->h_write);
    if (c->ev_ok) {
        for (int i = 0; i < 2; i++) {
            (void)hipEventDestroy(c->ev_params[i]);
            (void)hipEventDestroy(c->ev_pick[i]);
        }
        (void)hipEventDestroy(c->ev_write);
    }
    if (c->stream)
        (void)hipStreamDestroy(c->stream);
    for (int i = 0; i < 2; i++) {
        if (c->tr_ss[i]) {
            (void)hipStreamSynchronize(c->tr_ss[i]);
            (void)hipStreamDestroy(c->tr_ss[i]);
        }
        if (c->tr_fork[i])
            (void)hipEventDestroy(c->tr_fork[i]);
        if (c->tr_join[i])
            (void)hipEventDestroy(c->tr_join[i]);
    }
    free(c->tr_snap);
    free(c->tr_wide);
    free(c->layers);
    free(c->opf);
    free(c->dec_with);
    free(c);
    b->ctx = NULL;
}

/* ---- host <-> device ------------------------------------------------------------------ */

static int hip_write(backend *b, int32_t buf, uint64_t offset, const void *src, uint64_t n,
                     moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    if (buf < 0 || buf >= c->s->n_bufs || offset > c->s->bufs[buf].bytes ||
        n > c->s->bufs[buf].bytes - offset)
        return err_set(err, MOERT_EINTERNAL, "backend hip: write outside buffer %d", buf);
    if (c->capturing)
        return err_set(err, MOERT_EINTERNAL, "backend hip: write during graph capture");
    if (c->cpu.vt) { /* check mode: the CPU twin sees the same inputs */
        int st = c->cpu.vt->write(&c->cpu, buf, offset, src, n, err);
        if (st)
            return st;
    }
    if (buf == c->s->known.tokens && offset == 0 && n % 4 == 0 && n / 4 <= HIP_PARAM_TOKENS && !c->cpu.vt) {
        /* a decode step's input ids ride with the step parameters (begin_step's one copy) */
        memcpy(c->pend_tok, src, n);
        c->n_pend_tok = (int)(n / 4);
        return MOERT_OK;
    }
    if (buf == c->s->known.tokens)
        c->n_pend_tok = 0; /* superseded */
    unsigned char *dst = dbuf(c, buf) + offset;
    if (n <= WRITE_STAGE_BYTES) {
        /* the previous small write may still be reading the staging buffer */
        HIP_TRY(hipEventSynchronize(c->ev_write), "write");
        memcpy(c->h_write, src, n);
        HIP_TRY(hipMemcpyAsync(dst, c->h_write, n, hipMemcpyHostToDevice, c->stream), "write");
        HIP_TRY(hipEventRecord(c->ev_write, c->stream), "write");
    } else { /* init-time (RoPE tables): ordered after everything queued on our stream */
        HIP_TRY(hipStreamSynchronize(c->stream), "write");
        HIP_TRY(hipMemcpy(dst, src, n, hipMemcpyHostToDevice), "write");
    }
    return MOERT_OK;
}

static int check_err_flag(hip_ctx *c, const char *where, moert_err *err)
{
    int flag = 0;
    HIP_TRY(hipMemcpy(&flag, c->d_err, sizeof flag, hipMemcpyDeviceToHost), "reading the guard flag");
    if (flag) {
        int zero = 0;
        (void)hipMemcpy(c->d_err, &zero, sizeof zero, hipMemcpyHostToDevice);
        return err_set(err, MOERT_EINTERNAL,
                       "backend hip: %s: a kernel guard fired (%d: %s)", where, flag,
                       flag == 1 ? "token id outside the vocabulary"
                       : flag == 2 ? "position outside max_seq_len"
                                   : "expert id outside [0, num_experts)");
    }
    return MOERT_OK;
}

static int hip_read(backend *b, int32_t buf, uint64_t offset, void *dst, uint64_t n,
                    moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    if (buf < 0 || buf >= c->s->n_bufs || offset > c->s->bufs[buf].bytes ||
        n > c->s->bufs[buf].bytes - offset)
        return err_set(err, MOERT_EINTERNAL, "backend hip: read outside buffer %d", buf);
    if (n) {
        HIP_TRY(hipMemcpyAsync(dst, dbuf(c, buf) + offset, n, hipMemcpyDeviceToHost, c->stream),
                "read");
    }
    HIP_TRY(hipStreamSynchronize(c->stream), "read (a kernel of this step failed)");
    if (c->debug)
        return check_err_flag(c, "read", err);
    return MOERT_OK;
}

static void *hip_host_ptr(backend *b, int32_t buf)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    return c->mirror.base + c->offsets[buf];
}

/* ---- ops ------------------------------------------------------------------------------ */

static int gemv_grid(hip_ctx *c, long long rows_total)
{
    long long need = (rows_total + HIP_GEMV_RW * 4 - 1) / (HIP_GEMV_RW * 4); /* 4 warps of 32 */
    long long cap = (long long)c->sms * 8;
    return (int)(need < cap ? (need > 0 ? need : 1) : cap);
}

static int launch_err(hipError_t e, const sched_op *op, moert_err *err)
{
    if (e == hipSuccess)
        return MOERT_OK;
    return err_set(err, MOERT_EINTERNAL, "backend hip: launching %s (layer %d): %s",
                   sched_kind_name(op->kind), op->layer, hipGetErrorString(e));
}

/* One exact GEMV over the n consecutive segments seg[0..n) of one dtype (a decode row). */
static int gemv_run(hip_ctx *c, const sched_op *op, const dev_tensor *const *seg, int n, const float *in,
                    float *out, float *snap, const hip_gemv_args *fx, long long *end_out, moert_err *err)
{
    hip_gemv_args a;
    memset(&a, 0, sizeof a);
    if (fx) /* the decode fusions' fields (plan_dec_fusions) */
        a = *fx;
    a.x = in;
    long long end = 0;
    for (int i = 0; i < 3; i++) {
        if (i < n) {
            a.w[i] = seg[i]->d;
            end += seg[i]->rows;
        }
        a.seg_end[i] = end;
    }
    a.y = out;
    a.y2 = snap;
    a.n_total = end;
    a.k = op->k;
    *end_out = end;
    return launch_err(hip_launch_gemv(seg[0]->dt, &a, gemv_grid(c, end), c->stream), op, err);
}

/* One exact GEMM of rows input rows against segment w (prefill). */
static int gemm_seg(hip_ctx *c, const sched_op *op, const dev_tensor *w, const float *in, long long rows,
                    float *out, long long ldo, moert_err *err)
{
    hip_gemm_args a;
    memset(&a, 0, sizeof a);
    a.a = in;
    a.lda = op->k;
    a.w = w->d;
    a.c = out;
    a.ldc = ldo;
    a.m = (int)rows;
    a.n = (int)w->rows;
    a.k = (int)op->k;
    return launch_err(hip_launch_gemm(w->dt, HIP_A_PLAIN, 64, &a, c->stream), op, err);
}

/* act-q8: rows rows of width k (ld floats apart) quantized into dst; *qb gets the row stride. */
static int qact_rows(hip_ctx *c, const sched_op *op, const float *x, long long ld, long long rows, long long k,
                     unsigned char *dst, long long *qb, moert_err *err)
{
    hip_qact_args q;
    q.x = x;
    q.ldx = ld;
    q.q = dst;
    q.qb = (long long)ops_qact_row_bytes(k);
    q.k = k;
    q.rows = (int)rows;
    *qb = q.qb;
    return launch_err(hip_launch_qact(&q, c->stream), op, err);
}

/* act-q8 prefill on the int8 tensor-core GEMM (hip_gemm_qmma.h): its arguments for A rows
 * of stride qb, and whether it takes segments seg[0 .. n) of one block type. */
static hip_qgemm_args qgemm_args(const void *qa, long long qb, const void *w, long long w_estride, float *out,
                                 long long ldo, int m, int n, int k)
{
    hip_qgemm_args a;
    memset(&a, 0, sizeof a);
    a.a = qa;
    a.a_stride = qb;
    a.w = w;
    a.w_estride = w_estride;
    a.c = out;
    a.ldc = ldo;
    a.m = m;
    a.n = n;
    a.k = k;
    return a;
}
static bool qgemm_segs_take(const hip_ctx *c, const dev_tensor *const *seg, int n, long long qb, long long k)
{
    for (int i = 0; i < n; i++) {
        hip_qgemm_args a = qgemm_args(c->d_qa, qb, seg[i]->d, 0, NULL, 0, 2, (int)seg[i]->rows, (int)k);
        if (!hip_qgemm_takes(seg[i]->dt, &a))
            return false;
    }
    return true;
}

/* act-q8 matmul: the input rows quantized once (region A) for every block-typed run of
 * segments; plain-float segments keep the exact kernels.  THE place where prefill rows
 * (rows > 1) reach the quantized products: an int8 GEMM taking (quantized rows, row
 * stride, m) plugs in at the hip_launch_qmatmul call below. */
static int matmul_q8(hip_ctx *c, const sched_op *op, const dev_tensor *const *seg, int nseg, const float *in,
                     long long rows, float *out, long long ldo, float *snap, moert_err *err)
{
    long long qb = 0;
    int st = qact_rows(c, op, in, op->k, rows, op->k, c->d_qa, &qb, err);
    if (st)
        return st;
    long long begin = 0;
    for (int i0 = 0; i0 < nseg;) {
        int i1 = i0 + 1;
        while (i1 < nseg && seg[i1]->dt == seg[i0]->dt)
            i1++;
        long long end = 0;
        if (!one_row(c, rows) && !snap && qgemm_segs_take(c, seg + i0, i1 - i0, qb, op->k)) {
            /* prefill: the int8 tensor-core GEMM, one per segment */
            for (int i = i0; i < i1 && !st; i++) {
                hip_qgemm_args a = qgemm_args(c->d_qa, qb, seg[i]->d, 0, out + begin + end, ldo, (int)rows,
                                              (int)seg[i]->rows, (int)op->k);
                st = launch_err(hip_launch_qgemm(seg[i]->dt, &a, c->stream), op, err);
                end += seg[i]->rows;
            }
        } else if (hip_qact_takes(seg[i0]->dt)) {
            hip_qgemv_args a;
            memset(&a, 0, sizeof a);
            a.xq = c->d_qa;
            a.qb = qb;
            for (int i = 0; i < 3; i++) {
                if (i0 + i < i1) {
                    a.w[i] = seg[i0 + i]->d;
                    end += seg[i0 + i]->rows;
                }
                a.seg_end[i] = end;
            }
            a.y = out + begin;
            a.ldy = ldo;
            a.y2 = snap ? snap + begin : NULL;
            a.n_total = end;
            a.k = op->k;
            a.m = (int)rows;
            st = launch_err(hip_launch_qmatmul(seg[i0]->dt, &a, c->stream), op, err);
        } else if (one_row(c, rows)) {
            st = gemv_run(c, op, seg + i0, i1 - i0, in, out + begin, snap ? snap + begin : NULL, NULL, &end, err);
        } else {
            for (int i = i0; i < i1 && !st; i++) {
                st = gemm_seg(c, op, seg[i], in, rows, out + begin + end, ldo, err);
                end += seg[i]->rows;
            }
        }
        if (st)
            return st;
        begin += end;
        i0 = i1;
    }
    return MOERT_OK;
}

/* Split-k parts of a dense tensor-core GEMM (hip_splitk_parts; MOERT_HIP_SPLITK=0 turns it
 * off for A/B runs), 0 when the planned partials do not hold them: the plan sized them for
 * every MATMUL at max_rows, and falling back to 1 part for some row counts would change a
 * row's bits with the batch size. */
static int splitk_parts(const hip_ctx *c, long long n, long long k, long long rows)
{
    int p = c->no_splitk ? 1 : hip_splitk_parts(n, k);
    if (p > 1 && (unsigned long long)p * (unsigned long long)rows * (unsigned long long)n * sizeof(float) >
                     c->planes.part_bytes)
        return 0;
    return p;
}

/* The residual (and its snapshot) op oi adds its output into (OPF_DEC_EPI), else NULL. */
static void dec_epi_args(hip_ctx *c, int32_t oi, float **xadd, float **xadd2)
{
    *xadd = *xadd2 = NULL;
    if (oi < 0 || oi >= c->s->n_ops || !(c->opf[oi] & OPF_DEC_EPI))
        return;
    const int32_t i = c->dec_with[2 * oi + 1];
    *xadd = fbuf(c, c->s->ops[i].out[0]);
    *xadd2 = snap_of(c, i, 0);
}

/* The decode-fusion fields of op's GEMVs (false: none); with a norm prologue *in becomes the
 * un-normed row. */
static bool dec_fusion_args(hip_ctx *c, const sched_op *op, hip_gemv_args *fx, const float **in)
{
    memset(fx, 0, sizeof *fx);
    const int32_t oi = op_index(c, op);
    const uint8_t f = oi >= 0 && oi < c->s->n_ops ? c->opf[oi] : 0;
    if (!(f & (OPF_DEC_NORM | OPF_DEC_EPI)))
        return false;
    if (f & OPF_DEC_NORM) {
        const int32_t j = c->dec_with[2 * oi];
        const sched_op *nj = &c->s->ops[j];
        const dev_tensor *w = dev_weight(c, nj->w[0], nj->layer);
        fx->nw = w->d;
        fx->nw_dt = w->dt;
        fx->eps = c->eps;
        fx->xn = fbuf(c, nj->out[0]);
        fx->xn2 = snap_of(c, j, 0);
        *in = fbuf(c, nj->in[0]);
    }
    if (f & OPF_DEC_EPI)
        dec_epi_args(c, oi, &fx->xadd, &fx->xadd2);
    return true;
}

/* snap: NULL, or where a decode GEMV also writes its outputs (a traced row's snapshot) */
static int run_matmul_rows(hip_ctx *c, const sched_op *op, const float *in, long long rows,
                           float *out, long long ldo, float *snap, moert_err *err)
{
    const dev_tensor *seg[3] = {NULL, NULL, NULL};
    int nseg = 0;
    for (int i = 0; i < 3 && op->w[i] != SCHED_W_NONE; i++) {
        const dev_tensor *d = dev_weight(c, op->w[i], op->layer);
        if (!d || !d->d)
            return err_set(err, MOERT_EINTERNAL, "backend hip: matmul weight %s missing for layer %d",
                           sched_weight_name(op->w[i]), op->layer);
        seg[nseg++] = d;
    }
    if (nseg == 0)
        return err_set(err, MOERT_EINTERNAL, "backend hip: matmul without weights");
    long long total = 0;
    bool any_block = false;
    for (int i = 0; i < nseg; i++) {
        if (seg[i]->cols != op->k || seg[i]->dt < 0)
            return err_set(err, MOERT_EINTERNAL,
                           "backend hip: matmul segment %d of layer %d: %lld columns, dtype %d "
                           "(expected %lld)",
                           i, op->layer, seg[i]->cols, seg[i]->dt, (long long)op->k);
        total += seg[i]->rows;
        any_block = any_block || hip_qact_takes(seg[i]->dt);
    }
    if (total > ldo)
        return err_set(err, MOERT_EINTERNAL, "backend hip: matmul of layer %d: %lld outputs > %lld",
                       op->layer, total, ldo);
    /* act-q8 as the CPU does it: inputs of whole 32-blocks, block-typed weights */
    if (matmul_q8_takes(c, op, any_block))
        return matmul_q8(c, op, seg, nseg, in, rows, out, ldo, snap, err);
    if (one_row(c, rows)) {
        /* one GEMV per run of consecutive segments of one dtype (a GGUF's fused qkv may mix
         * them: attn_q Q4_K, attn_k and attn_v Q8_0); each output is computed the same way
         * either way */
        long long begin = 0;
        hip_gemv_args fx;
        const bool fused = dec_fusion_args(c, op, &fx, &in);
        for (int i0 = 0; i0 < nseg;) {
            int i1 = i0 + 1;
            while (i1 < nseg && seg[i1]->dt == seg[i0]->dt)
                i1++;
            long long end = 0;
            int st = gemv_run(c, op, seg + i0, i1 - i0, in, out + begin, snap ? snap + begin : NULL,
                              fused ? &fx : NULL, &end, err);
            /* one run writes the normed row; each adds its rows into the residual */
            fx.xn = fx.xn2 = NULL;
            if (fx.xadd)
                fx.xadd += end;
            if (fx.xadd2)
                fx.xadd2 += end;
            if (st)
                return st;
            begin += end;
            i0 = i1;
        }
        return MOERT_OK;
    }
    /* BF16 segments on the planes path: A split once, one GEMM over every segment */
    bool planes = ((uintptr_t)in & 15u) == 0 && rows * op->k * HIP_PLANE_BYTES <= (long long)c->planes.x_bytes &&
                  hip_mma_planes_takes((int)total, (int)op->k);
    for (int i = 0; i < nseg; i++)
        planes = planes && seg[i]->dt == HIP_DT_BF16 && ((uintptr_t)seg[i]->d & 15u) == 0;
    if (planes) {
        hip_mma_args a;
        memset(&a, 0, sizeof a);
        a.ap = c->d_planes;
        a.ps = rows * op->k;
        long long end = 0;
        for (int i = 0; i < 3; i++) {
            a.w[i] = i < nseg ? seg[i]->d : NULL;
            end += i < nseg ? seg[i]->rows : 0;
            a.seg_end[i] = i < nseg ? end : LLONG_MAX;
        }
        a.c = out;
        a.ldc = ldo;
        a.m = (int)rows;
        a.n = (int)total;
        a.k = (int)op->k;
        a.kparts = splitk_parts(c, total, op->k, rows);
        if (a.kparts == 0)
            return err_set(err, MOERT_EINTERNAL,
                           "backend hip: matmul of layer %d: split-k partials of %lld rows x %lld outputs exceed "
                           "the planned %llu bytes",
                           op->layer, rows, total, (unsigned long long)c->planes.part_bytes);
        a.part = (float *)(c->d_planes + c->planes.part_offset / sizeof(uint16_t));
        int st = launch_err(hip_mma_split(in, NULL, op->k, (int)rows, (int)op->k, c->d_planes, c->stream), op, err);
        return st ? st : launch_err(hip_mma_dense(&a, c->stream), op, err);
    }
    long long begin = 0;
    for (int i = 0; i < nseg; i++) {
        int st = gemm_seg(c, op, seg[i], in, rows, out + begin, ldo, err);
        if (st)
            return st;
        begin += seg[i]->rows;
    }
    return MOERT_OK;
}

/* act-q8 expert FFN (MoE: ids and tw; the dense MLP: one slot, ids = tw = NULL): the token
 * rows quantized once into region A for every slot's gate/up, h = silu(gate) * up quantized
 * into region B, then down with the slots combined in slot order.  Decode and prefill run
 * the same kernels (prefill: a grid row per (token, slot)); THE place where an int8
 * grouped-expert GEMM plugs in for rows > 1 (taking the quantized rows A / B, their
 * strides and a row-index table from hip_launch_moe_index). */
static bool ffn_q8_takes(const hip_ctx *c, const dev_tensor *g, const dev_tensor *u, const dev_tensor *d,
                         long long H, long long I)
{
    return c->qact && hip_qact_takes(g->dt) && u->dt == g->dt && hip_qact_takes(d->dt) && H % 32 == 0 &&
           I % 32 == 0;
}
static int ffn_q8(hip_ctx *c, const sched_op *op, hip_qmoe_args *a, const float *xn, int gdt, int ddt,
                  moert_err *err)
{
    int st = qact_rows(c, op, xn, a->H, a->tokens, a->H, c->d_qa, &a->qbx, err);
    if (st)
        return st;
    a->xq = c->d_qa;
    a->hq = c->d_qb;
    a->qbh = (long long)ops_qact_row_bytes(a->I);
    if ((st = launch_err(hip_launch_qmoe_gateup(gdt, a, c->stream), op, err)))
        return st;
    long long qbh = 0;
    if ((st = qact_rows(c, op, a->h, a->I, (long long)a->tokens * a->K, a->I, c->d_qb, &qbh, err)))
        return st;
    return launch_err(hip_launch_qmoe_down(ddt, a, c->stream), op, err);
}

/* act-q8 prefill of an expert FFN (MoE with the tile table and its row table; the dense MLP
 * with tiles NULL) on the int8 tensor-core GEMM: gate and up over the token rows quantized
 * into region A, h = silu(gate) * up (into g) quantized into region B in tile-row order, down
 * over those rows into dn.  The MoE's caller then combines the slots as in exact mode. */
typedef struct ffn_qmma_args {
    const dev_tensor *G, *U, *D;
    long long estride_gu, estride_d, H, I;
    int tokens;              /* token rows */
    long long prow;          /* rows of g, u and dn: tokens x top-k (MoE) or tokens */
    const int32_t *gather;   /* MoE: the sorted order, gdiv = top-k; MLP: NULL */
    int gdiv;
    const int32_t *tiles;    /* MoE: the tile table; MLP: NULL */
    int max_tiles;
    float *g, *u, *dn;
} ffn_qmma_args;

static bool ffn_qmma_takes(const hip_ctx *c, const dev_tensor *G, const dev_tensor *U, const dev_tensor *D,
                           long long esgu, long long esd, long long H, long long I, int rows)
{
    if (rows < 1 || one_row(c, rows) || !ffn_q8_takes(c, G, U, D, H, I))
        return false;
    hip_qgemm_args a = qgemm_args(c->d_qa, (long long)ops_qact_row_bytes(H), G->d, esgu, NULL, I, rows, (int)I, (int)H);
    if (!hip_qgemm_takes(G->dt, &a))
        return false;
    a = qgemm_args(c->d_qb, (long long)ops_qact_row_bytes(I), D->d, esd, NULL, H, rows, (int)H, (int)I);
    return hip_qgemm_takes(D->dt, &a);
}

static int ffn_qmma(hip_ctx *c, const sched_op *op, const ffn_qmma_args *f, const float *xn, moert_err *err)
{
    long long qbx = 0, qbh = 0;
    int st = qact_rows(c, op, xn, f->H, f->tokens, f->H, c->d_qa, &qbx, err);
    if (st)
        return st;
    int m = f->tiles ? 0 : f->tokens;
    hip_qgemm_args a = qgemm_args(c->d_qa, qbx, f->G->d, f->estride_gu, f->g, f->I, m, (int)f->I, (int)f->H);
    a.gather = f->gather;
    a.gdiv = f->gdiv;
    a.tiles = f->tiles;
    a.max_tiles = f->max_tiles;
    if ((st = launch_err(hip_launch_qgemm(f->G->dt, &a, c->stream), op, err)))
        return st;
    a.w = f->U->d;
    a.c = f->u;
    if ((st = launch_err(hip_launch_qgemm(f->U->dt, &a, c->stream), op, err)))
        return st;
    if ((st = launch_err(hip_launch_qmma_swiglu(f->g, f->u, f->g, f->prow * f->I, c->stream), op, err)))
        return st;
    if ((st = qact_rows(c, op, f->g, f->I, f->prow, f->I, c->d_qb, &qbh, err)))
        return st;
    a = qgemm_args(c->d_qb, qbh, f->D->d, f->estride_d, f->dn, f->H, m, (int)f->H, (int)f->I);
    a.tiles = f->tiles;
    a.max_tiles = f->max_tiles;
    return launch_err(hip_launch_qgemm(f->D->dt, &a, c->stream), op, err);
}

/* The MoE's expert GEMMs on the planes path: x split once, gate and up in one GEMM whose
 * epilogue writes SwiGLU(gate, up) as the down GEMM's planes (the g and u scratch rest). */
static int run_moe_planes(hip_ctx *c, const sched_op *op, int rows, const hip_moe_index_args *ix, int tiles,
                          moert_err *err)
{
    const cfg_topology *t = &c->s->topo;
    const dev_layer *L = &c->layers[op->layer];
    long long H = t->hidden_size, I = t->moe_intermediate_size;
    uint16_t *hp = c->d_planes + c->planes.h_offset / sizeof(uint16_t);
    hip_mma_args a;
    memset(&a, 0, sizeof a);
    a.ap = c->d_planes;
    a.ps = rows * H;
    a.gather = ix->order;
    a.gdiv = (int)t->num_experts_per_tok;
    a.w[0] = L->gate.d;
    a.w[1] = L->up.d;
    a.w_estride = L->estride_gu;
    a.hp = hp;
    a.hps = ix->rk * I;
    a.n = (int)I;
    a.k = (int)H;
    a.tiles = c->d_tiles;
    a.max_tiles = tiles;
    int st = launch_err(hip_mma_split(fbuf(c, op->in[0]), NULL, H, rows, (int)H, c->d_planes, c->stream), op, err);
    if (st || (st = launch_err(hip_mma_gateup(&a, c->stream), op, err)))
        return st;
    memset(&a, 0, sizeof a);
    a.ap = hp;
    a.ps = ix->rk * I;
    a.w[0] = L->down.d;
    a.w_estride = L->estride_d;
    float *dn = fbuf(c, op->scratch[3]);
    a.c = dn;
    a.ldc = H;
    a.n = (int)H;
    a.k = (int)I;
    a.tiles = c->d_tiles;
    a.max_tiles = tiles;
    if ((st = launch_err(hip_mma_grouped(&a, c->stream), op, err)))
        return st;
    return launch_err(hip_launch_moe_combine(dn, ix->inv, fbuf(c, op->in[1]), fbuf(c, op->out[0]),
                                             (int)t->num_experts_per_tok, H, rows, c->stream),
                      op, err);
}

static int run_moe(hip_ctx *c, const sched_op *op, int rows, moert_err *err)
{
    const sched *s = c->s;
    const cfg_topology *t = &s->topo;
    const dev_layer *L = &c->layers[op->layer];
    int E = (int)t->num_experts, K = (int)t->num_experts_per_tok;
    long long H = t->hidden_size, I = t->moe_intermediate_size;
    const float *xn = fbuf(c, op->in[0]), *tw = fbuf(c, op->in[1]);
    const int32_t *ids = (const int32_t *)dbuf(c, op->in[2]);
    float *out = fbuf(c, op->out[0]);
    float *g = fbuf(c, op->scratch[1]), *u = fbuf(c, op->scratch[2]), *dn = fbuf(c, op->scratch[3]);
    if (!L->sparse || !L->gate.d)
        return err_set(err, MOERT_EINTERNAL, "backend hip: MoE op on dense layer %d", op->layer);
    bool qmma = ffn_qmma_takes(c, &L->gate, &L->up, &L->down, L->estride_gu, L->estride_d, H, I, rows);
    if (!qmma && ffn_q8_takes(c, &L->gate, &L->up, &L->down, H, I)) {
        hip_qmoe_args q;
        memset(&q, 0, sizeof q);
        q.ids = ids;
        q.tw = tw;
        q.gate = L->gate.d;
        q.up = L->up.d;
        q.down = L->down.d;
        q.estride_gu = L->estride_gu;
        q.estride_d = L->estride_d;
        q.E = E;
        q.K = K;
        q.tokens = rows;
        q.I = I;
        q.H = H;
        q.h = g;
        q.out = out;
        q.out2 = rows == 1 ? snap_of(c, op_index(c, op), 0) : NULL;
        q.err_flag = c->d_err;
        return ffn_q8(c, op, &q, xn, L->gate.dt, L->down.dt, err);
    }
    if (one_row(c, rows)) {
        hip_moe_dec_args a;
        memset(&a, 0, sizeof a);
        a.x = xn;
        a.ids = ids;
        a.tw = tw;
        a.gate = L->gate.d;
        a.up = L->up.d;
        a.down = L->down.d;
        a.estride_gu = L->estride_gu;
        a.estride_d = L->estride_d;
        a.E = E;
        a.kslots = K;
        a.I = I;
        a.H = H;
        a.h = g;
        a.out = out;
        a.out2 = snap_of(c, op_index(c, op), 0);
        dec_epi_args(c, op_index(c, op), &a.xadd, &a.xadd2);
        a.err_flag = c->d_err;
        a.release_late = hip_moe_dec_early(L->gate.dt, L->down.dt, &a);
        int st = launch_err(hip_launch_moe_gateup_dec(L->gate.dt, &a, gemv_grid(c, 2LL * K * I),
                                                      c->stream),
                            op, err);
        if (st)
            return st;
        return launch_err(hip_launch_moe_down_dec(L->down.dt, &a, gemv_grid(c, 2 * H), c->stream),
                          op, err);
    }
    /* index scratch: offsets [E+1] and counts [E] at the front (the CPU backend's cursors),
     * then, at its end, the sorted order [R*K] and the inverse [R*K] */
    int32_t *idx = (int32_t *)dbuf(c, op->scratch[0]);
    long long RK = s->max_rows * K;
    long long head = s->bufs[op->scratch[0]].cols - 2 * RK;
    if (head < 2LL * E + 1)
        return err_set(err, MOERT_EINTERNAL, "backend hip: moe_index of layer %d too small", op->layer);
    hip_moe_index_args ix;
    ix.ids = ids;
    ix.rk = rows * K;
    ix.E = E;
    ix.bm = HIP_MOE_BM;
    ix.offs = idx;
    ix.counts = idx + E + 1;
    ix.order = idx + head;
    ix.inv = idx + head + RK;
    ix.tiles = c->d_tiles;
    ix.err_flag = c->d_err;
    int st = launch_err(hip_launch_moe_index(&ix, c->stream), op, err);
    if (st)
        return st;
    int tiles = (int)((ix.rk + HIP_MOE_BM - 1) / HIP_MOE_BM + E);
    if (qmma) {
        ffn_qmma_args f;
        memset(&f, 0, sizeof f);
        f.G = &L->gate;
        f.U = &L->up;
        f.D = &L->down;
        f.estride_gu = L->estride_gu;
        f.estride_d = L->estride_d;
        f.H = H;
        f.I = I;
        f.tokens = rows;
        f.prow = ix.rk;
        f.gather = ix.order;
        f.gdiv = K;
        f.tiles = c->d_tiles;
        f.max_tiles = tiles;
        f.g = g;
        f.u = u;
        f.dn = dn;
        if ((st = ffn_qmma(c, op, &f, xn, err)))
            return st;
        return launch_err(hip_launch_moe_combine(dn, ix.inv, tw, out, K, H, rows, c->stream), op, err);
    }
    if (L->gate.dt == HIP_DT_BF16 && L->up.dt == HIP_DT_BF16 && L->down.dt == HIP_DT_BF16 &&
        ((uintptr_t)xn & 15u) == 0 && L->estride_gu % 16 == 0 && L->estride_d % 16 == 0 &&
        rows * H * HIP_PLANE_BYTES <= (long long)c->planes.x_bytes &&
        ix.rk * I * HIP_PLANE_BYTES <= (long long)c->planes.h_bytes && hip_mma_planes_takes((int)I, (int)H) &&
        hip_mma_planes_takes((int)H, (int)I))
        return run_moe_planes(c, op, rows, &ix, tiles, err);
    hip_gemm_args a;
    memset(&a, 0, sizeof a);
    a.a = xn;
    a.lda = H;
    a.gather = ix.order;
    a.gdiv = K;
    a.w = L->gate.d;
    a.w_estride = L->estride_gu;
    a.c = g;
    a.ldc = I;
    a.n = (int)I;
    a.k = (int)H;
    a.tiles = c->d_tiles;
    a.max_tiles = tiles;
    if ((st = launch_err(hip_launch_gemm(L->gate.dt, HIP_A_GATHER, HIP_MOE_BM, &a, c->stream), op, err)))
        return st;
    a.w = L->up.d;
    a.c = u;
    if ((st = launch_err(hip_launch_gemm(L->up.dt, HIP_A_GATHER, HIP_MOE_BM, &a, c->stream), op, err)))
        return st;
    memset(&a, 0, sizeof a);
    a.a = g;
    a.a2 = u;
    a.lda = I;
    a.w = L->down.d;
    a.w_estride = L->estride_d;
    a.c = dn;
    a.ldc = H;
    a.n = (int)H;
    a.k = (int)I;
    a.tiles = c->d_tiles;
    a.max_tiles = tiles;
    if ((st = launch_err(hip_launch_gemm(L->down.dt, HIP_A_SWIGLU, HIP_MOE_BM, &a, c->stream), op, err)))
        return st;
    return launch_err(hip_launch_moe_combine(dn, ix.inv, tw, out, K, H, rows, c->stream), op, err);
}

static int run_mlp(hip_ctx *c, const sched_op *op, int rows, moert_err *err)
{
    const cfg_topology *t = &c->s->topo;
    const dev_layer *L = &c->layers[op->layer];
    long long H = t->hidden_size, I = t->intermediate_size;
    const float *xn = fbuf(c, op->in[0]);
    float *out = fbuf(c, op->out[0]);
    float *g = fbuf(c, op->scratch[0]), *u = fbuf(c, op->scratch[1]);
    if (L->sparse || !L->mlp_gate.d)
        return err_set(err, MOERT_EINTERNAL, "backend hip: MLP op on sparse layer %d", op->layer);
    if (ffn_qmma_takes(c, &L->mlp_gate, &L->mlp_up, &L->mlp_down, 0, 0, H, I, rows)) {
        ffn_qmma_args f;
        memset(&f, 0, sizeof f);
        f.G = &L->mlp_gate;
        f.U = &L->mlp_up;
        f.D = &L->mlp_down;
        f.H = H;
        f.I = I;
        f.tokens = rows;
        f.prow = rows;
        f.g = g;
        f.u = u;
        f.dn = out;
        return ffn_qmma(c, op, &f, xn, err);
    }
    if (ffn_q8_takes(c, &L->mlp_gate, &L->mlp_up, &L->mlp_down, H, I)) {
        hip_qmoe_args q;
        memset(&q, 0, sizeof q);
        q.gate = L->mlp_gate.d;
        q.up = L->mlp_up.d;
        q.down = L->mlp_down.d;
        q.E = 1;
        q.K = 1;
        q.tokens = rows;
        q.I = I;
        q.H = H;
        q.h = g;
        q.out = out;
        q.out2 = rows == 1 ? snap_of(c, op_index(c, op), 0) : NULL;
        q.err_flag = c->d_err;
        return ffn_q8(c, op, &q, xn, L->mlp_gate.dt, L->mlp_down.dt, err);
    }
    if (one_row(c, rows)) {
        hip_moe_dec_args a;
        memset(&a, 0, sizeof a);
        a.x = xn;
        a.gate = L->mlp_gate.d;
        a.up = L->mlp_up.d;
        a.down = L->mlp_down.d;
        a.E = 1;
        a.kslots = 1;
        a.I = I;
        a.H = H;
        a.h = g;
        a.out = out;
        a.out2 = snap_of(c, op_index(c, op), 0);
        dec_epi_args(c, op_index(c, op), &a.xadd, &a.xadd2);
        a.err_flag = c->d_err;
        int st = launch_err(hip_launch_moe_gateup_dec(L->mlp_gate.dt, &a, gemv_grid(c, 2 * I), c->stream),
                            op, err);
        if (st)
            return st;
        return launch_err(hip_launch_moe_down_dec(L->mlp_down.dt, &a, gemv_grid(c, 2 * H), c->stream),
                          op, err);
    }
    hip_gemm_args a;
    memset(&a, 0, sizeof a);
    a.a = xn;
    a.lda = H;
    a.w = L->mlp_gate.d;
    a.c = g;
    a.ldc = I;
    a.m = rows;
    a.n = (int)I;
    a.k = (int)H;
    int st;
    if ((st = launch_err(hip_launch_gemm(L->mlp_gate.dt, HIP_A_PLAIN, 64, &a, c->stream), op, err)))
        return st;
    a.w = L->mlp_up.d;
    a.c = u;
    if ((st = launch_err(hip_launch_gemm(L->mlp_up.dt, HIP_A_PLAIN, 64, &a, c->stream), op, err)))
        return st;
    memset(&a, 0, sizeof a);
    a.a = g;
    a.a2 = u;
    a.lda = I;
    a.w = L->mlp_down.d;
    a.c = out;
    a.ldc = H;
    a.m = rows;
    a.n = (int)H;
    a.k = (int)I;
    return launch_err(hip_launch_gemm(L->mlp_down.dt, HIP_A_SWIGLU, 64, &a, c->stream), op, err);
}

/* The capture arguments of TRACE op `op`, reading src (and src2: router ids, or NULL). */
static void fill_trace_args(hip_ctx *c, const sched_op *op, const float *src, const int32_t *src2,
                            hip_trace_args *a)
{
    const trace_slot_info *si = trace_rt_slot(c->trace, (size_t)op->trace_index);
    memset(a, 0, sizeof *a);
    a->src = src;
    a->src2 = src2;
    a->ring = dbuf(c, op->out[0]);
    a->shadow = c->d_shadow;
    a->ti = op->trace_index;
    a->n_trace = c->n_trace;
    a->width = si->width;
    a->record_bytes = si->record_bytes;
    a->cap = c->tr_cap;
    a->tensor_mode = si->keeps_row; /* moe_router keeps its rows in stats mode too */
    a->overwrite = c->tr_overwrite;
    a->logits_last = si->stage == CFG_STAGE_LOGITS && !c->tr_all;
    a->sp = c->d_params;
}

static int run_trace(hip_ctx *c, const sched_op *op, int rows, moert_err *err)
{
    if (!c->trace || op->trace_index < 0 || op->trace_index >= c->n_trace)
        return err_set(err, MOERT_EINTERNAL, "backend hip: TRACE op without a bound trace context");
    if (c->tr_batch_step) /* captured beside the chain from here, or at the step's end */
        return op_index(c, op) == c->tr_fork_op[0] ? trace_fork(c, 0, err) : MOERT_OK;
    hip_trace_args a;
    fill_trace_args(c, op, fbuf(c, op->in[0]), op->in[1] >= 0 ? (const int32_t *)dbuf(c, op->in[1]) : NULL, &a);
    return launch_err(hip_launch_trace(&a, c->tr_all ? rows : 1, c->stream), op, err);
}

/* The arguments of QK_NORM_ROPE op `op` (flags f: with the KV store fused or not). */
static void qkn_args(hip_ctx *c, const sched_op *op, uint8_t f, hip_qkn_args *a)
{
    const sched *s = c->s;
    const cfg_topology *t = &s->topo;
    const dev_layer *L = &c->layers[op->layer];
    memset(a, 0, sizeof *a);
    a->qkv = fbuf(c, op->out[0]);
    a->qn = L->q_norm.d;
    a->kn = L->k_norm.d;
    a->qn_dt = L->q_norm.dt;
    a->kn_dt = L->k_norm.dt;
    a->cos_t = fbuf(c, op->in[0]);
    a->sin_t = fbuf(c, op->in[1]);
    if (f & OPF_FUSE_NEXT) {
        const sched_op *nx = op + 1;
        a->kc = fbuf(c, nx->out[0]);
        a->vc = fbuf(c, nx->out[1]);
    }
    a->sp = c->d_params;
    a->nh = (int)t->num_attention_heads;
    a->nkv = (int)t->num_key_value_heads;
    a->hd = (int)t->head_dim;
    a->qkv_dim = s->qkv_dim;
    a->q_dim = s->q_dim;
    a->kv_dim = s->kv_dim;
    a->max_seq = s->max_seq;
    a->eps = c->eps;
    a->err_flag = c->d_err;
}

static int launch_op(hip_ctx *c, const sched_op *op, const exec_step *st, moert_err *err)
{
    const sched *s = c->s;
    const cfg_topology *t = &s->topo;
    int rows = (int)st->n_rows;
    int32_t oi = op_index(c, op);
    uint8_t f = (oi >= 0 && oi < s->n_ops) ? c->opf[oi] : 0;
    if ((f & OPF_SKIP) || ((f & OPF_DEC_SKIP) && one_row(c, rows)))
        return MOERT_OK;
    switch (op->kind) {
    case SCHED_EMBED:
        return launch_err(hip_launch_embed((int32_t *)dbuf(c, op->in[0]), c->d_params, c->d_argmax, c->embed.d,
                                           c->embed.dt,
                                           fbuf(c, op->out[0]), snap_of(c, oi, 0), op->n, t->vocab_size, rows,
                                           c->d_err,
                                           c->stream),
                          op, err);
    case SCHED_RMSNORM: {
        const dev_tensor *w = dev_weight(c, op->w[0], op->layer);
        return launch_err(hip_launch_rmsnorm(fbuf(c, op->in[0]), w->d, w->dt, fbuf(c, op->out[0]),
                                             snap_of(c, oi, 0), op->n, c->eps, rows, c->stream),
                          op, err);
    }
    case SCHED_MATMUL:
        return run_matmul_rows(c, op, fbuf(c, op->in[0]), rows, fbuf(c, op->out[0]), op->n,
                               rows == 1 ? snap_of(c, oi, 0) : NULL, err);
    case SCHED_QK_NORM_ROPE: {
        hip_qkn_args a;
        qkn_args(c, op, f, &a);
        return launch_err(hip_launch_qk_norm_rope(&a, rows, c->stream), op, err);
    }
    case SCHED_KV_STORE:
        return launch_err(hip_launch_kv_store(fbuf(c, op->in[0]), fbuf(c, op->out[0]), fbuf(c, op->out[1]),
                                              c->d_params, s->qkv_dim, s->q_dim, s->kv_dim,
                                              (int)t->head_dim, s->max_seq,
                                              rows, c->d_err, c->stream),
                          op, err);
    case SCHED_ATTENTION: {
        hip_attn_args a;
        memset(&a, 0, sizeof a);
        a.qkv = fbuf(c, op->in[0]);
        a.kc = fbuf(c, op->in[1]);
        a.vc = fbuf(c, op->in[2]);
        a.out = fbuf(c, op->out[0]);
        a.sp = c->d_params;
        a.nh = (int)t->num_attention_heads;
        a.nkv = (int)t->num_key_value_heads;
        a.hd = (int)t->head_dim;
        a.qkv_dim = s->qkv_dim;
        a.q_dim = s->q_dim;
        a.kv_dim = s->kv_dim;
        a.max_seq = s->max_seq;
        a.scale = c->attn_scale;
        a.part = c->d_attn_part;
        a.max_splits = c->max_splits;
        a.tickets = c->d_attn_tickets;
        a.err_flag = c->d_err;
        return launch_err(hip_launch_attention(&a, rows, one_row(c, rows), c->stream), op, err);
    }
    case SCHED_ADD:
        if (f & OPF_FUSE_NEXT) {
            const int32_t ni = fuse_partner(s, oi);
            const sched_op *nx = &s->ops[ni];
            const dev_tensor *w = dev_weight(c, nx->w[0], nx->layer);
            return launch_err(hip_launch_add_rmsnorm(fbuf(c, op->out[0]), fbuf(c, op->in[0]), w->d, w->dt,
                                                     fbuf(c, nx->out[0]), snap_of(c, oi, 0), snap_of(c, ni, 0),
                                                     op->n, c->eps, rows, c->stream),
                              op, err);
        }
        return launch_err(hip_launch_add(fbuf(c, op->out[0]), fbuf(c, op->in[0]), snap_of(c, oi, 0),
                                         (long long)rows * op->n, c->stream),
                          op, err);
    case SCHED_ROUTE:
        return launch_err(hip_launch_route(fbuf(c, op->in[0]), fbuf(c, op->out[0]),
                                           (int32_t *)dbuf(c, op->out[1]), snap_of(c, oi, 0),
                                           (int32_t *)snap_of(c, oi, 1), (int)op->k, (int)op->n,
                                           t->norm_topk_prob ? 1 : 0, rows, c->stream),
                          op, err);
    case SCHED_MOE: return run_moe(c, op, rows, err);
    case SCHED_MLP: return run_mlp(c, op, rows, err);
    case SCHED_LOGITS: {
        long long H = t->hidden_size;
        const float *fn = fbuf(c, op->in[0]);
        long long first = s->logit_rows == 1 ? rows - 1 : 0;
        int rc = run_matmul_rows(c, op, fn + first * H, rows - first, fbuf(c, op->out[0]), op->n, NULL, err);
        if (rc)
            return rc;
        /* the logits capture runs beside the arg-max */
        if (c->tr_batch_step && oi == c->tr_fork_op[1] && (rc = trace_fork(c, 1, err)))
            return rc;
        /* the greedy pick, inside the step (and the decode graph) */
        return launch_err(hip_launch_argmax(fbuf(c, op->out[0]), op->n, s->logit_rows > 1,
                                            c->d_params, c->d_amax_v, c->d_amax_i, c->d_argmax, c->m_argmax,
                                            c->stream),
                          op, err);
    }
    case SCHED_TRACE: return run_trace(c, op, rows, err);
    default:
        return err_set(err, MOERT_EINTERNAL, "backend hip: unknown op kind %d", (int)op->kind);
    }
}

/* ---- trace capture at the end of a one-row step -------------------------------------
 * Inline, each TRACE op is one small kernel on the chain of dependent kernels: 99 of them
 * (12 layers) made a traced decode step 70% slower.  In a one-row step (decode) the TRACE ops launch
 * nothing; instead every slot is captured at the end of the step by one kernel (block b:
 * slot b) plus one per wide slot (logits, 1024 threads).  A slot's row is read in place when
 * no later op of the step writes its bytes; otherwise the op that produced it also writes a
 * copy into the slot's snapshot (the second output of the GEMV, the norms, the add, embed,
 * route, MoE down), which is the same bits the inline capture would read.  Same kernel code
 * and block size, so the records are the same bits. */

/* The device byte ranges op `op` writes (outputs and scratch); at most 6. */
static int op_write_ranges(hip_ctx *c, const sched_op *op, const unsigned char **p, uint64_t *n)
{
    const sched *s = c->s;
    int k = 0;
    int32_t ids[6] = {op->out[0], op->out[1], op->scratch[0], op->scratch[1], op->scratch[2], op->scratch[3]};
    for (int i = 0; i < 6; i++) {
        /* (the backends' own scratch lives for the whole step: it never shares bytes with a row) */
        if (ids[i] < 0)
            continue;
        p[k] = dbuf(c, ids[i]);
        n[k++] = s->bufs[ids[i]].bytes;
    }
    return k;
}

/* Does any op after op t write bytes of buffer `buf`? */
static bool written_after(hip_ctx *c, int32_t t, int32_t buf)
{
    const sched *s = c->s;
    const unsigned char *b = dbuf(c, buf);
    uint64_t nb = s->bufs[buf].bytes;
    for (int32_t i = t + 1; i < s->n_ops; i++) {
        const unsigned char *p[6];
        uint64_t n[6];
        int k = op_write_ranges(c, &s->ops[i], p, n);
        for (int w = 0; w < k; w++)
            if (p[w] < b + nb && b < p[w] + n[w])
                return true;
    }
    return false;
}

/* Can op kind `kind` write a copy of its output o (one row)? */
static bool snap_capable(sched_kind kind, int o)
{
    switch (kind) {
    case SCHED_EMBED: case SCHED_RMSNORM: case SCHED_MATMUL: case SCHED_ADD: case SCHED_MOE: case SCHED_MLP:
        return o == 0;
    case SCHED_ROUTE: return o == 0 || o == 1;
    default: return false;
    }
}

/* Decides, at init, whether one-row steps can capture at their end: false (captures stay
 * inline) when a slot's row is rewritten later in the step and the op that produced it
 * cannot keep a copy.  Sets the slot counts and *snap_floats, the snapshots' size. */
static bool plan_trace_batch(hip_ctx *c, size_t *snap_floats)
{
    const sched *s = c->s;
    size_t off = 0;
    c->n_tr_tab = c->n_tr_wide = 0;
    for (int32_t t = 0; t < s->n_ops; t++) {
        const sched_op *op = &s->ops[t];
        if (op->kind != SCHED_TRACE)
            continue;
        const trace_slot_info *si = trace_rt_slot(c->trace, (size_t)op->trace_index);
        for (int q = 0; q < 2; q++) {
            int32_t buf = op->in[q];
            if (buf < 0 || !written_after(c, t, buf))
                continue;
            /* the producer: the op right before it (past other TRACE ops) writes buf */
            int32_t p = t - 1;
            while (p >= 0 && s->ops[p].kind == SCHED_TRACE)
                p--;
            int o = p >= 0 ? (s->ops[p].out[0] == buf ? 0 : s->ops[p].out[1] == buf ? 1 : -1) : -1;
            if (o < 0 || !snap_capable(s->ops[p].kind, o) || (size_t)s->bufs[buf].cols != (size_t)si->width)
                return false;
            off += ((size_t)si->width + 63) & ~(size_t)63;
        }
        if (hip_trace_threads(si->width) == HIP_TRACE_BATCH_THREADS)
            c->n_tr_tab++;
        else
            c->n_tr_wide++;
    }
    *snap_floats = off;
    return true;
}

/* After plan_trace_batch, once d_tr_snap and the host tables exist: the producers'
 * snapshot pointers and every slot's capture arguments (narrow slots first). */
static void plan_trace_batch_fill(hip_ctx *c)
{
    const sched *s = c->s;
    size_t off = 0;
    int nt = 0, nw = 0;
    for (int32_t t = 0; t < s->n_ops; t++) {
        const sched_op *op = &s->ops[t];
        if (op->kind != SCHED_TRACE)
            continue;
        const trace_slot_info *si = trace_rt_slot(c->trace, (size_t)op->trace_index);
        const float *src = fbuf(c, op->in[0]);
        const int32_t *src2 = op->in[1] >= 0 ? (const int32_t *)dbuf(c, op->in[1]) : NULL;
        for (int q = 0; q < 2; q++) {
            int32_t buf = op->in[q];
            if (buf < 0 || !written_after(c, t, buf))
                continue;
            int32_t p = t - 1;
            while (p >= 0 && s->ops[p].kind == SCHED_TRACE)
                p--;
            int o = s->ops[p].out[0] == buf ? 0 : 1;
            float *d = c->d_tr_snap + off;
            off += ((size_t)si->width + 63) & ~(size_t)63;
            c->tr_snap[2 * p + o] = d;
            if (q == 0)
                src = d;
            else
                src2 = (const int32_t *)d;
        }
        bool wide = hip_trace_threads(si->width) != HIP_TRACE_BATCH_THREADS;
        /* narrow slots first (they go to the device table), wide ones after them */
        fill_trace_args(c, op, src, src2, wide ? &c->tr_wide[c->n_tr_tab + nw++] : &c->tr_wide[nt++]);
    }
}

/* Where the captures may leave the chain (c->tr_fork_op), decided at init from the
 * schedule: nothing rewrites a slot's source after its TRACE op (plan_trace_batch proved it,
 * or the producer keeps a snapshot), so the narrow slots can all be captured as soon as the
 * last of their TRACE ops is reached, beside the ops after it (the LM head streams for
 * ~135 us there); the wide slot (logits) as soon as the LM head GEMV has written it, beside
 * the arg-max.  Only where ops follow: otherwise the capture stays at the step's end. */
static void plan_trace_forks(hip_ctx *c)
{
    const sched *s = c->s;
    int32_t last_op = -1, last_narrow = -1, logits_op = -1;
    bool wide_after_logits = true;
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        if (op->kind != SCHED_TRACE) {
            last_op = i;
            if (op->kind == SCHED_LOGITS)
                logits_op = i;
            continue;
        }
        const trace_slot_info *si = trace_rt_slot(c->trace, (size_t)op->trace_index);
        if (hip_trace_threads(si->width) == HIP_TRACE_BATCH_THREADS)
            last_narrow = i;
        else
            wide_after_logits = wide_after_logits && logits_op >= 0 && op->in[0] == s->ops[logits_op].out[0];
    }
    if (c->n_tr_tab > 0 && last_narrow >= 0 && last_narrow < last_op)
        c->tr_fork_op[0] = last_narrow;
    if (c->n_tr_wide > 0 && wide_after_logits && logits_op >= 0 && logits_op == last_op)
        c->tr_fork_op[1] = logits_op;
}

static hipError_t launch_wide(hip_ctx *c, hipStream_t st)
{
    hipError_t e = hipSuccess;
    for (int i = 0; i < c->n_tr_wide && e == hipSuccess; i++)
        /* MOERT_HIP_TRACE_WIDE1=1: on one block, as inline (for A/B) */
        e = c->tr_wide1 ? hip_launch_trace(&c->tr_wide[c->n_tr_tab + i], 1, st)
                        : hip_launch_trace_wide(&c->tr_wide[c->n_tr_tab + i], st);
    return e;
}

/* Starts capture group `side` (0 narrow, 1 wide) on its stream after what the chain has
 * launched so far; trace_end_launch joins it. */
static int trace_fork(hip_ctx *c, int side, moert_err *err)
{
    hipStream_t ss = c->tr_ss[side];
    HIP_TRY(hipEventRecord(c->tr_fork[side], c->stream), "forking the trace capture");
    HIP_TRY(hipStreamWaitEvent(ss, c->tr_fork[side], 0), "forking the trace capture");
    hipError_t e = side == 0 ? hip_launch_trace_batch(c->d_tr_tab, c->n_tr_tab, ss) : launch_wide(c, ss);
    if (e != hipSuccess)
        return hip_fail(err, e, "launching the trace capture");
    HIP_TRY(hipEventRecord(c->tr_join[side], ss), "the trace capture");
    c->tr_forked[side] = true;
    return MOERT_OK;
}

/* The captures of a one-row step after its last op: those still to run, and the joins of
 * those that ran beside the chain (the step ends when they do). */
static int trace_end_launch(hip_ctx *c, moert_err *err)
{
    if (c->tr_nocap)
        return MOERT_OK;
    hipError_t e = hipSuccess;
    if (!c->tr_forked[0])
        e = hip_launch_trace_batch(c->d_tr_tab, c->n_tr_tab, c->stream);
    if (e == hipSuccess && !c->tr_forked[1])
        e = launch_wide(c, c->stream);
    if (e != hipSuccess)
        return hip_fail(err, e, "launching the trace capture");
    for (int i = 0; i < 2; i++)
        if (c->tr_forked[i])
            HIP_TRY(hipStreamWaitEvent(c->stream, c->tr_join[i], 0), "joining the trace capture");
    c->tr_forked[0] = c->tr_forked[1] = false;
    return MOERT_OK;
}

/* ---- MOERT_HIP_CHECK ---------------------------------------------------------------- */

static bool check_copyable(hip_ctx *c, int32_t buf)
{
    (void)c;
    return buf >= 0;
}

/* Rows [r0, r1) of a buffer that an op writes this step. */
static void out_rows(hip_ctx *c, const sched_op *op, int32_t buf, const exec_step *st,
                     int64_t *r0, int64_t *r1)
{
    const sched_buffer *b = &c->s->bufs[buf];
    *r0 = 0;
    *r1 = st->n_rows < b->rows ? st->n_rows : b->rows;
    if (op->kind == SCHED_KV_STORE || (op->kind == SCHED_QK_NORM_ROPE && buf != op->out[0])) {
        /* the cache is [kv head][position][d], so this step's positions are spread over it:
         * compare all of it (check_op copied the untouched part in from the GPU) */
        *r1 = b->rows;
    } else if (op->kind == SCHED_LOGITS && c->s->logit_rows == 1) {
        *r1 = 1;
    }
}

static bool ring_equal(hip_ctx *c, const sched_op *op, const unsigned char *g, const unsigned char *h,
                       char *why, size_t cap)
{
    const trace_slot_info *si = trace_rt_slot(c->trace, (size_t)op->trace_index);
    if (memcmp(g, h, 8 * TRACE_HDR_WORDS) != 0) {
        const uint64_t *a = (const uint64_t *)g, *b = (const uint64_t *)h;
        snprintf(why, cap, "ring header gpu {%llu %llu %llu %llu} cpu {%llu %llu %llu %llu}",
                 (unsigned long long)a[0], (unsigned long long)a[1], (unsigned long long)a[2],
                 (unsigned long long)a[3], (unsigned long long)b[0], (unsigned long long)b[1],
                 (unsigned long long)b[2], (unsigned long long)b[3]);
        return false;
    }
    uint64_t stored = ((const uint64_t *)h)[TRACE_HDR_STORED];
    for (uint64_t r = 0; r < stored; r++) {
        const unsigned char *ga = g + TRACE_RING_HEADER + r * si->record_bytes;
        const unsigned char *ha = h + TRACE_RING_HEADER + r * si->record_bytes;
        if (memcmp(ga, ha, TRACE_REC_ID_BYTES) != 0) {
            const long long *x = (const long long *)ga, *y = (const long long *)ha;
            snprintf(why, cap, "record %llu: step/pos/hash gpu {%lld %lld %016llx} cpu {%lld %lld %016llx}",
                     (unsigned long long)r, x[0], x[1], (unsigned long long)x[2], y[0], y[1],
                     (unsigned long long)y[2]);
            return false;
        }
        const double *gs = (const double *)(ga + TRACE_REC_STATS_OFF), *hs = (const double *)(ha + TRACE_REC_STATS_OFF);
        for (int k = 0; k < TRACE_N_STATS; k++) {
            double d = fabs(gs[k] - hs[k]), m = fabs(hs[k]);
            bool same = (isnan(gs[k]) && isnan(hs[k])) || d <= 1e-9 * (m > 1 ? m : 1);
            if (!same) {
                snprintf(why, cap, "record %llu: stat %d gpu %.17g cpu %.17g", (unsigned long long)r, k,
                         gs[k], hs[k]);
                return false;
            }
        }
        if (memcmp(ga + TRACE_REC_VALUES_OFF, ha + TRACE_REC_VALUES_OFF, si->record_bytes - TRACE_REC_VALUES_OFF) != 0) {
            snprintf(why, cap, "record %llu: values differ", (unsigned long long)r);
            return false;
        }
    }
    return true;
}

/* Runs op on both backends from the same inputs and compares what it wrote. */
static int check_op(hip_ctx *c, const sched_op *op, const exec_step *st, moert_err *err)
{
    const sched *s = c->s;
    int32_t bufs[5] = {op->in[0], op->in[1], op->in[2], op->out[0], op->out[1]};
    HIP_TRY(hipStreamSynchronize(c->stream), "check");
    for (int i = 0; i < 5; i++) {
        if (!check_copyable(c, bufs[i]))
            continue;
        HIP_TRY(hipMemcpy(c->cpu.vt->host_ptr(&c->cpu, bufs[i]), dbuf(c, bufs[i]), s->bufs[bufs[i]].bytes,
                          hipMemcpyDeviceToHost),
                "check: copying inputs");
    }
    int rc = launch_op(c, op, st, err);
    if (rc)
        return rc;
    HIP_TRY(hipStreamSynchronize(c->stream), "check: running the op");
    if ((rc = check_err_flag(c, sched_kind_name(op->kind), err)))
        return rc;
    if ((rc = c->cpu.vt->run(&c->cpu, op, st, err)))
        return rc;
    c->chk_ops++;
    for (int o = 0; o < 2; o++) {
        int32_t buf = op->out[o];
        if (!check_copyable(c, buf))
            continue;
        const sched_buffer *b = &s->bufs[buf];
        HIP_TRY(hipMemcpy(c->chk_host, dbuf(c, buf), b->bytes, hipMemcpyDeviceToHost), "check: reading");
        const unsigned char *cpu = (const unsigned char *)c->cpu.vt->host_ptr(&c->cpu, buf);
        char why[512] = "";
        bool ok = true;
        if (op->kind == SCHED_TRACE) {
            ok = ring_equal(c, op, c->chk_host, cpu, why, sizeof why);
        } else {
            int64_t r0, r1;
            out_rows(c, op, buf, st, &r0, &r1);
            size_t e0 = (size_t)(r0 * b->cols), e1 = (size_t)(r1 * b->cols);
            if (b->elem == SCHED_I32) {
                const int32_t *x = (const int32_t *)c->chk_host, *y = (const int32_t *)cpu;
                for (size_t k = e0; k < e1 && ok; k++)
                    if (x[k] != y[k]) {
                        ok = false;
                        snprintf(why, sizeof why, "element %zu: gpu %d cpu %d", k, x[k], y[k]);
                    }
            } else if (b->elem == SCHED_F32) {
                const float *x = (const float *)c->chk_host, *y = (const float *)cpu;
                double num = 0, den = 0, worst = -1;
                size_t at = e0;
                bool nan_bad = false;
                for (size_t k = e0; k < e1; k++) {
                    if (isnan(x[k]) != isnan(y[k]))
                        nan_bad = true;
                    double d = (double)x[k] - (double)y[k];
                    num += d * d;
                    den += (double)y[k] * (double)y[k];
                    if (fabs(d) > worst) {
                        worst = fabs(d);
                        at = k;
                    }
                }
                double rel = sqrt(num) / (den > 0 ? sqrt(den) : 1.0);
                if (rel > c->chk_worst) {
                    c->chk_worst = rel;
                    c->chk_worst_op = op_index(c, op);
                }
                if (nan_bad || !(rel <= 1e-4)) {
                    ok = false;
                    snprintf(why, sizeof why, "rel L2 err %.3e over rows [%lld, %lld), max |diff| %.3e "
                             "at element %zu (gpu %.9g cpu %.9g)%s",
                             rel, (long long)r0, (long long)r1, worst, at, (double)x[at], (double)y[at],
                             nan_bad ? ", NaN mismatch" : "");
                }
            }
        }
        if (!ok) {
            c->chk_bad++;
            if (c->chk_bad <= 40)
                fprintf(stderr, "hip check: step %lld (%s, %lld rows at %lld) op %d %s layer %d -> %s: %s\n",
                        (long long)st->index, st->decode ? "decode" : "prefill", (long long)st->n_rows,
                        (long long)st->pos0, op_index(c, op), sched_kind_name(op->kind), op->layer,
                        b->name, why);
        }
    }
    return MOERT_OK;
}

/* ---- steps ---------------------------------------------------------------------------- */

static int hip_begin_step(backend *b, const exec_step *st, bool *ops_done, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    *ops_done = false;
    c->graph_launched = false;
    /* the copy of two steps ago may still be reading this parity's pinned block */
    const int par = (int)(st->index & 1);
    HIP_TRY(hipEventSynchronize(c->ev_params[par]), "begin_step");
    hip_step_params *p = &c->h_params[par];
    memset(p, 0, sizeof *p);
    p->pos0 = st->pos0;
    p->n_rows = st->n_rows;
    p->parity = par;
    p->fed = st->fed;
    p->trace_row0 = st->n_rows;
    p->n_tok = c->n_pend_tok;
    memcpy(p->tok, c->pend_tok, sizeof p->tok);
    c->n_pend_tok = 0;
    if (c->trace) {
        int64_t r0 = 0, r1 = 0;
        trace_rt_rows(c->trace, st, &r0, &r1);
        p->trace_row0 = r0;
        p->gen_step = trace_rt_gen_step(c->trace);
    }
    HIP_TRY(hipMemcpyAsync(c->d_params, p, sizeof *p, hipMemcpyHostToDevice, c->stream), "begin_step");
    HIP_TRY(hipEventRecord(c->ev_params[par], c->stream), "begin_step");
    if (c->profile) {
        c->prof_t0 = now_s();
        HIP_TRY(hipEventRecord(c->prof_ev[2 * c->s->n_ops], c->stream), "profile");
    }
    c->checking_step = false;
    c->tr_batch_step = c->tr_batch && one_row(c, st->n_rows);
    c->tr_forked[0] = c->tr_forked[1] = false;
    if (c->check) {
        bool first = st->decode ? !c->checked_decode : !c->checked_prefill;
        c->checking_step = c->check == 2 || first;
        if (st->decode)
            c->checked_decode = true;
        else
            c->checked_prefill = true;
    }
    if (st->decode && st->n_rows == 1 && c->use_graph && !c->graph_failed) {
        if (c->graph_ready) {
            HIP_TRY(hipGraphLaunch(c->gexec, c->stream), "launching the decode graph");
            c->graph_launched = true;
            *ops_done = true;
            return MOERT_OK;
        }
        hipError_t e = hipStreamBeginCapture(c->stream, hipStreamCaptureModeThreadLocal);
        if (e == hipSuccess)
            c->capturing = true;
        else
            c->graph_failed = true; /* run decode eagerly from now on */
    }
    return MOERT_OK;
}

static int hip_run(backend *b, const sched_op *op, const exec_step *st, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    int rc;
    if (c->checking_step)
        return check_op(c, op, st, err);
    int32_t oi = c->profile == 2 ? op_index(c, op) : -1;
    if (oi >= 0)
        HIP_TRY(hipEventRecord(c->prof_ev[2 * oi], c->stream), "profile");
    rc = launch_op(c, op, st, err);
    if (oi >= 0 && !rc)
        HIP_TRY(hipEventRecord(c->prof_ev[2 * oi + 1], c->stream), "profile");
    if (rc) {
        if (c->capturing) { /* leave the stream usable */
            hipGraph_t g = NULL;
            (void)hipStreamEndCapture(c->stream, &g);
            if (g)
                (void)hipGraphDestroy(g);
            c->capturing = false;
            c->graph_failed = true;
        }
        return rc;
    }
    if (c->debug) {
        HIP_TRY(hipStreamSynchronize(c->stream), sched_kind_name(op->kind));
        char where[96];
        snprintf(where, sizeof where, "op %d %s layer %d", op_index(c, op), sched_kind_name(op->kind),
                 op->layer);
        return check_err_flag(c, where, err);
    }
    return MOERT_OK;
}

static int profile_step(hip_ctx *c, const exec_step *st, moert_err *err)
{
    int32_t n = c->s->n_ops;
    HIP_TRY(hipEventRecord(c->prof_ev[2 * n + 1], c->stream), "profile");
    HIP_TRY(hipEventSynchronize(c->prof_ev[2 * n + 1]), "profile");
    int ph = st->decode ? 1 : 0;
    float ms = 0;
    HIP_TRY(hipEventElapsedTime(&ms, c->prof_ev[2 * n], c->prof_ev[2 * n + 1]), "profile");
    c->prof_step_ms[ph] += ms;
    c->prof_host_ms[ph] += 1e3 * (now_s() - c->prof_t0);
    c->prof_steps[ph]++;
#if MOERT_HIP_TIMELINE
    {
        unsigned tn = 0;
        static unsigned long long t[MOERT_TL_MAX];
        static unsigned ln[MOERT_TL_MAX];
        HIP_TRY(hip_timeline_take(t, ln, &tn, MOERT_TL_MAX), "timeline");
        if (tn > MOERT_TL_MAX)
            tn = MOERT_TL_MAX;
        static int tl_seen; /* the first graph steps are left out: their stamps include the capture */
        if (st->decode && c->graph_ready && tn > 1 && ++tl_seen > 2) {
            if (!tl_nk) {
                tl_nk = tn;
                memcpy(tl_line, ln, tn * sizeof *ln);
            }
            if (tn == tl_nk) {
                for (unsigned i = 0; i + 1 < tn; i++) {
                    tl_gap[i] += (double)(long long)(t[i + 1] - t[i]) * 1e-3;
                    tl_off[i] += (double)(long long)(t[i] - t[0]) * 1e-3;
                }
                tl_steps++;
            }
        }
    }
#endif
    for (int32_t i = 0; c->profile == 2 && i < n; i++) {
        if (c->opf[i] & OPF_SKIP)
            continue;
        HIP_TRY(hipEventElapsedTime(&ms, c->prof_ev[2 * i], c->prof_ev[2 * i + 1]), "profile");
        c->prof_ms[ph][c->s->ops[i].kind] += ms;
        c->prof_calls[ph][c->s->ops[i].kind]++;
    }
    return MOERT_OK;
}

static int end_step_ops(hip_ctx *c, const exec_step *st, moert_err *err)
{
    if (c->tr_batch_step && !c->graph_launched) {
        int rb = trace_end_launch(c, err);
        if (rb) {
            if (c->capturing) {
                hipGraph_t g0 = NULL;
                (void)hipStreamEndCapture(c->stream, &g0);
                if (g0)
                    (void)hipGraphDestroy(g0);
                c->capturing = false;
                c->graph_failed = true;
            }
            return rb;
        }
    }
    if (c->profile && !c->capturing) {
        int rc = profile_step(c, st, err);
        if (rc)
            return rc;
    }
    if (c->checking_step && c->check) {
        const sched_op *wop = &c->s->ops[c->chk_worst_op];
        fprintf(stderr, "hip check: step %lld (%s, %lld rows): %lld ops compared so far, %lld mismatches; "
                "worst rel L2 err of the step %.3e (op %d %s layer %d)\n",
                (long long)st->index, st->decode ? "decode" : "prefill", (long long)st->n_rows,
                c->chk_ops, c->chk_bad, c->chk_worst, c->chk_worst_op, sched_kind_name(wop->kind), wop->layer);
        c->chk_worst = 0;
        c->chk_worst_op = 0;
        c->checking_step = false;
    }
    if (!c->capturing)
        return MOERT_OK;
    c->capturing = false;
    hipGraph_t g = NULL;
    hipError_t e = hipStreamEndCapture(c->stream, &g);
    if (e == hipSuccess && g) {
        c->graph = g;
        e = moert_graph_instantiate(&c->gexec, c->graph);
        if (e == hipSuccess) {
            c->graph_ready = true;
            HIP_TRY(hipGraphLaunch(c->gexec, c->stream), "launching the decode graph");
            return MOERT_OK;
        }
    }
    /* Capture or instantiation failed: nothing of this step ran.  Run it eagerly and stay
     * eager for decode from now on. */
    (void)hipGetLastError();
    destroy_graph(c);
    c->graph_failed = true;
    if (c->debug)
        fprintf(stderr, "backend hip: decode graph unavailable (%s); decoding eagerly\n",
                hipGetErrorString(e));
    c->tr_forked[0] = c->tr_forked[1] = false; /* the forks went into the failed capture */
    for (int32_t i = 0; i < c->s->n_ops; i++) {
        int rc = launch_op(c, &c->s->ops[i], st, err);
        if (rc)
            return rc;
    }
    return c->tr_batch_step ? trace_end_launch(c, err) : MOERT_OK;
}

static int hip_end_step(backend *b, const exec_step *st, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    int rc = end_step_ops(c, st, err);
    if (!rc) /* greedy_token waits for this, not for the steps begun after it */
        HIP_TRY(hipEventRecord(c->ev_pick[st->index & 1], c->stream), "end_step");
    return rc;
}

static int hip_sync(backend *b, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    HIP_TRY(hipStreamSynchronize(c->stream), "synchronising");
    return MOERT_OK;
}

static int hip_greedy_token(backend *b, int64_t step, int32_t *id, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    const int par = (int)(step & 1);
    if (!c->m_argmax) { /* not mapped: the last step's pick only (hip_feeds says no) */
        HIP_TRY(hipMemcpyAsync(&c->h_argmax[par], c->d_argmax, sizeof(int32_t), hipMemcpyDeviceToHost,
                               c->stream),
                "reading the greedy token");
        HIP_TRY(hipStreamSynchronize(c->stream), "reading the greedy token");
    } else {
        HIP_TRY(hipEventSynchronize(c->ev_pick[par]), "reading the greedy token");
    }
    *id = ((volatile int32_t *)c->h_argmax)[par];
    return MOERT_OK;
}

/* Fed steps need the picks of two steps apart in host memory (mapped) and no per-op work on
 * the host between steps (check mode runs the CPU twin on the same inputs). */
static bool hip_feeds(backend *b)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    return c->m_argmax && !c->check && !c->debug && !env_off("MOERT_HIP_FEED");
}

/* A fed step begun past a stop and taken back: every ring's header as of that step's start
 * (the shadow it read, by its parity; the next step, of the same parity, reads it again), so
 * its records are unwritten.  The session feeds a traced run only while no step can
 * overwrite a stored record, so the bytes it wrote lie in free slots. */
static int hip_trace_take_back(backend *b, int64_t step, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    if (!c->trace)
        return MOERT_OK;
    const unsigned long long *sh = c->d_shadow + (size_t)(step & 1) * (size_t)c->n_trace * TRACE_HDR_WORDS;
    for (int i = 0; i < c->n_trace; i++)
        HIP_TRY(hipMemcpyAsync(dbuf(c, trace_rt_slot(c->trace, (size_t)i)->ring_buf), sh + (size_t)i * TRACE_HDR_WORDS,
                               TRACE_HDR_WORDS * sizeof *sh, hipMemcpyDeviceToDevice, c->stream),
                "taking a traced step back");
    HIP_TRY(hipStreamSynchronize(c->stream), "taking a traced step back");
    return MOERT_OK;
}

/* ---- bench hooks ------------------------------------------------------------------------ */

static const char *hip_device_name(backend *b)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    return c->props.name;
}

/* Best of 3 timings of 10 device-to-device copies of up to 1 GiB, bytes read + written. */
static double hip_copy_bandwidth(backend *b, moert_err *err)
{
    hip_ctx *c = (hip_ctx *)b->ctx;
    size_t fr = 0, tot = 0;
    (void)hipMemGetInfo(&fr, &tot);
    size_t n = (size_t)1 << 30;
    while (n > ((size_t)16 << 20) && 2 * n + ((size_t)256 << 20) > fr)
        n /= 2;
    void *src = NULL, *dst = NULL;
    hipEvent_t e0 = NULL, e1 = NULL;
    double best = 0;
    hipError_t e = hipMalloc(&src, n);
    if (e == hipSuccess)
        e = hipMalloc(&dst, n);
    if (e == hipSuccess)
        e = hipEventCreate(&e0);
    if (e == hipSuccess)
        e = hipEventCreate(&e1);
    if (e == hipSuccess)
        e = hipMemsetAsync(src, 1, n, c->stream);
    if (e == hipSuccess)
        e = hipMemcpyAsync(dst, src, n, hipMemcpyDeviceToDevice, c->stream); /* warm-up */
    for (int rep = 0; rep < 3 && e == hipSuccess; rep++) {
        e = hipEventRecord(e0, c->stream);
        for (int i = 0; i < 10 && e == hipSuccess; i++)
            e = hipMemcpyAsync(dst, src, n, hipMemcpyDeviceToDevice, c->stream);
        if (e == hipSuccess)
            e = hipEventRecord(e1, c->stream);
        if (e == hipSuccess)
            e = hipEventSynchronize(e1);
        float ms = 0;
        if (e == hipSuccess)
            e = hipEventElapsedTime(&ms, e0, e1);
        if (e == hipSuccess && ms > 0) {
            double gbs = 2.0 * 10.0 * (double)n / ((double)ms * 1e-3) / 1e9;
            if (gbs > best)
                best = gbs;
        }
    }
    if (e != hipSuccess)
        hip_fail(err, e, "measuring copy bandwidth");
    if (e0)
        (void)hipEventDestroy(e0);
    if (e1)
        (void)hipEventDestroy(e1);
    if (src)
        (void)hipFree(src);
    if (dst)
        (void)hipFree(dst);
    return e == hipSuccess ? best : 0;
}

static backend_vtable make_vtable(void)
{
    backend_vtable v;
    memset(&v, 0, sizeof v);
    v.name = "hip";
    v.init = hip_init;
    v.write = hip_write;
    v.begin_step = hip_begin_step;
    v.run = hip_run;
    v.end_step = hip_end_step;
    v.greedy_token = hip_greedy_token;
    v.feeds = hip_feeds;
    v.trace_take_back = hip_trace_take_back;
    v.sync = hip_sync;
    v.read = hip_read;
    v.host_ptr = hip_host_ptr;
    v.shutdown = hip_shutdown;
    v.device_name = hip_device_name;
    v.copy_bandwidth_gbs = hip_copy_bandwidth;
    return v;
}

static const backend_vtable hip_vtable = make_vtable();

extern "C" const backend_vtable *backend_hip_vtable(void)
{
    return &hip_vtable;
}

#ifndef MOERT_HIP_TARGET
#define MOERT_HIP_TARGET "unknown"
#endif

extern "C" const char *backend_hip_target(void)
{
    return MOERT_HIP_TARGET;
}
