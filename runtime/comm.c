/* comm: collectives (see comm.h); the loopback copies between the ranks' buffers. */
#include "comm.h"

#include <string.h>

int comm_init(comm *c, comm_kind kind, int32_t ranks, moert_err *err)
{
    memset(c, 0, sizeof *c);
    if (ranks < 1 || ranks > COMM_MAX_RANKS)
        return err_set(err, MOERT_EUSAGE, "comm: %d ranks, expected 1..%d", (int)ranks, COMM_MAX_RANKS);
    if (kind != COMM_LOOPBACK)
        return err_set(err, MOERT_ENODEV, "comm: the NCCL transport is not built in this binary");
    c->kind = kind;
    c->ranks = ranks;
    return MOERT_OK;
}

static void copy_slice(uint8_t *dst, const uint8_t *src, size_t bytes)
{
    if (dst != src && bytes)
        memcpy(dst, src, bytes);
}

int comm_allgather(const comm *c, void *const *buf, size_t bytes, moert_err *err)
{
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
    if (c->kind != COMM_LOOPBACK || c->ranks < 1)
        return err_set(err, MOERT_EINTERNAL, "comm_broadcast: comm not initialised");
    if (root < 0 || root >= c->ranks)
        return err_set(err, MOERT_EUSAGE, "comm_broadcast: root %d outside 0..%d", (int)root, (int)c->ranks - 1);
    for (int32_t r = 0; r < c->ranks; r++)
        if (r != root)
            copy_slice(buf[r], buf[root], bytes);
    return MOERT_OK;
}
