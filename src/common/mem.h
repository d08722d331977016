/* Aligned allocation for buffers that vector kernels stream through: weights
 * kept at load, and the forward pass's scratch activations. */
#ifndef LC_MEM_H
#define LC_MEM_H

#include <stddef.h>

/* n bytes aligned to 64 (one cache line, one AVX-512 vector); n = 0 still
 * gives a valid 64-byte block. Free with free(). NULL on OOM. */
void *lc_alloc64(size_t n);

#endif
