/* yamldoc: the small layer over libyaml's document API that cfg and ctr share.
 *
 * It loads exactly one YAML document (syntax errors carry libyaml's problem and mark),
 * keeps every node's start mark so that every message can say `name:line:col` (1-based),
 * and offers strict typed readers: a mapping is checked for non-scalar, duplicate and
 * unknown keys; an integer is a plain decimal scalar that fits int64 (never a float, a
 * bool or a quoted string); a float is a plain decimal scalar (no .nan/.inf); a bool is
 * true/false.  Every failure fills a moert_err of the form
 *   "name:line:col: <what was wrong>, expected <what>"
 * with code MOERT_ECONFIG (MOERT_ENOMEM / MOERT_EIO where that is what happened).
 */
#ifndef MOERT_YAMLDOC_H
#define MOERT_YAMLDOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <yaml.h>

#include "err.h"

typedef struct yamldoc {
    yaml_document_t doc;
    bool loaded;
    char name[1024]; /* file name (or caller's label) used in messages */
} yamldoc;

/* Largest YAML text yamldoc_load_file accepts; configs are tiny. */
#define YAMLDOC_MAX_BYTES (1u << 20)

/* Deepest nesting of lists and mappings (block or flow) a document may have; the shipped
 * schemas need 4.  Checked before the document is built. */
#define YAMLDOC_MAX_DEPTH 64

/* Parses `len` bytes of `text` as one YAML document.  An empty stream loads a document
 * whose root is NULL; more than one document is an error, and so is nesting deeper than
 * YAMLDOC_MAX_DEPTH ("name:line:col" of the first collection too deep).  On failure
 * nothing is held. */
int yamldoc_load_string(yamldoc *d, const char *text, size_t len, const char *name,
                        moert_err *err);

/* Reads a whole file (at most YAMLDOC_MAX_BYTES) and parses it as above; `name` = path. */
int yamldoc_load_file(yamldoc *d, const char *path, moert_err *err);

/* Releases the document (safe on a zeroed or already-freed yamldoc). */
void yamldoc_free(yamldoc *d);

/* The root node, or NULL for an empty document. */
yaml_node_t *yamldoc_root(yamldoc *d);

/* 1-based line and column of a node's first character. */
int yamldoc_line(const yaml_node_t *n);
int yamldoc_col(const yaml_node_t *n);

/* Sets err to "name:line:col: <formatted>" at node n (or "name: <formatted>" when n is
 * NULL); returns code. */
int yamldoc_errf(const yamldoc *d, const yaml_node_t *n, moert_err *err, int code,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Node kinds. */
bool yamldoc_is_map(const yaml_node_t *n);
bool yamldoc_is_seq(const yaml_node_t *n);
bool yamldoc_is_scalar(const yaml_node_t *n);
/* A plain `~`, `null`, `Null`, `NULL` or empty scalar. */
bool yamldoc_is_null(const yaml_node_t *n);
/* The scalar's text (NUL-terminated by libyaml), or NULL for non-scalars. */
const char *yamldoc_text(const yaml_node_t *n);

/* Short human description of what n is, for "got ..." messages: `the string "abc"`,
 * `12.5`, `true`, `a mapping`, `a list`, `null`.  Writes into buf, returns buf. */
const char *yamldoc_describe(const yaml_node_t *n, char *buf, size_t cap);

/* Checks that `map` is a mapping whose keys are plain scalars, each present once and each
 * one of `allowed` (a NULL-terminated list).  `what` names the mapping in messages
 * ("model", "trace", "the document").  Errors point at the offending key. */
int yamldoc_check_map(yamldoc *d, yaml_node_t *map, const char *what,
                      const char *const *allowed, moert_err *err);

/* The value (or the key node) stored under `key` in mapping `map`; NULL when absent or
 * when `map` is not a mapping. */
yaml_node_t *yamldoc_get(yamldoc *d, yaml_node_t *map, const char *key);
yaml_node_t *yamldoc_get_key(yamldoc *d, yaml_node_t *map, const char *key);

/* Number of items of a sequence and the i-th item (NULL when out of range). */
int yamldoc_seq_len(const yaml_node_t *seq);
yaml_node_t *yamldoc_seq_item(yamldoc *d, yaml_node_t *seq, int i);

/* Number of pairs of a mapping and the i-th key / value. */
int yamldoc_map_len(const yaml_node_t *map);
yaml_node_t *yamldoc_map_key(yamldoc *d, yaml_node_t *map, int i);
yaml_node_t *yamldoc_map_value(yamldoc *d, yaml_node_t *map, int i);

/* Typed readers.  `what` names the value in messages ("model.hidden_size"). */
int yamldoc_int(const yamldoc *d, const yaml_node_t *n, const char *what, int64_t *out,
                moert_err *err);
/* A non-negative integer up to UINT64_MAX (seeds). */
int yamldoc_u64(const yamldoc *d, const yaml_node_t *n, const char *what, uint64_t *out,
                moert_err *err);
/* A finite decimal number; integers are accepted. */
int yamldoc_double(const yamldoc *d, const yaml_node_t *n, const char *what, double *out,
                   moert_err *err);
int yamldoc_bool(const yamldoc *d, const yaml_node_t *n, const char *what, bool *out,
                 moert_err *err);
/* Any non-null scalar's text, copied into buf; too long for cap is an error. */
int yamldoc_str(const yamldoc *d, const yaml_node_t *n, const char *what, char *buf,
                size_t cap, moert_err *err);

#endif
