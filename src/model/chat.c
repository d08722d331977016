/* Native renderers for the chat template families we recognise. Each one
 * mirrors the Jinja text of the shipped models exactly; the fixtures in
 * tests/fixtures/tokenizer_smollm2.json come from transformers'
 * apply_chat_template and hold us to it. */
#include "model/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/chat_internal.h"

static const char smollm_system[] = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

static int contains(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(s + i, needle, k) == 0) return 1;
    return 0;
}

int chat_template_detect(const char *tmpl, size_t len, chat_template_t *out, char *err, size_t errlen) {
    if (!tmpl || len == 0) {
        if (err) snprintf(err, errlen, "model has no tokenizer.chat_template");
        return LC_ENOTFOUND;
    }
    /* Llama 3.1+ templates add a dated system preamble and tool syntax that
     * we do not render; better refused than subtly different. */
    if (contains(tmpl, len, "<|start_header_id|>") && contains(tmpl, len, "<|eot_id|>") &&
        !contains(tmpl, len, "Cutting Knowledge Date")) {
        out->family = CHAT_LLAMA3;
        out->default_system = NULL;
        return 0;
    }
    if (chat__is_qwen25(tmpl, len)) {
        out->family = CHAT_QWEN25;
        out->default_system = chat__qwen_system;
        return 0;
    }
    if (contains(tmpl, len, "<|im_start|>") && contains(tmpl, len, "<|im_end|>")) {
        out->family = CHAT_CHATML;
        /* SmolLM2 inserts its own system message when none leads. Other
         * ChatML templates with a different default are not recognised as
         * ChatML-without-default: they would render a different prompt. */
        if (contains(tmpl, len, smollm_system)) {
            out->default_system = smollm_system;
            return 0;
        }
        if (!contains(tmpl, len, "You are")) {
            out->default_system = NULL;
            return 0;
        }
    }
    if (err) snprintf(err, errlen, "unrecognised chat template (supported: ChatML, Llama 3, Qwen2.5)");
    return LC_EUNSUPPORTED;
}

int chat_template_from_name(const char *name, chat_template_t *out) {
    if (strcmp(name, "chatml") == 0) {
        *out = (chat_template_t){CHAT_CHATML, NULL};
    } else if (strcmp(name, "smollm") == 0) {
        *out = (chat_template_t){CHAT_CHATML, smollm_system};
    } else if (strcmp(name, "llama3") == 0) {
        *out = (chat_template_t){CHAT_LLAMA3, NULL};
    } else if (strcmp(name, "qwen2.5") == 0) {
        *out = (chat_template_t){CHAT_QWEN25, chat__qwen_system};
    } else {
        return LC_EINVAL;
    }
    return 0;
}

const char *chat_family_name(chat_family_t f) {
    return f == CHAT_CHATML ? "chatml" : f == CHAT_LLAMA3 ? "llama3" : f == CHAT_QWEN25 ? "qwen2.5" : "?";
}

int chat_renders_bos(const chat_template_t *ct) { return ct->family == CHAT_LLAMA3; }

/* ============================================================================
 * Rendering
 * ========================================================================== */

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf_t;

static void put(sbuf_t *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(sbuf_t *b, const char *s) { put(b, s, strlen(s)); }

/* Canonical role name, or NULL for one we do not accept. */
static const char *role_name(const char *r) {
    if (!r) return NULL;
    if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0) return "system";
    if (strcmp(r, "user") == 0) return "user";
    if (strcmp(r, "assistant") == 0) return "assistant";
    return NULL;
}

/* Jinja's |trim: Python str.strip() on the ASCII whitespace that matters. */
static void put_trimmed(sbuf_t *b, const char *s) {
    const char *ws = " \t\n\r\v\f";
    size_t n = strlen(s);
    while (n && strchr(ws, s[0])) s++, n--;
    while (n && strchr(ws, s[n - 1])) n--;
    put(b, s, n);
}

int chat_render(const chat_template_t *ct, const chat_msg_t *msgs, size_t n, int add_generation_prompt, char **out,
                char *err, size_t errlen) {
    return chat_render_tools(ct, msgs, NULL, n, NULL, 0, add_generation_prompt, out, err, errlen);
}

int chat_render_tools(const chat_template_t *ct, const chat_msg_t *msgs, const chat_msg_calls_t *calls, size_t n,
                      const char *const *tools, size_t n_tools, int add_generation_prompt, char **out, char *err,
                      size_t errlen) {
    sbuf_t b = {0};
    *out = NULL;
    if (ct->family == CHAT_QWEN25)
        return chat__render_qwen25(ct, msgs, calls, n, tools, n_tools, add_generation_prompt, out, err, errlen);
    if (n_tools) {
        if (err) snprintf(err, errlen, "this model's chat template has no tool support");
        return LC_EUNSUPPORTED;
    }
    for (size_t i = 0; calls && i < n; i++)
        if (calls[i].n) {
            if (err)
                snprintf(err, errlen, "this model's chat template has no tool support (messages[%zu].tool_calls)", i);
            return LC_EUNSUPPORTED;
        }
    for (size_t i = 0; i < n; i++) {
        if (!role_name(msgs[i].role)) {
            if (err) snprintf(err, errlen, "unsupported message role '%s'", msgs[i].role ? msgs[i].role : "(null)");
            free(b.p);
            return LC_EINVAL;
        }
    }
    put(&b, "", 0);
    if (ct->family == CHAT_CHATML) {
        if (ct->default_system && n && strcmp(role_name(msgs[0].role), "system") != 0) {
            puts_(&b, "<|im_start|>system\n");
            puts_(&b, ct->default_system);
            puts_(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|im_start|>");
            puts_(&b, role_name(msgs[i].role));
            puts_(&b, "\n");
            puts_(&b, msgs[i].content ? msgs[i].content : "");
            puts_(&b, "<|im_end|>\n");
        }
        if (add_generation_prompt) puts_(&b, "<|im_start|>assistant\n");
    } else {
        /* Llama 3: BOS text before the first message, content trimmed, no
         * default system message. */
        if (n) puts_(&b, "<|begin_of_text|>");
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|start_header_id|>");
            puts_(&b, role_name(msgs[i].role));
            puts_(&b, "<|end_header_id|>\n\n");
            put_trimmed(&b, msgs[i].content ? msgs[i].content : "");
            puts_(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    if (b.oom) {
        free(b.p);
        return LC_ENOMEM;
    }
    *out = b.p;
    return 0;
}
