/* record: the byte layout of a trace ring and its records, the one definition that CPU
 * capture (trace.c), HIP capture (hip/kernels.hip), the HIP self-check (backend_hip.hip)
 * and every reader share.  Dependency-free: plain integer constants, usable from C and
 * from device code.
 *
 * A ring is TRACE_RING_HEADER bytes of header (u64 words at TRACE_HDR_*), then `capacity`
 * records of record_bytes each (a multiple of 16).  A record is:
 *   i64 step, i64 position, u64 hash, i64 pad      (TRACE_REC_*_OFF)
 *   f64 stats[TRACE_N_STATS]                       (TRACE_REC_STATS_OFF, TRACE_STAT_* order)
 *   tensor mode only: f32 values[width], then for moe_router i32 expert ids[width]
 *                                                  (TRACE_REC_VALUES_OFF)
 * In a trace file the stats become "<label>@stats" F64 [n, TRACE_N_STATS] and step,
 * position and hash become "<label>@meta" I64 [n, TRACE_META_COLS] (TRACE_META_*). */
#ifndef MOERT_TRACE_RECORD_H
#define MOERT_TRACE_RECORD_H

/* ActivationStats, in this order in records and files (F64). */
enum {
    TRACE_STAT_COUNT = 0, TRACE_STAT_L2, TRACE_STAT_MEAN, TRACE_STAT_STD, TRACE_STAT_MIN,
    TRACE_STAT_MAX, TRACE_STAT_NAN, TRACE_STAT_INF, TRACE_N_STATS
};

/* Ring header words (u64). */
enum { TRACE_HDR_WRITTEN = 0, TRACE_HDR_STORED, TRACE_HDR_DROPS, TRACE_HDR_NEXT, TRACE_HDR_WORDS };

#define TRACE_RING_HEADER 64u

/* Record byte offsets. */
#define TRACE_REC_STEP_OFF 0u
#define TRACE_REC_POS_OFF 8u
#define TRACE_REC_HASH_OFF 16u
#define TRACE_REC_PAD_OFF 24u
#define TRACE_REC_STATS_OFF 32u
#define TRACE_REC_VALUES_OFF (TRACE_REC_STATS_OFF + 8u * TRACE_N_STATS) /* 96 */
/* The bytes a record's identity (step, position, hash) occupies. */
#define TRACE_REC_ID_BYTES 24u
#define TRACE_REC_ALIGN 16u

/* Columns of a file's @meta rows. */
enum { TRACE_META_STEP = 0, TRACE_META_POS, TRACE_META_HASH, TRACE_META_COLS };

#endif
