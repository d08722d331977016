/* Row-wise RMSNorm, softmax and elementwise ops: simple restrict loops that
 * the compiler vectorises at -O2 (sums accumulate in double only where the
 * row is long enough for rounding to matter against the references).
 *
 * Long calls (a prompt chunk) split over the caller's OpenMP team, by rows or
 * by spans of whole 16-element groups; an element's or a row's arithmetic
 * does not depend on which thread or span it falls in, so the bits are the
 * same as one thread's. */
#include <math.h>

#include "ops/ops.h"
#include "ops/cpu/par.h"

/* Sum of squares of one row in 16 lanes: lane l adds x[i]² for i = l mod 16
 * in order, then the lanes fold in a fixed tree (8, 4, 2, 1). Each product
 * and sum is rounded on its own (C11 does not contract), so the vectorised
 * loop and a scalar one give the same bits on every kernel set. One serial
 * chain per row, as before, kept the loop scalar: a dependent add per
 * element, and Gemma's prefill normalises 3,840 floats a token per layer. */
static inline float sum_squares(const float *x, int dim) {
    float lane[16] = {0};
    int i = 0;
    for (; i + 16 <= dim; i += 16)
        for (int l = 0; l < 16; l++) lane[l] += x[i + l] * x[i + l];
    for (int l = 0; i < dim; i++, l++) lane[l] += x[i] * x[i];
    for (int w = 8; w > 0; w /= 2)
        for (int l = 0; l < w; l++) lane[l] += lane[l + w];
    return lane[0];
}

OPS_WIDE static void rmsnorm_row(float *y, const float *x, const float *w, int dim, float eps) {
    const float s = 1.0f / sqrtf(sum_squares(x, dim) / (float)dim + eps);
#pragma omp simd
    for (int i = 0; i < dim; i++) y[i] = x[i] * s * w[i];
}

void ops_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (ops__par_worth((size_t)n * dim) && n > 1 && !omp_in_parallel())
#endif
    for (int r = 0; r < n; r++) rmsnorm_row(y + (size_t)r * dim, x + (size_t)r * dim, w, dim, eps);
}

void ops_rmsnorm_heads(float *x, const float *w, int n, int n_heads, int head_dim, float eps) {
    ops_rmsnorm(x, x, w, n * n_heads, head_dim, eps);
}

OPS_WIDE static void add_span(float *restrict y, const float *restrict x, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void ops_add(float *restrict y, const float *restrict x, size_t n) {
    OPS_PAR_SPANS(n, i0, m, add_span(y + i0, x + i0, m));
}

float ops_softmax(float *x, int n) {
    if (n <= 0) return -INFINITY;
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) { // all masked: uniform is meaningless, return zeros
        for (int i = 0; i < n; i++) x[i] = 0.0f;
        return -INFINITY;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
    return mx + (float)log(sum);
}
