/* gguf: GGUF v3 reading (mmap + validation of every count before it is used) and atomic
 * writing.  The reader never trusts a number from the file until it has been compared with
 * the bytes that are actually left: that is what llama.cpp's parser got wrong (heap
 * overflows from crafted n_tensors, n_kv, string lengths and dims). */
#include "gguf.h"

#include "afile.h"

#include "../ops/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

/* Names are shown bounded so one absurd name cannot push the rest out of a message. */
#define NAME_FMT "'%.160s'"
#define KEY_FMT "'%.*s'"
#define KEY_ARG(s) (int)((s).len > 160 ? 160 : (s).len), (s).p

/* The smallest encodings: a kv is a key of >= 1 byte, a type and a 1-byte value; a tensor
 * info is a name of >= 1 byte, n_dims, one dim, a type and an offset. */
#define MIN_KV_BYTES (8u + 1u + 4u + 1u)
#define MIN_TENSOR_INFO_BYTES (8u + 1u + 4u + 8u + 4u + 8u)
#define HEADER_BYTES 24u

/* ---- types ------------------------------------------------------------------------ */

static const char *const vtype_names[GGUF_V_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};
/* Bytes of one element; strings and arrays have no fixed size (0). */
static const uint8_t vtype_size[GGUF_V_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_vtype_name(gguf_vtype t)
{
    return (unsigned)t < GGUF_V_COUNT ? vtype_names[t] : "unknown";
}

/* "a u32", "an i32", "an array": for messages. */
static const char *article(gguf_vtype t)
{
    const char *n = gguf_vtype_name(t);
    return n[0] == 'i' || n[0] == 'f' || n[0] == 'a' || (n[0] == 'u' && n[1] == 'n') ? "an" : "a";
}

static bool is_int_vtype(gguf_vtype t)
{
    return t == GGUF_V_U8 || t == GGUF_V_I8 || t == GGUF_V_U16 || t == GGUF_V_I16 || t == GGUF_V_U32 ||
           t == GGUF_V_I32 || t == GGUF_V_U64 || t == GGUF_V_I64;
}

/* ggml.h's enum ggml_type (ids are append-only; gaps are types removed from GGUF).  st is
 * the moert dtype, -1 where moert has no kernel for the type. */
static const struct {
    uint32_t id;
    const char *name;
    int st;
} ggml_types[] = {
    {0, "F32", ST_F32},       {1, "F16", ST_F16},     {2, "Q4_0", ST_Q4_0},   {3, "Q4_1", -1},
    {6, "Q5_0", ST_Q5_0},     {7, "Q5_1", -1},        {8, "Q8_0", ST_Q8_0},   {9, "Q8_1", -1},
    {10, "Q2_K", -1},         {11, "Q3_K", -1},       {12, "Q4_K", ST_Q4_K},  {13, "Q5_K", ST_Q5_K},
    {14, "Q6_K", ST_Q6_K},    {15, "Q8_K", -1},       {16, "IQ2_XXS", -1},    {17, "IQ2_XS", -1},
    {18, "IQ3_XXS", -1},      {19, "IQ1_S", -1},      {20, "IQ4_NL", -1},     {21, "IQ3_S", -1},
    {22, "IQ2_S", -1},        {23, "IQ4_XS", -1},     {24, "I8", -1},         {25, "I16", -1},
    {26, "I32", -1},          {27, "I64", -1},        {28, "F64", -1},        {29, "IQ1_M", -1},
    {30, "BF16", ST_BF16},    {34, "TQ1_0", -1},      {35, "TQ2_0", -1},      {39, "MXFP4", -1},
    {40, "NVFP4", -1},        {41, "Q1_0", -1},       {42, "Q2_0", -1},
};
#define N_GGML_TYPES (sizeof ggml_types / sizeof ggml_types[0])
#define SUPPORTED_LIST "F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K"

static int ggml_index(uint32_t id)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].id == id)
            return (int)i;
    return -1;
}

const char *gguf_ggml_type_name(uint32_t ggml_type)
{
    int i = ggml_index(ggml_type);
    return i < 0 ? "unknown" : ggml_types[i].name;
}

int gguf_ggml_type_of(st_dtype d)
{
    for (size_t i = 0; i < N_GGML_TYPES; i++)
        if (ggml_types[i].st >= 0 && ggml_types[i].st == (int)d)
            return (int)ggml_types[i].id;
    return -1;
}

/* ---- the file --------------------------------------------------------------------- */

struct gguf_file {
    char *path;
    const uint8_t *map;
    size_t len;
    bool mapped;            /* munmap on close (false for gguf_open_memory) */
    uint32_t version;
    uint64_t alignment, data_offset;
    gguf_kv *kvs;
    size_t n_kv;
    gguf_str **kv_strs;     /* per kv: the elements of a string array, else NULL */
    size_t *kv_sorted;      /* kv indices sorted by key */
    gguf_tensor *tensors;
    size_t n_tensors;
    size_t *t_sorted;       /* tensor indices sorted by name */
};

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

void gguf_close(gguf_file *g)
{
    if (!g)
        return;
    if (g->mapped && g->map)
        munmap((void *)g->map, g->len);
    if (g->kv_strs)
        for (size_t i = 0; i < g->n_kv; i++)
            free(g->kv_strs[i]);
    free(g->kv_strs);
    free(g->kv_sorted);
    free(g->kvs);
    if (g->tensors)
        for (size_t i = 0; i < g->n_tensors; i++)
            free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->t_sorted);
    free(g->path);
    free(g);
}

const char *gguf_path(const gguf_file *g) { return g ? g->path : NULL; }
uint32_t gguf_version(const gguf_file *g) { return g ? g->version : 0; }
uint64_t gguf_alignment(const gguf_file *g) { return g ? g->alignment : 0; }
uint64_t gguf_data_offset(const gguf_file *g) { return g ? g->data_offset : 0; }
size_t gguf_kv_count(const gguf_file *g) { return g ? g->n_kv : 0; }
size_t gguf_tensor_count(const gguf_file *g) { return g ? g->n_tensors : 0; }

const gguf_kv *gguf_kv_at(const gguf_file *g, size_t i)
{
    return g && i < g->n_kv ? &g->kvs[i] : NULL;
}

const gguf_tensor *gguf_tensor_at(const gguf_file *g, size_t i)
{
    return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

static int cmp_bytes(const char *a, uint64_t an, const char *b, uint64_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : an < bn ? -1 : an > bn ? 1 : 0;
}

const gguf_kv *gguf_kv_find(const gguf_file *g, const char *key)
{
    if (!g || !key)
        return NULL;
    size_t kl = strlen(key), lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const gguf_kv *kv = &g->kvs[g->kv_sorted[mid]];
        int c = cmp_bytes(kv->key.p, kv->key.len, key, kl);
        if (c == 0)
            return kv;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const gguf_tensor *gguf_tensor_find(const gguf_file *g, const char *name)
{
    if (!g || !name)
        return NULL;
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const gguf_tensor *t = &g->tensors[g->t_sorted[mid]];
        int c = strcmp(t->name, name);
        if (c == 0)
            return t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- parsing ---------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *b;
    uint64_t len, pos;
    const char *path;
    moert_err *err;
} rd;

static uint64_t left(const rd *r) { return r->len - r->pos; }

/* "PATH: byte AT: MESSAGE" as MOERT_EFORMAT. */
static int fail(const rd *r, uint64_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(const rd *r, uint64_t at, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return err_set(r->err, MOERT_EFORMAT, "%s: byte %" PRIu64 ": %s", r->path, at, msg);
}

/* Checks that n bytes remain at the cursor; `what` (printf-style) names the field and is
 * only formatted when the check fails. */
static int need(const rd *r, uint64_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int need(const rd *r, uint64_t n, const char *fmt, ...)
{
    if (left(r) >= n)
        return MOERT_OK;
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return fail(r, r->pos, "expected %s (%" PRIu64 " byte%s), found only %" PRIu64
                " byte%s before the end of the file (size %" PRIu64 ")",
                what, n, n == 1 ? "" : "s", left(r), left(r) == 1 ? "" : "s", r->len);
}

/* A gguf string (u64 length + bytes) at the cursor, its length bounded by `limit` and by
 * the bytes left.  `what` names it in messages ("key 3", "the name of tensor 0"). */
static int read_str(rd *r, uint64_t limit, gguf_str *out, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int read_str(rd *r, uint64_t limit, gguf_str *out, const char *fmt, ...)
{
    uint64_t at = r->pos, n = 0;
    bool ok = left(r) >= 8;
    if (ok) {
        n = le64(r->b + at);
        ok = n <= limit && n <= left(r) - 8;
    }
    if (!ok) {
        char what[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        if (left(r) < 8)
            return fail(r, at, "expected the length of %s (8 bytes), found only %" PRIu64
                        " byte%s before the end of the file (size %" PRIu64 ")",
                        what, left(r), left(r) == 1 ? "" : "s", r->len);
        if (n > limit)
            return fail(r, at, "the length of %s is %" PRIu64 ", above the limit of %" PRIu64 " bytes", what, n,
                        limit);
        return fail(r, at, "the length of %s is %" PRIu64 ", but only %" PRIu64
                    " bytes follow it (file size %" PRIu64 ")", what, n, left(r) - 8, r->len);
    }
    out->p = (const char *)r->b + at + 8;
    out->len = n;
    r->pos = at + 8 + n;
    return MOERT_OK;
}

static bool valid_utf8(const gguf_str *s)
{
    uint64_t i = 0;
    while (i < s->len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)s->p + i, (utf8proc_ssize_t)(s->len - i), &cp);
        if (k <= 0)
            return false;
        i += (uint64_t)k;
    }
    return true;
}

static int parse_header(rd *r, gguf_file *g, uint64_t *n_tensors, uint64_t *n_kv)
{
    if (r->len < 4) {
        if (r->len == 0)
            return fail(r, 0, "expected the magic \"GGUF\", the file is empty");
        return fail(r, 0, "expected the magic \"GGUF\", the file is only %" PRIu64 " byte%s", r->len,
                    r->len == 1 ? "" : "s");
    }
    if (memcmp(r->b, "GGUF", 4) != 0) {
        char shown[20];
        size_t k = 0;
        for (int i = 0; i < 4; i++) {
            uint8_t c = r->b[i];
            if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
                shown[k++] = (char)c;
            else
                k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", c);
        }
        shown[k] = '\0';
        return fail(r, 0, "expected the magic \"GGUF\", found \"%s\"", shown);
    }
    r->pos = 4;
    int st;
    if ((st = need(r, 4, "the version")))
        return st;
    uint32_t v = le32(r->b + 4);
    if (v == 1 || v == 2)
        return fail(r, 4, "GGUF version %u is not supported, only version 3 (re-convert the model with a "
                    "current llama.cpp)", v);
    if (v != 3 && v != 0 && (v & 0xffffu) == 0)
        return fail(r, 4, "version 0x%08x looks byte-swapped: big-endian GGUF files are not supported, only "
                    "little-endian version 3", v);
    if (v != 3)
        return fail(r, 4, "expected GGUF version 3, found version %u", v);
    g->version = v;
    r->pos = 8;
    if ((st = need(r, 8, "n_tensors")))
        return st;
    *n_tensors = le64(r->b + 8);
    r->pos = 16;
    if ((st = need(r, 8, "n_kv")))
        return st;
    *n_kv = le64(r->b + 16);
    r->pos = HEADER_BYTES;
    /* Bounded by the limits, then by the smallest encoding of each item in the bytes that
     * follow: only then may the counts size an allocation. */
    if (*n_tensors > GGUF_MAX_TENSORS)
        return fail(r, 8, "n_tensors is %" PRIu64 ", above the limit of %u", *n_tensors, GGUF_MAX_TENSORS);
    if (*n_kv > GGUF_MAX_KV)
        return fail(r, 16, "n_kv is %" PRIu64 ", above the limit of %u", *n_kv, GGUF_MAX_KV);
    if (*n_tensors * MIN_TENSOR_INFO_BYTES > left(r))
        return fail(r, 8, "%" PRIu64 " tensor infos need at least %" PRIu64 " bytes, but only %" PRIu64
                    " bytes follow the header", *n_tensors, *n_tensors * MIN_TENSOR_INFO_BYTES, left(r));
    if (*n_kv * MIN_KV_BYTES > left(r))
        return fail(r, 16, "%" PRIu64 " key/value pairs need at least %" PRIu64 " bytes, but only %" PRIu64
                    " bytes follow the header", *n_kv, *n_kv * MIN_KV_BYTES, left(r));
    return MOERT_OK;
}

static int parse_kv(rd *r, gguf_file *g, size_t i)
{
    gguf_kv *kv = &g->kvs[i];
    kv->offset = r->pos;
    int st = read_str(r, GGUF_MAX_STRING, &kv->key, "key %zu", i);
    if (st)
        return st;
    if (kv->key.len == 0)
        return fail(r, kv->offset, "key %zu is empty, expected a non-empty name", i);
    if (memchr(kv->key.p, 0, kv->key.len))
        return fail(r, kv->offset, "key %zu holds a NUL byte", i);
    if (!valid_utf8(&kv->key))
        return fail(r, kv->offset, "key %zu is not valid UTF-8", i);
    if ((st = need(r, 4, "the value type of key " KEY_FMT, KEY_ARG(kv->key))))
        return st;
    uint32_t t = le32(r->b + r->pos);
    if (t >= GGUF_V_COUNT)
        return fail(r, r->pos, "key " KEY_FMT ": unknown value type %u, expected 0..12", KEY_ARG(kv->key), t);
    kv->type = (gguf_vtype)t;
    r->pos += 4;
    if (t == GGUF_V_STRING) {
        kv->val = r->b + r->pos;
        gguf_str s;
        return read_str(r, GGUF_MAX_STRING, &s, "the value of key " KEY_FMT, KEY_ARG(kv->key));
    }
    if (t != GGUF_V_ARRAY) {
        if ((st = need(r, vtype_size[t], "the %s value of key " KEY_FMT, vtype_names[t], KEY_ARG(kv->key))))
            return st;
        kv->val = r->b + r->pos;
        if (t == GGUF_V_BOOL && kv->val[0] > 1)
            return fail(r, r->pos, "key " KEY_FMT ": bool value is %u, expected 0 or 1", KEY_ARG(kv->key),
                        kv->val[0]);
        r->pos += vtype_size[t];
        return MOERT_OK;
    }
    if ((st = need(r, 12, "the element type (u32) and count (u64) of array key " KEY_FMT, KEY_ARG(kv->key))))
        return st;
    uint32_t et = le32(r->b + r->pos);
    if (et == GGUF_V_ARRAY)
        return fail(r, r->pos, "key " KEY_FMT ": arrays of arrays are not supported", KEY_ARG(kv->key));
    if (et >= GGUF_V_COUNT)
        return fail(r, r->pos, "key " KEY_FMT ": unknown array element type %u, expected 0..12",
                    KEY_ARG(kv->key), et);
    uint64_t count_at = r->pos + 4, n = le64(r->b + count_at);
    r->pos += 12;
    kv->arr_type = (gguf_vtype)et;
    kv->arr_n = n;
    kv->val = r->b + r->pos;
    /* A string element is at least its 8-byte length. */
    uint64_t esz = et == GGUF_V_STRING ? 8 : vtype_size[et], bytes;
    if (__builtin_mul_overflow(n, esz, &bytes) || bytes > left(r))
        return fail(r, count_at, "key " KEY_FMT ": %" PRIu64 " %s elements do not fit in the %" PRIu64
                    " bytes left in the file", KEY_ARG(kv->key), n, vtype_names[et], left(r));
    if (et == GGUF_V_STRING) {
        if (n) {
            /* n <= bytes left / 8, so this is bounded by twice the file size. */
            g->kv_strs[i] = malloc((size_t)n * sizeof(gguf_str));
            if (!g->kv_strs[i])
                return err_set(r->err, MOERT_ENOMEM, "%s: out of memory", r->path);
        }
        for (uint64_t k = 0; k < n; k++)
            if ((st = read_str(r, GGUF_MAX_STRING, &g->kv_strs[i][k], "element %" PRIu64 " of key " KEY_FMT, k,
                               KEY_ARG(kv->key))))
                return st;
        return MOERT_OK;
    }
    if (et == GGUF_V_BOOL)
        for (uint64_t k = 0; k < n; k++)
            if (kv->val[k] > 1)
                return fail(r, r->pos + k, "key " KEY_FMT ": element %" PRIu64 " is %u, expected a bool (0 or 1)",
                            KEY_ARG(kv->key), k, kv->val[k]);
    r->pos += bytes;
    return MOERT_OK;
}

static int cmp_kv_index(const void *a, const void *b, void *ctx)
{
    const gguf_file *g = ctx;
    const gguf_kv *x = &g->kvs[*(const size_t *)a], *y = &g->kvs[*(const size_t *)b];
    int c = cmp_bytes(x->key.p, x->key.len, y->key.p, y->key.len);
    return c ? c : x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : 0;
}

static int cmp_tensor_index(const void *a, const void *b, void *ctx)
{
    const gguf_file *g = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(g->tensors[i].name, g->tensors[j].name);
    return c ? c : i < j ? -1 : i > j ? 1 : 0;
}

/* Per-tensor facts needed after all infos are read. */
typedef struct tinfo {
    uint64_t off_at;  /* byte offset of the offset field */
    uint64_t begin, end;
    size_t index;
} tinfo;

static int cmp_span(const void *a, const void *b)
{
    const tinfo *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index ? 1 : 0;
}

static void fmt_ne(char *buf, size_t cap, const int64_t *ne, int nd)
{
    size_t n = (size_t)snprintf(buf, cap, "{");
    for (int i = 0; i < nd && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", ne[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "}");
}

static int parse_tensor_info(rd *r, gguf_file *g, size_t i, tinfo *ti)
{
    gguf_tensor *t = &g->tensors[i];
    t->info_offset = r->pos;
    gguf_str nm;
    int st = read_str(r, GGUF_MAX_NAME, &nm, "the name of tensor %zu", i);
    if (st)
        return st;
    if (nm.len == 0)
        return fail(r, t->info_offset, "tensor %zu has an empty name", i);
    if (memchr(nm.p, 0, nm.len))
        return fail(r, t->info_offset, "the name of tensor %zu holds a NUL byte", i);
    char *name = malloc(nm.len + 1);
    if (!name)
        return err_set(r->err, MOERT_ENOMEM, "%s: out of memory", r->path);
    memcpy(name, nm.p, nm.len);
    name[nm.len] = '\0';
    t->name = name;
    if ((st = need(r, 4, "the n_dims of tensor " NAME_FMT, name)))
        return st;
    uint32_t nd = le32(r->b + r->pos);
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return fail(r, r->pos, "tensor " NAME_FMT ": n_dims is %u, expected 1..%d", name, nd, GGUF_MAX_DIMS);
    r->pos += 4;
    t->ndim = (int)nd;
    if ((st = need(r, 8ull * nd, "the %u dims (u64 each) of tensor " NAME_FMT, nd, name)))
        return st;
    uint64_t ne_at = r->pos;
    int64_t count = 1;
    bool too_many = false;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v = le64(r->b + r->pos + 8ull * d);
        if (v == 0)
            return fail(r, r->pos + 8ull * d, "tensor " NAME_FMT ": ne[%u] is 0, expected > 0", name, d);
        if (v > (uint64_t)INT64_MAX)
            return fail(r, r->pos + 8ull * d, "tensor " NAME_FMT ": ne[%u] is %" PRIu64 ", above INT64_MAX", name,
                        d, v);
        t->ne[d] = (int64_t)v;
        too_many |= __builtin_mul_overflow(count, (int64_t)v, &count);
    }
    for (int d = (int)nd; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    char shape[160];
    fmt_ne(shape, sizeof shape, t->ne, (int)nd);
    if (too_many)
        return fail(r, ne_at, "tensor " NAME_FMT ": ne %s has more than INT64_MAX elements", name, shape);
    r->pos += 8ull * nd;
    if ((st = need(r, 4, "the ggml type of tensor " NAME_FMT, name)))
        return st;
    uint32_t type = le32(r->b + r->pos);
    int k = ggml_index(type);
    if (k < 0)
        return fail(r, r->pos, "tensor " NAME_FMT " has unknown ggml type %u", name, type);
    if (ggml_types[k].st < 0)
        return fail(r, r->pos, "tensor " NAME_FMT " has type %s (%u), which moert does not support; supported: "
                    SUPPORTED_LIST, name, ggml_types[k].name, type);
    t->ggml_type = type;
    t->dtype = (st_dtype)ggml_types[k].st;
    ops_dtype o = (ops_dtype)st_dtype_ops(t->dtype);
    int64_t be = ops_dtype_block_elems(o);
    uint64_t bb = ops_dtype_block_bytes(o);
    if (t->ne[0] % be)
        return fail(r, ne_at, "tensor " NAME_FMT ": ne[0] is %" PRId64 ", not a multiple of the %s block (%" PRId64
                    " elements)", name, t->ne[0], ggml_types[k].name, be);
    uint64_t nbytes = (uint64_t)(t->ne[0] / be);
    bool big = __builtin_mul_overflow(nbytes, bb, &nbytes);
    for (int d = 1; d < (int)nd; d++)
        big |= __builtin_mul_overflow(nbytes, (uint64_t)t->ne[d], &nbytes);
    if (big)
        return fail(r, ne_at, "tensor " NAME_FMT ": ne %s of %s needs 2^64 bytes or more", name, shape,
                    ggml_types[k].name);
    t->nbytes = nbytes;
    r->pos += 4;
    if ((st = need(r, 8, "the data offset of tensor " NAME_FMT, name)))
        return st;
    ti->off_at = r->pos;
    ti->begin = le64(r->b + r->pos);
    ti->index = i;
    r->pos += 8;
    return MOERT_OK;
}

static int parse(gguf_file *g, moert_err *err)
{
    rd r = {.b = g->map, .len = g->len, .pos = 0, .path = g->path, .err = err};
    uint64_t n_tensors = 0, n_kv = 0;
    int st = parse_header(&r, g, &n_tensors, &n_kv);
    if (st)
        return st;
    /* Both counts are now bounded by the file's size (and the limits). */
    if (n_kv) {
        g->kvs = calloc((size_t)n_kv, sizeof *g->kvs);
        g->kv_strs = calloc((size_t)n_kv, sizeof *g->kv_strs);
        g->kv_sorted = malloc((size_t)n_kv * sizeof *g->kv_sorted);
        if (!g->kvs || !g->kv_strs || !g->kv_sorted)
            return err_set(err, MOERT_ENOMEM, "%s: out of memory", g->path);
    }
    g->n_kv = (size_t)n_kv;
    for (size_t i = 0; i < g->n_kv; i++)
        if ((st = parse_kv(&r, g, i)))
            return st;
    for (size_t i = 0; i < g->n_kv; i++)
        g->kv_sorted[i] = i;
    if (g->n_kv > 1)
        qsort_r(g->kv_sorted, g->n_kv, sizeof *g->kv_sorted, cmp_kv_index, g);
    for (size_t i = 1; i < g->n_kv; i++) {
        const gguf_kv *a = &g->kvs[g->kv_sorted[i - 1]], *b = &g->kvs[g->kv_sorted[i]];
        if (cmp_bytes(a->key.p, a->key.len, b->key.p, b->key.len) == 0)
            return fail(&r, b->offset, "duplicate key " KEY_FMT " (first at byte %" PRIu64 ")", KEY_ARG(b->key),
                        a->offset);
    }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *al = gguf_kv_find(g, "general.alignment");
    if (al) {
        if (al->type != GGUF_V_U32)
            return fail(&r, al->offset, "key 'general.alignment' is %s %s, expected u32", article(al->type),
                        vtype_names[al->type]);
        uint32_t a = le32(al->val);
        if (a == 0 || (a & (a - 1)))
            return fail(&r, (uint64_t)(al->val - g->map), "general.alignment is %u, expected a non-zero power of two",
                        a);
        g->alignment = a;
    }

    tinfo *ti = NULL;
    if (n_tensors) {
        g->tensors = calloc((size_t)n_tensors, sizeof *g->tensors);
        g->t_sorted = malloc((size_t)n_tensors * sizeof *g->t_sorted);
        ti = malloc((size_t)n_tensors * sizeof *ti);
        if (!g->tensors || !g->t_sorted || !ti) {
            free(ti);
            return err_set(err, MOERT_ENOMEM, "%s: out of memory", g->path);
        }
    }
    g->n_tensors = (size_t)n_tensors;
    for (size_t i = 0; i < g->n_tensors; i++)
        if ((st = parse_tensor_info(&r, g, i, &ti[i])))
            goto out;
    for (size_t i = 0; i < g->n_tensors; i++)
        g->t_sorted[i] = i;
    if (g->n_tensors > 1)
        qsort_r(g->t_sorted, g->n_tensors, sizeof *g->t_sorted, cmp_tensor_index, g);
    for (size_t i = 1; i < g->n_tensors; i++) {
        const gguf_tensor *a = &g->tensors[g->t_sorted[i - 1]], *b = &g->tensors[g->t_sorted[i]];
        if (strcmp(a->name, b->name) == 0) {
            st = fail(&r, b->info_offset, "duplicate tensor name " NAME_FMT " (first at byte %" PRIu64 ")", b->name,
                      a->info_offset);
            goto out;
        }
    }

    /* The data section starts at the next multiple of the alignment.  With no tensors
     * llama.cpp does not require the padding, so a file may end before it. */
    uint64_t a = g->alignment, infos_end = r.pos, dof;
    if (__builtin_add_overflow(infos_end, a - 1, &dof) || (dof & ~(a - 1)) > r.len) {
        if (g->n_tensors) {
            st = fail(&r, infos_end, "the data section would start at byte %" PRIu64 " (tensor infos end here, padded "
                      "to the alignment %" PRIu64 "), past the end of the file (size %" PRIu64 ")",
                      (infos_end + a - 1) & ~(a - 1), a, r.len);
            goto out;
        }
        dof = infos_end;
    } else {
        dof &= ~(a - 1);
    }
    g->data_offset = dof;
    uint64_t data_size = r.len - dof;
    for (size_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor *t = &g->tensors[i];
        uint64_t rel = ti[i].begin;
        if (rel % a) {
            st = fail(&r, ti[i].off_at, "tensor " NAME_FMT ": offset %" PRIu64 " is not a multiple of the alignment %"
                      PRIu64, t->name, rel, a);
            goto out;
        }
        if (rel >= data_size) {
            st = fail(&r, ti[i].off_at, "tensor " NAME_FMT ": offset %" PRIu64 " is past the end of the %" PRIu64
                      "-byte data section (which starts at byte %" PRIu64 ")", t->name, rel, data_size, dof);
            goto out;
        }
        uint64_t begin = dof + rel;
        if (t->nbytes > r.len - begin) {
            uint64_t end;
            if (__builtin_add_overflow(begin, t->nbytes, &end))
                st = fail(&r, ti[i].off_at, "tensor " NAME_FMT " data [%" PRIu64 ", %" PRIu64 " + %" PRIu64
                          ") runs past the end of the file (size %" PRIu64 ")", t->name, begin, begin, t->nbytes, r.len);
            else
                st = fail(&r, ti[i].off_at, "tensor " NAME_FMT " data [%" PRIu64 ", %" PRIu64
                          ") runs past the end of the file (size %" PRIu64 ")", t->name, begin, end, r.len);
            goto out;
        }
        t->offset = begin;
        t->data = g->map + begin;
        ti[i].begin = begin;
        ti[i].end = begin + t->nbytes;
    }
    /* No two tensors share a byte: sorted by start, each must begin at or after the furthest
     * end seen so far. */
    if (g->n_tensors > 1)
        qsort(ti, g->n_tensors, sizeof *ti, cmp_span);
    for (size_t i = 1, far = 0; i < g->n_tensors; i++) {
        if (ti[i].begin < ti[far].end) {
            st = fail(&r, ti[i].off_at, "tensor " NAME_FMT " data [%" PRIu64 ", %" PRIu64 ") overlaps tensor " NAME_FMT
                      " data [%" PRIu64 ", %" PRIu64 ")", g->tensors[ti[i].index].name, ti[i].begin, ti[i].end,
                      g->tensors[ti[far].index].name, ti[far].begin, ti[far].end);
            goto out;
        }
        if (ti[i].end > ti[far].end)
            far = i;
    }
out:
    free(ti);
    return st;
}

static int new_file(const char *path, gguf_file **out, moert_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out || !((*out)->path = strdup(path))) {
        free(*out);
        *out = NULL;
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    return MOERT_OK;
}

bool gguf_is_gguf(const char *path)
{
    if (!path)
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    char m[4];
    ssize_t k = read(fd, m, 4);
    close(fd);
    return k == 4 && memcmp(m, "GGUF", 4) == 0;
}

int gguf_open(const char *path, gguf_file **out, moert_err *err)
{
    if (out)
        *out = NULL;
    if (!path || !*path || !out)
        return err_set(err, MOERT_EUSAGE, "gguf: empty path or NULL output");
    gguf_file *g;
    int st = new_file(path, &g, err);
    if (st)
        return st;
    void *m;
    size_t len;
    st = afile_map(path, &m, &len, err);
    if (!st) {
        g->map = m;
        g->len = len;
        g->mapped = m != NULL;
    }
    if (!st)
        st = parse(g, err);
    if (st) {
        gguf_close(g);
        return st;
    }
    *out = g;
    return MOERT_OK;
}

int gguf_open_memory(const void *data, size_t len, const char *label, gguf_file **out, moert_err *err)
{
    if (out)
        *out = NULL;
    if (!out || (!data && len))
        return err_set(err, MOERT_EUSAGE, "gguf: NULL image or output");
    gguf_file *g;
    int st = new_file(label ? label : "(image)", &g, err);
    if (st)
        return st;
    g->map = data;
    g->len = data ? len : 0;
    if ((st = parse(g, err))) {
        gguf_close(g);
        return st;
    }
    *out = g;
    return MOERT_OK;
}

/* ---- metadata getters ------------------------------------------------------------- */

static const gguf_kv *find_or_fail(const gguf_file *g, const char *key, moert_err *err)
{
    const gguf_kv *kv = gguf_kv_find(g, key);
    if (!kv)
        err_set(err, MOERT_EFORMAT, "%s: missing key '%.160s'", g ? g->path : "gguf", key ? key : "(null)");
    return kv;
}

static int wrong_type(const gguf_file *g, const gguf_kv *kv, const char *expected, moert_err *err)
{
    if (kv->type == GGUF_V_ARRAY)
        return err_set(err, MOERT_EFORMAT, "%s: byte %" PRIu64 ": key " KEY_FMT " is an array of %s, expected %s",
                       g->path, kv->offset, KEY_ARG(kv->key), vtype_names[kv->arr_type], expected);
    return err_set(err, MOERT_EFORMAT, "%s: byte %" PRIu64 ": key " KEY_FMT " is %s %s, expected %s", g->path,
                   kv->offset, KEY_ARG(kv->key), article(kv->type), vtype_names[kv->type], expected);
}

/* An integer element of type t at p, as signed (neg) or unsigned magnitude. */
static void read_int(gguf_vtype t, const uint8_t *p, bool *neg, uint64_t *u, int64_t *s)
{
    switch (t) {
    case GGUF_V_U8: *u = p[0]; break;
    case GGUF_V_U16: *u = (uint64_t)p[0] | (uint64_t)p[1] << 8; break;
    case GGUF_V_U32: *u = le32(p); break;
    case GGUF_V_U64: *u = le64(p); break;
    case GGUF_V_I8: *s = (int8_t)p[0]; break;
    case GGUF_V_I16: *s = (int16_t)(uint16_t)((unsigned)p[0] | (unsigned)p[1] << 8); break;
    case GGUF_V_I32: *s = (int32_t)le32(p); break;
    case GGUF_V_I64: *s = (int64_t)le64(p); break;
    default: break;
    }
    bool sig = t == GGUF_V_I8 || t == GGUF_V_I16 || t == GGUF_V_I32 || t == GGUF_V_I64;
    if (sig) {
        *neg = *s < 0;
        *u = (uint64_t)*s;
    } else {
        *neg = false;
        *s = (int64_t)*u;
    }
}

int gguf_get_u64(const gguf_file *g, const char *key, uint64_t *v, moert_err *err)
{
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (!is_int_vtype(kv->type))
        return wrong_type(g, kv, "an integer", err);
    bool neg;
    uint64_t u = 0;
    int64_t s = 0;
    read_int(kv->type, kv->val, &neg, &u, &s);
    if (neg)
        return err_set(err, MOERT_EFORMAT, "%s: byte %" PRIu64 ": key " KEY_FMT " is %" PRId64
                       " (%s), expected a non-negative integer", g->path, kv->offset, KEY_ARG(kv->key), s,
                       vtype_names[kv->type]);
    *v = u;
    return MOERT_OK;
}

int gguf_get_i64(const gguf_file *g, const char *key, int64_t *v, moert_err *err)
{
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (!is_int_vtype(kv->type))
        return wrong_type(g, kv, "an integer", err);
    bool neg;
    uint64_t u = 0;
    int64_t s = 0;
    read_int(kv->type, kv->val, &neg, &u, &s);
    if (!neg && u > (uint64_t)INT64_MAX)
        return err_set(err, MOERT_EFORMAT, "%s: byte %" PRIu64 ": key " KEY_FMT " is %" PRIu64
                       " (%s), above INT64_MAX", g->path, kv->offset, KEY_ARG(kv->key), u, vtype_names[kv->type]);
    *v = s;
    return MOERT_OK;
}

static double read_float(gguf_vtype t, const uint8_t *p)
{
    if (t == GGUF_V_F32) {
        uint32_t b = le32(p);
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    uint64_t b = le64(p);
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

int gguf_get_f64(const gguf_file *g, const char *key, double *v, moert_err *err)
{
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (kv->type != GGUF_V_F32 && kv->type != GGUF_V_F64)
        return wrong_type(g, kv, "f32 or f64", err);
    *v = read_float(kv->type, kv->val);
    return MOERT_OK;
}

int gguf_get_bool(const gguf_file *g, const char *key, bool *v, moert_err *err)
{
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (kv->type != GGUF_V_BOOL)
        return wrong_type(g, kv, "a bool", err);
    *v = kv->val[0] != 0;
    return MOERT_OK;
}

int gguf_get_str(const gguf_file *g, const char *key, gguf_str *v, moert_err *err)
{
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (kv->type != GGUF_V_STRING)
        return wrong_type(g, kv, "a string", err);
    v->len = le64(kv->val);
    v->p = (const char *)kv->val + 8;
    return MOERT_OK;
}

int gguf_get_arr(const gguf_file *g, const char *key, gguf_vtype elem, const gguf_kv **out, moert_err *err)
{
    *out = NULL;
    const gguf_kv *kv = find_or_fail(g, key, err);
    if (!kv)
        return MOERT_EFORMAT;
    if (kv->type != GGUF_V_ARRAY || kv->arr_type != elem) {
        char want[40];
        snprintf(want, sizeof want, "an array of %s", gguf_vtype_name(elem));
        return wrong_type(g, kv, want, err);
    }
    *out = kv;
    return MOERT_OK;
}

gguf_str gguf_arr_str(const gguf_file *g, const gguf_kv *kv, uint64_t i)
{
    gguf_str none = {NULL, 0};
    /* kv must be one of g's own (compared as integers: it may come from another file). */
    uintptr_t at = (uintptr_t)kv, lo = (uintptr_t)(g ? g->kvs : NULL);
    if (!g || !kv || !g->n_kv || at < lo || at >= lo + g->n_kv * sizeof *kv || (at - lo) % sizeof *kv)
        return none;
    size_t k = (at - lo) / sizeof *kv;
    if (kv->type != GGUF_V_ARRAY || kv->arr_type != GGUF_V_STRING || i >= kv->arr_n)
        return none;
    return g->kv_strs[k][i];
}

int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i)
{
    if (!kv || kv->type != GGUF_V_ARRAY || !is_int_vtype(kv->arr_type) || i >= kv->arr_n)
        return 0;
    bool neg;
    uint64_t u = 0;
    int64_t s = 0;
    read_int(kv->arr_type, kv->val + i * vtype_size[kv->arr_type], &neg, &u, &s);
    return s;
}

double gguf_arr_float(const gguf_kv *kv, uint64_t i)
{
    if (!kv || kv->type != GGUF_V_ARRAY || (kv->arr_type != GGUF_V_F32 && kv->arr_type != GGUF_V_F64) ||
        i >= kv->arr_n)
        return 0;
    return read_float(kv->arr_type, kv->val + i * vtype_size[kv->arr_type]);
}

/* ---- writing ---------------------------------------------------------------------- */

/* llama.cpp keeps tensor names in a char[GGML_MAX_NAME = 64]: longer names would be
 * written fine but refused by it. */
#define WRITER_MAX_NAME 63

typedef struct wtensor {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
} wtensor;

struct gguf_writer {
    uint8_t *kv;            /* the serialized key/value section */
    size_t kv_len, kv_cap;
    char **keys;
    size_t n_kv, cap_keys;
    wtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
};

int gguf_writer_new(gguf_writer **out, moert_err *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
    (*out)->alignment = GGUF_DEFAULT_ALIGNMENT;
    return MOERT_OK;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->t);
    free(w->kv);
    free(w);
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static bool cstr_utf8(const char *s)
{
    gguf_str g = {s, strlen(s)};
    return valid_utf8(&g);
}

/* Validates `key`, reserves `vbytes` value bytes after the key and the type field, and
 * records the key; *val points at the value bytes to fill. */
static int begin_kv(gguf_writer *w, const char *key, gguf_vtype type, uint64_t vbytes, uint8_t **val,
                    moert_err *err)
{
    *val = NULL;
    if (!w)
        return err_set(err, MOERT_EUSAGE, "gguf writer: NULL writer");
    if (!key || !*key)
        return err_set(err, MOERT_EUSAGE, "gguf writer: %s key", key ? "empty" : "NULL");
    size_t kl = strlen(key);
    if (kl > GGUF_MAX_STRING || !cstr_utf8(key))
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT " is %s", key,
                       kl > GGUF_MAX_STRING ? "too long" : "not valid UTF-8");
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT " added twice", key);
    if (strcmp(key, "general.alignment") == 0 && type != GGUF_V_U32)
        return err_set(err, MOERT_EUSAGE, "gguf writer: general.alignment must be a u32 (llama.cpp refuses any "
                       "other type), not %s %s", article(type), vtype_names[type]);
    uint64_t need = 8 + kl + 4 + vbytes;
    if (vbytes > SIZE_MAX / 2 || need > SIZE_MAX / 2 - w->kv_len)
        return err_set(err, MOERT_EUSAGE, "gguf writer: value of key " NAME_FMT " is too large", key);
    if (w->kv_len + need > w->kv_cap) {
        size_t cap = w->kv_cap ? w->kv_cap : 1024;
        while (cap < w->kv_len + need)
            cap *= 2;
        uint8_t *p = realloc(w->kv, cap);
        if (!p)
            return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
        w->kv = p;
        w->kv_cap = cap;
    }
    if (w->n_kv == w->cap_keys) {
        size_t cap = w->cap_keys ? 2 * w->cap_keys : 32;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k)
            return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
        w->keys = k;
        w->cap_keys = cap;
    }
    if (!(w->keys[w->n_kv] = strdup(key)))
        return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
    w->n_kv++;
    uint8_t *p = w->kv + w->kv_len;
    put_le(p, kl, 8);
    memcpy(p + 8, key, kl);
    put_le(p + 8 + kl, (uint64_t)type, 4);
    w->kv_len += (size_t)need;
    *val = p + 8 + kl + 4;
    return MOERT_OK;
}

static int add_scalar(gguf_writer *w, const char *key, gguf_vtype t, uint64_t bits, moert_err *err)
{
    uint8_t *p;
    int st = begin_kv(w, key, t, vtype_size[t], &p, err);
    if (st)
        return st;
    put_le(p, bits, vtype_size[t]);
    return MOERT_OK;
}

int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v, moert_err *err)
{
    if (key && strcmp(key, "general.alignment") == 0) {
        if (v == 0 || (v & (v - 1)))
            return err_set(err, MOERT_EUSAGE, "gguf writer: general.alignment %u is not a non-zero power of two", v);
        int st = add_scalar(w, key, GGUF_V_U32, v, err);
        if (!st)
            w->alignment = v;
        return st;
    }
    return add_scalar(w, key, GGUF_V_U32, v, err);
}

int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v, moert_err *err)
{
    return add_scalar(w, key, GGUF_V_I32, (uint32_t)v, err);
}

int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v, moert_err *err)
{
    return add_scalar(w, key, GGUF_V_U64, v, err);
}

int gguf_writer_add_f32(gguf_writer *w, const char *key, float v, moert_err *err)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return add_scalar(w, key, GGUF_V_F32, b, err);
}

int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v, moert_err *err)
{
    return add_scalar(w, key, GGUF_V_BOOL, v ? 1 : 0, err);
}

int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v, moert_err *err)
{
    if (!v)
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": NULL string", key ? key : "(null)");
    size_t n = strlen(v);
    if (n > GGUF_MAX_STRING)
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": string of %zu bytes, above the limit of %u",
                       key ? key : "(null)", n, GGUF_MAX_STRING);
    uint8_t *p;
    int st = begin_kv(w, key, GGUF_V_STRING, 8 + n, &p, err);
    if (st)
        return st;
    put_le(p, n, 8);
    memcpy(p + 8, v, n);
    return MOERT_OK;
}

int gguf_writer_add_str_arr(gguf_writer *w, const char *key, const char *const *v, size_t n, moert_err *err)
{
    if (n && !v)
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": NULL array", key ? key : "(null)");
    uint64_t bytes = 12;
    for (size_t i = 0; i < n; i++) {
        size_t l = v[i] ? strlen(v[i]) : 0;
        if (!v[i] || l > GGUF_MAX_STRING)
            return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": element %zu is %s", key ? key : "(null)",
                           i, v[i] ? "longer than the string limit" : "NULL");
        bytes += 8 + l;
    }
    uint8_t *p;
    int st = begin_kv(w, key, GGUF_V_ARRAY, bytes, &p, err);
    if (st)
        return st;
    put_le(p, GGUF_V_STRING, 4);
    put_le(p + 4, n, 8);
    p += 12;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(v[i]);
        put_le(p, l, 8);
        memcpy(p + 8, v[i], l);
        p += 8 + l;
    }
    return MOERT_OK;
}

int gguf_writer_add_i32_arr(gguf_writer *w, const char *key, const int32_t *v, size_t n, moert_err *err)
{
    if (n && !v)
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": NULL array", key ? key : "(null)");
    if (n > (SIZE_MAX / 2) / 4)
        return err_set(err, MOERT_EUSAGE, "gguf writer: key " NAME_FMT ": array too large", key ? key : "(null)");
    uint8_t *p;
    int st = begin_kv(w, key, GGUF_V_ARRAY, 12 + 4 * (uint64_t)n, &p, err);
    if (st)
        return st;
    put_le(p, GGUF_V_I32, 4);
    put_le(p + 4, n, 8);
    for (size_t i = 0; i < n; i++)
        put_le(p + 12 + 4 * i, (uint32_t)v[i], 4);
    return MOERT_OK;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, st_dtype dtype, int ndim, const int64_t *ne,
                           moert_err *err)
{
    if (!w)
        return err_set(err, MOERT_EUSAGE, "gguf writer: NULL writer");
    if (!name || !*name || strlen(name) > WRITER_MAX_NAME)
        return err_set(err, MOERT_EUSAGE, "gguf writer: tensor name %s%.80s%s is %s", name ? "'" : "",
                       name ? name : "NULL", name ? "'" : "",
                       !name ? "missing" : !*name ? "empty" : "longer than 63 bytes (llama.cpp's GGML_MAX_NAME)");
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT " declared twice", name);
    if (gguf_ggml_type_of(dtype) < 0)
        return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT ": dtype %s has no GGUF type moert writes",
                       name, st_dtype_name(dtype));
    if (ndim < 1 || ndim > GGUF_MAX_DIMS || !ne)
        return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT ": ndim %d, expected 1..%d", name, ndim,
                       GGUF_MAX_DIMS);
    ops_dtype o = (ops_dtype)st_dtype_ops(dtype);
    int64_t be = ops_dtype_block_elems(o), count = 1;
    uint64_t nbytes = 0;
    bool ovf = false;
    for (int d = 0; d < ndim; d++) {
        if (ne[d] <= 0)
            return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT ": ne[%d] = %" PRId64 ", expected > 0",
                           name, d, ne[d]);
        ovf |= __builtin_mul_overflow(count, ne[d], &count);
    }
    if (!ovf && ne[0] % be)
        return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT ": ne[0] = %" PRId64
                       " is not a multiple of the %s block (%" PRId64 ")", name, ne[0], st_dtype_name(dtype), be);
    if (!ovf) {
        ovf = __builtin_mul_overflow((uint64_t)(ne[0] / be), (uint64_t)ops_dtype_block_bytes(o), &nbytes);
        for (int d = 1; d < ndim; d++)
            ovf |= __builtin_mul_overflow(nbytes, (uint64_t)ne[d], &nbytes);
    }
    if (ovf || nbytes > (uint64_t)INT64_MAX)
        return err_set(err, MOERT_EUSAGE, "gguf writer: tensor " NAME_FMT ": sizes overflow", name);
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 32;
        wtensor *t = realloc(w->t, cap * sizeof *t);
        if (!t)
            return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name)))
        return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
    t->dtype = dtype;
    t->ndim = ndim;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = d < ndim ? ne[d] : 1;
    t->nbytes = nbytes;
    w->n_t++;
    return MOERT_OK;
}

/* Everything before the data section (zero-padded to the alignment), with each tensor's
 * offset assigned: declaration order, each padded to the alignment (llama.cpp requires
 * exactly this layout).  *total is the file size. */
static int encode_header(gguf_writer *w, uint8_t **out, size_t *hlen, uint64_t *total, moert_err *err)
{
    *out = NULL;
    uint64_t a = w->alignment, n = HEADER_BYTES + w->kv_len;
    for (size_t i = 0; i < w->n_t; i++)
        n += 8 + strlen(w->t[i].name) + 4 + 8 * (uint64_t)w->t[i].ndim + 4 + 8;
    uint64_t dof = (n + a - 1) & ~(a - 1), at = 0;
    bool ovf = dof > SIZE_MAX / 2;
    for (size_t i = 0; i < w->n_t && !ovf; i++) {
        w->t[i].offset = at;
        ovf = __builtin_add_overflow(at, w->t[i].nbytes, &at) || __builtin_add_overflow(at, a - 1, &at);
        at &= ~(a - 1);
    }
    if (ovf || __builtin_add_overflow(dof, at, total) || *total > (uint64_t)INT64_MAX)
        return err_set(err, MOERT_EUSAGE, "gguf writer: the file would exceed 2^63 bytes");
    uint8_t *h = calloc(1, (size_t)dof);
    if (!h)
        return err_set(err, MOERT_ENOMEM, "gguf writer: out of memory");
    memcpy(h, "GGUF", 4);
    put_le(h + 4, 3, 4);
    put_le(h + 8, w->n_t, 8);
    put_le(h + 16, w->n_kv, 8);
    uint8_t *p = h + HEADER_BYTES;
    if (w->kv_len)
        memcpy(p, w->kv, w->kv_len);
    p += w->kv_len;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t l = strlen(t->name);
        put_le(p, l, 8);
        memcpy(p + 8, t->name, l);
        p += 8 + l;
        put_le(p, (uint64_t)t->ndim, 4);
        p += 4;
        for (int d = 0; d < t->ndim; d++, p += 8)
            put_le(p, (uint64_t)t->ne[d], 8);
        put_le(p, (uint64_t)gguf_ggml_type_of(t->dtype), 4);
        put_le(p + 4, t->offset, 8);
        p += 12;
    }
    *out = h;
    *hlen = (size_t)dof;
    return MOERT_OK;
}

static int fill_failed(int st, const char *where, const char *tensor, moert_err *err)
{
    if (err && err->code == MOERT_OK)
        err_set(err, st, "fill callback failed (status %d)", st);
    if (err)
        err_prefix(err, "%s: tensor " NAME_FMT, where, tensor);
    return st;
}

int gguf_writer_to_memory(gguf_writer *w, gguf_fill_fn fill, void *ctx, uint8_t **out, size_t *len, moert_err *err)
{
    *out = NULL;
    *len = 0;
    if (!w)
        return err_set(err, MOERT_EUSAGE, "gguf writer: NULL writer");
    uint8_t *h;
    size_t hl;
    uint64_t total;
    int st = encode_header(w, &h, &hl, &total, err);
    if (st)
        return st;
    uint8_t *img = total <= SIZE_MAX ? calloc(1, (size_t)total) : NULL;
    if (!img) {
        free(h);
        return err_set(err, MOERT_ENOMEM, "gguf writer: cannot allocate %" PRIu64 " bytes", total);
    }
    memcpy(img, h, hl);
    free(h);
    for (size_t i = 0; fill && i < w->n_t; i++) {
        if (!w->t[i].nbytes)
            continue;
        if (err)
            err_clear(err);
        if ((st = fill(ctx, i, 0, img + hl + w->t[i].offset, (size_t)w->t[i].nbytes, err))) {
            free(img);
            return fill_failed(st, "gguf writer (memory)", w->t[i].name, err);
        }
    }
    *out = img;
    *len = (size_t)total;
    return MOERT_OK;
}

/* The scratch a tensor is filled through: big tensors come in chunks of this size. */
#define FILL_CHUNK ((size_t)1 << 20)

static int write_body(gguf_writer *w, afile *f, const char *path, gguf_fill_fn fill, void *ctx, moert_err *err)
{
    uint8_t *h;
    size_t hl;
    uint64_t total;
    int st = encode_header(w, &h, &hl, &total, err);
    if (st)
        return st;
    st = afile_write(f, h, hl, err);
    free(h);
    if (st)
        return st;
    uint64_t biggest = 0, a = w->alignment;
    for (size_t i = 0; i < w->n_t; i++)
        biggest = w->t[i].nbytes > biggest ? w->t[i].nbytes : biggest;
    size_t cap = biggest < FILL_CHUNK ? (size_t)biggest : FILL_CHUNK;
    if (cap < 4096)
        cap = 4096; /* also the zero source for padding */
    uint8_t *buf = malloc(cap);
    if (!buf)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < w->n_t && !st; i++) {
        const wtensor *t = &w->t[i];
        for (uint64_t off = 0; off < t->nbytes && !st; off += cap) {
            size_t k = t->nbytes - off < cap ? (size_t)(t->nbytes - off) : cap;
            if (fill) {
                if (err)
                    err_clear(err);
                if ((st = fill(ctx, i, off, buf, k, err)))
                    st = fill_failed(st, path, t->name, err);
            } else {
                memset(buf, 0, k);
            }
            if (!st)
                st = afile_write(f, buf, k, err);
        }
        uint64_t pad = ((t->nbytes + a - 1) & ~(a - 1)) - t->nbytes;
        if (!st && pad)
            memset(buf, 0, cap);
        while (!st && pad) {
            size_t k = pad < cap ? (size_t)pad : cap;
            st = afile_write(f, buf, k, err);
            pad -= k;
        }
    }
    free(buf);
    return st;
}

int gguf_writer_write_file(gguf_writer *w, const char *path, gguf_fill_fn fill, void *ctx, moert_err *err)
{
    if (!w || !path || !*path)
        return err_set(err, MOERT_EUSAGE, "gguf writer: NULL writer or empty path");
    afile f;
    int st = afile_open(&f, path, err);
    if (st)
        return st;
    if ((st = write_body(w, &f, path, fill, ctx, err))) {
        afile_abort(&f);
        return st;
    }
    return afile_commit(&f, err);
}
