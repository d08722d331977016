/* Tool calls in generated text. A model with tool support writes each call
 * as open_tag {"name": ..., "arguments": {...}} close_tag (chat.h's
 * chat_tool_syntax_t); this parser splits a choice's text, fed in deltas,
 * into plain content and calls. Text that might still become an open tag
 * is held back; a call whose body is not such an object stays content
 * (tags included), so nothing the model wrote is lost. Streaming and
 * non-streaming responses run the same parser, so they agree. */
#ifndef SRV_TOOLCALL_H
#define SRV_TOOLCALL_H

#include "model/chat.h"
#include "server/respond.h"

typedef struct {
    const chat_tool_syntax_t *sy;
    srv_buf_t held; // text not yet classified (a possible tag prefix, or a call's body)
    int in_call;
} srv_tp_t;

/* What one feed produced: content to append, calls that completed. The
 * caller owns calls[i].name / .arguments after a feed (srv_tp_calls_free). */
typedef struct {
    srv_buf_t content;
    srv_call_t *calls;
    int n_calls, cap_calls;
} srv_tp_out_t;

void srv_tp_init(srv_tp_t *t, const chat_tool_syntax_t *sy);
void srv_tp_free(srv_tp_t *t);
/* 0 or LC_ENOMEM. */
int srv_tp_feed(srv_tp_t *t, const char *text, size_t len, srv_tp_out_t *out);
/* End of the text: whatever is held comes out (an unterminated last call
 * counts when its body is complete, e.g. cut by a stop string). */
int srv_tp_finish(srv_tp_t *t, srv_tp_out_t *out);
void srv_tp_out_free(srv_tp_out_t *o);

#endif
