/* Quest sparse decode on the GPU (src/attn/cpu/quest.c is the reference):
 * per (sequence, kv head) keep the newest page plus the B-1 other pages with
 * the largest upper bound ub = sum_c max(q_c * kmax_c, q_c * kmin_c) (GQA: the
 * max over the group's query heads; ties keep the earlier page), then attend
 * to those pages only. B is the sequence's budget in pages; a sequence whose
 * pages all fit, or whose budget is 0, runs dense through the same kernels.
 *
 * Shapes, KV layout and the CSR batch are attn_cuda.h's (decode: one query
 * row per sequence). The key summaries are kept per layer beside the pool:
 *   kmin, kmax  (n_pool_pages, n_kv_heads, head_dim) f32
 * per-channel min and max of K over a page's valid tokens.
 *
 * The executor, on its stream:
 *   - once per step: attn_quest_plan() over the decode rows, with each
 *     sequence's budget in pages (attn__quest_budget_pages(); 0 for dense).
 *     The budget is fixed per plan: the first layers that stay dense
 *     (attn_policy_t.dense_layers) run the dense decode plan, or a second
 *     quest plan with those sequences' budgets at 0;
 *   - per layer, after the step's K/V are written to the pool:
 *     1. summaries of every page the step wrote, in every layer and for
 *        every request (a later step may run Quest over them): prefill
 *        chunks' pages through attn_quest_summarize(), decode rows' newest
 *        pages through attn_quest_summarize_newest(). A page's summary must
 *        be current before it stops being its sequence's newest page (the
 *        newest page itself is never scored);
 *     2. attn_quest_run(): scores, selection and attention.
 *
 * Selection is exact: scores are computed in the CPU reference's arithmetic
 * order (channel by channel, f32, no fused multiply-add), and the top B-1 are
 * found by a radix threshold search on order-preserving keys and a stable
 * compaction, so the chosen pages equal attn__quest_select()'s on the same
 * f32 inputs. Attention runs through the dense split-K decode kernel over a
 * remapped view of the pool (each (sequence, kv head) a sequence of its own),
 * so its numerics are the dense kernel's.
 *
 * Determinism: a sequence's selection and its split depend on its own lengths,
 * budget and data only: its outputs are bitwise the same in any batch.
 *
 * Errors as in attn_cuda.h: 0 or a negative lc status, never an abort.
 * Threading: one plan per host thread and stream. */
#ifndef LC_ATTN_QUEST_CUDA_H
#define LC_ATTN_QUEST_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct attn_quest_plan attn_quest_plan_t;

/* One layer's call. All pointers are device memory. */
typedef struct {
    const void *q;          // (n_seqs, n_heads, head_dim) bf16
    void *out;              // (n_seqs, n_heads, head_dim) bf16
    float *lse;             // (n_seqs, n_heads) natural log of sum exp(scale * q.k) over the selected keys, or NULL
    const void *k;          // (n_pool_pages, n_kv_heads, page_size, head_dim) bf16, this layer
    const void *v;          // same layout as k
    const float *kmin;      // (n_pool_pages, n_kv_heads, head_dim) this layer's summaries, 16-byte aligned
    const float *kmax;      // same layout as kmin
    void *workspace;        // scores and split-K partials, 16-byte aligned
    size_t workspace_bytes; // >= what attn_quest_plan() returned
} attn_quest_args_t;

/* Recomputes the summaries of n pages of one layer: for i < n, page pages[i]
 * with its first page_len[i] tokens valid (1..page_size), every kv head.
 * pages and page_len are device arrays (n). LC_EINVAL for a bad shape or
 * pointer; the page ids are trusted (the caller's own block table). */
int attn_quest_summarize(const attn_cuda_shape_t *shape, const void *k, const int32_t *pages, const int32_t *page_len,
                         int n, float *kmin, float *kmax, void *stream);

/* Checks the shape (as attn_cuda_plan_create for decode, sm_90 included;
 * head_dim 64, 128 or 256 with at most 16 query heads a kv head, 8 at 256
 * dims; LC_EUNSUPPORTED beyond it) and allocates the plan's host and device
 * buffers. lim as for decode; lim->split_keys is the attention's smallest
 * split-K chunk in keys, a multiple of 64 (0: 256). */
int attn_quest_plan_create(const attn_cuda_shape_t *shape, const attn_cuda_limits_t *lim, attn_quest_plan_t **out);
void attn_quest_plan_destroy(attn_quest_plan_t *p);

/* Plans one decode step (b->q_indptr NULL): budget_pages (n_seqs, host) is
 * each sequence's B (>= 1), or 0 for dense. LC_EINVAL / LC_ERANGE as
 * attn_cuda_plan. *workspace_bytes gets what attn_quest_run() needs. */
int attn_quest_plan(attn_quest_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget_pages, void *stream,
                    size_t *workspace_bytes);

/* Runs one layer over the planned step on stream. */
int attn_quest_run(const attn_quest_plan_t *p, const attn_quest_args_t *a, void *stream);

/* ---- Quest over a batch spread over a context-parallel ring's ranks (src/attn/cp) ---- */
/* Each sequence's pages lie on several ranks; every rank plans the same batch
 * (every sequence, its whole page table in logical order) with held[i] = 1
 * for the pages of kv_indices it holds (the others' ids are not read). Per
 * layer each rank scores the pages it holds (the others 0), sum (a sum over
 * the ranks, attn_cuda.h) joins the scores, every rank makes the single-rank
 * selection (the same scores bit for bit, so the same pages), and attends
 * the selected pages it holds: out and lse are this rank's partial (lse
 * -inf, out 0 when it holds none), to be merged by LSE with the others'.
 * attn_quest_run refuses a plan made here, attn_quest_dist_run one made by
 * attn_quest_plan. */
int attn_quest_dist_plan(attn_quest_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget_pages,
                         const uint8_t *held, void *stream, size_t *workspace_bytes);
int attn_quest_dist_run(const attn_quest_plan_t *p, const attn_quest_args_t *a, attn_cuda_sum_fn sum, void *ctx,
                        void *stream);

/* Recomputes the summaries of every planned sequence's newest page (step 1 of
 * a decode step), on stream. */
int attn_quest_summarize_newest(const attn_quest_plan_t *p, const void *k, float *kmin, float *kmax, void *stream);

/* Pages the last run attended for (seq, kv_head): their logical indices in
 * the sequence (ascending, the newest last) into pages (cap entries).
 * Returns the count (dense: every page), or a negative status. Synchronises
 * the stream; for tests and density counters, not the hot path. */
int attn_quest_selected(const attn_quest_plan_t *p, int seq, int kv_head, int32_t *pages, int cap, void *stream);

/* Pages each planned sequence attends per kv head (its B, or all its pages),
 * from the plan alone: for density counters. -1 for a bad index. */
int attn_quest_count(const attn_quest_plan_t *p, int seq);

#ifdef __cplusplus
}
#endif
#endif
