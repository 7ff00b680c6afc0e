/* A GGUF file: its bytes through the reader (in memory), and when they parse, through the
 * llama.cpp-to-hub mapping (topology, tensor views) and the tokenizer builder, as
 * `moert run FILE.gguf` would take them.  Invariants: every tensor of a valid file lies
 * inside it, no two overlap, each holds whole rows of whole blocks; every string of a
 * string array lies inside the file. */
#include <stdlib.h>
#include <string.h>

#include "../../runtime/ggufmap.h"
#include "../../runtime/model.h"
#include "../../runtime/tok.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static int cmp_off(const void *a, const void *b)
{
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_file *g = NULL;
    moert_err e = {0};
    int st = gguf_open_memory(data, size, "fuzz.gguf", &g, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    size_t n = gguf_tensor_count(g);
    const gguf_tensor **by_off = malloc((n ? n : 1) * sizeof *by_off);
    FUZZ_ASSERT(by_off);
    for (size_t i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        FUZZ_ASSERT(gguf_tensor_find(g, t->name) == t);
        const uint8_t *p = t->data;
        FUZZ_ASSERT(p >= data && t->nbytes <= size && p - data <= (ptrdiff_t)(size - t->nbytes));
        FUZZ_ASSERT(st_dtype_row_bytes(t->dtype, (uint64_t)t->ne[0]) > 0);
        by_off[i] = t;
    }
    qsort(by_off, n, sizeof *by_off, cmp_off);
    for (size_t i = 1; i < n; i++)
        FUZZ_ASSERT(by_off[i - 1]->offset + by_off[i - 1]->nbytes <= by_off[i]->offset || by_off[i - 1]->nbytes == 0);
    free(by_off);
    for (size_t i = 0; i < gguf_kv_count(g); i++) {
        const gguf_kv *kv = gguf_kv_at(g, i);
        if (kv->type == GGUF_V_ARRAY && kv->arr_type == GGUF_V_STRING)
            for (uint64_t k = 0; k < kv->arr_n && k < 64; k++) {
                gguf_str s = gguf_arr_str(g, kv, k);
                FUZZ_ASSERT(s.len == 0 || ((const uint8_t *)s.p >= data && (const uint8_t *)s.p + s.len <= data + size));
            }
    }
    cfg_topology topo;
    st = ggufmap_topology(g, &topo, &e);
    fuzz_check_status(st, &e, false);
    if (gguf_kv_find(g, "tokenizer.ggml.tokens")) {
        tok_tokenizer *t = NULL;
        st = tok_load_gguf(g, &t, &e);
        fuzz_check_status(st, &e, false);
        tok_free(t);
    }
    gguf_close(g);
    /* the whole model path, from a file as run opens it */
    st_set *set = NULL;
    const char *path = fuzz_file("model.gguf", data, size);
    st = ggufmap_open_weights(path, &set, &e);
    fuzz_check_status(st, &e, false);
    if (!st) {
        cfg_topology t2;
        gguf_file *g2 = NULL;
        FUZZ_ASSERT(gguf_open(path, &g2, &e) == MOERT_OK);
        FUZZ_ASSERT(ggufmap_topology(g2, &t2, &e) == MOERT_OK);
        gguf_close(g2);
        model_weights w;
        st = model_bind(&t2, set, &w, &e);
        FUZZ_ASSERT(st == MOERT_OK); /* the mapping checked every tensor already */
        model_unbind(&w);
        st_close(set);
    }
    return 0;
}
