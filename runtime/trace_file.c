/* trace_file: writing a session's rings as safetensors + manifest, and reading them back. */
#include "trace_file.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"


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

static const char *dtype_name(cfg_dtype d)
{
    return d == CFG_DTYPE_F32 ? "f32" : d == CFG_DTYPE_F16 ? "f16" : "bf16";
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
    json_object_set_new(m, "topology", topology_json(&c->topo));
    json_t *w = json_object();
    if (c->weights.synth) {
        json_object_set_new(w, "source", json_string("synth"));
        json_object_set_new(w, "seed", json_integer((json_int_t)c->weights.synth_seed));
        json_object_set_new(w, "dtype", json_string(dtype_name(c->weights.synth_dtype)));
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
    json_object_set_new(tp, "mode", json_string(p->mode == CFG_TRACE_TENSOR ? "tensor" : "stats"));
    json_object_set_new(tp, "positions", json_string(p->positions == CFG_TRACE_ALL ? "all" : "last"));
    json_object_set_new(tp, "capacity", json_integer(p->capacity));
    json_object_set_new(tp, "on_full", json_string(p->on_full == CFG_TRACE_STOP ? "stop" : "overwrite"));
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
    bool tensor = plan->mode == CFG_TRACE_TENSOR;
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
        if (tensor) {
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
        if (tensor) {
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

/* ---- reading ----------------------------------------------------------------------- */

static int get_int(const json_t *o, const char *key, int64_t *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_integer(x))
        return -1;
    *v = (int64_t)json_integer_value(x);
    return 0;
}

static int get_num(const json_t *o, const char *key, double *v)
{
    json_t *x = json_object_get(o, key);
    if (!json_is_number(x))
        return -1;
    *v = json_number_value(x);
    return 0;
}

int trace_manifest_topology(const json_t *manifest, cfg_topology *t, moert_err *err)
{
    const json_t *o = json_object_get(manifest, "topology");
    memset(t, 0, sizeof *t);
    int64_t v;
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
        return err_set(err, MOERT_EFORMAT, "manifest: no topology object");
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (get_int(o, ints[i].k, &v))
            return err_set(err, MOERT_EFORMAT, "manifest topology: %s missing or not an integer",
                           ints[i].k);
        *ints[i].dst = v;
    }
    if (get_num(o, "rope_theta", &t->rope_theta) || get_num(o, "rms_norm_eps", &t->rms_norm_eps))
        return err_set(err, MOERT_EFORMAT, "manifest topology: rope_theta / rms_norm_eps missing");
    json_t *b1 = json_object_get(o, "norm_topk_prob"), *b2 = json_object_get(o, "tie_word_embeddings");
    json_t *mlp = json_object_get(o, "mlp_only_layers");
    if (!json_is_boolean(b1) || !json_is_boolean(b2) || !json_is_array(mlp) ||
        json_array_size(mlp) > CFG_MAX_LAYERS)
        return err_set(err, MOERT_EFORMAT, "manifest topology: flags or mlp_only_layers malformed");
    t->norm_topk_prob = json_is_true(b1);
    t->tie_word_embeddings = json_is_true(b2);
    for (size_t i = 0; i < json_array_size(mlp); i++) {
        json_t *x = json_array_get(mlp, i);
        if (!json_is_integer(x))
            return err_set(err, MOERT_EFORMAT, "manifest topology: mlp_only_layers[%zu] not an integer", i);
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

int trace_file_open(const char *path, trace_file *out, moert_err *err)
{
    memset(out, 0, sizeof *out);
    int st = st_open(path, &out->set, err);
    if (st)
        return st;
    const char *fmt = st_metadata(out->set, "format");
    const char *mtext = st_metadata(out->set, "manifest");
    if (!fmt || strcmp(fmt, "moert-trace") != 0 || !mtext) {
        trace_file_close(out);
        return err_set(err, MOERT_EFORMAT,
                       "%s: not a moert trace (its __metadata__ lacks format=moert-trace and a manifest)",
                       path);
    }
    json_error_t je;
    out->manifest = json_loads(mtext, 0, &je);
    if (!json_is_object(out->manifest)) {
        trace_file_close(out);
        return err_set(err, MOERT_EFORMAT, "%s: manifest is not a JSON object (%s at column %d)",
                       path, je.text, je.column);
    }
    const json_t *tp = json_object_get(out->manifest, "trace");
    const json_t *mode = json_object_get(tp, "mode");
    out->tensor_mode = json_is_string(mode) && !strcmp(json_string_value(mode), "tensor");
    const json_t *rings = json_object_get(out->manifest, "rings");
    if (!json_is_array(rings)) {
        trace_file_close(out);
        return err_set(err, MOERT_EFORMAT, "%s: manifest has no rings array", path);
    }
    out->n_rings = json_array_size(rings);
    out->rings = calloc(out->n_rings ? out->n_rings : 1, sizeof *out->rings);
    if (!out->rings) {
        trace_file_close(out);
        return err_set(err, MOERT_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < out->n_rings; i++) {
        const json_t *r = json_array_get(rings, i);
        trace_ring_view *v = &out->rings[i];
        const json_t *label = json_object_get(r, "label"), *stage = json_object_get(r, "stage");
        int64_t layer, width, n, written = 0, drops = 0;
        int stage_id = json_is_string(stage) ? cfg_stage_from_name(json_string_value(stage)) : -1;
        if (!json_is_string(label) || stage_id < 0 || get_int(r, "layer", &layer) ||
            get_int(r, "width", &width) || get_int(r, "records", &n) || n < 0 || width < 1 ||
            strlen(json_string_value(label)) >= sizeof v->label) {
            trace_file_close(out);
            return err_set(err, MOERT_EFORMAT, "%s: manifest ring %zu is malformed", path, i);
        }
        get_int(r, "written", &written);
        get_int(r, "drops", &drops);
        snprintf(v->label, sizeof v->label, "%s", json_string_value(label));
        v->stage = (cfg_stage)stage_id;
        v->layer = (int32_t)layer;
        v->n = n;
        v->width = width;
        v->written = written;
        v->drops = drops;
        char name[96];
        snprintf(name, sizeof name, "%s@stats", v->label);
        v->stats = tensor_as(out->set, name, ST_F64, n, TRACE_N_STATS);
        snprintf(name, sizeof name, "%s@meta", v->label);
        v->meta = tensor_as(out->set, name, ST_I64, n, 3);
        if (!v->stats || !v->meta) {
            trace_file_close(out);
            return err_set(err, MOERT_EFORMAT,
                           "%s: ring %s needs %s@stats F64 [%lld, 8] and @meta I64 [%lld, 3]", path,
                           v->label, v->label, (long long)n, (long long)n);
        }
        if (out->tensor_mode) {
            v->values = tensor_as(out->set, v->label, ST_F32, n, width);
            if (v->stage == CFG_STAGE_MOE_ROUTER) {
                snprintf(name, sizeof name, "%s.experts", v->label);
                v->experts = tensor_as(out->set, name, ST_I32, n, width);
            }
        }
    }
    return MOERT_OK;
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
