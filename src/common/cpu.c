/* See cpu.h: run-time detection of the kernel set, once, capped by the
 * environment; tests lower it with lc_cpu_set_max. */
#include "common/cpu.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static pthread_once_t once = PTHREAD_ONCE_INIT;
static lc_cpu_level_t detected = LC_CPU_SCALAR;
static atomic_int level = LC_CPU_SCALAR;

/* F16C from CPUID itself: clang's __builtin_cpu_supports does not know it. */
static lc_cpu_level_t detect(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c = 0, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C)) return LC_CPU_SCALAR;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return LC_CPU_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni"))
        return LC_CPU_AVX512;
    return LC_CPU_AVX2;
#else
    return LC_CPU_SCALAR;
#endif
}

static void init(void) {
    detected = detect();
    lc_cpu_level_t cap = LC_CPU_AVX512;
    const char *e = getenv("LACUNA_CPU");
    if (e && !strcmp(e, "scalar")) cap = LC_CPU_SCALAR;
    if (e && !strcmp(e, "avx2")) cap = LC_CPU_AVX2;
    if (getenv("LACUNA_NO_AVX512") && cap > LC_CPU_AVX2) cap = LC_CPU_AVX2;
    if (getenv("LACUNA_NO_AVX2")) cap = LC_CPU_SCALAR;
    atomic_store(&level, detected < cap ? detected : cap);
}

lc_cpu_level_t lc_cpu_detected(void) {
    pthread_once(&once, init);
    return detected;
}

lc_cpu_level_t lc_cpu_level(void) {
    pthread_once(&once, init);
    return (lc_cpu_level_t)atomic_load_explicit(&level, memory_order_relaxed);
}

lc_cpu_level_t lc_cpu_set_max(lc_cpu_level_t max) {
    pthread_once(&once, init);
    lc_cpu_level_t l = detected < max ? detected : max;
    atomic_store(&level, l);
    return l;
}

const char *lc_cpu_level_name(lc_cpu_level_t l) {
    return l == LC_CPU_AVX512 ? "avx512" : l == LC_CPU_AVX2 ? "avx2" : "scalar";
}
