/* AVX-512 kernels of the quantized matmul's 8-bit-activation path (decode).
 * Compiled through function attributes only, like qdot_avx2.c; matmul.c
 * installs them after CPU detection reports every feature below.
 * They start from the AVX2 table and replace the Q4_0 / Q4_1 / Q8_0 / Q4_K /
 * Q6_K dot products; the activation quantizers stay AVX2, so the activation
 * blocks are the same bytes on both sets.
 *
 * What is exploited:
 *  - 32-block types (Q4_0, Q4_1, Q8_0): two blocks per 512-bit vector. The
 *    unsigned-weight · int8-activation dot is one VNNI _mm512_dpbusd_epi32
 *    (AVX2 needs maddubs + madd against ones). Both blocks' scales and
 *    offset terms come from one 4-lane multiply, (d_w0, m_w0, d_w1, m_w1) ·
 *    (d_a0, s_a0, d_a1, s_a1), and one permute spreads d_w·d_a over the low
 *    and high 256-bit halves, so a block pair costs one convert and one FMA
 *    per activation row. Nibbles unpack with two broadcast loads and one
 *    masked shift (no shuffles). Signed Q8_0 weights use |w| · (a negated
 *    under the mask of negative w). An odd last block runs with the upper
 *    half zeroed.
 *  - K-quants (Q4_K, Q6_K): 64 weights (two or four sub-blocks) per vector;
 *    maddubs to int16, then VNNI _mm512_dpwssd_epi32 multiplies by the
 *    sub-block scales and accumulates in one instruction. Q4_K's 6-bit
 *    scales and mins are decoded four at a time and its min term is a
 *    vector madd against the activation block sums.
 *  - The per-row loops are unrolled, so four rows' accumulators stay in
 *    registers.
 * Integer sums are exact, as in the AVX2 and scalar kernels; only float
 * summation order differs. A row's arithmetic does not depend on how many
 * rows share the call.
 *
 * Measured on a 2-vCPU Sapphire Rapids VM shared with another benchmark job
 * (noisy; AVX2 and AVX-512 interleaved call by call, medians): one row
 * (decode), Q4_1 1.5-1.7x the AVX2 kernels, Q4_0 1.1-1.2x, Q4_K and Q6_K
 * 1.8x; four rows, Q4_1 1.6-1.9x, Q8_0 1.5x. Q8_0 on one row gains nothing:
 * SmolLM2's 30 MB LM head streams from memory either way. SmolLM2-135M Q4_1
 * decode (512-token prompt, 128 tokens, 2 threads, 11 alternating runs):
 * median 31.5 -> 35.6 tok/s (1.13x); the rest of a token is attention,
 * norms and the memory-bound head. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include <string.h>

#include "ops/cpu/qformat.h"

#define TGT_FEATURES "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"
#define TGT __attribute__((target(TGT_FEATURES)))
#define TGT_INLINE __attribute__((target(TGT_FEATURES), always_inline)) static inline

TGT_INLINE float f16(const uint8_t *p) { return _cvtsh_ss(qf_rd16(p)); }

TGT_INLINE __m128i ld128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
TGT_INLINE __m256i ld256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* two 256-bit halves: lo in bits 0..255, hi in 256..511 */
TGT_INLINE __m512i cat256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

TGT_INLINE float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define ACTP(T, j) ((const T *)(const void *)((const uint8_t *)a + (size_t)(j)*astride))

TGT_INLINE uint32_t ld32(const uint8_t *p) { return (uint32_t)qf_rd16(p) | (uint32_t)qf_rd16(p + 2) << 16; }

/* ---- Q4_0 / Q4_1 / Q8_0 against q8b_t ---------------------------------------- */
/* A pair of weight blocks (the second absent when `two` is 0) against one
 * row's pair of activation blocks. wsc = (d_w0, m_w0, d_w1, m_w1), m_w being
 * the per-block offset factor (Q4_0: -8·d_w, Q4_1: m, Q8_0: 0); times the
 * activations' (d_a0, s_a0, d_a1, s_a1) it gives both blocks' scales and
 * offset terms in one multiply. acc gathers d_w·d_a·(q·a) per lane, offs the
 * offsets in lanes 1 and 3. `neg` (Q8_0) marks negative weights: q holds
 * |w| and the activations are negated under it. */
TGT_INLINE void pair_row(__m512 *acc, __m128 *offs, __m512i q, __m128 wsc, const q8b_t *x, const int two,
                         const int neg_on, __mmask64 neg) {
    const __m512i sidx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    double ds[2]; // (d, s) of each block as one 8-byte lane: the blocks are only 4-byte aligned
    memcpy(&ds[0], &x[0].d, sizeof ds[0]);
    __m128 ad = _mm_castpd_ps(_mm_set_sd(ds[0])); // d_a0, s_a0
    __m256i aq = ld256(x[0].q);
    __m512i av;
    if (two) {
        memcpy(&ds[1], &x[1].d, sizeof ds[1]);
        ad = _mm_castpd_ps(_mm_loadh_pd(_mm_castps_pd(ad), &ds[1]));
        av = cat256(aq, ld256(x[1].q));
    } else {
        av = _mm512_zextsi256_si512(aq);
    }
    if (neg_on) av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
    const __m128 sc = _mm_mul_ps(wsc, ad);
    if (!neg_on) *offs = _mm_add_ps(*offs, sc);
    const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av);
    *acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(sidx, _mm512_castps128_ps512(sc)), _mm512_cvtepi32_ps(p), *acc);
}

/* kind: 0 = Q4_0, 1 = Q4_1, 2 = Q8_0. */
TGT_INLINE void pair_w(const uint8_t *w, const int kind, const int two, __m512i *q, __m128 *wsc, __mmask64 *neg) {
    const int bytes = kind == 0 ? Q4_0_BYTES : kind == 1 ? Q4_1_BYTES : Q8_0_BYTES;
    const uint8_t *w1 = w + bytes;
    if (kind == 2) {
        const __m256i lo = ld256(w + 2);
        const __m512i v = two ? cat256(lo, ld256(w1 + 2)) : _mm512_zextsi256_si512(lo);
        *q = _mm512_abs_epi8(v);
        *neg = _mm512_movepi8_mask(v);
    } else {
        /* nibble bytes: block 0 in 128-bit lanes 0-1, block 1 in 2-3; the odd
         * lanes take the high nibbles (q8b_t order: low 16, then high 16) */
        const int qo = kind == 1 ? 4 : 2;
        __m512i v = _mm512_broadcast_i32x4(ld128(w + qo));
        v = two ? _mm512_mask_broadcast_i32x4(v, 0xFF00, ld128(w1 + qo)) : _mm512_maskz_mov_epi32(0x00FF, v);
        v = _mm512_mask_srli_epi64(v, 0xCC, v, 4);
        *q = _mm512_and_si512(v, _mm512_set1_epi8(15));
        *neg = 0;
    }
    /* f16 (d, m) of each block: Q4_1 stores both, Q4_0's m is -8·d */
    const uint32_t h0 = kind == 1 ? ld32(w) : kind == 0 ? qf_rd16(w) * 0x10001u : qf_rd16(w);
    const uint32_t h1 = !two ? 0 : kind == 1 ? ld32(w1) : kind == 0 ? qf_rd16(w1) * 0x10001u : qf_rd16(w1);
    __m128 f = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1));
    if (kind == 0) f = _mm_mul_ps(f, _mm_setr_ps(1.0f, -8.0f, 1.0f, -8.0f));
    *wsc = f;
}

TGT_INLINE void dot_qbx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA, const int kind) {
    __m512 acc[QF_NA];
    __m128 offs[QF_NA];
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps(), offs[j] = _mm_setzero_ps();
    const int bytes = kind == 0 ? Q4_0_BYTES : kind == 1 ? Q4_1_BYTES : Q8_0_BYTES, nb = in / QK;
    int b = 0;
    __m512i q;
    __m128 wsc;
    __mmask64 neg;
    for (; b + 2 <= nb; b += 2, w += 2 * bytes) {
        pair_w(w, kind, 1, &q, &wsc, &neg);
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) pair_row(&acc[j], &offs[j], q, wsc, ACTP(q8b_t, j) + b, 1, kind == 2, neg);
    }
    if (b < nb) {
        pair_w(w, kind, 0, &q, &wsc, &neg);
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) pair_row(&acc[j], &offs[j], q, wsc, ACTP(q8b_t, j) + b, 0, kind == 2, neg);
    }
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) {
        const __m128 o1 = _mm_movehdup_ps(offs[j]), o3 = _mm_shuffle_ps(offs[j], offs[j], _MM_SHUFFLE(3, 3, 3, 3));
        const float o = kind != 2 ? _mm_cvtss_f32(_mm_add_ss(o1, o3)) : 0.0f; // lanes 1 + 3
        y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]) + o;
    }
}

/* ---- K-quants against q8k_t --------------------------------------------------- */
/* Word k of a vector holding the sub-block scales as int16, spread so that
 * each of the vector's 32 words scales the byte pair it sits under. */
TGT_INLINE __m512i spread16(__m512i sc16, __m512i idx) { return _mm512_permutexvar_epi16(idx, sc16); }

TGT_INLINE void dot_q4kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA) {
    __m512 acc[QF_NA];
    __m256 accm[QF_NA]; // dmin·d_a·Σ mn·bsum, per lane
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps(), accm[j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15);
    /* c-th chunk of 64 weights: sub-block 2c in words 0..15, 2c+1 in 16..31 */
    const __m512i idx0 =
        _mm512_set_epi64(0x0001000100010001, 0x0001000100010001, 0x0001000100010001, 0x0001000100010001, 0, 0, 0, 0);
    const __m512i two16 = _mm512_set1_epi16(2);
    for (int b = 0; b < in / QK_K; b++, w += Q4_K_BYTES) {
        const float d = f16(w), dmin = f16(w + 2);
        /* the eight 6-bit scales and mins, four bytes at a time (qf_q4k_scale_min) */
        const uint32_t u0 = ld32(w + 4), u1 = ld32(w + 8), u2 = ld32(w + 12);
        const uint32_t sc_lo = u0 & 0x3f3f3f3fu, sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 2) & 0x30303030u);
        const uint32_t mn_lo = u1 & 0x3f3f3f3fu, mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 2) & 0x30303030u);
        const __m512i sc16 =
            _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)(sc_lo | (uint64_t)sc_hi << 32))));
        const __m128i mn8 = _mm_cvtsi64_si128((long long)(mn_lo | (uint64_t)mn_hi << 32));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8)); // mn[k] under bsum[2k], [2k+1]
        __m512i isum[QF_NA];
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) isum[j] = _mm512_setzero_si512();
        __m512i idx = idx0;
        for (int c = 0; c < 4; c++, idx = _mm512_add_epi16(idx, two16)) {
            const __m256i q = ld256(w + 16 + 32 * c);
            const __m512i u = cat256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            const __m512i s = spread16(sc16, idx);
#pragma GCC unroll 4
            for (int j = 0; j < NA; j++) {
                const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 64 * c;
                const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)xq));
                isum[j] = _mm512_dpwssd_epi32(isum[j], p, s);
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            const __m256i ms = _mm256_madd_epi16(mn16, ld256(x->bsum));
            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d * x->d), _mm512_cvtepi32_ps(isum[j]), acc[j]);
            accm[j] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * x->d), _mm256_cvtepi32_ps(ms), accm[j]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]) - hsum256(accm[j]);
}

TGT_INLINE void dot_q6kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA) {
    __m512 acc[QF_NA];
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    /* 64 weights = four 16-weight sub-blocks, one per 128-bit lane */
    const __m512i idx0 = _mm512_set_epi64(0x0003000300030003, 0x0003000300030003, 0x0002000200020002,
                                          0x0002000200020002, 0x0001000100010001, 0x0001000100010001, 0, 0);
    const __m512i four16 = _mm512_set1_epi16(4);
    for (int b = 0; b < in / QK_K; b++, w += Q6_K_BYTES) {
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = f16(w + 208);
        const __m256i sc16 = _mm256_cvtepi8_epi16(ld128(sc));
        const __m512i sc16z = _mm512_castsi256_si512(sc16);
        __m512i isum[QF_NA];
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) isum[j] = _mm512_setzero_si512();
        __m512i idx = idx0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qhp = w + 128 + 32 * h;
            const __m256i l0 = ld256(ql), l1 = ld256(ql + 32), qh = ld256(qhp);
            const __m256i q0 =
                _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            const __m256i q1 =
                _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            const __m256i q2 =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            const __m512i u[2] = {cat256(q0, q1), cat256(q2, q3)};
            for (int g = 0; g < 2; g++, idx = _mm512_add_epi16(idx, four16)) {
                const __m512i s = spread16(sc16z, idx); // sub-blocks 8h + 4g .. 8h + 4g + 3
#pragma GCC unroll 4
                for (int j = 0; j < NA; j++) {
                    const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 128 * h + 64 * g;
                    const __m512i p = _mm512_maddubs_epi16(u[g], _mm512_loadu_si512((const void *)xq));
                    isum[j] = _mm512_dpwssd_epi32(isum[j], p, s);
                }
            }
        }
#pragma GCC unroll 4
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, ld256(x->bsum)), 5); // 32 · sc · bsum
            const __m512i t = _mm512_sub_epi32(isum[j], _mm512_zextsi256_si512(o));
            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d * x->d), _mm512_cvtepi32_ps(t), acc[j]);
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]);
}

/* ---- packed groups of 16 rows (qformat.h) ------------------------------------------- */
/* One lane per weight row. A block's quant words are unpacked once into
 * eight vectors of 16 lanes x 4 bytes (Q4: low and high nibbles of the four
 * words; Q8_0: the eight words, biased by +128 to unsigned), then every
 * activation row of the call takes eight VNNI dot products against its
 * broadcast 4-byte groups: word i pairs with activation bytes 4i..4i+3
 * (Q4's high nibbles are elements 16 + 4c..: word 4 + c). Offsets are
 * integers (Q4_0: -8·Σa, Q8_0: the bias, -128·Σa); the float part is one
 * FMA per block and row, in block order. */
TGT_INLINE void pdot_x(int in, const uint8_t *wg, const void *a, size_t astride, float *y, size_t ldy, const int NA,
                       const int kind) {
    const int bytes = kind == 0 ? Q4_0_BYTES : kind == 1 ? Q4_1_BYTES : Q8_0_BYTES, nb = in / QK;
    const int qoff = kind == 1 ? 64 : 32, off = kind == 0 ? 8 : kind == 2 ? 128 : 0;
    __m512 acc[QF_PNA], accm[QF_PNA];
#pragma GCC unroll 8
    for (int j = 0; j < NA; j++) acc[j] = accm[j] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(15), bias = _mm512_set1_epi8((char)0x80);
    for (int b = 0; b < nb; b++, wg += (size_t)QF_PACK * bytes) {
        const __m512 dw = _mm512_cvtph_ps(ld256(wg));
        const __m512 mw = kind == 1 ? _mm512_cvtph_ps(ld256(wg + 32)) : _mm512_setzero_ps();
        const uint8_t *q = wg + qoff;
        __m512i wv[8];
        if (kind == 2) {
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) wv[i] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(q + 64 * i)), bias);
        } else {
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i v = _mm512_loadu_si512((const void *)(q + 64 * c));
                wv[c] = _mm512_and_si512(v, m4);
                wv[4 + c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            }
        }
#pragma GCC unroll 8
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            const int32_t *aw = (const int32_t *)(const void *)x->q;
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[0], _mm512_set1_epi32(aw[0]));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[1], _mm512_set1_epi32(aw[1]));
            s0 = _mm512_dpbusd_epi32(s0, wv[2], _mm512_set1_epi32(aw[2]));
            s1 = _mm512_dpbusd_epi32(s1, wv[3], _mm512_set1_epi32(aw[3]));
            s0 = _mm512_dpbusd_epi32(s0, wv[4], _mm512_set1_epi32(aw[4]));
            s1 = _mm512_dpbusd_epi32(s1, wv[5], _mm512_set1_epi32(aw[5]));
            s0 = _mm512_dpbusd_epi32(s0, wv[6], _mm512_set1_epi32(aw[6]));
            s1 = _mm512_dpbusd_epi32(s1, wv[7], _mm512_set1_epi32(aw[7]));
            __m512i s = _mm512_add_epi32(s0, s1);
            if (off) s = _mm512_sub_epi32(s, _mm512_set1_epi32(off * x->sum));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(x->d)), acc[j]);
            if (kind == 1) accm[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(x->s), accm[j]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < NA; j++)
        _mm512_storeu_ps(y + (size_t)j * ldy, kind == 1 ? _mm512_add_ps(acc[j], accm[j]) : acc[j]);
}

#define PDOT_ENTRY(NAME, KIND)                                                                                         \
    TGT static void NAME(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {     \
        switch (na) {                                                                                                  \
        case 1: pdot_x(in, wg, a, astride, y, ldy, 1, KIND); break;                                                    \
        case 2: pdot_x(in, wg, a, astride, y, ldy, 2, KIND); break;                                                    \
        case 3: pdot_x(in, wg, a, astride, y, ldy, 3, KIND); break;                                                    \
        case 4: pdot_x(in, wg, a, astride, y, ldy, 4, KIND); break;                                                    \
        case 5: pdot_x(in, wg, a, astride, y, ldy, 5, KIND); break;                                                    \
        case 6: pdot_x(in, wg, a, astride, y, ldy, 6, KIND); break;                                                    \
        case 7: pdot_x(in, wg, a, astride, y, ldy, 7, KIND); break;                                                    \
        default: pdot_x(in, wg, a, astride, y, ldy, 8, KIND); break;                                                   \
        }                                                                                                              \
    }
PDOT_ENTRY(pdot_q4_0, 0)
PDOT_ENTRY(pdot_q4_1, 1)
PDOT_ENTRY(pdot_q8_0, 2)

/* ---- entry points: one specialisation per activation count ---------------------- */
#define ENTRY(NAME, CALL) QF_DOT_ENTRY(TGT, NAME, CALL)
#define C_Q4_0(N) dot_qbx(in, w, a, astride, na, y, ldy, N, 0)
#define C_Q4_1(N) dot_qbx(in, w, a, astride, na, y, ldy, N, 1)
#define C_Q8_0(N) dot_qbx(in, w, a, astride, na, y, ldy, N, 2)
#define C_Q4_K(N) dot_q4kx(in, w, a, astride, na, y, ldy, N)
#define C_Q6_K(N) dot_q6kx(in, w, a, astride, na, y, ldy, N)
ENTRY(dot_q4_0, C_Q4_0)
ENTRY(dot_q4_1, C_Q4_1)
ENTRY(dot_q8_0, C_Q8_0)
ENTRY(dot_q4_k, C_Q4_K)
ENTRY(dot_q6_k, C_Q6_K)

void qf_kernels_avx512(qf_kernels_t *k) {
    qf_kernels_avx2(k);
    k->dot[QF_Q4_0] = dot_q4_0;
    k->dot[QF_Q4_1] = dot_q4_1;
    k->dot[QF_Q8_0] = dot_q8_0;
    k->dot[QF_Q4_K] = dot_q4_k;
    k->dot[QF_Q6_K] = dot_q6_k;
    k->pdot[QF_Q4_0] = pdot_q4_0;
    k->pdot[QF_Q4_1] = pdot_q4_1;
    k->pdot[QF_Q8_0] = pdot_q8_0;
}

#else
#include "ops/cpu/qformat.h"
void qf_kernels_avx512(qf_kernels_t *k) { (void)k; }
#endif
