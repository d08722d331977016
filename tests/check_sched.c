/* Check suite for src/scheduler: the stop-string matcher and policy
 * resolution on their own, then the engine end to end on tiny random
 * models (batched == alone, a randomized submit/step/cancel run under a tiny
 * KV pool, prefix reuse, preemption, n > 1 choices, stop strings, prompt
 * logprobs, the engine thread), and on SmolLM2 when the file is present
 * (absent, the program SKIPs). */
#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cpu.h"
#include "common/status.h"
#include "kv/kv.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "ops/ops.h"
#include "scheduler/sched.h"
#include "scheduler/sched_internal.h"
#include "scheduler/stop.h"
#include "testutil.h"
#include "schedutil.h"
#include "tinymodel.h"
#include "tools/mkmodel.h"

/* ---- stop strings --------------------------------------------------------------- */
static char *run_stops(char *const *stops, int n, const char *const *deltas, int *matched) {
    sched_stopm_t m;
    sched_stopm_init(&m, stops, n);
    sched_text_t out = {0};
    sched_text_append(&out, "", 0);
    *matched = 0;
    for (int i = 0; deltas[i] && !*matched; i++) {
        size_t before = out.len;
        *matched = sched_stopm_push(&m, deltas[i], strlen(deltas[i]), &out) == 1;
        /* Released text never contains a stop string. */
        for (int j = 0; j < n; j++) ck_assert_ptr_null(strstr(out.s, stops[j]));
        (void)before;
    }
    if (!*matched) sched_stopm_flush(&m, &out);
    sched_stopm_fini(&m);
    return out.s;
}

START_TEST(test_stop_strings) {
    char *s1[] = {"STOP", "\n\n"};
    int matched;
    const char *d1[] = {"Hello wor", "ld ST", "O", "P and more", NULL};
    char *o = run_stops(s1, 2, d1, &matched);
    ck_assert(matched);
    ck_assert_str_eq(o, "Hello world ");
    free(o);
    /* A partial match that fails is released. */
    const char *d2[] = {"a ST", "OX b", NULL};
    o = run_stops(s1, 2, d2, &matched);
    ck_assert(!matched);
    ck_assert_str_eq(o, "a STOX b");
    free(o);
    /* Held text comes out at the end when nothing matched. */
    const char *d3[] = {"tail S", "TO", NULL};
    o = run_stops(s1, 2, d3, &matched);
    ck_assert(!matched);
    ck_assert_str_eq(o, "tail STO");
    free(o);
    /* Earliest match wins; one delta holds a whole stop string. */
    const char *d4[] = {"x\n", "\nSTOP", NULL};
    o = run_stops(s1, 2, d4, &matched);
    ck_assert(matched);
    ck_assert_str_eq(o, "x");
    free(o);
    /* Hold-back: while a prefix may still match, nothing of it is released. */
    sched_stopm_t m;
    sched_stopm_init(&m, s1, 2);
    sched_text_t out = {0};
    ck_assert_int_eq(sched_stopm_push(&m, "abcST", 5, &out), 0);
    ck_assert_int_eq((int)out.len, 3);
    ck_assert_int_eq(sched_stopm_push(&m, "O", 1, &out), 0);
    ck_assert_int_eq((int)out.len, 3);
    ck_assert_int_eq(sched_stopm_push(&m, "PP", 2, &out), 1);
    ck_assert_str_eq(out.s, "abc");
    free(out.s);
    sched_stopm_fini(&m);
    /* No stop strings: everything passes straight through. */
    const char *d5[] = {"ab", "cd", NULL};
    o = run_stops(NULL, 0, d5, &matched);
    ck_assert_str_eq(o, "abcd");
    free(o);
}
END_TEST

START_TEST(test_policy) {
    sched_config_t c;
    sched_config_default(&c);
    sched_attn_spec_t sp;
    sched_attn_spec_default(&sp);
    attn_policy_t p;
    sched__resolve_policy(&c, &sp, 100, &p);
    ck_assert_int_eq(p.prefill, ATTN_PREFILL_DENSE);
    ck_assert_int_eq(p.decode, ATTN_DECODE_DENSE);
    sched__resolve_policy(&c, &sp, c.sparse_prefill_min_tokens, &p);
    ck_assert_int_eq(p.prefill, c.attn_default.prefill);
    ck_assert_int_eq(p.decode, c.attn_default.decode);
    sp.prefill = ATTN_PREFILL_ANCHOR;
    sp.decode = ATTN_DECODE_DENSE;
    sp.theta = 5.0f;
    sp.gamma = NAN;
    sp.decode_budget = 256;
    sched__resolve_policy(&c, &sp, 100000, &p);
    ck_assert_int_eq(p.prefill, ATTN_PREFILL_ANCHOR);
    ck_assert_int_eq(p.decode, ATTN_DECODE_DENSE);
    ck_assert_float_eq(p.theta, 5.0f);
    ck_assert_float_eq(p.gamma, c.attn_default.gamma);
    ck_assert_int_eq(p.decode_budget, 256);
    /* AnchorAttention's windows: the engine's unless the spec sets them */
    c.attn_default.anchor_init = 512;
    c.attn_default.anchor_lookback = 256;
    sched__resolve_policy(&c, &sp, 100000, &p);
    ck_assert_int_eq(p.anchor_init, 512);
    ck_assert_int_eq(p.anchor_local, c.attn_default.anchor_local);
    ck_assert_int_eq(p.anchor_lookback, 256);
    sp.anchor_lookback = 0;
    sp.anchor_local = 1024;
    sched__resolve_policy(&c, &sp, 100000, &p);
    ck_assert_int_eq(p.anchor_lookback, 0);
    ck_assert_int_eq(p.anchor_local, 1024);
    ck_assert_int_eq(p.anchor_init, 512);
    /* the probe: the engine's (0.01), unless the spec sets it (0: off); it
     * changes the keys, so the prefix salt with it */
    ck_assert_float_eq(p.anchor_probe, 0.01f);
    const uint64_t salt0 = sched__prefill_salt(&p);
    sp.anchor_probe = 0.0f;
    sched__resolve_policy(&c, &sp, 100000, &p);
    ck_assert_float_eq(p.anchor_probe, 0.0f);
    ck_assert_uint_ne(sched__prefill_salt(&p), salt0);
}
END_TEST

START_TEST(test_req_queue) {
    int32_t prompt[3] = {1, 2, 3};
    sched_params_t p = {.prompt = prompt, .n_prompt = 3, .n_choices = 1};
    int st;
    p.n_prompt = 0;
    ck_assert_ptr_null(sched_req_create(&p, &st));
    ck_assert_int_eq(st, LC_EINVAL);
    p.n_prompt = 3;
    p.stop[0] = "x";
    p.n_stop = 1;
    sched_req_t *r = sched_req_create(&p, &st);
    ck_assert_ptr_nonnull(r);
    prompt[0] = 99; // copied
    ck_assert_int_eq(r->prompt[0], 1);
    for (int i = 0; i < 40; i++) {
        sched_event_t ev = {.kind = SCHED_EV_TOKEN, .token = i, .text = strdup("t"), .text_len = 1};
        ck_assert_int_eq(sched__req_push(r, &ev), 0);
    }
    sched_event_t out[16];
    int got = 0, n;
    while ((n = sched_req_poll(r, out, 16)) > 0) {
        for (int i = 0; i < n; i++) {
            ck_assert_int_eq(out[i].token, got + i);
            sched_event_clear(&out[i]);
        }
        got += n;
    }
    ck_assert_int_eq(got, 40);
    sched_event_t ev = {.kind = SCHED_EV_TOKEN, .text = strdup("left")};
    sched__req_push(r, &ev); // freed with the request
    sched_req_retain(r);
    sched_req_release(r);
    sched_req_release(r);
    ck_assert_str_eq(sched_finish_name(SCHED_FINISH_LENGTH), "length");
}
END_TEST

/* ---- tiny models ------------------------------------------------------------------ */
static model_t *g_model;

static model_t *tiny_model(void) {
    if (g_model) return g_model;
    const tiny_opts_t o = {.name = "check-sched-tiny",
                           .n_layers = 2,
                           .n_embd = 32,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .n_ff = 64,
                           .n_ctx = 512,
                           .seed = 7,
                           .qk_std = 2.0f};
    return g_model = tiny_model_load(&o);
}

static sched_t *mk_sched(const model_t *m, int64_t blocks, int max_batch, int chunk, int prefix) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = blocks;
    c.max_batch_tokens = max_batch;
    c.prefill_chunk = chunk;
    c.enable_prefix_cache = prefix;
    c.max_running = 16;
    c.max_waiting = 1024;
    c.target_step_ms = -1; // batches limited by max_batch_tokens only: the same schedule on any machine
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* Reference: one request alone on a fresh engine with a large pool. */
static void run_alone(const model_t *m, const int32_t *prompt, int n, int max_tokens, out_t *o) {
    sched_t *s = mk_sched(m, 256, 512, 512, 0);
    sched_params_t p;
    greedy_params(&p, prompt, n, max_tokens);
    submit(s, o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(o);
    ck_assert_int_eq(o->n[0], max_tokens);
    ck_assert_int_eq(o->finish[0], SCHED_FINISH_LENGTH);
    sched_destroy(s);
}

#define NB 12
static void batched_equals_alone(void) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompts[NB][200];
    static out_t ref[NB], got[NB];
    int lens[NB];
    for (int i = 0; i < NB; i++) {
        lens[i] = 1 + (i * 37) % 150;
        mk_prompt(prompts[i], lens[i], 100 + i, nv);
        run_alone(m, prompts[i], lens[i], 10 + i, &ref[i]);
        if (getenv("CHECK_SCHED_DUMP")) {
            for (int j = 0; j < ref[i].n[0]; j++) fprintf(stderr, "%d ", ref[i].toks[0][j]);
            fprintf(stderr, "| %s\n", ref[i].text[0]);
        }
    }
    /* Small budget and chunks: prompts are split across steps (at other
     * places than alone) and mixed with decodes of the others. */
    sched_t *s = mk_sched(m, 256, 48, 16, 0);
    for (int i = 0; i < NB; i++) {
        sched_params_t p;
        greedy_params(&p, prompts[i], lens[i], 10 + i);
        submit(s, &got[i], &p);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < NB; i++) {
        finish_out(&got[i]);
        assert_same(&got[i], &ref[i], ref[i].n[0], "batched vs alone");
        ck_assert_str_eq(got[i].text[0], ref[i].text[0]);
    }
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_eq(mt.requests_finished[SCHED_FINISH_LENGTH], NB);
    ck_assert_uint_eq(mt.ttft.count, NB);
    ck_assert_int_eq(mt.running, 0);
    assert_pool_clean(s);
    sched_destroy(s);
}

/* The kernel sets "each kernel set" covers: every one this CPU has, or
 * only the one LACUNA_CPU names (tests/blas_coretypes.sh). */
static lc_cpu_level_t levels_from(void) {
    const char *e = getenv("LACUNA_CPU");
    lc_cpu_level_t l = !e || !*e              ? LC_CPU_SCALAR
                       : !strcmp(e, "avx2")   ? LC_CPU_AVX2
                       : !strcmp(e, "scalar") ? LC_CPU_SCALAR
                                              : LC_CPU_AVX512;
    return l < lc_cpu_detected() ? l : lc_cpu_detected();
}
static lc_cpu_level_t levels_to(void) {
    const char *e = getenv("LACUNA_CPU");
    return e && *e ? levels_from() : lc_cpu_detected();
}

/* Every test marked "each kernel set" runs once per set (levels_from()..levels_to()). */
#define EACH_LEVEL(body)                                                                                               \
    do {                                                                                                               \
        for (lc_cpu_level_t l_ = levels_from(); l_ <= levels_to(); l_++) {                                             \
            lc_cpu_set_max(l_);                                                                                        \
            body;                                                                                                      \
        }                                                                                                              \
        lc_cpu_set_max(LC_CPU_AVX512);                                                                                 \
    } while (0)

/* Each kernel set. */
START_TEST(test_batched_equals_alone) { EACH_LEVEL(batched_equals_alone()); }
END_TEST

static void preemption_tiny_pool(void) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    enum { N = 8 };
    static int32_t prompts[N][64];
    static out_t ref[N], got[N];
    for (int i = 0; i < N; i++) {
        mk_prompt(prompts[i], 20 + i, 500 + i, nv);
        run_alone(m, prompts[i], 20 + i, 40, &ref[i]);
    }
    /* 10 blocks of 16 tokens; every request needs 4 at its end. */
    sched_t *s = mk_sched(m, 10, 256, 64, 1);
    for (int i = 0; i < N; i++) {
        sched_params_t p;
        greedy_params(&p, prompts[i], 20 + i, 40);
        submit(s, &got[i], &p);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    int preempted = 0;
    for (int i = 0; i < N; i++) {
        sched_usage_t u;
        sched_req_usage(got[i].r, &u);
        preempted += u.preemptions;
        finish_out(&got[i]);
        assert_same(&got[i], &ref[i], 40, "preempted vs alone");
        ck_assert_str_eq(got[i].text[0], ref[i].text[0]);
    }
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_int_gt(preempted, 0);
    ck_assert_uint_eq(mt.preemptions_total, (uint64_t)preempted);
    assert_pool_clean(s);
    sched_destroy(s);
}

/* Preempted requests recompute their tokens and go on unchanged; each kernel set. */
START_TEST(test_preemption_tiny_pool) { EACH_LEVEL(preemption_tiny_pool()); }
END_TEST

START_TEST(test_prefix_reuse) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[120], other[120];
    mk_prompt(prompt, 120, 9, nv);
    memcpy(other, prompt, sizeof other);
    mk_prompt(other + 100, 20, 10, nv); // shares 100 tokens
    out_t ref1, ref2, a, b, c;
    run_alone(m, prompt, 120, 12, &ref1);
    run_alone(m, other, 120, 12, &ref2);
    sched_t *s = mk_sched(m, 64, 256, 64, 1);
    sched_params_t p;
    greedy_params(&p, prompt, 120, 12);
    submit(s, &a, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    submit(s, &b, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    greedy_params(&p, other, 120, 12);
    submit(s, &c, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    sched_usage_t ua, ub, uc;
    sched_req_usage(a.r, &ua);
    sched_req_usage(b.r, &ub);
    sched_req_usage(c.r, &uc);
    ck_assert_int_eq(ua.cached_tokens, 0);
    ck_assert_int_eq(ub.cached_tokens, 112); // 7 full blocks of 16
    ck_assert_int_eq(uc.cached_tokens, 96);  // the 6 blocks before token 100
    ck_assert_int_eq(ub.prompt_tokens, 120);
    ck_assert_int_eq(ub.completion_tokens, 12);
    finish_out(&a);
    finish_out(&b);
    finish_out(&c);
    assert_same(&a, &ref1, 12, "cold");
    assert_same(&b, &ref1, 12, "prefix hit");
    assert_same(&c, &ref2, 12, "partial prefix hit");
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_eq(mt.prefix_hit_tokens, 112 + 96);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* ---- randomized ------------------------------------------------------------------- */
#define RP 10   // distinct prompts
#define RMAX 24 // max_tokens of the references
START_TEST(test_random_ops) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompts[RP][64];
    static out_t ref[RP];
    int lens[RP];
    for (int i = 0; i < RP; i++) {
        lens[i] = 1 + (i * 13) % 50;
        mk_prompt(prompts[i], lens[i], 900 + (unsigned)(i % 4), nv); // shared prefixes
        run_alone(m, prompts[i], lens[i], RMAX, &ref[i]);
    }
    sched_t *s = mk_sched(m, 14, 40, 8, 1);
    enum { LIVE = 12 };
    static out_t live[LIVE];
    int which[LIVE], used[LIVE] = {0};
    unsigned seed = 4242;
    int ops = 0, finished = 0, cancelled = 0;
    for (ops = 0; ops < 3000; ops++) {
        int op = rand_r(&seed) % 10;
        int i = rand_r(&seed) % LIVE;
        if (op < 3 && !used[i]) {
            which[i] = rand_r(&seed) % RP;
            sched_params_t p;
            greedy_params(&p, prompts[which[i]], lens[which[i]], 1 + rand_r(&seed) % RMAX);
            submit(s, &live[i], &p);
            used[i] = 1;
        } else if (op == 3 && used[i]) {
            sched_req_cancel(live[i].r);
        } else {
            ck_assert_int_ge(sched_step(s), 0);
            kv_pool_t *kv = sched_kv(s);
            ck_assert_int_eq(kv_pool_n_used(kv) + kv_pool_n_available(kv), kv_pool_n_blocks(kv));
        }
        for (int j = 0; j < LIVE; j++) {
            if (!used[j]) continue;
            drain(&live[j]);
            /* Whatever came out so far is the reference's prefix, bit for bit. */
            ck_assert_mem_eq(live[j].toks[0], ref[which[j]].toks[0], (size_t)live[j].n[0] * sizeof(int32_t));
            ck_assert_mem_eq(live[j].lp[0], ref[which[j]].lp[0], (size_t)live[j].n[0] * sizeof(float));
            if (live[j].done) {
                if (live[j].finish[0] == SCHED_FINISH_CANCELLED)
                    cancelled++;
                else
                    finished++;
                sched_req_release(live[j].r);
                used[j] = 0;
            }
        }
    }
    for (int j = 0; j < LIVE; j++)
        if (used[j]) sched_req_cancel(live[j].r);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int j = 0; j < LIVE; j++)
        if (used[j]) finish_out(&live[j]);
    ck_assert_int_gt(finished, 100);
    ck_assert_int_gt(cancelled, 20);
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_gt(mt.preemptions_total, 0);
    ck_assert_uint_gt(mt.prefix_hit_tokens, 0);
    assert_pool_clean(s);
    kv_pool_clear_cache(sched_kv(s));
    ck_assert_int_eq(kv_pool_n_cached(sched_kv(s)), 0);
    sched_destroy(s);
}
END_TEST

/* ---- prompt order ------------------------------------------------------------------ */
/* Steps until each request's first token (its prompt done), stepping by hand:
 * first[i] is the 1-based step whose events carried out[i]'s first token. */
static void steps_to_first_token(sched_t *s, out_t *out, int n, int *first) {
    for (int i = 0; i < n; i++) first[i] = 0;
    for (int step = 1, left = n; left > 0; step++) {
        ck_assert_int_lt(step, 100);
        ck_assert_int_gt(sched_step(s), 0);
        for (int i = 0; i < n; i++) {
            drain(&out[i]);
            if (!first[i] && out[i].n[0] > 0) first[i] = step, left--;
        }
    }
}

/* Equal prompts submitted together go in arrival order, each taking all the
 * room it can: the first streams after one step, and each finishes its
 * prompt in an earlier step than the one behind it (not all together). */
START_TEST(test_equal_prompts_in_order) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    enum { N = 4, LEN = 64 };
    static int32_t prompts[N][LEN];
    static out_t ref[N], got[N];
    for (int i = 0; i < N; i++) {
        mk_prompt(prompts[i], LEN, 1300 + i, nv);
        run_alone(m, prompts[i], LEN, 6, &ref[i]);
    }
    /* One step holds one whole prompt (64 rows, chunks of 512). */
    sched_t *s = mk_sched(m, 64, LEN, 512, 0);
    for (int i = 0; i < N; i++) {
        sched_params_t p;
        greedy_params(&p, prompts[i], LEN, 6);
        submit(s, &got[i], &p);
    }
    int first[N];
    steps_to_first_token(s, got, N, first);
    ck_assert_int_eq(first[0], 1);
    for (int i = 1; i < N; i++)
        ck_assert_msg(first[i] > first[i - 1], "request %d's prompt done at step %d, request %d's at %d", i, first[i],
                      i - 1, first[i - 1]);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < N; i++) {
        finish_out(&got[i]);
        assert_same(&got[i], &ref[i], 6, "in order vs alone");
    }
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* A short prompt behind a long one still starts at once: while it waits the
 * long one takes at most half of the room. */
START_TEST(test_short_behind_long) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t lp[256], sp[16];
    static out_t got[2];
    mk_prompt(lp, 256, 1400, nv);
    mk_prompt(sp, 16, 1401, nv);
    sched_t *s = mk_sched(m, 64, 64, 512, 0);
    sched_params_t p;
    greedy_params(&p, lp, 256, 4);
    submit(s, &got[0], &p);
    greedy_params(&p, sp, 16, 4);
    submit(s, &got[1], &p);
    int first[2];
    steps_to_first_token(s, got, 2, first);
    ck_assert_int_eq(first[1], 1);
    ck_assert_int_gt(first[0], 4); // 256 rows at 64 a step, less the short one's
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < 2; i++) finish_out(&got[i]);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* A scheduler whose step-time budget is 1 ms (so that, once a row is said to
 * cost 1 ms, it allows only the floor of one block of prompt rows), chunks
 * of 512 rows, no prefix cache. */
static sched_t *budget_sched(const model_t *m) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 128;
    c.max_batch_tokens = 512;
    c.prefill_chunk = 512;
    c.enable_prefix_cache = 0;
    c.max_running = 16;
    c.target_step_ms = 1;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* The step-time budget cuts a dense prompt beside a running decode to a
 * block of rows a step, but a request alone (nothing decoding, nothing
 * waiting) takes its whole chunk: the budget protects others' latency only. */
START_TEST(test_alone_takes_whole_chunk) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t dp[16], fp[300];
    static out_t got[3];
    mk_prompt(dp, 16, 1600, nv);
    mk_prompt(fp, 300, 1601, nv);
    sched_t *s = budget_sched(m);
    sched_params_t p;
    /* alone: the 300-token prompt in one step, though a row "costs" 1 ms */
    s->ms_per_row = 1.0;
    greedy_params(&p, fp, 300, 2);
    submit(s, &got[0], &p);
    ck_assert_int_gt(sched_step(s), 0);
    drain(&got[0]);
    ck_assert_int_eq(got[0].n[0], 1);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    /* beside a decode: one block of prompt rows a step */
    greedy_params(&p, dp, 16, 60);
    submit(s, &got[1], &p);
    for (int i = 0; i < 3; i++) ck_assert_int_gt(sched_step(s), 0); // decoding now
    s->ms_per_row = 1.0;
    greedy_params(&p, fp, 300, 2);
    submit(s, &got[2], &p);
    ck_assert_int_gt(sched_step(s), 0);
    drain(&got[2]);
    ck_assert_int_eq(got[2].n[0], 0);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < 3; i++) finish_out(&got[i]);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* A sparse prefill's chunk cannot be cut (its selection depends on the chunk's
 * bounds): when it exceeds the step-time budget it still runs as the step's
 * first prompt work, beside the running decodes, instead of waiting for every
 * decode to end (which would starve it behind a stream of decodes). */
START_TEST(test_fixed_chunk_beside_decodes) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t dp[16], fp[300];
    static out_t got[2];
    mk_prompt(dp, 16, 1500, nv);
    mk_prompt(fp, 300, 1501, nv);
    sched_t *s = budget_sched(m);
    sched_params_t p;
    greedy_params(&p, dp, 16, 60);
    submit(s, &got[0], &p);
    for (int i = 0; i < 3; i++) ck_assert_int_gt(sched_step(s), 0); // decoding now
    s->ms_per_row = 1.0; // as if measured: the step-time budget is the floor of one block of prompt rows
    greedy_params(&p, fp, 300, 2);
    p.attn.prefill = ATTN_PREFILL_FLEX;
    p.attn.min_budget = 64;
    submit(s, &got[1], &p);
    int step = 0;
    for (; step < 10; step++) {
        ck_assert_int_gt(sched_step(s), 0);
        drain(&got[1]);
        if (got[1].n[0] > 0) break;
    }
    drain(&got[0]);
    ck_assert_msg(step < 10, "the sparse prefill waited %d steps", step);
    ck_assert_int_lt(got[0].n[0], 60); // the decode stream still running beside it
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < 2; i++) finish_out(&got[i]);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* A sparse prompt that asks for its log-probabilities holds its whole
 * chunk's logits at once (its selection depends on the chunk): on a
 * 70,000-token vocabulary its chunks are 128 rows (at most 64 MiB of logits),
 * not prefill_chunk's 512; fixed, so its tokens are the same alone and
 * beside another request, whose prompt takes part of every step; and a step
 * holds at most 128 MiB of them. */
START_TEST(test_sparse_prompt_logprobs_chunk) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/lacuna_check_sched_vocab_%d.gguf", (int)getpid());
    mkmodel_opts_t mo;
    mkmodel_opts_default(&mo);
    mo.n_ctx = 1024;
    mo.vocab_size = 70000;
    char err[256];
    ck_assert_msg(mkmodel_write(&mo, path, err, sizeof err) == 0, "%s", err);
    model_t *m = model_load(path, err, sizeof err);
    unlink(path);
    ck_assert_msg(m != NULL, "%s", err);
    const int nv = model_hparams(m)->n_vocab;
    static int32_t fp[600], other[400];
    mk_prompt(fp, 600, 1601, nv);
    mk_prompt(other, 400, 1602, nv);
    out_t alone, beside, o2;
    for (int pass = 0; pass < 2; pass++) {
        sched_t *s = mk_sched(m, 256, 1024, 512, 0);
        sched_params_t p;
        if (pass) {
            greedy_params(&p, other, 400, 4);
            submit(s, &o2, &p);
        }
        greedy_params(&p, fp, 600, 4);
        p.attn.prefill = ATTN_PREFILL_FLEX;
        p.attn.min_budget = 64;
        p.prompt_logprobs = 1;
        submit(s, pass ? &beside : &alone, &p);
        if (!pass) ck_assert_int_eq(sched_step(s), 128); // the first chunk
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        finish_out(pass ? &beside : &alone);
        if (pass) finish_out(&o2);
        assert_pool_clean(s);
        sched_destroy(s);
    }
    ck_assert_int_eq(alone.n_prompt_lps, 600);
    ck_assert_int_eq(beside.n_prompt_lps, 600);
    ck_assert(memcmp(&alone.prompt_lp1, &beside.prompt_lp1, sizeof(float)) == 0);
    assert_same(&beside, &alone, 4, "a sparse prompt with log-probabilities beside another");
    /* Five at once: a step holds at most 128 MiB of such logits (479 rows
     * here), so three chunks of 128 run in the first step and two wait;
     * each still gives its bits alone. */
    sched_t *s = mk_sched(m, 256, 1024, 512, 0);
    static out_t five[5];
    for (int i = 0; i < 5; i++) {
        sched_params_t p;
        greedy_params(&p, fp, 600, 4);
        p.attn.prefill = ATTN_PREFILL_FLEX;
        p.attn.min_budget = 64;
        p.prompt_logprobs = 1;
        submit(s, &five[i], &p);
    }
    ck_assert_int_eq(sched_step(s), 3 * 128);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < 5; i++) {
        finish_out(&five[i]);
        ck_assert_int_eq(five[i].n_prompt_lps, 600);
        ck_assert(memcmp(&alone.prompt_lp1, &five[i].prompt_lp1, sizeof(float)) == 0);
        assert_same(&five[i], &alone, 4, "five sparse prompts with log-probabilities");
    }
    assert_pool_clean(s);
    sched_destroy(s);
    model_free(m);
}
END_TEST

/* ---- choices, stop strings, logprobs ---------------------------------------------- */
START_TEST(test_choices) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    int32_t prompt[37];
    mk_prompt(prompt, 37, 77, nv);
    out_t ref, g, t1, t2;
    run_alone(m, prompt, 37, 15, &ref);
    sched_t *s = mk_sched(m, 64, 128, 32, 1);
    sched_params_t p;
    greedy_params(&p, prompt, 37, 15);
    p.n_choices = 3;
    submit(s, &g, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    sched_usage_t u;
    sched_req_usage(g.r, &u);
    ck_assert_int_eq(u.completion_tokens, 45);
    finish_out(&g);
    for (int c = 0; c < 3; c++) {
        ck_assert_int_eq(g.n[c], 15);
        ck_assert_mem_eq(g.toks[c], ref.toks[0], 15 * sizeof(int32_t));
        ck_assert_int_eq(g.finish[c], SCHED_FINISH_LENGTH);
    }
    /* Sampling with a seed: reproducible, and the choices differ. */
    p.sampling.temperature = 1.5f;
    p.sampling.seed = 1234;
    submit(s, &t1, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    submit(s, &t2, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(&t1);
    finish_out(&t2);
    for (int c = 0; c < 3; c++) ck_assert_mem_eq(t1.toks[c], t2.toks[c], 15 * sizeof(int32_t));
    ck_assert(memcmp(t1.toks[0], t1.toks[1], 15 * sizeof(int32_t)) != 0 ||
              memcmp(t1.toks[1], t1.toks[2], 15 * sizeof(int32_t)) != 0);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

START_TEST(test_stop_conditions) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    int32_t prompt[11];
    mk_prompt(prompt, 11, 31, nv);
    out_t ref, g;
    run_alone(m, prompt, 11, 40, &ref);
    /* A 3-character ASCII stop string from the middle of the reference text. */
    const char *t = ref.text[0];
    size_t len = strlen(t), pos = len / 3;
    while (pos + 3 <= len && !(t[pos] > ' ' && t[pos] < 127 && t[pos + 1] > ' ' && t[pos + 1] < 127 &&
                               t[pos + 2] > ' ' && t[pos + 2] < 127))
        pos++;
    ck_assert_msg(pos + 3 <= len, "no ASCII run in \"%s\"", t);
    char stop[4] = {t[pos], t[pos + 1], t[pos + 2], 0};
    size_t first = (size_t)(strstr(t, stop) - t);
    sched_t *s = mk_sched(m, 64, 128, 32, 1);
    sched_params_t p;
    greedy_params(&p, prompt, 11, 40);
    p.stop[0] = "\x01never";
    p.stop[1] = stop;
    p.n_stop = 2;
    submit(s, &g, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(&g);
    ck_assert_int_eq(g.finish[0], SCHED_FINISH_STOP);
    ck_assert_uint_eq(g.tlen[0], first);
    ck_assert_int_eq(memcmp(g.text[0], t, first), 0);
    ck_assert_int_lt(g.n[0], 40);
    ck_assert_mem_eq(g.toks[0], ref.toks[0], (size_t)g.n[0] * sizeof(int32_t));

    /* A stop token id: the request ends on that token. */
    int k = 5;
    greedy_params(&p, prompt, 11, 40);
    p.stop_token_ids = &ref.toks[0][k];
    p.n_stop_token_ids = 1;
    int first_k = k;
    for (int i = 0; i < k; i++)
        if (ref.toks[0][i] == ref.toks[0][k]) first_k = i;
    submit(s, &g, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(&g);
    ck_assert_int_eq(g.finish[0], SCHED_FINISH_STOP);
    ck_assert_int_le(g.n[0], first_k + 1);
    /* min_tokens bans it before: then it runs past position k. */
    p.min_tokens = 30;
    submit(s, &g, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(&g);
    ck_assert_int_ge(g.n[0], 30);
    for (int i = 0; i < 30; i++) ck_assert_int_ne(g.toks[0][i], ref.toks[0][k]);

    /* Prompt logprobs with max_tokens 0: prefill only. */
    greedy_params(&p, prompt, 11, 0);
    p.prompt_logprobs = 2;
    submit(s, &g, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish_out(&g);
    ck_assert_int_eq(g.n[0], 0);
    ck_assert_int_eq(g.finish[0], SCHED_FINISH_LENGTH);
    ck_assert_int_eq(g.n_prompt_lps, 11);
    ck_assert(g.prompt_lp1 <= 0.0f && isfinite(g.prompt_lp1));
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

START_TEST(test_submit_errors) {
    const model_t *m = tiny_model();
    int32_t prompt[100] = {0};
    sched_t *s = mk_sched(m, 4, 64, 16, 1);
    sched_params_t p;
    greedy_params(&p, prompt, 100, 500); // beyond n_ctx 512
    int st;
    sched_req_t *r = sched_req_create(&p, &st);
    ck_assert_int_eq(sched_submit(s, r), LC_ETOOLONG);
    sched_req_release(r);
    greedy_params(&p, prompt, 60, 10); // 5 blocks > 4
    r = sched_req_create(&p, &st);
    ck_assert_int_eq(sched_submit(s, r), LC_ETOOLONG);
    sched_req_release(r);
    sched_destroy(s);

    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 16;
    c.max_waiting = 2;
    char err[128];
    s = sched_create(m, &c, err, sizeof err);
    ck_assert_ptr_nonnull(s);
    greedy_params(&p, prompt, 10, 5);
    sched_req_t *rs[3];
    for (int i = 0; i < 3; i++) rs[i] = sched_req_create(&p, &st);
    ck_assert_int_eq(sched_submit(s, rs[0]), 0);
    ck_assert_int_eq(sched_submit(s, rs[1]), 0);
    ck_assert_int_eq(sched_submit(s, rs[2]), LC_EBUSY);
    sched_drain(s);
    ck_assert_int_eq(sched_submit(s, rs[2]), LC_ESHUTDOWN);
    sched_destroy(s); // cancels the two queued requests
    for (int i = 0; i < 2; i++) {
        out_t o = {.r = rs[i]};
        finish_out(&o);
        ck_assert_int_eq(o.finish[0], SCHED_FINISH_CANCELLED);
    }
    sched_req_release(rs[2]);
}
END_TEST

/* ---- the engine thread ------------------------------------------------------------- */
static atomic_int g_wakes;
static void wake(void *ud) { atomic_fetch_add((atomic_int *)ud, 1); }

START_TEST(test_thread) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    enum { N = 6 };
    static int32_t prompts[N][40];
    static out_t ref[N], got[N];
    for (int i = 0; i < N; i++) {
        mk_prompt(prompts[i], 5 + i * 5, 300 + i, nv);
        run_alone(m, prompts[i], 5 + i * 5, 20, &ref[i]);
    }
    sched_t *s = mk_sched(m, 64, 64, 16, 1);
    ck_assert_int_eq(sched_start(s), 0);
    atomic_store(&g_wakes, 0);
    for (int i = 0; i < N; i++) {
        sched_params_t p;
        greedy_params(&p, prompts[i], 5 + i * 5, 20);
        p.wake_cb = wake;
        p.wake_ud = &g_wakes;
        submit(s, &got[i], &p);
    }
    /* One long request that is cancelled from this thread mid-way. */
    static int32_t longp[200];
    mk_prompt(longp, 200, 1, nv);
    out_t lo;
    sched_params_t p;
    greedy_params(&p, longp, 200, 300);
    submit(s, &lo, &p);
    for (int spin = 0; spin < 20000; spin++) {
        int all = 1;
        for (int i = 0; i < N; i++) {
            drain(&got[i]);
            all &= got[i].done;
        }
        drain(&lo);
        if (lo.n[0] > 0) sched_req_cancel(lo.r);
        if (all && lo.done) break;
        usleep(500);
    }
    for (int i = 0; i < N; i++) {
        ck_assert(got[i].done);
        ck_assert_mem_eq(got[i].toks[0], ref[i].toks[0], 20 * sizeof(int32_t));
        finish_out(&got[i]);
    }
    ck_assert(lo.done);
    ck_assert_int_eq(lo.finish[0], SCHED_FINISH_CANCELLED);
    ck_assert_int_lt(lo.n[0], 300);
    finish_out(&lo);
    ck_assert_int_gt(atomic_load(&g_wakes), N);
    sched_stop(s);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* ---- SmolLM2 ---------------------------------------------------------------------- */
static const char *g_model_path; // tu_model_path(), set in main()

/* The real model, each kernel set: alone; batched with small chunks under a
 * pool so small that requests get preempted; and again, the prompts now
 * served from the prefix cache. Same tokens and log-probabilities bit for bit. */
static void smollm2_case(const model_t *m, const tok_ids_t *ids, const char *level) {
    static out_t ref[4], got[4];
    for (int i = 0; i < 4; i++) run_alone(m, ids[i].ids, (int)ids[i].n, 8, &ref[i]);
    /* 4 blocks of 16 and no admission watermark: two requests of two blocks
     * start, and the first to grow into a third preempts the newest. */
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 4;
    c.max_batch_tokens = 32;
    c.prefill_chunk = 8;
    c.kv_watermark = 0;
    c.target_step_ms = -1;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 4; i++) {
            sched_params_t p;
            greedy_params(&p, ids[i].ids, (int)ids[i].n, 8);
            submit(s, &got[i], &p);
        }
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        int preempted = 0, cached = 0;
        for (int i = 0; i < 4; i++) {
            sched_usage_t u;
            sched_req_usage(got[i].r, &u);
            preempted += u.preemptions, cached += u.cached_tokens;
            finish_out(&got[i]);
            assert_same(&got[i], &ref[i], 8, level);
            ck_assert_str_eq(got[i].text[0], ref[i].text[0]);
        }
        if (round == 0) ck_assert_msg(preempted > 0, "%s: the small pool preempted nothing", level);
        if (round == 1) ck_assert_msg(cached > 0, "%s: no prefix-cache hit", level);
    }
    ck_assert_ptr_nonnull(strstr(ref[0].text[0], "Paris"));
    assert_pool_clean(s);
    sched_destroy(s);
}

START_TEST(test_smollm2) {
    char err[256];
    model_t *m = model_load(g_model_path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    const tok_t *tk = model_tok(m);
    /* A shared preamble of more than one block: the second round finds it cached. */
    const char *texts[4] = {"The capital of France is", "Once upon a time, in a small village by the sea,",
                            "def fibonacci(n):", "The three primary colors are"};
    const char *pre = "A short quiz for a curious reader, with answers written in plain English:\n";
    tok_ids_t ids[4];
    memset(ids, 0, sizeof ids);
    for (int i = 0; i < 4; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s%s", pre, texts[i]);
        ck_assert_int_eq(tok_encode(tk, buf, strlen(buf), 0, 0, &ids[i]), 0);
        ck_assert_int_gt(ids[i].n, 16);
        ck_assert_int_le(ids[i].n + 8, 48);
    }
    EACH_LEVEL(smollm2_case(m, ids, lc_cpu_level_name(l_)));
    for (int i = 0; i < 4; i++) tok_ids_free(&ids[i]);
    model_free(m);
}
END_TEST

int main(void) {
    /* The tiny models gain nothing from threads, and on a shared machine
     * OpenMP's spinning workers make each step slow. */
    ops_cpu_init(NULL, 1);
    Suite *s = suite_create("sched");
    TCase *tc = tcase_create("units");
    tcase_add_test(tc, test_stop_strings);
    tcase_add_test(tc, test_policy);
    tcase_add_test(tc, test_req_queue);
    suite_add_tcase(s, tc);
    TCase *te = tcase_create("engine");
    tcase_set_timeout(te, 300); // tiny models on every kernel set; generous for a busy machine
    tcase_add_test(te, test_batched_equals_alone);
    tcase_add_test(te, test_preemption_tiny_pool);
    tcase_add_test(te, test_prefix_reuse);
    tcase_add_test(te, test_random_ops);
    tcase_add_test(te, test_equal_prompts_in_order);
    tcase_add_test(te, test_short_behind_long);
    tcase_add_test(te, test_fixed_chunk_beside_decodes);
    tcase_add_test(te, test_sparse_prompt_logprobs_chunk);
    tcase_add_test(te, test_alone_takes_whole_chunk);
    tcase_add_test(te, test_choices);
    tcase_add_test(te, test_stop_conditions);
    tcase_add_test(te, test_submit_errors);
    tcase_add_test(te, test_thread);
    suite_add_tcase(s, te);
    /* A case of its own, so that CK_RUN_CASE can pick the tiny models alone
     * (tests/blas_coretypes.sh). */
    TCase *tr = tcase_create("smollm2");
    tcase_set_timeout(tr, 600); // 40 s alone here, minutes on a shared, busy machine
    if ((g_model_path = tu_model_path())) tcase_add_test(tr, test_smollm2);
    suite_add_tcase(s, tr);
    return tu_run(s);
}
