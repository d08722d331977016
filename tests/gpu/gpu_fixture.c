/* The GPU Check suites' shared fixture: page tables, benchmark inputs and
 * timing, main's skip and run (gpu_fixture.h has the contracts). */
#include "gpu_fixture.h"

#include <stdlib.h>
#include <string.h>

#include "gpu_testutil.h"

int32_t *gpu_page_table(int64_t pool, int64_t used, int (*rand_below)(int)) {
    int32_t *perm = malloc(sizeof(int32_t) * pool);
    for (int64_t i = 0; i < pool; i++) perm[i] = (int32_t)i;
    for (int64_t i = pool - 1; i > 0; i--) {
        int j = rand_below((int)i + 1), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    int32_t *table = malloc(sizeof(int32_t) * (used ? used : 1));
    memcpy(table, perm, sizeof(int32_t) * used);
    free(perm);
    return table;
}

void gpu_bench_fill(void *dk, void *dv, size_t pool_bytes, void *dq, size_t q_bytes, float (*rand11)(void)) {
    const size_t blk = 64u << 20;
    uint16_t *h = malloc(blk);
    for (size_t i = 0; i < blk / 2; i++) h[i] = f2bf(rand11());
    cudaMemcpy(dk, h, blk, cudaMemcpyHostToDevice);
    cudaMemcpy(dv, (char *)h + 4096, blk - 4096, cudaMemcpyHostToDevice);
    cudaMemcpy((char *)dv + blk - 4096, h, 4096, cudaMemcpyHostToDevice);
    for (size_t o = blk; o < pool_bytes; o += blk) {
        const size_t nb = pool_bytes - o < blk ? pool_bytes - o : blk;
        cudaMemcpy((char *)dk + o, dk, nb, cudaMemcpyDeviceToDevice);
        cudaMemcpy((char *)dv + o, dv, nb, cudaMemcpyDeviceToDevice);
    }
    cudaMemcpy(dq, h + 12345, q_bytes, cudaMemcpyHostToDevice);
    free(h);
}

static int cmp_float(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

float gpu_median_ms(cudaEvent_t *ev, int n) {
    float t[32];
    for (int i = 0; i < n; i++) cudaEventElapsedTime(&t[i], ev[2 * i], ev[2 * i + 1]);
    qsort(t, (size_t)n, sizeof(float), cmp_float);
    return t[n / 2];
}

int gpu_ensure_ws(void **ws, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    cudaFree(*ws);
    *ws = NULL;
    if (cudaMalloc(ws, need) != cudaSuccess) {
        printf("bench: out of device memory\n");
        return 1;
    }
    *cap = need;
    return 0;
}

int gpu_have_device(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("SKIP: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 0;
    }
    return 1;
}

int gpu_run_suite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); // the CUDA context does not survive fork()
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
