/* Allocation counting for the no-malloc-after-init test (tests/alloc_count.c). */
#ifndef MOERT_TEST_ALLOC_COUNT_H
#define MOERT_TEST_ALLOC_COUNT_H

#include <stdbool.h>
#include <stdint.h>

void alloc_count_start(void);
uint64_t alloc_count_stop(void);   /* calls to malloc/calloc/realloc/free/... since start */
bool alloc_count_available(void);
void *alloc_count_caller(int i); /* return address of counted call i (< 8) */

#endif
