/* backend: the one interface through which the executor runs a schedule, whatever the
 * device.  A backend gets the schedule, the arena plan (one offset per buffer) and the
 * bound weights at init and nothing else; it owns its arena (host or device) and its copy
 * or view of the weights.  The schedule and the planner never ask which backend runs.
 *
 * Per step the executor calls begin_step, then run for every op in order, then end_step.
 * A backend may replay a recorded step instead of running ops one by one (a HIP graph for
 * decode): begin_step then sets *ops_done.
 */
#ifndef MOERT_BACKEND_H
#define MOERT_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "model.h"
#include "sched.h"

typedef struct exec_step {
    int64_t index;      /* 0-based step number of the run (prefill chunks, then decode) */
    int64_t pos0;       /* position of the first row */
    int64_t n_rows;     /* 1 .. sched.max_rows */
    bool decode;        /* a single-token generation step */
    bool fed;           /* decode: the input id is the backend's own greedy pick of the previous
                         * step, still on the device (see feeds); nothing was written */
} exec_step;

/* A backend's own scratch (matmul panels, attention partials, ...), stated before init as a
 * planner request, as ggml's buffer types answer get_alloc_size: the plan places it in the
 * arena with the schedule's buffers and the checker proves it, so the arena is the whole
 * plan on every device. */
typedef struct backend_request {
    const char *name;   /* static: "cpu.panel", "hip.attn_part", ... */
    uint64_t bytes;     /* > 0 */
    uint64_t align;     /* power of two >= ARENA_MIN_ALIGN */
    bool persistent;    /* kept across steps (zero at init); else alive through each step */
} backend_request;

#define BACKEND_MAX_REQUESTS 16

/* The scratch backend `kind` needs to run schedule s: fills reqs[0..n) and returns n
 * (<= BACKEND_MAX_REQUESTS).  Needs no device and no weights, so a CPU-only build plans
 * the HIP backend's scratch too.  Sizes saturate (the planner refuses what is too large).
 * Request i is the buffer backend_init.scratch0 + i. */
int backend_requests(cfg_backend kind, const sched *s, backend_request *reqs);

/* The CPU backend's requests (CPU_REQ_*), for backend_requests and for a backend that runs
 * the CPU kernels alongside (the HIP backend's MOERT_HIP_CHECK). */
enum { CPU_REQ_PANEL, CPU_REQ_ROWPTRS, CPU_REQ_SCORES, CPU_REQ_GATHER, CPU_REQ_QACT, CPU_REQ_COUNT };
int backend_cpu_requests(const sched *s, backend_request *reqs);

typedef struct backend_init {
    const sched *s;
    const uint64_t *offsets;   /* per buffer, from the arena plan */
    int32_t scratch0;          /* buffer id of this backend's first request */
    uint64_t arena_bytes;
    const model_weights *w;
    int32_t threads;           /* CPU worker threads (>= 1) */
    void *trace;               /* the trace_rt capture context (may be NULL) */
    const struct trace_route *route; /* routing replay: recorded routing replaces the
                                        router's (trace/trace_route.h); NULL = off */
    cfg_sim_precision sim;     /* precision simulation: op outputs rounded (CPU only) */
} backend_init;

typedef struct backend backend;

typedef struct backend_vtable {
    const char *name;
    int (*init)(backend *b, const backend_init *in, moert_err *err);
    /* Host -> backend arena bytes (e.g. the step's token ids). */
    int (*write)(backend *b, int32_t buf, uint64_t offset, const void *src, uint64_t n,
                 moert_err *err);
    int (*begin_step)(backend *b, const exec_step *st, bool *ops_done, moert_err *err);
    int (*run)(backend *b, const sched_op *op, const exec_step *st, moert_err *err);
    int (*end_step)(backend *b, const exec_step *st, moert_err *err);
    /* Waits until all work issued so far has completed. */
    int (*sync)(backend *b, moert_err *err);
    /* Backend arena -> host bytes; completes all work issued before it. */
    int (*read)(backend *b, int32_t buf, uint64_t offset, void *dst, uint64_t n, moert_err *err);
    /* Host address of a buffer in a host-visible arena (CPU: the arena itself; HIP: the host
     * mirror that read() fills), so the host can sample from logits without a copy. */
    void *(*host_ptr)(backend *b, int32_t buf);
    void (*shutdown)(backend *b);
    /* Optional (NULL when not applicable): the device's name, and its measured
     * device-to-device copy bandwidth in GB/s counting bytes read plus written. */
    const char *(*device_name)(backend *b);
    double (*copy_bandwidth_gbs)(backend *b, moert_err *err);
    /* Optional: the arg-max of the last logits row of step `step` (exec_step.index), computed
     * by the device within the step (ties -> lower index, as ops_argmax), so greedy decoding
     * reads back 4 bytes.  Valid for the last two steps begun; waits for that step only. */
    int (*greedy_token)(backend *b, int64_t step, int32_t *id, moert_err *err);
    /* Optional: whether a decode step may be fed (exec_step.fed), so that the host can begin
     * step N + 1 before it reads step N's pick and the device never waits for the host. */
    bool (*feeds)(backend *b);
    /* Optional: takes the trace records of step `step` (the last one begun, fed ahead and not
     * wanted) back out of the rings: each ring's header as of that step's start.  Exact when
     * the step overwrote no record, which the session ensures (trace_rt_room) before it feeds a
     * traced generation.  Without it, traced generations are not fed. */
    int (*trace_take_back)(backend *b, int64_t step, moert_err *err);
} backend_vtable;

struct backend {
    const backend_vtable *vt;
    void *ctx;
};

extern const backend_vtable backend_cpu_vtable;

/* The HIP backend, or NULL when this binary was built without it. */
const backend_vtable *backend_hip_vtable(void);
/* The GPU target the HIP backend was compiled for ("sm_90", "gfx90a"), NULL without it. */
const char *backend_hip_target(void);

/* Runs the HIP kernels' weight loaders (hip/hip_wload.h, __host__ __device__) on the host
 * over random rows of every weight type and compares each element's bits with ops_to_f32:
 * 0 when all equal, 1 on the first difference (described in why), -1 in a build without the
 * HIP backend.  Needs no GPU. */
int backend_hip_dequant_selftest(char *why, size_t cap);
/* Runs the tensor-core GEMM's activation split (hip/gemm_mma.hip) on the host over edge
 * cases and random floats: 0 when every value equals hi + lo + lo2 exactly with each term a
 * bf16 value (|a| >= 2^-103; smaller ones within 2^-126; Inf and NaN in hi alone), 1 on the
 * first failure (described in why), -1 in a
 * build without the HIP backend.  Needs no GPU. */
int backend_hip_mma_split_selftest(char *why, size_t cap);
/* Runs the act-q8 tensor-core GEMM (hip/gemm_qmma.hip) once on the GPU over host data, for
 * the GPU test: qa holds n_arows quantized rows (ops_qact_row's layout for k, row r at
 * qa + r * ops_qact_row_bytes(k)); w holds n_exp matrices of [n, k] in type dt's blocks, one
 * after the other, uploaded in the layout the backend gives such rows (regrouped where k
 * allows: hip/hip_kernels.h's X4 types).  tiles NULL: dense, out[r * n + j] for the m rows; else the MoE tile table
 * (hip_gemm_qmma.h) of n_tiles entries with the row table gather (tile row p reads A row
 * gather[p] / gdiv), out[p * n + j] for the m tile rows p.  0 when it ran; 1 on a device
 * error (described in why); -1 in a build without the HIP backend; -2 when there is no GPU
 * or the kernel does not run on it (why says which). */
int backend_hip_qgemm_run(int dt, const void *qa, int n_arows, const void *w, int n_exp, int n, int k,
                          const int32_t *tiles, int n_tiles, const int32_t *gather, int gdiv, int m, float *out,
                          char *why, size_t cap);
/* Runs one dense tensor-core GEMM of the planes path (hip/gemm_mma.hip) on the GPU over host
 * data, for the GPU test: a [m, k] fp32, w [n, k] bf16 bits, out [m, n]; kparts > 1 splits k
 * into that many parts (hip_splitk_parts' shape of it).  0 when it ran; 1 on a device error
 * (why); -1 in a build without the HIP backend; -2 without a GPU or where the kernel does
 * not run. */
int backend_hip_mma_dense_run(int m, int n, int k, const float *a, const uint16_t *w, int kparts, float *out,
                              char *why, size_t cap);
/* Runs the decode top-k (hip/kernels.hip) on the GPU over host logits [rows, E]: with rank,
 * the ranking kernel, else the arg-max rounds; w and ids [rows, K].  0 when it ran; 1 on a
 * device error (why); -1 in a build without the HIP backend; -2 without a GPU. */
int backend_hip_route_run(int rows, int E, int K, int norm, const float *logits, int rank, float *w, int32_t *ids,
                          char *why, size_t cap);
/* Runs the act-q8 kernels' formulas (hip/qact.hip, __host__ __device__) on the host: rows
 * quantized by them (ties, NaN/Inf, tiny and ordinary blocks, k with and without whole
 * 256-blocks) must equal ops_qact_row byte for byte, and their integer dot products of every
 * block type agree with ops_matmul_qact within float rounding (1e-5 of the sum of the
 * terms' magnitudes).  0 ok, 1 on the first failure (why), -1 without the HIP backend. */
int backend_hip_qact_selftest(char *why, size_t cap);
/* How many ops (norms and residual adds) the last HIP backend init moved into a neighbouring
 * kernel for one-row steps (hip/backend_hip.hip, "decode fusions"); -1 without the backend. */
int backend_hip_decfusions(void);

/* The bound tensor a schedule weight role names for `layer`.  SCHED_W_EXPERTS: index =
 * expert * 3 + part; SCHED_W_MLP: index = part; part 0 gate, 1 up, 2 down.  NULL when the
 * role does not apply to the layer. */
const model_tensor *backend_weight(const model_weights *w, sched_weight role, int32_t layer,
                                   int32_t index);

#endif
