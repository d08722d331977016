// FlexPrefill's selection on the GPU, the kernels (flex.cu has the host side,
// flex_cuda.h the contract; the CPU reference is src/attn/cpu/flex.c, whose
// arithmetic the kernels follow where it is cheap to: f32 scores, double
// block estimates and divergence).
//
// Each kernel below is launched per selecting sequence with the sequence's
// scalars in FlexParams (flex.cuh). Kernels of one sequence, in stream order:
//   rep_prep   the R representative rows, scaled, transposed   grid (128, H)
//   score<0>   per 128-key tile: row max and sum of exp          grid (a wave's CTAs a head, H)
//   merge_ml   per row: global max and sum over the tiles         grid (R/8, H)
//   score<1>   per tile: probabilities; vertical mass per key,
//              slash partials per (tile, diagonal)               grid (the same)
//   slash      per diagonal offset: its (at most two) partials   grid (N/256, H)
//   kpool      mean key of each block per kv head                grid (n_kb, KH)
//   diverge_blocks  per key block: estimate and vertical mass    grid (n_kb/32, H)
//   diverge    JS distance, the head's pattern                   grid H
//   qpool      query-aware heads: mean query per query block     grid (n_qb, H)
//   cells      query-aware heads: block softmax per query block  grid (n_qb, H)
//   then flex_sel.cu's pool, select, colsel and mask: the thresholds and the bits
// Spread over a ring's ranks (attn_flex_dist_launch), each rank runs score,
// kpool and qpool (every head) on the tiles and query blocks it holds, with
// the representative rows gathered first (dist_rep, dist_cast), and the
// caller sums the tables between the phases; the rest runs on every rank.
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>

#include "attn/cuda/flex.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kB = kFlexBlock;
// score_kernel<1>'s slash sums: a quarter tile (kQR rows) of probabilities at
// a time, row lr's key c at column lr + kB - 1 - c (its diagonal's, less
// the quarter's first row), pitch kDP (>= kQR + kB - 1; 164: the rows' stores
// at most two-way bank conflicts)
constexpr int kQR = 32;
constexpr int kDP = 164;
static_assert(kDP >= kQR + kB - 1, "a quarter's diagonals fit a row");
constexpr int kScoreThreads = 256;
constexpr int kMaxD = 256; // head_dim 64, 128 or 256
// score_kernel<MODE>: the staged bf16 rows and keys (pitch head_dim + 8);
// MODE 0: two tiles' keys; MODE 1: one, and a quarter tile's probabilities
constexpr size_t score_smem(int D, int mode) {
    return mode ? (size_t)2 * kB * (D + 8) * 2 + sizeof(float) * kQR * kDP : (size_t)3 * kB * (D + 8) * 2;
}

/* ---- step 1: the representative rows' attention ---------------------------------------- */

// grid (128, H), block D: qs[h][e][r] = q * scale (the CPU's float product).
__global__ void rep_prep_kernel(const FlexParams p) {
    const int r = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
    float v = 0.f;
    if (r < p.R) {
        const size_t row = (size_t)p.rep_row0 + r;
        v = __fmul_rn(__bfloat162float(p.q[(row * p.H + h) * p.D + e]), p.scale);
    }
    p.qs[((size_t)h * p.D + e) * kB + r] = v;
}

// Key tile t's row r's page id (-1 past N, or for t < 0): thread r < 128's part of a tile's staging.
__device__ __forceinline__ int32_t score_page(const FlexParams &p, int t, int r) {
    const int j = t * kB + r;
    return t >= 0 && j < p.N ? p.pages[j / p.ps] : -1;
}

// The 16-byte pieces of key tile t (128 keys, zero past N) into Kb, in
// flight (cp.async, one group), from the rows' page ids in s_pg.
__device__ __forceinline__ void score_stage_keys(const FlexParams &p, int t, int kh, __nv_bfloat16 *Kb, int pitch,
                                                 const int32_t *s_pg) {
    const int per_row = p.D / 8;
    for (int i = threadIdx.x; i < kB * per_row; i += kScoreThreads) {
        const int r = i / per_row, c = i % per_row, pg = s_pg[r];
        const __nv_bfloat16 *src =
            pg >= 0 ? p.k + (((size_t)pg * p.KH + kh) * p.ps + (t * kB + r) % p.ps) * p.D + 8 * c : p.k;
        cp_async16(smem_u32(Kb + r * pitch + 8 * c), src, pg >= 0 ? 16 : 0);
    }
    cp_async_commit();
}

// grid (score CTAs, H), block 256: each CTA takes the key tiles
// blockIdx.x, blockIdx.x + gridDim.x, ... of its head (of p.tiles where
// set), so a tile's arithmetic is the same whichever CTA takes it. The
// representative rows are staged once; each tile's 128 keys (bf16, pitch
// D + 8: conflict-free fragment loads; cp.async, zero past R rows and past
// N keys) load while the previous tile's sums run (MODE 0, whose sums are
// short: while its products run too, into a second buffer). q.k on tensor cores
// (exact bf16 products, f32 sums), times the scale, masked -inf. Warp w
// owns rows 16w .. 16w+15 against all 128 keys; lane (g, tq) rows 16w+g
// and 16w+g+8, columns 8n+2tq and 8n+2tq+1 of n = 0..15.
// MODE 0: per row the tile's max and sum of exp, in registers (the lane's
// 32 values in column order, then its quad's butterfly).
// MODE 1: probabilities exp(s - m) / (l R); column sums (vertical mass:
// each warp's 16 rows by butterfly, then the 8 warps in order) and per
// diagonal dd (offset P0 - j0 - 127 + dd) the sum over its rows (slash
// partials: a quarter tile's probabilities at a time in shared memory,
// skewed so that a diagonal is a column; thread dd sums its column, even
// and odd rows apart, and adds the quarters in order).
template <int MODE> __global__ void __launch_bounds__(kScoreThreads) score_kernel(const FlexParams p) {
    extern __shared__ __align__(16) unsigned char score_sm[];
    const int pitch = p.D + 8;
    __nv_bfloat16 *Qb = reinterpret_cast<__nv_bfloat16 *>(score_sm);
    __nv_bfloat16 *Kb = Qb + kB * pitch;
    float *S = reinterpret_cast<float *>(Kb + kB * pitch); // MODE 1: a quarter tile's probabilities, skewed
    // MODE 0: the keys of tile k in buffer k % 2 (the second in S's place)
    __shared__ float s_m[kB], s_w[kB];
    __shared__ float s_col[kScoreThreads / 32][kB];
    const int h = blockIdx.y, kh = h / p.G, tid = threadIdx.x;
    const int n_t = p.tiles ? p.n_tiles : p.n_kb;
    if (MODE == 1) // the cells no row writes (column < lr or > lr + kB - 1) stay 0
        for (int i = tid; i < kQR * kDP; i += kScoreThreads) S[i] = 0.f;
    if (MODE == 1 && tid < kB) {
        const int r = tid < p.R ? tid : 0;
        s_m[tid] = p.mrow[(size_t)h * kB + r];
        s_w[tid] = 1.0f / __fmul_rn(p.lrow[(size_t)h * kB + r], (float)p.R);
    }
    const int per_row = p.D / 8;
    for (int i = tid; i < kB * per_row; i += kScoreThreads) {
        const int r = i / per_row, c = i % per_row;
        const __nv_bfloat16 *src = r < p.R ? p.q + (((size_t)p.rep_row0 + r) * p.H + h) * p.D + 8 * c : p.q;
        cp_async16(smem_u32(Qb + r * pitch + 8 * c), src, r < p.R ? 16 : 0);
    }
    // the page ids of the rows of the tiles to stage: MODE 1 the next tile's
    // in s_pg[0]; MODE 0 tile k + 1's in s_pg[(k + 1) % 2]
    __shared__ int32_t s_pg[2][kB];
    // the launch gives every CTA a tile (grid x <= n_t); one without would stage zeros
    const auto tile_of = [&](int ti) { return ti < n_t ? (p.tiles ? p.tiles[ti] : ti) : -1; };
    const int t_first = tile_of((int)blockIdx.x);
    if (tid < kB) {
        s_pg[0][tid] = score_page(p, t_first, tid);
        if (MODE == 0) s_pg[1][tid] = score_page(p, tile_of((int)(blockIdx.x + gridDim.x)), tid);
    }
    __syncthreads();
    score_stage_keys(p, t_first, kh, Kb, pitch, s_pg[0]);
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
    const int rlo = 16 * warp + g, rhi = rlo + 8;
    for (int ti = blockIdx.x, it = 0; ti < n_t; ti += (int)gridDim.x, it++) {
        const int t = tile_of(ti), j0 = t * kB;
        const int tn = tile_of(ti + (int)gridDim.x); // the next tile (-1: none)
        cp_async_wait<0>();
        __syncthreads(); // the tile's keys (and the rows) are here; the previous tile's products and sums are done
        const __nv_bfloat16 *Kc = Kb + (MODE == 0 ? (it & 1) : 0) * kB * pitch;
        int32_t pgn; // lands during the products: MODE 0 the tile after next's page ids, MODE 1 the next's
        if (MODE == 0) {
            if (tn >= 0) score_stage_keys(p, tn, kh, Kb + ((it + 1) & 1) * kB * pitch, pitch, s_pg[(it + 1) & 1]);
            const int tnn = tile_of(ti + 2 * (int)gridDim.x);
            pgn = tnn >= 0 && tid < kB ? score_page(p, tnn, tid) : -1;
        } else {
            pgn = tn >= 0 && tid < kB ? score_page(p, tn, tid) : -1;
        }
        float acc[kB / 8][4];
#pragma unroll
        for (int n = 0; n < kB / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
        const __nv_bfloat16 *qa = Qb + rlo * pitch + 2 * tq, *qb = qa + 8 * pitch;
        for (int kk = 0; kk < p.D; kk += 16) {
            const uint32_t a[4] = {
                *reinterpret_cast<const uint32_t *>(qa + kk), *reinterpret_cast<const uint32_t *>(qb + kk),
                *reinterpret_cast<const uint32_t *>(qa + kk + 8), *reinterpret_cast<const uint32_t *>(qb + kk + 8)};
#pragma unroll
            for (int n = 0; n < kB / 8; n++) {
                const __nv_bfloat16 *kr = Kc + (8 * n + g) * pitch + kk + 2 * tq;
                mma_bf16_16816(acc[n], a, *reinterpret_cast<const uint32_t *>(kr),
                               *reinterpret_cast<const uint32_t *>(kr + 8));
            }
        }
        if (MODE == 0) {
            // s_pg[it % 2] was last read staging this tile, before the loop's wait
            if (tid < kB) s_pg[it & 1][tid] = pgn;
        } else {
            if (tid < kB) s_pg[0][tid] = pgn;
            __syncthreads(); // every warp's products are done: the next tile's keys load while this one's sums run
            if (tn >= 0) score_stage_keys(p, tn, kh, Kb, pitch, s_pg[0]);
        }
        // the scaled scores, masked (rows >= R, keys >= N, above the causal line)
#pragma unroll
        for (int n = 0; n < kB / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e < 2 ? rlo : rhi, j = j0 + 8 * n + 2 * tq + (e & 1);
                acc[n][e] = r < p.R && j < p.N && j <= p.P0 + r ? acc[n][e] * p.scale : -INFINITY;
            }
        if (MODE == 0) {
            float mlo = -INFINITY, mhi = -INFINITY;
#pragma unroll
            for (int n = 0; n < kB / 8; n++) {
                mlo = fmaxf(mlo, fmaxf(acc[n][0], acc[n][1]));
                mhi = fmaxf(mhi, fmaxf(acc[n][2], acc[n][3]));
            }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                mlo = fmaxf(mlo, __shfl_xor_sync(0xffffffffu, mlo, off));
                mhi = fmaxf(mhi, __shfl_xor_sync(0xffffffffu, mhi, off));
            }
            float llo = 0.f, lhi = 0.f;
#pragma unroll
            for (int n = 0; n < kB / 8; n++) {
                if (mlo > -INFINITY) llo += expf(acc[n][0] - mlo) + expf(acc[n][1] - mlo);
                if (mhi > -INFINITY) lhi += expf(acc[n][2] - mhi) + expf(acc[n][3] - mhi);
            }
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                llo += __shfl_xor_sync(0xffffffffu, llo, off);
                lhi += __shfl_xor_sync(0xffffffffu, lhi, off);
            }
            if (tq == 0) {
                float *pm = p.pm + ((size_t)h * p.n_kb + t) * kB, *pl = p.pl + ((size_t)h * p.n_kb + t) * kB;
                if (rlo < p.R) pm[rlo] = mlo, pl[rlo] = llo;
                if (rhi < p.R) pm[rhi] = mhi, pl[rhi] = lhi;
            }
            continue;
        }
        const float mlo = s_m[rlo], mhi = s_m[rhi], wlo = s_w[rlo], whi = s_w[rhi];
#pragma unroll
        for (int n = 0; n < kB / 8; n++) {
            acc[n][0] = acc[n][0] > -INFINITY ? __fmul_rn(expf(acc[n][0] - mlo), wlo) : 0.f;
            acc[n][1] = acc[n][1] > -INFINITY ? __fmul_rn(expf(acc[n][1] - mlo), wlo) : 0.f;
            acc[n][2] = acc[n][2] > -INFINITY ? __fmul_rn(expf(acc[n][2] - mhi), whi) : 0.f;
            acc[n][3] = acc[n][3] > -INFINITY ? __fmul_rn(expf(acc[n][3] - mhi), whi) : 0.f;
        }
#pragma unroll
        for (int n = 0; n < kB / 8; n++) {
            const int c = 8 * n + 2 * tq;
            float v0 = acc[n][0] + acc[n][2], v1 = acc[n][1] + acc[n][3];
#pragma unroll
            for (int off = 4; off < 32; off <<= 1) {
                v0 += __shfl_xor_sync(0xffffffffu, v0, off);
                v1 += __shfl_xor_sync(0xffffffffu, v1, off);
            }
            if (g == 0) s_col[warp][c] = v0, s_col[warp][c + 1] = v1;
        }
        // the slash partials by quarter tiles of kQR rows (warps 2 q and 2 q + 1
        // hold them): each row's probabilities go in skewed, so that diagonal
        // dd = r + kB - 1 - c (key c of row r) is column dd - kQR q, and thread
        // dd sums its column down the quarter's rows (even and odd rows apart,
        // then the quarters in order; no shuffles, no index arithmetic)
        float mine = 0.f;
        for (int qq = 0; qq < kB / kQR; qq++) {
            if ((warp >> 1) == qq) {
                const int llo = rlo - kQR * qq, lhi = llo + 8;
                float *slo = S + llo * kDP + llo + kB - 1, *shi = S + lhi * kDP + lhi + kB - 1;
#pragma unroll
                for (int n = 0; n < kB / 8; n++) {
                    const int c = 8 * n + 2 * tq;
                    slo[-c] = acc[n][0];
                    slo[-c - 1] = acc[n][1];
                    shi[-c] = acc[n][2];
                    shi[-c - 1] = acc[n][3];
                }
            }
            __syncthreads();
            const int col = tid - kQR * qq;
            if (col >= 0 && col < kQR + kB - 1) {
                float a0 = 0.f, a1 = 0.f;
#pragma unroll
                for (int lr = 0; lr < kQR; lr += 2) {
                    a0 += S[lr * kDP + col];
                    a1 += S[(lr + 1) * kDP + col];
                }
                mine += a0 + a1;
            }
            __syncthreads(); // this quarter is read
        }
        float *part = p.part + ((size_t)h * p.n_kb + t) * 256;
        if (tid < 2 * kB - 1) part[tid] = mine;
        if (tid < kB && j0 + tid < p.N) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < kScoreThreads / 32; w++) v += s_col[w][tid];
            p.vert[(size_t)h * p.sN + j0 + tid] = v;
        }
    }
    cp_async_wait<0>(); // nothing left in flight when the CTA ends
}

// grid (ceil(R / 8), H), block 256: a warp a row r, its max and sum over the
// tiles (lane l: tiles l, l+32, ... in order; then the warp's butterfly).
__global__ void merge_ml_kernel(const FlexParams p) {
    const int h = blockIdx.y, r = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (r >= p.R) return;
    const float *pm = p.pm + (size_t)h * p.n_kb * kB + r, *pl = p.pl + (size_t)h * p.n_kb * kB + r;
    float m = -INFINITY, l = 0.f;
    for (int t = lane; t < p.n_kb; t += 32) m = fmaxf(m, pm[(size_t)t * kB]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    for (int t = lane; t < p.n_kb; t += 32) {
        const float mt = pm[(size_t)t * kB];
        if (mt > -INFINITY) l += pl[(size_t)t * kB] * expf(mt - m);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
    if (lane == 0) {
        p.mrow[(size_t)h * kB + r] = m;
        p.lrow[(size_t)h * kB + r] = l;
    }
}

// grid (ceil(N / 256), H), block 256: slash[o] from the tiles its keys
// j = P0 + r - o (r < R <= 128) fall in: at most two, lower tile first.
__global__ void slash_kernel(const FlexParams p) {
    const int h = blockIdx.y, o = blockIdx.x * 256 + threadIdx.x;
    if (o >= p.N) return;
    const int jlo = p.P0 - o > 0 ? p.P0 - o : 0, jhi = p.P0 + p.R - 1 - o < p.N - 1 ? p.P0 + p.R - 1 - o : p.N - 1;
    const int ta = jlo / kB, tb = jhi / kB;
    const float *ph = p.part + (size_t)h * p.n_kb * 256;
    float v = ph[(size_t)ta * 256 + (o - p.P0 + ta * kB + kB - 1)];
    if (tb != ta) v += ph[(size_t)tb * 256 + (o - p.P0 + tb * kB + kB - 1)];
    p.slash[(size_t)h * p.sN + o] = v;
}

/* ---- step 2: block summaries and the divergence ---------------------------------------- */

// grid (n_kb, KH), block 256: the block's keys summed, then divided by
// their count (flex_key_sums + flex_divergence's division): thread (y, x)
// sums 8 dims from 8x of rows y, y + 256/(D/8), ... in order (16-byte
// loads), then the rows' partials of each dim in order of y.
__global__ void __launch_bounds__(256) kpool_kernel(const FlexParams p) {
    __shared__ float part[256 * 8];
    const int kb = p.tiles ? p.tiles[blockIdx.x] : blockIdx.x, kh = blockIdx.y, tid = threadIdx.x;
    const int per_row = p.D / 8, ny = 256 / per_row, x = tid % per_row, y = tid / per_row;
    const int j0 = kb * kB, j1 = j0 + kB < p.N ? j0 + kB : p.N;
    float a[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = j0 + y; j < j1; j += ny) {
        const uint4 v = *reinterpret_cast<const uint4 *>(
            p.k + (((size_t)p.pages[j / p.ps] * p.KH + kh) * p.ps + j % p.ps) * p.D + 8 * x);
        const __nv_bfloat162 *b2 = reinterpret_cast<const __nv_bfloat162 *>(&v);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 f = __bfloat1622float2(b2[i]);
            a[2 * i] = __fadd_rn(a[2 * i], f.x);
            a[2 * i + 1] = __fadd_rn(a[2 * i + 1], f.y);
        }
    }
#pragma unroll
    for (int i = 0; i < 8; i++) part[tid * 8 + i] = a[i];
    __syncthreads();
    if (tid < p.D) {
        const int xe = tid / 8, i = tid % 8;
        float sum = 0.f;
        for (int yy = 0; yy < ny; yy++) sum = __fadd_rn(sum, part[(yy * per_row + xe) * 8 + i]);
        p.kpool[((size_t)kh * p.sKB + kb) * p.D + tid] = __fdiv_rn(sum, (float)(j1 - j0));
    }
}

// Block-wide reduction of one value per thread (blockDim.x a multiple of 32,
// at most 1024), fixed order: deterministic. red: 32 doubles of shared memory.
template <bool MAX> __device__ double block_reduce(double v, double *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const double o = __shfl_xor_sync(0xffffffffu, v, off);
        v = MAX ? fmax(v, o) : __dadd_rn(v, o);
    }
    __syncthreads(); // red free from a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double r = red[0];
    for (int w = 1; w < nw; w++) r = MAX ? fmax(r, red[w]) : __dadd_rn(r, red[w]);
    return r;
}

// grid (ceil(n_kb / 32), H), block 256: the head's mean representative
// row (double; a warp a dim, lane l rows l, l+32, ... in order, then the
// warp's butterfly), then a warp a key block kb (4 a warp): the mean row .
// the block's mean key (lane l: dims l, l+32, ... in order, the butterfly)
// into ahat, and the block's vertical mass (keys likewise) into atrue.
__global__ void diverge_blocks_kernel(const FlexParams p) {
    __shared__ double s_qm[kMaxD];
    const int h = blockIdx.y, kh = h / p.G, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int e = warp; e < p.D; e += 8) {
        const float *src = p.qs + ((size_t)h * p.D + e) * kB;
        double a = 0;
        for (int r = lane; r < p.R; r += 32) a = __dadd_rn(a, (double)src[r]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) a = __dadd_rn(a, __shfl_xor_sync(0xffffffffu, a, off));
        if (lane == 0) s_qm[e] = __ddiv_rn(a, (double)p.R);
    }
    __syncthreads();
    for (int kb = blockIdx.x * 32 + warp; kb < p.n_kb && kb < blockIdx.x * 32 + 32; kb += 8) {
        const float *kp = p.kpool + ((size_t)kh * p.sKB + kb) * p.D;
        double s = 0;
        for (int e = lane; e < p.D; e += 32) s = __dadd_rn(s, __dmul_rn(s_qm[e], (double)kp[e]));
        const int j0 = kb * kB, j1 = j0 + kB < p.N ? j0 + kB : p.N;
        double at = 0;
        for (int j = j0 + lane; j < j1; j += 32) at = __dadd_rn(at, (double)p.vert[(size_t)h * p.sN + j]);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            s = __dadd_rn(s, __shfl_xor_sync(0xffffffffu, s, off));
            at = __dadd_rn(at, __shfl_xor_sync(0xffffffffu, at, off));
        }
        if (lane == 0) {
            p.ahat[(size_t)h * p.sKB + kb] = s;
            p.atrue[(size_t)h * p.sKB + kb] = at;
        }
    }
}

// grid H, block 256: ahat = softmax over blocks of ahat (the estimate);
// JS distance against atrue and tau.
__global__ void diverge_kernel(const FlexParams p) {
    __shared__ double red[32];
    const int h = blockIdx.x, tid = threadIdx.x;
    double *ahat = p.ahat + (size_t)h * p.sKB;
    const double *atrue = p.atrue + (size_t)h * p.sKB;
    double mx = -INFINITY;
    for (int kb = tid; kb < p.n_kb; kb += blockDim.x) mx = fmax(mx, ahat[kb]);
    mx = block_reduce<true>(mx, red);
    double sum = 0;
    for (int kb = tid; kb < p.n_kb; kb += blockDim.x) sum = __dadd_rn(sum, ahat[kb] = exp(ahat[kb] - mx));
    sum = block_reduce<false>(sum, red);
    double js = 0;
    for (int kb = tid; kb < p.n_kb; kb += blockDim.x) {
        const double a = ahat[kb] / sum, b = atrue[kb], m = 0.5 * (a + b);
        if (a > 0) js += 0.5 * a * log(a / m);
        if (b > 0) js += 0.5 * b * log(b / m);
    }
    js = block_reduce<false>(js, red);
    if (tid == 0) p.branch[h] = sqrt(js > 0 ? js : 0) < (double)p.tau ? 1 : 0;
}

/* ---- step 3a: query-aware cells --------------------------------------------------------- */

// grid (n_qb, H), block D: attn__flex_pool_query of query block i (for the
// query-aware heads; distributed: of every head, for the blocks held).
__global__ void qpool_kernel(const FlexParams p) {
    const int i = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
    if (p.qrows ? p.qrows[i] < 0 : p.branch[h] != 1) return;
    const int qb = p.qb0 + i;
    const int p0 = qb * kB > p.q_pos0 ? qb * kB : p.q_pos0, p1 = (qb + 1) * kB < p.N ? (qb + 1) * kB : p.N;
    const __nv_bfloat16 *q = p.qrows ? p.qown : p.q;
    const int64_t row0 = p.qrows ? (int64_t)p.qrows[i] - p0 : (int64_t)p.qrow0 - p.q_pos0; // row of position 0
    double a = 0;
    for (int pos = p0; pos < p1; pos++)
        a = __dadd_rn(a, (double)__bfloat162float(q[((size_t)(row0 + pos) * p.H + h) * p.D + e]));
    p.qpool[(size_t)h * p.sQpool + (size_t)i * p.D + e] = (float)__dmul_rn(__ddiv_rn(a, (double)(p1 - p0)), p.scale);
}

// grid (n_qb, H), block 256: row i of the cells, cells (kb <= qb) = softmax
// over kb of pooled q . pooled k, / n_qb (flex_query_aware's arithmetic);
// kb > qb: 0.
__global__ void cells_kernel(const FlexParams p) {
    __shared__ float s_qp[kMaxD];
    __shared__ double red[32];
    const int i = blockIdx.x, h = blockIdx.y, kh = h / p.G, tid = threadIdx.x, qb = p.qb0 + i;
    if (p.branch[h] != 1) return;
    if (tid < p.D) s_qp[tid] = p.qpool[(size_t)h * p.sQpool + (size_t)i * p.D + tid];
    __syncthreads();
    float *row = p.cells + (size_t)h * p.sCells + (size_t)i * p.n_kb;
    double rm = -INFINITY;
    const int warp = tid >> 5, lane = tid & 31, nw = blockDim.x >> 5;
    for (int kb = warp; kb < p.n_kb; kb += nw) { // a warp a block: lane l dims l, l+32, ..., then its butterfly
        if (kb > qb) {
            if (lane == 0) row[kb] = 0.f;
            continue;
        }
        const float *kp = p.kpool + ((size_t)kh * p.sKB + kb) * p.D;
        double s = 0;
        for (int e = lane; e < p.D; e += 32) s = __dadd_rn(s, (double)__fmul_rn(s_qp[e], kp[e]));
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s = __dadd_rn(s, __shfl_xor_sync(0xffffffffu, s, off));
        if (lane == 0) row[kb] = (float)s;
        rm = fmax(rm, s);
    }
    rm = block_reduce<true>(rm, red);
    __syncthreads(); // every warp's row entries are written before other threads read them
    double rs = 0;
    for (int kb = tid; kb <= qb && kb < p.n_kb; kb += blockDim.x) {
        const float v = (float)exp((double)row[kb] - rm);
        row[kb] = v;
        rs = __dadd_rn(rs, (double)v);
    }
    rs = block_reduce<false>(rs, red);
    for (int kb = tid; kb <= qb && kb < p.n_kb; kb += blockDim.x) row[kb] = (float)((double)row[kb] / rs / p.n_qb);
}

/* ---- the distributed selection's own steps --------------------------------------------- */

// grid (R, H), block D: representative row r (position P0 + r) into qrep32
// where this rank holds its query block, else 0 (the owner's value after the
// sum over the ranks: x + 0 is x).
__global__ void dist_rep_kernel(const FlexParams p) {
    const int r = blockIdx.x, h = blockIdx.y, e = threadIdx.x;
    const int pos = p.P0 + r, qb = pos / kB, row = p.qrows[qb - p.qb0];
    const int p0 = qb * kB > p.q_pos0 ? qb * kB : p.q_pos0;
    p.qrep32[((size_t)r * p.H + h) * p.D + e] =
        row < 0 ? 0.f : __bfloat162float(p.qown[((size_t)(row + pos - p0) * p.H + h) * p.D + e]);
}

// The summed rows back to bf16 (exact: each is one rank's bf16 value).
__global__ void dist_cast_kernel(const FlexParams p) {
    const size_t n = (size_t)p.R * p.H * p.D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p.qrep[i] = __float2bfloat16_rn(p.qrep32[i]);
}

} // namespace

/* ---- launchers ------------------------------------------------------------------------ */

int attn_flex_kern_init(void) {
    if (cudaFuncSetAttribute(score_kernel<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)score_smem(kMaxD, 0)) !=
            cudaSuccess ||
        cudaFuncSetAttribute(score_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)score_smem(kMaxD, 1)) !=
            cudaSuccess)
        return LC_EDEVICE;
    return 0;
}

// A head's CTAs of score_kernel<mode> at head_dim D: one wave of the device
// over the H heads (each CTA loops over its share of the key tiles, a
// tile's arithmetic the same on any CTA). LACUNA_FLEX_SCORE_CTAS=n asks
// for at most n.
int attn_flex_score_ctas(int H, int D, int mode) {
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, mode ? score_kernel<1> : score_kernel<0>, kScoreThreads,
                                                      score_smem(D, mode)) != cudaSuccess)
        return -1;
    int c = per_sm * sms / (H > 0 ? H : 1);
    const char *e = getenv("LACUNA_FLEX_SCORE_CTAS");
    if (e && atoi(e) >= 1 && atoi(e) < c) c = atoi(e);
    return c >= 1 ? c : 1;
}

// score_kernel<MODE> over n_t key tiles of every head
template <int MODE> static void launch_score(const FlexParams &p, int n_t, cudaStream_t st) {
    const int x = p.score_ctas[MODE] < n_t ? p.score_ctas[MODE] : n_t;
    score_kernel<MODE><<<dim3(x, p.H), kScoreThreads, score_smem(p.D, MODE), st>>>(p);
}

// The steps after the sums: the same on one rank and on every rank of a ring.
static int launch_rest(const FlexParams &p, cudaStream_t st) {
    const int H = p.H;
    slash_kernel<<<dim3((p.N + 255) / 256, H), 256, 0, st>>>(p);
    diverge_blocks_kernel<<<dim3((p.n_kb + 31) / 32, H), 256, 0, st>>>(p);
    diverge_kernel<<<H, 256, 0, st>>>(p);
    if (!p.qrows) qpool_kernel<<<dim3(p.n_qb, H), p.D, 0, st>>>(p);
    cells_kernel<<<dim3(p.n_qb, H), 256, 0, st>>>(p);
    return attn_flex_choose_launch(p, st); // flex_sel.cu: the thresholds and the bits
}

int attn_flex_select_launch(const FlexParams &p, cudaStream_t st) {
    const int H = p.H, KH = p.KH, D = p.D;
    rep_prep_kernel<<<dim3(kB, H), D, 0, st>>>(p);
    launch_score<0>(p, p.n_kb, st);
    merge_ml_kernel<<<dim3((p.R + 7) / 8, H), 256, 0, st>>>(p);
    launch_score<1>(p, p.n_kb, st);
    kpool_kernel<<<dim3(p.n_kb, KH), 256, 0, st>>>(p);
    const int rc = launch_rest(p, st);
    if (rc) return rc;
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_flex_dist_launch(const FlexParams &p, int phase, cudaStream_t st) {
    const int H = p.H, KH = p.KH, D = p.D;
    switch (phase) {
    case 0: dist_rep_kernel<<<dim3(p.R, H), D, 0, st>>>(p); break;
    case 1:
        dist_cast_kernel<<<64, 256, 0, st>>>(p);
        rep_prep_kernel<<<dim3(kB, H), D, 0, st>>>(p);
        if (p.n_tiles > 0) launch_score<0>(p, p.n_tiles, st);
        break;
    case 2:
        merge_ml_kernel<<<dim3((p.R + 7) / 8, H), 256, 0, st>>>(p);
        if (p.n_tiles > 0) {
            launch_score<1>(p, p.n_tiles, st);
            kpool_kernel<<<dim3(p.n_tiles, KH), 256, 0, st>>>(p);
        }
        qpool_kernel<<<dim3(p.n_qb, H), D, 0, st>>>(p);
        break;
    default: {
        const int rc = launch_rest(p, st);
        if (rc) return rc;
        break;
    }
    }
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}
