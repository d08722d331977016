// Matmul for the CUDA executor through cuBLASLt: D = A · Wᵀ (+ D), bf16
// inputs, f32 accumulation, D in f32 (residual stream, logits) or bf16.
//
// Row-major A (m, k) and W (n, k) are column-major Aᵀ (k, m) and Wᵀ (k, n);
// the row-major result D (m, n) is column-major Dᵀ (n, m) = W · Aᵀ, so cuBLAS
// computes op(Wᵀ)=T on "A" and Aᵀ as "B".
//
// Algorithms. cuBLASLt's heuristic picks by the whole shape, m included, and
// may split the reduction over k (split-K) for small m: a row's result would
// then depend on how many rows share the call. Three modes:
//  - FAST: the heuristic's choice per (m, n, k), cached; not batch-invariant.
//  - INVARIANT_WIDE: one algorithm per (n, k, output type), the heuristic's
//    for m = GEMM_REF_M with split-K forced off, reused for every m (each
//    output element is one CTA's reduction over k in a fixed order). Fast for
//    large m; for small m only n / tile CTAs run, too few to read the
//    weights at full bandwidth.
//  - INVARIANT_SPLIT: one algorithm per (n, k, output type), the heuristic's
//    for m = GEMM_SPLIT_M split-K included (a fixed split of k, partials
//    reduced in a fixed order), and every call cut into row chunks of
//    GEMM_SPLIT_M: the same configuration for every row whatever m is, with
//    enough CTAs for small m. 64 rows: on the H200, 1.00-1.11x the heuristic's
//    pick for 1-64 rows of Llama-3-8B's shapes (128 rows: 1.11-1.35x; 16 or
//    32 rows: 1.0x at 1-8 rows, 1.9-3.6x at 64; docs/benchmarks.md).
// ops_cuda_gemm_as() runs one call in a given mode (the handle's is the
// default), so an executor can give each kind of row its own mode.
// A row's result is the same in a call of any size under either invariant
// mode (tests/gpu/check_cuda.c); tests/gpu/bench_gemm.c measures the costs.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <stdlib.h>
#include <string.h>

#include "ops/cuda/cuda_check.cuh"
#include "ops/cuda/cuda_ops.h"

#define GEMM_REF_M 2048
#define GEMM_SPLIT_M 64
#define GEMM_CACHE 128

#define CUBLAS_CHECK_RET(call)                                                                                         \
    do {                                                                                                               \
        cublasStatus_t st_ = (call);                                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                            \
            lc_log(LC_LOG_ERROR, "%s failed at %s:%d: cuBLAS status %d", #call, __FILE__, __LINE__, (int)st_);         \
            return LC_EDEVICE;                                                                                         \
        }                                                                                                              \
    } while (0)

typedef struct {
    int m, n, k, d_f32; // m = -1: the algorithm serves every m (deterministic)
    int mode;
    cublasLtMatmulAlgo_t algo;
} algo_entry_t;

struct ops_cuda_gemm {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_bytes;
    ops_cuda_gemm_mode_t mode;
    int split_m; // INVARIANT_SPLIT's rows per chunk: GEMM_SPLIT_M, or LACUNA_GPU_SPLIT_M (to measure)
    algo_entry_t cache[GEMM_CACHE];
    int n_cache, next_evict;
};

extern "C" int ops_cuda_gemm_create(size_t workspace_bytes, ops_cuda_gemm_mode_t mode, ops_cuda_gemm_t **out) {
    *out = NULL;
    if (mode != OPS_GEMM_FAST && mode != OPS_GEMM_INVARIANT_WIDE && mode != OPS_GEMM_INVARIANT_SPLIT) return LC_EINVAL;
    ops_cuda_gemm_t *g = (ops_cuda_gemm_t *)calloc(1, sizeof *g);
    if (!g) return LC_ENOMEM;
    g->mode = mode;
    g->ws_bytes = workspace_bytes;
    const char *e = getenv("LACUNA_GPU_SPLIT_M");
    g->split_m = e && atoi(e) > 0 && atoi(e) <= GEMM_REF_M ? atoi(e) : GEMM_SPLIT_M;
    if (cublasLtCreate(&g->lt) != CUBLAS_STATUS_SUCCESS) {
        free(g);
        return LC_EDEVICE;
    }
    if (workspace_bytes && cudaMalloc(&g->ws, workspace_bytes) != cudaSuccess) {
        cublasLtDestroy(g->lt);
        free(g);
        return LC_ENOMEM;
    }
    *out = g;
    return 0;
}

extern "C" void ops_cuda_gemm_destroy(ops_cuda_gemm_t *g) {
    if (!g) return;
    cudaFree(g->ws);
    cublasLtDestroy(g->lt);
    free(g);
}

/* The descriptors of one call shape (freed by the caller). */
typedef struct {
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, c;
} gemm_desc_t;

static void desc_free(gemm_desc_t *d) {
    if (d->op) cublasLtMatmulDescDestroy(d->op);
    if (d->a) cublasLtMatrixLayoutDestroy(d->a);
    if (d->b) cublasLtMatrixLayoutDestroy(d->b);
    if (d->c) cublasLtMatrixLayoutDestroy(d->c);
}

static int desc_make(gemm_desc_t *d, int m, int n, int k, int d_f32) {
    memset(d, 0, sizeof *d);
    const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    CUBLAS_CHECK_RET(cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK_RET(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLAS_CHECK_RET(cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLAS_CHECK_RET(cublasLtMatrixLayoutCreate(&d->a, CUDA_R_16BF, k, n, k));
    CUBLAS_CHECK_RET(cublasLtMatrixLayoutCreate(&d->b, CUDA_R_16BF, k, m, k));
    CUBLAS_CHECK_RET(cublasLtMatrixLayoutCreate(&d->c, d_f32 ? CUDA_R_32F : CUDA_R_16BF, n, m, n));
    return 0;
}

/* The first heuristic result for the shape that runs in the workspace;
 * INVARIANT_WIDE: with split-K off. */
static int pick_algo(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k, int d_f32,
                     cublasLtMatmulAlgo_t *algo) {
    gemm_desc_t d;
    int rc = desc_make(&d, m, n, k, d_f32);
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t res[8];
    int found = 0;
    if (!rc && cublasLtMatmulPreferenceCreate(&pref) == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &g->ws_bytes,
                                             sizeof g->ws_bytes) == CUBLAS_STATUS_SUCCESS)
        cublasLtMatmulAlgoGetHeuristic(g->lt, d.op, d.a, d.b, d.c, d.c, pref, 8, res, &found);
    rc = rc ? rc : LC_EDEVICE;
    for (int i = 0; i < found; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        *algo = res[i].algo;
        if (mode == OPS_GEMM_INVARIANT_WIDE) {
            const int one = 1;
            const uint32_t none = CUBLASLT_REDUCTION_SCHEME_NONE;
            cublasLtMatmulAlgoConfigSetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one, sizeof one);
            cublasLtMatmulAlgoConfigSetAttribute(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &none, sizeof none);
            cublasLtMatmulHeuristicResult_t chk;
            if (cublasLtMatmulAlgoCheck(g->lt, d.op, d.a, d.b, d.c, d.c, algo, &chk) != CUBLAS_STATUS_SUCCESS ||
                chk.workspaceSize > g->ws_bytes)
                continue;
        }
        rc = 0;
        break;
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    desc_free(&d);
    if (rc) lc_log(LC_LOG_ERROR, "cuBLASLt: no algorithm for a (%d x %d x %d) bf16 matmul", m, n, k);
    return rc;
}

static int ref_m(const ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode) {
    return mode == OPS_GEMM_INVARIANT_WIDE ? GEMM_REF_M : g->split_m;
}

static const cublasLtMatmulAlgo_t *cached_algo(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k,
                                               int d_f32) {
    const int key_m = mode == OPS_GEMM_FAST ? m : -1;
    for (int i = 0; i < g->n_cache; i++) {
        const algo_entry_t *e = &g->cache[i];
        if (e->m == key_m && e->n == n && e->k == k && e->d_f32 == d_f32 && e->mode == (int)mode) return &e->algo;
    }
    algo_entry_t e = {key_m, n, k, d_f32, (int)mode, {}};
    if (pick_algo(g, mode, mode == OPS_GEMM_FAST ? m : ref_m(g, mode), n, k, d_f32, &e.algo)) return NULL;
    int slot = g->n_cache < GEMM_CACHE ? g->n_cache++ : g->next_evict++ % GEMM_CACHE;
    g->cache[slot] = e;
    return &g->cache[slot].algo;
}

static int gemm_call(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k, const void *A, const void *W,
                     void *D, int d_f32, int accumulate, void *stream);

extern "C" int ops_cuda_gemm(ops_cuda_gemm_t *g, int m, int n, int k, const void *A, const void *W, void *D, int d_f32,
                             int accumulate, void *stream) {
    if (!g) return LC_EINVAL;
    return ops_cuda_gemm_as(g, g->mode, m, n, k, A, W, D, d_f32, accumulate, stream);
}

extern "C" int ops_cuda_gemm_as(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k, const void *A,
                                const void *W, void *D, int d_f32, int accumulate, void *stream) {
    if (!g || m <= 0 || n <= 0 || k <= 0 || !A || !W || !D) return LC_EINVAL;
    if (mode != OPS_GEMM_FAST && mode != OPS_GEMM_INVARIANT_WIDE && mode != OPS_GEMM_INVARIANT_SPLIT) return LC_EINVAL;
    if (mode != OPS_GEMM_INVARIANT_SPLIT) return gemm_call(g, mode, m, n, k, A, W, D, d_f32, accumulate, stream);
    /* rows in chunks of split_m, each with the one configuration */
    const size_t d_row = (size_t)n * (d_f32 ? 4 : 2);
    for (int r0 = 0; r0 < m; r0 += g->split_m) {
        const int cnt = m - r0 < g->split_m ? m - r0 : g->split_m;
        int rc = gemm_call(g, mode, cnt, n, k, (const char *)A + (size_t)r0 * k * 2, W, (char *)D + (size_t)r0 * d_row,
                           d_f32, accumulate, stream);
        if (rc) return rc;
    }
    return 0;
}

static int gemm_call(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k, const void *A, const void *W,
                     void *D, int d_f32, int accumulate, void *stream) {
    const cublasLtMatmulAlgo_t *algo = cached_algo(g, mode, m, n, k, d_f32);
    if (!algo) return LC_EDEVICE;
    gemm_desc_t d;
    int rc = desc_make(&d, m, n, k, d_f32);
    if (rc) {
        desc_free(&d);
        return rc;
    }
    const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
    cublasStatus_t st = cublasLtMatmul(g->lt, d.op, &alpha, W, d.a, A, d.b, &beta, D, d.c, D, d.c, algo, g->ws,
                                       g->ws_bytes, (cudaStream_t)stream);
    desc_free(&d);
    if (st != CUBLAS_STATUS_SUCCESS) {
        lc_log(LC_LOG_ERROR, "cublasLtMatmul (%d x %d x %d) failed: status %d", m, n, k, (int)st);
        return LC_EDEVICE;
    }
    return 0;
}
