/* st: safetensors reading (mmap + strict validation) and atomic writing. */
#include "st.h"

#include "../ops/ops.h"
#include "afile.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- dtypes ----------------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_BOOL] = {"BOOL", 1}, [ST_U8] = {"U8", 1},   [ST_I8] = {"I8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2}, [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2}, [ST_I32] = {"I32", 4}, [ST_U32] = {"U32", 4},
    [ST_F32] = {"F32", 4},   [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8},
    [ST_U64] = {"U64", 8},   [ST_Q4_0] = {"Q4_0", 0}, [ST_Q5_0] = {"Q5_0", 0},
    [ST_Q8_0] = {"Q8_0", 0}, [ST_Q4_K] = {"Q4_K", 0}, [ST_Q5_K] = {"Q5_K", 0},
    [ST_Q6_K] = {"Q6_K", 0},
};

const char *st_dtype_name(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].name : "?";
}

int st_dtype_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < ST_SAFETENSORS_DTYPE_COUNT; i++)
        if (strcmp(name, dtypes[i].name) == 0)
            return i;
    return -1;
}

size_t st_dtype_size(st_dtype d)
{
    return (unsigned)d < ST_DTYPE_COUNT ? dtypes[d].size : 0;
}

bool st_dtype_is_block(st_dtype d)
{
    return d >= ST_Q4_0 && d < ST_DTYPE_COUNT;
}

int st_dtype_ops(st_dtype d)
{
    switch (d) {
    case ST_F32: return OPS_F32;
    case ST_BF16: return OPS_BF16;
    case ST_F16: return OPS_F16;
    case ST_Q4_0: return OPS_Q4_0;
    case ST_Q5_0: return OPS_Q5_0;
    case ST_Q8_0: return OPS_Q8_0;
    case ST_Q4_K: return OPS_Q4_K;
    case ST_Q5_K: return OPS_Q5_K;
    case ST_Q6_K: return OPS_Q6_K;
    default: return -1;
    }
}

uint64_t st_dtype_row_bytes(st_dtype d, uint64_t n)
{
    if (!st_dtype_is_block(d))
        return n * st_dtype_size(d); /* callers bound n far below overflow */
    int o = st_dtype_ops(d);
    if (o < 0 || n > (uint64_t)INT64_MAX)
        return 0;
    return ops_row_bytes((ops_dtype)o, (int64_t)n);
}

/* ---- the set ---------------------------------------------------------------------- */

typedef struct st_file {
    char *path;          /* file path, or the label of an image */
    void *map;           /* NULL for an empty file */
    size_t len;
    char **meta;         /* key0, value0, key1, value1, ... */
    size_t n_meta;
} st_file;

struct st_set {
    st_file *files;
    size_t n_files;
    st_tensor *tensors;
    size_t n_tensors, cap_tensors;
    void (*release)(void *owner); /* views: frees what the tensors point into */
    void *owner;
};

/* Tensor names are shown bounded so one absurd name cannot push the rest out of a message. */
#define NAME_FMT "'%.160s'"

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "real number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

static void fmt_shape(char *buf, size_t cap, const int64_t *shape, int ndim)
{
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static uint64_t le64(const uint8_t *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static int set_new(st_set **out, moert_err *err)
{
    *out = calloc(1, sizeof **out);
    return *out ? MOERT_OK : err_set(err, MOERT_ENOMEM, "safetensors: out of memory");
}

static int add_file(st_set *s, const char *path, moert_err *err)
{
    st_file *f = realloc(s->files, (s->n_files + 1) * sizeof *f);
    if (!f)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    s->files = f;
    memset(&f[s->n_files], 0, sizeof *f);
    f[s->n_files].path = strdup(path);
    if (!f[s->n_files].path)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    s->n_files++;
    return MOERT_OK;
}

static st_tensor *add_tensor(st_set *s)
{
    if (s->n_tensors == s->cap_tensors) {
        size_t cap = s->cap_tensors ? 2 * s->cap_tensors : 64;
        st_tensor *t = realloc(s->tensors, cap * sizeof *t);
        if (!t)
            return NULL;
        s->tensors = t;
        s->cap_tensors = cap;
    }
    st_tensor *t = &s->tensors[s->n_tensors++];
    memset(t, 0, sizeof *t);
    return t;
}

void st_close(st_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n_tensors; i++)
        free((char *)set->tensors[i].name);
    free(set->tensors);
    for (size_t i = 0; i < set->n_files; i++) {
        st_file *f = &set->files[i];
        if (f->map)
            munmap(f->map, f->len);
        for (size_t k = 0; k < 2 * f->n_meta; k++)
            free(f->meta[k]);
        free(f->meta);
        free(f->path);
    }
    free(set->files);
    if (set->release)
        set->release(set->owner);
    free(set);
}

size_t st_count(const st_set *set) { return set ? set->n_tensors : 0; }

const st_tensor *st_at(const st_set *set, size_t i)
{
    return set && i < set->n_tensors ? &set->tensors[i] : NULL;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

const st_tensor *st_find(const st_set *set, const char *name)
{
    if (!set || !name || !set->n_tensors)
        return NULL;
    st_tensor key = {.name = name};
    return bsearch(&key, set->tensors, set->n_tensors, sizeof key, cmp_tensor_name);
}

const char *st_metadata(const st_set *set, const char *key)
{
    if (!set || !key)
        return NULL;
    for (size_t i = 0; i < set->n_files; i++)
        for (size_t k = 0; k < set->files[i].n_meta; k++)
            if (strcmp(set->files[i].meta[2 * k], key) == 0)
                return set->files[i].meta[2 * k + 1];
    return NULL;
}

size_t st_file_count(const st_set *set) { return set ? set->n_files : 0; }

const char *st_file_path(const st_set *set, size_t i)
{
    return set && i < set->n_files ? set->files[i].path : NULL;
}

/* ---- header validation ------------------------------------------------------------ */

typedef struct span {
    uint64_t begin, end;
    size_t tensor;       /* index into set->tensors */
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int parse_metadata(st_file *f, const json_t *meta, moert_err *err)
{
    if (!json_is_object(meta))
        return err_set(err, MOERT_EFORMAT, "%s: __metadata__ is a JSON %s, expected an object of strings",
                       f->path, json_kind(meta));
    size_t n = json_object_size(meta);
    f->meta = calloc(2 * n + 1, sizeof *f->meta);
    if (!f->meta)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", f->path);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return err_set(err, MOERT_EFORMAT,
                           "%s: __metadata__ value for key " NAME_FMT " is a JSON %s, expected a string",
                           f->path, k, json_kind(v));
        f->meta[2 * f->n_meta] = strdup(k);
        f->meta[2 * f->n_meta + 1] = strdup(json_string_value(v));
        f->n_meta++;
        if (!f->meta[2 * f->n_meta - 2] || !f->meta[2 * f->n_meta - 1])
            return err_set(err, MOERT_ENOMEM, "%s: out of memory", f->path);
    }
    return MOERT_OK;
}

/* One tensor entry: exactly {dtype, shape, data_offsets}, consistent with itself and with
 * the data section's size.  Tiling is checked afterwards over all entries. */
static int parse_entry(st_set *s, size_t fi, const char *name, const json_t *e,
                       const uint8_t *data, uint64_t data_size, span *sp, moert_err *err)
{
    const char *p = s->files[fi].path;
    if (strlen(name) > ST_MAX_NAME)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT "...: a %zu-byte name, expected at most %u bytes", p,
                       name, strlen(name), ST_MAX_NAME);
    if (!json_is_object(e))
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": entry is a JSON %s, expected an object",
                       p, name, json_kind(e));
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)e, k, v) {
        if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
            return err_set(err, MOERT_EFORMAT,
                           "%s: tensor " NAME_FMT ": unexpected key '%.60s' (expected dtype, shape, data_offsets)",
                           p, name, k);
    }
    const json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"),
                 *jo = json_object_get(e, "data_offsets");
    if (!jd || !js || !jo)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": missing '%s'", p, name,
                       !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (!json_is_string(jd))
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": dtype is a JSON %s, expected a string",
                       p, name, json_kind(jd));
    int dt = st_dtype_from_name(json_string_value(jd));
    if (dt < 0)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": unknown dtype '%.40s'", p, name,
                       json_string_value(jd));
    if (!json_is_array(js))
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": shape is a JSON %s, expected an array",
                       p, name, json_kind(js));
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": shape has %zu dims, at most %d supported",
                       p, name, nd, ST_MAX_DIMS);
    int64_t shape[ST_MAX_DIMS] = {0};
    uint64_t count = 1;
    bool overflow = false;
    for (size_t i = 0; i < nd; i++) {
        const json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": shape[%zu] is a JSON %s, expected an integer",
                           p, name, i, json_kind(d));
        if (json_integer_value(d) < 0)
            return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": shape[%zu] is %lld, expected >= 0",
                           p, name, i, (long long)json_integer_value(d));
        shape[i] = json_integer_value(d);
        overflow |= __builtin_mul_overflow(count, (uint64_t)shape[i], &count);
    }
    uint64_t need = 0;
    overflow |= __builtin_mul_overflow(count, (uint64_t)dtypes[dt].size, &need);
    char sh[200];
    fmt_shape(sh, sizeof sh, shape, (int)nd);
    if (overflow)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": shape %s of %s overflows 64-bit byte counts",
                       p, name, sh, dtypes[dt].name);
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": data_offsets is %s, expected [begin, end]",
                       p, name, json_is_array(jo) ? "an array of the wrong length" : json_kind(jo));
    int64_t off[2];
    for (int i = 0; i < 2; i++) {
        const json_t *o = json_array_get(jo, (size_t)i);
        if (!json_is_integer(o) || json_integer_value(o) < 0)
            return err_set(err, MOERT_EFORMAT,
                           "%s: tensor " NAME_FMT ": data_offsets[%d] must be a non-negative integer", p, name, i);
        off[i] = json_integer_value(o);
    }
    uint64_t b = (uint64_t)off[0], en = (uint64_t)off[1];
    if (b > en)
        return err_set(err, MOERT_EFORMAT, "%s: tensor " NAME_FMT ": data_offsets [%" PRIu64 ", %" PRIu64
                       "]: begin > end", p, name, b, en);
    if (en - b != need)
        return err_set(err, MOERT_EFORMAT,
                       "%s: tensor " NAME_FMT ": data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64
                       " bytes, shape %s of %s needs %" PRIu64,
                       p, name, b, en, en - b, sh, dtypes[dt].name, need);
    if (en > data_size)
        return err_set(err, MOERT_EFORMAT,
                       "%s: tensor " NAME_FMT ": data_offsets [%" PRIu64 ", %" PRIu64
                       "] run past the end of the %" PRIu64 "-byte data section (file truncated?)",
                       p, name, b, en, data_size);
    st_tensor *t = add_tensor(s);
    if (!t)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", p);
    t->name = strdup(name);
    if (!t->name)
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", p);
    t->dtype = (st_dtype)dt;
    t->ndim = (int)nd;
    memcpy(t->shape, shape, sizeof shape);
    t->nbytes = need;
    t->data = data + b;
    t->file_index = (int)fi;
    sp->begin = b;
    sp->end = en;
    sp->tensor = s->n_tensors - 1;
    return MOERT_OK;
}

/* Validates file fi (already mapped) and appends its tensors to s. */
static int parse_file(st_set *s, size_t fi, moert_err *err)
{
    st_file *f = &s->files[fi];
    const uint8_t *b = f->map;
    const char *p = f->path;
    if (f->len < 8)
        return err_set(err, MOERT_EFORMAT, "%s: file is %zu bytes, shorter than the 8-byte header length",
                       p, f->len);
    uint64_t n = le64(b);
    if (n > ST_HEADER_MAX)
        return err_set(err, MOERT_EFORMAT, "%s: header length %" PRIu64 " (bytes 0-7) exceeds the limit of %u",
                       p, n, ST_HEADER_MAX);
    if (n > f->len - 8)
        return err_set(err, MOERT_EFORMAT,
                       "%s: header length %" PRIu64 " (bytes 0-7) runs past the end of the file: 8 + %" PRIu64
                       " > file size %zu",
                       p, n, n, f->len);
    json_error_t je;
    json_t *root = json_loadb((const char *)b + 8, (size_t)n, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!root)
        return err_set(err, MOERT_EFORMAT,
                       "%s: header is not valid JSON: %s (header line %d, column %d; file byte %lld)", p,
                       je.text, je.line, je.column, 8LL + (long long)je.position);
    int st = MOERT_OK;
    span *spans = NULL;
    if (!json_is_object(root)) {
        st = err_set(err, MOERT_EFORMAT, "%s: header is a JSON %s, expected an object", p, json_kind(root));
        goto out;
    }
    if (b[8] != '{') { /* the reference rejects leading whitespace too */
        st = err_set(err, MOERT_EFORMAT, "%s: header must start with '{' at file byte 8, found 0x%02x", p, b[8]);
        goto out;
    }
    const uint8_t *data = b + 8 + n;
    uint64_t data_size = f->len - 8 - n;
    size_t cap = json_object_size(root), n_spans = 0;
    size_t n_listed = cap - (json_object_get(root, "__metadata__") ? 1 : 0);
    if (n_listed > ST_MAX_TENSORS) {
        st = err_set(err, MOERT_EFORMAT, "%s: header lists %zu tensors, expected at most %u per file", p, n_listed,
                     ST_MAX_TENSORS);
        goto out;
    }
    spans = calloc(cap ? cap : 1, sizeof *spans);
    if (!spans) {
        st = err_set(err, MOERT_ENOMEM, "%s: out of memory", p);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0)
            st = parse_metadata(f, val, err);
        else
            st = parse_entry(s, fi, key, val, data, data_size, &spans[n_spans++], err);
        if (st)
            goto out;
    }
    /* Tensors must tile the data section: sorted by offset, each begins where the previous
     * ended, and the last ends at the section's end (the reference's rule). */
    qsort(spans, n_spans, sizeof *spans, cmp_span);
    uint64_t at = 0;
    for (size_t i = 0; i < n_spans; i++) {
        const span *x = &spans[i];
        const char *nm = s->tensors[x->tensor].name;
        if (x->begin > at) {
            st = err_set(err, MOERT_EFORMAT,
                         "%s: gap in the data section: bytes [%" PRIu64 ", %" PRIu64
                         ") belong to no tensor (next is " NAME_FMT " at [%" PRIu64 ", %" PRIu64 "])",
                         p, at, x->begin, nm, x->begin, x->end);
            goto out;
        }
        if (x->begin < at) {
            st = err_set(err, MOERT_EFORMAT,
                         "%s: tensor " NAME_FMT ": data_offsets [%" PRIu64 ", %" PRIu64
                         "] overlap tensor " NAME_FMT ", which ends at %" PRIu64,
                         p, nm, x->begin, x->end, s->tensors[spans[i - 1].tensor].name, at);
            goto out;
        }
        at = x->end;
    }
    if (at != data_size)
        st = err_set(err, MOERT_EFORMAT,
                     "%s: %" PRIu64 " trailing bytes after the last tensor: tensors end at data byte %" PRIu64
                     " but the data section is %" PRIu64 " bytes",
                     p, data_size - at, at, data_size);
out:
    free(spans);
    json_decref(root);
    return st;
}

/* ---- opening ---------------------------------------------------------------------- */

static int map_file(st_set *s, const char *path, moert_err *err)
{
    int st = add_file(s, path, err);
    if (st)
        return st;
    st_file *f = &s->files[s->n_files - 1];
    void *m;
    size_t len;
    st = afile_map(path, &m, &len, err);
    f->map = m;
    f->len = len;
    return st;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int finish_set(st_set *s, const char *where, moert_err *err)
{
    if (s->n_tensors > 1)
        qsort(s->tensors, s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    err_list pr = {0};
    for (size_t i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i - 1].name, s->tensors[i].name) == 0)
            err_list_add(&pr, "tensor " NAME_FMT " is in both %s and %s", s->tensors[i].name,
                     base_name(s->files[s->tensors[i - 1].file_index].path),
                     base_name(s->files[s->tensors[i].file_index].path));
    return err_list_finish(&pr, err, MOERT_EFORMAT, where);
}

static int open_index(st_set *s, const char *ipath, moert_err *err)
{
    json_error_t je;
    struct stat sb;
    if (stat(ipath, &sb) != 0 || !S_ISREG(sb.st_mode))
        return err_set(err, MOERT_EIO, "%s: not a readable file", ipath);
    if (sb.st_size > (off_t)ST_HEADER_MAX) /* its JSON costs ~20x its size in memory */
        return err_set(err, MOERT_EFORMAT, "%s: %lld bytes, expected an index of at most %u bytes", ipath,
                       (long long)sb.st_size, ST_HEADER_MAX);
    json_t *root = json_load_file(ipath, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set(err, MOERT_EFORMAT, "%s:%d:%d: %s", ipath, je.line, je.column, je.text);
    int st = MOERT_OK;
    const char **shards = NULL;
    size_t n_shards = 0;
    char *dir = NULL;
    const json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(wm)) {
        st = err_set(err, MOERT_EFORMAT, "%s: \"weight_map\" is %s, expected an object of tensor -> shard file",
                     ipath, wm ? json_kind(wm) : "missing");
        goto out;
    }
    if (json_object_size(wm) == 0) {
        st = err_set(err, MOERT_EFORMAT, "%s: \"weight_map\" is empty", ipath);
        goto out;
    }
    shards = calloc(json_object_size(wm), sizeof *shards);
    dir = strdup(ipath);
    if (!shards || !dir) {
        st = err_set(err, MOERT_ENOMEM, "%s: out of memory", ipath);
        goto out;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        slash[slash == dir ? 1 : 0] = '\0';
    else
        strcpy(dir, ".");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)wm, key, val) {
        if (!json_is_string(val)) {
            st = err_set(err, MOERT_EFORMAT, "%s: weight_map[" NAME_FMT "] is a JSON %s, expected a file name",
                         ipath, key, json_kind(val));
            goto out;
        }
        const char *sh = json_string_value(val);
        if (!*sh || strchr(sh, '/')) {
            st = err_set(err, MOERT_EFORMAT,
                         "%s: weight_map[" NAME_FMT "] = '%.100s': expected a file name in the index's directory",
                         ipath, key, sh);
            goto out;
        }
        size_t j = 0;
        while (j < n_shards && strcmp(shards[j], sh) != 0)
            j++;
        if (j == n_shards)
            shards[n_shards++] = sh;
    }
    qsort(shards, n_shards, sizeof *shards, cmp_str);
    for (size_t i = 0; i < n_shards; i++) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, shards[i]) >= sizeof path) {
            st = err_set(err, MOERT_EIO, "%s: shard path too long", ipath);
            goto out;
        }
        st = map_file(s, path, err);
        if (st) {
            err_prefix(err, "%s names shard '%.100s'", ipath, shards[i]);
            goto out;
        }
        if ((st = parse_file(s, s->n_files - 1, err)))
            goto out;
    }
    if ((st = finish_set(s, ipath, err)))
        goto out;
    /* The index and the shards must agree exactly, both ways. */
    err_list pr = {0};
    for (size_t i = 0; i < s->n_tensors; i++) {
        const st_tensor *t = &s->tensors[i];
        const json_t *m = json_object_get(wm, t->name);
        const char *in = base_name(s->files[t->file_index].path);
        if (!m)
            err_list_add(&pr, "shard %s holds tensor " NAME_FMT ", which the index does not list", in, t->name);
        else if (strcmp(json_string_value(m), in) != 0)
            err_list_add(&pr, "index maps tensor " NAME_FMT " to %s but it is in %s", t->name,
                     json_string_value(m), in);
    }
    json_object_foreach((json_t *)wm, key, val) {
        if (!st_find(s, key))
            err_list_add(&pr, "index maps tensor " NAME_FMT " to %s, which does not hold it", key,
                     json_string_value(val));
    }
    st = err_list_finish(&pr, err, MOERT_EFORMAT, ipath);
out:
    free(dir);
    free(shards);
    json_decref(root);
    return st;
}

int st_open(const char *path, st_set **out, moert_err *err)
{
    *out = NULL;
    if (!path || !*path)
        return err_set(err, MOERT_EUSAGE, "safetensors: empty path");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return err_set(err, MOERT_EIO, "%s: %s", path, strerror(errno));
    st_set *s;
    int st = set_new(&s, err);
    if (st)
        return st;
    if (S_ISDIR(sb.st_mode)) {
        char p[4096];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", path);
        if (is_file(p)) {
            st = open_index(s, p, err);
        } else {
            snprintf(p, sizeof p, "%s/model.safetensors", path);
            if (is_file(p)) {
                if (!(st = map_file(s, p, err)) && !(st = parse_file(s, 0, err)))
                    st = finish_set(s, p, err);
            } else {
                st = err_set(err, MOERT_EIO, "%s: no model.safetensors.index.json or model.safetensors in this directory",
                             path);
            }
        }
    } else if (ends_with(path, ".json")) {
        st = open_index(s, path, err);
    } else {
        if (!(st = map_file(s, path, err)) && !(st = parse_file(s, 0, err)))
            st = finish_set(s, path, err);
    }
    if (st) {
        st_close(s);
        return st;
    }
    *out = s;
    return MOERT_OK;
}

int st_open_image(void *image, size_t len, const char *label, st_set **out, moert_err *err)
{
    *out = NULL;
    st_set *s;
    int st = set_new(&s, err);
    if (!st)
        st = add_file(s, label ? label : "(image)", err);
    if (st) {
        if (image)
            munmap(image, len);
        st_close(s);
        return st;
    }
    s->files[0].map = image;
    s->files[0].len = image ? len : 0;
    if ((st = parse_file(s, 0, err)) || (st = finish_set(s, s->files[0].path, err))) {
        st_close(s);
        return st;
    }
    *out = s;
    return MOERT_OK;
}

int st_open_views(const st_view *v, size_t n, const char *label, void (*release)(void *), void *owner,
                  st_set **out, moert_err *err)
{
    *out = NULL;
    st_set *s;
    int st = set_new(&s, err);
    if (st) {
        if (release)
            release(owner);
        return st;
    }
    s->release = release;
    s->owner = owner;
    if ((st = add_file(s, label ? label : "(views)", err)))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        if (v[i].ndim < 1 || v[i].ndim > ST_MAX_DIMS || !v[i].name) {
            st = err_set(err, MOERT_EUSAGE, "%s: view %zu has %d dims", s->files[0].path, i, v[i].ndim);
            goto fail;
        }
        st_tensor *t = add_tensor(s);
        if (!t || !(t->name = strdup(v[i].name))) {
            st = err_set(err, MOERT_ENOMEM, "%s: out of memory", s->files[0].path);
            goto fail;
        }
        t->dtype = v[i].dtype;
        t->ndim = v[i].ndim;
        memcpy(t->shape, v[i].shape, sizeof t->shape);
        t->nbytes = v[i].nbytes;
        t->data = v[i].data;
    }
    qsort(s->tensors, s->n_tensors, sizeof *s->tensors, cmp_tensor_name);
    for (size_t i = 1; i < s->n_tensors; i++)
        if (!strcmp(s->tensors[i - 1].name, s->tensors[i].name)) {
            st = err_set(err, MOERT_EFORMAT, "%s: two tensors map to " NAME_FMT, s->files[0].path,
                         s->tensors[i].name);
            goto fail;
        }
    *out = s;
    return MOERT_OK;
fail:
    st_close(s);
    return st;
}

/* ---- writing ---------------------------------------------------------------------- */

int st_header_encode(const st_write_spec *specs, size_t n_specs, const char *const *meta_keys,
                     const char *const *meta_values, size_t n_meta, void **header, size_t *header_len,
                     uint64_t *data_len, moert_err *err)
{
    *header = NULL;
    *header_len = 0;
    *data_len = 0;
    int st = MOERT_OK;
    char *js = NULL;
    json_t *root = json_object();
    if (!root)
        return err_set(err, MOERT_ENOMEM, "safetensors writer: out of memory");
    if (n_meta) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m)) {
            st = err_set(err, MOERT_ENOMEM, "safetensors writer: out of memory");
            goto out;
        }
        for (size_t i = 0; i < n_meta; i++) {
            json_t *v = meta_keys[i] && meta_values[i] ? json_string(meta_values[i]) : NULL;
            if (!v || json_object_set_new(m, meta_keys[i], v)) {
                st = err_set(err, MOERT_EUSAGE, "safetensors writer: metadata entry %zu is NULL or not UTF-8", i);
                goto out;
            }
        }
    }
    if (n_specs > ST_MAX_TENSORS) { /* a file the reader would refuse */
        st = err_set(err, MOERT_EUSAGE, "safetensors writer: %zu tensors in one file, at most %u", n_specs,
                     ST_MAX_TENSORS);
        goto out;
    }
    uint64_t at = 0;
    for (size_t i = 0; i < n_specs; i++) {
        const st_write_spec *sp = &specs[i];
        if (!sp->name || !strcmp(sp->name, "__metadata__") || json_object_get(root, sp->name)) {
            st = err_set(err, MOERT_EUSAGE, "safetensors writer: tensor %zu: name %s%.160s%s is %s", i,
                         sp->name ? "'" : "", sp->name ? sp->name : "NULL", sp->name ? "'" : "",
                         sp->name && strcmp(sp->name, "__metadata__") ? "a duplicate" : "reserved or missing");
            goto out;
        }
        if ((unsigned)sp->dtype >= ST_DTYPE_COUNT || sp->ndim < 0 || sp->ndim > ST_MAX_DIMS) {
            st = err_set(err, MOERT_EUSAGE, "safetensors writer: tensor " NAME_FMT ": bad dtype %d or ndim %d",
                         sp->name, (int)sp->dtype, sp->ndim);
            goto out;
        }
        uint64_t nb = st_dtype_size(sp->dtype);
        bool ovf = false;
        for (int d = 0; d < sp->ndim; d++) {
            if (sp->shape[d] < 0) {
                st = err_set(err, MOERT_EUSAGE, "safetensors writer: tensor " NAME_FMT ": shape[%d] = %" PRId64,
                             sp->name, d, sp->shape[d]);
                goto out;
            }
            ovf |= __builtin_mul_overflow(nb, (uint64_t)sp->shape[d], &nb);
        }
        uint64_t end;
        ovf |= __builtin_add_overflow(at, nb, &end);
        if (ovf || end > (uint64_t)INT64_MAX) {
            st = err_set(err, MOERT_EUSAGE, "safetensors writer: tensor " NAME_FMT ": sizes overflow", sp->name);
            goto out;
        }
        json_t *shape = json_array();
        bool built = shape != NULL;
        for (int d = 0; built && d < sp->ndim; d++)
            built = json_array_append_new(shape, json_integer(sp->shape[d])) == 0;
        json_t *ent = built ? json_pack("{s:s, s:O, s:[I, I]}", "dtype", st_dtype_name(sp->dtype), "shape",
                                        shape, "data_offsets", (json_int_t)at, (json_int_t)end)
                            : NULL;
        json_decref(shape);
        if (!ent || json_object_set_new(root, sp->name, ent)) {
            st = err_set(err, MOERT_EUSAGE, "safetensors writer: tensor " NAME_FMT ": cannot encode (name not UTF-8?)",
                         sp->name);
            goto out;
        }
        at = end;
    }
    js = json_dumps(root, JSON_COMPACT);
    if (!js) {
        st = err_set(err, MOERT_ENOMEM, "safetensors writer: cannot encode header (tensor name not UTF-8?)");
        goto out;
    }
    size_t jl = strlen(js), padded = (jl + 7) & ~(size_t)7; /* data starts 8-byte aligned */
    if (padded > ST_HEADER_MAX) {
        st = err_set(err, MOERT_EUSAGE, "safetensors writer: a %zu-byte header, at most %u", padded, ST_HEADER_MAX);
        goto out;
    }
    uint8_t *h = malloc(8 + padded);
    if (!h) {
        st = err_set(err, MOERT_ENOMEM, "safetensors writer: out of memory");
        goto out;
    }
    for (int i = 0; i < 8; i++)
        h[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(h + 8, js, jl);
    memset(h + 8 + jl, ' ', padded - jl);
    *header = h;
    *header_len = 8 + padded;
    *data_len = at;
out:
    free(js);
    json_decref(root);
    return st;
}

struct st_writer {
    afile f;
    uint64_t total, written;
};

int st_write_file_atomic(const char *path, const void *data, size_t len, moert_err *err)
{
    return afile_write_whole(path, data, len, err);
}

int st_writer_open(const char *path, const st_write_spec *specs, size_t n_specs,
                   const char *const *meta_keys, const char *const *meta_values, size_t n_meta,
                   st_writer **out, moert_err *err)
{
    *out = NULL;
    void *hdr;
    size_t hlen;
    uint64_t total;
    int st = st_header_encode(specs, n_specs, meta_keys, meta_values, n_meta, &hdr, &hlen, &total, err);
    if (st)
        return err_prefix(err, "%s", path);
    st_writer *w = calloc(1, sizeof *w);
    if (!w) {
        free(hdr);
        return err_set(err, MOERT_ENOMEM, "%s: out of memory", path);
    }
    w->total = total;
    if ((st = afile_open(&w->f, path, err))) {
        free(w);
        free(hdr);
        return st;
    }
    st = afile_write(&w->f, hdr, hlen, err);
    free(hdr);
    if (st) {
        st_writer_abort(w);
        return st;
    }
    *out = w;
    return MOERT_OK;
}

int st_writer_write(st_writer *w, const void *data, size_t len, moert_err *err)
{
    if (!w)
        return err_set(err, MOERT_EUSAGE, "safetensors writer: NULL writer");
    if (len > w->total - w->written)
        return err_set(err, MOERT_EUSAGE,
                       "%s: %zu more bytes would exceed the %" PRIu64 " bytes the header declares (%" PRIu64
                       " written)",
                       w->f.path, len, w->total, w->written);
    int st = afile_write(&w->f, data, len, err);
    if (!st)
        w->written += len;
    return st;
}

int st_writer_finish(st_writer *w, moert_err *err)
{
    if (!w)
        return err_set(err, MOERT_EUSAGE, "safetensors writer: NULL writer");
    if (w->written != w->total) {
        err_set(err, MOERT_EUSAGE, "%s: %" PRIu64 " data bytes written, the header declares %" PRIu64, w->f.path,
                w->written, w->total);
        st_writer_abort(w);
        return MOERT_EUSAGE;
    }
    int st = afile_commit(&w->f, err);
    free(w);
    return st;
}

void st_writer_abort(st_writer *w)
{
    if (!w)
        return;
    afile_abort(&w->f);
    free(w);
}
