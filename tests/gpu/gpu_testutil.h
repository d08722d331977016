/* Helpers shared by the GPU Check suites: bf16 conversion (round to nearest
 * even, NaN kept) and a small deterministic generator. Header-only: each
 * suite has its own generator state. */
#ifndef LC_GPU_TESTUTIL_H
#define LC_GPU_TESTUTIL_H

#include <check.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t f2bf(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0; // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline float bf2f(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint64_t rng;
static inline float frand(void) { // uniform in [-1, 1)
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}
static inline int irand(int n) { // uniform in [0, n)
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int)((rng >> 33) % (uint64_t)n);
}

#define CK_CUDA(call) ck_assert_msg((call) == cudaSuccess, "%s: %s", #call, cudaGetErrorString(cudaGetLastError()))

#endif
