/* A model.safetensors.index.json next to two fixed shards (s1: a, b; s2: c). */
#include <string.h>

#include "../../runtime/st.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char p[700];
    moert_err e = {0};
    const st_write_spec s1[] = {{"a", ST_F32, 1, {2}}, {"b", ST_BF16, 2, {2, 2}}};
    const st_write_spec s2[] = {{"c", ST_U8, 1, {5}}};
    static const uint8_t zeros[64];
    st_writer *w;
    snprintf(p, sizeof p, "%s/s1.safetensors", fuzz_dir());
    FUZZ_ASSERT(st_writer_open(p, s1, 2, NULL, NULL, 0, &w, &e) == MOERT_OK);
    FUZZ_ASSERT(st_writer_write(w, zeros, 16, &e) == MOERT_OK && st_writer_finish(w, &e) == MOERT_OK);
    snprintf(p, sizeof p, "%s/s2.safetensors", fuzz_dir());
    FUZZ_ASSERT(st_writer_open(p, s2, 1, NULL, NULL, 0, &w, &e) == MOERT_OK);
    FUZZ_ASSERT(st_writer_write(w, zeros, 5, &e) == MOERT_OK && st_writer_finish(w, &e) == MOERT_OK);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("model.safetensors.index.json", data, size);
    st_set *s = NULL;
    moert_err e = {0};
    int st = st_open(path, &s, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    FUZZ_ASSERT(st_count(s) >= 1 && st_count(s) <= 3 && st_file_count(s) >= 1 && st_file_count(s) <= 2);
    st_close(s);
    return 0;
}
