/* Internal to src/attn/cp: the plan of one rank (what every rank holds, the
 * rows and tiles of every rank's queries, the buffers of the rings) and the
 * entry points of each part, dispatched from ring.c. */
#ifndef LC_ATTN_CP_INT_H
#define LC_ATTN_CP_INT_H

#include "attn/attn_int.h"
#include "attn/cp/cp_attn.h"
#include "attn/cpu/kern.h"
#include "common/mem.h"

enum { CP_PASS_KV = 1, CP_PASS_Q = 2 };
#define CP_MAX_WINDOWS 4 // distinct sliding windows of a model's layers (cp_plan_windows)

/* A tile of query rows: rows [i0, i1) of a rank's row list, consecutive
 * positions. */
typedef struct {
    int i0, i1;
} cp_tile_t;

/* A query block of a sparse prompt method: rows [p0, p1) of group g, all
 * held by `owner`, at rows [i0, i0 + p1 - p0) of the owner's row list. */
typedef struct {
    int64_t p0, p1, g;
    int owner, i0;
} cp_qblk_t;

/* What one rank holds of a slice: its KV blocks and its query rows. */
typedef struct {
    int nb;           // KV blocks held
    int32_t *blk;     // (nb) their indices in the sequence's table, ascending
    int32_t *tbl;     // (n_blk) sequence block -> index in the rank's pack (0 where not held)
    attn_range_t *rg; // (n_rg) positions held, clipped to n_kv
    int n_rg;
    int nq;           // query rows held
    int64_t *qpos;    // (nq) their positions, ascending
    cp_tile_t *tiles; // (n_tiles)
    int n_tiles;
} cp_hold_t;

/* A sliding window's fetches for one slice (cp_window.c): the blocks this
 * rank's rows read under the window, grouped by the rank holding them (own
 * ones included) in the order of the pack, and what this rank sends. */
typedef struct {
    int n_need;
    int32_t *need;     // (n_need) sequence block indices; need[need_from[s] .. need_from[s+1]) held by rank s
    int *need_from;    // (n_ranks + 1)
    int *send_to;      // (n_ranks + 1) this rank's blocks for rank t: send_blk[send_to[t] .. send_to[t+1])
    int32_t *send_blk; // sequence block indices
    int32_t *ltbl;     // (n_blk) sequence block -> index in the pack (0 where not needed)
    attn_range_t *rg;  // (n_rg) positions of the needed blocks, ascending, clipped to n_kv
    int n_rg;
} cp_win_t;

/* One sharded prompt slice of the step. */
typedef struct {
    int seq; // index in the batch
    int mode;
    const attn_policy_t *pol; // NULL = dense
    int64_t n_kv;             // pos0 + n_tok
    int n_blk;                // blocks of the table in use
    cp_hold_t *hold;          // (n_ranks)
    /* AnchorAttention (cp_sparse.c): the blocks this rank needs beyond its
     * own (the halo), and per source rank what goes where. */
    int n_halo;
    int32_t *halo;                // (n_halo) sequence block indices, grouped by source rank, ascending within
    int *halo_from;               // (n_ranks + 1) halo[halo_from[s] .. halo_from[s+1]) come from rank s
    int *send_to;                 // (n_ranks + 1) this rank's blocks for rank t: send_blk[send_to[t] .. send_to[t+1])
    int32_t *send_blk;            // sequence block indices
    int32_t *ltbl;                // (n_blk) sequence block -> index in the pack, own blocks and halo
    int n_qblk;                   // query blocks of the slice (AnchorAttention's blocks, in position order)
    cp_qblk_t *qblk;              // (n_qblk)
    cp_win_t win[CP_MAX_WINDOWS]; // per planned window (cp_plan's windows)
    void *mem;                    // one allocation behind the holdings
    void *mem2;                   // one allocation behind the sparse method's arrays
    void *mem3;                   // one allocation behind the windows' fetches
} cp_slice_t;

/* One sharded decode row of the step. */
typedef struct {
    int seq, row; // batch sequence and row within its slice
    int qrow;     // batch row
    int64_t n_kv; // keys 0 .. n_kv-1; position n_kv - 1
    int owner;    // rank that holds the row
    const attn_policy_t *pol;
    size_t rg0; // this rank's key ranges: p->drg[rg0 .. rg0 + n_rg)
    int n_rg;
    size_t qs_off; // Quest: (n_kv_heads, n_pages) page scores at p->dqs + qs_off
    size_t tm_off; // TidalDecode: (n_kv_heads, n_kv) mass at p->dtm + tm_off
    int sel_valid; // TidalDecode: a selection for this step is in p->dsel
    int meth, sel; // this layer's method and whether it selects (TidalDecode)
    int tidal_due; // TidalDecode: a sliding layer held the selection; the next global layer selects
} cp_drow_t;

struct cp_plan {
    attn_shape_t shape;
    int n_layers, rank, n_ranks;
    int force_mode;
    int64_t windows[CP_MAX_WINDOWS]; // the distinct sliding windows of the layers
    int n_windows;
    int n_threads;
    int block_size;
    int n_rows;
    cp_seq_t *seqs; // (cap_seqs) copy of the batch
    int n_seqs, cap_seqs;
    double *computed; // (cap_seqs) pairs per sequence since the plan
    cp_slice_t *slices;
    int n_slices, cap_slices;
    cp_drow_t *drows;
    int n_drows, cap_drows;
    cp_timing_t timing;
    /* buffers, grown at plan time (floats unless said) */
    float *pack;
    size_t cap_pack; // own K blocks (+ halo), then own V blocks (+ halo)
    float *rbuf[2];
    size_t cap_rbuf; // a visiting pack each
    float *qbuf;
    size_t cap_qbuf; // own query rows (nq, H, d)
    float *qrecv[2];
    size_t cap_qrecv; // pass-Q: a visiting rank's queries each
    float *part;
    size_t cap_part; // pass-Q: partials of every origin's rows, (o, lse) per origin
    float *partin;
    size_t cap_partin; // pass-Q: partials of own rows from every rank
    float *acc;
    size_t cap_acc; // own rows' running output (nq, H, d) then LSE (nq, H)
    float *stage;
    size_t cap_stage; // halo sends (K then V) and sparse scratch shared by the rank
    /* decode (cp_decode.c) */
    attn_range_t *drg;
    size_t cap_drg; // every row's own key ranges
    float *dq;
    size_t cap_dq; // (n_drows, H, d) the rows' queries, shared
    float *dpart;
    size_t cap_dpart; // (n_drows, H, d) then (n_drows, H): this rank's partials
    float *dall;
    size_t cap_dall; // (n_ranks, size of dpart) every rank's partials
    float *dqs;
    size_t cap_dqs; // Quest page scores of every row
    float *dtm;
    size_t cap_dtm; // TidalDecode mass of every row
    float *dmax;
    size_t cap_dmax; // (n_ranks, n_drows, H) TidalDecode row maxima, then sums as doubles
    int64_t *dsel;
    size_t cap_dsel; // (n_drows, n_kv_heads, tidal_cap) TidalDecode positions
    int *dseln;
    size_t cap_dseln; // (n_drows, n_kv_heads) their counts
    int tidal_cap;
    size_t *a2a;
    size_t cap_a2a; // (4 * n_ranks) all-to-all offsets and sizes
    /* workspace: one arena per thread of the rank's team */
    unsigned char *ws;
    size_t ws_cap, per_thread;
    attn_arena_t *arenas;
};

/* ---- layout.c ---------------------------------------------------------------------- */
/* Rows of a tile of the plan's query tiles (a GQA group of each position). */
int cp__bq(const attn_shape_t *sh);

/* ---- ring.c -------------------------------------------------------------------------- */
/* Attends rows (n, H, d) at positions qpos to the keys of rg in kv, under an
 * optional sink + window mask (window ATTN_NO_WINDOW: causal only), over
 * the given tiles; merge != 0 folds the result into (o, lse) by LSE, else
 * writes it. Uses the plan's arenas. Returns 0 or LC_ENOMEM. */
int cp__attend(cp_plan_t *p, const float *q, const int64_t *qpos, const cp_tile_t *tiles, int n_tiles,
               const attn_kv_t *kv, const attn_range_t *rg, int n_rg, int64_t sink, int64_t window, int merge, float *o,
               float *lse, double *computed);
/* A kv view over a pack of `nb_tot` blocks held by source s of slice sl. */
attn_kv_t cp__pack_view(const cp_plan_t *p, const cp_slice_t *sl, int s, const float *pack, int nb_tot,
                        size_t blk_stride);
/* Copies the K and V of blocks list[0 .. n) (sequence block indices of
 * slice sl, through kv's group table) to k_dst and v_dst, one block stride
 * apart, on the rank's team. */
void cp__copy_blocks(const cp_plan_t *p, const cp_slice_t *sl, const attn_store_t *kv, const int32_t *list, int n,
                     float *k_dst, float *v_dst);
/* Copies this rank's blocks of slice sl for layer `kv` into the pack
 * (K at pack, V at pack + nb_tot * blk_stride). */
void cp__pack_own(cp_plan_t *p, const cp_slice_t *sl, const attn_store_t *kv, int nb_tot);

/* The pass-KV ring over the packs (this rank's pack built, K and V of
 * nb + n_halo blocks): at each step cb computes on the pack of rank src. */
typedef int (*cp_step_cb)(cp_plan_t *p, const cp_slice_t *sl, int src, const attn_kv_t *view, void *ud);
int cp__ring_kv(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, cp_step_cb cb, void *ud);
/* The rank's query rows of sl into p->qbuf; outputs (acc: (nq, H, d) then
 * (nq, H)) back to the batch rows; acc reset (zeros, LSE -inf). */
void cp__gather_rows(const cp_plan_t *p, const cp_slice_t *sl, const float *q);
void cp__scatter_rows(const cp_plan_t *p, const cp_slice_t *sl, const float *acc, float *out, float *lse);
void cp__init_acc(float *acc, size_t rows, size_t rs, int H);
/* Query block qb's rows of head h, scaled, into t (begun for them). */
void cp__load_block(const cp_plan_t *p, const cp_qblk_t *qb, int h, attn_tile_t *t);
/* A finished tile of block qb, head h, LSE-merged into the running outputs
 * acc (own rows, H, d) and their LSE al (own rows, H). */
void cp__merge_block(const cp_plan_t *p, const cp_qblk_t *qb, int h, const attn_tile_t *t, float *acc, float *al);

/* ---- cp_sparse.c ------------------------------------------------------------------------ */
/* Plan-time sizes of AnchorAttention on a slice (halo lists). */
int cp__anchor_plan(cp_plan_t *p, cp_slice_t *sl, size_t *stage, size_t *per_thread);
int cp__anchor_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, const attn_store_t *kv, const float *q, float *out,
                   float *lse);

/* FlexPrefill on a slice (cp_flex.c): the query blocks at plan time; the
 * summaries, the masks and the ring at run time (dense when the slice is
 * short enough to run dense on one rank: sl->n_qblk == 0). */
int cp__flex_plan(cp_plan_t *p, cp_slice_t *sl, size_t *stage, size_t *per_thread);
int cp__flex_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, const attn_store_t *kv, const float *q, float *out,
                 float *lse);

/* The table of sequence s for a store of kv's group (cp_seq_t). */
static inline const int32_t *cp__table(const cp_seq_t *s, const attn_store_t *kv) {
    return s->blocks + (size_t)kv->group * s->group_stride;
}

/* ---- cp_window.c ------------------------------------------------------------------------ */
/* Plan-time fetch lists of every planned window on a slice; the sizes of the
 * pack (floats, K and V) and of the stage (the sends) they need. */
int cp__window_plan(cp_plan_t *p, cp_slice_t *sl, size_t *pack, size_t *stage);
/* A sliding-window layer (window windows[wi]) on a slice. */
int cp__window_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, int wi, const attn_store_t *kv, const float *q,
                   float *out, float *lse);

/* ---- cp_decode.c ---------------------------------------------------------------------- */
int cp__decode_plan(cp_plan_t *p, size_t *per_thread);
int cp__decode_run(cp_plan_t *p, cp_comm_t *c, int layer, int64_t window, const attn_store_t *kv, const float *q,
                   float *out, float *lse);

#endif
