/* Token sampling: penalties, logit bias, temperature, top-k, top-p, min-p,
 * seeded per-request RNG, and top-n log-probabilities.
 *
 * Order (as vLLM): logit bias and banned tokens → repetition / presence /
 * frequency penalties → log-probabilities reported from these processed
 * logits before temperature → temperature → top-k → top-p → min-p → draw.
 * Temperature 0 is greedy (argmax, ties to the lowest id). One sampler per
 * choice; not thread-safe. */
#ifndef LC_SAMPLER_H
#define LC_SAMPLER_H

#include <stdint.h>

typedef struct {
    int32_t token;
    float bias;
} sampler_bias_t;

typedef struct {
    float temperature;                // 0 = greedy; default 1
    float top_p;                      // (0,1], default 1
    int top_k;                        // <= 0 = off
    float min_p;                      // [0,1], default 0
    float repetition_penalty;         // > 0, default 1 (off); applies to prompt and output tokens
    float presence_penalty;           // [-2,2], output tokens only
    float frequency_penalty;          // [-2,2], output tokens only
    const sampler_bias_t *logit_bias; // (n_logit_bias), caller-owned, outlives the sampler
    int n_logit_bias;
    uint64_t seed;    // RNG seed
    int n_logprobs;   // top alternatives to report, 0..20
    int skip_logprob; // 1: nothing reads the result's log-probabilities (left NaN, n_top 0): saves a pass of
                      // exp over the vocabulary per token
} sampler_params_t;

#define SAMPLER_MAX_LOGPROBS 20

typedef struct {
    int32_t token;
    float logprob; // log-probability of the chosen token
    int n_top;
    int32_t top_ids[SAMPLER_MAX_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_LOGPROBS];
} sampler_result_t;

typedef struct sampler sampler_t;

void sampler_params_default(sampler_params_t *p);
/* prompt tokens feed the repetition penalty. NULL on OOM. */
sampler_t *sampler_create(const sampler_params_t *p, int n_vocab, const int32_t *prompt, int n_prompt);
void sampler_destroy(sampler_t *s);
/* Records a generated token (penalties). */
void sampler_accept(sampler_t *s, int32_t token);
/* Samples from logits (n_vocab, modified in place). banned tokens (e.g. EOS
 * before min_tokens) get -inf. Returns 0 or a negative status. */
int sampler_sample(sampler_t *s, float *logits, const int32_t *banned, int n_banned, sampler_result_t *out);
/* The greedy token of x (n): the largest value, ties to the lowest id, NaN
 * and -inf never win; -1 when none is above -inf (vectorised, the same
 * token on every CPU). */
int32_t sampler_argmax(const float *x, int n);
/* 1 when a draw is the argmax of the raw logits: greedy, no log-probabilities,
 * no logit bias, no penalties (banned tokens and grammars are the caller's). */
int sampler_plain_greedy(const sampler_t *s);
/* 1 when a draw is softmax(logits / temperature) over every allowed token
 * and nothing else: temperature > 0, no top-k, top-p or min-p, no
 * log-probabilities, bias or penalties. Such a draw is the first token, in id
 * order, whose running sum of exp(l / T - max) passes u × the total, for
 * one uniform u of the sampler's stream: sampler_peek_uniform() hands that
 * u to whoever draws it (an executor that draws on the GPU) without taking
 * it; sampler_skip_uniform() takes it once the token is drawn, so a draw
 * that never happens (a slice dropped before its step) leaves the stream. */
int sampler_plain_temperature(const sampler_t *s);
float sampler_temperature(const sampler_t *s);
double sampler_peek_uniform(const sampler_t *s);
void sampler_skip_uniform(sampler_t *s);
/* Log-softmax of raw logits at token plus the top-n (echo of prompt tokens). */
void sampler_logprobs_of(const float *logits, int n_vocab, int32_t token, int n_top, sampler_result_t *out);

#endif
