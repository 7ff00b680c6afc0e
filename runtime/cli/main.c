/* moert: argument dispatch only.  Subcommands live in runtime/cli_*.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../ops/ops.h"
#include "cli.h"

static const cli_command commands[] = {
    {"run", cli_run, "load a config or model directory, prefill, generate"},
    {"plan", cli_plan, "print the resolved topology, static schedule and arena plan"},
    {"bench", cli_bench, "prefill / decode speed against the memory roofline"},
    {"synth", cli_synth, "write a seeded random checkpoint for a topology"},
    {"validate", cli_validate, "check a trace against a contract (exit 0 pass, 1 violations)"},
    {"replay", cli_replay, "re-run a recorded trace and prove it bit-exact, or name the divergence"},
    {"diff", cli_diff, "per-stage comparison of two traces or a trace and a HF reference"},
    {"tokenize", cli_tokenize, "text on stdin -> token ids (JSON array)"},
    {"detokenize", cli_detokenize, "token ids on stdin -> text"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "moert %s: static, deterministic Qwen3-MoE inference\n\nusage: moert COMMAND [ARGS]\n\n",
            MOERT_VERSION);
    for (const cli_command *c = commands; c->name; c++)
        fprintf(f, "  %-12s %s\n", c->name, c->summary);
    fprintf(f, "\nmoert COMMAND --help for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    /* MOERT_KERNELS picks a kernel level (all give identical results): for comparing them. */
    const char *kern = getenv("MOERT_KERNELS");
    if (kern && *kern) {
        int lv = !strcmp(kern, "scalar") ? OPS_LEVEL_SCALAR : !strcmp(kern, "avx2") ? OPS_LEVEL_AVX2
               : !strcmp(kern, "avx512") ? OPS_LEVEL_AVX512 : -1;
        if (lv < 0 || (ops_level)lv > ops_level_available()) {
            fprintf(stderr, "moert: MOERT_KERNELS is '%s', expected scalar, avx2 or avx512 (this CPU runs up to %s)\n",
                    kern, ops_level_name(ops_level_available()));
            return 2;
        }
        ops_set_level((ops_level)lv);
    }
    /* after MOERT_KERNELS: it names the kernel family in use */
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        char text[1024];
        ver_format(text, sizeof text);
        fputs(text, stdout);
        return 0;
    }
    for (const cli_command *c = commands; c->name; c++) {
        if (strcmp(argv[1], c->name) != 0)
            continue;
        moert_err err = {0};
        int st = c->fn(argc - 1, argv + 1, &err);
        if (st != MOERT_OK && err.msg[0])
            fprintf(stderr, "moert %s: %s\n", c->name, err.msg);
        else if (st != MOERT_OK)
            fprintf(stderr, "moert %s: failed (%s)\n", c->name, err_name(st));
        return moert_exit_code(st);
    }
    fprintf(stderr, "moert: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
