/* hip_attn_prefill: the query-tiled prefill attention (hip/attn_prefill.hip).
 *
 * A block takes a tile of query rows (HIP_AP_ROWS rows = positions x the G = nh / nkv q
 * heads of one kv head) and streams the kv head's keys 0 .. the tile's last position
 * through shared memory once for the whole tile, in tiles of HIP_ATTN_TILE keys; causal
 * masking per row from the chunk's start position (a chunk continues from the KV cache).
 *
 * Numerics: each output element is computed with exactly the operations, in exactly the
 * order, of the row kernel (k_attn<false> in kernels.hip): every score one fmaf chain over
 * d from 0, times the scale; per key tile the running max, p = expf(s - m), the tile's sum
 * as the xor-butterfly tree over the tile's 32 keys, l = fmaf(l, alpha, sum), o = o * alpha
 * then one fmaf chain over the tile's keys, o / l at the end.  So it returns the row
 * kernel's bits, run to run and against it.  No atomics.
 *
 * Where: any device; shapes with hd % 4 == 0, hd <= 256, G <= HIP_AP_ROWS and 16-byte
 * aligned buffers.  MOERT_HIP_ATTN=row keeps every prefill on the row kernel (A/B).
 */
#ifndef MOERT_HIP_ATTN_PREFILL_H
#define MOERT_HIP_ATTN_PREFILL_H

#include "hip_kernels.h"

#define HIP_AP_ROWS 64 /* query rows (position, head) per block item */

/* True when hip_launch_attn_prefill runs this prefill attention on this device. */
bool hip_attn_prefill_takes(const hip_attn_args *a, int rows);
/* Enqueues the prefill attention of `rows` rows (positions sp->pos0 ...); only for a shape
 * hip_attn_prefill_takes accepted. */
hipError_t hip_launch_attn_prefill(const hip_attn_args *a, int rows, hipStream_t s);

#endif
