/* A contract YAML, then resolved against two topologies: every resolved entry accepts the
 * shape it declares and refuses one it does not. */
#include <string.h>

#include "../../runtime/contract.h"
#include "fuzz.h"

static ctr_contract ctr;

static cfg_topology topology(bool tied)
{
    cfg_topology t = {0}; /* configs/qwen3moe.yaml's shape */
    t.vocab_size = 151936;
    t.hidden_size = 128;
    t.num_hidden_layers = 4;
    t.num_attention_heads = 4;
    t.num_key_value_heads = 2;
    t.head_dim = 48;
    t.num_experts = 16;
    t.num_experts_per_tok = 4;
    t.moe_intermediate_size = 64;
    t.intermediate_size = tied ? 0 : 256;
    t.decoder_sparse_step = 1;
    t.n_mlp_only_layers = tied ? 0 : 1;
    t.norm_topk_prob = !tied;
    t.tie_word_embeddings = tied;
    t.rope_theta = 1e6;
    t.rms_norm_eps = 1e-6;
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("contract.yaml", data, size);
    moert_err e = {0};
    int st = ctr_load(path, &ctr, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    FUZZ_ASSERT(ctr.n_tensors >= 1 && ctr.n_tensors <= CTR_MAX_TENSORS);
    for (int k = 0; k < 2; k++) {
        cfg_topology t = topology(k == 1);
        FUZZ_ASSERT(cfg_check_topology(&t, "fuzz", &e) == MOERT_OK);
        st = ctr_resolve(&ctr, &t, &e);
        fuzz_check_status(st, &e, false);
        if (st)
            continue;
        for (int i = 0; i < ctr.n_tensors; i++) {
            const ctr_tensor *ct = &ctr.tensors[i];
            int64_t shape[CTR_MAX_DIMS];
            for (int d = 0; d < ct->ndim; d++)
                shape[d] = ct->dims[d] == CTR_DIM_FREE ? 3 : ct->dims[d];
            FUZZ_ASSERT(ctr_check_shape(ct, NULL, ct->ndim, shape, ct->dtype, &e) == MOERT_OK);
            FUZZ_ASSERT(ctr_find(&ctr, ct->stage, ct->suffix) != NULL);
            shape[ct->ndim - 1] = 0; /* never a size */
            FUZZ_ASSERT(ctr_check_shape(ct, "x", ct->ndim, shape, ct->dtype, &e) == MOERT_ECHECK);
        }
    }
    return 0;
}
