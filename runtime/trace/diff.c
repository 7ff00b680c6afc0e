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

int trace_diff(const char *pa, const char *pb, const trace_diff_opts *opt, json_t **report, moert_err *err)
{
    (void)opt;
    *report = NULL;
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
        trace_cmp c = {0};
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
                    trace_cmp_add(&c, ra.v + i * ra.width, rb.v + j * rb.width, ra.width);
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
            json_object_set_new(o, "cos", json_real(trace_cmp_cos(&c)));
            json_object_set_new(o, "rel_err", json_real(trace_cmp_rel(&c)));
            json_object_set_new(o, "max_abs", json_real(c.max_abs));
            if (c.nonfinite)
                json_object_set_new(o, "nonfinite", json_integer(c.nonfinite));
        }
        json_array_append_new(stages, o);
    }
    if (!st) {
        *report = json_pack("{ss ss}", "a", pa, "b", pb);
        json_object_set(*report, "stages", stages);
    }
    json_decref(stages);
    diff_close(&A);
    diff_close(&B);
    return st;
}
