/* route: routing replay (`run --route-from TRACE`) and precision simulation
 * (`run --sim-precision`), end to end through `moert run`, and their engines (trace_route,
 * ops_round_to) directly.  Expectations are invariants: a run forced to its own routing is
 * the same run, bit for bit; a changed router weight forced to the old routing changes the
 * router logits and nothing else; rounding to bf16 is deterministic and noisier than f16. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "../ops/ops.h"
#include "../runtime/trace/trace_file.h"
#include "../runtime/trace/trace_route.h"
#include "util.h"

#define OUTCAP 65536
static char out[OUTCAP], errb[OUTCAP];

#define sh(...) test_run_cmdf(out, sizeof out, errb, sizeof errb, __VA_ARGS__)

#define PROMPT "11,22,33,44,55,66,77,88,99,111,222,333"
#define N_NEW 5 /* positions 0 .. 12 + 5 - 2 are run */
#define RUN "./moert run configs/qwen3moe.yaml --tokens " PROMPT " -n 5 --threads 2 --trace-positions all"

static const char *tmp(const char *name)
{
    static char buf[16][512];
    static int k;
    char *b = buf[k++ % 16];
    snprintf(b, sizeof buf[0], "%s/route-%s", test_tmpdir(), name);
    return b;
}

/* The original run's traces, recorded once: stats mode and tensor mode. */
static const char *original(bool tensor)
{
    static char done[2];
    const char *t = tmp(tensor ? "orig-tensor.trace" : "orig-stats.trace");
    if (!done[tensor]) {
        int rc = sh(RUN " --trace %s%s", t, tensor ? " --trace-mode tensor" : "");
        if (rc != 0)
            fprintf(stderr, "\n    recording %s: exit %d: %s\n", t, rc, errb);
        done[tensor] = rc == 0;
    }
    return done[tensor] ? t : NULL;
}

static const trace_ring_view *ring(const trace_file *t, const char *label)
{
    for (size_t i = 0; i < t->n_rings; i++)
        if (!strcmp(t->rings[i].label, label))
            return &t->rings[i];
    return NULL;
}

/* Records of a ring with the same hash in both traces (rings of equal length), or -1. */
static int64_t same_hashes(const trace_ring_view *a, const trace_ring_view *b)
{
    if (!a || !b || a->n != b->n)
        return -1;
    int64_t same = 0;
    for (int64_t j = 0; j < a->n; j++)
        same += a->meta[j * 3] == b->meta[j * 3] && a->meta[j * 3 + 1] == b->meta[j * 3 + 1] &&
                a->meta[j * 3 + 2] == b->meta[j * 3 + 2];
    return same;
}

/* ||a - b|| / ||b|| over all values of a ring (tensor mode). */
static double rel_err(const trace_ring_view *a, const trace_ring_view *b)
{
    if (!a || !b || !a->values || !b->values || a->n != b->n || a->width != b->width)
        return NAN;
    double dd = 0, bb = 0;
    for (int64_t i = 0; i < a->n * a->width; i++) {
        double d = (double)a->values[i] - (double)b->values[i];
        dd += d * d;
        bb += (double)b->values[i] * b->values[i];
    }
    return sqrt(dd / bb);
}

static bool routers_identical(const trace_file *a, const trace_file *b)
{
    bool ok = true;
    int n = 0;
    for (size_t i = 0; i < a->n_rings; i++) {
        const trace_ring_view *x = &a->rings[i], *y = ring(b, x->label);
        if (x->stage != CFG_STAGE_MOE_ROUTER)
            continue;
        n++;
        ok &= y && x->experts && y->experts && x->values && y->values && x->n == y->n &&
              !memcmp(x->experts, y->experts, (size_t)(x->n * x->width) * sizeof(int32_t)) &&
              !memcmp(x->values, y->values, (size_t)(x->n * x->width) * sizeof(float));
    }
    return ok && n == 3; /* the default model's routed layers 1, 2, 3 */
}

/* ---- engines ----------------------------------------------------------------------- */

static float f(uint32_t bits)
{
    float x;
    memcpy(&x, &bits, 4);
    return x;
}

static uint32_t bits_of(float x)
{
    uint32_t b;
    memcpy(&b, &x, 4);
    return b;
}

/* Hand-computed roundings: ties go to the even neighbour, f16 overflows to inf at 65520,
 * subnormals round like the rest, NaN and inf pass, F32 changes nothing. */
static void test_round_to(void)
{
    struct {
        ops_dtype t;
        float in, want;
    } c[] = {
        {OPS_BF16, 1.0f, 1.0f},
        {OPS_BF16, 1.0f + 0x1p-8f, 1.0f},                     /* tie, 1.0 is even */
        {OPS_BF16, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f},        /* tie, 1 + 2/128 is even */
        {OPS_BF16, 1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 0x1p-7f}, /* just above the tie */
        {OPS_BF16, -3.14159265f, -3.140625f},
        {OPS_BF16, 0x1.fffffep127f, INFINITY},                /* rounds past the largest bf16 */
        {OPS_F16, 65504.0f, 65504.0f},
        {OPS_F16, 65519.0f, 65504.0f},
        {OPS_F16, 65520.0f, INFINITY},
        {OPS_F16, 1.0f + 0x1p-11f, 1.0f},                     /* tie */
        {OPS_F16, 1.0f + 0x1p-11f + 0x1p-20f, 1.0f + 0x1p-10f},
        {OPS_F16, 0x1p-24f, 0x1p-24f},                        /* smallest subnormal */
        {OPS_F16, 0x1p-25f, 0.0f},                            /* tie with 0: even */
        {OPS_F16, 3 * 0x1p-26f, 0x1p-24f},
        {OPS_F32, 1.0f + 0x1p-20f, 1.0f + 0x1p-20f},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        float x = c[i].in;
        ops_round_to(&x, 1, c[i].t);
        if (bits_of(x) != bits_of(c[i].want))
            fprintf(stderr, "\n    case %zu: %a -> %a, expected %a\n", i, (double)c[i].in, (double)x,
                    (double)c[i].want);
        CU_ASSERT_EQUAL(bits_of(x), bits_of(c[i].want));
    }
    float nan = f(0x7fc00001u), inf = -INFINITY;
    ops_round_to(&nan, 1, OPS_BF16);
    ops_round_to(&inf, 1, OPS_F16);
    CU_ASSERT(isnan(nan));
    CU_ASSERT(isinf(inf) && inf < 0);
    /* the rounding matches the weight encoder's (one definition of rounding) */
    float v[64], enc[64];
    uint16_t h[64];
    for (int i = 0; i < 64; i++)
        v[i] = enc[i] = sinf((float)i * 0.37f) * (float)(i + 1) * 17.0f;
    ops_quantize_row(h, v, OPS_BF16, 64);
    ops_round_to(enc, 64, OPS_BF16);
    for (int i = 0; i < 64; i++)
        CU_ASSERT_EQUAL(bits_of(enc[i]), bits_of(ops_bf16_to_f32(h[i])));
}

/* trace_route over the original trace: every position's routing, in position order,
 * equal to the recorded tensors; bad arguments refused. */
static void test_route_engine(void)
{
    const char *a = original(false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
    trace_route *r = NULL;
    CU_ASSERT_EQUAL_FATAL(trace_route_open(a, &cfg.topo, &r, &err), MOERT_OK);
    CU_ASSERT_EQUAL(trace_route_positions(r), 12 + N_NEW - 1);
    trace_file t;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(a, &t, &err), MOERT_OK);
    const trace_ring_view *v = ring(&t, "l2.moe_router");
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    for (int64_t p = 0; p < v->n; p++) {
        const int32_t *ids;
        const float *w;
        CU_ASSERT_FATAL(trace_route_row(r, 2, p, &ids, &w));
        CU_ASSERT_EQUAL(v->meta[p * 3 + 1], p);
        CU_ASSERT(!memcmp(ids, v->experts + p * 4, 16) && !memcmp(w, v->values + p * 4, 16));
    }
    const int32_t *ids;
    const float *w;
    CU_ASSERT_FALSE(trace_route_row(r, 0, 0, &ids, &w)); /* layer 0 is dense */
    CU_ASSERT_FALSE(trace_route_row(r, 2, v->n, &ids, &w));
    CU_ASSERT_FALSE(trace_route_row(r, 2, -1, &ids, &w));
    int32_t prompt[12] = {11, 22, 33, 44, 55, 66, 77, 88, 99, 111, 222, 333};
    CU_ASSERT_EQUAL(trace_route_check_prompt(r, prompt, 12, &err), MOERT_OK);
    CU_ASSERT_EQUAL(trace_route_check_length(r, 12, N_NEW, &err), MOERT_OK);
    CU_ASSERT_EQUAL(trace_route_check_length(r, 12, N_NEW + 1, &err), MOERT_EUSAGE);
    prompt[5] = 7;
    CU_ASSERT_EQUAL(trace_route_check_prompt(r, prompt, 12, &err), MOERT_EUSAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "token 5 is 7 here, 66 in the recording"));
    CU_ASSERT_EQUAL(trace_route_check_prompt(r, prompt, 11, &err), MOERT_EUSAGE);
    /* the fingerprint is the file's XXH3-64 */
    FILE *fp = fopen(a, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    static char buf[8 << 20];
    size_t n = fread(buf, 1, sizeof buf, fp);
    fclose(fp);
    CU_ASSERT_EQUAL(trace_route_fingerprint(r), XXH3_64bits(buf, n));
    trace_file_close(&t);
    trace_route_close(r);
    /* another topology is refused, naming the field */
    cfg.topo.num_experts_per_tok = 2;
    CU_ASSERT_EQUAL(trace_route_open(a, &cfg.topo, &r, &err), MOERT_EUSAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "num_experts_per_tok"));
    CU_ASSERT_PTR_NULL(r);
}

/* ---- routing replay ---------------------------------------------------------------- */

/* Forced to its own routing, a run is the same run: every record of every stage has the
 * same hash and stats, the same tokens come out, and the manifest names the source. */
static void test_route_self(void)
{
    const char *a = original(false), *b = tmp("self.trace");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace %s --route-from %s", b, a), 0);
    moert_err err = {0};
    trace_file ta, tb;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(a, &ta, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(b, &tb, &err), MOERT_OK);
    CU_ASSERT_EQUAL(ta.n_rings, tb.n_rings);
    CU_ASSERT(ta.n_rings > 30);
    for (size_t i = 0; i < ta.n_rings && i < tb.n_rings; i++) {
        const trace_ring_view *x = &ta.rings[i], *y = &tb.rings[i];
        CU_ASSERT_STRING_EQUAL(x->label, y->label);
        CU_ASSERT_EQUAL(same_hashes(x, y), x->n);
        CU_ASSERT(x->n == y->n && !memcmp(x->stats, y->stats, (size_t)x->n * 8 * sizeof(double)));
    }
    CU_ASSERT(routers_identical(&ta, &tb));
    CU_ASSERT(json_equal(json_object_get(ta.manifest, "generated_ids"), json_object_get(tb.manifest, "generated_ids")));
    CU_ASSERT(json_is_null(json_object_get(ta.manifest, "route_from")));
    json_t *rf = json_object_get(tb.manifest, "route_from");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(rf, "path")), a);
    trace_route *r = NULL;
    cfg_config cfg;
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_route_open(a, &cfg.topo, &r, &err), MOERT_OK);
    char hex[32];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)trace_route_fingerprint(r));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(rf, "fingerprint")), hex);
    trace_route_close(r);
    trace_file_close(&ta);
    trace_file_close(&tb);
    /* the forced run itself replays bit-exactly (replay forces the same routing) */
    CU_ASSERT_EQUAL(sh("./moert replay %s", b), 0);
}

/* One router weight of layer 1 changes a lot.  Unforced, routing flips; forced to the
 * original routing, only l1.router_logits differ: every other stage, the MoE output of
 * layer 1 included, keeps every record's hash. */
static void test_route_changed_weight(void)
{
    const char *a = original(true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    const char *dir = tmp("model");
    CU_ASSERT_EQUAL_FATAL(sh("./moert synth configs/qwen3moe.yaml --out %s", dir), 0);
    char file[600];
    snprintf(file, sizeof file, "%s/model-00001-of-00001.safetensors", dir);
    long off = test_st_offset(file, "model.layers.1.mlp.gate.weight");
    CU_ASSERT_FATAL(off > 0);
    FILE *fp = fopen(file, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    for (int e = 0; e < 16; e += 5) { /* experts 0, 5, 10, 15: the high byte of weight [e][3] */
        long at = off + (e * 128 + 3) * 2 + 1;
        fseek(fp, at, SEEK_SET);
        int byte = fgetc(fp);
        fseek(fp, at, SEEK_SET);
        fputc(byte ^ 0x01, fp); /* the exponent's lowest bit: the weight doubles or halves */
    }
    fclose(fp);
    const char *c = tmp("changed.trace"), *d = tmp("changed-forced.trace");
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --weights %s --trace %s", dir, c), 0);
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --weights %s --trace %s --route-from %s", dir, d, a), 0);
    moert_err err = {0};
    trace_file ta, tc, td;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(a, &ta, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(c, &tc, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(d, &td, &err), MOERT_OK);
    /* unforced: some routing flips in layer 1 */
    const trace_ring_view *ra = ring(&ta, "l1.moe_router"), *rc = ring(&tc, "l1.moe_router");
    CU_ASSERT_FATAL(ra && rc && ra->n == rc->n);
    int64_t flips = 0;
    for (int64_t j = 0; j < ra->n; j++)
        flips += memcmp(ra->experts + j * 4, rc->experts + j * 4, 16) != 0;
    fprintf(stderr, "\n    changed router weight, unforced: %lld of %lld positions route differently\n",
            (long long)flips, (long long)ra->n);
    CU_ASSERT(flips > 0);
    /* forced: the routing is the original's, the router logits are the new weights' */
    CU_ASSERT(routers_identical(&ta, &td));
    for (size_t i = 0; i < ta.n_rings; i++) {
        const trace_ring_view *x = &ta.rings[i], *y = ring(&td, x->label);
        int64_t same = same_hashes(x, y);
        if (!strcmp(x->label, "l1.router_logits")) {
            CU_ASSERT(same >= 0 && same < x->n);
            CU_ASSERT(rel_err(y, x) > 0);
        } else {
            if (same != x->n)
                fprintf(stderr, "\n    %s: %lld of %lld records equal\n", x->label, (long long)same, (long long)x->n);
            CU_ASSERT_EQUAL(same, x->n);
        }
    }
    trace_file_close(&ta);
    trace_file_close(&tc);
    trace_file_close(&td);
}

/* Traces that cannot serve a run are refused before it starts (exit 2, nothing printed on
 * stdout), saying why. */
static void test_route_refusals(void)
{
    const char *a = original(false);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    const char *last = tmp("last.trace");
    CU_ASSERT_EQUAL_FATAL(sh("./moert run configs/qwen3moe.yaml --tokens " PROMPT " -n 5 --trace %s", last), 0);
    /* a copy of the trace with one expert id out of range, and one with an id chosen twice */
    const char *bad = tmp("bad-id.trace"), *dup = tmp("dup-id.trace");
    CU_ASSERT_EQUAL_FATAL(sh("cp %s %s && cp %s %s", a, bad, a, dup), 0);
    long off = test_st_offset(bad, "l2.moe_router.experts");
    CU_ASSERT_FATAL(off > 0);
    FILE *fp = fopen(bad, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fseek(fp, off + 3 * 16, SEEK_SET); /* record 3, slot 0 */
    int32_t v = 99;
    fwrite(&v, 4, 1, fp);
    fclose(fp);
    fp = fopen(dup, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(fp);
    fseek(fp, off + 2 * 16, SEEK_SET); /* record 2: slot 1 := slot 0 */
    CU_ASSERT_EQUAL(fread(&v, 4, 1, fp), 1);
    fseek(fp, off + 2 * 16 + 4, SEEK_SET);
    fwrite(&v, 4, 1, fp);
    fclose(fp);
    /* a config whose trace plan leaves out moe_router */
    const char *yaml = tmp("no-router.yaml");
    CU_ASSERT_EQUAL_FATAL(sh("sed -e 's|stages: all |stages: [embed, logits] |' -e '/^tokenizer:/d' -e '/^contract:/d' "
                             "configs/qwen3moe.yaml > %s", yaml), 0);
    const char *norouter = tmp("no-router.trace");
    CU_ASSERT_EQUAL_FATAL(sh("./moert run %s --tokens " PROMPT " -n 5 --trace %s --trace-positions all", yaml,
                             norouter), 0);
    struct {
        const char *args, *route, *msg;
    } c[] = {
        {"--tokens 11,22,33,44,55,66,77,88,99,111,222,334 -n 5", a, "another prompt: token 11 is 334 here, 333"},
        {"--tokens 11,22,33 -n 5", a, "recorded a prompt of 12 tokens, this one has 3"},
        {"--tokens " PROMPT " -n 6", a, "routing is recorded for 16 positions, this run needs 17"},
        {"--tokens " PROMPT " -n 5", last, "--trace-positions all"},
        {"--tokens " PROMPT " -n 5", norouter, "no l1.moe_router records"},
        {"--tokens " PROMPT " -n 5", bad, "record 3 (position 3) slot 0: expert 99"},
        {"--tokens " PROMPT " -n 5", dup, "record 2 (position 2): expert"},
        {"--tokens " PROMPT " -n 5 --backend hip", a, "--route-from (routing replay): the hip backend does not "
                                                      "implement it"},
        {"--tokens " PROMPT " -n 5", "/nonexistent.trace", "/nonexistent.trace"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        int rc = sh("./moert run configs/qwen3moe.yaml %s --route-from %s", c[i].args, c[i].route);
        if (rc != 2 || !strstr(errb, c[i].msg))
            fprintf(stderr, "\n    case %zu: exit %d, stderr: %.400s\n", i, rc, errb);
        CU_ASSERT_EQUAL(rc, 2);
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, c[i].msg));
        CU_ASSERT_EQUAL(out[0], '\0');
    }
    /* another topology */
    CU_ASSERT_EQUAL(sh("./moert run tests/fixtures/hf/gqa4-hd24 --tokens 1,2 -n 1 --route-from %s", a), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "recorded with vocab_size 151936, this model has 512"));
}

/* ---- precision simulation ---------------------------------------------------------- */

/* bf16 rounding of every op's output: the same trace on every run, a non-zero noise floor
 * against fp32 at every layer that grows with depth no faster than bf16 allows, f16's
 * floor below bf16's (3 more mantissa bits), and `moert diff` shows it. */
static void test_sim_precision(void)
{
    const char *a = original(true);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    const char *b1 = tmp("bf16-1.trace"), *b2 = tmp("bf16-2.trace"), *h = tmp("f16.trace"),
               *bf = tmp("bf16-forced.trace");
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --sim-precision bf16 --trace %s", b1), 0);
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --sim-precision bf16 --threads 1 --prefill-chunk 5 --trace %s",
                             b2), 0);
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --sim-precision f16 --trace %s", h), 0);
    CU_ASSERT_EQUAL_FATAL(sh(RUN " --trace-mode tensor --sim-precision bf16 --route-from %s --trace %s", a, bf), 0);
    moert_err err = {0};
    trace_file ta, t1, t2, th, tf;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(a, &ta, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(b1, &t1, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(b2, &t2, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(h, &th, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(bf, &tf, &err), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(t1.manifest, "sim_precision")), "bf16");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(th.manifest, "sim_precision")), "f16");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ta.manifest, "sim_precision")), "none");
    for (size_t i = 0; i < ta.n_rings; i++) {
        const trace_ring_view *x = &ta.rings[i], *y1 = ring(&t1, x->label), *y2 = ring(&t2, x->label),
                              *yh = ring(&th, x->label);
        /* deterministic: other threads and chunking, same bits */
        CU_ASSERT_EQUAL(same_hashes(y1, y2), x->n);
        CU_ASSERT(y1 && y2 && !memcmp(y1->values, y2->values, (size_t)(x->n * x->width) * sizeof(float)));
        double e_bf = rel_err(y1, x), e_h = rel_err(yh, x);
        if (x->stage == CFG_STAGE_EMBED) { /* bf16 weights widened: already representable */
            CU_ASSERT_EQUAL(e_bf, 0.0);
            continue;
        }
        if (x->stage == CFG_STAGE_MOE_ROUTER)
            continue; /* its weights move by the noise, its ids may flip on a near-tie */
        /* a near-tie that flips one position's experts moves that row of moe_ffn_out whole */
        double bound = x->stage == CFG_STAGE_MOE_FFN_OUT ? 0.5 : 0.05;
        if (!(e_bf > 0 && e_bf < bound && e_h > 0 && e_h < e_bf))
            fprintf(stderr, "\n    %s: bf16 %g, f16 %g\n", x->label, e_bf, e_h);
        CU_ASSERT(e_bf > 0 && e_bf < bound);
        CU_ASSERT(e_h > 0 && e_h < e_bf);
    }
    fprintf(stderr, "\n    noise floor vs fp32, l3.output: bf16 %.3e, f16 %.3e\n",
            rel_err(ring(&t1, "l3.output"), ring(&ta, "l3.output")),
            rel_err(ring(&th, "l3.output"), ring(&ta, "l3.output")));
    /* forced to the fp32 run's routing: the same experts everywhere, the values drift */
    CU_ASSERT(routers_identical(&ta, &tf));
    CU_ASSERT(rel_err(ring(&tf, "l3.moe_ffn_out"), ring(&ta, "l3.moe_ffn_out")) > 0);
    trace_file_close(&ta);
    trace_file_close(&t1);
    trace_file_close(&t2);
    trace_file_close(&th);
    trace_file_close(&tf);
    /* moert diff reports the floor, identically run to run */
    int rc = sh("./moert diff %s %s --json", b1, a);
    CU_ASSERT(rc == 0 || rc == 1); /* 1: beyond a bit-identical tolerance */
    json_error_t je;
    json_t *j = json_loads(out, 0, &je), *s;
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    size_t k;
    int layers_seen = 0;
    json_array_foreach(json_object_get(j, "stages"), k, s)
    {
        const char *name = json_string_value(json_object_get(s, "name"));
        if (name && strstr(name, ".output")) {
            layers_seen++;
            CU_ASSERT(json_real_value(json_object_get(s, "rel_err")) > 0);
        }
    }
    CU_ASSERT_EQUAL(layers_seen, 4);
    char first[OUTCAP];
    snprintf(first, sizeof first, "%s", out);
    sh("./moert diff %s %s --json", b2, a);
    json_t *j2 = json_loads(out, 0, &je);
    CU_ASSERT(j2 && json_equal(json_object_get(j, "stages"), json_object_get(j2, "stages")));
    json_decref(j);
    json_decref(j2);
    /* a device runs its own precision; bad names are refused */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2 --sim-precision bf16 --backend hip"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "--sim-precision: the hip backend does not implement it"));
    CU_ASSERT_EQUAL(sh(RUN " --sim-precision fp8"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "--sim-precision: expected bf16 or f16, got 'fp8'"));
    CU_ASSERT_EQUAL(sh(RUN " --sim-precision none"), 2);
}

void suite_route(void)
{
    CU_pSuite s = CU_add_suite("route", NULL, NULL);
    CU_add_test(s, "ops_round_to: hand-computed bf16 and f16 roundings", test_round_to);
    CU_add_test(s, "trace_route: lookups, prompt and length checks, fingerprint", test_route_engine);
    CU_add_test(s, "--route-from its own trace: bit-identical", test_route_self);
    CU_add_test(s, "--route-from on a changed router weight: only the router logits move",
                test_route_changed_weight);
    CU_add_test(s, "--route-from refuses traces that cannot serve the run", test_route_refusals);
    CU_add_test(s, "--sim-precision bf16|f16: deterministic noise floor", test_sim_precision);
}
