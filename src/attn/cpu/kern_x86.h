/* Private to the CPU tile engine: the x86 intrinsic kernels (kern_x86.c)
 * and what they share with kern.c. */
#ifndef LC_ATTN_KERN_X86_H
#define LC_ATTN_KERN_X86_H

#include <math.h>
#include <stdint.h>

#include "attn/cpu/kern.h"

/* Masks row r's scores s (ncol columns) for the current tile: -inf on keys the
 * row cannot see and on the padding nk..ncol. Returns the visible keys. */
static inline int attn__row_mask(const attn_tile_t *t, int r, float *s, int ncol, int64_t kmin, int64_t kmax) {
    const int nk = t->nk;
    int64_t qp = t->qpos[r], lo_vis = qp - t->window + 1;
    int visible = nk;
    if (kmax > qp || (kmin < lo_vis && kmax >= t->sink)) {
        visible = 0;
        for (int j = 0; j < nk; j++) {
            int64_t kp = t->kpos[j];
            if (kp > qp || (kp >= t->sink && kp < lo_vis))
                s[j] = -INFINITY;
            else
                visible++;
        }
    }
    for (int j = nk; j < ncol; j++) s[j] = -INFINITY;
    return visible;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LC_MM_X86 1
/* C (M x N, ldc) (+)= A (M x K) * B (K x N); M a multiple of 4; `zero`
 * overwrites C instead of accumulating. AVX-512F / AVX2+FMA. */
void attn__mm_avx512(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                     int zero);
void attn__mm_avx2(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc, int zero);
/* The direct path (few rows, keys read in place): scores into t->s, then
 * acc += P.V. AVX2+FMA. */
void attn__direct_scores_avx2(attn_tile_t *t, int ncol);
void attn__direct_pv_avx2(attn_tile_t *t);
/* The row pass (mask, max, exp, sum, rescale) of rows [0, mr); returns the
 * visible keys summed over the rows. AVX-512F. */
double attn__rows_avx512(attn_tile_t *t, int mr, int ncol);
#endif

#endif
