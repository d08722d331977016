/* Helpers of the engine suites (check_sched, check_sched_window): a
 * request's events gathered per choice, greedy requests, and bitwise
 * comparison of outputs. Each fails the calling test (ck_assert) on error. */
#ifndef LC_TESTS_SCHEDUTIL_H
#define LC_TESTS_SCHEDUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/sched.h"

typedef struct {
    sched_req_t *r;
    int n_choices;
    int32_t toks[4][256];
    float lp[4][256]; // each token's log-probability: any change in the logits shows in its bits
    int n[4];
    char text[4][2048];
    size_t tlen[4];
    sched_finish_t finish[4];
    int done, n_prompt_lps;
    float prompt_lp1;
} out_t;

/* Moves o's queued events into o. */
void drain(out_t *o);
/* n random token ids >= 3 (past the synthetic vocabulary's specials). */
void mk_prompt(int32_t *p, int n, unsigned seed, int n_vocab);
/* One greedy choice of max_tokens tokens, EOS ignored, each token's log-probability reported. */
void greedy_params(sched_params_t *p, const int32_t *prompt, int n, int max_tokens);
/* Creates the request into a cleared o and submits it. */
void submit(sched_t *s, out_t *o, const sched_params_t *p);
/* Drains o, which must be done, and releases its request. */
void finish_out(out_t *o);
/* No block in use and every block available. */
void assert_pool_clean(sched_t *s);
/* Same tokens and the same log-probabilities, bit for bit, for the first n. */
void assert_same(const out_t *got, const out_t *ref, int n, const char *what);

#endif
