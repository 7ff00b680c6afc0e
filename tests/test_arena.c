/* arena: hand-computed plans, the checker catching planted faults, a random property test
 * against brute force, and a transformer-like schedule held to 1.10 x its lower bound. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../arena/arena.h"
#include "util.h"

#define MB (UINT64_C(1) << 20)

static arena_request scratch(uint64_t size, uint64_t align, int32_t first, int32_t last)
{
    return (arena_request){size, align, first, last, false};
}

static arena_request persist(uint64_t size, uint64_t align)
{
    return (arena_request){size, align, -7, -9, true}; /* lifetime ignored when persistent */
}

/* ---- hand-computed plans ---------------------------------------------------------- */

static void test_disjoint_lifetimes_share_offset_zero(void)
{
    arena_request r[3] = {scratch(100, 0, 0, 0), scratch(200, 0, 1, 1), scratch(300, 0, 2, 2)};
    uint64_t off[3] = {1, 1, 1};
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(r, 3, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(off[0], 0);
    CU_ASSERT_EQUAL(off[1], 0);
    CU_ASSERT_EQUAL(off[2], 0);
    CU_ASSERT_EQUAL(st.arena_bytes, 320);       /* 300 rounded up to 64 */
    CU_ASSERT_EQUAL(st.lower_bound_bytes, 300);
    CU_ASSERT_EQUAL(st.naive_bytes, 128 + 256 + 320);
    CU_ASSERT_EQUAL(st.persistent_bytes, 0);
}

static void test_overlapping_are_stacked(void)
{
    /* Both live at op 1.  Every order gives 384 bytes; the first candidate (largest first)
     * wins the tie: 200 at 0, then 100 at the next 64-aligned offset, 256. */
    arena_request r[2] = {scratch(100, 0, 0, 1), scratch(200, 0, 1, 2)};
    uint64_t off[2];
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(r, 2, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(off[0], 256);
    CU_ASSERT_EQUAL(off[1], 0);
    CU_ASSERT_EQUAL(st.arena_bytes, 384);
    CU_ASSERT_EQUAL(st.lower_bound_bytes, 300);
    CU_ASSERT_EQUAL(st.naive_bytes, 384);
}

static void test_alignment_padding(void)
{
    /* All alive together.  Largest first: C [0,5000), B at 8192 (next 4096 multiple), A in
     * the gap at 5056: arena 8256.  Strictest alignment first: B [0,10), C at 64, A at
     * 5120: arena round64(5130) = 5184, which must win. */
    arena_request r[3] = {scratch(10, 0, 0, 5), scratch(10, 4096, 0, 5), scratch(5000, 1, 0, 5)};
    uint64_t off[3];
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(r, 3, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(off[0], 5120);
    CU_ASSERT_EQUAL(off[1], 0);
    CU_ASSERT_EQUAL(off[2], 64);
    CU_ASSERT_EQUAL(st.arena_bytes, 5184);
    CU_ASSERT_EQUAL(st.lower_bound_bytes, 5020);
    CU_ASSERT_EQUAL(st.naive_bytes, 64 + 4096 + 5056);
}

static void test_persistent_and_scratch(void)
{
    /* P persistent at the bottom [0,1000).  Scratch from 1024: S2 (largest) at 1024, S1
     * (op 0 only, so not alive with S2) also at 1024, S3 (ops 0-1) above both at 1664. */
    arena_request r[4] = {persist(1000, 0), scratch(500, 0, 0, 0), scratch(600, 0, 1, 1),
                          scratch(100, 0, 0, 1)};
    uint64_t off[4];
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(r, 4, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(off[0], 0);
    CU_ASSERT_EQUAL(off[1], 1024);
    CU_ASSERT_EQUAL(off[2], 1024);
    CU_ASSERT_EQUAL(off[3], 1664);
    CU_ASSERT_EQUAL(st.arena_bytes, 1792);
    CU_ASSERT_EQUAL(st.lower_bound_bytes, 1700); /* op 1: 1000 + 600 + 100 */
    CU_ASSERT_EQUAL(st.naive_bytes, 1024 + 512 + 640 + 128);
    CU_ASSERT_EQUAL(st.persistent_bytes, 1000);
}

static void test_empty_and_null_stats(void)
{
    arena_stats st = {1, 1, 1, 1};
    moert_err e = {0};
    CU_ASSERT_EQUAL(arena_plan(NULL, 0, NULL, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st.arena_bytes, 0);
    CU_ASSERT_EQUAL(st.lower_bound_bytes, 0);
    CU_ASSERT_EQUAL(st.naive_bytes, 0);
    arena_request r[1] = {scratch(1, 0, 3, 3)};
    uint64_t off[1] = {99};
    CU_ASSERT_EQUAL(arena_plan(r, 1, off, NULL, &e), MOERT_OK);
    CU_ASSERT_EQUAL(off[0], 0);
    CU_ASSERT_EQUAL(arena_lower_bound(NULL, 0), 0);
}

static void expect_usage(const arena_request *r, size_t n, const char *msg)
{
    uint64_t off[8] = {7, 7, 7, 7, 7, 7, 7, 7};
    arena_stats st = {7, 7, 7, 7};
    moert_err e = {0};
    CU_ASSERT_EQUAL(arena_plan(r, n, off, &st, &e), MOERT_EUSAGE);
    for (size_t i = 0; i < 8; i++) /* nothing half-written */
        CU_ASSERT_EQUAL(off[i], 7);
    CU_ASSERT_EQUAL(st.arena_bytes + st.lower_bound_bytes + st.naive_bytes + st.persistent_bytes, 28);
    CU_ASSERT_STRING_EQUAL(e.msg, msg);
    if (strcmp(e.msg, msg) != 0)
        printf("\n    got: %s\n    expected: %s\n", e.msg, msg);
}

static void test_bad_input(void)
{
    arena_request r[3] = {scratch(8, 0, 0, 1), scratch(8, 0, 0, 1), scratch(0, 0, 0, 1)};
    expect_usage(r, 3, "arena: request 2: size 0, expected > 0 bytes");
    r[2] = scratch(8, 0, 0, 1);
    r[1].align = 96;
    expect_usage(r, 3, "arena: request 1: alignment 96 is not a power of two");
    r[1].align = 128;
    r[2] = scratch(8, 0, 5, 4);
    expect_usage(r, 3, "arena: request 2: lifetime [5, 4] ends before it starts");
    r[2] = scratch(8, 0, -1, 4);
    expect_usage(r, 3, "arena: request 2: first use -1, expected an op index >= 0");
    r[2] = scratch(UINT64_MAX, 0, 0, 4);
    expect_usage(r, 3, "arena: request 2: size 18446744073709551615 / alignment 0 exceeds 2^62 bytes");
    r[2] = scratch(UINT64_C(1) << 61, 0, 0, 4);
    r[1] = scratch(UINT64_C(1) << 61, 0, 0, 4);
    expect_usage(r, 3, "arena: requests 0..2 total more than 2^62 bytes");
    /* Persistent requests' lifetimes are ignored, even nonsense ones. */
    r[1] = persist(8, 0);
    r[2] = persist(8, 0);
    uint64_t off[3];
    moert_err e = {0};
    CU_ASSERT_EQUAL(arena_plan(r, 3, off, NULL, &e), MOERT_OK);
    CU_ASSERT_EQUAL(arena_plan(NULL, 3, off, NULL, &e), MOERT_EUSAGE);
    CU_ASSERT_STRING_EQUAL(e.msg, "arena: 3 requests but the request array is NULL");
    CU_ASSERT_EQUAL(arena_plan(r, 3, NULL, NULL, NULL), MOERT_EUSAGE); /* err may be NULL */
}

/* ---- the checker ------------------------------------------------------------------ */

static void expect_check(const arena_request *r, size_t n, const uint64_t *off, uint64_t bytes,
                         int code, const char *msg)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL(arena_check(r, n, off, bytes, &e), code);
    CU_ASSERT_STRING_EQUAL(e.msg, msg);
    if (strcmp(e.msg, msg) != 0)
        printf("\n    got: %s\n    expected: %s\n", e.msg, msg);
}

static void test_check_catches_overlap(void)
{
    arena_request r[3] = {scratch(100, 0, 5, 6), scratch(100, 0, 0, 1), scratch(100, 0, 1, 2)};
    uint64_t ok[3] = {0, 0, 128};
    expect_check(r, 3, ok, 256, MOERT_OK, "");
    /* Same bytes, disjoint lifetimes: fine.  Request 2 moved into request 1's bytes: not. */
    uint64_t bad[3] = {0, 0, 64};
    expect_check(r, 3, bad, 256, MOERT_ECHECK,
                 "arena check: requests 1 and 2 overlap: request 1 bytes [0, 100) ops [0, 1], "
                 "request 2 bytes [64, 164) ops [1, 2]");
    /* A persistent buffer collides with everything it touches. */
    arena_request p[2] = {scratch(64, 0, 9, 9), persist(128, 0)};
    uint64_t po[2] = {64, 0};
    expect_check(p, 2, po, 256, MOERT_ECHECK,
                 "arena check: requests 0 and 1 overlap: request 0 bytes [64, 128) ops [9, 9], "
                 "request 1 bytes [0, 128) persistent");
    /* Touching is not overlapping. */
    uint64_t touch[2] = {128, 0};
    expect_check(p, 2, touch, 192, MOERT_OK, "");
    /* An overlap far apart in the input order and hidden behind a long buffer. */
    arena_request q[4] = {scratch(1000, 0, 0, 0), scratch(64, 0, 1, 1), scratch(64, 0, 2, 2),
                          scratch(64, 0, 2, 3)};
    uint64_t qo[4] = {0, 64, 640, 640};
    expect_check(q, 4, qo, 1024, MOERT_ECHECK,
                 "arena check: requests 2 and 3 overlap: request 2 bytes [640, 704) ops [2, 2], "
                 "request 3 bytes [640, 704) ops [2, 3]");
}

static void test_check_catches_misalignment_and_bounds(void)
{
    arena_request r[2] = {scratch(10, 0, 0, 0), scratch(10, 4096, 0, 0)};
    uint64_t a[2] = {32, 4096};
    expect_check(r, 2, a, 8192, MOERT_ECHECK,
                 "arena check: request 0: offset 32 is not a multiple of its alignment 64 (off by 32)");
    uint64_t b[2] = {0, 2048};
    expect_check(r, 2, b, 8192, MOERT_ECHECK,
                 "arena check: request 1: offset 2048 is not a multiple of its alignment 4096 "
                 "(off by 2048)");
    uint64_t c[2] = {0, 4096};
    expect_check(r, 2, c, 4100, MOERT_ECHECK,
                 "arena check: request 1: bytes [4096, 4106) end past the arena's 4100 bytes");
    uint64_t d[2] = {UINT64_MAX - 63, 4096};
    expect_check(r, 2, d, 8192, MOERT_ECHECK,
                 "arena check: request 0: bytes [18446744073709551552, 18446744073709551562) end "
                 "past the arena's 8192 bytes");
    expect_check(r, 2, c, 4106, MOERT_OK, "");
    arena_request z[1] = {scratch(0, 0, 0, 0)};
    uint64_t zo[1] = {0};
    expect_check(z, 1, zo, 64, MOERT_EUSAGE,
                 "arena check: request 0: size 0, alignment 0: expected size > 0 and a "
                 "power-of-two alignment");
    arena_request w[1] = {scratch(1, 0, 3, 2)};
    expect_check(w, 1, zo, 64, MOERT_EUSAGE,
                 "arena check: request 0: lifetime [3, 2], expected 0 <= first <= last");
}

/* ---- random property test --------------------------------------------------------- */

static uint64_t rng_state;

static uint64_t rnd(void) /* xorshift64*: fixed seed, same sets on every machine */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

static uint64_t rnd_below(uint64_t n)
{
    return rnd() % n;
}

/* Per-op brute force: the bound's independent definition. */
static uint64_t brute_lower_bound(const arena_request *r, size_t n, int32_t ops)
{
    uint64_t best = 0, base = 0;
    for (size_t i = 0; i < n; i++)
        if (r[i].persistent)
            base += r[i].size;
    best = base;
    for (int32_t t = 0; t < ops; t++) {
        uint64_t live = base;
        for (size_t i = 0; i < n; i++)
            if (!r[i].persistent && r[i].first <= t && t <= r[i].last)
                live += r[i].size;
        if (live > best)
            best = live;
    }
    return best;
}

static uint64_t align_eff(uint64_t a)
{
    return a < ARENA_MIN_ALIGN ? ARENA_MIN_ALIGN : a;
}

static void test_random_sets(void)
{
    enum { MAXN = 200 };
    int sets = test_sanitized() ? 300 : 2000;
    arena_request r[MAXN];
    uint64_t off[MAXN], off2[MAXN];
    rng_state = UINT64_C(0x9E3779B97F4A7C15);
    int bad = 0;
    double worst = 1.0;
    for (int s = 0; s < sets && bad < 3; s++) {
        size_t n = 1 + rnd_below(MAXN);
        int32_t ops = 1 + (int32_t)rnd_below(s % 4 == 0 ? 8 : 300);
        uint64_t naive = 0, persistent = 0;
        for (size_t i = 0; i < n; i++) {
            int32_t f = (int32_t)rnd_below((uint64_t)ops);
            int32_t l = f + (int32_t)rnd_below((uint64_t)(ops - f));
            uint64_t size = 1 + rnd_below(s % 3 == 0 ? 4096 : MB);
            uint64_t align = rnd_below(4) == 0 ? 0 : UINT64_C(1) << rnd_below(13); /* 0, 1..4096 */
            r[i] = (arena_request){size, align, f, l, rnd_below(10) == 0};
            naive += (size + align_eff(align) - 1) & ~(align_eff(align) - 1);
            if (r[i].persistent)
                persistent += size;
        }
        arena_stats st, st2;
        moert_err e = {0};
        const char *why = NULL;
        char buf[1200];
        if (arena_plan(r, n, off, &st, &e) != MOERT_OK)
            why = e.msg;
        else if (arena_check(r, n, off, st.arena_bytes, &e) != MOERT_OK)
            why = e.msg;
        else if (st.lower_bound_bytes != brute_lower_bound(r, n, ops))
            why = "lower bound differs from the per-op brute force";
        else if (st.lower_bound_bytes != arena_lower_bound(r, n))
            why = "stats.lower_bound_bytes differs from arena_lower_bound";
        /* arena >= bound: at the peak op all live buffers sit disjoint inside the arena.
         * arena <= naive: the strictest-alignment-first candidate never ends above the sum
         * of aligned sizes (each offset <= the current top rounded to an alignment no
         * larger than every earlier one's), and the best candidate is no worse. */
        else if (st.arena_bytes < st.lower_bound_bytes || st.arena_bytes > st.naive_bytes)
            why = "not lower_bound <= arena <= naive";
        else if (st.arena_bytes % ARENA_MIN_ALIGN != 0)
            why = "arena_bytes not a multiple of 64";
        else if (st.naive_bytes != naive || st.persistent_bytes != persistent)
            why = "naive or persistent bytes wrong";
        else if (s % 4 == 0 && (arena_plan(r, n, off2, &st2, &e) != MOERT_OK ||
                                memcmp(off, off2, n * sizeof *off) != 0 ||
                                memcmp(&st, &st2, sizeof st) != 0))
            why = "second plan of the same requests differs";
        if (why) {
            snprintf(buf, sizeof buf, "set %d (n=%zu, ops=%d): %s", s, n, (int)ops, why);
            printf("\n    %s\n", buf);
            CU_FAIL(buf);
            bad++;
            continue;
        }
        double ratio = (double)st.arena_bytes / (double)st.lower_bound_bytes;
        if (ratio > worst)
            worst = ratio;
    }
    CU_ASSERT_EQUAL(bad, 0);
    printf("\n    %d random sets, worst arena / lower bound = %.4f\n", sets, worst);
}

/* Large but structured: a plan over 2,000 requests and 2,000 ops stays correct. */
static void test_large_random_set(void)
{
    enum { N = 2000 };
    arena_request *r = malloc(N * sizeof *r);
    uint64_t *off = malloc(N * sizeof *off);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    CU_ASSERT_PTR_NOT_NULL_FATAL(off);
    rng_state = 42;
    for (size_t i = 0; i < N; i++) {
        int32_t f = (int32_t)rnd_below(2000);
        int32_t len = rnd_below(10) == 0 ? (int32_t)rnd_below(2000) : (int32_t)rnd_below(8);
        int32_t l = f + len > 1999 ? 1999 : f + len;
        r[i] = (arena_request){1 + rnd_below(4 * MB), UINT64_C(1) << rnd_below(13), f, l,
                               rnd_below(50) == 0};
    }
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(r, N, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(arena_check(r, N, off, st.arena_bytes, &e), MOERT_OK);
    CU_ASSERT(st.arena_bytes >= st.lower_bound_bytes);
    CU_ASSERT(st.arena_bytes <= st.lower_bound_bytes + st.lower_bound_bytes / 10);
    printf("\n    %d requests: arena / lower bound = %.4f\n", N,
           (double)st.arena_bytes / (double)st.lower_bound_bytes);
    free(r);
    free(off);
}

/* ---- transformer-like schedule ---------------------------------------------------- */

typedef struct sched {
    arena_request r[4096];
    size_t n;
} sched;

static void add(sched *s, uint64_t size, int32_t first, int32_t last)
{
    if (s->n < sizeof s->r / sizeof s->r[0])
        s->r[s->n++] = scratch(size, 0, first, last);
}

/* 48 layers of a 512-token prefill step: attention then MoE, with per-thread scratch and
 * a residual stream alive for the whole step.  `chunks` > 1 runs the experts in that many
 * groups of different sizes (a less regular pattern); `kv` adds the persistent KV cache. */
static void transformer(sched *s, int chunks, bool kv)
{
    s->n = 0;
    int32_t op = 0;
    add(s, 8 * MB, 0, 0); /* residual: last fixed below */
    for (int layer = 0; layer < 48; layer++) {
        int32_t begin = op;
        add(s, 8 * MB, op, op + 1);                 /* x_norm */
        op++;
        add(s, 16 * MB, op, op + 2);                /* q */
        add(s, 2 * MB, op, op + 1);                 /* k */
        add(s, 2 * MB, op, op + 1);                 /* v */
        op += 2;                                    /* q/k norm + rope, k/v into cache */
        add(s, 16 * MB, op, op + 1);                /* attn */
        op++;
        add(s, 8 * MB, op, op + 1);                 /* o */
        op++;
        add(s, 8 * MB, op, op + 1);                 /* x_norm2 after the residual add */
        op++;
        add(s, MB / 4, op, op + 1);                 /* router logits */
        add(s, 512 * 8 * 4, op, op + 1 + 2 * chunks); /* top-k ids, used to combine */
        op++;
        add(s, 32 * MB, op, op + 2 * chunks);       /* expert_out */
        for (int c = 0; c < chunks; c++) {
            uint64_t sz = chunks == 1 ? 12 * MB : (12 * MB / (uint64_t)chunks) * (1 + (uint64_t)(c % 3));
            add(s, sz, op, op + 1);                 /* gate */
            add(s, sz, op, op + 1);                 /* up */
            op++;
            add(s, sz, op, op + 1);                 /* hidden = silu(gate) * up */
            op++;
        }
        add(s, 8 * MB, op, op + 1);                 /* moe_out */
        op++;
        for (int t = 0; t < 8; t++)
            add(s, 4096 * 4, begin, op);            /* per-thread [4096] float scratch */
    }
    add(s, 8 * MB, op, op + 1);                     /* final norm */
    op++;
    add(s, 151936 * 4, op, op);                     /* logits of the last token */
    s->r[0].last = op;
    if (kv)
        for (int i = 0; i < 48 * 2; i++)
            if (s->n < sizeof s->r / sizeof s->r[0])
                s->r[s->n++] = persist(8 * MB, 4096);
}

static void plan_transformer(int chunks, bool kv)
{
    static sched s;
    static uint64_t off[sizeof s.r / sizeof s.r[0]];
    transformer(&s, chunks, kv);
    arena_stats st;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(arena_plan(s.r, s.n, off, &st, &e), MOERT_OK);
    CU_ASSERT_EQUAL(arena_check(s.r, s.n, off, st.arena_bytes, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st.persistent_bytes, kv ? 96 * 8 * MB : 0);
    double ratio = (double)st.arena_bytes / (double)st.lower_bound_bytes;
    CU_ASSERT(ratio >= 1.0);
    CU_ASSERT(ratio <= 1.10);
    printf("\n    %zu requests, %s, expert chunks %d: arena %.2f MiB, lower bound %.2f MiB, "
           "ratio %.4f", s.n, kv ? "with KV" : "scratch only", chunks,
           (double)st.arena_bytes / MB, (double)st.lower_bound_bytes / MB, ratio);
}

static void test_transformer_schedule(void)
{
    plan_transformer(1, true);
    plan_transformer(1, false); /* the KV cache would hide a poor scratch plan */
    plan_transformer(16, true);
    plan_transformer(16, false);
    printf("\n");
}

/* ---- the block -------------------------------------------------------------------- */

static void test_init_free(void)
{
    arena a = {(uint8_t *)1, 5};
    moert_err e = {0};
    CU_ASSERT_EQUAL(arena_init(&a, 0, &e), MOERT_OK);
    CU_ASSERT_PTR_NULL(a.base);
    CU_ASSERT_EQUAL(a.bytes, 0);
    arena_free(&a);

    uint64_t bytes = 3 * 4096 + 5;
    CU_ASSERT_EQUAL_FATAL(arena_init(&a, bytes, &e), MOERT_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a.base);
    CU_ASSERT_EQUAL(a.bytes, bytes);
    CU_ASSERT_EQUAL((uintptr_t)a.base % (uintptr_t)sysconf(_SC_PAGESIZE), 0);
    uint64_t nonzero = 0;
    for (uint64_t i = 0; i < bytes; i++)
        nonzero += a.base[i] != 0;
    CU_ASSERT_EQUAL(nonzero, 0);
    memset(a.base, 0xA5, bytes); /* writable to the last byte */
    CU_ASSERT_EQUAL(a.base[bytes - 1], 0xA5);
    arena_free(&a);
    CU_ASSERT_PTR_NULL(a.base);
    CU_ASSERT_EQUAL(a.bytes, 0);
    arena_free(&a); /* twice is harmless */
    arena_free(NULL);
}

static void test_init_failure(void)
{
    arena a;
    moert_err e = {0};
    uint64_t huge = UINT64_C(1) << 62; /* beyond any user address space */
    CU_ASSERT_EQUAL(arena_init(&a, huge, &e), MOERT_ENOMEM);
    const char *want = "arena: cannot map 4611686018427387904 bytes: ";
    CU_ASSERT_NSTRING_EQUAL(e.msg, want, strlen(want));
    CU_ASSERT(strlen(e.msg) > strlen(want)); /* followed by strerror */
    CU_ASSERT_PTR_NULL(a.base);
    CU_ASSERT_EQUAL(arena_init(&a, UINT64_MAX, &e), MOERT_ENOMEM);
    CU_ASSERT_STRING_EQUAL(e.msg, "arena: cannot map 18446744073709551615 bytes: Cannot allocate memory");
    CU_ASSERT_EQUAL(arena_init(NULL, 64, &e), MOERT_EUSAGE);
}

void suite_arena(void)
{
    CU_pSuite s = CU_add_suite("arena", NULL, NULL);
    CU_add_test(s, "disjoint lifetimes share offset 0", test_disjoint_lifetimes_share_offset_zero);
    CU_add_test(s, "overlapping lifetimes are stacked", test_overlapping_are_stacked);
    CU_add_test(s, "alignment padding", test_alignment_padding);
    CU_add_test(s, "persistent and scratch", test_persistent_and_scratch);
    CU_add_test(s, "empty set and NULL stats", test_empty_and_null_stats);
    CU_add_test(s, "bad input names the request", test_bad_input);
    CU_add_test(s, "check catches overlaps", test_check_catches_overlap);
    CU_add_test(s, "check catches misalignment and bounds", test_check_catches_misalignment_and_bounds);
    CU_add_test(s, "random sets: check, bounds, brute force, determinism", test_random_sets);
    CU_add_test(s, "2,000 requests over 2,000 ops", test_large_random_set);
    CU_add_test(s, "transformer schedule within 1.10 x lower bound", test_transformer_schedule);
    CU_add_test(s, "init and free", test_init_free);
    CU_add_test(s, "init failure", test_init_failure);
}
