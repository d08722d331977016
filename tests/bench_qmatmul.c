/* Microbenchmark of ops_matmul_w: for SmolLM2-135M's matrix shapes and a
 * range of batch sizes, the time of the two arithmetics (q8: 8-bit
 * activations; exact: f32 on expanded panels through our own kernels), and
 * two sgemm baselines on a pre-expanded f32 copy of the weights: plain sgemm
 * (M = n, whose arithmetic depends on n) and sgemm on fixed-shape tiles (rows
 * padded to 64-row tiles, the batch-invariant way to use a BLAS). Shows what
 * batch invariance costs against the BLAS, and where q8 pays.
 * Usage: bench_qmatmul [type (ggml id, default 3 = Q4_1)] [reps] */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timeutil.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "common/cpu.h"
#include "ops/ops.h"

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static double now(void) { return (double)lc_now_ns() * 1e-9; }

/* median-of-reps seconds per call of one path */
static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int type = argc > 1 ? atoi(argv[1]) : OPS_W_Q4_1, reps = argc > 2 ? atoi(argv[2]) : 5;
    /* (in, out): q/o, k/v, gate/up, down, LM head */
    static const int shapes[][2] = {{576, 576}, {576, 192}, {576, 1536}, {1536, 576}, {576, 49152}};
    static const int ns[] = {1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 512};
    unsigned seed = 1;
    printf("type %s, %s kernels, median of %d\n", ggml_type_name((uint32_t)type), lc_cpu_level_name(lc_cpu_level()),
           reps);
    printf("%6s %6s %4s %10s %10s %10s %12s %10s %10s\n", "in", "out", "n", "q8_us", "exact_us", "sgemm_us",
           "sgemm64_us", "q8pk_us", "exactpk_us");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int in = shapes[s][0], out = shapes[s][1];
        if (ops_w_row_bytes(type, in) == 0) { // K-quants need rows of whole 256-wide blocks
            fprintf(stderr, "bench_qmatmul: %s cannot hold rows of %d weights (not whole blocks)\n",
                    ggml_type_name((uint32_t)type), in);
            return 2;
        }
        float *wf = malloc((size_t)in * out * sizeof *wf), *x = malloc((size_t)512 * in * sizeof *x);
        float *y = malloc((size_t)512 * out * sizeof *y), *xp = calloc((size_t)576 * in, sizeof *xp);
        float *yp = malloc((size_t)576 * out * sizeof *yp);
        for (size_t i = 0; i < (size_t)in * out; i++) wf[i] = 0.05f * frand(&seed);
        for (size_t i = 0; i < (size_t)512 * in; i++) x[i] = frand(&seed);
        size_t rb = ops_w_row_bytes(type, in);
        void *q = malloc(rb * out);
        quant_quantize((uint32_t)type, wf, q, (size_t)in * out);
        ops_w_dequantize(type, q, wf, (size_t)in * out);
        ops_w_t w = {.type = type, .rows = out, .cols = in, .row_bytes = rb, .data = q};
        /* the same matrix packed in groups of 16 rows, where the type has packed kernels */
        void *qp = malloc(rb * out);
        memcpy(qp, q, rb * out);
        ops_w_t wp = w;
        wp.data = qp;
        const int packed = ops_w_pack(&wp) == 1;
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            int n = ns[k];
            double t[6][64];
            int r_eff = reps > 64 ? 64 : reps;
            for (int r = 0; r < r_eff; r++) {
                /* interleave the three so that machine noise hits all alike */
                double t0 = now();
                ops_matmul_w(y, x, &w, n, OPS_MM_Q8);
                double t1 = now();
                ops_matmul_w(y, x, &w, n, OPS_MM_EXACT);
                double t2 = now();
                ops_matmul(y, x, wf, n, in, out);
                double t3 = now();
                const int np = (n + 63) / 64 * 64; // fixed 64-row tiles: copy in, pad, copy out
                memcpy(xp, x, (size_t)n * in * sizeof *x);
                for (int i0 = 0; i0 < np; i0 += 64)
                    ops_matmul(yp + (size_t)i0 * out, xp + (size_t)i0 * in, wf, 64, in, out);
                memcpy(y, yp, (size_t)n * out * sizeof *y);
                double t4 = now();
                t[0][r] = t1 - t0, t[1][r] = t2 - t1, t[2][r] = t3 - t2, t[3][r] = t4 - t3;
                if (packed) ops_matmul_w(y, x, &wp, n, OPS_MM_Q8);
                double t5 = now();
                if (packed) ops_matmul_w(y, x, &wp, n, OPS_MM_EXACT);
                double t6 = now();
                t[4][r] = t5 - t4, t[5][r] = t6 - t5;
            }
            for (int p = 0; p < 6; p++) qsort(t[p], (size_t)r_eff, sizeof(double), cmp_d);
            printf("%6d %6d %4d %10.1f %10.1f %10.1f %12.1f %10.1f %10.1f\n", in, out, n, t[0][r_eff / 2] * 1e6,
                   t[1][r_eff / 2] * 1e6, t[2][r_eff / 2] * 1e6, t[3][r_eff / 2] * 1e6, t[4][r_eff / 2] * 1e6,
                   t[5][r_eff / 2] * 1e6);
            fflush(stdout);
        }
        free(wf), free(x), free(y), free(q), free(qp), free(xp), free(yp);
    }
    return 0;
}
