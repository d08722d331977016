/* Elementwise ops of the Gemma family: GeGLU with the tanh GELU, logit
 * soft-capping, scaling, and the scaled embedding lookup. Plain loops like
 * norm.c's; each row depends only on itself, whatever the batch. */
#include <math.h>

#include "ops/ops.h"

void ops_geglu_tanh(float *restrict g, const float *restrict u, size_t n) {
    /* gelu(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))), PyTorch's
     * approximate="tanh" (Gemma's gelu_pytorch_tanh) */
    const float k = 0.7978845608028654f;
    for (size_t i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x))) * u[i];
    }
}

void ops_softcap(float *x, size_t n, float cap) {
    const float inv = 1.0f / cap;
    for (size_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] * inv);
}

void ops_scale(float *x, size_t n, float s) {
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

void ops_embed(float *x, const ops_w_t *emb, const int32_t *tokens, int n, float scale) {
    for (int t = 0; t < n; t++) {
        float *row = x + (size_t)t * emb->cols;
        ops_w_row_f32(emb, tokens[t], row);
        if (scale != 1.0f) ops_scale(row, (size_t)emb->cols, scale);
    }
}
