/* CUnit runner: every tests/test_<name>.c defines `void suite_<name>(void)` that adds its
 * suite; the Makefile lists them in suites.inc.  `test_runner [SUITE ...]` runs a subset;
 * MOERT_TEST_ONLY=TEXT keeps only the tests whose description contains TEXT (one GPU test
 * on a lent device without the rest of its suite). */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SUITE(name) void suite_##name(void);
#include "suites.inc"
#undef SUITE

typedef struct {
    const char *name;
    void (*add)(void);
} suite_entry;

static const suite_entry all_suites[] = {
#define SUITE(name) {#name, suite_##name},
#include "suites.inc"
#undef SUITE
};

int main(int argc, char **argv)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 2;
    size_t n = sizeof all_suites / sizeof all_suites[0];
    for (int a = 1; a < argc; a++) {
        size_t i = 0;
        while (i < n && strcmp(argv[a], all_suites[i].name) != 0)
            i++;
        if (i == n) {
            fprintf(stderr, "test_runner: no suite named '%s'\n", argv[a]);
            CU_cleanup_registry();
            return 2;
        }
    }
    for (size_t i = 0; i < n; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++)
            if (strcmp(argv[a], all_suites[i].name) == 0)
                wanted = 1;
        if (wanted)
            all_suites[i].add();
    }
    const char *only = getenv("MOERT_TEST_ONLY");
    if (only && *only) {
        for (CU_pSuite su = CU_get_registry()->pSuite; su; su = su->pNext)
            for (CU_pTest t = su->pTest; t; t = t->pNext)
                if (!strstr(t->pName, only))
                    CU_set_test_active(t, CU_FALSE);
        CU_set_fail_on_inactive(CU_FALSE);
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    unsigned tests = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    test_print_skips();
    if (!failed)
        test_tmpdir_remove();
    printf("\n%u tests run, %s\n", tests, failed ? "FAILURES" : tests ? "all passed" : "NO TESTS");
    return failed || !tests ? 1 : 0;
}
