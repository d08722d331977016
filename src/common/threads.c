/* See threads.h: one re-exec so that OpenBLAS starts with the kernels this
 * machine's CPU can run. */
#include "common/threads.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Defined when the binary links OpenBLAS; weak so that another CBLAS works. */
extern char *openblas_get_corename(void) __attribute__((weak));

/* OpenBLAS kernel sets that use the vector units of an AVX2 (or better) CPU. */
static int blas_core_is_modern(const char *name) {
    static const char *const good[] = {"haswell",    "zen",        "skylakex",   "cooperlake", "sapphirerapids",
                                       "neoversen1", "neoversen2", "neoversev1", "armv8"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (!strcasecmp(name, good[i])) return 1;
    return 0;
}

const char *lc_threads_blas_core(void) {
    if (!openblas_get_corename) return NULL;
    return openblas_get_corename();
}

/* The OPENBLAS_CORETYPE this CPU should get, or NULL to leave detection be. */
static const char *blas_core_override(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const char *cur = lc_threads_blas_core();
    if (!cur || blas_core_is_modern(cur)) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

void lc_threads_reexec(char **argv) {
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *core = blas_core_override();
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the defaults */
}
