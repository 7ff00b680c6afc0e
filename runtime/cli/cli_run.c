/* moert run: load, prefill, decode, print; optionally trace. */
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"
#include "../afile.h"
#include "../session.h"
#include "../tok.h"
#include "../trace/trace_file.h"

static const char run_usage[] =
    "usage: moert run CONFIG|MODEL_DIR (--tokens IDS | --prompt TEXT) [options]\n"
    "  --tokens 1,2,3        prompt as token ids\n"
    "  --prompt TEXT         prompt as text (needs the config's tokenizer)\n"
    "  --chat                wrap the prompt in Qwen3's chat format; stop at <|im_end|>\n"
    "  -n N                  tokens to generate (default 16); generation stops earlier at the\n"
    "                        model's end-of-sequence ids (config.json eos_token_id, a GGUF's eos/eot)\n"
    "  --ignore-eos          generate all N tokens\n"
    "  --json                print one JSON object instead of text\n"
    "  --threads N  --prefill-chunk K  --max-seq-len N  --backend cpu|hip  --weights PATH\n"
    "  --gpus 1|2|4|8        expert-parallel ranks; on the cpu, simulated through the in-process\n"
    "                        loopback (bit-identical to 1); the hip backend runs 1\n"
    "  --seed S  --temp T  --top-k K  --top-p P    sampling (temp 0 = greedy)\n"
    "  --trace FILE  --trace-mode stats|tensor  --trace-positions last|all  --contract FILE\n"
    "  --check-weights       scan the weights for NaN/Inf at init (also done with --contract)\n"
    "  --route-from TRACE    routing replay: every layer's experts and routing weights at every\n"
    "                        position are the ones TRACE recorded (same prompt and topology; a\n"
    "                        trace recorded with --trace-positions all), not the router's (cpu)\n"
    "  --numerics exact|act-q8  products with block-quantized weights: exact (default), or the\n"
    "                        activations quantized to int8 and integer dot products, as llama.cpp\n"
    "                        does (deterministic too; named in the trace manifest; cpu, hip)\n"
    "  --batch-invariant on|off  a prompt row bit-identical to the same token as a decode\n"
    "                        step (the cpu always is; hip: decode on the prefill kernels, slower)\n"
    "  --sim-precision bf16|f16  round every op's output activations to that format, weights\n"
    "                        unchanged: the precision noise floor of a reduced-precision device (cpu)\n"
    "  SIGINT / SIGTERM stop after the step in progress: the trace of what ran is written\n"
    "  (\"interrupted\": true in its manifest), the speed line printed, exit 130.\n";

/* The signal that asked the run to stop (0 = none); sess_generate polls it between steps. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

typedef struct run_out {
    tok_tokenizer *tok;
    tok_stream stream;
    bool print_text, print_ids, json;
    int32_t stop[CFG_MAX_EOS + 2];
    int n_stop;
    int64_t n_printed;
} run_out;

static void add_stop(run_out *o, int32_t id)
{
    for (int i = 0; i < o->n_stop; i++)
        if (o->stop[i] == id)
            return;
    if (id >= 0 && o->n_stop < (int)(sizeof o->stop / sizeof *o->stop))
        o->stop[o->n_stop++] = id;
}

static bool on_token(void *ctx, int32_t id)
{
    run_out *o = ctx;
    for (int i = 0; i < o->n_stop; i++)
        if (id == o->stop[i])
            return false;
    if (o->print_text) {
        char buf[512];
        size_t len = 0;
        moert_err e = {0};
        if (tok_stream_push(o->tok, &o->stream, id, buf, sizeof buf, &len, &e) == MOERT_OK) {
            fwrite(buf, 1, len, stdout);
            fflush(stdout);
        }
    } else if (o->print_ids) {
        printf(o->n_printed ? ",%d" : "%d", id);
        fflush(stdout);
    }
    o->n_printed++;
    return true;
}

static json_t *ids_json(const int32_t *ids, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int encode_prompt(tok_tokenizer *tok, const char *text, bool chat, int32_t *ids,
                         int64_t cap, int64_t *n, moert_err *err)
{
    char *wrapped = NULL;
    if (chat) {
        size_t len = strlen(text) + 64;
        wrapped = malloc(len);
        if (!wrapped)
            return err_set(err, MOERT_ENOMEM, "out of memory");
        snprintf(wrapped, len, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", text);
        text = wrapped;
    }
    size_t got = 0;
    int st = tok_encode(tok, text, strlen(text), ids, (size_t)cap, &got, err);
    if (st == MOERT_EUSAGE)
        st = err_set(err, MOERT_EUSAGE, "--prompt: %zu tokens exceed max_seq_len %lld", got,
                     (long long)cap);
    free(wrapped);
    *n = (int64_t)got;
    if (!st && got == 0)
        st = err_set(err, MOERT_EUSAGE, "--prompt: the text encodes to no tokens");
    return st;
}

int cli_run(int argc, char **argv, moert_err *err)
{
    cli_overrides ov = {0};
    const char *path = NULL, *tokens = NULL, *prompt = NULL;
    const char *route_from = NULL, *sim = NULL;
    bool chat = false, json = false, ignore_eos = false, check_weights = false;
    int64_t n_new = 16;
    for (int i = 1; i < argc;) {
        int t = cli_take_override(argc, argv, &i, &ov, err);
        if (t < 0)
            return MOERT_EUSAGE;
        if (t > 0)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(run_usage, stdout);
            return MOERT_OK;
        } else if (!strcmp(a, "--tokens") || !strcmp(a, "--prompt") || !strcmp(a, "-n") ||
                   !strcmp(a, "--route-from") || !strcmp(a, "--sim-precision")) {
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "%s needs a value", a);
            if (!strcmp(a, "--route-from"))
                route_from = argv[i + 1];
            else if (!strcmp(a, "--sim-precision"))
                sim = argv[i + 1];
            else if (!strcmp(a, "--tokens"))
                tokens = argv[i + 1];
            else if (!strcmp(a, "--prompt"))
                prompt = argv[i + 1];
            else if (cli_parse_i64("-n", argv[i + 1], 0, 1 << 24, &n_new, err))
                return MOERT_EUSAGE;
            i += 2;
        } else if (!strcmp(a, "--chat")) {
            chat = true;
            i++;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
            i++;
        } else if (!strcmp(a, "--json")) {
            json = true;
            i++;
        } else if (!strcmp(a, "--check-weights")) {
            check_weights = true;
            i++;
        } else if (a[0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s\n%s", a, run_usage);
        } else if (!path) {
            path = a;
            i++;
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'\n%s", a, run_usage);
        }
    }
    if (!path)
        return err_set(err, MOERT_EUSAGE, "missing CONFIG or MODEL_DIR\n%s", run_usage);
    if (!tokens == !prompt)
        return err_set(err, MOERT_EUSAGE, "give exactly one of --tokens or --prompt\n%s", run_usage);
    if (chat && !prompt)
        return err_set(err, MOERT_EUSAGE, "--chat needs --prompt");
    int sim_p = sim ? cfg_sim_precision_from_name(sim) : CFG_SIM_NONE;
    if (sim_p < 0 || (sim && sim_p == CFG_SIM_NONE))
        return err_set(err, MOERT_EUSAGE, "--sim-precision: expected bf16 or f16, got '%s'", sim);
    if (route_from && (!route_from[0] || strlen(route_from) >= CFG_PATH_MAX))
        return err_set(err, MOERT_EUSAGE, "--route-from: expected a trace file path of 1 to %d bytes",
                       CFG_PATH_MAX - 1);

    cfg_config *cfg = malloc(sizeof *cfg);
    if (!cfg)
        return err_set(err, MOERT_ENOMEM, "out of memory");
    int st = cli_load_config(path, &ov, 0, cfg, err);
    run_out out = {.json = json};
    int32_t *prompt_ids = NULL, *gen_ids = NULL;
    int64_t n_prompt = 0, n_gen = 0;
    sess *s = NULL;
    afile probe = {.fd = -1};
    if (st)
        goto done;
    cfg->rt.sim_precision = (cfg_sim_precision)sim_p;
    if (route_from)
        snprintf(cfg->rt.route_from, sizeof cfg->rt.route_from, "%s", route_from);
    int64_t cap = cfg->rt.max_seq_len;
    prompt_ids = malloc((size_t)cap * sizeof *prompt_ids);
    gen_ids = malloc((size_t)(n_new ? n_new : 1) * sizeof *gen_ids);
    s = calloc(1, sizeof *s);
    if (!prompt_ids || !gen_ids || !s) {
        st = err_set(err, MOERT_ENOMEM, "out of memory");
        goto done;
    }
    if (prompt || cfg->tokenizer_path[0]) {
        if (!cfg->tokenizer_path[0]) {
            st = err_set(err, MOERT_EUSAGE,
                         "--prompt needs a tokenizer: %s names none (add `tokenizer:` to the config, or put tokenizer.json in the model directory)",
                         path);
            goto done;
        }
        if ((st = tok_load(cfg->tokenizer_path, &out.tok, err)))
            goto done;
        tok_stream_init(&out.stream);
    }
    if (prompt) {
        if ((st = encode_prompt(out.tok, prompt, chat, prompt_ids, cap, &n_prompt, err)))
            goto done;
    } else if ((st = cli_parse_ids("--tokens", tokens, prompt_ids, cap, &n_prompt, err))) {
        goto done;
    }
    if (chat) {
        add_stop(&out, tok_special_id(out.tok, "<|im_end|>"));
        add_stop(&out, tok_special_id(out.tok, "<|endoftext|>"));
    }
    for (int32_t i = 0; i < cfg->n_eos && !ignore_eos; i++)
        add_stop(&out, cfg->eos_ids[i]);
    out.print_text = !json && prompt != NULL;
    out.print_ids = !json && prompt == NULL;
    /* An unwritable trace path is found now, not after every token was generated: its temp
     * file is created here (the writer reuses the same name) and stays until the trace is. */
    if (cfg->trace.enabled && (st = afile_open(&probe, cfg->trace.out_path, err))) {
        err_prefix(err, "--trace");
        goto done;
    }
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if ((st = sess_open(s, cfg, check_weights ? SESS_CHECK_WEIGHTS : 0, err)))
        goto done;
    s->stop = &stop_signal;
    if ((st = sess_generate(s, prompt_ids, n_prompt, n_new, gen_ids, &n_gen, on_token, &out, err)))
        goto done;
    if (s->route) {
        /* forced routing of the recorded tokens: a different sampled token feeds another input */
        const int32_t *rp, *rg;
        int64_t nrp, nrg;
        trace_route_ids(s->route, &rp, &nrp, &rg, &nrg);
        for (int64_t i = 0; i < n_gen && i < nrg; i++)
            if (gen_ids[i] != rg[i]) {
                fprintf(stderr,
                        "moert run: generated token %lld is %d, the routing recording's is %d: later positions "
                        "replay routing recorded for other tokens\n",
                        (long long)i, gen_ids[i], rg[i]);
                break;
            }
    }
    if (out.print_text) {
        char buf[16];
        size_t len = 0;
        tok_stream_flush(&out.stream, buf, sizeof buf, &len);
        fwrite(buf, 1, len, stdout);
    }
    if (!json)
        putchar('\n');
    if (s->trace) {
        trace_run_info info = {.prompt_ids = prompt_ids, .n_prompt = n_prompt,
                               .generated_ids = gen_ids, .n_generated = n_gen};
        if ((st = trace_file_write(s, cfg->trace.out_path, &info, err)))
            goto done;
        char dropped[2048];
        size_t nd = trace_file_dropped(s, dropped, sizeof dropped);
        if (nd)
            fprintf(stderr, "moert: warning: %zu trace rings were full and dropped records: %s\n", nd, dropped);
    }
    const sess_stats *ss = &s->stats;
    int64_t decode_steps = ss->generated_tokens > 1 ? ss->generated_tokens - 1 : 0;
    double pre_tps = ss->prefill_seconds > 0 ? (double)ss->prompt_tokens / ss->prefill_seconds : 0;
    double dec_tps = ss->decode_seconds > 0 && decode_steps ? (double)decode_steps / ss->decode_seconds : 0;
    fprintf(stderr,
            "moert: prefill %lld tokens %.1f tok/s | decode %lld tokens %.1f tok/s | threads %d | "
            "arena %llu bytes (lower bound %llu) | weights %llu bytes\n",
            (long long)ss->prompt_tokens, pre_tps, (long long)ss->generated_tokens, dec_tps,
            s->threads, (unsigned long long)s->plan_stats.arena_bytes,
            (unsigned long long)s->plan_stats.lower_bound_bytes,
            (unsigned long long)s->weights.total_bytes);
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "prompt_ids", ids_json(prompt_ids, n_prompt));
        json_object_set_new(o, "generated_ids", ids_json(gen_ids, n_gen));
        if (out.tok) {
            size_t need = 0;
            moert_err e2 = {0};
            tok_decode(out.tok, gen_ids, (size_t)n_gen, NULL, 0, &need, &e2);
            char *text = malloc(need + 1);
            if (text && tok_decode(out.tok, gen_ids, (size_t)n_gen, text, need + 1, &need, &e2) == MOERT_OK)
                json_object_set_new(o, "text", json_stringn(text, need));
            free(text);
        }
        json_object_set_new(o, "prefill_tokens_per_s", json_real(pre_tps));
        json_object_set_new(o, "decode_tokens_per_s", json_real(dec_tps));
        json_object_set_new(o, "prefill_seconds", json_real(ss->prefill_seconds));
        json_object_set_new(o, "decode_seconds", json_real(ss->decode_seconds));
        json_object_set_new(o, "init_seconds", json_real(ss->init_seconds));
        json_object_set_new(o, "arena_bytes", json_integer((json_int_t)s->plan_stats.arena_bytes));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)s->weights.total_bytes));
        json_object_set_new(o, "threads", json_integer(s->threads));
        json_object_set_new(o, "backend", json_string(s->be.vt->name));
        json_object_set_new(o, "interrupted", json_boolean(s->interrupted));
        st = cli_print_json(o, JSON_COMPACT, err);
    }
    if (!st && s->interrupted)
        st = err_set(err, MOERT_EINTR, "interrupted by %s after %lld prompt and %lld generated tokens%s%s",
                     stop_signal == SIGTERM ? "SIGTERM" : "SIGINT", (long long)s->stats.prompt_tokens,
                     (long long)n_gen, s->trace ? "; trace written to " : "", s->trace ? cfg->trace.out_path : "");
done:
    /* after a written trace its temp name is gone: this only closes the probe's descriptor */
    afile_abort(&probe);
    if (s) {
        sess_close(s);
        free(s);
    }
    tok_free(out.tok);
    free(prompt_ids);
    free(gen_ids);
    free(cfg);
    return st;
}
