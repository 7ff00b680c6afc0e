/* validate: a trace file against a contract.  Every stage's shape and dtype, and the value
 * rules record by record (in stats mode, what the stats can prove; the rest is reported as
 * skipped); every tensor of the file must belong to a traced stage.
 *
 * A ring that dropped records (full) is a violation unless allow_drops.  A contract path
 * that is in fact a trace (arguments swapped) is MOERT_EUSAGE saying so.
 *
 * The report is a JSON object (what `validate --json` prints):
 *   contract, version, trace, passed, records, checks, stages (ring labels, schedule order),
 *   violations [{stage, layer, record, step, position, rule, detail}] (the first
 *   TRACE_VIOLATIONS_KEPT), violation_count, skipped [{stage, rule, why}]. */
#ifndef MOERT_TRACE_VALIDATE_H
#define MOERT_TRACE_VALIDATE_H

#include <jansson.h>
#include <stdbool.h>

#include "../contract.h"
#include "../err.h"
#include "trace_file.h"

/* A trace of a million bad rows must not cost a million JSON objects: the first ones are
 * listed, all are counted. */
#define TRACE_VIOLATIONS_KEPT 10000

typedef struct trace_vopts {
    bool allow_drops; /* records dropped by full rings are accepted */
} trace_vopts;

/* Loads the contract and the trace and checks one against the other.  *report is set
 * (caller json_decref's it) whenever both inputs could be read: MOERT_OK when every rule
 * holds, MOERT_ECHECK (err says how many) when some do not.  Unusable input is another
 * status with *report NULL. */
int trace_validate(const char *contract_path, const char *trace_path, const trace_vopts *o,
                   json_t **report, moert_err *err);

/* The report as a JUnit document (one testcase per stage; failures, and the rules that
 * could not be checked as <skipped>); malloc'd, NULL when out of memory. */
char *trace_junit_xml(const json_t *report);

#endif
