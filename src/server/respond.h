/* Response bodies: OpenAI error objects, completion and chat JSON, SSE
 * chunks. Everything is rendered with cJSON_PrintUnformatted, so an SSE event
 * is always one line. Token text goes through a caller-supplied piece
 * callback so that these writers can be tested without a tokenizer. */
#ifndef SRV_RESPOND_H
#define SRV_RESPOND_H

#include <stddef.h>
#include <stdint.h>

#include "scheduler/sched.h"
#include "server/parse.h"

/* A growable byte buffer (SSE output, request bodies). Zero-initialise;
 * srv_buf_free releases. Append functions return 0 or LC_ENOMEM. */
typedef struct {
    char *data;
    size_t len, cap;
} srv_buf_t;
int srv_buf_append(srv_buf_t *b, const void *p, size_t n);
void srv_buf_consume(srv_buf_t *b, size_t n); // drops n bytes from the front
void srv_buf_free(srv_buf_t *b);

/* Bytes of a token (tok_piece); NULL for an unknown id. */
typedef const char *(*srv_piece_cb)(void *ud, int32_t id, size_t *len);

/* What every body of one response shares. */
typedef struct {
    const char *id; // "cmpl-…" / "chatcmpl-…"
    int64_t created;
    const char *model; // served name
    srv_req_kind_t kind;
    srv_piece_cb piece;
    void *piece_ud;
} srv_resp_ctx_t;

typedef struct {
    int prompt_tokens, completion_tokens, cached_tokens;
    int prefill_method, decode_method; // attn_*_method_t; -1: unknown
    double prefill_density, decode_density;
} srv_usage_t;

/* A tool call the model made (chat with tools). */
typedef struct {
    char *name;
    char *arguments; // compact JSON text of the arguments object
} srv_call_t;

/* One finished choice of a non-streaming response. */
typedef struct {
    int index;
    char *text; // with the echoed prompt when echo
    size_t len;
    sched_logprob_t *lps; // (n_lps); prompt entries first when echo; logprob NaN = null
    int n_lps;
    int want_lps; // render a logprobs object (else null)
    sched_finish_t finish;
    double cum_logprob; // for best_of
    /* chat with tools: the calls (content becomes null when text is empty,
     * finish_reason "tool_calls" when the choice stopped by itself) */
    const srv_call_t *calls; // (n_calls)
    int n_calls;
    const char *call_id; // ids are "<call_id>_<k>"
} srv_choice_t;

/* The bodies below are malloc'd NUL-terminated strings owned by the caller;
 * NULL on OOM. */
char *srv_render_error(const srv_error_t *e);
char *srv_render_response(const srv_resp_ctx_t *c, const srv_choice_t *ch, int n, const srv_usage_t *u);
char *srv_render_models(const char *served_name, int64_t created);

/* SSE: each appends one "data: …\n\n" event to out; 0 or LC_ENOMEM. */
int srv_sse_json(srv_buf_t *out, const char *json);
/* A delta for one choice. role_first: chat's opening {"role":"assistant"}.
 * lps may be NULL (n_lps 0) or carry the tokens of this delta. finish NONE
 * renders finish_reason null. */
int srv_sse_chunk(srv_buf_t *out, const srv_resp_ctx_t *c, int index, int role_first, const char *text, size_t len,
                  const sched_logprob_t *lps, int n_lps, int want_lps, size_t text_offset, sched_finish_t finish);
int srv_sse_usage(srv_buf_t *out, const srv_resp_ctx_t *c, const srv_usage_t *u);
/* Chat: one tool call of choice index as two deltas, OpenAI's way: {index,
 * id, type, function: {name, arguments: ""}}, then {index, function:
 * {arguments}}. */
int srv_sse_tool_call(srv_buf_t *out, const srv_resp_ctx_t *c, int index, int call_index, const char *id,
                      const srv_call_t *call);
/* The last chunk of a choice with an explicit finish_reason ("tool_calls"). */
int srv_sse_finish_reason(srv_buf_t *out, const srv_resp_ctx_t *c, int index, const char *reason);
int srv_sse_error(srv_buf_t *out, const srv_error_t *e);
int srv_sse_done(srv_buf_t *out);
int srv_sse_ping(srv_buf_t *out);

/* "stop" / "length" for the client; cancelled and error map to "stop"/"error". */
const char *srv_finish_reason(sched_finish_t f);
/* Copies s[0..len) into a NUL-terminated malloc'd string of valid UTF-8
 * (bad bytes become U+FFFD). */
char *srv_utf8_dup(const char *s, size_t len);
/* "dense", "flexprefill", … for usage echoes. */
const char *srv_prefill_name(int m);
const char *srv_decode_name(int m);

#endif
