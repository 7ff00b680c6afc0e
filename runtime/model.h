/* model: binds the tensors of an st_set to the Qwen3-MoE topology, by the names the hub
 * writes (model.layers.N.mlp.experts.E.gate_proj.weight, ...) and checks every shape.
 * Missing tensors, unexpected tensors and shape mismatches are reported by name (all of
 * them, not just the first, up to the message size).  Weights stay in the read-only
 * mapping; nothing is copied.
 *
 * Linear weights follow PyTorch: [out_features, in_features], row-major, so each output
 * row is a contiguous dot-product operand.
 */
#ifndef MOERT_MODEL_H
#define MOERT_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "st.h"

typedef struct model_tensor {
    const char *name;    /* owned by the st_set */
    st_dtype dtype;      /* F32, BF16 or F16; matrices also a block type */
    int64_t rows;        /* out_features; 1 for vectors */
    int64_t cols;        /* in_features; length for vectors */
    const void *data;
    uint64_t nbytes;
} model_tensor;

typedef struct model_layer {
    model_tensor attn_norm;      /* input_layernorm            [H] */
    model_tensor q, k, v, o;     /* self_attn.{q,k,v,o}_proj   [nh*hd,H] [nkv*hd,H] x2 [H,nh*hd] */
    model_tensor q_norm, k_norm; /* self_attn.{q,k}_norm       [hd] */
    model_tensor ffn_norm;       /* post_attention_layernorm   [H] */
    bool sparse;                 /* routed experts (else dense MLP) */
    model_tensor router;         /* mlp.gate                   [E,H] */
    model_tensor *gate, *up;     /* mlp.experts.e.{gate,up}_proj [I,H], E entries */
    model_tensor *down;          /* mlp.experts.e.down_proj      [H,I], E entries */
    model_tensor mlp_gate, mlp_up, mlp_down; /* dense: mlp.{gate,up,down}_proj */
} model_layer;

typedef struct model_weights {
    cfg_topology topo;
    model_tensor embed;          /* model.embed_tokens.weight [V,H] */
    model_tensor final_norm;     /* model.norm.weight          [H] */
    model_tensor lm_head;        /* lm_head.weight [V,H], or embed when tied */
    model_layer *layers;         /* num_hidden_layers entries */
    model_tensor *expert_table;  /* backing store for the layers' gate/up/down arrays */
    uint64_t bytes_by_dtype[ST_DTYPE_COUNT]; /* bound tensors, tied lm_head counted once */
    uint64_t total_bytes;
    const st_set *set;           /* borrowed */
} model_weights;

/* One tensor a topology expects, by its hub name. */
typedef struct model_spec {
    char name[96];
    int ndim;            /* 1 (vectors) or 2 (matrices) */
    int64_t shape[2];
} model_spec;

/* Lists every tensor `topo` expects (lm_head.weight only when untied), sorted by name with
 * strcmp (st_set order).  *out is malloc'd; the caller frees it.  Fails with MOERT_ECONFIG
 * when the topology's sizes are unusable (non-positive, top-k > experts, ...). */
int model_expected_tensors(const cfg_topology *topo, model_spec **out, size_t *n, moert_err *err);

/* Binds and checks; on error *out is left empty (safe to model_unbind).
 * Every tensor must be F32, BF16 or F16, or for matrices a block type (GGUF: Q8_0, Q4_K, ...)
 * whose block divides the row (dtypes may differ between tensors).  With
 * tie_word_embeddings, lm_head.weight is normally absent; if present it is accepted only
 * when it equals model.embed_tokens.weight byte for byte (some exporters write both
 * copies), and lm_head then aliases embed either way. */
int model_bind(const cfg_topology *topo, const st_set *set, model_weights *out, moert_err *err);
void model_unbind(model_weights *w);

/* Scans the weights once for NaN and Inf: every F32, BF16 and F16 tensor of the bound set,
 * in st_set name order (block-quantized types are skipped for now).  The first non-finite
 * element is MOERT_EFORMAT naming the file, the tensor, the element's coordinates and
 * whether it is NaN or Inf.  Reads every byte: run once at init, when asked (a contract, or
 * --check-weights). */
int model_check_finite(const model_weights *w, moert_err *err);

/* XXH3-64 over the bytes of every bound tensor in st_set name order, with each tensor's
 * name, dtype and shape mixed in: identifies the weights a trace was recorded with.  A
 * redundant tied lm_head.weight is not part of it, so both forms of a tied checkpoint
 * agree.  0 for an unbound model_weights. */
uint64_t model_fingerprint(const model_weights *w);

/* Bytes of weights one decode token reads (attention, router, the top-k experts' FFNs or
 * the dense MLP, norms, one embedding row, the LM head): the roofline numerator.  A sparse
 * layer counts k times the mean bytes of one expert's gate+up+down. */
uint64_t model_active_bytes_per_token(const model_weights *w);

#endif
