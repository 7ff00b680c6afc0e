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

int backend_hip_qgemm_run(int dt, const void *qa, int n_arows, const void *w, int n_exp, int n, int k,
                          const int32_t *tiles, int n_tiles, const int32_t *gather, int gdiv, int m, float *out,
                          char *why, size_t cap)
{
    (void)dt, (void)qa, (void)n_arows, (void)w, (void)n_exp, (void)n, (void)k, (void)tiles, (void)n_tiles;
    (void)gather, (void)gdiv, (void)m, (void)out;
    if (why && cap)
        why[0] = 0;
    return -1;
}

int backend_hip_mma_dense_run(int m, int n, int k, const float *a, const uint16_t *w, int kparts, float *out,
                              char *why, size_t cap)
{
    (void)m, (void)n, (void)k, (void)a, (void)w, (void)kparts, (void)out;
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

int backend_hip_decfusions(void)
{
    return -1;
}

int backend_hip_route_run(int rows, int E, int K, int norm, const float *logits, int rank, float *w, int32_t *ids,
                          char *why, size_t cap)
{
    (void)rows, (void)E, (void)K, (void)norm, (void)logits, (void)rank, (void)w, (void)ids;
    if (why && cap)
        why[0] = 0;
    return -1;
}
