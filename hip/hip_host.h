/* hip_host: host-only helpers of the HIP backend, compiled by gcc with OpenMP (the .hip
 * files are compiled by hipcc/nvcc, whose host compilers may lack OpenMP). */
#ifndef MOERT_HIP_HOST_H
#define MOERT_HIP_HOST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* memcpy of n bytes split over the OpenMP threads (pinned staging of weight uploads). */
void hip_host_memcpy(void *dst, const void *src, size_t n);

/* The X4 device layouts (hip_kernels.h): `groups` groups of four blocks of block_bytes each
 * at src rewritten at dst (no overlap) as, per group, the four 2-byte scales found at d_off of
 * each block, then each block's other bytes in order.  Split over the OpenMP threads. */
void hip_host_x4_pack(unsigned char *dst, const unsigned char *src, size_t groups, int block_bytes, int d_off);

/* The upload progress bar on stderr: "uploading weights [#####     ] 45% 7.2/16.0 GB".
 * Redrawn in place (only when the whole percent changes) when stderr is a terminal; else
 * one line when done.  Silent for uploads under 256 MiB (tests, tiny models). */
void hip_host_progress(uint64_t done, uint64_t total, double seconds);

#ifdef __cplusplus
}
#endif

#endif
