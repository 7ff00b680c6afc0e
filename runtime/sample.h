/* sample: choosing the next token from a row of logits.  Greedy (argmax, lowest id among
 * ties) or temperature / top-k / top-p from a generator the project owns (xoshiro256**
 * seeded by SplitMix64): the same seed and logits give the same tokens on every machine.
 * Uses only caller-provided scratch (arena buffers): no allocation.
 */
#ifndef MOERT_SAMPLE_H
#define MOERT_SAMPLE_H

#include <stdint.h>

#include "config.h"

typedef struct sample_rng {
    uint64_t s[4];
} sample_rng;

void sample_seed(sample_rng *r, uint64_t seed);
uint64_t sample_next_u64(sample_rng *r);
double sample_uniform(sample_rng *r); /* [0, 1), 53 random bits */

/* Scratch for sample_token: four arrays of n_vocab 32-bit entries and one of floats. */
typedef struct sample_scratch {
    uint32_t *keys, *keys2;
    int32_t *ids, *ids2;
    float *probs;
} sample_scratch;

/* The next token.  temperature <= 0: argmax.  Otherwise the logits divided by the
 * temperature are sorted (descending, ties by ascending id); the top_k best are kept
 * (0 = all); softmax over them (in double); the smallest prefix whose probability reaches
 * top_p is kept (1 = all); one uniform draw picks within it. */
int32_t sample_token(const float *logits, int64_t n_vocab, const cfg_sampling *sp, sample_rng *rng,
                     const sample_scratch *scratch);

#endif
