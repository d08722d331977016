/* AVX-512 kernels of the quantized matmul's 8-bit-activation path (decode).
 * Compiled through function attributes only, like qdot_avx2.c; matmul.c
 * installs them after __builtin_cpu_supports reports every feature below.
 * They start from the AVX2 table and replace the Q4_0 / Q4_1 / Q8_0 / Q4_K /
 * Q6_K dot products; the activation quantizers stay AVX2, so the activation
 * blocks are the same bytes on both sets.
 *
 * What is exploited:
 *  - 32-block types (Q4_0, Q4_1, Q8_0): two blocks per 512-bit vector. The
 *    unsigned-weight · int8-activation dot is one VNNI _mm512_dpbusd_epi32
 *    (AVX2 needs maddubs + madd against ones), and the two blocks' scales
 *    d_w·d_a sit in the low and high 256-bit halves of one float vector, so
 *    a block pair costs one convert and one FMA per activation row. Signed
 *    Q8_0 weights use |w| · (a negated where w < 0, by a byte mask). An odd
 *    last block runs alone with the upper half zeroed.
 *  - K-quants (Q4_K, Q6_K): 64 weights (two or four sub-blocks) per vector;
 *    maddubs to int16, then VNNI _mm512_dpwssd_epi32 multiplies by the
 *    sub-block scales and accumulates in one instruction. Integer sums are
 *    exact, as in the AVX2 and scalar kernels.
 * A row's arithmetic does not depend on how many rows share the call.
 *
 * Measured on a 2-vCPU Sapphire Rapids VM (busy machine, medians; see the
 * commit message for the runs): bench_qmatmul Q4_1 n = 1 about 1.3-1.6x the
 * AVX2 kernels; SmolLM2-135M Q4_1 decode about 1.1x tok/s. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "ops/cpu/qformat.h"

#define TGT_FEATURES "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c"
#define TGT __attribute__((target(TGT_FEATURES)))
#define TGT_INLINE __attribute__((target(TGT_FEATURES), always_inline)) static inline

TGT_INLINE float f16(const uint8_t *p) { return _cvtsh_ss(qf_rd16(p)); }

TGT_INLINE __m128i ld128(const void *p) { return _mm_loadu_si128((const __m128i *)p); }
TGT_INLINE __m256i ld256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* two 256-bit halves: lo in bits 0..255, hi in 256..511 */
TGT_INLINE __m512i cat256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
TGT_INLINE __m512 cat_ps(float lo, float hi)
{
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

/* Two blocks' 16 nibble bytes (p0, p1) → 64 unsigned bytes: p0's low
 * nibbles, p0's high nibbles, then the same for p1 (the q8b_t order). */
TGT_INLINE __m512i nibbles64(__m128i q0, __m128i q1)
{
    const __m512i v = _mm512_castsi256_si512(_mm256_set_m128i(q1, q0));
    const __m512i d = _mm512_shuffle_i64x2(v, v, _MM_SHUFFLE(1, 1, 0, 0)); // q0 q0 q1 q1
    const __m512i m = _mm512_set1_epi8(15);
    return _mm512_mask_blend_epi64(0xCC, _mm512_and_si512(d, m), _mm512_and_si512(_mm512_srli_epi16(d, 4), m));
}

#define ACTP(T, j) ((const T *)(const void *)((const uint8_t *)a + (size_t)(j) * astride))

/* ---- Q4_0 / Q4_1 / Q8_0 against q8b_t ---------------------------------------- */
/* acc gathers d_w·d_a·(q·a) per lane, two blocks per vector; the scalar `off`
 * gathers the per-block offset terms (Q4_0: -8·d_w·s_a, Q4_1: m_w·s_a). */
TGT_INLINE void dot_q4x(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA, const int is_q4_1)
{
    __m512 acc[QF_NA];
    float off[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps(), off[j] = 0;
    const int bytes = is_q4_1 ? Q4_1_BYTES : Q4_0_BYTES, qo = is_q4_1 ? 4 : 2, nb = in / QK;
    for (int b = 0; b < nb; b += 2, w += 2 * bytes) {
        const int two = b + 1 < nb;
        const uint8_t *w1 = w + bytes;
        const float dw0 = f16(w), dw1 = two ? f16(w1) : 0.0f;
        const float mw0 = is_q4_1 ? f16(w + 2) : -8.0f * dw0;
        const float mw1 = !two ? 0.0f : is_q4_1 ? f16(w1 + 2) : -8.0f * dw1;
        const __m512i q = nibbles64(ld128(w + qo), two ? ld128(w1 + qo) : _mm_setzero_si128());
        const __m512 dw = cat_ps(dw0, dw1);
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            const __m512i av = cat256(ld256(x[0].q), two ? ld256(x[1].q) : _mm256_setzero_si256());
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, av);
            const __m512 s = _mm512_mul_ps(dw, cat_ps(x[0].d, two ? x[1].d : 0.0f));
            acc[j] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[j]);
            off[j] += mw0 * x[0].s;
            if (two) off[j] += mw1 * x[1].s;
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]) + off[j];
}

TGT_INLINE void dot_q8x(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                        const int NA)
{
    __m512 acc[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps();
    const int nb = in / QK;
    for (int b = 0; b < nb; b += 2, w += 2 * Q8_0_BYTES) {
        const int two = b + 1 < nb;
        const uint8_t *w1 = w + Q8_0_BYTES;
        const __m512i q = cat256(ld256(w + 2), two ? ld256(w1 + 2) : _mm256_setzero_si256());
        const __m512i aq = _mm512_abs_epi8(q);
        const __mmask64 neg = _mm512_movepi8_mask(q);
        const __m512 dw = cat_ps(f16(w), two ? f16(w1) : 0.0f);
        for (int j = 0; j < NA; j++) {
            const q8b_t *x = ACTP(q8b_t, j) + b;
            __m512i av = cat256(ld256(x[0].q), two ? ld256(x[1].q) : _mm256_setzero_si256());
            av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aq, av);
            const __m512 s = _mm512_mul_ps(dw, cat_ps(x[0].d, two ? x[1].d : 0.0f));
            acc[j] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(p), acc[j]);
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]);
}

/* ---- K-quants against q8k_t --------------------------------------------------- */
/* Word k of a vector holding the sub-block scales as int16, spread so that
 * each of the vector's 32 words scales the byte pair it sits under. */
TGT_INLINE __m512i spread16(__m512i sc16, __m512i idx) { return _mm512_permutexvar_epi16(idx, sc16); }

TGT_INLINE void dot_q4kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA)
{
    __m512 acc[QF_NA];
    float off[QF_NA];
    for (int j = 0; j < NA; j++) acc[j] = _mm512_setzero_ps(), off[j] = 0;
    const __m256i m4 = _mm256_set1_epi8(15);
    /* c-th chunk of 64 weights: sub-block 2c in words 0..15, 2c+1 in 16..31 */
    const __m512i idx0 = _mm512_set_epi64(0x0001000100010001, 0x0001000100010001, 0x0001000100010001,
                                          0x0001000100010001, 0, 0, 0, 0);
    const __m512i two16 = _mm512_set1_epi16(2);
    for (int b = 0; b < in / QK_K; b++, w += Q4_K_BYTES) {
        const float d = f16(w), dmin = f16(w + 2);
        int sc[8], mn[8];
        for (int k = 0; k < 8; k++) qf_q4k_scale_min(k, w + 4, &sc[k], &mn[k]);
        const __m512i sc16 = _mm512_castsi128_si512(_mm_setr_epi16((short)sc[0], (short)sc[1], (short)sc[2],
                                                                   (short)sc[3], (short)sc[4], (short)sc[5],
                                                                   (short)sc[6], (short)sc[7]));
        __m512i isum[QF_NA];
        for (int j = 0; j < NA; j++) isum[j] = _mm512_setzero_si512();
        __m512i idx = idx0;
        for (int c = 0; c < 4; c++, idx = _mm512_add_epi16(idx, two16)) {
            const __m256i q = ld256(w + 16 + 32 * c);
            const __m512i u = cat256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
            const __m512i s = spread16(sc16, idx);
            for (int j = 0; j < NA; j++) {
                const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 64 * c;
                const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)xq));
                isum[j] = _mm512_dpwssd_epi32(isum[j], p, s);
            }
        }
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            int sm = 0;
            for (int k = 0; k < 8; k++) sm += mn[k] * (x->bsum[2 * k] + x->bsum[2 * k + 1]);
            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d * x->d), _mm512_cvtepi32_ps(isum[j]), acc[j]);
            off[j] -= dmin * x->d * (float)sm;
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]) + off[j];
}

TGT_INLINE void dot_q6kx(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy,
                         const int NA)
{
    __m512 acc[QF_NA];
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
        for (int j = 0; j < NA; j++) isum[j] = _mm512_setzero_si512();
        __m512i idx = idx0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w + 64 * h, *qhp = w + 128 + 32 * h;
            const __m256i l0 = ld256(ql), l1 = ld256(ql + 32), qh = ld256(qhp);
            const __m256i q0 =
                _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
            const __m256i q1 =
                _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_and_si256(qh, m30));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
            const __m512i u[2] = {cat256(q0, q1), cat256(q2, q3)};
            for (int g = 0; g < 2; g++, idx = _mm512_add_epi16(idx, four16)) {
                const __m512i s = spread16(sc16z, idx); // sub-blocks 8h + 4g .. 8h + 4g + 3
                for (int j = 0; j < NA; j++) {
                    const int8_t *xq = (ACTP(q8k_t, j) + b)->q + 128 * h + 64 * g;
                    const __m512i p = _mm512_maddubs_epi16(u[g], _mm512_loadu_si512((const void *)xq));
                    isum[j] = _mm512_dpwssd_epi32(isum[j], p, s);
                }
            }
        }
        for (int j = 0; j < NA; j++) {
            const q8k_t *x = ACTP(q8k_t, j) + b;
            const __m256i o = _mm256_slli_epi32(_mm256_madd_epi16(sc16, ld256(x->bsum)), 5); // 32 · sc · bsum
            const __m512i t = _mm512_sub_epi32(isum[j], _mm512_zextsi256_si512(o));
            acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(d * x->d), _mm512_cvtepi32_ps(t), acc[j]);
        }
    }
    for (int j = 0; j < NA; j++) y[(size_t)j * ldy] = _mm512_reduce_add_ps(acc[j]);
}

/* ---- entry points: one specialisation per activation count ---------------------- */
#define ENTRY(NAME, CALL)                                                                                    \
    TGT static void NAME(int in, const uint8_t *w, const void *a, size_t astride, int na, float *y, size_t ldy) \
    {                                                                                                        \
        switch (na) {                                                                                        \
        case 1: CALL(1); break;                                                                              \
        case 2: CALL(2); break;                                                                              \
        case 3: CALL(3); break;                                                                              \
        default: CALL(4); break;                                                                             \
        }                                                                                                    \
    }
#define C_Q4_0(N) dot_q4x(in, w, a, astride, na, y, ldy, N, 0)
#define C_Q4_1(N) dot_q4x(in, w, a, astride, na, y, ldy, N, 1)
#define C_Q8_0(N) dot_q8x(in, w, a, astride, na, y, ldy, N)
#define C_Q4_K(N) dot_q4kx(in, w, a, astride, na, y, ldy, N)
#define C_Q6_K(N) dot_q6kx(in, w, a, astride, na, y, ldy, N)
ENTRY(dot_q4_0, C_Q4_0)
ENTRY(dot_q4_1, C_Q4_1)
ENTRY(dot_q8_0, C_Q8_0)
ENTRY(dot_q4_k, C_Q4_K)
ENTRY(dot_q6_k, C_Q6_K)

void qf_kernels_avx512(qf_kernels_t *k)
{
    qf_kernels_avx2(k);
    k->dot[QF_Q4_0] = dot_q4_0;
    k->dot[QF_Q4_1] = dot_q4_1;
    k->dot[QF_Q8_0] = dot_q8_0;
    k->dot[QF_Q4_K] = dot_q4_k;
    k->dot[QF_Q6_K] = dot_q6_k;
}

#else
#include "ops/cpu/qformat.h"
void qf_kernels_avx512(qf_kernels_t *k) { (void)k; }
#endif
