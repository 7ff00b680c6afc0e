/* A trace file checked against the shipped contract: the validate engine (both drop
 * policies) and its JUnit writer, the CLI's printing (text or --json to /dev/null), the
 * reader alone, the topology it records and replay's self-consistency check. */
#include <string.h>

#include "../../runtime/cli/cli.h"
#include "../../runtime/trace/replay.h"
#include "../../runtime/trace/trace_file.h"
#include "../../runtime/trace/validate.h"
#include "fuzz.h"

static const char contract[] = "contracts/qwen3moe-trace-v1.yaml";

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
    /* the engine: a report exactly when both inputs were readable; violations <=> ECHECK */
    trace_vopts o = {.allow_drops = size % 3 == 0};
    json_t *rep = NULL;
    moert_err e = {0};
    int st = trace_validate(contract, path, &o, &rep, &e);
    fuzz_check_status(st, &e, true);
    FUZZ_ASSERT((rep != NULL) == (st == MOERT_OK || st == MOERT_ECHECK));
    if (rep) {
        json_int_t nv = json_integer_value(json_object_get(rep, "violation_count"));
        FUZZ_ASSERT((nv == 0) == (st == MOERT_OK));
        FUZZ_ASSERT(json_array_size(json_object_get(rep, "violations")) <= TRACE_VIOLATIONS_KEPT);
        char *x = trace_junit_xml(rep);
        FUZZ_ASSERT(x != NULL && strstr(x, "</testsuites>") != NULL);
        free(x);
        json_decref(rep);
    }
    /* the CLI around it */
    char a0[] = "validate", a1[sizeof contract], a3[] = "--json";
    char a2[700];
    memcpy(a1, contract, sizeof contract);
    snprintf(a2, sizeof a2, "%s", path);
    char *argv[] = {a0, a1, a2, a3, NULL};
    moert_err e1 = {0};
    st = cli_validate(size % 2 ? 4 : 3, argv, &e1);
    fuzz_check_status(st, &e1, true);
    /* the reader alone, the topology it records, and whether it agrees with itself */
    trace_file tf;
    moert_err e2 = {0};
    st = trace_file_open(path, &tf, &e2);
    fuzz_check_status(st, &e2, false);
    if (!st) {
        for (size_t i = 0; i < tf.n_rings; i++)
            FUZZ_ASSERT(tf.rings[i].stats && tf.rings[i].meta && tf.rings[i].n >= 0 && tf.rings[i].width >= 1);
        cfg_topology t;
        moert_err e3 = {0};
        st = trace_manifest_topology(tf.manifest, &t, &e3);
        fuzz_check_status(st, &e3, false);
        moert_err e4 = {0};
        st = trace_verify(&tf, path, &e4);
        fuzz_check_status(st, &e4, false);
        trace_file_close(&tf);
    }
    return 0;
}
