/* The CUDA executor through the scheduler, part of the GPU Check suite
 * check_cuda: requests alone and batched bitwise (with and without CUDA
 * graphs, greedy and sampled), each sparse method's requests beside dense
 * ones (Quest, TidalDecode, AnchorAttention, FlexPrefill; Quest's plans
 * growing between steps), the tiny Gemma 3's windows and sparse methods,
 * and a lost device failing its requests with a clear status. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "attn/attn.h"
#include "common/status.h"
#include "model/exec.h"
#include "model/gguf.h"
#include "model/model.h"
#include "ops/cuda/cuda_ops.h"
#include "scheduler/sched.h"

void cuda_sched_add(TCase *tc);
void cuda_device_lost_add(TCase *tc);
/* check_cuda.c */
model_t *check_cuda_tiny(uint32_t type, int n_heads, int n_kv_heads, int n_embd);
model_t *check_cuda_tiny_gemma(void);
model_t *check_cuda_tiny_gemma6(void);
void *check_cuda_dev(const void *host, size_t bytes);

typedef struct {
    sched_req_t *r;
    int32_t toks[64];
    float lp[64];
    int n, done;
    sched_finish_t finish;
    int status;
} out_t;

static void drain(out_t *o) {
    sched_event_t ev[32];
    int n;
    while ((n = sched_req_poll(o->r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            if (ev[i].kind == SCHED_EV_TOKEN && o->n < 64) {
                o->lp[o->n] = ev[i].has_lp ? ev[i].lp.logprob : NAN;
                o->toks[o->n++] = ev[i].token;
            } else if (ev[i].kind == SCHED_EV_FINISH) {
                o->finish = ev[i].finish;
                o->status = ev[i].status;
            } else if (ev[i].kind == SCHED_EV_DONE) {
                o->done = 1;
            }
            sched_event_clear(&ev[i]);
        }
}

static float g_temperature;    // the requests' temperature (0: greedy)
static int g_quest;            // 1: the requests decode with Quest (a 128-token budget)
static int g_flex;             // 1: the requests prefill with FlexPrefill (min_budget 64, gamma 0.5)
static int g_no_prefix;        // 1: gpu_sched without the prefix cache
static int g_tidal;            // 1: the requests decode with TidalDecode (a 96-token budget)
static int g_tidal_sel = 1;    // its selection layer (the tiny model's 3 layers: 0 dense, 1 selects, 2 attends)
static int g_tidal_resel = -1; // its reselection layer (-1: the engine's)
static int g_anchor;           // 1: the requests prefill with AnchorAttention (theta g_theta, windows of 128 and 256)
static float g_theta = 0.5f;   // the tiny model's scores lie close: at 3 every stripe is kept (CPU and GPU alike)
static float g_probe = 0.0f;   // AnchorAttention's probe; < 0: the engine's (it fires on most tiny-model heads)

static void submit(sched_t *s, out_t *o, const int32_t *prompt, int n, int max_tokens) {
    memset(o, 0, sizeof *o);
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
    p.sampling.temperature = g_temperature;
    p.sampling.seed = (uint64_t)n * 7919u + 1;
    sched_attn_spec_default(&p.attn);
    if (g_quest) {
        p.attn.decode = ATTN_DECODE_QUEST;
        p.attn.decode_budget = 128;
    }
    if (g_tidal) {
        p.attn.decode = ATTN_DECODE_TIDAL;
        p.attn.decode_budget = 96;
    }
    if (g_anchor) {
        p.attn.prefill = ATTN_PREFILL_ANCHOR;
        p.attn.theta = g_theta;
        p.attn.anchor_probe = g_probe;
    }
    if (g_flex) {
        p.attn.prefill = ATTN_PREFILL_FLEX;
        p.attn.min_budget = 64;
        p.attn.gamma = 0.5f;
    }
    int st;
    o->r = sched_req_create(&p, &st);
    ck_assert_ptr_nonnull(o->r);
    ck_assert_int_eq(sched_submit(s, o->r), 0);
}

static int g_keep_sliding; // 1: the sliding layers keep every position (one layer group)
static int g_no_graphs;    // 1: sparse_alone_vs_batched_on's engine runs decode steps without CUDA graphs
static int
    g_report; // 1: sparse_alone_vs_batched_on reports where batched and alone differ (g_differ) instead of failing
static int g_differ;    // requests that differed (g_report)
static int g_context;   // > 1: gpu_sched with this many context-parallel ranks, sharding from 128 tokens
static int g_kv_blocks; // > 0: gpu_sched's pool, in pages of 64 (else 256)

static sched_t *gpu_sched(const model_t *m, int no_graphs) {
    sched_config_t c;
    sched_config_default(&c);
    snprintf(c.device, sizeof c.device, "cuda:0");
    c.gpu_no_graphs = no_graphs;
    c.kv_blocks = g_kv_blocks > 0 ? g_kv_blocks : 256;
    c.max_batch_tokens = 512;
    c.prefill_chunk = 128;
    c.target_step_ms = -1;
    c.enable_prefix_cache = !g_no_prefix;
    c.kv_keep_sliding = g_keep_sliding;
    if (g_context > 1) {
        c.context_ranks = g_context;
        c.context_min_tokens = 128;
    }
    if (g_tidal) { // TidalDecode's layer schedule
        c.attn_default.dense_layers = 0;
        c.attn_default.tidal_select_layer = g_tidal_sel;
        c.attn_default.tidal_reselect_layer = g_tidal_resel;
    }
    if (g_anchor) { // AnchorAttention's windows short enough for the test's prompts to have stripes
        c.attn_default.anchor_init = 128;
        c.attn_default.anchor_local = 256;
        c.attn_default.anchor_lookback = 128;
    }
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* The R requests (prompts[r], lens[r] tokens; n tokens each) on s, each
 * alone, then all at once: alone[r] and batched[r] (done, n tokens each). */
static void alone_then_together(sched_t *s, const int32_t *const *prompts, const int *lens, int R, int n, out_t *alone,
                                out_t *batched) {
    for (int r = 0; r < R; r++) {
        submit(s, &alone[r], prompts[r], lens[r], n);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        drain(&alone[r]);
        ck_assert(alone[r].done);
        ck_assert_int_eq(alone[r].n, n);
    }
    for (int r = 0; r < R; r++) submit(s, &batched[r], prompts[r], lens[r], n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int r = 0; r < R; r++) {
        drain(&batched[r]);
        ck_assert(batched[r].done);
    }
}

/* a and b the same tokens and log-probabilities, bit for bit. */
static int same_out(const out_t *a, const out_t *b) {
    return memcmp(a->toks, b->toks, sizeof a->toks) == 0 && memcmp(a->lp, b->lp, sizeof a->lp) == 0;
}

/* The tiny Gemma 3 through the scheduler on the GPU: requests alone and
 * batched give the same bits; the prefill density counts the sliding
 * layers' windows (2 of 3 layers at 96 positions: 0.6913 over a 300-token
 * prompt). FlexPrefill and AnchorAttention run on the global layer (their
 * density at most dense's, above the windows' share), and so does Quest
 * (its decode density below dense's); each sparse request beside a dense
 * one gives its bits alone. */
START_TEST(test_sched_gemma) {
    model_t *m = check_cuda_tiny_gemma();
    const int V = model_hparams(m)->n_vocab, R = 3, n = 12;
    static int32_t prompts[3][300];
    const int lens[3] = {300, 97, 200};
    for (int r = 0; r < R; r++)
        for (int i = 0; i < lens[r]; i++) prompts[r][i] = (int32_t)((7919u * (i + 3) + 31u * r) % (unsigned)V);
    const int32_t *pp[3] = {prompts[0], prompts[1], prompts[2]};
    sched_t *s = gpu_sched(m, 0);
    out_t alone[3], together[3];
    alone_then_together(s, pp, lens, R, n, alone, together);
    for (int r = 0; r < R; r++)
        ck_assert_msg(same_out(&alone[r], &together[r]), "Gemma request %d: batched differs", r);
    sched_destroy(s);
    /* the store that keeps every position of the sliding layers: the same bits */
    g_keep_sliding = 1;
    s = gpu_sched(m, 0);
    g_keep_sliding = 0;
    out_t kept[3];
    for (int r = 0; r < R; r++) {
        submit(s, &kept[r], prompts[r], lens[r], n);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        drain(&kept[r]);
        ck_assert(kept[r].done);
        ck_assert_msg(same_out(&alone[r], &kept[r]), "Gemma request %d: the windowed store differs from keeping all",
                      r);
    }
    for (int r = 0; r < R; r++)
        sched_req_release(alone[r].r), sched_req_release(together[r].r), sched_req_release(kept[r].r);
    sched_destroy(s);
    g_no_prefix = 1; // each request computes its whole prompt (the densities below)
    g_anchor = 1;    // (AnchorAttention's short windows, for the request at the end)
    s = gpu_sched(m, 0);
    g_no_prefix = g_anchor = 0;
    out_t dense, flex, quest;
    submit(s, &dense, prompts[0], 300, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    g_flex = 1;
    submit(s, &flex, prompts[0], 300, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    g_flex = 0;
    out_t quest2, qbeside;
    g_quest = 1;
    submit(s, &quest, prompts[0], 300, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    submit(s, &quest2, prompts[0], 300, n);
    g_quest = 0;
    submit(s, &qbeside, prompts[1], 97, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    drain(&dense), drain(&flex), drain(&quest), drain(&quest2), drain(&qbeside);
    ck_assert(dense.done && flex.done && quest.done && quest2.done && qbeside.done);
    ck_assert_msg(same_out(&quest, &quest2), "Gemma: a Quest request beside a dense one differs from it alone");
    sched_usage_t ud, uf, uq;
    sched_req_usage(dense.r, &ud);
    sched_req_usage(flex.r, &uf);
    sched_req_usage(quest.r, &uq);
    /* Quest keeps 2 of the global layer's 5 pages; the sliding layers attend their windows */
    fprintf(stderr, "check_cuda: tiny Gemma 3 on the GPU: decode density %.4f dense, %.4f Quest\n", ud.decode_density,
            uq.decode_density);
    ck_assert_int_eq(uq.decode_method, ATTN_DECODE_QUEST);
    ck_assert_msg(uq.decode_density < ud.decode_density - 0.05 && uq.decode_density > 0.2,
                  "Quest decode density %g (dense %g)", uq.decode_density, ud.decode_density);
    const double want = (45150.0 + 2 * (4656.0 + 96.0 * 204)) / (3 * 45150.0);
    fprintf(
        stderr,
        "check_cuda: tiny Gemma 3 on the GPU: prefill density %.4f dense, %.4f FlexPrefill (dense by count: %.4f)\n",
        ud.prefill_density, uf.prefill_density, want);
    ck_assert_msg(fabs(ud.prefill_density - want) < 1e-6, "dense prefill density %g, want %g", ud.prefill_density,
                  want);
    const double windows = 2 * (4656.0 + 96.0 * 204) / (3 * 45150.0); // the sliding layers' share
    ck_assert_int_eq(uf.prefill_method, ATTN_PREFILL_FLEX);
    ck_assert_msg(uf.prefill_density <= want + 1e-9 && uf.prefill_density > windows,
                  "FlexPrefill prefill density %g (dense %g, the windows %g)", uf.prefill_density, want, windows);
    sched_req_release(dense.r), sched_req_release(flex.r), sched_req_release(quest.r);
    sched_req_release(quest2.r), sched_req_release(qbeside.r);
    /* AnchorAttention on the global layer of a 1,000-token prompt (windows of
     * 128 and 256, a lookback of 128): a density above the windows' share
     * and below dense's; alone and beside a dense request, bitwise */
    static int32_t longp[1000];
    for (int i = 0; i < 1000; i++) longp[i] = (int32_t)((7919u * (i + 5)) % (unsigned)V);
    out_t ldense, anc, anc2, beside;
    submit(s, &ldense, longp, 1000, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    g_anchor = 1;
    submit(s, &anc, longp, 1000, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    submit(s, &anc2, longp, 1000, n);
    g_anchor = 0;
    submit(s, &beside, prompts[2], 200, n);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    drain(&ldense), drain(&anc), drain(&anc2), drain(&beside);
    ck_assert(ldense.done && anc.done && anc2.done && beside.done);
    ck_assert_msg(same_out(&anc, &anc2), "Gemma: an AnchorAttention request beside a dense one differs from it alone");
    sched_usage_t ul, ua;
    sched_req_usage(ldense.r, &ul);
    sched_req_usage(anc.r, &ua);
    const double lwin = 2 * (4656.0 + 96.0 * 904) / (3 * 500500.0); // the sliding layers' share at 1,000 tokens
    fprintf(stderr,
            "check_cuda: tiny Gemma 3, 1,000 tokens: prefill density %.4f dense, %.4f AnchorAttention "
            "(the windows %.4f)\n",
            ul.prefill_density, ua.prefill_density, lwin);
    ck_assert_int_eq(ua.prefill_method, ATTN_PREFILL_ANCHOR);
    ck_assert_msg(ua.prefill_density > lwin && ua.prefill_density < ul.prefill_density - 1e-3,
                  "AnchorAttention prefill density %g (dense %g, the windows %g)", ua.prefill_density,
                  ul.prefill_density, lwin);
    sched_req_release(ldense.r), sched_req_release(anc.r), sched_req_release(anc2.r), sched_req_release(beside.r);
    sched_destroy(s);
    model_free(m); // (context parallelism on Gemma 3: test_sched_tidal_gemma, check_cuda_cp.c)
}
END_TEST

/* Greedy requests of different lengths, each alone and then all at once
 * (prompts chunked beside other requests' decodes), then all at once again
 * without CUDA graphs (decode steps alone run as graphs padded to a bucket):
 * the same tokens and log-probabilities, bit for bit. */
START_TEST(test_sched_batch_invariance) {
    g_temperature = _i ? 0.8f : 0.0f; // 0.8: drawn on the GPU
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab, R = 6;
    static int32_t prompts[6][400];
    const int lens[6] = {7, 390, 64, 129, 1, 250};
    for (int r = 0; r < R; r++)
        for (int i = 0; i < lens[r]; i++) prompts[r][i] = (int32_t)(((r + 1) * 7919u * (i + 3)) % (unsigned)V);
    sched_t *s = gpu_sched(m, 0);
    out_t alone[6], batched[6], plain[6];
    const int32_t *pp[6];
    for (int r = 0; r < R; r++) pp[r] = prompts[r];
    alone_then_together(s, pp, lens, R, 40, alone, batched);
    for (int r = 0; r < R; r++) {
        ck_assert_msg(same_out(&alone[r], &batched[r]), "GPU: request %d batched differs from it alone", r);
        sched_req_release(batched[r].r);
    }
    sched_destroy(s);
    s = gpu_sched(m, 1);
    for (int r = 0; r < R; r++) submit(s, &plain[r], prompts[r], lens[r], 40);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int r = 0; r < R; r++) {
        drain(&plain[r]);
        ck_assert(plain[r].done);
        ck_assert_msg(same_out(&alone[r], &plain[r]), "GPU: request %d without graphs differs from it with graphs", r);
        sched_req_release(alone[r].r);
        sched_req_release(plain[r].r);
    }
    sched_destroy(s);
    model_free(m);
}
END_TEST

/* Four greedy requests under a sparse method (*flag set while each is
 * submitted: g_quest, g_tidal, g_anchor or g_flex), each alone and then all at once, each beside
 * a dense request: the same tokens and log-probabilities bit for bit. The
 * prompts' tokens follow salt; mt gets the scheduler's metrics, use (may be
 * NULL) each sparse request's usage alone. */
static void sparse_alone_vs_batched_on(model_t *m, int *flag, const int lens[4], int salt, int max_tokens,
                                       const char *what, sched_metrics_t *mt, sched_usage_t use[4]) {
    g_temperature = 0;
    const int V = model_hparams(m)->n_vocab, R = 4;
    static int32_t prompts[4][1600];
    for (int r = 0; r < R; r++) {
        ck_assert_int_le(lens[r], 1600);
        for (int i = 0; i < lens[r]; i++)
            prompts[r][i] = (int32_t)(((r + salt) * 7919u * (i + salt + 2)) % (unsigned)V);
    }
    *flag = 1; // before the scheduler: g_tidal sets its layer schedule
    sched_t *s = gpu_sched(m, g_no_graphs);
    out_t alone[4], batched[4], dense[4];
    for (int r = 0; r < R; r++) {
        submit(s, &alone[r], prompts[r], lens[r], max_tokens);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        drain(&alone[r]);
        ck_assert(alone[r].done);
        ck_assert_int_eq(alone[r].n, max_tokens);
        if (use) sched_req_usage(alone[r].r, &use[r]);
    }
    for (int r = 0; r < R; r++) {
        *flag = 1;
        submit(s, &batched[r], prompts[r], lens[r], max_tokens);
        *flag = 0;
        submit(s, &dense[r], prompts[(r + 1) % R], lens[(r + 1) % R], max_tokens * 3 / 4);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int r = 0; r < R; r++) {
        drain(&batched[r]);
        drain(&dense[r]);
        ck_assert(batched[r].done && dense[r].done);
        int at = -1; // the first token whose id or log-probability differs
        for (int i = 0; i < max_tokens && at < 0; i++)
            if (alone[r].toks[i] != batched[r].toks[i] || memcmp(&alone[r].lp[i], &batched[r].lp[i], sizeof(float)))
                at = i;
        if (at >= 0)
            fprintf(stderr,
                    "check_cuda: %s: request %d (%d tokens) batched differs from it alone at token %d: %d %.9g vs %d "
                    "%.9g\n",
                    what, r, lens[r], at, alone[r].toks[at], alone[r].lp[at], batched[r].toks[at], batched[r].lp[at]);
        g_differ += at >= 0;
        ck_assert_msg(at < 0 || g_report, "%s: request %d batched differs from it alone", what, r);
        sched_req_release(alone[r].r), sched_req_release(batched[r].r), sched_req_release(dense[r].r);
    }
    sched_metrics(s, mt);
    *flag = 0;
    sched_destroy(s);
    model_free(m);
}

/* The same on the tiny Llama model (4 heads on 2 KV heads of 64). */
static void sparse_alone_vs_batched(int *flag, const int lens[4], int salt, int max_tokens, const char *what,
                                    sched_metrics_t *mt, sched_usage_t use[4]) {
    sparse_alone_vs_batched_on(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), flag, lens, salt, max_tokens, what, mt, use);
}

/* Quest decode on the GPU through the scheduler (pages of 64, a 2-page
 * budget, the last of the tiny model's 3 layers sparse): alone and batched
 * bitwise; the density reported is below 1. */
START_TEST(test_sched_quest) {
    const int lens[4] = {390, 250, 129, 7};
    sched_metrics_t mt;
    sparse_alone_vs_batched(&g_quest, lens, 3, 40, "GPU Quest", &mt, NULL);
    const double dd = mt.decode_density_count ? mt.decode_density_sum / (double)mt.decode_density_count : 1.0;
    fprintf(stderr, "check_cuda: mean decode density (Quest and dense requests) %.3f\n", dd);
    ck_assert_msg(dd < 0.999, "Quest decode reported density %g", dd);
}
END_TEST

/* Quest's plans are sized by use (exec_cuda_plan.cu): twelve Quest requests
 * of 1 to 500 prompt tokens, each alone (one row: the smallest plans), then
 * all at once (the rows and their pages outgrow the plans step by step, and
 * the plans are created again larger between steps): the same tokens and
 * log-probabilities bit for bit. */
START_TEST(test_sched_quest_grow) {
    g_temperature = 0;
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab, R = 12;
    static int32_t prompts[12][500];
    int lens[12];
    for (int r = 0; r < R; r++) {
        lens[r] = 1 + r * 45;
        for (int i = 0; i < lens[r]; i++) prompts[r][i] = (int32_t)(((r + 5) * 7919u * (i + 7)) % (unsigned)V);
    }
    g_quest = 1;
    sched_t *s = gpu_sched(m, 0);
    static out_t alone[12], batched[12];
    const int32_t *pp[12];
    for (int r = 0; r < R; r++) pp[r] = prompts[r];
    alone_then_together(s, pp, lens, R, 24, alone, batched);
    for (int r = 0; r < R; r++) {
        ck_assert_msg(same_out(&alone[r], &batched[r]),
                      "GPU Quest: request %d batched with 11 others differs from it alone", r);
        sched_req_release(alone[r].r), sched_req_release(batched[r].r);
    }
    g_quest = 0;
    sched_destroy(s);
    model_free(m);
}
END_TEST

/* TidalDecode on the GPU through the scheduler (a 96-position budget, layer
 * 1 selects, layer 2 attends): alone and batched bitwise; the density
 * reported is below 1. */
START_TEST(test_sched_tidal) {
    const int lens[4] = {390, 250, 129, 7};
    sched_metrics_t mt;
    sparse_alone_vs_batched(&g_tidal, lens, 4, 40, "GPU TidalDecode", &mt, NULL);
    const double dd = mt.decode_density_count ? mt.decode_density_sum / (double)mt.decode_density_count : 1.0;
    fprintf(stderr, "check_cuda: mean decode density (TidalDecode and dense requests) %.3f\n", dd);
    ck_assert_msg(dd < 0.999, "TidalDecode reported density %g", dd);
}
END_TEST

/* TidalDecode on a six-layer tiny Gemma 3 (2 heads of 256 on one KV head;
 * layers 1, 3 and 5 global, the others sliding over 96 positions): layer 0
 * is the selection layer but slides, so global layer 1 selects (as on the
 * CPU), layer 3 attends the selection, layer 5 selects again; alone and
 * batched bitwise, and each long request's density is what those layers
 * computed, below dense's. */
START_TEST(test_sched_tidal_gemma) {
    model_t *m = check_cuda_tiny_gemma6();
    for (int l = 0; l < 6; l++) ck_assert_int_eq(model_hparams(m)->layer[l].window, l % 2 ? 0 : 96);
    const int lens[4] = {390, 250, 129, 7}, n = 40;
    sched_metrics_t mt;
    sched_usage_t use[4];
    g_tidal_sel = 0, g_tidal_resel = 5;
    /* alone against batched in both KV layouts, with and without CUDA
     * graphs, without the prefix cache, and the same model decoding dense:
     * each reports the first token that differs, then one assertion. (This
     * model has one sliding layer group: its windowed plans must read that
     * group's table, not the global one.) */
    static const struct {
        int keep, no_graphs, no_prefix, tidal, context; // tidal 2: FlexPrefill and Quest
        const char *what;
    } v[] = {{1, 0, 0, 1, 1, "GPU TidalDecode on Gemma 3 (every position)"},
             {1, 1, 0, 1, 1, "GPU TidalDecode on Gemma 3 (every position, no graphs)"},
             {0, 1, 0, 1, 1, "GPU TidalDecode on Gemma 3 (windows, no graphs)"},
             {0, 0, 1, 1, 1, "GPU TidalDecode on Gemma 3 (windows, no prefix cache)"},
             {0, 0, 0, 0, 1, "Gemma 3 (6 layers, d 256) decoding dense (windows)"},
             {0, 0, 0, 0, 2, "Gemma 3 dense, 2 context-parallel ranks (windows)"},
             {0, 0, 0, 1, 3, "GPU TidalDecode on Gemma 3, 3 context-parallel ranks (windows)"},
             {0, 0, 0, 2, 4, "GPU FlexPrefill + Quest on Gemma 3, 4 context-parallel ranks (windows)"},
             {1, 0, 0, 1, 2, "GPU TidalDecode on Gemma 3, 2 context-parallel ranks (every position)"},
             {0, 0, 0, 1, 1, "GPU TidalDecode on Gemma 3"}};
    const size_t nv = sizeof v / sizeof v[0];
    int differ = 0, none = 0;
    g_report = 1;
    for (size_t k = 0; k < nv; k++) {
        g_keep_sliding = v[k].keep;
        g_no_graphs = v[k].no_graphs;
        g_no_prefix = v[k].no_prefix;
        g_context = v[k].context;
        g_flex = v[k].tidal == 2; // (2: every request FlexPrefill, the sparse ones Quest)
        g_differ = 0;
        sparse_alone_vs_batched_on(k + 1 == nv ? m : check_cuda_tiny_gemma6(),
                                   v[k].tidal == 2 ? &g_quest
                                   : v[k].tidal    ? &g_tidal
                                                   : &none,
                                   lens, 8, n, v[k].what, &mt, k + 1 == nv ? use : NULL);
        differ += g_differ;
        if (v[k].context > 1) { // the sharded path ran
            fprintf(stderr, "check_cuda: %s: %llu sharded rows, ring steps on the last rank %llu\n", v[k].what,
                    (unsigned long long)mt.cp.sharded_rows, (unsigned long long)mt.cp.ring_steps[v[k].context - 1]);
            ck_assert_msg(mt.cp.ranks == v[k].context && mt.cp.sharded_rows > 0 &&
                              mt.cp.ring_steps[v[k].context - 1] > 0,
                          "%s: the sharded path did not run", v[k].what);
        }
    }
    g_keep_sliding = g_no_graphs = g_no_prefix = g_report = g_differ = g_context = g_flex = 0;
    ck_assert_msg(!differ, "Gemma 3 (6 layers): %d requests differ batched from alone (listed above)", differ);
    g_tidal_sel = 1, g_tidal_resel = -1;
    for (int r = 0; r < 3; r++) { // (the 7-token prompt stays within the budget)
        /* over the steps' lengths L: dense 3 L + 3 min(L, 96); TidalDecode 2 L + 97 + 3 min(L, 96) */
        double dense = 0, tidal = 0;
        for (int i = 0; i < n - 1; i++) {
            const double L = lens[r] + 1 + i, w = L < 96 ? L : 96;
            dense += (3 * L + 3 * w) / (6 * L);
            tidal += (2 * L + (L > 96 ? 97 : L) + 3 * w) / (6 * L);
        }
        dense /= n - 1, tidal /= n - 1;
        fprintf(stderr,
                "check_cuda: Gemma 3 TidalDecode request %d (%d tokens): decode density %.4f (dense %.4f, "
                "by count %.4f)\n",
                r, lens[r], use[r].decode_density, dense, tidal);
        ck_assert_int_eq(use[r].decode_method, ATTN_DECODE_TIDAL);
        ck_assert_msg(use[r].decode_density < dense - 0.02 && fabs(use[r].decode_density - tidal) < 0.02,
                      "TidalDecode decode density %g (dense %g, by count %g)", use[r].decode_density, dense, tidal);
    }
}
END_TEST

/* AnchorAttention on the GPU through the scheduler (chunks of 128, an
 * initial window of 128, groups of 256): at theta 3 alone and batched
 * bitwise, each long prompt at a density strictly between 0 and 1 (the
 * anchor kernels ran and dropped keys); at theta = INFINITY (every key, by
 * the anchor kernels' own passes) the first token and its log-probability as
 * a dense prefill's, within bf16 rounding. With the engine's probe,
 * alone and batched bitwise again, each request at least as dense as
 * without it. */
START_TEST(test_sched_anchor) {
    const int lens[4] = {1500, 700, 300, 7};
    sched_metrics_t mt;
    sched_usage_t use[4], probed[4];
    sparse_alone_vs_batched(&g_anchor, lens, 6, 20, "GPU AnchorAttention", &mt, use);
    for (int r = 0; r < 4; r++) {
        fprintf(stderr, "check_cuda: AnchorAttention request %d (%d tokens): prefill density %.3f\n", r, lens[r],
                use[r].prefill_density);
        ck_assert_int_eq(use[r].prefill_method, ATTN_PREFILL_ANCHOR);
        if (lens[r] >= 700) // past the windows of its chunks: stripes chosen
            ck_assert_msg(use[r].prefill_density > 0.02 && use[r].prefill_density < 0.98,
                          "request %d: AnchorAttention density %g", r, use[r].prefill_density);
    }
    g_probe = -1.0f;
    sparse_alone_vs_batched(&g_anchor, lens, 6, 20, "GPU AnchorAttention with the probe", &mt, probed);
    g_probe = 0.0f;
    for (int r = 0; r < 4; r++) {
        fprintf(stderr, "check_cuda: AnchorAttention request %d with the probe: prefill density %.3f\n", r,
                probed[r].prefill_density);
        ck_assert_msg(probed[r].prefill_density >= use[r].prefill_density - 1e-9,
                      "request %d: density %g with the probe, %g without", r, probed[r].prefill_density,
                      use[r].prefill_density);
    }
    /* theta = INFINITY against dense, the same prompt */
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab;
    static int32_t prompt[1500];
    for (int i = 0; i < 1500; i++) prompt[i] = (int32_t)((13u * 7919u * (i + 9)) % (unsigned)V);
    g_anchor = 1;
    sched_t *s = gpu_sched(m, 0);
    out_t dense, all;
    g_anchor = 0;
    submit(s, &dense, prompt, 1500, 4);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    g_anchor = 1;
    g_theta = INFINITY;
    submit(s, &all, prompt, 1500, 4);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    g_anchor = 0;
    g_theta = 0.5f;
    drain(&dense);
    drain(&all);
    sched_usage_t u;
    sched_req_usage(all.r, &u);
    ck_assert_int_eq(u.prefill_method, ATTN_PREFILL_ANCHOR);
    fprintf(stderr, "check_cuda: AnchorAttention theta=inf: density %.3f, first token %d (%.5f), dense %d (%.5f)\n",
            u.prefill_density, all.toks[0], all.lp[0], dense.toks[0], dense.lp[0]);
    ck_assert_msg(u.prefill_density > 0.999, "theta = INFINITY computed density %g", u.prefill_density);
    ck_assert_int_eq(all.toks[0], dense.toks[0]);
    ck_assert_msg(fabsf(all.lp[0] - dense.lp[0]) < 0.05f, "first log-probability %g vs dense %g", all.lp[0],
                  dense.lp[0]);
    sched_req_release(dense.r), sched_req_release(all.r);
    sched_destroy(s);
    model_free(m);
}
END_TEST

/* FlexPrefill on the GPU through the scheduler (chunks of 128: a prompt's
 * chunks past 256 keys select blocks, up to 12 of them): alone and batched
 * bitwise; the prefill density reported is below 1. */
START_TEST(test_sched_flex) {
    const int lens[4] = {1500, 700, 300, 7};
    sched_metrics_t mt;
    sparse_alone_vs_batched(&g_flex, lens, 5, 20, "GPU FlexPrefill", &mt, NULL);
    const double pd = mt.density_count ? mt.prefill_density_sum / (double)mt.density_count : 1.0;
    fprintf(stderr, "check_cuda: mean prefill density (FlexPrefill and dense requests) %.3f\n", pd);
    ck_assert_msg(pd < 0.999, "FlexPrefill reported density %g", pd);
}
END_TEST

/* Preemption: four requests in a pool too small for them give the tokens
 * and log-probabilities each gives alone, bit for bit; on one rank, and on
 * 2 context-parallel ranks from 128 tokens, where a preempted request's
 * recomputed generated rows must each run as they did when decoded: on one
 * rank below position 127, as sharded decode rows from it (a recomputed
 * slice of several rows among them). In these pools (the scheduler's cut
 * worked out on the CPU with the same settings) the 100-token request is
 * preempted after 29 and after 40 or 41 tokens, and recomputes positions
 * 100-126 in one slice, then 127 on in another. Dense, and TidalDecode. */
START_TEST(test_sched_preemption) {
    enum { R = 4, GEN = 48 };
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    const int V = model_hparams(m)->n_vocab, lens[R] = {300, 200, 160, 100}, pools[2] = {10, 12};
    static int32_t prompts[R][300];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < lens[r]; i++) prompts[r][i] = (int32_t)(((r + 3) * 7919u * (i + 5)) % (unsigned)V);
    for (int v = 0; v < 4; v++) {
        const int ranks = v & 1 ? 2 : 1, tidal = v >> 1;
        out_t alone[R], tight[R];
        for (int pass = 0; pass < 3; pass++) {
            g_context = ranks;
            g_no_prefix = 1;
            g_tidal = tidal;
            g_kv_blocks = pass ? pools[pass - 1] : 0;
            sched_t *s = gpu_sched(m, 0);
            out_t *o = pass ? tight : alone;
            for (int r = 0; r < R; r++) {
                submit(s, &o[r], prompts[r], lens[r], GEN);
                if (!pass) ck_assert_int_eq(sched_run_until_idle(s), 0); // each alone
            }
            ck_assert_int_eq(sched_run_until_idle(s), 0);
            int preempted = 0;
            for (int r = 0; r < R; r++) {
                drain(&o[r]);
                ck_assert(o[r].done && o[r].n == GEN);
                sched_usage_t u;
                sched_req_usage(o[r].r, &u);
                preempted += u.preemptions;
                if (pass) {
                    ck_assert_msg(same_out(&alone[r], &tight[r]),
                                  "%d rank(s)%s, a pool of %d pages: request %d (%d tokens) differs after preemptions",
                                  ranks, tidal ? ", TidalDecode" : "", pools[pass - 1], r, lens[r]);
                    sched_req_release(tight[r].r);
                }
            }
            sched_destroy(s);
            if (!pass) continue;
            ck_assert_msg(preempted > 0, "a pool of %d pages preempted nothing", pools[pass - 1]);
            fprintf(stderr, "check_cuda: %d rank(s)%s, a pool of %d pages: %d preemptions, every request as alone\n",
                    ranks, tidal ? ", TidalDecode" : "", pools[pass - 1], preempted);
        }
        for (int r = 0; r < R; r++) sched_req_release(alone[r].r);
    }
    model_free(m);
}
END_TEST

/* Last (it breaks the CUDA context for the rest of the process): a kernel
 * that faults makes the device unusable; the executor says so, the running
 * request ends with LC_EDEVICE, new submissions are refused, nothing hangs. */
START_TEST(test_device_lost) {
    model_t *m = check_cuda_tiny(GGML_TYPE_F32, 4, 2, 256);
    sched_t *s = gpu_sched(m, 0);
    int32_t prompt[32];
    for (int i = 0; i < 32; i++) prompt[i] = 5 + i;
    out_t o;
    submit(s, &o, prompt, 32, 60);
    ck_assert_int_gt(sched_step(s), 0);
    ck_assert_ptr_null(sched_failure(s));
    /* an embedding row ~8 TB past the table: an illegal address */
    int32_t bad = 1 << 30;
    int32_t *d_bad = check_cuda_dev(&bad, sizeof bad);
    float *d_x = check_cuda_dev(NULL, 4096 * sizeof(float));
    uint16_t *d_table = check_cuda_dev(NULL, 4096 * sizeof(uint16_t));
    ops_cuda_embed(d_table, d_bad, 1, 4096, 1.0f, d_x, NULL);
    cudaDeviceSynchronize();
    for (int i = 0; i < 4 && !o.done; i++) {
        sched_step(s);
        drain(&o);
    }
    ck_assert_msg(o.done, "the request did not end after the device was lost");
    ck_assert_int_eq(o.finish, SCHED_FINISH_ERROR);
    ck_assert_int_eq(o.status, LC_EDEVICE);
    ck_assert_ptr_nonnull(sched_failure(s));
    fprintf(stderr, "check_cuda: device lost: %s\n", sched_failure(s));
    out_t o2;
    memset(&o2, 0, sizeof o2);
    sched_params_t p;
    memset(&p, 0, sizeof p);
    p.prompt = prompt;
    p.n_prompt = 8;
    p.n_choices = 1;
    p.max_tokens = 4;
    p.prompt_logprobs = -1;
    sampler_params_default(&p.sampling);
    sched_attn_spec_default(&p.attn);
    int st;
    o2.r = sched_req_create(&p, &st);
    ck_assert_int_eq(sched_submit(s, o2.r), LC_EDEVICE);
    sched_req_release(o2.r);
    sched_req_release(o.r);
    sched_destroy(s);
    model_free(m);
}
END_TEST

/* Before every test: the switches a failed test (its assertion jumps out)
 * would otherwise leave set for the next one. */
static void reset_switches(void) {
    g_temperature = 0, g_theta = 0.5f, g_probe = 0.f, g_tidal_sel = 1, g_tidal_resel = -1;
    g_quest = g_flex = g_no_prefix = g_tidal = g_anchor = 0;
    g_keep_sliding = g_no_graphs = g_report = g_differ = g_context = g_kv_blocks = 0;
}

void cuda_sched_add(TCase *tc) {
    tcase_add_checked_fixture(tc, reset_switches, NULL);
    tcase_add_loop_test(tc, test_sched_batch_invariance, 0, 2);
    tcase_add_test(tc, test_sched_quest);
    tcase_add_test(tc, test_sched_quest_grow);
    tcase_add_test(tc, test_sched_tidal);
    tcase_add_test(tc, test_sched_tidal_gemma);
    tcase_add_test(tc, test_sched_anchor);
    tcase_add_test(tc, test_sched_flex);
    tcase_add_test(tc, test_sched_gemma);
    tcase_add_test(tc, test_sched_preemption);
}

void cuda_device_lost_add(TCase *tc) { tcase_add_test(tc, test_device_lost); }
