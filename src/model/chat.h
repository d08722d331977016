/* Chat templates: turning a list of {role, content} messages into the prompt
 * text a model was trained on. We do not run Jinja; we recognise the template
 * families the shipped models use from their tokenizer.chat_template text and
 * render them natively, byte for byte as transformers' apply_chat_template. */
#ifndef LC_CHAT_H
#define LC_CHAT_H

#include <stddef.h>

typedef enum {
    CHAT_CHATML = 1, // <|im_start|>role\ncontent<|im_end|>\n
    CHAT_LLAMA3,     // <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>
    CHAT_GEMMA,      // <bos><start_of_turn>user\ncontent<end_of_turn>\n ... <start_of_turn>model\n
} chat_family_t;

/* A recognised template: the family plus the system message it inserts when
 * the conversation has none (NULL for none; a static string). */
typedef struct {
    chat_family_t family;
    const char *default_system;
} chat_template_t;

typedef struct {
    const char *role;    // "system", "developer" (rendered as system), "user", "assistant"
    const char *content; // NULL is rendered as ""
} chat_msg_t;

/* Recognises a GGUF tokenizer.chat_template (tmpl may be NULL: missing).
 * Returns 0, LC_ENOTFOUND (missing) or LC_EUNSUPPORTED (unknown family); on
 * failure err says which, for the daemon to report at load. */
int chat_template_detect(const char *tmpl, size_t len, chat_template_t *out, char *err, size_t errlen);
/* A family chosen by name ("chatml", "smollm", "llama3", "gemma") when configured explicitly,
 * e.g. as the fallback for a model without a usable template; 0 or LC_EINVAL. */
int chat_template_from_name(const char *name, chat_template_t *out);
const char *chat_family_name(chat_family_t f);
/* 1 if the rendered text starts with the BOS token's text (Llama 3, Gemma):
 * encode it without adding another BOS. */
int chat_renders_bos(const chat_template_t *ct);

/* Renders n messages; with add_generation_prompt the text ends with the
 * assistant header. *out is malloc'd (caller frees). Returns 0, LC_ENOMEM, or
 * LC_EINVAL for an unknown role or, for Gemma, turns that do not alternate
 * user/assistant after the optional leading system message (err says which:
 * the template raises there too). */
int chat_render(const chat_template_t *ct, const chat_msg_t *msgs, size_t n, int add_generation_prompt, char **out,
                char *err, size_t errlen);

#endif
