/* shard: expert-parallel sharding arithmetic (see shard.h). */
#include "shard.h"

#include <string.h>

#include "wlayout.h"

int32_t shard_expert_owner(int64_t expert, int32_t gpus)
{
    return gpus > 1 ? (int32_t)(expert % gpus) : 0;
}

static uint64_t padded(uint64_t bytes)
{
    return (bytes + WLAYOUT_ALIGN - 1) & ~(uint64_t)(WLAYOUT_ALIGN - 1);
}

static int64_t owned(int64_t E, int32_t gpus, int32_t r)
{
    return gpus > 1 ? E / gpus + (r < E % gpus) : E;
}

/* The replicated tensors' element counts, in wlayout's order, passed one by one to fn. */
static void each_replicated(const cfg_topology *t, void (*fn)(void *, uint64_t), void *ctx)
{
    uint64_t H = (uint64_t)t->hidden_size, V = (uint64_t)t->vocab_size, hd = (uint64_t)t->head_dim;
    uint64_t q = (uint64_t)t->num_attention_heads * hd, kv = (uint64_t)t->num_key_value_heads * hd;
    fn(ctx, V * H);
    fn(ctx, H);
    if (!t->tie_word_embeddings)
        fn(ctx, V * H);
    for (int64_t l = 0; l < t->num_hidden_layers; l++) {
        uint64_t per[] = {H, q * H, kv * H, kv * H, H * q, hd, hd, H};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++)
            fn(ctx, per[i]);
        if (cfg_layer_is_sparse(t, l)) {
            fn(ctx, (uint64_t)t->num_experts * H);
        } else {
            for (int i = 0; i < 3; i++)
                fn(ctx, (uint64_t)t->intermediate_size * H);
        }
    }
}

static int64_t sparse_layers(const cfg_topology *t)
{
    int64_t n = 0;
    for (int64_t l = 0; l < t->num_hidden_layers; l++)
        n += cfg_layer_is_sparse(t, l);
    return n;
}

static void add_count(void *ctx, uint64_t n)
{
    *(uint64_t *)ctx += n;
}

void shard_params(const cfg_topology *t, uint64_t *replicated, uint64_t *experts)
{
    *replicated = 0;
    each_replicated(t, add_count, replicated);
    *experts = (uint64_t)sparse_layers(t) * (uint64_t)t->num_experts * 3 *
               (uint64_t)t->moe_intermediate_size * (uint64_t)t->hidden_size;
}

typedef struct bytes_acc {
    uint64_t elem, sum;
} bytes_acc;

static void add_bytes(void *ctx, uint64_t n)
{
    bytes_acc *a = ctx;
    a->sum += padded(n * a->elem);
}

void shard_weights_topo(const cfg_topology *t, uint64_t elem_bytes, int32_t gpus, shard_weights *w)
{
    bytes_acc a = {elem_bytes, 0};
    each_replicated(t, add_bytes, &a);
    uint64_t one = 3 * padded((uint64_t)t->moe_intermediate_size * (uint64_t)t->hidden_size * elem_bytes);
    int64_t L = sparse_layers(t);
    for (int32_t r = 0; r < gpus; r++) {
        w[r].replicated_bytes = a.sum;
        w[r].experts_per_layer = owned(t->num_experts, gpus, r);
        w[r].expert_bytes = (uint64_t)L * (uint64_t)w[r].experts_per_layer * one;
    }
}

void shard_weights_bound(const model_weights *mw, int32_t gpus, shard_weights *w)
{
    const cfg_topology *t = &mw->topo;
    uint64_t rep = padded(mw->embed.nbytes) + padded(mw->final_norm.nbytes);
    if (mw->lm_head.data != mw->embed.data)
        rep += padded(mw->lm_head.nbytes);
    for (int32_t r = 0; r < gpus; r++) {
        w[r].experts_per_layer = owned(t->num_experts, gpus, r);
        w[r].expert_bytes = 0;
    }
    for (int64_t l = 0; l < t->num_hidden_layers; l++) {
        const model_layer *ml = &mw->layers[l];
        const model_tensor *per[] = {&ml->attn_norm, &ml->q, &ml->k, &ml->v, &ml->o, &ml->q_norm, &ml->k_norm,
                                     &ml->ffn_norm};
        for (size_t i = 0; i < sizeof per / sizeof per[0]; i++)
            rep += padded(per[i]->nbytes);
        if (!ml->sparse) {
            rep += padded(ml->mlp_gate.nbytes) + padded(ml->mlp_up.nbytes) + padded(ml->mlp_down.nbytes);
            continue;
        }
        rep += padded(ml->router.nbytes);
        for (int64_t e = 0; e < t->num_experts; e++)
            w[shard_expert_owner(e, gpus)].expert_bytes +=
                padded(ml->gate[e].nbytes) + padded(ml->up[e].nbytes) + padded(ml->down[e].nbytes);
    }
    for (int32_t r = 0; r < gpus; r++)
        w[r].replicated_bytes = rep;
}

uint64_t shard_gather_bytes(const sched *s, int32_t gpus)
{
    if (gpus <= 1)
        return 0;
    int64_t K = s->topo.num_experts_per_tok > 1 ? s->topo.num_experts_per_tok : 1;
    return (uint64_t)gpus * (uint64_t)s->max_rows * (uint64_t)K * (uint64_t)s->topo.hidden_size * sizeof(float);
}

static double gib(uint64_t b)
{
    return (double)b / (1024.0 * 1024.0 * 1024.0);
}

int shard_plan_build(const sched *s, uint64_t arena_bytes, int32_t gpus, const shard_weights *w,
                     uint64_t device_bytes, shard_plan *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    if (gpus < 1 || gpus > SHARD_MAX_GPUS)
        return err_set(err, MOERT_EUSAGE, "shard plan: %d GPUs, expected 1..%d", (int)gpus, SHARD_MAX_GPUS);
    out->gpus = gpus;
    out->device_bytes = device_bytes;
    uint64_t kv = 0;
    for (int64_t l = 0; l < s->topo.num_hidden_layers; l++)
        kv += s->bufs[s->known.k_cache[l]].bytes + s->bufs[s->known.v_cache[l]].bytes;
    int32_t worst = 0;
    for (int32_t r = 0; r < gpus; r++) {
        shard_gpu *g = &out->gpu[r];
        g->w = w[r];
        g->weights_bytes = w[r].replicated_bytes + w[r].expert_bytes;
        g->arena_bytes = arena_bytes;
        g->kv_bytes = kv;
        g->total_bytes = g->weights_bytes + arena_bytes;
        if (g->total_bytes > out->max_total_bytes) {
            out->max_total_bytes = g->total_bytes;
            worst = r;
        }
    }
    out->fits = out->max_total_bytes <= device_bytes;
    if (!out->fits) {
        uint64_t over = out->max_total_bytes - device_bytes;
        return err_set(err, MOERT_ECONFIG,
                       "%d GPU%s: GPU %d needs %llu bytes (%.2f GiB: weights %.2f GiB + arena %.2f GiB), "
                       "over the device memory of %.2f GiB by %llu bytes (%.2f GiB)",
                       (int)gpus, gpus > 1 ? "s" : "", (int)worst, (unsigned long long)out->max_total_bytes,
                       gib(out->max_total_bytes), gib(out->gpu[worst].weights_bytes), gib(arena_bytes),
                       gib(device_bytes), (unsigned long long)over, gib(over));
    }
    return MOERT_OK;
}
