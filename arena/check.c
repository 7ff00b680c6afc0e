/* arena_check: an independent proof of a plan.  Deliberately shares nothing with the
 * planner's gap search: it sorts the buffers by offset and, for each, walks the buffers
 * that start inside its bytes, so every byte-overlapping pair is looked at exactly once
 * and rejected if the two are alive at a common op.  Cost: O(n log n + overlapping pairs),
 * at most O(n^2), fine for the few thousand buffers of a schedule. */
#include "arena.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct by_offset {
    uint64_t off;
    size_t idx;
} by_offset;

static int cmp_by_offset(const void *pa, const void *pb)
{
    const by_offset *a = pa, *b = pb;
    if (a->off != b->off)
        return a->off < b->off ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* "ops [3, 5]" or "persistent" into buf. */
static const char *life(const arena_request *r, char *buf, size_t cap)
{
    if (r->persistent)
        snprintf(buf, cap, "persistent");
    else
        snprintf(buf, cap, "ops [%d, %d]", (int)r->first, (int)r->last);
    return buf;
}

int arena_check(const arena_request *reqs, size_t n, const uint64_t *offsets,
                uint64_t arena_bytes, moert_err *err)
{
    if (n && (!reqs || !offsets))
        return err_set(err, MOERT_EUSAGE, "arena check: %zu requests but %s is NULL", n,
                       !reqs ? "the request array" : "the offset array");
    for (size_t i = 0; i < n; i++) {
        const arena_request *r = &reqs[i];
        uint64_t off = offsets[i];
        if (r->size == 0 || (r->align & (r->align - 1)))
            return err_set(err, MOERT_EUSAGE,
                           "arena check: request %zu: size %llu, alignment %llu: expected size > 0 "
                           "and a power-of-two alignment", i, (unsigned long long)r->size,
                           (unsigned long long)r->align);
        if (!r->persistent && (r->first < 0 || r->first > r->last))
            return err_set(err, MOERT_EUSAGE,
                           "arena check: request %zu: lifetime [%d, %d], expected 0 <= first <= last",
                           i, (int)r->first, (int)r->last);
        uint64_t align = r->align > ARENA_MIN_ALIGN ? r->align : ARENA_MIN_ALIGN;
        if (off % align != 0)
            return err_set(err, MOERT_ECHECK,
                           "arena check: request %zu: offset %llu is not a multiple of its "
                           "alignment %llu (off by %llu)", i, (unsigned long long)off,
                           (unsigned long long)align, (unsigned long long)(off % align));
        if (off > arena_bytes || r->size > arena_bytes - off)
            return err_set(err, MOERT_ECHECK,
                           "arena check: request %zu: bytes [%llu, %llu%s) end past the arena's "
                           "%llu bytes", i, (unsigned long long)off,
                           (unsigned long long)(off + r->size),
                           off + r->size < off ? " (wrapped)" : "",
                           (unsigned long long)arena_bytes);
    }
    if (n < 2)
        return MOERT_OK;
    by_offset *s = malloc(n * sizeof *s);
    if (!s)
        return err_set(err, MOERT_ENOMEM, "arena check: no memory to sort %zu requests", n);
    for (size_t i = 0; i < n; i++)
        s[i] = (by_offset){offsets[i], i};
    qsort(s, n, sizeof *s, cmp_by_offset);
    int rc = MOERT_OK;
    for (size_t a = 0; a < n && !rc; a++) {
        const arena_request *x = &reqs[s[a].idx];
        uint64_t x_end = s[a].off + x->size; /* no wrap: bounds checked above */
        for (size_t b = a + 1; b < n && s[b].off < x_end; b++) {
            const arena_request *y = &reqs[s[b].idx];
            bool together = x->persistent || y->persistent ||
                            (x->first <= y->last && y->first <= x->last);
            if (!together)
                continue;
            size_t i = s[a].idx < s[b].idx ? s[a].idx : s[b].idx;
            size_t j = s[a].idx < s[b].idx ? s[b].idx : s[a].idx;
            char li[64], lj[64];
            rc = err_set(err, MOERT_ECHECK,
                         "arena check: requests %zu and %zu overlap: request %zu bytes [%llu, %llu) "
                         "%s, request %zu bytes [%llu, %llu) %s", i, j,
                         i, (unsigned long long)offsets[i],
                         (unsigned long long)(offsets[i] + reqs[i].size),
                         life(&reqs[i], li, sizeof li),
                         j, (unsigned long long)offsets[j],
                         (unsigned long long)(offsets[j] + reqs[j].size),
                         life(&reqs[j], lj, sizeof lj));
            break;
        }
    }
    free(s);
    return rc;
}
