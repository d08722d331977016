/* The whole model with context parallelism, for the cp suite (see
 * check_cp.c): a tiny random model through the CPU executor and through the
 * scheduler with 2 and 3 ranks against 1. Logits (magnitude ~10) must agree
 * within 1e-3 with the same argmax in every row; the scheduler's greedy
 * tokens must be the same; a sharded sequence's logits must be the same bits
 * alone and in a batch. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "common/status.h"
#include "kv/kv.h"
#include "model/exec.h"
#include "scheduler/sched.h"
#include "server/metrics.h"
#include "cp_exec_case.h"
#include "tinymodel.h"

TCase *cp_model_tcase(void);
double max_diff(const float *a, const float *b, size_t n);

/* ---- through the CPU executor ------------------------------------------------------------- */
/* A tiny random Llama (4 layers, 4 query / 2 KV heads, head_dim 16) with
 * peaked attention, untied output: a wrong K/V anywhere shows in the logits. */
static model_t *g_model;
static model_t *tiny(void) {
    if (g_model) return g_model;
    const tiny_opts_t o = {.name = "check-cp-tiny",
                           .n_layers = 4,
                           .n_embd = 64,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .n_ff = 128,
                           .n_ctx = 2048,
                           .seed = 21,
                           .qk_std = 4.0f};
    return g_model = tiny_model_load(&o);
}

/* A tiny random Gemma 3 (6 layers, every 3rd global, the others sliding
 * over 48 positions; head_dim 16): one global and two sliding layer groups,
 * so the ranks read three block tables, and the sliding ones lose their
 * blocks behind the window under the scheduler. */
static model_t *g_gemma;
static model_t *tiny_gemma(void) {
    if (g_gemma) return g_gemma;
    const tiny_opts_t o = {.name = "check-cp-gemma",
                           .n_layers = 6,
                           .n_embd = 64,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .n_ff = 128,
                           .n_ctx = 2048,
                           .seed = 23,
                           .qk_std = 3.0f,
                           .window = 48,
                           .swa_pattern = 3};
    return g_gemma = tiny_model_load(&o);
}

/* The CPU executor's case: blocks of 16, sharding from 100 tokens; a
 * 600-token prompt in slices of 310 and 290, a fork at 240, 6 decode steps. */
static const cp_exec_case_t g_case = {.device = "cpu",
                                      .block_size = 16,
                                      .kv_blocks = 200,
                                      .max_batch_tokens = 700,
                                      .min_tokens = 100,
                                      .n_prompt = 600,
                                      .split = 310,
                                      .fork = 240,
                                      .n_decode = 6};

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++) a = x[i] > x[a] ? i : a;
    return a;
}

typedef struct {
    int ranks;
    double worst;
} cmp_t;

/* Every part: logits within 1e-3, the same argmax in every row. */
static void compare(void *ud, const char *part, const float *sharded, const float *one, int rows, int V) {
    cmp_t *c = ud;
    const double e = max_diff(sharded, one, (size_t)rows * V);
    ck_assert_msg(e <= 1e-3, "%d ranks, %s: logits differ by %g", c->ranks, part, e);
    for (int r = 0; r < rows; r++)
        ck_assert_msg(argmax(sharded + (size_t)r * V, V) == argmax(one + (size_t)r * V, V),
                      "%d ranks, %s: row %d picks another token", c->ranks, part, r);
    c->worst = e > c->worst ? e : c->worst;
}

/* cp_exec_case.h's scenario with `ranks` ranks against one rank, logits of
 * every row; the per-rank counters show the ring ran, a sparse policy's
 * density is counted from every rank's pairs. Returns the largest logit
 * difference. */
static double model_case_on(const model_t *m, int fork, int ranks, const attn_policy_t *pol) {
    cp_exec_case_t cs = g_case;
    cs.seed = 5u + (unsigned)ranks;
    if (fork) cs.fork = fork;
    cmp_t c = {ranks, 0};
    cp_exec_result_t res;
    cp_exec_case_run(m, &cs, ranks, pol, compare, &c, &res);
    ck_assert_int_eq(res.cp.ranks, ranks);
    int64_t kvb = 0;
    uint64_t steps = 0;
    for (int r = 0; r < ranks; r++) kvb += res.cp.kv_blocks[r], steps += res.cp.ring_steps[r];
    ck_assert_int_eq(kvb, res.kv_used);
    ck_assert_msg(res.cp.kv_blocks[ranks - 1] > 0 && steps > 0 && res.cp.sharded_rows > 0,
                  "the sharded path did not run");
    if (pol) { // density counted from every rank's pairs
        const attn_stats_t *a = &res.st[0], *b = &res.st[1];
        ck_assert_msg(fabs(a->prefill_computed - b->prefill_computed) <= 1e-6 * a->prefill_computed &&
                          fabs(a->prefill_total - b->prefill_total) <= 1e-6 * a->prefill_total,
                      "density: %g/%g vs %g/%g", b->prefill_computed, b->prefill_total, a->prefill_computed,
                      a->prefill_total);
    }
    return c.worst;
}

static double model_case(int ranks, const attn_policy_t *pol) { return model_case_on(tiny(), 0, ranks, pol); }

START_TEST(test_model_dense) {
    double e2 = model_case(2, NULL), e3 = model_case(3, NULL);
    printf("cp whole model (tiny, dense): max |logit diff| vs 1 rank: 2 ranks %.2e, 3 ranks %.2e\n", e2, e3);
}
END_TEST

/* AnchorAttention at the tiny models' scale (blocks of 16, windows of 32
 * and 64, theta 10) with a decode method and a 128-token budget. */
static attn_policy_t anchor_policy(attn_decode_method_t decode) {
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_ANCHOR;
    pol.decode = decode;
    pol.block = 16;
    pol.anchor_init = 32;
    pol.anchor_local = 64;
    pol.anchor_lookback = 32;
    pol.theta = 10.0f;
    pol.decode_budget = 128;
    return pol;
}

START_TEST(test_model_sparse) {
    attn_policy_t pol = anchor_policy(ATTN_DECODE_QUEST);
    pol.dense_layers = 1;
    double e2 = model_case(2, &pol);
    pol.decode = ATTN_DECODE_TIDAL;
    pol.tidal_select_layer = 1;
    double e3 = model_case(3, &pol);
    pol.prefill = ATTN_PREFILL_FLEX;
    pol.min_budget = 16;
    double f2 = model_case(2, &pol);
    printf("cp whole model (tiny): max |logit diff|: AnchorAttention + Quest, 2 ranks %.2e; AnchorAttention + "
           "TidalDecode, 3 ranks %.2e; FlexPrefill + TidalDecode, 2 ranks %.2e\n",
           e2, e3, f2);
}
END_TEST

/* Gemma 3's layer groups: the sliding layers' tables sharded like the
 * global one, their windows fetched from the ranks before them. The fork
 * at 304 keeps its prefix: the second slice's reservation released the
 * sliding blocks before position 192 (the window, 48, and the tiles'
 * alignment behind 310), and the windows from 304 on start after them. */
START_TEST(test_model_gemma) {
    double e2 = model_case_on(tiny_gemma(), 304, 2, NULL), e3 = model_case_on(tiny_gemma(), 304, 3, NULL);
    attn_policy_t pol = anchor_policy(ATTN_DECODE_TIDAL);
    pol.tidal_select_layer = 0;
    pol.tidal_reselect_layer = 3;
    double s2 = model_case_on(tiny_gemma(), 304, 2, &pol);
    printf("cp whole model (tiny Gemma 3, layer groups): max |logit diff| vs 1 rank: dense 2 ranks %.2e, 3 ranks "
           "%.2e; AnchorAttention + TidalDecode, 2 ranks %.2e\n",
           e2, e3, s2);
}
END_TEST

/* cp_exec_case.h's batch invariance with 2 ranks, dense and sparse. */
START_TEST(test_model_batch) {
    cp_exec_batch_run(tiny(), &g_case, 2, NULL);
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX;
    pol.decode = ATTN_DECODE_QUEST;
    pol.block = 16;
    pol.min_budget = 16;
    pol.decode_budget = 128;
    pol.dense_layers = 1;
    cp_exec_batch_run(tiny(), &g_case, 2, &pol);
}
END_TEST

/* ---- through the scheduler ----------------------------------------------------------------- */
enum { SCHED_GEN = 8 };
/* One greedy request (a 500-token prompt in slices of 160) through an
 * engine on m with `ranks` ranks sharding from 128 tokens (keep: the
 * sliding layers keep every position); its tokens into out, the most KV in
 * use after a step into *peak, in blocks of one layer (a pool block holds
 * the layers of one group). With ranks > 1 the metrics text shows every
 * rank. */
/* The scheduler of these tests: `ranks` ranks from 128 tokens, chunks of
 * 160 in steps of at most 256 rows, the sparse methods' windows and budgets
 * at this size. */
static void sched_cfg(sched_config_t *c, int keep, int ranks) {
    sched_config_default(c);
    c->kv_keep_sliding = keep;
    c->kv_blocks = 128;
    c->max_batch_tokens = 256;
    c->prefill_chunk = 160;
    c->target_step_ms = -1;
    c->context_ranks = ranks;
    c->context_min_tokens = 128;
    c->attn_default.block = 16;
    c->attn_default.anchor_init = 32;
    c->attn_default.anchor_local = 64;
    c->attn_default.anchor_lookback = 32;
    c->attn_default.decode_budget = 96;
    c->attn_default.min_budget = 16;
}

/* A greedy request of max_tokens tokens (with their log-probabilities) on s. */
static void sched_submit_n(sched_t *s, const int32_t *prompt, int n, int prefill, int decode, int max_tokens,
                           sched_req_t **r) {
    sched_params_t p;
    memset(&p, 0, sizeof p);
    p.prompt = prompt;
    p.n_prompt = n;
    p.n_choices = 1;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    p.logprobs = 0;
    p.prompt_logprobs = -1;
    sampler_params_default(&p.sampling);
    p.sampling.temperature = 0;
    sched_attn_spec_default(&p.attn);
    p.attn.prefill = prefill;
    p.attn.decode = decode;
    int st;
    ck_assert_ptr_nonnull(*r = sched_req_create(&p, &st));
    ck_assert_int_eq(sched_submit(s, *r), 0);
}

/* The same, SCHED_GEN tokens. */
static void sched_submit_greedy(sched_t *s, const int32_t *prompt, int n, int prefill, int decode, sched_req_t **r) {
    sched_submit_n(s, prompt, n, prefill, decode, SCHED_GEN, r);
}

static void sched_case_on(const model_t *m, int keep, int ranks, int prefill, int decode, int32_t *out, int64_t *peak) {
    sched_config_t c;
    sched_cfg(&c, keep, ranks);
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    const int V = model_hparams(m)->n_vocab;
    int32_t prompt[500];
    unsigned seed = 77;
    for (int i = 0; i < 500; i++) prompt[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    sched_req_t *r;
    sched_submit_greedy(s, prompt, 500, prefill, decode, &r);
    int64_t pk = 0;
    for (int rc; (rc = sched_step(s)) > 0;) {
        const int64_t used = kv_pool_n_used(sched_kv(s));
        pk = used > pk ? used : pk;
    }
    if (peak) *peak = pk * model_hparams(m)->n_layers / kv_config_groups(kv_pool_config(sched_kv(s)));
    sched_event_t ev[32];
    int n, got = 0, done = 0;
    while ((n = sched_req_poll(r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            if (ev[i].kind == SCHED_EV_TOKEN && got < SCHED_GEN) out[got++] = ev[i].token;
            if (ev[i].kind == SCHED_EV_DONE) done = 1;
            sched_event_clear(&ev[i]);
        }
    ck_assert(done && got == SCHED_GEN);
    sched_req_release(r);
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_int_eq(mt.cp.ranks, ranks > 1 ? ranks : 1);
    srv_buf_t b = {0};
    ck_assert_int_eq(srv_metrics_render(&b, "tiny", &mt, NULL), 0);
    ck_assert_int_eq(srv_buf_append(&b, "", 1), 0);
    if (ranks > 1) {
        char want[128];
        snprintf(want, sizeof want, "lacuna:cp_ring_steps_total{model_name=\"tiny\",rank=\"%d\"} ", ranks - 1);
        ck_assert_msg(strstr(b.data, want) && strstr(b.data, "lacuna:cp_kv_blocks{"), "metrics:\n%s", b.data);
        ck_assert(mt.cp.ring_steps[ranks - 1] > 0 && mt.cp.sharded_rows >= 500 - 128);
    } else {
        ck_assert_ptr_null(strstr(b.data, "lacuna:cp_"));
    }
    srv_buf_free(&b);
    sched_destroy(s);
}

static void sched_case(int ranks, int prefill, int decode, int32_t *out) {
    sched_case_on(tiny(), 0, ranks, prefill, decode, out, NULL);
}

START_TEST(test_sched) {
    const int modes[4][2] = {{ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE},
                             {ATTN_PREFILL_ANCHOR, ATTN_DECODE_QUEST},
                             {ATTN_PREFILL_FLEX, ATTN_DECODE_TIDAL},
                             {ATTN_PREFILL_STREAMING, ATTN_DECODE_STREAMING}};
    for (int k = 0; k < 4; k++) {
        int32_t one[SCHED_GEN], two[SCHED_GEN], three[SCHED_GEN];
        sched_case(1, modes[k][0], modes[k][1], one);
        sched_case(2, modes[k][0], modes[k][1], two);
        sched_case(3, modes[k][0], modes[k][1], three);
        ck_assert_msg(!memcmp(one, two, sizeof one) && !memcmp(one, three, sizeof one),
                      "prefill %d decode %d: greedy tokens differ with context parallelism", modes[k][0], modes[k][1]);
    }
}
END_TEST

/* Gemma 3 through the scheduler: the same greedy tokens with 1, 2 and 3
 * ranks, with the sliding layers' blocks released behind their windows, as
 * with every position kept; the released layout peaks at fewer blocks. */
START_TEST(test_sched_gemma) {
    const int modes[2][2] = {{ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE}, {ATTN_PREFILL_ANCHOR, ATTN_DECODE_TIDAL}};
    for (int k = 0; k < 2; k++) {
        int32_t keep[SCHED_GEN], one[SCHED_GEN], two[SCHED_GEN], three[SCHED_GEN];
        int64_t pk_keep, pk_one, pk_two, pk_three;
        sched_case_on(tiny_gemma(), 1, 2, modes[k][0], modes[k][1], keep, &pk_keep);
        sched_case_on(tiny_gemma(), 0, 1, modes[k][0], modes[k][1], one, &pk_one);
        sched_case_on(tiny_gemma(), 0, 2, modes[k][0], modes[k][1], two, &pk_two);
        sched_case_on(tiny_gemma(), 0, 3, modes[k][0], modes[k][1], three, &pk_three);
        ck_assert_msg(!memcmp(one, keep, sizeof one) && !memcmp(one, two, sizeof one) &&
                          !memcmp(one, three, sizeof one),
                      "gemma, prefill %d decode %d: greedy tokens differ with context parallelism or layer groups",
                      modes[k][0], modes[k][1]);
        ck_assert_msg(pk_two == pk_one && pk_three == pk_one && pk_one < pk_keep,
                      "gemma: peak KV layer-blocks: keep-all %lld, windows 1 rank %lld, 2 ranks %lld, 3 ranks %lld",
                      (long long)pk_keep, (long long)pk_one, (long long)pk_two, (long long)pk_three);
        printf("cp through the scheduler (tiny Gemma 3, prefill %d decode %d): the same tokens on 1-3 ranks; peak KV "
               "%lld layer-blocks (keep-all %lld)\n",
               modes[k][0], modes[k][1], (long long)pk_one, (long long)pk_keep);
    }
}
END_TEST

/* A request's tokens' log-probabilities (up to cap); releases it. */
static int sched_take_n(sched_req_t *r, float *lp, int cap) {
    sched_event_t ev[32];
    int n, got = 0;
    while ((n = sched_req_poll(r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            if (ev[i].kind == SCHED_EV_TOKEN && got < cap) lp[got++] = ev[i].has_lp ? ev[i].lp.logprob : NAN;
            sched_event_clear(&ev[i]);
        }
    sched_req_release(r);
    return got;
}

static int sched_take(sched_req_t *r, float *lp) { return sched_take_n(r, lp, SCHED_GEN); }

/* Batch invariance through the scheduler with context parallelism: a
 * 500-token request's log-probabilities, bit for bit, alone and behind two
 * others whose prompts take part of each step's budget (so the scheduler
 * would cut its prompt elsewhere). The ring's result for a row depends on
 * which rank holds which block, and a slice's zig-zag deals its own blocks:
 * the scheduler cuts a prompt that may be sharded at multiples of
 * prefill_chunk only, whatever runs beside it. Dense and AnchorAttention
 * with TidalDecode, 2 ranks. */
START_TEST(test_sched_batch_invariant) {
    const int modes[2][2] = {{ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE}, {ATTN_PREFILL_ANCHOR, ATTN_DECODE_TIDAL}};
    const int V = model_hparams(tiny())->n_vocab;
    int32_t prompt[3][500];
    unsigned seed = 5;
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 500; i++) prompt[k][i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    for (int m = 0; m < 2; m++) {
        float alone[SCHED_GEN], batched[SCHED_GEN], other[SCHED_GEN];
        for (int pass = 0; pass < 2; pass++) {
            sched_config_t c;
            sched_cfg(&c, 0, 2);
            c.kv_blocks = 256;
            c.enable_prefix_cache = 0;
            char err[256];
            sched_t *s = sched_create(tiny(), &c, err, sizeof err);
            ck_assert_msg(s != NULL, "%s", err);
            sched_req_t *a, *b = NULL, *d = NULL;
            if (pass) { // two prompts ahead of it: 90 and 300 tokens, dense
                sched_submit_greedy(s, prompt[1], 90, ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE, &b);
                sched_submit_greedy(s, prompt[2], 300, ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE, &d);
            }
            sched_submit_greedy(s, prompt[0], 500, modes[m][0], modes[m][1], &a);
            ck_assert_int_eq(sched_run_until_idle(s), 0);
            ck_assert_int_eq(sched_take(a, pass ? batched : alone), SCHED_GEN);
            if (b) ck_assert_int_eq(sched_take(b, other), SCHED_GEN);
            if (d) ck_assert_int_eq(sched_take(d, other), SCHED_GEN);
            sched_destroy(s);
        }
        int at = -1;
        for (int i = 0; i < SCHED_GEN && at < 0; i++)
            if (memcmp(&alone[i], &batched[i], sizeof(float))) at = i;
        ck_assert_msg(at < 0, "prefill %d decode %d, 2 ranks: token %d's log-probability %.9g alone, %.9g batched",
                      modes[m][0], modes[m][1], at, at < 0 ? 0 : alone[at], at < 0 ? 0 : batched[at]);
    }
}
END_TEST

/* Preemption with context parallelism: requests in a pool too small for
 * all of them give the log-probabilities each gives alone, bit for bit. A
 * preempted request recomputes its generated tokens; each of those rows
 * must run as it ran when decoded: sharded from the position where its KV
 * reached context_min_tokens (2 ranks from 128 tokens), on one rank before,
 * its blocks held as then. Two pools: in the first the newest requests
 * (prompts of 120 and 100 tokens) are preempted early; in the second the
 * last one after 29 tokens, so that its recomputation runs from position
 * 100 past 127, starting a block on the way. Dense, and AnchorAttention
 * with TidalDecode. */
START_TEST(test_sched_preemption) {
    enum { R = 4, GEN = 40 };
    const int modes[2][2] = {{ATTN_PREFILL_DENSE, ATTN_DECODE_DENSE}, {ATTN_PREFILL_ANCHOR, ATTN_DECODE_TIDAL}};
    const int lens[R] = {200, 150, 120, 100}, pools[2] = {34, 45}; // at their ends: 15 + 12 + 10 + 9 blocks of 16
    const int V = model_hparams(tiny())->n_vocab;
    static int32_t prompt[R][200];
    unsigned seed = 9;
    for (int k = 0; k < R; k++)
        for (int i = 0; i < lens[k]; i++) prompt[k][i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    for (int m = 0; m < 2; m++)
        for (int pass = 0; pass < 3; pass++) {
            static float alone[R][GEN], tight[R][GEN];
            sched_config_t c;
            sched_cfg(&c, 0, 2);
            c.kv_blocks = pass ? pools[pass - 1] : 256;
            c.enable_prefix_cache = 0;
            char err[256];
            sched_t *s = sched_create(tiny(), &c, err, sizeof err);
            ck_assert_msg(s != NULL, "%s", err);
            sched_req_t *r[R];
            for (int k = 0; k < R; k++) {
                sched_submit_n(s, prompt[k], lens[k], modes[m][0], modes[m][1], GEN, &r[k]);
                if (!pass) ck_assert_int_eq(sched_run_until_idle(s), 0); // each alone
            }
            ck_assert_int_eq(sched_run_until_idle(s), 0);
            int preempted = 0;
            for (int k = 0; k < R; k++) {
                sched_usage_t u;
                sched_req_usage(r[k], &u);
                preempted += u.preemptions;
                ck_assert_int_eq(sched_take_n(r[k], pass ? tight[k] : alone[k], GEN), GEN);
            }
            ck_assert_int_eq(kv_pool_n_used(sched_kv(s)), 0);
            sched_destroy(s);
            if (!pass) continue;
            ck_assert_msg(preempted > 0, "prefill %d decode %d: a pool of %d blocks preempted nothing", modes[m][0],
                          modes[m][1], pools[pass - 1]);
            for (int k = 0; k < R; k++) {
                int at = -1;
                for (int i = 0; i < GEN && at < 0; i++)
                    if (memcmp(&alone[k][i], &tight[k][i], sizeof(float))) at = i;
                ck_assert_msg(at < 0,
                              "prefill %d decode %d, 2 ranks, %d blocks: request %d (%d tokens), token %d's "
                              "log-probability %.9g alone, %.9g after preemptions",
                              modes[m][0], modes[m][1], pools[pass - 1], k, lens[k], at, at < 0 ? 0 : alone[k][at],
                              at < 0 ? 0 : tight[k][at]);
            }
            printf("cp through the scheduler, prefill %d decode %d, %d blocks: %d preemptions, every request as "
                   "alone\n",
                   modes[m][0], modes[m][1], pools[pass - 1], preempted);
        }
}
END_TEST

TCase *cp_model_tcase(void) {
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 300);
    tcase_add_test(tm, test_model_dense);
    tcase_add_test(tm, test_model_sparse);
    tcase_add_test(tm, test_model_batch);
    tcase_add_test(tm, test_sched);
    tcase_add_test(tm, test_model_gemma);
    tcase_add_test(tm, test_sched_gemma);
    tcase_add_test(tm, test_sched_batch_invariant);
    tcase_add_test(tm, test_sched_preemption);
    return tm;
}
