/* Private to src/ops/cpu/: the part of the CPU start-up (ops_cpu_init,
 * threads.c) that the kernels also run on first use, so that a program that
 * never called ops_cpu_init (a test) still gets single-threaded BLAS calls. */
#ifndef LC_OPS_CPU_THREADS_H
#define LC_OPS_CPU_THREADS_H

/* Makes every BLAS call run on the calling thread (once per process); the
 * calling thread's OpenMP team size is left as it was. Thread-safe. */
void ops__blas_single_once(void);

#endif
