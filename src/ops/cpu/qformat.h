/* Private to src/ops/cpu/: the ggml block layouts the quantized matmul reads
 * in place, the 8-bit activation blocks it multiplies them with, and the
 * kernel table that run-time CPU detection fills (scalar, AVX2 or AVX-512).
 *
 * Weight blocks are read byte-wise (they are packed: 18, 20, 22, 34, 144 and
 * 210 bytes, so nothing is aligned). Activation blocks are ours and aligned. */
#ifndef LC_OPS_QFORMAT_H
#define LC_OPS_QFORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/f16.h"
#include "ops/ops.h"

#define QK 32    // weights per Q4_0 / Q4_1 / Q5_0 / Q8_0 block, activations per q8b_t
#define QK_K 256 // weights per K-quant super-block, activations per q8k_t

/* Bytes per block: Q4_0 = f16 d + 16 nibble bytes; Q4_1 adds f16 m; Q5_0 =
 * f16 d + 4 bytes of fifth bits (bit j for weight j) + 16 nibble bytes; Q8_0 =
 * f16 d + 32 int8; Q4_K = f16 d, dmin + 12 scale bytes + 128 nibble bytes;
 * Q6_K = 128 low-nibble + 64 high-2-bit bytes + 16 int8 scales + f16 d. */
#define Q4_0_BYTES 18
#define Q4_1_BYTES 20
#define Q5_0_BYTES 22
#define Q8_0_BYTES 34
#define Q4_K_BYTES 144
#define Q6_K_BYTES 210

/* 32 activations as int8 against one scale: x[i] ≈ d * q[i]. s = d * Σq[i]
 * carries the block sum that Q4_0's offset and Q4_1's min need; sum = Σq[i]
 * is the same sum exact, for the packed kernels' integer offsets. */
typedef struct {
    float d;
    float s;
    int8_t q[QK];
    int32_t sum;
} q8b_t;

/* 256 activations as int8 against one scale, with the sum of each 16 (the
 * K-quants' sub-block mins and Q6_K's offset need them). */
typedef struct {
    float d;
    int16_t bsum[QK_K / 16];
    int8_t q[QK_K];
} q8k_t;

/* ---- f16 --------------------------------------------------------------------- */
/* A little-endian 16-bit field of a packed block (a scale: convert it with
 * common/f16.h's lc_f16_to_f32). */
static inline uint16_t qf_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Q4_K's 12 scale bytes: eight 6-bit scales and eight 6-bit mins. */
static inline void qf_q4k_scale_min(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q5_0's 32 weights as unsigned bytes 0..31 (the stored value minus -16):
 * low nibbles are weights 0..15, high nibbles 16..31, bit j of qh the fifth
 * bit of weight j. */
static inline int qf_q5_0_val(const uint8_t *w, int j) {
    const uint32_t qh = (uint32_t)w[2] | (uint32_t)w[3] << 8 | (uint32_t)w[4] << 16 | (uint32_t)w[5] << 24;
    const int lo = j < QK / 2 ? w[6 + j] & 15 : w[6 + j - QK / 2] >> 4;
    return lo | (int)((qh >> j) & 1) << 4;
}

/* ---- kernels ------------------------------------------------------------------- */
/* Dense indices of the weight types (qf_type_index). */
enum { QF_F32, QF_F16, QF_BF16, QF_Q4_0, QF_Q4_1, QF_Q5_0, QF_Q8_0, QF_Q4_K, QF_Q6_K, QF_NTYPES };

/* Which activation blocks a weight type multiplies against. */
enum { QF_ACT_F32, QF_ACT_Q8B, QF_ACT_Q8K };

/* y[j * ldy] = dot(weight row w, activation row j) for j < na (na <= QF_NA).
 * Activation row j starts at a + j * astride bytes; `in` is the row length. */
#define QF_NA 4
typedef void (*qf_dot_fn)(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy);

/* A qf_dot_fn named NAME with target attribute ATTR that dispatches na to a
 * compile-time row count: CALL(N) expands the kernel body for N rows. */
#define QF_DOT_ENTRY(ATTR, NAME, CALL)                                                                                 \
    ATTR static void NAME(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) {     \
        switch (na) {                                                                                                  \
        case 1: CALL(1); break;                                                                                        \
        case 2: CALL(2); break;                                                                                        \
        case 3: CALL(3); break;                                                                                        \
        default: CALL(4); break;                                                                                       \
        }                                                                                                              \
    }

/* ---- packed weights (ops_w_pack) ------------------------------------------------ */
/* Q4_0, Q4_1 and Q8_0 matrices whose row count is a multiple of 16 are kept
 * in groups of 16 rows, interleaved block by block, so that one vector
 * instruction works on 16 output rows at once (one 32-bit lane per row) and
 * the 4-byte groups of an activation row are broadcast instead of the 16
 * lanes being summed at the end. Group g (rows 16g..16g+15) takes the bytes
 * the rows took before (16 · row_bytes); in it, block b (columns 32b..32b+31)
 * of all 16 rows is one unit of 16 · block bytes:
 *   d[16]   f16 scale of each row's block;
 *   m[16]   f16 min of each row's block (Q4_1 only);
 *   q       the rows' quant bytes as 4-byte words, word-major: word c of
 *           rows 0..15, then word c + 1: (n_words, 16 rows, 4 bytes), with
 *           the bytes in the file's order (Q4: byte i holds elements i and
 *           i + 16 in its low and high nibble, 4 words; Q8_0: element i, 8
 *           words).
 * So lane r of word c holds, for Q4, elements 4c..4c+3 (low nibbles) and
 * 16+4c..16+4c+3 (high nibbles); for Q8_0, elements 4c..4c+3. */
#define QF_PACK 16
/* Rows of activations a packed kernel serves per call. */
#define QF_PNA 8

/* y[j * ldy + l] = dot(row l of the packed group wg, activation row j), for
 * l < 16 and j < na (na <= QF_PNA). Per (j, l), in every kernel set: one
 * exact integer sum per block (offsets folded in as integers), then in block
 * order acc += (float)isum · (d_w · d_a) (fused on AVX2 / AVX-512), Q4_1's
 * mins in their own sum accm += m_w · s_a, y = acc + accm. Nothing depends
 * on na or on the other rows. */
typedef void (*qf_pdot_fn)(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy);

typedef struct {
    qf_dot_fn dot[QF_NTYPES];
    /* packed groups (NULL: the type is never packed): the dot products, and
     * a group expanded to f32 as qf_pack_expand does, the same values */
    qf_pdot_fn pdot[QF_NTYPES];
    void (*pexpand[QF_NTYPES])(const uint8_t *wg, int in, float *dst);
    /* n activations (a multiple of QK / QK_K) into blocks */
    void (*quant_q8b)(const float *x, q8b_t *y, int n);
    void (*quant_q8k)(const float *x, q8k_t *y, int n);
    /* one weight row of `in` elements to f32 */
    void (*dequant[QF_NTYPES])(const uint8_t *w, float *y, int in);
} qf_kernels_t;

/* Scalar reference kernels (always available). */
void qf_kernels_scalar(qf_kernels_t *k);
/* Overrides what AVX2+FMA+F16C speed up; call only when the CPU has them. */
void qf_kernels_avx2(qf_kernels_t *k);
/* The AVX2 table with the 8-bit-activation dot products replaced by AVX-512
 * VNNI ones; call only when the CPU has AVX-512 F/BW/VL/DQ/VNNI and AVX2. */
void qf_kernels_avx512(qf_kernels_t *k);

/* Packed layout helpers (qpack.c, one implementation for every kernel set):
 * whether a type is packed, the bytes of one block of one row, and a packed
 * group expanded to f32 the way ops__gemm_pack lays out a 16-column group,
 * (in, 16 lanes), each value exactly as the type's row dequantizer gives it. */
int qf_packable(int type);
void qf_pack_expand(int type, const uint8_t *wg, int in, float *dst);
/* Row `row` of a packed matrix to f32 (the same values as the row layout's
 * dequantizer). dst: (w->cols) */
void qf_pack_row(const ops_w_t *w, int row, float *dst);
/* Installs the scalar packed dot products (qf_kernels_scalar calls it). */
void qf_pack_kernels_scalar(qf_kernels_t *k);

/* Dense index of a weight type in the tables above, or -1. */
int qf_type_index(int type);
int qf_act_kind(int type);

#endif
