/* A tokenizer.json (tok_load), then a fixed text encoded with it: every id it gives
 * decodes, whole and streamed. */
#include <string.h>

#include "../../runtime/tok.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static const char sample[] = "Hello, world! <|im_end|> caf\xc3\xa9 e\xcc\x81 \xe2\x82\xac  \t\n<x> abc cat 123";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file("tokenizer.json", data, size);
    tok_tokenizer *t = NULL;
    moert_err e = {0};
    int st = tok_load(path, &t, &e);
    fuzz_check_status(st, &e, false);
    if (st) {
        FUZZ_ASSERT(t == NULL);
        return 0;
    }
    FUZZ_ASSERT(tok_vocab_size(t) >= 1);
    size_t len = sizeof sample - 1, cap = 3 * len + 1, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    FUZZ_ASSERT(ids != NULL);
    st = tok_encode(t, sample, len, ids, cap, &n, &e);
    fuzz_check_status(st, &e, false);
    if (!st) {
        size_t need = 0;
        FUZZ_ASSERT(tok_decode(t, ids, n, NULL, 0, &need, &e) == (need ? MOERT_EUSAGE : MOERT_OK));
        char *out = malloc(need + 1);
        FUZZ_ASSERT(out && tok_decode(t, ids, n, out, need, &need, &e) == MOERT_OK);
        tok_stream ts;
        tok_stream_init(&ts);
        size_t cap_s = 3 * (tok_max_token_bytes(t) + 4), got;
        char *buf = malloc(cap_s);
        FUZZ_ASSERT(buf != NULL);
        for (size_t i = 0; i < n; i++)
            FUZZ_ASSERT(tok_stream_push(t, &ts, ids[i], buf, cap_s, &got, &e) == MOERT_OK);
        tok_stream_flush(&ts, buf, cap_s, &got);
        free(buf);
        free(out);
    }
    free(ids);
    tok_free(t);
    return 0;
}
