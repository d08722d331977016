// Context-parallel attention on the GPU kernels (cp_cuda.h): the plan, the
// pass-KV ring of a sharded prompt slice, the sharded decode, and the two
// small kernels they add to attn_cuda's: a page gather (packs, queries) and
// the LSE merge of partial outputs.
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_cuda.h"
#include "attn/cp/cp_ring_map.h"
#include "attn/cuda/plan.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

// ---- kernels ----------------------------------------------------------------------------------
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

// One ring step's partials into the rows' running output, one warp per (row,
// head), rows [r0, rows) computed this step:
//   lse = log(exp(lse_run) + exp(lse_step)), acc = acc e^(lse_run - lse) + o e^(lse_step - lse)
// The first step sets acc = o (exactly); the last also writes out (bf16) and
// lse for every row. Fixed order, no atomics: the same bits every time.
__global__ void ring_merge_kernel(float *acc, float *run_lse, const __nv_bfloat16 *part_o, const float *part_lse,
                                  int64_t rows, int n_heads, int D, int64_t r0, int first, int last, __nv_bfloat16 *out,
                                  float *lse_out) {
    const int64_t rh = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (rh >= rows * n_heads) return;
    float *a = acc + rh * D;
    float lr = run_lse[rh];
    if (rh / n_heads >= r0) {
        const float lp = part_lse[rh];
        const __nv_bfloat16 *o = part_o + rh * D;
        if (first) {
            lr = lp;
            for (int d = lane; d < D; d += 32) a[d] = __bfloat162float(o[d]);
        } else {
            const float m = fmaxf(lr, lp), l = m + logf(expf(lr - m) + expf(lp - m));
            const float wa = expf(lr - l), wp = expf(lp - l);
            for (int d = lane; d < D; d += 32) a[d] = a[d] * wa + __bfloat162float(o[d]) * wp;
            lr = l;
        }
        __syncwarp();
        if (lane == 0) run_lse[rh] = lr;
    }
    if (last) {
        for (int d = lane; d < D; d += 32) out[rh * D + d] = __float2bfloat16_rn(a[d]);
        if (lse_out && lane == 0) lse_out[rh] = lr;
    }
}

// Folds a partial (o, its LSE lp) into a row's running output: four dims a
// lane (D <= 128) and the running LSE lr (-inf: nothing yet, the partial is
// copied exactly).
__device__ __forceinline__ void merge_part(float acc[4], float &lr, const __nv_bfloat16 *o, float lp, int lane, int D) {
    if (lr == -INFINITY) {
        for (int k = 0; k * 32 + lane < D; k++) acc[k] = __bfloat162float(o[k * 32 + lane]);
        lr = lp;
        return;
    }
    const float mx = fmaxf(lr, lp), l = mx + logf(expf(lr - mx) + expf(lp - mx));
    const float wa = expf(lr - l), wp = expf(lp - l);
    for (int k = 0; k * 32 + lane < D; k++) acc[k] = acc[k] * wa + __bfloat162float(o[k * 32 + lane]) * wp;
    lr = l;
}

// Decode: the owner's rows from every rank's partials, in rank order. gath
// holds N messages of msg_bytes: o (n, H, D) bf16 then lse (n, H) f32, row i
// of rank i's message being compact row cidx[i * n + s] (-1: none).
__global__ void dec_merge_kernel(const uint8_t *gath, size_t msg_bytes, const int32_t *cidx, const int32_t *own,
                                 int n_own, int n, int n_ranks, int n_heads, int D, __nv_bfloat16 *out,
                                 float *lse_out) {
    const int64_t w = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (w >= (int64_t)n_own * n_heads) return;
    const int s = own[w / n_heads], h = (int)(w % n_heads);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    float lr = -INFINITY;
    for (int i = 0; i < n_ranks; i++) {
        const int ci = cidx[(int64_t)i * n + s];
        if (ci < 0) continue;
        const uint8_t *m = gath + (size_t)i * msg_bytes;
        const __nv_bfloat16 *o = (const __nv_bfloat16 *)m + ((int64_t)ci * n_heads + h) * D;
        merge_part(acc, lr, o, ((const float *)(m + (size_t)n * n_heads * D * 2))[(int64_t)ci * n_heads + h], lane, D);
    }
    for (int k = 0; k * 32 + lane < D; k++)
        out[((int64_t)s * n_heads + h) * D + k * 32 + lane] = __float2bfloat16_rn(acc[k]);
    if (lse_out && lane == 0) lse_out[(int64_t)s * n_heads + h] = lr;
}

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
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    float lr = -INFINITY;
    for (int i = 0; i < n_ranks; i++) {
        if (row < src.r0[i]) continue;
        const uint8_t *m = in + (size_t)i * msg_bytes;
        merge_part(acc, lr, (const __nv_bfloat16 *)m + rh * D,
                   ((const float *)(m + (size_t)rows * n_heads * D * 2))[rh], lane, D);
    }
    for (int k = 0; k * 32 + lane < D; k++) out[rh * D + k * 32 + lane] = __float2bfloat16_rn(acc[k]);
    if (lse_out && lane == 0) lse_out[rh] = lr;
}

// FlexPrefill: one ring step's masks from the whole one. A descriptor per
// (step, run): its view's query blocks i (global query block ig0 + i of the
// whole mask) against the view's key blocks kb (global block kbmap[kbm + kb]),
// at word offset off, H rows of n_qb x words each (attn_cuda.h's layout).
struct StepMask {
    int32_t off, n_qb, words, ig0, n_kb, kbm;
};

// grid (descriptors, H, most view query blocks), block 32: one lane a word.
__global__ void step_mask_kernel(const uint32_t *whole, int n_qb_w, int words_w, const StepMask *desc,
                                 const int32_t *kbmap, uint32_t *out) {
    const StepMask d = desc[blockIdx.x];
    const int h = blockIdx.y, i = blockIdx.z;
    if (i >= d.n_qb) return;
    const uint32_t *row = whole + ((size_t)h * n_qb_w + d.ig0 + i) * words_w;
    uint32_t *o = out + d.off + ((size_t)h * d.n_qb + i) * d.words;
    for (int w = threadIdx.x; w < d.words; w += 32) {
        uint32_t word = 0;
        for (int b = 0; b < 32 && w * 32 + b < d.n_kb; b++) {
            const int g = kbmap[d.kbm + w * 32 + b];
            word |= ((row[g >> 5] >> (g & 31)) & 1u) << b;
        }
        o[w] = word;
    }
}

// FlexPrefill: the pairs of this rank's query blocks (qbs[0 .. n), global)
// under the whole mask, all heads: every set block below the diagonal whole,
// the diagonal up to each row. Integer sums, so exact in any order.
__global__ void own_pairs_kernel(const uint32_t *whole, int n_qb_w, int words_w, int qb0, int64_t pos0, int64_t end,
                                 const int32_t *qbs, int n, int n_heads, unsigned long long *pairs) {
    unsigned long long acc = 0;
    for (int x = threadIdx.x; x < n * n_heads; x += blockDim.x) {
        const int qb = qbs[x % n], h = x / n;
        const int64_t p0 = (int64_t)qb * 128 > pos0 ? (int64_t)qb * 128 : pos0;
        const int64_t p1 = (int64_t)(qb + 1) * 128 < end ? (int64_t)(qb + 1) * 128 : end;
        const uint32_t *row = whole + ((size_t)h * n_qb_w + (qb - qb0)) * words_w;
        int below = 0;
        for (int w = 0; w < qb / 32; w++) below += __popc(row[w]);
        if (qb & 31) below += __popc(row[qb / 32] & ((1u << (qb & 31)) - 1u));
        acc += (unsigned long long)below * 128 * (p1 - p0) +
               (unsigned long long)((p1 - p0) * (p0 + p1 + 1 - 2 * (int64_t)qb * 128) / 2);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0 && acc) atomicAdd(pairs, acc);
}

// The ring's sum for the distributed selection (attn_cuda_sum_fn).
int ring_sum(void *ctx, float *buf, size_t n) { return cp_allreduce_sum((cp_comm_t *)ctx, buf, n); }

// A pass-Q message: the partials of rows rows, o then lse, padded to 256 bytes.
size_t q_msg(int64_t rows, int n_heads, int D) {
    return ((size_t)rows * n_heads * (2 * (size_t)D + sizeof(float)) + 255) / 256 * 256;
}

unsigned warp_blocks(int64_t warps) { return (unsigned)((warps + 7) / 8); } // 256 threads: 8 warps a block

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

extern "C" void cp_cuda_plan_destroy(cp_cuda_plan_t *p) {
    if (!p) return;
    if (p->up_pf) cudaEventSynchronize(p->up_pf), cudaEventDestroy(p->up_pf);
    if (p->up_dec) cudaEventSynchronize(p->up_dec), cudaEventDestroy(p->up_dec);
    for (int i = 0; i < 3 * CP_MAX_RANKS + 2; i++)
        if (p->ev[i]) cudaEventDestroy(p->ev[i]);
    for (int k = 0; k < CP_MAX_RANKS; k++) attn_cuda_plan_destroy(p->steps[k]), attn_cuda_plan_destroy(p->qsteps[k]);
    attn_cuda_plan_destroy(p->dec);
    attn_quest_plan_destroy(p->quest);
    cudaFree(p->quest_ws);
    attn_tidal_plan_destroy(p->tidal);
    cudaFree(p->tidal_ws), cudaFree(p->d_glse);
    free(p->h_held_pages);
    if (p->up_fx) cudaEventSynchronize(p->up_fx), cudaEventDestroy(p->up_fx);
    attn_cuda_flex_destroy(p->flex);
    cudaFree(p->gmask), cudaFree(p->smask), cudaFree(p->d_fx), cudaFree(p->d_pairs);
    cudaFreeHost(p->h_fx), cudaFreeHost(p->h_pairs);
    free(p->h_held);
    cudaFreeHost(p->h_arena);
    cudaFree(p->d_arena);
    cudaFree(p->pack[0]), cudaFree(p->pack[1]);
    cudaFree(p->part_o), cudaFree(p->part_lse), cudaFree(p->acc), cudaFree(p->run_lse);
    cudaFree(p->qrecv[0]), cudaFree(p->qrecv[1]), cudaFree(p->qpart), cudaFree(p->qpartin);
    cudaFree(p->dec_ws), cudaFree(p->dq_all), cudaFree(p->dq_c), cudaFree(p->dmsg), cudaFree(p->dgath);
    free(p->h_idx);
    free(p->dec_row_owner);
    free(p->h_dec);
    free(p);
}

#define CP_ALLOC(ptr, bytes)                                                                                           \
    do {                                                                                                               \
        if (cudaMalloc((void **)&(ptr), (bytes) ? (bytes) : 16) != cudaSuccess) goto fail;                             \
    } while (0)

extern "C" int cp_cuda_plan_create(const attn_cuda_shape_t *shape, const cp_cuda_limits_t *lim, int rank, int n_ranks,
                                   cp_cuda_plan_t **out) {
    if (!shape || !lim || !out || n_ranks < 1 || n_ranks > CP_MAX_RANKS || rank < 0 || rank >= n_ranks)
        return LC_EINVAL;
    *out = nullptr;
    if (lim->flex < 0 || lim->flex > 1 || lim->quest < 0 || lim->quest > 1 || lim->tidal_budget < 0 ||
        lim->max_tokens < 0 || lim->max_rows < 0 || lim->max_pack_pages < 0 || lim->max_decode_seqs < 0 ||
        lim->max_decode_pages < 0 || lim->max_q_rows < 0 || (lim->max_q_rows > 0 && lim->max_tokens == 0) ||
        (lim->max_tokens == 0 && lim->max_decode_seqs == 0) || lim->max_tokens > INT32_MAX || shape->page_size <= 0 ||
        shape->n_heads <= 0 || shape->head_dim <= 0 || shape->n_kv_heads <= 0)
        return LC_EINVAL;
    cp_cuda_plan_t *p = (cp_cuda_plan_t *)calloc(1, sizeof *p);
    if (!p) return LC_ENOMEM;
    int rc = LC_ENOMEM;
    const int H = shape->n_heads, D = shape->head_dim, ps = shape->page_size;
    const int64_t blocks_max = (lim->max_tokens + ps - 1) / ps;
    p->shape = *shape;
    p->lim = *lim;
    p->rank = rank;
    p->n = n_ranks;
    p->page_bytes = (size_t)shape->n_kv_heads * ps * D * 2;
    p->maxp = lim->max_pack_pages ? lim->max_pack_pages : blocks_max;
    if (!p->lim.max_rows) p->lim.max_rows = lim->max_tokens;
    const int64_t max_dec = lim->max_decode_seqs;
    if (!p->lim.max_decode_pages) p->lim.max_decode_pages = max_dec * (blocks_max ? blocks_max : 1);
    p->off_dec_sel = (size_t)p->maxp;
    p->off_dec_cidx = p->off_dec_sel + (size_t)max_dec;
    p->off_dec_own = p->off_dec_cidx + (size_t)n_ranks * max_dec;
    p->off_t_sel = p->off_dec_own + (size_t)max_dec; // every row's query source, then every rank's row of it
    p->off_t_cidx = p->off_t_sel + (size_t)max_dec;
    p->arena_ints = p->off_t_cidx + (size_t)n_ranks * max_dec + 4;
    {
        const size_t scratch = (size_t)CP_RING_MAX_RUNS * p->maxp > (size_t)p->lim.max_decode_pages
                                   ? (size_t)CP_RING_MAX_RUNS * p->maxp
                                   : (size_t)p->lim.max_decode_pages;
        p->h_idx = (int32_t *)malloc(sizeof(int32_t) * (scratch + 1));
        p->dec_row_owner = (int *)malloc(sizeof(int) * (size_t)(max_dec + 1));
        p->h_dec = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * max_dec + 2));
        if (!p->h_idx || !p->dec_row_owner || !p->h_dec) goto fail;
    }
    rc = LC_EDEVICE;
    if (cudaMallocHost((void **)&p->h_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    CP_ALLOC(p->d_arena, p->arena_ints * sizeof(int32_t));
    if (cudaEventCreateWithFlags(&p->up_pf, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&p->up_dec, cudaEventDisableTiming) != cudaSuccess)
        goto fail;
    for (int i = 0; i < 3 * CP_MAX_RANKS + 2; i++)
        if ((i < 3 * n_ranks || i >= 3 * CP_MAX_RANKS) && cudaEventCreate(&p->ev[i]) != cudaSuccess) goto fail;
    if (lim->max_tokens > 0) {
        attn_cuda_shape_t ps_shape = *shape;
        ps_shape.n_pool_pages = p->maxp; // the steps read the packs
        attn_cuda_limits_t al = {CP_RING_MAX_RUNS, p->lim.max_rows, (int64_t)CP_RING_MAX_RUNS * p->maxp, 0};
        for (int k = 0; k < n_ranks; k++)
            if ((rc = attn_cuda_plan_create(&ps_shape, ATTN_CUDA_PREFILL, &al, &p->steps[k]))) goto fail;
        rc = LC_EDEVICE;
        const size_t rows = (size_t)p->lim.max_rows;
        CP_ALLOC(p->pack[0], 2 * (size_t)p->maxp * p->page_bytes);
        CP_ALLOC(p->pack[1], 2 * (size_t)p->maxp * p->page_bytes);
        CP_ALLOC(p->part_o, rows * H * D * 2);
        CP_ALLOC(p->part_lse, rows * H * sizeof(float));
        CP_ALLOC(p->acc, rows * H * D * sizeof(float));
        CP_ALLOC(p->run_lse, rows * H * sizeof(float));
    }
    if (lim->flex && lim->max_tokens > 0) { // FlexPrefill
        if ((rc = attn_cuda_flex_create(shape, 1, lim->max_tokens, lim->max_tokens, &p->flex))) goto fail;
        rc = LC_ENOMEM;
        const int64_t nkb = (lim->max_tokens - 1) / 128 + 1, words = (nkb + 31) / 32;
        const int64_t pack_kb = p->maxp * ps / 128 + 1, pack_words = (pack_kb + 31) / 32;
        p->gmask_cap = (size_t)H * nkb * words;
        p->smask_cap = (size_t)n_ranks * H * (p->lim.max_rows / 128 + CP_RING_MAX_RUNS) * pack_words;
        p->fx_kbmap = (size_t)6 * n_ranks * CP_RING_MAX_RUNS;
        p->fx_qbs = p->fx_kbmap + (size_t)n_ranks * (p->maxp + 1);
        p->fx_ints = p->fx_qbs + (size_t)(p->lim.max_rows / 128 + 2);
        if (!(p->h_held = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * nkb + 2)))) goto fail;
        rc = LC_EDEVICE;
        if (cudaMallocHost((void **)&p->h_fx, sizeof(int32_t) * p->fx_ints) != cudaSuccess ||
            cudaMallocHost((void **)&p->h_pairs, sizeof(unsigned long long)) != cudaSuccess ||
            cudaEventCreateWithFlags(&p->up_fx, cudaEventDisableTiming) != cudaSuccess)
            goto fail;
        CP_ALLOC(p->d_fx, sizeof(int32_t) * p->fx_ints);
        CP_ALLOC(p->gmask, sizeof(uint32_t) * p->gmask_cap);
        CP_ALLOC(p->smask, sizeof(uint32_t) * p->smask_cap);
        CP_ALLOC(p->d_pairs, sizeof(unsigned long long));
        if (cudaMemset(p->d_pairs, 0, sizeof(unsigned long long)) != cudaSuccess) goto fail;
    }
    if (lim->max_q_rows > 0) { // pass-Q: the steps read the pool
        attn_cuda_limits_t al = {CP_RING_MAX_RUNS, lim->max_q_rows, (int64_t)CP_RING_MAX_RUNS * p->maxp, 0};
        for (int k = 0; k < n_ranks; k++)
            if ((rc = attn_cuda_plan_create(shape, ATTN_CUDA_PREFILL, &al, &p->qsteps[k]))) goto fail;
        rc = LC_EDEVICE;
        CP_ALLOC(p->qrecv[0], (size_t)lim->max_q_rows * H * D * 2);
        CP_ALLOC(p->qrecv[1], (size_t)lim->max_q_rows * H * D * 2);
        CP_ALLOC(p->qpart, (size_t)n_ranks * q_msg(lim->max_q_rows, H, D));
        CP_ALLOC(p->qpartin, (size_t)n_ranks * q_msg(lim->max_q_rows, H, D));
    }
    if (max_dec > 0) {
        attn_cuda_limits_t al = {(int)max_dec, 0, p->lim.max_decode_pages, 0};
        if ((rc = attn_cuda_plan_create(shape, ATTN_CUDA_DECODE, &al, &p->dec))) goto fail;
        rc = LC_EDEVICE;
        // the split-K workspace of the largest batch (attn_cuda_plan's formula)
        p->dec_ws_cap = (size_t)max_dec * shape->n_kv_heads * ATTN_DEC_MAX_SPLITS * (H / shape->n_kv_heads) * (D + 1) *
                        sizeof(float);
        CP_ALLOC(p->dec_ws, p->dec_ws_cap);
        if (lim->quest) { // every sequence's whole page table on every rank
            const int64_t qpages = max_dec * (blocks_max ? blocks_max : 1);
            attn_cuda_limits_t ql = {(int)max_dec, 0, qpages, 0};
            if ((rc = attn_quest_plan_create(shape, &ql, &p->quest))) goto fail;
            rc = LC_ENOMEM;
            if (!(p->h_held_pages = (uint8_t *)malloc((size_t)qpages))) goto fail;
            rc = LC_EDEVICE;
            p->quest_ws_cap = ((size_t)qpages * shape->n_kv_heads * sizeof(float) + 255) / 256 * 256 + p->dec_ws_cap;
            CP_ALLOC(p->quest_ws, p->quest_ws_cap);
        }
        if (lim->tidal_budget > 0) {
            const int64_t tpages = max_dec * (blocks_max ? blocks_max : 1), KH = shape->n_kv_heads;
            attn_tidal_limits_t tl = {(int)max_dec, tpages, lim->tidal_budget, 0};
            if ((rc = attn_tidal_plan_create(shape, &tl, &p->tidal))) goto fail;
            rc = LC_ENOMEM;
            if (!p->h_held_pages && !(p->h_held_pages = (uint8_t *)malloc((size_t)tpages))) goto fail;
            rc = LC_EDEVICE;
            // its workspace: the masses (positions of every row, 16-byte runs) or the chunks' partials
            const size_t row_keys = (size_t)(blocks_max ? blocks_max : 1) * ps;
            const size_t mass = (size_t)max_dec * KH * ((row_keys + 3) & ~(size_t)3) * sizeof(float);
            const size_t att = (size_t)max_dec * KH * 64 * (H / KH) * (D + 1) * sizeof(float) + 1024;
            p->tidal_ws_cap = mass > att ? mass : att;
            CP_ALLOC(p->tidal_ws, p->tidal_ws_cap);
            CP_ALLOC(p->d_glse, (size_t)max_dec * H * sizeof(float));
        }
        const size_t qrow = (size_t)H * D * 2, msg = (size_t)max_dec * H * (D * 2 + sizeof(float));
        CP_ALLOC(p->dq_all, (size_t)n_ranks * max_dec * qrow);
        CP_ALLOC(p->dq_c, (size_t)max_dec * qrow);
        CP_ALLOC(p->dmsg, msg);
        CP_ALLOC(p->dgath, (size_t)n_ranks * msg);
    }
    *out = p;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the last error
    if (rc == LC_EDEVICE) lc_log(LC_LOG_ERROR, "cp_cuda: cannot allocate rank %d's plan", rank);
    cp_cuda_plan_destroy(p);
    return rc;
}

// ---- prefill ------------------------------------------------------------------------------
// One ring step's batch: the runs (of one rank's rows) whose view of rank
// keys's pack has keys (a suffix of them, cp_ring_map.h), one attn_cuda
// sequence each, over the page ids pages[0 .. view's pages) (at most np) or,
// when pages is NULL, the visiting pack's 0, 1, ...; planned on plan when
// any run sees keys. *row0: the first such run's row (dflt when none),
// *pairs: the step's query-key pairs over all heads.
static int plan_step(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, const cp_ring_run_t *runs, int nr, int keys,
                     const int32_t *pages, int64_t np, attn_cuda_plan_t *plan, int64_t dflt, int64_t *row0,
                     double *pairs, void *stream) {
    const int64_t end = seq->pos0 + seq->n_tok;
    int32_t qi[CP_RING_MAX_RUNS + 1], ki[CP_RING_MAX_RUNS + 1], kl[CP_RING_MAX_RUNS], qp[CP_RING_MAX_RUNS],
        mo[CP_RING_MAX_RUNS];
    int m = 0, first = nr;
    double pr = 0;
    qi[0] = ki[0] = 0;
    for (int i = 0; i < nr; i++) {
        cp_ring_view_t v;
        int rc = cp_ring_view(seq->owner, p->shape.page_size, end, &runs[i], keys, &v);
        if (rc) return rc;
        if (v.kind == CP_PAIR_NONE) {
            if (m > 0) return LC_EINVAL; // not a suffix: an owner table cp_ring_map.h does not describe
            continue;
        }
        if (m == 0) first = i;
        if (pages && v.n_pages > np) return LC_EINVAL;
        qi[m + 1] = qi[m] + (int32_t)runs[i].n;
        ki[m + 1] = ki[m] + v.n_pages;
        if (pages)
            memcpy(p->h_idx + ki[m], pages, sizeof(int32_t) * (size_t)v.n_pages);
        else
            for (int32_t x = 0; x < v.n_pages; x++) p->h_idx[ki[m] + x] = x;
        kl[m] = v.kv_len;
        qp[m] = v.q_pos0;
        for (int64_t row = 0; row < runs[i].n; row++)
            pr += (double)(v.q_pos0 + row + 1 < v.kv_len ? v.q_pos0 + row + 1 : v.kv_len);
        if (p->sparse) { // the run's mask of this step, cut from the whole one by step_mask_kernel
            const int64_t off = runs[i].p0 % 128;
            if (v.kind == CP_PAIR_FULL) {
                qp[m] = v.kv_len + (int32_t)off; // view blocks are whole blocks
                if ((int64_t)qp[m] + runs[i].n > INT32_MAX) return LC_ERANGE;
            } else if (v.q_pos0 % 128 != off) {
                return LC_EINVAL; // a 128-position block split between ranks
            }
            const int n_qb = (int)((qp[m] + runs[i].n - 1) / 128 - qp[m] / 128 + 1), n_kb = (v.kv_len - 1) / 128 + 1;
            const int words = (n_kb + 31) / 32;
            const size_t need = (size_t)p->shape.n_heads * n_qb * words;
            if (p->smask_used + need > p->smask_cap || p->n_desc >= p->n * CP_RING_MAX_RUNS) return LC_ERANGE;
            StepMask *d = (StepMask *)p->h_fx + p->n_desc++;
            *d = {(int32_t)p->smask_used,
                  n_qb,
                  words,
                  (int32_t)(runs[i].p0 / 128 - p->g_qb0),
                  n_kb,
                  (int32_t)(p->fx_kbmap + (size_t)keys * (p->maxp + 1))};
            if (n_qb > p->max_desc_qb) p->max_desc_qb = n_qb;
            mo[m] = (int32_t)p->smask_used;
            p->smask_used += need;
        }
        m++;
    }
    *row0 = m ? runs[first].row0 : dflt;
    *pairs = pr * p->shape.n_heads;
    if (!m) return 0;
    attn_cuda_batch_t bt = {m, qi, ki, p->h_idx, kl, p->sparse ? mo : NULL, qp};
    return attn_cuda_plan(plan, &bt, stream, NULL);
}

// FlexPrefill's plan (pass-KV, after the runs): the distributed selection's
// sequence, every rank's 128-blocks in order (kbmap), this rank's query
// blocks; the steps' descriptors follow in plan_step. The fx arena is
// uploaded once the steps are planned (upload_fx).
static int plan_flex(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    const int ps = p->shape.page_size, n = p->n, r = p->rank;
    const int64_t end = seq->pos0 + seq->n_tok, nb = (end + ps - 1) / ps, nkb = (end - 1) / 128 + 1;
    if (ps > 128 || 128 % ps) return LC_EINVAL;
    const int per = 128 / ps; // pages per 128-block
    for (int64_t b = 0; b < nb; b++)
        if (seq->owner[b] != seq->owner[b - b % per]) return LC_EINVAL; // a block split between ranks
    if (p->up_fx_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_fx));
        p->up_fx_pending = 0;
    }
    for (int j = 0; j < n; j++) {
        int32_t *km = p->h_fx + p->fx_kbmap + (size_t)j * (p->maxp + 1);
        int64_t c = 0;
        for (int64_t g = 0; g < nkb; g++)
            if (seq->owner[g * per] == j) km[c++] = (int32_t)g;
        if (c > p->maxp + 1) return LC_ERANGE;
    }
    p->g_qb0 = (int)(seq->pos0 / 128);
    p->g_nqb = (int)(nkb - p->g_qb0);
    p->g_words = (int)((nkb + 31) / 32);
    if ((size_t)p->shape.n_heads * p->g_nqb * p->g_words > p->gmask_cap) return LC_ERANGE;
    uint8_t *held = (uint8_t *)p->h_held;
    int32_t *qrows = p->h_held + (nkb + 3) / 4;
    int32_t *qbs = p->h_fx + p->fx_qbs;
    p->n_qbs = 0;
    for (int64_t g = 0; g < nkb; g++) {
        held[g] = seq->owner[g * per] == r;
        if (g < p->g_qb0) continue;
        qrows[g - p->g_qb0] = -1;
        if (!held[g]) continue;
        const int64_t pos = g * 128 > seq->pos0 ? g * 128 : seq->pos0;
        for (int i = 0; i < p->n_runs; i++)
            if (pos >= p->runs[i].p0 && pos < p->runs[i].p0 + p->runs[i].n)
                qrows[g - p->g_qb0] = (int32_t)(p->runs[i].row0 + pos - p->runs[i].p0);
        if (p->n_qbs >= (int)(p->lim.max_rows / 128 + 2)) return LC_ERANGE;
        qbs[p->n_qbs++] = (int32_t)g;
    }
    attn_cuda_flex_dist_seq_t d = {(int)seq->n_tok, (int)end, seq->blocks, held, qrows, *seq->flex};
    p->n_desc = 0;
    p->max_desc_qb = 0;
    p->smask_used = 0;
    return attn_cuda_flex_dist_plan(p->flex, &d, NULL, stream);
}

static int upload_fx(cp_cuda_plan_t *p, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->d_fx, p->h_fx, sizeof(int32_t) * p->fx_ints, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->up_fx, st));
    p->up_fx_pending = 1;
    return 0;
}

// Pass-Q's steps (the own blocks' page ids at h_arena[0 .. np)) and its
// all-to-all: step k attends the rows of rank visitor(r, k), run by run, to
// this rank's blocks in the pool (the runs that see any: a suffix).
static int plan_pass_q(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, int64_t np, void *stream) {
    const int ps = p->shape.page_size, n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int64_t end = seq->pos0 + seq->n_tok;
    size_t off = 0;
    for (int t = 0; t < n; t++) {
        p->q_soff[t] = off;
        p->q_sbytes[t] = q_msg(p->q_rows[t], H, D);
        off += p->q_sbytes[t];
        p->q_roff[t] = (size_t)t * q_msg(p->rows, H, D);
        p->q_rbytes[t] = q_msg(p->rows, H, D);
        // rank t's first computed row of the own rows: the first own run that sees t's blocks
        p->src.r0[t] = (int32_t)p->rows;
        for (int i = 0; i < p->n_runs; i++) {
            cp_ring_view_t v;
            int rc = cp_ring_view(seq->owner, ps, end, &p->runs[i], t, &v);
            if (rc) return rc;
            if (v.kind != CP_PAIR_NONE) {
                p->src.r0[t] = (int32_t)p->runs[i].row0;
                break;
            }
        }
    }
    for (int k = 0; k < n; k++) {
        const int org = cp_ring_visitor(r, k, n);
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nr = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, org, runs, CP_RING_MAX_RUNS);
        if (nr < 0) return nr;
        int rc = plan_step(p, seq, runs, nr, r, p->h_arena, np, p->qsteps[k], p->q_rows[org], &p->q_row0[k],
                           &p->step_pairs[k], stream);
        if (rc) return rc;
    }
    return 0;
}

extern "C" int cp_cuda_plan_prefill(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    if (!p || !seq || !seq->blocks || !seq->owner || !p->steps[0]) return LC_EINVAL;
    p->pf_planned = 0;
    const int ps = p->shape.page_size, n = p->n, r = p->rank;
    const int64_t end = seq->pos0 + seq->n_tok;
    if (seq->pos0 < 0 || seq->n_tok < 1) return LC_EINVAL;
    if (end > p->lim.max_tokens) return LC_ERANGE;
    const int64_t nb = (end + ps - 1) / ps;
    for (int64_t b = 0; b < nb; b++)
        if (seq->owner[b] >= n) return LC_EINVAL;
    int nr = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, r, p->runs, CP_RING_MAX_RUNS);
    if (nr < 0) return nr;
    p->n_runs = nr;
    p->rows = nr ? p->runs[nr - 1].row0 + p->runs[nr - 1].n : 0;
    if (p->rows > p->lim.max_rows) return LC_ERANGE;
    for (int j = 0; j < n; j++)
        if ((p->pack_pages[j] = cp_ring_pack(seq->owner, nb, j, NULL)) > p->maxp) return LC_ERANGE;
    // the ring: pass-Q where asked for (or, automatically, where the queries
    // weigh less than the KV) and its buffers hold every rank's rows
    int fits = p->lim.max_q_rows > 0;
    for (int t = 0; t < n; t++) {
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nt = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, t, runs, CP_RING_MAX_RUNS);
        if (nt < 0) return nt;
        p->q_rows[t] = nt ? runs[nt - 1].row0 + runs[nt - 1].n : 0;
        fits &= p->q_rows[t] <= p->lim.max_q_rows;
    }
    if (seq->mode < CP_CUDA_AUTO || seq->mode > CP_CUDA_PASS_Q) return LC_EINVAL;
    if (seq->flex && seq->mode == CP_CUDA_PASS_Q) return LC_EINVAL; // FlexPrefill rides the pass-KV ring
    if (seq->flex && !p->flex) return LC_ERANGE;
    if (seq->mode == CP_CUDA_PASS_Q && !fits) return LC_ERANGE;
    p->pass_q = !seq->flex && (seq->mode == CP_CUDA_PASS_Q ||
                               (seq->mode == CP_CUDA_AUTO && fits &&
                                cp_pass_q_pays(seq->pos0, seq->n_tok, p->shape.n_heads, p->shape.n_kv_heads)));
    p->sparse = 0;

    cudaStream_t st = (cudaStream_t)stream;
    if (p->up_pf_pending) { // the pinned section may still be the source of the last upload
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_pf));
        p->up_pf_pending = 0;
    }
    int64_t np = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (seq->owner[b] != r) continue;
        if (seq->blocks[b] < 0 || seq->blocks[b] >= p->shape.n_pool_pages) return LC_EINVAL;
        p->h_arena[np++] = seq->blocks[b];
    }
    if (np) {
        CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena, p->h_arena, sizeof(int32_t) * np, cudaMemcpyHostToDevice, st));
        CUDA_CHECK_RET(cudaEventRecord(p->up_pf, st));
        p->up_pf_pending = 1;
    }
    if (p->pass_q) {
        int rc = plan_pass_q(p, seq, np, stream);
        if (rc) return rc;
        p->pf_planned = 1;
        return 0;
    }

    if (seq->flex) {
        p->spos0 = seq->pos0;
        p->send = end;
        int rc = plan_flex(p, seq, stream);
        if (rc) return rc;
        p->sparse = 1;
    }
    // Each step's batch: this rank's runs that see the visiting pack's keys.
    for (int k = 0; k < n; k++) {
        int rc = plan_step(p, seq, p->runs, nr, cp_ring_visitor(r, k, n), NULL, 0, p->steps[k], p->rows,
                           &p->step_row0[k], &p->step_pairs[k], stream);
        if (rc) return rc;
    }
    if (p->sparse) {
        int rc = upload_fx(p, stream);
        if (rc) return rc;
    }
    p->pf_planned = 1;
    return 0;
}

extern "C" int cp_cuda_prefill_pass_q(const cp_cuda_plan_t *p) { return p && p->pf_planned ? p->pass_q : 0; }

extern "C" int64_t cp_cuda_prefill_rows(const cp_cuda_plan_t *p, int64_t *pos) {
    if (!p || !p->pf_planned) return 0;
    if (pos)
        for (int i = 0; i < p->n_runs; i++)
            for (int64_t t = 0; t < p->runs[i].n; t++) pos[p->runs[i].row0 + t] = p->runs[i].p0 + t;
    return p->rows;
}

static int collect_timing(cp_cuda_plan_t *p) {
    CUDA_CHECK_RET(cudaEventSynchronize(p->ev[3 * p->n - 1]));
    for (int k = 0; k < p->n; k++) {
        CUDA_CHECK_RET(cudaEventElapsedTime(&p->step_c[k], p->ev[3 * k], p->ev[3 * k + 1]));
        CUDA_CHECK_RET(cudaEventElapsedTime(&p->step_w[k], p->ev[3 * k + 1], p->ev[3 * k + 2]));
        p->t.compute_s += p->step_c[k] * 1e-3;
        p->t.wait_s += p->step_w[k] * 1e-3;
    }
    if (p->pass_q || p->sparse) { // pass-Q's all-to-all and merge, or FlexPrefill's selection
        float ms = 0;
        CUDA_CHECK_RET(cudaEventSynchronize(p->ev[3 * CP_MAX_RANKS + 1]));
        CUDA_CHECK_RET(cudaEventElapsedTime(&ms, p->ev[3 * CP_MAX_RANKS], p->ev[3 * CP_MAX_RANKS + 1]));
        p->t.collective_s += ms * 1e-3;
    }
    p->timed = 1;
    return 0;
}

// Pass-Q: the query rows go round the ring (to rank + 1, the next step's
// on their way during this step's compute, double-buffered); step k attends
// the rows of rank visitor(r, k) to this rank's blocks into their partials;
// then an all-to-all, and each rank merges its rows' N partials in rank order.
static int run_pass_q(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                      float *lse) {
    const int n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    const size_t rowb = (size_t)H * D * 2;
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    for (int s = 0; s < n; s++) {
        const int org = cp_ring_visitor(r, s, n);
        const char *cur = s == 0 ? (const char *)q : (const char *)p->qrecv[(s - 1) & 1];
        cp_req_t rq = {-1};
        if (s < n - 1 && (rc = cp_sendrecv_start(c, cur, (size_t)p->q_rows[org] * rowb, nxt, p->qrecv[s & 1],
                                                 (size_t)p->q_rows[cp_ring_visitor(r, s + 1, n)] * rowb, prv, &rq)))
            return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s], st));
        const int64_t r0 = p->q_row0[s];
        if (r0 < p->q_rows[org]) {
            uint8_t *m = p->qpart + p->q_soff[org];
            attn_cuda_args_t a = {};
            a.q = cur + (size_t)r0 * rowb;
            a.out = m + (size_t)r0 * rowb;
            a.lse = (float *)(m + (size_t)p->q_rows[org] * rowb) + (size_t)r0 * H;
            a.k = k;
            a.v = v;
            if ((rc = attn_cuda_run(p->qsteps[s], &a, st))) return rc;
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 1], st));
        if (s < n - 1 && (rc = cp_wait(c, &rq))) return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 2], st));
        p->t.ring_steps++;
        p->t.steps_skipped += r0 >= p->q_rows[org];
        p->t.prefill_pairs += p->step_pairs[s];
    }
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS], st));
    if ((rc = cp_alltoallv(c, p->qpart, p->q_soff, p->q_sbytes, p->qpartin, p->q_roff, p->q_rbytes))) return rc;
    if (p->rows > 0) {
        passq_merge_kernel<<<warp_blocks(p->rows * H), 256, 0, st>>>(p->qpartin, p->q_rbytes[0], p->rows, H, D, p->src,
                                                                     n, (__nv_bfloat16 *)out, lse);
        CUDA_CHECK_RET(cudaGetLastError());
    }
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS + 1], st));
    return p->timing ? collect_timing(p) : 0;
}

extern "C" int cp_cuda_run_prefill(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q,
                                   void *out, float *lse) {
    if (!p || !c || !p->pf_planned || !k || !v || (p->rows > 0 && (!q || !out))) return LC_EINVAL;
    if (cp_comm_size(c) != p->n || cp_comm_rank(c) != p->rank) return LC_EINVAL;
    if (p->pass_q) return run_pass_q(p, c, k, v, q, out, lse);
    const int n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    const size_t vo = (size_t)p->maxp * p->page_bytes; // V's offset in a pack
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    // FlexPrefill: the whole mask (collective), the steps' masks, the pairs
    if (p->sparse) {
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS], st));
        if ((rc = attn_cuda_flex_dist_select(p->flex, q, k, p->gmask, ring_sum, c, st))) return rc;
        if (p->n_desc > 0) {
            step_mask_kernel<<<dim3(p->n_desc, H, p->max_desc_qb), 32, 0, st>>>(
                p->gmask, p->g_nqb, p->g_words, (const StepMask *)p->d_fx, p->d_fx, p->smask);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->n_qbs > 0) {
            own_pairs_kernel<<<1, 256, 0, st>>>(p->gmask, p->g_nqb, p->g_words, p->g_qb0, p->spos0, p->send,
                                                p->d_fx + p->fx_qbs, p->n_qbs, H, p->d_pairs);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS + 1], st));
    }
    // the own pack: K and V pages of the blocks this rank holds
    const int64_t own = p->pack_pages[r];
    if ((rc = gather_rows(p->pack[0], k, p->d_arena, own, p->page_bytes, st)) ||
        (rc = gather_rows((char *)p->pack[0] + vo, v, p->d_arena, own, p->page_bytes, st)))
        return rc;
    for (int s = 0; s < n; s++) {
        char *cur = (char *)p->pack[s & 1], *nx = (char *)p->pack[(s + 1) & 1];
        cp_req_t rk = {-1}, rv = {-1};
        if (s < n - 1) { // the next step's pack, on its way while this step computes
            const size_t sb = (size_t)p->pack_pages[cp_ring_visitor(r, s, n)] * p->page_bytes;
            const size_t rb = (size_t)p->pack_pages[cp_ring_visitor(r, s + 1, n)] * p->page_bytes;
            if ((rc = cp_sendrecv_start(c, cur, sb, nxt, nx, rb, prv, &rk)) ||
                (rc = cp_sendrecv_start(c, cur + vo, sb, nxt, nx + vo, rb, prv, &rv)))
                return rc;
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s], st));
        const int64_t r0 = p->step_row0[s];
        if (r0 < p->rows) {
            attn_cuda_args_t a = {(const char *)q + (size_t)r0 * H * D * 2,
                                  p->part_o + (size_t)r0 * H * D,
                                  p->part_lse + (size_t)r0 * H,
                                  cur,
                                  cur + vo,
                                  nullptr,
                                  0,
                                  0,
                                  p->sparse ? p->smask : nullptr,
                                  nullptr,
                                  p->sparse && s > 0};
            if ((rc = attn_cuda_run(p->steps[s], &a, st))) return rc;
        }
        if (p->rows > 0 && (r0 < p->rows || s == n - 1)) {
            ring_merge_kernel<<<warp_blocks(p->rows * H), 256, 0, st>>>(p->acc, p->run_lse, p->part_o, p->part_lse,
                                                                        p->rows, H, D, r0, s == 0, s == n - 1,
                                                                        (__nv_bfloat16 *)out, lse);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 1], st));
        if (s < n - 1 && ((rc = cp_wait(c, &rk)) || (rc = cp_wait(c, &rv)))) return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 2], st));
        p->t.ring_steps++;
        p->t.steps_skipped += r0 >= p->rows;
        if (!p->sparse) p->t.prefill_pairs += p->step_pairs[s];
    }
    return p->timing ? collect_timing(p) : 0;
}

extern "C" int cp_cuda_sparse_pairs(cp_cuda_plan_t *p, void *stream, double *pairs) {
    if (!p || !pairs) return LC_EINVAL;
    *pairs = 0;
    if (!p->d_pairs) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->h_pairs, p->d_pairs, sizeof(unsigned long long), cudaMemcpyDeviceToHost, st));
    CUDA_CHECK_RET(cudaStreamSynchronize(st));
    *pairs = (double)*p->h_pairs;
    return 0;
}

// ---- decode -------------------------------------------------------------------------------
// Quest and TidalDecode: every row on every rank (its partial may be empty):
// each row's query from its owner, every rank's partial of row s at row s;
// the whole page tables with this rank's pages flagged. Returns the batch
// (every row, its whole page table) the distributed plans take.
static attn_cuda_batch_t plan_all_rows(cp_cuda_plan_t *p, const cp_cuda_dec_batch_t *b) {
    const int n = b->n_seqs, N = p->n;
    int32_t *tsel = p->h_arena + p->off_t_sel, *tcidx = p->h_arena + p->off_t_cidx;
    for (int s = 0; s < n; s++) {
        tsel[s] = (int32_t)(p->dec_row_owner[s] * n + s);
        for (int i = 0; i < N; i++) tcidx[(size_t)i * n + s] = s;
    }
    for (int64_t i = 0; i < b->blk_indptr[n]; i++) p->h_held_pages[i] = b->owner[i] == p->rank;
    return attn_cuda_batch_t{n, nullptr, b->blk_indptr, b->blocks, b->kv_len, nullptr, nullptr};
}

extern "C" int cp_cuda_plan_decode(cp_cuda_plan_t *p, const cp_cuda_dec_batch_t *b, void *stream) {
    if (!p || !b || !p->dec || b->n_seqs < 1 || !b->kv_len || !b->blk_indptr || !b->blocks || !b->owner)
        return LC_EINVAL;
    p->dec_planned = 0;
    p->dec_quest = p->dec_tidal = 0;
    if ((b->budget && !p->quest) || (b->tidal && !p->tidal)) return LC_ERANGE;
    if (b->budget && b->tidal) return LC_EINVAL;
    const int n = b->n_seqs, N = p->n, r = p->rank, ps = p->shape.page_size;
    if (n > p->lim.max_decode_seqs) return LC_ERANGE;
    if (b->blk_indptr[0] != 0) return LC_EINVAL;
    for (int s = 0; s < n; s++) {
        const int64_t nb = (int64_t)b->blk_indptr[s + 1] - b->blk_indptr[s];
        if (b->kv_len[s] < 1 || nb * ps < b->kv_len[s]) return LC_EINVAL;
        for (int64_t i = b->blk_indptr[s]; i < b->blk_indptr[s + 1]; i++)
            if (b->owner[i] >= N) return LC_EINVAL;
    }
    cudaStream_t st = (cudaStream_t)stream;
    if (p->up_dec_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_dec));
        p->up_dec_pending = 0;
    }
    int32_t *sel = p->h_arena + p->off_dec_sel, *cidx = p->h_arena + p->off_dec_cidx,
            *own = p->h_arena + p->off_dec_own;
    int32_t *ki = p->h_dec, *kl = p->h_dec + n + 1; // this rank's batch: kv_indptr, kv_len
    int m = 0, n_own = 0, count[CP_MAX_RANKS] = {0};
    int64_t pages = 0;
    double pairs = 0;
    ki[0] = 0;
    int rc = 0;
    for (int s = 0; s < n && !rc; s++) {
        const int32_t *bl = b->blocks + b->blk_indptr[s];
        const uint8_t *ow = b->owner + b->blk_indptr[s];
        const int64_t nb = (b->kv_len[s] + ps - 1) / ps;
        p->dec_row_owner[s] = ow[nb - 1];
        if (ow[nb - 1] == r) own[n_own++] = s;
        uint8_t holds[CP_MAX_RANKS] = {0};
        for (int64_t i = 0; i < nb; i++) holds[ow[i]] = 1;
        for (int i = 0; i < N; i++) cidx[(size_t)i * n + s] = holds[i] ? count[i]++ : -1;
        if (!holds[r]) continue;
        const int64_t keys = cp_ring_keys(ow, nb, ps, b->kv_len[s], r);
        for (int64_t i = 0; i < nb && !rc; i++) {
            if (ow[i] != r) continue;
            if (bl[i] < 0 || bl[i] >= p->shape.n_pool_pages)
                rc = LC_EINVAL;
            else if (pages >= p->lim.max_decode_pages)
                rc = LC_ERANGE;
            else
                p->h_idx[pages++] = bl[i];
        }
        sel[m] = (int32_t)(ow[nb - 1] * n + s);
        kl[m] = (int32_t)keys;
        ki[m + 1] = (int32_t)pages;
        pairs += (double)keys * p->shape.n_heads;
        m++;
    }
    if (!rc && b->budget) {
        // Quest instead of the dense plan
        for (int s = 0; s < n; s++)
            if (b->budget[s] < 0) return LC_EINVAL;
        const attn_cuda_batch_t bt = plan_all_rows(p, b);
        size_t ws = 0;
        rc = attn_quest_dist_plan(p->quest, &bt, b->budget, p->h_held_pages, stream, &ws);
        if (!rc && ws > p->quest_ws_cap) rc = LC_ERANGE;
        p->dec_quest = 1;
        pairs = 0; // what each rank attends is chosen on the device: not counted
    } else if (!rc && m > 0) {
        attn_cuda_batch_t bt = {m, nullptr, ki, p->h_idx, kl, nullptr, nullptr};
        rc = attn_cuda_plan(p->dec, &bt, stream, &p->dec_ws_bytes);
        if (!rc && p->dec_ws_bytes > p->dec_ws_cap) rc = LC_ERANGE;
    }
    if (!rc && b->tidal) { // TidalDecode beside the dense plan (its selection layers)
        const attn_cuda_batch_t bt = plan_all_rows(p, b);
        size_t ws = 0;
        rc = attn_tidal_dist_plan(p->tidal, &bt, b->tidal, p->h_held_pages, stream, &ws);
        if (!rc && ws > p->tidal_ws_cap) rc = LC_ERANGE;
        p->dec_tidal = 1;
    }
    if (rc) return rc;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena + p->off_dec_sel, sel,
                                   sizeof(int32_t) * (p->off_t_cidx + (size_t)N * n - p->off_dec_sel),
                                   cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->up_dec, st));
    p->up_dec_pending = 1;
    p->dec_n = n;
    p->dec_m = m;
    p->dec_n_own = n_own;
    p->dec_pairs = pairs;
    p->dec_planned = 1;
    return 0;
}

extern "C" int cp_cuda_decode_owner(const cp_cuda_plan_t *p, int s) {
    return p && p->dec_planned && s >= 0 && s < p->dec_n ? p->dec_row_owner[s] : -1;
}

// The decode's end: every rank's partials (dmsg) to every rank, and each
// owner's rows merged from them in rank order (the partial rows at cidx).
static int merge_partials(cp_cuda_plan_t *p, cp_comm_t *c, size_t off_cidx, void *out, float *lse) {
    const int n = p->dec_n, H = p->shape.n_heads, D = p->shape.head_dim;
    const size_t msg = (size_t)n * H * (D * 2 + sizeof(float));
    int rc = cp_allgather(c, p->dmsg, msg, p->dgath);
    if (rc) return rc;
    if (p->dec_n_own > 0) {
        dec_merge_kernel<<<warp_blocks((int64_t)p->dec_n_own * H), 256, 0, (cudaStream_t)cp_comm_stream(c)>>>(
            (const uint8_t *)p->dgath, msg, p->d_arena + off_cidx, p->d_arena + p->off_dec_own, p->dec_n_own, n, p->n,
            H, D, (__nv_bfloat16 *)out, lse);
        CUDA_CHECK_RET(cudaGetLastError());
    }
    return 0;
}

extern "C" int cp_cuda_run_decode(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q,
                                  void *out, float *lse) {
    return cp_cuda_run_decode_kv(p, c, k, v, nullptr, nullptr, q, out, lse);
}

extern "C" int cp_cuda_run_decode_kv(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const float *kmin,
                                     const float *kmax, const void *q, void *out, float *lse) {
    if (!p || !c || !p->dec_planned || !k || !v || !q || !out || (p->dec_quest && (!kmin || !kmax))) return LC_EINVAL;
    if (cp_comm_size(c) != p->n || cp_comm_rank(c) != p->rank) return LC_EINVAL;
    const int n = p->dec_n, H = p->shape.n_heads, D = p->shape.head_dim;
    const size_t qrow = (size_t)H * D * 2;
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    // every rank's queries; the rows this rank attends picked from their owners'
    if ((rc = cp_allgather(c, q, (size_t)n * qrow, p->dq_all))) return rc;
    if (p->dec_quest) { // every row
        if ((rc = gather_rows(p->dq_c, p->dq_all, p->d_arena + p->off_t_sel, n, qrow, st))) return rc;
        attn_quest_args_t a = {p->dq_c, p->dmsg,     (float *)((char *)p->dmsg + (size_t)n * qrow),
                               k,       v,           kmin,
                               kmax,    p->quest_ws, p->quest_ws_cap};
        if ((rc = attn_quest_dist_run(p->quest, &a, ring_sum, c, st))) return rc;
    } else if (p->dec_m > 0) { // the rows this rank holds keys of
        if ((rc = gather_rows(p->dq_c, p->dq_all, p->d_arena + p->off_dec_sel, p->dec_m, qrow, st))) return rc;
        attn_cuda_args_t a = {
            p->dq_c, p->dmsg, (float *)((char *)p->dmsg + (size_t)n * qrow), k, v, p->dec_ws, p->dec_ws_cap, 0,
            nullptr, nullptr};
        if ((rc = attn_cuda_run(p->dec, &a, st))) return rc;
    }
    if ((rc = merge_partials(p, c, p->dec_quest ? p->off_t_cidx : p->off_dec_cidx, out, lse))) return rc;
    p->t.decode_pairs += p->dec_pairs;
    return 0;
}

// Every own row's LSE (rows s of the table) into the caller's.
__global__ void copy_own_lse_kernel(const float *all, const int32_t *own, int n_own, int n_heads, float *lse) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_own * n_heads; i += gridDim.x * blockDim.x) {
        const size_t x = (size_t)own[i / n_heads] * n_heads + i % n_heads;
        lse[x] = all[x];
    }
}

extern "C" int cp_cuda_run_decode_tidal(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q,
                                        void *out, float *lse, int select) {
    if (!p || !c || !p->dec_planned || !p->dec_tidal || !k || !v || !q || !out) return LC_EINVAL;
    if (cp_comm_size(c) != p->n || cp_comm_rank(c) != p->rank) return LC_EINVAL;
    const int n = p->dec_n, H = p->shape.n_heads, D = p->shape.head_dim;
    const size_t qrow = (size_t)H * D * 2;
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    if (select) {
        // the dense layer, every row's LSE on every rank (owners fill the table), the selection
        CUDA_CHECK_RET(cudaMemsetAsync(p->d_glse, 0, sizeof(float) * (size_t)n * H, st));
        if ((rc = cp_cuda_run_decode(p, c, k, v, q, out, p->d_glse)) || (rc = ring_sum(c, p->d_glse, (size_t)n * H)))
            return rc;
        if (lse && p->dec_n_own > 0) {
            copy_own_lse_kernel<<<8, 256, 0, st>>>(p->d_glse, p->d_arena + p->off_dec_own, p->dec_n_own, H, lse);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if ((rc = gather_rows(p->dq_c, p->dq_all, p->d_arena + p->off_t_sel, n, qrow, st))) return rc;
        attn_tidal_select_args_t a = {p->dq_c, k, p->d_glse, p->tidal_ws, p->tidal_ws_cap};
        return attn_tidal_dist_select(p->tidal, &a, ring_sum, c, st);
    }
    // a later layer: each rank's share of the selection, merged on the row's owner
    if ((rc = cp_allgather(c, q, (size_t)n * qrow, p->dq_all))) return rc;
    if ((rc = gather_rows(p->dq_c, p->dq_all, p->d_arena + p->off_t_sel, n, qrow, st))) return rc;
    attn_tidal_attend_args_t a = {p->dq_c,     p->dmsg,        (float *)((char *)p->dmsg + (size_t)n * qrow), k, v,
                                  p->tidal_ws, p->tidal_ws_cap};
    if ((rc = attn_tidal_attend(p->tidal, &a, st))) return rc;
    return merge_partials(p, c, p->off_t_cidx, out, lse);
}

// ---- timing -------------------------------------------------------------------------------
extern "C" void cp_cuda_plan_timing_enable(cp_cuda_plan_t *p, int on) {
    if (p) p->timing = on != 0;
}
extern "C" const cp_timing_t *cp_cuda_plan_timing(const cp_cuda_plan_t *p) { return p ? &p->t : nullptr; }
extern "C" int cp_cuda_step_ms(const cp_cuda_plan_t *p, int k, float *compute_ms, float *wait_ms) {
    if (!p || !p->timed || k < 0 || k >= p->n) return -1;
    if (compute_ms) *compute_ms = p->step_c[k];
    if (wait_ms) *wait_ms = p->step_w[k];
    return 0;
}
