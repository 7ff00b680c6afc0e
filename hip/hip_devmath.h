/* hip_devmath: device math shared by several kernel files, so that each formula has one
 * definition (the FMA and the tensor-core GEMMs must apply SwiGLU identically). */
#ifndef MOERT_HIP_DEVMATH_H
#define MOERT_HIP_DEVMATH_H

#include <math.h>

#include "hip_compat.h"

/* silu(g) * u, the CPU's ops_swiglu formula: g / (1 + exp(-g)) * u */
static __device__ __forceinline__ float silu_mul(float g, float u)
{
    return g / (1.0f + expf(-g)) * u;
}

#endif
