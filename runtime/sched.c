/* sched: builds the op list and buffer table of one forward step (see sched.h). */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>


typedef struct builder {
    sched *s;
    int32_t cap_ops, cap_bufs;
    const sched_trace_hooks *trace;
    int32_t n_traced;
    moert_err *err;
    int failed;
    uint64_t total_bytes;
} builder;

/* Sizes multiply topology dims with runtime limits (prefill chunk x top-k x ...): every
 * product saturates instead of overflowing, and add_buf refuses what is too large. */
static int64_t sat_mul(int64_t a, int64_t b)
{
    int64_t r;
    return a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    return a < 0 || b < 0 || __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

static int grow(void **p, int32_t *cap, int32_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    int32_t nc = *cap ? *cap * 2 : 64;
    while (nc < need)
        nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = nc;
    return 0;
}

static int32_t add_buf(builder *b, const char *name, sched_elem elem, int64_t rows, int64_t cols,
                       bool persistent, int32_t layer)
{
    sched *s = b->s;
    if (b->failed)
        return SCHED_NO_BUF;
    if (grow((void **)&s->bufs, &b->cap_bufs, s->n_bufs + 1, sizeof *s->bufs)) {
        b->failed = err_set(b->err, MOERT_ENOMEM, "schedule: out of memory for buffers");
        return SCHED_NO_BUF;
    }
    int64_t bytes = sat_mul(sat_mul(rows, cols), elem == SCHED_BYTES ? 1 : 4);
    if (bytes > SCHED_MAX_BUFFER_BYTES) {
        char need[96];
        if (bytes == INT64_MAX)
            snprintf(need, sizeof need, "more than 2^63 bytes");
        else
            snprintf(need, sizeof need, "%lld bytes (%lld x %lld%s)", (long long)bytes, (long long)rows,
                     (long long)cols, elem == SCHED_BYTES ? "" : " x 4");
        b->failed = err_set(b->err, MOERT_ECONFIG,
                            "schedule: buffer %s needs %s, expected at most %lld bytes per buffer (lower "
                            "prefill_chunk, max_seq_len or threads)",
                            name, need, (long long)SCHED_MAX_BUFFER_BYTES);
        return SCHED_NO_BUF;
    }
    if ((b->total_bytes += (uint64_t)bytes) > SCHED_MAX_TOTAL_BYTES) {
        b->failed = err_set(b->err, MOERT_ECONFIG,
                            "schedule: buffers up to %s need more than %lld bytes in all, expected at most that "
                            "(lower prefill_chunk, max_seq_len or threads)",
                            name, (long long)SCHED_MAX_TOTAL_BYTES);
        return SCHED_NO_BUF;
    }
    sched_buffer *bf = &s->bufs[s->n_bufs];
    memset(bf, 0, sizeof *bf);
    snprintf(bf->name, sizeof bf->name, "%s", name);
    bf->elem = elem;
    bf->rows = rows;
    bf->cols = cols;
    bf->bytes = (uint64_t)bytes;
    bf->first = -1;
    bf->last = -1;
    bf->persistent = persistent;
    bf->layer = layer;
    return s->n_bufs++;
}

static int32_t layer_buf(builder *b, int32_t layer, const char *what, sched_elem elem,
                         int64_t rows, int64_t cols)
{
    char name[SCHED_NAME_MAX];
    snprintf(name, sizeof name, "l%d.%s", layer, what);
    return add_buf(b, name, elem, rows, cols, false, layer);
}

static sched_op *add_op(builder *b, sched_kind kind, int32_t layer)
{
    sched *s = b->s;
    if (b->failed)
        return NULL;
    if (grow((void **)&s->ops, &b->cap_ops, s->n_ops + 1, sizeof *s->ops)) {
        b->failed = err_set(b->err, MOERT_ENOMEM, "schedule: out of memory for ops");
        return NULL;
    }
    sched_op *op = &s->ops[s->n_ops++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    op->layer = layer;
    op->stage = -1;
    op->trace_index = -1;
    for (int i = 0; i < 3; i++)
        op->in[i] = SCHED_NO_BUF;
    for (int i = 0; i < 2; i++)
        op->out[i] = SCHED_NO_BUF;
    for (int i = 0; i < 4; i++)
        op->scratch[i] = SCHED_NO_BUF;
    return op;
}

static bool traced(const builder *b, cfg_stage stage, int32_t layer)
{
    const cfg_trace_plan *p = b->trace ? b->trace->plan : NULL;
    if (!p || !p->enabled || !(p->stages & (1u << stage)))
        return false;
    if (layer < 0 || p->all_layers)
        return true;
    for (int32_t i = 0; i < p->n_layers; i++)
        if (p->layers[i] == layer)
            return true;
    return false;
}

/* Appends a TRACE op capturing `stage` from src (and src2 for moe_router's ids). */
static void trace_op(builder *b, cfg_stage stage, int32_t layer, int32_t src, int32_t src2)
{
    if (!traced(b, stage, layer))
        return;
    int64_t width = sched_stage_width(b->s, stage);
    uint64_t bytes = b->trace->ring_bytes(b->trace->ctx, stage, layer, width);
    char name[SCHED_NAME_MAX];
    if (layer >= 0)
        snprintf(name, sizeof name, "ring.l%d.%s", layer, cfg_stage_name(stage));
    else
        snprintf(name, sizeof name, "ring.%s", cfg_stage_name(stage));
    int32_t ring = add_buf(b, name, SCHED_BYTES, 1, bytes > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)bytes, true,
                           layer);
    sched_op *op = add_op(b, SCHED_TRACE, layer);
    if (!op)
        return;
    op->stage = stage;
    op->in[0] = src;
    op->in[1] = src2;
    op->out[0] = ring;
    op->n = width;
    op->trace_index = b->n_traced++;
}

int64_t sched_dense_kmax(const sched *s)
{
    int64_t k = s->topo.hidden_size;
    if (s->q_dim > k)
        k = s->q_dim;
    if (s->topo.intermediate_size > k)
        k = s->topo.intermediate_size;
    return k;
}

int64_t sched_stage_width(const sched *s, cfg_stage stage)
{
    switch (stage) {
    case CFG_STAGE_QKV: return s->qkv_dim;
    case CFG_STAGE_ROUTER_LOGITS: return s->topo.num_experts;
    case CFG_STAGE_MOE_ROUTER: return s->topo.num_experts_per_tok;
    case CFG_STAGE_LOGITS: return s->topo.vocab_size;
    default: return s->topo.hidden_size;
    }
}

static void build_layer(builder *b, int32_t l)
{
    sched *s = b->s;
    const cfg_topology *t = &s->topo;
    int64_t R = s->max_rows, H = t->hidden_size;
    int32_t x = s->known.x;

    int32_t attn_norm = layer_buf(b, l, "attn_norm", SCHED_F32, R, H);
    sched_op *op = add_op(b, SCHED_RMSNORM, l);
    if (!op)
        return;
    op->in[0] = x;
    op->out[0] = attn_norm;
    op->w[0] = SCHED_W_ATTN_NORM;
    op->n = H;
    trace_op(b, CFG_STAGE_ATTN_NORM, l, attn_norm, SCHED_NO_BUF);

    int32_t qkv = layer_buf(b, l, "qkv", SCHED_F32, R, s->qkv_dim);
    if (!(op = add_op(b, SCHED_MATMUL, l)))
        return;
    op->in[0] = attn_norm;
    op->out[0] = qkv;
    op->w[0] = SCHED_W_Q;
    op->w[1] = SCHED_W_K;
    op->w[2] = SCHED_W_V;
    op->n = s->qkv_dim;
    op->k = H;
    trace_op(b, CFG_STAGE_QKV, l, qkv, SCHED_NO_BUF);

    if (!(op = add_op(b, SCHED_QK_NORM_ROPE, l)))
        return;
    op->in[0] = s->known.rope_cos;
    op->in[1] = s->known.rope_sin;
    op->out[0] = qkv;
    op->w[0] = SCHED_W_Q_NORM;
    op->w[1] = SCHED_W_K_NORM;

    if (!(op = add_op(b, SCHED_KV_STORE, l)))
        return;
    op->in[0] = qkv;
    op->out[0] = s->known.k_cache[l];
    op->out[1] = s->known.v_cache[l];

    int32_t attn = layer_buf(b, l, "attn", SCHED_F32, R, s->q_dim);
    if (!(op = add_op(b, SCHED_ATTENTION, l)))
        return;
    op->in[0] = qkv;
    op->in[1] = s->known.k_cache[l];
    op->in[2] = s->known.v_cache[l];
    op->out[0] = attn;

    int32_t attn_out = layer_buf(b, l, "attn_out", SCHED_F32, R, H);
    if (!(op = add_op(b, SCHED_MATMUL, l)))
        return;
    op->in[0] = attn;
    op->out[0] = attn_out;
    op->w[0] = SCHED_W_O;
    op->n = H;
    op->k = s->q_dim;
    trace_op(b, CFG_STAGE_ATTN_OUT, l, attn_out, SCHED_NO_BUF);

    if (!(op = add_op(b, SCHED_ADD, l)))
        return;
    op->in[0] = attn_out;
    op->out[0] = x;
    op->n = H;

    int32_t ffn_norm = layer_buf(b, l, "ffn_norm", SCHED_F32, R, H);
    if (!(op = add_op(b, SCHED_RMSNORM, l)))
        return;
    op->in[0] = x;
    op->out[0] = ffn_norm;
    op->w[0] = SCHED_W_FFN_NORM;
    op->n = H;
    trace_op(b, CFG_STAGE_FFN_NORM, l, ffn_norm, SCHED_NO_BUF);

    int32_t ffn_out = layer_buf(b, l, "ffn_out", SCHED_F32, R, H);
    if (cfg_layer_is_sparse(t, l)) {
        int64_t E = t->num_experts, K = t->num_experts_per_tok, I = t->moe_intermediate_size;
        int32_t logits = layer_buf(b, l, "router_logits", SCHED_F32, R, E);
        if (!(op = add_op(b, SCHED_MATMUL, l)))
            return;
        op->in[0] = ffn_norm;
        op->out[0] = logits;
        op->w[0] = SCHED_W_ROUTER;
        op->n = E;
        op->k = H;
        trace_op(b, CFG_STAGE_ROUTER_LOGITS, l, logits, SCHED_NO_BUF);

        int32_t topk_w = layer_buf(b, l, "topk_w", SCHED_F32, R, K);
        int32_t topk_id = layer_buf(b, l, "topk_id", SCHED_I32, R, K);
        int32_t probs = layer_buf(b, l, "router_probs", SCHED_F32, R, E);
        if (!(op = add_op(b, SCHED_ROUTE, l)))
            return;
        op->in[0] = logits;
        op->out[0] = topk_w;
        op->out[1] = topk_id;
        op->scratch[0] = probs;
        op->n = K;
        op->k = E;
        trace_op(b, CFG_STAGE_MOE_ROUTER, l, topk_w, topk_id);

        /* Expert activations are stored grouped by expert (rows of one expert contiguous)
         * so each expert is one matrix product over its tokens. */
        /* offsets [E+1], cursors [E], active experts [E], sorted order [R*K], inverse [R*K] */
        int64_t RK = sat_mul(R, K);
        int32_t index = layer_buf(b, l, "moe_index", SCHED_I32, 1, sat_add(sat_add(sat_mul(3, E), 1), sat_mul(2, RK)));
        int32_t h = layer_buf(b, l, "moe_gate", SCHED_F32, RK, I);
        int32_t up = layer_buf(b, l, "moe_up", SCHED_F32, RK, I);
        int32_t y = layer_buf(b, l, "moe_down", SCHED_F32, RK, H);
        if (!(op = add_op(b, SCHED_MOE, l)))
            return;
        op->in[0] = ffn_norm;
        op->in[1] = topk_w;
        op->in[2] = topk_id;
        op->out[0] = ffn_out;
        op->scratch[0] = index;
        op->scratch[1] = h;
        op->scratch[2] = up;
        op->scratch[3] = y;
        op->w[0] = SCHED_W_EXPERTS;
        op->n = H;
        op->k = I;
    } else {
        int64_t I = t->intermediate_size;
        int32_t h = layer_buf(b, l, "mlp_gate", SCHED_F32, R, I);
        int32_t up = layer_buf(b, l, "mlp_up", SCHED_F32, R, I);
        if (!(op = add_op(b, SCHED_MLP, l)))
            return;
        op->in[0] = ffn_norm;
        op->out[0] = ffn_out;
        op->scratch[0] = h;
        op->scratch[1] = up;
        op->w[0] = SCHED_W_MLP;
        op->n = H;
        op->k = I;
    }
    trace_op(b, CFG_STAGE_MOE_FFN_OUT, l, ffn_out, SCHED_NO_BUF);

    if (!(op = add_op(b, SCHED_ADD, l)))
        return;
    op->in[0] = ffn_out;
    op->out[0] = x;
    op->n = H;
    trace_op(b, CFG_STAGE_OUTPUT, l, x, SCHED_NO_BUF);
}

static void touch(sched *s, int32_t buf, int32_t op_index)
{
    if (buf == SCHED_NO_BUF)
        return;
    sched_buffer *bf = &s->bufs[buf];
    if (bf->first < 0 || op_index < bf->first)
        bf->first = op_index;
    if (op_index > bf->last)
        bf->last = op_index;
}

static void compute_lifetimes(sched *s)
{
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        for (int j = 0; j < 3; j++)
            touch(s, op->in[j], i);
        for (int j = 0; j < 2; j++)
            touch(s, op->out[j], i);
        for (int j = 0; j < 4; j++)
            touch(s, op->scratch[j], i);
    }
    int32_t end = s->n_ops - 1;
    for (int32_t i = 0; i < s->n_bufs; i++) {
        sched_buffer *bf = &s->bufs[i];
        if (bf->persistent || bf->first < 0) {
            bf->first = 0;
            bf->last = end;
        }
    }
    /* Written by the host before op 0; read by the host after the last op. */
    s->bufs[s->known.tokens].first = 0;
    s->bufs[s->known.logits].last = end;
}

int sched_build(const cfg_topology *topo, int64_t max_rows, int64_t max_seq, int32_t threads,
                const sched_trace_hooks *trace, sched *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    if (max_rows < 1 || max_seq < 1 || threads < 1 || max_rows > max_seq)
        return err_set(err, MOERT_EUSAGE,
                       "schedule: need 1 <= prefill chunk (%lld) <= max_seq_len (%lld) and threads >= 1 (%d)",
                       (long long)max_rows, (long long)max_seq, threads);
    builder b = {.s = out, .trace = trace, .err = err};
    sched *s = out;
    s->topo = *topo;
    s->max_rows = max_rows;
    s->max_seq = max_seq;
    s->threads = threads;
    s->q_dim = sat_mul(topo->num_attention_heads, topo->head_dim);
    s->kv_dim = sat_mul(topo->num_key_value_heads, topo->head_dim);
    s->qkv_dim = sat_add(s->q_dim, sat_mul(2, s->kv_dim));
    bool logits_all = trace && trace->plan && trace->plan->enabled &&
                      (trace->plan->stages & (1u << CFG_STAGE_LOGITS)) &&
                      trace->plan->positions == CFG_TRACE_ALL;
    s->logit_rows = logits_all ? max_rows : 1;
    int64_t L = topo->num_hidden_layers, H = topo->hidden_size, V = topo->vocab_size;

    s->known.k_cache = calloc((size_t)L, sizeof *s->known.k_cache);
    s->known.v_cache = calloc((size_t)L, sizeof *s->known.v_cache);
    if (!s->known.k_cache || !s->known.v_cache) {
        sched_free(s);
        return err_set(err, MOERT_ENOMEM, "schedule: out of memory");
    }

    s->known.tokens = add_buf(&b, "tokens", SCHED_I32, 1, max_rows, false, -1);
    s->known.x = add_buf(&b, "x", SCHED_F32, max_rows, H, false, -1);
    s->known.rope_cos = add_buf(&b, "rope.cos", SCHED_F32, max_seq, topo->head_dim / 2, true, -1);
    s->known.rope_sin = add_buf(&b, "rope.sin", SCHED_F32, max_seq, topo->head_dim / 2, true, -1);
    for (int32_t l = 0; l < L; l++) {
        char name[SCHED_NAME_MAX];
        snprintf(name, sizeof name, "kv.l%d.k", l);
        int64_t kv_rows = sat_mul(topo->num_key_value_heads, max_seq);
        s->known.k_cache[l] = add_buf(&b, name, SCHED_F32, kv_rows, topo->head_dim, true, l);
        snprintf(name, sizeof name, "kv.l%d.v", l);
        s->known.v_cache[l] = add_buf(&b, name, SCHED_F32, kv_rows, topo->head_dim, true, l);
    }
    s->known.sample_keys = add_buf(&b, "sample.keys", SCHED_I32, 1, V, true, -1);
    s->known.sample_keys2 = add_buf(&b, "sample.keys2", SCHED_I32, 1, V, true, -1);
    s->known.sample_ids = add_buf(&b, "sample.ids", SCHED_I32, 1, V, true, -1);
    s->known.sample_ids2 = add_buf(&b, "sample.ids2", SCHED_I32, 1, V, true, -1);
    s->known.sample_probs = add_buf(&b, "sample.probs", SCHED_F32, 1, V, true, -1);

    sched_op *op = add_op(&b, SCHED_EMBED, -1);
    if (op) {
        op->in[0] = s->known.tokens;
        op->out[0] = s->known.x;
        op->w[0] = SCHED_W_EMBED;
        op->n = H;
    }
    trace_op(&b, CFG_STAGE_EMBED, -1, s->known.x, SCHED_NO_BUF);
    for (int32_t l = 0; l < L && !b.failed; l++)
        build_layer(&b, l);

    s->known.final_norm = add_buf(&b, "final_norm", SCHED_F32, max_rows, H, false, -1);
    if ((op = add_op(&b, SCHED_RMSNORM, -1))) {
        op->in[0] = s->known.x;
        op->out[0] = s->known.final_norm;
        op->w[0] = SCHED_W_FINAL_NORM;
        op->n = H;
    }
    trace_op(&b, CFG_STAGE_FINAL_NORM, -1, s->known.final_norm, SCHED_NO_BUF);
    s->known.logits = add_buf(&b, "logits", SCHED_F32, s->logit_rows, V, false, -1);
    if ((op = add_op(&b, SCHED_LOGITS, -1))) {
        op->in[0] = s->known.final_norm;
        op->out[0] = s->known.logits;
        op->w[0] = SCHED_W_LM_HEAD;
        op->n = V;
        op->k = H;
    }
    trace_op(&b, CFG_STAGE_LOGITS, -1, s->known.logits, SCHED_NO_BUF);

    if (b.failed) {
        sched_free(s);
        return b.failed;
    }
    compute_lifetimes(s);
    return MOERT_OK;
}

int32_t sched_add_scratch(sched *s, const char *name, uint64_t bytes, uint64_t align, bool persistent,
                          moert_err *err)
{
    if (align & (align - 1)) {
        err_set(err, MOERT_EINTERNAL, "schedule: scratch %s: alignment %llu is not a power of two", name,
                (unsigned long long)align);
        return SCHED_NO_BUF;
    }
    builder b = {.s = s, .cap_bufs = s->n_bufs, .err = err};
    for (int32_t i = 0; i < s->n_bufs; i++)
        b.total_bytes += s->bufs[i].bytes;
    int64_t n = bytes > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)bytes;
    int32_t id = add_buf(&b, name, SCHED_BYTES, 1, n, persistent, -1);
    if (id == SCHED_NO_BUF)
        return SCHED_NO_BUF;
    s->bufs[id].align = align;
    s->bufs[id].first = 0;
    s->bufs[id].last = s->n_ops > 0 ? s->n_ops - 1 : 0;
    return id;
}

void sched_free(sched *s)
{
    if (!s)
        return;
    free(s->ops);
    free(s->bufs);
    free(s->known.k_cache);
    free(s->known.v_cache);
    memset(s, 0, sizeof *s);
}

const char *sched_kind_name(sched_kind k)
{
    static const char *const names[SCHED_KIND_COUNT] = {
        "embed", "rmsnorm", "matmul", "qk_norm_rope", "kv_store", "attention",
        "add", "route", "moe", "mlp", "logits", "trace"};
    return (unsigned)k < SCHED_KIND_COUNT ? names[k] : "?";
}

const char *sched_weight_name(sched_weight w)
{
    static const char *const names[SCHED_W_COUNT] = {
        "", "embed_tokens", "input_layernorm", "q_proj", "k_proj", "v_proj", "o_proj",
        "q_norm", "k_norm", "post_attention_layernorm", "router", "experts", "mlp",
        "norm", "lm_head"};
    return (unsigned)w < SCHED_W_COUNT ? names[w] : "?";
}
