/* tok: byte-level BPE as Hugging Face tokenizers runs it for the Qwen2/Qwen3 tokenizer.json.
 *
 * Encode = validate UTF-8 -> split on non-normalized added tokens (leftmost-longest, as HF's
 * Aho-Corasick) -> per remaining segment: NFC -> split on normalized added tokens -> split
 * with the file's regex (every match and every gap is a piece, HF "Isolated") -> BPE over the
 * piece's bytes with merges applied by rank (HF's heap order: lowest rank, then leftmost).
 *
 * Vocabulary strings are stored as the raw bytes they stand for (the GPT-2 byte<->unicode
 * mapping undone at load), so encoding never builds byte-level strings and decoding is a
 * table copy.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tok.h"

#include "gguf.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#define MAX_ID (1 << 26)          /* ids above this are treated as a malformed file */
#define CACHE_SLOTS (1u << 15)    /* piece -> ids cache: open addressing, cleared when full */
#define CACHE_MAX_ENTRIES (CACHE_SLOTS / 2)
#define CACHE_MAX_KEY 64          /* longer pieces are rare; they bypass the cache */
#define CACHE_KEY_POOL (1u << 19)
#define CACHE_ID_POOL (1u << 18)
#define NFC_OPTS (UTF8PROC_STABLE | UTF8PROC_COMPOSE)

/* ---------------------------------------------------------------------------------------
 * Data structures
 */
typedef struct {
    uint64_t key;    /* (left id << 32) | right id */
    uint32_t rank;
    int32_t new_id;  /* -1: empty slot */
} merge_slot;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
} added_tok;

typedef struct {
    int32_t child, sibling, tok; /* tok: index into added[], -1 if no token ends here */
    uint8_t byte;
} trie_node;

typedef struct {
    trie_node *nodes;
    size_t n_nodes, cap_nodes;
    bool first[256]; /* bytes a token of this tier can start with */
    bool any;
} trie;

typedef struct {
    uint64_t hash;
    uint32_t key_off, ids_off;
    uint16_t key_len, n_ids;
    bool used;
} cache_slot;

typedef struct {
    int32_t id, prev, next;
    uint32_t len; /* 0: merged into its left neighbour */
} bpe_sym;

typedef struct {
    uint32_t rank, pos;
    int32_t new_id;
} bpe_merge;

struct tok_tokenizer {
    int32_t vocab_size;
    /* id -> decoded bytes */
    char *blob;
    uint32_t *dec_off;
    int32_t *dec_len; /* -1: id unused */
    uint8_t *is_special;
    size_t max_token_bytes;
    /* raw bytes -> model id (mappable model tokens only) */
    int32_t *vmap;
    uint32_t *vmap_hash;
    size_t vmap_mask;
    int32_t byte_id[256];
    merge_slot *merges;
    size_t merge_mask;
    bool ignore_merges;
    /* added tokens; tier 0 matched on raw text, tier 1 on normalized text */
    added_tok *added;
    size_t n_added;
    trie tiers[2];
    bool normalize_nfc;
    /* pre-tokenizer split regex */
    pcre2_code *re;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    /* single-character classes for added-token flags (only when a token uses them) */
    pcre2_code *re_ws, *re_word;
    pcre2_match_data *md_small;
    /* scratch, grown during encode only for huge inputs */
    int32_t *nfc_buf;
    size_t nfc_cap;
    bpe_sym *sym;
    bpe_merge *heap;
    size_t sym_cap;
    /* piece cache */
    cache_slot *cache;
    uint8_t *cache_keys;
    int32_t *cache_ids;
    size_t cache_n, cache_key_used, cache_id_used;
};

/* Output accumulator: counts past cap so the caller learns the size needed. */
typedef struct {
    int32_t *ids;
    size_t cap, n;
} sink;

static inline void sink_push(sink *s, int32_t id)
{
    if (s->n < s->cap)
        s->ids[s->n] = id;
    s->n++;
}

/* ---------------------------------------------------------------------------------------
 * UTF-8
 */

/* Classifies the sequence at s[0..n): > 0 a valid character of that many bytes; 0 a valid
 * but incomplete prefix that runs to the end of s; < 0 an ill-formed maximal subpart of -r
 * bytes (Unicode's "maximal subpart" rule: what one U+FFFD replaces). */
static int utf8_seq(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n)
            return 0;
        uint8_t b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF))
            return -i;
    }
    return need;
}

static int utf8_validate(const uint8_t *s, size_t n, moert_err *err)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int r = utf8_seq(s + i, n - i);
        if (r > 0) {
            i += (size_t)r;
            continue;
        }
        uint8_t c = s[i];
        uint8_t c1 = i + 1 < n ? s[i + 1] : 0;
        const char *why;
        if (r == 0)
            why = "truncated sequence: the input ends inside a multi-byte character";
        else if (c >= 0x80 && c <= 0xBF)
            why = "unexpected continuation byte";
        else if (c == 0xC0 || c == 0xC1 || (c == 0xE0 && c1 >= 0x80 && c1 < 0xA0) ||
                 (c == 0xF0 && c1 >= 0x80 && c1 < 0x90))
            why = "overlong encoding";
        else if (c == 0xED && c1 >= 0xA0 && c1 <= 0xBF)
            why = "encoded UTF-16 surrogate (U+D800..U+DFFF)";
        else if (c >= 0xF5)
            why = "invalid byte (0xF5..0xFF never occur in UTF-8)";
        else if (c == 0xF4 && c1 >= 0x90 && c1 <= 0xBF)
            why = "code point above U+10FFFF";
        else
            why = "truncated sequence: expected a continuation byte (0x80..0xBF)";
        char bytes[32];
        size_t k = n - i < 4 ? n - i : 4;
        int w = 0;
        for (size_t j = 0; j < k; j++)
            w += snprintf(bytes + w, sizeof bytes - (size_t)w, "%s0x%02X", j ? " " : "", s[i + j]);
        return err_set(err, MOERT_EFORMAT, "invalid UTF-8 at byte offset %zu: %s (bytes %s)", i,
                       why, bytes);
    }
    return MOERT_OK;
}

static inline size_t utf8_len_at(const uint8_t *s)
{
    uint8_t c = s[0];
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}

/* ---------------------------------------------------------------------------------------
 * GPT-2 byte <-> unicode mapping: printable Latin-1 bytes map to themselves, the other 68
 * bytes to U+0100.. in byte order.
 */
static void byte_unicode_tables(int32_t b2u[256], int16_t u2b[324])
{
    for (int i = 0; i < 324; i++)
        u2b[i] = -1;
    int extra = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        b2u[b] = printable ? b : 256 + extra++;
        u2b[b2u[b]] = (int16_t)b;
    }
}

/* Byte-level string -> raw bytes into out (cap >= n).  Returns false when a character is
 * outside the mapping (such a token can never come out of byte-level encoding). */
static bool unbyte(const int16_t u2b[324], const char *s, size_t n, char *out, size_t *out_n)
{
    size_t i = 0, o = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t r = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (r <= 0 || cp < 0 || cp >= 324 || u2b[cp] < 0)
            return false;
        out[o++] = (char)u2b[cp];
        i += (size_t)r;
    }
    *out_n = o;
    return true;
}

/* ---------------------------------------------------------------------------------------
 * Hash tables
 */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 16;
    while (p < n)
        p <<= 1;
    return p;
}

static int32_t vmap_find(const tok_tokenizer *t, const char *s, size_t n)
{
    uint64_t h = XXH3_64bits(s, n);
    uint32_t tag = (uint32_t)(h >> 32);
    for (size_t i = (size_t)h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        int32_t id = t->vmap[i];
        if (id < 0)
            return -1;
        if (t->vmap_hash[i] == tag && (size_t)t->dec_len[id] == n &&
            memcmp(t->blob + t->dec_off[id], s, n) == 0)
            return id;
    }
}

static void vmap_insert(tok_tokenizer *t, int32_t id)
{
    const char *s = t->blob + t->dec_off[id];
    size_t n = (size_t)t->dec_len[id];
    uint64_t h = XXH3_64bits(s, n);
    size_t i = (size_t)h & t->vmap_mask;
    while (t->vmap[i] >= 0) {
        int32_t o = t->vmap[i];
        if ((size_t)t->dec_len[o] == n && memcmp(t->blob + t->dec_off[o], s, n) == 0)
            return; /* same bytes twice: the first id keeps them */
        i = (i + 1) & t->vmap_mask;
    }
    t->vmap[i] = id;
    t->vmap_hash[i] = (uint32_t)(h >> 32);
}

static const merge_slot *merge_find(const tok_tokenizer *t, int32_t a, int32_t b)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    for (size_t i = (size_t)mix64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_slot *m = &t->merges[i];
        if (m->new_id < 0)
            return NULL;
        if (m->key == key)
            return m;
    }
}

/* A pair listed twice keeps the later rank, as HF's HashMap collect does. */
static void merge_insert(tok_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)mix64(key) & t->merge_mask;
    while (t->merges[i].new_id >= 0 && t->merges[i].key != key)
        i = (i + 1) & t->merge_mask;
    t->merges[i].key = key;
    t->merges[i].rank = rank;
    t->merges[i].new_id = new_id;
}

/* ---------------------------------------------------------------------------------------
 * Added-token trie (leftmost-longest, like HF's Aho-Corasick MatchKind::LeftmostLongest)
 */
static int trie_add(trie *tr, const uint8_t *s, size_t n, int32_t tok)
{
    if (!tr->nodes) {
        tr->cap_nodes = 64;
        tr->nodes = calloc(tr->cap_nodes, sizeof *tr->nodes);
        if (!tr->nodes)
            return MOERT_ENOMEM;
        tr->nodes[0] = (trie_node){-1, -1, -1, 0};
        tr->n_nodes = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[i])
            c = tr->nodes[c].sibling;
        if (c < 0) {
            if (tr->n_nodes == tr->cap_nodes) {
                trie_node *nn = realloc(tr->nodes, 2 * tr->cap_nodes * sizeof *nn);
                if (!nn)
                    return MOERT_ENOMEM;
                tr->nodes = nn;
                tr->cap_nodes *= 2;
            }
            c = (int32_t)tr->n_nodes++;
            tr->nodes[c] = (trie_node){-1, tr->nodes[cur].child, -1, s[i]};
            tr->nodes[cur].child = c;
        }
        cur = c;
    }
    if (tr->nodes[cur].tok < 0) /* duplicate content: the first pattern wins, as in HF */
        tr->nodes[cur].tok = tok;
    tr->first[s[0]] = true;
    tr->any = true;
    return MOERT_OK;
}

/* Length of the longest token starting at s (0 if none); its index in *tok. */
static size_t trie_longest(const trie *tr, const uint8_t *s, size_t n, int32_t *tok)
{
    size_t best = 0;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[i])
            c = tr->nodes[c].sibling;
        if (c < 0)
            break;
        cur = c;
        if (tr->nodes[cur].tok >= 0) {
            best = i + 1;
            *tok = tr->nodes[cur].tok;
        }
    }
    return best;
}

/* ---------------------------------------------------------------------------------------
 * BPE
 */
static int grow_sym(tok_tokenizer *t, size_t n, moert_err *err)
{
    if (n <= t->sym_cap)
        return MOERT_OK;
    size_t cap = t->sym_cap ? t->sym_cap : 256;
    while (cap < n)
        cap *= 2;
    bpe_sym *s = realloc(t->sym, cap * sizeof *s);
    if (!s)
        return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory for a %zu-byte piece", n);
    t->sym = s;
    bpe_merge *h = realloc(t->heap, 2 * cap * sizeof *h); /* each merge pushes at most 2 */
    if (!h)
        return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory for a %zu-byte piece", n);
    t->heap = h;
    t->sym_cap = cap;
    return MOERT_OK;
}

static inline bool merge_before(const bpe_merge *a, const bpe_merge *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(bpe_merge *h, size_t *n, bpe_merge m)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_before(&m, &h[p]))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = m;
}

static bpe_merge heap_pop(bpe_merge *h, size_t *n)
{
    bpe_merge top = h[0];
    bpe_merge last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && merge_before(&h[c + 1], &h[c]))
            c++;
        if (!merge_before(&h[c], &last))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = last;
    return top;
}

static void push_pair(const tok_tokenizer *t, bpe_merge *heap, size_t *nh, int32_t pos)
{
    const bpe_sym *a = &t->sym[pos];
    const merge_slot *m = merge_find(t, a->id, t->sym[a->next].id);
    if (m)
        heap_push(heap, nh, (bpe_merge){m->rank, (uint32_t)pos, m->new_id});
}

/* Merges the piece's bytes in HF's order; leaves the surviving symbols in t->sym[0..*m). */
static int bpe_merge_piece(tok_tokenizer *t, const uint8_t *p, size_t n, size_t *m_out,
                           moert_err *err)
{
    int st = grow_sym(t, n, err);
    if (st)
        return st;
    bpe_sym *sym = t->sym;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id < 0)
            continue; /* no symbol for this byte and no unk token: HF drops it */
        sym[m] = (bpe_sym){id, (int32_t)m - 1, (int32_t)m + 1, 1};
        m++;
    }
    if (m)
        sym[m - 1].next = -1;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < m; i++)
        push_pair(t, t->heap, &nh, (int32_t)i);
    while (nh) {
        bpe_merge top = heap_pop(t->heap, &nh);
        bpe_sym *a = &sym[top.pos];
        if (a->len == 0 || a->next < 0)
            continue;
        bpe_sym *b = &sym[a->next];
        const merge_slot *cur = merge_find(t, a->id, b->id);
        if (!cur || cur->new_id != top.new_id)
            continue; /* stale entry: one side changed since it was queued */
        a->id = top.new_id;
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (a->next >= 0)
            sym[a->next].prev = (int32_t)top.pos;
        if (a->prev >= 0)
            push_pair(t, t->heap, &nh, a->prev);
        if (a->next >= 0)
            push_pair(t, t->heap, &nh, (int32_t)top.pos);
    }
    *m_out = m;
    return MOERT_OK;
}

static void cache_clear(tok_tokenizer *t)
{
    memset(t->cache, 0, CACHE_SLOTS * sizeof *t->cache);
    t->cache_n = t->cache_key_used = t->cache_id_used = 0;
}

static int bpe_piece(tok_tokenizer *t, const uint8_t *p, size_t n, sink *out, moert_err *err)
{
    if (n == 0)
        return MOERT_OK;
    uint64_t h = 0;
    size_t slot = 0;
    bool cacheable = n <= CACHE_MAX_KEY;
    if (cacheable) {
        h = XXH3_64bits(p, n);
        for (slot = (size_t)h & (CACHE_SLOTS - 1); t->cache[slot].used;
             slot = (slot + 1) & (CACHE_SLOTS - 1)) {
            const cache_slot *c = &t->cache[slot];
            if (c->hash == h && c->key_len == n && memcmp(t->cache_keys + c->key_off, p, n) == 0) {
                for (uint32_t i = 0; i < c->n_ids; i++)
                    sink_push(out, t->cache_ids[c->ids_off + i]);
                return MOERT_OK;
            }
        }
    }
    if (t->ignore_merges) {
        int32_t id = vmap_find(t, (const char *)p, n);
        if (id >= 0) {
            sink_push(out, id);
            return MOERT_OK;
        }
    }
    size_t m;
    int st = bpe_merge_piece(t, p, n, &m, err);
    if (st)
        return st;
    size_t first = out->n;
    uint32_t n_ids = 0;
    for (size_t i = 0; i < m; i++)
        if (t->sym[i].len) {
            sink_push(out, t->sym[i].id);
            n_ids++;
        }
    if (!cacheable)
        return MOERT_OK;
    if (t->cache_n >= CACHE_MAX_ENTRIES || t->cache_key_used + n > CACHE_KEY_POOL ||
        t->cache_id_used + n_ids > CACHE_ID_POOL) {
        cache_clear(t); /* bounded: start over rather than evict piecemeal */
        slot = (size_t)h & (CACHE_SLOTS - 1);
    }
    if (first + n_ids > out->cap)
        return MOERT_OK; /* ids not all stored (output too small): do not cache */
    cache_slot *c = &t->cache[slot];
    c->used = true;
    c->hash = h;
    c->key_off = (uint32_t)t->cache_key_used;
    c->key_len = (uint16_t)n;
    c->ids_off = (uint32_t)t->cache_id_used;
    c->n_ids = (uint16_t)n_ids;
    memcpy(t->cache_keys + t->cache_key_used, p, n);
    memcpy(t->cache_ids + t->cache_id_used, out->ids + first, n_ids * sizeof(int32_t));
    t->cache_key_used += n;
    t->cache_id_used += n_ids;
    t->cache_n++;
    return MOERT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Pre-tokenizer: the file's Split regex, behaviour Isolated (matches and gaps are pieces)
 */
static int regex_error(int rc, moert_err *err)
{
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    /* A pattern that backtracks past PCRE2's limits is the tokenizer file's fault (bad input,
     * exit 2); any other failure is moert's. */
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
        rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_NOMEMORY)
        return err_set(err, MOERT_EFORMAT,
                       "tokenizer: the pre_tokenizer Split pattern gave up on this input (PCRE2: %s), expected "
                       "a pattern that matches without runaway backtracking",
                       (const char *)msg);
    return err_set(err, MOERT_EINTERNAL, "tokenizer: pre-tokenizer regex match failed: %s",
                   (const char *)msg);
}

static int pretok_bpe(tok_tokenizer *t, const uint8_t *s, size_t n, sink *out, moert_err *err)
{
    size_t prev = 0, search = 0;
    int st;
    while (search < n) {
        int rc = pcre2_match(t->re, s, n, search, PCRE2_NO_UTF_CHECK, t->md, t->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return regex_error(rc, err);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
        size_t a = ov[0], b = ov[1];
        if (a > prev && (st = bpe_piece(t, s + prev, a - prev, out, err)))
            return st;
        if (b > a && (st = bpe_piece(t, s + a, b - a, out, err)))
            return st;
        if (b > a) {
            prev = search = b;
        } else { /* empty match: an empty piece (dropped); search on from the next char */
            prev = a;
            search = a + utf8_len_at(s + a);
        }
    }
    if (prev < n && (st = bpe_piece(t, s + prev, n - prev, out, err)))
        return st;
    return MOERT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Added-token splitting with HF's single_word / lstrip / rstrip rules
 */
static bool char_in(const tok_tokenizer *t, const pcre2_code *re, const uint8_t *c, size_t n)
{
    return pcre2_match(re, c, n, 0, PCRE2_NO_UTF_CHECK, t->md_small, NULL) >= 0;
}

static size_t prev_char_start(const uint8_t *s, size_t end)
{
    size_t i = end - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80)
        i--;
    return i;
}

/* HF's ends_with_word(s[..end]) (regex `\w$`, Rust regex's Unicode \w). */
static bool ends_with_word(const tok_tokenizer *t, const uint8_t *s, size_t end)
{
    if (end == 0)
        return false;
    size_t i = prev_char_start(s, end);
    return char_in(t, t->re_word, s + i, end - i);
}

static bool starts_with_word(const tok_tokenizer *t, const uint8_t *s, size_t n)
{
    return n > 0 && char_in(t, t->re_word, s, utf8_len_at(s));
}

/* Start of the whitespace run that ends at `end` (HF's space_leftmost_at_end). */
static size_t ws_run_start(const tok_tokenizer *t, const uint8_t *s, size_t end)
{
    while (end > 0) {
        size_t i = prev_char_start(s, end);
        if (!char_in(t, t->re_ws, s + i, end - i))
            break;
        end = i;
    }
    return end;
}

/* Length of the whitespace run at the start of s (HF's space_rightmost_at_start). */
static size_t ws_run_len(const tok_tokenizer *t, const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_len_at(s + i);
        if (!char_in(t, t->re_ws, s + i, k))
            break;
        i += k;
    }
    return i;
}

static int encode_segment(tok_tokenizer *t, const uint8_t *s, size_t n, sink *out, moert_err *err);

static int encode_gap(tok_tokenizer *t, int tier, const uint8_t *s, size_t n, sink *out,
                      moert_err *err)
{
    return tier == 0 ? encode_segment(t, s, n, out, err) : pretok_bpe(t, s, n, out, err);
}

static int split_added(tok_tokenizer *t, int tier, const uint8_t *s, size_t n, sink *out,
                       moert_err *err)
{
    const trie *tr = &t->tiers[tier];
    if (!tr->any)
        return encode_gap(t, tier, s, n, out, err);
    size_t start_offset = 0, pos = 0;
    int st;
    while (pos < n) {
        if (!tr->first[s[pos]]) {
            pos++;
            continue;
        }
        int32_t k = -1;
        size_t len = trie_longest(tr, s + pos, n - pos, &k);
        if (!len) {
            pos++;
            continue;
        }
        size_t start = pos, stop = pos + len;
        pos = stop; /* matches never overlap, even when one is discarded below */
        const added_tok *a = &t->added[k];
        if (a->single_word) {
            bool start_space = start == 0 || !ends_with_word(t, s, start);
            bool stop_space = stop == n || !starts_with_word(t, s + stop, n - stop);
            if (!start_space || !stop_space)
                continue;
        }
        if (a->lstrip) {
            size_t ns = ws_run_start(t, s, start);
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip)
            stop += ws_run_len(t, s + stop, n - stop);
        if (start_offset < start && (st = encode_gap(t, tier, s + start_offset, start - start_offset, out, err)))
            return st;
        sink_push(out, a->id);
        start_offset = stop;
    }
    if (start_offset < n)
        return encode_gap(t, tier, s + start_offset, n - start_offset, out, err);
    return MOERT_OK;
}

/* NFC of s into t->nfc_buf (as UTF-8); ASCII is its own NFC and is passed through. */
static int nfc(tok_tokenizer *t, const uint8_t *s, size_t n, const uint8_t **out, size_t *out_n,
               moert_err *err)
{
    size_t i = 0;
    while (i < n && s[i] < 0x80)
        i++;
    if (i == n || !t->normalize_nfc) {
        *out = s;
        *out_n = n;
        return MOERT_OK;
    }
    for (;;) {
        utf8proc_ssize_t r = utf8proc_decompose(s, (utf8proc_ssize_t)n, t->nfc_buf,
                                                (utf8proc_ssize_t)t->nfc_cap, NFC_OPTS);
        if (r < 0)
            return err_set(err, MOERT_EFORMAT, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
        if ((size_t)r <= t->nfc_cap) {
            r = utf8proc_reencode(t->nfc_buf, r, NFC_OPTS);
            if (r < 0)
                return err_set(err, MOERT_EFORMAT, "tokenizer: NFC failed: %s", utf8proc_errmsg(r));
            *out = (const uint8_t *)t->nfc_buf;
            *out_n = (size_t)r;
            return MOERT_OK;
        }
        size_t cap = (size_t)r * 2;
        int32_t *b = realloc(t->nfc_buf, (cap + 1) * sizeof *b); /* +1: reencode's NUL */
        if (!b)
            return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory normalising %zu bytes", n);
        t->nfc_buf = b;
        t->nfc_cap = cap;
    }
}

static int encode_segment(tok_tokenizer *t, const uint8_t *s, size_t n, sink *out, moert_err *err)
{
    const uint8_t *ns = NULL;
    size_t nn = 0;
    int st = nfc(t, s, n, &ns, &nn, err);
    if (st)
        return st;
    return split_added(t, 1, ns, nn, out, err);
}

int tok_encode(tok_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap,
               size_t *n_ids, moert_err *err)
{
    *n_ids = 0;
    if (!text && len)
        return err_set(err, MOERT_EUSAGE, "tok_encode: text is NULL");
    int st = utf8_validate((const uint8_t *)text, len, err);
    if (st)
        return st;
    sink out = {ids, ids ? cap : 0, 0};
    if (len && (st = split_added(t, 0, (const uint8_t *)text, len, &out, err)))
        return st;
    *n_ids = out.n;
    if (out.n > out.cap)
        return err_set(err, MOERT_EUSAGE, "tok_encode: %zu ids do not fit in %zu", out.n, cap);
    return MOERT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Decode
 */
int32_t tok_vocab_size(const tok_tokenizer *t) { return t->vocab_size; }

size_t tok_max_token_bytes(const tok_tokenizer *t) { return t->max_token_bytes; }

const char *tok_token_bytes(const tok_tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->vocab_size || t->dec_len[id] < 0) {
        *len = 0;
        return NULL;
    }
    *len = (size_t)t->dec_len[id];
    return t->blob + t->dec_off[id];
}

bool tok_is_special(const tok_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->vocab_size && t->is_special[id];
}

int32_t tok_special_id(const tok_tokenizer *t, const char *content)
{
    size_t n = strlen(content);
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == n && memcmp(t->added[i].content, content, n) == 0)
            return t->added[i].id;
    return -1;
}

static int unknown_id(const tok_tokenizer *t, int32_t id, size_t pos, moert_err *err)
{
    return err_set(err, MOERT_EFORMAT,
                   "token id %d at position %zu is not in the vocabulary (ids 0..%d, %s)", id, pos,
                   t->vocab_size - 1, id < 0 || id >= t->vocab_size ? "out of range" : "unassigned id");
}

int tok_decode(const tok_tokenizer *t, const int32_t *ids, size_t n, char *out, size_t cap,
               size_t *out_len, moert_err *err)
{
    *out_len = 0;
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size || t->dec_len[id] < 0)
            return unknown_id(t, id, i, err);
        need += (size_t)t->dec_len[id];
    }
    if (need > cap || (need && !out)) {
        *out_len = need;
        return err_set(err, MOERT_EUSAGE, "tok_decode: %zu bytes do not fit in %zu", need, cap);
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(out + o, t->blob + t->dec_off[ids[i]], (size_t)t->dec_len[ids[i]]);
        o += (size_t)t->dec_len[ids[i]];
    }
    *out_len = o;
    return MOERT_OK;
}

void tok_stream_init(tok_stream *s) { memset(s, 0, sizeof *s); }

static const char REPL[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* One pass of stream decoding over pending + b[0..n); with write == false only counts. */
static size_t stream_run(tok_stream *s, const uint8_t *b, size_t n, char *out, bool write)
{
    size_t o = 0, pos = 0;
#define EMIT(p, k)                                  \
    do {                                            \
        if (write)                                  \
            memcpy(out + o, (p), (k));              \
        o += (k);                                   \
    } while (0)
    if (s->n_pending) {
        uint8_t tmp[8];
        size_t np = s->n_pending, extra = n < 4 ? n : 4;
        memcpy(tmp, s->pending, np);
        memcpy(tmp + np, b, extra);
        int r = utf8_seq(tmp, np + extra);
        if (r == 0) { /* still incomplete: everything is held */
            if (write) {
                memcpy(s->pending, tmp, np + extra);
                s->n_pending = np + extra;
            }
            return 0;
        }
        if (r > 0)
            EMIT(tmp, (size_t)r);
        else
            EMIT(REPL, 3);
        size_t used = (size_t)(r > 0 ? r : -r);
        pos = used > np ? used - np : 0;
        if (write)
            s->n_pending = 0;
    }
    while (pos < n) {
        int r = utf8_seq(b + pos, n - pos);
        if (r > 0) {
            EMIT(b + pos, (size_t)r);
            pos += (size_t)r;
        } else if (r < 0) {
            EMIT(REPL, 3);
            pos += (size_t)-r;
        } else {
            if (write) {
                memcpy(s->pending, b + pos, n - pos);
                s->n_pending = n - pos;
            }
            break;
        }
    }
#undef EMIT
    return o;
}

int tok_stream_push(const tok_tokenizer *t, tok_stream *s, int32_t id, char *out, size_t cap,
                    size_t *out_len, moert_err *err)
{
    *out_len = 0;
    if (id < 0 || id >= t->vocab_size || t->dec_len[id] < 0)
        return unknown_id(t, id, 0, err);
    if (s->n_pending > 3)
        return err_set(err, MOERT_EUSAGE, "tok_stream_push: stream state is corrupt (%zu pending bytes)",
                       s->n_pending);
    const uint8_t *b = (const uint8_t *)t->blob + t->dec_off[id];
    size_t n = (size_t)t->dec_len[id];
    size_t need = stream_run(s, b, n, NULL, false);
    if (need > cap) {
        *out_len = need;
        return err_set(err, MOERT_EUSAGE, "tok_stream_push: %zu bytes do not fit in %zu", need, cap);
    }
    *out_len = stream_run(s, b, n, out, true);
    return MOERT_OK;
}

void tok_stream_flush(tok_stream *s, char *out, size_t cap, size_t *out_len)
{
    *out_len = 0;
    if (s->n_pending && cap >= 3) {
        /* a held tail is always a valid-but-incomplete prefix: one maximal subpart */
        memcpy(out, REPL, 3);
        *out_len = 3;
    }
    s->n_pending = 0;
}

/* ---------------------------------------------------------------------------------------
 * Load
 */
static const char *jtype(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static bool jbool(const json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static bool jstr_is(const json_t *o, const char *key, const char *want)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

static bool jempty_or_null(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return !v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0);
}

/* Oniguruma (what HF runs the pattern with) reads \s as Unicode White_Space; PCRE2 with UCP
 * also counts U+180E, so \s and \S are spelled out as the property. */
static char *rewrite_pattern(const char *p, size_t n)
{
    char *o = malloc(n * 16 + 1);
    if (!o)
        return NULL;
    size_t j = 0;
    bool quoted = false;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\\' || i + 1 == n) {
            o[j++] = p[i];
            continue;
        }
        char c = p[i + 1];
        if (quoted) {
            if (c == 'E')
                quoted = false;
            o[j++] = p[i];
            o[j++] = p[++i];
            continue;
        }
        if (c == 'Q')
            quoted = true;
        if (c == 's' || c == 'S') {
            j += (size_t)sprintf(o + j, "\\%c{White_Space}", c == 's' ? 'p' : 'P');
            i++;
            continue;
        }
        o[j++] = p[i];
        o[j++] = p[++i];
    }
    o[j] = '\0';
    return o;
}

static pcre2_code *compile_re(const char *pat, size_t n, uint32_t extra, const char *what,
                              moert_err *err)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, n, PCRE2_UTF | PCRE2_UCP | extra, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        err_set(err, MOERT_EFORMAT, "%s: regex does not compile at offset %zu: %s", what,
                (size_t)eo, (const char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if no JIT */
    return re;
}

static int load_pre_tokenizer(tok_tokenizer *t, const json_t *root, moert_err *err)
{
    json_t *pt = json_object_get(root, "pre_tokenizer");
    const json_t *split = NULL, *bl = NULL;
    if (jstr_is(pt, "type", "Sequence")) {
        json_t *seq = json_object_get(pt, "pretokenizers");
        if (!json_is_array(seq) || json_array_size(seq) != 2)
            return err_set(err, MOERT_EFORMAT,
                           "pre_tokenizer: expected a Sequence of [Split, ByteLevel], found %zu steps",
                           json_is_array(seq) ? json_array_size(seq) : 0);
        split = json_array_get(seq, 0);
        bl = json_array_get(seq, 1);
    }
    if (!split || !jstr_is(split, "type", "Split") || !jstr_is(bl, "type", "ByteLevel"))
        return err_set(err, MOERT_EFORMAT,
                       "pre_tokenizer: expected Sequence[Split, ByteLevel] (the Qwen2/Qwen3 layout)");
    if (jbool(bl, "add_prefix_space", false) || jbool(bl, "use_regex", true))
        return err_set(err, MOERT_EFORMAT,
                       "pre_tokenizer ByteLevel: expected add_prefix_space false and use_regex false");
    if (!jstr_is(split, "behavior", "Isolated") || jbool(split, "invert", false))
        return err_set(err, MOERT_EFORMAT,
                       "pre_tokenizer Split: expected behavior \"Isolated\" and invert false");
    json_t *pat = json_object_get(split, "pattern");
    json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    if (json_is_string(rx)) {
        char *p = rewrite_pattern(json_string_value(rx), json_string_length(rx));
        if (!p)
            return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
        t->re = compile_re(p, strlen(p), 0, "pre_tokenizer Split pattern", err);
        free(p);
    } else if (json_is_string(lit)) {
        t->re = compile_re(json_string_value(lit), json_string_length(lit), PCRE2_LITERAL,
                           "pre_tokenizer Split pattern", err);
    } else
        return err_set(err, MOERT_EFORMAT,
                       "pre_tokenizer Split: expected pattern {\"Regex\": ...} or {\"String\": ...}");
    if (!t->re)
        return err->code;
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    t->mctx = pcre2_match_context_create(NULL);
    t->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!t->md || !t->mctx || !t->jit_stack)
        return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory for the regex");
    pcre2_jit_stack_assign(t->mctx, NULL, t->jit_stack);
    return MOERT_OK;
}

/* Appends n bytes to the growing blob; returns the offset. */
static int blob_add(tok_tokenizer *t, size_t *used, size_t *cap, const char *s, size_t n,
                    uint32_t *off, moert_err *err)
{
    if (*used + n > UINT32_MAX)
        return err_set(err, MOERT_EFORMAT, "tokenizer: vocabulary strings exceed 4 GiB");
    if (*used + n > *cap) {
        size_t c = *cap ? *cap : 1 << 20;
        while (c < *used + n)
            c *= 2;
        char *b = realloc(t->blob, c);
        if (!b)
            return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
        t->blob = b;
        *cap = c;
    }
    memcpy(t->blob + *used, s, n);
    *off = (uint32_t)*used;
    *used += n;
    return MOERT_OK;
}

static int get_id(const json_t *v, const char *where, const char *name, int32_t *id, moert_err *err)
{
    if (!json_is_integer(v))
        return err_set(err, MOERT_EFORMAT, "%s \"%s\": expected an integer id, found %s", where,
                       name, jtype(v));
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= MAX_ID)
        return err_set(err, MOERT_EFORMAT, "%s \"%s\": id %lld out of range 0..%d", where, name,
                       (long long)x, MAX_ID - 1);
    *id = (int32_t)x;
    return MOERT_OK;
}

static int load_json(tok_tokenizer *t, const json_t *root, moert_err *err)
{
    int st;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model) || !jstr_is(model, "type", "BPE"))
        return err_set(err, MOERT_EFORMAT, "model: expected an object with \"type\": \"BPE\"");
    if (jbool(model, "byte_fallback", false) || !jempty_or_null(model, "continuing_subword_prefix") ||
        !jempty_or_null(model, "end_of_word_suffix") || !jempty_or_null(model, "unk_token") ||
        (json_object_get(model, "dropout") && !json_is_null(json_object_get(model, "dropout"))))
        return err_set(err, MOERT_EFORMAT,
                       "model: unsupported BPE options (expected byte_fallback false, no dropout, "
                       "no unk_token, no subword prefix/suffix)");
    t->ignore_merges = jbool(model, "ignore_merges", false);
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm) && !jstr_is(norm, "type", "NFC"))
        return err_set(err, MOERT_EFORMAT, "normalizer: only NFC (or none) is supported");
    t->normalize_nfc = norm && !json_is_null(norm);
    json_t *dec = json_object_get(root, "decoder");
    if (!jstr_is(dec, "type", "ByteLevel"))
        return err_set(err, MOERT_EFORMAT, "decoder: expected \"type\": \"ByteLevel\"");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return err_set(err, MOERT_EFORMAT, "model: expected \"vocab\" an object and \"merges\" an array");
    if (added && !json_is_null(added) && !json_is_array(added))
        return err_set(err, MOERT_EFORMAT, "added_tokens: expected an array, found %s", jtype(added));

    /* ids */
    int32_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        int32_t id;
        if ((st = get_id(val, "model.vocab", key, &id, err)))
            return st;
        if (id > max_id)
            max_id = id;
    }
    size_t n_added = added ? json_array_size(added) : 0;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        json_t *content = json_object_get(a, "content");
        if (!json_is_object(a) || !json_is_string(content))
            return err_set(err, MOERT_EFORMAT, "added_tokens[%zu]: expected an object with a string \"content\"", i);
        if (!json_object_get(a, "id")) /* get_id names what it found: here, nothing */
            return err_set(err, MOERT_EFORMAT, "added_tokens[%zu] \"%.60s\": no \"id\", expected an integer id", i,
                           json_string_value(content));
        int32_t id;
        if ((st = get_id(json_object_get(a, "id"), "added_tokens", json_string_value(content), &id, err)))
            return st;
        if (id > max_id)
            max_id = id;
    }
    if (max_id < 0)
        return err_set(err, MOERT_EFORMAT, "model.vocab: empty vocabulary");
    /* Tables are sized by the largest id: it must be backed by tokens actually given, or a
     * few bytes of JSON could ask for gigabytes. */
    size_t n_tokens = json_object_size(vocab) + n_added, id_cap = 2 * n_tokens + 1024;
    if ((size_t)max_id >= id_cap)
        return err_set(err, MOERT_EFORMAT,
                       "model.vocab / added_tokens: largest id %d with only %zu tokens, expected ids below %zu "
                       "(2 x tokens + 1024: a vocabulary is dense)",
                       (int)max_id, n_tokens, id_cap);
    t->vocab_size = max_id + 1;
    size_t vs = (size_t)t->vocab_size;
    t->dec_off = calloc(vs, sizeof *t->dec_off);
    t->dec_len = malloc(vs * sizeof *t->dec_len);
    t->is_special = calloc(vs, 1);
    bool *encodable = calloc(vs, 1);
    size_t n_vocab = json_object_size(vocab);
    t->vmap_mask = pow2_at_least(2 * n_vocab) - 1;
    t->vmap = malloc((t->vmap_mask + 1) * sizeof *t->vmap);
    t->vmap_hash = malloc((t->vmap_mask + 1) * sizeof *t->vmap_hash);
    char *tmp = NULL;
    if (!t->dec_off || !t->dec_len || !t->is_special || !encodable || !t->vmap || !t->vmap_hash) {
        free(encodable);
        return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory for %zu ids", vs);
    }
    for (size_t i = 0; i < vs; i++)
        t->dec_len[i] = -1;
    memset(t->vmap, 0xff, (t->vmap_mask + 1) * sizeof *t->vmap);

    int32_t b2u[256];
    int16_t u2b[324];
    byte_unicode_tables(b2u, u2b);
    size_t used = 0, cap = 0, tmp_cap = 0;

    /* model vocab: stored as raw bytes */
    size_t klen;
    json_object_keylen_foreach(vocab, key, klen, val) {
        int32_t id = (int32_t)json_integer_value(val);
        if (klen > tmp_cap) {
            free(tmp);
            tmp_cap = 2 * klen;
            if (!(tmp = malloc(tmp_cap)))
                goto nomem;
        }
        size_t n;
        bool ok = unbyte(u2b, key, klen, tmp, &n);
        if (t->dec_len[id] >= 0)
            continue; /* two strings with one id: the first decodes it */
        /* a string outside the byte alphabet decodes to its own UTF-8 (HF's ByteLevel rule) */
        if ((st = blob_add(t, &used, &cap, ok ? tmp : key, ok ? n : klen, &t->dec_off[id], err)))
            goto fail;
        t->dec_len[id] = (int32_t)(ok ? n : klen);
        encodable[id] = ok;
    }
    /* added tokens (they take precedence for decoding, as HF's id_to_token) */
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->added)
        goto nomem;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        json_t *content = json_object_get(a, "content");
        size_t n = json_string_length(content);
        const char *c = json_string_value(content);
        if (n == 0)
            continue; /* HF ignores empty added tokens */
        added_tok *at = &t->added[t->n_added++];
        at->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        at->special = jbool(a, "special", false);
        at->single_word = jbool(a, "single_word", false);
        at->lstrip = jbool(a, "lstrip", false);
        at->rstrip = jbool(a, "rstrip", false);
        at->normalized = jbool(a, "normalized", !at->special);
        at->len = n;
        if (!(at->content = malloc(n + 1)))
            goto nomem;
        memcpy(at->content, c, n + 1);
        if (utf8_validate((const uint8_t *)c, n, err))
            goto fail;
        if (n > tmp_cap) {
            free(tmp);
            tmp_cap = 2 * n;
            if (!(tmp = malloc(tmp_cap)))
                goto nomem;
        }
        size_t bn;
        bool ok = unbyte(u2b, c, n, tmp, &bn);
        const char *bytes = ok ? tmp : c;
        size_t nb = ok ? bn : n;
        int32_t old = t->dec_len[at->id];
        /* a model token with this id stays encodable only if it decodes to the same bytes */
        if (old >= 0 && ((size_t)old != nb || memcmp(t->blob + t->dec_off[at->id], bytes, nb)))
            encodable[at->id] = false;
        if ((st = blob_add(t, &used, &cap, bytes, nb, &t->dec_off[at->id], err)))
            goto fail;
        t->dec_len[at->id] = (int32_t)nb;
        t->is_special[at->id] = at->special;
    }
    for (size_t i = 0; i < vs; i++) {
        if (t->dec_len[i] > (int32_t)t->max_token_bytes)
            t->max_token_bytes = (size_t)t->dec_len[i];
        if (encodable[i])
            vmap_insert(t, (int32_t)i);
    }
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        t->byte_id[b] = vmap_find(t, &c, 1);
    }

    /* merges */
    size_t n_merges = json_array_size(merges);
    t->merge_mask = pow2_at_least(2 * n_merges + 2) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof *t->merges);
    if (!t->merges)
        goto nomem;
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].new_id = -1;
    for (size_t i = 0; i < n_merges; i++) {
        json_t *m = json_array_get(merges, i);
        const char *sa, *sb;
        size_t la, lb;
        if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
            json_is_string(json_array_get(m, 1))) {
            sa = json_string_value(json_array_get(m, 0));
            la = json_string_length(json_array_get(m, 0));
            sb = json_string_value(json_array_get(m, 1));
            lb = json_string_length(json_array_get(m, 1));
        } else if (json_is_string(m) && strchr(json_string_value(m), ' ') &&
                   !strchr(strchr(json_string_value(m), ' ') + 1, ' ')) {
            sa = json_string_value(m);
            sb = strchr(sa, ' ') + 1;
            la = (size_t)(sb - 1 - sa);
            lb = strlen(sb);
        } else {
            st = err_set(err, MOERT_EFORMAT, "model.merges[%zu]: expected [\"a\", \"b\"] or \"a b\", found %s",
                         i, jtype(m));
            goto fail;
        }
        if (la + lb > tmp_cap) {
            free(tmp);
            tmp_cap = 2 * (la + lb);
            if (!(tmp = malloc(tmp_cap)))
                goto nomem;
        }
        size_t na, nb;
        if (!unbyte(u2b, sa, la, tmp, &na) || !unbyte(u2b, sb, lb, tmp + na, &nb))
            continue; /* outside the byte alphabet: can never fire on byte-level input */
        int32_t ia = vmap_find(t, tmp, na), ib = vmap_find(t, tmp + na, nb);
        int32_t iab = vmap_find(t, tmp, na + nb);
        if (ia < 0 || ib < 0 || iab < 0) {
            st = err_set(err, MOERT_EFORMAT,
                         "model.merges[%zu] (\"%.*s\" + \"%.*s\"): the %s token is not in model.vocab",
                         i, (int)la, sa, (int)lb, sb, ia < 0 ? "left" : ib < 0 ? "right" : "merged");
            goto fail;
        }
        merge_insert(t, ia, ib, (uint32_t)i, iab);
    }
    free(tmp);
    tmp = NULL;

    /* added-token tries: specials first, then the others, each in file order (HF's order) */
    bool flags = false;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < t->n_added; i++) {
            added_tok *at = &t->added[i];
            if (at->special != (pass == 0))
                continue;
            flags |= at->single_word || at->lstrip || at->rstrip;
            if (!at->normalized) {
                if ((st = trie_add(&t->tiers[0], (const uint8_t *)at->content, at->len, (int32_t)i)))
                    goto nomem;
                continue;
            }
            const uint8_t *nc = (const uint8_t *)at->content;
            size_t nn = at->len;
            if (t->normalize_nfc) {
                uint8_t *m = utf8proc_NFC((const uint8_t *)at->content);
                if (!m)
                    goto nomem;
                st = trie_add(&t->tiers[1], m, strlen((char *)m), (int32_t)i);
                free(m);
            } else
                st = trie_add(&t->tiers[1], nc, nn, (int32_t)i);
            if (st)
                goto nomem;
        }
    if (flags) {
        t->re_ws = compile_re("\\p{White_Space}", PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, "whitespace class", err);
        /* Rust regex's Unicode \w, which HF's single_word check uses */
        t->re_word = compile_re("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]",
                                PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, "word class", err);
        t->md_small = pcre2_match_data_create(1, NULL);
        if (!t->re_ws || !t->re_word || !t->md_small) {
            st = err->code ? err->code : err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
            goto fail;
        }
    }
    free(encodable);
    return load_pre_tokenizer(t, root, err);
nomem:
    st = err_set(err, MOERT_ENOMEM, "tokenizer: out of memory while loading");
fail:
    free(tmp);
    free(encodable);
    return st;
}

/* Builds the tokenizer from a parsed tokenizer.json document (borrowed). */
static int tok_from_json(const json_t *root, const char *label, tok_tokenizer **out, moert_err *err)
{
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
    int st = load_json(t, root, err);
    if (!st) {
        t->nfc_cap = 4096;
        t->nfc_buf = malloc((t->nfc_cap + 1) * sizeof *t->nfc_buf);
        t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
        t->cache_keys = malloc(CACHE_KEY_POOL);
        t->cache_ids = malloc(CACHE_ID_POOL * sizeof *t->cache_ids);
        if (!t->nfc_buf || !t->cache || !t->cache_keys || !t->cache_ids)
            st = err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
        else
            st = grow_sym(t, 1024, err);
    }
    if (st) {
        err_prefix(err, "%s", label);
        tok_free(t);
        return st;
    }
    *out = t;
    return MOERT_OK;
}

/* ---- the tokenizer inside a GGUF file ---------------------------------------------- */

/* llama.cpp's tokenizer.ggml.pre names a pre-tokenizer by the tokenizer.json its converter
 * recognised; this is that file's split pattern (Qwen2 and Qwen3 share it). */
static const struct {
    const char *pre;
    const char *pattern;
} gguf_pretokenizers[] = {
    {"qwen2", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
              "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
};

/* llama.cpp's token types (llama_token_type in the file's tokenizer.ggml.token_type). */
enum { GTT_NORMAL = 1, GTT_UNKNOWN = 2, GTT_CONTROL = 3, GTT_USER_DEFINED = 4, GTT_UNUSED = 5, GTT_BYTE = 6 };

static json_t *jstrn(gguf_str s)
{
    return json_stringn(s.p, (size_t)s.len); /* NULL for invalid UTF-8 */
}

static json_t *json_byte_level(void)
{
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                     "use_regex", 0);
}

/* The tokenizer.json document equivalent to the GGUF's tokenizer.ggml.* keys: normal
 * tokens form the BPE vocabulary, control tokens are special added tokens, user-defined
 * ones plain added tokens, unused ones ([PAD...] fillers up to the model's vocabulary) are
 * left out, as HF's tokenizer.json leaves them out. */
static int gguf_tokenizer_json(const gguf_file *g, json_t **out, moert_err *err)
{
    *out = NULL;
    gguf_str model, pre;
    const gguf_kv *tokens, *merges, *types = NULL;
    int st;
    if ((st = gguf_get_str(g, "tokenizer.ggml.model", &model, err)))
        return st;
    if (model.len != 4 || memcmp(model.p, "gpt2", 4))
        return err_set(err, MOERT_EFORMAT, "tokenizer.ggml.model is '%.*s', expected 'gpt2' (byte-level BPE)",
                       (int)(model.len > 64 ? 64 : model.len), model.p);
    if ((st = gguf_get_str(g, "tokenizer.ggml.pre", &pre, err)))
        return st;
    const char *pattern = NULL;
    for (size_t i = 0; i < sizeof gguf_pretokenizers / sizeof *gguf_pretokenizers; i++)
        if (pre.len == strlen(gguf_pretokenizers[i].pre) && !memcmp(pre.p, gguf_pretokenizers[i].pre, pre.len))
            pattern = gguf_pretokenizers[i].pattern;
    if (!pattern)
        return err_set(err, MOERT_EFORMAT, "tokenizer.ggml.pre is '%.*s', expected 'qwen2' (the only pre-tokenizer "
                       "moert knows by name)", (int)(pre.len > 64 ? 64 : pre.len), pre.p);
    if ((st = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_V_STRING, &tokens, err)) ||
        (st = gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_V_STRING, &merges, err)))
        return st;
    if (gguf_kv_find(g, "tokenizer.ggml.token_type")) {
        if ((st = gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_V_I32, &types, err)))
            return st;
        if (types->arr_n != tokens->arr_n)
            return err_set(err, MOERT_EFORMAT, "tokenizer.ggml.token_type has %llu entries, expected %llu (one per "
                           "token)", (unsigned long long)types->arr_n, (unsigned long long)tokens->arr_n);
    }
    if (tokens->arr_n > INT32_MAX)
        return err_set(err, MOERT_EFORMAT, "tokenizer.ggml.tokens has %llu entries, expected at most %d",
                       (unsigned long long)tokens->arr_n, INT32_MAX);
    json_t *root = json_object(), *vocab = json_object(), *jm = json_array(), *added = json_array();
    size_t n_normal = 0;
    if (!root || !vocab || !jm || !added)
        goto nomem;
    for (uint64_t i = 0; i < tokens->arr_n; i++) {
        gguf_str s = gguf_arr_str(g, tokens, i);
        int64_t type = types ? gguf_arr_int(types, i) : GTT_NORMAL;
        if (type == GTT_UNUSED)
            continue;
        if (type != GTT_NORMAL && type != GTT_CONTROL && type != GTT_USER_DEFINED) {
            st = err_set(err, MOERT_EFORMAT, "token %llu has tokenizer.ggml.token_type %lld, expected 1 (normal), "
                         "3 (control), 4 (user-defined) or 5 (unused) in a byte-level BPE vocabulary",
                         (unsigned long long)i, (long long)type);
            goto fail;
        }
        json_t *js = jstrn(s);
        if (!js) {
            st = err_set(err, MOERT_EFORMAT, "token %llu of tokenizer.ggml.tokens is not valid UTF-8",
                         (unsigned long long)i);
            goto fail;
        }
        if (type == GTT_NORMAL) {
            json_t *id = json_integer((json_int_t)i);
            if (!id || json_object_setn_new_nocheck(vocab, json_string_value(js), json_string_length(js), id)) {
                json_decref(js);
                goto nomem;
            }
            json_decref(js);
            n_normal++;
            if (json_object_size(vocab) != n_normal) {
                st = err_set(err, MOERT_EFORMAT, "token %llu of tokenizer.ggml.tokens ('%.*s') repeats an earlier "
                             "token, expected distinct strings", (unsigned long long)i,
                             (int)(s.len > 64 ? 64 : s.len), s.p);
                goto fail;
            }
        } else {
            json_t *a = json_pack("{s:I, s:o, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)i, "content", js,
                                  "special", type == GTT_CONTROL, "normalized", 0, "lstrip", 0, "rstrip", 0,
                                  "single_word", 0);
            if (!a || json_array_append_new(added, a))
                goto nomem;
        }
    }
    for (uint64_t i = 0; i < merges->arr_n; i++) {
        json_t *js = jstrn(gguf_arr_str(g, merges, i));
        if (!js) {
            st = err_set(err, MOERT_EFORMAT, "merge %llu of tokenizer.ggml.merges is not valid UTF-8",
                         (unsigned long long)i);
            goto fail;
        }
        if (json_array_append_new(jm, js))
            goto nomem;
    }
    json_t *model_j = json_pack("{s:s, s:o, s:o}", "type", "BPE", "vocab", vocab, "merges", jm);
    vocab = jm = NULL;
    json_t *split = json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "Regex", pattern, "behavior",
                              "Isolated", "invert", 0);
    json_t *pretok = split ? json_pack("{s:s, s:[o,o]}", "type", "Sequence", "pretokenizers", split,
                                       json_byte_level())
                           : NULL;
    if (!model_j || !pretok || json_object_set_new(root, "model", model_j) ||
        json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC")) ||
        json_object_set_new(root, "pre_tokenizer", pretok) || json_object_set_new(root, "decoder", json_byte_level()) ||
        json_object_set_new(root, "added_tokens", added)) {
        added = NULL;
        goto nomem;
    }
    *out = root;
    return MOERT_OK;
nomem:
    st = err_set(err, MOERT_ENOMEM, "tokenizer: out of memory");
fail:
    json_decref(root);
    json_decref(vocab);
    json_decref(jm);
    json_decref(added);
    return st;
}

int tok_load_gguf(const gguf_file *g, tok_tokenizer **out, moert_err *err)
{
    *out = NULL;
    json_t *root;
    int st = gguf_tokenizer_json(g, &root, err);
    if (st)
        return err_prefix(err, "%s", gguf_path(g));
    st = tok_from_json(root, gguf_path(g), out, err);
    json_decref(root);
    return st;
}

int tok_load(const char *path, tok_tokenizer **out, moert_err *err)
{
    *out = NULL;
    if (gguf_is_gguf(path)) {
        gguf_file *g;
        int st = gguf_open(path, &g, err);
        if (st)
            return st;
        st = tok_load_gguf(g, out, err);
        gguf_close(g);
        return st;
    }
    json_error_t je;
    FILE *f = fopen(path, "rb");
    if (!f)
        return err_set(err, MOERT_EIO, "%s: cannot open: %s", path, strerror(errno));
    /* read whole, then json_loadb: jansson's FILE reader pays a locked getc per byte */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? 2 * cap : 1 << 24;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return err_set(err, MOERT_ENOMEM, "%s: out of memory reading the file", path);
            }
            buf = nb;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    bool rerr = ferror(f);
    fclose(f);
    if (rerr) {
        free(buf);
        return err_set(err, MOERT_EIO, "%s: read failed", path);
    }
    json_t *root = json_loadb(buf, len, 0, &je);
    free(buf);
    if (!root)
        return err_set(err, MOERT_EFORMAT, "%s:%d:%d: invalid JSON: %s", path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return err_set(err, MOERT_EFORMAT, "%s: expected a JSON object (a tokenizer.json)", path);
    }
    int st = tok_from_json(root, path, out, err);
    json_decref(root);
    return st;
}

void tok_free(tok_tokenizer *t)
{
    if (!t)
        return;
    free(t->blob);
    free(t->dec_off);
    free(t->dec_len);
    free(t->is_special);
    free(t->vmap);
    free(t->vmap_hash);
    free(t->merges);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    free(t->tiers[0].nodes);
    free(t->tiers[1].nodes);
    pcre2_code_free(t->re);
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mctx);
    pcre2_jit_stack_free(t->jit_stack);
    pcre2_code_free(t->re_ws);
    pcre2_code_free(t->re_word);
    pcre2_match_data_free(t->md_small);
    free(t->nfc_buf);
    free(t->sym);
    free(t->heap);
    free(t->cache);
    free(t->cache_keys);
    free(t->cache_ids);
    free(t);
}
