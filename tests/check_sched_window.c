/* Check suite: Gemma 3's sliding-window layers keep only their window in the
 * KV cache (kv.h layer groups). On a tiny random-weight gemma3 model whose
 * window (16) is far shorter than its prompts, the engine's outputs (tokens
 * and log-probabilities, bit for bit) equal those of the layout that keeps
 * every position (kv_keep_sliding): alone, batched under a pool small enough
 * to preempt, from the prefix cache, and in a randomized run of submissions,
 * steps and cancellations. A long request holds its global layers' blocks
 * plus a window of the sliding ones, and the pool's counts say so. Llama
 * models keep one group. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv.h"
#include "model/model.h"
#include "scheduler/sched.h"
#include "schedutil.h"
#include "tinymodel.h"

static model_t *g_gemma;

/* 6 layers, every 3rd global: 2 global and 4 sliding, so groups of 2
 * layers: one global group and two sliding ones. */
static model_t *gemma(void) {
    if (g_gemma) return g_gemma;
    const tiny_opts_t o = {.name = "check-window-gemma",
                           .n_layers = 6,
                           .n_embd = 32,
                           .n_heads = 4,
                           .n_kv_heads = 1,
                           .n_ff = 64,
                           .n_ctx = 1024,
                           .seed = 11,
                           .qk_std = 2.0f,
                           .window = 16,
                           .swa_pattern = 3};
    return g_gemma = tiny_model_load(&o);
}

static sched_t *mk(const model_t *m, int64_t blocks, int max_batch, int chunk, int prefix, int keep) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = blocks;
    c.kv_keep_sliding = keep;
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

/* One request alone (prefill chunks of 64); *peak: the most blocks in use
 * after any step. */
static void run_on(sched_t *s, const int32_t *prompt, int n, int max_tokens, out_t *o, int64_t *peak) {
    sched_params_t p;
    greedy_params(&p, prompt, n, max_tokens);
    submit(s, o, &p);
    int64_t pk = 0;
    for (;;) {
        int rc = sched_step(s);
        ck_assert_int_ge(rc, 0);
        const int64_t used = kv_pool_n_used(sched_kv(s));
        if (used > pk) pk = used;
        drain(o);
        if (o->done) break;
    }
    if (peak) *peak = pk;
    finish_out(o);
    ck_assert_int_eq(o->n[0], max_tokens);
    assert_pool_clean(s);
}

static void run_alone(const model_t *m, const int32_t *prompt, int n, int max_tokens, int keep, out_t *o,
                      int64_t *peak) {
    sched_t *s = mk(m, 256, 512, 64, 0, keep);
    run_on(s, prompt, n, max_tokens, o, peak);
    sched_destroy(s);
}

#define NP 8
#define MAXP 480
#define MAXT 24
static int32_t g_prompts[NP][MAXP];
static int g_lens[NP];
static out_t g_ref[NP]; // keep-every-position references, alone

/* Prompts of 20 to 470 tokens; the last four share their first 200. */
static void make_refs(void) {
    static int done;
    if (done) return;
    const model_t *m = gemma();
    const int nv = model_hparams(m)->n_vocab;
    for (int i = 0; i < NP; i++) {
        g_lens[i] = 20 + i * 64;
        mk_prompt(g_prompts[i], g_lens[i], 300 + (unsigned)i, nv);
        if (i >= 4) memcpy(g_prompts[i], g_prompts[3], 200 * sizeof(int32_t));
        run_alone(m, g_prompts[i], g_lens[i], MAXT, 1, &g_ref[i], NULL);
    }
    done = 1;
}

/* The layout: gemma's layers in groups (global first), llama's in one. */
START_TEST(test_layout) {
    sched_t *s = mk(gemma(), 64, 128, 64, 0, 0);
    const kv_config_t *c = kv_pool_config(sched_kv(s));
    ck_assert_int_eq(kv_config_groups(c), 3);
    ck_assert_int_eq(c->n_full_groups, 1);
    ck_assert_int_eq(c->swa_keep, 16 - 1 + (ATTN_BK - 1));
    ck_assert_int_eq(kv_pool_n_blocks(sched_kv(s)), 64 * 3); // the memory of 64 blocks of every layer
    sched_destroy(s);
    s = mk(gemma(), 64, 128, 64, 0, 1);
    ck_assert_int_eq(kv_config_groups(kv_pool_config(sched_kv(s))), 1);
    ck_assert_int_eq(kv_pool_n_blocks(sched_kv(s)), 64);
    sched_destroy(s);
    const tiny_opts_t lo = {.name = "check-window-llama",
                            .n_layers = 2,
                            .n_embd = 32,
                            .n_heads = 4,
                            .n_kv_heads = 2,
                            .n_ff = 64,
                            .n_ctx = 512,
                            .seed = 7,
                            .qk_std = 2.0f};
    model_t *llama = tiny_model_load(&lo);
    s = mk(llama, 64, 128, 64, 0, 0);
    ck_assert_int_eq(kv_config_groups(kv_pool_config(sched_kv(s))), 1);
    ck_assert_int_eq(kv_pool_n_blocks(sched_kv(s)), 64);
    sched_destroy(s);
    model_free(llama);
}
END_TEST

/* Alone: the same bits as keeping every position, in far less memory. */
START_TEST(test_alone) {
    make_refs();
    const model_t *m = gemma();
    for (int i = 0; i < NP; i++) {
        out_t o;
        int64_t peak_keep, peak;
        run_alone(m, g_prompts[i], g_lens[i], MAXT, 0, &o, &peak);
        assert_same(&o, &g_ref[i], MAXT, "window only vs every position");
        out_t k;
        run_alone(m, g_prompts[i], g_lens[i], MAXT, 1, &k, &peak_keep);
        /* Keeping everything: one block of all 6 layers per 16 positions.
         * Windows: one block of the 2 global layers per 16 positions, and
         * for each sliding group at most (swa_keep + chunk) / 16 + 2. */
        const int64_t n = g_lens[i] + MAXT, blocks = (n + 15) / 16;
        const int64_t win = (16 - 1 + ATTN_BK - 1 + 64 + 15) / 16 + 1;
        ck_assert_int_eq(peak_keep, blocks);
        ck_assert_int_le(peak, blocks + 2 * (win < blocks ? win : blocks));
        if (g_lens[i] > 300) // a third of the layers' blocks plus the windows: well under the whole
            ck_assert_int_lt(peak * 2, peak_keep * 6 * 2 / 3);
    }
}
END_TEST

/* Context parallelism on a model with sliding-window layers: with the
 * windows-only layout and with every position kept, two ranks give one
 * rank's greedy tokens (not its bits: the ring merges partials in another
 * order), and the windows-only layout still releases the sliding layers'
 * blocks behind their windows. */
START_TEST(test_context_parallel) {
    make_refs();
    const model_t *m = gemma();
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 256;
    c.max_batch_tokens = 512;
    c.prefill_chunk = 64;
    c.enable_prefix_cache = 0;
    c.target_step_ms = -1;
    c.context_ranks = 2;
    c.context_min_tokens = 32;
    char err[256] = "";
    int64_t peak[2] = {0, 0}; // layer-blocks: blocks times the layers a block holds
    for (int keep = 0; keep < 2; keep++) {
        c.kv_keep_sliding = keep;
        sched_t *s = sched_create(m, &c, err, sizeof err);
        ck_assert_msg(s != NULL, "%s", err);
        const int per = model_hparams(m)->n_layers / kv_config_groups(kv_pool_config(sched_kv(s)));
        for (int i = 1; i < NP; i += 2) {
            out_t o;
            int64_t pk;
            run_on(s, g_prompts[i], g_lens[i], MAXT, &o, &pk);
            ck_assert_mem_eq(o.toks[0], g_ref[i].toks[0], MAXT * sizeof(int32_t));
            if (pk * per > peak[keep]) peak[keep] = pk * per;
        }
        sched_destroy(s);
    }
    ck_assert_msg(peak[0] < peak[1], "peak KV layer-blocks: windows only %lld, every position %lld", (long long)peak[0],
                  (long long)peak[1]);
}
END_TEST

/* Batched under a pool small enough to preempt, with the prefix cache (a
 * second wave of the same prompts): the same bits. */
START_TEST(test_batched_preempted_prefix) {
    make_refs();
    const model_t *m = gemma();
    sched_t *s = mk(m, 20, 96, 32, 1, 0); // 60 blocks of 2 layers; a 494-token request needs <= 31 + 2 * 8
    static out_t got[2][NP];
    for (int w = 0; w < 2; w++) {
        for (int i = 0; i < NP; i++) {
            sched_params_t p;
            greedy_params(&p, g_prompts[i], g_lens[i], MAXT);
            submit(s, &got[w][i], &p);
        }
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        for (int i = 0; i < NP; i++) {
            finish_out(&got[w][i]);
            assert_same(&got[w][i], &g_ref[i], MAXT, w ? "second wave vs every position" : "batched vs every position");
        }
        assert_pool_clean(s);
    }
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_gt(mt.preemptions_total, 0);
    ck_assert_uint_gt(mt.prefix_hit_tokens, 0);
    sched_destroy(s);
}
END_TEST

/* Random submissions, steps and cancellations under a tiny pool with the
 * prefix cache: whatever comes out is the reference's prefix, bit for bit,
 * and the pool's counts add up after every step. */
START_TEST(test_random_ops) {
    make_refs();
    const model_t *m = gemma();
    sched_t *s = mk(m, 24, 80, 16, 1, 0);
    enum { LIVE = 6 };
    static out_t live[LIVE];
    int which[LIVE], used[LIVE] = {0};
    unsigned seed = 777;
    int finished = 0, cancelled = 0;
    for (int op = 0; op < 1500; op++) {
        int what = rand_r(&seed) % 10, i = rand_r(&seed) % LIVE;
        if (what < 2 && !used[i]) {
            which[i] = rand_r(&seed) % NP;
            sched_params_t p;
            greedy_params(&p, g_prompts[which[i]], g_lens[which[i]], 1 + rand_r(&seed) % MAXT);
            submit(s, &live[i], &p);
            used[i] = 1;
        } else if (what == 2 && used[i] && rand_r(&seed) % 4 == 0) {
            sched_req_cancel(live[i].r);
        } else {
            ck_assert_int_ge(sched_step(s), 0);
            kv_pool_t *kv = sched_kv(s);
            ck_assert_int_eq(kv_pool_n_used(kv) + kv_pool_n_available(kv), kv_pool_n_blocks(kv));
        }
        for (int j = 0; j < LIVE; j++) {
            if (!used[j]) continue;
            drain(&live[j]);
            ck_assert_mem_eq(live[j].toks[0], g_ref[which[j]].toks[0], (size_t)live[j].n[0] * sizeof(int32_t));
            ck_assert_mem_eq(live[j].lp[0], g_ref[which[j]].lp[0], (size_t)live[j].n[0] * sizeof(float));
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
    ck_assert_int_gt(finished, 10);
    ck_assert_int_gt(cancelled, 0);
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_gt(mt.preemptions_total, 0);
    ck_assert_uint_gt(mt.prefix_hit_tokens, 0);
    assert_pool_clean(s);
    sched_destroy(s);
}
END_TEST

/* Final logit soft-capping: a row's logits are capped once, whether its
 * request runs alone or with others (the LM head's multi-sequence path). */
START_TEST(test_softcap_batched) {
    const tiny_opts_t so = {.name = "check-window-softcap",
                            .n_layers = 2,
                            .n_embd = 32,
                            .n_heads = 4,
                            .n_kv_heads = 1,
                            .n_ff = 64,
                            .n_ctx = 512,
                            .seed = 5,
                            .qk_std = 2.0f,
                            .window = 16,
                            .swa_pattern = 2,
                            .final_softcap = 3.0f};
    model_t *m = tiny_model_load(&so);
    ck_assert_float_eq(model_hparams(m)->final_softcap, 3.0f);
    const int nv = model_hparams(m)->n_vocab;
    enum { N = 3 };
    static int32_t prompts[N][64];
    static out_t ref[N], got[N];
    for (int i = 0; i < N; i++) {
        mk_prompt(prompts[i], 20 + 7 * i, 40 + (unsigned)i, nv);
        run_alone(m, prompts[i], 20 + 7 * i, 8, 0, &ref[i], NULL);
    }
    sched_t *s = mk(m, 64, 256, 64, 0, 0);
    for (int i = 0; i < N; i++) {
        sched_params_t p;
        greedy_params(&p, prompts[i], 20 + 7 * i, 8);
        submit(s, &got[i], &p);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int i = 0; i < N; i++) {
        finish_out(&got[i]);
        assert_same(&got[i], &ref[i], 8, "soft-capped, batched vs alone");
    }
    sched_destroy(s);
    model_free(m);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sched_window");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600); // a busy 2-core machine
    tcase_add_test(tc, test_layout);
    tcase_add_test(tc, test_alone);
    tcase_add_test(tc, test_batched_preempted_prefix);
    tcase_add_test(tc, test_random_ops);
    tcase_add_test(tc, test_softcap_batched);
    tcase_add_test(tc, test_context_parallel);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK); // the references are shared between tests
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    model_free(g_gemma);
    return failed ? 1 : 0;
}
