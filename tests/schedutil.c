/* See schedutil.h. */
#include "schedutil.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kv/kv.h"
#include "model/sampler.h"

void drain(out_t *o) {
    sched_event_t ev[32];
    int n;
    while ((n = sched_req_poll(o->r, ev, 32)) > 0)
        for (int i = 0; i < n; i++) {
            int c = ev[i].choice;
            ck_assert(!o->done);
            switch (ev[i].kind) {
            case SCHED_EV_TOKEN:
                ck_assert_int_eq(o->finish[c], SCHED_FINISH_NONE);
                o->lp[c][o->n[c]] = ev[i].has_lp ? ev[i].lp.logprob : NAN;
                o->toks[c][o->n[c]++] = ev[i].token;
                ck_assert_uint_lt(o->tlen[c] + ev[i].text_len, sizeof o->text[c]);
                memcpy(o->text[c] + o->tlen[c], ev[i].text, ev[i].text_len);
                o->tlen[c] += ev[i].text_len;
                o->text[c][o->tlen[c]] = 0;
                break;
            case SCHED_EV_FINISH: o->finish[c] = ev[i].finish; break;
            case SCHED_EV_DONE: o->done = 1; break;
            case SCHED_EV_PROMPT_LOGPROBS:
                o->n_prompt_lps = ev[i].n_prompt_lps;
                o->prompt_lp1 = ev[i].prompt_lps[1].logprob;
                break;
            }
            sched_event_clear(&ev[i]);
        }
}

void mk_prompt(int32_t *p, int n, unsigned seed, int n_vocab) {
    for (int i = 0; i < n; i++) p[i] = 3 + (int32_t)(rand_r(&seed) % (unsigned)(n_vocab - 3));
}

void greedy_params(sched_params_t *p, const int32_t *prompt, int n, int max_tokens) {
    memset(p, 0, sizeof *p);
    p->prompt = prompt;
    p->n_prompt = n;
    p->n_choices = 1;
    p->max_tokens = max_tokens;
    p->ignore_eos = 1;
    p->logprobs = 0; // the chosen token's log-probability only
    p->prompt_logprobs = -1;
    sampler_params_default(&p->sampling);
    p->sampling.temperature = 0;
    sched_attn_spec_default(&p->attn);
}

void submit(sched_t *s, out_t *o, const sched_params_t *p) {
    memset(o, 0, sizeof *o);
    int st;
    o->r = sched_req_create(p, &st);
    ck_assert_ptr_nonnull(o->r);
    o->n_choices = p->n_choices;
    ck_assert_int_eq(sched_submit(s, o->r), 0);
}

void finish_out(out_t *o) {
    drain(o);
    ck_assert(o->done);
    sched_req_release(o->r);
    o->r = NULL;
}

void assert_pool_clean(sched_t *s) {
    kv_pool_t *kv = sched_kv(s);
    ck_assert_int_eq(kv_pool_n_used(kv), 0);
    ck_assert_int_eq(kv_pool_n_available(kv), kv_pool_n_blocks(kv));
}

/* Same tokens and the same log-probabilities, bit for bit. */
void assert_same(const out_t *got, const out_t *ref, int n, const char *what) {
    ck_assert_msg(got->n[0] == n && ref->n[0] >= n, "%s: %d tokens, want %d", what, got->n[0], n);
    ck_assert_msg(memcmp(got->toks[0], ref->toks[0], (size_t)n * sizeof(int32_t)) == 0, "%s: tokens differ", what);
    ck_assert_msg(memcmp(got->lp[0], ref->lp[0], (size_t)n * sizeof(float)) == 0,
                  "%s: log-probabilities differ (the logits changed)", what);
}
