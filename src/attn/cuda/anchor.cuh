// What AnchorAttention's host code (anchor.cu) and its kernels (the
// selection in anchor_kern.cu, the merges and pair count in anchor_merge.cu)
// share: one sequence's scalars, the workspace views and the launchers.
// The anchor pass is the dense prefill kernel (prefill.cu, or prefill_mma.cu
// at 256 dims) on block masks, the sparse passes the gather kernel
// (gather.cu).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

constexpr int kAncB = 128;       // query block and key block (positions, aligned to 0)
constexpr int kOwnSplit = 16;    // parts of the tail blocks' own-key lists (gather_cuda.h: split lists)
constexpr int kOwnMinPart = 256; // the least entries of such a part
constexpr int kProbeKeys = 2048; // candidate keys per probe CTA (a multiple of 64): the probe's split

// One selecting sequence of the planned step.
struct AncSeq {
    const int32_t *pages; // device: the sequence's page table
    int64_t qrow0;        // first row of the chunk in the batch
    int64_t crow0;        // first row in the compacted rows of the selecting sequences
    int N, n_q, q_pos0;   // keys, chunk rows, first position
    int qb0, nqb;         // first query block, blocks of the chunk
    int g_first, ng;      // first group (index), groups of the chunk
    int A, L, LB;         // initial window, group, lookback of the local window (multiples of 128)
    float theta;
    float probe;         // anchor_probe (0: none)
    size_t mask_off;     // words: the sequence's block masks in the anchor pass's mask buffer
    int bidx;            // index in the planned batch
    int own_b0, n_ob;    // the tail blocks (own_b0 .. own_b0 + n_ob - 1, n_ob <= 2) that attend own keys:
                         // those holding the chunk's last 128 rows in the last group, when it has candidates
                         // and theta is finite; those rows (from anc_test_p0) test the candidates one by one
    const uint8_t *held; // device, (N / 128 + 1): the 128-key blocks this rank holds (a context-parallel
                         // rank's share, anchor_cuda.h's dist API); NULL: every key. Every pass attends,
                         // every test scores and every pair count counts held keys only
};

// Whether key j is in the sequence's held blocks.
__device__ __forceinline__ bool anc_held(const AncSeq &sq, int j) { return !sq.held || sq.held[j >> 7]; }

// The start of group g0's local window: keys from A below it are candidates.
__host__ __device__ __forceinline__ int anc_lo(const AncSeq &sq, int g0) {
    return g0 - sq.LB > sq.A ? g0 - sq.LB : sq.A;
}
// The first row (position) of the tail blocks.
__host__ __device__ __forceinline__ int anc_own_p0(const AncSeq &sq) {
    return sq.own_b0 * 128 > sq.q_pos0 ? sq.own_b0 * 128 : sq.q_pos0;
}
// The first row (position) that tests the candidates one by one: of the last 128.
__host__ __device__ __forceinline__ int anc_test_p0(const AncSeq &sq) {
    return sq.N - 128 > anc_own_p0(sq) ? sq.N - 128 : anc_own_p0(sq);
}

// Workspace views for one sequence's kernels: rows are the sequence's own
// (row r at position q_pos0 + r), already offset by crow0 where compacted.
struct AncWork {
    const __nv_bfloat16 *q; // (n_q, H, D) the sequence's queries
    const float *rowmax;    // (n_q, H) the anchor pass's row max (natural units)
    const float *lse1;      // (n_q, H) the anchor pass's LSE
    __nv_bfloat16 *qbar;    // (H, max_blk, 2, D) each block's mean scaled query, bf16 hi then lo
    float *abar;            // (H, max_blk) each block's mean anchor
    int max_blk;
    uint32_t *keep_bits, *own_bits; // (H, ng, wcap), (H, 2, wcap): bit j % 32 of word j / 32 = key j
    int64_t wcap;
    int32_t *keep_list, *own_list; // (H, ng, max_kv), (H, 2, max_kv) ascending key positions
    int32_t *keep_cnt, *own_cnt;   // (H, ng), (H, 2)
    int64_t max_kv;
    uint32_t *full_bits; // (H, ng, fwcap): bit kb % 32 of word kb / 32 = key block kb kept whole (its 128 keys)
    int64_t fwcap;
    int32_t *full_cnt;     // (H, ng) whole kept blocks
    uint32_t *mask2;       // the whole kept blocks as block masks (the anchor pass's layout, at mask_off)
    double *probe_part;    // (H, ng, splits, 128, 2) the probe rows' kept and missed mass, per split of kProbeKeys keys
    const uint32_t *mask1; // the anchor pass's block masks (at mask_off): the held pair count reads them
};

// The probe's splits of kProbeKeys candidates for the sequence (0: no candidates).
__host__ __device__ __forceinline__ int anc_probe_splits(const AncSeq &sq) {
    const int lo_last = anc_lo(sq, (sq.g_first + sq.ng - 1) * sq.L);
    return lo_last > sq.A ? (lo_last - sq.A + kProbeKeys - 1) / kProbeKeys : 0;
}

// Whether the sequence runs the probe (it has candidates, a finite theta and a probe share).
__host__ __device__ __forceinline__ bool anc_probe_runs(const AncSeq &sq) {
    return sq.probe > 0 && !isinf(sq.theta) && anc_probe_splits(sq) > 0;
}

// Launchers (anchor_kern.cu; from anc_fold_launch on, anchor_merge.cu), on stream; 0 or LC_EDEVICE.
// The anchor pass's block masks of one sequence (attn_cuda.h's layout) at mask + sq.mask_off.
int anc_mask_launch(const AncSeq &sq, int H, uint32_t *mask, cudaStream_t st);
// Pool, stripes (kept and own bits), the whole kept blocks (full_bits, their
// block masks in mask2: they run on the dense kernel) and the compaction of
// the other kept keys into lists.
int anc_select_launch(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w,
                      cudaStream_t st);
// The same in two halves around a sum over ranks (the dist API): the first
// pools, tests the stripes and own keys on the held keys and, when the probe
// runs, sums each probe row's split masses into probe_rows (H, ng, 128, 2)
// doubles; the second decides the probe from n_ranks such tables
// (probe_ranks, rank i's at i * rank_stride doubles, added in rank order),
// promotes the whole blocks and compacts the lists.
int anc_select_part_launch(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w,
                           double *probe_rows, cudaStream_t st);
int anc_select_finish_launch(const AncSeq &sq, int H, const AncWork &w, const double *probe_ranks, int n_ranks,
                             size_t rank_stride, cudaStream_t st);
// n_ranks tables of 2 n floats (a rank's row maxima, then its LSEs) into
// every row's largest maximum and its LSE over the ranks, in rank order.
int anc_fold_launch(const float *in, int n_ranks, int64_t n, float *rowmax, float *lse, cudaStream_t st);
// Folds the own keys' kOwnSplit parts (o3, lse3: part z's rows at z (n_q -
// own_r0) rows, row 0 at own_r0) into the stripes' (o2, lse2) for the rows
// from own_r0 on (the tail blocks'), in part order; seq-local rows.
int anc_own_merge_launch(const AncSeq &sq, int H, int D, float *o2, float *lse2, const float *o3, const float *lse3,
                         int own_r0, cudaStream_t st);
// out (batch rows, bf16) and lse (or NULL) of the sequence's rows from the
// anchor pass (o1 bf16, lse1), the stripes and own keys (o2, lse2) and the
// whole kept blocks (o4 bf16, lse4); all seq-local rows.
int anc_merge_launch(const AncSeq &sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                     const float *lse2, const __nv_bfloat16 *o4, const float *lse4, __nv_bfloat16 *out, float *lse,
                     cudaStream_t st);
// The pairs the sequence attended (all heads) into *pairs (written).
int anc_pairs_launch(const AncSeq &sq, int H, const AncWork &w, unsigned long long *pairs, cudaStream_t st);
// pairs[bidx[i]] += seq_pairs[i] for i < n.
int anc_pairs_add_launch(const unsigned long long *seq_pairs, const int32_t *bidx, int n, unsigned long long *pairs,
                         cudaStream_t st);
