/* Quantization tests for the gguf suite (see check_gguf.c).
 *
 * Hand-built blocks are decoded and compared with values computed here
 * straight from the per-weight formulas (indexing each weight's bits directly
 * rather than looping the way the decoder does), so a packing mistake in
 * either direction shows. Round trips bound the quantizers' error. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/f16.h"
#include "common/status.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "ops/ops.h"

TCase *quant_tcase(void);

static uint64_t rng_state = 88172645463325252ull;

static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* Roughly normal, from a sum of uniforms. */
static float gauss(void) {
    float s = 0;
    for (int i = 0; i < 4; i++) s += (float)(rnd() % 65536) / 65536.0f;
    return (s - 2.0f) * 1.7f;
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* ---- f16 and bf16 ----------------------------------------------------------- */

START_TEST(test_f16) {
    ck_assert_float_eq(lc_f16_to_f32(0x3C00), 1.0f);
    ck_assert_float_eq(lc_f16_to_f32(0xC000), -2.0f);
    ck_assert_float_eq(lc_f16_to_f32(0x7BFF), 65504.0f);
    ck_assert_float_eq(lc_f16_to_f32(0x0400), ldexpf(1, -14));    // smallest normal
    ck_assert_float_eq(lc_f16_to_f32(0x0001), ldexpf(1, -24));    // smallest subnormal
    ck_assert_float_eq(lc_f16_to_f32(0x03FF), ldexpf(1023, -24)); // largest subnormal
    ck_assert_float_eq(lc_f16_to_f32(0x8001), -ldexpf(1, -24));
    ck_assert(signbit(lc_f16_to_f32(0x8000)) && lc_f16_to_f32(0x8000) == 0.0f);
    ck_assert(isinf(lc_f16_to_f32(0x7C00)) && lc_f16_to_f32(0x7C00) > 0);
    ck_assert(isinf(lc_f16_to_f32(0xFC00)) && lc_f16_to_f32(0xFC00) < 0);
    ck_assert(isnan(lc_f16_to_f32(0x7E00)));
    ck_assert(isnan(lc_f16_to_f32(0xFC01)));

    ck_assert_uint_eq(lc_f32_to_f16(1.0f), 0x3C00);
    ck_assert_uint_eq(lc_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(lc_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(lc_f32_to_f16(65519.0f), 0x7BFF);
    ck_assert_uint_eq(lc_f32_to_f16(65520.0f), 0x7C00); // rounds up to inf
    ck_assert_uint_eq(lc_f32_to_f16(1e9f), 0x7C00);
    ck_assert_uint_eq(lc_f32_to_f16(-INFINITY), 0xFC00);
    uint16_t nan = lc_f32_to_f16(NAN);
    ck_assert((nan & 0x7C00) == 0x7C00 && (nan & 0x03FF) != 0);
    ck_assert_uint_eq(lc_f32_to_f16(ldexpf(1, -24)), 0x0001);
    ck_assert_uint_eq(lc_f32_to_f16(ldexpf(1, -25)), 0x0000); // tie to even: 0
    ck_assert_uint_eq(lc_f32_to_f16(ldexpf(3, -25)), 0x0002); // tie to even: 2
    ck_assert_uint_eq(lc_f32_to_f16(ldexpf(3, -26)), 0x0001);
    ck_assert_uint_eq(lc_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3C00); // tie to even
    ck_assert_uint_eq(lc_f32_to_f16(1.0f + ldexpf(3, -11)), 0x3C02);
    ck_assert_uint_eq(lc_f32_to_f16(1.0f + ldexpf(1, -10)), 0x3C01);
    // Every half survives a round trip through float (NaNs stay NaN).
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lc_f16_to_f32((uint16_t)h);
        uint16_t back = lc_f32_to_f16(f);
        if (isnan(f))
            ck_assert(isnan(lc_f16_to_f32(back)));
        else
            ck_assert_uint_eq(back, h);
    }
}
END_TEST

START_TEST(test_bf16) {
    ck_assert_uint_eq(lc_f32_to_bf16(1.0f), 0x3F80);
    ck_assert_float_eq(lc_bf16_to_f32(0x3F80), 1.0f);
    ck_assert_float_eq(lc_bf16_to_f32(0xC2F7), -123.5f);
    float tie, up;
    uint32_t a = 0x3F808000u, b = 0x3F818000u, c = 0x3F808001u;
    memcpy(&tie, &a, 4);
    memcpy(&up, &b, 4);
    ck_assert_uint_eq(lc_f32_to_bf16(tie), 0x3F80); // tie to even (down)
    ck_assert_uint_eq(lc_f32_to_bf16(up), 0x3F82);  // tie to even (up)
    memcpy(&tie, &c, 4);
    ck_assert_uint_eq(lc_f32_to_bf16(tie), 0x3F81);
    ck_assert_uint_eq(lc_f32_to_bf16(INFINITY), 0x7F80);
    uint16_t nan = lc_f32_to_bf16(NAN);
    ck_assert(isnan(lc_bf16_to_f32(nan)));
    uint32_t snan_bits = 0x7F800001u; // would round to inf if not special-cased
    float snan;
    memcpy(&snan, &snan_bits, 4);
    ck_assert(isnan(lc_bf16_to_f32(lc_f32_to_bf16(snan))));
}
END_TEST

/* ---- hand-built blocks ---------------------------------------------------------- */

START_TEST(test_deq_simple_blocks) {
    uint8_t blk[64];
    float y[32];
    // Q4_0: d = 0.5, weight j < 16 is low nibble of qs[j], weight j + 16 the high one.
    put16(blk, 0x3800);
    for (int j = 0; j < 16; j++) blk[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q4_0, blk, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], 0.5f * (j - 8));
        ck_assert_float_eq(y[16 + j], 0.5f * (7 - j));
    }
    // Q4_1: d = 0.25, m = -1.5.
    put16(blk, 0x3400);
    put16(blk + 2, 0xBE00);
    for (int j = 0; j < 16; j++) blk[4 + j] = (uint8_t)(((j * 5) & 15) | ((j ^ 9) << 4));
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q4_1, blk, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], 0.25f * ((j * 5) & 15) - 1.5f);
        ck_assert_float_eq(y[16 + j], 0.25f * (j ^ 9) - 1.5f);
    }
    // Q5_0: d = 0.5, a fifth bit per weight in qh (bit j for weight j), value q - 16.
    put16(blk, 0x3800);
    const uint32_t qh = 0xA5C3F00Fu;
    for (int k = 0; k < 4; k++) blk[2 + k] = (uint8_t)(qh >> (8 * k));
    for (int j = 0; j < 16; j++) blk[6 + j] = (uint8_t)(((j * 3) & 15) | ((j ^ 5) << 4));
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q5_0, blk, y, 32), 0);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], 0.5f * ((((j * 3) & 15) | (int)((qh >> j) & 1) << 4) - 16));
        ck_assert_float_eq(y[16 + j], 0.5f * (((j ^ 5) | (int)((qh >> (16 + j)) & 1) << 4) - 16));
    }
    // Q8_0: d = -0.125, signed bytes -128..127.
    put16(blk, 0xB000);
    for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(j * 8 - 128 + (j & 1) * 7);
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q8_0, blk, y, 32), 0);
    for (int j = 0; j < 32; j++) ck_assert_float_eq(y[j], -0.125f * (j * 8 - 128 + (j & 1) * 7));
    // F16 and BF16 are little-endian arrays.
    put16(blk, 0x3C00);
    put16(blk + 2, 0xC100);
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_F16, blk, y, 2), 0);
    ck_assert_float_eq(y[0], 1.0f);
    ck_assert_float_eq(y[1], -2.5f);
    put16(blk, 0x4049);
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_BF16, blk, y, 1), 0);
    ck_assert_float_eq(y[0], 3.140625f);
    float in[3] = {1.5f, -0.0f, 1e30f};
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_F32, in, y, 3), 0);
    ck_assert(memcmp(in, y, sizeof in) == 0);
}
END_TEST

START_TEST(test_deq_q4_k) {
    uint8_t blk[2 * 144];
    float y[512];
    for (int b = 0; b < 2; b++) {
        uint8_t *x = blk + 144 * b, sc[8], mn[8];
        put16(x, b ? 0x2E66 : 0x3266);     // d ~ 0.1 / 0.2
        put16(x + 2, b ? 0x2A66 : 0x2C00); // dmin ~ 0.05 / 0.0625
        for (int j = 0; j < 8; j++) {
            sc[j] = (uint8_t)((63 - 7 * j + b) & 63); // values >= 16 exercise the high bits
            mn[j] = (uint8_t)((9 * j + 5 + b) & 63);
        }
        // Pack per the format: bytes 0-3 hold sc 0-3 (+ high bits of sc 4-7),
        // bytes 4-7 mn 0-3 (+ high bits of mn 4-7), bytes 8-11 low nibbles of sc/mn 4-7.
        uint8_t *s = x + 4;
        for (int j = 0; j < 4; j++) {
            s[j] = (uint8_t)(sc[j] | ((sc[j + 4] >> 4) << 6));
            s[j + 4] = (uint8_t)(mn[j] | ((mn[j + 4] >> 4) << 6));
            s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
        }
        for (int k = 0; k < 128; k++) x[16 + k] = (uint8_t)rnd();
    }
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q4_K, blk, y, 512), 0);
    for (int i = 0; i < 512; i++) {
        const uint8_t *x = blk + 144 * (i / 256);
        int w = i % 256, sub = w / 32, chunk = w / 64, l = w % 32;
        uint8_t byte = x[16 + 32 * chunk + l];
        int q = (w % 64) < 32 ? (byte & 15) : (byte >> 4);
        int b = i / 256, sc = (63 - 7 * sub + b) & 63, mn = (9 * sub + 5 + b) & 63;
        float d = lc_f16_to_f32(b ? 0x2E66 : 0x3266), dmin = lc_f16_to_f32(b ? 0x2A66 : 0x2C00);
        ck_assert_float_eq_tol(y[i], d * sc * q - dmin * mn, 1e-5f);
    }
}
END_TEST

START_TEST(test_deq_q6_k) {
    uint8_t blk[2 * 210];
    float y[512];
    for (int k = 0; k < (int)sizeof blk; k++) blk[k] = (uint8_t)rnd();
    put16(blk + 208, 0x2A66);
    put16(blk + 210 + 208, 0xA800); // negative d in the second block
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q6_K, blk, y, 512), 0);
    for (int i = 0; i < 512; i++) {
        const uint8_t *x = blk + 210 * (i / 256);
        int w = i % 256, half = w / 128, r = w % 128, quarter = r / 32, l = r % 32;
        uint8_t lo = x[half * 64 + l + (quarter & 1) * 32];
        int q = (quarter < 2 ? lo & 15 : lo >> 4) | (((x[128 + half * 32 + l] >> (2 * quarter)) & 3) << 4);
        int sc = (int8_t)x[192 + half * 8 + l / 16 + 2 * quarter];
        float d = lc_f16_to_f32((uint16_t)(x[208] | (x[209] << 8)));
        ck_assert_float_eq_tol(y[i], d * sc * (q - 32), 1e-5f);
    }
}
END_TEST

START_TEST(test_bad_args) {
    float y[64] = {0};
    uint8_t blk[256] = {0};
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q4_0, blk, y, 31), LC_EINVAL);
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q4_K, blk, y, 32), LC_EINVAL);
    ck_assert_int_eq(ops_w_dequantize(7, blk, y, 32), LC_EUNSUPPORTED); // Q5_1: not ours
    ck_assert_int_eq(quant_quantize(GGML_TYPE_Q8_0, y, blk, 40), LC_EINVAL);
    ck_assert_int_eq(quant_quantize(99, y, blk, 32), LC_EUNSUPPORTED);
    ck_assert_int_eq(ops_w_dequantize(GGML_TYPE_Q8_0, blk, y, 0), 0);
    ck_assert_uint_eq(ggml_row_size(GGML_TYPE_Q4_1, 576), 18 * 20);
    ck_assert_uint_eq(ggml_row_size(GGML_TYPE_Q5_0, 640), 20 * 22);
    ck_assert_uint_eq(ggml_row_size(GGML_TYPE_Q6_K, 512), 420);
    ck_assert_uint_eq(ggml_row_size(GGML_TYPE_Q6_K, 500), 0);
    ck_assert_uint_eq(ggml_row_size(GGML_TYPE_F32, UINT64_MAX), 0); // overflow
    ck_assert_str_eq(ggml_type_name(GGML_TYPE_Q4_K), "Q4_K");
    ck_assert_ptr_null(ggml_type_name(7));
}
END_TEST

/* ---- round trips ------------------------------------------------------------------ */

/* Per type: the worst error allowed, as a fraction of the block's largest
 * |x| (quantized types) or of |x| itself (float types), and an RMS bound
 * relative to the RMS of the input. A packing or scale bug gives errors of
 * order 1. */
static const struct {
    ggml_type_t type;
    float max_rel, rms_rel;
} k_rt[] = {
    {GGML_TYPE_F32, 0.0f, 0.0f},
    {GGML_TYPE_F16, 1.0f / 2048, 1.0f / 2048},
    {GGML_TYPE_BF16, 1.0f / 256, 1.0f / 256},
    {GGML_TYPE_Q8_0, 0.5f / 127 + 1e-3f, 0.01f},
    {GGML_TYPE_Q4_0, 1.0f / 8 + 1e-3f, 0.1f},
    {GGML_TYPE_Q4_1, 1.0f / 15 + 2e-3f, 0.08f},
    {GGML_TYPE_Q5_0, 1.0f / 16 + 1e-3f, 0.05f},
    {GGML_TYPE_Q4_K, 0.15f, 0.1f},
    {GGML_TYPE_Q6_K, 0.03f, 0.02f},
};

START_TEST(test_roundtrip_error) {
    const size_t n = 256 * 16;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    uint8_t *q = malloc(n * 4);
    for (size_t t = 0; t < sizeof k_rt / sizeof k_rt[0]; t++) {
        // Block magnitudes vary over five orders. Much smaller blocks make the
        // f16 scales subnormal, which costs precision in ggml's formats too.
        for (size_t i = 0; i < n; i++) x[i] = gauss() * powf(10.0f, (float)((i / 256) % 5) - 1.0f);
        ck_assert_int_eq(quant_quantize(k_rt[t].type, x, q, n), 0);
        ck_assert_int_eq(ops_w_dequantize((int)k_rt[t].type, q, y, n), 0);
        // Statistics per block, or per 256 weights for the float types.
        uint32_t bs = ggml_block_size(k_rt[t].type), group = bs > 1 ? bs : 256;
        double se = 0, sx = 0;
        for (size_t b = 0; b < n; b += group) {
            float amax = 0;
            for (size_t i = b; i < b + group; i++) amax = fmaxf(amax, fabsf(x[i]));
            for (size_t i = b; i < b + group; i++) {
                float e = fabsf(y[i] - x[i]), ref = bs > 1 ? amax : fabsf(x[i]);
                // F16 subnormals (|x| < 2^-14) have an absolute step of 2^-24.
                ck_assert_msg(e <= k_rt[t].max_rel * ref + (bs > 1 ? 0.0f : ldexpf(1, -25)),
                              "%s: x[%zu] = %g came back %g (block max %g)", ggml_type_name(k_rt[t].type), i, x[i],
                              y[i], amax);
                se += (double)e * e / ((double)amax * amax);
                sx += (double)x[i] * x[i] / ((double)amax * amax);
            }
        }
        ck_assert_msg(sqrt(se / sx) <= k_rt[t].rms_rel, "%s: rms error %g", ggml_type_name(k_rt[t].type),
                      sqrt(se / sx));
        // All-zero input must give zeros, not NaN from 0/0.
        memset(x, 0, n * sizeof *x);
        ck_assert_int_eq(quant_quantize(k_rt[t].type, x, q, n), 0);
        ck_assert_int_eq(ops_w_dequantize((int)k_rt[t].type, q, y, n), 0);
        for (size_t i = 0; i < n; i++) ck_assert_float_eq(y[i], 0.0f);
    }
    free(x);
    free(y);
    free(q);
}
END_TEST

/* ggml's reference Q8_0 quantizer on a known block, byte for byte. */
START_TEST(test_quantize_known) {
    float x[32];
    uint8_t q[34];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16) * 0.5f; // amax 8 -> d = 8/127
    ck_assert_int_eq(quant_quantize(GGML_TYPE_Q8_0, x, q, 32), 0);
    ck_assert_uint_eq(q[0] | (q[1] << 8), lc_f32_to_f16(8.0f / 127));
    for (int j = 0; j < 32; j++) ck_assert_int_eq((int8_t)q[2 + j], (int)roundf((j - 16) * 0.5f * 127 / 8));
    // Q4_0 maps the signed extreme to -8 and the opposite end to 15 (clamped).
    for (int j = 0; j < 32; j++) x[j] = j == 3 ? -4.0f : j == 5 ? 4.0f : 0.0f;
    ck_assert_int_eq(quant_quantize(GGML_TYPE_Q4_0, x, q, 32), 0);
    ck_assert_float_eq(lc_f16_to_f32((uint16_t)(q[0] | (q[1] << 8))), 0.5f);
    ck_assert_uint_eq(q[2 + 3] & 15, 0);
    ck_assert_uint_eq(q[2 + 5] & 15, 15);
    ck_assert_uint_eq(q[2 + 0], 0x88);
}
END_TEST

TCase *quant_tcase(void) {
    TCase *tc = tcase_create("quant");
    tcase_add_test(tc, test_f16);
    tcase_add_test(tc, test_bf16);
    tcase_add_test(tc, test_deq_simple_blocks);
    tcase_add_test(tc, test_deq_q4_k);
    tcase_add_test(tc, test_deq_q6_k);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_roundtrip_error);
    tcase_add_test(tc, test_quantize_known);
    return tc;
}
