/* AnchorAttention's prefill on the GPU (src/attn/cpu/anchor.c is the
 * reference and its header comment the method): for every sequence of a
 * prefill step that runs AnchorAttention, the chunk's output and LSE.
 *
 * Blocks are B = 128 positions aligned to absolute positions, groups
 * anchor_local positions aligned likewise (anchor_init, anchor_local and
 * anchor_lookback are multiples of 128 here, so every window is whole
 * blocks); the chunk of sequence s holds n_q rows at q_pos0 = kv_len - n_q
 * .. kv_len-1. Per query head:
 *   1. anchor pass (tensor cores): the dense prefill kernel (attn_cuda_run) on
 *      block masks that hold, for a row's block, the initial window [0, A)
 *      and its group's local window [lo, p], lo = g0 - anchor_lookback (the
 *      whole [0, p] when lo <= A); it gives out1, lse1 and each row's max
 *      m, the anchor (attn_cuda.h's rowmax output);
 *   2. selection (anchor_kern.cu, scores on tensor cores): per query block
 *      the mean scaled query and mean anchor; key j in [A, lo) is kept for
 *      the group if some block b of the group in the chunk has qbar_b.k_j +
 *      theta >= abar_b; in the group holding the chunk's last row, the
 *      chunk's last 128 rows in that group also test each key not kept,
 *      each row against itself (q_r.k_j*scale + theta >= m_r): the "own"
 *      keys only the row's block (one of the two tail blocks holding those
 *      rows) attends. With a probe (policy probe > 0), the group's last
 *      block in the chunk then scores every candidate row by row and sums
 *      each row's softmax mass over the keys kept and left out (the anchor
 *      pass's own mass counted kept); past the probe's mean missed share the
 *      head keeps every candidate of the group and no own keys. Both become
 *      ascending position lists per (head, group) and per (head, tail
 *      block) by a block-wide prefix sum (in position order, whatever the
 *      thread timing), except the key blocks of 128 kept whole, which
 *      become block masks for step 4;
 *   3. token gather (tensor cores, gather_cuda.h): every row attends its
 *      group's list, the tail blocks' rows also their block's own list,
 *      each from its own online softmax; the own keys' (out, lse) are
 *      folded into the stripes' by LSE weights: (out2, lse2);
 *   4. whole blocks (tensor cores): the dense prefill kernel again, on the
 *      whole kept blocks' masks with mask_only (attn_cuda.h): (out4, lse4);
 *   5. merge: out and lse from the passes' (out, lse) by LSE weights, in the
 *      fixed order anchor, stripes (with own keys), whole blocks.
 * The key sets are disjoint, so every key is attended once or not at all.
 * theta = INFINITY keeps every key (dense).
 *
 * Determinism: no float atomics; the anchor pass's tiles are the dense
 * kernel's (a tile depends on its own rows only), the other kernels run one
 * sequence after another over the same workspace with fixed reduction
 * orders, so a sequence's output is bitwise the same alone or in any batch.
 *
 * Use: attn_cuda_anchor_create() once with capacities (it allocates all the
 * workspace and the anchor pass's dense plan; sm_90 only, like the dense
 * prefill); per step attn_cuda_anchor_plan() on the host; per layer
 * attn_cuda_anchor_run() after the layer's K and V are in the pool (no
 * allocation). Errors as in attn_cuda.h: 0 or a negative lc status, never an
 * abort. One object per host thread and stream. */
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
    float theta;         // nats; INFINITY keeps every key
    int anchor_init;     // initial window, a multiple of 128 (0: none)
    int anchor_local;    // group / local window, a multiple of 128, >= min_local of create
    int anchor_lookback; // the local window starts this far before its group, a multiple of 128
    float probe;         // anchor_probe: the group's last block's missed share past which the head keeps every
                         // candidate (anchor.c); 0: no probe
} attn_cuda_anchor_policy_t;

typedef struct attn_cuda_anchor attn_cuda_anchor_t;

/* shape: attn_cuda.h's (head_dim 64, 128 or 256, page_size 64 or 128). Capacities:
 * max_seqs sequences and max_q_rows rows per step (the selecting sequences'
 * rows together), max_kv_len keys per sequence, min_local the smallest
 * anchor_local a plan may use (a multiple of 128: it bounds the groups of a
 * chunk, hence the key lists: 4 * n_heads * (max_q_rows / min_local + 2) *
 * max_kv_len bytes of the workspace). LC_EINVAL for a bad shape or
 * min_local, LC_EUNSUPPORTED for an unsupported shape or GPU. */
int attn_cuda_anchor_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows, int64_t max_kv_len,
                            int min_local, attn_cuda_anchor_t **out);
void attn_cuda_anchor_destroy(attn_cuda_anchor_t *a);

/* Host, once per step: b the step's prefill batch (q_indptr set); selects
 * (n_seqs): 1 for the sequences that run AnchorAttention; pol (n_seqs, only
 * those entries read). Copies their page tables to the device and plans the
 * anchor pass, both on stream (the next plan waits for this upload). LC_EINVAL for an inconsistent
 * batch or a bad policy (anchor_init, anchor_local or anchor_lookback not a
 * multiple of 128, theta NaN, probe negative or NaN), LC_ERANGE beyond the capacities. */
int attn_cuda_anchor_plan(attn_cuda_anchor_t *a, const attn_cuda_batch_t *b, const uint8_t *selects,
                          const attn_cuda_anchor_policy_t *pol, void *stream);

/* Device, once per layer, on stream: q (rows, n_heads, head_dim) bf16 of the
 * planned batch; k, v this layer's pools; writes out (bf16, q's layout) and
 * lse (rows, n_heads; may be NULL) of the selecting sequences' rows only. */
int attn_cuda_anchor_run(const attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out,
                         float *lse, void *stream);

/* Adds to pairs[s] (device, one per sequence of the planned batch) the
 * query-key pairs selecting sequence s attended in the last run, all heads
 * (anchor windows, stripes and own keys; integer sums, exact): for density
 * reports (density = pairs / (n_heads * causal pairs)). On stream, after run. */
int attn_cuda_anchor_pairs(const attn_cuda_anchor_t *a, unsigned long long *pairs, void *stream);

/* ---- one sequence spread over a context-parallel ring's ranks (src/attn/cp) ----------- */
/* Every 128-position block of the sequence lies on one rank, which holds its
 * keys (in its pool). Each rank runs every row of the slice (the caller
 * gathers all the slice's queries onto every rank) over the keys it holds:
 * the anchor pass on its held window blocks (the diagonal block where it
 * holds it), the stripes, own keys and whole blocks among its held keys;
 * its output is its partial (out, lse) of every row, which the caller
 * merges over the ranks by LSE. Between the passes, the caller's all-gather
 * (every rank the same call) joins:
 *   1. every row's anchor (its largest score over the windows: the maximum
 *      of the ranks' maxima, so exactly the single-rank anchor) and its LSE
 *      over the windows (for the probe): 2 x n_q x n_heads floats a rank;
 *   2. with a probe, each probe row's kept and missed mass over the
 *      candidates (doubles, a rank's sums over the keys it holds).
 * So every rank selects the single-rank kernel's stripes, key for key,
 * restricted to its keys (the pooled queries and anchors are the same bits
 * on every rank); a probe's decision differs from the single-rank one only
 * where the sums' order moves its share across the threshold (double
 * rounding). The pairs (attn_cuda_anchor_pairs) are this rank's share: the
 * ranks' add up to the single-rank count exactly. */
typedef struct {
    int n_q, kv_len;      // the slice: rows at positions kv_len - n_q .. kv_len - 1 (keys before: cached)
    const int32_t *pages; // (ceil(kv_len / page_size)) page ids in this rank's pool; read for held blocks only
    const uint8_t *held;  // (ceil(kv_len / 128)) 1 for the 128-position blocks this rank holds, else 0
    attn_cuda_anchor_policy_t pol;
} attn_cuda_anchor_dist_seq_t;

/* rbuf (n_ranks * bytes) receives every rank's sbuf, rank i's at i * bytes
 * (cp_allgather), in stream order; device memory. */
typedef int (*attn_cuda_allgather_fn)(void *ctx, const void *sbuf, size_t bytes, void *rbuf);

/* Once, after create: room for the dist API with n_ranks ranks (the
 * all-gathers' buffers). LC_EINVAL, LC_ENOMEM. */
int attn_cuda_anchor_dist_reserve(attn_cuda_anchor_t *a, int n_ranks);
/* Host, once per step, on stream: plans the one sequence. LC_EINVAL for an
 * inconsistent sequence or policy, LC_ERANGE beyond the capacities or
 * without the reserve. A later attn_cuda_anchor_run refuses this plan. */
int attn_cuda_anchor_dist_plan(attn_cuda_anchor_t *a, const attn_cuda_anchor_dist_seq_t *d, void *stream);
/* Device, once per layer, on stream: q (n_q, n_heads, head_dim) bf16, all
 * the slice's rows in position order; k, v this layer's pools; writes this
 * rank's partial out (bf16, q's layout) and lse (n_q, n_heads; a row with
 * none of its keys here: out 0, lse -inf). Calls gather once, or twice with
 * a probe, the same calls on every rank. */
int attn_cuda_anchor_dist_run(attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out, float *lse,
                              attn_cuda_allgather_fn gather, void *ctx, void *stream);

/* For tests: the keys of the last planned sequence's last run for head h and
 * its chunk's group gi (0 = the group of q_pos0): keep (kv_len bytes, 1 =
 * attended) and own (kv_len bytes, set only in the group of the last row:
 * bit 1 the chunk's last block's own keys, bit 2 the block before's; as
 * attn__anchor_keys). Synchronises the stream. */
int attn_cuda_anchor_keys(const attn_cuda_anchor_t *a, int h, int gi, uint8_t *keep, uint8_t *own, void *stream);

#ifdef __cplusplus
}
#endif
#endif
