/* GPU Check suite for the CUDA executor: every kernel of ops/cuda against its
 * CPU counterpart on random and adversarial inputs, the matmul's batch
 * invariance, and the whole forward pass of the GPU executor against the
 * CPU executor (tiny random models, and the real model teacher-forced on 5
 * prompts x 256 positions); check_cuda_sched.c adds the executor through
 * the scheduler, check_cuda_cp.c its context parallelism. Runs on the GPU
 * machine (tests/gpu/run.sh); a machine without a GPU makes it exit 77,
 * never pass.
 *
 * Tolerances: bf16 rounds to 8 bits of mantissa (relative 2^-9 per value), so
 * one rounded output is within 4e-3 of the reference and a matmul over bf16
 * inputs (exact products, f32 sums) within ~1e-5 of a double reference over
 * the same bf16 values. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "cp_exec_case.h"
#include "common/cpu.h"
#include "common/status.h"
#include "kv/kv.h"
#include "model/exec.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/device.h"
#include "ops/ops.h"
#include "scheduler/sched.h"
#include "testutil.h"
#include "tinymodel.h"
#include "tools/mkmodel.h"

void cuda_cp_add(TCase *tc); // check_cuda_cp.c
/* check_cuda_sched.c: the executor through the scheduler; device_lost must come last */
void cuda_sched_add(TCase *tc);
void cuda_device_lost_add(TCase *tc);

static uint64_t rng = 88172645463325252ULL;
static float frand(void) { // uniform in [-1, 1)
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float f32_of(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void *check_cuda_dev(const void *host, size_t bytes);
void *check_cuda_dev(const void *host, size_t bytes) {
    void *p = NULL;
    ck_assert_int_eq(cudaMalloc(&p, bytes), cudaSuccess);
    if (host) ck_assert_int_eq(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
    return p;
}
static void back(void *host, const void *d, size_t bytes) {
    ck_assert_int_eq(cudaDeviceSynchronize(), cudaSuccess);
    ck_assert_int_eq(cudaMemcpy(host, d, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}

/* ---- elementwise ------------------------------------------------------------------------------ */
START_TEST(test_rmsnorm_embed_swiglu) {
    const int n = 37, dim = 576, V = 50, ff = 333;
    float *x = malloc(sizeof(float) * n * dim), *w = malloc(sizeof(float) * dim),
          *ref = malloc(sizeof(float) * n * dim);
    for (int i = 0; i < n * dim; i++) x[i] = frand() * (i % 97 == 0 ? 40.0f : 2.0f); // some large outliers
    for (int i = 0; i < dim; i++) w[i] = frand() + 1.0f;
    ops_rmsnorm(ref, x, w, n, dim, 1e-5f);
    int32_t rows[5] = {36, 0, 17, 17, 3};
    float *dx = check_cuda_dev(x, sizeof(float) * n * dim), *dw = check_cuda_dev(w, sizeof(float) * dim);
    uint16_t *out = malloc(2 * (size_t)n * dim);
    void *dy = check_cuda_dev(NULL, 2 * (size_t)n * dim);
    int32_t *drows = check_cuda_dev(rows, sizeof rows);
    ck_assert_int_eq(ops_cuda_rmsnorm_bf16(dx, NULL, dw, dy, n, dim, 1e-5f, NULL), 0);
    back(out, dy, 2 * (size_t)n * dim);
    for (int i = 0; i < n * dim; i++)
        ck_assert_msg(fabsf(f32_of(out[i]) - ref[i]) <= 4e-3f * fabsf(ref[i]) + 1e-6f, "rmsnorm [%d]: %g vs %g", i,
                      f32_of(out[i]), ref[i]);
    ck_assert_int_eq(ops_cuda_rmsnorm_bf16(dx, drows, dw, dy, 5, dim, 1e-5f, NULL), 0); // gathered rows
    back(out, dy, 2 * (size_t)5 * dim);
    for (int r = 0; r < 5; r++)
        for (int i = 0; i < dim; i++) {
            const float want = ref[(size_t)rows[r] * dim + i];
            ck_assert(fabsf(f32_of(out[(size_t)r * dim + i]) - want) <= 4e-3f * fabsf(want) + 1e-6f);
        }
    /* embedding: rows of a bf16 table, scaled */
    uint16_t *table = malloc(2 * (size_t)V * dim);
    for (int i = 0; i < V * dim; i++) table[i] = bf16_of(frand());
    int32_t tok[4] = {49, 0, 7, 49};
    void *dt = check_cuda_dev(table, 2 * (size_t)V * dim);
    int32_t *dtok = check_cuda_dev(tok, sizeof tok);
    ck_assert_int_eq(ops_cuda_embed(dt, dtok, 4, dim, 2.5f, dx, NULL), 0);
    back(x, dx, sizeof(float) * 4 * dim);
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < dim; i++) ck_assert(x[t * dim + i] == f32_of(table[(size_t)tok[t] * dim + i]) * 2.5f);
    /* SwiGLU against ops_swiglu */
    float *gu = malloc(sizeof(float) * n * 2 * ff), *g = malloc(sizeof(float) * n * ff),
          *u = malloc(sizeof(float) * n * ff);
    for (int r = 0; r < n; r++)
        for (int i = 0; i < ff; i++) {
            g[r * ff + i] = gu[(size_t)r * 2 * ff + i] = frand() * 8.0f;
            u[r * ff + i] = gu[(size_t)r * 2 * ff + ff + i] = frand() * 3.0f;
        }
    ops_swiglu(g, u, (size_t)n * ff);
    float *dgu = check_cuda_dev(gu, sizeof(float) * n * 2 * ff);
    void *dh = check_cuda_dev(NULL, 2 * (size_t)n * ff);
    ck_assert_int_eq(ops_cuda_swiglu(dgu, dh, n, ff, NULL), 0);
    uint16_t *h = malloc(2 * (size_t)n * ff);
    back(h, dh, 2 * (size_t)n * ff);
    for (int i = 0; i < n * ff; i++)
        ck_assert_msg(fabsf(f32_of(h[i]) - g[i]) <= 4e-3f * fabsf(g[i]) + 1e-5f, "swiglu [%d]: %g vs %g", i,
                      f32_of(h[i]), g[i]);
    cudaFree(dx), cudaFree(dw), cudaFree(dy), cudaFree(drows), cudaFree(dt), cudaFree(dtok), cudaFree(dgu),
        cudaFree(dh);
    free(x), free(w), free(ref), free(out), free(table), free(gu), free(g), free(u), free(h);
}
END_TEST

/* Gemma 3's elementwise kernels against the CPU ops: GeGLU (tanh GELU), the
 * post-norm added into the residual, logit soft-capping. */
START_TEST(test_gemma_ops) {
    const int n = 29, dim = 640, ff = 517;
    float *gu = malloc(sizeof(float) * n * 2 * ff), *g = malloc(sizeof(float) * n * ff),
          *u = malloc(sizeof(float) * n * ff);
    for (int r = 0; r < n; r++)
        for (int i = 0; i < ff; i++) {
            g[r * ff + i] = gu[(size_t)r * 2 * ff + i] = frand() * 6.0f;
            u[r * ff + i] = gu[(size_t)r * 2 * ff + ff + i] = frand() * 3.0f;
        }
    ops_geglu_tanh(g, u, (size_t)n * ff);
    float *dgu = check_cuda_dev(gu, sizeof(float) * n * 2 * ff);
    void *dh = check_cuda_dev(NULL, 2 * (size_t)n * ff);
    ck_assert_int_eq(ops_cuda_geglu(dgu, dh, n, ff, NULL), 0);
    uint16_t *h = malloc(2 * (size_t)n * ff);
    back(h, dh, 2 * (size_t)n * ff);
    for (int i = 0; i < n * ff; i++)
        ck_assert_msg(fabsf(f32_of(h[i]) - g[i]) <= 4e-3f * fabsf(g[i]) + 1e-5f, "geglu [%d]: %g vs %g", i,
                      f32_of(h[i]), g[i]);
    /* x += rmsnorm(y) * w */
    float *x = malloc(sizeof(float) * n * dim), *y = malloc(sizeof(float) * n * dim), *w = malloc(sizeof(float) * dim),
          *ref = malloc(sizeof(float) * n * dim), *got = malloc(sizeof(float) * n * dim);
    for (int i = 0; i < n * dim; i++) x[i] = frand() * 5.0f, y[i] = frand() * (i % 61 == 0 ? 100.0f : 3.0f);
    for (int i = 0; i < dim; i++) w[i] = frand() + 1.0f;
    ops_rmsnorm(ref, y, w, n, dim, 1e-6f);
    for (int i = 0; i < n * dim; i++) ref[i] += x[i];
    float *dx = check_cuda_dev(x, sizeof(float) * n * dim), *dy = check_cuda_dev(y, sizeof(float) * n * dim),
          *dw = check_cuda_dev(w, sizeof(float) * dim);
    ck_assert_int_eq(ops_cuda_rmsnorm_add(dx, dy, dw, n, dim, 1e-6f, NULL), 0);
    back(got, dx, sizeof(float) * n * dim);
    for (int i = 0; i < n * dim; i++)
        ck_assert_msg(fabsf(got[i] - ref[i]) <= 1e-5f * (fabsf(ref[i]) + 1.0f), "rmsnorm_add [%d]: %g vs %g", i, got[i],
                      ref[i]);
    /* soft-capping, in place */
    for (int i = 0; i < n * dim; i++) y[i] = frand() * 80.0f;
    ck_assert_int_eq(cudaMemcpy(dy, y, sizeof(float) * n * dim, cudaMemcpyHostToDevice), cudaSuccess);
    ck_assert_int_eq(ops_cuda_softcap(dy, (size_t)n * dim, 30.0f, NULL), 0);
    ck_assert_int_eq(ops_cuda_softcap(dy, 4, 0.0f, NULL), LC_EINVAL);
    back(got, dy, sizeof(float) * n * dim);
    ops_softcap(y, (size_t)n * dim, 30.0f);
    for (int i = 0; i < n * dim; i++) ck_assert(fabsf(got[i] - y[i]) <= 1e-5f * (fabsf(y[i]) + 1.0f));
    cudaFree(dgu), cudaFree(dh), cudaFree(dx), cudaFree(dy), cudaFree(dw);
    free(gu), free(g), free(u), free(h), free(x), free(y), free(w), free(ref), free(got);
}
END_TEST

/* RoPE (both pairings, positions past the table; with QK-norm before it),
 * q to its permuted row, K and V into shuffled pages of a poisoned cache. */
START_TEST(test_qkv_post) {
    for (int mode = 0; mode < 3; mode++) {
        const int neox = mode % 2, qkn = mode == 2; // QK-norm: Gemma 3's NEOX halves
        const int H = 6, KH = 2, d = 64, rot = 48, P = 64, n_pages = 5, n = 11;
        const int QKVD = (H + 2 * KH) * d;
        ops_rope_t rope;
        ck_assert_int_eq(ops_rope_init(&rope, rot, 100, 10000.0f, 1.0f), 0);
        float *qkv = malloc(sizeof(float) * n * QKVD);
        for (int i = 0; i < n * QKVD; i++) qkv[i] = frand() * 3.0f;
        int64_t pos[11] = {0, 1, 63, 64, 99, 100, 101, 4000, 17, 5, 70};
        int32_t perm[11], page[11], slot[11];
        for (int t = 0; t < n; t++) {
            perm[t] = (t * 7) % n; // a permutation of 0..10
            page[t] = (int32_t)((t * 3 + 1) % n_pages);
            slot[t] = (int32_t)(t * 5 % P);
        }
        /* CPU: rope q and k in place on a copy */
        float *cq = malloc(sizeof(float) * n * H * d), *ck = malloc(sizeof(float) * n * KH * d);
        for (int t = 0; t < n; t++) {
            memcpy(cq + (size_t)t * H * d, qkv + (size_t)t * QKVD, sizeof(float) * H * d);
            memcpy(ck + (size_t)t * KH * d, qkv + (size_t)t * QKVD + H * d, sizeof(float) * KH * d);
        }
        float qw[64], kw[64];
        for (int c = 0; c < d; c++) qw[c] = frand() + 1.0f, kw[c] = frand() + 1.0f;
        if (qkn) {
            ops_rmsnorm_heads(cq, qw, n, H, d, 1e-6f);
            ops_rmsnorm_heads(ck, kw, n, KH, d, 1e-6f);
        }
        ops_rope(&rope, cq, n, pos, H, d, neox);
        ops_rope(&rope, ck, n, pos, KH, d, neox);
        float *dqw = check_cuda_dev(qw, sizeof qw), *dkw = check_cuda_dev(kw, sizeof kw);
        const size_t cache_elems = (size_t)n_pages * KH * P * d;
        uint16_t *poison = malloc(2 * cache_elems);
        for (size_t i = 0; i < cache_elems; i++) poison[i] = 0x7fc1; // NaN
        float *dqkv = check_cuda_dev(qkv, sizeof(float) * n * QKVD);
        int64_t *dpos = check_cuda_dev(pos, sizeof pos);
        int32_t *dperm = check_cuda_dev(perm, sizeof perm), *dpage = check_cuda_dev(page, sizeof page),
                *dslot = check_cuda_dev(slot, sizeof slot);
        float *dcos = check_cuda_dev(rope.cos, sizeof(float) * 100 * rot / 2),
              *dsin = check_cuda_dev(rope.sin, sizeof(float) * 100 * rot / 2);
        void *dq = check_cuda_dev(NULL, 2 * (size_t)n * H * d), *dk = check_cuda_dev(poison, 2 * cache_elems),
             *dv = check_cuda_dev(poison, 2 * cache_elems);
        ops_cuda_qkv_t p = {H, KH, d, rot, neox, 100, 10000.0f, 1.0f, dq, dk, dv, P, NULL, NULL, 1e-6f};
        if (qkn) p.q_norm = dqw, p.k_norm = dkw;
        ck_assert_int_eq(ops_cuda_qkv_post(dqkv, n, dpos, dperm, dpage, dslot, dcos, dsin, &p, NULL), 0);
        uint16_t *gq = malloc(2 * (size_t)n * H * d), *gk = malloc(2 * cache_elems), *gv = malloc(2 * cache_elems);
        back(gq, dq, 2 * (size_t)n * H * d);
        back(gk, dk, 2 * cache_elems);
        back(gv, dv, 2 * cache_elems);
        for (int t = 0; t < n; t++) {
            for (int i = 0; i < H * d; i++) {
                const float want = cq[(size_t)t * H * d + i], have = f32_of(gq[(size_t)perm[t] * H * d + i]);
                ck_assert_msg(fabsf(have - want) <= 4e-3f * fabsf(want) + 2e-5f * (1 + (pos[t] >= 100) * 10),
                              "neox %d q t %d [%d]: %g vs %g", neox, t, i, have, want);
            }
            for (int h = 0; h < KH; h++)
                for (int c = 0; c < d; c++) {
                    const size_t at = (((size_t)page[t] * KH + h) * P + slot[t]) * d + c;
                    const float wk = ck[((size_t)t * KH + h) * d + c];
                    const float wv = qkv[(size_t)t * QKVD + (H + KH + h) * d + c];
                    ck_assert_msg(fabsf(f32_of(gk[at]) - wk) <= 4e-3f * fabsf(wk) + 2e-4f, "k t %d h %d c %d", t, h, c);
                    ck_assert(fabsf(f32_of(gv[at]) - wv) <= 4e-3f * fabsf(wv));
                }
        }
        ops_rope_fini(&rope);
        cudaFree(dqkv), cudaFree(dpos), cudaFree(dperm), cudaFree(dpage), cudaFree(dslot), cudaFree(dcos);
        cudaFree(dsin), cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dqw), cudaFree(dkw);
        free(qkv), free(cq), free(ck), free(poison), free(gq), free(gk), free(gv);
    }
}
END_TEST

/* ---- matmul ----------------------------------------------------------------------------------- */
/* Both batch-invariant modes (_i + 1): OPS_GEMM_INVARIANT_WIDE, _SPLIT. */
START_TEST(test_gemm) {
    const int n = 1000, k = 576, ms[] = {1, 3, 64, 300};
    ops_cuda_gemm_t *g;
    ck_assert_int_eq(ops_cuda_gemm_create((size_t)32 << 20, (ops_cuda_gemm_mode_t)(_i + 1), &g), 0);
    uint16_t *A = malloc(2 * (size_t)300 * k), *W = malloc(2 * (size_t)n * k);
    for (int i = 0; i < 300 * k; i++) A[i] = bf16_of(frand());
    for (int i = 0; i < n * k; i++) W[i] = bf16_of(frand() * 0.1f);
    void *dA = check_cuda_dev(A, 2 * (size_t)300 * k), *dW = check_cuda_dev(W, 2 * (size_t)n * k);
    float *dD = check_cuda_dev(NULL, sizeof(float) * 300 * n), *D = malloc(sizeof(float) * 300 * n);
    float *full = malloc(sizeof(float) * 300 * n);
    ck_assert_int_eq(ops_cuda_gemm(g, 300, n, k, dA, dW, dD, 1, 0, NULL), 0);
    back(full, dD, sizeof(float) * 300 * n);
    for (int r = 0; r < 300; r += 37)
        for (int j = 0; j < n; j += 13) {
            double ref = 0, mag = 0;
            for (int i = 0; i < k; i++) {
                ref += (double)f32_of(A[(size_t)r * k + i]) * f32_of(W[(size_t)j * k + i]);
                mag += fabs((double)f32_of(A[(size_t)r * k + i]) * f32_of(W[(size_t)j * k + i]));
            }
            ck_assert_msg(fabs(full[r * n + j] - ref) <= 1e-5 * mag + 1e-6, "[%d,%d] %g vs %g", r, j, full[r * n + j],
                          ref);
        }
    /* the same rows in calls of other sizes: bitwise equal (deterministic mode) */
    for (size_t t = 0; t < sizeof ms / sizeof ms[0]; t++) {
        const int m = ms[t], r0 = 300 - m;
        ck_assert_int_eq(ops_cuda_gemm(g, m, n, k, (char *)dA + 2 * (size_t)r0 * k, dW, dD, 1, 0, NULL), 0);
        back(D, dD, sizeof(float) * m * n);
        ck_assert_msg(memcmp(D, full + (size_t)r0 * n, sizeof(float) * m * n) == 0,
                      "rows %d.. in a call of %d rows differ from the 300-row call", r0, m);
    }
    /* accumulate into an f32 D */
    ck_assert_int_eq(ops_cuda_gemm(g, 300, n, k, dA, dW, dD, 1, 1, NULL), 0);
    back(D, dD, sizeof(float) * 300 * n);
    for (int i = 0; i < 300 * n; i += 101) ck_assert(fabsf(D[i] - 2 * full[i]) <= 1e-5f * fabsf(full[i]) + 1e-6f);
    ops_cuda_gemm_destroy(g);
    cudaFree(dA), cudaFree(dW), cudaFree(dD);
    free(A), free(W), free(D), free(full);
}
END_TEST

/* Row argmax against the host's greedy rule: ties to the lowest index, NaN
 * below everything, -1 for a row with nothing above -inf; rows of 49152 and
 * 7 values. */
START_TEST(test_argmax) {
    const int R = 6;
    const int cols_of[2] = {49152, 7};
    for (int ci = 0; ci < 2; ci++) {
        const int C = cols_of[ci];
        float *x = malloc(sizeof(float) * R * C);
        uint32_t st = 99;
        for (int i = 0; i < R * C; i++) {
            st = st * 1664525u + 1013904223u;
            x[i] = (float)((st >> 9) % 1000) / 100.0f; // many ties
        }
        for (int c = 0; c < C; c++) x[1 * C + c] = NAN; // all NaN
        for (int c = 0; c < C; c++) x[2 * C + c] = -INFINITY;
        x[3 * C + C - 1] = 1e9f, x[3 * C + C / 2] = 1e9f, x[3 * C + 0] = NAN; // a tie of the largest
        for (int c = 0; c < C; c++) x[4 * C + c] = c % 2 ? NAN : 5.0f;        // NaN between equal values
        float *dx = check_cuda_dev(x, sizeof(float) * R * C);
        int32_t *dout = check_cuda_dev(NULL, sizeof(int32_t) * R), out[6];
        ck_assert_int_eq(ops_cuda_argmax_rows(dx, R, C, dout, NULL), 0);
        back(out, dout, sizeof out);
        for (int r = 0; r < R; r++) {
            int32_t best = -1;
            float bv = -INFINITY;
            for (int c = 0; c < C; c++)
                if (x[r * C + c] > bv) bv = x[r * C + c], best = c;
            ck_assert_msg(out[r] == best, "argmax row %d of %d: GPU %d, host %d", r, C, out[r], best);
        }
        cudaFree(dx), cudaFree(dout);
        free(x);
    }
}
END_TEST

/* A draw at a temperature against the host sampler's rule computed in
 * double in id order: the same token unless u × total falls within a
 * rounding of a boundary (then the neighbour is allowed); -1 for a row with
 * nothing allowed; rows with inv_t 0 untouched. */
START_TEST(test_sample_rows) {
    const int R = 64, C = 49152;
    float *x = malloc(sizeof(float) * R * C), invt[64];
    double u[64];
    uint32_t st = 7;
    for (int i = 0; i < R * C; i++) {
        st = st * 1664525u + 1013904223u;
        x[i] = (float)((int)(st >> 8) % 20000) / 1000.0f - 10.0f;
    }
    for (int r = 0; r < R; r++) {
        invt[r] = r % 8 == 7 ? 0.0f : 1.0f / (0.3f + 0.1f * (float)(r % 8));
        st = st * 1664525u + 1013904223u;
        u[r] = (double)(st >> 8) / 16777216.0;
    }
    for (int c = 0; c < C; c++) x[3 * C + c] = -INFINITY;     // nothing allowed
    for (int c = 0; c < C; c += 2) x[5 * C + c] = NAN;        // half NaN
    for (int c = 0; c < C - 1; c++) x[9 * C + c] = -INFINITY; // one allowed, the last
    u[10] = 0.999999999;                                      // the tail
    float *dx = check_cuda_dev(x, sizeof(float) * R * C), *dinvt = check_cuda_dev(invt, sizeof invt);
    double *du = check_cuda_dev(u, sizeof u);
    int32_t init[64], out[64];
    for (int r = 0; r < R; r++) init[r] = -7;
    int32_t *dout = check_cuda_dev(init, sizeof init);
    ck_assert_int_eq(ops_cuda_sample_rows(dx, R, C, dinvt, du, dout, NULL), 0);
    back(out, dout, sizeof out);
    int exact = 0;
    for (int r = 0; r < R; r++) {
        if (!(invt[r] > 0)) {
            ck_assert_int_eq(out[r], -7);
            continue;
        }
        const float *row = x + (size_t)r * C;
        float mx = -INFINITY;
        int last = -1;
        for (int c = 0; c < C; c++)
            if (!isnan(row[c]) && row[c] != -INFINITY) mx = fmaxf(mx, row[c] * invt[r]), last = c;
        if (last < 0) {
            ck_assert_int_eq(out[r], -1);
            continue;
        }
        double tot = 0;
        for (int c = 0; c < C; c++)
            if (!isnan(row[c]) && row[c] != -INFINITY) tot += expf(row[c] * invt[r] - mx);
        const double target = u[r] * tot;
        double acc = 0, before = 0;
        int tok = last;
        for (int c = 0; c < C; c++)
            if (!isnan(row[c]) && row[c] != -INFINITY) {
                before = acc;
                acc += expf(row[c] * invt[r] - mx);
                if (target < acc) {
                    tok = c;
                    break;
                }
            }
        const double slack = 1e-9 * tot;
        const int near = target - before < slack || acc - target < slack;
        ck_assert_msg(out[r] == tok || near, "draw row %d: GPU %d, host %d", r, out[r], tok);
        ck_assert_msg(out[r] >= 0 && out[r] < C && !isnan(row[out[r]]) && row[out[r]] != -INFINITY,
                      "draw row %d picked a banned id %d", r, out[r]);
        exact += out[r] == tok;
    }
    fprintf(stderr, "check_cuda: temperature draws equal to the host's rule: %d rows\n", exact);
    cudaFree(dx), cudaFree(dinvt), cudaFree(du), cudaFree(dout);
    free(x);
}
END_TEST

/* ---- the executor --------------------------------------------------------------------------- */
typedef struct {
    model_exec_t *e;
    kv_pool_t *kv;
} rig_t;

/* keep: 1 keeps every position of the sliding layers (one layer group). */
static rig_t rig_keep(const model_t *m, const char *device, int max_tokens, int keep) {
    char err[256];
    model_exec_opts_t o = {
        .device = device, .max_batch_tokens = max_tokens, .kv_blocks = 64, .kv_bytes = 0, .kv_keep_sliding = keep};
    rig_t r;
    r.e = model_exec_create(m, &o, err, sizeof err);
    ck_assert_msg(r.e != NULL, "%s: %s", device, err);
    kv_config_t c = model_exec_kv_config(r.e);
    r.kv = kv_pool_create(&c);
    ck_assert_ptr_nonnull(r.kv);
    ck_assert_int_eq(model_exec_bind(r.e, r.kv), 0);
    return r;
}
static rig_t rig(const model_t *m, const char *device, int max_tokens) { return rig_keep(m, device, max_tokens, 0); }
static void rig_free(rig_t *r) {
    kv_pool_destroy(r->kv);
    model_exec_destroy(r->e);
}

/* n tokens of one sequence at pos0 (reserving blocks), logits of every row. */
static void run(rig_t *r, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int generated, float *logits) {
    cp_exec_forward(r->e, r->kv, s, tok, n, pos0, generated, 0, NULL, logits);
}

/* Largest |a - b| over rows, relative to each row's largest |b|; and the
 * share of rows whose argmax agrees. */
void check_cuda_compare(const float *a, const float *b, int rows, int V, double *rel, double *top1);
void check_cuda_compare(const float *a, const float *b, int rows, int V, double *rel, double *top1) {
    *rel = 0;
    int agree = 0;
    for (int r = 0; r < rows; r++) {
        const float *x = a + (size_t)r * V, *y = b + (size_t)r * V;
        double mx = 0, d = 0;
        int ax = 0, ay = 0;
        for (int i = 0; i < V; i++) {
            mx = fmax(mx, fabs(y[i]));
            d = fmax(d, fabs((double)x[i] - y[i]));
            if (x[i] > x[ax]) ax = i;
            if (y[i] > y[ay]) ay = i;
        }
        *rel = fmax(*rel, d / (mx > 0 ? mx : 1));
        agree += ax == ay;
    }
    *top1 = (double)agree / rows;
}

model_t *check_cuda_tiny(uint32_t type, int n_heads, int n_kv_heads, int n_embd);
model_t *check_cuda_tiny(uint32_t type, int n_heads, int n_kv_heads, int n_embd) {
    static char path[64];
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    o.type = type;
    o.n_layers = 3;
    o.n_embd = n_embd;
    o.n_heads = n_heads;
    o.n_kv_heads = n_kv_heads;
    o.n_ff = 2 * n_embd;
    o.seed = 5;
    strcpy(path, "/tmp/check_cuda_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char err[256];
    ck_assert_msg(mkmodel_write(&o, path, err, sizeof err) == 0, "%s", err);
    model_t *m = model_load(path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    unlink(path);
    return m;
}

/* A tiny Gemma 3 (tests/tinymodel.c) of n_layers, every swa_pattern-th
 * global, the others sliding over 96 positions: head_dim 256 on one KV head,
 * QK-norm, post-norms, GeGLU, scaled embeddings, logits soft-capped at 30. */
static model_t *tiny_gemma(const char *name, int n_layers, int swa_pattern, uint64_t seed) {
    const tiny_opts_t o = {.name = name,
                           .n_layers = n_layers,
                           .n_embd = 512,
                           .n_heads = 2,
                           .n_kv_heads = 1,
                           .n_ff = 1024,
                           .n_ctx = 4096,
                           .seed = seed,
                           .qk_std = 2.0f,
                           .window = 96,
                           .swa_pattern = swa_pattern,
                           .final_softcap = 30.0f};
    return tiny_model_load(&o);
}

/* 3 layers: 0 and 1 sliding, 2 global. */
model_t *check_cuda_tiny_gemma(void);
model_t *check_cuda_tiny_gemma(void) { return tiny_gemma("tiny-gemma3", 3, 3, 9); }

/* 6 layers, 1, 3 and 5 global (one sliding layer group). */
model_t *check_cuda_tiny_gemma6(void);
model_t *check_cuda_tiny_gemma6(void) { return tiny_gemma("tiny-gemma3-6", 6, 2, 13); }

/* A tiny model through both executors (head_dim 64, then 128, then the tiny
 * Gemma 3): a 150-token prompt in uneven chunks and 20 generated rows (past
 * Gemma's window); the GPU alone vs batched bitwise. */
START_TEST(test_tiny_executor) {
    model_t *m = _i == 0   ? check_cuda_tiny(GGML_TYPE_F32, 4, 2, 256)
                 : _i == 1 ? check_cuda_tiny(GGML_TYPE_Q8_0, 4, 1, 512)
                           : check_cuda_tiny_gemma();
    const int V = model_hparams(m)->n_vocab, N = 150, G = 20;
    int32_t tok[170];
    for (int i = 0; i < N + G; i++) tok[i] = (int32_t)((i * 7919u + 13) % (unsigned)V);
    float *cpu = malloc(sizeof(float) * (N + G) * V), *gpu = malloc(sizeof(float) * (N + G) * V);
    ops_mm_set_q8(0); // the CPU's exact arithmetic as the reference
    rig_t rc = rig(m, "cpu", 256), rg = rig(m, "cuda:0", 256);
    kv_seq_t sc, sg;
    kv_seq_init(&sc), kv_seq_init(&sg);
    run(&rc, &sc, tok, N, 0, 0, cpu);
    run(&rc, &sc, tok + N, G, N, 1, cpu + (size_t)N * V);
    const int cuts[] = {0, 1, 64, 65, 100, N};
    for (int i = 0; i + 1 < 6; i++)
        run(&rg, &sg, tok + cuts[i], cuts[i + 1] - cuts[i], cuts[i], 0, gpu + (size_t)cuts[i] * V);
    for (int g = 0; g < G; g++) run(&rg, &sg, tok + N + g, 1, N + g, 1, gpu + (size_t)(N + g) * V);
    double rel, top1;
    check_cuda_compare(gpu, cpu, N + G, V, &rel, &top1);
    fprintf(stderr,
            "check_cuda: tiny model (head_dim %d) GPU vs CPU: max relative logit error %.2e, top-1 agreement %.3f\n",
            model_hparams(m)->head_dim, rel, top1);
    ck_assert_msg(rel < 3e-2, "GPU vs CPU relative logit error %g", rel);
    ck_assert_msg(top1 >= 0.95, "GPU vs CPU top-1 agreement %g", top1);
    /* the same rows batched with another sequence: bitwise equal */
    kv_seq_t s1, s2;
    kv_seq_init(&s1), kv_seq_init(&s2);
    ck_assert_int_eq(kv_seq_reserve(rg.kv, &s1, N), 0);
    ck_assert_int_eq(kv_seq_reserve(rg.kv, &s2, 90), 0);
    int32_t bt[N + 90];
    memcpy(bt, tok + 30, 90 * sizeof(int32_t));
    memcpy(bt + 90, tok, N * sizeof(int32_t));
    float *l1 = malloc(sizeof(float) * N * V), *l2 = malloc(sizeof(float) * 90 * V);
    model_seq_t qs[2] = {
        {.tok0 = 0, .n_tok = 90, .pos0 = 0, .kv = &s2, .logits_mode = MODEL_LOGITS_ALL, .logits = l2},
        {.tok0 = 90, .n_tok = N, .pos0 = 0, .kv = &s1, .logits_mode = MODEL_LOGITS_ALL, .logits = l1},
    };
    model_batch_t b = {.n_tokens = N + 90, .tokens = bt, .n_seqs = 2, .seqs = qs};
    ck_assert_int_eq(model_exec_forward(rg.e, rg.kv, &b), 0);
    kv_seq_t alone;
    kv_seq_init(&alone);
    run(&rg, &alone, tok, N, 0, 0, gpu);
    ck_assert_msg(memcmp(l1, gpu, sizeof(float) * N * V) == 0, "GPU: a prompt batched differs from it alone");
    /* the last row asked for its argmax only: the index of that row's largest logit */
    {
        kv_seq_t s3;
        kv_seq_init(&s3);
        ck_assert_int_eq(kv_seq_reserve(rg.kv, &s3, N), 0);
        int32_t am = -2;
        float *scratch = calloc((size_t)V, sizeof(float));
        model_seq_t q3 = {.tok0 = 0,
                          .n_tok = N,
                          .pos0 = 0,
                          .kv = &s3,
                          .logits_mode = MODEL_LOGITS_LAST,
                          .logits = scratch,
                          .argmax = &am};
        model_batch_t b3 = {.n_tokens = N, .tokens = tok, .n_seqs = 1, .seqs = &q3};
        ck_assert_int_eq(model_exec_forward(rg.e, rg.kv, &b3), 0);
        const float *last = gpu + (size_t)(N - 1) * V;
        int32_t best = 0;
        for (int i = 1; i < V; i++)
            if (last[i] > last[best]) best = i;
        ck_assert_msg(am == best, "GPU argmax-only row: %d, the row's argmax %d", am, best);
        kv_seq_release(rg.kv, &s3);
        free(scratch);
    }
    kv_seq_release(rg.kv, &s1), kv_seq_release(rg.kv, &s2), kv_seq_release(rg.kv, &alone);
    kv_seq_release(rc.kv, &sc), kv_seq_release(rg.kv, &sg);
    rig_free(&rc), rig_free(&rg);
    ops_mm_set_q8(1);
    free(cpu), free(gpu), free(l1), free(l2);
    model_free(m);
}
END_TEST

/* The tiny Gemma 3's sliding layers keep only their windows in the GPU's
 * store (its layer groups, kv.h): a 700-token prompt in uneven chunks and
 * 40 generated rows give the bits of the store that keeps every position,
 * while each sliding group has released the blocks its window left (and the
 * pool handed them out again for later positions). */
START_TEST(test_gemma_windows) {
    model_t *m = check_cuda_tiny_gemma();
    const int V = model_hparams(m)->n_vocab, N = 700, G = 40;
    int32_t tok[740];
    for (int i = 0; i < N + G; i++) tok[i] = (int32_t)((i * 7919u + 29) % (unsigned)V);
    rig_t rk = rig_keep(m, "cuda:0", 256, 1), rw = rig_keep(m, "cuda:0", 256, 0);
    const kv_config_t ck = model_exec_kv_config(rk.e), cw = model_exec_kv_config(rw.e);
    ck_assert_int_eq(kv_config_groups(&ck), 1);
    ck_assert_int_eq(kv_config_groups(&cw), 3); // the global layer, then each sliding layer
    ck_assert_int_eq(cw.n_full_groups, 1);
    ck_assert_int_eq(cw.n_blocks, 3 * ck.n_blocks);
    float *lk = malloc(sizeof(float) * (N + G) * V), *lw = malloc(sizeof(float) * (N + G) * V);
    rig_t *rigs[2] = {&rk, &rw};
    float *outs[2] = {lk, lw};
    kv_seq_t seqs[2];
    const int cuts[] = {0, 1, 130, 257, 400, 577, N};
    for (int k = 0; k < 2; k++) {
        kv_seq_init(&seqs[k]);
        for (int i = 0; i + 1 < 7; i++)
            run(rigs[k], &seqs[k], tok + cuts[i], cuts[i + 1] - cuts[i], cuts[i], 0, outs[k] + (size_t)cuts[i] * V);
        for (int g = 0; g < G; g++) run(rigs[k], &seqs[k], tok + N + g, 1, N + g, 1, outs[k] + (size_t)(N + g) * V);
    }
    ck_assert_msg(memcmp(lk, lw, sizeof(float) * (N + G) * V) == 0,
                  "GPU: the windowed store's logits differ from the store that keeps every position");
    const int P = cw.block_size, global = (N + G + P - 1) / P;
    const int64_t window_blocks = (cw.swa_keep + P - 1) / P + 2; // a window and the step's own block
    fprintf(stderr, "check_cuda: tiny Gemma 3, %d positions: %lld blocks of one layer held (every position: %d)\n",
            N + G, (long long)kv_pool_n_used(rw.kv), 3 * global);
    ck_assert_int_gt(seqs[1].swa_lo, 0);
    ck_assert_int_le(kv_pool_n_used(rw.kv), global + 2 * window_blocks);
    kv_seq_release(rk.kv, &seqs[0]), kv_seq_release(rw.kv, &seqs[1]);
    ck_assert_int_eq(kv_pool_n_used(rw.kv), 0);
    rig_free(&rk), rig_free(&rw);
    free(lk), free(lw);
    model_free(m);
}
END_TEST

/* The real model, teacher-forced: 5 prompts x 256 positions through both
 * executors (the CPU's exact arithmetic): top-1 agreement >= 98% and logits
 * within bf16 tolerance. */
static const char *g_model;
START_TEST(test_real_model_teacher_forced) {
    char err[256];
    model_t *m = model_load(g_model, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    const tok_t *tk = model_tok(m);
    const int V = model_hparams(m)->n_vocab, N = 256;
    /* natural text: the positions where the model is confident, as in use */
    static const char *texts[5] = {
        "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg, a goldsm"
        "ith from Mainz, combined several existing technologies into a practical system for producing books. "
        "Movable type had been used in East Asia for centuries, but Gutenberg's metal alloy, his hand mould f"
        "or casting letters quickly and accurately, and his oil-based ink made the process fast enough to cha"
        "nge the economics of writing. Before the press, a single copy of a long book could take a scribe man"
        "y months. Within fifty years of the first printed Bible, millions of volumes had been produced acros"
        "s Europe, and printing shops had opened in more than two hundred cities. The consequences reached fa"
        "r beyond the book trade. Scholars could compare identical copies of a text, errors could be correcte"
        "d in later editions, and ideas travelled faster than any censor could follow. Pamphlets spread news "
        "of religious and political disputes, and vernacular languages gained standard spellings as printers "
        "chose one form over another. Historians still debate how much the press caused these changes and how"
        " much it merely accelerated them. What is clear is that by the end of the sixteenth century a reader"
        " in almost any European town could buy almanacs, grammars, maps, sermons and scientific treatises at"
        " prices that earlier generations could not have imagined, and that the habit of reading silently and"
        " alone, once rare, had become an ordinary part of daily life for merchants, artisans and their famil"
        "ies.",
        "def quicksort(arr):\n    if len(arr) <= 1:\n        return arr\n    pivot = arr[len(arr) // 2]\n    left"
        " = [x for x in arr if x < pivot]\n    middle = [x for x in arr if x == pivot]\n    right = [x for x in"
        " arr if x > pivot]\n    return quicksort(left) + middle + quicksort(right)\n\n\ndef binary_search(items,"
        " target):\n    lo, hi = 0, len(items) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if"
        " items[mid] == target:\n            return mid\n        if items[mid] < target:\n            lo = mid +"
        " 1\n        else:\n            hi = mid - 1\n    return -1\n\n\nclass Stack:\n    def __init__(self):\n     "
        "   self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n  "
        "      if not self.items:\n            raise IndexError(\"pop from an empty stack\")\n        return self"
        ".items.pop()\n\n    def peek(self):\n        return self.items[-1] if self.items else None\n\n    def __l"
        "en__(self):\n        return len(self.items)\n\n\nif __name__ == \"__main__\":\n    data = [5, 3, 8, 1, 9, 2"
        ", 7]\n    print(quicksort(data))\n    print(binary_search(sorted(data), 8))\n",
        "Photosynthesis is the process by which green plants and some other organisms use sunlight to synthes"
        "ize foods from carbon dioxide and water. In plants it takes place mainly in the leaves, inside small"
        " structures called chloroplasts, which contain the pigment chlorophyll. Chlorophyll absorbs light mo"
        "st strongly in the blue and red parts of the spectrum and reflects green light, which is why leaves "
        "look green to us. The process has two main stages. In the light-dependent reactions, energy from sun"
        "light splits water molecules, releasing oxygen as a by-product and producing energy carriers. In the"
        " second stage, often called the Calvin cycle, those carriers are used to fix carbon dioxide from the"
        " air into sugars. The sugars provide energy for the plant and serve as building blocks for cellulose"
        ", starch and other molecules. Almost all life on Earth depends on photosynthesis, directly or indire"
        "ctly, because it supplies the oxygen we breathe and the organic matter at the base of most food chai"
        "ns. Scientists study the process closely because small improvements in its efficiency could raise cr"
        "op yields, and because artificial systems that imitate it might one day turn sunlight, water and car"
        "bon dioxide directly into fuels. The leaves of a single large tree can fix several kilograms of carb"
        "on on a sunny summer day, and the world's forests and oceans together absorb a large share of the ca"
        "rbon dioxide released by human activity each year, which makes the health of these ecosystems import"
        "ant for the climate as a whole.",
        "User: What is the capital of Australia, and why was it chosen?\nAssistant: The capital of Australia i"
        "s Canberra. When the six colonies federated in 1901, the two largest cities, Sydney and Melbourne, b"
        "oth wanted to be the capital. The compromise written into the constitution was that the capital woul"
        "d be in New South Wales but at least one hundred miles from Sydney, and that Parliament would sit in"
        " Melbourne until a new city was ready. After surveys of several sites, the area that became Canberra"
        " was selected in 1908. An international design competition followed, won by the American architects "
        "Walter Burley Griffin and Marion Mahony Griffin, whose plan arranged the city around a central lake "
        "and a series of geometric axes. Parliament moved there in 1927.\nUser: How large is Canberra today?\nA"
        "ssistant: Canberra is the largest inland city in Australia, with a population of around four hundred"
        " and sixty thousand people. It is home to the national parliament, the High Court, many government d"
        "epartments, national museums and galleries, and the Australian National University.\nUser: Is it a go"
        "od place to visit?\nAssistant: Many visitors enjoy Canberra for its calm atmosphere and its cultural "
        "institutions. The Australian War Memorial, the National Gallery and the National Museum are free to "
        "enter, and the lake is surrounded by walking and cycling paths. In autumn the trees turn red and gol"
        "d, and in spring the city holds a large flower festival.",
        "Once upon a time there was a small robot who lived in a lighthouse by the sea. Every night it climbe"
        "d the spiral stairs, polished the great lens and watched the beam sweep across the dark water. The k"
        "eeper who had built the robot had grown old and now spent most evenings asleep in his chair, so the "
        "robot kept the light burning on its own. It knew every ship that passed: the fishing boats that left"
        " before dawn, the ferry that crossed twice a day, and the tall cargo ships that appeared on the hori"
        "zon like moving islands. One stormy autumn night the power failed. The wind howled around the tower,"
        " rain hammered the windows, and somewhere out in the darkness a ship's horn sounded again and again."
        " The robot searched the storeroom until it found an old oil lamp, carried it up the stairs and set i"
        "t in front of the lens. The light was weak, but the lens gathered it and sent it out across the wave"
        "s. Slowly the ship turned away from the rocks and found the harbour. In the morning the keeper woke "
        "to find the robot sitting beside the lamp, its battery almost empty, still watching the sea. The kee"
        "per said nothing for a long time. Then he made two cups of tea, although the robot could not drink, "
        "and they sat together by the window until the sun was high and the last clouds of the storm had blow"
        "n away."};
    float *cpu = malloc(sizeof(float) * N * V), *gpu = malloc(sizeof(float) * N * V);
    ops_mm_set_q8(0);
    rig_t rc = rig(m, "cpu", N), rg = rig(m, "cuda:0", N);
    double worst_rel = 0, sum_top1 = 0;
    for (int p = 0; p < 5; p++) {
        tok_ids_t ids = {0};
        ck_assert_int_eq(tok_encode(tk, texts[p], strlen(texts[p]), tok_add_bos(tk), 0, &ids), 0);
        ck_assert_msg(ids.n >= (size_t)N, "text %d has %zu tokens, fewer than %d", p, ids.n, N);
        int32_t seq[256];
        memcpy(seq, ids.ids, sizeof seq);
        tok_ids_free(&ids);
        kv_seq_t sc, sg;
        kv_seq_init(&sc), kv_seq_init(&sg);
        run(&rc, &sc, seq, N, 0, 0, cpu);
        run(&rg, &sg, seq, N, 0, 0, gpu);
        kv_seq_release(rc.kv, &sc), kv_seq_release(rg.kv, &sg);
        double rel, top1;
        check_cuda_compare(gpu, cpu, N, V, &rel, &top1);
        fprintf(stderr, "check_cuda: prompt %d: max relative logit error %.2e, top-1 agreement %.3f\n", p, rel, top1);
        worst_rel = fmax(worst_rel, rel);
        sum_top1 += top1;
    }
    ck_assert_msg(sum_top1 / 5 >= 0.98, "top-1 agreement %.3f < 0.98", sum_top1 / 5);
    ck_assert_msg(worst_rel < 5e-2, "relative logit error %g", worst_rel);
    rig_free(&rc), rig_free(&rg);
    ops_mm_set_q8(1);
    free(cpu), free(gpu);
    model_free(m);
}
END_TEST

int main(void) {
    /* One process: CUDA does not survive a fork after the device count
     * initialised it, and test_device_lost must come last. */
    setenv("CK_FORK", "no", 1);
    char why[256] = "";
    if (lc_device_count(why, sizeof why) <= 0) {
        fprintf(stderr, "SKIP: no usable GPU (%s)\n", why);
        return 77;
    }
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("ops");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_rmsnorm_embed_swiglu);
    tcase_add_test(tc, test_qkv_post);
    tcase_add_test(tc, test_gemma_ops);
    tcase_add_test(tc, test_argmax);
    tcase_add_test(tc, test_sample_rows);
    tcase_add_loop_test(tc, test_gemm, 0, 2);
    tcase_add_loop_test(tc, test_tiny_executor, 0, 3);
    tcase_add_test(tc, test_gemma_windows);
    cuda_sched_add(tc); // check_cuda_sched.c
    if ((g_model = tu_model_path())) tcase_add_test(tc, test_real_model_teacher_forced);
    cuda_cp_add(tc);          // check_cuda_cp.c: context parallelism in the executor
    cuda_device_lost_add(tc); // last: the device is unusable after it
    suite_add_tcase(s, tc);
    return tu_run(s);
}
