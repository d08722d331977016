/* Matmul: weights kept in their GGUF block format (ops_matmul_w), and plain
 * f32 matrices through CBLAS (ops_matmul: tests and the benchmarks only).
 *
 * Weights in block format take one of two arithmetics, which the caller
 * picks per kind of row (the forward pass: prompt rows exact, generated rows
 * q8), never by the batch:
 *  - exact: panels of weights are expanded to f32 and multiplied by our own
 *    kernels (gemm.c);
 *  - q8: each activation row is quantized to 8-bit blocks and dotted with the
 *    weight blocks in integer arithmetic (qdot_*.c).
 * Either way a row's result depends only on that row, the mode, the kernel
 * set (common/cpu.h) and the weights, never on the rows beside it.
 *
 * Threads: the work splits over output columns on the caller's OpenMP team;
 * every BLAS call runs single-threaded inside it (a pthreads BLAS next to an
 * OpenMP pool oversubscribes the cores). */
#include <cblas.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdatomic.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/status.h"
#include "ops/ops.h"
#include "common/cpu.h"
#include "ops/cpu/gemm.h"
#include "ops/cpu/qformat.h"
#include "ops/cpu/threads.h"

_Static_assert(GEMM_NP % QF_PACK == 0, "a panel holds whole packed groups");

/* Columns per slice are rounded to this so slices stay cache-line aligned. */
#define MM_ALIGN 16

static void mm_serial(float *y, int ldy, const float *x, const float *w, int n, int in, int out) {
    if (n == 1)
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, 0.0f, y, 1);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, 0.0f, y, ldy);
}

void ops_matmul(float *y, const float *x, const float *w, int n, int in, int out) {
    if (n <= 0 || out <= 0) return;
#ifdef _OPENMP
    ops__blas_single_once();
    int nt = omp_get_max_threads();
    /* small products are not worth the fork */
    if (nt > 1 && (double)n * in * out >= 1 << 18 && out >= 2 * MM_ALIGN && !omp_in_parallel()) {
#pragma omp parallel num_threads(nt)
        {
            int t = omp_get_thread_num(), k = omp_get_num_threads();
            int per = ((out + k - 1) / k + MM_ALIGN - 1) / MM_ALIGN * MM_ALIGN;
            int j0 = t * per, j1 = j0 + per < out ? j0 + per : out;
            if (j0 < j1) mm_serial(y + j0, out, x, w + (size_t)j0 * in, n, in, j1 - j0);
        }
        return;
    }
#endif
    mm_serial(y, out, x, w, n, in, out);
}

/* ---- weights in block format ------------------------------------------------------ */
static qf_kernels_t ktab[3]; // by lc_cpu_level_t
static pthread_once_t kern_once = PTHREAD_ONCE_INIT;
static atomic_int q8_on = -1;

static void kern_init(void) {
    qf_kernels_scalar(&ktab[LC_CPU_SCALAR]);
    ktab[LC_CPU_AVX2] = ktab[LC_CPU_AVX512] = ktab[LC_CPU_SCALAR];
#if defined(__x86_64__) || defined(__i386__)
    if (lc_cpu_detected() >= LC_CPU_AVX2) {
        qf_kernels_avx2(&ktab[LC_CPU_AVX2]);
        ktab[LC_CPU_AVX512] = ktab[LC_CPU_AVX2];
    }
    if (lc_cpu_detected() >= LC_CPU_AVX512) qf_kernels_avx512(&ktab[LC_CPU_AVX512]);
#endif
    if (atomic_load(&q8_on) < 0) {
        const char *e = getenv("LACUNA_MM_Q8");
        atomic_store(&q8_on, e && *e ? atoi(e) != 0 : 1);
    }
#ifdef _OPENMP
    ops__blas_single_once();
#endif
}

static const qf_kernels_t *kern(void) {
    pthread_once(&kern_once, kern_init);
    return &ktab[lc_cpu_level()];
}

int ops_mm_q8(void) {
    pthread_once(&kern_once, kern_init);
    return atomic_load(&q8_on);
}

void ops_mm_set_q8(int on) {
    pthread_once(&kern_once, kern_init);
    atomic_store(&q8_on, on != 0);
}

void ops_w_row_f32(const ops_w_t *w, int r, float *dst) {
    if (w->packed) {
        qf_pack_row(w, r, dst);
        return;
    }
    kern()->dequant[qf_type_index(w->type)]((const uint8_t *)w->data + (size_t)r * w->row_bytes, dst, w->cols);
}

/* Per-thread scratch that grows and is kept (freed at thread exit): the
 * quantized activations on the caller, the f32 panels on every worker. */
enum { BUF_ACT, BUF_TILE, BUF_N };
static pthread_key_t buf_key[BUF_N];
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
typedef struct {
    void *p;
    size_t n;
} tlbuf_t;

static void buf_free(void *v) {
    tlbuf_t *b = v;
    free(b->p);
    free(b);
}

static void buf_keys(void) {
    for (int i = 0; i < BUF_N; i++) pthread_key_create(&buf_key[i], buf_free);
}

static void *buf_get(int which, size_t n) {
    pthread_once(&buf_once, buf_keys);
    tlbuf_t *b = pthread_getspecific(buf_key[which]);
    if (!b) {
        if (!(b = calloc(1, sizeof *b))) return NULL;
        pthread_setspecific(buf_key[which], b);
    }
    if (b->n < n) {
        free(b->p);
        b->p = NULL;
        b->n = 0;
        if (posix_memalign(&b->p, 64, n)) return b->p = NULL;
        b->n = n;
    }
    return b->p;
}

/* Work units of one matrix: packed groups of 16 rows, else rows (q8) or
 * panels of GEMM_NP rows (exact). The matrices of one call are laid end to
 * end in one unit list, so one parallel region serves them all. */
static int q8_units(const ops_w_t *w) { return w->packed ? w->rows / QF_PACK : w->rows; }
static int exact_units(const ops_w_t *w) { return (w->rows + GEMM_NP - 1) / GEMM_NP; }

/* The matrix holding unit u of the list (units0[i]: first unit of matrix i). */
static int unit_matrix(const int *units0, int nw, int u) {
    int i = 0;
    while (i + 1 < nw && u >= units0[i + 1]) i++;
    return i;
}

/* 8-bit activations, quantized once for every matrix (they share x): packed
 * groups serve QF_PNA activation rows per call, other weight rows QF_NA. */
static int mm_quant(int nw, float *const *ys, const float *x, const ops_w_t *const *ws, int n) {
    const qf_kernels_t *kt = kern();
    const int in = ws[0]->cols, ak = qf_act_kind(ws[0]->type);
    const void *act = x;
    size_t astride = (size_t)in * sizeof(float);
    if (ak != QF_ACT_F32) {
        astride = ak == QF_ACT_Q8B ? (size_t)(in / QK) * sizeof(q8b_t) : (size_t)(in / QK_K) * sizeof(q8k_t);
        void *buf = buf_get(BUF_ACT, astride * (size_t)n);
        if (!buf) return LC_ENOMEM;
        for (int j = 0; j < n; j++) {
            if (ak == QF_ACT_Q8B)
                kt->quant_q8b(x + (size_t)j * in, (q8b_t *)((uint8_t *)buf + j * astride), in);
            else
                kt->quant_q8k(x + (size_t)j * in, (q8k_t *)((uint8_t *)buf + j * astride), in);
        }
        act = buf;
    }
    int units0[OPS_MM_MAX_W], total = 0;
    for (int i = 0; i < nw; i++) units0[i] = total, total += q8_units(ws[i]);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (total >= 4 && !omp_in_parallel())
#endif
    for (int u = 0; u < total; u++) {
        const int i = unit_matrix(units0, nw, u), k = u - units0[i];
        const ops_w_t *w = ws[i];
        const int ti = qf_type_index(w->type), out = w->rows;
        const uint8_t *wd = w->data;
        float *y = ys[i];
        if (w->packed) { // 16 weight rows, QF_PNA activation rows at a time
            for (int j = 0; j < n; j += QF_PNA)
                kt->pdot[ti](in, wd + (size_t)k * QF_PACK * w->row_bytes, (const uint8_t *)act + (size_t)j * astride,
                             astride, n - j < QF_PNA ? n - j : QF_PNA, y + (size_t)j * out + (size_t)k * QF_PACK,
                             (size_t)out);
        } else {
            for (int j = 0; j < n; j += QF_NA)
                kt->dot[ti](in, wd + (size_t)k * w->row_bytes, (const uint8_t *)act + (size_t)j * astride, astride,
                            n - j < QF_NA ? n - j : QF_NA, y + (size_t)j * out + k, (size_t)out);
        }
    }
    /* 8-bit quantization would turn NaN or Inf into ordinary numbers; give a
     * row that had any the NaN outputs the f32 path would, so corrupted
     * activations are seen instead of yielding plausible logits. */
    if (ak != QF_ACT_F32)
        for (int j = 0; j < n; j++) {
            const float *xj = x + (size_t)j * in;
            float acc = 0;
            for (int i = 0; i < in; i++) acc += xj[i] * 0.0f;
            if (acc != 0)
                for (int i = 0; i < nw; i++)
                    for (int r = 0; r < ws[i]->rows; r++) ys[i][(size_t)j * ws[i]->rows + r] = NAN;
        }
    return 0;
}

/* Exact: panels of GEMM_NP weight rows expanded to f32 and packed once per
 * call (one pass over the panel, amortised over n rows), then every row of x
 * through our kernels. */
static int mm_exact(int nw, float *const *ys, const float *x, const ops_w_t *const *ws, int n) {
    const qf_kernels_t *kt = kern();
    const lc_cpu_level_t level = lc_cpu_level();
    const int in = ws[0]->cols;
    int units0[OPS_MM_MAX_W], total = 0;
    for (int i = 0; i < nw; i++) units0[i] = total, total += exact_units(ws[i]);
    int fail = 0;
#ifdef _OPENMP
#pragma omp parallel if (total > 1 && !omp_in_parallel())
#endif
    {
        float *tile = buf_get(BUF_TILE, (size_t)GEMM_NP * in * sizeof(float) * 2);
        if (!tile) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            fail = 1;
        }
        float *packed = tile ? tile + (size_t)GEMM_NP * in : NULL;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int u = 0; u < total; u++) {
            if (!tile) continue;
            const int i = unit_matrix(units0, nw, u);
            const ops_w_t *w = ws[i];
            const int ti = qf_type_index(w->type), out = w->rows;
            const size_t rb = w->row_bytes;
            const int r0 = (u - units0[i]) * GEMM_NP, np = out - r0 < GEMM_NP ? out - r0 : GEMM_NP;
            if (w->packed) { // whole groups of 16 rows, expanded straight into the kernels' layout
                for (int g = 0; g < np / QF_PACK; g++)
                    kt->pexpand[ti]((const uint8_t *)w->data + (size_t)(r0 + g * QF_PACK) * rb, in,
                                    packed + (size_t)g * in * QF_PACK);
            } else {
                for (int r = 0; r < np; r++)
                    kt->dequant[ti]((const uint8_t *)w->data + (size_t)(r0 + r) * rb, tile + (size_t)r * in, in);
                ops__gemm_pack(tile, np, in, packed);
            }
            ops__gemm_panel(level, n, in, x, packed, np, ys[i] + r0, out);
        }
    }
    return fail ? LC_ENOMEM : 0;
}

int ops_matmul_w_multi(int nw, float *const *y, const ops_w_t *const *w, const float *x, int n, int mode) {
    if (nw <= 0 || nw > OPS_MM_MAX_W) return LC_EINVAL;
    for (int i = 1; i < nw; i++)
        if (w[i]->cols != w[0]->cols) return LC_EINVAL;
    if (n <= 0) return 0;
    pthread_once(&kern_once, kern_init);
    if (mode == OPS_MM_Q8 && atomic_load(&q8_on)) {
        /* one activation format for all, else one call each */
        for (int i = 1; i < nw; i++)
            if (qf_act_kind(w[i]->type) != qf_act_kind(w[0]->type)) {
                for (int k = 0; k < nw; k++) {
                    int rc = mm_quant(1, &y[k], x, &w[k], n);
                    if (rc) return rc;
                }
                return 0;
            }
        return mm_quant(nw, y, x, w, n);
    }
    return mm_exact(nw, y, x, w, n);
}

int ops_matmul_w(float *y, const float *x, const ops_w_t *w, int n, int mode) {
    if (n <= 0 || w->rows <= 0) return 0;
    return ops_matmul_w_multi(1, &y, &w, x, n, mode);
}
