/* Internal to src/attn: the one online-softmax tile engine every CPU method
 * runs on, the workspace arenas the plan hands out, and the shared dense /
 * windowed drivers.
 *
 * A tile is a set of query rows that read the same KV head (one query block of
 * one head, or of every head of a GQA group stacked). The engine gathers the
 * keys the caller lists (position ranges, any granularity down to one token)
 * into contiguous key tiles of ATTN_BK, computes scores with a register-blocked
 * kernel, applies the causal / sink+window mask per row, and folds the tile
 * into the rows' running (max, sum, acc). Sparse methods differ only in the
 * ranges they pass.
 *
 * Keys are read in place: K is stored transposed per block (kv/store.h), so
 * 16 consecutive keys of a block aligned to 16 are one vector per head_dim
 * element; other keys (sparse lists) are staged 16 at a time. V rows are read
 * through per-key pointers. Nothing is copied for dense attention.
 *
 * Per-row arithmetic. Every row of a tile goes through the same code: scores
 * are one FMA chain over head_dim per (row, key) (multiply-add on the scalar
 * set), the row pass and the P.V chain are per row, and a key contributes to
 * the same lane whatever else the tile holds or where the key was read from.
 * A range that starts at a multiple of ATTN_BK starts a new tile, so aligned
 * ranges (dense, window) are cut into the same tiles for every row, and keys
 * a row cannot see add exact zeros. Hence a row's result depends only on its
 * own keys and the kernel set. */
#ifndef LC_ATTN_CPU_KERN_H
#define LC_ATTN_CPU_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"

/* ---- workspace ------------------------------------------------------------------- */
/* A bump allocator over memory the plan owns; allocations are 64-byte aligned
 * and never freed one by one (attn_arena_reset). NULL when it is full: the
 * plan sized it too small, reported as LC_ENOMEM, never a crash. */
typedef struct {
    unsigned char *base;
    size_t cap, used;
} attn_arena_t;

static inline void *attn_arena_alloc(attn_arena_t *a, size_t n) {
    size_t at = (a->used + 63) & ~(size_t)63;
    if (!a->base || at > a->cap || n > a->cap - at) return NULL;
    a->used = at + n;
    return a->base + at;
}
static inline void attn_arena_reset(attn_arena_t *a) { a->used = 0; }
/* Bytes attn_arena_alloc takes for n bytes (with alignment slack). */
static inline size_t attn_arena_need(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- tiles --------------------------------------------------------------------------- */
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
    float *s;       // (max_rows, ATTN_BK) scores / probabilities of one tile
    float *kst;     // (ATTN_BK / 16, d, 16) staged key groups (keys not read in place)
    /* The tile's keys where they lie: 16-key groups of transposed K (element
     * c of lane i of group g at kg[g][c * ldk[g] + i]) and each key's V row. */
    const float *kg[ATTN_BK / 16];
    int ldk[ATTN_BK / 16];
    const float *vrow[ATTN_BK];
    int64_t kpos[ATTN_BK];
    int nk;          // keys in the current gathered tile
    int level;       // lc_cpu_level_t the tile's kernels use
    double computed; // visible query-key pairs folded in so far
} attn_tile_t;

#define ATTN_NO_WINDOW (INT64_MAX / 4)

/* Arena bytes of a tile of max_rows rows. */
size_t attn_tile_bytes(int max_rows, int d);
/* Carves a tile out of the arena; LC_ENOMEM when it does not fit. */
int attn_tile_init(attn_tile_t *t, attn_arena_t *a, int max_rows, int d);
/* Starts nr fresh rows (m = -inf, l = 0, acc = 0, causal mask only). The
 * caller fills q[0..nr) and qpos[0..nr) before or after. */
void attn_tile_begin(attn_tile_t *t, int nr);
/* Folds the keys of rg[0..n_rg) of kv head kvh into the rows, in order. */
void attn_tile_run(attn_tile_t *t, const attn_kv_t *kv, int kvh, const attn_range_t *rg, int n_rg);
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

/* Merges one normalised partial (o2, lse2) into (o1, *lse1), d values: the
 * one merge every piece-wise result goes through, in piece order. */
void attn_merge_row(float *o1, float *lse1, const float *o2, float lse2, int d);

/* The key of position pos, kv head kvh: element c at attn_kv_kcol(...)[c *
 * block_size] (K is transposed per block: (n_kv_heads, head_dim, block_size)). */
static inline const float *attn_kv_kcol(const attn_kv_t *kv, int kvh, int d, int64_t pos) {
    int64_t b = kv->blocks[pos / kv->block_size];
    return kv->k + (size_t)b * kv->blk_stride + (size_t)kvh * d * kv->block_size + (size_t)(pos % kv->block_size);
}
/* The value row of position pos, kv head kvh: (head_dim) contiguous (V is
 * (n_kv_heads, block_size, head_dim) per block). */
static inline const float *attn_kv_vrow(const attn_kv_t *kv, int kvh, int d, int64_t pos) {
    int64_t b = kv->blocks[pos / kv->block_size];
    return kv->v + (size_t)b * kv->blk_stride + ((size_t)kvh * kv->block_size + (size_t)(pos % kv->block_size)) * d;
}

/* ---- shared drivers -------------------------------------------------------------- */
int attn_check_args(const attn_shape_t *shape, const attn_kv_t *kv, int64_t n_keys);

/* The key ranges of rows first..last under a sink + window mask (window
 * ATTN_NO_WINDOW: causal), widened to ATTN_BK-aligned starts so every row's
 * keys fall into the same tiles: at most 2 ranges into rg; returns the count. */
int attn_window_ranges(int64_t sink, int64_t window, int64_t first, int64_t last, attn_range_t *rg);
/* The part of rg[0..n) inside piece k ([k*ATTN_PIECE, (k+1)*ATTN_PIECE))
 * into out (at most n ranges); returns the count. */
int attn_piece_ranges(const attn_range_t *rg, int n, int64_t k, attn_range_t *out);

/* Per-thread bytes of attn_prefill_window's workspace. */
size_t attn_prefill_window_ws(const attn_shape_t *shape);
/* Dense or sink+window causal prefill of n_q rows at q_pos0.. over kv, piece
 * by piece (the canonical arithmetic). arenas: (attn_max_threads()) per-thread
 * arenas of attn_prefill_window_ws bytes. */
int attn_prefill_window(const attn_shape_t *shape, attn_arena_t *arenas, const float *q, int n_q, int64_t q_pos0,
                        const attn_kv_t *kv, int64_t sink, int64_t window, float *out, float *lse, double *computed);

/* Threads the calling thread's parallel regions use, and this thread's index
 * in its team (arena index). */
int attn_max_threads(void);
#ifdef _OPENMP
#include <omp.h>
static inline int attn_thread_num(void) { return omp_get_thread_num(); }
#else
static inline int attn_thread_num(void) { return 0; }
#endif

#endif
