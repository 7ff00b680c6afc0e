/* trace_file: a traced run as one safetensors file, readable by numpy/torch with the stock
 * safetensors package, and the reader behind validate / replay / diff.
 *
 * Tensors, for every traced (stage, layer) with n records (oldest first):
 *   "<label>"          F32 [n, width]   the rows (tensor mode only); label = "embed",
 *                                       "l3.moe_ffn_out", "logits", ... exactly as in HF
 *                                       reference files, so a prefill-only (-n 0) tensor
 *                                       trace over all positions has their names and shapes
 *   "<label>.experts"  I32 [n, k]       moe_router only: the expert ids (tensor mode)
 *   "<label>@stats"    F64 [n, 8]       count, l2, mean, std, min, max, nan, inf
 *   "<label>@meta"     I64 [n, 3]       generation step, position, trace_row_hash of the row
 * __metadata__: "format" = "moert-trace", "moert_version", and "manifest": a JSON document
 * with the resolved topology, weights source and fingerprint, backend, threads, sampling,
 * prompt and generated ids, trace plan, contract name/version and per-ring drop counts; the
 * build (version.h), numerics (exact | act-q8), batch_invariant, sim_precision, route_from ({path, fingerprint} or null) and
 * "interrupted" (the session stopped early on a signal).
 * Written atomically (temp file, fsync, rename).
 */
#ifndef MOERT_TRACE_FILE_H
#define MOERT_TRACE_FILE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "../err.h"
#include "../session.h"
#include "../st.h"

typedef struct trace_run_info {
    const int32_t *prompt_ids;
    int64_t n_prompt;
    const int32_t *generated_ids;
    int64_t n_generated;
} trace_run_info;

/* Writes the session's rings and manifest to `path`. */
int trace_file_write(sess *s, const char *path, const trace_run_info *info, moert_err *err);

/* After trace_file_write: the rings that dropped records, as "LABEL (D of W)" joined by
 * ", " into buf (cut to fit); returns how many rings dropped (0: buf is ""). */
size_t trace_file_dropped(sess *s, char *buf, size_t cap);


/* ---- reading ------------------------------------------------------------------------ */

typedef struct trace_ring_view {
    char label[64];
    cfg_stage stage;
    int32_t layer;
    int64_t n;                 /* records */
    int64_t width;
    const float *values;       /* [n, width] or NULL (stats mode) */
    const int32_t *experts;    /* [n, width] or NULL */
    const double *stats;       /* [n, 8] */
    const int64_t *meta;       /* [n, 3] */
    int64_t written, drops;
} trace_ring_view;

typedef struct trace_file {
    st_set *set;
    json_t *manifest;          /* owned */
    trace_ring_view *rings;    /* in schedule order */
    size_t n_rings;
    bool tensor_mode;
    cfg_numerics numerics;     /* the manifest's (absent: exact) */
} trace_file;

/* Opens and checks a trace file's structure: safetensors validity, a well-formed manifest,
 * and for every ring of the manifest (at most one per (stage, layer)) its fields (stage,
 * layer in range for the stage, label = trace_label(stage, layer), width in [1, 2^31),
 * records, written, drops), and its @stats and @meta tensors with the recorded count; the
 * numerics, when present, is one of cfg_numerics_names.
 * Every message names the file, the ring (rings[i]) and the field.
 * A stage tensor whose shape or dtype is not what the ring needs is not an error here:
 * its pointer is left NULL and `validate` reports it from the raw tensors. */
int trace_file_open(const char *path, trace_file *out, moert_err *err);
void trace_file_close(trace_file *t);

/* Topology recorded in a manifest. */
int trace_manifest_topology(const json_t *manifest, cfg_topology *topo, moert_err *err);

/* The recorded run as replay re-runs it: *cfg from the manifest's topology, weights, runtime
 * limits (threads in [1, 1024], 1 <= prefill_chunk <= max_seq_len <= 2^24), backend,
 * sampling (top_k <= vocab_size) and trace plan (known distinct stages, layers inside the
 * topology); prompt (non-empty) and generated ids, each in [0, vocab_size), malloc'd for
 * the caller (NULL on failure).  Every field is checked before it is used; a bad one is
 * MOERT_EFORMAT naming `path` and the field.  Runs nothing. */
int trace_manifest_run(const json_t *manifest, const char *path, cfg_config *cfg, int32_t **prompt,
                       int64_t *n_prompt, int32_t **generated, int64_t *n_generated, moert_err *err);

#endif
