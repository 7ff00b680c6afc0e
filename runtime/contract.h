/* ctr: trace contracts (contracts/*.yaml).  A contract lists, per trace stage, the tensors
 * a trace holds for it, each with a shape in symbolic dims and a dtype, plus value rules.
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

typedef enum ctr_dtype { CTR_F32 = 0, CTR_I32 = 1 } ctr_dtype;

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
} ctr_tensor;

typedef struct ctr_contract {
    char path[CFG_PATH_MAX];
    char name[64];            /* e.g. "qwen3moe-trace" */
    int version;
    int n_tensors;
    ctr_tensor tensors[CTR_MAX_TENSORS];
    bool resolved;
} ctr_contract;

/* Loads and syntax-checks a contract YAML (errors name file:line:col). */
int ctr_load(const char *path, ctr_contract *out, moert_err *err);
int ctr_load_string(const char *yaml, const char *name, ctr_contract *out, moert_err *err);

/* Resolves every symbolic dim against `topo`; unknown symbols are errors. */
int ctr_resolve(ctr_contract *c, const cfg_topology *topo, moert_err *err);

/* The contract's entry for (stage, suffix), or NULL. */
const ctr_tensor *ctr_find(const ctr_contract *c, cfg_stage stage, const char *suffix);

/* Checks one concrete shape/dtype against the resolved contract entry.  On mismatch the
 * message names the stage (`label`, e.g. "l3.moe_router"), expected and actual:
 * "l3.moe_router: expected shape [tokens, num_experts_per_tok] = [*, 8], got [1, 4]". */
int ctr_check_shape(const ctr_tensor *t, const char *label, int ndim, const int64_t *shape,
                    ctr_dtype dtype, moert_err *err);

#endif
