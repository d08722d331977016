/* AnchorAttention's prefill on the GPU, first version (src/attn/cpu/anchor.c
 * is the reference and its header comment the method): for every sequence of
 * a prefill step that runs AnchorAttention, the chunk's output and LSE.
 *
 * Blocks are B = 128 positions aligned to absolute positions, groups
 * anchor_local positions (a multiple of 128 here) aligned likewise; the chunk
 * of sequence s holds n_q rows at q_pos0 = kv_len - n_q .. kv_len-1. Per
 * query head, in four kernels on CUDA cores (one thread per query row, K/V
 * tiles staged in shared memory):
 *   1. anchor pass: each row attends [0, anchor_init) and its group's local
 *      window [g0, p] exactly (the whole [0, p] when g0 <= anchor_init) in
 *      an online softmax whose state (m, l, acc) stays in the workspace;
 *   2. pool: per query block the mean scaled query and the mean row max m
 *      (the anchor);
 *   3. stripes: key j in [anchor_init, g0) is kept for the group if some
 *      block b of the group in the chunk has qbar_b.k_j + theta >= abar_b;
 *      the group holding the chunk's last row also tests each key not kept
 *      against every row of the chunk's last block (q_r.k_j*scale + theta >=
 *      m_r): the "own" keys only that block attends;
 *   4. gather: each row continues its online softmax over its group's kept
 *      keys (then, for the last block, the own keys), in key order, and
 *      writes out = acc / l (bf16) and lse = m + log l.
 * The three key sets are disjoint, so every key is attended once or not at
 * all. theta = INFINITY keeps every key (dense).
 *
 * Determinism: no atomics; sequences run one after another over the same
 * workspace, and a row's sums run in key order, so a sequence's output is
 * bitwise the same alone or in any batch.
 *
 * Use: attn_cuda_anchor_create() once with capacities; per step
 * attn_cuda_anchor_plan() on the host; per layer attn_cuda_anchor_run() after
 * the layer's K and V are in the pool (no allocation). Errors as in
 * attn_cuda.h: 0 or a negative lc status, never an abort. One object per host
 * thread and stream. */
#ifndef LC_ATTN_ANCHOR_CUDA_H
#define LC_ATTN_ANCHOR_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A sequence's AnchorAttention parameters (attn_policy_t's; the block is 128). */
typedef struct {
    float theta;      // nats; INFINITY keeps every key
    int anchor_init;  // initial window, >= 0
    int anchor_local; // group / local window, a multiple of 128, >= min_local of create
} attn_cuda_anchor_policy_t;

typedef struct attn_cuda_anchor attn_cuda_anchor_t;

/* shape: attn_cuda.h's (head_dim 64 or 128, page_size 64 or 128). Capacities:
 * max_seqs sequences and max_q_rows rows per step, max_kv_len keys per
 * sequence, min_local the smallest anchor_local a plan may use (it bounds the
 * groups of a chunk, hence the key-flag workspace, sized here). */
int attn_cuda_anchor_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows, int64_t max_kv_len,
                            int min_local, attn_cuda_anchor_t **out);
void attn_cuda_anchor_destroy(attn_cuda_anchor_t *a);

/* Host, once per step: b the step's prefill batch (q_indptr set); selects
 * (n_seqs): 1 for the sequences that run AnchorAttention; pol (n_seqs, only
 * those entries read). Copies their page tables to the device (synchronous
 * copy in this version). LC_EINVAL for an inconsistent batch or a bad
 * policy, LC_ERANGE beyond the capacities. */
int attn_cuda_anchor_plan(attn_cuda_anchor_t *a, const attn_cuda_batch_t *b, const uint8_t *selects,
                          const attn_cuda_anchor_policy_t *pol, void *stream);

/* Device, once per layer, on stream: q (rows, n_heads, head_dim) bf16 of the
 * planned batch; k, v this layer's pools; writes out (bf16, q's layout) and
 * lse (rows, n_heads; may be NULL) of the selecting sequences' rows only. */
int attn_cuda_anchor_run(const attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out,
                         float *lse, void *stream);

/* For tests: the keys of the last planned sequence's last run for head h and
 * its chunk's group gi (0 = the group of q_pos0): keep and own (kv_len bytes,
 * 1 = attended; own: the chunk's last block's own keys, set only in the
 * group of the last row). Synchronises the stream. */
int attn_cuda_anchor_keys(const attn_cuda_anchor_t *a, int h, int gi, uint8_t *keep, uint8_t *own, void *stream);

#ifdef __cplusplus
}
#endif
#endif
