/* A safetensors file: its bytes as an in-memory image (st_open_image), validated as a file
 * would be.  Every tensor of a valid set lies inside the image and its byte count is its
 * shape times its element size. */
#include <string.h>
#include <sys/mman.h>

#include "../../runtime/st.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *img = NULL;
    if (size) {
        img = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        FUZZ_ASSERT(img != MAP_FAILED);
        memcpy(img, data, size);
    }
    st_set *s = NULL;
    moert_err e = {0};
    int st = st_open_image(img, size, "fuzz.safetensors", &s, &e);
    fuzz_check_status(st, &e, false);
    if (st)
        return 0;
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        FUZZ_ASSERT(st_find(s, t->name) == t);
        uint64_t n = st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++)
            n *= (uint64_t)t->shape[d];
        FUZZ_ASSERT(n == t->nbytes);
        const uint8_t *p = t->data;
        FUZZ_ASSERT(p >= img + 8 && p + t->nbytes <= img + size);
        if (i > 0)
            FUZZ_ASSERT(strcmp(st_at(s, i - 1)->name, t->name) < 0);
    }
    (void)st_metadata(s, "format");
    st_close(s);
    return 0;
}
