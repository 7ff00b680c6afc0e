/* ctr: the shipped trace contract, symbol resolution against topologies, shape checks and
 * a catalogue of bad contracts with hand-checked file:line:col messages. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <string.h>

#include "../runtime/contract.h"
#include "util.h"

#define SHIPPED "contracts/qwen3moe-trace-v1.yaml"

static ctr_contract ctr;

/* configs/qwen3moe.yaml's topology, written out by hand. */
static cfg_topology default_topo(void)
{
    cfg_topology t;
    memset(&t, 0, sizeof t);
    t.vocab_size = 151936;
    t.hidden_size = 128;
    t.num_hidden_layers = 4;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 2;
    t.head_dim = 48;
    t.num_experts = 16;
    t.num_experts_per_tok = 4;
    t.moe_intermediate_size = 64;
    t.intermediate_size = 256;
    t.decoder_sparse_step = 1;
    t.n_mlp_only_layers = 1;
    t.mlp_only_layers[0] = 0;
    t.norm_topk_prob = true;
    t.tie_word_embeddings = true;
    t.rope_theta = 1e6;
    t.rms_norm_eps = 1e-6;
    return t;
}

static void assert_dims(const ctr_tensor *t, int64_t d1)
{
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL_FATAL(t->ndim, 2);
    CU_ASSERT_EQUAL(t->dims[0], CTR_DIM_FREE);
    CU_ASSERT_STRING_EQUAL(t->dim_names[0], "tokens");
    CU_ASSERT_EQUAL(t->dims[1], d1);
}

static void test_shipped_contract_loads(void)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(ctr_load(SHIPPED, &ctr, &e), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(ctr.name, "qwen3moe-trace");
    CU_ASSERT_STRING_EQUAL(ctr.path, SHIPPED);
    CU_ASSERT_EQUAL(ctr.version, 1);
    CU_ASSERT_EQUAL(ctr.n_tensors, 12);
    CU_ASSERT_FALSE(ctr.resolved);
    /* One main tensor per stage, plus the routed experts' indices. */
    for (int s = 0; s < CFG_STAGE_COUNT; s++) {
        const ctr_tensor *t = ctr_find(&ctr, (cfg_stage)s, NULL);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        CU_ASSERT_EQUAL(t->stage, s);
        CU_ASSERT_STRING_EQUAL(t->suffix, "");
        CU_ASSERT_EQUAL(t->dtype, CTR_F32);
        CU_ASSERT_TRUE(t->rules & CTR_RULE_FINITE);
        CU_ASSERT_PTR_EQUAL(ctr_find(&ctr, (cfg_stage)s, ""), t);
        CU_ASSERT_EQUAL(t->dims[1], 0); /* symbolic, not resolved yet */
    }
    const ctr_tensor *ex = ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "experts");
    CU_ASSERT_PTR_NOT_NULL_FATAL(ex);
    CU_ASSERT_EQUAL(ex->dtype, CTR_I32);
    CU_ASSERT_EQUAL(ex->declared_rules, CTR_RULE_INDEX_RANGE | CTR_RULE_DISTINCT);
    CU_ASSERT_STRING_EQUAL(ex->index_limit_name, "num_experts");
    CU_ASSERT_PTR_NULL(ctr_find(&ctr, CFG_STAGE_EMBED, "experts"));
    CU_ASSERT_PTR_NULL(ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "weights"));
    const ctr_tensor *r = ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, NULL);
    CU_ASSERT_EQUAL(r->declared_rules, CTR_RULE_FINITE | CTR_RULE_NONNEGATIVE | CTR_RULE_SUM_TO_ONE);
    CU_ASSERT_DOUBLE_EQUAL(r->sum_tolerance, 1e-5, 0);
    CU_ASSERT_EQUAL(r->rule_when[1], CTR_WHEN_NORM_TOPK_PROB); /* bit 1 = sum_to_one */
    CU_ASSERT_EQUAL(r->rule_when[0], CTR_WHEN_ALWAYS);
    /* Declared on line 16 of the file (moe_router:, column 3). */
    CU_ASSERT_EQUAL(r->line, 16);
    CU_ASSERT_EQUAL(r->col, 3);
}

static void test_resolve_against_default_topology(void)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(ctr_load(SHIPPED, &ctr, &e), MOERT_OK);
    cfg_topology topo = default_topo();
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);
    CU_ASSERT_TRUE(ctr.resolved);
    assert_dims(ctr_find(&ctr, CFG_STAGE_EMBED, NULL), 128);
    /* q 4*48 = 192, k and v 2*48 = 96 each: 384 (not 3 * hidden). */
    assert_dims(ctr_find(&ctr, CFG_STAGE_QKV, NULL), 384);
    assert_dims(ctr_find(&ctr, CFG_STAGE_ROUTER_LOGITS, NULL), 16);
    assert_dims(ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, NULL), 4);
    assert_dims(ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "experts"), 4);
    assert_dims(ctr_find(&ctr, CFG_STAGE_LOGITS, NULL), 151936);
    assert_dims(ctr_find(&ctr, CFG_STAGE_FINAL_NORM, NULL), 128);
    CU_ASSERT_EQUAL(ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "experts")->index_limit, 16);
    const ctr_tensor *r = ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, NULL);
    CU_ASSERT_EQUAL(r->rules, CTR_RULE_FINITE | CTR_RULE_NONNEGATIVE | CTR_RULE_SUM_TO_ONE);

    /* `when: norm_topk_prob`: without renormalisation the top-k weights do not sum to 1. */
    topo.norm_topk_prob = false;
    topo.num_experts = 128;
    topo.num_experts_per_tok = 8;
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);
    CU_ASSERT_EQUAL(r->rules, CTR_RULE_FINITE | CTR_RULE_NONNEGATIVE);
    CU_ASSERT_EQUAL(r->declared_rules, CTR_RULE_FINITE | CTR_RULE_NONNEGATIVE | CTR_RULE_SUM_TO_ONE);
    assert_dims(r, 8);
    CU_ASSERT_EQUAL(ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "experts")->index_limit, 128);
    topo.norm_topk_prob = true;
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);
    CU_ASSERT_TRUE(r->rules & CTR_RULE_SUM_TO_ONE);
}

static void test_check_shape(void)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(ctr_load(SHIPPED, &ctr, &e), MOERT_OK);
    const ctr_tensor *r = ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, NULL);
    const ctr_tensor *ex = ctr_find(&ctr, CFG_STAGE_MOE_ROUTER, "experts");
    const int64_t ok[2] = {7, 4};
    /* Not resolved yet: a caller bug, not a data problem. */
    CU_ASSERT_EQUAL(ctr_check_shape(r, "l1.moe_router", 2, ok, CTR_F32, &e), MOERT_EUSAGE);
    CU_ASSERT_EQUAL(ctr_check_shape(NULL, "x", 2, ok, CTR_F32, &e), MOERT_EUSAGE);
    cfg_topology topo = default_topo();
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);

    CU_ASSERT_EQUAL(ctr_check_shape(r, "l1.moe_router", 2, ok, CTR_F32, &e), MOERT_OK);
    const int64_t one[2] = {1, 4};
    CU_ASSERT_EQUAL(ctr_check_shape(r, "l1.moe_router", 2, one, CTR_F32, &e), MOERT_OK);
    const int64_t wrong[2] = {1, 8};
    CU_ASSERT_EQUAL(ctr_check_shape(r, "l3.moe_router", 2, wrong, CTR_F32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "l3.moe_router: expected shape [tokens, num_experts_per_tok] = [*, 4], got [1, 8]");
    const int64_t no_tokens[2] = {0, 4};
    CU_ASSERT_EQUAL(ctr_check_shape(r, "l3.moe_router", 2, no_tokens, CTR_F32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "l3.moe_router: expected shape [tokens, num_experts_per_tok] = [*, 4], got [0, 4]");
    const int64_t flat[1] = {4};
    CU_ASSERT_EQUAL(ctr_check_shape(r, "l3.moe_router", 1, flat, CTR_F32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "l3.moe_router: expected shape [tokens, num_experts_per_tok] = [*, 4], got [4]");
    CU_ASSERT_EQUAL(ctr_check_shape(ex, "l3.moe_router.experts", 2, ok, CTR_F32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "l3.moe_router.experts: expected dtype i32, got f32");
    CU_ASSERT_EQUAL(ctr_check_shape(ex, NULL, 2, wrong, CTR_I32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "moe_router.experts: expected shape [tokens, num_experts_per_tok] = [*, 4], got [1, 8]");
    const ctr_tensor *qkv = ctr_find(&ctr, CFG_STAGE_QKV, NULL);
    const int64_t q3h[2] = {5, 3 * 128};
    CU_ASSERT_EQUAL(ctr_check_shape(qkv, "l0.qkv", 2, q3h, CTR_F32, &e), MOERT_OK); /* 384 = 3 * 128 here */
    const int64_t q[2] = {5, 192};
    CU_ASSERT_EQUAL(ctr_check_shape(qkv, "l0.qkv", 2, q, CTR_F32, &e), MOERT_ECHECK);
    CU_ASSERT_STRING_EQUAL(e.msg, "l0.qkv: expected shape [tokens, qkv_dim] = [*, 384], got [5, 192]");
}

static void test_rule_forms_and_literals(void)
{
    static const char yaml[] =
        "contract: forms\nversion: 1\ndescription: all the rule spellings\ntensors:\n"
        "  logits:  {shape: [tokens, 3, head_dim], dtype: f32, rules: [sum_to_one, {finite: {when: tie_word_embeddings}}]}\n"
        "  embed.ids: {shape: [tokens], dtype: i32, rules: [{index_range: {limit: 7, when: norm_topk_prob}}, nonnegative]}\n"
        "  embed.kv: {shape: [kv_dim, q_dim, moe_intermediate_size, intermediate_size], dtype: f32}\n";
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(ctr_load_string(yaml, "forms.yaml", &ctr, &e), MOERT_OK);
    CU_ASSERT_EQUAL(ctr.n_tensors, 3);
    const ctr_tensor *lg = ctr_find(&ctr, CFG_STAGE_LOGITS, NULL);
    CU_ASSERT_EQUAL(lg->dims[1], 3); /* a literal is known before resolve */
    CU_ASSERT_DOUBLE_EQUAL(lg->sum_tolerance, 1e-5, 0);
    cfg_topology topo = default_topo();
    topo.tie_word_embeddings = false;
    topo.norm_topk_prob = false;
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);
    CU_ASSERT_EQUAL(lg->rules, CTR_RULE_SUM_TO_ONE);
    CU_ASSERT_EQUAL(lg->dims[2], 48);
    const ctr_tensor *ids = ctr_find(&ctr, CFG_STAGE_EMBED, "ids");
    CU_ASSERT_EQUAL(ids->rules, CTR_RULE_NONNEGATIVE);
    CU_ASSERT_EQUAL(ids->index_limit, 7);
    const ctr_tensor *kv = ctr_find(&ctr, CFG_STAGE_EMBED, "kv");
    CU_ASSERT_EQUAL(kv->dims[0], 96);
    CU_ASSERT_EQUAL(kv->dims[1], 192);
    CU_ASSERT_EQUAL(kv->dims[2], 64);
    CU_ASSERT_EQUAL(kv->dims[3], 256);
    topo.tie_word_embeddings = true;
    topo.norm_topk_prob = true;
    CU_ASSERT_EQUAL_FATAL(ctr_resolve(&ctr, &topo, &e), MOERT_OK);
    CU_ASSERT_EQUAL(lg->rules, CTR_RULE_SUM_TO_ONE | CTR_RULE_FINITE);
    CU_ASSERT_EQUAL(ids->rules, CTR_RULE_NONNEGATIVE | CTR_RULE_INDEX_RANGE);
    /* A dim that is 0 for this topology (an all-MoE model has no dense width). */
    topo.intermediate_size = 0;
    topo.n_mlp_only_layers = 0;
    CU_ASSERT_EQUAL(ctr_resolve(&ctr, &topo, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "forms.yaml:7:3: embed.kv: dim 'intermediate_size' is 0 for this topology, "
                                  "expected a positive size");
    CU_ASSERT_FALSE(ctr.resolved);
    /* An unchecked topology cannot make resolve overflow (q_dim = heads * head_dim). */
    topo = default_topo();
    topo.num_attention_heads = INT64_MAX / 2;
    CU_ASSERT_EQUAL(ctr_resolve(&ctr, &topo, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "forms.yaml:7:3: embed.kv: dim 'q_dim' overflows int64 for this topology, "
                                  "expected a checked topology (cfg_check_topology)");
    CU_ASSERT_STRING_EQUAL(ctr_rule_name(CTR_RULE_DISTINCT), "distinct");
    CU_ASSERT_STRING_EQUAL(ctr_rule_name(3), "?");
    CU_ASSERT_STRING_EQUAL(ctr_dtype_name(CTR_I32), "i32");
}

#define H "contract: t\nversion: 1\ntensors:\n"
static const struct {
    const char *yaml;
    const char *expect; /* substring, after "bad.yaml" */
} bad_contracts[] = {
    {H "  attention: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":4:3: unknown stage 'attention' in tensor key 'attention', expected one of: embed, attn_norm, qkv,"},
    {H "  embed: {shape: [tokens, hiden_size], dtype: f32}\n",
     ":4:27: embed.shape[1]: unknown dim symbol 'hiden_size', expected one of: tokens, hidden_size,"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f16}\n",
     ":4:48: embed.dtype: got the string \"f16\", expected one of: f32, i32"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f32, rules: [finite, positive]}\n",
     ":4:69: embed.rules[1]: unknown rule 'positive', expected one of: finite, sum_to_one, index_range, distinct, nonnegative"},
    {"contract: t\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":1:1: the contract is missing required key 'version', expected version: 1"},
    {"contract: t\nversion: 2\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":2:10: version = 2 is not supported, expected 1"},
    {"contract: t\nversion: 1.0\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":2:10: version: got 1.0, expected an integer"},
    {"version: 1\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":1:1: the contract is missing required key 'contract', expected contract: NAME"},
    {"contract: \"\"\nversion: 1\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":1:11: contract: got an empty name, expected a name"},
    {"contract: t\nversion: 1\n", ":1:1: the contract is missing required key 'tensors', expected a mapping"},
    {"contract: t\nversion: 1\nowner: me\ntensors:\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":3:1: unknown key 'owner' in the contract, expected one of: contract, version, description, tensors"},
    {H "  {}\n", ":4:3: tensors has 0 entries, expected 1 to 32"},
    {H "  embed: [tokens, hidden_size]\n", ":4:10: tensor 'embed' is a list, expected a mapping"},
    {H "  embed: {shap: [tokens, hidden_size], dtype: f32}\n",
     ":4:11: unknown key 'shap' in tensor 'embed', expected one of: shape, dtype, rules"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f32}\n  embed: {shape: [tokens, hidden_size], dtype: f32}\n",
     ":5:3: duplicate key 'embed' in tensors (first given at 4:3), expected each key once"},
    {H "  moe_router.Experts: {shape: [tokens, num_experts_per_tok], dtype: i32}\n",
     ":4:3: tensor key 'moe_router.Experts' has a bad suffix 'Experts', expected STAGE.SUFFIX"},
    {H "  embed.: {shape: [tokens, hidden_size], dtype: f32}\n", ":4:3: tensor key 'embed.' has a bad suffix ''"},
    {H "  embed: {shape: [tokens, hidden_size]}\n",
     ":4:10: tensor 'embed' is missing required key 'dtype', expected f32 or i32"},
    {H "  embed: {dtype: f32}\n", ":4:10: tensor 'embed' is missing required key 'shape', expected a list of dims"},
    {H "  embed: {shape: tokens, dtype: f32}\n",
     ":4:18: embed.shape: got the string \"tokens\", expected a list of 1 to 4 dims"},
    {H "  embed: {shape: [], dtype: f32}\n", ":4:18: embed.shape: got a list that is empty, expected a list of 1 to 4"},
    {H "  embed: {shape: [1, 2, 3, 4, 5], dtype: f32}\n",
     ":4:18: embed.shape: got a list that is too long, expected a list of 1 to 4 dims"},
    {H "  embed: {shape: [tokens, 0], dtype: f32}\n",
     ":4:27: embed.shape[1] = 0, expected a positive integer or a dim symbol"},
    {H "  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [{index_range: tokens}]}\n",
     ":4:96: moe_router.experts.rules[0].index_range limit: unknown dim symbol 'tokens', expected one of: hidden_size,"},
    {H "  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [index_range]}\n",
     ":4:82: moe_router.experts.rules[0]: index_range needs a limit, expected {index_range: DIM}"},
    {H "  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [{index_range: {when: norm_topk_prob}}]}\n",
     ":4:96: moe_router.experts.rules[0].index_range is missing required key 'limit', expected a dim"},
    {H "  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32, rules: [{index_range: num_experts}]}\n",
     ":4:75: moe_router.rules[0]: rule 'index_range' does not apply to dtype f32, expected dtype i32"},
    {H "  moe_router.experts: {shape: [tokens, num_experts_per_tok], dtype: i32, rules: [sum_to_one]}\n",
     ":4:82: moe_router.experts.rules[0]: rule 'sum_to_one' does not apply to dtype i32, expected dtype f32"},
    {H "  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32, rules: [finite, finite]}\n",
     ":4:82: moe_router.rules[1]: rule 'finite' is given twice, expected each rule once"},
    {H "  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32, rules: [{sum_to_one: {when: norm_topk}}]}\n",
     ":4:94: moe_router.rules[0].sum_to_one.when: got the string \"norm_topk\", expected a topology flag: norm_topk_prob, tie_word_embeddings"},
    {H "  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32, rules: [{sum_to_one: {tolerance: 2}}]}\n",
     ":4:99: moe_router.rules[0].sum_to_one.tolerance = 2, expected a number in (0, 1)"},
    {H "  moe_router: {shape: [tokens, num_experts_per_tok], dtype: f32, rules: [{sum_to_one: {tol: 0.1}}]}\n",
     ":4:88: unknown key 'tol' in moe_router.rules[0].sum_to_one, expected one of: tolerance, when"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f32, rules: [{finite: {}, distinct: {}}]}\n",
     ":4:61: embed.rules[0] is a mapping with 2 keys, expected one key: {RULE: PARAMETERS}"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f32, rules: finite}\n",
     ":4:60: embed.rules: got the string \"finite\", expected a list of rules"},
    {H "  embed: {shape: [tokens, hidden_size], dtype: f32\n",
     ":5:1: YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping at 4:10)"},
    {"", ":1:1: the document is empty, expected a contract mapping"},
    {H "  embed: {shape: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[tokens]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
       "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], dtype: f32}\n",
     ":4:79: lists and mappings nest more than 64 deep here, expected at most 64 levels"},
    {"contract: t\nversion: 1\ntensors: [embed, embed]\n", ":3:10: tensors is a list, expected a mapping"},
    {"contract: t\nversion: &v 1\ntensors:\n  embed: {shape: [*w], dtype: f32}\n",
     ":4:19: YAML syntax error: found undefined alias, expected well-formed YAML"},
    {"- 1\n- 2\n", ":1:1: the contract is a list, expected a mapping"},
};
#undef H

static void test_bad_contract_catalogue(void)
{
    size_t n = sizeof bad_contracts / sizeof bad_contracts[0];
    CU_ASSERT_TRUE(n >= 25);
    for (size_t i = 0; i < n; i++) {
        moert_err e = {0};
        char want[400];
        snprintf(want, sizeof want, "bad.yaml%s", bad_contracts[i].expect);
        CU_ASSERT_EQUAL(ctr_load_string(bad_contracts[i].yaml, "bad.yaml", &ctr, &e), MOERT_ECONFIG);
        if (strncmp(e.msg, want, strlen(want)) != 0) {
            printf("\n  case %zu\n    want: %s\n    got:  %s\n", i, want, e.msg);
            CU_FAIL("bad contract message");
        }
    }
    /* More tensors than a contract can hold. */
    static char big[8192];
    size_t used = (size_t)snprintf(big, sizeof big, "contract: t\nversion: 1\ntensors:\n");
    for (int i = 0; i <= CTR_MAX_TENSORS; i++)
        used += (size_t)snprintf(big + used, sizeof big - used, "  embed.t%d: {shape: [tokens], dtype: f32}\n", i);
    moert_err e = {0};
    CU_ASSERT_EQUAL(ctr_load_string(big, "big.yaml", &ctr, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "big.yaml:4:3: tensors has 33 entries, expected 1 to 32");
    /* 50,000 tensors (the duplicate-key check is quadratic: the count is refused first) */
    static char huge[1 << 20];
    used = (size_t)snprintf(huge, sizeof huge, "contract: t\nversion: 1\ntensors:\n");
    for (int i = 0; i < 50000; i++)
        used += (size_t)snprintf(huge + used, sizeof huge - used, "  e%d: 0\n", i);
    used += (size_t)snprintf(huge + used, sizeof huge - used, "  e0: 0\n");
    CU_ASSERT_EQUAL(ctr_load_string(huge, "huge.yaml", &ctr, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "huge.yaml:4:3: tensors has 50001 entries, expected 1 to 32");
    /* 100,000 nested lists (200 KB): once minutes inside libyaml, now the 65th level is named */
    static char deep[210000];
    size_t k = 0;
    for (int i = 0; i < 100000; i++)
        deep[k++] = '[';
    for (int i = 0; i < 100000; i++)
        deep[k++] = ']';
    deep[k] = '\0';
    CU_ASSERT_EQUAL(ctr_load_string(deep, "deep.yaml", &ctr, &e), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "deep.yaml:1:65: lists and mappings nest more than 64 deep here, expected at most 64 levels");
    CU_ASSERT_EQUAL(ctr_load("contracts/no-such.yaml", &ctr, &e), MOERT_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "contracts/no-such.yaml: cannot open"));
}

/* Every prefix of the shipped contract either loads or fails with a positioned message. */
static void test_truncations_never_crash(void)
{
    FILE *f = fopen(SHIPPED, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char text[8192], cut[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    size_t step = test_sanitized() ? 5 : 1;
    int bad = 0;
    for (size_t len = 0; len <= n; len += step) {
        memcpy(cut, text, len);
        cut[len] = '\0';
        moert_err e = {0};
        if (ctr_load_string(cut, "cut.yaml", &ctr, &e) != MOERT_OK) {
            bad++;
            CU_ASSERT_EQUAL(strncmp(e.msg, "cut.yaml:", 9), 0);
        }
    }
    CU_ASSERT_TRUE(bad > 0);
}

void suite_contract(void)
{
    CU_pSuite s = CU_add_suite("contract", NULL, NULL);
    CU_add_test(s, "shipped contract loads", test_shipped_contract_loads);
    CU_add_test(s, "resolve against the default topology", test_resolve_against_default_topology);
    CU_add_test(s, "ctr_check_shape", test_check_shape);
    CU_add_test(s, "rule forms, literals, when", test_rule_forms_and_literals);
    CU_add_test(s, "bad contract catalogue", test_bad_contract_catalogue);
    CU_add_test(s, "truncated contracts never crash", test_truncations_never_crash);
}
