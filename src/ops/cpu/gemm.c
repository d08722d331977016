/* The exact matmul path: y = x · wᵀ in f32 on weights expanded from their
 * block format, with our own register-blocked kernels instead of sgemm.
 *
 * Why not sgemm: a BLAS picks kernels and blocking by the matrix shape (M
 * here is the number of batch rows), so a row's result changed with its batch
 * neighbours (OpenBLAS's SkylakeX small-matrix path did exactly that). Here
 * every output element is one FMA chain over k = 0..in-1 in order, starting
 * from 0, whatever the number of rows, the panel, the thread or the kernel
 * (AVX-512 and AVX2 give the same bits: an FMA chain does not depend on the
 * vector width). The scalar set uses separate multiply and add (ISO C does
 * not contract), so it is its own arithmetic.
 *
 * Shape of the work: output columns in panels of GEMM_NP weight rows; a
 * thread expands a panel once into f32, packed as 16-column groups
 * (group g, k, lane) so the kernels load 16 weights of one k with one vector
 * load, then runs every batch row through it, GEMM_MR rows at a time
 * (AVX-512: 6 rows x 64 columns in 24 zmm accumulators; AVX2: 6 x 16 in 12
 * ymm). */
#include <string.h>

#include "ops/cpu/gemm.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define GEMM_X86 1
#define TGT512 __attribute__((target("avx512f,avx2,fma")))
#define TGT256 __attribute__((target("avx2,fma")))
#endif

/* Packs np rows of w (row-major, in floats each, np <= GEMM_NP) into bp:
 * group g (16 columns) at bp + g * in * 16, element (k, lane) at k * 16 + lane;
 * columns past np are zero. */
void ops__gemm_pack(const float *w, int np, int in, float *bp) {
    const int ng = (np + 15) / 16;
    for (int g = 0; g < ng; g++) {
        float *dst = bp + (size_t)g * in * 16;
        for (int lane = 0; lane < 16; lane++) {
            const int j = g * 16 + lane;
            if (j < np) {
                const float *src = w + (size_t)j * in;
                for (int k = 0; k < in; k++) dst[(size_t)k * 16 + lane] = src[k];
            } else {
                for (int k = 0; k < in; k++) dst[(size_t)k * 16 + lane] = 0.0f;
            }
        }
    }
}

/* ---- scalar ----------------------------------------------------------------------- */
static void panel_scalar(int n, int in, const float *x, const float *bp, int np, float *y, int ldy) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + (size_t)i * in;
        for (int j = 0; j < np; j++) {
            const float *b = bp + (size_t)(j / 16) * in * 16 + (j % 16);
            float acc = 0.0f;
            for (int k = 0; k < in; k++) acc += xr[k] * b[(size_t)k * 16];
            y[(size_t)i * ldy + j] = acc;
        }
    }
}

#ifdef GEMM_X86
/* ---- AVX-512: R rows x NV groups of 16 columns ---------------------------------- */
#define UNROLL _Pragma("GCC unroll 8")
#define DEF512(R, NV)                                                                                                  \
    TGT512 static void k512_##R##_##NV(int in, const float *x, const float *bp, float *out) {                          \
        __m512 acc[R][NV];                                                                                             \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_setzero_ps();        \
        for (int k = 0; k < in; k++) {                                                                                 \
            __m512 b[NV];                                                                                              \
            UNROLL for (int v = 0; v < NV; v++) b[v] = _mm512_loadu_ps(bp + ((size_t)v * in + k) * 16);                \
            UNROLL for (int r = 0; r < R; r++) {                                                                       \
                const __m512 a = _mm512_set1_ps(x[(size_t)r * in + k]);                                                \
                UNROLL for (int v = 0; v < NV; v++) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);                   \
            }                                                                                                          \
        }                                                                                                              \
        UNROLL for (int r = 0; r < R; r++) UNROLL for (int v = 0; v < NV; v++)                                         \
            _mm512_storeu_ps(out + ((size_t)r * 4 + v) * 16, acc[r][v]);                                               \
    }
#define DEF512_ROWS(NV) DEF512(1, NV) DEF512(2, NV) DEF512(3, NV) DEF512(4, NV) DEF512(5, NV) DEF512(6, NV)
DEF512_ROWS(1)
DEF512_ROWS(2)
DEF512_ROWS(3)
DEF512_ROWS(4)

typedef void (*k512_fn)(int, const float *, const float *, float *);
static const k512_fn k512[6][4] = {
    {k512_1_1, k512_1_2, k512_1_3, k512_1_4}, {k512_2_1, k512_2_2, k512_2_3, k512_2_4},
    {k512_3_1, k512_3_2, k512_3_3, k512_3_4}, {k512_4_1, k512_4_2, k512_4_3, k512_4_4},
    {k512_5_1, k512_5_2, k512_5_3, k512_5_4}, {k512_6_1, k512_6_2, k512_6_3, k512_6_4},
};

static void panel_avx512(int n, int in, const float *x, const float *bp, int np, float *y, int ldy) {
    const int ng = (np + 15) / 16;
    float out[GEMM_MR * 64];
    for (int i = 0; i < n; i += GEMM_MR) {
        const int R = n - i < GEMM_MR ? n - i : GEMM_MR;
        k512[R - 1][ng - 1](in, x + (size_t)i * in, bp, out);
        for (int r = 0; r < R; r++) memcpy(y + (size_t)(i + r) * ldy, out + (size_t)r * 64, (size_t)np * sizeof(float));
    }
}

/* ---- AVX2: R rows x 16 columns (two ymm) ----------------------------------------- */
#define DEF256(R)                                                                                                      \
    TGT256 static void k256_##R(int in, const float *x, const float *bp, float *out) {                                 \
        __m256 acc[R][2];                                                                                              \
        UNROLL for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();                                \
        for (int k = 0; k < in; k++) {                                                                                 \
            const __m256 b0 = _mm256_loadu_ps(bp + (size_t)k * 16), b1 = _mm256_loadu_ps(bp + (size_t)k * 16 + 8);     \
            UNROLL for (int r = 0; r < R; r++) {                                                                       \
                const __m256 a = _mm256_broadcast_ss(x + (size_t)r * in + k);                                          \
                acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);                                                         \
                acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);                                                         \
            }                                                                                                          \
        }                                                                                                              \
        UNROLL for (int r = 0; r < R; r++) {                                                                           \
            _mm256_storeu_ps(out + (size_t)r * 16, acc[r][0]);                                                         \
            _mm256_storeu_ps(out + (size_t)r * 16 + 8, acc[r][1]);                                                     \
        }                                                                                                              \
    }
DEF256(1)
DEF256(2)
DEF256(3)
DEF256(4)
DEF256(5)
DEF256(6)
typedef void (*k256_fn)(int, const float *, const float *, float *);
static const k256_fn k256[6] = {k256_1, k256_2, k256_3, k256_4, k256_5, k256_6};

static void panel_avx2(int n, int in, const float *x, const float *bp, int np, float *y, int ldy) {
    const int ng = (np + 15) / 16;
    float out[GEMM_MR * 16];
    for (int g = 0; g < ng; g++) {
        const int nc = np - g * 16 < 16 ? np - g * 16 : 16;
        for (int i = 0; i < n; i += GEMM_MR) {
            const int R = n - i < GEMM_MR ? n - i : GEMM_MR;
            k256[R - 1](in, x + (size_t)i * in, bp + (size_t)g * in * 16, out);
            for (int r = 0; r < R; r++)
                memcpy(y + (size_t)(i + r) * ldy + g * 16, out + (size_t)r * 16, (size_t)nc * sizeof(float));
        }
    }
}
#endif

void ops__gemm_panel(lc_cpu_level_t level, int n, int in, const float *x, const float *bp, int np, float *y, int ldy) {
#ifdef GEMM_X86
    if (level >= LC_CPU_AVX512) {
        panel_avx512(n, in, x, bp, np, y, ldy);
        return;
    }
    if (level >= LC_CPU_AVX2) {
        panel_avx2(n, in, x, bp, np, y, ldy);
        return;
    }
#endif
    (void)level;
    panel_scalar(n, in, x, bp, np, y, ldy);
}
