/* tok: the byte-level BPE tokenizer of a Hugging Face tokenizer.json (Qwen2/Qwen3 family),
 * encoding exactly as HF tokenizers does, built from the file's own data: NFC normalisation
 * (utf8proc), the pre-tokenizer's split regex taken from the file and run with PCRE2 (UTF,
 * Unicode properties, JIT), the GPT-2 byte-to-unicode mapping, merges applied by rank,
 * added/special tokens matched before BPE.
 *
 * Decoding inverts the byte mapping; tok_stream_* emits only complete UTF-8 characters so a
 * character split across tokens is printed once it is whole.
 *
 * Everything is allocated in tok_load; encode/decode allocate nothing per call beyond what
 * the caller passes (output arrays, scratch from tok_load).
 */
#ifndef MOERT_TOK_H
#define MOERT_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct tok_tokenizer tok_tokenizer;

int tok_load(const char *tokenizer_json_path, tok_tokenizer **out, moert_err *err);
void tok_free(tok_tokenizer *t);

/* Vocabulary size including added tokens (max id + 1). */
int32_t tok_vocab_size(const tok_tokenizer *t);

/* Id of an added/special token by its content ("<|im_end|>"), or -1. */
int32_t tok_special_id(const tok_tokenizer *t, const char *content);

/* Encodes `len` bytes of UTF-8 text (no special tokens added; special tokens written in the
 * text are recognised).  Writes at most `cap` ids to ids[] and the total count to *n_ids;
 * returns MOERT_EUSAGE with *n_ids = needed when cap is too small.  Invalid UTF-8 is a
 * MOERT_EFORMAT error naming the byte offset. */
int tok_encode(tok_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
               size_t *n_ids, moert_err *err);

/* Decodes ids into bytes (out need not be NUL-terminated; *out_len set).  Returns
 * MOERT_EUSAGE with *out_len = needed when cap is too small; unknown ids are errors. */
int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap,
               size_t *out_len, moert_err *err);

/* Streaming decode: holds back an incomplete UTF-8 tail between calls. */
typedef struct tok_stream {
    unsigned char pending[8];
    size_t n_pending;
} tok_stream;

void tok_stream_init(tok_stream *s);

/* Appends token `id`; writes the bytes that now form complete characters to out (cap must
 * be >= 64 + the longest token) and their count to *out_len. */
int tok_stream_push(const tok_tokenizer *t, tok_stream *s, int32_t id, char *out, size_t cap,
                    size_t *out_len, moert_err *err);

/* Flushes what is still held back (an invalid tail is emitted as U+FFFD). */
void tok_stream_flush(tok_stream *s, char *out, size_t cap, size_t *out_len);

#endif
