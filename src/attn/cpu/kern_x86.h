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
/* The tile's products, rows [0, M) (M a multiple of 4):
 *   scores: S[r][16g + lane] = sum_c Q[r][c] * kg[g][c * ldk[g] + lane], g < ng;
 *   P.V:    A[r][c] += sum_u P[r][u] * vrow[u][c], u < nk.
 * Q: (M, d); S, P: (M, ATTN_BK); A: (M, d). AVX-512F / AVX2+FMA. */
void attn__scores_avx512(int M, int ng, int d, const float *Q, const float *const *kg, const int *ldk, float *S);
void attn__pv_avx512(int M, int nk, int d, const float *P, const float *const *vrow, float *A);
void attn__scores_avx2(int M, int ng, int d, const float *Q, const float *const *kg, const int *ldk, float *S);
void attn__pv_avx2(int M, int nk, int d, const float *P, const float *const *vrow, float *A);
/* The row pass (mask, max, exp, sum, rescale) of rows [0, mr); returns the
 * visible keys summed over the rows. AVX-512F. */
double attn__rows_avx512(attn_tile_t *t, int mr, int ncol);
#endif

#endif
