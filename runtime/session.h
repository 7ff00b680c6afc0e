/* sess: one loaded model ready to run — the whole init path in one place.
 *
 * sess_open = plan_build (plan.h: schedule, trace rings, contract check, the backend's
 * scratch, arena offsets proven non-overlapping; no weights) + sess_bind: weights (mmap'd
 * safetensors, or a synthetic image) bound and checked against the topology -> backend with
 * one arena laid out by that plan.  `moert plan` prints the same plan_build.  After
 * sess_open returns, generating allocates nothing: prefill, decode and sampling only touch
 * the arena.
 */
#ifndef MOERT_SESSION_H
#define MOERT_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "../arena/arena.h"
#include "backend.h"
#include "config.h"
#include "contract.h"
#include "err.h"
#include "model.h"
#include "plan.h"
#include "sample.h"
#include "sched.h"
#include "st.h"
#include "trace/trace.h"
#include "trace/trace_route.h"

#include <signal.h>

typedef struct sess_stats {
    int64_t prompt_tokens, generated_tokens;
    int64_t fed_steps; /* decode steps begun before the host read their input (sess_generate) */
    double prefill_seconds, decode_seconds;
    double init_seconds;
} sess_stats;

/* Per-op-kind wall time, collected when sess.profile is set (host clock around each op;
 * a GPU backend's ops are asynchronous, so there it measures launch cost only). */
typedef struct sess_profile {
    double seconds[2][SCHED_KIND_COUNT]; /* [0] prefill steps, [1] decode steps */
    int64_t calls[2][SCHED_KIND_COUNT];
} sess_profile;

typedef struct sess {
    /* the plan's parts (plan.h), owned by the session once bound */
    cfg_config cfg;
    sched schedule;
    uint64_t *offsets;
    arena_stats plan_stats;
    int32_t scratch0;         /* the backend's first scratch buffer */
    trace_rt *trace;
    ctr_contract contract;    /* loaded and resolved when tracing */
    int32_t threads;
    /* bound */
    st_set *weights_set;
    model_weights weights;
    backend be;
    int64_t pos;              /* next position to fill */
    int64_t step_index;       /* steps run so far (prefill chunks + decode steps) */
    int64_t gen_step;         /* 0 during the prompt, then 1, 2, ... */
    int64_t last_logit_row;   /* row of the logits buffer holding the last token's logits */
    bool logits_on_host;      /* the host copy of that row is current */
    bool logits_lost;         /* a step begun ahead and taken back (sess_generate, greedy on a
                               * device that feeds) overwrote them: sess_logits refuses */
    moert_err read_err;       /* why the last logits read failed */
    sample_rng rng;
    sess_stats stats;
    bool profile;             /* collect prof */
    sess_profile prof;
    trace_route *route;       /* --route-from: the recorded routing (NULL = the router's own) */
    /* Set by the caller (a signal handler's flag): prefill and generation stop after the
     * step in progress, and `interrupted` says so.  NULL = never. */
    const volatile sig_atomic_t *stop;
    bool interrupted;
} sess;

enum {
    SESS_NO_TRACE = 1u << 0, /* ignore the config's trace plan (PLAN_NO_TRACE) */
    SESS_CHECK_WEIGHTS = 1u << 1, /* scan the weights for NaN/Inf at init (model_check_finite);
                                     also done whenever the config names a contract */
};

/* Plans (plan_build), then binds weights and the backend (sess_bind).  cfg is copied.  On
 * error nothing is left open. */
int sess_open(sess *s, const cfg_config *cfg, unsigned flags, moert_err *err);
/* Binds weights and a backend (the plan's cfg->rt.backend) to plan p, which the session
 * takes over (p is left empty, on error too).  flags: SESS_CHECK_WEIGHTS. */
int sess_bind(sess *s, plan_run *p, unsigned flags, moert_err *err);
void sess_close(sess *s);

/* Forgets the sequence: the next prefill starts at position 0. The RNG is reseeded. */
void sess_reset(sess *s);

/* Runs the prompt in chunks of at most the configured prefill chunk.  Checks ids and that
 * the sequence fits max_seq_len (and, replaying routing, that it is the recorded prompt).
 * Afterwards sess_logits() holds the last row's logits -- unless *stop was set, which ends
 * it after the chunk in progress with `interrupted` set (MOERT_OK). */
int sess_prefill(sess *s, const int32_t *ids, int64_t n, moert_err *err);

/* One decode step feeding `id` at the next position. */
int sess_decode(sess *s, int32_t id, moert_err *err);

/* Logits of the last processed token (vocab_size floats, host memory, arena-backed),
 * copied from the device on first use after a step; NULL if that copy failed or they were
 * overwritten (logits_lost; read_err says which). */
const float *sess_logits(sess *s);

/* Picks the next token with the configured sampling (greedy when temperature is 0, on the
 * device when the backend offers it); uses only arena scratch and the session's RNG.
 * Returns -1 if the logits could not be read (read_err says why). */
int32_t sess_sample(sess *s);

/* Prompt + n_new generated tokens; calls on_token (may be NULL) after each new token; stops
 * early when on_token returns false, or after the step in progress when *stop is set
 * (`interrupted`, MOERT_OK).  Greedy on a backend that feeds (backend.h), the next step is
 * begun before the host reads the current pick; an early stop takes that step back (pos and
 * the step count as without it; its logits are lost, see sess_logits; its trace records are
 * taken out of the rings, so traced generations feed only while no ring can overwrite a
 * record: trace_rt_room).  Generated ids go to out_ids (cap >= n_new).  Replaying routing, a
 * run longer than the recording is refused before the first step. */
typedef bool (*sess_token_fn)(void *ctx, int32_t id);
int sess_generate(sess *s, const int32_t *prompt, int64_t n_prompt, int64_t n_new,
                  int32_t *out_ids, int64_t *n_out, sess_token_fn on_token, void *ctx,
                  moert_err *err);

#endif
