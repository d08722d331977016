/* Context parallelism in the CUDA executor (exec_cuda_cp.cu), part of the
 * GPU Check suite check_cuda: a tiny random model (head_dim 64, pages of 64)
 * through the executor with 2, 3 and 4 device-local ranks (sharding from 100
 * tokens) against the same executor with one rank: a 1,300-token prompt in two
 * slices, a second sequence on a shared (forked) prefix, then decode steps,
 * dense and with each sparse method the ring runs (FlexPrefill, Quest,
 * TidalDecode). The ring merges partial outputs in bf16 where one rank
 * does not, so logits agree within bf16 tolerance (relative 3e-2, as the
 * GPU against the CPU) and top-1 in >= 95% of rows, not bit for bit; the
 * density a request reports and the per-rank counters must show that the
 * ring ran. A sharded sequence's logits are the same bits alone and beside
 * an unsharded neighbour. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "kv/kv.h"
#include "model/exec.h"
#include "model/gguf.h"
#include "model/model.h"

void cuda_cp_add(TCase *tc);
/* check_cuda.c */
model_t *check_cuda_tiny(uint32_t type, int n_heads, int n_kv_heads, int n_embd);
void check_cuda_compare(const float *a, const float *b, int rows, int V, double *rel, double *top1);

typedef struct {
    model_exec_t *e;
    kv_pool_t *kv;
} ex_t;

static ex_t mk_exec(const model_t *m, int ranks, int64_t min_tokens) {
    char err[256];
    model_exec_opts_t o = {.device = "cuda:0",
                           .max_batch_tokens = 700,
                           .kv_blocks = 96,
                           .context_ranks = ranks,
                           .context_min_tokens = min_tokens};
    ex_t x = {model_exec_create(m, &o, err, sizeof err), NULL};
    ck_assert_msg(x.e != NULL, "%d ranks: %s", ranks, err);
    kv_config_t cfg = model_exec_kv_config(x.e);
    ck_assert_ptr_nonnull(x.kv = kv_pool_create(&cfg));
    ck_assert_int_eq(model_exec_bind(x.e, x.kv), 0);
    return x;
}

static void ex_free(ex_t *x) {
    kv_pool_destroy(x->kv);
    model_exec_destroy(x->e);
}

/* Tokens [pos0, pos0 + n) of one sequence, every row's logits; a prompt's
 * slices know where the prompt ends (end). */
static void fwd(ex_t *x, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int generated, int64_t end,
                attn_state_t *st, float *logits) {
    ck_assert_int_eq(kv_seq_reserve(x->kv, s, pos0 + n), 0);
    ck_assert_int_eq(kv_seq_prepare_write(x->kv, s, pos0, pos0 + n), 0);
    model_seq_t q = {.tok0 = 0,
                     .n_tok = n,
                     .pos0 = pos0,
                     .kv = s,
                     .attn = st,
                     .generated = generated,
                     .prompt_end = generated ? 0 : end,
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

/* The executor with `ranks` ranks against one rank (module comment); pol
 * NULL: dense; tol_dec the decode steps' relative logit error. Prints and
 * returns the largest relative logit error. */
static double exec_case(int ranks, const attn_policy_t *pol, double tol_dec, const char *what) {
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab, NP = 1300, SPLIT = 650, FORK = 640, DEC = 6;
    const attn_shape_t sh = model_attn_shape(m);
    const int L = model_hparams(m)->n_layers;
    ex_t x[2] = {mk_exec(m, 1, 0), mk_exec(m, ranks, 100)};
    int32_t tok[NP + DEC];
    unsigned seed = 11u + (unsigned)ranks;
    for (int i = 0; i < NP; i++) tok[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    float *lg[2] = {malloc(sizeof(float) * (size_t)NP * V), malloc(sizeof(float) * (size_t)NP * V)};
    kv_seq_t s[2], f[2];
    attn_state_t *st[2] = {NULL, NULL}, *sf[2] = {NULL, NULL};
    double worst = 0, worst_top1 = 1;
    for (int k = 0; k < 2; k++) {
        kv_seq_init(&s[k]);
        kv_seq_init(&f[k]);
        if (pol) st[k] = attn_state_create(&sh, L, pol);
        if (pol) sf[k] = attn_state_create(&sh, L, pol);
    }
#define COMPARE(n, part)                                                                                               \
    do {                                                                                                               \
        double rel, top1;                                                                                              \
        check_cuda_compare(lg[1], lg[0], (n), V, &rel, &top1);                                                         \
        ck_assert_msg(rel < ((n) == 1 ? tol_dec : 3e-2), "%s, %d ranks, %s: relative logit error %g", what, ranks,   \
                      part, rel);                                                                                      \
        ck_assert_msg(top1 >= 0.95, "%s, %d ranks, %s: top-1 agreement %g", what, ranks, part, top1);                  \
        worst = fmax(worst, rel);                                                                                      \
        worst_top1 = fmin(worst_top1, top1);                                                                           \
    } while (0)
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok, SPLIT, 0, 0, NP, st[k], lg[k]);
    COMPARE(SPLIT, "first prompt slice");
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + SPLIT, NP - SPLIT, SPLIT, 0, NP, st[k], lg[k]);
    COMPARE(NP - SPLIT, "second prompt slice");
    for (int k = 0; k < 2; k++) { // a prefix hit: the first FORK tokens' blocks shared
        ck_assert_int_eq(kv_seq_fork(x[k].kv, &s[k], &f[k]), 0);
        kv_seq_truncate(x[k].kv, &f[k], FORK);
        fwd(&x[k], &f[k], tok + FORK, NP - FORK, FORK, 0, NP, sf[k], lg[k]);
    }
    COMPARE(NP - FORK, "prompt on a shared prefix");
    for (int t = 0; t < DEC; t++) { // teacher-forced from the one-rank executor
        tok[NP + t] = (int32_t)argmax(lg[0] + (size_t)(t ? 0 : NP - FORK - 1) * V, V);
        for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + NP + t, 1, NP + t, 1, 0, st[k], lg[k]);
        COMPARE(1, "decode step");
    }
#undef COMPARE
    model_exec_cp_stats_t cs;
    model_exec_cp_stats(x[1].e, &cs);
    ck_assert_int_eq(cs.ranks, ranks);
    int64_t kvb = 0;
    uint64_t steps = 0;
    double compute = 0;
    for (int r = 0; r < ranks; r++) kvb += cs.kv_blocks[r], steps += cs.ring_steps[r], compute += cs.compute_s[r];
    ck_assert_int_eq(kvb, kv_pool_n_used(x[1].kv));
    ck_assert_msg(cs.kv_blocks[ranks - 1] > 0 && steps > 0 && cs.sharded_rows > 0 && compute > 0,
                  "%s: the sharded path did not run (%lld blocks on the last rank, %llu ring steps, %llu rows)", what,
                  (long long)cs.kv_blocks[ranks - 1], (unsigned long long)steps, (unsigned long long)cs.sharded_rows);
    if (pol) { // the density each executor reports
        const attn_stats_t *a = attn_state_stats(st[0]), *b = attn_state_stats(st[1]);
        const double da = a->prefill_computed / a->prefill_total, db = b->prefill_computed / b->prefill_total;
        const double ea = a->decode_computed / a->decode_total, eb = b->decode_computed / b->decode_total;
        fprintf(stderr, "check_cuda: %s, %d ranks: prefill density %.4f (one rank %.4f), decode %.4f (%.4f)\n", what,
                ranks, db, da, eb, ea);
        ck_assert_msg(fabs(a->prefill_total - b->prefill_total) <= 1e-9 * a->prefill_total &&
                          fabs(a->decode_total - b->decode_total) <= 1e-9 * a->decode_total,
                      "%s: the pairs counted differ", what);
        ck_assert_msg(fabs(da - db) <= 0.02 && fabs(ea - eb) <= 0.02, "%s: density %g / %g, one rank %g / %g", what,
                      db, eb, da, ea);
        if (pol->prefill == ATTN_PREFILL_FLEX) ck_assert_msg(db < 0.999, "%s: FlexPrefill density %g", what, db);
        if (pol->decode != ATTN_DECODE_DENSE && pol->decode_budget < 1000)
            ck_assert_msg(eb < 0.999, "%s: decode density %g", what, eb);
    }
    fprintf(stderr,
            "check_cuda: %s, %d ranks vs one: max relative logit error %.2e, top-1 %.3f; KV blocks by rank:", what,
            ranks, worst, worst_top1);
    for (int r = 0; r < ranks; r++) fprintf(stderr, " %lld", (long long)cs.kv_blocks[r]);
    fprintf(stderr, "; ring steps %llu, compute %.2f ms, wait %.2f ms\n", (unsigned long long)steps, compute * 1e3,
            cs.wait_s[0] * 1e3);
    for (int k = 0; k < 2; k++) {
        kv_seq_release(x[k].kv, &s[k]);
        kv_seq_release(x[k].kv, &f[k]);
        attn_state_destroy(st[k]);
        attn_state_destroy(sf[k]);
        ex_free(&x[k]);
        free(lg[k]);
    }
    model_free(m);
    return worst;
}

START_TEST(test_cp_exec_dense) {
    exec_case(2, NULL, 3e-2, "dense");
    exec_case(3, NULL, 3e-2, "dense");
    exec_case(4, NULL, 3e-2, "dense");
}
END_TEST

/* FlexPrefill with Quest, then with TidalDecode. A sparse decode selects
 * from scores the ranks' rounding has moved (the K and V of every layer past
 * the first): on this random model's diffuse attention a Quest page or a
 * TidalDecode position at a near-tie flips, and one flip moves a row's
 * logits by several percent. So the decode steps are held to the dense
 * tolerance with budgets that cover the context (the sharded selection and
 * its partials, every page), to top-1 and 1e-1 with small ones; the
 * selection itself on equal inputs is check_cp_cuda's, rank for rank. */
START_TEST(test_cp_exec_sparse) {
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX; // sparse on a random model's diffuse attention: few columns and diagonals
    pol.min_budget = 8;
    pol.max_budget = 8;
    pol.gamma = 0.3f;
    pol.decode = ATTN_DECODE_QUEST;
    pol.dense_layers = 1;
    pol.decode_budget = 2048;
    exec_case(3, &pol, 3e-2, "FlexPrefill + Quest (every page)");
    pol.decode_budget = 128;
    exec_case(2, &pol, 1e-1, "FlexPrefill + Quest");
    exec_case(3, &pol, 1e-1, "FlexPrefill + Quest");
    pol.decode = ATTN_DECODE_TIDAL;
    pol.dense_layers = 0;
    pol.tidal_select_layer = 1;
    pol.decode_budget = 2048;
    exec_case(4, &pol, 3e-2, "FlexPrefill + TidalDecode (every position)");
    pol.decode_budget = 96;
    exec_case(4, &pol, 1e-1, "FlexPrefill + TidalDecode");
}
END_TEST

/* A sharded sequence A (a 420-token prompt, then two decode steps) alone on
 * one executor and beside an unsharded sequence B on another configured
 * alike: A's logits the same bits. */
START_TEST(test_cp_exec_batch) {
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab, NA = 420, NB = 50;
    ex_t x[2] = {mk_exec(m, 3, 100), mk_exec(m, 3, 100)};
    int32_t tok[NA + NB + 2];
    for (int i = 0; i < NA + NB + 2; i++) tok[i] = (int32_t)((i * 7919u + 5) % (unsigned)V);
    float *la = malloc(sizeof(float) * (size_t)(NA + NB) * V), *lb = malloc(sizeof(float) * (size_t)(NA + NB) * V);
    kv_seq_t a[2], b;
    kv_seq_init(&a[0]), kv_seq_init(&a[1]), kv_seq_init(&b);
    fwd(&x[0], &a[0], tok, NA, 0, 0, NA, NULL, la);
    ck_assert_int_eq(kv_seq_reserve(x[1].kv, &a[1], NA), 0);
    ck_assert_int_eq(kv_seq_reserve(x[1].kv, &b, NB), 0);
    int32_t bt[NA + NB];
    memcpy(bt, tok + NA, sizeof(int32_t) * NB);
    memcpy(bt + NB, tok, sizeof(int32_t) * NA);
    model_seq_t qs[2] = {
        {.tok0 = 0, .n_tok = NB, .pos0 = 0, .kv = &b, .logits_mode = MODEL_LOGITS_ALL, .logits = lb},
        {.tok0 = NB, .n_tok = NA, .pos0 = 0, .kv = &a[1], .logits_mode = MODEL_LOGITS_ALL, .logits = lb + (size_t)NB * V},
    };
    model_batch_t bb = {.n_tokens = NA + NB, .tokens = bt, .n_seqs = 2, .seqs = qs};
    ck_assert_int_eq(model_exec_forward(x[1].e, x[1].kv, &bb), 0);
    a[1].n_tokens = NA, b.n_tokens = NB;
    ck_assert_msg(!memcmp(la, lb + (size_t)NB * V, sizeof(float) * (size_t)NA * V),
                  "a sharded prompt's logits depend on its batch");
    for (int t = 0; t < 2; t++) { // decode: A alone, then A beside B's decode row
        const int32_t next = (int32_t)argmax(la + (size_t)(t ? 0 : NA - 1) * V, V);
        fwd(&x[0], &a[0], &next, 1, NA + t, 1, 0, NULL, la);
        ck_assert_int_eq(kv_seq_reserve(x[1].kv, &a[1], NA + t + 1), 0);
        ck_assert_int_eq(kv_seq_prepare_write(x[1].kv, &a[1], NA + t, NA + t + 1), 0);
        ck_assert_int_eq(kv_seq_reserve(x[1].kv, &b, NB + t + 1), 0);
        ck_assert_int_eq(kv_seq_prepare_write(x[1].kv, &b, NB + t, NB + t + 1), 0);
        const int32_t two[2] = {tok[t], next};
        model_seq_t qd[2] = {
            {.tok0 = 0, .n_tok = 1, .pos0 = NB + t, .kv = &b, .generated = 1, .logits_mode = MODEL_LOGITS_ALL,
             .logits = lb},
            {.tok0 = 1, .n_tok = 1, .pos0 = NA + t, .kv = &a[1], .generated = 1, .logits_mode = MODEL_LOGITS_ALL,
             .logits = lb + V},
        };
        model_batch_t bd = {.n_tokens = 2, .tokens = two, .n_seqs = 2, .seqs = qd};
        ck_assert_int_eq(model_exec_forward(x[1].e, x[1].kv, &bd), 0);
        a[1].n_tokens = NA + t + 1, b.n_tokens = NB + t + 1;
        ck_assert_msg(!memcmp(la, lb + V, sizeof(float) * (size_t)V), "decode %d: a sharded row depends on its batch",
                      t);
    }
    model_exec_cp_stats_t cs;
    model_exec_cp_stats(x[1].e, &cs);
    ck_assert_msg(cs.sharded_rows == NA + 2, "sharded rows %llu", (unsigned long long)cs.sharded_rows);
    kv_seq_release(x[0].kv, &a[0]), kv_seq_release(x[1].kv, &a[1]), kv_seq_release(x[1].kv, &b);
    ex_free(&x[0]), ex_free(&x[1]);
    free(la), free(lb);
    model_free(m);
}
END_TEST

/* Into check_cuda's case (before its last test, which breaks the device). */
void cuda_cp_add(TCase *tc) {
    tcase_add_test(tc, test_cp_exec_dense);
    tcase_add_test(tc, test_cp_exec_sparse);
    tcase_add_test(tc, test_cp_exec_batch);
}
