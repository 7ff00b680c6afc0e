/* err: messages and exit codes are the user-facing contract of every failure. */
#include <CUnit/CUnit.h>
#include <string.h>

#include "../runtime/err.h"

static void test_set_and_prefix(void)
{
    moert_err e = {0};
    CU_ASSERT_EQUAL(err_set(&e, MOERT_ECONFIG, "line %d: expected %s", 3, "int"), MOERT_ECONFIG);
    CU_ASSERT_STRING_EQUAL(e.msg, "line 3: expected int");
    err_prefix(&e, "%s", "a.yaml");
    CU_ASSERT_STRING_EQUAL(e.msg, "a.yaml: line 3: expected int");
    CU_ASSERT_EQUAL(e.code, MOERT_ECONFIG);
    err_clear(&e);
    CU_ASSERT_EQUAL(e.code, MOERT_OK);
    CU_ASSERT_EQUAL(e.msg[0], '\0');
}

static void test_exit_codes(void)
{
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_OK), 0);
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_ECHECK), 1);
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_ECONFIG), 2);
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_EFORMAT), 2);
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_EIO), 2);
    CU_ASSERT_EQUAL(moert_exit_code(MOERT_EINTERNAL), 3);
}

void suite_err(void)
{
    CU_pSuite s = CU_add_suite("err", NULL, NULL);
    CU_add_test(s, "set and prefix", test_set_and_prefix);
    CU_add_test(s, "exit codes", test_exit_codes);
}
