/* Thread-pool and BLAS start-up policy shared by every binary. */
#ifndef LC_THREADS_H
#define LC_THREADS_H

/* Settings that the runtimes read only at start-up, fixed with one re-exec
 * (argv unchanged) when they are not already in the environment. Call first
 * thing in main(); returns when nothing had to change or exec failed.
 * - OMP_WAIT_POLICY=passive: OpenMP's idle threads spin by default, taking
 *   the cores the next BLAS call, the HTTP loop or another process needs; on
 *   a small or shared machine that makes the forward pass several times
 *   slower.
 * - OPENBLAS_CORETYPE: Debian 12's OpenBLAS (0.3.21) picks its kernels from
 *   the CPU model number and falls back to SSE3 ("Prescott") kernels on CPUs
 *   it does not know, as virtual machines often report (measured 5x slower
 *   sgemm on a Sapphire Rapids VM). When the chosen kernels are older than
 *   the CPU's vector units, this names the AVX-512 (SkylakeX) or AVX2
 *   (Haswell) set instead. */
void lc_threads_passive_reexec(char **argv);

/* The OpenBLAS kernel set in use ("Haswell", ...), NULL for another BLAS. */
const char *lc_threads_blas_core(void);

#endif
