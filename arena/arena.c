/* arena: the one block every runtime buffer lives in.  One anonymous private mapping:
 * page-aligned, zero-filled by the kernel, returned whole at exit. */
#include "arena.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint64_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uint64_t)p : 4096;
}

/* The mapped length for `bytes`, or 0 when rounding to pages would not fit a size_t. */
static size_t mapped_len(uint64_t bytes)
{
    uint64_t p = page_size();
    if (bytes > (uint64_t)SIZE_MAX - (p - 1))
        return 0;
    return (size_t)((bytes + p - 1) & ~(p - 1));
}

int arena_init(arena *a, uint64_t bytes, moert_err *err)
{
    if (!a)
        return err_set(err, MOERT_EUSAGE, "arena: arena_init called with a NULL arena");
    a->base = NULL;
    a->bytes = 0;
    if (bytes == 0)
        return MOERT_OK;
    size_t len = mapped_len(bytes);
    if (len == 0)
        return err_set(err, MOERT_ENOMEM, "arena: cannot map %llu bytes: %s",
                       (unsigned long long)bytes, strerror(ENOMEM));
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        return err_set(err, MOERT_ENOMEM, "arena: cannot map %llu bytes: %s",
                       (unsigned long long)bytes, strerror(e));
    }
    madvise(p, len, MADV_HUGEPAGE); /* a hint: fewer TLB misses on KV-cache sweeps */
    a->base = p;
    a->bytes = bytes;
    return MOERT_OK;
}

void arena_free(arena *a)
{
    if (!a)
        return;
    if (a->base)
        munmap(a->base, mapped_len(a->bytes));
    a->base = NULL;
    a->bytes = 0;
}
