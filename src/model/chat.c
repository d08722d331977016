/* Native renderers for the chat template families we recognise. Each one
 * mirrors the Jinja text of the shipped models exactly; the fixtures in
 * tests/fixtures/tokenizer_{smollm2,gemma3}.json come from transformers'
 * apply_chat_template and hold us to it. */
#include "model/chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
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
    /* Gemma 2/3: the system message becomes a prefix of the first user turn,
     * assistant turns are "model" turns. Gemma 3n / 4 templates differ (tool
     * and thinking syntax) and carry markers we refuse on. */
    if (contains(tmpl, len, "<start_of_turn>") && contains(tmpl, len, "<end_of_turn>") &&
        contains(tmpl, len, "first_user_prefix") && !contains(tmpl, len, "tool") &&
        !contains(tmpl, len, "<start_of_audio>")) {
        out->family = CHAT_GEMMA;
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
    if (err) snprintf(err, errlen, "unrecognised chat template (supported: ChatML, Llama 3, Gemma, Qwen2.5)");
    return LC_EUNSUPPORTED;
}

int chat_template_from_name(const char *name, chat_template_t *out) {
    if (strcmp(name, "chatml") == 0) {
        *out = (chat_template_t){CHAT_CHATML, NULL};
    } else if (strcmp(name, "smollm") == 0) {
        *out = (chat_template_t){CHAT_CHATML, smollm_system};
    } else if (strcmp(name, "llama3") == 0) {
        *out = (chat_template_t){CHAT_LLAMA3, NULL};
    } else if (strcmp(name, "gemma") == 0) {
        *out = (chat_template_t){CHAT_GEMMA, NULL};
    } else if (strcmp(name, "qwen2.5") == 0) {
        *out = (chat_template_t){CHAT_QWEN25, chat__qwen_system};
    } else {
        return LC_EINVAL;
    }
    return 0;
}

const char *chat_family_name(chat_family_t f) {
    return f == CHAT_CHATML   ? "chatml"
           : f == CHAT_LLAMA3 ? "llama3"
           : f == CHAT_GEMMA  ? "gemma"
           : f == CHAT_QWEN25 ? "qwen2.5"
                              : "?";
}

int chat_renders_bos(const chat_template_t *ct) { return ct->family == CHAT_LLAMA3 || ct->family == CHAT_GEMMA; }

/* ============================================================================
 * Rendering
 * ========================================================================== */


/* Canonical role name, or NULL for one we do not accept. */
static const char *role_name(const char *r) {
    if (!r) return NULL;
    if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0) return "system";
    if (strcmp(r, "user") == 0) return "user";
    if (strcmp(r, "assistant") == 0) return "assistant";
    return NULL;
}

/* Jinja's |trim: Python str.strip() on the ASCII whitespace that matters. */
static void put_trimmed(lc_buf_t *b, const char *s) {
    const char *ws = " \t\n\r\v\f";
    size_t n = strlen(s);
    while (n && strchr(ws, s[0])) s++, n--;
    while (n && strchr(ws, s[n - 1])) n--;
    lc_buf_put(b, s, n);
}

/* Length of the whitespace character at s[0..n) as Python's str.isspace()
 * sees it (Jinja's |trim is str.strip()), or 0: ASCII \t-\r, \x1c-\x1f and
 * space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
 * U+205F, U+3000. */
static size_t py_space(const unsigned char *s, size_t n) {
    if ((s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x20)) return 1;
    if (n >= 2 && s[0] == 0xc2) return s[1] == 0x85 || s[1] == 0xa0 ? 2 : 0;
    if (n < 3 || (s[1] & 0xc0) != 0x80 || (s[2] & 0xc0) != 0x80) return 0;
    unsigned cp = (unsigned)(s[0] & 0x0f) << 12 | (unsigned)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    if ((s[0] & 0xf0) != 0xe0) return 0;
    int sp = cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
             cp == 0x205f || cp == 0x3000;
    return sp ? 3 : 0;
}

/* Jinja's |trim as Python runs it: Unicode whitespace off both ends. */
static void put_pytrimmed(lc_buf_t *b, const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str), k, i = 0, end = 0;
    while (n && (k = py_space(s, n))) s += k, n -= k;
    while (i < n) { // end: just past the last character that is not a space
        if ((k = py_space(s + i, n - i))) {
            i += k;
            continue;
        }
        i++;
        while (i < n && (s[i] & 0xc0) == 0x80) i++;
        end = i;
    }
    lc_buf_put(b, (const char *)s, end);
}

/* Gemma: "<bos>", a leading system message folded into the first turn as
 * "system\n\n" + user text (the system text untrimmed, the turns trimmed),
 * turns alternating user/model from a user turn, as the template demands. */
static int render_gemma(lc_buf_t *b, const chat_msg_t *msgs, size_t n, int add_generation_prompt, char *err,
                        size_t errlen) {
    lc_buf_puts(b, "<bos>");
    size_t i0 = n && strcmp(role_name(msgs[0].role), "system") == 0 ? 1 : 0;
    for (size_t i = i0; i < n; i++) {
        const char *role = role_name(msgs[i].role);
        if ((strcmp(role, "user") == 0) != ((i - i0) % 2 == 0)) {
            if (err) snprintf(err, errlen, "Conversation roles must alternate user/assistant/user/assistant/...");
            return LC_EINVAL;
        }
        lc_buf_puts(b, "<start_of_turn>");
        lc_buf_puts(b, strcmp(role, "assistant") == 0 ? "model" : role);
        lc_buf_puts(b, "\n");
        if (i == i0 && i0 == 1) {
            lc_buf_puts(b, msgs[0].content ? msgs[0].content : "");
            lc_buf_puts(b, "\n\n");
        }
        put_pytrimmed(b, msgs[i].content ? msgs[i].content : "");
        lc_buf_puts(b, "<end_of_turn>\n");
    }
    if (add_generation_prompt) lc_buf_puts(b, "<start_of_turn>model\n");
    return 0;
}

int chat_render(const chat_template_t *ct, const chat_msg_t *msgs, size_t n, int add_generation_prompt, char **out,
                char *err, size_t errlen) {
    return chat_render_tools(ct, msgs, NULL, n, NULL, 0, add_generation_prompt, out, err, errlen);
}

int chat_render_tools(const chat_template_t *ct, const chat_msg_t *msgs, const chat_msg_calls_t *calls, size_t n,
                      const char *const *tools, size_t n_tools, int add_generation_prompt, char **out, char *err,
                      size_t errlen) {
    lc_buf_t b = {0};
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
    lc_buf_put(&b, "", 0);
    if (ct->family == CHAT_CHATML) {
        if (ct->default_system && n && strcmp(role_name(msgs[0].role), "system") != 0) {
            lc_buf_puts(&b, "<|im_start|>system\n");
            lc_buf_puts(&b, ct->default_system);
            lc_buf_puts(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            lc_buf_puts(&b, "<|im_start|>");
            lc_buf_puts(&b, role_name(msgs[i].role));
            lc_buf_puts(&b, "\n");
            lc_buf_puts(&b, msgs[i].content ? msgs[i].content : "");
            lc_buf_puts(&b, "<|im_end|>\n");
        }
        if (add_generation_prompt) lc_buf_puts(&b, "<|im_start|>assistant\n");
    } else if (ct->family == CHAT_GEMMA) {
        int rc = render_gemma(&b, msgs, n, add_generation_prompt, err, errlen);
        if (rc) {
            free(b.p);
            return rc;
        }
    } else {
        /* Llama 3: BOS text before the first message, content trimmed, no
         * default system message. */
        if (n) lc_buf_puts(&b, "<|begin_of_text|>");
        for (size_t i = 0; i < n; i++) {
            lc_buf_puts(&b, "<|start_header_id|>");
            lc_buf_puts(&b, role_name(msgs[i].role));
            lc_buf_puts(&b, "<|end_header_id|>\n\n");
            put_trimmed(&b, msgs[i].content ? msgs[i].content : "");
            lc_buf_puts(&b, "<|eot_id|>");
        }
        if (add_generation_prompt) lc_buf_puts(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    if (b.oom) {
        free(b.p);
        return LC_ENOMEM;
    }
    *out = b.p;
    return 0;
}
