/* Interposes the C allocator for the whole test process (libgomp and libc included) and
 * counts calls while counting is on.  Not linked into the ASan build (ASan owns malloc). */
#include <stddef.h>
#include <stdint.h>

#include "alloc_count.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

static volatile int counting;
static volatile uint64_t calls;

void alloc_count_start(void)
{
    calls = 0;
    __atomic_store_n(&counting, 1, __ATOMIC_SEQ_CST);
}

uint64_t alloc_count_stop(void)
{
    __atomic_store_n(&counting, 0, __ATOMIC_SEQ_CST);
    return calls;
}

bool alloc_count_available(void)
{
    return true;
}

/* Callers of the first counted calls, for the failure message. */
static void *callers[8];

#define note() note_caller(__builtin_return_address(0))
static inline void note_caller(void *ra)
{
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED)) {
        uint64_t k = __atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
        if (k < 8)
            callers[k] = ra;
    }
}

void *alloc_count_caller(int i)
{
    return i >= 0 && i < 8 ? callers[i] : NULL;
}

void *malloc(size_t n)
{
    note();
    return __libc_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    note();
    return __libc_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    note();
    return __libc_realloc(p, n);
}

void free(void *p)
{
    if (p)
        note();
    __libc_free(p);
}

void *aligned_alloc(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

void *memalign(size_t align, size_t n)
{
    note();
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    note();
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
