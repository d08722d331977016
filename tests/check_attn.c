/* Check suite for src/attn: dense kernels against a naive double-precision
 * reference over shuffled paged KV views; every sparse method against dense at
 * a full budget; and each method finding a planted pattern at a real budget. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "common/status.h"

/* ---- fixtures ---------------------------------------------------------------- */
static uint64_t rng_state;
static float frand(void) { // uniform in [-1, 1)
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

/* One layer of one sequence: contiguous copies for the reference, and a paged
 * pool with a shuffled block table, poisoned spare blocks and poisoned slots
 * past n so that an indexing bug shows up as NaN. */
typedef struct {
    attn_shape_t sh;
    int bs, nb, pool_blocks;
    int64_t n;
    float *kc, *vc;           // (n, n_kv_heads, head_dim)
    float *kp, *vp, *kmn, *kmx; // pool
    int32_t *blocks;
    attn_kv_t kv;
} tkv_t;

static void tkv_build_pool(tkv_t *t) {
    const int KH = t->sh.n_kv_heads, d = t->sh.head_dim, bs = t->bs;
    size_t bstride = (size_t)KH * bs * d, sstride = (size_t)KH * d;
    t->nb = (int)((t->n + bs - 1) / bs);
    t->pool_blocks = t->nb + 3;
    t->kp = malloc(sizeof(float) * bstride * t->pool_blocks);
    t->vp = malloc(sizeof(float) * bstride * t->pool_blocks);
    t->kmn = malloc(sizeof(float) * sstride * t->pool_blocks);
    t->kmx = malloc(sizeof(float) * sstride * t->pool_blocks);
    t->blocks = malloc(sizeof(int32_t) * t->pool_blocks);
    for (size_t i = 0; i < bstride * t->pool_blocks; i++)
        t->kp[i] = t->vp[i] = NAN;
    for (size_t i = 0; i < sstride * t->pool_blocks; i++)
        t->kmn[i] = t->kmx[i] = NAN;
    for (int i = 0; i < t->pool_blocks; i++)
        t->blocks[i] = i;
    for (int i = t->pool_blocks - 1; i > 0; i--) { // Fisher-Yates
        int j = (int)((frand() * 0.5f + 0.5f) * (i + 1));
        j = j > i ? i : j;
        int32_t x = t->blocks[i];
        t->blocks[i] = t->blocks[j];
        t->blocks[j] = x;
    }
    for (int64_t p = 0; p < t->n; p++) {
        int32_t b = t->blocks[p / bs];
        int off = (int)(p % bs);
        for (int h = 0; h < KH; h++) {
            const float *ks = t->kc + ((size_t)p * KH + h) * d, *vs = t->vc + ((size_t)p * KH + h) * d;
            float *kd = t->kp + b * bstride + ((size_t)h * bs + off) * d;
            float *vd = t->vp + b * bstride + ((size_t)h * bs + off) * d;
            memcpy(kd, ks, sizeof(float) * d);
            memcpy(vd, vs, sizeof(float) * d);
            float *mn = t->kmn + b * sstride + (size_t)h * d, *mx = t->kmx + b * sstride + (size_t)h * d;
            for (int c = 0; c < d; c++) {
                if (off == 0 || ks[c] < mn[c])
                    mn[c] = ks[c];
                if (off == 0 || ks[c] > mx[c])
                    mx[c] = ks[c];
            }
        }
    }
    t->kv = (attn_kv_t){.k = t->kp, .v = t->vp, .kmin = t->kmn, .kmax = t->kmx, .blk_stride = bstride,
                        .sum_stride = sstride, .blocks = t->blocks, .block_size = bs, .n_kv = t->n};
}

static void tkv_random(tkv_t *t, int H, int KH, int d, int bs, int64_t n, uint64_t seed) {
    rng_state = seed;
    t->sh = (attn_shape_t){H, KH, d, 1.0f / sqrtf((float)d)};
    t->bs = bs;
    t->n = n;
    t->kc = malloc(sizeof(float) * n * KH * d);
    t->vc = malloc(sizeof(float) * n * KH * d);
    for (int64_t i = 0; i < n * KH * d; i++) {
        t->kc[i] = frand() * 1.5f;
        t->vc[i] = frand();
    }
}

static void tkv_free(tkv_t *t) {
    free(t->kc), free(t->vc), free(t->kp), free(t->vp), free(t->kmn), free(t->kmx), free(t->blocks);
}

static float *rand_q(int rows, int H, int d, float amp) {
    float *q = malloc(sizeof(float) * rows * H * d);
    for (int i = 0; i < rows * H * d; i++)
        q[i] = frand() * amp;
    return q;
}

/* Naive reference in double: row (i, h) at position pos0+i over keys j <= pos. */
static void ref_attn(const tkv_t *t, const float *q, int n_q, int64_t pos0, double *out, double *lse) {
    const int H = t->sh.n_heads, KH = t->sh.n_kv_heads, d = t->sh.head_dim, G = H / KH;
    double *s = malloc(sizeof(double) * (pos0 + n_q));
    for (int i = 0; i < n_q; i++)
        for (int h = 0; h < H; h++) {
            const float *qr = q + ((size_t)i * H + h) * d;
            int64_t p = pos0 + i;
            double m = -INFINITY;
            for (int64_t j = 0; j <= p; j++) {
                const float *kr = t->kc + ((size_t)j * KH + h / G) * d;
                double acc = 0;
                for (int c = 0; c < d; c++)
                    acc += (double)qr[c] * kr[c];
                s[j] = acc * t->sh.scale;
                m = s[j] > m ? s[j] : m;
            }
            double l = 0;
            double *o = out + ((size_t)i * H + h) * d;
            memset(o, 0, sizeof(double) * d);
            for (int64_t j = 0; j <= p; j++) {
                double w = exp(s[j] - m);
                l += w;
                const float *vr = t->vc + ((size_t)j * KH + h / G) * d;
                for (int c = 0; c < d; c++)
                    o[c] += w * vr[c];
            }
            for (int c = 0; c < d; c++)
                o[c] /= l;
            lse[(size_t)i * H + h] = m + log(l);
        }
    free(s);
}

static double max_abs_diff(const float *a, const double *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= m))
            m = isnan(e) ? INFINITY : e;
    }
    return m;
}
static double max_abs_diff_f(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= m))
            m = isnan(e) ? INFINITY : e;
    }
    return m;
}

/* ---- dense -------------------------------------------------------------------- */
START_TEST(test_dense_prefill_chunked) {
    tkv_t t;
    tkv_random(&t, 4, 2, 32, 16, 301, 11);
    tkv_build_pool(&t);
    const int H = 4, d = 32, n = 301;
    float *q = rand_q(n, H, d, 2.0f);
    float *out = malloc(sizeof(float) * n * H * d), *lse = malloc(sizeof(float) * n * H);
    double *ro = malloc(sizeof(double) * n * H * d), *rl = malloc(sizeof(double) * n * H);
    ref_attn(&t, q, n, 0, ro, rl);
    const int cuts[] = {0, 37, 150, 151, 233, 301};
    for (int c = 0; c + 1 < 6; c++) {
        int a = cuts[c], b = cuts[c + 1];
        attn_kv_t kv = t.kv;
        kv.n_kv = b; // the cache holds exactly the keys written so far
        ck_assert_int_eq(attn_prefill_dense(&t.sh, q + (size_t)a * H * d, b - a, a, &kv, out + (size_t)a * H * d,
                                            lse + (size_t)a * H),
                         0);
    }
    ck_assert_double_lt(max_abs_diff(out, ro, (size_t)n * H * d), 2e-5);
    ck_assert_double_lt(max_abs_diff(lse, rl, (size_t)n * H), 2e-5);
    // an invalid call: queries past the cache
    attn_kv_t kv = t.kv;
    kv.n_kv = 10;
    ck_assert_int_eq(attn_prefill_dense(&t.sh, q, 20, 0, &kv, out, lse), LC_EINVAL);
    free(q), free(out), free(lse), free(ro), free(rl);
    tkv_free(&t);
}
END_TEST

START_TEST(test_dense_decode) {
    const int lens[] = {1, 17, 300, 1100};
    for (int li = 0; li < 4; li++) {
        tkv_t t;
        const int H = 6, d = 16;
        tkv_random(&t, H, 2, d, 16, lens[li], 100 + li);
        tkv_build_pool(&t);
        float *q = rand_q(1, H, d, 3.0f);
        float out[6 * 16], lse[6];
        double ro[6 * 16], rl[6];
        ref_attn(&t, q, 1, lens[li] - 1, ro, rl);
        ck_assert_int_eq(attn_decode_dense(&t.sh, q, &t.kv, out, lse), 0);
        ck_assert_double_lt(max_abs_diff(out, ro, (size_t)H * d), 2e-5);
        ck_assert_double_lt(max_abs_diff(lse, rl, H), 2e-5);
        free(q);
        tkv_free(&t);
    }
}
END_TEST

START_TEST(test_merge_halves) {
    tkv_t t;
    const int H = 4, d = 32, n = 320, half = 144; // half: a whole number of blocks
    tkv_random(&t, H, 4, d, 16, n, 7);
    tkv_build_pool(&t);
    float *q = rand_q(1, H, d, 2.0f);
    float o_all[4 * 32], l_all[4], o1[4 * 32], l1[4], o2[4 * 32], l2[4];
    ck_assert_int_eq(attn_decode_dense(&t.sh, q, &t.kv, o_all, l_all), 0);
    attn_kv_t a = t.kv, b = t.kv;
    a.n_kv = half;
    b.blocks = t.blocks + half / 16;
    b.n_kv = n - half;
    ck_assert_int_eq(attn_decode_dense(&t.sh, q, &a, o1, l1), 0);
    ck_assert_int_eq(attn_decode_dense(&t.sh, q, &b, o2, l2), 0);
    attn_merge(o1, l1, o2, l2, H, d);
    ck_assert_double_lt(max_abs_diff_f(o1, o_all, (size_t)H * d), 1e-5);
    ck_assert_double_lt(max_abs_diff_f(l1, l_all, H), 1e-5);
    free(q);
    tkv_free(&t);
}
END_TEST

START_TEST(test_policy_names) {
    attn_policy_t p;
    attn_policy_default(&p);
    ck_assert_float_eq(p.gamma, 0.9f);
    ck_assert_int_eq(p.block, 128);
    ck_assert_int_eq(p.decode_budget, 2048);
    attn_prefill_method_t pm;
    attn_decode_method_t dm;
    ck_assert_int_eq(attn_prefill_method_parse("flexprefill", &pm), 0);
    ck_assert_int_eq(pm, ATTN_PREFILL_FLEX);
    ck_assert_str_eq(attn_prefill_method_name(ATTN_PREFILL_ANCHOR), "anchor");
    ck_assert_int_eq(attn_decode_method_parse("tidal", &dm), 0);
    ck_assert_int_eq(dm, ATTN_DECODE_TIDAL);
    ck_assert_str_eq(attn_decode_method_name(ATTN_DECODE_QUEST), "quest");
    ck_assert_int_eq(attn_decode_method_parse("sparse", &dm), LC_EINVAL);
}
END_TEST

/* SPARSE_TESTS */

int main(void) {
    Suite *s = suite_create("attn");
    TCase *tc = tcase_create("dense");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_dense_prefill_chunked);
    tcase_add_test(tc, test_dense_decode);
    tcase_add_test(tc, test_merge_halves);
    tcase_add_test(tc, test_policy_names);
    suite_add_tcase(s, tc);
    /* SPARSE_TCASE */
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
