/* moert validate | replay | diff: the trace tools.
 *
 * validate: a trace against a contract: every stage's shape and dtype, and the value rules,
 *           record by record.  Exit 0 pass, 1 violations, 2 unusable input.
 * replay:   re-runs a recorded run from its manifest (same weights, by fingerprint) and
 *           compares every record; prints `bit-exact` or names the first divergent
 *           (step, layer, stage).  Exit 0 / 1 / 2.
 * diff:     per-stage comparison of two traces, or of a trace and a HF reference file.
 */
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../ops/ops.h"
#include "../afile.h"
#include "cli.h"
#include "cli_common.h"
#include "../contract.h"
#include "../session.h"
#include "../trace/trace_file.h"

extern const char ctr_default_yaml[];

/* ---- shared: row comparison ---------------------------------------------------------- */

typedef struct cmp_acc {
    double dot, aa, bb, dd, max_abs;
    int64_t n, nonfinite;
} cmp_acc;

static void cmp_add(cmp_acc *c, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        if (!isfinite(x) || !isfinite(y)) {
            c->nonfinite++;
            continue;
        }
        c->dot += x * y;
        c->aa += x * x;
        c->bb += y * y;
        c->dd += (x - y) * (x - y);
        double d = fabs(x - y);
        c->max_abs = d > c->max_abs ? d : c->max_abs;
    }
    c->n += n;
}

static double cmp_cos(const cmp_acc *c)
{
    if (c->aa == 0 && c->bb == 0)
        return 1.0;
    return c->aa > 0 && c->bb > 0 ? c->dot / sqrt(c->aa * c->bb) : 0.0;
}

static double cmp_rel(const cmp_acc *c)
{
    return c->bb > 0 ? sqrt(c->dd / c->bb) : (c->dd > 0 ? INFINITY : 0.0);
}

static int write_file_atomic(const char *path, const char *text, moert_err *err)
{
    return afile_write_whole(path, text, strlen(text), err);
}

/* ---- validate ---------------------------------------------------------------------- */

typedef struct vlist {
    json_t *violations; /* [{stage, record, step, position, rule, detail}], the first VIOLATIONS_KEPT */
    json_t *skipped;    /* [{stage, rule, why}] */
    int64_t checks;
    size_t total;       /* violations found, kept or not */
} vlist;

/* A trace of a million bad rows must not cost a million JSON objects: the first ones are
 * listed, all are counted. */
#define VIOLATIONS_KEPT 10000

static void violation(vlist *v, const char *label, int64_t rec, const int64_t *meta,
                      const char *rule, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void violation(vlist *v, const char *label, int64_t rec, const int64_t *meta,
                      const char *rule, const char *fmt, ...)
{
    if (v->total++ >= VIOLATIONS_KEPT)
        return;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    json_t *o = json_object();
    json_object_set_new(o, "stage", json_string(label));
    json_object_set_new(o, "record", json_integer(rec));
    if (meta && rec >= 0) {
        json_object_set_new(o, "step", json_integer(meta[rec * 3]));
        json_object_set_new(o, "position", json_integer(meta[rec * 3 + 1]));
    }
    json_object_set_new(o, "rule", json_string(rule));
    json_object_set_new(o, "detail", json_string(detail));
    json_array_append_new(v->violations, o);
}

static void skipped(vlist *v, const char *label, const char *rule, const char *why)
{
    json_array_append_new(v->skipped, json_pack("{ss ss ss}", "stage", label, "rule", rule, "why", why));
}

static ctr_dtype st_to_ctr(st_dtype d, bool *ok)
{
    *ok = d == ST_F32 || d == ST_I32;
    return d == ST_I32 ? CTR_I32 : CTR_F32;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct id_pair {
    int32_t id;
    int64_t col;
} id_pair;

static int cmp_pair(const void *a, const void *b)
{
    const id_pair *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return (x->col > y->col) - (x->col < y->col);
}

/* The first column whose id appeared earlier in the row, or -1: O(n log n), so a row as wide
 * as the file allows cannot stall validate. */
static int64_t first_repeat(const int32_t *row, int64_t n, id_pair *pairs)
{
    for (int64_t j = 0; j < n; j++)
        pairs[j] = (id_pair){row[j], j};
    qsort(pairs, (size_t)n, sizeof *pairs, cmp_pair);
    int64_t first = -1;
    for (int64_t j = 1; j < n; j++)
        if (pairs[j].id == pairs[j - 1].id && (j < 2 || pairs[j - 2].id != pairs[j].id) &&
            (first < 0 || pairs[j].col < first))
            first = pairs[j].col; /* the second column holding this id */
    return first;
}

/* Checks one stage tensor (or, in stats mode, the manifest's declared shape). */
static void validate_tensor(vlist *v, const trace_file *tf, const trace_ring_view *r,
                            const ctr_tensor *ct, const char *suffix)
{
    char name[96];
    snprintf(name, sizeof name, suffix[0] ? "%s.%s" : "%s", r->label, suffix);
    moert_err e = {0};
    v->checks++;
    const st_tensor *t = tf->tensor_mode ? st_find(tf->set, name) : NULL;
    if (tf->tensor_mode && !t) {
        violation(v, name, -1, NULL, "present", "tensor mode trace lacks tensor %s", name);
        return;
    }
    int64_t shape[ST_MAX_DIMS] = {r->n, r->width};
    int ndim = 2;
    ctr_dtype dt = ct->dtype;
    if (t) {
        bool ok;
        ndim = t->ndim;
        memcpy(shape, t->shape, sizeof shape);
        dt = st_to_ctr(t->dtype, &ok);
        if (!ok) {
            violation(v, name, -1, NULL, "dtype", "dtype %s, expected %s", st_dtype_name(t->dtype),
                      ctr_dtype_name(ct->dtype));
            return;
        }
    }
    if (ctr_check_shape(ct, name, ndim, shape, dt, &e) != MOERT_OK) {
        violation(v, name, -1, NULL, "shape", "%s", e.msg);
        return;
    }
    if (ndim >= 1 && shape[0] != r->n) { /* rows index the ring's records (and its @meta) */
        violation(v, name, -1, NULL, "shape", "%lld rows, but the ring holds %lld records",
                  (long long)shape[0], (long long)r->n);
        return;
    }
    uint32_t rules = ct->rules;
    for (uint32_t bit = 1; bit <= CTR_RULE_NONNEGATIVE; bit <<= 1) {
        if (!(rules & bit))
            continue;
        const char *rn = ctr_rule_name(bit);
        if (!t) { /* stats mode: what the stats can prove */
            if (bit == CTR_RULE_FINITE) {
                for (int64_t i = 0; i < r->n; i++, v->checks++)
                    if (r->stats[i * 8 + 6] != 0 || r->stats[i * 8 + 7] != 0)
                        violation(v, name, i, r->meta, rn, "%.0f NaN and %.0f Inf values",
                                  r->stats[i * 8 + 6], r->stats[i * 8 + 7]);
            } else if (bit == CTR_RULE_NONNEGATIVE && !suffix[0]) {
                for (int64_t i = 0; i < r->n; i++, v->checks++)
                    if (r->stats[i * 8 + 4] < 0)
                        violation(v, name, i, r->meta, rn, "minimum %.9g < 0", r->stats[i * 8 + 4]);
            } else if (bit == CTR_RULE_SUM_TO_ONE && !suffix[0]) {
                for (int64_t i = 0; i < r->n; i++, v->checks++) {
                    double sum = r->stats[i * 8 + 2] * r->stats[i * 8 + 0];
                    if (!(fabs(sum - 1.0) <= ct->sum_tolerance))
                        violation(v, name, i, r->meta, rn, "row sums to %.9g (tolerance %g)", sum,
                                  ct->sum_tolerance);
                }
            } else {
                skipped(v, name, rn, "needs the values: record in tensor mode");
            }
            continue;
        }
        int64_t rows = shape[0], cols = shape[1];
        id_pair *pairs = NULL;
        if (bit == CTR_RULE_DISTINCT && dt == CTR_I32 && rows > 0 &&
            !(pairs = malloc((size_t)(cols ? cols : 1) * sizeof *pairs))) {
            skipped(v, name, rn, "out of memory");
            continue;
        }
        for (int64_t i = 0; i < rows; i++) {
            v->checks++;
            if (dt == CTR_F32) {
                const float *row = (const float *)t->data + i * cols;
                double sum = 0;
                int64_t bad = -1;
                for (int64_t j = 0; j < cols; j++) {
                    sum += row[j];
                    if ((bit == CTR_RULE_FINITE && !isfinite(row[j])) ||
                        (bit == CTR_RULE_NONNEGATIVE && !(row[j] >= 0)))
                        bad = bad < 0 ? j : bad;
                }
                if (bad >= 0)
                    violation(v, name, i, r->meta, rn, "value %.9g at column %lld", (double)row[bad],
                              (long long)bad);
                if (bit == CTR_RULE_SUM_TO_ONE && !(fabs(sum - 1.0) <= ct->sum_tolerance))
                    violation(v, name, i, r->meta, rn, "row sums to %.9g (tolerance %g)", sum,
                              ct->sum_tolerance);
            } else {
                const int32_t *row = (const int32_t *)t->data + i * cols;
                for (int64_t j = 0; j < cols; j++) {
                    if (bit == CTR_RULE_INDEX_RANGE && (row[j] < 0 || row[j] >= ct->index_limit)) {
                        violation(v, name, i, r->meta, rn, "id %d at column %lld outside [0, %lld)",
                                  row[j], (long long)j, (long long)ct->index_limit);
                        break;
                    }
                    if (bit == CTR_RULE_DISTINCT) {
                        int64_t dup = first_repeat(row, cols, pairs);
                        if (dup >= 0)
                            violation(v, name, i, r->meta, rn, "id %d repeated at column %lld", row[dup],
                                      (long long)dup);
                        break; /* the whole row is checked at once */
                    }
                    if (bit == CTR_RULE_NONNEGATIVE && row[j] < 0) {
                        violation(v, name, i, r->meta, rn, "value %d at column %lld", row[j],
                                  (long long)j);
                        break;
                    }
                }
            }
        }
        free(pairs);
    }
}

static char *junit_xml(const char *contract, const trace_file *tf, const vlist *v)
{
    /* a failure line is at most ~650 bytes (its detail is escaped into 600), a testcase ~150 */
    size_t cap = 4096 + 700 * json_array_size(v->violations) + 200 * tf->n_rings;
    char *x = malloc(cap);
    if (!x)
        return NULL;
    size_t len = 0;
#define PUT(...) (len += len < cap ? (size_t)snprintf(x + len, cap - len, __VA_ARGS__) : 0)
    PUT("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    PUT("<testsuites><testsuite name=\"moert validate %s\" tests=\"%zu\" failures=\"%zu\">\n",
        contract, tf->n_rings, v->total);
    for (size_t i = 0; i < tf->n_rings; i++) {
        const char *label = tf->rings[i].label;
        PUT("  <testcase classname=\"trace\" name=\"%s\">", label);
        size_t k;
        json_t *o;
        json_array_foreach(v->violations, k, o)
        {
            const char *st = json_string_value(json_object_get(o, "stage"));
            size_t ll = strlen(label);
            if (strncmp(st, label, ll) != 0 || (st[ll] != '\0' && st[ll] != '.'))
                continue;
            char detail[600];
            const char *d = json_string_value(json_object_get(o, "detail"));
            size_t dl = 0; /* escape the XML specials */
            for (const char *p = d; *p && dl + 8 < sizeof detail; p++)
                dl += (size_t)snprintf(detail + dl, sizeof detail - dl, "%s",
                                       *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : *p == '&' ? "&amp;"
                                                        : *p == '"' ? "&quot;" : (char[]){*p, 0});
            PUT("<failure message=\"%s: %s\"/>", json_string_value(json_object_get(o, "rule")), detail);
        }
        PUT("</testcase>\n");
    }
    PUT("</testsuite></testsuites>\n");
#undef PUT
    return x;
}

int cli_validate(int argc, char **argv, moert_err *err)
{
    const char *contract_path = NULL, *trace_path = NULL, *junit = NULL;
    bool json = false;
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
    ctr_contract *c = malloc(sizeof *c);
    trace_file tf = {0};
    vlist v = {json_array(), json_array(), 0, 0};
    const char **labels = NULL;
    int st = c ? ctr_load(contract_path, c, err) : err_set(err, MOERT_ENOMEM, "out of memory");
    if (st)
        goto done;
    if ((st = trace_file_open(trace_path, &tf, err)))
        goto done;
    cfg_topology topo;
    if ((st = trace_manifest_topology(tf.manifest, &topo, err)) || (st = ctr_resolve(c, &topo, err))) {
        err_prefix(err, "%s", trace_path);
        goto done;
    }
    /* Every tensor in the file must belong to a ring: LABEL, LABEL@..., LABEL.experts (by
     * binary search over the labels: tensors and rings may both number in the thousands). */
    labels = malloc((tf.n_rings ? tf.n_rings : 1) * sizeof *labels);
    if (!labels) {
        st = err_set(err, MOERT_ENOMEM, "out of memory");
        goto done;
    }
    for (size_t r = 0; r < tf.n_rings; r++)
        labels[r] = tf.rings[r].label;
    qsort(labels, tf.n_rings, sizeof *labels, cmp_str);
    for (size_t i = 0; i < st_count(tf.set); i++) {
        const char *name = st_at(tf.set, i)->name;
        char base[96];
        size_t bl = strcspn(name, "@"), nl = strlen(name);
        if (bl == nl && nl > 8 && !strcmp(name + nl - 8, ".experts"))
            bl = nl - 8;
        snprintf(base, sizeof base, "%.*s", (int)(bl < sizeof base ? bl : sizeof base - 1), name);
        const char *key = base;
        bool known = bl < sizeof base && bsearch(&key, labels, tf.n_rings, sizeof *labels, cmp_str);
        if (!known)
            violation(&v, name, -1, NULL, "known", "tensor %s belongs to no traced stage", name);
    }
    int64_t records = 0;
    for (size_t r = 0; r < tf.n_rings; r++) {
        const trace_ring_view *rv = &tf.rings[r];
        records += rv->n;
        bool any = false;
        for (int k = 0; k < c->n_tensors; k++) {
            const ctr_tensor *ct = &c->tensors[k];
            if (ct->stage != rv->stage)
                continue;
            any = true;
            validate_tensor(&v, &tf, rv, ct, ct->suffix);
        }
        if (!any)
            violation(&v, rv->label, -1, NULL, "known", "stage %s is not in contract %s",
                      cfg_stage_name(rv->stage), c->name);
    }
    size_t nv = v.total;
    if (json) {
        json_t *o = json_pack("{ss si ss sb sI sI}", "contract", c->name, "version", c->version,
                              "trace", trace_path, "passed", nv == 0, "records", (json_int_t)records,
                              "checks", (json_int_t)v.checks);
        json_object_set(o, "violations", v.violations);
        json_object_set_new(o, "violation_count", json_integer((json_int_t)nv));
        json_object_set(o, "skipped", v.skipped);
        if ((st = cli_print_json(o, JSON_INDENT(1), err)))
            goto done;
    } else {
        size_t k;
        json_t *o;
        json_array_foreach(v.violations, k, o)
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
                       json_string_value(json_object_get(o, "rule")),
                       json_string_value(json_object_get(o, "detail")));
            else
                printf("FAIL %s: %s: %s\n", json_string_value(json_object_get(o, "stage")),
                       json_string_value(json_object_get(o, "rule")),
                       json_string_value(json_object_get(o, "detail")));
        }
        json_array_foreach(v.skipped, k, o)
            printf("not checked %s: %s (%s)\n", json_string_value(json_object_get(o, "stage")),
                   json_string_value(json_object_get(o, "rule")),
                   json_string_value(json_object_get(o, "why")));
        printf("%s: %lld records in %zu stages, %lld checks against contract %s v%d: %zu violations\n",
               nv ? "FAIL" : "PASS", (long long)records, tf.n_rings, (long long)v.checks, c->name,
               c->version, nv);
    }
    if (junit) {
        char *x = junit_xml(c->name, &tf, &v);
        st = x ? write_file_atomic(junit, x, err) : err_set(err, MOERT_ENOMEM, "out of memory");
        free(x);
        if (st)
            goto done;
    }
    if (nv)
        st = err_set(err, MOERT_ECHECK, "%zu contract violations in %s", nv, trace_path);
done:
    json_decref(v.violations);
    json_decref(v.skipped);
    trace_file_close(&tf);
    free(labels);
    free(c);
    return st;
}

/* ---- replay ------------------------------------------------------------------------- */

typedef struct divergence {
    bool found;
    size_t ring;
    int64_t record, step, pos;
    double cos, max_abs, rel;
    bool have_values;
} divergence;

/* First record (by generation step, then schedule order, then position) where the replay
 * differs from the recording beyond `tol` (0 = bit for bit, by record hash). */
static int compare_traces(const trace_file *rec, const trace_file *rep, double tol, divergence *d,
                          int64_t *n_records, moert_err *err)
{
    memset(d, 0, sizeof *d);
    *n_records = 0;
    if (rec->n_rings != rep->n_rings)
        return err_set(err, MOERT_EFORMAT, "recorded trace has %zu stages, the replay %zu",
                       rec->n_rings, rep->n_rings);
    for (size_t r = 0; r < rec->n_rings; r++) {
        const trace_ring_view *a = &rec->rings[r], *b = &rep->rings[r];
        if (strcmp(a->label, b->label) || a->width != b->width)
            return err_set(err, MOERT_EFORMAT, "stage %zu: recorded %s, replayed %s", r, a->label,
                           b->label);
        int64_t n = a->n < b->n ? a->n : b->n;
        *n_records += a->n;
        for (int64_t j = 0; j < n; j++) {
            const int64_t *ma = a->meta + j * 3, *mb = b->meta + j * 3;
            bool same = ma[2] == mb[2];
            double cs = 1, mx = 0, rl = 0;
            bool vals = a->values && b->values;
            if (vals) {
                cmp_acc c = {0};
                cmp_add(&c, b->values + j * b->width, a->values + j * a->width, a->width);
                cs = cmp_cos(&c);
                mx = c.max_abs;
                rl = cmp_rel(&c);
                if (a->experts && b->experts &&
                    memcmp(a->experts + j * a->width, b->experts + j * b->width,
                           (size_t)a->width * sizeof(int32_t)))
                    mx = INFINITY; /* different experts chosen: never within tolerance */
            } else {
                const double *sa = a->stats + j * 8, *sb = b->stats + j * 8;
                double l2 = fabs(sa[1]) > 0 ? fabs(sa[1]) : 1;
                rl = fabs(sa[1] - sb[1]) / l2;
                mx = fabs(sa[2] - sb[2]) > fabs(sa[5] - sb[5]) ? fabs(sa[2] - sb[2]) : fabs(sa[5] - sb[5]);
            }
            bool within = same || (tol > 0 && (vals ? mx <= tol : rl <= tol && mx <= tol));
            if (ma[0] != mb[0] || ma[1] != mb[1])
                within = false;
            if (within)
                continue;
            bool earlier = !d->found || ma[0] < d->step ||
                           (ma[0] == d->step && (r < d->ring || (r == d->ring && ma[1] < d->pos)));
            if (earlier)
                *d = (divergence){true, r, j, ma[0], ma[1], cs, mx, rl, vals};
            break;
        }
        if (a->n != b->n && !d->found)
            *d = (divergence){true, r, n, n < a->n ? a->meta[n * 3] : b->meta[n * 3],
                              n < a->n ? a->meta[n * 3 + 1] : b->meta[n * 3 + 1], 0, INFINITY, INFINITY, false};
    }
    return MOERT_OK;
}

int cli_replay(int argc, char **argv, moert_err *err)
{
    cli_overrides ov = {0};
    const char *path = NULL;
    double tol = 0;
    bool force = false, json = false, check_weights = false;
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
            if (i + 1 >= argc || cli_parse_f64("--tolerance", argv[i + 1], 0, 1e30, &tol, err))
                return err->code ? err->code : err_set(err, MOERT_EUSAGE, "--tolerance needs a value");
            i++;
        } else if (!strcmp(a, "--force")) {
            force = true;
        } else if (!strcmp(a, "--check-weights")) {
            check_weights = true;
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
    trace_file rec = {0}, rep = {0};
    cfg_config *cfg = malloc(sizeof *cfg);
    sess *s = calloc(1, sizeof *s);
    int32_t *prompt = NULL, *gen = NULL;
    int64_t n_prompt = 0, n_gen = 0;
    char tmp[64] = "";
    int st = (!cfg || !s) ? err_set(err, MOERT_ENOMEM, "out of memory") : MOERT_OK;
    if (st || (st = trace_file_open(path, &rec, err)))
        goto done;
    if ((st = trace_manifest_run(rec.manifest, path, cfg, &prompt, &n_prompt, &gen, &n_gen, err)))
        goto done;
    /* Command-line overrides: backend, threads, chunking, weights. */
    if (ov.threads && (st = cli_parse_i64("--threads", ov.threads, 1, 1024, &(int64_t){0}, err)))
        goto done;
    if (ov.threads)
        cfg->rt.threads = atoi(ov.threads);
    if (ov.prefill_chunk) {
        int64_t k;
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
    snprintf(tmp, sizeof tmp, "/tmp/moert-replay-%ld.trace", (long)getpid());
    snprintf(cfg->trace.out_path, sizeof cfg->trace.out_path, "%s", tmp);
    if ((st = sess_open(s, cfg, check_weights ? SESS_CHECK_WEIGHTS : 0, err)))
        goto done;
    const char *want = json_string_value(json_object_get(json_object_get(rec.manifest, "weights"), "fingerprint"));
    char have[32];
    snprintf(have, sizeof have, "%016" PRIx64, model_fingerprint(&s->weights));
    if (!want || strcmp(want, have) != 0) {
        if (!force) {
            st = err_set(err, MOERT_EUSAGE,
                         "%s: the weights differ from the recorded run (fingerprint %s, recorded %s); "
                         "pass --force to replay against these weights anyway",
                         path, have, want ? want : "none");
            goto done;
        }
        fprintf(stderr, "moert replay: weights fingerprint %s differs from the recorded %s (--force)\n",
                have, want ? want : "none");
    }
    /* Teacher-forced: the recorded tokens are fed back, so every step stays comparable. */
    int64_t token_mismatch = -1;
    int32_t sampled_at = 0;
    if ((st = sess_prefill(s, prompt, n_prompt, err)))
        goto done;
    for (int64_t i = 0; i < n_gen; i++) {
        int32_t id = sess_sample(s);
        if (id < 0) {
            st = err_set(err, s->read_err.code ? s->read_err.code : MOERT_EINTERNAL, "%s", s->read_err.msg);
            goto done;
        }
        if (id != gen[i] && token_mismatch < 0) {
            token_mismatch = i;
            sampled_at = id;
        }
        if (i + 1 < n_gen && (st = sess_decode(s, gen[i], err)))
            goto done;
    }
    trace_run_info info = {prompt, n_prompt, gen, n_gen};
    if ((st = trace_file_write(s, tmp, &info, err)) || (st = trace_file_open(tmp, &rep, err)))
        goto done;
    divergence d;
    int64_t n_records = 0;
    if ((st = compare_traces(&rec, &rep, tol, &d, &n_records, err)))
        goto done;
    bool exact = !d.found && token_mismatch < 0;
    if (json) {
        json_t *o = json_pack("{ss sb sI sI}", "trace", path, "match", exact, "records",
                              (json_int_t)n_records, "generated_tokens", (json_int_t)n_gen);
        json_object_set_new(o, "tolerance", json_real(tol));
        if (d.found) {
            const trace_ring_view *rv = &rec.rings[d.ring];
            json_object_set_new(o, "first_divergence",
                                json_pack("{sI si ss ss sI sf sf sb}", "step", (json_int_t)d.step,
                                          "layer", rv->layer, "stage", cfg_stage_name(rv->stage),
                                          "label", rv->label, "position", (json_int_t)d.pos,
                                          "cosine", d.cos, "max_abs_error", isfinite(d.max_abs) ? d.max_abs : -1.0,
                                          "values", (int)d.have_values));
        }
        if (token_mismatch >= 0)
            json_object_set_new(o, "token_mismatch",
                                json_pack("{sI si si}", "index", (json_int_t)token_mismatch, "sampled",
                                          sampled_at, "recorded", gen[token_mismatch]));
        if ((st = cli_print_json(o, JSON_INDENT(1), err)))
            goto done;
    } else if (exact) {
        if (tol > 0)
            printf("match within tolerance %g: %lld records, %lld generated tokens\n", tol,
                   (long long)n_records, (long long)n_gen);
        else
            printf("bit-exact: %lld records in %zu stages, %lld generated tokens identical\n",
                   (long long)n_records, rec.n_rings, (long long)n_gen);
    } else {
        if (d.found) {
            const trace_ring_view *rv = &rec.rings[d.ring];
            printf("first divergence: step %lld, layer %s%d, stage %s (%s, position %lld)",
                   (long long)d.step, rv->layer >= 0 ? "" : "-", rv->layer >= 0 ? rv->layer : 1,
                   cfg_stage_name(rv->stage), rv->label, (long long)d.pos);
            if (d.have_values)
                printf(": cosine %.9f, max abs error %.6g\n", d.cos, d.max_abs);
            else
                printf(": stats differ (relative L2 difference %.3g; record in tensor mode for cosine)\n",
                       d.rel);
        }
        if (token_mismatch >= 0)
            printf("generated token %lld: replay samples %d, the recording has %d\n",
                   (long long)token_mismatch, sampled_at, gen[token_mismatch]);
    }
    if (!exact)
        st = err_set(err, MOERT_ECHECK, "replay of %s diverged", path);
done:
    if (tmp[0])
        unlink(tmp);
    if (s) {
        sess_close(s);
        free(s);
    }
    trace_file_close(&rec);
    trace_file_close(&rep);
    free(prompt);
    free(gen);
    free(cfg);
    return st;
}

/* ---- diff --------------------------------------------------------------------------- */

/* One side of a diff: a moert trace (rows carry (step, position)) or a plain reference
 * file whose row i is position i. */
typedef struct diff_side {
    trace_file tf;
    st_set *plain;
    bool is_trace;
} diff_side;

static int diff_open(const char *path, diff_side *d, moert_err *err)
{
    memset(d, 0, sizeof *d);
    st_set *set = NULL;
    int st = st_open(path, &set, err);
    if (st)
        return st;
    const char *fmt = st_metadata(set, "format");
    if (fmt && !strcmp(fmt, "moert-trace")) {
        st_close(set);
        d->is_trace = true;
        return trace_file_open(path, &d->tf, err);
    }
    d->plain = set;
    return MOERT_OK;
}

static void diff_close(diff_side *d)
{
    trace_file_close(&d->tf);
    st_close(d->plain);
}

/* Rows of `label` keyed by position (for a trace: its step-0 rows plus later steps, each
 * position once). Returns values, width, count and the position of each row. */
typedef struct rows {
    const float *v;
    const int32_t *ids;
    const int64_t *meta; /* NULL for plain files: row i is position i */
    int64_t n, width;
} rows;

static bool diff_rows(const diff_side *d, const char *label, rows *r)
{
    memset(r, 0, sizeof *r);
    if (d->is_trace) {
        for (size_t i = 0; i < d->tf.n_rings; i++)
            if (!strcmp(d->tf.rings[i].label, label)) {
                const trace_ring_view *rv = &d->tf.rings[i];
                if (!rv->values)
                    return false;
                *r = (rows){rv->values, rv->experts, rv->meta, rv->n, rv->width};
                return true;
            }
        return false;
    }
    const st_tensor *t = st_find(d->plain, label);
    if (!t || t->dtype != ST_F32 || t->ndim != 2)
        return false;
    r->v = t->data;
    r->n = t->shape[0];
    r->width = t->shape[1];
    char name[96];
    snprintf(name, sizeof name, "%s.experts", label);
    const st_tensor *e = st_find(d->plain, name);
    if (e && e->dtype == ST_I32 && e->ndim == 2 && e->shape[0] == r->n && e->shape[1] == r->width)
        r->ids = e->data;
    return true;
}

static int64_t row_pos(const rows *r, int64_t i)
{
    return r->meta ? r->meta[i * 3 + 1] : i;
}

/* Rows sorted by (position, step, row): the first row of a (position[, step]) is found by
 * binary search, not by a scan of one side per row of the other (which a file of a million
 * rows turned into 10^12 comparisons). */
typedef struct row_key {
    int64_t pos, step, row;
} row_key;

static int cmp_row_key(const void *a, const void *b)
{
    const row_key *x = a, *y = b;
    if (x->pos != y->pos)
        return x->pos < y->pos ? -1 : 1;
    if (x->step != y->step)
        return x->step < y->step ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* NULL only when out of memory (n == 0 gives a 1-entry array). */
static row_key *index_rows(const rows *r, bool by_step)
{
    row_key *k = malloc((size_t)(r->n ? r->n : 1) * sizeof *k);
    if (!k)
        return NULL;
    for (int64_t i = 0; i < r->n; i++)
        k[i] = (row_key){row_pos(r, i), by_step ? r->meta[i * 3] : 0, i};
    qsort(k, (size_t)r->n, sizeof *k, cmp_row_key);
    return k;
}

/* The lowest row with this position (and step), or -1. */
static int64_t find_row(const row_key *k, int64_t n, int64_t pos, int64_t step)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (k[mid].pos < pos || (k[mid].pos == pos && k[mid].step < step))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && k[lo].pos == pos && k[lo].step == step ? k[lo].row : -1;
}

/* Top-k expert ids of a router-logits row, as the runtime routes (ops_topk_route). */
static void topk_of(const float *row, int64_t e, int64_t k, int32_t *out)
{
    float probs[1024], w[256];
    if (e > 1024 || k > 256 || k > e) { /* beyond any real router: report nothing in common */
        for (int64_t j = 0; j < k && j < 256; j++)
            out[j] = -1;
        return;
    }
    ops_topk_route(row, e, k, false, out, w, probs);
}

int cli_diff(int argc, char **argv, moert_err *err)
{
    const char *pa = NULL, *pb = NULL;
    bool json = false;
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
    diff_side A, B;
    int st = diff_open(pa, &A, err);
    if (st)
        return st;
    if ((st = diff_open(pb, &B, err))) {
        diff_close(&A);
        return st;
    }
    /* Stage labels: every ring of a trace side, else every tensor of the plain side. */
    const diff_side *lead = A.is_trace ? &A : &B;
    size_t n_labels = lead->is_trace ? lead->tf.n_rings : st_count(lead->plain);
    json_t *stages = json_array();
    int32_t ka[256], kb[256];
    for (size_t li = 0; li < n_labels; li++) {
        const char *label = lead->is_trace ? lead->tf.rings[li].label : st_at(lead->plain, li)->name;
        if (strchr(label, '@') || strstr(label, ".experts"))
            continue;
        rows ra, rb;
        bool router = strstr(label, "moe_router") != NULL;
        if (!diff_rows(&A, label, &ra) || !diff_rows(&B, label, &rb)) {
            /* moe_router against a reference without it: compare the top-k of its router logits */
            if (!router)
                continue;
        }
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(label));
        cmp_acc c = {0};
        int64_t matched = 0, agree = 0, slots = 0;
        if ((!router || (ra.v && rb.v)) && ra.width == rb.width) {
            bool by_step = ra.meta && rb.meta; /* a plain file's row i is position i, any step */
            row_key *idx_b = index_rows(&rb, by_step);
            if (!idx_b) {
                json_decref(o);
                st = err_set(err, MOERT_ENOMEM, "diff: out of memory");
                break;
            }
            for (int64_t i = 0; i < ra.n; i++) {
                int64_t j = find_row(idx_b, rb.n, row_pos(&ra, i), by_step ? ra.meta[i * 3] : 0);
                if (j >= 0) {
                    cmp_add(&c, ra.v + i * ra.width, rb.v + j * rb.width, ra.width);
                    matched++;
                }
            }
            free(idx_b);
        }
        if (router) {
            char lname[96];
            snprintf(lname, sizeof lname, "%.*srouter_logits", (int)(strstr(label, "moe_router") - label), label);
            rows la, lb;
            bool ha = diff_rows(&A, label, &ra) && ra.ids, hb = diff_rows(&B, label, &rb) && rb.ids;
            bool hla = diff_rows(&A, lname, &la), hlb = diff_rows(&B, lname, &lb);
            const rows *pa_rows = ha ? &ra : hla ? &la : NULL, *pb_rows = hb ? &rb : hlb ? &lb : NULL;
            int64_t k = ha ? ra.width : hb ? rb.width : 0;
            row_key *keys = NULL;
            if (pa_rows && pb_rows && k > 0 && k <= 256 && (!ha || !hb || ra.width == rb.width)) {
                if (!(keys = index_rows(pb_rows, false))) {
                    json_decref(o);
                    st = err_set(err, MOERT_ENOMEM, "diff: out of memory");
                    break;
                }
                for (int64_t i = 0; i < pa_rows->n; i++) {
                    int64_t j = find_row(keys, pb_rows->n, row_pos(pa_rows, i), 0);
                    if (j < 0)
                        continue;
                    if (ha) memcpy(ka, ra.ids + i * k, (size_t)k * 4);
                    else topk_of(la.v + i * la.width, la.width, k, ka);
                    if (hb) memcpy(kb, rb.ids + j * k, (size_t)k * 4);
                    else topk_of(lb.v + j * lb.width, lb.width, k, kb);
                    for (int64_t x = 0; x < k; x++)
                        for (int64_t y = 0; y < k; y++)
                            agree += ka[x] == kb[y];
                    slots += k;
                }
                free(keys);
                if (slots)
                    json_object_set_new(o, "topk_agreement", json_real((double)agree / (double)slots));
            }
            if (!matched && !slots) {
                json_decref(o);
                continue;
            }
        }
        json_object_set_new(o, "rows", json_integer(matched ? matched : slots / (slots ? (ra.width ? ra.width : 1) : 1)));
        if (matched) {
            json_object_set_new(o, "cos", json_real(cmp_cos(&c)));
            json_object_set_new(o, "rel_err", json_real(cmp_rel(&c)));
            json_object_set_new(o, "max_abs", json_real(c.max_abs));
            if (c.nonfinite)
                json_object_set_new(o, "nonfinite", json_integer(c.nonfinite));
        }
        json_array_append_new(stages, o);
    }
    if (st) {
        /* nothing printed: the error says why */
    } else if (json) {
        json_t *o = json_pack("{ss ss}", "a", pa, "b", pb);
        json_object_set(o, "stages", stages);
        st = cli_print_json(o, JSON_INDENT(1), err);
    } else {
        printf("%-22s %6s %14s %12s %12s %8s\n", "stage", "rows", "cosine", "rel_err", "max_abs", "top-k");
        size_t i;
        json_t *o;
        json_array_foreach(stages, i, o)
        {
            json_t *cs = json_object_get(o, "cos"), *tk = json_object_get(o, "topk_agreement");
            printf("%-22s %6lld", json_string_value(json_object_get(o, "name")),
                   (long long)json_integer_value(json_object_get(o, "rows")));
            if (cs)
                printf(" %14.10f %12.3e %12.3e", json_real_value(cs),
                       json_real_value(json_object_get(o, "rel_err")),
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
    json_decref(stages);
    diff_close(&A);
    diff_close(&B);
    return st;
}
