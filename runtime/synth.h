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
 * GiB), and model.safetensors.index.json.  Every file is written atomically; config.json
 * comes last, so a directory with one is complete.
 *
 * dtype must be ST_F32, ST_BF16 or ST_F16 (others: MOERT_EUSAGE).  Tensors are the ones
 * model_expected_tensors lists, in its (name) order; a shard is closed before it would
 * exceed shard_bytes of tensor data (a tensor larger than that gets a shard of its own).
 * Each file carries __metadata__ {"format": "pt", "moert_synth": "seed=S dtype=D"}.
 * Generation runs in parallel (OpenMP) in bounded chunks; its bytes never depend on the
 * thread count. */
int synth_write_dir(const cfg_topology *topo, uint64_t seed, st_dtype dtype,
                    uint64_t shard_bytes, const char *out_dir, moert_err *err);

/* Builds the same tensors as one safetensors image in anonymous memory and opens it as an
 * st_set (the set owns the memory). */
int synth_open_image(const cfg_topology *topo, uint64_t seed, st_dtype dtype, st_set **out,
                     moert_err *err);

/* Round-to-nearest-even float conversions used for the weights (portable bit
 * arithmetic, no F16C needed).  Overflow rounds to Inf; NaN stays a (quiet) NaN. */
uint16_t synth_f32_to_bf16(float f);
uint16_t synth_f32_to_f16(float f);

#endif
