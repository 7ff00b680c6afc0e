/* model: binds safetensors tensors to the Qwen3-MoE topology by the hub's names. */
#include "model.h"

#include "../ops/ops.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation */
#include <xxhash.h>

/* Bound on every single dimension and on heads*head_dim: keeps every tensor's byte count
 * (two dims times an 8-byte element at most) far from 64-bit overflow. */
#define DIM_MAX (INT64_C(1) << 24)

#define NAME_FMT "'%.120s'"
#define MODEL_MAX_TENSORS (1 << 22)


/* ---- topology --------------------------------------------------------------------- */

static int topo_check(const cfg_topology *t, moert_err *err)
{
#define NEED(cond, ...) \
    do { \
        if (!(cond)) \
            return err_set(err, MOERT_ECONFIG, "topology: " __VA_ARGS__); \
    } while (0)
#define DIM(f) NEED(t->f > 0 && t->f <= DIM_MAX, #f " is %" PRId64 ", expected 1..%" PRId64, t->f, DIM_MAX)
    DIM(vocab_size);
    DIM(hidden_size);
    DIM(num_attention_heads);
    DIM(num_key_value_heads);
    DIM(head_dim);
    NEED(t->num_hidden_layers > 0 && t->num_hidden_layers <= CFG_MAX_LAYERS,
         "num_hidden_layers is %" PRId64 ", expected 1..%d", t->num_hidden_layers, CFG_MAX_LAYERS);
    NEED(t->num_attention_heads * t->head_dim <= DIM_MAX, "num_attention_heads * head_dim is too large");
    NEED(t->num_key_value_heads * t->head_dim <= DIM_MAX, "num_key_value_heads * head_dim is too large");
    NEED(t->n_mlp_only_layers >= 0 && t->n_mlp_only_layers <= CFG_MAX_LAYERS, "n_mlp_only_layers is %d",
         (int)t->n_mlp_only_layers);
    NEED(t->num_experts >= 0 && t->num_experts <= DIM_MAX, "num_experts is %" PRId64, t->num_experts);
    NEED(t->num_experts == 0 || t->decoder_sparse_step > 0,
         "decoder_sparse_step is %" PRId64 ", expected >= 1 with num_experts > 0", t->decoder_sparse_step);
    int64_t sparse = 0;
    for (int64_t l = 0; l < t->num_hidden_layers; l++)
        sparse += cfg_layer_is_sparse(t, l);
    if (sparse) {
        DIM(moe_intermediate_size);
        NEED(t->num_experts_per_tok >= 1 && t->num_experts_per_tok <= t->num_experts,
             "num_experts_per_tok is %" PRId64 ", expected 1..num_experts (%" PRId64 ")", t->num_experts_per_tok,
             t->num_experts);
    }
    if (sparse < t->num_hidden_layers)
        DIM(intermediate_size);
    /* Every tensor is listed (synth) and bound one by one: 512 layers of 2^24 experts would
     * be 2.6e10 of them.  The largest MoE checkpoints have under 10^5. */
    uint64_t n_tensors = 3 + 8 * (uint64_t)t->num_hidden_layers + (uint64_t)sparse * (1 + 3 * (uint64_t)t->num_experts) +
                         3 * (uint64_t)(t->num_hidden_layers - sparse);
    NEED(n_tensors <= MODEL_MAX_TENSORS, "%" PRIu64 " weight tensors (num_experts x sparse layers), expected at most %d",
         n_tensors, MODEL_MAX_TENSORS);
    return MOERT_OK;
#undef DIM
#undef NEED
}

/* ---- the one list of names -------------------------------------------------------- */

/* Called once per expected tensor with its hub name and shape; dst is where it binds
 * (NULL when only listing). */
typedef int (*visit_fn)(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, model_tensor *dst);

static int walk(const cfg_topology *t, model_weights *w, visit_fn fn, void *ctx)
{
    const int64_t V = t->vocab_size, H = t->hidden_size, hd = t->head_dim;
    const int64_t qd = t->num_attention_heads * hd, kvd = t->num_key_value_heads * hd;
    const int64_t E = t->num_experts, I = t->intermediate_size, Im = t->moe_intermediate_size;
    char nm[96];
    int st;
#define VISIT(dst, nd, d0, d1, ...) \
    do { \
        snprintf(nm, sizeof nm, __VA_ARGS__); \
        if ((st = fn(ctx, nm, nd, d0, d1, w ? (dst) : NULL))) \
            return st; \
    } while (0)
    VISIT(&w->embed, 2, V, H, "model.embed_tokens.weight");
    VISIT(&w->final_norm, 1, H, 0, "model.norm.weight");
    if (!t->tie_word_embeddings)
        VISIT(&w->lm_head, 2, V, H, "lm_head.weight");
    for (int64_t l = 0; l < t->num_hidden_layers; l++) {
        model_layer *L = w ? &w->layers[l] : NULL;
        bool sparse = cfg_layer_is_sparse(t, l);
        if (L)
            L->sparse = sparse;
#define LP "model.layers.%" PRId64 "."
        VISIT(&L->attn_norm, 1, H, 0, LP "input_layernorm.weight", l);
        VISIT(&L->q, 2, qd, H, LP "self_attn.q_proj.weight", l);
        VISIT(&L->k, 2, kvd, H, LP "self_attn.k_proj.weight", l);
        VISIT(&L->v, 2, kvd, H, LP "self_attn.v_proj.weight", l);
        VISIT(&L->o, 2, H, qd, LP "self_attn.o_proj.weight", l);
        VISIT(&L->q_norm, 1, hd, 0, LP "self_attn.q_norm.weight", l);
        VISIT(&L->k_norm, 1, hd, 0, LP "self_attn.k_norm.weight", l);
        VISIT(&L->ffn_norm, 1, H, 0, LP "post_attention_layernorm.weight", l);
        if (sparse) {
            VISIT(&L->router, 2, E, H, LP "mlp.gate.weight", l);
            for (int64_t e = 0; e < E; e++) {
                VISIT(&L->gate[e], 2, Im, H, LP "mlp.experts.%" PRId64 ".gate_proj.weight", l, e);
                VISIT(&L->up[e], 2, Im, H, LP "mlp.experts.%" PRId64 ".up_proj.weight", l, e);
                VISIT(&L->down[e], 2, H, Im, LP "mlp.experts.%" PRId64 ".down_proj.weight", l, e);
            }
        } else {
            VISIT(&L->mlp_gate, 2, I, H, LP "mlp.gate_proj.weight", l);
            VISIT(&L->mlp_up, 2, I, H, LP "mlp.up_proj.weight", l);
            VISIT(&L->mlp_down, 2, H, I, LP "mlp.down_proj.weight", l);
        }
#undef LP
    }
#undef VISIT
    return MOERT_OK;
}

/* ---- listing ---------------------------------------------------------------------- */

typedef struct list_ctx {
    model_spec *v;
    size_t n, cap;
} list_ctx;

static int list_visit(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, model_tensor *dst)
{
    (void)dst;
    list_ctx *c = ctx;
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 256;
        model_spec *v = realloc(c->v, cap * sizeof *v);
        if (!v)
            return MOERT_ENOMEM;
        c->v = v;
        c->cap = cap;
    }
    model_spec *s = &c->v[c->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = d0;
    s->shape[1] = ndim > 1 ? d1 : 0;
    return MOERT_OK;
}

static int cmp_spec(const void *a, const void *b)
{
    return strcmp(((const model_spec *)a)->name, ((const model_spec *)b)->name);
}

int model_expected_tensors(const cfg_topology *topo, model_spec **out, size_t *n, moert_err *err)
{
    *out = NULL;
    *n = 0;
    int st = topo_check(topo, err);
    if (st)
        return st;
    list_ctx c = {0};
    if (walk(topo, NULL, list_visit, &c)) {
        free(c.v);
        return err_set(err, MOERT_ENOMEM, "topology: out of memory listing tensors");
    }
    qsort(c.v, c.n, sizeof *c.v, cmp_spec);
    *out = c.v;
    *n = c.n;
    return MOERT_OK;
}

/* ---- binding ---------------------------------------------------------------------- */

typedef struct bind_ctx {
    const st_set *set;
    bool *used;
    model_weights *w;
    err_list pr;
} bind_ctx;

static long find_index(const st_set *s, const char *name)
{
    size_t lo = 0, hi = st_count(s);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st_at(s, mid)->name, name);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static void fmt_dims(char *buf, size_t cap, int ndim, const int64_t *d)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", d[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static bool float_dtype(st_dtype d)
{
    return d == ST_F32 || d == ST_BF16 || d == ST_F16;
}

/* Vectors (norm weights) must be plain floats; matrices may also be block-quantized (GGUF),
 * with each row a whole number of blocks. */
static bool dtype_ok(st_dtype d, int ndim, int64_t cols)
{
    if (float_dtype(d))
        return true;
    return ndim == 2 && st_dtype_ops(d) >= 0 && st_dtype_row_bytes(d, (uint64_t)cols) > 0;
}

static int bind_visit(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, model_tensor *dst)
{
    bind_ctx *c = ctx;
    int64_t want[2] = {d0, d1};
    char ws[64], hs[200];
    fmt_dims(ws, sizeof ws, ndim, want);
    long i = find_index(c->set, name);
    if (i < 0) {
        err_list_add(&c->pr, "missing " NAME_FMT " %s", name, ws);
        return MOERT_OK;
    }
    c->used[i] = true;
    const st_tensor *t = st_at(c->set, (size_t)i);
    bool ok = true;
    if (!dtype_ok(t->dtype, ndim, ndim > 1 ? d1 : d0)) {
        err_list_add(&c->pr, NAME_FMT ": dtype %s, expected F32, BF16 or F16%s", name, st_dtype_name(t->dtype),
                     ndim > 1 ? " (or a block type whose block divides the row)" : "");
        ok = false;
    }
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim > 1 && t->shape[1] != d1)) {
        fmt_dims(hs, sizeof hs, t->ndim, t->shape);
        err_list_add(&c->pr, NAME_FMT ": shape %s, expected %s", name, hs, ws);
        ok = false;
    }
    if (ok && dst) {
        dst->name = t->name;
        dst->dtype = t->dtype;
        dst->rows = ndim > 1 ? d0 : 1;
        dst->cols = ndim > 1 ? d1 : d0;
        dst->data = t->data;
        dst->nbytes = t->nbytes;
        c->w->bytes_by_dtype[t->dtype] += t->nbytes;
    }
    return MOERT_OK;
}

void model_unbind(model_weights *w)
{
    if (!w)
        return;
    free(w->layers);
    free(w->expert_table);
    memset(w, 0, sizeof *w);
}

int model_bind(const cfg_topology *topo, const st_set *set, model_weights *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    int st = topo_check(topo, err);
    if (st)
        return st;
    if (!set)
        return err_set(err, MOERT_EUSAGE, "model_bind: no tensor set");
    const int64_t L = topo->num_hidden_layers, E = topo->num_experts;
    int64_t sparse = 0;
    for (int64_t l = 0; l < L; l++)
        sparse += cfg_layer_is_sparse(topo, l);
    bind_ctx c = {.set = set, .w = out};
    out->topo = *topo;
    /* topo_check bounds L by CFG_MAX_LAYERS and E by DIM_MAX; the casts are exact. */
    const size_t n_layers = (size_t)(L & 0xffff), n_experts = (size_t)sparse * (size_t)(E & 0xffffff) * 3;
    out->layers = calloc(n_layers, sizeof *out->layers);
    out->expert_table = sparse ? calloc(n_experts, sizeof *out->expert_table) : NULL;
    c.used = calloc(st_count(set) + 1, sizeof *c.used);
    if (!out->layers || (sparse && !out->expert_table) || !c.used) {
        st = err_set(err, MOERT_ENOMEM, "model_bind: out of memory");
        goto fail;
    }
    for (int64_t l = 0, s = 0; l < L; l++) {
        if (!cfg_layer_is_sparse(topo, l))
            continue;
        model_tensor *base = out->expert_table + 3 * E * s++;
        out->layers[l].gate = base;
        out->layers[l].up = base + E;
        out->layers[l].down = base + 2 * E;
    }
    walk(topo, out, bind_visit, &c); /* bind_visit only records problems */
    long emb = find_index(set, "model.embed_tokens.weight");
    for (size_t i = 0; i < st_count(set); i++) {
        if (c.used[i])
            continue;
        const st_tensor *t = st_at(set, i);
        if (topo->tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0) {
            const st_tensor *e = emb >= 0 ? st_at(set, (size_t)emb) : NULL;
            bool same = e && e->dtype == t->dtype && e->ndim == t->ndim && e->nbytes == t->nbytes &&
                        memcmp(e->shape, t->shape, sizeof e->shape) == 0 &&
                        memcmp(e->data, t->data, t->nbytes) == 0;
            if (!same)
                err_list_add(&c.pr, "'lm_head.weight' is present but differs from 'model.embed_tokens.weight' "
                                "while tie_word_embeddings is true");
            continue;
        }
        err_list_add(&c.pr, "unexpected " NAME_FMT, t->name);
    }
    if (c.pr.shown) {
        char where[300];
        const char *f0 = st_file_path(set, 0) ? st_file_path(set, 0) : "weights";
        if (st_file_count(set) > 1)
            snprintf(where, sizeof where, "%.200s (+%zu more shards)", f0, st_file_count(set) - 1);
        else
            snprintf(where, sizeof where, "%.200s", f0);
        char prefix[400];
        snprintf(prefix, sizeof prefix, "%s: weights do not match the topology", where);
        st = err_list_finish(&c.pr, err, MOERT_EFORMAT, prefix);
        goto fail;
    }
    if (topo->tie_word_embeddings)
        out->lm_head = out->embed;
    for (int d = 0; d < ST_DTYPE_COUNT; d++)
        out->total_bytes += out->bytes_by_dtype[d];
    out->set = set;
    free(c.used);
    return MOERT_OK;
fail:
    free(c.used);
    model_unbind(out);
    return st;
}

/* ---- finiteness --------------------------------------------------------------------- */

/* Index of the first element whose exponent bits are all ones (NaN or Inf), or -1; *nan
 * tells which.  Elements are read with memcpy: a tensor's data need not be aligned. */
/* Elements of a tensor (block types: whole blocks). */
static int64_t elem_count(const st_tensor *t)
{
    int o = st_dtype_ops(t->dtype);
    if (st_dtype_is_block(t->dtype) && o >= 0)
        return (int64_t)(t->nbytes / ops_dtype_block_bytes((ops_dtype)o)) * ops_dtype_block_elems((ops_dtype)o);
    size_t es = st_dtype_size(t->dtype);
    return es ? (int64_t)(t->nbytes / es) : 0;
}

static int64_t first_nonfinite(const st_tensor *t, bool *nan)
{
    const uint8_t *p = t->data;
    if (st_dtype_is_block(t->dtype)) {
        /* a block's scales are F16: dequantized values show a NaN or Inf scale exactly */
        ops_dtype o = (ops_dtype)st_dtype_ops(t->dtype);
        int64_t be = ops_dtype_block_elems(o);
        size_t bb = ops_dtype_block_bytes(o);
        float v[256];
        for (uint64_t b = 0; b < t->nbytes / bb; b++) {
            ops_to_f32(v, p + b * bb, o, be);
            for (int64_t j = 0; j < be; j++)
                if (!isfinite(v[j])) {
                    *nan = isnan(v[j]);
                    return (int64_t)b * be + j;
                }
        }
        return -1;
    }
    if (t->dtype == ST_F32) {
        uint64_t n = t->nbytes / 4;
        for (uint64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, p + 4 * i, 4);
            if ((u & 0x7f800000u) == 0x7f800000u) {
                *nan = (u & 0x007fffffu) != 0;
                return (int64_t)i;
            }
        }
        return -1;
    }
    uint16_t exp = t->dtype == ST_BF16 ? 0x7f80u : 0x7c00u, man = t->dtype == ST_BF16 ? 0x007fu : 0x03ffu;
    uint64_t n = t->nbytes / 2;
    for (uint64_t i = 0; i < n; i++) {
        uint16_t u;
        memcpy(&u, p + 2 * i, 2);
        if ((u & exp) == exp) {
            *nan = (u & man) != 0;
            return (int64_t)i;
        }
    }
    return -1;
}

int model_check_finite(const model_weights *w, moert_err *err)
{
    if (!w || !w->set)
        return err_set(err, MOERT_EUSAGE, "model_check_finite: no bound weights");
    for (size_t i = 0; i < st_count(w->set); i++) {
        const st_tensor *t = st_at(w->set, i);
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16 &&
            !(st_dtype_is_block(t->dtype) && st_dtype_ops(t->dtype) >= 0))
            continue;
        bool nan = false;
        int64_t at = first_nonfinite(t, &nan);
        if (at < 0)
            continue;
        /* row-major coordinates: the last dim varies fastest */
        int64_t coord[ST_MAX_DIMS] = {0}, rest = at;
        for (int d = t->ndim - 1; d >= 0; d--) {
            coord[d] = t->shape[d] > 0 ? rest % t->shape[d] : 0;
            rest = t->shape[d] > 0 ? rest / t->shape[d] : 0;
        }
        char idx[200];
        size_t len = (size_t)snprintf(idx, sizeof idx, "[");
        for (int d = 0; d < t->ndim && len < sizeof idx; d++)
            len += (size_t)snprintf(idx + len, sizeof idx - len, "%s%lld", d ? ", " : "", (long long)coord[d]);
        if (len < sizeof idx)
            snprintf(idx + len, sizeof idx - len, "]");
        const char *file = st_file_path(w->set, (size_t)t->file_index);
        return err_set(err, MOERT_EFORMAT,
                       "%s: tensor " NAME_FMT " element %s (index %lld of %lld) is %s, expected finite weights",
                       file ? file : "weights", t->name, idx, (long long)at, (long long)elem_count(t),
                       nan ? "NaN" : "Inf");
    }
    return MOERT_OK;
}

/* ---- fingerprint and roofline ----------------------------------------------------- */

static void put_u64(XXH3_state_t *s, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i)); /* little-endian on every host */
    XXH3_64bits_update(s, b, sizeof b);
}

uint64_t model_fingerprint(const model_weights *w)
{
    if (!w || !w->set)
        return 0;
    XXH3_state_t s;
    XXH3_INITSTATE(&s);
    XXH3_64bits_reset(&s);
    for (size_t i = 0; i < st_count(w->set); i++) {
        const st_tensor *t = st_at(w->set, i);
        if (w->topo.tie_word_embeddings && strcmp(t->name, "lm_head.weight") == 0)
            continue; /* the redundant copy of a tied embedding */
        XXH3_64bits_update(&s, t->name, strlen(t->name) + 1);
        put_u64(&s, (uint64_t)t->dtype);
        put_u64(&s, (uint64_t)t->ndim);
        for (int d = 0; d < t->ndim; d++)
            put_u64(&s, (uint64_t)t->shape[d]);
        put_u64(&s, t->nbytes);
        XXH3_64bits_update(&s, t->data, (size_t)t->nbytes);
    }
    return XXH3_64bits_digest(&s);
}

uint64_t model_active_bytes_per_token(const model_weights *w)
{
    if (!w || !w->layers)
        return 0;
    const cfg_topology *t = &w->topo;
    uint64_t b = w->embed.nbytes / (uint64_t)t->vocab_size + w->final_norm.nbytes + w->lm_head.nbytes;
    for (int64_t l = 0; l < t->num_hidden_layers; l++) {
        const model_layer *L = &w->layers[l];
        b += L->attn_norm.nbytes + L->q.nbytes + L->k.nbytes + L->v.nbytes + L->o.nbytes + L->q_norm.nbytes +
             L->k_norm.nbytes + L->ffn_norm.nbytes;
        if (L->sparse) {
            uint64_t experts = 0;
            for (int64_t e = 0; e < t->num_experts; e++)
                experts += L->gate[e].nbytes + L->up[e].nbytes + L->down[e].nbytes;
            b += L->router.nbytes + experts * (uint64_t)t->num_experts_per_tok / (uint64_t)t->num_experts;
        } else {
            b += L->mlp_gate.nbytes + L->mlp_up.nbytes + L->mlp_down.nbytes;
        }
    }
    return b;
}
