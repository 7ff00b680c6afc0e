/* wlayout: the device weights region (runtime/wlayout.h), checked without a GPU.  A Q4_K_M
 * model's region holds every bound tensor once in its own bytes (nothing widened): its size
 * is the sum of the quantized tensors' sizes, each rounded up to WLAYOUT_ALIGN; experts are
 * contiguous per part at a byte stride; a tied LM head shares the embedding; experts or
 * gate/up pairs that a stride cannot address are refused by name. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/ggufmap.h"
#include "../runtime/model.h"
#include "../runtime/wlayout.h"
#include "util.h"

static uint64_t up_align(uint64_t x)
{
    return (x + WLAYOUT_ALIGN - 1) / WLAYOUT_ALIGN * WLAYOUT_ALIGN;
}

typedef struct bound {
    cfg_config cfg;
    st_set *set;
    model_weights w;
} bound;

static bool bind_file(const char *path, bound *b)
{
    moert_err err = {0};
    memset(b, 0, sizeof *b);
    int st = cfg_load(path, &b->cfg, &err);
    if (!st)
        st = ggufmap_open_weights(b->cfg.weights.path, &b->set, &err);
    if (!st)
        st = model_bind(&b->cfg.topo, b->set, &b->w, &err);
    if (st)
        fprintf(stderr, "\n    %s: %s\n", path, err.msg);
    return st == MOERT_OK;
}

static void unbind(bound *b)
{
    model_unbind(&b->w);
    st_close(b->set);
}

/* The segment holding tensor t, or NULL. */
static const wlayout_seg *seg_of(const wlayout *l, const model_tensor *t)
{
    for (size_t i = 0; i < l->n_segs; i++)
        if (l->segs[i].t == t)
            return &l->segs[i];
    return NULL;
}

/* Properties every layout has: aligned, increasing, non-overlapping segments whose bytes are
 * their tensors' own; the region is their aligned sum; the tensors are the bound ones. */
static void check_common(const model_weights *w, const wlayout *l)
{
    uint64_t end = 0, sum = 0, aligned = 0;
    bool ok = true;
    for (size_t i = 0; i < l->n_segs; i++) {
        const wlayout_seg *s = &l->segs[i];
        const model_tensor *t = s->t;
        ok = ok && s->off % WLAYOUT_ALIGN == 0 && s->off >= end;
        /* stored as quantized: exactly the row bytes of its dtype, nothing widened */
        ok = ok && t->nbytes == st_dtype_row_bytes(t->dtype, (uint64_t)(t->rows * t->cols));
        end = s->off + t->nbytes;
        sum += t->nbytes;
        aligned += up_align(t->nbytes);
    }
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(l->bytes, aligned);
    CU_ASSERT_EQUAL(l->bytes, up_align(end));
    CU_ASSERT_EQUAL(l->tensor_bytes, sum);
    CU_ASSERT_EQUAL(l->tensor_bytes, w->total_bytes); /* every bound tensor, tied lm_head once */
    CU_ASSERT(l->bytes - l->tensor_bytes < (uint64_t)WLAYOUT_ALIGN * l->n_segs);
    const model_tensor *named[3] = {&w->embed, &w->final_norm, &w->lm_head};
    const uint64_t offs[3] = {l->embed, l->final_norm, l->lm_head};
    for (int i = 0; i < 3; i++) {
        const wlayout_seg *s = seg_of(l, named[i]);
        CU_ASSERT(i == 2 && w->lm_head.data == w->embed.data ? offs[2] == l->embed : s && s->off == offs[i]);
    }
}

static void test_q4km(void)
{
    const char *path = test_synth_gguf("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(path);
    bound b;
    CU_ASSERT_FATAL(bind_file(path, &b));
    const model_weights *w = &b.w;
    const cfg_topology *t = &w->topo;
    wlayout l;
    moert_err err = {0};
    int st = wlayout_plan(w, &l, &err);
    if (st)
        fprintf(stderr, "\n    wlayout_plan: %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    check_common(w, &l);
    int64_t L = t->num_hidden_layers, E = t->num_experts, H = t->hidden_size, I = t->moe_intermediate_size;
    /* untied: embed, final norm, lm head; per sparse layer 8 + router + 3 E experts */
    CU_ASSERT_EQUAL(l.n_segs, (size_t)(3 + L * (9 + 3 * E)));
    /* nothing plain-float but the norms and routers (F32, as llama.cpp keeps them) */
    CU_ASSERT_EQUAL(w->bytes_by_dtype[ST_BF16], 0);
    CU_ASSERT_EQUAL(w->bytes_by_dtype[ST_F16], 0);
    uint64_t f32 = w->final_norm.nbytes;
    for (int64_t li = 0; li < L; li++) {
        const model_layer *ml = &w->layers[li];
        f32 += ml->attn_norm.nbytes + ml->q_norm.nbytes + ml->k_norm.nbytes + ml->ffn_norm.nbytes + ml->router.nbytes;
    }
    CU_ASSERT_EQUAL(w->bytes_by_dtype[ST_F32], f32);
    CU_ASSERT_EQUAL(w->embed.dtype, ST_Q4_K);
    CU_ASSERT_EQUAL(w->lm_head.dtype, ST_Q6_K);
    for (int64_t li = 0; li < L; li++) {
        const model_layer *ml = &w->layers[li];
        const wlayout_layer *d = &l.layers[li];
        /* mixed types in one layer: q/k Q4_K, v Q6_K, experts' down a fallback type */
        CU_ASSERT_EQUAL(ml->q.dtype, ST_Q4_K);
        CU_ASSERT_EQUAL(ml->v.dtype, ST_Q6_K);
        CU_ASSERT_EQUAL(ml->down[0].dtype, li == 0 ? ST_Q5_0 : ST_Q8_0);
        CU_ASSERT_EQUAL(d->estride_gu, up_align(st_dtype_row_bytes(ST_Q4_K, (uint64_t)(I * H))));
        CU_ASSERT_EQUAL(d->estride_d, up_align(st_dtype_row_bytes(ml->down[0].dtype, (uint64_t)(H * I))));
        bool at = true;
        for (int64_t e = 0; e < E; e++) {
            const wlayout_seg *g = seg_of(&l, &ml->gate[e]), *u = seg_of(&l, &ml->up[e]), *dn = seg_of(&l, &ml->down[e]);
            at = at && g && u && dn && g->off == d->gate + (uint64_t)e * d->estride_gu &&
                 u->off == d->up + (uint64_t)e * d->estride_gu && dn->off == d->down + (uint64_t)e * d->estride_d;
        }
        CU_ASSERT(at);
        const wlayout_seg *q = seg_of(&l, &ml->q);
        CU_ASSERT(q && q->off == d->q);
    }
    /* about 5.3 bits a weight (Q4_K 4.5, Q5_0 5.5, Q6_K 6.56, Q8_0 8.5, F32 norms): a third
     * of the bf16 size */
    uint64_t params = 0;
    for (size_t i = 0; i < l.n_segs; i++)
        params += (uint64_t)(l.segs[i].t->rows * l.segs[i].t->cols);
    CU_ASSERT(l.tensor_bytes * 8 < params * 6);
    wlayout_free(&l);

    /* experts a stride cannot address are refused by name */
    model_weights bad = *w;
    model_layer lay0 = w->layers[0];
    model_layer *layers = calloc((size_t)L, sizeof *layers);
    model_tensor *gates = calloc((size_t)E, sizeof *gates);
    CU_ASSERT_FATAL(layers && gates);
    memcpy(layers, w->layers, (size_t)L * sizeof *layers);
    memcpy(gates, lay0.gate, (size_t)E * sizeof *gates);
    gates[1].dtype = ST_Q8_0;
    gates[1].nbytes = st_dtype_row_bytes(ST_Q8_0, (uint64_t)(I * H));
    layers[0].gate = gates;
    bad.layers = layers;
    st = wlayout_plan(&bad, &l, &err);
    CU_ASSERT_EQUAL(st, MOERT_EFORMAT);
    CU_ASSERT(strstr(err.msg, "layer 0 expert 1") != NULL);
    CU_ASSERT_EQUAL(l.n_segs, 0);
    CU_ASSERT_PTR_NULL(l.layers);
    wlayout_free(&l);
    free(gates);
    free(layers);
    unbind(&b);
}

static void test_tied_quantized(void)
{
    /* no output.weight: the LM head is token_embd (Q4_K) */
    const char *path = test_synth_gguf_tied("q4_k_m");
    CU_ASSERT_PTR_NOT_NULL_FATAL(path);
    moert_err err = {0};
    bound b;
    CU_ASSERT_FATAL(bind_file(path, &b));
    wlayout l;
    CU_ASSERT_EQUAL_FATAL(wlayout_plan(&b.w, &l, &err), MOERT_OK);
    check_common(&b.w, &l);
    CU_ASSERT_EQUAL(b.w.embed.dtype, ST_Q4_K);
    CU_ASSERT_EQUAL(b.w.lm_head.dtype, ST_Q4_K);
    CU_ASSERT_EQUAL(l.lm_head, l.embed);
    CU_ASSERT_PTR_NOT_NULL(seg_of(&l, &b.w.embed));
    CU_ASSERT_PTR_NULL(seg_of(&l, &b.w.lm_head)); /* never placed a second time */
    size_t want = 2;
    const cfg_topology *t = &b.w.topo;
    for (int64_t li = 0; li < t->num_hidden_layers; li++)
        want += 8 + (b.w.layers[li].sparse ? 1 + 3 * (size_t)t->num_experts : 3);
    CU_ASSERT_EQUAL(l.n_segs, want);
    wlayout_free(&l);
    unbind(&b);
}

void suite_wlayout(void)
{
    CU_pSuite s = CU_add_suite("wlayout", NULL, NULL);
    CU_add_test(s, "Q4_K_M region: quantized bytes, aligned sum, expert strides", test_q4km);
    CU_add_test(s, "tied quantized LM head shares the embedding", test_tied_quantized);
}
