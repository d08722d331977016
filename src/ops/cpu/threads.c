/* The CPU backend's start-up (ops_cpu_init, see ops.h): OpenBLAS's kernel
 * set, OpenMP's wait, one thread per BLAS call, and the OpenMP team of the
 * thread that runs the forward pass. */
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

/* libgomp's default wait spins up to 300,000 times (~3 ms) at every barrier
 * and region end before it sleeps. On cores shared with busy neighbours a
 * thread spins while the one it waits for is not running, and every region
 * costs time slices: decode measured 15-20x slower than with passive waits
 * on the 2-vCPU VM under load. Too short a spin costs as much on a quiet
 * machine: the threads fall asleep in the serial gaps between a step's
 * ~200 regions (norms, quantizing the activations) and each region pays a
 * wake-up. Measured on the 2-vCPU VM (bench/vs_llamacpp_load.sh, one
 * stream): 300 spins 37.8 tok/s, 30,000 106.5, active 121 when quiet; with
 * two busy processes beside it, 300 gave 32.8 and 30,000 22.6. 30,000
 * (~0.3 ms) keeps most of the quiet machine's speed, which is how a server
 * runs, and bounds what a busy one loses. */
#define LC_GOMP_SPINCOUNT "30000"

/* OpenBLAS reads OPENBLAS_CORETYPE, and libgomp its wait settings, only when
 * they are loaded: set what is missing and re-exec once (argv unchanged).
 * Values already in the environment are kept. Returns when nothing had to
 * change or exec failed (then the defaults stay). */
static void env_reexec(char **argv) {
    int change = 0;
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : blas_core_override();
    if (core) setenv("OPENBLAS_CORETYPE", core, 1), change = 1;
#ifdef _OPENMP
    if (!getenv("OMP_WAIT_POLICY") && !getenv("GOMP_SPINCOUNT"))
        setenv("GOMP_SPINCOUNT", LC_GOMP_SPINCOUNT, 1), change = 1;
#endif
    if (change) execv("/proc/self/exe", argv);
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
    if (argv) env_reexec(argv);
    ops__blas_single_once();
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
    return omp_get_max_threads();
#else
    return 1;
#endif
}
