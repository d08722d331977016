/* The x86 kernels of the tile engine (see kern.c, which picks them by the
 * process's CPU level): register-blocked products for AVX-512F and AVX2+FMA,
 * and the AVX-512 row pass. Intrinsics rather than vector extensions because
 * -std=c11 does not contract a * b + c into an FMA and GCC built the
 * extension broadcasts from scalar inserts. GCC only (kern_x86.h); elsewhere
 * this file is empty. */
#include "attn/cpu/kern_x86.h"

#ifdef LC_MM_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define LC_AVX512 __attribute__((target("avx512f")))
#define LC_AVX2 __attribute__((target("avx2,fma")))
#define LC_INLINE static inline __attribute__((always_inline))

/* ---- x86 register-blocked products ------------------------------------------------- */
/* The tile's two products with intrinsics, so the FMA is explicit (ISO C mode
 * does not contract a * b + c) and broadcasts are single instructions. Keys
 * are read where they lie: 16-key groups of transposed K (kg, ldk) for the
 * scores, V rows through per-key pointers for P.V. Each output is one FMA chain
 * (over head_dim for a score, over the tile's keys for P.V), so a row's
 * result does not depend on the other rows, the row blocking or where the
 * keys were read from. */

/* R rows x NV groups: S[r][16v + lane] = sum_c Q[r][c] * kg[v][c * ldk[v] + lane]. */
LC_AVX512 LC_INLINE void sc16(int R, int NV, int d, const float *Q, const float *const *kg, const int *ldk, float *S) {
    __m512 acc[6][4];
    const float *bp[4];
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) bp[v] = kg[v];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();
    for (int c = 0; c < d; c++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) {
            b[v] = _mm512_loadu_ps(bp[v]);
            bp[v] += ldk[v];
        }
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(Q[(size_t)r * d + c]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(S + (size_t)r * ATTN_BK + 16 * v, acc[r][v]);
}

/* R rows x NV*16 columns of acc: A[r][c] += sum_u P[r][u] * vrow[u][c0 + c]. */
LC_AVX512 LC_INLINE void pv16(int R, int NV, int nk, int d, int c0, const float *P, const float *const *vrow,
                              float *A) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) acc[r][v] = _mm512_loadu_ps(A + (size_t)r * d + c0 + 16 * v);
    for (int u = 0; u < nk; u++) {
        __m512 b[4];
        const float *vr = vrow[u] + c0;
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(vr + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m512 a = _mm512_set1_ps(P[(size_t)r * ATTN_BK + u]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(A + (size_t)r * d + c0 + 16 * v, acc[r][v]);
}

/* AVX2: R rows x one group (two ymm). */
LC_AVX2 LC_INLINE void sc8(int R, int d, const float *Q, const float *kg, int ldk, float *S) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int c = 0; c < d; c++, kg += ldk) {
        const __m256 b0 = _mm256_loadu_ps(kg), b1 = _mm256_loadu_ps(kg + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(Q + (size_t)r * d + c);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(S + (size_t)r * ATTN_BK, acc[r][0]);
        _mm256_storeu_ps(S + (size_t)r * ATTN_BK + 8, acc[r][1]);
    }
}

/* AVX2: R rows x 16 columns of acc. */
LC_AVX2 LC_INLINE void pv8(int R, int nk, int d, int c0, const float *P, const float *const *vrow, float *A) {
    __m256 acc[6][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        acc[r][0] = _mm256_loadu_ps(A + (size_t)r * d + c0);
        acc[r][1] = _mm256_loadu_ps(A + (size_t)r * d + c0 + 8);
    }
    for (int u = 0; u < nk; u++) {
        const __m256 b0 = _mm256_loadu_ps(vrow[u] + c0), b1 = _mm256_loadu_ps(vrow[u] + c0 + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            const __m256 a = _mm256_broadcast_ss(P + (size_t)r * ATTN_BK + u);
            acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        _mm256_storeu_ps(A + (size_t)r * d + c0, acc[r][0]);
        _mm256_storeu_ps(A + (size_t)r * d + c0 + 8, acc[r][1]);
    }
}

/* P.V columns d & ~15 .. d, scalar multiply-add (head_dim not a multiple of 16). */
LC_INLINE void pv_tail(int M, int nk, int d, const float *P, const float *const *vrow, float *A) {
    for (int r = 0; r < M; r++)
        for (int c = d & ~15; c < d; c++) {
            float x = A[(size_t)r * d + c];
            for (int u = 0; u < nk; u++) x += P[(size_t)r * ATTN_BK + u] * vrow[u][c];
            A[(size_t)r * d + c] = x;
        }
}

/* Row blocks of 6, then of 4 (M is a multiple of 4; 8 is cut 4 + 4). */
#define ROWS(i, M, BODY)                                                                                               \
    for (int i = 0, R_; i < (M); i += R_) {                                                                            \
        R_ = (M)-i >= 6 && (M)-i != 8 ? 6 : 4;                                                                         \
        if (R_ == 6)                                                                                                   \
            BODY(6);                                                                                                   \
        else                                                                                                           \
            BODY(4);                                                                                                   \
    }

LC_AVX512 __attribute__((noinline)) void attn__scores_avx512(int M, int ng, int d, const float *Q,
                                                             const float *const *kg, const int *ldk, float *S) {
#define SC(RR)                                                                                                         \
    do {                                                                                                               \
        const float *q_ = Q + (size_t)i * d;                                                                           \
        float *s_ = S + (size_t)i * ATTN_BK;                                                                           \
        switch (ng) {                                                                                                  \
        case 4: sc16(RR, 4, d, q_, kg, ldk, s_); break;                                                                \
        case 3: sc16(RR, 3, d, q_, kg, ldk, s_); break;                                                                \
        case 2: sc16(RR, 2, d, q_, kg, ldk, s_); break;                                                                \
        default: sc16(RR, 1, d, q_, kg, ldk, s_); break;                                                               \
        }                                                                                                              \
    } while (0)
    ROWS(i, M, SC)
#undef SC
}

LC_AVX512 __attribute__((noinline)) void attn__pv_avx512(int M, int nk, int d, const float *P, const float *const *vrow,
                                                         float *A) {
    const int d16 = d & ~15;
    for (int c0 = 0; c0 < d16; c0 += 64) {
        const int nv = d16 - c0 >= 64 ? 4 : (d16 - c0) / 16;
#define PV(RR)                                                                                                         \
    do {                                                                                                               \
        const float *p_ = P + (size_t)i * ATTN_BK;                                                                     \
        float *a_ = A + (size_t)i * d;                                                                                 \
        switch (nv) {                                                                                                  \
        case 4: pv16(RR, 4, nk, d, c0, p_, vrow, a_); break;                                                           \
        case 3: pv16(RR, 3, nk, d, c0, p_, vrow, a_); break;                                                           \
        case 2: pv16(RR, 2, nk, d, c0, p_, vrow, a_); break;                                                           \
        default: pv16(RR, 1, nk, d, c0, p_, vrow, a_); break;                                                          \
        }                                                                                                              \
    } while (0)
        ROWS(i, M, PV)
#undef PV
    }
    pv_tail(M, nk, d, P, vrow, A);
}

LC_AVX2 __attribute__((noinline)) void attn__scores_avx2(int M, int ng, int d, const float *Q, const float *const *kg,
                                                         const int *ldk, float *S) {
    for (int g = 0; g < ng; g++) {
#define SC(RR) sc8(RR, d, Q + (size_t)i * d, kg[g], ldk[g], S + (size_t)i * ATTN_BK + 16 * g)
        ROWS(i, M, SC)
#undef SC
    }
}

LC_AVX2 __attribute__((noinline)) void attn__pv_avx2(int M, int nk, int d, const float *P, const float *const *vrow,
                                                     float *A) {
    for (int c0 = 0; c0 + 16 <= d; c0 += 16) {
#define PV(RR) pv8(RR, nk, d, c0, P + (size_t)i * ATTN_BK, vrow, A + (size_t)i * d)
        ROWS(i, M, PV)
#undef PV
    }
    pv_tail(M, nk, d, P, vrow, A);
}
#undef ROWS

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
