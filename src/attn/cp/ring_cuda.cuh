// What the GPU ring's parts share (cp_cuda.h): ring_cuda.cu has the plan,
// the prefill rings and the timing, ring_cuda_decode.cu the sharded decode,
// ring_cuda_anchor.cu AnchorAttention's all-to-alls. The plan object, the
// page gather, the LSE fold of one partial, pass-Q's messages and merge, the
// ring's sum for the distributed selections.
#pragma once
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_cuda.h"
#include "attn/cp/cp_ring_map.h"
#include "attn/cuda/plan.cuh"
#include "ops/cuda/cuda_check.cuh"

// A device allocation in a create function with a `fail:` label.
#define CP_ALLOC(ptr, bytes)                                                                                           \
    do {                                                                                                               \
        if (cudaMalloc((void **)&(ptr), (bytes) ? (bytes) : 16) != cudaSuccess) goto fail;                             \
    } while (0)

namespace {

// dst row i = src row idx[i], rows of row_u4 16-byte words (a KV page of all
// heads, or a query row).
__global__ void gather_rows_kernel(uint4 *dst, const uint4 *src, const int32_t *idx, int64_t n, int64_t row_u4) {
    const int64_t total = n * row_u4;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / row_u4;
        dst[i] = src[(int64_t)idx[r] * row_u4 + i % row_u4];
    }
}

int gather_rows(void *dst, const void *src, const int32_t *idx, int64_t n, size_t row_bytes, cudaStream_t st) {
    if (n <= 0) return 0;
    const int64_t row_u4 = (int64_t)(row_bytes / 16), total = n * row_u4;
    int64_t blocks = (total + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    gather_rows_kernel<<<(unsigned)blocks, 256, 0, st>>>((uint4 *)dst, (const uint4 *)src, idx, n, row_u4);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

constexpr int kMergeMaxD = 256; // the merges' lanes hold up to 8 dims each

// Folds a partial (o, its LSE lp) into a row's running output: dims lane,
// lane + 32, ... a lane (D <= kMergeMaxD) and the running LSE lr (-inf:
// nothing yet, the partial is copied exactly).
__device__ __forceinline__ void merge_part(float acc[kMergeMaxD / 32], float &lr, const __nv_bfloat16 *o, float lp,
                                           int lane, int D) {
    if (lr == -INFINITY) {
#pragma unroll
        for (int k = 0; k < kMergeMaxD / 32; k++)
            if (k * 32 + lane < D) acc[k] = __bfloat162float(o[k * 32 + lane]);
        lr = lp;
        return;
    }
    const float mx = fmaxf(lr, lp), l = mx + logf(expf(lr - mx) + expf(lp - mx));
    const float wa = expf(lr - l), wp = expf(lp - l);
#pragma unroll
    for (int k = 0; k < kMergeMaxD / 32; k++)
        if (k * 32 + lane < D) acc[k] = acc[k] * wa + __bfloat162float(o[k * 32 + lane]) * wp;
    lr = l;
}

// The ring's sum for the distributed selection (attn_cuda_sum_fn).
int ring_sum(void *ctx, float *buf, size_t n) { return cp_allreduce_sum((cp_comm_t *)ctx, buf, n); }

unsigned warp_blocks(int64_t warps) { return (unsigned)((warps + 7) / 8); } // 256 threads: 8 warps a block

// Pass-Q: the first of the own rows each rank computed (earlier ones saw
// none of its blocks).
struct SrcRows {
    int32_t r0[CP_MAX_RANKS];
};

// Pass-Q: the own rows from the partials every rank computed for them, in
// rank order, one warp per (row, head). in holds N messages of msg_bytes:
// o (rows, H, D) bf16 then lse (rows, H) f32.
__global__ void passq_merge_kernel(const uint8_t *in, size_t msg_bytes, int64_t rows, int n_heads, int D,
                                   const SrcRows src, int n_ranks, __nv_bfloat16 *out, float *lse_out) {
    const int64_t rh = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (rh >= rows * n_heads) return;
    const int64_t row = rh / n_heads;
    float acc[kMergeMaxD / 32] = {};
    float lr = -INFINITY;
    for (int i = 0; i < n_ranks; i++) {
        if (row < src.r0[i]) continue;
        const uint8_t *m = in + (size_t)i * msg_bytes;
        merge_part(acc, lr, (const __nv_bfloat16 *)m + rh * D,
                   ((const float *)(m + (size_t)rows * n_heads * D * 2))[rh], lane, D);
    }
#pragma unroll
    for (int k = 0; k < kMergeMaxD / 32; k++)
        if (k * 32 + lane < D) out[rh * D + k * 32 + lane] = __float2bfloat16_rn(acc[k]);
    if (lse_out && lane == 0) lse_out[rh] = lr;
}

// A pass-Q message: the partials of rows rows, o then lse, padded to 256 bytes.
size_t q_msg(int64_t rows, int n_heads, int D) {
    return ((size_t)rows * n_heads * (2 * (size_t)D + sizeof(float)) + 255) / 256 * 256;
}


} // namespace

struct cp_cuda_plan {
    attn_cuda_shape_t shape; // the rank's pool
    cp_cuda_limits_t lim;
    int rank, n;
    size_t page_bytes; // one page of K (or V), all kv heads
    int64_t maxp;      // pages a pack holds

    // host arena (pinned) and its device copy: [0, maxp) the own pack's page
    // ids; then decode's sel (max_dec), cidx (n * max_dec), own rows (max_dec)
    int32_t *h_arena, *d_arena;
    size_t off_dec_sel, off_dec_cidx, off_dec_own, off_t_sel, off_t_cidx, arena_ints;
    cudaEvent_t up_pf, up_dec;
    int up_pf_pending, up_dec_pending;
    int32_t *h_idx; // host scratch: one step's kv_indices (CP_RING_MAX_RUNS * maxp), or decode's (max_decode_pages)

    // prefill
    attn_cuda_plan_t *steps[CP_MAX_RANKS]; // one per ring step
    void *pack[2];                         // K pages at 0, V pages at maxp * page_bytes
    __nv_bfloat16 *part_o;
    float *part_lse, *acc, *run_lse;
    int pf_planned, n_runs;
    cp_ring_run_t runs[CP_RING_MAX_RUNS];
    int64_t rows;
    int64_t pack_pages[CP_MAX_RANKS];
    int64_t step_row0[CP_MAX_RANKS]; // first row the step computes (rows: none)
    double step_pairs[CP_MAX_RANKS];

    // pass-Q (lim.max_q_rows > 0): the queries go round instead, each rank
    // attends the visiting rows to the blocks it holds (in its pool) and
    // keeps the partials; an all-to-all brings every row its N partials
    int pass_q;                             // the planned slice's ring
    attn_cuda_plan_t *qsteps[CP_MAX_RANKS]; // step k: the rows of rank visitor(r, k) over this rank's pool pages
    void *qrecv[2];                         // visiting queries, (max_q_rows, H, D) bf16
    uint8_t *qpart, *qpartin;               // the partials sent (every origin's rows), received (own rows)
    int64_t q_rows[CP_MAX_RANKS];           // rows of each rank
    int64_t q_row0[CP_MAX_RANKS];           // step k: the origin's first row computed (q_rows: none)
    size_t q_soff[CP_MAX_RANKS], q_sbytes[CP_MAX_RANKS], q_roff[CP_MAX_RANKS], q_rbytes[CP_MAX_RANKS];
    SrcRows src; // each rank's first computed row of the own rows

    // FlexPrefill (lim.flex): the selection spread over the ranks into the
    // whole mask, the steps' masks cut from it, the pairs computed. The
    // pinned fx arena (and its device copy): the descriptors (StepMask, n x
    // CP_RING_MAX_RUNS), each rank's 128-blocks in order (kbmap, n x
    // (maxp + 1)), this rank's query blocks (qbs, max_rows / 128 + 2)
    attn_cuda_flex_t *flex;
    int sparse;      // the planned slice runs FlexPrefill
    uint32_t *gmask; // the whole mask (H, n_qb, words)
    uint32_t *smask; // the steps' masks
    size_t gmask_cap, smask_cap;
    int32_t *h_fx, *d_fx; // pinned / device
    size_t fx_kbmap, fx_qbs, fx_ints;
    cudaEvent_t up_fx;
    int up_fx_pending;
    int n_desc, max_desc_qb, n_qbs, g_qb0, g_nqb, g_words;
    int64_t spos0, send; // the planned slice
    size_t smask_used;
    unsigned long long *d_pairs, *h_pairs; // device counter, pinned copy
    int32_t *h_held;                       // host scratch: held (bytes) and qrows of the dist plan

    // AnchorAttention (lim.max_anchor_rows): the dist API over every row of
    // the slice; the queries and the partials by all-to-all
    attn_cuda_anchor_t *anc;
    int anc_local;            // the smallest anchor_local its workspace holds
    int anc_on;               // the planned slice runs AnchorAttention
    void *aq_recv, *aq;       // every rank's rows as received (n x max_rows), the slice's rows in position order
    __nv_bfloat16 *ao;        // this rank's partial of every row (max_anchor_rows, H, D)
    float *alse;              // (max_anchor_rows, H)
    uint8_t *asend, *arecv;   // the partials by destination (q_msg each); received (n x q_msg(max_rows))
    int32_t *h_aidx, *d_aidx; // pinned / device (2 max_anchor_rows): slice row i's received row, then every
                              // rank's rows' slice rows, rank after rank
    uint8_t *h_aheld;         // (max_tokens / 128 + 1) the held 128-blocks
    cudaEvent_t up_anc;
    int up_anc_pending;
    int64_t a_ntok;             // the planned slice's rows
    size_t a_off[CP_MAX_RANKS]; // rank t's rows' first entry in the pack index

    // decode, Quest (lim.quest): the distributed plan over the whole batch
    attn_quest_plan_t *quest;
    void *quest_ws;
    size_t quest_ws_cap;
    uint8_t *h_held_pages; // (quest's max_pages) this rank's pages of the batch
    int dec_quest;         // the planned batch runs Quest

    // decode, TidalDecode (lim.tidal_budget): the distributed plan over the
    // whole batch beside the dense one (the selection layers are dense)
    attn_tidal_plan_t *tidal;
    void *tidal_ws;
    size_t tidal_ws_cap;
    float *d_glse; // (max_dec, H) every row's LSE at a selection layer
    int dec_tidal; // the planned batch runs TidalDecode

    // decode
    attn_cuda_plan_t *dec;
    void *dec_ws, *dq_all, *dq_c, *dmsg, *dgath;
    size_t dec_ws_cap, dec_ws_bytes;
    int dec_planned, dec_n, dec_m, dec_n_own;
    int *dec_row_owner; // host (max_dec)
    int32_t *h_dec;     // host scratch: the decode batch's kv_indptr (max_dec + 1) and kv_len (max_dec)
    double dec_pairs;

    // timing
    int timing;
    cudaEvent_t ev[3 * CP_MAX_RANKS + 2]; // per step: start, computed, waited; then pass-Q's all-to-all
    float step_c[CP_MAX_RANKS], step_w[CP_MAX_RANKS];
    int timed;
    cp_timing_t t;
};

// AnchorAttention across the ranks (ring_cuda_anchor.cu): its buffers at
// create (lim.max_anchor_rows > 0) and destroy, the slice's plan (checks,
// the workspace made again for a smaller anchor_local; sets anc_on) and a
// layer's run.
int cp_cuda__anchor_create(cp_cuda_plan_t *p);
void cp_cuda__anchor_destroy(cp_cuda_plan_t *p);
int cp_cuda__anchor_plan(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream);
int cp_cuda__anchor_run(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                        float *lse);
