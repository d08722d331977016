/* ggml block formats: reference quantizers (see quant.h).
 *
 * They follow ggml's *_ref round-to-nearest versions; for Q4_K and Q6_K a
 * simpler min/max scale choice replaces ggml's iterative search, which still
 * yields valid blocks close to the input. */
#include "model/quant.h"

#include <math.h>
#include <string.h>

#include "common/f16.h"
#include "common/status.h"
#include "model/gguf.h"

#define QK 32    // weights per Q4_0/Q4_1/Q8_0 block
#define QK_K 256 // weights per K-quant super-block

static inline void wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Q4_K's 12 scale bytes hold eight 6-bit scales and eight 6-bit mins. */
static inline void q4k_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* ---- quantization ------------------------------------------------------------ */

static inline int nearest_int(float f) { return (int)lrintf(f); }

static void q_q4_0(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK, y += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -8, id = d ? 1.0f / d : 0.0f;
        wr16(y, lc_f32_to_f16(d));
        for (int j = 0; j < QK / 2; ++j) {
            const int x0 = (int)(x[j] * id + 8.5f), x1 = (int)(x[QK / 2 + j] * id + 8.5f);
            const uint8_t q0 = (uint8_t)(x0 < 15 ? x0 : 15), q1 = (uint8_t)(x1 < 15 ? x1 : 15);
            y[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* ggml's quantize_row_q5_0_ref: the signed extreme maps to -16. */
static void q_q5_0(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK, y += 22) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++)
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        const float d = max / -16, id = d ? 1.0f / d : 0.0f;
        wr16(y, lc_f32_to_f16(d));
        uint32_t qh = 0;
        for (int j = 0; j < QK / 2; ++j) {
            const int x0 = (int)(x[j] * id + 16.5f), x1 = (int)(x[QK / 2 + j] * id + 16.5f);
            const uint8_t q0 = (uint8_t)(x0 < 31 ? x0 : 31), q1 = (uint8_t)(x1 < 31 ? x1 : 31);
            y[6 + j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((uint32_t)(q0 & 0x10) >> 4) << j;
            qh |= ((uint32_t)(q1 & 0x10) >> 4) << (j + QK / 2);
        }
        for (int k = 0; k < 4; k++) y[2 + k] = (uint8_t)(qh >> (8 * k));
    }
}

static void q_q4_1(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK, y += 20) {
        float min = INFINITY, max = -INFINITY;
        for (int j = 0; j < QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
        wr16(y, lc_f32_to_f16(d));
        wr16(y + 2, lc_f32_to_f16(min));
        for (int j = 0; j < QK / 2; ++j) {
            const int x0 = (int)((x[j] - min) * id + 0.5f), x1 = (int)((x[QK / 2 + j] - min) * id + 0.5f);
            const uint8_t q0 = (uint8_t)(x0 < 15 ? x0 : 15), q1 = (uint8_t)(x1 < 15 ? x1 : 15);
            y[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void q_q8_0(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        wr16(y, lc_f32_to_f16(d));
        for (int j = 0; j < QK; ++j) y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

/* Q4_K: each 32-weight sub-block gets scale (max-min)/15 and min -min (min
 * clamped to <= 0); both are then quantized to 6 bits against the super-block
 * d and dmin, and the weights are re-rounded with the quantized values. */
static void q_q4_k(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK_K, y += 144) {
        float scales[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
        for (int j = 0; j < 8; j++) {
            float mn = x[32 * j], mx = x[32 * j];
            for (int l = 1; l < 32; l++) {
                if (x[32 * j + l] < mn) mn = x[32 * j + l];
                if (x[32 * j + l] > mx) mx = x[32 * j + l];
            }
            if (mn > 0) mn = 0;
            scales[j] = (mx - mn) / 15;
            mins[j] = -mn;
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
        const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
        uint8_t *s = y + 4, *qs = y + 16;
        memset(s, 0, 12);
        for (int j = 0; j < 8; j++) {
            int ls = nearest_int(inv_scale * scales[j]), lm = nearest_int(inv_min * mins[j]);
            ls = ls < 63 ? ls : 63;
            lm = lm < 63 ? lm : 63;
            if (j < 4) {
                s[j] = (uint8_t)ls;
                s[j + 4] = (uint8_t)lm;
            } else {
                s[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
                s[j - 4] |= (uint8_t)((ls >> 4) << 6);
                s[j] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        const uint16_t dh = lc_f32_to_f16(max_scale / 63.f), dminh = lc_f32_to_f16(max_min / 63.f);
        wr16(y, dh);
        wr16(y + 2, dminh);
        const float d = lc_f16_to_f32(dh), dmin = lc_f16_to_f32(dminh);
        uint8_t L[QK_K];
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            q4k_scale_min(j, s, &sc, &m);
            const float dd = d * sc, dm = dmin * m;
            for (int l = 0; l < 32; l++) {
                int q = dd ? nearest_int((x[32 * j + l] + dm) / dd) : 0;
                L[32 * j + l] = (uint8_t)(q < 0 ? 0 : q > 15 ? 15 : q);
            }
        }
        for (int j = 0; j < QK_K; j += 64, qs += 32)
            for (int l = 0; l < 32; l++) qs[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* Q6_K: each 16-weight sub-block gets the signed scale max/-32 (as Q4_0 does
 * for 4 bits), quantized to int8 against the largest; weights are re-rounded
 * with the quantized scale. */
static void q_q6_k(const float *x, uint8_t *y, size_t nb) {
    for (size_t i = 0; i < nb; i++, x += QK_K, y += 210) {
        float scales[16], max_scale = 0.0f, max_abs = 0.0f;
        for (int ib = 0; ib < 16; ib++) {
            float amax = 0.0f, max = 0.0f;
            for (int l = 0; l < 16; l++)
                if (fabsf(x[16 * ib + l]) > amax) {
                    amax = fabsf(x[16 * ib + l]);
                    max = x[16 * ib + l];
                }
            scales[ib] = max / -32;
            if (fabsf(scales[ib]) > max_abs) {
                max_abs = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        uint8_t *ql = y, *qh = y + 128;
        int8_t *sc = (int8_t *)(y + 192);
        if (max_abs == 0.0f) {
            memset(y, 0, 210);
            continue;
        }
        const float iscale = -128.f / max_scale;
        const uint16_t dh = lc_f32_to_f16(1 / iscale);
        wr16(y + 208, dh);
        const float d = lc_f16_to_f32(dh);
        uint8_t L[QK_K];
        for (int ib = 0; ib < 16; ib++) {
            int s = nearest_int(iscale * scales[ib]);
            sc[ib] = (int8_t)(s < -128 ? -128 : s > 127 ? 127 : s);
            const float dd = d * sc[ib];
            for (int l = 0; l < 16; l++) {
                int q = dd ? nearest_int(x[16 * ib + l] / dd) : 0;
                q = q < -32 ? -32 : q > 31 ? 31 : q;
                L[16 * ib + l] = (uint8_t)(q + 32);
            }
        }
        for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
    }
}

int quant_quantize(uint32_t type, const float *src, void *dst, size_t n) {
    uint32_t bs = ggml_block_size(type);
    if (!bs) return LC_EUNSUPPORTED;
    if (n % bs) return LC_EINVAL;
    uint8_t *y = dst;
    switch (type) {
    case GGML_TYPE_F32: memcpy(y, src, n * sizeof *src); break;
    case GGML_TYPE_F16:
        for (size_t i = 0; i < n; i++) wr16(y + 2 * i, lc_f32_to_f16(src[i]));
        break;
    case GGML_TYPE_BF16:
        for (size_t i = 0; i < n; i++) wr16(y + 2 * i, lc_f32_to_bf16(src[i]));
        break;
    case GGML_TYPE_Q4_0: q_q4_0(src, y, n / bs); break;
    case GGML_TYPE_Q4_1: q_q4_1(src, y, n / bs); break;
    case GGML_TYPE_Q5_0: q_q5_0(src, y, n / bs); break;
    case GGML_TYPE_Q8_0: q_q8_0(src, y, n / bs); break;
    case GGML_TYPE_Q4_K: q_q4_k(src, y, n / bs); break;
    case GGML_TYPE_Q6_K: q_q6_k(src, y, n / bs); break;
    default: return LC_EUNSUPPORTED;
    }
    return 0;
}
