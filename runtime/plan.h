/* plan: everything a run decides before it touches weights or a device, in one function
 * that `moert run` (through sess_open) and `moert plan` both call, so the plan printed is
 * the plan executed.
 *
 * plan_build: the config's runtime limits resolved -> trace rings (when traced) -> static
 * schedule -> the rings bound to it and checked against the contract (the config's, or the
 * built-in default) -> the chosen backend's scratch requests appended as buffers -> arena
 * offsets for every buffer, proven by arena_check.  The only device memory a backend adds
 * to this arena is its copy of the weights.
 */
#ifndef MOERT_PLAN_H
#define MOERT_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "../arena/arena.h"
#include "config.h"
#include "contract.h"
#include "err.h"
#include "sched.h"
#include "trace/trace.h"

typedef struct plan_run {
    cfg_config cfg;         /* the config as run: trace capacity capped at max_seq_len, and the
                               trace plan dropped under PLAN_NO_TRACE */
    int32_t threads;        /* resolved (0 in the config: one per CPU) */
    trace_rt *trace;        /* NULL when not traced */
    ctr_contract contract;  /* loaded and resolved when traced */
    sched schedule;         /* its buffers end with the backend's scratch */
    int32_t scratch0;       /* buffer id of the backend's first scratch request */
    int32_t n_scratch;
    uint64_t *offsets;      /* per buffer */
    arena_stats stats;
} plan_run;

enum {
    PLAN_NO_TRACE = 1u << 0, /* ignore the config's trace plan */
};

/* Builds the plan for cfg (copied) with cfg->rt.backend's scratch.  Needs no weights and no
 * device.  Errors a config causes (sizes that cannot be met, a trace plan the contract
 * refuses) are MOERT_ECONFIG prefixed with the config's path.  On error *p is empty and
 * plan_free is safe. */
int plan_build(const cfg_config *cfg, unsigned flags, plan_run *p, moert_err *err);
void plan_free(plan_run *p);

/* The buffer's placement request as the planner and the checker see it. */
arena_request plan_request(const sched_buffer *b);

#endif
