/* Private to src/ops/cpu/: splitting a long elementwise or row-wise call
 * over the caller's OpenMP team (a prompt chunk's norms, activations and
 * residual adds; a decode step's few rows stay on the calling thread). */
#ifndef LC_OPS_CPU_PAR_H
#define LC_OPS_CPU_PAR_H

#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Compiled twice, for x86-64-v3 (AVX2, 8 lanes) and the baseline (SSE2),
 * picked at load by the CPU: for the plain loops the compiler vectorises.
 * Both clones do the same arithmetic per element (C11 does not contract a
 * multiply and an add into an FMA), so they give the same bits. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define OPS_WIDE __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define OPS_WIDE
#endif

/* Elements below which a fork costs more than it saves. */
#define OPS_PAR_MIN ((size_t)1 << 16)
/* Elements per span: a multiple of 16, so a span starts where a vectorised
 * loop over the whole array would start a vector. */
#define OPS_PAR_SPAN ((size_t)1 << 14)

static inline int ops__par_worth(size_t n) { return n >= OPS_PAR_MIN; }

/* Runs STMT with I0 (first element) and M (elements) bound for each span of
 * [0, N): on the team when N is worth it and no team is running, else as one
 * span on the calling thread. STMT must touch elements [I0, I0 + M) only and
 * compute each one from its own inputs. */
#ifdef _OPENMP
#define OPS_PAR_SPANS(N, I0, M, STMT)                                                                                  \
    do {                                                                                                               \
        const size_t n_ = (N);                                                                                         \
        if (ops__par_worth(n_) && !omp_in_parallel()) {                                                                \
            const long ns_ = (long)((n_ + OPS_PAR_SPAN - 1) / OPS_PAR_SPAN);                                           \
            _Pragma("omp parallel for schedule(static)") for (long s_ = 0; s_ < ns_; s_++) {                           \
                const size_t I0 = (size_t)s_ * OPS_PAR_SPAN;                                                           \
                const size_t M = n_ - I0 < OPS_PAR_SPAN ? n_ - I0 : OPS_PAR_SPAN;                                      \
                STMT;                                                                                                  \
            }                                                                                                          \
        } else {                                                                                                       \
            const size_t I0 = 0, M = n_;                                                                               \
            STMT;                                                                                                      \
        }                                                                                                              \
    } while (0)
#else
#define OPS_PAR_SPANS(N, I0, M, STMT)                                                                                  \
    do {                                                                                                               \
        const size_t I0 = 0, M = (N);                                                                                  \
        STMT;                                                                                                          \
    } while (0)
#endif

#endif
