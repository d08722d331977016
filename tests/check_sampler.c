/* Check suite for the sampler: greedy, the drawn distribution against the
 * softmax (chi-square with fixed seeds), each filter restricting the support
 * as specified, penalties and biases hitting the right logits, seeding,
 * log-probabilities, and the vectorised greedy argmax against the serial
 * scan at every CPU level. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/cpu.h"
#include "common/status.h"
#include "model/sampler.h"

static sampler_t *mk(sampler_params_t *p, int V) {
    sampler_t *s = sampler_create(p, V, NULL, 0);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Draws n tokens from fixed logits; counts per token. */
static void draw(sampler_t *s, const float *logits, int V, int n, int *count) {
    float *l = malloc((size_t)V * sizeof *l);
    memset(count, 0, (size_t)V * sizeof *count);
    for (int i = 0; i < n; i++) {
        memcpy(l, logits, (size_t)V * sizeof *l);
        sampler_result_t r;
        ck_assert_int_eq(sampler_sample(s, l, NULL, 0, &r), 0);
        ck_assert(r.token >= 0 && r.token < V);
        count[r.token]++;
    }
    free(l);
}

/* Pearson chi-square of counts against probabilities p (n draws). */
static double chi2(const int *count, const double *p, int k, int n) {
    double x = 0;
    for (int i = 0; i < k; i++) {
        double e = p[i] * n;
        x += (count[i] - e) * (count[i] - e) / e;
    }
    return x;
}

START_TEST(test_greedy) {
    sampler_params_t p;
    sampler_params_default(&p);
    p.temperature = 0;
    sampler_t *s = mk(&p, 6);
    float l[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 0.0f};
    sampler_result_t r;
    ck_assert_int_eq(sampler_sample(s, l, NULL, 0, &r), 0);
    ck_assert_int_eq(r.token, 1); // tie between 1 and 3 goes to the lower id
    int32_t banned[1] = {1};
    float l2[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 0.0f};
    ck_assert_int_eq(sampler_sample(s, l2, banned, 1, &r), 0);
    ck_assert_int_eq(r.token, 3);
    ck_assert(isinf(l2[1]) && l2[1] < 0);
    /* everything banned is an error, not a random token */
    int32_t all[6] = {0, 1, 2, 3, 4, 5};
    float l3[6] = {0};
    ck_assert_int_lt(sampler_sample(s, l3, all, 6, &r), 0);
    sampler_destroy(s);
}
END_TEST

/* 20000 draws from p = (.1,.2,.3,.4), and at T = 0.5 from p² normalised.
 * chi-square with 3 degrees of freedom: 16.27 is the 0.1% critical value. */
START_TEST(test_temperature_distribution) {
    const int N = 20000;
    double p[4] = {0.1, 0.2, 0.3, 0.4}, q[4];
    float l[4];
    double z = 0;
    for (int i = 0; i < 4; i++) l[i] = (float)log(p[i]) + 1.7f, z += p[i] * p[i];
    for (int i = 0; i < 4; i++) q[i] = p[i] * p[i] / z;
    int count[4];
    sampler_params_t sp;
    sampler_params_default(&sp);
    sp.seed = 1234;
    sampler_t *s = mk(&sp, 4);
    draw(s, l, 4, N, count);
    double x = chi2(count, p, 4, N);
    ck_assert_msg(x < 16.27, "T=1 chi2 %g (counts %d %d %d %d)", x, count[0], count[1], count[2], count[3]);
    sampler_destroy(s);
    sp.temperature = 0.5f;
    s = mk(&sp, 4);
    draw(s, l, 4, N, count);
    x = chi2(count, q, 4, N);
    ck_assert_msg(x < 16.27, "T=0.5 chi2 %g", x);
    /* the wrong distribution is rejected by the same statistic (the test can fail) */
    ck_assert_msg(chi2(count, p, 4, N) > 100, "T=0.5 indistinguishable from T=1");
    sampler_destroy(s);
}
END_TEST

START_TEST(test_top_k_top_p_min_p) {
    enum { V = 1000 };
    float *l = malloc(V * sizeof *l);
    int *count = malloc(V * sizeof *count);
    for (int i = 0; i < V; i++) l[i] = (float)((i * 7919) % 1000) / 200.0f; // distinct, shuffled
    /* top-k = 5: exactly the five largest logits appear */
    sampler_params_t p;
    sampler_params_default(&p);
    p.top_k = 5;
    p.temperature = 3.0f; // flatten so all five show up
    sampler_t *s = mk(&p, V);
    draw(s, l, V, 2000, count);
    int n_seen = 0;
    for (int i = 0; i < V; i++)
        if (count[i]) {
            n_seen++;
            ck_assert_msg(l[i] >= 995 / 200.0f - 1e-6f, "token %d (logit %g) outside top-5", i, l[i]);
        }
    ck_assert_int_eq(n_seen, 5);
    sampler_destroy(s);

    /* top-p over (.5, .3, .15, .05): 0.7 keeps {0,1}; 0.85 keeps {0,1,2} */
    float lp[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    const float tp[2] = {0.7f, 0.85f};
    const int support[2] = {2, 3};
    for (int t = 0; t < 2; t++) {
        sampler_params_default(&p);
        p.top_p = tp[t];
        s = mk(&p, 4);
        draw(s, lp, 4, 3000, count);
        for (int i = 0; i < 4; i++)
            ck_assert_msg(i < support[t] ? count[i] > 0 : count[i] == 0, "top_p %g token %d count %d", tp[t], i,
                          count[i]);
        sampler_destroy(s);
    }
    /* min-p 0.2 of the top probability 0.5 = 0.1: drops only the 0.05 token */
    sampler_params_default(&p);
    p.min_p = 0.2f;
    s = mk(&p, 4);
    draw(s, lp, 4, 3000, count);
    ck_assert(count[0] && count[1] && count[2] && !count[3]);
    sampler_destroy(s);

    /* top-p over a flat 49152-token vocabulary (beyond the first sorted
     * prefix): half the mass is the lowest half of the ids (ties by id) */
    enum { BV = 49152 };
    float *flat = calloc(BV, sizeof *flat);
    int *bc = malloc(BV * sizeof *bc);
    sampler_params_default(&p);
    p.top_p = 0.5f;
    s = mk(&p, BV);
    draw(s, flat, BV, 300, bc);
    for (int i = BV / 2 + 1; i < BV; i++) ck_assert_msg(bc[i] == 0, "flat top-p drew %d", i);
    sampler_destroy(s);
    free(flat), free(bc), free(l), free(count);
}
END_TEST

START_TEST(test_penalties) {
    int32_t prompt[2] = {1, 2};
    sampler_params_t p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    sampler_t *s = sampler_create(&p, 5, prompt, 2);
    sampler_accept(s, 3);
    sampler_accept(s, 3);
    float l[5] = {1.0f, 2.0f, -1.0f, 4.0f, 0.5f};
    sampler_result_t r;
    ck_assert_int_eq(sampler_sample(s, l, NULL, 0, &r), 0);
    ck_assert_float_eq_tol(l[0], 1.0f, 1e-6);  // never seen: untouched
    ck_assert_float_eq_tol(l[1], 1.0f, 1e-6);  // prompt, positive: divided
    ck_assert_float_eq_tol(l[2], -2.0f, 1e-6); // prompt, negative: multiplied
    /* generated twice: repetition (4/2) then presence 0.5 and frequency 2*0.25 */
    ck_assert_float_eq_tol(l[3], 2.0f - 0.5f - 0.5f, 1e-6);
    ck_assert_float_eq_tol(l[4], 0.5f, 1e-6);
    ck_assert_int_eq(r.token, 0); // 1.0 ties 1.0 at id 1 and 3: lowest id
    sampler_destroy(s);
}
END_TEST

START_TEST(test_logit_bias) {
    float base[4] = {5.0f, 1.0f, 0.0f, -3.0f};
    sampler_bias_t bias[2] = {{0, -100.0f}, {3, 100.0f}};
    sampler_params_t p;
    sampler_params_default(&p);
    p.logit_bias = bias;
    p.n_logit_bias = 1; // ban the favourite only
    sampler_t *s = mk(&p, 4);
    int count[4];
    draw(s, base, 4, 500, count);
    ck_assert_int_eq(count[0], 0);
    ck_assert(count[1] > 0);
    sampler_destroy(s);
    p.n_logit_bias = 2; // and force the least likely one
    s = mk(&p, 4);
    draw(s, base, 4, 500, count);
    ck_assert_int_eq(count[3], 500);
    sampler_destroy(s);
}
END_TEST

START_TEST(test_seed_reproducible) {
    enum { V = 300, N = 200 };
    float l[V], w[V];
    for (int i = 0; i < V; i++) l[i] = sinf((float)i) * 2.0f;
    sampler_params_t p;
    sampler_params_default(&p);
    p.top_p = 0.9f;
    p.top_k = 50;
    p.seed = 99;
    int32_t a[N], b[N], c[N];
    for (int run = 0; run < 3; run++) {
        if (run == 2) p.seed = 100;
        sampler_t *s = mk(&p, V);
        int32_t *out = run == 0 ? a : run == 1 ? b : c;
        for (int i = 0; i < N; i++) {
            memcpy(w, l, sizeof w);
            sampler_result_t r;
            ck_assert_int_eq(sampler_sample(s, w, NULL, 0, &r), 0);
            out[i] = r.token;
        }
        sampler_destroy(s);
    }
    ck_assert(memcmp(a, b, sizeof a) == 0);
    ck_assert(memcmp(a, c, sizeof a) != 0);
}
END_TEST

/* skip_logprob draws the same tokens (greedy, and seeded with filters) and
 * leaves the log-probabilities out; everything banned is still an error. */
START_TEST(test_skip_logprob) {
    enum { V = 300, N = 100 };
    float l[V], w[V];
    for (int i = 0; i < V; i++) l[i] = sinf((float)i * 0.7f) * 3.0f;
    for (int greedy = 0; greedy < 2; greedy++) {
        sampler_params_t p;
        sampler_params_default(&p);
        p.temperature = greedy ? 0.0f : 0.8f;
        p.top_p = 0.95f;
        p.seed = 7;
        sampler_t *a = mk(&p, V);
        p.skip_logprob = 1;
        sampler_t *b = mk(&p, V);
        for (int i = 0; i < N; i++) {
            sampler_result_t ra, rb;
            memcpy(w, l, sizeof w);
            ck_assert_int_eq(sampler_sample(a, w, NULL, 0, &ra), 0);
            memcpy(w, l, sizeof w);
            ck_assert_int_eq(sampler_sample(b, w, NULL, 0, &rb), 0);
            ck_assert_int_eq(ra.token, rb.token);
            ck_assert(isfinite(ra.logprob) && isnan(rb.logprob) && rb.n_top == 0);
            sampler_accept(a, ra.token), sampler_accept(b, rb.token);
        }
        int32_t all[V];
        for (int i = 0; i < V; i++) all[i] = i;
        sampler_result_t r;
        memcpy(w, l, sizeof w);
        ck_assert_int_lt(sampler_sample(b, w, all, V, &r), 0);
        sampler_destroy(a), sampler_destroy(b);
    }
}
END_TEST

START_TEST(test_logprobs) {
    enum { V = 12 };
    float l[V];
    for (int i = 0; i < V; i++) l[i] = cosf((float)i * 1.3f) * 4.0f;
    sampler_result_t r;
    sampler_logprobs_of(l, V, 5, V, &r);
    ck_assert_int_eq(r.n_top, V);
    double mx = r.top_logprobs[0], sum = 0;
    for (int i = 0; i < r.n_top; i++) {
        if (i) ck_assert(r.top_logprobs[i] <= r.top_logprobs[i - 1]);
        ck_assert_float_eq_tol(r.top_logprobs[i], l[r.top_ids[i]] - (l[r.top_ids[0]] - r.top_logprobs[0]), 1e-5);
        sum += exp(r.top_logprobs[i] - mx);
    }
    ck_assert_double_eq_tol(mx + log(sum), 0.0, 1e-5); // logsumexp of all logprobs = 0
    for (int i = 0; i < V; i++)
        if (r.top_ids[i] == 5) ck_assert_float_eq_tol(r.logprob, r.top_logprobs[i], 1e-6);

    /* sampled: logprobs come from the logits before temperature */
    sampler_params_t p;
    sampler_params_default(&p);
    p.temperature = 0.3f;
    p.n_logprobs = 3;
    sampler_t *s = mk(&p, V);
    float w[V];
    memcpy(w, l, sizeof w);
    ck_assert_int_eq(sampler_sample(s, w, NULL, 0, &r), 0);
    ck_assert_int_eq(r.n_top, 3);
    sampler_result_t ref;
    sampler_logprobs_of(l, V, r.token, 3, &ref);
    ck_assert_float_eq_tol(r.logprob, ref.logprob, 1e-6);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(r.top_ids[i], ref.top_ids[i]);
        ck_assert_float_eq_tol(r.top_logprobs[i], ref.top_logprobs[i], 1e-6);
    }
    sampler_destroy(s);
}
END_TEST

/* The greedy rule as sampler.h states it, serially: NaN is -inf, the
 * largest logit wins, ties to the lowest id; -1 when nothing is allowed. */
static int32_t ref_greedy(const float *l, int V) {
    int32_t t = -1;
    for (int i = 0; i < V; i++) {
        const float v = isnan(l[i]) ? -INFINITY : l[i];
        if (v != -INFINITY && (t < 0 || v > l[t])) t = i;
    }
    return t;
}

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(uint32_t n) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* Logits that stress a lane-wise argmax: few distinct values (ties across
 * lanes, accumulators and the tail), NaN, -inf, +inf, and -0 tying +0. */
static void adversarial(float *l, int V, int kind) {
    for (int i = 0; i < V; i++) l[i] = (float)rnd(kind == 0 ? 1000 : 4) - 3.0f;
    if (kind == 1) // the maximum, 0, as +0 and -0 at random places
        for (int i = 0; i < V; i++)
            if (l[i] == 0.0f && rnd(2)) l[i] = -0.0f;
    const int n_odd = 1 + (int)rnd(6);
    for (int k = 0; k < n_odd; k++) {
        const int at = (int)rnd((uint32_t)V);
        switch (kind) {
        case 2: l[at] = NAN; break;
        case 3: l[at] = (k & 1) ? INFINITY : NAN; break;
        default: l[at] = -INFINITY; break;
        }
    }
    if (kind == 4) // all disallowed but one or two
        for (int i = 0; i < V; i++) l[i] = rnd(3) ? -INFINITY : NAN;
    if (kind == 4 && rnd(2)) l[rnd((uint32_t)V)] = -1e30f;
}

/* Greedy draws, with and without log-probabilities, at every CPU level the
 * machine has, give the serial scan's token on lengths around the vector
 * widths and a vocabulary-sized one; everything NaN or -inf is an error.
 * Bias and bans go through the same path. */
START_TEST(test_greedy_argmax) {
    const int lens[] = {1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 4099, 49152 + 13};
    float *l = malloc((size_t)(49152 + 13) * sizeof *l), *w = malloc((size_t)(49152 + 13) * sizeof *w);
    for (lc_cpu_level_t lvl = LC_CPU_SCALAR; lvl <= lc_cpu_detected(); lvl++) {
        lc_cpu_set_max(lvl);
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            const int V = lens[li];
            for (int skip = 0; skip < 2; skip++) {
                sampler_params_t p;
                sampler_params_default(&p);
                p.temperature = 0;
                p.skip_logprob = skip;
                const sampler_bias_t bias[2] = {{.token = V / 3, .bias = 2.0f}, {.token = V - 1, .bias = -100.0f}};
                p.logit_bias = bias;
                p.n_logit_bias = V > 2 ? 2 : 0;
                sampler_t *s = mk(&p, V);
                for (int trial = 0; trial < (V > 5000 ? 10 : 200); trial++) {
                    adversarial(l, V, trial % 5);
                    memcpy(w, l, (size_t)V * sizeof *l);
                    for (int i = 0; i < p.n_logit_bias; i++)
                        w[bias[i].token] = bias[i].bias <= -100.0f ? -INFINITY : w[bias[i].token] + bias[i].bias;
                    const int32_t banned[1] = {(int32_t)rnd((uint32_t)V)};
                    const int n_banned = (int)rnd(2);
                    if (n_banned) w[banned[0]] = -INFINITY;
                    const int32_t want = ref_greedy(w, V);
                    memcpy(w, l, (size_t)V * sizeof *l);
                    sampler_result_t r;
                    const int rc = sampler_sample(s, w, banned, n_banned, &r);
                    if (want < 0) {
                        ck_assert_msg(rc == LC_EINVAL, "level %d V %d: everything banned gave %d", lvl, V, rc);
                        continue;
                    }
                    ck_assert_msg(rc == 0 && r.token == want, "level %d V %d trial %d skip %d: token %d, want %d", lvl,
                                  V, trial, skip, r.token, want);
                    ck_assert(skip ? isnan(r.logprob) : !(r.logprob > 0.0f)); // NaN: an infinite logit
                }
                sampler_destroy(s);
            }
        }
    }
    lc_cpu_set_max(LC_CPU_AVX512);
    /* With penalties (applied to NaN logits too when nothing rewrites them
     * first), without log-probabilities as with them. */
    enum { PV = 1000 };
    sampler_params_t p;
    sampler_params_default(&p);
    p.temperature = 0;
    p.repetition_penalty = 1.3f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    const int32_t prompt[3] = {4, 40, 400};
    sampler_t *a = sampler_create(&p, PV, prompt, 3);
    p.skip_logprob = 1;
    sampler_t *b = sampler_create(&p, PV, prompt, 3);
    ck_assert(a && b);
    for (int step = 0; step < 300; step++) {
        adversarial(l, PV, step % 4);
        sampler_result_t ra, rb;
        memcpy(w, l, PV * sizeof *l);
        ck_assert_int_eq(sampler_sample(a, w, NULL, 0, &ra), 0);
        memcpy(w, l, PV * sizeof *l);
        ck_assert_int_eq(sampler_sample(b, w, NULL, 0, &rb), 0);
        ck_assert_int_eq(ra.token, rb.token);
        sampler_accept(a, ra.token), sampler_accept(b, rb.token);
    }
    sampler_destroy(a), sampler_destroy(b);
    free(l);
    free(w);
}
END_TEST

static Suite *sampler_suite(void) {
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_greedy);
    tcase_add_test(tc, test_temperature_distribution);
    tcase_add_test(tc, test_top_k_top_p_min_p);
    tcase_add_test(tc, test_penalties);
    tcase_add_test(tc, test_logit_bias);
    tcase_add_test(tc, test_seed_reproducible);
    tcase_add_test(tc, test_logprobs);
    tcase_add_test(tc, test_skip_logprob);
    tcase_add_test(tc, test_greedy_argmax);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(sampler_suite());
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
