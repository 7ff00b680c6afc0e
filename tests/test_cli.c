/* cli: the moert commands end to end, good and bad input.  Bad input must give a clear
 * message and exit 2, never a crash (a crash would show as exit -1 / >128 here). */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <stdint.h>
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
        {"run configs/qwen3moe.yaml --tokens 1,x,3", "byte offset 2"},
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


/* The CLI's bad-input catalogue: each command line (run through /bin/sh) exits 2 with
 * exactly this on stderr and nothing on stdout.  "{T}" is the test's temp directory. */
#define Q3 "configs/qwen3moe.yaml --tokens 1"
#define TOK "build/tokenizer/qwen3/tokenizer.json"
static const struct {
    const char *cmd, *stderr_text;
} bad_cli[] = {
    /* --tokens: one grammar (ids, whitespace and/or one comma), every byte accounted for */
    {"run configs/qwen3moe.yaml --tokens 1,,2",
     "moert run: --tokens: byte offset 2: expected a token id after the comma at byte offset 1, found ','\n"},
    {"run configs/qwen3moe.yaml --tokens ,1", "moert run: --tokens: byte offset 0: expected a token id, found ','\n"},
    {"run configs/qwen3moe.yaml --tokens 1,",
     "moert run: --tokens: byte offset 2: expected a token id after the comma at byte offset 1, found the end of the "
     "input\n"},
    {"run configs/qwen3moe.yaml --tokens '1 , , 2'",
     "moert run: --tokens: byte offset 4: expected a token id after the comma at byte offset 2, found ','\n"},
    {"run configs/qwen3moe.yaml --tokens 2147483648",
     "moert run: --tokens: byte offset 0: token id 2147483648, expected at most 2147483647\n"},
    {"run configs/qwen3moe.yaml --tokens 99999999999999999999999999999",
     "moert run: --tokens: byte offset 0: token id 999999999999999999999999..., expected at most 2147483647\n"},
    {"run configs/qwen3moe.yaml --tokens -1", "moert run: --tokens: byte offset 0: expected a token id, found '-'\n"},
    {"run configs/qwen3moe.yaml --tokens ''", "moert run: --tokens: no ids given\n"},
    {"run configs/qwen3moe.yaml --tokens 1x",
     "moert run: --tokens: byte offset 1: expected a comma or whitespace after a token id, found 'x'\n"},
    {"run configs/qwen3moe.yaml --tokens \"$(printf '1\\t\\0012')\"",
     "moert run: --tokens: byte offset 2: expected a token id, found byte 0x01\n"},
    /* numeric flags: plain decimal, inside their range */
    {"run " Q3 " --top-k 200000", "moert run: --top-k: 200000 is outside [0, 151936]\n"},
    {"run " Q3 " --top-k -1", "moert run: --top-k: -1 is outside [0, 151936]\n"},
    {"run " Q3 " --top-k 0x10", "moert run: --top-k: expected an integer in [0, 151936], got '0x10'\n"},
    {"run " Q3 " --threads 1025", "moert run: --threads: 1025 is outside [1, 1024]\n"},
    {"run " Q3 " --threads ' 4'", "moert run: --threads: expected an integer in [1, 1024], got ' 4'\n"},
    {"run " Q3 " --threads +4", "moert run: --threads: expected an integer in [1, 1024], got '+4'\n"},
    {"run " Q3 " --threads 4k", "moert run: --threads: expected an integer in [1, 1024], got '4k'\n"},
    {"run " Q3 " --prefill-chunk 0", "moert run: --prefill-chunk: 0 is outside [1, 1048576]\n"},
    {"run " Q3 " --max-seq-len 0", "moert run: --max-seq-len: 0 is outside [1, 16777216]\n"},
    {"run " Q3 " --max-seq-len 99999999", "moert run: --max-seq-len: 99999999 is outside [1, 16777216]\n"},
    {"run " Q3 " --seed -1", "moert run: --seed: -1 is outside [0, 9223372036854775807]\n"},
    {"run " Q3 " --seed 9223372036854775808",
     "moert run: --seed: expected an integer in [0, 9223372036854775807], got '9223372036854775808'\n"},
    {"run " Q3 " --temp -1", "moert run: --temp: -1 is outside [0, 1e+06]\n"},
    {"run " Q3 " --temp nan", "moert run: --temp: expected a number in [0, 1e+06], got 'nan'\n"},
    {"run " Q3 " --temp inf", "moert run: --temp: expected a number in [0, 1e+06], got 'inf'\n"},
    {"run " Q3 " --temp 1e400", "moert run: --temp: expected a number in [0, 1e+06], got '1e400'\n"},
    {"run " Q3 " --temp 0x1p3", "moert run: --temp: expected a number in [0, 1e+06], got '0x1p3'\n"},
    {"run " Q3 " --top-p 1.5", "moert run: --top-p: 1.5 is outside [0, 1]\n"},
    {"run " Q3 " --top-p 0", "moert run: --top-p: must be in (0, 1], got 0\n"},
    {"run " Q3 " -n abc", "moert run: -n: expected an integer in [0, 16777216], got 'abc'\n"},
    {"run " Q3 " -n 99999999", "moert run: -n: 99999999 is outside [0, 16777216]\n"},
    {"run " Q3 " -n", "moert run: -n needs a value\n"},
    {"bench configs/qwen3moe.yaml --gen 0", "moert bench: --gen: 0 is outside [1, 1048576]\n"},
    {"bench configs/qwen3moe.yaml --prompt-tokens x",
     "moert bench: --prompt-tokens: expected an integer in [1, 1048576], got 'x'\n"},
    {"bench configs/qwen3moe.yaml --repeat 0", "moert bench: --repeat: 0 is outside [1, 32]\n"},
    /* name-table flags: the message lists the table */
    {"run " Q3 " --backend tpu", "moert run: --backend: expected cpu or hip, got 'tpu'\n"},
    {"run " Q3 " --trace {T}/never.trace --trace-mode full",
     "moert run: --trace-mode: expected stats or tensor, got 'full'\n"},
    {"run " Q3 " --trace {T}/never.trace --trace-positions first",
     "moert run: --trace-positions: expected last or all, got 'first'\n"},
    {"synth configs/qwen3moe.yaml --out {T}/never --shard-mb 0", "moert synth: --shard-mb: 0 is outside [1, 1048576]\n"},
    {"synth configs/qwen3moe.yaml --out {T}/never --seed 1.5",
     "moert synth: --seed: expected an integer in [0, 9223372036854775807], got '1.5'\n"},
    {"replay tests/fixtures/replay/default.trace --tolerance -1", "moert replay: --tolerance: -1 is outside [0, 1e+30]\n"},
    {"replay tests/fixtures/replay/default.trace --tolerance nan",
     "moert replay: --tolerance: expected a number in [0, 1e+30], got 'nan'\n"},
    {"replay tests/fixtures/replay/default.trace --threads 0", "moert replay: --threads: 0 is outside [1, 1024]\n"},
    {"replay tests/fixtures/replay/default.trace --prefill-chunk 65",
     "moert replay: --prefill-chunk 65 exceeds max_seq_len 64\n"},
    {"replay tests/fixtures/replay/default.trace --top-k 5",
     "moert replay: replay takes the trace plan, contract, numerics, batch invariance and sampling from the recording\n"},
    {"replay tests/fixtures/replay/default.trace --contract contracts/qwen3moe-trace-v1.yaml",
     "moert replay: replay takes the trace plan, contract, numerics, batch invariance and sampling from the recording\n"},
    {"replay tests/fixtures/replay/default.trace --gpus 3", "moert replay: --gpus: expected 1, 2, 4 or 8, got 3\n"},
    {"replay tests/fixtures/replay/default.trace --numerics act-q8",
     "moert replay: replay takes the trace plan, contract, numerics, batch invariance and sampling from the recording\n"},
    {"run configs/qwen3moe.yaml --tokens 1 --numerics q4", "moert run: --numerics: expected exact or act-q8, got 'q4'\n"},
    {"run configs/qwen3moe.yaml --tokens 1 --batch-invariant yes",
     "moert run: --batch-invariant: expected off or on, got 'yes'\n"},
    {"replay tests/fixtures/replay/default.trace --batch-invariant on",
     "moert replay: replay takes the trace plan, contract, numerics, batch invariance and sampling from the recording\n"},
    {"bench configs/qwen3moe.yaml --numerics", "moert bench: --numerics needs a value\n"},
    {"tokenize " TOK " --repeat 0 </dev/null", "moert tokenize: --repeat: 0 is outside [1, 100000]\n"},
    {"tokenize " TOK " --repeat </dev/null", "moert tokenize: --repeat needs a value\n"},
    {"plan configs/qwen3moe.yaml --threads 0", "moert plan: --threads: 0 is outside [1, 1024]\n"},
    {"plan configs/qwen3moe.yaml --max-seq-len 16777217", "moert plan: --max-seq-len: 16777217 is outside [1, 16777216]\n"},
    /* detokenize: the same id grammar on stdin; a NUL is a bad byte, not a separator */
    {"printf '1,,2\\n' | ./moert detokenize " TOK,
     "moert detokenize: stdin: byte offset 2: expected a token id after the comma at byte offset 1, found ','\n"},
    {"printf '1\\0002' | ./moert detokenize " TOK,
     "moert detokenize: stdin: byte offset 1: expected a comma or whitespace after a token id, found byte 0x00\n"},
    {"printf '\\0001' | ./moert detokenize " TOK, "moert detokenize: stdin: byte offset 0: expected a token id, found byte 0x00\n"},
    {"printf '1 2 x' | ./moert detokenize " TOK, "moert detokenize: stdin: byte offset 4: expected a token id, found 'x'\n"},
    {"printf '[1, 4294967296]' | ./moert detokenize " TOK,
     "moert detokenize: stdin: element 1 of the array: expected a non-negative integer token id\n"},
    {"printf '99999999' | ./moert detokenize " TOK,
     "moert detokenize: token id 99999999 at position 0 is not in the vocabulary (ids 0..151668, out of range)\n"},
    /* configs that load but cannot run: the config is named */
    {"plan tests/bad_runs/schedule-overflow.yaml",
     "moert plan: tests/bad_runs/schedule-overflow.yaml: schedule: buffer l0.router_logits needs more than 2^63 bytes, "
     "expected at most 281474976710656 bytes per buffer (lower prefill_chunk, max_seq_len or threads)\n"},
    {"run tests/bad_runs/topology-too-wide.yaml --tokens 1",
     "moert run: tests/bad_runs/topology-too-wide.yaml: topology: hidden_size is 33554432, expected 1..16777216\n"},
    {"run tests/bad_runs/too-many-experts.yaml --tokens 1",
     "moert run: tests/bad_runs/too-many-experts.yaml: topology: 25769808387 weight tensors (num_experts x sparse "
     "layers), expected at most 4194304\n"},
    {"synth tests/bad_runs/topology-too-wide.yaml --out {T}/never",
     "moert synth: tests/bad_runs/topology-too-wide.yaml: topology: hidden_size is 33554432, expected 1..16777216\n"},
    {"run tests/bad_runs/arena-unmappable.yaml --tokens 1 -n 1",
     "moert run: tests/bad_runs/arena-unmappable.yaml: arena: cannot map 282583078817408 bytes: Cannot allocate memory\n"},
};

static void subst_tmp(const char *in, char *dst, size_t cap)
{
    size_t n = 0;
    for (const char *p = in; *p && n + 1 < cap; p++) {
        if (!strncmp(p, "{T}", 3)) {
            n += (size_t)snprintf(dst + n, cap - n, "%s", test_tmpdir());
            p += 2;
        } else {
            dst[n++] = *p;
        }
    }
    dst[n < cap ? n : cap - 1] = 0;
}

static void test_bad_cli_catalogue(void)
{
    bool have_tok = fopen(TOK, "r") != NULL;
    for (size_t i = 0; i < sizeof bad_cli / sizeof bad_cli[0]; i++) {
        if (strstr(bad_cli[i].cmd, TOK) && !have_tok) {
            TEST_SKIP(TOK " is absent: detokenize cases not checked");
            continue;
        }
        char cmd[2048], want[2048];
        subst_tmp(bad_cli[i].cmd, cmd, sizeof cmd);
        subst_tmp(bad_cli[i].stderr_text, want, sizeof want);
        int rc = strncmp(cmd, "printf", 6) ? sh("./moert %s", cmd) : sh("%s", cmd);
        if (rc != 2 || strcmp(errb, want) != 0)
            fprintf(stderr, "\n    %s: exit %d\n    want: %s    got:  %s", cmd, rc, want, errb);
        CU_ASSERT_EQUAL(rc, 2);
        CU_ASSERT_STRING_EQUAL(errb, want);
        CU_ASSERT_STRING_EQUAL(out, "");
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

/* synth --format gguf encodes a chunk's rows in parallel: the file is the same bytes for one
 * encoder thread as for two. */
static void test_synth_gguf_threads(void)
{
    const char *t = test_tmpdir();
    CU_ASSERT_EQUAL_FATAL(sh("OMP_NUM_THREADS=1 ./moert synth tests/fixtures/hf/gqa4-hd24 --format gguf --dtype q4_k_m "
                             "--out %s/thr1.gguf",
                             t),
                          0);
    CU_ASSERT_EQUAL_FATAL(sh("OMP_NUM_THREADS=2 ./moert synth tests/fixtures/hf/gqa4-hd24 --format gguf --dtype q4_k_m "
                             "--out %s/thr2.gguf",
                             t),
                          0);
    CU_ASSERT_EQUAL(sh("cmp %s/thr1.gguf %s/thr2.gguf", t, t), 0);
}

/* A NaN weight runs silently unless asked: --check-weights (run, bench, replay) or a
 * contract names the first non-finite element and exits 2. */
static void test_check_weights(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/nan-model", test_tmpdir());
    CU_ASSERT_EQUAL_FATAL(sh("./moert synth configs/qwen3moe.yaml --out %s --shard-mb 64", dir), 0);
    CU_ASSERT_EQUAL(sh("./moert run %s --tokens 5,6 -n 2 --check-weights", dir), 0);
    /* bf16 NaN (0x7fc0) as element 5 of layer 1's q_norm, at its offset from the header */
    char shard[700];
    snprintf(shard, sizeof shard, "%s/model-00001-of-00001.safetensors", dir);
    FILE *f = fopen(shard, "r+b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    uint64_t hl = 0;
    CU_ASSERT_EQUAL_FATAL(fread(&hl, 8, 1, f), 1);
    char *hdr = calloc(1, hl + 1);
    CU_ASSERT_EQUAL_FATAL(fread(hdr, 1, hl, f), hl);
    json_error_t je;
    json_t *h = json_loads(hdr, 0, &je);
    free(hdr);
    json_t *offs = json_object_get(json_object_get(h, "model.layers.1.self_attn.q_norm.weight"), "data_offsets");
    CU_ASSERT_PTR_NOT_NULL_FATAL(offs);
    long at = (long)(8 + hl + (uint64_t)json_integer_value(json_array_get(offs, 0)) + 2 * 5);
    json_decref(h);
    fseek(f, at, SEEK_SET);
    fputc(0xc0, f);
    fputc(0x7f, f);
    fclose(f);
    char want[1024];
    snprintf(want, sizeof want,
             "%s: tensor 'model.layers.1.self_attn.q_norm.weight' element [5] (index 5 of 48) is "
             "NaN, expected finite weights\n", shard);
    const char *runs[] = {"run %s --tokens 5,6 -n 2 --check-weights",
                          "run %s --tokens 5,6 -n 2 --contract contracts/qwen3moe-trace-v1.yaml",
                          "bench %s --prompt-tokens 4 --gen 2 --repeat 1 --check-weights"};
    for (size_t i = 0; i < 3; i++) {
        char cmd[1024], full[1200];
        snprintf(cmd, sizeof cmd, runs[i], dir);
        snprintf(full, sizeof full, "moert %.*s: %s", (int)strcspn(cmd, " "), cmd, want);
        CU_ASSERT_EQUAL(sh("./moert %s", cmd), 2);
        CU_ASSERT_STRING_EQUAL(errb, full);
    }
    /* unchecked, it runs (what the flag is for) */
    CU_ASSERT_EQUAL(sh("./moert run %s --tokens 5,6 -n 2", dir), 0);
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
    const char *shared = test_shared_parts("tiny-bf16");
    if (!shared) {
        TEST_SKIP("../shared/reference (tiny-bf16) is absent: `moert run MODEL_DIR --json` not checked on tiny-bf16");
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
    CU_add_test(s, "bad command-line catalogue: exit 2, exact messages", test_bad_cli_catalogue);
    CU_add_test(s, "run: embedded default", test_run_embedded_default);
    CU_add_test(s, "run: --prompt, --chat, streaming", test_run_prompt_and_chat);
    CU_add_test(s, "synth: directory equals the in-memory image", test_synth_dir_equals_image);
    CU_add_test(s, "synth: a GGUF's bytes do not depend on the encoder threads", test_synth_gguf_threads);
    CU_add_test(s, "plan: Qwen3-30B-A3B without weights", test_plan_30b);
    CU_add_test(s, "--check-weights and contracts name a NaN weight", test_check_weights);
    CU_add_test(s, "run MODEL_DIR reproduces HF greedy ids", test_model_dir);
    CU_add_test(s, "bench --json", test_bench_json);
}
