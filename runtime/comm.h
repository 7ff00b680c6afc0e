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
 * Implementations: COMM_LOOPBACK (in-process memcpy, always built).  A NCCL/RCCL one is
 * not built yet (comm_init refuses COMM_NCCL with MOERT_ENODEV).  Nothing allocates: a
 * comm is a value.
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
} comm;

/* ranks in 1..COMM_MAX_RANKS; MOERT_EUSAGE otherwise, MOERT_ENODEV for a transport not built. */
int comm_init(comm *c, comm_kind kind, int32_t ranks, moert_err *err);

int comm_allgather(const comm *c, void *const *buf, size_t bytes, moert_err *err);
int comm_broadcast(const comm *c, void *const *buf, size_t bytes, int32_t root, moert_err *err);

#endif
