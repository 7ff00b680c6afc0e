/* ggufmap: llama.cpp's qwen3moe GGUF convention, mapped onto moert's.  The metadata
 * (qwen3moe.block_count, embedding_length, ...) becomes a cfg_topology; the tensors
 * (token_embd, blk.N.attn_q, blk.N.ffn_up_exps, ...) become an st_set of views with the
 * Hugging Face hub's names, the merged expert tensors sliced into one view per expert, so
 * the GGUF binds to the same schedule through model_bind as a safetensors checkpoint does.
 * Nothing is copied: the views point into the GGUF's read-only mapping.
 *
 * Shapes: ggml's ne[0] is the contiguous dimension, so a GGUF matrix ne {in, out} is the
 * hub's [out, in], and an expert tensor ne {in, out, E} holds expert e as slice e.
 */
#ifndef MOERT_GGUFMAP_H
#define MOERT_GGUFMAP_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "gguf.h"
#include "st.h"

/* Topology from the metadata: general.architecture must be qwen3moe; block_count,
 * embedding_length, attention.head_count, head_count_kv, key_length (= value_length),
 * expert_count, expert_used_count, expert_feed_forward_length, rope.freq_base,
 * attention.layer_norm_rms_epsilon, context_length; vocabulary size from the token list,
 * else from token_embd's shape; tied embeddings when output.weight is absent.  Settings
 * moert does not implement (rope scaling, shared experts, sliding windows, partial rotary
 * dims) are refused by key name.  Checked with cfg_check_topology. */
int ggufmap_topology(const gguf_file *g, cfg_topology *topo, moert_err *err);

/* End-of-generation ids the file names (tokenizer.ggml.eos_token_id, eot_token_id, and
 * eom_token_id when present), distinct, at most cap; *n set. */
int ggufmap_eos_ids(const gguf_file *g, int32_t *ids, int cap, int *n, moert_err *err);

/* Opens `path` (a GGUF), checks every tensor against the topology the metadata gives
 * (missing, unexpected and mis-shaped tensors reported by their GGUF names, all of them),
 * and returns the hub-named view set; the set owns the open file. */
int ggufmap_open_set(const char *path, st_set **out, moert_err *err);

/* Opens a model's weights wherever a weights path is taken: a GGUF file through
 * ggufmap_open_set, anything else (safetensors file, index, directory) through st_open. */
int ggufmap_open_weights(const char *path, st_set **out, moert_err *err);

/* ---- writing ------------------------------------------------------------------------ */

/* Weight type mixes `ggufmap_write` knows, by llama-quantize's names: "f32", "f16", "bf16",
 * "q8_0", "q4_0", "q5_0", "q4_k_m", "q5_k_m", "q6_k".  The K mixes follow llama-quantize's
 * pattern (output and attn_v in Q6_K, ffn_down in Q6_K on the first and last eighth of the
 * layers and every third in between, the rest Q4_K / Q5_K); a row whose length is not a
 * multiple of 256 falls back to Q5_0 (for Q4_K) or Q8_0 (for Q5_K, Q6_K), as llama-quantize
 * falls back.  Norms and the router stay F32, as llama.cpp keeps them. */
bool ggufmap_known_mix(const char *mix);

/* Writes the hub-named weights `src` (bound to `topo`; any plain float dtype) as a qwen3moe
 * GGUF at `path` in the type mix `mix`: llama.cpp's names and metadata, experts merged per
 * layer, general.alignment 32, tokenizer.ggml.model "none" with qwen3moe.vocab_size (no
 * tokenizer).  Quantization uses ops_quantize_row; the file is written atomically. */
int ggufmap_write(const char *path, const cfg_topology *topo, const st_set *src, const char *mix,
                  moert_err *err);

#endif
