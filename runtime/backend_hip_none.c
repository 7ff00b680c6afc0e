/* The CPU-only build has no HIP backend; `make hip` / `make hip-nvidia` link
 * hip/backend_hip.c instead of this file. */
#include "backend.h"

const backend_vtable *backend_hip_vtable(void)
{
    return NULL;
}

int backend_hip_dequant_selftest(char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    return -1;
}

int backend_hip_mma_split_selftest(char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    return -1;
}

int backend_hip_qact_selftest(char *why, size_t cap)
{
    if (why && cap)
        why[0] = 0;
    return -1;
}

const char *backend_hip_target(void)
{
    return NULL;
}
