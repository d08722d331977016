/* Check suite for sparse attention end to end: requests with a
 * `sparse_attention` spec go through the scheduler and the model forward on a
 * tiny random model (4 layers, so TidalDecode has layers after its selection
 * layer), with chunked prefill, prefix reuse, n > 1 choices and preemption.
 *
 * - With a full budget (gamma = 1, theta = inf, budgets and windows beyond
 *   the context) every method produces the dense greedy tokens and reports
 *   density 1.
 * - With real budgets on a long-enough prompt each method reports density
 *   < 1, and the metrics sum what the requests reported.
 * - K/V computed with sparse attention is never handed to a dense request by
 *   the prefix cache, while the same policy reuses its own blocks.
 * - Gemma 3: the methods apply to the global layers only (TidalDecode's
 *   selection moves to the next global layer when its selection layer
 *   slides); the density counts what every layer computed.
 * The tiny model's geometry is scaled down (sparse block 16, anchor windows
 * 32/64, windows and budgets of 64 tokens) so that a 300-token prompt is
 * "long"; gamma, tau and theta keep their defaults. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "kv/kv.h"
#include "model/gguf.h"
#include "ops/ops.h"
#include "scheduler/sched.h"
#include "tinymodel.h"

/* ---- tiny model ------------------------------------------------------------------ */
/* Attention weights larger than check_sched's so that the random model's
 * attention is peaked enough for the sparse methods to have something to skip. */
static model_t *g_model;
static model_t *tiny_model(void) {
    if (g_model) return g_model;
    const tiny_opts_t o = {.name = "check-sparse-tiny",
                           .n_layers = 4,
                           .n_embd = 64,
                           .n_heads = 4,
                           .n_kv_heads = 2,
                           .n_ff = 128,
                           .n_ctx = 1024,
                           .seed = 11,
                           .qk_std = 4.0f};
    return g_model = tiny_model_load(&o);
}

/* ---- engine helpers ------------------------------------------------------------------ */
static sched_t *mk_sched(const model_t *m, int64_t blocks, int max_batch, int chunk, int prefix) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = blocks;
    c.max_batch_tokens = max_batch;
    c.prefill_chunk = chunk;
    c.enable_prefix_cache = prefix;
    c.max_running = 16;
    c.max_waiting = 64;
    c.target_step_ms = -1; // the same schedule on any machine
    /* Geometry scaled to the tiny model; gamma, tau, theta stay default. */
    c.attn_default.block = 16;
    c.attn_default.min_budget = 32;
    c.attn_default.anchor_init = 32;
    c.attn_default.anchor_local = 64;
    c.attn_default.anchor_lookback = 32;
    c.attn_default.window_tokens = 64;
    c.attn_default.decode_budget = 64;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

enum { MAXTOK = 16 };
typedef struct {
    sched_req_t *r;
    int32_t toks[2][MAXTOK];
    float lp[2][MAXTOK]; // the tokens' log-probabilities, when asked for
    int n[2];
    int done;
} out_t;

static void drain(out_t *o) {
    sched_event_t ev[32];
    int n;
    while ((n = sched_req_poll(o->r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            if (ev[i].kind == SCHED_EV_TOKEN && o->n[ev[i].choice] < MAXTOK) {
                o->lp[ev[i].choice][o->n[ev[i].choice]] = ev[i].lp.logprob;
                o->toks[ev[i].choice][o->n[ev[i].choice]++] = ev[i].token;
            }
            if (ev[i].kind == SCHED_EV_DONE) o->done = 1;
            sched_event_clear(&ev[i]);
        }
}

static void params(sched_params_t *p, const int32_t *prompt, int n, int max_tokens, int choices) {
    memset(p, 0, sizeof *p);
    p->prompt = prompt;
    p->n_prompt = n;
    p->n_choices = choices;
    p->max_tokens = max_tokens;
    p->ignore_eos = 1;
    p->logprobs = p->prompt_logprobs = -1;
    sampler_params_default(&p->sampling);
    p->sampling.temperature = 0;
    sched_attn_spec_default(&p->attn);
    p->attn.prefill = ATTN_PREFILL_DENSE;
    p->attn.decode = ATTN_DECODE_DENSE;
}

static void submit(sched_t *s, out_t *o, const sched_params_t *p) {
    memset(o, 0, sizeof *o);
    int st;
    o->r = sched_req_create(p, &st);
    ck_assert_ptr_nonnull(o->r);
    ck_assert_int_eq(sched_submit(s, o->r), 0);
}

static void finish(out_t *o, sched_usage_t *u) {
    drain(o);
    ck_assert(o->done);
    if (u) sched_req_usage(o->r, u);
    sched_req_release(o->r);
    o->r = NULL;
}

static void mk_prompt(int32_t *p, int n, unsigned seed, int n_vocab) {
    for (int i = 0; i < n; i++) p[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(n_vocab - 3));
}

/* The methods under test: a prefill or a decode method, the other dense. */
typedef struct {
    const char *name;
    int prefill, decode;
    int flex_select; // -1: the server's
} method_t;
static const method_t methods[] = {
    {"flexprefill", ATTN_PREFILL_FLEX, ATTN_DECODE_DENSE, -1},
    {"flexprefill-blocks", ATTN_PREFILL_FLEX, ATTN_DECODE_DENSE, ATTN_FLEX_BLOCKS},
    {"anchor", ATTN_PREFILL_ANCHOR, ATTN_DECODE_DENSE, -1},
    {"streaming", ATTN_PREFILL_STREAMING, ATTN_DECODE_DENSE, -1},
    {"quest", ATTN_PREFILL_DENSE, ATTN_DECODE_QUEST, -1},
    {"tidal", ATTN_PREFILL_DENSE, ATTN_DECODE_TIDAL, -1},
    {"streaming-decode", ATTN_PREFILL_DENSE, ATTN_DECODE_STREAMING, -1},
};
#define N_METHODS (int)(sizeof methods / sizeof methods[0])

static void set_method(sched_params_t *p, const method_t *m, int full) {
    p->attn.prefill = m->prefill;
    p->attn.decode = m->decode;
    p->attn.flex_select = m->flex_select;
    p->attn.anchor_probe = 0.0f; // the tiny model's flat heads would all fire the probe (check_attn tests it)
    if (full) {
        p->attn.gamma = 1.0f;
        p->attn.theta = INFINITY;
        p->attn.decode_budget = 1 << 20;
    }
}

/* Full budget: StreamingLLM's window is a config knob, not a request field. */
static sched_t *mk_sched_full(const model_t *m, int64_t blocks, int max_batch, int chunk, int prefix) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = blocks;
    c.max_batch_tokens = max_batch;
    c.prefill_chunk = chunk;
    c.enable_prefix_cache = prefix;
    c.max_running = 16;
    c.max_waiting = 64;
    c.target_step_ms = -1; // the same schedule on any machine
    c.attn_default.block = 16;
    c.attn_default.min_budget = 32;
    c.attn_default.anchor_init = 32;
    c.attn_default.anchor_local = 64;
    c.attn_default.anchor_lookback = 32;
    c.attn_default.window_tokens = 1 << 20;
    char err[256];
    sched_t *s = sched_create(m, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

#define NP 300 // prompt tokens
#define NG 12  // generated tokens

/* ---- full budget == dense -------------------------------------------------------------- */
START_TEST(test_full_budget_equals_dense) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[NP];
    mk_prompt(prompt, NP, 1, nv);
    sched_params_t p;
    out_t ref, got;
    /* Dense reference: one chunk, no prefix cache. */
    sched_t *s = mk_sched_full(m, 256, 512, 512, 0);
    params(&p, prompt, NP, NG, 1);
    submit(s, &ref, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    sched_usage_t u;
    finish(&ref, &u);
    ck_assert_int_eq(ref.n[0], NG);
    ck_assert_double_eq_tol(u.prefill_density, 1.0, 1e-12);
    sched_destroy(s);
    /* Every method, with chunked prefill (chunks of 48 cut blocks and
     * anchor groups), then again through the prefix cache, with n = 2. */
    for (int i = 0; i < N_METHODS; i++) {
        s = mk_sched_full(m, 256, 512, 48, 1);
        for (int pass = 0; pass < 2; pass++) {
            params(&p, prompt, NP, NG, 1 + pass);
            set_method(&p, &methods[i], 1);
            submit(s, &got, &p);
            ck_assert_int_eq(sched_run_until_idle(s), 0);
            finish(&got, &u);
            for (int c = 0; c <= pass; c++) {
                ck_assert_int_eq(got.n[c], NG);
                ck_assert_msg(memcmp(got.toks[c], ref.toks[0], sizeof(int32_t) * NG) == 0,
                              "%s pass %d choice %d: tokens differ from dense", methods[i].name, pass, c);
            }
            ck_assert_int_eq(u.prefill_method, methods[i].prefill);
            ck_assert_int_eq(u.decode_method, methods[i].decode);
            ck_assert_msg(fabs(u.prefill_density - 1.0) < 1e-9, "%s: prefill density %g", methods[i].name,
                          u.prefill_density);
            ck_assert_msg(fabs(u.decode_density - 1.0) < 1e-9, "%s: decode density %g", methods[i].name,
                          u.decode_density);
            /* FlexPrefill shares only the chunks before the one holding the
             * prompt's last block (sched__prompt_shareable) */
            const int cached =
                methods[i].prefill == ATTN_PREFILL_FLEX ? (NP - 16) / 16 * 16 / 48 * 48 : (NP - 1) / 16 * 16;
            ck_assert_int_eq(u.cached_tokens, pass ? cached : 0);
        }
        sched_destroy(s);
    }
}
END_TEST

/* Every method at once with a full budget in a pool too small for all of
 * them: chunks, decodes and preemption by recomputation mix. */
START_TEST(test_full_budget_preemption) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[N_METHODS][150 + 10 * N_METHODS]; // request i: 150 + 10 i tokens
    static out_t ref[N_METHODS], got[N_METHODS];
    sched_params_t p;
    sched_t *s = mk_sched_full(m, 256, 512, 512, 0);
    for (int i = 0; i < N_METHODS; i++) {
        mk_prompt(prompt[i], 150 + 10 * i, 40 + i, nv);
        params(&p, prompt[i], 150 + 10 * i, NG, 1);
        submit(s, &ref[i], &p);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        finish(&ref[i], NULL);
    }
    sched_destroy(s);
    s = mk_sched_full(m, 40, 128, 32, 0); // 40 blocks of 16: about three requests at a time
    for (int i = 0; i < N_METHODS; i++) {
        params(&p, prompt[i], 150 + 10 * i, NG, 1);
        set_method(&p, &methods[i], 1);
        submit(s, &got[i], &p);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    int preempted = 0;
    for (int i = 0; i < N_METHODS; i++) {
        sched_usage_t u;
        finish(&got[i], &u);
        preempted += u.preemptions;
        ck_assert_msg(memcmp(got[i].toks[0], ref[i].toks[0], sizeof(int32_t) * NG) == 0, "%s: tokens differ",
                      methods[i].name);
        ck_assert_msg(fabs(u.prefill_density - 1.0) < 1e-9, "%s: density %g", methods[i].name, u.prefill_density);
    }
    ck_assert_int_gt(preempted, 0);
    sched_destroy(s);
}
END_TEST

/* ---- real budgets --------------------------------------------------------------------- */
START_TEST(test_budgets_report_density) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[NP];
    mk_prompt(prompt, NP, 2, nv);
    sched_t *s = mk_sched(m, 512, 512, 128, 0);
    sched_params_t p;
    out_t o;
    double psum = 0, dsum = 0;
    int pcnt = 0, dcnt = 0;
    for (int i = 0; i < N_METHODS; i++) {
        params(&p, prompt, NP, NG, 1);
        set_method(&p, &methods[i], 0);
        submit(s, &o, &p);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        sched_usage_t u;
        finish(&o, &u);
        ck_assert_int_eq(o.n[0], NG);
        double d = methods[i].prefill != ATTN_PREFILL_DENSE ? u.prefill_density : u.decode_density;
        fprintf(stderr, "check_sparse: %-16s prefill density %.3f decode density %.3f\n", methods[i].name,
                u.prefill_density, u.decode_density);
        ck_assert_msg(d > 0.0 && d < 0.999, "%s: density %g with a %d-token prompt", methods[i].name, d, NP);
        psum += u.prefill_density, pcnt++;
        dsum += u.decode_density, dcnt++;
    }
    /* max_tokens 1: the first token comes from the prompt's logits; no decode. */
    params(&p, prompt, NP, 1, 1);
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    sched_usage_t u;
    finish(&o, &u);
    ck_assert(isnan(u.decode_density));
    psum += u.prefill_density, pcnt++;
    sched_metrics_t mt;
    sched_metrics(s, &mt);
    ck_assert_uint_eq(mt.density_count, (uint64_t)pcnt);
    ck_assert_uint_eq(mt.decode_density_count, (uint64_t)dcnt);
    ck_assert_double_eq_tol(mt.prefill_density_sum, psum, 1e-9);
    ck_assert_double_eq_tol(mt.decode_density_sum, dsum, 1e-9);
    sched_destroy(s);
}
END_TEST

/* ---- prefix cache and policies ------------------------------------------------------------ */
START_TEST(test_prefix_salt) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[NP];
    mk_prompt(prompt, NP, 3, nv);
    sched_t *s = mk_sched(m, 512, 512, 128, 1);
    sched_params_t p;
    out_t o, ref, sparse;
    sched_usage_t u;
    /* Dense reuses every full block; a sparse prefill only whole chunks (128
     * here), so that its chunks, and so its pattern, are the same cold or warm. */
    const int full = (NP - 1) / 16 * 16, full_sparse = full / 128 * 128;
    /* Sparse first: its blocks must not serve the dense request. */
    params(&p, prompt, NP, 4, 1);
    set_method(&p, &methods[0], 0);
    submit(s, &sparse, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&sparse, &u);
    ck_assert_int_eq(u.cached_tokens, 0);
    params(&p, prompt, NP, 4, 1);
    submit(s, &ref, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&ref, &u);
    ck_assert_int_eq(u.cached_tokens, 0);
    /* The same sparse policy reuses its own blocks; the dense one its own. */
    params(&p, prompt, NP, 4, 1);
    set_method(&p, &methods[0], 0);
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    ck_assert_int_eq(u.cached_tokens, full_sparse);
    ck_assert_mem_eq(o.toks[0], sparse.toks[0], 4 * sizeof(int32_t));
    params(&p, prompt, NP, 4, 1);
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    ck_assert_int_eq(u.cached_tokens, full);
    ck_assert_mem_eq(o.toks[0], ref.toks[0], 4 * sizeof(int32_t));
    /* Another gamma is another salt, and so is the other vertical-slash rule. */
    params(&p, prompt, NP, 4, 1);
    set_method(&p, &methods[0], 0);
    p.attn.gamma = 0.5f;
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    ck_assert_int_eq(u.cached_tokens, 0);
    params(&p, prompt, NP, 4, 1);
    set_method(&p, &methods[1], 0);
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    ck_assert_int_eq(u.cached_tokens, 0);
    sched_destroy(s);
}
END_TEST

/* FlexPrefill's prompt end and the prefix cache: a prompt Q of two whole
 * chunks, then a longer prompt P that starts with Q. Q's last block of rows
 * attended every key, so its second chunk's K/V is not what P computes
 * there: P reuses only Q's first chunk, and its tokens and log-probabilities
 * equal P's cold run bit for bit (reusing both chunks changes them). */
START_TEST(test_flex_prompt_end_prefix) {
    const model_t *m = tiny_model();
    int nv = model_hparams(m)->n_vocab;
    static int32_t prompt[NP];
    mk_prompt(prompt, NP, 5, nv);
    sched_params_t p;
    out_t cold, o;
    sched_usage_t u;
    sched_t *s = mk_sched(m, 512, 512, 128, 0);
    params(&p, prompt, NP, 6, 1);
    set_method(&p, &methods[0], 0);
    p.logprobs = 0;
    submit(s, &cold, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&cold, &u);
    ck_assert_double_lt(u.prefill_density, 0.999); // sparse: the chunks differ with their patterns
    sched_destroy(s);
    s = mk_sched(m, 512, 512, 128, 1);
    params(&p, prompt, 256, 6, 1);
    set_method(&p, &methods[0], 0);
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    params(&p, prompt, NP, 6, 1);
    set_method(&p, &methods[0], 0);
    p.logprobs = 0;
    submit(s, &o, &p);
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    finish(&o, &u);
    ck_assert_int_eq(u.cached_tokens, 128);
    ck_assert_mem_eq(o.toks[0], cold.toks[0], 6 * sizeof(int32_t));
    ck_assert_mem_eq(o.lp[0], cold.lp[0], 6 * sizeof(float));
    sched_destroy(s);
}
END_TEST

/* ---- Gemma 3: the sparse methods run on the global layers -------------------------------- */
/* Two models with the same weights: in one every 2nd layer is global (1, 3,
 * 5 and 7; TidalDecode's selection layers 2 and 4 slide, so layers 3 and 5
 * select in their place, for layer 7), in the other every layer slides (a
 * pattern longer than the model). A
 * sliding layer attends its window whatever the policy: on the all-sliding
 * model every prefill method gives the dense tokens and density. The
 * density counts every layer: dense on the mixed model is the mean of 1
 * (global layers) and the window's share of the causal pairs (sliding
 * ones); a sparse method computes less than that on the global layers only. */
static model_t *tiny_gemma(int swa_pattern) {
    const tiny_opts_t o = {.name = "check-sparse-gemma",
                           .n_layers = 8,
                           .n_embd = 64,
                           .n_heads = 4,
                           .n_kv_heads = 1,
                           .n_ff = 128,
                           .n_ctx = 1024,
                           .seed = 13,
                           .qk_std = 4.0f,
                           .window = 24,
                           .swa_pattern = swa_pattern};
    return tiny_model_load(&o);
}

START_TEST(test_gemma_global_layers) {
    model_t *mixed = tiny_gemma(2), *sliding = tiny_gemma(9);
    const int nv = model_hparams(mixed)->n_vocab, W = 24;
    static int32_t prompt[NP];
    mk_prompt(prompt, NP, 5, nv);
    double causal = 0, window = 0; // query-key pairs of one head
    for (int p = 0; p < NP; p++) causal += p + 1, window += p + 1 < W ? p + 1 : W;
    const double d_slide = window / causal, d_mixed = (1.0 + d_slide) / 2;
    model_t *models[2] = {sliding, mixed};
    for (int k = 0; k < 2; k++) {
        sched_t *s = mk_sched(models[k], 512, 512, 128, 0);
        sched_params_t p;
        out_t ref, o;
        sched_usage_t u;
        params(&p, prompt, NP, NG, 1);
        submit(s, &ref, &p);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        finish(&ref, &u);
        ck_assert_double_eq_tol(u.prefill_density, k ? d_mixed : d_slide, 1e-9);
        const double dd = u.decode_density; // dense decode: the sliding layers' windows count too
        ck_assert(dd < 1.0);
        for (int i = 0; i < 5; i++) { // the prefill methods, Quest and TidalDecode
            params(&p, prompt, NP, NG, 1);
            set_method(&p, &methods[i], 0);
            p.attn.theta = 1.0f; // QK-norm bounds the tiny model's scores: theta 12 would keep every key
            submit(s, &o, &p);
            ck_assert_int_eq(sched_run_until_idle(s), 0);
            finish(&o, &u);
            fprintf(stderr, "check_sparse: gemma %s %-12s prefill density %.4f (dense %.4f) decode %.4f (dense %.4f)\n",
                    k ? "mixed" : "sliding", methods[i].name, u.prefill_density, k ? d_mixed : d_slide,
                    u.decode_density, dd);
            const int prefill = methods[i].prefill != ATTN_PREFILL_DENSE;
            const double d = prefill ? u.prefill_density : u.decode_density;
            const double dense = prefill ? (k ? d_mixed : d_slide) : dd;
            if (k == 0) {
                ck_assert_msg(memcmp(o.toks[0], ref.toks[0], sizeof(int32_t) * NG) == 0,
                              "%s changed an all-sliding model", methods[i].name);
                ck_assert_double_eq_tol(d, dense, 1e-9);
            } else {
                ck_assert_msg(d < dense - 1e-3 && d > dense / 4, "%s: density %g, dense %g", methods[i].name, d, dense);
            }
        }
        sched_destroy(s);
    }
    model_free(mixed);
    model_free(sliding);
}
END_TEST

int main(void) {
    ops_cpu_init(NULL, 1);
    Suite *s = suite_create("sparse");
    TCase *tc = tcase_create("engine");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_full_budget_equals_dense);
    tcase_add_test(tc, test_full_budget_preemption);
    tcase_add_test(tc, test_budgets_report_density);
    tcase_add_test(tc, test_prefix_salt);
    tcase_add_test(tc, test_flex_prompt_end_prefix);
    tcase_add_test(tc, test_gemma_global_layers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (g_model) model_free(g_model);
    return failed ? 1 : 0;
}
