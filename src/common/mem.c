/* See mem.h. */
#include "common/mem.h"

#include <stdlib.h>

#include "common/status.h"

void *lc_alloc64(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 64) ? NULL : p;
}

int lc_grow(void **ptr, size_t *cap, size_t n, size_t sz) {
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < n) c *= 2;
    void *q = realloc(*ptr, c * sz);
    if (!q) return LC_ENOMEM;
    *ptr = q;
    *cap = c;
    return 0;
}
