/* OpenAI request bodies → native request structs. Every field's type and
 * range is checked here, once, at the edge; nothing past this file sees JSON.
 * The parsers are pure functions of (body, limits) so a fuzz target can call
 * them directly. */
#ifndef SRV_PARSE_H
#define SRV_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "model/chat.h"
#include "model/grammar.h"
#include "model/sampler.h"
#include "scheduler/sched.h"

struct cJSON;

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

/* A call a past assistant turn made (messages[i].tool_calls[j]). */
typedef struct {
    char *name;
    char *arguments; // as the chat template prints it (chat_json_render of the arguments string)
} srv_tool_call_t;

typedef struct {
    char *role;                  // system | developer | user | assistant | tool
    char *content;               // text (array-of-parts content is joined)
    srv_tool_call_t *tool_calls; // (n_tool_calls) assistant turns
    int n_tool_calls;
} srv_message_t;

/* One entry of `tools` (type "function"). */
typedef struct {
    char *name;     // [A-Za-z0-9_-]{1,64}
    char *rendered; // the whole tool object as the chat template prints it
} srv_tool_t;

typedef enum { SRV_FMT_TEXT = 0, SRV_FMT_JSON_OBJECT, SRV_FMT_JSON_SCHEMA } srv_format_t;
typedef enum { SRV_TOOLS_NONE = 0, SRV_TOOLS_AUTO, SRV_TOOLS_REQUIRED, SRV_TOOLS_NAMED } srv_tool_choice_t;

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
    /* Structured output (parse_format.c). grammar is the compiled constraint
     * of the output (response_format, or the forced tool call), an owned
     * reference or NULL. */
    srv_format_t format;
    gram_t *grammar;
    srv_tool_t *tools; // (n_tools)
    int n_tools;
    srv_tool_choice_t tool_choice;
    int tool_named;          // SRV_TOOLS_NAMED: index into tools
    int parallel_tool_calls; // default 1
} srv_request_t;

typedef struct {
    int max_n; // n and best_of
    int max_prompts;
    /* How the served model writes tool calls; NULL when its chat template
     * has no tool support (tools are then refused). tool_family names the
     * template in messages. */
    const chat_tool_syntax_t *tool_syntax;
    const char *tool_family;
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

/* parse_format.c: response_format, tools, tool_choice, message tool calls,
 * and the table of OpenAI fields we refuse or ignore. Each returns 0 or -1
 * with err filled. */
int srv__parse_format(const struct cJSON *o, const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r,
                      srv_error_t *err);
int srv__parse_msg_tool_calls(const struct cJSON *msg, int i, srv_message_t *m, srv_error_t *err);
int srv__check_fields(const struct cJSON *o, srv_req_kind_t kind, srv_error_t *err);
void srv__free_format(srv_request_t *r);
void srv__free_message(srv_message_t *m);

#endif
