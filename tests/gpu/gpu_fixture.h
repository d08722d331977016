/* What the GPU Check suites share beyond gpu_testutil.h: a paged pool's
 * shuffled page table, the benchmarks' random inputs and their timing, and
 * the suites' main (skip without a device, run without fork).
 *
 * The random draws come from the calling suite's generator (gpu_testutil.h's
 * irand / frand, passed in): each suite keeps its own stream and seeds, so a
 * case's inputs depend only on its suite. */
#ifndef LC_GPU_FIXTURE_H
#define LC_GPU_FIXTURE_H

#include <check.h>
#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

/* The page table of a pool of pool pages: the first used entries of a
 * Fisher-Yates shuffle of 0 .. pool-1 (rand_below(i + 1) for i = pool-1
 * down to 1), so the pages are scattered and the pool's spare pages unused.
 * malloc'd with room for at least one entry; the caller frees it. */
int32_t *gpu_page_table(int64_t pool, int64_t used, int (*rand_below)(int));

/* Benchmark inputs: random bf16 in [-1, 1) (rand11 from the suite's
 * generator, seeded by the caller), one 64 MiB block made on the host and
 * replicated on the device over k and v (pool_bytes each, v shifted by 4 KiB
 * so that v differs from k) and q (q_bytes, from element 12345 of the
 * block). Copy errors are not checked: a benchmark times, it does not test. */
void gpu_bench_fill(void *dk, void *dv, size_t pool_bytes, void *dq, size_t q_bytes, float (*rand11)(void));

/* The median of the elapsed times of n event pairs (ev[2i], ev[2i+1]) in
 * ms; n <= 32. */
float gpu_median_ms(cudaEvent_t *ev, int n);

/* Grows a benchmark's device workspace (*ws, *cap bytes) to need bytes;
 * 1 (with a line on stdout) when out of memory, else 0. */
int gpu_ensure_ws(void **ws, size_t *cap, size_t need);

/* In a benchmark (a function returning int): a failed call prints its status
 * and returns 1. */
#define BENCH_CHECK(x)                                                                                                 \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_) {                                                                                                     \
            printf("bench: %s failed: %d (%s)\n", #x, rc_, lc_strerror(rc_));                                          \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

/* 1 when a CUDA device is present; else prints "SKIP: ..." and returns 0
 * (main then returns 77). */
int gpu_have_device(void);

/* Runs every case of s in this process (the CUDA context does not survive
 * fork()) and frees the runner; main's exit status: 0 when all passed, else 1. */
int gpu_run_suite(Suite *s);

#endif
