/* The growable byte string (buf.h). */
#include "common/buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

int lc_buf_put(lc_buf_t *b, const void *s, size_t n) {
    if (b->oom) return LC_ENOMEM;
    if (n >= b->cap - b->n || !b->p) {
        if (n > SIZE_MAX / 2 - b->n) goto oom;
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) goto oom;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return 0;
oom:
    b->oom = 1;
    return LC_ENOMEM;
}

int lc_buf_puts(lc_buf_t *b, const char *s) { return lc_buf_put(b, s, strlen(s)); }

void lc_buf_free(lc_buf_t *b) {
    free(b->p);
    *b = (lc_buf_t){0};
}
