/* What batch invariance costs the CUDA executor's matmuls: one layer's four
 * projections (fused QKV, O, fused gate/up, down) and the LM head, timed
 * through ops_cuda_gemm in its two batch-invariant modes (wide: one
 * algorithm per (n, k) chosen for large m, split-K off; split: one chosen
 * for 64 rows with its split-K, calls in 64-row chunks) and in fast mode
 * (cuBLASLt's pick per shape, not invariant),
 * for the default model's shapes and Llama-3-8B's, at the row counts a
 * serving step has (1 to 2048). Prints a markdown table; with an argument,
 * also writes the rows as JSON to that file.
 *
 *   tests/gpu/bench_gemm [OUT.json]
 *
 * Run on the GPU machine by tests/gpu/run.sh (step gemm). */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_ops.h"

typedef struct {
    const char *model;
    int E, QKV, HD, F, V;
} shape_t;

static const shape_t shapes[] = {
    {"SmolLM2-135M", 576, 960, 576, 1536, 49152},
    {"Llama-3-8B", 4096, 6144, 4096, 14336, 128256},
};
static const int rows[] = {1, 8, 32, 64, 256, 1024, 2048};
#define NROWS (int)(sizeof rows / sizeof *rows)
#define REPS 20

/* Milliseconds per call of D(m, n) = A(m, k) · W(n, k)ᵀ, the median of REPS
 * timed after a warm-up. */
static double time_gemm(ops_cuda_gemm_t *g, int m, int n, int k, const void *A, const void *W, void *D, int acc,
                        cudaStream_t st) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    double t[REPS];
    if (ops_cuda_gemm(g, m, n, k, A, W, D, 1, acc, st)) return -1;
    for (int r = 0; r < REPS; r++) {
        cudaEventRecord(e0, st);
        for (int i = 0; i < 5; i++) ops_cuda_gemm(g, m, n, k, A, W, D, 1, acc, st);
        cudaEventRecord(e1, st);
        cudaEventSynchronize(e1);
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        t[r] = ms / 5;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    for (int i = 1; i < REPS; i++) // insertion sort, REPS is small
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double x = t[j];
            t[j] = t[j - 1];
            t[j - 1] = x;
        }
    return t[REPS / 2];
}

/* One layer's projections plus the LM head (for min(m, 64) rows, as the
 * executor runs it) at m rows. */
static int time_step(ops_cuda_gemm_t *g, const shape_t *s, int m, void *A, void *W, void *D, cudaStream_t st,
                     double *layer_ms, double *head_ms) {
    const double t[4] = {time_gemm(g, m, s->QKV, s->E, A, W, D, 0, st), time_gemm(g, m, s->E, s->HD, A, W, D, 1, st),
                         time_gemm(g, m, 2 * s->F, s->E, A, W, D, 0, st), time_gemm(g, m, s->E, s->F, A, W, D, 1, st)};
    *layer_ms = 0;
    for (int i = 0; i < 4; i++) {
        if (t[i] < 0) return -1;
        *layer_ms += t[i];
    }
    *head_ms = time_gemm(g, m < 64 ? m : 64, s->V, s->E, A, W, D, 0, st);
    return *head_ms < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    char why[256] = "";
    if (ops_cuda_device_count(why, sizeof why) < 1) {
        printf("SKIP: no GPU (%s)\n", why);
        return 77;
    }
    FILE *js = argc > 1 ? fopen(argv[1], "w") : NULL;
    cudaStream_t st;
    cudaStreamCreate(&st);
    static const char *const names[3] = {"fast", "wide", "split"};
    ops_cuda_gemm_t *g[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++)
        if (ops_cuda_gemm_create((size_t)32 << 20, (ops_cuda_gemm_mode_t)i, &g[i])) {
            fprintf(stderr, "bench_gemm: cannot create the cuBLASLt handles\n");
            return 1;
        }
    /* One buffer each, large enough for the largest operand; values do not
     * matter for timing but stay finite (zeros). */
    const size_t a_bytes = (size_t)2048 * 14336 * 2, w_bytes = (size_t)128256 * 4096 * 2,
                 d_bytes = (size_t)2048 * 128256 * 4;
    void *A, *W, *D;
    if (cudaMalloc(&A, a_bytes) || cudaMalloc(&W, w_bytes) || cudaMalloc(&D, d_bytes)) {
        fprintf(stderr, "bench_gemm: out of GPU memory\n");
        return 1;
    }
    cudaMemset(A, 0, a_bytes);
    cudaMemset(W, 0, w_bytes);
    cudaMemset(D, 0, d_bytes);
    printf("| model | rows | layer ms: fast | wide | split | wide / fast | split / fast | LM head ms: fast / wide / "
           "split |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|---|\n");
    if (js) fprintf(js, "[\n");
    int first = 1, rc = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
        for (int ri = 0; ri < NROWS; ri++) {
            const shape_t *s = &shapes[si];
            double layer[3], head[3];
            int bad = 0;
            for (int i = 0; i < 3 && !bad; i++) bad = time_step(g[i], s, rows[ri], A, W, D, st, &layer[i], &head[i]);
            if (bad) {
                fprintf(stderr, "bench_gemm: a matmul failed (%s, %d rows)\n", s->model, rows[ri]);
                rc = 1;
                continue;
            }
            printf("| %s | %d | %.4f | %.4f | %.4f | %.2f | %.2f | %.4f / %.4f / %.4f |\n", s->model, rows[ri],
                   layer[0], layer[1], layer[2], layer[1] / layer[0], layer[2] / layer[0], head[0], head[1], head[2]);
            if (js) {
                fprintf(js, "%s  {\"model\": \"%s\", \"rows\": %d", first ? "" : ",\n", s->model, rows[ri]);
                for (int i = 0; i < 3; i++)
                    fprintf(js, ", \"layer_ms_%s\": %.5f, \"head_ms_%s\": %.5f", names[i], layer[i], names[i], head[i]);
                fprintf(js, "}");
            }
            first = 0;
        }
    if (js) {
        fprintf(js, "\n]\n");
        fclose(js);
    }
    for (int i = 0; i < 3; i++) ops_cuda_gemm_destroy(g[i]);
    cudaFree(A);
    cudaFree(W);
    cudaFree(D);
    return rc;
}
