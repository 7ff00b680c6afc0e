/* A trace file checked by `moert validate` against the shipped contract (cli_validate,
 * text or --json output to /dev/null): pass, violations (exit 1) or a message (exit 2). */
#include <string.h>

#include "../../runtime/cli/cli.h"
#include "../../runtime/trace/trace_file.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_stdout();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("fuzz.trace", data, size);
    char a0[] = "validate", a1[] = "contracts/qwen3moe-trace-v1.yaml", a3[] = "--json";
    char a2[700];
    snprintf(a2, sizeof a2, "%s", path);
    char *argv[] = {a0, a1, a2, a3, NULL};
    moert_err e = {0};
    int st = cli_validate(size % 2 ? 4 : 3, argv, &e);
    fuzz_check_status(st, &e, true);
    /* the reader alone, and the topology it records */
    trace_file tf;
    moert_err e2 = {0};
    st = trace_file_open(path, &tf, &e2);
    fuzz_check_status(st, &e2, false);
    if (!st) {
        for (size_t i = 0; i < tf.n_rings; i++)
            FUZZ_ASSERT(tf.rings[i].stats && tf.rings[i].meta && tf.rings[i].n >= 0 && tf.rings[i].width >= 1);
        cfg_topology t;
        st = trace_manifest_topology(tf.manifest, &t, &e2);
        fuzz_check_status(st, &e2, false);
        trace_file_close(&tf);
    }
    return 0;
}
