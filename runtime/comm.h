/* comm: the collectives expert parallelism needs, behind one small interface, so the MoE
 * step is written once for every transport.
 *
 * One process drives `ranks` ranks (GPUs, or simulated ranks on the CPU); every call
 * passes one buffer per rank, in rank order, as NCCL's grouped calls do.  Two collectives:
 *   comm_allgather: in place.  buf[r] holds ranks * bytes bytes; before the call rank r's
 *     contribution is at buf[r] + r * bytes, after it every buf[q] holds every rank's
 *     contribution in rank order.  No arithmetic: the gathered bytes are the sent bytes.
 *   comm_broadcast: root's `bytes` bytes copied to every other rank's buffer.
 * Buffers of different ranks may be the same memory (the CPU's simulated ranks share one
 * arena): nothing is copied onto itself.
 *
 * Implementations: COMM_LOOPBACK (in-process memcpy, always built; nothing allocates: a
 * loopback comm is a value).  COMM_NCCL only in a build with -DMOERT_NCCL (NVIDIA's NCCL,
 * or AMD's RCCL, which has its API): one communicator per local GPU 0..ranks-1
 * (ncclCommInitAll), every collective one NCCL group of per-rank calls on the streams
 * comm_set_streams names (so a captured decode graph records them); the same in-place
 * all-gather, bytes as ncclUint8, so no arithmetic either.  Elsewhere comm_init refuses
 * COMM_NCCL with MOERT_ENODEV.  `make comm-nccl` compiles it (no GPU needed).
 */
#ifndef MOERT_COMM_H
#define MOERT_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define COMM_MAX_RANKS 8

typedef enum comm_kind { COMM_LOOPBACK = 0, COMM_NCCL = 1 } comm_kind;

typedef struct comm {
    comm_kind kind;
    int32_t ranks;
    void *nccl[COMM_MAX_RANKS];   /* COMM_NCCL: ncclComm_t per rank */
    void *stream[COMM_MAX_RANKS]; /* COMM_NCCL: cudaStream_t / hipStream_t per rank (0 = default) */
} comm;

/* ranks in 1..COMM_MAX_RANKS; MOERT_EUSAGE otherwise, MOERT_ENODEV for a transport not built. */
int comm_init(comm *c, comm_kind kind, int32_t ranks, moert_err *err);

/* COMM_NCCL: the stream each rank's collectives run on; a loopback ignores them. */
void comm_set_streams(comm *c, void *const *streams);
/* Releases a COMM_NCCL's communicators; safe on any initialised or zeroed comm. */
void comm_free(comm *c);

int comm_allgather(const comm *c, void *const *buf, size_t bytes, moert_err *err);
int comm_broadcast(const comm *c, void *const *buf, size_t bytes, int32_t root, moert_err *err);

#endif
