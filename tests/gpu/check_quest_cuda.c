/* Check suite for Quest sparse decode on the GPU (src/attn/cuda/quest.cu)
 * against the CPU: the page summaries (exact), the selection against
 * attn__quest_bound/attn__quest_select of src/attn/cpu/quest.c on the same
 * f32 summaries and bf16-rounded queries (identical page sets: the GPU scores
 * in the CPU's arithmetic order), the output against a double-precision
 * attention over exactly the selected pages, and with every page in the
 * budget against the dense GPU decode kernel too.
 *
 * Inputs: pages shuffled in the pool, unused pages and the unused slots of
 * last pages poisoned with NaN; random keys, "heavy" pages (keys pushed along
 * a query of the group), and pages copied from three templates (exact score
 * ties: the earlier page must win); head_dim 64 and 128, GQA groups 1 to 8
 * (and 16), page sizes 64 and 128; sequences shorter than a page, exact
 * multiples, ~32K tokens, 128K-140K tokens (the selection's two paths: its
 * keys in registers up to 2,048 scored pages, else re-read), budgets of 1
 * page, of all pages but one, dense (0) and beyond the length, mixed in
 * one batch.
 *
 * Tolerance (bf16 inputs and outputs, f32 accumulation): per (sequence, head)
 * largest element error < 2e-2 of that slice's largest |ref|, relative L2
 * < 1e-2, |LSE error| < 1e-2; against the dense GPU kernel the same bounds.
 * Each sequence run alone must match its rows of the batch bitwise.
 *
 * QUEST_BENCH=1: instead of the checks, times selection + attention against
 * the dense decode (32 q / 8 kv heads, d 128, pages of 64, budget 2048) and
 * prints a markdown table; QUEST_SPLIT sets the attention's split-K chunk,
 * QUEST_BENCH_ONLY=CTX:BATCH runs one case (e.g. 131072:1, under ncu).
 *
 * Exits 77 (SKIP) without a GPU. Not part of make check: tests/gpu/run.sh
 * step quest. CK_RUN_CASE=small runs the quick cases alone. */
#include <check.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/attn_int.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/quest_cuda.h"
#include "common/status.h"
#include "gpu_fixture.h"
#include "gpu_testutil.h"


/* ---- a decode batch over one shuffled, poisoned pool ------------------------------ */
enum { MODE_RANDOM, MODE_HEAVY, MODE_TIES };
#define MAXS 16

typedef struct {
    int kv_len, budget; // budget in pages, 0 = dense
} qseq_t;

typedef struct {
    attn_cuda_shape_t sh;
    int n, G;
    qseq_t seq[MAXS];
    int32_t kv_indptr[MAXS + 1], kv_len[MAXS], budget[MAXS];
    int32_t *kv_indices;
    float *kf, *vf;       // f32 pool, bf16-rounded values, NaN where unused
    uint16_t *kb, *vb;    // bf16 pool
    float *qf;            // (n, H, D) bf16-rounded
    uint16_t *qb;         //
    float *kmin, *kmax;   // CPU summaries (pool, KH, D)
    void *dk, *dv, *dq;   // device copies
    float *dkmin, *dkmax; // device summaries
} qcase_t;

static size_t page_elems(const qcase_t *c) { return (size_t)c->sh.n_kv_heads * c->sh.page_size * c->sh.head_dim; }
static int n_pages_of(const qcase_t *c, int s) { return (c->seq[s].kv_len + c->sh.page_size - 1) / c->sh.page_size; }
static int valid_of(const qcase_t *c, int s, int j) { // valid tokens of logical page j
    const int ps = c->sh.page_size, len = c->seq[s].kv_len;
    return len - j * ps < ps ? len - j * ps : ps;
}
static float *krow(const qcase_t *c, float *base, int s, int j, int kh, int t) {
    const int32_t pg = c->kv_indices[c->kv_indptr[s] + j];
    return base + pg * page_elems(c) + ((size_t)kh * c->sh.page_size + t) * c->sh.head_dim;
}

static void case_build(qcase_t *c, int H, int KH, int D, int ps, const qseq_t *seqs, int n, int mode, float qmag) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->G = H / KH;
    memcpy(c->seq, seqs, sizeof(qseq_t) * n);
    for (int s = 0; s < n; s++) {
        c->kv_indptr[s + 1] = c->kv_indptr[s] + (seqs[s].kv_len + ps - 1) / ps;
        c->kv_len[s] = seqs[s].kv_len;
        c->budget[s] = seqs[s].budget;
    }
    const int64_t used = c->kv_indptr[n], pool = used + 7; // spare pages stay poisoned
    c->sh = (attn_cuda_shape_t){.n_heads = H,
                                .n_kv_heads = KH,
                                .head_dim = D,
                                .page_size = ps,
                                .n_pool_pages = pool,
                                .scale = 1.0f / sqrtf((float)D)};
    c->kv_indices = gpu_page_table(pool, used, irand);
    const size_t pe = page_elems(c), pool_elems = pe * pool, qn = (size_t)n * H * D;
    c->kf = malloc(sizeof(float) * pool_elems);
    c->vf = malloc(sizeof(float) * pool_elems);
    c->kb = malloc(2 * pool_elems);
    c->vb = malloc(2 * pool_elems);
    c->qf = malloc(sizeof(float) * qn);
    c->qb = malloc(2 * qn);
    for (size_t i = 0; i < pool_elems; i++) c->kf[i] = c->vf[i] = NAN;
    for (size_t i = 0; i < qn; i++) {
        c->qb[i] = f2bf(frand() * qmag);
        c->qf[i] = bf2f(c->qb[i]);
    }
    for (int s = 0; s < n; s++) {
        const int np = n_pages_of(c, s);
        for (int kh = 0; kh < KH; kh++) {
            // heavy pages: keys of a few pages pushed along the group's first query
            int heavy[4] = {-1, -1, -1, -1};
            if (mode == MODE_HEAVY && np > 1)
                for (int i = 0; i < 4; i++) heavy[i] = irand(np - 1);
            const float *qd = c->qf + ((size_t)s * H + (size_t)kh * c->G) * D;
            for (int j = 0; j < np; j++) {
                const int is_heavy = j == heavy[0] || j == heavy[1] || j == heavy[2] || j == heavy[3];
                for (int t = 0; t < valid_of(c, s, j); t++) {
                    float *kd = krow(c, c->kf, s, j, kh, t), *vd = krow(c, c->vf, s, j, kh, t);
                    for (int x = 0; x < D; x++)
                        kd[x] = bf2f(f2bf(frand() + (is_heavy ? 2.5f * qd[x] / (qmag > 0 ? qmag : 1) : 0.f)));
                    for (int x = 0; x < D; x++) vd[x] = bf2f(f2bf(frand()));
                }
            }
        }
    }
    if (mode == MODE_TIES) // pages 3.. (all but the newest, all full) copy the keys of page j % 3: exact ties
        for (int s = 0; s < n; s++)
            for (int kh = 0; kh < KH; kh++)
                for (int j = 3; j < n_pages_of(c, s) - 1; j++)
                    for (int t = 0; t < ps; t++)
                        memcpy(krow(c, c->kf, s, j, kh, t), krow(c, c->kf, s, j % 3, kh, t), sizeof(float) * D);
    for (size_t i = 0; i < pool_elems; i++) {
        c->kb[i] = f2bf(c->kf[i]);
        c->vb[i] = f2bf(c->vf[i]);
    }
    // CPU summaries over the valid tokens
    const size_t sn = (size_t)pool * KH * D;
    c->kmin = malloc(sizeof(float) * sn);
    c->kmax = malloc(sizeof(float) * sn);
    for (size_t i = 0; i < sn; i++) c->kmin[i] = c->kmax[i] = NAN;
    for (int s = 0; s < n; s++)
        for (int j = 0; j < n_pages_of(c, s); j++)
            for (int kh = 0; kh < KH; kh++) {
                const size_t o = ((size_t)c->kv_indices[c->kv_indptr[s] + j] * KH + kh) * D;
                for (int x = 0; x < D; x++) {
                    float mn = INFINITY, mx = -INFINITY;
                    for (int t = 0; t < valid_of(c, s, j); t++) {
                        const float v = krow(c, c->kf, s, j, kh, t)[x];
                        mn = v < mn ? v : mn;
                        mx = v > mx ? v : mx;
                    }
                    c->kmin[o + x] = mn;
                    c->kmax[o + x] = mx;
                }
            }
    CK_CUDA(cudaMalloc(&c->dk, 2 * pool_elems));
    CK_CUDA(cudaMalloc(&c->dv, 2 * pool_elems));
    CK_CUDA(cudaMalloc(&c->dq, 2 * qn));
    CK_CUDA(cudaMalloc((void **)&c->dkmin, sizeof(float) * sn));
    CK_CUDA(cudaMalloc((void **)&c->dkmax, sizeof(float) * sn));
    CK_CUDA(cudaMemcpy(c->dk, c->kb, 2 * pool_elems, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(c->dv, c->vb, 2 * pool_elems, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(c->dq, c->qb, 2 * qn, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemset(c->dkmin, 0xff, sizeof(float) * sn)); // NaN until summarised
    CK_CUDA(cudaMemset(c->dkmax, 0xff, sizeof(float) * sn));
}

static void case_free(qcase_t *c) {
    cudaFree(c->dk);
    cudaFree(c->dv);
    cudaFree(c->dq);
    cudaFree(c->dkmin);
    cudaFree(c->dkmax);
    free(c->kv_indices);
    free(c->kf);
    free(c->vf);
    free(c->kb);
    free(c->vb);
    free(c->qf);
    free(c->qb);
    free(c->kmin);
    free(c->kmax);
}

/* Summaries on the GPU: every page but the newest through the list entry
 * point, the newest through attn_quest_summarize_newest (after the plan);
 * both must equal the CPU's exactly. Returns the mismatches. */
static int64_t check_summaries(const qcase_t *c, attn_quest_plan_t *p) {
    const int KH = c->sh.n_kv_heads, D = c->sh.head_dim;
    int64_t m = 0;
    int32_t *pg = malloc(sizeof(int32_t) * (c->kv_indptr[c->n] + 1)),
            *ln = malloc(sizeof(int32_t) * (c->kv_indptr[c->n] + 1));
    for (int s = 0; s < c->n; s++)
        for (int j = 0; j < n_pages_of(c, s) - 1; j++) {
            pg[m] = c->kv_indices[c->kv_indptr[s] + j];
            ln[m++] = valid_of(c, s, j);
        }
    int32_t *dpg = NULL, *dln = NULL;
    if (m) {
        CK_CUDA(cudaMalloc((void **)&dpg, sizeof(int32_t) * m));
        CK_CUDA(cudaMalloc((void **)&dln, sizeof(int32_t) * m));
        CK_CUDA(cudaMemcpy(dpg, pg, sizeof(int32_t) * m, cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(dln, ln, sizeof(int32_t) * m, cudaMemcpyHostToDevice));
    }
    ck_assert_int_eq(attn_quest_summarize(&c->sh, c->dk, dpg, dln, (int)m, c->dkmin, c->dkmax, NULL), 0);
    ck_assert_int_eq(attn_quest_summarize_newest(p, c->dk, c->dkmin, c->dkmax, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    cudaFree(dpg);
    cudaFree(dln);
    free(pg);
    free(ln);
    const size_t sn = (size_t)c->sh.n_pool_pages * KH * D;
    float *gmin = malloc(sizeof(float) * sn), *gmax = malloc(sizeof(float) * sn);
    CK_CUDA(cudaMemcpy(gmin, c->dkmin, sizeof(float) * sn, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(gmax, c->dkmax, sizeof(float) * sn, cudaMemcpyDeviceToHost));
    int64_t bad = 0;
    for (int s = 0; s < c->n; s++)
        for (int j = 0; j < n_pages_of(c, s); j++)
            for (int kh = 0; kh < KH; kh++) {
                const size_t o = ((size_t)c->kv_indices[c->kv_indptr[s] + j] * KH + kh) * D;
                for (int x = 0; x < D; x++)
                    if (memcmp(&gmin[o + x], &c->kmin[o + x], 4) || memcmp(&gmax[o + x], &c->kmax[o + x], 4)) {
                        if (bad++ < 3)
                            printf("    summary seq %d page %d kv head %d dim %d: gpu [%g, %g] cpu [%g, %g]\n", s, j,
                                   kh, x, gmin[o + x], gmax[o + x], c->kmin[o + x], c->kmax[o + x]);
                    }
            }
    free(gmin);
    free(gmax);
    return bad;
}

/* The CPU's selection for (s, kh): logical pages ascending, the newest last. */
static int cpu_select(const qcase_t *c, int s, int kh, int32_t *out) {
    const int np = n_pages_of(c, s), B = c->budget[s], KH = c->sh.n_kv_heads, D = c->sh.head_dim;
    if (B == 0 || np <= B) {
        for (int j = 0; j < np; j++) out[j] = j;
        return np;
    }
    float *score = malloc(sizeof(float) * np);
    void *tmp = malloc(16 * (size_t)np);
    attn_range_t *rg = malloc(sizeof(attn_range_t) * np);
    const float *q = c->qf + ((size_t)s * c->sh.n_heads + (size_t)kh * c->G) * D;
    for (int j = 0; j < np - 1; j++) {
        const size_t o = ((size_t)c->kv_indices[c->kv_indptr[s] + j] * KH + kh) * D;
        score[j] = attn__quest_bound(q, c->G, D, c->kmin + o, c->kmax + o);
    }
    const int nr = attn__quest_select(score, c->seq[s].kv_len, c->sh.page_size, B, tmp, rg);
    int cnt = 0;
    for (int r = 0; r < nr; r++)
        for (int64_t pos = rg[r].lo; pos < rg[r].hi; pos += c->sh.page_size)
            out[cnt++] = (int32_t)(pos / c->sh.page_size);
    free(score);
    free(tmp);
    free(rg);
    return cnt;
}

/* Double-precision attention of (s, head h) over the listed logical pages. */
static void ref_attend(const qcase_t *c, int s, int h, const int32_t *pages, int cnt, double *o, double *lse) {
    const int D = c->sh.head_dim, kh = h / c->G;
    const float *q = c->qf + ((size_t)s * c->sh.n_heads + h) * D;
    double m = -INFINITY, l = 0;
    for (int x = 0; x < D; x++) o[x] = 0;
    for (int i = 0; i < cnt; i++)
        for (int t = 0; t < valid_of(c, s, pages[i]); t++) {
            const float *k = krow(c, c->kf, s, pages[i], kh, t), *v = krow(c, c->vf, s, pages[i], kh, t);
            double dot = 0;
            for (int x = 0; x < D; x++) dot += (double)q[x] * k[x];
            dot *= c->sh.scale;
            if (dot > m) {
                const double f = exp(m - dot);
                l *= f;
                for (int x = 0; x < D; x++) o[x] *= f;
                m = dot;
            }
            const double w = exp(dot - m);
            l += w;
            for (int x = 0; x < D; x++) o[x] += w * v[x];
        }
    for (int x = 0; x < D; x++) o[x] /= l;
    *lse = m + log(l);
}

/* Plans and runs sequences [s0, s0+ns) as a batch; out (ns, H, D) bf16 and lse to host. */
static void run_quest(const qcase_t *c, int s0, int ns, int split, int summarize, uint16_t *out, float *lse,
                      int64_t *summary_bad, attn_quest_plan_t **keep) {
    const int H = c->sh.n_heads, D = c->sh.head_dim;
    attn_cuda_limits_t lim = {
        .max_seqs = MAXS, .max_q_rows = 1, .max_pages = c->kv_indptr[c->n] + 1, .split_keys = split};
    attn_quest_plan_t *p = NULL;
    ck_assert_int_eq(attn_quest_plan_create(&c->sh, &lim, &p), 0);
    int32_t ki[MAXS + 1];
    for (int s = 0; s <= ns; s++) ki[s] = c->kv_indptr[s0 + s] - c->kv_indptr[s0];
    attn_cuda_batch_t bt = {
        .n_seqs = ns, .kv_indptr = ki, .kv_indices = c->kv_indices + c->kv_indptr[s0], .kv_len = c->kv_len + s0};
    size_t ws = 0;
    ck_assert_int_eq(attn_quest_plan(p, &bt, c->budget + s0, NULL, &ws), 0);
    if (summarize) *summary_bad = check_summaries(c, p);
    const size_t on = (size_t)ns * H * D;
    void *dout, *dlse, *dws = NULL;
    CK_CUDA(cudaMalloc(&dout, 2 * on));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * ns * H));
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    CK_CUDA(cudaMemset(dout, 0xff, 2 * on)); // NaN
    CK_CUDA(cudaMemset(dlse, 0xff, sizeof(float) * ns * H));
    attn_quest_args_t a = {.q = (const uint16_t *)c->dq + (size_t)s0 * H * D,
                           .out = dout,
                           .lse = dlse,
                           .k = c->dk,
                           .v = c->dv,
                           .kmin = c->dkmin,
                           .kmax = c->dkmax,
                           .workspace = dws,
                           .workspace_bytes = ws};
    // twice: the split-K merge counters must be back at zero, the selection rewritten alike
    ck_assert_int_eq(attn_quest_run(p, &a, NULL), 0);
    ck_assert_int_eq(attn_quest_run(p, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * on, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * ns * H, cudaMemcpyDeviceToHost));
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    if (keep)
        *keep = p;
    else
        attn_quest_plan_destroy(p);
}

/* The dense GPU decode kernel on the same batch. */
static void run_dense(const qcase_t *c, uint16_t *out) {
    const int H = c->sh.n_heads, D = c->sh.head_dim, n = c->n;
    attn_cuda_limits_t lim = {.max_seqs = MAXS, .max_q_rows = 1, .max_pages = c->kv_indptr[n] + 1};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&c->sh, ATTN_CUDA_DECODE, &lim, &p), 0);
    attn_cuda_batch_t bt = {.n_seqs = n, .kv_indptr = c->kv_indptr, .kv_indices = c->kv_indices, .kv_len = c->kv_len};
    size_t ws = 0;
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, &ws), 0);
    void *dout, *dws = NULL;
    CK_CUDA(cudaMalloc(&dout, 2 * (size_t)n * H * D));
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    attn_cuda_args_t a = {
        .q = c->dq, .out = dout, .k = c->dk, .v = c->dv, .workspace = dws, .workspace_bytes = ws, .variant = 0};
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * (size_t)n * H * D, cudaMemcpyDeviceToHost));
    cudaFree(dout);
    cudaFree(dws);
    attn_cuda_plan_destroy(p);
}

/* Everything about one case; prints one line per check, details of failures. */
static void check_case(int H, int KH, int D, int ps, const qseq_t *seqs, int n, int mode, float qmag, int split,
                       int vs_dense, uint64_t seed, const char *name) {
    rng = seed;
    qcase_t c;
    case_build(&c, H, KH, D, ps, seqs, n, mode, qmag);
    const size_t on = (size_t)n * H * D;
    uint16_t *out = malloc(2 * on), *one = malloc(2 * on);
    float *lse = malloc(sizeof(float) * n * H), *lse1 = malloc(sizeof(float) * n * H);
    int64_t sbad = 0;
    attn_quest_plan_t *p = NULL;
    run_quest(&c, 0, n, split, 1, out, lse, &sbad, &p);
    printf("%s: G %d D %d page %d, %d seqs\n", name, c.G, D, ps, n);
    printf("  %-4s summaries: %ld mismatches\n", sbad ? "FAIL" : "ok", (long)sbad);

    // (a) selection
    const int maxp = c.kv_indptr[n] + 1;
    int32_t *gsel = malloc(sizeof(int32_t) * maxp), *csel = malloc(sizeof(int32_t) * maxp);
    int agree = 0, pairs = 0, sparse_pairs = 0;
    for (int s = 0; s < n; s++)
        for (int kh = 0; kh < KH; kh++, pairs++) {
            const int cc = cpu_select(&c, s, kh, csel);
            const int gc = attn_quest_selected(p, s, kh, gsel, maxp, NULL);
            ck_assert_int_eq(gc, attn_quest_count(p, s));
            if (cc < n_pages_of(&c, s)) sparse_pairs++;
            if (gc == cc && memcmp(gsel, csel, sizeof(int32_t) * cc) == 0) {
                agree++;
                continue;
            }
            if (pairs - agree <= 3) {
                printf("    selection seq %d (len %d, budget %d) kv head %d: gpu %d pages, cpu %d\n", s,
                       c.seq[s].kv_len, c.budget[s], kh, gc, cc);
                for (int i = 0, shown = 0; i < (gc > cc ? gc : cc) && shown < 4; i++)
                    if (i >= gc || i >= cc || gsel[i] != csel[i]) {
                        printf("      position %d: gpu page %d, cpu page %d\n", i, i < gc ? gsel[i] : -1,
                               i < cc ? csel[i] : -1);
                        shown++;
                    }
            }
        }
    printf("  %-4s selection: %d/%d (seq, kv head) identical (%d sparse)\n", agree == pairs ? "ok" : "FAIL", agree,
           pairs, sparse_pairs);

    // (b) output over the CPU's selection (the GPU's, when they agree)
    double worst_max = 0, worst_rel = 0, worst_lse = 0, worst_dense = 0;
    int out_ok = 1, reported = 0;
    uint16_t *dense = NULL;
    if (vs_dense) {
        dense = malloc(2 * on);
        run_dense(&c, dense);
    }
    double *o = malloc(sizeof(double) * D);
    for (int s = 0; s < n; s++)
        for (int h = 0; h < H; h++) {
            const int cc = cpu_select(&c, s, h / c.G, csel);
            double l;
            ref_attend(&c, s, h, csel, cc, o, &l);
            const size_t base = ((size_t)s * H + h) * D;
            double se = 0, sr = 0, me = 0, mr = 0, md = 0;
            int nonfinite = 0;
            for (int x = 0; x < D; x++) {
                const double g = bf2f(out[base + x]);
                if (!isfinite(g)) nonfinite++;
                se += (g - o[x]) * (g - o[x]);
                sr += o[x] * o[x];
                me = fabs(g - o[x]) > me ? fabs(g - o[x]) : me;
                mr = fabs(o[x]) > mr ? fabs(o[x]) : mr;
                if (dense) {
                    const double dd = fabs(g - bf2f(dense[base + x]));
                    md = dd > md ? dd : md;
                }
            }
            const double rel = sqrt(se / (sr > 0 ? sr : 1)), mx = me / (mr > 0 ? mr : 1), dn = md / (mr > 0 ? mr : 1);
            const double le = isfinite(lse[s * H + h]) ? fabs(lse[s * H + h] - l) : INFINITY;
            worst_rel = rel > worst_rel ? rel : worst_rel;
            worst_max = mx > worst_max ? mx : worst_max;
            worst_lse = le > worst_lse ? le : worst_lse;
            worst_dense = dn > worst_dense ? dn : worst_dense;
            if (nonfinite || !(mx < 2e-2 && rel < 1e-2 && le < 1e-2 && dn < 2e-2)) {
                out_ok = 0;
                if (reported++ < 4)
                    printf("    output seq %d (len %d, %d pages kept) head %d: max %.3g rel %.3g lse gpu %g ref %g, "
                           "vs dense %.3g, %d not finite\n",
                           s, c.seq[s].kv_len, cc, h, mx, rel, lse[s * H + h], l, dn, nonfinite);
            }
        }
    printf("  %-4s output vs f32 reference on the selection: max %.2e  rel L2 %.2e  lse %.2e", out_ok ? "ok" : "FAIL",
           worst_max, worst_rel, worst_lse);
    if (dense) printf("  | vs dense GPU kernel: max %.2e", worst_dense);
    printf("\n");

    // batch invariance: each sequence alone
    int same = 1;
    for (int s = 0; s < n; s++) {
        run_quest(&c, s, 1, split, 0, one, lse1, NULL, NULL);
        if (memcmp(one, out + (size_t)s * H * D, 2 * (size_t)H * D) || memcmp(lse1, lse + s * H, sizeof(float) * H)) {
            printf("    seq %d alone differs from its rows in the batch\n", s);
            same = 0;
        }
    }
    printf("  %-4s batch invariance\n", same ? "ok" : "FAIL");
    attn_quest_plan_destroy(p);
    free(o);
    free(dense);
    free(gsel);
    free(csel);
    free(out);
    free(one);
    free(lse);
    free(lse1);
    case_free(&c);
    ck_assert_msg(sbad == 0, "%s: GPU summaries differ from the CPU's", name);
    ck_assert_msg(agree == pairs, "%s: GPU selection differs from attn__quest_select", name);
    ck_assert_msg(out_ok, "%s: output off the reference (see above)", name);
    ck_assert_msg(same, "%s: not batch invariant", name);
}

/* ---- cases ------------------------------------------------------------------------ */
START_TEST(test_small) {
    // shorter than a page, exact multiples, budgets 1, all-but-one, dense, beyond the length
    const qseq_t s[] = {{1, 2}, {63, 1}, {64, 1}, {65, 1}, {700, 3}, {1000, 0}, {2048, 4}, {640, 10}, {704, 10}};
    check_case(8, 2, 128, 64, s, 9, MODE_RANDOM, 1.f, 0, 0, 11, "small random");
    check_case(4, 4, 64, 128, s, 9, MODE_HEAVY, 2.f, 64, 0, 12, "small heavy split64");
}
END_TEST

START_TEST(test_heavy) {
    const qseq_t s[] = {{5000, 8}, {129, 2}, {3000, 16}, {4096, 32}, {777, 5}, {2500, 0}, {10000, 32}, {64, 1}};
    check_case(32, 8, 128, 64, s, 8, MODE_HEAVY, 2.f, 0, 0, 21, "heavy d128 g4 p64");
    check_case(32, 8, 128, 128, s, 8, MODE_HEAVY, 3.f, 0, 0, 22, "heavy d128 g4 p128");
    check_case(32, 8, 128, 64, s, 8, MODE_RANDOM, 1.f, 0, 0, 23, "random d128 g4 p64");
}
END_TEST

START_TEST(test_groups) {
    const qseq_t s[] = {{3000, 6}, {200, 2}, {1500, 3}, {4097, 16}, {128, 1}};
    check_case(4, 4, 64, 128, s, 5, MODE_HEAVY, 2.f, 0, 0, 31, "d64 g1 p128");
    check_case(4, 2, 64, 64, s, 5, MODE_RANDOM, 1.f, 0, 0, 32, "d64 g2 p64");
    check_case(6, 2, 128, 64, s, 5, MODE_HEAVY, 2.f, 0, 0, 33, "d128 g3 p64");
    check_case(16, 2, 64, 64, s, 5, MODE_HEAVY, 2.f, 0, 0, 34, "d64 g8 p64");
    check_case(16, 2, 128, 128, s, 5, MODE_RANDOM, 1.f, 0, 0, 35, "d128 g8 p128");
    check_case(16, 1, 128, 64, s, 5, MODE_HEAVY, 2.f, 0, 0, 36, "d128 g16 p64");
    check_case(4, 1, 256, 64, s, 5, MODE_HEAVY, 2.f, 0, 0, 37, "d256 g4 p64"); // Gemma 3
    check_case(8, 1, 256, 128, s, 5, MODE_RANDOM, 1.f, 0, 0, 38, "d256 g8 p128");
}
END_TEST

START_TEST(test_ties) {
    // pages copied from three templates: equal scores, the earlier pages must win
    const qseq_t s[] = {{3000, 5}, {1280, 4}, {700, 2}, {4000, 20}};
    check_case(8, 4, 64, 64, s, 4, MODE_TIES, 1.f, 0, 0, 41, "ties d64 g2 p64");
    check_case(8, 2, 128, 128, s, 4, MODE_TIES, 1.f, 0, 0, 42, "ties d128 g4 p128");
}
END_TEST

START_TEST(test_long) {
    // ~32K tokens with the 2048-token budget, next to short sequences
    const qseq_t s[] = {{32768, 32}, {32000, 32}, {100, 32}, {32767, 16}, {9000, 0}};
    check_case(8, 2, 128, 64, s, 5, MODE_HEAVY, 2.f, 0, 0, 51, "long d128 g4 p64");
    const qseq_t t[] = {{32768, 16}, {31000, 16}, {300, 1}};
    check_case(8, 2, 128, 128, t, 3, MODE_RANDOM, 1.f, 0, 0, 52, "long d128 g4 p128");
}
END_TEST

START_TEST(test_very_long) {
    // the selection keeps up to 2,048 scored pages in registers and reads the
    // rest from the workspace: 2,048 (the edge), 2,049 and 2,187 scored pages
    const qseq_t s[] = {{131073, 32}, {131137, 32}, {140000, 64}, {5000, 8}};
    check_case(8, 2, 128, 64, s, 4, MODE_HEAVY, 2.f, 0, 0, 71, "very long d128 g4 p64");
}
END_TEST

START_TEST(test_full_budget) {
    // every page in the budget (or budget 0): dense, against the dense GPU kernel as well
    const qseq_t s[] = {{1, 1}, {700, 11}, {5000, 200}, {20000, 0}, {64, 1}, {4096, 64}};
    check_case(32, 8, 128, 64, s, 6, MODE_RANDOM, 1.f, 0, 1, 61, "full budget d128 g4 p64");
    check_case(8, 2, 64, 128, s, 6, MODE_HEAVY, 2.f, 0, 1, 62, "full budget d64 g4 p128");
}
END_TEST

START_TEST(test_bad_input) {
    attn_cuda_shape_t sh = {
        .n_heads = 8, .n_kv_heads = 2, .head_dim = 128, .page_size = 64, .n_pool_pages = 10, .scale = 0.1f};
    attn_cuda_limits_t lim = {.max_seqs = 2, .max_q_rows = 1, .max_pages = 10};
    attn_quest_plan_t *p = NULL;
    attn_cuda_shape_t bad = sh;
    bad.head_dim = 96;
    ck_assert_int_eq(attn_quest_plan_create(&bad, &lim, &p), LC_EUNSUPPORTED);
    bad.head_dim = 256; // 4 query heads a kv head fit the scoring CTA at 256 dims, 16 do not
    bad.n_heads = 32;
    ck_assert_int_eq(attn_quest_plan_create(&bad, &lim, &p), LC_EUNSUPPORTED);
    bad = sh;
    bad.n_heads = 7;
    ck_assert_int_eq(attn_quest_plan_create(&bad, &lim, &p), LC_EINVAL);
    ck_assert_int_eq(attn_quest_plan_create(&sh, &lim, &p), 0);
    int32_t ki[3] = {0, 2, 4}, idx[4] = {3, 7, 1, 2}, len[2] = {100, 65}, bud[2] = {1, 0};
    attn_cuda_batch_t b = {.n_seqs = 2, .kv_indptr = ki, .kv_indices = idx, .kv_len = len};
    size_t ws = 0;
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), 0);
    ck_assert_int_eq(attn_quest_count(p, 0), 1);
    ck_assert_int_eq(attn_quest_count(p, 1), 2);
    ck_assert_int_eq(attn_quest_count(p, 2), -1);
    idx[1] = 10; // past the pool
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    idx[1] = 7;
    len[0] = 129; // more keys than two pages hold
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    len[0] = 100;
    bud[1] = -1;
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    bud[1] = 0;
    b.n_seqs = 3;
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), LC_ERANGE);
    b.n_seqs = 2;
    ck_assert_int_eq(attn_quest_plan(p, &b, bud, NULL, &ws), 0);
    attn_quest_args_t a = {0};
    ck_assert_int_eq(attn_quest_run(p, &a, NULL), LC_EINVAL); // missing pointers
    ck_assert_int_eq(attn_quest_summarize(&sh, NULL, NULL, NULL, 0, NULL, NULL, NULL), 0);
    ck_assert_int_eq(attn_quest_summarize(&sh, NULL, NULL, NULL, 1, NULL, NULL, NULL), LC_EINVAL);
    attn_quest_plan_destroy(p);
}
END_TEST

/* ---- benchmark (QUEST_BENCH=1) ------------------------------------------------------ */
static int bench(void) {
    enum { H = 32, KH = 8, D = 128, PS = 64, BUDGET = 2048, ITERS = 20, MAXB = 64 };
    const int ctxs[2] = {32768, 131072}, batches[4] = {1, 8, 32, 64};
    const char *only = getenv("QUEST_BENCH_ONLY"); // e.g. "131072:1": that case alone (for ncu)
    const int64_t pages_max = (int64_t)MAXB * (131072 / PS);
    const attn_cuda_shape_t sh = {.n_heads = H,
                                  .n_kv_heads = KH,
                                  .head_dim = D,
                                  .page_size = PS,
                                  .n_pool_pages = pages_max,
                                  .scale = 0.08838835f};
    const size_t pool_bytes = (size_t)pages_max * KH * PS * D * 2, sum_bytes = (size_t)pages_max * KH * D * 4;
    void *dk, *dv, *dq, *dout, *dws = NULL;
    float *dmin, *dmax, *dlse;
    if (cudaMalloc(&dk, pool_bytes) || cudaMalloc(&dv, pool_bytes) || cudaMalloc((void **)&dmin, sum_bytes) ||
        cudaMalloc((void **)&dmax, sum_bytes) || cudaMalloc(&dq, (size_t)MAXB * H * D * 2) ||
        cudaMalloc(&dout, (size_t)MAXB * H * D * 2) || cudaMalloc((void **)&dlse, (size_t)MAXB * H * 4)) {
        printf("bench: out of device memory\n");
        return 1;
    }
    // random bf16 in [-1, 1): one 64 MiB block from the host, replicated on the device
    rng = 7;
    gpu_bench_fill(dk, dv, pool_bytes, dq, (size_t)MAXB * H * D * 2, frand);
    int32_t *pages = malloc(sizeof(int32_t) * pages_max), *plen = malloc(sizeof(int32_t) * pages_max);
    for (int64_t i = 0; i < pages_max; i++) {
        pages[i] = (int32_t)i;
        plen[i] = PS;
    }
    int32_t *dpg, *dln;
    cudaMalloc((void **)&dpg, sizeof(int32_t) * pages_max);
    cudaMalloc((void **)&dln, sizeof(int32_t) * pages_max);
    cudaMemcpy(dpg, pages, sizeof(int32_t) * pages_max, cudaMemcpyHostToDevice);
    cudaMemcpy(dln, plen, sizeof(int32_t) * pages_max, cudaMemcpyHostToDevice);
    BENCH_CHECK(attn_quest_summarize(&sh, dk, dpg, dln, (int)pages_max, dmin, dmax, NULL));
    const char *se = getenv("QUEST_SPLIT");
    attn_cuda_limits_t lim = {
        .max_seqs = MAXB, .max_q_rows = 1, .max_pages = pages_max, .split_keys = se ? atoi(se) : 0};
    attn_cuda_limits_t dlim = lim; // the dense kernel at its default split
    dlim.split_keys = 0;
    attn_cuda_plan_t *dp = NULL;
    attn_quest_plan_t *qp = NULL;
    BENCH_CHECK(attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &dlim, &dp));
    BENCH_CHECK(attn_quest_plan_create(&sh, &lim, &qp));
    cudaEvent_t ev[2 * ITERS];
    for (int i = 0; i < 2 * ITERS; i++) cudaEventCreate(&ev[i]);
    size_t ws_cap = 0;
    printf("\nQuest decode, one layer: %d q / %d kv heads, d %d, pages of %d, budget %d tokens, median of %d "
           "(split-K chunk %s)\n\n",
           H, KH, D, PS, BUDGET, ITERS, se ? se : "default");
    printf("| context | batch | dense ms | quest ms | speed-up | quest at 2 pages ms | dense KV TB/s |\n"
           "|---|---|---|---|---|---|---|\n");
    for (int ci = 0; ci < 2; ci++)
        for (int bi = 0; bi < 4; bi++) {
            const int ctx = ctxs[ci], nb = batches[bi], np = ctx / PS;
            char name[32];
            snprintf(name, sizeof name, "%d:%d", ctx, nb);
            if (only && strcmp(only, name)) continue;
            int32_t kvp[MAXB + 1], kl[MAXB], bud[MAXB];
            kvp[0] = 0;
            for (int s = 0; s < nb; s++) {
                kvp[s + 1] = kvp[s] + np;
                kl[s] = ctx;
            }
            attn_cuda_batch_t b = {.n_seqs = nb, .kv_indptr = kvp, .kv_indices = pages, .kv_len = kl};
            size_t wd = 0;
            BENCH_CHECK(attn_cuda_plan(dp, &b, NULL, &wd));
            if (gpu_ensure_ws(&dws, &ws_cap, wd)) return 1;
            attn_cuda_args_t da = {
                .q = dq, .out = dout, .lse = dlse, .k = dk, .v = dv, .workspace = dws, .workspace_bytes = wd};
            for (int i = 0; i < 3; i++) BENCH_CHECK(attn_cuda_run(dp, &da, NULL));
            for (int i = 0; i < ITERS; i++) {
                cudaEventRecord(ev[2 * i], NULL);
                attn_cuda_run(dp, &da, NULL);
                cudaEventRecord(ev[2 * i + 1], NULL);
            }
            cudaDeviceSynchronize();
            const float td = gpu_median_ms(ev, ITERS);
            // the budget, then 2 pages: scoring and selection with next to no attention
            float tq[2];
            for (int v = 0; v < 2; v++) {
                for (int s = 0; s < nb; s++) bud[s] = v == 0 ? BUDGET / PS : 2;
                size_t wq = 0;
                BENCH_CHECK(attn_quest_plan(qp, &b, bud, NULL, &wq));
                if (gpu_ensure_ws(&dws, &ws_cap, wq)) return 1;
                attn_quest_args_t qa = {.q = dq,
                                        .out = dout,
                                        .lse = dlse,
                                        .k = dk,
                                        .v = dv,
                                        .kmin = dmin,
                                        .kmax = dmax,
                                        .workspace = dws,
                                        .workspace_bytes = wq};
                for (int i = 0; i < 3; i++) BENCH_CHECK(attn_quest_run(qp, &qa, NULL));
                for (int i = 0; i < ITERS; i++) {
                    cudaEventRecord(ev[2 * i], NULL);
                    attn_quest_run(qp, &qa, NULL);
                    cudaEventRecord(ev[2 * i + 1], NULL);
                }
                if (cudaDeviceSynchronize() != cudaSuccess) {
                    printf("bench: device error %s\n", cudaGetErrorString(cudaGetLastError()));
                    return 1;
                }
                tq[v] = gpu_median_ms(ev, ITERS);
            }
            const double kv_bytes = (double)nb * ctx * KH * D * 2 * 2;
            printf("| %dK | %d | %.3f | %.3f | %.1fx | %.3f | %.2f |\n", ctx / 1024, nb, td, tq[0], td / tq[0], tq[1],
                   kv_bytes / (td * 1e-3) / 1e12);
        }
    attn_quest_plan_destroy(qp);
    attn_cuda_plan_destroy(dp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dmin);
    cudaFree(dmax);
    cudaFree(dws);
    cudaFree(dpg);
    cudaFree(dln);
    free(pages);
    free(plen);
    return 0;
}

static Suite *quest_suite(void) {
    Suite *s = suite_create("quest_cuda");
    TCase *small = tcase_create("small");
    tcase_add_test(small, test_bad_input);
    tcase_add_test(small, test_small);
    suite_add_tcase(s, small);
    TCase *full = tcase_create("full");
    tcase_set_timeout(full, 600);
    tcase_add_test(full, test_heavy);
    tcase_add_test(full, test_groups);
    tcase_add_test(full, test_ties);
    tcase_add_test(full, test_full_budget);
    tcase_add_test(full, test_long);
    tcase_add_test(full, test_very_long);
    suite_add_tcase(s, full);
    return s;
}

int main(void) {
    if (!gpu_have_device()) return 77;
    const char *b = getenv("QUEST_BENCH");
    if (b && atoi(b) == 1) return bench();
    return gpu_run_suite(quest_suite());
}
