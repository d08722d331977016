/* Context-parallel attention: one sequence's KV cache sharded over N ranks,
 * attention computed by every rank on what it holds, the rest reaching it
 * through a communicator (cp_comm.h), partial results merged by LSE
 *   o = sum_i exp(lse_i - lse) o_i,  lse = log sum_i exp(lse_i)   (attn.h).
 *
 * Ownership. A sequence's KV blocks each belong to one rank (cp_layout_t:
 * a rank per block of the block table). A prompt slice is sharded when it is
 * written: its positions are cut into 2N zig-zag chunks of whole units
 * (`align` positions, a multiple of the block size), rank i taking chunks i
 * and 2N-1-i, which balances causal work (cp_zigzag). A query row lives on
 * the rank that holds its position's block; so does the K/V it writes.
 * Generated tokens extend the sequence block by block (cp_owner_next).
 *
 * Per step, per sharded prompt slice (every layer):
 *  - pass-KV ring (a slice on an empty or short prefix, and every sparse
 *    slice): each rank packs the KV blocks it holds; the packs travel the
 *    ring while each rank attends its queries to the pack it has. The send
 *    and receive of step k+1 are started before the compute of step k.
 *  - pass-Q ring (a dense slice on top of a long cached prefix, when the
 *    queries are lighter than the KV): the queries travel, each rank attends
 *    the visiting queries to its own KV, and an all-to-all returns the
 *    partials to the rows' owners.
 *  - sparse prompt methods (cp_sparse.c): AnchorAttention selects stripes
 *    per group from the anchors of the group's query blocks, which every rank
 *    learns (one all-reduce of pooled queries and anchors after a halo
 *    exchange of the initial and local windows), so every rank selects
 *    exactly the keys the single-rank kernel would; a ring step whose pack
 *    holds no selected key computes nothing. FlexPrefill runs its pattern
 *    search on every rank from all-reduced summaries (the representative
 *    rows' attention, pooled keys and queries) and skips steps the mask does
 *    not touch.
 *  - a sliding-window layer (cp_run's window > 0): no ring. Each rank
 *    fetches the blocks its rows' windows reach and it does not hold (one
 *    all-to-all for K, one for V; every rank knows every rank's needs from
 *    the layout), then attends its rows to them in one pass.
 * Per step, all sharded decode rows together: the row's owner shares its
 * query (an all-reduce), every rank attends its blocks (dense, or the
 * Quest / TidalDecode selection made globally from all-reduced page scores
 * or attention mass), and one all-gather of the partials lets the owner merge
 * them in rank order.
 *
 * Arithmetic. Selections (Quest pages, Anchor stripes) are the same as the
 * single-rank kernels', bit for bit; TidalDecode's and FlexPrefill's rest on
 * a normalisation summed in another order, so a selection could differ from
 * the single-rank one only where two candidates tie within rounding. Outputs
 * differ from the single-rank kernels by rounding only (the merge order of
 * partials differs); they are deterministic: a function of the sequence, its
 * layout and N, never of timing or of the rest of the batch.
 *
 * Plan, then run (as attn.h): every rank plans the same batch on its own
 * thread (cp_plan: the only allocations), then per layer every rank calls
 * cp_run with its endpoint. Buffers and queries are host memory (this is the
 * CPU implementation; the communicator is any backend whose buffers are host
 * memory). A rank reads the queries of its own rows and the KV blocks it
 * holds through `kv`, and writes the outputs of its own rows, nothing else. */
#ifndef LC_ATTN_CP_ATTN_H
#define LC_ATTN_CP_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"
#include "attn/cp/cp_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- ownership ---------------------------------------------------------------------- */
/* Assigns the owners of the blocks a prompt slice [pos0, pos0 + n_tok)
 * starts: units of `align` positions (a multiple of block_size, aligned to
 * absolute positions) in 2N zig-zag chunks, chunk i to rank i < N ? i : 2N-1-i.
 * A unit that began before pos0 (in an earlier slice) stays with the owner
 * of its earlier positions, so that a unit's rows are on one rank whatever
 * the slicing.
 *   owner: (ceil((pos0 + n_tok) / block_size)), entries of earlier blocks read */
void cp_zigzag(int n_ranks, int block_size, int align, int64_t pos0, int64_t n_tok, uint8_t *owner);
/* The owner of a block started by a generated token (b: its index in the table). */
static inline int cp_owner_next(int n_ranks, int64_t b) { return (int)(b % n_ranks); }

/* ---- plan and run ---------------------------------------------------------------------- */
/* One sharded sequence of a step, identical on every rank. */
typedef struct {
    int tok0, n_tok; // rows of the batch, at positions pos0 .. pos0 + n_tok - 1
    int64_t pos0;
    const int32_t *blocks;     // (ceil((pos0 + n_tok) / block_size)) block table into the store
    size_t group_stride;       // as attn_seq_t: the table of a store of group g is blocks + g * group_stride;
                               // a sliding layer's table may hold -1 (released) before its windows
    const uint8_t *owner;      // (same) rank holding each block
    const attn_state_t *state; // policy (read only); NULL = dense
    int decode;                // as attn_seq_t: 1 = generated rows (decode method)
    int64_t prompt_end;        // as attn_seq_t: one past the prompt's last position, 0 = unknown
} cp_seq_t;

typedef struct {
    int n_rows; // rows of the batch (q, out, lse)
    int n_seqs;
    const cp_seq_t *seqs;
    int block_size;
} cp_batch_t;

/* Where a rank's time went (cumulative; cp_plan_timing). */
typedef struct {
    uint64_t ring_steps;                // ring steps run (pass-KV and pass-Q)
    uint64_t steps_skipped;             // of which had nothing to compute (sparse)
    double compute_s;                   // attention compute of the steps
    double wait_s;                      // waiting for a step's transfer after its compute
    double collective_s;                // halos, selections, all-to-alls, decode merges
    double prefill_pairs, decode_pairs; // query-key pairs this rank attended
} cp_timing_t;

typedef struct cp_plan cp_plan_t;
/* For rank `rank` of n_ranks. NULL on OOM or a bad shape. */
cp_plan_t *cp_plan_create(const attn_shape_t *shape, int n_layers, int rank, int n_ranks);
void cp_plan_destroy(cp_plan_t *p);
/* The layers' own sliding windows (n_layers entries, 0: none; at most
 * CP_MAX_WINDOWS distinct values), before the first cp_plan: cp_plan sizes
 * each window's fetches. 0, LC_EINVAL or LC_EUNSUPPORTED (too many distinct
 * windows). */
int cp_plan_windows(cp_plan_t *p, const int64_t *layer_window);
/* Plans a step on the calling thread (its OpenMP team sizes the workspace).
 * Every rank plans the same batch. 0, LC_EINVAL or LC_ENOMEM. */
int cp_plan(cp_plan_t *p, const cp_batch_t *b);
/* Runs one layer of the planned step; collective over c (every rank of the
 * group calls it for the same layer). window > 0: the layer's own sliding
 * window (dense for every row), one cp_plan_windows gave; kv->group picks
 * the sequences' table (cp_seq_t). Writes out and lse (may be NULL) of this
 * rank's rows.
 *   q, out: (n_rows, n_heads, head_dim);  lse: (n_rows, n_heads) */
int cp_run(cp_plan_t *p, cp_comm_t *c, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out,
           float *lse);
/* Query-key pairs this rank computed for sequence i of the planned batch
 * since the plan (density accounting: sum over ranks). */
double cp_plan_computed(const cp_plan_t *p, int i);
const cp_timing_t *cp_plan_timing(const cp_plan_t *p);
/* Bytes of the plan's buffers (metrics, tests). */
size_t cp_plan_bytes(const cp_plan_t *p);

/* Forces the prompt path for tests: 0 automatic, 1 pass-KV, 2 pass-Q (dense
 * slices only; sparse prompt methods always ride the pass-KV ring). */
void cp_plan_force_mode(cp_plan_t *p, int mode);

#ifdef __cplusplus
}
#endif
#endif
