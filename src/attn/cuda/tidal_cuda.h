/* TidalDecode sparse decode on the GPU (src/attn/cpu/tidal.c is the
 * reference): at a selection layer each row keeps, per kv head, the budget
 * positions with the largest attention mass summed over the group's query
 * heads; the layers after it in the same step attend only those positions
 * plus the row's newest one. The positions stay on the device, in a buffer
 * the plan owns, from the selection layer to the next selection or the next
 * plan.
 *
 * Shapes, KV layout and the CSR batch are attn_cuda.h's (decode: one query
 * row per sequence, at position kv_len - 1). A row's budget keeps
 * keep = min(budget, kv_len) positions; keep == kv_len selects every
 * position without any work, and its attention then equals the dense one.
 *
 * The executor, on its stream, once per step: attn_tidal_plan() over the
 * step's TidalDecode rows with their budgets. Per layer, after the step's
 * K/V are written to the pool:
 *   - a selection layer runs dense attention (attn_cuda_run, ATTN_CUDA_DECODE)
 *     with its LSE output, then attn_tidal_select() over the same q and K with
 *     that LSE: the exact softmax of each query head is exp(scale q.k - lse);
 *   - a later layer of the step runs attn_tidal_attend() instead of the dense
 *     kernel;
 *   - a layer before the first selection runs dense (no selection yet).
 *
 * Selection (attn__tidal_pick's set): mass[j] = sum over the group's heads of
 * exp(scale q_g.k_j - lse_g), f32; the keep-th largest is found by a radix
 * threshold search on the float bits (no sort), and the selection is every
 * mass above it plus the earliest positions equal to it, written ascending.
 * The mass's arithmetic is the GPU's (bf16 products summed in f32 by the
 * tensor cores), not the CPU's: positions whose masses differ by rounding
 * alone may be chosen differently; exact ties go to the earlier position.
 *
 * Attention gathers the positions token by token from the paged pool, split
 * into chunks of the row's list whose size depends only on the row's keep,
 * and merges the chunks by LSE in chunk order. No float atomics anywhere: a
 * row's selection and outputs are bitwise the same alone or in any batch.
 *
 * Host side in tidal.cu, kernels in tidal_kern.cu.
 * Errors as in attn_cuda.h: 0 or a negative lc status, never an abort.
 * Threading: one plan per host thread and stream. */
#ifndef LC_ATTN_TIDAL_CUDA_H
#define LC_ATTN_TIDAL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct attn_tidal_plan attn_tidal_plan_t;

typedef struct {
    int max_rows;      // decode rows per step
    int64_t max_pages; // kv_indices entries per step
    int max_budget;    // largest keep of a row that keeps fewer than all its positions (the buffer's size)
    int split_keys;    // attention: smallest chunk of a row's list, a multiple of 64 (0: 128)
} attn_tidal_limits_t;

/* A selection layer's call. Device pointers. */
typedef struct {
    const void *q;          // (n_rows, n_heads, head_dim) bf16, this layer's queries
    const void *k;          // (n_pool_pages, n_kv_heads, page_size, head_dim) bf16, this layer
    const float *lse;       // (n_rows, n_heads) natural log: the dense pass's LSE over the same q and K
    void *workspace;        // the masses, 16-byte aligned
    size_t workspace_bytes; // >= what attn_tidal_plan() returned
} attn_tidal_select_args_t;

/* A sparse layer's call. Device pointers. */
typedef struct {
    const void *q;          // (n_rows, n_heads, head_dim) bf16
    void *out;              // (n_rows, n_heads, head_dim) bf16
    float *lse;             // (n_rows, n_heads) natural log of sum exp(scale * q.k) over the attended keys, or NULL
    const void *k;          // (n_pool_pages, n_kv_heads, page_size, head_dim) bf16, this layer
    const void *v;          // same layout as k
    void *workspace;        // the chunks' partial results, 16-byte aligned (may be the select call's)
    size_t workspace_bytes; // >= what attn_tidal_plan() returned
} attn_tidal_attend_args_t;

/* Checks the shape (head_dim 64/128/256, page_size 64/128, n_heads / n_kv_heads
 * <= 16; LC_EUNSUPPORTED beyond, and on a GPU older than sm_90) and the
 * limits (LC_EINVAL), and allocates the plan's pinned and device buffers,
 * the selection among them (LC_ENOMEM, LC_EDEVICE). */
int attn_tidal_plan_create(const attn_cuda_shape_t *shape, const attn_tidal_limits_t *lim, attn_tidal_plan_t **out);
void attn_tidal_plan_destroy(attn_tidal_plan_t *p);

/* Plans one decode step (b->q_indptr NULL, b->mask_off ignored): budget
 * (n_rows, host) is each row's budget in positions, >= 1. Forgets the
 * previous step's selection. LC_EINVAL for an inconsistent batch or a budget
 * < 1, LC_ERANGE beyond the limits (a keep below kv_len above max_budget
 * included). *workspace_bytes gets the size one workspace must have to serve
 * both calls (they may share it: nothing in it outlives a call). */
int attn_tidal_plan(attn_tidal_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget, void *stream,
                    size_t *workspace_bytes);

/* Chooses every planned row's positions on stream (a selection layer). */
int attn_tidal_select(attn_tidal_plan_t *p, const attn_tidal_select_args_t *a, void *stream);

/* Attends over the last selection of this step on stream; LC_EINVAL when
 * no attn_tidal_select() ran since the plan. */
int attn_tidal_attend(const attn_tidal_plan_t *p, const attn_tidal_attend_args_t *a, void *stream);

/* ---- TidalDecode over a batch spread over a context-parallel ring's ranks (src/attn/cp) -- */
/* Every rank plans the same batch (every row, its whole page table) with
 * held[i] = 1 for the pages of kv_indices it holds (the others' ids are not
 * read); a row whose budget covers all its positions must have at most
 * max_budget + 1 of them (LC_ERANGE). At a selection layer, a->lse is the
 * row's LSE over all its keys (the merged dense ring's, the same on every
 * rank): each rank computes the masses of the positions it holds, sum (a
 * sum over the ranks, attn_cuda.h) joins the masses and the histograms, every
 * rank selects (the single-rank selection, up to positions whose masses
 * differ by the LSE's rounding) and keeps its share of each list (the
 * selected positions it holds, the newest where it holds it). attn_tidal_attend
 * then attends that share: out and lse are this rank's partial (out 0, lse
 * -inf when it holds none), to be merged by LSE with the others'. */
int attn_tidal_dist_plan(attn_tidal_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget, const uint8_t *held,
                         void *stream, size_t *workspace_bytes);
int attn_tidal_dist_select(attn_tidal_plan_t *p, const attn_tidal_select_args_t *a, attn_cuda_sum_fn sum, void *ctx,
                           void *stream);

/* The positions the last selection kept for (row, kv_head), ascending, into
 * pos (cap entries): returns their count (keep), LC_ERANGE when cap is too
 * small, LC_EINVAL without a selection. Synchronises the stream; for tests
 * and density counters, not the hot path. */
int attn_tidal_selected(const attn_tidal_plan_t *p, int row, int kv_head, int32_t *pos, int cap, void *stream);

/* Positions row keeps per kv head (its keep), from the plan alone; -1 for a
 * bad index. A sparse layer attends these plus the newest when not kept. */
int attn_tidal_count(const attn_tidal_plan_t *p, int row);

#ifdef __cplusplus
}
#endif
#endif
