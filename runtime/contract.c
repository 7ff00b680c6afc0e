#include "contract.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "yamldoc.h"

#define DEFAULT_SUM_TOLERANCE 1.0e-5

/* The dim symbols of contract.h, in its order. */
enum { SYM_TOKENS, SYM_HIDDEN, SYM_VOCAB, SYM_EXPERTS, SYM_TOPK, SYM_HEAD_DIM, SYM_Q_DIM,
       SYM_KV_DIM, SYM_QKV_DIM, SYM_MOE_INTER, SYM_INTER, SYM_COUNT };
static const char *const dim_syms[SYM_COUNT + 1] = {
    "tokens", "hidden_size", "vocab_size", "num_experts", "num_experts_per_tok", "head_dim",
    "q_dim", "kv_dim", "qkv_dim", "moe_intermediate_size", "intermediate_size", NULL,
};

static const char *const rule_names[CTR_N_RULES + 1] = {
    "finite", "sum_to_one", "index_range", "distinct", "nonnegative", NULL, /* bit order */
};

static const char *const when_names[] = {"always", "norm_topk_prob", "tie_word_embeddings", NULL};

const char *ctr_dtype_name(ctr_dtype d)
{
    return d == CTR_F32 ? "f32" : d == CTR_I32 ? "i32" : "?";
}

const char *ctr_rule_name(uint32_t rule_bit)
{
    for (int i = 0; i < CTR_N_RULES; i++)
        if (rule_bit == (1u << i))
            return rule_names[i];
    return "?";
}

static int sym_index(const char *s)
{
    for (int i = 0; i < SYM_COUNT; i++)
        if (!strcmp(dim_syms[i], s))
            return i;
    return -1;
}

#define SYM_OVERFLOW (-2)

/* A symbol's value for topology t; SYM_OVERFLOW when a derived dim does not fit (the
 * topology was never checked: ctr_resolve must not trust it). */
static int64_t sym_value(int sym, const cfg_topology *t)
{
    int64_t q = 0, kv = 0, qkv = 0;
    bool q_ovf = __builtin_mul_overflow(t->num_attention_heads, t->head_dim, &q);
    bool kv_ovf = __builtin_mul_overflow(t->num_key_value_heads, t->head_dim, &kv);
    bool qkv_ovf = q_ovf || kv_ovf || __builtin_mul_overflow(kv, (int64_t)2, &qkv) ||
                   __builtin_add_overflow(qkv, q, &qkv);
    if ((sym == SYM_Q_DIM && q_ovf) || (sym == SYM_KV_DIM && kv_ovf) || (sym == SYM_QKV_DIM && qkv_ovf))
        return SYM_OVERFLOW;
    switch (sym) {
    case SYM_TOKENS: return CTR_DIM_FREE;
    case SYM_HIDDEN: return t->hidden_size;
    case SYM_VOCAB: return t->vocab_size;
    case SYM_EXPERTS: return t->num_experts;
    case SYM_TOPK: return t->num_experts_per_tok;
    case SYM_HEAD_DIM: return t->head_dim;
    case SYM_Q_DIM: return q;
    case SYM_KV_DIM: return kv;
    case SYM_QKV_DIM: return qkv;
    case SYM_MOE_INTER: return t->moe_intermediate_size;
    case SYM_INTER: return t->intermediate_size;
    default: return 0;
    }
}

static void join_names(const char *const *names, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; names[i] && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", names[i]);
}

static void stage_list(char *buf, size_t cap)
{
    const char *names[CFG_STAGE_COUNT + 1];
    for (int i = 0; i < CFG_STAGE_COUNT; i++)
        names[i] = cfg_stage_name((cfg_stage)i);
    names[CFG_STAGE_COUNT] = NULL;
    join_names(names, buf, cap);
}

static bool valid_suffix(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 31)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
            return false;
    return true;
}

static int parse_key(yamldoc *d, yaml_node_t *k, ctr_tensor *t, moert_err *err)
{
    const char *key = yamldoc_text(k);
    char stage[64];
    const char *dot = strchr(key, '.');
    size_t sl = dot ? (size_t)(dot - key) : strlen(key);
    char list[300];
    stage_list(list, sizeof list);
    if (sl >= sizeof stage)
        return yamldoc_errf(d, k, err, MOERT_ECONFIG, "tensor key '%.60s...' has an unknown stage, expected one of: %s",
                            key, list);
    memcpy(stage, key, sl);
    stage[sl] = '\0';
    int st = cfg_stage_from_name(stage);
    if (st < 0)
        return yamldoc_errf(d, k, err, MOERT_ECONFIG, "unknown stage '%s' in tensor key '%.80s', expected one of: %s",
                            stage, key, list);
    t->stage = (cfg_stage)st;
    t->suffix[0] = '\0';
    if (dot) {
        if (!valid_suffix(dot + 1))
            return yamldoc_errf(d, k, err, MOERT_ECONFIG,
                                "tensor key '%.80s' has a bad suffix '%.40s', expected STAGE.SUFFIX with SUFFIX of "
                                "1-31 characters [a-z0-9_]",
                                key, dot + 1);
        snprintf(t->suffix, sizeof t->suffix, "%s", dot + 1);
    }
    return MOERT_OK;
}

/* A dim: a positive integer literal or a symbol (`tokens` only when allow_tokens). */
static int parse_dim(yamldoc *d, yaml_node_t *n, const char *what, bool allow_tokens, char *name,
                     size_t name_cap, int64_t *value, moert_err *err)
{
    char got[100], list[300];
    const char *s = yamldoc_text(n);
    join_names(allow_tokens ? dim_syms : dim_syms + 1, list, sizeof list);
    if (!s || yamldoc_is_null(n))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected a dim symbol (%s) or a positive integer",
                            what, yamldoc_describe(n, got, sizeof got), list);
    if ((s[0] >= '0' && s[0] <= '9') || s[0] == '-' || s[0] == '+') {
        int64_t v;
        int rc = yamldoc_int(d, n, what, &v, err);
        if (rc)
            return rc;
        if (v < 1 || v > INT64_C(2147483647))
            return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s = %lld, expected a positive integer or a dim symbol",
                                what, (long long)v);
        snprintf(name, name_cap, "%lld", (long long)v);
        *value = v;
        return MOERT_OK;
    }
    int sym = sym_index(s);
    if (sym < 0 || (sym == SYM_TOKENS && !allow_tokens))
        return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: unknown dim symbol '%.60s', expected one of: %s, or a "
                            "positive integer", what, s, list);
    snprintf(name, name_cap, "%s", s);
    *value = sym == SYM_TOKENS ? CTR_DIM_FREE : 0; /* 0: filled by ctr_resolve */
    return MOERT_OK;
}

static int parse_when(yamldoc *d, yaml_node_t *n, const char *what, uint8_t *out, moert_err *err)
{
    char got[100], list[120];
    join_names(when_names + 1, list, sizeof list);
    if (yamldoc_is_scalar(n) && !yamldoc_is_null(n))
        for (int i = 1; when_names[i]; i++)
            if (!strcmp(when_names[i], yamldoc_text(n))) {
                *out = (uint8_t)i;
                return MOERT_OK;
            }
    return yamldoc_errf(d, n, err, MOERT_ECONFIG, "%s: got %s, expected a topology flag: %s", what,
                        yamldoc_describe(n, got, sizeof got), list);
}

static int parse_rule(yamldoc *d, yaml_node_t *item, const char *tname, int idx, ctr_tensor *t,
                      moert_err *err)
{
    char what[120], got[100], list[200];
    join_names(rule_names, list, sizeof list);
    snprintf(what, sizeof what, "%s.rules[%d]", tname, idx);
    yaml_node_t *name_node = item, *params = NULL;
    if (yamldoc_is_map(item)) {
        if (yamldoc_map_len(item) != 1)
            return yamldoc_errf(d, item, err, MOERT_ECONFIG,
                                "%s is a mapping with %d keys, expected one key: {RULE: PARAMETERS}", what,
                                yamldoc_map_len(item));
        name_node = yamldoc_map_key(d, item, 0);
        params = yamldoc_map_value(d, item, 0);
    }
    if (!yamldoc_is_scalar(name_node) || yamldoc_is_null(name_node))
        return yamldoc_errf(d, name_node, err, MOERT_ECONFIG, "%s: got %s, expected a rule: %s", what,
                            yamldoc_describe(name_node, got, sizeof got), list);
    int r = -1;
    for (int i = 0; i < CTR_N_RULES; i++)
        if (!strcmp(rule_names[i], yamldoc_text(name_node)))
            r = i;
    if (r < 0)
        return yamldoc_errf(d, name_node, err, MOERT_ECONFIG, "%s: unknown rule '%.60s', expected one of: %s", what,
                            yamldoc_text(name_node), list);
    uint32_t bit = 1u << r;
    if (t->declared_rules & bit)
        return yamldoc_errf(d, name_node, err, MOERT_ECONFIG, "%s: rule '%s' is given twice, expected each rule once",
                            what, rule_names[r]);
    /* Which dtype a rule makes sense for: a rule that can never fire is a contract bug. */
    bool want_i32 = bit == CTR_RULE_INDEX_RANGE || bit == CTR_RULE_DISTINCT;
    bool want_f32 = bit == CTR_RULE_FINITE || bit == CTR_RULE_SUM_TO_ONE;
    if ((want_i32 && t->dtype != CTR_I32) || (want_f32 && t->dtype != CTR_F32))
        return yamldoc_errf(d, name_node, err, MOERT_ECONFIG, "%s: rule '%s' does not apply to dtype %s, expected "
                            "dtype %s", what, rule_names[r], ctr_dtype_name(t->dtype), want_i32 ? "i32" : "f32");
    int rc;
    char sub[160];
    yaml_node_t *when = NULL;
    if (bit == CTR_RULE_INDEX_RANGE) {
        yaml_node_t *limit = params;
        if (!params || yamldoc_is_null(params))
            return yamldoc_errf(d, name_node, err, MOERT_ECONFIG,
                                "%s: index_range needs a limit, expected {index_range: DIM} or {index_range: {limit: DIM}}",
                                what);
        if (yamldoc_is_map(params)) {
            static const char *const keys[] = {"limit", "when", NULL};
            snprintf(sub, sizeof sub, "%s.index_range", what);
            if ((rc = yamldoc_check_map(d, params, sub, keys, err)))
                return rc;
            limit = yamldoc_get(d, params, "limit");
            when = yamldoc_get(d, params, "when");
            if (!limit)
                return yamldoc_errf(d, params, err, MOERT_ECONFIG, "%s is missing required key 'limit', expected a dim",
                                    sub);
        }
        snprintf(sub, sizeof sub, "%s.index_range limit", what);
        if ((rc = parse_dim(d, limit, sub, false, t->index_limit_name, sizeof t->index_limit_name, &t->index_limit,
                            err)))
            return rc;
    } else if (params && !yamldoc_is_null(params)) {
        static const char *const sum_keys[] = {"tolerance", "when", NULL};
        static const char *const plain_keys[] = {"when", NULL};
        snprintf(sub, sizeof sub, "%s.%s", what, rule_names[r]);
        if ((rc = yamldoc_check_map(d, params, sub, bit == CTR_RULE_SUM_TO_ONE ? sum_keys : plain_keys, err)))
            return rc;
        when = yamldoc_get(d, params, "when");
        yaml_node_t *tol = yamldoc_get(d, params, "tolerance");
        if (tol) {
            snprintf(sub, sizeof sub, "%s.sum_to_one.tolerance", what);
            if ((rc = yamldoc_double(d, tol, sub, &t->sum_tolerance, err)))
                return rc;
            if (!(t->sum_tolerance > 0 && t->sum_tolerance < 1))
                return yamldoc_errf(d, tol, err, MOERT_ECONFIG, "%s = %g, expected a number in (0, 1)", sub,
                                    t->sum_tolerance);
        }
    }
    if (when) {
        snprintf(sub, sizeof sub, "%s.%s.when", what, rule_names[r]);
        if ((rc = parse_when(d, when, sub, &t->rule_when[r], err)))
            return rc;
    }
    t->declared_rules |= bit;
    return MOERT_OK;
}

static int parse_tensor(yamldoc *d, yaml_node_t *k, yaml_node_t *v, ctr_tensor *t, moert_err *err)
{
    memset(t, 0, sizeof *t);
    t->line = yamldoc_line(k);
    t->col = yamldoc_col(k);
    t->sum_tolerance = DEFAULT_SUM_TOLERANCE;
    int rc = parse_key(d, k, t, err);
    if (rc)
        return rc;
    const char *tname = yamldoc_text(k);
    char what[120], got[100];
    snprintf(what, sizeof what, "tensor '%.80s'", tname);
    static const char *const keys[] = {"shape", "dtype", "rules", NULL};
    if ((rc = yamldoc_check_map(d, v, what, keys, err)))
        return rc;
    yaml_node_t *shape = yamldoc_get(d, v, "shape"), *dt = yamldoc_get(d, v, "dtype");
    yaml_node_t *rules = yamldoc_get(d, v, "rules");
    if (!shape)
        return yamldoc_errf(d, v, err, MOERT_ECONFIG, "%s is missing required key 'shape', expected a list of dims",
                            what);
    if (!dt)
        return yamldoc_errf(d, v, err, MOERT_ECONFIG, "%s is missing required key 'dtype', expected f32 or i32", what);
    if (!yamldoc_is_seq(shape) || yamldoc_seq_len(shape) < 1 || yamldoc_seq_len(shape) > CTR_MAX_DIMS)
        return yamldoc_errf(d, shape, err, MOERT_ECONFIG, "%s.shape: got %s%s, expected a list of 1 to %d dims", tname,
                            yamldoc_describe(shape, got, sizeof got),
                            yamldoc_is_seq(shape) ? (yamldoc_seq_len(shape) ? " that is too long" : " that is empty") : "",
                            CTR_MAX_DIMS);
    t->ndim = yamldoc_seq_len(shape);
    for (int i = 0; i < t->ndim; i++) {
        char dw[140];
        snprintf(dw, sizeof dw, "%.80s.shape[%d]", tname, i);
        if ((rc = parse_dim(d, yamldoc_seq_item(d, shape, i), dw, true, t->dim_names[i], sizeof t->dim_names[i],
                            &t->dims[i], err)))
            return rc;
    }
    const char *ds = yamldoc_is_scalar(dt) ? yamldoc_text(dt) : NULL;
    if (ds && !strcmp(ds, "f32"))
        t->dtype = CTR_F32;
    else if (ds && !strcmp(ds, "i32"))
        t->dtype = CTR_I32;
    else
        return yamldoc_errf(d, dt, err, MOERT_ECONFIG, "%.80s.dtype: got %s, expected one of: f32, i32", tname,
                            yamldoc_describe(dt, got, sizeof got));
    if (rules) {
        if (!yamldoc_is_seq(rules))
            return yamldoc_errf(d, rules, err, MOERT_ECONFIG, "%.80s.rules: got %s, expected a list of rules", tname,
                                yamldoc_describe(rules, got, sizeof got));
        for (int i = 0; i < yamldoc_seq_len(rules); i++)
            if ((rc = parse_rule(d, yamldoc_seq_item(d, rules, i), tname, i, t, err)))
                return rc;
    }
    t->rules = t->declared_rules;
    return MOERT_OK;
}

static int load_doc(yamldoc *d, ctr_contract *out, moert_err *err)
{
    yaml_node_t *root = yamldoc_root(d);
    if (!root)
        return err_set(err, MOERT_ECONFIG, "%s:1:1: the document is empty, expected a contract mapping", d->name);
    static const char *const keys[] = {"contract", "version", "description", "tensors", NULL};
    int rc = yamldoc_check_map(d, root, "the contract", keys, err);
    if (rc)
        return rc;
    yaml_node_t *name = yamldoc_get(d, root, "contract"), *ver = yamldoc_get(d, root, "version");
    yaml_node_t *desc = yamldoc_get(d, root, "description"), *tens = yamldoc_get(d, root, "tensors");
    if (!name)
        return yamldoc_errf(d, root, err, MOERT_ECONFIG,
                            "the contract is missing required key 'contract', expected contract: NAME");
    if (!ver)
        return yamldoc_errf(d, root, err, MOERT_ECONFIG, "the contract is missing required key 'version', expected version: 1");
    if (!tens)
        return yamldoc_errf(d, root, err, MOERT_ECONFIG,
                            "the contract is missing required key 'tensors', expected a mapping of stage tensors");
    if ((rc = yamldoc_str(d, name, "contract", out->name, sizeof out->name, err)))
        return rc;
    if (!out->name[0])
        return yamldoc_errf(d, name, err, MOERT_ECONFIG, "contract: got an empty name, expected a name");
    char got[100];
    if (desc && (!yamldoc_is_scalar(desc) || yamldoc_is_null(desc)))
        return yamldoc_errf(d, desc, err, MOERT_ECONFIG, "description: got %s, expected a string",
                            yamldoc_describe(desc, got, sizeof got));
    int64_t v;
    if ((rc = yamldoc_int(d, ver, "version", &v, err)))
        return rc;
    if (v != 1)
        return yamldoc_errf(d, ver, err, MOERT_ECONFIG, "version = %lld is not supported, expected 1", (long long)v);
    out->version = 1;
    int n = yamldoc_map_len(tens);
    /* the count first: the duplicate-key check is quadratic in it */
    if (yamldoc_is_map(tens) && (n < 1 || n > CTR_MAX_TENSORS))
        return yamldoc_errf(d, tens, err, MOERT_ECONFIG, "tensors has %d entries, expected 1 to %d", n, CTR_MAX_TENSORS);
    if ((rc = yamldoc_check_map(d, tens, "tensors", NULL, err)))
        return rc;
    for (int i = 0; i < n; i++) {
        if ((rc = parse_tensor(d, yamldoc_map_key(d, tens, i), yamldoc_map_value(d, tens, i), &out->tensors[i], err)))
            return rc;
        out->n_tensors = i + 1;
    }
    return MOERT_OK;
}

int ctr_load_string(const char *yaml, const char *name, ctr_contract *out, moert_err *err)
{
    if (!yaml || !out)
        return err_set(err, MOERT_EUSAGE, "ctr_load_string: missing argument");
    memset(out, 0, sizeof *out);
    if (!name)
        name = "<contract>";
    snprintf(out->path, sizeof out->path, "%s", name);
    yamldoc d;
    int rc = yamldoc_load_string(&d, yaml, strlen(yaml), name, err);
    if (rc)
        return rc;
    rc = load_doc(&d, out, err);
    yamldoc_free(&d);
    return rc;
}

int ctr_load(const char *path, ctr_contract *out, moert_err *err)
{
    if (!path || !out)
        return err_set(err, MOERT_EUSAGE, "ctr_load: missing argument");
    memset(out, 0, sizeof *out);
    snprintf(out->path, sizeof out->path, "%s", path);
    yamldoc d;
    int rc = yamldoc_load_file(&d, path, err);
    if (rc)
        return rc;
    rc = load_doc(&d, out, err);
    yamldoc_free(&d);
    return rc;
}

static void tensor_label(const ctr_tensor *t, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s%s", cfg_stage_name(t->stage), t->suffix[0] ? "." : "", t->suffix);
}

int ctr_resolve(ctr_contract *c, const cfg_topology *topo, moert_err *err)
{
    if (!c || !topo)
        return err_set(err, MOERT_EUSAGE, "ctr_resolve: missing argument");
    c->resolved = false;
    for (int i = 0; i < c->n_tensors; i++) {
        ctr_tensor *t = &c->tensors[i];
        char label[80];
        tensor_label(t, label, sizeof label);
        for (int k = 0; k < t->ndim; k++) {
            int sym = sym_index(t->dim_names[k]);
            if (sym < 0)
                continue; /* a literal, filled at load */
            int64_t v = sym_value(sym, topo);
            if (sym != SYM_TOKENS && v == SYM_OVERFLOW)
                return err_set(err, MOERT_ECONFIG,
                               "%s:%d:%d: %s: dim '%s' overflows int64 for this topology, expected a checked "
                               "topology (cfg_check_topology)",
                               c->path, t->line, t->col, label, t->dim_names[k]);
            if (sym != SYM_TOKENS && v < 1)
                return err_set(err, MOERT_ECONFIG,
                               "%s:%d:%d: %s: dim '%s' is %lld for this topology, expected a positive size",
                               c->path, t->line, t->col, label, t->dim_names[k], (long long)v);
            t->dims[k] = v;
        }
        if (t->declared_rules & CTR_RULE_INDEX_RANGE) {
            int sym = sym_index(t->index_limit_name);
            if (sym >= 0) {
                int64_t v = sym_value(sym, topo);
                if (v < 1)
                    return err_set(err, MOERT_ECONFIG,
                                   "%s:%d:%d: %s: index_range limit '%s' is %lld for this topology, expected a "
                                   "positive size",
                                   c->path, t->line, t->col, label, t->index_limit_name, (long long)v);
                t->index_limit = v;
            }
        }
        t->rules = 0;
        for (int r = 0; r < CTR_N_RULES; r++) {
            uint32_t bit = 1u << r;
            if (!(t->declared_rules & bit))
                continue;
            bool on = t->rule_when[r] == CTR_WHEN_ALWAYS ||
                      (t->rule_when[r] == CTR_WHEN_NORM_TOPK_PROB && topo->norm_topk_prob) ||
                      (t->rule_when[r] == CTR_WHEN_TIE_WORD_EMBEDDINGS && topo->tie_word_embeddings);
            if (on)
                t->rules |= bit;
        }
    }
    c->resolved = true;
    return MOERT_OK;
}

const ctr_tensor *ctr_find(const ctr_contract *c, cfg_stage stage, const char *suffix)
{
    if (!c)
        return NULL;
    if (!suffix)
        suffix = "";
    for (int i = 0; i < c->n_tensors; i++)
        if (c->tensors[i].stage == stage && !strcmp(c->tensors[i].suffix, suffix))
            return &c->tensors[i];
    return NULL;
}

static void fmt_list(char *buf, size_t cap, int n, const char *const *names, const int64_t *vals,
                     bool free_as_star)
{
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && used < cap; i++) {
        if (names)
            used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", names[i]);
        else if (free_as_star && vals[i] == CTR_DIM_FREE)
            used += (size_t)snprintf(buf + used, cap - used, "%s*", i ? ", " : "");
        else
            used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "", (long long)vals[i]);
    }
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
}

int ctr_check_shape(const ctr_tensor *t, const char *label, int ndim, const int64_t *shape,
                    ctr_dtype dtype, moert_err *err)
{
    if (!t)
        return err_set(err, MOERT_EUSAGE, "%s: no contract entry to check against", label ? label : "?");
    char own[80];
    if (!label) {
        tensor_label(t, own, sizeof own);
        label = own;
    }
    for (int i = 0; i < t->ndim; i++)
        if (t->dims[i] == 0)
            return err_set(err, MOERT_EUSAGE, "%s: contract entry was not resolved (ctr_resolve), expected a "
                           "resolved contract", label);
    if (ndim < 0 || ndim > 16 || (ndim > 0 && !shape))
        return err_set(err, MOERT_EUSAGE, "%s: bad shape argument (ndim %d)", label, ndim);
    bool ok = ndim == t->ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->dims[i] == CTR_DIM_FREE ? shape[i] >= 1 : shape[i] == t->dims[i];
    if (!ok) {
        const char *names[CTR_MAX_DIMS];
        for (int i = 0; i < t->ndim; i++)
            names[i] = t->dim_names[i];
        char sym[200], num[120], got[200];
        fmt_list(sym, sizeof sym, t->ndim, names, NULL, false);
        fmt_list(num, sizeof num, t->ndim, NULL, t->dims, true);
        fmt_list(got, sizeof got, ndim, NULL, shape, false);
        return err_set(err, MOERT_ECHECK, "%s: expected shape %s = %s, got %s", label, sym, num, got);
    }
    if (dtype != t->dtype)
        return err_set(err, MOERT_ECHECK, "%s: expected dtype %s, got %s", label, ctr_dtype_name(t->dtype),
                       ctr_dtype_name(dtype));
    return MOERT_OK;
}
