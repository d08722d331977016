/* A growable byte string, the one the whole tree appends to (chat rendering,
 * the JSON reader, the tokenizer's text, the GGUF writer). */
#ifndef LC_BUF_H
#define LC_BUF_H

#include <stddef.h>

/* p holds n bytes followed by a NUL (p is NULL until the first append). A
 * failed allocation sets oom and turns every later append into a no-op, so a
 * writer appends freely and checks oom once at the end. Zero-initialise. */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} lc_buf_t;

/* Appends s[0..n). Returns 0, or LC_ENOMEM (now or at an earlier append). */
int lc_buf_put(lc_buf_t *b, const void *s, size_t n);

/* Appends the C string s. */
int lc_buf_puts(lc_buf_t *b, const char *s);

/* Frees the bytes; b is empty again. */
void lc_buf_free(lc_buf_t *b);

#endif
