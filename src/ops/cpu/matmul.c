/* Matmul through CBLAS: every weight product of the forward pass is one call.
 *
 * Threads: the attention kernels use OpenMP, and a pthreads OpenBLAS next to
 * an OpenMP pool oversubscribes the cores — each side's idle threads spin
 * while the other computes (10x slower decode on 2 cores). So when OpenMP is
 * on, the matmul splits the output columns over the same OpenMP threads and
 * runs a single-threaded BLAS on each slice; one pool does all the work. */
#include <cblas.h>
#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/ops.h"

/* Columns per slice are rounded to this so slices stay cache-line aligned. */
#define MM_ALIGN 16

static void mm_serial(float *y, int ldy, const float *x, const float *w, int n, int in, int out)
{
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y, ldy);
}

#ifdef _OPENMP
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single(void)
{
#ifdef OPENBLAS_VERSION
    openblas_set_num_threads(1);
#endif
}
#endif

void ops_matmul(float *y, const float *x, const float *w, int n, int in, int out)
{
    if (n <= 0 || out <= 0) return;
#ifdef _OPENMP
    pthread_once(&blas_once, blas_single);
    int nt = omp_get_max_threads();
    /* small products are not worth the fork */
    if (nt > 1 && (double)n * in * out >= 1 << 18 && out >= 2 * MM_ALIGN && !omp_in_parallel()) {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), k = omp_get_num_threads();
            int per = ((out + k - 1) / k + MM_ALIGN - 1) / MM_ALIGN * MM_ALIGN;
            int j0 = t * per, j1 = j0 + per < out ? j0 + per : out;
            if (j0 < j1) mm_serial(y + j0, out, x, w + (size_t)j0 * in, n, in, j1 - j0);
        }
        return;
    }
#endif
    mm_serial(y, out, x, w, n, in, out);
}
