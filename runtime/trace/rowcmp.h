/* rowcmp: the comparison figures of two rows of values (cosine, relative L2 error
 * ||a-b||/||b||, max abs error, non-finite counts), shared by replay and diff. */
#ifndef MOERT_TRACE_ROWCMP_H
#define MOERT_TRACE_ROWCMP_H

#include <stdint.h>

typedef struct trace_cmp {
    double dot, aa, bb, dd, max_abs;
    int64_t n;
    int64_t nan_a, inf_a, nan_b, inf_b; /* non-finite values on each side */
    int64_t nonfinite;                  /* positions where either side is not finite */
} trace_cmp;

/* Adds n value pairs; a pair with a non-finite side counts in the non-finite fields only. */
void trace_cmp_add(trace_cmp *c, const float *a, const float *b, int64_t n);
/* Cosine of the finite pairs (1 when both are all zero). */
double trace_cmp_cos(const trace_cmp *c);
/* ||a-b|| / ||b|| over the finite pairs (INFINITY when b is zero and a is not). */
double trace_cmp_rel(const trace_cmp *c);

#endif
