/* BLAS start-up policy shared by every binary. */
#ifndef LC_THREADS_H
#define LC_THREADS_H

/* OPENBLAS_CORETYPE, which OpenBLAS reads only at start-up, fixed with one
 * re-exec (argv unchanged) when it is not already in the environment. Call
 * first thing in main(); returns when nothing had to change or exec failed.
 * Debian 12's OpenBLAS (0.3.21) picks its kernels from the CPU model number
 * and falls back to SSE3 ("Prescott") kernels on CPUs it does not know, as
 * virtual machines often report (measured 5x slower sgemm on a Sapphire
 * Rapids VM). When the chosen kernels are older than the CPU's vector units,
 * this names the AVX-512 (SkylakeX) or AVX2 (Haswell) set instead.
 *
 * OpenMP's wait policy is left to the environment: libgomp's default spins
 * ~3 ms before sleeping, which keeps the hundreds of parallel regions of a
 * decode step cheap (OMP_WAIT_POLICY=passive measured decode 47 tok/s against
 * 60 with the default, 65 with active, on the 2-core development VM). */
void lc_threads_reexec(char **argv);

/* The OpenBLAS kernel set in use ("Haswell", ...), NULL for another BLAS. */
const char *lc_threads_blas_core(void);

#endif
