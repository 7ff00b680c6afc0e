/* ctr: trace contracts (the YAML files in contracts/).  A contract lists, per trace stage,
 * the tensors a trace holds for it, each with a shape in symbolic dims and a dtype, plus value rules.
 * Loading resolves the symbols against a topology; the trace writer, `moert validate` and
 * init-time plan checking all ask the contract, never hard-code shapes.
 *
 * Symbolic dims: tokens (free: the positions a record covers), hidden_size, vocab_size,
 * num_experts, num_experts_per_tok, head_dim, q_dim (= heads * head_dim),
 * kv_dim (= kv_heads * head_dim), qkv_dim (= q_dim + 2 * kv_dim), moe_intermediate_size,
 * intermediate_size; an integer literal is also a dim.
 */
#ifndef MOERT_CONTRACT_H
#define MOERT_CONTRACT_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "err.h"

#define CTR_MAX_TENSORS 32
#define CTR_MAX_DIMS 4
#define CTR_DIM_FREE (-1) /* the `tokens` dim: any size >= 1 */

/* Value rules (bit flags). */
enum {
    CTR_RULE_FINITE = 1u << 0,        /* no NaN / Inf */
    CTR_RULE_SUM_TO_ONE = 1u << 1,    /* each row sums to 1 within sum_tolerance */
    CTR_RULE_INDEX_RANGE = 1u << 2,   /* integer values in [0, index_limit) */
    CTR_RULE_DISTINCT = 1u << 3,      /* integer values distinct within each row */
    CTR_RULE_NONNEGATIVE = 1u << 4,   /* values >= 0 */
};
#define CTR_N_RULES 5

typedef enum ctr_dtype { CTR_F32 = 0, CTR_I32 = 1 } ctr_dtype;

/* A rule's `when:` condition: it applies only when that topology flag is true. */
typedef enum ctr_when {
    CTR_WHEN_ALWAYS = 0,
    CTR_WHEN_NORM_TOPK_PROB,      /* when: norm_topk_prob */
    CTR_WHEN_TIE_WORD_EMBEDDINGS, /* when: tie_word_embeddings */
} ctr_when;

/* The contract file format (contracts/qwen3moe-trace-v1.yaml is the reference):
 *
 *   contract: qwen3moe-trace          # name (required, < 64 bytes)
 *   version: 1                        # format version (required; only 1 exists)
 *   description: "..."                # optional
 *   tensors:                          # required, 1..CTR_MAX_TENSORS entries
 *     STAGE[.SUFFIX]: {shape: [DIM, ...], dtype: f32|i32, rules: [RULE, ...]}
 *
 * STAGE is a cfg_stage_name; SUFFIX ([a-z0-9_]{1,31}) names a companion tensor of the
 * stage.  DIM is a symbol listed at the top of this file or a positive integer (1..4
 * dims).  RULE is `finite`, `nonnegative` (f32/i32), `distinct` (i32),
 * `sum_to_one` (f32; tolerance 1e-5 unless given), or a one-key mapping giving parameters:
 *   {sum_to_one: {tolerance: 1.0e-5, when: norm_topk_prob}}
 *   {index_range: num_experts}  or  {index_range: {limit: num_experts, when: ...}}  (i32)
 *   {finite: {when: ...}}
 * `when` names a topology flag (norm_topk_prob, tie_word_embeddings); ctr_resolve drops
 * the rule when the flag is false.  Each rule at most once per tensor.
 */

typedef struct ctr_tensor {
    cfg_stage stage;
    char suffix[32];          /* "" for the stage's main tensor ("l3.moe_router"); else a
                                 named companion, e.g. "experts" -> "l3.moe_router.experts" */
    int ndim;
    char dim_names[CTR_MAX_DIMS][40]; /* as written in the contract */
    int64_t dims[CTR_MAX_DIMS];       /* resolved; CTR_DIM_FREE for `tokens` */
    ctr_dtype dtype;
    uint32_t rules;
    double sum_tolerance;     /* for CTR_RULE_SUM_TO_ONE */
    int64_t index_limit;      /* for CTR_RULE_INDEX_RANGE, resolved from a dim name */
    char index_limit_name[40];
    int line;                 /* where it was declared, for messages */
    int col;
    uint32_t declared_rules;  /* as written; `rules` is what applies after ctr_resolve */
    uint8_t rule_when[CTR_N_RULES]; /* per rule bit index: its ctr_when */
} ctr_tensor;

typedef struct ctr_contract {
    char path[CFG_PATH_MAX];
    char name[64];            /* e.g. "qwen3moe-trace" */
    int version;
    int n_tensors;
    ctr_tensor tensors[CTR_MAX_TENSORS];
    bool resolved;
} ctr_contract;

/* Loads and checks a contract YAML: syntax, keys, stage names, dim symbols, dtypes and
 * rules (errors name file:line:col, MOERT_ECONFIG).  Literal dims are filled; symbolic
 * ones stay 0 until ctr_resolve (`tokens` is CTR_DIM_FREE).  `rules` holds every declared
 * rule until ctr_resolve applies the `when:` conditions. */
int ctr_load(const char *path, ctr_contract *out, moert_err *err);
/* The same from text in memory; `name` is used in messages and as out->path. */
int ctr_load_string(const char *yaml, const char *name, ctr_contract *out, moert_err *err);

/* Resolves every symbolic dim and index limit against `topo` and applies `when:`
 * conditions.  A symbol whose value is not positive for this topology (e.g.
 * intermediate_size = 0 in an all-MoE model) is an error naming the tensor's line:col.
 * May be called again with another topology. */
int ctr_resolve(ctr_contract *c, const cfg_topology *topo, moert_err *err);

/* The contract's entry for (stage, suffix), or NULL.  suffix NULL or "" = the main tensor. */
const ctr_tensor *ctr_find(const ctr_contract *c, cfg_stage stage, const char *suffix);

/* Checks one concrete shape/dtype against the resolved contract entry.  On mismatch the
 * message names the stage (`label`, e.g. "l3.moe_router"), expected and actual:
 * "l3.moe_router: expected shape [tokens, num_experts_per_tok] = [*, 8], got [1, 4]"
 * "l3.moe_router.experts: expected dtype i32, got f32"
 * and returns MOERT_ECHECK.  label NULL: the stage name (+ ".suffix") is used.  An entry
 * that was never resolved is MOERT_EUSAGE.  A `tokens` dim accepts any size >= 1. */
int ctr_check_shape(const ctr_tensor *t, const char *label, int ndim, const int64_t *shape,
                    ctr_dtype dtype, moert_err *err);

/* Names as written in contracts: "f32"/"i32"; "finite", "sum_to_one", ... for one rule bit
 * ("?" when unknown). */
const char *ctr_dtype_name(ctr_dtype d);
const char *ctr_rule_name(uint32_t rule_bit);

#endif
