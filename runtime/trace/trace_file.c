/* trace_file: writing a session's rings as safetensors + manifest, and reading them back. */
#include "trace_file.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../version.h"
#include "trace_route.h"


/* ---- manifest ---------------------------------------------------------------------- */

static json_t *topology_json(const cfg_topology *t)
{
    json_t *o = json_object();
    json_object_set_new(o, "vocab_size", json_integer(t->vocab_size));
    json_object_set_new(o, "hidden_size", json_integer(t->hidden_size));
    json_object_set_new(o, "num_hidden_layers", json_integer(t->num_hidden_layers));
    json_object_set_new(o, "num_attention_heads", json_integer(t->num_attention_heads));
    json_object_set_new(o, "num_key_value_heads", json_integer(t->num_key_value_heads));
    json_object_set_new(o, "head_dim", json_integer(t->head_dim));
    json_object_set_new(o, "num_experts", json_integer(t->num_experts));
    json_object_set_new(o, "num_experts_per_tok", json_integer(t->num_experts_per_tok));
    json_object_set_new(o, "moe_intermediate_size", json_integer(t->moe_intermediate_size));
    json_object_set_new(o, "intermediate_size", json_integer(t->intermediate_size));
    json_object_set_new(o, "decoder_sparse_step", json_integer(t->decoder_sparse_step));
    json_t *mlp = json_array();
    for (int32_t i = 0; i < t->n_mlp_only_layers; i++)
        json_array_append_new(mlp, json_integer(t->mlp_only_layers[i]));
    json_object_set_new(o, "mlp_only_layers", mlp);
    json_object_set_new(o, "norm_topk_prob", json_boolean(t->norm_topk_prob));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(t->tie_word_embeddings));
    json_object_set_new(o, "rope_theta", json_real(t->rope_theta));
    json_object_set_new(o, "rms_norm_eps", json_real(t->rms_norm_eps));
    return o;
}

static json_t *ids_json(const int32_t *ids, int64_t n)
{
    json_t *a = json_array();
    for (int64_t i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static json_t *manifest_json(sess *s, const trace_run_info *info, uint64_t fingerprint,
                             const trace_ring_header *hdrs)
{
    const cfg_config *c = &s->cfg;
    json_t *m = json_object();
    char hex[32];
    json_object_set_new(m, "format", json_string("moert-trace"));
    json_object_set_new(m, "format_version", json_integer(1));
    json_object_set_new(m, "moert_version", json_string(MOERT_VERSION));
    json_object_set_new(m, "build", ver_json());
    json_object_set_new(m, "topology", topology_json(&c->topo));
    json_t *w = json_object();
    if (c->weights.synth) {
        json_object_set_new(w, "source", json_string("synth"));
        json_object_set_new(w, "seed", json_integer((json_int_t)c->weights.synth_seed));
        json_object_set_new(w, "dtype", json_string(cfg_dtype_names[c->weights.synth_dtype]));
    } else {
        json_object_set_new(w, "source", json_string("path"));
        json_object_set_new(w, "path", json_string(c->weights.path));
    }
    snprintf(hex, sizeof hex, "%016" PRIx64, fingerprint);
    json_object_set_new(w, "fingerprint", json_string(hex));
    json_object_set_new(w, "bytes", json_integer((json_int_t)s->weights.total_bytes));
    json_object_set_new(m, "weights", w);
    json_object_set_new(m, "backend", json_string(s->be.vt->name));
    json_object_set_new(m, "threads", json_integer(s->threads));
    json_object_set_new(m, "numerics", json_string(cfg_numerics_names[c->rt.numerics]));
    json_object_set_new(m, "batch_invariant", json_boolean(c->rt.batch_invariant));
    json_object_set_new(m, "sim_precision", json_string(cfg_sim_precision_name(c->rt.sim_precision)));
    if (s->route) {
        snprintf(hex, sizeof hex, "%016" PRIx64, trace_route_fingerprint(s->route));
        json_object_set_new(m, "route_from", json_pack("{ss ss}", "path", trace_route_path(s->route),
                                                       "fingerprint", hex));
    } else {
        json_object_set_new(m, "route_from", json_null());
    }
    json_object_set_new(m, "interrupted", json_boolean(s->interrupted));
    json_object_set_new(m, "prefill_chunk", json_integer(c->rt.prefill_chunk));
    json_object_set_new(m, "max_seq_len", json_integer(c->rt.max_seq_len));
    json_t *sp = json_object();
    json_object_set_new(sp, "temperature", json_real(c->sampling.temperature));
    json_object_set_new(sp, "top_k", json_integer(c->sampling.top_k));
    json_object_set_new(sp, "top_p", json_real(c->sampling.top_p));
    json_object_set_new(sp, "seed", json_integer((json_int_t)c->sampling.seed));
    json_object_set_new(m, "sampling", sp);
    json_object_set_new(m, "prompt_ids", ids_json(info->prompt_ids, info->n_prompt));
    json_object_set_new(m, "generated_ids", ids_json(info->generated_ids, info->n_generated));
    const cfg_trace_plan *p = &c->trace;
    json_t *tp = json_object();
    json_object_set_new(tp, "mode", json_string(cfg_trace_mode_names[p->mode]));
    json_object_set_new(tp, "positions", json_string(cfg_trace_positions_names[p->positions]));
    json_object_set_new(tp, "capacity", json_integer(p->capacity));
    json_object_set_new(tp, "on_full", json_string(cfg_trace_on_full_names[p->on_full]));
    json_t *stages = json_array();
    for (int st = 0; st < CFG_STAGE_COUNT; st++)
        if (p->stages & (1u << st))
            json_array_append_new(stages, json_string(cfg_stage_name((cfg_stage)st)));
    json_object_set_new(tp, "stages", stages);
    if (p->all_layers) {
        json_object_set_new(tp, "layers", json_string("all"));
    } else {
        json_t *ls = json_array();
        for (int32_t i = 0; i < p->n_layers; i++)
            json_array_append_new(ls, json_integer(p->layers[i]));
        json_object_set_new(tp, "layers", ls);
    }
    json_object_set_new(m, "trace", tp);
    json_t *ct = json_object();
    json_object_set_new(ct, "name", json_string(s->contract.name));
    json_object_set_new(ct, "version", json_integer(s->contract.version));
    json_object_set_new(m, "contract", ct);
    json_t *rings = json_array();
    uint64_t drops = 0;
    for (size_t i = 0; i < trace_rt_count(s->trace); i++) {
        const trace_slot_info *si = trace_rt_slot(s->trace, i);
        char label[64];
        trace_label(label, sizeof label, si->stage, si->layer);
        json_t *r = json_object();
        json_object_set_new(r, "label", json_string(label));
        json_object_set_new(r, "stage", json_string(cfg_stage_name(si->stage)));
        json_object_set_new(r, "layer", json_integer(si->layer));
        json_object_set_new(r, "width", json_integer(si->width));
        json_object_set_new(r, "records", json_integer((json_int_t)hdrs[i].stored));
        json_object_set_new(r, "written", json_integer((json_int_t)hdrs[i].written));
        json_object_set_new(r, "drops", json_integer((json_int_t)hdrs[i].drops));
        json_array_append_new(rings, r);
        drops += hdrs[i].drops;
    }
    json_object_set_new(m, "rings", rings);
    json_object_set_new(m, "drops", json_integer((json_int_t)drops));
    return m;
}

/* ---- writing ----------------------------------------------------------------------- */

/* Record j (0 = oldest) of a ring. */
static const trace_record *ring_record(const uint8_t *ring, const trace_ring_header *h,
                                       uint64_t capacity, uint64_t record_bytes, uint64_t j)
{
    uint64_t oldest = h->stored < capacity ? 0 : h->next;
    uint64_t slot = (oldest + j) % capacity;
    return (const trace_record *)(ring + TRACE_RING_HEADER + slot * record_bytes);
}

int trace_file_write(sess *s, const char *path, const trace_run_info *info, moert_err *err)
{
    backend *be = &s->be;
    size_t n_rings = trace_rt_count(s->trace);
    const cfg_trace_plan *plan = trace_rt_plan(s->trace);
    uint64_t cap = (uint64_t)plan->capacity;
    trace_ring_header *hdrs = calloc(n_rings ? n_rings : 1, sizeof *hdrs);
    const uint8_t **rings = calloc(n_rings ? n_rings : 1, sizeof *rings);
    st_write_spec *specs = calloc(n_rings * 4 + 1, sizeof *specs);
    char (*names)[80] = calloc(n_rings * 4 + 1, sizeof *names);
    int st = MOERT_OK;
    st_writer *w = NULL;
    json_t *manifest = NULL;
    char *mtext = NULL;
    if (!hdrs || !rings || !specs || !names) {
        st = err_set(err, MOERT_ENOMEM, "trace: out of memory");
        goto out;
    }
    size_t n_specs = 0;
    for (size_t i = 0; i < n_rings; i++) {
        const trace_slot_info *si = trace_rt_slot(s->trace, i);
        uint8_t *host = be->vt->host_ptr(be, si->ring_buf);
        uint64_t bytes = TRACE_RING_HEADER + cap * si->record_bytes;
        if ((st = be->vt->read(be, si->ring_buf, 0, host, bytes, err)))
            goto out;
        rings[i] = host;
        memcpy(&hdrs[i], host, sizeof hdrs[i]);
        int64_t n = (int64_t)hdrs[i].stored;
        char label[64];
        trace_label(label, sizeof label, si->stage, si->layer);
        if (si->keeps_row) {
            snprintf(names[n_specs], sizeof names[0], "%s", label);
            specs[n_specs] = (st_write_spec){names[n_specs], ST_F32, 2, {n, si->width}};
            n_specs++;
            if (si->has_ids) {
                snprintf(names[n_specs], sizeof names[0], "%s.experts", label);
                specs[n_specs] = (st_write_spec){names[n_specs], ST_I32, 2, {n, si->width}};
                n_specs++;
            }
        }
        snprintf(names[n_specs], sizeof names[0], "%s@stats", label);
        specs[n_specs] = (st_write_spec){names[n_specs], ST_F64, 2, {n, TRACE_N_STATS}};
        n_specs++;
        snprintf(names[n_specs], sizeof names[0], "%s@meta", label);
        specs[n_specs] = (st_write_spec){names[n_specs], ST_I64, 2, {n, 3}};
        n_specs++;
    }

    manifest = manifest_json(s, info, model_fingerprint(&s->weights), hdrs);
    mtext = json_dumps(manifest, JSON_COMPACT | JSON_SORT_KEYS);
    if (!mtext) {
        st = err_set(err, MOERT_ENOMEM, "trace: cannot format the manifest");
        goto out;
    }
    char contract[96];
    snprintf(contract, sizeof contract, "%s/%d", s->contract.name, s->contract.version);
    const char *keys[] = {"format", "moert_version", "contract", "manifest"};
    const char *vals[] = {"moert-trace", MOERT_VERSION, contract, mtext};
    if ((st = st_writer_open(path, specs, n_specs, keys, vals, 4, &w, err)))
        goto out;
    for (size_t i = 0; i < n_rings && !st; i++) {
        const trace_slot_info *si = trace_rt_slot(s->trace, i);
        uint64_t n = hdrs[i].stored, vb = (uint64_t)si->width * sizeof(float);
        if (si->keeps_row) {
            for (uint64_t j = 0; j < n && !st; j++)
                st = st_writer_write(w, ring_record(rings[i], &hdrs[i], cap, si->record_bytes, j) + 1,
                                     vb, err);
            if (si->has_ids)
                for (uint64_t j = 0; j < n && !st; j++)
                    st = st_writer_write(
                        w, (const uint8_t *)(ring_record(rings[i], &hdrs[i], cap, si->record_bytes, j) + 1) + vb,
                        vb, err);
        }
        for (uint64_t j = 0; j < n && !st; j++)
            st = st_writer_write(w, ring_record(rings[i], &hdrs[i], cap, si->record_bytes, j)->stats,
                                 sizeof(double) * TRACE_N_STATS, err);
        for (uint64_t j = 0; j < n && !st; j++) {
            const trace_record *r = ring_record(rings[i], &hdrs[i], cap, si->record_bytes, j);
            int64_t meta[3] = {r->step, r->pos, (int64_t)r->hash};
            st = st_writer_write(w, meta, sizeof meta, err);
        }
    }
    if (st) {
        st_writer_abort(w);
        goto out;
    }
    st = st_writer_finish(w, err);
out:
    if (st)
        err_prefix(err, "trace %s", path);
    free(mtext);
    json_decref(manifest);
    free(hdrs);
    free(rings);
    free(specs);
    free(names);
    return st;
}

size_t trace_file_dropped(sess *s, char *buf, size_t cap)
{
    size_t n = 0, len = 0;
    if (cap)
        buf[0] = 0;
    for (size_t i = 0; s->trace && i < trace_rt_count(s->trace); i++) {
        const trace_slot_info *si = trace_rt_slot(s->trace, i);
        trace_ring_header h; /* the host copy trace_file_write read back */
        memcpy(&h, s->be.vt->host_ptr(&s->be, si->ring_buf), sizeof h);
        if (!h.drops)
            continue;
        char label[64];
        trace_label(label, sizeof label, si->stage, si->layer);
        if (len < cap)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s (%llu of %llu)", n ? ", " : "", label,
                                    (unsigned long long)h.drops, (unsigned long long)h.written);
        n++;
    }
    return n;
}

/* ---- reading ----------------------------------------------------------------------- */

/* Bounds on what a manifest may say: the writer never produces more, and every count that
 * sizes an allocation is bounded before it is used. */
#define MF_DIM_MAX INT64_C(2147483647)          /* widths and sizes index int32 buffers */
#define MF_MAX_SEQ (INT64_C(1) << 24)           /* as --max-seq-len */
#define MF_THREADS_MAX 1024                     /* as --threads */
#define MF_MAX_RINGS ((size_t)CFG_STAGE_COUNT * CFG_MAX_LAYERS)

static const char *json_kind(const json_t *v)
{
    if (!v)
        return "missing";
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* "PATH: manifest WHERE: "key" is X, expected ..." for a value that is not what it must be. */
static int bad_field(moert_err *err, const char *path, const char *where, const char *key,
                     const json_t *v, const char *expected)
{
    char got[96];
    if (json_is_integer(v))
        snprintf(got, sizeof got, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(got, sizeof got, "%g", json_real_value(v));
    else if (json_is_string(v))
        snprintf(got, sizeof got, "\"%.60s\"", json_string_value(v));
    else
        snprintf(got, sizeof got, "%s", json_kind(v));
    return err_set(err, MOERT_EFORMAT, "%s: manifest%s%s: \"%s\" is %s, expected %s", path,
                   where[0] ? " " : "", where, key, got, expected);
}

/* An integer field in [lo, hi]. */
static int want_int(const json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out,
                    const char *path, const char *where, moert_err *err)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        char exp[96];
        snprintf(exp, sizeof exp, "an integer in [%lld, %lld]", (long long)lo, (long long)hi);
        return bad_field(err, path, where, key, v, exp);
    }
    *out = (int64_t)json_integer_value(v);
    return MOERT_OK;
}

/* A string field that must be one of names[] (NULL-terminated); *which = its index. */
static int want_enum(const json_t *o, const char *key, const char *const *names, int *which,
                     const char *path, const char *where, moert_err *err)
{
    const json_t *v = json_object_get(o, key);
    const char *s = json_string_value(v);
    for (int i = 0; s && names[i]; i++)
        if (!strcmp(s, names[i])) {
            *which = i;
            return MOERT_OK;
        }
    char exp[160] = "one of:";
    size_t used = strlen(exp);
    for (int i = 0; names[i] && used < sizeof exp; i++)
        used += (size_t)snprintf(exp + used, sizeof exp - used, "%s %s", i ? "," : "", names[i]);
    return bad_field(err, path, where, key, v, exp);
}

/* The manifest's numerics; absent in older traces (= exact). */
static int want_numerics(const json_t *m, cfg_numerics *out, const char *path, moert_err *err)
{
    int which = CFG_NUMERICS_EXACT;
    int st = json_object_get(m, "numerics") ? want_enum(m, "numerics", cfg_numerics_names, &which, path, "", err)
                                            : MOERT_OK;
    *out = (cfg_numerics)which;
    return st;
}

/* A finite number in [lo, hi]. */
static int want_num(const json_t *o, const char *key, double lo, double hi, double *out,
                    const char *path, const char *where, moert_err *err)
{
    const json_t *v = json_object_get(o, key);
    double x = json_is_number(v) ? json_number_value(v) : NAN;
    if (!(x >= lo && x <= hi)) {
        char exp[96];
        snprintf(exp, sizeof exp, "a number in [%g, %g]", lo, hi);
        return bad_field(err, path, where, key, v, exp);
    }
    *out = x;
    return MOERT_OK;
}

int trace_manifest_topology(const json_t *manifest, cfg_topology *t, moert_err *err)
{
    const json_t *o = json_object_get(manifest, "topology");
    memset(t, 0, sizeof *t);
    struct {
        const char *k;
        int64_t *dst;
    } ints[] = {
        {"vocab_size", &t->vocab_size}, {"hidden_size", &t->hidden_size},
        {"num_hidden_layers", &t->num_hidden_layers}, {"num_attention_heads", &t->num_attention_heads},
        {"num_key_value_heads", &t->num_key_value_heads}, {"head_dim", &t->head_dim},
        {"num_experts", &t->num_experts}, {"num_experts_per_tok", &t->num_experts_per_tok},
        {"moe_intermediate_size", &t->moe_intermediate_size},
        {"intermediate_size", &t->intermediate_size}, {"decoder_sparse_step", &t->decoder_sparse_step},
    };
    if (!json_is_object(o))
        return err_set(err, MOERT_EFORMAT, "manifest: \"topology\" is %s, expected an object", json_kind(o));
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const json_t *v = json_object_get(o, ints[i].k);
        if (!json_is_integer(v))
            return err_set(err, MOERT_EFORMAT, "manifest topology: \"%s\" is %s, expected an integer",
                           ints[i].k, json_kind(v));
        *ints[i].dst = (int64_t)json_integer_value(v);
    }
    const json_t *theta = json_object_get(o, "rope_theta"), *eps = json_object_get(o, "rms_norm_eps");
    if (!json_is_number(theta) || !json_is_number(eps))
        return err_set(err, MOERT_EFORMAT, "manifest topology: \"%s\" is %s, expected a number",
                       json_is_number(theta) ? "rms_norm_eps" : "rope_theta",
                       json_kind(json_is_number(theta) ? eps : theta));
    t->rope_theta = json_number_value(theta);
    t->rms_norm_eps = json_number_value(eps);
    json_t *b1 = json_object_get(o, "norm_topk_prob"), *b2 = json_object_get(o, "tie_word_embeddings");
    json_t *mlp = json_object_get(o, "mlp_only_layers");
    if (!json_is_boolean(b1) || !json_is_boolean(b2))
        return err_set(err, MOERT_EFORMAT, "manifest topology: \"%s\" is %s, expected true or false",
                       json_is_boolean(b1) ? "tie_word_embeddings" : "norm_topk_prob",
                       json_kind(json_is_boolean(b1) ? b2 : b1));
    if (!json_is_array(mlp) || json_array_size(mlp) > CFG_MAX_LAYERS)
        return err_set(err, MOERT_EFORMAT,
                       "manifest topology: \"mlp_only_layers\" is %s%s, expected an array of at most %d layer indices",
                       json_kind(mlp), json_is_array(mlp) ? " that is too long" : "", CFG_MAX_LAYERS);
    t->norm_topk_prob = json_is_true(b1);
    t->tie_word_embeddings = json_is_true(b2);
    for (size_t i = 0; i < json_array_size(mlp); i++) {
        json_t *x = json_array_get(mlp, i);
        /* range-checked before the cast: a truncated 2^32 + 1 must not pass as layer 1 */
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= CFG_MAX_LAYERS) {
            char got[40];
            snprintf(got, sizeof got, "%lld", (long long)json_integer_value(x));
            return err_set(err, MOERT_EFORMAT,
                           "manifest topology: mlp_only_layers[%zu] is %s, expected a layer index in [0, %d)", i,
                           json_is_integer(x) ? got : json_kind(x), CFG_MAX_LAYERS);
        }
        t->mlp_only_layers[t->n_mlp_only_layers++] = (int32_t)json_integer_value(x);
    }
    return cfg_check_topology(t, "manifest topology", err);
}

static const void *tensor_as(const st_set *set, const char *name, st_dtype dt, int64_t rows,
                             int64_t cols)
{
    const st_tensor *t = st_find(set, name);
    if (!t || t->dtype != dt || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols)
        return NULL;
    return t->data;
}

/* "F64 [4, 8]" or "absent", for messages. */
static const char *describe_tensor(const st_set *set, const char *name, char *buf, size_t cap)
{
    const st_tensor *t = st_find(set, name);
    if (!t) {
        snprintf(buf, cap, "absent");
        return buf;
    }
    size_t n = (size_t)snprintf(buf, cap, "%s [", st_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Checks ring i of the manifest and fills v.  Every field is named when it is wrong. */
static int open_ring(trace_file *out, const char *path, size_t i, const json_t *r, uint8_t *seen,
                     moert_err *err)
{
    trace_ring_view *v = &out->rings[i];
    char where[32];
    snprintf(where, sizeof where, "rings[%zu]", i);
    if (!json_is_object(r))
        return err_set(err, MOERT_EFORMAT, "%s: manifest %s is %s, expected an object", path, where,
                       json_kind(r));
    static const char *stage_names[CFG_STAGE_COUNT + 1];
    for (int s = 0; s < CFG_STAGE_COUNT; s++)
        stage_names[s] = cfg_stage_name((cfg_stage)s);
    int stage;
    int64_t layer, width, n, written, drops;
    int st = want_enum(r, "stage", stage_names, &stage, path, where, err);
    if (st)
        return st;
    bool per_layer = cfg_stage_is_per_layer((cfg_stage)stage);
    if ((st = want_int(r, "layer", per_layer ? 0 : -1, per_layer ? CFG_MAX_LAYERS - 1 : -1, &layer, path,
                       where, err)) ||
        (st = want_int(r, "width", 1, MF_DIM_MAX, &width, path, where, err)) ||
        (st = want_int(r, "records", 0, INT64_MAX / 64, &n, path, where, err)) ||
        (st = want_int(r, "written", 0, INT64_MAX, &written, path, where, err)) ||
        (st = want_int(r, "drops", 0, INT64_MAX, &drops, path, where, err)))
        return st;
    char want[64];
    trace_label(want, sizeof want, (cfg_stage)stage, (int32_t)layer);
    const json_t *label = json_object_get(r, "label");
    if (!json_is_string(label) || strcmp(json_string_value(label), want) != 0) {
        char exp[128];
        snprintf(exp, sizeof exp, "\"%s\" (stage %s, layer %lld)", want, stage_names[stage], (long long)layer);
        return bad_field(err, path, where, "label", label, exp);
    }
    /* one ring per (stage, layer): a second would shadow the first in every lookup */
    uint8_t *mark = &seen[(size_t)stage * (CFG_MAX_LAYERS + 1) + (size_t)(layer + 1)];
    if (*mark)
        return err_set(err, MOERT_EFORMAT, "%s: manifest %s: ring \"%s\" is listed twice, expected each ring once",
                       path, where, want);
    *mark = 1;
    snprintf(v->label, sizeof v->label, "%s", want);
    v->stage = (cfg_stage)stage;
    v->layer = (int32_t)layer;
    v->n = n;
    v->width = width;
    v->written = written;
    v->drops = drops;
    char sname[96], mname[96], got_s[96], got_m[96];
    snprintf(sname, sizeof sname, "%s@stats", v->label);
    snprintf(mname, sizeof mname, "%s@meta", v->label);
    v->stats = tensor_as(out->set, sname, ST_F64, n, TRACE_N_STATS);
    v->meta = tensor_as(out->set, mname, ST_I64, n, 3);
    if (!v->stats || !v->meta)
        return err_set(err, MOERT_EFORMAT,
                       "%s: manifest %s says ring %s holds %lld records, expected %s F64 [%lld, 8] and %s I64 "
                       "[%lld, 3], found %s and %s",
                       path, where, v->label, (long long)n, sname, (long long)n, mname, (long long)n,
                       describe_tensor(out->set, sname, got_s, sizeof got_s),
                       describe_tensor(out->set, mname, got_m, sizeof got_m));
    /* moe_router keeps its ids and weights in stats mode too */
    if (out->tensor_mode || v->stage == CFG_STAGE_MOE_ROUTER) {
        v->values = tensor_as(out->set, v->label, ST_F32, n, width);
        if (v->stage == CFG_STAGE_MOE_ROUTER) {
            char ename[96];
            snprintf(ename, sizeof ename, "%s.experts", v->label);
            v->experts = tensor_as(out->set, ename, ST_I32, n, width);
        }
    }
    return MOERT_OK;
}

int trace_file_open(const char *path, trace_file *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    int st = st_open(path, &out->set, err);
    if (st)
        return st;
    const char *fmt = st_metadata(out->set, "format");
    const char *mtext = st_metadata(out->set, "manifest");
    uint8_t *seen = NULL;
    if (!fmt || strcmp(fmt, "moert-trace") != 0 || !mtext) {
        st = err_set(err, MOERT_EFORMAT,
                     "%s: not a moert trace (its __metadata__ lacks format=moert-trace and a manifest)", path);
        goto fail;
    }
    json_error_t je;
    out->manifest = json_loads(mtext, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(out->manifest)) {
        st = out->manifest
                 ? err_set(err, MOERT_EFORMAT, "%s: manifest is %s, expected a JSON object", path,
                           json_kind(out->manifest))
                 : err_set(err, MOERT_EFORMAT, "%s: manifest is not valid JSON: %s (manifest line %d, column %d)",
                           path, je.text, je.line, je.column);
        goto fail;
    }
    const json_t *tp = json_object_get(out->manifest, "trace");
    int mode;
    if ((st = want_enum(tp, "mode", cfg_trace_mode_names, &mode, path, "trace", err)))
        goto fail;
    out->tensor_mode = mode == CFG_TRACE_TENSOR;
    if ((st = want_numerics(out->manifest, &out->numerics, path, err)))
        goto fail;
    const json_t *rings = json_object_get(out->manifest, "rings");
    if (!json_is_array(rings) || json_array_size(rings) > MF_MAX_RINGS) {
        st = err_set(err, MOERT_EFORMAT, "%s: manifest: \"rings\" is %s%s, expected an array of at most %zu rings",
                     path, json_kind(rings), json_is_array(rings) ? " that is too long" : "", MF_MAX_RINGS);
        goto fail;
    }
    out->n_rings = json_array_size(rings);
    out->rings = calloc(out->n_rings ? out->n_rings : 1, sizeof *out->rings);
    seen = calloc((size_t)CFG_STAGE_COUNT * (CFG_MAX_LAYERS + 1), 1);
    if (!out->rings || !seen) {
        st = err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < out->n_rings; i++)
        if ((st = open_ring(out, path, i, json_array_get(rings, i), seen, err)))
            goto fail;
    free(seen);
    return MOERT_OK;
fail:
    /* the message is complete before anything it may quote is released */
    free(seen);
    trace_file_close(out);
    return st;
}

void trace_file_close(trace_file *t)
{
    if (!t)
        return;
    free(t->rings);
    json_decref(t->manifest);
    st_close(t->set);
    memset(t, 0, sizeof *t);
}

/* ---- the recorded run (replay) ----------------------------------------------------- */

static int ids_of(const json_t *m, const char *key, int64_t min_n, int64_t vocab, int32_t **out,
                  int64_t *n, const char *path, moert_err *err)
{
    const json_t *a = json_object_get(m, key);
    *out = NULL;
    *n = 0;
    if (!json_is_array(a) || (int64_t)json_array_size(a) < min_n || (int64_t)json_array_size(a) > MF_MAX_SEQ)
        return bad_field(err, path, "", key, a,
                         min_n ? "a non-empty array of token ids" : "an array of token ids");
    int64_t len = (int64_t)json_array_size(a);
    int32_t *ids = malloc((size_t)(len ? len : 1) * sizeof *ids);
    if (!ids)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(a, (size_t)i);
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= vocab) {
            char item[48], exp[80];
            snprintf(item, sizeof item, "%s[%lld]", key, (long long)i);
            snprintf(exp, sizeof exp, "a token id in [0, %lld)", (long long)vocab);
            free(ids);
            return bad_field(err, path, "", item, x, exp);
        }
        ids[i] = (int32_t)json_integer_value(x);
    }
    *out = ids;
    *n = len;
    return MOERT_OK;
}

static int manifest_config(const json_t *m, const char *path, cfg_config *cfg, moert_err *err)
{
    cfg_defaults(cfg);
    snprintf(cfg->source_path, sizeof cfg->source_path, "%s", path);
    int st = trace_manifest_topology(m, &cfg->topo, err);
    if (st)
        return err_prefix(err, "%s", path);
    const cfg_topology *t = &cfg->topo;
    const json_t *w = json_object_get(m, "weights"), *tp = json_object_get(m, "trace");
    const json_t *sp = json_object_get(m, "sampling");
    static const char *const sources[] = {"synth", "path", NULL};
    const char *const *dtypes = cfg_dtype_names, *const *backends = cfg_backend_names;
    const char *const *modes = cfg_trace_mode_names, *const *positions = cfg_trace_positions_names;
    const char *const *on_full = cfg_trace_on_full_names;
    const char *sections[] = {"weights", "trace", "sampling"};
    const json_t *sv[] = {w, tp, sp};
    for (int i = 0; i < 3; i++)
        if (!json_is_object(sv[i]))
            return bad_field(err, path, "", sections[i], sv[i], "an object");
    int which;
    int64_t v;
    if ((st = want_enum(w, "source", sources, &which, path, "weights", err)))
        return st;
    if (which == 0) {
        cfg->weights.synth = true;
        /* seeds are u64, written through JSON's int64: any integer is one */
        if ((st = want_int(w, "seed", INT64_MIN, INT64_MAX, &v, path, "weights", err)) ||
            (st = want_enum(w, "dtype", dtypes, &which, path, "weights", err)))
            return st;
        cfg->weights.synth_seed = (uint64_t)v;
        cfg->weights.synth_dtype = (cfg_dtype)which;
    } else {
        const json_t *p = json_object_get(w, "path");
        if (!json_is_string(p) || !json_string_length(p) || json_string_length(p) >= sizeof cfg->weights.path ||
            strlen(json_string_value(p)) != json_string_length(p))
            return bad_field(err, path, "weights", "path", p, "a path of 1 to 1023 bytes");
        snprintf(cfg->weights.path, sizeof cfg->weights.path, "%s", json_string_value(p));
    }
    if ((st = want_int(m, "max_seq_len", 1, MF_MAX_SEQ, &cfg->rt.max_seq_len, path, "", err)) ||
        (st = want_int(m, "prefill_chunk", 1, cfg->rt.max_seq_len, &cfg->rt.prefill_chunk, path, "", err)) ||
        (st = want_int(m, "threads", 1, MF_THREADS_MAX, &v, path, "", err)) ||
        (st = want_enum(m, "backend", backends, &which, path, "", err)))
        return st;
    cfg->rt.threads = (int32_t)v;
    cfg->rt.backend = (cfg_backend)which;
    /* numerics, batch invariance, precision simulation and routing replay: absent from older
     * traces (= the defaults: exact, off, off, off) */
    if ((st = want_numerics(m, &cfg->rt.numerics, path, err)))
        return st;
    const json_t *bi = json_object_get(m, "batch_invariant"); /* absent in older traces: off */
    if (bi && !json_is_boolean(bi))
        return bad_field(err, path, "", "batch_invariant", bi, "true or false");
    cfg->rt.batch_invariant = json_is_true(bi);
    if (json_object_get(m, "sim_precision")) {
        const char *const sims[] = {cfg_sim_precision_name(CFG_SIM_NONE), cfg_sim_precision_name(CFG_SIM_BF16),
                                    cfg_sim_precision_name(CFG_SIM_F16), NULL};
        if ((st = want_enum(m, "sim_precision", sims, &which, path, "", err)))
            return st;
        cfg->rt.sim_precision = (cfg_sim_precision)which;
    }
    const json_t *rf = json_object_get(m, "route_from");
    if (rf && !json_is_null(rf)) {
        const json_t *p = json_object_get(rf, "path");
        if (!json_is_object(rf) || !json_is_string(p) || !json_string_length(p) ||
            json_string_length(p) >= sizeof cfg->rt.route_from || strlen(json_string_value(p)) != json_string_length(p))
            return bad_field(err, path, "route_from", "path", p, "a path of 1 to 1023 bytes");
        snprintf(cfg->rt.route_from, sizeof cfg->rt.route_from, "%s", json_string_value(p));
    }
    cfg_sampling *s = &cfg->sampling;
    if ((st = want_num(sp, "temperature", 0, 1e6, &s->temperature, path, "sampling", err)) ||
        (st = want_int(sp, "top_k", 0, t->vocab_size, &v, path, "sampling", err)))
        return st;
    s->top_k = (int32_t)v;
    if ((st = want_num(sp, "top_p", 0, 1, &s->top_p, path, "sampling", err)) ||
        (st = want_int(sp, "seed", INT64_MIN, INT64_MAX, &v, path, "sampling", err)))
        return st;
    if (!(s->top_p > 0))
        return bad_field(err, path, "sampling", "top_p", json_object_get(sp, "top_p"), "a number in (0, 1]");
    s->seed = (uint64_t)v;
    cfg_trace_plan *p = &cfg->trace;
    p->enabled = true;
    if ((st = want_enum(tp, "mode", modes, &which, path, "trace", err)))
        return st;
    p->mode = (cfg_trace_mode)which;
    if ((st = want_enum(tp, "positions", positions, &which, path, "trace", err)))
        return st;
    p->positions = (cfg_trace_positions)which;
    if ((st = want_enum(tp, "on_full", on_full, &which, path, "trace", err)))
        return st;
    p->on_full = (cfg_trace_on_full)which;
    if ((st = want_int(tp, "capacity", 1, MF_DIM_MAX, &p->capacity, path, "trace", err)))
        return st;
    const json_t *stages = json_object_get(tp, "stages");
    if (!json_is_array(stages) || !json_array_size(stages) || json_array_size(stages) > CFG_STAGE_COUNT)
        return bad_field(err, path, "trace", "stages", stages, "a non-empty array of distinct stage names");
    p->stages = 0;
    for (size_t i = 0; i < json_array_size(stages); i++) {
        const json_t *x = json_array_get(stages, i);
        int sid = json_is_string(x) ? cfg_stage_from_name(json_string_value(x)) : -1;
        if (sid < 0 || (p->stages & (1u << sid))) {
            char item[32];
            snprintf(item, sizeof item, "stages[%zu]", i);
            return bad_field(err, path, "trace", item, x,
                             sid < 0 ? "a stage name" : "a stage not listed before");
        }
        p->stages |= 1u << sid;
    }
    const json_t *layers = json_object_get(tp, "layers");
    p->n_layers = 0;
    p->all_layers = json_is_string(layers) && !strcmp(json_string_value(layers), "all");
    if (!p->all_layers) {
        if (!json_is_array(layers) || (int64_t)json_array_size(layers) > t->num_hidden_layers)
            return bad_field(err, path, "trace", "layers", layers, "\"all\" or an array of distinct layer indices");
        for (size_t i = 0; i < json_array_size(layers); i++) {
            const json_t *x = json_array_get(layers, i);
            bool dup = false;
            for (int32_t j = 0; j < p->n_layers && json_is_integer(x); j++)
                dup |= p->layers[j] == json_integer_value(x);
            if (!json_is_integer(x) || json_integer_value(x) < 0 ||
                json_integer_value(x) >= t->num_hidden_layers || dup) {
                char item[32], exp[80];
                snprintf(item, sizeof item, "layers[%zu]", i);
                snprintf(exp, sizeof exp, "a layer index in [0, %lld) not listed before",
                         (long long)t->num_hidden_layers);
                return bad_field(err, path, "trace", item, x, exp);
            }
            p->layers[p->n_layers++] = (int32_t)json_integer_value(x);
        }
    }
    return MOERT_OK;
}

int trace_manifest_run(const json_t *manifest, const char *path, cfg_config *cfg, int32_t **prompt,
                       int64_t *n_prompt, int32_t **generated, int64_t *n_generated, moert_err *err)
{
    *prompt = *generated = NULL;
    *n_prompt = *n_generated = 0;
    int st = manifest_config(manifest, path, cfg, err);
    if (st)
        return st;
    int64_t V = cfg->topo.vocab_size;
    if ((st = ids_of(manifest, "prompt_ids", 1, V, prompt, n_prompt, path, err)) ||
        (st = ids_of(manifest, "generated_ids", 0, V, generated, n_generated, path, err))) {
        free(*prompt);
        *prompt = NULL;
        *n_prompt = 0;
        return st;
    }
    /* the last generated token is sampled, never fed back: it needs no cache row */
    int64_t rows = *n_prompt + (*n_generated > 0 ? *n_generated - 1 : 0);
    if (rows > cfg->rt.max_seq_len) {
        free(*prompt);
        free(*generated);
        *prompt = *generated = NULL;
        *n_prompt = *n_generated = 0;
        return err_set(err, MOERT_EFORMAT,
                       "%s: manifest: %lld prompt and generated tokens exceed its max_seq_len %lld, expected at most %lld",
                       path, (long long)rows, (long long)cfg->rt.max_seq_len, (long long)cfg->rt.max_seq_len);
    }
    return MOERT_OK;
}
