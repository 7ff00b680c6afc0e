/* comm: collectives (see comm.h); the loopback copies between the ranks' buffers. */
#include "comm.h"

#include <string.h>

#ifdef MOERT_NCCL
#include <nccl.h>

static int nccl_init(comm *c, moert_err *err)
{
    ncclComm_t comms[COMM_MAX_RANKS];
    ncclResult_t r = ncclCommInitAll(comms, c->ranks, NULL); /* devices 0..ranks-1 */
    if (r != ncclSuccess)
        return err_set(err, MOERT_ENODEV, "comm: ncclCommInitAll over %d GPUs: %s", (int)c->ranks,
                       ncclGetErrorString(r));
    for (int32_t i = 0; i < c->ranks; i++)
        c->nccl[i] = comms[i];
    return MOERT_OK;
}

static int nccl_check(ncclResult_t r, const char *what, moert_err *err)
{
    return r == ncclSuccess ? MOERT_OK : err_set(err, MOERT_EINTERNAL, "comm: %s: %s", what, ncclGetErrorString(r));
}

static int nccl_allgather(const comm *c, void *const *buf, size_t bytes, moert_err *err)
{
    int st = nccl_check(ncclGroupStart(), "ncclGroupStart", err);
    for (int32_t r = 0; r < c->ranks && !st; r++)
        st = nccl_check(ncclAllGather((const uint8_t *)buf[r] + (size_t)r * bytes, buf[r], bytes, ncclUint8,
                                      (ncclComm_t)c->nccl[r], (cudaStream_t)c->stream[r]),
                        "ncclAllGather", err);
    int end = nccl_check(ncclGroupEnd(), "ncclGroupEnd", err);
    return st ? st : end;
}

static int nccl_broadcast(const comm *c, void *const *buf, size_t bytes, int32_t root, moert_err *err)
{
    int st = nccl_check(ncclGroupStart(), "ncclGroupStart", err);
    for (int32_t r = 0; r < c->ranks && !st; r++)
        st = nccl_check(ncclBroadcast(buf[r], buf[r], bytes, ncclUint8, root, (ncclComm_t)c->nccl[r],
                                      (cudaStream_t)c->stream[r]),
                        "ncclBroadcast", err);
    int end = nccl_check(ncclGroupEnd(), "ncclGroupEnd", err);
    return st ? st : end;
}
#endif

int comm_init(comm *c, comm_kind kind, int32_t ranks, moert_err *err)
{
    memset(c, 0, sizeof *c);
    if (ranks < 1 || ranks > COMM_MAX_RANKS)
        return err_set(err, MOERT_EUSAGE, "comm: %d ranks, expected 1..%d", (int)ranks, COMM_MAX_RANKS);
    c->kind = kind;
    c->ranks = ranks;
    if (kind == COMM_LOOPBACK)
        return MOERT_OK;
#ifdef MOERT_NCCL
    if (kind == COMM_NCCL) {
        int st = nccl_init(c, err);
        if (st)
            memset(c, 0, sizeof *c);
        return st;
    }
#endif
    memset(c, 0, sizeof *c);
    return err_set(err, MOERT_ENODEV, "comm: the NCCL transport is not built in this binary (-DMOERT_NCCL)");
}

void comm_set_streams(comm *c, void *const *streams)
{
    for (int32_t r = 0; r < c->ranks; r++)
        c->stream[r] = streams[r];
}

void comm_free(comm *c)
{
#ifdef MOERT_NCCL
    if (c->kind == COMM_NCCL)
        for (int32_t r = 0; r < c->ranks; r++)
            if (c->nccl[r])
                ncclCommDestroy((ncclComm_t)c->nccl[r]);
#endif
    memset(c, 0, sizeof *c);
}

static void copy_slice(uint8_t *dst, const uint8_t *src, size_t bytes)
{
    if (dst != src && bytes)
        memcpy(dst, src, bytes);
}

int comm_allgather(const comm *c, void *const *buf, size_t bytes, moert_err *err)
{
#ifdef MOERT_NCCL
    if (c->kind == COMM_NCCL && c->ranks >= 1)
        return nccl_allgather(c, buf, bytes, err);
#endif
    if (c->kind != COMM_LOOPBACK || c->ranks < 1)
        return err_set(err, MOERT_EINTERNAL, "comm_allgather: comm not initialised");
    for (int32_t q = 0; q < c->ranks; q++)
        for (int32_t r = 0; r < c->ranks; r++)
            if (r != q)
                copy_slice((uint8_t *)buf[q] + (size_t)r * bytes, (const uint8_t *)buf[r] + (size_t)r * bytes,
                           bytes);
    return MOERT_OK;
}

int comm_broadcast(const comm *c, void *const *buf, size_t bytes, int32_t root, moert_err *err)
{
    if (c->ranks < 1 || (c->kind != COMM_LOOPBACK && c->kind != COMM_NCCL))
        return err_set(err, MOERT_EINTERNAL, "comm_broadcast: comm not initialised");
    if (root < 0 || root >= c->ranks)
        return err_set(err, MOERT_EUSAGE, "comm_broadcast: root %d outside 0..%d", (int)root, (int)c->ranks - 1);
#ifdef MOERT_NCCL
    if (c->kind == COMM_NCCL)
        return nccl_broadcast(c, buf, bytes, root, err);
#endif
    for (int32_t r = 0; r < c->ranks; r++)
        if (r != root)
            copy_slice(buf[r], buf[root], bytes);
    return MOERT_OK;
}
