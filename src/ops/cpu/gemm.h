/* Private to src/ops/cpu/: the exact f32 matmul kernels (gemm.c) that
 * matmul.c runs on weight panels it expands from their block format. */
#ifndef LC_OPS_GEMM_H
#define LC_OPS_GEMM_H

#include "common/cpu.h"

#define GEMM_NP 64 // weight rows (output columns) per panel
#define GEMM_MR 6  // batch rows per kernel call

/* Packs np (<= GEMM_NP) rows of w, in floats each, for ops__gemm_panel.
 *   w: (np, in)   bp: (ceil(np/16), in, 16), columns past np zeroed */
void ops__gemm_pack(const float *w, int np, int in, float *bp);
/* y[i][j] = sum_k x[i][k] * w[j][k] for i < n, j < np, each element one
 * chain over k in order (FMA on AVX2 / AVX-512, multiply-add on scalar).
 *   x: (n, in)   bp: packed   y: (n, ldy), columns 0..np-1 written */
void ops__gemm_panel(lc_cpu_level_t level, int n, int in, const float *x, const float *bp, int np, float *y, int ldy);

#endif
