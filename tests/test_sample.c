/* sample: the sampler against hand-computed expectations and an independent reference of
 * its generator (SplitMix64 -> xoshiro256**, computed in Python from the published
 * algorithms). */
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdlib.h>

#include "../runtime/sample.h"

#define V 5
static uint32_t k1[V], k2[V];
static int32_t i1[V], i2[V];
static float pr[V];
static const sample_scratch scratch = {k1, k2, i1, i2, pr};

static void test_rng_reference(void)
{
    sample_rng r;
    sample_seed(&r, 42);
    CU_ASSERT_EQUAL(sample_next_u64(&r), 0x15780b2e0c2ec716ull);
    CU_ASSERT_EQUAL(sample_next_u64(&r), 0x6104d9866d113a7eull);
    CU_ASSERT_EQUAL(sample_next_u64(&r), 0xae17533239e499a1ull);
    for (int i = 0; i < 1000; i++) {
        double u = sample_uniform(&r);
        CU_ASSERT(u >= 0.0 && u < 1.0);
    }
}

static void test_greedy(void)
{
    float logits[V] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
    cfg_sampling sp = {0.0, 0, 1.0, 0};
    sample_rng r;
    sample_seed(&r, 1);
    CU_ASSERT_EQUAL(sample_token(logits, V, &sp, &r, &scratch), 1); /* tie: the lower id */
    sp.temperature = 0.9;
    sp.top_k = 1; /* top-1 at any temperature is greedy */
    for (int i = 0; i < 50; i++)
        CU_ASSERT_EQUAL(sample_token(logits, V, &sp, &r, &scratch), 1);
}

/* Frequencies over 40000 draws from a fixed seed: deterministic, checked against the exact
 * distribution with a tolerance of 5 standard deviations. */
static void frequencies(const float *logits, const cfg_sampling *sp, uint64_t seed, double *f)
{
    sample_rng r;
    sample_seed(&r, seed);
    int n = 40000, c[V] = {0};
    for (int i = 0; i < n; i++) {
        int32_t t = sample_token(logits, V, sp, &r, &scratch);
        CU_ASSERT_FATAL(t >= 0 && t < V);
        c[t]++;
    }
    for (int i = 0; i < V; i++)
        f[i] = c[i] / (double)n;
}

static void expect(const double *f, const double *p)
{
    for (int i = 0; i < V; i++) {
        double sd = sqrt(p[i] * (1 - p[i]) / 40000.0);
        CU_ASSERT(fabs(f[i] - p[i]) <= 5 * sd + 1e-12);
    }
}

static void test_distributions(void)
{
    /* probabilities 0.5, 0.3, 0.15, 0.05, 0 (a very low logit) at temperature 1 */
    float logits[V] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f), -1e30f};
    double f[V];
    cfg_sampling sp = {1.0, 0, 1.0, 0};
    frequencies(logits, &sp, 7, f);
    expect(f, (double[]){0.5, 0.3, 0.15, 0.05, 0});
    /* top_p 0.7: 0.5 < 0.7 <= 0.8, so {0, 1} renormalised: 0.625, 0.375 */
    sp.top_p = 0.7;
    frequencies(logits, &sp, 8, f);
    expect(f, (double[]){0.625, 0.375, 0, 0, 0});
    /* top_k 3: 0.5, 0.3, 0.15 renormalised by 0.95 */
    sp.top_p = 1.0;
    sp.top_k = 3;
    frequencies(logits, &sp, 9, f);
    expect(f, (double[]){0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0, 0});
    /* temperature 2: p ~ sqrt(p): 0.7071, 0.5477, 0.3873, 0.2236 normalised */
    sp.top_k = 0;
    sp.temperature = 2.0;
    frequencies(logits, &sp, 10, f);
    double z = sqrt(0.5) + sqrt(0.3) + sqrt(0.15) + sqrt(0.05);
    expect(f, (double[]){sqrt(0.5) / z, sqrt(0.3) / z, sqrt(0.15) / z, sqrt(0.05) / z, 0});
}

static void test_seeded(void)
{
    float logits[V] = {0.1f, 0.2f, 0.3f, 0.2f, 0.1f};
    cfg_sampling sp = {1.0, 0, 1.0, 0};
    sample_rng a, b, c;
    sample_seed(&a, 5);
    sample_seed(&b, 5);
    sample_seed(&c, 6);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        int32_t x = sample_token(logits, V, &sp, &a, &scratch);
        CU_ASSERT_EQUAL(x, sample_token(logits, V, &sp, &b, &scratch));
        differ += x != sample_token(logits, V, &sp, &c, &scratch);
    }
    CU_ASSERT(differ > 10);
}

void suite_sample(void)
{
    CU_pSuite s = CU_add_suite("sample", NULL, NULL);
    CU_add_test(s, "generator matches the reference algorithm", test_rng_reference);
    CU_add_test(s, "greedy and top-1", test_greedy);
    CU_add_test(s, "temperature, top-k, top-p distributions", test_distributions);
    CU_add_test(s, "same seed, same tokens", test_seeded);
}
