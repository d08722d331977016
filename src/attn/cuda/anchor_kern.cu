// AnchorAttention's selection kernels (anchor_cuda.h says what each step
// computes; anchor.cu runs them): the anchor pass's block masks, the pooled
// queries and anchors, the stripe and own-key tests as bit sets (scores on
// the tensor cores), the whole kept key blocks as block masks for the dense
// kernel, the compaction of the other kept keys into ascending key lists,
// the LSE merges of the passes and the pair count. No float atomics
// anywhere: every sum runs in a fixed order.
#include <math.h>

#include "attn/cuda/anchor.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kScanThreads = 512;
constexpr int kSelThreads = 128; // four warps
constexpr int kSelKeys = 64;     // candidate keys per selection CTA

// Row j of one head's K or V in the paged pool.
__device__ __forceinline__ const __nv_bfloat16 *pool_row(const __nv_bfloat16 *pool, const int32_t *pages, int ps,
                                                         int KH, int kh, int D, int64_t j) {
    return pool + (((size_t)pages[j / ps] * KH + kh) * ps + j % ps) * D;
}

// grid (nqb, H), 32 threads: row (h, qb) of the anchor pass's masks. Key
// block kb is on when it holds initial-window keys ([0, A)), local-window keys
// ([lo, qb]) or when the local window starts inside the initial window (then
// the CPU attends [0, p] whole); bits above the diagonal stay 0.
__global__ void mask_kernel(AncSeq sq, uint32_t *mask) {
    const int h = blockIdx.y, qb = sq.qb0 + blockIdx.x;
    const int n_kb = (sq.N - 1) / kAncB + 1, words = (n_kb + 31) / 32;
    const int lo = anc_lo(sq, qb * kAncB / sq.L * sq.L), a_kb = sq.A / kAncB, g_kb = lo / kAncB;
    const bool all = lo <= sq.A;
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

// Two f32 values as bf16 pairs hi + lo (hi = bf16(x), lo = bf16(x - hi)),
// part 0 the hi pair, 1 the lo pair: an MMA over both keeps about 16 bits
// of the f32 mantissa, so the pooled scores match the CPU's f32 ones to far
// below a threshold's sensitivity.
__device__ __forceinline__ uint32_t split_bf16(const float *p, int part) {
    const float2 x = *reinterpret_cast<const float2 *>(p);
    const __nv_bfloat162 hv = __floats2bfloat162_rn(x.x, x.y);
    if (part == 0) return *reinterpret_cast<const uint32_t *>(&hv);
    const float2 hf = __bfloat1622float2(hv);
    return pack_bf16(x.x - hf.x, x.y - hf.y);
}

// A warp's 64-bit set (key i of the tile = bit i) ORed over all its lanes.
__device__ __forceinline__ unsigned long long warp_or(unsigned long long x) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) x |= __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// grid ((lo_last - A) / 64, ng, H), kSelThreads: the 64 candidate keys j0 ..
// j0 + 63 (j0 = A + 64 x: inside one page, never straddling lo, two bit
// words) for group gi, on mma.sync. Key j of [A, lo) is kept when some
// block b of the group in the chunk has qbar_b.k_j + theta >= abar_b (qbar
// as bf16 hi + lo, so the pooled score keeps f32 precision); in the group
// holding the chunk's last row, a key not kept is tail block t's own when
// some row r of that block among the chunk's last 128 has scale q_r.k_j +
// theta >= rowmax_r. Warps take 16-row tiles of the pooled rows, then of
// those last rows (a tile may straddle the two tail blocks: each row ORs
// into its block's set); each ORs its hits into the tile's words (integer
// OR: any order gives the same bits).
template <int D>
__global__ void __launch_bounds__(kSelThreads)
    select_kernel(AncSeq sq, int H, int KH, int ps, float scale, const __nv_bfloat16 *k, AncWork w) {
    constexpr int RS = D + 8; // padded row (bf16): ldmatrix's eight rows in distinct banks
    __shared__ __align__(16) __nv_bfloat16 ks[kSelKeys * RS];
    __shared__ unsigned s_keep[2], s_own[2][2];
    const int h = blockIdx.z, kh = h / (H / KH), gi = blockIdx.y;
    const int g0 = (sq.g_first + gi) * sq.L, j0 = sq.A + kSelKeys * (int)blockIdx.x;
    if (j0 >= anc_lo(sq, g0)) return; // past this group's candidates (CTA-uniform)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bool last = g0 + sq.L >= sq.N, all = isinf(sq.theta) && sq.theta > 0;
    if (tid < 2) {
        s_keep[tid] = all ? ~0u : 0u;
        s_own[0][tid] = s_own[1][tid] = 0u;
    }
    if (!all) { // the tile: 64 consecutive rows of one page
        const __nv_bfloat16 *kt = pool_row(k, sq.pages, ps, KH, kh, D, j0);
        constexpr int kVecs = D / 8;
        for (int i = tid; i < kSelKeys * kVecs; i += kSelThreads) {
            const int r = i / kVecs, x = (i % kVecs) * 8;
            *reinterpret_cast<uint4 *>(ks + r * RS + x) = *reinterpret_cast<const uint4 *>(kt + (size_t)r * D + x);
        }
    }
    __syncthreads();
    const float theta = sq.theta;
    const int g = lane >> 2, qd = (lane & 3) * 2, mat = lane >> 3, r8 = lane & 7;
    const int tk = (mat >> 1) * 8 + r8; // ldmatrix: keys +0 / +8 (mat / 2) x dims +0 / +8 (mat % 2)
    const uint32_t kb = smem_u32(ks);
    // s (16 rows x 64 keys) += A K^T; s[nt]: keys 8 nt + qd + {0, 1}, rows g ([0..1]) and g + 8 ([2..3])
    auto scores = [&](const uint32_t(&a)[D / 16][4], float(&s)[kSelKeys / 8][4]) {
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
            for (int jj = 0; jj < kSelKeys / 16; jj++) {
                uint32_t r[4];
                ldmatrix_x4(r, kb + (uint32_t)((16 * jj + tk) * RS + 16 * kk + 8 * (mat & 1)) * 2);
                mma_bf16_16816(s[2 * jj], a[kk], r[0], r[1]);
                mma_bf16_16816(s[2 * jj + 1], a[kk], r[2], r[3]);
            }
    };
    if (!all) {
        // pooled rows: the group's blocks in the chunk
        const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
        const int bi0 = q0 / kAncB - sq.qb0, nb = (q1 - 1) / kAncB - q0 / kAncB + 1;
        unsigned long long hit = 0;
        for (int mt = warp; 16 * mt < nb; mt += kSelThreads / 32) {
            const int ra = 16 * mt + g, rb = ra + 8;
            const float *pa = w.qbar + ((size_t)h * w.max_blk + bi0 + min(ra, nb - 1)) * D + qd;
            const float *pb = w.qbar + ((size_t)h * w.max_blk + bi0 + min(rb, nb - 1)) * D + qd;
            float s[kSelKeys / 8][4];
#pragma unroll
            for (int nt = 0; nt < kSelKeys / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll 1
            for (int part = 0; part < 2; part++) { // hi, then lo: one set of fragments live at a time
                uint32_t a[D / 16][4];
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    a[kk][0] = split_bf16(pa + 16 * kk, part);
                    a[kk][1] = split_bf16(pb + 16 * kk, part);
                    a[kk][2] = split_bf16(pa + 16 * kk + 8, part);
                    a[kk][3] = split_bf16(pb + 16 * kk + 8, part);
                }
                scores(a, s);
            }
            const float aa = ra < nb ? w.abar[(size_t)h * w.max_blk + bi0 + ra] : INFINITY;
            const float ab = rb < nb ? w.abar[(size_t)h * w.max_blk + bi0 + rb] : INFINITY;
#pragma unroll
            for (int nt = 0; nt < kSelKeys / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (s[nt][e] + theta >= (e < 2 ? aa : ab)) hit |= 1ull << (8 * nt + qd + (e & 1));
        }
        hit = warp_or(hit);
        if (lane == 0 && hit) {
            atomicOr(&s_keep[0], (unsigned)hit);
            atomicOr(&s_keep[1], (unsigned)(hit >> 32));
        }
        // the chunk's last 128 rows, one by one
        if (last && sq.n_ob > 0) {
            const int r0 = anc_test_p0(sq) - sq.q_pos0, nr = sq.n_q - r0;
            unsigned long long mine[2] = {0, 0};
            for (int mt = warp; 16 * mt < nr; mt += kSelThreads / 32) {
                const int ra = r0 + 16 * mt + g, rb = ra + 8;
                const bool va = ra < sq.n_q, vb = rb < sq.n_q;
                const __nv_bfloat16 *pa = w.q + ((size_t)(va ? ra : r0) * H + h) * D + qd;
                const __nv_bfloat16 *pb = w.q + ((size_t)(vb ? rb : r0) * H + h) * D + qd;
                uint32_t a[D / 16][4];
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++) {
                    a[kk][0] = *reinterpret_cast<const uint32_t *>(pa + 16 * kk);
                    a[kk][1] = *reinterpret_cast<const uint32_t *>(pb + 16 * kk);
                    a[kk][2] = *reinterpret_cast<const uint32_t *>(pa + 16 * kk + 8);
                    a[kk][3] = *reinterpret_cast<const uint32_t *>(pb + 16 * kk + 8);
                }
                float s[kSelKeys / 8][4];
#pragma unroll
                for (int nt = 0; nt < kSelKeys / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
                scores(a, s);
                const float ma = va ? w.rowmax[(size_t)ra * H + h] : INFINITY;
                const float mb = vb ? w.rowmax[(size_t)rb * H + h] : INFINITY;
                // each row's tail block (0 or 1; an invalid row never hits)
                const int ta = (sq.q_pos0 + ra) / kAncB - sq.own_b0 > 0, tb = (sq.q_pos0 + rb) / kAncB - sq.own_b0 > 0;
#pragma unroll
                for (int nt = 0; nt < kSelKeys / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (s[nt][e] * scale + theta >= (e < 2 ? ma : mb))
                            mine[e < 2 ? ta : tb] |= 1ull << (8 * nt + qd + (e & 1));
            }
#pragma unroll
            for (int t = 0; t < 2; t++) {
                const unsigned long long m = warp_or(mine[t]);
                if (lane == 0 && m) {
                    atomicOr(&s_own[t][0], (unsigned)m);
                    atomicOr(&s_own[t][1], (unsigned)(m >> 32));
                }
            }
        }
    }
    __syncthreads();
    if (tid < 2) {
        const size_t wi = (size_t)j0 / 32 + tid;
        w.keep_bits[((size_t)h * sq.ng + gi) * w.wcap + wi] = s_keep[tid];
        if (last)
            for (int t = 0; t < 2; t++) w.own_bits[((size_t)h * 2 + t) * w.wcap + wi] = s_own[t][tid] & ~s_keep[tid];
    }
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

// grid (ng, H), 128 threads: group gi's key blocks of 128 kept whole (all
// four bit words of the block set) into full_bits and their count, and the
// group's query blocks' rows of mask2 (the anchor pass's mask layout) with
// those blocks: the dense kernel attends them (mask_only), the gather kernel
// the rest. Thread t takes mask words t, t + 128, ...
__global__ void __launch_bounds__(128) promote_kernel(AncSeq sq, AncWork w) {
    __shared__ int s_cnt;
    const int h = blockIdx.y, gi = blockIdx.x;
    const int g0 = (sq.g_first + gi) * sq.L, lo = anc_lo(sq, g0);
    const int kb_lo = sq.A / kAncB, kb_hi = lo / kAncB; // the candidates' key blocks (none when lo <= A)
    const int n_kb = (sq.N - 1) / kAncB + 1, words = (n_kb + 31) / 32;
    const int qb_lo = max(g0, sq.q_pos0) / kAncB, qb_hi = (min(g0 + sq.L, sq.N) - 1) / kAncB;
    const uint32_t *keep = w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap;
    uint32_t *full = w.full_bits + ((size_t)h * sq.ng + gi) * w.fwcap;
    if (threadIdx.x == 0) s_cnt = 0;
    __syncthreads();
    int cnt = 0;
    for (int wd = threadIdx.x; wd < words; wd += blockDim.x) {
        uint32_t f = 0;
        for (int b = 0; b < 32; b++) {
            const int kb = 32 * wd + b;
            if (kb < kb_lo || kb >= kb_hi) continue;
            const uint32_t *k4 = keep + (size_t)kb * 4;
            if ((k4[0] & k4[1] & k4[2] & k4[3]) == ~0u) f |= 1u << b;
        }
        full[wd] = f;
        cnt += __popc(f);
        for (int qb = qb_lo; qb <= qb_hi; qb++)
            w.mask2[sq.mask_off + ((size_t)h * sq.nqb + (qb - sq.qb0)) * words + wd] = f;
    }
    atomicAdd(&s_cnt, cnt); // integer: the same sum in any order
    __syncthreads();
    if (threadIdx.x == 0) w.full_cnt[(size_t)h * sq.ng + gi] = s_cnt;
}

// grid (ng + 2, H), kScanThreads: block gi < ng compacts group gi's kept
// bits but its whole kept blocks, block ng + t tail block t's own bits, into
// ascending positions (thread t takes one 32-key word; a block scan in word
// order places its keys) and the count.
__global__ void __launch_bounds__(kScanThreads) compact_kernel(AncSeq sq, AncWork w) {
    __shared__ int w_tot[kScanThreads / 32];
    const int h = blockIdx.y, gi = blockIdx.x, own = gi >= sq.ng, t = gi - sq.ng;
    const int g0 = (sq.g_first + (own ? sq.ng - 1 : gi)) * sq.L;
    const uint32_t *bits =
        own ? w.own_bits + ((size_t)h * 2 + t) * w.wcap : w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap;
    int32_t *out =
        own ? w.own_list + ((size_t)h * 2 + t) * w.max_kv : w.keep_list + ((size_t)h * sq.ng + gi) * w.max_kv;
    const uint32_t *full = own ? nullptr : w.full_bits + ((size_t)h * sq.ng + gi) * w.fwcap;
    const int w_lo = sq.A / 32, w_hi = own && t >= sq.n_ob ? w_lo : max(w_lo, anc_lo(sq, g0) / 32);
    int before = 0;
    for (int w0 = w_lo; w0 < w_hi; w0 += kScanThreads) {
        const int wi = w0 + threadIdx.x;
        uint32_t b = wi < w_hi ? bits[wi] : 0u;
        if (full && b && (full[wi / 128] >> ((wi / 4) % 32) & 1u)) b = 0; // the dense kernel's
        int tot;
        int pos = before + block_scan(__popc(b), w_tot, &tot);
        for (uint32_t x = b; x; x &= x - 1) out[pos++] = 32 * wi + __ffs(x) - 1;
        before += tot;
    }
    if (threadIdx.x == 0) {
        if (own)
            w.own_cnt[h * 2 + t] = before;
        else
            w.keep_cnt[(size_t)h * sq.ng + gi] = before;
    }
}

// grid (n_q - own_r0), 128 threads, 2 H floats of dynamic shared memory:
// the tail rows' own-key pass (o3, lse3) folded into their stripes' (o2,
// lse2) by LSE weights, in place; a row and head with neither stays (0,
// -inf).
__global__ void own_merge_kernel(int H, int D, float *o2, float *lse2, const float *o3, const float *lse3, int own_r0) {
    extern __shared__ float wts[]; // (2, H)
    const int r = own_r0 + blockIdx.x;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        const float l2 = lse2[(size_t)r * H + h], l3 = lse3[(size_t)blockIdx.x * H + h], M = fmaxf(l2, l3);
        if (M == -INFINITY) {
            wts[h] = 1.f, wts[H + h] = 0.f;
            continue;
        }
        const float w2 = expf(l2 - M), w3 = expf(l3 - M), inv = 1.f / (w2 + w3);
        wts[h] = w2 * inv;
        wts[H + h] = w3 * inv;
        lse2[(size_t)r * H + h] = M + logf(w2 + w3);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < H * D; e += blockDim.x) {
        const int h = e / D;
        float *p = o2 + (size_t)r * H * D + e;
        *p = wts[h] * *p + wts[H + h] * o3[(size_t)blockIdx.x * H * D + e];
    }
}

// grid (n_q), 256 threads, 3 H floats of dynamic shared memory: each row's
// weights per head, then out = sum_i w_i o_i / sum_i w_i in the fixed order
// anchor, stripes (with the own keys), whole blocks; lse = M + log sum_i
// w_i. The anchor pass attends the row's own position, so its LSE is finite
// and M is too.
__global__ void merge_kernel(AncSeq sq, int H, int D, const __nv_bfloat16 *o1, const float *lse1, const float *o2,
                             const float *lse2, const __nv_bfloat16 *o4, const float *lse4, __nv_bfloat16 *out,
                             float *lse) {
    extern __shared__ float wts[]; // (3, H)
    const int r = blockIdx.x;
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        const float l1 = lse1[(size_t)r * H + h], l2 = lse2[(size_t)r * H + h], l4 = lse4[(size_t)r * H + h];
        const float M = fmaxf(l1, fmaxf(l2, l4));
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

// One thread: the pairs of the anchor pass (per row: [0, A) and [lo, p], or
// [0, p] when lo <= A; the same for every head), of the stripes (each group's
// list length and whole blocks times the group's rows) and of the own keys
// (each tail block's list length times its rows). Integer sums.
__global__ void pairs_kernel(AncSeq sq, int H, AncWork w, unsigned long long *pairs) {
    unsigned long long anchor = 0, sparse = 0;
    for (int p = sq.q_pos0; p < sq.N; p++) {
        const int lo = anc_lo(sq, p / sq.L * sq.L);
        anchor += lo <= sq.A ? (unsigned long long)p + 1 : (unsigned long long)sq.A + (p - lo + 1);
    }
    for (int gi = 0; gi < sq.ng; gi++) {
        const int g0 = (sq.g_first + gi) * sq.L;
        const int rows = min(g0 + sq.L, sq.N) - max(g0, sq.q_pos0);
        for (int h = 0; h < H; h++)
            sparse += ((unsigned long long)w.keep_cnt[(size_t)h * sq.ng + gi] +
                       (unsigned long long)kAncB * w.full_cnt[(size_t)h * sq.ng + gi]) *
                      rows;
    }
    for (int t = 0; t < sq.n_ob; t++) {
        const int b0 = (sq.own_b0 + t) * kAncB, rows = min(b0 + kAncB, sq.N) - max(b0, sq.q_pos0);
        for (int h = 0; h < H; h++) sparse += (unsigned long long)w.own_cnt[h * 2 + t] * rows;
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
    const int lo_last = anc_lo(sq, (sq.g_first + sq.ng - 1) * sq.L);
    if (lo_last > sq.A) // lo_last - A: a multiple of 128
        select_kernel<D><<<dim3((lo_last - sq.A) / kSelKeys, sq.ng, H), kSelThreads, 0, st>>>(
            sq, H, sh.n_kv_heads, sh.page_size, sh.scale, k, w);
    promote_kernel<<<dim3(sq.ng, H), 128, 0, st>>>(sq, w);
    compact_kernel<<<dim3(sq.ng + 2, H), kScanThreads, 0, st>>>(sq, w);
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

int anc_own_merge_launch(const AncSeq &sq, int H, int D, float *o2, float *lse2, const float *o3, const float *lse3,
                         int own_r0, cudaStream_t st) {
    if (own_r0 >= sq.n_q) return 0;
    own_merge_kernel<<<sq.n_q - own_r0, 128, sizeof(float) * 2 * H, st>>>(H, D, o2, lse2, o3, lse3, own_r0);
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
