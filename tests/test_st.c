/* st: safetensors validation (a catalogue of corrupt files written byte by byte here, each
 * with the message it must produce), sharded sets, and the atomic writer. */
#include <CUnit/CUnit.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/st.h"
#include "util.h"

/* Writes u64 header length `hlen` (normally strlen(header)), the header text, then
 * `data_len` bytes 0, 1, 2, ... */
static const char *write_raw(const char *name, uint64_t hlen, const char *header, size_t data_len)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(hlen >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++)
        fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

static const char *write_st(const char *name, const char *header, size_t data_len)
{
    return write_raw(name, strlen(header), header, data_len);
}

/* Opens path expecting failure with `want` in the message (and the file named in it). */
static void expect_fail(const char *path, int code, const char *want)
{
    st_set *s = (st_set *)1;
    moert_err e = {0};
    int st = st_open(path, &s, &e);
    CU_ASSERT_EQUAL(st, code);
    CU_ASSERT_EQUAL(e.code, code);
    CU_ASSERT_PTR_NULL(s);
    if (!strstr(e.msg, want) || !strstr(e.msg, path))
        printf("\n    for %s: expected \"%s\" in: %s\n", path, want, e.msg);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, path));
}

#define T(nm, dt, shape, b, e) "\"" nm "\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}"

static void test_corrupt_catalogue(void)
{
    const char *p;
    /* Shorter than the length prefix. */
    p = write_raw("short.safetensors", 0, "", 0);
    FILE *f = fopen(p, "wb");
    fwrite("abc", 1, 3, f);
    fclose(f);
    expect_fail(p, MOERT_EFORMAT, "file is 3 bytes, shorter than the 8-byte header length");
    p = write_raw("empty.safetensors", 0, "", 0);
    f = fopen(p, "wb");
    fclose(f);
    expect_fail(p, MOERT_EFORMAT, "file is 0 bytes");

    p = write_raw("hdrpast.safetensors", 100, "{}", 0);
    expect_fail(p, MOERT_EFORMAT, "header length 100 (bytes 0-7) runs past the end of the file: 8 + 100 > file size 10");
    p = write_raw("hdrmax.safetensors", (uint64_t)ST_HEADER_MAX + 1, "{}", 0);
    expect_fail(p, MOERT_EFORMAT, "header length 16777217 (bytes 0-7) exceeds the limit of 16777216");
    p = write_raw("hdrhuge.safetensors", UINT64_MAX, "{}", 0);
    expect_fail(p, MOERT_EFORMAT, "exceeds the limit");

    p = write_st("notjson.safetensors", "{not json", 0);
    expect_fail(p, MOERT_EFORMAT, "header is not valid JSON");
    p = write_st("notjson2.safetensors", "{\"a\":{}} trailing", 0);
    expect_fail(p, MOERT_EFORMAT, "header is not valid JSON");
    p = write_st("notutf8.safetensors", "{\"\xff\":1}", 0);
    expect_fail(p, MOERT_EFORMAT, "header is not valid JSON");
    p = write_st("array.safetensors", "[1, 2]", 0);
    expect_fail(p, MOERT_EFORMAT, "header is a JSON array, expected an object");
    p = write_st("lead.safetensors", " {}", 0);
    expect_fail(p, MOERT_EFORMAT, "header must start with '{' at file byte 8");

    p = write_st("dtype.safetensors", "{" T("a", "F128", "[1]", 0, 16) "}", 16);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': unknown dtype 'F128'");
    p = write_st("dtype2.safetensors", "{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': dtype is a JSON integer, expected a string");
    p = write_st("entry.safetensors", "{\"a\":[1]}", 0);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': entry is a JSON array, expected an object");
    p = write_st("extra.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"foo\":1}}", 4);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': unexpected key 'foo'");
    p = write_st("noshape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': missing 'shape'");
    p = write_st("shape.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", 12);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': shape is a JSON integer, expected an array");
    p = write_st("negdim.safetensors", "{" T("a", "F32", "[2,-1]", 0, 0) "}", 0);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': shape[1] is -1, expected >= 0");
    p = write_st("realdim.safetensors", "{" T("a", "F32", "[2.0]", 0, 8) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': shape[0] is a JSON real number, expected an integer");
    p = write_st("ovf.safetensors", "{" T("a", "F32", "[4294967296,4294967296,16]", 0, 0) "}", 0);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': shape [4294967296, 4294967296, 16] of F32 overflows");

    p = write_st("arity.safetensors", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': data_offsets is an array of the wrong length, expected [begin, end]");
    p = write_st("negoff.safetensors", "{" T("a", "F32", "[1]", -4, 0) "}", 4);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': data_offsets[0] must be a non-negative integer");
    p = write_st("order.safetensors", "{" T("a", "F32", "[1]", 8, 4) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': data_offsets [8, 4]: begin > end");

    p = write_st("x.safetensors", "{" T("a", "F32", "[2,3]", 0, 12) "}", 12);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': data_offsets [0, 12] hold 12 bytes, shape [2, 3] of F32 needs 24");
    p = write_st("outside.safetensors", "{" T("a", "F32", "[4]", 0, 16) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "tensor 'a': data_offsets [0, 16] run past the end of the 8-byte data section");
    p = write_st("outside2.safetensors", "{" T("a", "F32", "[1]", 0, 4) "," T("b", "U8", "[4]", 100, 104) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "tensor 'b': data_offsets [100, 104] run past the end of the 8-byte data section");
    p = write_st("overlap.safetensors", "{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 4, 12) "}", 12);
    expect_fail(p, MOERT_EFORMAT, "tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8");
    p = write_st("overlap2.safetensors", "{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 0, 8) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "overlap tensor");
    p = write_st("gap.safetensors", "{" T("a", "F32", "[1]", 0, 4) "," T("b", "F32", "[1]", 8, 12) "}", 12);
    expect_fail(p, MOERT_EFORMAT, "gap in the data section: bytes [4, 8) belong to no tensor (next is 'b' at [8, 12])");
    p = write_st("gap0.safetensors", "{" T("a", "F32", "[1]", 4, 8) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "gap in the data section: bytes [0, 4)");
    p = write_st("trail.safetensors", "{" T("a", "F32", "[1]", 0, 4) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "4 trailing bytes after the last tensor: tensors end at data byte 4 but the data section is 8 bytes");
    p = write_st("trail0.safetensors", "{}", 3);
    expect_fail(p, MOERT_EFORMAT, "3 trailing bytes");

    /* A valid two-tensor file cut inside its last tensor. */
    const char *th = "{" T("a", "F32", "[2]", 0, 8) "," T("b", "F32", "[2]", 8, 16) "}";
    p = write_st("trunc.safetensors", th, 16);
    CU_ASSERT_EQUAL(truncate(p, (off_t)(8 + strlen(th) + 12)), 0);
    expect_fail(p, MOERT_EFORMAT, "tensor 'b': data_offsets [8, 16] run past the end of the 12-byte data section (file truncated?)");

    p = write_st("meta.safetensors", "{\"__metadata__\":{\"k\":1}}", 0);
    expect_fail(p, MOERT_EFORMAT, "__metadata__ value for key 'k' is a JSON integer, expected a string");
    p = write_st("meta2.safetensors", "{\"__metadata__\":\"x\"}", 0);
    expect_fail(p, MOERT_EFORMAT, "__metadata__ is a JSON string, expected an object");
    p = write_st("dup.safetensors", "{" T("a", "F32", "[1]", 0, 4) "," T("a", "F32", "[1]", 4, 8) "}", 8);
    expect_fail(p, MOERT_EFORMAT, "duplicate");

    p = write_st("nofile.safetensors", "{}", 0);
    unlink(p);
    expect_fail(p, MOERT_EIO, "No such file");
}

static void test_valid_files(void)
{
    /* Trailing-space padding (as the reference writer does), metadata, a zero-size tensor
     * sharing an offset, tensors listed out of offset order. */
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"}," T("z", "U8", "[0,5]", 4, 4) ","
                      T("b", "I16", "[2]", 4, 8) "," T("a", "F32", "[1]", 0, 4) "}      ";
    const char *p = write_st("ok.safetensors", hdr, 8);
    st_set *s = NULL;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(st_open(p, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 3);
    CU_ASSERT_STRING_EQUAL(st_at(s, 0)->name, "a");
    CU_ASSERT_STRING_EQUAL(st_at(s, 1)->name, "b");
    CU_ASSERT_STRING_EQUAL(st_at(s, 2)->name, "z");
    const st_tensor *b = st_find(s, "b");
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(b->dtype, ST_I16);
    CU_ASSERT_EQUAL(b->ndim, 1);
    CU_ASSERT_EQUAL(b->shape[0], 2);
    CU_ASSERT_EQUAL(b->nbytes, 4);
    /* data bytes are 0,1,2,...: b starts at data byte 4 */
    CU_ASSERT_EQUAL(((const uint8_t *)b->data)[0], 4);
    CU_ASSERT_EQUAL(((const uint8_t *)b->data)[3], 7);
    const st_tensor *z = st_find(s, "z");
    CU_ASSERT_EQUAL(z->nbytes, 0);
    CU_ASSERT_EQUAL(z->ndim, 2);
    CU_ASSERT_PTR_NULL(st_find(s, "c"));
    CU_ASSERT_PTR_NULL(st_find(s, ""));
    CU_ASSERT_STRING_EQUAL(st_metadata(s, "format"), "pt");
    CU_ASSERT_PTR_NULL(st_metadata(s, "other"));
    CU_ASSERT_EQUAL(st_file_count(s), 1);
    CU_ASSERT_STRING_EQUAL(st_file_path(s, 0), p);
    st_close(s);

    /* No tensors at all is a valid (empty) file. */
    p = write_st("none.safetensors", "{}", 0);
    CU_ASSERT_EQUAL_FATAL(st_open(p, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 0);
    CU_ASSERT_PTR_NULL(st_find(s, "a"));
    st_close(s);

    CU_ASSERT_EQUAL(st_dtype_from_name("BF16"), ST_BF16);
    CU_ASSERT_EQUAL(st_dtype_from_name("bf16"), -1);
    CU_ASSERT_STRING_EQUAL(st_dtype_name(ST_F16), "F16");
    CU_ASSERT_EQUAL(st_dtype_size(ST_F64), 8);
    CU_ASSERT_EQUAL(st_dtype_size(ST_BOOL), 1);
}

static int write_file_with(const char *path, const st_write_spec *sp, size_t n, const char *const *mk,
                           const char *const *mv, size_t nm, moert_err *e)
{
    st_writer *w;
    int st = st_writer_open(path, sp, n, mk, mv, nm, &w, e);
    if (st)
        return st;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t c = st_dtype_size(sp[i].dtype);
        for (int d = 0; d < sp[i].ndim; d++)
            c *= (uint64_t)sp[i].shape[d];
        total += c;
    }
    /* Bytes i*7 mod 256, written in awkward pieces (1, 2, 3, ... bytes). */
    uint8_t chunk[64];
    uint64_t at = 0;
    for (size_t piece = 1; at < total; piece = piece % 63 + 1) {
        size_t k = total - at < piece ? (size_t)(total - at) : piece;
        for (size_t i = 0; i < k; i++)
            chunk[i] = (uint8_t)((at + i) * 7);
        if ((st = st_writer_write(w, chunk, k, e))) {
            st_writer_abort(w);
            return st;
        }
        at += k;
    }
    return st_writer_finish(w, e);
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

static void test_writer_round_trip(void)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/w1", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/rt.safetensors", dir);
    const st_write_spec sp[] = {
        {"w.b", ST_BF16, 2, {3, 5}},
        {"w.a", ST_F32, 1, {7}},
        {"scalar", ST_I64, 0, {0}},
        {"empty", ST_F16, 2, {0, 4}},
    };
    const char *mk[] = {"format", "note"}, *mv[] = {"pt", "\"quoted\" ünïcode"};
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(write_file_with(path, sp, 4, mk, mv, 2, &e), MOERT_OK);
    CU_ASSERT(no_temp_files(dir));
    /* The header length is a multiple of 8, so the data section is 8-aligned. */
    FILE *f = fopen(path, "rb");
    uint8_t l8[8];
    CU_ASSERT_EQUAL(fread(l8, 1, 8, f), 8);
    fclose(f);
    CU_ASSERT_EQUAL(l8[0] % 8, 0);
    st_set *s;
    CU_ASSERT_EQUAL_FATAL(st_open(path, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 4);
    CU_ASSERT_STRING_EQUAL(st_metadata(s, "note"), "\"quoted\" ünïcode");
    /* Data offsets follow spec order: w.b [0,30), w.a [30,58), scalar [58,66). */
    const st_tensor *tb = st_find(s, "w.b"), *ta = st_find(s, "w.a"), *sc = st_find(s, "scalar");
    CU_ASSERT_EQUAL(tb->nbytes, 30);
    CU_ASSERT_EQUAL(ta->nbytes, 28);
    CU_ASSERT_EQUAL(sc->nbytes, 8);
    CU_ASSERT_EQUAL(sc->ndim, 0);
    CU_ASSERT_EQUAL((const uint8_t *)ta->data - (const uint8_t *)tb->data, 30);
    CU_ASSERT_EQUAL(((uintptr_t)tb->data) % 8, 0);
    for (int i = 0; i < 28; i++)
        CU_ASSERT_EQUAL(((const uint8_t *)ta->data)[i], (uint8_t)((30 + i) * 7));
    CU_ASSERT_EQUAL(((const uint8_t *)sc->data)[7], (uint8_t)(65 * 7));
    st_close(s);

    /* st_header_encode gives exactly the bytes before the data. */
    void *h;
    size_t hl;
    uint64_t dl;
    CU_ASSERT_EQUAL_FATAL(st_header_encode(sp, 4, mk, mv, 2, &h, &hl, &dl, &e), MOERT_OK);
    CU_ASSERT_EQUAL(dl, 66);
    struct stat sb;
    stat(path, &sb);
    CU_ASSERT_EQUAL((uint64_t)sb.st_size, hl + dl);
    f = fopen(path, "rb");
    uint8_t *fb = malloc(hl);
    CU_ASSERT_EQUAL(fread(fb, 1, hl, f), hl);
    fclose(f);
    CU_ASSERT_EQUAL(memcmp(fb, h, hl), 0);
    free(fb);
    free(h);
}

static void test_writer_atomic(void)
{
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/w2", test_tmpdir());
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/a.safetensors", dir);
    const st_write_spec sp[] = {{"x", ST_F32, 1, {4}}};
    moert_err e = {0};
    st_writer *w;
    /* Too few bytes: finish fails, nothing appears at path, no temp file stays. */
    CU_ASSERT_EQUAL_FATAL(st_writer_open(path, sp, 1, NULL, NULL, 0, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, "abcd", 4, &e), MOERT_OK);
    CU_ASSERT_NOT_EQUAL(st_writer_finish(w, &e), MOERT_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "4 data bytes written, the header declares 16"));
    CU_ASSERT_EQUAL(access(path, F_OK), -1);
    CU_ASSERT(no_temp_files(dir));
    /* Too many bytes: refused at write; abort leaves nothing. */
    CU_ASSERT_EQUAL_FATAL(st_writer_open(path, sp, 1, NULL, NULL, 0, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, "0123456789abcdefX", 17, &e), MOERT_EUSAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "would exceed the 16 bytes"));
    st_writer_abort(w);
    CU_ASSERT_EQUAL(access(path, F_OK), -1);
    CU_ASSERT(no_temp_files(dir));
    /* A good file, then a failed rewrite: the old file is untouched. */
    CU_ASSERT_EQUAL_FATAL(st_writer_open(path, sp, 1, NULL, NULL, 0, &w, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_writer_write(w, "0123456789abcdef", 16, &e), MOERT_OK);
    CU_ASSERT_EQUAL_FATAL(st_writer_finish(w, &e), MOERT_OK);
    const st_write_spec sp2[] = {{"y", ST_U8, 1, {3}}};
    CU_ASSERT_EQUAL_FATAL(st_writer_open(path, sp2, 1, NULL, NULL, 0, &w, &e), MOERT_OK);
    CU_ASSERT_NOT_EQUAL(st_writer_finish(w, &e), MOERT_OK);
    st_set *s;
    CU_ASSERT_EQUAL_FATAL(st_open(path, &s, &e), MOERT_OK);
    CU_ASSERT_PTR_NOT_NULL(st_find(s, "x"));
    CU_ASSERT_EQUAL(memcmp(st_find(s, "x")->data, "0123456789abcdef", 16), 0);
    st_close(s);
    CU_ASSERT(no_temp_files(dir));

    /* Bad specs are refused before any file exists. */
    const st_write_spec dup[] = {{"x", ST_F32, 1, {1}}, {"x", ST_F32, 1, {1}}};
    CU_ASSERT_EQUAL(st_writer_open(path, dup, 2, NULL, NULL, 0, &w, &e), MOERT_EUSAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "duplicate"));
    const st_write_spec neg[] = {{"x", ST_F32, 1, {-1}}};
    CU_ASSERT_EQUAL(st_writer_open(path, neg, 1, NULL, NULL, 0, &w, &e), MOERT_EUSAGE);
    const st_write_spec meta[] = {{"__metadata__", ST_F32, 1, {1}}};
    CU_ASSERT_EQUAL(st_writer_open(path, meta, 1, NULL, NULL, 0, &w, &e), MOERT_EUSAGE);
    CU_ASSERT(no_temp_files(dir));
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/a.safetensors", dir);
    CU_ASSERT_EQUAL(st_writer_open(bad, sp, 1, NULL, NULL, 0, &w, &e), MOERT_EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cannot create temp file"));

    /* st_write_file_atomic replaces contents whole. */
    snprintf(path, sizeof path, "%s/plain.txt", dir);
    CU_ASSERT_EQUAL(st_write_file_atomic(path, "hello", 5, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_write_file_atomic(path, "hi", 2, &e), MOERT_OK);
    struct stat sb;
    CU_ASSERT_EQUAL(stat(path, &sb), 0);
    CU_ASSERT_EQUAL(sb.st_size, 2);
    CU_ASSERT(no_temp_files(dir));
}

/* Shards for the index tests: s1 = {a, b}, s2 = {c}, s3 = {a}. */
static void make_shards(const char *dir)
{
    char p[600];
    moert_err e = {0};
    const st_write_spec s1[] = {{"a", ST_F32, 1, {2}}, {"b", ST_BF16, 2, {2, 2}}};
    const st_write_spec s2[] = {{"c", ST_U8, 1, {5}}};
    snprintf(p, sizeof p, "%s/s1.safetensors", dir);
    CU_ASSERT_EQUAL_FATAL(write_file_with(p, s1, 2, NULL, NULL, 0, &e), MOERT_OK);
    snprintf(p, sizeof p, "%s/s2.safetensors", dir);
    const char *mk[] = {"who"}, *mv[] = {"s2"};
    CU_ASSERT_EQUAL_FATAL(write_file_with(p, s2, 1, mk, mv, 1, &e), MOERT_OK);
    snprintf(p, sizeof p, "%s/s3.safetensors", dir);
    CU_ASSERT_EQUAL_FATAL(write_file_with(p, s1, 1, NULL, NULL, 0, &e), MOERT_OK);
}

static const char *write_index(const char *dir, const char *name, const char *json)
{
    static char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    fputs(json, f);
    fclose(f);
    return p;
}

static void test_sharded(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/sh", test_tmpdir());
    mkdir(dir, 0755);
    make_shards(dir);
    moert_err e = {0};
    st_set *s;
    const char *ip = write_index(dir, "model.safetensors.index.json",
                                 "{\"metadata\": {\"total_size\": 21}, \"weight_map\": "
                                 "{\"c\": \"s2.safetensors\", \"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\"}}");
    CU_ASSERT_EQUAL_FATAL(st_open(ip, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 3);
    CU_ASSERT_EQUAL(st_file_count(s), 2);
    CU_ASSERT_PTR_NOT_NULL(strstr(st_file_path(s, 0), "s1.safetensors"));
    CU_ASSERT_PTR_NOT_NULL(strstr(st_file_path(s, 1), "s2.safetensors"));
    CU_ASSERT_EQUAL(st_find(s, "c")->file_index, 1);
    CU_ASSERT_EQUAL(st_find(s, "b")->file_index, 0);
    CU_ASSERT_EQUAL(((const uint8_t *)st_find(s, "c")->data)[4], 28); /* byte 4 of s2's data */
    CU_ASSERT_STRING_EQUAL(st_metadata(s, "who"), "s2");
    st_close(s);
    /* The directory form finds the same index. */
    CU_ASSERT_EQUAL_FATAL(st_open(dir, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 3);
    st_close(s);

    ip = write_index(dir, "missing.index.json", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"x\": \"nope.safetensors\"}}");
    expect_fail(ip, MOERT_EIO, "names shard 'nope.safetensors'");
    ip = write_index(dir, "notin.index.json",
                     "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"d\": \"s1.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "index maps tensor 'd' to s1.safetensors, which does not hold it");
    ip = write_index(dir, "unlisted.index.json", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "shard s1.safetensors holds tensor 'b', which the index does not list");
    ip = write_index(dir, "wrong.index.json",
                     "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"c\": \"s1.safetensors\", "
                     "\"z\": \"s2.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "index maps tensor 'c' to s1.safetensors but it is in s2.safetensors");
    expect_fail(ip, MOERT_EFORMAT, "index maps tensor 'z' to s2.safetensors, which does not hold it");
    ip = write_index(dir, "dup.index.json",
                     "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s1.safetensors\", \"q\": \"s3.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "tensor 'a' is in both s1.safetensors and s3.safetensors");
    ip = write_index(dir, "dupkey.index.json", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"a\": \"s1.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "duplicate");
    ip = write_index(dir, "nomap.index.json", "{\"metadata\": {}}");
    expect_fail(ip, MOERT_EFORMAT, "\"weight_map\" is missing");
    ip = write_index(dir, "badval.index.json", "{\"weight_map\": {\"a\": 3}}");
    expect_fail(ip, MOERT_EFORMAT, "weight_map['a'] is a JSON integer");
    ip = write_index(dir, "escape.index.json", "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}");
    expect_fail(ip, MOERT_EFORMAT, "expected a file name in the index's directory");
    ip = write_index(dir, "syntax.index.json", "{\"weight_map\": {\"a\": }");
    expect_fail(ip, MOERT_EFORMAT, "syntax.index.json:1:");

    /* A directory with neither file. */
    char empty[600];
    snprintf(empty, sizeof empty, "%s/emptydir", test_tmpdir());
    mkdir(empty, 0755);
    expect_fail(empty, MOERT_EIO, "no model.safetensors.index.json or model.safetensors");
}

static void test_image(void)
{
    /* Images are validated like files and released on error too (ASan checks the leak). */
    const char *hdr = "{" T("a", "F32", "[2]", 0, 8) "}";
    size_t hl = strlen(hdr), len = 8 + hl + 8;
    moert_err e = {0};
    st_set *s;
    for (int bad = 0; bad < 2; bad++) {
        uint8_t *img = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CU_ASSERT_FATAL(img != MAP_FAILED);
        img[0] = (uint8_t)hl;
        memcpy(img + 8, hdr, hl);
        int st = st_open_image(img, bad ? len - 1 : len, "img", &s, &e);
        if (bad) {
            CU_ASSERT_EQUAL(st, MOERT_EFORMAT);
            CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "img: tensor 'a'"));
            /* the set has already unmapped it (len - 1 covers the same page) */
        } else {
            CU_ASSERT_EQUAL_FATAL(st, MOERT_OK);
            CU_ASSERT_STRING_EQUAL(st_file_path(s, 0), "img");
            CU_ASSERT_EQUAL(st_find(s, "a")->data, img + 8 + hl);
            st_close(s);
        }
    }
}


/* A valid header of `count` zero-size tensors, padded with spaces to at least `min_len`. */
static const char *write_zero_tensors(const char *name, size_t count, size_t min_len)
{
    size_t cap = count * 64 + min_len + 16;
    char *h = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(h);
    size_t n = (size_t)snprintf(h, cap, "{");
    for (size_t i = 0; i < count; i++)
        n += (size_t)snprintf(h + n, cap - n, "%s\"t%zu\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}",
                              i ? "," : "", i);
    n += (size_t)snprintf(h + n, cap - n, "}");
    while (n < min_len)
        h[n++] = ' ';
    h[n] = '\0';
    const char *p = write_st(name, h, 0);
    free(h);
    return p;
}

/* Counts a file controls are bounded before they cost time or memory: a 90 MB header of
 * 1.5 million zero-size tensors once took 20 s and 1.8 GB, and `diff` then exited 0. */
static void test_header_limits(void)
{
    const char *p = write_zero_tensors("bighdr.safetensors", 10, ST_HEADER_MAX + 1);
    expect_fail(p, MOERT_EFORMAT, "header length 16777217 (bytes 0-7) exceeds the limit of 16777216");
    char out[4096], errb[4096];
    CU_ASSERT_EQUAL(test_run_cmdf(out, sizeof out, errb, sizeof errb, "./moert diff %s %s", p, p), 2);
    char want[1024];
    snprintf(want, sizeof want, "moert diff: %s: header length 16777217 (bytes 0-7) exceeds the limit of 16777216\n", p);
    CU_ASSERT_STRING_EQUAL(errb, want);
    p = write_zero_tensors("many.safetensors", ST_MAX_TENSORS + 1, 0);
    expect_fail(p, MOERT_EFORMAT, "header lists 131073 tensors, expected at most 131072 per file");
    char longname[1200 + 80];
    snprintf(longname, sizeof longname, "{\"%01100d\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 7);
    p = write_st("longname.safetensors", longname, 0);
    expect_fail(p, MOERT_EFORMAT, "...: a 1100-byte name, expected at most 1024 bytes");
    p = write_zero_tensors("enough.safetensors", 1000, 0);
    st_set *s = NULL;
    moert_err e = {0};
    CU_ASSERT_EQUAL_FATAL(st_open(p, &s, &e), MOERT_OK);
    CU_ASSERT_EQUAL(st_count(s), 1000);
    st_close(s);
    /* an index is JSON too: bounded by its size before it is parsed */
    char ip[600];
    snprintf(ip, sizeof ip, "%s/big.index.json", test_tmpdir());
    FILE *f = fopen(ip, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("{\"weight_map\": {\"a\": \"", f);
    for (size_t i = 0; i < ST_HEADER_MAX; i++)
        fputc('x', f);
    fputs(".safetensors\"}}", f);
    fclose(f);
    expect_fail(ip, MOERT_EFORMAT, "big.index.json: 16777253 bytes, expected an index of at most 16777216 bytes");
    /* the writer refuses what the reader would */
    static st_write_spec many[ST_MAX_TENSORS + 1];
    static char names[ST_MAX_TENSORS + 1][12];
    for (size_t i = 0; i <= ST_MAX_TENSORS; i++) {
        snprintf(names[i], sizeof names[i], "t%zu", i);
        many[i] = (st_write_spec){names[i], ST_U8, 1, {0}};
    }
    void *h;
    size_t hl;
    uint64_t dl;
    CU_ASSERT_EQUAL(st_header_encode(many, ST_MAX_TENSORS + 1, NULL, NULL, 0, &h, &hl, &dl, &e), MOERT_EUSAGE);
    CU_ASSERT_STRING_EQUAL(e.msg, "safetensors writer: 131073 tensors in one file, at most 131072");
}

void suite_st(void)
{
    CU_pSuite s = CU_add_suite("st", NULL, NULL);
    CU_add_test(s, "corrupt-file catalogue", test_corrupt_catalogue);
    CU_add_test(s, "valid files", test_valid_files);
    CU_add_test(s, "writer round trip", test_writer_round_trip);
    CU_add_test(s, "writer atomicity", test_writer_atomic);
    CU_add_test(s, "sharded sets", test_sharded);
    CU_add_test(s, "in-memory images", test_image);
    CU_add_test(s, "header size and tensor count bounded per file", test_header_limits);
}
