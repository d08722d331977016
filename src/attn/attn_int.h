/* Internal to src/attn: the per-sequence state, the plan, and the entry
 * points of each method, dispatched from plan.c. Not for other modules. */
#ifndef LC_ATTN_INT_H
#define LC_ATTN_INT_H

#include "attn/attn.h"
#include "attn/cpu/kern.h"

struct attn_state {
    attn_shape_t shape;
    int n_layers;
    attn_policy_t pol;
    attn_stats_t stats;
    /* TidalDecode: per decode row of the current step (a step decodes one row
     * per sequence, or several when a preempted sequence is recomputed) and
     * per KV head, the positions chosen at the last selection layer, sorted;
     * a row's selection is valid while tidal_nkv[row] equals its n_kv. Sized
     * by the plan (attn__state_reserve). */
    int64_t *tidal_pos; // (tidal_rows, n_kv_heads, tidal_cap)
    int *tidal_n;       // (tidal_rows, n_kv_heads)
    int64_t *tidal_nkv; // (tidal_rows); -1: no selection
    int tidal_cap;
    int tidal_rows;
};

/* Grows st's per-row selection arrays to rows rows (plan time). 0 or LC_ENOMEM. */
int attn__state_reserve(attn_state_t *st, int rows);

/* ---- the plan -------------------------------------------------------------------- */
/* A generated row of the step: decode rows of all sequences run together. */
typedef struct {
    int seq;      // index in the batch
    int row;      // row within the sequence's slice (TidalDecode's selection slot)
    int64_t n_kv; // keys it sees: 0 .. n_kv-1 (its position is n_kv-1)
    int qrow;     // row of the batch
    int rg_cap;   // ranges it may need per KV head
    /* TidalDecode: a selection layer of this step was a sliding-window one
     * (the model's own window, no selection there): the next global layer
     * selects in its place. */
    int tidal_due;
} attn_drow_t;

/* One piece of one decode row and KV head. */
typedef struct {
    int drow, kh;
    int64_t piece;
} attn_ditem_t;

struct attn_plan {
    attn_shape_t shape;
    int n_layers;
    int n_threads; // team size the workspace was sized for
    int n_rows;
    int block_size;
    attn_seq_t *seqs; // (cap_seqs) copy of the batch's slices
    int n_seqs, cap_seqs;
    attn_drow_t *drows; // (cap_drows)
    int n_drows, cap_drows;
    /* decode bookkeeping, sized at plan time */
    attn_range_t *drg; // ranges of (drow, kh) at drg + drg_off[drow * KH + kh]
    size_t *drg_off;   // (n_drows * KH)
    int *drg_n;        // (n_drows * KH)
    size_t cap_drg, cap_dk;
    int *dk_item0, *dk_nitem; // (n_drows * KH) first item and item count of (drow, kh)
    attn_ditem_t *ditems;     // (cap_ditems)
    double *dcomp;            // (cap_ditems) visible pairs of each item
    float *dpart;             // (cap_ditems, G, head_dim + 1) piece results: out then lse
    size_t cap_ditems;
    /* workspace: one arena per thread, then one shared */
    unsigned char *ws;
    size_t ws_cap, per_thread, shared_bytes;
    attn_arena_t *arenas; // (n_threads)
    attn_arena_t shared;
};

/* ---- prefill methods (one sequence's prompt chunk) ---------------------------------- */
typedef struct {
    size_t per_thread, shared;
} attn_ws_t;

/* Each returns 0 or a negative status; *computed receives the visible
 * query-key pairs the call attended, summed over query heads. arenas: one per
 * thread of the team; shared: one for the call. prompt_end: attn_seq_t's
 * (FlexPrefill: the query blocks holding the prompt's last rows attend every
 * key; 0: unknown). */
attn_ws_t attn__flex_ws(const attn_shape_t *shape, const attn_policy_t *pol, int n_q, int64_t q_pos0);
int attn__prefill_flex(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *arenas, attn_arena_t *shared,
                       const float *q, int n_q, int64_t q_pos0, int64_t prompt_end, const attn_kv_t *kv, float *out,
                       float *lse, double *computed);
/* FlexPrefill's pieces for the context-parallel ring (attn/cp): whether a
 * chunk runs dense; the scaled mean query of rows p0..p1-1 of head h (q: the
 * chunk's rows from q_pos0; the first min(d, 512) values into qp); and the
 * chunk's block mask for head h from summaries gathered from every rank,
 * with the single-rank kernel's arithmetic on them (rep: (R, d) the chunk's
 * last R = min(n_q, block) rows of head h, unscaled; vert, slash: (q_pos0 +
 * n_q) their mean attention per key and per diagonal offset; ksum: (n_kb, d)
 * each key block's key sum, head h's KV head; qpool: (n_qb, n_heads, d)
 * attn__flex_pool_query of every query block). ar: attn__flex_ws's per-thread
 * size. mask: (n_qb, n_kb). */
int attn__flex_is_small(const attn_policy_t *pol, int n_q, int64_t q_pos0);
void attn__flex_pool_query(const attn_shape_t *sh, const float *q, int64_t q_pos0, int64_t p0, int64_t p1, int h,
                           float *qp);
int attn__flex_pattern_from(const attn_shape_t *sh, const attn_policy_t *pol, int n_q, int64_t q_pos0,
                            int64_t prompt_end, int h, const float *rep, const float *vert, const float *slash,
                            const float *ksum, const float *qpool, attn_arena_t *ar, uint8_t *mask);
/* The pattern alone, for the GPU selection's tests: every head's block mask
 * of the chunk into masks (n_heads, n_qb, n_kb), 1 = compute, as
 * attn__prefill_flex chooses it (small chunks: every causal block), with the
 * block size 128 or pol->block. ar: one arena of attn__flex_ws's per-thread
 * size; heads run one after another. trace (n_heads, or NULL) receives each
 * head's decision: its JS distance and pattern, the last value taken by each
 * threshold (-1: none or not that pattern), and, where its pointers are set,
 * copies of the vertical and slash mass (N = q_pos0 + n_q) and the
 * query-aware cell values (n_qb, n_kb; 0 where not computed). */
typedef struct {
    int branch;  // 1 query-aware, 0 vertical-slash
    double dist; // JS distance
    float thr_qa, thr_v, thr_s;
    float *vert, *slash, *cells;
} attn_flex_trace_t;
int attn__flex_masks(const attn_shape_t *sh, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int n_q,
                     int64_t q_pos0, int64_t prompt_end, const attn_kv_t *kv, uint8_t *masks, attn_flex_trace_t *trace);
attn_ws_t attn__anchor_ws(const attn_shape_t *shape, const attn_policy_t *pol, int n_q, int64_t q_pos0);
int attn__prefill_anchor(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *arenas, const float *q,
                         int n_q, int64_t q_pos0, const attn_kv_t *kv, float *out, float *lse, double *computed);
/* For the GPU checks: the keys AnchorAttention's stripes keep for head h's
 * group starting at g0 (a group of the call), and the tail blocks' own keys
 * (nonzero only when the group holds the call's last row): keep and own
 * (q_pos0 + n_q) bytes; keep 1 = attended; own bit 1 = attended by the call's
 * last block, bit 2 by the block before it. ar: attn__anchor_ws's per-thread
 * size. probe_share (may be NULL): with a probe (pol->anchor_probe > 0), the
 * mean missed share it measured (all candidates kept when it exceeds the
 * probe), else NAN. */
int attn__anchor_keys(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int n_q,
                      int64_t q_pos0, const attn_kv_t *kv, int h, int64_t g0, uint8_t *keep, uint8_t *own,
                      double *probe_share);

/* StreamingLLM's mask (sinks plus a recent window, the baseline): prefill runs
 * attn_prefill_window with it, decode rows the same ranges. */
static inline void attn__streaming_window(const attn_policy_t *pol, int64_t *sink, int64_t *window) {
    *sink = pol->sink_tokens > 0 ? pol->sink_tokens : 0;
    *window = pol->window_tokens > 0 ? pol->window_tokens : 1;
}

/* ---- decode (every generated row of the step, decode.c) ----------------------------- */
/* Ranges a row of this policy may need per KV head, and per-thread bytes. */
int attn__decode_rg_cap(const attn_policy_t *pol, int64_t n_kv, int block_size);
size_t attn__decode_ws(const attn_shape_t *shape, const attn_policy_t *pol, int64_t n_kv, int block_size);
/* Runs layer `layer` for all the plan's decode rows; window > 0: the layer's
 * own sliding window for every row, whatever its policy. */
int attn__decode_rows(attn_plan_t *p, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out,
                      float *lse);

/* Method selection for decode rows (quest.c, tidal.c): the key ranges of row
 * dr for KV head kh into rg (at most rg_cap); return the count. */
int attn__quest_ranges(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int kh,
                       const attn_kv_t *kv, attn_range_t *rg);
/* Quest's pieces, shared with the context-parallel decode (attn/cp): the
 * pages a budget keeps (at least 1); the upper bound of q.k over a page for
 * a GQA group (q: (G, d) unscaled; mn, mx: the page's summary of the KV
 * head); and the selection from the scores of pages 0 .. n_pages-2 of n keys
 * (the newest page is always kept), tmp: n_pages * 8 bytes. */
int64_t attn__quest_budget_pages(const attn_policy_t *pol, int bs);
float attn__quest_bound(const float *q, int G, int d, const float *mn, const float *mx);
int attn__quest_select(const float *score, int64_t n, int bs, int64_t budget_pages, void *tmp, attn_range_t *rg);
/* TidalDecode's choice of k positions out of n by mass (ties: earliest
 * first) into pos, ascending; tmp: n floats. Returns the count. */
int64_t attn__tidal_pick(const float *mass, int64_t n, int64_t k, float *tmp, int64_t *pos);
int attn__tidal_ranges(const attn_state_t *st, int row, int kh, int64_t n_kv, attn_range_t *rg);
/* After a selection layer's dense pass: chooses row's positions for kh. */
int attn__tidal_select(attn_state_t *st, attn_arena_t *ar, int row, int kh, const float *q, const attn_kv_t *kv);

#endif
