// The plan object shared by the plan (host) and the two kernel families:
// what a step's work list looks like in the device arena, and the tensor
// maps the kernels read K, V and Q through.
#pragma once
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "attn/cuda/attn_cuda.h"

#define ATTN_PF_BM 128          // prefill: query rows per tile (two consumer warpgroups of 64)
#define ATTN_PF_BN 128          // prefill: keys per KV tile
#define ATTN_KV_BOX 64          // keys per TMA box (and per decode pipeline stage)
#define ATTN_DEC_MAX_SPLITS 64  // decode: most split-K chunks of one sequence (the plan's max_splits is at most this)
#define ATTN_DEC_SPLIT_KEYS 512 // decode: default smallest chunk, in keys

typedef CUresult (*attn_encode_tiled_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *, const cuuint64_t *,
                                         const cuuint64_t *, const cuuint32_t *, const cuuint32_t *,
                                         CUtensorMapInterleave, CUtensorMapSwizzle, CUtensorMapL2promotion,
                                         CUtensorMapFloatOOBfill);

/* A step's arrays live in one int32 arena, written in the pinned host copy and
 * uploaded in one copy. Offsets are in int32 units, multiples of 4 (16 bytes):
 *   q_indptr (n_seqs+1), kv_indptr (n_seqs+1), kv_len (n_seqs),
 *   seq_info (n_seqs, 4): decode {chunk_keys, n_chunks, first partial, first key of chunk 0},
 *                         prefill {mask offset (-1 dense), position of row 0, 0, 0},
 *   items (n_items, 4): prefill {seq, first row, head, kv tiles},
 *                       decode {seq, kv head, chunk, chunk_keys},
 *   kv_indices (kv_indptr[n_seqs]). */
struct attn_cuda_plan {
    attn_cuda_shape_t shape;
    attn_cuda_kind_t kind;
    attn_cuda_limits_t lim;
    int group;      // n_heads / n_kv_heads
    int split_keys; // decode: smallest chunk in keys
    int max_splits; // decode: most chunks of one sequence (<= ATTN_DEC_MAX_SPLITS)

    int32_t *h_arena;     // pinned
    int32_t *d_arena;     // device
    size_t arena_ints;    // capacity of both
    int *d_counters;      // decode: (max_seqs, n_kv_heads) arrivals per merge group, zero between runs
    cudaEvent_t uploaded; // the last upload from h_arena
    int upload_pending;
    attn_encode_tiled_fn encode;

    // the planned step
    int planned;
    int n_seqs;
    int64_t n_rows; // query rows
    int n_items;
    size_t off_q_indptr, off_kv_indptr, off_kv_len, off_seq_info, off_items, off_kv_indices;
    int window;         // the batch's sliding window (0: none)
    int n_sparse;       // prefill: block-sparse sequences
    int sparse_qpos;    // prefill: some block-sparse sequence has an explicit q_pos0 (no mask_pairs)
    int64_t n_partials; // decode: (kv head, chunk) partial results of split sequences
    size_t ws_bytes;
};

// The device copy of the planned step's page table (kv_indices). quest.cu
// rewrites it per layer, in stream order after the plan's upload, with the
// pages it selected: keep the table one contiguous int32 array in CSR order.
static inline int32_t *attn_cuda_plan_dev_kv_indices(const attn_cuda_plan_t *p) {
    return p->d_arena + p->off_kv_indices;
}

// Tensor maps over one layer's pool (rows of head_dim, one row per (page,
// head, token)) and over the prefill queries; box: 64 dims x box_rows.
int attn_cuda_map_kv(const attn_cuda_plan_t *p, const void *base, CUtensorMap *map);
int attn_cuda_map_q(const attn_cuda_plan_t *p, const void *q, CUtensorMap *map);

// The prefill kernels' parameters (prefill.cu, prefill_mma.cu): the planned
// step's arrays in the device arena and the call's outputs.
struct PrefillParams {
    const int32_t *q_indptr;   // (n_seqs+1)
    const int32_t *kv_indptr;  // (n_seqs+1)
    const int32_t *kv_indices; // (kv_indptr[n_seqs]) page ids
    const int32_t *kv_len;     // (n_seqs)
    const int4 *items;         // (n_items) {seq, first row, head, kv tiles}
    const int4 *seq_info;      // (n_seqs) {mask offset or -1, position of row 0, 0, 0}
    const uint32_t *mask;      // block masks, or NULL
    __nv_bfloat16 *out;        // (rows, n_heads, D)
    float *lse;                // (rows, n_heads) or NULL
    float *rowmax;             // (rows, n_heads) or NULL: m in natural units (scale * q.k)
    int n_heads, n_kv_heads, group, page_size;
    int mask_only;    // block-sparse sequences: 1 the set bits only, not the diagonal block; 2 the diagonal
                      // block only when set (attn_cuda_args_t)
    int window;       // > 0: a row at t sees keys t - window < j <= t (the plan's)
    float scale_log2; // scale * log2(e)
};
PrefillParams attn_cuda_prefill_params(const attn_cuda_plan_t *p, const attn_cuda_args_t *a);

// Kernel families (prefill.cu, decode.cu).
int attn_cuda_prefill_init(void);
int attn_cuda_prefill_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream);
int attn_cuda_prefill_variants(void);
const char *attn_cuda_prefill_variant_name(int v);
int attn_cuda_mask_pairs_launch(const attn_cuda_plan_t *p, const uint32_t *mask, unsigned long long *pairs,
                                cudaStream_t stream);
// The mma.sync prefill kernel (prefill_mma.cu): head_dim 256 and sliding
// windows, dense only; attn_cuda_prefill_launch hands such plans to it.
int attn_cuda_prefill_mma_init(void);
int attn_cuda_prefill_mma_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream);
int attn_cuda_decode_init(void);
int attn_cuda_decode_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream);
int attn_cuda_decode_variants(void);
const char *attn_cuda_decode_variant_name(int v);
