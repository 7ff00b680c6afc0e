/* The diff engine on a fuzzed file against a small recorded trace and a plain reference
 * file (tests/fuzz/data), and against itself, under options drawn from the input; and the
 * CLI's printing of one of them (to /dev/null). */
#include <math.h>

#include "../../runtime/cli/cli.h"
#include "../../runtime/trace/diff.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_stdout();
    return 0;
}

static void diff(const char *a, const char *b, unsigned bits)
{
    static const double tols[] = {-1, 0, 1e-5, 1e30};
    trace_diff_opts o = {.rtol = tols[bits & 3], .atol = bits & 4 ? 1e-3 : 0, .force = bits & 8,
                         .positions = bits & 16};
    json_t *rep = NULL;
    moert_err e = {0};
    int st = trace_diff(a, b, &o, &rep, &e);
    fuzz_check_status(st, &e, true);
    FUZZ_ASSERT((rep != NULL) == (st == MOERT_OK || st == MOERT_ECHECK));
    if (rep) {
        json_int_t nb = json_integer_value(json_object_get(rep, "stages_beyond"));
        FUZZ_ASSERT((nb > 0) == (st == MOERT_ECHECK));
        FUZZ_ASSERT((json_object_get(rep, "first_divergence") != NULL) == (nb > 0));
        json_decref(rep);
    }
}

static void diff_cli(const char *a, const char *b, bool json)
{
    char a0[] = "diff", a3[] = "--json", a4[] = "--force", pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s", a);
    snprintf(pb, sizeof pb, "%s", b);
    char *argv[] = {a0, pa, pb, a4, a3, NULL};
    moert_err e = {0};
    int st = cli_diff(json ? 5 : 4, argv, &e);
    fuzz_check_status(st, &e, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("fuzz.trace", data, size);
    unsigned bits = size ? data[size - 1] : 0;
    diff(path, "tests/fuzz/data/tiny.trace", bits);
    diff("tests/fuzz/data/tiny-ref.safetensors", path, bits >> 1);
    diff(path, path, bits >> 2);
    diff_cli(path, "tests/fuzz/data/tiny.trace", size % 2);
    return 0;
}
