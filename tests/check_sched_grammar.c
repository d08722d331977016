/* Constrained decoding through the engine on a tiny random-weight model
 * (mkmodel's synthetic vocabulary): a request under a grammar produces text
 * of the grammar's language that ends by itself, and its tokens are the
 * same whether it runs alone or batched with unconstrained requests and
 * other constrained ones (n > 1 choices included). */
#include <check.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "model/json_schema.h"
#include "model/model.h"
#include "scheduler/sched.h"
#include "tools/mkmodel.h"

static model_t *g_model;
static gram_vocab_t *g_vocab;

static void setup(void) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/lacuna_check_sched_grammar_%d.gguf", (int)getpid());
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    o.n_ctx = 1024;
    char err[256];
    ck_assert_int_eq(mkmodel_write(&o, path, err, sizeof err), 0);
    g_model = model_load(path, err, sizeof err);
    unlink(path);
    ck_assert_msg(g_model != NULL, "%s", err);
    g_vocab = gram_vocab_create(model_tok(g_model));
    ck_assert_ptr_nonnull(g_vocab);
}

static void teardown(void) {
    gram_vocab_destroy(g_vocab);
    model_free(g_model);
}

static gram_t *compile(const char *schema) {
    char err[256];
    int st;
    gram_t *g;
    if (schema) {
        cJSON *j = cJSON_Parse(schema);
        g = js_compile_schema(j, "", &st, err, sizeof err);
        cJSON_Delete(j);
    } else {
        g = js_compile_any_object(&st, err, sizeof err);
    }
    ck_assert_msg(g != NULL, "%s", err);
    return g;
}

static sched_t *mk_sched(int max_batch, int chunk) {
    sched_config_t c;
    sched_config_default(&c);
    c.kv_blocks = 512;
    c.max_batch_tokens = max_batch;
    c.prefill_chunk = chunk;
    c.max_running = 32;
    char err[256];
    sched_t *s = sched_create(g_model, &c, err, sizeof err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

#define MAXTOK 400
typedef struct {
    sched_req_t *r;
    int32_t toks[2][MAXTOK];
    int n[2];
    char text[2][8192];
    size_t tlen[2];
    sched_finish_t finish[2];
    int done;
} out_t;

static void drain(out_t *o) {
    sched_event_t ev[32];
    int n;
    while ((n = sched_req_poll(o->r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            int c = ev[i].choice;
            if (ev[i].kind == SCHED_EV_TOKEN) {
                o->toks[c][o->n[c]++] = ev[i].token;
                ck_assert_uint_lt(o->tlen[c] + ev[i].text_len, sizeof o->text[c]);
                memcpy(o->text[c] + o->tlen[c], ev[i].text, ev[i].text_len);
                o->tlen[c] += ev[i].text_len;
                o->text[c][o->tlen[c]] = 0;
            } else if (ev[i].kind == SCHED_EV_FINISH) {
                o->finish[c] = ev[i].finish;
            } else if (ev[i].kind == SCHED_EV_DONE) {
                o->done = 1;
            }
            sched_event_clear(&ev[i]);
        }
}

/* Request i: a prompt, 2 choices, seeded sampling; every third one
 * unconstrained. */
static void params(sched_params_t *p, int32_t *prompt, int i, gram_t *g) {
    memset(p, 0, sizeof *p);
    int nv = model_hparams(g_model)->n_vocab;
    int n = 3 + (i * 7) % 40;
    for (int k = 0; k < n; k++) prompt[k] = 3 + (int32_t)((unsigned)(k * 131 + i * 17) % (unsigned)(nv - 3));
    p->prompt = prompt;
    p->n_prompt = n;
    p->n_choices = 2;
    p->max_tokens = i % 3 == 2 ? 20 : MAXTOK - 10;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    sampler_params_default(&p->sampling);
    p->sampling.seed = 1000 + (uint64_t)i;
    sched_attn_spec_default(&p->attn);
    if (i % 3 != 2) {
        p->grammar = g;
        p->grammar_vocab = g_vocab;
    }
}

static void run(sched_t *s, out_t *o, int n, const int *which, gram_t *const *gs) {
    static int32_t prompts[16][64];
    for (int k = 0; k < n; k++) {
        sched_params_t p;
        params(&p, prompts[k], which[k], gs[which[k] % 2]);
        memset(&o[k], 0, sizeof o[k]);
        int st;
        o[k].r = sched_req_create(&p, &st);
        ck_assert_ptr_nonnull(o[k].r);
        ck_assert_int_eq(sched_submit(s, o[k].r), 0);
    }
    ck_assert_int_eq(sched_run_until_idle(s), 0);
    for (int k = 0; k < n; k++) {
        drain(&o[k]);
        ck_assert(o[k].done);
        sched_req_release(o[k].r);
    }
}

START_TEST(test_constrained_batch_invariant) {
    gram_t *gs[2] = {
        compile(
            "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},"
            "\"ok\":{\"type\":\"boolean\"}},\"required\":[\"name\",\"age\",\"ok\"],\"additionalProperties\":false}"),
        compile("{\"type\":\"array\",\"items\":{\"enum\":[\"the\",\"model\",\"hello world\",1,null]},\"maxItems\":5}"),
    };
    enum { N = 9 };
    static out_t alone[N], batched[N];
    for (int i = 0; i < N; i++) {
        sched_t *s = mk_sched(512, 512);
        int w = i;
        run(s, &alone[i], 1, &w, gs);
        sched_destroy(s);
    }
    int all[N];
    for (int i = 0; i < N; i++) all[i] = i;
    sched_t *s = mk_sched(40, 16); // small steps: prompts split and mixed with decodes
    run(s, batched, N, all, gs);
    sched_destroy(s);
    int parsed = 0;
    for (int i = 0; i < N; i++)
        for (int c = 0; c < 2; c++) {
            ck_assert_int_eq(batched[i].n[c], alone[i].n[c]);
            ck_assert_mem_eq(batched[i].toks[c], alone[i].toks[c], sizeof(int32_t) * (size_t)alone[i].n[c]);
            ck_assert_str_eq(batched[i].text[c], alone[i].text[c]);
            if (getenv("CHECK_DUMP"))
                fprintf(stderr, "%d/%d %d [%s]\n", i, c, batched[i].finish[c], batched[i].text[c]);
            if (i % 3 == 2) continue;
            /* constrained: ended by the grammar, and it parses */
            if (batched[i].finish[c] == SCHED_FINISH_STOP) {
                cJSON *j = cJSON_Parse(batched[i].text[c]);
                ck_assert_msg(j != NULL, "request %d choice %d: not JSON: %s", i, c, batched[i].text[c]);
                ck_assert(i % 2 == 0 ? cJSON_IsObject(j) : cJSON_IsArray(j));
                cJSON_Delete(j);
                parsed++;
            }
        }
    ck_assert_int_ge(parsed, 6); // random weights: most still close in time
    gram_release(gs[0]);
    gram_release(gs[1]);
}
END_TEST

/* JSON mode on the engine: EOS is banned until the object is complete, and
 * the grammar ends the choice even with ignore_eos. */
START_TEST(test_json_mode_ends) {
    gram_t *g = compile(NULL);
    sched_t *s = mk_sched(512, 512);
    int ended = 0;
    for (int i = 0; i < 6; i++) {
        static int32_t prompt[64];
        sched_params_t p;
        params(&p, prompt, i * 3, g);
        p.ignore_eos = 1;
        out_t o;
        memset(&o, 0, sizeof o);
        int st;
        o.r = sched_req_create(&p, &st);
        ck_assert_int_eq(sched_submit(s, o.r), 0);
        ck_assert_int_eq(sched_run_until_idle(s), 0);
        drain(&o);
        sched_req_release(o.r);
        for (int c = 0; c < 2; c++) {
            ck_assert(o.finish[c] == SCHED_FINISH_STOP || o.finish[c] == SCHED_FINISH_LENGTH);
            ck_assert(o.tlen[c] > 0 && o.text[c][0] == '{');
            if (o.finish[c] == SCHED_FINISH_STOP) {
                cJSON *j = cJSON_Parse(o.text[c]);
                ck_assert_msg(j && cJSON_IsObject(j), "not an object: %s", o.text[c]);
                cJSON_Delete(j);
                ended++;
            }
        }
    }
    ck_assert_int_gt(ended, 0);
    sched_destroy(s);
    gram_release(g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("sched_grammar");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_constrained_batch_invariant);
    tcase_add_test(tc, test_json_mode_ends);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
