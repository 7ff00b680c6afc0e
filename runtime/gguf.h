/* gguf: GGUF v3 files (llama.cpp's model format).  Reading maps the file read-only and
 * validates it completely before anything is used: magic and version; every count, string
 * length and array length is bounded by the bytes left in the file before it is trusted
 * (so a crafted n_tensors, n_kv, string length or dim can never size an allocation or a
 * loop beyond the file); size arithmetic is overflow-checked; general.alignment is a
 * power of two; every tensor has a known type, 1..4 dims > 0, a row length that is a
 * multiple of its type's block, an aligned offset, and bytes that lie inside the data
 * section without overlapping another tensor.  Errors name the file, the byte offset and
 * what was expected.  Writing builds a file atomically (temp file, fsync, rename).
 *
 * Layout (little-endian): "GGUF" u32 version(3) u64 n_tensors u64 n_kv, then n_kv
 * key/value pairs (gguf string key, u32 value type, value), then n_tensors infos (string
 * name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset relative to the data
 * section), padding to general.alignment (default 32), the data section.  A gguf string
 * is u64 length + bytes (no NUL).  An array is u32 element type + u64 count + elements.
 *
 * Element types of tensors are moert's st_dtype (st.h): the GGML ids are translated here
 * and nowhere else.  Block layouts (elements and bytes per block) come from ops.h.
 */
#ifndef MOERT_GGUF_H
#define MOERT_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "st.h"

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32
/* Bounds no real model comes near; files beyond them are refused before any allocation. */
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_STRING (1u << 26) /* 64 MiB: the longest key or value string */
#define GGUF_MAX_NAME 256          /* tensor names: llama.cpp's GGML_MAX_NAME is 64 */

/* Metadata value types, with the file's numbering. */
typedef enum gguf_vtype {
    GGUF_V_U8 = 0, GGUF_V_I8 = 1, GGUF_V_U16 = 2, GGUF_V_I16 = 3, GGUF_V_U32 = 4, GGUF_V_I32 = 5,
    GGUF_V_F32 = 6, GGUF_V_BOOL = 7, GGUF_V_STRING = 8, GGUF_V_ARRAY = 9, GGUF_V_U64 = 10,
    GGUF_V_I64 = 11, GGUF_V_F64 = 12, GGUF_V_COUNT
} gguf_vtype;

const char *gguf_vtype_name(gguf_vtype t); /* "u32", "string", "array", ... */

/* A string inside the mapping: NOT NUL-terminated. */
typedef struct gguf_str {
    const char *p;
    uint64_t len;
} gguf_str;

typedef struct gguf_kv {
    gguf_str key;
    gguf_vtype type;
    gguf_vtype arr_type;      /* element type when type == GGUF_V_ARRAY */
    uint64_t arr_n;           /* element count when type == GGUF_V_ARRAY */
    const uint8_t *val;       /* the value's bytes in the mapping: a scalar itself; a string's
                               * u64 length (bytes follow); an array's first element (after
                               * its element type and count) */
    uint64_t offset;          /* byte offset of the key in the file (for messages) */
} gguf_kv;

typedef struct gguf_tensor {
    const char *name;         /* NUL-terminated copy owned by the gguf_file */
    uint32_t ggml_type;       /* the id in the file */
    st_dtype dtype;           /* translated */
    int ndim;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) dimension, as in ggml */
    uint64_t offset;          /* absolute byte offset of the data in the file */
    uint64_t nbytes;
    const void *data;         /* points into the read-only mapping */
    uint64_t info_offset;     /* byte offset of the tensor's info record (for messages) */
} gguf_tensor;

typedef struct gguf_file gguf_file; /* opaque */

/* True when the first bytes of `path` are the GGUF magic (false when unreadable). */
bool gguf_is_gguf(const char *path);

/* Opens and validates `path`.  MOERT_EIO when it cannot be read, MOERT_EFORMAT for
 * anything malformed ("PATH: byte OFF: what was expected, what was found").  A tensor of a
 * type moert cannot compute with (e.g. IQ2_XXS) is MOERT_EFORMAT naming the tensor and the
 * type.  *out is NULL on failure. */
int gguf_open(const char *path, gguf_file **out, moert_err *err);

/* Same checks on an image in memory (borrowed: must outlive the gguf_file); `label` stands
 * for the path in messages. */
int gguf_open_memory(const void *data, size_t len, const char *label, gguf_file **out,
                     moert_err *err);

void gguf_close(gguf_file *g);

const char *gguf_path(const gguf_file *g);
uint32_t gguf_version(const gguf_file *g);
uint64_t gguf_alignment(const gguf_file *g);
uint64_t gguf_data_offset(const gguf_file *g); /* start of the data section */

/* ---- metadata --------------------------------------------------------------------- */

size_t gguf_kv_count(const gguf_file *g);
const gguf_kv *gguf_kv_at(const gguf_file *g, size_t i);     /* file order */
const gguf_kv *gguf_kv_find(const gguf_file *g, const char *key); /* NULL when absent */

/* Typed getters.  Each returns MOERT_OK and sets *v, or MOERT_EFORMAT naming the key, its
 * offset, the type found and the type expected.  Integer getters accept any integer type
 * whose value fits the destination; the float getter accepts f32 and f64.  An absent key is
 * MOERT_EFORMAT ("missing key ...") unless the caller checks gguf_kv_find first. */
int gguf_get_u64(const gguf_file *g, const char *key, uint64_t *v, moert_err *err);
int gguf_get_i64(const gguf_file *g, const char *key, int64_t *v, moert_err *err);
int gguf_get_f64(const gguf_file *g, const char *key, double *v, moert_err *err);
int gguf_get_bool(const gguf_file *g, const char *key, bool *v, moert_err *err);
int gguf_get_str(const gguf_file *g, const char *key, gguf_str *v, moert_err *err);

/* Arrays: the kv must be an array of `elem` (MOERT_EFORMAT otherwise).  Strings of a
 * string array are indexed at open time, so element access is O(1) and bounds-checked. */
int gguf_get_arr(const gguf_file *g, const char *key, gguf_vtype elem, const gguf_kv **kv,
                 moert_err *err);
gguf_str gguf_arr_str(const gguf_file *g, const gguf_kv *kv, uint64_t i); /* {NULL,0} if OOB */
/* integer arrays, any width; 0 if OOB or not an integer array (u64 elements above
 * INT64_MAX come back as their two's-complement int64) */
int64_t gguf_arr_int(const gguf_kv *kv, uint64_t i);
double gguf_arr_float(const gguf_kv *kv, uint64_t i);  /* f32 / f64 arrays; 0 if OOB */

/* ---- tensors ---------------------------------------------------------------------- */

size_t gguf_tensor_count(const gguf_file *g);
const gguf_tensor *gguf_tensor_at(const gguf_file *g, size_t i); /* file order */
const gguf_tensor *gguf_tensor_find(const gguf_file *g, const char *name);

/* Name of a GGML type id ("Q4_K", "IQ2_XXS", ...), or "unknown" for ids not in ggml. */
const char *gguf_ggml_type_name(uint32_t ggml_type);
/* The GGML id of a type moert computes with (ST_F32, ST_F16, ST_BF16, ST_Q8_0, ...), or
 * -1 for an st_dtype GGUF cannot hold. */
int gguf_ggml_type_of(st_dtype d);

/* ---- writing ---------------------------------------------------------------------- */

typedef struct gguf_writer gguf_writer;

/* Starts an empty document (version 3, alignment GGUF_DEFAULT_ALIGNMENT unless a
 * general.alignment u32 is added).  Keys keep the order they are added in; adding a key
 * twice is MOERT_EUSAGE. */
int gguf_writer_new(gguf_writer **out, moert_err *err);
void gguf_writer_free(gguf_writer *w);

int gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v, moert_err *err);
int gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v, moert_err *err);
int gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v, moert_err *err);
int gguf_writer_add_f32(gguf_writer *w, const char *key, float v, moert_err *err);
int gguf_writer_add_bool(gguf_writer *w, const char *key, bool v, moert_err *err);
int gguf_writer_add_str(gguf_writer *w, const char *key, const char *v, moert_err *err);
/* Arrays of strings (n NUL-terminated strings) and of int32. */
int gguf_writer_add_str_arr(gguf_writer *w, const char *key, const char *const *v, size_t n,
                            moert_err *err);
int gguf_writer_add_i32_arr(gguf_writer *w, const char *key, const int32_t *v, size_t n,
                            moert_err *err);

/* Declares a tensor (ne[0] contiguous); its data is given later, in declaration order, to
 * gguf_writer_write_file / _to_memory.  Offsets are assigned in declaration order, each
 * padded to the alignment (the layout llama.cpp requires).  Names are limited to 63 bytes
 * (llama.cpp's GGML_MAX_NAME); dtype must have a GGML id (gguf_ggml_type_of). */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, st_dtype dtype, int ndim,
                           const int64_t *ne, moert_err *err);

/* Streams the file to `path` (temp name, fsync, rename): header, then for each declared
 * tensor in order fill(ctx, index, chunk_offset, buf, nbytes, err) writes exactly those
 * bytes of the tensor into buf (a scratch of the tensor's size, or of one chunk: fill may
 * be called several times per tensor with chunk_offset advancing).  Padding is zeros.  A
 * NULL fill writes zero data.  A non-OK status from fill aborts the write (its message is
 * prefixed with the path and tensor name).  On error nothing is left at `path`. */
typedef int (*gguf_fill_fn)(void *ctx, size_t tensor, uint64_t chunk_offset, void *buf,
                            size_t nbytes, moert_err *err);
int gguf_writer_write_file(gguf_writer *w, const char *path, gguf_fill_fn fill, void *ctx,
                           moert_err *err);

/* The whole file in memory (malloc'd; caller frees), byte-identical to what
 * gguf_writer_write_file writes; fill is called once per tensor with the whole tensor.
 * For tests and their corrupt-file generator, which then edit bytes. */
int gguf_writer_to_memory(gguf_writer *w, gguf_fill_fn fill, void *ctx, uint8_t **out,
                          size_t *len, moert_err *err);

#endif
