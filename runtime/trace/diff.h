/* diff: per-stage comparison of two traces, or of a trace and a HF reference file (row i =
 * position i).  Rows are matched by position (and step, between two traces); per stage the
 * cosine, relative L2 error ||A-B||/||B|| and max abs error, and for routers the top-k
 * expert agreement.
 *
 * The report is a JSON object (what `diff --json` prints): a, b, stages [{name, rows, cos,
 * rel_err, max_abs, nonfinite, topk_agreement}]. */
#ifndef MOERT_TRACE_DIFF_H
#define MOERT_TRACE_DIFF_H

#include <jansson.h>
#include <stdbool.h>

#include "../err.h"

typedef struct trace_diff_opts {
    int unused;
} trace_diff_opts;

/* Compares the files at pa and pb; *report (caller json_decref's it) is set on MOERT_OK. */
int trace_diff(const char *pa, const char *pb, const trace_diff_opts *o, json_t **report, moert_err *err);

#endif
