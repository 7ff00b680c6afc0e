/* arena planner: offsets for a static schedule's buffers, and the lower bound it is judged
 * against.
 *
 * Greedy placement in the manner of TFLite Micro's GreedyMemoryPlanner: take requests in
 * some order and put each at an aligned offset that collides with no already-placed
 * request alive at a common op.  No single order wins everywhere, so several orders are
 * tried, each with first fit (lowest offset) and best fit (smallest gap that holds it, as
 * in Pisarchyk & Lee, "Efficient memory management for deep neural net inference"), and
 * the smallest arena is kept.  arena_check (check.c, separate code) proves each plan kept.
 *
 * Cost: each placement scans the placed requests in offset order, so one candidate is
 * O(n^2) in the worst case with a small constant; there are 2 x ORD_COUNT of them.
 */
#include "arena.h"

#include <stdlib.h>
#include <string.h>

/* Sizes, alignments and their sums stay below this so that no offset arithmetic can wrap:
 * every candidate's arena is at most sum(size rounded to 64) + sum(align - 64) <= 2 naive. */
#define ARENA_MAX_BYTES (UINT64_C(1) << 62)

typedef struct item {
    uint64_t size;
    uint64_t align;        /* effective: max(align, ARENA_MIN_ALIGN) */
    int32_t first, last;   /* persistent: INT32_MIN..INT32_MAX, i.e. alive at every op */
    bool persistent;
} item;

/* A placed request, kept in an array sorted by offset (ties: placement order). */
typedef struct slot {
    uint64_t off, end;
    int32_t first, last;
} slot;

typedef struct sort_key {
    uint64_t k[3];   /* compared descending, in turn */
    uint32_t idx;    /* ascending: the stable tie-break */
} sort_key;

enum fit { FIT_FIRST, FIT_BEST };

enum order {
    ORD_SIZE,      /* largest first: big buffers fix the layout, small ones fill gaps */
    ORD_AREA,      /* size x lifetime: the requests that block the most of the plane */
    ORD_FIRST_USE, /* schedule order, like a runtime allocator with perfect foresight */
    ORD_LIFETIME,  /* longest-lived first: they are the hardest to fit around */
    ORD_BREADTH,   /* requests live at the busiest op first */
    ORD_ALIGN,     /* strictest alignment first: guarantees arena <= naive (see below) */
    ORD_COUNT
};

static uint64_t align_of(uint64_t a)
{
    return a < ARENA_MIN_ALIGN ? ARENA_MIN_ALIGN : a;
}

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static bool live_together(int32_t f1, int32_t l1, int32_t f2, int32_t l2)
{
    return f1 <= l2 && f2 <= l1;
}

static int validate(const arena_request *reqs, size_t n, uint64_t *naive, moert_err *err)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        const arena_request *r = &reqs[i];
        if (r->size == 0)
            return err_set(err, MOERT_EUSAGE, "arena: request %zu: size 0, expected > 0 bytes", i);
        if (r->align & (r->align - 1))
            return err_set(err, MOERT_EUSAGE,
                           "arena: request %zu: alignment %llu is not a power of two", i,
                           (unsigned long long)r->align);
        if (r->size > ARENA_MAX_BYTES || r->align > ARENA_MAX_BYTES)
            return err_set(err, MOERT_EUSAGE,
                           "arena: request %zu: size %llu / alignment %llu exceeds 2^62 bytes", i,
                           (unsigned long long)r->size, (unsigned long long)r->align);
        if (!r->persistent) {
            if (r->first < 0)
                return err_set(err, MOERT_EUSAGE,
                               "arena: request %zu: first use %d, expected an op index >= 0", i,
                               (int)r->first);
            if (r->first > r->last)
                return err_set(err, MOERT_EUSAGE,
                               "arena: request %zu: lifetime [%d, %d] ends before it starts", i,
                               (int)r->first, (int)r->last);
        }
        sum += round_up(r->size, align_of(r->align));
        if (sum > ARENA_MAX_BYTES)
            return err_set(err, MOERT_EUSAGE,
                           "arena: requests 0..%zu total more than 2^62 bytes", i);
    }
    *naive = sum;
    return MOERT_OK;
}

/* ---- lower bound ------------------------------------------------------------------ */

typedef struct event {
    int64_t at;      /* op index where the live sum changes */
    uint64_t size;
    bool add;
} event;

static int cmp_event(const void *pa, const void *pb)
{
    const event *a = pa, *b = pb;
    if (a->at != b->at)
        return a->at < b->at ? -1 : 1;
    /* A request ending at op t-1 is removed at t before one starting at t is added. */
    return (int)a->add - (int)b->add;
}

/* Used when the event array cannot be allocated: the peak is reached at some first use. */
static uint64_t lower_bound_quadratic(const arena_request *reqs, size_t n, uint64_t base)
{
    uint64_t best = base;
    for (size_t i = 0; i < n; i++) {
        if (reqs[i].persistent || reqs[i].first > reqs[i].last)
            continue;
        uint64_t live = base;
        for (size_t j = 0; j < n; j++)
            if (!reqs[j].persistent && reqs[j].first <= reqs[j].last &&
                reqs[j].first <= reqs[i].first && reqs[i].first <= reqs[j].last)
                live += reqs[j].size;
        if (live > best)
            best = live;
    }
    return best;
}

uint64_t arena_lower_bound(const arena_request *reqs, size_t n)
{
    if (!reqs)
        return 0;
    uint64_t base = 0;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (reqs[i].persistent)
            base += reqs[i].size;
        else if (reqs[i].first <= reqs[i].last)
            m++;
    }
    if (m == 0)
        return base;
    event *ev = malloc(2 * m * sizeof *ev);
    if (!ev)
        return lower_bound_quadratic(reqs, n, base);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (reqs[i].persistent || reqs[i].first > reqs[i].last)
            continue;
        ev[k++] = (event){reqs[i].first, reqs[i].size, true};
        ev[k++] = (event){(int64_t)reqs[i].last + 1, reqs[i].size, false};
    }
    qsort(ev, k, sizeof *ev, cmp_event);
    uint64_t live = base, best = base;
    for (size_t i = 0; i < k; i++) {
        live = ev[i].add ? live + ev[i].size : live - ev[i].size;
        if (live > best)
            best = live;
    }
    free(ev);
    return best;
}

/* ---- orders ----------------------------------------------------------------------- */

static int cmp_key(const void *pa, const void *pb)
{
    const sort_key *a = pa, *b = pb;
    for (int i = 0; i < 3; i++)
        if (a->k[i] != b->k[i])
            return a->k[i] > b->k[i] ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

static uint64_t lifetime(const item *it)
{
    return (uint64_t)((int64_t)it->last - it->first + 1);
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

static int cmp_i32(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

/* First index with pts[i] >= v (or > v when `after`), in a sorted array of d points. */
static size_t point_index(const int32_t *pts, size_t d, int32_t v, bool after)
{
    size_t lo = 0, hi = d;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pts[mid] < v || (after && pts[mid] == v))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* breadth[i] = the most bytes live at any op of request i's lifetime.  The live sum only
 * rises at a first use, so it is enough to look at the distinct first uses ("points"):
 * the live sum at each comes from a sweep, the max over a lifetime from a sparse table. */
static int breadth_keys(const item *it, size_t n, uint64_t *breadth)
{
    size_t m = 0;
    uint64_t base = 0;
    for (size_t i = 0; i < n; i++) {
        if (it[i].persistent)
            base += it[i].size;
        else
            m++;
    }
    int levels = 1;
    while (((size_t)1 << levels) <= m)
        levels++;
    int32_t *pts = malloc((m + 1) * sizeof *pts);
    uint64_t *add = calloc(m + 1, sizeof *add);
    uint64_t *sub = calloc(m + 1, sizeof *sub);
    uint64_t *table = malloc(((size_t)levels * m + 1) * sizeof *table);
    if (!pts || !add || !sub || !table) {
        free(pts), free(add), free(sub), free(table);
        return MOERT_ENOMEM;
    }
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        if (!it[i].persistent)
            pts[d++] = it[i].first;
    qsort(pts, d, sizeof *pts, cmp_i32);
    size_t u = 0;
    for (size_t i = 0; i < d; i++)
        if (u == 0 || pts[u - 1] != pts[i])
            pts[u++] = pts[i];
    d = u;
    /* +size at its first point, -size at the first point past its last use. */
    for (size_t i = 0; i < n; i++) {
        if (it[i].persistent)
            continue;
        add[point_index(pts, d, it[i].first, false)] += it[i].size;
        sub[point_index(pts, d, it[i].last, true)] += it[i].size;
    }
    uint64_t live = base, peak = base;
    for (size_t p = 0; p < d; p++) {
        live = live + add[p] - sub[p];
        table[p] = live;
        if (live > peak)
            peak = live;
    }
    for (int l = 1; l < levels; l++) {
        size_t half = (size_t)1 << (l - 1);
        for (size_t p = 0; p + 2 * half <= d; p++) {
            uint64_t a = table[(size_t)(l - 1) * m + p], b = table[(size_t)(l - 1) * m + p + half];
            table[(size_t)l * m + p] = a > b ? a : b;
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (it[i].persistent) {
            breadth[i] = peak;
            continue;
        }
        size_t a = point_index(pts, d, it[i].first, false);
        size_t b = point_index(pts, d, it[i].last, true); /* > a: its own first is a point */
        int l = 0;
        while (((size_t)2 << l) <= b - a)
            l++;
        uint64_t x = table[(size_t)l * m + a], y = table[(size_t)l * m + b - ((size_t)1 << l)];
        breadth[i] = x > y ? x : y;
    }
    free(pts), free(add), free(sub), free(table);
    return MOERT_OK;
}

/* Persistent requests go first (but see ORD_ALIGN): alive at every op, they collide with
 * everything, so stacking them at the bottom leaves scratch one clean region. */
static void make_order(const item *it, size_t n, enum order o, const uint64_t *breadth,
                       sort_key *keys, uint32_t *order)
{
    for (size_t i = 0; i < n; i++) {
        sort_key *s = &keys[i];
        s->idx = (uint32_t)i;
        s->k[0] = it[i].persistent;
        switch (o) {
        case ORD_SIZE:
            s->k[1] = it[i].size, s->k[2] = lifetime(&it[i]);
            break;
        case ORD_AREA:
            s->k[1] = sat_mul(it[i].size, lifetime(&it[i])), s->k[2] = it[i].size;
            break;
        case ORD_FIRST_USE:
            s->k[1] = (uint64_t)((int64_t)INT32_MAX - it[i].first), s->k[2] = it[i].size;
            break;
        case ORD_LIFETIME:
            s->k[1] = lifetime(&it[i]), s->k[2] = it[i].size;
            break;
        case ORD_BREADTH:
            s->k[1] = breadth[i], s->k[2] = it[i].size;
            break;
        default: /* ORD_ALIGN: alignment outranks persistence, or the bound below breaks */
            s->k[0] = it[i].align, s->k[1] = it[i].persistent, s->k[2] = it[i].size;
            break;
        }
    }
    qsort(keys, n, sizeof *keys, cmp_key);
    for (size_t i = 0; i < n; i++)
        order[i] = keys[i].idx;
}

/* ---- placement -------------------------------------------------------------------- */

/* Places every request in `order`; returns the highest end.  The offset chosen is never
 * above align_up(highest end so far, a).  So when alignments never increase along the
 * order, each top stays within the sum S of the aligned sizes placed so far (S is a
 * multiple of every alignment still to come): ORD_ALIGN guarantees arena <= naive. */
static uint64_t place_all(const item *it, size_t n, const uint32_t *order, enum fit fit,
                          slot *placed, uint64_t *offsets)
{
    size_t np = 0;
    uint64_t top = 0;
    for (size_t q = 0; q < n; q++) {
        const item *r = &it[order[q]];
        uint64_t a = r->align, cur = 0, best = UINT64_MAX, best_gap = UINT64_MAX;
        /* cur: the lowest aligned offset above every colliding slot seen so far. */
        for (size_t s = 0; s < np; s++) {
            const slot *p = &placed[s];
            if (!live_together(r->first, r->last, p->first, p->last))
                continue;
            if (p->off >= cur + r->size) {
                if (fit == FIT_FIRST) {
                    best = cur;
                    break;
                }
                if (p->off - cur < best_gap)
                    best_gap = p->off - cur, best = cur;
            }
            uint64_t next = round_up(p->end, a);
            if (next > cur)
                cur = next;
        }
        uint64_t off = best != UINT64_MAX ? best : cur;
        offsets[order[q]] = off;
        /* Insert keeping (off) order; equal offsets keep insertion order (deterministic). */
        size_t lo = 0, hi = np;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (placed[mid].off <= off) lo = mid + 1; else hi = mid;
        }
        memmove(&placed[lo + 1], &placed[lo], (np - lo) * sizeof *placed);
        placed[lo] = (slot){off, off + r->size, r->first, r->last};
        np++;
        if (off + r->size > top)
            top = off + r->size;
    }
    return top;
}

int arena_plan(const arena_request *reqs, size_t n, uint64_t *offsets, arena_stats *stats,
               moert_err *err)
{
    if (n && (!reqs || !offsets))
        return err_set(err, MOERT_EUSAGE, "arena: %zu requests but %s is NULL", n,
                       !reqs ? "the request array" : "the offset array");
    if (n > UINT32_MAX)
        return err_set(err, MOERT_EUSAGE, "arena: %zu requests, at most %u supported", n,
                       (unsigned)UINT32_MAX);
    uint64_t naive = 0, persistent = 0;
    int rc = validate(reqs, n, &naive, err);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++)
        if (reqs[i].persistent)
            persistent += reqs[i].size;
    arena_stats st = {0, 0, naive, persistent};
    if (n == 0) {
        if (stats)
            *stats = st;
        return MOERT_OK;
    }

    item *it = malloc(n * sizeof *it);
    uint64_t *breadth = malloc(n * sizeof *breadth);
    sort_key *keys = malloc(n * sizeof *keys);
    uint32_t *order = malloc(n * sizeof *order);
    slot *placed = malloc(n * sizeof *placed);
    uint64_t *trial = malloc(n * sizeof *trial);
    uint64_t *kept = malloc(n * sizeof *kept);
    if (!it || !breadth || !keys || !order || !placed || !trial || !kept) {
        rc = err_set(err, MOERT_ENOMEM, "arena: no memory to plan %zu requests", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const arena_request *r = &reqs[i];
        it[i] = (item){r->size, align_of(r->align), r->persistent ? INT32_MIN : r->first,
                       r->persistent ? INT32_MAX : r->last, r->persistent};
    }
    if (breadth_keys(it, n, breadth)) {
        rc = err_set(err, MOERT_ENOMEM, "arena: no memory to plan %zu requests", n);
        goto out;
    }
    uint64_t best = UINT64_MAX;
    for (int o = 0; o < ORD_COUNT; o++) {
        make_order(it, n, (enum order)o, breadth, keys, order);
        for (int fit = FIT_FIRST; fit <= FIT_BEST; fit++) {
            uint64_t top = place_all(it, n, order, (enum fit)fit, placed, trial);
            uint64_t bytes = round_up(top, ARENA_MIN_ALIGN);
            if (bytes >= best) /* a tie keeps the earlier candidate */
                continue;
            /* Only a candidate that may be returned needs proving; a wrong plan that
             * would win is always caught here. */
            moert_err why = {0};
            if (arena_check(reqs, n, trial, bytes, &why)) {
                rc = err_set(err, MOERT_EINTERNAL, "arena: internal: order %d, %s fit: %s", o,
                             fit == FIT_BEST ? "best" : "first", why.msg);
                goto out;
            }
            best = bytes;
            uint64_t *t = kept;
            kept = trial, trial = t;
        }
    }
    /* Outputs only now, so that a failure leaves the caller's arrays untouched. */
    memcpy(offsets, kept, n * sizeof *offsets);
    st.arena_bytes = best;
    st.lower_bound_bytes = arena_lower_bound(reqs, n);
    if (stats)
        *stats = st;
out:
    free(it), free(breadth), free(keys), free(order), free(placed), free(trial), free(kept);
    return rc;
}
