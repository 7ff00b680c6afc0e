/* wlayout: where a device backend puts the bound weights in ONE device region.
 *
 * Every bound tensor is placed once (a tied lm_head shares the embedding), in its own dtype
 * and bytes — block-quantized tensors stay quantized, nothing is widened — at offsets
 * aligned to WLAYOUT_ALIGN, in the order embed, final norm, lm head, then per layer its
 * attention tensors, norms and, for a sparse layer, the router and the experts contiguous
 * per part (every gate, then every up, then every down), so that expert e of a part is at
 * part + e * stride (stride in BYTES: the aligned size of one expert's matrix).  The region
 * is the sum of the tensors' aligned sizes.
 *
 * Checks what a kernel addressing experts by stride needs: the experts of a layer share
 * dtype and size per part, gate and up share dtype and stride, a dense MLP's gate and up
 * share dtype; every tensor has a kernel type.  Pure host code (no device): the HIP backend
 * uploads the segments in order, and the tests check the layout without a GPU.
 */
#ifndef MOERT_WLAYOUT_H
#define MOERT_WLAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"

#define WLAYOUT_ALIGN 256

typedef struct wlayout_layer {
    uint64_t attn_norm, q, k, v, o, q_norm, k_norm, ffn_norm; /* offsets */
    /* sparse: the router, expert 0 of each part, and the strides between experts (bytes) */
    uint64_t router, gate, up, down;
    uint64_t estride_gu, estride_d;
    uint64_t mlp_gate, mlp_up, mlp_down; /* dense */
} wlayout_layer;

typedef struct wlayout_seg {
    uint64_t off;              /* WLAYOUT_ALIGN-aligned offset in the region */
    const model_tensor *t;     /* its bytes: t->data, t->nbytes */
} wlayout_seg;

typedef struct wlayout {
    uint64_t embed, final_norm, lm_head; /* lm_head == embed when tied */
    wlayout_layer *layers;     /* num_hidden_layers entries */
    wlayout_seg *segs;         /* every placed tensor once, by increasing offset */
    size_t n_segs;
    uint64_t bytes;            /* the region: the last segment's end, aligned */
    uint64_t tensor_bytes;     /* sum of the placed tensors' nbytes (bytes less the padding) */
} wlayout;

/* Plans the region for bound weights `w`.  On error (MOERT_EFORMAT naming the tensor or
 * layer, MOERT_ENOMEM) *out is left empty; wlayout_free is safe either way. */
int wlayout_plan(const model_weights *w, wlayout *out, moert_err *err);
void wlayout_free(wlayout *l);

#endif
