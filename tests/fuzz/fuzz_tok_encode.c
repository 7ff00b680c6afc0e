/* Arbitrary bytes encoded with the real Qwen3 tokenizer (build/tokenizer/qwen3, fetched by
 * tools/deps.sh).  Invalid UTF-8 is a message; valid text encodes, every id decodes, and
 * ASCII text comes back byte for byte (NFC is the identity on it), whole and streamed. */
#include <string.h>

#include "../../runtime/tok.h"
#include "fuzz.h"

static tok_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moert_err e = {0};
    if (tok_load("build/tokenizer/qwen3/tokenizer.json", &tok, &e)) {
        fprintf(stderr, "fuzz_tok_encode: %s (run from the repository root after `make`)\n", e.msg);
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t cap = 3 * size + 1, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    FUZZ_ASSERT(ids != NULL);
    moert_err e = {0};
    int st = tok_encode(tok, (const char *)data, size, ids, cap, &n, &e);
    fuzz_check_status(st, &e, false);
    if (!st) {
        bool ascii = true;
        for (size_t i = 0; i < size; i++)
            ascii &= data[i] < 0x80;
        size_t need = 0;
        tok_decode(tok, ids, n, NULL, 0, &need, &e);
        char *out = malloc(need + 1);
        FUZZ_ASSERT(out && tok_decode(tok, ids, n, out, need, &need, &e) == MOERT_OK);
        if (ascii)
            FUZZ_ASSERT(need == size && memcmp(out, data, size) == 0);
        tok_stream ts;
        tok_stream_init(&ts);
        size_t cap_s = 3 * (tok_max_token_bytes(tok) + 4), got, total = 0;
        char *buf = malloc(cap_s), *all = malloc(need * 3 + 8);
        FUZZ_ASSERT(buf && all);
        for (size_t i = 0; i < n; i++) {
            FUZZ_ASSERT(tok_stream_push(tok, &ts, ids[i], buf, cap_s, &got, &e) == MOERT_OK);
            FUZZ_ASSERT(total + got <= need * 3 + 8);
            memcpy(all + total, buf, got);
            total += got;
        }
        tok_stream_flush(&ts, buf, cap_s, &got);
        memcpy(all + total, buf, got);
        total += got;
        if (ascii)
            FUZZ_ASSERT(total == size && memcmp(all, data, size) == 0);
        free(buf);
        free(all);
        free(out);
    }
    free(ids);
    return 0;
}
