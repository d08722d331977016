/* Matmul: f32 weights through CBLAS, and weights kept in their GGUF block
 * format (ops_matmul_w): decode multiplies them in place against activations
 * quantized to 8-bit blocks, prefill expands panels of rows to f32 in a
 * per-thread buffer and runs sgemm against them.
 *
 * Threads: the attention kernels use OpenMP, and a pthreads OpenBLAS next to
 * an OpenMP pool oversubscribes the cores — each side's idle threads spin
 * while the other computes (10x slower decode on 2 cores). So when OpenMP is
 * on, the matmul splits the output columns over the same OpenMP threads and
 * runs a single-threaded BLAS on each slice; one pool does all the work. */
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
#include "ops/cpu/qformat.h"
#include "ops/cpu/threads.h"

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
static qf_kernels_t kern;
static const char *kern_name = "scalar";
static pthread_once_t kern_once = PTHREAD_ONCE_INIT;
static atomic_int q8_on = -1;

/* What the AVX2 kernels are compiled for (qdot_avx2.c): all three. F16C from
 * CPUID itself: clang's __builtin_cpu_supports does not know it. */
static int cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c = 0, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C)) return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* What the AVX-512 kernels are compiled for (qdot_avx512.c), on top of the
 * AVX2 set they start from. */
static int cpu_has_avx512(void) {
#if defined(__x86_64__) || defined(__i386__)
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* The best kernel set the CPU and the environment allow: LACUNA_NO_AVX512
 * stops at AVX2, LACUNA_NO_AVX2 at scalar. */
static void kern_best(void) {
    qf_kernels_scalar(&kern);
    kern_name = "scalar";
#if defined(__x86_64__) || defined(__i386__)
    if (!cpu_has_avx2() || getenv("LACUNA_NO_AVX2")) return;
    if (cpu_has_avx512() && !getenv("LACUNA_NO_AVX512")) {
        qf_kernels_avx512(&kern);
        kern_name = "avx512vnni";
    } else {
        qf_kernels_avx2(&kern);
        kern_name = "avx2";
    }
#endif
}

static void kern_init(void) {
    kern_best();
    if (atomic_load(&q8_on) < 0) {
        const char *e = getenv("LACUNA_MM_Q8");
        atomic_store(&q8_on, e && *e ? atoi(e) != 0 : 1);
    }
#ifdef _OPENMP
    ops__blas_single_once();
#endif
}

const char *ops_mm_force_scalar(int on) {
    pthread_once(&kern_once, kern_init);
    if (on) {
        qf_kernels_scalar(&kern);
        kern_name = "scalar";
    } else {
        kern_best();
    }
    return kern_name;
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
    pthread_once(&kern_once, kern_init);
    kern.dequant[qf_type_index(w->type)]((const uint8_t *)w->data + (size_t)r * w->row_bytes, dst, w->cols);
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

/* 8-bit activations: each weight row is read once and dotted with up to QF_NA
 * activation rows at a time; output rows split over the threads. */
static int mm_quant(float *y, const float *x, const ops_w_t *w, int n) {
    const int ti = qf_type_index(w->type), in = w->cols, out = w->rows, ak = qf_act_kind(w->type);
    const void *act = x;
    size_t astride = (size_t)in * sizeof(float);
    if (ak != QF_ACT_F32) {
        astride = ak == QF_ACT_Q8B ? (size_t)(in / QK) * sizeof(q8b_t) : (size_t)(in / QK_K) * sizeof(q8k_t);
        void *buf = buf_get(BUF_ACT, astride * (size_t)n);
        if (!buf) return LC_ENOMEM;
        for (int j = 0; j < n; j++) {
            if (ak == QF_ACT_Q8B)
                kern.quant_q8b(x + (size_t)j * in, (q8b_t *)((uint8_t *)buf + j * astride), in);
            else
                kern.quant_q8k(x + (size_t)j * in, (q8k_t *)((uint8_t *)buf + j * astride), in);
        }
        act = buf;
    }
    const qf_dot_fn dot = kern.dot[ti];
    const uint8_t *wd = w->data;
    const size_t rb = w->row_bytes;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (out >= 64 && !omp_in_parallel())
#endif
    for (int r = 0; r < out; r++)
        for (int j = 0; j < n; j += QF_NA)
            dot(in, wd + (size_t)r * rb, (const uint8_t *)act + (size_t)j * astride, astride,
                n - j < QF_NA ? n - j : QF_NA, y + (size_t)j * out + r, (size_t)out);
    /* 8-bit quantization would turn NaN or Inf into ordinary numbers; give a
     * row that had any the NaN outputs the f32 path would, so corrupted
     * activations are seen instead of yielding plausible logits. */
    if (ak != QF_ACT_F32)
        for (int j = 0; j < n; j++) {
            const float *xj = x + (size_t)j * in;
            float acc = 0;
            for (int i = 0; i < in; i++) acc += xj[i] * 0.0f;
            if (acc != 0)
                for (int r = 0; r < out; r++) y[(size_t)j * out + r] = NAN;
        }
    return 0;
}

#define MM_PANEL 256
/* Exact: panels of up to MM_PANEL rows expanded to f32 and multiplied by
 * sgemm; the expansion costs one pass over the panel, amortised over n.
 * Panels are large because sgemm repacks x for every call (64-row panels
 * measured 10-30% slower than f32 weights at n = 512; 256 rows within ~5%),
 * but small enough that every thread gets one. */
static int mm_tiles(float *y, const float *x, const ops_w_t *w, int n) {
    const int in = w->cols, out = w->rows, ti = qf_type_index(w->type);
    const size_t rb = w->row_bytes;
    int fail = 0, nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel()) nt = omp_get_max_threads();
#endif
    int panel = ((out + nt - 1) / nt + 15) / 16 * 16;
    if (panel > MM_PANEL) panel = MM_PANEL;
    const int n_panels = (out + panel - 1) / panel;
#ifdef _OPENMP
#pragma omp parallel if (nt > 1)
#endif
    {
        float *tile = buf_get(BUF_TILE, (size_t)panel * in * sizeof(float));
        if (!tile) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            fail = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int p = 0; p < n_panels; p++) {
            if (!tile) continue;
            const int r0 = p * panel, np = out - r0 < panel ? out - r0 : panel;
            for (int r = 0; r < np; r++)
                kern.dequant[ti]((const uint8_t *)w->data + (size_t)(r0 + r) * rb, tile + (size_t)r * in, in);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, np, in, 1.0f, x, in, tile, in, 0.0f, y + r0, out);
        }
    }
    return fail ? LC_ENOMEM : 0;
}

int ops_matmul_w(float *y, const float *x, const ops_w_t *w, int n, int mode) {
    if (n <= 0 || w->rows <= 0) return 0;
    pthread_once(&kern_once, kern_init);
    if (mode == OPS_MM_Q8 && atomic_load(&q8_on)) return mm_quant(y, x, w, n);
    if (w->type == OPS_W_F32) {
        ops_matmul(y, x, w->data, n, w->cols, w->rows);
        return 0;
    }
    return mm_tiles(y, x, w, n);
}
