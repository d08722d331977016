/* The CPU backend's start-up (ops_cpu_init, see ops.h): OpenBLAS's kernel
 * set, one thread per BLAS call, and the OpenMP team of the thread that runs
 * the forward pass. */
#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "ops/cpu/threads.h"
#include "ops/ops.h"

/* ---- OpenBLAS's kernel set --------------------------------------------------- */
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

const char *ops_cpu_blas_core(void) {
    if (!openblas_get_corename) return NULL;
    return openblas_get_corename();
}

/* The OPENBLAS_CORETYPE this CPU should get, or NULL to leave detection be. */
static const char *blas_core_override(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const char *cur = ops_cpu_blas_core();
    if (!cur || blas_core_is_modern(cur)) return NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

/* OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded: fix it with one
 * re-exec (argv unchanged). Returns when nothing had to change or exec
 * failed (then the defaults stay). */
static void blas_core_reexec(char **argv) {
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *core = blas_core_override();
    if (!core) return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
}

/* ---- threads ------------------------------------------------------------------ */
#ifdef _OPENMP
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

/* Our OpenMP regions split the work; every BLAS call runs on one thread.
 * OpenBLAS's OpenMP build implements openblas_set_num_threads with
 * omp_set_num_threads, which would also pin the calling thread's own
 * parallel regions to one thread: put that thread's setting back. */
static void blas_single(void) {
#ifdef OPENBLAS_VERSION
    const int nt = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(nt);
#endif
}
#endif

void ops__blas_single_once(void) {
#ifdef _OPENMP
    pthread_once(&blas_once, blas_single);
#endif
}

int ops_cpu_init(char **argv, int threads) {
    if (argv) blas_core_reexec(argv);
    ops__blas_single_once();
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
    return omp_get_max_threads();
#else
    return 1;
#endif
}
