/* FlexPrefill's selection on the GPU (src/attn/cpu/flex.c is the reference):
 * for every sequence of a prefill step that runs FlexPrefill, one block mask
 * per query head that the block-sparse prefill kernel reads.
 *
 * Blocks are B = 128 positions aligned to absolute positions. Sequence s's
 * chunk holds n_q rows at positions q_pos0 = kv_len - n_q .. kv_len-1 and
 * attends keys 0 .. kv_len-1; qb0 = q_pos0 / 128, n_kb = (kv_len-1)/128 + 1,
 * n_qb = n_kb - qb0, words = (n_kb + 31) / 32.
 *
 * Mask (device, uint32 words): bit kb of (head h, query block i = qb - qb0) is
 *   mask[mask_off[s] + (h * n_qb + i) * words + kb / 32], bit kb % 32;
 * 1 = compute key block kb for query block qb. Bits kb > qb are written 0.
 * A chunk with at most max(2 * 128, min_budget) keys (attn__flex_is_small)
 * gets every causal bit.
 *
 * The selection, per head (the CPU's steps on the same f32 values):
 *   1. the exact softmax of the chunk's last R = min(128, n_q) rows over all
 *      keys, in two passes over 128-key tiles (row max/sum, then
 *      probabilities), summed into the vertical mass of each key and the
 *      slash mass of each diagonal offset;
 *   2. the mean key of each block (per kv head), the mean representative
 *      query, the JS distance between their block softmax and the vertical
 *      mass per block: below tau the head is query-aware, else vertical-slash;
 *   3. query-aware: per query block the softmax of its mean query against the
 *      block mean keys, / n_qb, and every cell >= T where T is the value at
 *      which the cells in descending order first reach mass gamma;
 *      vertical-slash: the same for the vertical and the slash mass against
 *      gamma * their total, then the count clamped to [min_budget, max_budget]
 *      (and to the keys) and T the count-th largest value; a block is kept if
 *      one of its columns or a diagonal crossing it is kept. With blocks
 *      set (the CPU's flex_select "blocks"), that count / 128 + 1 (clamped to
 *      the budgets in blocks, rounded up) is how many of the block-pooled
 *      columns and of the pooled diagonals (offset blocks [128 o, 128 o +
 *      128)) to keep, pooled sums in 2^-50 fixed point (exact), block 0 and
 *      offset block 0 first: (qb, kb) is kept if kb's pooled columns or
 *      offset block qb - kb's pooled diagonals are;
 *   4. the sink block 0 and the diagonal block always, and every causal block
 *      of the query blocks holding the prompt's last 128 rows (from
 *      (prompt_end - 128) / 128 on, when prompt_end is set).
 * Thresholds come from a radix select on the floats' bits (256-bin
 * histograms of counts and of mass in 2^-50 fixed point), never a sort; ties
 * at T are all kept (the CPU keeps an arbitrary subset of them), so the masks
 * equal the CPU's up to ties and float summation order.
 *
 * Determinism: no float atomics; a sequence's selection runs on its own
 * (sequences of a step one after another over the same workspace), so its
 * mask is bitwise the same alone or in any batch.
 *
 * Use: attn_cuda_flex_create() once with capacities; per step
 * attn_cuda_flex_plan() on the host; per layer attn_cuda_flex_select() on the
 * device after the layer's K is in the pool (no allocation). Errors as in
 * attn_cuda.h: 0 or a negative lc status, never an abort. One object per
 * host thread and stream. */
#ifndef LC_ATTN_FLEX_CUDA_H
#define LC_ATTN_FLEX_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A sequence's FlexPrefill parameters (attn_policy_t's; the block is 128). */
typedef struct {
    float gamma;    // coverage in (0, 1]; >= 1 keeps everything
    float tau;      // JS-distance threshold between the two patterns
    int min_budget; // vertical-slash: least columns / diagonals kept, >= 0
    int max_budget; // vertical-slash: most columns / diagonals kept, 0 = no cap
    int prompt_end; // one past the prompt's last position (attn_seq_t's), 0 = unknown
    int blocks;     // vertical-slash rule: 0 the columns and diagonals (tokens), 1 the block-pooled ones
                    // (attn_policy_t's flex_select ATTN_FLEX_BLOCKS)
} attn_cuda_flex_policy_t;

/* Mask words of one chunk of n_q rows ending at kv_len, for n_heads heads
 * (attn_cuda_mask_words(): the block-sparse prefill kernel reads this layout). */
size_t attn_cuda_flex_mask_words(int n_q, int kv_len, int n_heads);

typedef struct attn_cuda_flex attn_cuda_flex_t;

/* shape: attn_cuda.h's (head_dim 64, 128 or 256, page_size 64 or 128). Capacities:
 * max_seqs sequences and max_q_rows rows per step, max_kv_len keys per
 * sequence; the workspace is sized from them here (LC_ENOMEM, LC_EDEVICE),
 * LC_EUNSUPPORTED for a shape beyond the kernels, LC_ERANGE for limits whose
 * workspace would not be addressable. */
int attn_cuda_flex_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows, int64_t max_kv_len,
                          attn_cuda_flex_t **out);
void attn_cuda_flex_destroy(attn_cuda_flex_t *f);

/* Host, once per step, on stream. b: the step's prefill batch (q_indptr set);
 * selects (n_seqs): 1 for the sequences that run FlexPrefill; pol and
 * mask_off (n_seqs, only those entries read): their policies and the word
 * offsets of their masks. Uploads the selecting sequences' page tables (one
 * copy from a pinned arena). *mask_words (may be NULL) gets the words the
 * masks span: the largest mask_off[s] + attn_cuda_flex_mask_words(). LC_EINVAL
 * for an inconsistent batch or a bad policy, LC_ERANGE beyond the capacities. */
int attn_cuda_flex_plan(attn_cuda_flex_t *f, const attn_cuda_batch_t *b, const uint8_t *selects,
                        const attn_cuda_flex_policy_t *pol, const int32_t *mask_off, size_t *mask_words, void *stream);

/* Device, once per layer, on stream: q (rows, n_heads, head_dim) bf16, the
 * rows of the planned batch; k this layer's K pool (bf16, attn_cuda.h's
 * layout); writes the masks of the selecting sequences into mask. */
int attn_cuda_flex_select(const attn_cuda_flex_t *f, const void *q, const void *k, uint32_t *mask, void *stream);

/* ---- the selection of a sequence spread over a ring's ranks (src/attn/cp) ------------- */
/* Every 128-position block of the sequence lies on one rank, which holds
 * its keys (in its pool) and its query rows. Each rank scores the
 * representative rows against the keys it holds and pools the blocks it
 * holds; the caller's sum over the ranks (every rank the same bits, as
 * cp_allreduce_sum) joins the pieces between the phases. Every entry has one
 * owner and the others contribute 0, so the sums are exact and every rank
 * gets the mask one rank computes over the whole sequence, bit for bit
 * (attn_cuda_flex_select's, mask_off 0). */
typedef struct {
    int n_q, kv_len;      // the slice: rows at positions kv_len - n_q .. kv_len - 1 (keys before: cached)
    const int32_t *pages; // (ceil(kv_len / page_size)) page ids in this rank's pool; read for held blocks only
    const uint8_t *held;  // (ceil(kv_len / 128)) 1 for the 128-position blocks this rank holds, else 0
    const int32_t *qrows; // (n_qb) the row of this rank's q holding query block qb0 + i's first position
                          // (its first slice position), -1 for the blocks it does not hold
    attn_cuda_flex_policy_t pol;
} attn_cuda_flex_dist_seq_t;

/* Host, once per step, on stream: plans the one sequence (uploads the held
 * tiles, rows and page ids). *mask_words: the words of its mask. LC_EINVAL
 * for an inconsistent sequence (rows where no block is held), LC_ERANGE
 * beyond the capacities (max_seqs >= 1). attn_cuda_flex_select refuses a
 * plan made here. */
int attn_cuda_flex_dist_plan(attn_cuda_flex_t *f, const attn_cuda_flex_dist_seq_t *d, size_t *mask_words, void *stream);
/* Device, once per layer, on stream: q this rank's rows (rows of qrows), k
 * this layer's K pool; calls sum seven times (none for a small slice), the
 * same calls on every rank; writes the whole mask. */
int attn_cuda_flex_dist_select(const attn_cuda_flex_t *f, const void *q, const void *k, uint32_t *mask,
                               attn_cuda_sum_fn sum, void *ctx, void *stream);

/* For tests: the pattern each head of the last selecting sequence of the
 * last select chose (n_heads entries: 1 query-aware, 0 vertical-slash, -1
 * dense because small). Synchronises the stream. */
int attn_cuda_flex_last_branches(const attn_cuda_flex_t *f, int8_t *branch, void *stream);

/* For tests: the vertical and slash mass of the last selecting sequence of
 * the last select (n_heads x kv_len floats each, head-major: vert[h * kv_len
 * + j]), as its scores left them. LC_EINVAL when that sequence ran dense
 * (small). Synchronises the stream. */
int attn_cuda_flex_last_sums(const attn_cuda_flex_t *f, float *vert, float *slash, void *stream);

#ifdef __cplusplus
}
#endif
#endif
