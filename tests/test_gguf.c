/* gguf: writer round trip, a catalogue of corrupt files (each patched or crafted byte by
 * byte here, each with the exact message it must produce), typed getters, and the
 * llama.cpp-made fixtures in ../shared/reference. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/gguf.h"
#include "util.h"

/* ---- a raw little-endian byte builder, independent of the writer ------------------- */

typedef struct img {
    uint8_t b[4096];
    size_t n;
} img;

static void p_bytes(img *m, const void *p, size_t n)
{
    CU_ASSERT_FATAL(m->n + n <= sizeof m->b);
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void p_le(img *m, uint64_t v, int n)
{
    for (int i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        p_bytes(m, &c, 1);
    }
}

static void p32(img *m, uint32_t v) { p_le(m, v, 4); }
static void p64(img *m, uint64_t v) { p_le(m, v, 8); }

static void pstr(img *m, const char *s)
{
    p64(m, strlen(s));
    p_bytes(m, s, strlen(s));
}

static void p_header(img *m, uint64_t n_tensors, uint64_t n_kv)
{
    m->n = 0;
    p_bytes(m, "GGUF", 4);
    p32(m, 3);
    p64(m, n_tensors);
    p64(m, n_kv);
}

/* A tensor info; returns the byte offset of its ne[0] field. */
static size_t p_tinfo(img *m, const char *name, uint32_t ndim, const uint64_t *ne, uint32_t type, uint64_t off)
{
    pstr(m, name);
    p32(m, ndim);
    size_t at = m->n;
    for (uint32_t d = 0; d < ndim; d++)
        p64(m, ne[d]);
    p32(m, type);
    p64(m, off);
    return at;
}

static void p_pad(img *m, size_t a)
{
    while (m->n % a)
        p_le(m, 0, 1);
}

static void put32(uint8_t *b, size_t at, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        b[at + i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *b, size_t at, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[at + i] = (uint8_t)(v >> (8 * i));
}

static const char *write_bytes(const char *name, const void *b, size_t n)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    if (n)
        CU_ASSERT_EQUAL(fwrite(b, 1, n, f), n);
    fclose(f);
    return path;
}

/* Opens path expecting `code` and "PATH: want" in the message. */
static void expect_fail(const char *path, int code, const char *want)
{
    gguf_file *g = (gguf_file *)1;
    moert_err e = {0};
    int st = gguf_open(path, &g, &e);
    CU_ASSERT_EQUAL(st, code);
    CU_ASSERT_EQUAL(e.code, code);
    CU_ASSERT_PTR_NULL(g);
    char full[1200];
    snprintf(full, sizeof full, "%s: %s", path, want);
    if (!strstr(e.msg, full))
        printf("\n    expected \"%s\"\n    in       \"%s\"\n", full, e.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, full));
    if (g && g != (gguf_file *)1)
        gguf_close(g);
}

/* ---- the base image ---------------------------------------------------------------- */

/* Tensor t's data byte at position pos. */
static uint8_t pattern(size_t t, uint64_t pos)
{
    return (uint8_t)(t * 37 + pos * 7 + pos / 251);
}

typedef struct fill_log {
    uint64_t next[16];  /* the chunk offset each tensor's next call must have */
    int calls[16];
    bool bad;
    size_t fail_tensor; /* a tensor whose fill fails (SIZE_MAX: none) */
} fill_log;

static int fill_pattern(void *ctx, size_t t, uint64_t off, void *buf, size_t n, moert_err *err)
{
    fill_log *log = ctx;
    if (log) {
        if (t == log->fail_tensor)
            return err_set(err, MOERT_EIO, "boom at %" PRIu64, off);
        if (t >= 16 || off != log->next[t])
            log->bad = true;
        else {
            log->next[t] += n;
            log->calls[t]++;
        }
    }
    for (size_t i = 0; i < n; i++)
        ((uint8_t *)buf)[i] = pattern(t, off + i);
    return MOERT_OK;
}

/* The base image of the catalogue, byte by byte (file size 352):
 *   0 "GGUF", 4 version 3, 8 n_tensors 2, 16 n_kv 5
 *  24 kv0 "general.architecture" (key 32..52, type 52, string len 56, "test" 64..68)
 *  68 kv1 "x.aa" u32 7         (key 76..80, type 80, value 84..88)
 *  88 kv2 "x.bb" bool 1        (key 96..100, type 100, value 104)
 * 105 kv3 "x.arr" i32[3]       (key 113..118, type 118, elem type 122, count 126, data 134..146)
 * 146 kv4 "x.sa" string[2]     (key 154..158, type 158, elem type 162, count 166,
 *                               "ab" len 174 bytes 182..184, "c" len 184 byte 192)
 * 193 tensor "a" F32 {4}       (name 201, n_dims 202, ne0 206, type 214, offset 218)
 * 226 tensor "b" F32 {4}       (name 234, n_dims 235, ne0 239, type 247, offset 251)
 * 259 end of infos, padding; data section 288..352: a [288, 304), b [320, 336). */
static void hand_base(img *m)
{
    p_header(m, 2, 5);
    pstr(m, "general.architecture");
    p32(m, GGUF_V_STRING);
    pstr(m, "test");
    pstr(m, "x.aa");
    p32(m, GGUF_V_U32);
    p32(m, 7);
    pstr(m, "x.bb");
    p32(m, GGUF_V_BOOL);
    p_le(m, 1, 1);
    pstr(m, "x.arr");
    p32(m, GGUF_V_ARRAY);
    p32(m, GGUF_V_I32);
    p64(m, 3);
    p32(m, 1);
    p32(m, (uint32_t)-2);
    p32(m, 3);
    pstr(m, "x.sa");
    p32(m, GGUF_V_ARRAY);
    p32(m, GGUF_V_STRING);
    p64(m, 2);
    pstr(m, "ab");
    pstr(m, "c");
    p_tinfo(m, "a", 1, (const uint64_t[]){4}, 0, 0);
    p_tinfo(m, "b", 1, (const uint64_t[]){4}, 0, 32);
    p_pad(m, 32);
    for (int t = 0; t < 2; t++) {
        for (uint64_t i = 0; i < 16; i++) {
            uint8_t c = pattern((size_t)t, i);
            p_bytes(m, &c, 1);
        }
        p_pad(m, 32);
    }
}

static int writer_base(uint8_t **out, size_t *len)
{
    gguf_writer *w;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &e), MOERT_OK);
    const char *sa[] = {"ab", "c"};
    const int32_t arr[] = {1, -2, 3};
    int st = gguf_writer_add_str(w, "general.architecture", "test", &e);
    st = st ? st : gguf_writer_add_u32(w, "x.aa", 7, &e);
    st = st ? st : gguf_writer_add_bool(w, "x.bb", true, &e);
    st = st ? st : gguf_writer_add_i32_arr(w, "x.arr", arr, 3, &e);
    st = st ? st : gguf_writer_add_str_arr(w, "x.sa", sa, 2, &e);
    st = st ? st : gguf_writer_add_tensor(w, "a", ST_F32, 1, (const int64_t[]){4}, &e);
    st = st ? st : gguf_writer_add_tensor(w, "b", ST_F32, 1, (const int64_t[]){4}, &e);
    st = st ? st : gguf_writer_to_memory(w, fill_pattern, NULL, out, len, &e);
    if (st)
        printf("\n    writer: %s\n", e.msg);
    gguf_writer_free(w);
    return st;
}

static void test_base_image(void)
{
    img m;
    hand_base(&m);
    CU_ASSERT_EQUAL(m.n, 352);
    uint8_t *b;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(writer_base(&b, &n), MOERT_OK);
    CU_ASSERT_EQUAL(n, m.n);
    CU_ASSERT(n == m.n && memcmp(b, m.b, n) == 0);
    /* The reader sees the layout the comment above describes. */
    gguf_file *g;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_open_memory(b, n, "base", &g, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_kv_count(g), 5);
    const uint64_t kv_off[] = {24, 68, 88, 105, 146};
    for (size_t i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(gguf_kv_at(g, i)->offset, kv_off[i]);
    CU_ASSERT_EQUAL(gguf_kv_at(g, 1)->val - b, 84);
    CU_ASSERT_EQUAL(gguf_kv_at(g, 3)->val - b, 134);
    CU_ASSERT_EQUAL(gguf_tensor_at(g, 0)->info_offset, 193);
    CU_ASSERT_EQUAL(gguf_tensor_at(g, 1)->info_offset, 226);
    CU_ASSERT_EQUAL(gguf_data_offset(g), 288);
    CU_ASSERT_EQUAL(gguf_tensor_at(g, 0)->offset, 288);
    CU_ASSERT_EQUAL(gguf_tensor_at(g, 1)->offset, 320);
    CU_ASSERT_EQUAL(gguf_tensor_at(g, 1)->data, b + 320);
    gguf_close(g);
    free(b);
}

/* ---- the corrupt-file catalogue ---------------------------------------------------- */

static uint8_t base[352], W[352];
static int n_cases;

static void fresh(void) { memcpy(W, base, sizeof W); }

/* Writes the first `len` bytes of W as NAME.gguf and expects `want`. */
static void check(const char *name, size_t len, const char *want)
{
    char fn[128];
    snprintf(fn, sizeof fn, "%s.gguf", name);
    expect_fail(write_bytes(fn, W, len), MOERT_EFORMAT, want);
    n_cases++;
}

static void check_img(const char *name, const img *m, const char *want)
{
    char fn[128];
    snprintf(fn, sizeof fn, "%s.gguf", name);
    expect_fail(write_bytes(fn, m->b, m->n), MOERT_EFORMAT, want);
    n_cases++;
}

#define SUPPORTED "supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K"

static void test_corrupt_catalogue(void)
{
    uint8_t *b;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(writer_base(&b, &n), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(n, sizeof base);
    memcpy(base, b, n);
    free(b);
    n_cases = 0;
    const uint64_t U64MAX = UINT64_MAX;

    /* The header. */
    fresh();
    check("empty", 0, "byte 0: expected the magic \"GGUF\", the file is empty");
    check("short-magic", 2, "byte 0: expected the magic \"GGUF\", the file is only 2 bytes");
    memcpy(W, "GGML", 4);
    check("bad-magic", sizeof W, "byte 0: expected the magic \"GGUF\", found \"GGML\"");
    memcpy(W, "\x7f" "ELF", 4);
    check("elf-magic", sizeof W, "byte 0: expected the magic \"GGUF\", found \"\\x7fELF\"");
    fresh();
    check("short-version", 6, "byte 4: expected the version (4 bytes), found only 2 bytes before the end of the file (size 6)");
    put32(W, 4, 1);
    check("version1", sizeof W, "byte 4: GGUF version 1 is not supported, only version 3");
    put32(W, 4, 2);
    check("version2", sizeof W, "byte 4: GGUF version 2 is not supported, only version 3");
    put32(W, 4, 4);
    check("version4", sizeof W, "byte 4: expected GGUF version 3, found version 4");
    put32(W, 4, 0);
    check("version0", sizeof W, "byte 4: expected GGUF version 3, found version 0");
    put32(W, 4, 0x03000000);
    check("big-endian", sizeof W, "byte 4: version 0x03000000 looks byte-swapped: big-endian GGUF files are not supported");
    fresh();
    check("short-counts", 12, "byte 8: expected n_tensors (8 bytes), found only 4 bytes before the end of the file (size 12)");
    check("short-nkv", 20, "byte 16: expected n_kv (8 bytes), found only 4 bytes before the end of the file (size 20)");
    put64(W, 8, (uint64_t)1 << 63);
    check("n-tensors-huge", sizeof W, "byte 8: n_tensors is 9223372036854775808, above the limit of 1048576");
    put64(W, 8, 1000);
    check("n-tensors-bytes", sizeof W, "byte 8: 1000 tensor infos need at least 33000 bytes, but only 328 bytes follow the header");
    fresh();
    put64(W, 16, U64MAX);
    check("n-kv-huge", sizeof W, "byte 16: n_kv is 18446744073709551615, above the limit of 1048576");
    put64(W, 16, 100);
    check("n-kv-bytes", sizeof W, "byte 16: 100 key/value pairs need at least 1400 bytes, but only 328 bytes follow the header");

    /* Keys. */
    fresh();
    put64(W, 24, U64MAX);
    check("key-len-huge", sizeof W, "byte 24: the length of key 0 is 18446744073709551615, above the limit of 67108864 bytes");
    put64(W, 24, 1000);
    check("key-len-eof", sizeof W, "byte 24: the length of key 0 is 1000, but only 320 bytes follow it (file size 352)");
    fresh();
    put64(W, 68, 0);
    check("key-empty", sizeof W, "byte 68: key 1 is empty, expected a non-empty name");
    fresh();
    W[98] = 'a';
    W[99] = 'a';
    check("key-duplicate", sizeof W, "byte 88: duplicate key 'x.aa' (first at byte 68)");
    fresh();
    W[77] = 0xff;
    check("key-not-utf8", sizeof W, "byte 68: key 1 is not valid UTF-8");
    W[77] = 0;
    check("key-nul", sizeof W, "byte 68: key 1 holds a NUL byte");

    /* Values. */
    fresh();
    put32(W, 80, 13);
    check("vtype-13", sizeof W, "byte 80: key 'x.aa': unknown value type 13, expected 0..12");
    put32(W, 80, 0xffffffffu);
    check("vtype-max", sizeof W, "byte 80: key 'x.aa': unknown value type 4294967295, expected 0..12");
    fresh();
    put64(W, 56, 1000);
    check("str-len-eof", sizeof W,
          "byte 56: the length of the value of key 'general.architecture' is 1000, but only 288 bytes follow it (file size 352)");
    put64(W, 56, U64MAX);
    check("str-len-huge", sizeof W,
          "byte 56: the length of the value of key 'general.architecture' is 18446744073709551615, above the limit of 67108864 bytes");
    fresh();
    W[104] = 2;
    check("bool-2", sizeof W, "byte 104: key 'x.bb': bool value is 2, expected 0 or 1");
    fresh();
    check("trunc-kv", 102, "byte 100: expected the value type of key 'x.bb' (4 bytes), found only 2 bytes before the end of the file (size 102)");
    check("trunc-kv-bool", 104, "byte 104: expected the bool value of key 'x.bb' (1 byte), found only 0 bytes before the end of the file (size 104)");
    check("trunc-array", 140, "byte 126: key 'x.arr': 3 i32 elements do not fit in the 6 bytes left in the file");

    /* Arrays. */
    fresh();
    put32(W, 122, 13);
    check("arr-type-13", sizeof W, "byte 122: key 'x.arr': unknown array element type 13, expected 0..12");
    put32(W, 122, GGUF_V_ARRAY);
    check("arr-nested", sizeof W, "byte 122: key 'x.arr': arrays of arrays are not supported");
    fresh();
    put64(W, 126, (uint64_t)1 << 62);
    check("arr-len-huge", sizeof W,
          "byte 126: key 'x.arr': 4611686018427387904 i32 elements do not fit in the 218 bytes left in the file");
    put64(W, 126, 100);
    check("arr-len-eof", sizeof W, "byte 126: key 'x.arr': 100 i32 elements do not fit in the 218 bytes left in the file");
    fresh();
    put64(W, 166, U64MAX);
    check("str-arr-len-huge", sizeof W,
          "byte 166: key 'x.sa': 18446744073709551615 string elements do not fit in the 178 bytes left in the file");
    put64(W, 166, 23); /* 23 * 8 = 184 > 178: even empty strings could not fit */
    check("str-arr-len-eof", sizeof W, "byte 166: key 'x.sa': 23 string elements do not fit in the 178 bytes left in the file");
    fresh();
    put64(W, 184, U64MAX);
    check("str-elem-len-huge", sizeof W,
          "byte 184: the length of element 1 of key 'x.sa' is 18446744073709551615, above the limit of 67108864 bytes");
    put64(W, 184, 200);
    check("str-elem-len-eof", sizeof W,
          "byte 184: the length of element 1 of key 'x.sa' is 200, but only 160 bytes follow it (file size 352)");

    /* Tensor infos. */
    fresh();
    put64(W, 193, 0);
    check("name-empty", sizeof W, "byte 193: tensor 0 has an empty name");
    fresh();
    W[201] = 0;
    check("name-nul", sizeof W, "byte 193: the name of tensor 0 holds a NUL byte");
    fresh();
    put64(W, 226, U64MAX);
    check("name-len-huge", sizeof W, "byte 226: the length of the name of tensor 1 is 18446744073709551615, above the limit of 256 bytes");
    fresh();
    W[234] = 'a';
    check("name-duplicate", sizeof W, "byte 226: duplicate tensor name 'a' (first at byte 193)");
    fresh();
    put32(W, 202, 0);
    check("ndims-0", sizeof W, "byte 202: tensor 'a': n_dims is 0, expected 1..4");
    put32(W, 202, 5);
    check("ndims-5", sizeof W, "byte 202: tensor 'a': n_dims is 5, expected 1..4");
    put32(W, 202, 0x80000000u);
    check("ndims-huge", sizeof W, "byte 202: tensor 'a': n_dims is 2147483648, expected 1..4");
    fresh();
    put64(W, 206, 0);
    check("dim-0", sizeof W, "byte 206: tensor 'a': ne[0] is 0, expected > 0");
    put64(W, 206, U64MAX);
    check("dim-negative", sizeof W, "byte 206: tensor 'a': ne[0] is 18446744073709551615, above INT64_MAX");
    fresh();
    put32(W, 214, 99);
    check("type-99", sizeof W, "byte 214: tensor 'a' has unknown ggml type 99");
    put32(W, 214, 4); /* Q4_2: removed from ggml */
    check("type-4", sizeof W, "byte 214: tensor 'a' has unknown ggml type 4");
    put32(W, 214, 3);
    check("type-q4_1", sizeof W, "byte 214: tensor 'a' has type Q4_1 (3), which moert does not support; " SUPPORTED);
    put32(W, 214, 8);
    check("block-q8_0", sizeof W, "byte 206: tensor 'a': ne[0] is 4, not a multiple of the Q8_0 block (32 elements)");
    fresh();
    check("trunc-tinfo", 216, "byte 214: expected the ggml type of tensor 'a' (4 bytes), found only 2 bytes before the end of the file (size 216)");
    check("trunc-dims", 210, "byte 206: expected the 1 dims (u64 each) of tensor 'a' (8 bytes), found only 4 bytes before the end of the file (size 210)");
    check("trunc-offset", 255, "byte 251: expected the data offset of tensor 'b' (8 bytes), found only 4 bytes before the end of the file (size 255)");

    /* Tensor data. */
    fresh();
    check("trunc-padding", 259, "byte 259: the data section would start at byte 288 (tensor infos end here, padded to the alignment 32), past the end of the file (size 259)");
    check("trunc-data", 330, "byte 251: tensor 'b' data [320, 336) runs past the end of the file (size 330)");
    put64(W, 251, 40);
    check("offset-unaligned", sizeof W, "byte 251: tensor 'b': offset 40 is not a multiple of the alignment 32");
    put64(W, 251, 64);
    check("offset-past-data", sizeof W,
          "byte 251: tensor 'b': offset 64 is past the end of the 64-byte data section (which starts at byte 288)");
    put64(W, 251, U64MAX - 31);
    check("offset-huge", sizeof W,
          "byte 251: tensor 'b': offset 18446744073709551584 is past the end of the 64-byte data section");
    put64(W, 251, 0);
    check("overlap-same", sizeof W, "byte 251: tensor 'b' data [288, 304) overlaps tensor 'a' data [288, 304)");
    fresh();
    put64(W, 206, 12); /* a: 48 bytes, [288, 336) */
    check("overlap-partial", sizeof W, "byte 251: tensor 'b' data [320, 336) overlaps tensor 'a' data [288, 336)");
    put64(W, 206, 20); /* a: 80 bytes, [288, 368) */
    check("data-past-eof", sizeof W, "byte 218: tensor 'a' data [288, 368) runs past the end of the file (size 352)");

    /* Crafted files. */
    img m;
    p_header(&m, 0, 1);
    pstr(&m, "general.alignment");
    p32(&m, GGUF_V_U32);
    p32(&m, 0);
    check_img("align-0", &m, "byte 53: general.alignment is 0, expected a non-zero power of two");
    put32(m.b, 53, 3);
    check_img("align-3", &m, "byte 53: general.alignment is 3, expected a non-zero power of two");
    p_header(&m, 0, 1);
    pstr(&m, "general.alignment");
    p32(&m, GGUF_V_STRING);
    pstr(&m, "32");
    check_img("align-string", &m, "byte 24: key 'general.alignment' is a string, expected u32");
    p_header(&m, 0, 1);
    pstr(&m, "general.alignment");
    p32(&m, GGUF_V_U64);
    p64(&m, 32);
    check_img("align-u64", &m, "byte 24: key 'general.alignment' is a u64, expected u32");
    /* A valid alignment of 64 is what offsets are checked against. */
    p_header(&m, 1, 1);
    pstr(&m, "general.alignment");
    p32(&m, GGUF_V_U32);
    p32(&m, 64);
    p_tinfo(&m, "a", 1, (const uint64_t[]){8}, 0, 32);
    p_pad(&m, 64);
    for (int i = 0; i < 96; i++)
        p_le(&m, 0, 1);
    check_img("align-64-offset", &m, "byte 82: tensor 'a': offset 32 is not a multiple of the alignment 64");

    p_header(&m, 0, 1);
    pstr(&m, "x.b");
    p32(&m, GGUF_V_ARRAY);
    p32(&m, GGUF_V_BOOL);
    p64(&m, 2);
    p_le(&m, 1, 1);
    p_le(&m, 2, 1);
    check_img("bool-arr-2", &m, "byte 52: key 'x.b': element 1 is 2, expected a bool (0 or 1)");

    char longname[301];
    memset(longname, 'n', 300);
    longname[300] = '\0';
    p_header(&m, 1, 0);
    p_tinfo(&m, longname, 1, (const uint64_t[]){4}, 0, 0);
    check_img("name-too-long", &m, "byte 24: the length of the name of tensor 0 is 300, above the limit of 256 bytes");

    p_header(&m, 1, 0);
    p_tinfo(&m, "blk.0.ffn_up_exps.weight", 3, (const uint64_t[]){256, 256, 8}, 16, 0);
    p_pad(&m, 32);
    check_img("iq2_xxs", &m, "byte 84: tensor 'blk.0.ffn_up_exps.weight' has type IQ2_XXS (16), which moert does not support; " SUPPORTED);

    p_header(&m, 1, 0);
    p_tinfo(&m, "q", 1, (const uint64_t[]){33}, 8, 0);
    check_img("q8_0-ne0-33", &m, "byte 37: tensor 'q': ne[0] is 33, not a multiple of the Q8_0 block (32 elements)");

    p_header(&m, 1, 0);
    p_tinfo(&m, "big", 2, (const uint64_t[]){(uint64_t)1 << 32, (uint64_t)1 << 32}, 0, 0);
    check_img("elements-overflow", &m, "byte 39: tensor 'big': ne {4294967296, 4294967296} has more than INT64_MAX elements");
    p_header(&m, 1, 0);
    p_tinfo(&m, "big", 2, (const uint64_t[]){(uint64_t)1 << 31, (uint64_t)1 << 31}, 0, 0);
    check_img("bytes-overflow", &m, "byte 39: tensor 'big': ne {2147483648, 2147483648} of F32 needs 2^64 bytes or more");
    p_header(&m, 1, 0);
    p_tinfo(&m, "big", 2, (const uint64_t[]){(uint64_t)1 << 30, 4}, 0, 0);
    p_pad(&m, 32);
    for (int i = 0; i < 32; i++)
        p_le(&m, 0, 1);
    check_img("bytes-past-eof", &m, "byte 59: tensor 'big' data [96, 17179869280) runs past the end of the file (size 128)");

    /* Past the catalogue's floor of 30 distinct corrupt files. */
    CU_ASSERT(n_cases >= 30);
    printf(" [%d corrupt files] ", n_cases);

    /* Not files at all. */
    char p[600];
    snprintf(p, sizeof p, "%s/none.gguf", test_tmpdir());
    expect_fail(p, MOERT_EIO, "cannot open: No such file or directory");
    expect_fail(test_tmpdir(), MOERT_EIO, "not a regular file");

    /* An in-memory image is checked the same way and named by its label. */
    fresh();
    put32(W, 202, 5);
    gguf_file *g = (gguf_file *)1;
    moert_err e = {0};
    CU_ASSERT_EQUAL(gguf_open_memory(W, sizeof W, "img", &g, &e), MOERT_EFORMAT);
    CU_ASSERT_PTR_NULL(g);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "img: byte 202: tensor 'a': n_dims is 5, expected 1..4"));
}

/* Every truncation and every single-byte change of the base image is either refused with
 * a "LABEL: byte N: " message or accepted with every tensor inside the image and no two
 * overlapping (ASan watches the reads). */
static void test_mutations(void)
{
    uint8_t *b;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(writer_base(&b, &n), MOERT_OK);
    static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x09, 0x0d, 0x1f, 0x20, 0x7f, 0x80, 0xfe, 0xff};
    int refused = 0, accepted = 0;
    bool clean = true;
    for (size_t pos = 0; pos <= n; pos++) {
        for (size_t v = 0; v <= sizeof vals; v++) {
            if (v < sizeof vals && pos == n)
                continue;
            /* A truncated copy is allocated at its length, so ASan sees any read past it. */
            size_t len = v == sizeof vals ? pos : n;
            uint8_t *m = malloc(len ? len : 1);
            CU_ASSERT_PTR_NOT_NULL_FATAL(m);
            memcpy(m, b, len);
            if (v < sizeof vals)
                m[pos] = vals[v];
            gguf_file *g = NULL;
            moert_err e = {0};
            int st = gguf_open_memory(m, len, "mut", &g, &e);
            if (st) {
                refused++;
                clean &= st == MOERT_EFORMAT && strncmp(e.msg, "mut: byte ", 10) == 0 && !g;
            } else {
                accepted++;
                for (size_t i = 0; i < gguf_tensor_count(g); i++) {
                    const gguf_tensor *t = gguf_tensor_at(g, i);
                    clean &= t->offset >= gguf_data_offset(g) && t->offset + t->nbytes <= len &&
                             t->data == m + t->offset && t->nbytes > 0;
                    for (size_t j = 0; j < i; j++) {
                        const gguf_tensor *u = gguf_tensor_at(g, j);
                        clean &= t->offset >= u->offset + u->nbytes || u->offset >= t->offset + t->nbytes;
                    }
                }
                gguf_close(g);
            }
            free(m);
        }
    }
    CU_ASSERT(clean);
    CU_ASSERT(refused > 1000);
    CU_ASSERT(accepted > 100); /* data bytes and some values may change freely */
    free(b);
}

static void test_minimal_files(void)
{
    /* Header only: no keys, no tensors, no padding (llama.cpp does not require it then). */
    img m;
    p_header(&m, 0, 0);
    gguf_file *g;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_open(write_bytes("min.gguf", m.b, m.n), &g, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_version(g), 3);
    CU_ASSERT_EQUAL(gguf_alignment(g), 32);
    CU_ASSERT_EQUAL(gguf_kv_count(g), 0);
    CU_ASSERT_EQUAL(gguf_tensor_count(g), 0);
    CU_ASSERT_EQUAL(gguf_data_offset(g), 24);
    CU_ASSERT_PTR_NULL(gguf_kv_find(g, "x"));
    CU_ASSERT_PTR_NULL(gguf_tensor_find(g, "x"));
    CU_ASSERT_PTR_NULL(gguf_kv_at(g, 0));
    CU_ASSERT_PTR_NULL(gguf_tensor_at(g, 0));
    gguf_close(g);
    /* The writer's empty document is the header padded to 32. */
    gguf_writer *w;
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &e), MOERT_OK);
    uint8_t *b;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(gguf_writer_to_memory(w, NULL, NULL, &b, &n, &e), MOERT_OK);
    CU_ASSERT_EQUAL(n, 32);
    CU_ASSERT_EQUAL(memcmp(b, m.b, 24), 0);
    CU_ASSERT_EQUAL_FATAL(gguf_open_memory(b, n, "empty", &g, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_data_offset(g), 32);
    CU_ASSERT_STRING_EQUAL(gguf_path(g), "empty");
    gguf_close(g);
    free(b);
    gguf_writer_free(w);

    CU_ASSERT(gguf_is_gguf(write_bytes("magic.gguf", "GGUF", 4)));
    CU_ASSERT(!gguf_is_gguf(write_bytes("nomagic.gguf", "GGU", 3)));
    CU_ASSERT(!gguf_is_gguf("/nonexistent/x.gguf"));
    CU_ASSERT_STRING_EQUAL(gguf_ggml_type_name(16), "IQ2_XXS");
    CU_ASSERT_STRING_EQUAL(gguf_ggml_type_name(39), "MXFP4");
    CU_ASSERT_STRING_EQUAL(gguf_ggml_type_name(31), "unknown");
    CU_ASSERT_EQUAL(gguf_ggml_type_of(ST_BF16), 30);
    CU_ASSERT_EQUAL(gguf_ggml_type_of(ST_Q6_K), 14);
    CU_ASSERT_EQUAL(gguf_ggml_type_of(ST_Q5_0), 6);
    CU_ASSERT_EQUAL(gguf_ggml_type_of(ST_I32), -1);
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(GGUF_V_F64), "f64");
    CU_ASSERT_STRING_EQUAL(gguf_vtype_name(GGUF_V_COUNT), "unknown");
}

/* ---- round trip -------------------------------------------------------------------- */

typedef struct rt_tensor {
    const char *name;
    st_dtype dtype;
    uint32_t ggml;
    int ndim;
    int64_t ne[4];
    uint64_t nbytes; /* computed by hand from ggml's block layouts */
} rt_tensor;

static const rt_tensor rt_tensors[] = {
    {"t.f32", ST_F32, 0, 2, {3, 2}, 24},
    {"t.f16", ST_F16, 1, 1, {5}, 10},
    {"t.q8_0", ST_Q8_0, 8, 2, {64, 3}, 2 * 34 * 3},
    {"t.q4_k", ST_Q4_K, 12, 2, {256, 2}, 144 * 2},
    {"t.bf16", ST_BF16, 30, 4, {7, 1, 1, 2}, 28},
    {"big", ST_F32, 0, 2, {262160, 3}, 4 * 262160 * 3}, /* 3 MiB: filled in several chunks */
    {"t.q6_k", ST_Q6_K, 14, 3, {256, 1, 2}, 210 * 2},
};
#define N_RT (sizeof rt_tensors / sizeof rt_tensors[0])

static const char *const rt_tokens[] = {"a", "", "\xc4\xa0is", "<|endoftext|>"};
static const int32_t rt_ids[] = {-1, 0, 7, INT32_MAX};

static gguf_writer *rt_writer(void)
{
    gguf_writer *w;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_str(w, "general.architecture", "qwen3moe", &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_u32(w, "rt.u32", UINT32_MAX, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_i32(w, "rt.i32", -5, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_u64(w, "rt.u64", (uint64_t)1 << 63, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_f32(w, "rt.f32", 0.25f, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_bool(w, "rt.bool", true, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_bool(w, "rt.false", false, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_str(w, "rt.str", "\xc3\xbcn\xc3\xaf" "code", &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_str(w, "rt.empty", "", &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", rt_tokens, 4, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_i32_arr(w, "rt.ids", rt_ids, 4, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_i32_arr(w, "rt.none", NULL, 0, &e), MOERT_OK);
    for (size_t i = 0; i < N_RT; i++)
        CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, rt_tensors[i].name, rt_tensors[i].dtype, rt_tensors[i].ndim,
                                               rt_tensors[i].ne, &e), MOERT_OK);
    return w;
}

static bool no_temp_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool clean = true;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp."))
            clean = false;
    closedir(d);
    return clean;
}

static void test_round_trip(void)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/rt", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/rt.gguf", dir);
    gguf_writer *w = rt_writer();
    moert_err e = {0};
    fill_log log = {.fail_tensor = SIZE_MAX};
    CU_ASSERT_EQUAL_FATAL(gguf_writer_write_file(w, path, fill_pattern, &log, &e), MOERT_OK);
    CU_ASSERT(!log.bad);
    CU_ASSERT(no_temp_files(dir));
    for (size_t i = 0; i < N_RT; i++)
        CU_ASSERT_EQUAL(log.next[i], rt_tensors[i].nbytes);
    CU_ASSERT(log.calls[5] >= 3); /* the 3 MiB tensor came in chunks */
    CU_ASSERT_EQUAL(log.calls[0], 1);
    CU_ASSERT(gguf_is_gguf(path));

    gguf_file *g;
    CU_ASSERT_EQUAL_FATAL(gguf_open(path, &g, &e), MOERT_OK);
    CU_ASSERT_STRING_EQUAL(gguf_path(g), path);
    CU_ASSERT_EQUAL(gguf_version(g), 3);
    CU_ASSERT_EQUAL(gguf_alignment(g), 32);

    /* Every kv, in the order added. */
    const char *keys[] = {"general.architecture", "rt.u32", "rt.i32", "rt.u64", "rt.f32", "rt.bool", "rt.false",
                          "rt.str", "rt.empty", "tokenizer.ggml.tokens", "rt.ids", "rt.none"};
    const gguf_vtype types[] = {GGUF_V_STRING, GGUF_V_U32, GGUF_V_I32, GGUF_V_U64, GGUF_V_F32, GGUF_V_BOOL, GGUF_V_BOOL,
                                GGUF_V_STRING, GGUF_V_STRING, GGUF_V_ARRAY, GGUF_V_ARRAY, GGUF_V_ARRAY};
    CU_ASSERT_EQUAL_FATAL(gguf_kv_count(g), 12);
    for (size_t i = 0; i < 12; i++) {
        const gguf_kv *kv = gguf_kv_at(g, i);
        CU_ASSERT_EQUAL(kv->key.len, strlen(keys[i]));
        CU_ASSERT_EQUAL(memcmp(kv->key.p, keys[i], kv->key.len), 0);
        CU_ASSERT_EQUAL(kv->type, types[i]);
        CU_ASSERT_EQUAL(gguf_kv_find(g, keys[i]), kv);
    }
    CU_ASSERT_EQUAL(gguf_kv_at(g, 0)->offset, 24);
    CU_ASSERT_PTR_NULL(gguf_kv_find(g, "rt"));
    CU_ASSERT_PTR_NULL(gguf_kv_find(g, "rt.u32x"));
    gguf_str s;
    CU_ASSERT_EQUAL(gguf_get_str(g, "general.architecture", &s, &e), MOERT_OK);
    CU_ASSERT(s.len == 8 && memcmp(s.p, "qwen3moe", 8) == 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "rt.str", &s, &e), MOERT_OK);
    CU_ASSERT(s.len == 9 && memcmp(s.p, "\xc3\xbcn\xc3\xaf" "code", 9) == 0);
    CU_ASSERT_EQUAL(gguf_get_str(g, "rt.empty", &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(s.len, 0);
    uint64_t u;
    int64_t i64;
    double d;
    bool bv;
    CU_ASSERT_EQUAL(gguf_get_u64(g, "rt.u32", &u, &e), MOERT_OK);
    CU_ASSERT_EQUAL(u, UINT32_MAX);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "rt.u32", &i64, &e), MOERT_OK);
    CU_ASSERT_EQUAL(i64, UINT32_MAX);
    CU_ASSERT_EQUAL(gguf_get_i64(g, "rt.i32", &i64, &e), MOERT_OK);
    CU_ASSERT_EQUAL(i64, -5);
    CU_ASSERT_EQUAL(gguf_get_u64(g, "rt.u64", &u, &e), MOERT_OK);
    CU_ASSERT_EQUAL(u, (uint64_t)1 << 63);
    CU_ASSERT_EQUAL(gguf_get_f64(g, "rt.f32", &d, &e), MOERT_OK);
    CU_ASSERT_EQUAL(d, 0.25);
    CU_ASSERT_EQUAL(gguf_get_bool(g, "rt.bool", &bv, &e), MOERT_OK);
    CU_ASSERT(bv);
    CU_ASSERT_EQUAL(gguf_get_bool(g, "rt.false", &bv, &e), MOERT_OK);
    CU_ASSERT(!bv);
    const gguf_kv *kv;
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_V_STRING, &kv, &e), MOERT_OK);
    CU_ASSERT_EQUAL(kv->arr_n, 4);
    for (size_t i = 0; i < 4; i++) {
        s = gguf_arr_str(g, kv, i);
        CU_ASSERT_EQUAL(s.len, strlen(rt_tokens[i]));
        CU_ASSERT(s.p && memcmp(s.p, rt_tokens[i], s.len) == 0);
    }
    CU_ASSERT_PTR_NULL(gguf_arr_str(g, kv, 4).p);
    CU_ASSERT_EQUAL(gguf_arr_int(kv, 0), 0); /* not an integer array */
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "rt.ids", GGUF_V_I32, &kv, &e), MOERT_OK);
    CU_ASSERT_EQUAL(kv->arr_n, 4);
    for (size_t i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(gguf_arr_int(kv, i), rt_ids[i]);
    CU_ASSERT_EQUAL(gguf_arr_int(kv, 4), 0);
    CU_ASSERT_PTR_NULL(gguf_arr_str(g, kv, 0).p);
    CU_ASSERT_EQUAL(gguf_arr_float(kv, 0), 0);
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "rt.none", GGUF_V_I32, &kv, &e), MOERT_OK);
    CU_ASSERT_EQUAL(kv->arr_n, 0);
    CU_ASSERT_EQUAL(gguf_arr_int(kv, 0), 0);

    /* Every tensor: dims, types, offsets (declaration order, each padded to 32 after a
     * 32-aligned data section) and bytes. */
    CU_ASSERT_EQUAL_FATAL(gguf_tensor_count(g), N_RT);
    uint64_t dof = gguf_data_offset(g), rel = 0;
    CU_ASSERT_EQUAL(dof % 32, 0);
    CU_ASSERT(dof > 24 && dof - gguf_tensor_at(g, N_RT - 1)->info_offset < 32 + 64);
    for (size_t i = 0; i < N_RT; i++) {
        const rt_tensor *x = &rt_tensors[i];
        const gguf_tensor *t = gguf_tensor_at(g, i);
        CU_ASSERT_STRING_EQUAL(t->name, x->name);
        CU_ASSERT_EQUAL(gguf_tensor_find(g, x->name), t);
        CU_ASSERT_EQUAL(t->ggml_type, x->ggml);
        CU_ASSERT_EQUAL(t->dtype, x->dtype);
        CU_ASSERT_EQUAL(t->ndim, x->ndim);
        for (int k = 0; k < 4; k++)
            CU_ASSERT_EQUAL(t->ne[k], k < x->ndim ? x->ne[k] : 1);
        CU_ASSERT_EQUAL(t->nbytes, x->nbytes);
        CU_ASSERT_EQUAL(t->offset, dof + rel);
        CU_ASSERT_EQUAL((const uint8_t *)t->data - (const uint8_t *)gguf_tensor_at(g, 0)->data,
                        (ptrdiff_t)(t->offset - dof));
        bool same = true;
        for (uint64_t k = 0; k < t->nbytes; k++)
            same &= ((const uint8_t *)t->data)[k] == pattern(i, k);
        CU_ASSERT(same);
        rel = (rel + x->nbytes + 31) / 32 * 32;
    }
    CU_ASSERT_PTR_NULL(gguf_tensor_find(g, "t"));
    struct stat sb;
    CU_ASSERT_EQUAL(stat(path, &sb), 0);
    CU_ASSERT_EQUAL((uint64_t)sb.st_size, dof + rel); /* the last tensor is padded too */

    /* The in-memory image is byte-identical, and its padding is zeros. */
    uint8_t *img_b;
    size_t img_n;
    CU_ASSERT_EQUAL_FATAL(gguf_writer_to_memory(w, fill_pattern, NULL, &img_b, &img_n, &e), MOERT_OK);
    CU_ASSERT_EQUAL(img_n, (size_t)sb.st_size);
    FILE *f = fopen(path, "rb");
    uint8_t *fb = malloc((size_t)sb.st_size);
    CU_ASSERT_EQUAL(fread(fb, 1, (size_t)sb.st_size, f), (size_t)sb.st_size);
    fclose(f);
    CU_ASSERT(img_n == (size_t)sb.st_size && memcmp(fb, img_b, img_n) == 0);
    const gguf_tensor *t1 = gguf_tensor_at(g, 1);
    bool zero = true;
    for (uint64_t k = t1->offset + t1->nbytes; k < gguf_tensor_at(g, 2)->offset; k++)
        zero &= fb[k] == 0;
    CU_ASSERT(zero);
    free(fb);
    free(img_b);
    gguf_close(g);
    gguf_writer_free(w);
}

static void test_getter_errors(void)
{
    gguf_writer *w = rt_writer();
    moert_err e = {0};
    uint8_t *b;
    size_t n;
    CU_ASSERT_EQUAL_FATAL(gguf_writer_to_memory(w, NULL, NULL, &b, &n, &e), MOERT_OK);
    gguf_writer_free(w);
    gguf_file *g;
    CU_ASSERT_EQUAL_FATAL(gguf_open_memory(b, n, "mem.gguf", &g, &e), MOERT_OK);
    char want[600];
    uint64_t u = 77;
    int64_t i64;
    double d;
    bool bv;
    gguf_str s;
    const gguf_kv *kv = (const gguf_kv *)1;
#define EXPECT(call, fmt, ...)                                                                               \
    do {                                                                                                     \
        err_clear(&e);                                                                                       \
        CU_ASSERT_EQUAL(call, MOERT_EFORMAT);                                                                \
        snprintf(want, sizeof want, fmt, __VA_ARGS__);                                                       \
        if (!strstr(e.msg, want))                                                                            \
            printf("\n    expected \"%s\"\n    in       \"%s\"\n", want, e.msg);                             \
        CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, want));                                                         \
    } while (0)
#define AT(key) gguf_kv_find(g, key)->offset
    EXPECT(gguf_get_u64(g, "general.architecture", &u, &e),
           "mem.gguf: byte %d: key 'general.architecture' is a string, expected an integer", 24);
    CU_ASSERT_EQUAL(u, 77); /* untouched on error */
    EXPECT(gguf_get_u64(g, "rt.i32", &u, &e), "mem.gguf: byte %" PRIu64 ": key 'rt.i32' is -5 (i32), expected a non-negative integer",
           AT("rt.i32"));
    EXPECT(gguf_get_i64(g, "rt.u64", &i64, &e),
           "mem.gguf: byte %" PRIu64 ": key 'rt.u64' is 9223372036854775808 (u64), above INT64_MAX", AT("rt.u64"));
    EXPECT(gguf_get_i64(g, "rt.bool", &i64, &e), "mem.gguf: byte %" PRIu64 ": key 'rt.bool' is a bool, expected an integer",
           AT("rt.bool"));
    EXPECT(gguf_get_f64(g, "rt.u32", &d, &e), "mem.gguf: byte %" PRIu64 ": key 'rt.u32' is a u32, expected f32 or f64",
           AT("rt.u32"));
    EXPECT(gguf_get_bool(g, "rt.f32", &bv, &e), "mem.gguf: byte %" PRIu64 ": key 'rt.f32' is an f32, expected a bool",
           AT("rt.f32"));
    EXPECT(gguf_get_str(g, "tokenizer.ggml.tokens", &s, &e),
           "mem.gguf: byte %" PRIu64 ": key 'tokenizer.ggml.tokens' is an array of string, expected a string",
           AT("tokenizer.ggml.tokens"));
    EXPECT(gguf_get_arr(g, "rt.ids", GGUF_V_STRING, &kv, &e),
           "mem.gguf: byte %" PRIu64 ": key 'rt.ids' is an array of i32, expected an array of string", AT("rt.ids"));
    CU_ASSERT_PTR_NULL(kv);
    EXPECT(gguf_get_arr(g, "rt.u32", GGUF_V_I32, &kv, &e),
           "mem.gguf: byte %" PRIu64 ": key 'rt.u32' is a u32, expected an array of i32", AT("rt.u32"));
    EXPECT(gguf_get_u64(g, "nope", &u, &e), "mem.gguf: missing key '%s'", "nope");
    EXPECT(gguf_get_str(g, "general.name", &s, &e), "mem.gguf: missing key '%s'", "general.name");
    EXPECT(gguf_get_arr(g, "", GGUF_V_I32, &kv, &e), "mem.gguf: missing key '%s'", "");
#undef AT
#undef EXPECT
    gguf_close(g);
    free(b);
}

static void test_writer_errors(void)
{
    gguf_writer *w;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_u32(w, "k", 1, &e), MOERT_OK);
#define REFUSED(call, want)                                                                                  \
    do {                                                                                                     \
        CU_ASSERT_EQUAL(call, MOERT_EUSAGE);                                                                 \
        if (!strstr(e.msg, want))                                                                            \
            printf("\n    expected \"%s\"\n    in       \"%s\"\n", want, e.msg);                             \
        CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, want));                                                         \
    } while (0)
    REFUSED(gguf_writer_add_str(w, "k", "x", &e), "key 'k' added twice");
    REFUSED(gguf_writer_add_bool(w, "", true, &e), "empty key");
    REFUSED(gguf_writer_add_bool(w, NULL, true, &e), "NULL key");
    REFUSED(gguf_writer_add_bool(w, "bad\xff", true, &e), "not valid UTF-8");
    REFUSED(gguf_writer_add_u64(w, "general.alignment", 32, &e), "general.alignment must be a u32");
    REFUSED(gguf_writer_add_u32(w, "general.alignment", 48, &e), "general.alignment 48 is not a non-zero power of two");
    REFUSED(gguf_writer_add_u32(w, "general.alignment", 0, &e), "general.alignment 0 is not");
    REFUSED(gguf_writer_add_str(w, "s", NULL, &e), "NULL string");
    const char *bad[] = {"a", NULL};
    REFUSED(gguf_writer_add_str_arr(w, "sa", bad, 2, &e), "element 1 is NULL");
    const int64_t ne4[] = {4}, ne33[] = {33}, ne0[] = {4, 0};
    REFUSED(gguf_writer_add_tensor(w, "i", ST_I32, 1, ne4, &e), "dtype I32 has no GGUF type");
    REFUSED(gguf_writer_add_tensor(w, "q", ST_Q8_0, 1, ne33, &e), "ne[0] = 33 is not a multiple of the Q8_0 block (32)");
    REFUSED(gguf_writer_add_tensor(w, "z", ST_F32, 2, ne0, &e), "ne[1] = 0, expected > 0");
    REFUSED(gguf_writer_add_tensor(w, "n", ST_F32, 0, ne4, &e), "ndim 0, expected 1..4");
    REFUSED(gguf_writer_add_tensor(w, "n", ST_F32, 5, ne4, &e), "ndim 5, expected 1..4");
    REFUSED(gguf_writer_add_tensor(w, "", ST_F32, 1, ne4, &e), "is empty");
    char name64[65];
    memset(name64, 'x', 64);
    name64[64] = '\0';
    REFUSED(gguf_writer_add_tensor(w, name64, ST_F32, 1, ne4, &e), "longer than 63 bytes");
    name64[63] = '\0';
    CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, name64, ST_F32, 1, ne4, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, "t.b", ST_F32, 1, ne4, &e), MOERT_OK);
    REFUSED(gguf_writer_add_tensor(w, "t.b", ST_F16, 1, ne4, &e), "tensor 't.b' declared twice");
#undef REFUSED

    /* A failing fill leaves nothing behind: no file, no temp file. */
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/werr", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/x.gguf", dir);
    fill_log log = {.fail_tensor = 1};
    CU_ASSERT_EQUAL(gguf_writer_write_file(w, path, fill_pattern, &log, &e), MOERT_EIO);
    char want[700];
    snprintf(want, sizeof want, "%s: tensor 't.b': boom at 0", path);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, want));
    CU_ASSERT_EQUAL(access(path, F_OK), -1);
    CU_ASSERT(no_temp_files(dir));
    uint8_t *b = (uint8_t *)1;
    size_t n = 1;
    CU_ASSERT_EQUAL(gguf_writer_to_memory(w, fill_pattern, &log, &b, &n, &e), MOERT_EIO);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT_EQUAL(n, 0);
    /* A path whose directory does not exist. */
    CU_ASSERT_EQUAL(gguf_writer_write_file(w, "/nonexistent-dir/x.gguf", NULL, NULL, &e), MOERT_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cannot create temp file"));
    gguf_writer_free(w);

    /* general.alignment 64 is honoured by the writer and the reader. */
    CU_ASSERT_EQUAL_FATAL(gguf_writer_new(&w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_u32(w, "general.alignment", 64, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, "a", ST_F32, 1, (const int64_t[]){3}, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_writer_add_tensor(w, "b", ST_Q8_0, 1, (const int64_t[]){32}, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(gguf_writer_to_memory(w, fill_pattern, NULL, &b, &n, &e), MOERT_OK);
    gguf_file *g;
    CU_ASSERT_EQUAL_FATAL(gguf_open_memory(b, n, "a64", &g, &e), MOERT_OK);
    CU_ASSERT_EQUAL(gguf_alignment(g), 64);
    CU_ASSERT_EQUAL(gguf_data_offset(g) % 64, 0);
    CU_ASSERT_EQUAL(gguf_tensor_find(g, "b")->offset - gguf_tensor_find(g, "a")->offset, 64);
    CU_ASSERT_EQUAL(n, gguf_data_offset(g) + 128);
    CU_ASSERT_EQUAL(gguf_tensor_find(g, "b")->nbytes, 34);
    gguf_close(g);
    free(b);
    gguf_writer_free(w);
}

/* ---- llama.cpp's files ------------------------------------------------------------- */

/* Expected type of a gguf-tiny tensor, from gguf-tiny/README.md's table ("q8_0", "q4_k_m",
 * "q5_k_m", "q6_k"). */
static const char *tiny_type(const char *variant, const char *name)
{
    static const char *const f32[] = {"attn_k_norm", "attn_norm", "attn_q_norm", "ffn_gate_inp", "ffn_norm"};
    for (size_t i = 0; i < 5; i++)
        if (strstr(name, f32[i]))
            return "F32";
    if (!strcmp(name, "output_norm.weight"))
        return "F32";
    if (!strcmp(variant, "q8_0"))
        return "Q8_0";
    if (strstr(name, "attn_k.") || strstr(name, "attn_v."))
        return "Q8_0";
    if (!strcmp(variant, "q6_k"))
        return "Q6_K";
    if (!strcmp(name, "blk.1.ffn_down_exps.weight") || !strcmp(name, "output.weight"))
        return "Q6_K";
    if (!strcmp(variant, "q5_k_m"))
        return "Q5_K";
    return strstr(name, "attn_output") ? "Q5_K" : "Q4_K";
}

/* ne of a gguf-tiny tensor: hidden 256, 4 q heads x 64, 2 kv heads, 8 experts of 256,
 * vocab 1024 (gguf-tiny/README.md). */
static int tiny_ne(const char *name, int64_t *ne)
{
    static const struct {
        const char *part;
        int nd;
        int64_t ne[3];
    } shapes[] = {
        {"ffn_gate_exps", 3, {256, 256, 8}}, {"ffn_up_exps", 3, {256, 256, 8}}, {"ffn_down_exps", 3, {256, 256, 8}},
        {"ffn_gate_inp", 2, {256, 8}},       {"attn_q_norm", 1, {64}},          {"attn_k_norm", 1, {64}},
        {"attn_q.", 2, {256, 256}},          {"attn_k.", 2, {256, 128}},        {"attn_v.", 2, {256, 128}},
        {"attn_output", 2, {256, 256}},      {"attn_norm", 1, {256}},           {"ffn_norm", 1, {256}},
        {"output_norm", 1, {256}},           {"token_embd", 2, {256, 1024}},    {"output.", 2, {256, 1024}},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (strstr(name, shapes[i].part)) {
            memcpy(ne, shapes[i].ne, sizeof shapes[i].ne);
            return shapes[i].nd;
        }
    return 0;
}

static void expect_str(const gguf_file *g, const char *key, const char *want)
{
    gguf_str s = {0};
    moert_err e = {0};
    CU_ASSERT_EQUAL(gguf_get_str(g, key, &s, &e), MOERT_OK);
    CU_ASSERT(s.len == strlen(want) && memcmp(s.p, want, s.len) == 0);
}

static void expect_u64(const gguf_file *g, const char *key, uint64_t want)
{
    uint64_t v = ~want;
    moert_err e = {0};
    CU_ASSERT_EQUAL(gguf_get_u64(g, key, &v, &e), MOERT_OK);
    CU_ASSERT_EQUAL(v, want);
}

static void test_reference_tiny(void)
{
    const char *ref = test_shared_parts("gguf-tiny");
    if (!ref) {
        TEST_SKIP("../shared/reference (gguf-tiny) is absent");
        return;
    }
    static const struct {
        const char *variant;
        uint64_t bytes; /* README's bytes column */
    } files[] = {{"q8_0", 4342304}, {"q4_k_m", 2595360}, {"q5_k_m", 2972192}, {"q6_k", 3389984}};
    static const char *const per_layer[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                                            "attn_k_norm", "ffn_norm", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps",
                                            "ffn_down_exps"};
    for (size_t f = 0; f < 4; f++) {
        char path[1200];
        snprintf(path, sizeof path, "%s/gguf-tiny/model-%s.gguf", ref, files[f].variant);
        struct stat sb;
        if (stat(path, &sb) != 0) {
            TEST_SKIP("a gguf-tiny model file is absent");
            continue;
        }
        CU_ASSERT_EQUAL((uint64_t)sb.st_size, files[f].bytes);
        CU_ASSERT(gguf_is_gguf(path));
        gguf_file *g;
        moert_err e = {0};
        int st = gguf_open(path, &g, &e);
        if (st)
            printf("\n    %s\n", e.msg);
        CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
        expect_str(g, "general.architecture", "qwen3moe");
        expect_u64(g, "qwen3moe.block_count", 2);
        expect_u64(g, "qwen3moe.expert_count", 8);
        expect_u64(g, "qwen3moe.expert_used_count", 2);
        CU_ASSERT_EQUAL(gguf_tensor_count(g), 27);
        char names[27][64];
        size_t k = 0;
        snprintf(names[k++], 64, "token_embd.weight");
        snprintf(names[k++], 64, "output.weight");
        snprintf(names[k++], 64, "output_norm.weight");
        for (int l = 0; l < 2; l++)
            for (size_t j = 0; j < 12; j++)
                snprintf(names[k++], 64, "blk.%d.%s.weight", l, per_layer[j]);
        for (k = 0; k < 27; k++) {
            const gguf_tensor *t = gguf_tensor_find(g, names[k]);
            CU_ASSERT_PTR_NOT_NULL(t);
            if (!t) {
                printf("\n    %s: no tensor %s\n", path, names[k]);
                continue;
            }
            const char *want = tiny_type(files[f].variant, names[k]);
            if (strcmp(gguf_ggml_type_name(t->ggml_type), want))
                printf("\n    %s: %s is %s, README says %s\n", path, names[k], gguf_ggml_type_name(t->ggml_type), want);
            CU_ASSERT_STRING_EQUAL(gguf_ggml_type_name(t->ggml_type), want);
            CU_ASSERT_STRING_EQUAL(st_dtype_name(t->dtype), want);
            int64_t ne[3] = {0};
            int nd = tiny_ne(names[k], ne);
            CU_ASSERT_EQUAL(t->ndim, nd);
            for (int d = 0; d < nd && d < t->ndim; d++)
                CU_ASSERT_EQUAL(t->ne[d], ne[d]);
            CU_ASSERT_EQUAL(t->offset % gguf_alignment(g), gguf_data_offset(g) % gguf_alignment(g));
            CU_ASSERT(t->offset + t->nbytes <= (uint64_t)sb.st_size);
        }
        /* The README's worked examples. */
        const gguf_tensor *t = gguf_tensor_find(g, "blk.1.ffn_down_exps.weight");
        if (!strcmp(files[f].variant, "q4_k_m") && t) {
            CU_ASSERT_EQUAL(t->ggml_type, 14);
            CU_ASSERT_EQUAL(t->dtype, ST_Q6_K);
            CU_ASSERT_EQUAL(t->nbytes, 210ull * 256 * 8);
            CU_ASSERT_EQUAL(gguf_tensor_find(g, "blk.0.attn_k.weight")->dtype, ST_Q8_0);
        }
        gguf_close(g);
    }
}

static void test_reference_vocab(void)
{
    const char *ref = test_shared_parts("gguf-vocab");
    char path[1200];
    struct stat sb;
    if (!ref || (snprintf(path, sizeof path, "%s/gguf-vocab/model-q8_0.gguf", ref), stat(path, &sb) != 0)) {
        TEST_SKIP("../shared/reference (gguf-vocab) is absent");
        return;
    }
    CU_ASSERT_EQUAL(sb.st_size, 11116992);
    gguf_file *g;
    moert_err e = {0};
    int st = gguf_open(path, &g, &e);
    if (st)
        printf("\n    %s\n", e.msg);
    CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
    expect_str(g, "general.architecture", "qwen3moe");
    expect_u64(g, "qwen3moe.block_count", 1);
    expect_str(g, "tokenizer.ggml.model", "gpt2");
    expect_str(g, "tokenizer.ggml.pre", "qwen2");
    expect_u64(g, "tokenizer.ggml.bos_token_id", 151643);
    expect_u64(g, "tokenizer.ggml.padding_token_id", 151643);
    expect_u64(g, "tokenizer.ggml.eos_token_id", 151645);
    bool add_bos = true;
    CU_ASSERT_EQUAL(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos, &e), MOERT_OK);
    CU_ASSERT(!add_bos);
    gguf_str s;
    CU_ASSERT_EQUAL(gguf_get_str(g, "tokenizer.chat_template", &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(s.len, 4116);

    const gguf_kv *tok, *types, *merges;
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_V_STRING, &tok, &e), MOERT_OK);
    CU_ASSERT_EQUAL(tok->arr_n, 151936);
    s = gguf_arr_str(g, tok, 151657);
    CU_ASSERT(s.len == 11 && memcmp(s.p, "<tool_call>", 11) == 0);
    s = gguf_arr_str(g, tok, 151669);
    CU_ASSERT(s.len == 11 && memcmp(s.p, "[PAD151669]", 11) == 0);
    s = gguf_arr_str(g, tok, 151935);
    CU_ASSERT(s.len == 11 && memcmp(s.p, "[PAD151935]", 11) == 0);
    CU_ASSERT_PTR_NULL(gguf_arr_str(g, tok, 151936).p);
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "tokenizer.ggml.token_type", GGUF_V_I32, &types, &e), MOERT_OK);
    CU_ASSERT_EQUAL(types->arr_n, 151936);
    size_t count[6] = {0};
    for (uint64_t i = 0; i < types->arr_n; i++) {
        int64_t v = gguf_arr_int(types, i);
        count[v >= 0 && v < 6 ? v : 0]++;
    }
    CU_ASSERT_EQUAL(count[1], 151643);
    CU_ASSERT_EQUAL(count[3], 20);
    CU_ASSERT_EQUAL(count[4], 6);
    CU_ASSERT_EQUAL(count[5], 267);
    CU_ASSERT_EQUAL(gguf_arr_int(types, 151669), 5);
    CU_ASSERT_EQUAL(gguf_arr_int(types, 151643), 3);
    CU_ASSERT_EQUAL_FATAL(gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_V_STRING, &merges, &e), MOERT_OK);
    CU_ASSERT_EQUAL(merges->arr_n, 151387);
    s = gguf_arr_str(g, merges, 0);
    CU_ASSERT(s.len == 5 && memcmp(s.p, "\xc4\xa0 \xc4\xa0", 5) == 0);

    CU_ASSERT_EQUAL(gguf_tensor_count(g), 14);
    const gguf_tensor *t = gguf_tensor_find(g, "token_embd.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->dtype, ST_Q8_0);
    CU_ASSERT_EQUAL(t->ndim, 2);
    CU_ASSERT_EQUAL(t->ne[0], 32);
    CU_ASSERT_EQUAL(t->ne[1], 151936);
    CU_ASSERT_EQUAL(t->nbytes, 34ull * 151936);
    CU_ASSERT_PTR_NULL(gguf_tensor_find(g, "output.weight")); /* tied */
    t = gguf_tensor_find(g, "blk.0.ffn_down_exps.weight");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(t->dtype, ST_Q8_0);
    CU_ASSERT(t->ndim == 3 && t->ne[0] == 32 && t->ne[1] == 32 && t->ne[2] == 4);
    CU_ASSERT_EQUAL(gguf_tensor_find(g, "blk.0.ffn_gate_inp.weight")->dtype, ST_F32);
    gguf_close(g);
}

void suite_gguf(void)
{
    CU_pSuite s = CU_add_suite("gguf", NULL, NULL);
    CU_add_test(s, "writer image equals the hand-built bytes", test_base_image);
    CU_add_test(s, "corrupt-file catalogue", test_corrupt_catalogue);
    CU_add_test(s, "every truncation and byte change: refused cleanly or consistent", test_mutations);
    CU_add_test(s, "minimal files and type names", test_minimal_files);
    CU_add_test(s, "writer round trip", test_round_trip);
    CU_add_test(s, "typed getter errors", test_getter_errors);
    CU_add_test(s, "writer errors and alignment", test_writer_errors);
    CU_add_test(s, "llama.cpp gguf-tiny fixtures", test_reference_tiny);
    CU_add_test(s, "llama.cpp gguf-vocab fixture", test_reference_vocab);
}
