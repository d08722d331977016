// AnchorAttention's kernels after the selection (anchor_cuda.h says what
// each step computes; anchor.cu runs them, anchor_kern.cu holds the
// selection): the LSE merges of the passes (the own keys' parts into the
// stripes', then anchor, stripes and whole blocks into the output), the
// context-parallel ranks' row maxima and LSEs folded, and the pair count.
// No float atomics anywhere: every sum runs in a fixed order.
#include <math.h>

#include "attn/cuda/anchor.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

// grid (n_q - own_r0, H), D threads: the tail rows' own-key parts (o3,
// lse3; part z's rows at z n_own rows) folded into their stripes' (o2, lse2)
// by LSE weights in part order, in place, one (row, head) per CTA, one
// element per thread (each thread forms the weights itself: the same
// arithmetic in each); a row and head with none of them stays (0, -inf).
__global__ void own_merge_kernel(int H, int D, float *o2, float *lse2, const float *o3, const float *lse3, int own_r0,
                                 int n_own) {
    const int i = blockIdx.x, h = blockIdx.y, r = own_r0 + i, e = threadIdx.x;
    const size_t ri = (size_t)r * H + h;
    const float l2 = lse2[ri];
    float M = l2;
    for (int z = 0; z < kOwnSplit; z++) M = fmaxf(M, lse3[((size_t)z * n_own + i) * H + h]);
    if (M == -INFINITY) return;
    float sum = expf(l2 - M), v = sum * o2[ri * D + e];
    for (int z = 0; z < kOwnSplit; z++) {
        const size_t zi = ((size_t)z * n_own + i) * H + h;
        const float wz = expf(lse3[zi] - M); // exp(-inf) = 0: an empty part
        sum += wz;
        if (wz != 0.f) v += wz * o3[zi * D + e];
    }
    __syncthreads(); // every thread has read lse2 before it changes
    o2[ri * D + e] = v / sum;
    if (e == 0) lse2[ri] = M + logf(sum);
}

// grid (n_q), 256 threads, 3 H floats of dynamic shared memory: each row's
// weights per head, then out = sum_i w_i o_i / sum_i w_i in the fixed order
// anchor, stripes (with the own keys), whole blocks; lse = M + log sum_i
// w_i. The anchor pass attends the row's own position, so its LSE is finite
// and M is too, except on a rank that holds none of the row's keys (the
// dist API): then out 0 and lse -inf.
__global__ void merge_kernel(AncSeq sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                             const float *lse2, const __nv_bfloat16 *o4, const float *lse4, __nv_bfloat16 *out,
                             float *lse) {
    extern __shared__ float wts[]; // (3, H)
    const int r = blockIdx.x;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        const float l1 = lse1[(size_t)r * H + h], l2 = lse2[(size_t)r * H + h], l4 = lse4[(size_t)r * H + h];
        const float M = fmaxf(l1, fmaxf(l2, l4));
        if (M == -INFINITY) { // nothing attended
            wts[h] = wts[H + h] = wts[2 * H + h] = 0.f;
            if (lse) lse[((size_t)sq.qrow0 + r) * H + h] = -INFINITY;
            continue;
        }
        const float w1 = expf(l1 - M), w2 = expf(l2 - M), w4 = expf(l4 - M); // exp(-inf) = 0
        const float sum = w1 + w2 + w4, inv = 1.f / sum;
        wts[h] = w1 * inv;
        wts[H + h] = w2 * inv;
        wts[2 * H + h] = w4 * inv;
        if (lse) lse[((size_t)sq.qrow0 + r) * H + h] = M + logf(sum);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < H * D; e += blockDim.x) {
        const int h = e / D;
        const size_t i = (size_t)r * H * D + e;
        const float v =
            wts[h] * __bfloat162float(o1[i]) + wts[H + h] * o2[i] + wts[2 * H + h] * __bfloat162float(o4[i]);
        out[((size_t)sq.qrow0 + r) * H * D + e] = __float2bfloat16_rn(v);
    }
}

// One block of kPairsThreads: the pairs of the anchor pass (per row: [0, A)
// and [lo, p], or [0, p] when lo <= A; the same for every head; with held
// blocks, those of its masks: every set block below the diagonal whole, the
// diagonal block, when set, up to each row), of the
// stripes (each group's list length and whole blocks times the group's rows)
// and of the own keys (each tail block's list length times its rows). Each
// thread sums a strided share, then the block adds them: integers, so any
// order gives the same total.
constexpr int kPairsThreads = 256;
__global__ void __launch_bounds__(kPairsThreads) pairs_kernel(AncSeq sq, int H, AncWork w, unsigned long long *pairs) {
    __shared__ unsigned long long s_tot;
    if (threadIdx.x == 0) s_tot = 0;
    __syncthreads();
    unsigned long long anchor = 0, sparse = 0;
    if (sq.held) {
        const int words = ((sq.N - 1) / kAncB + 1 + 31) / 32;
        for (int i = threadIdx.x; i < sq.nqb * H; i += kPairsThreads) {
            const int qb = sq.qb0 + i % sq.nqb;
            const int p0 = max(qb * kAncB, sq.q_pos0), p1 = min((qb + 1) * kAncB, sq.N);
            const uint32_t *row = w.mask1 + sq.mask_off + (size_t)i * words; // i = h * nqb + (qb - qb0)
            int below = 0;
            for (int wd = 0; wd < qb / 32; wd++) below += __popc(row[wd]);
            if (qb & 31) below += __popc(row[qb / 32] & ((1u << (qb & 31)) - 1u));
            sparse += (unsigned long long)below * kAncB * (p1 - p0);
            if (row[qb / 32] >> (qb & 31) & 1u)
                sparse += (unsigned long long)(p1 - p0) * (p0 + p1 + 1 - 2 * qb * kAncB) / 2;
        }
    } else {
        for (int p = sq.q_pos0 + (int)threadIdx.x; p < sq.N; p += kPairsThreads) {
            const int lo = anc_lo(sq, p / sq.L * sq.L);
            anchor += lo <= sq.A ? (unsigned long long)p + 1 : (unsigned long long)sq.A + (p - lo + 1);
        }
    }
    for (int i = threadIdx.x; i < sq.ng * H; i += kPairsThreads) {
        const int gi = i / H, h = i % H;
        const int g0 = (sq.g_first + gi) * sq.L;
        const int rows = min(g0 + sq.L, sq.N) - max(g0, sq.q_pos0);
        sparse += ((unsigned long long)w.keep_cnt[(size_t)h * sq.ng + gi] +
                   (unsigned long long)kAncB * w.full_cnt[(size_t)h * sq.ng + gi]) *
                  rows;
    }
    for (int i = threadIdx.x; i < sq.n_ob * H; i += kPairsThreads) {
        const int t = i / H, h = i % H;
        const int b0 = (sq.own_b0 + t) * kAncB, rows = min(b0 + kAncB, sq.N) - max(b0, sq.q_pos0);
        sparse += (unsigned long long)w.own_cnt[h * 2 + t] * rows;
    }
    atomicAdd(&s_tot, anchor * H + sparse);
    __syncthreads();
    if (threadIdx.x == 0) *pairs = s_tot;
}

__global__ void pairs_add_kernel(const unsigned long long *seq_pairs, const int32_t *bidx, int n,
                                 unsigned long long *pairs) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) pairs[bidx[i]] += seq_pairs[i]; // bidx distinct
}

// grid-stride over n: in holds n_ranks tables of 2 n floats (maxima, LSEs).
__global__ void fold_kernel(const float *in, int n_ranks, int64_t n, float *rowmax, float *lse) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float m = -INFINITY, l = -INFINITY;
        for (int r = 0; r < n_ranks; r++) {
            const float *t = in + (size_t)r * 2 * n;
            m = fmaxf(m, t[i]);
            const float lp = t[n + i];
            if (lp == -INFINITY) continue;
            if (l == -INFINITY) {
                l = lp;
            } else {
                const float mx = fmaxf(l, lp);
                l = mx + logf(expf(l - mx) + expf(lp - mx));
            }
        }
        rowmax[i] = m;
        lse[i] = l;
    }
}

} // namespace

int anc_fold_launch(const float *in, int n_ranks, int64_t n, float *rowmax, float *lse, cudaStream_t st) {
    if (n <= 0) return 0;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    fold_kernel<<<(unsigned)blocks, 256, 0, st>>>(in, n_ranks, n, rowmax, lse);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_own_merge_launch(const AncSeq &sq, int H, int D, float *o2, float *lse2, const float *o3, const float *lse3,
                         int own_r0, cudaStream_t st) {
    if (own_r0 >= sq.n_q) return 0;
    own_merge_kernel<<<dim3(sq.n_q - own_r0, H), D, 0, st>>>(H, D, o2, lse2, o3, lse3, own_r0, sq.n_q - own_r0);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_merge_launch(const AncSeq &sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                     const float *lse2, const __nv_bfloat16 *o4, const float *lse4, __nv_bfloat16 *out, float *lse,
                     cudaStream_t st) {
    merge_kernel<<<sq.n_q, 256, sizeof(float) * 3 * H, st>>>(sq, H, D, o1, lse1, o2, lse2, o4, lse4, out, lse);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_pairs_launch(const AncSeq &sq, int H, const AncWork &w, unsigned long long *pairs, cudaStream_t st) {
    pairs_kernel<<<1, kPairsThreads, 0, st>>>(sq, H, w, pairs);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_pairs_add_launch(const unsigned long long *seq_pairs, const int32_t *bidx, int n, unsigned long long *pairs,
                         cudaStream_t st) {
    if (n == 0) return 0;
    pairs_add_kernel<<<1, 256, 0, st>>>(seq_pairs, bidx, n, pairs);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}
