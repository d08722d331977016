// The sharded decode on the GPU kernels (cp_cuda.h): dense, Quest and
// TidalDecode rows, each rank attending what it holds, the partials merged by
// LSE on the row's owner (ring_cuda.cu has the plan and the prefill rings).
#include "attn/cp/ring_cuda.cuh"

namespace {

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
    float acc[kMergeMaxD / 32] = {};
    float lr = -INFINITY;
    for (int i = 0; i < n_ranks; i++) {
        const int ci = cidx[(int64_t)i * n + s];
        if (ci < 0) continue;
        const uint8_t *m = gath + (size_t)i * msg_bytes;
        const __nv_bfloat16 *o = (const __nv_bfloat16 *)m + ((int64_t)ci * n_heads + h) * D;
        merge_part(acc, lr, o, ((const float *)(m + (size_t)n * n_heads * D * 2))[(int64_t)ci * n_heads + h], lane, D);
    }
#pragma unroll
    for (int k = 0; k < kMergeMaxD / 32; k++)
        if (k * 32 + lane < D) out[((int64_t)s * n_heads + h) * D + k * 32 + lane] = __float2bfloat16_rn(acc[k]);
    if (lse_out && lane == 0) lse_out[(int64_t)s * n_heads + h] = lr;
}

} // namespace

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

extern "C" int64_t cp_cuda_decode_count(const cp_cuda_plan_t *p, int s) {
    if (!p || !p->dec_planned || s < 0 || s >= p->dec_n) return -1;
    if (p->dec_quest) return attn_quest_count(p->quest, s);
    if (p->dec_tidal) return attn_tidal_count(p->tidal, s);
    return -1;
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
