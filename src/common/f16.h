/* IEEE half (f16) and bfloat16 (bf16) to and from single precision: the one
 * conversion every module uses (GGUF weights and block scales, the
 * quantizers, tests). Header-only so that the quantized-matmul kernels
 * inline it. Bit-exact with ggml's scalar conversions: f16 -> f32 is exact
 * for every input; f32 -> f16/bf16 rounds to nearest even, overflow gives
 * inf, a NaN stays a (quiet) NaN. */
#ifndef LC_F16_H
#define LC_F16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float lc_f32_from_bits(uint32_t w) {
    float f;
    memcpy(&f, &w, 4);
    return f;
}

static inline uint32_t lc_f32_bits(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    return w;
}

/* Branch-free half to single (Maratea's FP16 library, as used by ggml):
 * normals by rebiasing the exponent, subnormals through a magic-number
 * subtraction; inf and NaN keep their payload. */
static inline float lc_f16_to_f32(uint16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = lc_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = lc_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result = sign | (two_w < (1u << 27) ? lc_f32_bits(denormalized) : lc_f32_bits(normalized));
    return lc_f32_from_bits(result);
}

/* Single to half with round-to-nearest-even; tiny values become subnormals
 * or zero. */
static inline uint16_t lc_f32_to_f16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = lc_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = lc_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = lc_f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float lc_bf16_to_f32(uint16_t h) { return lc_f32_from_bits((uint32_t)h << 16); }

static inline uint16_t lc_f32_to_bf16(float f) {
    uint32_t u = lc_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64); // NaN: force quiet
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);             // round to nearest even
}

#endif
