/* OpenAI request bodies → native request structs. Every field's type and
 * range is checked here, once, at the edge; nothing past this file sees JSON.
 * The parsers are pure functions of (body, limits) so a fuzz target can call
 * them directly. */
#ifndef SRV_PARSE_H
#define SRV_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "model/sampler.h"
#include "scheduler/sched.h"

/* An OpenAI error, ready to render: {"error":{message,type,param,code}}. */
typedef struct {
    int status;     // HTTP status
    char type[40];  // "invalid_request_error", ...
    char param[64]; // "" renders as null
    char code[48];  // "" renders as null
    char message[512];
} srv_error_t;

void srv_error_set(srv_error_t *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...) __attribute__((format(printf, 6, 7)));

/* One prompt of /v1/completions: text, or token ids (exactly one is set). */
typedef struct {
    char *text; // malloc'd, NUL-terminated; NULL for a token prompt
    size_t text_len;
    int32_t *ids; // malloc'd (n_ids); NULL for a text prompt
    int n_ids;
} srv_prompt_t;

typedef struct {
    char *role;    // system | developer | user | assistant | tool
    char *content; // text (array-of-parts content is joined)
} srv_message_t;

typedef enum { SRV_REQ_COMPLETION = 0, SRV_REQ_CHAT } srv_req_kind_t;

/* A validated generation request. Owned by whoever parsed it; free with
 * srv_request_free. */
typedef struct {
    srv_req_kind_t kind;
    char *model;           // as sent
    srv_prompt_t *prompts; // (n_prompts) completions
    int n_prompts;
    srv_message_t *messages; // (n_messages) chat
    int n_messages;
    int max_tokens; // -1: not given (chat: up to the context)
    int min_tokens;
    int n;
    int best_of;  // >= n; == n unless given
    int logprobs; // completions: -1 or 0..5; chat: -1, or top_logprobs 0..20
    int echo;
    char *stop[SCHED_MAX_STOP];
    int n_stop;
    int32_t *stop_token_ids;
    int n_stop_token_ids;
    sampler_params_t sampling; // logit_bias points into the array below
    sampler_bias_t *logit_bias;
    int has_seed;
    int stream;
    int include_usage;
    int ignore_eos;
    int add_special_tokens; // chat: -1 default
    sched_attn_spec_t attn;
    char *suffix, *user;
} srv_request_t;

typedef struct {
    int max_n; // n and best_of
    int max_prompts;
} srv_limits_t;

/* Return 0 and fill out, or a negative status and fill err (400 with the
 * offending param). out is always safe to srv_request_free afterwards. */
int srv_parse_completion(const char *body, size_t len, const srv_limits_t *lim, srv_request_t *out, srv_error_t *err);
int srv_parse_chat(const char *body, size_t len, const srv_limits_t *lim, srv_request_t *out, srv_error_t *err);
void srv_request_free(srv_request_t *r);

/* POST /tokenize: {prompt | messages, add_special_tokens}. */
typedef struct {
    char *prompt; // NULL when messages were given
    srv_message_t *messages;
    int n_messages;
    int add_special_tokens; // default 1
    char *model;            // may be NULL
} srv_tokenize_req_t;
int srv_parse_tokenize(const char *body, size_t len, srv_tokenize_req_t *out, srv_error_t *err);
void srv_tokenize_req_free(srv_tokenize_req_t *r);

/* POST /detokenize: {tokens}. *ids malloc'd, owned by the caller. */
int srv_parse_detokenize(const char *body, size_t len, int32_t **ids, int *n_ids, srv_error_t *err);

/* Fills the "server default" values of the spec (auto / negative). */
void srv_attn_spec_default(sched_attn_spec_t *s);

#endif
