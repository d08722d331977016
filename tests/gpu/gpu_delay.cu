// A kernel for the GPU Check suites: it lets the stream's next programmatic
// dependent launch start at once, waits, then writes. What a kernel launched
// after it with PDL reads before its griddepcontrol.wait is then the memory
// as it was before this kernel wrote (tests/gpu/check_attn_cuda.c).
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu_delay.h"

namespace {

__global__ void delayed_copy_kernel(uint4 *dst, const uint4 *src, size_t n16, long long ns) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (threadIdx.x == 0) {
        unsigned long long t0, t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
        do asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        while (t - t0 < (unsigned long long)ns);
    }
    __syncthreads();
    for (size_t i = threadIdx.x; i < n16; i += blockDim.x) dst[i] = src[i];
}

} // namespace

extern "C" int gpu_delayed_copy(void *dst, const void *src, size_t bytes, long long ns, cudaStream_t stream) {
    if (bytes % 16 || (uintptr_t)dst % 16 || (uintptr_t)src % 16) return -1;
    delayed_copy_kernel<<<1, 1024, 0, stream>>>(static_cast<uint4 *>(dst), static_cast<const uint4 *>(src), bytes / 16,
                                                ns);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}
