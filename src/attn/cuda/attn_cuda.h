/* Dense attention on the GPU over a paged bf16 KV cache: causal prefill of
 * prompt chunks (on top of cached prefixes) and single-token decode, both
 * batched over sequences of different lengths, both returning the LSE.
 *
 * The C boundary of src/attn/cuda: everything CUDA stays in the .cu files.
 * All functions return 0 or a negative lc status (common/status.h) and never
 * abort; device errors come back as LC_EDEVICE after a log line.
 *
 * KV layout (per layer; K and V alike, bf16):
 *   (n_pool_pages, n_kv_heads, page_size, head_dim)
 * page-major, then head, then token, then dim: one head's page is one
 * contiguous page_size x head_dim tile (the CPU pool's order).
 *
 * Paged view of a batch (CSR, FlashInfer style), host arrays:
 *   kv_indptr  (n_seqs+1)  sequence s owns kv_indices[kv_indptr[s] .. kv_indptr[s+1])
 *   kv_indices (kv_indptr[n_seqs])  page ids in [0, n_pool_pages)
 *   kv_len     (n_seqs)  valid keys of s, the new ones included (positions 0..kv_len-1)
 *   q_indptr   (n_seqs+1)  prefill: sequence s's query rows q_indptr[s]..q_indptr[s+1]-1
 *              sit at positions kv_len[s]-nq_s .. kv_len[s]-1 (causal);
 *              decode: NULL, row s is sequence s's one query at position kv_len[s]-1.
 *   q_pos0     (n_seqs) or NULL, prefill only: sequence s's rows sit at positions
 *              q_pos0[s] .. q_pos0[s]+nq_s-1 instead, key j of its view visible to the
 *              row at position t iff j <= t; so q_pos0[s] >= kv_len[s] makes every key
 *              visible to every row (a query chunk against an earlier key chunk, as in
 *              the ring of src/attn/cp), and nq_s may exceed kv_len[s]. NULL is the same
 *              as q_pos0[s] = kv_len[s] - nq_s, bit for bit.
 *   mask_off   (n_seqs) or NULL, prefill only: block-sparse sequences (below), -1 = dense.
 *
 * Block-sparse prefill (FlexPrefill's pattern; the mask from flex_cuda.h):
 * blocks of 128 positions aligned to position 0, query block qb = pos / 128,
 * key block kb = key / 128. Sequence s with mask_off[s] >= 0 computes, for a
 * row in query block qb and head h, only the key blocks whose bit is set in
 *   block_mask[mask_off[s] + (h * n_qb + qb - qb0) * words + kb / 32], bit kb % 32,
 * with qb0 = q_pos0 / 128 (q_pos0 = kv_len - nq by default), n_kb =
 * (kv_len - 1) / 128 + 1, n_qb = (q_pos0 + nq - 1) / 128 - qb0 + 1 (= n_kb -
 * qb0 by default), words = (n_kb + 31) / 32 (attn_cuda_mask_words() for the
 * default), and always its diagonal block kb = qb (for rows placed past the
 * keys, the last key block). Bits above the diagonal are ignored.
 *
 * Plan/run: a plan object per kind (prefill, decode) is created once with
 * capacities. attn_cuda_plan() runs on the host once per step: it checks the
 * batch, builds the work list (prefill: (sequence, query block of up to 128
 * rows aligned to 128 positions, head) tiles, longest first; decode: (sequence, kv head, key chunk) split-K items),
 * copies it with the page table to the device on the stream, and says how
 * large the workspace of attn_cuda_run() must be. attn_cuda_run() runs one
 * layer; it allocates nothing. Every layer of the step reuses the plan.
 *
 * Determinism: a sequence's work split depends only on its own lengths
 * (query blocks of 128 rows; decode chunks fixed in keys by its kv_len), and
 * split-K partials merge in chunk order, so a sequence's outputs are bitwise
 * the same alone or in any batch.
 *
 * Threading: one plan is used from one host thread and one stream at a time
 * (the next plan waits for the previous step's upload from its pinned buffer;
 * decode keeps merge counters in the plan). */
#ifndef LC_ATTN_CUDA_H
#define LC_ATTN_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int n_heads;          // query heads (GQA: a multiple of n_kv_heads; n_heads/n_kv_heads <= 16 for decode)
    int n_kv_heads;       // key/value heads
    int head_dim;         // 64, 128 or 256 (256: dense only, on the mma.sync prefill kernel; no sparse method)
    int page_size;        // tokens per page: 64 or 128
    int64_t n_pool_pages; // pages in one layer's K (and V) pool
    float scale;          // score scale, usually 1/sqrt(head_dim)
} attn_cuda_shape_t;

typedef enum { ATTN_CUDA_PREFILL = 0, ATTN_CUDA_DECODE = 1 } attn_cuda_kind_t;

typedef struct {
    int max_seqs;       // sequences per step
    int64_t max_q_rows; // prefill: query rows per step (decode: ignored, rows = sequences)
    int64_t max_pages;  // kv_indices entries per step
    int split_keys;     // decode: smallest split-K chunk in keys, a multiple of 64 (0: 512); fixed per plan
} attn_cuda_limits_t;

/* One step's batch, host memory (see the CSR above). */
typedef struct {
    int n_seqs;
    const int32_t *q_indptr;   // (n_seqs+1), prefill only; NULL for decode
    const int32_t *kv_indptr;  // (n_seqs+1)
    const int32_t *kv_indices; // (kv_indptr[n_seqs])
    const int32_t *kv_len;     // (n_seqs)
    const int32_t *mask_off;   // (n_seqs) prefill: word offset of s's block mask, -1 dense; NULL: all dense
    const int32_t *q_pos0;     // (n_seqs) prefill: position of s's first query row; NULL: kv_len - nq (above)
    /* > 0: a sliding window (Gemma 3's local layers): a row at position t
     * sees keys t - window < j <= t only (prefill: with q_pos0, in the view's
     * positions); the plan visits only the pages a row can see. Dense only
     * (no mask_off); prefill runs it on the mma.sync kernel. 0: none. */
    int window;
} attn_cuda_batch_t;

/* uint32 words of one sequence's block mask (all heads) for a prefill chunk
 * of n_q rows ending at kv_len keys. */
size_t attn_cuda_mask_words(int n_q, int kv_len, int n_heads);

/* One layer's call. All pointers are device memory. */
typedef struct {
    const void *q;              // (rows, n_heads, head_dim) bf16; rows = q_indptr[n_seqs] (prefill) or n_seqs (decode)
    void *out;                  // (rows, n_heads, head_dim) bf16
    float *lse;                 // (rows, n_heads) natural log of sum exp(scale * q.k), or NULL
    const void *k;              // (n_pool_pages, n_kv_heads, page_size, head_dim) bf16, this layer
    const void *v;              // same layout as k
    void *workspace;            // decode split-K partials (16-byte aligned); may be NULL when the plan asked for 0
    size_t workspace_bytes;     // >= what attn_cuda_plan() returned
    int variant;                // 0: the default kernel; 1..: ablation variants for tests and benchmarks
    const uint32_t *block_mask; // prefill: the block masks of the planned mask_off (NULL when none is sparse)
    float *rowmax;              // prefill only, or NULL: (rows, n_heads) each row's largest scale * q.k over the
                                // keys it attended (the online softmax's final max m; AnchorAttention's anchor).
                                // Decode has no such output: attn_cuda_run() refuses it (LC_EINVAL).
    int mask_only;              // prefill: block-sparse sequences attend their set bits only, not the diagonal
                                // block (bits at or above it are ignored; rows placed past the keys by q_pos0:
                                // every bit); a row with none gets out 0, lse and rowmax -inf
                                // (AnchorAttention's whole kept blocks, the ring's steps past the own keys);
                                // 2: the set bits only, the diagonal block included when its bit is set
                                // (rows within the keys; a context-parallel rank's share of the anchor pass)
    int pdl_fresh;              // decode: 0, an ordinary launch. n > 0: a programmatic dependent launch (sm_90
                                // PDL): the kernel starts while the stream's previous kernel finishes, and its
                                // first stages of each sequence's keys below kv_len - n load before that kernel
                                // has completed (the plan too); q, the keys from kv_len - n on and every output
                                // wait for it. So n must cover every key a kernel still running may write (the
                                // step's new rows); the output is bitwise the same either way. It pays between
                                // back-to-back kernels (batch-1 decode calls chained: 2.50 -> 2.73 TB/s at 32K
                                // on an H100). The executor leaves it 0: its attention follows a CUDA graph's
                                // launch, not a kernel, and with it a decode step took the same time
                                // (docs/benchmarks.md).
} attn_cuda_args_t;

typedef struct attn_cuda_plan attn_cuda_plan_t;

/* A sum over the ranks of a context-parallel ring of n floats of device
 * memory, in stream order, every rank getting the same bits (cp_allreduce_sum):
 * the selections spread over the ranks (flex_cuda.h, quest_cuda.h) call it. */
typedef int (*attn_cuda_sum_fn)(void *ctx, float *buf, size_t n);

/* Checks the shape against what the kernels support (LC_EUNSUPPORTED: head_dim,
 * page_size, GQA group, or a GPU other than sm_90 for prefill) and allocates the
 * pinned and device buffers for the given capacities (LC_ENOMEM, LC_EDEVICE). */
int attn_cuda_plan_create(const attn_cuda_shape_t *shape, attn_cuda_kind_t kind, const attn_cuda_limits_t *lim,
                          attn_cuda_plan_t **out);
void attn_cuda_plan_destroy(attn_cuda_plan_t *p);

/* Plans one step over the batch on stream (a cudaStream_t, NULL = default).
 * LC_EINVAL for an inconsistent batch (lengths, page ids out of the pool, too
 * few pages), LC_ERANGE when the batch exceeds the limits. *workspace_bytes
 * gets the size attn_cuda_run() needs (0 for prefill). */
int attn_cuda_plan(attn_cuda_plan_t *p, const attn_cuda_batch_t *b, void *stream, size_t *workspace_bytes);

/* Runs one layer over the planned batch on stream (the plan's stream order). */
int attn_cuda_run(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, void *stream);

/* Adds to pairs[s] (device, one per planned sequence) the query-key pairs
 * block-sparse sequence s computes under block_mask (all heads; the dense
 * ones get nothing): for density reports. Integer sums, so exact.
 * LC_EUNSUPPORTED when a block-sparse sequence was planned with q_pos0. */
int attn_cuda_mask_pairs(const attn_cuda_plan_t *p, const uint32_t *block_mask, unsigned long long *pairs,
                         void *stream);

/* Number of ablation variants of the plan's kind (variant 0 .. n-1) and a
 * name for each, for tests and benchmarks. */
int attn_cuda_variant_count(const attn_cuda_plan_t *p);
const char *attn_cuda_variant_name(const attn_cuda_plan_t *p, int variant);

#ifdef __cplusplus
}
#endif
#endif
