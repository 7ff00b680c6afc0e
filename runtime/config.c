#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ggufmap.h"
#include "yamldoc.h"

/* ---- stages ---------------------------------------------------------------------- */

static const char *const stage_names[CFG_STAGE_COUNT] = {
    "embed",  "attn_norm",  "qkv",    "attn_out",   "ffn_norm", "router_logits",
    "moe_router", "moe_ffn_out", "output", "final_norm", "logits",
};

const char *cfg_stage_name(cfg_stage s)
{
    return (unsigned)s < CFG_STAGE_COUNT ? stage_names[s] : "?";
}

const char *const cfg_dtype_names[] = {"f32", "bf16", "f16", NULL};
const char *const cfg_backend_names[] = {"cpu", "hip", NULL};
const char *const cfg_trace_mode_names[] = {"stats", "tensor", NULL};
const char *const cfg_trace_positions_names[] = {"last", "all", NULL};
const char *const cfg_trace_on_full_names[] = {"overwrite", "stop", NULL};

int cfg_name_index(const char *const *table, const char *name)
{
    for (int i = 0; name && table[i]; i++)
        if (!strcmp(table[i], name))
            return i;
    return -1;
}

int cfg_stage_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < CFG_STAGE_COUNT; i++)
        if (!strcmp(stage_names[i], name))
            return i;
    return -1;
}

const char *const cfg_numerics_names[] = {"exact", "act-q8", NULL};

static const char *const sim_names[] = {"none", "bf16", "f16"}; /* cfg_sim_precision order */

const char *cfg_sim_precision_name(cfg_sim_precision p)
{
    return (unsigned)p < sizeof sim_names / sizeof *sim_names ? sim_names[p] : "?";
}

int cfg_sim_precision_from_name(const char *name)
{
    for (size_t i = 0; name && i < sizeof sim_names / sizeof *sim_names; i++)
        if (!strcmp(sim_names[i], name))
            return (int)i;
    return -1;
}

bool cfg_stage_is_per_layer(cfg_stage s)
{
    return s >= CFG_STAGE_ATTN_NORM && s <= CFG_STAGE_OUTPUT;
}

bool cfg_layer_is_sparse(const cfg_topology *topo, int64_t layer)
{
    if (!topo || layer < 0 || layer >= topo->num_hidden_layers || topo->decoder_sparse_step < 1)
        return false;
    for (int i = 0; i < topo->n_mlp_only_layers; i++)
        if (topo->mlp_only_layers[i] == layer)
            return false;
    return topo->num_experts > 0 && (layer + 1) % topo->decoder_sparse_step == 0;
}

/* ---- defaults -------------------------------------------------------------------- */

#define DEFAULT_MAX_SEQ_LEN 4096
#define DEFAULT_PREFILL_CHUNK 256
#define DEFAULT_TRACE_CAPACITY 4096
#define DIM_MAX INT64_C(2147483647) /* dims index int32 buffers and kernels */
#define THREADS_MAX 4096

void cfg_defaults(cfg_config *out)
{
    memset(out, 0, sizeof *out);
    out->weights.synth_dtype = CFG_DTYPE_BF16;
    out->rt.max_seq_len = DEFAULT_MAX_SEQ_LEN;
    out->rt.prefill_chunk = DEFAULT_PREFILL_CHUNK;
    out->rt.threads = 0;
    out->rt.gpus = 1;
    out->rt.backend = CFG_BACKEND_CPU;
    out->sampling.temperature = 0.0;
    out->sampling.top_k = 0;
    out->sampling.top_p = 1.0;
    out->sampling.seed = 0;
    out->trace.enabled = false;
    out->trace.mode = CFG_TRACE_STATS;
    out->trace.positions = CFG_TRACE_LAST;
    out->trace.stages = (1u << CFG_STAGE_COUNT) - 1u;
    out->trace.all_layers = true;
    out->trace.capacity = DEFAULT_TRACE_CAPACITY;
    out->trace.on_full = CFG_TRACE_OVERWRITE;
}

/* ---- topology: where each field came from ----------------------------------------- */

enum {
    TF_VOCAB, TF_HIDDEN, TF_LAYERS, TF_HEADS, TF_KV_HEADS, TF_HEAD_DIM, TF_EXPERTS, TF_TOPK,
    TF_MOE_INTER, TF_INTER, TF_SPARSE_STEP, TF_MAX_POS, /* the int64 fields, in this order */
    TF_MLP_ONLY, TF_NORM_TOPK, TF_TIE, TF_ROPE_THETA, TF_EPS, TF_COUNT
};
#define TF_N_INT (TF_MAX_POS + 1)

static const char *const tf_names[TF_COUNT] = {
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok",
    "moe_intermediate_size", "intermediate_size", "decoder_sparse_step",
    "max_position_embeddings", "mlp_only_layers", "norm_topk_prob", "tie_word_embeddings",
    "rope_theta", "rms_norm_eps",
};

static const bool tf_required[TF_COUNT] = {
    [TF_VOCAB] = true, [TF_HIDDEN] = true, [TF_LAYERS] = true, [TF_HEADS] = true,
    [TF_KV_HEADS] = true, [TF_EXPERTS] = true, [TF_TOPK] = true, [TF_MOE_INTER] = true,
    [TF_ROPE_THETA] = true, [TF_EPS] = true,
};

static int64_t *tf_int(cfg_topology *t, int f)
{
    switch (f) {
    case TF_VOCAB: return &t->vocab_size;
    case TF_HIDDEN: return &t->hidden_size;
    case TF_LAYERS: return &t->num_hidden_layers;
    case TF_HEADS: return &t->num_attention_heads;
    case TF_KV_HEADS: return &t->num_key_value_heads;
    case TF_HEAD_DIM: return &t->head_dim;
    case TF_EXPERTS: return &t->num_experts;
    case TF_TOPK: return &t->num_experts_per_tok;
    case TF_MOE_INTER: return &t->moe_intermediate_size;
    case TF_INTER: return &t->intermediate_size;
    case TF_SPARSE_STEP: return &t->decoder_sparse_step;
    case TF_MAX_POS: return &t->max_position_embeddings;
    default: return NULL;
    }
}

typedef struct cfg_mark {
    int line, col; /* 1-based; line 0 = no position known (JSON, API callers) */
} cfg_mark;

/* Where a topology came from, so that semantic checks can point at the offending key. */
typedef struct topo_src {
    const char *file;
    const char *prefix;               /* "model." in YAML, "" for config.json */
    cfg_mark section;                 /* the `model:` mapping */
    bool track_presence;              /* false for cfg_check_topology on a bare struct */
    bool present[TF_COUNT];
    cfg_mark at[TF_COUNT];
    const char *spelled[TF_COUNT];    /* the key as written (num_local_experts, ...) */
    cfg_mark mlp_at[CFG_MAX_LAYERS];
} topo_src;

static cfg_mark node_mark(const yaml_node_t *n)
{
    return (cfg_mark){yamldoc_line(n), yamldoc_col(n)};
}

/* "file:line:col: " for a mark, "file: " without one. */
static int mark_err(const char *file, cfg_mark m, moert_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int mark_err(const char *file, cfg_mark m, moert_err *err, int code, const char *fmt, ...)
{
    char body[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (m.line > 0)
        return err_set(err, code, "%s:%d:%d: %s", file, m.line, m.col, body);
    return err_set(err, code, "%s: %s", file, body);
}

/* The mark of field f, falling back to the section when the key was not written. */
static cfg_mark field_mark(const topo_src *s, int f)
{
    return (f >= 0 && s->at[f].line > 0) ? s->at[f] : s->section;
}

/* Why layer `layer` is dense, for messages. */
static const char *dense_reason(const cfg_topology *t, int64_t layer, char *buf, size_t cap)
{
    for (int i = 0; i < t->n_mlp_only_layers; i++)
        if (t->mlp_only_layers[i] == layer) {
            snprintf(buf, cap, "layer %lld is in mlp_only_layers", (long long)layer);
            return buf;
        }
    snprintf(buf, cap, "layer %lld is dense under decoder_sparse_step %lld", (long long)layer,
             (long long)t->decoder_sparse_step);
    return buf;
}

static int check_topology_at(const cfg_topology *t, const topo_src *s, moert_err *err)
{
    const char *f = s->file, *px = s->prefix ? s->prefix : "";
    /* Sizes first: relations between fields only make sense once each one is sane. */
    static const int positive[] = {TF_VOCAB, TF_HIDDEN, TF_LAYERS, TF_HEADS, TF_KV_HEADS,
                                   TF_HEAD_DIM, TF_EXPERTS, TF_TOPK, TF_SPARSE_STEP};
    cfg_topology *tm = (cfg_topology *)t; /* tf_int only reads through it here */
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
        int k = positive[i];
        int64_t v = *tf_int(tm, k);
        if (v < 1)
            return mark_err(f, field_mark(s, k), err, MOERT_ECONFIG,
                            "%s%s = %lld, expected a positive integer", px, tf_names[k], (long long)v);
        if (v > DIM_MAX)
            return mark_err(f, field_mark(s, k), err, MOERT_ECONFIG,
                            "%s%s = %lld is unreasonably large, expected at most %lld", px, tf_names[k],
                            (long long)v, (long long)DIM_MAX);
    }
    static const int nonneg[] = {TF_MOE_INTER, TF_INTER, TF_MAX_POS};
    for (size_t i = 0; i < sizeof nonneg / sizeof nonneg[0]; i++) {
        int k = nonneg[i];
        int64_t v = *tf_int(tm, k);
        if (v < 0 || v > DIM_MAX)
            return mark_err(f, field_mark(s, k), err, MOERT_ECONFIG,
                            "%s%s = %lld, expected an integer in [0, %lld]", px, tf_names[k],
                            (long long)v, (long long)DIM_MAX);
    }
    if (t->num_hidden_layers > CFG_MAX_LAYERS)
        return mark_err(f, field_mark(s, TF_LAYERS), err, MOERT_ECONFIG,
                        "%snum_hidden_layers = %lld, expected at most %d", px, (long long)t->num_hidden_layers,
                        CFG_MAX_LAYERS);
    /* q_dim (and so kv_dim <= q_dim) must index an int32 buffer too. */
    if (t->num_attention_heads * t->head_dim > DIM_MAX)
        return mark_err(f, field_mark(s, TF_HEAD_DIM), err, MOERT_ECONFIG,
                        "%snum_attention_heads * head_dim = %lld is unreasonably large, expected at most %lld", px,
                        (long long)(t->num_attention_heads * t->head_dim), (long long)DIM_MAX);
    if (t->num_attention_heads % t->num_key_value_heads != 0)
        return mark_err(f, field_mark(s, TF_KV_HEADS), err, MOERT_ECONFIG,
                        "%snum_attention_heads = %lld is not divisible by num_key_value_heads = %lld, "
                        "expected num_key_value_heads to divide num_attention_heads",
                        px, (long long)t->num_attention_heads, (long long)t->num_key_value_heads);
    if (t->num_experts_per_tok > t->num_experts)
        return mark_err(f, field_mark(s, TF_TOPK), err, MOERT_ECONFIG,
                        "%snum_experts_per_tok = %lld exceeds num_experts = %lld, expected 1 <= "
                        "num_experts_per_tok <= num_experts",
                        px, (long long)t->num_experts_per_tok, (long long)t->num_experts);
    if (t->n_mlp_only_layers < 0 || t->n_mlp_only_layers > CFG_MAX_LAYERS)
        return mark_err(f, field_mark(s, TF_MLP_ONLY), err, MOERT_ECONFIG,
                        "%smlp_only_layers has %d entries, expected at most %d", px, t->n_mlp_only_layers,
                        CFG_MAX_LAYERS);
    for (int i = 0; i < t->n_mlp_only_layers; i++) {
        cfg_mark m = s->mlp_at[i].line > 0 ? s->mlp_at[i] : field_mark(s, TF_MLP_ONLY);
        int32_t v = t->mlp_only_layers[i];
        if (v < 0 || v >= t->num_hidden_layers)
            return mark_err(f, m, err, MOERT_ECONFIG,
                            "%smlp_only_layers[%d] = %d is out of range, expected a layer index in [0, %lld)",
                            px, i, (int)v, (long long)t->num_hidden_layers);
        for (int j = 0; j < i; j++)
            if (t->mlp_only_layers[j] == v)
                return mark_err(f, m, err, MOERT_ECONFIG,
                                "%smlp_only_layers[%d] = %d duplicates mlp_only_layers[%d], expected each layer once",
                                px, i, (int)v, j);
    }
    int64_t first_sparse = -1, first_dense = -1;
    for (int64_t l = 0; l < t->num_hidden_layers; l++) {
        if (cfg_layer_is_sparse(t, l)) {
            if (first_sparse < 0)
                first_sparse = l;
        } else if (first_dense < 0) {
            first_dense = l;
        }
    }
    if (first_sparse >= 0 && t->moe_intermediate_size <= 0)
        return mark_err(f, field_mark(s, TF_MOE_INTER), err, MOERT_ECONFIG,
                        "%smoe_intermediate_size = %lld but layer %lld uses routed experts, expected a "
                        "positive integer",
                        px, (long long)t->moe_intermediate_size, (long long)first_sparse);
    if (first_dense >= 0 && t->intermediate_size <= 0) {
        char why[120];
        dense_reason(t, first_dense, why, sizeof why);
        if (s->track_presence && !s->present[TF_INTER])
            return mark_err(f, s->section, err, MOERT_ECONFIG,
                            "%sintermediate_size is missing but %s (dense MLP), expected a positive "
                            "intermediate_size",
                            px, why);
        return mark_err(f, field_mark(s, TF_INTER), err, MOERT_ECONFIG,
                        "%sintermediate_size = %lld but %s (dense MLP), expected a positive integer",
                        px, (long long)t->intermediate_size, why);
    }
    if (!(t->rope_theta > 0) || !isfinite(t->rope_theta))
        return mark_err(f, field_mark(s, TF_ROPE_THETA), err, MOERT_ECONFIG,
                        "%srope_theta = %g, expected a positive finite number", px, t->rope_theta);
    if (!(t->rms_norm_eps > 0 && t->rms_norm_eps < 1))
        return mark_err(f, field_mark(s, TF_EPS), err, MOERT_ECONFIG,
                        "%srms_norm_eps = %g, expected a number in (0, 1)", px, t->rms_norm_eps);
    return MOERT_OK;
}

int cfg_check_topology(const cfg_topology *topo, const char *where, moert_err *err)
{
    if (!topo)
        return err_set(err, MOERT_EUSAGE, "cfg_check_topology: no topology given");
    topo_src s;
    memset(&s, 0, sizeof s);
    s.file = where && *where ? where : "topology";
    return check_topology_at(topo, &s, err);
}

/* Required keys, derived defaults, then the semantic checks. */
static int finish_topology(cfg_topology *t, topo_src *s, const char *section_name, moert_err *err)
{
    static const char *const expect[TF_COUNT] = {
        [TF_EXPERTS] = " (or num_local_experts)",
        [TF_ROPE_THETA] = " (or rope_parameters.rope_theta)",
    };
    for (int k = 0; k < TF_COUNT; k++)
        if (tf_required[k] && !s->present[k])
            return mark_err(s->file, s->section, err, MOERT_ECONFIG,
                            "%s is missing required key '%s'%s, expected %s", section_name, tf_names[k],
                            expect[k] ? expect[k] : "",
                            k == TF_ROPE_THETA || k == TF_EPS ? "a positive number" : "a positive integer");
    if (!s->present[TF_HEAD_DIM]) {
        if (t->num_attention_heads > 0 && t->hidden_size > 0 && t->hidden_size % t->num_attention_heads != 0)
            return mark_err(s->file, s->section, err, MOERT_ECONFIG,
                            "%shead_dim is missing and hidden_size = %lld is not divisible by "
                            "num_attention_heads = %lld, expected an explicit head_dim",
                            s->prefix ? s->prefix : "", (long long)t->hidden_size, (long long)t->num_attention_heads);
        t->head_dim = t->num_attention_heads > 0 && t->hidden_size > 0 ? t->hidden_size / t->num_attention_heads : 0;
    }
    if (!s->present[TF_SPARSE_STEP])
        t->decoder_sparse_step = 1;
    s->track_presence = true;
    return check_topology_at(t, s, err);
}

/* ---- HF config.json ------------------------------------------------------------------ */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    default: return "null";
    }
}

/* A key's value, NULL when absent or JSON null (HF writes null for "use the default"). */
static json_t *jget(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

static int json_int_field(const char *file, json_t *v, const char *key, int64_t *out, moert_err *err)
{
    if (!json_is_integer(v))
        return err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected an integer", file, key, json_kind(v));
    *out = (int64_t)json_integer_value(v);
    return MOERT_OK;
}

static int json_expect_string(const char *file, json_t *root, const char *key, const char *want,
                              moert_err *err)
{
    json_t *v = jget(root, key);
    if (!v)
        return MOERT_OK;
    if (!json_is_string(v))
        return err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected \"%s\"", file, key, json_kind(v), want);
    if (strcmp(json_string_value(v), want) != 0)
        return err_set(err, MOERT_ECONFIG, "%s: %s is \"%.80s\", expected \"%s\" (moert runs Qwen3-MoE only)",
                       file, key, json_string_value(v), want);
    return MOERT_OK;
}

static int json_expect_false(const char *file, json_t *root, const char *key, moert_err *err)
{
    json_t *v = jget(root, key);
    if (v && !json_is_false(v))
        return err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected false (moert does not implement it)",
                       file, key, json_kind(v));
    return MOERT_OK;
}

/* A rope dict (rope_parameters, or a non-null rope_scaling) must describe plain RoPE. */
static int json_rope_dict(const char *file, json_t *v, const char *key, moert_err *err)
{
    if (!json_is_object(v))
        return err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected an object", file, key, json_kind(v));
    json_t *ty = jget(v, "rope_type");
    if (!ty)
        ty = jget(v, "type");
    if (ty && (!json_is_string(ty) || strcmp(json_string_value(ty), "default") != 0))
        return err_set(err, MOERT_ECONFIG, "%s: %s.rope_type is %s%.60s%s, expected \"default\" (scaled RoPE is not supported)",
                       file, key, json_is_string(ty) ? "\"" : json_kind(ty),
                       json_is_string(ty) ? json_string_value(ty) : "", json_is_string(ty) ? "\"" : "");
    return MOERT_OK;
}

static int import_hf_into(const char *path, cfg_topology *t, topo_src *s, moert_err *err)
{
    memset(t, 0, sizeof *t);
    memset(s, 0, sizeof *s);
    s->file = path;
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, MOERT_ECONFIG, "%s: %s, expected a HF config.json", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return err_set(err, MOERT_ECONFIG, "%s: not a regular file, expected a HF config.json", path);
    if (st.st_size > YAMLDOC_MAX_BYTES) /* a few KB in practice; JSON costs ~20x its size */
        return err_set(err, MOERT_ECONFIG, "%s: %lld bytes, expected a HF config.json of at most %u bytes", path,
                       (long long)st.st_size, YAMLDOC_MAX_BYTES);
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        if (je.line > 0)
            return err_set(err, MOERT_ECONFIG, "%s:%d:%d: invalid JSON: %s, expected a HF config.json object",
                           path, je.line, je.column, je.text);
        return err_set(err, MOERT_ECONFIG, "%s: invalid JSON: %s, expected a HF config.json object", path,
                       je.text);
    }
    int rc = MOERT_OK;
    if (!json_is_object(root)) {
        rc = err_set(err, MOERT_ECONFIG, "%s:1:1: top level is %s, expected a JSON object (HF config.json)",
                     path, json_kind(root));
        goto out;
    }
    /* Settings that would change the math moert implements are refused, not ignored. */
    if ((rc = json_expect_string(path, root, "model_type", "qwen3_moe", err)) ||
        (rc = json_expect_string(path, root, "hidden_act", "silu", err)) ||
        (rc = json_expect_false(path, root, "attention_bias", err)) ||
        (rc = json_expect_false(path, root, "use_sliding_window", err)))
        goto out;

    /* HF defaults (Qwen3MoeConfig): norm_topk_prob false, tie false, step 1, no mlp_only. */
    t->norm_topk_prob = false;
    t->tie_word_embeddings = false;
    for (int k = 0; k < TF_N_INT; k++) {
        json_t *v = jget(root, tf_names[k]);
        if (k == TF_EXPERTS) {
            json_t *alt = jget(root, "num_local_experts");
            if (v && alt && !json_equal(v, alt)) {
                rc = err_set(err, MOERT_ECONFIG,
                             "%s: num_experts and num_local_experts disagree, expected one value", path);
                goto out;
            }
            if (!v)
                v = alt;
        }
        if (!v)
            continue;
        const char *spelled = k == TF_EXPERTS && !jget(root, "num_experts") ? "num_local_experts" : tf_names[k];
        if ((rc = json_int_field(path, v, spelled, tf_int(t, k), err)))
            goto out;
        s->present[k] = true;
    }
    static const int bools[] = {TF_NORM_TOPK, TF_TIE};
    for (size_t i = 0; i < 2; i++) {
        int k = bools[i];
        json_t *v = jget(root, tf_names[k]);
        if (!v)
            continue;
        if (!json_is_boolean(v)) {
            rc = err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected true or false", path, tf_names[k],
                         json_kind(v));
            goto out;
        }
        *(k == TF_NORM_TOPK ? &t->norm_topk_prob : &t->tie_word_embeddings) = json_is_true(v);
        s->present[k] = true;
    }
    json_t *eps = jget(root, "rms_norm_eps");
    if (eps) {
        if (!json_is_number(eps)) {
            rc = err_set(err, MOERT_ECONFIG, "%s: rms_norm_eps is %s, expected a number", path, json_kind(eps));
            goto out;
        }
        t->rms_norm_eps = json_number_value(eps);
        s->present[TF_EPS] = true;
    }
    json_t *theta = jget(root, "rope_theta");
    json_t *rp = jget(root, "rope_parameters");
    json_t *rs = jget(root, "rope_scaling");
    if ((rp && (rc = json_rope_dict(path, rp, "rope_parameters", err))) ||
        (rs && (rc = json_rope_dict(path, rs, "rope_scaling", err))))
        goto out;
    json_t *theta2 = rp ? jget(rp, "rope_theta") : NULL;
    if (theta && theta2 && !(json_is_number(theta) && json_is_number(theta2) &&
                             json_number_value(theta) == json_number_value(theta2))) {
        rc = err_set(err, MOERT_ECONFIG,
                     "%s: rope_theta and rope_parameters.rope_theta disagree, expected one value", path);
        goto out;
    }
    if (theta || theta2) {
        json_t *tv = theta ? theta : theta2;
        if (!json_is_number(tv)) {
            rc = err_set(err, MOERT_ECONFIG, "%s: %s is %s, expected a number", path,
                         theta ? "rope_theta" : "rope_parameters.rope_theta", json_kind(tv));
            goto out;
        }
        t->rope_theta = json_number_value(tv);
        s->present[TF_ROPE_THETA] = true;
    }
    json_t *mlp = jget(root, "mlp_only_layers");
    if (mlp) {
        if (!json_is_array(mlp)) {
            rc = err_set(err, MOERT_ECONFIG, "%s: mlp_only_layers is %s, expected an array of layer indices",
                         path, json_kind(mlp));
            goto out;
        }
        if (json_array_size(mlp) > CFG_MAX_LAYERS) {
            rc = err_set(err, MOERT_ECONFIG, "%s: mlp_only_layers has %zu entries, expected at most %d", path,
                         json_array_size(mlp), CFG_MAX_LAYERS);
            goto out;
        }
        for (size_t i = 0; i < json_array_size(mlp); i++) {
            json_t *e = json_array_get(mlp, i);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
                rc = err_set(err, MOERT_ECONFIG,
                             "%s: mlp_only_layers[%zu] is %s, expected a layer index (non-negative integer)",
                             path, i, json_kind(e));
                goto out;
            }
            t->mlp_only_layers[i] = (int32_t)json_integer_value(e);
        }
        t->n_mlp_only_layers = (int32_t)json_array_size(mlp);
        s->present[TF_MLP_ONLY] = true;
    }
    rc = finish_topology(t, s, "the HF config", err);
out:
    json_decref(root);
    return rc;
}

int cfg_import_hf(const char *config_json_path, cfg_topology *topo, moert_err *err)
{
    if (!config_json_path || !topo)
        return err_set(err, MOERT_EUSAGE, "cfg_import_hf: missing argument");
    topo_src *s = malloc(sizeof *s);
    if (!s)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", config_json_path);
    int rc = import_hf_into(config_json_path, topo, s, err);
    free(s);
    /* eos_token_id is part of what a config.json says: a malformed one is refused here too,
     * so the file and its model directory are judged alike */
    int32_t ids[CFG_MAX_EOS], n;
    if (!rc)
        rc = cfg_import_hf_eos(config_json_path, ids, &n, err);
    return rc;
}

/* ---- paths ------------------------------------------------------------------------- */

/* base_dir/rel, or rel itself when it is absolute or base_dir is empty. */
static int resolve_path(const yamldoc *d, const yaml_node_t *n, const char *what, const char *base_dir,
                        const char *rel, char *out, size_t cap, moert_err *err)
{
    int w;
    size_t bl = base_dir ? strlen(base_dir) : 0;
    if (rel[0] == '/' || !bl || !strcmp(base_dir, "."))
        w = snprintf(out, cap, "%s", rel);
    else
        w = snprintf(out, cap, "%s%s%s", base_dir, base_dir[bl - 1] == '/' ? "" : "/", rel);
    if (w < 0 || (size_t)w >= cap)
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: resolved path is longer than %zu bytes, expected a shorter path",
                            what, cap - 1);
    return MOERT_OK;
}

enum { NEED_FILE = 1, NEED_DIR = 2 };

/* Checks that `path` exists as a file (or dir, per `need`); the message names both the
 * spelling in the YAML and the resolved path. */
static int check_exists(const yamldoc *d, const yaml_node_t *n, const char *what, const char *path,
                        int need, moert_err *err)
{
    const char *as_written = yamldoc_text(n);
    struct stat st;
    const char *kind = need == NEED_FILE ? "an existing file" : need == NEED_DIR ? "an existing directory"
                                                                                : "an existing file or directory";
    if (stat(path, &st) != 0)
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: '%s' (resolved to '%s'): %s, expected %s", what,
                            as_written, path, strerror(errno), kind);
    bool isdir = S_ISDIR(st.st_mode), isreg = S_ISREG(st.st_mode);
    if ((need == NEED_FILE && !isreg) || (need == NEED_DIR && !isdir) || (!isreg && !isdir))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: '%s' (resolved to '%s') is %s, expected %s", what,
                            as_written, path, isdir ? "a directory" : "not a regular file", kind);
    return MOERT_OK;
}

/* ---- YAML sections ---------------------------------------------------------------- */

typedef struct load_ctx {
    yamldoc *d;
    const char *base_dir;
    unsigned flags;
    cfg_config *out;
    topo_src src;
} load_ctx;

static int yaml_enum(const yamldoc *d, const yaml_node_t *n, const char *what, const char *const *names,
                     int *out, moert_err *err)
{
    char got[100], list[200] = "";
    size_t used = 0;
    for (int i = 0; names[i]; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", names[i]);
    if (yamldoc_is_scalar(n) && !yamldoc_is_null(n))
        for (int i = 0; names[i]; i++)
            if (!strcmp(names[i], yamldoc_text(n))) {
                *out = i;
                return MOERT_OK;
            }
    return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected one of: %s", what,
                        yamldoc_describe(n, got, sizeof got), list);
}

static int parse_model_inline(load_ctx *c, yaml_node_t *model, moert_err *err)
{
    yamldoc *d = c->d;
    cfg_topology *t = &c->out->topo;
    topo_src *s = &c->src;
    t->norm_topk_prob = true; /* moert's YAML default (HF's class default is false) */
    t->tie_word_embeddings = false;
    for (int i = 0; i < yamldoc_map_len(model); i++) {
        yaml_node_t *k = yamldoc_map_key(d, model, i), *v = yamldoc_map_value(d, model, i);
        const char *key = yamldoc_text(k);
        char what[80];
        snprintf(what, sizeof what, "model.%s", key);
        int f = -1;
        for (int j = 0; j < TF_COUNT; j++)
            if (!strcmp(tf_names[j], key))
                f = j;
        if (!strcmp(key, "num_local_experts"))
            f = TF_EXPERTS;
        bool rope_params = !strcmp(key, "rope_parameters");
        if (rope_params)
            f = TF_ROPE_THETA;
        if (f < 0)
            return yamldoc_errf(d, k, err, MOERT_EINTERNAL, "model key '%s' passed the key check but has no parser", key);
        if (s->present[f])
            return yamldoc_errf(d, k, err, MOERT_ECONFIG, "model gives both '%s' and '%s', expected only one of them",
                                s->spelled[f], key);
        int rc = MOERT_OK;
        if (f < TF_N_INT) {
            rc = yamldoc_int(d, v, what, tf_int(t, f), err);
        } else if (f == TF_NORM_TOPK) {
            rc = yamldoc_bool(d, v, what, &t->norm_topk_prob, err);
        } else if (f == TF_TIE) {
            rc = yamldoc_bool(d, v, what, &t->tie_word_embeddings, err);
        } else if (f == TF_EPS) {
            rc = yamldoc_double(d, v, what, &t->rms_norm_eps, err);
        } else if (f == TF_ROPE_THETA && !rope_params) {
            rc = yamldoc_double(d, v, what, &t->rope_theta, err);
        } else if (f == TF_ROPE_THETA) {
            static const char *const rp_keys[] = {"rope_theta", "rope_type", NULL};
            if ((rc = yamldoc_check_map(d, v, "model.rope_parameters", rp_keys, err)))
                return rc;
            yaml_node_t *ty = yamldoc_get(d, v, "rope_type");
            static const char *const rope_types[] = {"default", NULL};
            int which;
            if (ty && (rc = yaml_enum(d, ty, "model.rope_parameters.rope_type", rope_types, &which, err)))
                return rc;
            yaml_node_t *th = yamldoc_get(d, v, "rope_theta");
            if (!th)
                return yamldoc_errf(d, v, err, MOERT_ECONFIG,
                                    "model.rope_parameters is missing required key 'rope_theta', expected a positive number");
            if ((rc = yamldoc_double(d, th, "model.rope_parameters.rope_theta", &t->rope_theta, err)))
                return rc;
            v = th; /* semantic errors point at the number itself */
        } else if (f == TF_MLP_ONLY) {
            if (!yamldoc_is_seq(v)) {
                char got[100];
                return yamldoc_errf(d, v, err, MOERT_ECONFIG, "%s: got %s, expected a list of layer indices", what,
                                    yamldoc_describe(v, got, sizeof got));
            }
            int n = yamldoc_seq_len(v);
            if (n > CFG_MAX_LAYERS)
                return yamldoc_errf(d, v, err, MOERT_ECONFIG, "%s has %d entries, expected at most %d", what, n,
                                    CFG_MAX_LAYERS);
            for (int e = 0; e < n; e++) {
                yaml_node_t *item = yamldoc_seq_item(d, v, e);
                char iw[100];
                snprintf(iw, sizeof iw, "model.mlp_only_layers[%d]", e);
                int64_t x;
                if ((rc = yamldoc_int(d, item, iw, &x, err)))
                    return rc;
                if (x < 0 || x > INT32_MAX)
                    return yamldoc_errf(d, item, err, MOERT_ECONFIG,
                                        "%s = %lld is out of range, expected a layer index in [0, num_hidden_layers)",
                                        iw, (long long)x);
                t->mlp_only_layers[e] = (int32_t)x;
                s->mlp_at[e] = node_mark(item);
            }
            t->n_mlp_only_layers = n;
        }
        if (rc)
            return rc;
        s->present[f] = true;
        s->at[f] = node_mark(v);
        s->spelled[f] = key;
    }
    return finish_topology(t, s, "model", err);
}

static const char *const model_keys[] = {
    "hf_config", "gguf", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "num_experts", "num_local_experts", "num_experts_per_tok",
    "moe_intermediate_size", "intermediate_size", "decoder_sparse_step", "mlp_only_layers",
    "norm_topk_prob", "rope_theta", "rope_parameters", "rms_norm_eps", "tie_word_embeddings",
    "max_position_embeddings", NULL,
};

static int parse_model(load_ctx *c, yaml_node_t *model, moert_err *err)
{
    yamldoc *d = c->d;
    int rc = yamldoc_check_map(d, model, "model", model_keys, err);
    if (rc)
        return rc;
    memset(&c->src, 0, sizeof c->src);
    c->src.file = d->name;
    c->src.prefix = "model.";
    c->src.section = node_mark(model);
    yaml_node_t *hf = yamldoc_get(d, model, "hf_config"), *gg = yamldoc_get(d, model, "gguf");
    if (!hf && !gg)
        return parse_model_inline(c, model, err);
    const char *which = hf ? "hf_config" : "gguf";
    for (int i = 0; i < yamldoc_map_len(model); i++) {
        yaml_node_t *k = yamldoc_map_key(d, model, i);
        if (strcmp(yamldoc_text(k), which) != 0)
            return yamldoc_errf(d, k, err, MOERT_ECONFIG,
                                "model has both %s and the inline key '%s', expected either "
                                "%s alone or inline hyperparameters",
                                which, yamldoc_text(k), which);
    }
    if (gg) {
        char grel[CFG_PATH_MAX], gpath[CFG_PATH_MAX];
        if ((rc = yamldoc_str(d, gg, "model.gguf", grel, sizeof grel, err)) ||
            (rc = resolve_path(d, gg, "model.gguf", c->base_dir, grel, gpath, sizeof gpath, err)) ||
            (rc = check_exists(d, gg, "model.gguf", gpath, NEED_FILE, err)))
            return rc;
        bool has_tok;
        if ((rc = cfg_import_gguf(gpath, &c->out->topo, c->out->eos_ids, &c->out->n_eos, &has_tok, err)))
            return err_prefix(err, "%s:%d:%d: model.gguf", d->name, yamldoc_line(gg), yamldoc_col(gg));
        /* the file is also the weights and the tokenizer unless the YAML says otherwise */
        snprintf(c->out->weights.path, sizeof c->out->weights.path, "%s", gpath);
        if (has_tok)
            snprintf(c->out->tokenizer_path, sizeof c->out->tokenizer_path, "%s", gpath);
        return MOERT_OK;
    }
    char rel[CFG_PATH_MAX];
    if ((rc = yamldoc_str(d, hf, "model.hf_config", rel, sizeof rel, err)) ||
        (rc = resolve_path(d, hf, "model.hf_config", c->base_dir, rel, c->out->hf_config_path,
                           sizeof c->out->hf_config_path, err)) ||
        (rc = check_exists(d, hf, "model.hf_config", c->out->hf_config_path, NEED_FILE, err)))
        return rc;
    topo_src js;
    if ((rc = import_hf_into(c->out->hf_config_path, &c->out->topo, &js, err)) ||
        (rc = cfg_import_hf_eos(c->out->hf_config_path, c->out->eos_ids, &c->out->n_eos, err)))
        /* The JSON message names config.json; say which YAML line sent us there. */
        return err_prefix(err, "%s:%d:%d: model.hf_config", d->name, yamldoc_line(hf), yamldoc_col(hf));
    return MOERT_OK;
}

static int parse_weights(load_ctx *c, yaml_node_t *w, moert_err *err)
{
    yamldoc *d = c->d;
    cfg_weights *cw = &c->out->weights;
    int rc;
    if (yamldoc_is_map(w)) {
        static const char *const wkeys[] = {"synth", NULL};
        if ((rc = yamldoc_check_map(d, w, "weights", wkeys, err)))
            return rc;
        yaml_node_t *syn = yamldoc_get(d, w, "synth");
        if (!syn)
            return yamldoc_errf(d, w, err, MOERT_ECONFIG,
                                "weights mapping is empty, expected {synth: {seed: N, dtype: bf16}} or a path");
        static const char *const skeys[] = {"seed", "dtype", NULL};
        if ((rc = yamldoc_check_map(d, syn, "weights.synth", skeys, err)))
            return rc;
        cw->synth = true;
        cw->synth_seed = 0;
        cw->synth_dtype = CFG_DTYPE_BF16;
        yaml_node_t *seed = yamldoc_get(d, syn, "seed"), *dt = yamldoc_get(d, syn, "dtype");
        if (seed && (rc = yamldoc_u64(d, seed, "weights.synth.seed", &cw->synth_seed, err)))
            return rc;
        const char *const *dtypes = cfg_dtype_names;
        int which;
        if (dt) {
            if ((rc = yaml_enum(d, dt, "weights.synth.dtype", dtypes, &which, err)))
                return rc;
            cw->synth_dtype = (cfg_dtype)which;
        }
        return MOERT_OK;
    }
    char rel[CFG_PATH_MAX];
    if (!yamldoc_is_scalar(w) || yamldoc_is_null(w)) {
        char got[100];
        return yamldoc_errf(d, w, err, MOERT_ECONFIG,
                            "weights: got %s, expected a path or {synth: {seed: N, dtype: bf16}}",
                            yamldoc_describe(w, got, sizeof got));
    }
    if ((rc = yamldoc_str(d, w, "weights", rel, sizeof rel, err)))
        return rc;
    if (!rel[0])
        return yamldoc_errf(d, w, err, MOERT_ECONFIG, "weights: got an empty path, expected a path or {synth: ...}");
    cw->synth = false;
    if ((rc = resolve_path(d, w, "weights", c->base_dir, rel, cw->path, sizeof cw->path, err)))
        return rc;
    struct stat st;
    if ((c->flags & CFG_ALLOW_MISSING_WEIGHTS) && stat(cw->path, &st) != 0 && errno == ENOENT) {
        cw->missing = true;
        return MOERT_OK;
    }
    return check_exists(d, w, "weights", cw->path, NEED_FILE | NEED_DIR, err);
}

/* An optional path key: "" means none; anything else must exist when must_exist. */
static int parse_path(load_ctx *c, yaml_node_t *n, const char *what, bool must_exist, char *out, moert_err *err)
{
    char rel[CFG_PATH_MAX];
    int rc = yamldoc_str(c->d, n, what, rel, sizeof rel, err);
    if (rc)
        return rc;
    out[0] = '\0';
    if (!rel[0])
        return MOERT_OK;
    if ((rc = resolve_path(c->d, n, what, c->base_dir, rel, out, CFG_PATH_MAX, err)))
        return rc;
    return must_exist ? check_exists(c->d, n, what, out, NEED_FILE, err) : MOERT_OK;
}

static int parse_runtime(load_ctx *c, yaml_node_t *r, moert_err *err)
{
    yamldoc *d = c->d;
    cfg_runtime *rt = &c->out->rt;
    const cfg_topology *t = &c->out->topo;
    static const char *const keys[] = {"max_seq_len", "prefill_chunk", "threads",         "backend",
                                       "gpus",        "numerics",      "batch_invariant", NULL};
    int rc;
    if (r && (rc = yamldoc_check_map(d, r, "runtime", keys, err)))
        return rc;
    yaml_node_t *msl = yamldoc_get(d, r, "max_seq_len"), *pc = yamldoc_get(d, r, "prefill_chunk");
    yaml_node_t *th = yamldoc_get(d, r, "threads"), *be = yamldoc_get(d, r, "backend");
    yaml_node_t *gp = yamldoc_get(d, r, "gpus"), *nu = yamldoc_get(d, r, "numerics");
    yaml_node_t *bi = yamldoc_get(d, r, "batch_invariant");
    if (msl) {
        if ((rc = yamldoc_int(d, msl, "runtime.max_seq_len", &rt->max_seq_len, err)))
            return rc;
        if (rt->max_seq_len <= 0 || rt->max_seq_len > DIM_MAX)
            return yamldoc_errf(d, msl, err, MOERT_ECONFIG, "runtime.max_seq_len = %lld, expected an integer in [1, %lld]",
                                (long long)rt->max_seq_len, (long long)DIM_MAX);
        if (t->max_position_embeddings > 0 && rt->max_seq_len > t->max_position_embeddings)
            return yamldoc_errf(d, msl, err, MOERT_ECONFIG,
                                "runtime.max_seq_len = %lld exceeds max_position_embeddings = %lld, expected at most %lld",
                                (long long)rt->max_seq_len, (long long)t->max_position_embeddings,
                                (long long)t->max_position_embeddings);
    } else if (t->max_position_embeddings > 0 && rt->max_seq_len > t->max_position_embeddings) {
        rt->max_seq_len = t->max_position_embeddings;
    }
    if (pc) {
        if ((rc = yamldoc_int(d, pc, "runtime.prefill_chunk", &rt->prefill_chunk, err)))
            return rc;
        if (rt->prefill_chunk <= 0 || rt->prefill_chunk > rt->max_seq_len)
            return yamldoc_errf(d, pc, err, MOERT_ECONFIG,
                                "runtime.prefill_chunk = %lld, expected an integer in [1, max_seq_len = %lld]",
                                (long long)rt->prefill_chunk, (long long)rt->max_seq_len);
    } else if (rt->prefill_chunk > rt->max_seq_len) {
        rt->prefill_chunk = rt->max_seq_len;
    }
    if (th) {
        int64_t v;
        if ((rc = yamldoc_int(d, th, "runtime.threads", &v, err)))
            return rc;
        if (v < 0 || v > THREADS_MAX)
            return yamldoc_errf(d, th, err, MOERT_ECONFIG,
                                "runtime.threads = %lld, expected an integer in [0, %d] (0 = one per online CPU)",
                                (long long)v, THREADS_MAX);
        rt->threads = (int32_t)v;
    }
    if (be) {
        const char *const *names = cfg_backend_names;
        int which;
        if ((rc = yaml_enum(d, be, "runtime.backend", names, &which, err)))
            return rc;
        rt->backend = (cfg_backend)which;
    }
    if (gp) {
        int64_t v;
        if ((rc = yamldoc_int(d, gp, "runtime.gpus", &v, err)))
            return rc;
        if (!cfg_gpus_valid(v))
            return yamldoc_errf(d, gp, err, MOERT_ECONFIG, "runtime.gpus = %lld, expected 1, 2, 4 or 8",
                                (long long)v);
        rt->gpus = (int32_t)v;
    }
    if (nu) {
        int which;
        if ((rc = yaml_enum(d, nu, "runtime.numerics", cfg_numerics_names, &which, err)))
            return rc;
        rt->numerics = (cfg_numerics)which;
    }
    if (bi && (rc = yamldoc_bool(d, bi, "runtime.batch_invariant", &rt->batch_invariant, err)))
        return rc;
    return MOERT_OK;
}

bool cfg_gpus_valid(int64_t n)
{
    return n == 1 || n == 2 || n == 4 || n == 8;
}

static int parse_sampling(load_ctx *c, yaml_node_t *n, moert_err *err)
{
    yamldoc *d = c->d;
    cfg_sampling *s = &c->out->sampling;
    static const char *const keys[] = {"temperature", "top_k", "top_p", "seed", NULL};
    int rc = yamldoc_check_map(d, n, "sampling", keys, err);
    if (rc)
        return rc;
    yaml_node_t *v;
    if ((v = yamldoc_get(d, n, "temperature"))) {
        if ((rc = yamldoc_double(d, v, "sampling.temperature", &s->temperature, err)))
            return rc;
        if (s->temperature < 0)
            return yamldoc_errf(d, v, err, MOERT_ECONFIG, "sampling.temperature = %g, expected a number >= 0 (0 = greedy)",
                                s->temperature);
    }
    if ((v = yamldoc_get(d, n, "top_k"))) {
        int64_t k;
        if ((rc = yamldoc_int(d, v, "sampling.top_k", &k, err)))
            return rc;
        if (k < 0 || k > c->out->topo.vocab_size)
            return yamldoc_errf(d, v, err, MOERT_ECONFIG,
                                "sampling.top_k = %lld, expected an integer in [0, vocab_size = %lld] (0 = off)",
                                (long long)k, (long long)c->out->topo.vocab_size);
        s->top_k = (int32_t)k;
    }
    if ((v = yamldoc_get(d, n, "top_p"))) {
        if ((rc = yamldoc_double(d, v, "sampling.top_p", &s->top_p, err)))
            return rc;
        if (!(s->top_p > 0 && s->top_p <= 1))
            return yamldoc_errf(d, v, err, MOERT_ECONFIG, "sampling.top_p = %g, expected a number in (0, 1]",
                                s->top_p);
    }
    if ((v = yamldoc_get(d, n, "seed")) && (rc = yamldoc_u64(d, v, "sampling.seed", &s->seed, err)))
        return rc;
    return MOERT_OK;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int parse_trace(load_ctx *c, yaml_node_t *n, moert_err *err)
{
    yamldoc *d = c->d;
    cfg_trace_plan *tp = &c->out->trace;
    static const char *const keys[] = {"enabled", "out", "mode", "positions", "stages",
                                       "layers", "capacity", "on_full", NULL};
    int rc = yamldoc_check_map(d, n, "trace", keys, err), which;
    if (rc)
        return rc;
    yaml_node_t *v;
    char got[100];
    if ((v = yamldoc_get(d, n, "enabled")) && (rc = yamldoc_bool(d, v, "trace.enabled", &tp->enabled, err)))
        return rc;
    if ((v = yamldoc_get(d, n, "out")) && (rc = parse_path(c, v, "trace.out", false, tp->out_path, err)))
        return rc;
    const char *const *modes = cfg_trace_mode_names, *const *positions = cfg_trace_positions_names;
    const char *const *on_full = cfg_trace_on_full_names;
    if ((v = yamldoc_get(d, n, "mode"))) {
        if ((rc = yaml_enum(d, v, "trace.mode", modes, &which, err)))
            return rc;
        tp->mode = (cfg_trace_mode)which;
    }
    if ((v = yamldoc_get(d, n, "positions"))) {
        if ((rc = yaml_enum(d, v, "trace.positions", positions, &which, err)))
            return rc;
        tp->positions = (cfg_trace_positions)which;
    }
    if ((v = yamldoc_get(d, n, "on_full"))) {
        if ((rc = yaml_enum(d, v, "trace.on_full", on_full, &which, err)))
            return rc;
        tp->on_full = (cfg_trace_on_full)which;
    }
    if ((v = yamldoc_get(d, n, "capacity"))) {
        if ((rc = yamldoc_int(d, v, "trace.capacity", &tp->capacity, err)))
            return rc;
        if (tp->capacity < 1 || tp->capacity > DIM_MAX)
            return yamldoc_errf(d, v, err, MOERT_ECONFIG, "trace.capacity = %lld, expected an integer in [1, %lld]",
                                (long long)tp->capacity, (long long)DIM_MAX);
    }
    if ((v = yamldoc_get(d, n, "stages"))) {
        if (yamldoc_is_scalar(v) && !strcmp(yamldoc_text(v), "all") && !yamldoc_is_null(v)) {
            tp->stages = (1u << CFG_STAGE_COUNT) - 1u;
        } else if (yamldoc_is_seq(v)) {
            char list[300] = "";
            size_t used = 0;
            for (int i = 0; i < CFG_STAGE_COUNT; i++)
                used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", stage_names[i]);
            if (yamldoc_seq_len(v) == 0)
                return yamldoc_errf(d, v, err, MOERT_ECONFIG, "trace.stages is an empty list, expected `all` or at "
                                    "least one of: %s", list);
            tp->stages = 0;
            for (int i = 0; i < yamldoc_seq_len(v); i++) {
                yaml_node_t *it = yamldoc_seq_item(d, v, i);
                int st = yamldoc_is_scalar(it) ? cfg_stage_from_name(yamldoc_text(it)) : -1;
                if (st < 0)
                    return yamldoc_errf(d, it, err, MOERT_ECONFIG, "trace.stages[%d]: got %s, expected one of: %s", i,
                                        yamldoc_describe(it, got, sizeof got), list);
                if (tp->stages & (1u << st))
                    return yamldoc_errf(d, it, err, MOERT_ECONFIG,
                                        "trace.stages[%d]: stage '%s' is listed twice, expected each stage once", i,
                                        stage_names[st]);
                tp->stages |= 1u << st;
            }
        } else {
            return yamldoc_errf(d, v, err, MOERT_ECONFIG, "trace.stages: got %s, expected `all` or a list of stage names",
                                yamldoc_describe(v, got, sizeof got));
        }
    }
    if ((v = yamldoc_get(d, n, "layers"))) {
        int64_t nl = c->out->topo.num_hidden_layers;
        if (yamldoc_is_scalar(v) && !strcmp(yamldoc_text(v), "all") && !yamldoc_is_null(v)) {
            tp->all_layers = true;
            tp->n_layers = 0;
        } else if (yamldoc_is_seq(v)) {
            int cnt = yamldoc_seq_len(v);
            if (cnt > nl)
                return yamldoc_errf(d, v, err, MOERT_ECONFIG, "trace.layers lists %d layers, expected at most "
                                    "num_hidden_layers = %lld distinct indices", cnt, (long long)nl);
            tp->all_layers = false;
            tp->n_layers = 0;
            for (int i = 0; i < cnt; i++) {
                yaml_node_t *it = yamldoc_seq_item(d, v, i);
                char w[60];
                snprintf(w, sizeof w, "trace.layers[%d]", i);
                int64_t x;
                if ((rc = yamldoc_int(d, it, w, &x, err)))
                    return rc;
                if (x < 0 || x >= nl)
                    return yamldoc_errf(d, it, err, MOERT_ECONFIG, "%s = %lld is out of range, expected a layer "
                                        "index in [0, %lld)", w, (long long)x, (long long)nl);
                for (int j = 0; j < i; j++)
                    if (tp->layers[j] == x)
                        return yamldoc_errf(d, it, err, MOERT_ECONFIG, "%s = %lld is listed twice, expected each "
                                            "layer once", w, (long long)x);
                tp->layers[tp->n_layers++] = (int32_t)x;
            }
            /* Sorted so that consumers can walk layers in forward order. */
            qsort(tp->layers, (size_t)tp->n_layers, sizeof tp->layers[0], cmp_i32);
        } else {
            return yamldoc_errf(d, v, err, MOERT_ECONFIG, "trace.layers: got %s, expected `all` or a list of layer indices",
                                yamldoc_describe(v, got, sizeof got));
        }
    }
    return MOERT_OK;
}

static const char *const top_keys[] = {"model", "weights", "tokenizer", "runtime", "sampling",
                                       "trace", "contract", NULL};

static int load_doc(load_ctx *c, moert_err *err)
{
    yamldoc *d = c->d;
    yaml_node_t *root = yamldoc_root(d);
    if (!root)
        return err_set(err, MOERT_ECONFIG, "%s:1:1: the document is empty, expected a mapping with model and weights",
                       d->name);
    int rc = yamldoc_check_map(d, root, "the config", top_keys, err);
    if (rc)
        return rc;
    yaml_node_t *model = yamldoc_get(d, root, "model"), *w = yamldoc_get(d, root, "weights");
    if (!model)
        return yamldoc_errf(d, root, err, MOERT_ECONFIG,
                            "the config is missing required section 'model', expected model: {...} or model: {hf_config: path}");
    yaml_node_t *v;
    /* model: {gguf: FILE} names the weights too */
    bool gguf_model = yamldoc_is_map(model) && yamldoc_get(d, model, "gguf");
    if (!w && !gguf_model)
        return yamldoc_errf(d, root, err, MOERT_ECONFIG,
                            "the config is missing required section 'weights', expected a path or {synth: {seed: N, dtype: bf16}}");
    if ((rc = parse_model(c, model, err)))
        return rc;
    if (w && (rc = parse_weights(c, w, err)))
        return rc;
    if ((v = yamldoc_get(d, root, "tokenizer")) &&
        (rc = parse_path(c, v, "tokenizer", true, c->out->tokenizer_path, err)))
        return rc;
    if ((v = yamldoc_get(d, root, "contract")) &&
        (rc = parse_path(c, v, "contract", true, c->out->contract_path, err)))
        return rc;
    if ((rc = parse_runtime(c, yamldoc_get(d, root, "runtime"), err)))
        return rc;
    if ((v = yamldoc_get(d, root, "sampling")) && (rc = parse_sampling(c, v, err)))
        return rc;
    if ((v = yamldoc_get(d, root, "trace")) && (rc = parse_trace(c, v, err)))
        return rc;
    return MOERT_OK;
}

static int load_yaml(yamldoc *d, const char *base_dir, unsigned flags, cfg_config *out, moert_err *err)
{
    load_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", d->name);
    c->d = d;
    c->base_dir = base_dir;
    c->flags = flags;
    c->out = out;
    int rc = load_doc(c, err);
    free(c);
    return rc;
}

int cfg_load_string_ex(const char *yaml, const char *name, const char *base_dir, unsigned flags,
                       cfg_config *out, moert_err *err)
{
    if (!yaml || !out)
        return err_set(err, MOERT_EUSAGE, "cfg_load_string: missing argument");
    if (flags & ~(unsigned)CFG_ALLOW_MISSING_WEIGHTS)
        return err_set(err, MOERT_EUSAGE, "cfg_load_string: unknown flags 0x%x", flags);
    cfg_defaults(out);
    if (!name)
        name = "<config>";
    snprintf(out->source_path, sizeof out->source_path, "%s", name);
    yamldoc d;
    int rc = yamldoc_load_string(&d, yaml, strlen(yaml), name, err);
    if (rc)
        return rc;
    rc = load_yaml(&d, base_dir, flags, out, err);
    yamldoc_free(&d);
    return rc;
}

int cfg_load_string(const char *yaml, const char *name, const char *base_dir, cfg_config *out,
                    moert_err *err)
{
    return cfg_load_string_ex(yaml, name, base_dir, 0, out, err);
}

/* Runtime limits that follow a model's known context length. */
static void fit_limits(cfg_config *out)
{
    if (out->topo.max_position_embeddings > 0 && out->rt.max_seq_len > out->topo.max_position_embeddings)
        out->rt.max_seq_len = out->topo.max_position_embeddings;
    if (out->rt.prefill_chunk > out->rt.max_seq_len)
        out->rt.prefill_chunk = out->rt.max_seq_len;
}

/* A HF model directory: its config.json gives the topology, everything else defaults. */
static int load_model_dir(const char *dir, cfg_config *out, moert_err *err)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    char cj[CFG_PATH_MAX], tok[CFG_PATH_MAX];
    int w1 = snprintf(cj, sizeof cj, "%.*s/config.json", (int)len, dir);
    int w2 = snprintf(tok, sizeof tok, "%.*s/tokenizer.json", (int)len, dir);
    if (w1 < 0 || w2 < 0 || (size_t)w2 >= sizeof tok || len >= sizeof out->weights.path)
        return err_set(err, MOERT_ECONFIG, "%s: path is too long, expected at most %d bytes", dir,
                       CFG_PATH_MAX - 16);
    struct stat st;
    if (stat(cj, &st) != 0)
        return err_set(err, MOERT_ECONFIG,
                       "%s: not found (%s), expected a HF model directory holding config.json", cj, strerror(errno));
    snprintf(out->hf_config_path, sizeof out->hf_config_path, "%s", cj);
    int rc = cfg_import_hf(cj, &out->topo, err);
    if (!rc)
        rc = cfg_import_hf_eos(cj, out->eos_ids, &out->n_eos, err);
    if (rc)
        return rc;
    snprintf(out->weights.path, sizeof out->weights.path, "%.*s", (int)len, dir);
    out->weights.synth = false;
    if (stat(tok, &st) == 0 && S_ISREG(st.st_mode))
        snprintf(out->tokenizer_path, sizeof out->tokenizer_path, "%s", tok);
    fit_limits(out);
    return MOERT_OK;
}

/* One GGUF file: topology, weights and tokenizer all come from it. */
static int load_gguf_file(const char *path, cfg_config *out, moert_err *err)
{
    if (strlen(path) >= sizeof out->weights.path)
        return err_set(err, MOERT_ECONFIG, "%s: path is too long, expected at most %d bytes", path, CFG_PATH_MAX - 1);
    bool has_tok;
    int rc = cfg_import_gguf(path, &out->topo, out->eos_ids, &out->n_eos, &has_tok, err);
    if (rc)
        return rc;
    snprintf(out->weights.path, sizeof out->weights.path, "%s", path);
    if (has_tok)
        snprintf(out->tokenizer_path, sizeof out->tokenizer_path, "%s", path);
    out->weights.synth = false;
    fit_limits(out);
    return MOERT_OK;
}

int cfg_import_gguf(const char *gguf_path, cfg_topology *topo, int32_t *eos_ids, int32_t *n_eos,
                    bool *has_tokenizer, moert_err *err)
{
    gguf_file *g;
    *has_tokenizer = false;
    int rc = gguf_open(gguf_path, &g, err);
    if (rc)
        return rc;
    int n = 0;
    rc = ggufmap_topology(g, topo, err);
    if (!rc)
        rc = ggufmap_eos_ids(g, eos_ids, CFG_MAX_EOS, &n, err);
    *n_eos = n;
    *has_tokenizer = gguf_kv_find(g, "tokenizer.ggml.tokens") != NULL;
    gguf_close(g);
    return rc;
}

int cfg_import_hf_eos(const char *config_json_path, int32_t *ids, int32_t *n, moert_err *err)
{
    *n = 0;
    json_error_t je;
    json_t *root = json_load_file(config_json_path, 0, &je);
    if (!root)
        return err_set(err, MOERT_ECONFIG, "%s:%d:%d: invalid JSON: %s", config_json_path, je.line, je.column,
                       je.text);
    json_t *v = json_is_object(root) ? json_object_get(root, "eos_token_id") : NULL;
    int rc = MOERT_OK;
    size_t count = !v || json_is_null(v) ? 0 : json_is_array(v) ? json_array_size(v) : 1;
    for (size_t i = 0; i < count && !rc; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            rc = err_set(err, MOERT_ECONFIG, "%s: eos_token_id%s is %s, expected a token id or a list of ids",
                         config_json_path, json_is_array(v) ? "[i]" : "", json_kind(e));
        else if (*n < CFG_MAX_EOS)
            ids[(*n)++] = (int32_t)json_integer_value(e);
    }
    json_decref(root);
    return rc;
}

int cfg_load_ex(const char *path, unsigned flags, cfg_config *out, moert_err *err)
{
    if (!path || !out)
        return err_set(err, MOERT_EUSAGE, "cfg_load: missing argument");
    if (flags & ~(unsigned)CFG_ALLOW_MISSING_WEIGHTS)
        return err_set(err, MOERT_EUSAGE, "cfg_load: unknown flags 0x%x", flags);
    cfg_defaults(out);
    if (strlen(path) >= sizeof out->source_path)
        return err_set(err, MOERT_EUSAGE, "%.100s...: path is too long, expected at most %d bytes", path,
                       CFG_PATH_MAX - 1);
    snprintf(out->source_path, sizeof out->source_path, "%s", path);
    struct stat st;
    if (stat(path, &st) != 0)
        return err_set(err, MOERT_EIO, "%s: %s, expected a YAML config file or a HF model directory", path,
                       strerror(errno));
    if (S_ISDIR(st.st_mode))
        return load_model_dir(path, out, err);
    if (S_ISREG(st.st_mode) && gguf_is_gguf(path))
        return load_gguf_file(path, out, err);
    char base[CFG_PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(base, sizeof base, ".");
    else if (slash == path)
        snprintf(base, sizeof base, "/");
    else
        snprintf(base, sizeof base, "%.*s", (int)(slash - path), path);
    yamldoc d;
    int rc = yamldoc_load_file(&d, path, err);
    if (rc)
        return rc;
    rc = load_yaml(&d, base, flags, out, err);
    yamldoc_free(&d);
    return rc;
}

int cfg_load(const char *path, cfg_config *out, moert_err *err)
{
    return cfg_load_ex(path, 0, out, err);
}
