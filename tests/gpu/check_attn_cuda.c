/* Check suite for src/attn/cuda on a GPU: every kernel (and every ablation
 * variant) against the CPU dense kernels of src/attn on the same bf16-rounded
 * inputs, over batches with pages shuffled in the pool, unused pages and the
 * unused slots of last pages poisoned with NaN, odd lengths, one-token chunks,
 * chunks on cached prefixes, long and short sequences together, head_dim 64
 * and 128, GQA groups 1 to 16, page sizes 64 and 128.
 *
 * Tolerance (bf16 inputs, bf16 P and outputs, f32 accumulation): per
 * (sequence, head) relative L2 error of the output < 1e-2, largest element
 * error < 3e-2 of that slice's largest |ref|, |LSE error| < 1e-2. Outputs and
 * LSE are poisoned with NaN before each run and must come back finite.
 * Batch invariance: each sequence run alone must match its rows of the batch
 * bitwise.
 *
 * Block-sparse prefill (attn_cuda.h): random block masks, some sequences
 * dense in the same batch, against a double-precision attention over exactly
 * the selected blocks (and the diagonal); a full mask equals the dense kernel
 * bitwise.
 *
 * Explicit query positions (q_pos0): rows past the keys, straddling them,
 * inside them, more rows than keys, against a double-precision reference;
 * q_pos0 = kv_len - nq equals the default bitwise.
 *
 * Runs where a GPU is; exits 77 (SKIP) where none is. Not part of make check:
 * tests/gpu/run_attn.sh runs it on the GPU machine, one case at a time
 * (CK_RUN_CASE=errors, prefill_small, decode_small, prefill, decode; the
 * small ones also under compute-sanitizer). */
#include <check.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/cuda/attn_cuda.h"
#include "common/status.h"
#include "gpu_delay.h"
#include "gpu_fixture.h"
#include "gpu_testutil.h"


/* ---- a batch over one shuffled, poisoned pool ----------------------------------- */
typedef struct {
    int kv_len, nq; // nq: prefill query rows (decode: 1)
} seq_t;

typedef struct {
    attn_cuda_shape_t sh;
    int decode, n;
    seq_t seq[16];
    int32_t q_indptr[17], kv_indptr[17], kv_len[16];
    int32_t *kv_indices;
    int64_t rows;         // query rows
    float *kf, *vf;       // f32 pool (the CPU's copy, NaN where poisoned)
    uint16_t *kb, *vb;    // bf16 pool
    float *qf;            // (rows, H, D) bf16-rounded
    uint16_t *qb;         //
    void *dk, *dv, *dq;   // device copies
    float *ref, *ref_lse; // (rows, H, D), (rows, H)
    // block-sparse prefill: masks (attn_cuda.h), NULL when every sequence is dense
    uint32_t *mask;
    int32_t mask_off[16];
    void *dmask;
    int mask_only; // attn_cuda_args_t's: the masked sequences' set bits alone, no diagonal block
    // explicit query positions (attn_cuda.h q_pos0), used when has_qpos
    int has_qpos;
    int32_t q_pos0[16];
    int window; // attn_cuda_batch_t's sliding window (0: none)
} batch_t;

/* Reference for sequence s, row by row in double: its rows at positions
 * q_pos0[s] + r (has_qpos) or kv_len - nq + r, each seeing keys 0 (with a
 * window, position - window + 1) .. min(position, kv_len - 1); a block-sparse sequence (mask_off >= 0) only
 * the keys of its selected blocks and of its diagonal block (not that one
 * with mask_only; a row left with no key: out 0, lse -inf). */
static void seq_ref(batch_t *b, int s) {
    const int H = b->sh.n_heads, D = b->sh.head_dim, G = H / b->sh.n_kv_heads, ps = b->sh.page_size;
    const int len = b->kv_len[s], nq = b->seq[s].nq, pos0 = b->has_qpos ? b->q_pos0[s] : len - nq;
    const int sparse = b->mask && b->mask_off[s] >= 0, qb0 = (len - nq) / 128, n_kb = (len - 1) / 128 + 1;
    const int words = (n_kb + 31) / 32;
    const size_t page_elems = (size_t)b->sh.n_kv_heads * ps * D;
    double *w = malloc(sizeof(double) * len), *acc = malloc(sizeof(double) * D);
    for (int r = 0; r < nq; r++) {
        const int pos = pos0 + r, last = pos < len - 1 ? pos : len - 1, qb = pos / 128;
        const int first = b->window > 0 && pos - b->window + 1 > 0 ? pos - b->window + 1 : 0;
        for (int h = 0; h < H; h++) {
            const uint32_t *row =
                sparse ? b->mask + b->mask_off[s] + ((size_t)h * (n_kb - qb0) + qb - qb0) * words : NULL;
            const float *q = b->qf + ((size_t)(b->q_indptr[s] + r) * H + h) * D;
            double mx = -INFINITY;
            for (int j = 0; j <= last; j++) {
                const int kb = j / 128;
                w[j] = NAN;
                if (j < first || (row && (kb == qb ? b->mask_only : !(row[kb / 32] >> (kb % 32) & 1u)))) continue;
                const float *k =
                    b->kf + b->kv_indices[b->kv_indptr[s] + j / ps] * page_elems + ((size_t)(h / G) * ps + j % ps) * D;
                double d = 0;
                for (int c = 0; c < D; c++) d += (double)q[c] * k[c];
                w[j] = d * b->sh.scale;
                if (w[j] > mx) mx = w[j];
            }
            double l = 0;
            for (int c = 0; c < D; c++) acc[c] = 0;
            for (int j = 0; j <= last; j++) {
                if (isnan(w[j])) continue;
                const double e = exp(w[j] - mx);
                const float *v =
                    b->vf + b->kv_indices[b->kv_indptr[s] + j / ps] * page_elems + ((size_t)(h / G) * ps + j % ps) * D;
                l += e;
                for (int c = 0; c < D; c++) acc[c] += e * v[c];
            }
            float *o = b->ref + ((size_t)(b->q_indptr[s] + r) * H + h) * D;
            for (int c = 0; c < D; c++) o[c] = l > 0 ? (float)(acc[c] / l) : 0.f;
            b->ref_lse[(size_t)(b->q_indptr[s] + r) * H + h] = l > 0 ? (float)(mx + log(l)) : -INFINITY;
        }
    }
    free(w);
    free(acc);
}

/* Random block masks (bit probability density; 1: all) for the even
 * sequences of a prefill batch; odd ones stay dense. Recomputes their
 * reference. */
static void batch_sparsify(batch_t *b, float density) {
    const int H = b->sh.n_heads;
    size_t total = 0;
    for (int s = 0; s < b->n; s++) {
        b->mask_off[s] = -1;
        if (s % 2 == 0 && b->seq[s].nq > 0) {
            b->mask_off[s] = (int32_t)total;
            total += attn_cuda_mask_words(b->seq[s].nq, b->kv_len[s], H);
        }
    }
    b->mask = calloc(total ? total : 1, sizeof(uint32_t));
    for (size_t i = 0; i < total; i++)
        for (int j = 0; j < 32; j++)
            if (density >= 1.f || (frand() + 1.f) * 0.5f < density) b->mask[i] |= 1u << j;
    CK_CUDA(cudaMalloc(&b->dmask, sizeof(uint32_t) * (total ? total : 1)));
    CK_CUDA(cudaMemcpy(b->dmask, b->mask, sizeof(uint32_t) * (total ? total : 1), cudaMemcpyHostToDevice));
    for (int s = 0; s < b->n; s++)
        if (b->mask_off[s] >= 0) seq_ref(b, s);
}

static void batch_build(batch_t *b, int H, int KH, int D, int ps, int decode, const seq_t *seqs, int n, float qmag) {
    memset(b, 0, sizeof *b);
    b->decode = decode;
    b->n = n;
    memcpy(b->seq, seqs, sizeof(seq_t) * n);
    int64_t used = 0;
    for (int s = 0; s < n; s++) {
        if (decode) b->seq[s].nq = 1;
        b->kv_indptr[s + 1] = b->kv_indptr[s] + (seqs[s].kv_len + ps - 1) / ps;
        b->q_indptr[s + 1] = b->q_indptr[s] + b->seq[s].nq;
        b->kv_len[s] = seqs[s].kv_len;
    }
    used = b->kv_indptr[n];
    const int64_t pool = used + 5; // spare pages stay poisoned
    b->sh = (attn_cuda_shape_t){.n_heads = H,
                                .n_kv_heads = KH,
                                .head_dim = D,
                                .page_size = ps,
                                .n_pool_pages = pool,
                                .scale = 1.0f / sqrtf((float)D)};
    b->rows = b->q_indptr[n];
    // pages: a random permutation of the pool
    b->kv_indices = gpu_page_table(pool, used, irand);
    const size_t page_elems = (size_t)KH * ps * D, pool_elems = page_elems * pool;
    b->kf = malloc(sizeof(float) * pool_elems);
    b->vf = malloc(sizeof(float) * pool_elems);
    b->kb = malloc(2 * pool_elems);
    b->vb = malloc(2 * pool_elems);
    for (size_t i = 0; i < pool_elems; i++) b->kf[i] = b->vf[i] = NAN;
    for (int s = 0; s < n; s++)
        for (int64_t t = 0; t < seqs[s].kv_len; t++) {
            const int32_t pg = b->kv_indices[b->kv_indptr[s] + t / ps];
            for (int h = 0; h < KH; h++) {
                float *kd = b->kf + pg * page_elems + ((size_t)h * ps + t % ps) * D;
                float *vd = b->vf + pg * page_elems + ((size_t)h * ps + t % ps) * D;
                for (int c = 0; c < D; c++) {
                    kd[c] = bf2f(f2bf(frand()));
                    vd[c] = bf2f(f2bf(frand()));
                }
            }
        }
    for (size_t i = 0; i < pool_elems; i++) {
        b->kb[i] = f2bf(b->kf[i]);
        b->vb[i] = f2bf(b->vf[i]);
    }
    const size_t qn = (size_t)b->rows * H * D;
    b->qf = malloc(sizeof(float) * qn);
    b->qb = malloc(2 * qn);
    for (size_t i = 0; i < qn; i++) {
        b->qb[i] = f2bf(frand() * qmag);
        b->qf[i] = bf2f(b->qb[i]);
    }
    CK_CUDA(cudaMalloc(&b->dk, 2 * pool_elems));
    CK_CUDA(cudaMalloc(&b->dv, 2 * pool_elems));
    CK_CUDA(cudaMalloc(&b->dq, 2 * qn));
    CK_CUDA(cudaMemcpy(b->dk, b->kb, 2 * pool_elems, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(b->dv, b->vb, 2 * pool_elems, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(b->dq, b->qb, 2 * qn, cudaMemcpyHostToDevice));

    // CPU reference, sequence by sequence, over the same f32 pool, its K
    // transposed per page as the CPU store keeps it (kv/store.h)
    float *kt = malloc(sizeof(float) * pool_elems);
    for (int64_t pg = 0; pg < pool; pg++)
        for (int h = 0; h < KH; h++)
            for (int t = 0; t < ps; t++)
                for (int c = 0; c < D; c++)
                    kt[pg * page_elems + ((size_t)h * D + c) * ps + t] =
                        b->kf[pg * page_elems + ((size_t)h * ps + t) * D + c];
    b->ref = malloc(sizeof(float) * qn);
    b->ref_lse = malloc(sizeof(float) * b->rows * H);
    attn_shape_t ash = {.n_heads = H, .n_kv_heads = KH, .head_dim = D, .scale = b->sh.scale};
    for (int s = 0; s < n; s++) {
        if (!decode && seqs[s].nq > seqs[s].kv_len) continue; // rows past the keys: the caller's reference (q_pos0)
        attn_kv_t kv = {.k = kt,
                        .v = b->vf,
                        .blk_stride = page_elems,
                        .blocks = b->kv_indices + b->kv_indptr[s],
                        .block_size = ps,
                        .n_kv = seqs[s].kv_len};
        const int64_t r0 = b->q_indptr[s], nq = b->seq[s].nq;
        const float *q = b->qf + r0 * H * D;
        float *o = b->ref + r0 * H * D, *l = b->ref_lse + r0 * H;
        int rc = decode ? attn_decode_dense(&ash, q, &kv, o, l)
                        : attn_prefill_dense(&ash, q, (int)nq, seqs[s].kv_len - nq, &kv, o, l);
        ck_assert_int_eq(rc, 0);
    }
    free(kt);
}

static void batch_free(batch_t *b) {
    cudaFree(b->dk);
    cudaFree(b->dv);
    cudaFree(b->dq);
    cudaFree(b->dmask);
    free(b->mask);
    free(b->kv_indices);
    free(b->kf);
    free(b->vf);
    free(b->kb);
    free(b->vb);
    free(b->qf);
    free(b->qb);
    free(b->ref);
    free(b->ref_lse);
}

/* Plans and runs sequences [s0, s0+ns) of the batch as their own batch (all of
 * it: s0 = 0, ns = n); results to host (out bf16, lse). */
static void run_gpu(const batch_t *b, int s0, int ns, int variant, int split_keys, uint16_t *out, float *lse) {
    const attn_cuda_shape_t *sh = &b->sh;
    const int H = sh->n_heads, D = sh->head_dim;
    attn_cuda_limits_t lim = {
        .max_seqs = 16, .max_q_rows = b->rows + 1, .max_pages = b->kv_indptr[b->n] + 1, .split_keys = split_keys};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(sh, b->decode ? ATTN_CUDA_DECODE : ATTN_CUDA_PREFILL, &lim, &p), 0);
    int32_t qi[17], ki[17];
    for (int s = 0; s <= ns; s++) {
        qi[s] = b->q_indptr[s0 + s] - b->q_indptr[s0];
        ki[s] = b->kv_indptr[s0 + s] - b->kv_indptr[s0];
    }
    attn_cuda_batch_t bt = {.n_seqs = ns,
                            .q_indptr = b->decode ? NULL : qi,
                            .kv_indptr = ki,
                            .kv_indices = b->kv_indices + b->kv_indptr[s0],
                            .kv_len = b->kv_len + s0,
                            .mask_off = b->mask ? b->mask_off + s0 : NULL,
                            .q_pos0 = b->has_qpos ? b->q_pos0 + s0 : NULL,
                            .window = b->window};
    size_t ws = 0;
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, &ws), 0);
    const int64_t rows = b->q_indptr[s0 + ns] - b->q_indptr[s0];
    const size_t on = (size_t)rows * H * D;
    void *dout, *dlse, *dws = NULL;
    CK_CUDA(cudaMalloc(&dout, 2 * on));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * rows * H));
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    CK_CUDA(cudaMemset(dout, 0xff, 2 * on)); // NaN
    CK_CUDA(cudaMemset(dlse, 0xff, sizeof(float) * rows * H));
    attn_cuda_args_t a = {.q = (const uint16_t *)b->dq + (size_t)b->q_indptr[s0] * H * D,
                          .out = dout,
                          .lse = dlse,
                          .k = b->dk,
                          .v = b->dv,
                          .workspace = dws,
                          .workspace_bytes = ws,
                          .variant = variant,
                          .block_mask = b->dmask,
                          .mask_only = b->mask_only};
    // twice: the decode merge counters must be back at zero after a run
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * on, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * rows * H, cudaMemcpyDeviceToHost));
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    attn_cuda_plan_destroy(p);
}

/* Compares the whole batch's GPU result with the CPU reference; prints the
 * worst errors, and the first mismatches of a failing (sequence, head). */
static int check_vs_cpu(const batch_t *b, const uint16_t *out, const float *lse, const char *what) {
    const int H = b->sh.n_heads, D = b->sh.head_dim;
    double worst_rel = 0, worst_max = 0, worst_lse = 0;
    int ok = 1, reported = 0;
    for (int s = 0; s < b->n; s++)
        for (int h = 0; h < H; h++) {
            double se = 0, sr = 0, me = 0, mr = 0;
            int64_t nonfinite = 0;
            for (int64_t r = b->q_indptr[s]; r < b->q_indptr[s + 1]; r++) {
                const size_t base = ((size_t)r * H + h) * D;
                for (int c = 0; c < D; c++) {
                    const double g = bf2f(out[base + c]), f = b->ref[base + c];
                    if (!isfinite(g)) {
                        nonfinite++;
                        continue;
                    }
                    se += (g - f) * (g - f);
                    sr += f * f;
                    if (fabs(g - f) > me) me = fabs(g - f);
                    if (fabs(f) > mr) mr = fabs(f);
                }
                const float gl = lse[(size_t)r * H + h];
                const float rl = b->ref_lse[(size_t)r * H + h];
                const double le = isfinite(gl) ? fabs((double)gl - rl) : gl == rl ? 0 : INFINITY; // -inf: no key
                if (le > worst_lse) worst_lse = le;
            }
            const double rel = sqrt(se / (sr > 0 ? sr : 1)), mx = me / (mr > 0 ? mr : 1);
            if (rel > worst_rel) worst_rel = rel;
            if (mx > worst_max) worst_max = mx;
            if (nonfinite || !(rel < 1e-2 && mx < 3e-2)) {
                ok = 0;
                if (reported++ < 6) {
                    printf("  FAIL %s: seq %d (kv_len %d, nq %d) head %d: rel L2 %.3g, max %.3g, %ld not finite\n",
                           what, s, b->seq[s].kv_len, b->seq[s].nq, h, rel, mx, (long)nonfinite);
                    int shown = 0;
                    for (int64_t r = b->q_indptr[s]; r < b->q_indptr[s + 1] && shown < 4; r++)
                        for (int c = 0; c < D && shown < 4; c++) {
                            const size_t i = ((size_t)r * H + h) * D + c;
                            const double g = bf2f(out[i]), f = b->ref[i];
                            if (!(fabs(g - f) <= 3e-2 * (mr > 0 ? mr : 1))) {
                                printf("    row %ld dim %d: gpu %g cpu %g (lse gpu %g cpu %g)\n",
                                       (long)(r - b->q_indptr[s]), c, g, f, lse[(size_t)r * H + h],
                                       b->ref_lse[(size_t)r * H + h]);
                                shown++;
                            }
                        }
                }
            }
        }
    if (!(worst_lse < 1e-2)) ok = 0;
    printf("  %-4s %-50s rel L2 %.2e  max %.2e  lse %.2e\n", ok ? "ok" : "FAIL", what, worst_rel, worst_max, worst_lse);
    return ok;
}

/* Every variant against the CPU; variant 0 alone per sequence, bitwise. */
static void check_batch(const batch_t *b, const char *name, int split_keys) {
    const int H = b->sh.n_heads, D = b->sh.head_dim;
    const size_t on = (size_t)b->rows * H * D;
    uint16_t *out = malloc(2 * on), *one = malloc(2 * on);
    float *lse = malloc(sizeof(float) * b->rows * H), *lse1 = malloc(sizeof(float) * b->rows * H);
    attn_cuda_limits_t lim = {.max_seqs = 1, .max_q_rows = 1, .max_pages = 1};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&b->sh, b->decode ? ATTN_CUDA_DECODE : ATTN_CUDA_PREFILL, &lim, &p), 0);
    // a windowed prefill runs the mma.sync kernel whatever the variant: once
    const int windowed = b->window > 0 && !b->decode, nv = windowed ? 1 : attn_cuda_variant_count(p);
    int ok = 1;
    for (int v = nv - 1; v >= 0; v--) {
        char what[128];
        snprintf(what, sizeof what, "%s [%s]", name, windowed ? "mma.sync" : attn_cuda_variant_name(p, v));
        run_gpu(b, 0, b->n, v, split_keys, out, lse);
        ok &= check_vs_cpu(b, out, lse, what);
    }
    attn_cuda_plan_destroy(p);
    // out/lse now hold variant 0 over the whole batch
    int same = 1;
    for (int s = 0; s < b->n; s++) {
        run_gpu(b, s, 1, 0, split_keys, one, lse1);
        const size_t r0 = (size_t)b->q_indptr[s], nr = (size_t)b->seq[s].nq;
        if (memcmp(one, out + r0 * H * D, 2 * nr * H * D) != 0 || memcmp(lse1, lse + r0 * H, sizeof(float) * nr * H)) {
            printf("  FAIL %s: sequence %d alone differs from its rows in the batch\n", name, s);
            same = 0;
        }
    }
    free(out);
    free(one);
    free(lse);
    free(lse1);
    ck_assert_msg(ok, "%s: a variant differs from the CPU reference (see above)", name);
    ck_assert_msg(same, "%s: not batch invariant (see above)", name);
}

static void run_case(int H, int KH, int D, int ps, int decode, const seq_t *seqs, int n, float qmag, int split_keys,
                     uint64_t seed, const char *name) {
    rng = seed;
    batch_t b;
    batch_build(&b, H, KH, D, ps, decode, seqs, n, qmag);
    check_batch(&b, name, split_keys);
    batch_free(&b);
}

/* A dense batch under a sliding window (the reference recomputed with it). */
static void run_window_case(int H, int KH, int D, int ps, int decode, const seq_t *seqs, int n, int window,
                            uint64_t seed, const char *name) {
    rng = seed;
    batch_t b;
    batch_build(&b, H, KH, D, ps, decode, seqs, n, 1.5f);
    b.window = window;
    for (int s = 0; s < n; s++) seq_ref(&b, s);
    check_batch(&b, name, 0);
    batch_free(&b);
}

/* ---- prefill ------------------------------------------------------------------------ */
START_TEST(test_prefill_small) {
    const seq_t s[] = {{1, 1}, {70, 70}, {130, 3}, {200, 129}};
    run_case(4, 2, 128, 64, 0, s, 4, 1.f, 0, 11, "prefill small d128 g2 p64");
    run_case(2, 2, 64, 128, 0, s, 4, 1.f, 0, 12, "prefill small d64 g1 p128");
}
END_TEST

START_TEST(test_prefill_mixed_d128_g4) {
    // full prompts, one-token chunks on prefixes, chunks on prefixes, 128-multiples
    const seq_t s[] = {{1000, 1000}, {5, 5}, {300, 1}, {2000, 77}, {129, 128}, {2500, 1500}, {256, 256}, {64, 63}};
    run_case(32, 8, 128, 64, 0, s, 8, 1.f, 0, 21, "prefill mixed d128 g4 p64");
    run_case(32, 8, 128, 128, 0, s, 8, 3.f, 0, 22, "prefill mixed d128 g4 p128 peaky");
}
END_TEST

START_TEST(test_prefill_d64_g1_g8) {
    const seq_t s[] = {{1, 1}, {128, 128}, {257, 130}, {700, 700}, {64, 1}, {1025, 513}};
    run_case(4, 4, 64, 128, 0, s, 6, 1.f, 0, 31, "prefill d64 g1 p128");
    run_case(16, 2, 64, 64, 0, s, 6, 2.f, 0, 32, "prefill d64 g8 p64");
    run_case(16, 2, 128, 128, 0, s, 6, 1.f, 0, 33, "prefill d128 g8 p128");
}
END_TEST

START_TEST(test_prefill_long_short) {
    const seq_t s[] = {{4099, 4099}, {3, 3}, {6000, 1901}};
    run_case(8, 2, 128, 64, 0, s, 3, 1.f, 0, 41, "prefill long+short d128 g4 p64");
}
END_TEST

START_TEST(test_prefill_random) {
    rng = 51;
    seq_t s[12];
    for (int i = 0; i < 12; i++) {
        s[i].kv_len = 1 + irand(1500);
        s[i].nq = 1 + irand(s[i].kv_len);
    }
    run_case(8, 2, 64, 64, 0, s, 12, 1.5f, 0, 52, "prefill random d64 g4 p64");
    run_case(8, 1, 128, 128, 0, s, 12, 1.f, 0, 53, "prefill random d128 g8 p128");
}
END_TEST

/* ---- block-sparse prefill -------------------------------------------------------------- */
/* attn_cuda_mask_pairs against a count on the host, row by row. */
static void check_pairs(const batch_t *b) {
    const int H = b->sh.n_heads;
    attn_cuda_limits_t lim = {.max_seqs = 16, .max_q_rows = b->rows + 1, .max_pages = b->kv_indptr[b->n] + 1};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&b->sh, ATTN_CUDA_PREFILL, &lim, &p), 0);
    attn_cuda_batch_t bt = {.n_seqs = b->n,
                            .q_indptr = b->q_indptr,
                            .kv_indptr = b->kv_indptr,
                            .kv_indices = b->kv_indices,
                            .kv_len = b->kv_len,
                            .mask_off = b->mask_off};
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, NULL), 0);
    unsigned long long *dpairs, got[16];
    CK_CUDA(cudaMalloc((void **)&dpairs, sizeof got));
    CK_CUDA(cudaMemset(dpairs, 0, sizeof got));
    ck_assert_int_eq(attn_cuda_mask_pairs(p, b->dmask, dpairs, NULL), 0);
    CK_CUDA(cudaMemcpy(got, dpairs, sizeof got, cudaMemcpyDeviceToHost));
    for (int s = 0; s < b->n; s++) {
        unsigned long long want = 0;
        const int len = b->kv_len[s], nq = b->seq[s].nq, qb0 = (len - nq) / 128, n_kb = (len - 1) / 128 + 1;
        for (int r = 0; b->mask_off[s] >= 0 && r < nq; r++) {
            const int pos = len - nq + r, qb = pos / 128;
            for (int h = 0; h < H; h++) {
                const uint32_t *row =
                    b->mask + b->mask_off[s] + ((size_t)h * (n_kb - qb0) + qb - qb0) * ((n_kb + 31) / 32);
                for (int kb = 0; kb <= qb; kb++)
                    if (kb == qb || (row[kb / 32] >> (kb % 32) & 1u)) want += kb == qb ? pos - kb * 128 + 1 : 128;
            }
        }
        ck_assert_msg(got[s] == want, "sequence %d: %llu pairs counted, %llu selected", s, got[s], want);
    }
    cudaFree(dpairs);
    attn_cuda_plan_destroy(p);
}

static void run_sparse_case(int H, int KH, int D, int ps, const seq_t *seqs, int n, float density, uint64_t seed,
                            const char *name) {
    rng = seed;
    batch_t b;
    batch_build(&b, H, KH, D, ps, 0, seqs, n, 1.f);
    batch_sparsify(&b, density);
    check_batch(&b, name, 0);
    check_pairs(&b);
    batch_free(&b);
}

START_TEST(test_prefill_sparse) {
    // unaligned prefixes, one-row chunks, chunks inside one block, ~4K keys
    const seq_t s[] = {{1000, 1000}, {5, 5}, {300, 1}, {2000, 77}, {4100, 700}, {1500, 1500}, {700, 130}, {256, 256}};
    run_sparse_case(8, 2, 128, 64, s, 8, 0.3f, 81, "sparse 0.3 d128 g4 p64");
    run_sparse_case(8, 8, 64, 128, s, 8, 0.1f, 82, "sparse 0.1 d64 g1 p128");
    run_sparse_case(16, 2, 128, 128, s, 8, 0.7f, 83, "sparse 0.7 d128 g8 p128");
}
END_TEST

/* Every bit set: the same tiles in the same order as the dense kernel, so the
 * same bits. */
START_TEST(test_prefill_sparse_full) {
    const seq_t s[] = {{1000, 1000}, {300, 1}, {2000, 77}, {4100, 700}};
    rng = 91;
    batch_t b;
    batch_build(&b, 8, 2, 128, 64, 0, s, 4, 1.f);
    const size_t on = (size_t)b.rows * 8 * 128;
    uint16_t *dense = malloc(2 * on), *full = malloc(2 * on);
    float *l1 = malloc(sizeof(float) * b.rows * 8), *l2 = malloc(sizeof(float) * b.rows * 8);
    run_gpu(&b, 0, b.n, 0, 0, dense, l1);
    batch_sparsify(&b, 1.f);
    run_gpu(&b, 0, b.n, 0, 0, full, l2);
    ck_assert_msg(memcmp(dense, full, 2 * on) == 0 && memcmp(l1, l2, sizeof(float) * b.rows * 8) == 0,
                  "a full block mask differs from the dense kernel");
    printf("  ok   full block mask equals the dense kernel bitwise\n");
    free(dense);
    free(full);
    free(l1);
    free(l2);
    batch_free(&b);
}
END_TEST

/* mask_only (AnchorAttention's whole kept blocks): the set bits alone, no
 * diagonal block; every sequence's first block, and at the low density many
 * more rows, attend nothing and must give out 0 and lse -inf. Every variant
 * against seq_ref, batch invariance (check_batch). */
START_TEST(test_prefill_mask_only) {
    const seq_t s[] = {{1000, 1000}, {5, 5}, {300, 1}, {2000, 77}, {4100, 700}, {1500, 1500}, {700, 130}, {256, 256}};
    static const float dens[] = {0.3f, 0.05f};
    for (int i = 0; i < 2; i++) {
        rng = 95 + (uint64_t)i;
        batch_t b;
        batch_build(&b, 8, 2, 128, 64, 0, s, 8, 1.f);
        b.mask_only = 1;
        batch_sparsify(&b, dens[i]);
        check_batch(&b, i ? "mask_only 0.05 d128 g4 p64" : "mask_only 0.3 d128 g4 p64", 0);
        batch_free(&b);
    }
    // 256 dims: the mma.sync kernel (Gemma 3's global layers)
    rng = 97;
    batch_t b;
    batch_build(&b, 4, 1, 256, 64, 0, s, 8, 1.f);
    b.mask_only = 1;
    batch_sparsify(&b, 0.3f);
    check_batch(&b, "mask_only 0.3 d256 g4 p64", 0);
    batch_free(&b);
}
END_TEST

/* ---- explicit query positions (q_pos0) ------------------------------------------------ */

/* Rows at every kind of position: past the keys (all visible: the ring's
 * off-diagonal step), as many rows as keys or more, straddling kv_len,
 * inside the keys (causal from an earlier position), the default position
 * given explicitly; row counts not multiples of 128, odd lengths, shuffled
 * pages (batch_build). Every variant against seq_ref, each sequence alone
 * bitwise equal to its rows of the batch (check_batch). */
static void run_qpos_case(int H, int KH, int D, int ps, uint64_t seed, const char *name) {
    static const struct {
        int kv_len, nq, q_pos0;
    } c[] = {{1000, 1000, 1000}, {333, 77, 5000}, {129, 300, 129}, {4097, 200, 1500}, {700, 260, 600}, {1, 5, 1},
             {2000, 131, 1869},  {256, 128, 64},  {1025, 1, 1025}, {640, 129, 4000},  {77, 77, 0}};
    const int n = (int)(sizeof c / sizeof c[0]);
    seq_t seqs[16];
    for (int s = 0; s < n; s++) seqs[s] = (seq_t){c[s].kv_len, c[s].nq};
    rng = seed;
    batch_t b;
    batch_build(&b, H, KH, D, ps, 0, seqs, n, 1.f);
    b.has_qpos = 1;
    for (int s = 0; s < n; s++) {
        b.q_pos0[s] = c[s].q_pos0;
        seq_ref(&b, s);
    }
    check_batch(&b, name, 0);
    batch_free(&b);
}

START_TEST(test_prefill_qpos) {
    run_qpos_case(8, 2, 128, 64, 101, "q_pos0 d128 g4 p64");
    run_qpos_case(4, 4, 64, 128, 102, "q_pos0 d64 g1 p128");
    run_qpos_case(16, 2, 128, 128, 103, "q_pos0 d128 g8 p128");
}
END_TEST

/* q_pos0 = kv_len - nq given explicitly is the default, bit for bit. */
START_TEST(test_prefill_qpos_default) {
    const seq_t s[] = {{1000, 1000}, {300, 1}, {2000, 77}, {4100, 700}, {129, 128}};
    rng = 111;
    batch_t b;
    batch_build(&b, 8, 2, 128, 64, 0, s, 5, 1.f);
    const size_t on = (size_t)b.rows * 8 * 128;
    uint16_t *o1 = malloc(2 * on), *o2 = malloc(2 * on);
    float *l1 = malloc(sizeof(float) * b.rows * 8), *l2 = malloc(sizeof(float) * b.rows * 8);
    run_gpu(&b, 0, b.n, 0, 0, o1, l1);
    b.has_qpos = 1;
    for (int i = 0; i < b.n; i++) b.q_pos0[i] = b.kv_len[i] - b.seq[i].nq;
    run_gpu(&b, 0, b.n, 0, 0, o2, l2);
    ck_assert_msg(memcmp(o1, o2, 2 * on) == 0 && memcmp(l1, l2, sizeof(float) * b.rows * 8) == 0,
                  "q_pos0 = kv_len - nq differs from q_pos0 = NULL");
    printf("  ok   q_pos0 = kv_len - nq equals q_pos0 = NULL bitwise\n");
    free(o1);
    free(o2);
    free(l1);
    free(l2);
    batch_free(&b);
}
END_TEST

/* head_dim 256 (Gemma 3: 4 heads on one KV head), the mma.sync kernel, dense and block-sparse */
START_TEST(test_prefill_d256) {
    const seq_t s[] = {{1, 1}, {70, 70}, {130, 3}, {200, 129}, {1000, 1000}, {2000, 77}, {300, 1}};
    run_case(4, 1, 256, 64, 0, s, 7, 1.f, 0, 301, "prefill d256 g4 p64");
    run_case(8, 4, 256, 128, 0, s, 7, 2.f, 0, 302, "prefill d256 g2 p128 peaky");
    run_sparse_case(4, 1, 256, 64, s, 7, 0.3f, 303, "prefill sparse 0.3 d256 g4 p64");
    run_sparse_case(4, 1, 256, 128, s, 7, 1.f, 304, "prefill sparse all bits d256 g4 p128");
}
END_TEST

/* Sliding windows (Gemma 3's local layers): rows at the window's edge, chunks
 * on prefixes longer than the window, windows shorter than a page and than a
 * stage; 256 dims, and 128 and 64 (the same kernel, a windowed plan). */
START_TEST(test_prefill_window) {
    const seq_t s[] = {{1000, 1000}, {600, 1}, {2000, 77}, {130, 130}, {700, 300}, {512, 512}, {513, 2}};
    run_window_case(4, 1, 256, 64, 0, s, 7, 512, 311, "prefill window 512 d256 g4 p64");
    run_window_case(4, 1, 256, 64, 0, s, 7, 96, 312, "prefill window 96 d256 g4 p64");
    run_window_case(8, 2, 128, 128, 0, s, 7, 100, 313, "prefill window 100 d128 g4 p128");
    run_window_case(4, 4, 64, 64, 0, s, 7, 33, 314, "prefill window 33 d64 g1 p64");
    run_window_case(4, 1, 256, 64, 0, s, 7, 5000, 315, "prefill window 5000 (all) d256 g4 p64");
}
END_TEST

/* ---- decode -------------------------------------------------------------------------- */
/* head_dim 256, dense and windowed; windows at 128 dims too */
START_TEST(test_decode_d256_window) {
    const seq_t s[] = {{1, 1}, {63, 1}, {65, 1}, {700, 1}, {5000, 1}, {513, 1}, {40000, 1}};
    run_case(4, 1, 256, 64, 1, s, 7, 1.f, 0, 321, "decode d256 g4 p64");
    run_case(8, 1, 256, 128, 1, s, 7, 2.f, 64, 322, "decode d256 g8 p128 split64");
    run_window_case(4, 1, 256, 64, 1, s, 7, 512, 323, "decode window 512 d256 g4 p64");
    run_window_case(4, 1, 256, 64, 1, s, 7, 96, 324, "decode window 96 d256 g4 p64");
    run_window_case(8, 2, 128, 128, 1, s, 7, 1000, 325, "decode window 1000 d128 g4 p128");
}
END_TEST

START_TEST(test_decode_small) {
    const seq_t s[] = {{1, 1}, {63, 1}, {65, 1}, {700, 1}};
    run_case(4, 2, 128, 64, 1, s, 4, 1.f, 64, 61, "decode small d128 g2 p64 split64");
    run_case(2, 2, 64, 128, 1, s, 4, 1.f, 0, 62, "decode small d64 g1 p128");
}
END_TEST

START_TEST(test_decode_d128_g4) {
    const seq_t s[] = {{1, 1}, {63, 1}, {64, 1}, {65, 1}, {1000, 1}, {33000, 1}, {511, 1}, {513, 1}};
    run_case(32, 8, 128, 64, 1, s, 8, 1.f, 0, 71, "decode d128 g4 p64");
    run_case(32, 8, 128, 128, 1, s, 8, 3.f, 0, 72, "decode d128 g4 p128 peaky");
}
END_TEST

START_TEST(test_decode_groups) {
    const seq_t a[] = {{1, 1}, {127, 1}, {128, 1}, {129, 1}, {4000, 1}};
    run_case(4, 4, 64, 128, 1, a, 5, 1.f, 0, 81, "decode d64 g1 p128");
    const seq_t b[] = {{70000, 1}, {5, 1}};
    run_case(16, 2, 128, 128, 1, b, 2, 1.f, 0, 82, "decode d128 g8 p128 70K");
    const seq_t c[] = {{2000, 1}, {17, 1}, {600, 1}};
    run_case(16, 1, 128, 64, 1, c, 3, 1.f, 0, 83, "decode d128 g16 p64");
    run_case(16, 1, 64, 64, 1, c, 3, 1.f, 0, 84, "decode d64 g16 p64");
}
END_TEST

START_TEST(test_decode_many_splits) {
    // 64-key chunks: every sequence past 64 keys goes through the merge
    const seq_t s[] = {{100, 1}, {1000, 1}, {4095, 1}, {64, 1}, {4097, 1}};
    run_case(8, 2, 128, 64, 1, s, 5, 2.f, 64, 91, "decode split64 d128 g4 p64");
}
END_TEST

/* ---- programmatic dependent launch (attn_cuda_args_t.pdl_fresh) ---------------------------
 * The decode kernel launched with PDL right after a kernel that spins, then
 * writes q and the K/V of each sequence's last F keys (all of them NaN until
 * then): the output must equal an ordinary launch's bitwise. Then the same
 * with the contract broken (keys 0-63 NaN as well, which the kernel may load
 * early): the output must differ, which shows that the early loads do run
 * before the writer completes, so the first run tested something. */
static void pdl_poison(const batch_t *b, uint16_t *k, uint16_t *v, int s, int lo, int hi) {
    const int KH = b->sh.n_kv_heads, ps = b->sh.page_size, D = b->sh.head_dim;
    const size_t page_elems = (size_t)KH * ps * D;
    for (int t = lo < 0 ? 0 : lo; t < hi; t++) {
        const int32_t pg = b->kv_indices[b->kv_indptr[s] + t / ps];
        for (int h = 0; h < KH; h++) {
            const size_t o = pg * page_elems + ((size_t)h * ps + t % ps) * D;
            for (int c = 0; c < D; c++) k[o + c] = v[o + c] = 0x7fc0;
        }
    }
}

START_TEST(test_decode_pdl) {
    rng = 0x9d1u;
    const int H = 32, KH = 8, D = 128, ps = 64, F = 3;
    const seq_t seqs[] = {{1, 1}, {63, 1}, {65, 1}, {700, 1}, {5000, 1}, {9001, 1}};
    batch_t b;
    batch_build(&b, H, KH, D, ps, 1, seqs, 6, 1.f);
    const size_t pool_bytes = 2 * (size_t)KH * ps * D * b.sh.n_pool_pages, q_bytes = 2 * (size_t)b.rows * H * D;
    const size_t bytes = (2 * pool_bytes + q_bytes + 15) / 16 * 16;
    uint16_t *ref = malloc(q_bytes), *got = malloc(q_bytes), *hk = malloc(pool_bytes), *hv = malloc(pool_bytes);
    float *ref_lse = malloc(sizeof(float) * b.rows * H), *got_lse = malloc(sizeof(float) * b.rows * H);
    run_gpu(&b, 0, b.n, 0, 0, ref, ref_lse);
    ck_assert(check_vs_cpu(&b, ref, ref_lse, "decode pdl: the ordinary launch"));

    attn_cuda_limits_t lim = {.max_seqs = 16, .max_q_rows = b.rows + 1, .max_pages = b.kv_indptr[b.n] + 1};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&b.sh, ATTN_CUDA_DECODE, &lim, &p), 0);
    attn_cuda_batch_t bt = {.n_seqs = b.n, .kv_indptr = b.kv_indptr, .kv_indices = b.kv_indices, .kv_len = b.kv_len};
    size_t ws = 0;
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, &ws), 0);
    uint8_t *good, *live;
    void *dout, *dlse, *dws = NULL;
    CK_CUDA(cudaMalloc((void **)&good, bytes));
    CK_CUDA(cudaMalloc((void **)&live, bytes));
    CK_CUDA(cudaMalloc(&dout, q_bytes));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * b.rows * H));
    if (ws) CK_CUDA(cudaMalloc(&dws, ws));
    CK_CUDA(cudaMemcpy(good, b.kb, pool_bytes, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(good + pool_bytes, b.vb, pool_bytes, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(good + 2 * pool_bytes, b.qb, q_bytes, cudaMemcpyHostToDevice));
    cudaStream_t st;
    CK_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const attn_cuda_args_t a = {.q = live + 2 * pool_bytes,
                                .out = dout,
                                .lse = dlse,
                                .k = live,
                                .v = live + pool_bytes,
                                .workspace = dws,
                                .workspace_bytes = ws,
                                .pdl_fresh = F};
    int differs = 0;
    for (int broken = 0; broken <= 1; broken++) {
        memcpy(hk, b.kb, pool_bytes);
        memcpy(hv, b.vb, pool_bytes);
        for (int s = 0; s < b.n; s++) { // the writer's keys, and (broken) keys 0-63 of the longer ones
            pdl_poison(&b, hk, hv, s, b.kv_len[s] - F, b.kv_len[s]);
            if (broken && b.kv_len[s] > 64 + F + 64) pdl_poison(&b, hk, hv, s, 0, 64);
        }
        CK_CUDA(cudaMemcpy(live, hk, pool_bytes, cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(live + pool_bytes, hv, pool_bytes, cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemset(live + 2 * pool_bytes, 0xff, q_bytes)); // q: NaN until the writer ends
        CK_CUDA(cudaMemset(dout, 0xff, q_bytes));
        CK_CUDA(cudaMemset(dlse, 0xff, sizeof(float) * b.rows * H));
        CK_CUDA(cudaDeviceSynchronize());
        ck_assert_int_eq(gpu_delayed_copy(live, good, bytes, 2000000, st), 0); // 2 ms, then everything right
        ck_assert_int_eq(attn_cuda_run(p, &a, st), 0);
        CK_CUDA(cudaStreamSynchronize(st));
        CK_CUDA(cudaMemcpy(got, dout, q_bytes, cudaMemcpyDeviceToHost));
        CK_CUDA(cudaMemcpy(got_lse, dlse, sizeof(float) * b.rows * H, cudaMemcpyDeviceToHost));
        const int same = !memcmp(got, ref, q_bytes) && !memcmp(got_lse, ref_lse, sizeof(float) * b.rows * H);
        if (!broken)
            ck_assert_msg(same, "decode pdl: the output differs from the ordinary launch's");
        else
            differs = !same;
    }
    printf("decode pdl: bitwise equal with the contract kept; with keys 0-63 written late too the output %s\n",
           differs ? "differs (the early loads ran before the writer completed)" : "is the same");
    ck_assert_msg(differs, "decode pdl: no early load was seen, so the kept-contract run tested nothing");
    cudaStreamDestroy(st);
    cudaFree(good);
    cudaFree(live);
    cudaFree(dout);
    cudaFree(dlse);
    cudaFree(dws);
    attn_cuda_plan_destroy(p);
    free(ref);
    free(got);
    free(hk);
    free(hv);
    free(ref_lse);
    free(got_lse);
    batch_free(&b);
}
END_TEST

/* ---- bad input: clear errors, nothing launched ------------------------------------------ */
START_TEST(test_bad_input) {
    attn_cuda_shape_t sh = {
        .n_heads = 8, .n_kv_heads = 2, .head_dim = 128, .page_size = 64, .n_pool_pages = 10, .scale = 0.1f};
    attn_cuda_limits_t lim = {.max_seqs = 4, .max_q_rows = 50, .max_pages = 10};
    attn_cuda_plan_t *p = NULL;
    attn_cuda_shape_t bad = sh;
    bad.head_dim = 96;
    ck_assert_int_eq(attn_cuda_plan_create(&bad, ATTN_CUDA_PREFILL, &lim, &p), LC_EUNSUPPORTED);
    bad = sh;
    bad.page_size = 16;
    ck_assert_int_eq(attn_cuda_plan_create(&bad, ATTN_CUDA_DECODE, &lim, &p), LC_EUNSUPPORTED);
    bad = sh;
    bad.n_heads = 64;
    bad.n_kv_heads = 2;
    ck_assert_int_eq(attn_cuda_plan_create(&bad, ATTN_CUDA_DECODE, &lim, &p), LC_EUNSUPPORTED);
    bad = sh;
    bad.n_heads = 7;
    ck_assert_int_eq(attn_cuda_plan_create(&bad, ATTN_CUDA_PREFILL, &lim, &p), LC_EINVAL);

    ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &p), 0);
    int32_t qi[2] = {0, 10}, ki[2] = {0, 2}, idx[2] = {3, 7}, len[1] = {100};
    attn_cuda_batch_t b = {.n_seqs = 1, .q_indptr = qi, .kv_indptr = ki, .kv_indices = idx, .kv_len = len};
    size_t ws = 1;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), 0);
    ck_assert_uint_eq(ws, 0);
    idx[1] = 10; // past the pool
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    idx[1] = -1;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    idx[1] = 7;
    len[0] = 129; // more keys than two pages hold
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    len[0] = 5; // fewer keys than query rows
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    len[0] = 100;
    qi[1] = 60; // past max_q_rows
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_ERANGE);
    qi[1] = 10;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), 0);
    // explicit query positions: rows past the keys are fine (with a block
    // mask too), a negative position is not
    int32_t qp[1] = {100}, mo[1] = {0};
    len[0] = 5;
    b.q_pos0 = qp;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), 0);
    qp[0] = -1;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    qp[0] = INT32_MAX - 5; // the last row's position past int32
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), LC_EINVAL);
    qp[0] = 100;
    b.mask_off = mo;
    ck_assert_int_eq(attn_cuda_plan(p, &b, NULL, &ws), 0);
    b.mask_off = NULL;
    b.q_pos0 = NULL;
    len[0] = 100;
    attn_cuda_args_t a = {0};
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), LC_EINVAL); // missing pointers
    attn_cuda_plan_destroy(p);

    // decode: a split sequence needs its workspace
    ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &lim, &p), 0);
    int32_t ki2[2] = {0, 10}, idx2[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, len2[1] = {600};
    attn_cuda_batch_t b2 = {.n_seqs = 1, .kv_indptr = ki2, .kv_indices = idx2, .kv_len = len2};
    int32_t qp2[1] = {0};
    b2.q_pos0 = qp2; // prefill only
    ck_assert_int_eq(attn_cuda_plan(p, &b2, NULL, &ws), LC_EINVAL);
    b2.q_pos0 = NULL;
    ck_assert_int_eq(attn_cuda_plan(p, &b2, NULL, &ws), 0);
    ck_assert_uint_gt(ws, 0);
    void *buf;
    CK_CUDA(cudaMalloc(&buf, 1 << 20));
    attn_cuda_args_t a2 = {.q = buf, .out = buf, .k = buf, .v = buf, .workspace = buf, .workspace_bytes = ws - 1};
    ck_assert_int_eq(attn_cuda_run(p, &a2, NULL), LC_EINVAL);
    cudaFree(buf);
    attn_cuda_plan_destroy(p);
}
END_TEST

static Suite *attn_cuda_suite(void) {
    Suite *s = suite_create("attn_cuda");
    TCase *errors = tcase_create("errors");
    tcase_add_test(errors, test_bad_input);
    suite_add_tcase(s, errors);
    TCase *prefill_small = tcase_create("prefill_small"); // small cases: also run under compute-sanitizer
    tcase_add_test(prefill_small, test_prefill_small);
    tcase_add_test(prefill_small, test_prefill_sparse_full);
    tcase_add_test(prefill_small, test_prefill_mask_only);
    suite_add_tcase(s, prefill_small);
    TCase *decode_small = tcase_create("decode_small");
    tcase_add_test(decode_small, test_decode_small);
    suite_add_tcase(s, decode_small);
    TCase *prefill = tcase_create("prefill");
    tcase_add_test(prefill, test_prefill_mixed_d128_g4);
    tcase_add_test(prefill, test_prefill_d64_g1_g8);
    tcase_add_test(prefill, test_prefill_long_short);
    tcase_add_test(prefill, test_prefill_random);
    tcase_add_test(prefill, test_prefill_sparse);
    tcase_add_test(prefill, test_prefill_qpos_default);
    tcase_add_test(prefill, test_prefill_qpos);
    tcase_add_test(prefill, test_prefill_d256);
    tcase_add_test(prefill, test_prefill_window);
    suite_add_tcase(s, prefill);
    TCase *decode = tcase_create("decode");
    tcase_add_test(decode, test_decode_d128_g4);
    tcase_add_test(decode, test_decode_groups);
    tcase_add_test(decode, test_decode_many_splits);
    tcase_add_test(decode, test_decode_d256_window);
    tcase_add_test(decode, test_decode_pdl);
    suite_add_tcase(s, decode);
    return s;
}

int main(void) {
    if (!gpu_have_device()) return 77;
    return gpu_run_suite(attn_cuda_suite());
}
