/* cfg: configs, model directories and HF config.json import.
 *
 * Expectations are independent of the loader: hyperparameters are the ones written in the
 * YAML/JSON files (and Qwen3-30B-A3B's published config), error messages are checked
 * against hand-checked file:line:col positions in tests/bad_configs/. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/config.h"
#include "util.h"

#define TOKENIZER "build/tokenizer/qwen3/tokenizer.json"

static cfg_config cfg; /* 10+ KiB: keep it off the stack */
static cfg_config cfg2;

static bool exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to)
{
    FILE *f = fopen(from, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    write_file(to, buf);
}

/* Field-by-field: two imports of the same model must agree on every hyperparameter. */
static bool topo_equal(const cfg_topology *a, const cfg_topology *b)
{
    if (a->vocab_size != b->vocab_size || a->hidden_size != b->hidden_size ||
        a->num_hidden_layers != b->num_hidden_layers || a->num_attention_heads != b->num_attention_heads ||
        a->num_key_value_heads != b->num_key_value_heads || a->head_dim != b->head_dim ||
        a->num_experts != b->num_experts || a->num_experts_per_tok != b->num_experts_per_tok ||
        a->moe_intermediate_size != b->moe_intermediate_size || a->intermediate_size != b->intermediate_size ||
        a->decoder_sparse_step != b->decoder_sparse_step || a->n_mlp_only_layers != b->n_mlp_only_layers ||
        a->norm_topk_prob != b->norm_topk_prob || a->tie_word_embeddings != b->tie_word_embeddings ||
        a->rope_theta != b->rope_theta || a->rms_norm_eps != b->rms_norm_eps ||
        a->max_position_embeddings != b->max_position_embeddings)
        return false;
    for (int i = 0; i < a->n_mlp_only_layers; i++)
        if (a->mlp_only_layers[i] != b->mlp_only_layers[i])
            return false;
    return true;
}

/* Qwen3-30B-A3B as published on the hub (config.json, transformers 4.51). */
static void assert_30b(const cfg_topology *t)
{
    CU_ASSERT_EQUAL(t->vocab_size, 151936);
    CU_ASSERT_EQUAL(t->hidden_size, 2048);
    CU_ASSERT_EQUAL(t->num_hidden_layers, 48);
    CU_ASSERT_EQUAL(t->num_attention_heads, 32);
    CU_ASSERT_EQUAL(t->num_key_value_heads, 4);
    CU_ASSERT_EQUAL(t->head_dim, 128);
    CU_ASSERT_EQUAL(t->num_experts, 128);
    CU_ASSERT_EQUAL(t->num_experts_per_tok, 8);
    CU_ASSERT_EQUAL(t->moe_intermediate_size, 768);
    CU_ASSERT_EQUAL(t->intermediate_size, 6144);
    CU_ASSERT_EQUAL(t->decoder_sparse_step, 1);
    CU_ASSERT_EQUAL(t->n_mlp_only_layers, 0);
    CU_ASSERT_TRUE(t->norm_topk_prob);
    CU_ASSERT_FALSE(t->tie_word_embeddings);
    CU_ASSERT_DOUBLE_EQUAL(t->rope_theta, 1e6, 0);
    CU_ASSERT_DOUBLE_EQUAL(t->rms_norm_eps, 1e-6, 0);
    CU_ASSERT_EQUAL(t->max_position_embeddings, 40960);
}

/* ---- bad configs ------------------------------------------------------------------- */

static const struct {
    const char *file;
    const char *expect; /* follows the path in the message: ":line:col: ..." */
} bad_configs[] = {
    {"01-syntax-unclosed-flow.yaml",
     ":13:1: YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping at 12:10), expected well-formed YAML"},
    {"02-syntax-bad-indent.yaml",
     ":3:15: YAML syntax error: mapping values are not allowed in this context, expected well-formed YAML"},
    {"03-unknown-top-key.yaml",
     ":13:1: unknown key 'runtme' in the config, expected one of: model, weights, tokenizer, runtime, sampling, trace, contract"},
    {"04-unknown-model-key.yaml",
     ":4:3: unknown key 'hiden_size' in model, expected one of: hf_config, gguf, vocab_size, hidden_size, num_hidden_layers, num_attention_hea"},
    {"05-string-for-int.yaml",
     ":3:16: model.hidden_size: got the string \"sixty-four\", expected an integer"},
    {"06-quoted-int.yaml",
     ":3:16: model.hidden_size: got the quoted string \"64\", expected an integer"},
    {"07-float-for-int.yaml",
     ":3:16: model.hidden_size: got 64.5, expected an integer"},
    {"08-bool-for-int.yaml",
     ":4:22: model.num_hidden_layers: got true, expected an integer"},
    {"09-negative-size.yaml",
     ":3:16: model.hidden_size = -64, expected a positive integer"},
    {"10-zero-vocab.yaml",
     ":2:15: model.vocab_size = 0, expected a positive integer"},
    {"11-missing-required.yaml",
     ":2:3: model is missing required key 'num_experts' (or num_local_experts), expected a positive integer"},
    {"12-heads-not-divisible.yaml",
     ":6:24: model.num_attention_heads = 4 is not divisible by num_key_value_heads = 3, expected num_key_value_heads to divide num_atten"},
    {"13-topk-gt-experts.yaml",
     ":8:24: model.num_experts_per_tok = 9 exceeds num_experts = 8, expected 1 <= num_experts_per_tok <= num_experts"},
    {"14-topk-zero.yaml",
     ":8:24: model.num_experts_per_tok = 0, expected a positive integer"},
    {"15-mlp-only-out-of-range.yaml",
     ":13:24: model.mlp_only_layers[1] = 2 is out of range, expected a layer index in [0, 2)"},
    {"16-mlp-only-duplicate.yaml",
     ":13:24: model.mlp_only_layers[1] = 1 duplicates mlp_only_layers[0], expected each layer once"},
    {"17-sparse-step-zero.yaml",
     ":12:24: model.decoder_sparse_step = 0, expected a positive integer"},
    {"18-intermediate-missing.yaml",
     ":2:3: model.intermediate_size is missing but layer 0 is in mlp_only_layers (dense MLP), expected a positive intermediate_size"},
    {"19-intermediate-zero.yaml",
     ":13:22: model.intermediate_size = 0 but layer 0 is dense under decoder_sparse_step 2 (dense MLP), expected a positive integer"},
    {"20-moe-intermediate-zero.yaml",
     ":9:26: model.moe_intermediate_size = 0 but layer 0 uses routed experts, expected a positive integer"},
    {"21-rope-theta-negative.yaml",
     ":10:15: model.rope_theta = -1, expected a positive finite number"},
    {"22-eps-one.yaml",
     ":11:17: model.rms_norm_eps = 1, expected a number in (0, 1)"},
    {"23-eps-zero.yaml",
     ":11:17: model.rms_norm_eps = 0, expected a number in (0, 1)"},
    {"24-weights-path-missing.yaml",
     ":12:10: weights: 'no/such/model.safetensors' (resolved to 'tests/bad_configs/no/such/model.safetensors'): No such file or director"},
    {"25-tokenizer-missing.yaml",
     ":13:12: tokenizer: 'missing/tokenizer.json' (resolved to 'tests/bad_configs/missing/tokenizer.json'): No such file or directory, e"},
    {"26-contract-missing.yaml",
     ":13:11: contract: 'nowhere.yaml' (resolved to 'tests/bad_configs/nowhere.yaml'): No such file or directory, expected an existing f"},
    {"27-hf-config-missing.yaml",
     ":1:20: model.hf_config: 'json/absent.json' (resolved to 'tests/bad_configs/json/absent.json'): No such file or directory, expected"},
    {"28-bad-backend.yaml",
     ":13:20: runtime.backend: got the string \"gpu\", expected one of: cpu, hip"},
    {"29-bad-trace-mode.yaml",
     ":13:15: trace.mode: got the string \"full\", expected one of: stats, tensor"},
    {"30-bad-trace-positions.yaml",
     ":13:20: trace.positions: got the string \"first\", expected one of: last, all"},
    {"31-bad-on-full.yaml",
     ":13:18: trace.on_full: got the string \"drop\", expected one of: overwrite, stop"},
    {"32-bad-synth-dtype.yaml",
     ":12:35: weights.synth.dtype: got the string \"int8\", expected one of: f32, bf16, f16"},
    {"33-bad-stage-name.yaml",
     ":14:19: trace.stages[1]: got the string \"attention\", expected one of: embed, attn_norm, qkv, attn_out, ffn_norm, router_logits, mo"},
    {"34-trace-layer-out-of-range.yaml",
     ":14:15: trace.layers[1] = 2 is out of range, expected a layer index in [0, 2)"},
    {"35-prefill-gt-max-seq.yaml",
     ":15:18: runtime.prefill_chunk = 256, expected an integer in [1, max_seq_len = 128]"},
    {"36-prefill-zero.yaml",
     ":13:26: runtime.prefill_chunk = 0, expected an integer in [1, max_seq_len = 4096]"},
    {"37-max-seq-zero.yaml",
     ":13:24: runtime.max_seq_len = 0, expected an integer in [1, 2147483647]"},
    {"38-threads-negative.yaml",
     ":13:20: runtime.threads = -1, expected an integer in [0, 4096] (0 = one per online CPU)"},
    {"39-top-p-zero.yaml",
     ":13:19: sampling.top_p = 0, expected a number in (0, 1]"},
    {"40-top-p-above-one.yaml",
     ":13:19: sampling.top_p = 1.5, expected a number in (0, 1]"},
    {"41-top-k-negative.yaml",
     ":13:19: sampling.top_k = -5, expected an integer in [0, vocab_size = 1000] (0 = off)"},
    {"42-temperature-negative.yaml",
     ":13:25: sampling.temperature = -0.5, expected a number >= 0 (0 = greedy)"},
    {"43-capacity-zero.yaml",
     ":13:19: trace.capacity = 0, expected an integer in [1, 2147483647]"},
    {"44-duplicate-key.yaml",
     ":11:3: duplicate key 'hidden_size' in model (first given at 3:3), expected each key once"},
    {"45-hf-config-and-inline.yaml",
     ":3:3: model has both hf_config and the inline key 'vocab_size', expected either hf_config alone or inline hyperparameters"},
    {"46-json-invalid.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/broken.json:3:19: invalid JSON: ':' expected near '1000', expected a HF config.json"},
    {"47-json-not-object.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/array.json:1:1: top level is an array, expected a JSON object (HF config.json)"},
    {"48-int64-overflow.yaml",
     ":3:16: model.hidden_size: 99999999999999999999 overflows a 64-bit integer, expected an integer in [-2^63, 2^63)"},
    {"49-dim-unreasonable.yaml",
     ":2:15: model.vocab_size = 4294967296 is unreasonably large, expected at most 2147483647"},
    {"50-experts-both-spellings.yaml",
     ":8:3: model gives both 'num_experts' and 'num_local_experts', expected only one of them"},
    {"51-rope-type-yarn.yaml",
     ":10:53: model.rope_parameters.rope_type: got the string \"yarn\", expected one of: default"},
    {"52-empty-document.yaml",
     ":1:1: the document is empty, expected a mapping with model and weights"},
    {"53-model-not-mapping.yaml",
     ":1:8: model is 5, expected a mapping"},
    {"54-weights-section-missing.yaml",
     ":1:1: the config is missing required section 'weights', expected a path or {synth: {seed: N, dtype: bf16}}"},
    {"55-two-documents.yaml",
     ":14:1: a second YAML document starts here, expected exactly one document"},
    {"56-too-many-layers.yaml",
     ":4:22: model.num_hidden_layers = 1000, expected at most 512"},
    {"57-mlp-only-not-list.yaml",
     ":12:20: model.mlp_only_layers: got 0, expected a list of layer indices"},
    {"58-trace-stage-duplicate.yaml",
     ":13:33: trace.stages[2]: stage 'logits' is listed twice, expected each stage once"},
    {"59-max-seq-exceeds-max-pos.yaml",
     ":14:24: runtime.max_seq_len = 4096 exceeds max_position_embeddings = 2048, expected at most 2048"},
    {"60-top-k-exceeds-vocab.yaml",
     ":13:19: sampling.top_k = 1001, expected an integer in [0, vocab_size = 1000] (0 = off)"},
    {"61-seed-negative.yaml",
     ":13:18: sampling.seed: got -1, expected a non-negative integer"},
    {"62-bool-yes.yaml",
     ":12:24: model.tie_word_embeddings: got the string \"yes\", expected true or false"},
    {"63-head-dim-underivable.yaml",
     ":2:3: model.head_dim is missing and hidden_size = 66 is not divisible by num_attention_heads = 4, expected an explicit head_dim"},
    {"64-enabled-not-bool.yaml",
     ":13:18: trace.enabled: got 1, expected true or false"},
    {"65-json-wrong-type.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/wrong-type.json: hidden_size is a string, expected an integer"},
    {"66-json-missing-required.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/missing-eps.json: the HF config is missing required key 'rms_norm_eps', expected a "},
    {"67-json-duplicate-key.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/duplicate.json:28:15: invalid JSON: duplicate object key near '\"hidden_size\"', expe"},
    {"68-json-rope-scaling.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/yarn.json: rope_scaling.rope_type is \"yarn\", expected \"default\" (scaled RoPE is not"},
    {"69-json-overflow.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/overflow.json:27:36: invalid JSON: too big integer near '99999999999999999999', exp"},
    {"70-trace-layers-duplicate.yaml",
     ":13:21: trace.layers[1] = 1 is listed twice, expected each layer once"},
    {"71-weights-empty-map.yaml",
     ":12:10: weights mapping is empty, expected {synth: {seed: N, dtype: bf16}} or a path"},
    {"72-nan-eps.yaml",
     ":11:17: model.rms_norm_eps: got the string \".nan\", expected a number"},
    {"73-leading-zero-int.yaml",
     ":3:16: model.hidden_size: got 064, expected an integer"},
    {"74-section-is-list.yaml",
     ":13:10: runtime is a list, expected a mapping"},
    {"75-bad-utf8.yaml",
     ":13:16: YAML reader error at byte offset 287: invalid leading UTF-8 octet, expected UTF-8 text"},
    {"76-model-arch-json.yaml",
     ":1:20: model.hf_config: tests/bad_configs/json/llama.json: model_type is \"llama\", expected \"qwen3_moe\" (moert runs Qwen3-MoE only)"},
    {"77-q-dim-unreasonable.yaml",
     ":7:13: model.num_attention_heads * head_dim = 4294967296 is unreasonably large, expected at most 2147483647"},
    {"78-nesting-depth-flow.yaml",
     ":4:77: lists and mappings nest more than 64 deep here, expected at most 64 levels"},
    {"79-nesting-depth-block.yaml",
     ":66:65: lists and mappings nest more than 64 deep here, expected at most 64 levels"},
    {"80-bad-numerics.yaml",
     ":13:21: runtime.numerics: got the string \"q4\", expected one of: exact, act-q8"},
    {"81-bad-batch-invariant.yaml",
     ":13:28: runtime.batch_invariant: got the string \"sometimes\", expected true or false"},
};

#define N_BAD (sizeof bad_configs / sizeof bad_configs[0])

static void test_bad_config_catalogue(void)
{
    CU_ASSERT_TRUE(N_BAD >= 25);
    for (size_t i = 0; i < N_BAD; i++) {
        char path[256], want[512];
        snprintf(path, sizeof path, "tests/bad_configs/%s", bad_configs[i].file);
        snprintf(want, sizeof want, "%s%s", path, bad_configs[i].expect);
        moert_err e = {0};
        int rc = cfg_load(path, &cfg, &e);
        CU_ASSERT_EQUAL(rc, MOERT_ECONFIG);
        CU_ASSERT_EQUAL(e.code, rc);
        if (!strstr(e.msg, want)) {
            printf("\n  %s\n    want: %s\n    got:  %s\n", bad_configs[i].file, want, e.msg);
            CU_FAIL("bad config message");
        }
        /* The same failure through the flag-taking entry point (nothing is relaxed but
         * a missing weights path). */
        if (!strstr(bad_configs[i].file, "weights-path-missing")) {
            moert_err e2 = {0};
            CU_ASSERT_EQUAL(cfg_load_ex(path, CFG_ALLOW_MISSING_WEIGHTS, &cfg, &e2), MOERT_ECONFIG);
            CU_ASSERT_STRING_EQUAL(e2.msg, e.msg);
        }
    }
}

/* 100,000 nested flow lists (200 KB) once ran for minutes inside libyaml: now the first
 * collection past 64 levels is named, at once. */
static void test_deep_nesting_refused(void)
{
    static char text[300000];
    size_t n = (size_t)snprintf(text, sizeof text, "model: ");
    for (int i = 0; i < 100000; i++)
        text[n++] = '[';
    for (int i = 0; i < 100000; i++)
        text[n++] = ']';
    text[n] = '\0';
    moert_err e = {0};
    CU_ASSERT_EQUAL(cfg_load_string(text, "deep.yaml", ".", &cfg, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "deep.yaml:1:71: lists and mappings nest more than 64 deep here, expected at most 64 levels");
    /* 64 levels are fine for the reader (the schema then says what it expected) */
    n = (size_t)snprintf(text, sizeof text, "model: ");
    for (int i = 0; i < 63; i++)
        text[n++] = '[';
    for (int i = 0; i < 63; i++)
        text[n++] = ']';
    text[n] = '\0';
    CU_ASSERT_EQUAL(cfg_load_string(text, "deep.yaml", ".", &cfg, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "deep.yaml:1:1: the config is missing required section 'weights', expected a path or {synth: {seed: N, dtype: bf16}}");
}

/* config.json is JSON read whole: its size is bounded before it is parsed. */
static void test_hf_config_size_bounded(void)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/big-config", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("{\"model_type\": \"qwen3_moe\", \"pad\": \"", f);
    for (int i = 0; i < (1 << 20); i++)
        fputc(' ', f);
    fputs("\"}", f);
    fclose(f);
    moert_err e = {0};
    CU_ASSERT_EQUAL(cfg_load(dir, &cfg, &e), MOERT_ECONFIG);
    char want[700];
    snprintf(want, sizeof want, "%s: 1048614 bytes, expected a HF config.json of at most 1048576 bytes", path);
    CU_ASSERT_STRING_EQUAL(e.msg, want);
}

/* Every file of the catalogue is in the table (an untested bad config is a silent hole). */
static void test_bad_config_files_listed(void)
{
    DIR *d = opendir("tests/bad_configs");
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 5, ".yaml") != 0)
            continue;
        n++;
        bool found = false;
        for (size_t i = 0; i < N_BAD; i++)
            found |= !strcmp(bad_configs[i].file, de->d_name);
        if (!found)
            printf("\n  %s has no expected message\n", de->d_name);
        CU_ASSERT_TRUE(found);
    }
    closedir(d);
    CU_ASSERT_EQUAL((size_t)n, N_BAD);
}

/* Cutting a good config anywhere never crashes and never half-succeeds silently: each
 * prefix either loads or says where it broke. */
static void test_truncations_never_crash(void)
{
    if (!exists(TOKENIZER)) {
        TEST_SKIP(TOKENIZER " absent (run make)");
        return;
    }
    FILE *f = fopen("configs/qwen3moe.yaml", "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char text[8192], cut[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    int ok = 0, bad = 0;
    size_t step = test_sanitized() ? 7 : 1;
    for (size_t len = 0; len <= n; len += step) {
        memcpy(cut, text, len);
        cut[len] = '\0';
        moert_err e = {0};
        int rc = cfg_load_string(cut, "cut.yaml", "configs", &cfg, &e);
        if (rc == MOERT_OK) {
            ok++;
        } else {
            bad++;
            CU_ASSERT_EQUAL(strncmp(e.msg, "cut.yaml:", 9), 0);
        }
    }
    CU_ASSERT_TRUE(ok > 0);
    CU_ASSERT_TRUE(bad > 0);
}

/* ---- shipped configs ---------------------------------------------------------------- */

static void test_default_model_config(void)
{
    if (!exists(TOKENIZER)) {
        TEST_SKIP(TOKENIZER " absent (run make)");
        return;
    }
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/qwen3moe.yaml", &cfg, &e), MOERT_OK);
    const cfg_topology *t = &cfg.topo;
    CU_ASSERT_EQUAL(t->vocab_size, 151936);
    CU_ASSERT_EQUAL(t->hidden_size, 128);
    CU_ASSERT_EQUAL(t->num_hidden_layers, 4);
    CU_ASSERT_EQUAL(t->num_attention_heads, 4);
    CU_ASSERT_EQUAL(t->num_key_value_heads, 2);
    CU_ASSERT_EQUAL(t->head_dim, 48);
    CU_ASSERT_EQUAL(t->num_experts, 16);
    CU_ASSERT_EQUAL(t->num_experts_per_tok, 4);
    CU_ASSERT_EQUAL(t->moe_intermediate_size, 64);
    CU_ASSERT_EQUAL(t->intermediate_size, 256);
    CU_ASSERT_EQUAL(t->decoder_sparse_step, 1);
    CU_ASSERT_EQUAL(t->n_mlp_only_layers, 1);
    CU_ASSERT_EQUAL(t->mlp_only_layers[0], 0);
    CU_ASSERT_TRUE(t->norm_topk_prob);
    CU_ASSERT_TRUE(t->tie_word_embeddings);
    CU_ASSERT_DOUBLE_EQUAL(t->rope_theta, 1e6, 0);
    CU_ASSERT_DOUBLE_EQUAL(t->rms_norm_eps, 1e-6, 0);
    CU_ASSERT_EQUAL(t->max_position_embeddings, 0);
    CU_ASSERT_FALSE(cfg_layer_is_sparse(t, 0));
    for (int l = 1; l < 4; l++)
        CU_ASSERT_TRUE(cfg_layer_is_sparse(t, l));
    CU_ASSERT_TRUE(cfg.weights.synth);
    CU_ASSERT_EQUAL(cfg.weights.synth_seed, 1);
    CU_ASSERT_EQUAL(cfg.weights.synth_dtype, CFG_DTYPE_BF16);
    CU_ASSERT_FALSE(cfg.weights.missing);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, "configs/../" TOKENIZER);
    CU_ASSERT_STRING_EQUAL(cfg.contract_path, "configs/../contracts/qwen3moe-trace-v1.yaml");
    CU_ASSERT_STRING_EQUAL(cfg.source_path, "configs/qwen3moe.yaml");
    CU_ASSERT_STRING_EQUAL(cfg.hf_config_path, "");
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 512);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 64);
    CU_ASSERT_EQUAL(cfg.rt.threads, 0);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_CPU);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.temperature, 0, 0);
    CU_ASSERT_EQUAL(cfg.sampling.top_k, 0);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.top_p, 1, 0);
    CU_ASSERT_EQUAL(cfg.sampling.seed, 0);
    CU_ASSERT_FALSE(cfg.trace.enabled);
    CU_ASSERT_STRING_EQUAL(cfg.trace.out_path, "");
    CU_ASSERT_EQUAL(cfg.trace.mode, CFG_TRACE_STATS);
    CU_ASSERT_EQUAL(cfg.trace.positions, CFG_TRACE_LAST);
    CU_ASSERT_EQUAL(cfg.trace.stages, 0x7ffu);
    CU_ASSERT_TRUE(cfg.trace.all_layers);
    CU_ASSERT_EQUAL(cfg.trace.capacity, 4096);
    CU_ASSERT_EQUAL(cfg.trace.on_full, CFG_TRACE_OVERWRITE);
}

static void test_30b_config_plans_without_weights(void)
{
    if (!exists(TOKENIZER)) {
        TEST_SKIP(TOKENIZER " absent (run make)");
        return;
    }
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load_ex("configs/qwen3-30b-a3b.yaml", CFG_ALLOW_MISSING_WEIGHTS, &cfg, &e), MOERT_OK);
    assert_30b(&cfg.topo);
    CU_ASSERT_FALSE(cfg.weights.synth);
    CU_ASSERT_STRING_EQUAL(cfg.weights.path, "configs/../build/models/qwen3-30b-a3b");
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 512);
    bool have = exists("build/models/qwen3-30b-a3b");
    CU_ASSERT_EQUAL(cfg.weights.missing, !have);
    if (!have) {
        /* Without the flag the missing snapshot is an error at the weights line. */
        CU_ASSERT_EQUAL(cfg_load("configs/qwen3-30b-a3b.yaml", &cfg, &e), MOERT_ECONFIG);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "configs/qwen3-30b-a3b.yaml:22:10: weights: '../build/models/qwen3-30b-a3b'"));
    }
}

static void test_bench_configs(void)
{
    if (!exists(TOKENIZER)) {
        TEST_SKIP(TOKENIZER " absent (run make)");
        return;
    }
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/bench-cpu.yaml", &cfg, &e), MOERT_OK);
    const cfg_topology *t = &cfg.topo;
    CU_ASSERT_EQUAL(t->vocab_size, 151936);
    CU_ASSERT_EQUAL(t->hidden_size, 1024);
    CU_ASSERT_EQUAL(t->num_hidden_layers, 8);
    CU_ASSERT_EQUAL(t->num_attention_heads, 16);
    CU_ASSERT_EQUAL(t->num_key_value_heads, 4);
    CU_ASSERT_EQUAL(t->head_dim, 128);
    CU_ASSERT_EQUAL(t->num_experts, 64);
    CU_ASSERT_EQUAL(t->num_experts_per_tok, 8);
    CU_ASSERT_EQUAL(t->moe_intermediate_size, 384);
    CU_ASSERT_EQUAL(t->intermediate_size, 3072);
    CU_ASSERT_TRUE(t->norm_topk_prob);
    CU_ASSERT_FALSE(t->tie_word_embeddings);
    CU_ASSERT_TRUE(cfg.weights.synth);
    CU_ASSERT_EQUAL(cfg.weights.synth_seed, 1234);
    CU_ASSERT_EQUAL(cfg.weights.synth_dtype, CFG_DTYPE_BF16);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 1024);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 512);
    CU_ASSERT_EQUAL(cfg.rt.threads, 2);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_CPU);

    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/bench-gpu.yaml", &cfg, &e), MOERT_OK);
    /* 30B-A3B's shape with 12 layers. */
    cfg_topology want;
    CU_ASSERT_EQUAL_FATAL(cfg_import_hf("tests/fixtures/qwen3-30b-a3b-hub/config.json", &want, &e), MOERT_OK);
    want.num_hidden_layers = 12;
    CU_ASSERT_TRUE(topo_equal(&cfg.topo, &want));
    CU_ASSERT_TRUE(cfg.weights.synth);
    CU_ASSERT_EQUAL(cfg.weights.synth_seed, 1234);
    CU_ASSERT_EQUAL(cfg.weights.synth_dtype, CFG_DTYPE_BF16);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_HIP);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 1024);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 512);

    /* the same with all 48 layers: Qwen3-30B-A3B's hub topology exactly */
    CU_ASSERT_EQUAL_FATAL(cfg_load("configs/bench-gpu-48.yaml", &cfg, &e), MOERT_OK);
    want.num_hidden_layers = 48;
    CU_ASSERT_TRUE(topo_equal(&cfg.topo, &want));
    CU_ASSERT_TRUE(cfg.weights.synth);
    CU_ASSERT_EQUAL(cfg.weights.synth_dtype, CFG_DTYPE_BF16);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_HIP);
}

/* tiny-bf16 / tiny-f32 as their config.json files say (transformers-5 spelling). */
static void assert_tiny(const cfg_topology *t, bool bf16)
{
    CU_ASSERT_EQUAL(t->vocab_size, bf16 ? 1536 : 1024);
    CU_ASSERT_EQUAL(t->hidden_size, bf16 ? 96 : 64);
    CU_ASSERT_EQUAL(t->num_hidden_layers, bf16 ? 3 : 2);
    CU_ASSERT_EQUAL(t->num_attention_heads, 4);
    CU_ASSERT_EQUAL(t->num_key_value_heads, bf16 ? 1 : 2);
    CU_ASSERT_EQUAL(t->head_dim, bf16 ? 32 : 16);
    CU_ASSERT_EQUAL(t->num_experts, bf16 ? 16 : 8);
    CU_ASSERT_EQUAL(t->num_experts_per_tok, bf16 ? 4 : 2);
    CU_ASSERT_EQUAL(t->moe_intermediate_size, bf16 ? 48 : 32);
    CU_ASSERT_EQUAL(t->intermediate_size, bf16 ? 192 : 128);
    CU_ASSERT_EQUAL(t->decoder_sparse_step, 1);
    CU_ASSERT_EQUAL(t->n_mlp_only_layers, 0);
    CU_ASSERT_TRUE(t->norm_topk_prob);
    CU_ASSERT_FALSE(t->tie_word_embeddings);
    CU_ASSERT_DOUBLE_EQUAL(t->rope_theta, 1e6, 0);
    CU_ASSERT_DOUBLE_EQUAL(t->rms_norm_eps, 1e-6, 0);
    CU_ASSERT_EQUAL(t->max_position_embeddings, 4096);
}

static void test_tiny_configs_and_model_dirs(void)
{
    const char *ref = test_shared_parts("tiny-f32 tiny-bf16");
    if (!ref) {
        TEST_SKIP("../shared/reference (tiny-f32, tiny-bf16) is absent");
        return;
    }
    for (int v = 0; v < 2; v++) {
        const char *name = v ? "tiny-bf16" : "tiny-f32";
        char dir[600], path[700];
        snprintf(dir, sizeof dir, "%s/%s", ref, name);
        moert_err e = {0};
        /* The model directory itself. */
        CU_ASSERT_EQUAL_FATAL(cfg_load(dir, &cfg, &e), MOERT_OK);
        assert_tiny(&cfg.topo, v);
        CU_ASSERT_STRING_EQUAL(cfg.weights.path, dir);
        CU_ASSERT_FALSE(cfg.weights.synth);
        snprintf(path, sizeof path, "%s/config.json", dir);
        CU_ASSERT_STRING_EQUAL(cfg.hf_config_path, path);
        CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, ""); /* the tiny dirs ship none */
        CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);      /* min(4096, max_position_embeddings) */
        CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 256);
        CU_ASSERT_STRING_EQUAL(cfg.contract_path, "");
        /* The shipped YAML that points at it (only valid where ../shared sits next to
         * the checkout, as configs/ assumes). */
        snprintf(path, sizeof path, "configs/%s.yaml", name);
        if (!exists("../shared/reference"))
            continue; /* skipped once, below */
        CU_ASSERT_EQUAL_FATAL(cfg_load(path, &cfg2, &e), MOERT_OK);
        CU_ASSERT_TRUE(topo_equal(&cfg.topo, &cfg2.topo));
        CU_ASSERT_EQUAL(cfg2.rt.max_seq_len, 256);
        CU_ASSERT_EQUAL(cfg2.rt.prefill_chunk, 64);
        snprintf(path, sizeof path, "configs/../../shared/reference/%s", name);
        CU_ASSERT_STRING_EQUAL(cfg2.weights.path, path);
    }
    if (!exists("../shared/reference"))
        TEST_SKIP("configs/tiny-*.yaml need ../shared next to the checkout");
}

/* ---- HF import --------------------------------------------------------------------- */

static void test_hub_and_transformers5_spellings_agree(void)
{
    cfg_topology hub, t5;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_import_hf("tests/fixtures/qwen3-30b-a3b-hub/config.json", &hub, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(cfg_import_hf("tests/fixtures/qwen3-30b-a3b-t5/config.json", &t5, &e), MOERT_OK);
    assert_30b(&hub);
    CU_ASSERT_TRUE(topo_equal(&hub, &t5));
    /* The inline YAML spelling of the same model gives the same topology too. */
    static const char yaml[] =
        "model:\n  vocab_size: 151936\n  hidden_size: 2048\n  num_hidden_layers: 48\n"
        "  num_attention_heads: 32\n  num_key_value_heads: 4\n  head_dim: 128\n"
        "  num_local_experts: 128\n  num_experts_per_tok: 8\n  moe_intermediate_size: 768\n"
        "  intermediate_size: 6144\n  rope_parameters: {rope_theta: 1000000, rope_type: default}\n"
        "  rms_norm_eps: 0.000001\n  max_position_embeddings: 40960\n"
        "weights: {synth: {}}\n";
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(yaml, "inline.yaml", NULL, &cfg, &e), MOERT_OK);
    CU_ASSERT_TRUE(topo_equal(&cfg.topo, &hub));

    const char *ref = test_shared_parts("tiny-bf16");
    if (!ref) {
        TEST_SKIP("../shared/reference (tiny-bf16) is absent: tiny-bf16 hub/transformers-5 comparison");
        return;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/tiny-bf16/config.json", ref);
    CU_ASSERT_EQUAL_FATAL(cfg_import_hf(path, &t5, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(cfg_import_hf("tests/fixtures/tiny-bf16-hub/config.json", &hub, &e), MOERT_OK);
    CU_ASSERT_TRUE(topo_equal(&hub, &t5));
    assert_tiny(&hub, true);
}

static void test_hf_defaults_and_model_dir(void)
{
    char dir[400], path[500];
    moert_err e = {0};
    /* HF's class defaults apply to keys a config.json leaves out: norm_topk_prob false
     * (moert's YAML default is true), head_dim = hidden / heads, step 1. */
    snprintf(dir, sizeof dir, "%s/hfmin", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, "{\"vocab_size\": 100, \"hidden_size\": 64, \"num_hidden_layers\": 2,\n"
                     " \"num_attention_heads\": 8, \"num_key_value_heads\": 8, \"num_experts\": 4,\n"
                     " \"num_experts_per_tok\": 1, \"moe_intermediate_size\": 16, \"rope_theta\": 10000,\n"
                     " \"rms_norm_eps\": 1e-5, \"head_dim\": null, \"some_future_key\": {\"x\": [1]}}\n");
    CU_ASSERT_EQUAL_FATAL(cfg_load(dir, &cfg, &e), MOERT_OK);
    CU_ASSERT_FALSE(cfg.topo.norm_topk_prob);
    CU_ASSERT_FALSE(cfg.topo.tie_word_embeddings);
    CU_ASSERT_EQUAL(cfg.topo.head_dim, 8);
    CU_ASSERT_EQUAL(cfg.topo.decoder_sparse_step, 1);
    CU_ASSERT_EQUAL(cfg.topo.intermediate_size, 0); /* every layer is sparse: not needed */
    CU_ASSERT_EQUAL(cfg.topo.max_position_embeddings, 0);
    CU_ASSERT_DOUBLE_EQUAL(cfg.topo.rope_theta, 10000, 0);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, "");

    /* A snapshot-like directory with a tokenizer, given with a trailing slash. */
    snprintf(dir, sizeof dir, "%s/snap", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file("tests/fixtures/qwen3-30b-a3b-hub/config.json", path);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_file(path, "{}");
    char slash[420];
    snprintf(slash, sizeof slash, "%s/", dir);
    CU_ASSERT_EQUAL_FATAL(cfg_load(slash, &cfg, &e), MOERT_OK);
    assert_30b(&cfg.topo);
    CU_ASSERT_STRING_EQUAL(cfg.weights.path, dir);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, path);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 256);
    CU_ASSERT_FALSE(cfg.weights.synth);

    /* A directory without config.json names the missing file. */
    snprintf(dir, sizeof dir, "%s/empty", test_tmpdir());
    mkdir(dir, 0755);
    CU_ASSERT_EQUAL(cfg_load(dir, &cfg, &e), MOERT_ECONFIG);
    snprintf(path, sizeof path, "%s/config.json: not found", dir);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, path));

    /* A directory whose config.json is broken: file:line:col from jansson. */
    snprintf(dir, sizeof dir, "%s/broken", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file("tests/bad_configs/json/broken.json", path);
    CU_ASSERT_EQUAL(cfg_load(dir, &cfg, &e), MOERT_ECONFIG);
    snprintf(path, sizeof path, "%s/config.json:3:19: invalid JSON", dir);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, path));

    /* Not a config at all. */
    CU_ASSERT_EQUAL(cfg_load("tests/no-such-config.yaml", &cfg, &e), MOERT_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "tests/no-such-config.yaml: No such file or directory"));
    CU_ASSERT_EQUAL(cfg_import_hf("tests/bad_configs/json/wrong-type.json", &cfg.topo, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "tests/bad_configs/json/wrong-type.json: hidden_size is a string, expected an integer");
}

/* ---- defaults, paths, flags ----------------------------------------------------------- */

#define MIN_MODEL                                                                              \
    "model:\n  vocab_size: 1000\n  hidden_size: 64\n  num_hidden_layers: 4\n"                 \
    "  num_attention_heads: 4\n  num_key_value_heads: 2\n  num_experts: 8\n"                   \
    "  num_experts_per_tok: 2\n  moe_intermediate_size: 32\n  rope_theta: 10000.0\n"           \
    "  rms_norm_eps: 1.0e-6\n"

static void test_defaults(void)
{
    cfg_defaults(&cfg);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 256);
    CU_ASSERT_EQUAL(cfg.rt.threads, 0);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_CPU);
    CU_ASSERT_FALSE(cfg.rt.batch_invariant);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.temperature, 0, 0);
    CU_ASSERT_EQUAL(cfg.sampling.top_k, 0);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.top_p, 1, 0);
    CU_ASSERT_EQUAL(cfg.sampling.seed, 0);
    CU_ASSERT_FALSE(cfg.trace.enabled);
    CU_ASSERT_EQUAL(cfg.trace.mode, CFG_TRACE_STATS);
    CU_ASSERT_EQUAL(cfg.trace.positions, CFG_TRACE_LAST);
    CU_ASSERT_EQUAL(cfg.trace.stages, (1u << CFG_STAGE_COUNT) - 1);
    CU_ASSERT_TRUE(cfg.trace.all_layers);
    CU_ASSERT_EQUAL(cfg.trace.capacity, 4096);
    CU_ASSERT_EQUAL(cfg.trace.on_full, CFG_TRACE_OVERWRITE);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, "");
    CU_ASSERT_STRING_EQUAL(cfg.contract_path, "");

    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(MIN_MODEL "weights: {synth: {}}\n", "min.yaml", NULL, &cfg2, &e),
                          MOERT_OK);
    /* Everything but the model and weights is exactly cfg_defaults (both start from a
     * zeroed struct, so padding compares equal too). */
    CU_ASSERT_EQUAL(memcmp(&cfg.rt, &cfg2.rt, sizeof cfg.rt), 0);
    CU_ASSERT_EQUAL(memcmp(&cfg.sampling, &cfg2.sampling, sizeof cfg.sampling), 0);
    CU_ASSERT_EQUAL(memcmp(&cfg.trace, &cfg2.trace, sizeof cfg.trace), 0);
    CU_ASSERT_STRING_EQUAL(cfg2.tokenizer_path, "");
    CU_ASSERT_STRING_EQUAL(cfg2.contract_path, "");
    CU_ASSERT_STRING_EQUAL(cfg2.hf_config_path, "");
    CU_ASSERT_TRUE(cfg2.weights.synth);
    CU_ASSERT_EQUAL(cfg2.weights.synth_seed, 0);
    CU_ASSERT_EQUAL(cfg2.weights.synth_dtype, CFG_DTYPE_BF16);
    CU_ASSERT_STRING_EQUAL(cfg2.source_path, "min.yaml");
    const cfg_topology *t = &cfg2.topo;
    CU_ASSERT_EQUAL(t->head_dim, 16); /* hidden / heads */
    CU_ASSERT_EQUAL(t->decoder_sparse_step, 1);
    CU_ASSERT_EQUAL(t->n_mlp_only_layers, 0);
    CU_ASSERT_EQUAL(t->intermediate_size, 0);
    CU_ASSERT_TRUE(t->norm_topk_prob);
    CU_ASSERT_FALSE(t->tie_word_embeddings);
    CU_ASSERT_EQUAL(t->max_position_embeddings, 0);

    CU_ASSERT_EQUAL_FATAL(cfg_load_string(MIN_MODEL "weights: {synth: {}}\nruntime: {batch_invariant: true}\n",
                                          "bi.yaml", NULL, &cfg2, &e), MOERT_OK);
    CU_ASSERT_TRUE(cfg2.rt.batch_invariant);

    /* max_seq_len defaults to min(4096, max_position_embeddings); prefill_chunk to
     * min(256, max_seq_len). */
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(MIN_MODEL "  max_position_embeddings: 1000\nweights: {synth: {}}\n",
                                          "m.yaml", NULL, &cfg2, &e), MOERT_OK);
    CU_ASSERT_EQUAL(cfg2.rt.max_seq_len, 1000);
    CU_ASSERT_EQUAL(cfg2.rt.prefill_chunk, 256);
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(MIN_MODEL "weights: {synth: {}}\nruntime: {max_seq_len: 100}\n",
                                          "m.yaml", NULL, &cfg2, &e), MOERT_OK);
    CU_ASSERT_EQUAL(cfg2.rt.max_seq_len, 100);
    CU_ASSERT_EQUAL(cfg2.rt.prefill_chunk, 100);
}

static void test_sections_parse(void)
{
    moert_err e = {0};
    static const char yaml[] = MIN_MODEL
        "  decoder_sparse_step: 2\n  intermediate_size: 128\n  mlp_only_layers: [3]\n"
        "  norm_topk_prob: false\n  tie_word_embeddings: True\n"
        "weights: {synth: {seed: 18446744073709551615, dtype: f16}}\n"
        "runtime: {max_seq_len: 64, prefill_chunk: 64, threads: 3, backend: hip}\n"
        "sampling: {temperature: 0.7, top_k: 1000, top_p: 0.95, seed: 42}\n"
        "trace:\n  enabled: true\n  mode: tensor\n  positions: all\n  stages: [logits, embed, moe_router]\n"
        "  layers: [3, 0, 2]\n  capacity: 1\n  on_full: stop\n";
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(yaml, "s.yaml", NULL, &cfg, &e), MOERT_OK);
    const cfg_topology *t = &cfg.topo;
    /* step 2: odd layers (1, 3) sparse by the step rule; 3 is forced dense. */
    CU_ASSERT_FALSE(cfg_layer_is_sparse(t, 0));
    CU_ASSERT_TRUE(cfg_layer_is_sparse(t, 1));
    CU_ASSERT_FALSE(cfg_layer_is_sparse(t, 2));
    CU_ASSERT_FALSE(cfg_layer_is_sparse(t, 3));
    CU_ASSERT_FALSE(t->norm_topk_prob);
    CU_ASSERT_TRUE(t->tie_word_embeddings);
    CU_ASSERT_EQUAL(cfg.weights.synth_seed, UINT64_MAX);
    CU_ASSERT_EQUAL(cfg.weights.synth_dtype, CFG_DTYPE_F16);
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 64);
    CU_ASSERT_EQUAL(cfg.rt.prefill_chunk, 64);
    CU_ASSERT_EQUAL(cfg.rt.threads, 3);
    CU_ASSERT_EQUAL(cfg.rt.backend, CFG_BACKEND_HIP);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.temperature, 0.7, 0);
    CU_ASSERT_EQUAL(cfg.sampling.top_k, 1000);
    CU_ASSERT_DOUBLE_EQUAL(cfg.sampling.top_p, 0.95, 0);
    CU_ASSERT_EQUAL(cfg.sampling.seed, 42);
    CU_ASSERT_TRUE(cfg.trace.enabled);
    CU_ASSERT_EQUAL(cfg.trace.mode, CFG_TRACE_TENSOR);
    CU_ASSERT_EQUAL(cfg.trace.positions, CFG_TRACE_ALL);
    CU_ASSERT_EQUAL(cfg.trace.stages, (1u << CFG_STAGE_LOGITS) | (1u << CFG_STAGE_EMBED) | (1u << CFG_STAGE_MOE_ROUTER));
    CU_ASSERT_FALSE(cfg.trace.all_layers);
    CU_ASSERT_EQUAL_FATAL(cfg.trace.n_layers, 3);
    CU_ASSERT_EQUAL(cfg.trace.layers[0], 0); /* sorted */
    CU_ASSERT_EQUAL(cfg.trace.layers[1], 2);
    CU_ASSERT_EQUAL(cfg.trace.layers[2], 3);
    CU_ASSERT_EQUAL(cfg.trace.capacity, 1);
    CU_ASSERT_EQUAL(cfg.trace.on_full, CFG_TRACE_STOP);

    /* An empty layer list traces only the global stages. */
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(MIN_MODEL "weights: {synth: {}}\ntrace: {layers: [], stages: all}\n",
                                          "s.yaml", NULL, &cfg, &e), MOERT_OK);
    CU_ASSERT_FALSE(cfg.trace.all_layers);
    CU_ASSERT_EQUAL(cfg.trace.n_layers, 0);
}

static void test_relative_paths(void)
{
    char root[300], sub[400], p[600];
    snprintf(root, sizeof root, "%s/rel", test_tmpdir());
    snprintf(sub, sizeof sub, "%s/sub", root);
    mkdir(root, 0755);
    mkdir(sub, 0755);
    snprintf(p, sizeof p, "%s/hf", root);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/hf/config.json", root);
    copy_file("tests/fixtures/qwen3-30b-a3b-hub/config.json", p);
    snprintf(p, sizeof p, "%s/tok.json", root);
    write_file(p, "{}");
    snprintf(p, sizeof p, "%s/w.safetensors", root);
    write_file(p, "");
    snprintf(p, sizeof p, "%s/c.yaml", sub);
    write_file(p, "contract: x\n");
    static const char yaml[] = "model: {hf_config: ../hf/config.json}\nweights: ../w.safetensors\n"
                               "tokenizer: ../tok.json\ncontract: c.yaml\ntrace: {out: out/t.trace}\n";
    snprintf(p, sizeof p, "%s/cfg.yaml", sub);
    write_file(p, yaml);
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(cfg_load(p, &cfg, &e), MOERT_OK);
    char want[700];
    assert_30b(&cfg.topo);
    snprintf(want, sizeof want, "%s/../hf/config.json", sub);
    CU_ASSERT_STRING_EQUAL(cfg.hf_config_path, want);
    snprintf(want, sizeof want, "%s/../w.safetensors", sub);
    CU_ASSERT_STRING_EQUAL(cfg.weights.path, want);
    snprintf(want, sizeof want, "%s/../tok.json", sub);
    CU_ASSERT_STRING_EQUAL(cfg.tokenizer_path, want);
    snprintf(want, sizeof want, "%s/c.yaml", sub);
    CU_ASSERT_STRING_EQUAL(cfg.contract_path, want);
    snprintf(want, sizeof want, "%s/out/t.trace", sub); /* need not exist */
    CU_ASSERT_STRING_EQUAL(cfg.trace.out_path, want);
    /* max_seq_len default capped by the imported max_position_embeddings (40960): 4096. */
    CU_ASSERT_EQUAL(cfg.rt.max_seq_len, 4096);

    /* The same text from memory resolves against the base_dir it is given ... */
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(yaml, "mem.yaml", sub, &cfg2, &e), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(cfg2.tokenizer_path, cfg.tokenizer_path);
    CU_ASSERT_STRING_EQUAL(cfg2.weights.path, cfg.weights.path);
    /* ... and fails, naming the key and its position, from the wrong one. */
    CU_ASSERT_EQUAL(cfg_load_string(yaml, "mem.yaml", root, &cfg2, &e), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "mem.yaml:1:20: model.hf_config: '../hf/config.json'"));

    /* Absolute paths are used as they are. */
    char abs[1200], cwd[600];
    CU_ASSERT_PTR_NOT_NULL_FATAL(getcwd(cwd, sizeof cwd));
    snprintf(abs, sizeof abs, MIN_MODEL "weights: {synth: {}}\ntokenizer: %s/%s/tok.json\n", cwd, root);
    CU_ASSERT_EQUAL_FATAL(cfg_load_string(abs, "abs.yaml", sub, &cfg2, &e), MOERT_OK);
    snprintf(want, sizeof want, "%s/%s/tok.json", cwd, root);
    CU_ASSERT_STRING_EQUAL(cfg2.tokenizer_path, want);

    /* CFG_ALLOW_MISSING_WEIGHTS relaxes the weights path only. */
    static const char missing_w[] = MIN_MODEL "weights: nowhere/model.safetensors\n";
    CU_ASSERT_EQUAL(cfg_load_string(missing_w, "mw.yaml", sub, &cfg2, &e), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "mw.yaml:12:10: weights: 'nowhere/model.safetensors'"));
    CU_ASSERT_EQUAL_FATAL(cfg_load_string_ex(missing_w, "mw.yaml", sub, CFG_ALLOW_MISSING_WEIGHTS, &cfg2, &e),
                          MOERT_OK);
    CU_ASSERT_TRUE(cfg2.weights.missing);
    CU_ASSERT_FALSE(cfg2.weights.synth);
    snprintf(want, sizeof want, "%s/nowhere/model.safetensors", sub);
    CU_ASSERT_STRING_EQUAL(cfg2.weights.path, want);
    CU_ASSERT_EQUAL_FATAL(cfg_load_string_ex(yaml, "mem.yaml", sub, CFG_ALLOW_MISSING_WEIGHTS, &cfg2, &e), MOERT_OK);
    CU_ASSERT_FALSE(cfg2.weights.missing);
    static const char missing_tok[] = MIN_MODEL "weights: nowhere\ntokenizer: nowhere.json\n";
    CU_ASSERT_EQUAL(cfg_load_string_ex(missing_tok, "mt.yaml", sub, CFG_ALLOW_MISSING_WEIGHTS, &cfg2, &e),
                    MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "mt.yaml:13:12: tokenizer: 'nowhere.json'"));
    CU_ASSERT_EQUAL(cfg_load_ex("configs/qwen3moe.yaml", 0x80, &cfg2, &e), MOERT_EUSAGE);
}

/* ---- topology rules and stage names -------------------------------------------------- */

static void test_sparse_rule_and_check(void)
{
    cfg_topology t;
    memset(&t, 0, sizeof t);
    t.vocab_size = 10;
    t.hidden_size = 8;
    t.num_hidden_layers = 6;
    t.num_attention_heads = 2;
    t.num_key_value_heads = 1;
    t.head_dim = 4;
    t.num_experts = 4;
    t.num_experts_per_tok = 2;
    t.moe_intermediate_size = 4;
    t.intermediate_size = 16;
    t.decoder_sparse_step = 3;
    t.n_mlp_only_layers = 1;
    t.mlp_only_layers[0] = 5;
    t.rope_theta = 1e4;
    t.rms_norm_eps = 1e-6;
    /* HF: sparse iff not mlp_only and (i+1) % step == 0: layer 2 only (5 is forced dense). */
    static const bool want[6] = {false, false, true, false, false, false};
    for (int l = 0; l < 6; l++)
        CU_ASSERT_EQUAL(cfg_layer_is_sparse(&t, l), want[l]);
    CU_ASSERT_FALSE(cfg_layer_is_sparse(&t, -1));
    CU_ASSERT_FALSE(cfg_layer_is_sparse(&t, 6));
    moert_err e = {0};
    CU_ASSERT_EQUAL(cfg_check_topology(&t, "api", &e), MOERT_OK);
    t.num_key_value_heads = 3;
    t.num_attention_heads = 4;
    CU_ASSERT_EQUAL(cfg_check_topology(&t, "api", &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "api: num_attention_heads = 4 is not divisible by num_key_value_heads = 3, "
                                  "expected num_key_value_heads to divide num_attention_heads");
    t.num_key_value_heads = 2;
    t.intermediate_size = 0;
    CU_ASSERT_EQUAL(cfg_check_topology(&t, "api", &e), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "api: intermediate_size = 0 but layer 0 is dense under decoder_sparse_step 3"));
    t.decoder_sparse_step = 1;
    t.n_mlp_only_layers = 0;
    CU_ASSERT_EQUAL(cfg_check_topology(&t, "api", &e), MOERT_OK); /* all sparse: no dense width needed */
    t.num_experts = 0;
    CU_ASSERT_FALSE(cfg_layer_is_sparse(&t, 0));
    CU_ASSERT_EQUAL(cfg_check_topology(&t, "api", &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "api: num_experts = 0, expected a positive integer");
}

static void test_stage_names(void)
{
    static const char *const names[] = {"embed",       "attn_norm",  "qkv",    "attn_out",
                                        "ffn_norm",    "router_logits", "moe_router", "moe_ffn_out",
                                        "output",      "final_norm", "logits"};
    CU_ASSERT_EQUAL(CFG_STAGE_COUNT, 11);
    for (int i = 0; i < CFG_STAGE_COUNT; i++) {
        CU_ASSERT_STRING_EQUAL(cfg_stage_name((cfg_stage)i), names[i]);
        CU_ASSERT_EQUAL(cfg_stage_from_name(names[i]), i);
        CU_ASSERT_EQUAL(cfg_stage_is_per_layer((cfg_stage)i), i >= CFG_STAGE_ATTN_NORM && i <= CFG_STAGE_OUTPUT);
    }
    CU_ASSERT_EQUAL(cfg_stage_from_name("Embed"), -1);
    CU_ASSERT_EQUAL(cfg_stage_from_name(""), -1);
    CU_ASSERT_EQUAL(cfg_stage_from_name(NULL), -1);
    CU_ASSERT_STRING_EQUAL(cfg_stage_name(CFG_STAGE_COUNT), "?");
    CU_ASSERT_FALSE(cfg_stage_is_per_layer(CFG_STAGE_EMBED));
    CU_ASSERT_FALSE(cfg_stage_is_per_layer(CFG_STAGE_FINAL_NORM));
}

void suite_config(void)
{
    CU_pSuite s = CU_add_suite("config", NULL, NULL);
    CU_add_test(s, "bad config catalogue", test_bad_config_catalogue);
    CU_add_test(s, "every bad config is listed", test_bad_config_files_listed);
    CU_add_test(s, "deep nesting is refused before libyaml's slow path", test_deep_nesting_refused);
    CU_add_test(s, "config.json size is bounded", test_hf_config_size_bounded);
    CU_add_test(s, "truncated configs never crash", test_truncations_never_crash);
    CU_add_test(s, "configs/qwen3moe.yaml", test_default_model_config);
    CU_add_test(s, "configs/qwen3-30b-a3b.yaml plans without weights", test_30b_config_plans_without_weights);
    CU_add_test(s, "configs/bench-*.yaml", test_bench_configs);
    CU_add_test(s, "tiny reference configs and model dirs", test_tiny_configs_and_model_dirs);
    CU_add_test(s, "hub and transformers-5 spellings agree", test_hub_and_transformers5_spellings_agree);
    CU_add_test(s, "HF defaults and model directories", test_hf_defaults_and_model_dir);
    CU_add_test(s, "defaults", test_defaults);
    CU_add_test(s, "every section parses", test_sections_parse);
    CU_add_test(s, "relative paths and CFG_ALLOW_MISSING_WEIGHTS", test_relative_paths);
    CU_add_test(s, "sparse-layer rule and cfg_check_topology", test_sparse_rule_and_check);
    CU_add_test(s, "stage names", test_stage_names);
}
