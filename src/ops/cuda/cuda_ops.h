/* The C boundary of the CUDA ops: everything CUDA stays in .cu/.cuh files;
 * C code sees only these functions. None aborts: those that can fail return
 * 0 or a negative lc status, so one failed call does not take the daemon
 * down. */
#ifndef LC_CUDA_OPS_H
#define LC_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Usable devices; 0 with the reason in why when the driver or GPU is missing. */
int ops_cuda_device_count(char *why, size_t len);
void ops_cuda_device_name(int index, char *buf, size_t len);

/* RMSNorm on device memory: y = x / rms(x) * w, rows of dim floats.
 *   x, y: (rows, dim); w: (dim) */
int ops_cuda_rmsnorm(const float *x, const float *w, float *y, int rows, int dim, float eps, void *stream);
/* Same over host memory (copies in and out); for tests against the CPU. */
int ops_cuda_rmsnorm_host(const float *x, const float *w, float *y, int rows, int dim, float eps);

/* ---- the executor's kernels (elementwise.cu) ------------------------------------------- */
/* Device pointers; bf16 tensors are `void *` here (__nv_bfloat16 inside).
 * Each launches on stream and returns 0, LC_EINVAL or LC_EDEVICE. */

/* x[t] = table[tok[t]] * scale.   table: (n_vocab, dim) bf16; tok: (n); x: (n, dim) f32 */
int ops_cuda_embed(const void *table, const int32_t *tok, int n, int dim, float scale, float *x, void *stream);
/* y[r] = bf16(x[rows ? rows[r] : r] / rms * w).   x: (., dim) f32; w: (dim) f32; y: (n, dim) bf16 */
int ops_cuda_rmsnorm_bf16(const float *x, const int32_t *rows, const float *w, void *y, int n, int dim, float eps,
                          void *stream);

/* x[r] += y[r] / rms(y[r]) * w (Gemma 3's post-norms).   x, y: (n, dim) f32; w: (dim) */
int ops_cuda_rmsnorm_add(float *x, const float *y, const float *w, int n, int dim, float eps, void *stream);

#define OPS_CUDA_QK_NORM_HEADS 512 // most q + k heads a token may have with QK-norm
/* The fused QKV epilogue's shapes and outputs. */
typedef struct {
    int n_heads, n_kv_heads, head_dim;
    int rot_dim;     // rotated dims per head (even, <= head_dim)
    int neox;        // 0: adjacent pairs; 1: halves
    int64_t n_table; // positions covered by the cos/sin tables
    float freq_base, freq_scale;
    void *q;       // (rows, n_heads, head_dim) bf16, token t at row perm[t] (row t when perm is NULL)
    void *k_cache; // this layer's K pages: (n_pages, n_kv_heads, page_size, head_dim) bf16
    void *v_cache; // same layout
    int page_size;
    /* QK-norm (Gemma 3), or NULL: each q (k) head scaled by its inverse RMS
     * and q_norm (k_norm), (head_dim) f32, before RoPE. */
    const float *q_norm, *k_norm;
    float norm_eps;
} ops_cuda_qkv_t;
/* qkv: (n, (n_heads + 2 n_kv_heads) * head_dim) f32, q heads then k then v;
 * pos, perm, kv_page, kv_slot: (n); cos_t, sin_t: (n_table, rot_dim / 2). */
int ops_cuda_qkv_post(const float *qkv, int n, const int64_t *pos, const int32_t *perm, const int32_t *kv_page,
                      const int32_t *kv_slot, const float *cos_t, const float *sin_t, const ops_cuda_qkv_t *p,
                      void *stream);
/* h = bf16(silu(g) * u).   gu: (n, 2 ff) f32, gate then up; h: (n, ff) bf16 */
int ops_cuda_swiglu(const float *gu, void *h, int n, int ff, void *stream);
/* h = bf16(gelu_tanh(g) * u), PyTorch's tanh GELU (Gemma 3's GeGLU).   as ops_cuda_swiglu */
int ops_cuda_geglu(const float *gu, void *h, int n, int ff, void *stream);
/* x[i] = cap * tanh(x[i] / cap), n values (final logit soft-capping), cap > 0 */
int ops_cuda_softcap(float *x, size_t n, float cap, void *stream);
/* out[r] = the index of row r's largest value, ties to the lowest index, NaN
 * below everything, -1 when none is above -inf.   x: (rows, cols) f32 */
int ops_cuda_argmax_rows(const float *x, int rows, int cols, int32_t *out, void *stream);
/* For each row r with inv_t[r] > 0, out[r] = a token drawn from
 * softmax(x[r] * inv_t[r]) with the uniform u[r] in [0, 1): the first id at
 * which the running sum of exp(x * inv_t - max) passes u × total (NaN and
 * -inf logits excluded), else the last allowed id; -1 when none is allowed.
 * Rows with inv_t[r] <= 0 are left as they are.
 *   x: (rows, cols) f32; inv_t: (rows) f32; u: (rows) f64 */
int ops_cuda_sample_rows(const float *x, int rows, int cols, const float *inv_t, const double *u, int32_t *out,
                         void *stream);
/* dst[r] = src[idx[r]], bf16 rows of cols.   idx: (n) */
int ops_cuda_gather_rows_bf16(const void *src, const int32_t *idx, void *dst, int n, int cols, void *stream);

/* ---- matmul (gemm.cu) ----------------------------------------------------------------------- */
/* D = A · Wᵀ (+ D when accumulate) through cuBLASLt, bf16 inputs, f32
 * accumulation, D in f32 or bf16, all row-major:
 *   A: (m, k) bf16   W: (n, k) bf16   D: (m, n)
 * The invariant modes use one configuration per (n, k, output type) for
 * every m, so each output element is one fixed reduction whatever m is: a
 * row's result does not depend on the batch (gemm.cu says how each gets
 * there; bench_gemm measures them). */
typedef enum {
    OPS_GEMM_FAST = 0,           // cuBLASLt's pick per shape: fastest, not batch-invariant
    OPS_GEMM_INVARIANT_WIDE = 1, // one algorithm chosen for large m, split-K off
    OPS_GEMM_INVARIANT_SPLIT = 2 // one algorithm chosen for 64 rows (split-K kept), calls cut into 64-row chunks
} ops_cuda_gemm_mode_t;
typedef struct ops_cuda_gemm ops_cuda_gemm_t;
int ops_cuda_gemm_create(size_t workspace_bytes, ops_cuda_gemm_mode_t mode, ops_cuda_gemm_t **out);
void ops_cuda_gemm_destroy(ops_cuda_gemm_t *g);
int ops_cuda_gemm(ops_cuda_gemm_t *g, int m, int n, int k, const void *A, const void *W, void *D, int d_f32,
                  int accumulate, void *stream);
/* The same in the given mode instead of the handle's (its own algorithms). */
int ops_cuda_gemm_as(ops_cuda_gemm_t *g, ops_cuda_gemm_mode_t mode, int m, int n, int k, const void *A, const void *W,
                     void *D, int d_f32, int accumulate, void *stream);

#ifdef __cplusplus
}
#endif
#endif
