/* trace_route: routing replay.  The expert ids and routing weights a trace recorded for
 * every (layer, position) stand in for the router's own choice (`moert run --route-from`),
 * so a perturbed run (other kernels, --sim-precision, a changed weight) can be compared
 * with the original one without a single routing flip.
 *
 * The trace stays mapped read-only; a lookup is pointer arithmetic into that mapping, so
 * the hot path allocates nothing.  What a trace must hold: positions `all`, a moe_router
 * ring for every sparse layer (stats-mode traces keep its ids and weights too), no
 * drops, and record j of each such ring at position j (the order a run records them). */
#ifndef MOERT_TRACE_ROUTE_H
#define MOERT_TRACE_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "../config.h"
#include "../err.h"

typedef struct trace_route trace_route;

/* Opens `path` and checks it against the run's topology (every field equal), then every
 * record: expert ids in [0, num_experts) and distinct within a row, weights finite.  Any
 * failure is MOERT_EUSAGE (the trace cannot serve this run) or MOERT_EFORMAT (it is
 * malformed), naming the file and what is missing or wrong. */
int trace_route_open(const char *path, const cfg_topology *topo, trace_route **out, moert_err *err);
void trace_route_close(trace_route *r);

const char *trace_route_path(const trace_route *r);
/* XXH3-64 of the whole trace file, as the manifest's route_from.fingerprint shows it. */
uint64_t trace_route_fingerprint(const trace_route *r);
/* Positions 0 .. n-1 have recorded routing. */
int64_t trace_route_positions(const trace_route *r);
/* The recording's prompt and generated ids. */
void trace_route_ids(const trace_route *r, const int32_t **prompt, int64_t *n_prompt,
                     const int32_t **generated, int64_t *n_generated);

/* Refuses (MOERT_EUSAGE) a prefill from position 0 whose ids are not the recording's
 * prompt. */
int trace_route_check_prompt(const trace_route *r, const int32_t *ids, int64_t n, moert_err *err);
/* Refuses (MOERT_EUSAGE) a run needing routing past the recorded positions:
 * n_prompt + n_new - 1 positions are run (the last new token is never fed back). */
int trace_route_check_length(const trace_route *r, int64_t n_prompt, int64_t n_new, moert_err *err);

/* The recorded top-k ids and weights (num_experts_per_tok each) of (layer, pos), pointing
 * into the mapping; false when layer is not sparse or pos was not recorded. */
bool trace_route_row(const trace_route *r, int32_t layer, int64_t pos, const int32_t **ids,
                     const float **weights);

#endif
