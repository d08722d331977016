/* Context parallelism in the CUDA executor (exec_cuda_cp.cu), part of the
 * GPU Check suite check_cuda: tests/cp_exec_case.h's scenarios on a tiny
 * random model (head_dim 64, pages of 64) with 2, 3 and 4 device-local
 * ranks (sharding from 100 tokens) against one rank: a 1,300-token prompt in
 * two slices, a second sequence on a shared (forked) prefix, then decode
 * steps, dense and with each sparse method the GPU ring runs (FlexPrefill,
 * AnchorAttention, Quest, TidalDecode); and a sharded sequence bitwise the
 * same alone and beside others. The ring merges partial outputs in bf16 where one rank does
 * not, so logits agree within bf16 tolerance (relative 3e-2, as the GPU
 * against the CPU) and top-1 in >= 95% of rows, not bit for bit; the
 * density a request reports and the per-rank counters must show that the
 * ring ran. With parallel.devices (ranks 1.. in pools of their own, on this
 * GPU or, where the machine has them, on others) the logits must be the
 * shared pool's bit for bit. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "attn/attn.h"
#include "cp_exec_case.h"
#include "model/gguf.h"
#include "model/model.h"

void cuda_cp_add(TCase *tc);
/* check_cuda.c */
model_t *check_cuda_tiny(uint32_t type, int n_heads, int n_kv_heads, int n_embd);
model_t *check_cuda_tiny_gemma(void);
model_t *check_cuda_tiny_gemma6(void);
void check_cuda_compare(const float *a, const float *b, int rows, int V, double *rel, double *top1);

static const cp_exec_case_t g_case = {.device = "cuda:0",
                                      .kv_blocks = 96,
                                      .max_batch_tokens = 700,
                                      .min_tokens = 100,
                                      .n_prompt = 1300,
                                      .split = 650,
                                      .fork = 640,
                                      .n_decode = 6,
                                      .prompt_end = 1};

typedef struct {
    const char *what;
    int ranks;
    double tol_dec; // the decode steps' relative logit error
    double worst, worst_top1;
} cmp_t;

static int g_report; // 1: compare reports a part out of tolerance (g_bad) instead of failing
static int g_bad;

static void compare(void *ud, const char *part, const float *sharded, const float *one, int rows, int V) {
    cmp_t *c = ud;
    double rel, top1;
    check_cuda_compare(sharded, one, rows, V, &rel, &top1);
    const int bad = rel >= (rows == 1 ? c->tol_dec : 3e-2) || top1 < 0.95;
    if (bad)
        fprintf(stderr, "check_cuda: %s, %d ranks, %s: relative logit error %g, top-1 agreement %g\n", c->what,
                c->ranks, part, rel, top1);
    g_bad += bad;
    ck_assert_msg(g_report || rel < (rows == 1 ? c->tol_dec : 3e-2), "%s, %d ranks, %s: relative logit error %g",
                  c->what, c->ranks, part, rel);
    ck_assert_msg(g_report || top1 >= 0.95, "%s, %d ranks, %s: top-1 agreement %g", c->what, c->ranks, part, top1);
    c->worst = fmax(c->worst, rel);
    c->worst_top1 = fmin(c->worst_top1, top1);
}

/* The scenario on m with `ranks` ranks against one (pol NULL: dense); m is
 * freed. */
static void exec_case_on(model_t *m, const cp_exec_case_t *base, int ranks, const attn_policy_t *pol, double tol_dec,
                         const char *what) {
    cp_exec_case_t cs = *base;
    cs.seed = 11u + (unsigned)ranks;
    cmp_t c = {what, ranks, tol_dec, 0, 1};
    cp_exec_result_t res;
    cp_exec_case_run(m, &cs, ranks, pol, compare, &c, &res);
    const model_exec_cp_stats_t *st = &res.cp;
    ck_assert_int_eq(st->ranks, ranks);
    int64_t kvb = 0;
    uint64_t steps = 0;
    double compute = 0;
    for (int r = 0; r < ranks; r++) kvb += st->kv_blocks[r], steps += st->ring_steps[r], compute += st->compute_s[r];
    ck_assert_int_eq(kvb, res.kv_used);
    const int ring = !pol || pol->prefill != ATTN_PREFILL_ANCHOR; // AnchorAttention: all-to-alls, no ring steps
    ck_assert_msg(st->kv_blocks[ranks - 1] > 0 && (!ring || steps > 0) && compute > 0 && st->sharded_rows > 0,
                  "%s: the sharded path did not run (%lld blocks on the last rank, %llu ring steps, %llu rows)", what,
                  (long long)st->kv_blocks[ranks - 1], (unsigned long long)steps, (unsigned long long)st->sharded_rows);
    if (pol) { // the density each executor reports
        const attn_stats_t *a = &res.st[0], *b = &res.st[1];
        const double da = a->prefill_computed / a->prefill_total, db = b->prefill_computed / b->prefill_total;
        const double ea = a->decode_computed / a->decode_total, eb = b->decode_computed / b->decode_total;
        fprintf(stderr, "check_cuda: %s, %d ranks: prefill density %.4f (one rank %.4f), decode %.4f (%.4f)\n", what,
                ranks, db, da, eb, ea);
        ck_assert_msg(fabs(a->prefill_total - b->prefill_total) <= 1e-9 * a->prefill_total &&
                          fabs(a->decode_total - b->decode_total) <= 1e-9 * a->decode_total,
                      "%s: the pairs counted differ", what);
        ck_assert_msg(fabs(da - db) <= 0.02 && fabs(ea - eb) <= 0.02, "%s: density %g / %g, one rank %g / %g", what, db,
                      eb, da, ea);
        if (pol->prefill != ATTN_PREFILL_DENSE && !(pol->prefill == ATTN_PREFILL_ANCHOR && pol->anchor_probe > 0))
            ck_assert_msg(db < 0.999, "%s: prefill density %g", what, db); // (the probe: every candidate here)
        if (pol->decode != ATTN_DECODE_DENSE && pol->decode_budget < 1000)
            ck_assert_msg(eb < 0.999, "%s: decode density %g", what, eb);
    }
    fprintf(stderr,
            "check_cuda: %s, %d ranks vs one: max relative logit error %.2e, top-1 %.3f; KV blocks by rank:", what,
            ranks, c.worst, c.worst_top1);
    for (int r = 0; r < ranks; r++) fprintf(stderr, " %lld", (long long)st->kv_blocks[r]);
    fprintf(stderr, "; ring steps %llu, compute %.2f ms, wait %.2f ms\n", (unsigned long long)steps, compute * 1e3,
            st->wait_s[0] * 1e3);
    model_free(m);
}

static void exec_case(int ranks, const attn_policy_t *pol, double tol_dec, const char *what) {
    exec_case_on(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, ranks, pol, tol_dec, what);
}

START_TEST(test_cp_exec_dense) {
    exec_case(2, NULL, 3e-2, "dense");
    exec_case(3, NULL, 3e-2, "dense");
    exec_case(4, NULL, 3e-2, "dense");
}
END_TEST

/* The sparse methods the GPU ring runs. */
static attn_policy_t sparse_policy(attn_decode_method_t decode, int budget) {
    attn_policy_t pol;
    attn_policy_default(&pol);
    pol.prefill = ATTN_PREFILL_FLEX; // sparse on a random model's diffuse attention: few columns and diagonals
    pol.min_budget = 8;
    pol.max_budget = 8;
    pol.gamma = 0.3f;
    pol.decode = decode;
    pol.decode_budget = budget;
    pol.dense_layers = decode == ATTN_DECODE_QUEST ? 1 : 0;
    pol.tidal_select_layer = 1;
    return pol;
}

/* AnchorAttention on this model: a small theta and groups, so that stripes
 * are chosen (and left out); Quest over every page. */
static attn_policy_t anchor_policy(float probe) {
    attn_policy_t pol = sparse_policy(ATTN_DECODE_QUEST, 2048);
    pol.prefill = ATTN_PREFILL_ANCHOR;
    pol.theta = 0.5f;
    pol.anchor_init = 128;
    pol.anchor_local = 256;
    pol.anchor_lookback = 128;
    pol.anchor_probe = probe;
    return pol;
}

/* FlexPrefill with Quest, then with TidalDecode. A sparse decode selects
 * from scores the ranks' rounding has moved (the K and V of every layer past
 * the first): on this random model's diffuse attention a Quest page or a
 * TidalDecode position at a near-tie flips, and one flip moves a row's
 * logits by several percent. So the decode steps are held to the dense
 * tolerance with budgets that cover the context (the sharded selection and
 * its partials, every page), to top-1 and 1e-1 with small ones; the
 * selection itself on equal inputs is check_cp_cuda's, rank for rank. */
START_TEST(test_cp_exec_sparse) {
    attn_policy_t pol = sparse_policy(ATTN_DECODE_QUEST, 2048);
    exec_case(3, &pol, 3e-2, "FlexPrefill + Quest (every page)");
    pol = sparse_policy(ATTN_DECODE_QUEST, 128);
    exec_case(2, &pol, 1e-1, "FlexPrefill + Quest");
    exec_case(3, &pol, 1e-1, "FlexPrefill + Quest");
    pol = sparse_policy(ATTN_DECODE_TIDAL, 2048);
    exec_case(4, &pol, 3e-2, "FlexPrefill + TidalDecode (every position)");
    pol = sparse_policy(ATTN_DECODE_TIDAL, 96);
    exec_case(4, &pol, 1e-1, "FlexPrefill + TidalDecode");
    /* AnchorAttention across the ranks (its own exchange), then with its
     * probe, which fires on most of this model's heads (check_cuda's
     * test_sched_anchor) */
    pol = anchor_policy(0.f);
    exec_case(2, &pol, 3e-2, "AnchorAttention + Quest (every page)");
    exec_case(4, &pol, 3e-2, "AnchorAttention + Quest (every page)");
    pol = anchor_policy(0.01f);
    exec_case(3, &pol, 3e-2, "AnchorAttention (probe) + Quest (every page)");
}
END_TEST

/* Gemma 3 (head_dim 256, sliding windows of 96 on layer groups that keep
 * only their windows): the ring runs the global layers, the sliding layers
 * attend their windows through the single-rank windowed plans over every
 * rank's rows (one GPU's pool holds every rank's pages). The 3-layer model
 * has two sliding groups, the 6-layer one a single one; its TidalDecode
 * selects on sliding layers 0 and 4, so global layers 1 and 5 select and 3
 * attends the selection. Then a sharded Gemma sequence bitwise the same
 * alone and in a batch. */
START_TEST(test_cp_exec_gemma) {
    cp_exec_case_t cs = g_case;
    cs.kv_blocks = 256; // a block is one group's: three groups' worth a position on the 3-layer model
    g_report = 1, g_bad = 0;
    exec_case_on(check_cuda_tiny_gemma(), &cs, 2, NULL, 3e-2, "Gemma 3 (3 layers), dense");
    exec_case_on(check_cuda_tiny_gemma(), &cs, 3, NULL, 3e-2, "Gemma 3 (3 layers), dense");
    cs.keep_sliding = 1;
    exec_case_on(check_cuda_tiny_gemma(), &cs, 2, NULL, 3e-2, "Gemma 3 (3 layers, every position), dense");
    cs.keep_sliding = 0;
    setenv("LACUNA_CP_RING", "kv", 1);
    exec_case_on(check_cuda_tiny_gemma(), &cs, 2, NULL, 3e-2, "Gemma 3 (3 layers), dense, pass-KV");
    setenv("LACUNA_CP_RING", "q", 1);
    exec_case_on(check_cuda_tiny_gemma(), &cs, 2, NULL, 3e-2, "Gemma 3 (3 layers), dense, pass-Q");
    unsetenv("LACUNA_CP_RING");
    exec_case_on(check_cuda_tiny_gemma6(), &cs, 2, NULL, 3e-2, "Gemma 3 (6 layers), dense");
    attn_policy_t pol = sparse_policy(ATTN_DECODE_TIDAL, 96);
    pol.tidal_select_layer = 0;
    pol.tidal_reselect_layer = 4;
    exec_case_on(check_cuda_tiny_gemma6(), &cs, 2, &pol, 1e-1, "Gemma 3 (6 layers), FlexPrefill + TidalDecode");
    pol = anchor_policy(0.f);
    exec_case_on(check_cuda_tiny_gemma6(), &cs, 3, &pol, 3e-2, "Gemma 3 (6 layers), AnchorAttention + Quest");
    g_report = 0;
    ck_assert_msg(!g_bad, "Gemma 3: %d parts out of tolerance (listed above)", g_bad);
    model_t *m = check_cuda_tiny_gemma6();
    cp_exec_batch_run(m, &cs, 2, NULL);
    model_free(m);
}
END_TEST

/* Ranks keeping the blocks they hold in pools of their own
 * (parallel.devices "0,0", "0,0,0", "0,0,0,0": every rank on this GPU,
 * ranks 1.. reading pools the executor's K/V mirror writes) against the
 * same ranks sharing the executor's pool: the same logits bit for bit
 * (the same kernels on the same bytes), dense, with each sparse method and
 * on Gemma 3's layer groups; a sequence alone and batched the same bits;
 * lists the executor refuses. */
static void compare_bits(void *ud, const char *part, const float *own, const float *shared, int rows, int V) {
    ck_assert_msg(memcmp(own, shared, sizeof(float) * (size_t)rows * V) == 0,
                  "%s, %s: the ranks' own pools give other logits than the shared pool", (const char *)ud, part);
}

static void devices_case(model_t *m, const cp_exec_case_t *base, int ranks, const char *devices,
                         const attn_policy_t *pol, const char *what) {
    cp_exec_case_t cs = *base;
    cs.seed = 11u + (unsigned)ranks;
    cs.devices = devices;
    cs.ref_ranks = ranks;
    cp_exec_result_t res;
    cp_exec_case_run(m, &cs, ranks, pol, compare_bits, (void *)what, &res);
    ck_assert_int_eq(res.cp.ranks, ranks);
    ck_assert_msg(res.cp.kv_blocks[ranks - 1] > 0 && res.cp.sharded_rows > 0, "%s: the sharded path did not run", what);
    fprintf(stderr, "check_cuda: %s, %d ranks on GPUs %s, pools of their own: the shared pool's logits, bit for bit\n",
            what, ranks, devices);
    model_free(m);
}

START_TEST(test_cp_exec_devices) {
    devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 2, "0,0", NULL, "dense");
    devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 4, "0,0,0,0", NULL, "dense");
    attn_policy_t pol = sparse_policy(ATTN_DECODE_QUEST, 128);
    devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 3, "0,0,0", &pol, "FlexPrefill + Quest");
    pol = sparse_policy(ATTN_DECODE_TIDAL, 96);
    devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 2, "0,0", &pol, "FlexPrefill + TidalDecode");
    pol = anchor_policy(0.01f);
    devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 3, "0,0,0", &pol,
                 "AnchorAttention (probe) + Quest");
    cp_exec_case_t cs = g_case;
    cs.kv_blocks = 256;
    devices_case(check_cuda_tiny_gemma6(), &cs, 2, "0,0", NULL, "Gemma 3 (6 layers), dense");
    pol = sparse_policy(ATTN_DECODE_TIDAL, 96);
    pol.tidal_select_layer = 0;
    pol.tidal_reselect_layer = 4;
    devices_case(check_cuda_tiny_gemma6(), &cs, 3, "0,0,0", &pol, "Gemma 3 (6 layers), FlexPrefill + TidalDecode");
    /* alone and batched with pools of their own */
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    cs = g_case;
    cs.devices = "0,0,0";
    cp_exec_batch_run(m, &cs, 3, NULL);
    /* on GPUs of their own, where this machine has them (peer copies, the
     * mirror's peer writes, the rows staged on each GPU) */
    int n_dev = 0;
    ck_assert_int_eq(cudaGetDeviceCount(&n_dev), cudaSuccess);
    if (n_dev >= 2) {
        devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 2, "0,1", NULL, "dense");
        pol = sparse_policy(ATTN_DECODE_QUEST, 128);
        devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 4, "0,1,0,1", &pol, "FlexPrefill + Quest");
        pol = anchor_policy(0.01f);
        devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 2, "0,1", &pol,
                     "AnchorAttention (probe) + Quest");
    }
    if (n_dev >= 4) {
        pol = sparse_policy(ATTN_DECODE_TIDAL, 96);
        devices_case(check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256), &g_case, 4, "0,1,2,3", &pol,
                     "FlexPrefill + TidalDecode");
    }
    /* refused: a GPU that is not here, rank 0 elsewhere than the executor's,
     * a count that is not the ranks' */
    char missing[32], first[32];
    snprintf(missing, sizeof missing, "0,%d", n_dev);
    snprintf(first, sizeof first, "%d,0", n_dev > 1 ? 1 : n_dev);
    const char *bad[] = {missing, first, "0", "0,0,0"};
    for (int i = 0; i < 4; i++) {
        char err[256] = "";
        model_exec_opts_t o = {.device = "cuda:0",
                               .max_batch_tokens = 64,
                               .kv_blocks = 16,
                               .context_ranks = 2,
                               .context_min_tokens = 100,
                               .context_devices = bad[i]};
        model_exec_t *e = model_exec_create(m, &o, err, sizeof err);
        ck_assert_msg(e == NULL, "parallel.devices = %s was taken", bad[i]);
        ck_assert_msg(strstr(err, "parallel.devices") != NULL, "%s: %s", bad[i], err);
        fprintf(stderr, "check_cuda: parallel.devices = %s refused: %s\n", bad[i], err);
    }
    model_free(m);
}
END_TEST

/* A sharded sequence alone and beside a short and a long one, its logits
 * the same bits: dense with 3 ranks, FlexPrefill and Quest with 2,
 * AnchorAttention with 3. */
START_TEST(test_cp_exec_batch) {
    model_t *m = check_cuda_tiny(GGML_TYPE_Q8_0, 4, 2, 256);
    cp_exec_batch_run(m, &g_case, 3, NULL);
    attn_policy_t pol = sparse_policy(ATTN_DECODE_QUEST, 128);
    cp_exec_batch_run(m, &g_case, 2, &pol);
    pol = anchor_policy(0.f);
    cp_exec_batch_run(m, &g_case, 3, &pol);
    model_free(m);
}
END_TEST

/* Into check_cuda's case (before its last test, which breaks the device). */
void cuda_cp_add(TCase *tc) {
    tcase_add_test(tc, test_cp_exec_dense);
    tcase_add_test(tc, test_cp_exec_sparse);
    tcase_add_test(tc, test_cp_exec_batch);
    tcase_add_test(tc, test_cp_exec_gemma);
    tcase_add_test(tc, test_cp_exec_devices);
}
