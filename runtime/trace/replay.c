/* replay: see replay.h. */
#include "replay.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../session.h"
#include "record.h"
#include "rowcmp.h"
#include "trace.h"

/* First record (by generation step, then schedule order, then position) where the replay
 * differs from the recording beyond `tol` (0 = bit for bit, by record hash). */
int trace_compare(const trace_file *rec, const trace_file *rep, double tol, trace_divergence *d,
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
            const int64_t *ma = a->meta + j * TRACE_META_COLS, *mb = b->meta + j * TRACE_META_COLS;
            bool same = ma[TRACE_META_HASH] == mb[TRACE_META_HASH];
            trace_divergence x = {true, r, j, ma[TRACE_META_STEP], ma[TRACE_META_POS], a->values && b->values,
                                  1, 0, 0, -1, 0, 0, (uint64_t)ma[TRACE_META_HASH], (uint64_t)mb[TRACE_META_HASH],
                                  false, false};
            bool nonfinite = false;
            if (x.have_values) {
                trace_cmp c = {0};
                trace_cmp_add(&c, b->values + j * b->width, a->values + j * a->width, a->width);
                x.cos = trace_cmp_cos(&c);
                x.max_abs = c.max_abs;
                x.rel = trace_cmp_rel(&c);
                nonfinite = c.nonfinite > 0;
                x.experts_differ = a->experts && b->experts &&
                                   memcmp(a->experts + j * a->width, b->experts + j * b->width,
                                          (size_t)a->width * sizeof(int32_t));
            }
            /* the stat that differs most (also with values: it says what changed) */
            const double *sa = a->stats + j * TRACE_N_STATS, *sb = b->stats + j * TRACE_N_STATS;
            double worst = 0;
            for (int k = 0; k < TRACE_N_STATS; k++) {
                bool eq = (isnan(sa[k]) && isnan(sb[k])) || sa[k] == sb[k];
                if (eq)
                    continue;
                double rk = fabs(sa[k] - sb[k]) / (fabs(sa[k]) > 0 ? fabs(sa[k]) : 1);
                if (!(rk <= worst)) { /* NaN against a number: the worst */
                    worst = isnan(rk) ? INFINITY : rk;
                    x.stat = k;
                    x.stat_rec = sa[k];
                    x.stat_rep = sb[k];
                }
            }
            if (!x.have_values)
                x.rel = worst;
            bool within = same || (tol > 0 && !nonfinite && !x.experts_differ &&
                                   (x.have_values ? x.max_abs <= tol : worst <= tol));
            if (ma[TRACE_META_STEP] != mb[TRACE_META_STEP] || ma[TRACE_META_POS] != mb[TRACE_META_POS])
                within = false;
            if (within)
                continue;
            bool earlier = !d->found || x.step < d->step ||
                           (x.step == d->step && (r < d->ring || (r == d->ring && x.pos < d->pos)));
            if (earlier)
                *d = x;
            break;
        }
        if (a->n != b->n && !d->found)
            *d = (trace_divergence){.found = true, .ring = r, .record = n,
                                    .step = (n < a->n ? a->meta : b->meta)[n * TRACE_META_COLS + TRACE_META_STEP],
                                    .pos = (n < a->n ? a->meta : b->meta)[n * TRACE_META_COLS + TRACE_META_POS],
                                    .max_abs = INFINITY, .rel = INFINITY, .stat = -1, .count_differs = true};
    }
    return MOERT_OK;
}

static const char *const stat_names[TRACE_N_STATS] = {"count", "l2", "mean", "std", "min", "max", "nan", "inf"};

static bool stat_close(double a, double b)
{
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b);
    return a == b || fabs(a - b) <= 1e-9 * (fabs(b) > 1 ? fabs(b) : 1);
}

static int corrupt(moert_err *err, const char *path, const trace_ring_view *v, int64_t j, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int corrupt(moert_err *err, const char *path, const trace_ring_view *v, int64_t j, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const int64_t *m = v->meta + j * TRACE_META_COLS;
    return err_set(err, MOERT_EFORMAT,
                   "%s: corrupt trace: stage %s (layer %d), record %lld (step %lld, position %lld): %s", path,
                   cfg_stage_name(v->stage), v->layer, (long long)j, (long long)m[TRACE_META_STEP],
                   (long long)m[TRACE_META_POS], what);
}

int trace_verify(const trace_file *tf, const char *path, moert_err *err)
{
    for (size_t r = 0; r < tf->n_rings; r++) {
        const trace_ring_view *v = &tf->rings[r];
        if (tf->tensor_mode && (!v->values || (v->stage == CFG_STAGE_MOE_ROUTER && !v->experts)))
            return err_set(err, MOERT_EFORMAT, "%s: corrupt trace: stage %s (layer %d): a tensor-mode trace without its rows",
                           path, cfg_stage_name(v->stage), v->layer);
        for (int64_t j = 0; j < v->n; j++) {
            const double *s = v->stats + j * TRACE_N_STATS;
            const int64_t *m = v->meta + j * TRACE_META_COLS;
            if (m[TRACE_META_STEP] < 0 || m[TRACE_META_POS] < 0)
                return corrupt(err, path, v, j, "negative step or position");
            if (s[TRACE_STAT_COUNT] != (double)v->width || !(s[TRACE_STAT_NAN] >= 0) || !(s[TRACE_STAT_INF] >= 0) ||
                s[TRACE_STAT_NAN] + s[TRACE_STAT_INF] > s[TRACE_STAT_COUNT] || s[TRACE_STAT_STD] < 0 ||
                s[TRACE_STAT_MIN] > s[TRACE_STAT_MEAN] || s[TRACE_STAT_MEAN] > s[TRACE_STAT_MAX] ||
                s[TRACE_STAT_L2] < 0 || isnan(s[TRACE_STAT_L2]) || isnan(s[TRACE_STAT_COUNT]))
                return corrupt(err, path, v, j,
                               "impossible stats (count %g of width %lld, nan %g, inf %g, min %g, mean %g, max %g, std %g)",
                               s[TRACE_STAT_COUNT], (long long)v->width, s[TRACE_STAT_NAN], s[TRACE_STAT_INF],
                               s[TRACE_STAT_MIN], s[TRACE_STAT_MEAN], s[TRACE_STAT_MAX], s[TRACE_STAT_STD]);
            if (!v->values)
                continue;
            const float *row = v->values + j * v->width;
            const int32_t *ids = v->experts ? v->experts + j * v->width : NULL;
            uint64_t vb = (uint64_t)v->width * sizeof(float);
            uint64_t h = trace_row_hash(row, vb, ids, ids ? vb : 0);
            if (h != (uint64_t)m[TRACE_META_HASH])
                return corrupt(err, path, v, j, "the stored row hashes to %016llx, the recorded hash is %016llx",
                               (unsigned long long)h, (unsigned long long)m[TRACE_META_HASH]);
            double rs[TRACE_N_STATS];
            trace_row_stats(row, v->width, rs);
            for (int k = 0; k < TRACE_N_STATS; k++)
                if (!stat_close(rs[k], s[k]))
                    return corrupt(err, path, v, j, "the stored row's %s is %.17g, the recorded %s %.17g", stat_names[k],
                                   rs[k], stat_names[k], s[k]);
        }
    }
    return MOERT_OK;
}

int trace_replay_open(const char *path, trace_replay *r, moert_err *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->cfg = malloc(sizeof *r->cfg);
    int st = r->cfg ? MOERT_OK : err_set(err, MOERT_ENOMEM, "out of memory");
    if (!st && !(st = trace_file_open(path, &r->rec, err)) && !(st = trace_verify(&r->rec, path, err)))
        st = trace_manifest_run(r->rec.manifest, path, r->cfg, &r->prompt, &r->n_prompt, &r->gen, &r->n_gen, err);
    if (st)
        trace_replay_close(r);
    return st;
}

void trace_replay_close(trace_replay *r)
{
    trace_file_close(&r->rec);
    free(r->cfg);
    free(r->prompt);
    free(r->gen);
    memset(r, 0, sizeof *r);
}

int trace_replay_run(trace_replay *r, const trace_replay_opts *o, trace_replay_result *res, moert_err *err)
{
    memset(res, 0, sizeof *res);
    res->token_mismatch = -1;
    trace_file rep = {0};
    char tmp[64];
    snprintf(tmp, sizeof tmp, "/tmp/moert-replay-%ld.trace", (long)getpid());
    snprintf(r->cfg->trace.out_path, sizeof r->cfg->trace.out_path, "%s", tmp);
    bool wrote = false;
    sess *s = calloc(1, sizeof *s);
    int st = s ? MOERT_OK : err_set(err, MOERT_ENOMEM, "out of memory");
    if (st || (st = sess_open(s, r->cfg, o->check_weights ? SESS_CHECK_WEIGHTS : 0, err))) {
        free(s);
        s = NULL;
        goto done;
    }
    const char *want = json_string_value(json_object_get(json_object_get(r->rec.manifest, "weights"), "fingerprint"));
    snprintf(res->have, sizeof res->have, "%016" PRIx64, model_fingerprint(&s->weights));
    snprintf(res->want, sizeof res->want, "%.31s", want ? want : "none");
    if (!want || strcmp(want, res->have) != 0) {
        if (!o->force) {
            st = err_set(err, MOERT_EUSAGE,
                         "%s: the weights differ from the recorded run (fingerprint %s, recorded %s); "
                         "pass --force to replay against these weights anyway",
                         r->path, res->have, res->want);
            goto done;
        }
        res->fingerprint_forced = true;
    }
    /* Teacher-forced: the recorded tokens are fed back, so every step stays comparable. */
    if ((st = sess_prefill(s, r->prompt, r->n_prompt, err)))
        goto done;
    for (int64_t i = 0; i < r->n_gen; i++) {
        int32_t id = sess_sample(s);
        if (id < 0) {
            st = err_set(err, s->read_err.code ? s->read_err.code : MOERT_EINTERNAL, "%s", s->read_err.msg);
            goto done;
        }
        if (id != r->gen[i] && res->token_mismatch < 0) {
            res->token_mismatch = i;
            res->sampled = id;
            res->recorded = r->gen[i];
        }
        if (i + 1 < r->n_gen && (st = sess_decode(s, r->gen[i], err)))
            goto done;
    }
    trace_run_info info = {r->prompt, r->n_prompt, r->gen, r->n_gen};
    wrote = true;
    if ((st = trace_file_write(s, tmp, &info, err)) || (st = trace_file_open(tmp, &rep, err)))
        goto done;
    if ((st = trace_compare(&r->rec, &rep, o->tolerance, &res->d, &res->n_records, err)))
        goto done;
    res->match = !res->d.found && res->token_mismatch < 0;
done:
    if (wrote)
        unlink(tmp);
    if (s) {
        sess_close(s);
        free(s);
    }
    trace_file_close(&rep);
    return st;
}
