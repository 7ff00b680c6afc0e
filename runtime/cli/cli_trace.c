/* moert validate | replay | diff: argument parsing and printing for the trace engines in
 * runtime/trace/ (validate.h, replay.h, diff.h).
 *
 * validate: a trace against a contract.  Exit 0 pass, 1 violations, 2 unusable input.
 * replay:   re-runs a recorded run and compares every record.  Exit 0 / 1 / 2.
 * diff:     per-stage comparison of two traces, or of a trace and a HF reference file.
 */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../afile.h"
#include "../trace/diff.h"
#include "../trace/replay.h"
#include "../trace/validate.h"
#include "cli.h"
#include "cli_common.h"

/* ---- validate ---------------------------------------------------------------------- */

static void print_validate(const json_t *rep)
{
    size_t k, nv = (size_t)json_integer_value(json_object_get(rep, "violation_count"));
    json_t *o;
    json_array_foreach(json_object_get(rep, "violations"), k, o)
    {
        if (k == 50) {
            printf("... and %zu more violations\n", nv - 50);
            break;
        }
        json_t *rec = json_object_get(o, "record");
        if (json_integer_value(rec) >= 0)
            printf("FAIL %s record %lld (step %lld, position %lld): %s: %s\n",
                   json_string_value(json_object_get(o, "stage")), (long long)json_integer_value(rec),
                   (long long)json_integer_value(json_object_get(o, "step")),
                   (long long)json_integer_value(json_object_get(o, "position")),
                   json_string_value(json_object_get(o, "rule")), json_string_value(json_object_get(o, "detail")));
        else
            printf("FAIL %s: %s: %s\n", json_string_value(json_object_get(o, "stage")),
                   json_string_value(json_object_get(o, "rule")), json_string_value(json_object_get(o, "detail")));
    }
    json_array_foreach(json_object_get(rep, "skipped"), k, o)
        printf("not checked %s: %s (%s)\n", json_string_value(json_object_get(o, "stage")),
               json_string_value(json_object_get(o, "rule")), json_string_value(json_object_get(o, "why")));
    printf("%s: %lld records in %zu stages, %lld checks against contract %s v%lld: %zu violations\n",
           nv ? "FAIL" : "PASS", (long long)json_integer_value(json_object_get(rep, "records")),
           json_array_size(json_object_get(rep, "stages")),
           (long long)json_integer_value(json_object_get(rep, "checks")),
           json_string_value(json_object_get(rep, "contract")),
           (long long)json_integer_value(json_object_get(rep, "version")), nv);
}

int cli_validate(int argc, char **argv, moert_err *err)
{
    const char *contract_path = NULL, *trace_path = NULL, *junit = NULL;
    bool json = false;
    trace_vopts vo = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: moert validate CONTRACT TRACE [--json] [--junit FILE]\n"
                 "  exit 0: every record satisfies the contract; 1: violations (listed); 2: unusable input");
            return MOERT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--junit")) {
            if (++i >= argc)
                return err_set(err, MOERT_EUSAGE, "--junit needs a file");
            junit = argv[i];
        } else if (argv[i][0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s", argv[i]);
        } else if (!contract_path) {
            contract_path = argv[i];
        } else if (!trace_path) {
            trace_path = argv[i];
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!trace_path)
        return err_set(err, MOERT_EUSAGE, "usage: moert validate CONTRACT TRACE [--json] [--junit FILE]");
    json_t *rep = NULL;
    int st = trace_validate(contract_path, trace_path, &vo, &rep, err);
    if (!rep)
        return st;
    moert_err e2 = {0};
    int pst = MOERT_OK;
    if (json)
        pst = cli_print_json(json_incref(rep), JSON_INDENT(1), &e2);
    else
        print_validate(rep);
    if (!pst && junit) {
        char *x = trace_junit_xml(rep);
        pst = x ? afile_write_whole(junit, x, strlen(x), &e2) : err_set(&e2, MOERT_ENOMEM, "out of memory");
        free(x);
    }
    json_decref(rep);
    if (pst) {
        *err = e2;
        return pst;
    }
    return st;
}

/* ---- replay ------------------------------------------------------------------------- */

static void print_replay(const trace_replay *r, const trace_replay_result *res, double tol)
{
    const trace_divergence *d = &res->d;
    if (res->match) {
        if (tol > 0)
            printf("match within tolerance %g: %lld records, %lld generated tokens\n", tol,
                   (long long)res->n_records, (long long)r->n_gen);
        else
            printf("bit-exact: %lld records in %zu stages, %lld generated tokens identical\n",
                   (long long)res->n_records, r->rec.n_rings, (long long)r->n_gen);
        return;
    }
    if (d->found) {
        const trace_ring_view *rv = &r->rec.rings[d->ring];
        printf("first divergence: step %lld, layer %s%d, stage %s (%s, position %lld)", (long long)d->step,
               rv->layer >= 0 ? "" : "-", rv->layer >= 0 ? rv->layer : 1, cfg_stage_name(rv->stage), rv->label,
               (long long)d->pos);
        if (d->have_values)
            printf(": cosine %.9f, max abs error %.6g\n", d->cos, d->max_abs);
        else
            printf(": stats differ (relative L2 difference %.3g; record in tensor mode for cosine)\n", d->rel);
    }
    if (res->token_mismatch >= 0)
        printf("generated token %lld: replay samples %d, the recording has %d\n", (long long)res->token_mismatch,
               res->sampled, res->recorded);
}

static json_t *replay_json(const trace_replay *r, const trace_replay_result *res, double tol)
{
    const trace_divergence *d = &res->d;
    json_t *o = json_pack("{ss sb sI sI}", "trace", r->path, "match", res->match, "records",
                          (json_int_t)res->n_records, "generated_tokens", (json_int_t)r->n_gen);
    json_object_set_new(o, "tolerance", json_real(tol));
    if (d->found) {
        const trace_ring_view *rv = &r->rec.rings[d->ring];
        json_object_set_new(o, "first_divergence",
                            json_pack("{sI si ss ss sI sf sf sb}", "step", (json_int_t)d->step, "layer", rv->layer,
                                      "stage", cfg_stage_name(rv->stage), "label", rv->label, "position",
                                      (json_int_t)d->pos, "cosine", d->cos, "max_abs_error",
                                      isfinite(d->max_abs) ? d->max_abs : -1.0, "values", (int)d->have_values));
    }
    if (res->token_mismatch >= 0)
        json_object_set_new(o, "token_mismatch",
                            json_pack("{sI si si}", "index", (json_int_t)res->token_mismatch, "sampled",
                                      res->sampled, "recorded", res->recorded));
    return o;
}

int cli_replay(int argc, char **argv, moert_err *err)
{
    cli_overrides ov = {0};
    const char *path = NULL;
    trace_replay_opts ro = {0};
    bool json = false;
    for (int i = 1; i < argc;) {
        int t = cli_take_override(argc, argv, &i, &ov, err);
        if (t < 0)
            return MOERT_EUSAGE;
        if (t > 0)
            continue;
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: moert replay TRACE [--tolerance X] [--backend cpu|hip] [--threads N]\n"
                 "                    [--prefill-chunk K] [--weights PATH [--force]] [--check-weights] [--json]\n"
                 "  re-runs the recorded run and compares every record: `bit-exact` (exit 0), or the\n"
                 "  first divergent (step, layer, stage) with cosine and max abs error (exit 1).\n"
                 "  --force replays even when the weights' fingerprint differs from the recording.");
            return MOERT_OK;
        } else if (!strcmp(a, "--tolerance")) {
            if (i + 1 >= argc || cli_parse_f64("--tolerance", argv[i + 1], 0, 1e30, &ro.tolerance, err))
                return err->code ? err->code : err_set(err, MOERT_EUSAGE, "--tolerance needs a value");
            i++;
        } else if (!strcmp(a, "--force")) {
            ro.force = true;
        } else if (!strcmp(a, "--check-weights")) {
            ro.check_weights = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (a[0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s", a);
        } else if (!path) {
            path = a;
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'", a);
        }
        i++;
    }
    if (!path)
        return err_set(err, MOERT_EUSAGE, "usage: moert replay TRACE [--tolerance X] [--backend B] [--threads N]");
    if (ov.trace_file || ov.trace_mode || ov.trace_positions || ov.seed || ov.temp || ov.top_k || ov.top_p)
        return err_set(err, MOERT_EUSAGE, "replay takes the trace plan and sampling from the recording");
    trace_replay r;
    int st = trace_replay_open(path, &r, err);
    if (st)
        return st;
    cfg_config *cfg = r.cfg;
    /* Command-line overrides: backend, threads, chunking, weights. */
    int64_t k;
    if (ov.threads && (st = cli_parse_i64("--threads", ov.threads, 1, 1024, &k, err)))
        goto done;
    if (ov.threads)
        cfg->rt.threads = (int32_t)k;
    if (ov.prefill_chunk) {
        if ((st = cli_parse_i64("--prefill-chunk", ov.prefill_chunk, 1, cfg->rt.max_seq_len, &k, err)))
            goto done;
        cfg->rt.prefill_chunk = k;
    }
    if (ov.backend) {
        if (strcmp(ov.backend, "cpu") && strcmp(ov.backend, "hip")) {
            st = err_set(err, MOERT_EUSAGE, "--backend: expected cpu or hip, got '%s'", ov.backend);
            goto done;
        }
        cfg->rt.backend = !strcmp(ov.backend, "hip") ? CFG_BACKEND_HIP : CFG_BACKEND_CPU;
    }
    if (ov.weights) {
        cfg->weights.synth = false;
        snprintf(cfg->weights.path, sizeof cfg->weights.path, "%s", ov.weights);
    }
    trace_replay_result res;
    if ((st = trace_replay_run(&r, &ro, &res, err)))
        goto done;
    if (res.fingerprint_forced)
        fprintf(stderr, "moert replay: weights fingerprint %s differs from the recorded %s (--force)\n", res.have,
                res.want);
    if (json)
        st = cli_print_json(replay_json(&r, &res, ro.tolerance), JSON_INDENT(1), err);
    else
        print_replay(&r, &res, ro.tolerance);
    if (!st && !res.match)
        st = err_set(err, MOERT_ECHECK, "replay of %s diverged", path);
done:
    trace_replay_close(&r);
    return st;
}

/* ---- diff --------------------------------------------------------------------------- */

static void print_diff(const json_t *rep)
{
    const json_t *stages = json_object_get(rep, "stages");
    printf("%-22s %6s %14s %12s %12s %8s\n", "stage", "rows", "cosine", "rel_err", "max_abs", "top-k");
    size_t i;
    json_t *o;
    json_array_foreach(stages, i, o)
    {
        json_t *cs = json_object_get(o, "cos"), *tk = json_object_get(o, "topk_agreement");
        printf("%-22s %6lld", json_string_value(json_object_get(o, "name")),
               (long long)json_integer_value(json_object_get(o, "rows")));
        if (cs)
            printf(" %14.10f %12.3e %12.3e", json_real_value(cs), json_real_value(json_object_get(o, "rel_err")),
                   json_real_value(json_object_get(o, "max_abs")));
        else
            printf(" %14s %12s %12s", "-", "-", "-");
        if (tk)
            printf(" %7.1f%%", 100 * json_real_value(tk));
        printf("\n");
    }
    if (!json_array_size(stages))
        printf("no stage in common (a stats-mode trace has no values to compare: record with --trace-mode tensor)\n");
}

int cli_diff(int argc, char **argv, moert_err *err)
{
    const char *pa = NULL, *pb = NULL;
    bool json = false;
    trace_diff_opts dopt = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: moert diff A B [--json]\n"
                 "  per-stage cosine, relative L2 error ||A-B||/||B|| and max abs error of two traces,\n"
                 "  or of a trace and a HF reference file (e.g. reference.safetensors); rows are matched\n"
                 "  by position; for routers, the top-k expert agreement.");
            return MOERT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (argv[i][0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s", argv[i]);
        } else if (!pa) {
            pa = argv[i];
        } else if (!pb) {
            pb = argv[i];
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'", argv[i]);
        }
    }
    if (!pb)
        return err_set(err, MOERT_EUSAGE, "usage: moert diff A B [--json]");
    json_t *rep = NULL;
    int st = trace_diff(pa, pb, &dopt, &rep, err);
    if (!rep)
        return st;
    if (json) {
        moert_err e2 = {0};
        int pst = cli_print_json(json_incref(rep), JSON_INDENT(1), &e2);
        if (pst) {
            *err = e2;
            st = pst;
        }
    } else {
        print_diff(rep);
    }
    json_decref(rep);
    return st;
}
