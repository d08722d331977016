/* Aligned allocation for buffers that vector kernels stream through: weights
 * kept at load, and the forward pass's scratch activations; and the growth
 * of plan-time arrays. */
#ifndef LC_MEM_H
#define LC_MEM_H

#include <stddef.h>

/* n bytes aligned to 64 (one cache line, one AVX-512 vector); n = 0 still
 * gives a valid 64-byte block. Free with free(). NULL on OOM. */
void *lc_alloc64(size_t n);

/* Grows *ptr (realloc) to hold at least n elements of size sz; *cap counts
 * elements and at least doubles. 0, or LC_ENOMEM with *ptr unchanged. */
int lc_grow(void **ptr, size_t *cap, size_t n, size_t sz);

#endif
