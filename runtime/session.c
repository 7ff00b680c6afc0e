/* sess: init path and the per-token loop (see session.h). */
#include "session.h"

#include <math.h>
#include <stdio.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../ops/ops.h"
#include "ggufmap.h"
#include "synth.h"

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- init ---------------------------------------------------------------------------- */

static const backend_vtable *pick_backend(cfg_backend b)
{
    return b == CFG_BACKEND_HIP ? backend_hip_vtable() : &backend_cpu_vtable;
}

static int load_weights(sess *s, moert_err *err)
{
    const cfg_weights *w = &s->cfg.weights;
    if (w->synth) {
        st_dtype dt = w->synth_dtype == CFG_DTYPE_F32 ? ST_F32
                      : w->synth_dtype == CFG_DTYPE_F16 ? ST_F16
                                                        : ST_BF16;
        return synth_open_image(&s->cfg.topo, w->synth_seed, dt, &s->weights_set, err);
    }
    return ggufmap_open_weights(w->path, &s->weights_set, err);
}

/* Sizes that cannot be met are the config's doing: messages name it. */
static void err_prefix_source(const cfg_config *cfg, moert_err *err)
{
    if (cfg->source_path[0])
        err_prefix(err, "%s", cfg->source_path);
}

static int upload_rope(sess *s, moert_err *err)
{
    const sched *sc = &s->schedule;
    int64_t half = sc->topo.head_dim / 2;
    size_t n = (size_t)(sc->max_seq * half);
    float *c = malloc(n * sizeof *c), *sn = malloc(n * sizeof *sn);
    int st = MOERT_OK;
    if (!c || !sn) {
        st = err_set(err, MOERT_ENOMEM, "rope tables: out of memory");
    } else {
        ops_rope_table(c, sn, sc->max_seq, sc->topo.head_dim, sc->topo.rope_theta);
        st = s->be.vt->write(&s->be, sc->known.rope_cos, 0, c, n * sizeof *c, err);
        if (!st)
            st = s->be.vt->write(&s->be, sc->known.rope_sin, 0, sn, n * sizeof *sn, err);
    }
    free(c);
    free(sn);
    return st;
}

/* The session takes over the plan's parts (p is left empty). */
static void adopt_plan(sess *s, plan_run *p)
{
    s->cfg = p->cfg;
    s->threads = p->threads;
    s->trace = p->trace;
    s->contract = p->contract;
    s->schedule = p->schedule;
    s->scratch0 = p->scratch0;
    s->offsets = p->offsets;
    s->plan_stats = p->stats;
    memset(p, 0, sizeof *p);
}

int sess_bind(sess *s, plan_run *p, unsigned flags, moert_err *err)
{
    double t0 = now_seconds();
    memset(s, 0, sizeof *s);
    adopt_plan(s, p);
    const cfg_config *cfg = &s->cfg;
    /* Expert parallelism over NCCL is planned (moert plan --gpus) but not built: only the CPU
     * runs N ranks, through the in-process loopback. */
    int st;
    if (s->cfg.rt.gpus > 1 && s->cfg.rt.backend != CFG_BACKEND_CPU) {
        st = err_set(err, MOERT_EUSAGE,
                     "runtime.gpus = %d: the hip backend runs one GPU (multi-GPU expert parallelism over "
                     "NCCL is not built); use --gpus 1, or --backend cpu for the loopback simulation",
                     (int)s->cfg.rt.gpus);
        goto fail;
    }
    st = load_weights(s, err);
    if (st) {
        if (st == MOERT_ECONFIG) /* synthesizing an unusable topology */
            err_prefix_source(cfg, err);
        goto fail;
    }
    st = model_bind(&s->cfg.topo, s->weights_set, &s->weights, err);
    if (st) {
        if (st == MOERT_ECONFIG) /* the topology's fault: say whose */
            err_prefix_source(cfg, err);
        goto fail;
    }
    /* A NaN weight would run silently (greedy then emits token 0 forever): a run that checks
     * a contract, or asks, proves the weights finite first. */
    if (((flags & SESS_CHECK_WEIGHTS) || s->cfg.contract_path[0]) &&
        (st = model_check_finite(&s->weights, err)))
        goto fail;
    /* Routing replay and precision simulation change the CPU's arithmetic; a device runs its own
     * (numerics act-q8 it runs: hip/qact.hip). */
    if ((s->cfg.rt.route_from[0] || s->cfg.rt.sim_precision != CFG_SIM_NONE) && s->cfg.rt.backend != CFG_BACKEND_CPU) {
        st = err_set(err, MOERT_EUSAGE, "%s: the hip backend does not implement it; run it with --backend cpu",
                     s->cfg.rt.route_from[0] ? "--route-from (routing replay)" : "--sim-precision");
        goto fail;
    }
    if (s->cfg.rt.route_from[0] &&
        (st = trace_route_open(s->cfg.rt.route_from, &s->cfg.topo, &s->route, err)))
        goto fail;
    const backend_vtable *vt = pick_backend(s->cfg.rt.backend);
    if (!vt) {
        st = err_set(err, MOERT_ENODEV,
                     "backend hip: this binary was built without the HIP backend (build it with "
                     "`make hip-nvidia` or `make hip`)");
        goto fail;
    }
    s->be.vt = vt;
    backend_init bi = {.s = &s->schedule, .offsets = s->offsets, .scratch0 = s->scratch0,
                       .arena_bytes = s->plan_stats.arena_bytes, .w = &s->weights,
                       .threads = s->threads, .trace = s->trace, .route = s->route,
                       .sim = s->cfg.rt.sim_precision};
    if ((st = vt->init(&s->be, &bi, err))) {
        err_prefix_source(cfg, err); /* e.g. an arena too large to map */
        s->be.vt = NULL;
        goto fail;
    }
    if ((st = upload_rope(s, err)))
        goto fail;
    sess_reset(s);
    s->stats.init_seconds = now_seconds() - t0;
    return MOERT_OK;
fail:
    sess_close(s);
    return st;
}

int sess_open(sess *s, const cfg_config *cfg, unsigned flags, moert_err *err)
{
    double t0 = now_seconds();
    plan_run p;
    int st = plan_build(cfg, flags & SESS_NO_TRACE ? PLAN_NO_TRACE : 0, &p, err);
    if (st) {
        memset(s, 0, sizeof *s);
        return st;
    }
    if ((st = sess_bind(s, &p, flags, err)))
        return st;
    s->stats.init_seconds = now_seconds() - t0;
    return MOERT_OK;
}

void sess_close(sess *s)
{
    if (s->be.vt)
        s->be.vt->shutdown(&s->be);
    s->be.vt = NULL;
    free(s->offsets);
    s->offsets = NULL;
    sched_free(&s->schedule);
    trace_rt_free(s->trace);
    s->trace = NULL;
    trace_route_close(s->route);
    s->route = NULL;
    model_unbind(&s->weights);
    st_close(s->weights_set);
    s->weights_set = NULL;
}

void sess_reset(sess *s)
{
    s->pos = 0;
    s->gen_step = 0;
    s->interrupted = false;
    s->logits_lost = false;
    sample_seed(&s->rng, s->cfg.sampling.seed);
    double init = s->stats.init_seconds;
    memset(&s->stats, 0, sizeof s->stats);
    s->stats.init_seconds = init;
}

/* ---- steps --------------------------------------------------------------------------- */

/* ids == NULL: a fed decode step (exec_step.fed), its input the device's last greedy pick. */
static int run_step(sess *s, const int32_t *ids, int64_t n, bool decode, bool holds_last,
                    moert_err *err)
{
    const sched *sc = &s->schedule;
    backend *be = &s->be;
    exec_step st = {.index = s->step_index, .pos0 = s->pos, .n_rows = n, .decode = decode, .fed = !ids};
    int rc = ids ? be->vt->write(be, sc->known.tokens, 0, ids, (uint64_t)n * sizeof *ids, err) : MOERT_OK;
    if (rc)
        return rc;
    if (s->trace)
        trace_rt_set_step(s->trace, s->gen_step, holds_last);
    bool done = false;
    if ((rc = be->vt->begin_step(be, &st, &done, err)))
        return rc;
    bool prof = s->profile;
    for (int32_t i = 0; !done && i < sc->n_ops; i++) {
        double t0 = prof ? now_seconds() : 0;
        if ((rc = be->vt->run(be, &sc->ops[i], &st, err)))
            return rc;
        if (prof) {
            s->prof.seconds[decode][sc->ops[i].kind] += now_seconds() - t0;
            s->prof.calls[decode][sc->ops[i].kind]++;
        }
    }
    if ((rc = be->vt->end_step(be, &st, err)))
        return rc;
    if (s->trace)
        trace_rt_step_done(s->trace, &st);
    /* The logits buffer holds the step's last row only, or every row when all positions'
     * logits are traced: the next token comes from the last one.  It is copied to the host
     * only when asked for (a device's greedy pick needs no copy). */
    s->last_logit_row = sc->logit_rows > 1 ? n - 1 : 0;
    s->logits_on_host = false;
    s->logits_lost = false;
    s->pos += n;
    s->step_index++;
    return rc;
}

static int check_ids(const sess *s, const int32_t *ids, int64_t n, moert_err *err)
{
    int64_t V = s->cfg.topo.vocab_size;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return err_set(err, MOERT_EUSAGE, "token %lld of the input is id %d, outside [0, %lld)",
                           (long long)i, ids[i], (long long)V);
    if (s->pos + n > s->cfg.rt.max_seq_len)
        return err_set(err, MOERT_EUSAGE,
                       "%lld tokens at position %lld exceed max_seq_len %lld (raise --max-seq-len)",
                       (long long)n, (long long)s->pos, (long long)s->cfg.rt.max_seq_len);
    return MOERT_OK;
}

int sess_prefill(sess *s, const int32_t *ids, int64_t n, moert_err *err)
{
    if (n < 1)
        return err_set(err, MOERT_EUSAGE, "empty prompt: at least one token is needed");
    int rc = check_ids(s, ids, n, err);
    if (rc)
        return rc;
    if (s->route && s->pos == 0 && (rc = trace_route_check_prompt(s->route, ids, n, err)))
        return rc;
    double t0 = now_seconds();
    int64_t chunk = s->schedule.max_rows, done = 0;
    for (int64_t i = 0; i < n; i += chunk) {
        int64_t m = n - i < chunk ? n - i : chunk;
        if (s->stop && *s->stop) {
            s->interrupted = true;
            break;
        }
        done += m;
        if ((rc = run_step(s, ids + i, m, false, i + m == n, err)))
            return rc;
    }
    /* the prompt is processed when this returns (a device works asynchronously) */
    if ((rc = s->be.vt->sync(&s->be, err)))
        return rc;
    s->stats.prefill_seconds += now_seconds() - t0;
    s->stats.prompt_tokens += done;
    return MOERT_OK;
}

int sess_decode(sess *s, int32_t id, moert_err *err)
{
    int rc = check_ids(s, &id, 1, err);
    if (rc)
        return rc;
    s->gen_step++;
    return run_step(s, &id, 1, true, false, err);
}

const float *sess_logits(sess *s)
{
    backend *be = &s->be;
    int32_t buf = s->schedule.known.logits;
    uint64_t lbytes = (uint64_t)s->schedule.topo.vocab_size * sizeof(float);
    uint64_t off = (uint64_t)s->last_logit_row * lbytes;
    uint8_t *host = (uint8_t *)be->vt->host_ptr(be, buf) + off;
    if (s->logits_lost) {
        err_set(&s->read_err, MOERT_EUSAGE,
                "the last token's logits were overwritten by a decode step begun ahead and taken back");
        return NULL;
    }
    if (!s->logits_on_host) {
        if (be->vt->read(be, buf, off, host, lbytes, &s->read_err))
            return NULL;
        s->logits_on_host = true;
    }
    return (const float *)host;
}

int32_t sess_sample(sess *s)
{
    const sched *sc = &s->schedule;
    backend *be = &s->be;
    if (s->cfg.sampling.temperature <= 0.0 && be->vt->greedy_token && !s->logits_on_host) {
        int32_t id;
        return be->vt->greedy_token(be, s->step_index - 1, &id, &s->read_err) ? -1 : id;
    }
    const float *logits = sess_logits(s);
    if (!logits)
        return -1;
    sample_scratch scratch = {be->vt->host_ptr(be, sc->known.sample_keys),
                              be->vt->host_ptr(be, sc->known.sample_keys2),
                              be->vt->host_ptr(be, sc->known.sample_ids),
                              be->vt->host_ptr(be, sc->known.sample_ids2),
                              be->vt->host_ptr(be, sc->known.sample_probs)};
    return sample_token(logits, s->cfg.topo.vocab_size, &s->cfg.sampling, &s->rng, &scratch);
}

/* Whether sess_generate feeds its n_new - 1 decode steps: greedy, on a backend that feeds,
 * without a recorded routing or the per-op profile.  Traced, a step begun past a stop must
 * leave no record behind: the backend takes its records back, which is exact while none of
 * the steps can overwrite a stored record (a ring that fills in overwrite mode: host-fed). */
static bool feeds(sess *s, int64_t n_new)
{
    backend *be = &s->be;
    if (s->cfg.sampling.temperature > 0.0 || !be->vt->greedy_token || !be->vt->feeds || !be->vt->feeds(be) ||
        s->route || s->profile)
        return false;
    return !s->trace || (be->vt->trace_take_back && trace_rt_room(s->trace, n_new - 1));
}

static int take_back_step(sess *s, moert_err *err)
{
    s->pos--;
    s->step_index--;
    s->gen_step--;
    s->logits_lost = true;
    if (!s->trace)
        return MOERT_OK;
    trace_rt_take_back_step(s->trace);
    return s->be.vt->trace_take_back(&s->be, s->step_index, err);
}

/* Step i + 1 is begun (its input the device's pick of step i) before the host reads step i's
 * pick, so the device never idles on the host.  The tokens and the bits are those of the loop
 * in sess_generate; a step begun past a stop is taken back (its position is the next one
 * written, and nothing else of it is read). */
static int generate_fed(sess *s, int64_t n_new, int32_t *out_ids, int64_t *n_out, sess_token_fn on_token,
                        void *ctx, moert_err *err)
{
    backend *be = &s->be;
    double t0 = now_seconds();
    int rc = MOERT_OK;
    int64_t first = 0; /* the index of decode step 1 (step d makes token d; steps are consecutive) */
    for (int64_t i = 0; i < n_new; i++) {
        int32_t id = i == 0 ? sess_sample(s) : -1; /* token 0: the prompt's pick */
        if (i > 0 && be->vt->greedy_token(be, first + i - 1, &id, &s->read_err))
            id = -1;
        if (id < 0) {
            rc = err_set(err, s->read_err.code ? s->read_err.code : MOERT_EINTERNAL, "%s", s->read_err.msg);
            break;
        }
        out_ids[(*n_out)++] = id;
        s->stats.generated_tokens++;
        const bool enough = on_token && !on_token(ctx, id);
        const bool interrupt = !enough && i + 1 < n_new && s->stop && *s->stop;
        if (enough || interrupt) {
            s->interrupted = interrupt;
            if (i > 0 && i + 1 < n_new)
                rc = take_back_step(s, err); /* step i + 1 was begun */
            break;
        }
        if (i == 0) { /* step 1 takes token 0 from the host */
            first = s->step_index;
            s->gen_step++;
            if ((rc = run_step(s, &id, 1, true, false, err)))
                break;
        }
        if (i + 2 < n_new) { /* step i + 2, fed: queued behind step i + 1 */
            s->gen_step++;
            if ((rc = run_step(s, NULL, 1, true, false, err)))
                break;
            s->stats.fed_steps++;
        }
    }
    s->stats.decode_seconds += now_seconds() - t0;
    return rc;
}

int sess_generate(sess *s, const int32_t *prompt, int64_t n_prompt, int64_t n_new,
                  int32_t *out_ids, int64_t *n_out, sess_token_fn on_token, void *ctx,
                  moert_err *err)
{
    *n_out = 0;
    if (n_new < 0)
        return err_set(err, MOERT_EUSAGE, "-n must be >= 0");
    if (s->pos + n_prompt + (n_new > 0 ? n_new - 1 : 0) > s->cfg.rt.max_seq_len)
        return err_set(err, MOERT_EUSAGE,
                       "prompt (%lld tokens) + %lld new tokens exceed max_seq_len %lld (raise --max-seq-len)",
                       (long long)n_prompt, (long long)n_new, (long long)s->cfg.rt.max_seq_len);
    int rc = s->route ? trace_route_check_length(s->route, s->pos + n_prompt, n_new, err) : MOERT_OK;
    if (rc || (rc = sess_prefill(s, prompt, n_prompt, err)))
        return rc;
    if (s->interrupted)
        return MOERT_OK;
    if (n_new > 1 && feeds(s, n_new))
        return generate_fed(s, n_new, out_ids, n_out, on_token, ctx, err);
    double t0 = now_seconds();
    for (int64_t i = 0; i < n_new; i++) {
        int32_t id = sess_sample(s);
        if (id < 0)
            return err_set(err, s->read_err.code ? s->read_err.code : MOERT_EINTERNAL, "%s",
                           s->read_err.msg);
        out_ids[(*n_out)++] = id;
        s->stats.generated_tokens++;
        if (on_token && !on_token(ctx, id))
            break;
        if (i + 1 < n_new && s->stop && *s->stop) {
            s->interrupted = true;
            break;
        }
        if (i + 1 < n_new && (rc = sess_decode(s, id, err)))
            return rc;
    }
    s->stats.decode_seconds += now_seconds() - t0;
    return MOERT_OK;
}
