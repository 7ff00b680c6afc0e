/* trace: capture of chosen stages into fixed rings planned inside the arena, and the trace
 * file (safetensors + manifest) those rings become.
 *
 * Plan -> rings.  Every traced (stage, layer) pair owns one ring buffer in the arena
 * (persistent, sized at init: TRACE_RING_HEADER + capacity * record bytes).  A record is
 * one position of one stage: where it came from (generation step, position), a 64-bit
 * hash of the row's raw bytes (so bit-exactness is proven even when only stats are kept;
 * trace_row_hash is order-free, so a GPU computes the same value), ActivationStats, and in
 * tensor mode the row itself.  Capture writes into the next slot
 * only: no allocation, ever.  When a ring is full it overwrites the oldest record
 * (counting drops) or stops recording (counting drops), as the plan says.
 *
 * Which rows are captured never depends on prefill chunking: `all` captures every
 * position; `last` captures the last prompt position and every generated position.  The
 * record's `step` is the generation step (0 = the prompt, s = the s-th generated token).
 */
#ifndef MOERT_TRACE_H
#define MOERT_TRACE_H

#include <stdbool.h>
#include <stdint.h>

#include "../backend.h"
#include "../config.h"
#include "../err.h"
#include "../sched.h"
#include "record.h"


/* Ring header at the start of every ring buffer. */
typedef struct trace_ring_header {
    uint64_t written;   /* records offered to the ring */
    uint64_t stored;    /* records held (<= capacity) */
    uint64_t drops;     /* records lost: overwritten (overwrite) or refused (stop) */
    uint64_t next;      /* slot the next record goes to */
    uint64_t pad[4];
} trace_ring_header;

/* Fixed part of each record; the row's values (f32) and, for moe_router, the expert ids
 * (i32) follow in tensor mode, and for moe_router in stats mode too. */
typedef struct trace_record {
    int64_t step;
    int64_t pos;
    uint64_t hash;
    int64_t pad;
    double stats[TRACE_N_STATS];
} trace_record;

typedef struct trace_rt trace_rt;

/* One traced (stage, layer) pair, in schedule order. */
typedef struct trace_slot_info {
    cfg_stage stage;
    int32_t layer;
    int64_t width;           /* elements per row */
    bool has_ids;            /* moe_router: an i32 companion row */
    bool keeps_row;          /* records hold the row itself: tensor mode, and moe_router's
                                ids and weights in every mode (small; routing replay reads them) */
    uint64_t record_bytes;
    int32_t ring_buf;        /* schedule buffer id of its ring */
} trace_slot_info;

/* Creates the capture context for a plan (plan->enabled must be true). */
int trace_rt_create(const cfg_trace_plan *plan, trace_rt **out, moert_err *err);
void trace_rt_free(trace_rt *t);

/* The schedule hooks that add one ring per traced pair (sched_build calls them). */
sched_trace_hooks trace_rt_hooks(trace_rt *t, const cfg_trace_plan *plan);

/* After sched_build: learns ring buffer ids and widths from the schedule's TRACE ops. */
int trace_rt_bind(trace_rt *t, const sched *s, moert_err *err);

size_t trace_rt_count(const trace_rt *t);
const trace_slot_info *trace_rt_slot(const trace_rt *t, size_t i);
const cfg_trace_plan *trace_rt_plan(const trace_rt *t);

/* Tells capture which rows of the coming step to keep: the step's generation index and
 * whether it holds the last prompt position. */
void trace_rt_set_step(trace_rt *t, int64_t gen_step, bool holds_last_prompt_pos);

/* The generation step set by trace_rt_set_step (what a record's `step` gets): device
 * backends copy it into their per-step parameters. */
int64_t trace_rt_gen_step(const trace_rt *t);

/* Which rows [row0, row1) of a step a TRACE op captures ("last"/"all" rule above). */
void trace_rt_rows(const trace_rt *t, const exec_step *st, int64_t *row0, int64_t *row1);

/* Counting the records offered to every ring (the same number to each: trace_rt_rows):
 * step_done after a step ran, take_back_step when the last one is taken back (a fed step
 * begun ahead), and room: whether `records` more can be offered without overwriting a
 * stored one (always, when a full ring drops records instead). */
void trace_rt_step_done(trace_rt *t, const exec_step *st);
void trace_rt_take_back_step(trace_rt *t);
bool trace_rt_room(const trace_rt *t, int64_t records);

/* Host capture (CPU backend): rows of src (and src2 ids) into the ring at `ring`. */
int trace_capture_host(trace_rt *t, const sched_op *op, const exec_step *st, const void *src,
                       const void *src2, void *ring, moert_err *err);

/* The label of a (stage, layer), as HF reference files name stages: "l3.moe_ffn_out",
 * "embed". */
void trace_label(char *buf, size_t cap, cfg_stage stage, int32_t layer);

/* Stats and hash of one row (used by capture, and by tests as the reference). */
void trace_row_stats(const float *row, int64_t n, double stats[TRACE_N_STATS]);
uint64_t trace_row_hash(const void *row, uint64_t bytes, const void *row2, uint64_t bytes2);

#endif
