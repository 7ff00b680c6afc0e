/* shard: how runtime.gpus = N ranks split one model (expert parallelism), as arithmetic.
 *
 * Every rank holds the whole model except the routed experts: embeddings, lm head, norms,
 * attention and the routers are replicated, and of every sparse layer's experts rank r
 * holds those with e % N == r (round-robin, so each rank owns every N-th expert of every
 * layer and the ranks' shares differ by at most one expert).  Each rank runs the same
 * schedule, so its arena (KV cache included: attention is replicated) is the one plan's
 * arena; the expert-parallel gather buffer is a CPU request inside it.
 *
 * A rank's weights region follows wlayout's rule (wlayout.h): every placed tensor padded
 * to WLAYOUT_ALIGN, a tied lm head placed once.  shard_weights_topo sizes it from the
 * topology at one element size (a synthetic or uniform-dtype model); shard_weights_bound
 * from bound tensors' bytes (any dtype mix).  For N = 1 both equal wlayout_plan's region.
 */
#ifndef MOERT_SHARD_H
#define MOERT_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "model.h"
#include "sched.h"

#define SHARD_MAX_GPUS 8

/* The rank that holds (and computes) expert e of every sparse layer. */
int32_t shard_expert_owner(int64_t expert, int32_t gpus);

/* Parameters of the topology: replicated ones, and those of all routed experts. */
void shard_params(const cfg_topology *t, uint64_t *replicated, uint64_t *experts);

/* One rank's weights region, split into what every rank holds and its experts. */
typedef struct shard_weights {
    uint64_t replicated_bytes;
    uint64_t expert_bytes;
    int64_t experts_per_layer; /* experts this rank owns in each sparse layer */
} shard_weights;

/* Fill w[0..gpus) (gpus in 1..SHARD_MAX_GPUS). */
void shard_weights_topo(const cfg_topology *t, uint64_t elem_bytes, int32_t gpus, shard_weights *w);
void shard_weights_bound(const model_weights *mw, int32_t gpus, shard_weights *w);

typedef struct shard_gpu {
    shard_weights w;
    uint64_t weights_bytes; /* replicated + experts */
    uint64_t arena_bytes;   /* the plan's arena: every buffer, KV cache and scratch included */
    uint64_t kv_bytes;      /* of which the KV cache */
    uint64_t total_bytes;   /* weights + arena: the rank's device memory */
} shard_gpu;

typedef struct shard_plan {
    int32_t gpus;
    uint64_t device_bytes;  /* the memory each device offers */
    shard_gpu gpu[SHARD_MAX_GPUS];
    uint64_t max_total_bytes;
    bool fits;
} shard_plan;

/* The per-rank device memory of schedule s with arena_bytes and weights w[0..gpus),
 * checked against device_bytes.  Always fills *out; returns MOERT_ECONFIG when a rank
 * does not fit, saying which and by how many bytes (and GiB). */
int shard_plan_build(const sched *s, uint64_t arena_bytes, int32_t gpus, const shard_weights *w,
                     uint64_t device_bytes, shard_plan *out, moert_err *err);

/* The expert-parallel gather buffer the CPU backend requests for N ranks: N slices of
 * max_rows * top-k rows of hidden floats (0 when gpus <= 1). */
uint64_t shard_gather_bytes(const sched *s, int32_t gpus);

#endif
