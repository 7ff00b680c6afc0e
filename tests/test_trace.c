/* trace: rings, trace files and the tools around them (validate, replay, diff), mostly
 * through the real CLI.  Expectations are independent: hand-planted faults that must be
 * named, files compared byte for byte, HF reference tensors. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/session.h"
#include "../runtime/st.h"
#include "../runtime/trace/diff.h"
#include "../runtime/trace/record.h"
#include "../runtime/trace/replay.h"
#include "../runtime/trace/rowcmp.h"
#include "../runtime/trace/trace.h"
#include "../runtime/trace/trace_file.h"
#include "../runtime/trace/validate.h"
#include "util.h"

#define OUTCAP 65536
static char out[OUTCAP], errb[OUTCAP];

#define sh(...) test_run_cmdf(out, sizeof out, errb, sizeof errb, __VA_ARGS__)

static const char *tmp(const char *name)
{
    static char buf[8][512];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", test_tmpdir(), name);
    return buf[k];
}

/* A fresh tensor-mode trace of the embedded default over every position. */
static const char *default_trace(const char *name, int threads, int chunk, const char *mode)
{
    const char *p = tmp(name);
    int rc = sh("./moert run configs/qwen3moe.yaml --tokens 9707,11,1879,0,576 -n 4 --threads %d "
                "--prefill-chunk %d --trace %s --trace-mode %s --trace-positions all",
                threads, chunk, p, mode);
    if (rc != 0)
        fprintf(stderr, "\n    moert run failed (%d): %s\n", rc, errb);
    CU_ASSERT_EQUAL(rc, 0);
    return p;
}

/* Rewrites a trace, letting `mutate` change one named tensor's shape and/or bytes. */
typedef void (*mutate_fn)(const char *name, st_write_spec *spec, uint8_t *data, size_t *len);

static int rewrite_trace(const char *src, const char *dst, mutate_fn mutate)
{
    moert_err err = {0};
    st_set *set = NULL;
    if (st_open(src, &set, &err))
        return -1;
    size_t n = st_count(set);
    st_write_spec *specs = calloc(n, sizeof *specs);
    uint8_t **bufs = calloc(n, sizeof *bufs);
    size_t *lens = calloc(n, sizeof *lens);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(set, i);
        specs[i] = (st_write_spec){t->name, t->dtype, t->ndim, {0}};
        memcpy(specs[i].shape, t->shape, sizeof t->shape);
        bufs[i] = malloc(t->nbytes + 1);
        memcpy(bufs[i], t->data, t->nbytes);
        lens[i] = t->nbytes;
        mutate(t->name, &specs[i], bufs[i], &lens[i]);
    }
    const char *keys[] = {"format", "moert_version", "contract", "manifest"};
    const char *vals[4];
    for (int k = 0; k < 4; k++)
        vals[k] = st_metadata(set, keys[k]) ? st_metadata(set, keys[k]) : "";
    st_writer *w = NULL;
    int st = st_writer_open(dst, specs, n, keys, vals, 4, &w, &err);
    for (size_t i = 0; i < n && !st; i++)
        st = st_writer_write(w, bufs[i], lens[i], &err);
    if (!st)
        st = st_writer_finish(w, &err);
    else
        st_writer_abort(w);
    for (size_t i = 0; i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(lens);
    free(specs);
    st_close(set);
    return st;
}

static void drop_last_column_of_attn_out(const char *name, st_write_spec *spec, uint8_t *data,
                                         size_t *len)
{
    if (strcmp(name, "l1.attn_out") != 0)
        return;
    int64_t rows = spec->shape[0], cols = spec->shape[1];
    float *f = (float *)data;
    for (int64_t r = 0; r < rows; r++)
        memmove(f + r * (cols - 1), f + r * cols, (size_t)(cols - 1) * sizeof *f);
    spec->shape[1] = cols - 1;
    *len = (size_t)(rows * (cols - 1)) * sizeof *f;
}

static void halve_router_weights(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    if (strcmp(name, "l2.moe_router") != 0)
        return;
    float *f = (float *)data;
    for (size_t i = 0; i < *len / 4; i++)
        f[i] *= 0.5f;
}

static void bad_expert_id(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (strcmp(name, "l3.moe_router.experts") == 0)
        ((int32_t *)data)[5] = 99; /* the default model has 16 experts */
}

static void nan_in_output(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (strcmp(name, "l0.output") == 0)
        ((float *)data)[3] = NAN;
}

static void test_validate(void)
{
    const char *t = default_trace("v.trace", 2, 64, "tensor");
    const char *junit = tmp("v.xml");
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --junit %s", t, junit), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "PASS"));
    FILE *f = fopen(junit, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    char xml[4096] = {0};
    CU_ASSERT(fread(xml, 1, sizeof xml - 1, f) > 0);
    fclose(f);
    CU_ASSERT_PTR_NOT_NULL(strstr(xml, "failures=\"0\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(xml, "name=\"l3.moe_router\""));

    /* a wrong shape: exit 1, the stage named, expected and actual */
    const char *bad = tmp("shape.trace");
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, drop_last_column_of_attn_out), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --junit %s", bad, junit), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "l1.attn_out"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "[*, 128]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "127]"));
    f = fopen(junit, "r");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    memset(xml, 0, sizeof xml);
    CU_ASSERT(fread(xml, 1, sizeof xml - 1, f) > 0);
    fclose(f);
    CU_ASSERT_PTR_NULL(strstr(xml, "failures=\"0\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(xml, "<failure"));

    /* value rules */
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, halve_router_weights), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", bad), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "l2.moe_router"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "sum_to_one"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "sums to 0.5"));
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, bad_expert_id), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --json", bad), 1);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT(json_is_false(json_object_get(j, "passed")));
    json_t *v0 = json_array_get(json_object_get(j, "violations"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v0, "stage")), "l3.moe_router.experts");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(v0, "rule")), "index_range");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(v0, "record")), 1); /* id 5 = row 1 of k=4 */
    json_decref(j);
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, nan_in_output), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", bad), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "l0.output record 0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "finite"));
}

static void test_validate_stats_and_bad_input(void)
{
    const char *t = default_trace("s.trace", 2, 64, "stats");
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", t), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "PASS"));
    /* stats traces keep the router's rows, so its value rules are checked there too: nothing
     * of the default contract is left unchecked, and a planted bad expert id fails */
    CU_ASSERT_PTR_NULL(strstr(out, "not checked"));
    const char *bad = tmp("s-bad.trace");
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, bad_expert_id), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", bad), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "l3.moe_router.experts record 1"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "index_range"));

    /* unusable input: exit 2 */
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", tmp("missing.trace")), 2);
    const char *junk = tmp("junk.trace");
    FILE *f = fopen(junk, "w");
    fputs("not a safetensors file at all", f);
    fclose(f);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", junk), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "junk.trace"));
    char ref[512];
    if (test_shared_parts("tiny-f32")) {
        /* a safetensors file that is not a trace */
        snprintf(ref, sizeof ref, "%s/tiny-f32/reference.safetensors", test_shared_parts("tiny-f32"));
        CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s", ref), 2);
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, "not a moert trace"));
    }
    CU_ASSERT_EQUAL(sh("./moert validate %s %s", tmp("nope.yaml"), t), 2);
}

/* Same run, different thread counts and chunking: the data sections are identical. */
static void test_threads_identical(void)
{
    const char *a = default_trace("t1.trace", 1, 64, "tensor");
    const char *b = default_trace("t2.trace", 2, 3, "tensor");
    moert_err err = {0};
    st_set *sa = NULL, *sb = NULL;
    CU_ASSERT_EQUAL_FATAL(st_open(a, &sa, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(st_open(b, &sb, &err), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(sa), st_count(sb));
    int differing = 0;
    for (size_t i = 0; i < st_count(sa); i++) {
        const st_tensor *x = st_at(sa, i), *y = st_find(sb, x->name);
        if (!y || x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) != 0) {
            fprintf(stderr, "\n    %s differs between --threads 1 and --threads 2\n", x->name);
            differing++;
        }
    }
    CU_ASSERT_EQUAL(differing, 0);
    CU_ASSERT(st_count(sa) > 60);
    st_close(sa);
    st_close(sb);
}

static void test_replay_fixture(void)
{
    const char *fx = "tests/fixtures/replay/default.trace";
    CU_ASSERT_EQUAL(sh("./moert replay %s", fx), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
    /* replay proves what the recording does not fix: threads and chunking */
    CU_ASSERT_EQUAL(sh("./moert replay %s --threads 1 --prefill-chunk 1 --json", fx), 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT(json_is_true(json_object_get(j, "match")));
    CU_ASSERT(json_integer_value(json_object_get(j, "records")) > 300);
    json_decref(j);
    CU_ASSERT_EQUAL(sh("./moert replay %s", tmp("missing.trace")), 2);
}

/* Byte offset, in its shard, of a tensor of a synthesized model directory. */
static long tensor_file_offset(const char *dir, const char *name, char *shard, size_t cap)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_error_t je;
    json_t *idx = json_load_file(path, 0, &je);
    if (!idx)
        return -1;
    const char *file = json_string_value(json_object_get(json_object_get(idx, "weight_map"), name));
    if (!file) {
        json_decref(idx);
        return -1;
    }
    snprintf(shard, cap, "%s/%s", dir, file);
    json_decref(idx);
    FILE *f = fopen(shard, "rb");
    if (!f)
        return -1;
    uint64_t n = 0;
    if (fread(&n, 8, 1, f) != 1 || n > (1u << 26)) {
        fclose(f);
        return -1;
    }
    char *hdr = calloc(1, n + 1);
    long off = -1;
    if (fread(hdr, 1, n, f) == n) {
        json_t *h = json_loads(hdr, 0, &je);
        json_t *offs = json_object_get(json_object_get(h, name), "data_offsets");
        if (offs)
            off = (long)(8 + n + (uint64_t)json_integer_value(json_array_get(offs, 0)));
        json_decref(h);
    }
    free(hdr);
    fclose(f);
    return off;
}

/* Changes one byte of layer 2's attention output projection in the model dir's shard: the
 * high byte of its first bf16 (sign and exponent). */
static bool flip_o_proj_l2(const char *dir)
{
    char shard[1024];
    long off = tensor_file_offset(dir, "model.layers.2.self_attn.o_proj.weight", shard, sizeof shard);
    FILE *f = off > 0 ? fopen(shard, "r+b") : NULL;
    if (!f)
        return false;
    int byte = fseek(f, off + 1, SEEK_SET) == 0 ? fgetc(f) : EOF;
    bool ok = byte != EOF && fseek(f, off + 1, SEEK_SET) == 0 && fputc(byte ^ 0x40, f) != EOF;
    return fclose(f) == 0 && ok;
}

static void test_replay_changed_weight(void)
{
    const char *fx = "tests/fixtures/replay/default.trace";
    const char *dir = tmp("model");
    /* the same seeded weights written as files: replay against them is still bit-exact */
    CU_ASSERT_EQUAL_FATAL(sh("./moert synth configs/qwen3moe.yaml --out %s --shard-mb 16", dir), 0);
    CU_ASSERT_EQUAL(sh("./moert replay %s --weights %s", fx, dir), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
    /* one byte of layer 2's attention output projection changes */
    CU_ASSERT_FATAL(flip_o_proj_l2(dir));
    /* the fingerprint catches it... */
    CU_ASSERT_EQUAL(sh("./moert replay %s --weights %s", fx, dir), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "fingerprint"));
    /* ...and a forced replay names the first divergence: layer 2, stage attn_out */
    CU_ASSERT_EQUAL(sh("./moert replay %s --weights %s --force", fx, dir), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "first divergence: step 0, layer 2, stage attn_out"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "cosine"));
    CU_ASSERT_EQUAL(sh("./moert replay %s --weights %s --force --json", fx, dir), 1);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *d = json_object_get(j, "first_divergence");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "layer")), 2);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "stage")), "attn_out");
    CU_ASSERT(json_real_value(json_object_get(d, "cosine")) < 1.0);
    json_decref(j);
}

/* A tensor-mode prefill trace (-n 0, every position) has exactly the reference file's
 * tensor names and shapes, and diff shows every stage within 1e-5. */
static void diff_against_reference(const char *dir)
{
    char ref[700], ids[4096];
    snprintf(ref, sizeof ref, "%s/reference.safetensors", dir);
    CU_ASSERT_FATAL(test_reference_prompt(dir, ids, sizeof ids));
    json_error_t je;
    size_t i;
    json_t *x;
    const char *t = tmp("ref.trace");
    CU_ASSERT_EQUAL_FATAL(sh("./moert run %s --tokens %s -n 0 --trace %s --trace-mode tensor "
                             "--trace-positions all",
                             dir, ids, t),
                          0);
    moert_err err = {0};
    st_set *rs = NULL, *ts = NULL;
    CU_ASSERT_EQUAL_FATAL(st_open(ref, &rs, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(st_open(t, &ts, &err), MOERT_OK);
    for (size_t k = 0; k < st_count(rs); k++) {
        const st_tensor *a = st_at(rs, k), *b = st_find(ts, a->name);
        CU_ASSERT_PTR_NOT_NULL(b);
        if (b) {
            CU_ASSERT_EQUAL(b->ndim, 2);
            CU_ASSERT_EQUAL(b->shape[0], a->shape[0]);
            CU_ASSERT_EQUAL(b->shape[1], a->shape[1]);
        }
    }
    st_close(rs);
    st_close(ts);
    CU_ASSERT_EQUAL_FATAL(sh("./moert diff %s %s --json", t, ref), 0);
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    int n_stages = 0, routers = 0;
    json_array_foreach(json_object_get(j, "stages"), i, x)
    {
        json_t *rel = json_object_get(x, "rel_err"), *tk = json_object_get(x, "topk_agreement");
        if (rel) {
            n_stages++;
            if (!(json_real_value(rel) <= 1e-5))
                fprintf(stderr, "\n    %s: %s rel_err %g\n", dir,
                        json_string_value(json_object_get(x, "name")), json_real_value(rel));
            CU_ASSERT(json_real_value(rel) <= 1e-5);
            CU_ASSERT(json_real_value(json_object_get(x, "cos")) > 0.99999);
        }
        if (tk) {
            routers++;
            CU_ASSERT_DOUBLE_EQUAL(json_real_value(tk), 1.0, 1e-12);
        }
    }
    CU_ASSERT(n_stages >= 9);
    CU_ASSERT(routers >= 1);
    json_decref(j);
}

static void test_diff_reference(void)
{
    diff_against_reference("tests/fixtures/hf/gqa4-hd24");
    const char *shared = test_shared_parts("tiny-bf16");
    if (!shared) {
        TEST_SKIP("../shared/reference (tiny-bf16) is absent: diff against tiny-bf16 not checked");
        return;
    }
    char dir[600];
    snprintf(dir, sizeof dir, "%s/tiny-bf16", shared);
    diff_against_reference(dir);
}

/* Rings keep the newest records (overwrite) or the oldest (stop), and count drops. */
static void ring_run(cfg_trace_on_full mode, int64_t *first_step, int64_t *n, int64_t *drops)
{
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
    cfg.trace.enabled = true;
    cfg.trace.mode = CFG_TRACE_STATS;
    cfg.trace.positions = CFG_TRACE_LAST;
    cfg.trace.stages = 1u << CFG_STAGE_FINAL_NORM;
    cfg.trace.capacity = 3;
    cfg.trace.on_full = mode;
    const char *path = tmp("ring.trace");
    snprintf(cfg.trace.out_path, sizeof cfg.trace.out_path, "%s", path);
    sess s;
    CU_ASSERT_EQUAL_FATAL(sess_open(&s, &cfg, 0, &err), MOERT_OK);
    int32_t prompt[3] = {10, 20, 30}, gen[8];
    int64_t n_gen = 0;
    CU_ASSERT_EQUAL(sess_generate(&s, prompt, 3, 7, gen, &n_gen, NULL, NULL, &err), MOERT_OK);
    trace_run_info info = {prompt, 3, gen, n_gen};
    CU_ASSERT_EQUAL(trace_file_write(&s, path, &info, &err), MOERT_OK);
    sess_close(&s);
    trace_file tf;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(path, &tf, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(tf.n_rings, 1);
    *n = tf.rings[0].n;
    *drops = tf.rings[0].drops;
    *first_step = tf.rings[0].meta[0];
    for (int64_t i = 1; i < tf.rings[0].n; i++) /* records in order */
        CU_ASSERT_EQUAL(tf.rings[0].meta[i * 3], tf.rings[0].meta[(i - 1) * 3] + 1);
    trace_file_close(&tf);
}

static void test_ring_overflow(void)
{
    /* 7 generated tokens: records at steps 0 (the prompt's last position) .. 6 = 7 offered */
    int64_t first, n, drops;
    ring_run(CFG_TRACE_OVERWRITE, &first, &n, &drops);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(drops, 4);
    CU_ASSERT_EQUAL(first, 4); /* the newest three: steps 4, 5, 6 */
    ring_run(CFG_TRACE_STOP, &first, &n, &drops);
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_EQUAL(drops, 4);
    CU_ASSERT_EQUAL(first, 0); /* the oldest three */
}

/* The records the session counts as offered to each ring (trace_rt_room, which decides
 * whether a traced generation may be fed on a device) against the rings' own headers on the
 * CPU: every ring's `written` after a prompt in chunks and generations, and the room
 * verdicts they imply, hand-computed, in both full modes. */
static void test_ring_room(void)
{
    for (int mode = 0; mode < 2; mode++) {
        cfg_config cfg;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &err), MOERT_OK);
        cfg.trace.enabled = true;
        cfg.trace.mode = CFG_TRACE_STATS;
        cfg.trace.positions = mode ? CFG_TRACE_ALL : CFG_TRACE_LAST;
        cfg.trace.stages = (1u << CFG_STAGE_FINAL_NORM) | (1u << CFG_STAGE_LOGITS);
        cfg.trace.capacity = 12;
        cfg.trace.on_full = CFG_TRACE_OVERWRITE;
        cfg.rt.prefill_chunk = 2;
        sess s;
        CU_ASSERT_EQUAL_FATAL(sess_open(&s, &cfg, 0, &err), MOERT_OK);
        int32_t prompt[5] = {10, 20, 30, 40, 50}, gen[8];
        int64_t n_gen = 0;
        /* last: the prompt offers 1 (its last chunk), 4 tokens 3 decode steps: 4;
         * all: 5 prompt rows + 3 */
        const int64_t offered = mode ? 8 : 4;
        CU_ASSERT_EQUAL(sess_generate(&s, prompt, 5, 4, gen, &n_gen, NULL, NULL, &err), MOERT_OK);
        CU_ASSERT_EQUAL(n_gen, 4);
        for (size_t i = 0; i < trace_rt_count(s.trace); i++) {
            const trace_slot_info *si = trace_rt_slot(s.trace, i);
            trace_ring_header h;
            CU_ASSERT_EQUAL_FATAL(s.be.vt->read(&s.be, si->ring_buf, 0, &h, sizeof h, &err), MOERT_OK);
            CU_ASSERT_EQUAL(h.written, (uint64_t)offered);
        }
        CU_ASSERT(trace_rt_room(s.trace, 12 - offered));
        CU_ASSERT(!trace_rt_room(s.trace, 12 - offered + 1));
        CU_ASSERT(!trace_rt_room(s.trace, -1));
        /* a step taken back: only the last step's records (one decode row) come off */
        trace_rt_take_back_step(s.trace);
        CU_ASSERT(trace_rt_room(s.trace, 12 - offered + 1));
        CU_ASSERT(!trace_rt_room(s.trace, 12 - offered + 2));
        trace_rt_take_back_step(s.trace); /* nothing more to take back */
        CU_ASSERT(!trace_rt_room(s.trace, 12 - offered + 2));
        sess_close(&s);
        /* a ring that stops when full never overwrites: room for any count */
        cfg.trace.on_full = CFG_TRACE_STOP;
        cfg.trace.capacity = 1;
        CU_ASSERT_EQUAL_FATAL(sess_open(&s, &cfg, 0, &err), MOERT_OK);
        CU_ASSERT_EQUAL(sess_generate(&s, prompt, 5, 4, gen, &n_gen, NULL, NULL, &err), MOERT_OK);
        CU_ASSERT(trace_rt_room(s.trace, 1000));
        CU_ASSERT(s.stats.fed_steps == 0); /* the CPU backend does not feed */
        sess_close(&s);
    }
}

static void test_contract_refuses_plan(void)
{
    /* a contract whose attn_out width disagrees with the topology refuses to start */
    const char *c = tmp("narrow.yaml");
    CU_ASSERT_EQUAL_FATAL(sh("sed 's/^\\(  attn_out: *{shape: \\[tokens, \\)hidden_size\\]/\\17]/' "
                             "contracts/qwen3moe-trace-v1.yaml > %s && grep -q 'attn_out.*tokens, 7]' %s",
                             c, c),
                          0);
    const char *t = tmp("never.trace");
    unlink(t);
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2 -n 1 --trace %s --contract %s", t, c), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "attn_out"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "7"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "128"));
    struct stat sb;
    CU_ASSERT_NOT_EQUAL(stat(t, &sb), 0); /* nothing written */
    /* a trace into a directory that does not exist: a clear error, no stray temp file */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 1,2 -n 1 --trace %s/no/such/dir/x.trace",
                       test_tmpdir()),
                    2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "x.trace"));
}



/* Work bounded by the bytes present, never their square: a row of a million expert ids
 * (distinct) and two files of a million rows (diff) once meant 10^11..10^12 steps. */
static void test_wide_and_long_inputs(void)
{
    const int64_t W = 1000000;
    char manifest[4096];
    snprintf(manifest, sizeof manifest,
             "{\"format\":\"moert-trace\",\"topology\":{\"vocab_size\":16,\"hidden_size\":8,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":1,\"num_key_value_heads\":1,\"head_dim\":8,\"num_experts\":%lld,"
             "\"num_experts_per_tok\":%lld,\"moe_intermediate_size\":1,\"intermediate_size\":0,"
             "\"decoder_sparse_step\":1,\"mlp_only_layers\":[],\"norm_topk_prob\":false,\"tie_word_embeddings\":false,"
             "\"rope_theta\":10000.0,\"rms_norm_eps\":1e-06},\"trace\":{\"mode\":\"tensor\"},"
             "\"rings\":[{\"label\":\"l0.moe_router\",\"stage\":\"moe_router\",\"layer\":0,\"width\":%lld,"
             "\"records\":1,\"written\":1,\"drops\":0}]}",
             (long long)W, (long long)W, (long long)W);
    const st_write_spec specs[] = {
        {"l0.moe_router", ST_F32, 2, {1, W}},
        {"l0.moe_router.experts", ST_I32, 2, {1, W}},
        {"l0.moe_router@meta", ST_I64, 2, {1, 3}},
        {"l0.moe_router@stats", ST_F64, 2, {1, 8}},
    };
    const char *keys[] = {"format", "manifest"}, *vals[] = {"moert-trace", manifest};
    const char *t = tmp("wide.trace");
    moert_err e = {0};
    st_writer *w;
    CU_ASSERT_EQUAL_FATAL(st_writer_open(t, specs, 4, keys, vals, 2, &w, &e), MOERT_OK);
    float *f = calloc((size_t)W, sizeof *f);
    int32_t *ids = malloc((size_t)W * sizeof *ids);
    for (int64_t i = 0; i < W; i++)
        ids[i] = (int32_t)((i * 7919) % W); /* a permutation of 0..W-1 ... */
    ids[W - 1] = ids[0];                    /* ... but for the last column */
    int64_t meta[3] = {0, 0, 0};
    double stats[8] = {0};
    CU_ASSERT_EQUAL(st_writer_write(w, f, (size_t)W * 4, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, ids, (size_t)W * 4, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, meta, sizeof meta, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, stats, sizeof stats, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(st_writer_finish(w, &e), MOERT_OK);
    const char *c = tmp("distinct.yaml");
    FILE *cf = fopen(c, "w");
    fputs("contract: t\nversion: 1\ntensors:\n  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32}\n"
          "  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [distinct]}\n",
          cf);
    fclose(cf);
    CU_ASSERT_EQUAL(sh("./moert validate %s %s", c, t), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "FAIL l0.moe_router.experts record 0 (layer 0, step 0, position 0): distinct: id 0 "
                                       "repeated at column 999999"));
    /* two plain files of a million rows each: rows matched by position */
    const st_write_spec col[] = {{"embed", ST_F32, 2, {W, 1}}};
    const char *a = tmp("long-a.safetensors"), *b = tmp("long-b.safetensors");
    for (int k = 0; k < 2; k++) {
        CU_ASSERT_EQUAL_FATAL(st_writer_open(k ? b : a, col, 1, NULL, NULL, 0, &w, &e), MOERT_OK);
        for (int64_t i = 0; i < W; i++)
            f[i] = (float)(i % 100) + (float)k * 0.5f;
        CU_ASSERT_EQUAL(st_writer_write(w, f, (size_t)W * 4, &e), MOERT_OK);
        CU_ASSERT_EQUAL_FATAL(st_writer_finish(w, &e), MOERT_OK);
    }
    /* they differ by 0.5 everywhere: beyond the default tolerance, within --atol 0.5 */
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --atol 0.5", a, b), 0);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --json", a, b), 1);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    json_t *st0 = json_array_get(json_object_get(j, "stages"), 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(st0, "name")), "embed");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(st0, "rows")), W);
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(st0, "max_abs")), 0.5, 1e-12);
    json_decref(j);
    free(f);
    free(ids);
}

/* ---- bad manifests: a catalogue of single-field edits to the replay fixture --------- */

/* Sets the value at a '/'-separated path (object keys, array indices) of j to v (stolen);
 * v == NULL deletes it. */
static bool json_set_path(json_t *j, const char *path, json_t *v)
{
    char key[128];
    const char *slash = strchr(path, '/');
    size_t kl = slash ? (size_t)(slash - path) : strlen(path);
    snprintf(key, sizeof key, "%.*s", (int)kl, path);
    if (slash) {
        json_t *child = json_is_array(j) ? json_array_get(j, (size_t)atol(key)) : json_object_get(j, key);
        return child && json_set_path(child, slash + 1, v);
    }
    if (json_is_array(j))
        return v ? json_array_set_new(j, (size_t)atol(key), v) == 0 : json_array_remove(j, (size_t)atol(key)) == 0;
    return v ? json_object_set_new(j, key, v) == 0 : json_object_del(j, key) == 0;
}

/* Copies trace src to dst with its manifest replaced by `manifest` (any text). */
static int write_with_manifest(const char *src, const char *dst, const char *manifest)
{
    moert_err err = {0};
    st_set *set = NULL;
    if (st_open(src, &set, &err))
        return -1;
    size_t n = st_count(set);
    st_write_spec *specs = calloc(n, sizeof *specs);
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(set, i);
        specs[i] = (st_write_spec){t->name, t->dtype, t->ndim, {0}};
        memcpy(specs[i].shape, t->shape, sizeof t->shape);
    }
    const char *keys[] = {"format", "moert_version", "contract", "manifest"};
    const char *vals[] = {st_metadata(set, "format"), st_metadata(set, "moert_version"),
                          st_metadata(set, "contract"), manifest};
    st_writer *w = NULL;
    int st = st_writer_open(dst, specs, n, keys, vals, 4, &w, &err);
    for (size_t i = 0; i < n && !st; i++)
        st = st_writer_write(w, st_at(set, i)->data, st_at(set, i)->nbytes, &err);
    st = st ? (st_writer_abort(w), st) : st_writer_finish(w, &err);
    free(specs);
    st_close(set);
    return st;
}

/* The fixture's manifest with `path` set to the JSON text `value` ("-" deletes it);
 * path "" replaces the whole manifest text by value. */
static bool edited_trace(const char *dst, const char *path, const char *value)
{
    const char *fx = "tests/fixtures/replay/default.trace";
    moert_err err = {0};
    st_set *set = NULL;
    if (st_open(fx, &set, &err))
        return false;
    bool ok = false;
    char *text = NULL;
    if (!path[0]) {
        text = strdup(value);
    } else {
        json_error_t je;
        json_t *m = json_loads(st_metadata(set, "manifest"), 0, &je);
        json_t *v = strcmp(value, "-") ? json_loads(value, JSON_DECODE_ANY, &je) : NULL;
        if (m && (v || !strcmp(value, "-")) && json_set_path(m, path, v))
            text = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(m);
    }
    st_close(set);
    ok = text && write_with_manifest(fx, dst, text) == 0;
    free(text);
    return ok;
}

static const struct {
    const char *path, *value; /* the edit (edited_trace) */
    const char *cmd;          /* "{T}" is the edited trace */
    const char *stderr_text;  /* exact, "{T}" is the edited trace */
} bad_manifests[] = {
    /* `records` disagreeing with the tensors: once a use-after-free in all three commands */
    {"rings/0/records", "99", "replay {T}",
     "moert replay: {T}: manifest rings[0] says ring embed holds 99 records, expected embed@stats F64 [99, 8] and "
     "embed@meta I64 [99, 3], found F64 [11, 8] and I64 [11, 3]\n"},
    {"rings/0/records", "99", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest rings[0] says ring embed holds 99 records, expected embed@stats F64 [99, 8] and "
     "embed@meta I64 [99, 3], found F64 [11, 8] and I64 [11, 3]\n"},
    {"rings/5/records", "3", "diff {T} tests/fixtures/replay/default.trace",
     "moert diff: {T}: manifest rings[5] says ring l0.moe_ffn_out holds 3 records, expected l0.moe_ffn_out@stats F64 [3, 8] "
     "and l0.moe_ffn_out@meta I64 [3, 3], found F64 [11, 8] and I64 [11, 3]\n"},
    /* a thread count replay once handed to OpenMP unchecked (segfault) */
    {"threads", "100000", "replay {T}",
     "moert replay: {T}: manifest: \"threads\" is 100000, expected an integer in [1, 1024]\n"},
    {"threads", "0", "replay {T}", "moert replay: {T}: manifest: \"threads\" is 0, expected an integer in [1, 1024]\n"},
    {"rings/1/layer", "100000", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest rings[1]: \"layer\" is 100000, expected an integer in [0, 511]\n"},
    {"rings/0/layer", "3", "replay {T}", "moert replay: {T}: manifest rings[0]: \"layer\" is 3, expected an integer in [-1, -1]\n"},
    {"rings/0/width", "1099511627776", "diff {T} tests/fixtures/replay/default.trace",
     "moert diff: {T}: manifest rings[0]: \"width\" is 1099511627776, expected an integer in [1, 2147483647]\n"},
    {"rings/0/width", "\"128\"", "replay {T}",
     "moert replay: {T}: manifest rings[0]: \"width\" is \"128\", expected an integer in [1, 2147483647]\n"},
    {"rings/0/stage", "\"attention\"", "replay {T}",
     "moert replay: {T}: manifest rings[0]: \"stage\" is \"attention\", expected one of: embed, attn_norm, qkv, "
     "attn_out, ffn_norm, router_logits, moe_router, moe_ffn_out, output, final_norm, logits\n"},
    {"rings/2/label", "\"l1.qkv\"", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest rings[2]: \"label\" is \"l1.qkv\", expected \"l0.qkv\" (stage qkv, layer 0)\n"},
    {"rings/0/written", "-", "replay {T}",
     "moert replay: {T}: manifest rings[0]: \"written\" is missing, expected an integer in [0, 9223372036854775807]\n"},
    {"rings/0/drops", "-1", "replay {T}",
     "moert replay: {T}: manifest rings[0]: \"drops\" is -1, expected an integer in [0, 9223372036854775807]\n"},
    {"rings/3", "5", "replay {T}", "moert replay: {T}: manifest rings[3] is an integer, expected an object\n"},
    {"rings/3", "{\"drops\":0,\"label\":\"l0.qkv\",\"layer\":0,\"records\":11,\"stage\":\"qkv\",\"width\":384,\"written\":11}",
     "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest rings[3]: ring \"l0.qkv\" is listed twice, expected each ring once\n"},
    {"rings", "{}", "diff {T} tests/fixtures/replay/default.trace",
     "moert diff: {T}: manifest: \"rings\" is an object, expected an array of at most 5632 rings\n"},
    {"", "{\"format\": \"moert-trace\"", "replay {T}",
     "moert replay: {T}: manifest is not valid JSON: '}' expected near end of file (manifest line 1, column 24)\n"},
    {"", "[1, 2]", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest is an array, expected a JSON object\n"},
    /* the recorded run (replay's checks, before any weights are made) */
    {"prompt_ids/0", "4294967296", "replay {T}",
     "moert replay: {T}: manifest: \"prompt_ids[0]\" is 4294967296, expected a token id in [0, 151936)\n"},
    {"prompt_ids/2", "-1", "replay {T}",
     "moert replay: {T}: manifest: \"prompt_ids[2]\" is -1, expected a token id in [0, 151936)\n"},
    {"prompt_ids", "[]", "replay {T}",
     "moert replay: {T}: manifest: \"prompt_ids\" is an array, expected a non-empty array of token ids\n"},
    {"generated_ids/5", "151936", "replay {T}",
     "moert replay: {T}: manifest: \"generated_ids[5]\" is 151936, expected a token id in [0, 151936)\n"},
    {"generated_ids", "\"x\"", "replay {T}",
     "moert replay: {T}: manifest: \"generated_ids\" is \"x\", expected an array of token ids\n"},
    {"prompt_ids", "[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,"
                   "1,1,1,1,1,1,1,1,1,1,1,1]", "replay {T}",
     "moert replay: {T}: manifest: 65 prompt and generated tokens exceed its max_seq_len 64, expected at most 64\n"},
    {"sampling/top_k", "200000", "replay {T}",
     "moert replay: {T}: manifest sampling: \"top_k\" is 200000, expected an integer in [0, 151936]\n"},
    {"sampling/temperature", "-0.5", "replay {T}",
     "moert replay: {T}: manifest sampling: \"temperature\" is -0.5, expected a number in [0, 1e+06]\n"},
    {"sampling/top_p", "0", "replay {T}", "moert replay: {T}: manifest sampling: \"top_p\" is 0, expected a number in (0, 1]\n"},
    {"sampling", "-", "replay {T}", "moert replay: {T}: manifest: \"sampling\" is missing, expected an object\n"},
    {"trace/capacity", "0", "replay {T}",
     "moert replay: {T}: manifest trace: \"capacity\" is 0, expected an integer in [1, 2147483647]\n"},
    {"trace/stages/1", "\"attention\"", "replay {T}",
     "moert replay: {T}: manifest trace: \"stages[1]\" is \"attention\", expected a stage name\n"},
    {"trace/stages/1", "\"embed\"", "replay {T}",
     "moert replay: {T}: manifest trace: \"stages[1]\" is \"embed\", expected a stage not listed before\n"},
    {"trace/layers", "[1, 100000]", "replay {T}",
     "moert replay: {T}: manifest trace: \"layers[1]\" is 100000, expected a layer index in [0, 4) not listed before\n"},
    {"trace/mode", "\"full\"", "replay {T}",
     "moert replay: {T}: manifest trace: \"mode\" is \"full\", expected one of: stats, tensor\n"},
    /* an unknown mode once read as stats: every reader refuses it */
    {"trace/mode", "\"Tensor\"", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest trace: \"mode\" is \"Tensor\", expected one of: stats, tensor\n"},
    {"trace/mode", "-", "diff {T} {T}",
     "moert diff: {T}: manifest trace: \"mode\" is missing, expected one of: stats, tensor\n"},
    {"backend", "\"tpu\"", "replay {T}", "moert replay: {T}: manifest: \"backend\" is \"tpu\", expected one of: cpu, hip\n"},
    /* numerics: checked by every reader (diff names each side's from the checked value) */
    {"numerics", "\"int8\"", "replay {T}",
     "moert replay: {T}: manifest: \"numerics\" is \"int8\", expected one of: exact, act-q8\n"},
    {"numerics", "7", "diff {T} {T}",
     "moert diff: {T}: manifest: \"numerics\" is 7, expected one of: exact, act-q8\n"},
    {"batch_invariant", "1", "replay {T}",
     "moert replay: {T}: manifest: \"batch_invariant\" is 1, expected true or false\n"},
    {"weights/source", "\"s3\"", "replay {T}",
     "moert replay: {T}: manifest weights: \"source\" is \"s3\", expected one of: synth, path\n"},
    {"weights/dtype", "\"int4\"", "replay {T}",
     "moert replay: {T}: manifest weights: \"dtype\" is \"int4\", expected one of: f32, bf16, f16\n"},
    {"max_seq_len", "0", "replay {T}",
     "moert replay: {T}: manifest: \"max_seq_len\" is 0, expected an integer in [1, 16777216]\n"},
    {"prefill_chunk", "100", "replay {T}",
     "moert replay: {T}: manifest: \"prefill_chunk\" is 100, expected an integer in [1, 64]\n"},
    {"topology/mlp_only_layers/0", "4294967296", "replay {T}",
     "moert replay: {T}: manifest topology: mlp_only_layers[0] is 4294967296, expected a layer index in [0, 512)\n"},
    {"topology/hidden_size", "\"big\"", "validate contracts/qwen3moe-trace-v1.yaml {T}",
     "moert validate: {T}: manifest topology: \"hidden_size\" is a string, expected an integer\n"},
};

static void test_bad_manifest_catalogue(void)
{
    size_t n = sizeof bad_manifests / sizeof bad_manifests[0];
    const char *t = tmp("edited.trace");
    for (size_t i = 0; i < n; i++) {
        CU_ASSERT_FATAL(edited_trace(t, bad_manifests[i].path, bad_manifests[i].value));
        char cmd[1024], want[2048];
        size_t c = 0, w = 0;
        for (const char *p = bad_manifests[i].cmd; *p && c < sizeof cmd - 600; p++)
            c += (size_t)(!strncmp(p, "{T}", 3) ? (p += 2, snprintf(cmd + c, sizeof cmd - c, "%s", t))
                                                : snprintf(cmd + c, sizeof cmd - c, "%c", *p));
        for (const char *p = bad_manifests[i].stderr_text; *p && w < sizeof want - 600; p++)
            w += (size_t)(!strncmp(p, "{T}", 3) ? (p += 2, snprintf(want + w, sizeof want - w, "%s", t))
                                                : snprintf(want + w, sizeof want - w, "%c", *p));
        int rc = sh("./moert %s", cmd);
        if (rc != 2 || strcmp(errb, want) != 0)
            fprintf(stderr, "\n    case %zu (%s = %s): exit %d\n    want: %s    got:  %s", i, bad_manifests[i].path,
                    bad_manifests[i].value, rc, want, errb);
        CU_ASSERT_EQUAL(rc, 2);
        CU_ASSERT_STRING_EQUAL(errb, want);
        CU_ASSERT_STRING_EQUAL(out, "");
        /* The same checks in process, where the sanitizer suite watches them. */
        trace_file tf;
        moert_err e = {0};
        int st = trace_file_open(t, &tf, &e);
        if (!st && !strncmp(bad_manifests[i].cmd, "replay", 6)) {
            static cfg_config cfg;
            int32_t *prompt, *gen;
            int64_t np, ng;
            st = trace_manifest_run(tf.manifest, t, &cfg, &prompt, &np, &gen, &ng, &e);
            free(prompt);
            free(gen);
        } else if (!st) {
            cfg_topology topo;
            if ((st = trace_manifest_topology(tf.manifest, &topo, &e)))
                err_prefix(&e, "%s", t);
        }
        trace_file_close(&tf);
        char line[2048];
        snprintf(line, sizeof line, "moert %.*s: %s\n", (int)strcspn(bad_manifests[i].cmd, " "), bad_manifests[i].cmd,
                 e.msg);
        CU_ASSERT_EQUAL(moert_exit_code(st), 2);
        CU_ASSERT_STRING_EQUAL(line, want);
    }
}


/* ---- the engines, planted cases --------------------------------------------------- */

/* rowcmp against hand-computed figures: a = (1, 2, NaN, 2), b = (1, 2, 3, Inf) */
static void test_rowcmp(void)
{
    const float a[] = {1, 2, NAN, 2}, b[] = {1, 2, 3, INFINITY}, c[] = {2, 2, 3, 4};
    trace_cmp x = {0};
    trace_cmp_add(&x, a, b, 4);
    CU_ASSERT_EQUAL(x.nan_a, 1);
    CU_ASSERT_EQUAL(x.inf_b, 1);
    CU_ASSERT_EQUAL(x.nonfinite, 2);
    CU_ASSERT_DOUBLE_EQUAL(trace_cmp_cos(&x), 1.0, 1e-15); /* over the finite pairs only */
    trace_cmp y = {0};
    trace_cmp_add(&y, c, b + 0, 2); /* (2, 2) vs (1, 2) */
    CU_ASSERT_DOUBLE_EQUAL(y.max_abs, 1.0, 0);
    CU_ASSERT_DOUBLE_EQUAL(trace_cmp_rel(&y), 1.0 / sqrt(5.0), 1e-15);
    CU_ASSERT_DOUBLE_EQUAL(trace_cmp_cos(&y), 6.0 / (sqrt(8.0) * sqrt(5.0)), 1e-15);
}

static void flip_hash(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (!strcmp(name, "l1.attn_out@meta"))
        ((int64_t *)data)[2 * TRACE_META_COLS + TRACE_META_HASH] ^= 1; /* record 2 */
}

static void scale_stage(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    if (!strcmp(name, "l2.ffn_norm"))
        for (size_t i = 0; i < *len / 4; i++)
            ((float *)data)[i] *= 1.001f;
}

static void edit_expert(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (!strcmp(name, "l3.moe_router.experts"))
        ((int32_t *)data)[5] ^= 1;
}

static void inf_in_qkv(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (!strcmp(name, "l0.qkv"))
        ((float *)data)[7] = INFINITY;
}

static void nan_inf_in_output(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (!strcmp(name, "l1.output")) {
        ((float *)data)[3] = NAN;
        ((float *)data)[4] = INFINITY;
    }
}

static void impossible_stats(const char *name, st_write_spec *spec, uint8_t *data, size_t *len)
{
    (void)spec;
    (void)len;
    if (!strcmp(name, "embed@stats"))
        ((double *)data)[1 * TRACE_N_STATS + TRACE_STAT_STD] = -1; /* record 1 */
}

/* replay checks the recording against itself first: every tampered row or hash is refused
 * as corrupt (exit 2), naming stage, layer and record; the engine says the same. */
static void test_replay_refuses_corrupt(void)
{
    const char *fx = "tests/fixtures/replay/default.trace";
    const char *t = default_trace("c.trace", 2, 64, "tensor"), *bad = tmp("corrupt.trace");
    CU_ASSERT_EQUAL(sh("./moert replay %s", t), 0);
    struct {
        const char *src;
        mutate_fn fn;
        const char *want;
    } cases[] = {
        {t, nan_in_output, "stage output (layer 0), record 0"},
        {t, inf_in_qkv, "stage qkv (layer 0), record 0"},
        {t, edit_expert, "stage moe_router (layer 3), record 1"},
        {t, scale_stage, "stage ffn_norm (layer 2), record 0"},
        {t, flip_hash, "stage attn_out (layer 1), record 2"},
        {fx, impossible_stats, "stage embed (layer -1), record 1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CU_ASSERT_EQUAL_FATAL(rewrite_trace(cases[i].src, bad, cases[i].fn), 0);
        CU_ASSERT_EQUAL(sh("./moert replay %s", bad), 2);
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, "corrupt trace"));
        if (!strstr(errb, cases[i].want))
            fprintf(stderr, "\n    case %zu: %s", i, errb);
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, cases[i].want));
        CU_ASSERT_PTR_NULL(strstr(out, "bit-exact"));
    }
    /* the engine alone */
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, flip_hash), 0);
    trace_file tf;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(trace_file_open(bad, &tf, &e), MOERT_OK);
    CU_ASSERT_EQUAL(trace_verify(&tf, bad, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "hashes to"));
    trace_file_close(&tf);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(t, &tf, &e), MOERT_OK);
    CU_ASSERT_EQUAL(trace_verify(&tf, t, &e), MOERT_OK);
    trace_file_close(&tf);
}

/* A changed weight byte, recorded in stats mode: replay names the stat and both values;
 * diff of the two stats traces names the first divergent record. */
static void test_stats_divergence(void)
{
    const char *dir = tmp("model-s");
    CU_ASSERT_EQUAL_FATAL(sh("./moert synth configs/qwen3moe.yaml --out %s --shard-mb 16", dir), 0);
    const char *a = tmp("s-a.trace"), *b = tmp("s-b.trace");
    /* -n 1: the prompt only (a later step would see another token: other inputs, not drift) */
    const char *run = "./moert run %s --tokens 9707,11,1879 -n 1 --trace %s --trace-positions all";
    CU_ASSERT_EQUAL_FATAL(sh(run, dir, a), 0);
    CU_ASSERT_FATAL(flip_o_proj_l2(dir));
    CU_ASSERT_EQUAL_FATAL(sh(run, dir, b), 0);
    /* different weights: refused unless --force */
    CU_ASSERT_EQUAL(sh("./moert diff %s %s", a, b), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "different weights"));
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --force", a, b), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "first divergence: l2.attn_out at step 0, position 0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "first divergent record 0 (step 0, position 0): l2 "));
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --force --json", a, b), 1);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    size_t i;
    json_t *x;
    int identical = 0;
    json_array_foreach(json_object_get(j, "stages"), i, x)
    {
        const char *name = json_string_value(json_object_get(x, "name"));
        bool before = !strncmp(name, "l0.", 3) || !strncmp(name, "l1.", 3) || !strcmp(name, "embed") ||
                      !strcmp(name, "l2.attn_norm") || !strcmp(name, "l2.qkv");
        if (strstr(name, "moe_router")) {
            /* stats traces keep the router's ids and weights: compared by value */
            CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(x, "compared")), "values");
            CU_ASSERT_EQUAL(json_real_value(json_object_get(x, "max_abs")) == 0.0, before);
            continue;
        }
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(x, "compared")), "stats");
        CU_ASSERT_EQUAL(json_is_true(json_object_get(x, "identical")), before);
        identical += before;
        if (!strcmp(name, "l2.attn_out")) {
            json_t *fr = json_object_get(x, "first_divergent_record");
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(fr, "step")), 0);
            CU_ASSERT_EQUAL(json_integer_value(json_object_get(fr, "position")), 0);
            CU_ASSERT(json_array_size(json_object_get(fr, "stats")) > 0);
        }
    }
    CU_ASSERT(identical >= 10);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(json_object_get(j, "first_divergence"), "stage")),
                           "l2.attn_out");
    json_decref(j);
    /* replay of the stats recording against the changed weights: which stat, both values */
    CU_ASSERT_EQUAL(sh("./moert replay %s --weights %s --force", a, dir), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "layer 2, stage attn_out"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "recorded"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "replayed"));
    CU_ASSERT_PTR_NULL(strstr(out, "difference 0 "));
}

/* diff: NaN and Inf in the text table and a mismatch; tolerance exits 0 / 1 / 2; other
 * prompts and other models refused. */
static void test_diff_gate(void)
{
    const char *t = default_trace("g.trace", 2, 64, "tensor"), *bad = tmp("g-bad.trace");
    CU_ASSERT_EQUAL(sh("./moert diff %s %s", t, t), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-identical"));
    /* NaN and Inf: in the text table, beyond any tolerance */
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, nan_inf_in_output), 0);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance 1", bad, t), 1);
    const char *line = strstr(out, "\nl1.output ");
    CU_ASSERT_PTR_NOT_NULL_FATAL(line);
    char row[256];
    snprintf(row, sizeof row, "%.*s", (int)strcspn(line + 1, "\n"), line + 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(row, " 1/0 ")); /* nan a/b */
    CU_ASSERT_PTR_NOT_NULL(strstr(row, "BEYOND"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "first divergence: l1.output at step 0, position 0"));
    /* a stage scaled by 1.001: relative error 1e-3 */
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, scale_stage), 0);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s", bad, t), 1);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance 1e-4", bad, t), 1);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance 2e-3", bad, t), 0);
    const char *jf = tmp("g-positions.json");
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance 2e-3 --json --positions > %s", bad, t, jf), 0);
    json_error_t je;
    json_t *j = json_load_file(jf, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(j, "stages"), i, x)
        if (!strcmp(json_string_value(json_object_get(x, "name")), "l2.ffn_norm")) {
            CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(x, "rel_err")), 1e-3, 2e-5);
            CU_ASSERT_EQUAL(json_array_size(json_object_get(x, "positions")), 8); /* 5 prompt + 3 decoded */
        }
    json_decref(j);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance -1", bad, t), 2);
    /* an edited expert id: a top-k flip, with the router-logit margin there */
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(t, bad, edit_expert), 0);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --tolerance 1", bad, t), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "top-k differs at step 0, position 1: 3 of the experts agree; router-logit margin"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "first divergence: l3.moe_router at step 0, position 1"));
    /* other prompts are refused, --force compares anyway */
    const char *p = tmp("g-other.trace");
    CU_ASSERT_EQUAL_FATAL(sh("./moert run configs/qwen3moe.yaml --tokens 9707,11,1879,0,577 -n 4 --trace %s "
                             "--trace-mode tensor --trace-positions all", p), 0);
    CU_ASSERT_EQUAL(sh("./moert diff %s %s", t, p), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "different prompts"));
    CU_ASSERT_EQUAL(sh("./moert diff %s %s --force", t, p), 1);
    /* another model's reference file: refused */
    CU_ASSERT_EQUAL(sh("./moert diff %s tests/fixtures/hf/gqa4-hd24/reference.safetensors", t), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "not a reference of"));
    /* the engine: a missing file is unusable input, no report */
    json_t *rep = (json_t *)1;
    moert_err e = {0};
    trace_diff_opts o = {.rtol = -1};
    CU_ASSERT_EQUAL(trace_diff(t, tmp("nope.trace"), &o, &rep, &e), MOERT_EIO);
    CU_ASSERT_PTR_NULL(rep);
    CU_ASSERT_EQUAL(trace_diff(t, t, &o, &rep, &e), MOERT_OK);
    CU_ASSERT(json_is_true(json_object_get(json_array_get(json_object_get(rep, "stages"), 0), "beyond_tolerance")) == 0);
    json_decref(rep);
}

/* validate: drops are a violation (--allow-drops accepts them) and `run` names the rings;
 * unproven rules are JUnit <skipped/>; swapped arguments are recognised. */
static void test_validate_drops_and_skipped(void)
{
    const char *cfgp = tmp("drops.yaml"), *t = tmp("drops.trace"), *junit = tmp("drops.xml");
    CU_ASSERT_EQUAL_FATAL(sh("sed -e 's/capacity: 4096 /capacity: 3    /' -e 's#\\.\\./#%s/#g' "
                             "configs/qwen3moe.yaml > %s", getcwd((char[1024]){0}, 1024), cfgp), 0);
    int rc = sh("./moert run %s --prompt Hello -n 8 --trace %s", cfgp, t);
    if (rc)
        fprintf(stderr, "\n    %s", errb);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "warning: 33 trace rings were full and dropped records: embed (5 of 8), l0.attn_norm (5 of 8)"));
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --junit %s", t, junit), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "FAIL embed: drops: the ring dropped 5 of 8 records"));
    CU_ASSERT_EQUAL(sh("xmllint --noout %s", junit), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --allow-drops --junit %s", t, junit), 0);
    /* a stats trace proves every rule of the default contract: no <skipped/>, the router's
     * id rules included */
    CU_ASSERT_EQUAL(sh("xmllint --xpath 'count(//testcase[@name=\"l1.moe_router\"])' %s", junit), 0);
    CU_ASSERT_EQUAL(atoi(out), 1);
    CU_ASSERT_EQUAL(sh("xmllint --xpath 'string(//testsuite/@skipped)' %s", junit), 0);
    CU_ASSERT_EQUAL(atoi(out), 0);
    CU_ASSERT_EQUAL(sh("./moert validate %s contracts/qwen3moe-trace-v1.yaml", t), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "wrong order"));
    /* a failure in JUnit names record, step and position */
    const char *v = default_trace("jv.trace", 2, 64, "tensor"), *bad = tmp("jv-bad.trace");
    CU_ASSERT_EQUAL_FATAL(rewrite_trace(v, bad, nan_in_output), 0);
    CU_ASSERT_EQUAL(sh("./moert validate contracts/qwen3moe-trace-v1.yaml %s --junit %s", bad, junit), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "FAIL l0.output record 0 (layer 0, step 0, position 0): finite"));
    CU_ASSERT_EQUAL(sh("xmllint --xpath 'string(//testcase[@name=\"l0.output\"]/failure/@message)' %s", junit), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "l0.output (record 0, step 0, position 0)"));
    /* the engine alone */
    json_t *rep = NULL;
    moert_err e = {0};
    trace_vopts o = {.allow_drops = false};
    CU_ASSERT_EQUAL(trace_validate("contracts/qwen3moe-trace-v1.yaml", t, &o, &rep, &e), MOERT_ECHECK);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(rep, "violation_count")), 33);
    json_decref(rep);
    o.allow_drops = true;
    CU_ASSERT_EQUAL(trace_validate("contracts/qwen3moe-trace-v1.yaml", t, &o, &rep, &e), MOERT_OK);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(rep, "skipped")), 0);
    /* a rule the engine could not prove (its skip entry, as validate writes it) is a JUnit
     * <skipped/> of its stage, counted in the suite */
    json_array_append_new(json_object_get(rep, "skipped"),
                          json_pack("{ss ss ss}", "stage", "l1.moe_router.experts", "rule", "distinct", "why",
                                    "needs the values: record in tensor mode"));
    char *xml = trace_junit_xml(rep);
    CU_ASSERT_PTR_NOT_NULL_FATAL(xml);
    CU_ASSERT_PTR_NOT_NULL(strstr(xml, "skipped=\"1\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(xml, "<skipped message=\"l1.moe_router.experts: distinct not checked"));
    free(xml);
    json_decref(rep);
}

void suite_trace(void)
{
    CU_pSuite s = CU_add_suite("trace", NULL, NULL);
    CU_add_test(s, "validate: pass, JUnit, planted shape and value faults", test_validate);
    CU_add_test(s, "validate: stats mode, unusable input", test_validate_stats_and_bad_input);
    CU_add_test(s, "traces identical for --threads 1/2 and any chunking", test_threads_identical);
    CU_add_test(s, "replay of the CI fixture is bit-exact", test_replay_fixture);
    CU_add_test(s, "replay names the layer of a changed weight byte", test_replay_changed_weight);
    CU_add_test(s, "diff against HF reference files", test_diff_reference);
    CU_add_test(s, "ring overflow: overwrite and stop", test_ring_overflow);
    CU_add_test(s, "records offered to the rings: counted as the headers count them, room, take-back",
                test_ring_room);
    CU_add_test(s, "contract mismatch refuses to start", test_contract_refuses_plan);
    CU_add_test(s, "bad manifest catalogue: exit 2, the field named", test_bad_manifest_catalogue);
    CU_add_test(s, "a million ids in a row, a million rows: no quadratic work", test_wide_and_long_inputs);
    CU_add_test(s, "rowcmp: hand-computed figures", test_rowcmp);
    CU_add_test(s, "replay refuses tampered rows and flipped hashes", test_replay_refuses_corrupt);
    CU_add_test(s, "stats traces of a changed weight byte: first divergent record", test_stats_divergence);
    CU_add_test(s, "diff as a gate: NaN/Inf, tolerance exits, refusals, top-k flips", test_diff_gate);
    CU_add_test(s, "validate: drops, JUnit (xmllint), swapped arguments", test_validate_drops_and_skipped);
}
