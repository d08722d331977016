/* Check suite for TidalDecode sparse decode on the GPU (src/attn/cuda/tidal.cu)
 * against the CPU: the selection against attn__tidal_pick of
 * src/attn/cpu/tidal.c on f32 masses computed here in double precision from
 * the same bf16-rounded q and K, the output against a double-precision
 * attention over exactly the selected positions plus the newest, on the
 * selection layer and on a second layer that reuses its selection, and with
 * every position in the budget against the dense GPU decode kernel too.
 *
 * The GPU's masses come from its own arithmetic (tensor-core dot products,
 * the dense kernel's LSE), so a position whose mass is within rounding of
 * the threshold may be swapped for another such position: such swaps are
 * allowed (and counted) only within a relative 1e-4 of the threshold mass.
 * (Equal f32 masses of different keys are common at 32K positions, and the
 * GPU's masses of those differ in the last bits, so an equal CPU mass alone
 * says nothing about the GPU's order.) Ties on both sides come from equal
 * keys: the ties mode copies keys from three templates, the budget cuts
 * through a group of copies, and the GPU must make the CPU's choice exactly,
 * the earliest copies winning.
 *
 * Inputs: pages shuffled in the pool, unused pages and the unused slots of
 * last pages poisoned with NaN; random keys, "heavy" keys (a sink, a local
 * window and scattered positions pushed along the group's first query), and
 * copied keys; head_dim 64 and 128, GQA groups 1 to 8 (and 16), page sizes 64
 * and 128; rows of 1 position to ~32K, budgets of 1, small, kv_len - 1 and
 * >= kv_len, mixed in one batch.
 *
 * Tolerance (bf16 inputs and outputs, f32 accumulation): per (row, head)
 * largest element error < 2e-2 of that slice's largest |ref|, relative L2
 * < 1e-2, |LSE error| < 1e-2; against the dense GPU kernel the same bounds.
 * Each row run alone must give its selection and its rows of the batch
 * bitwise.
 *
 * TIDAL_BENCH=1: instead of the checks, times selection and sparse attention
 * against the dense decode (32 q / 8 kv heads, d 128, pages of 64, budget
 * 2048) and prints a markdown table; TIDAL_SPLIT sets the attention's chunk.
 *
 * Exits 77 (SKIP) without a GPU. Not part of make check: tests/gpu/run.sh
 * step tidal. CK_RUN_CASE=small runs the quick cases alone. */
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
#include "attn/cuda/tidal_cuda.h"
#include "common/status.h"
#include "gpu_fixture.h"
#include "gpu_testutil.h"

/* ---- a decode batch over one shuffled, poisoned pool, two layers ---------------------- */
enum { MODE_RANDOM, MODE_HEAVY, MODE_TIES };
#define MAXR 16
#define NEAR_TIE 1e-4

typedef struct {
    int kv_len, budget;
} trow_t;

typedef struct {
    attn_cuda_shape_t sh;
    int n, G, max_keep;
    trow_t row[MAXR];
    int32_t kv_indptr[MAXR + 1], kv_len[MAXR], budget[MAXR];
    int32_t *kv_indices;
    float *kf[2], *vf[2]; // per layer: f32 pool, bf16-rounded values, NaN where unused
    float *qf[2];         // per layer: (n, H, D) bf16-rounded
    void *dk[2], *dv[2], *dq[2];
} tcase_t;

static size_t page_elems(const tcase_t *c) { return (size_t)c->sh.n_kv_heads * c->sh.page_size * c->sh.head_dim; }
static int keep_of(const tcase_t *c, int s) {
    return c->row[s].budget < c->row[s].kv_len ? c->row[s].budget : c->row[s].kv_len;
}
static float *krow(const tcase_t *c, float *base, int s, int pos, int kh) {
    const int ps = c->sh.page_size;
    const int32_t pg = c->kv_indices[c->kv_indptr[s] + pos / ps];
    return base + pg * page_elems(c) + ((size_t)kh * ps + pos % ps) * c->sh.head_dim;
}

static void *upload_bf16(const float *x, size_t n) {
    uint16_t *h = malloc(2 * n);
    for (size_t i = 0; i < n; i++) h[i] = f2bf(x[i]);
    void *d = NULL;
    CK_CUDA(cudaMalloc(&d, 2 * n));
    CK_CUDA(cudaMemcpy(d, h, 2 * n, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static void case_build(tcase_t *c, int H, int KH, int D, int ps, const trow_t *rows, int n, int mode, float qmag) {
    memset(c, 0, sizeof *c);
    c->n = n;
    c->G = H / KH;
    memcpy(c->row, rows, sizeof(trow_t) * n);
    for (int s = 0; s < n; s++) {
        c->kv_indptr[s + 1] = c->kv_indptr[s] + (rows[s].kv_len + ps - 1) / ps;
        c->kv_len[s] = rows[s].kv_len;
        c->budget[s] = rows[s].budget;
        const int k = keep_of(c, s);
        if (k < rows[s].kv_len && k > c->max_keep) c->max_keep = k;
    }
    if (c->max_keep == 0) c->max_keep = 1;
    const int64_t used = c->kv_indptr[n], pool = used + 7; // spare pages stay poisoned
    c->sh = (attn_cuda_shape_t){.n_heads = H,
                                .n_kv_heads = KH,
                                .head_dim = D,
                                .page_size = ps,
                                .n_pool_pages = pool,
                                .scale = 1.0f / sqrtf((float)D)};
    c->kv_indices = gpu_page_table(pool, used, irand);
    const size_t pool_elems = page_elems(c) * pool, qn = (size_t)n * H * D;
    for (int l = 0; l < 2; l++) {
        c->kf[l] = malloc(sizeof(float) * pool_elems);
        c->vf[l] = malloc(sizeof(float) * pool_elems);
        c->qf[l] = malloc(sizeof(float) * qn);
        for (size_t i = 0; i < pool_elems; i++) c->kf[l][i] = c->vf[l][i] = NAN;
        for (size_t i = 0; i < qn; i++) c->qf[l][i] = bf2f(f2bf(frand() * qmag));
        // layer 0 in the case's mode (the selection is made there), layer 1 random
        const int m = l == 0 ? mode : MODE_RANDOM;
        for (int s = 0; s < n; s++) {
            const int len = rows[s].kv_len;
            for (int kh = 0; kh < KH; kh++) {
                const float *qd = c->qf[l] + ((size_t)s * H + (size_t)kh * c->G) * D;
                int heavy[8];
                for (int i = 0; i < 8; i++) heavy[i] = irand(len);
                for (int j = 0; j < len; j++) {
                    int is_heavy = m == MODE_HEAVY && (j == 0 || j >= len - 32);
                    for (int i = 0; i < 8; i++) is_heavy |= m == MODE_HEAVY && j == heavy[i];
                    float *kd = krow(c, c->kf[l], s, j, kh), *vd = krow(c, c->vf[l], s, j, kh);
                    if (m == MODE_TIES && j >= 3 && j < len - 1) {
                        memcpy(kd, krow(c, c->kf[l], s, j % 3, kh), sizeof(float) * D); // exact ties
                    } else {
                        for (int x = 0; x < D; x++)
                            kd[x] = bf2f(f2bf(frand() + (is_heavy ? 2.5f * qd[x] / (qmag > 0 ? qmag : 1) : 0.f)));
                    }
                    for (int x = 0; x < D; x++) vd[x] = bf2f(f2bf(frand()));
                }
            }
        }
        c->dk[l] = upload_bf16(c->kf[l], pool_elems); // NaN stays NaN
        c->dv[l] = upload_bf16(c->vf[l], pool_elems);
        c->dq[l] = upload_bf16(c->qf[l], qn);
    }
}

static void case_free(tcase_t *c) {
    for (int l = 0; l < 2; l++) {
        cudaFree(c->dk[l]);
        cudaFree(c->dv[l]);
        cudaFree(c->dq[l]);
        free(c->kf[l]);
        free(c->vf[l]);
        free(c->qf[l]);
    }
    free(c->kv_indices);
}

/* The attention mass of row s, kv head kh on layer 0 in double precision:
 * per query head the exact softmax, summed over the group; rounded to f32
 * for attn__tidal_pick. sc: (G, kv_len) scratch. */
static void cpu_mass(const tcase_t *c, int s, int kh, float *mass, double *sc) {
    const int D = c->sh.head_dim, n = c->row[s].kv_len, G = c->G;
    double *acc = sc + (size_t)G * n;
    for (int j = 0; j < n; j++) acc[j] = 0;
    for (int g = 0; g < G; g++) {
        const float *q = c->qf[0] + ((size_t)s * c->sh.n_heads + (size_t)kh * G + g) * D;
        double *row = sc + (size_t)g * n, mx = -INFINITY, l = 0;
        for (int j = 0; j < n; j++) {
            const float *k = krow(c, c->kf[0], s, j, kh);
            double dot = 0;
            for (int x = 0; x < D; x++) dot += (double)q[x] * k[x];
            row[j] = dot * c->sh.scale;
            mx = row[j] > mx ? row[j] : mx;
        }
        for (int j = 0; j < n; j++) l += exp(row[j] - mx);
        for (int j = 0; j < n; j++) acc[j] += exp(row[j] - mx) / l;
    }
    for (int j = 0; j < n; j++) mass[j] = (float)acc[j];
}

/* Double-precision attention of (row s, head h) on layer l over the listed positions. */
static void ref_attend(const tcase_t *c, int l, int s, int h, const int32_t *pos, int cnt, double *o, double *lse) {
    const int D = c->sh.head_dim, kh = h / c->G;
    const float *q = c->qf[l] + ((size_t)s * c->sh.n_heads + h) * D;
    double m = -INFINITY, sum = 0;
    for (int x = 0; x < D; x++) o[x] = 0;
    for (int i = 0; i < cnt; i++) {
        const float *k = krow(c, c->kf[l], s, pos[i], kh), *v = krow(c, c->vf[l], s, pos[i], kh);
        double dot = 0;
        for (int x = 0; x < D; x++) dot += (double)q[x] * k[x];
        dot *= c->sh.scale;
        if (dot > m) {
            const double f = exp(m - dot);
            sum *= f;
            for (int x = 0; x < D; x++) o[x] *= f;
            m = dot;
        }
        const double w = exp(dot - m);
        sum += w;
        for (int x = 0; x < D; x++) o[x] += w * v[x];
    }
    for (int x = 0; x < D; x++) o[x] /= sum;
    *lse = m + log(sum);
}

/* The dense GPU decode kernel on layer 0 of the batch: outputs and LSE, device and host. */
static void run_dense(const tcase_t *c, uint16_t *out, float *lse, float *dlse) {
    const int H = c->sh.n_heads, D = c->sh.head_dim, n = c->n;
    attn_cuda_limits_t lim = {.max_seqs = MAXR, .max_q_rows = 1, .max_pages = c->kv_indptr[n] + 1};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&c->sh, ATTN_CUDA_DECODE, &lim, &p), 0);
    attn_cuda_batch_t bt = {.n_seqs = n, .kv_indptr = c->kv_indptr, .kv_indices = c->kv_indices, .kv_len = c->kv_len};
    size_t ws = 0;
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, &ws), 0);
    void *dout, *dws = NULL;
    CK_CUDA(cudaMalloc(&dout, 2 * (size_t)n * H * D));
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    attn_cuda_args_t a = {
        .q = c->dq[0], .out = dout, .lse = dlse, .k = c->dk[0], .v = c->dv[0], .workspace = dws, .workspace_bytes = ws};
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * (size_t)n * H * D, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * n * H, cudaMemcpyDeviceToHost));
    cudaFree(dout);
    cudaFree(dws);
    attn_cuda_plan_destroy(p);
}

/* Plans rows [s0, s0+ns) as a batch, selects on layer 0 with the dense LSE
 * dlse (all rows), attends on layers 0 and 1; outputs (ns, H, D) bf16 and
 * LSEs to host. Keeps the plan in *keep when asked (for its selection). */
static void run_tidal(const tcase_t *c, int s0, int ns, int split, const float *dlse, uint16_t *out[2], float *lse[2],
                      attn_tidal_plan_t **keep) {
    const int H = c->sh.n_heads, D = c->sh.head_dim;
    attn_tidal_limits_t lim = {
        .max_rows = MAXR, .max_pages = c->kv_indptr[c->n] + 1, .max_budget = c->max_keep, .split_keys = split};
    attn_tidal_plan_t *p = NULL;
    ck_assert_int_eq(attn_tidal_plan_create(&c->sh, &lim, &p), 0);
    int32_t ki[MAXR + 1];
    for (int s = 0; s <= ns; s++) ki[s] = c->kv_indptr[s0 + s] - c->kv_indptr[s0];
    attn_cuda_batch_t bt = {
        .n_seqs = ns, .kv_indptr = ki, .kv_indices = c->kv_indices + c->kv_indptr[s0], .kv_len = c->kv_len + s0};
    size_t ws = 0;
    ck_assert_int_eq(attn_tidal_plan(p, &bt, c->budget + s0, NULL, &ws), 0);
    void *dws = NULL, *dout;
    float *dl;
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    CK_CUDA(cudaMalloc(&dout, 2 * (size_t)ns * H * D));
    CK_CUDA(cudaMalloc((void **)&dl, sizeof(float) * ns * H));
    const size_t qo = (size_t)s0 * H * D;
    attn_tidal_select_args_t sa = {.q = (const uint16_t *)c->dq[0] + qo,
                                   .k = c->dk[0],
                                   .lse = dlse + (size_t)s0 * H,
                                   .workspace = dws,
                                   .workspace_bytes = ws};
    ck_assert_int_eq(attn_tidal_select(p, &sa, NULL), 0);
    for (int l = 0; l < 2; l++) {
        attn_tidal_attend_args_t aa = {.q = (const uint16_t *)c->dq[l] + qo,
                                       .out = dout,
                                       .lse = dl,
                                       .k = c->dk[l],
                                       .v = c->dv[l],
                                       .workspace = dws,
                                       .workspace_bytes = ws};
        CK_CUDA(cudaMemset(dout, 0xff, 2 * (size_t)ns * H * D)); // NaN: every output must be written
        ck_assert_int_eq(attn_tidal_attend(p, &aa, NULL), 0);
        CK_CUDA(cudaDeviceSynchronize());
        CK_CUDA(cudaMemcpy(out[l], dout, 2 * (size_t)ns * H * D, cudaMemcpyDeviceToHost));
        CK_CUDA(cudaMemcpy(lse[l], dl, sizeof(float) * ns * H, cudaMemcpyDeviceToHost));
    }
    cudaFree(dws);
    cudaFree(dout);
    cudaFree(dl);
    if (keep)
        *keep = p;
    else
        attn_tidal_plan_destroy(p);
}

/* ---- the checks of one case -------------------------------------------------------------- */
typedef struct {
    int pairs, exact, near, bad, tie_cuts; // (row, kv head) pairs: identical, near-tie swaps only, wrong; cut ties
    int64_t swaps;
} selstat_t;

/* Compares the GPU's selection of (s, kh) with attn__tidal_pick's on the
 * CPU masses. */
static void check_selection(const tcase_t *c, int s, int kh, const int32_t *gsel, int gc, const float *mass, int strict,
                            selstat_t *st) {
    const int n = c->row[s].kv_len, keep = keep_of(c, s);
    int64_t *cpos = malloc(sizeof(int64_t) * n);
    float *tmp = malloc(sizeof(float) * n);
    const int cc = (int)attn__tidal_pick(mass, n, keep, tmp, cpos);
    st->pairs++;
    int ok = gc == keep && cc == keep;
    for (int i = 0; ok && i < gc; i++) ok = gsel[i] >= 0 && gsel[i] < n && (i == 0 || gsel[i] > gsel[i - 1]);
    if (!ok) {
        st->bad++;
        if (st->bad <= 3)
            printf("    row %d kv head %d: gpu %d positions (cpu %d, keep %d) or not ascending\n", s, kh, gc, cc, keep);
        free(cpos);
        free(tmp);
        return;
    }
    float thr = INFINITY; // the keep-th largest mass
    for (int i = 0; i < cc; i++) thr = mass[cpos[i]] < thr ? mass[cpos[i]] : thr;
    // differences: kept by one side only (both lists ascending)
    int diff = 0, far = 0;
    for (int i = 0, j = 0; i < cc || j < gc;) {
        int64_t d;
        if (j >= gc || (i < cc && cpos[i] < gsel[j]))
            d = cpos[i++];
        else if (i >= cc || gsel[j] < cpos[i])
            d = gsel[j++];
        else {
            i++;
            j++;
            continue;
        }
        diff++;
        if (fabs((double)mass[d] - thr) > NEAR_TIE * thr) far++;
    }
    // ties mode: the GPU's kept positions of the threshold mass are its earliest ones
    int order = 1;
    if (strict) {
        int eq_total = 0, eq_kept = 0, dropped = 0;
        for (int a = 0, b = 0; a < n; a++) {
            while (b < gc && gsel[b] < a) b++;
            if (mass[a] != thr) continue;
            const int kept = b < gc && gsel[b] == a;
            eq_total++;
            eq_kept += kept;
            if (kept && dropped) order = 0;
            dropped |= !kept;
        }
        if (eq_kept > 0 && eq_kept < eq_total) st->tie_cuts++;
    }
    if (diff == 0 && order)
        st->exact++;
    else if (!strict && !far)
        st->near++, st->swaps += diff / 2;
    else {
        st->bad++;
        if (st->bad <= 3)
            printf("    row %d (len %d, keep %d) kv head %d: %d positions differ, %d beyond a near tie%s\n", s, n, keep,
                   kh, diff, far, order ? "" : ", a later tie kept before an earlier one");
    }
    free(cpos);
    free(tmp);
}

/* Output of every (row, head) of layer l against the reference over the
 * GPU's list (its selection plus the newest); dense (layer 0, or NULL)
 * bounds the difference to the dense kernel too. Returns 1 when all pass. */
static int check_output(const tcase_t *c, int layer, int32_t *const *sel, const int *cnt, const uint16_t *out,
                        const float *lse, const uint16_t *dense, const char *what) {
    const int H = c->sh.n_heads, D = c->sh.head_dim;
    double *o = malloc(sizeof(double) * D), worst_max = 0, worst_rel = 0, worst_lse = 0, worst_dense = 0;
    int ok = 1, reported = 0;
    for (int s = 0; s < c->n; s++)
        for (int h = 0; h < H; h++) {
            const int kh = h / c->G, n = c->row[s].kv_len;
            int32_t *list = sel[s * c->sh.n_kv_heads + kh];
            int m = cnt[s * c->sh.n_kv_heads + kh];
            if (m == 0 || list[m - 1] != n - 1) list[m++] = n - 1; // the newest, once (room reserved)
            double rl;
            ref_attend(c, layer, s, h, list, m, o, &rl);
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
                if (dense && keep_of(c, s) == n) {
                    const double dd = fabs(g - bf2f(dense[base + x]));
                    md = dd > md ? dd : md;
                }
            }
            const double rel = sqrt(se / (sr > 0 ? sr : 1)), mx = me / (mr > 0 ? mr : 1), dn = md / (mr > 0 ? mr : 1);
            const double le = isfinite(lse[s * H + h]) ? fabs(lse[s * H + h] - rl) : INFINITY;
            worst_rel = rel > worst_rel ? rel : worst_rel;
            worst_max = mx > worst_max ? mx : worst_max;
            worst_lse = le > worst_lse ? le : worst_lse;
            worst_dense = dn > worst_dense ? dn : worst_dense;
            if (nonfinite || !(mx < 2e-2 && rel < 1e-2 && le < 1e-2 && dn < 2e-2)) {
                ok = 0;
                if (reported++ < 4)
                    printf("    %s row %d (len %d, %d attended) head %d: max %.3g rel %.3g lse gpu %g ref %g, vs "
                           "dense %.3g, %d not finite\n",
                           what, s, n, m, h, mx, rel, lse[s * H + h], rl, dn, nonfinite);
            }
        }
    printf("  %-4s %s vs f64 reference on the list: max %.2e  rel L2 %.2e  lse %.2e", ok ? "ok" : "FAIL", what,
           worst_max, worst_rel, worst_lse);
    if (dense) printf("  | full budgets vs dense GPU kernel: max %.2e", worst_dense);
    printf("\n");
    free(o);
    return ok;
}

static int tie_cuts_seen; // (row, kv head) pairs whose threshold cut through exact ties, over the ties cases

/* Everything about one case; prints one line per check, details of failures. */
static void check_case(int H, int KH, int D, int ps, const trow_t *rows, int n, int mode, float qmag, int split,
                       uint64_t seed, const char *name) {
    rng = seed;
    tcase_t c;
    case_build(&c, H, KH, D, ps, rows, n, mode, qmag);
    const size_t on = (size_t)n * H * D;
    uint16_t *dense = malloc(2 * on), *out[2] = {malloc(2 * on), malloc(2 * on)};
    uint16_t *one[2] = {malloc(2 * (size_t)H * D), malloc(2 * (size_t)H * D)};
    float *dlse_h = malloc(sizeof(float) * n * H),
          *lse[2] = {malloc(sizeof(float) * n * H), malloc(sizeof(float) * n * H)};
    float *lse1[2] = {malloc(sizeof(float) * H), malloc(sizeof(float) * H)}, *dlse;
    CK_CUDA(cudaMalloc((void **)&dlse, sizeof(float) * n * H));
    run_dense(&c, dense, dlse_h, dlse);
    attn_tidal_plan_t *p = NULL;
    run_tidal(&c, 0, n, split, dlse, out, lse, &p);
    printf("%s: G %d D %d page %d, %d rows\n", name, c.G, D, ps, n);

    // (a) selection
    int maxlen = 1;
    for (int s = 0; s < n; s++) maxlen = rows[s].kv_len > maxlen ? rows[s].kv_len : maxlen;
    int32_t **sel = calloc((size_t)n * KH, sizeof *sel);
    int *cnt = calloc((size_t)n * KH, sizeof *cnt);
    float *mass = malloc(sizeof(float) * maxlen);
    double *sc = malloc(sizeof(double) * (c.G + 1) * (size_t)maxlen);
    selstat_t st = {0};
    int sparse = 0;
    for (int s = 0; s < n; s++) {
        const int keep = keep_of(&c, s), len = rows[s].kv_len;
        ck_assert_int_eq(attn_tidal_count(p, s), keep);
        for (int kh = 0; kh < KH; kh++) {
            int32_t *g = sel[s * KH + kh] = malloc(sizeof(int32_t) * (keep + 1)); // + the newest
            const int gc = cnt[s * KH + kh] = attn_tidal_selected(p, s, kh, g, keep + 1, NULL);
            if (keep == len) { // every position, without a selection pass
                int all = gc == len;
                for (int i = 0; all && i < gc; i++) all = g[i] == i;
                st.pairs++;
                st.exact += all;
                st.bad += !all;
                continue;
            }
            sparse++;
            cpu_mass(&c, s, kh, mass, sc);
            check_selection(&c, s, kh, g, gc, mass, mode == MODE_TIES, &st);
        }
    }
    if (mode == MODE_TIES) tie_cuts_seen += st.tie_cuts;
    printf("  %-4s selection: %d/%d (row, kv head) identical, %d with %ld near-tie swaps, %d wrong (%d sparse, %d cut "
           "exact ties)\n",
           st.bad ? "FAIL" : "ok", st.exact, st.pairs, st.near, (long)st.swaps, st.bad, sparse, st.tie_cuts);

    // (b) outputs over the GPU's lists, on the selection layer and on the next one
    const int ok0 = check_output(&c, 0, sel, cnt, out[0], lse[0], dense, "layer 0");
    const int ok1 = check_output(&c, 1, sel, cnt, out[1], lse[1], NULL, "layer 1 (carried)");

    // (c) batch invariance: each row alone, selection and outputs
    int same = 1;
    int32_t *g1 = malloc(sizeof(int32_t) * (maxlen + 1));
    for (int s = 0; s < n; s++) {
        attn_tidal_plan_t *p1 = NULL;
        run_tidal(&c, s, 1, split, dlse, one, lse1, &p1);
        for (int kh = 0; kh < KH; kh++) {
            const int gc = attn_tidal_selected(p1, 0, kh, g1, maxlen + 1, NULL);
            if (gc != keep_of(&c, s) || memcmp(g1, sel[s * KH + kh], sizeof(int32_t) * gc)) {
                printf("    row %d kv head %d alone selects differently\n", s, kh);
                same = 0;
            }
        }
        for (int l = 0; l < 2; l++)
            if (memcmp(one[l], out[l] + (size_t)s * H * D, 2 * (size_t)H * D) ||
                memcmp(lse1[l], lse[l] + (size_t)s * H, sizeof(float) * H)) {
                printf("    row %d alone differs from its rows in the batch (layer %d)\n", s, l);
                same = 0;
            }
        attn_tidal_plan_destroy(p1);
    }
    printf("  %-4s batch invariance\n", same ? "ok" : "FAIL");
    attn_tidal_plan_destroy(p);
    for (int i = 0; i < n * KH; i++) free(sel[i]);
    free(sel);
    free(cnt);
    free(mass);
    free(sc);
    free(g1);
    free(dense);
    free(dlse_h);
    cudaFree(dlse);
    for (int l = 0; l < 2; l++) {
        free(out[l]);
        free(one[l]);
        free(lse[l]);
        free(lse1[l]);
    }
    case_free(&c);
    ck_assert_msg(st.bad == 0, "%s: GPU selection differs from attn__tidal_pick beyond near ties", name);
    ck_assert_msg(ok0 && ok1, "%s: output off the reference (see above)", name);
    ck_assert_msg(same, "%s: not batch invariant", name);
}

/* ---- cases ------------------------------------------------------------------------------ */
START_TEST(test_small) {
    // one position, shorter than a page, exact multiples, budgets 1, small, kv_len - 1 and >= kv_len
    const trow_t r[] = {{1, 1},    {2, 1},       {63, 5},      {64, 63},    {65, 64},  {130, 1},
                        {700, 64}, {1000, 2048}, {2048, 2047}, {3000, 128}, {129, 129}};
    check_case(8, 2, 128, 64, r, 11, MODE_RANDOM, 1.f, 0, 11, "small random d128 g4 p64");
    check_case(4, 4, 64, 128, r, 11, MODE_HEAVY, 2.f, 64, 12, "small heavy d64 g1 p128 split64");
}
END_TEST

START_TEST(test_heavy) {
    const trow_t r[] = {{5000, 64},   {129, 2},      {3000, 256}, {4096, 4095}, {777, 5},
                        {2500, 3000}, {10000, 1000}, {64, 1},     {3000, 128}};
    check_case(32, 8, 128, 64, r, 9, MODE_HEAVY, 2.f, 0, 21, "heavy d128 g4 p64");
    check_case(32, 8, 128, 128, r, 9, MODE_HEAVY, 3.f, 0, 22, "heavy d128 g4 p128");
    check_case(32, 8, 128, 64, r, 9, MODE_RANDOM, 1.f, 0, 23, "random d128 g4 p64");
}
END_TEST

START_TEST(test_groups) {
    const trow_t r[] = {{3000, 300}, {200, 20}, {1500, 1499}, {4097, 512}, {128, 1}};
    check_case(4, 4, 64, 128, r, 5, MODE_HEAVY, 2.f, 0, 31, "d64 g1 p128");
    check_case(4, 2, 64, 64, r, 5, MODE_RANDOM, 1.f, 0, 32, "d64 g2 p64");
    check_case(6, 2, 128, 64, r, 5, MODE_HEAVY, 2.f, 0, 33, "d128 g3 p64");
    check_case(16, 2, 64, 64, r, 5, MODE_HEAVY, 2.f, 0, 34, "d64 g8 p64");
    check_case(16, 2, 128, 128, r, 5, MODE_RANDOM, 1.f, 0, 35, "d128 g8 p128");
    check_case(16, 1, 128, 64, r, 5, MODE_HEAVY, 2.f, 0, 36, "d128 g16 p64");
    check_case(4, 1, 256, 64, r, 5, MODE_HEAVY, 2.f, 0, 37, "d256 g4 p64 (Gemma 3)");
    check_case(16, 2, 256, 128, r, 5, MODE_RANDOM, 1.f, 0, 38, "d256 g8 p128");
}
END_TEST

START_TEST(test_ties) {
    // keys copied from three templates: the budget cuts through a group of equal masses, the earlier win
    const trow_t r[] = {{3000, 500}, {1280, 700}, {700, 2}, {4000, 2000}};
    tie_cuts_seen = 0;
    check_case(8, 4, 64, 64, r, 4, MODE_TIES, 1.f, 0, 41, "ties d64 g2 p64");
    check_case(8, 2, 128, 128, r, 4, MODE_TIES, 1.f, 0, 42, "ties d128 g4 p128");
    ck_assert_msg(tie_cuts_seen > 0, "the ties cases never cut through a tie");
}
END_TEST

START_TEST(test_long) {
    // ~32K positions with the 2048 budget, next to short rows and a budget of kv_len - 1
    const trow_t r[] = {{32768, 2048}, {32000, 2048}, {100, 2048}, {32767, 32766}, {9000, 9000}};
    check_case(8, 2, 128, 64, r, 5, MODE_HEAVY, 2.f, 0, 51, "long d128 g4 p64");
    const trow_t t[] = {{32768, 2048}, {31000, 16}, {300, 1}};
    check_case(8, 2, 128, 128, t, 3, MODE_RANDOM, 1.f, 0, 52, "long d128 g4 p128");
}
END_TEST

START_TEST(test_full_budget) {
    // every position kept: the dense kernel's result within bf16 tolerance
    const trow_t r[] = {{1, 1}, {700, 700}, {5000, 9000}, {20000, 20000}, {64, 64}, {4096, 5000}};
    check_case(32, 8, 128, 64, r, 6, MODE_RANDOM, 1.f, 0, 61, "full budget d128 g4 p64");
    check_case(8, 2, 64, 128, r, 6, MODE_HEAVY, 2.f, 0, 62, "full budget d64 g4 p128");
    check_case(4, 1, 256, 64, r, 6, MODE_RANDOM, 1.f, 0, 63, "full budget d256 g4 p64");
}
END_TEST

START_TEST(test_bad_input) {
    attn_cuda_shape_t sh = {
        .n_heads = 8, .n_kv_heads = 2, .head_dim = 128, .page_size = 64, .n_pool_pages = 10, .scale = 0.1f};
    attn_tidal_limits_t lim = {.max_rows = 2, .max_pages = 10, .max_budget = 50};
    attn_tidal_plan_t *p = NULL;
    attn_cuda_shape_t bad = sh;
    bad.head_dim = 96;
    ck_assert_int_eq(attn_tidal_plan_create(&bad, &lim, &p), LC_EUNSUPPORTED);
    bad = sh;
    bad.n_heads = 7;
    ck_assert_int_eq(attn_tidal_plan_create(&bad, &lim, &p), LC_EINVAL);
    attn_tidal_limits_t bl = lim;
    bl.split_keys = 100;
    ck_assert_int_eq(attn_tidal_plan_create(&sh, &bl, &p), LC_EINVAL);
    bl = lim;
    bl.max_budget = 0;
    ck_assert_int_eq(attn_tidal_plan_create(&sh, &bl, &p), LC_EINVAL);
    ck_assert_int_eq(attn_tidal_plan_create(&sh, &lim, &p), 0);

    int32_t ki[3] = {0, 2, 4}, idx[4] = {3, 7, 1, 2}, len[2] = {100, 65}, bud[2] = {10, 65}, pos[128];
    attn_cuda_batch_t b = {.n_seqs = 2, .kv_indptr = ki, .kv_indices = idx, .kv_len = len};
    size_t ws = 0;
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), 0);
    ck_assert_int_eq(attn_tidal_count(p, 0), 10);
    ck_assert_int_eq(attn_tidal_count(p, 1), 65); // budget >= kv_len: every position
    ck_assert_int_eq(attn_tidal_count(p, 2), -1);
    attn_tidal_attend_args_t aa = {0};
    attn_tidal_select_args_t sa = {0};
    ck_assert_int_eq(attn_tidal_selected(p, 0, 0, pos, 128, NULL), LC_EINVAL); // no selection yet
    idx[1] = 10;                                                               // past the pool
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    idx[1] = 7;
    len[0] = 129; // more positions than two pages hold
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    len[0] = 100;
    bud[1] = 0;
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    bud[1] = 65;
    bud[0] = 60; // keeps fewer than all, above max_budget
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_ERANGE);
    bud[0] = 100; // every position: no limit
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), 0);
    bud[0] = 10;
    b.n_seqs = 3;
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_ERANGE);
    b.n_seqs = 2;
    int32_t qi[3] = {0, 1, 2};
    b.q_indptr = qi; // prefill batches are not decode steps
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), LC_EINVAL);
    b.q_indptr = NULL;
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), 0);
    ck_assert_int_eq(attn_tidal_select(p, &sa, NULL), LC_EINVAL); // missing pointers

    // a real run on zeros: the selection persists over layers, a new plan forgets it
    void *dk, *dq, *dout, *dws = NULL;
    float *dlse;
    const size_t pool = (size_t)10 * 2 * 64 * 128;
    CK_CUDA(cudaMalloc(&dk, 2 * pool));
    CK_CUDA(cudaMalloc(&dq, 2 * 2 * 8 * 128));
    CK_CUDA(cudaMalloc(&dout, 2 * 2 * 8 * 128));
    CK_CUDA(cudaMalloc((void **)&dlse, sizeof(float) * 2 * 8));
    CK_CUDA(cudaMalloc(&dws, ws + 16));
    CK_CUDA(cudaMemset(dk, 0, 2 * pool));
    CK_CUDA(cudaMemset(dq, 0, 2 * 2 * 8 * 128));
    CK_CUDA(cudaMemset(dlse, 0, sizeof(float) * 2 * 8));
    aa = (attn_tidal_attend_args_t){.q = dq, .out = dout, .k = dk, .v = dk, .workspace = dws, .workspace_bytes = ws};
    ck_assert_int_eq(attn_tidal_attend(p, &aa, NULL), LC_EINVAL); // before any selection
    sa = (attn_tidal_select_args_t){.q = dq, .k = dk, .lse = dlse, .workspace = dws, .workspace_bytes = ws};
    sa.workspace_bytes = ws - 1;
    ck_assert_int_eq(attn_tidal_select(p, &sa, NULL), LC_EINVAL); // workspace too small
    sa.workspace_bytes = ws;
    sa.workspace = (char *)dws + 4;
    ck_assert_int_eq(attn_tidal_select(p, &sa, NULL), LC_EINVAL); // misaligned
    sa.workspace = dws;
    ck_assert_int_eq(attn_tidal_select(p, &sa, NULL), 0);
    ck_assert_int_eq(attn_tidal_attend(p, &aa, NULL), 0);
    ck_assert_int_eq(attn_tidal_attend(p, &aa, NULL), 0); // a second layer, same selection
    ck_assert_int_eq(attn_tidal_selected(p, 0, 0, pos, 9, NULL), LC_ERANGE);
    ck_assert_int_eq(attn_tidal_selected(p, 0, 0, pos, 128, NULL), 10); // equal masses: the first ten
    for (int i = 0; i < 10; i++) ck_assert_int_eq(pos[i], i);
    ck_assert_int_eq(attn_tidal_selected(p, 0, 2, pos, 128, NULL), LC_EINVAL);
    CK_CUDA(cudaDeviceSynchronize());
    ck_assert_int_eq(attn_tidal_plan(p, &b, bud, NULL, &ws), 0);
    ck_assert_int_eq(attn_tidal_attend(p, &aa, NULL), LC_EINVAL); // the new step has no selection
    cudaFree(dk);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    attn_tidal_plan_destroy(p);
}
END_TEST

/* ---- benchmark (TIDAL_BENCH=1) ------------------------------------------------------------ */
enum { B_ITERS = 20 };
// Times ITERS calls of what (0 dense, 1 select, 2 attend) after three warm-ups; the median in ms, < 0 on error.
static float time_calls(int what, attn_cuda_plan_t *dp, const attn_cuda_args_t *da, attn_tidal_plan_t *tp,
                        const attn_tidal_select_args_t *sa, const attn_tidal_attend_args_t *aa, cudaEvent_t *ev) {
    for (int i = 0; i < 3 + B_ITERS; i++) {
        if (i >= 3) cudaEventRecord(ev[2 * (i - 3)], NULL);
        const int rc = what == 0   ? attn_cuda_run(dp, da, NULL)
                       : what == 1 ? attn_tidal_select(tp, sa, NULL)
                                   : attn_tidal_attend(tp, aa, NULL);
        if (rc) {
            printf("bench: call %d failed: %s\n", what, lc_strerror(rc));
            return -1.f;
        }
        if (i >= 3) cudaEventRecord(ev[2 * (i - 3) + 1], NULL);
    }
    if (cudaDeviceSynchronize() != cudaSuccess) {
        printf("bench: device error %s\n", cudaGetErrorString(cudaGetLastError()));
        return -1.f;
    }
    return gpu_median_ms(ev, B_ITERS);
}

static int bench(void) {
    enum { H = 32, KH = 8, D = 128, PS = 64, BUDGET = 2048, MAXB = 64 };
    const int ctxs[2] = {32768, 131072}, batches[4] = {1, 8, 32, 64};
    const int64_t pages_max = (int64_t)MAXB * (131072 / PS);
    const attn_cuda_shape_t sh = {.n_heads = H,
                                  .n_kv_heads = KH,
                                  .head_dim = D,
                                  .page_size = PS,
                                  .n_pool_pages = pages_max,
                                  .scale = 0.08838835f};
    const size_t pool_bytes = (size_t)pages_max * KH * PS * D * 2;
    void *dk, *dv, *dq, *dout, *dws = NULL;
    float *dlse, *dlse2;
    if (cudaMalloc(&dk, pool_bytes) || cudaMalloc(&dv, pool_bytes) || cudaMalloc(&dq, (size_t)MAXB * H * D * 2) ||
        cudaMalloc(&dout, (size_t)MAXB * H * D * 2) || cudaMalloc((void **)&dlse, (size_t)MAXB * H * 4) ||
        cudaMalloc((void **)&dlse2, (size_t)MAXB * H * 4)) {
        printf("bench: out of device memory\n");
        return 1;
    }
    // random bf16 in [-1, 1): one 64 MiB block from the host, replicated on the device
    rng = 7;
    gpu_bench_fill(dk, dv, pool_bytes, dq, (size_t)MAXB * H * D * 2, frand);
    int32_t *pages = malloc(sizeof(int32_t) * pages_max);
    for (int64_t i = 0; i < pages_max; i++) pages[i] = (int32_t)i;
    const char *se = getenv("TIDAL_SPLIT");
    attn_cuda_limits_t dlim = {.max_seqs = MAXB, .max_q_rows = 1, .max_pages = pages_max};
    attn_tidal_limits_t tlim = {
        .max_rows = MAXB, .max_pages = pages_max, .max_budget = BUDGET, .split_keys = se ? atoi(se) : 0};
    attn_cuda_plan_t *dp = NULL;
    attn_tidal_plan_t *tp = NULL;
    BENCH_CHECK(attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &dlim, &dp));
    BENCH_CHECK(attn_tidal_plan_create(&sh, &tlim, &tp));
    cudaEvent_t ev[2 * B_ITERS];
    for (int i = 0; i < 2 * B_ITERS; i++) cudaEventCreate(&ev[i]);
    size_t ws_cap = 0;
    printf("\nTidalDecode decode, one layer: %d q / %d kv heads, d %d, pages of %d, budget %d positions, median of "
           "%d (attention chunk %s)\n\n",
           H, KH, D, PS, BUDGET, B_ITERS, se ? se : "default");
    printf("| context | batch | dense ms | select ms | select / dense | sparse attention ms | attention speed-up | "
           "attention KV TB/s | dense KV TB/s |\n|---|---|---|---|---|---|---|---|---|\n");
    for (int ci = 0; ci < 2; ci++)
        for (int bi = 0; bi < 4; bi++) {
            const int ctx = ctxs[ci], nb = batches[bi], np = ctx / PS;
            int32_t kvp[MAXB + 1], kl[MAXB], bud[MAXB];
            kvp[0] = 0;
            for (int s = 0; s < nb; s++) {
                kvp[s + 1] = kvp[s] + np;
                kl[s] = ctx;
                bud[s] = BUDGET;
            }
            attn_cuda_batch_t b = {.n_seqs = nb, .kv_indptr = kvp, .kv_indices = pages, .kv_len = kl};
            size_t wd = 0, wt = 0;
            BENCH_CHECK(attn_cuda_plan(dp, &b, NULL, &wd));
            BENCH_CHECK(attn_tidal_plan(tp, &b, bud, NULL, &wt));
            if (gpu_ensure_ws(&dws, &ws_cap, wd > wt ? wd : wt)) return 1;
            // the dense pass writes the LSE the selection reads (dlse: kept apart from the timed runs')
            attn_cuda_args_t da = {
                .q = dq, .out = dout, .lse = dlse, .k = dk, .v = dv, .workspace = dws, .workspace_bytes = wd};
            BENCH_CHECK(attn_cuda_run(dp, &da, NULL));
            da.lse = dlse2;
            attn_tidal_select_args_t sa = {.q = dq, .k = dk, .lse = dlse, .workspace = dws, .workspace_bytes = wt};
            attn_tidal_attend_args_t aa = {
                .q = dq, .out = dout, .lse = dlse2, .k = dk, .v = dv, .workspace = dws, .workspace_bytes = wt};
            const float td = time_calls(0, dp, &da, tp, &sa, &aa, ev);
            const float ts = time_calls(1, dp, &da, tp, &sa, &aa, ev);
            const float ta = time_calls(2, dp, &da, tp, &sa, &aa, ev);
            if (td < 0 || ts < 0 || ta < 0) return 1;
            const double dense_bytes = (double)nb * ctx * KH * D * 2 * 2;
            const double att_bytes = (double)nb * (BUDGET + 1) * KH * D * 2 * 2;
            printf("| %dK | %d | %.3f | %.3f | %.2f | %.3f | %.1fx | %.2f | %.2f |\n", ctx / 1024, nb, td, ts, ts / td,
                   ta, td / ta, att_bytes / (ta * 1e-3) / 1e12, dense_bytes / (td * 1e-3) / 1e12);
        }
    attn_tidal_plan_destroy(tp);
    attn_cuda_plan_destroy(dp);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dlse2);
    cudaFree(dws);
    free(pages);
    return 0;
}

static Suite *tidal_suite(void) {
    Suite *s = suite_create("tidal_cuda");
    TCase *small = tcase_create("small");
    tcase_set_timeout(small, 300);
    tcase_add_test(small, test_bad_input);
    tcase_add_test(small, test_small);
    suite_add_tcase(s, small);
    TCase *full = tcase_create("full");
    tcase_set_timeout(full, 900);
    tcase_add_test(full, test_heavy);
    tcase_add_test(full, test_groups);
    tcase_add_test(full, test_ties);
    tcase_add_test(full, test_full_budget);
    tcase_add_test(full, test_long);
    suite_add_tcase(s, full);
    return s;
}

int main(void) {
    if (!gpu_have_device()) return 77;
    const char *b = getenv("TIDAL_BENCH");
    if (b && atoi(b) == 1) return bench();
    return gpu_run_suite(tidal_suite());
}
