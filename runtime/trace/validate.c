/* validate: see validate.h. */
#include "validate.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../st.h"

typedef struct vlist {
    json_t *violations;
    json_t *skipped;
    int64_t checks;
    size_t total;      /* violations found, kept or not */
    int32_t layer;     /* of the ring being checked; CFG_MAX_LAYERS: none */
} vlist;

static void violation(vlist *v, const char *label, int64_t rec, const int64_t *meta,
                      const char *rule, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void violation(vlist *v, const char *label, int64_t rec, const int64_t *meta,
                      const char *rule, const char *fmt, ...)
{
    if (v->total++ >= TRACE_VIOLATIONS_KEPT)
        return;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    json_t *o = json_object();
    json_object_set_new(o, "stage", json_string(label));
    if (v->layer != CFG_MAX_LAYERS)
        json_object_set_new(o, "layer", json_integer(v->layer));
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
    /* moe_router keeps its rows in stats mode too, so its value rules are checked there */
    bool has_rows = tf->tensor_mode || r->stage == CFG_STAGE_MOE_ROUTER;
    const st_tensor *t = has_rows ? st_find(tf->set, name) : NULL;
    if (has_rows && !t) {
        violation(v, name, -1, NULL, "present", "%s mode trace lacks tensor %s",
                  tf->tensor_mode ? "tensor" : "stats", name);
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

int trace_validate(const char *contract_path, const char *trace_path, const trace_vopts *o,
                   json_t **report, moert_err *err)
{
    *report = NULL;
    /* `validate TRACE CONTRACT`: say so rather than a YAML parser's view of a binary file */
    st_set *probe = NULL;
    moert_err ignored = {0};
    if (st_open(contract_path, &probe, &ignored) == MOERT_OK) {
        const char *fmt = st_metadata(probe, "format");
        bool is_trace = fmt && !strcmp(fmt, "moert-trace");
        st_close(probe);
        if (is_trace)
            return err_set(err, MOERT_EUSAGE,
                           "the arguments are in the wrong order: %s is a trace and comes second "
                           "(usage: moert validate CONTRACT TRACE)", contract_path);
    }
    ctr_contract *c = malloc(sizeof *c);
    trace_file tf = {0};
    vlist v = {json_array(), json_array(), 0, 0, CFG_MAX_LAYERS};
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
    json_t *stages = json_array();
    for (size_t r = 0; r < tf.n_rings; r++) {
        const trace_ring_view *rv = &tf.rings[r];
        records += rv->n;
        json_array_append_new(stages, json_string(rv->label));
        v.layer = rv->layer;
        if (rv->drops > 0 && !o->allow_drops)
            violation(&v, rv->label, -1, NULL, "drops",
                      "the ring dropped %lld of %lld records (it was full); record with a larger --trace-capacity, "
                      "or --allow-drops accepts this",
                      (long long)rv->drops, (long long)rv->written);
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
    v.layer = CFG_MAX_LAYERS;
    size_t nv = v.total;
    json_t *rep = json_pack("{ss si ss sb sI sI}", "contract", c->name, "version", c->version, "trace",
                            trace_path, "passed", nv == 0, "records", (json_int_t)records, "checks",
                            (json_int_t)v.checks);
    json_object_set_new(rep, "stages", stages);
    json_object_set(rep, "violations", v.violations);
    json_object_set_new(rep, "violation_count", json_integer((json_int_t)nv));
    json_object_set(rep, "skipped", v.skipped);
    *report = rep;
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

/* XML attribute text: the specials escaped, cut to fit. */
static void xml_escape(char *dst, size_t cap, const char *s)
{
    size_t dl = 0;
    for (const char *p = s ? s : ""; *p && dl + 8 < cap; p++)
        dl += (size_t)snprintf(dst + dl, cap - dl, "%s",
                               *p == '<' ? "&lt;" : *p == '>' ? "&gt;" : *p == '&' ? "&amp;"
                                                : *p == '"' ? "&quot;" : (char[]){*p, 0});
    dst[dl] = 0;
}

/* Whether a violation's or skip's stage ("l3.moe_router.experts") belongs to ring `label`. */
static bool of_stage(const json_t *o, const char *label)
{
    const char *st = json_string_value(json_object_get(o, "stage"));
    size_t ll = strlen(label);
    return st && strncmp(st, label, ll) == 0 && (st[ll] == '\0' || st[ll] == '.');
}

char *trace_junit_xml(const json_t *report)
{
    const json_t *viol = json_object_get(report, "violations"), *skip = json_object_get(report, "skipped");
    const json_t *stages = json_object_get(report, "stages");
    /* a failure line is at most ~750 bytes (its detail is escaped into 600), a testcase ~150 */
    size_t cap = 4096 + 800 * (json_array_size(viol) + json_array_size(skip)) + 200 * json_array_size(stages);
    char *x = malloc(cap);
    if (!x)
        return NULL;
    size_t len = 0;
#define PUT(...) (len += len < cap ? (size_t)snprintf(x + len, cap - len, __VA_ARGS__) : 0)
    char name[160], detail[600];
    xml_escape(name, sizeof name, json_string_value(json_object_get(report, "contract")));
    PUT("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    PUT("<testsuites><testsuite name=\"moert validate %s\" tests=\"%zu\" failures=\"%lld\" skipped=\"%zu\">\n",
        name, json_array_size(stages), (long long)json_integer_value(json_object_get(report, "violation_count")),
        json_array_size(skip));
    size_t i, k;
    json_t *s, *o;
    json_array_foreach(stages, i, s)
    {
        const char *label = json_string_value(s);
        PUT("  <testcase classname=\"trace\" name=\"%s\">", label);
        json_array_foreach(viol, k, o)
        {
            if (!of_stage(o, label))
                continue;
            char where[160] = "";
            if (json_integer_value(json_object_get(o, "record")) >= 0)
                snprintf(where, sizeof where, " (record %lld, step %lld, position %lld)",
                         (long long)json_integer_value(json_object_get(o, "record")),
                         (long long)json_integer_value(json_object_get(o, "step")),
                         (long long)json_integer_value(json_object_get(o, "position")));
            char full[700];
            snprintf(full, sizeof full, "%s%s: %s", json_string_value(json_object_get(o, "stage")), where,
                     json_string_value(json_object_get(o, "detail")));
            xml_escape(detail, sizeof detail, full);
            PUT("<failure message=\"%s: %s\"/>", json_string_value(json_object_get(o, "rule")), detail);
        }
        json_array_foreach(skip, k, o)
        {
            if (!of_stage(o, label))
                continue;
            char full[400];
            snprintf(full, sizeof full, "%s: %s not checked: %s", json_string_value(json_object_get(o, "stage")),
                     json_string_value(json_object_get(o, "rule")), json_string_value(json_object_get(o, "why")));
            xml_escape(detail, sizeof detail, full);
            PUT("<skipped message=\"%s\"/>", detail);
        }
        PUT("</testcase>\n");
    }
    PUT("</testsuite></testsuites>\n");
#undef PUT
    return x;
}
