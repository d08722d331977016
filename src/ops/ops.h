/* Non-attention compute of the transformer forward pass on the host: matmul
 * (CBLAS sgemm), RMSNorm, RoPE, SwiGLU, softmax, add. Plain f32, row-major.
 *
 * The kernels are stateless and thread-safe (the matmul uses the BLAS
 * library's own threads); the RoPE tables are built once per model. */
#ifndef LC_OPS_H
#define LC_OPS_H

#include <stddef.h>
#include <stdint.h>

/* y = x · wᵀ.
 *   x: (n, in)   w: (out, in)   y: (n, out)   (all row-major, contiguous) */
void ops_matmul(float *y, const float *x, const float *w, int n, int in, int out);

/* Row-wise RMSNorm: y[r] = x[r] / sqrt(mean(x[r]²) + eps) * w. y may equal x.
 *   x, y: (n, dim)   w: (dim) */
void ops_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps);

/* ---- RoPE ------------------------------------------------------------------ */
/* Precomputed rotation tables for positions 0..n_pos-1; positions beyond the
 * table are computed on the fly (slower, same values). theta_i(p) =
 * p * freq_scale * base^(-2i/rot_dim), i < rot_dim/2. */
typedef struct {
    int rot_dim;        // rotated dimensions per head (<= head_dim, even)
    int n_pos;          // rows of the tables
    float freq_base;
    float freq_scale;
    float *cos;         // (n_pos, rot_dim/2)
    float *sin;         // (n_pos, rot_dim/2)
} ops_rope_t;

/* Returns 0 or LC_ENOMEM / LC_EINVAL. Free with ops_rope_fini. */
int ops_rope_init(ops_rope_t *r, int rot_dim, int n_pos, float freq_base, float freq_scale);
void ops_rope_fini(ops_rope_t *r);

/* Rotates in place the first rot_dim dims of each head of each row.
 * neox = 0: adjacent pairs (x[2i], x[2i+1]) (llama GGUFs);
 * neox = 1: halves (x[i], x[i + rot_dim/2]) (NEOX, qwen2).
 *   x: (n, n_heads, head_dim)   pos: (n) position of each row */
void ops_rope(const ops_rope_t *r, float *x, int n, const int64_t *pos, int n_heads, int head_dim, int neox);

/* ---- elementwise --------------------------------------------------------------- */
/* g[i] = silu(g[i]) * u[i]   (SwiGLU), n elements */
void ops_swiglu(float *g, const float *u, size_t n);
/* y[i] += x[i] */
void ops_add(float *y, const float *x, size_t n);
/* In-place softmax of n values; returns log(sum(exp(x - max))) + max (the
 * log-sum-exp of the input). */
float ops_softmax(float *x, int n);

#endif
