/* GPU Check suite for the device communicators of src/attn/cp (run on the
 * GPU machine by tests/gpu/run.sh, step cp; not part of make check).
 *
 * - device-local: N = 1, 2, 3, 4, 8 ranks on one GPU, one host thread each:
 *   a ring of transfers of rank-dependent sizes with several in flight,
 *   all-gather, all-reduce (rank-order sum: the same bits on every rank,
 *   checked against the host's sum), broadcast from every root, all-to-all
 *   of varying sizes, barrier; every buffer read back and checked.
 * - ring attention on the GPU kernels (cp_cuda.h), device-local N = 1, 2,
 *   3, 4, 8 on one GPU, against the single-rank attn_cuda_run over the whole
 *   sequence (rel. L2 of the outputs < 1e-2, |LSE error| < 1e-3): prefill of
 *   1, 1000, 4097 and 12345 tokens, slices on cached prefixes (3001 + 5000,
 *   4096 + 333), 32/8 heads d 128, 8/2 d 64 and Gemma 3's 4/1 d 256 (every
 *   part below too), pages of 64 shuffled in the
 *   pool, unused slots NaN; decode of 7 rows of 1 .. 12345 keys (zig-zag
 *   prompts, generated blocks round the ranks). Each layer runs twice and
 *   must give the same bits; N = 1 must give the single-rank kernel's bits.
 *   One line per comparison with its worst errors.
 * - FlexPrefill inside the ring (zig-zag units of 128), N = 1, 2, 3, 4, 8,
 *   against the single-rank FlexPrefill (its selection, then the
 *   block-sparse kernel): the pairs the ranks computed add up to the
 *   single-rank mask's exactly (the same mask), outputs within the same
 *   bounds, N = 1 bit for bit; structured inputs (sparse masks) and random
 *   ones, with and without a cached prefix, a short slice; bad plans.
 *   Timing at 128K: FlexPrefill's ring against the dense ring, N = 1 .. 8.
 * - Quest and TidalDecode inside the sharded decode, N = 1 .. 8, against
 *   the single-rank Quest (its summaries, selection and kernel) and
 *   TidalDecode (a selection layer on the dense LSE, then a later layer's
 *   queries over the selection): outputs within the same bounds, N = 1 bit
 *   for bit, every run repeatable. Timing: seven rows of 128K keys, dense,
 *   Quest and TidalDecode per layer, N = 1, 2, 4, 8.
 * - the ring's timing (device-local, N = 1, 2, 4, 8 on one GPU): a
 *   Llama-3-8B layer at 128K tokens, the real ring; per step each rank's
 *   compute (attention and LSE merge) and its wait for the step's transfer,
 *   from CUDA events on its stream, as a markdown table. On one GPU the N
 *   ranks share the SMs and HBM, so a step's compute includes the slowdown
 *   from the other ranks running at the same time; N = 1 is the single-rank
 *   baseline.
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
#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_comm_cuda.h"
#include "attn/cp/cp_cuda.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/flex_cuda.h"
#include "attn/cuda/quest_cuda.h"
#include "attn/cuda/tidal_cuda.h"
#include "common/status.h"
#include "common/timeutil.h"

#include "gpu_fixture.h"
#include "gpu_testutil.h"


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

#ifndef CP_WITH_NCCL
/* n device-local ranks on GPU 0 running fn, one host thread each. */
static int dev_team_run(int n, rank_fn fn, void *ud) {
    cp_dev_t *g = cp_dev_create(n, 0);
    ck_assert_ptr_nonnull(g);
    cp_comm_t *comms[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) comms[r] = cp_dev_comm(g, r);
    const int rc = team_run(comms, NULL, n, fn, ud);
    cp_dev_destroy(g);
    return rc;
}
#endif

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

/* A rank that fails inside a step: rank 1 aborts the group instead of
 * taking part in an all-reduce and a barrier; its peers return
 * LC_ECANCELED instead of waiting for it. After a reset the same group runs
 * the communicator's checks again. */
typedef struct {
    cp_dev_t *g;
    float *buf; // (n, 64) device
} abort_t;

static int abort_body(int r, cp_comm_t *c, void *ud) {
    abort_t *a = ud;
    if (r == 1) {
        cp_dev_abort(a->g);
        return LC_EDEVICE; // as a rank whose kernel failed
    }
    const int rc1 = cp_allreduce_sum(c, a->buf + (size_t)r * 64, 64), rc2 = cp_barrier(c);
    return rc1 == LC_ECANCELED && rc2 == LC_ECANCELED ? 0 : -100 - r;
}

START_TEST(test_device_local_abort) {
    const int n = 3, exact = 1;
    cp_dev_t *g = cp_dev_create(n, 0);
    ck_assert_ptr_nonnull(g);
    cp_comm_t *comms[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) comms[r] = cp_dev_comm(g, r);
    abort_t a = {g, NULL};
    ck_assert_int_eq(cudaMalloc((void **)&a.buf, sizeof(float) * 64 * n), cudaSuccess);
    ck_assert_int_eq(cudaMemset(a.buf, 0, sizeof(float) * 64 * n), cudaSuccess);
    for (int r = 0; r < n; r++) ck_assert_int_eq(cp_comm_reserve(comms[r], sizeof(float) * 64), 0);
    member_t m[CP_MAX_RANKS];
    pthread_t th[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        m[r] = (member_t){comms[r], 0, abort_body, &a, r, 0};
        ck_assert_int_eq(pthread_create(&th[r], NULL, member_main, &m[r]), 0);
    }
    for (int r = 0; r < n; r++) pthread_join(th[r], NULL);
    ck_assert_int_eq(m[0].rc, 0);
    ck_assert_int_eq(m[2].rc, 0);
    ck_assert_int_eq(m[1].rc, LC_EDEVICE);
    ck_assert_int_eq(cudaDeviceSynchronize(), cudaSuccess);
    cp_dev_reset(g);
    ck_assert_int_eq(team_run(comms, NULL, n, comm_body, (void *)&exact), 0);
    cudaFree(a.buf);
    cp_dev_destroy(g);
    printf("device-local communicator: an aborting rank releases its peers (LC_ECANCELED); after a reset: ok\n");
}
END_TEST

/* ---- ring attention on the GPU kernels (cp_cuda.h) ------------------------------------ */
/* One sharded sequence: a shuffled pool of bf16 pages (unused slots NaN),
 * its block table and zig-zag owners (a cached prefix [0, pos0) written as
 * an earlier slice), the slice's queries; the ring's results gathered back
 * into slice order. */
typedef struct {
    int H, KH, D, ps;
    int64_t pos0, n_tok, end, nb, pool, max_pack, max_rows;
    int32_t *blocks;
    uint8_t *owner;
    void *dk, *dv;
    uint16_t *q;          // host (n_tok, H, D)
    uint16_t *out, *out2; // the ring's outputs of two runs, slice rows
    float *lse;
    int timing; // ring_body: time the steps instead of checking
    float ms_c[CP_MAX_RANKS][CP_MAX_RANKS], ms_w[CP_MAX_RANKS][CP_MAX_RANKS]; // [rank][step]
    float ms_a2a[CP_MAX_RANKS];                                               // pass-Q's all-to-all and merge
    int mode;                                                                 // the slice's ring (cp_cuda_seq_t.mode)
    int64_t max_q;                                                            // the plans' max_q_rows (0: pass-KV only)
    int pass_q[CP_MAX_RANKS];                                                 // what each rank's plan chose
    const attn_cuda_flex_policy_t *flex;                                      // FlexPrefill (NULL: dense)
    const attn_cuda_anchor_policy_t *anchor;                                  // AnchorAttention (NULL: not)
    double sparse_pairs[CP_MAX_RANKS];                                        // each rank's, after both runs
} world_t;

/* random: 1 uniform values, 2 structured (FlexPrefill finds a sparse
 * pattern): every query leans on one direction u, which the sink's keys and
 * a few heavy columns carry. align: the zig-zag unit. */
static void world_build_at(world_t *w, int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, int random,
                           int align) {
    memset(w, 0, sizeof *w);
    w->H = H, w->KH = KH, w->D = D, w->ps = 64, w->pos0 = pos0, w->n_tok = n_tok, w->end = pos0 + n_tok;
    w->nb = (w->end + w->ps - 1) / w->ps;
    w->pool = w->nb + 3;
    w->blocks = gpu_page_table(w->pool, w->nb, irand);
    w->owner = calloc((size_t)w->nb, 1);
    if (pos0 > 0) cp_zigzag(n, w->ps, align, 0, pos0, w->owner);
    cp_zigzag(n, w->ps, align, pos0, n_tok, w->owner);
    for (int j = 0; j < n; j++) { // the limits: the largest pack and the most rows of a rank
        int64_t c = 0, rows = 0;
        for (int64_t b = 0; b < w->nb; b++) c += w->owner[b] == j;
        for (int64_t t = pos0; t < w->end; t++) rows += w->owner[t / w->ps] == j;
        if (c > w->max_pack) w->max_pack = c;
        if (rows > w->max_rows) w->max_rows = rows;
    }
    const size_t page = (size_t)KH * w->ps * D, pool_elems = page * w->pool, qn = (size_t)n_tok * H * D;
    CK_CUDA(cudaMalloc(&w->dk, 2 * pool_elems));
    CK_CUDA(cudaMalloc(&w->dv, 2 * pool_elems));
    w->q = malloc(2 * qn);
    w->out = malloc(2 * qn);
    w->out2 = malloc(2 * qn);
    w->lse = malloc(sizeof(float) * n_tok * H);
    memset(w->out, 0xff, 2 * qn); // NaN: a row no rank wrote fails
    memset(w->out2, 0xff, 2 * qn);
    for (int64_t i = 0; i < n_tok * H; i++) w->lse[i] = NAN;
    if (!random) { // timing: zeros (no NaN slots either)
        CK_CUDA(cudaMemset(w->dk, 0, 2 * pool_elems));
        CK_CUDA(cudaMemset(w->dv, 0, 2 * pool_elems));
        memset(w->q, 0, 2 * qn);
        return;
    }
    uint16_t *kb = malloc(2 * pool_elems), *vb = malloc(2 * pool_elems);
    for (size_t i = 0; i < pool_elems; i++) kb[i] = vb[i] = 0x7fc0; // NaN
    for (int64_t t = 0; t < w->end; t++) {
        const int heavy = random == 2 && (t < 16 || t % 1500 < 4);
        for (int h = 0; h < KH; h++) {
            const size_t o = (size_t)w->blocks[t / w->ps] * page + ((size_t)h * w->ps + t % w->ps) * D;
            for (int c = 0; c < D; c++)
                kb[o + c] = f2bf(heavy         ? (c & 1 ? 3.0f : -3.0f)
                                 : random == 2 ? 0.3f * frand()
                                               : frand()),
                       vb[o + c] = f2bf(frand());
        }
    }
    for (size_t i = 0; i < qn; i++) w->q[i] = f2bf(random == 2 ? (i & 1 ? 0.5f : -0.5f) + 0.5f * frand() : frand());
    CK_CUDA(cudaMemcpy(w->dk, kb, 2 * pool_elems, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(w->dv, vb, 2 * pool_elems, cudaMemcpyHostToDevice));
    free(kb);
    free(vb);
}

static void world_build(world_t *w, int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, int random) {
    world_build_at(w, H, KH, D, n, pos0, n_tok, random, 64);
}

static void world_free(world_t *w) {
    cudaFree(w->dk), cudaFree(w->dv);
    free(w->blocks), free(w->owner), free(w->q), free(w->out), free(w->out2), free(w->lse);
}

/* The single-rank reference: attn_cuda_run over the whole sequence (the
 * slice's rows causal over keys 0 .. end - 1). */
static void ref_prefill(const world_t *w, uint16_t *out, float *lse) {
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    attn_cuda_limits_t lim = {1, w->n_tok, w->nb, 0};
    attn_cuda_plan_t *p = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &p), 0);
    int32_t qi[2] = {0, (int32_t)w->n_tok}, ki[2] = {0, (int32_t)w->nb}, kl[1] = {(int32_t)w->end};
    attn_cuda_batch_t bt = {1, qi, ki, w->blocks, kl, NULL, NULL, 0};
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, NULL), 0);
    const size_t qn = (size_t)w->n_tok * w->H * w->D;
    void *dq, *dout, *dlse;
    CK_CUDA(cudaMalloc(&dq, 2 * qn));
    CK_CUDA(cudaMalloc(&dout, 2 * qn));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * w->n_tok * w->H));
    CK_CUDA(cudaMemcpy(dq, w->q, 2 * qn, cudaMemcpyHostToDevice));
    attn_cuda_args_t a = {dq, dout, dlse, w->dk, w->dv, NULL, 0, 0, NULL, NULL, 0, 0};
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * qn, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * w->n_tok * w->H, cudaMemcpyDeviceToHost));
    cudaFree(dq), cudaFree(dout), cudaFree(dlse);
    attn_cuda_plan_destroy(p);
}

/* Rank r: plans the ring, runs the layer twice (out, then out2), scatters
 * its rows back into slice order. With w->timing: the second run timed. */
static int ring_body(int r, cp_comm_t *c, void *ud) {
    world_t *w = ud;
    const int n = cp_comm_size(c);
    cudaStream_t st = cp_comm_stream(c);
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    cp_cuda_limits_t lim = {.max_tokens = w->end,
                            .max_rows = w->max_rows,
                            .max_pack_pages = w->max_pack,
                            .max_q_rows = w->max_q,
                            .flex = w->flex != NULL,
                            .max_anchor_rows = w->anchor ? w->n_tok : 0,
                            .anchor_min_local = w->anchor ? w->anchor->anchor_local : 0};
    cp_cuda_plan_t *p = NULL;
    int rc = cp_cuda_plan_create(&sh, &lim, r, n, &p);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_plan_create: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    cp_cuda_seq_t seq = {w->pos0, w->n_tok, w->blocks, w->owner, w->mode, w->flex, w->anchor};
    rc = cp_cuda_plan_prefill(p, &seq, st);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_plan_prefill: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    w->pass_q[r] = cp_cuda_prefill_pass_q(p);
    const int64_t rows = cp_cuda_prefill_rows(p, NULL);
    const size_t rb = (size_t)w->H * w->D * 2;
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)(rows + 1));
    uint16_t *hq = malloc(rb * (size_t)(rows + 1)), *ho = malloc(rb * (size_t)(rows + 1));
    float *hl = malloc(sizeof(float) * w->H * (size_t)(rows + 1));
    CHECK(pos && hq && ho && hl && cp_cuda_prefill_rows(p, pos) == rows);
    for (int64_t i = 0; i < rows; i++) memcpy((char *)hq + i * rb, (char *)w->q + (pos[i] - w->pos0) * rb, rb);
    void *dq, *dout, *dout2;
    float *dlse;
    CU(cudaMalloc(&dq, rb * (size_t)(rows + 1)));
    CU(cudaMalloc(&dout, rb * (size_t)(rows + 1)));
    CU(cudaMalloc(&dout2, rb * (size_t)(rows + 1)));
    CU(cudaMalloc((void **)&dlse, sizeof(float) * w->H * (size_t)(rows + 1)));
    CU(cudaMemcpyAsync(dq, hq, rb * (size_t)rows, cudaMemcpyHostToDevice, st));
    rc = cp_cuda_run_prefill(p, c, w->dk, w->dv, dq, dout, dlse);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_run_prefill: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    cp_cuda_plan_timing_enable(p, w->timing);
    CHECK(cp_cuda_run_prefill(p, c, w->dk, w->dv, dq, dout2, NULL) == 0);
    CU(cudaStreamSynchronize(st));
    CHECK(cp_cuda_sparse_pairs(p, st, &w->sparse_pairs[r]) == 0);
    CU(cudaMemcpy(ho, dout, rb * (size_t)rows, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(hl, dlse, sizeof(float) * w->H * (size_t)rows, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < rows; i++) {
        memcpy((char *)w->out + (pos[i] - w->pos0) * rb, (char *)ho + i * rb, rb);
        memcpy(w->lse + (pos[i] - w->pos0) * w->H, hl + i * w->H, sizeof(float) * w->H);
    }
    CU(cudaMemcpy(ho, dout2, rb * (size_t)rows, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < rows; i++) memcpy((char *)w->out2 + (pos[i] - w->pos0) * rb, (char *)ho + i * rb, rb);
    for (int k = 0; w->timing && k < n; k++) CHECK(cp_cuda_step_ms(p, k, &w->ms_c[r][k], &w->ms_w[r][k]) == 0);
    w->ms_a2a[r] = (float)(cp_cuda_plan_timing(p)->collective_s * 1e3);
    CHECK(cp_barrier(c) == 0);
    cudaFree(dq), cudaFree(dout), cudaFree(dout2), cudaFree(dlse);
    free(pos), free(hq), free(ho), free(hl);
    cp_cuda_plan_destroy(p);
    return 0;
}

/* rel L2 of the outputs and the largest |LSE difference| (non-finite: inf). */
static void compare(const uint16_t *o, const float *l, const uint16_t *ro, const float *rl, int64_t rows, int H, int D,
                    double *rel, double *lse_err) {
    double se = 0, sr = 0, le = 0;
    for (int64_t i = 0; i < rows * H * D; i++) {
        const double g = bf2f(o[i]), f = bf2f(ro[i]);
        se += isfinite(g) ? (g - f) * (g - f) : INFINITY;
        sr += f * f;
    }
    for (int64_t i = 0; l && i < rows * H; i++) {
        const double d = isfinite(l[i]) ? fabs((double)l[i] - rl[i]) : INFINITY;
        if (d > le) le = d;
    }
    *rel = sqrt(se / (sr > 0 ? sr : 1));
    *lse_err = le;
}

/* The ring with n ranks against the single-rank kernel: one line each.
 * mode: the slice's ring (CP_CUDA_AUTO with room for pass-Q, or forced);
 * -1: plans without pass-Q's room (pass-KV). expect_q: the ring the plans
 * must choose. */
static int check_prefill_mode(int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, uint64_t seed, int mode,
                              int expect_q) {
    rng = seed;
    world_t w;
    world_build(&w, H, KH, D, n, pos0, n_tok, 1);
    w.mode = mode < 0 ? CP_CUDA_AUTO : mode;
    w.max_q = mode < 0 ? 0 : w.max_rows;
    const size_t qn = (size_t)n_tok * H * D;
    uint16_t *ro = malloc(2 * qn);
    float *rl = malloc(sizeof(float) * n_tok * H);
    ref_prefill(&w, ro, rl);
    const int rc = dev_team_run(n, ring_body, &w);
    double rel, le;
    compare(w.out, w.lse, ro, rl, n_tok, H, D, &rel, &le);
    const int same = memcmp(w.out, w.out2, 2 * qn) == 0, exact = memcmp(w.out, ro, 2 * qn) == 0;
    // one rank: the same kernel over the same keys and tiles, so the same bits
    int chose = 1;
    for (int r = 0; r < n; r++) chose &= w.pass_q[r] == expect_q;
    const int ok =
        rc == 0 && chose && rel < 1e-2 && le < 1e-3 && same && (n > 1 || (exact && !memcmp(w.lse, rl, 4 * qn / D)));
    printf("  %-4s prefill ring (%s%s) N=%d, %d/%d heads d%d, prefix %lld + slice %lld tokens vs one rank: rel L2 "
           "%.2e, lse max err %.2e, run twice %s, %s single-rank bits\n",
           ok ? "ok" : "FAIL", w.pass_q[0] ? "pass-Q" : "pass-KV", chose ? "" : ", NOT THE EXPECTED RING", n, H, KH, D,
           (long long)pos0, (long long)n_tok, rel, le, same ? "bitwise equal" : "DIFFERS",
           exact ? "equals the" : "differs from the");
    free(ro), free(rl);
    world_free(&w);
    return ok;
}

static int check_prefill(int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, uint64_t seed) {
    return check_prefill_mode(H, KH, D, n, pos0, n_tok, seed, -1, 0);
}

/* The prefill kernel is sm_90a only. */
static int have_sm90(const char *what) {
    int major = 0, minor = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
    if (major == 9 && minor == 0) return 1;
    printf("%s: the prefill kernel needs sm_90; skipped on sm_%d%d\n", what, major, minor);
    return 0;
}

START_TEST(test_ring_prefill) {
    if (!have_sm90("ring prefill")) return;
    const int ns[] = {1, 2, 3, 4, 8};
    const struct {
        int H, KH, D;
        int64_t pos0, n_tok;
    } c[] = {{32, 8, 128, 0, 1000},    {32, 8, 128, 0, 4097}, {8, 2, 64, 0, 12345}, {8, 2, 64, 0, 1000},
             {32, 8, 128, 3001, 5000}, {8, 2, 64, 4096, 333}, {32, 8, 128, 0, 1},   {4, 1, 256, 1000, 3001}};
    int ok = 1;
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            ok &= check_prefill(c[k].H, c[k].KH, c[k].D, ns[i], c[k].pos0, c[k].n_tok, 1000 + 10 * k + i);
    ck_assert_msg(ok, "the GPU ring differs from the single-rank kernel (see the FAIL lines)");
}
END_TEST

/* Pass-Q: forced on slices with and without a cached prefix, and chosen
 * automatically where the queries weigh less than the KV (cp_pass_q_pays)
 * and not where they do not. */
START_TEST(test_ring_prefill_pass_q) {
    if (!have_sm90("ring prefill, pass-Q")) return;
    const int ns[] = {1, 2, 3, 4, 8};
    const struct {
        int H, KH, D;
        int64_t pos0, n_tok;
        int mode, expect_q;
    } c[] = {{32, 8, 128, 3001, 5000, CP_CUDA_PASS_Q, 1}, {8, 2, 64, 4096, 333, CP_CUDA_PASS_Q, 1},
             {32, 8, 128, 12000, 1, CP_CUDA_PASS_Q, 1},   {8, 2, 64, 0, 1000, CP_CUDA_PASS_Q, 1},
             {32, 8, 128, 20000, 300, CP_CUDA_AUTO, 1},   {32, 8, 128, 3001, 5000, CP_CUDA_AUTO, 0},
             {8, 2, 64, 4096, 333, CP_CUDA_PASS_KV, 0},   {4, 1, 256, 3001, 2000, CP_CUDA_PASS_Q, 1}};
    int ok = 1;
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            ok &= check_prefill_mode(c[k].H, c[k].KH, c[k].D, ns[i], c[k].pos0, c[k].n_tok, 5000 + 10 * k + i,
                                     c[k].mode, c[k].expect_q);
    ck_assert_msg(ok, "the GPU pass-Q ring differs from the single-rank kernel (see the FAIL lines)");
}
END_TEST

/* ---- FlexPrefill inside the ring ----------------------------------------------------------- */
/* The single-rank FlexPrefill: its selection (flex_cuda.h) over the whole
 * sequence, then the block-sparse kernel; *pairs: the pairs its mask keeps. */
static void ref_flex(const world_t *w, const attn_cuda_flex_policy_t *pol, uint16_t *out, float *lse, double *pairs) {
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    attn_cuda_limits_t lim = {1, w->n_tok, w->nb, 0};
    attn_cuda_plan_t *p = NULL;
    attn_cuda_flex_t *f = NULL;
    ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &lim, &p), 0);
    ck_assert_int_eq(attn_cuda_flex_create(&sh, 1, w->n_tok, w->end, &f), 0);
    int32_t qi[2] = {0, (int32_t)w->n_tok}, ki[2] = {0, (int32_t)w->nb}, kl[1] = {(int32_t)w->end}, mo[1] = {0};
    const uint8_t sel[1] = {1};
    attn_cuda_batch_t bt = {1, qi, ki, w->blocks, kl, mo, NULL, 0};
    size_t words = 0;
    ck_assert_int_eq(attn_cuda_flex_plan(f, &bt, sel, pol, mo, &words, NULL), 0);
    ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, NULL), 0);
    const size_t qn = (size_t)w->n_tok * w->H * w->D;
    void *dq, *dout, *dlse;
    uint32_t *dmask;
    unsigned long long *dpairs, hp = 0;
    CK_CUDA(cudaMalloc(&dq, 2 * qn));
    CK_CUDA(cudaMalloc(&dout, 2 * qn));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * w->n_tok * w->H));
    CK_CUDA(cudaMalloc((void **)&dmask, 4 * words));
    CK_CUDA(cudaMalloc((void **)&dpairs, sizeof hp));
    CK_CUDA(cudaMemset(dpairs, 0, sizeof hp));
    CK_CUDA(cudaMemcpy(dq, w->q, 2 * qn, cudaMemcpyHostToDevice));
    ck_assert_int_eq(attn_cuda_flex_select(f, dq, w->dk, dmask, NULL), 0);
    attn_cuda_args_t a = {dq, dout, dlse, w->dk, w->dv, NULL, 0, 0, dmask, NULL, 0, 0};
    ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
    ck_assert_int_eq(attn_cuda_mask_pairs(p, dmask, dpairs, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * qn, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * w->n_tok * w->H, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(&hp, dpairs, sizeof hp, cudaMemcpyDeviceToHost));
    *pairs = (double)hp;
    cudaFree(dq), cudaFree(dout), cudaFree(dlse), cudaFree(dmask), cudaFree(dpairs);
    attn_cuda_flex_destroy(f);
    attn_cuda_plan_destroy(p);
}

/* FlexPrefill's ring with n ranks against the single-rank FlexPrefill: the
 * same mask (the pairs the ranks computed add up to the single-rank mask's,
 * exactly), outputs within rounding, N = 1 bit for bit. */
static int check_prefill_flex(int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, int data, float gamma,
                              int blocks, uint64_t seed) {
    rng = seed;
    world_t w;
    world_build_at(&w, H, KH, D, n, pos0, n_tok, data, 128);
    const attn_cuda_flex_policy_t pol = {gamma, 0.1f, 128, 0, (int)w.end, blocks};
    w.flex = &pol;
    const size_t qn = (size_t)n_tok * H * D;
    uint16_t *ro = malloc(2 * qn);
    float *rl = malloc(sizeof(float) * n_tok * H);
    double ref_pairs = 0, dense = 0;
    ref_flex(&w, &pol, ro, rl, &ref_pairs);
    for (int64_t t = pos0; t < w.end; t++) dense += (double)(t + 1) * H;
    const int rc = dev_team_run(n, ring_body, &w);
    double rel, le, ring_pairs = 0;
    compare(w.out, w.lse, ro, rl, n_tok, H, D, &rel, &le);
    for (int r = 0; r < n; r++) ring_pairs += w.sparse_pairs[r];
    const int same = memcmp(w.out, w.out2, 2 * qn) == 0, exact = memcmp(w.out, ro, 2 * qn) == 0;
    const int ok = rc == 0 && rel < 1e-2 && le < 1e-3 && same && ring_pairs == 2 * ref_pairs &&
                   (n > 1 || (exact && !memcmp(w.lse, rl, 4 * qn / D)));
    printf("  %-4s FlexPrefill%s ring N=%d, %d/%d heads d%d, %s, gamma %.2f, prefix %lld + slice %lld tokens vs one "
           "rank: density %.3f, ring pairs %s, rel L2 %.2e, lse max err %.2e, run twice %s, %s single-rank bits\n",
           ok ? "ok" : "FAIL", blocks ? " (blocks rule)" : "", n, H, KH, D, data == 2 ? "structured" : "random", gamma,
           (long long)pos0, (long long)n_tok, ref_pairs / dense, ring_pairs == 2 * ref_pairs ? "equal" : "DIFFER", rel,
           le, same ? "bitwise equal" : "DIFFERS", exact ? "equals the" : "differs from the");
    free(ro), free(rl);
    world_free(&w);
    return ok;
}

START_TEST(test_ring_prefill_flex) {
    if (!have_sm90("ring prefill, FlexPrefill")) return;
    const int ns[] = {1, 2, 3, 4, 8};
    const struct {
        int H, KH, D;
        int64_t pos0, n_tok;
        int data;
        float gamma;
        int blocks;
    } c[] = {
        {32, 8, 128, 0, 12345, 2, 0.9f, 0},  {8, 2, 64, 0, 9000, 2, 0.95f, 0},    {32, 8, 128, 3001, 7000, 2, 0.9f, 0},
        {8, 2, 64, 0, 4097, 1, 0.9f, 0},     {32, 8, 128, 4096, 333, 2, 0.9f, 0}, {8, 2, 64, 0, 200, 1, 0.9f, 0},
        {4, 1, 256, 1024, 5000, 2, 0.9f, 0}, {32, 8, 128, 0, 12345, 2, 0.9f, 1},  {8, 2, 64, 3001, 7000, 2, 0.8f, 1}};
    int ok = 1;
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            ok &= check_prefill_flex(c[k].H, c[k].KH, c[k].D, ns[i], c[k].pos0, c[k].n_tok, c[k].data, c[k].gamma,
                                     c[k].blocks, 7000 + 10 * k + i);
    ck_assert_msg(ok, "the GPU FlexPrefill ring differs from the single-rank FlexPrefill (see the FAIL lines)");
}
END_TEST

/* ---- AnchorAttention across the ranks -------------------------------------------------------- */
/* The single-rank AnchorAttention (anchor_cuda.h) over the slice; *pairs:
 * the pairs it attended. */
static void ref_anchor(const world_t *w, const attn_cuda_anchor_policy_t *pol, uint16_t *out, float *lse,
                       double *pairs) {
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    attn_cuda_anchor_t *a = NULL;
    ck_assert_int_eq(attn_cuda_anchor_create(&sh, 1, w->n_tok, w->end, pol->anchor_local, &a), 0);
    int32_t qi[2] = {0, (int32_t)w->n_tok}, ki[2] = {0, (int32_t)w->nb}, kl[1] = {(int32_t)w->end};
    const uint8_t sel[1] = {1};
    attn_cuda_batch_t bt = {1, qi, ki, w->blocks, kl, NULL, NULL, 0};
    ck_assert_int_eq(attn_cuda_anchor_plan(a, &bt, sel, pol, NULL), 0);
    const size_t qn = (size_t)w->n_tok * w->H * w->D;
    void *dq, *dout, *dlse;
    unsigned long long *dpairs, hp = 0;
    CK_CUDA(cudaMalloc(&dq, 2 * qn));
    CK_CUDA(cudaMalloc(&dout, 2 * qn));
    CK_CUDA(cudaMalloc(&dlse, sizeof(float) * w->n_tok * w->H));
    CK_CUDA(cudaMalloc((void **)&dpairs, sizeof hp));
    CK_CUDA(cudaMemset(dpairs, 0, sizeof hp));
    CK_CUDA(cudaMemcpy(dq, w->q, 2 * qn, cudaMemcpyHostToDevice));
    ck_assert_int_eq(attn_cuda_anchor_run(a, dq, w->dk, w->dv, dout, dlse, NULL), 0);
    ck_assert_int_eq(attn_cuda_anchor_pairs(a, dpairs, NULL), 0);
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, dout, 2 * qn, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(lse, dlse, sizeof(float) * w->n_tok * w->H, cudaMemcpyDeviceToHost));
    CK_CUDA(cudaMemcpy(&hp, dpairs, sizeof hp, cudaMemcpyDeviceToHost));
    *pairs = (double)hp;
    cudaFree(dq), cudaFree(dout), cudaFree(dlse), cudaFree(dpairs);
    attn_cuda_anchor_destroy(a);
}

/* AnchorAttention over n ranks against the single-rank AnchorAttention: the
 * same keys (the pairs the ranks attended add up to the single-rank count,
 * exactly), outputs within rounding, N = 1 bit for bit; theta = inf against
 * the dense kernel too. */
static int check_prefill_anchor(int H, int KH, int D, int n, int64_t pos0, int64_t n_tok, int data,
                                attn_cuda_anchor_policy_t pol, uint64_t seed) {
    rng = seed;
    world_t w;
    world_build_at(&w, H, KH, D, n, pos0, n_tok, data, 128);
    w.anchor = &pol;
    const size_t qn = (size_t)n_tok * H * D;
    uint16_t *ro = malloc(2 * qn), *dout = malloc(2 * qn);
    float *rl = malloc(sizeof(float) * n_tok * H), *dl = malloc(sizeof(float) * n_tok * H);
    double ref_pairs = 0, dense = 0;
    ref_anchor(&w, &pol, ro, rl, &ref_pairs);
    for (int64_t t = pos0; t < w.end; t++) dense += (double)(t + 1) * H;
    double drel = 0, dle = 0;
    if (isinf(pol.theta)) { // full budget: the dense kernel
        ref_prefill(&w, dout, dl);
        compare(ro, rl, dout, dl, n_tok, H, D, &drel, &dle);
    }
    const int rc = dev_team_run(n, ring_body, &w);
    double rel, le, ring_pairs = 0;
    compare(w.out, w.lse, ro, rl, n_tok, H, D, &rel, &le);
    for (int r = 0; r < n; r++) ring_pairs += w.sparse_pairs[r];
    const int same = memcmp(w.out, w.out2, 2 * qn) == 0, exact = memcmp(w.out, ro, 2 * qn) == 0;
    const int ok = rc == 0 && rel < 1e-2 && le < 1e-3 && same && ring_pairs == 2 * ref_pairs && drel < 1e-2 &&
                   (n > 1 || (exact && !memcmp(w.lse, rl, 4 * qn / D)));
    printf("  %-4s AnchorAttention N=%d, %d/%d heads d%d, %s, theta %g, init %d local %d lookback %d probe %g, prefix "
           "%lld + slice %lld tokens vs one rank: density %.3f, ranks' pairs %s, rel L2 %.2e, lse max err %.2e, run "
           "twice %s, %s single-rank bits%s",
           ok ? "ok" : "FAIL", n, H, KH, D, data == 2 ? "structured" : "random", pol.theta, pol.anchor_init,
           pol.anchor_local, pol.anchor_lookback, pol.probe, (long long)pos0, (long long)n_tok, ref_pairs / dense,
           ring_pairs == 2 * ref_pairs ? "equal" : "DIFFER", rel, le, same ? "bitwise equal" : "DIFFERS",
           exact ? "equals the" : "differs from the", isinf(pol.theta) ? "" : "\n");
    if (isinf(pol.theta)) printf("; single rank vs dense: rel L2 %.2e, lse %.2e\n", drel, dle);
    free(ro), free(rl), free(dout), free(dl);
    world_free(&w);
    return ok;
}

START_TEST(test_ring_prefill_anchor) {
    if (!have_sm90("AnchorAttention across ranks")) return;
    const int ns[] = {1, 2, 3, 4, 8};
    const struct {
        int H, KH, D;
        int64_t pos0, n_tok;
        int data;
        attn_cuda_anchor_policy_t pol;
    } c[] = {
        {32, 8, 128, 0, 12345, 2, {12.f, 2048, 2048, 1024, 0.f}},
        {32, 8, 128, 0, 12345, 2, {12.f, 2048, 2048, 1024, 0.01f}},
        {8, 2, 64, 0, 9000, 2, {8.f, 128, 1024, 0, 0.05f}},
        {32, 8, 128, 3001, 7000, 2, {12.f, 128, 1024, 512, 0.01f}},
        {8, 2, 64, 0, 4097, 1, {4.f, 0, 512, 0, 0.f}},
        {32, 8, 128, 4096, 333, 2, {12.f, 2048, 2048, 1024, 0.01f}},
        {8, 2, 64, 0, 6000, 1, {INFINITY, 128, 1024, 0, 0.f}},
        {8, 2, 64, 0, 200, 1, {12.f, 128, 128, 0, 0.f}},
        {4, 1, 256, 0, 6000, 2, {12.f, 128, 1024, 512, 0.01f}},
    };
    int ok = 1;
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
        for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
            ok &= check_prefill_anchor(c[k].H, c[k].KH, c[k].D, ns[i], c[k].pos0, c[k].n_tok, c[k].data, c[k].pol,
                                       9000 + 10 * k + i);
    ck_assert_msg(ok, "AnchorAttention across ranks differs from the single-rank AnchorAttention (see the FAIL lines)");
}
END_TEST

/* FlexPrefill's plans refuse what they cannot run. */
START_TEST(test_ring_flex_bad_input) {
    if (!have_sm90("ring FlexPrefill bad input")) return;
    attn_cuda_shape_t sh = {8, 2, 64, 64, 10, 0.125f};
    cp_cuda_limits_t lim = {.max_tokens = 512, .flex = 1};
    cp_cuda_plan_t *p = NULL, *dense = NULL;
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 0, 2, &p), 0);
    lim.flex = 0;
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 0, 2, &dense), 0);
    int32_t blocks[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    uint8_t owner[8] = {0, 0, 1, 1, 1, 1, 0, 0};
    const attn_cuda_flex_policy_t pol = {0.9f, 0.1f, 0, 0, 0, 0};
    cp_cuda_seq_t seq = {0, 512, blocks, owner, CP_CUDA_AUTO, &pol, NULL};
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), 0);
    ck_assert_int_eq(cp_cuda_plan_prefill(dense, &seq, NULL), LC_ERANGE); // no room for FlexPrefill
    owner[1] = 1;                                                         // a 128-position block split between ranks
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    owner[1] = 0;
    seq.mode = CP_CUDA_PASS_Q; // FlexPrefill rides the pass-KV ring
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    seq.mode = CP_CUDA_AUTO;
    const attn_cuda_flex_policy_t bad = {0.0f, 0.1f, 0, 0, 0, 0}; // gamma 0
    seq.flex = &bad;
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    // AnchorAttention: room, a split block, its exchange only, a bad policy, a local window below the room's
    cp_cuda_plan_t *anc = NULL;
    lim.max_anchor_rows = 512;
    lim.anchor_min_local = 256;
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 0, 2, &anc), 0);
    const attn_cuda_anchor_policy_t apol = {12.f, 128, 256, 0, 0.01f};
    cp_cuda_seq_t aseq = {0, 512, blocks, owner, CP_CUDA_AUTO, NULL, &apol};
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), 0);
    ck_assert_int_eq(cp_cuda_plan_prefill(dense, &aseq, NULL), LC_ERANGE); // no room for AnchorAttention
    owner[1] = 1;
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), LC_EINVAL);
    owner[1] = 0;
    aseq.mode = CP_CUDA_PASS_KV;
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), LC_EINVAL);
    aseq.mode = CP_CUDA_AUTO;
    aseq.flex = &pol; // not both
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), LC_EINVAL);
    aseq.flex = NULL;
    const attn_cuda_anchor_policy_t abad = {12.f, 100, 256, 0, 0.f}; // init not a multiple of 128
    aseq.anchor = &abad;
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), LC_EINVAL);
    const attn_cuda_anchor_policy_t asmall = {12.f, 128, 128, 0, 0.f}; // local below anchor_min_local: made again
    aseq.anchor = &asmall;
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), 0);
    aseq.n_tok = 513; // past max_anchor_rows (and max_tokens)
    ck_assert_int_eq(cp_cuda_plan_prefill(anc, &aseq, NULL), LC_ERANGE);
    lim.anchor_min_local = 100;
    cp_cuda_plan_t *bad_lim = NULL;
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 0, 2, &bad_lim), LC_EINVAL);
    CK_CUDA(cudaDeviceSynchronize());
    cp_cuda_plan_destroy(anc);
    cp_cuda_plan_destroy(p);
    cp_cuda_plan_destroy(dense);
    printf("  ok   ring FlexPrefill and AnchorAttention bad input: clear errors\n");
}
END_TEST

/* Bad plans and batches: clear errors, nothing run. */
START_TEST(test_ring_bad_input) {
    if (!have_sm90("ring bad input")) return;
    attn_cuda_shape_t sh = {8, 2, 64, 64, 10, 0.125f};
    cp_cuda_limits_t lim = {.max_tokens = 256, .max_decode_seqs = 2};
    cp_cuda_plan_t *p = NULL;
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 2, 2, &p), LC_EINVAL); // rank past the group
    cp_cuda_limits_t none = {0};
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &none, 0, 2, &p), LC_EINVAL); // neither prefill nor decode
    ck_assert_int_eq(cp_cuda_plan_create(&sh, &lim, 0, 2, &p), 0);
    int32_t blocks[5] = {0, 1, 2, 3, 4};
    uint8_t owner[5] = {0, 1, 1, 0, 0};
    cp_cuda_seq_t seq = {0, 256, blocks, owner, CP_CUDA_AUTO, NULL, NULL};
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), 0);
    ck_assert_int_eq(cp_cuda_prefill_rows(p, NULL), 128);
    seq.n_tok = 257; // past max_tokens
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_ERANGE);
    seq.n_tok = 0;
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    seq.n_tok = 256;
    owner[1] = 2; // no such rank
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    owner[1] = 1;
    blocks[3] = 10; // past the pool, on this rank
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    blocks[3] = 3;
    seq.mode = CP_CUDA_PASS_Q; // without max_q_rows
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_ERANGE);
    seq.mode = 7;
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), LC_EINVAL);
    seq.mode = CP_CUDA_AUTO;
    int32_t kl[2] = {100, 0}, ip[3] = {0, 2, 4};
    cp_cuda_dec_batch_t db = {2, kl, ip, blocks, owner, NULL, NULL};
    ck_assert_int_eq(cp_cuda_plan_decode(p, &db, NULL), LC_EINVAL); // an empty sequence
    kl[1] = 129;                                                    // more keys than two pages
    ck_assert_int_eq(cp_cuda_plan_decode(p, &db, NULL), LC_EINVAL);
    kl[1] = 128;
    ck_assert_int_eq(cp_cuda_plan_decode(p, &db, NULL), 0);
    ck_assert_int_eq(cp_cuda_decode_owner(p, 0), 1);
    ck_assert_int_eq(cp_cuda_decode_owner(p, 1), 0);
    db.n_seqs = 3; // past max_decode_seqs
    ck_assert_int_eq(cp_cuda_plan_decode(p, &db, NULL), LC_ERANGE);
    // a communicator of another size
    cp_dev_t *g = cp_dev_create(1, 0);
    ck_assert_ptr_nonnull(g);
    void *buf;
    CK_CUDA(cudaMalloc(&buf, 1 << 20));
    ck_assert_int_eq(cp_cuda_plan_prefill(p, &seq, NULL), 0);
    ck_assert_int_eq(cp_cuda_run_prefill(p, cp_dev_comm(g, 0), buf, buf, buf, buf, NULL), LC_EINVAL);
    CK_CUDA(cudaDeviceSynchronize());
    cudaFree(buf);
    cp_dev_destroy(g);
    cp_cuda_plan_destroy(p);
    printf("  ok   ring bad input: clear errors\n");
}
END_TEST

/* ---- sharded decode ------------------------------------------------------------------- */
enum { DS = 7 };
typedef struct {
    int H, KH, D, ps, n;
    int32_t kv_len[DS], indptr[DS + 1];
    int32_t *blocks;
    uint8_t *owner;
    int64_t pool;
    void *dk, *dv, *dq;
    uint16_t *out, *out2;
    float *lse;
    const int32_t *budget; // Quest's budgets (NULL: dense)
    float *dkmin, *dkmax;  // the pool's summaries (Quest)
    const int32_t *tidal;  // TidalDecode's budgets (NULL: none): out is the selection layer's, out2 (and
    void *dq2;             // out3, its repeat) a later layer's with the queries dq2
    uint16_t *out3;
    int64_t max_tok;              // timing: the plans' max_tokens
    double t_ms[CP_MAX_RANKS][2]; // timing: a layer's ms per rank (TidalDecode: selection, later layer)
} dec_world_t;

static int dec_body(int r, cp_comm_t *c, void *ud) {
    dec_world_t *w = ud;
    const int n = cp_comm_size(c);
    cudaStream_t st = cp_comm_stream(c);
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    cp_cuda_limits_t lim = {.max_tokens = w->budget || w->tidal ? 12345 : 0,
                            .max_decode_seqs = DS,
                            .max_decode_pages = w->indptr[DS],
                            .quest = w->budget != NULL,
                            .tidal_budget = w->tidal ? 256 : 0};
    cp_cuda_plan_t *p = NULL;
    int rc = cp_cuda_plan_create(&sh, &lim, r, n, &p);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_plan_create: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    cp_cuda_dec_batch_t b = {DS, w->kv_len, w->indptr, w->blocks, w->owner, w->budget, w->tidal};
    rc = cp_cuda_plan_decode(p, &b, st);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_plan_decode: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    const size_t rb = (size_t)w->H * w->D * 2;
    void *dout, *dout2;
    float *dlse;
    CU(cudaMalloc(&dout, rb * DS));
    CU(cudaMalloc(&dout2, rb * DS));
    CU(cudaMalloc((void **)&dlse, sizeof(float) * w->H * DS));
    void *dout3 = NULL;
    if (w->tidal) { // a selection layer, then a later layer twice
        CU(cudaMalloc(&dout3, rb * DS));
        rc = cp_cuda_run_decode_tidal(p, c, w->dk, w->dv, w->dq, dout, dlse, 1);
        if (!rc) rc = cp_cuda_run_decode_tidal(p, c, w->dk, w->dv, w->dq2, dout2, NULL, 0);
        if (!rc) rc = cp_cuda_run_decode_tidal(p, c, w->dk, w->dv, w->dq2, dout3, NULL, 0);
    } else {
        rc = cp_cuda_run_decode_kv(p, c, w->dk, w->dv, w->dkmin, w->dkmax, w->dq, dout, dlse);
        if (!rc) rc = cp_cuda_run_decode_kv(p, c, w->dk, w->dv, w->dkmin, w->dkmax, w->dq, dout2, NULL);
    }
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_run_decode: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    CU(cudaStreamSynchronize(st));
    for (int s = 0; s < DS; s++) {
        if (cp_cuda_decode_owner(p, s) != r) continue;
        CU(cudaMemcpy((char *)w->out + s * rb, (char *)dout + s * rb, rb, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy((char *)w->out2 + s * rb, (char *)dout2 + s * rb, rb, cudaMemcpyDeviceToHost));
        CU(cudaMemcpy(w->lse + s * w->H, dlse + s * w->H, sizeof(float) * w->H, cudaMemcpyDeviceToHost));
        if (dout3) CU(cudaMemcpy((char *)w->out3 + s * rb, (char *)dout3 + s * rb, rb, cudaMemcpyDeviceToHost));
    }
    CHECK(cp_barrier(c) == 0);
    cudaFree(dout), cudaFree(dout2), cudaFree(dout3), cudaFree(dlse);
    cp_cuda_plan_destroy(p);
    return 0;
}

/* A single-rank reference's device buffers: out (qn bf16), lse (n_lse f32),
 * a workspace of ws bytes (none when 0); ref_finish copies out and (when
 * lse is not NULL) the LSE back after the device is done, and frees them. */
typedef struct {
    void *out, *ws;
    float *lse;
    size_t qn, n_lse;
} ref_buf_t;

static ref_buf_t ref_alloc(size_t qn, size_t n_lse, size_t ws) {
    ref_buf_t b = {NULL, NULL, NULL, qn, n_lse};
    CK_CUDA(cudaMalloc(&b.out, 2 * qn));
    CK_CUDA(cudaMalloc((void **)&b.lse, sizeof(float) * n_lse));
    if (ws) CK_CUDA(cudaMalloc(&b.ws, ws));
    return b;
}

static void ref_finish(ref_buf_t *b, uint16_t *out, float *lse) {
    CK_CUDA(cudaDeviceSynchronize());
    CK_CUDA(cudaMemcpy(out, b->out, 2 * b->qn, cudaMemcpyDeviceToHost));
    if (lse) CK_CUDA(cudaMemcpy(lse, b->lse, sizeof(float) * b->n_lse, cudaMemcpyDeviceToHost));
    cudaFree(b->out), cudaFree(b->lse), cudaFree(b->ws);
}

/* Sequences of 1 .. 12345 keys: a prompt sharded zig-zag, then generated
 * tokens whose new blocks go round the ranks (cp_owner_next). quest > 0:
 * every row runs Quest with that budget in pages, against the single-rank
 * Quest (its summaries of every page, its selection, the dense kernel over
 * the selected pages); N = 1 must give its bits. */
static int check_decode_q(int H, int KH, int D, int n, uint64_t seed, int quest, int tidal) {
    static const int lens[DS] = {1, 63, 64, 65, 1000, 4097, 12345}, gen[DS] = {0, 1, 0, 30, 200, 1, 700};
    rng = seed;
    dec_world_t w = {.H = H, .KH = KH, .D = D, .ps = 64, .n = n};
    for (int s = 0; s < DS; s++) {
        w.kv_len[s] = lens[s];
        w.indptr[s + 1] = w.indptr[s] + (lens[s] + w.ps - 1) / w.ps;
    }
    const int64_t nb = w.indptr[DS];
    w.pool = nb + 3;
    w.blocks = gpu_page_table(w.pool, nb, irand);
    w.owner = calloc((size_t)nb, 1);
    for (int s = 0; s < DS; s++) {
        const int prompt = lens[s] - gen[s] > 0 ? lens[s] - gen[s] : 1;
        uint8_t *ow = w.owner + w.indptr[s];
        cp_zigzag(n, w.ps, w.ps, 0, prompt, ow);
        for (int64_t b = (prompt + w.ps - 1) / w.ps; b < w.indptr[s + 1] - w.indptr[s]; b++)
            ow[b] = (uint8_t)cp_owner_next(n, b);
    }
    const size_t page = (size_t)KH * w.ps * D, pe = page * w.pool, qn = (size_t)DS * H * D;
    uint16_t *kb = malloc(2 * pe), *vb = malloc(2 * pe), *q = malloc(2 * qn), *ro = malloc(2 * qn);
    float *rl = malloc(sizeof(float) * DS * H);
    for (size_t i = 0; i < pe; i++) kb[i] = vb[i] = 0x7fc0;
    for (int s = 0; s < DS; s++)
        for (int t = 0; t < lens[s]; t++)
            for (int h = 0; h < KH; h++) {
                const size_t o = (size_t)w.blocks[w.indptr[s] + t / w.ps] * page + ((size_t)h * w.ps + t % w.ps) * D;
                for (int c = 0; c < D; c++) kb[o + c] = f2bf(frand()), vb[o + c] = f2bf(frand());
            }
    for (size_t i = 0; i < qn; i++) q[i] = f2bf(frand() * 2.f);
    CK_CUDA(cudaMalloc(&w.dk, 2 * pe));
    CK_CUDA(cudaMalloc(&w.dv, 2 * pe));
    CK_CUDA(cudaMalloc(&w.dq, 2 * qn));
    CK_CUDA(cudaMemcpy(w.dk, kb, 2 * pe, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(w.dv, vb, 2 * pe, cudaMemcpyHostToDevice));
    CK_CUDA(cudaMemcpy(w.dq, q, 2 * qn, cudaMemcpyHostToDevice));
    int32_t budget[DS];
    attn_cuda_shape_t qsh = {H, KH, D, w.ps, w.pool, 1.0f / sqrtf((float)D)};
    if (quest > 0) { // the summaries of every page, then the single-rank Quest
        for (int s = 0; s < DS; s++) budget[s] = quest;
        w.budget = budget;
        const size_t sum_bytes = sizeof(float) * (size_t)w.pool * KH * D;
        CK_CUDA(cudaMalloc((void **)&w.dkmin, sum_bytes));
        CK_CUDA(cudaMalloc((void **)&w.dkmax, sum_bytes));
        int32_t *plen = malloc(sizeof(int32_t) * (size_t)nb), *dpg, *dpl;
        for (int s = 0; s < DS; s++)
            for (int j = 0; j < w.indptr[s + 1] - w.indptr[s]; j++)
                plen[w.indptr[s] + j] = lens[s] - j * w.ps < w.ps ? lens[s] - j * w.ps : w.ps;
        CK_CUDA(cudaMalloc((void **)&dpg, sizeof(int32_t) * (size_t)nb));
        CK_CUDA(cudaMalloc((void **)&dpl, sizeof(int32_t) * (size_t)nb));
        CK_CUDA(cudaMemcpy(dpg, w.blocks, sizeof(int32_t) * (size_t)nb, cudaMemcpyHostToDevice));
        CK_CUDA(cudaMemcpy(dpl, plen, sizeof(int32_t) * (size_t)nb, cudaMemcpyHostToDevice));
        ck_assert_int_eq(attn_quest_summarize(&qsh, w.dk, dpg, dpl, (int)nb, w.dkmin, w.dkmax, NULL), 0);
        attn_cuda_limits_t lim = {DS, 0, nb, 0};
        attn_quest_plan_t *qp = NULL;
        ck_assert_int_eq(attn_quest_plan_create(&qsh, &lim, &qp), 0);
        attn_cuda_batch_t bt = {DS, NULL, w.indptr, w.blocks, w.kv_len, NULL, NULL, 0};
        size_t ws = 0;
        ck_assert_int_eq(attn_quest_plan(qp, &bt, budget, NULL, &ws), 0);
        ref_buf_t rb = ref_alloc(qn, DS * H, ws);
        attn_quest_args_t a = {w.dq, rb.out, rb.lse, w.dk, w.dv, w.dkmin, w.dkmax, rb.ws, ws};
        ck_assert_int_eq(attn_quest_run(qp, &a, NULL), 0);
        ref_finish(&rb, ro, rl);
        cudaFree(dpg), cudaFree(dpl);
        free(plen);
        attn_quest_plan_destroy(qp);
    } else { // the single-rank reference: the decode kernel over every block
        attn_cuda_shape_t sh = {H, KH, D, w.ps, w.pool, 1.0f / sqrtf((float)D)};
        attn_cuda_limits_t lim = {DS, 0, nb, 0};
        attn_cuda_plan_t *p = NULL;
        ck_assert_int_eq(attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &lim, &p), 0);
        attn_cuda_batch_t bt = {DS, NULL, w.indptr, w.blocks, w.kv_len, NULL, NULL, 0};
        size_t ws = 0;
        ck_assert_int_eq(attn_cuda_plan(p, &bt, NULL, &ws), 0);
        ref_buf_t rb = ref_alloc(qn, DS * H, ws);
        attn_cuda_args_t a = {w.dq, rb.out, rb.lse, w.dk, w.dv, rb.ws, ws, 0, NULL, NULL, 0, 0};
        ck_assert_int_eq(attn_cuda_run(p, &a, NULL), 0);
        ref_finish(&rb, ro, rl);
        attn_cuda_plan_destroy(p);
    }
    // TidalDecode: the single-rank selection (the dense LSE above), then a later layer's queries over it
    uint16_t *ro2 = malloc(2 * qn), *q2 = malloc(2 * qn);
    int32_t tb[DS];
    if (tidal > 0) {
        for (int s = 0; s < DS; s++) tb[s] = tidal;
        w.tidal = tb;
        for (size_t i = 0; i < qn; i++) q2[i] = f2bf(frand() * 2.f);
        CK_CUDA(cudaMalloc(&w.dq2, 2 * qn));
        CK_CUDA(cudaMemcpy(w.dq2, q2, 2 * qn, cudaMemcpyHostToDevice));
        attn_tidal_limits_t tl = {DS, nb, tidal, 0};
        attn_tidal_plan_t *tp = NULL;
        ck_assert_int_eq(attn_tidal_plan_create(&qsh, &tl, &tp), 0);
        attn_cuda_batch_t bt = {DS, NULL, w.indptr, w.blocks, w.kv_len, NULL, NULL, 0};
        size_t ws = 0;
        ck_assert_int_eq(attn_tidal_plan(tp, &bt, tb, NULL, &ws), 0);
        ref_buf_t rb = ref_alloc(qn, DS * H, ws);
        CK_CUDA(cudaMemcpy(rb.lse, rl, sizeof(float) * DS * H, cudaMemcpyHostToDevice)); // the dense LSE
        attn_tidal_select_args_t sa = {w.dq, w.dk, rb.lse, rb.ws, ws};
        ck_assert_int_eq(attn_tidal_select(tp, &sa, NULL), 0);
        attn_tidal_attend_args_t aa = {w.dq2, rb.out, NULL, w.dk, w.dv, rb.ws, ws};
        ck_assert_int_eq(attn_tidal_attend(tp, &aa, NULL), 0);
        ref_finish(&rb, ro2, NULL);
        attn_tidal_plan_destroy(tp);
    }
    w.out = malloc(2 * qn);
    w.out2 = malloc(2 * qn);
    w.out3 = malloc(2 * qn);
    w.lse = malloc(sizeof(float) * DS * H);
    memset(w.out, 0xff, 2 * qn);
    memset(w.out2, 0xff, 2 * qn);
    for (int i = 0; i < DS * H; i++) w.lse[i] = NAN;
    const int rc = dev_team_run(n, dec_body, &w);
    double rel, le, rel2 = 0, le2 = 0;
    compare(w.out, w.lse, ro, rl, DS, H, D, &rel, &le);
    if (tidal > 0) compare(w.out2, NULL, ro2, NULL, DS, H, D, &rel2, &le2);
    const int same = tidal > 0 ? memcmp(w.out2, w.out3, 2 * qn) == 0 : memcmp(w.out, w.out2, 2 * qn) == 0;
    const int exact = memcmp(tidal > 0 ? w.out2 : w.out, tidal > 0 ? ro2 : ro, 2 * qn) == 0;
    const int ok = rc == 0 && rel < 1e-2 && le < 1e-3 && rel2 < 1e-2 && same && (quest == 0 || n > 1 || exact);
    if (tidal > 0)
        printf("  %-4s decode (TidalDecode, %d positions) N=%d, %d/%d heads d%d, %d rows of 1 .. 12345 keys vs one "
               "rank: selection layer rel L2 %.2e, lse max err %.2e; next layer rel L2 %.2e, run twice %s, %s "
               "single-rank bits\n",
               ok ? "ok" : "FAIL", tidal, n, H, KH, D, DS, rel, le, rel2, same ? "bitwise equal" : "DIFFERS",
               exact ? "equals the" : "differs from the");
    else
        printf(
            "  %-4s decode%s N=%d, %d/%d heads d%d, %d rows of 1 .. 12345 keys vs one rank: rel L2 %.2e, lse max err "
            "%.2e, run twice %s, %s single-rank bits\n",
            ok ? "ok" : "FAIL", quest ? " (Quest, 8 pages)" : "", n, H, KH, D, DS, rel, le,
            same ? "bitwise equal" : "DIFFERS", exact ? "equals the" : "differs from the");
    cudaFree(w.dk), cudaFree(w.dv), cudaFree(w.dq), cudaFree(w.dkmin), cudaFree(w.dkmax), cudaFree(w.dq2);
    free(ro2), free(q2), free(w.out3);
    free(kb), free(vb), free(q), free(ro), free(rl), free(w.blocks), free(w.owner), free(w.out), free(w.out2),
        free(w.lse);
    return ok;
}

/* ---- sharded decode timing ------------------------------------------------------------ */
/* One rank: the plan, a warm-up layer, then five layers timed on the host
 * between barriers (the ranks share one GPU: a layer's time is the group's). */
static int dec_time_body(int r, cp_comm_t *c, void *ud) {
    dec_world_t *w = ud;
    const int n = cp_comm_size(c);
    cudaStream_t st = cp_comm_stream(c);
    attn_cuda_shape_t sh = {w->H, w->KH, w->D, w->ps, w->pool, 1.0f / sqrtf((float)w->D)};
    cp_cuda_limits_t lim = {.max_tokens = w->max_tok,
                            .max_decode_seqs = DS,
                            .max_decode_pages = w->indptr[DS],
                            .quest = w->budget != NULL,
                            .tidal_budget = w->tidal ? w->tidal[0] : 0};
    cp_cuda_plan_t *p = NULL;
    int rc = cp_cuda_plan_create(&sh, &lim, r, n, &p);
    if (rc) fprintf(stderr, "rank %d of %d: cp_cuda_plan_create: %d (%s)\n", r, n, rc, lc_strerror(rc));
    CHECK(rc == 0);
    cp_cuda_dec_batch_t b = {DS, w->kv_len, w->indptr, w->blocks, w->owner, w->budget, w->tidal};
    CHECK(cp_cuda_plan_decode(p, &b, st) == 0);
    void *dout;
    CU(cudaMalloc(&dout, (size_t)w->H * w->D * 2 * DS));
    for (int kind = 0; kind < (w->tidal ? 2 : 1); kind++) {
        double t0 = 0;
        for (int it = 0; it < 6; it++) {
            if (it == 1) { // after the warm-up
                CU(cudaStreamSynchronize(st));
                CHECK(cp_barrier(c) == 0);
                CU(cudaStreamSynchronize(st));
                t0 = lc_now_s();
            }
            if (w->tidal)
                rc = cp_cuda_run_decode_tidal(p, c, w->dk, w->dv, w->dq, dout, NULL, kind == 0);
            else
                rc = cp_cuda_run_decode_kv(p, c, w->dk, w->dv, w->dkmin, w->dkmax, w->dq, dout, NULL);
            CHECK(rc == 0);
        }
        CU(cudaStreamSynchronize(st));
        CHECK(cp_barrier(c) == 0);
        CU(cudaStreamSynchronize(st));
        w->t_ms[r][kind] = (lc_now_s() - t0) * 1e3 / 5;
    }
    cudaFree(dout);
    cp_cuda_plan_destroy(p);
    return 0;
}

/* Seven rows of 131,072 keys (a zig-zag prompt), the Llama-3-8B layer, zeros
 * (the times do not depend on the values): dense, Quest at 2,048 positions
 * (32 pages) and TidalDecode at 2,048 positions, N = 1, 2, 4, 8 device-local
 * ranks on one GPU. */
START_TEST(test_ring_decode_timing) {
    if (!have_sm90("ring decode timing")) return;
    const int H = 32, KH = 8, D = 128, T = 131072;
    printf("GPU sharded decode on one GPU (device-local), Llama-3-8B layer, %d rows of %d keys, ms per layer (the "
           "group's, host-timed over 5 layers):\n",
           DS, T);
    printf("| ranks | dense | Quest 2,048 | TidalDecode 2,048: selection layer | TidalDecode: later layer |\n"
           "|---:|---:|---:|---:|---:|\n");
    for (int n = 1; n <= 8; n *= 2) {
        dec_world_t w = {.H = H, .KH = KH, .D = D, .ps = 64, .n = n, .max_tok = T};
        for (int s = 0; s < DS; s++) {
            w.kv_len[s] = T;
            w.indptr[s + 1] = w.indptr[s] + T / w.ps;
        }
        const int64_t nb = w.indptr[DS];
        w.pool = nb;
        w.blocks = gpu_page_table(w.pool, nb, irand);
        w.owner = calloc((size_t)nb, 1);
        for (int s = 0; s < DS; s++) cp_zigzag(n, w.ps, w.ps, 0, T, w.owner + w.indptr[s]);
        const size_t pe = (size_t)KH * w.ps * D * w.pool, qn = (size_t)DS * H * D;
        CK_CUDA(cudaMalloc(&w.dk, 2 * pe));
        CK_CUDA(cudaMalloc(&w.dv, 2 * pe));
        CK_CUDA(cudaMalloc(&w.dq, 2 * qn));
        CK_CUDA(cudaMalloc((void **)&w.dkmin, sizeof(float) * (size_t)w.pool * KH * D));
        CK_CUDA(cudaMalloc((void **)&w.dkmax, sizeof(float) * (size_t)w.pool * KH * D));
        CK_CUDA(cudaMemset(w.dk, 0, 2 * pe));
        CK_CUDA(cudaMemset(w.dv, 0, 2 * pe));
        CK_CUDA(cudaMemset(w.dq, 0, 2 * qn));
        CK_CUDA(cudaMemset(w.dkmin, 0, sizeof(float) * (size_t)w.pool * KH * D));
        CK_CUDA(cudaMemset(w.dkmax, 0, sizeof(float) * (size_t)w.pool * KH * D));
        int32_t qb[DS], tb[DS];
        for (int s = 0; s < DS; s++) qb[s] = 2048 / w.ps, tb[s] = 2048;
        double ms[3][2] = {{0}};
        for (int m = 0; m < 3; m++) {
            w.budget = m == 1 ? qb : NULL;
            w.tidal = m == 2 ? tb : NULL;
            ck_assert_int_eq(dev_team_run(n, dec_time_body, &w), 0);
            for (int r = 0; r < n; r++)
                for (int k = 0; k < 2; k++) ms[m][k] = w.t_ms[r][k] > ms[m][k] ? w.t_ms[r][k] : ms[m][k];
        }
        printf("| %d | %.3f | %.3f | %.3f | %.3f |\n", n, ms[0][0], ms[1][0], ms[2][0], ms[2][1]);
        cudaFree(w.dk), cudaFree(w.dv), cudaFree(w.dq), cudaFree(w.dkmin), cudaFree(w.dkmax);
        free(w.blocks), free(w.owner);
    }
}
END_TEST

/* N = 1, 2, 3, 4, 8 ranks, 32/8 heads d 128 (seeds seed + i) and 8/2 d 64
 * (seed + 100 + i). */
static int check_decode_all(uint64_t seed, int quest, int tidal) {
    const int ns[] = {1, 2, 3, 4, 8};
    int ok = 1;
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        ok &= check_decode_q(32, 8, 128, ns[i], seed + i, quest, tidal);
        ok &= check_decode_q(8, 2, 64, ns[i], seed + 100 + i, quest, tidal);
        ok &= check_decode_q(4, 1, 256, ns[i], seed + 200 + i, quest, tidal); // Gemma 3's heads
    }
    return ok;
}

/* TidalDecode inside the sharded decode: a selection layer (the dense
 * sharded decode, every row's LSE to every rank, the masses all-reduced, the
 * selection on every rank), then a later layer over each rank's share. */
START_TEST(test_ring_decode_tidal) {
    if (!have_sm90("ring decode, TidalDecode")) return;
    ck_assert_msg(check_decode_all(2400, 0, 256),
                  "the sharded GPU TidalDecode differs from the single-rank TidalDecode (see the FAIL lines)");
}
END_TEST

/* Quest inside the sharded decode: every rank scores its pages, the scores
 * all-reduced, the single-rank selection on every rank, each attends its
 * selected pages. */
START_TEST(test_ring_decode_quest) {
    if (!have_sm90("ring decode, Quest")) return;
    ck_assert_msg(check_decode_all(2200, 8, 0),
                  "the sharded GPU Quest decode differs from the single-rank Quest (see the FAIL lines)");
}
END_TEST

START_TEST(test_ring_decode) {
    ck_assert_msg(check_decode_all(2000, 0, 0),
                  "the sharded GPU decode differs from the single-rank kernel (see the FAIL lines)");
}
END_TEST

/* ---- the ring's timing ------------------------------------------------------------------ */
/* A Llama-3-8B layer (32 q / 8 kv heads, d 128) at 128K tokens, the real
 * ring on one GPU: per step, each rank's compute (attention and merge) and
 * its wait for the step's transfer after it (CUDA events on its stream). On
 * one GPU the N ranks share the SMs and HBM: a step's compute is inflated by
 * the other ranks' work running at the same time. */
START_TEST(test_ring_timing) {
    if (!have_sm90("ring timing")) return;
    const int64_t T = 131072;
    printf("GPU ring on one GPU (device-local), Llama-3-8B layer (32 q / 8 kv heads, d 128, bf16, pages of 64), %lld "
           "tokens, zig-zag:\n",
           (long long)T);
    printf("| ranks | tokens/rank | pack MiB | step | compute ms (mean / max over ranks) | wait ms (mean / max) |\n"
           "|---|---:|---:|---:|---:|---:|\n");
    for (int n = 1; n <= 8; n *= 2) {
        world_t w;
        world_build(&w, 32, 8, 128, n, 0, T, 0);
        w.timing = 1;
        ck_assert_int_eq(dev_team_run(n, ring_body, &w), 0);
        const double pack = 2.0 * (double)w.max_pack * w.KH * w.ps * w.D * 2 / (1 << 20);
        float tot_c = 0, tot_w = 0;
        for (int k = 0; k < n; k++) {
            float mc = 0, xc = 0, mw = 0, xw = 0;
            for (int r = 0; r < n; r++) {
                mc += w.ms_c[r][k] / n, mw += w.ms_w[r][k] / n;
                xc = w.ms_c[r][k] > xc ? w.ms_c[r][k] : xc;
                xw = w.ms_w[r][k] > xw ? w.ms_w[r][k] : xw;
            }
            tot_c += mc, tot_w += mw;
            printf("| %d | %lld | %.0f | %d | %.3f / %.3f | %.3f / %.3f |\n", n, (long long)(T / n), pack, k, mc, xc,
                   mw, xw);
        }
        printf("| %d | | | all | %.3f | %.3f |\n", n, tot_c, tot_w);
        world_free(&w);
    }
}
END_TEST

/* FlexPrefill's ring against the dense ring at 128K tokens on the structured
 * inputs, the Llama-3-8B layer, device-local on one GPU: per rank the
 * selection (the distributed one, with its all-reduces), the sum over steps
 * of compute and wait; mean and max over ranks; the density. */
START_TEST(test_ring_flex_timing) {
    if (!have_sm90("ring timing, FlexPrefill")) return;
    const int64_t T = 131072;
    printf("GPU ring on one GPU (device-local), Llama-3-8B layer, %lld tokens, structured inputs, zig-zag units of "
           "128: FlexPrefill (gamma 0.9, tau 0.1, min_budget 128) against dense\n",
           (long long)T);
    printf("| ring | ranks | density | selection ms (mean / max) | compute ms (mean / max) | wait ms (mean / max) "
           "|\n|---|---:|---:|---:|---:|---:|\n");
    const attn_cuda_flex_policy_t pol = {0.9f, 0.1f, 128, 0, (int)T, 0};
    for (int n = 1; n <= 8; n *= 2)
        for (int sp = 0; sp < 2; sp++) {
            rng = 99;
            world_t w;
            world_build_at(&w, 32, 8, 128, n, 0, T, 2, 128);
            w.timing = 1;
            w.flex = sp ? &pol : NULL;
            ck_assert_int_eq(dev_team_run(n, ring_body, &w), 0);
            float mc = 0, xc = 0, mw = 0, xw = 0, ma = 0, xa = 0;
            double pairs = 0;
            for (int r = 0; r < n; r++) {
                float c = 0, wt = 0;
                for (int k = 0; k < n; k++) c += w.ms_c[r][k], wt += w.ms_w[r][k];
                mc += c / n, mw += wt / n, ma += w.ms_a2a[r] / n;
                xc = c > xc ? c : xc, xw = wt > xw ? wt : xw, xa = w.ms_a2a[r] > xa ? w.ms_a2a[r] : xa;
                pairs += w.sparse_pairs[r] / 2; // two runs
            }
            const double dense = (double)T * (T + 1) / 2 * 32;
            printf("| %s | %d | %.3f | %.3f / %.3f | %.3f / %.3f | %.3f / %.3f |\n", sp ? "FlexPrefill" : "dense", n,
                   sp ? pairs / dense : 1.0, ma, xa, mc, xc, mw, xw);
            world_free(&w);
        }
}
END_TEST

/* Pass-KV against pass-Q on one slice: a 4,096-token chunk on a cached
 * prefix of 126,976 (128K in all), the Llama-3-8B layer, device-local on one
 * GPU. Per rank, the sum over steps of compute and wait, and pass-Q's
 * all-to-all with the merge; mean and max over ranks. */
START_TEST(test_ring_pass_q_timing) {
    if (!have_sm90("ring timing, pass-Q")) return;
    const int64_t P = 126976, T = 4096;
    printf("GPU ring on one GPU (device-local), Llama-3-8B layer, a %lld-token chunk on a cached prefix of %lld:\n",
           (long long)T, (long long)P);
    printf("| ring | ranks | compute ms (mean / max) | wait ms (mean / max) | all-to-all and merge ms (mean / max) "
           "|\n|---|---:|---:|---:|---:|\n");
    for (int n = 2; n <= 8; n *= 2)
        for (int q = 0; q < 2; q++) {
            world_t w;
            world_build(&w, 32, 8, 128, n, P, T, 0);
            w.timing = 1;
            w.mode = q ? CP_CUDA_PASS_Q : CP_CUDA_PASS_KV;
            w.max_q = q ? w.max_rows : 0;
            ck_assert_int_eq(dev_team_run(n, ring_body, &w), 0);
            float mc = 0, xc = 0, mw = 0, xw = 0, ma = 0, xa = 0;
            for (int r = 0; r < n; r++) {
                float c = 0, wt = 0;
                for (int k = 0; k < n; k++) c += w.ms_c[r][k], wt += w.ms_w[r][k];
                mc += c / n, mw += wt / n, ma += w.ms_a2a[r] / n;
                xc = c > xc ? c : xc, xw = wt > xw ? wt : xw, xa = w.ms_a2a[r] > xa ? w.ms_a2a[r] : xa;
            }
            printf("| %s | %d | %.3f / %.3f | %.3f / %.3f | %.3f / %.3f |\n", q ? "pass-Q" : "pass-KV", n, mc, xc, mw,
                   xw, ma, xa);
            world_free(&w);
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
    tcase_add_test(tc, test_device_local_abort);
    tcase_add_test(tc, test_ring_bad_input);
    tcase_add_test(tc, test_ring_prefill);
    tcase_add_test(tc, test_ring_prefill_pass_q);
    tcase_add_test(tc, test_ring_prefill_flex);
    tcase_add_test(tc, test_ring_flex_bad_input);
    tcase_add_test(tc, test_ring_prefill_anchor);
    tcase_add_test(tc, test_ring_decode);
    tcase_add_test(tc, test_ring_decode_quest);
    tcase_add_test(tc, test_ring_decode_tidal);
    tcase_add_test(tc, test_ring_timing);
    tcase_add_test(tc, test_ring_flex_timing);
    tcase_add_test(tc, test_ring_decode_timing);
    tcase_add_test(tc, test_ring_pass_q_timing);
#endif
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); // one CUDA context for the process
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
