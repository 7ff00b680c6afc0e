/* plan: the one plan step of a run (see plan.h). */
#include "plan.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

/* contracts/qwen3moe-trace-v1.yaml, compiled in (Makefile: build/<v>/gen/). */
extern const char ctr_default_yaml[];

arena_request plan_request(const sched_buffer *b)
{
    return (arena_request){b->bytes ? b->bytes : 1, b->align ? b->align : ARENA_MIN_ALIGN, b->first, b->last,
                           b->persistent};
}

/* Loads the contract (the config's, or the built-in default) and refuses to start when a
 * traced stage's shape disagrees with it. */
static int check_trace_contract(plan_run *p, moert_err *err)
{
    int st = p->cfg.contract_path[0]
                 ? ctr_load(p->cfg.contract_path, &p->contract, err)
                 : ctr_load_string(ctr_default_yaml, "contracts/qwen3moe-trace-v1.yaml (built in)",
                                   &p->contract, err);
    if (st || (st = ctr_resolve(&p->contract, &p->cfg.topo, err)))
        return st;
    for (size_t i = 0; i < trace_rt_count(p->trace); i++) {
        const trace_slot_info *si = trace_rt_slot(p->trace, i);
        char label[64];
        trace_label(label, sizeof label, si->stage, si->layer);
        int64_t shape[2] = {1, si->width};
        const ctr_tensor *t = ctr_find(&p->contract, si->stage, "");
        if (!t)
            return err_set(err, MOERT_ECONFIG, "trace plan: stage %s is not in contract %s", label,
                           p->contract.path);
        const ctr_tensor *ids = si->has_ids ? ctr_find(&p->contract, si->stage, "experts") : NULL;
        if (ctr_check_shape(t, label, 2, shape, CTR_F32, err) ||
            (ids && ctr_check_shape(ids, label, 2, shape, CTR_I32, err))) {
            err->code = MOERT_ECONFIG; /* refuses to start: the plan, not a run, is at fault */
            return err_prefix(err, "trace plan does not satisfy contract %s", p->contract.name);
        }
    }
    return MOERT_OK;
}

/* The backend's scratch, appended to the schedule's buffers. */
static int add_backend_scratch(plan_run *p, moert_err *err)
{
    backend_request req[BACKEND_MAX_REQUESTS];
    int n = backend_requests(p->cfg.rt.backend, &p->schedule, req);
    p->scratch0 = p->schedule.n_bufs;
    for (int i = 0; i < n; i++)
        if (sched_add_scratch(&p->schedule, req[i].name, req[i].bytes, req[i].align, req[i].persistent, err) ==
            SCHED_NO_BUF)
            return err->code;
    p->n_scratch = n;
    return MOERT_OK;
}

static int place(plan_run *p, moert_err *err)
{
    const sched *sc = &p->schedule;
    arena_request *req = calloc((size_t)sc->n_bufs, sizeof *req);
    p->offsets = calloc((size_t)sc->n_bufs, sizeof *p->offsets);
    if (!req || !p->offsets) {
        free(req);
        return err_set(err, MOERT_ENOMEM, "arena plan: out of memory");
    }
    for (int32_t i = 0; i < sc->n_bufs; i++)
        req[i] = plan_request(&sc->bufs[i]);
    int st = arena_plan(req, (size_t)sc->n_bufs, p->offsets, &p->stats, err);
    if (!st) /* arena_plan proves what it keeps; the plan a run uses is proven here again */
        st = arena_check(req, (size_t)sc->n_bufs, p->offsets, p->stats.arena_bytes, err);
    free(req);
    return st;
}

int plan_build(const cfg_config *cfg, unsigned flags, plan_run *p, moert_err *err)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    if (flags & PLAN_NO_TRACE)
        p->cfg.trace.enabled = false;
    p->threads = cfg->rt.threads > 0 ? cfg->rt.threads : omp_get_num_procs();
    /* A run never offers a ring more records than positions: larger rings are waste. */
    if (p->cfg.trace.capacity > p->cfg.rt.max_seq_len)
        p->cfg.trace.capacity = p->cfg.rt.max_seq_len;
    sched_trace_hooks hooks = {0};
    int st = MOERT_OK;
    if (p->cfg.trace.enabled) {
        if ((st = trace_rt_create(&p->cfg.trace, &p->trace, err)))
            goto fail;
        hooks = trace_rt_hooks(p->trace, trace_rt_plan(p->trace));
    }
    st = sched_build(&p->cfg.topo, p->cfg.rt.prefill_chunk, p->cfg.rt.max_seq_len, p->threads,
                     p->trace ? &hooks : NULL, &p->schedule, err);
    if (st)
        goto fail_config;
    p->schedule.gpus = cfg->rt.gpus > 1 ? cfg->rt.gpus : 1;
    p->schedule.act_q8 = cfg->rt.numerics == CFG_NUMERICS_ACT_Q8;
    p->schedule.batch_invariant = cfg->rt.batch_invariant;
    if (p->trace && ((st = trace_rt_bind(p->trace, &p->schedule, err)) || (st = check_trace_contract(p, err))))
        goto fail;
    if ((st = add_backend_scratch(p, err)) || (st = place(p, err)))
        goto fail_config;
    return MOERT_OK;
fail_config: /* sizes that cannot be met are the config's doing: messages name it */
    if (cfg->source_path[0])
        err_prefix(err, "%s", cfg->source_path);
fail:
    plan_free(p);
    return st;
}

void plan_free(plan_run *p)
{
    free(p->offsets);
    sched_free(&p->schedule);
    trace_rt_free(p->trace);
    /* the contract holds no allocations once loaded (ctr_contract is by value) */
    memset(p, 0, sizeof *p);
}
