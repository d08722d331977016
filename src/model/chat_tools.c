/* Qwen2.5-Instruct's chat template, rendered natively: the one family we
 * ship with tool support. The Jinja text is tests/fixtures/
 * qwen2.5_chat_template.jinja; scripts/gen_chat_tools_fixtures.py renders
 * conversations with it the way transformers does (jinja2, trim_blocks,
 * lstrip_blocks, json.dumps for tojson) and tests/check_chat_tools.c holds
 * this renderer to those bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/status.h"
#include "model/chat_internal.h"

const char chat__qwen_system[] = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

static int has(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0) return 1;
    return 0;
}

int chat__is_qwen25(const char *t, size_t n) {
    return has(t, n, "<|im_start|>") && has(t, n, "<tool_call>") && has(t, n, "<tool_response>") &&
           has(t, n, "You are provided with function signatures within <tools></tools> XML tags") &&
           has(t, n, "tool_call.arguments | tojson") && has(t, n, chat__qwen_system) && !has(t, n, "<think>") &&
           !has(t, n, "reasoning_content");
}

int chat_supports_tools(const chat_template_t *ct) { return ct->family == CHAT_QWEN25; }

int chat_tool_syntax(const chat_template_t *ct, chat_tool_syntax_t *out) {
    if (ct->family != CHAT_QWEN25) return LC_EUNSUPPORTED;
    out->open_tag = "<tool_call>";
    out->close_tag = "</tool_call>";
    out->call_prefix = "<tool_call>\n{\"name\": \"";
    out->call_middle = "\", \"arguments\": ";
    out->call_suffix = "}\n</tool_call>";
    return 0;
}

/* developer turns are system turns (the template knows only system). */
static const char *qrole(const chat_msg_t *m) {
    const char *r = m->role ? m->role : "";
    return strcmp(r, "developer") == 0 ? "system" : r;
}

static const char *qtext(const char *s) { return s ? s : ""; }

int chat__render_qwen25(const chat_template_t *ct, const chat_msg_t *msgs, const chat_msg_calls_t *calls, size_t n,
                        const char *const *tools, size_t n_tools, int add_generation_prompt, char **out, char *err,
                        size_t errlen) {
    (void)ct;
    lc_buf_t b = {0};
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *r = qrole(&msgs[i]);
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool")) {
            if (err) snprintf(err, errlen, "unsupported message role '%s'", r);
            return LC_EINVAL;
        }
        if (calls && calls[i].n && strcmp(r, "assistant")) {
            if (err) snprintf(err, errlen, "only assistant messages carry tool calls");
            return LC_EINVAL;
        }
    }
    int first_system = n > 0 && !strcmp(qrole(&msgs[0]), "system");
    lc_buf_puts(&b, "");
    if (n_tools) {
        lc_buf_puts(&b, "<|im_start|>system\n");
        lc_buf_puts(&b, first_system ? qtext(msgs[0].content) : chat__qwen_system);
        lc_buf_puts(&b, "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
                        "provided with function signatures within <tools></tools> XML tags:\n<tools>");
        for (size_t t = 0; t < n_tools; t++) {
            lc_buf_puts(&b, "\n");
            lc_buf_puts(&b, tools[t]);
        }
        lc_buf_puts(
            &b, "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                "<args-json-object>}\n</tool_call><|im_end|>\n");
    } else {
        lc_buf_puts(&b, "<|im_start|>system\n");
        lc_buf_puts(&b, first_system ? qtext(msgs[0].content) : chat__qwen_system);
        lc_buf_puts(&b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        const chat_msg_t *m = &msgs[i];
        const char *r = qrole(m);
        size_t nc = calls ? calls[i].n : 0;
        if (!strcmp(r, "user") || (!strcmp(r, "system") && i > 0) || (!strcmp(r, "assistant") && !nc)) {
            lc_buf_puts(&b, "<|im_start|>");
            lc_buf_puts(&b, r);
            lc_buf_puts(&b, "\n");
            lc_buf_puts(&b, qtext(m->content));
            lc_buf_puts(&b, "<|im_end|>\n");
        } else if (!strcmp(r, "assistant")) {
            lc_buf_puts(&b, "<|im_start|>assistant");
            if (m->content && m->content[0]) {
                lc_buf_puts(&b, "\n");
                lc_buf_puts(&b, m->content);
            }
            for (size_t k = 0; k < nc; k++) {
                lc_buf_puts(&b, "\n<tool_call>\n{\"name\": \"");
                lc_buf_puts(&b, qtext(calls[i].calls[k].name));
                lc_buf_puts(&b, "\", \"arguments\": ");
                lc_buf_puts(&b, qtext(calls[i].calls[k].arguments));
                lc_buf_puts(&b, "}\n</tool_call>");
            }
            lc_buf_puts(&b, "<|im_end|>\n");
        } else if (!strcmp(r, "tool")) {
            if (i == 0 || strcmp(qrole(&msgs[i - 1]), "tool")) lc_buf_puts(&b, "<|im_start|>user");
            lc_buf_puts(&b, "\n<tool_response>\n");
            lc_buf_puts(&b, qtext(m->content));
            lc_buf_puts(&b, "\n</tool_response>");
            if (i + 1 == n || strcmp(qrole(&msgs[i + 1]), "tool")) lc_buf_puts(&b, "<|im_end|>\n");
        }
    }
    if (add_generation_prompt) lc_buf_puts(&b, "<|im_start|>assistant\n");
    if (b.oom) {
        free(b.p);
        return LC_ENOMEM;
    }
    *out = b.p;
    return 0;
}
