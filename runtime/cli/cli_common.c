#include "cli_common.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Flag values are plain decimal: no leading space or '+', no hex, nothing after. */
static bool plain_number(const char *s, bool allow_fraction)
{
    if (*s == '-')
        s++;
    if (!(*s >= '0' && *s <= '9') && !(allow_fraction && *s == '.'))
        return false;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') ||
              (allow_fraction && (*s == '.' || *s == 'e' || *s == 'E' || *s == '-' || *s == '+'))))
            return false;
    return true;
}

int cli_parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *out,
                  moert_err *err)
{
    char *end = NULL;
    errno = 0;
    long long v = plain_number(s, false) ? strtoll(s, &end, 10) : 0;
    if (!end || *end || errno == ERANGE)
        return err_set(err, MOERT_EUSAGE, "%s: expected an integer in [%lld, %lld], got '%.60s'", flag,
                       (long long)lo, (long long)hi, s);
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
    double v = plain_number(s, true) ? strtod(s, &end) : 0;
    if (!end || *end || errno == ERANGE || !isfinite(v))
        return err_set(err, MOERT_EUSAGE, "%s: expected a number in [%g, %g], got '%.60s'", flag, lo, hi, s);
    if (v < lo || v > hi)
        return err_set(err, MOERT_EUSAGE, "%s: %g is outside [%g, %g]", flag, v, lo, hi);
    *out = v;
    return MOERT_OK;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "'x'", "byte 0x00" or "the end of the input", for messages. */
static const char *found_at(const char *s, size_t len, size_t i, char *buf, size_t cap)
{
    if (i >= len)
        snprintf(buf, cap, "the end of the input");
    else if ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f)
        snprintf(buf, cap, "'%c'", s[i]);
    else
        snprintf(buf, cap, "byte 0x%02X", (unsigned char)s[i]);
    return buf;
}

int cli_parse_id_list(const char *what, const char *s, size_t len, int32_t *ids, size_t cap, size_t *n,
                      moert_err *err)
{
    *n = 0;
    size_t i = 0;
    char f[32];
    while (i < len && is_space(s[i]))
        i++;
    while (i < len) {
        if (!is_digit(s[i]))
            return err_set(err, MOERT_EUSAGE, "%s: byte offset %zu: expected a token id, found %s", what, i,
                           found_at(s, len, i, f, sizeof f));
        size_t start = i;
        int64_t v = 0;
        while (i < len && is_digit(s[i])) {
            v = v * 10 + (s[i++] - '0');
            if (v > INT32_MAX) {
                size_t end = i;
                while (end < len && is_digit(s[end]))
                    end++;
                return err_set(err, MOERT_EUSAGE, "%s: byte offset %zu: token id %.*s%s, expected at most %d", what,
                               start, (int)(end - start > 24 ? 24 : end - start), s + start,
                               end - start > 24 ? "..." : "", INT32_MAX);
            }
        }
        if (*n >= cap)
            return err_set(err, MOERT_EUSAGE, "%s: more than %zu ids", what, cap);
        ids[(*n)++] = (int32_t)v;
        /* then whitespace and/or one comma, which must be followed by another id */
        size_t sep = i;
        while (i < len && is_space(s[i]))
            i++;
        if (i < len && s[i] == ',') {
            size_t comma = i++;
            while (i < len && is_space(s[i]))
                i++;
            if (i >= len || !is_digit(s[i]))
                return err_set(err, MOERT_EUSAGE,
                               "%s: byte offset %zu: expected a token id after the comma at byte offset %zu, found %s",
                               what, i, comma, found_at(s, len, i, f, sizeof f));
        } else if (i < len && i == sep) {
            return err_set(err, MOERT_EUSAGE, "%s: byte offset %zu: expected a comma or whitespace after a token id, "
                           "found %s", what, i, found_at(s, len, i, f, sizeof f));
        }
    }
    return MOERT_OK;
}

int cli_parse_ids(const char *flag, const char *s, int32_t *ids, int64_t cap, int64_t *n,
                  moert_err *err)
{
    size_t got = 0;
    *n = 0;
    int st = cli_parse_id_list(flag, s, strlen(s), ids, cap > 0 ? (size_t)cap : 0, &got, err);
    if (st)
        return st;
    if (got == 0)
        return err_set(err, MOERT_EUSAGE, "%s: no ids given", flag);
    *n = (int64_t)got;
    return MOERT_OK;
}

int cli_read_ids(const char *what, const char *s, size_t len, int32_t **out, size_t *n_out, moert_err *err)
{
    *out = NULL;
    *n_out = 0;
    size_t i = 0;
    while (i < len && is_space(s[i]))
        i++;
    int32_t *ids = NULL;
    size_t n = 0;
    if (i < len && s[i] == '[') {
        json_error_t je;
        json_t *a = json_loadb(s, len, 0, &je);
        if (!a)
            return err_set(err, MOERT_EFORMAT, "%s:%d:%d: invalid JSON: %s", what, je.line, je.column, je.text);
        if (!json_is_array(a)) {
            json_decref(a);
            return err_set(err, MOERT_EFORMAT, "%s: expected a JSON array of token ids", what);
        }
        n = json_array_size(a);
        ids = malloc((n ? n : 1) * sizeof *ids);
        if (!ids) {
            json_decref(a);
            return err_set(err, MOERT_ENOMEM, "out of memory for %zu ids", n);
        }
        for (size_t k = 0; k < n; k++) {
            json_t *v = json_array_get(a, k);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
                json_decref(a);
                free(ids);
                return err_set(err, MOERT_EFORMAT,
                               "%s: element %zu of the array: expected a non-negative integer token id", what, k);
            }
            ids[k] = (int32_t)json_integer_value(v);
        }
        json_decref(a);
    } else {
        size_t cap = len / 2 + 1; /* every id takes a digit and a separator */
        ids = malloc(cap * sizeof *ids);
        if (!ids)
            return err_set(err, MOERT_ENOMEM, "out of memory");
        int st = cli_parse_id_list(what, s, len, ids, cap, &n, err);
        if (st) {
            free(ids);
            err->code = MOERT_EFORMAT; /* a bad file, not a bad flag */
            return MOERT_EFORMAT;
        }
    }
    *out = ids;
    *n_out = n;
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
        {"--gpus", offsetof(cli_overrides, gpus)},
        {"--numerics", offsetof(cli_overrides, numerics)},
        {"--batch-invariant", offsetof(cli_overrides, batch_invariant)},
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

/* A flag whose value is one of a config name table; the message lists the table. */
static int parse_name(const char *flag, const char *const *table, const char *val, int *out,
                      moert_err *err)
{
    *out = cfg_name_index(table, val);
    if (*out >= 0)
        return MOERT_OK;
    char list[128] = "";
    size_t n = 0;
    for (int i = 0; table[i]; i++)
        n += (size_t)snprintf(list + n, n < sizeof list ? sizeof list - n : 0, "%s%s",
                              i == 0 ? "" : table[i + 1] ? ", " : " or ", table[i]);
    return err_set(err, MOERT_EUSAGE, "%s: expected %s, got '%s'", flag, list, val);
}

int cli_apply_runtime(const cli_overrides *o, unsigned cfg_flags, cfg_config *cfg, moert_err *err)
{
    int64_t v;
    int st;
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
        int b;
        if ((st = parse_name("--backend", cfg_backend_names, o->backend, &b, err)))
            return st;
        cfg->rt.backend = (cfg_backend)b;
    }
    if (o->gpus) {
        if ((st = cli_parse_i64("--gpus", o->gpus, 1, 8, &v, err)))
            return st;
        if (!cfg_gpus_valid(v))
            return err_set(err, MOERT_EUSAGE, "--gpus: expected 1, 2, 4 or 8, got %s", o->gpus);
        cfg->rt.gpus = (int32_t)v;
    }
    if (o->numerics) {
        int n;
        if ((st = parse_name("--numerics", cfg_numerics_names, o->numerics, &n, err)))
            return st;
        cfg->rt.numerics = (cfg_numerics)n;
    }
    if (o->batch_invariant) {
        static const char *const off_on[] = {"off", "on", NULL};
        int n;
        if ((st = parse_name("--batch-invariant", off_on, o->batch_invariant, &n, err)))
            return st;
        cfg->rt.batch_invariant = n == 1;
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
    return MOERT_OK;
}

int cli_load_config(const char *path, const cli_overrides *o, unsigned cfg_flags, cfg_config *cfg,
                    moert_err *err)
{
    if (o->weights)
        cfg_flags |= CFG_ALLOW_MISSING_WEIGHTS; /* the override replaces them */
    int st = cfg_load_ex(path, cfg_flags, cfg, err);
    if (st)
        return st;
    if ((st = cli_apply_runtime(o, cfg_flags, cfg, err)))
        return st;
    int64_t v;
    double d;
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
        if ((st = cli_parse_i64("--top-k", o->top_k, 0, cfg->topo.vocab_size, &v, err)))
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
        int m;
        if ((st = parse_name("--trace-mode", cfg_trace_mode_names, o->trace_mode, &m, err)))
            return st;
        cfg->trace.mode = (cfg_trace_mode)m;
    }
    if (o->trace_positions) {
        int p;
        if ((st = parse_name("--trace-positions", cfg_trace_positions_names, o->trace_positions, &p, err)))
            return st;
        cfg->trace.positions = (cfg_trace_positions)p;
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
