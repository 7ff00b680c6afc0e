/* cfg: the YAML topology (or a Hugging Face model directory) turned into one checked,
 * fully resolved cfg_config.  Nothing else in moert parses configs.
 *
 * A config names: the model hyperparameters (inline, or imported from a HF config.json),
 * where the weights are (a safetensors file, a sharded index, a model directory, or a
 * seeded synthetic model generated at init), the tokenizer, runtime limits, sampling
 * defaults, the trace plan and the contract the trace must satisfy.
 *
 * Every error names file:line:column (libyaml's marks; JSON errors name file:line:column
 * too) and what was expected.  cfg_load either fills *out completely and returns MOERT_OK,
 * or returns an error and leaves *out unusable.
 *
 * YAML schema (configs/qwen3moe.yaml is the annotated reference; only model and weights
 * are required, every other key defaults as cfg_defaults says):
 *   model:     inline HF hyperparameters (cfg_topology's names; aliases num_local_experts
 *              and rope_parameters: {rope_theta, rope_type: default}), or exactly
 *              {hf_config: path/to/config.json}, or exactly {gguf: path/to/model.gguf} (the
 *              topology from the GGUF's metadata; weights and tokenizer default to the file).  Required inline: vocab_size, hidden_size,
 *              num_hidden_layers, num_attention_heads, num_key_value_heads, num_experts,
 *              num_experts_per_tok, moe_intermediate_size, rope_theta, rms_norm_eps.
 *              Defaults: head_dim hidden/heads, intermediate_size 0 (required > 0 when a
 *              dense layer exists), decoder_sparse_step 1, mlp_only_layers [],
 *              norm_topk_prob true (HF config.json: false), tie_word_embeddings false,
 *              max_position_embeddings 0 (unknown).
 *   weights:   a path (file or directory), or {synth: {seed: N, dtype: f32|bf16|f16}}
 *              (seed 0 and bf16 by default).
 *   tokenizer, contract: paths, "" = none.  runtime: {max_seq_len, prefill_chunk, threads,
 *   backend: cpu|hip, gpus: 1|2|4|8 (default 1), numerics: exact|act-q8 (default exact),
 *   batch_invariant: bool (default false)}.  sampling: {temperature, top_k, top_p, seed}.  trace: {enabled, out,
 *   mode: stats|tensor, positions: last|all, stages: all|[names], layers: all|[indices],
 *   capacity, on_full: overwrite|stop}.
 * Relative paths resolve against the YAML file's directory, lexically (base/rel, no
 * realpath); the weights, hf_config, tokenizer and contract must exist, trace.out need not.
 * max_seq_len defaults to min(4096, max_position_embeddings when known) and an explicit one
 * above max_position_embeddings is an error; prefill_chunk defaults to min(256,
 * max_seq_len) and an explicit one must lie in [1, max_seq_len].  top_k <= vocab_size.
 * trace.layers is stored sorted ascending.
 *
 * A HF config.json is refused (not ignored) when it asks for math moert does not do:
 * model_type other than qwen3_moe, hidden_act other than silu, attention_bias or
 * use_sliding_window true, rope_scaling / rope_parameters with a rope_type other than
 * "default".  Its other unknown keys are ignored; JSON null means "HF default".
 */
#ifndef MOERT_CONFIG_H
#define MOERT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

#define CFG_MAX_LAYERS 512
#define CFG_PATH_MAX 1024
#define CFG_MAX_EOS 8

/* Qwen3-MoE hyperparameters, with HF's names and meaning. */
typedef struct cfg_topology {
    int64_t vocab_size;
    int64_t hidden_size;
    int64_t num_hidden_layers;
    int64_t num_attention_heads;
    int64_t num_key_value_heads;
    int64_t head_dim;              /* not always hidden/heads (30B-A3B: 32 x 128 != 2048) */
    int64_t num_experts;           /* hub "num_experts", transformers-5 "num_local_experts" */
    int64_t num_experts_per_tok;   /* top-k */
    int64_t moe_intermediate_size; /* per-expert FFN width */
    int64_t intermediate_size;     /* dense-MLP width (mlp_only_layers / sparse step) */
    int64_t decoder_sparse_step;   /* layer i is sparse iff (i+1) % step == 0 ... */
    int32_t n_mlp_only_layers;     /* ... and i is not in mlp_only_layers */
    int32_t mlp_only_layers[CFG_MAX_LAYERS];
    bool norm_topk_prob;           /* renormalise the top-k routing weights to sum 1 */
    bool tie_word_embeddings;      /* lm_head shares embed_tokens */
    double rope_theta;             /* hub "rope_theta", transformers-5 rope_parameters.rope_theta */
    double rms_norm_eps;
    int64_t max_position_embeddings; /* informational; 0 when unknown */
} cfg_topology;

/* True when layer `layer` uses the routed-experts block (HF's rule:
 * layer not in mlp_only_layers && num_experts > 0 && (layer + 1) % decoder_sparse_step == 0).
 * False for a layer outside [0, num_hidden_layers). */
bool cfg_layer_is_sparse(const cfg_topology *topo, int64_t layer);

typedef enum cfg_backend { CFG_BACKEND_CPU = 0, CFG_BACKEND_HIP = 1 } cfg_backend;

/* Weight element types a config may ask `synth` for. */
typedef enum cfg_dtype { CFG_DTYPE_F32 = 0, CFG_DTYPE_BF16 = 1, CFG_DTYPE_F16 = 2 } cfg_dtype;

typedef struct cfg_weights {
    bool synth;                 /* generate seeded random weights at init (no files) */
    uint64_t synth_seed;
    cfg_dtype synth_dtype;
    char path[CFG_PATH_MAX];    /* when !synth: .safetensors file, *.index.json, or a dir */
    bool missing;               /* only under CFG_ALLOW_MISSING_WEIGHTS: `path` does not exist */
} cfg_weights;

/* Precision simulation (CPU backend): every op's output activations rounded to this format
 * (round to nearest even), weights unchanged. */
typedef enum cfg_sim_precision { CFG_SIM_NONE = 0, CFG_SIM_BF16 = 1, CFG_SIM_F16 = 2 } cfg_sim_precision;
const char *cfg_sim_precision_name(cfg_sim_precision p); /* "none", "bf16", "f16" */
int cfg_sim_precision_from_name(const char *name);       /* -1 when unknown */

/* Numerics of the products with block-quantized weights (ops.h): exact (weights dequantized
 * exactly, activations f32; the default) or act-q8 (activations quantized to int8, integer
 * dot products, as llama.cpp's CPU kernels; deterministic as well).  Plain-type weights
 * keep the exact kernels either way.  cfg_numerics_names is the one name table. */
typedef enum cfg_numerics { CFG_NUMERICS_EXACT = 0, CFG_NUMERICS_ACT_Q8 = 1 } cfg_numerics;
extern const char *const cfg_numerics_names[]; /* "exact", "act-q8", NULL */

typedef struct cfg_runtime {
    int64_t max_seq_len;        /* KV cache rows; prompt + generated must fit */
    int64_t prefill_chunk;      /* max tokens per prefill step */
    int32_t threads;            /* CPU worker threads; results never depend on it */
    cfg_backend backend;
    int32_t gpus;               /* runtime.gpus / --gpus: expert-parallel ranks, 1, 2, 4 or 8
                                   (cfg_gpus_valid); > 1 runs on the CPU through the in-process
                                   loopback (comm.h); the hip backend runs 1 */
    cfg_numerics numerics;      /* runtime.numerics / --numerics (default exact) */
    bool batch_invariant;       /* runtime.batch_invariant / --batch-invariant on|off: a prompt
                                   row's bits equal the same token's as a decode step.  The CPU
                                   backend always is; the hip backend then runs decode steps
                                   through its prefill kernels (slower) */
    cfg_sim_precision sim_precision; /* --sim-precision (command line only) */
    char route_from[CFG_PATH_MAX];   /* --route-from: a trace whose recorded routing replaces
                                        the router's choice (routing replay), or "" */
} cfg_runtime;

/* The GPU counts runtime.gpus accepts: 1, 2, 4, 8. */
bool cfg_gpus_valid(int64_t n);

typedef struct cfg_sampling {
    double temperature;         /* 0 = greedy */
    int32_t top_k;              /* 0 = off */
    double top_p;               /* 1 = off */
    uint64_t seed;
} cfg_sampling;

/* Trace stages, in forward-pass order.  The names are the one table shared by trace
 * capture, contracts, diff and HF reference files (cfg_stage_name). */
typedef enum cfg_stage {
    CFG_STAGE_EMBED = 0,
    CFG_STAGE_ATTN_NORM,
    CFG_STAGE_QKV,
    CFG_STAGE_ATTN_OUT,
    CFG_STAGE_FFN_NORM,
    CFG_STAGE_ROUTER_LOGITS,
    CFG_STAGE_MOE_ROUTER,
    CFG_STAGE_MOE_FFN_OUT,
    CFG_STAGE_OUTPUT,
    CFG_STAGE_FINAL_NORM,
    CFG_STAGE_LOGITS,
    CFG_STAGE_COUNT
} cfg_stage;

const char *cfg_stage_name(cfg_stage s);       /* "embed", "attn_norm", ... */
int cfg_stage_from_name(const char *name);     /* -1 when unknown */
bool cfg_stage_is_per_layer(cfg_stage s);      /* attn_norm..output are per layer */

typedef enum cfg_trace_mode { CFG_TRACE_STATS = 0, CFG_TRACE_TENSOR = 1 } cfg_trace_mode;
typedef enum cfg_trace_positions { CFG_TRACE_LAST = 0, CFG_TRACE_ALL = 1 } cfg_trace_positions;
typedef enum cfg_trace_on_full { CFG_TRACE_OVERWRITE = 0, CFG_TRACE_STOP = 1 } cfg_trace_on_full;

/* Name tables, in enum order and NULL-terminated: the one spelling that the config, the
 * trace manifest writer and its reader share.  An unknown name is an error everywhere. */
extern const char *const cfg_dtype_names[];          /* cfg_dtype: f32, bf16, f16 */
extern const char *const cfg_backend_names[];        /* cfg_backend: cpu, hip */
extern const char *const cfg_trace_mode_names[];     /* cfg_trace_mode: stats, tensor */
extern const char *const cfg_trace_positions_names[]; /* cfg_trace_positions: last, all */
extern const char *const cfg_trace_on_full_names[];  /* cfg_trace_on_full: overwrite, stop */
/* The index of name in a NULL-terminated table; -1 when absent (or name is NULL). */
int cfg_name_index(const char *const *table, const char *name);

typedef struct cfg_trace_plan {
    bool enabled;
    char out_path[CFG_PATH_MAX];   /* may be empty: then only --trace FILE enables output */
    cfg_trace_mode mode;
    cfg_trace_positions positions;
    uint32_t stages;               /* bit (1u << cfg_stage) per captured stage */
    bool all_layers;               /* true: every layer; else `layers` below */
    int32_t n_layers;
    int32_t layers[CFG_MAX_LAYERS];
    int64_t capacity;              /* ring slots (records) per stage ring */
    cfg_trace_on_full on_full;
} cfg_trace_plan;

typedef struct cfg_config {
    char source_path[CFG_PATH_MAX];   /* the YAML file or model directory given */
    char hf_config_path[CFG_PATH_MAX]; /* config.json the topology came from, or "" */
    cfg_topology topo;
    cfg_weights weights;
    char tokenizer_path[CFG_PATH_MAX]; /* tokenizer.json, or "" when none is known */
    cfg_runtime rt;
    cfg_sampling sampling;
    cfg_trace_plan trace;
    char contract_path[CFG_PATH_MAX];  /* contract YAML, or "" */
    int32_t n_eos;                     /* generation stops at any of these ids ... */
    int32_t eos_ids[CFG_MAX_EOS];      /* (config.json eos_token_id; a GGUF's eos/eot ids) */
} cfg_config;

/* Runtime defaults used for a model directory and for keys a YAML leaves out. */
void cfg_defaults(cfg_config *out);

/* Loads `path`: a YAML config file, a GGUF file (topology, weights and tokenizer all from
 * it, runtime defaults as for a directory), or a directory holding a HF config.json (+ safetensors
 * + optional tokenizer.json), in which case defaults apply for everything but topology:
 * weights.path = the directory (without a trailing '/'), tokenizer_path = DIR/tokenizer.json
 * when that file exists else "", hf_config_path = DIR/config.json, contract_path "".
 * Relative paths inside a YAML resolve against the YAML's directory.  Checks everything
 * (see cfg_check_topology) before returning MOERT_OK.  Errors: MOERT_ECONFIG for anything
 * wrong in the config or a file it names, MOERT_EIO when `path` itself cannot be read. */
int cfg_load(const char *path, cfg_config *out, moert_err *err);

/* cfg_load_ex flags. */
#define CFG_ALLOW_MISSING_WEIGHTS (1u << 0) /* a weights *path* that does not exist is not an
                                               error: weights.missing is set instead, so that
                                               `moert plan` can size a model it has not got */

/* cfg_load with flags (0 = cfg_load).  Only the weights path is relaxed: the topology, a
 * hf_config, tokenizer and contract must still exist.  Unknown flag bits are EUSAGE. */
int cfg_load_ex(const char *path, unsigned flags, cfg_config *out, moert_err *err);

/* Parses YAML text held in memory; `name` is used in messages and `base_dir` resolves
 * relative paths.  Same rules as cfg_load. */
int cfg_load_string(const char *yaml, const char *name, const char *base_dir, cfg_config *out,
                    moert_err *err);
int cfg_load_string_ex(const char *yaml, const char *name, const char *base_dir, unsigned flags,
                       cfg_config *out, moert_err *err);

/* Fills *topo from a HF config.json (hub and transformers-5 spellings both accepted; when a
 * file gives both spellings they must agree) and checks it (cfg_check_topology).  Syntax
 * errors name file:line:col (jansson); other messages name the file and the key. */
int cfg_import_hf(const char *config_json_path, cfg_topology *topo, moert_err *err);

/* The generation-stopping ids of a HF config.json (eos_token_id: an id or a list of ids;
 * absent or null: none). */
int cfg_import_hf_eos(const char *config_json_path, int32_t *ids, int32_t *n, moert_err *err);

/* Topology and end-of-generation ids from a GGUF file's metadata (see ggufmap.h), and
 * whether the file carries a tokenizer (tokenizer.ggml.tokens). */
int cfg_import_gguf(const char *gguf_path, cfg_topology *topo, int32_t *eos_ids, int32_t *n_eos,
                    bool *has_tokenizer, moert_err *err);

/* Semantic checks of a topology: positive sizes (at most 2^31 - 1, heads * head_dim too;
 * num_hidden_layers at most CFG_MAX_LAYERS), heads % kv_heads == 0, 1 <= top-k <= experts,
 * mlp_only_layers inside [0, layers) and distinct, decoder_sparse_step >= 1,
 * intermediate_size > 0 when a dense layer exists, moe_intermediate_size > 0 when a sparse
 * one does, rope_theta > 0, 0 < rms_norm_eps < 1.  `where` prefixes messages ("x.yaml"). */
int cfg_check_topology(const cfg_topology *topo, const char *where, moert_err *err);

#endif
