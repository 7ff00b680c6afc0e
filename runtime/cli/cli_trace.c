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
            printf("FAIL %s record %lld (layer %lld, step %lld, position %lld): %s: %s\n",
                   json_string_value(json_object_get(o, "stage")), (long long)json_integer_value(rec),
                   json_object_get(o, "layer") ? (long long)json_integer_value(json_object_get(o, "layer")) : -1LL,
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
            puts("usage: moert validate CONTRACT TRACE [--allow-drops] [--json] [--junit FILE]\n"
                 "  exit 0: every record satisfies the contract; 1: violations (listed); 2: unusable input.\n"
                 "  Records dropped by a full ring are a violation unless --allow-drops; rules a stats-mode\n"
                 "  trace cannot prove are listed as not checked (JUnit: <skipped>).");
            return MOERT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--allow-drops")) {
            vo.allow_drops = true;
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
        static const char *const sn[TRACE_N_STATS] = {"count", "l2", "mean", "std", "min", "max", "nan", "inf"};
        if (d->count_differs)
            printf(": the recording holds %lld records here, the replay %lld\n", (long long)rv->n,
                   (long long)r->rec.rings[d->ring].n);
        else if (d->have_values)
            printf(": cosine %.9f, max abs error %.6g, relative error %.6g%s\n", d->cos, d->max_abs, d->rel,
                   d->experts_differ ? ", other experts chosen" : "");
        else if (d->stat >= 0)
            printf(": stat %s recorded %.17g, replayed %.17g (relative difference %.3g; record in tensor mode for "
                   "cosine)\n", sn[d->stat], d->stat_rec, d->stat_rep, d->rel);
        else
            printf(": record hash %016llx, replayed %016llx; every stat is identical, so the values differ by less "
                   "than the stats resolve (record in tensor mode to see them)\n",
                   (unsigned long long)d->hash_rec, (unsigned long long)d->hash_rep);
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
        json_t *fd = json_pack("{sI si ss ss sI sI sb sb sb}", "step", (json_int_t)d->step, "layer", rv->layer, "stage",
                               cfg_stage_name(rv->stage), "label", rv->label, "position", (json_int_t)d->pos, "record",
                               (json_int_t)d->record, "values", (int)d->have_values, "experts_differ",
                               (int)d->experts_differ, "count_differs", (int)d->count_differs);
        if (d->have_values) {
            json_object_set_new(fd, "cosine", json_real(d->cos));
            json_object_set_new(fd, "max_abs_error", json_real(isfinite(d->max_abs) ? d->max_abs : -1.0));
            json_object_set_new(fd, "rel_err", json_real(isfinite(d->rel) ? d->rel : -1.0));
        }
        if (d->stat >= 0) {
            static const char *const sn[TRACE_N_STATS] = {"count", "l2", "mean", "std", "min", "max", "nan", "inf"};
            json_object_set_new(fd, "stat", json_pack("{ss sf sf}", "name", sn[d->stat], "recorded", d->stat_rec,
                                                      "replayed", d->stat_rep));
        }
        char hx[2][20];
        snprintf(hx[0], sizeof hx[0], "%016llx", (unsigned long long)d->hash_rec);
        snprintf(hx[1], sizeof hx[1], "%016llx", (unsigned long long)d->hash_rep);
        json_object_set_new(fd, "hash", json_pack("{ss ss}", "recorded", hx[0], "replayed", hx[1]));
        json_object_set_new(o, "first_divergence", fd);
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
        return err_set(err, MOERT_EUSAGE, "usage: moert replay TRACE [--tolerance X] [--backend B] [--threads N] [--gpus N]");
    if (ov.trace_file || ov.trace_mode || ov.trace_positions || ov.seed || ov.temp || ov.top_k || ov.top_p ||
        ov.contract || ov.numerics || ov.batch_invariant)
        return err_set(err, MOERT_EUSAGE, "replay takes the trace plan, contract, numerics, batch invariance and sampling from the recording");
    trace_replay r;
    int st = trace_replay_open(path, &r, err);
    if (st)
        return st;
    cfg_config *cfg = r.cfg;
    /* Command-line overrides: backend, threads, chunking, gpus, weights (the recorded
     * weights path need not exist here: the run names it if it is missing). */
    if ((st = cli_apply_runtime(&ov, CFG_ALLOW_MISSING_WEIGHTS, cfg, err)))
        goto done;
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

static double num(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : json_is_string(v) ? INFINITY : NAN;
}

static long long nth(const json_t *o, const char *key, size_t i)
{
    return (long long)json_integer_value(json_array_get(json_object_get(o, key), i));
}

static void print_stats_diffs(const json_t *arr)
{
    size_t k;
    json_t *d;
    json_array_foreach(arr, k, d)
        printf("%s %s %.9g vs %.9g", k ? "," : "", json_string_value(json_object_get(d, "stat")), num(d, "a"),
               num(d, "b"));
}

static void print_diff(const json_t *rep)
{
    const json_t *stages = json_object_get(rep, "stages"), *nu = json_object_get(rep, "numerics");
    const char *nua = json_string_value(json_array_get(nu, 0)), *nub = json_string_value(json_array_get(nu, 1));
    if (nua && nub && strcmp(nua, nub))
        printf("numerics: a %s, b %s\n", nua, nub);
    printf("%-22s %6s %14s %12s %12s %11s %11s %8s  %s\n", "stage", "rows", "cosine", "rel_err", "max_abs",
           "nan a/b", "inf a/b", "top-k", "verdict");
    size_t i, k;
    json_t *o, *x;
    json_array_foreach(stages, i, o)
    {
        bool vals = !strcmp(json_string_value(json_object_get(o, "compared")) ? json_string_value(json_object_get(o, "compared")) : "", "values");
        json_t *tk = json_object_get(o, "topk_agreement");
        printf("%-22s %6lld", json_string_value(json_object_get(o, "name")),
               (long long)json_integer_value(json_object_get(o, "rows")));
        char na[32] = "-", ni[32] = "-";
        if (vals) {
            snprintf(na, sizeof na, "%lld/%lld", nth(o, "nan", 0), nth(o, "nan", 1));
            snprintf(ni, sizeof ni, "%lld/%lld", nth(o, "inf", 0), nth(o, "inf", 1));
            printf(" %14.10f %12.3e %12.3e %11s %11s", num(o, "cos"), num(o, "rel_err"), num(o, "max_abs"), na, ni);
        } else if (json_object_get(o, "identical")) {
            printf(" %14s %12s %12s %11s %11s", json_is_true(json_object_get(o, "identical")) ? "stats: same" : "stats: differ",
                   "-", "-", "-", "-");
        } else {
            printf(" %14s %12s %12s %11s %11s", "-", "-", "-", "-", "-");
        }
        if (tk)
            printf(" %7.1f%%", 100 * json_real_value(tk));
        else
            printf(" %8s", "-");
        printf("  %s\n", json_is_true(json_object_get(o, "beyond_tolerance")) ? "BEYOND" : "ok");
        const json_t *fr = json_object_get(o, "first_divergent_record");
        if (fr) {
            printf("    first divergent record %lld (step %lld, position %lld):",
                   (long long)json_integer_value(json_object_get(fr, "record")),
                   (long long)json_integer_value(json_object_get(fr, "step")),
                   (long long)json_integer_value(json_object_get(fr, "position")));
            if (json_array_size(json_object_get(fr, "stats")))
                print_stats_diffs(json_object_get(fr, "stats"));
            else
                printf(" the hashes differ, every stat is identical");
            printf(" (%lld records differ)\n", (long long)json_integer_value(json_object_get(o, "records_differing")));
        }
        json_array_foreach(json_object_get(o, "topk_flips"), k, x)
        {
            if (k == 20) {
                printf("    ... %lld positions differ in all\n",
                       (long long)json_integer_value(json_object_get(o, "topk_positions_differing")));
                break;
            }
            printf("    top-k differs at step %lld, position %lld: %lld of the experts agree",
                   (long long)json_integer_value(json_object_get(x, "step")),
                   (long long)json_integer_value(json_object_get(x, "position")),
                   (long long)json_integer_value(json_object_get(x, "agree")));
            if (json_object_get(x, "margin_a"))
                printf("; router-logit margin k/k+1: a %.3g", num(x, "margin_a"));
            if (json_object_get(x, "margin_b"))
                printf("%s b %.3g", json_object_get(x, "margin_a") ? "," : "; router-logit margin k/k+1:", num(x, "margin_b"));
            printf("\n");
        }
        json_array_foreach(json_object_get(o, "positions"), k, x)
        {
            printf("    step %4lld position %5lld:", (long long)json_integer_value(json_object_get(x, "step")),
                   (long long)json_integer_value(json_object_get(x, "position")));
            if (json_object_get(x, "cos"))
                printf(" cosine %.10f rel_err %.3e max_abs %.3e nan %lld/%lld inf %lld/%lld", num(x, "cos"),
                       num(x, "rel_err"), num(x, "max_abs"), nth(x, "nan", 0), nth(x, "nan", 1), nth(x, "inf", 0),
                       nth(x, "inf", 1));
            else
                print_stats_diffs(json_object_get(x, "stats"));
            printf("%s\n", json_is_true(json_object_get(x, "beyond")) ? "  BEYOND" : "");
        }
    }
    const json_t *gd = json_object_get(rep, "generated_ids_differ_at");
    if (gd)
        printf("note: the runs generated different tokens from generated token %lld on: later steps saw other "
               "inputs\n", (long long)json_integer_value(gd));
    const json_t *fd = json_object_get(rep, "first_divergence");
    double tol = num(rep, "tolerance"), atol = num(rep, "atol");
    if (fd) {
        const json_t *at = json_object_get(fd, "at");
        printf("first divergence: %s", json_string_value(json_object_get(fd, "stage")));
        if (at)
            printf(" at step %lld, position %lld", (long long)json_integer_value(json_object_get(at, "step")),
                   (long long)json_integer_value(json_object_get(at, "position")));
        printf(" (tolerance %g%s", tol, atol > 0 ? "" : ")\n");
        if (atol > 0)
            printf(", atol %g)\n", atol);
    } else {
        printf("every stage within tolerance %g%s\n", tol, tol == 0 ? " (bit-identical)" : "");
    }
}

int cli_diff(int argc, char **argv, moert_err *err)
{
    const char *pa = NULL, *pb = NULL;
    bool json = false;
    trace_diff_opts dopt = {.rtol = -1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: moert diff A B [--tolerance X] [--atol Y] [--positions] [--force] [--json]\n"
                 "  per-stage cosine, relative L2 error ||A-B||/||B||, max abs error and NaN/Inf counts of two\n"
                 "  traces, or of a trace and a HF reference file (e.g. reference.safetensors); rows are matched\n"
                 "  by position; for routers, the top-k expert agreement and where it differs the router-logit\n"
                 "  margin; stats-mode traces by record hashes and stats.\n"
                 "  exit 0: every stage within tolerance (default: bit-identical for two traces, 1e-5 relative\n"
                 "  against a reference); 1: some stage beyond it; 2: the inputs cannot be compared (different\n"
                 "  prompts, topologies, weights or models: --force compares anyway)");
            return MOERT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--positions")) {
            dopt.positions = true;
        } else if (!strcmp(argv[i], "--force")) {
            dopt.force = true;
        } else if (!strcmp(argv[i], "--tolerance") || !strcmp(argv[i], "--atol")) {
            double *dst = argv[i][2] == 't' ? &dopt.rtol : &dopt.atol;
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "%s needs a value", argv[i]);
            if (cli_parse_f64(argv[i], argv[i + 1], 0, 1e30, dst, err))
                return err->code;
            i++;
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
        return err_set(err, MOERT_EUSAGE, "usage: moert diff A B [--tolerance X] [--atol Y] [--positions] [--force] [--json]");
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
