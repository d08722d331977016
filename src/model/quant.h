/* Reference quantizers of the ggml block formats, so that `lacuna mkmodel`
 * and the tests can write every type the loader reads. The way back, block
 * format to f32, is ops_w_dequantize (ops/ops.h): one dequantizer serves the
 * matmul, the loader's checks and the tests. */
#ifndef LC_QUANT_H
#define LC_QUANT_H

#include <stddef.h>
#include <stdint.h>

/* Quantizes n floats (a multiple of the type's block size) into dst
 * (ggml_type_size(type) * n / block bytes). Supports F32, F16, BF16, Q8_0,
 * Q4_0, Q4_1, Q5_0, Q4_K, Q6_K. Returns 0, or LC_EUNSUPPORTED for another
 * type / LC_EINVAL for a bad n. */
int quant_quantize(uint32_t type, const float *src, void *dst, size_t n);

#endif
