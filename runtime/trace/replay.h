/* replay: re-runs a recorded run from its trace's manifest (same weights, by fingerprint;
 * the recorded tokens teacher-forced) and compares every record with the recording.
 *
 * Two steps, so a caller can change what the recording does not fix (threads, chunking,
 * backend, weights) in between: trace_replay_open reads the recording into r->cfg, then
 * trace_replay_run runs it. */
#ifndef MOERT_TRACE_REPLAY_H
#define MOERT_TRACE_REPLAY_H

#include <stdbool.h>
#include <stdint.h>

#include "../config.h"
#include "../err.h"
#include "trace_file.h"

typedef struct trace_replay {
    const char *path;
    trace_file rec;
    cfg_config *cfg;      /* the recorded run; a caller may override runtime fields */
    int32_t *prompt, *gen;
    int64_t n_prompt, n_gen;
} trace_replay;

typedef struct trace_replay_opts {
    double tolerance;     /* 0: bit for bit (record hashes) */
    bool force;           /* replay even when the weights' fingerprint differs */
    bool check_weights;   /* SESS_CHECK_WEIGHTS */
} trace_replay_opts;

/* Where the replay first differs from the recording: by generation step, then schedule
 * order, then position. */
typedef struct trace_divergence {
    bool found;
    size_t ring;
    int64_t record, step, pos;
    bool have_values;     /* cos/max_abs/rel from the values; else from the stats */
    double cos, max_abs, rel;
    int stat;             /* stats only: the TRACE_STAT_* that differs most, or -1 when only
                             the hashes differ */
    double stat_rec, stat_rep; /* its recorded and replayed values */
    uint64_t hash_rec, hash_rep;
    bool experts_differ;  /* moe_router: another expert set */
    bool count_differs;   /* the rings hold different numbers of records */
} trace_divergence;

typedef struct trace_replay_result {
    bool match;
    int64_t n_records;
    trace_divergence d;
    int64_t token_mismatch; /* first generated index sampled differently, or -1 */
    int32_t sampled, recorded;
    bool fingerprint_forced; /* --force used: have / want differ */
    char have[32], want[32];
} trace_replay_result;

/* Checks that a trace agrees with itself: every stored row (values, and expert ids for
 * moe_router) hashes to its recorded hash and gives its recorded stats (within 1e-9
 * relative: a GPU sums in another order), and every record's stats are possible (count =
 * width, NaN + Inf <= count, min <= mean <= max, std >= 0).  MOERT_EFORMAT naming `path`,
 * stage, layer, record, step and position when it does not. */
int trace_verify(const trace_file *tf, const char *path, moert_err *err);

/* Opens the recording, refuses it when it disagrees with itself (trace_verify) and reads
 * the run it records (trace_manifest_run).  On failure nothing stays open. */
int trace_replay_open(const char *path, trace_replay *r, moert_err *err);
void trace_replay_close(trace_replay *r);

/* Runs r->cfg and compares.  MOERT_OK with res->match either way; MOERT_EUSAGE when the
 * weights differ and !force. */
int trace_replay_run(trace_replay *r, const trace_replay_opts *o, trace_replay_result *res, moert_err *err);

/* The first divergent record of two traces of the same plan beyond `tol` (see
 * trace_divergence); MOERT_EFORMAT when their rings differ. */
int trace_compare(const trace_file *rec, const trace_file *rep, double tol, trace_divergence *d,
                  int64_t *n_records, moert_err *err);

#endif
