/* The map of a pass-KV ring over one sharded sequence, on the host: which
 * query rows a rank holds, which KV blocks it packs, and what each ring step
 * computes. Plain C (no CUDA), shared by the GPU ring (cp_cuda.h) and its
 * CPU-side tests; every rank computes the same map from the same owner table.
 *
 * A sequence of `end` positions has n_blocks = ceil(end / bs) blocks, block b
 * owned by rank owner[b] (cp_zigzag, cp_owner_next). Block b holds bs keys,
 * the last one end - (n_blocks - 1) * bs.
 *
 * Pack of rank j: its blocks in block order (the pages it sends round the
 * ring). Rows of rank r: the positions of the slice [pos0, end) whose block r
 * owns, in position order, cut into runs of consecutive positions (a zig-zag
 * rank has two, one where its two chunks touch).
 *
 * Ring step k on rank r attends its rows to the pack of rank
 * j = cp_ring_visitor(r, k, N). For a run, the view of pack j is the pack's
 * first n_pages pages: those of blocks up to the run's last block. Keys in
 * block order are positions in order, so the keys a row at position t sees
 * (positions <= t) are a prefix of the view: the run's first row sits at
 * view position q_pos0 and row i at q_pos0 + i (attn_cuda.h's q_pos0). The
 * pair is
 *  - none   (kv_len 0): every block of j comes after the run;
 *  - full   (q_pos0 >= kv_len): every key of the view lies before the run
 *            (only whole blocks: a block before a written position is full);
 *  - causal (otherwise, j == r): the run's own blocks, the diagonal.
 * Since a later run sees at least the keys an earlier one sees, the runs a
 * step computes are always a suffix of the rank's runs. */
#ifndef LC_ATTN_CP_RING_MAP_H
#define LC_ATTN_CP_RING_MAP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Most runs of one rank's rows (zig-zag gives at most 3). */
#define CP_RING_MAX_RUNS 8

typedef struct {
    int64_t p0, n; // positions p0 .. p0 + n - 1
    int64_t row0;  // index of the run's first row among the rank's rows
} cp_ring_run_t;

typedef enum { CP_PAIR_NONE = 0, CP_PAIR_CAUSAL = 1, CP_PAIR_FULL = 2 } cp_pair_t;

typedef struct {
    int32_t n_pages; // the view: pages 0 .. n_pages - 1 of the visiting pack
    int32_t kv_len;  // keys in the view
    int32_t q_pos0;  // view position of the run's first row
    cp_pair_t kind;
} cp_ring_view_t;

/* The pack a rank visits at ring step k (the packs travel to rank + 1). */
static inline int cp_ring_visitor(int rank, int k, int n_ranks) { return ((rank - k) % n_ranks + n_ranks) % n_ranks; }

/* Blocks of rank j among the first n_blocks, in order, into idx (may be
 * NULL); returns their number. */
int64_t cp_ring_pack(const uint8_t *owner, int64_t n_blocks, int j, int32_t *idx);

/* Keys in the blocks of rank j among the first n_blocks of a sequence of
 * end positions. */
int64_t cp_ring_keys(const uint8_t *owner, int64_t n_blocks, int bs, int64_t end, int j);

/* The runs of rank r's rows of the slice [pos0, pos0 + n_tok) into runs
 * (max_runs entries); returns their number (0: the rank holds no row), or
 * LC_EINVAL for a bad slice, LC_ERANGE past max_runs. */
int cp_ring_runs(const uint8_t *owner, int bs, int64_t pos0, int64_t n_tok, int r, cp_ring_run_t *runs, int max_runs);

/* The view of pack j for a run of the slice ending at end; LC_ERANGE when a
 * view's lengths pass int32 (the kernels' positions), else 0. */
int cp_ring_view(const uint8_t *owner, int bs, int64_t end, const cp_ring_run_t *run, int j, cp_ring_view_t *v);

/* 1 when a slice of n_tok positions on a cached prefix of pos0 should pass
 * its queries rather than the KV (the CPU ring's rule and the GPU ring's
 * automatic choice): the queries, and the partials coming back, weigh less
 * than the keys and values the pass-KV ring would move. */
int cp_pass_q_pays(int64_t pos0, int64_t n_tok, int n_heads, int n_kv_heads);

#ifdef __cplusplus
}
#endif
#endif
