/* Check suite for Gemma 3 270M, the real 32K-context model
 * (scripts/fetch_model.sh gemma3-270m): its hyper-parameters as loaded
 * against the config transformers derives from the same GGUF, and logits and
 * greedy continuations against Hugging Face transformers
 * (tests/fixtures/logits_gemma3.json, scripts/gen_logits_fixtures_gemma.py),
 * on prompts shorter and longer than the 512-token sliding window.
 *
 * The model is $LACUNA_GEMMA_MODEL (make check sets it) or
 * models/gemma-3-270m-q4_k_m.gguf in the source tree. Without it the suite is
 * skipped (exit 77), unless LACUNA_REQUIRE_MODEL=1: then it fails. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/exec.h"
#include "model/model.h"
#include "ops/ops.h"
#include "testutil.h"

#ifndef LC_SRCDIR
#define LC_SRCDIR "."
#endif

static char model_path[1024];

/* ---- helpers --------------------------------------------------------------------- */
static cJSON *fixture(void) {
    char *js = tu_read_file(LC_SRCDIR "/tests/fixtures/logits_gemma3.json");
    ck_assert_msg(js != NULL, "fixture missing: " LC_SRCDIR "/tests/fixtures/logits_gemma3.json");
    cJSON *doc = cJSON_Parse(js);
    free(js);
    ck_assert_ptr_nonnull(doc);
    return doc;
}

static model_t *load(void) {
    char err[512];
    model_t *m = model_load(model_path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    return m;
}

/* Runs tokens[0..n) of one sequence from pos0 in chunks of at most `chunk`
 * (reserving blocks); logits into `logits` when given: the last token's, or
 * with all set every token's (n <= chunk). */
static void run(model_exec_t *c, kv_pool_t *kv, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int chunk,
                int decode, int all, float *logits) {
    for (int i = 0; i < n; i += chunk) {
        int k = n - i < chunk ? n - i : chunk;
        ck_assert_int_eq(kv_seq_reserve(kv, s, pos0 + i + k), 0);
        ck_assert_int_eq(kv_seq_prepare_write(kv, s, pos0 + i, pos0 + i + k), 0);
        int want = logits && i + k == n;
        model_seq_t seq = {.tok0 = 0,
                           .n_tok = k,
                           .pos0 = pos0 + i,
                           .kv = s,
                           .generated = decode,
                           .logits_mode = want ? (all ? MODEL_LOGITS_ALL : MODEL_LOGITS_LAST) : MODEL_LOGITS_NONE,
                           .logits = want ? logits : NULL};
        model_batch_t b = {.n_tokens = k, .tokens = tok + i, .n_seqs = 1, .seqs = &seq};
        ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
        s->n_tokens = pos0 + i + k;
    }
}

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* ---- hyper-parameters --------------------------------------------------------------- */
/* Every constant the loader derived, against the GGUF's own values and the
 * config transformers builds from the same file (stored in the fixture):
 * which layers slide, the window, both RoPE bases, the query scale. */
START_TEST(test_hparams) {
    model_t *m = load();
    const model_hparams_t *hp = model_hparams(m);
    cJSON *doc = fixture(), *hf = cJSON_GetObjectItem(doc, "hf_config");
    ck_assert_str_eq(hp->arch, "gemma3");
    ck_assert_int_eq(hp->arch_id, MODEL_ARCH_GEMMA3);
    ck_assert_int_eq(hp->n_layers, 18);
    ck_assert_int_eq(hp->n_embd, 640);
    ck_assert_int_eq(hp->n_heads, 4);
    ck_assert_int_eq(hp->n_kv_heads, 1);
    ck_assert_int_eq(hp->head_dim, 256);
    ck_assert_int_eq(hp->n_ff, 2048);
    ck_assert_int_eq(hp->n_ctx_train, 32768);
    ck_assert_int_eq(hp->n_vocab, 262144);
    ck_assert(hp->tied_embeddings);
    ck_assert(hp->rope_neox);
    ck_assert(hp->qk_norm && hp->post_norms && hp->ffn_geglu);
    ck_assert_float_eq_tol(hp->embd_scale, sqrtf(640.0f), 1e-6);
    ck_assert_double_eq_tol(hp->rms_eps, cJSON_GetObjectItem(hf, "rms_norm_eps")->valuedouble, 1e-12);
    double qpas = cJSON_GetObjectItem(hf, "query_pre_attn_scalar")->valuedouble;
    ck_assert_float_eq_tol(hp->attn_scale, 1.0 / sqrt(qpas), 1e-7);
    ck_assert_float_eq_tol(model_attn_shape(m).scale, 1.0 / sqrt(qpas), 1e-7);
    ck_assert(cJSON_IsNull(cJSON_GetObjectItem(hf, "final_logit_softcapping")));
    ck_assert_float_eq(hp->final_softcap, 0.0f);
    ck_assert_str_eq(cJSON_GetObjectItem(hf, "hidden_activation")->valuestring, "gelu_pytorch_tanh");
    ck_assert_int_eq(hp->sliding_window, cJSON_GetObjectItem(hf, "sliding_window")->valueint);
    ck_assert_int_eq(hp->sliding_window, 512);
    cJSON *rp = cJSON_GetObjectItem(hf, "rope_parameters");
    double theta_full = cJSON_GetObjectItem(cJSON_GetObjectItem(rp, "full_attention"), "rope_theta")->valuedouble;
    double theta_swa = cJSON_GetObjectItem(cJSON_GetObjectItem(rp, "sliding_attention"), "rope_theta")->valuedouble;
    cJSON *lt = cJSON_GetObjectItem(hf, "layer_types");
    ck_assert_int_eq(cJSON_GetArraySize(lt), hp->n_layers);
    int n_sliding = 0;
    for (int l = 0; l < hp->n_layers; l++) {
        int sliding = strcmp(cJSON_GetArrayItem(lt, l)->valuestring, "sliding_attention") == 0;
        ck_assert_msg(sliding == (hp->layer[l].window > 0), "layer %d", l);
        ck_assert_int_eq(hp->layer[l].window, sliding ? 512 : 0);
        ck_assert_float_eq(hp->layer[l].rope_theta, (float)(sliding ? theta_swa : theta_full));
        ck_assert_float_eq(hp->layer[l].rope_freq_scale, 1.0f);
        n_sliding += sliding;
    }
    ck_assert_int_eq(n_sliding, 15); // 5 of every 6
    ck_assert_float_eq(hp->layer[0].rope_theta, 10000.0f);
    ck_assert_float_eq(hp->layer[5].rope_theta, 1000000.0f);
    cJSON_Delete(doc);
    model_free(m);
}
END_TEST

/* ---- against Hugging Face ------------------------------------------------------------- */
/* Exact path (f32 panels for every row, decode included): both sides
 * dequantize the same weights and compute in f32, so the last position must
 * agree within REL_TOL of max |logit|, the SmolLM2 test's tolerance, on the
 * top 64 and on every 64th vocabulary entry, and the greedy continuation must
 * be HF's for 32 tokens. That is checked teacher-forced, HF's tokens fed in
 * one chunk with every row's logits: our argmax must be HF's token at every
 * step, which is the same as our free-running greedy tokens being HF's, at a
 * 30th of the cost (one pass of the 262K-row LM head, not 32). The prompt is
 * prefilled in chunks of 200 tokens, so chunks also cross the window's
 * edge.
 *
 * Quantized path (8-bit activations, what decode tokens take when serving):
 * the prompt prefilled as above, then HF's greedy tokens fed back one decode
 * step at a time; HF's token must be our argmax wherever HF's own top-2
 * margin is at least Q8_TIE, and always within Q8_TIE of our best logit (the
 * SmolLM2 test's bounds). */
#define REL_TOL 1e-3
#define Q8_TIE 0.4

static void vs_hf(int quant) {
    ops_mm_set_q8(quant);
    const char *tag = quant ? "q8" : "f32";
    cJSON *doc = fixture();
    model_t *m = load();
    const int V = model_hparams(m)->n_vocab;
    ck_assert_int_eq(V, cJSON_GetObjectItem(doc, "n_vocab")->valueint);
    enum { CHUNK = 200 };
    char xerr[256];
    model_exec_opts_t eo = {.device = "cpu", .max_batch_tokens = CHUNK, .block_size = 16, .kv_blocks = 4096 / 16};
    model_exec_t *c = model_exec_create(m, &eo, xerr, sizeof xerr);
    ck_assert_msg(c != NULL, "%s", xerr);
    kv_config_t cfg = model_exec_kv_config(c);
    kv_pool_t *kv = kv_pool_create(&cfg);
    ck_assert_ptr_nonnull(kv);
    ck_assert_int_eq(model_exec_bind(c, kv), 0);
    float *lg = malloc((size_t)V * sizeof(float)), *ref = malloc((size_t)V * sizeof(float));
    float *tf = malloc((size_t)32 * V * sizeof(float)); // teacher-forced rows
    int32_t *tok = malloc(8192 * sizeof *tok);
    cJSON *cs;
    int ci = 0, n_long = 0;
    double worst = 0, worst_short = 0;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(doc, "cases")) {
        cJSON *ids = cJSON_GetObjectItem(cs, "ids");
        int n = cJSON_GetArraySize(ids);
        ck_assert_int_le(n, 4096);
        for (int i = 0; i < n; i++) tok[i] = cJSON_GetArrayItem(ids, i)->valueint;
        n_long += n > model_hparams(m)->sliding_window;
        kv_seq_t s;
        kv_seq_init(&s);
        run(c, kv, &s, tok, n, 0, CHUNK, 0, 0, lg);
        /* the last position: top 64 and every stride-th entry */
        cJSON *tid = cJSON_GetObjectItem(cs, "last_top_ids"), *tl = cJSON_GetObjectItem(cs, "last_top_logits");
        double mx = fabs(cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "last_stats"), "max")->valuedouble), err = 0;
        for (int j = 0; j < cJSON_GetArraySize(tid); j++) {
            double d = fabs(lg[cJSON_GetArrayItem(tid, j)->valueint] - cJSON_GetArrayItem(tl, j)->valuedouble);
            err = d > err ? d : err;
        }
        int stride = cJSON_GetObjectItem(cs, "last_stride")->valueint, ns = (V + stride - 1) / stride;
        size_t got = tu_b64_decode(cJSON_GetObjectItem(cs, "last_strided_f32_b64")->valuestring, (unsigned char *)ref,
                                   (size_t)V * sizeof(float));
        ck_assert_uint_eq(got, (size_t)ns * sizeof(float));
        for (int j = 0; j < ns; j++) {
            double d = fabs(lg[(size_t)j * stride] - ref[j]);
            if (!(d <= err)) err = d; // NaN fails
            mx = fabs(ref[j]) > mx ? fabs(ref[j]) : mx;
        }
        double rel = err / mx;
        worst = rel > worst ? rel : worst;
        fprintf(stderr, "check_gemma: %s case %d (%d tokens): max abs logit error %.3g, relative %.2e\n", tag, ci, n,
                err, rel);
        ck_assert_msg(rel < REL_TOL, "%s case %d: relative logit error %g", tag, ci, rel); // prefill: f32 either way
        ck_assert_int_eq(argmax(lg, V), cJSON_GetArrayItem(tid, 0)->valueint);
        /* 32 greedy tokens */
        cJSON *gr = cJSON_GetObjectItem(cs, "greedy"), *gm = cJSON_GetObjectItem(cs, "greedy_margins");
        int ng = cJSON_GetArraySize(gr);
        ck_assert_int_eq(ng, 32);
        int32_t gt[32];
        for (int g = 0; g < ng; g++) gt[g] = cJSON_GetArrayItem(gr, g)->valueint;
        if (!quant) run(c, kv, &s, gt, ng - 1, n, CHUNK, 0, 1, tf);
        for (int g = 0; g < ng; g++) {
            int32_t want = gt[g];
            const float *row = quant || g == 0 ? lg : tf + (size_t)(g - 1) * V;
            int32_t best = argmax(row, V);
            if (!quant) {
                ck_assert_msg(best == want, "case %d: greedy token %d is %d, HF %d", ci, g, best, want);
            } else {
                double margin = cJSON_GetArrayItem(gm, g)->valuedouble, shortfall = row[best] - row[want];
                worst_short = shortfall > worst_short ? shortfall : worst_short;
                ck_assert_msg(shortfall <= Q8_TIE, "q8 case %d step %d: HF token %d is %.3f below our best %d", ci, g,
                              want, shortfall, best);
                ck_assert_msg(best == want || margin < Q8_TIE, "q8 case %d step %d: argmax %d, HF %d (margin %.3f)", ci,
                              g, best, want, margin);
            }
            if (quant && g + 1 < ng) run(c, kv, &s, &want, 1, n + g, 1, 1, 0, lg);
        }
        kv_seq_release(kv, &s);
        ci++;
    }
    fprintf(stderr, "check_gemma: %s worst relative logit error %.2e over %d prompts (%d past the window)%s", tag,
            worst, ci, n_long, quant ? "" : "\n");
    if (quant) fprintf(stderr, ", worst HF-token shortfall %.3f\n", worst_short);
    ck_assert_int_ge(ci, 5);
    ck_assert_int_ge(n_long, 2);
    free(lg), free(ref), free(tok), free(tf);
    cJSON_Delete(doc);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
    ops_mm_set_q8(1);
}

START_TEST(test_vs_hf) { vs_hf(0); }
END_TEST

START_TEST(test_vs_hf_q8) { vs_hf(1); }
END_TEST

int main(void) {
    const char *p = tu_gemma_path();
    if (!p) return tu_exit_status(0);
    snprintf(model_path, sizeof model_path, "%s", p);
    Suite *s = suite_create("gemma");
    TCase *tc = tcase_create("gemma3-270m");
    tcase_set_timeout(tc, 1200);
    tcase_add_test(tc, test_hparams);
    tcase_add_test(tc, test_vs_hf);
    tcase_add_test(tc, test_vs_hf_q8);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
