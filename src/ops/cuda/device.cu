// CUDA device discovery. Uses the static runtime, so a binary built here
// starts on machines without libcudart or a GPU and reports why.
#include <cstdio>

#include "ops/cuda/cuda_check.cuh"
#include "ops/cuda/cuda_ops.h"

extern "C" int ops_cuda_device_count(char *why, size_t len) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        if (why && len) snprintf(why, len, "%s", cudaGetErrorString(err));
        cudaGetLastError(); // clear the sticky error for later calls
        return 0;
    }
    if (n == 0 && why && len) snprintf(why, len, "no CUDA device found");
    return n;
}

extern "C" void ops_cuda_device_name(int index, char *buf, size_t len) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, index) == cudaSuccess)
        snprintf(buf, len, "%s (sm_%d%d)", prop.name, prop.major, prop.minor);
    else
        snprintf(buf, len, "cuda:%d", index);
}
