/* moert bench: prefill and decode speed of a config, the memory-bandwidth roofline they
 * are judged against, and (optionally) the cost of stats tracing. */
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#include "../../ops/ops.h"
#include "cli.h"
#include "cli_common.h"
#include "../session.h"

static const char bench_usage[] =
    "usage: moert bench CONFIG|MODEL_DIR [--json] [--prompt-tokens N] [--gen N] [--repeat R]\n"
    "                   [--trace-overhead] [--profile] [--threads N] [--backend cpu|hip]\n"
    "                   [--weights PATH] [--check-weights] [--gpus N (cpu loopback; hip: 1)]\n"
    "                   [--numerics exact|act-q8] [--batch-invariant on|off]\n"
    "  prefill tok/s for an N-token prompt (default 512), decode tok/s over --gen tokens\n"
    "  (default 128, greedy), each the median of R measured runs (default 3) after a warm-up,\n"
    "  weight bytes read per decoded token, the memory-bandwidth\n"
    "  roofline (CPU: multi-threaded read of 1 GiB, best of 5; GPU: device copy) and peak\n"
    "  RSS.  --trace-overhead repeats the run with stats tracing of every stage and layer.\n"
    "  --check-weights scans the weights for NaN/Inf at init (exit 2 naming the first).\n";

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best-of-10 read bandwidth of `threads` threads each streaming its share of 1 GiB, from
 * memory mapped like the weights (anonymous, transparent huge pages requested). */
static double cpu_read_bandwidth_gbs(int threads, int passes)
{
    size_t bytes = (size_t)1 << 30;
    uint8_t *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 0;
    madvise(buf, bytes, MADV_HUGEPAGE);
    memset(buf, 1, bytes);
    double best = 0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < passes; rep++) {
        double t0 = now_seconds();
        uint64_t acc = 0;
#pragma omp parallel num_threads(threads) reduction(^ : acc)
        {
            int nt = omp_get_num_threads(), id = omp_get_thread_num();
            size_t share = bytes / (size_t)nt;
            acc ^= ops_touch_read(buf + share * (size_t)id, share);
        }
        double dt = now_seconds() - t0;
        sink ^= acc;
        if ((double)bytes / dt / 1e9 > best)
            best = (double)bytes / dt / 1e9;
    }
    (void)sink;
    munmap(buf, bytes);
    return best;
}

static void cpu_model_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(buf, cap, "%s", c);
            }
            break;
        }
    fclose(f);
}

#define BENCH_MAX_REPEAT 32
#define BENCH_WARM_GEN 4 /* tokens the warm-up generates */

typedef struct bench_run {
    double prefill_tps, decode_tps, prefill_s, decode_s, init_s; /* medians */
    double prefill_min, prefill_max, decode_min, decode_max;
    double bw_gbs, fraction, fraction_min, fraction_max; /* CPU: probed before each run */
    int64_t decode_steps, fed_steps; /* fed_steps: of the last measured run */
    uint64_t arena_bytes;
} bench_run;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Faults every weight page in, so the timed run measures steady state, not the disk. */
static void touch_weights(const st_set *set)
{
    volatile uint64_t sink = 0;
    for (size_t i = 0; i < st_count(set); i++) {
        const st_tensor *t = st_at(set, i);
        sink ^= ops_touch_read(t->data, t->nbytes);
    }
    (void)sink;
}

static int one_run(const cfg_config *cfg, const int32_t *prompt, int64_t n_prompt, int64_t n_gen,
                   int32_t *gen, sess *s, bench_run *r, bool profile, int repeat, unsigned flags, moert_err *err)
{
    double bw[BENCH_MAX_REPEAT], frac[BENCH_MAX_REPEAT];
    int st = sess_open(s, cfg, flags, err);
    if (st)
        return st;
    r->init_s = s->stats.init_seconds;
    touch_weights(s->weights_set);
    int64_t n_out = 0;
    /* warm-up: a short prompt and a few decode steps (thread team, caches, device graphs) */
    int64_t warm = n_prompt < 16 ? n_prompt : 16;
    if ((st = sess_generate(s, prompt, warm, BENCH_WARM_GEN, gen, &n_out, NULL, NULL, err)))
        goto out;
    /* the measured run, `repeat` times: on a shared machine one sample says little */
    double pre[BENCH_MAX_REPEAT], dec[BENCH_MAX_REPEAT], pre_s[BENCH_MAX_REPEAT], dec_s[BENCH_MAX_REPEAT];
    uint64_t active = model_active_bytes_per_token(&s->weights);
    bool cpu = s->be.vt->copy_bandwidth_gbs == NULL;
    for (int rep = 0; rep < repeat; rep++) {
        /* The host's memory bandwidth drifts (shared machines): probe it right before each
         * run so that each run is judged against the bandwidth it actually had. */
        bw[rep] = cpu ? cpu_read_bandwidth_gbs(s->threads, 3) : 0;
        sess_reset(s);
        s->profile = profile && rep == repeat - 1;
        if ((st = sess_generate(s, prompt, n_prompt, n_gen, gen, &n_out, NULL, NULL, err)))
            goto out;
        r->decode_steps = n_out > 1 ? n_out - 1 : 0;
        r->fed_steps = s->stats.fed_steps;
        pre_s[rep] = s->stats.prefill_seconds;
        dec_s[rep] = s->stats.decode_seconds;
        pre[rep] = pre_s[rep] > 0 ? (double)n_prompt / pre_s[rep] : 0;
        dec[rep] = dec_s[rep] > 0 && r->decode_steps ? (double)r->decode_steps / dec_s[rep] : 0;
        frac[rep] = cpu && bw[rep] > 0 ? dec[rep] * (double)active / (bw[rep] * 1e9) : 0;
    }
    r->bw_gbs = cpu ? median(bw, repeat) : 0;
    r->fraction = cpu ? median(frac, repeat) : 0;
    r->fraction_min = frac[0];
    r->fraction_max = frac[repeat - 1];
    r->prefill_tps = median(pre, repeat);
    r->decode_tps = median(dec, repeat);
    r->prefill_s = median(pre_s, repeat);
    r->decode_s = median(dec_s, repeat);
    r->prefill_min = pre[0];
    r->prefill_max = pre[repeat - 1];
    r->decode_min = dec[0];
    r->decode_max = dec[repeat - 1];
    r->arena_bytes = s->plan_stats.arena_bytes;
out:
    if (st)
        sess_close(s);
    return st;
}

int cli_bench(int argc, char **argv, moert_err *err)
{
    cli_overrides ov = {0};
    const char *path = NULL;
    bool json = false, trace_overhead = false, profile = false, check_weights = false;
    int64_t n_prompt = 512, n_gen = 128, repeat = 3;
    for (int i = 1; i < argc;) {
        int t = cli_take_override(argc, argv, &i, &ov, err);
        if (t < 0)
            return MOERT_EUSAGE;
        if (t > 0)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(bench_usage, stdout);
            return MOERT_OK;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--profile")) {
            profile = true;
        } else if (!strcmp(a, "--trace-overhead")) {
            trace_overhead = true;
        } else if (!strcmp(a, "--check-weights")) {
            check_weights = true;
        } else if (!strcmp(a, "--repeat")) {
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "%s needs a value", a);
            if (cli_parse_i64(a, argv[i + 1], 1, BENCH_MAX_REPEAT, &repeat, err))
                return MOERT_EUSAGE;
            i++;
        } else if (!strcmp(a, "--prompt-tokens") || !strcmp(a, "--gen")) {
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "%s needs a value", a);
            if (cli_parse_i64(a, argv[i + 1], 1, 1 << 20, !strcmp(a, "--gen") ? &n_gen : &n_prompt,
                              err))
                return MOERT_EUSAGE;
            i++;
        } else if (a[0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s\n%s", a, bench_usage);
        } else if (!path) {
            path = a;
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'\n%s", a, bench_usage);
        }
        i++;
    }
    if (!path)
        return err_set(err, MOERT_EUSAGE, "missing CONFIG\n%s", bench_usage);
    cfg_config *cfg = malloc(sizeof *cfg);
    int32_t *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    int32_t *gen = malloc((size_t)n_gen * sizeof *gen);
    sess *s = calloc(1, sizeof *s);
    int st = MOERT_OK;
    if (!cfg || !prompt || !gen || !s) {
        st = err_set(err, MOERT_ENOMEM, "out of memory");
        goto done;
    }
    if ((st = cli_load_config(path, &ov, 0, cfg, err)))
        goto done;
    cfg->trace.enabled = false;
    if (cfg->rt.max_seq_len < n_prompt + n_gen) {
        cfg->rt.max_seq_len = n_prompt + n_gen;
    }
    if (cfg->rt.prefill_chunk > cfg->rt.max_seq_len)
        cfg->rt.prefill_chunk = cfg->rt.max_seq_len;
    uint64_t x = 0x5eed;
    for (int64_t i = 0; i < n_prompt; i++) { /* SplitMix64: a fixed, ordinary-looking prompt */
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        prompt[i] = (int32_t)((z ^ (z >> 31)) % (uint64_t)cfg->topo.vocab_size);
    }
    bench_run plain = {0}, traced = {0};
    if ((st = one_run(cfg, prompt, n_prompt, n_gen, gen, s, &plain, profile, (int)repeat,
                      check_weights ? SESS_CHECK_WEIGHTS : 0, err)))
        goto done;
    if (profile) {
        for (int phase = 0; phase < 2; phase++) {
            double total = 0;
            for (int k = 0; k < SCHED_KIND_COUNT; k++)
                total += s->prof.seconds[phase][k];
            double per = phase ? (double)(plain.decode_steps ? plain.decode_steps : 1) : 1.0;
            fprintf(stderr, "%s profile (host clock per op, %s):\n", phase ? "decode" : "prefill",
                    phase ? "ms per step" : "ms in total");
            for (int k = 0; k < SCHED_KIND_COUNT; k++)
                if (s->prof.calls[phase][k])
                    fprintf(stderr, "  %-13s %9.3f ms  %5.1f%%  (%lld calls)\n",
                            sched_kind_name((sched_kind)k), 1e3 * s->prof.seconds[phase][k] / per,
                            100 * s->prof.seconds[phase][k] / (total > 0 ? total : 1),
                            (long long)s->prof.calls[phase][k]);
        }
    }
    uint64_t active = model_active_bytes_per_token(&s->weights);
    uint64_t weight_bytes = s->weights.total_bytes;
    int32_t threads = s->threads;
    char device[256];
    double bw;
    const char *bw_method;
    if (s->be.vt->copy_bandwidth_gbs) {
        snprintf(device, sizeof device, "%s", s->be.vt->device_name ? s->be.vt->device_name(&s->be) : "GPU");
        bw = s->be.vt->copy_bandwidth_gbs(&s->be, err);
        bw_method = "device-to-device copy, bytes read + written";
    } else {
        cpu_model_name(device, sizeof device);
        bw = plain.bw_gbs;
        bw_method = "read of 1 GiB (huge pages, like the weights) by all threads, best of 3, "
                    "probed before each measured run; the fraction is the median of the runs' own";
    }
    const char *backend_name = s->be.vt->name;
    sess_close(s);
    if (trace_overhead) {
        cfg->trace.enabled = true;
        cfg->trace.mode = CFG_TRACE_STATS;
        cfg->trace.positions = CFG_TRACE_LAST;
        cfg->trace.stages = (1u << CFG_STAGE_COUNT) - 1;
        cfg->trace.all_layers = true;
        /* rings that hold every record of the session (the warm-up's and each run's: one per
         * ring for the prompt, one per decode step), as a user sizes them for a run; a ring
         * that overwrites takes host-fed steps (sess_generate) */
        cfg->trace.capacity = BENCH_WARM_GEN + repeat * n_gen;
        if ((st = one_run(cfg, prompt, n_prompt, n_gen, gen, s, &traced, false, (int)repeat, 0, err)))
            goto done;
        sess_close(s);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double roofline = active ? bw * 1e9 / (double)active : 0;
    double frac = plain.fraction > 0 ? plain.fraction : roofline > 0 ? plain.decode_tps / roofline : 0;
    double overhead = trace_overhead && plain.decode_s > 0
                          ? (traced.decode_s - plain.decode_s) / plain.decode_s
                          : 0;
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "config", json_string(path));
        json_object_set_new(o, "build", ver_json());
        json_object_set_new(o, "backend", json_string(backend_name));
        json_object_set_new(o, "device", json_string(device));
        json_object_set_new(o, "threads", json_integer(threads));
        json_object_set_new(o, "numerics", json_string(cfg_numerics_names[cfg->rt.numerics]));
        json_object_set_new(o, "batch_invariant", json_boolean(cfg->rt.batch_invariant));
        json_object_set_new(o, "prompt_tokens", json_integer(n_prompt));
        json_object_set_new(o, "decode_tokens", json_integer(plain.decode_steps));
        json_object_set_new(o, "repeat", json_integer(repeat));
        json_object_set_new(o, "prefill_tokens_per_s", json_real(plain.prefill_tps));
        json_object_set_new(o, "decode_tokens_per_s", json_real(plain.decode_tps));
        json_object_set_new(o, "prefill_tokens_per_s_range", json_pack("[f,f]", plain.prefill_min, plain.prefill_max));
        json_object_set_new(o, "decode_tokens_per_s_range", json_pack("[f,f]", plain.decode_min, plain.decode_max));
        json_object_set_new(o, "active_weight_bytes_per_token", json_integer((json_int_t)active));
        json_object_set_new(o, "decode_weight_read_GBps", json_real(plain.decode_tps * (double)active / 1e9));
        json_object_set_new(o, "memory_bandwidth_GBps", json_real(bw));
        json_object_set_new(o, "bandwidth_method", json_string(bw_method));
        json_object_set_new(o, "roofline_tokens_per_s", json_real(roofline));
        json_object_set_new(o, "roofline_fraction", json_real(frac));
        if (plain.fraction > 0)
            json_object_set_new(o, "roofline_fraction_range", json_pack("[f,f]", plain.fraction_min, plain.fraction_max));
        json_object_set_new(o, "weight_bytes", json_integer((json_int_t)weight_bytes));
        json_object_set_new(o, "arena_bytes", json_integer((json_int_t)plain.arena_bytes));
        json_object_set_new(o, "init_seconds", json_real(plain.init_s));
        json_object_set_new(o, "peak_rss_bytes", json_integer((json_int_t)ru.ru_maxrss * 1024));
        if (trace_overhead) {
            json_object_set_new(o, "traced_decode_tokens_per_s", json_real(traced.decode_tps));
            json_object_set_new(o, "traced_prefill_tokens_per_s", json_real(traced.prefill_tps));
            json_object_set_new(o, "trace_decode_overhead", json_real(overhead));
            json_object_set_new(o, "traced_fed_steps", json_integer((json_int_t)traced.fed_steps));
        }
        st = cli_print_json(o, JSON_INDENT(1), err);
    } else {
        printf("bench %s on %s (%s, %d threads, numerics %s)\n", path, device, backend_name, threads,
               cfg_numerics_names[cfg->rt.numerics]);
        printf("  prefill  %6lld tokens  %9.1f tok/s  (median of %lld; %.1f .. %.1f)\n", (long long)n_prompt,
               plain.prefill_tps, (long long)repeat, plain.prefill_min, plain.prefill_max);
        printf("  decode   %6lld tokens  %9.1f tok/s  (median of %lld; %.1f .. %.1f; %.2f GB/s of weights: %.1f MB per token)\n",
               (long long)plain.decode_steps, plain.decode_tps, (long long)repeat, plain.decode_min,
               plain.decode_max, plain.decode_tps * (double)active / 1e9, (double)active / 1e6);
        printf("  memory bandwidth %.1f GB/s (%s): roofline %.1f tok/s, decode at %.1f%%", bw,
               bw_method, roofline, 100 * frac);
        if (plain.fraction > 0)
            printf(" (runs %.1f%% .. %.1f%%)", 100 * plain.fraction_min, 100 * plain.fraction_max);
        printf("\n");
        if (trace_overhead)
            printf("  with stats tracing of every stage: decode %.1f tok/s (%+.1f%%), prefill %.1f tok/s\n",
                   traced.decode_tps, 100 * overhead, traced.prefill_tps);
        printf("  weights %.1f MB, arena %.1f MB, peak RSS %.1f MB, init %.2f s\n",
               (double)weight_bytes / 1e6, (double)plain.arena_bytes / 1e6,
               (double)ru.ru_maxrss / 1024.0, plain.init_s);
    }
done:
    free(cfg);
    free(prompt);
    free(gen);
    free(s);
    return st;
}
