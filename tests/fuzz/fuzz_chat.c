/* libFuzzer target: chat template detection and rendering. The input is
 * split on NUL bytes into a template text and role/content pairs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    /* Fields separated by NUL: template, then role, content, role, content... */
    const char *fields[33];
    int nf = 0;
    size_t off = 0;
    while (off <= size && nf < 33) {
        fields[nf++] = buf + off;
        off += strlen(buf + off) + 1;
    }
    chat_template_t ct;
    char err[256];
    if (chat_template_detect(fields[0], strlen(fields[0]), &ct, err, sizeof err) != 0) {
        const char *names[] = {"chatml", "llama3", "gemma"};
        if (chat_template_from_name(names[size % 3], &ct) != 0) __builtin_trap();
    }
    chat_msg_t msgs[16];
    size_t n = 0;
    for (int i = 1; i + 1 < nf && n < 16; i += 2) msgs[n++] = (chat_msg_t){fields[i], fields[i + 1]};
    for (int gen = 0; gen < 2; gen++) {
        char *out = NULL;
        int rc = chat_render(&ct, msgs, n, gen, &out, err, sizeof err);
        if (rc == 0) {
            /* Gemma renders nothing of a lone system message (its template
             * folds it into a first user turn that is not there). */
            int gemma = ct.family == CHAT_GEMMA, lone = n == 1 && strcmp(msgs[0].role, "user") != 0;
            for (size_t i = 0; i < n && !(gemma && lone); i++) { // every content appears (templates may trim it)
                const char *c = msgs[i].content;
                size_t b = 0, e = strlen(c);
                /* Gemma trims Unicode whitespace as well: strip every non-ASCII
                 * byte too, which leaves a part of what it kept. */
#define TRIMMED(ch)                                                                                                    \
    (strchr(" \t\n\r\v\f", (ch)) || (gemma && ((unsigned char)(ch) >= 0x80 || ((ch) >= 0x1c && (ch) <= 0x1f))))
                while (b < e && TRIMMED(c[b])) b++;
                while (e > b && TRIMMED(c[e - 1])) e--;
#undef TRIMMED
                if (e > b && !memmem(out, strlen(out), c + b, e - b)) __builtin_trap();
            }
            free(out);
        }
    }
    free(buf);
    return 0;
}
