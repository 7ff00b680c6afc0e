/* gguf_model: GGUF files as models.  Topology and binding from llama.cpp's metadata and
 * names (its own files, when ../shared is present), the tokenizer inside a GGUF against
 * tokenizer.json, and for moert's own GGUFs of every type mix: a run on the quantized file
 * is bit-identical to a run on its exactly dequantized float32 weights (the kernels
 * dequantize in the canonical order), for any thread count, chunking and kernel family.
 * Bad models are refused with the GGUF's own tensor and key names. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../ops/ops.h"
#include "../runtime/ggufmap.h"
#include "../runtime/model.h"
#include "../runtime/session.h"
#include "../runtime/tok.h"
#include "../runtime/trace/trace_file.h"
#include "util.h"

#define PATH_MAX_TEST 4096
#define TOKENIZER_JSON "build/tokenizer/qwen3/tokenizer.json"

/* ---- llama.cpp's files ------------------------------------------------------------- */

static void test_topology_shared(void)
{
    const char *shared = test_shared_parts("gguf-tiny gguf-vocab");
    if (!shared) {
        TEST_SKIP("../shared/reference (gguf-tiny, gguf-vocab) is absent: llama.cpp GGUF metadata not checked");
        return;
    }
    const char *types[] = {"q8_0", "q4_k_m", "q5_k_m", "q6_k"};
    char path[600];
    cfg_config cfg;
    moert_err err = {0};
    for (size_t i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/gguf-tiny/model-%s.gguf", shared, types[i]);
        int st = cfg_load(path, &cfg, &err);
        if (st)
            fprintf(stderr, "\n    %s: %s\n", path, err.msg);
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        const cfg_topology *t = &cfg.topo;
        CU_ASSERT_EQUAL(t->vocab_size, 1024);
        CU_ASSERT_EQUAL(t->hidden_size, 256);
        CU_ASSERT_EQUAL(t->num_hidden_layers, 2);
        CU_ASSERT_EQUAL(t->num_attention_heads, 4);
        CU_ASSERT_EQUAL(t->head_dim, 64);
        CU_ASSERT_EQUAL(t->num_key_value_heads, 2);
        CU_ASSERT_EQUAL(t->num_experts, 8);
        CU_ASSERT_EQUAL(t->num_experts_per_tok, 2);
        CU_ASSERT_EQUAL(t->moe_intermediate_size, 256);
        CU_ASSERT(t->norm_topk_prob);
        CU_ASSERT(!t->tie_word_embeddings);
        CU_ASSERT_DOUBLE_EQUAL(t->rope_theta, 1e6, 1e-3);
        CU_ASSERT_DOUBLE_EQUAL(t->rms_norm_eps, 1e-6, 1e-12);
        CU_ASSERT_STRING_EQUAL(cfg.weights.path, path);
        CU_ASSERT(!cfg.weights.synth);
    }
    snprintf(path, sizeof path, "%s/gguf-vocab/model-q8_0.gguf", shared);
    CU_ASSERT_EQUAL_FATAL(cfg_load(path, &cfg, &err), MOERT_OK);
    CU_ASSERT_EQUAL(cfg.topo.vocab_size, 151936);
    CU_ASSERT_EQUAL(cfg.topo.hidden_size, 32);
    CU_ASSERT_EQUAL(cfg.topo.head_dim, 16);
    CU_ASSERT_EQUAL(cfg.topo.num_key_value_heads, 1);
    CU_ASSERT(cfg.topo.tie_word_embeddings);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, path);
    bool eos = false;
    for (int i = 0; i < cfg.n_eos; i++)
        eos |= cfg.eos_ids[i] == 151645;
    CU_ASSERT(eos);
}

static const model_tensor *layer_tensor(const model_weights *w, int64_t l, const char *which)
{
    const model_layer *L = &w->layers[l];
    return !strcmp(which, "k") ? &L->k : !strcmp(which, "o") ? &L->o : !strcmp(which, "q") ? &L->q
         : !strcmp(which, "down") ? &L->down[3] : &L->gate[5];
}

/* The type table of gguf-tiny's README, through the hub-named binding. */
static void test_binding_shared(void)
{
    const char *shared = test_shared_parts("gguf-tiny");
    if (!shared) {
        TEST_SKIP("../shared/reference (gguf-tiny) is absent: llama.cpp GGUF binding not checked");
        return;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/gguf-tiny/model-q4_k_m.gguf", shared);
    cfg_config cfg;
    moert_err err = {0};
    st_set *set = NULL;
    model_weights w;
    CU_ASSERT_EQUAL_FATAL(cfg_load(path, &cfg, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(ggufmap_open_weights(path, &set, &err), MOERT_OK);
    int st = model_bind(&cfg.topo, set, &w, &err);
    if (st)
        fprintf(stderr, "\n    %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    CU_ASSERT_EQUAL(w.embed.dtype, ST_Q4_K);
    CU_ASSERT_EQUAL(w.lm_head.dtype, ST_Q6_K);
    CU_ASSERT_EQUAL(w.final_norm.dtype, ST_F32);
    for (int64_t l = 0; l < 2; l++) {
        CU_ASSERT_EQUAL(layer_tensor(&w, l, "k")->dtype, ST_Q8_0);
        CU_ASSERT_EQUAL(layer_tensor(&w, l, "o")->dtype, ST_Q5_K);
        CU_ASSERT_EQUAL(layer_tensor(&w, l, "q")->dtype, ST_Q4_K);
        CU_ASSERT_EQUAL(layer_tensor(&w, l, "gate")->dtype, ST_Q4_K);
        CU_ASSERT_EQUAL(w.layers[l].router.dtype, ST_F32);
        CU_ASSERT_EQUAL(w.layers[l].gate[0].rows, 256);
        CU_ASSERT_EQUAL(w.layers[l].gate[0].cols, 256);
    }
    CU_ASSERT_EQUAL(layer_tensor(&w, 0, "down")->dtype, ST_Q4_K);
    CU_ASSERT_EQUAL(layer_tensor(&w, 1, "down")->dtype, ST_Q6_K);
    /* expert e is slice e of the merged tensor: consecutive experts are adjacent */
    CU_ASSERT_PTR_EQUAL((const uint8_t *)w.layers[0].up[0].data + w.layers[0].up[0].nbytes, w.layers[0].up[1].data);
    CU_ASSERT_EQUAL(w.layers[0].up[0].nbytes, 256 * ops_row_bytes(OPS_Q4_K, 256));
    model_unbind(&w);
    st_close(set);
}

/* Every fixture string encodes to the same ids with the GGUF's tokenizer and with
 * tokenizer.json, and the ids decode to the same bytes. */
static void test_tokenizer_shared(void)
{
    const char *shared = test_shared_parts("gguf-vocab");
    FILE *f = fopen(TOKENIZER_JSON, "r");
    if (!shared || !f) {
        if (f)
            fclose(f);
        TEST_SKIP(!shared ? "../shared/reference (gguf-vocab) is absent: the GGUF tokenizer is not compared"
                          : TOKENIZER_JSON " is absent (tools/deps.sh fetches it)");
        return;
    }
    fclose(f);
    char path[600];
    snprintf(path, sizeof path, "%s/gguf-vocab/model-q8_0.gguf", shared);
    tok_tokenizer *a = NULL, *b = NULL;
    moert_err err = {0};
    int st = tok_load(path, &a, &err);
    if (st)
        fprintf(stderr, "\n    %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(tok_load(TOKENIZER_JSON, &b, &err), MOERT_OK);
    CU_ASSERT_EQUAL(tok_vocab_size(a), tok_vocab_size(b));
    CU_ASSERT_EQUAL(tok_special_id(a, "<|im_end|>"), 151645);
    CU_ASSERT_EQUAL(tok_special_id(a, "<think>"), tok_special_id(b, "<think>"));
    const char *files[] = {"tests/fixtures/tokenizer-strings.json", "tests/fixtures/tokenizer-cases.json"};
    size_t compared = 0;
    for (int fi = 0; fi < 2; fi++) {
        json_error_t je;
        json_t *root = json_load_file(files[fi], JSON_ALLOW_NUL, &je);
        CU_ASSERT_PTR_NOT_NULL_FATAL(root);
        json_t *cases = json_object_get(root, "cases");
        size_t i;
        json_t *c;
        json_array_foreach(cases, i, c)
        {
            json_t *text = json_object_get(c, "text");
            if (!json_is_string(text))
                continue;
            size_t len = json_string_length(text), cap = 3 * len + 1, na = 0, nb = 0;
            int32_t *ia = malloc(cap * sizeof *ia), *ib = malloc(cap * sizeof *ib);
            int sa = tok_encode(a, json_string_value(text), len, ia, cap, &na, &err);
            int sb = tok_encode(b, json_string_value(text), len, ib, cap, &nb, &err);
            CU_ASSERT_EQUAL(sa, sb);
            bool same = sa == sb && na == nb && (!na || memcmp(ia, ib, na * sizeof *ia) == 0);
            if (!same)
                fprintf(stderr, "\n    %s: '%s' encodes differently (%zu vs %zu ids)\n", files[fi],
                        json_string_value(json_object_get(c, "name")), na, nb);
            CU_ASSERT(same);
            if (same && !sa && na) {
                size_t da = 0, db = 0;
                char *ba = malloc(8 * len + 64), *bb = malloc(8 * len + 64);
                CU_ASSERT_EQUAL(tok_decode(a, ia, na, ba, 8 * len + 64, &da, &err), MOERT_OK);
                CU_ASSERT_EQUAL(tok_decode(b, ib, nb, bb, 8 * len + 64, &db, &err), MOERT_OK);
                CU_ASSERT(da == db && memcmp(ba, bb, da) == 0);
                free(ba);
                free(bb);
            }
            compared++;
            free(ia);
            free(ib);
        }
        json_decref(root);
    }
    CU_ASSERT(compared >= 100);
    tok_free(a);
    tok_free(b);
}

/* ---- moert's own GGUFs ------------------------------------------------------------- */

/* The exactly dequantized float32 weights of a GGUF as a safetensors file. */
static int write_dequantized(const char *gguf, const char *out, moert_err *err)
{
    st_set *set = NULL;
    int st = ggufmap_open_weights(gguf, &set, err);
    if (st)
        return st;
    size_t n = st_count(set);
    st_write_spec *specs = calloc(n, sizeof *specs);
    st_writer *w = NULL;
    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(set, i);
        specs[i].name = t->name;
        specs[i].dtype = ST_F32;
        specs[i].ndim = t->ndim;
        memcpy(specs[i].shape, t->shape, sizeof t->shape);
    }
    st = st_writer_open(out, specs, n, NULL, NULL, 0, &w, err);
    for (size_t i = 0; i < n && !st; i++) {
        const st_tensor *t = st_at(set, i);
        int64_t rows = t->ndim > 1 ? t->shape[0] : 1, cols = t->ndim > 1 ? t->shape[1] : t->shape[0];
        size_t rb = (size_t)st_dtype_row_bytes(t->dtype, (uint64_t)cols);
        float *row = malloc((size_t)cols * sizeof *row);
        for (int64_t r = 0; r < rows && !st; r++) {
            ops_to_f32(row, (const uint8_t *)t->data + (size_t)r * rb, (ops_dtype)st_dtype_ops(t->dtype), cols);
            st = st_writer_write(w, row, (size_t)cols * sizeof *row, err);
        }
        free(row);
    }
    if (w)
        st = st ? (st_writer_abort(w), st) : st_writer_finish(w, err);
    free(specs);
    st_close(set);
    return st;
}

/* Logits after the prompt and n_decode greedy decode steps. */
static bool run_logits_n(const cfg_config *base, int threads, int64_t chunk, bool simd, float *out, int n_decode)
{
    cfg_config cfg = *base;
    moert_err err = {0};
    static const int32_t prompt[] = {3, 141, 59, 265, 35, 89, 79, 323, 84, 62, 64, 338, 327};
    const int64_t n = sizeof prompt / sizeof *prompt;
    cfg.rt.threads = threads;
    cfg.rt.max_seq_len = 32;
    cfg.rt.prefill_chunk = chunk;
    ops_use_simd(simd);
    sess s;
    bool ok = sess_open(&s, &cfg, SESS_NO_TRACE, &err) == MOERT_OK;
    if (ok)
        ok = sess_prefill(&s, prompt, n, &err) == MOERT_OK;
    for (int i = 0; ok && i < n_decode; i++)
        ok = sess_decode(&s, sess_sample(&s), &err) == MOERT_OK;
    if (ok)
        memcpy(out, sess_logits(&s), (size_t)cfg.topo.vocab_size * sizeof *out);
    else
        fprintf(stderr, "\n    %s: %s\n", cfg.weights.path, err.msg);
    sess_close(&s);
    ops_use_simd(true);
    return ok;
}

static bool run_logits(const cfg_config *base, int threads, int64_t chunk, bool simd, float *out)
{
    return run_logits_n(base, threads, chunk, simd, out, 3);
}

static const char *const own_mixes[] = {"q8_0", "q4_0", "q5_0", "q4_k_m", "q5_k_m", "q6_k", "f16", "bf16"};
/* About twice the logits' relative error each mix measured against its float32 source. */
static const double own_bounds[] = {0.025, 0.45, 0.25, 0.32, 0.16, 0.1, 0.0015, 0.011};

static void test_quantized_equals_dequantized(void)
{
    cfg_topology topo;
    test_gguf_topology(&topo);
    float *a = malloc((size_t)topo.vocab_size * sizeof *a), *b = malloc((size_t)topo.vocab_size * sizeof *b);
    for (size_t m = 0; m < sizeof own_mixes / sizeof *own_mixes; m++) {
        const char *gguf = test_synth_gguf(own_mixes[m]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
        char deq[600];
        snprintf(deq, sizeof deq, "%s/dequantized-%s.safetensors", test_tmpdir(), own_mixes[m]);
        moert_err err = {0};
        int st = write_dequantized(gguf, deq, &err);
        if (st)
            fprintf(stderr, "\n    %s\n", err.msg);
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        cfg_config cq, cd;
        CU_ASSERT_EQUAL_FATAL(cfg_load(gguf, &cq, &err), MOERT_OK);
        cd = cq;
        snprintf(cd.weights.path, sizeof cd.weights.path, "%s", deq);
        CU_ASSERT_FATAL(run_logits(&cq, 2, 5, true, a));
        CU_ASSERT_FATAL(run_logits(&cd, 2, 5, true, b));
        bool same = memcmp(a, b, (size_t)topo.vocab_size * sizeof *a) == 0;
        if (!same)
            fprintf(stderr, "\n    %s: logits differ from its dequantized float32 weights\n", own_mixes[m]);
        CU_ASSERT(same);
        /* ... and the encoding is close to the seeded float32 weights it came from:
         * relative L2 error of the logits within twice what each mix measured */
        cfg_config cs = cq;
        cs.weights.synth = true;
        cs.weights.synth_seed = 77;
        cs.weights.synth_dtype = CFG_DTYPE_F32;
        /* the prompt's logits: decode steps could pick other tokens and say nothing */
        CU_ASSERT_FATAL(run_logits_n(&cq, 2, 5, true, a, 0));
        CU_ASSERT_FATAL(run_logits_n(&cs, 2, 5, true, b, 0));
        double num = 0, den = 0;
        for (int64_t i = 0; i < topo.vocab_size; i++) {
            num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
            den += (double)b[i] * b[i];
        }
        double rel = sqrt(num / den);
        if (!(rel > 0 && rel < own_bounds[m]))
            fprintf(stderr, "\n    %s: logits rel err %.3e vs the float32 source, expected (0, %g)\n", own_mixes[m],
                    rel, own_bounds[m]);
        CU_ASSERT(rel > 0 && rel < own_bounds[m]);
    }
    free(a);
    free(b);
}

/* The K mixes fall back per row length as llama-quantize does. */
static void test_mix_types(void)
{
    const char *gguf = test_synth_gguf("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    gguf_file *g = NULL;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_open(gguf, &g, &err), MOERT_OK);
    const struct {
        const char *name;
        st_dtype want;
    } cases[] = {
        {"token_embd.weight", ST_Q4_K},    {"output.weight", ST_Q6_K},         {"output_norm.weight", ST_F32},
        {"blk.0.attn_q.weight", ST_Q4_K},  {"blk.0.attn_v.weight", ST_Q6_K},   {"blk.1.ffn_gate_inp.weight", ST_F32},
        {"blk.0.ffn_gate_exps.weight", ST_Q4_K},
        /* rows of 384: of 2 layers the last is a "more bits" one (Q6_K -> Q8_0), the first not
         * (Q4_K -> Q5_0), as gguf-tiny's llama-quantize Q4_K_M shows (down: Q4_K, Q6_K) */
        {"blk.0.ffn_down_exps.weight", ST_Q5_0}, {"blk.1.ffn_down_exps.weight", ST_Q8_0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const gguf_tensor *t = gguf_tensor_find(g, cases[i].name);
        CU_ASSERT_PTR_NOT_NULL(t);
        if (t && t->dtype != cases[i].want)
            fprintf(stderr, "\n    %s is %s, expected %s\n", cases[i].name, st_dtype_name(t->dtype),
                    st_dtype_name(cases[i].want));
        CU_ASSERT(t && t->dtype == cases[i].want);
    }
    gguf_close(g);
}

/* A run of the same prompt in another execution shape: threads, prefill chunk, SIMD kernels
 * or the scalar level, simulated ranks. */
typedef struct run_shape {
    int threads;
    int64_t chunk;
    bool simd;
    int gpus;
} run_shape;

/* Each shape's logits equal base bit for bit (other: scratch of the vocabulary's width). */
static void logits_same_in_shapes(const char *what, const cfg_config *cfg, const float *base, float *other,
                                  const run_shape *v, size_t n)
{
    size_t V = (size_t)cfg->topo.vocab_size;
    for (size_t i = 0; i < n; i++) {
        cfg_config c = *cfg;
        c.rt.gpus = v[i].gpus;
        CU_ASSERT_FATAL(run_logits(&c, v[i].threads, v[i].chunk, v[i].simd, other));
        bool same = memcmp(base, other, V * sizeof *base) == 0;
        if (!same)
            fprintf(stderr, "\n    %s logits differ: threads %d chunk %lld simd %d gpus %d\n", what, v[i].threads,
                    (long long)v[i].chunk, v[i].simd, v[i].gpus);
        CU_ASSERT(same);
    }
}

static void test_q4km_threads_chunks(void)
{
    const char *gguf = test_synth_gguf("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load(gguf, &cfg, &err), MOERT_OK);
    size_t V = (size_t)cfg.topo.vocab_size;
    float *base = malloc(V * sizeof *base), *other = malloc(V * sizeof *other);
    CU_ASSERT_FATAL(run_logits(&cfg, 1, 13, true, base));
    static const run_shape v[] = {{2, 13, true, 1}, {2, 1, true, 1}, {3, 4, true, 1}, {1, 7, false, 1}, {2, 5, false, 1}};
    logits_same_in_shapes("q4_k_m", &cfg, base, other, v, sizeof v / sizeof *v);
    free(base);
    free(other);
}

/* numerics act-q8: bit-exact across threads, chunking, kernel family and simulated ranks
 * for every block type (the six mixes hold all of them), different from exact mode, and
 * close to it (relative L2 of the prompt's logits below 5%). */
static void test_act_q8_threads_chunks(void)
{
    static const char *const mixes[] = {"q4_k_m", "q8_0", "q4_0", "q5_0", "q5_k_m", "q6_k"};
    for (size_t m = 0; m < sizeof mixes / sizeof *mixes; m++) {
        const char *gguf = test_synth_gguf(mixes[m]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
        cfg_config cfg;
        moert_err err = {0};
        CU_ASSERT_EQUAL_FATAL(cfg_load(gguf, &cfg, &err), MOERT_OK);
        size_t V = (size_t)cfg.topo.vocab_size;
        float *base = malloc(V * sizeof *base), *other = malloc(V * sizeof *other);
        cfg_config q = cfg;
        q.rt.numerics = CFG_NUMERICS_ACT_Q8;
        CU_ASSERT_FATAL(run_logits(&q, 1, 13, true, base));
        static const run_shape v[] = {{2, 13, true, 1}, {2, 1, true, 1}, {3, 4, true, 1}, {1, 7, false, 1}, {2, 5, true, 2}};
        char what[64];
        snprintf(what, sizeof what, "%s act-q8", mixes[m]);
        logits_same_in_shapes(what, &q, base, other, v, sizeof v / sizeof *v);
        CU_ASSERT_FATAL(run_logits_n(&q, 2, 5, true, base, 0));
        CU_ASSERT_FATAL(run_logits_n(&cfg, 2, 5, true, other, 0));
        double num = 0, den = 0;
        for (size_t i = 0; i < V; i++) {
            num += ((double)base[i] - other[i]) * ((double)base[i] - other[i]);
            den += (double)other[i] * other[i];
        }
        double rel = sqrt(num / den);
        if (!(rel > 0 && rel < 0.05))
            fprintf(stderr, "\n    %s: act-q8 logits rel err %.3e vs exact, expected (0, 0.05)\n", mixes[m], rel);
        CU_ASSERT(rel > 0 && rel < 0.05);
        free(base);
        free(other);
    }
}

/* act-q8 through the CLI: the manifest names the mode; replay re-runs a recording in its
 * mode (bit-exact, at other thread counts too; an exact re-run would differ, as diff
 * shows); diff names both sides' numerics; the hip backend takes the mode (a CPU-only
 * binary says only that it lacks the backend). */
static void test_act_q8_cli(void)
{
    const char *gguf = test_synth_gguf("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    char out[16384], errb[4096], a[600], b[600];
    snprintf(a, sizeof a, "%s/exact.trace", test_tmpdir());
    snprintf(b, sizeof b, "%s/act-q8.trace", test_tmpdir());
    const char *run = "./moert run %s --tokens 5,6,7,8,9 -n 4 --ignore-eos --trace-mode tensor --trace-positions all "
                      "--trace %s %s";
    CU_ASSERT_EQUAL_FATAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, run, gguf, a, ""), 0);
    CU_ASSERT_EQUAL_FATAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, run, gguf, b, "--numerics act-q8"), 0);
    moert_err err = {0};
    trace_file ta, tb;
    CU_ASSERT_EQUAL_FATAL(trace_file_open(a, &ta, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(trace_file_open(b, &tb, &err), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ta.manifest, "numerics")), "exact");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(tb.manifest, "numerics")), "act-q8");
    trace_file_close(&ta);
    trace_file_close(&tb);
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert replay %s", b), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert replay %s --threads 1 --prefill-chunk 2", b), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "bit-exact"));
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert diff %s %s", a, b), 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "numerics: a exact, b act-q8"));
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 5 -n 1 --numerics act-q8 --backend hip",
                                  gguf), 2);
    CU_ASSERT_PTR_NULL(strstr(errb, "does not implement"));
    if (!backend_hip_vtable())
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, "built without the HIP backend"));
}

/* --check-weights dequantizes every block: a NaN scale is named by tensor and element. */
static void test_check_weights_gguf(void)
{
    const char *gguf = test_synth_gguf("q8_0");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    char bad[600], cmd[2000], out[4096], errb[4096];
    snprintf(bad, sizeof bad, "%s/nan-scale.gguf", test_tmpdir());
    snprintf(cmd, sizeof cmd, "cp %s %s", gguf, bad);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    gguf_file *g = NULL;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_open(bad, &g, &err), MOERT_OK);
    const gguf_tensor *t = gguf_tensor_find(g, "blk.1.attn_q.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL_FATAL(t->dtype, ST_Q8_0);
    uint64_t at = t->offset + 3 * 34; /* block 3's f16 scale */
    gguf_close(g);
    FILE *f = fopen(bad, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    const unsigned char nan16[2] = {0x00, 0x7e};
    CU_ASSERT_EQUAL(fseek(f, (long)at, SEEK_SET), 0);
    CU_ASSERT_EQUAL(fwrite(nan16, 1, 2, f), 2);
    fclose(f);
    int rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 5,6 -n 2 --check-weights", bad);
    CU_ASSERT_EQUAL(rc, 2);
    if (!strstr(errb, "'model.layers.1.self_attn.q_proj.weight' element [0, 96] (index 96 of 65536) is NaN"))
        fprintf(stderr, "\n    %s\n", errb);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "'model.layers.1.self_attn.q_proj.weight' element [0, 96] (index 96 of 65536) is NaN"));
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 5,6 -n 2 --check-weights", gguf), 0);
}

/* A YAML config takes a GGUF as its model: topology from the metadata, weights and
 * tokenizer from the file unless the YAML names others; its runtime keys still apply. */
static void test_yaml_gguf_model(void)
{
    const char *gguf = test_synth_gguf("q8_0");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    char abs[PATH_MAX_TEST], yaml[PATH_MAX_TEST + 200];
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(gguf, abs));
    snprintf(yaml, sizeof yaml, "model: {gguf: %s}\nruntime: {max_seq_len: 64, prefill_chunk: 7}\n", abs);
    cfg_config cfg, direct;
    moert_err err = {0};
    int st = cfg_load_string(yaml, "gguf.yaml", ".", &cfg, &err);
    if (st)
        fprintf(stderr, "\n    %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(cfg_load(gguf, &direct, &err), MOERT_OK);
    CU_ASSERT(memcmp(&cfg.topo, &direct.topo, sizeof cfg.topo) == 0);
    CU_ASSERT_STRING_EQUAL(cfg.weights.path, abs);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 64);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 7);
    /* gguf beside inline keys is refused by name */
    snprintf(yaml, sizeof yaml, "model: {gguf: %s, hidden_size: 64}\n", abs);
    CU_ASSERT_EQUAL(cfg_load_string(yaml, "gguf.yaml", ".", &cfg, &err), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "model has both gguf and the inline key 'hidden_size'"));
}

/* ---- bad models ---------------------------------------------------------------------- */

enum { BAD_NONE, BAD_ARCH, BAD_ROPE_SCALING, BAD_MISSING, BAD_SHAPE, BAD_EXTRA, BAD_NORM_QUANT, BAD_SHARED };

static int zero_fill(void *ctx, size_t tensor, uint64_t off, void *buf, size_t nbytes, moert_err *err)
{
    (void)ctx, (void)tensor, (void)off, (void)err;
    memset(buf, 0, nbytes);
    return MOERT_OK;
}

/* A one-layer qwen3moe GGUF with zero weights and one planted fault. */
static const char *write_bad(int fault, const char *name)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/%s.gguf", test_tmpdir(), name);
    gguf_writer *w = NULL;
    moert_err err = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &err), MOERT_OK);
    gguf_writer_add_str(w, "general.architecture", fault == BAD_ARCH ? "llama" : "qwen3moe", &err);
    gguf_writer_add_u32(w, "qwen3moe.block_count", 1, &err);
    gguf_writer_add_u32(w, "qwen3moe.embedding_length", 64, &err);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count", 2, &err);
    gguf_writer_add_u32(w, "qwen3moe.attention.head_count_kv", 1, &err);
    gguf_writer_add_u32(w, "qwen3moe.attention.key_length", 32, &err);
    gguf_writer_add_u32(w, "qwen3moe.expert_count", 2, &err);
    gguf_writer_add_u32(w, "qwen3moe.expert_used_count", 1, &err);
    gguf_writer_add_u32(w, "qwen3moe.expert_feed_forward_length", 32, &err);
    gguf_writer_add_f32(w, "qwen3moe.rope.freq_base", 10000.0f, &err);
    gguf_writer_add_f32(w, "qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f, &err);
    if (fault == BAD_ROPE_SCALING)
        gguf_writer_add_str(w, "qwen3moe.rope.scaling.type", "yarn", &err);
    if (fault == BAD_SHARED)
        gguf_writer_add_u32(w, "qwen3moe.expert_shared_count", 1, &err);
    const struct {
        const char *name;
        int ndim;
        int64_t ne[3];
    } ts[] = {
        {"token_embd.weight", 2, {64, 96}},          {"output_norm.weight", 1, {64}},
        {"blk.0.attn_norm.weight", 1, {64}},         {"blk.0.attn_q.weight", 2, {64, 64}},
        {"blk.0.attn_k.weight", 2, {64, 32}},        {"blk.0.attn_v.weight", 2, {64, 32}},
        {"blk.0.attn_output.weight", 2, {64, 64}},   {"blk.0.attn_q_norm.weight", 1, {32}},
        {"blk.0.attn_k_norm.weight", 1, {32}},       {"blk.0.ffn_norm.weight", 1, {64}},
        {"blk.0.ffn_gate_inp.weight", 2, {64, 2}},   {"blk.0.ffn_gate_exps.weight", 3, {64, 32, 2}},
        {"blk.0.ffn_up_exps.weight", 3, {64, 32, 2}}, {"blk.0.ffn_down_exps.weight", 3, {32, 64, 2}},
    };
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
        if (fault == BAD_MISSING && !strcmp(ts[i].name, "blk.0.attn_k.weight"))
            continue;
        int64_t ne[3] = {ts[i].ne[0], ts[i].ne[1], ts[i].ne[2]};
        if (fault == BAD_SHAPE && !strcmp(ts[i].name, "blk.0.ffn_up_exps.weight"))
            ne[1] = 48;
        st_dtype dt = ts[i].ndim == 1 ? ST_F32 : ST_Q8_0;
        if (fault == BAD_NORM_QUANT && !strcmp(ts[i].name, "blk.0.ffn_norm.weight"))
            dt = ST_Q8_0;
        CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, ts[i].name, dt, ts[i].ndim, ne, &err), MOERT_OK);
    }
    if (fault == BAD_EXTRA) {
        int64_t ne[1] = {32};
        gguf_writer_add_tensor(w, "rope_freqs.weight", ST_F32, 1, ne, &err);
    }
    int st = gguf_writer_write_file(w, path, zero_fill, NULL, &err);
    if (st)
        fprintf(stderr, "\n    write_bad(%s): %s\n", name, err.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    gguf_writer_free(w);
    return path;
}

static void expect_model_error(int fault, const char *name, const char *want)
{
    const char *path = write_bad(fault, name);
    cfg_config cfg;
    moert_err err = {0};
    int st = cfg_load(path, &cfg, &err);
    st_set *set = NULL;
    if (!st) {
        st = ggufmap_open_weights(path, &set, &err);
        st_close(set);
    }
    CU_ASSERT_NOT_EQUAL(st, MOERT_OK);
    CU_ASSERT_EQUAL(moert_exit_code(st), 2);
    if (!strstr(err.msg, want) || !strstr(err.msg, path))
        fprintf(stderr, "\n    %s: expected \"%s\" in: %s\n", name, want, err.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, path));
}

static void test_bad_models(void)
{
    /* the planted-fault generator must itself make a good file */
    const char *good = write_bad(BAD_NONE, "good");
    cfg_config cfg;
    moert_err err = {0};
    st_set *set = NULL;
    model_weights w;
    CU_ASSERT_EQUAL_FATAL(cfg_load(good, &cfg, &err), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(ggufmap_open_weights(good, &set, &err), MOERT_OK);
    CU_ASSERT_EQUAL(model_bind(&cfg.topo, set, &w, &err), MOERT_OK);
    CU_ASSERT(cfg.topo.tie_word_embeddings);
    CU_ASSERT_EQUAL(cfg.topo.vocab_size, 96);
    model_unbind(&w);
    st_close(set);

    expect_model_error(BAD_ARCH, "arch", "general.architecture is 'llama', expected 'qwen3moe' (Qwen3-MoE)");
    expect_model_error(BAD_ROPE_SCALING, "rope-scaling",
                       "metadata 'qwen3moe.rope.scaling.type' is 'yarn', which moert does not implement");
    expect_model_error(BAD_SHARED, "shared-experts",
                       "metadata 'qwen3moe.expert_shared_count' asks for shared experts, which moert does not "
                       "implement");
    expect_model_error(BAD_MISSING, "missing", "tensors do not match the metadata's qwen3moe topology: missing "
                                               "'blk.0.attn_k.weight' ne {64, 32}");
    expect_model_error(BAD_SHAPE, "shape", "'blk.0.ffn_up_exps.weight': ne {64, 48, 2}, expected {64, 32, 2}");
    expect_model_error(BAD_EXTRA, "extra", "unexpected 'rope_freqs.weight' ne {32}");
    expect_model_error(BAD_NORM_QUANT, "norm-quant",
                       "'blk.0.ffn_norm.weight': type Q8_0, expected F32, F16 or BF16 for a norm weight");
}

/* The CLI end to end: one file is a whole model; a bad one exits 2 naming it. */
static void test_cli(void)
{
    const char *gguf = test_synth_gguf("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(gguf);
    char out[8192], errb[4096];
    int rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 5,6,7 -n 4 --json", gguf);
    if (rc)
        fprintf(stderr, "\n    %s\n", errb);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "\"generated_ids\""));
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert plan %s", gguf);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Q4_K"));
    const char *bad = write_bad(BAD_MISSING, "cli-missing");
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 5 -n 1", bad);
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "missing 'blk.0.attn_k.weight'"));
    /* an output path that is not a regular file is refused, never replaced */
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb,
                       "./moert synth tests/fixtures/hf/gqa4-hd24 --format gguf --out %s", test_tmpdir());
    CU_ASSERT_EQUAL(rc, 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "exists and is not a regular file"));
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --prompt hi -n 1", gguf);
    CU_ASSERT_EQUAL(rc, 2); /* a vocabulary-less GGUF has no tokenizer: said, not crashed */
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "--prompt needs a tokenizer"));
}

/* gguf-vocab from its one file: the prompt text encodes to the reference ids and greedy
 * decoding gives the reference continuation. */
static void test_one_file_run_shared(void)
{
    const char *shared = test_shared_parts("gguf-vocab");
    if (!shared) {
        TEST_SKIP("../shared/reference (gguf-vocab) is absent: the one-file GGUF run is not checked");
        return;
    }
    char ref[600];
    snprintf(ref, sizeof ref, "%s/gguf-vocab/ref-q8_0/reference.json", shared);
    json_error_t je;
    json_t *r = json_load_file(ref, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(r);
    char out[16384], errb[4096];
    int rc = test_run_cmdf(out, sizeof out, errb, sizeof errb,
                           "./moert run %s/gguf-vocab/model-q8_0.gguf --prompt 'The capital of France is' -n 8 --json",
                           shared);
    if (rc)
        fprintf(stderr, "\n    %s\n", errb);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *o = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    CU_ASSERT(json_equal(json_object_get(o, "prompt_ids"), json_object_get(r, "prompt_ids")));
    json_t *g = json_object_get(o, "generated_ids"), *want = json_object_get(r, "greedy_ids");
    CU_ASSERT_EQUAL(json_array_size(g), 8);
    for (size_t i = 0; i < 8 && i < json_array_size(g); i++)
        CU_ASSERT(json_equal(json_array_get(g, i), json_array_get(want, i)));
    json_decref(o);
    json_decref(r);
}

/* Generation stops at config.json's eos_token_id (the stopping id is the last one given),
 * and --ignore-eos goes on. */
static void test_eos_safetensors(void)
{
    const char *src = "tests/fixtures/hf/long-prompt";
    char dir[600], path[700], abs_model[PATH_MAX_TEST];
    snprintf(dir, sizeof dir, "%s/eos-model", test_tmpdir());
    CU_ASSERT_EQUAL_FATAL(mkdir(dir, 0755), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(realpath(src, abs_model));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    strncat(abs_model, "/model.safetensors", sizeof abs_model - strlen(abs_model) - 1);
    CU_ASSERT_EQUAL_FATAL(symlink(abs_model, path), 0);
    char out[8192], errb[4096];
    /* the model's own greedy continuation of a prompt, without an eos id */
    snprintf(path, sizeof path, "%s/config.json", src);
    json_error_t je;
    json_t *conf = json_load_file(path, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(conf);
    int rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 1,2,3 -n 6 --json", src);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *o = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o);
    json_t *g = json_object_get(o, "generated_ids");
    CU_ASSERT_EQUAL_FATAL(json_array_size(g), 6);
    json_int_t third = json_integer_value(json_array_get(g, 2));
    json_object_set_new(conf, "eos_token_id", json_pack("[I]", third));
    snprintf(path, sizeof path, "%s/config.json", dir);
    CU_ASSERT_EQUAL_FATAL(json_dump_file(conf, path, 0), 0);
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 1,2,3 -n 6 --json", dir);
    CU_ASSERT_EQUAL(rc, 0);
    json_t *o2 = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o2);
    json_t *g2 = json_object_get(o2, "generated_ids");
    size_t stop = 0;
    while (stop < 6 && json_integer_value(json_array_get(g, stop)) != third)
        stop++;
    CU_ASSERT_EQUAL(json_array_size(g2), stop + 1);
    rc = test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert run %s --tokens 1,2,3 -n 6 --ignore-eos --json",
                       dir);
    CU_ASSERT_EQUAL(rc, 0);
    json_t *o3 = json_loads(out, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(o3);
    CU_ASSERT(json_equal(json_object_get(o3, "generated_ids"), g));
    /* a malformed eos_token_id is refused by the file's import and the directory alike */
    json_object_set_new(conf, "eos_token_id", json_real(15.5));
    CU_ASSERT_EQUAL_FATAL(json_dump_file(conf, path, 0), 0);
    cfg_topology topo;
    cfg_config cfg;
    moert_err err = {0};
    CU_ASSERT_EQUAL(cfg_import_hf(path, &topo, &err), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "eos_token_id is a real number, expected a token id or a list of ids"));
    CU_ASSERT_EQUAL(cfg_load(dir, &cfg, &err), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "eos_token_id is a real number"));
    json_decref(o);
    json_decref(o2);
    json_decref(o3);
    json_decref(conf);
}

void suite_gguf_model(void)
{
    CU_pSuite s = CU_add_suite("gguf_model", NULL, NULL);
    CU_add_test(s, "topology from llama.cpp's metadata (shared)", test_topology_shared);
    CU_add_test(s, "binding of llama.cpp's tensors (shared)", test_binding_shared);
    CU_add_test(s, "GGUF tokenizer equals tokenizer.json (shared)", test_tokenizer_shared);
    CU_add_test(s, "one-file run of gguf-vocab (shared)", test_one_file_run_shared);
    CU_add_test(s, "type mixes and their fallbacks", test_mix_types);
    CU_add_test(s, "quantized run equals its dequantized weights, every mix", test_quantized_equals_dequantized);
    CU_add_test(s, "Q4_K_M bit-exact across threads, chunking, SIMD", test_q4km_threads_chunks);
    CU_add_test(s, "act-q8: every type bit-exact across threads, chunking, SIMD, ranks; near exact",
                test_act_q8_threads_chunks);
    CU_add_test(s, "a YAML config with model: {gguf: FILE}", test_yaml_gguf_model);
    CU_add_test(s, "--check-weights names a NaN block scale", test_check_weights_gguf);
    CU_add_test(s, "bad models refused by their GGUF names", test_bad_models);
    CU_add_test(s, "CLI: run and plan a GGUF; a bad one exits 2", test_cli);
    CU_add_test(s, "act-q8 CLI: manifest, replay in its mode, diff, hip not refused", test_act_q8_cli);
    CU_add_test(s, "generation stops at config.json's eos_token_id", test_eos_safetensors);
}
