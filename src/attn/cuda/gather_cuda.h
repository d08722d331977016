/* Token-gather attention on the tensor cores: query rows of one sequence's
 * prefill chunk attend lists of key positions of its paged KV cache (any
 * positions, any length, no causal mask), FlashAttention-2 style on
 * mma.sync. AnchorAttention's stripes and own keys run on it
 * (anchor_cuda.h); any method that selects tokens rather than blocks can.
 *
 * Rows are tiled by 128 positions aligned to position 0: tile t holds the
 * rows at positions [T0 + 128 t, T0 + 128 t + 128) of the call's rows, T0 =
 * pos0 / 128 * 128. One CTA per (tile, head), eight warps of 16 rows; every
 * 64 listed keys are gathered into shared memory (cp.async, page by page,
 * double-buffered) and run S = Q K^T, an online softmax in registers (exp2,
 * the scale folded in) and O += P V on m16n8k16 bf16 MMAs with f32
 * accumulation. Keys are visited in list order, so a row's result depends
 * only on its row, its list and the cache: bitwise the same in any batch.
 *
 * Lists: the rows of tile t and head h attend list gi = (T0 + 128 t) / group
 * - g_first (group a multiple of 128; group 0: list 0 for every tile), its
 * count[h * n_lists + gi] entries at list + (h * n_lists + gi) *
 * list_stride, key positions in [0, kv_len). An empty list gives out 0 and
 * lse -inf.
 *
 * Split lists (n_split > 1): for rows that each face a long list (a few
 * rows, many keys), each list of count c is cut into n_split parts of P =
 * max(split_len, ceil(c / n_split) rounded up to 64) entries; part z
 * (entries [z P, (z + 1) P)) runs in CTAs of its own and writes its
 * normalised output and LSE at out + z n_rows H D and lse + z n_rows H (an
 * empty part: 0 and -inf); the caller merges the parts by LSE in part order.
 * The parts depend on the list alone, so the result is still the row's own. */
#ifndef LC_ATTN_GATHER_CUDA_H
#define LC_ATTN_GATHER_CUDA_H

#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One call; all pointers device memory. */
typedef struct {
    const void *q;        // (n_rows, n_heads, head_dim) bf16, row r at position pos0 + r
    const void *k, *v;    // the layer's pools (attn_cuda.h's layout)
    const int32_t *pages; // the sequence's page table
    const int32_t *list;  // (n_heads, n_lists, list_stride) key positions
    const int32_t *count; // (n_heads, n_lists) entries of each list
    int64_t list_stride;  // ints from one list to the next
    int n_lists;          // lists per head
    int n_rows, pos0;     // rows and the position of row 0
    int group, g_first;   // positions per list (a multiple of 128, or 0: one list), list of position 0's group
    float *out;           // (n_rows, n_heads, head_dim) f32, normalised
    float *lse;           // (n_rows, n_heads) natural log of sum exp(scale * q.k) over the list
    int n_split;          // parts of each list (0 or 1: whole lists); out and lse then hold n_split of each
    int split_len;        // the least entries per part, a multiple of 64 (n_split > 1)
} attn_cuda_gather_args_t;

/* Runs on stream. LC_EINVAL for bad arguments (missing pointers, group not a
 * multiple of 128, q / k / v not 16-byte aligned, a split_len not a positive
 * multiple of 64), LC_EUNSUPPORTED for a
 * shape other than head_dim 64 / 128 / 256, page_size 64 / 128, LC_EDEVICE from a
 * launch. Reads key positions as given: the caller keeps them below the
 * sequence's kv_len. */
int attn_cuda_gather(const attn_cuda_shape_t *shape, const attn_cuda_gather_args_t *a, void *stream);

#ifdef __cplusplus
}
#endif
#endif
