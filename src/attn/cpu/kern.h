/* Internal to src/attn: the one online-softmax tile engine every CPU method
 * runs on, plus the shared decode and windowed-prefill drivers.
 *
 * A tile is a set of query rows that read the same KV head (one query block of
 * one head, or of every head of a GQA group stacked). The engine gathers the
 * keys the caller lists (position ranges, any granularity down to one token)
 * into contiguous key tiles of ATTN_BK, computes scores with a register-blocked
 * kernel, applies the causal / sink+window mask per row, and folds the tile
 * into the rows' running (max, sum, acc). Sparse methods differ only in the
 * ranges they pass. */
#ifndef LC_ATTN_CPU_KERN_H
#define LC_ATTN_CPU_KERN_H

#include <stdint.h>

#include "attn/attn.h"

#define ATTN_BK 64 // keys per gathered tile

/* Key positions [lo, hi). Lists passed to the engine are sorted, disjoint. */
typedef struct {
    int64_t lo, hi;
} attn_range_t;

typedef struct {
    int d;          // head_dim
    int max_rows;   // capacity (a multiple of 4)
    int nr;         // rows in use
    float *q;       // (max_rows, d) queries, already multiplied by the scale
    int64_t *qpos;  // (max_rows) position of each row: keys j > qpos are masked
    int64_t sink;   // with window: key j is visible to row r iff j <= qpos[r] and
    int64_t window; //   (j < sink or j > qpos[r] - window); window huge = causal only
    float *m;       // (max_rows) running max of scaled scores
    float *l;       // (max_rows) running sum of exp(s - m)
    float *acc;     // (max_rows, d) running numerator
    float *kt;      // (d, ATTN_BK) gathered keys, transposed
    float *vt;      // (ATTN_BK, d) gathered values
    float *s;       // (max_rows, ATTN_BK) scores / probabilities of one tile
    int64_t kpos[ATTN_BK];
    const float *kptr[ATTN_BK]; // few-row path: key / value rows read in place
    const float *vptr[ATTN_BK];
    int direct;      // few-row path in use for the current run
    int nk;          // keys in the current gathered tile
    double computed; // visible query-key pairs folded in so far
} attn_tile_t;

#define ATTN_NO_WINDOW (INT64_MAX / 4)

/* Returns NULL on OOM. Free with attn_tile_free. */
attn_tile_t *attn_tile_alloc(int max_rows, int d);
void attn_tile_free(attn_tile_t *t);
/* Starts nr fresh rows (m = -inf, l = 0, acc = 0, causal mask only). The
 * caller fills q[0..nr) and qpos[0..nr) before or after. */
void attn_tile_begin(attn_tile_t *t, int nr);
/* Folds keys of kv head kvh into the rows: the keys of rg[0..n_rg) in order,
 * skipping the first `skip` of them and taking at most `take` (take < 0: all). */
void attn_tile_run(attn_tile_t *t, const attn_kv_t *kv, int kvh, const attn_range_t *rg, int n_rg, int64_t skip,
                   int64_t take);
/* Normalises acc in place and writes each row's LSE into l (-inf and a zero
 * row when the row saw no key). */
void attn_tile_finish(attn_tile_t *t);
/* Raw scaled scores of the rows against keys [lo, hi) of kv head kvh, no mask:
 * S (nr, lds) receives columns 0..hi-lo. */
void attn_tile_scores(attn_tile_t *t, const attn_kv_t *kv, int kvh, int64_t lo, int64_t hi, float *S, int64_t lds);
/* Row helpers on the tile engine's vector exp (relative error ~2e-7):
 * the largest of x[0..n) (-inf when n is 0), and x[i] = exp(x[i] - sub) in
 * place with the sum returned (sub finite). */
float attn_row_max(const float *x, int64_t n);
float attn_row_exp_sum(float *x, int64_t n, float sub);

/* Pointer to key / value row of position pos, kv head kvh. */
static inline const float *attn_kv_krow(const attn_kv_t *kv, int kvh, int d, int64_t pos) {
    int64_t b = kv->blocks[pos / kv->block_size];
    return kv->k + (size_t)b * kv->blk_stride + ((size_t)kvh * kv->block_size + (size_t)(pos % kv->block_size)) * d;
}
static inline const float *attn_kv_vrow(const attn_kv_t *kv, int kvh, int d, int64_t pos) {
    int64_t b = kv->blocks[pos / kv->block_size];
    return kv->v + (size_t)b * kv->blk_stride + ((size_t)kvh * kv->block_size + (size_t)(pos % kv->block_size)) * d;
}

/* Checks shapes and lengths shared by every kernel. */
int attn_check_args(const attn_shape_t *shape, const attn_kv_t *kv, int64_t n_keys);

/* Decode over per-KV-head key lists: rg[kvh][0..n_rg[kvh]) for kv head kvh.
 * Splits each head's keys across threads (split-K) and merges by LSE.
 * *computed (may be NULL) receives visible query-key pairs summed over heads. */
int attn_decode_ranges(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, const attn_range_t *const *rg,
                       const int *n_rg, float *out, float *lse, double *computed);

/* Prefill where row at position p sees keys j <= p with j < sink or
 * j > p - window (dense: sink 0, window ATTN_NO_WINDOW). GQA heads of a group
 * are stacked in one tile. */
int attn_prefill_window(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                        int64_t sink, int64_t window, float *out, float *lse, double *computed);

/* Number of threads a parallel region will get. */
int attn_max_threads(void);

#endif
