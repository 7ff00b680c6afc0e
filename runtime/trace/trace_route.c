/* trace_route: routing replay from a recorded trace (see trace_route.h). */
#include "trace_route.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "../afile.h"
#include "trace_file.h"

struct trace_route {
    char path[CFG_PATH_MAX];
    trace_file tf;
    uint64_t fingerprint;
    int64_t k, positions;
    const int32_t *ids[CFG_MAX_LAYERS];   /* [positions, k] per sparse layer, else NULL */
    const float *weights[CFG_MAX_LAYERS];
    int32_t *prompt, *generated;
    int64_t n_prompt, n_generated;
};

/* Every field of the topology a routing depends on, or that would make the positions mean
 * something else; max_position_embeddings is informational and not in manifests. */
static int same_topology(const cfg_topology *a, const cfg_topology *b, const char *path, moert_err *err)
{
    struct {
        const char *name;
        int64_t x, y;
    } f[] = {
        {"vocab_size", a->vocab_size, b->vocab_size},
        {"hidden_size", a->hidden_size, b->hidden_size},
        {"num_hidden_layers", a->num_hidden_layers, b->num_hidden_layers},
        {"num_attention_heads", a->num_attention_heads, b->num_attention_heads},
        {"num_key_value_heads", a->num_key_value_heads, b->num_key_value_heads},
        {"head_dim", a->head_dim, b->head_dim},
        {"num_experts", a->num_experts, b->num_experts},
        {"num_experts_per_tok", a->num_experts_per_tok, b->num_experts_per_tok},
        {"moe_intermediate_size", a->moe_intermediate_size, b->moe_intermediate_size},
        {"intermediate_size", a->intermediate_size, b->intermediate_size},
        {"decoder_sparse_step", a->decoder_sparse_step, b->decoder_sparse_step},
        {"norm_topk_prob", a->norm_topk_prob, b->norm_topk_prob},
        {"tie_word_embeddings", a->tie_word_embeddings, b->tie_word_embeddings},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].x != f[i].y)
            return err_set(err, MOERT_EUSAGE, "--route-from %s: recorded with %s %lld, this model has %lld", path,
                           f[i].name, (long long)f[i].y, (long long)f[i].x);
    bool mlp_same = a->n_mlp_only_layers == b->n_mlp_only_layers;
    for (int32_t i = 0; mlp_same && i < a->n_mlp_only_layers; i++)
        mlp_same = a->mlp_only_layers[i] == b->mlp_only_layers[i];
    if (!mlp_same)
        return err_set(err, MOERT_EUSAGE, "--route-from %s: recorded with other mlp_only_layers than this model's",
                       path);
    if (a->rope_theta != b->rope_theta || a->rms_norm_eps != b->rms_norm_eps)
        return err_set(err, MOERT_EUSAGE, "--route-from %s: recorded with rope_theta %g / rms_norm_eps %g, this model "
                       "has %g / %g", path, b->rope_theta, b->rms_norm_eps, a->rope_theta, a->rms_norm_eps);
    return MOERT_OK;
}

static int hash_file(const char *path, uint64_t *out, moert_err *err)
{
    void *map = NULL;
    size_t len = 0;
    int st = afile_map(path, &map, &len, err);
    if (st)
        return st;
    *out = XXH3_64bits(map, len);
    if (map)
        munmap(map, len);
    return MOERT_OK;
}

/* One sparse layer's ring: present, complete, in position order, every record usable. */
static int take_layer(trace_route *r, const cfg_topology *topo, int32_t layer, moert_err *err)
{
    const trace_ring_view *v = NULL;
    for (size_t i = 0; i < r->tf.n_rings; i++)
        if (r->tf.rings[i].stage == CFG_STAGE_MOE_ROUTER && r->tf.rings[i].layer == layer)
            v = &r->tf.rings[i];
    if (!v)
        return err_set(err, MOERT_EUSAGE,
                       "--route-from %s: no l%d.moe_router records; routing replay needs the moe_router stage of "
                       "every sparse layer (record with a trace plan that includes it)", r->path, layer);
    if (!v->values || !v->experts)
        return err_set(err, MOERT_EUSAGE,
                       "--route-from %s: %s holds no expert ids and weights (a trace written before stats traces kept "
                       "them: record it again)", r->path, v->label);
    if (v->width != topo->num_experts_per_tok)
        return err_set(err, MOERT_EUSAGE, "--route-from %s: %s rows have %lld experts, this model routes to %lld",
                       r->path, v->label, (long long)v->width, (long long)topo->num_experts_per_tok);
    if (v->drops)
        return err_set(err, MOERT_EUSAGE,
                       "--route-from %s: %s dropped %lld records (its ring was full); record with a larger capacity",
                       r->path, v->label, (long long)v->drops);
    if (r->positions < 0 || v->n < r->positions)
        r->positions = v->n;
    int64_t K = v->width;
    for (int64_t j = 0; j < v->n; j++) {
        if (v->meta[j * 3 + 1] != j)
            return err_set(err, MOERT_EFORMAT, "%s: %s record %lld is position %lld, expected %lld (records in position "
                           "order)", r->path, v->label, (long long)j, (long long)v->meta[j * 3 + 1], (long long)j);
        const int32_t *ids = v->experts + j * K;
        const float *w = v->values + j * K;
        for (int64_t a = 0; a < K; a++) {
            if (ids[a] < 0 || ids[a] >= topo->num_experts || !isfinite(w[a]))
                return err_set(err, MOERT_EFORMAT,
                               "%s: %s record %lld (position %lld) slot %lld: expert %d, weight %g; expected an "
                               "expert in [0, %lld) and a finite weight", r->path, v->label, (long long)j,
                               (long long)j, (long long)a, ids[a], (double)w[a], (long long)topo->num_experts);
            for (int64_t b = 0; b < a; b++)
                if (ids[b] == ids[a])
                    return err_set(err, MOERT_EFORMAT, "%s: %s record %lld (position %lld): expert %d chosen twice",
                                   r->path, v->label, (long long)j, (long long)j, ids[a]);
        }
    }
    r->ids[layer] = v->experts;
    r->weights[layer] = v->values;
    return MOERT_OK;
}

int trace_route_open(const char *path, const cfg_topology *topo, trace_route **out, moert_err *err)
{
    *out = NULL;
    trace_route *r = calloc(1, sizeof *r);
    if (!r)
        return err_set(err, MOERT_ENOMEM, "--route-from: out of memory");
    snprintf(r->path, sizeof r->path, "%s", path);
    r->k = topo->num_experts_per_tok;
    r->positions = -1;
    cfg_config *cfg = malloc(sizeof *cfg);
    int st = cfg ? MOERT_OK : err_set(err, MOERT_ENOMEM, "--route-from: out of memory");
    if (st || (st = trace_file_open(path, &r->tf, err)) || (st = hash_file(path, &r->fingerprint, err)))
        goto fail;
    if ((st = trace_manifest_run(r->tf.manifest, path, cfg, &r->prompt, &r->n_prompt, &r->generated,
                                 &r->n_generated, err)) ||
        (st = same_topology(topo, &cfg->topo, path, err)))
        goto fail;
    if (cfg->trace.positions != CFG_TRACE_ALL) {
        st = err_set(err, MOERT_EUSAGE,
                     "--route-from %s: it records the last position of each step only; routing replay needs every "
                     "position (record with --trace-positions all)", path);
        goto fail;
    }
    bool any = false;
    for (int32_t l = 0; l < topo->num_hidden_layers; l++)
        if (cfg_layer_is_sparse(topo, l)) {
            any = true;
            if ((st = take_layer(r, topo, l, err)))
                goto fail;
        }
    if (!any)
        r->positions = INT64_MAX; /* a dense model has no routing to replay */
    free(cfg);
    *out = r;
    return MOERT_OK;
fail:
    free(cfg);
    trace_route_close(r);
    return st;
}

void trace_route_close(trace_route *r)
{
    if (!r)
        return;
    trace_file_close(&r->tf);
    free(r->prompt);
    free(r->generated);
    free(r);
}

const char *trace_route_path(const trace_route *r)
{
    return r->path;
}

uint64_t trace_route_fingerprint(const trace_route *r)
{
    return r->fingerprint;
}

int64_t trace_route_positions(const trace_route *r)
{
    return r->positions;
}

void trace_route_ids(const trace_route *r, const int32_t **prompt, int64_t *n_prompt,
                     const int32_t **generated, int64_t *n_generated)
{
    *prompt = r->prompt;
    *n_prompt = r->n_prompt;
    *generated = r->generated;
    *n_generated = r->n_generated;
}

int trace_route_check_prompt(const trace_route *r, const int32_t *ids, int64_t n, moert_err *err)
{
    if (n != r->n_prompt)
        return err_set(err, MOERT_EUSAGE, "--route-from %s: recorded a prompt of %lld tokens, this one has %lld",
                       r->path, (long long)r->n_prompt, (long long)n);
    for (int64_t i = 0; i < n; i++)
        if (ids[i] != r->prompt[i])
            return err_set(err, MOERT_EUSAGE,
                           "--route-from %s: another prompt: token %lld is %d here, %d in the recording", r->path,
                           (long long)i, ids[i], r->prompt[i]);
    return MOERT_OK;
}

int trace_route_check_length(const trace_route *r, int64_t n_prompt, int64_t n_new, moert_err *err)
{
    int64_t need = n_prompt + (n_new > 0 ? n_new - 1 : 0);
    if (need > r->positions)
        return err_set(err, MOERT_EUSAGE,
                       "--route-from %s: routing is recorded for %lld positions, this run needs %lld (prompt %lld + "
                       "-n %lld - 1); ask for at most -n %lld",
                       r->path, (long long)r->positions, (long long)need, (long long)n_prompt, (long long)n_new,
                       (long long)(r->positions - n_prompt + 1));
    return MOERT_OK;
}

bool trace_route_row(const trace_route *r, int32_t layer, int64_t pos, const int32_t **ids,
                     const float **weights)
{
    if (layer < 0 || layer >= CFG_MAX_LAYERS || !r->ids[layer] || pos < 0 || pos >= r->positions)
        return false;
    *ids = r->ids[layer] + pos * r->k;
    *weights = r->weights[layer] + pos * r->k;
    return true;
}
