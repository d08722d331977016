/* Part of the check_anchor_cuda suite: the two kernels AnchorAttention
 * builds on, each against a double-precision host reference on bf16 inputs:
 *   - the token-gather attention (attn_cuda_gather, gather.cu) on random
 *     lists of lengths 0, 1, 63, 64, 65, 1000 and 5000, head_dim 64 / 128,
 *     pages of 64 / 128, one list per group of rows and one for all rows;
 *     rows past the call's are checked untouched;
 *   - the dense prefill's rowmax output (prefill.cu) on a dense and a
 *     block-sparse sequence of one batch.
 * A failure names the worst (row, head, dim), the GPU's and the reference
 * value. */
#include <check.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/gather_cuda.h"
#include "check_anchor_kern.h"
#include "common/status.h"
#include "gpu_testutil.h"

/* One sequence's keys and values in a paged pool (pages shuffled), with
 * f32 copies by position for the references. */
typedef struct {
    attn_cuda_shape_t sh;
    int N, n_pages;
    int32_t *pages;      // (n_pages) pool page of the sequence's page i
    float *kf, *vf;      // (KH, N, D) bf16-rounded
    uint16_t *kb, *vb;   // pool layout
    void *dk, *dv, *dpg; // device pool and page table
} kpool_t;

static void kpool_make(kpool_t *p, int H, int KH, int D, int ps, int N) {
    memset(p, 0, sizeof *p);
    p->sh =
        (attn_cuda_shape_t){.n_heads = H, .n_kv_heads = KH, .head_dim = D, .page_size = ps, .scale = 1.f / sqrtf(D)};
    p->N = N;
    p->n_pages = (N + ps - 1) / ps;
    const int pool = p->n_pages + 3; // unused pages too
    p->sh.n_pool_pages = pool;
    int32_t *perm = malloc(sizeof(int32_t) * pool);
    for (int i = 0; i < pool; i++) perm[i] = i;
    for (int i = pool - 1; i > 0; i--) {
        const int j = irand(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    p->pages = malloc(sizeof(int32_t) * p->n_pages);
    memcpy(p->pages, perm, sizeof(int32_t) * p->n_pages);
    free(perm);
    const size_t pe = (size_t)pool * KH * ps * D;
    p->kb = malloc(sizeof(uint16_t) * pe);
    p->vb = malloc(sizeof(uint16_t) * pe);
    for (size_t i = 0; i < pe; i++) { // unused slots hold large values: a gather of a wrong row shows
        p->kb[i] = f2bf(40.f);
        p->vb[i] = f2bf(-40.f);
    }
    p->kf = malloc(sizeof(float) * KH * N * D);
    p->vf = malloc(sizeof(float) * KH * N * D);
    for (int kh = 0; kh < KH; kh++)
        for (int j = 0; j < N; j++)
            for (int e = 0; e < D; e++) {
                const size_t gi = (((size_t)p->pages[j / ps] * KH + kh) * ps + j % ps) * D + e;
                const size_t fi = ((size_t)kh * N + j) * D + e;
                p->kb[gi] = f2bf(1.5f * frand());
                p->vb[gi] = f2bf(frand());
                p->kf[fi] = bf2f(p->kb[gi]);
                p->vf[fi] = bf2f(p->vb[gi]);
            }
    CK_CUDA(cudaMalloc(&p->dk, sizeof(uint16_t) * pe));
    CK_CUDA(cudaMalloc(&p->dv, sizeof(uint16_t) * pe));
    CK_CUDA(cudaMalloc(&p->dpg, sizeof(int32_t) * p->n_pages));
    CK_CUDA(cudaMemcpy(p->dk, p->kb, sizeof(uint16_t) * pe, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(p->dv, p->vb, sizeof(uint16_t) * pe, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(p->dpg, p->pages, sizeof(int32_t) * p->n_pages, cudaMemcpyHostToDevice));
}

static void kpool_free(kpool_t *p) {
    cudaFree(p->dk);
    cudaFree(p->dv);
    cudaFree(p->dpg);
    free(p->pages);
    free(p->kf);
    free(p->vf);
    free(p->kb);
    free(p->vb);
}

/* Random queries (rows, H, D): bf16 on the device, f32 copies on the host. */
static void *make_q(const kpool_t *p, int rows, float **qf) {
    const size_t n = (size_t)rows * p->sh.n_heads * p->sh.head_dim;
    uint16_t *qb = malloc(sizeof(uint16_t) * n);
    *qf = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        qb[i] = f2bf(1.5f * frand());
        (*qf)[i] = bf2f(qb[i]);
    }
    void *dq = NULL;
    CK_CUDA(cudaMalloc(&dq, sizeof(uint16_t) * n));
    CK_CUDA(cudaMemcpy(dq, qb, sizeof(uint16_t) * n, cudaMemcpyHostToDevice));
    free(qb);
    return dq;
}

/* Softmax attention of query qr (scaled by scale) over keys js[0..n) of
 * kv head kh, in double: out (D), *lse, *mx the largest scaled score. */
static void ref_attend(const kpool_t *p, const float *qr, int kh, const int32_t *js, int n, double *out, double *lse,
                       double *mx) {
    const int D = p->sh.head_dim;
    double m = -INFINITY, l = 0;
    double *s = malloc(sizeof(double) * (n ? n : 1));
    for (int i = 0; i < n; i++) {
        const float *kr = p->kf + ((size_t)kh * p->N + js[i]) * D;
        double d = 0;
        for (int e = 0; e < D; e++) d += (double)qr[e] * kr[e];
        s[i] = d * p->sh.scale;
        m = s[i] > m ? s[i] : m;
    }
    for (int e = 0; e < D; e++) out[e] = 0;
    for (int i = 0; i < n; i++) {
        const double w = exp(s[i] - m);
        const float *vr = p->vf + ((size_t)kh * p->N + js[i]) * D;
        l += w;
        for (int e = 0; e < D; e++) out[e] += w * vr[e];
    }
    for (int e = 0; n && e < D; e++) out[e] /= l;
    *lse = n ? m + log(l) : -INFINITY;
    *mx = m;
    free(s);
}

/* A random ascending subset of [0, N) of size n (selection sampling). */
static void rand_list(int32_t *out, int n, int N) {
    int need = n;
    for (int j = 0; j < N && need > 0; j++)
        if (irand(N - j) < need) out[n - need--] = j;
}

/* One gather call: n_rows rows at pos0, lists of group positions (0: one
 * list), list (h, gi) of length lens[(h * n_lists + gi) % n_lens]; n_split
 * > 1: the lists in parts (at least 64 entries each), merged here by LSE. */
static void gather_call(const kpool_t *p, int n_rows, int pos0, int group, const int *lens, int n_lens, int n_split,
                        const char *what) {
    const int H = p->sh.n_heads, D = p->sh.head_dim, G = H / p->sh.n_kv_heads, pad = 16;
    const int g_first = group ? pos0 / group : 0;
    const int n_lists = group ? (pos0 + n_rows - 1) / group - g_first + 1 : 1;
    int max_len = 1;
    for (int i = 0; i < n_lens; i++) max_len = lens[i] > max_len ? lens[i] : max_len;
    int32_t *lists = calloc((size_t)H * n_lists * max_len, sizeof(int32_t));
    int32_t *cnt = malloc(sizeof(int32_t) * H * n_lists);
    for (int i = 0; i < H * n_lists; i++) {
        cnt[i] = lens[i % n_lens];
        ck_assert_int_le(cnt[i], p->N);
        rand_list(lists + (size_t)i * max_len, cnt[i], p->N);
    }
    float *qf;
    void *dq = make_q(p, n_rows, &qf);
    const int parts = n_split > 1 ? n_split : 1;
    const size_t on = (size_t)(parts * n_rows + pad) * H * D, ln = (size_t)(parts * n_rows + pad) * H;
    float *out = malloc(sizeof(float) * on), *lse = malloc(sizeof(float) * ln);
    for (size_t i = 0; i < on; i++) out[i] = 12345.f;
    for (size_t i = 0; i < ln; i++) lse[i] = 12345.f;
    void *dl, *dc, *dout, *dlse;
    CK_CUDA(cudaMalloc(&dl, sizeof(int32_t) * H * n_lists * max_len));
    CK_CUDA(cudaMalloc(&dc, sizeof(int32_t) * H * n_lists));
    CK_CUDA(cudaMalloc(&dout, sizeof(float) * on));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * ln));
    CK_CUDA(cudaMemcpy(dl, lists, sizeof(int32_t) * H * n_lists * max_len, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(dc, cnt, sizeof(int32_t) * H * n_lists, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(dout, out, sizeof(float) * on, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(dlse, lse, sizeof(float) * ln, cudaMemcpyHostToDevice));
    const attn_cuda_gather_args_t a = {.q = dq,
                                       .k = p->dk,
                                       .v = p->dv,
                                       .pages = p->dpg,
                                       .list = dl,
                                       .count = dc,
                                       .list_stride = max_len,
                                       .n_lists = n_lists,
                                       .n_rows = n_rows,
                                       .pos0 = pos0,
                                       .group = group,
                                       .g_first = g_first,
                                       .out = dout,
                                       .lse = dlse,
                                       .n_split = n_split,
                                       .split_len = 64};
    ck_assert_int_eq(attn_cuda_gather(&p->sh, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, sizeof(float) * on, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * ln, cudaMemcpyDeviceToHost));
    int touched = 0;
    for (size_t i = (size_t)parts * n_rows * H * D; i < on; i++) touched += out[i] != 12345.f;
    for (size_t i = (size_t)parts * n_rows * H; i < ln; i++) touched += lse[i] != 12345.f;
    for (int r = 0; parts > 1 && r < n_rows; r++) // merge the parts into part 0's place, in part order
        for (int h = 0; h < H; h++) {
            const size_t ri = (size_t)r * H + h;
            double M = -INFINITY, sum = 0, acc[128] = {0};
            for (int z = 0; z < parts; z++) M = fmax(M, lse[(size_t)z * n_rows * H + ri]);
            if (M == -INFINITY) continue; // every part empty: part 0 holds 0, -inf
            for (int z = 0; z < parts; z++) {
                const double wz = exp(lse[(size_t)z * n_rows * H + ri] - M);
                sum += wz;
                for (int e = 0; e < D; e++) acc[e] += wz * out[((size_t)z * n_rows * H + ri) * D + e];
            }
            for (int e = 0; e < D; e++) out[ri * D + e] = (float)(acc[e] / sum);
            lse[ri] = (float)(M + log(sum));
        }

    double worst = 0, worst_lse = 0;
    int wr = -1, wh = -1, we = -1;
    double ref_o[128], ref_l, ref_m;
    float got_v = 0;
    double ref_v = 0;
    for (int r = 0; r < n_rows; r++)
        for (int h = 0; h < H; h++) {
            const int gi = group ? (pos0 + r) / group - g_first : 0, li = h * n_lists + gi;
            ref_attend(p, qf + ((size_t)r * H + h) * D, h / G, lists + (size_t)li * max_len, cnt[li], ref_o, &ref_l,
                       &ref_m);
            const float gl = lse[(size_t)r * H + h];
            const double dl_ = cnt[li] ? fabs(gl - ref_l) : (gl == -INFINITY ? 0 : INFINITY);
            if (!(dl_ <= worst_lse)) worst_lse = isnan(dl_) ? INFINITY : dl_;
            for (int e = 0; e < D; e++) {
                const float g = out[((size_t)r * H + h) * D + e];
                const double d = isfinite(g) ? fabs(g - ref_o[e]) : INFINITY;
                if (d > worst || (wr < 0 && d >= worst)) {
                    worst = d;
                    wr = r;
                    wh = h;
                    we = e;
                    got_v = g;
                    ref_v = ref_o[e];
                }
            }
        }
    printf("gather %s (d %d, pages %d): max |out - ref| %.2e (row %d head %d dim %d: %g vs %g), max |lse - ref| %.2e\n",
           what, D, p->sh.page_size, worst, wr, wh, we, got_v, ref_v, worst_lse);
    ck_assert_msg(worst <= 4e-3, "gather %s d %d pages %d: out differs by %g at row %d head %d dim %d (%g vs %g)", what,
                  D, p->sh.page_size, worst, wr, wh, we, got_v, ref_v);
    ck_assert_msg(worst_lse <= 2e-3, "gather %s d %d pages %d: lse differs by %g", what, D, p->sh.page_size, worst_lse);
    ck_assert_msg(touched == 0, "gather %s: %d values written past the call's rows", what, touched);
    cudaFree(dq);
    cudaFree(dl);
    cudaFree(dc);
    cudaFree(dout);
    cudaFree(dlse);
    free(qf);
    free(out);
    free(lse);
    free(lists);
    free(cnt);
}

START_TEST(test_gather) {
    static const int lens[] = {0, 1, 63, 64, 65, 1000, 5000};
    static const int lens_one[] = {64, 65, 1000, 5000, 0, 1, 63};
    for (int cfg = 0; cfg < 4; cfg++) {
        const int D = cfg & 1 ? 128 : 64, ps = cfg & 2 ? 128 : 64;
        kpool_t p;
        rng = 500 + cfg;
        kpool_make(&p, 4, 2, D, ps, 6000);
        // three groups (and tiles) of 128 positions, rows from an unaligned position: every length on some
        // (head, group)
        gather_call(&p, 300, 5037, 128, lens, 7, 1, "groups");
        // one list per head for all rows (the own-key pass's form), two tiles
        gather_call(&p, 200, 130, 0, lens_one, 7, 1, "one list");
        // the same in parts (as the own-key pass runs): parts of 64 entries, of more, and empty ones
        gather_call(&p, 200, 130, 0, lens_one, 7, 16, "one list in 16 parts");
        gather_call(&p, 300, 5037, 128, lens, 7, 3, "groups in 3 parts");
        kpool_free(&p);
    }
}
END_TEST

/* The dense prefill's rowmax and LSE against the host on one batch: a dense
 * sequence and a block-sparse one (random mask bits) on an unaligned chunk. */
START_TEST(test_rowmax) {
    rng = 77;
    const int H = 4, KH = 2, D = 128, ps = 64;
    kpool_t p[2];
    const int lens[2] = {1000, 2000}, nqs[2] = {1000, 700};
    for (int s = 0; s < 2; s++) kpool_make(&p[s], H, KH, D, ps, lens[s]);
    // one pool for the batch: sequence 1's pages after sequence 0's
    const attn_cuda_shape_t sh0 = p[0].sh;
    const int64_t pool0 = sh0.n_pool_pages, pool1 = p[1].sh.n_pool_pages;
    const size_t pe = (size_t)KH * ps * D;
    void *dk, *dv;
    CK_CUDA(cudaMalloc(&dk, 2 * pe * (pool0 + pool1)));
    CK_CUDA(cudaMalloc(&dv, 2 * pe * (pool0 + pool1)));
    CK_CUDA(cudaMemcpy(dk, p[0].dk, 2 * pe * pool0, cudaMemcpyDeviceToDevice));
    CK_CUDA(cudaMemcpy(dv, p[0].dv, 2 * pe * pool0, cudaMemcpyDeviceToDevice));
    CK_CUDA(cudaMemcpy((uint16_t *)dk + pe * pool0, p[1].dk, 2 * pe * pool1, cudaMemcpyDeviceToDevice));
    CK_CUDA(cudaMemcpy((uint16_t *)dv + pe * pool0, p[1].dv, 2 * pe * pool1, cudaMemcpyDeviceToDevice));
    attn_cuda_shape_t sh = sh0;
    sh.n_pool_pages = pool0 + pool1;
    const int np0 = p[0].n_pages, np1 = p[1].n_pages;
    int32_t *idx = malloc(sizeof(int32_t) * (np0 + np1));
    for (int i = 0; i < np0; i++) idx[i] = p[0].pages[i];
    for (int i = 0; i < np1; i++) idx[np0 + i] = (int32_t)pool0 + p[1].pages[i];
    const int32_t qi[3] = {0, nqs[0], nqs[0] + nqs[1]}, ki[3] = {0, np0, np0 + np1}, kl[2] = {lens[0], lens[1]};
    const size_t words = attn_cuda_mask_words(nqs[1], lens[1], H);
    uint32_t *mask = malloc(sizeof(uint32_t) * words);
    for (size_t i = 0; i < words; i++) mask[i] = (uint32_t)irand(1 << 16) | (uint32_t)irand(1 << 16) << 16;
    const int32_t mo[2] = {-1, 0};
    const attn_cuda_batch_t b = {2, qi, ki, idx, kl, mo, NULL, 0};
    const int rows = qi[2];
    float *qf;
    void *dq = make_q(&p[0], rows, &qf);
    void *dout, *dlse, *dmax, *dmask;
    CK_CUDA(cudaMalloc(&dout, 2 * (size_t)rows * H * D));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * rows * H));
    CK_CUDA(cudaMalloc(&dmax, sizeof(float) * rows * H));
    CK_CUDA(cudaMalloc(&dmask, sizeof(uint32_t) * words));
    CK_CUDA(cudaMemcpy(dmask, mask, sizeof(uint32_t) * words, cudaMemcpyHostToDevice));
    const attn_cuda_limits_t lim = {.max_seqs = 2, .max_q_rows = rows, .max_pages = np0 + np1};
    attn_cuda_plan_t *pl = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &pl), 0);
    size_t ws = 0;
    ck_assert_int_eq(attn_cuda_plan(pl, &b, NULL, &ws), 0);
    const attn_cuda_args_t a = {
        .q = dq, .out = dout, .lse = dlse, .k = dk, .v = dv, .block_mask = dmask, .rowmax = dmax};
    ck_assert_int_eq(attn_cuda_run(pl, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    float *gl = malloc(sizeof(float) * rows * H), *gm = malloc(sizeof(float) * rows * H);
    CK_CUDA(cudaMemcpy(gl, dlse, sizeof(float) * rows * H, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(gm, dmax, sizeof(float) * rows * H, cudaMemcpyDeviceToHost));

    int32_t *js = malloc(sizeof(int32_t) * lens[1]);
    double ref_o[128], ref_l, ref_m, worst_m = 0, worst_l = 0;
    int wr = -1, wh = -1;
    float wg = 0;
    double wref = 0;
    for (int s = 0; s < 2; s++) {
        const int N = lens[s], q_pos0 = N - nqs[s], qb0 = q_pos0 / 128, n_kb = (N - 1) / 128 + 1;
        const int wpr = (n_kb + 31) / 32;
        for (int r = 0; r < nqs[s]; r++)
            for (int h = 0; h < H; h++) {
                const int pos = q_pos0 + r, qb = pos / 128;
                int n = 0;
                for (int j = 0; j <= pos; j++) {
                    const int kb = j / 128;
                    const uint32_t *row = mask + ((size_t)h * (n_kb - qb0) + (qb - qb0)) * wpr;
                    if (s == 0 || kb == qb || (row[kb / 32] >> (kb % 32) & 1u)) js[n++] = j;
                }
                const size_t gr = (size_t)(qi[s] + r) * H + h;
                ref_attend(&p[s], qf + gr * D, h / (H / KH), js, n, ref_o, &ref_l, &ref_m);
                const double dm = fabs(gm[gr] - ref_m), dl_ = fabs(gl[gr] - ref_l);
                if (!(dm <= worst_m)) {
                    worst_m = isnan(dm) ? INFINITY : dm;
                    wr = qi[s] + r;
                    wh = h;
                    wg = gm[gr];
                    wref = ref_m;
                }
                if (!(dl_ <= worst_l)) worst_l = isnan(dl_) ? INFINITY : dl_;
            }
    }
    printf("rowmax: max |rowmax - ref| %.2e (row %d head %d: %g vs %g), max |lse - ref| %.2e\n", worst_m, wr, wh, wg,
           wref, worst_l);
    ck_assert_msg(worst_m <= 1e-3, "rowmax differs by %g at row %d head %d (%g vs %g)", worst_m, wr, wh, wg, wref);
    ck_assert_msg(worst_l <= 5e-3, "lse differs by %g", worst_l);
    attn_cuda_plan_destroy(pl);
    free(js);
    free(gl);
    free(gm);
    free(qf);
    free(mask);
    free(idx);
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dmax);
    cudaFree(dmask);
    cudaFree(dk);
    cudaFree(dv);
    for (int s = 0; s < 2; s++) kpool_free(&p[s]);
}
END_TEST

TCase *anchor_kern_tcase(void) {
    TCase *tc = tcase_create("kernels");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_gather);
    tcase_add_test(tc, test_rowmax);
    return tc;
}
