/* The online-softmax tile engine (see kern.h). Per tile of 64 keys, mr
 * query rows cost two (mr x 64 x d) products (scores, then P.V) and one row
 * pass (mask, max, exp, sum, rescale of acc), on keys read in place.
 *
 * The products and the row pass come in three kernel sets, chosen by the
 * process's CPU level (common/cpu.h) and recorded in the tile: AVX-512
 * (kern_x86.c: 6 rows x 64 columns in 24 zmm accumulators, and a 16-lane row
 * pass), AVX2+FMA (kern_x86.c: 6 x 16 in ymm; the generic row pass), and
 * generic code (no FMA: ISO C does not contract). The generic row pass is
 * compiled twice (x86-64-v3 and baseline) with target_clones; both clones do
 * the same arithmetic per lane, so one binary runs everywhere with one result
 * per kernel set.
 *
 * Decode rows go through the same tiles as prompt rows, which is what makes a
 * generated row and a prompt row at the same position agree. */
#include "attn/cpu/kern.h"
#include "attn/cpu/kern_x86.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/cpu.h"
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

/* ---- generic products (the scalar set) ---------------------------------------------- */
/* Scores and P.V as kern_x86.c's kernels define them, in plain multiply-add
 * (one chain per output in the same order). */
static void scores_generic(int M, int ng, int d, const float *Q, const float *const *kg, const int *ldk, float *S) {
    for (int r = 0; r < M; r++)
        for (int g = 0; g < ng; g++)
            for (int i = 0; i < 16; i++) {
                float acc = 0.0f;
                for (int c = 0; c < d; c++) acc += Q[(size_t)r * d + c] * kg[g][(size_t)c * ldk[g] + i];
                S[(size_t)r * ATTN_BK + 16 * g + i] = acc;
            }
}

static void pv_generic(int M, int nk, int d, const float *P, const float *const *vrow, float *A) {
    for (int r = 0; r < M; r++)
        for (int c = 0; c < d; c++) {
            float x = A[(size_t)r * d + c];
            for (int u = 0; u < nk; u++) x += P[(size_t)r * ATTN_BK + u] * vrow[u][c];
            A[(size_t)r * d + c] = x;
        }
}

static void tile_scores_level(attn_tile_t *t, int mr, int ng) {
#ifdef LC_MM_X86
    if (t->level >= LC_CPU_AVX512) {
        attn__scores_avx512(mr, ng, t->d, t->q, t->kg, t->ldk, t->s);
        return;
    }
    if (t->level >= LC_CPU_AVX2) {
        attn__scores_avx2(mr, ng, t->d, t->q, t->kg, t->ldk, t->s);
        return;
    }
#endif
    scores_generic(mr, ng, t->d, t->q, t->kg, t->ldk, t->s);
}

static void tile_pv_level(attn_tile_t *t, int mr) {
#ifdef LC_MM_X86
    if (t->level >= LC_CPU_AVX512) {
        attn__pv_avx512(mr, t->nk, t->d, t->s, t->vrow, t->acc);
        return;
    }
    if (t->level >= LC_CPU_AVX2) {
        attn__pv_avx2(mr, t->nk, t->d, t->s, t->vrow, t->acc);
        return;
    }
#endif
    pv_generic(mr, t->nk, t->d, t->s, t->vrow, t->acc);
}

/* ---- tiles in the plan's workspace --------------------------------------------------- */
size_t attn_tile_bytes(int max_rows, int d) {
    size_t r = (size_t)((max_rows + 3) & ~3);
    return attn_arena_need(r * d * sizeof(float)) * 2 + attn_arena_need(r * sizeof(int64_t)) +
           attn_arena_need(r * sizeof(float)) * 2 + attn_arena_need((size_t)d * ATTN_BK * sizeof(float)) +
           attn_arena_need(r * ATTN_BK * sizeof(float));
}

int attn_tile_init(attn_tile_t *t, attn_arena_t *a, int max_rows, int d) {
    memset(t, 0, sizeof *t);
    max_rows = (max_rows + 3) & ~3;
    t->d = d;
    t->max_rows = max_rows;
    t->level = (int)lc_cpu_level();
    t->q = attn_arena_alloc(a, (size_t)max_rows * d * sizeof(float));
    t->qpos = attn_arena_alloc(a, (size_t)max_rows * sizeof(int64_t));
    t->m = attn_arena_alloc(a, (size_t)max_rows * sizeof(float));
    t->l = attn_arena_alloc(a, (size_t)max_rows * sizeof(float));
    t->acc = attn_arena_alloc(a, (size_t)max_rows * d * sizeof(float));
    t->kst = attn_arena_alloc(a, (size_t)d * ATTN_BK * sizeof(float));
    t->s = attn_arena_alloc(a, (size_t)max_rows * ATTN_BK * sizeof(float));
    return t->q && t->qpos && t->m && t->l && t->acc && t->kst && t->s ? 0 : LC_ENOMEM;
}

void attn_tile_begin(attn_tile_t *t, int nr) {
    t->nr = nr;
    t->nk = 0;
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
        for (int j = 0; j < ncol; j += 8) vm = vmax8(ld8(s + j), vm);
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
    const int mr = (t->nr + 3) & ~3, ncol = (t->nk + 15) & ~15;
    tile_scores_level(t, mr, ncol / 16);
    double computed;
#ifdef LC_MM_X86
    if (t->level >= LC_CPU_AVX512)
        computed = attn__rows_avx512(t, mr, ncol);
    else
#endif
        computed = rows_softmax(t, mr, ncol);
    t->computed += computed;
    tile_pv_level(t, mr);
    t->nk = 0;
}

/* ---- gather ----------------------------------------------------------------------- */
/* Appends up to `run` keys starting at position j (all in one block) to the
 * tile's key groups: a whole aligned group of 16 in place, else staged one by
 * one up to the end of the current group. Returns the keys taken. */
static int add_keys(attn_tile_t *t, const attn_kv_t *kv, int kvh, int64_t j, int run) {
    const int u = t->nk, bs = kv->block_size, d = t->d, g = u / 16;
    if (u % 16 == 0 && j % 16 == 0 && bs % 16 == 0 && run >= 16) {
        t->kg[g] = attn_kv_kcol(kv, kvh, d, j);
        t->ldk[g] = bs;
        return 16;
    }
    if (run > 16 - u % 16) run = 16 - u % 16;
    float *dst = t->kst + (size_t)g * d * 16;
    if (u % 16 == 0) {
        t->kg[g] = dst;
        t->ldk[g] = 16;
    }
    for (int i = 0; i < run; i++) {
        const float *kc = attn_kv_kcol(kv, kvh, d, j + i);
        const int lane = (u + i) % 16;
        for (int c = 0; c < d; c++) dst[(size_t)c * 16 + lane] = kc[(size_t)c * bs];
    }
    return run;
}

LC_HOT void attn_tile_run(attn_tile_t *t, const attn_kv_t *kv, int kvh, const attn_range_t *rg, int n_rg) {
    const int d = t->d, bs = kv->block_size;
    t->nk = 0;
    for (int i = 0; i < n_rg; i++) {
        const int64_t lo = rg[i].lo, hi = rg[i].hi;
        if (hi <= lo) continue;
        if (lo % ATTN_BK == 0 && t->nk > 0) tile_process(t); // aligned ranges start their own tiles
        for (int64_t j = lo; j < hi;) {
            // keys inside one page, cut to the room left in the tile
            int64_t run = bs - j % bs;
            if (run > hi - j) run = hi - j;
            if (run > ATTN_BK - t->nk) run = ATTN_BK - t->nk;
            const int took = add_keys(t, kv, kvh, j, (int)run);
            const float *vp = attn_kv_vrow(kv, kvh, d, j);
            for (int u = 0; u < took; u++) {
                t->vrow[t->nk + u] = vp + (size_t)u * d;
                t->kpos[t->nk + u] = j + u;
            }
            t->nk += took;
            j += took;
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
    const int mr = (t->nr + 3) & ~3;
    for (int64_t j0 = lo; j0 < hi; j0 += ATTN_BK) {
        const int nk = (int)(hi - j0 < ATTN_BK ? hi - j0 : ATTN_BK);
        t->nk = 0;
        while (t->nk < nk) { // keys inside one page at a time
            const int64_t j = j0 + t->nk;
            int run = kv->block_size - (int)(j % kv->block_size);
            if (run > nk - t->nk) run = nk - t->nk;
            t->nk += add_keys(t, kv, kvh, j, run);
        }
        tile_scores_level(t, mr, (nk + 15) / 16);
        for (int r = 0; r < t->nr; r++)
            memcpy(S + (size_t)r * lds + (j0 - lo), t->s + (size_t)r * ATTN_BK, (size_t)nk * sizeof(float));
        t->nk = 0;
    }
}

void attn_merge_row(float *o1, float *lse1, const float *o2, float lse2, int d) {
    float a = *lse1, b = lse2;
    if (b == -INFINITY) return;
    if (a == -INFINITY) {
        memcpy(o1, o2, (size_t)d * sizeof(float));
        *lse1 = b;
        return;
    }
    float m = a > b ? a : b;
    float wa = expf(a - m), wb = expf(b - m), s = wa + wb;
    wa /= s, wb /= s;
    for (int c = 0; c < d; c++) o1[c] = wa * o1[c] + wb * o2[c];
    *lse1 = m + logf(s);
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

int attn_window_ranges(int64_t sink, int64_t window, int64_t first, int64_t last, attn_range_t *rg) {
    const int64_t sink_al = (sink + ATTN_BK - 1) / ATTN_BK * ATTN_BK;
    const int64_t wlo = window >= ATTN_NO_WINDOW ? 0 : first - window + 1;
    if (wlo <= sink_al) {
        rg[0] = (attn_range_t){0, last + 1};
        return 1;
    }
    int n = 0;
    if (sink > 0) rg[n++] = (attn_range_t){0, sink_al};
    rg[n++] = (attn_range_t){wlo / ATTN_BK * ATTN_BK, last + 1};
    return n;
}

int attn_piece_ranges(const attn_range_t *rg, int n, int64_t k, attn_range_t *out) {
    const int64_t plo = k * ATTN_PIECE, phi = plo + ATTN_PIECE;
    int m = 0;
    for (int i = 0; i < n; i++) {
        int64_t lo = rg[i].lo > plo ? rg[i].lo : plo, hi = rg[i].hi < phi ? rg[i].hi : phi;
        if (lo < hi) out[m++] = (attn_range_t){lo, hi};
    }
    return m;
}

static int prefill_bq(const attn_shape_t *shape) {
    const int G = shape->n_heads / shape->n_kv_heads;
    return G <= 2 ? 48 : G <= 4 ? 32 : 16; // query positions per tile
}

size_t attn_prefill_window_ws(const attn_shape_t *shape) {
    const int rows = prefill_bq(shape) * (shape->n_heads / shape->n_kv_heads);
    return attn_tile_bytes(rows, shape->head_dim) + attn_arena_need((size_t)rows * sizeof(float));
}

int attn_prefill_window(const attn_shape_t *shape, attn_arena_t *arenas, const float *q, int n_q, int64_t q_pos0,
                        const attn_kv_t *kv, int64_t sink, int64_t window, float *out, float *lse, double *computed) {
    const int H = shape->n_heads, KH = shape->n_kv_heads, G = H / KH, d = shape->head_dim;
    if (n_q <= 0) return n_q == 0 ? 0 : LC_EINVAL;
    int rc = attn_check_args(shape, kv, q_pos0 + n_q);
    if (rc || q_pos0 < 0 || !q || !out || !arenas) return rc ? rc : LC_EINVAL;
    const int BQ = prefill_bq(shape);
    const int n_qt = (n_q + BQ - 1) / BQ, n_items = KH * n_qt;
    int err = 0;
    double comp = 0;
#pragma omp parallel reduction(+ : comp)
    {
        attn_arena_t *ar = &arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        float *olse = attn_arena_alloc(ar, (size_t)BQ * G * sizeof(float));
        const int ok = attn_tile_init(&t, ar, BQ * G, d) == 0 && olse;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            // largest tiles first: later query tiles see more keys
            const int kh = it % KH, qt = n_qt - 1 - it / KH;
            const int i0 = qt * BQ, i1 = i0 + BQ < n_q ? i0 + BQ : n_q, nq = i1 - i0;
            const int64_t first = q_pos0 + i0, last = q_pos0 + i1 - 1;
            for (int r = 0; r < nq * G; r++) olse[r] = -INFINITY;
            for (int i = 0; i < nq; i++)
                for (int g = 0; g < G; g++) memset(out + ((size_t)(i0 + i) * H + kh * G + g) * d, 0, sizeof(float) * d);
            attn_range_t rg[2], prg[2];
            const int nrg = attn_window_ranges(sink, window, first, last, rg);
            for (int64_t k = rg[0].lo / ATTN_PIECE; k <= last / ATTN_PIECE; k++) {
                const int np = attn_piece_ranges(rg, nrg, k, prg);
                if (np == 0) continue;
                attn_tile_begin(&t, nq * G);
                t.sink = sink;
                t.window = window;
                for (int i = 0; i < nq; i++)
                    for (int g = 0; g < G; g++) {
                        const float *qh = q + ((size_t)(i0 + i) * H + kh * G + g) * d;
                        float *dst = t.q + (size_t)(i * G + g) * d;
                        for (int c = 0; c < d; c++) dst[c] = qh[c] * shape->scale;
                        t.qpos[i * G + g] = first + i;
                    }
                attn_tile_run(&t, kv, kh, prg, np);
                attn_tile_finish(&t);
                for (int i = 0; i < nq; i++)
                    for (int g = 0; g < G; g++) {
                        const int r = i * G + g;
                        attn_merge_row(out + ((size_t)(i0 + i) * H + kh * G + g) * d, &olse[r], t.acc + (size_t)r * d,
                                       t.l[r], d);
                    }
                comp += t.computed;
            }
            if (lse)
                for (int i = 0; i < nq; i++)
                    for (int g = 0; g < G; g++) lse[(size_t)(i0 + i) * H + kh * G + g] = olse[i * G + g];
        }
    }
    if (computed) *computed = comp;
    return err;
}
