/* The CPU kernel set every hand-written kernel (matmul, attention) uses, one
 * level for the whole process: scalar, AVX2 (with FMA and F16C) or AVX-512
 * (F, BW, VL, DQ and VNNI). A request's arithmetic depends on this level and
 * on nothing else about the machine or the batch, so tests force each level
 * in turn and compare outputs within it.
 *
 * The level is the widest the CPU runs, capped by the environment at first
 * use (LACUNA_CPU=scalar|avx2|avx512, or LACUNA_NO_AVX512 / LACUNA_NO_AVX2)
 * and by lc_cpu_set_max(). Reading it is cheap and thread-safe; changing it
 * while kernels run is not. */
#ifndef LC_CPU_H
#define LC_CPU_H

typedef enum {
    LC_CPU_SCALAR = 0,
    LC_CPU_AVX2 = 1,
    LC_CPU_AVX512 = 2,
} lc_cpu_level_t;

/* The widest set this CPU supports (ignores caps). */
lc_cpu_level_t lc_cpu_detected(void);
/* The set in use. */
lc_cpu_level_t lc_cpu_level(void);
/* Caps the set at max (never above what the CPU supports); returns the set
 * now in use. */
lc_cpu_level_t lc_cpu_set_max(lc_cpu_level_t max);
/* "scalar", "avx2", "avx512". */
const char *lc_cpu_level_name(lc_cpu_level_t l);

#endif
