// AnchorAttention's selection kernels (anchor_cuda.h says what each step
// computes; anchor.cu runs them): the anchor pass's block masks, the pooled
// queries and anchors, the stripe and own-key tests as bit sets, their
// compaction into ascending key lists, the LSE merge of the three passes and
// the pair count. No float atomics anywhere: every sum runs in a fixed order.
#include <math.h>

#include "attn/cuda/anchor.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kScanThreads = 512;

// Row j of one head's K or V in the paged pool.
__device__ __forceinline__ const __nv_bfloat16 *pool_row(const __nv_bfloat16 *pool, const int32_t *pages, int ps,
                                                         int KH, int kh, int D, int64_t j) {
    return pool + (((size_t)pages[j / ps] * KH + kh) * ps + j % ps) * D;
}

// grid (nqb, H), 32 threads: row (h, qb) of the anchor pass's masks. Key
// block kb is on when it holds initial-window keys ([0, A)), local-window keys
// ([g0, qb]) or when the group starts inside the initial window (then the
// CPU attends [0, p] whole); bits above the diagonal stay 0.
__global__ void mask_kernel(AncSeq sq, uint32_t *mask) {
    const int h = blockIdx.y, qb = sq.qb0 + blockIdx.x;
    const int n_kb = (sq.N - 1) / kAncB + 1, words = (n_kb + 31) / 32;
    const int g0 = qb * kAncB / sq.L * sq.L, a_kb = sq.A / kAncB, g_kb = g0 / kAncB;
    const bool all = g0 <= sq.A;
    uint32_t *row = mask + sq.mask_off + ((size_t)h * sq.nqb + blockIdx.x) * words;
    for (int w = threadIdx.x; w < words; w += blockDim.x) {
        uint32_t bits = 0;
        for (int b = 0; b < 32; b++) {
            const int kb = 32 * w + b;
            if (kb <= qb && (all || kb < a_kb || kb >= g_kb)) bits |= 1u << b;
        }
        row[w] = bits;
    }
}

// grid (nqb, H), D threads: block bi's mean scaled query (thread e, rows in
// order: the CPU's f32 sum) and mean anchor (double, as the CPU).
template <int D> __global__ void pool_kernel(AncSeq sq, int H, float scale, AncWork w) {
    const int h = blockIdx.y, bi = blockIdx.x, e = threadIdx.x;
    const int b0 = (sq.qb0 + bi) * kAncB, r_lo = max(b0, sq.q_pos0) - sq.q_pos0,
              r_hi = min(b0 + kAncB, sq.N) - sq.q_pos0;
    float s = 0;
    for (int r = r_lo; r < r_hi; r++) s += __bfloat162float(w.q[((size_t)r * H + h) * D + e]) * scale;
    w.qbar[((size_t)h * w.max_blk + bi) * D + e] = s / (float)(r_hi - r_lo);
    if (e == 0) {
        double am = 0;
        for (int r = r_lo; r < r_hi; r++) am += w.rowmax[(size_t)r * H + h];
        w.abar[(size_t)h * w.max_blk + bi] = (float)(am / (r_hi - r_lo));
    }
}

// grid (ceil((g_last0 - A) / 128), ng, H), 128 threads: thread j decides key
// j of [A, g0) for group gi: kept when some block b of the group in the chunk
// has qbar_b.k_j + theta >= abar_b; in the group holding the chunk's last row,
// a key not kept is the last block's own when some row r of that block has
// scale q_r.k_j + theta >= rowmax_r. A warp's 32 keys start at a multiple of
// 32 (A and g0 are multiples of 128): one ballot gives a bit word.
template <int D>
__global__ void stripes_kernel(AncSeq sq, int H, int KH, int ps, float scale, const __nv_bfloat16 *k, AncWork w) {
    const int h = blockIdx.z, kh = h / (H / KH), gi = blockIdx.y, lane = threadIdx.x & 31;
    const int g0 = (sq.g_first + gi) * sq.L, j = sq.A + blockIdx.x * kAncB + threadIdx.x;
    if (j - lane >= g0) return; // the warp's keys are all past the candidates (warp-uniform)
    float kr[D];
    const __nv_bfloat16 *kp = pool_row(k, sq.pages, ps, KH, kh, D, j);
#pragma unroll
    for (int e = 0; e < D; e++) kr[e] = __bfloat162float(kp[e]);
    bool kept = isinf(sq.theta) && sq.theta > 0;
    const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
    for (int qb = q0 / kAncB; !kept && qb <= (q1 - 1) / kAncB; qb++) {
        const float *qb_row = w.qbar + ((size_t)h * w.max_blk + (qb - sq.qb0)) * D;
        float s = 0;
#pragma unroll
        for (int e = 0; e < D; e++) s += qb_row[e] * kr[e];
        kept = s + sq.theta >= w.abar[(size_t)h * w.max_blk + (qb - sq.qb0)];
    }
    const unsigned kw = __ballot_sync(0xffffffffu, kept);
    if (lane == 0) w.keep_bits[((size_t)h * sq.ng + gi) * w.wcap + j / 32] = kw;
    if (g0 + sq.L < sq.N) return; // not the group of the chunk's last row (block-uniform)
    bool mine = false;
    if (!kept && sq.has_own) {
        const int r0 = max((sq.N - 1) / kAncB * kAncB, sq.q_pos0) - sq.q_pos0;
        for (int r = r0; !mine && r < sq.n_q; r++) {
            const __nv_bfloat16 *qp = w.q + ((size_t)r * H + h) * D;
            float s = 0;
#pragma unroll
            for (int e = 0; e < D; e++) s += __bfloat162float(qp[e]) * scale * kr[e];
            mine = s + sq.theta >= w.rowmax[(size_t)r * H + h];
        }
    }
    const unsigned ow = __ballot_sync(0xffffffffu, mine);
    if (lane == 0) w.own_bits[(size_t)h * w.wcap + j / 32] = ow;
}

// Exclusive prefix of x over the block's threads in thread order, and the
// block's total. Every thread calls it; w_tot: kScanThreads / 32 ints.
__device__ __forceinline__ int block_scan(int x, int *w_tot, int *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = x;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += v;
    }
    if (lane == 31) w_tot[warp] = incl;
    __syncthreads();
    int before = incl - x, tot = 0;
    for (int i = 0; i < kScanThreads / 32; i++) {
        if (i < warp) before += w_tot[i];
        tot += w_tot[i];
    }
    __syncthreads(); // w_tot read by all before the next scan writes it
    *total = tot;
    return before;
}

// grid (ng + 1, H), kScanThreads: block gi < ng compacts group gi's kept
// bits, block ng the own bits, into ascending positions (thread t takes one
// 32-key word; a block scan in word order places its keys) and the count.
__global__ void __launch_bounds__(kScanThreads) compact_kernel(AncSeq sq, AncWork w) {
    __shared__ int w_tot[kScanThreads / 32];
    const int h = blockIdx.y, gi = blockIdx.x, own = gi == sq.ng;
    const int g0 = (sq.g_first + (own ? sq.ng - 1 : gi)) * sq.L;
    const uint32_t *bits = own ? w.own_bits + (size_t)h * w.wcap : w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap;
    int32_t *out = own ? w.own_list + (size_t)h * w.max_kv : w.keep_list + ((size_t)h * sq.ng + gi) * w.max_kv;
    const int w_lo = sq.A / 32, w_hi = own && !sq.has_own ? w_lo : max(w_lo, g0 / 32);
    int before = 0;
    for (int w0 = w_lo; w0 < w_hi; w0 += kScanThreads) {
        const int wi = w0 + threadIdx.x;
        const uint32_t b = wi < w_hi ? bits[wi] : 0u;
        int tot;
        int pos = before + block_scan(__popc(b), w_tot, &tot);
        for (uint32_t x = b; x; x &= x - 1) out[pos++] = 32 * wi + __ffs(x) - 1;
        before += tot;
    }
    if (threadIdx.x == 0) {
        if (own)
            w.own_cnt[h] = before;
        else
            w.keep_cnt[(size_t)h * sq.ng + gi] = before;
    }
}

// grid (n_q), 256 threads, 3 H floats of dynamic shared memory: each row's
// weights per head, then out = sum_i w_i o_i / sum_i w_i in the fixed order
// anchor, stripes, own; lse = M + log sum_i w_i. The anchor pass attends the
// row's own position, so its LSE is finite and M is too.
__global__ void merge_kernel(AncSeq sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                             const float *lse2, const float *o3, const float *lse3, int own_r0, __nv_bfloat16 *out,
                             float *lse) {
    extern __shared__ float wts[]; // (3, H)
    const int r = blockIdx.x;
    const bool own = r >= own_r0;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        const float l1 = lse1[(size_t)r * H + h], l2 = lse2[(size_t)r * H + h];
        const float l3 = own ? lse3[(size_t)(r - own_r0) * H + h] : -INFINITY;
        const float M = fmaxf(l1, fmaxf(l2, l3));
        const float w1 = expf(l1 - M), w2 = expf(l2 - M), w3 = expf(l3 - M); // exp(-inf) = 0
        const float sum = w1 + w2 + w3, inv = 1.f / sum;
        wts[h] = w1 * inv;
        wts[H + h] = w2 * inv;
        wts[2 * H + h] = w3 * inv;
        if (lse) lse[((size_t)sq.qrow0 + r) * H + h] = M + logf(sum);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < H * D; e += blockDim.x) {
        const int h = e / D;
        const size_t i = (size_t)r * H * D + e;
        float v = wts[h] * __bfloat162float(o1[i]) + wts[H + h] * o2[i];
        if (own) v += wts[2 * H + h] * o3[(size_t)(r - own_r0) * H * D + e];
        out[((size_t)sq.qrow0 + r) * H * D + e] = __float2bfloat16_rn(v);
    }
}

// One thread: the pairs of the anchor pass (per row: [0, A) and [g0, p], or
// [0, p] when g0 <= A; the same for every head), of the stripes (each group's
// list length times the group's rows) and of the own keys (times the last
// block's rows). Integer sums.
__global__ void pairs_kernel(AncSeq sq, int H, AncWork w, unsigned long long *pairs) {
    unsigned long long anchor = 0, sparse = 0;
    for (int p = sq.q_pos0; p < sq.N; p++) {
        const int g0 = p / sq.L * sq.L;
        anchor += g0 <= sq.A ? (unsigned long long)p + 1 : (unsigned long long)sq.A + (p - g0 + 1);
    }
    for (int gi = 0; gi < sq.ng; gi++) {
        const int g0 = (sq.g_first + gi) * sq.L;
        const int rows = min(g0 + sq.L, sq.N) - max(g0, sq.q_pos0);
        for (int h = 0; h < H; h++) sparse += (unsigned long long)w.keep_cnt[(size_t)h * sq.ng + gi] * rows;
    }
    if (sq.has_own) {
        const int rows = sq.N - max((sq.N - 1) / kAncB * kAncB, sq.q_pos0);
        for (int h = 0; h < H; h++) sparse += (unsigned long long)w.own_cnt[h] * rows;
    }
    *pairs = anchor * H + sparse;
}

__global__ void pairs_add_kernel(const unsigned long long *seq_pairs, const int32_t *bidx, int n,
                                 unsigned long long *pairs) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) pairs[bidx[i]] += seq_pairs[i]; // bidx distinct
}

template <int D>
int select_d(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w, cudaStream_t st) {
    const int H = sh.n_heads;
    pool_kernel<D><<<dim3(sq.nqb, H), D, 0, st>>>(sq, H, sh.scale, w);
    const int g_last0 = (sq.g_first + sq.ng - 1) * sq.L;
    if (g_last0 > sq.A)
        stripes_kernel<D><<<dim3((g_last0 - sq.A + kAncB - 1) / kAncB, sq.ng, H), kAncB, 0, st>>>(
            sq, H, sh.n_kv_heads, sh.page_size, sh.scale, k, w);
    compact_kernel<<<dim3(sq.ng + 1, H), kScanThreads, 0, st>>>(sq, w);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

} // namespace

int anc_mask_launch(const AncSeq &sq, int H, uint32_t *mask, cudaStream_t st) {
    mask_kernel<<<dim3(sq.nqb, H), 32, 0, st>>>(sq, mask);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_select_launch(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w,
                      cudaStream_t st) {
    return sh.head_dim == 128 ? select_d<128>(sq, sh, k, w, st) : select_d<64>(sq, sh, k, w, st);
}

int anc_merge_launch(const AncSeq &sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                     const float *lse2, const float *o3, const float *lse3, int own_r0, __nv_bfloat16 *out, float *lse,
                     cudaStream_t st) {
    merge_kernel<<<sq.n_q, 256, sizeof(float) * 3 * H, st>>>(sq, H, D, o1, lse1, o2, lse2, o3, lse3, own_r0, out, lse);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int anc_pairs_launch(const AncSeq &sq, int H, const AncWork &w, unsigned long long *pairs, cudaStream_t st) {
    pairs_kernel<<<1, 1, 0, st>>>(sq, H, w, pairs);
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
