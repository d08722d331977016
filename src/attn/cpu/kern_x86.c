/* The x86 kernels of the tile engine (see kern.c, which picks them at run
 * time with __builtin_cpu_supports): register-blocked products for AVX-512F
 * and AVX2+FMA, the decode (direct) path on AVX2+FMA, and the AVX-512 row
 * pass. Intrinsics rather than vector extensions because -std=c11 does not
 * contract a * b + c into an FMA and GCC built the extension broadcasts from
 * scalar inserts. GCC only (kern_x86.h); elsewhere this file is empty. */
#include "attn/cpu/kern_x86.h"

#ifdef LC_MM_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define LC_AVX512 __attribute__((target("avx512f")))
#define LC_AVX2 __attribute__((target("avx2,fma")))
#define LC_INLINE static inline __attribute__((always_inline))

/* ---- x86 register-blocked products ------------------------------------------------- */
/* The same product as mm_acc with intrinsics, so the FMA is explicit (ISO C mode
 * does not contract a * b + c) and broadcasts are single instructions. Chosen at
 * run time; the generic mm_acc stays for other CPUs and compilers. With `zero`
 * C is overwritten instead of accumulated into. */


/* R rows x NV*16 columns of C held in zmm registers for the whole K loop (at
 * R 6, NV 4: 24 accumulators + 4 B vectors; A is broadcast from memory). */
LC_AVX512 LC_INLINE void mm16_tile(int R, int NV, int K, const float *A, int lda, const float *B, int ldb, float *C,
                                   int ldc, int zero) {
    __m512 acc[6][4], b[4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[r][v] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(C + (size_t)r * ldc + 16 * v);
    for (int k = 0; k < K; k++) {
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(B + (size_t)k * ldb + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 a = _mm512_set1_ps(A[(size_t)r * lda + k]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(C + (size_t)r * ldc + 16 * v, acc[r][v]);
}

/* R rows x 16 columns in ymm registers (R 6: 12 accumulators of AVX2's 16). */
LC_AVX2 LC_INLINE void mm8_tile(int R, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                                int zero) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++)
            acc[r][v] = zero ? _mm256_setzero_ps() : _mm256_loadu_ps(C + (size_t)r * ldc + 8 * v);
    for (int k = 0; k < K; k++) {
        __m256 b0 = _mm256_loadu_ps(B + (size_t)k * ldb), b1 = _mm256_loadu_ps(B + (size_t)k * ldb + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m256 a = _mm256_broadcast_ss(A + (size_t)r * lda + k);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int v = 0; v < 2; v++) _mm256_storeu_ps(C + (size_t)r * ldc + 8 * v, acc[r][v]);
}

/* Columns N & ~15 .. N, scalar (d not a multiple of 16). */
LC_INLINE void mm_tail(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                       int zero) {
    for (int i = 0; i < M; i++)
        for (int j = N & ~15; j < N; j++) {
            float x = zero ? 0.0f : C[(size_t)i * ldc + j];
            for (int k = 0; k < K; k++) x += A[(size_t)i * lda + k] * B[(size_t)k * ldb + j];
            C[(size_t)i * ldc + j] = x;
        }
}

/* Row blocks of 6, then of 4 (M is a multiple of 4; 8 is cut 4 + 4). */
#define MM_ROWS(i, M, TILE)                                                                                            \
    for (i = 0; i < (M); i += R) {                                                                                     \
        R = (M)-i >= 6 && (M)-i != 8 ? 6 : 4;                                                                          \
        if (R == 6)                                                                                                    \
            TILE(6);                                                                                                   \
        else                                                                                                           \
            TILE(4);                                                                                                   \
    }

LC_AVX512 __attribute__((noinline)) void attn__mm_avx512(int M, int N, int K, const float *A, int lda, const float *B,
                                                         int ldb, float *C, int ldc, int zero) {
    const int n16 = N & ~15;
    for (int j = 0; j < n16; j += 64) {
        const int nv = n16 - j >= 64 ? 4 : (n16 - j) / 16;
        int i, R;
#define T16(RR)                                                                                                        \
    do {                                                                                                               \
        const float *a_ = A + (size_t)i * lda;                                                                         \
        float *c_ = C + (size_t)i * ldc + j;                                                                           \
        switch (nv) {                                                                                                  \
        case 4: mm16_tile(RR, 4, K, a_, lda, B + j, ldb, c_, ldc, zero); break;                                        \
        case 3: mm16_tile(RR, 3, K, a_, lda, B + j, ldb, c_, ldc, zero); break;                                        \
        case 2: mm16_tile(RR, 2, K, a_, lda, B + j, ldb, c_, ldc, zero); break;                                        \
        default: mm16_tile(RR, 1, K, a_, lda, B + j, ldb, c_, ldc, zero); break;                                       \
        }                                                                                                              \
    } while (0)
        MM_ROWS(i, M, T16)
#undef T16
    }
    mm_tail(M, N, K, A, lda, B, ldb, C, ldc, zero);
}

LC_AVX2 __attribute__((noinline)) void attn__mm_avx2(int M, int N, int K, const float *A, int lda, const float *B,
                                                     int ldb, float *C, int ldc, int zero) {
    const int n16 = N & ~15;
    for (int j = 0; j < n16; j += 16) {
        int i, R;
#define T8(RR) mm8_tile(RR, K, A + (size_t)i * lda, lda, B + j, ldb, C + (size_t)i * ldc + j, ldc, zero)
        MM_ROWS(i, M, T8)
#undef T8
    }
    mm_tail(M, N, K, A, lda, B, ldb, C, ldc, zero);
}
#undef MM_ROWS

/* The direct (decode) path with explicit FMA and single-instruction
 * broadcasts, as the products above; rows past nr (padding) are skipped. */
LC_AVX2 __attribute__((noinline)) void attn__direct_scores_avx2(attn_tile_t *t, int ncol) {
    const int d = t->d, nr = t->nr;
    for (int u = 0; u < t->nk; u++) {
        const float *kr = t->kptr[u];
        for (int r = 0; r < nr; r++) {
            const float *qr = t->q + (size_t)r * d;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            int c = 0;
            for (; c + 16 <= d; c += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + c), _mm256_loadu_ps(kr + c), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + c + 8), _mm256_loadu_ps(kr + c + 8), a1);
            }
            if (c < d) // d % 8 == 0 on this path
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + c), _mm256_loadu_ps(kr + c), a0);
            a0 = _mm256_add_ps(a0, a1);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            t->s[(size_t)r * ATTN_BK + u] = _mm_cvtss_f32(h);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int u = t->nk; u < ncol; u++) t->s[(size_t)r * ATTN_BK + u] = 0.0f;
}

/* acc[r] += sum_u p[r][u] v[u], 64 columns of acc in 8 ymm at a time. */
LC_AVX2 __attribute__((noinline)) void attn__direct_pv_avx2(attn_tile_t *t) {
    const int d = t->d;
    for (int r = 0; r < t->nr; r++) {
        float *a = t->acc + (size_t)r * d;
        const float *p = t->s + (size_t)r * ATTN_BK;
        for (int c0 = 0; c0 < d; c0 += 64) {
            const int nv = (d - c0 >= 64 ? 64 : d - c0) / 8;
            __m256 x[8];
            for (int v = 0; v < nv; v++) x[v] = _mm256_loadu_ps(a + c0 + 8 * v);
            for (int u = 0; u < t->nk; u++) {
                const __m256 pu = _mm256_broadcast_ss(p + u);
                const float *vr = t->vptr[u] + c0;
#pragma GCC unroll 8
                for (int v = 0; v < nv; v++) x[v] = _mm256_fmadd_ps(pu, _mm256_loadu_ps(vr + 8 * v), x[v]);
            }
            for (int v = 0; v < nv; v++) _mm256_storeu_ps(a + c0 + 8 * v, x[v]);
        }
    }
}

/* vexp8 on 16 lanes, same split and polynomial (Horner steps fused). */
LC_AVX512 LC_INLINE __m512 vexp16(__m512 x) {
    __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_mask_mov_ps(x, under, _mm512_set1_ps(-87.0f));
    __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 y = _mm512_mul_ps(_mm512_sub_ps(t, r), _mm512_set1_ps(0.693147180559945309f));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, y, _mm512_set1_ps(1.0f));
    __m512i n = _mm512_cvtps_epi32(r);
    __m512 sc = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mul_ps((__mmask16)~under, p, sc);
}

/* rows_softmax on 16 lanes (ncol is a multiple of 16). */
LC_AVX512 __attribute__((noinline)) double attn__rows_avx512(attn_tile_t *t, int mr, int ncol) {
    const int d = t->d;
    const int64_t kmin = t->kpos[0], kmax = t->kpos[t->nk - 1];
    double computed = 0;
    for (int r = 0; r < mr; r++) {
        float *s = t->s + (size_t)r * ATTN_BK;
        int visible = r < t->nr ? attn__row_mask(t, r, s, ncol, kmin, kmax) : 0;
        if (visible == 0) {
            memset(s, 0, (size_t)ncol * sizeof(float));
            continue;
        }
        computed += visible;
        __m512 vm = _mm512_set1_ps(-INFINITY);
        for (int j = 0; j < ncol; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(s + j));
        float mx = _mm512_reduce_max_ps(vm);
        float m_old = t->m[r], m_new = mx > m_old ? mx : m_old;
        __m512 vs = _mm512_setzero_ps(), mn = _mm512_set1_ps(m_new);
        for (int j = 0; j < ncol; j += 16) {
            __m512 p = vexp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), mn));
            _mm512_storeu_ps(s + j, p);
            vs = _mm512_add_ps(vs, p);
        }
        float sum = _mm512_reduce_add_ps(vs);
        if (m_old != m_new) {
            float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            float *a = t->acc + (size_t)r * d;
            __m512 va = _mm512_set1_ps(alpha);
            int c = 0;
            for (; c + 16 <= d; c += 16) _mm512_storeu_ps(a + c, _mm512_mul_ps(_mm512_loadu_ps(a + c), va));
            for (; c < d; c++) a[c] *= alpha;
            t->l[r] *= alpha;
            t->m[r] = m_new;
        }
        t->l[r] += sum;
    }
    return computed;
}
#else
typedef int attn_kern_x86_empty; // ISO C wants a declaration in every file
#endif
