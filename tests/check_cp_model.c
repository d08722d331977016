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

typedef struct {
    model_exec_t *e;
    kv_pool_t *kv;
} ex_t;

static ex_t mk_exec(const model_t *m, int ranks, int64_t min_tokens) {
    char err[256];
    model_exec_opts_t o = {.device = "cpu",
                           .max_batch_tokens = 700,
                           .block_size = 16,
                           .kv_blocks = 200,
                           .context_ranks = ranks,
                           .context_min_tokens = min_tokens};
    ex_t x = {model_exec_create(m, &o, err, sizeof err), NULL};
    ck_assert_msg(x.e != NULL, "%s", err);
    kv_config_t cfg = model_exec_kv_config(x.e);
    ck_assert_ptr_nonnull(x.kv = kv_pool_create(&cfg));
    ck_assert_int_eq(model_exec_bind(x.e, x.kv), 0);
    return x;
}

static void ex_free(ex_t *x) {
    kv_pool_destroy(x->kv);
    model_exec_destroy(x->e);
}

/* Runs tokens [pos0, pos0 + n) of one sequence (every row's logits). */
static void fwd(ex_t *x, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int generated, attn_state_t *st,
                float *logits) {
    ck_assert_int_eq(kv_seq_reserve(x->kv, s, pos0 + n), 0);
    ck_assert_int_eq(kv_seq_prepare_write(x->kv, s, pos0, pos0 + n), 0);
    model_seq_t q = {.tok0 = 0,
                     .n_tok = n,
                     .pos0 = pos0,
                     .kv = s,
                     .attn = st,
                     .generated = generated,
                     .logits_mode = MODEL_LOGITS_ALL,
                     .logits = logits};
    model_batch_t b = {.n_tokens = n, .tokens = tok, .n_seqs = 1, .seqs = &q};
    ck_assert_int_eq(model_exec_forward(x->e, x->kv, &b), 0);
    s->n_tokens = pos0 + n;
}

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++) a = x[i] > x[a] ? i : a;
    return a;
}

/* A 600-token prompt in two slices, then a second sequence that shares the
 * first 250 tokens (its blocks forked, the partial one copied on write) and
 * prefills the rest, then 6 greedy decode steps of the first: the executor
 * with `ranks` ranks (sharding from 100 tokens) against one rank, logits of
 * every row. Returns the largest logit difference. */
static double model_case(int ranks, const attn_policy_t *pol) {
    const model_t *m = tiny();
    const int V = model_hparams(m)->n_vocab, NP = 600, SPLIT = 310, FORK = 250, DEC = 6;
    const attn_shape_t sh = model_attn_shape(m);
    ex_t x[2] = {mk_exec(m, 1, 0), mk_exec(m, ranks, 100)};
    int32_t tok[NP + DEC];
    unsigned seed = 5u + (unsigned)ranks;
    for (int i = 0; i < NP; i++) tok[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    float *lg[2] = {malloc(sizeof(float) * (size_t)NP * V), malloc(sizeof(float) * (size_t)NP * V)};
    kv_seq_t s[2], f[2];
    attn_state_t *st[2] = {NULL, NULL}, *sf[2] = {NULL, NULL};
    double worst = 0;
    for (int k = 0; k < 2; k++) {
        kv_seq_init(&s[k]);
        kv_seq_init(&f[k]);
        if (pol) st[k] = attn_state_create(&sh, model_hparams(m)->n_layers, pol);
        if (pol) sf[k] = attn_state_create(&sh, model_hparams(m)->n_layers, pol);
    }
#define COMPARE(n, what)                                                                                               \
    do {                                                                                                               \
        double e = max_diff(lg[1], lg[0], (size_t)(n)*V);                                                              \
        ck_assert_msg(e <= 1e-3, "%d ranks, %s: logits differ by %g", ranks, what, e);                                 \
        for (int r_ = 0; r_ < (n); r_++)                                                                               \
            ck_assert_msg(argmax(lg[1] + (size_t)r_ * V, V) == argmax(lg[0] + (size_t)r_ * V, V),                      \
                          "%d ranks, %s: row %d picks another token", ranks, what, r_);                                \
        worst = e > worst ? e : worst;                                                                                 \
    } while (0)
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok, SPLIT, 0, 0, st[k], lg[k]);
    COMPARE(SPLIT, "first prompt slice");
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + SPLIT, NP - SPLIT, SPLIT, 0, st[k], lg[k]);
    COMPARE(NP - SPLIT, "second prompt slice");
    for (int k = 0; k < 2; k++) { // a prefix hit: the first FORK tokens' blocks shared
        ck_assert_int_eq(kv_seq_fork(x[k].kv, &s[k], &f[k]), 0);
        kv_seq_truncate(x[k].kv, &f[k], FORK / 16 * 16);
        fwd(&x[k], &f[k], tok + FORK / 16 * 16, NP - FORK / 16 * 16, FORK / 16 * 16, 0, sf[k], lg[k]);
    }
    COMPARE(NP - FORK / 16 * 16, "prompt on a shared prefix");
    for (int t = 0; t < DEC; t++) { // teacher-forced: the forked sequence's last row picks the first token
        tok[NP + t] = (int32_t)argmax(lg[0] + (size_t)(t ? 0 : NP - FORK / 16 * 16 - 1) * V, V);
        for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + NP + t, 1, NP + t, 1, st[k], lg[k]);
        COMPARE(1, "decode step");
    }
#undef COMPARE
    model_exec_cp_stats_t cs;
    model_exec_cp_stats(x[1].e, &cs);
    ck_assert_int_eq(cs.ranks, ranks);
    int64_t kvb = 0;
    uint64_t steps = 0;
    for (int r = 0; r < ranks; r++) kvb += cs.kv_blocks[r], steps += cs.ring_steps[r];
    ck_assert_int_eq(kvb, kv_pool_n_used(x[1].kv));
    ck_assert_msg(cs.kv_blocks[ranks - 1] > 0 && steps > 0 && cs.sharded_rows > 0, "the sharded path did not run");
    if (pol) { // density counted from every rank's pairs
        const attn_stats_t *a = attn_state_stats(st[0]), *b = attn_state_stats(st[1]);
        ck_assert_msg(fabs(a->prefill_computed - b->prefill_computed) <= 1e-6 * a->prefill_computed &&
                          fabs(a->prefill_total - b->prefill_total) <= 1e-6 * a->prefill_total,
                      "density: %g/%g vs %g/%g", b->prefill_computed, b->prefill_total, a->prefill_computed,
                      a->prefill_total);
    }
    for (int k = 0; k < 2; k++) {
        kv_seq_release(x[k].kv, &s[k]);
        kv_seq_release(x[k].kv, &f[k]);
        attn_state_destroy(st[k]);
        attn_state_destroy(sf[k]);
        ex_free(&x[k]);
        free(lg[k]);
    }
    return worst;
}

START_TEST(test_model_dense) {
    double e2 = model_case(2, NULL), e3 = model_case(3, NULL);
    printf("cp whole model (tiny, dense): max |logit diff| vs 1 rank: 2 ranks %.2e, 3 ranks %.2e\n", e2, e3);
}
END_TEST

START_TEST(test_model_sparse) {
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_ANCHOR;
    pol.decode = ATTN_DECODE_QUEST;
    pol.block = 16;
    pol.anchor_init = 32;
    pol.anchor_local = 64;
    pol.anchor_lookback = 32;
    pol.theta = 10.0f;
    pol.decode_budget = 128;
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

/* A sharded sequence's logits do not depend on its batch neighbours: A (a
 * 420-token prompt in two slices, then a decode step) run alone on one
 * executor and, on a second one configured alike, in steps with B (short:
 * never sharded) and C (sharded from its first slice) placed before and
 * after it, dense and sparse. The rows of A must be the same bits. */
typedef struct {
    kv_seq_t *s;
    const int32_t *tok;
    int n;
    int64_t pos0;
    int generated;
    attn_state_t *st;
    float *logits;
} part_t;

static void fwd_parts(ex_t *x, const part_t *p, int np) {
    int32_t tok[700];
    model_seq_t q[4];
    int n = 0;
    for (int i = 0; i < np; i++) {
        ck_assert_int_eq(kv_seq_reserve(x->kv, p[i].s, p[i].pos0 + p[i].n), 0);
        ck_assert_int_eq(kv_seq_prepare_write(x->kv, p[i].s, p[i].pos0, p[i].pos0 + p[i].n), 0);
        q[i] = (model_seq_t){.tok0 = n,
                             .n_tok = p[i].n,
                             .pos0 = p[i].pos0,
                             .kv = p[i].s,
                             .attn = p[i].st,
                             .generated = p[i].generated,
                             .logits_mode = MODEL_LOGITS_ALL,
                             .logits = p[i].logits};
        memcpy(tok + n, p[i].tok, sizeof(int32_t) * (size_t)p[i].n);
        n += p[i].n;
    }
    model_batch_t b = {.n_tokens = n, .tokens = tok, .n_seqs = np, .seqs = q};
    ck_assert_int_eq(model_exec_forward(x->e, x->kv, &b), 0);
    for (int i = 0; i < np; i++) p[i].s->n_tokens = p[i].pos0 + p[i].n;
}

static void batch_case(const attn_policy_t *pol) {
    const model_t *m = tiny();
    const int V = model_hparams(m)->n_vocab, NA = 421, SPLIT = 300, NB = 40, NC = 200;
    const attn_shape_t sh = model_attn_shape(m);
    const int L = model_hparams(m)->n_layers;
    ex_t x = mk_exec(m, 2, 100), y = mk_exec(m, 2, 100);
    int32_t tok[NA + 1];
    unsigned seed = 91;
    for (int i = 0; i <= NA; i++) tok[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    float *la = malloc(sizeof(float) * (size_t)SPLIT * V), *lb = malloc(sizeof(float) * (size_t)SPLIT * V);
    float *lo = malloc(sizeof(float) * (size_t)(NB + NC) * V);
    kv_seq_t sa, ya, yb, yc;
    kv_seq_init(&sa), kv_seq_init(&ya), kv_seq_init(&yb), kv_seq_init(&yc);
    attn_state_t *st[4] = {NULL, NULL, NULL, NULL};
    for (int k = 0; pol && k < 4; k++) st[k] = attn_state_create(&sh, L, pol);
    /* step 1: A's first slice; alongside, B's prompt before it, C's after */
    fwd_parts(&x, &(part_t){&sa, tok, SPLIT, 0, 0, st[0], la}, 1);
    const part_t p1[3] = {{&yb, tok + 7, NB, 0, 0, st[2], lo},
                          {&ya, tok, SPLIT, 0, 0, st[1], lb},
                          {&yc, tok + 50, NC, 0, 0, st[3], lo + (size_t)NB * V}};
    fwd_parts(&y, p1, 3);
    ck_assert_msg(!memcmp(la, lb, sizeof(float) * (size_t)SPLIT * V), "first slice: A's logits depend on its batch");
    /* step 2: the rest of A's prompt after decode rows of B and C */
    fwd_parts(&x, &(part_t){&sa, tok + SPLIT, NA - SPLIT, SPLIT, 0, st[0], la}, 1);
    const part_t p2[3] = {{&yc, tok + 3, 1, NC, 1, st[3], lo},
                          {&yb, tok + 4, 1, NB, 1, st[2], lo + V},
                          {&ya, tok + SPLIT, NA - SPLIT, SPLIT, 0, st[1], lb}};
    fwd_parts(&y, p2, 3);
    ck_assert_msg(!memcmp(la, lb, sizeof(float) * (size_t)(NA - SPLIT) * V),
                  "second slice: A's logits depend on its batch");
    /* step 3: a decode row of A between those of B and C */
    fwd_parts(&x, &(part_t){&sa, tok + NA, 1, NA, 1, st[0], la}, 1);
    const part_t p3[3] = {{&yb, tok + 5, 1, NB + 1, 1, st[2], lo},
                          {&ya, tok + NA, 1, NA, 1, st[1], lb},
                          {&yc, tok + 6, 1, NC + 1, 1, st[3], lo + V}};
    fwd_parts(&y, p3, 3);
    ck_assert_msg(!memcmp(la, lb, sizeof(float) * (size_t)V), "decode: A's logits depend on its batch");
    model_exec_cp_stats_t cs;
    model_exec_cp_stats(y.e, &cs);
    ck_assert_msg(cs.sharded_rows > 0 && cs.ring_steps[1] > 0, "the sharded path did not run");
    kv_seq_release(x.kv, &sa);
    kv_seq_release(y.kv, &ya), kv_seq_release(y.kv, &yb), kv_seq_release(y.kv, &yc);
    for (int k = 0; k < 4; k++) attn_state_destroy(st[k]);
    ex_free(&x), ex_free(&y);
    free(la), free(lb), free(lo);
}

START_TEST(test_model_batch) {
    batch_case(NULL);
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX;
    pol.decode = ATTN_DECODE_QUEST;
    pol.block = 16;
    pol.min_budget = 16;
    pol.decode_budget = 128;
    pol.dense_layers = 1;
    batch_case(&pol);
}
END_TEST

/* ---- through the scheduler ----------------------------------------------------------------- */
enum { SCHED_GEN = 8 };
/* One greedy request (a 500-token prompt in slices of 160) through an
 * engine with `ranks` ranks sharding from 128 tokens; its tokens into out.
 * With ranks > 1 the metrics text shows every rank. */
static void sched_case(int ranks, int prefill, int decode, int32_t *out) {
    const model_t *m = tiny();
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 128;
    c.max_batch_tokens = 256;
    c.prefill_chunk = 160;
    c.target_step_ms = -1;
    c.context_ranks = ranks;
    c.context_min_tokens = 128;
    c.attn_default.block = 16;
    c.attn_default.anchor_init = 32;
    c.attn_default.anchor_local = 64;
    c.attn_default.anchor_lookback = 32;
    c.attn_default.decode_budget = 96;
    c.attn_default.min_budget = 16;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    const int V = model_hparams(m)->n_vocab;
    int32_t prompt[500];
    unsigned seed = 77;
    for (int i = 0; i < 500; i++) prompt[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    sched_params_t p;
    memset(&p, 0, sizeof p);
    p.prompt = prompt;
    p.n_prompt = 500;
    p.n_choices = 1;
    p.max_tokens = SCHED_GEN;
    p.ignore_eos = 1;
    p.logprobs = p.prompt_logprobs = -1;
    sampler_params_default(&p.sampling);
    p.sampling.temperature = 0;
    sched_attn_spec_default(&p.attn);
    p.attn.prefill = prefill;
    p.attn.decode = decode;
    int st;
    sched_req_t *r = sched_req_create(&p, &st);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(sched_submit(s, r), 0);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
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

TCase *cp_model_tcase(void) {
    TCase *tm = tcase_create("model");
    tcase_set_timeout(tm, 300);
    tcase_add_test(tm, test_model_dense);
    tcase_add_test(tm, test_model_sparse);
    tcase_add_test(tm, test_model_batch);
    tcase_add_test(tm, test_sched);
    return tm;
}
