/* Packed weights (qformat.h, "packed weights"): the in-place rearrangement
 * into groups of 16 rows, reading a row or a whole group back as f32, and
 * the scalar packed dot products (the reference for the AVX2 and AVX-512
 * ones, and what runs without AVX2).
 *
 * Why the layout: the row-wise kernels dot one weight row with up to four
 * activation rows and then sum a vector's lanes, converting and scaling
 * every block of every pair; the packed kernels give each of 16 weight rows
 * a lane, so the sum over the columns is an ordinary vector accumulation,
 * and the unpacked weights of a block serve every activation row of the
 * call. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "ops/cpu/qformat.h"

/* Bytes of one block of one row, and of its quant bytes. */
static int blk_bytes(int type) {
    return type == OPS_W_Q4_0 ? Q4_0_BYTES : type == OPS_W_Q4_1 ? Q4_1_BYTES : Q8_0_BYTES;
}
static int blk_qbytes(int type) { return type == OPS_W_Q8_0 ? QK : QK / 2; }
/* Offset of the quant words in a packed block unit: after d[16] (and m[16]). */
static int unit_qoff(int type) { return type == OPS_W_Q4_1 ? 4 * QF_PACK : 2 * QF_PACK; }

int qf_packable(int type) { return type == OPS_W_Q4_0 || type == OPS_W_Q4_1 || type == OPS_W_Q8_0; }

/* One group: rows (16, row_bytes) in file order → packed, into dst. */
static void pack_group(int type, const uint8_t *src, size_t row_bytes, int nb, uint8_t *dst) {
    const int bytes = blk_bytes(type), qb = blk_qbytes(type), qoff = unit_qoff(type), sc = bytes - qb;
    for (int b = 0; b < nb; b++, dst += (size_t)QF_PACK * bytes) {
        for (int r = 0; r < QF_PACK; r++) {
            const uint8_t *blk = src + (size_t)r * row_bytes + (size_t)b * bytes;
            memcpy(dst + 2 * r, blk, 2);                                // d
            if (sc == 4) memcpy(dst + 2 * QF_PACK + 2 * r, blk + 2, 2); // m
            for (int c = 0; c < qb / 4; c++) memcpy(dst + qoff + (size_t)(c * QF_PACK + r) * 4, blk + sc + 4 * c, 4);
        }
    }
}

int ops_w_pack(ops_w_t *w) {
    if (w->packed) return 1;
    if (!qf_packable(w->type) || w->rows <= 0 || w->rows % QF_PACK || w->cols % QK) return 0;
    const size_t gbytes = (size_t)QF_PACK * w->row_bytes;
    uint8_t *tmp = malloc(gbytes);
    if (!tmp) return LC_ENOMEM;
    uint8_t *data = (uint8_t *)(uintptr_t)w->data;
    for (int g = 0; g < w->rows / QF_PACK; g++) {
        uint8_t *grp = data + (size_t)g * gbytes;
        memcpy(tmp, grp, gbytes);
        pack_group(w->type, tmp, w->row_bytes, w->cols / QK, grp);
    }
    free(tmp);
    w->packed = 1;
    return 1;
}

/* ---- reading back ------------------------------------------------------------- */
/* Element i (0..31) of lane r's block in a packed unit, as the row
 * dequantizers compute it: Q4_0 (q - 8)·d, Q4_1 q·d + m, Q8_0 q·d. */
static inline float unit_val(int type, const uint8_t *u, int r, int i) {
    const float d = lc_f16_to_f32(qf_rd16(u + 2 * r));
    const uint8_t *q = u + unit_qoff(type);
    if (type == OPS_W_Q8_0) return (float)(int8_t)q[(size_t)((i / 4) * QF_PACK + r) * 4 + i % 4] * d;
    const int e = i % 16, nib = (q[(size_t)((e / 4) * QF_PACK + r) * 4 + e % 4] >> (i < 16 ? 0 : 4)) & 15;
    if (type == OPS_W_Q4_0) return (float)(nib - 8) * d;
    return (float)nib * d + lc_f16_to_f32(qf_rd16(u + 2 * QF_PACK + 2 * r));
}

void qf_pack_row(const ops_w_t *w, int row, float *dst) {
    const int bytes = blk_bytes(w->type), r = row % QF_PACK;
    const uint8_t *u = (const uint8_t *)w->data + (size_t)(row / QF_PACK) * QF_PACK * w->row_bytes;
    for (int b = 0; b < w->cols / QK; b++, u += (size_t)QF_PACK * bytes)
        for (int i = 0; i < QK; i++) dst[b * QK + i] = unit_val(w->type, u, r, i);
}

void qf_pack_expand(int type, const uint8_t *wg, int in, float *dst) {
    const int bytes = blk_bytes(type), qb = blk_qbytes(type);
    const uint8_t *q = wg + unit_qoff(type);
    for (int b = 0; b < in / QK; b++, wg += (size_t)QF_PACK * bytes, q += (size_t)QF_PACK * bytes)
        for (int r = 0; r < QF_PACK; r++) {
            const float d = lc_f16_to_f32(qf_rd16(wg + 2 * r));
            const float m = type == OPS_W_Q4_1 ? lc_f16_to_f32(qf_rd16(wg + 2 * QF_PACK + 2 * r)) : 0.0f;
            float *o = dst + (size_t)b * QK * QF_PACK + r;
            for (int e = 0; e < qb; e++) {
                const uint8_t v = q[(size_t)((e / 4) * QF_PACK + r) * 4 + e % 4];
                if (type == OPS_W_Q8_0) {
                    o[(size_t)e * QF_PACK] = (float)(int8_t)v * d;
                } else if (type == OPS_W_Q4_0) {
                    o[(size_t)e * QF_PACK] = (float)((v & 15) - 8) * d;
                    o[(size_t)(e + 16) * QF_PACK] = (float)((v >> 4) - 8) * d;
                } else {
                    o[(size_t)e * QF_PACK] = (float)(v & 15) * d + m;
                    o[(size_t)(e + 16) * QF_PACK] = (float)(v >> 4) * d + m;
                }
            }
        }
}

/* ---- scalar packed dot products ------------------------------------------------ */
#define ACT(j) ((const q8b_t *)(const void *)((const uint8_t *)a + (size_t)(j)*astride))

static void pdot(int type, int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {
    const int bytes = blk_bytes(type), qoff = unit_qoff(type), nb = in / QK;
    const int off = type == OPS_W_Q4_0 ? 8 : 0; // Q4_0: Σ(q-8)·a = Σq·a - 8·Σa
    for (int r = 0; r < QF_PACK; r++) {
        float acc[QF_PNA] = {0}, accm[QF_PNA] = {0};
        const uint8_t *u = wg;
        for (int b = 0; b < nb; b++, u += (size_t)QF_PACK * bytes) {
            const uint8_t *q = u + qoff;
            int8_t wv[QK]; // this row's block: Q8_0 values, or Q4 nibbles
            if (type == OPS_W_Q8_0) {
                for (int i = 0; i < QK; i++) wv[i] = (int8_t)q[(size_t)((i / 4) * QF_PACK + r) * 4 + i % 4];
            } else {
                for (int i = 0; i < QK / 2; i++) {
                    const int v = q[(size_t)((i / 4) * QF_PACK + r) * 4 + i % 4];
                    wv[i] = (int8_t)(v & 15), wv[i + 16] = (int8_t)(v >> 4);
                }
            }
            const float dw = lc_f16_to_f32(qf_rd16(u + 2 * r));
            const float mw = type == OPS_W_Q4_1 ? lc_f16_to_f32(qf_rd16(u + 2 * QF_PACK + 2 * r)) : 0.0f;
            for (int j = 0; j < na; j++) {
                const q8b_t *x = ACT(j) + b;
                int s = 0;
                for (int i = 0; i < QK; i++) s += wv[i] * x->q[i];
                s -= off * x->sum;
                acc[j] += (float)s * (dw * x->d);
                if (type == OPS_W_Q4_1) accm[j] += mw * x->s;
            }
        }
        for (int j = 0; j < na; j++) y[(size_t)j * ldy + r] = acc[j] + accm[j];
    }
}

static void pdot_q4_0(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {
    pdot(OPS_W_Q4_0, in, wg, a, astride, na, y, ldy);
}
static void pdot_q4_1(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {
    pdot(OPS_W_Q4_1, in, wg, a, astride, na, y, ldy);
}
static void pdot_q8_0(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {
    pdot(OPS_W_Q8_0, in, wg, a, astride, na, y, ldy);
}

static void pexp_q4_0(const uint8_t *wg, int in, float *dst) { qf_pack_expand(OPS_W_Q4_0, wg, in, dst); }
static void pexp_q4_1(const uint8_t *wg, int in, float *dst) { qf_pack_expand(OPS_W_Q4_1, wg, in, dst); }
static void pexp_q8_0(const uint8_t *wg, int in, float *dst) { qf_pack_expand(OPS_W_Q8_0, wg, in, dst); }

void qf_pack_kernels_scalar(qf_kernels_t *k) {
    k->pdot[QF_Q4_0] = pdot_q4_0, k->pexpand[QF_Q4_0] = pexp_q4_0;
    k->pdot[QF_Q4_1] = pdot_q4_1, k->pexpand[QF_Q4_1] = pexp_q4_1;
    k->pdot[QF_Q8_0] = pdot_q8_0, k->pexpand[QF_Q8_0] = pexp_q8_0;
}
