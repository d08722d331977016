/* Check suite for src/attn/cp: the communicators, and context-parallel
 * attention on N in-process ranks (one thread each, every exchange through
 * the threads communicator) against the single-rank kernels on the same
 * paged KV (shuffled block table, NaN-poisoned spare blocks and slots):
 * - comm: point to point with several transfers in flight, all-gather,
 *   all-reduce (the same bits on every rank), broadcast, all-to-all, barrier
 *   and a size mismatch, for 1, 2, 3, 4 and 8 ranks;
 * - prefill: N = 2, 3, 4, 8 over lengths 1, 37, 300, 1001 (pass-KV), on a
 *   sharded prefix (pass-KV and pass-Q), sliding-window layers (on a table
 *   of a layer group released below the window, too), StreamingLLM,
 *   AnchorAttention and FlexPrefill with real selections;
 * - decode: dense, sliding window (released below it too), Quest, TidalDecode (layer by layer, so the
 *   selection flows), StreamingLLM, several sequences and a multi-row slice;
 * - model (check_cp_model.c): a tiny random model through the CPU executor
 *   with 2 and 3 ranks against 1 (two prompt slices, a forked prefix,
 *   decode), a sharded sequence alone and beside others (the same bits), and
 *   through the scheduler (the same greedy tokens, the per-rank metrics).
 *
 * Tolerance. The ranks merge partial results by LSE in another order than
 * the single-rank kernels merge their pieces, so bits differ: attention
 * outputs (convex combinations of values in [-1, 1]) must agree within
 * CP_TOL_OUT and LSEs within CP_TOL_LSE (absolute), for every row, head and
 * layer; the tiny model's logits (magnitude ~10) within 1e-3 with the same
 * argmax in every row. The errors measured are printed (max over the cases
 * of each test). */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attn/attn.h"
#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_comm.h"
#include "common/status.h"

/* check_cp_model.c: the whole model through the executor and the scheduler. */
TCase *cp_model_tcase(void);
/* max |a - b|, NaN or an infinity on one side only counting as infinite. */
double max_diff(const float *a, const float *b, size_t n);

#define CP_TOL_OUT 5e-6
#define CP_TOL_LSE 1e-5

/* ---- random numbers ---------------------------------------------------------------- */
static uint64_t rng_state;
static float frand(void) { // uniform in [-1, 1)
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rng_state >> 40) / (double)(1 << 24)) * 2.0f - 1.0f;
}

/* ---- a team of ranks ------------------------------------------------------------------- */
typedef int (*rank_fn)(int rank, cp_comm_t *c, void *ud);
typedef struct {
    cp_threads_t *g;
    rank_fn fn;
    void *ud;
    int rank, rc;
} member_t;

static void *member_main(void *a) {
    member_t *m = a;
#ifdef _OPENMP
    omp_set_num_threads(1); // N ranks on a 2-core machine: one thread each
#endif
    m->rc = m->fn(m->rank, cp_threads_comm(m->g, m->rank), m->ud);
    return NULL;
}

/* Runs fn on n ranks, one thread each; the first failing status. */
static int team_run(int n, rank_fn fn, void *ud) {
    cp_threads_t *g = cp_threads_create(n);
    ck_assert_ptr_nonnull(g);
    member_t m[CP_MAX_RANKS];
    pthread_t th[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) {
        m[r] = (member_t){g, fn, ud, r, 0};
        ck_assert_int_eq(pthread_create(&th[r], NULL, member_main, &m[r]), 0);
    }
    int rc = 0;
    for (int r = 0; r < n; r++) {
        pthread_join(th[r], NULL);
        if (!rc) rc = m[r].rc;
    }
    cp_threads_destroy(g);
    return rc;
}

/* ---- communicator ------------------------------------------------------------------------ */
static int comm_body(int r, cp_comm_t *c, void *ud) {
    const int n = cp_comm_size(c);
    int rc = 0;
#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        if (!(x)) {                                                                                                    \
            fprintf(stderr, "rank %d of %d: %s failed (line %d)\n", r, n, #x, __LINE__);                               \
            return -100;                                                                                               \
        }                                                                                                              \
    } while (0)
    CHECK(cp_comm_rank(c) == r && !strcmp(cp_comm_kind(c), "threads") && cp_comm_stream(c) == NULL);
    /* a ring of messages of rank-dependent sizes, several in flight */
    enum { M = 3 };
    int32_t sb[M][64], rb[M][64];
    cp_req_t rq[M];
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    for (int k = 0; k < M; k++) {
        for (int i = 0; i < 64; i++) sb[k][i] = r * 1000 + k * 100 + i, rb[k][i] = -1;
        rc = cp_sendrecv_start(c, sb[k], sizeof(int32_t) * (size_t)(10 + r + k), nxt, rb[k],
                               sizeof(int32_t) * (size_t)(10 + prv + k), prv, &rq[k]);
        CHECK(rc == 0);
    }
    for (int k = M - 1; k >= 0; k--) CHECK(cp_wait(c, &rq[k]) == 0 && rq[k].slot == -1);
    for (int k = 0; k < M; k++)
        for (int i = 0; i < 64; i++) CHECK(rb[k][i] == (i < 10 + prv + k ? prv * 1000 + k * 100 + i : -1));
    /* allgather */
    double mine[3] = {r, r * 2.5, -r}, all[3 * CP_MAX_RANKS];
    CHECK(cp_allgather(c, mine, sizeof mine, all) == 0);
    for (int s = 0; s < n; s++) CHECK(all[3 * s] == s && all[3 * s + 1] == s * 2.5 && all[3 * s + 2] == -s);
    /* allreduce: the rank-order sum, the same bits everywhere */
    float v[5], want[5];
    for (int i = 0; i < 5; i++) {
        v[i] = 0.1f * (float)(r + 1) * (float)(i + 1) + 1e-3f * (float)r;
        want[i] = 0;
        for (int s = 0; s < n; s++) want[i] += 0.1f * (float)(s + 1) * (float)(i + 1) + 1e-3f * (float)s;
    }
    CHECK(cp_allreduce_sum(c, v, 5) == 0);
    for (int i = 0; i < 5; i++) CHECK(memcmp(&v[i], &want[i], sizeof(float)) == 0);
    /* broadcast from every root */
    for (int root = 0; root < n; root++) {
        int64_t b[4] = {r, r, r, r};
        CHECK(cp_bcast(c, b, sizeof b, root) == 0);
        for (int i = 0; i < 4; i++) CHECK(b[i] == root);
    }
    /* all-to-all of varying sizes: r sends (r + s) % 3 + 1 ints to s */
    int32_t sbuf[4 * CP_MAX_RANKS], rbuf[4 * CP_MAX_RANKS];
    size_t soff[CP_MAX_RANKS], sbytes[CP_MAX_RANKS], roff[CP_MAX_RANKS], rbytes[CP_MAX_RANKS], so = 0, ro = 0;
    for (int s = 0; s < n; s++) {
        const int ns = (r + s) % 3 + 1;
        soff[s] = so * sizeof(int32_t), sbytes[s] = (size_t)ns * sizeof(int32_t);
        roff[s] = ro * sizeof(int32_t), rbytes[s] = (size_t)ns * sizeof(int32_t); // (s + r) % 3 + 1 alike
        for (int i = 0; i < ns; i++) sbuf[so + i] = r * 100 + s * 10 + i;
        so += (size_t)ns, ro += (size_t)ns;
    }
    CHECK(cp_alltoallv(c, sbuf, soff, sbytes, rbuf, roff, rbytes) == 0);
    for (int s = 0; s < n; s++)
        for (int i = 0; i < (s + r) % 3 + 1; i++) CHECK(rbuf[roff[s] / sizeof(int32_t) + i] == s * 100 + r * 10 + i);
    CHECK(cp_barrier(c) == 0);
    /* a size mismatch is an error on both sides, not a crash */
    if (n > 1) {
        int32_t x[4] = {0}, y[4];
        rc = cp_sendrecv(c, x, r == 0 ? 8 : 16, nxt, y, 16, prv);
        CHECK((r == 0 || r == 1) ? rc == LC_EINVAL : rc == 0);
    }
    CHECK(cp_barrier(c) == 0);
    cp_comm_stats_t st;
    cp_comm_stats(c, &st);
    CHECK(n == 1 || (st.bytes_sent > 0 && st.bytes_recv > 0 && st.transfers > 0));
    return 0;
#undef CHECK
}

START_TEST(test_comm_threads) {
    const int ns[] = {1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) ck_assert_int_eq(team_run(ns[i], comm_body, NULL), 0);
    ck_assert_ptr_null(cp_threads_create(0));
    ck_assert_ptr_null(cp_threads_create(CP_MAX_RANKS + 1));
}
END_TEST

/* ---- a paged KV pool ---------------------------------------------------------------------- */
/* One layer of one sequence in a pool with a shuffled block table, spare
 * blocks and unused slots poisoned with NaN, and Quest summaries. */
typedef struct {
    attn_shape_t sh;
    int bs, n_blk, pool;
    int64_t n;
    int32_t *blocks; // shared by every layer of a case
    float *kp, *vp, *kmn, *kmx;
} pool_t;

static int32_t *shuffled_table(int pool) {
    int32_t *b = malloc(sizeof(int32_t) * pool);
    for (int i = 0; i < pool; i++) b[i] = i;
    for (int i = pool - 1; i > 0; i--) {
        int j = (int)((frand() * 0.5f + 0.5f) * (i + 1));
        j = j > i ? i : j;
        int32_t x = b[i];
        b[i] = b[j], b[j] = x;
    }
    return b;
}

/* Keys of amplitude kamp (larger: more peaked attention), values in [-1, 1]. */
static void pool_fill(pool_t *t, const attn_shape_t *sh, int bs, int64_t n, const int32_t *blocks, float kamp) {
    const int KH = sh->n_kv_heads, d = sh->head_dim;
    t->sh = *sh;
    t->bs = bs;
    t->n = n;
    t->n_blk = (int)((n + bs - 1) / bs);
    t->pool = t->n_blk + 3;
    t->blocks = (int32_t *)blocks;
    const size_t bstr = (size_t)KH * bs * d, sstr = (size_t)KH * d;
    t->kp = malloc(sizeof(float) * bstr * t->pool);
    t->vp = malloc(sizeof(float) * bstr * t->pool);
    t->kmn = malloc(sizeof(float) * sstr * t->pool);
    t->kmx = malloc(sizeof(float) * sstr * t->pool);
    for (size_t i = 0; i < bstr * t->pool; i++) t->kp[i] = t->vp[i] = NAN;
    for (size_t i = 0; i < sstr * t->pool; i++) t->kmn[i] = t->kmx[i] = NAN;
    for (int64_t p = 0; p < n; p++) {
        const int32_t b = blocks[p / bs];
        const int off = (int)(p % bs);
        for (int h = 0; h < KH; h++) {
            float *kd = t->kp + b * bstr + (size_t)h * d * bs + off,
                  *vd = t->vp + b * bstr + ((size_t)h * bs + off) * d;
            float *mn = t->kmn + b * sstr + (size_t)h * d, *mx = t->kmx + b * sstr + (size_t)h * d;
            for (int c = 0; c < d; c++) {
                float k = frand() * kamp;
                kd[(size_t)c * bs] = k;
                vd[c] = frand();
                if (off == 0 || k < mn[c]) mn[c] = k;
                if (off == 0 || k > mx[c]) mx[c] = k;
            }
        }
    }
}

static void pool_free(pool_t *t) { free(t->kp), free(t->vp), free(t->kmn), free(t->kmx); }

static attn_kv_t pool_kv(const pool_t *t) {
    const size_t bstr = (size_t)t->sh.n_kv_heads * t->bs * t->sh.head_dim,
                 sstr = (size_t)t->sh.n_kv_heads * t->sh.head_dim;
    return (attn_kv_t){t->kp, t->vp, t->kmn, t->kmx, bstr, sstr, t->blocks, t->bs, t->n};
}

static attn_store_t pool_store(const pool_t *t) {
    attn_kv_t kv = pool_kv(t);
    return (attn_store_t){.k = kv.k,
                          .v = kv.v,
                          .kmin = kv.kmin,
                          .kmax = kv.kmax,
                          .blk_stride = kv.blk_stride,
                          .sum_stride = kv.sum_stride,
                          .block_size = kv.block_size};
}

static float *rand_q(size_t rows, const attn_shape_t *sh, float amp) {
    float *q = malloc(sizeof(float) * rows * sh->n_heads * sh->head_dim);
    for (size_t i = 0; i < rows * sh->n_heads * sh->head_dim; i++) q[i] = frand() * amp;
    return q;
}

double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        if (isinf(a[i]) && isinf(b[i]) && a[i] == b[i]) continue;
        double e = fabs((double)a[i] - b[i]);
        if (!(e <= m)) m = isnan(e) ? INFINITY : e;
    }
    return m;
}

/* ---- one case: a batch of sharded slices on N ranks ---------------------------------------- */
enum { MAXL = 4, MAXS = 4 };
typedef struct {
    attn_shape_t sh;
    int n_layers, n_seqs, n_rows, bs, mode;
    int64_t window;  // the layers' own sliding window (0: none)
    int group;       // the store's layer group: the sequences' table at blocks + group * group_stride
    pool_t kv[MAXL]; // one pool per layer, blocks of all sequences in one table each
    cp_seq_t seqs[MAXS];
    float *q[MAXL];   // (n_rows, H, d) per layer
    float *out[MAXL]; // (n_rows, H, d) per layer: the ranks' results
    float *lse[MAXL];
    double computed;
} cpcase_t;

static int case_body(int r, cp_comm_t *c, void *ud) {
    cpcase_t *k = ud;
    const int N = cp_comm_size(c);
    cp_plan_t *p = cp_plan_create(&k->sh, k->n_layers, r, N);
    if (!p) return LC_ENOMEM;
    cp_plan_force_mode(p, k->mode);
    int64_t win[MAXL];
    for (int l = 0; l < k->n_layers; l++) win[l] = k->window;
    int rc = cp_plan_windows(p, win);
    cp_batch_t b = {.n_rows = k->n_rows, .n_seqs = k->n_seqs, .seqs = k->seqs, .block_size = k->bs};
    if (!rc) rc = cp_plan(p, &b);
    for (int l = 0; !rc && l < k->n_layers; l++) {
        attn_store_t st = pool_store(&k->kv[l]);
        st.group = k->group;
        rc = cp_run(p, c, l, k->window, &st, k->q[l], k->out[l], k->lse[l]);
    }
    cp_plan_destroy(p);
    return rc;
}

static void case_free(cpcase_t *k) {
    for (int l = 0; l < k->n_layers; l++) {
        pool_free(&k->kv[l]);
        free(k->q[l]), free(k->out[l]), free(k->lse[l]);
    }
}

/* Single-rank references: one attn plan per sequence (alone in its batch),
 * run layer by layer as a model would, so TidalDecode's selection flows
 * through the sequence's state. */
static attn_plan_t *ref_plan(const cpcase_t *k, int i, attn_state_t *st) {
    const cp_seq_t *s = &k->seqs[i];
    attn_plan_t *p = attn_plan_create(&k->sh, k->n_layers);
    ck_assert_ptr_nonnull(p);
    attn_seq_t a = {.tok0 = 0,
                    .n_tok = s->n_tok,
                    .pos0 = s->pos0,
                    .blocks = s->blocks,
                    .group_stride = s->group_stride,
                    .state = st,
                    .decode = s->decode,
                    .prompt_end = s->prompt_end};
    attn_batch_t b = {.n_rows = s->n_tok, .n_seqs = 1, .seqs = &a, .block_size = k->bs};
    ck_assert_int_eq(attn_plan(p, &b), 0);
    return p;
}

/* Runs the case on N ranks and compares every sequence, layer by layer
 * (the references run layer by layer too, so TidalDecode's selection state
 * flows as it does through a model). Returns the largest output error, and
 * the largest LSE error in *lse_err. */
static double case_check(cpcase_t *k, int N, attn_state_t **states, double *lse_err) {
    const int H = k->sh.n_heads;
    const size_t rs = (size_t)H * k->sh.head_dim;
    for (int l = 0; l < k->n_layers; l++) {
        for (size_t i = 0; i < (size_t)k->n_rows * rs; i++) k->out[l][i] = NAN;
        for (size_t i = 0; i < (size_t)k->n_rows * H; i++) k->lse[l][i] = NAN;
    }
    ck_assert_int_eq(team_run(N, case_body, k), 0);
    double worst = 0, worst_l = 0;
    float *ro = malloc(sizeof(float) * (size_t)k->n_rows * rs), *rl = malloc(sizeof(float) * (size_t)k->n_rows * H);
    attn_plan_t *rp[MAXS];
    for (int i = 0; i < k->n_seqs; i++) rp[i] = ref_plan(k, i, states ? states[i] : NULL);
    for (int l = 0; l < k->n_layers; l++)
        for (int i = 0; i < k->n_seqs; i++) {
            const cp_seq_t *s = &k->seqs[i];
            attn_store_t st = pool_store(&k->kv[l]);
            st.group = k->group;
            ck_assert_int_eq(attn_run(rp[i], l, k->window, &st, k->q[l] + (size_t)s->tok0 * rs, ro, rl), 0);
            double e = max_diff(k->out[l] + (size_t)s->tok0 * rs, ro, (size_t)s->n_tok * rs);
            double el = max_diff(k->lse[l] + (size_t)s->tok0 * H, rl, (size_t)s->n_tok * H);
            ck_assert_msg(e <= CP_TOL_OUT && el <= CP_TOL_LSE,
                          "N=%d seq %d (%s, pos0 %lld, %d rows) layer %d: out err %g, lse err %g", N, i,
                          s->decode ? "decode" : "prefill", (long long)s->pos0, s->n_tok, l, e, el);
            worst = e > worst ? e : worst;
            worst_l = el > worst_l ? el : worst_l;
        }
    for (int i = 0; i < k->n_seqs; i++) attn_plan_destroy(rp[i]);
    free(ro), free(rl);
    *lse_err = worst_l;
    return worst;
}

/* A case of one prompt slice [pos0, pos0 + n_tok) whose prefix [0, pos0)
 * was sharded by an earlier slice (zig-zag over the prefix), n_layers layers. */
static void case_prefill(cpcase_t *k, const attn_shape_t *sh, int N, int bs, int align, int64_t pos0, int n_tok,
                         int n_layers, int64_t window, int mode, uint8_t *owner, int32_t **table, float kamp) {
    memset(k, 0, sizeof *k);
    k->sh = *sh;
    k->n_layers = n_layers;
    k->bs = bs;
    k->mode = mode;
    k->window = window;
    const int64_t n = pos0 + n_tok;
    const int n_blk = (int)((n + bs - 1) / bs);
    *table = shuffled_table(n_blk + 3);
    memset(owner, 0, (size_t)n_blk);
    if (pos0 > 0) cp_zigzag(N, bs, bs, 0, pos0, owner);
    cp_zigzag(N, bs, align, pos0, n_tok, owner);
    for (int l = 0; l < n_layers; l++) {
        pool_fill(&k->kv[l], sh, bs, n, *table, kamp);
        k->q[l] = rand_q((size_t)n_tok, sh, 1.5f);
        k->out[l] = malloc(sizeof(float) * (size_t)n_tok * sh->n_heads * sh->head_dim);
        k->lse[l] = malloc(sizeof(float) * (size_t)n_tok * sh->n_heads);
    }
    k->n_seqs = 1;
    k->n_rows = n_tok;
    k->seqs[0] = (cp_seq_t){.tok0 = 0, .n_tok = n_tok, .pos0 = pos0, .blocks = *table, .owner = owner};
}

/* Layer groups (kv.h): the case's layers read the second of two tables
 * (store group 1), a sliding group's, whose entries below each sequence's
 * first window block are released (-1) as kv_seq_trim leaves them; the
 * first table is a decoy (another permutation of the pool). Neither the
 * ranks nor the references may read a released entry or the decoy. table:
 * the one the pools were filled through (cap entries); returns the pair,
 * which the sequences now point into. */
static int32_t *group_tables(cpcase_t *k, const int32_t *table, int cap) {
    int32_t *g = malloc(sizeof(int32_t) * 2 * (size_t)cap), *decoy = shuffled_table(cap);
    memcpy(g, decoy, sizeof(int32_t) * (size_t)cap);
    memcpy(g + cap, table, sizeof(int32_t) * (size_t)cap);
    free(decoy);
    k->group = 1;
    for (int i = 0; i < k->n_seqs; i++) {
        cp_seq_t *s = &k->seqs[i];
        const ptrdiff_t off = s->blocks - table;
        s->blocks = g + off;
        s->group_stride = (size_t)cap;
        const int64_t lo =
            s->pos0 - (k->window - 1 + ATTN_BK - 1); // kv_config_swa_first, model_kv_config_grouped's swa_keep
        for (int64_t b = 0; lo > 0 && b < lo / k->bs; b++) g[cap + off + b] = -1;
    }
    return g;
}

/* ---- prefill ---------------------------------------------------------------------------- */
static void dense_prefill_cases(int mode, int with_prefix, const char *label) {
    const attn_shape_t sh = {4, 2, 32, 1.0f / sqrtf(32.0f)};
    const int Ns[] = {2, 3, 4, 8};
    const int lens[] = {1, 37, 300, 1001};
    double worst[4] = {0}, worst_l = 0;
    uint8_t owner[256];
    for (int a = 0; a < 4; a++)
        for (int li = 0; li < 4; li++)
            for (int al = 0; al < 2; al++) {
                rng_state = 1000 + 31 * a + 7 * li + al;
                cpcase_t k;
                int32_t *table;
                const int64_t pos0 = with_prefix ? 16 * (li + 1) * 5 + (al ? 7 : 0) : 0;
                case_prefill(&k, &sh, Ns[a], 16, al ? 128 : 16, pos0, lens[li], 1, 0, mode, owner, &table, 1.5f);
                double el, e = case_check(&k, Ns[a], NULL, &el);
                worst[a] = e > worst[a] ? e : worst[a];
                worst_l = el > worst_l ? el : worst_l;
                case_free(&k);
                free(table);
            }
    printf("cp %s: max |out - single rank| N=2 %.2e, N=3 %.2e, N=4 %.2e, N=8 %.2e; max |lse diff| %.2e\n", label,
           worst[0], worst[1], worst[2], worst[3], worst_l);
}

START_TEST(test_prefill_pass_kv) { dense_prefill_cases(1, 0, "dense prefill, pass-KV"); }
END_TEST

START_TEST(test_prefill_prefix_pass_kv) { dense_prefill_cases(1, 1, "dense prefill on a sharded prefix, pass-KV"); }
END_TEST

START_TEST(test_prefill_prefix_pass_q) { dense_prefill_cases(2, 1, "dense prefill on a sharded prefix, pass-Q"); }
END_TEST

/* A sliding-window layer and StreamingLLM's mask ride the same rings. */
START_TEST(test_prefill_windows) {
    const attn_shape_t sh = {6, 2, 16, 0.25f};
    uint8_t owner[256];
    double worst = 0, el;
    for (int N = 2; N <= 4; N++)
        for (int mode = 1; mode <= 2; mode++) {
            rng_state = 77 + N * 3 + mode;
            cpcase_t k;
            int32_t *table;
            case_prefill(&k, &sh, N, 16, 16, 200, 333, 1, 100, mode, owner, &table, 1.5f);
            double e = case_check(&k, N, NULL, &el);
            worst = e > worst ? e : worst;
            case_free(&k);
            free(table);
        }
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_STREAMING;
    pol.sink_tokens = 5;
    pol.window_tokens = 90;
    for (int N = 2; N <= 4; N += 2) {
        rng_state = 99 + N;
        cpcase_t k;
        int32_t *table;
        case_prefill(&k, &sh, N, 16, 16, 0, 600, 1, 0, 1, owner, &table, 1.5f);
        attn_state_t *st = attn_state_create(&sh, 1, &pol);
        k.seqs[0].state = st;
        double e = case_check(&k, N, &st, &el);
        worst = e > worst ? e : worst;
        attn_state_destroy(st);
        case_free(&k);
        free(table);
    }
    printf("cp sliding window and streaming prefill: max |out diff| %.2e\n", worst);
}
END_TEST

/* A sliding layer of a model with layer groups: its table released below
 * the window (group_tables), prompt slices on a sharded prefix and from
 * position 0, windows shorter and longer than a rank's chunk. */
START_TEST(test_prefill_window_groups) {
    const attn_shape_t sh = {6, 2, 16, 0.25f};
    const struct {
        int64_t pos0;
        int n_tok;
        int64_t window;
        int align;
    } cs[] = {{200, 333, 100, 32}, {640, 301, 48, 32},  {0, 700, 64, 32},
              {515, 1, 100, 32},   {300, 260, 400, 32}, {240, 360, 48, 128}};
    uint8_t owner[256];
    double worst = 0, wl = 0, el;
    for (int N = 2; N <= 8; N += N < 4 ? 1 : 4)
        for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
            rng_state = 4000 + 10 * (uint64_t)N + i;
            cpcase_t k;
            int32_t *table;
            case_prefill(&k, &sh, N, 16, cs[i].align, cs[i].pos0, cs[i].n_tok, 2, cs[i].window, 1, owner, &table, 1.5f);
            const int cap = (int)((cs[i].pos0 + cs[i].n_tok + 15) / 16) + 3;
            int32_t *g = group_tables(&k, table, cap);
            double e = case_check(&k, N, NULL, &el);
            worst = e > worst ? e : worst;
            wl = el > wl ? el : wl;
            case_free(&k);
            free(table), free(g);
        }
    printf("cp sliding layers with released blocks (layer groups), prefill: max |out diff| %.2e, |lse diff| %.2e\n",
           worst, wl);
}
END_TEST

/* One AnchorAttention case (a sequence of n_tok rows at pos0, KV blocks of
 * bs on N ranks) in the ring against the single-rank kernel: the largest
 * output and LSE errors into *w and *wl; returns the prefill density. */
static double anchor_case(const attn_shape_t *sh, const attn_policy_t *pol, int N, int bs, int64_t pos0, int n_tok,
                          double *w, double *wl) {
    uint8_t owner[256];
    cpcase_t k;
    int32_t *table;
    double el;
    case_prefill(&k, sh, N, 16, bs, pos0, n_tok, 1, 0, 1, owner, &table, 3.0f);
    attn_state_t *st = attn_state_create(sh, 1, pol);
    k.seqs[0].state = st;
    const double e = case_check(&k, N, &st, &el);
    const attn_stats_t *sts = attn_state_stats(st);
    const double dn = sts->prefill_computed / sts->prefill_total;
    *w = e > *w ? e : *w;
    *wl = el > *wl ? el : *wl;
    attn_state_destroy(st);
    case_free(&k);
    free(table);
    return dn;
}

/* AnchorAttention inside the ring: the same stripes as the single-rank
 * kernel (a scaled-down geometry: blocks of 16, windows of 32 and 64), on
 * an empty and on a sharded prefix, with a real theta (the single-rank
 * density must be < 1, so the selection matters), with the probe (it must
 * fire somewhere and not everywhere) and with theta = inf. */
START_TEST(test_prefill_anchor) {
    const attn_shape_t sh = {4, 2, 32, 1.0f / sqrtf(32.0f)};
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_ANCHOR;
    pol.block = 16;
    pol.anchor_init = 32;
    pol.anchor_local = 64;
    pol.anchor_lookback = 32;
    pol.anchor_probe = 0; // below: the probe
    pol.theta = 3.0f;
    const int Ns[] = {2, 3, 4, 8};
    double w[4] = {0}, wl = 0, dens = 0;
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 4; c++) {
            rng_state = 4000 + 10 * a + c;
            const double dn =
                anchor_case(&sh, &pol, Ns[a], c & 2 ? 64 : 16, c & 1 ? 200 : 0, c & 2 ? 1001 : 333, &w[a], &wl);
            ck_assert_msg(dn < 0.9, "single-rank density %g: the case does not test a selection", dn);
            dens = dn > dens ? dn : dens;
        }
    /* the probe: at 0.5 some heads of some groups keep every candidate; the
     * ring must decide as the single-rank kernel does */
    pol.anchor_probe = 0.5f;
    double dens_probe = 0;
    for (int a = 0; a < 4; a++) {
        rng_state = 4200 + a;
        const double dn = anchor_case(&sh, &pol, Ns[a], a & 1 ? 64 : 16, a & 2 ? 200 : 0, 1001, &w[a], &wl);
        dens_probe = dn > dens_probe ? dn : dens_probe;
    }
    ck_assert_msg(dens_probe > dens && dens_probe < 0.999, "with the probe: density %g (without: %g)", dens_probe,
                  dens);
    pol.anchor_probe = 0;
    pol.theta = INFINITY; // every key: dense
    for (int a = 0; a < 4; a += 3) {
        rng_state = 4100 + a;
        anchor_case(&sh, &pol, Ns[a], 16, 100, 500, &w[a], &wl);
    }
    printf("cp AnchorAttention prefill: max |out diff| N=2 %.2e, N=3 %.2e, N=4 %.2e, N=8 %.2e; max |lse diff| %.2e "
           "(single-rank density <= %.2f, with the probe <= %.2f)\n",
           w[0], w[1], w[2], w[3], wl, dens, dens_probe);
}
END_TEST

/* Needles (as check_attn.c plants them): four keys per KV head set to 12 u,
 * every query of the head's group shrunk and given 4 u, so that attention
 * concentrates on a few columns and the sparse methods have blocks to skip. */
static void plant_needles(cpcase_t *k, int l) {
    pool_t *t = &k->kv[l];
    const int KH = t->sh.n_kv_heads, H = t->sh.n_heads, G = H / KH, d = t->sh.head_dim, bs = t->bs;
    const size_t bstr = (size_t)KH * bs * d;
    const int64_t needles[4] = {3, t->n / 5, t->n / 2 + 7, t->n - 40};
    float u[8][256];
    for (int h = 0; h < KH; h++) {
        double nn = 0;
        for (int c = 0; c < d; c++) u[h][c] = frand(), nn += (double)u[h][c] * u[h][c];
        for (int c = 0; c < d; c++) u[h][c] /= (float)sqrt(nn);
    }
    for (int i = 0; i < 4; i++) {
        if (needles[i] < 0 || needles[i] >= t->n) continue;
        const int32_t b = t->blocks[needles[i] / bs];
        for (int h = 0; h < KH; h++)
            for (int c = 0; c < d; c++) t->kp[b * bstr + ((size_t)h * d + c) * bs + needles[i] % bs] = 12.0f * u[h][c];
    }
    for (int r = 0; r < k->n_rows; r++)
        for (int h = 0; h < H; h++)
            for (int c = 0; c < d; c++) {
                float *x = &k->q[l][((size_t)r * H + h) * d + c];
                *x = 0.2f * *x + 4.0f * u[h / G][c];
            }
}

/* FlexPrefill inside the ring: the pattern searched on every rank from
 * gathered summaries (scaled-down geometry: blocks of 16, min_budget 32);
 * in half the cases the prompt ends with the chunk or 9 rows after it, so
 * that its last rows attend every key (attn_seq_t's prompt_end). */
START_TEST(test_prefill_flex) {
    const attn_shape_t sh = {4, 2, 32, 1.0f / sqrtf(32.0f)};
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX;
    pol.block = 16;
    pol.min_budget = 32;
    const int Ns[] = {2, 3, 4, 8};
    double w[4] = {0}, wl = 0, el, dens = 0, dens_min = 1;
    uint8_t owner[256];
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 4; c++) {
            rng_state = 5000 + 10 * a + c;
            const int64_t pos0 = c & 1 ? 200 : 0;
            const int n_tok = c & 2 ? 1001 : 333;
            cpcase_t k;
            int32_t *table;
            case_prefill(&k, &sh, Ns[a], 16, c & 2 ? 64 : 16, pos0, n_tok, 1, 0, 1, owner, &table, 0.3f);
            plant_needles(&k, 0);
            if (c & 1) k.seqs[0].prompt_end = pos0 + n_tok + (a & 1 ? 9 : 0);
            attn_state_t *st = attn_state_create(&sh, 1, &pol);
            k.seqs[0].state = st;
            double e = case_check(&k, Ns[a], &st, &el);
            const attn_stats_t *sts = attn_state_stats(st);
            const double dn = sts->prefill_computed / sts->prefill_total;
            ck_assert_msg(dn < 0.97, "single-rank density %g: the case does not test a selection", dn);
            dens = dn > dens ? dn : dens;
            dens_min = dn < dens_min ? dn : dens_min;
            w[a] = e > w[a] ? e : w[a];
            wl = el > wl ? el : wl;
            attn_state_destroy(st);
            case_free(&k);
            free(table);
        }
    printf("cp FlexPrefill prefill: max |out diff| N=2 %.2e, N=3 %.2e, N=4 %.2e, N=8 %.2e; max |lse diff| %.2e "
           "(single-rank density %.2f-%.2f)\n",
           w[0], w[1], w[2], w[3], wl, dens_min, dens);
    /* Gemma 3's shape (4 query heads on one KV head of 256 dims), blocks of
     * 128: a prompt's short last chunk on a prefix whose 128-position units
     * went to the ranks in turn (as generated tokens' and short chunks' do):
     * the visiting ranks hold many ranges, which a ring step's arena must
     * hold beside its tile (it held a query block's key blocks twice over,
     * one range short per visiting range: out of memory in the step) */
    const attn_shape_t gs = {4, 1, 256, 1.0f / 16.0f};
    pol.block = 128;
    pol.min_budget = 128;
    static uint8_t gown[256];
    for (int n = 2; n <= 3; n++) { // a prompt's short last chunk (its arena is mostly the step's)
        rng_state = 6000 + n;
        cpcase_t k;
        int32_t *table;
        case_prefill(&k, &gs, n, 16, 128, 2304, 30, 1, 0, 1, gown, &table, 0.3f);
        for (int b = 0; b < 2304 / 16; b++) gown[b] = (uint8_t)cp_owner_next(n, b / 8); // by 128 positions
        plant_needles(&k, 0);
        attn_state_t *st = attn_state_create(&gs, 1, &pol);
        k.seqs[0].state = st;
        const double e = case_check(&k, n, &st, &el);
        ck_assert_msg(e < 1e-4, "Gemma-shaped FlexPrefill on a prefix held in turn, %d ranks: |out diff| %g", n, e);
        printf("cp FlexPrefill prefill, 4/1 heads of 256 on a prefix held in turn, N=%d: max |out diff| %.2e\n", n, e);
        attn_state_destroy(st);
        case_free(&k);
        free(table);
    }
}
END_TEST

/* ---- decode ---------------------------------------------------------------------------- */
/* n_seqs sequences decoding one token each (seq 0 also a few rows of a
 * recomputation), KV sharded by an earlier zig-zag prompt and then
 * extended block by block; n_layers layers with a policy. */
static double decode_case(int N, const attn_policy_t *pol, int n_layers, int64_t window, double *lse_err, uint64_t seed,
                          int grouped) {
    const attn_shape_t sh = {8, 2, 32, 1.0f / sqrtf(32.0f)};
    const int bs = 16;
    rng_state = seed;
    cpcase_t k;
    memset(&k, 0, sizeof k);
    k.sh = sh;
    k.n_layers = n_layers;
    k.bs = bs;
    k.window = window;
    const int64_t lens[3] = {700, 1203, 95}; // keys after the step
    const int rows[3] = {3, 1, 1};
    const int64_t prompt[3] = {500, 1000, 40};
    k.n_seqs = 3;
    int n_blk_tot = 0;
    for (int i = 0; i < 3; i++) n_blk_tot += (int)((lens[i] + bs - 1) / bs);
    int32_t *table = shuffled_table(n_blk_tot + 3); // one pool: each sequence its part of the table
    static uint8_t owners[3][128];
    int off = 0, tok = 0;
    for (int i = 0; i < 3; i++) {
        const int n_blk = (int)((lens[i] + bs - 1) / bs);
        memset(owners[i], 0, sizeof owners[i]);
        cp_zigzag(N, bs, 32, 0, prompt[i], owners[i]);
        for (int b = (int)((prompt[i] + bs - 1) / bs); b < n_blk; b++) owners[i][b] = (uint8_t)cp_owner_next(N, b);
        k.seqs[i] = (cp_seq_t){.tok0 = tok,
                               .n_tok = rows[i],
                               .pos0 = lens[i] - rows[i],
                               .blocks = table + off,
                               .owner = owners[i],
                               .decode = 1};
        off += n_blk;
        tok += rows[i];
    }
    k.n_rows = tok;
    for (int l = 0; l < n_layers; l++) {
        pool_fill(&k.kv[l], &sh, bs, (int64_t)off * bs, table, 2.5f); // every block of the table filled
        k.q[l] = rand_q((size_t)tok, &sh, 2.0f);
        k.out[l] = malloc(sizeof(float) * (size_t)tok * sh.n_heads * sh.head_dim);
        k.lse[l] = malloc(sizeof(float) * (size_t)tok * sh.n_heads);
    }
    int32_t *g = grouped ? group_tables(&k, table, n_blk_tot + 3) : NULL; // a sliding group's table
    attn_state_t *st[3] = {NULL, NULL, NULL};
    for (int i = 0; pol && i < 3; i++) k.seqs[i].state = st[i] = attn_state_create(&sh, n_layers, pol);
    double e = case_check(&k, N, pol ? st : NULL, lse_err);
    for (int i = 0; i < 3; i++) attn_state_destroy(st[i]);
    case_free(&k);
    free(table), free(g);
    return e;
}

START_TEST(test_decode_dense) {
    const int Ns[] = {2, 3, 4, 8};
    double w[4], el, wl = 0;
    for (int a = 0; a < 4; a++) {
        w[a] = decode_case(Ns[a], NULL, 1, 0, &el, 500 + a, 0);
        wl = el > wl ? el : wl;
        double e2 = decode_case(Ns[a], NULL, 1, 150, &el, 600 + a, 0); // a sliding-window layer
        w[a] = e2 > w[a] ? e2 : w[a];
        wl = el > wl ? el : wl;
        e2 = decode_case(Ns[a], NULL, 2, 150, &el, 650 + a, 1); // one of a layer group, released below its window
        w[a] = e2 > w[a] ? e2 : w[a];
        wl = el > wl ? el : wl;
    }
    printf("cp dense decode: max |out diff| N=2 %.2e, N=3 %.2e, N=4 %.2e, N=8 %.2e; max |lse diff| %.2e\n", w[0], w[1],
           w[2], w[3], wl);
}
END_TEST

START_TEST(test_decode_sparse) {
    attn_policy_t quest, tidal, stream;
    attn_policy_default(&quest);
    quest.decode = ATTN_DECODE_QUEST;
    quest.decode_budget = 160;
    quest.dense_layers = 1;
    tidal = quest;
    tidal.decode = ATTN_DECODE_TIDAL;
    tidal.decode_budget = 100;
    tidal.tidal_select_layer = 1;
    tidal.tidal_reselect_layer = 3;
    stream = quest;
    stream.decode = ATTN_DECODE_STREAMING;
    stream.sink_tokens = 4;
    stream.window_tokens = 64;
    const int Ns[] = {2, 3, 4, 8};
    double wq = 0, wt = 0, ws = 0, el, wl = 0;
    for (int a = 0; a < 4; a++) {
        double e = decode_case(Ns[a], &quest, 3, 0, &el, 700 + a, 0);
        wq = e > wq ? e : wq, wl = el > wl ? el : wl;
        e = decode_case(Ns[a], &tidal, 4, 0, &el, 800 + a, 0);
        wt = e > wt ? e : wt, wl = el > wl ? el : wl;
        e = decode_case(Ns[a], &stream, 1, 0, &el, 900 + a, 0);
        ws = e > ws ? e : ws, wl = el > wl ? el : wl;
    }
    printf("cp sparse decode: max |out diff| Quest %.2e, TidalDecode %.2e, streaming %.2e; max |lse diff| %.2e\n", wq,
           wt, ws, wl);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cp");
    TCase *tc = tcase_create("comm");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_comm_threads);
    suite_add_tcase(s, tc);
    TCase *tp = tcase_create("prefill");
    tcase_set_timeout(tp, 300);
    tcase_add_test(tp, test_prefill_pass_kv);
    tcase_add_test(tp, test_prefill_prefix_pass_kv);
    tcase_add_test(tp, test_prefill_prefix_pass_q);
    tcase_add_test(tp, test_prefill_windows);
    tcase_add_test(tp, test_prefill_window_groups);
    tcase_add_test(tp, test_prefill_anchor);
    tcase_add_test(tp, test_prefill_flex);
    suite_add_tcase(s, tp);
    TCase *td = tcase_create("decode");
    tcase_set_timeout(td, 300);
    tcase_add_test(td, test_decode_dense);
    tcase_add_test(td, test_decode_sparse);
    suite_add_tcase(s, td);
    suite_add_tcase(s, cp_model_tcase());
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
