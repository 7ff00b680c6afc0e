/* backend: what every backend shares: binding schedule weight roles to tensors, and the
 * backends' scratch requests. */
#include "backend.h"

#include <stddef.h>

#include "../hip/hip_scratch.h"

int backend_requests(cfg_backend kind, const sched *s, backend_request *reqs)
{
    if (kind != CFG_BACKEND_HIP)
        return backend_cpu_requests(s, reqs);
    int n = hip_scratch_requests(s, reqs);
    if (hip_check_mode()) /* it runs the CPU kernels alongside, on its host mirror */
        n += backend_cpu_requests(s, reqs + n);
    return n;
}

const model_tensor *backend_weight(const model_weights *w, sched_weight role, int32_t layer,
                                   int32_t index)
{
    const model_layer *L = layer >= 0 ? &w->layers[layer] : NULL;
    switch (role) {
    case SCHED_W_EMBED: return &w->embed;
    case SCHED_W_FINAL_NORM: return &w->final_norm;
    case SCHED_W_LM_HEAD: return &w->lm_head;
    default: break;
    }
    if (!L)
        return NULL;
    switch (role) {
    case SCHED_W_ATTN_NORM: return &L->attn_norm;
    case SCHED_W_Q: return &L->q;
    case SCHED_W_K: return &L->k;
    case SCHED_W_V: return &L->v;
    case SCHED_W_O: return &L->o;
    case SCHED_W_Q_NORM: return &L->q_norm;
    case SCHED_W_K_NORM: return &L->k_norm;
    case SCHED_W_FFN_NORM: return &L->ffn_norm;
    case SCHED_W_ROUTER: return L->sparse ? &L->router : NULL;
    case SCHED_W_EXPERTS:
        if (!L->sparse)
            return NULL;
        return index % 3 == 0 ? &L->gate[index / 3] : index % 3 == 1 ? &L->up[index / 3]
                                                                       : &L->down[index / 3];
    case SCHED_W_MLP:
        if (L->sparse)
            return NULL;
        return index == 0 ? &L->mlp_gate : index == 1 ? &L->mlp_up : &L->mlp_down;
    default: return NULL;
    }
}
