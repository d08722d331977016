/* The context-parallel scenario of cp_exec_case.h. */
#include "cp_exec_case.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv.h"

typedef struct {
    model_exec_t *e;
    kv_pool_t *kv;
} ex_t;

static ex_t mk_exec(const model_t *m, const cp_exec_case_t *cs, int ranks, int64_t min_tokens, const char *devices) {
    char err[256];
    model_exec_opts_t o = {.device = cs->device,
                           .max_batch_tokens = cs->max_batch_tokens,
                           .block_size = cs->block_size,
                           .kv_blocks = cs->kv_blocks,
                           .context_ranks = ranks,
                           .context_min_tokens = min_tokens,
                           .kv_keep_sliding = cs->keep_sliding,
                           .context_devices = devices};
    ex_t x = {model_exec_create(m, &o, err, sizeof err), NULL};
    ck_assert_msg(x.e != NULL, "%s, %d ranks: %s", cs->device, ranks, err);
    kv_config_t cfg = model_exec_kv_config(x.e);
    ck_assert_ptr_nonnull(x.kv = kv_pool_create(&cfg));
    ck_assert_int_eq(model_exec_bind(x.e, x.kv), 0);
    return x;
}

void cp_exec_forward(model_exec_t *e, kv_pool_t *kv, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0,
                     int generated, int64_t end, attn_state_t *st, float *logits) {
    ck_assert_int_eq(kv_seq_reserve(kv, s, pos0 + n), 0);
    ck_assert_int_eq(kv_seq_prepare_write(kv, s, pos0, pos0 + n), 0);
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
    ck_assert_int_eq(model_exec_forward(e, kv, &b), 0);
    s->n_tokens = pos0 + n;
}

static void fwd(ex_t *x, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int generated, int64_t end,
                attn_state_t *st, float *logits) {
    cp_exec_forward(x->e, x->kv, s, tok, n, pos0, generated, end, st, logits);
}

static void ex_free(ex_t *x) {
    kv_pool_destroy(x->kv);
    model_exec_destroy(x->e);
}

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++) a = x[i] > x[a] ? i : a;
    return a;
}

void cp_exec_case_run(const model_t *m, const cp_exec_case_t *cs, int ranks, const attn_policy_t *pol,
                      cp_exec_compare_fn compare, void *ud, cp_exec_result_t *out) {
    const int V = model_hparams(m)->n_vocab, NP = cs->n_prompt, SPLIT = cs->split, FORK = cs->fork;
    const int DEC = cs->n_decode, L = model_hparams(m)->n_layers;
    const int64_t end = cs->prompt_end ? NP : 0;
    const attn_shape_t sh = model_attn_shape(m);
    const int ref = cs->ref_ranks > 1 ? cs->ref_ranks : 1;
    ex_t x[2] = {mk_exec(m, cs, ref, ref > 1 ? cs->min_tokens : 0, NULL),
                 mk_exec(m, cs, ranks, cs->min_tokens, cs->devices)};
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(NP + DEC));
    ck_assert_ptr_nonnull(tok);
    unsigned seed = cs->seed;
    for (int i = 0; i < NP; i++) tok[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(V - 3));
    float *lg[2] = {malloc(sizeof(float) * (size_t)NP * V), malloc(sizeof(float) * (size_t)NP * V)};
    ck_assert(lg[0] && lg[1]);
    kv_seq_t s[2], f[2];
    attn_state_t *st[2] = {NULL, NULL}, *sf[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++) {
        kv_seq_init(&s[k]);
        kv_seq_init(&f[k]);
        if (pol) st[k] = attn_state_create(&sh, L, pol);
        if (pol) sf[k] = attn_state_create(&sh, L, pol);
    }
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok, SPLIT, 0, 0, end, st[k], lg[k]);
    compare(ud, "first prompt slice", lg[1], lg[0], SPLIT, V);
    for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + SPLIT, NP - SPLIT, SPLIT, 0, end, st[k], lg[k]);
    compare(ud, "second prompt slice", lg[1], lg[0], NP - SPLIT, V);
    /* a prefix hit: the first FORK tokens' blocks shared (all of them, if
     * the sliding layers' windows there are gone: kv_seq_truncate) */
    int64_t from = FORK;
    for (int k = 0; k < 2; k++) {
        ck_assert_int_eq(kv_seq_fork(x[k].kv, &s[k], &f[k]), 0);
        kv_seq_truncate(x[k].kv, &f[k], FORK);
        if (k == 0) from = f[k].n_tokens;
        ck_assert_int_eq(f[k].n_tokens, from);
        fwd(&x[k], &f[k], tok + from, NP - (int)from, from, 0, end, sf[k], lg[k]);
    }
    compare(ud, "prompt on a shared prefix", lg[1], lg[0], NP - (int)from, V);
    for (int t = 0; t < DEC; t++) { // teacher-forced: the forked sequence's last row picks the first token
        tok[NP + t] = (int32_t)argmax(lg[0] + (size_t)(t ? 0 : NP - from - 1) * V, V);
        for (int k = 0; k < 2; k++) fwd(&x[k], &s[k], tok + NP + t, 1, NP + t, 1, 0, st[k], lg[k]);
        compare(ud, "decode step", lg[1], lg[0], 1, V);
    }
    memset(out, 0, sizeof *out);
    model_exec_cp_stats(x[1].e, &out->cp);
    out->kv_used = kv_pool_n_used(x[1].kv);
    for (int k = 0; k < 2 && pol; k++) out->st[k] = *attn_state_stats(st[k]);
    for (int k = 0; k < 2; k++) {
        kv_seq_release(x[k].kv, &s[k]);
        kv_seq_release(x[k].kv, &f[k]);
        attn_state_destroy(st[k]);
        attn_state_destroy(sf[k]);
        ex_free(&x[k]);
        free(lg[k]);
    }
    free(tok);
}

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

void cp_exec_batch_run(const model_t *m, const cp_exec_case_t *cs, int ranks, const attn_policy_t *pol) {
    const int V = model_hparams(m)->n_vocab, NA = 421, SPLIT = 300, NB = 40, NC = 200;
    const attn_shape_t sh = model_attn_shape(m);
    const int L = model_hparams(m)->n_layers;
    ex_t x = mk_exec(m, cs, ranks, cs->min_tokens, cs->devices), y = mk_exec(m, cs, ranks, cs->min_tokens, cs->devices);
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
    model_exec_cp_stats_t cps;
    model_exec_cp_stats(y.e, &cps);
    // (AnchorAttention's prompt slices run no ring steps, but its time counts)
    ck_assert_msg(cps.sharded_rows > 0 && (cps.ring_steps[1] > 0 || cps.compute_s[1] > 0),
                  "the sharded path did not run");
    kv_seq_release(x.kv, &sa);
    kv_seq_release(y.kv, &ya), kv_seq_release(y.kv, &yb), kv_seq_release(y.kv, &yc);
    for (int k = 0; k < 4; k++) attn_state_destroy(st[k]);
    ex_free(&x), ex_free(&y);
    free(la), free(lb), free(lo);
}
