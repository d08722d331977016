/* Scalar kernels of the quantized matmul: the reference every SIMD kernel is
 * tested against, and what runs on CPUs without AVX2. Written from the
 * published block layouts (see qformat.h); integer sums are exact, so a
 * SIMD kernel differs from these only in float summation order. */
#include <math.h>

#include "common/status.h"
#include "ops/cpu/qformat.h"

/* ---- types ------------------------------------------------------------------- */
int qf_type_index(int type) {
    switch (type) {
    case OPS_W_F32: return QF_F32;
    case OPS_W_F16: return QF_F16;
    case OPS_W_BF16: return QF_BF16;
    case OPS_W_Q4_0: return QF_Q4_0;
    case OPS_W_Q4_1: return QF_Q4_1;
    case OPS_W_Q5_0: return QF_Q5_0;
    case OPS_W_Q8_0: return QF_Q8_0;
    case OPS_W_Q4_K: return QF_Q4_K;
    case OPS_W_Q6_K: return QF_Q6_K;
    default: return -1;
    }
}

int qf_act_kind(int type) {
    switch (qf_type_index(type)) {
    case QF_Q4_0:
    case QF_Q4_1:
    case QF_Q5_0:
    case QF_Q8_0: return QF_ACT_Q8B;
    case QF_Q4_K:
    case QF_Q6_K: return QF_ACT_Q8K;
    default: return QF_ACT_F32;
    }
}

size_t ops_w_row_bytes(int type, int cols) {
    if (cols <= 0) return 0;
    size_t c = (size_t)cols;
    switch (qf_type_index(type)) {
    case QF_F32: return c * 4;
    case QF_F16:
    case QF_BF16: return c * 2;
    case QF_Q4_0: return c % QK ? 0 : c / QK * Q4_0_BYTES;
    case QF_Q4_1: return c % QK ? 0 : c / QK * Q4_1_BYTES;
    case QF_Q5_0: return c % QK ? 0 : c / QK * Q5_0_BYTES;
    case QF_Q8_0: return c % QK ? 0 : c / QK * Q8_0_BYTES;
    case QF_Q4_K: return c % QK_K ? 0 : c / QK_K * Q4_K_BYTES;
    case QF_Q6_K: return c % QK_K ? 0 : c / QK_K * Q6_K_BYTES;
    default: return 0;
    }
}

/* ---- activation quantization ------------------------------------------------ */
/* Symmetric, round to nearest even (lrintf in the default mode), the same
 * rounding the AVX2 version's cvtps gives: both produce identical blocks. */
static void quant_q8b(const float *x, q8b_t *y, int n) {
    for (int b = 0; b < n / QK; b++, x += QK, y++) {
        float amax = 0;
        for (int i = 0; i < QK; i++) amax = fmaxf(amax, fabsf(x[i]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < QK; i++) {
            y->q[i] = (int8_t)lrintf(x[i] * id);
            sum += y->q[i];
        }
        y->d = d;
        y->s = d * (float)sum;
        y->sum = sum;
    }
}

static void quant_q8k(const float *x, q8k_t *y, int n) {
    for (int b = 0; b < n / QK_K; b++, x += QK_K, y++) {
        float amax = 0;
        for (int i = 0; i < QK_K; i++) amax = fmaxf(amax, fabsf(x[i]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        for (int i = 0; i < QK_K; i++) y->q[i] = (int8_t)lrintf(x[i] * id);
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += y->q[16 * j + i];
            y->bsum[j] = (int16_t)s;
        }
        y->d = d;
    }
}

/* ---- dequantization ------------------------------------------------------------ */
static void deq_f32(const uint8_t *w, float *y, int in) { memcpy(y, w, (size_t)in * 4); }

static void deq_f16(const uint8_t *w, float *y, int in) {
    for (int i = 0; i < in; i++) y[i] = lc_f16_to_f32(qf_rd16(w + 2 * i));
}

static void deq_bf16(const uint8_t *w, float *y, int in) {
    for (int i = 0; i < in; i++) y[i] = lc_bf16_to_f32(qf_rd16(w + 2 * i));
}

static void deq_q4_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q4_0_BYTES, y += QK) {
        const float d = lc_f16_to_f32(qf_rd16(w));
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((w[2 + j] & 15) - 8) * d;
            y[j + QK / 2] = (float)((w[2 + j] >> 4) - 8) * d;
        }
    }
}

static void deq_q4_1(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q4_1_BYTES, y += QK) {
        const float d = lc_f16_to_f32(qf_rd16(w)), m = lc_f16_to_f32(qf_rd16(w + 2));
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)(w[4 + j] & 15) * d + m;
            y[j + QK / 2] = (float)(w[4 + j] >> 4) * d + m;
        }
    }
}

static void deq_q5_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q5_0_BYTES, y += QK) {
        const float d = lc_f16_to_f32(qf_rd16(w));
        for (int j = 0; j < QK; j++) y[j] = (float)(qf_q5_0_val(w, j) - 16) * d;
    }
}

static void deq_q8_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q8_0_BYTES, y += QK) {
        const float d = lc_f16_to_f32(qf_rd16(w));
        for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)w[2 + j] * d;
    }
}

static void deq_q4_k(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK_K; b++, w += Q4_K_BYTES) {
        const float d = lc_f16_to_f32(qf_rd16(w)), dmin = lc_f16_to_f32(qf_rd16(w + 2));
        const uint8_t *q = w + 16;
        for (int j = 0; j < 8; j += 2, q += 32) {
            int sc, mn;
            qf_q4k_scale_min(j, w + 4, &sc, &mn);
            const float d1 = d * (float)sc, m1 = dmin * (float)mn;
            qf_q4k_scale_min(j + 1, w + 4, &sc, &mn);
            const float d2 = d * (float)sc, m2 = dmin * (float)mn;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 15) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

/* Q6_K value e (0..255) of a block, as an int in [-32, 31]. */
static inline int q6k_val(const uint8_t *w, int e) {
    const uint8_t *ql = w + 64 * (e / 128), *qh = w + 128 + 32 * (e / 128);
    int h = e % 128, l = h % 32, g = h / 32; // g: which of the four 32-runs
    int lo = g & 1 ? ql[l + 32] : ql[l];
    lo = g & 2 ? lo >> 4 : lo & 15;
    return (lo | (((qh[l] >> (2 * g)) & 3) << 4)) - 32;
}

static void deq_q6_k(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK_K; b++, w += Q6_K_BYTES, y += QK_K) {
        const float d = lc_f16_to_f32(qf_rd16(w + 208));
        const int8_t *sc = (const int8_t *)(w + 192);
        for (int e = 0; e < QK_K; e++) y[e] = d * (float)sc[e / 16] * (float)q6k_val(w, e);
    }
}

/* Elements per block of each type (qf_type_index order). */
static const int qf_block_elems[QF_NTYPES] = {
    [QF_F32] = 1,   [QF_F16] = 1,   [QF_BF16] = 1,    [QF_Q4_0] = QK,  [QF_Q4_1] = QK,
    [QF_Q5_0] = QK, [QF_Q8_0] = QK, [QF_Q4_K] = QK_K, [QF_Q6_K] = QK_K};

int ops_w_dequantize(int type, const void *src, float *dst, size_t n) {
    const int ti = qf_type_index(type);
    if (ti < 0) return LC_EUNSUPPORTED;
    if (n % (size_t)qf_block_elems[ti]) return LC_EINVAL;
    qf_kernels_t k;
    qf_kernels_scalar(&k);
    /* The kernels take an int row length: go in slices of 2^20 elements (a
     * multiple of every block size). */
    const size_t slice = (size_t)1 << 20;
    const uint8_t *w = src;
    while (n) {
        const int m = (int)(n < slice ? n : slice);
        k.dequant[ti](w, dst, m);
        w += ops_w_row_bytes(type, m);
        dst += m;
        n -= (size_t)m;
    }
    return 0;
}

/* ---- dot products ------------------------------------------------------------- */
/* f32-activation types: expand 32 weights at a time and multiply in f32. */
#define DOT_F32_BODY(EXPAND)                                                                                           \
    for (int j = 0; j < na; j++) {                                                                                     \
        const float *x = (const float *)((const uint8_t *)a + (size_t)j * astride);                                    \
        double acc = 0;                                                                                                \
        for (int i = 0; i < in; i++) acc += (double)(EXPAND)*x[i];                                                     \
        y[(size_t)j * ldy] = (float)acc;                                                                               \
    }

static void dot_f32(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    const float *wf = (const float *)(const void *)w;
    DOT_F32_BODY(wf[i])
}

static void dot_f16(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    DOT_F32_BODY(lc_f16_to_f32(qf_rd16(w + 2 * i)))
}

static void dot_bf16(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    DOT_F32_BODY(lc_bf16_to_f32(qf_rd16(w + 2 * i)))
}

#define ACT(T, j) ((const T *)(const void *)((const uint8_t *)a + (size_t)(j)*astride))

static void dot_q4_0(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8b_t *x = ACT(q8b_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK; b++, wb += Q4_0_BYTES, x++) {
            int s = 0;
            for (int i = 0; i < QK / 2; i++) s += (wb[2 + i] & 15) * x->q[i] + (wb[2 + i] >> 4) * x->q[i + 16];
            /* weights are nibble - 8: Σ(q-8)·a = Σq·a - 8·Σa */
            acc += lc_f16_to_f32(qf_rd16(wb)) * (x->d * (float)s - 8.0f * x->s);
        }
        y[(size_t)j * ldy] = acc;
    }
}

static void dot_q4_1(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8b_t *x = ACT(q8b_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK; b++, wb += Q4_1_BYTES, x++) {
            int s = 0;
            for (int i = 0; i < QK / 2; i++) s += (wb[4 + i] & 15) * x->q[i] + (wb[4 + i] >> 4) * x->q[i + 16];
            acc += lc_f16_to_f32(qf_rd16(wb)) * x->d * (float)s + lc_f16_to_f32(qf_rd16(wb + 2)) * x->s;
        }
        y[(size_t)j * ldy] = acc;
    }
}

static void dot_q5_0(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8b_t *x = ACT(q8b_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK; b++, wb += Q5_0_BYTES, x++) {
            int s = 0;
            for (int i = 0; i < QK; i++) s += qf_q5_0_val(wb, i) * x->q[i];
            /* weights are q - 16: Σ(q-16)·a = Σq·a - 16·Σa */
            acc += lc_f16_to_f32(qf_rd16(wb)) * (x->d * (float)s - 16.0f * x->s);
        }
        y[(size_t)j * ldy] = acc;
    }
}

static void dot_q8_0(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8b_t *x = ACT(q8b_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK; b++, wb += Q8_0_BYTES, x++) {
            int s = 0;
            for (int i = 0; i < QK; i++) s += (int8_t)wb[2 + i] * x->q[i];
            acc += lc_f16_to_f32(qf_rd16(wb)) * x->d * (float)s;
        }
        y[(size_t)j * ldy] = acc;
    }
}

static void dot_q4_k(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8k_t *x = ACT(q8k_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK_K; b++, wb += Q4_K_BYTES, x++) {
            int sq = 0, sm = 0; // Σ sc·(q·a) and Σ mn·(Σa) over the sub-blocks
            for (int k = 0; k < 8; k++) {
                int sc, mn, s = 0;
                qf_q4k_scale_min(k, wb + 4, &sc, &mn);
                const uint8_t *q = wb + 16 + 32 * (k / 2);
                for (int i = 0; i < 32; i++) s += (k & 1 ? q[i] >> 4 : q[i] & 15) * x->q[32 * k + i];
                sq += sc * s;
                sm += mn * (x->bsum[2 * k] + x->bsum[2 * k + 1]);
            }
            acc += x->d * (lc_f16_to_f32(qf_rd16(wb)) * (float)sq - lc_f16_to_f32(qf_rd16(wb + 2)) * (float)sm);
        }
        y[(size_t)j * ldy] = acc;
    }
}

static void dot_q6_k(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {
    for (int j = 0; j < na; j++) {
        const q8k_t *x = ACT(q8k_t, j);
        const uint8_t *wb = w;
        float acc = 0;
        for (int b = 0; b < in / QK_K; b++, wb += Q6_K_BYTES, x++) {
            const int8_t *sc = (const int8_t *)(wb + 192);
            int sq = 0;
            for (int k = 0; k < 16; k++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += q6k_val(wb, 16 * k + i) * x->q[16 * k + i];
                sq += sc[k] * s;
            }
            acc += x->d * lc_f16_to_f32(qf_rd16(wb + 208)) * (float)sq;
        }
        y[(size_t)j * ldy] = acc;
    }
}

void qf_kernels_scalar(qf_kernels_t *k) {
    k->quant_q8b = quant_q8b;
    k->quant_q8k = quant_q8k;
    k->dot[QF_F32] = dot_f32, k->dequant[QF_F32] = deq_f32;
    k->dot[QF_F16] = dot_f16, k->dequant[QF_F16] = deq_f16;
    k->dot[QF_BF16] = dot_bf16, k->dequant[QF_BF16] = deq_bf16;
    k->dot[QF_Q4_0] = dot_q4_0, k->dequant[QF_Q4_0] = deq_q4_0;
    k->dot[QF_Q4_1] = dot_q4_1, k->dequant[QF_Q4_1] = deq_q4_1;
    k->dot[QF_Q5_0] = dot_q5_0, k->dequant[QF_Q5_0] = deq_q5_0;
    k->dot[QF_Q8_0] = dot_q8_0, k->dequant[QF_Q8_0] = deq_q8_0;
    k->dot[QF_Q4_K] = dot_q4_k, k->dequant[QF_Q4_K] = deq_q4_k;
    k->dot[QF_Q6_K] = dot_q6_k, k->dequant[QF_Q6_K] = deq_q6_k;
    qf_pack_kernels_scalar(k);
}
