/* Matmul through CBLAS: all the forward's weight products go through one
 * sgemm each, so the BLAS library's blocking and threads do the work. */
#include <cblas.h>

#include "ops/ops.h"

void ops_matmul(float *y, const float *x, const float *w, int n, int in, int out)
{
    if (n <= 0 || out <= 0) return;
    if (n == 1) {
        /* one row: gemv avoids sgemm's packing overhead. y = W x */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
}
