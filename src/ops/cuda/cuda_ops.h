/* The C boundary of the CUDA ops: everything CUDA stays in .cu/.cuh files;
 * C code sees only these functions. None aborts: those that can fail return
 * 0 or a negative lc status, so one failed call does not take the daemon
 * down. */
#ifndef LC_CUDA_OPS_H
#define LC_CUDA_OPS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Usable devices; 0 with the reason in why when the driver or GPU is missing. */
int ops_cuda_device_count(char *why, size_t len);
void ops_cuda_device_name(int index, char *buf, size_t len);

/* RMSNorm on device memory: y = x / rms(x) * w, rows of dim floats.
 *   x, y: (rows, dim); w: (dim) */
int ops_cuda_rmsnorm(const float *x, const float *w, float *y, int rows, int dim, float eps, void *stream);
/* Same over host memory (copies in and out); for tests against the CPU. */
int ops_cuda_rmsnorm_host(const float *x, const float *w, float *y, int rows, int dim, float eps);

#ifdef __cplusplus
}
#endif
#endif
