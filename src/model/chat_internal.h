/* Internals of the chat templates shared by chat.c and chat_tools.c. */
#ifndef LC_CHAT_INTERNAL_H
#define LC_CHAT_INTERNAL_H

#include <stddef.h>

#include "model/chat.h"

extern const char chat__qwen_system[];
/* 1 when tmpl is Qwen2.5-Instruct's template (tools in the system turn,
 * <tool_call> blocks, <tool_response> user turns). */
int chat__is_qwen25(const char *tmpl, size_t len);
int chat__render_qwen25(const chat_template_t *ct, const chat_msg_t *msgs, const chat_msg_calls_t *calls, size_t n,
                        const char *const *tools, size_t n_tools, int add_generation_prompt, char **out, char *err,
                        size_t errlen);

#endif
