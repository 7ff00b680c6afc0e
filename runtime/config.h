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
 */
#ifndef MOERT_CONFIG_H
#define MOERT_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"

#define CFG_MAX_LAYERS 512
#define CFG_PATH_MAX 1024

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

/* True when layer `layer` uses the routed-experts block (HF's rule). */
bool cfg_layer_is_sparse(const cfg_topology *topo, int64_t layer);

typedef enum cfg_backend { CFG_BACKEND_CPU = 0, CFG_BACKEND_HIP = 1 } cfg_backend;

/* Weight element types a config may ask `synth` for. */
typedef enum cfg_dtype { CFG_DTYPE_F32 = 0, CFG_DTYPE_BF16 = 1, CFG_DTYPE_F16 = 2 } cfg_dtype;

typedef struct cfg_weights {
    bool synth;                 /* generate seeded random weights at init (no files) */
    uint64_t synth_seed;
    cfg_dtype synth_dtype;
    char path[CFG_PATH_MAX];    /* when !synth: .safetensors file, *.index.json, or a dir */
} cfg_weights;

typedef struct cfg_runtime {
    int64_t max_seq_len;        /* KV cache rows; prompt + generated must fit */
    int64_t prefill_chunk;      /* max tokens per prefill step */
    int32_t threads;            /* CPU worker threads; results never depend on it */
    cfg_backend backend;
} cfg_runtime;

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
} cfg_config;

/* Runtime defaults used for a model directory and for keys a YAML leaves out. */
void cfg_defaults(cfg_config *out);

/* Loads `path`: a YAML config file, or a directory holding a HF config.json (+ safetensors
 * + optional tokenizer.json), in which case defaults apply for everything but topology.
 * Relative paths inside a YAML resolve against the YAML's directory.  Checks everything
 * (see cfg_check_topology) before returning MOERT_OK. */
int cfg_load(const char *path, cfg_config *out, moert_err *err);

/* Parses YAML text held in memory; `name` is used in messages and `base_dir` resolves
 * relative paths.  Same rules as cfg_load. */
int cfg_load_string(const char *yaml, const char *name, const char *base_dir, cfg_config *out,
                    moert_err *err);

/* Fills *topo from a HF config.json (hub and transformers-5 spellings both accepted). */
int cfg_import_hf(const char *config_json_path, cfg_topology *topo, moert_err *err);

/* Semantic checks of a topology: positive sizes, heads % kv_heads == 0, top-k <= experts,
 * mlp_only_layers inside [0, layers), etc.  `where` prefixes messages (e.g. "x.yaml"). */
int cfg_check_topology(const cfg_topology *topo, const char *where, moert_err *err);

#endif
