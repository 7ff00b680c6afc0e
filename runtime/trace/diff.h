/* diff: per-stage comparison of two traces, or of a trace and a HF reference file (row i =
 * position i).  Rows are matched by position (and step, between two traces); per stage the
 * cosine, relative L2 error ||A-B||/||B|| and max abs error, and for routers the top-k
 * expert agreement.
 *
 * Stages without values on both sides (stats-mode traces) are compared record by record
 * from their hashes and stats: bit-identical or not, the first divergent record (step,
 * position) and the stats that differ there.
 *
 * The report is a JSON object (what `diff --json` prints): a, b, tolerance, atol, forced,
 * numerics [a, b] (each trace's manifest numerics, "exact" when absent; "reference" for a
 * reference file), stages_beyond, first_divergence {stage, layer, at} (the first stage in forward order
 * beyond tolerance), and stages [{name, compared ("values"|"stats"), rows,
 * beyond_tolerance; values: cos, rel_err, max_abs, nan [a, b], inf [a, b], nonfinite,
 * first_beyond {step, position, ...}; stats: identical, records_differing,
 * stat_max_rel_diff {stat: x}, first_divergent_record {record, step, position, stats
 * [{stat, a, b}]}; routers: topk_agreement, topk_positions, topk_positions_differing,
 * topk_flips [{step, position, agree, experts_a, experts_b, margin_a, margin_b}] (margin =
 * k-th minus (k+1)-th router logit); with positions: positions [...]}]. */
#ifndef MOERT_TRACE_DIFF_H
#define MOERT_TRACE_DIFF_H

#include <jansson.h>
#include <stdbool.h>

#include "../err.h"

typedef struct trace_diff_opts {
    double rtol;    /* relative error ||A-B||/||B|| allowed per stage and per row; < 0: the
                       default, 0 (bit-identical) for two traces, 1e-5 against a reference */
    double atol;    /* > 0: a stage or row is also within when its max abs error <= atol */
    bool force;     /* compare inputs that are not two views of one run */
    bool positions; /* a per-position breakdown in every stage */
} trace_diff_opts;

/* Compares the files at pa and pb.  Refused (MOERT_EUSAGE, saying what differs) unless
 * force: two traces of different prompt ids, topologies or weights fingerprints; a trace
 * and a reference file with other stage widths (another model) or, when the reference's
 * metadata carries "prompt_ids" (a JSON array), another prompt; nothing comparable.
 * Otherwise *report is set (caller json_decref's it) and the status is MOERT_OK when every
 * compared stage is within tolerance, MOERT_ECHECK when any is beyond.  A NaN or Inf on
 * either side is always beyond; so is a moe_router row whose top-k set differs. */
int trace_diff(const char *pa, const char *pb, const trace_diff_opts *o, json_t **report, moert_err *err);

#endif
