/* tok: the byte-level BPE tokenizer of a Hugging Face tokenizer.json (Qwen2/Qwen3 family),
 * encoding exactly as HF tokenizers does, built from the file's own data: NFC normalisation
 * (utf8proc), the pre-tokenizer's split regex taken from the file and run with PCRE2 (UTF,
 * Unicode properties, JIT), the GPT-2 byte-to-unicode mapping, merges applied by rank,
 * added/special tokens matched before BPE.
 *
 * Decoding inverts the byte mapping; tok_stream_* emits only complete UTF-8 characters so a
 * character split across tokens is printed once it is whole.
 *
 * Everything is allocated in tok_load; decode allocates nothing, and encode allocates only
 * to grow its scratch (from tok_load) for a piece or segment longer than any seen before.
 * Semantics follow HF tokenizers (what the ids must equal): added tokens are split off the
 * raw text first (leftmost-longest; lstrip/rstrip/single_word honoured; "normalized" ones are
 * matched after NFC); the pattern's \s/\S mean Unicode White_Space as in Oniguruma, which
 * HF runs the pattern with (PCRE2's own \s would also match U+180E).
 */
#ifndef MOERT_TOK_H
#define MOERT_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct tok_tokenizer tok_tokenizer;

/* Loads a tokenizer.json (~0.35 s for Qwen3's 11 MB, mostly JSON parsing).  MOERT_EIO when
 * the file cannot be read; MOERT_EFORMAT for invalid JSON or a layout other than the one
 * supported (BPE model without byte_fallback/dropout/unk, normalizer NFC or none,
 * pre_tokenizer Sequence[Split(Isolated), ByteLevel(use_regex false)], ByteLevel decoder),
 * naming the file and what was expected.  *out is NULL on failure. */
int tok_load(const char *tokenizer_json_path, tok_tokenizer **out, moert_err *err);

/* The tokenizer stored in a GGUF file (tokenizer.ggml.model "gpt2", pre "qwen2", tokens,
 * merges, token_type), turned into the tokenizer.json it was converted from and built by
 * the same code, so both give the same ids.  tok_load does this too when its path is a
 * GGUF file.  One difference GGUF cannot express: llama.cpp's converter types some
 * non-special added tokens (<|fim_prefix|>, ...) as control, so tok_is_special is true for
 * them here. */
struct gguf_file;
int tok_load_gguf(const struct gguf_file *g, tok_tokenizer **out, moert_err *err);

/* Frees t (NULL is fine). */
void tok_free(tok_tokenizer *t);

/* Vocabulary size including added tokens (max id + 1). */
int32_t tok_vocab_size(const tok_tokenizer *t);

/* Id of an added/special token by its content ("<|im_end|>"), or -1. */
int32_t tok_special_id(const tok_tokenizer *t, const char *content);

/* True when `id` is an added token marked "special" (what HF's skip_special_tokens drops). */
bool tok_is_special(const tok_tokenizer *t, int32_t id);

/* The bytes token `id` decodes to (not NUL-terminated; *len set), or NULL with *len = 0 for
 * an unknown id.  Valid for the tokenizer's lifetime. */
const char *tok_token_bytes(const tok_tokenizer *t, int32_t id, size_t *len);

/* Length in bytes of the longest token's decoded bytes. */
size_t tok_max_token_bytes(const tok_tokenizer *t);

/* Encodes `len` bytes of UTF-8 text (no special tokens added; special tokens written in the
 * text are recognised).  Writes at most `cap` ids to ids[] and the total count to *n_ids;
 * returns MOERT_EUSAGE with *n_ids = needed when cap is too small.  Invalid UTF-8 is a
 * MOERT_EFORMAT error naming the byte offset.  Every id covers at least one byte of the NFC
 * form, so cap = 3 * len + 1 always suffices (NFC grows UTF-8 by at most 3x).  Uses scratch
 * inside `t` (grown for huge inputs, and a bounded piece cache): one thread per tokenizer. */
int tok_encode(tok_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
               size_t *n_ids, moert_err *err);

/* Decodes ids into bytes (out need not be NUL-terminated; *out_len set).  Returns
 * MOERT_EUSAGE with *out_len = needed when cap is too small; unknown ids are MOERT_EFORMAT
 * errors naming the position.  The bytes are raw: ids that split a character give invalid
 * UTF-8 here, where HF's decode() would substitute U+FFFD (use tok_stream_* for text). */
int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap,
               size_t *out_len, moert_err *err);

/* Streaming decode: holds back an incomplete UTF-8 tail between calls. */
typedef struct tok_stream {
    unsigned char pending[8];
    size_t n_pending;
} tok_stream;

void tok_stream_init(tok_stream *s);

/* Appends token `id`; writes the bytes that now form complete characters to out and their
 * count to *out_len.  Ill-formed bytes come out as U+FFFD (one per maximal subpart, as
 * String::from_utf8_lossy), so the output is always valid UTF-8.  cap >= 64 + the longest
 * token suffices for any token that is a fragment of valid UTF-8 (all real BPE tokens);
 * 3 * (tok_max_token_bytes(t) + 4) always does.  A too-small cap is MOERT_EUSAGE with
 * *out_len = needed and the stream unchanged; an unknown id is MOERT_EFORMAT. */
int tok_stream_push(const tok_tokenizer *t, tok_stream *s, int32_t id, char *out, size_t cap,
                    size_t *out_len, moert_err *err);

/* Flushes what is still held back (an incomplete tail is emitted as one U+FFFD; cap >= 3). */
void tok_stream_flush(tok_stream *s, char *out, size_t cap, size_t *out_len);

#endif
