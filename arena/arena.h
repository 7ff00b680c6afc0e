/* arena: one block of memory for every runtime buffer, and the planner that lays buffers
 * out in it.  Knows nothing about models: it sees requests (size, alignment, first and
 * last use as op indices in a static schedule, persistent or not) and returns offsets.
 *
 * Two buffers may share bytes only if their lifetimes [first, last] do not intersect.
 * Persistent buffers (KV cache, trace rings) live for the whole run: they are placed as if
 * alive at every op.  arena_check proves a plan correct; tests run it on real schedules
 * and on random request sets.
 */
#ifndef MOERT_ARENA_H
#define MOERT_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../runtime/err.h"

#define ARENA_MIN_ALIGN 64u   /* every offset is at least cache-line aligned */

typedef struct arena_request {
    uint64_t size;        /* bytes, > 0 */
    uint64_t align;       /* power of two; 0 means ARENA_MIN_ALIGN */
    int32_t first, last;  /* inclusive op-index lifetime; ignored when persistent */
    bool persistent;
} arena_request;

typedef struct arena_stats {
    uint64_t arena_bytes;       /* end of the highest placed buffer, rounded to 64 */
    uint64_t lower_bound_bytes; /* max over ops of the bytes simultaneously live */
    uint64_t naive_bytes;       /* sum of all sizes (each aligned) */
    uint64_t persistent_bytes;  /* sum of persistent sizes */
} arena_stats;

/* Assigns offsets[i] for every request.  Deterministic: the same requests give the same
 * plan.  Tries several placement orders (largest first, longest-lived first, ...) and
 * keeps the smallest arena; every plan it keeps is proved with arena_check.  Fails with
 * MOERT_EUSAGE naming the request for size 0, a non-power-of-two alignment, a lifetime
 * with first < 0 or first > last (non-persistent only), or sizes summing past 2^62.
 * offsets[] is written only on success; stats (may be NULL) gets arena_bytes (the max end
 * rounded up to 64), lower_bound_bytes, naive_bytes and persistent_bytes.  Scratch is
 * malloc'd and freed before returning (init-time only). */
int arena_plan(const arena_request *reqs, size_t n, uint64_t *offsets, arena_stats *stats,
               moert_err *err);

/* Proves that no two buffers alive at the same op overlap, that every offset honours its
 * alignment and that every buffer ends within arena_bytes.  The first violation found is
 * described in err (both buffers' indices, ranges and lifetimes) with MOERT_ECHECK;
 * a malformed request (size 0, bad alignment or lifetime) gives MOERT_EUSAGE.  Shares no
 * code with the planner; costs O(n log n + pairs of buffers sharing bytes). */
int arena_check(const arena_request *reqs, size_t n, const uint64_t *offsets,
                uint64_t arena_bytes, moert_err *err);

/* Max over op indices of the sum of live sizes (persistent counted everywhere). */
uint64_t arena_lower_bound(const arena_request *reqs, size_t n);

/* The block itself: one page-aligned mapping, zero-filled. */
typedef struct arena {
    uint8_t *base;
    uint64_t bytes;
} arena;

/* Maps `bytes` (rounded up to the page size) of anonymous private memory into a; a->bytes
 * is `bytes`.  bytes == 0 is valid and leaves a->base NULL.  On failure a is empty and err
 * holds MOERT_ENOMEM "arena: cannot map N bytes: <strerror>". */
int arena_init(arena *a, uint64_t bytes, moert_err *err);
/* Unmaps and empties a; safe on an empty arena, twice, or NULL. */
void arena_free(arena *a);

#endif
