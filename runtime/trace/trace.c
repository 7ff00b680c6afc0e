/* trace: ring capture (see trace.h).  The file side lives in trace_file.c. */
#include "trace.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The structs are the C view of record.h's layout (checked here, not in trace.h: C++ reads
 * that header too). */
_Static_assert(sizeof(trace_ring_header) == TRACE_RING_HEADER, "ring header size");
_Static_assert(offsetof(trace_ring_header, written) == 8 * TRACE_HDR_WRITTEN &&
                   offsetof(trace_ring_header, stored) == 8 * TRACE_HDR_STORED &&
                   offsetof(trace_ring_header, drops) == 8 * TRACE_HDR_DROPS &&
                   offsetof(trace_ring_header, next) == 8 * TRACE_HDR_NEXT,
               "ring header words");
_Static_assert(offsetof(trace_record, step) == TRACE_REC_STEP_OFF &&
                   offsetof(trace_record, pos) == TRACE_REC_POS_OFF &&
                   offsetof(trace_record, hash) == TRACE_REC_HASH_OFF &&
                   offsetof(trace_record, pad) == TRACE_REC_PAD_OFF &&
                   offsetof(trace_record, stats) == TRACE_REC_STATS_OFF &&
                   sizeof(trace_record) == TRACE_REC_VALUES_OFF,
               "record layout");

struct trace_rt {
    cfg_trace_plan plan;
    trace_slot_info *slots;
    size_t n_slots, cap_slots;
    int64_t gen_step;
    bool holds_last;
    int64_t offered, last_offered; /* records offered to each ring, and by the last step */
};

static uint64_t record_bytes(const cfg_trace_plan *plan, cfg_stage stage, int64_t width)
{
    uint64_t b = sizeof(trace_record);
    if (plan->mode == CFG_TRACE_TENSOR || stage == CFG_STAGE_MOE_ROUTER) {
        b += (uint64_t)width * sizeof(float);
        if (stage == CFG_STAGE_MOE_ROUTER)
            b += (uint64_t)width * sizeof(int32_t);
    }
    return (b + TRACE_REC_ALIGN - 1) / TRACE_REC_ALIGN * TRACE_REC_ALIGN;
}

int trace_rt_create(const cfg_trace_plan *plan, trace_rt **out, moert_err *err)
{
    trace_rt *t = calloc(1, sizeof *t);
    if (!t)
        return err_set(err, MOERT_ENOMEM, "trace: out of memory");
    t->plan = *plan;
    *out = t;
    return MOERT_OK;
}

void trace_rt_free(trace_rt *t)
{
    if (!t)
        return;
    free(t->slots);
    free(t);
}

static uint64_t hook_ring_bytes(void *ctx, cfg_stage stage, int32_t layer, int64_t width)
{
    trace_rt *t = ctx;
    (void)layer;
    uint64_t b;
    /* saturated: a wrapped size would plan a ring smaller than capture writes (the
     * schedule refuses a buffer this large) */
    if (t->plan.capacity < 0 || __builtin_mul_overflow((uint64_t)t->plan.capacity, record_bytes(&t->plan, stage, width), &b) ||
        __builtin_add_overflow(b, (uint64_t)TRACE_RING_HEADER, &b))
        return UINT64_MAX;
    return b;
}

sched_trace_hooks trace_rt_hooks(trace_rt *t, const cfg_trace_plan *plan)
{
    sched_trace_hooks h = {.plan = plan, .ring_bytes = hook_ring_bytes, .ctx = t};
    return h;
}

int trace_rt_bind(trace_rt *t, const sched *s, moert_err *err)
{
    t->n_slots = 0;
    for (int32_t i = 0; i < s->n_ops; i++) {
        const sched_op *op = &s->ops[i];
        if (op->kind != SCHED_TRACE)
            continue;
        if (t->n_slots == t->cap_slots) {
            size_t nc = t->cap_slots ? t->cap_slots * 2 : 64;
            trace_slot_info *p = realloc(t->slots, nc * sizeof *p);
            if (!p)
                return err_set(err, MOERT_ENOMEM, "trace: out of memory");
            t->slots = p;
            t->cap_slots = nc;
        }
        if ((size_t)op->trace_index != t->n_slots)
            return err_set(err, MOERT_EINTERNAL, "trace: TRACE ops out of order");
        trace_slot_info *si = &t->slots[t->n_slots++];
        si->stage = (cfg_stage)op->stage;
        si->layer = op->layer;
        si->width = op->n;
        si->has_ids = op->stage == CFG_STAGE_MOE_ROUTER;
        si->keeps_row = t->plan.mode == CFG_TRACE_TENSOR || si->has_ids;
        si->record_bytes = record_bytes(&t->plan, si->stage, op->n);
        si->ring_buf = op->out[0];
    }
    return MOERT_OK;
}

size_t trace_rt_count(const trace_rt *t)
{
    return t->n_slots;
}

const trace_slot_info *trace_rt_slot(const trace_rt *t, size_t i)
{
    return &t->slots[i];
}

const cfg_trace_plan *trace_rt_plan(const trace_rt *t)
{
    return &t->plan;
}

void trace_rt_set_step(trace_rt *t, int64_t gen_step, bool holds_last_prompt_pos)
{
    t->gen_step = gen_step;
    t->holds_last = holds_last_prompt_pos;
}

int64_t trace_rt_gen_step(const trace_rt *t)
{
    return t->gen_step;
}

void trace_rt_rows(const trace_rt *t, const exec_step *st, int64_t *row0, int64_t *row1)
{
    *row1 = st->n_rows;
    if (t->plan.positions == CFG_TRACE_ALL)
        *row0 = 0;
    else if (st->decode || t->holds_last)
        *row0 = st->n_rows - 1;
    else
        *row0 = st->n_rows; /* a prefill chunk before the last: nothing */
}

void trace_rt_step_done(trace_rt *t, const exec_step *st)
{
    int64_t r0 = 0, r1 = 0;
    trace_rt_rows(t, st, &r0, &r1);
    t->last_offered = r1 > r0 ? r1 - r0 : 0;
    t->offered += t->last_offered;
}

void trace_rt_take_back_step(trace_rt *t)
{
    t->offered -= t->last_offered;
    t->last_offered = 0;
}

bool trace_rt_room(const trace_rt *t, int64_t records)
{
    return t->plan.on_full == CFG_TRACE_STOP || (records >= 0 && t->offered + records <= t->plan.capacity);
}

void trace_label(char *buf, size_t cap, cfg_stage stage, int32_t layer)
{
    if (layer >= 0)
        snprintf(buf, cap, "l%d.%s", layer, cfg_stage_name(stage));
    else
        snprintf(buf, cap, "%s", cfg_stage_name(stage));
}

void trace_row_stats(const float *row, int64_t n, double stats[TRACE_N_STATS])
{
    double sum = 0, sumsq = 0, mn = INFINITY, mx = -INFINITY;
    int64_t nan = 0, inf = 0, finite = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = row[i];
        if (isnan(v)) {
            nan++;
        } else if (isinf(v)) {
            inf++;
        } else {
            double d = v;
            finite++;
            sum += d;
            sumsq += d * d;
            mn = d < mn ? d : mn;
            mx = d > mx ? d : mx;
        }
    }
    double mean = finite ? sum / (double)finite : NAN, var = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(row[i])) {
            double d = (double)row[i] - mean;
            var += d * d;
        }
    stats[TRACE_STAT_COUNT] = (double)n;
    stats[TRACE_STAT_L2] = sqrt(sumsq);
    stats[TRACE_STAT_MEAN] = mean;
    stats[TRACE_STAT_STD] = finite ? sqrt(var / (double)finite) : NAN;
    stats[TRACE_STAT_MIN] = finite ? mn : NAN;
    stats[TRACE_STAT_MAX] = finite ? mx : NAN;
    stats[TRACE_STAT_NAN] = (double)nan;
    stats[TRACE_STAT_INF] = (double)inf;
}

/* The splitmix64 finaliser: a bijective 64-bit mix. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Sum over 32-bit words of mix64(index << 32 | word), finalised with the word count.
 * Integer addition is associative, so a GPU can compute the same hash with a parallel
 * reduction in any order; any change to any word changes its term. */
uint64_t trace_row_hash(const void *row, uint64_t bytes, const void *row2, uint64_t bytes2)
{
    uint64_t h = 0, n = bytes / 4, n2 = row2 ? bytes2 / 4 : 0;
    const uint32_t *w = row, *w2 = row2;
    for (uint64_t i = 0; i < n; i++)
        h += mix64((i << 32) | w[i]);
    for (uint64_t i = 0; i < n2; i++)
        h += mix64(((n + i) << 32) | w2[i]);
    return mix64(h ^ (n + n2));
}

int trace_capture_host(trace_rt *t, const sched_op *op, const exec_step *st, const void *src,
                       const void *src2, void *ring, moert_err *err)
{
    if (!t || op->trace_index < 0 || (size_t)op->trace_index >= t->n_slots)
        return err_set(err, MOERT_EINTERNAL, "trace: capture without a bound trace context");
    const trace_slot_info *si = &t->slots[op->trace_index];
    trace_ring_header *hdr = ring;
    uint8_t *slots = (uint8_t *)ring + TRACE_RING_HEADER;
    uint64_t cap = (uint64_t)t->plan.capacity;
    int64_t row0, row1;
    trace_rt_rows(t, st, &row0, &row1);
    /* The logits buffer holds only the last row unless every position is traced. */
    int64_t src_shift = (si->stage == CFG_STAGE_LOGITS && t->plan.positions == CFG_TRACE_LAST)
                            ? st->n_rows - 1
                            : 0;
    for (int64_t r = row0; r < row1; r++) {
        const float *row = (const float *)src + (r - src_shift) * si->width;
        const int32_t *ids = si->has_ids ? (const int32_t *)src2 + (r - src_shift) * si->width : NULL;
        hdr->written++;
        uint64_t slot;
        if (hdr->stored < cap) {
            slot = hdr->next;
            hdr->stored++;
        } else if (t->plan.on_full == CFG_TRACE_OVERWRITE) {
            slot = hdr->next;
            hdr->drops++;
        } else {
            hdr->drops++;
            continue;
        }
        hdr->next = (slot + 1) % cap;
        trace_record *rec = (trace_record *)(slots + slot * si->record_bytes);
        rec->step = t->gen_step;
        rec->pos = st->pos0 + r;
        rec->pad = 0;
        uint64_t vb = (uint64_t)si->width * sizeof(float);
        rec->hash = trace_row_hash(row, vb, ids, ids ? vb : 0);
        trace_row_stats(row, si->width, rec->stats);
        if (si->keeps_row) {
            memcpy(rec + 1, row, vb);
            if (ids)
                memcpy((uint8_t *)(rec + 1) + vb, ids, vb);
        }
    }
    return MOERT_OK;
}
