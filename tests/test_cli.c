/* cli: the moert commands end to end, good and bad input.  Bad input must give a clear
 * message and exit 2, never a crash (a crash would show as exit -1 / >128 here). */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define OUTCAP (4 << 20) /* plan --json of a 48-layer model is large */
static char out[OUTCAP], errb[OUTCAP];

#define sh(...) test_run_cmdf(out, sizeof out, errb, sizeof errb, __VA_ARGS__)

static json_t *out_json(void)
{
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    if (!j)
        fprintf(stderr, "\n    not JSON (%s): %.200s\n", je.text, out);
    return j;
}

static void test_usage_errors(void)
{
    CU_ASSERT_EQUAL(sh("./moert"), 2);
    CU_ASSERT_EQUAL(sh("./moert frobnicate"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "unknown command"));
    CU_ASSERT_EQUAL(sh("./moert --help"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "replay"));
    const char *cmds[] = {"run", "plan", "bench", "synth", "validate", "replay", "diff", "tokenize",
                          "detokenize"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        CU_ASSERT_EQUAL(sh("./moert %s --help", cmds[i]), 0);
    struct {
        const char *args, *msg;
    } bad[] = {
        {"run", "missing CONFIG"},
        {"run configs/qwen3moe.yaml", "exactly one of --tokens or --prompt"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --prompt hi", "exactly one"},
        {"run configs/qwen3moe.yaml --tokens 1,x,3", "bad input at offset 2"},
        {"run configs/qwen3moe.yaml --tokens 1,2 -n -3", "-n"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --threads 0", "--threads: 0 is outside"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --temp warm", "--temp: expected a number"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --top-p 0", "--top-p"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --backend tpu", "expected cpu or hip"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --bogus", "unknown option --bogus"},
        {"run configs/qwen3moe.yaml --tokens 1,999999", "outside [0, 151936)"},
        {"run configs/qwen3moe.yaml --tokens 1,2 -n 600", "exceed max_seq_len 512"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --prefill-chunk 1024", "exceeds max_seq_len"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --weights /nonexistent", "/nonexistent does not exist"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --chat", "--chat needs --prompt"},
        {"run /nonexistent.yaml --tokens 1", "/nonexistent.yaml"},
        {"run tests/bad_configs/05-string-for-int.yaml --tokens 1", "05-string-for-int.yaml:"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --trace-mode tensor", "need --trace FILE"},
        {"run configs/qwen3moe.yaml --tokens 1,2 --backend hip", "backend hip"},
        {"plan", "missing CONFIG"},
        {"synth configs/qwen3moe.yaml", "--out DIR"},
        {"synth configs/qwen3moe.yaml --out x --dtype fp8", "--dtype"},
        {"bench", "missing CONFIG"},
        {"diff onlyone", "usage"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = sh("./moert %s", bad[i].args);
        if (rc != 2 || !strstr(errb, bad[i].msg))
            fprintf(stderr, "\n    moert %s: exit %d, stderr: %.300s\n", bad[i].args, rc, errb);
        CU_ASSERT_EQUAL(rc, 2);
        CU_ASSERT_PTR_NOT_NULL(strstr(errb, bad[i].msg));
    }
}

static void test_run_embedded_default(void)
{
    /* the embedded default needs no download: seeded weights, the real Qwen3 vocabulary */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 9707,11,1879 -n 5 --json"), 0);
    json_t *j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "prompt_ids")), 3);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(j, "generated_ids")), 5);
    CU_ASSERT(json_integer_value(json_object_get(j, "arena_bytes")) > 0);
    CU_ASSERT(json_integer_value(json_object_get(j, "weight_bytes")) == 42056704);
    CU_ASSERT(json_real_value(json_object_get(j, "decode_tokens_per_s")) > 0);
    json_decref(j);
    /* stats go to stderr */
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "tok/s"));
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "arena"));
}

static void test_run_prompt_and_chat(void)
{
    if (!fopen("build/tokenizer/qwen3/tokenizer.json", "r")) {
        TEST_SKIP("build/tokenizer/qwen3/tokenizer.json is absent (tools/deps.sh fetches it)");
        return;
    }
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --prompt 'Hello, world!' -n 4 --json"), 0);
    json_t *j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    /* "Hello, world!" = [9707, 11, 1879, 0] in Qwen3's tokenizer (HF tokenizers) */
    json_t *p = json_object_get(j, "prompt_ids");
    CU_ASSERT_EQUAL(json_array_size(p), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(p, 0)), 9707);
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(p, 3)), 0);
    CU_ASSERT(json_is_string(json_object_get(j, "text")));
    json_decref(j);
    /* chat: the prompt is wrapped in the chat template */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --prompt hi --chat -n 2 --json"), 0);
    j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    p = json_object_get(j, "prompt_ids");
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(p, 0)), 151644); /* <|im_start|> */
    CU_ASSERT_EQUAL(json_integer_value(json_array_get(p, json_array_size(p) - 1)), 198); /* "\n" */
    json_decref(j);
    /* streaming text mode prints the decoded text */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --prompt Hello -n 8"), 0);
    CU_ASSERT(strlen(out) > 1);
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --prompt '' -n 2"), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(errb, "no tokens"));
}

/* A model written by `moert synth` generates exactly what the in-memory synth image does. */
static void test_synth_dir_equals_image(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/synth-model", test_tmpdir());
    CU_ASSERT_EQUAL_FATAL(sh("./moert synth configs/qwen3moe.yaml --out %s --shard-mb 20", dir), 0);
    CU_ASSERT_EQUAL(sh("ls %s/model-00002-of-0000*.safetensors %s/model.safetensors.index.json %s/config.json",
                       dir, dir, dir),
                    0);
    char a[4096], b[4096];
    CU_ASSERT_EQUAL_FATAL(sh("./moert run configs/qwen3moe.yaml --tokens 5,6,7,8 -n 6 --temp 0.8 --seed 3 --json"), 0);
    json_t *ja = out_json();
    CU_ASSERT_EQUAL_FATAL(sh("./moert run %s --tokens 5,6,7,8 -n 6 --temp 0.8 --seed 3 --json", dir), 0);
    json_t *jb = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(ja);
    CU_ASSERT_PTR_NOT_NULL_FATAL(jb);
    char *sa = json_dumps(json_object_get(ja, "generated_ids"), 0);
    char *sb = json_dumps(json_object_get(jb, "generated_ids"), 0);
    snprintf(a, sizeof a, "%s", sa);
    snprintf(b, sizeof b, "%s", sb);
    CU_ASSERT_STRING_EQUAL(a, b);
    free(sa);
    free(sb);
    json_decref(ja);
    json_decref(jb);
    /* sampling is seeded: another seed gives another continuation (on this model) */
    CU_ASSERT_EQUAL(sh("./moert run configs/qwen3moe.yaml --tokens 5,6,7,8 -n 6 --temp 0.8 --seed 4 --json"), 0);
    ja = out_json();
    sa = json_dumps(json_object_get(ja, "generated_ids"), 0);
    CU_ASSERT_STRING_NOT_EQUAL(sa, a);
    free(sa);
    json_decref(ja);
}

static void test_plan_30b(void)
{
    CU_ASSERT_EQUAL_FATAL(sh("./moert plan configs/qwen3-30b-a3b.yaml --json"), 0);
    json_t *j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    double arena = (double)json_integer_value(json_object_get(j, "arena_bytes"));
    double lb = (double)json_integer_value(json_object_get(j, "lower_bound_bytes"));
    double naive = (double)json_integer_value(json_object_get(j, "naive_bytes"));
    CU_ASSERT(lb > 0 && arena >= lb && arena <= 1.10 * lb);
    CU_ASSERT(naive > arena);
    /* KV cache: 48 layers x 2 x 4096 positions x 4 kv heads x 128 x 4 bytes = 805306368 */
    CU_ASSERT(json_integer_value(json_object_get(j, "persistent_bytes")) >= 805306368);
    json_t *w = json_object_get(j, "weights");
    CU_ASSERT(json_is_false(json_object_get(w, "present")));
    /* 30.5 B parameters (Qwen3-30B-A3B) */
    json_int_t params = json_integer_value(json_object_get(w, "parameters"));
    CU_ASSERT(params > 30400000000LL && params < 30600000000LL);
    json_t *t = json_object_get(j, "topology");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(t, "head_dim")), 128);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(t, "num_attention_heads")), 32);
    CU_ASSERT(json_array_size(json_object_get(json_object_get(j, "schedule"), "ops")) > 500);
    json_decref(j);
    CU_ASSERT_EQUAL(sh("./moert plan configs/qwen3moe.yaml"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "memory plan"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "kv.l3.v"));
}

static void test_model_dir(void)
{
    const char *shared = test_shared_reference();
    if (!shared) {
        TEST_SKIP("../shared/reference is absent: `moert run MODEL_DIR --json` not checked on tiny-bf16");
        return;
    }
    char path[600], dir[600], ids[2048];
    snprintf(dir, sizeof dir, "%s/tiny-bf16", shared);
    snprintf(path, sizeof path, "%s/reference.json", dir);
    CU_ASSERT_FATAL(test_reference_prompt(dir, ids, sizeof ids));
    json_error_t je;
    json_t *ref = json_load_file(path, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ref);
    CU_ASSERT_EQUAL(sh("./moert run %s/tiny-bf16 --tokens %s -n 12 --json", shared, ids), 0);
    json_t *j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    CU_ASSERT(json_equal(json_object_get(j, "generated_ids"), json_object_get(ref, "greedy_ids")));
    json_decref(j);
    json_decref(ref);
}

static void test_bench_json(void)
{
    CU_ASSERT_EQUAL(sh("./moert bench configs/qwen3moe.yaml --prompt-tokens 16 --gen 8 --json"), 0);
    json_t *j = out_json();
    CU_ASSERT_PTR_NOT_NULL_FATAL(j);
    const char *keys[] = {"prefill_tokens_per_s", "decode_tokens_per_s", "decode_weight_read_GBps",
                          "memory_bandwidth_GBps", "roofline_fraction", "peak_rss_bytes",
                          "active_weight_bytes_per_token"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        CU_ASSERT_PTR_NOT_NULL(json_object_get(j, keys[k]));
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(j, "decode_tokens")), 7);
    json_decref(j);
}

void suite_cli(void)
{
    CU_pSuite s = CU_add_suite("cli", NULL, NULL);
    CU_add_test(s, "usage and bad input: exit 2 with a message", test_usage_errors);
    CU_add_test(s, "run: embedded default", test_run_embedded_default);
    CU_add_test(s, "run: --prompt, --chat, streaming", test_run_prompt_and_chat);
    CU_add_test(s, "synth: directory equals the in-memory image", test_synth_dir_equals_image);
    CU_add_test(s, "plan: Qwen3-30B-A3B without weights", test_plan_30b);
    CU_add_test(s, "run MODEL_DIR reproduces HF greedy ids", test_model_dir);
    CU_add_test(s, "bench --json", test_bench_json);
}
