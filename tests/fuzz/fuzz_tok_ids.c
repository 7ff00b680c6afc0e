/* detokenize's input: a JSON array or a list of ids (cli_read_ids), decoded with the real
 * Qwen3 tokenizer, whole and streamed. */
#include <string.h>

#include "../../runtime/cli/cli_common.h"
#include "../../runtime/tok.h"
#include "fuzz.h"

static tok_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    moert_err e = {0};
    if (tok_load("build/tokenizer/qwen3/tokenizer.json", &tok, &e)) {
        fprintf(stderr, "fuzz_tok_ids: %s (run from the repository root after `make`)\n", e.msg);
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n = 0;
    moert_err e = {0};
    int st = cli_read_ids("stdin", (const char *)data, size, &ids, &n, &e);
    fuzz_check_status(st, &e, false);
    if (st) {
        FUZZ_ASSERT(ids == NULL);
        return 0;
    }
    size_t need = 0;
    st = tok_decode(tok, ids, n, NULL, 0, &need, &e);
    if (st == MOERT_EUSAGE) { /* only the size query */
        char *out = malloc(need);
        FUZZ_ASSERT(out && tok_decode(tok, ids, n, out, need, &need, &e) == MOERT_OK);
        free(out);
    } else {
        fuzz_check_status(st, &e, false);
    }
    tok_stream ts;
    tok_stream_init(&ts);
    size_t cap = 3 * (tok_max_token_bytes(tok) + 4), got;
    char *buf = malloc(cap);
    FUZZ_ASSERT(buf != NULL);
    for (size_t i = 0; i < n; i++) {
        moert_err e2 = {0};
        st = tok_stream_push(tok, &ts, ids[i], buf, cap, &got, &e2);
        fuzz_check_status(st, &e2, false);
    }
    tok_stream_flush(&ts, buf, cap, &got);
    free(buf);
    free(ids);
    return 0;
}
