/* GPU Check suite for the device communicators of src/attn/cp (run on the
 * GPU machine by tests/gpu/run.sh, step cp; not part of make check).
 *
 * - device-local: N = 1, 2, 3, 4, 8 ranks on one GPU, one host thread each:
 *   a ring of transfers of rank-dependent sizes with several in flight,
 *   all-gather, all-reduce (rank-order sum: the same bits on every rank,
 *   checked against the host's sum), broadcast from every root, all-to-all
 *   of varying sizes, barrier; every buffer read back and checked.
 * - the ring's timing (device-local, N = 2, 4, 8 on one GPU): a Llama-3-8B
 *   layer at 128K tokens sharded N ways; per step each rank sends its KV pack
 *   (K and V of 2C tokens, C = 128K / 2N) round the ring while it runs the
 *   dense prefill kernel on 2C queries over 2C keys (the causal work of one
 *   zig-zag step). Printed: compute and transfer per step alone, and the step
 *   with both overlapped. On one GPU the N ranks share the SMs and HBM, so the
 *   step is N ranks' work; docs/scaling.md uses the one-rank compute.
 * Built with -DCP_WITH_NCCL (check_cp_nccl), the suite is the NCCL backend's
 * instead: the same checks with one rank per visible GPU (one on the H200).
 * Exits 77 (SKIP) without a GPU. */
#include <check.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_comm.h"
#include "attn/cp/cp_comm_cuda.h"
#include "attn/cuda/attn_cuda.h"
#include "common/status.h"

#define CK_CUDA(x)                                                                                                     \
    do {                                                                                                               \
        cudaError_t e_ = (x);                                                                                          \
        ck_assert_msg(e_ == cudaSuccess, "%s: %s", #x, cudaGetErrorString(e_));                                        \
    } while (0)

/* ---- a team of ranks, one host thread each -------------------------------------------- */
typedef int (*rank_fn)(int rank, cp_comm_t *c, void *ud);
typedef struct {
    cp_comm_t *c;
    int device;
    rank_fn fn;
    void *ud;
    int rank, rc;
} member_t;

static void *member_main(void *a) {
    member_t *m = a;
    m->rc = cudaSetDevice(m->device) == cudaSuccess ? m->fn(m->rank, m->c, m->ud) : LC_EDEVICE;
    return NULL;
}

static int team_run(cp_comm_t **comms, const int *devices, int n, rank_fn fn, void *ud) {
    member_t m[CP_MAX_RANKS];
    pthread_t th[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        m[r] = (member_t){comms[r], devices ? devices[r] : 0, fn, ud, r, 0};
        ck_assert_int_eq(pthread_create(&th[r], NULL, member_main, &m[r]), 0);
    }
    int rc = 0;
    for (int r = 0; r < n; r++) {
        pthread_join(th[r], NULL);
        if (!rc) rc = m[r].rc;
    }
    return rc;
}

/* ---- the communicator's checks on device buffers ------------------------------------ */
#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        if (!(x)) {                                                                                                    \
            fprintf(stderr, "rank %d of %d: %s failed (line %d)\n", r, n, #x, __LINE__);                               \
            return -100;                                                                                               \
        }                                                                                                              \
    } while (0)
#define CU(x) CHECK((x) == cudaSuccess)

static int comm_body(int r, cp_comm_t *c, void *ud) {
    const int n = cp_comm_size(c), exact_sum = *(const int *)ud;
    cudaStream_t st = cp_comm_stream(c);
    CHECK(cp_comm_rank(c) == r && st != NULL);
    enum { M = 3, W = 64 };
    int32_t hs[M][W], hr[M][W];
    int32_t *ds, *dr;
    CU(cudaMalloc((void **)&ds, sizeof hs));
    CU(cudaMalloc((void **)&dr, sizeof hr));
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    for (int k = 0; k < M; k++)
        for (int i = 0; i < W; i++) hs[k][i] = r * 1000 + k * 100 + i, hr[k][i] = -1;
    CU(cudaMemcpyAsync(ds, hs, sizeof hs, cudaMemcpyHostToDevice, st));
    CU(cudaMemcpyAsync(dr, hr, sizeof hr, cudaMemcpyHostToDevice, st));
    cp_req_t rq[M];
    for (int k = 0; k < M; k++)
        CHECK(cp_sendrecv_start(c, ds + k * W, sizeof(int32_t) * (size_t)(10 + r + k), nxt, dr + k * W,
                                sizeof(int32_t) * (size_t)(10 + prv + k), prv, &rq[k]) == 0);
    for (int k = M - 1; k >= 0; k--) CHECK(cp_wait(c, &rq[k]) == 0);
    CU(cudaMemcpyAsync(hr, dr, sizeof hr, cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    for (int k = 0; k < M; k++)
        for (int i = 0; i < W; i++) CHECK(hr[k][i] == (i < 10 + prv + k ? prv * 1000 + k * 100 + i : -1));
    /* all-gather */
    double mine[3] = {r, r * 2.5, -r}, all[3 * CP_MAX_RANKS];
    double *dm, *da;
    CU(cudaMalloc((void **)&dm, sizeof mine));
    CU(cudaMalloc((void **)&da, sizeof all));
    CU(cudaMemcpyAsync(dm, mine, sizeof mine, cudaMemcpyHostToDevice, st));
    CHECK(cp_allgather(c, dm, sizeof mine, da) == 0);
    CU(cudaMemcpyAsync(all, da, sizeof(double) * 3 * n, cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    for (int s = 0; s < n; s++) CHECK(all[3 * s] == s && all[3 * s + 1] == s * 2.5 && all[3 * s + 2] == -s);
    /* all-reduce */
    enum { NF = 1000 };
    float v[NF], want[NF], *dv;
    for (int i = 0; i < NF; i++) {
        v[i] = 0.1f * (float)(r + 1) * (float)(i % 7 + 1) + 1e-3f * (float)r;
        want[i] = 0;
        for (int s = 0; s < n; s++) want[i] += 0.1f * (float)(s + 1) * (float)(i % 7 + 1) + 1e-3f * (float)s;
    }
    CU(cudaMalloc((void **)&dv, sizeof v));
    CU(cudaMemcpyAsync(dv, v, sizeof v, cudaMemcpyHostToDevice, st));
    CHECK(cp_allreduce_sum(c, dv, NF) == 0);
    CU(cudaMemcpyAsync(v, dv, sizeof v, cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    for (int i = 0; i < NF; i++)
        CHECK(exact_sum ? memcmp(&v[i], &want[i], sizeof(float)) == 0
                        : fabsf(v[i] - want[i]) <= 1e-5f * fabsf(want[i]));
    /* broadcast from every root */
    for (int root = 0; root < n; root++) {
        int64_t b[4] = {r, r, r, r}, *db;
        CU(cudaMalloc((void **)&db, sizeof b));
        CU(cudaMemcpyAsync(db, b, sizeof b, cudaMemcpyHostToDevice, st));
        CHECK(cp_bcast(c, db, sizeof b, root) == 0);
        CU(cudaMemcpyAsync(b, db, sizeof b, cudaMemcpyDeviceToHost, st));
        CU(cudaStreamSynchronize(st));
        for (int i = 0; i < 4; i++) CHECK(b[i] == root);
        CU(cudaFree(db));
    }
    /* all-to-all of varying sizes */
    int32_t sbuf[4 * CP_MAX_RANKS], rbuf[4 * CP_MAX_RANKS], *dsb, *drb;
    size_t soff[CP_MAX_RANKS], sbytes[CP_MAX_RANKS], roff[CP_MAX_RANKS], rbytes[CP_MAX_RANKS], so = 0, ro = 0;
    for (int s = 0; s < n; s++) {
        const int ns = (r + s) % 3 + 1;
        soff[s] = so * sizeof(int32_t), sbytes[s] = (size_t)ns * sizeof(int32_t);
        roff[s] = ro * sizeof(int32_t), rbytes[s] = (size_t)ns * sizeof(int32_t);
        for (int i = 0; i < ns; i++) sbuf[so + i] = r * 100 + s * 10 + i;
        so += (size_t)ns, ro += (size_t)ns;
    }
    CU(cudaMalloc((void **)&dsb, sizeof sbuf));
    CU(cudaMalloc((void **)&drb, sizeof rbuf));
    CU(cudaMemcpyAsync(dsb, sbuf, sizeof sbuf, cudaMemcpyHostToDevice, st));
    CHECK(cp_alltoallv(c, dsb, soff, sbytes, drb, roff, rbytes) == 0);
    CU(cudaMemcpyAsync(rbuf, drb, sizeof rbuf, cudaMemcpyDeviceToHost, st));
    CU(cudaStreamSynchronize(st));
    for (int s = 0; s < n; s++)
        for (int i = 0; i < (s + r) % 3 + 1; i++) CHECK(rbuf[roff[s] / sizeof(int32_t) + i] == s * 100 + r * 10 + i);
    CHECK(cp_barrier(c) == 0);
    cudaFree(ds), cudaFree(dr), cudaFree(dm), cudaFree(da), cudaFree(dv), cudaFree(dsb), cudaFree(drb);
    return 0;
}

#ifndef CP_WITH_NCCL
START_TEST(test_device_local) {
    const int ns[] = {1, 2, 3, 4, 8}, exact = 1;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        cp_dev_t *g = cp_dev_create(ns[i], 0);
        ck_assert_ptr_nonnull(g);
        cp_comm_t *comms[CP_MAX_RANKS];
        for (int r = 0; r < ns[i]; r++) comms[r] = cp_dev_comm(g, r);
        ck_assert_str_eq(cp_comm_kind(comms[0]), "device");
        ck_assert_int_eq(team_run(comms, NULL, ns[i], comm_body, (void *)&exact), 0);
        cp_dev_destroy(g);
        printf("device-local communicator, %d ranks: ok\n", ns[i]);
    }
}
END_TEST

/* ---- the ring's timing ------------------------------------------------------------------ */
enum { RH = 32, RKH = 8, RD = 128, RPS = 64, RSTEPS_MAX = 8 };
typedef struct {
    int64_t T;             // tokens of the whole prompt
    int compute, transfer; // what the steps do
    float ms_compute[CP_MAX_RANKS], ms_step[CP_MAX_RANKS];
} ring_bench_t;

static int ring_body(int r, cp_comm_t *c, void *ud) {
    ring_bench_t *b = ud;
    const int n = cp_comm_size(c);
    cudaStream_t st = cp_comm_stream(c);
    const int64_t L = 2 * (b->T / (2 * n)); // tokens a rank holds: 2 zig-zag chunks
    const int64_t pages = (L + RPS - 1) / RPS;
    const size_t kv_bytes = (size_t)pages * RKH * RPS * RD * 2; // one of K, V in bf16
    const size_t pack = 2 * kv_bytes;
    void *dq, *dout, *dk, *rb[2];
    CU(cudaMalloc(&dq, (size_t)L * RH * RD * 2));
    CU(cudaMalloc(&dout, (size_t)L * RH * RD * 2));
    CU(cudaMalloc(&dk, pack)); // K then V: the rank's pack
    CU(cudaMalloc(&rb[0], pack));
    CU(cudaMalloc(&rb[1], pack));
    CU(cudaMemsetAsync(dq, 0, (size_t)L * RH * RD * 2, st));
    CU(cudaMemsetAsync(dk, 0, pack, st));
    CU(cudaMemsetAsync(rb[0], 0, pack, st));
    CU(cudaMemsetAsync(rb[1], 0, pack, st));
    attn_cuda_shape_t sh = {RH, RKH, RD, RPS, pages, 1.0f / sqrtf((float)RD)};
    attn_cuda_limits_t lim = {1, L, pages, 0};
    attn_cuda_plan_t *p = NULL;
    CHECK(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &p) == 0);
    int32_t q_indptr[2] = {0, (int32_t)L}, kv_indptr[2] = {0, (int32_t)pages}, kv_len[1] = {(int32_t)L};
    int32_t *idx = malloc(sizeof(int32_t) * pages);
    for (int64_t i = 0; i < pages; i++) idx[i] = (int32_t)i;
    attn_cuda_batch_t bt = {1, q_indptr, kv_indptr, idx, kv_len, NULL};
    size_t ws = 0;
    CHECK(attn_cuda_plan(p, &bt, st, &ws) == 0);
    cudaEvent_t ev[3 * RSTEPS_MAX + 1];
    for (int i = 0; i < 3 * RSTEPS_MAX + 1; i++) CU(cudaEventCreate(&ev[i]));
    CHECK(cp_barrier(c) == 0);
    for (int rep = 0; rep < 2; rep++) { // the first pass warms up
        CU(cudaEventRecord(ev[0], st));
        for (int k = 0; k < n; k++) {
            void *cur = k == 0 ? dk : rb[(k - 1) & 1];
            cp_req_t rq = {-1};
            if (b->transfer && k < n - 1)
                CHECK(cp_sendrecv_start(c, cur, pack, (r + 1) % n, rb[k & 1], pack, (r + n - 1) % n, &rq) == 0);
            CU(cudaEventRecord(ev[3 * k + 1], st));
            if (b->compute) {
                attn_cuda_args_t a = {dq, dout, NULL, cur, (char *)cur + kv_bytes, NULL, 0, 0, NULL, NULL};
                CHECK(attn_cuda_run(p, &a, st) == 0);
            }
            CU(cudaEventRecord(ev[3 * k + 2], st));
            CHECK(cp_wait(c, &rq) == 0);
            CU(cudaEventRecord(ev[3 * k + 3], st));
        }
        CU(cudaStreamSynchronize(st));
        CHECK(cp_barrier(c) == 0);
    }
    float comp = 0, step = 0;
    for (int k = 0; k < n; k++) {
        float a, s;
        CU(cudaEventElapsedTime(&a, ev[3 * k + 1], ev[3 * k + 2]));
        CU(cudaEventElapsedTime(&s, k ? ev[3 * k] : ev[0], ev[3 * k + 3]));
        comp += a, step += s;
    }
    b->ms_compute[r] = comp / n;
    b->ms_step[r] = step / n;
    for (int i = 0; i < 3 * RSTEPS_MAX + 1; i++) cudaEventDestroy(ev[i]);
    attn_cuda_plan_destroy(p);
    free(idx);
    cudaFree(dq), cudaFree(dout), cudaFree(dk), cudaFree(rb[0]), cudaFree(rb[1]);
    return 0;
}

static float ring_time(int n, int64_t T, int compute, int transfer, float *ms_compute) {
    cp_dev_t *g = cp_dev_create(n, 0);
    ck_assert_ptr_nonnull(g);
    cp_comm_t *comms[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) comms[r] = cp_dev_comm(g, r);
    ring_bench_t b = {.T = T, .compute = compute, .transfer = transfer};
    ck_assert_int_eq(team_run(comms, NULL, n, ring_body, &b), 0);
    cp_dev_destroy(g);
    float step = 0, comp = 0;
    for (int r = 0; r < n; r++) step = b.ms_step[r] > step ? b.ms_step[r] : step, comp += b.ms_compute[r] / n;
    if (ms_compute) *ms_compute = comp;
    return step;
}

START_TEST(test_ring_timing) {
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    if (major != 9) {
        printf("ring timing: the prefill kernel needs sm_90; skipped on compute capability %d\n", major);
        return;
    }
    const int64_t T = 131072;
    printf("ring step on one GPU, Llama-3-8B layer (32 q / 8 kv heads, d 128, bf16), %lld tokens:\n", (long long)T);
    printf("| ranks | tokens/rank | pack MiB | 1 rank compute ms | transfer ms (all ranks) | compute ms (all ranks) | "
           "step ms "
           "(both, all ranks) |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (int n = 2; n <= 8; n *= 2) {
        float one, dummy;
        ring_time(1, 2 * (T / (2 * n)), 1, 0, &one); // one rank's step alone: the work of a zig-zag step
        float xfer = ring_time(n, T, 0, 1, &dummy);
        float comp = ring_time(n, T, 1, 0, &dummy);
        float both = ring_time(n, T, 1, 1, &dummy);
        const double pack = 2.0 * (double)(2 * (T / (2 * n))) * RKH * RD * 2 / (1 << 20);
        printf("| %d | %lld | %.0f | %.3f | %.3f | %.3f | %.3f |\n", n, (long long)(2 * (T / (2 * n))), pack, one, xfer,
               comp, both);
    }
}
END_TEST
#else
START_TEST(test_nccl) {
    if (!cp_nccl_available()) {
        printf("NCCL: not in this build\n");
        return;
    }
    int n = 0, exact = 0;
    CK_CUDA(cudaGetDeviceCount(&n));
    if (n > 8) n = 8;
    cp_comm_t *comms[CP_MAX_RANKS];
    ck_assert_int_eq(cp_nccl_create_local(n, NULL, comms), 0);
    ck_assert_str_eq(cp_comm_kind(comms[0]), "nccl");
    int dev[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) dev[r] = r;
    ck_assert_int_eq(team_run(comms, dev, n, comm_body, &exact), 0);
    for (int r = 0; r < n; r++) cp_nccl_destroy(comms[r]);
    printf("NCCL communicator, %d rank(s) on %d GPU(s): ok\n", n, n);
}
END_TEST
#endif

int main(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("SKIP: no GPU\n");
        return 77;
    }
    Suite *s = suite_create("cp_cuda");
    TCase *tc = tcase_create("comm");
    tcase_set_timeout(tc, 600);
#ifdef CP_WITH_NCCL
    tcase_add_test(tc, test_nccl);
#else
    tcase_add_test(tc, test_device_local);
    tcase_add_test(tc, test_ring_timing);
#endif
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); // one CUDA context for the process
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
