/* wlayout: the device weights region's plan (see wlayout.h). */
#include "wlayout.h"

#include <stdlib.h>
#include <string.h>

static uint64_t align_up(uint64_t x)
{
    return (x + WLAYOUT_ALIGN - 1) & ~(uint64_t)(WLAYOUT_ALIGN - 1);
}

typedef struct planner {
    wlayout *l;
    size_t cap;
    uint64_t end;
} planner;

/* Places t at the next aligned offset; *off receives it. */
static int place(planner *p, const model_tensor *t, uint64_t *off, moert_err *err)
{
    if (st_dtype_ops(t->dtype) < 0)
        return err_set(err, MOERT_EFORMAT, "device weights: tensor %s has dtype %s, which no kernel computes with",
                       t->name ? t->name : "?", st_dtype_name(t->dtype));
    wlayout *l = p->l;
    if (l->n_segs == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 256;
        wlayout_seg *q = realloc(l->segs, nc * sizeof *q);
        if (!q)
            return err_set(err, MOERT_ENOMEM, "device weights: out of memory");
        l->segs = q;
        p->cap = nc;
    }
    *off = p->end;
    l->segs[l->n_segs].off = p->end;
    l->segs[l->n_segs].t = t;
    l->n_segs++;
    l->tensor_bytes += t->nbytes;
    p->end = align_up(p->end + t->nbytes);
    return MOERT_OK;
}

/* The E experts of one part, contiguous; *first = expert 0's offset, *stride the bytes
 * between consecutive experts. */
static int place_experts(planner *p, const model_tensor *x, int64_t E, int64_t layer, uint64_t *first,
                         uint64_t *stride, moert_err *err)
{
    for (int64_t e = 0; e < E; e++) {
        if (x[e].dtype != x[0].dtype || x[e].nbytes != x[0].nbytes)
            return err_set(err, MOERT_EFORMAT,
                           "device weights: layer %lld expert %lld: %s is %s, %llu bytes, unlike expert 0 "
                           "(%s, %llu bytes): experts of a layer must share dtype and shape",
                           (long long)layer, (long long)e, x[e].name ? x[e].name : "?", st_dtype_name(x[e].dtype),
                           (unsigned long long)x[e].nbytes, st_dtype_name(x[0].dtype),
                           (unsigned long long)x[0].nbytes);
        uint64_t off;
        int st = place(p, &x[e], &off, err);
        if (st)
            return st;
        if (e == 0)
            *first = off;
    }
    *stride = align_up(x[0].nbytes);
    return MOERT_OK;
}

void wlayout_free(wlayout *l)
{
    if (!l)
        return;
    free(l->layers);
    free(l->segs);
    memset(l, 0, sizeof *l);
}

int wlayout_plan(const model_weights *w, wlayout *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    const cfg_topology *t = &w->topo;
    const int64_t L = t->num_hidden_layers, E = t->num_experts;
    planner p = {.l = out};
    out->layers = calloc((size_t)(L > 0 ? L : 1), sizeof *out->layers);
    if (!out->layers)
        return err_set(err, MOERT_ENOMEM, "device weights: out of memory");
    int st = MOERT_OK;
    if ((st = place(&p, &w->embed, &out->embed, err)) || (st = place(&p, &w->final_norm, &out->final_norm, err)))
        goto fail;
    if (w->lm_head.data == w->embed.data)
        out->lm_head = out->embed; /* tied */
    else if ((st = place(&p, &w->lm_head, &out->lm_head, err)))
        goto fail;
    for (int64_t li = 0; li < L; li++) {
        const model_layer *ml = &w->layers[li];
        wlayout_layer *d = &out->layers[li];
        if ((st = place(&p, &ml->attn_norm, &d->attn_norm, err)) || (st = place(&p, &ml->q, &d->q, err)) ||
            (st = place(&p, &ml->k, &d->k, err)) || (st = place(&p, &ml->v, &d->v, err)) ||
            (st = place(&p, &ml->o, &d->o, err)) || (st = place(&p, &ml->q_norm, &d->q_norm, err)) ||
            (st = place(&p, &ml->k_norm, &d->k_norm, err)) || (st = place(&p, &ml->ffn_norm, &d->ffn_norm, err)))
            goto fail;
        if (ml->sparse) {
            uint64_t s_up = 0;
            if ((st = place(&p, &ml->router, &d->router, err)) ||
                (st = place_experts(&p, ml->gate, E, li, &d->gate, &d->estride_gu, err)) ||
                (st = place_experts(&p, ml->up, E, li, &d->up, &s_up, err)) ||
                (st = place_experts(&p, ml->down, E, li, &d->down, &d->estride_d, err)))
                goto fail;
            if (ml->up[0].dtype != ml->gate[0].dtype || s_up != d->estride_gu) {
                st = err_set(err, MOERT_EFORMAT,
                             "device weights: layer %lld: expert gate (%s) and up (%s) projections differ in "
                             "dtype or shape", (long long)li, st_dtype_name(ml->gate[0].dtype),
                             st_dtype_name(ml->up[0].dtype));
                goto fail;
            }
        } else {
            if ((st = place(&p, &ml->mlp_gate, &d->mlp_gate, err)) || (st = place(&p, &ml->mlp_up, &d->mlp_up, err)) ||
                (st = place(&p, &ml->mlp_down, &d->mlp_down, err)))
                goto fail;
            if (ml->mlp_gate.dtype != ml->mlp_up.dtype) {
                st = err_set(err, MOERT_EFORMAT,
                             "device weights: layer %lld: mlp gate_proj (%s) and up_proj (%s) differ in dtype",
                             (long long)li, st_dtype_name(ml->mlp_gate.dtype), st_dtype_name(ml->mlp_up.dtype));
                goto fail;
            }
        }
    }
    out->bytes = p.end;
    return MOERT_OK;
fail:
    wlayout_free(out);
    return st;
}
