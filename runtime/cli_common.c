#include "cli_common.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out,
                  moert_err *err)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno == ERANGE)
        return err_set(err, MOERT_EUSAGE, "%s: expected an integer, got '%s'", flag, s);
    if (v < lo || v > hi)
        return err_set(err, MOERT_EUSAGE, "%s: %lld is outside [%lld, %lld]", flag, v,
                       (long long)lo, (long long)hi);
    *out = v;
    return MOERT_OK;
}

int cli_parse_f64(const char *flag, const char *s, double lo, double hi, double *out,
                  moert_err *err)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno == ERANGE || !isfinite(v))
        return err_set(err, MOERT_EUSAGE, "%s: expected a number, got '%s'", flag, s);
    if (v < lo || v > hi)
        return err_set(err, MOERT_EUSAGE, "%s: %g is outside [%g, %g]", flag, v, lo, hi);
    *out = v;
    return MOERT_OK;
}

int cli_parse_ids(const char *flag, const char *s, int32_t *ids, int64_t cap, int64_t *n,
                  moert_err *err)
{
    *n = 0;
    const char *p = s;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
            p++;
        if (!*p)
            break;
        char *end = NULL;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno == ERANGE || v < 0 || v > INT32_MAX ||
            (*end && *end != ',' && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r'))
            return err_set(err, MOERT_EUSAGE,
                           "%s: expected non-negative integer ids separated by commas, bad input at offset %ld: '%.20s'",
                           flag, (long)(p - s), p);
        if (*n >= cap)
            return err_set(err, MOERT_EUSAGE, "%s: more than %lld ids", flag, (long long)cap);
        ids[(*n)++] = (int32_t)v;
        p = end;
    }
    if (*n == 0)
        return err_set(err, MOERT_EUSAGE, "%s: no ids given", flag);
    return MOERT_OK;
}

int cli_take_override(int argc, char **argv, int *i, cli_overrides *o, moert_err *err)
{
    static const struct {
        const char *flag;
        size_t off;
    } table[] = {
        {"--threads", offsetof(cli_overrides, threads)},
        {"--prefill-chunk", offsetof(cli_overrides, prefill_chunk)},
        {"--max-seq-len", offsetof(cli_overrides, max_seq_len)},
        {"--backend", offsetof(cli_overrides, backend)},
        {"--weights", offsetof(cli_overrides, weights)},
        {"--seed", offsetof(cli_overrides, seed)},
        {"--temp", offsetof(cli_overrides, temp)},
        {"--top-k", offsetof(cli_overrides, top_k)},
        {"--top-p", offsetof(cli_overrides, top_p)},
        {"--trace", offsetof(cli_overrides, trace_file)},
        {"--trace-mode", offsetof(cli_overrides, trace_mode)},
        {"--trace-positions", offsetof(cli_overrides, trace_positions)},
        {"--contract", offsetof(cli_overrides, contract)},
    };
    for (size_t t = 0; t < sizeof table / sizeof table[0]; t++) {
        if (strcmp(argv[*i], table[t].flag) != 0)
            continue;
        if (*i + 1 >= argc) {
            err_set(err, MOERT_EUSAGE, "%s needs a value", table[t].flag);
            return -1;
        }
        *(const char **)((char *)o + table[t].off) = argv[*i + 1];
        *i += 2;
        return 1;
    }
    return 0;
}

static int path_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

int cli_load_config(const char *path, const cli_overrides *o, unsigned cfg_flags, cfg_config *cfg,
                    moert_err *err)
{
    if (o->weights)
        cfg_flags |= CFG_ALLOW_MISSING_WEIGHTS; /* the override replaces them */
    int st = cfg_load_ex(path, cfg_flags, cfg, err);
    if (st)
        return st;
    int64_t v;
    double d;
    if (o->threads) {
        if ((st = cli_parse_i64("--threads", o->threads, 1, 1024, &v, err)))
            return st;
        cfg->rt.threads = (int32_t)v;
    }
    bool chunk_given = o->prefill_chunk != NULL;
    if (o->prefill_chunk) {
        if ((st = cli_parse_i64("--prefill-chunk", o->prefill_chunk, 1, 1 << 20, &v, err)))
            return st;
        cfg->rt.prefill_chunk = v;
    }
    if (o->max_seq_len) {
        if ((st = cli_parse_i64("--max-seq-len", o->max_seq_len, 1, 1 << 24, &v, err)))
            return st;
        cfg->rt.max_seq_len = v;
    }
    if (cfg->rt.prefill_chunk > cfg->rt.max_seq_len) {
        if (chunk_given)
            return err_set(err, MOERT_EUSAGE, "--prefill-chunk %lld exceeds max_seq_len %lld",
                           (long long)cfg->rt.prefill_chunk, (long long)cfg->rt.max_seq_len);
        cfg->rt.prefill_chunk = cfg->rt.max_seq_len;
    }
    if (o->backend) {
        if (!strcmp(o->backend, "cpu"))
            cfg->rt.backend = CFG_BACKEND_CPU;
        else if (!strcmp(o->backend, "hip"))
            cfg->rt.backend = CFG_BACKEND_HIP;
        else
            return err_set(err, MOERT_EUSAGE, "--backend: expected cpu or hip, got '%s'",
                           o->backend);
    }
    if (o->weights) {
        if (!path_exists(o->weights))
            return err_set(err, MOERT_EUSAGE, "--weights: %s does not exist", o->weights);
        cfg->weights.synth = false;
        snprintf(cfg->weights.path, sizeof cfg->weights.path, "%s", o->weights);
    } else if (!cfg->weights.synth && !path_exists(cfg->weights.path) &&
               !(cfg_flags & CFG_ALLOW_MISSING_WEIGHTS)) {
        return err_set(err, MOERT_EUSAGE, "weights %s do not exist", cfg->weights.path);
    }
    if (o->seed) {
        if ((st = cli_parse_i64("--seed", o->seed, 0, INT64_MAX, &v, err)))
            return st;
        cfg->sampling.seed = (uint64_t)v;
    }
    if (o->temp) {
        if ((st = cli_parse_f64("--temp", o->temp, 0.0, 1e6, &d, err)))
            return st;
        cfg->sampling.temperature = d;
    }
    if (o->top_k) {
        if ((st = cli_parse_i64("--top-k", o->top_k, 0, INT32_MAX, &v, err)))
            return st;
        cfg->sampling.top_k = (int32_t)v;
    }
    if (o->top_p) {
        if ((st = cli_parse_f64("--top-p", o->top_p, 0.0, 1.0, &d, err)))
            return st;
        if (d <= 0.0)
            return err_set(err, MOERT_EUSAGE, "--top-p: must be in (0, 1], got %s", o->top_p);
        cfg->sampling.top_p = d;
    }
    if ((o->trace_mode || o->trace_positions) && !o->trace_file && !cfg->trace.enabled)
        return err_set(err, MOERT_EUSAGE,
                       "--trace-mode / --trace-positions need --trace FILE (or a trace plan enabled in %s)",
                       path);
    if (o->trace_file) {
        cfg->trace.enabled = true;
        snprintf(cfg->trace.out_path, sizeof cfg->trace.out_path, "%s", o->trace_file);
    }
    if (o->trace_mode) {
        if (!strcmp(o->trace_mode, "stats"))
            cfg->trace.mode = CFG_TRACE_STATS;
        else if (!strcmp(o->trace_mode, "tensor"))
            cfg->trace.mode = CFG_TRACE_TENSOR;
        else
            return err_set(err, MOERT_EUSAGE, "--trace-mode: expected stats or tensor, got '%s'",
                           o->trace_mode);
    }
    if (o->trace_positions) {
        if (!strcmp(o->trace_positions, "last"))
            cfg->trace.positions = CFG_TRACE_LAST;
        else if (!strcmp(o->trace_positions, "all"))
            cfg->trace.positions = CFG_TRACE_ALL;
        else
            return err_set(err, MOERT_EUSAGE, "--trace-positions: expected last or all, got '%s'",
                           o->trace_positions);
    }
    if (o->contract) {
        if (!path_exists(o->contract))
            return err_set(err, MOERT_EUSAGE, "--contract: %s does not exist", o->contract);
        snprintf(cfg->contract_path, sizeof cfg->contract_path, "%s", o->contract);
    }
    if (cfg->trace.enabled && !cfg->trace.out_path[0])
        return err_set(err, MOERT_EUSAGE,
                       "%s: the trace plan is enabled but names no output file (trace.out or --trace FILE)",
                       path);
    return MOERT_OK;
}

int cli_print_json(json_t *o, size_t flags, moert_err *err)
{
    char *txt = json_dumps(o, flags);
    json_decref(o);
    if (!txt)
        return err_set(err, MOERT_ENOMEM, "out of memory (JSON output)");
    puts(txt);
    free(txt);
    return MOERT_OK;
}
