/* replay: see replay.h. */
#include "replay.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../session.h"
#include "rowcmp.h"

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
            const int64_t *ma = a->meta + j * 3, *mb = b->meta + j * 3;
            bool same = ma[2] == mb[2];
            double cs = 1, mx = 0, rl = 0;
            bool vals = a->values && b->values;
            if (vals) {
                trace_cmp c = {0};
                trace_cmp_add(&c, b->values + j * b->width, a->values + j * a->width, a->width);
                cs = trace_cmp_cos(&c);
                mx = c.max_abs;
                rl = trace_cmp_rel(&c);
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
                *d = (trace_divergence){true, r, j, ma[0], ma[1], vals, cs, mx, rl, false, false};
            break;
        }
        if (a->n != b->n && !d->found)
            *d = (trace_divergence){true, r, n, n < a->n ? a->meta[n * 3] : b->meta[n * 3],
                                    n < a->n ? a->meta[n * 3 + 1] : b->meta[n * 3 + 1], false, 0, INFINITY, INFINITY,
                                    false, true};
    }
    return MOERT_OK;
}

int trace_replay_open(const char *path, trace_replay *r, moert_err *err)
{
    memset(r, 0, sizeof *r);
    r->path = path;
    r->cfg = malloc(sizeof *r->cfg);
    int st = r->cfg ? MOERT_OK : err_set(err, MOERT_ENOMEM, "out of memory");
    if (!st && !(st = trace_file_open(path, &r->rec, err)))
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
