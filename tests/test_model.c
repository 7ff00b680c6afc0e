/* model: binding the HF reference checkpoints by name, and every kind of mismatch. */
#include <CUnit/CUnit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../runtime/model.h"
#include "../runtime/st.h"
#include "util.h"

/* Topologies read by eye from ../shared/reference/tiny-{f32,bf16}/config.json. */
static cfg_topology tiny_f32(void)
{
    cfg_topology t = {0};
    t.vocab_size = 1024;
    t.hidden_size = 64;
    t.num_hidden_layers = 2;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 2;
    t.head_dim = 16;
    t.num_experts = 8;
    t.num_experts_per_tok = 2;
    t.moe_intermediate_size = 32;
    t.intermediate_size = 128;
    t.decoder_sparse_step = 1;
    t.norm_topk_prob = true;
    t.tie_word_embeddings = false;
    t.rope_theta = 1e6;
    t.rms_norm_eps = 1e-6;
    t.max_position_embeddings = 4096;
    return t;
}

static cfg_topology tiny_bf16(void)
{
    cfg_topology t = tiny_f32();
    t.vocab_size = 1536;
    t.hidden_size = 96;
    t.num_hidden_layers = 3;
    t.num_key_value_heads = 1;
    t.head_dim = 32;
    t.num_experts = 16;
    t.num_experts_per_tok = 4;
    t.moe_intermediate_size = 48;
    t.intermediate_size = 192;
    return t;
}

static uint32_t f32_bits_at(const model_tensor *t, size_t i)
{
    uint32_t u;
    memcpy(&u, (const uint8_t *)t->data + 4 * i, 4);
    return u;
}

static uint16_t u16_at(const model_tensor *t, size_t i)
{
    uint16_t u;
    memcpy(&u, (const uint8_t *)t->data + 2 * i, 2);
    return u;
}

static void test_reference_f32(void)
{
    const char *ref = test_shared_parts("tiny-f32");
    if (!ref) {
        TEST_SKIP("../shared/reference (tiny-f32) is absent");
        return;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/tiny-f32", ref);
    st_set *s;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 69);
    CU_ASSERT_STRING_EQUAL(st_metadata(s, "format"), "pt");
    cfg_topology t = tiny_f32();
    model_weights w;
    if (model_bind(&t, s, &w, &e) != MOERT_OK)
        printf("\n    %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(e.code, MOERT_OK);
    /* The names the topology expects are exactly the file's (HF writes them sorted). */
    model_spec *ms;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_OK);
    CU_ASSERT_EQUAL(n, st_count(s));
    for (size_t i = 0; i < n && i < st_count(s); i++)
        CU_ASSERT_STRING_EQUAL(ms[i].name, st_at(s, i)->name);
    free(ms);
    /* Values read with Python's struct from model.safetensors (header at 8 + 7432):
     * embed[0] = -0.05341556... 0xbd5aca47, lm_head[65535] = 0xbd834a84,
     * model.norm.weight[0] = 1.0598215 0x3f87a83b, layers.1 expert 7 down_proj[5] =
     * 0x3bd55f2a, layers.0 q_norm[3] = 0x3f9c56b6. */
    CU_ASSERT_EQUAL(w.embed.dtype, ST_F32);
    CU_ASSERT_EQUAL(w.embed.rows, 1024);
    CU_ASSERT_EQUAL(w.embed.cols, 64);
    CU_ASSERT_EQUAL(f32_bits_at(&w.embed, 0), 0xbd5aca47u);
    CU_ASSERT_EQUAL(f32_bits_at(&w.lm_head, 65535), 0xbd834a84u);
    CU_ASSERT_PTR_NOT_EQUAL(w.lm_head.data, w.embed.data);
    CU_ASSERT_EQUAL(w.final_norm.rows, 1);
    CU_ASSERT_EQUAL(w.final_norm.cols, 64);
    CU_ASSERT_EQUAL(f32_bits_at(&w.final_norm, 0), 0x3f87a83bu);
    CU_ASSERT_TRUE(w.layers[1].sparse);
    CU_ASSERT_EQUAL(w.layers[1].down[7].rows, 64);
    CU_ASSERT_EQUAL(w.layers[1].down[7].cols, 32);
    CU_ASSERT_EQUAL(f32_bits_at(&w.layers[1].down[7], 5), 0x3bd55f2au);
    CU_ASSERT_EQUAL(f32_bits_at(&w.layers[0].q_norm, 3), 0x3f9c56b6u);
    CU_ASSERT_STRING_EQUAL(w.layers[0].k.name, "model.layers.0.self_attn.k_proj.weight");
    CU_ASSERT_EQUAL(w.layers[0].k.rows, 32);
    CU_ASSERT_EQUAL(w.layers[0].router.rows, 8);
    /* Every byte of the data section is bound: file 1028880 - 8 - 7432 header. */
    CU_ASSERT_EQUAL(w.total_bytes, 1021440);
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_F32], 1021440);
    /* Hand count, F32 (4 B): embed row 64*4 = 256, final norm 256, lm_head 1024*64*4 = 262144;
     * per layer: norms 256+256+64+64, q 16384, k 8192, v 8192, o 16384, router 2048,
     * top-2 of experts at 3*32*64*4 = 24576 each = 49152 -> 100992; 2 layers. */
    CU_ASSERT_EQUAL(model_active_bytes_per_token(&w), 256 + 256 + 262144 + 2 * 100992);
    uint64_t fp = model_fingerprint(&w);
    CU_ASSERT_NOT_EQUAL(fp, 0);
    model_unbind(&w);
    st_close(s);
    /* Same file opened directly: same fingerprint. */
    snprintf(dir, sizeof dir, "%s/tiny-f32/model.safetensors", ref);
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(model_fingerprint(&w), fp);
    model_unbind(&w);
    /* The other reference's topology does not fit: reported by name. */
    cfg_topology other = tiny_bf16();
    CU_ASSERT_EQUAL(model_bind(&other, s, &w, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'model.embed_tokens.weight': shape [1024, 64], expected [1536, 96]"));
    CU_ASSERT_PTR_NULL(w.layers);
    CU_ASSERT_EQUAL(model_fingerprint(&w), 0);
    model_unbind(&w);
    st_close(s);
}

static void test_reference_bf16(void)
{
    const char *ref = test_shared_parts("tiny-bf16");
    if (!ref) {
        TEST_SKIP("../shared/reference (tiny-bf16) is absent");
        return;
    }
    char dir[1100];
    snprintf(dir, sizeof dir, "%s/tiny-bf16", ref);
    st_set *s;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    cfg_topology t = tiny_bf16();
    model_weights w;
    if (model_bind(&t, s, &w, &e) != MOERT_OK)
        printf("\n    %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(e.code, MOERT_OK);
    /* Python struct on model.safetensors (header at 8 + 19432), bf16 bits:
     * layers.2 q_proj[0] = 0x3c0a (0.0084228515625), embed[147455] = 0xbdc3,
     * layers.2 mlp.gate[17] = 0x391e, layers.1 post_attention_layernorm[0] = 0x3f8c (1.09375). */
    CU_ASSERT_EQUAL(u16_at(&w.layers[2].q, 0), 0x3c0a);
    CU_ASSERT_EQUAL(w.layers[2].q.rows, 128);
    CU_ASSERT_EQUAL(w.layers[2].q.cols, 96);
    CU_ASSERT_EQUAL(u16_at(&w.embed, 147455), 0xbdc3);
    CU_ASSERT_EQUAL(u16_at(&w.layers[2].router, 17), 0x391e);
    CU_ASSERT_EQUAL(u16_at(&w.layers[1].ffn_norm, 0), 0x3f8c);
    CU_ASSERT_EQUAL(w.layers[2].o.rows, 96);
    CU_ASSERT_EQUAL(w.layers[2].o.cols, 128);
    CU_ASSERT_EQUAL(w.layers[0].v.rows, 32);
    /* file 2131632 - 8 - 19432 header */
    CU_ASSERT_EQUAL(w.total_bytes, 2112192);
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_BF16], 2112192);
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_F32], 0);
    /* BF16 (2 B): embed row 192, final norm 192, lm_head 1536*96*2 = 294912; per layer:
     * norms 192+192+64+64, q 24576, k 6144, v 6144, o 24576, router 3072, top-4 experts at
     * 3*48*96*2 = 27648 each = 110592 -> 175616; 3 layers. */
    CU_ASSERT_EQUAL(model_active_bytes_per_token(&w), 192 + 192 + 294912 + 3 * 175616);
    model_unbind(&w);
    st_close(s);
}

/* ---- synthetic sets for the error cases ------------------------------------------- */

/* V8 H4 L2, heads 2 kv 1 hd 2, E2 k1, moe_I 3, I 5; sparse step 2: layer 0 dense, 1 sparse. */
static cfg_topology small(void)
{
    cfg_topology t = {0};
    t.vocab_size = 8;
    t.hidden_size = 4;
    t.num_hidden_layers = 2;
    t.num_attention_heads = 2;
    t.num_key_value_heads = 1;
    t.head_dim = 2;
    t.num_experts = 2;
    t.num_experts_per_tok = 1;
    t.moe_intermediate_size = 3;
    t.intermediate_size = 5;
    t.decoder_sparse_step = 2;
    t.rope_theta = 1e6;
    t.rms_norm_eps = 1e-6;
    return t;
}

/* Builds an image from specs with bytes (i * 13 + salt) and opens it. */
static st_set *image(const st_write_spec *sp, size_t n, uint8_t salt)
{
    void *h;
    size_t hl;
    uint64_t dl;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(st_header_encode(sp, n, NULL, NULL, 0, &h, &hl, &dl, &e), MOERT_OK);
    uint8_t *img = mmap(NULL, hl + dl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CU_ASSERT_FATAL(img != MAP_FAILED);
    memcpy(img, h, hl);
    free(h);
    for (uint64_t i = 0; i < dl; i++)
        img[hl + i] = (uint8_t)(i * 13 + salt);
    st_set *s = NULL;
    CU_ASSERT_EQUAL_FATAL(st_open_image(img, hl + dl, "small", &s, &e), MOERT_OK);
    return s;
}

/* The expected specs of topo in dtype dt, as an editable array (room for extras). */
static st_write_spec *specs_of(const cfg_topology *t, st_dtype dt, size_t *n, model_spec **keep)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(model_expected_tensors(t, keep, n, &e), MOERT_OK);
    st_write_spec *sp = calloc(*n + 4, sizeof *sp);
    for (size_t i = 0; i < *n; i++) {
        sp[i].name = (*keep)[i].name;
        sp[i].dtype = dt;
        sp[i].ndim = (*keep)[i].ndim;
        sp[i].shape[0] = (*keep)[i].shape[0];
        sp[i].shape[1] = (*keep)[i].shape[1];
    }
    return sp;
}

static size_t index_of(const st_write_spec *sp, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(sp[i].name, name) == 0)
            return i;
    CU_FAIL_FATAL("spec not found");
    return 0;
}

static void test_small_ok(void)
{
    cfg_topology t = small();
    size_t n;
    model_spec *ms;
    st_write_spec *sp = specs_of(&t, ST_BF16, &n, &ms);
    /* Hand list: embed, norm, lm_head; per layer 8 attention/norm tensors; layer 0 dense (3),
     * layer 1 router + 2 experts x 3 = 7. */
    CU_ASSERT_EQUAL(n, 3 + 2 * 8 + 3 + 7);
    for (size_t i = 1; i < n; i++)
        CU_ASSERT(strcmp(sp[i - 1].name, sp[i].name) < 0);
    /* Mixed dtypes are fine: norms in F32, the rest BF16, one F16. */
    size_t nf = index_of(sp, n, "model.norm.weight");
    sp[nf].dtype = ST_F32;
    sp[index_of(sp, n, "model.layers.0.mlp.up_proj.weight")].dtype = ST_F16;
    st_set *s = image(sp, n, 0);
    model_weights w;
    moert_err e = {0};
    if (model_bind(&t, s, &w, &e))
        printf("\n    %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(e.code, MOERT_OK);
    CU_ASSERT_FALSE(w.layers[0].sparse);
    CU_ASSERT_TRUE(w.layers[1].sparse);
    CU_ASSERT_EQUAL(w.layers[0].mlp_gate.rows, 5);
    CU_ASSERT_EQUAL(w.layers[0].mlp_down.cols, 5);
    CU_ASSERT_EQUAL(w.layers[0].mlp_up.dtype, ST_F16);
    CU_ASSERT_EQUAL(w.final_norm.dtype, ST_F32);
    CU_ASSERT_EQUAL(w.layers[1].up[1].rows, 3);
    CU_ASSERT_EQUAL(w.layers[1].down[1].cols, 3);
    CU_ASSERT_PTR_NULL(w.layers[0].gate);
    /* Bytes: F32 final norm 4*4 = 16; F16 dense up 5*4*2 = 40; BF16 everything else. */
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_F32], 16);
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_F16], 40);
    /* BF16 elements: embed 32, lm_head 32, per layer norms 4+4+2+2, q 4*4, k 2*4, v 2*4,
     * o 4*4 = 60 each (120); dense gate+down 20+20; router 8, experts 2*(12+12+12) = 72. */
    CU_ASSERT_EQUAL(w.bytes_by_dtype[ST_BF16], 2 * (32 + 32 + 120 + 40 + 8 + 72));
    CU_ASSERT_EQUAL(w.total_bytes, 16 + 40 + 2 * 304);
    /* Active: embed row 4*2 = 8, final norm 16, lm_head 64; layer 0: norms + attention
     * 60 el * 2 = 120, dense gate/up/down 40 each; layer 1: 120, router 16, top-1 of 2
     * experts = (72 el * 2 B) / 2 = 72. */
    CU_ASSERT_EQUAL(model_active_bytes_per_token(&w), 8 + 16 + 64 + (120 + 120) + (120 + 16 + 72));
    model_unbind(&w);
    st_close(s);
    free(sp);
    free(ms);
}

static void test_bind_errors(void)
{
    cfg_topology t = small();
    size_t n;
    model_spec *ms;
    moert_err e = {0};
    model_weights w;
    st_write_spec *sp = specs_of(&t, ST_F32, &n, &ms);
    /* One of each: a missing tensor, an unexpected one, a wrong shape, a wrong dtype. */
    size_t gone = index_of(sp, n, "model.layers.1.mlp.experts.1.up_proj.weight");
    memmove(&sp[gone], &sp[gone + 1], (n - gone - 1) * sizeof *sp);
    size_t m = n - 1;
    sp[m++] = (st_write_spec){"model.layers.0.self_attn.rotary_emb.inv_freq", ST_F32, 1, {1}};
    sp[index_of(sp, m, "model.layers.1.self_attn.k_norm.weight")].shape[0] = 3;
    sp[index_of(sp, m, "model.layers.0.mlp.down_proj.weight")].dtype = ST_I32;
    st_set *s = image(sp, m, 0);
    CU_ASSERT_EQUAL(model_bind(&t, s, &w, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "small: weights do not match the topology"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "missing 'model.layers.1.mlp.experts.1.up_proj.weight' [3, 4]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "unexpected 'model.layers.0.self_attn.rotary_emb.inv_freq'"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'model.layers.1.self_attn.k_norm.weight': shape [3], expected [2]"));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'model.layers.0.mlp.down_proj.weight': dtype I32, expected F32, BF16 or F16"));
    CU_ASSERT_PTR_NULL(w.layers);
    CU_ASSERT_PTR_NULL(w.expert_table);
    CU_ASSERT_EQUAL(w.total_bytes, 0);
    model_unbind(&w);
    st_close(s);
    free(sp);
    free(ms);

    /* Wrong rank. */
    sp = specs_of(&t, ST_F32, &n, &ms);
    size_t q = index_of(sp, n, "model.layers.0.self_attn.q_proj.weight");
    sp[q].ndim = 3;
    sp[q].shape[2] = 1;
    s = image(sp, n, 0);
    CU_ASSERT_EQUAL(model_bind(&t, s, &w, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'model.layers.0.self_attn.q_proj.weight': shape [4, 4, 1], expected [4, 4]"));
    st_close(s);
    free(sp);
    free(ms);

    /* Many problems: all of them counted, as many as fit shown. */
    cfg_topology big = t;
    big.num_experts = 64;
    sp = specs_of(&t, ST_F32, &n, &ms); /* the 2-expert tensors against a 64-expert topology */
    s = image(sp, n, 0);
    CU_ASSERT_EQUAL(model_bind(&big, s, &w, &e), MOERT_EFORMAT);
    /* 62 experts x 3 missing + the router's shape = 187 problems. */
    const char *more = strstr(e.msg, " more");
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "... and "));
    CU_ASSERT_PTR_NOT_NULL(more);
    int shown = 0;
    for (const char *c = e.msg; (c = strstr(c, "missing '")); c++)
        shown++;
    int rest = 0;
    const char *and = strstr(e.msg, "... and ");
    if (and)
        rest = atoi(and + 8);
    CU_ASSERT(shown > 3);
    CU_ASSERT_EQUAL(shown + 1 + rest, 62 * 3 + 1);
    st_close(s);
    free(sp);
    free(ms);
}

static void test_tied(void)
{
    cfg_topology t = small();
    t.tie_word_embeddings = true;
    size_t n;
    model_spec *ms;
    moert_err e = {0};
    model_weights w;
    st_write_spec *sp = specs_of(&t, ST_BF16, &n, &ms);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT_STRING_NOT_EQUAL(sp[i].name, "lm_head.weight");
    st_set *s = image(sp, n, 0);
    CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_PTR_EQUAL(w.lm_head.data, w.embed.data);
    CU_ASSERT_EQUAL(w.lm_head.rows, 8);
    /* embed 32 el (counted once), norm 4, layers 2*60, dense 60, router 8, experts 72 */
    CU_ASSERT_EQUAL(w.total_bytes, 2 * (32 + 4 + 120 + 60 + 8 + 72));
    uint64_t fp = model_fingerprint(&w);
    model_unbind(&w);
    st_close(s);

    /* A redundant lm_head.weight that differs from the embedding is rejected.  In data
     * order embed is first (bytes i*13) and lm_head last (bytes (592+i)*13, a different
     * pattern since 592*13 mod 256 = 16). */
    sp[n] = (st_write_spec){"lm_head.weight", ST_BF16, 2, {8, 4}};
    s = image(sp, n + 1, 0);
    CU_ASSERT_EQUAL(model_bind(&t, s, &w, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "'lm_head.weight' is present but differs from 'model.embed_tokens.weight'"));
    st_close(s);
    /* Equal to the embedding: accepted, and the fingerprint is the one without it. */
    void *h;
    size_t hl;
    uint64_t dl;
    CU_ASSERT_EQUAL_FATAL(st_header_encode(sp, n + 1, NULL, NULL, 0, &h, &hl, &dl, &e), MOERT_OK);
    uint8_t *img = mmap(NULL, hl + dl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(img, h, hl);
    free(h);
    /* spec order: n original tensors (embed first at data 0, same bytes as before), then lm_head */
    for (uint64_t i = 0; i < dl - 64; i++)
        img[hl + i] = (uint8_t)(i * 13);
    memcpy(img + hl + dl - 64, img + hl, 64);
    CU_ASSERT_STRING_EQUAL(sp[0].name, "model.embed_tokens.weight");
    CU_ASSERT_EQUAL_FATAL(st_open_image(img, hl + dl, "tied", &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
    CU_ASSERT_PTR_EQUAL(w.lm_head.data, w.embed.data);
    CU_ASSERT_EQUAL(w.total_bytes, 2 * (32 + 4 + 120 + 60 + 8 + 72));
    CU_ASSERT_EQUAL(model_fingerprint(&w), fp);
    model_unbind(&w);
    st_close(s);
    free(sp);
    free(ms);
}

static void test_topology_and_sparsity(void)
{
    moert_err e = {0};
    model_spec *ms;
    size_t n;
    cfg_topology t = small();
    t.num_experts_per_tok = 3;
    CU_ASSERT_EQUAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "num_experts_per_tok is 3, expected 1..num_experts (2)"));
    t = small();
    t.hidden_size = 0;
    CU_ASSERT_EQUAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_ECONFIG);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "hidden_size is 0"));
    t = small();
    t.decoder_sparse_step = 0;
    CU_ASSERT_EQUAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_ECONFIG);
    /* All layers dense when there are no experts: intermediate_size must be set, the
     * expert fields are ignored. */
    t = small();
    t.num_experts = 0;
    t.num_experts_per_tok = 0;
    CU_ASSERT_EQUAL_FATAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_OK);
    CU_ASSERT_EQUAL(n, 3 + 2 * (8 + 3));
    free(ms);
    /* mlp_only_layers: step 1 makes both sparse, listing layer 1 makes it dense. */
    t = small();
    t.decoder_sparse_step = 1;
    t.n_mlp_only_layers = 1;
    t.mlp_only_layers[0] = 1;
    CU_ASSERT_EQUAL_FATAL(model_expected_tensors(&t, &ms, &n, &e), MOERT_OK);
    bool l0_router = false, l1_dense = false;
    for (size_t i = 0; i < n; i++) {
        l0_router |= strcmp(ms[i].name, "model.layers.0.mlp.gate.weight") == 0;
        l1_dense |= strcmp(ms[i].name, "model.layers.1.mlp.gate_proj.weight") == 0;
    }
    CU_ASSERT_TRUE(l0_router);
    CU_ASSERT_TRUE(l1_dense);
    free(ms);
}


/* NaN and Inf weights: once loaded silently (greedy then emits token 0 forever). */
static void test_check_finite(void)
{
    cfg_topology t = small();
    size_t n;
    model_spec *ms;
    st_write_spec *sp = specs_of(&t, ST_BF16, &n, &ms);
    sp[index_of(sp, n, "model.norm.weight")].dtype = ST_F32;
    sp[index_of(sp, n, "model.layers.0.mlp.up_proj.weight")].dtype = ST_F16;
    struct {
        const char *tensor;
        size_t element;
        uint32_t bits; /* in the tensor's dtype */
        const char *msg;
    } cases[] = {
        {"model.layers.1.mlp.experts.1.down_proj.weight", 7, 0x7fc0, /* bf16 NaN: [4, 3], row 2 col 1 */
         "small: tensor 'model.layers.1.mlp.experts.1.down_proj.weight' element [2, 1] (index 7 of 12) is NaN, "
         "expected finite weights"},
        {"model.norm.weight", 3, 0xff800000u, /* f32 -Inf */
         "small: tensor 'model.norm.weight' element [3] (index 3 of 4) is Inf, expected finite weights"},
        {"model.layers.0.mlp.up_proj.weight", 19, 0x7c00, /* f16 +Inf: [5, 4] */
         "small: tensor 'model.layers.0.mlp.up_proj.weight' element [4, 3] (index 19 of 20) is Inf, expected finite "
         "weights"},
        {"model.layers.0.mlp.up_proj.weight", 0, 0xfe01, /* f16 NaN */
         "small: tensor 'model.layers.0.mlp.up_proj.weight' element [0, 0] (index 0 of 20) is NaN, expected finite "
         "weights"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        st_set *s = image(sp, n, 0);
        /* finite bytes everywhere (the image's pattern may hold NaNs), then one planted */
        for (size_t i = 0; i < st_count(s); i++)
            memset((void *)st_at(s, i)->data, 0x3c, st_at(s, i)->nbytes);
        model_weights w;
        moert_err e = {0};
        CU_ASSERT_EQUAL_FATAL(model_bind(&t, s, &w, &e), MOERT_OK);
        CU_ASSERT_EQUAL(model_check_finite(&w, &e), MOERT_OK);
        const st_tensor *x = st_find(s, cases[c].tensor);
        CU_ASSERT_PTR_NOT_NULL_FATAL(x);
        size_t es = st_dtype_size(x->dtype);
        memcpy((uint8_t *)x->data + cases[c].element * es, &cases[c].bits, es); /* little-endian host */
        CU_ASSERT_EQUAL(model_check_finite(&w, &e), MOERT_EFORMAT);
        CU_ASSERT_STRING_EQUAL(e.msg, cases[c].msg);
        model_unbind(&w);
        st_close(s);
    }
    free(sp);
    free(ms);
}

void suite_model(void)
{
    CU_pSuite s = CU_add_suite("model", NULL, NULL);
    CU_add_test(s, "reference tiny-f32", test_reference_f32);
    CU_add_test(s, "reference tiny-bf16", test_reference_bf16);
    CU_add_test(s, "small topology, mixed dtypes", test_small_ok);
    CU_add_test(s, "bind errors", test_bind_errors);
    CU_add_test(s, "tied embeddings", test_tied);
    CU_add_test(s, "topology checks and sparsity", test_topology_and_sparsity);
    CU_add_test(s, "NaN and Inf weights are named (model_check_finite)", test_check_finite);
}
