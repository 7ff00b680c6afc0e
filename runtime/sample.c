/* sample: next-token choice (see sample.h). */
#include "sample.h"

#include <math.h>
#include <string.h>

#include "../ops/ops.h"

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sample_seed(sample_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sample_next_u64(sample_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double sample_uniform(sample_rng *r)
{
    return (double)(sample_next_u64(r) >> 11) * 0x1.0p-53;
}

/* Stable LSD radix sort of (key, id) pairs by key ascending, 4 passes of 8 bits; an even
 * number of passes leaves the result in the original arrays. */
static void radix_sort(uint32_t *keys, int32_t *ids, uint32_t *keys2, int32_t *ids2, int64_t n)
{
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++)
            count[((keys[i] >> shift) & 0xff) + 1]++;
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (int64_t i = 0; i < n; i++) {
            int64_t p = count[(keys[i] >> shift) & 0xff]++;
            keys2[p] = keys[i];
            ids2[p] = ids[i];
        }
        uint32_t *tk = keys;
        keys = keys2;
        keys2 = tk;
        int32_t *ti = ids;
        ids = ids2;
        ids2 = ti;
    }
}

int32_t sample_token(const float *logits, int64_t n_vocab, const cfg_sampling *sp, sample_rng *rng,
                     const sample_scratch *scr)
{
    if (sp->temperature <= 0.0)
        return (int32_t)ops_argmax(logits, n_vocab);
    float inv_t = (float)(1.0 / sp->temperature);
    for (int64_t i = 0; i < n_vocab; i++) {
        float z = logits[i] * inv_t;
        uint32_t u;
        memcpy(&u, &z, sizeof u);
        u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* order-preserving map to uint */
        scr->keys[i] = ~u;                               /* descending value */
        scr->ids[i] = (int32_t)i;
    }
    radix_sort(scr->keys, scr->ids, scr->keys2, scr->ids2, n_vocab); /* stable: ties by id */
    const int32_t *ids = scr->ids;
    int64_t n = sp->top_k > 0 && sp->top_k < n_vocab ? sp->top_k : n_vocab;
    double zmax = (double)(logits[ids[0]] * inv_t), total = 0;
    for (int64_t i = 0; i < n; i++) {
        double p = exp((double)(logits[ids[i]] * inv_t) - zmax);
        scr->probs[i] = (float)p;
        total += (double)scr->probs[i];
    }
    if (sp->top_p < 1.0) {
        double cum = 0;
        int64_t m = 0;
        while (m < n) {
            cum += (double)scr->probs[m++];
            if (cum >= sp->top_p * total)
                break;
        }
        n = m;
        total = cum;
    }
    double u = sample_uniform(rng) * total, cum = 0;
    for (int64_t i = 0; i < n; i++) {
        cum += (double)scr->probs[i];
        if (u < cum)
            return ids[i];
    }
    return ids[n - 1];
}
