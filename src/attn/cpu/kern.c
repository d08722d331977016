/* The online-softmax tile engine (see kern.h). Per gathered tile of 64 keys,
 * mr query rows cost two (mr x 64 x d) products (scores, then P.V) and one row
 * pass (mask, max, exp, sum, rescale of acc).
 *
 * On x86 under GCC the products run in explicit-intrinsic kernels
 * (kern_x86.c) picked per call by __builtin_cpu_supports: attn__mm_avx512
 * (AVX-512F: 6 rows x 64 columns in 24 zmm accumulators for the whole K loop,
 * A broadcast from memory into the FMA) and attn__mm_avx2 (AVX2+FMA: 6 rows x
 * 16 columns in 12 of the 16 ymm); the row pass has an AVX-512 version and
 * decode's few-row direct path an AVX2+FMA one. The rest (gather, the generic
 * kernels for other CPUs and compilers) is GCC vector extensions compiled
 * twice (x86-64-v3 and baseline) with target_clones, so one binary runs
 * everywhere.
 *
 * Measured (bench_attn 8192 1, SmolLM2-135M shape, 2 threads of a shared
 * 2-core Sapphire Rapids VM, 3 alternating runs): dense prefill 1247-1669 ms,
 * 46-62 GFLOP/s, against 4528-4886 ms, 16-17 GFLOP/s before (quiet: 618 ms,
 * 125 GFLOP/s); decode dense at 8K 2.08 -> 0.69 ms. What remains
 * outside the products is mostly the transposing K gather and the V copy,
 * redone for every query tile (~11% of the profile). */
#include "attn/cpu/kern.h"
#include "attn/cpu/kern_x86.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/status.h"

// Vector arguments of inlined helpers in the baseline clone; no ABI crosses a file.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LC_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LC_HOT
#endif
#define LC_INLINE static inline __attribute__((always_inline))

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

LC_INLINE v8 ld8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
LC_INLINE void st8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
LC_INLINE v8 bc8(float x) { return (v8){x, x, x, x, x, x, x, x}; }
LC_INLINE v8 vmax8(v8 a, v8 b) {
    v8i gt = a > b, ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    ai = (ai & gt) | (bi & ~gt);
    memcpy(&a, &ai, sizeof a);
    return a;
}

/* exp(x) for x <= 0 (x may be -inf): Cody-Waite split into 2^n * 2^f, f in
 * [-1/2, 1/2], degree-6 Taylor polynomial of e^(f ln2): relative error ~2e-7. */
LC_INLINE v8 vexp8(v8 x) {
    v8i under = x < bc8(-87.0f);
    v8i xi, lo;
    memcpy(&xi, &x, sizeof xi);
    v8 m87 = bc8(-87.0f);
    memcpy(&lo, &m87, sizeof lo);
    xi = (xi & ~under) | (lo & under);
    memcpy(&x, &xi, sizeof x);
    v8 t = x * bc8(1.44269504088896341f);
    v8 r = (t + bc8(12582912.0f)) - bc8(12582912.0f);
    v8 y = (t - r) * bc8(0.693147180559945309f);
    v8 p = bc8(1.0f / 720);
    p = p * y + bc8(1.0f / 120);
    p = p * y + bc8(1.0f / 24);
    p = p * y + bc8(1.0f / 6);
    p = p * y + bc8(0.5f);
    p = p * y + bc8(1.0f);
    p = p * y + bc8(1.0f);
    v8i n = __builtin_convertvector(r, v8i);
    v8i bits = (n + 127) << 23;
    v8 sc;
    memcpy(&sc, &bits, sizeof sc);
    v8 res = p * sc;
    v8i ri;
    memcpy(&ri, &res, sizeof ri);
    ri &= ~under;
    memcpy(&res, &ri, sizeof res);
    return res;
}

/* C (M x N, ldc) += A (M x K, lda) * B (K x N, ldb); M a multiple of 4. */
LC_INLINE void mm_acc(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    int n16 = N & ~15;
    for (int i = 0; i < M; i += 4) {
        const float *a0 = A + (size_t)i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;
        float *c0 = C + (size_t)i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        for (int j = 0; j < n16; j += 16) {
            v8 x00 = ld8(c0 + j), x01 = ld8(c0 + j + 8), x10 = ld8(c1 + j), x11 = ld8(c1 + j + 8);
            v8 x20 = ld8(c2 + j), x21 = ld8(c2 + j + 8), x30 = ld8(c3 + j), x31 = ld8(c3 + j + 8);
            const float *b = B + j;
            for (int k = 0; k < K; k++, b += ldb) {
                v8 b0 = ld8(b), b1 = ld8(b + 8);
                v8 s0 = bc8(a0[k]), s1 = bc8(a1[k]), s2 = bc8(a2[k]), s3 = bc8(a3[k]);
                x00 += s0 * b0;
                x01 += s0 * b1;
                x10 += s1 * b0;
                x11 += s1 * b1;
                x20 += s2 * b0;
                x21 += s2 * b1;
                x30 += s3 * b0;
                x31 += s3 * b1;
            }
            st8(c0 + j, x00), st8(c0 + j + 8, x01), st8(c1 + j, x10), st8(c1 + j + 8, x11);
            st8(c2 + j, x20), st8(c2 + j + 8, x21), st8(c3 + j, x30), st8(c3 + j + 8, x31);
        }
        for (int j = n16; j < N; j++)
            for (int k = 0; k < K; k++) {
                float bk = B[(size_t)k * ldb + j];
                c0[j] += a0[k] * bk, c1[j] += a1[k] * bk, c2[j] += a2[k] * bk, c3[j] += a3[k] * bk;
            }
    }
}

/* C (M x N, ldc) (+)= A * B with the widest kernel the CPU runs; M a multiple of 4. */
LC_INLINE void mm_best(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C, int ldc,
                       int zero) {
#ifdef LC_MM_X86
    if (__builtin_cpu_supports("avx512f")) {
        attn__mm_avx512(M, N, K, A, lda, B, ldb, C, ldc, zero);
        return;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        attn__mm_avx2(M, N, K, A, lda, B, ldb, C, ldc, zero);
        return;
    }
#endif
    if (zero)
        for (int r = 0; r < M; r++) memset(C + (size_t)r * ldc, 0, (size_t)N * sizeof(float));
    mm_acc(M, N, K, A, lda, B, ldb, C, ldc);
}

/* ---- allocation ---------------------------------------------------------------- */
attn_tile_t *attn_tile_alloc(int max_rows, int d) {
    attn_tile_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    max_rows = (max_rows + 3) & ~3;
    t->d = d;
    t->max_rows = max_rows;
    t->q = calloc((size_t)max_rows * d, sizeof(float));
    t->qpos = calloc((size_t)max_rows, sizeof(int64_t));
    t->m = calloc((size_t)max_rows, sizeof(float));
    t->l = calloc((size_t)max_rows, sizeof(float));
    t->acc = calloc((size_t)max_rows * d, sizeof(float));
    t->kt = calloc((size_t)d * ATTN_BK, sizeof(float));
    t->vt = calloc((size_t)ATTN_BK * d, sizeof(float));
    t->s = calloc((size_t)max_rows * ATTN_BK, sizeof(float));
    if (!t->q || !t->qpos || !t->m || !t->l || !t->acc || !t->kt || !t->vt || !t->s) goto fail;
    return t;
fail:
    attn_tile_free(t);
    return NULL;
}

void attn_tile_free(attn_tile_t *t) {
    if (!t) return;
    free(t->q), free(t->qpos), free(t->m), free(t->l), free(t->acc);
    free(t->kt), free(t->vt), free(t->s);
    free(t);
}

void attn_tile_begin(attn_tile_t *t, int nr) {
    t->nr = nr;
    t->computed = 0;
    t->sink = 0;
    t->window = ATTN_NO_WINDOW;
    int mr = (nr + 3) & ~3;
    for (int r = 0; r < mr; r++) {
        t->m[r] = -INFINITY;
        t->l[r] = 0.0f;
    }
    memset(t->acc, 0, (size_t)mr * t->d * sizeof(float));
    // padding rows: zero queries, never visible
    for (int r = nr; r < mr; r++) {
        memset(t->q + (size_t)r * t->d, 0, (size_t)t->d * sizeof(float));
        t->qpos[r] = -1;
    }
}

/* ---- one gathered tile ------------------------------------------------------------ */
/* Scores of the gathered tile into t->s (columns rounded up to 16, padding 0). */
LC_INLINE void tile_scores(attn_tile_t *t, int mr, int ncol) {
    mm_best(mr, ncol, t->d, t->q, t->d, t->kt, ATTN_BK, t->s, ATTN_BK, 1);
}

/* Few rows (decode): scores straight from the page rows, no gather. */
LC_INLINE void direct_scores(attn_tile_t *t, int mr, int ncol) {
    const int d = t->d;
    for (int u = 0; u < t->nk; u++) {
        const float *kr = t->kptr[u];
        for (int r = 0; r < t->nr; r++) {
            const float *qr = t->q + (size_t)r * d;
            v8 a = bc8(0.0f);
            for (int c = 0; c < d; c += 8) a += ld8(qr + c) * ld8(kr + c);
            float x = 0.0f;
            for (int i = 0; i < 8; i++) x += a[i];
            t->s[(size_t)r * ATTN_BK + u] = x;
        }
    }
    for (int r = 0; r < mr; r++)
        for (int u = t->nk; u < ncol; u++) t->s[(size_t)r * ATTN_BK + u] = 0.0f;
}

LC_INLINE void direct_pv(attn_tile_t *t) {
    const int d = t->d;
    for (int r = 0; r < t->nr; r++) {
        float *a = t->acc + (size_t)r * d;
        const float *p = t->s + (size_t)r * ATTN_BK;
        for (int c = 0; c < d; c += 8) {
            v8 x = ld8(a + c);
            for (int u = 0; u < t->nk; u++) x += bc8(p[u]) * ld8(t->vptr[u] + c);
            st8(a + c, x);
        }
    }
}


/* Masks the scores of rows [0, mr) in t->s, turns them into exp(s - m_new) and
 * folds max / sum into m, l, rescaling acc where the max moved. Returns the
 * visible pairs. */
LC_INLINE double rows_softmax(attn_tile_t *t, int mr, int ncol) {
    const int d = t->d;
    const int64_t kmin = t->kpos[0], kmax = t->kpos[t->nk - 1];
    double computed = 0;
    for (int r = 0; r < mr; r++) {
        float *s = t->s + (size_t)r * ATTN_BK;
        if (r >= t->nr) {
            memset(s, 0, (size_t)ncol * sizeof(float));
            continue;
        }
        int visible = attn__row_mask(t, r, s, ncol, kmin, kmax);
        if (visible == 0) {
            memset(s, 0, (size_t)ncol * sizeof(float));
            continue;
        }
        computed += visible;
        v8 vm = bc8(-INFINITY);
        for (int j = 0; j < ncol; j += 8) {
            vm = vmax8(ld8(s + j), vm);
        }
        float mx = vm[0];
        for (int i = 1; i < 8; i++) mx = vm[i] > mx ? vm[i] : mx;
        float m_old = t->m[r], m_new = mx > m_old ? mx : m_old;
        v8 vs = bc8(0.0f), mn = bc8(m_new);
        for (int j = 0; j < ncol; j += 8) {
            v8 p = vexp8(ld8(s + j) - mn);
            st8(s + j, p);
            vs += p;
        }
        float sum = 0.0f;
        for (int i = 0; i < 8; i++) sum += vs[i];
        if (m_old != m_new) {
            float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
            float *a = t->acc + (size_t)r * d;
            for (int c = 0; c < d; c++) a[c] *= alpha;
            t->l[r] *= alpha;
            t->m[r] = m_new;
        }
        t->l[r] += sum;
    }
    return computed;
}

LC_HOT static void tile_process(attn_tile_t *t) {
    const int nk = t->nk, d = t->d, mr = (t->nr + 3) & ~3;
    const int ncol = (nk + 15) & ~15;
    if (t->direct) {
#ifdef LC_MM_X86
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            attn__direct_scores_avx2(t, ncol);
        else
#endif
            direct_scores(t, mr, ncol);
    } else {
        for (int c = 0; c < d; c++) // zero the padding columns of K
            for (int j = nk; j < ncol; j++) t->kt[(size_t)c * ATTN_BK + j] = 0.0f;
        tile_scores(t, mr, ncol);
    }
    double computed;
#ifdef LC_MM_X86
    if (!t->direct && __builtin_cpu_supports("avx512f"))
        computed = attn__rows_avx512(t, mr, ncol);
    else
#endif
        computed = rows_softmax(t, mr, ncol);
    t->computed += computed;
    if (t->direct) {
#ifdef LC_MM_X86
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            attn__direct_pv_avx2(t);
        else
#endif
            direct_pv(t);
    } else
        mm_best(mr, d, nk, t->s, ATTN_BK, t->vt, d, t->acc, d, 0);
    t->nk = 0;
}

/* ---- gather ----------------------------------------------------------------------- */
LC_HOT void attn_tile_run(attn_tile_t *t, const attn_kv_t *kv, int kvh, const attn_range_t *rg, int n_rg, int64_t skip,
                          int64_t take) {
    const int d = t->d, bs = kv->block_size;
    t->nk = 0;
    t->direct = t->nr <= 4 && d % 8 == 0;
    for (int i = 0; i < n_rg && take != 0; i++) {
        int64_t lo = rg[i].lo, hi = rg[i].hi;
        if (hi - lo <= skip) {
            skip -= hi > lo ? hi - lo : 0;
            continue;
        }
        lo += skip;
        skip = 0;
        if (take >= 0 && hi - lo > take) hi = lo + take;
        if (take >= 0) take -= hi - lo;
        for (int64_t j = lo; j < hi;) {
            // a run inside one page, cut to the room left in the tile
            int64_t run = bs - j % bs;
            if (run > hi - j) run = hi - j;
            if (run > ATTN_BK - t->nk) run = ATTN_BK - t->nk;
            const float *kp = attn_kv_krow(kv, kvh, d, j), *vp = attn_kv_vrow(kv, kvh, d, j);
            if (t->direct) {
                for (int64_t u = 0; u < run; u++) {
                    t->kptr[t->nk + u] = kp + u * d;
                    t->vptr[t->nk + u] = vp + u * d;
                    t->kpos[t->nk + u] = j + u;
                }
                t->nk += (int)run;
                j += run;
                if (t->nk == ATTN_BK) tile_process(t);
                continue;
            }
            memcpy(t->vt + (size_t)t->nk * d, vp, (size_t)run * d * sizeof(float));
            for (int64_t u = 0; u < run; u++) {
                const float *kr = kp + u * d;
                float *dst = t->kt + t->nk + u;
                for (int c = 0; c < d; c++) dst[(size_t)c * ATTN_BK] = kr[c];
                t->kpos[t->nk + u] = j + u;
            }
            t->nk += (int)run;
            j += run;
            if (t->nk == ATTN_BK) tile_process(t);
        }
    }
    if (t->nk > 0) tile_process(t);
}

void attn_tile_finish(attn_tile_t *t) {
    for (int r = 0; r < t->nr; r++) {
        float *a = t->acc + (size_t)r * t->d;
        if (t->l[r] > 0.0f) {
            float inv = 1.0f / t->l[r];
            for (int c = 0; c < t->d; c++) a[c] *= inv;
            t->l[r] = t->m[r] + logf(t->l[r]);
        } else {
            memset(a, 0, (size_t)t->d * sizeof(float));
            t->l[r] = -INFINITY;
        }
    }
}

LC_HOT float attn_row_max(const float *x, int64_t n) {
    v8 vm = bc8(-INFINITY);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) vm = vmax8(ld8(x + j), vm);
    float mx = -INFINITY;
    for (int i = 0; i < 8; i++) mx = vm[i] > mx ? vm[i] : mx;
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

LC_HOT float attn_row_exp_sum(float *x, int64_t n, float sub) {
    v8 vs = bc8(0.0f), m = bc8(sub);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        v8 p = vexp8(ld8(x + j) - m);
        st8(x + j, p);
        vs += p;
    }
    if (j < n) { // the tail through the same exp, padded with -inf (exp 0)
        float tail[8];
        for (int i = 0; i < 8; i++) tail[i] = j + i < n ? x[j + i] : -INFINITY;
        v8 p = vexp8(ld8(tail) - m);
        st8(tail, p);
        vs += p;
        for (int i = 0; j + i < n; i++) x[j + i] = tail[i];
    }
    float sum = 0.0f;
    for (int i = 0; i < 8; i++) sum += vs[i];
    return sum;
}

LC_HOT void attn_tile_scores(attn_tile_t *t, const attn_kv_t *kv, int kvh, int64_t lo, int64_t hi, float *S,
                             int64_t lds) {
    const int d = t->d, mr = (t->nr + 3) & ~3;
    for (int64_t j0 = lo; j0 < hi; j0 += ATTN_BK) {
        int nk = (int)(hi - j0 < ATTN_BK ? hi - j0 : ATTN_BK);
        int ncol = (nk + 15) & ~15;
        for (int u = 0; u < nk; u++) {
            const float *kr = attn_kv_krow(kv, kvh, d, j0 + u);
            for (int c = 0; c < d; c++) t->kt[(size_t)c * ATTN_BK + u] = kr[c];
        }
        for (int c = 0; c < d; c++)
            for (int u = nk; u < ncol; u++) t->kt[(size_t)c * ATTN_BK + u] = 0.0f;
        tile_scores(t, mr, ncol);
        for (int r = 0; r < t->nr; r++)
            memcpy(S + (size_t)r * lds + (j0 - lo), t->s + (size_t)r * ATTN_BK, (size_t)nk * sizeof(float));
    }
}

/* ---- shared drivers ------------------------------------------------------------- */
int attn_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int attn_check_args(const attn_shape_t *shape, const attn_kv_t *kv, int64_t n_keys) {
    if (!shape || !kv || shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->head_dim <= 0 ||
        shape->n_heads % shape->n_kv_heads != 0 || kv->block_size <= 0 || !kv->k || !kv->v || !kv->blocks)
        return LC_EINVAL;
    if (n_keys > kv->n_kv || n_keys <= 0) return LC_EINVAL;
    return 0;
}

int attn_decode_ranges(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, const attn_range_t *const *rg,
                       const int *n_rg, float *out, float *lse, double *computed) {
    const int H = shape->n_heads, KH = shape->n_kv_heads, G = H / KH, d = shape->head_dim;
    const int64_t qpos = kv->n_kv - 1;
    int64_t maxkeys = 0;
    for (int kh = 0; kh < KH; kh++) {
        int64_t n = 0;
        for (int i = 0; i < n_rg[kh]; i++) n += rg[kh][i].hi - rg[kh][i].lo;
        maxkeys = n > maxkeys ? n : maxkeys;
    }
    // split-K: enough pieces to occupy the threads, at least 256 keys each
    int nsplit = (2 * attn_max_threads() + KH - 1) / KH;
    if (nsplit > maxkeys / 256) nsplit = (int)(maxkeys / 256);
    if (nsplit < 1) nsplit = 1;
    const int n_items = KH * nsplit;
    float *po = malloc((size_t)n_items * G * d * sizeof(float));
    float *pl = malloc((size_t)n_items * G * sizeof(float));
    int err = 0;
    double comp = 0;
    if (!po || !pl) {
        err = LC_ENOMEM;
        goto done;
    }
#pragma omp parallel reduction(+ : comp)
    {
        attn_tile_t *t = attn_tile_alloc(G, d);
        if (!t) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!t) continue;
            int kh = it / nsplit, sp = it % nsplit;
            int64_t n = 0;
            for (int i = 0; i < n_rg[kh]; i++) n += rg[kh][i].hi - rg[kh][i].lo;
            int64_t a = n * sp / nsplit, b = n * (sp + 1) / nsplit;
            attn_tile_begin(t, G);
            for (int g = 0; g < G; g++) {
                const float *qh = q + (size_t)(kh * G + g) * d;
                for (int c = 0; c < d; c++) t->q[(size_t)g * d + c] = qh[c] * shape->scale;
                t->qpos[g] = qpos;
            }
            if (b > a) attn_tile_run(t, kv, kh, rg[kh], n_rg[kh], a, b - a);
            attn_tile_finish(t);
            memcpy(po + (size_t)it * G * d, t->acc, (size_t)G * d * sizeof(float));
            memcpy(pl + (size_t)it * G, t->l, (size_t)G * sizeof(float));
            comp += t->computed;
        }
        attn_tile_free(t);
    }
    if (err) goto done;
    for (int kh = 0; kh < KH; kh++) {
        float *o1 = po + (size_t)kh * nsplit * G * d, *l1 = pl + (size_t)kh * nsplit * G;
        for (int sp = 1; sp < nsplit; sp++) attn_merge(o1, l1, o1 + (size_t)sp * G * d, l1 + (size_t)sp * G, G, d);
        memcpy(out + (size_t)kh * G * d, o1, (size_t)G * d * sizeof(float));
        if (lse) memcpy(lse + (size_t)kh * G, l1, (size_t)G * sizeof(float));
    }
    if (computed) *computed = comp;
done:
    free(po);
    free(pl);
    return err;
}

int attn_prefill_window(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                        int64_t sink, int64_t window, float *out, float *lse, double *computed) {
    const int H = shape->n_heads, KH = shape->n_kv_heads, G = H / KH, d = shape->head_dim;
    if (n_q <= 0) return n_q == 0 ? 0 : LC_EINVAL;
    int rc = attn_check_args(shape, kv, q_pos0 + n_q);
    if (rc || q_pos0 < 0 || !q || !out) return rc ? rc : LC_EINVAL;
    const int BQ = G <= 2 ? 48 : G <= 4 ? 32 : 16; // query positions per tile
    const int n_qt = (n_q + BQ - 1) / BQ, n_items = KH * n_qt;
    int err = 0;
    double comp = 0;
#pragma omp parallel reduction(+ : comp)
    {
        attn_tile_t *t = attn_tile_alloc(BQ * G, d);
        if (!t) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!t) continue;
            // largest tiles first: later query tiles see more keys
            int kh = it % KH, qt = n_qt - 1 - it / KH;
            int i0 = qt * BQ, i1 = i0 + BQ < n_q ? i0 + BQ : n_q, nq = i1 - i0;
            attn_tile_begin(t, nq * G);
            t->sink = sink;
            t->window = window;
            for (int i = 0; i < nq; i++)
                for (int g = 0; g < G; g++) {
                    const float *qh = q + ((size_t)(i0 + i) * H + kh * G + g) * d;
                    float *dst = t->q + (size_t)(i * G + g) * d;
                    for (int c = 0; c < d; c++) dst[c] = qh[c] * shape->scale;
                    t->qpos[i * G + g] = q_pos0 + i0 + i;
                }
            int64_t first = q_pos0 + i0, last = q_pos0 + i1 - 1;
            attn_range_t rg[2];
            int n_rg = 0;
            int64_t wlo = first - window + 1;
            if (wlo <= sink) {
                rg[n_rg++] = (attn_range_t){0, last + 1};
            } else {
                rg[n_rg++] = (attn_range_t){0, sink};
                rg[n_rg++] = (attn_range_t){wlo, last + 1};
            }
            attn_tile_run(t, kv, kh, rg, n_rg, 0, -1);
            attn_tile_finish(t);
            for (int i = 0; i < nq; i++)
                for (int g = 0; g < G; g++) {
                    size_t row = (size_t)(i0 + i) * H + kh * G + g;
                    memcpy(out + row * d, t->acc + (size_t)(i * G + g) * d, (size_t)d * sizeof(float));
                    if (lse) lse[row] = t->l[i * G + g];
                }
            comp += t->computed;
        }
        attn_tile_free(t);
    }
    if (computed) *computed = comp;
    return err;
}
