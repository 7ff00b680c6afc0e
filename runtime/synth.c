/* synth: seeded Qwen3-MoE checkpoints from a counter-based generator. */
#include "synth.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <xxhash.h>

#include "model.h"

#define BUF_BYTES ((size_t)64 << 20) /* write granularity of synth_write_dir */
#define PAR_MIN 32768                /* below this many elements a loop stays serial */
#define LIN_AMP 0.034641016f         /* sqrt(3) * 0.02: uniform with std 0.02 */
#define NORM_AMP 0.1f

/* ---- conversions ------------------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Branch-free so that the generation loops vectorise. */
static inline uint16_t bf16_of(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t nan = (u >> 16) | 0x40u;                         /* keep sign, force quiet */
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16; /* ties to even; may carry into Inf */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

uint16_t synth_f32_to_bf16(float f)
{
    return bf16_of(f);
}

uint16_t synth_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x47800000u) /* >= 65536 (or Inf): beyond the last rounding boundary */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal half: rebias exponent, round off 13 bits */
        uint32_t m = ax - ((uint32_t)(127 - 15) << 23);
        m += 0x0fffu + ((m >> 13) & 1u); /* a carry into exponent 31 gives Inf, as it must */
        return (uint16_t)(sign | (m >> 13));
    }
    /* Subnormal half: count units of 2^-24. */
    uint32_t e = ax >> 23;
    if (e < 102) /* below 2^-25: rounds to zero */
        return sign;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++; /* may reach 0x400, the smallest normal: still the right encoding */
    return (uint16_t)(sign | q);
}

/* ---- generator -------------------------------------------------------------------- */

static inline uint64_t mix64(uint64_t z) /* SplitMix64's finaliser */
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint32_t fmix32(uint32_t h) /* MurmurHash3's finaliser: a bijection */
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
}

typedef struct gen {
    uint64_t key;        /* from (seed, tensor name) */
    bool norm;
} gen;

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static gen gen_for(uint64_t seed, const char *name)
{
    gen g;
    g.key = mix64(seed ^ mix64(XXH64(name, strlen(name), 0)));
    g.norm = strstr(name, "layernorm") || ends_with(name, "norm.weight");
    return g;
}

/* Element i = hi * 2^32 + lo of a tensor: with (k1, k2) = mix64(key + hi) split in halves,
 * h = fmix32(fmix32(lo * golden + k1) ^ k2), whose top 24 bits give r in [-1, 1) exactly;
 * then one float multiply (and add).  32-bit integer lanes vectorise, and every step is
 * exact or one IEEE rounding, so any thread count or vector width gives the same bits.
 * (k2 keeps tensors from being shifted copies of each other, which a Weyl sequence under
 * one key alone would allow.) */
static inline float gen_value(uint32_t k1, uint32_t k2, float base, float amp, uint32_t lo)
{
    uint32_t h = fmix32(fmix32(lo * 0x9e3779b9u + k1) ^ k2);
    float r = (float)((int32_t)(h >> 8) - (1 << 23)) * 0x1p-23f;
    return base + r * amp; /* base 0 for linear weights: r * amp is never -0, so exact */
}

/* count elements from lo0 on, all within one 2^32 block. */
__attribute__((target_clones("avx2", "default")))
static void gen_block(uint32_t k1, uint32_t k2, bool norm, st_dtype dt, uint32_t lo0, int64_t count, void *out)
{
    const float base = norm ? 1.0f : 0.0f, amp = norm ? NORM_AMP : LIN_AMP;
    if (dt == ST_F32) {
        float *o = out;
#pragma omp parallel for simd schedule(simd : static) if (count >= PAR_MIN)
        for (int64_t i = 0; i < count; i++)
            o[i] = gen_value(k1, k2, base, amp, lo0 + (uint32_t)i);
    } else if (dt == ST_BF16) {
        uint16_t *o = out;
#pragma omp parallel for simd schedule(simd : static) if (count >= PAR_MIN)
        for (int64_t i = 0; i < count; i++)
            o[i] = bf16_of(gen_value(k1, k2, base, amp, lo0 + (uint32_t)i));
    } else {
        uint16_t *o = out;
#pragma omp parallel for simd schedule(simd : static) if (count >= PAR_MIN)
        for (int64_t i = 0; i < count; i++)
            o[i] = synth_f32_to_f16(gen_value(k1, k2, base, amp, lo0 + (uint32_t)i));
    }
}

/* Elements [first, first + count) of tensor g, converted to dt, into out. */
static void gen_fill(gen g, st_dtype dt, uint64_t first, uint64_t count, void *out)
{
    const size_t esz = st_dtype_size(dt);
    while (count) {
        uint64_t hi = first >> 32, lo = first & 0xffffffffu;
        uint64_t take = (UINT64_C(1) << 32) - lo;
        if (take > count)
            take = count;
        uint64_t k = mix64(g.key + hi);
        gen_block((uint32_t)k, (uint32_t)(k >> 32), g.norm, dt, (uint32_t)lo, (int64_t)take, out);
        out = (uint8_t *)out + take * esz;
        first += take;
        count -= take;
    }
}

/* ---- the tensor list -------------------------------------------------------------- */

typedef struct plan {
    model_spec *ms;
    st_write_spec *ws;
    size_t n;
    uint64_t total;      /* data bytes */
    char meta_value[64];
} plan;

static const char *const meta_keys[2] = {"format", "moert_synth"};

static int plan_make(const cfg_topology *topo, uint64_t seed, st_dtype dtype, plan *p, moert_err *err)
{
    memset(p, 0, sizeof *p);
    if (dtype != ST_F32 && dtype != ST_BF16 && dtype != ST_F16)
        return err_set(err, MOERT_EUSAGE, "synth: dtype %s, expected F32, BF16 or F16", st_dtype_name(dtype));
    int st = model_expected_tensors(topo, &p->ms, &p->n, err);
    if (st)
        return st;
    p->ws = calloc(p->n, sizeof *p->ws);
    if (!p->ws) {
        free(p->ms);
        return err_set(err, MOERT_ENOMEM, "synth: out of memory");
    }
    for (size_t i = 0; i < p->n; i++) {
        st_write_spec *w = &p->ws[i];
        w->name = p->ms[i].name;
        w->dtype = dtype;
        w->ndim = p->ms[i].ndim;
        w->shape[0] = p->ms[i].shape[0];
        w->shape[1] = p->ms[i].shape[1];
        p->total += (uint64_t)w->shape[0] * (uint64_t)(w->ndim > 1 ? w->shape[1] : 1) * st_dtype_size(dtype);
    }
    snprintf(p->meta_value, sizeof p->meta_value, "seed=%" PRIu64 " dtype=%s", seed, st_dtype_name(dtype));
    return MOERT_OK;
}

static void plan_free(plan *p)
{
    free(p->ms);
    free(p->ws);
}

static uint64_t spec_elems(const st_write_spec *w)
{
    return (uint64_t)w->shape[0] * (uint64_t)(w->ndim > 1 ? w->shape[1] : 1);
}

/* ---- directory form --------------------------------------------------------------- */

static int mkdir_p(const char *dir, moert_err *err)
{
    char p[4096];
    if ((size_t)snprintf(p, sizeof p, "%s", dir) >= sizeof p)
        return err_set(err, MOERT_EUSAGE, "synth: output path too long");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return err_set(err, MOERT_EIO, "%s: cannot create directory: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return err_set(err, MOERT_EIO, "%s: cannot create directory: %s", p, strerror(errno));
    struct stat sb;
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return err_set(err, MOERT_EIO, "%s: not a directory", p);
    return MOERT_OK;
}

static int write_json(const char *path, json_t *root, moert_err *err)
{
    if (!root)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    /* Shortest %g precision that round-trips every real here (1e-06, not 9.99...e-07). */
    int prec = 1;
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v) {
        if (!json_is_real(v))
            continue;
        double d = json_real_value(v);
        char b[40];
        for (int q = prec; q <= 17; q++) {
            snprintf(b, sizeof b, "%.*g", q, d);
            if (strtod(b, NULL) == d) {
                prec = q;
                break;
            }
        }
    }
    char *txt = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(prec));
    json_decref(root);
    if (!txt)
        return err_set(err, MOERT_ENOMEM, "%s: cannot encode JSON", path);
    size_t n = strlen(txt);
    char *full = realloc(txt, n + 2);
    if (!full) {
        free(txt);
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    full[n] = '\n';
    full[n + 1] = '\0';
    int st = st_write_file_atomic(path, full, n + 1, err);
    free(full);
    return st;
}

static json_t *config_json(const cfg_topology *t, st_dtype dtype)
{
    const char *tdt = dtype == ST_F32 ? "float32" : dtype == ST_BF16 ? "bfloat16" : "float16";
    json_t *mlp_only = json_array();
    for (int32_t i = 0; mlp_only && i < t->n_mlp_only_layers; i++)
        json_array_append_new(mlp_only, json_integer(t->mlp_only_layers[i]));
    json_t *c = json_pack(
        "{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:b, s:b, s:f, s:f,"
        " s:s, s:b, s:f, s:b, s:b, s:f, s:s, s:s}",
        "architectures", "Qwen3MoeForCausalLM", "model_type", "qwen3_moe",
        "vocab_size", (json_int_t)t->vocab_size, "hidden_size", (json_int_t)t->hidden_size,
        "intermediate_size", (json_int_t)t->intermediate_size,
        "moe_intermediate_size", (json_int_t)t->moe_intermediate_size,
        "num_hidden_layers", (json_int_t)t->num_hidden_layers,
        "num_attention_heads", (json_int_t)t->num_attention_heads,
        "num_key_value_heads", (json_int_t)t->num_key_value_heads, "head_dim", (json_int_t)t->head_dim,
        "num_experts", (json_int_t)t->num_experts, "num_experts_per_tok", (json_int_t)t->num_experts_per_tok,
        "decoder_sparse_step", (json_int_t)t->decoder_sparse_step, "mlp_only_layers", mlp_only,
        "norm_topk_prob", (int)t->norm_topk_prob, "tie_word_embeddings", (int)t->tie_word_embeddings,
        "rope_theta", t->rope_theta, "rms_norm_eps", t->rms_norm_eps,
        "hidden_act", "silu", "attention_bias", 0, "initializer_range", 0.02,
        "use_sliding_window", 0, "output_router_logits", 0, "router_aux_loss_coef", 0.001,
        "torch_dtype", tdt, "dtype", tdt);
    if (c && t->max_position_embeddings > 0)
        json_object_set_new(c, "max_position_embeddings", json_integer(t->max_position_embeddings));
    return c;
}

int synth_write_dir(const cfg_topology *topo, uint64_t seed, st_dtype dtype, uint64_t shard_bytes,
                    const char *out_dir, moert_err *err)
{
    plan p;
    int st = plan_make(topo, seed, dtype, &p, err);
    if (st)
        return st;
    if (!shard_bytes)
        shard_bytes = (uint64_t)2 << 30;
    size_t *first = NULL; /* first tensor of each shard, plus n at the end */
    char **shard_names = NULL;
    uint8_t *buf = NULL;
    st_writer *w = NULL;
    size_t n_shards = 0;
    const size_t esz = st_dtype_size(dtype);
    if ((st = mkdir_p(out_dir, err)))
        goto out;
    first = calloc(p.n + 1, sizeof *first);
    if (!first) {
        st = err_set(err, MOERT_ENOMEM, "synth: out of memory");
        goto out;
    }
    /* Greedy: close a shard before it would exceed shard_bytes of data. */
    for (size_t i = 0, used = 0; i < p.n; i++) {
        uint64_t nb = spec_elems(&p.ws[i]) * esz;
        if (i == 0 || (used && used + nb > shard_bytes)) {
            first[n_shards++] = i;
            used = 0;
        }
        used += nb;
    }
    first[n_shards] = p.n;
    shard_names = calloc(n_shards, sizeof *shard_names);
    size_t buf_cap = p.total < BUF_BYTES ? (size_t)p.total + esz : BUF_BYTES;
    buf = malloc(buf_cap);
    if (!shard_names || !buf) {
        st = err_set(err, MOERT_ENOMEM, "synth: out of memory");
        goto out;
    }
    const char *mv[2] = {"pt", p.meta_value};
    for (size_t s = 0; s < n_shards; s++) {
        char name[64], path[4096];
        snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n_shards);
        shard_names[s] = strdup(name);
        if (!shard_names[s]) {
            st = err_set(err, MOERT_ENOMEM, "synth: out of memory");
            goto out;
        }
        snprintf(path, sizeof path, "%s/%s", out_dir, name);
        if ((st = st_writer_open(path, &p.ws[first[s]], first[s + 1] - first[s], meta_keys, mv, 2, &w, err)))
            goto out;
        size_t fill = 0;
        const size_t cap_elems = buf_cap / esz;
        for (size_t i = first[s]; i < first[s + 1]; i++) {
            gen g = gen_for(seed, p.ws[i].name);
            uint64_t n = spec_elems(&p.ws[i]);
            for (uint64_t at = 0; at < n;) {
                uint64_t take = n - at;
                if (take > cap_elems - fill)
                    take = cap_elems - fill;
                gen_fill(g, dtype, at, take, buf + fill * esz);
                fill += (size_t)take;
                at += take;
                if (fill == cap_elems) {
                    if ((st = st_writer_write(w, buf, fill * esz, err)))
                        goto out;
                    fill = 0;
                }
            }
        }
        if (fill && (st = st_writer_write(w, buf, fill * esz, err)))
            goto out;
        st = st_writer_finish(w, err);
        w = NULL;
        if (st)
            goto out;
    }
    {
        json_t *wm = json_object();
        for (size_t s = 0; wm && s < n_shards; s++)
            for (size_t i = first[s]; i < first[s + 1]; i++)
                json_object_set_new(wm, p.ws[i].name, json_string(shard_names[s]));
        char path[4096];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_dir);
        json_t *idx = wm ? json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)p.total,
                                     "weight_map", wm)
                         : NULL;
        if ((st = write_json(path, idx, err)))
            goto out;
        snprintf(path, sizeof path, "%s/config.json", out_dir);
        st = write_json(path, config_json(topo, dtype), err);
    }
out:
    st_writer_abort(w);
    for (size_t s = 0; shard_names && s < n_shards; s++)
        free(shard_names[s]);
    free(shard_names);
    free(buf);
    free(first);
    plan_free(&p);
    return st;
}

/* ---- image form ------------------------------------------------------------------- */

int synth_open_image(const cfg_topology *topo, uint64_t seed, st_dtype dtype, st_set **out, moert_err *err)
{
    *out = NULL;
    plan p;
    int st = plan_make(topo, seed, dtype, &p, err);
    if (st)
        return st;
    const char *mv[2] = {"pt", p.meta_value};
    void *hdr = NULL;
    size_t hlen;
    uint64_t dlen;
    if ((st = st_header_encode(p.ws, p.n, meta_keys, mv, 2, &hdr, &hlen, &dlen, err)))
        goto out;
    size_t total = hlen + (size_t)dlen;
    uint8_t *img = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (img == MAP_FAILED) {
        st = err_set(err, MOERT_ENOMEM, "synth: cannot map %zu bytes for the image: %s", total, strerror(errno));
        goto out;
    }
    madvise(img, total, MADV_HUGEPAGE); /* fewer page faults for big models; a hint only */
    memcpy(img, hdr, hlen);
    const size_t esz = st_dtype_size(dtype);
    size_t at = hlen;
    for (size_t i = 0; i < p.n; i++) {
        uint64_t n = spec_elems(&p.ws[i]);
        gen_fill(gen_for(seed, p.ws[i].name), dtype, 0, n, img + at);
        at += (size_t)n * esz;
    }
    mprotect(img, total, PROT_READ); /* weights are read-only, like a file mapping */
    char label[96];
    snprintf(label, sizeof label, "synth(%s)", p.meta_value);
    st = st_open_image(img, total, label, out, err);
out:
    free(hdr);
    plan_free(&p);
    return st;
}
