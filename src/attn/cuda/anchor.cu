/* AnchorAttention's prefill on the GPU, first version: four CUDA-core kernels
 * per sequence (anchor_cuda.h says what each computes). One thread owns one
 * query row's online-softmax state (m, l, acc in registers / local memory)
 * from the anchor pass to the output; the state crosses kernels through the
 * workspace so that the stripe selection can read every block's anchor. */
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/anchor_cuda.h"
#include "ops/cuda/cuda_check.cuh"

#define ANC_B 128 // query block (positions, aligned to 0); also threads per block of kernels 1, 3, 4
#define ANC_KT 32 // keys staged in shared memory per step

/* One sequence's parameters, by value to every kernel. */
typedef struct {
    const int32_t *pages; // device: the sequence's page table
    int64_t qrow0;        // first row of the chunk in the batch
    int N, n_q, q_pos0;   // keys, chunk rows, first position
    int qb0, nqb;         // first query block, blocks of the chunk
    int g_first, ng;      // first group (index), groups of the chunk
    int A, L;             // initial window, group
    float theta;
} anc_seq_t;

struct attn_cuda_anchor {
    attn_cuda_shape_t sh;
    int max_seqs, min_local;
    int64_t max_q_rows, max_kv_len, max_blk, max_grp, pages_cap;
    float *st_m, *st_l, *st_acc; // (max_q_rows, H), (max_q_rows, H), (max_q_rows, H, D)
    float *qbar, *abar;          // (H, max_blk, D), (H, max_blk)
    uint8_t *keep, *own;         // (H, max_grp, max_kv_len), (H, max_kv_len)
    int32_t *h_pages, *d_pages;  // (pages_cap)
    anc_seq_t *seqs;             // (max_seqs) the planned selecting sequences
    int n_plan;
};

/* Row j of one head's K or V in the paged pool. */
__device__ __forceinline__ const __nv_bfloat16 *anc_row(const __nv_bfloat16 *pool, const int32_t *pages, int ps, int KH,
                                                        int kh, int D, int64_t j) {
    return pool + (((size_t)pages[j / ps] * KH + kh) * ps + j % ps) * D;
}

/* Stages keys list[0..n) (or j0..j0+n when list is NULL) of K and V into
 * shared memory as f32. */
template <int D>
__device__ void anc_stage(const __nv_bfloat16 *k, const __nv_bfloat16 *v, const int32_t *pages, int ps, int KH, int kh,
                          int64_t j0, const int *list, int n, float (*ks)[D], float (*vs)[D]) {
    for (int i = threadIdx.x; i < n * D; i += blockDim.x) {
        const int t = i / D, e = i % D;
        const int64_t j = list ? list[t] : j0 + t;
        ks[t][e] = __bfloat162float(anc_row(k, pages, ps, KH, kh, D, j)[e]);
        vs[t][e] = __bfloat162float(anc_row(v, pages, ps, KH, kh, D, j)[e]);
    }
}

/* One key into a row's online softmax (natural exponent, scores scaled). */
template <int D> __device__ __forceinline__ void anc_add(float s, const float *vr, float &m, float &l, float *acc) {
    if (s > m) {
        const float c = expf(m - s);
        l *= c;
#pragma unroll
        for (int e = 0; e < D; e++) acc[e] *= c;
        m = s;
    }
    const float w = expf(s - m);
    l += w;
#pragma unroll
    for (int e = 0; e < D; e++) acc[e] += w * vr[e];
}

template <int D> __device__ __forceinline__ float anc_dot(const float *a, const float *b) {
    float s = 0;
#pragma unroll
    for (int e = 0; e < D; e++) s += a[e] * b[e];
    return s;
}

/* Kernel 1, grid (nqb, H), 128 threads: the anchor pass of row p = block
 * start + thread over [0, A) and [g0, p] (or [0, p]); state to the workspace. */
template <int D>
__global__ void anc_pass(anc_seq_t sq, attn_cuda_shape_t sh, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                         const __nv_bfloat16 *v, float *st_m, float *st_l, float *st_acc) {
    __shared__ float ks[ANC_KT][D], vs[ANC_KT][D];
    const int H = sh.n_heads, KH = sh.n_kv_heads, h = blockIdx.y, kh = h / (H / KH);
    const int b0 = (sq.qb0 + blockIdx.x) * ANC_B, p = b0 + threadIdx.x;
    const int r_hi = min(b0 + ANC_B, sq.N);
    const bool act = p >= sq.q_pos0 && p < sq.N;
    const int g0 = b0 / sq.L * sq.L;
    float qr[D], acc[D], m = -INFINITY, l = 0;
    const size_t row = (size_t)(act ? p - sq.q_pos0 : 0) * H + h;
#pragma unroll
    for (int e = 0; e < D; e++) {
        qr[e] = act ? __bfloat162float(q[((size_t)sq.qrow0 * H) * D + row * D + e]) * sh.scale : 0.f;
        acc[e] = 0;
    }
    int lo[2] = {0, g0}, hi[2] = {sq.A, r_hi};
    if (g0 <= sq.A) lo[1] = hi[1] = 0, hi[0] = r_hi;
    for (int r = 0; r < 2; r++)
        for (int j0 = lo[r]; j0 < hi[r]; j0 += ANC_KT) {
            const int n = min(ANC_KT, hi[r] - j0);
            anc_stage<D>(k, v, sq.pages, sh.page_size, KH, kh, j0, NULL, n, ks, vs);
            __syncthreads();
            for (int t = 0; act && t < n && j0 + t <= p; t++) anc_add<D>(anc_dot<D>(qr, ks[t]), vs[t], m, l, acc);
            __syncthreads();
        }
    if (!act) return;
    st_m[row] = m;
    st_l[row] = l;
#pragma unroll
    for (int e = 0; e < D; e++) st_acc[row * D + e] = acc[e];
}

/* Kernel 2, grid (nqb, H), D threads: block bi's mean scaled query (thread
 * e, rows in order, the CPU's f32 sum) and mean anchor (double, as the CPU). */
template <int D>
__global__ void anc_pool(anc_seq_t sq, attn_cuda_shape_t sh, const __nv_bfloat16 *q, const float *st_m, float *qbar,
                         float *abar, int max_blk) {
    const int H = sh.n_heads, h = blockIdx.y, bi = blockIdx.x, e = threadIdx.x;
    const int b0 = (sq.qb0 + bi) * ANC_B, r_lo = max(b0, sq.q_pos0), r_hi = min(b0 + ANC_B, sq.N);
    float s = 0;
    for (int p = r_lo; p < r_hi; p++)
        s += __bfloat162float(q[(((size_t)sq.qrow0 + p - sq.q_pos0) * H + h) * D + e]) * sh.scale;
    qbar[((size_t)h * max_blk + bi) * D + e] = s / (float)(r_hi - r_lo);
    if (e == 0) {
        double am = 0;
        for (int p = r_lo; p < r_hi; p++) am += st_m[(size_t)(p - sq.q_pos0) * H + h];
        abar[(size_t)h * max_blk + bi] = (float)(am / (r_hi - r_lo));
    }
}

/* Kernel 3, grid (ceil(N / 128), ng, H), 128 threads: thread j decides key j
 * of [A, g0) for group gi: kept (stripe) or, in the group holding the
 * chunk's last row, the last block's own key. */
template <int D>
__global__ void anc_stripes(anc_seq_t sq, attn_cuda_shape_t sh, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                            const float *st_m, const float *qbar, const float *abar, int max_blk, int64_t max_kv,
                            uint8_t *keep, uint8_t *own) {
    const int H = sh.n_heads, KH = sh.n_kv_heads, h = blockIdx.z, kh = h / (H / KH), gi = blockIdx.y;
    const int g0 = (sq.g_first + gi) * sq.L, j = sq.A + blockIdx.x * ANC_B + threadIdx.x;
    if (j >= g0) return;
    float kr[D];
    const __nv_bfloat16 *kp = anc_row(k, sq.pages, sh.page_size, KH, kh, D, j);
#pragma unroll
    for (int e = 0; e < D; e++) kr[e] = __bfloat162float(kp[e]);
    bool kept = isinf(sq.theta) && sq.theta > 0;
    const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
    for (int qb = q0 / ANC_B; !kept && qb <= (q1 - 1) / ANC_B; qb++) {
        const int bi = qb - sq.qb0;
        kept = anc_dot<D>(qbar + ((size_t)h * max_blk + bi) * D, kr) + sq.theta >= abar[(size_t)h * max_blk + bi];
    }
    keep[((size_t)h * sq.ng + gi) * max_kv + j] = kept;
    if (g0 + sq.L < sq.N) return; // not the group of the chunk's last row
    bool mine = false;
    if (!kept) {
        const int b0 = (sq.N - 1) / ANC_B * ANC_B;
        for (int p = max(b0, sq.q_pos0); !mine && p < sq.N; p++) {
            const __nv_bfloat16 *qp = q + (((size_t)sq.qrow0 + p - sq.q_pos0) * H + h) * D;
            float s = 0;
#pragma unroll
            for (int e = 0; e < D; e++) s += __bfloat162float(qp[e]) * sh.scale * kr[e];
            mine = s + sq.theta >= st_m[(size_t)(p - sq.q_pos0) * H + h];
        }
    }
    own[(size_t)h * max_kv + j] = mine;
}

/* Kernel 4, grid (nqb, H), 128 threads: each row continues over the kept
 * keys of [A, g0) in order, the chunk's last block then over its own keys,
 * and writes out and lse. */
template <int D>
__global__ void anc_gather(anc_seq_t sq, attn_cuda_shape_t sh, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                           const __nv_bfloat16 *v, const float *st_m, const float *st_l, const float *st_acc,
                           const uint8_t *keep, const uint8_t *own, int64_t max_kv, __nv_bfloat16 *out, float *lse) {
    __shared__ float ks[ANC_KT][D], vs[ANC_KT][D];
    __shared__ int list[ANC_KT];
    __shared__ unsigned bits;
    const int H = sh.n_heads, KH = sh.n_kv_heads, h = blockIdx.y, kh = h / (H / KH);
    const int b0 = (sq.qb0 + blockIdx.x) * ANC_B, p = b0 + threadIdx.x;
    const bool act = p >= sq.q_pos0 && p < sq.N;
    const int g0 = b0 / sq.L * sq.L, gi = g0 / sq.L - sq.g_first;
    const size_t row = (size_t)(act ? p - sq.q_pos0 : 0) * H + h;
    float qr[D], acc[D], m = 0, l = 0;
    if (act) {
        m = st_m[row];
        l = st_l[row];
    }
#pragma unroll
    for (int e = 0; e < D; e++) {
        qr[e] = act ? __bfloat162float(q[((size_t)sq.qrow0 * H) * D + row * D + e]) * sh.scale : 0.f;
        acc[e] = act ? st_acc[row * D + e] : 0.f;
    }
    const bool last = b0 + ANC_B >= sq.N && g0 + sq.L >= sq.N;
    for (int pass = 0; pass < (last ? 2 : 1); pass++) {
        const uint8_t *flag = pass ? own + (size_t)h * max_kv : keep + ((size_t)h * sq.ng + gi) * max_kv;
        for (int j0 = sq.A; j0 < g0; j0 += ANC_KT) {
            if (threadIdx.x < 32) {
                const int j = j0 + threadIdx.x;
                const bool f = j < g0 && flag[j];
                const unsigned b = __ballot_sync(0xffffffffu, f);
                if (f) list[__popc(b & ((1u << threadIdx.x) - 1u))] = j;
                if (threadIdx.x == 0) bits = b;
            }
            __syncthreads();
            const int n = __popc(bits);
            if (n > 0) {
                anc_stage<D>(k, v, sq.pages, sh.page_size, KH, kh, 0, list, n, ks, vs);
                __syncthreads();
                for (int t = 0; act && t < n; t++) anc_add<D>(anc_dot<D>(qr, ks[t]), vs[t], m, l, acc);
            }
            __syncthreads();
        }
    }
    if (!act) return;
    const size_t orow = ((size_t)sq.qrow0 + p - sq.q_pos0) * H + h;
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < D; e++) out[orow * D + e] = __float2bfloat16(acc[e] * inv);
    if (lse) lse[orow] = m + logf(l);
}

extern "C" int attn_cuda_anchor_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows,
                                       int64_t max_kv_len, int min_local, attn_cuda_anchor_t **out) {
    if (!shape || !out || max_seqs <= 0 || max_q_rows <= 0 || max_kv_len <= 0 || min_local < ANC_B ||
        min_local % ANC_B || shape->n_kv_heads <= 0 || shape->n_heads % shape->n_kv_heads)
        return LC_EINVAL;
    if ((shape->head_dim != 64 && shape->head_dim != 128) || (shape->page_size != 64 && shape->page_size != 128))
        return LC_EUNSUPPORTED;
    if (max_kv_len > INT32_MAX / 2 || max_q_rows > INT32_MAX / 2) return LC_ERANGE;
    attn_cuda_anchor_t *a = (attn_cuda_anchor_t *)calloc(1, sizeof *a);
    if (!a) return LC_ENOMEM;
    const int H = shape->n_heads, D = shape->head_dim;
    a->sh = *shape;
    a->max_seqs = max_seqs;
    a->min_local = min_local;
    a->max_q_rows = max_q_rows;
    a->max_kv_len = max_kv_len;
    a->max_blk = max_q_rows / ANC_B + 2; // a chunk spans at most this many blocks
    a->max_grp = max_q_rows / min_local + 2;
    a->pages_cap = (int64_t)max_seqs * ((max_kv_len + shape->page_size - 1) / shape->page_size);
    a->seqs = (anc_seq_t *)calloc(max_seqs, sizeof *a->seqs);
    if (!a->seqs) goto fail;
    if (cudaMallocHost((void **)&a->h_pages, sizeof(int32_t) * a->pages_cap) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->d_pages, sizeof(int32_t) * a->pages_cap) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->st_m, sizeof(float) * max_q_rows * H) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->st_l, sizeof(float) * max_q_rows * H) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->st_acc, sizeof(float) * max_q_rows * H * D) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->qbar, sizeof(float) * a->max_blk * H * D) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->abar, sizeof(float) * a->max_blk * H) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->keep, (size_t)H * a->max_grp * max_kv_len) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&a->own, (size_t)H * max_kv_len) != cudaSuccess) goto fail;
    *out = a;
    return 0;
fail:
    attn_cuda_anchor_destroy(a);
    return LC_ENOMEM;
}

extern "C" void attn_cuda_anchor_destroy(attn_cuda_anchor_t *a) {
    if (!a) return;
    cudaFreeHost(a->h_pages);
    cudaFree(a->d_pages);
    cudaFree(a->st_m);
    cudaFree(a->st_l);
    cudaFree(a->st_acc);
    cudaFree(a->qbar);
    cudaFree(a->abar);
    cudaFree(a->keep);
    cudaFree(a->own);
    free(a->seqs);
    free(a);
}

extern "C" int attn_cuda_anchor_plan(attn_cuda_anchor_t *a, const attn_cuda_batch_t *b, const uint8_t *selects,
                                     const attn_cuda_anchor_policy_t *pol, void *stream) {
    (void)stream;
    if (!a || !b || !b->q_indptr || !b->kv_indptr || !b->kv_indices || !b->kv_len || !selects || !pol || b->n_seqs < 0)
        return LC_EINVAL;
    if (b->n_seqs > a->max_seqs) return LC_ERANGE;
    const int ps = a->sh.page_size;
    int64_t np = 0;
    a->n_plan = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const int n_q = b->q_indptr[s + 1] - b->q_indptr[s], N = b->kv_len[s];
        if (!selects[s] || n_q == 0) continue;
        const attn_cuda_anchor_policy_t *pp = &pol[s];
        if (n_q < 0 || N < n_q || pp->anchor_init < 0 || pp->anchor_local % ANC_B || isnan(pp->theta)) return LC_EINVAL;
        if (pp->anchor_local < a->min_local || n_q > a->max_q_rows || N > a->max_kv_len) return LC_ERANGE;
        const int need = (N + ps - 1) / ps;
        if (b->kv_indptr[s + 1] - b->kv_indptr[s] < need) return LC_EINVAL;
        for (int i = 0; i < need; i++) {
            const int32_t pg = b->kv_indices[b->kv_indptr[s] + i];
            if (pg < 0 || pg >= a->sh.n_pool_pages) return LC_EINVAL;
            a->h_pages[np + i] = pg;
        }
        anc_seq_t *sq = &a->seqs[a->n_plan++];
        sq->pages = a->d_pages + np;
        np += need;
        sq->qrow0 = b->q_indptr[s];
        sq->N = N;
        sq->n_q = n_q;
        sq->q_pos0 = N - n_q;
        sq->qb0 = sq->q_pos0 / ANC_B;
        sq->nqb = (N - 1) / ANC_B - sq->qb0 + 1;
        sq->A = pp->anchor_init;
        sq->L = pp->anchor_local;
        sq->g_first = sq->q_pos0 / sq->L;
        sq->ng = (N - 1) / sq->L - sq->g_first + 1;
        sq->theta = pp->theta;
    }
    if (np > 0) CUDA_CHECK_RET(cudaMemcpy(a->d_pages, a->h_pages, sizeof(int32_t) * np, cudaMemcpyHostToDevice));
    return 0;
}

template <int D>
static int anc_run(const attn_cuda_anchor_t *a, const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                   __nv_bfloat16 *out, float *lse, cudaStream_t st) {
    const int H = a->sh.n_heads;
    for (int i = 0; i < a->n_plan; i++) {
        const anc_seq_t sq = a->seqs[i];
        anc_pass<D><<<dim3(sq.nqb, H), ANC_B, 0, st>>>(sq, a->sh, q, k, v, a->st_m, a->st_l, a->st_acc);
        anc_pool<D><<<dim3(sq.nqb, H), D, 0, st>>>(sq, a->sh, q, a->st_m, a->qbar, a->abar, (int)a->max_blk);
        const int g_last0 = (sq.g_first + sq.ng - 1) * sq.L;
        if (g_last0 > sq.A)
            anc_stripes<D><<<dim3((g_last0 - sq.A + ANC_B - 1) / ANC_B, sq.ng, H), ANC_B, 0, st>>>(
                sq, a->sh, q, k, a->st_m, a->qbar, a->abar, (int)a->max_blk, a->max_kv_len, a->keep, a->own);
        anc_gather<D><<<dim3(sq.nqb, H), ANC_B, 0, st>>>(sq, a->sh, q, k, v, a->st_m, a->st_l, a->st_acc, a->keep,
                                                         a->own, a->max_kv_len, out, lse);
        CUDA_CHECK_RET(cudaGetLastError());
    }
    return 0;
}

extern "C" int attn_cuda_anchor_run(const attn_cuda_anchor_t *a, const void *q, const void *k, const void *v, void *out,
                                    float *lse, void *stream) {
    if (!a || !q || !k || !v || !out) return LC_EINVAL;
    const __nv_bfloat16 *qb = (const __nv_bfloat16 *)q, *kb = (const __nv_bfloat16 *)k, *vb = (const __nv_bfloat16 *)v;
    __nv_bfloat16 *ob = (__nv_bfloat16 *)out;
    cudaStream_t st = (cudaStream_t)stream;
    return a->sh.head_dim == 64 ? anc_run<64>(a, qb, kb, vb, ob, lse, st) : anc_run<128>(a, qb, kb, vb, ob, lse, st);
}

extern "C" int attn_cuda_anchor_keys(const attn_cuda_anchor_t *a, int h, int gi, uint8_t *keep, uint8_t *own,
                                     void *stream) {
    if (!a || a->n_plan == 0 || !keep || !own || h < 0 || h >= a->sh.n_heads) return LC_EINVAL;
    const anc_seq_t *sq = &a->seqs[a->n_plan - 1];
    if (gi < 0 || gi >= sq->ng) return LC_EINVAL;
    const int g0 = (sq->g_first + gi) * sq->L;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    memset(keep, 0, (size_t)sq->N);
    memset(own, 0, (size_t)sq->N);
    if (g0 <= sq->A) return 0; // no candidates: nothing was written
    CUDA_CHECK_RET(cudaMemcpy(keep + sq->A, a->keep + ((size_t)h * sq->ng + gi) * a->max_kv_len + sq->A,
                              (size_t)(g0 - sq->A), cudaMemcpyDeviceToHost));
    if (g0 + sq->L >= sq->N)
        CUDA_CHECK_RET(cudaMemcpy(own + sq->A, a->own + (size_t)h * a->max_kv_len + sq->A, (size_t)(g0 - sq->A),
                                  cudaMemcpyDeviceToHost));
    return 0;
}
