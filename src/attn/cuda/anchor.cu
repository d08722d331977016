/* AnchorAttention's prefill on the GPU, host side: the workspace carved at
 * create, the plan (checks, the selecting sequences' page tables and the
 * anchor pass's dense plan over them) and the per-layer run (anchor_cuda.h
 * says what each pass computes; anchor_kern.cu holds the selection kernels,
 * gather.cu the sparse attention, the dense prefill kernels the anchor pass). */
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/anchor.cuh"
#include "attn/cuda/anchor_cuda.h"
#include "attn/cuda/gather_cuda.h"
#include "ops/cuda/cuda_check.cuh"

namespace {

size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

} // namespace

struct attn_cuda_anchor {
    attn_cuda_shape_t sh;
    int max_seqs, min_local;
    int64_t max_q_rows, max_kv_len, max_blk, max_grp, pages_cap, wcap, fwcap;
    size_t mask_cap;      // words of block masks
    attn_cuda_plan_t *pf; // the anchor pass: the dense prefill kernel on block masks

    // the planned step (host)
    AncSeq *seqs; // (max_seqs)
    int n_plan;
    int contiguous; // the selecting sequences' rows are one run of the batch, in order: no query copy
    int64_t n_rows; // their rows
    int32_t *h_qi, *h_ki, *h_kl, *h_mo; // (max_seqs + 1) the anchor pass's batch
    int32_t *h_bidx;                    // (max_seqs) pinned
    int32_t *h_pages, *d_pages, *d_bidx;
    cudaEvent_t uploaded; // the last upload from h_pages / h_bidx
    int upload_pending;

    // device workspace, one allocation
    void *ws;
    __nv_bfloat16 *qc, *o1;      // (max_q_rows, H, D) compacted queries, anchor pass output
    float *lse1, *rowmax, *lse2; // (max_q_rows, H)
    float *o2;                   // (max_q_rows, H, D) stripes (and own keys) output, compacted rows
    float *o3, *lse3;    // (kOwnSplit, 256, H, D), (kOwnSplit, 256, H) own-key output of the tail blocks, by part
    __nv_bfloat16 *qbar; // (H, max_blk, 2, D) bf16 hi, lo
    float *abar;         // (H, max_blk)
    uint32_t *keep_bits, *own_bits, *mask;
    int32_t *keep_list, *own_list, *keep_cnt, *own_cnt;
    __nv_bfloat16 *o4;             // (max_q_rows, H, D) the whole kept blocks' pass (dense kernel, mask_only)
    float *lse4;                   // (max_q_rows, H)
    uint32_t *full_bits, *mask2;   // (H, max_grp, fwcap) whole kept blocks; their block masks (mask's layout)
    int32_t *full_cnt;             // (H, max_grp)
    unsigned long long *seq_pairs; // (max_seqs)
    double *probe_part;            // (H, max_grp, max_kv_len / kProbeKeys + 1, 128, 2) the probe's split sums

    // the dist API (attn_cuda_anchor_dist_reserve): one sequence, a rank's share of it
    int dist;            // the planned step is a dist plan
    int dist_ranks;      // reserved for this many ranks (0: none)
    uint8_t *h_held;     // pinned (max_kv_len / 128 + 2): the held blocks, uploaded with the plan
    uint8_t *d_held;     // their device copy (AncSeq.held)
    int32_t *h_dpages;   // (pages_cap) the page table with 0 for the blocks held elsewhere
    void *gsend, *grecv; // the all-gathers' send and receive buffers
    float *glse;         // (max_q_rows, H) every row's LSE over its windows, all ranks
    double *prow;        // (H, max_grp, 128, 2) this rank's probe sums by row
};

extern "C" int attn_cuda_anchor_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows,
                                       int64_t max_kv_len, int min_local, attn_cuda_anchor_t **out) {
    if (!shape || !out || max_seqs <= 0 || max_q_rows <= 0 || max_kv_len <= 0 || min_local < kAncB ||
        min_local % kAncB || shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->n_heads % shape->n_kv_heads ||
        shape->n_pool_pages <= 0 || !(shape->scale > 0.f) || !isfinite(shape->scale))
        return LC_EINVAL;
    *out = NULL;
    if ((shape->head_dim != 64 && shape->head_dim != 128 && shape->head_dim != 256) ||
        (shape->page_size != 64 && shape->page_size != 128) || shape->n_heads > 65535)
        return LC_EUNSUPPORTED;
    if (max_kv_len > INT32_MAX / 2 || max_q_rows > INT32_MAX / 2) return LC_ERANGE;
    attn_cuda_anchor_t *a = (attn_cuda_anchor_t *)calloc(1, sizeof *a);
    if (!a) return LC_ENOMEM;
    const int H = shape->n_heads, D = shape->head_dim;
    const size_t R = (size_t)max_q_rows, N = (size_t)max_kv_len;
    int rc = LC_ENOMEM;
    a->sh = *shape;
    a->max_seqs = max_seqs;
    a->min_local = min_local;
    a->max_q_rows = max_q_rows;
    a->max_kv_len = max_kv_len;
    a->max_blk = max_q_rows / kAncB + 2; // a chunk spans at most this many blocks
    a->max_grp = max_q_rows / min_local + 2;
    a->pages_cap = (int64_t)max_seqs * ((max_kv_len + shape->page_size - 1) / shape->page_size);
    a->wcap = max_kv_len / 32 + 1;
    a->fwcap = (max_kv_len / kAncB + 32) / 32 + 1;
    a->mask_cap = (size_t)H * (size_t)(max_q_rows / kAncB + 2 * (int64_t)max_seqs) *
                  (size_t)(((max_kv_len - 1) / kAncB + 1 + 31) / 32);
    if (a->pages_cap > INT32_MAX) {
        free(a);
        return LC_ERANGE;
    }
    {
        const attn_cuda_limits_t lim = {max_seqs, max_q_rows, a->pages_cap, 0};
        if ((rc = attn_cuda_plan_create(shape, ATTN_CUDA_PREFILL, &lim, &a->pf))) goto fail;
        rc = LC_ENOMEM;
    }
    a->seqs = (AncSeq *)calloc((size_t)max_seqs, sizeof *a->seqs);
    a->h_qi = (int32_t *)calloc((size_t)max_seqs + 1, sizeof(int32_t));
    a->h_ki = (int32_t *)calloc((size_t)max_seqs + 1, sizeof(int32_t));
    a->h_kl = (int32_t *)calloc((size_t)max_seqs + 1, sizeof(int32_t));
    a->h_mo = (int32_t *)calloc((size_t)max_seqs + 1, sizeof(int32_t));
    if (!a->seqs || !a->h_qi || !a->h_ki || !a->h_kl || !a->h_mo) goto fail;
    if (cudaMallocHost((void **)&a->h_pages, sizeof(int32_t) * a->pages_cap) != cudaSuccess) goto fail;
    if (cudaMallocHost((void **)&a->h_bidx, sizeof(int32_t) * max_seqs) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->d_pages, sizeof(int32_t) * a->pages_cap) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->d_bidx, sizeof(int32_t) * max_seqs) != cudaSuccess) goto fail;
    if (cudaEventCreateWithFlags(&a->uploaded, cudaEventDisableTiming) != cudaSuccess) {
        rc = LC_EDEVICE;
        goto fail;
    }
    {
        const size_t G = (size_t)a->max_grp, B = (size_t)a->max_blk, W = (size_t)a->wcap;
        const size_t sizes[] = {
            2 * R * H * D,                                                              // qc
            2 * R * H * D,                                                              // o1
            sizeof(float) * R * H,                                                      // lse1
            sizeof(float) * R * H,                                                      // rowmax
            sizeof(float) * R * H,                                                      // lse2
            sizeof(float) * R * H * D,                                                  // o2
            sizeof(float) * kOwnSplit * 2 * kAncB * H * D,                              // o3
            sizeof(float) * kOwnSplit * 2 * kAncB * H,                                  // lse3
            2 * 2 * H * B * D,                                                          // qbar (bf16 hi, lo)
            sizeof(float) * H * B,                                                      // abar
            sizeof(uint32_t) * H * G * W,                                               // keep_bits
            sizeof(uint32_t) * H * 2 * W,                                               // own_bits
            sizeof(uint32_t) * a->mask_cap,                                             // mask
            sizeof(int32_t) * H * G * N,                                                // keep_list
            sizeof(int32_t) * H * 2 * N,                                                // own_list
            sizeof(int32_t) * H * G,                                                    // keep_cnt
            sizeof(int32_t) * H * 2,                                                    // own_cnt
            sizeof(unsigned long long) * max_seqs,                                      // seq_pairs
            2 * R * H * D,                                                              // o4
            sizeof(float) * R * H,                                                      // lse4
            sizeof(uint32_t) * H * G * a->fwcap,                                        // full_bits
            sizeof(uint32_t) * a->mask_cap,                                             // mask2
            sizeof(int32_t) * H * G,                                                    // full_cnt
            sizeof(double) * 2 * kAncB * H * G * (size_t)(max_kv_len / kProbeKeys + 1), // probe_part
        };
        const int n_parts = (int)(sizeof sizes / sizeof sizes[0]);
        size_t total = 0;
        for (int i = 0; i < n_parts; i++) total += align256(sizes[i]);
        if (cudaMalloc(&a->ws, total) != cudaSuccess) goto fail;
        char *w = (char *)a->ws;
        void *parts[sizeof sizes / sizeof sizes[0]];
        for (int i = 0; i < n_parts; i++) {
            parts[i] = w;
            w += align256(sizes[i]);
        }
        a->qc = (__nv_bfloat16 *)parts[0];
        a->o1 = (__nv_bfloat16 *)parts[1];
        a->lse1 = (float *)parts[2];
        a->rowmax = (float *)parts[3];
        a->lse2 = (float *)parts[4];
        a->o2 = (float *)parts[5];
        a->o3 = (float *)parts[6];
        a->lse3 = (float *)parts[7];
        a->qbar = (__nv_bfloat16 *)parts[8];
        a->abar = (float *)parts[9];
        a->keep_bits = (uint32_t *)parts[10];
        a->own_bits = (uint32_t *)parts[11];
        a->mask = (uint32_t *)parts[12];
        a->keep_list = (int32_t *)parts[13];
        a->own_list = (int32_t *)parts[14];
        a->keep_cnt = (int32_t *)parts[15];
        a->own_cnt = (int32_t *)parts[16];
        a->seq_pairs = (unsigned long long *)parts[17];
        a->o4 = (__nv_bfloat16 *)parts[18];
        a->lse4 = (float *)parts[19];
        a->full_bits = (uint32_t *)parts[20];
        a->mask2 = (uint32_t *)parts[21];
        a->full_cnt = (int32_t *)parts[22];
        a->probe_part = (double *)parts[23];
    }
    *out = a;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the sticky-free last error
    attn_cuda_anchor_destroy(a);
    return rc;
}

extern "C" void attn_cuda_anchor_destroy(attn_cuda_anchor_t *a) {
    if (!a) return;
    if (a->uploaded) {
        cudaEventSynchronize(a->uploaded);
        cudaEventDestroy(a->uploaded);
    }
    attn_cuda_plan_destroy(a->pf);
    cudaFreeHost(a->h_pages);
    cudaFreeHost(a->h_bidx);
    cudaFreeHost(a->h_held);
    cudaFree(a->d_held);
    cudaFree(a->gsend);
    cudaFree(a->grecv);
    cudaFree(a->glse);
    cudaFree(a->prow);
    free(a->h_dpages);
    cudaFree(a->d_pages);
    cudaFree(a->d_bidx);
    cudaFree(a->ws);
    free(a->seqs);
    free(a->h_qi);
    free(a->h_ki);
    free(a->h_kl);
    free(a->h_mo);
    free(a);
}

static int anchor_plan(attn_cuda_anchor_t *a, const attn_cuda_batch_t *b, const uint8_t *selects,
                       const attn_cuda_anchor_policy_t *pol, void *stream) {
    if (!b || !b->q_indptr || !b->kv_indptr || !b->kv_indices || !b->kv_len || !selects || !pol || b->n_seqs < 0)
        return LC_EINVAL;
    if (b->n_seqs > a->max_seqs) return LC_ERANGE;
    const int ps = a->sh.page_size, H = a->sh.n_heads;
    // The pinned tables may still be the source of the previous step's upload.
    if (a->upload_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(a->uploaded));
        a->upload_pending = 0;
    }
    int64_t np = 0, rows = 0;
    size_t mo = 0;
    a->n_plan = 0;
    a->contiguous = 1;
    a->h_qi[0] = a->h_ki[0] = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const int n_q = b->q_indptr[s + 1] - b->q_indptr[s], N = b->kv_len[s];
        if (!selects[s] || n_q == 0) continue;
        const attn_cuda_anchor_policy_t *pp = &pol[s];
        if (n_q < 0 || N < n_q || pp->anchor_init < 0 || pp->anchor_init % kAncB || pp->anchor_local % kAncB ||
            pp->anchor_lookback < 0 || pp->anchor_lookback % kAncB || isnan(pp->theta) || !(pp->probe >= 0))
            return LC_EINVAL;
        if (pp->anchor_local < a->min_local || n_q > a->max_q_rows || N > a->max_kv_len) return LC_ERANGE;
        if (rows + n_q > a->max_q_rows) return LC_ERANGE;
        const int need = (N + ps - 1) / ps;
        if (b->kv_indptr[s + 1] - b->kv_indptr[s] < need) return LC_EINVAL;
        for (int i = 0; i < need; i++) {
            const int32_t pg = b->kv_indices[b->kv_indptr[s] + i];
            if (pg < 0 || pg >= a->sh.n_pool_pages) return LC_EINVAL;
            a->h_pages[np + i] = pg;
        }
        const size_t words = attn_cuda_mask_words(n_q, N, H);
        if (mo + words > a->mask_cap) return LC_ERANGE;
        const int i = a->n_plan++;
        AncSeq *sq = &a->seqs[i];
        sq->pages = a->d_pages + np;
        sq->qrow0 = b->q_indptr[s];
        sq->crow0 = rows;
        sq->N = N;
        sq->n_q = n_q;
        sq->q_pos0 = N - n_q;
        sq->qb0 = sq->q_pos0 / kAncB;
        sq->nqb = (N - 1) / kAncB - sq->qb0 + 1;
        sq->A = pp->anchor_init;
        sq->L = pp->anchor_local;
        sq->LB = pp->anchor_lookback;
        sq->g_first = sq->q_pos0 / sq->L;
        sq->ng = (N - 1) / sq->L - sq->g_first + 1;
        sq->theta = pp->theta;
        sq->probe = pp->probe;
        sq->mask_off = mo;
        sq->bidx = s;
        sq->held = NULL;
        {
            // the tail blocks: those holding the chunk's last 128 rows in the last group
            const int g_last0 = (sq->g_first + sq->ng - 1) * sq->L, last_b = (N - 1) / kAncB;
            int p0 = N - kAncB;
            if (p0 < sq->q_pos0) p0 = sq->q_pos0;
            if (p0 < g_last0) p0 = g_last0;
            const int b0 = p0 / kAncB;
            sq->own_b0 = b0;
            sq->n_ob = anc_lo(*sq, g_last0) > sq->A && !(isinf(pp->theta) && pp->theta > 0) ? last_b - b0 + 1 : 0;
        }
        if (sq->qrow0 != a->seqs[0].qrow0 + rows) a->contiguous = 0;
        a->h_bidx[i] = s;
        a->h_qi[i + 1] = (int32_t)(rows + n_q);
        a->h_ki[i + 1] = (int32_t)(np + need);
        a->h_kl[i] = N;
        a->h_mo[i] = (int32_t)mo;
        np += need;
        rows += n_q;
        mo += words;
    }
    a->n_rows = rows;
    if (mo > INT32_MAX) return LC_ERANGE;
    if (a->n_plan == 0) return 0;
    // In stream order: the previous step's kernels have read the tables before these copies land.
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(a->d_pages, a->h_pages, sizeof(int32_t) * np, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaMemcpyAsync(a->d_bidx, a->h_bidx, sizeof(int32_t) * a->n_plan, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(a->uploaded, st));
    a->upload_pending = 1;
    const attn_cuda_batch_t ab = {a->n_plan, a->h_qi, a->h_ki, a->h_pages, a->h_kl, a->h_mo};
    size_t ws = 0;
    return attn_cuda_plan(a->pf, &ab, stream, &ws); // prefill: no workspace
}

extern "C" int attn_cuda_anchor_plan(attn_cuda_anchor_t *a, const attn_cuda_batch_t *b, const uint8_t *selects,
                                     const attn_cuda_anchor_policy_t *pol, void *stream) {
    if (!a) return LC_EINVAL;
    a->dist = 0;
    const int rc = anchor_plan(a, b, selects, pol, stream);
    if (rc) a->n_plan = 0; // a failed plan leaves nothing to run
    return rc;
}

namespace {

// Rows [pos0, N) of sequence sq (queries q, from pos0) over key lists:
// n_lists per head, list i for the rows of positions [group (g_first + i),
// group (g_first + i + 1)) (gather_cuda.h).
int gather(const attn_cuda_anchor_t *a, const AncSeq &sq, const __nv_bfloat16 *q, const void *k, const void *v,
           const int32_t *list, const int32_t *count, int n_lists, int pos0, int group, int g_first, int n_split,
           float *out, float *lse, cudaStream_t st) {
    attn_cuda_gather_args_t g = {};
    g.q = q;
    g.k = k;
    g.v = v;
    g.pages = sq.pages;
    g.list = list;
    g.count = count;
    g.list_stride = a->max_kv_len;
    g.n_lists = n_lists;
    g.n_rows = sq.N - pos0;
    g.pos0 = pos0;
    g.group = group;
    g.g_first = g_first;
    g.out = out;
    g.lse = lse;
    g.n_split = n_split;
    g.split_len = kOwnMinPart;
    return attn_cuda_gather(&a->sh, &g, st);
}

// The selection's workspace views (the per-sequence q, rowmax, lse1 set by the caller).
AncWork work(const attn_cuda_anchor_t *a) {
    AncWork w;
    memset(&w, 0, sizeof w);
    w.qbar = a->qbar;
    w.abar = a->abar;
    w.max_blk = (int)a->max_blk;
    w.keep_bits = a->keep_bits;
    w.own_bits = a->own_bits;
    w.wcap = a->wcap;
    w.keep_list = a->keep_list;
    w.own_list = a->own_list;
    w.keep_cnt = a->keep_cnt;
    w.own_cnt = a->own_cnt;
    w.max_kv = a->max_kv_len;
    w.full_bits = a->full_bits;
    w.fwcap = a->fwcap;
    w.full_cnt = a->full_cnt;
    w.mask2 = a->mask2;
    w.probe_part = a->probe_part;
    w.mask1 = a->mask;
    return w;
}

// Step 1 of every planned sequence: their block masks, then the dense kernel
// on them (mask_only: 0, or 2 for a rank's share) into o1, lse1 and rowmax;
// *da keeps the call for the whole blocks' pass.
int anchor_pass(const attn_cuda_anchor_t *a, const __nv_bfloat16 *q, const void *k, const void *v, int mask_only,
                attn_cuda_args_t *da, cudaStream_t st) {
    int rc;
    for (int i = 0; i < a->n_plan; i++)
        if ((rc = anc_mask_launch(a->seqs[i], a->sh.n_heads, a->mask, st))) return rc;
    memset(da, 0, sizeof *da);
    da->q = q;
    da->out = a->o1;
    da->lse = a->lse1;
    da->rowmax = a->rowmax;
    da->k = k;
    da->v = v;
    da->block_mask = a->mask;
    da->mask_only = mask_only;
    return attn_cuda_run(a->pf, da, st);
}

// Step 5: the anchor pass's call (da) again on the whole kept blocks' masks,
// their set bits only, into o4 and lse4.
int whole_blocks(const attn_cuda_anchor_t *a, attn_cuda_args_t *da, cudaStream_t st) {
    da->out = a->o4;
    da->lse = a->lse4;
    da->rowmax = NULL;
    da->block_mask = a->mask2;
    da->mask_only = 1;
    return attn_cuda_run(a->pf, da, st);
}

// Steps 3 and 4 of one sequence (anchor_cuda.h): its rows over its group's
// stripes into (o2, lse2), then the tail blocks' own keys folded in.
int sparse_passes(const attn_cuda_anchor_t *a, const AncSeq &sq, const __nv_bfloat16 *q, const void *k, const void *v,
                  float *o2, float *lse2, cudaStream_t st) {
    const int H = a->sh.n_heads, D = a->sh.head_dim;
    const size_t HD = (size_t)H * D;
    int rc;
    if ((rc = gather(a, sq, q, k, v, a->keep_list, a->keep_cnt, sq.ng, sq.q_pos0, sq.L, sq.g_first, 1, o2, lse2, st)))
        return rc;
    // the tail blocks' own keys, a list per block, folded into the stripes' rows: few rows, long lists, so
    // each list runs in kOwnSplit parts
    const int own_p0 = anc_own_p0(sq);
    if (sq.n_ob > 0) {
        if ((rc = gather(a, sq, q + (size_t)(own_p0 - sq.q_pos0) * HD, k, v, a->own_list, a->own_cnt, 2, own_p0, kAncB,
                         sq.own_b0, kOwnSplit, a->o3, a->lse3, st)))
            return rc;
        if ((rc = anc_own_merge_launch(sq, H, D, o2, lse2, a->o3, a->lse3, own_p0 - sq.q_pos0, st))) return rc;
    }
    return 0;
}

template <int D>
int anc_run(const attn_cuda_anchor_t *a, const __nv_bfloat16 *q, const void *k, const void *v, __nv_bfloat16 *out,
            float *lse, cudaStream_t st) {
    const int H = a->sh.n_heads;
    const size_t HD = (size_t)H * D;
    // 1. the anchor pass over the selecting sequences' rows, compacted unless they already are
    const __nv_bfloat16 *qs = a->qc;
    if (a->contiguous) {
        qs = q + (size_t)a->seqs[0].qrow0 * HD;
    } else {
        for (int i = 0; i < a->n_plan; i++) {
            const AncSeq &sq = a->seqs[i];
            CUDA_CHECK_RET(cudaMemcpyAsync(a->qc + sq.crow0 * HD, q + sq.qrow0 * HD,
                                           sizeof(__nv_bfloat16) * sq.n_q * HD, cudaMemcpyDeviceToDevice, st));
        }
    }
    attn_cuda_args_t da;
    int rc = anchor_pass(a, qs, k, v, 0, &da, st);
    if (rc) return rc;

    AncWork w = work(a);
    const __nv_bfloat16 *kb = (const __nv_bfloat16 *)k;
    for (int i = 0; i < a->n_plan; i++) { // one sequence at a time over the selection workspace
        const AncSeq &sq = a->seqs[i];
        w.q = qs + sq.crow0 * HD;
        w.rowmax = a->rowmax + sq.crow0 * H;
        w.lse1 = a->lse1 + sq.crow0 * H;
        float *o2 = a->o2 + sq.crow0 * HD, *lse2 = a->lse2 + sq.crow0 * H;
        // 2. stripes and own keys as ascending lists, whole kept blocks as block masks
        if ((rc = anc_select_launch(sq, a->sh, kb, w, st))) return rc;
        // 3, 4. every row over its group's stripes (but the whole blocks), the tail blocks' own keys
        if ((rc = sparse_passes(a, sq, w.q, k, v, o2, lse2, st))) return rc;
        if ((rc = anc_pairs_launch(sq, H, w, a->seq_pairs + i, st))) return rc;
    }
    // 5. the whole kept blocks of every sequence on the dense kernel (their set bits only)
    if ((rc = whole_blocks(a, &da, st))) return rc;
    // 6. merge by LSE
    for (int i = 0; i < a->n_plan; i++) {
        const AncSeq &sq = a->seqs[i];
        const size_t r0 = (size_t)sq.crow0;
        if ((rc = anc_merge_launch(sq, H, D, a->o1 + r0 * HD, a->lse1 + r0 * H, a->o2 + r0 * HD, a->lse2 + r0 * H,
                                   a->o4 + r0 * HD, a->lse4 + r0 * H, out, lse, st)))
            return rc;
    }
    return 0;
}

} // namespace

extern "C" int attn_cuda_anchor_run(const attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out,
                                    float *lse, void *stream) {
    if (!a || !q || !k || !v || !out || a->dist) return LC_EINVAL;
    if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) & 15) return LC_EINVAL;
    if (a->n_plan == 0) return 0;
    const __nv_bfloat16 *qb = (const __nv_bfloat16 *)q;
    __nv_bfloat16 *ob = (__nv_bfloat16 *)out;
    cudaStream_t st = (cudaStream_t)stream;
    switch (a->sh.head_dim) {
    case 256: return anc_run<256>(a, qb, k, v, ob, lse, st);
    case 128: return anc_run<128>(a, qb, k, v, ob, lse, st);
    default: return anc_run<64>(a, qb, k, v, ob, lse, st);
    }
}

// ---- the dist API ---------------------------------------------------------------------------

extern "C" int attn_cuda_anchor_dist_reserve(attn_cuda_anchor_t *a, int n_ranks) {
    if (!a || n_ranks < 1 || a->dist_ranks) return LC_EINVAL;
    const size_t H = (size_t)a->sh.n_heads, R = (size_t)a->max_q_rows, G = (size_t)a->max_grp;
    const size_t tab = sizeof(float) * 2 * R * H, probe = sizeof(double) * H * G * kAncB * 2;
    const size_t nkb = (size_t)(a->max_kv_len / kAncB + 2);
    if (cudaMallocHost((void **)&a->h_held, nkb) != cudaSuccess ||
        cudaMalloc((void **)&a->d_held, nkb) != cudaSuccess ||
        cudaMalloc(&a->gsend, tab > probe ? tab : probe) != cudaSuccess ||
        cudaMalloc(&a->grecv, (size_t)n_ranks * (tab > probe ? tab : probe)) != cudaSuccess ||
        cudaMalloc((void **)&a->glse, sizeof(float) * R * H) != cudaSuccess ||
        cudaMalloc((void **)&a->prow, probe) != cudaSuccess ||
        !(a->h_dpages = (int32_t *)malloc(sizeof(int32_t) * (size_t)a->pages_cap))) {
        cudaGetLastError();
        return LC_ENOMEM; // the buffers allocated stay for destroy
    }
    a->dist_ranks = n_ranks;
    return 0;
}

extern "C" int attn_cuda_anchor_dist_plan(attn_cuda_anchor_t *a, const attn_cuda_anchor_dist_seq_t *d, void *stream) {
    if (!a || !d || !d->pages || !d->held || d->n_q < 1 || d->kv_len < d->n_q) return LC_EINVAL;
    a->n_plan = 0;
    a->dist = 1;
    if (!a->dist_ranks) return LC_ERANGE;
    const int ps = a->sh.page_size;
    const int64_t nb = ((int64_t)d->kv_len + ps - 1) / ps, nkb = ((int64_t)d->kv_len - 1) / kAncB + 1;
    if (nb > a->pages_cap || d->kv_len > a->max_kv_len) return LC_ERANGE;
    if (a->upload_pending) { // h_held may still be the source of the last upload
        CUDA_CHECK_RET(cudaEventSynchronize(a->uploaded));
        a->upload_pending = 0;
    }
    for (int64_t b = 0; b < nb; b++) a->h_dpages[b] = d->held[b * ps / kAncB] ? d->pages[b] : 0;
    const int32_t qi[2] = {0, d->n_q}, ki[2] = {0, (int32_t)nb}, kl[1] = {d->kv_len};
    const uint8_t sel[1] = {1};
    const attn_cuda_batch_t b = {1, qi, ki, a->h_dpages, kl, NULL, NULL};
    int rc = anchor_plan(a, &b, sel, &d->pol, stream);
    if (rc || a->n_plan == 0) {
        a->n_plan = 0;
        return rc ? rc : LC_EINVAL;
    }
    CUDA_CHECK_RET(cudaEventSynchronize(a->uploaded)); // the plan's upload, before h_held changes under it
    memcpy(a->h_held, d->held, (size_t)nkb);
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(a->d_held, a->h_held, (size_t)nkb, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(a->uploaded, st));
    a->upload_pending = 1;
    a->seqs[0].held = a->d_held;
    return 0;
}

namespace {

template <int D>
int anc_dist_run(attn_cuda_anchor_t *a, const __nv_bfloat16 *q, const void *k, const void *v, __nv_bfloat16 *out,
                 float *lse, attn_cuda_allgather_fn gather_fn, void *ctx, cudaStream_t st) {
    const AncSeq &sq = a->seqs[0];
    const int H = a->sh.n_heads, n_ranks = a->dist_ranks;
    const int64_t n = (int64_t)sq.n_q * H;
    // 1. the anchor pass over the held window blocks, the diagonal where held
    attn_cuda_args_t da;
    int rc = anchor_pass(a, q, k, v, 2, &da, st);
    if (rc) return rc;
    // every row's anchor and window LSE over the ranks (the local lse1 stays for the merge)
    float *gs = (float *)a->gsend;
    CUDA_CHECK_RET(cudaMemcpyAsync(gs, a->rowmax, sizeof(float) * n, cudaMemcpyDeviceToDevice, st));
    CUDA_CHECK_RET(cudaMemcpyAsync(gs + n, a->lse1, sizeof(float) * n, cudaMemcpyDeviceToDevice, st));
    if ((rc = gather_fn(ctx, gs, sizeof(float) * 2 * n, a->grecv))) return rc;
    if ((rc = anc_fold_launch((const float *)a->grecv, n_ranks, n, a->rowmax, a->glse, st))) return rc;
    // 2. the selection on the held keys; the probe's sums over the ranks between its halves
    AncWork w = work(a);
    w.q = q;
    w.rowmax = a->rowmax;
    w.lse1 = a->glse;
    const bool probe = anc_probe_runs(sq);
    if ((rc = anc_select_part_launch(sq, a->sh, (const __nv_bfloat16 *)k, w, probe ? a->prow : nullptr, st))) return rc;
    const size_t pstride = (size_t)H * sq.ng * kAncB * 2; // doubles of one rank's table
    if (probe && (rc = gather_fn(ctx, a->prow, sizeof(double) * pstride, a->grecv))) return rc;
    if ((rc = anc_select_finish_launch(sq, H, w, probe ? (const double *)a->grecv : nullptr, n_ranks, pstride, st)))
        return rc;
    // 3, 4. stripes and own keys, held ones only
    if ((rc = sparse_passes(a, sq, q, k, v, a->o2, a->lse2, st))) return rc;
    if ((rc = anc_pairs_launch(sq, H, w, a->seq_pairs, st))) return rc;
    // 5. the held whole kept blocks
    if ((rc = whole_blocks(a, &da, st))) return rc;
    // 6. this rank's partial
    return anc_merge_launch(sq, H, D, a->o1, a->lse1, a->o2, a->lse2, a->o4, a->lse4, out, lse, st);
}

} // namespace

extern "C" int attn_cuda_anchor_dist_run(attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out,
                                         float *lse, attn_cuda_allgather_fn gather, void *ctx, void *stream) {
    if (!a || !q || !k || !v || !out || !lse || !gather || !a->dist || a->n_plan != 1) return LC_EINVAL;
    if (((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)out) & 15) return LC_EINVAL;
    const __nv_bfloat16 *qb = (const __nv_bfloat16 *)q;
    __nv_bfloat16 *ob = (__nv_bfloat16 *)out;
    cudaStream_t st = (cudaStream_t)stream;
    switch (a->sh.head_dim) {
    case 256: return anc_dist_run<256>(a, qb, k, v, ob, lse, gather, ctx, st);
    case 128: return anc_dist_run<128>(a, qb, k, v, ob, lse, gather, ctx, st);
    default: return anc_dist_run<64>(a, qb, k, v, ob, lse, gather, ctx, st);
    }
}

extern "C" int attn_cuda_anchor_pairs(const attn_cuda_anchor_t *a, unsigned long long *pairs, void *stream) {
    if (!a || !pairs) return LC_EINVAL;
    return anc_pairs_add_launch(a->seq_pairs, a->d_bidx, a->n_plan, pairs, (cudaStream_t)stream);
}

/* Key j's bit of a device bit set, words [w0, w1), ORed into flags (host) as bit. */
static int expand_bits(const uint32_t *dev, int64_t w0, int64_t w1, uint8_t *flags, uint8_t bit) {
    if (w1 <= w0) return 0;
    uint32_t *h = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(w1 - w0));
    if (!h) return LC_ENOMEM;
    if (cudaMemcpy(h, dev + w0, sizeof(uint32_t) * (size_t)(w1 - w0), cudaMemcpyDeviceToHost) != cudaSuccess) {
        free(h);
        CUDA_CHECK_RET(cudaGetLastError());
        return LC_EDEVICE;
    }
    for (int64_t w = w0; w < w1; w++)
        for (int b = 0; b < 32; b++)
            if ((h[w - w0] >> b) & 1u) flags[32 * w + b] |= bit;
    free(h);
    return 0;
}

extern "C" int attn_cuda_anchor_keys(const attn_cuda_anchor_t *a, int h, int gi, uint8_t *keep, uint8_t *own,
                                     void *stream) {
    if (!a || a->n_plan == 0 || !keep || !own || h < 0 || h >= a->sh.n_heads) return LC_EINVAL;
    const AncSeq *sq = &a->seqs[a->n_plan - 1];
    if (gi < 0 || gi >= sq->ng) return LC_EINVAL;
    const int g0 = (sq->g_first + gi) * sq->L;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    memset(keep, 0, (size_t)sq->N);
    memset(own, 0, (size_t)sq->N);
    const int lo = anc_lo(*sq, g0);
    if (lo <= sq->A) return 0; // no candidates: nothing was written
    int rc = expand_bits(a->keep_bits + ((size_t)h * sq->ng + gi) * a->wcap, sq->A / 32, lo / 32, keep, 1);
    for (int t = 0; !rc && g0 + sq->L >= sq->N && t < sq->n_ob; t++) // bit 1: the last block, 2: the one before
        rc = expand_bits(a->own_bits + ((size_t)h * 2 + t) * a->wcap, sq->A / 32, lo / 32, own,
                         sq->own_b0 + t == (sq->N - 1) / kAncB ? 1 : 2);
    return rc;
}
