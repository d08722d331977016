/* Check suite for FlexPrefill's selection on the GPU (src/attn/cuda/flex.cu)
 * against the CPU reference attn__flex_masks (src/attn/cpu/flex.c) on the
 * same f32 values of bf16-rounded queries and keys.
 *
 * Inputs: pool pages shuffled, unused pages and the unused slots of last
 * pages poisoned with NaN. Synthetic attention per query head, built from
 * rotary pairs (a local window: score peaks at offset 0; a slash: a second
 * rotary set whose keys are shifted by an offset), a sink component on keys
 * 0..3, a heavy-column component on a few keys, and noise, in four head
 * styles, so that both patterns occur; tau 0 and tau 1 force every head to
 * vertical-slash and query-aware. Lengths not multiples of 128, chunks on a
 * prefix (q_pos0 > 0, unaligned), chunks of fewer than 128 rows, small
 * inputs (dense), gamma 0.9 / 0.95, min_budget 1024 / 256, max_budget caps,
 * head_dim 64 and 128, pages of 64 and 128, GQA groups 1 to 4.
 *
 * Agreement, per sequence and head:
 *   - small chunks: every causal bit, exactly;
 *   - the pattern (query-aware or vertical-slash) equals the CPU's unless the
 *     CPU's JS distance is within 1e-4 of tau (such heads are skipped and
 *     counted);
 *   - every bit above the diagonal is 0, the sink and diagonal bits are 1;
 *   - every other bit equals the CPU's, except a block whose decisive value
 *     is within a relative 1e-3 (of the threshold) of the CPU's threshold T
 *     (the last value it took) or of the first value it did not take (a
 *     count off by one when the running mass meets gamma within rounding):
 *     query-aware: the block's cell value; vertical-slash: the vertical mass
 *     of one of the block's columns or the slash mass of one of the diagonals
 *     crossing it. Mismatches beyond that fail the test.
 *   - every sequence planned alone gives bitwise the mask it got in the
 *     batch, and words outside the masks are left untouched.
 *
 * FLEX_BENCH=1: instead of the checks, times the selection (32 q / 8 kv
 * heads, d 128, pages of 64; one sequence at 32K, 64K, 128K, the whole prompt
 * and a 4096-row chunk at the end; tau 0: all vertical-slash, tau 1: all
 * query-aware) and the block-sparse prefill over its masks against the
 * dense prefill of the same chunk, with the masks' block density, and
 * prints a markdown table (random inputs: the density says little);
 * FLEX_BENCH_CTX=N runs context N with the 4096-row chunk alone.
 *
 * Exits 77 (SKIP) without a GPU. Not part of make check: tests/gpu/run.sh
 * step flex. CK_RUN_CASE=small runs the quick cases alone. */
#include <check.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/attn_int.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/flex_cuda.h"
#include "common/status.h"
#include "gpu_fixture.h"
#include "gpu_testutil.h"

#define MAXS 8
#define BLK 128

typedef struct {
    int kv_len, n_q;
    attn_cuda_flex_policy_t pol;
} fseq_t;

typedef struct {
    attn_cuda_shape_t sh;
    int n, G;
    fseq_t seq[MAXS];
    int32_t q_indptr[MAXS + 1], kv_indptr[MAXS + 1], kv_len[MAXS];
    int32_t *kv_indices;
    float *kf;    // f32 pool (pages, KH, ps, D), bf16-rounded, NaN where unused
    float *kcpu;  // the CPU layout: (pages, KH, D, ps)
    float *qf;    // (rows, H, D) bf16-rounded
    uint16_t *qb; //
    void *dk, *dq;
} fcase_t;

static size_t page_elems(const fcase_t *c) { return (size_t)c->sh.n_kv_heads * c->sh.page_size * c->sh.head_dim; }

/* Position pos's rotary pair f angle. */
static double rot_angle(int f, int64_t pos) { return pos * 0.8 * pow(0.6, f); }

/* Head styles: amplitude of (local, slash, sink, heavy, noise) in the query. */
static const float styles[4][5] = {
    {5.0f, 5.0f, 10.f, 0.f, 0.5f}, // local + slash + sink
    {0.f, 0.f, 2.f, 20.f, 1.0f},   // noise + heavy columns
    {0.3f, 0.f, 0.5f, 1.f, 1.0f},  // weak everything
    {5.0f, 0.f, 6.f, 12.f, 0.5f},  // local + heavy + sink
};

static void fill_key(float *k, int D, int64_t j, int kh, int slash_off) {
    for (int f = 0; f < 8; f++) { // local rotary
        const double a = rot_angle(f, j);
        k[2 * f] = (float)(3.0 * cos(a));
        k[2 * f + 1] = (float)(3.0 * sin(a));
    }
    for (int f = 0; f < 8; f++) { // slash rotary: matches the query at j + slash_off
        const double a = rot_angle(f, j + slash_off);
        k[16 + 2 * f] = (float)(3.0 * cos(a));
        k[16 + 2 * f + 1] = (float)(3.0 * sin(a));
    }
    k[32] = j < 4 ? 4.f : 0.f;
    k[33] = (j % 733 == 101 || j % 1999 == 7 + kh) ? 4.f : 0.f;
    for (int e = 34; e < D; e++) k[e] = frand();
}

static void fill_query(float *q, int D, int64_t p, int h) {
    const float *st = styles[h % 4];
    for (int f = 0; f < 8; f++) {
        const double a = rot_angle(f, p);
        q[2 * f] = (float)(st[0] * cos(a)) + 0.1f * frand();
        q[2 * f + 1] = (float)(st[0] * sin(a)) + 0.1f * frand();
        q[16 + 2 * f] = (float)(st[1] * cos(a)) + 0.1f * frand();
        q[16 + 2 * f + 1] = (float)(st[1] * sin(a)) + 0.1f * frand();
    }
    q[32] = st[2] * (1.f + 0.2f * frand());
    q[33] = st[3] * (1.f + 0.2f * frand());
    for (int e = 34; e < D; e++) q[e] = st[4] * frand();
}

static int have_gpu;

static void case_build(fcase_t *c, int H, int KH, int D, int ps, const fseq_t *seqs, int n) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->G = H / KH;
    memcpy(c->seq, seqs, sizeof(fseq_t) * n);
    for (int s = 0; s < n; s++) {
        c->kv_indptr[s + 1] = c->kv_indptr[s] + (seqs[s].kv_len + ps - 1) / ps;
        c->q_indptr[s + 1] = c->q_indptr[s] + seqs[s].n_q;
        c->kv_len[s] = seqs[s].kv_len;
    }
    const int64_t used = c->kv_indptr[n], pool = used + 5;
    c->sh = (attn_cuda_shape_t){.n_heads = H,
                                .n_kv_heads = KH,
                                .head_dim = D,
                                .page_size = ps,
                                .n_pool_pages = pool,
                                .scale = 1.0f / sqrtf((float)D)};
    c->kv_indices = gpu_page_table(pool, used, irand);
    const size_t pe = page_elems(c), pool_elems = pe * pool, rows = c->q_indptr[n], qn = rows * H * D;
    c->kf = malloc(sizeof(float) * pool_elems);
    c->kcpu = malloc(sizeof(float) * pool_elems);
    c->qf = malloc(sizeof(float) * qn);
    c->qb = malloc(2 * qn);
    for (size_t i = 0; i < pool_elems; i++) c->kf[i] = NAN;
    float *tmp = malloc(sizeof(float) * D);
    for (int s = 0; s < n; s++) {
        const int len = seqs[s].kv_len, q_pos0 = len - seqs[s].n_q;
        for (int kh = 0; kh < KH; kh++) {
            const int slash_off = 300 + 97 * kh + 13 * s;
            for (int j = 0; j < len; j++) {
                fill_key(tmp, D, j, kh, slash_off);
                const int32_t pg = c->kv_indices[c->kv_indptr[s] + j / ps];
                float *dst = c->kf + pg * pe + ((size_t)kh * ps + j % ps) * D;
                for (int e = 0; e < D; e++) dst[e] = bf2f(f2bf(tmp[e]));
            }
        }
        for (int r = 0; r < seqs[s].n_q; r++)
            for (int h = 0; h < H; h++) {
                const size_t o = ((size_t)(c->q_indptr[s] + r) * H + h) * D;
                fill_query(tmp, D, q_pos0 + r, h);
                for (int e = 0; e < D; e++) {
                    c->qb[o + e] = f2bf(tmp[e]);
                    c->qf[o + e] = bf2f(c->qb[o + e]);
                }
            }
    }
    free(tmp);
    uint16_t *kb = malloc(2 * pool_elems);
    for (size_t i = 0; i < pool_elems; i++) kb[i] = f2bf(c->kf[i]);
    for (int64_t pg = 0; pg < pool; pg++) // the CPU's transposed blocks
        for (int kh = 0; kh < KH; kh++)
            for (int t = 0; t < ps; t++)
                for (int e = 0; e < D; e++)
                    c->kcpu[pg * pe + ((size_t)kh * D + e) * ps + t] = c->kf[pg * pe + ((size_t)kh * ps + t) * D + e];
    if (have_gpu) {
        CK_CUDA(cudaMalloc(&c->dk, 2 * pool_elems));
        CK_CUDA(cudaMalloc(&c->dq, 2 * qn));
        CK_CUDA(cudaMemcpy(c->dk, kb, 2 * pool_elems, cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(c->dq, c->qb, 2 * qn, cudaMemcpyHostToDevice));
    }
    free(kb);
}

static void case_free(fcase_t *c) {
    if (have_gpu) {
        cudaFree(c->dk);
        cudaFree(c->dq);
    }
    free(c->kv_indices);
    free(c->kf);
    free(c->kcpu);
    free(c->qf);
    free(c->qb);
}

typedef struct {
    int qb0, n_kb, n_qb, words;
} geom_t;

static geom_t geom(int n_q, int kv_len) {
    geom_t g;
    g.qb0 = (kv_len - n_q) / BLK;
    g.n_kb = (kv_len - 1) / BLK + 1;
    g.n_qb = g.n_kb - g.qb0;
    g.words = (g.n_kb + 31) / 32;
    return g;
}

#define POISON 0xA5A5A5A5u
#define GAP 7 // words left between masks (must stay POISON)

/* Plans and selects sequences [s0, s0+ns) as one batch; their masks into
 * mask (host, words) at offs[]; branch (H) of the batch's last sequence. */
/* Runs the select of sequences s0 .. s0+ns-1 into mask; branch (optional):
 * the last sequence's heads' patterns; sums (optional, 2 x n_heads x its
 * kv_len floats): its vertical then slash mass (zeros when it ran dense). */
static size_t run_flex(const fcase_t *c, int s0, int ns, const int32_t *offs, size_t words, uint32_t *mask,
                       int8_t *branch, float *sums) {
    const int H = c->sh.n_heads, D = c->sh.head_dim;
    attn_cuda_flex_t *f = NULL;
    int64_t max_len = 1, rows = 1;
    for (int s = s0; s < s0 + ns; s++) {
        max_len = c->kv_len[s] > max_len ? c->kv_len[s] : max_len;
        rows += c->seq[s].n_q;
    }
    ck_assert_int_eq(attn_cuda_flex_create(&c->sh, MAXS, rows, max_len, &f), 0);
    int32_t qi[MAXS + 1], ki[MAXS + 1];
    uint8_t sel[MAXS];
    attn_cuda_flex_policy_t pol[MAXS];
    for (int s = 0; s <= ns; s++) {
        qi[s] = c->q_indptr[s0 + s] - c->q_indptr[s0];
        ki[s] = c->kv_indptr[s0 + s] - c->kv_indptr[s0];
    }
    for (int s = 0; s < ns; s++) {
        sel[s] = 1;
        pol[s] = c->seq[s0 + s].pol;
    }
    attn_cuda_batch_t bt = {.n_seqs = ns,
                            .q_indptr = qi,
                            .kv_indptr = ki,
                            .kv_indices = c->kv_indices + c->kv_indptr[s0],
                            .kv_len = c->kv_len + s0};
    size_t need = 0;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &bt, sel, pol, offs, &need, NULL), 0);
    ck_assert_uint_le(need, words);
    uint32_t *dm;
    CK_CUDA(cudaMalloc((void **)&dm, 4 * words));
    for (size_t i = 0; i < words; i++) mask[i] = POISON;
    CK_CUDA(cudaMemcpy(dm, mask, 4 * words, cudaMemcpyHostToDevice));
    const void *q = (const uint16_t *)c->dq + (size_t)c->q_indptr[s0] * H * D;
    // twice: a layer's select must not depend on the previous one's leftovers
    ck_assert_int_eq(attn_cuda_flex_select(f, q, c->dk, dm, NULL), 0);
    ck_assert_int_eq(attn_cuda_flex_select(f, q, c->dk, dm, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(mask, dm, 4 * words, cudaMemcpyDeviceToHost));
    if (branch) ck_assert_int_eq(attn_cuda_flex_last_branches(f, branch, NULL), 0);
    if (sums) {
        const size_t n_last = (size_t)H * c->kv_len[s0 + ns - 1];
        const int rc = attn_cuda_flex_last_sums(f, sums, sums + n_last, NULL);
        ck_assert(rc == 0 || rc == LC_EINVAL);
        if (rc) memset(sums, 0, sizeof(float) * 2 * n_last);
    }
    cudaFree(dm);
    attn_cuda_flex_destroy(f);
    return need;
}

/* Whether v is within tol of T (the CPU's last value taken) or of Tn (its
 * first value not taken; -1: none). */
static int near_thr(float v, float T, float Tn) {
    const double tol = 1e-3 * fabs(T);
    return fabs((double)v - T) <= tol || (Tn >= 0 && fabs((double)v - Tn) <= tol);
}
/* The blocks rule's pooled sums of x[0..N) over n_kb blocks of 128, as
 * flex.c computes them (2^-50 fixed point, block 0 +inf). */
static void pool_sums(const float *x, int64_t N, int n_kb, float *pool) {
    for (int b = 0; b < n_kb; b++) {
        uint64_t a = 0;
        for (int64_t j = (int64_t)b * BLK; j < (int64_t)(b + 1) * BLK && j < N; j++)
            a += x[j] > 0.f ? (uint64_t)nearbyint((double)x[j] * 1125899906842624.0) : 0;
        pool[b] = b == 0 ? INFINITY : (float)(double)a;
    }
}
/* The largest value of x[0..n) below T (-1: none). */
static float next_below(const float *x, int64_t n, float T) {
    float b = -1.f;
    for (int64_t i = 0; i < n; i++)
        if (x[i] < T && x[i] > b) b = x[i];
    return b;
}

typedef struct {
    int heads, qa, vs, small, tie_heads;
    int64_t bits, ones, diff, excused; // causal blocks, of them kept, of them differing, of them excused
    int64_t whole;                     // causal blocks of the query blocks holding the prompt's last rows
} stats_t;

/* Sequence s's GPU mask (at m) against the CPU's; returns the unexcused mismatches. */
static int64_t compare_seq(const fcase_t *c, int s, const uint32_t *m, const int8_t *gbranch, stats_t *st) {
    const int H = c->sh.n_heads, KH = c->sh.n_kv_heads, D = c->sh.head_dim, ps = c->sh.page_size;
    const fseq_t *sq = &c->seq[s];
    const int N = sq->kv_len, n_q = sq->n_q, q_pos0 = N - n_q;
    const geom_t g = geom(n_q, N);
    attn_shape_t ash = {.n_heads = H, .n_kv_heads = KH, .head_dim = D, .scale = c->sh.scale};
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX;
    pol.gamma = sq->pol.gamma;
    pol.tau = sq->pol.tau;
    pol.min_budget = sq->pol.min_budget;
    pol.max_budget = sq->pol.max_budget;
    pol.flex_select = sq->pol.blocks ? ATTN_FLEX_BLOCKS : ATTN_FLEX_TOKENS;
    pol.block = BLK;
    const attn_kv_t kv = {.k = c->kcpu,
                          .v = c->kcpu,
                          .blk_stride = page_elems(c),
                          .blocks = c->kv_indices + c->kv_indptr[s],
                          .block_size = ps,
                          .n_kv = N};
    const attn_ws_t ws = attn__flex_ws(&ash, &pol, n_q, q_pos0);
    attn_arena_t ar = {.base = malloc(ws.per_thread + 64), .cap = ws.per_thread + 64, .used = 0};
    const size_t msz = (size_t)g.n_qb * g.n_kb;
    uint8_t *cm = malloc(msz * H);
    attn_flex_trace_t *tr = calloc(H, sizeof *tr);
    float *bufs = malloc(sizeof(float) * ((size_t)2 * N + msz) * H);
    for (int h = 0; h < H; h++) {
        tr[h].vert = bufs + ((size_t)2 * N + msz) * h;
        tr[h].slash = tr[h].vert + N;
        tr[h].cells = tr[h].slash + N;
    }
    const int small = attn__flex_is_small(&pol, n_q, q_pos0);
    ck_assert_int_eq(attn__flex_masks(&ash, &pol, &ar, c->qf + (size_t)c->q_indptr[s] * H * D, n_q, q_pos0,
                                      sq->pol.prompt_end, &kv, cm, small ? NULL : tr),
                     0);
    int64_t bad = 0;
    float *vp = malloc(sizeof(float) * 2 * g.n_kb), *sp = vp + g.n_kb; // the blocks rule's pooled sums
    const int pe = sq->pol.prompt_end, whole_qb = pe > 0 ? (pe > BLK ? pe - BLK : 0) / BLK : INT_MAX;
    for (int h = 0; h < H; h++) {
        st->heads++;
        const attn_flex_trace_t *t = &tr[h];
        float Tn_qa = -1, Tn_v = -1, Tn_s = -1;
        if (small) {
            st->small++;
            ck_assert_int_eq(gbranch[h], -1);
        } else {
            if (fabs(t->dist - sq->pol.tau) <= 1e-4) {
                st->tie_heads++;
                continue;
            }
            if (gbranch[h] != t->branch) {
                printf("    seq %d head %d: gpu pattern %d, cpu %d (JS distance %.6f, tau %g)\n", s, h, gbranch[h],
                       t->branch, t->dist, sq->pol.tau);
                bad++;
                continue;
            }
            if (t->branch) {
                st->qa++;
                Tn_qa = next_below(t->cells, (int64_t)msz, t->thr_qa);
            } else if (sq->pol.blocks) {
                st->vs++;
                pool_sums(t->vert, N, g.n_kb, vp);
                pool_sums(t->slash, N, g.n_kb, sp);
                Tn_v = next_below(vp, g.n_kb, t->thr_v);
                Tn_s = next_below(sp, g.n_kb, t->thr_s);
            } else {
                st->vs++;
                Tn_v = next_below(t->vert, N, t->thr_v);
                Tn_s = next_below(t->slash, N, t->thr_s);
            }
        }
        int shown = 0;
        for (int i = 0; i < g.n_qb; i++) {
            const int qb = g.qb0 + i;
            const uint32_t *row = m + ((size_t)h * g.n_qb + i) * g.words;
            const int64_t p0 = (int64_t)qb * BLK > q_pos0 ? (int64_t)qb * BLK : q_pos0;
            const int64_t p1 = (int64_t)(qb + 1) * BLK - 1 < N - 1 ? (int64_t)(qb + 1) * BLK - 1 : N - 1;
            for (int kb = 0; kb < g.words * 32; kb++) {
                const int gb = (row[kb / 32] >> (kb % 32)) & 1;
                if (kb > qb) {
                    if (gb) {
                        if (shown++ < 3)
                            printf("    seq %d head %d block (%d, %d): bit above the diagonal\n", s, h, qb, kb);
                        bad++;
                    }
                    continue;
                }
                st->bits++;
                st->ones += gb;
                const int cb = cm[msz * h + (size_t)i * g.n_kb + kb];
                if (qb >= whole_qb) { // the prompt's last rows: every block, on both sides
                    st->whole++;
                    if (!gb || !cb) {
                        if (shown++ < 3)
                            printf(
                                "    seq %d head %d block (%d, %d): the prompt's last rows miss it (gpu %d cpu %d)\n",
                                s, h, qb, kb, gb, cb);
                        bad++;
                    }
                    continue;
                }
                if ((kb == 0 || kb == qb) && !gb) {
                    if (shown++ < 3) printf("    seq %d head %d block (%d, %d): sink/diagonal missing\n", s, h, qb, kb);
                    bad++;
                    continue;
                }
                if (gb == cb) continue;
                st->diff++;
                int ok = 0;
                if (!small && t->branch) {
                    ok = near_thr(t->cells[(size_t)i * g.n_kb + kb], t->thr_qa, Tn_qa);
                } else if (!small && sq->pol.blocks) {
                    ok = near_thr(vp[kb], t->thr_v, Tn_v) || near_thr(sp[qb - kb], t->thr_s, Tn_s);
                } else if (!small) {
                    for (int64_t j = (int64_t)kb * BLK; j < (int64_t)(kb + 1) * BLK && j < N && !ok; j++)
                        ok = near_thr(t->vert[j], t->thr_v, Tn_v);
                    int64_t lo = p0 - (int64_t)kb * BLK - (BLK - 1), hi = p1 - (int64_t)kb * BLK;
                    lo = lo > 0 ? lo : 0;
                    hi = hi < N - 1 ? hi : N - 1;
                    for (int64_t o = lo; o <= hi && !ok; o++) ok = near_thr(t->slash[o], t->thr_s, Tn_s);
                }
                if (ok) {
                    st->excused++;
                    continue;
                }
                if (shown++ < 3)
                    printf("    seq %d head %d (%s) block (%d, %d): gpu %d cpu %d\n", s, h,
                           small       ? "small"
                           : t->branch ? "query-aware"
                                       : "vertical-slash",
                           qb, kb, gb, cb);
                bad++;
            }
        }
    }
    free(ar.base);
    free(cm);
    free(tr);
    free(bufs);
    free(vp);
    return bad;
}

/* ---- the kernels' decomposition on the host ------------------------------------------ */
/* A plain C mirror of flex.cu's steps with its index arithmetic (128-key
 * tiles, slash partials per (tile, diagonal) and their merge, the radix
 * select on order keys and fixed-point mass, the prefix count of kept
 * diagonals and the O(1) block rule), compared with the CPU reference by
 * the same criterion as the GPU (case "mirror", no GPU needed). It checks
 * the kernels' reasoning on any machine; the GPU cases check the kernels. */
static uint32_t okey_c(float f) {
    uint32_t u;
    if (f == 0.f) f = 0.f;
    memcpy(&u, &f, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
static uint64_t tofx_c(float v) { return v > 0.f ? (uint64_t)nearbyint((double)v * 1125899906842624.0) : 0; }

/* One radix level: the first bin from the top where the running sums reach
 * the goal (by mass: mass >= target with a key; else count >= k). */
static int find_bin_c(const float *x, int64_t n, uint32_t prefix, uint32_t mask, int shift, int by_mass,
                      uint64_t target, uint64_t k, uint64_t *above_c, uint64_t *above_m, uint64_t *bin_c) {
    uint64_t cnt[256] = {0}, mass[256] = {0};
    for (int64_t i = 0; i < n; i++) {
        const uint32_t u = okey_c(x[i]);
        if ((u & mask) != prefix) continue;
        cnt[(u >> shift) & 255]++;
        mass[(u >> shift) & 255] += tofx_c(x[i]);
    }
    uint64_t rc = 0, rm = 0;
    for (int b = 255; b >= 0; b--) {
        if (by_mass ? (rm + mass[b] >= target && rc + cnt[b] >= 1) : rc + cnt[b] >= k) {
            *above_c = rc;
            *above_m = rm;
            *bin_c = cnt[b];
            return b;
        }
        rc += cnt[b];
        rm += mass[b];
    }
    return -1;
}
static uint32_t select_count_c(const float *x, int64_t n, uint64_t k) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        uint64_t ac, am, bc;
        const int b = find_bin_c(x, n, prefix, mask, shift, 0, 0, k, &ac, &am, &bc);
        ck_assert_int_ge(b, 0);
        prefix |= (uint32_t)b << shift;
        mask |= 255u << shift;
        k -= ac;
    }
    return prefix;
}
static uint32_t select_mass_c(const float *x, int64_t n, float gamma, int rel, int64_t *count) {
    uint64_t total = 0;
    for (int64_t i = 0; i < n; i++) total += tofx_c(x[i]);
    const uint64_t target = rel ? (uint64_t)((double)gamma * (double)total) : tofx_c(gamma);
    if (gamma >= 1.0f || total < target) {
        *count = n;
        return 0;
    }
    uint32_t prefix = 0, mask = 0;
    uint64_t above_m = 0, above_c = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        uint64_t ac, am, bc;
        const int b = find_bin_c(x, n, prefix, mask, shift, 1, target - above_m, 0, &ac, &am, &bc);
        ck_assert_int_ge(b, 0);
        prefix |= (uint32_t)b << shift;
        mask |= 255u << shift;
        above_m += am;
        above_c += ac;
        if (shift == 0) above_c += bc;
    }
    *count = (int64_t)above_c;
    return prefix;
}

typedef struct {
    const fcase_t *c;
    int s, kh, R, P0, N;
    const float *qs; // (R, D) scaled
} mctx_t;

static float mkey(const mctx_t *x, int j, int e) {
    const fcase_t *c = x->c;
    const int ps = c->sh.page_size, D = c->sh.head_dim;
    const int32_t pg = c->kv_indices[c->kv_indptr[x->s] + j / ps];
    return c->kf[(size_t)pg * page_elems(c) + ((size_t)x->kh * ps + j % ps) * D + e];
}
/* score_kernel's tile t: S (128, 128), masked -inf. */
static void mtile(const mctx_t *x, int t, float *S) {
    const int D = x->c->sh.head_dim;
    for (int r = 0; r < BLK; r++)
        for (int cc = 0; cc < BLK; cc++) {
            const int j = t * BLK + cc;
            float v = -INFINITY;
            if (r < x->R && j < x->N && j <= x->P0 + r) {
                v = 0.f;
                for (int e = 0; e < D; e++) v += x->qs[r * D + e] * mkey(x, j, e);
            }
            S[r * BLK + cc] = v;
        }
}

/* Sequence s's masks (at mask, its layout) and patterns the kernels' way. */
static void mirror_select(const fcase_t *c, int s, uint32_t *mask, int8_t *branch) {
    const int H = c->sh.n_heads, G = H / c->sh.n_kv_heads, D = c->sh.head_dim;
    const fseq_t *sq = &c->seq[s];
    const int N = sq->kv_len, n_q = sq->n_q, q_pos0 = N - n_q, R = n_q < BLK ? n_q : BLK, P0 = N - R;
    const geom_t g = geom(n_q, N);
    const int64_t small_at = 2 * BLK > sq->pol.min_budget ? 2 * BLK : sq->pol.min_budget;
    float *qs = malloc(sizeof(float) * BLK * D), *S = malloc(sizeof(float) * BLK * BLK);
    float *pm = malloc(sizeof(float) * g.n_kb * BLK), *pl = malloc(sizeof(float) * g.n_kb * BLK);
    float *vert = malloc(sizeof(float) * N), *slash = malloc(sizeof(float) * N);
    float *part = malloc(sizeof(float) * g.n_kb * 256), *kpool = malloc(sizeof(float) * g.n_kb * D);
    float *cells = malloc(sizeof(float) * g.n_qb * g.n_kb), *qp = malloc(sizeof(float) * D);
    double *ahat = malloc(sizeof(double) * g.n_kb), *atrue = malloc(sizeof(double) * g.n_kb);
    int32_t *cnt = malloc(sizeof(int32_t) * (N + 1));
    uint8_t *colsel = malloc(g.n_kb);
    float *vpool = malloc(sizeof(float) * 2 * g.n_kb), *spool = vpool + g.n_kb;
    float m[BLK], w[BLK];
    for (int h = 0; h < H; h++) {
        const int small = N <= small_at;
        int br = -1;
        uint32_t Tqa = 0, T[2] = {0, 0};
        if (!small) {
            const mctx_t x = {c, s, h / G, R, P0, N, qs};
            for (int r = 0; r < R; r++)
                for (int e = 0; e < D; e++)
                    qs[r * D + e] = c->qf[((size_t)(c->q_indptr[s] + n_q - R + r) * H + h) * D + e] * c->sh.scale;
            for (int t = 0; t < g.n_kb; t++) { // pass 0
                mtile(&x, t, S);
                for (int r = 0; r < R; r++) {
                    float mx = -INFINITY, sum = 0.f;
                    for (int cc = 0; cc < BLK; cc++) mx = fmaxf(mx, S[r * BLK + cc]);
                    if (mx > -INFINITY)
                        for (int cc = 0; cc < BLK; cc++) sum += expf(S[r * BLK + cc] - mx);
                    pm[t * BLK + r] = mx;
                    pl[t * BLK + r] = sum;
                }
            }
            for (int r = 0; r < R; r++) { // merge
                float mm = -INFINITY, l = 0.f;
                for (int t = 0; t < g.n_kb; t++) mm = fmaxf(mm, pm[t * BLK + r]);
                for (int t = 0; t < g.n_kb; t++)
                    if (pm[t * BLK + r] > -INFINITY) l += pl[t * BLK + r] * expf(pm[t * BLK + r] - mm);
                m[r] = mm;
                w[r] = 1.0f / (l * (float)R);
            }
            for (int t = 0; t < g.n_kb; t++) { // pass 1
                mtile(&x, t, S);
                for (int r = 0; r < BLK; r++)
                    for (int cc = 0; cc < BLK; cc++) {
                        float *v = &S[r * BLK + cc];
                        *v = *v > -INFINITY ? expf(*v - m[r]) * w[r] : 0.f;
                    }
                for (int cc = 0; cc < BLK && t * BLK + cc < N; cc++) {
                    float v = 0.f;
                    for (int r = 0; r < R; r++) v += S[r * BLK + cc];
                    vert[t * BLK + cc] = v;
                }
                for (int dd = 0; dd < 2 * BLK - 1; dd++) {
                    const int r0 = dd - (BLK - 1) > 0 ? dd - (BLK - 1) : 0, r1 = dd < R - 1 ? dd : R - 1;
                    float v = 0.f;
                    for (int r = r0; r <= r1; r++) v += S[r * BLK + r + BLK - 1 - dd];
                    part[t * 256 + dd] = v;
                }
            }
            for (int o = 0; o < N; o++) { // slash_kernel
                const int jlo = P0 - o > 0 ? P0 - o : 0, jhi = P0 + R - 1 - o < N - 1 ? P0 + R - 1 - o : N - 1;
                const int ta = jlo / BLK, tb = jhi / BLK;
                float v = part[ta * 256 + (o - P0 + ta * BLK + BLK - 1)];
                if (tb != ta) v += part[tb * 256 + (o - P0 + tb * BLK + BLK - 1)];
                slash[o] = v;
            }
            for (int kb = 0; kb < g.n_kb; kb++) // kpool_kernel
                for (int e = 0; e < D; e++) {
                    const int j0 = kb * BLK, j1 = j0 + BLK < N ? j0 + BLK : N;
                    float a = 0.f;
                    for (int j = j0; j < j1; j++) a += mkey(&x, j, e);
                    kpool[kb * D + e] = a / (float)(j1 - j0);
                }
            double mx = -INFINITY, sum = 0, js = 0; // diverge_kernel
            for (int kb = 0; kb < g.n_kb; kb++) {
                double a = 0;
                for (int e = 0; e < D; e++) {
                    double qm = 0;
                    for (int r = 0; r < R; r++) qm += qs[r * D + e];
                    a += qm / R * kpool[kb * D + e];
                }
                ahat[kb] = a;
                mx = a > mx ? a : mx;
                atrue[kb] = 0;
                for (int j = kb * BLK; j < (kb + 1) * BLK && j < N; j++) atrue[kb] += vert[j];
            }
            for (int kb = 0; kb < g.n_kb; kb++) sum += (ahat[kb] = exp(ahat[kb] - mx));
            for (int kb = 0; kb < g.n_kb; kb++) {
                const double a = ahat[kb] / sum, b = atrue[kb], mid = 0.5 * (a + b);
                if (a > 0) js += 0.5 * a * log(a / mid);
                if (b > 0) js += 0.5 * b * log(b / mid);
            }
            br = sqrt(js > 0 ? js : 0) < sq->pol.tau;
            int64_t count;
            if (br) { // qpool_kernel, cells_kernel, select
                for (int i = 0; i < g.n_qb; i++) {
                    const int qb = g.qb0 + i;
                    const int p0 = qb * BLK > q_pos0 ? qb * BLK : q_pos0, p1 = (qb + 1) * BLK < N ? (qb + 1) * BLK : N;
                    for (int e = 0; e < D; e++) {
                        double a = 0;
                        for (int p = p0; p < p1; p++)
                            a += c->qf[((size_t)(c->q_indptr[s] + p - q_pos0) * H + h) * D + e];
                        qp[e] = (float)(a / (p1 - p0) * c->sh.scale);
                    }
                    float *row = cells + (size_t)i * g.n_kb;
                    double rm = -INFINITY, rs = 0;
                    for (int kb = 0; kb < g.n_kb; kb++) {
                        row[kb] = 0.f;
                        if (kb > qb) continue;
                        double a = 0;
                        for (int e = 0; e < D; e++) a += qp[e] * kpool[kb * D + e];
                        row[kb] = (float)a;
                        rm = a > rm ? a : rm;
                    }
                    for (int kb = 0; kb <= qb; kb++) rs += (row[kb] = (float)exp((double)row[kb] - rm));
                    for (int kb = 0; kb <= qb; kb++) row[kb] = (float)((double)row[kb] / rs / g.n_qb);
                }
                Tqa = select_mass_c(cells, (int64_t)g.n_qb * g.n_kb, sq->pol.gamma, 0, &count);
            } else {
                for (int v = 0; v < 2; v++) {
                    const float *xs = v == 0 ? vert : slash;
                    T[v] = select_mass_c(xs, N, sq->pol.gamma, 1, &count);
                    if (sq->pol.blocks) { // pool_kernel, then the count-th largest pooled sum
                        const int64_t lo = (sq->pol.min_budget + BLK - 1) / BLK,
                                      hi = sq->pol.max_budget > 0 ? (sq->pol.max_budget + BLK - 1) / BLK : 0;
                        int64_t nb = count / BLK + 1;
                        nb = nb < lo ? lo : nb;
                        nb = hi > 0 && nb > hi ? hi : nb;
                        nb = nb > g.n_kb ? g.n_kb : nb;
                        pool_sums(xs, N, g.n_kb, v == 0 ? vpool : spool);
                        T[v] = select_count_c(v == 0 ? vpool : spool, g.n_kb, (uint64_t)nb);
                        continue;
                    }
                    int64_t k = count;
                    if (k < sq->pol.min_budget) k = sq->pol.min_budget;
                    if (sq->pol.max_budget > 0 && k > sq->pol.max_budget) k = sq->pol.max_budget;
                    if (k > N) k = N;
                    if (k != count) T[v] = k > 0 ? select_count_c(xs, N, (uint64_t)k) : 0xffffffffu;
                }
                for (int kb = 0; kb < g.n_kb; kb++) { // colsel_kernel
                    colsel[kb] = 0;
                    for (int j = kb * BLK; j < (kb + 1) * BLK && j < N; j++) colsel[kb] |= okey_c(vert[j]) >= T[0];
                }
                cnt[0] = 0;
                for (int o = 0; o < N; o++) cnt[o + 1] = cnt[o] + (okey_c(slash[o]) >= T[1]);
            }
        }
        branch[h] = (int8_t)br;
        const int pe = c->seq[s].pol.prompt_end, whole_qb = pe > 0 ? (pe > BLK ? pe - BLK : 0) / BLK : INT_MAX;
        for (int i = 0; i < g.n_qb; i++) { // mask_kernel
            const int qb = g.qb0 + i, whole = small || qb >= whole_qb;
            const int p0 = qb * BLK > q_pos0 ? qb * BLK : q_pos0,
                      p1 = (qb + 1) * BLK - 1 < N - 1 ? (qb + 1) * BLK - 1 : N - 1;
            for (int wd = 0; wd < g.words; wd++) {
                uint32_t word = 0;
                for (int b = 0; b < 32; b++) {
                    const int kb = wd * 32 + b;
                    int bit = kb <= qb;
                    if (!whole && bit && kb != 0 && kb != qb) {
                        if (br == 1) {
                            bit = okey_c(cells[(size_t)i * g.n_kb + kb]) >= Tqa;
                        } else if (sq->pol.blocks) {
                            bit = okey_c(vpool[kb]) >= T[0] || okey_c(spool[qb - kb]) >= T[1];
                        } else {
                            bit = colsel[kb];
                            if (!bit) {
                                const int lo = p0 - kb * BLK - (BLK - 1) > 0 ? p0 - kb * BLK - (BLK - 1) : 0;
                                const int hi = p1 - kb * BLK < N - 1 ? p1 - kb * BLK : N - 1;
                                bit = cnt[hi + 1] - cnt[lo] > 0;
                            }
                        }
                    }
                    word |= (uint32_t)bit << b;
                }
                mask[((size_t)h * g.n_qb + i) * g.words + wd] = word;
            }
        }
    }
    free(qs);
    free(S);
    free(pm);
    free(pl);
    free(vert);
    free(slash);
    free(part);
    free(kpool);
    free(cells);
    free(qp);
    free(ahat);
    free(atrue);
    free(cnt);
    free(colsel);
    free(vpool);
}

static void mirror_case(int H, int KH, int D, int ps, const fseq_t *seqs, int n, uint64_t seed, const char *name,
                        stats_t *tot) {
    rng = seed;
    fcase_t c;
    case_build(&c, H, KH, D, ps, seqs, n);
    stats_t st = {0};
    int64_t bad = 0;
    int8_t br[256];
    for (int s = 0; s < n; s++) {
        uint32_t *m = malloc(4 * attn_cuda_flex_mask_words(seqs[s].n_q, seqs[s].kv_len, H));
        mirror_select(&c, s, m, br);
        bad += compare_seq(&c, s, m, br, &st);
        free(m);
    }
    printf("%s (host mirror): H %d KH %d D %d page %d, %d seqs\n", name, H, KH, D, ps, n);
    printf("  %-4s vs cpu: %d heads (%d query-aware, %d vertical-slash, %d small, %d at tau), %ld blocks (density "
           "%.2f), %ld "
           "differ, %ld of them at a threshold\n",
           bad ? "FAIL" : "ok", st.heads, st.qa, st.vs, st.small, st.tie_heads, (long)st.bits,
           st.bits ? (double)st.ones / st.bits : 0.0, (long)st.diff, (long)st.excused);
    if (tot) {
        tot->qa += st.qa;
        tot->vs += st.vs;
        tot->whole += st.whole;
    }
    case_free(&c);
    ck_assert_int_eq(bad, 0);
    ck_assert_int_le(st.excused, st.bits / 100 + 8);
}

/* One case: the batch, each sequence alone, and the CPU. */
static void check_case(int H, int KH, int D, int ps, const fseq_t *seqs, int n, uint64_t seed, const char *name,
                       stats_t *tot) {
    rng = seed;
    fcase_t c;
    case_build(&c, H, KH, D, ps, seqs, n);
    int32_t offs[MAXS];
    size_t words = GAP;
    for (int s = 0; s < n; s++) {
        offs[s] = (int32_t)words;
        words += attn_cuda_flex_mask_words(seqs[s].n_q, seqs[s].kv_len, H) + GAP;
    }
    uint32_t *mb = malloc(4 * words), *m1 = malloc(4 * words);
    const size_t n_sums = 2 * (size_t)H * seqs[n - 1].kv_len;
    float *sb = malloc(sizeof(float) * n_sums), *s1 = malloc(sizeof(float) * n_sums);
    const size_t need = run_flex(&c, 0, n, offs, words, mb, NULL, sb);
    ck_assert_uint_eq(need, words - GAP);
    printf("%s: H %d KH %d D %d page %d, %d seqs\n", name, H, KH, D, ps, n);
    // the scores' tiles and the thresholds' select on one CTA a head: the same
    // masks as on the device's count of CTAs
    setenv("LACUNA_FLEX_SEL_CTAS", "1", 1);
    setenv("LACUNA_FLEX_SCORE_CTAS", "1", 1);
    run_flex(&c, 0, n, offs, words, m1, NULL, s1);
    unsetenv("LACUNA_FLEX_SEL_CTAS");
    unsetenv("LACUNA_FLEX_SCORE_CTAS");
    // the masks, and the last sequence's vertical and slash mass bit for bit
    // (a last-bit difference there would seldom move a mask)
    const int sums_differ = memcmp(s1, sb, sizeof(float) * n_sums) != 0;
    const int ctas_differ = memcmp(m1, mb, 4 * words) != 0 || sums_differ;
    printf("  %-4s scores and select on one CTA a head vs several: %s\n", ctas_differ ? "FAIL" : "ok",
           ctas_differ ? (sums_differ ? "vertical or slash mass differs" : "masks differ")
                       : "the same masks, vertical and slash mass");
    free(sb);
    free(s1);
    // words outside the masks untouched
    int64_t outside = 0;
    for (int s = 0; s <= n; s++) {
        const size_t from =
            s == 0 ? 0 : offs[s - 1] + attn_cuda_flex_mask_words(seqs[s - 1].n_q, seqs[s - 1].kv_len, H);
        for (size_t w = from; w < from + GAP; w++) outside += mb[w] != POISON;
    }
    printf("  %-4s words outside the masks: %ld written\n", outside ? "FAIL" : "ok", (long)outside);
    stats_t st = {0};
    int64_t bad = 0, alone_diff = 0;
    int8_t br[256];
    for (int s = 0; s < n; s++) {
        const size_t mw = attn_cuda_flex_mask_words(seqs[s].n_q, seqs[s].kv_len, H);
        const int32_t o1 = GAP;
        run_flex(&c, s, 1, &o1, mw + 2 * GAP, m1, br, NULL);
        if (memcmp(m1 + GAP, mb + offs[s], 4 * mw)) alone_diff++;
        bad += compare_seq(&c, s, mb + offs[s], br, &st);
    }
    printf("  %-4s alone vs batch: %ld sequences differ\n", alone_diff ? "FAIL" : "ok", (long)alone_diff);
    printf("  %-4s vs cpu: %d heads (%d query-aware, %d vertical-slash, %d small, %d at tau), %ld blocks (density "
           "%.2f), %ld "
           "differ, %ld of them at a threshold\n",
           bad ? "FAIL" : "ok", st.heads, st.qa, st.vs, st.small, st.tie_heads, (long)st.bits,
           st.bits ? (double)st.ones / st.bits : 0.0, (long)st.diff, (long)st.excused);
    if (tot) {
        tot->qa += st.qa;
        tot->vs += st.vs;
        tot->small += st.small;
        tot->whole += st.whole;
    }
    free(mb);
    free(m1);
    case_free(&c);
    ck_assert_int_eq(outside, 0);
    ck_assert_int_eq(ctas_differ, 0);
    ck_assert_int_eq(alone_diff, 0);
    ck_assert_int_eq(bad, 0);
    ck_assert_int_le(st.excused, st.bits / 100 + 8); // near-threshold blocks stay rare
}

static attn_cuda_flex_policy_t P(float gamma, float tau, int lo, int hi) {
    return (attn_cuda_flex_policy_t){.gamma = gamma, .tau = tau, .min_budget = lo, .max_budget = hi};
}
static attn_cuda_flex_policy_t PE(float gamma, float tau, int lo, int hi, int prompt_end) {
    attn_cuda_flex_policy_t p = P(gamma, tau, lo, hi);
    p.prompt_end = prompt_end;
    return p;
}

static attn_cuda_flex_policy_t PB(float gamma, float tau, int lo, int hi, int prompt_end) {
    attn_cuda_flex_policy_t p = PE(gamma, tau, lo, hi, prompt_end);
    p.blocks = 1;
    return p;
}

/* ---- tests --------------------------------------------------------------------------- */
START_TEST(test_bad_input) {
    const attn_cuda_shape_t sh = {
        .n_heads = 4, .n_kv_heads = 2, .head_dim = 128, .page_size = 64, .n_pool_pages = 8, .scale = 0.088f};
    attn_cuda_flex_t *f = NULL;
    attn_cuda_shape_t bad = sh;
    bad.head_dim = 96;
    ck_assert_int_eq(attn_cuda_flex_create(&bad, 1, 64, 512, &f), LC_EUNSUPPORTED);
    bad = sh;
    bad.n_kv_heads = 3;
    ck_assert_int_eq(attn_cuda_flex_create(&bad, 1, 64, 512, &f), LC_EINVAL);
    ck_assert_int_eq(attn_cuda_flex_create(&sh, 0, 64, 512, &f), LC_EINVAL);
    ck_assert_ptr_null(f);
    ck_assert_int_eq(attn_cuda_flex_create(&sh, 2, 512, 512, &f), 0);
    int32_t qi[3] = {0, 100, 200}, ki[3] = {0, 4, 8}, idx[8] = {0, 1, 2, 3, 4, 5, 6, 7}, kl[2] = {200, 256};
    uint8_t sel[2] = {1, 1};
    attn_cuda_flex_policy_t pol[2] = {P(0.9f, 0.1f, 256, 0), P(0.9f, 0.1f, 256, 0)};
    int32_t off[2] = {0, 100};
    attn_cuda_batch_t b = {.n_seqs = 2, .q_indptr = qi, .kv_indptr = ki, .kv_indices = idx, .kv_len = kl};
    size_t words = 0;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), 0);
    ck_assert_uint_eq(words, 100 + attn_cuda_flex_mask_words(100, 256, 4));
    pol[1].gamma = 0.f;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    ck_assert_int_eq(attn_cuda_flex_select(f, NULL, NULL, NULL, NULL), LC_EINVAL); // no plan now
    sel[1] = 0; // not selecting: its policy is not read
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), 0);
    sel[1] = 1;
    pol[1].gamma = 0.9f;
    pol[1].min_budget = -1;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    pol[1].min_budget = 0;
    pol[1].blocks = 2; // a rule that does not exist
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    pol[1].blocks = 1;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), 0);
    idx[5] = 8; // outside the pool
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    idx[5] = 5;
    kl[1] = 257; // more keys than pages
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    kl[1] = 256;
    qi[2] = 400; // more rows than keys
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_EINVAL);
    attn_cuda_flex_destroy(f);
    ck_assert_int_eq(attn_cuda_flex_create(&sh, 2, 64, 200, &f), 0);
    qi[2] = 200;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &b, sel, pol, off, &words, NULL), LC_ERANGE); // beyond max_kv_len
    attn_cuda_flex_destroy(f);
    ck_assert_uint_eq(attn_cuda_flex_mask_words(0, 100, 4), 0);
    ck_assert_uint_eq(attn_cuda_flex_mask_words(1, 129, 4), 4 * 1 * 1);
    ck_assert_uint_eq(attn_cuda_flex_mask_words(4097, 4097 + 130, 2), 2 * 33 * 2); // qb0 1, n_kb 34
}
END_TEST

START_TEST(test_small) {
    // dense (small) chunks, a small sparse one and a short chunk on a prefix, in one batch
    const fseq_t s[4] = {{250, 250, P(0.9f, 0.1f, 256, 0)},
                         {900, 300, P(0.9f, 0.1f, 1024, 0)},
                         {1500, 1500, P(0.9f, 0.1f, 256, 0)},
                         {2001, 77, P(0.95f, 0.1f, 256, 0)}};
    check_case(4, 2, 128, 64, s, 4, 11, "small d128 g2 p64", NULL);
}
END_TEST

START_TEST(test_branches) {
    // tau 0: every head vertical-slash; tau 1: every head query-aware; tau 0.1: the data decides
    stats_t tot = {0};
    const fseq_t s[3] = {
        {5000, 5000, P(0.9f, 0.f, 1024, 0)}, {5000, 5000, P(0.9f, 1.f, 1024, 0)}, {5000, 5000, P(0.9f, 0.1f, 1024, 0)}};
    check_case(8, 2, 128, 64, s, 3, 21, "branches d128 g4 p64", &tot);
    ck_assert_int_gt(tot.qa, 0);
    ck_assert_int_gt(tot.vs, 0);
}
END_TEST

START_TEST(test_prefix_chunks) {
    // chunks on unaligned prefixes, gamma 0.95, min_budget 256, a max_budget cap
    const fseq_t s[4] = {{9001, 1500, P(0.95f, 0.1f, 256, 0)},
                         {7777, 4096, P(0.9f, 0.f, 256, 512)},
                         {6100, 200, P(0.95f, 1.f, 256, 0)},
                         {3333, 3333, P(0.9f, 0.1f, 1024, 2048)}};
    check_case(8, 4, 128, 128, s, 4, 31, "prefix chunks d128 g2 p128", NULL);
}
END_TEST

/* The query blocks holding the prompt's last 128 rows attend every key:
 * chunks that end the prompt, one whose prompt ends 23 rows after it (its
 * last two blocks), one whose prompt ends beyond its reach (none), with
 * sparse budgets so that the rest of each mask is sparse. */
static void prompt_end_case(int gpu) {
    const fseq_t s[4] = {{9001, 1500, PE(0.9f, 0.1f, 256, 0, 9001)},
                         {7777, 4096, PE(0.9f, 0.f, 0, 0, 7800)},
                         {6100, 200, PE(0.95f, 1.f, 256, 0, 6400)},
                         {5000, 5000, PE(0.9f, 0.f, 32, 0, 5000)}};
    stats_t tot = {0};
    if (gpu)
        check_case(8, 4, 128, 128, s, 4, 61, "prompt end d128 g2 p128", &tot);
    else
        mirror_case(8, 4, 128, 128, s, 4, 61, "prompt end (mirror) d128 g2 p128", &tot);
    // every head: query blocks 69-70 of the first (70 + 71 causal blocks), 59-60 of the second, 38-39 of the last
    const int64_t want = 8 * ((70 + 71) + (60 + 61) + (39 + 40));
    ck_assert_int_eq(tot.whole, want);
}
START_TEST(test_prompt_end) { prompt_end_case(1); }
END_TEST
START_TEST(test_prompt_end_mirror) { prompt_end_case(0); }
END_TEST

START_TEST(test_d64) {
    const fseq_t s[3] = {
        {4097, 2000, P(0.9f, 0.1f, 256, 512)}, {4500, 4500, P(0.95f, 0.f, 1024, 0)}, {3000, 129, P(0.9f, 1.f, 256, 0)}};
    check_case(4, 4, 64, 128, s, 3, 41, "d64 g1 p128", NULL);
    check_case(8, 2, 64, 64, s, 3, 42, "d64 g4 p64", NULL);
}
END_TEST

/* head_dim 256 (Gemma 3's global layers: 4 heads on one KV head) */
START_TEST(test_d256) {
    const fseq_t s[3] = {
        {4097, 2000, P(0.9f, 0.1f, 256, 512)}, {4500, 4500, P(0.95f, 0.f, 1024, 0)}, {3000, 129, P(0.9f, 1.f, 256, 0)}};
    check_case(4, 1, 256, 64, s, 3, 43, "d256 g4 p64", NULL);
    check_case(8, 4, 256, 128, s, 3, 44, "d256 g2 p128", NULL);
}
END_TEST

/* The blocks rule (flex_select "blocks"): every head vertical-slash (tau 0)
 * or the data deciding, min_budget 0 to 1024, a max_budget cap, chunks on
 * unaligned prefixes, beside a token-rule sequence in the same batch. */
START_TEST(test_blocks) {
    stats_t tot = {0};
    const fseq_t s[5] = {{9001, 1500, PB(0.9f, 0.f, 256, 0, 9001)},
                         {7777, 4096, PB(0.95f, 0.f, 0, 2048, 0)},
                         {6100, 6100, PB(0.9f, 0.1f, 1024, 0, 0)},
                         {5000, 5000, PE(0.9f, 0.f, 256, 0, 0)},
                         {8000, 8000, PB(0.5f, 0.f, 64, 0, 8000)}};
    check_case(8, 4, 128, 128, s, 5, 71, "blocks d128 g2 p128", &tot);
    ck_assert_int_gt(tot.vs, 0);
    const fseq_t d[2] = {{4500, 4500, PB(0.9f, 0.f, 256, 0, 0)}, {3000, 1200, PB(0.95f, 0.f, 1024, 512, 0)}};
    check_case(8, 2, 64, 64, d, 2, 72, "blocks d64 g4 p64", NULL);
}
END_TEST

START_TEST(test_long) {
    // ~20K keys, GQA group 8: many tiles per head, radix levels over long arrays
    const fseq_t s[2] = {{20001, 20001, P(0.9f, 0.1f, 1024, 0)}, {19000, 3000, P(0.95f, 0.1f, 256, 4096)}};
    check_case(8, 1, 128, 64, s, 2, 51, "long d128 g8 p64", NULL);
}
END_TEST

START_TEST(test_mirror) {
    stats_t tot = {0};
    const fseq_t a[4] = {{250, 250, P(0.9f, 0.1f, 256, 0)},
                         {1500, 1500, P(0.9f, 0.1f, 256, 0)},
                         {2001, 77, P(0.95f, 0.1f, 256, 0)},
                         {3001, 1100, P(0.9f, 0.f, 256, 512)}};
    mirror_case(4, 2, 128, 64, a, 4, 11, "mirror d128 g2 p64", &tot);
    const fseq_t b[3] = {
        {2500, 2500, P(0.9f, 0.f, 256, 0)}, {2500, 2500, P(0.9f, 1.f, 256, 0)}, {2300, 900, P(0.95f, 0.1f, 1024, 0)}};
    mirror_case(4, 4, 64, 128, b, 3, 12, "mirror d64 g1 p128", &tot);
    // small budgets on longer inputs: sparse masks
    const fseq_t sp[3] = {
        {6000, 6000, P(0.9f, 0.f, 0, 0)}, {6000, 6000, P(0.9f, 1.f, 0, 0)}, {7001, 1500, P(0.9f, 0.1f, 32, 0)}};
    mirror_case(4, 2, 128, 64, sp, 3, 13, "mirror sparse d128 g2 p64", &tot);
    // the blocks rule
    const fseq_t bl[3] = {{6000, 6000, PB(0.9f, 0.f, 0, 0, 0)},
                          {7001, 1500, PB(0.95f, 0.1f, 256, 1024, 7001)},
                          {5000, 5000, PB(0.5f, 0.f, 64, 0, 0)}};
    mirror_case(4, 2, 128, 64, bl, 3, 14, "mirror blocks d128 g2 p64", &tot);
    ck_assert_int_gt(tot.qa, 0);
    ck_assert_int_gt(tot.vs, 0);
}
END_TEST

/* ---- benchmark (FLEX_BENCH=1) --------------------------------------------------------- */
static int bench(void) {
    enum { H = 32, KH = 8, D = 128, PS = 64, ITERS = 10, NMAX = 131072 };
    const int ctxs[3] = {32768, 65536, 131072};
    const int64_t pages_max = NMAX / PS;
    const attn_cuda_shape_t sh = {.n_heads = H,
                                  .n_kv_heads = KH,
                                  .head_dim = D,
                                  .page_size = PS,
                                  .n_pool_pages = pages_max,
                                  .scale = 0.08838835f};
    const size_t pool_bytes = (size_t)pages_max * KH * PS * D * 2, q_bytes = (size_t)NMAX * H * D * 2;
    void *dk, *dv, *dq, *dout;
    uint32_t *dmask;
    const size_t mwords = attn_cuda_flex_mask_words(NMAX, NMAX, H);
    if (cudaMalloc(&dk, pool_bytes) || cudaMalloc(&dv, pool_bytes) || cudaMalloc(&dq, q_bytes) ||
        cudaMalloc(&dout, q_bytes) || cudaMalloc((void **)&dmask, 4 * mwords)) {
        printf("bench: out of device memory\n");
        return 1;
    }
    // random bf16 in [-1, 1): one 64 MiB block from the host, replicated on the device
    const size_t blk = 64u << 20;
    uint16_t *hb = malloc(blk);
    rng = 7;
    for (size_t i = 0; i < blk / 2; i++) hb[i] = f2bf(frand());
    void *bufs[3] = {dk, dv, dq};
    const size_t sizes[3] = {pool_bytes, pool_bytes, q_bytes};
    for (int b = 0; b < 3; b++) {
        cudaMemcpy(bufs[b], (char *)hb + 4096 * b, blk - 4096 * b, cudaMemcpyHostToDevice);
        for (size_t o = blk - 4096 * b; o < sizes[b]; o += blk) {
            const size_t nb = sizes[b] - o < blk ? sizes[b] - o : blk;
            cudaMemcpy((char *)bufs[b] + o, bufs[b], nb, cudaMemcpyDeviceToDevice);
        }
    }
    free(hb);
    int32_t *pages = malloc(sizeof(int32_t) * pages_max);
    for (int64_t i = 0; i < pages_max; i++) pages[i] = (int32_t)i;
    attn_cuda_flex_t *f = NULL;
    BENCH_CHECK(attn_cuda_flex_create(&sh, 1, NMAX, NMAX, &f));
    attn_cuda_limits_t lim = {.max_seqs = 1, .max_q_rows = NMAX, .max_pages = pages_max};
    attn_cuda_plan_t *dp = NULL;
    BENCH_CHECK(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &dp));
    cudaEvent_t ev[2 * ITERS];
    for (int i = 0; i < 2 * ITERS; i++) cudaEventCreate(&ev[i]);
    printf("\nFlexPrefill selection, one layer: %d q / %d kv heads, d %d, pages of %d, gamma 0.9, min_budget 1024, "
           "median of %d; random bf16 inputs\n\n",
           H, KH, D, PS, ITERS);
    printf("| context | chunk rows | dense ms | pattern | select ms | select / dense | block density | sparse "
           "attention ms "
           "| select + sparse / dense |\n|---|---|---|---|---|---|---|---|---|\n");
    uint32_t *hmask = malloc(4 * mwords);
    // FLEX_BENCH_CTX=N: that context alone, the 4096-row chunk alone (to profile one case)
    const int only = getenv("FLEX_BENCH_CTX") ? atoi(getenv("FLEX_BENCH_CTX")) : 0;
    for (int ci = 0; ci < 3; ci++)
        for (int chunk = 0; chunk < 2; chunk++) {
            const int ctx = ctxs[ci], nq = chunk ? 4096 : ctx;
            if (only && (ctx != only || !chunk)) continue;
            int32_t qi[2] = {0, nq}, ki[2] = {0, ctx / PS}, kl[1] = {ctx}, off[1] = {0};
            attn_cuda_batch_t b = {.n_seqs = 1, .q_indptr = qi, .kv_indptr = ki, .kv_indices = pages, .kv_len = kl};
            size_t wd = 0;
            BENCH_CHECK(attn_cuda_plan(dp, &b, NULL, &wd));
            attn_cuda_args_t da = {.q = dq, .out = dout, .k = dk, .v = dv};
            for (int i = 0; i < 2; i++) BENCH_CHECK(attn_cuda_run(dp, &da, NULL));
            for (int i = 0; i < ITERS; i++) {
                cudaEventRecord(ev[2 * i], NULL);
                attn_cuda_run(dp, &da, NULL);
                cudaEventRecord(ev[2 * i + 1], NULL);
            }
            cudaDeviceSynchronize();
            const float td = gpu_median_ms(ev, ITERS);
            float ts[2];
            for (int v = 0; v < 2; v++) { // tau 0: every head vertical-slash; tau 1: every head query-aware
                uint8_t sel[1] = {1};
                attn_cuda_flex_policy_t pol[1] = {P(0.9f, v == 0 ? 0.f : 1.f, 1024, 0)};
                size_t need = 0;
                BENCH_CHECK(attn_cuda_flex_plan(f, &b, sel, pol, off, &need, NULL));
                for (int i = 0; i < 2; i++) BENCH_CHECK(attn_cuda_flex_select(f, dq, dk, dmask, NULL));
                for (int i = 0; i < ITERS; i++) {
                    cudaEventRecord(ev[2 * i], NULL);
                    attn_cuda_flex_select(f, dq, dk, dmask, NULL);
                    cudaEventRecord(ev[2 * i + 1], NULL);
                }
                if (cudaDeviceSynchronize() != cudaSuccess) {
                    printf("bench: device error %s\n", cudaGetErrorString(cudaGetLastError()));
                    return 1;
                }
                ts[v] = gpu_median_ms(ev, ITERS);
                // block density of the masks, then the block-sparse prefill over them
                const size_t mw = attn_cuda_flex_mask_words(nq, ctx, H);
                cudaMemcpy(hmask, dmask, 4 * mw, cudaMemcpyDeviceToHost);
                const int qb0 = (ctx - nq) / 128, n_kb = (ctx - 1) / 128 + 1, n_qb = n_kb - qb0,
                          words = (n_kb + 31) / 32;
                double on = 0, all = 0;
                for (int h = 0; h < H; h++)
                    for (int i = 0; i < n_qb; i++)
                        for (int kb = 0; kb <= qb0 + i; kb++) {
                            all++;
                            on += (hmask[((size_t)h * n_qb + i) * words + kb / 32] >> (kb % 32)) & 1;
                        }
                attn_cuda_batch_t bs = b;
                bs.mask_off = off;
                BENCH_CHECK(attn_cuda_plan(dp, &bs, NULL, &wd));
                attn_cuda_args_t sa = da;
                sa.block_mask = dmask;
                for (int i = 0; i < 2; i++) BENCH_CHECK(attn_cuda_run(dp, &sa, NULL));
                for (int i = 0; i < ITERS; i++) {
                    cudaEventRecord(ev[2 * i], NULL);
                    attn_cuda_run(dp, &sa, NULL);
                    cudaEventRecord(ev[2 * i + 1], NULL);
                }
                if (cudaDeviceSynchronize() != cudaSuccess) {
                    printf("bench: device error %s\n", cudaGetErrorString(cudaGetLastError()));
                    return 1;
                }
                const float tsp = gpu_median_ms(ev, ITERS);
                printf("| %dK | %d | %.2f | %s | %.2f | %.1f%% | %.3f | %.2f | %.2f |\n", ctx / 1024, nq, td,
                       v == 0 ? "vertical-slash (tau 0)" : "query-aware (tau 1)", ts[v], 100.0 * ts[v] / td, on / all,
                       tsp, (ts[v] + tsp) / td);
            }
        }
    free(hmask);
    attn_cuda_flex_destroy(f);
    attn_cuda_plan_destroy(dp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dmask);
    free(pages);
    return 0;
}

static Suite *flex_suite(void) {
    Suite *s = suite_create("flex_cuda");
    TCase *small = tcase_create("small");
    tcase_set_timeout(small, 120);
    tcase_add_test(small, test_bad_input);
    tcase_add_test(small, test_small);
    suite_add_tcase(s, small);
    TCase *full = tcase_create("full");
    tcase_set_timeout(full, 600);
    tcase_add_test(full, test_branches);
    tcase_add_test(full, test_prefix_chunks);
    tcase_add_test(full, test_d64);
    tcase_add_test(full, test_d256);
    tcase_add_test(full, test_long);
    tcase_add_test(full, test_prompt_end);
    tcase_add_test(full, test_blocks);
    suite_add_tcase(s, full);
    TCase *mirror = tcase_create("mirror");
    tcase_set_timeout(mirror, 600);
    tcase_add_test(mirror, test_mirror);
    tcase_add_test(mirror, test_prompt_end_mirror);
    suite_add_tcase(s, mirror);
    return s;
}

int main(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    have_gpu = e == cudaSuccess && n > 0;
    if (!have_gpu) { // the host mirror alone, then SKIP for the GPU cases
        printf("no CUDA device (%s): the host mirror only\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        SRunner *sr = srunner_create(flex_suite());
        srunner_set_fork_status(sr, CK_NOFORK);
        srunner_run(sr, NULL, "mirror", CK_NORMAL);
        const int failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        if (failed) return 1;
        printf("SKIP: no CUDA device for the GPU cases\n");
        return 77;
    }
    const char *b = getenv("FLEX_BENCH");
    if (b && atoi(b) == 1) return bench();
    return gpu_run_suite(flex_suite());
}
