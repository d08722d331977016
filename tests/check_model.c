/* Check suite for the model module: the forward pass on tiny random models
 * made by mkmodel (batching, chunked prefill and decode must agree with
 * one-shot prefill), load-time validation, and the real SmolLM2 model against
 * logits and greedy continuations computed by Hugging Face transformers
 * (tests/fixtures/logits_smollm2.json, scripts/gen_logits_fixtures.py). */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cpu.h"
#include "common/status.h"
#include "model/chat.h"
#include "model/exec.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "ops/device.h"
#include "ops/ops.h"
#include "testutil.h"
#include "tools/mkmodel.h"

/* ---- helpers --------------------------------------------------------------------- */
static char tmp_path[64];
/* The real model (tu_model_path(), set in main()); NULL: its tests are left
 * out and the program reports SKIP. */
static const char *g_model_path;

/* The model mkmodel writes for o, loaded (its temporary file removed). */
static model_t *write_and_load(const mkmodel_opts_t *o) {
    strcpy(tmp_path, "/tmp/check_model_XXXXXX");
    int fd = mkstemp(tmp_path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char err[512];
    ck_assert_msg(mkmodel_write(o, tmp_path, err, sizeof err) == 0, "%s", err);
    model_t *m = model_load(tmp_path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    unlink(tmp_path);
    return m;
}

static model_t *tiny_model(uint32_t type, uint64_t seed) {
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    o.type = type;
    o.seed = seed;
    o.n_layers = 3;
    return write_and_load(&o);
}

/* A CPU executor for batches of up to max_tokens rows with a store of
 * n_blocks blocks of 16 tokens. */
static model_exec_t *mk_exec(const model_t *m, int max_tokens, int64_t n_blocks) {
    char err[256];
    model_exec_opts_t o = {.device = "cpu", .max_batch_tokens = max_tokens, .block_size = 16, .kv_blocks = n_blocks};
    model_exec_t *e = model_exec_create(m, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    return e;
}

/* The host pool of e's store, bound to it. */
static kv_pool_t *make_pool(model_exec_t *e) {
    kv_config_t cfg = model_exec_kv_config(e);
    kv_pool_t *p = kv_pool_create(&cfg);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(model_exec_bind(e, p), 0);
    return p;
}

static void tokens_for(int32_t *t, int n, int n_vocab, unsigned seed) {
    for (int i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        t[i] = (int32_t)((seed >> 8) % (unsigned)n_vocab);
    }
}

/* Runs tokens[0..n) of one sequence at pos0 alone (reserving blocks). */
static void run_one(model_exec_t *c, kv_pool_t *kv, kv_seq_t *s, const int32_t *tok, int n, int64_t pos0, int mode,
                    int decode, float *logits) {
    ck_assert_int_eq(kv_seq_reserve(kv, s, pos0 + n), 0);
    ck_assert_int_eq(kv_seq_prepare_write(kv, s, pos0, pos0 + n), 0);
    model_seq_t seq = {
        .tok0 = 0, .n_tok = n, .pos0 = pos0, .kv = s, .generated = decode, .logits_mode = mode, .logits = logits};
    model_batch_t b = {.n_tokens = n, .tokens = tok, .n_seqs = 1, .seqs = &seq};
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    s->n_tokens = pos0 + n;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) {
        double x = fabs((double)a[i] - b[i]);
        if (!(x <= d)) d = x; // NaN propagates as a failure
    }
    return d;
}

/* Tiny models: logits are O(1..10); 1e-4 absolute is a few ulps of f32 sums. */
#define TINY_TOL 1e-4

/* ---- tiny random models -------------------------------------------------------------- */
START_TEST(test_batched_equals_alone) {
    model_t *m = tiny_model(GGML_TYPE_F32, 7);
    int V = model_hparams(m)->n_vocab;
    enum { NS = 3 };
    const int len[NS] = {5, 11, 17};
    int total = 0;
    for (int i = 0; i < NS; i++) total += len[i];
    int32_t *tok = malloc(total * sizeof *tok);
    float *ref = malloc((size_t)total * V * sizeof(float)), *got = malloc((size_t)total * V * sizeof(float));
    tokens_for(tok, total, V, 42);
    model_exec_t *c = mk_exec(m, 64, 64);
    kv_pool_t *kv = make_pool(c);
    /* each alone */
    int off = 0;
    for (int i = 0; i < NS; i++) {
        kv_seq_t s;
        kv_seq_init(&s);
        run_one(c, kv, &s, tok + off, len[i], 0, 2, 0, ref + (size_t)off * V);
        kv_seq_release(kv, &s);
        off += len[i];
    }
    /* all together */
    kv_seq_t s[NS];
    model_seq_t seqs[NS];
    off = 0;
    for (int i = 0; i < NS; i++) {
        kv_seq_init(&s[i]);
        ck_assert_int_eq(kv_seq_reserve(kv, &s[i], len[i]), 0);
        seqs[i] =
            (model_seq_t){.tok0 = off, .n_tok = len[i], .kv = &s[i], .logits_mode = 2, .logits = got + (size_t)off * V};
        off += len[i];
    }
    model_batch_t b = {.n_tokens = total, .tokens = tok, .n_seqs = NS, .seqs = seqs};
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    double d = max_abs_diff(ref, got, (size_t)total * V);
    ck_assert_msg(d == 0, "batched vs alone: max |diff| %g (must be bitwise equal)", d);
    /* logits_mode 1 gives exactly the last row; mode 0 leaves the buffer alone */
    float *last = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < NS; i++) {
        kv_seq_release(kv, &s[i]);
        kv_seq_init(&s[i]);
    }
    float sentinel = 12345.0f;
    got[0] = sentinel;
    off = 0;
    for (int i = 0; i < NS; i++) {
        ck_assert_int_eq(kv_seq_reserve(kv, &s[i], len[i]), 0);
        seqs[i].logits_mode = i == 1 ? 1 : 0;
        seqs[i].logits = i == 1 ? last : got;
    }
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    ck_assert_float_eq(got[0], sentinel);
    d = max_abs_diff(last, ref + (size_t)(len[0] + len[1] - 1) * V, V);
    ck_assert_msg(d < TINY_TOL, "mode 1 vs mode 2 last row: %g", d);
    for (int i = 0; i < NS; i++) kv_seq_release(kv, &s[i]);
    free(last), free(tok), free(ref), free(got);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
}
END_TEST

START_TEST(test_chunked_and_decode) {
    model_t *m = tiny_model(GGML_TYPE_F32, 11);
    int V = model_hparams(m)->n_vocab;
    enum { N = 37 };
    int32_t tok[N];
    tokens_for(tok, N, V, 7);
    float *ref = malloc((size_t)N * V * sizeof(float)), *got = malloc((size_t)N * V * sizeof(float));
    model_exec_t *c = mk_exec(m, N, 32);
    kv_pool_t *kv = make_pool(c);
    kv_seq_t s;
    kv_seq_init(&s);
    run_one(c, kv, &s, tok, N, 0, 2, 0, ref);
    kv_seq_release(kv, &s);

    /* chunked prefill in three chunks that straddle block boundaries */
    const int ch[3] = {13, 9, N - 22};
    kv_seq_init(&s);
    for (int i = 0, p = 0; i < 3; p += ch[i], i++) run_one(c, kv, &s, tok + p, ch[i], p, 2, 0, got + (size_t)p * V);
    double d = max_abs_diff(ref, got, (size_t)N * V);
    ck_assert_msg(d == 0, "chunked vs one-shot: max |diff| %g (must be bitwise equal)", d);
    kv_seq_release(kv, &s);

    /* prefill 30 tokens, then decode the remaining 7 one by one */
    kv_seq_init(&s);
    run_one(c, kv, &s, tok, 30, 0, 1, 0, got);
    d = max_abs_diff(got, ref + (size_t)29 * V, V);
    ck_assert_msg(d < TINY_TOL, "prefill last row: %g", d);
    for (int p = 30; p < N; p++) {
        run_one(c, kv, &s, tok + p, 1, p, 1, 1, got);
        d = max_abs_diff(got, ref + (size_t)p * V, V);
        ck_assert_msg(d < TINY_TOL, "decode at %d vs prefill row: %g", p, d);
    }
    kv_seq_release(kv, &s);

    /* a mixed batch: one decode token of A next to a prefill chunk of B */
    kv_seq_t a, bq;
    kv_seq_init(&a), kv_seq_init(&bq);
    run_one(c, kv, &a, tok, 20, 0, 0, 0, NULL);
    ck_assert_int_eq(kv_seq_reserve(kv, &a, 21), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &bq, 12), 0);
    int32_t mixed[13];
    mixed[0] = tok[20];
    memcpy(mixed + 1, tok, 12 * sizeof(int32_t));
    float *la = malloc((size_t)V * sizeof(float)), *lb = malloc((size_t)12 * V * sizeof(float));
    model_seq_t seqs[2] = {
        {.tok0 = 0, .n_tok = 1, .pos0 = 20, .kv = &a, .generated = 1, .logits_mode = 1, .logits = la},
        {.tok0 = 1, .n_tok = 12, .pos0 = 0, .kv = &bq, .logits_mode = 2, .logits = lb},
    };
    model_batch_t b = {.n_tokens = 13, .tokens = mixed, .n_seqs = 2, .seqs = seqs};
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    d = max_abs_diff(la, ref + (size_t)20 * V, V);
    ck_assert_msg(d < TINY_TOL, "mixed batch decode row: %g", d);
    d = max_abs_diff(lb, ref, (size_t)12 * V);
    ck_assert_msg(d == 0, "mixed batch prefill rows: %g (must be bitwise equal)", d);
    kv_seq_release(kv, &a), kv_seq_release(kv, &bq);
    free(la), free(lb), free(ref), free(got);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
}
END_TEST

START_TEST(test_bad_batches) {
    model_t *m = tiny_model(GGML_TYPE_F32, 3);
    int V = model_hparams(m)->n_vocab;
    model_exec_t *c = mk_exec(m, 8, 8);
    kv_pool_t *kv = make_pool(c);
    kv_seq_t s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_reserve(kv, &s, 16), 0);
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    float *lg = malloc((size_t)8 * V * sizeof(float));
    model_seq_t q = {.tok0 = 0, .n_tok = 4, .kv = &s, .logits_mode = 1, .logits = lg};
    model_batch_t b = {.n_tokens = 4, .tokens = tok, .n_seqs = 1, .seqs = &q};
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    b.n_tokens = 9; // more than the context was made for
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    b.n_tokens = 5; // slices do not cover the batch
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    b.n_tokens = 4;
    tok[2] = V; // token out of range
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    tok[2] = 3;
    q.pos0 = 14; // beyond the reserved blocks
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    q.pos0 = 0;
    q.logits_mode = 3; // not a logits mode
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    q.logits_mode = MODEL_LOGITS_LAST;
    model_seq_t two[2] = {q, q}; // overlapping slices
    two[0].n_tok = 2;
    b.n_seqs = 2;
    b.seqs = two;
    ck_assert_int_eq(model_exec_forward(c, kv, &b), LC_EINVAL);
    kv_seq_release(kv, &s);
    free(lg);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
}
END_TEST

/* Every quantized type loads and gives logits close to the f32 model made
 * from the same random draws. */
START_TEST(test_quantized_types) {
    static const uint32_t types[] = {GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_1};
    /* max |diff| relative to max |f32 logit| (logits here reach ~30) */
    static const double tol[] = {2e-3, 3e-2, 0.2};
    model_t *ref = tiny_model(GGML_TYPE_F32, 5);
    int V = model_hparams(ref)->n_vocab;
    int32_t tok[9];
    tokens_for(tok, 9, V, 3);
    float *lr = malloc((size_t)V * sizeof(float)), *lq = malloc((size_t)V * sizeof(float));
    model_exec_t *c = mk_exec(ref, 9, 4);
    kv_pool_t *kv = make_pool(c);
    kv_seq_t s;
    kv_seq_init(&s);
    run_one(c, kv, &s, tok, 9, 0, 1, 0, lr);
    kv_seq_release(kv, &s);
    model_exec_destroy(c);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        model_t *m = tiny_model(types[i], 5);
        c = mk_exec(m, 9, 4);
        ck_assert_int_eq(model_exec_bind(c, kv), 0);
        kv_seq_init(&s);
        run_one(c, kv, &s, tok, 9, 0, 1, 0, lq);
        kv_seq_release(kv, &s);
        double mx = 0;
        for (int j = 0; j < V; j++) mx = fabs(lr[j]) > mx ? fabs(lr[j]) : mx;
        double d = max_abs_diff(lr, lq, V) / mx;
        fprintf(stderr, "check_model: %s vs f32: relative logit difference %.2e\n", ggml_type_name(types[i]), d);
        ck_assert_msg(d < tol[i], "%s vs f32: relative difference %g", ggml_type_name(types[i]), d);
        ck_assert_msg(d > 0 || types[i] == GGML_TYPE_F32, "%s identical to f32?", ggml_type_name(types[i]));
        model_exec_destroy(c);
        model_free(m);
    }
    kv_pool_destroy(kv);
    free(lr), free(lq);
    model_free(ref);
}
END_TEST

/* Bitwise row invariance of the whole forward pass on every kernel set, for
 * f32 and 4-bit weights: a prompt's logits are the same in one chunk, in
 * uneven chunks and batched with other sequences; generated tokens (the 8-bit
 * path and the decode attention) are the same decoded one at a time,
 * recomputed as one slice of generated rows, and next to prompt chunks. */
static void rows_bitwise(uint32_t type, lc_cpu_level_t level) {
    model_t *m = tiny_model(type, 13);
    const int V = model_hparams(m)->n_vocab;
    enum { NP = 40, NG = 12 };
    int32_t tok[NP + NG];
    tokens_for(tok, NP + NG, V, 99);
    float *ref = malloc((size_t)(NP + NG) * V * sizeof(float)), *got = malloc((size_t)(NP + NG) * V * sizeof(float));
    model_exec_t *c = mk_exec(m, 96, 64);
    kv_pool_t *kv = make_pool(c);
    char what[96];
    snprintf(what, sizeof what, "%s on %s", ggml_type_name(type), lc_cpu_level_name(level));
    /* the reference: the prompt in one chunk, then each generated token decoded */
    kv_seq_t a;
    kv_seq_init(&a);
    run_one(c, kv, &a, tok, NP, 0, MODEL_LOGITS_ALL, 0, ref);
    for (int g = 0; g < NG; g++)
        run_one(c, kv, &a, tok + NP + g, 1, NP + g, MODEL_LOGITS_LAST, 1, ref + (size_t)(NP + g) * V);
    kv_seq_release(kv, &a);
    /* the prompt in uneven chunks, then all generated tokens as one slice */
    const int cuts[] = {0, 1, 17, 18, 33, NP};
    kv_seq_init(&a);
    for (int i = 0; i + 1 < (int)(sizeof cuts / sizeof cuts[0]); i++)
        run_one(c, kv, &a, tok + cuts[i], cuts[i + 1] - cuts[i], cuts[i], MODEL_LOGITS_ALL, 0,
                got + (size_t)cuts[i] * V);
    run_one(c, kv, &a, tok + NP, NG, NP, MODEL_LOGITS_ALL, 1, got + (size_t)NP * V);
    kv_seq_release(kv, &a);
    ck_assert_msg(memcmp(got, ref, (size_t)NP * V * sizeof(float)) == 0, "%s: chunked prompt differs", what);
    ck_assert_msg(memcmp(got + (size_t)NP * V, ref + (size_t)NP * V, (size_t)NG * V * sizeof(float)) == 0,
                  "%s: generated rows recomputed as one slice differ from their decode steps", what);
    /* a batch: A's prompt chunk [20, NP), B's full prompt, A's generated
     * tokens 0..3 as one slice would need A's prompt done, so C = another
     * sequence that already holds the prompt decodes its generated token 5 */
    kv_seq_t sa, sb, sc;
    kv_seq_init(&sa), kv_seq_init(&sb), kv_seq_init(&sc);
    run_one(c, kv, &sa, tok, 20, 0, MODEL_LOGITS_NONE, 0, NULL);
    run_one(c, kv, &sc, tok, NP, 0, MODEL_LOGITS_NONE, 0, NULL);
    run_one(c, kv, &sc, tok + NP, 5, NP, MODEL_LOGITS_NONE, 1, NULL);
    ck_assert_int_eq(kv_seq_reserve(kv, &sa, NP), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &sb, NP), 0);
    ck_assert_int_eq(kv_seq_reserve(kv, &sc, NP + 6), 0);
    ck_assert_int_eq(kv_seq_prepare_write(kv, &sc, NP + 5, NP + 6), 0);
    int32_t btok[NP - 20 + NP + 1];
    memcpy(btok, tok + 20, (NP - 20) * sizeof(int32_t));
    memcpy(btok + (NP - 20), tok, NP * sizeof(int32_t));
    btok[2 * NP - 20] = tok[NP + 5];
    float *la = malloc((size_t)(NP - 20) * V * sizeof(float)), *lb = malloc((size_t)NP * V * sizeof(float));
    float *lc = malloc((size_t)V * sizeof(float));
    model_seq_t seqs[3] = {
        {.tok0 = 0, .n_tok = NP - 20, .pos0 = 20, .kv = &sa, .logits_mode = MODEL_LOGITS_ALL, .logits = la},
        {.tok0 = NP - 20, .n_tok = NP, .pos0 = 0, .kv = &sb, .logits_mode = MODEL_LOGITS_ALL, .logits = lb},
        {.tok0 = 2 * NP - 20,
         .n_tok = 1,
         .pos0 = NP + 5,
         .kv = &sc,
         .generated = 1,
         .logits_mode = MODEL_LOGITS_LAST,
         .logits = lc},
    };
    model_batch_t b = {.n_tokens = 2 * NP - 19, .tokens = btok, .n_seqs = 3, .seqs = seqs};
    ck_assert_int_eq(model_exec_forward(c, kv, &b), 0);
    ck_assert_msg(memcmp(la, ref + (size_t)20 * V, (size_t)(NP - 20) * V * sizeof(float)) == 0,
                  "%s: batched prompt chunk differs", what);
    ck_assert_msg(memcmp(lb, ref, (size_t)NP * V * sizeof(float)) == 0, "%s: batched prompt differs", what);
    ck_assert_msg(memcmp(lc, ref + (size_t)(NP + 5) * V, (size_t)V * sizeof(float)) == 0,
                  "%s: batched generated row differs", what);
    kv_seq_release(kv, &sa), kv_seq_release(kv, &sb), kv_seq_release(kv, &sc);
    free(la), free(lb), free(lc), free(ref), free(got);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
}

START_TEST(test_rows_bitwise) {
    for (lc_cpu_level_t l = LC_CPU_SCALAR; l <= lc_cpu_detected(); l++) {
        lc_cpu_set_max(l);
        rows_bitwise(GGML_TYPE_F32, l);
        rows_bitwise(GGML_TYPE_Q4_1, l);
        rows_bitwise(GGML_TYPE_Q8_0, l);
    }
    lc_cpu_set_max(LC_CPU_AVX512);
}
END_TEST

/* The executor's device choice: "cpu" and "auto" without a GPU run on the CPU;
 * an explicit GPU that cannot be had is an error with a reason, never a
 * silent CPU fallback; nonsense is refused. */
START_TEST(test_exec_devices) {
    model_t *m = tiny_model(GGML_TYPE_F32, 3);
    char err[256] = "";
    model_exec_opts_t o = {.device = "cpu", .max_batch_tokens = 8, .kv_blocks = 4};
    model_exec_t *e = model_exec_create(m, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    ck_assert_str_eq(model_exec_device(e), "cpu");
    ck_assert_int_eq(model_exec_is_gpu(e), 0);
    ck_assert_int_eq(model_exec_kv_config(e).block_size, 16);
    model_exec_destroy(e);
    const int gpus = lc_device_count(NULL, 0);
    o.device = "auto";
    e = model_exec_create(m, &o, err, sizeof err);
    ck_assert_msg(e != NULL, "%s", err);
    ck_assert_int_eq(model_exec_is_gpu(e), gpus > 0);
    model_exec_destroy(e);
    if (gpus == 0) {
        o.device = "cuda:0";
        ck_assert_ptr_null(model_exec_create(m, &o, err, sizeof err));
        ck_assert_msg(strstr(err, "cuda:0") != NULL, "%s", err);
    }
    o.device = "cuda:255";
    ck_assert_ptr_null(model_exec_create(m, &o, err, sizeof err));
    o.device = "tpu";
    ck_assert_ptr_null(model_exec_create(m, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "tpu") != NULL, "%s", err);
    /* ranks on GPUs (parallel.devices) for a model on the CPU: refused */
    o.device = "cpu";
    o.context_ranks = 2;
    o.context_devices = "0,1";
    ck_assert_ptr_null(model_exec_create(m, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "parallel.devices") != NULL, "%s", err);
    model_free(m);
}
END_TEST

START_TEST(test_load_errors) {
    char err[512] = "";
    ck_assert_ptr_null(model_load("/nonexistent/model.gguf", err, sizeof err));
    ck_assert_msg(strstr(err, "/nonexistent/model.gguf") != NULL, "%s", err);
    /* a model whose attn_q has the wrong shape: the error names the tensor */
    gguf_writer_t *w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "llama.embedding_length", 32);
    gguf_writer_set_u32(w, "llama.block_count", 1);
    gguf_writer_set_u32(w, "llama.feed_forward_length", 64);
    gguf_writer_set_u32(w, "llama.attention.head_count", 2);
    static float zeros[64 * 64];
    uint64_t d_embd[2] = {32, 16}, d_norm[1] = {32}, d_bad[2] = {32, 16};
    gguf_writer_add_tensor(w, "token_embd.weight", 2, d_embd, GGML_TYPE_F32, zeros, 32 * 16 * 4);
    gguf_writer_add_tensor(w, "output_norm.weight", 1, d_norm, GGML_TYPE_F32, zeros, 32 * 4);
    gguf_writer_add_tensor(w, "blk.0.attn_norm.weight", 1, d_norm, GGML_TYPE_F32, zeros, 32 * 4);
    gguf_writer_add_tensor(w, "blk.0.attn_q.weight", 2, d_bad, GGML_TYPE_F32, zeros, 32 * 16 * 4);
    strcpy(tmp_path, "/tmp/check_model_XXXXXX");
    int fd = mkstemp(tmp_path);
    close(fd);
    ck_assert_int_eq(gguf_writer_write(w, tmp_path), 0);
    gguf_writer_destroy(w);
    ck_assert_ptr_null(model_load(tmp_path, err, sizeof err));
    ck_assert_msg(strstr(err, "blk.0.attn_q.weight") && strstr(err, "[32, 16]") && strstr(err, "[32, 32]"), "%s", err);
    /* wrong architecture */
    w = gguf_writer_create();
    gguf_writer_set_str(w, "general.architecture", "mamba");
    ck_assert_int_eq(gguf_writer_write(w, tmp_path), 0);
    gguf_writer_destroy(w);
    ck_assert_ptr_null(model_load(tmp_path, err, sizeof err));
    ck_assert_msg(strstr(err, "unsupported architecture 'mamba'") != NULL, "%s", err);
    /* gemma3 without one of the keys its GGUFs state: refused, naming the key */
    static const char *const gkeys[] = {
        "embedding_length",         "block_count",
        "feed_forward_length",      "attention.head_count",
        "attention.head_count_kv",  "context_length",
        "attention.key_length",     "attention.value_length",
        "attention.sliding_window", "attention.layer_norm_rms_epsilon",
        "rope.freq_base",
    };
    const int nk = (int)(sizeof gkeys / sizeof gkeys[0]);
    for (int skip = 0; skip <= nk; skip++) { // skip == nk: every key there, the tensors missing
        w = gguf_writer_create();
        gguf_writer_set_str(w, "general.architecture", "gemma3");
        char key[96];
        for (int k = 0; k < nk; k++) {
            if (k == skip) continue;
            snprintf(key, sizeof key, "gemma3.%s", gkeys[k]);
            if (strstr(key, "epsilon") || strstr(key, "freq_base"))
                gguf_writer_set_f32(w, key, strstr(key, "epsilon") ? 1e-6f : 1e6f);
            else
                gguf_writer_set_u32(w, key, strstr(key, "head_count") ? 1 : 256);
        }
        ck_assert_int_eq(gguf_writer_write(w, tmp_path), 0);
        gguf_writer_destroy(w);
        ck_assert_ptr_null(model_load(tmp_path, err, sizeof err));
        if (skip < nk)
            snprintf(key, sizeof key, "metadata gemma3.%s: missing", gkeys[skip]);
        else
            snprintf(key, sizeof key, "tensor token_embd.weight missing");
        ck_assert_msg(strstr(err, key) != NULL, "want '%s', got: %s", key, err);
    }
    unlink(tmp_path);
}
END_TEST

/* mkmodel's Gemma 3 shape (the GPU benchmarks' Gemma 3 270M stand-in):
 * heads wider than n_embd / n_heads, every 3rd layer global, QK-norm and
 * post-norms present; it runs on the CPU executor with finite logits. */
START_TEST(test_mkmodel_gemma) {
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    o.n_layers = 6;
    o.n_embd = 128;
    o.n_heads = 2;
    o.n_kv_heads = 1;
    o.head_dim = 256;
    o.window = 32;
    o.swa_pattern = 3;
    o.type = GGML_TYPE_Q8_0;
    model_t *m = write_and_load(&o);
    char err[512];
    const model_hparams_t *hp = model_hparams(m);
    ck_assert_str_eq(hp->arch, "gemma3");
    ck_assert_int_eq(hp->head_dim, 256);
    ck_assert(hp->qk_norm && hp->post_norms && hp->ffn_geglu);
    for (int l = 0; l < 6; l++) ck_assert_int_eq(hp->layer[l].window, (l + 1) % 3 ? 32 : 0);
    o.head_dim = 7; // odd
    ck_assert_int_eq(mkmodel_write(&o, tmp_path, err, sizeof err), LC_EINVAL);
    model_exec_t *e = mk_exec(m, 64, 64);
    kv_pool_t *kv = make_pool(e);
    const int V = hp->n_vocab, n = 50;
    int32_t tok[50];
    tokens_for(tok, n, V, 5);
    float *logits = malloc(sizeof(float) * (size_t)V);
    kv_seq_t s;
    kv_seq_init(&s);
    run_one(e, kv, &s, tok, n, 0, MODEL_LOGITS_LAST, 0, logits);
    for (int i = 0; i < V; i++) ck_assert(isfinite(logits[i]));
    kv_seq_release(kv, &s);
    free(logits);
    kv_pool_destroy(kv);
    model_exec_destroy(e);
    model_free(m);
}
END_TEST

/* mkmodel's synthetic vocabulary gives a working byte-level BPE tokenizer and
 * the ChatML template; --vocab-from copies a real model's tokenizer. */
START_TEST(test_vocab_and_template) {
    model_t *m = tiny_model(GGML_TYPE_F32, 1);
    ck_assert_ptr_nonnull(model_chat_template(m));
    ck_assert_int_eq(model_chat_template(m)->family, CHAT_CHATML);
    const tok_t *t = model_tok(m);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(tok_n_vocab(t), model_hparams(m)->n_vocab);
    ck_assert_int_eq(tok_eos(t), 2);
    const char *text = "<|im_start|>user\nthe question, and the answer<|im_end|>";
    tok_ids_t ids = {0};
    ck_assert_int_eq(tok_encode(t, text, strlen(text), 0, 1, &ids), 0);
    ck_assert_int_eq(ids.ids[0], 1);
    ck_assert_int_eq(ids.ids[ids.n - 1], 2);
    ck_assert_msg(ids.n < strlen(text) - 30, "merges unused: %zu tokens", ids.n); // " the", " answer" merge
    char *back = NULL;
    size_t blen;
    ck_assert_int_eq(tok_decode(t, ids.ids, ids.n, 0, &back, &blen), 0);
    ck_assert_str_eq(back, text);
    free(back);
    tok_ids_free(&ids);
    model_free(m);

    const char *real = g_model_path;
    if (!real) return; // main() reported the skip
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    o.n_layers = 1;
    o.vocab_from = real;
    strcpy(tmp_path, "/tmp/check_model_XXXXXX");
    int fd = mkstemp(tmp_path);
    close(fd);
    char err[512];
    ck_assert_msg(mkmodel_write(&o, tmp_path, err, sizeof err) == 0, "%s", err);
    m = model_load(tmp_path, err, sizeof err);
    unlink(tmp_path);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_int_eq(model_hparams(m)->n_vocab, 49152);
    ck_assert_ptr_nonnull(model_chat_template(m));
    ck_assert_int_eq(model_chat_template(m)->family, CHAT_CHATML);
    model_free(m);
}
END_TEST

/* ---- the real model against Hugging Face transformers ------------------------------ */
/* The real model against Hugging Face transformers, on both matmul paths.
 *
 * Exact path (f32 panels: what prefill rows take): both sides dequantize the same Q4_1/Q8_0 weights and compute in
 * f32, so the tolerance is 1e-3 of max |logit| (different summation orders
 * over 30 layers; measured ~2e-6) and the free-running greedy continuation
 * must be HF's token for token.
 *
 * Quantized path (8-bit activations, what decode tokens take; here the
 * prompt is fed one decode step at a time so that every position goes
 * through it): activations lose ~0.5% each (per-32 scale, see
 * check_qmatmul), which over 30 layers moves logits by up to ~5% of the
 * largest. Measured over the five prompts (AVX2 / scalar kernels / the same
 * rounding emulated in f32 before sgemm, which rules out a kernel bug):
 * last-position max error 4.6e-2 / 4.4e-2 / 4.3e-2 of max |logit|; worst
 * top-20 entry of any position 1.7 / 2.6 / 1.7 logits. Tolerances Q8_REL_TOL
 * and Q8_TOP_ABS leave ~1.5x. Free-running greedy then diverges where HF's
 * own top-2 margin is below that error (seen at margins 0.01-0.22), so the
 * decode check is teacher-forced: feed HF's tokens; at every step HF's token
 * must be our argmax whenever HF's margin is at least Q8_TIE, and always
 * within Q8_TIE of our best logit (worst seen 0.27). */
#define REAL_REL_TOL 1e-3
#define Q8_REL_TOL 8e-2
#define Q8_TOP_ABS 4.0
#define Q8_TIE 0.4

static void real_vs_hf(int quant) {
    const char *path = g_model_path;
    ops_mm_set_q8(quant);
    const double tol = quant ? Q8_REL_TOL : REAL_REL_TOL;
    const char *tag = quant ? "q8" : "f32";
    char fixture[1024];
    snprintf(fixture, sizeof fixture, "%s/tests/fixtures/logits_smollm2.json", tu_srcdir());
    char *json = tu_read_file(fixture);
    ck_assert_msg(json != NULL, "fixture missing: %s", fixture);
    cJSON *doc = cJSON_Parse(json);
    ck_assert_ptr_nonnull(doc);
    char err[512];
    model_t *m = model_load(path, err, sizeof err);
    ck_assert_msg(m != NULL, "%s", err);
    int V = model_hparams(m)->n_vocab;
    ck_assert_int_eq(V, cJSON_GetObjectItem(doc, "n_vocab")->valueint);
    model_exec_t *c = mk_exec(m, 128, 64);
    kv_pool_t *kv = make_pool(c);
    float *ref = malloc((size_t)V * sizeof(float)), *lg = malloc((size_t)128 * V * sizeof(float));
    cJSON *cases = cJSON_GetObjectItem(doc, "cases"), *cs;
    int ci = 0;
    double worst_rel = 0, worst_short = 0;
    cJSON_ArrayForEach(cs, cases) {
        cJSON *ids = cJSON_GetObjectItem(cs, "ids");
        int n = cJSON_GetArraySize(ids);
        ck_assert_int_le(n, 96);
        int32_t tok[128];
        for (int i = 0; i < n; i++) tok[i] = cJSON_GetArrayItem(ids, i)->valueint;
        kv_seq_t s;
        kv_seq_init(&s);
        if (quant)
            for (int i = 0; i < n; i++) run_one(c, kv, &s, tok + i, 1, i, 1, 1, lg + (size_t)i * V);
        else
            run_one(c, kv, &s, tok, n, 0, 2, 0, lg);
        /* full last-position vector */
        size_t got = tu_b64_decode(cJSON_GetObjectItem(cs, "last_logits_f32_b64")->valuestring, (unsigned char *)ref,
                                   (size_t)V * sizeof(float));
        ck_assert_uint_eq(got, (size_t)V * sizeof(float));
        const float *last = lg + (size_t)(n - 1) * V;
        double mx = 0;
        for (int i = 0; i < V; i++) mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
        double rel = max_abs_diff(last, ref, V) / mx;
        worst_rel = rel > worst_rel ? rel : worst_rel;
        fprintf(stderr, "check_model: %s case %d (%d tokens): max rel logit error %.2e\n", tag, ci, n, rel);
        ck_assert_msg(rel < tol, "%s case %d: relative logit error %g", tag, ci, rel);
        /* top-20 of every position */
        cJSON *pt = cJSON_GetObjectItem(cs, "positions_top"), *row;
        int p = 0;
        cJSON_ArrayForEach(row, pt) {
            cJSON *tid = cJSON_GetObjectItem(row, "ids"), *tl = cJSON_GetObjectItem(row, "logits");
            double rmx = fabs(cJSON_GetArrayItem(tl, 0)->valuedouble);
            for (int j = 0; j < cJSON_GetArraySize(tid); j++) {
                double want = cJSON_GetArrayItem(tl, j)->valuedouble;
                double have = lg[(size_t)p * V + cJSON_GetArrayItem(tid, j)->valueint];
                ck_assert_msg(fabs(have - want) <= (quant ? Q8_TOP_ABS : tol * rmx + 1e-4),
                              "%s case %d pos %d top %d: %g vs %g", tag, ci, p, j, have, want);
            }
            p++;
        }
        /* greedy continuation: free-running on the exact path, teacher-forced
         * (HF's tokens fed back) on the quantized one */
        cJSON *gr = cJSON_GetObjectItem(cs, "greedy"), *gm = cJSON_GetObjectItem(cs, "greedy_margins");
        int ng = cJSON_GetArraySize(gr);
        const float *cur = last;
        for (int g = 0; g < ng; g++) {
            int32_t want = cJSON_GetArrayItem(gr, g)->valueint, best = 0;
            for (int i = 1; i < V; i++)
                if (cur[i] > cur[best]) best = i;
            if (!quant) {
                ck_assert_msg(best == want, "case %d: greedy token %d is %d, HF %d", ci, g, best, want);
            } else {
                double margin = cJSON_GetArrayItem(gm, g)->valuedouble, shortfall = cur[best] - cur[want];
                worst_short = shortfall > worst_short ? shortfall : worst_short;
                ck_assert_msg(shortfall <= Q8_TIE, "q8 case %d step %d: HF token %d is %.3f below our best %d", ci, g,
                              want, shortfall, best);
                ck_assert_msg(best == want || margin < Q8_TIE, "q8 case %d step %d: argmax %d, HF %d (HF margin %.3f)",
                              ci, g, best, want, margin);
            }
            if (g + 1 == ng) break;
            run_one(c, kv, &s, &want, 1, n + g, 1, 1, lg);
            cur = lg;
        }
        kv_seq_release(kv, &s);
        ci++;
    }
    if (quant)
        fprintf(stderr, "check_model: q8 worst relative logit error %.2e, worst HF-token shortfall %.3f\n", worst_rel,
                worst_short);
    ck_assert_int_eq(ci, 5);
    free(ref), free(lg), free(json);
    cJSON_Delete(doc);
    kv_pool_destroy(kv);
    model_exec_destroy(c);
    model_free(m);
    ops_mm_set_q8(1);
}

START_TEST(test_real_model_vs_hf) { real_vs_hf(0); }
END_TEST

START_TEST(test_real_model_vs_hf_q8) { real_vs_hf(1); }
END_TEST

static Suite *model_suite(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("tiny");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_batched_equals_alone);
    tcase_add_test(tc, test_chunked_and_decode);
    tcase_add_test(tc, test_bad_batches);
    tcase_add_test(tc, test_rows_bitwise);
    tcase_add_test(tc, test_exec_devices);
    tcase_add_test(tc, test_quantized_types);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_vocab_and_template);
    tcase_add_test(tc, test_mkmodel_gemma);
    suite_add_tcase(s, tc);
    if (g_model_path) {
        tc = tcase_create("real");
        tcase_set_timeout(tc, 300);
        tcase_add_test(tc, test_real_model_vs_hf);
        tcase_add_test(tc, test_real_model_vs_hf_q8);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    g_model_path = tu_model_path();
    return tu_run(model_suite());
}
