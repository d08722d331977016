/* Context-parallel attention on the GPU kernels (CUDA builds only): the
 * pass-KV ring for a sharded prompt slice and the sharded decode, each rank
 * computing with attn_cuda.h's kernels on device buffers and exchanging
 * through a device communicator (cp_comm_cuda.h: device-local or NCCL).
 *
 * What is here:
 *  - prefill, dense, pass-KV, one sharded sequence per plan: the slice
 *    [pos0, pos0 + n_tok) on top of a cached prefix (pos0 >= 0), blocks owned
 *    as the owner table says (cp_zigzag, cp_owner_next). Each rank gathers
 *    the K/V pages of the blocks it owns into a pack (page-major, so the
 *    kernels read it through a page view); the packs travel the ring (to
 *    rank + 1), the send and receive of step k+1 started before the compute
 *    of step k, into the other of two pack buffers. At step k a rank attends
 *    its rows, run by run (cp_ring_map.h), to the visiting pack with one
 *    attn_cuda_run: the rank's own blocks causally (step 0), earlier blocks in
 *    full (q_pos0 past the keys), later ones not at all. The step's partials
 *    (bf16 output and LSE) merge into the rows' running output (f32) in step
 *    order; the last step writes out and lse. No float atomics: the result is
 *    a function of N, the layout and the lengths only, bitwise.
 *  - prefill, dense, pass-Q, for a slice on a long cached prefix (where the
 *    queries and the partials coming back weigh less than the KV the
 *    pass-KV ring would move, or when asked for): the rank's query rows go
 *    round the ring instead, double-buffered like the packs; at step k a rank
 *    attends the visiting rows (of rank r - k), run by run, to the blocks it
 *    holds, straight from its pool, into their partials (bf16 output and
 *    LSE); one all-to-all brings every rank the partials of its rows, merged
 *    in rank order. Needs lim.max_q_rows.
 *  - decode, dense: every row of the batch (one per sequence) is owned by the
 *    rank holding its sequence's last block; its query reaches every rank
 *    (an all-gather of the queries), each rank attends the blocks it holds
 *    with the split-K decode kernel (its blocks as a page view, LSE out), an
 *    all-gather of the partials lets the owner merge them in rank order.
 *  - decode, Quest (cp_cuda_dec_batch_t.budget): every rank plans the whole
 *    batch (quest_cuda.h's distributed plan), scores the pages it holds from
 *    its summaries, one all-reduce of the score table (each score has one
 *    owner) gives every rank every score, so every rank makes the
 *    single-rank selection, page for page; each attends the selected pages
 *    it holds, and the partials merge as the dense ones do.
 *  - per-step timing (cp_timing_t of cp_attn.h), measured with CUDA events on
 *    the rank's stream when enabled: compute (attention and merge of a ring
 *    step) and the wait for the step's transfer after it.
 *  - prefill, FlexPrefill, pass-KV (cp_cuda_seq_t.flex; every 128-position
 *    block of the sequence on one rank: zig-zag units of a multiple of 128):
 *    per layer the selection runs spread over the ranks
 *    (attn_cuda_flex_dist_select: each rank scores the representative rows
 *    against the keys it holds and pools its blocks, seven all-reduces of
 *    tables every entry of which has one owner join them), so every rank
 *    holds the mask one rank would compute over the whole sequence, bit for
 *    bit. One kernel cuts it into each ring step's masks (the rank's query
 *    blocks against the visiting pack's key blocks), and each step runs the
 *    block-sparse kernel: step 0 (the own blocks) with the diagonal, the
 *    others (every key before the rows) their set bits only (mask_only, the
 *    rows placed at the pack's end plus their offset in their 128-block, so
 *    that view blocks are whole blocks). A query block with no bit in the
 *    visiting pack loads its queries and nothing else. The pairs computed
 *    are counted on the device from the whole mask (cp_cuda_sparse_pairs).
 *  - decode, TidalDecode (cp_cuda_dec_batch_t.tidal): a selection layer is
 *    the dense sharded decode, then every row's LSE goes to every rank, each
 *    rank computes the attention mass of the positions it holds, the masses
 *    (and their histograms) are all-reduced, and every rank selects; later
 *    layers attend each rank's share of the selection (the positions it
 *    holds, kept on the device) and merge by LSE as the dense decode does.
 *  - prefill, AnchorAttention (cp_cuda_seq_t.anchor; every 128-position
 *    block on one rank, as FlexPrefill): not a ring but all-to-alls. Every
 *    rank gets every row of the slice (one all-to-all of the queries, put
 *    in position order), runs the method over the keys it holds
 *    (anchor_cuda.h's dist API: the anchor pass on its held window blocks,
 *    every row's anchor as the maximum over the ranks, so the same stripes
 *    as one rank, key for key, cut to its keys; the probe's sums over the
 *    ranks) into a partial of every row, and one all-to-all brings every
 *    rank its rows' N partials, merged in rank order (pass-Q's merge). A
 *    rank attends only the pairs whose keys it holds, so the pairs the
 *    ranks count add up to the single-rank count. The queries and partials
 *    of the whole slice travel (about 2 n_tok H D bytes each way a rank)
 *    where a ring moves the KV: at a prompt slice's length (KV heads a
 *    quarter of the query heads) the queries weigh twice the KV.
 * What is not: several sharded sequences in one plan (one plan per
 * sequence: the executor, src/model/exec_cuda_cp.cu, plans each rank again
 * between a step's sharded slices), sliding windows.
 *
 * Buffers (device memory of the rank's GPU, bf16 unless said):
 *   pool k, v: the rank's KV pool, (n_pool_pages, n_kv_heads, page_size, head_dim)
 *              per layer as attn_cuda.h; a block's page id (the block table)
 *              only needs to be valid on the rank that owns it.
 *   prefill q, out: (rows, n_heads, head_dim), the rank's rows in position
 *              order (cp_cuda_prefill_rows); lse: (rows, n_heads) f32 or NULL.
 *   decode q, out: (n_seqs, n_heads, head_dim), row s = sequence s: the rank
 *              reads and writes only the rows it owns (cp_cuda_decode_owner);
 *              lse (n_seqs, n_heads) f32 or NULL, likewise.
 *
 * Plan, then run: cp_cuda_plan_create allocates everything for its limits;
 * cp_cuda_plan_prefill / cp_cuda_plan_decode run on the host once per step
 * (every rank with the same batch) and upload on the rank's stream; the
 * per-layer runs allocate nothing. Every rank of the communicator calls the
 * run for the same layer, from its own host thread (with its device current);
 * the calls are ordered on the communicator's stream (cp_comm_stream).
 * Errors: 0 or a negative lc status; LC_EDEVICE after a log line for a CUDA
 * error, never an abort. */
#ifndef LC_ATTN_CP_CUDA_H
#define LC_ATTN_CP_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_comm.h"
#include "attn/cuda/anchor_cuda.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/flex_cuda.h"
#include "attn/cuda/quest_cuda.h"
#include "attn/cuda/tidal_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t max_tokens;       // prefill: most positions of a sharded sequence, its prefix included (0: no prefill)
    int64_t max_rows;         // prefill: most rows of one rank (0: max_tokens)
    int64_t max_pack_pages;   // prefill: most blocks one rank owns (0: all blocks of max_tokens)
    int max_decode_seqs;      // decode: rows per step (0: no decode)
    int64_t max_decode_pages; // decode: blocks of one rank over the batch (0: max_decode_seqs * max_tokens blocks)
    int64_t max_q_rows;       // prefill, pass-Q: most rows of one rank (0: pass-KV only); its buffers take
                              // about 4 (n_ranks + 1) x max_q_rows x n_heads x head_dim bytes
    int flex;                 // prefill: 1 = room for FlexPrefill slices (the selection's workspace for
                              // max_tokens keys, the whole mask and the steps' masks)
    int quest;                // decode: 1 = room for Quest rows (every rank plans the batch's whole page
                              // tables: max_decode_seqs x blocks of max_tokens pages, at least one block)
    int tidal_budget;         // decode: > 0 = room for TidalDecode rows of budgets up to this many positions
                              // (needs max_tokens, as quest)
    int64_t max_anchor_rows;  // prefill: > 0 = room for AnchorAttention slices of up to this many rows (every
                              // rank holds the whole slice's queries and partials, and anchor_cuda.h's
                              // workspace for this many rows over max_tokens keys)
    int anchor_min_local;     // the smallest anchor_local the workspace is made for (a multiple of 128; 0:
                              // 1024): it sizes the selection's key lists; a slice with a smaller one makes
                              // the workspace again at plan time (an allocation)
} cp_cuda_limits_t;

/* A slice's ring (cp_cuda_seq_t.mode); the values of the CPU ring's modes. */
enum { CP_CUDA_AUTO = 0, CP_CUDA_PASS_KV = 1, CP_CUDA_PASS_Q = 2 };

typedef struct cp_cuda_plan cp_cuda_plan_t;

/* For rank `rank` of n_ranks; shape: the rank's pool (attn_cuda.h; prefill
 * needs sm_90). LC_EINVAL, LC_EUNSUPPORTED, LC_ENOMEM or LC_EDEVICE. */
int cp_cuda_plan_create(const attn_cuda_shape_t *shape, const cp_cuda_limits_t *lim, int rank, int n_ranks,
                        cp_cuda_plan_t **out);
void cp_cuda_plan_destroy(cp_cuda_plan_t *p);

/* ---- prefill -------------------------------------------------------------------------- */
typedef struct {
    int64_t pos0, n_tok;                     // the slice: positions pos0 .. pos0 + n_tok - 1 (0 .. pos0 - 1 cached)
    const int32_t *blocks;                   // (ceil((pos0 + n_tok) / page_size)) page ids in the owner's pool
    const uint8_t *owner;                    // (same) the rank holding each block
    int mode;                                // CP_CUDA_AUTO: pass-Q where cp_pass_q_pays and every rank's rows fit
                                             // max_q_rows, else pass-KV; CP_CUDA_PASS_KV, CP_CUDA_PASS_Q: that ring
    const attn_cuda_flex_policy_t *flex;     // NULL: dense; else FlexPrefill with this policy (pass-KV only)
    const attn_cuda_anchor_policy_t *anchor; // NULL: not; else AnchorAttention with this policy (not with
                                             // flex; mode CP_CUDA_AUTO: its own exchange)
} cp_cuda_seq_t;

/* Plans the ring for one sequence on stream (the communicator's). LC_EINVAL
 * for a bad slice, owner, mode (pass-Q with FlexPrefill, any but
 * CP_CUDA_AUTO with AnchorAttention) or policy, or a 128-position block split
 * between ranks under FlexPrefill or AnchorAttention; LC_ERANGE past the
 * limits (pass-Q asked for without the room, FlexPrefill without lim.flex,
 * AnchorAttention past lim.max_anchor_rows, or its workspace for a smaller
 * anchor_local than the plan's out of memory). */
int cp_cuda_plan_prefill(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream);
/* 1 when the planned slice runs the pass-Q ring, 0 for pass-KV. */
int cp_cuda_prefill_pass_q(const cp_cuda_plan_t *p);
/* The planned rank's rows: their number; pos (may be NULL) gets their
 * positions, in order. */
int64_t cp_cuda_prefill_rows(const cp_cuda_plan_t *p, int64_t *pos);
/* One layer of the planned ring; collective over c. */
int cp_cuda_run_prefill(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                        float *lse);

/* Query-key pairs (all heads) this rank computed in its FlexPrefill and
 * AnchorAttention runs since the plan was created (counted on the device from the masks; waits
 * for the rank's stream). Dense runs count in cp_timing_t.prefill_pairs. */
int cp_cuda_sparse_pairs(cp_cuda_plan_t *p, void *stream, double *pairs);

/* ---- decode --------------------------------------------------------------------------- */
typedef struct {
    int n_seqs;
    const int32_t *kv_len;     // (n_seqs) keys of s, the new token's included (its query at kv_len - 1)
    const int32_t *blk_indptr; // (n_seqs + 1) s's blocks are blocks[blk_indptr[s] .. blk_indptr[s + 1])
    const int32_t *blocks;     // page ids in the owner's pool
    const uint8_t *owner;      // (blk_indptr[n_seqs]) the rank holding each block
    const int32_t *budget;     // (n_seqs) Quest's budget in pages per row (0: dense), or NULL: every row dense;
                               // a batch with budgets is not counted in cp_timing_t.decode_pairs
    const int32_t *tidal;      // (n_seqs) TidalDecode's budget in positions per row (>= 1), or NULL (not with
                               // budget); a row whose budget covers its positions has at most
                               // lim.tidal_budget + 1 of them
} cp_cuda_dec_batch_t;

int cp_cuda_plan_decode(cp_cuda_plan_t *p, const cp_cuda_dec_batch_t *b, void *stream);
/* The rank owning row s of the planned decode batch. */
int cp_cuda_decode_owner(const cp_cuda_plan_t *p, int s);
/* What row s of the planned decode batch attends, from the plan alone (the
 * same on every rank): Quest's pages per KV head, or TidalDecode's kept
 * positions per KV head (quest_cuda.h's attn_quest_count, tidal_cuda.h's
 * attn_tidal_count); -1 for a dense batch or a bad index. For density
 * counters. */
int64_t cp_cuda_decode_count(const cp_cuda_plan_t *p, int s);
/* One layer of the planned decode; collective over c. */
int cp_cuda_run_decode(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                       float *lse);
/* The same with the layer's Quest summaries of the rank's pool (kmin, kmax:
 * quest_cuda.h's layout, current for every page the rank holds), which a
 * batch planned with budgets needs. */
int cp_cuda_run_decode_kv(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const float *kmin,
                          const float *kmax, const void *q, void *out, float *lse);
/* A batch planned with TidalDecode budgets: layers before the step's first
 * selection run cp_cuda_run_decode (dense); a selection layer (select = 1)
 * runs the dense sharded decode, shares every row's LSE with every rank
 * (one all-reduce), and selects (attn_tidal_dist_select); a later layer
 * (select = 0) attends each rank's share of the selection and merges the
 * partials as the dense decode does. */
int cp_cuda_run_decode_tidal(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                             float *lse, int select);

/* ---- timing ----------------------------------------------------------------------------- */
/* on = 1: every later prefill run records events around its steps and, at
 * its end, waits for the device and adds the elapsed times to the plan's
 * cp_timing_t (a measuring mode: the host no longer runs ahead). Off by
 * default. */
void cp_cuda_plan_timing_enable(cp_cuda_plan_t *p, int on);
const cp_timing_t *cp_cuda_plan_timing(const cp_cuda_plan_t *p);
/* The last timed run's step k: compute and wait in ms (k < N), or -1. */
int cp_cuda_step_ms(const cp_cuda_plan_t *p, int k, float *compute_ms, float *wait_ms);

#ifdef __cplusplus
}
#endif
#endif
