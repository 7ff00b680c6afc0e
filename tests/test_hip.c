/* hip: the GPU backend against the CPU backend on every HF fixture model and on GGUF models
 * of every block type (skipped when the binary has no HIP backend or the machine has no GPU):
 *   - logits after the prompt (several prefill chunks, one partial) and after each of a few
 *     decode steps within relative L2 error 1e-4 of the CPU, same greedy token;
 *   - bit-identical logits run to run, and with the decode graph (replayed) vs without;
 *   - trace rings (tensor mode, every stage and position): headers equal to the CPU's,
 *     records' step/pos equal, values within 1e-4, router ids equal, and each GPU record's
 *     hash and stats equal to trace_row_hash / trace_row_stats of its own values;
 *   - a small overwrite ring in stats mode (positions last) ends in the CPU's state;
 *   - GGUF models (moert's own in every type mix, a tied Q4_K_M one, and
 *     llama.cpp's gguf-tiny / gguf-vocab files when ../shared is present), whose weights stay
 *     quantized on the device: logits within 1e-4 of the CPU, the same greedy tokens,
 *     bit-identical run to run and graph == eager;
 *   - batch invariance (runtime.batch_invariant): the prompt's last token run as a decode
 *     step, or the prompt in chunks that end in a one-row chunk, gives the bits of the whole
 *     prompt in one go, after the prompt and at every later decode step.
 * Without a GPU: the device's weight loaders, run on the host, equal ops_to_f32 bit for bit
 * for every weight type. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/session.h"
#include "../runtime/trace/trace.h"
#include "../hip/hip_qunpack.h"
#include "../hip/hip_scratch.h"
#include "../ops/ops.h"
#include "util.h"

#define N_PROMPT 13
#define N_DECODE 4
#define MAX_CASES 24

typedef struct run_result {
    int64_t V;
    float *logits;        /* (1 + N_DECODE) x V */
    int32_t tokens[N_DECODE];
    size_t n_rings;
    unsigned char **rings;
    uint64_t *ring_bytes;
    uint64_t *record_bytes;
    int64_t *widths;
    bool *has_ids;
} run_result;

static void free_result(run_result *r)
{
    free(r->logits);
    for (size_t i = 0; i < r->n_rings; i++)
        free(r->rings[i]);
    free(r->rings);
    free(r->ring_bytes);
    free(r->record_bytes);
    free(r->widths);
    free(r->has_ids);
    memset(r, 0, sizeof *r);
}

typedef enum { TR_NONE, TR_TENSOR_ALL, TR_STATS_LAST_SMALL } trace_kind;

/* runtime.numerics of every run_model (the act-q8 tests set it, then reset it) */
static cfg_numerics g_numerics = CFG_NUMERICS_EXACT;
/* The batch-invariance test's knobs (it resets them): runtime.batch_invariant, the prefill
 * chunk, and how many of the prompt's tokens are prefilled (the rest run as decode steps). */
static bool g_batch_inv;
static int g_chunk = 5, g_prefilled = N_PROMPT;

/* Prompt of N_PROMPT ids in chunks of g_chunk (its first g_prefilled ids; the rest as decode
 * steps), then N_DECODE decode steps feeding `feed` (or the greedy choice when feed is NULL).
 * Returns MOERT_ENODEV when there is no GPU. */
static int load_cfg(const char *dir, cfg_backend be, trace_kind tk, int64_t max_seq, cfg_config *out)
{
    cfg_config cfg;
    moert_err err = {0};
    int st = cfg_load(dir, &cfg, &err);
    if (st) {
        fprintf(stderr, "\n    %s: %s\n", dir, err.msg);
        return st;
    }
    cfg.rt.backend = be;
    cfg.rt.numerics = g_numerics;
    cfg.rt.threads = 2;
    cfg.rt.max_seq_len = max_seq;
    cfg.rt.prefill_chunk = g_chunk;
    cfg.rt.batch_invariant = g_batch_inv;
    cfg.sampling.temperature = 0;
    cfg.trace.enabled = tk != TR_NONE;
    if (tk == TR_TENSOR_ALL) {
        cfg.trace.mode = CFG_TRACE_TENSOR;
        cfg.trace.positions = CFG_TRACE_ALL;
        cfg.trace.capacity = N_PROMPT + N_DECODE;
        cfg.trace.on_full = CFG_TRACE_STOP;
    } else if (tk == TR_STATS_LAST_SMALL) {
        cfg.trace.mode = CFG_TRACE_STATS;
        cfg.trace.positions = CFG_TRACE_LAST;
        cfg.trace.capacity = 2; /* 1 + N_DECODE records offered: overwrites */
        cfg.trace.on_full = CFG_TRACE_OVERWRITE;
    }
    cfg.trace.stages = (1u << CFG_STAGE_COUNT) - 1;
    cfg.trace.all_layers = true;
    cfg.trace.out_path[0] = 0;
    *out = cfg;
    return MOERT_OK;
}

static void test_prompt(int64_t V, int32_t prompt[N_PROMPT])
{
    for (int i = 0; i < N_PROMPT; i++)
        prompt[i] = (int32_t)((i * 37 + 11) % V);
}

static int run_model(const char *dir, cfg_backend be, trace_kind tk, const int32_t *feed,
                     run_result *out)
{
    memset(out, 0, sizeof *out);
    cfg_config cfg;
    moert_err err = {0};
    int st = load_cfg(dir, be, tk, N_PROMPT + N_DECODE + 4, &cfg);
    if (st)
        return st;
    int64_t V = cfg.topo.vocab_size;
    int32_t prompt[N_PROMPT];
    test_prompt(V, prompt);
    sess *s = calloc(1, sizeof *s);
    out->V = V;
    out->logits = malloc((size_t)(1 + N_DECODE) * (size_t)V * sizeof(float));
    if (!s || !out->logits) {
        free(s);
        return MOERT_ENOMEM;
    }
    if ((st = sess_open(s, &cfg, 0, &err))) {
        if (st != MOERT_ENODEV)
            fprintf(stderr, "\n    %s: %s\n", dir, err.msg);
        free(s);
        return st;
    }
    st = sess_prefill(s, prompt, g_prefilled, &err);
    for (int i = g_prefilled; i < N_PROMPT && !st; i++)
        st = sess_decode(s, prompt[i], &err);
    if (!st)
        memcpy(out->logits, sess_logits(s), (size_t)V * sizeof(float));
    for (int i = 0; i < N_DECODE && !st; i++) {
        int32_t id = feed ? feed[i] : sess_sample(s);
        out->tokens[i] = id;
        st = sess_decode(s, id, &err);
        if (!st)
            memcpy(out->logits + (size_t)(i + 1) * (size_t)V, sess_logits(s), (size_t)V * sizeof(float));
    }
    if (!st && s->trace) {
        size_t n = trace_rt_count(s->trace);
        out->n_rings = n;
        out->rings = calloc(n, sizeof *out->rings);
        out->ring_bytes = calloc(n, sizeof *out->ring_bytes);
        out->record_bytes = calloc(n, sizeof *out->record_bytes);
        out->widths = calloc(n, sizeof *out->widths);
        out->has_ids = calloc(n, sizeof *out->has_ids);
        for (size_t i = 0; i < n && !st; i++) {
            const trace_slot_info *si = trace_rt_slot(s->trace, i);
            uint64_t bytes = s->schedule.bufs[si->ring_buf].bytes;
            out->ring_bytes[i] = bytes;
            out->record_bytes[i] = si->record_bytes;
            out->widths[i] = si->width;
            out->has_ids[i] = si->has_ids;
            out->rings[i] = malloc(bytes);
            void *host = s->be.vt->host_ptr(&s->be, si->ring_buf);
            if (!(st = s->be.vt->read(&s->be, si->ring_buf, 0, host, bytes, &err)))
                memcpy(out->rings[i], host, bytes);
        }
    }
    if (st)
        fprintf(stderr, "\n    %s (%s): %s\n", dir, be == CFG_BACKEND_HIP ? "hip" : "cpu", err.msg);
    sess_close(s);
    free(s);
    return st;
}

static int fixture_dirs(char dirs[MAX_CASES][512])
{
    int n = 0;
    DIR *d = opendir("tests/fixtures/hf");
    if (!d)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < MAX_CASES)
        if (e->d_name[0] != '.')
            snprintf(dirs[n++], 512, "tests/fixtures/hf/%s", e->d_name);
    closedir(d);
    return n;
}

/* True when this binary and machine can run the HIP backend; skips otherwise. */
static bool hip_ready(const char *test, const char *dir)
{
    if (!backend_hip_vtable()) {
        test_skip(test, "built without the HIP backend (make hip-nvidia / make hip)");
        return false;
    }
    run_result r;
    int st = run_model(dir, CFG_BACKEND_HIP, TR_NONE, NULL, &r);
    free_result(&r);
    if (st == MOERT_ENODEV) {
        test_skip(test, "no GPU on this machine");
        return false;
    }
    return true;
}

/* The HF fixtures on the GPU: body(dirs, n), or a named skip. */
static void fixture_run(const char *test, void (*body)(char dirs[][512], int n))
{
    char dirs[MAX_CASES][512];
    int n = fixture_dirs(dirs);
    CU_ASSERT_FATAL(n > 0);
    if (!hip_ready(test, dirs[0]))
        return;
    body(dirs, n);
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    return sqrt(num) / (den > 0 ? sqrt(den) : 1);
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    return b;
}

static void logits_vs_cpu_tol(char dirs[][512], int n, double tol)
{
    for (int c = 0; c < n; c++) {
        run_result cpu, gpu;
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_CPU, TR_NONE, NULL, &cpu), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, cpu.tokens, &gpu), MOERT_OK);
        for (int step = 0; step <= N_DECODE; step++) {
            const float *a = gpu.logits + (size_t)step * (size_t)cpu.V;
            const float *b = cpu.logits + (size_t)step * (size_t)cpu.V;
            double rel = rel_l2(a, b, cpu.V);
            if (!(rel <= tol) || argmax(a, cpu.V) != argmax(b, cpu.V))
                fprintf(stderr, "\n    %s step %d: logits rel err %.3e, argmax gpu %lld cpu %lld\n",
                        dirs[c], step, rel, (long long)argmax(a, cpu.V), (long long)argmax(b, cpu.V));
            CU_ASSERT(rel <= tol);
            CU_ASSERT_EQUAL(argmax(a, cpu.V), argmax(b, cpu.V));
        }
        free_result(&cpu);
        free_result(&gpu);
    }
}

static void logits_vs_cpu(char dirs[][512], int n)
{
    logits_vs_cpu_tol(dirs, n, 1e-4);
}

static void test_logits_vs_cpu(void)
{
    fixture_run(__func__, logits_vs_cpu);
}

static void determinism(char dirs[][512], int n)
{
    for (int c = 0; c < n; c++) {
        run_result a, b, eager;
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, NULL, &a), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, NULL, &b), MOERT_OK);
        setenv("MOERT_HIP_NOGRAPH", "1", 1);
        int st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, NULL, &eager);
        unsetenv("MOERT_HIP_NOGRAPH");
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        size_t bytes = (size_t)(1 + N_DECODE) * (size_t)a.V * sizeof(float);
        bool same = memcmp(a.logits, b.logits, bytes) == 0;
        bool graph_same = memcmp(a.logits, eager.logits, bytes) == 0;
        if (!same || !graph_same)
            fprintf(stderr, "\n    %s: run-to-run identical %d, graph == eager %d\n", dirs[c], same,
                    graph_same);
        CU_ASSERT(same);
        CU_ASSERT(graph_same);
        free_result(&a);
        free_result(&b);
        free_result(&eager);
    }
}

static void test_determinism(void)
{
    fixture_run(__func__, determinism);
}

/* ---- greedy generation fed on the device ------------------------------------------- */
#define N_FED 8

static bool stop_after(void *ctx, int32_t id)
{
    (void)id;
    return --*(int *)ctx > 0;
}

/* sess_generate on the GPU begins step N + 1 before it reads step N's pick (the embed reads
 * the pick on the device).  Against the host-fed loop of the same GPU: the same tokens, all
 * of them and when stopped early; after an early stop the step begun ahead is taken back, so
 * the session continues at the host loop's position with the host loop's bits. */
static void fed_generation(char dirs[][512], int n)
{
    for (int c = 0; c < n; c++) {
        cfg_config cfg;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(load_cfg(dirs[c], CFG_BACKEND_HIP, TR_NONE, N_PROMPT + N_FED + 4, &cfg), MOERT_OK);
        const int64_t V = cfg.topo.vocab_size;
        int32_t prompt[N_PROMPT], a[N_FED], b[N_FED];
        test_prompt(V, prompt);
        float *la = malloc((size_t)N_FED * (size_t)V * sizeof *la);
        sess *s = calloc(1, sizeof *s);
        CU_ASSERT_FATAL(la && s);
        /* the host-fed loop: pick, then feed it */
        int st = sess_open(s, &cfg, 0, &err);
        if (!st)
            st = sess_prefill(s, prompt, N_PROMPT, &err);
        for (int i = 0; i < N_FED && !st; i++) {
            a[i] = sess_sample(s);
            if (!(st = sess_decode(s, a[i], &err)))
                memcpy(la + (size_t)i * (size_t)V, sess_logits(s), (size_t)V * sizeof *la);
        }
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        CU_ASSERT_FATAL(s->be.vt->feeds && s->be.vt->feeds(&s->be));
        int64_t nb = 0;
        for (int round = 0; round < 2; round++) { /* fed, then MOERT_HIP_FEED=0 */
            if (round)
                setenv("MOERT_HIP_FEED", "0", 1);
            CU_ASSERT_EQUAL(s->be.vt->feeds(&s->be), round == 0);
            sess_reset(s);
            st = sess_generate(s, prompt, N_PROMPT, N_FED, b, &nb, NULL, NULL, &err);
            CU_ASSERT_EQUAL(st, MOERT_OK);
            CU_ASSERT_EQUAL(nb, N_FED);
            CU_ASSERT(memcmp(a, b, sizeof a) == 0);
            CU_ASSERT_EQUAL(s->pos, N_PROMPT + N_FED - 1);
            unsetenv("MOERT_HIP_FEED");
        }
        /* stopped after 3 tokens: step 3 was begun and is taken back */
        sess_reset(s);
        int left = 3;
        st = sess_generate(s, prompt, N_PROMPT, N_FED, b, &nb, stop_after, &left, &err);
        CU_ASSERT_EQUAL(st, MOERT_OK);
        CU_ASSERT_EQUAL(nb, 3);
        CU_ASSERT(memcmp(a, b, 3 * sizeof *a) == 0);
        CU_ASSERT_EQUAL(s->pos, N_PROMPT + 2);
        CU_ASSERT_PTR_NULL(sess_logits(s));
        CU_ASSERT_EQUAL(sess_decode(s, b[2], &err), MOERT_OK);
        const float *l = sess_logits(s);
        CU_ASSERT_FATAL(l != NULL);
        CU_ASSERT(memcmp(l, la + 2 * (size_t)V, (size_t)V * sizeof *la) == 0);
        CU_ASSERT_EQUAL(sess_sample(s), a[3]);
        if (memcmp(a, b, 3 * sizeof *a) || s->pos != N_PROMPT + 3)
            fprintf(stderr, "\n    %s: fed generation parts from the host-fed loop\n", dirs[c]);
        sess_close(s);
        free(s);
        free(la);
    }
}

static void test_fed_generation(void)
{
    fixture_run(__func__, fed_generation);
}

/* Every ring's header words and stored records, oldest first (free slots, which a step taken
 * back may have written, are no part of a trace), appended into *buf of *len bytes. */
static int ring_records(sess *s, unsigned char **buf, size_t *len, moert_err *err)
{
    const uint64_t cap = (uint64_t)trace_rt_plan(s->trace)->capacity;
    *len = 0;
    for (size_t i = 0; i < trace_rt_count(s->trace); i++) {
        const trace_slot_info *si = trace_rt_slot(s->trace, i);
        uint64_t bytes = TRACE_RING_HEADER + cap * si->record_bytes;
        unsigned char *ring = s->be.vt->host_ptr(&s->be, si->ring_buf);
        int st = s->be.vt->read(&s->be, si->ring_buf, 0, ring, bytes, err);
        if (st)
            return st;
        trace_ring_header h;
        memcpy(&h, ring, sizeof h);
        unsigned char *nb = realloc(*buf, *len + sizeof h + h.stored * si->record_bytes);
        if (!nb)
            return MOERT_ENOMEM;
        *buf = nb;
        memcpy(*buf + *len, &h, sizeof h);
        *len += sizeof h;
        for (uint64_t j = 0; j < h.stored; j++) {
            uint64_t slot = (h.next + cap - h.stored + j) % cap;
            memcpy(*buf + *len, ring + TRACE_RING_HEADER + slot * si->record_bytes, si->record_bytes);
            *len += si->record_bytes;
        }
    }
    return MOERT_OK;
}

/* Traced generation fed on the device: a step begun past a stop is taken back out of the
 * rings too.  Against MOERT_HIP_FEED=0 on the same GPU, the rings hold the same headers and
 * records after a whole generation, after one stopped after 3 tokens, and after the decode
 * step that follows the stop; in three ring setups: room for everything (fed), a ring that
 * stops and drops (fed), a ring that would overwrite (host-fed: fed_steps 0). */
static void fed_traced(char dirs[][512], int n)
{
    static const struct {
        cfg_trace_mode mode;
        cfg_trace_positions pos;
        cfg_trace_on_full full;
        int64_t cap;
        bool fed;
    } rings[3] = {{CFG_TRACE_TENSOR, CFG_TRACE_LAST, CFG_TRACE_OVERWRITE, 40, true},
                  {CFG_TRACE_STATS, CFG_TRACE_ALL, CFG_TRACE_STOP, 3, true},
                  {CFG_TRACE_STATS, CFG_TRACE_LAST, CFG_TRACE_OVERWRITE, 4, false}};
    for (int c = 0; c < n; c++)
        for (int k = 0; k < 3; k++) {
            unsigned char *got[2][3] = {{NULL}};
            size_t len[2][3] = {{0}};
            int64_t fed[2] = {0, 0};
            for (int round = 0; round < 2; round++) { /* fed, then MOERT_HIP_FEED=0 */
                cfg_config cfg;
                moert_err err = {0};
                CU_ASSERT_EQUAL_FATAL(load_cfg(dirs[c], CFG_BACKEND_HIP, TR_NONE, N_PROMPT + N_FED + 4, &cfg), MOERT_OK);
                cfg.trace.enabled = true;
                cfg.trace.mode = rings[k].mode;
                cfg.trace.positions = rings[k].pos;
                cfg.trace.on_full = rings[k].full;
                cfg.trace.capacity = rings[k].cap;
                if (round)
                    setenv("MOERT_HIP_FEED", "0", 1);
                int32_t prompt[N_PROMPT], b[N_FED];
                test_prompt(cfg.topo.vocab_size, prompt);
                sess *s = calloc(1, sizeof *s);
                CU_ASSERT_FATAL(s != NULL);
                int64_t nb = 0;
                int st = sess_open(s, &cfg, 0, &err);
                if (!st)
                    st = sess_generate(s, prompt, N_PROMPT, N_FED, b, &nb, NULL, NULL, &err);
                fed[round] += s->stats.fed_steps;
                if (!st)
                    st = ring_records(s, &got[round][0], &len[round][0], &err);
                int left = 3;
                sess_reset(s);
                if (!st)
                    st = sess_generate(s, prompt, N_PROMPT, N_FED, b, &nb, stop_after, &left, &err);
                fed[round] += s->stats.fed_steps;
                if (!st)
                    st = ring_records(s, &got[round][1], &len[round][1], &err);
                if (!st)
                    st = sess_decode(s, b[2], &err);
                if (!st)
                    st = ring_records(s, &got[round][2], &len[round][2], &err);
                if (st)
                    fprintf(stderr, "\n    %s: %s\n", dirs[c], err.msg);
                CU_ASSERT_EQUAL(st, MOERT_OK);
                CU_ASSERT_EQUAL(nb, 3);
                CU_ASSERT_EQUAL(s->pos, N_PROMPT + 3);
                sess_close(s);
                free(s);
                unsetenv("MOERT_HIP_FEED");
            }
            CU_ASSERT_EQUAL(fed[0] > 0, rings[k].fed);
            CU_ASSERT_EQUAL(fed[1], 0);
            for (int j = 0; j < 3; j++) {
                bool same = len[0][j] == len[1][j] && len[0][j] > 0 && memcmp(got[0][j], got[1][j], len[0][j]) == 0;
                if (!same)
                    fprintf(stderr, "\n    %s ring setup %d: traced records after part %d differ fed vs host-fed "
                            "(%zu vs %zu bytes)\n", dirs[c], k, j, len[0][j], len[1][j]);
                CU_ASSERT(same);
                free(got[0][j]);
                free(got[1][j]);
            }
        }
}

static void test_fed_traced(void)
{
    fixture_run(__func__, fed_traced);
}

/* The decode split merge staged in shared memory (MOERT_HIP_MERGESTAGE=1) against the row
 * merge, bit for bit: logits and picks of 4 decode steps after prompts of 100 tokens (4
 * splits: one tile) and 2100 (66 splits: more than one tile of 64) on every fixture. */
#define N_MERGE_STEPS 4
static int merge_run(const char *dir, int64_t n_prompt, float *logits, int32_t *ids, int64_t *V)
{
    cfg_config cfg;
    moert_err err = {0};
    int st = load_cfg(dir, CFG_BACKEND_HIP, TR_NONE, n_prompt + N_MERGE_STEPS + 4, &cfg);
    if (st)
        return st;
    cfg.rt.prefill_chunk = 512;
    *V = cfg.topo.vocab_size;
    if (!logits)
        return MOERT_OK;
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    sess *s = calloc(1, sizeof *s);
    if (!prompt || !s) {
        free(prompt);
        free(s);
        return MOERT_ENOMEM;
    }
    for (int64_t i = 0; i < n_prompt; i++)
        prompt[i] = (int32_t)((i * 37 + 11) % *V);
    st = sess_open(s, &cfg, 0, &err);
    if (!st)
        st = sess_prefill(s, prompt, n_prompt, &err);
    for (int i = 0; i < N_MERGE_STEPS && !st; i++) {
        ids[i] = sess_sample(s);
        if (!(st = sess_decode(s, ids[i], &err)))
            memcpy(logits + (size_t)i * (size_t)*V, sess_logits(s), (size_t)*V * sizeof *logits);
    }
    if (st)
        fprintf(stderr, "\n    %s (%lld-token prompt): %s\n", dir, (long long)n_prompt, err.msg);
    if (s->be.vt)
        sess_close(s);
    free(s);
    free(prompt);
    return st;
}

static void merge_stage_bits(char dirs[][512], int n)
{
    static const int64_t prompts[2] = {100, 2100};
    for (int c = 0; c < n; c++)
        for (int p = 0; p < 2; p++) {
            int64_t V = 0;
            CU_ASSERT_EQUAL_FATAL(merge_run(dirs[c], prompts[p], NULL, NULL, &V), MOERT_OK);
            float *l[2];
            int32_t ids[2][N_MERGE_STEPS];
            for (int r = 0; r < 2; r++) {
                l[r] = malloc((size_t)N_MERGE_STEPS * (size_t)V * sizeof(float));
                CU_ASSERT_FATAL(l[r] != NULL);
                setenv("MOERT_HIP_MERGESTAGE", r ? "1" : "0", 1);
                CU_ASSERT_EQUAL(merge_run(dirs[c], prompts[p], l[r], ids[r], &V), MOERT_OK);
            }
            unsetenv("MOERT_HIP_MERGESTAGE");
            bool same = memcmp(l[0], l[1], (size_t)N_MERGE_STEPS * (size_t)V * sizeof(float)) == 0 &&
                        memcmp(ids[0], ids[1], sizeof ids[0]) == 0;
            if (!same)
                fprintf(stderr, "\n    %s (%lld-token prompt): staged merge != row merge\n", dirs[c],
                        (long long)prompts[p]);
            CU_ASSERT(same);
            free(l[0]);
            free(l[1]);
        }
}

static void test_merge_stage_bits(void)
{
    fixture_run(__func__, merge_stage_bits);
}

/* ---- GGUF models: weights quantized on the device ------------------------------------ */

/* moert's own GGUFs of every type mix (test_gguf_topology: Q4_K/Q5_K/Q6_K with Q5_0/Q8_0
 * fallbacks mixed inside a layer), a tied Q4_K_M one (the LM head is the quantized
 * embedding), and llama.cpp's files when ../shared is present. */
static int gguf_cases(char paths[MAX_CASES][512])
{
    static const char *const mixes[] = {"q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "q5_0"};
    int n = 0;
    for (size_t i = 0; i < sizeof mixes / sizeof *mixes; i++) {
        const char *p = test_synth_gguf(mixes[i]);
        CU_ASSERT_PTR_NOT_NULL(p);
        if (p)
            snprintf(paths[n++], 512, "%s", p);
    }
    const char *tied = test_synth_gguf_tied("q4_k_m"); /* the LM head is token_embd, Q4_K */
    CU_ASSERT_PTR_NOT_NULL(tied);
    if (tied)
        snprintf(paths[n++], 512, "%s", tied);
    const char *shared = test_shared_parts("gguf-tiny gguf-vocab");
    if (shared) {
        static const char *const types[] = {"q8_0", "q4_k_m", "q5_k_m", "q6_k"};
        for (size_t i = 0; i < sizeof types / sizeof *types; i++)
            snprintf(paths[n++], 512, "%s/gguf-tiny/model-%s.gguf", shared, types[i]);
        snprintf(paths[n++], 512, "%s/gguf-vocab/model-q8_0.gguf", shared);
    } else {
        test_skip("test_gguf (hip)", "../shared/reference (gguf-tiny, gguf-vocab) is absent: llama.cpp's GGUF files not run on the GPU");
    }
    return n;
}

/* The GGUF cases on the GPU, in numerics nm: body(paths, n), or a named skip. */
static void gguf_run(const char *test, cfg_numerics nm, void (*body)(char dirs[][512], int n))
{
    char paths[MAX_CASES][512];
    int n = gguf_cases(paths);
    CU_ASSERT_FATAL(n > 0);
    if (!hip_ready(test, paths[0]))
        return;
    g_numerics = nm;
    body(paths, n);
    g_numerics = CFG_NUMERICS_EXACT;
}

static void test_gguf_logits_vs_cpu(void)
{
    gguf_run(__func__, CFG_NUMERICS_EXACT, logits_vs_cpu);
}

static void test_gguf_determinism(void)
{
    gguf_run(__func__, CFG_NUMERICS_EXACT, determinism);
}

/* Decode GEMVs with the block-type rows staged through shared memory (MOERT_HIP_QSTAGE=1:
 * Q6_K, =2 the four 2-byte aligned types, =3 the K-quants too), on the persistent grid
 * (MOERT_HIP_SGPIPE=1: the staged GEMVs of many row groups, =2 every block-typed one, on 3
 * blocks that each walk several row groups) and the MoE down with 2 or 4 rows a block
 * (MOERT_HIP_DOWNR; 0: the rows by type), the MoE down that loads its routed weights before
 * its wait (MOERT_HIP_DOWNEARLY, which must agree with the gate/up before it on every type
 * mix: a race shows here) and the top-k by ranks (MOERT_HIP_ROUTERANK) give the bits of the
 * direct W8 loads on one-shot blocks of one down row with neither (0, 0, 1, 0, 0); the
 * backend reads the variables at each init. */
static void qstage_bits(char dirs[][512], int n)
{
    enum { NVAR = 5 };
    static const char *const var[NVAR] = {"MOERT_HIP_QSTAGE", "MOERT_HIP_SGPIPE", "MOERT_HIP_DOWNR",
                                          "MOERT_HIP_DOWNEARLY", "MOERT_HIP_ROUTERANK"};
    static const char *const set[][NVAR] = {
        {"0", "0", "1", "0", "0"}, {"1", "0", "1", "1", "1"}, {"2", "0", "1", "1", "1"}, {"3", "0", "1", "1", "1"},
        {"0", "2", "1", "1", "1"}, {"3", "2", "1", "0", "1"}, {"1", "1", "1", "1", "0"}, {"0", "0", "2", "1", "1"},
        {"0", "0", "4", "1", "1"}, {"3", "2", "4", "1", "1"}, {"0", "0", "0", "1", "1"}, {"1", "1", "0", "1", "1"}};
    enum { NSET = sizeof set / sizeof set[0] };
    for (int c = 0; c < n; c++) {
        run_result r[NSET];
        for (int m = 0; m < NSET; m++) {
            for (int v = 0; v < NVAR; v++)
                setenv(var[v], set[m][v], 1);
            int st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, NULL, &r[m]);
            for (int v = 0; v < NVAR; v++)
                unsetenv(var[v]);
            CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        }
        size_t bytes = (size_t)(1 + N_DECODE) * (size_t)r[0].V * sizeof(float);
        for (int m = 1; m < NSET; m++) {
            bool same = memcmp(r[0].logits, r[m].logits, bytes) == 0 &&
                        memcmp(r[0].tokens, r[m].tokens, sizeof r[0].tokens) == 0;
            if (!same)
                fprintf(stderr, "\n    %s: %s=%s %s=%s %s=%s %s=%s %s=%s logits differ from (0, 0, 1, 0, 0)\n",
                        dirs[c], var[0], set[m][0], var[1], set[m][1], var[2], set[m][2], var[3], set[m][3], var[4],
                        set[m][4]);
            CU_ASSERT(same);
        }
        for (int m = 0; m < NSET; m++)
            free_result(&r[m]);
    }
}

static void test_gguf_qstage_bits(void)
{
    gguf_run(__func__, CFG_NUMERICS_EXACT, qstage_bits);
}

/* The decode fusions (the RMSNorm in the next GEMV's prologue, the residual ADD in its
 * producer's epilogue) give the bits of the kernels apart (MOERT_HIP_DECFUSE=0): logits,
 * greedy tokens and, traced, every record of every stage of every layer.  Every case fuses
 * something (at least a layer's qkv or router GEMV takes its norm), so the comparison is
 * never of one path with itself. */
static void decfuse_bits(char dirs[][512], int n)
{
    static const trace_kind tks[2] = {TR_NONE, TR_TENSOR_ALL};
    for (int c = 0; c < n; c++)
        for (int t = 0; t < 2; t++) {
            run_result on, off;
            int st = run_model(dirs[c], CFG_BACKEND_HIP, tks[t], NULL, &on);
            CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
            const int fused = backend_hip_decfusions();
            setenv("MOERT_HIP_DECFUSE", "0", 1);
            st = run_model(dirs[c], CFG_BACKEND_HIP, tks[t], NULL, &off);
            unsetenv("MOERT_HIP_DECFUSE");
            CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
            if (fused <= 0 || backend_hip_decfusions() != 0)
                fprintf(stderr, "\n    %s: %d ops fused, %d with MOERT_HIP_DECFUSE=0\n", dirs[c], fused,
                        backend_hip_decfusions());
            CU_ASSERT(fused > 0);
            CU_ASSERT_EQUAL(backend_hip_decfusions(), 0);
            size_t bytes = (size_t)(1 + N_DECODE) * (size_t)on.V * sizeof(float);
            bool same = memcmp(on.logits, off.logits, bytes) == 0 &&
                        memcmp(on.tokens, off.tokens, sizeof on.tokens) == 0 && on.n_rings == off.n_rings;
            for (size_t i = 0; same && i < on.n_rings; i++)
                same = on.ring_bytes[i] == off.ring_bytes[i] &&
                       memcmp(on.rings[i], off.rings[i], on.ring_bytes[i]) == 0;
            if (!same)
                fprintf(stderr, "\n    %s%s: decode fusions differ from the kernels apart\n", dirs[c],
                        t ? " (tensor traces)" : "");
            CU_ASSERT(same);
            free_result(&on);
            free_result(&off);
        }
}

static void test_decfuse_bits(void)
{
    fixture_run(__func__, decfuse_bits);
}

/* (act-q8 fuses nothing of a block-typed model: its GEMVs quantize their input first) */
static void test_gguf_decfuse_bits(void)
{
    gguf_run(__func__, CFG_NUMERICS_EXACT, decfuse_bits);
}

/* ---- numerics act-q8 on the GPU --------------------------------------------------------
 * Against the CPU's act-q8: each op is within 1e-4 of the CPU kernels on identical inputs
 * (MOERT_HIP_CHECK=all, tools/gpu_check.sh); a whole model is held to 1e-3, because a
 * rounding-level difference in a quantized row's input (the MoE hidden rows come from each
 * side's own gate/up) can move one int8 quant by one step, which shifts that op's output
 * by ~1e-4 relative and is carried on through the layers. */
static void logits_vs_cpu_q8(char dirs[][512], int n)
{
    logits_vs_cpu_tol(dirs, n, 1e-3);
}

static void test_gguf_act_q8_vs_cpu(void)
{
    gguf_run(__func__, CFG_NUMERICS_ACT_Q8, logits_vs_cpu_q8);
}

static void test_gguf_act_q8_determinism(void)
{
    gguf_run(__func__, CFG_NUMERICS_ACT_Q8, determinism);
}

/* ---- batch invariance (runtime.batch_invariant) ---------------------------------------
 * The whole prompt in chunks of 5 (5, 5, 3) is the reference.  With batch invariance on, the
 * same prompt with its last token as a decode step, and in chunks of 4 (4, 4, 4, 1: a one-row
 * prefill chunk), must give the same logits bit for bit, after the prompt and at each of the
 * N_DECODE decode steps that follow (fed the reference's tokens).  Without it, the last
 * token as a decode step takes the decode kernels: the difference is printed, not asserted. */
static void batch_invariance(char dirs[][512], int n)
{
    for (int c = 0; c < n; c++) {
        run_result ref, as_decode, one_row, off_ref, off_decode;
        g_batch_inv = true;
        int st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, NULL, &ref);
        g_prefilled = N_PROMPT - 1;
        if (!st)
            st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, ref.tokens, &as_decode);
        g_prefilled = N_PROMPT;
        g_chunk = 4;
        if (!st)
            st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, ref.tokens, &one_row);
        g_chunk = 5;
        g_batch_inv = false;
        if (!st)
            st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, ref.tokens, &off_ref);
        g_prefilled = N_PROMPT - 1;
        if (!st)
            st = run_model(dirs[c], CFG_BACKEND_HIP, TR_NONE, ref.tokens, &off_decode);
        g_prefilled = N_PROMPT;
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        size_t bytes = (size_t)(1 + N_DECODE) * (size_t)ref.V * sizeof(float);
        bool dec_same = memcmp(ref.logits, as_decode.logits, bytes) == 0;
        bool row_same = memcmp(ref.logits, one_row.logits, bytes) == 0;
        if (!dec_same || !row_same)
            fprintf(stderr, "\n    %s batch-invariant: last prompt token as a decode step identical %d, "
                            "a one-row prefill chunk identical %d\n",
                    dirs[c], dec_same, row_same);
        CU_ASSERT(dec_same);
        CU_ASSERT(row_same);
        bool off_same = memcmp(off_ref.logits, off_decode.logits, bytes) == 0;
        fprintf(stderr, "\n    %s without batch invariance: last prompt token as a decode step %s "
                        "(logits after the prompt: rel L2 %.2e)",
                dirs[c], off_same ? "identical" : "differs", rel_l2(off_decode.logits, off_ref.logits, ref.V));
        free_result(&ref);
        free_result(&as_decode);
        free_result(&one_row);
        free_result(&off_ref);
        free_result(&off_decode);
    }
}

static void test_batch_invariance(void)
{
    fixture_run(__func__, batch_invariance);
}

static void test_gguf_batch_invariance(void)
{
    gguf_run(__func__, CFG_NUMERICS_EXACT, batch_invariance);
}

static void test_gguf_act_q8_batch_invariance(void)
{
    gguf_run(__func__, CFG_NUMERICS_ACT_Q8, batch_invariance);
}

/* GPU act-q8 greedy tokens on llama.cpp's gguf-tiny files (whole prompt, then one token at
 * a time) against llama.cpp's own greedy ids (reference.json: its CPU kernels quantize the
 * activations too). */
static void test_gguf_act_q8_llamacpp(void)
{
    const char *shared = test_shared_parts("gguf-tiny");
    if (!shared) {
        TEST_SKIP("../shared/reference (gguf-tiny) is absent: act-q8 greedy tokens not compared with llama.cpp's");
        return;
    }
    static const char *const types[] = {"q8_0", "q4_k_m", "q5_k_m", "q6_k"};
    char path[600], ref[600];
    snprintf(path, sizeof path, "%s/gguf-tiny/model-%s.gguf", shared, types[0]);
    if (!hip_ready(__func__, path))
        return;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++) {
        snprintf(path, sizeof path, "%s/gguf-tiny/model-%s.gguf", shared, types[t]);
        snprintf(ref, sizeof ref, "%s/gguf-tiny/ref-%s/reference.json", shared, types[t]);
        json_error_t je;
        json_t *r = json_load_file(ref, 0, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(r);
        json_t *pj = json_object_get(r, "prompt_ids"), *gj = json_object_get(r, "llamacpp_greedy_ids");
        size_t np = json_array_size(pj), ng = json_array_size(gj);
        CU_ASSERT_FATAL(np > 0 && np <= 64 && ng > 0 && ng <= 64);
        int32_t prompt[64];
        for (size_t i = 0; i < np; i++)
            prompt[i] = (int32_t)json_integer_value(json_array_get(pj, i));
        cfg_config cfg;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(cfg_load(path, &cfg, &err), MOERT_OK);
        cfg.rt.backend = CFG_BACKEND_HIP;
        cfg.rt.numerics = CFG_NUMERICS_ACT_Q8;
        cfg.rt.max_seq_len = (int64_t)(np + ng + 4);
        if (cfg.rt.prefill_chunk > cfg.rt.max_seq_len)
            cfg.rt.prefill_chunk = cfg.rt.max_seq_len;
        cfg.sampling.temperature = 0;
        sess *s = calloc(1, sizeof *s);
        CU_ASSERT_PTR_NOT_NULL_FATAL(s);
        int st = sess_open(s, &cfg, 0, &err);
        if (!st)
            st = sess_prefill(s, prompt, (int64_t)np, &err);
        int first_diff = -1;
        for (size_t i = 0; i < ng && !st; i++) {
            int32_t id = sess_sample(s);
            if (id != (int32_t)json_integer_value(json_array_get(gj, i)) && first_diff < 0)
                first_diff = (int)i;
            st = sess_decode(s, id, &err);
        }
        if (st)
            fprintf(stderr, "\n    %s: %s\n", path, err.msg);
        if (first_diff >= 0)
            fprintf(stderr, "\n    %s act-q8 on the GPU: greedy token %d differs from llama.cpp's\n", types[t],
                    first_diff);
        CU_ASSERT_EQUAL(st, MOERT_OK);
        CU_ASSERT_EQUAL(first_diff, -1);
        sess_close(s);
        free(s);
        json_decref(r);
    }
}

/* A host self-test of the HIP build (no GPU needed); < 0: built without the backend. */
static void host_selftest(const char *test, int (*selftest)(char *why, size_t cap))
{
    char why[512] = "";
    int r = selftest(why, sizeof why);
    if (r < 0) {
        test_skip(test, "built without the HIP backend (make hip-nvidia / make hip)");
        return;
    }
    if (r)
        fprintf(stderr, "\n    %s\n", why);
    CU_ASSERT_EQUAL(r, 0);
}

/* The kernels' weight loaders (hip/hip_wload.h) run on the host. */
static void test_dequant_host(void)
{
    host_selftest(__func__, backend_hip_dequant_selftest);
}

/* The tensor-core GEMM's activation split (hip/gemm_mma.hip) runs on the host: exact. */
/* The act-q8 quantizer and integer dots (hip/qact.hip) on the host vs ops_qact_row /
 * ops_matmul_qact. */
static void test_qact_host(void)
{
    host_selftest(__func__, backend_hip_qact_selftest);
}

static void test_mma_split_host(void)
{
    host_selftest(__func__, backend_hip_mma_split_selftest);
}

/* Compares GPU rings with the CPU's (see the file comment). */
static void compare_rings(const char *dir, const run_result *g, const run_result *c, bool tensor)
{
    CU_ASSERT_EQUAL_FATAL(g->n_rings, c->n_rings);
    for (size_t i = 0; i < g->n_rings; i++) {
        const uint64_t *hg = (const uint64_t *)g->rings[i], *hc = (const uint64_t *)c->rings[i];
        bool hdr = memcmp(hg, hc, 4 * sizeof(uint64_t)) == 0;
        if (!hdr)
            fprintf(stderr, "\n    %s ring %zu: header gpu {%llu %llu %llu %llu} cpu {%llu %llu %llu %llu}\n",
                    dir, i, (unsigned long long)hg[0], (unsigned long long)hg[1], (unsigned long long)hg[2],
                    (unsigned long long)hg[3], (unsigned long long)hc[0], (unsigned long long)hc[1],
                    (unsigned long long)hc[2], (unsigned long long)hc[3]);
        CU_ASSERT(hdr);
        if (!hdr)
            continue;
        int64_t W = g->widths[i];
        for (uint64_t r = 0; r < hg[1]; r++) {
            const unsigned char *rg = g->rings[i] + TRACE_RING_HEADER + r * g->record_bytes[i];
            const unsigned char *rc = c->rings[i] + TRACE_RING_HEADER + r * c->record_bytes[i];
            const trace_record *tg = (const trace_record *)rg, *tc = (const trace_record *)rc;
            CU_ASSERT_EQUAL(tg->step, tc->step);
            CU_ASSERT_EQUAL(tg->pos, tc->pos);
            double scale = tc->stats[TRACE_STAT_L2] / sqrt((double)W) + 1e-30;
            for (int k = 0; k < TRACE_N_STATS; k++) {
                double tol = k == TRACE_STAT_COUNT || k >= TRACE_STAT_NAN ? 0 : 1e-4 * scale + 1e-12;
                if (!(fabs(tg->stats[k] - tc->stats[k]) <= tol)) {
                    fprintf(stderr, "\n    %s ring %zu record %llu: stat %d gpu %.9g cpu %.9g\n", dir, i,
                            (unsigned long long)r, k, tg->stats[k], tc->stats[k]);
                    CU_FAIL("trace stat differs");
                }
            }
            if (!tensor)
                continue;
            const float *vg = (const float *)(tg + 1), *vc = (const float *)(tc + 1);
            double rel = rel_l2(vg, vc, W);
            if (!(rel <= 1e-4))
                fprintf(stderr, "\n    %s ring %zu record %llu: values rel err %.3e\n", dir, i,
                        (unsigned long long)r, rel);
            CU_ASSERT(rel <= 1e-4);
            const int32_t *ig = g->has_ids[i] ? (const int32_t *)(vg + W) : NULL;
            if (ig)
                CU_ASSERT(memcmp(ig, (const int32_t *)(vc + W), (size_t)W * sizeof(int32_t)) == 0);
            /* the device hash and stats of the device's own row */
            uint64_t h = trace_row_hash(vg, (uint64_t)W * 4, ig, ig ? (uint64_t)W * 4 : 0);
            CU_ASSERT_EQUAL(h, tg->hash);
            double st[TRACE_N_STATS];
            trace_row_stats(vg, W, st);
            for (int k = 0; k < TRACE_N_STATS; k++)
                CU_ASSERT((isnan(st[k]) && isnan(tg->stats[k])) ||
                          fabs(st[k] - tg->stats[k]) <= 1e-12 * (fabs(st[k]) + 1e-300) + 1e-300);
        }
    }
}

static void test_trace_rings(void)
{
    char dirs[MAX_CASES][512];
    int n = fixture_dirs(dirs);
    CU_ASSERT_FATAL(n > 0);
    if (!hip_ready(__func__, dirs[0]))
        return;
    for (int c = 0; c < n; c++) {
        run_result cpu, gpu, gpu2;
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_CPU, TR_TENSOR_ALL, NULL, &cpu), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_TENSOR_ALL, cpu.tokens, &gpu), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_TENSOR_ALL, cpu.tokens, &gpu2), MOERT_OK);
        compare_rings(dirs[c], &gpu, &cpu, true);
        for (size_t i = 0; i < gpu.n_rings && i < gpu2.n_rings; i++)
            CU_ASSERT(memcmp(gpu.rings[i], gpu2.rings[i], gpu.ring_bytes[i]) == 0);
        free_result(&cpu);
        free_result(&gpu);
        free_result(&gpu2);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_CPU, TR_STATS_LAST_SMALL, NULL, &cpu), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(run_model(dirs[c], CFG_BACKEND_HIP, TR_STATS_LAST_SMALL, cpu.tokens, &gpu),
                              MOERT_OK);
        compare_rings(dirs[c], &gpu, &cpu, false);
        free_result(&cpu);
        free_result(&gpu);
    }
}

/* ---- act-q8 tensor-core GEMM (hip/gemm_qmma.hip, hip/hip_qunpack.h) ------------------- */

static const ops_dtype qmma_types[] = {OPS_Q8_0, OPS_Q4_0, OPS_Q5_0, OPS_Q4_K, OPS_Q5_K, OPS_Q6_K};
#define QMMA_NTYPES (int)(sizeof qmma_types / sizeof qmma_types[0])

static uint64_t qmma_rng(uint64_t *z)
{
    *z ^= *z << 13;
    *z ^= *z >> 7;
    *z ^= *z << 17;
    return *z;
}
/* uniform in [-1, 1) */
static float qmma_unit(uint64_t *z)
{
    return (float)((double)(qmma_rng(z) >> 11) * 0x1p-52 - 1.0);
}
/* a random finite, normal f16 with |v| in [2^-14, 2^2) */
static uint16_t qmma_f16(uint64_t *z)
{
    uint64_t r = qmma_rng(z);
    unsigned ex = 1 + (unsigned)(r >> 20) % 16;
    return (uint16_t)((r & 0x83ffu) | ex << 10);
}

/* The operands and scales of hip_qunpack.h put back together with ops' own formulas and
 * order (ops_quant.c) give exactly ops_to_f32's values, for blocks from the quantizer and
 * for random quant bytes.  Runs on the host, in every build. */
static void test_qmma_unpack_host(void)
{
    uint64_t z = 0x51ed2701f3a5c7b9ull;
    for (int ti = 0; ti < QMMA_NTYPES; ti++) {
        ops_dtype t = qmma_types[ti];
        int be = (int)ops_dtype_block_elems(t), bb = (int)ops_dtype_block_bytes(t);
        uint8_t blk[256];
        float x[256], y[256];
        long bad = 0;
        for (int it = 0; it < 400; it++) {
            if (it % 2 == 0) {
                for (int i = 0; i < be; i++)
                    x[i] = qmma_unit(&z) * (it % 7 == 0 ? 100.0f : 1.0f);
                CU_ASSERT_EQUAL_FATAL(ops_quantize_row(blk, x, t, be), (size_t)bb);
            } else { /* any quant bytes, finite scales */
                for (int i = 0; i < bb; i++)
                    blk[i] = (uint8_t)qmma_rng(&z);
                uint16_t d = qmma_f16(&z), dm = qmma_f16(&z);
                int off = HIP_QU_D_OFF(t);
                blk[off] = (uint8_t)d, blk[off + 1] = (uint8_t)(d >> 8);
                if (t == OPS_Q4_K || t == OPS_Q5_K)
                    blk[2] = (uint8_t)dm, blk[3] = (uint8_t)(dm >> 8);
            }
            ops_to_f32(y, blk, t, be);
            float d = ops_f16_to_f32((uint16_t)(blk[HIP_QU_D_OFF(t)] | blk[HIP_QU_D_OFF(t) + 1] << 8));
            float dmin = ops_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
            /* the block as the GEMM's shared memory holds it: little-endian words, from a
             * 4-byte boundary or 2 bytes past one (the 2-byte-aligned types' odd blocks) */
            uint32_t wb[256 / 4 + 2] = {0};
            int o = (it / 2) % 2 ? 2 : 0;
            for (int i = 0; i < bb; i++)
                wb[(o + i) / 4] |= (uint32_t)blk[i] << 8 * ((o + i) % 4);
            for (int e = 0; e < be; e += 4) {
                uint32_t w4 = hip_qu_pack4(wb, o, t, e);
                for (int i = 0; i < 4; i++) {
                    int q = (int8_t)(uint8_t)(w4 >> 8 * i), el = e + i;
                    float v;
                    if (t == OPS_Q8_0) {
                        v = (float)q * d;
                    } else if (t == OPS_Q4_0 || t == OPS_Q5_0) {
                        v = d * (float)q;
                    } else if (t == OPS_Q6_K) {
                        v = (d * (float)hip_qu_q6scale(blk, el / 16)) * (float)q;
                    } else {
                        int sc, mn;
                        hip_qu_kscale(blk, el / 32, &sc, &mn);
                        float ds = d * (float)sc, dmm = dmin * (float)mn;
                        v = ds * (float)q - dmm;
                    }
                    if (memcmp(&v, &y[el], sizeof v) != 0 && bad++ == 0)
                        fprintf(stderr, "\n    %s block %d element %d: operand %d gives %.9g, ops_to_f32 %.9g\n",
                                ops_dtype_name(t), it, el, q, (double)v, (double)y[el]);
                    /* the operand ranges the MMA relies on */
                    int lo = t == OPS_Q8_0 ? -128 : t == OPS_Q4_0 ? -8 : t == OPS_Q5_0 ? -16 : t == OPS_Q6_K ? -32 : 0;
                    int hi = t == OPS_Q8_0 ? 127 : t == OPS_Q4_0 ? 7 : t == OPS_Q5_0 ? 15 : t == OPS_Q6_K ? 31
                           : t == OPS_Q4_K ? 15 : 31;
                    if ((q < lo || q > hi) && bad++ == 0)
                        fprintf(stderr, "\n    %s: operand %d outside [%d, %d]\n", ops_dtype_name(t), q, lo, hi);
                }
            }
        }
        CU_ASSERT_EQUAL(bad, 0);
    }
}

/* Random weights [n_exp][n][k] of type t (from the quantizer) and n_arows activation rows
 * quantized on the host with ops_qact_row; NULL on no memory. */
static uint8_t *qmma_weights(ops_dtype t, int n_exp, int n, int k, uint64_t *z)
{
    size_t rb = ops_row_bytes(t, k);
    uint8_t *w = malloc(rb * (size_t)n * (size_t)n_exp);
    float *x = malloc(sizeof(float) * (size_t)k);
    if (w && x)
        for (size_t r = 0; r < (size_t)n * (size_t)n_exp; r++) {
            float sc = 0.02f * (1.0f + (float)(r % 5));
            for (int i = 0; i < k; i++)
                x[i] = qmma_unit(z) * sc;
            ops_quantize_row(w + r * rb, x, t, k);
        }
    free(x);
    return w;
}
static uint8_t *qmma_acts(int rows, int k, uint64_t *z)
{
    size_t ab = ops_qact_row_bytes(k);
    uint8_t *a = aligned_alloc(64, ab * (size_t)rows);
    float *x = malloc(sizeof(float) * (size_t)k);
    if (a && x)
        for (int r = 0; r < rows; r++) {
            float sc = 1.0f + (float)(r % 9);
            for (int i = 0; i < k; i++) /* a few outliers per row, as real activations have */
                x[i] = qmma_unit(z) * sc * (i % 97 == 13 ? 20.0f : 1.0f);
            ops_qact_row(a + (size_t)r * ab, x, k);
        }
    free(x);
    return a;
}

typedef struct qmma_stat {
    double worst;
    long exact, total, cases;
} qmma_stat;

/* GPU (twice: bit-identical) vs ops_matmul_qact over the rows qrows; false to skip. */
static bool qmma_case(ops_dtype t, const uint8_t *acts, int n_arows, const uint8_t *w, int n_exp, int n, int k,
                      const int32_t *tiles, int n_tiles, const int32_t *gather, int gdiv, int m, qmma_stat *st)
{
    float *g = malloc(sizeof(float) * (size_t)m * (size_t)n), *g2 = malloc(sizeof(float) * (size_t)m * (size_t)n);
    float *c = malloc(sizeof(float) * (size_t)m * (size_t)n);
    const void **rows = malloc(sizeof(void *) * (size_t)m);
    CU_ASSERT_FATAL(g && g2 && c && rows);
    char why[512] = "";
    int r = backend_hip_qgemm_run(t, acts, n_arows, w, n_exp, n, k, tiles, n_tiles, gather, gdiv, m, g, why, sizeof why);
    bool ran = r == 0;
    if (r < 0) {
        test_skip("test_qmma_gpu", r == -1 ? "built without the HIP backend (make hip-nvidia / make hip)" : why);
        goto out;
    }
    if (r > 0)
        fprintf(stderr, "\n    %s: %s\n", ops_dtype_name(t), why);
    CU_ASSERT_EQUAL_FATAL(r, 0);
    CU_ASSERT_EQUAL_FATAL(backend_hip_qgemm_run(t, acts, n_arows, w, n_exp, n, k, tiles, n_tiles, gather, gdiv, m, g2,
                                                why, sizeof why), 0);
    CU_ASSERT(memcmp(g, g2, sizeof(float) * (size_t)m * (size_t)n) == 0);
    size_t ab = ops_qact_row_bytes(k), mat = ops_row_bytes(t, k) * (size_t)n;
    if (!tiles) {
        for (int p = 0; p < m; p++)
            rows[p] = acts + (size_t)p * ab;
        ops_matmul_qact(c, n, rows, m, w, t, k, 0, n);
    } else {
        for (int i = 0; i < tiles[0]; i++) {
            int e = tiles[1 + 3 * i], p0 = tiles[2 + 3 * i], p1 = tiles[3 + 3 * i];
            for (int p = p0; p < p1; p++)
                rows[p - p0] = acts + (size_t)(gather[p] / gdiv) * ab;
            ops_matmul_qact(c + (size_t)p0 * n, n, rows, p1 - p0, w + (size_t)e * mat, t, k, 0, n);
        }
    }
    double rel = rel_l2(g, c, (int64_t)m * n);
    long ex = 0;
    for (size_t i = 0; i < (size_t)m * (size_t)n; i++)
        ex += memcmp(&g[i], &c[i], sizeof(float)) == 0;
    if (!(rel <= 1e-6))
        fprintf(stderr, "\n    %s m %d n %d k %d%s: rel L2 %.3e vs ops_matmul_qact\n", ops_dtype_name(t), m, n, k,
                tiles ? " (grouped)" : "", rel);
    CU_ASSERT(rel <= 1e-6);
    if (!(rel <= st->worst))
        st->worst = rel;
    st->exact += ex;
    st->total += (long)m * n;
    st->cases++;
out:
    free(g);
    free(g2);
    free(c);
    free(rows);
    return ran;
}

/* The act-q8 tensor-core GEMM on the GPU against ops_matmul_qact, every block type: dense
 * for m = 1, 5, 64, 200 at the bench model's shapes (k 2048 and 768, n 768 .. 5120; a
 * ragged k and n for the 32-blocks), and grouped-expert GEMMs through a tile table and a
 * row table; relative L2 <= 1e-6, and bit-identical run to run. */
static void test_qmma_gpu(void)
{
    static const int dense[][3] = {{1, 5120, 2048}, {5, 768, 2048}, {64, 2048, 768}, {200, 768, 2048}, {5, 100, 416}};
    uint64_t z = 0x2545f4914f6cdd1dull;
    for (int ti = 0; ti < QMMA_NTYPES; ti++) {
        ops_dtype t = qmma_types[ti];
        qmma_stat st = {0, 0, 0, 0};
        for (size_t c = 0; c < sizeof dense / sizeof dense[0]; c++) {
            int m = dense[c][0], n = dense[c][1], k = dense[c][2];
            if (k % ops_dtype_block_elems(t))
                continue;
            uint8_t *w = qmma_weights(t, 1, n, k, &z), *a = qmma_acts(m, k, &z);
            CU_ASSERT_FATAL(w && a);
            bool ran = qmma_case(t, a, m, w, 1, n, k, NULL, 0, NULL, 1, m, &st);
            free(w);
            free(a);
            if (!ran)
                return;
        }
        /* grouped: 48 tokens, each routed to 2 of 5 experts (row table entry token * 2 + slot),
         * tiles of at most 32 rows; gate/up-like and down-like shapes */
        static const int grouped[][2] = {{768, 2048}, {2048, 768}};
        enum { T = 48, E = 5, TOPK = 2 };
        int32_t gather[T * TOPK], tiles[1 + 3 * (T * TOPK)];
        int p = 0, nt = 0;
        for (int e = 0; e < E; e++) {
            int p0 = p;
            for (int tok = 0; tok < T; tok++) {
                int e1 = (tok * 7 + tok / 5) % E, e2 = (e1 + 1 + tok % (E - 1)) % E; /* distinct */
                if (e1 == e)
                    gather[p++] = tok * TOPK;
                if (e2 == e)
                    gather[p++] = tok * TOPK + 1;
            }
            for (int q = p0; q < p; q += 32) {
                tiles[1 + 3 * nt] = e;
                tiles[2 + 3 * nt] = q;
                tiles[3 + 3 * nt] = q + 32 < p ? q + 32 : p;
                nt++;
            }
        }
        tiles[0] = nt;
        for (size_t c = 0; c < sizeof grouped / sizeof grouped[0]; c++) {
            int n = grouped[c][0], k = grouped[c][1];
            uint8_t *w = qmma_weights(t, E, n, k, &z), *a = qmma_acts(T, k, &z);
            CU_ASSERT_FATAL(w && a);
            qmma_case(t, a, T, w, E, n, k, tiles, nt, gather, TOPK, p, &st);
            free(w);
            free(a);
        }
        fprintf(stderr, "\n    act-q8 GEMM %s: %ld cases, worst rel L2 %.3e vs ops_matmul_qact, %ld of %ld outputs "
                        "bit-equal",
                ops_dtype_name(t), st.cases, st.worst, st.exact, st.total);
    }
}

/* The decode top-k by ranks (k_route_rank) chooses what the arg-max rounds (k_route) choose,
 * bit for bit: rows of random logits, of a few repeated values (exact ties), with -inf
 * entries (probabilities 0, tied), all equal, with a NaN and with +inf (both routed by the
 * rounds themselves), at E 128 / K 8 (Qwen3-30B-A3B), E 60 / K 4 and E 8 / K 2.  And the
 * choice is the right one: for finite logits the slots hold the experts in the order of
 * (logit descending, index ascending), which exp keeps (logits are distinct by >= 1/64 or
 * equal), and normalised weights sum to 1. */
static void test_route_rank_gpu(void)
{
    static const int shapes[][3] = {{128, 8, 1}, {60, 4, 0}, {8, 2, 1}};
    enum { ROWS = 40 };
    uint64_t z = 0x243f6a8885a308d3ull;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int E = shapes[c][0], K = shapes[c][1], norm = shapes[c][2];
        float *lg = malloc(sizeof(float) * ROWS * (size_t)E);
        float *w0 = malloc(sizeof(float) * ROWS * (size_t)K), *w1 = malloc(sizeof(float) * ROWS * (size_t)K);
        int32_t *i0 = malloc(sizeof(int32_t) * ROWS * (size_t)K), *i1 = malloc(sizeof(int32_t) * ROWS * (size_t)K);
        CU_ASSERT_FATAL(lg && w0 && w1 && i0 && i1);
        for (int r = 0; r < ROWS; r++)
            for (int e = 0; e < E; e++) {
                float u = qmma_unit(&z); /* in [-1, 1) */
                float v = (float)(int)(u * 512.0f) / 64.0f; /* multiples of 1/64 */
                if (r % 5 == 1)
                    v = (float)((int)(u * 3.0f)); /* -2 .. 2: many exact ties */
                else if (r % 5 == 2 && e % 3 != 0)
                    v = -INFINITY;
                else if (r % 5 == 3)
                    v = 0.25f;
                lg[(size_t)r * E + e] = v;
            }
        lg[(size_t)7 * E + E / 2] = NAN;
        lg[(size_t)13 * E + 1] = INFINITY;
        char why[512] = "";
        int rc = backend_hip_route_run(ROWS, E, K, norm, lg, 0, w0, i0, why, sizeof why);
        if (rc < 0) {
            test_skip("test_route_rank_gpu", rc == -1 ? "built without the HIP backend (make hip-nvidia / make hip)" : why);
        } else {
            if (rc)
                fprintf(stderr, "\n    %s\n", why);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            CU_ASSERT_EQUAL_FATAL(backend_hip_route_run(ROWS, E, K, norm, lg, 1, w1, i1, why, sizeof why), 0);
            bool same = memcmp(i0, i1, sizeof(int32_t) * ROWS * (size_t)K) == 0 &&
                        memcmp(w0, w1, sizeof(float) * ROWS * (size_t)K) == 0;
            if (!same)
                fprintf(stderr, "\n    E %d K %d: the ranking top-k differs from the arg-max rounds\n", E, K);
            CU_ASSERT(same);
            for (int r = 0; r < ROWS; r++) {
                const float *l = lg + (size_t)r * E;
                if (r == 7 || r == 13)
                    continue;
                bool taken[128] = {false};
                double sum = 0;
                for (int j = 0; j < K; j++) {
                    int best = -1;
                    for (int e = 0; e < E; e++)
                        if (!taken[e] && (best < 0 || l[e] > l[best]))
                            best = e;
                    taken[best] = true;
                    CU_ASSERT_EQUAL(i1[(size_t)r * K + j], best);
                    sum += w1[(size_t)r * K + j];
                }
                if (norm)
                    CU_ASSERT(fabs(sum - 1.0) < 1e-6);
            }
        }
        free(lg);
        free(w0);
        free(w1);
        free(i0);
        free(i1);
        if (rc < 0)
            return;
    }
}

/* The dense tensor-core GEMM split along k (hip_splitk_parts) against a double-precision
 * product of the same bf16 weights and fp32 activations: relative L2 <= 1e-6 with and
 * without the split, bit-identical run to run, and each row's bits independent of how many
 * rows the GEMM has (the split depends on n and k only: what batch invariance needs). */
static void test_splitk_gpu(void)
{
    static const int shapes[][3] = {{5, 128, 2048}, {64, 2048, 4096}, {200, 256, 1024}, {1, 2048, 4096}};
    uint64_t z = 0x9e3779b97f4a7c15ull;
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        int m = shapes[c][0], n = shapes[c][1], k = shapes[c][2];
        int parts = hip_splitk_parts(n, k);
        float *a = malloc(sizeof(float) * (size_t)m * (size_t)k), *wf = malloc(sizeof(float) * (size_t)n * (size_t)k);
        uint16_t *w = malloc(sizeof(uint16_t) * (size_t)n * (size_t)k);
        float *g1 = malloc(sizeof(float) * (size_t)m * (size_t)n), *gp = malloc(sizeof(float) * (size_t)m * (size_t)n);
        float *gp2 = malloc(sizeof(float) * (size_t)m * (size_t)n), *row = malloc(sizeof(float) * (size_t)n);
        float *ref = malloc(sizeof(float) * (size_t)m * (size_t)n);
        CU_ASSERT_FATAL(a && wf && w && g1 && gp && gp2 && row && ref);
        for (size_t i = 0; i < (size_t)m * (size_t)k; i++)
            a[i] = qmma_unit(&z) * (1.0f + (float)(i % 7));
        for (size_t i = 0; i < (size_t)n * (size_t)k; i++) {
            float v = qmma_unit(&z) * 0.05f;
            uint32_t u;
            memcpy(&u, &v, sizeof u);
            w[i] = (uint16_t)(u >> 16); /* bf16 by truncation; wf is its exact value */
            u &= 0xffff0000u;
            memcpy(&wf[i], &u, sizeof u);
        }
        char why[512] = "";
        int rc = backend_hip_mma_dense_run(m, n, k, a, w, 1, g1, why, sizeof why);
        if (rc < 0) {
            test_skip("test_splitk_gpu", rc == -1 ? "built without the HIP backend (make hip-nvidia / make hip)" : why);
        } else {
            for (int r = 0; r < m; r++)
                for (int j = 0; j < n; j++) {
                    double acc = 0;
                    for (int i = 0; i < k; i++)
                        acc += (double)a[(size_t)r * k + i] * (double)wf[(size_t)j * k + i];
                    ref[(size_t)r * n + j] = (float)acc;
                }
            if (rc)
                fprintf(stderr, "\n    %s\n", why);
            CU_ASSERT_EQUAL_FATAL(rc, 0);
            CU_ASSERT_EQUAL(backend_hip_mma_dense_run(m, n, k, a, w, parts, gp, why, sizeof why), 0);
            CU_ASSERT_EQUAL(backend_hip_mma_dense_run(m, n, k, a, w, parts, gp2, why, sizeof why), 0);
            CU_ASSERT(memcmp(gp, gp2, sizeof(float) * (size_t)m * (size_t)n) == 0);
            /* row m - 1 alone: the same bits as in the m-row GEMM */
            CU_ASSERT_EQUAL(backend_hip_mma_dense_run(1, n, k, a + (size_t)(m - 1) * k, w, parts, row, why, sizeof why), 0);
            CU_ASSERT(memcmp(row, gp + (size_t)(m - 1) * n, sizeof(float) * (size_t)n) == 0);
            double e1 = rel_l2(g1, ref, (int64_t)m * n), ep = rel_l2(gp, ref, (int64_t)m * n);
            fprintf(stderr, "\n    m %d n %d k %d: %d parts, rel L2 vs double %.3e (unsplit %.3e)", m, n, k, parts, ep,
                    e1);
            CU_ASSERT(e1 <= 1e-6);
            CU_ASSERT(ep <= 1e-6);
        }
        free(a);
        free(wf);
        free(w);
        free(g1);
        free(gp);
        free(gp2);
        free(row);
        free(ref);
        if (rc < 0)
            return;
    }
}

void suite_hip(void)
{
    CU_pSuite s = CU_add_suite("hip", NULL, NULL);
    CU_add_test(s, "GPU logits vs CPU (prefill chunks, decode steps)", test_logits_vs_cpu);
    CU_add_test(s, "GPU bit-identical run to run, graph == eager", test_determinism);
    CU_add_test(s, "GPU trace rings vs CPU; device hash and stats", test_trace_rings);
    CU_add_test(s, "device weight loaders (on the host) == ops_to_f32, every type", test_dequant_host);
    CU_add_test(s, "tensor-core GEMM's activation split (on the host): hi + lo + lo2 == a", test_mma_split_host);
    CU_add_test(s, "GPU logits vs CPU, GGUF models (weights quantized on the device)", test_gguf_logits_vs_cpu);
    CU_add_test(s, "GPU bit-identical run to run, graph == eager, GGUF models", test_gguf_determinism);
    CU_add_test(s,
                "GPU decode variants (MOERT_HIP_QSTAGE, _SGPIPE, _DOWNR, _DOWNEARLY, _ROUTERANK) == plain, GGUF models",
                test_gguf_qstage_bits);
    CU_add_test(s, "GPU decode fusions (norm prologue, residual epilogue) == kernels apart, bit for bit",
                test_decfuse_bits);
    CU_add_test(s, "GPU decode fusions == kernels apart, GGUF models", test_gguf_decfuse_bits);
    CU_add_test(s, "GPU top-k by ranks == by arg-max rounds, ties, -inf, NaN", test_route_rank_gpu);
    CU_add_test(s, "GPU greedy generation fed on the device == the host-fed loop, early stop taken back",
                test_fed_generation);
    CU_add_test(s, "GPU traced generation fed == host-fed: the same records, a step taken back leaves none",
                test_fed_traced);
    CU_add_test(s, "GPU decode split merge staged in shared memory == the row merge, bit for bit (1 and 2 tiles)",
                test_merge_stage_bits);
    CU_add_test(s, "act-q8 quantizer and integer dots (on the host) == ops_qact_row, ~ops_matmul_qact", test_qact_host);
    CU_add_test(s, "GPU act-q8 logits vs CPU act-q8, GGUF models", test_gguf_act_q8_vs_cpu);
    CU_add_test(s, "GPU act-q8 bit-identical run to run, graph == eager, GGUF models", test_gguf_act_q8_determinism);
    CU_add_test(s, "GPU act-q8 greedy tokens == llama.cpp's on gguf-tiny", test_gguf_act_q8_llamacpp);
    CU_add_test(s, "act-q8 GEMM's weight operands (on the host) == ops_to_f32, every block type",
                test_qmma_unpack_host);
    CU_add_test(s, "act-q8 tensor-core GEMM vs ops_matmul_qact, dense and grouped, every block type", test_qmma_gpu);
    CU_add_test(s, "tensor-core dense GEMM split along k vs a double product; rows independent of m",
                test_splitk_gpu);
    CU_add_test(s, "GPU batch invariance: a prompt row == the same token as a decode step", test_batch_invariance);
    CU_add_test(s, "GPU batch invariance, GGUF models", test_gguf_batch_invariance);
    CU_add_test(s, "GPU batch invariance, GGUF models, act-q8", test_gguf_act_q8_batch_invariance);
}
