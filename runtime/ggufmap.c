/* ggufmap: llama.cpp's qwen3moe GGUF names and metadata onto moert's (see ggufmap.h). */
#include "ggufmap.h"

#include "../ops/ops.h"
#include "synth.h"

#include <inttypes.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARCH "qwen3moe"

/* ---- topology ----------------------------------------------------------------------- */

static bool str_is(gguf_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.p, want, s.len) == 0;
}

/* An integer key into *v; absent keys are an error only when required. */
static int get_int(const gguf_file *g, const char *key, bool required, int64_t *v, bool *present, moert_err *err)
{
    if (present)
        *present = false;
    if (!gguf_kv_find(g, key)) {
        if (required)
            return err_set(err, MOERT_EFORMAT, "%s: missing metadata key '%s', expected an integer", gguf_path(g),
                           key);
        return MOERT_OK;
    }
    if (present)
        *present = true;
    return gguf_get_i64(g, key, v, err);
}

static int refuse_if(bool cond, const gguf_file *g, const char *key, const char *why, moert_err *err)
{
    return cond ? err_set(err, MOERT_EFORMAT, "%s: metadata '%s' %s, which moert does not implement",
                          gguf_path(g), key, why)
                : MOERT_OK;
}

int ggufmap_topology(const gguf_file *g, cfg_topology *t, moert_err *err)
{
    memset(t, 0, sizeof *t);
    const char *path = gguf_path(g);
    gguf_str arch;
    int st = gguf_get_str(g, "general.architecture", &arch, err);
    if (st)
        return st;
    if (!str_is(arch, ARCH))
        return err_set(err, MOERT_EFORMAT, "%s: general.architecture is '%.*s', expected '" ARCH "' (Qwen3-MoE)",
                       path, (int)(arch.len > 64 ? 64 : arch.len), arch.p);
    int64_t key_len = 0, val_len = 0, ff = 0, shared = 0, rope_dims = 0, window = 0;
    bool has_key, has_val, has_ff, has_shared, has_rope_dims, has_window;
    if ((st = get_int(g, ARCH ".block_count", true, &t->num_hidden_layers, NULL, err)) ||
        (st = get_int(g, ARCH ".embedding_length", true, &t->hidden_size, NULL, err)) ||
        (st = get_int(g, ARCH ".attention.head_count", true, &t->num_attention_heads, NULL, err)) ||
        (st = get_int(g, ARCH ".attention.head_count_kv", true, &t->num_key_value_heads, NULL, err)) ||
        (st = get_int(g, ARCH ".expert_count", true, &t->num_experts, NULL, err)) ||
        (st = get_int(g, ARCH ".expert_used_count", true, &t->num_experts_per_tok, NULL, err)) ||
        (st = get_int(g, ARCH ".expert_feed_forward_length", true, &t->moe_intermediate_size, NULL, err)) ||
        (st = get_int(g, ARCH ".context_length", false, &t->max_position_embeddings, NULL, err)) ||
        (st = get_int(g, ARCH ".attention.key_length", false, &key_len, &has_key, err)) ||
        (st = get_int(g, ARCH ".attention.value_length", false, &val_len, &has_val, err)) ||
        (st = get_int(g, ARCH ".feed_forward_length", false, &ff, &has_ff, err)) ||
        (st = get_int(g, ARCH ".expert_shared_count", false, &shared, &has_shared, err)) ||
        (st = get_int(g, ARCH ".rope.dimension_count", false, &rope_dims, &has_rope_dims, err)) ||
        (st = get_int(g, ARCH ".attention.sliding_window", false, &window, &has_window, err)))
        return st;
    if ((st = gguf_get_f64(g, ARCH ".rope.freq_base", &t->rope_theta, err)) ||
        (st = gguf_get_f64(g, ARCH ".attention.layer_norm_rms_epsilon", &t->rms_norm_eps, err)))
        return st;
    if (t->num_attention_heads <= 0)
        return err_set(err, MOERT_EFORMAT, "%s: " ARCH ".attention.head_count is %" PRId64 ", expected > 0", path,
                       t->num_attention_heads);
    t->head_dim = has_key ? key_len : t->hidden_size / t->num_attention_heads;
    if (has_val && val_len != t->head_dim)
        return err_set(err, MOERT_EFORMAT,
                       "%s: " ARCH ".attention.value_length is %" PRId64 " but key_length is %" PRId64
                       ", expected them equal (Qwen3-MoE's head_dim)",
                       path, val_len, t->head_dim);
    if ((st = refuse_if(has_shared && shared != 0, g, ARCH ".expert_shared_count", "asks for shared experts", err)) ||
        (st = refuse_if(has_window && window != 0, g, ARCH ".attention.sliding_window", "asks for sliding-window "
                        "attention", err)) ||
        (st = refuse_if(has_rope_dims && rope_dims != t->head_dim, g, ARCH ".rope.dimension_count",
                        "asks for a partial rotary dimension (not head_dim)", err)))
        return st;
    const gguf_kv *scaling = gguf_kv_find(g, ARCH ".rope.scaling.type");
    if (scaling) {
        gguf_str sv;
        if ((st = gguf_get_str(g, ARCH ".rope.scaling.type", &sv, err)))
            return st;
        if (!str_is(sv, "none"))
            return err_set(err, MOERT_EFORMAT, "%s: metadata '" ARCH ".rope.scaling.type' is '%.*s', which moert "
                           "does not implement (expected 'none')", path, (int)(sv.len > 32 ? 32 : sv.len), sv.p);
    }
    double factor = 0;
    if (gguf_kv_find(g, ARCH ".rope.scaling.factor") &&
        ((st = gguf_get_f64(g, ARCH ".rope.scaling.factor", &factor, err)) ||
         (st = refuse_if(factor != 0 && factor != 1, g, ARCH ".rope.scaling.factor", "asks for rope scaling", err))))
        return st;
    /* llama.cpp's qwen3moe graph always renormalises the top-k weights. */
    t->norm_topk_prob = true;
    if (gguf_kv_find(g, ARCH ".expert_weights_norm") &&
        (st = gguf_get_bool(g, ARCH ".expert_weights_norm", &t->norm_topk_prob, err)))
        return st;
    t->intermediate_size = has_ff ? ff : 0;
    t->decoder_sparse_step = 1; /* every qwen3moe block in llama.cpp is routed */
    const gguf_tensor *embd = gguf_tensor_find(g, "token_embd.weight");
    if (!embd || embd->ndim != 2)
        return err_set(err, MOERT_EFORMAT, "%s: tensor 'token_embd.weight' is %s, expected a matrix ne {%" PRId64
                       ", vocab}", path, embd ? "not 2-D" : "missing", t->hidden_size);
    t->vocab_size = embd->ne[1];
    const gguf_kv *tokens = gguf_kv_find(g, "tokenizer.ggml.tokens");
    if (tokens && tokens->type == GGUF_V_ARRAY && tokens->arr_n != (uint64_t)t->vocab_size)
        return err_set(err, MOERT_EFORMAT, "%s: tokenizer.ggml.tokens has %" PRIu64 " entries but token_embd.weight "
                       "has %" PRId64 " rows, expected one row per token", path, tokens->arr_n, t->vocab_size);
    t->tie_word_embeddings = gguf_tensor_find(g, "output.weight") == NULL;
    return cfg_check_topology(t, path, err);
}

int ggufmap_eos_ids(const gguf_file *g, int32_t *ids, int cap, int *n, moert_err *err)
{
    static const char *const keys[] = {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                       "tokenizer.ggml.eom_token_id"};
    *n = 0;
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        if (!gguf_kv_find(g, keys[i]))
            continue;
        int64_t v;
        int st = gguf_get_i64(g, keys[i], &v, err);
        if (st)
            return st;
        if (v < 0 || v > INT32_MAX)
            return err_set(err, MOERT_EFORMAT, "%s: %s is %" PRId64 ", expected a token id", gguf_path(g), keys[i], v);
        bool seen = false;
        for (int k = 0; k < *n; k++)
            seen |= ids[k] == (int32_t)v;
        if (!seen && *n < cap)
            ids[(*n)++] = (int32_t)v;
    }
    return MOERT_OK;
}

/* ---- tensors ------------------------------------------------------------------------ */

typedef enum kind { K_VEC, K_MAT, K_EXPERTS } kind;

/* One row of the name table: llama.cpp's name (after "blk.N." for per-layer tensors), the
 * hub's, and the ggml shape in topology terms. */
typedef struct role {
    const char *gguf;
    const char *hub;
    kind kind;
    int in, out; /* dimension ids below */
    bool optional;
} role;

enum { D_NONE, D_H, D_V, D_HD, D_Q, D_KV, D_E, D_IM };

static const role global_roles[] = {
    {"token_embd.weight", "model.embed_tokens.weight", K_MAT, D_H, D_V, false},
    {"output_norm.weight", "model.norm.weight", K_VEC, D_H, D_NONE, false},
    {"output.weight", "lm_head.weight", K_MAT, D_H, D_V, true},
};

static const role layer_roles[] = {
    {"attn_norm.weight", "input_layernorm.weight", K_VEC, D_H, D_NONE, false},
    {"attn_q.weight", "self_attn.q_proj.weight", K_MAT, D_H, D_Q, false},
    {"attn_k.weight", "self_attn.k_proj.weight", K_MAT, D_H, D_KV, false},
    {"attn_v.weight", "self_attn.v_proj.weight", K_MAT, D_H, D_KV, false},
    {"attn_output.weight", "self_attn.o_proj.weight", K_MAT, D_Q, D_H, false},
    {"attn_q_norm.weight", "self_attn.q_norm.weight", K_VEC, D_HD, D_NONE, false},
    {"attn_k_norm.weight", "self_attn.k_norm.weight", K_VEC, D_HD, D_NONE, false},
    {"ffn_norm.weight", "post_attention_layernorm.weight", K_VEC, D_H, D_NONE, false},
    {"ffn_gate_inp.weight", "mlp.gate.weight", K_MAT, D_H, D_E, false},
    {"ffn_gate_exps.weight", "gate_proj.weight", K_EXPERTS, D_H, D_IM, false},
    {"ffn_up_exps.weight", "up_proj.weight", K_EXPERTS, D_H, D_IM, false},
    {"ffn_down_exps.weight", "down_proj.weight", K_EXPERTS, D_IM, D_H, false},
};
#define N_LAYER_ROLES (sizeof layer_roles / sizeof *layer_roles)
#define N_GLOBAL_ROLES (sizeof global_roles / sizeof *global_roles)

static int64_t dim_of(const cfg_topology *t, int d)
{
    switch (d) {
    case D_H: return t->hidden_size;
    case D_V: return t->vocab_size;
    case D_HD: return t->head_dim;
    case D_Q: return t->num_attention_heads * t->head_dim;
    case D_KV: return t->num_key_value_heads * t->head_dim;
    case D_E: return t->num_experts;
    case D_IM: return t->moe_intermediate_size;
    default: return 0;
    }
}

static int role_ne(const cfg_topology *t, const role *r, int64_t ne[GGUF_MAX_DIMS])
{
    memset(ne, 0, GGUF_MAX_DIMS * sizeof *ne);
    ne[0] = dim_of(t, r->in);
    if (r->kind == K_VEC)
        return 1;
    ne[1] = dim_of(t, r->out);
    if (r->kind == K_MAT)
        return 2;
    ne[2] = t->num_experts;
    return 3;
}

static void fmt_ne(char *buf, size_t cap, int ndim, const int64_t *ne)
{
    size_t n = (size_t)snprintf(buf, cap, "{");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", ne[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "}");
}

/* Which role a GGUF name plays: *layer = -1 for global tensors.  NULL when unknown. */
static const role *classify(const char *name, int64_t n_layers, int64_t *layer)
{
    *layer = -1;
    for (size_t i = 0; i < N_GLOBAL_ROLES; i++)
        if (!strcmp(name, global_roles[i].gguf))
            return &global_roles[i];
    if (strncmp(name, "blk.", 4) != 0)
        return NULL;
    const char *p = name + 4;
    int64_t l = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 6) {
        l = 10 * l + (*p++ - '0');
        digits++;
    }
    if (!digits || *p != '.' || (digits > 1 && name[4] == '0') || l >= n_layers)
        return NULL;
    p++;
    for (size_t i = 0; i < N_LAYER_ROLES; i++)
        if (!strcmp(p, layer_roles[i].gguf)) {
            *layer = l;
            return &layer_roles[i];
        }
    return NULL;
}

static bool plain_float(st_dtype d)
{
    return d == ST_F32 || d == ST_F16 || d == ST_BF16;
}

typedef struct views {
    st_view *v;
    char **names;
    size_t n, cap;
} views;

static int views_add(views *vs, const char *name, st_dtype dt, int ndim, int64_t d0, int64_t d1, const void *data,
                     uint64_t nbytes)
{
    if (vs->n == vs->cap) {
        size_t cap = vs->cap ? 2 * vs->cap : 256;
        st_view *v = realloc(vs->v, cap * sizeof *v);
        if (!v)
            return MOERT_ENOMEM;
        vs->v = v;
        char **nm = realloc(vs->names, cap * sizeof *nm);
        if (!nm)
            return MOERT_ENOMEM;
        vs->names = nm;
        vs->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy)
        return MOERT_ENOMEM;
    st_view *v = &vs->v[vs->n];
    memset(v, 0, sizeof *v);
    vs->names[vs->n++] = copy;
    v->name = copy;
    v->dtype = dt;
    v->ndim = ndim;
    v->shape[0] = d0;
    v->shape[1] = d1;
    v->data = data;
    v->nbytes = nbytes;
    return MOERT_OK;
}

static void views_free(views *vs)
{
    for (size_t i = 0; i < vs->n; i++)
        free(vs->names[i]);
    free(vs->names);
    free(vs->v);
}

/* The hub-named views of one recognised tensor (already shape-checked). */
static int add_role_views(views *vs, const role *r, int64_t layer, const gguf_tensor *gt)
{
    char nm[160];
    if (r->kind == K_EXPERTS) {
        uint64_t slice = gt->nbytes / (uint64_t)gt->ne[2];
        for (int64_t e = 0; e < gt->ne[2]; e++) {
            snprintf(nm, sizeof nm, "model.layers.%" PRId64 ".mlp.experts.%" PRId64 ".%s", layer, e, r->hub);
            if (views_add(vs, nm, gt->dtype, 2, gt->ne[1], gt->ne[0], (const uint8_t *)gt->data + e * slice, slice))
                return MOERT_ENOMEM;
        }
        return MOERT_OK;
    }
    if (layer >= 0)
        snprintf(nm, sizeof nm, "model.layers.%" PRId64 ".%s", layer, r->hub);
    else
        snprintf(nm, sizeof nm, "%s", r->hub);
    if (r->kind == K_VEC)
        return views_add(vs, nm, gt->dtype, 1, gt->ne[0], 0, gt->data, gt->nbytes) ? MOERT_ENOMEM : MOERT_OK;
    return views_add(vs, nm, gt->dtype, 2, gt->ne[1], gt->ne[0], gt->data, gt->nbytes) ? MOERT_ENOMEM : MOERT_OK;
}

static void release_gguf(void *owner)
{
    gguf_close(owner);
}

int ggufmap_open_set(const char *path, st_set **out, moert_err *err)
{
    *out = NULL;
    gguf_file *g;
    int st = gguf_open(path, &g, err);
    if (st)
        return st;
    cfg_topology t;
    if ((st = ggufmap_topology(g, &t, err))) {
        gguf_close(g);
        return st;
    }
    const size_t L = (size_t)t.num_hidden_layers; /* bounded by cfg_check_topology */
    bool *seen = calloc(L * N_LAYER_ROLES + N_GLOBAL_ROLES, sizeof *seen);
    views vs = {0};
    err_list pr = {0};
    if (!seen) {
        gguf_close(g);
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; i < gguf_tensor_count(g) && !st; i++) {
        const gguf_tensor *gt = gguf_tensor_at(g, i);
        int64_t layer;
        const role *r = classify(gt->name, t.num_hidden_layers, &layer);
        if (!r) {
            char ne[96];
            fmt_ne(ne, sizeof ne, gt->ndim, gt->ne);
            err_list_add(&pr, "unexpected '%.120s' ne %s", gt->name, ne);
            continue;
        }
        size_t slot = layer < 0 ? (size_t)(r - global_roles) : N_GLOBAL_ROLES + (size_t)layer * N_LAYER_ROLES +
                                                                  (size_t)(r - layer_roles);
        seen[slot] = true;
        int64_t want[GGUF_MAX_DIMS];
        int nd = role_ne(&t, r, want);
        if (gt->ndim != nd || memcmp(gt->ne, want, (size_t)nd * sizeof *want)) {
            char ws[96], hs[96];
            fmt_ne(ws, sizeof ws, nd, want);
            fmt_ne(hs, sizeof hs, gt->ndim, gt->ne);
            err_list_add(&pr, "'%.120s': ne %s, expected %s", gt->name, hs, ws);
            continue;
        }
        if (r->kind == K_VEC && !plain_float(gt->dtype)) {
            err_list_add(&pr, "'%.120s': type %s, expected F32, F16 or BF16 for a norm weight", gt->name,
                         st_dtype_name(gt->dtype));
            continue;
        }
        if (add_role_views(&vs, r, layer, gt))
            st = err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    for (size_t r = 0; r < N_GLOBAL_ROLES && !st; r++)
        if (!seen[r] && !global_roles[r].optional)
            err_list_add(&pr, "missing '%s'", global_roles[r].gguf);
    for (size_t l = 0; l < L && !st; l++)
        for (size_t r = 0; r < N_LAYER_ROLES; r++)
            if (!seen[N_GLOBAL_ROLES + l * N_LAYER_ROLES + r]) {
                int64_t want[GGUF_MAX_DIMS];
                char ws[96];
                fmt_ne(ws, sizeof ws, role_ne(&t, &layer_roles[r], want), want);
                err_list_add(&pr, "missing 'blk.%zu.%s' ne %s", l, layer_roles[r].gguf, ws);
            }
    free(seen);
    if (!st && (pr.shown || pr.dropped)) {
        char prefix[CFG_PATH_MAX + 80];
        snprintf(prefix, sizeof prefix, "%s: tensors do not match the metadata's qwen3moe topology", path);
        st = err_list_finish(&pr, err, MOERT_EFORMAT, prefix);
    }
    if (st) {
        views_free(&vs);
        gguf_close(g);
        return st;
    }
    st = st_open_views(vs.v, vs.n, path, release_gguf, g, out, err);
    views_free(&vs);
    return st;
}

int ggufmap_open_weights(const char *path, st_set **out, moert_err *err)
{
    if (gguf_is_gguf(path))
        return ggufmap_open_set(path, out, err);
    return st_open(path, out, err);
}

/* ---- writing ------------------------------------------------------------------------ */

static const char *const mixes[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k_m", "q5_k_m", "q6_k", NULL};

bool ggufmap_known_mix(const char *mix)
{
    for (int i = 0; mix && mixes[i]; i++)
        if (!strcmp(mix, mixes[i]))
            return true;
    return false;
}

/* llama-quantize's "use more bits" layers: the first and last eighth, and every third one
 * in between. */
static bool more_bits(int64_t layer, int64_t n_layers)
{
    return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

/* A type whose block does not divide the row falls back the way llama-quantize does. */
static st_dtype fit_row(st_dtype d, int64_t row)
{
    if (st_dtype_row_bytes(d, (uint64_t)row) > 0)
        return d;
    st_dtype f = d == ST_Q4_K ? ST_Q5_0 : ST_Q8_0;
    return st_dtype_row_bytes(f, (uint64_t)row) > 0 ? f : ST_F32;
}

static st_dtype pick_type(const char *mix, const role *r, int64_t layer, int64_t n_layers, int64_t row)
{
    if (r->kind == K_VEC || !strcmp(r->gguf, "ffn_gate_inp.weight"))
        return ST_F32;
    if (!strcmp(mix, "f32"))
        return ST_F32;
    if (!strcmp(mix, "f16"))
        return ST_F16;
    if (!strcmp(mix, "bf16"))
        return ST_BF16;
    st_dtype d;
    if (!strcmp(mix, "q8_0"))
        d = ST_Q8_0;
    else if (!strcmp(mix, "q4_0"))
        d = ST_Q4_0;
    else if (!strcmp(mix, "q5_0"))
        d = ST_Q5_0;
    else if (!strcmp(mix, "q6_k"))
        d = ST_Q6_K;
    else {
        st_dtype base = !strcmp(mix, "q5_k_m") ? ST_Q5_K : ST_Q4_K;
        bool hi = !strcmp(r->gguf, "output.weight") || !strcmp(r->gguf, "attn_v.weight") ||
                  (!strcmp(r->gguf, "ffn_down_exps.weight") && more_bits(layer, n_layers));
        d = hi ? ST_Q6_K : base;
    }
    return fit_row(d, row);
}

typedef struct wtensor {
    const role *r;
    int64_t layer;
    st_dtype dtype;
    int ndim;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t row_bytes;
} wtensor;

typedef struct wctx {
    const st_set *src;
    const wtensor *t;
    int nthreads;   /* encoders working on one chunk's whole rows */
    int64_t max_k;  /* the longest row */
    float *row;     /* nthreads * max_k floats: each encoder's widened row */
    uint8_t *qrow;  /* nthreads * max_k * 4 bytes: each encoder's encoded row */
} wctx;

/* Row `i` (over all slices) of tensor t, encoded into qrow through the float row `row`. */
static int encode_row(const wctx *c, const wtensor *t, int64_t i, float *row, uint8_t *qrow, moert_err *err)
{
    char nm[160];
    int64_t rows_per_slice = t->ndim == 1 ? 1 : t->ne[1];
    int64_t e = i / rows_per_slice, rr = i % rows_per_slice;
    if (t->r->kind == K_EXPERTS)
        snprintf(nm, sizeof nm, "model.layers.%" PRId64 ".mlp.experts.%" PRId64 ".%s", t->layer, e, t->r->hub);
    else if (t->layer >= 0)
        snprintf(nm, sizeof nm, "model.layers.%" PRId64 ".%s", t->layer, t->r->hub);
    else
        snprintf(nm, sizeof nm, "%s", t->r->hub);
    const st_tensor *s = st_find(c->src, nm);
    int so = s ? st_dtype_ops(s->dtype) : -1;
    if (!s || so < 0 || st_dtype_is_block(s->dtype))
        return err_set(err, MOERT_EUSAGE, "gguf writer: source tensor '%s' %s", nm,
                       s ? "is not a plain float type" : "is missing");
    const int64_t k = t->ne[0];
    size_t src_row = (size_t)st_dtype_row_bytes(s->dtype, (uint64_t)k);
    ops_to_f32(row, (const uint8_t *)s->data + (size_t)rr * src_row, (ops_dtype)so, k);
    switch (t->dtype) {
    case ST_F32: memcpy(qrow, row, (size_t)k * 4); break;
    case ST_F16:
    case ST_BF16:
        for (int64_t j = 0; j < k; j++) {
            uint16_t h = t->dtype == ST_F16 ? synth_f32_to_f16(row[j]) : synth_f32_to_bf16(row[j]);
            memcpy(qrow + 2 * j, &h, 2);
        }
        break;
    default: ops_quantize_row(qrow, row, (ops_dtype)st_dtype_ops(t->dtype), k); break;
    }
    return MOERT_OK;
}

/* Whole rows first .. first + n - 1 of t encoded straight into out, split over the encoders
 * (every row is encoded alone, so the bytes do not depend on the split).  The first
 * failure's message is kept (the lowest row that failed). */
static int encode_rows(wctx *c, const wtensor *t, int64_t first, int64_t n, uint8_t *out, moert_err *err)
{
    int st = MOERT_OK;
    int64_t bad = n;
    moert_err first_err;
    err_clear(&first_err);
#pragma omp parallel for num_threads(c->nthreads) schedule(static) if (n >= 2 * c->nthreads)
    for (int64_t r = 0; r < n; r++) {
        const int me = omp_get_thread_num();
        float *row = c->row + (size_t)me * (size_t)c->max_k;
        uint8_t *qrow = c->qrow + (size_t)me * (size_t)c->max_k * 4;
        moert_err e;
        err_clear(&e);
        int rs = encode_row(c, t, first + r, row, qrow, &e);
        if (rs) {
#pragma omp critical(ggufmap_encode_err)
            if (r < bad) {
                bad = r;
                st = rs;
                first_err = e;
            }
        } else {
            memcpy(out + (size_t)r * t->row_bytes, qrow, (size_t)t->row_bytes);
        }
    }
    if (st && err)
        *err = first_err;
    return st;
}

static int fill_tensor(void *ctx, size_t index, uint64_t off, void *buf, size_t nbytes, moert_err *err)
{
    wctx *c = ctx;
    const wtensor *t = &c->t[index];
    uint8_t *out = buf;
    while (nbytes) {
        int64_t i = (int64_t)(off / t->row_bytes);
        uint64_t in_row = off % t->row_bytes;
        if (in_row == 0 && nbytes >= t->row_bytes) {
            int64_t n = (int64_t)(nbytes / t->row_bytes);
            int st = encode_rows(c, t, i, n, out, err);
            if (st)
                return st;
            out += (size_t)n * t->row_bytes;
            off += (uint64_t)n * t->row_bytes;
            nbytes -= (size_t)n * t->row_bytes;
            continue;
        }
        int st = encode_row(c, t, i, c->row, c->qrow, err);
        if (st)
            return st;
        size_t take = (size_t)(t->row_bytes - in_row) < nbytes ? (size_t)(t->row_bytes - in_row) : nbytes;
        memcpy(out, c->qrow + in_row, take);
        out += take;
        off += take;
        nbytes -= take;
    }
    return MOERT_OK;
}

int ggufmap_write(const char *path, const cfg_topology *topo, const st_set *src, const char *mix, moert_err *err)
{
    if (!ggufmap_known_mix(mix))
        return err_set(err, MOERT_EUSAGE, "gguf writer: unknown type mix '%s', expected f32, f16, bf16, q8_0, q4_0, "
                       "q5_0, q4_k_m, q5_k_m or q6_k", mix ? mix : "(null)");
    int st = cfg_check_topology(topo, "gguf writer", err);
    if (st)
        return st;
    for (int64_t l = 0; l < topo->num_hidden_layers; l++)
        if (!cfg_layer_is_sparse(topo, l))
            return err_set(err, MOERT_EUSAGE, "gguf writer: layer %" PRId64 " is a dense MLP layer, which llama.cpp's "
                           "qwen3moe has no tensor names for", l);
    const size_t n_max = N_GLOBAL_ROLES + (size_t)topo->num_hidden_layers * N_LAYER_ROLES;
    wtensor *ts = calloc(n_max, sizeof *ts);
    gguf_writer *w = NULL;
    wctx c = {.src = src, .t = ts};
    int64_t max_k = 0;
    if (!ts || (st = gguf_writer_new(&w, err)))
        goto out_nomem;
    size_t n = 0;
    for (size_t r = 0; r < N_GLOBAL_ROLES; r++) {
        if (!strcmp(global_roles[r].gguf, "output.weight") && topo->tie_word_embeddings)
            continue;
        ts[n].r = &global_roles[r];
        ts[n++].layer = -1;
    }
    for (int64_t l = 0; l < topo->num_hidden_layers; l++)
        for (size_t r = 0; r < N_LAYER_ROLES; r++) {
            ts[n].r = &layer_roles[r];
            ts[n++].layer = l;
        }
    char nm[160];
    for (size_t i = 0; i < n && !st; i++) {
        wtensor *t = &ts[i];
        t->ndim = role_ne(topo, t->r, t->ne);
        t->dtype = pick_type(mix, t->r, t->layer, topo->num_hidden_layers, t->ne[0]);
        t->row_bytes = st_dtype_row_bytes(t->dtype, (uint64_t)t->ne[0]);
        if (t->ne[0] > max_k)
            max_k = t->ne[0];
        if (t->layer >= 0)
            snprintf(nm, sizeof nm, "blk.%" PRId64 ".%s", t->layer, t->r->gguf);
        else
            snprintf(nm, sizeof nm, "%s", t->r->gguf);
        st = gguf_writer_add_tensor(w, nm, t->dtype, t->ndim, t->ne, err);
    }
    if (st)
        goto out;
    /* metadata, as llama.cpp's converter writes it for a vocabulary-less model */
    const cfg_topology *T = topo;
    if ((st = gguf_writer_add_str(w, "general.architecture", ARCH, err)) ||
        (st = gguf_writer_add_str(w, "general.name", "moert synth", err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".block_count", (uint32_t)T->num_hidden_layers, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".context_length",
                                  (uint32_t)(T->max_position_embeddings > 0 ? T->max_position_embeddings : 4096),
                                  err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".embedding_length", (uint32_t)T->hidden_size, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".feed_forward_length",
                                  (uint32_t)(T->intermediate_size > 0 ? T->intermediate_size : T->moe_intermediate_size),
                                  err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".attention.head_count", (uint32_t)T->num_attention_heads, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".attention.head_count_kv", (uint32_t)T->num_key_value_heads, err)) ||
        (st = gguf_writer_add_f32(w, ARCH ".rope.freq_base", (float)T->rope_theta, err)) ||
        (st = gguf_writer_add_f32(w, ARCH ".attention.layer_norm_rms_epsilon", (float)T->rms_norm_eps, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".expert_used_count", (uint32_t)T->num_experts_per_tok, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".attention.key_length", (uint32_t)T->head_dim, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".attention.value_length", (uint32_t)T->head_dim, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".expert_count", (uint32_t)T->num_experts, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".expert_feed_forward_length", (uint32_t)T->moe_intermediate_size, err)) ||
        (st = gguf_writer_add_u32(w, ARCH ".vocab_size", (uint32_t)T->vocab_size, err)) ||
        (st = gguf_writer_add_str(w, "tokenizer.ggml.model", "none", err)))
        goto out;
    c.nthreads = omp_get_max_threads();
    c.max_k = max_k;
    c.row = malloc((size_t)c.nthreads * (size_t)max_k * sizeof *c.row);
    c.qrow = malloc((size_t)c.nthreads * (size_t)max_k * sizeof(float));
    if (!c.row || !c.qrow)
        goto out_nomem;
    st = gguf_writer_write_file(w, path, fill_tensor, &c, err);
    goto out;
out_nomem:
    if (!st)
        st = err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
out:
    free(c.row);
    free(c.qrow);
    free(ts);
    gguf_writer_free(w);
    return st;
}
