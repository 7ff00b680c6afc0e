/* synth: seeded random Qwen3-MoE checkpoints for any topology, so that real-size models can
 * be run and benchmarked without a download, and so the embedded default model needs no
 * file.  The same (topology, seed, dtype) always gives the same bytes, on every machine:
 * values come from a counter-based generator keyed by (seed, tensor name, element index),
 * not from libc rand or a thread-order-dependent stream.
 *
 * Values: linear weights uniform in +-sqrt(3) * 0.02 (std 0.02, HF's initializer_range);
 * RMSNorm weights 1 + uniform(+-0.1) so that norms are not trivially 1.
 */
#ifndef MOERT_SYNTH_H
#define MOERT_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "st.h"

/* Writes a HF-layout checkpoint into `out_dir` (created if missing): config.json (hub
 * spelling), model-0000K-of-0000N.safetensors shards of at most `shard_bytes` each (0 = 2
 * GiB), and model.safetensors.index.json.  Every file is written atomically. */
int synth_write_dir(const cfg_topology *topo, uint64_t seed, st_dtype dtype,
                    uint64_t shard_bytes, const char *out_dir, moert_err *err);

/* Builds the same tensors as one safetensors image in anonymous memory and opens it as an
 * st_set (the set owns the memory). */
int synth_open_image(const cfg_topology *topo, uint64_t seed, st_dtype dtype, st_set **out,
                     moert_err *err);

#endif
