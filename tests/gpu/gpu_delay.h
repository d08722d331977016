/* tests/gpu/gpu_delay.cu: one CTA that triggers the stream's next
 * programmatic dependent launch at its start, spins ns nanoseconds, then
 * copies bytes (a multiple of 16, both pointers 16-byte aligned) from src to
 * dst. 0, or -1 on a bad argument or launch error. */
#ifndef LC_GPU_DELAY_H
#define LC_GPU_DELAY_H

#include <cuda_runtime_api.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif
int gpu_delayed_copy(void *dst, const void *src, size_t bytes, long long ns, cudaStream_t stream);
#ifdef __cplusplus
}
#endif

#endif
