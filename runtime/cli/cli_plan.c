/* moert plan: the resolved topology, the static schedule and the arena plan, without
 * running anything (and without weights, when they are absent). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../arena/arena.h"
#include "cli.h"
#include "cli_common.h"
#include "../backend.h"
#include "../ggufmap.h"
#include "../model.h"
#include "../plan.h"
#include "../sched.h"
#include "../shard.h"
#include "../st.h"
#include "../wlayout.h"

static const char plan_usage[] =
    "usage: moert plan CONFIG|MODEL_DIR [--json] [--backend cpu|hip] [--threads N] [--prefill-chunk K]\n"
    "                  [--max-seq-len N] [--trace FILE --trace-mode M --trace-positions P] [--contract FILE]\n"
    "                  [--gpus 1|2|4|8] [--device-memory GiB]\n"
    "--gpus N plans N expert-parallel GPUs (each holds the replicated tensors and every N-th\n"
    "expert of every layer) and refuses a plan whose GPU exceeds --device-memory (default 139).\n";

/* Parameters the topology implies (shard.h counts them by tensor family). */
static uint64_t param_count(const cfg_topology *t)
{
    uint64_t rep, experts;
    shard_params(t, &rep, &experts);
    return rep + experts;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void op_text(const sched *s, const sched_op *op, char *buf, size_t cap)
{
    size_t len = 0;
    len += (size_t)snprintf(buf + len, cap - len, "%-13s", sched_kind_name(op->kind));
    if (op->layer >= 0)
        len += (size_t)snprintf(buf + len, cap - len, " l%-3d", op->layer);
    else
        len += (size_t)snprintf(buf + len, cap - len, "     ");
    for (int i = 0; i < 3 && len < cap; i++)
        if (op->in[i] >= 0)
            len += (size_t)snprintf(buf + len, cap - len, " %s", s->bufs[op->in[i]].name);
    if (len < cap)
        len += (size_t)snprintf(buf + len, cap - len, " ->");
    for (int i = 0; i < 2 && len < cap; i++)
        if (op->out[i] >= 0)
            len += (size_t)snprintf(buf + len, cap - len, " %s", s->bufs[op->out[i]].name);
    for (int i = 0; i < 3 && len < cap; i++)
        if (op->w[i] != SCHED_W_NONE)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s", i ? "," : "  [w: ",
                                    sched_weight_name(op->w[i]));
    if (op->w[0] != SCHED_W_NONE && len < cap)
        snprintf(buf + len, cap - len, "]");
}

int cli_plan(int argc, char **argv, moert_err *err)
{
    cli_overrides ov = {0};
    const char *path = NULL;
    bool json = false;
    const char *devmem_arg = NULL;
    for (int i = 1; i < argc;) {
        int t = cli_take_override(argc, argv, &i, &ov, err);
        if (t < 0)
            return MOERT_EUSAGE;
        if (t > 0)
            continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(plan_usage, stdout);
            return MOERT_OK;
        } else if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--device-memory")) {
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "--device-memory needs a value (GiB)");
            devmem_arg = argv[++i];
        } else if (argv[i][0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s\n%s", argv[i], plan_usage);
        } else if (!path) {
            path = argv[i];
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'\n%s", argv[i], plan_usage);
        }
        i++;
    }
    if (!path)
        return err_set(err, MOERT_EUSAGE, "missing CONFIG or MODEL_DIR\n%s", plan_usage);
    double devmem_gib = 139.0; /* an H200's usable memory */
    if (devmem_arg && cli_parse_f64("--device-memory", devmem_arg, 0.001, 1048576.0, &devmem_gib, err))
        return MOERT_EUSAGE;
    cfg_config *cfg = malloc(sizeof *cfg);
    plan_run *pl = malloc(sizeof *pl);
    if (!cfg || !pl) {
        free(cfg);
        free(pl);
        return err_set(err, MOERT_ENOMEM, "out of memory");
    }
    memset(pl, 0, sizeof *pl);
    st_set *set = NULL;
    model_weights mw = {0};
    wlayout wl = {0};
    int st = cli_load_config(path, &ov, CFG_ALLOW_MISSING_WEIGHTS, cfg, err);
    if (st)
        goto done;
    double t0 = now_seconds();
    /* the very plan `moert run` executes (sess_open calls plan_build with the same config) */
    if ((st = plan_build(cfg, 0, pl, err)))
        goto done;
    double plan_seconds = now_seconds() - t0;
    const sched s = pl->schedule;
    const uint64_t *offsets = pl->offsets;
    const arena_stats as = pl->stats;
    int32_t threads = pl->threads;

    /* Weight bytes: measured from the files when present, else implied by the topology. */
    uint64_t params = param_count(&cfg->topo);
    bool present = false;
    uint64_t by_dtype[ST_DTYPE_COUNT] = {0}, wtotal = 0;
    struct stat sb;
    if (cfg->weights.synth) {
        st_dtype dt = cfg->weights.synth_dtype == CFG_DTYPE_F32 ? ST_F32
                      : cfg->weights.synth_dtype == CFG_DTYPE_F16 ? ST_F16
                                                                  : ST_BF16;
        by_dtype[dt] = params * st_dtype_size(dt);
        wtotal = by_dtype[dt];
        present = true;
    } else if (stat(cfg->weights.path, &sb) == 0) {
        if ((st = ggufmap_open_weights(cfg->weights.path, &set, err)))
            goto done;
        if ((st = model_bind(&cfg->topo, set, &mw, err))) {
            if (st == MOERT_ECONFIG) /* the topology's fault, not the files' */
                err_prefix(err, "%s", path);
            goto done;
        }
        memcpy(by_dtype, mw.bytes_by_dtype, sizeof by_dtype);
        wtotal = mw.total_bytes;
        present = true;
    }
    /* Device memory: the arena (every buffer, the backend's scratch included) and, on a GPU,
     * the weights region; nothing else is allocated on the device. */
    bool gpu = cfg->rt.backend == CFG_BACKEND_HIP;
    uint64_t wregion = wtotal;
    if (gpu && mw.layers) {
        if ((st = wlayout_plan(&mw, &wl, err)))
            goto done;
        wregion = wl.bytes;
    }
    /* Per-GPU memory under expert parallelism (shard.h); checked against the device memory
     * when the plan is for a device or the command line asks for GPUs. */
    int32_t gpus = cfg->rt.gpus > 1 ? cfg->rt.gpus : 1;
    shard_weights sw[SHARD_MAX_GPUS];
    if (mw.layers)
        shard_weights_bound(&mw, gpus, sw);
    else
        shard_weights_topo(&cfg->topo,
                           cfg->weights.synth && cfg->weights.synth_dtype == CFG_DTYPE_F32 ? 4 : 2, gpus, sw);
    shard_plan sp;
    bool check_fit = gpu || gpus > 1 || ov.gpus || devmem_arg;
    moert_err fit_err = {0};
    int fit = shard_plan_build(&s, as.arena_bytes, gpus, sw, (uint64_t)(devmem_gib * 1073741824.0), &sp,
                               &fit_err);
    if (fit && check_fit) {
        *err = fit_err;
        err_prefix(err, "%s", path);
        st = MOERT_ECONFIG;
        goto done;
    }
    /* the backend's statement of its scratch, against what the plan placed in the arena */
    backend_request rq[BACKEND_MAX_REQUESTS];
    int n_rq = backend_requests(cfg->rt.backend, &s, rq);
    uint64_t scratch_bytes = 0, unplanned = 0;
    for (int i = 0; i < n_rq; i++) {
        int32_t id = pl->scratch0 + i;
        const sched_buffer *b = i < pl->n_scratch ? &s.bufs[id] : NULL;
        if (b && !strcmp(b->name, rq[i].name) && b->bytes >= rq[i].bytes &&
            offsets[id] + b->bytes <= as.arena_bytes && offsets[id] % rq[i].align == 0)
            scratch_bytes += b->bytes;
        else
            unplanned += rq[i].bytes;
    }
    double ratio = as.lower_bound_bytes ? (double)as.arena_bytes / (double)as.lower_bound_bytes : 1.0;

    if (json) {
        json_t *o = json_object();
        const cfg_topology *t = &cfg->topo;
        json_t *topo = json_pack("{sI sI sI sI sI sI sI sI sI sI sI sb sb sf sf}",
                                 "vocab_size", (json_int_t)t->vocab_size,
                                 "hidden_size", (json_int_t)t->hidden_size,
                                 "num_hidden_layers", (json_int_t)t->num_hidden_layers,
                                 "num_attention_heads", (json_int_t)t->num_attention_heads,
                                 "num_key_value_heads", (json_int_t)t->num_key_value_heads,
                                 "head_dim", (json_int_t)t->head_dim,
                                 "num_experts", (json_int_t)t->num_experts,
                                 "num_experts_per_tok", (json_int_t)t->num_experts_per_tok,
                                 "moe_intermediate_size", (json_int_t)t->moe_intermediate_size,
                                 "intermediate_size", (json_int_t)t->intermediate_size,
                                 "decoder_sparse_step", (json_int_t)t->decoder_sparse_step,
                                 "norm_topk_prob", (int)t->norm_topk_prob,
                                 "tie_word_embeddings", (int)t->tie_word_embeddings,
                                 "rope_theta", t->rope_theta, "rms_norm_eps", t->rms_norm_eps);
        json_t *mlp = json_array();
        for (int32_t i = 0; i < t->n_mlp_only_layers; i++)
            json_array_append_new(mlp, json_integer(t->mlp_only_layers[i]));
        json_object_set_new(topo, "mlp_only_layers", mlp);
        json_object_set_new(o, "topology", topo);
        json_object_set_new(o, "runtime", json_pack("{sI sI si ss}", "max_seq_len",
                                                    (json_int_t)cfg->rt.max_seq_len, "prefill_chunk",
                                                    (json_int_t)cfg->rt.prefill_chunk, "threads",
                                                    threads, "backend", gpu ? "hip" : "cpu"));
        json_t *ops = json_array();
        for (int32_t i = 0; i < s.n_ops; i++) {
            const sched_op *op = &s.ops[i];
            json_t *jo = json_pack("{si ss si}", "index", i, "kind", sched_kind_name(op->kind),
                                   "layer", op->layer);
            json_t *ins = json_array(), *outs = json_array(), *ws = json_array();
            for (int k = 0; k < 3; k++)
                if (op->in[k] >= 0)
                    json_array_append_new(ins, json_string(s.bufs[op->in[k]].name));
            for (int k = 0; k < 2; k++)
                if (op->out[k] >= 0)
                    json_array_append_new(outs, json_string(s.bufs[op->out[k]].name));
            for (int k = 0; k < 3; k++)
                if (op->w[k] != SCHED_W_NONE)
                    json_array_append_new(ws, json_string(sched_weight_name(op->w[k])));
            json_object_set_new(jo, "inputs", ins);
            json_object_set_new(jo, "outputs", outs);
            json_object_set_new(jo, "weights", ws);
            if (op->stage >= 0)
                json_object_set_new(jo, "stage", json_string(cfg_stage_name((cfg_stage)op->stage)));
            json_array_append_new(ops, jo);
        }
        json_t *sj = json_object();
        json_object_set_new(sj, "prefill_chunk_rows", json_integer(s.max_rows));
        json_object_set_new(sj, "ops", ops);
        json_object_set_new(sj, "decode", json_string("the same ops over the same buffers with 1 row"));
        json_object_set_new(o, "schedule", sj);
        json_t *bufs = json_array();
        for (int32_t i = 0; i < s.n_bufs; i++) {
            const sched_buffer *b = &s.bufs[i];
            json_t *jb = json_pack("{ss sI sI si si sb}", "name", b->name, "offset", (json_int_t)offsets[i],
                                   "bytes", (json_int_t)b->bytes, "first_op", b->first, "last_op", b->last,
                                   "persistent", (int)b->persistent);
            if (b->align)
                json_object_set_new(jb, "align", json_integer((json_int_t)b->align));
            if (i >= pl->scratch0 && i < pl->scratch0 + pl->n_scratch)
                json_object_set_new(jb, "backend_scratch", json_true());
            json_array_append_new(bufs, jb);
        }
        json_object_set_new(o, "buffers", bufs);
        json_object_set_new(o, "arena_bytes", json_integer((json_int_t)as.arena_bytes));
        json_object_set_new(o, "lower_bound_bytes", json_integer((json_int_t)as.lower_bound_bytes));
        json_object_set_new(o, "naive_bytes", json_integer((json_int_t)as.naive_bytes));
        json_object_set_new(o, "persistent_bytes", json_integer((json_int_t)as.persistent_bytes));
        json_object_set_new(o, "arena_over_lower_bound", json_real(ratio));
        json_object_set_new(o, "plan_seconds", json_real(plan_seconds));
        json_t *dv = json_object();
        json_object_set_new(dv, "backend", json_string(gpu ? "hip" : "cpu"));
        json_object_set_new(dv, "arena_bytes", json_integer((json_int_t)as.arena_bytes));
        json_object_set_new(dv, "backend_scratch_buffers", json_integer(pl->n_scratch));
        json_object_set_new(dv, "backend_scratch_bytes", json_integer((json_int_t)scratch_bytes));
        json_object_set_new(dv, "weights_region_bytes", json_integer((json_int_t)(gpu ? wregion : 0)));
        json_object_set_new(dv, "unplanned_device_bytes", json_integer((json_int_t)unplanned));
        json_object_set_new(o, "device", dv);
        json_t *gj = json_object(), *ga = json_array();
        json_object_set_new(gj, "gpus", json_integer(gpus));
        json_object_set_new(gj, "expert_placement", json_string("expert e on GPU e % gpus"));
        json_object_set_new(gj, "device_memory_bytes", json_integer((json_int_t)sp.device_bytes));
        json_object_set_new(gj, "checked", json_boolean(check_fit));
        json_object_set_new(gj, "fits", json_boolean(sp.fits));
        for (int32_t g = 0; g < gpus; g++) {
            const shard_gpu *pg = &sp.gpu[g];
            json_array_append_new(ga, json_pack("{si sI sI sI sI sI sI sI}", "gpu", (int)g, "experts_per_layer",
                                                (json_int_t)pg->w.experts_per_layer, "replicated_bytes",
                                                (json_int_t)pg->w.replicated_bytes, "expert_bytes",
                                                (json_int_t)pg->w.expert_bytes, "weights_bytes",
                                                (json_int_t)pg->weights_bytes, "arena_bytes",
                                                (json_int_t)pg->arena_bytes, "kv_bytes", (json_int_t)pg->kv_bytes,
                                                "total_bytes", (json_int_t)pg->total_bytes));
        }
        json_object_set_new(gj, "per_gpu", ga);
        json_object_set_new(o, "sharding", gj);
        json_t *wj = json_object(), *bd = json_object();
        for (int d = 0; d < ST_DTYPE_COUNT; d++)
            if (by_dtype[d])
                json_object_set_new(bd, st_dtype_name((st_dtype)d), json_integer((json_int_t)by_dtype[d]));
        json_object_set_new(wj, "present", json_boolean(present));
        json_object_set_new(wj, "parameters", json_integer((json_int_t)params));
        json_object_set_new(wj, "bytes_by_dtype", bd);
        json_object_set_new(wj, "total_bytes", json_integer((json_int_t)wtotal));
        if (!present)
            json_object_set_new(wj, "bf16_bytes_if_present", json_integer((json_int_t)(params * 2)));
        json_object_set_new(o, "weights", wj);
        st = cli_print_json(o, JSON_INDENT(1), err);
    } else {
        const cfg_topology *t = &cfg->topo;
        printf("topology: vocab %lld, hidden %lld, %lld layers, %lld heads / %lld kv heads x %lld, "
               "%lld experts top-%lld (moe_intermediate %lld), intermediate %lld, dense layers:",
               (long long)t->vocab_size, (long long)t->hidden_size, (long long)t->num_hidden_layers,
               (long long)t->num_attention_heads, (long long)t->num_key_value_heads,
               (long long)t->head_dim, (long long)t->num_experts, (long long)t->num_experts_per_tok,
               (long long)t->moe_intermediate_size, (long long)t->intermediate_size);
        int dense = 0;
        for (int64_t l = 0; l < t->num_hidden_layers; l++)
            if (!cfg_layer_is_sparse(t, l))
                printf(" %lld", (long long)l), dense++;
        printf("%s\nruntime: max_seq_len %lld, prefill chunk %lld rows, %d threads\n\n",
               dense ? "" : " none", (long long)cfg->rt.max_seq_len,
               (long long)cfg->rt.prefill_chunk, threads);
        printf("schedule: %d ops per step (a prefill chunk runs them over up to %lld rows, a decode "
               "step over 1 row)\n",
               s.n_ops, (long long)s.max_rows);
        char line[512];
        for (int32_t i = 0; i < s.n_ops; i++) {
            op_text(&s, &s.ops[i], line, sizeof line);
            printf("  %4d  %s\n", i, line);
        }
        printf("\nmemory plan: %d buffers\n  %-28s %14s %14s  %s\n", s.n_bufs, "buffer", "offset",
               "bytes", "lifetime");
        for (int32_t i = 0; i < s.n_bufs; i++) {
            const sched_buffer *b = &s.bufs[i];
            if (b->persistent)
                printf("  %-28s %14llu %14llu  persistent\n", b->name,
                       (unsigned long long)offsets[i], (unsigned long long)b->bytes);
            else
                printf("  %-28s %14llu %14llu  ops %d..%d\n", b->name, (unsigned long long)offsets[i],
                       (unsigned long long)b->bytes, b->first, b->last);
        }
        printf("\narena: %llu bytes (%.1f MiB); lower bound %llu; naive sum %llu; arena / lower "
               "bound = %.4f; persistent %llu; planned in %.3f s\n",
               (unsigned long long)as.arena_bytes, (double)as.arena_bytes / 1048576.0,
               (unsigned long long)as.lower_bound_bytes, (unsigned long long)as.naive_bytes, ratio,
               (unsigned long long)as.persistent_bytes, plan_seconds);
        printf("backend %s: %d scratch buffers, %llu bytes, in the arena; device memory = arena + %s; "
               "unplanned device bytes %llu\n",
               gpu ? "hip" : "cpu", pl->n_scratch, (unsigned long long)scratch_bytes,
               gpu ? "weights region" : "(weights mmap'd on the host)", (unsigned long long)unplanned);
        printf("gpus: %d (expert e on GPU e %% %d; attention, router, norms, embeddings replicated); "
               "device memory %.2f GiB%s\n",
               (int)gpus, (int)gpus, devmem_gib, check_fit ? "" : " (not checked: cpu plan without --gpus)");
        for (int32_t g = 0; g < gpus; g++) {
            const shard_gpu *pg = &sp.gpu[g];
            printf("  gpu %d: %lld experts/layer; weights %llu bytes (replicated %llu + experts %llu); "
                   "arena %llu (KV %llu); total %llu bytes (%.2f GiB)\n",
                   (int)g, (long long)pg->w.experts_per_layer, (unsigned long long)pg->weights_bytes,
                   (unsigned long long)pg->w.replicated_bytes, (unsigned long long)pg->w.expert_bytes,
                   (unsigned long long)pg->arena_bytes, (unsigned long long)pg->kv_bytes,
                   (unsigned long long)pg->total_bytes, (double)pg->total_bytes / 1073741824.0);
        }
        printf("weights: %llu parameters", (unsigned long long)params);
        if (present) {
            for (int d = 0; d < ST_DTYPE_COUNT; d++)
                if (by_dtype[d])
                    printf("; %s %llu bytes", st_dtype_name((st_dtype)d),
                           (unsigned long long)by_dtype[d]);
            printf("\n");
        } else {
            printf(" (files not present: %llu bytes if bf16)\n", (unsigned long long)(params * 2));
        }
    }
done:
    wlayout_free(&wl);
    model_unbind(&mw);
    st_close(set);
    plan_free(pl);
    free(pl);
    free(cfg);
    return st;
}
