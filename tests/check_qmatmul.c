/* Check suite for the matmul on weights in block format (ops_matmul_w):
 * every weight type, every kernel set (scalar and, where the CPU has them,
 * AVX2 and AVX-512 VNNI), both arithmetics (8-bit activations; exact f32 on expanded panels), odd shapes,
 * and that a row's result does not depend on the rows batched with it. The reference is the model's own dequantizer
 * (src/model/quant.c, written separately) and a double-precision product.
 *
 * Tolerances, per output y = Σ_i x_i w_i, with mag = Σ_i |x_i w_i|:
 *  - f32 panels, and f32/f16/bf16 weights on either path: 1e-5 · mag.
 *  - 8-bit activations: each x_i is replaced by d·q with |x - d·q| <= d/2,
 *    d = max|x| over its block / 127 (blocks of 32, or 256 for Q4_K/Q6_K),
 *    so |y - y_ref| <= Σ_blocks d_b/2 · Σ_{i in b} |w_i|, plus 1e-5 · mag
 *    for float rounding. The test computes that bound for every output and
 *    also checks the error is not zero (the path really ran quantized).
 *  - scalar vs AVX2 / AVX-512 on the quantized path: identical activation
 *    blocks and exact integer sums; only float summation order differs:
 *    1e-5 · mag. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/quant.h"
#include "common/cpu.h"
#include "ops/ops.h"
#include "testutil.h"

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static const int types[] = {OPS_W_F32,  OPS_W_F16,  OPS_W_BF16, OPS_W_Q4_0, OPS_W_Q4_1,
                            OPS_W_Q5_0, OPS_W_Q8_0, OPS_W_Q4_K, OPS_W_Q6_K};
#define N_TYPES ((int)(sizeof types / sizeof types[0]))

static int is_k(int t) { return t == OPS_W_Q4_K || t == OPS_W_Q6_K; }
static int act_block(int t) { return is_k(t) ? 256 : t == OPS_W_F32 || t == OPS_W_F16 || t == OPS_W_BF16 ? 0 : 32; }

/* A random (out, in) matrix in `type`, its reference expansion in wd. Rows
 * get different scales and some an offset, so that Q4_1/Q4_K mins matter. */
static ops_w_t make_w(int type, int out, int in, unsigned seed, float **wd) {
    float *w = malloc((size_t)out * in * sizeof *w);
    for (int r = 0; r < out; r++) {
        float sc = 0.02f + 0.1f * (float)(r % 7), off = r % 3 == 0 ? 0.05f : 0.0f;
        for (int i = 0; i < in; i++) w[(size_t)r * in + i] = sc * frand(&seed) + off;
    }
    size_t rb = ops_w_row_bytes(type, in);
    ck_assert_uint_gt(rb, 0);
    void *q = malloc(rb * out);
    ck_assert_int_eq(quant_quantize((uint32_t)type, w, q, (size_t)out * in), 0);
    ck_assert_int_eq(ops_w_dequantize(type, q, w, (size_t)out * in), 0);
    *wd = w;
    ops_w_t m = {.type = type, .rows = out, .cols = in, .row_bytes = rb, .data = q};
    return m;
}

static float *make_x(int n, int in, unsigned seed) {
    float *x = malloc((size_t)n * in * sizeof *x);
    for (int r = 0; r < n; r++)
        for (int i = 0; i < in; i++) {
            float v = frand(&seed);
            /* an outlier now and then: the block scale follows it */
            x[(size_t)r * in + i] = (i % 97 == 5) ? 8.0f * v : v;
        }
    return x;
}

/* x with the activation quantization applied (blocks of `qb`): d = max|x| /
 * 127 in float, q = round-to-even(x · (1/d)), x' = d·q — the format's
 * definition, written out here independently of the kernels. */
static float *quantize_x(const float *x, int n, int in, int qb) {
    float *xq = malloc((size_t)n * in * sizeof *xq);
    for (size_t b = 0; b < (size_t)n * in; b += qb) {
        float amax = 0;
        for (int i = 0; i < qb; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        for (int i = 0; i < qb; i++) xq[b + i] = d * (float)lrintf(x[b + i] * id);
    }
    return xq;
}

/* Checks y against x · wdᵀ. quant > 0 (the activation block size): within
 * the activation-quantization bound of the f32 product, and within float
 * rounding (2e-5 · mag) of the product with quantize_x's activations.
 * Returns the largest error seen relative to its bound, to show that the
 * quantized path was taken. */
static double check_y(const float *y, const float *x, const float *wd, int n, int in, int out, int quant,
                      const char *what) {
    double worst = 0;
    float *xq = quant ? quantize_x(x, n, in, quant) : NULL;
    for (int r = 0; r < n; r++)
        for (int j = 0; j < out; j++) {
            const float *xr = x + (size_t)r * in, *wr = wd + (size_t)j * in;
            double ref = 0, mag = 0, bound = 0, refq = 0;
            for (int i = 0; i < in; i++) {
                ref += (double)xr[i] * wr[i];
                mag += fabs((double)xr[i] * wr[i]);
            }
            const double have = y[(size_t)r * out + j];
            if (quant) {
                for (int b = 0; b < in; b += quant) {
                    double amax = 0, wsum = 0;
                    for (int i = b; i < b + quant; i++) {
                        amax = fmax(amax, fabs(xr[i]));
                        wsum += fabs(wr[i]);
                        refq += (double)xq[(size_t)r * in + i] * wr[i];
                    }
                    bound += amax / 127.0 / 2.0 * wsum * 1.001;
                }
                ck_assert_msg(fabs(have - refq) <= 2e-5 * mag + 1e-6,
                              "%s: y[%d,%d] = %.7g, with quantized activations %.7g", what, r, j, have, refq);
            }
            double err = fabs(have - ref), tol = bound + 1e-5 * mag + 1e-6;
            ck_assert_msg(err <= tol, "%s: y[%d,%d] = %.7g, reference %.7g (error %.3g > bound %.3g)", what, r, j, have,
                          ref, err, tol);
            if (tol > 0) worst = fmax(worst, err / tol);
        }
    free(xq);
    return worst;
}

static const int shapes[][3] = {
    /* n, in (32-block types; K types round up to 256), out */
    {1, 64, 1},
    {1, 576, 193},
    {2, 96, 67},
    {3, 512, 130},
    {4, 256, 64},
    {5, 768, 65},
    {17, 256, 33},
    {40, 320, 71},
    /* in not a multiple of 32: f32/f16/bf16 only (their kernels' tails) */
    {3, 37, 5},
    {1, 45, 70},
    {6, 291, 9},
};

/* y = x · wᵀ, q8 or exact. */
static int mm(float *y, const float *x, const ops_w_t *w, int n, int q8) {
    return ops_matmul_w(y, x, w, n, q8 ? OPS_MM_Q8 : OPS_MM_EXACT);
}

/* Both arithmetics on kernel set `level` against the f64 reference, and each
 * row alone bitwise equal to the same row in the batch. */
static void run_types(lc_cpu_level_t level) {
    ck_assert_int_eq(lc_cpu_set_max(level), level);
    const char *kset = lc_cpu_level_name(level);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int t = types[ti];
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            int n = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
            if (in % 32 && act_block(t)) continue;
            if (is_k(t)) in = (in + 255) / 256 * 256;
            float *wd, *x = make_x(n, in, 7 + (unsigned)s);
            ops_w_t w = make_w(t, out, in, 100 + (unsigned)(s * 13 + ti), &wd);
            float *y = malloc((size_t)n * out * sizeof *y), *y1 = malloc((size_t)out * sizeof *y1);
            char what[96];
            for (int q8 = 1; q8 >= 0; q8--) {
                snprintf(what, sizeof what, "%s %s %s (%d,%d,%d)", kset, ggml_type_name((uint32_t)t),
                         q8 ? "q8" : "exact", n, in, out);
                ck_assert_int_eq(mm(y, x, &w, n, q8), 0);
                double worst = check_y(y, x, wd, n, in, out, q8 ? act_block(t) : 0, what);
                if (q8 && act_block(t) && in >= 256)
                    ck_assert_msg(worst > 1e-3, "%s: error %.3g of the bound: not quantized?", what, worst);
                /* each row alone gives the same bits: results never depend on the batch */
                for (int r = 0; r < n; r++) {
                    ck_assert_int_eq(mm(y1, x + (size_t)r * in, &w, 1, q8), 0);
                    ck_assert_msg(memcmp(y1, y + (size_t)r * out, (size_t)out * sizeof *y1) == 0,
                                  "%s: row %d alone differs from the batch", what, r);
                }
            }
            free(y), free(y1), free(x), free(wd), free((void *)(uintptr_t)w.data);
        }
    }
    lc_cpu_set_max(LC_CPU_AVX512);
}

START_TEST(test_scalar) { run_types(LC_CPU_SCALAR); }
END_TEST

/* Every SIMD set this CPU has (AVX2, then AVX-512 VNNI); left out (the
 * program SKIPs) where the CPU has no AVX2. */
START_TEST(test_simd) {
    if (lc_cpu_detected() < LC_CPU_AVX512)
        fprintf(stderr, "check_qmatmul: no AVX-512 VNNI on this CPU, only AVX2 tested\n");
    for (lc_cpu_level_t l = LC_CPU_AVX2; l <= lc_cpu_detected(); l++) run_types(l);
}
END_TEST

/* Every SIMD set agrees with scalar to float summation order, on both
 * arithmetics; on the exact one AVX2 and AVX-512 agree bitwise (one FMA
 * chain per output either way). */
START_TEST(test_simd_vs_scalar) {
    for (int ti = 0; ti < N_TYPES; ti++)
        for (int q8 = 1; q8 >= 0; q8--) {
            int t = types[ti], n = 7, in = 1536, out = 45;
            float *wd, *x = make_x(n, in, 3);
            ops_w_t w = make_w(t, out, in, 77 + (unsigned)ti, &wd);
            float *ya = malloc((size_t)n * out * sizeof *ya), *ys = malloc((size_t)n * out * sizeof *ys);
            float *yp = malloc((size_t)n * out * sizeof *yp);
            lc_cpu_set_max(LC_CPU_SCALAR);
            ck_assert_int_eq(mm(ys, x, &w, n, q8), 0);
            for (lc_cpu_level_t l = LC_CPU_AVX2; l <= lc_cpu_detected(); l++) {
                lc_cpu_set_max(l);
                ck_assert_int_eq(mm(ya, x, &w, n, q8), 0);
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < out; j++) {
                        double mag = 0;
                        for (int k = 0; k < in; k++)
                            mag += fabs((double)x[(size_t)r * in + k] * wd[(size_t)j * in + k]);
                        ck_assert_msg(fabs(ya[r * out + j] - ys[r * out + j]) <= 1e-5 * mag,
                                      "%s %s [%d,%d]: %s %.7g scalar %.7g", ggml_type_name((uint32_t)t),
                                      q8 ? "q8" : "exact", r, j, lc_cpu_level_name(l), ya[r * out + j],
                                      ys[r * out + j]);
                    }
                if (!q8 && l > LC_CPU_AVX2)
                    ck_assert_msg(memcmp(ya, yp, (size_t)n * out * sizeof *ya) == 0, "%s exact: avx512 != avx2",
                                  ggml_type_name((uint32_t)t));
                memcpy(yp, ya, (size_t)n * out * sizeof *ya);
            }
            free(ya), free(ys), free(yp), free(x), free(wd), free((void *)(uintptr_t)w.data);
        }
    lc_cpu_set_max(LC_CPU_AVX512);
}
END_TEST

/* Row expansion is bit-exact with the model's dequantizer; row sizes refuse
 * what the kernels cannot read. */
START_TEST(test_rows) {
    for (lc_cpu_level_t l = LC_CPU_SCALAR; l <= lc_cpu_detected(); l++) {
        lc_cpu_set_max(l);
        for (int ti = 0; ti < N_TYPES; ti++) {
            int t = types[ti], in = 512, out = 3;
            float *wd;
            ops_w_t w = make_w(t, out, in, 5, &wd);
            float row[512];
            for (int r = 0; r < out; r++) {
                ops_w_row_f32(&w, r, row);
                ck_assert_msg(memcmp(row, wd + (size_t)r * in, sizeof row) == 0, "%s row %d differs",
                              ggml_type_name((uint32_t)t), r);
            }
            free(wd), free((void *)(uintptr_t)w.data);
        }
    }
    lc_cpu_set_max(LC_CPU_AVX512);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_Q4_0, 48), 0);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_Q4_K, 512 + 32), 0);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_Q4_1, 64), 40);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_Q6_K, 256), 210);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_F16, 3), 6);
    ck_assert_uint_eq(ops_w_row_bytes(7 /* Q5_1: not read */, 64), 0);
    ck_assert_uint_eq(ops_w_row_bytes(OPS_W_F32, 0), 0);
}
END_TEST

/* A copy of w packed in groups of 16 rows (ops_w_pack). */
static ops_w_t packed_copy(const ops_w_t *w) {
    ops_w_t p = *w;
    void *d = malloc(w->row_bytes * w->rows);
    memcpy(d, w->data, w->row_bytes * w->rows);
    p.data = d;
    ck_assert_int_eq(ops_w_pack(&p), 1);
    ck_assert_int_eq(p.packed, 1);
    return p;
}

static const int packed_types[] = {OPS_W_Q4_0, OPS_W_Q4_1, OPS_W_Q8_0};
static const int packed_shapes[][3] = {
    /* n, in, out (a multiple of 16) */
    {1, 64, 16}, {3, 576, 48}, {8, 256, 32}, {9, 512, 64}, {17, 96, 160}, {40, 320, 16},
};

/* Packed weights (groups of 16 rows) on every kernel set: rows read back as
 * the row layout's, the exact path gives the row layout's bits, the q8 path
 * is within the quantization bound, and every row alone (or at another
 * place in the batch) gives the bits it gives in the batch. */
START_TEST(test_packed) {
    for (lc_cpu_level_t l = LC_CPU_SCALAR; l <= lc_cpu_detected(); l++) {
        lc_cpu_set_max(l);
        for (size_t ti = 0; ti < sizeof packed_types / sizeof packed_types[0]; ti++)
            for (size_t s = 0; s < sizeof packed_shapes / sizeof packed_shapes[0]; s++) {
                const int t = packed_types[ti], n = packed_shapes[s][0], in = packed_shapes[s][1];
                const int out = packed_shapes[s][2];
                float *wd, *x = make_x(n, in, 31 + (unsigned)s);
                ops_w_t w = make_w(t, out, in, 200 + (unsigned)(s * 7 + ti), &wd);
                ops_w_t p = packed_copy(&w);
                float *y = malloc((size_t)n * out * sizeof *y), *y1 = malloc((size_t)n * out * sizeof *y1);
                float *xr = malloc((size_t)n * in * sizeof *xr), *row = malloc((size_t)in * sizeof *row);
                char what[96];
                snprintf(what, sizeof what, "%s packed %s (%d,%d,%d)", lc_cpu_level_name(l),
                         ggml_type_name((uint32_t)t), n, in, out);
                for (int r = 0; r < out; r++) {
                    ops_w_row_f32(&p, r, row);
                    ck_assert_msg(memcmp(row, wd + (size_t)r * in, (size_t)in * sizeof *row) == 0, "%s: row %d", what,
                                  r);
                }
                ck_assert_int_eq(mm(y, x, &w, n, 0), 0);
                ck_assert_int_eq(mm(y1, x, &p, n, 0), 0);
                ck_assert_msg(memcmp(y, y1, (size_t)n * out * sizeof *y) == 0, "%s: exact differs from rows", what);
                ck_assert_int_eq(mm(y, x, &p, n, 1), 0);
                double worst = check_y(y, x, wd, n, in, out, 32, what);
                if (in >= 256) ck_assert_msg(worst > 1e-3, "%s: error %.3g of the bound: not quantized?", what, worst);
                for (int r = 0; r < n; r++) {
                    ck_assert_int_eq(mm(y1, x + (size_t)r * in, &p, 1, 1), 0);
                    ck_assert_msg(memcmp(y1, y + (size_t)r * out, (size_t)out * sizeof *y1) == 0,
                                  "%s: row %d alone differs from the batch", what, r);
                }
                for (int r = 0; r < n; r++) memcpy(xr + (size_t)r * in, x + (size_t)(n - 1 - r) * in, in * sizeof *x);
                ck_assert_int_eq(mm(y1, xr, &p, n, 1), 0);
                for (int r = 0; r < n; r++)
                    ck_assert_msg(memcmp(y1 + (size_t)(n - 1 - r) * out, y + (size_t)r * out, out * sizeof *y) == 0,
                                  "%s: row %d moved in the batch differs", what, r);
                free(y), free(y1), free(xr), free(row), free(x), free(wd);
                free((void *)(uintptr_t)w.data), free((void *)(uintptr_t)p.data);
            }
    }
    lc_cpu_set_max(LC_CPU_AVX512);
}
END_TEST

/* Packed q8 on the SIMD sets agrees with the scalar packed kernels to float
 * rounding, and AVX2 with AVX-512 bitwise (the same integer sums, the same
 * FMA chain per output). Packing leaves other types and row counts alone. */
START_TEST(test_packed_simd_vs_scalar) {
    for (size_t ti = 0; ti < sizeof packed_types / sizeof packed_types[0]; ti++) {
        const int t = packed_types[ti], n = 11, in = 1536, out = 48;
        float *wd, *x = make_x(n, in, 5);
        ops_w_t w = make_w(t, out, in, 300 + (unsigned)ti, &wd);
        ops_w_t p = packed_copy(&w);
        float *ys = malloc((size_t)n * out * sizeof *ys), *ya = malloc((size_t)n * out * sizeof *ya);
        float *yp = malloc((size_t)n * out * sizeof *yp);
        lc_cpu_set_max(LC_CPU_SCALAR);
        ck_assert_int_eq(mm(ys, x, &p, n, 1), 0);
        for (lc_cpu_level_t l = LC_CPU_AVX2; l <= lc_cpu_detected(); l++) {
            lc_cpu_set_max(l);
            ck_assert_int_eq(mm(ya, x, &p, n, 1), 0);
            for (int r = 0; r < n; r++)
                for (int j = 0; j < out; j++) {
                    double mag = 0;
                    for (int k = 0; k < in; k++) mag += fabs((double)x[(size_t)r * in + k] * wd[(size_t)j * in + k]);
                    ck_assert_msg(fabs(ya[r * out + j] - ys[r * out + j]) <= 1e-5 * mag,
                                  "%s packed [%d,%d]: %s %.7g scalar %.7g", ggml_type_name((uint32_t)t), r, j,
                                  lc_cpu_level_name(l), ya[r * out + j], ys[r * out + j]);
                }
            if (l > LC_CPU_AVX2)
                ck_assert_msg(memcmp(ya, yp, (size_t)n * out * sizeof *ya) == 0, "%s packed: avx512 != avx2",
                              ggml_type_name((uint32_t)t));
            memcpy(yp, ya, (size_t)n * out * sizeof *ya);
        }
        free(ys), free(ya), free(yp), free(x), free(wd);
        free((void *)(uintptr_t)w.data), free((void *)(uintptr_t)p.data);
    }
    lc_cpu_set_max(LC_CPU_AVX512);
    float *wd;
    ops_w_t w = make_w(OPS_W_Q4_1, 40, 64, 1, &wd);
    ck_assert_int_eq(ops_w_pack(&w), 0); // 40 rows: not whole groups
    free((void *)(uintptr_t)w.data), free(wd);
    w = make_w(OPS_W_Q4_K, 32, 256, 1, &wd);
    ck_assert_int_eq(ops_w_pack(&w), 0); // no packed kernels
    free((void *)(uintptr_t)w.data), free(wd);
}
END_TEST

/* Several matrices on one x (ops_matmul_w_multi) give each exactly what it
 * gives alone: packed and row layouts, mixed types and activation formats,
 * both arithmetics, every kernel set. */
START_TEST(test_multi) {
    for (lc_cpu_level_t l = LC_CPU_SCALAR; l <= lc_cpu_detected(); l++) {
        lc_cpu_set_max(l);
        const int n = 10, in = 512, types3[3] = {OPS_W_Q4_1, OPS_W_Q8_0, OPS_W_Q6_K}, outs[3] = {64, 48, 33};
        float *x = make_x(n, in, 17), *wd[3], *ym[3], *ys = malloc((size_t)n * 64 * sizeof *ys);
        ops_w_t w[3];
        const ops_w_t *wp[3];
        for (int i = 0; i < 3; i++) {
            w[i] = make_w(types3[i], outs[i], in, 40 + (unsigned)i, &wd[i]);
            if (i < 2) ck_assert_int_eq(ops_w_pack(&w[i]), 1);
            wp[i] = &w[i];
            ym[i] = malloc((size_t)n * outs[i] * sizeof *ym[i]);
        }
        for (int mode = 0; mode < 2; mode++)
            for (int nw = 2; nw <= 3; nw++) { // two of one activation format, then a third of another
                ck_assert_int_eq(ops_matmul_w_multi(nw, ym, wp, x, n, mode), 0);
                for (int i = 0; i < nw; i++) {
                    ck_assert_int_eq(mm(ys, x, &w[i], n, mode), 0);
                    ck_assert_msg(memcmp(ys, ym[i], (size_t)n * outs[i] * sizeof *ys) == 0,
                                  "%s multi %d of %d, mode %d", lc_cpu_level_name(l), i, nw, mode);
                }
            }
        for (int i = 0; i < 3; i++) free(wd[i]), free(ym[i]), free((void *)(uintptr_t)w[i].data);
        free(x), free(ys);
    }
    lc_cpu_set_max(LC_CPU_AVX512);
}
END_TEST

/* A NaN or Inf in an activation row gives that row non-finite outputs on both
 * paths and both kernel sets (8-bit quantization used to hide it); the other
 * rows are untouched. */
START_TEST(test_nonfinite_propagates) {
    const float bad[2] = {NAN, INFINITY};
    for (lc_cpu_level_t l = LC_CPU_SCALAR; l <= lc_cpu_detected(); l++) {
        lc_cpu_set_max(l);
        for (int ti = 0; ti < N_TYPES; ti++)
            for (int b = 0; b < 2; b++)
                for (int mode = 0; mode < 2; mode++) {
                    const int t = types[ti], in = 256, out = 64, n = 3;
                    float *wd, y[3 * 64];
                    ops_w_t w = make_w(t, out, in, 9, &wd);
                    float *x = make_x(n, in, 4);
                    x[1 * in + 77] = bad[b];
                    ck_assert_int_eq(mm(y, x, &w, n, mode), 0);
                    for (int r = 0; r < out; r++) {
                        ck_assert_msg(!isfinite(y[out + r]), "%s %s: row with %f gave %f", ggml_type_name((uint32_t)t),
                                      mode ? "q8" : "f32", bad[b], y[out + r]);
                        ck_assert(isfinite(y[r]) && isfinite(y[2 * out + r]));
                    }
                    free(x), free(wd), free((void *)(uintptr_t)w.data);
                }
    }
    lc_cpu_set_max(LC_CPU_AVX512);
}
END_TEST

static Suite *qmatmul_suite(void) {
    Suite *s = suite_create("qmatmul");
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rows);
    tcase_add_test(tc, test_scalar);
    tcase_add_test(tc, test_packed);
    tcase_add_test(tc, test_multi);
    if (lc_cpu_detected() >= LC_CPU_AVX2) {
        tcase_add_test(tc, test_simd);
        tcase_add_test(tc, test_simd_vs_scalar);
        tcase_add_test(tc, test_packed_simd_vs_scalar);
    } else {
        tu_skip("no AVX2 kernels on this CPU: the SIMD kernels are not tested");
    }
    tcase_add_test(tc, test_nonfinite_propagates);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return tu_run(qmatmul_suite()); }
