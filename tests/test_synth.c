/* synth: hand-checked float conversions, determinism (seed, thread count, file vs image),
 * value statistics and the HF directory layout. */
#include <CUnit/CUnit.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../runtime/model.h"
#include "../runtime/synth.h"
#include "util.h"

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_bf16(void)
{
    CU_ASSERT_EQUAL(synth_f32_to_bf16(1.0f), 0x3f80);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(-2.5f), 0xc020);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(0.0f), 0x0000);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(-0.0f), 0x8000);
    /* 1/3 = 0x3eaaaaab: dropped half 0xaaab > 0x8000 rounds up */
    CU_ASSERT_EQUAL(synth_f32_to_bf16(1.0f / 3.0f), 0x3eab);
    /* ties: 0x3f808000 is halfway between 0x3f80 (even) and 0x3f81 -> 0x3f80;
     * 0x3f818000 halfway between 0x3f81 and 0x3f82 (even) -> 0x3f82 */
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x3f808000u)), 0x3f80);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x3f818000u)), 0x3f82);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x3f808001u)), 0x3f81);
    /* 65504 = 0x477fe000 -> 0x4780 (65536: bf16 has 8 mantissa bits) */
    CU_ASSERT_EQUAL(synth_f32_to_bf16(65504.0f), 0x4780);
    /* smallest float subnormal 0x00000001 -> +0; 0x00008000 is a tie to even (0) */
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x00000001u)), 0x0000);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x00018000u)), 0x0002);
    /* largest finite float rounds up to Inf; Inf stays; NaN stays NaN with its sign */
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0x7f7fffffu)), 0x7f80);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(INFINITY), 0x7f80);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(-INFINITY), 0xff80);
    uint16_t n = synth_f32_to_bf16(bits_f32(0x7f800001u)); /* signalling NaN, payload in low bits */
    CU_ASSERT((n & 0x7f80) == 0x7f80 && (n & 0x7f) != 0);
    CU_ASSERT_EQUAL(synth_f32_to_bf16(bits_f32(0xffc00000u)), 0xffc0);
}

static void test_f16(void)
{
    /* Cross-checked with Python's struct.pack('<e', x) (round-half-even). */
    CU_ASSERT_EQUAL(synth_f32_to_f16(1.0f), 0x3c00);
    CU_ASSERT_EQUAL(synth_f32_to_f16(-2.5f), 0xc100);
    CU_ASSERT_EQUAL(synth_f32_to_f16(-0.0f), 0x8000);
    CU_ASSERT_EQUAL(synth_f32_to_f16(1.0f / 3.0f), 0x3555);
    CU_ASSERT_EQUAL(synth_f32_to_f16(0.1f), 0x2e66);
    CU_ASSERT_EQUAL(synth_f32_to_f16(65504.0f), 0x7bff);  /* largest half */
    CU_ASSERT_EQUAL(synth_f32_to_f16(65519.0f), 0x7bff);  /* below the halfway point */
    CU_ASSERT_EQUAL(synth_f32_to_f16(65520.0f), 0x7c00);  /* tie between 65504 (odd) and 2^16 -> Inf */
    CU_ASSERT_EQUAL(synth_f32_to_f16(1e6f), 0x7c00);
    CU_ASSERT_EQUAL(synth_f32_to_f16(-INFINITY), 0xfc00);
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1.0f, -14)), 0x0400); /* smallest normal */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1.0f, -24)), 0x0001); /* smallest subnormal */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1.0f, -25)), 0x0000); /* tie with 0 (even) */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1.0f, -25) * 1.0000001f), 0x0001);
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(3.0f, -25)), 0x0002); /* 1.5 units: tie -> 2 */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(5.0f, -25)), 0x0002); /* 2.5 units: tie -> 2 */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1.0f, -30)), 0x0000);
    CU_ASSERT_EQUAL(synth_f32_to_f16(-ldexpf(1.0f, -24)), 0x8001);
    /* largest subnormal (1023 units) + just under half a unit stays; 1023.5 units -> 0x0400 */
    CU_ASSERT_EQUAL(synth_f32_to_f16(ldexpf(1023.5f, -24)), 0x0400);
    /* 1 + 2^-11 is a tie between 0x3c00 (even) and 0x3c01 */
    CU_ASSERT_EQUAL(synth_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
    CU_ASSERT_EQUAL(synth_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
    uint16_t n = synth_f32_to_f16(NAN);
    CU_ASSERT((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
    n = synth_f32_to_f16(bits_f32(0x7f800001u)); /* payload only in bits dropped by the shift */
    CU_ASSERT((n & 0x7c00) == 0x7c00 && (n & 0x3ff) != 0);
}

/* V4096 H64 L2, heads 4 kv 2 hd 16, E4 k2, moe_I 32, I 96, sparse step 2 (layer 0 dense).
 * The embedding (262144 elements) is large enough for the parallel path. */
static cfg_topology topo(void)
{
    cfg_topology t = {0};
    t.vocab_size = 4096;
    t.hidden_size = 64;
    t.num_hidden_layers = 2;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 2;
    t.head_dim = 16;
    t.num_experts = 4;
    t.num_experts_per_tok = 2;
    t.moe_intermediate_size = 32;
    t.intermediate_size = 96;
    t.decoder_sparse_step = 2;
    t.norm_topk_prob = true;
    t.rope_theta = 1e6;
    t.rms_norm_eps = 1e-6;
    t.max_position_embeddings = 4096;
    return t;
}

static uint64_t image_fingerprint(const cfg_topology *t, uint64_t seed, st_dtype dt)
{
    st_set *s;
    moert_err e = {0};
    if (synth_open_image(t, seed, dt, &s, &e) != MOERT_OK) {
        printf("\n    %s\n", e.msg);
        CU_FAIL("synth_open_image");
        return 0;
    }
    model_weights w;
    uint64_t fp = 0;
    if (model_bind(t, s, &w, &e) == MOERT_OK)
        fp = model_fingerprint(&w);
    else
        printf("\n    %s\n", e.msg);
    model_unbind(&w);
    st_close(s);
    return fp;
}

static void test_determinism(void)
{
    cfg_topology t = topo();
    uint64_t a = image_fingerprint(&t, 7, ST_BF16), b = image_fingerprint(&t, 7, ST_BF16);
    CU_ASSERT_NOT_EQUAL(a, 0);
    CU_ASSERT_EQUAL(a, b);
    CU_ASSERT_NOT_EQUAL(image_fingerprint(&t, 8, ST_BF16), a);
    CU_ASSERT_NOT_EQUAL(image_fingerprint(&t, 7, ST_F16), a);

    /* One thread versus two: identical bytes, tensor by tensor. */
    int saved = omp_get_max_threads();
    st_set *s1, *s2;
    moert_err e = {0};
    omp_set_num_threads(1);
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 7, ST_F32, &s1, &e), MOERT_OK);
    omp_set_num_threads(2);
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 7, ST_F32, &s2, &e), MOERT_OK);
    omp_set_num_threads(saved);
    CU_ASSERT_EQUAL_FATAL(st_count(s1), st_count(s2));
    for (size_t i = 0; i < st_count(s1); i++) {
        const st_tensor *x = st_at(s1, i), *y = st_at(s2, i);
        CU_ASSERT_STRING_EQUAL(x->name, y->name);
        CU_ASSERT_EQUAL(x->nbytes, y->nbytes);
        CU_ASSERT_EQUAL(memcmp(x->data, y->data, x->nbytes), 0);
    }
    st_close(s1);
    st_close(s2);

    /* Pinned: this topology, seed 42, BF16, recorded when the generator was written.  It
     * changes only if the generator, the value rule or the fingerprint encoding changes,
     * which would silently invalidate every recorded trace. */
    uint64_t pin = image_fingerprint(&t, 42, ST_BF16);
    if (pin != UINT64_C(0xc6c54b14a8822d53))
        printf("\n    pinned fingerprint now 0x%016llx\n", (unsigned long long)pin);
    CU_ASSERT_EQUAL(pin, UINT64_C(0xc6c54b14a8822d53));
}

static void test_values(void)
{
    cfg_topology t = topo();
    st_set *f, *b, *h;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 3, ST_F32, &f, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 3, ST_BF16, &b, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 3, ST_F16, &h, &e), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(st_metadata(b, "moert_synth"), "seed=3 dtype=BF16");
    CU_ASSERT_STRING_EQUAL(st_metadata(b, "format"), "pt");
    /* Linear weights: uniform on +-sqrt(3)*0.02, so mean 0 and std 0.02. */
    const st_tensor *emb = st_find(f, "model.embed_tokens.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(emb);
    const float *v = emb->data;
    size_t n = emb->nbytes / 4;
    double sum = 0, sq = 0, lo = 1, hi = -1;
    for (size_t i = 0; i < n; i++) {
        sum += v[i];
        sq += (double)v[i] * v[i];
        lo = v[i] < lo ? v[i] : lo;
        hi = v[i] > hi ? v[i] : hi;
    }
    double mean = sum / (double)n, sd = sqrt(sq / (double)n - mean * mean);
    CU_ASSERT(fabs(mean) < 3e-4);          /* standard error 0.02 / sqrt(262144) = 4e-5 */
    CU_ASSERT(fabs(sd - 0.02) < 0.0002);   /* within 1% */
    CU_ASSERT(hi <= 0.0346411 && hi > 0.0346);
    CU_ASSERT(lo >= -0.0346411 && lo < -0.0346);
    /* Norm weights: 1 + uniform(+-0.1). */
    const char *norms[] = {"model.norm.weight", "model.layers.1.input_layernorm.weight",
                           "model.layers.0.post_attention_layernorm.weight", "model.layers.1.self_attn.q_norm.weight"};
    for (int k = 0; k < 4; k++) {
        const st_tensor *nt = st_find(f, norms[k]);
        CU_ASSERT_PTR_NOT_NULL_FATAL(nt);
        const float *nv = nt->data;
        bool in = true, varied = false;
        for (size_t i = 0; i < nt->nbytes / 4; i++) {
            in &= nv[i] >= 0.9f && nv[i] <= 1.1f;
            varied |= nv[i] != nv[0];
        }
        CU_ASSERT(in);
        CU_ASSERT(varied);
    }
    /* Different tensors get different streams. */
    CU_ASSERT_NOT_EQUAL(memcmp(st_find(f, "model.layers.0.self_attn.q_proj.weight")->data,
                               st_find(f, "model.layers.0.self_attn.o_proj.weight")->data, 64 * 64 * 4), 0);
    /* Every dtype holds the same values: BF16/F16 are the F32 values rounded. */
    for (size_t i = 0; i < st_count(f); i++) {
        const st_tensor *x = st_at(f, i), *y = st_at(b, i), *z = st_at(h, i);
        CU_ASSERT_EQUAL_FATAL(y->nbytes * 2, x->nbytes);
        const float *xv = x->data;
        const uint16_t *yv = y->data, *zv = z->data;
        size_t bad = 0;
        for (size_t j = 0; j < x->nbytes / 4; j++)
            bad += yv[j] != synth_f32_to_bf16(xv[j]) || zv[j] != synth_f32_to_f16(xv[j]);
        CU_ASSERT_EQUAL(bad, 0);
    }
    st_close(f);
    st_close(b);
    st_close(h);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (fread(b, 1, (size_t)n, f) != (size_t)n)
        n = 0;
    b[n] = '\0';
    fclose(f);
    return b;
}

static void test_dir_form(void)
{
    cfg_topology t = topo();
    char dir[600];
    snprintf(dir, sizeof dir, "%s/synth/a/b", test_tmpdir()); /* created with parents */
    moert_err e = {0};
    /* 100 KB shards: the 512 KB bf16 embedding gets a shard of its own. */
    const uint64_t shard = 100000;
    CU_ASSERT_EQUAL_FATAL(synth_write_dir(&t, 11, ST_BF16, shard, dir, &e), MOERT_OK);
    st_set *s;
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    model_weights w;
    CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(model_fingerprint(&w), image_fingerprint(&t, 11, ST_BF16));
    /* Shards: named K-of-N, in name order, none over the limit unless it holds one tensor. */
    size_t nf = st_file_count(s);
    CU_ASSERT(nf >= 3);
    uint64_t *bytes = calloc(nf, sizeof *bytes);
    size_t *count = calloc(nf, sizeof *count);
    int prev_file = 0;
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *x = st_at(s, i);
        bytes[x->file_index] += x->nbytes;
        count[x->file_index]++;
        CU_ASSERT(x->file_index >= prev_file); /* sorted names never go back a shard */
        prev_file = x->file_index;
    }
    /* The index maps each tensor to the shard that holds it (st_open checks this too). */
    char ip[700];
    snprintf(ip, sizeof ip, "%s/model.safetensors.index.json", dir);
    json_error_t je0;
    json_t *ix = json_load_file(ip, 0, &je0);
    json_t *wm = json_object_get(ix, "weight_map");
    CU_ASSERT_EQUAL(json_object_size(wm), st_count(s));
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *x = st_at(s, i);
        const char *in = strrchr(st_file_path(s, (size_t)x->file_index), '/') + 1;
        CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(wm, x->name)), in);
    }
    json_decref(ix);
    uint64_t total = 0;
    for (size_t k = 0; k < nf; k++) {
        char want[64];
        snprintf(want, sizeof want, "/model-%05zu-of-%05zu.safetensors", k + 1, nf);
        CU_ASSERT_PTR_NOT_NULL(strstr(st_file_path(s, k), want));
        CU_ASSERT(bytes[k] <= shard || count[k] == 1);
        total += bytes[k];
    }
    CU_ASSERT_EQUAL(total, w.total_bytes);
    free(bytes);
    free(count);
    model_unbind(&w);
    st_close(s);

    /* The index's total_size and config.json's hub spelling. */
    char p[700];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    json_error_t je;
    json_t *idx = json_load_file(p, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(idx);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")),
                    (json_int_t)total);
    json_decref(idx);
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_t *c = json_load_file(p, 0, &je);
    CU_ASSERT_PTR_NOT_NULL_FATAL(c);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_array_get(json_object_get(c, "architectures"), 0)),
                           "Qwen3MoeForCausalLM");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "model_type")), "qwen3_moe");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(c, "torch_dtype")), "bfloat16");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(c, "num_experts")), 4);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(c, "moe_intermediate_size")), 32);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(c, "decoder_sparse_step")), 2);
    CU_ASSERT_EQUAL(json_array_size(json_object_get(c, "mlp_only_layers")), 0);
    CU_ASSERT(json_is_false(json_object_get(c, "tie_word_embeddings")));
    CU_ASSERT(json_is_true(json_object_get(c, "norm_topk_prob")));
    CU_ASSERT_EQUAL(json_real_value(json_object_get(c, "rms_norm_eps")), 1e-6);
    CU_ASSERT_EQUAL(json_real_value(json_object_get(c, "rope_theta")), 1e6);
    json_decref(c);
    char *txt = slurp(p);
    CU_ASSERT_PTR_NULL(strstr(txt, "9999")); /* shortest round-trip reals, not 9.9999999999999995e-07 */
    free(txt);

    /* Rewriting in place with one shard (default size) gives the same weights. */
    CU_ASSERT_EQUAL_FATAL(synth_write_dir(&t, 11, ST_BF16, 0, dir, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_file_count(s), 1);
    CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(model_fingerprint(&w), image_fingerprint(&t, 11, ST_BF16));
    model_unbind(&w);
    st_close(s);
}

static void test_errors(void)
{
    cfg_topology t = topo();
    st_set *s;
    moert_err e = {0};
    CU_ASSERT_EQUAL(synth_open_image(&t, 1, ST_I32, &s, &e), MOERT_EUSAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "dtype I32, expected F32, BF16 or F16"));
    CU_ASSERT_PTR_NULL(s);
    t.num_key_value_heads = 0;
    CU_ASSERT_EQUAL(synth_open_image(&t, 1, ST_BF16, &s, &e), MOERT_ECONFIG);
    CU_ASSERT_EQUAL(synth_write_dir(&t, 1, ST_BF16, 0, test_tmpdir(), &e), MOERT_ECONFIG);
    t = topo();
    char p[600];
    snprintf(p, sizeof p, "%s/afile", test_tmpdir());
    FILE *f = fopen(p, "w");
    fclose(f);
    snprintf(p, sizeof p, "%s/afile/sub", test_tmpdir());
    CU_ASSERT_EQUAL(synth_write_dir(&t, 1, ST_BF16, 0, p, &e), MOERT_EIO);
    /* Tied embeddings: no lm_head.weight is written, and it binds. */
    t.tie_word_embeddings = true;
    CU_ASSERT_EQUAL_FATAL(synth_open_image(&t, 1, ST_BF16, &s, &e), MOERT_OK);
    CU_ASSERT_PTR_NULL(st_find(s, "lm_head.weight"));
    model_weights w;
    CU_ASSERT_EQUAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_PTR_EQUAL(w.lm_head.data, w.embed.data);
    model_unbind(&w);
    st_close(s);
}

void suite_synth(void)
{
    CU_pSuite s = CU_add_suite("synth", NULL, NULL);
    CU_add_test(s, "bf16 rounding", test_bf16);
    CU_add_test(s, "f16 rounding", test_f16);
    CU_add_test(s, "determinism", test_determinism);
    CU_add_test(s, "values", test_values);
    CU_add_test(s, "directory form", test_dir_form);
    CU_add_test(s, "errors", test_errors);
}
