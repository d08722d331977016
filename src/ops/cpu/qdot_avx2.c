/* AVX2 kernels of the quantized matmul. Compiled for AVX2+FMA+F16C through
 * function attributes only (the rest of the build stays generic); matmul.c
 * installs them after CPU detection (__builtin_cpu_supports, and CPUID for
 * F16C) says the CPU has all three.
 *
 * Integer dot products: 4-, 5- or 6-bit weights are unpacked to unsigned
 * bytes and multiplied with the int8 activations by _mm256_maddubs_epi16
 * (byte pairs summed to int16, which cannot saturate: 2·63·127 < 2^15), then
 * widened by _mm256_madd_epi16 against ones or the sub-block scales. Signed
 * Q8_0 weights use |w| · (a with w's sign). Each kernel serves up to QF_NA
 * activation rows per weight row, unpacking every weight block once. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "ops/cpu/qformat.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define TGT_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

TGT_INLINE float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TGT_INLINE int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

TGT_INLINE float f16(const uint8_t *p) { return _cvtsh_ss(qf_rd16(p)); }

/* 16 bytes of nibbles → 32 unsigned bytes: low nibbles first, then high. */
TGT_INLINE __m256i nibbles32(const uint8_t *p) {
    const __m128i q = _mm_loadu_si128((const __m128i *)(const void *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

/* Q5_0: the 32 weights of a block as unsigned bytes 0..31 in weight order,
 * the fifth bit of weight i (bit i of the 4 qh bytes) spread to byte i. */
TGT_INLINE __m256i q5_0_bytes(const uint8_t *w) {
    uint32_t qh;
    memcpy(&qh, w + 2, 4);
    const __m256i pick = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick), bit);
    const __m256i hi = _mm256_and_si256(_mm256_cmpeq_epi8(b, bit), _mm256_set1_epi8(16));
    return _mm256_or_si256(nibbles32(w + 6), hi);
}

/* unsigned bytes u · signed bytes s, summed per 32-bit lane */
TGT_INLINE __m256i dot_us(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

#define ACTP(T, j) ((const T *)(const void *)((const uint8_t *)a + (size_t)(j)*astride))

/* ---- activation quantization ------------------------------------------------ */
/* Same arithmetic as the scalar version (x * (1/d), round to nearest even),
 * so both produce identical blocks. */
TGT static void quant_q8b(const float *x, q8b_t *y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < n / QK; b++, x += QK, y++) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float d = _mm_cvtss_f32(h) / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        const int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(void *)y->q, _mm256_permutevar8x32_epi32(p, perm));
        y->d = d;
        y->s = d * (float)sum;
        y->sum = sum;
    }
}

TGT static void quant_q8k(const float *x, q8k_t *y, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < n / QK_K; b++, x += QK_K, y++) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < QK_K; i += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float d = _mm_cvtss_f32(h) / 127.0f, id = d > 0 ? 1.0f / d : 0.0f;
        const __m256 vid = _mm256_set1_ps(id);
        for (int i = 0; i < QK_K; i += 32) {
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vid));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vid));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vid));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vid));
            y->bsum[i / 16] = (int16_t)hsum_epi32(_mm256_add_epi32(i0, i1));
            y->bsum[i / 16 + 1] = (int16_t)hsum_epi32(_mm256_add_epi32(i2, i3));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256((__m256i *)(void *)(y->q + i), _mm256_permutevar8x32_epi32(p, perm));
        }
        y->d = d;
    }
}

/* ---- Q4_0 / Q4_1 / Q8_0 against q8b_t ---------------------------------------- */
/* The acc vectors gather d_w·d_a·(q·a) per lane; the scalar `off` gathers the
 * per-block offset terms (Q4_0: -8·d_w·s_a, Q4_1: m_w·s_a). */
TGT_INLINE void dot_q4x(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA, const int is_q4_1) {
    __m256 acc[QF_NA];
    float off[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps(), off[j] = 0;
    const int bytes = is_q4_1 ? Q4_1_BYTES : Q4_0_BYTES, nb = in / QK;
    for (int b = 0; b < nb; b++, w += bytes) {
        const float dw = f16(w), mw = is_q4_1 ? f16(w + 2) : -8.0f * dw;
        const __m256i q = nibbles32(w + (is_q4_1 ? 4 : 2));
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            const __m256i p = dot_us(q, _mm256_loadu_si256((const __m256i *)(const void *)x->q));
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(p), acc[j]);
            off[j] += mw * x->s;
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = hsum_ps(acc[j]) + off[j];
}

/* As dot_q4x for Q5_0: unsigned 5-bit values, offset -16·d_w·s_a. */
TGT_INLINE void dot_q5x(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA) {
    __m256 acc[QF_NA];
    float off[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps(), off[j] = 0;
    for (int b = 0; b < in / QK; b++, w += Q5_0_BYTES) {
        const float dw = f16(w), mw = -16.0f * dw;
        const __m256i q = q5_0_bytes(w);
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            const __m256i p = dot_us(q, _mm256_loadu_si256((const __m256i *)(const void *)x->q));
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(p), acc[j]);
            off[j] += mw * x->s;
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = hsum_ps(acc[j]) + off[j];
}

TGT_INLINE void dot_q8x(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA) {
    __m256 acc[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps();
    for (int b = 0; b < in / QK; b++, w += Q8_0_BYTES) {
        const float dw = f16(w);
        const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(w + 2)), aq = _mm256_abs_epi8(q);
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            const __m256i s = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(const void *)x->q), q);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d), _mm256_cvtepi32_ps(dot_us(aq, s)), acc[j]);
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = hsum_ps(acc[j]);
}

/* ---- K-quants against q8k_t --------------------------------------------------- */
TGT_INLINE void dot_q4kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA) {
    __m256 acc[QF_NA];
    float off[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps(), off[j] = 0;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int b = 0; b < in / QK_K; b++, w += Q4_K_BYTES) {
        const float d = f16(w), dmin = f16(w + 2);
        int sc[8], mn[8];
        for (int k = 0; k < 8; k++) qf_q4k_scale_min(k, w + 4, &sc[k], &mn[k]);
        __m256i isum[QF_NA];
        for (int j = 0; j < NA; j++) isum[j] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(w + 16 + 32 * c));
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i s_lo = _mm256_set1_epi16((short)sc[2 * c]), s_hi = _mm256_set1_epi16((short)sc[2 * c + 1]);
            for (int j = 0; j < NA; j++) {
                const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 64 * c;
                const __m256i p_lo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(const void *)xq));
                const __m256i p_hi =
                    _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(const void *)(xq + 32)));
                isum[j] = _mm256_add_epi32(
                    isum[j], _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi)));
            }
        }
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            int sm = 0;
            for (int k = 0; k < 8; k++) sm += mn[k] * (x->bsum[2 * k] + x->bsum[2 * k + 1]);
            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * x->d), _mm256_cvtepi32_ps(isum[j]), acc[j]);
            off[j] -= dmin * x->d * (float)sm;
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = hsum_ps(acc[j]) + off[j];
}

TGT_INLINE void dot_q6kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA) {
    __m256 acc[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
    for (int b = 0; b < in / QK_K; b++, w += Q6_K_BYTES) {
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = f16(w + 208);
        /* Σ_k sc_k · bsum_k, for the -32 offset of every weight */
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)sc));
        __m256i isum[QF_NA];
        for (int j = 0; j < NA; j++) isum[j] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qhp = w + 128 + 32 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(const void *)qhp);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            for (int g = 0; g < 4; g++) {
                const int k = 8 * h + 2 * g; // sub-blocks k (bytes 0..15) and k+1 (16..31)
                const __m256i s = _mm256_set_m128i(_mm_set1_epi16(sc[k + 1]), _mm_set1_epi16(sc[k]));
                for (int j = 0; j < NA; j++) {
                    const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 128 * h + 32 * g;
                    const __m256i p = _mm256_maddubs_epi16(q[g], _mm256_loadu_si256((const __m256i *)(const void *)xq));
                    isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(p, s));
                }
            }
        }
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            const __m256i bs = _mm256_loadu_si256((const __m256i *)(const void *)x->bsum);
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5); // 32 · sc · bsum
            acc[j] =
                _mm256_fmadd_ps(_mm256_set1_ps(d * x->d), _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[j], o)), acc[j]);
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = hsum_ps(acc[j]);
}

/* ---- f16 / bf16 / f32 against f32 activations ---------------------------------- */
TGT_INLINE __m256 ld_f16(const uint8_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
}
TGT_INLINE __m256 ld_bf16(const uint8_t *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p)), 16));
}
TGT_INLINE __m256 ld_f32(const uint8_t *p) { return _mm256_loadu_ps((const float *)(const void *)p); }

#define DOT_FX(NAME, LOAD, ESZ, SCALAR)                                                                                \
    TGT_INLINE void NAME(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,        \
                         const int NA) {                                                                               \
        __m256 acc[QF_NA];                                                                                             \
        for (int j = 0; j < NA; j++) acc[j] = _mm256_setzero_ps();                                                     \
        int i = 0;                                                                                                     \
        for (; i + 8 <= in; i += 8) {                                                                                  \
            const __m256 wv = LOAD(w + (size_t)ESZ * i);                                                               \
            for (int j = 0; j < NA; j++) acc[j] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(ACTP(float, j) + i), acc[j]);    \
        }                                                                                                              \
        for (int j = 0; j < NA; j++) {                                                                                 \
            float s = hsum_ps(acc[j]);                                                                                 \
            for (int t = i; t < in; t++) s += (SCALAR)*ACTP(float, j)[t];                                              \
            y[(size_t)j * ldy] = s;                                                                                    \
        }                                                                                                              \
    }
DOT_FX(dot_f16x, ld_f16, 2, lc_f16_to_f32(qf_rd16(w + 2 * t)))
DOT_FX(dot_bf16x, ld_bf16, 2, lc_bf16_to_f32(qf_rd16(w + 2 * t)))
DOT_FX(dot_f32x, ld_f32, 4, ((const float *)(const void *)w)[t])

/* ---- row expansion (the f32 panels of prefill) ---------------------------------- */
/* Bit-exact with the scalar versions: the same single products and sums,
 * mul and add kept separate (no FMA contraction in ISO C mode). */
TGT_INLINE void store_u8x32(float *y, __m256i q, __m256 d, __m256 m) {
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++)
        _mm256_storeu_ps(y + 8 * k,
                         _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[k])), d), m));
}

TGT static void deq_q4_1(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q4_1_BYTES, y += QK)
        store_u8x32(y, nibbles32(w + 4), _mm256_set1_ps(f16(w)), _mm256_set1_ps(f16(w + 2)));
}

TGT static void deq_q4_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q4_0_BYTES, y += QK) {
        const __m256i q = _mm256_sub_epi8(nibbles32(w + 2), _mm256_set1_epi8(8));
        const __m256 d = _mm256_set1_ps(f16(w));
        const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[k])), d));
    }
}

TGT static void deq_q5_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q5_0_BYTES, y += QK) {
        const __m256i q = _mm256_sub_epi8(q5_0_bytes(w), _mm256_set1_epi8(16));
        const __m256 d = _mm256_set1_ps(f16(w));
        const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[k])), d));
    }
}

TGT static void deq_q8_0(const uint8_t *w, float *y, int in) {
    for (int b = 0; b < in / QK; b++, w += Q8_0_BYTES, y += QK) {
        const __m256 d = _mm256_set1_ps(f16(w));
        for (int k = 0; k < 4; k++)
            _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                                          (const __m128i *)(const void *)(w + 2 + 8 * k)))),
                                                      d));
    }
}

TGT static void deq_f16(const uint8_t *w, float *y, int in) {
    int i = 0;
    for (; i + 8 <= in; i += 8) _mm256_storeu_ps(y + i, ld_f16(w + 2 * i));
    for (; i < in; i++) y[i] = lc_f16_to_f32(qf_rd16(w + 2 * i));
}

/* ---- packed groups of 16 rows (qformat.h) ------------------------------------------- */
/* Each half of the group (rows 0-7, 8-15) in turn, one 32-bit lane per row:
 * a block's quant words unpack once per half and serve every activation row.
 * Q4: maddubs of the unsigned nibbles against the broadcast activation
 * words, all eight summed in int16 (each at most 2·15·128, eight of them
 * below 2^15), widened once; the Q4_0 offset -8·Σa as an integer. Q8_0:
 * |w| against a with w's sign, widened per word. Then per block and row one
 * FMA, in block order: the same integers and the same float chain as the
 * AVX-512 kernels, so both sets give the same bits. */
TGT_INLINE void pdot_half(int in, const uint8_t *wg, const void *a, size_t astride, float *y, size_t ldy, const int NA,
                          const int kind, const int h) {
    const int bytes = kind == 0 ? Q4_0_BYTES : kind == 1 ? Q4_1_BYTES : Q8_0_BYTES, nb = in / QK;
    const int qoff = kind == 1 ? 64 : 32;
    __m256 acc[4], accm[4];
    for (int j = 0; j < NA; j++) acc[j] = accm[j] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    wg += 32 * h; // the d / m / quant words of rows 8h..8h+7 sit 16 or 32 bytes in
    for (int b = 0; b < nb; b++, wg += (size_t)QF_PACK * bytes) {
        const uint8_t *u = wg - 32 * h;
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(u + 16 * h)));
        const __m256 mw =
            kind == 1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(u + 32 + 16 * h))) : dw;
        const uint8_t *q = u + qoff + 32 * h;
        __m256i s[4];
        if (kind == 2) {
            for (int j = 0; j < NA; j++) s[j] = _mm256_setzero_si256();
            for (int c = 0; c < 8; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * c));
                const __m256i av = _mm256_abs_epi8(v);
                for (int j = 0; j < NA; j++) {
                    const int32_t *aw = (const int32_t *)(const void *)(ACTP(q8b_t, j) + b)->q;
                    const __m256i sa = _mm256_sign_epi8(_mm256_set1_epi32(aw[c]), v);
                    s[j] = _mm256_add_epi32(s[j], _mm256_madd_epi16(_mm256_maddubs_epi16(av, sa), ones));
                }
            }
        } else {
            __m256i s16[4];
            for (int j = 0; j < NA; j++) s16[j] = _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * c));
                const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                for (int j = 0; j < NA; j++) {
                    const int32_t *aw = (const int32_t *)(const void *)(ACTP(q8b_t, j) + b)->q;
                    s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(lo, _mm256_set1_epi32(aw[c])));
                    s16[j] = _mm256_add_epi16(s16[j], _mm256_maddubs_epi16(hi, _mm256_set1_epi32(aw[4 + c])));
                }
            }
            for (int j = 0; j < NA; j++) {
                s[j] = _mm256_madd_epi16(s16[j], ones);
                if (kind == 0) s[j] = _mm256_sub_epi32(s[j], _mm256_set1_epi32(8 * (ACTP(q8b_t, j) + b)->sum));
            }
        }
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[j]), _mm256_mul_ps(dw, _mm256_set1_ps(x->d)), acc[j]);
            if (kind == 1) accm[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(x->s), accm[j]);
        }
    }
    for (int j = 0; j < NA; j++)
        _mm256_storeu_ps(y + (size_t)j * ldy + 8 * h, kind == 1 ? _mm256_add_ps(acc[j], accm[j]) : acc[j]);
}

TGT_INLINE void pdot_x(int in, const uint8_t *wg, const void *a, size_t astride, float *y, size_t ldy, const int NA,
                       const int kind) {
    pdot_half(in, wg, a, astride, y, ldy, NA, kind, 0);
    pdot_half(in, wg, a, astride, y, ldy, NA, kind, 1);
}

/* A packed group to f32 in the exact path's layout, (in, 16 lanes): per block
 * and half, each byte position t of the four (Q8_0: eight) words shifted
 * down to one value per 32-bit lane; q·d (+ m) with the multiply and the add
 * rounded apart, as the row dequantizers do (the same bits). */
TGT_INLINE void pexpand_x(const uint8_t *wg, int in, float *dst, const int kind) {
    const int bytes = kind == 0 ? Q4_0_BYTES : kind == 1 ? Q4_1_BYTES : Q8_0_BYTES, qoff = kind == 1 ? 64 : 32;
    const __m256i m4 = _mm256_set1_epi32(15), eight = _mm256_set1_epi32(8);
    for (int b = 0; b < in / QK; b++, wg += (size_t)QF_PACK * bytes, dst += QK * QF_PACK)
        for (int h = 0; h < 2; h++) {
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(wg + 16 * h)));
            const __m256 mw =
                kind == 1 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(wg + 32 + 16 * h))) : dw;
            const uint8_t *q = wg + qoff + 32 * h;
            float *o = dst + 8 * h;
            if (kind == 2) {
                for (int c = 0; c < 8; c++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * c));
                    for (int t = 0; t < 4; t++) {
                        const __m256i e = _mm256_srai_epi32(_mm256_sll_epi32(v, _mm_cvtsi32_si128(24 - 8 * t)), 24);
                        _mm256_storeu_ps(o + (4 * c + t) * QF_PACK, _mm256_mul_ps(_mm256_cvtepi32_ps(e), dw));
                    }
                }
                continue;
            }
            for (int c = 0; c < 4; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(q + 64 * c));
                for (int t = 0; t < 8; t++) { // t < 4: low nibble of byte t; t >= 4: high nibble of byte t - 4
                    const int sh = t < 4 ? 8 * t : 8 * (t - 4) + 4, k = t < 4 ? 4 * c + t : 16 + 4 * c + t - 4;
                    __m256i e = _mm256_and_si256(_mm256_srl_epi32(v, _mm_cvtsi32_si128(sh)), m4);
                    if (kind == 0) e = _mm256_sub_epi32(e, eight);
                    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(e), dw);
                    if (kind == 1) f = _mm256_add_ps(f, mw);
                    _mm256_storeu_ps(o + k * QF_PACK, f);
                }
            }
        }
}
TGT static void pexp_q4_0(const uint8_t *wg, int in, float *dst) { pexpand_x(wg, in, dst, 0); }
TGT static void pexp_q4_1(const uint8_t *wg, int in, float *dst) { pexpand_x(wg, in, dst, 1); }
TGT static void pexp_q8_0(const uint8_t *wg, int in, float *dst) { pexpand_x(wg, in, dst, 2); }

/* na up to QF_PNA, four activation rows at a time (AVX2 has 16 registers) */
#define PDOT_ENTRY(NAME, KIND)                                                                                         \
    TGT static void NAME(int in, const uint8_t *wg, const void *a, size_t astride, int na, float *y, size_t ldy) {     \
        for (int j0 = 0; j0 < na; j0 += 4, a = (const uint8_t *)a + 4 * astride, y += 4 * ldy) {                       \
            switch (na - j0) {                                                                                         \
            case 1: pdot_x(in, wg, a, astride, y, ldy, 1, KIND); break;                                                \
            case 2: pdot_x(in, wg, a, astride, y, ldy, 2, KIND); break;                                                \
            case 3: pdot_x(in, wg, a, astride, y, ldy, 3, KIND); break;                                                \
            default: pdot_x(in, wg, a, astride, y, ldy, 4, KIND); break;                                               \
            }                                                                                                          \
        }                                                                                                              \
    }
PDOT_ENTRY(pdot_q4_0, 0)
PDOT_ENTRY(pdot_q4_1, 1)
PDOT_ENTRY(pdot_q8_0, 2)

/* ---- entry points: one specialisation per activation count ---------------------- */
#define ENTRY(NAME, CALL) QF_DOT_ENTRY(TGT, NAME, CALL)
#define C_Q4_0(N) dot_q4x(in, w, a, astride, na, y, ldy, N, 0)
#define C_Q4_1(N) dot_q4x(in, w, a, astride, na, y, ldy, N, 1)
#define C_Q5_0(N) dot_q5x(in, w, a, astride, na, y, ldy, N)
#define C_Q8_0(N) dot_q8x(in, w, a, astride, na, y, ldy, N)
#define C_Q4_K(N) dot_q4kx(in, w, a, astride, na, y, ldy, N)
#define C_Q6_K(N) dot_q6kx(in, w, a, astride, na, y, ldy, N)
#define C_F16(N) dot_f16x(in, w, a, astride, na, y, ldy, N)
#define C_BF16(N) dot_bf16x(in, w, a, astride, na, y, ldy, N)
#define C_F32(N) dot_f32x(in, w, a, astride, na, y, ldy, N)
ENTRY(dot_q4_0, C_Q4_0)
ENTRY(dot_q4_1, C_Q4_1)
ENTRY(dot_q5_0, C_Q5_0)
ENTRY(dot_q8_0, C_Q8_0)
ENTRY(dot_q4_k, C_Q4_K)
ENTRY(dot_q6_k, C_Q6_K)
ENTRY(dot_f16, C_F16)
ENTRY(dot_bf16, C_BF16)
ENTRY(dot_f32, C_F32)

void qf_kernels_avx2(qf_kernels_t *k) {
    k->quant_q8b = quant_q8b;
    k->quant_q8k = quant_q8k;
    k->dot[QF_Q4_0] = dot_q4_0;
    k->dot[QF_Q4_1] = dot_q4_1;
    k->dot[QF_Q5_0] = dot_q5_0;
    k->dot[QF_Q8_0] = dot_q8_0;
    k->dot[QF_Q4_K] = dot_q4_k;
    k->dot[QF_Q6_K] = dot_q6_k;
    k->dot[QF_F16] = dot_f16;
    k->dot[QF_BF16] = dot_bf16;
    k->dot[QF_F32] = dot_f32;
    k->dequant[QF_Q4_0] = deq_q4_0;
    k->dequant[QF_Q4_1] = deq_q4_1;
    k->dequant[QF_Q5_0] = deq_q5_0;
    k->dequant[QF_Q8_0] = deq_q8_0;
    k->dequant[QF_F16] = deq_f16;
    k->pdot[QF_Q4_0] = pdot_q4_0, k->pexpand[QF_Q4_0] = pexp_q4_0;
    k->pdot[QF_Q4_1] = pdot_q4_1, k->pexpand[QF_Q4_1] = pexp_q4_1;
    k->pdot[QF_Q8_0] = pdot_q8_0, k->pexpand[QF_Q8_0] = pexp_q8_0;
}

#else
#include "ops/cpu/qformat.h"
void qf_kernels_avx2(qf_kernels_t *k) { (void)k; }
#endif
