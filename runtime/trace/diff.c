/* diff: see diff.h. */
#include "diff.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../ops/ops.h"
#include "../st.h"
#include "rowcmp.h"
#include "record.h"
#include "trace_file.h"


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

static const trace_ring_view *ring_of(const diff_side *d, const char *label)
{
    for (size_t i = 0; d->is_trace && i < d->tf.n_rings; i++)
        if (!strcmp(d->tf.rings[i].label, label))
            return &d->tf.rings[i];
    return NULL;
}

static const char *const stat_names[TRACE_N_STATS] = {"count", "l2", "mean", "std", "min", "max", "nan", "inf"};

static bool same_stat(double a, double b, double rtol)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return a == b || fabs(a - b) <= rtol * fabs(b);
}

/* ---- refusals: inputs that are not two views of the same run ------------------------ */

static void ids_text(const json_t *a, char *buf, size_t cap)
{
    size_t n = json_array_size(a), len = (size_t)snprintf(buf, cap, "%zu ids [", n);
    for (size_t i = 0; i < n && i < 8 && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? " " : "", (long long)json_integer_value(json_array_get(a, i)));
    if (len < cap)
        snprintf(buf + len, cap - len, "%s]", n > 8 ? " ..." : "");
}

static int check_comparable(const diff_side *A, const diff_side *B, const char *pa, const char *pb, moert_err *err)
{
    const char *force = "; pass --force to compare anyway";
    char ta[160], tb[160];
    if (A->is_trace && B->is_trace) {
        const json_t *ma = A->tf.manifest, *mb = B->tf.manifest;
        const json_t *ia = json_object_get(ma, "prompt_ids"), *ib = json_object_get(mb, "prompt_ids");
        if (!json_equal((json_t *)ia, (json_t *)ib)) {
            ids_text(ia, ta, sizeof ta);
            ids_text(ib, tb, sizeof tb);
            return err_set(err, MOERT_EUSAGE, "%s and %s are traces of different prompts (%s, %s)%s", pa, pb, ta, tb, force);
        }
        if (!json_equal(json_object_get(ma, "topology"), json_object_get(mb, "topology")))
            return err_set(err, MOERT_EUSAGE, "%s and %s are traces of different topologies%s", pa, pb, force);
        const char *fa = json_string_value(json_object_get(json_object_get(ma, "weights"), "fingerprint"));
        const char *fb = json_string_value(json_object_get(json_object_get(mb, "weights"), "fingerprint"));
        if (!fa || !fb || strcmp(fa, fb))
            return err_set(err, MOERT_EUSAGE, "%s and %s are traces of different weights (fingerprint %s, %s)%s", pa, pb,
                           fa ? fa : "none", fb ? fb : "none", force);
        return MOERT_OK;
    }
    /* a trace against a reference file: same shapes, and the same prompt when it says */
    const diff_side *t = A->is_trace ? A : B->is_trace ? B : NULL, *p = t == A ? B : A;
    const char *pt = t == A ? pa : pb, *pp = t == A ? pb : pa;
    for (size_t i = 0; i < st_count(p->plain); i++) {
        const st_tensor *x = st_at(p->plain, i);
        if (strchr(x->name, '@'))
            continue;
        const st_tensor *y = NULL;
        if (t) {
            const trace_ring_view *rv = ring_of(t, x->name);
            if (rv && x->ndim == 2 && x->shape[1] != rv->width)
                return err_set(err, MOERT_EUSAGE,
                               "%s is not a reference of %s's model: its %s has %lld columns, the trace %lld%s", pp,
                               pt, x->name, (long long)x->shape[1], (long long)rv->width, force);
        } else if ((y = st_find(A->plain, x->name)) && y->ndim == x->ndim && y->ndim == 2 &&
                   y->shape[1] != x->shape[1]) {
            return err_set(err, MOERT_EUSAGE, "%s and %s are of different models: %s has %lld and %lld columns%s", pa,
                           pb, x->name, (long long)y->shape[1], (long long)x->shape[1], force);
        }
    }
    const char *rid = st_metadata(p->plain, "prompt_ids");
    if (t && rid) {
        json_t *ri = json_loads(rid, 0, NULL);
        const json_t *ti = json_object_get(t->tf.manifest, "prompt_ids");
        size_t nr = json_array_size(ri), nt = json_array_size(ti);
        bool same = json_is_array(ri) && nt >= nr; /* the reference may cover a prefix */
        for (size_t i = 0; same && i < nr; i++)
            same = json_equal(json_array_get(ri, i), json_array_get(ti, i));
        if (!same) {
            ids_text(ri, ta, sizeof ta);
            ids_text(ti, tb, sizeof tb);
            json_decref(ri);
            return err_set(err, MOERT_EUSAGE, "%s was made for another prompt (%s) than %s (%s)%s", pp, ta, pt, tb, force);
        }
        json_decref(ri);
    }
    return MOERT_OK;
}

/* ---- stage comparisons --------------------------------------------------------------- */

/* k-th minus (k+1)-th largest router logit: how near a tie the k-th choice was. */
static double topk_margin(const float *row, int64_t e, int64_t k)
{
    float best[257];
    int64_t m = 0;
    if (k >= e || k > 256)
        return NAN;
    for (int64_t i = 0; i < e; i++) { /* insertion into the k+1 largest, descending */
        float v = row[i];
        int64_t j;
        if (isnan(v))
            continue;
        if (m < k + 1)
            j = m++;
        else if (v > best[k])
            j = k;
        else
            continue;
        while (j > 0 && best[j - 1] < v) {
            best[j] = best[j - 1];
            j--;
        }
        best[j] = v;
    }
    if (m < k + 1)
        return NAN;
    return (double)best[k - 1] - (double)best[k];
}

static bool beyond(const trace_diff_opts *o, double rtol, const trace_cmp *c)
{
    if (c->nonfinite)
        return true;
    double rel = trace_cmp_rel(c);
    if (rel <= rtol)
        return false;
    return !(o->atol > 0 && c->max_abs <= o->atol);
}

static void put_cmp(json_t *o, const trace_cmp *c)
{
    json_object_set_new(o, "cos", json_real(trace_cmp_cos(c)));
    double rel = trace_cmp_rel(c);
    json_object_set_new(o, "rel_err", isfinite(rel) ? json_real(rel) : json_string("inf"));
    json_object_set_new(o, "max_abs", json_real(c->max_abs));
    json_object_set_new(o, "nan", json_pack("[II]", (json_int_t)c->nan_a, (json_int_t)c->nan_b));
    json_object_set_new(o, "inf", json_pack("[II]", (json_int_t)c->inf_a, (json_int_t)c->inf_b));
    json_object_set_new(o, "nonfinite", json_integer(c->nonfinite));
}

/* Values of one stage on both sides, row by row (matched by position, and step between
 * two traces).  Fills o; *first_bad = the first row beyond tolerance (or -1). */
static int compare_values(const trace_diff_opts *opt, double rtol, const rows *ra, const rows *rb, json_t *o,
                          bool *bad, moert_err *err)
{
    bool by_step = ra->meta && rb->meta; /* a plain file's row i is position i, any step */
    row_key *idx_b = index_rows(rb, by_step);
    if (!idx_b)
        return err_set(err, MOERT_ENOMEM, "diff: out of memory");
    trace_cmp c = {0};
    int64_t matched = 0;
    json_t *pos = opt->positions ? json_array() : NULL, *first = NULL;
    for (int64_t i = 0; i < ra->n; i++) {
        int64_t p = row_pos(ra, i), s = ra->meta ? ra->meta[i * TRACE_META_COLS + TRACE_META_STEP] : 0;
        int64_t j = find_row(idx_b, rb->n, p, by_step ? s : 0);
        if (j < 0)
            continue;
        trace_cmp rc = {0};
        trace_cmp_add(&rc, ra->v + i * ra->width, rb->v + j * rb->width, ra->width);
        c.dot += rc.dot, c.aa += rc.aa, c.bb += rc.bb, c.dd += rc.dd, c.n += rc.n;
        c.max_abs = rc.max_abs > c.max_abs ? rc.max_abs : c.max_abs;
        c.nan_a += rc.nan_a, c.nan_b += rc.nan_b, c.inf_a += rc.inf_a, c.inf_b += rc.inf_b;
        c.nonfinite += rc.nonfinite;
        matched++;
        bool rb_ = beyond(opt, rtol, &rc);
        if (rb_ && !first) {
            first = json_pack("{sI sI}", "step", (json_int_t)s, "position", (json_int_t)p);
            put_cmp(first, &rc);
        }
        if (pos) {
            json_t *x = json_pack("{sI sI sb}", "step", (json_int_t)s, "position", (json_int_t)p, "beyond", rb_);
            put_cmp(x, &rc);
            json_array_append_new(pos, x);
        }
    }
    free(idx_b);
    json_object_set_new(o, "rows", json_integer(matched));
    if (matched) {
        put_cmp(o, &c);
        *bad = beyond(opt, rtol, &c) || first;
    }
    if (first)
        json_object_set_new(o, "first_beyond", first);
    if (pos)
        json_object_set_new(o, "positions", pos);
    return MOERT_OK;
}

/* Two traces' records of one ring by hash and stats (what a stats-mode trace holds). */
static int compare_stats(const trace_diff_opts *opt, double rtol, const trace_ring_view *a, const trace_ring_view *b,
                         json_t *o, bool *bad, moert_err *err)
{
    rows rb = {NULL, NULL, b->meta, b->n, b->width};
    row_key *idx_b = index_rows(&rb, true);
    if (!idx_b)
        return err_set(err, MOERT_ENOMEM, "diff: out of memory");
    int64_t matched = 0, differ = 0;
    double max_rel[TRACE_N_STATS] = {0};
    json_t *first = NULL, *pos = opt->positions ? json_array() : NULL;
    for (int64_t i = 0; i < a->n; i++) {
        const int64_t *ma = a->meta + i * TRACE_META_COLS;
        int64_t j = find_row(idx_b, b->n, ma[TRACE_META_POS], ma[TRACE_META_STEP]);
        if (j < 0)
            continue;
        matched++;
        const int64_t *mb = b->meta + j * TRACE_META_COLS;
        const double *sa = a->stats + i * TRACE_N_STATS, *sb = b->stats + j * TRACE_N_STATS;
        bool same_hash = ma[TRACE_META_HASH] == mb[TRACE_META_HASH];
        bool within = same_hash;
        json_t *diffs = json_array();
        for (int k = 0; k < TRACE_N_STATS; k++) {
            if (same_stat(sa[k], sb[k], 0))
                continue;
            double r = fabs(sa[k] - sb[k]) / (fabs(sb[k]) > 0 ? fabs(sb[k]) : 1);
            max_rel[k] = isfinite(r) && r > max_rel[k] ? r : (isfinite(r) ? max_rel[k] : INFINITY);
            json_array_append_new(diffs, json_pack("{ss sf sf}", "stat", stat_names[k], "a", sa[k], "b", sb[k]));
        }
        if (!same_hash && rtol > 0) { /* a tolerance: the stats decide */
            within = sa[TRACE_STAT_NAN] == 0 && sb[TRACE_STAT_NAN] == 0 && sa[TRACE_STAT_INF] == 0 && sb[TRACE_STAT_INF] == 0;
            for (int k = 0; k < TRACE_N_STATS && within; k++)
                within = same_stat(sa[k], sb[k], rtol) || (opt->atol > 0 && fabs(sa[k] - sb[k]) <= opt->atol);
        }
        if (!same_hash)
            differ++;
        if (!within && !first) {
            first = json_pack("{sI sI sI}", "record", (json_int_t)i, "step", (json_int_t)ma[TRACE_META_STEP], "position",
                              (json_int_t)ma[TRACE_META_POS]);
            json_object_set(first, "stats", diffs);
            if (!json_array_size(diffs))
                json_object_set_new(first, "note", json_string("hashes differ, every stat is identical"));
        }
        if (pos && !same_hash) {
            json_t *x = json_pack("{sI sI sb}", "step", (json_int_t)ma[TRACE_META_STEP], "position",
                                  (json_int_t)ma[TRACE_META_POS], "beyond", !within);
            json_object_set(x, "stats", diffs);
            json_array_append_new(pos, x);
        }
        json_decref(diffs);
        *bad |= !within;
    }
    free(idx_b);
    json_object_set_new(o, "rows", json_integer(matched));
    json_object_set_new(o, "identical", json_boolean(matched && !differ && a->n == b->n));
    json_object_set_new(o, "records_differing", json_integer(differ));
    json_t *mr = json_object();
    for (int k = 0; k < TRACE_N_STATS; k++)
        if (max_rel[k] > 0)
            json_object_set_new(mr, stat_names[k], isfinite(max_rel[k]) ? json_real(max_rel[k]) : json_string("inf"));
    json_object_set_new(o, "stat_max_rel_diff", mr);
    if (first)
        json_object_set_new(o, "first_divergent_record", first);
    if (pos)
        json_object_set_new(o, "positions", pos);
    if (a->n != b->n)
        *bad = true;
    return MOERT_OK;
}

/* moe_router: top-k sets per position; where they differ, the router-logit margins. */
static int compare_router(const diff_side *A, const diff_side *B, const char *label, json_t *o, bool *bad,
                          moert_err *err)
{
    char lname[96];
    snprintf(lname, sizeof lname, "%.*srouter_logits", (int)(strstr(label, "moe_router") - label), label);
    rows ra, rb, la, lb;
    bool ha = diff_rows(A, label, &ra) && ra.ids, hb = diff_rows(B, label, &rb) && rb.ids;
    bool hla = diff_rows(A, lname, &la), hlb = diff_rows(B, lname, &lb);
    const rows *pa_rows = ha ? &ra : hla ? &la : NULL, *pb_rows = hb ? &rb : hlb ? &lb : NULL;
    int64_t k = ha ? ra.width : hb ? rb.width : 0;
    if (!pa_rows || !pb_rows || k <= 0 || k > 256 || (ha && hb && ra.width != rb.width))
        return MOERT_OK;
    bool by_step = pa_rows->meta && pb_rows->meta;
    row_key *keys = index_rows(pb_rows, by_step), *lka = hla ? index_rows(&la, by_step) : NULL,
            *lkb = hlb ? index_rows(&lb, by_step) : NULL;
    if (!keys || (hla && !lka) || (hlb && !lkb)) {
        free(keys), free(lka), free(lkb);
        return err_set(err, MOERT_ENOMEM, "diff: out of memory");
    }
    int32_t ka[256], kb[256];
    int64_t agree = 0, slots = 0, n_pos = 0, n_flip = 0;
    json_t *flips = json_array();
    for (int64_t i = 0; i < pa_rows->n; i++) {
        int64_t p = row_pos(pa_rows, i), s = pa_rows->meta && by_step ? pa_rows->meta[i * TRACE_META_COLS] : 0;
        int64_t j = find_row(keys, pb_rows->n, p, s);
        if (j < 0)
            continue;
        if (ha) memcpy(ka, ra.ids + i * k, (size_t)k * 4);
        else topk_of(la.v + i * la.width, la.width, k, ka);
        if (hb) memcpy(kb, rb.ids + j * k, (size_t)k * 4);
        else topk_of(lb.v + j * lb.width, lb.width, k, kb);
        int64_t same = 0;
        for (int64_t x = 0; x < k; x++)
            for (int64_t y = 0; y < k; y++)
                same += ka[x] == kb[y];
        agree += same;
        slots += k;
        n_pos++;
        if (same == k)
            continue;
        n_flip++;
        if (json_array_size(flips) >= 1000)
            continue;
        json_t *f = json_pack("{sI sI sI}", "step", (json_int_t)s, "position", (json_int_t)p, "agree", (json_int_t)same);
        json_t *ea = json_array(), *eb = json_array();
        for (int64_t x = 0; x < k; x++) {
            json_array_append_new(ea, json_integer(ka[x]));
            json_array_append_new(eb, json_integer(kb[x]));
        }
        json_object_set_new(f, "experts_a", ea);
        json_object_set_new(f, "experts_b", eb);
        int64_t r;
        if (lka && (r = find_row(lka, la.n, p, s)) >= 0)
            json_object_set_new(f, "margin_a", json_real(topk_margin(la.v + r * la.width, la.width, k)));
        if (lkb && (r = find_row(lkb, lb.n, p, s)) >= 0)
            json_object_set_new(f, "margin_b", json_real(topk_margin(lb.v + r * lb.width, lb.width, k)));
        json_array_append_new(flips, f);
    }
    free(keys), free(lka), free(lkb);
    if (slots) {
        json_object_set_new(o, "topk_agreement", json_real((double)agree / (double)slots));
        json_object_set_new(o, "topk_positions", json_integer(n_pos));
        json_object_set_new(o, "topk_positions_differing", json_integer(n_flip));
        json_object_set(o, "topk_flips", flips);
        json_t *f0 = json_array_get(flips, 0);
        if (f0 && !json_object_get(o, "first_beyond"))
            json_object_set_new(o, "first_beyond", json_pack("{sO sO}", "step", json_object_get(f0, "step"), "position",
                                                             json_object_get(f0, "position")));
        if (!json_object_get(o, "rows"))
            json_object_set_new(o, "rows", json_integer(n_pos));
        *bad |= n_flip > 0;
    }
    json_decref(flips);
    return MOERT_OK;
}

static const char *side_numerics(const diff_side *s)
{
    if (!s->is_trace)
        return "reference";
    return cfg_numerics_names[s->tf.numerics];
}

int trace_diff(const char *pa, const char *pb, const trace_diff_opts *opt, json_t **report, moert_err *err)
{
    *report = NULL;
    diff_side A, B;
    int st = diff_open(pa, &A, err);
    if (st)
        return st;
    if ((st = diff_open(pb, &B, err))) {
        diff_close(&A);
        return st;
    }
    bool two_traces = A.is_trace && B.is_trace;
    double rtol = opt->rtol >= 0 ? opt->rtol : two_traces ? 0 : 1e-5;
    if (!opt->force && (st = check_comparable(&A, &B, pa, pb, err))) {
        diff_close(&A);
        diff_close(&B);
        return st;
    }
    /* Stage labels, in forward (schedule) order when a side is a trace. */
    const diff_side *lead = A.is_trace ? &A : &B;
    size_t n_labels = lead->is_trace ? lead->tf.n_rings : st_count(lead->plain);
    json_t *stages = json_array(), *first = NULL;
    int64_t n_beyond = 0, first_step = INT64_MAX;
    for (size_t li = 0; li < n_labels && !st; li++) {
        const char *label = lead->is_trace ? lead->tf.rings[li].label : st_at(lead->plain, li)->name;
        if (strchr(label, '@') || strstr(label, ".experts"))
            continue;
        bool router = strstr(label, "moe_router") != NULL, bad = false;
        json_t *o = json_pack("{ss}", "name", label);
        rows ra, rb;
        const trace_ring_view *va = ring_of(&A, label), *vb = ring_of(&B, label);
        if (diff_rows(&A, label, &ra) && diff_rows(&B, label, &rb) && ra.width == rb.width) {
            json_object_set_new(o, "compared", json_string("values"));
            st = compare_values(opt, rtol, &ra, &rb, o, &bad, err);
        } else if (va && vb && va->width == vb->width) {
            json_object_set_new(o, "compared", json_string("stats"));
            st = compare_stats(opt, rtol, va, vb, o, &bad, err);
        }
        if (!st && router)
            st = compare_router(&A, &B, label, o, &bad, err);
        if (st || !json_object_get(o, "rows")) {
            json_decref(o);
            continue;
        }
        json_object_set_new(o, "beyond_tolerance", json_boolean(bad));
        json_t *at = json_object_get(o, "first_beyond");
        if (!at)
            at = json_object_get(o, "first_divergent_record");
        /* the earliest generation step, then forward (schedule) order: where to look first */
        int64_t at_step = at ? (int64_t)json_integer_value(json_object_get(at, "step")) : INT64_MAX;
        if (bad && (!first || at_step < first_step)) {
            const trace_ring_view *rv = va ? va : vb;
            json_decref(first);
            first = json_pack("{ss}", "stage", label);
            first_step = at_step;
            if (rv)
                json_object_set_new(first, "layer", json_integer(rv->layer));
            if (at)
                json_object_set(first, "at", at);
        }
        n_beyond += bad;
        json_array_append_new(stages, o);
    }
    if (!st && !json_array_size(stages))
        st = err_set(err, MOERT_EUSAGE, "%s and %s have no stage in common that both can compare%s", pa, pb,
                     A.is_trace != B.is_trace ? " (a stats-mode trace against a reference: record with --trace-mode tensor)" : "");
    if (!st) {
        json_t *r = json_pack("{ss ss sf sf sb sI}", "a", pa, "b", pb, "tolerance", rtol, "atol", opt->atol,
                              "forced", opt->force, "stages_beyond", (json_int_t)n_beyond);
        json_object_set(r, "stages", stages);
        /* each side's numerics (manifest; absent = exact), so an act-q8 deviation is named */
        json_object_set_new(r, "numerics", json_pack("[ss]", side_numerics(&A), side_numerics(&B)));
        if (two_traces) { /* teacher forcing is replay's: here later steps may see other tokens */
            const json_t *ga = json_object_get(A.tf.manifest, "generated_ids"), *gb = json_object_get(B.tf.manifest, "generated_ids");
            size_t k = 0;
            while (k < json_array_size(ga) && k < json_array_size(gb) && json_equal(json_array_get(ga, k), json_array_get(gb, k)))
                k++;
            if (k < json_array_size(ga) || k < json_array_size(gb))
                json_object_set_new(r, "generated_ids_differ_at", json_integer((json_int_t)k));
        }
        if (first)
            json_object_set(r, "first_divergence", first);
        *report = r;
        if (n_beyond)
            st = err_set(err, MOERT_ECHECK, "%lld of %zu stages beyond tolerance", (long long)n_beyond,
                         json_array_size(stages));
    }
    json_decref(first);
    json_decref(stages);
    diff_close(&A);
    diff_close(&B);
    return st;
}
