/* See mem.h. */
#include "common/mem.h"

#include <stdlib.h>

void *lc_alloc64(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 64) ? NULL : p;
}
