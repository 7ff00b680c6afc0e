/* rowcmp: see rowcmp.h. */
#include "rowcmp.h"

#include <math.h>

void trace_cmp_add(trace_cmp *c, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        double x = a[i], y = b[i];
        c->nan_a += isnan(x);
        c->inf_a += isinf(x);
        c->nan_b += isnan(y);
        c->inf_b += isinf(y);
        if (!isfinite(x) || !isfinite(y)) {
            c->nonfinite++;
            continue;
        }
        c->dot += x * y;
        c->aa += x * x;
        c->bb += y * y;
        c->dd += (x - y) * (x - y);
        double d = fabs(x - y);
        c->max_abs = d > c->max_abs ? d : c->max_abs;
    }
    c->n += n;
}

double trace_cmp_cos(const trace_cmp *c)
{
    if (c->aa == 0 && c->bb == 0)
        return 1.0;
    return c->aa > 0 && c->bb > 0 ? c->dot / sqrt(c->aa * c->bb) : 0.0;
}

double trace_cmp_rel(const trace_cmp *c)
{
    return c->bb > 0 ? sqrt(c->dd / c->bb) : (c->dd > 0 ? INFINITY : 0.0);
}
