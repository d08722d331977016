/* Row-wise RMSNorm, softmax and elementwise ops: simple restrict loops that
 * the compiler vectorises at -O2 (sums accumulate in double only where the
 * row is long enough for rounding to matter against the references). */
#include <math.h>

#include "ops/ops.h"

void ops_rmsnorm(float *y, const float *x, const float *w, int n, int dim, float eps) {
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * dim;
        float *yr = y + (size_t)r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        float s = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) yr[i] = xr[i] * s * w[i];
    }
}

void ops_rmsnorm_heads(float *x, const float *w, int n, int n_heads, int head_dim, float eps) {
    ops_rmsnorm(x, x, w, n * n_heads, head_dim, eps);
}

void ops_swiglu(float *restrict g, const float *restrict u, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void ops_add(float *restrict y, const float *restrict x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
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
