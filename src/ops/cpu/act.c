/* Elementwise activations: SwiGLU (Llama), and for the Gemma family GeGLU
 * with the tanh GELU, logit soft-capping, scaling, and the scaled embedding
 * lookup. Plain loops like norm.c's; each row depends only on itself,
 * whatever the batch. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "ops/ops.h"
#include "ops/cpu/par.h"

/* A float's bits as an int that orders like the float (NaN aside). */
static inline int32_t order_bits(float x) {
    int32_t b;
    memcpy(&b, &x, sizeof b);
    return b ^ ((b >> 31) & 0x7fffffff);
}

/* e^x, without branches or floating-point compares so that a loop of it
 * vectorises: x clamped to [-87.3, 88.3] (results stay normal and finite;
 * the clamp compares order_bits, as integer compares may be if-converted
 * where float compares may trap), x = n ln 2 + r with |r| <= ln 2 / 2 (n to
 * the nearest, ln 2 in two parts), e^r by Cephes expf's polynomial, 2^n
 * put in the exponent bits. Within 2 ulp of expf. C11 keeps every product
 * and sum rounded on its own (no contraction), so a vectorised body and
 * its scalar tail give the same bits for the same x. NaN comes out finite:
 * callers multiply by their input, which carries it. */
static inline float exp_fast(float x) {
    int32_t k = order_bits(x);
    const int32_t lo = order_bits(-87.3f), hi = order_bits(88.3f);
    k = k < lo ? lo : k;
    k = k > hi ? hi : k;
    k ^= (k >> 31) & 0x7fffffff;
    memcpy(&x, &k, sizeof x);
    // n = x / ln 2 to the nearest integer: adding and taking away 1.5 * 2^23
    // leaves the float rounded (|x / ln 2| < 2^22)
    const float fn = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const int32_t n = (int32_t)fn;
    const float r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

OPS_WIDE static void geglu_span(float *restrict g, const float *restrict u, size_t n) {
    /* gelu(x) = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³))), PyTorch's
     * approximate="tanh" (Gemma's gelu_pytorch_tanh), as x / (1 + e^(-2z))
     * with z = √(2/π) · (x + 0.044715 x³): (1 + tanh z) / 2 is the logistic
     * of 2z. libm's tanhf (through expm1f) was a seventh of Gemma's prefill;
     * this loop vectorises. Each element depends on its own inputs alone. */
    const float k2 = 2.0f * 0.7978845608028654f;
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = x / (1.0f + exp_fast(-k2 * (x + 0.044715f * x * x * x))) * u[i];
    }
}

void ops_geglu_tanh(float *restrict g, const float *restrict u, size_t n) {
    OPS_PAR_SPANS(n, i0, m, geglu_span(g + i0, u + i0, m));
}

/* silu(x) · u = x / (1 + e^(-x)) · u with the same e^x: libm's expf, one
 * call per element, kept the loop scalar. */
OPS_WIDE static void swiglu_span(float *restrict g, const float *restrict u, size_t n) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + exp_fast(-g[i])) * u[i];
}

void ops_swiglu(float *restrict g, const float *restrict u, size_t n) {
    OPS_PAR_SPANS(n, i0, m, swiglu_span(g + i0, u + i0, m));
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
