/* `moert diff` of a fuzzed file against a small recorded trace and a plain reference file
 * (tests/fuzz/data), and against itself. */
#include "../../runtime/cli/cli.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_stdout();
    return 0;
}

static void diff(const char *a, const char *b, bool json)
{
    char a0[] = "diff", a3[] = "--json", pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s", a);
    snprintf(pb, sizeof pb, "%s", b);
    char *argv[] = {a0, pa, pb, a3, NULL};
    moert_err e = {0};
    int st = cli_diff(json ? 4 : 3, argv, &e);
    fuzz_check_status(st, &e, false);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("fuzz.trace", data, size);
    diff(path, "tests/fuzz/data/tiny.trace", size % 2);
    diff("tests/fuzz/data/tiny-ref.safetensors", path, false);
    diff(path, path, true);
    return 0;
}
