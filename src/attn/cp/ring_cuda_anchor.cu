// AnchorAttention across the ranks of a GPU context-parallel group
// (cp_cuda.h): not a ring but all-to-alls. Every rank gets every row of the
// slice, runs anchor_cuda.h's dist API over the keys it holds into a
// partial of every row, and each row's N partials come back to its owner,
// merged in rank order (pass-Q's merge, ring_cuda.cuh).
#include "attn/cp/ring_cuda.cuh"

namespace {

// AnchorAttention: one destination's message of partials (q_msg's layout),
// its rows' slice rows at idx; one warp per (row, head).
__global__ void anc_pack_kernel(const __nv_bfloat16 *o, const float *lse, const int32_t *idx, int64_t rows, int n_heads,
                                int D, uint8_t *msg) {
    const int64_t rh = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (rh >= rows * n_heads) return;
    const int64_t src = (int64_t)idx[rh / n_heads] * n_heads + rh % n_heads;
    __nv_bfloat16 *mo = (__nv_bfloat16 *)msg + rh * D;
    for (int d = lane; d < D; d += 32) mo[d] = o[src * D + d];
    if (lane == 0) ((float *)(msg + (size_t)rows * n_heads * D * 2))[rh] = lse[src];
}

} // namespace

// AnchorAttention's workspace for groups of at least `local` positions (its
// key lists' size).
static int make(cp_cuda_plan_t *p, int local) {
    attn_cuda_anchor_destroy(p->anc);
    p->anc = nullptr;
    int rc = attn_cuda_anchor_create(&p->shape, 1, p->lim.max_anchor_rows, p->lim.max_tokens, local, &p->anc);
    if (!rc && (rc = attn_cuda_anchor_dist_reserve(p->anc, p->n))) {
        attn_cuda_anchor_destroy(p->anc);
        p->anc = nullptr;
    }
    p->anc_local = rc ? 0 : local;
    return rc;
}

int cp_cuda__anchor_create(cp_cuda_plan_t *p) {
    const int H = p->shape.n_heads, D = p->shape.head_dim;
    int rc;
    const int64_t R = p->lim.max_anchor_rows, nkb = (p->lim.max_tokens - 1) / 128 + 1;
    if ((rc = make(p, p->lim.anchor_min_local ? p->lim.anchor_min_local : 1024))) goto fail;
    rc = LC_ENOMEM;
    if (!(p->h_aheld = (uint8_t *)malloc((size_t)nkb + 1))) goto fail;
    rc = LC_EDEVICE;
    if (cudaMallocHost((void **)&p->h_aidx, sizeof(int32_t) * 2 * (size_t)R) != cudaSuccess ||
        cudaEventCreateWithFlags(&p->up_anc, cudaEventDisableTiming) != cudaSuccess)
        goto fail;
    CP_ALLOC(p->d_aidx, sizeof(int32_t) * 2 * (size_t)R);
    CP_ALLOC(p->aq_recv, (size_t)p->n * p->lim.max_rows * H * D * 2);
    CP_ALLOC(p->aq, (size_t)R * H * D * 2);
    CP_ALLOC(p->ao, (size_t)R * H * D * 2);
    CP_ALLOC(p->alse, (size_t)R * H * sizeof(float));
    CP_ALLOC(p->asend, q_msg(R, H, D) + (size_t)p->n * 256);
    CP_ALLOC(p->arecv, (size_t)p->n * q_msg(p->lim.max_rows, H, D));
    if (!p->d_pairs) {
        if (cudaMallocHost((void **)&p->h_pairs, sizeof(unsigned long long)) != cudaSuccess) goto fail;
        CP_ALLOC(p->d_pairs, sizeof(unsigned long long));
        if (cudaMemset(p->d_pairs, 0, sizeof(unsigned long long)) != cudaSuccess) goto fail;
    }
    return 0;
fail:
    return rc;
}

void cp_cuda__anchor_destroy(cp_cuda_plan_t *p) {
    if (p->up_anc) cudaEventSynchronize(p->up_anc), cudaEventDestroy(p->up_anc);
    attn_cuda_anchor_destroy(p->anc);
    cudaFree(p->aq_recv), cudaFree(p->aq), cudaFree(p->ao), cudaFree(p->alse), cudaFree(p->asend), cudaFree(p->arecv);
    cudaFree(p->d_aidx);
    cudaFreeHost(p->h_aidx);
    free(p->h_aheld);
}

// AnchorAttention's plan (after the rows): the held blocks, where each slice
// row arrives in the all-to-all of the queries (rank t's rows at t x
// max_rows), each rank's rows' slice rows for the partials' messages, the
// messages' sizes (pass-Q's), and the dist API's plan.
static int plan_slice(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    const int ps = p->shape.page_size, n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int64_t end = seq->pos0 + seq->n_tok, nb = (end + ps - 1) / ps, nkb = (end - 1) / 128 + 1;
    if (ps > 128 || 128 % ps) return LC_EINVAL;
    const int per = 128 / ps; // pages per 128-block
    for (int64_t b = 0; b < nb; b++)
        if (seq->owner[b] != seq->owner[b - b % per]) return LC_EINVAL; // a block split between ranks
    if (p->up_anc_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_anc));
        p->up_anc_pending = 0;
    }
    for (int64_t g = 0; g < nkb; g++) p->h_aheld[g] = seq->owner[g * per] == r;
    int32_t *from = p->h_aidx, *pack = p->h_aidx + seq->n_tok;
    size_t k = 0, off = 0;
    for (int t = 0; t < n; t++) {
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nt = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, t, runs, CP_RING_MAX_RUNS);
        if (nt < 0) return nt;
        if (p->q_rows[t] > p->lim.max_rows) return LC_ERANGE; // its rows' slot in the queries' all-to-all
        p->a_off[t] = k;
        for (int i = 0; i < nt; i++)
            for (int64_t j = 0; j < runs[i].n; j++) {
                const int64_t slice_row = runs[i].p0 + j - seq->pos0;
                from[slice_row] = (int32_t)((int64_t)t * p->lim.max_rows + runs[i].row0 + j);
                pack[k++] = (int32_t)slice_row;
            }
        p->q_soff[t] = off;
        p->q_sbytes[t] = q_msg(p->q_rows[t], H, D);
        off += p->q_sbytes[t];
        p->q_roff[t] = (size_t)t * q_msg(p->rows, H, D);
        p->q_rbytes[t] = q_msg(p->rows, H, D);
        p->src.r0[t] = 0; // every rank computed every row
    }
    if ((int64_t)k != seq->n_tok) return LC_EINVAL;
    p->a_ntok = seq->n_tok;
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(
        cudaMemcpyAsync(p->d_aidx, p->h_aidx, sizeof(int32_t) * 2 * (size_t)seq->n_tok, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->up_anc, st));
    p->up_anc_pending = 1;
    const attn_cuda_anchor_dist_seq_t d = {(int)seq->n_tok, (int)end, seq->blocks, p->h_aheld, *seq->anchor};
    return attn_cuda_anchor_dist_plan(p->anc, &d, stream);
}

int cp_cuda__anchor_plan(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    if (!p->lim.max_anchor_rows || seq->n_tok > p->lim.max_anchor_rows) return LC_ERANGE;
    const int local = seq->anchor->anchor_local, was = p->anc_local;
    if (local >= 128 && local % 128 == 0 && (!p->anc || local < p->anc_local)) {
        // a smaller group than the workspace holds: made again (a plan-time allocation, as the
        // single-rank executor's); out of memory, the old one back and this slice refused
        CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
        if (make(p, local)) {
            if (was) make(p, was);
            return LC_ERANGE;
        }
    }
    if (!p->anc) return LC_ERANGE;
    return plan_slice(p, seq, stream);
}

static int ring_allgather(void *ctx, const void *sbuf, size_t bytes, void *rbuf) {
    return cp_allgather((cp_comm_t *)ctx, sbuf, bytes, rbuf);
}

// AnchorAttention: every rank's rows to every rank (in position order), the
// dist API over every row, each rank's partials to their rows' owner, merged
// in rank order. Timing: step 0's compute is the method's run (its two
// all-gathers inside), the exchanges and the merge are collective time.
int cp_cuda__anchor_run(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                        float *lse) {
    const int n = p->n, H = p->shape.n_heads, D = p->shape.head_dim;
    const size_t rowb = (size_t)H * D * 2;
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS], st));
    size_t soff[CP_MAX_RANKS], sb[CP_MAX_RANKS], roff[CP_MAX_RANKS], rb[CP_MAX_RANKS];
    for (int t = 0; t < n; t++) {
        soff[t] = 0;
        sb[t] = (size_t)p->rows * rowb;
        roff[t] = (size_t)t * p->lim.max_rows * rowb;
        rb[t] = (size_t)p->q_rows[t] * rowb;
    }
    if ((rc = cp_alltoallv(c, q, soff, sb, p->aq_recv, roff, rb))) return rc;
    if ((rc = gather_rows(p->aq, p->aq_recv, p->d_aidx, p->a_ntok, rowb, st))) return rc;
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[0], st));
    if ((rc = attn_cuda_anchor_dist_run(p->anc, p->aq, k, v, p->ao, p->alse, ring_allgather, c, st))) return rc;
    if ((rc = attn_cuda_anchor_pairs(p->anc, p->d_pairs, st))) return rc;
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[1], st));
    for (int t = 0; t < n; t++)
        if (p->q_rows[t] > 0) {
            anc_pack_kernel<<<warp_blocks(p->q_rows[t] * H), 256, 0, st>>>(
                p->ao, p->alse, p->d_aidx + p->a_ntok + p->a_off[t], p->q_rows[t], H, D, p->asend + p->q_soff[t]);
            CUDA_CHECK_RET(cudaGetLastError());
        }
    if ((rc = cp_alltoallv(c, p->asend, p->q_soff, p->q_sbytes, p->arecv, p->q_roff, p->q_rbytes))) return rc;
    if (p->rows > 0) {
        passq_merge_kernel<<<warp_blocks(p->rows * H), 256, 0, st>>>(p->arecv, p->q_rbytes[0], p->rows, H, D, p->src, n,
                                                                     (__nv_bfloat16 *)out, lse);
        CUDA_CHECK_RET(cudaGetLastError());
    }
    if (!p->timing) return 0;
    CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS + 1], st));
    CUDA_CHECK_RET(cudaEventSynchronize(p->ev[3 * CP_MAX_RANKS + 1]));
    float x = 0, y = 0, z = 0;
    CUDA_CHECK_RET(cudaEventElapsedTime(&x, p->ev[3 * CP_MAX_RANKS], p->ev[0]));
    CUDA_CHECK_RET(cudaEventElapsedTime(&y, p->ev[0], p->ev[1]));
    CUDA_CHECK_RET(cudaEventElapsedTime(&z, p->ev[1], p->ev[3 * CP_MAX_RANKS + 1]));
    for (int s = 0; s < n; s++) p->step_c[s] = p->step_w[s] = 0;
    p->step_c[0] = y;
    p->t.compute_s += y * 1e-3;
    p->t.collective_s += (x + z) * 1e-3;
    p->timed = 1;
    return 0;
}
