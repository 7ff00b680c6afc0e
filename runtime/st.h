/* st: safetensors files.  Reading maps a single file or a sharded set
 * (model.safetensors.index.json) read-only with mmap and validates each header as strictly
 * as the reference implementation; writing streams tensors into a new file atomically
 * (temp file, fsync, rename) so that a reader never sees half a file.
 *
 * Format: u64 little-endian N, then N bytes of JSON {name: {dtype, shape, data_offsets},
 * "__metadata__": {str: str}}, then the data section.  Offsets are relative to the data
 * section, tensors must tile it exactly (contiguous, non-overlapping, no gaps), and
 * end - begin == product(shape) * dtype size.
 */
#ifndef MOERT_ST_H
#define MOERT_ST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define ST_MAX_DIMS 8
/* Per file, checked before anything is parsed or allocated from them: the reference allows
 * 100 MB headers, but its JSON costs ~20x its size in memory here; 16 MiB holds ~100,000
 * tensor entries (Qwen3-235B-A22B in one file needs ~37,000). */
#define ST_HEADER_MAX (16u * 1024u * 1024u)
#define ST_MAX_TENSORS (1u << 17)
#define ST_MAX_NAME 1024u /* bytes of a tensor name (the hub's are under 100) */

typedef enum st_dtype {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32, ST_F64,
    ST_I64, ST_U64,
    /* Block-quantized (ggml's layouts, ops.h): only GGUF files hold these; a safetensors
     * header naming one is refused. */
    ST_Q4_0, ST_Q5_0, ST_Q8_0, ST_Q4_K, ST_Q5_K, ST_Q6_K,
    ST_DTYPE_COUNT
} st_dtype;
#define ST_SAFETENSORS_DTYPE_COUNT (ST_U64 + 1) /* the dtypes a safetensors header may name */

const char *st_dtype_name(st_dtype d); /* "F32", "BF16", "Q4_K", ... */
int st_dtype_from_name(const char *name); /* safetensors names only; -1 when unknown */
size_t st_dtype_size(st_dtype d);         /* element size; 0 for block types */
bool st_dtype_is_block(st_dtype d);
/* The kernel type (ops_dtype) of a weight dtype, or -1 when moert cannot compute with it. */
int st_dtype_ops(st_dtype d);
/* Bytes of n elements: n * size, or for block types n / block * block bytes (0 when n is not
 * a multiple of the block or the dtype has no kernel type). */
uint64_t st_dtype_row_bytes(st_dtype d, uint64_t n);

typedef struct st_tensor {
    const char *name;            /* owned by the st_set */
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
    const void *data;            /* points into the read-only mapping */
    int file_index;              /* which shard */
} st_tensor;

typedef struct st_set st_set;    /* opaque: mappings, tensors sorted by name, metadata */

/* Opens `path`: a .safetensors file, a *.safetensors.index.json, or a directory holding
 * model.safetensors or model.safetensors.index.json.  Every file is validated before
 * MOERT_OK is returned; errors name the file and byte offset or tensor. */
int st_open(const char *path, st_set **out, moert_err *err);

/* Wraps a safetensors image already in memory (e.g. synthesized weights).  The set takes
 * ownership of `image` and releases it with munmap(image, len) in st_close; on error it is
 * released before returning, so ownership passes in every case. */
int st_open_image(void *image, size_t len, const char *label, st_set **out, moert_err *err);

/* A set over tensors that live elsewhere (slices of a GGUF mapping, say): names are
 * copied, data is not.  release(owner) runs in st_close (and at once on error), so the set
 * can own what its tensors point into.  `label` stands for the file in messages.  Sorted
 * by name like every set; two views of one name are MOERT_EFORMAT. */
typedef struct st_view {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} st_view;

int st_open_views(const st_view *v, size_t n, const char *label, void (*release)(void *owner), void *owner,
                  st_set **out, moert_err *err);

void st_close(st_set *set);

size_t st_count(const st_set *set);
const st_tensor *st_at(const st_set *set, size_t i);     /* sorted by name */
const st_tensor *st_find(const st_set *set, const char *name); /* NULL when absent */

/* __metadata__ value of the first file holding `key`, or NULL. */
const char *st_metadata(const st_set *set, const char *key);

/* Number of files and the path of file i (label for images). */
size_t st_file_count(const st_set *set);
const char *st_file_path(const st_set *set, size_t i);

/* ---- writing ---------------------------------------------------------------------- */

typedef struct st_writer st_writer;

typedef struct st_write_spec {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_write_spec;

/* Starts `path` (written as path.tmp.PID, renamed on finish).  The header is built from
 * `specs` in the order given; metadata is n_meta key/value pairs (may be 0). */
int st_writer_open(const char *path, const st_write_spec *specs, size_t n_specs,
                   const char *const *meta_keys, const char *const *meta_values, size_t n_meta,
                   st_writer **out, moert_err *err);

/* Appends bytes of the tensors in spec order; calls may split or join tensors freely, the
 * total must equal the sum of the specs' sizes by st_writer_finish.  Writing past that
 * total is refused.  After an error, end with st_writer_abort (or st_writer_finish, which
 * then fails and cleans up). */
int st_writer_write(st_writer *w, const void *data, size_t len, moert_err *err);

/* Checks the byte count, fsyncs, renames into place.  Frees w in every case. */
int st_writer_finish(st_writer *w, moert_err *err);

/* Removes the temp file and frees w (on any error path). */
void st_writer_abort(st_writer *w);

/* The bytes st_writer_open puts before the data: the 8-byte little-endian length and the
 * compact JSON header (metadata first, then tensors in spec order with offsets assigned in
 * that order), padded with spaces to a multiple of 8 so the data section is 8-aligned.
 * *header is malloc'd (caller frees); *data_len is the data section's size.  Used to build
 * images in memory that are byte-identical to written files. */
int st_header_encode(const st_write_spec *specs, size_t n_specs, const char *const *meta_keys,
                     const char *const *meta_values, size_t n_meta, void **header,
                     size_t *header_len, uint64_t *data_len, moert_err *err);

/* Writes `len` bytes to `path` atomically: path.tmp.PID, fsync, rename, fsync of the
 * directory; on error the temp file is removed and `path` is untouched. */
int st_write_file_atomic(const char *path, const void *data, size_t len, moert_err *err);

#endif
