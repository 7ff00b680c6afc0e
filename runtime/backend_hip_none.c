/* The CPU-only build has no HIP backend; `make hip` / `make hip-nvidia` link
 * hip/backend_hip.c instead of this file. */
#include "backend.h"

const backend_vtable *backend_hip_vtable(void)
{
    return NULL;
}
