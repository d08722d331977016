/* Thin wrappers over clock_gettime. */
#include "common/timeutil.h"

#include <time.h>

uint64_t lc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double lc_now_s(void) { return (double)lc_now_ns() * 1e-9; }

int64_t lc_unix_time(void) { return (int64_t)time(NULL); }
