// FlexPrefill's selection on the GPU, its last steps (flex_kern.cu has the
// sums before them, flex.cuh the order of all): the thresholds by radix
// select over the summaries, then the mask bits.
//   pool       blocks rule: pooled vertical / slash per block    grid (n_kb, H)
//   select     thresholds by radix select; slash prefix counts   grid (sel_ctas, H)
//   colsel     vertical-slash heads: blocks with a kept column    grid (n_kb, H)
//              (not for the blocks rule: the mask reads the pools)
//   mask       bits, one warp ballot per word                    grid (n_qb, H)
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>

#include "attn/cuda/flex.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kB = kFlexBlock;
constexpr int kSelThreads = 1024;

/* ---- step 3: thresholds by radix select ------------------------------------------------- */

struct Hist {
    unsigned cnt[256];
    unsigned long long mass[256];
    int bin;
    unsigned rem_k, bin_cnt, above_cnt;
    unsigned long long above_mass, total;
};

// A head's CTAs of the select (grid (sel_ctas, H)): which part of the
// candidates this CTA counts, and where the head's CTAs merge their counts.
struct SelCtx {
    int c, n_c;               // this CTA's part, the head's CTAs
    unsigned long long *hist; // the head's ring of 3 merged histograms
    unsigned *bar;            // the head's barrier counter
    unsigned calls;           // levels counted so far (the same sequence on every CTA of the head)
};

// The head's CTAs wait for each other: each arrives once per level (the
// counter only grows), so the k-th wait ends at k * n_c arrivals.
__device__ void head_sync(const SelCtx &sc, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(sc.bar, 1u);
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(sc.bar) : "memory");
            if (v < target) __nanosleep(32);
        } while (v < target);
        __threadfence();
    }
    __syncthreads();
}

// One radix level over x[0..n): counts (and masses) per byte at shift of the
// keys whose higher bytes equal prefix. Each CTA of the head counts its part
// of x. Warp-aggregated: one shared atomic per distinct bin and warp; the
// head's CTAs then add their bins into the level's merged histogram (global
// atomics) and read it back after they have all added: integer sums, so
// neither the order nor the number of CTAs changes a count.
__device__ void hist_level(const float *x, int64_t n, uint32_t prefix, uint32_t mask, int shift, bool want_mass,
                           Hist &hs, SelCtx &sc) {
    const int tid = threadIdx.x, lane = tid & 31;
    for (int b = tid; b < 256; b += blockDim.x) hs.cnt[b] = 0, hs.mass[b] = 0;
    __syncthreads();
    const int64_t part = ((n + sc.n_c - 1) / sc.n_c + blockDim.x - 1) / blockDim.x * blockDim.x;
    const int64_t i0 = (int64_t)sc.c * part, i1 = i0 + part < n ? i0 + part : n;
    for (int64_t base = i0; base < i1; base += blockDim.x) {
        const int64_t i = base + tid;
        const float v = i < i1 ? x[i] : 0.f;
        const uint32_t u = okey(v);
        const bool in = i < i1 && (u & mask) == prefix;
        const int bin = in ? (int)((u >> shift) & 255u) : 256;
        const unsigned long long fx = in && want_mass ? tofx(v) : 0ull;
        unsigned pending = __ballot_sync(0xffffffffu, in);
        while (pending) {
            const int lb = __shfl_sync(0xffffffffu, bin, __ffs(pending) - 1);
            const unsigned same = __ballot_sync(0xffffffffu, bin == lb);
            unsigned long long m = bin == lb ? fx : 0ull;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) m += __shfl_xor_sync(0xffffffffu, m, off);
            if (lane == __ffs(same) - 1) {
                atomicAdd(&hs.cnt[lb], (unsigned)__popc(same));
                if (want_mass) atomicAdd(&hs.mass[lb], m);
            }
            pending &= ~same;
        }
    }
    __syncthreads();
    if (sc.n_c > 1) {
        unsigned long long *g = sc.hist + (size_t)(sc.calls % kSelRing) * kSelHist;
        for (int b = tid; b < 256; b += blockDim.x) {
            if (hs.cnt[b]) atomicAdd(&g[b], (unsigned long long)hs.cnt[b]);
            if (hs.mass[b]) atomicAdd(&g[256 + b], hs.mass[b]);
        }
        head_sync(sc, (sc.calls + 1) * (unsigned)sc.n_c);
        for (int b = tid; b < 256; b += blockDim.x) {
            hs.cnt[b] = (unsigned)__ldcg(&g[b]);
            hs.mass[b] = __ldcg(&g[256 + b]);
        }
        // The previous level's histogram was last read before this level's
        // wait: clear it for its next turn in the ring.
        if (sc.c == 0) {
            unsigned long long *z = sc.hist + (size_t)((sc.calls + kSelRing - 1) % kSelRing) * kSelHist;
            for (int b = tid; b < kSelHist; b += blockDim.x) z[b] = 0ull;
        }
        __syncthreads();
    }
    sc.calls++;
}

// Warp 0: from the top bin down, the first bin where the running sums reach
// the goal (BY_MASS: mass >= target with at least one key; else count >= k).
// Writes hs.bin (-1: none), the count and mass strictly above it, its count,
// and the rank left inside it (count mode).
template <bool BY_MASS> __device__ void find_bin(Hist &hs, unsigned long long target, unsigned k) {
    if (threadIdx.x >= 32) return;
    const int lane = threadIdx.x;
    unsigned c[8], sc = 0;
    unsigned long long m[8], smass = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        c[i] = hs.cnt[255 - 8 * lane - i];
        m[i] = hs.mass[255 - 8 * lane - i];
        sc += c[i];
        smass += m[i];
    }
    unsigned ic = sc;
    unsigned long long im = smass;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned vc = __shfl_up_sync(0xffffffffu, ic, off);
        const unsigned long long vm = __shfl_up_sync(0xffffffffu, im, off);
        if (lane >= off) ic += vc, im += vm;
    }
    const bool ok = BY_MASS ? (im >= target && ic >= 1) : ic >= k;
    const unsigned hit = __ballot_sync(0xffffffffu, ok);
    if (lane == 0) hs.bin = -1;
    __syncwarp();
    if (hit && lane == __ffs(hit) - 1) {
        unsigned rc = ic - sc;
        unsigned long long rm = im - smass;
        for (int i = 0; i < 8; i++) {
            const bool here = BY_MASS ? (rm + m[i] >= target && rc + c[i] >= 1) : rc + c[i] >= k;
            if (here) {
                hs.bin = 255 - 8 * lane - i;
                hs.above_cnt = rc;
                hs.above_mass = rm;
                hs.bin_cnt = c[i];
                hs.rem_k = k - rc;
                break;
            }
            rc += c[i];
            rm += m[i];
        }
    }
}

// The k-th largest key of x[0..n) (1 <= k <= n).
__device__ uint32_t select_count(const float *x, int64_t n, unsigned k, Hist &hs, SelCtx &sc) {
    uint32_t prefix = 0, mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist_level(x, n, prefix, mask, shift, false, hs, sc);
        find_bin<false>(hs, 0, k);
        __syncthreads();
        if (hs.bin < 0) return 0; // unreachable: the candidates hold k keys
        prefix |= (uint32_t)hs.bin << shift;
        mask |= 255u << shift;
        k = hs.rem_k;
        __syncthreads(); // hs read by all before the next level rewrites it
    }
    return prefix;
}

// The key T of the value at which x's values in descending order first reach
// mass gamma (rel: gamma times their total, else gamma itself), all ties at T
// in; *count = keys >= T. gamma >= 1 or a total short of the goal: T = 0,
// every key (the CPU takes them all).
__device__ uint32_t select_mass(const float *x, int64_t n, float gamma, bool rel, int64_t *count, Hist &hs,
                                SelCtx &sc) {
    uint32_t prefix = 0, mask = 0;
    unsigned long long target = 0, above_mass = 0;
    int64_t above_cnt = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        hist_level(x, n, prefix, mask, shift, true, hs, sc);
        if (shift == 24) {
            if (threadIdx.x < 32) { // the total mass, for the goal
                unsigned long long s = 0;
                for (int b = threadIdx.x; b < 256; b += 32) s += hs.mass[b];
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
                if (threadIdx.x == 0) hs.total = s;
            }
            __syncthreads();
            const unsigned long long total = hs.total;
            target = rel ? (unsigned long long)((double)gamma * (double)total) : tofx(gamma);
            if (gamma >= 1.0f || total < target) {
                __syncthreads();
                *count = n;
                return 0;
            }
        }
        find_bin<true>(hs, target - above_mass, 0);
        __syncthreads();
        if (hs.bin < 0) { // unreachable: the candidates hold the rest of the goal
            __syncthreads();
            *count = n;
            return 0;
        }
        prefix |= (uint32_t)hs.bin << shift;
        mask |= 255u << shift;
        above_mass += hs.above_mass;
        above_cnt += hs.above_cnt;
        if (shift == 0) above_cnt += hs.bin_cnt;
        __syncthreads();
    }
    *count = above_cnt;
    return prefix;
}

// grid (sel_ctas, H), block kSelThreads, launched cooperatively (every CTA
// resident: a head's CTAs wait for each other at each level): the head's
// thresholds, the same on each of its CTAs, written by the first; it then
// counts, for vertical-slash heads, the kept diagonals before each offset
// (cnt[o] for o = 0..N).
__global__ void __launch_bounds__(kSelThreads) select_kernel(const FlexParams p) {
    __shared__ Hist hs;
    __shared__ int w_sum[kSelThreads / 32];
    const int h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    SelCtx sc{(int)blockIdx.x, (int)gridDim.x, p.selhist + (size_t)h * kSelRing * kSelHist, p.selbar + h, 0u};
    const bool first = blockIdx.x == 0;
    int64_t count;
    if (p.branch[h] == 1) {
        const uint32_t T =
            select_mass(p.cells + (size_t)h * p.sCells, (int64_t)p.n_qb * p.n_kb, p.gamma, false, &count, hs, sc);
        if (first && tid == 0) p.thr[4 * h] = T;
        return;
    }
    uint32_t T[2];
    for (int w = 0; w < 2; w++) { // take_mass of flex_vertical_slash, for the columns then the diagonals
        const float *x = (w == 0 ? p.vert : p.slash) + (size_t)h * p.sN;
        T[w] = select_mass(x, p.N, p.gamma, true, &count, hs, sc);
        if (p.blocks) { // flex_block_count, then the count-th largest pooled sum
            const int64_t lo = (p.lo + kB - 1) / kB, hi = p.hi > 0 ? (p.hi + kB - 1) / kB : 0;
            int64_t nb = count / kB + 1;
            if (nb < lo) nb = lo;
            if (hi > 0 && nb > hi) nb = hi;
            if (nb > p.n_kb) nb = p.n_kb;
            T[w] = select_count((w == 0 ? p.vpool : p.spool) + (size_t)h * p.sKB, p.n_kb, (unsigned)nb, hs, sc);
            if (first && tid == 0) p.thr[4 * h + 1 + w] = T[w];
            continue;
        }
        int64_t k = count;
        if (k < p.lo) k = p.lo;
        if (p.hi > 0 && k > p.hi) k = p.hi;
        if (k > p.N) k = p.N;
        if (k != count) T[w] = k > 0 ? select_count(x, p.N, (unsigned)k, hs, sc) : 0xffffffffu;
        if (first && tid == 0) p.thr[4 * h + 1 + w] = T[w];
    }
    if (!first || p.blocks) return;
    const float *sl = p.slash + (size_t)h * p.sN;
    int32_t *cnt = p.cnt + (size_t)h * (p.sN + 1);
    if (tid == 0) cnt[0] = 0;
    int carry = 0;
    for (int base = 0; base < p.N; base += kSelThreads) {
        const int o = base + tid;
        const bool f = o < p.N && okey(sl[o]) >= T[1];
        const unsigned b = __ballot_sync(0xffffffffu, f);
        if (lane == 0) w_sum[warp] = __popc(b);
        __syncthreads();
        int before = carry + __popc(b & ((1u << lane) - 1u)), total = 0;
        for (int w = 0; w < kSelThreads / 32; w++) {
            if (w < warp) before += w_sum[w];
            total += w_sum[w];
        }
        if (o < p.N) cnt[o + 1] = before + (f ? 1 : 0);
        carry += total;
        __syncthreads(); // w_sum read by all before the next chunk
    }
}

// grid (n_kb, H), block 128: vertical-slash heads, whether block kb holds a
// kept column.
__global__ void colsel_kernel(const FlexParams p) {
    const int kb = blockIdx.x, h = blockIdx.y, j = kb * kB + threadIdx.x;
    if (p.branch[h] != 0) return;
    const bool f = j < p.N && okey(p.vert[(size_t)h * p.sN + j]) >= p.thr[4 * h + 1];
    const int any = __syncthreads_or(f);
    if (threadIdx.x == 0) p.colsel[(size_t)h * p.sKB + kb] = any;
}

// grid (n_kb, H), block 128: vertical-slash heads of the blocks rule, block
// kb's pooled vertical mass and offset block kb's pooled slash mass, each a
// 2^-50 fixed-point sum (exact: any order gives it) as a float; block 0 of
// both +inf (the sink and the diagonal count first).
__global__ void pool_kernel(const FlexParams p) {
    __shared__ unsigned long long w_sum[2][kB / 32];
    const int kb = blockIdx.x, h = blockIdx.y, j = kb * kB + threadIdx.x, lane = threadIdx.x & 31,
              warp = threadIdx.x >> 5;
    if (p.branch[h] != 0) return;
    unsigned long long v = j < p.N ? tofx(p.vert[(size_t)h * p.sN + j]) : 0ull,
                       s = j < p.N ? tofx(p.slash[(size_t)h * p.sN + j]) : 0ull;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, off);
        s += __shfl_xor_sync(0xffffffffu, s, off);
    }
    if (lane == 0) w_sum[0][warp] = v, w_sum[1][warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        v = s = 0ull;
        for (int w = 0; w < kB / 32; w++) v += w_sum[0][w], s += w_sum[1][w];
        p.vpool[(size_t)h * p.sKB + kb] = kb == 0 ? INFINITY : __double2float_rn(__ull2double_rn(v));
        p.spool[(size_t)h * p.sKB + kb] = kb == 0 ? INFINITY : __double2float_rn(__ull2double_rn(s));
    }
}

/* ---- step 4: the bits --------------------------------------------------------------------- */

// grid (n_qb, H), block 128: one word per warp and pass. small, or a query
// block from whole_qb on (the prompt's last rows): every causal bit. Else
// sink and diagonal, plus query-aware cells >= T, or vertical-slash
// blocks with a kept column or a kept diagonal o in [p0 - kb*B - (B-1),
// p1 - kb*B] (the rows p0..p1 of the query block reach key block kb along o).
template <bool SMALL> __global__ void mask_kernel(const FlexParams p) {
    const int i = blockIdx.x, h = blockIdx.y, qb = p.qb0 + i, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int br = 0;
    uint32_t T = 0;
    if (!SMALL) {
        br = p.branch[h];
        T = br == 1 ? p.thr[4 * h] : 0;
    }
    const int p0 = qb * kB > p.q_pos0 ? qb * kB : p.q_pos0,
              p1 = (qb + 1) * kB - 1 < p.N - 1 ? (qb + 1) * kB - 1 : p.N - 1;
    const float *row = p.cells + (size_t)h * p.sCells + (size_t)i * p.n_kb;
    const int32_t *cnt = p.cnt + (size_t)h * (p.sN + 1);
    uint32_t *out = p.mask + ((size_t)h * p.n_qb + i) * p.words;
    const bool whole = SMALL || qb >= p.whole_qb;
    for (int w = warp; w < p.words; w += blockDim.x / 32) {
        const int kb = w * 32 + lane;
        bool bit = kb <= qb;
        if (!whole && bit && kb != 0 && kb != qb) {
            if (br == 1) {
                bit = okey(row[kb]) >= T;
            } else if (p.blocks) {
                bit = okey(p.vpool[(size_t)h * p.sKB + kb]) >= p.thr[4 * h + 1] ||
                      okey(p.spool[(size_t)h * p.sKB + qb - kb]) >= p.thr[4 * h + 2];
            } else {
                bit = p.colsel[(size_t)h * p.sKB + kb] != 0;
                if (!bit) {
                    const int lo = p0 - kb * kB - (kB - 1) > 0 ? p0 - kb * kB - (kB - 1) : 0;
                    const int hi = p1 - kb * kB < p.N - 1 ? p1 - kb * kB : p.N - 1;
                    bit = cnt[hi + 1] - cnt[lo] > 0;
                }
            }
        }
        const unsigned word = __ballot_sync(0xffffffffu, bit);
        if (lane == 0) out[w] = word;
    }
}

} // namespace

// A head's CTAs of the select: as many as fit the device at once beside
// the other heads' (a cooperative launch must), at most 16; 1 (an ordinary
// launch) when fewer than 2 fit. A cooperative grid's CTAs are all resident
// together even beside other streams' kernels (context-parallel ranks'
// selections run at once on one GPU), so the waits end.
// LACUNA_FLEX_SEL_CTAS=n asks for at most n (check_flex_cuda: 1 and the
// default give the same masks).
int attn_flex_sel_ctas(int H) {
    int dev = 0, sms = 0, per_sm = 0, coop = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, select_kernel, kSelThreads, 0) != cudaSuccess)
        return -1;
    if (!coop) return 1;
    int c = per_sm * sms / (H > 0 ? H : 1);
    if (c > 16) c = 16;
    const char *e = getenv("LACUNA_FLEX_SEL_CTAS");
    if (e && atoi(e) >= 1 && atoi(e) < c) c = atoi(e);
    return c >= 1 ? c : 1;
}

int attn_flex_small_launch(const FlexParams &p, cudaStream_t st) {
    mask_kernel<true><<<dim3(p.n_qb, p.H), 128, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// The thresholds and the bits, after the summaries (flex_kern.cu's launch_rest).
int attn_flex_choose_launch(const FlexParams &p, cudaStream_t st) {
    const int H = p.H;
    if (p.blocks) pool_kernel<<<dim3(p.n_kb, H), kB, 0, st>>>(p);
    if (p.sel_ctas > 1) { // a head's CTAs merge each level and wait for each other: all resident (cooperative)
        CUDA_CHECK_RET(cudaMemsetAsync(p.selhist, 0, sizeof(unsigned long long) * (size_t)H * kSelRing * kSelHist, st));
        CUDA_CHECK_RET(cudaMemsetAsync(p.selbar, 0, sizeof(unsigned) * (size_t)H, st));
        void *args[] = {const_cast<FlexParams *>(&p)};
        CUDA_CHECK_RET(cudaLaunchCooperativeKernel((const void *)select_kernel, dim3(p.sel_ctas, H), dim3(kSelThreads),
                                                   args, 0, st));
    } else {
        select_kernel<<<dim3(1, H), kSelThreads, 0, st>>>(p);
    }
    if (!p.blocks) colsel_kernel<<<dim3(p.n_kb, H), kB, 0, st>>>(p);
    mask_kernel<false><<<dim3(p.n_qb, H), 128, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}
