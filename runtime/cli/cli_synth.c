/* moert synth: a seeded random checkpoint in Hugging Face layout for any topology. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cli_common.h"
#include "../ggufmap.h"
#include "../synth.h"

static const char synth_usage[] =
    "usage: moert synth CONFIG|MODEL_DIR --out DIR [--seed S] [--dtype bf16|f32|f16] [--shard-mb N]\n"
    "       moert synth CONFIG|MODEL_DIR --format gguf --out FILE.gguf [--seed S]\n"
    "                   [--dtype f32|f16|bf16|q8_0|q4_0|q5_0|q4_k_m|q5_k_m|q6_k]\n"
    "  writes config.json, sharded model-*.safetensors and model.safetensors.index.json;\n"
    "  the same (topology, seed, dtype) always gives the same bytes. Defaults: the config's\n"
    "  synth seed and dtype when it has them, else seed 0 and bf16; shards of 2048 MiB.\n"
    "  --format gguf writes one llama.cpp GGUF file instead: the same seeded weights (in the\n"
    "  config's synth dtype, bf16 by default) encoded in the given type mix (default q8_0).\n";

int cli_synth(int argc, char **argv, moert_err *err)
{
    const char *path = NULL, *out = NULL, *seed_s = NULL, *dtype_s = NULL, *shard_s = NULL, *format = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(synth_usage, stdout);
            return MOERT_OK;
        }
        const char **slot = !strcmp(a, "--out")      ? &out
                            : !strcmp(a, "--seed")   ? &seed_s
                            : !strcmp(a, "--dtype")  ? &dtype_s
                            : !strcmp(a, "--shard-mb") ? &shard_s
                            : !strcmp(a, "--format") ? &format
                                                       : NULL;
        if (slot) {
            if (i + 1 >= argc)
                return err_set(err, MOERT_EUSAGE, "%s needs a value", a);
            *slot = argv[++i];
        } else if (a[0] == '-') {
            return err_set(err, MOERT_EUSAGE, "unknown option %s\n%s", a, synth_usage);
        } else if (!path) {
            path = a;
        } else {
            return err_set(err, MOERT_EUSAGE, "unexpected argument '%s'\n%s", a, synth_usage);
        }
    }
    if (!path || !out)
        return err_set(err, MOERT_EUSAGE, "need CONFIG and --out DIR\n%s", synth_usage);
    cfg_config *cfg = malloc(sizeof *cfg);
    if (!cfg)
        return err_set(err, MOERT_ENOMEM, "out of memory");
    cli_overrides none = {0};
    int st = cli_load_config(path, &none, CFG_ALLOW_MISSING_WEIGHTS, cfg, err);
    int64_t seed = cfg->weights.synth ? (int64_t)cfg->weights.synth_seed : 0, shard_mb = 2048;
    st_dtype dt = ST_BF16;
    if (!st && cfg->weights.synth)
        dt = cfg->weights.synth_dtype == CFG_DTYPE_F32 ? ST_F32
             : cfg->weights.synth_dtype == CFG_DTYPE_F16 ? ST_F16
                                                         : ST_BF16;
    if (!st && seed_s)
        st = cli_parse_i64("--seed", seed_s, 0, INT64_MAX, &seed, err);
    if (!st && shard_s)
        st = cli_parse_i64("--shard-mb", shard_s, 1, 1 << 20, &shard_mb, err);
    bool gguf = false;
    if (!st && format) {
        if (!strcmp(format, "gguf"))
            gguf = true;
        else if (strcmp(format, "safetensors"))
            st = err_set(err, MOERT_EUSAGE, "--format: expected safetensors or gguf, got '%s'", format);
    }
    if (!st && gguf && shard_s)
        st = err_set(err, MOERT_EUSAGE, "--shard-mb applies to safetensors output, not --format gguf");
    const char *mix = dtype_s ? dtype_s : "q8_0";
    if (!st && gguf && !ggufmap_known_mix(mix))
        st = err_set(err, MOERT_EUSAGE, "--dtype: expected f32, f16, bf16, q8_0, q4_0, q5_0, q4_k_m, q5_k_m or q6_k "
                     "with --format gguf, got '%s'", mix);
    if (!st && gguf) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        st_set *img = NULL;
        st = synth_open_image(&cfg->topo, (uint64_t)seed, dt, &img, err);
        if (!st)
            st = ggufmap_write(out, &cfg->topo, img, mix, err);
        st_close(img);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (!st)
            fprintf(stderr, "moert synth: wrote %s (seed %lld, %s weights as %s) in %.1f s\n", out, (long long)seed,
                    st_dtype_name(dt), mix,
                    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
        free(cfg);
        return st;
    }
    if (!st && dtype_s) {
        if (!strcmp(dtype_s, "bf16"))
            dt = ST_BF16;
        else if (!strcmp(dtype_s, "f32"))
            dt = ST_F32;
        else if (!strcmp(dtype_s, "f16"))
            dt = ST_F16;
        else
            st = err_set(err, MOERT_EUSAGE, "--dtype: expected bf16, f32 or f16, got '%s'", dtype_s);
    }
    if (!st) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        st = synth_write_dir(&cfg->topo, (uint64_t)seed, dt, (uint64_t)shard_mb << 20, out, err);
        if (st == MOERT_ECONFIG) /* a topology no weights can have: the config's */
            err_prefix(err, "%s", path);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (!st)
            fprintf(stderr, "moert synth: wrote %s (seed %lld, %s) in %.1f s\n", out,
                    (long long)seed, st_dtype_name(dt),
                    (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9);
    }
    free(cfg);
    return st;
}
