/* Check suite for the CPU ops: each against a direct double-precision
 * reference on random inputs, with a stated tolerance. RoPE is checked in
 * both pairings (adjacent for llama GGUFs, NEOX halves) and beyond its table. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/ops.h"

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static float *rnd(size_t n, unsigned seed) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = frand(&seed);
    return v;
}

/* Matmul: relative 1e-5 of the row's |x|·|w| scale, both the one-row (gemv)
 * and many-row (sgemm) paths, sizes that do not divide the thread slices. */
START_TEST(test_matmul) {
    const int shapes[][3] = {{1, 64, 40}, {1, 576, 1536}, {7, 576, 577}, {33, 96, 200}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *x = rnd((size_t)n * in, 1 + s), *w = rnd((size_t)out * in, 100 + s);
        float *y = malloc((size_t)n * out * sizeof *y);
        ops_matmul(y, x, w, n, in, out);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < out; j++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < in; k++) {
                    ref += (double)x[(size_t)r * in + k] * w[(size_t)j * in + k];
                    mag += fabs((double)x[(size_t)r * in + k] * w[(size_t)j * in + k]);
                }
                ck_assert_msg(fabs(y[(size_t)r * out + j] - ref) <= 1e-5 * mag + 1e-6, "shape %zu (%d,%d): %g vs %g", s,
                              r, j, y[(size_t)r * out + j], ref);
            }
        free(x), free(w), free(y);
    }
}
END_TEST

/* The matmul split over an OpenMP team of 3: random data, products well
 * above the size from which the work is split (a quarter million
 * multiply-adds; here 16 x 512 x 520 = 4.3M, and 266K for the one-row gemv),
 * output columns that do not divide into the threads' slices, each element
 * against the double reference as in test_matmul. The first matmul also
 * makes BLAS single-threaded, which must not shrink the calling thread's own
 * team (OpenBLAS's OpenMP build did, through omp_set_num_threads: every later
 * parallel region ran on one thread). */
START_TEST(test_matmul_threaded) {
    const int team = ops_cpu_init(NULL, 3);
#ifdef _OPENMP
    ck_assert_int_eq(team, 3);
#endif
    const int in = 512, out = 520, ns[] = {16, 1};
    for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
        const int n = ns[t];
        float *x = rnd((size_t)n * in, 7 + t), *w = rnd((size_t)out * in, 70 + t);
        float *y = malloc((size_t)n * out * sizeof *y);
        for (size_t i = 0; i < (size_t)n * out; i++) y[i] = NAN; // every element must be written
        ops_matmul(y, x, w, n, in, out);
        for (int r = 0; r < n; r++)
            for (int j = 0; j < out; j++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < in; k++) {
                    ref += (double)x[(size_t)r * in + k] * w[(size_t)j * in + k];
                    mag += fabs((double)x[(size_t)r * in + k] * w[(size_t)j * in + k]);
                }
                const float got = y[(size_t)r * out + j];
                ck_assert_msg(fabs(got - ref) <= 1e-5 * mag + 1e-6, "n=%d (%d,%d): %g vs %g", n, r, j, got, ref);
            }
        free(x), free(w), free(y);
    }
    ck_assert_int_eq(ops_cpu_init(NULL, 0), team); // the team is still 3
}
END_TEST

START_TEST(test_rmsnorm_softmax_swiglu) {
    enum { N = 3, D = 100 };
    float *x = rnd(N * D, 5), *w = rnd(D, 6), y[N * D];
    ops_rmsnorm(y, x, w, N, D, 1e-5f);
    for (int r = 0; r < N; r++) {
        double ss = 0;
        for (int i = 0; i < D; i++) ss += (double)x[r * D + i] * x[r * D + i];
        double sc = 1.0 / sqrt(ss / D + 1e-5);
        for (int i = 0; i < D; i++) ck_assert_double_eq_tol(y[r * D + i], x[r * D + i] * sc * w[i], 1e-5);
    }
    float sm[D];
    double mx = -1e30, z = 0;
    for (int i = 0; i < D; i++) sm[i] = x[i] * 20.0f, mx = sm[i] > mx ? sm[i] : mx;
    for (int i = 0; i < D; i++) z += exp(sm[i] - mx);
    float xs[D];
    for (int i = 0; i < D; i++) xs[i] = sm[i];
    float lse = ops_softmax(sm, D);
    ck_assert_double_eq_tol(lse, mx + log(z), 1e-4);
    for (int i = 0; i < D; i++) ck_assert_double_eq_tol(sm[i], exp(xs[i] - mx) / z, 1e-6);
    float g[D], u[D];
    for (int i = 0; i < D; i++) g[i] = x[i] * 4, u[i] = w[i];
    ops_swiglu(g, u, D);
    for (int i = 0; i < D; i++) {
        double a = x[i] * 4.0;
        ck_assert_double_eq_tol(g[i], a / (1 + exp(-a)) * w[i], 1e-5);
    }
    /* SwiGLU's far tails (the exponential clamped), zero, and NaN carried */
    const float far[] = {-400.0f, -90.0f, -30.0f, -0.0f, 0.0f, 30.0f, 90.0f, 400.0f, NAN};
    enum { NF = sizeof far / sizeof far[0] };
    float fg[NF], fu[NF];
    for (int i = 0; i < NF; i++) fg[i] = far[i], fu[i] = 1.0f;
    ops_swiglu(fg, fu, NF);
    for (int i = 0; i < NF - 1; i++)
        ck_assert_double_eq_tol(fg[i], far[i] / (1 + exp(-(double)far[i])), 1e-6 * (1 + fabs(far[i])));
    ck_assert(isnan(fg[NF - 1]));
    float a[4] = {1, 2, 3, 4}, b[4] = {0.5f, -2, 0, 1};
    ops_add(a, b, 4);
    ck_assert(a[0] == 1.5f && a[1] == 0 && a[2] == 3 && a[3] == 5);
    free(x), free(w);
}
END_TEST

/* Gemma's ops: GeGLU with the tanh GELU (PyTorch's formula, evaluated in
 * double), soft-capping, scaling, the scaled embedding lookup and the
 * per-head RMSNorm (each head of each row on its own). */
START_TEST(test_gemma_ops) {
    enum { D = 200 };
    float *x = rnd(D, 9), *w = rnd(D, 10), g[D];
    for (int i = 0; i < D; i++) g[i] = x[i] * 6; // -6..6: both tails
    ops_geglu_tanh(g, w, D);
    for (int i = 0; i < D; i++) {
        double a = x[i] * 6.0, gelu = 0.5 * a * (1 + tanh(sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
        ck_assert_double_eq_tol(g[i], gelu * w[i], 1e-5 * (1 + fabs(gelu)));
    }
    /* the far tails (the exponential clamped), zero, and NaN carried */
    const float far[] = {-400.0f, -30.0f, -9.5f, -1e-30f, 0.0f, -0.0f, 1e-30f, 9.5f, 30.0f, 400.0f, NAN};
    enum { NF = sizeof far / sizeof far[0] };
    float fg[NF], fu[NF];
    for (int i = 0; i < NF; i++) fg[i] = far[i], fu[i] = 1.0f;
    ops_geglu_tanh(fg, fu, NF);
    for (int i = 0; i < NF - 1; i++) {
        const double a = far[i], gelu = 0.5 * a * (1 + tanh(sqrt(2 / M_PI) * (a + 0.044715 * a * a * a)));
        ck_assert_double_eq_tol(fg[i], gelu, 1e-6 * (1 + fabs(gelu)));
    }
    ck_assert(isnan(fg[NF - 1]));
    /* an element's bits do not depend on where it sits (vectorised body or
     * scalar tail): the same values alone, and at an odd offset of a longer
     * array */
    enum { NA = 37, NB = 101, OFF = 3 };
    float ga[NA], ua[NA], gb[NB], ub[NB];
    for (int i = 0; i < NB; i++) gb[i] = x[i % D] * 7, ub[i] = w[(i * 3) % D];
    for (int i = 0; i < NA; i++) ga[i] = gb[OFF + i], ua[i] = ub[OFF + i];
    ops_geglu_tanh(ga, ua, NA);
    ops_geglu_tanh(gb, ub, NB);
    ck_assert(memcmp(ga, gb + OFF, sizeof ga) == 0);
    float c[D];
    for (int i = 0; i < D; i++) c[i] = x[i] * 100;
    ops_softcap(c, D, 30.0f);
    for (int i = 0; i < D; i++) ck_assert_double_eq_tol(c[i], 30.0 * tanh(x[i] * 100.0 / 30.0), 1e-4);
    float s[3] = {1, -2, 0.5f};
    ops_scale(s, 3, 4.0f);
    ck_assert(s[0] == 4 && s[1] == -8 && s[2] == 2);
    /* embedding rows of a (4, 50) f32 table, scaled */
    float *tab = rnd(4 * 50, 11), e[3 * 50];
    ops_w_t emb = {.type = OPS_W_F32, .rows = 4, .cols = 50, .row_bytes = 50 * sizeof(float), .data = tab};
    const int32_t toks[3] = {3, 0, 3};
    ops_embed(e, &emb, toks, 3, 2.5f);
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 50; i++) ck_assert_float_eq(e[t * 50 + i], tab[toks[t] * 50 + i] * 2.5f);
    /* per-head RMSNorm: 2 rows of 3 heads of 8 */
    float *h = rnd(2 * 3 * 8, 12), *hw = rnd(8, 13), h0[48];
    for (int i = 0; i < 48; i++) h0[i] = h[i];
    ops_rmsnorm_heads(h, hw, 2, 3, 8, 1e-6f);
    for (int r = 0; r < 6; r++) {
        double ss = 0;
        for (int i = 0; i < 8; i++) ss += (double)h0[r * 8 + i] * h0[r * 8 + i];
        for (int i = 0; i < 8; i++)
            ck_assert_double_eq_tol(h[r * 8 + i], h0[r * 8 + i] / sqrt(ss / 8 + 1e-6) * hw[i], 1e-5);
    }
    free(x), free(w), free(tab), free(h), free(hw);
}
END_TEST

/* Rotation angle p * scale * base^(-2i/d) applied to pair i; for adjacent
 * pairs that is (x[2i], x[2i+1]), for NEOX (x[i], x[i+d/2]). */
START_TEST(test_rope) {
    enum { H = 3, D = 16, T = 4 };
    ops_rope_t r;
    ck_assert_int_eq(ops_rope_init(&r, D, 64, 10000.0f, 0.5f), 0);
    const int64_t pos[T] = {0, 5, 63, 1000}; // 1000: beyond the table
    for (int neox = 0; neox <= 1; neox++) {
        float *x = rnd(T * H * D, 9 + neox), y[T * H * D];
        for (int i = 0; i < T * H * D; i++) y[i] = x[i];
        ops_rope(&r, y, T, pos, H, D, neox);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < D / 2; i++) {
                    double ang = pos[t] * 0.5 * pow(10000.0, -2.0 * i / D);
                    int a = neox ? i : 2 * i, b = neox ? i + D / 2 : 2 * i + 1;
                    const float *xv = x + (t * H + h) * D;
                    const float *yv = y + (t * H + h) * D;
                    double ra = xv[a] * cos(ang) - xv[b] * sin(ang), rb = xv[a] * sin(ang) + xv[b] * cos(ang);
                    ck_assert_msg(fabs(yv[a] - ra) < 1e-5 && fabs(yv[b] - rb) < 1e-5,
                                  "neox %d pos %lld pair %d: (%g,%g) vs (%g,%g)", neox, (long long)pos[t], i, yv[a],
                                  yv[b], ra, rb);
                }
        free(x);
    }
    ops_rope_fini(&r);
}
END_TEST

/* A prompt chunk's norms, activations, adds and rotations split over the
 * OpenMP team (by rows, or by spans of elements); what each row or element
 * gets must not depend on that: the long call equals the same work done a
 * row (or a short slice) at a time on one thread, bit for bit. Row lengths
 * that are and are not multiples of 16 (RMSNorm's lanes). */
START_TEST(test_long_calls_split) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    omp_set_num_threads(3); // an odd team, whatever this machine has
#endif
    enum { N = 300, E = 640, F = 2048, DT = 100 };
    float *x = rnd((size_t)N * E, 21), *w = rnd(E, 22), *y = malloc(sizeof(float) * N * E), row[E];
    ops_rmsnorm(y, x, w, N, E, 1e-6f);
    for (int r = 0; r < N; r++) {
        ops_rmsnorm(row, x + (size_t)r * E, w, 1, E, 1e-6f);
        ck_assert(memcmp(row, y + (size_t)r * E, sizeof row) == 0);
        double ss = 0;
        for (int i = 0; i < E; i++) ss += (double)x[(size_t)r * E + i] * x[(size_t)r * E + i];
        const double sc = 1.0 / sqrt(ss / E + 1e-6);
        for (int i = 0; i < E; i++) ck_assert_double_eq_tol(row[i], x[(size_t)r * E + i] * sc * w[i], 1e-5);
    }
    /* rows of 100 in place (the tail lanes), as per-head norm calls them */
    float *t = rnd((size_t)N * 7 * DT, 23), *t0 = malloc(sizeof(float) * N * 7 * DT);
    memcpy(t0, t, sizeof(float) * N * 7 * DT);
    ops_rmsnorm_heads(t, w, N, 7, DT, 1e-6f);
    for (int r = 0; r < N * 7; r++) {
        ops_rmsnorm(t0 + (size_t)r * DT, t0 + (size_t)r * DT, w, 1, DT, 1e-6f);
        ck_assert(memcmp(t0 + (size_t)r * DT, t + (size_t)r * DT, DT * sizeof(float)) == 0);
    }
    /* GeGLU, SwiGLU and the add over N x F elements against slices of 37 */
    const size_t n = (size_t)N * F;
    float *g = rnd(n, 24), *u = rnd(n, 25), *g1 = malloc(n * sizeof(float)), *g2 = malloc(n * sizeof(float));
    for (int op = 0; op < 3; op++) {
        memcpy(g1, g, n * sizeof(float));
        memcpy(g2, g, n * sizeof(float));
        for (size_t i = 0; i < n; i += 37) {
            const size_t m = n - i < 37 ? n - i : 37;
            if (op == 0) ops_geglu_tanh(g1 + i, u + i, m);
            if (op == 1) ops_swiglu(g1 + i, u + i, m);
            if (op == 2) ops_add(g1 + i, u + i, m);
        }
        if (op == 0) ops_geglu_tanh(g2, u, n);
        if (op == 1) ops_swiglu(g2, u, n);
        if (op == 2) ops_add(g2, u, n);
        ck_assert_msg(memcmp(g1, g2, n * sizeof(float)) == 0, "op %d differs when split", op);
    }
    /* RoPE on N rows of 5 heads of 256, positions inside and beyond the table */
    ops_rope_t rp;
    ck_assert_int_eq(ops_rope_init(&rp, 256, 200, 10000.0f, 1.0f), 0);
    int64_t *pos = malloc(N * sizeof *pos);
    for (int i = 0; i < N; i++) pos[i] = i * 7 % 400;
    float *q = rnd((size_t)N * 5 * 256, 26), *q1 = malloc(sizeof(float) * N * 5 * 256);
    memcpy(q1, q, sizeof(float) * N * 5 * 256);
    ops_rope(&rp, q, N, pos, 5, 256, 1);
    for (int i = 0; i < N; i++) ops_rope(&rp, q1 + (size_t)i * 5 * 256, 1, pos + i, 5, 256, 1);
    ck_assert(memcmp(q, q1, sizeof(float) * N * 5 * 256) == 0);
    ops_rope_fini(&rp);
    free(x), free(w), free(y), free(t), free(t0), free(g), free(u), free(g1), free(g2), free(pos), free(q), free(q1);
#ifdef _OPENMP
    omp_set_num_threads(saved);
#endif
}
END_TEST

static Suite *ops_suite(void) {
    Suite *s = suite_create("ops");
    TCase *tc = tcase_create("cpu");
    tcase_add_test(tc, test_matmul);
    tcase_add_test(tc, test_matmul_threaded);
    tcase_add_test(tc, test_rmsnorm_softmax_swiglu);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_gemma_ops);
    tcase_add_test(tc, test_long_calls_split);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    SRunner *sr = srunner_create(ops_suite());
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
