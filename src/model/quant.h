/* Dequantization and quantization of ggml block formats.
 *
 * The loader turns weights into f32 rows for BLAS; the quantizers exist so
 * that `lacuna mkmodel` and the tests can write every supported type. */
#ifndef LC_QUANT_H
#define LC_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Converts n weights (a multiple of the type's block size) starting at src
 * into dst. Returns 0, or LC_EUNSUPPORTED for an unknown type / LC_EINVAL for
 * a bad n. */
int quant_dequantize(uint32_t type, const void *src, float *dst, size_t n);
/* Quantizes n floats into dst (ggml_type_size(type) * n / block bytes).
 * Supports F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q6_K. */
int quant_quantize(uint32_t type, const float *src, void *dst, size_t n);

float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_f16(float f);
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);

#endif
