// The TidalDecode kernels (tidal.cu has the host side, tidal_cuda.h the
// contract).
//
// A selection is a cleared histogram and two kernels: mass_kernel scores 512
// positions of one (row, kv head) per CTA on mma.sync (the group's heads as
// the MMA's rows), turns the scores into softmax mass with the given LSE,
// writes it, and counts the top byte of its order-preserving key into that
// (row, kv head)'s histogram (integer atomics: the counts do not depend on
// the order); select_kernel, one CTA per (row, kv head), finishes the radix
// search for the keep-th largest key over the other three bytes and writes
// the kept positions ascending.
//
// Attention is two kernels: attend_kernel, one CTA per (row, chunk of its
// list, kv head), each of its four warps gathering 16 listed tokens of K and
// V at a time into shared memory (cp.async, double-buffered, rows past the
// list zero-filled) and running the dense decode kernel's arithmetic on them;
// merge_kernel combines a row's chunks by LSE in chunk order.
#include <math.h>

#include "attn/cuda/radix.cuh"
#include "attn/cuda/sm90.cuh"
#include "attn/cuda/tidal.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kMassThreads = 128; // four warps, 32 positions at a time each
constexpr int kSelThreads = 512;
constexpr int kSelRun = 8;       // consecutive positions per selection thread and trip
constexpr int kAttThreads = 128; // four warps, 16 listed tokens at a time each
constexpr float kLn2 = 0.69314718056f;

__device__ __forceinline__ uint32_t ld_u32(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* ---- mass ----------------------------------------------------------------------------- */

// grid (n_mass_items, n_kv_heads), block kMassThreads. Warp w takes the 32
// positions p0 + 32 (w + 4 i), which lie in one page (pages of 64 or 128).
// The MMA's k index runs over the head dims in the order each lane loads
// them: lane quad c reads 16-byte vectors c, c+4, ... of a key row, so u32 i
// of its fragment holds dims 8c + 32 (i / 4) + 2 (i % 4) + {0, 1}; its query
// fragment takes the same dims. The dot products are the same sums in
// another order, and the key loads are whole 64-byte runs.
template <int D> __global__ void __launch_bounds__(kMassThreads) mass_kernel(const TidalMassParams p) {
    __shared__ unsigned s_hist[256];
    const int4 it = p.items[blockIdx.x];
    const int row = it.x, p0 = it.y, kvh = blockIdx.y;
    const int4 ra = p.rows[2 * row], rb = p.rows[2 * row + 1];
    const int n = ra.x, kvptr = ra.z, G = p.group, KH = p.n_kv_heads, ps = p.page_size;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g_a = lane >> 2, g_b = g_a + 8, c = lane & 3;
    for (int i = threadIdx.x; i < 256; i += kMassThreads) s_hist[i] = 0;

    uint32_t qa[D / 16][4];
    {
        const __nv_bfloat16 *qh = p.q + ((size_t)row * p.n_heads + (size_t)kvh * G) * D;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            const int d0 = 8 * c + 32 * (kk >> 1) + 4 * (kk & 1); // dims of u32 2kk; u32 2kk+1 is d0 + 2
            qa[kk][0] = g_a < G ? ld_u32(qh + g_a * D + d0) : 0u;
            qa[kk][1] = g_b < G ? ld_u32(qh + g_b * D + d0) : 0u;
            qa[kk][2] = g_a < G ? ld_u32(qh + g_a * D + d0 + 2) : 0u;
            qa[kk][3] = g_b < G ? ld_u32(qh + g_b * D + d0 + 2) : 0u;
        }
    }
    const float *lse = p.lse + (size_t)row * p.n_heads + (size_t)kvh * G;
    const float lse_a = g_a < G ? lse[g_a] : 0.f, lse_b = g_b < G ? lse[g_b] : 0.f;
    float *mass = p.mass + (size_t)rb.x + (size_t)kvh * attn_tidal_mass_stride(n);
    __syncthreads(); // s_hist cleared

    const int end = min(n, p0 + kTidalMassChunk);
    for (int t0 = p0 + 32 * warp; t0 < end; t0 += 32 * (kMassThreads / 32)) {
        if (p.held && !p.held[kvptr + t0 / ps]) { // held elsewhere: mass 0 (its holder's after the sum)
            if (t0 + lane < n) mass[t0 + lane] = 0.f;
            continue;
        }
        const int32_t page = p.kv_indices[kvptr + t0 / ps];
        // Rows past n in this page are read (in bounds) and their masses dropped.
        const __nv_bfloat16 *kb = p.k + (((size_t)page * KH + kvh) * ps + t0 % ps) * D + 8 * c;
        uint4 kr[4][D / 32];
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int j = 0; j < D / 32; j++)
                kr[nt][j] = *reinterpret_cast<const uint4 *>(kb + (size_t)(8 * nt + (lane >> 2)) * D + 32 * j);
        float s[4][4];
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                const uint4 w = kr[nt][kk >> 1];
                mma_bf16_16816(s[nt], qa[kk], (kk & 1) ? w.z : w.x, (kk & 1) ? w.w : w.y);
            }
        }
        // s[nt][0..1]: head g_a, keys t0 + 8 nt + 2c + {0,1}; s[nt][2..3]: head g_b.
        // The mass of a key: its heads' probabilities, summed over the lanes
        // of quad position c (a fixed tree).
        float ms[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const float xa = g_a < G ? expf(s[nt][e] * p.scale - lse_a) : 0.f;
                const float xb = g_b < G ? expf(s[nt][2 + e] * p.scale - lse_b) : 0.f;
                float m = xa + xb;
                m += __shfl_xor_sync(0xffffffffu, m, 4);
                m += __shfl_xor_sync(0xffffffffu, m, 8);
                m += __shfl_xor_sync(0xffffffffu, m, 16);
                ms[nt][e] = m;
            }
        // Lanes 0-15 store: lane 4 nt + c the keys t0 + 8 nt + 2c + {0, 1}.
        float m0 = 0.f, m1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
            if ((lane >> 2) == nt) {
                m0 = ms[nt][0];
                m1 = ms[nt][1];
            }
        const int key = t0 + 8 * (lane >> 2) + 2 * c;
        const bool v0 = lane < 16 && key < n, v1 = lane < 16 && key + 1 < n;
        if (v0) mass[key] = m0;
        if (v1) mass[key + 1] = m1;
        hist_add(s_hist, v0 ? order_key(m0) >> 24 : 256u, lane);
        hist_add(s_hist, v1 ? order_key(m1) >> 24 : 256u, lane);
    }
    __syncthreads();
    unsigned *gh = p.hist + ((size_t)row * KH + kvh) * 256;
    for (int i = threadIdx.x; i < 256; i += kMassThreads)
        if (s_hist[i]) atomicAdd(&gh[i], s_hist[i]);
}

/* ---- selection ------------------------------------------------------------------------ */

// Exclusive prefix of x over the block's threads in thread order, and the
// block's total. Every thread calls it; w_tot: kSelThreads / 32 ints.
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
    for (int w = 0; w < kSelThreads / 32; w++) {
        if (w < warp) before += w_tot[w];
        tot += w_tot[w];
    }
    __syncthreads(); // w_tot read by all before the next scan writes it
    *total = tot;
    return before;
}

// Thread tid's kSelRun masses of the span at base: positions base + kSelRun
// tid + j (j < kSelRun), as order keys; valid[j] says j is below n. The
// masses of a row are 16-byte aligned and padded to attn_tidal_mass_stride(n), so a
// vector that starts below n is inside the row.
__device__ __forceinline__ void load_run(const float *ms, int n, int base, uint32_t (&u)[kSelRun],
                                         bool (&valid)[kSelRun]) {
    const int i0 = base + kSelRun * threadIdx.x;
    float v[kSelRun];
#pragma unroll
    for (int j = 0; j < kSelRun; j += 4) {
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i0 + j < n) x = *reinterpret_cast<const float4 *>(ms + i0 + j);
        v[j] = x.x;
        v[j + 1] = x.y;
        v[j + 2] = x.z;
        v[j + 3] = x.w;
    }
#pragma unroll
    for (int j = 0; j < kSelRun; j++) {
        valid[j] = i0 + j < n;
        u[j] = order_key(v[j]);
    }
}

// grid (n_rows, n_kv_heads), block kSelThreads. The threshold T is the
// keep-th largest key: its top byte from the mass kernels' histogram, the
// other bytes one at a time (a 256-bin histogram of the keys matching the
// bytes fixed so far). The selection is every key > T plus the first (in
// position order) keys == T up to keep: attn__tidal_pick's set. A
// block-wide scan in position order writes them ascending. Each pass walks
// the row in spans of kSelThreads * kSelRun positions, thread t holding the
// kSelRun consecutive ones at kSelRun t (two vector loads in flight, not one
// scalar per trip).
__global__ void __launch_bounds__(kSelThreads) select_kernel(const TidalSelectParams p) {
    __shared__ unsigned hist[256];
    __shared__ int s_bin, s_k;
    __shared__ int w_tot[kSelThreads / 32];
    const int row = blockIdx.x, kvh = blockIdx.y, KH = p.n_kv_heads;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int4 ra = p.rows[2 * row], rb = p.rows[2 * row + 1];
    const int n = ra.x, keep = ra.y;
    if (ra.w < 0) return; // keeps every position: no list
    const float *ms = p.mass + (size_t)rb.x + (size_t)kvh * attn_tidal_mass_stride(n);
    int32_t *out = p.sel + (size_t)ra.w + (size_t)kvh * keep;
    const unsigned *gh = p.hist + ((size_t)row * KH + kvh) * 256;
    constexpr int kSpan = kSelThreads * kSelRun;

    uint32_t prefix = 0, mask = 0;
    int k = keep; // rank wanted among the keys matching prefix, from the top (1-based)
    for (int shift = 24; shift >= 0; shift -= 8) {
        if (shift == 24) {
            for (int i = tid; i < 256; i += kSelThreads) hist[i] = gh[i];
        } else {
            for (int i = tid; i < 256; i += kSelThreads) hist[i] = 0;
            __syncthreads();
            for (int base = 0; base < n; base += kSpan) {
                uint32_t u[kSelRun];
                bool valid[kSelRun];
                load_run(ms, n, base, u, valid);
#pragma unroll
                for (int j = 0; j < kSelRun; j++) {
                    const unsigned bin = valid[j] && (u[j] & mask) == prefix ? (u[j] >> shift) & 255u : 256u;
                    // the later bytes match few keys: most warps have none to count
                    if (__any_sync(0xffffffffu, bin < 256u)) hist_add(hist, bin, lane);
                }
            }
        }
        __syncthreads();
        if (warp == 0) radix_pick_bin(hist, lane, k, &s_bin, &s_k);
        __syncthreads(); // s_bin, s_k written; hist read (the next pass clears it)
        prefix |= (uint32_t)s_bin << shift;
        mask |= 255u << shift;
        k = s_k;
    }
    const uint32_t T = prefix;
    const int need_eq = k; // keys equal to T to take, earliest first
    int eq_before = 0, sel_before = 0;
    for (int base = 0; base < n && sel_before < keep; base += kSpan) {
        uint32_t u[kSelRun];
        bool valid[kSelRun];
        load_run(ms, n, base, u, valid);
        int n_eq = 0;
#pragma unroll
        for (int j = 0; j < kSelRun; j++) n_eq += valid[j] && u[j] == T;
        int eq_tot, sel_tot;
        int eq_rank = eq_before + block_scan(n_eq, w_tot, &eq_tot); // keys == T before this thread's run
        bool take[kSelRun];
        int n_sel = 0;
#pragma unroll
        for (int j = 0; j < kSelRun; j++) {
            const bool eq = valid[j] && u[j] == T;
            take[j] = (valid[j] && u[j] > T) || (eq && eq_rank < need_eq);
            eq_rank += eq;
            n_sel += take[j];
        }
        int pos = sel_before + block_scan(n_sel, w_tot, &sel_tot);
#pragma unroll
        for (int j = 0; j < kSelRun; j++)
            if (take[j]) out[pos++] = base + kSelRun * tid + j;
        eq_before += eq_tot;
        sel_before += sel_tot;
    }
}

/* ---- attention ------------------------------------------------------------------------ */

// Shared memory of attend_kernel: per warp two buffers of K[16][RS] and
// V[16][RS] bf16. RS = D + 8 pads a row by 16 bytes, so the eight rows an
// ldmatrix reads fall in distinct banks. After the loop the same bytes hold
// the warps' O partials, f32 [4][16][D].
template <int D> struct AttSmem {
    static constexpr int kRS = D + 8;       // row stride, bf16
    static constexpr int kTile = 16 * kRS;  // one K or V tile, bf16
    static constexpr int kWarp = 4 * kTile; // K0, V0, K1, V1
    static constexpr int kBytes = (kAttThreads / 32) * kWarp * 2;
    static_assert((kAttThreads / 32) * 16 * D * 4 <= kBytes, "the O partials fit the tiles");
};

// grid (n_att_items, n_kv_heads), block kAttThreads. The chunk is list
// entries [i0, i1) of the row's list: its kept positions ascending, then its
// newest position when not kept (so entries past keep - 1 exist only then).
// Warp w takes entries i0 + 16 (w + 4 t); per 16 it runs the dense decode
// kernel's step (S = Q K^T and O += P V on mma.sync, online softmax); the
// warps combine in a fixed order and the chunk writes (O, LSE) to its slot.
template <int D> __global__ void __launch_bounds__(kAttThreads) attend_kernel(const TidalAttendParams p) {
    using L = AttSmem<D>;
    extern __shared__ __align__(16) uint8_t smem_raw[];
    __shared__ float sm_m[4][16], sm_l[4][16], sm_M[16], sm_L[16];
    __nv_bfloat16 *sm = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    const int4 it = p.items[blockIdx.x];
    const int row = it.x, chunk = it.y, kvh = blockIdx.y;
    const int4 ra = p.rows[2 * row], rb = p.rows[2 * row + 1];
    const int n = ra.x, keep = ra.y, kvptr = ra.z, chunk_keys = rb.y, n_chunks = rb.z;
    const int G = p.group, KH = p.n_kv_heads, ps = p.page_size;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int32_t *sel = ra.w < 0 ? nullptr : p.sel + (size_t)ra.w + (size_t)kvh * keep;
    const int32_t *list = p.list ? p.list + p.list_base[row] + (size_t)kvh * p.list_cap[row] : nullptr;
    const int count = list  ? p.count[row * KH + kvh]         // distributed: this rank's share
                      : sel ? keep + (sel[keep - 1] != n - 1) // entries of the list
                            : n;
    const int i0 = chunk * chunk_keys, i1 = min(count, i0 + chunk_keys);
    const int64_t part = (int64_t)rb.w + (int64_t)kvh * n_chunks + chunk;
    if (i0 >= i1) { // the last chunk when the newest position was kept: nothing to attend
        for (int e = tid; e < G * D; e += kAttThreads) p.ws_o[part * G * D + e] = 0.f;
        if (tid < G) p.ws_lse[part * G + tid] = -INFINITY;
        return;
    }

    const int g_a = lane >> 2, g_b = g_a + 8, qd = (lane & 3) * 2;
    const float sl2 = p.scale_log2;
    uint32_t qa[D / 16][4];
    {
        const __nv_bfloat16 *qh = p.q + ((size_t)row * p.n_heads + (size_t)kvh * G) * D + qd;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            qa[kk][0] = g_a < G ? ld_u32(qh + g_a * D + 16 * kk) : 0u;
            qa[kk][1] = g_b < G ? ld_u32(qh + g_b * D + 16 * kk) : 0u;
            qa[kk][2] = g_a < G ? ld_u32(qh + g_a * D + 16 * kk + 8) : 0u;
            qa[kk][3] = g_b < G ? ld_u32(qh + g_b * D + 16 * kk + 8) : 0u;
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int nn = 0; nn < D / 8; nn++) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    const int mat = lane >> 3, r8 = lane & 7; // ldmatrix: lane l feeds row l%8 of matrix l/8
    __nv_bfloat16 *wbuf = sm + warp * L::kWarp;

    // Gathers entries t .. t+15 (those below i1; the rest zero) into buffer b.
    auto issue = [&](int t, int b) {
        int64_t off = -1; // lanes 0-15: element offset of entry t + lane in the pool
        if (lane < 16 && t + lane < i1) {
            const int i = t + lane, pos = list ? list[i] : !sel ? i : i < keep ? sel[i] : n - 1;
            const int64_t page = p.kv_indices[kvptr + pos / ps];
            off = ((page * KH + kvh) * ps + pos % ps) * D;
        }
        __nv_bfloat16 *tk = wbuf + 2 * b * L::kTile, *tv = tk + L::kTile;
        constexpr int kVecs = D / 8, kRows = 32 / kVecs; // 16-byte vectors per row, rows per pass
#pragma unroll
        for (int r0 = 0; r0 < 16; r0 += kRows) {
            const int r = r0 + lane / kVecs, x = (lane % kVecs) * 8;
            const int64_t src = __shfl_sync(0xffffffffu, off, r);
            cp_async16(smem_u32(tk + r * L::kRS + x), src >= 0 ? p.k + src + x : p.k, src >= 0 ? 16 : 0);
            cp_async16(smem_u32(tv + r * L::kRS + x), src >= 0 ? p.v + src + x : p.v, src >= 0 ? 16 : 0);
        }
        cp_async_commit();
    };

    int b = 0;
    if (i0 + 16 * warp < i1) issue(i0 + 16 * warp, 0);
    for (int t = i0 + 16 * warp; t < i1; t += 64, b ^= 1) {
        if (t + 64 < i1) {
            issue(t + 64, b ^ 1); // buffer b^1 was read in the previous step, before its closing __syncwarp
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();                   // every lane's copies of buffer b landed
        const int nv = min(16, i1 - t); // valid entries of this 16 (>= 1)
        const uint32_t kb = smem_u32(wbuf + 2 * b * L::kTile), vb = kb + L::kTile * 2;
        // S (16 heads x 16 keys) = Q K^T; matrices: keys 0-7/8-15 (mat/2) x dims +0/+8 (mat%2)
        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
        const int tk = (mat >> 1) * 8 + r8;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t r[4];
            ldmatrix_x4(r, kb + (uint32_t)(tk * L::kRS + 16 * kk + 8 * (mat & 1)) * 2);
            mma_bf16_16816(s[0], qa[kk], r[0], r[1]);
            mma_bf16_16816(s[1], qa[kk], r[2], r[3]);
        }
        // s[n][0..1]: head g_a, keys 8n+qd+{0,1}; s[n][2..3]: head g_b
        if (nv < 16)
#pragma unroll
            for (int nn = 0; nn < 2; nn++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (8 * nn + qd + (e & 1) >= nv) s[nn][e] = -INFINITY;
        float mx_a = fmaxf(m_a, fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])));
        float mx_b = fmaxf(m_b, fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3])));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        // entry 0 of the 16 is valid (nv >= 1), so the max is finite
        const float sc_a = fast_exp2((m_a - mx_a) * sl2), sc_b = fast_exp2((m_b - mx_b) * sl2);
        const float base_a = mx_a * sl2, base_b = mx_b * sl2;
        m_a = mx_a;
        m_b = mx_b;
#pragma unroll
        for (int nn = 0; nn < 2; nn++) {
            s[nn][0] = fast_exp2(fmaf(s[nn][0], sl2, -base_a));
            s[nn][1] = fast_exp2(fmaf(s[nn][1], sl2, -base_a));
            s[nn][2] = fast_exp2(fmaf(s[nn][2], sl2, -base_b));
            s[nn][3] = fast_exp2(fmaf(s[nn][3], sl2, -base_b));
        }
        l_a = l_a * sc_a + (s[0][0] + s[0][1] + s[1][0] + s[1][1]);
        l_b = l_b * sc_b + (s[0][2] + s[0][3] + s[1][2] + s[1][3]);
        const uint32_t pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]), pack_bf16(s[1][0], s[1][1]),
                                pack_bf16(s[1][2], s[1][3])};
#pragma unroll
        for (int nn = 0; nn < D / 8; nn++) {
            o[nn][0] *= sc_a;
            o[nn][1] *= sc_a;
            o[nn][2] *= sc_b;
            o[nn][3] *= sc_b;
        }
        // O (16 heads x D) += P V; transposed matrices: keys 0-7/8-15 (mat%2) x dims +0/+8 (mat/2).
        // V rows past nv were zero-filled, so P = 0 meets 0, never stale data.
        const int tv = (mat & 1) * 8 + r8;
#pragma unroll
        for (int nd = 0; nd < D / 16; nd++) {
            uint32_t r[4];
            ldmatrix_x4_trans(r, vb + (uint32_t)(tv * L::kRS + 16 * nd + 8 * (mat >> 1)) * 2);
            mma_bf16_16816(o[2 * nd], pa, r[0], r[1]);
            mma_bf16_16816(o[2 * nd + 1], pa, r[2], r[3]);
        }
        __syncwarp(); // buffer b read by every lane before a later issue() refills it
    }

    // ---- combine the four warps (fixed order) ----------------------------------------------
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    if ((lane & 3) == 0) {
        sm_m[warp][g_a] = m_a;
        sm_l[warp][g_a] = l_a;
        sm_m[warp][g_b] = m_b;
        sm_l[warp][g_b] = l_b;
    }
    __syncthreads(); // also: every warp is done with its tiles
    float M_a = -INFINITY, M_b = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; w++) {
        M_a = fmaxf(M_a, sm_m[w][g_a]);
        M_b = fmaxf(M_b, sm_m[w][g_b]);
    }
    // warp 0 always has a valid entry, so M is finite; a warp without entries has m = -inf: factor 0
    const float f_a = fast_exp2((m_a - M_a) * sl2), f_b = fast_exp2((m_b - M_b) * sl2);
    float *sm_o = reinterpret_cast<float *>(smem_raw); // [4][16][D], over the tiles
#pragma unroll
    for (int nn = 0; nn < D / 8; nn++) {
        *reinterpret_cast<float2 *>(sm_o + (warp * 16 + g_a) * D + 8 * nn + qd) =
            make_float2(o[nn][0] * f_a, o[nn][1] * f_a);
        *reinterpret_cast<float2 *>(sm_o + (warp * 16 + g_b) * D + 8 * nn + qd) =
            make_float2(o[nn][2] * f_b, o[nn][3] * f_b);
    }
    if (warp == 0 && (lane & 3) == 0) {
        float L_a = 0.f, L_b = 0.f;
#pragma unroll
        for (int w = 0; w < 4; w++) {
            L_a += fast_exp2((sm_m[w][g_a] - M_a) * sl2) * sm_l[w][g_a];
            L_b += fast_exp2((sm_m[w][g_b] - M_b) * sl2) * sm_l[w][g_b];
        }
        sm_M[g_a] = M_a;
        sm_L[g_a] = L_a;
        sm_M[g_b] = M_b;
        sm_L[g_b] = L_b;
    }
    __syncthreads();
    for (int e = tid; e < G * D; e += kAttThreads) {
        const int g = e / D, d = e % D;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < 4; w++) v += sm_o[(w * 16 + g) * D + d];
        p.ws_o[part * G * D + e] = v / sm_L[g];
    }
    if (tid < G) p.ws_lse[part * G + tid] = sm_M[tid] * sl2 + log2f(sm_L[tid]);
}

// grid (n_rows, n_kv_heads, D / 32), block 128: a row's chunks merged in
// chunk order (on one rank chunk 0 is never empty; a ring rank's share may
// be: then output 0, LSE -inf), 32
// dims of each head of the group per CTA: at one row the merge is a chain
// of dependent loads, and more CTAs run more of them at once. Every CTA
// computes the same weights; the first writes the LSE.
__global__ void __launch_bounds__(128) merge_kernel(const TidalMergeParams p) {
    __shared__ float sm_w[kTidalMaxGroup][kTidalMaxSplits];
    const int row = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x, G = p.group, D = p.D;
    const int d0 = 32 * blockIdx.z;
    const int4 rb = p.rows[2 * row + 1];
    const int n_chunks = rb.z;
    const int64_t part = (int64_t)rb.w + (int64_t)kvh * n_chunks; // partial of chunk 0
    const size_t head0 = (size_t)row * p.n_heads + (size_t)kvh * G;
    for (int e = tid; e < G * n_chunks; e += 128) {
        const int g = e / n_chunks, c = e % n_chunks;
        sm_w[g][c] = p.ws_lse[(part + c) * G + g];
    }
    __syncthreads();
    if (tid < G) {
        float mx = -INFINITY;
        for (int c = 0; c < n_chunks; c++) mx = fmaxf(mx, sm_w[tid][c]);
        float sum = 0.f;
        for (int c = 0; c < n_chunks; c++) {
            const float w = mx > -INFINITY ? exp2f(sm_w[tid][c] - mx) : 0.f; // 0 for an empty chunk
            sm_w[tid][c] = w;
            sum += w;
        }
        const float inv = sum > 0.f ? 1.f / sum : 0.f;
        for (int c = 0; c < n_chunks; c++) sm_w[tid][c] *= inv;
        if (p.lse && blockIdx.z == 0) p.lse[head0 + tid] = (mx + log2f(sum)) * kLn2;
    }
    __syncthreads();
    for (int e = tid; e < G * 32; e += 128) {
        const int g = e / 32, d = d0 + e % 32;
        const float *src = p.ws_o + (part * G + g) * D + d;
        float v = 0.f;
#pragma unroll 16
        for (int c = 0; c < n_chunks; c++) v += sm_w[g][c] * src[(size_t)c * G * D];
        p.out[(head0 + g) * D + d] = __float2bfloat16_rn(v);
    }
}

/* ---- distributed: this rank's share -------------------------------------------------------- */

// grid (n_rows, n_kv_heads), one warp: the row's list (its kept positions,
// then its newest when not kept; every position when it keeps all) cut to
// the positions on pages this rank holds, in order, and their count.
__global__ void dist_compact_kernel(const TidalCompactParams p) {
    const int row = blockIdx.x, kvh = blockIdx.y, lane = threadIdx.x, KH = p.n_kv_heads;
    const int4 ra = p.rows[2 * row];
    const int n = ra.x, keep = ra.y, kvptr = ra.z;
    const int32_t *sel = ra.w < 0 ? nullptr : p.sel + (size_t)ra.w + (size_t)kvh * keep;
    const int total = sel ? keep + (sel[keep - 1] != n - 1) : n;
    int32_t *out = p.list + p.lbase[row] + (size_t)kvh * p.lcap[row];
    int c = 0;
    for (int j0 = 0; j0 < total; j0 += 32) {
        const int j = j0 + lane;
        const int pos = j >= total ? 0 : !sel ? j : j < keep ? sel[j] : n - 1;
        const bool h = j < total && p.held[kvptr + pos / p.page_size];
        const unsigned b = __ballot_sync(0xffffffffu, h);
        if (h) out[c + __popc(b & ((1u << lane) - 1u))] = pos;
        c += __popc(b);
    }
    if (lane == 0) p.count[row * KH + kvh] = c;
}

__global__ void hist_cast_kernel(unsigned *hist, float *f, size_t n, int to_float) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        if (to_float)
            f[i] = (float)hist[i];
        else
            hist[i] = (unsigned)f[i]; // counts below 2^24: exact
}

} // namespace

/* ---- launchers ------------------------------------------------------------------------ */

int attn_tidal_compact_launch(const TidalCompactParams &p, int n_rows, int n_kv_heads, cudaStream_t st) {
    dist_compact_kernel<<<dim3(n_rows, n_kv_heads), 32, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_tidal_hist_cast(unsigned *hist, float *f, size_t n, int to_float, cudaStream_t st) {
    hist_cast_kernel<<<64, 256, 0, st>>>(hist, f, n, to_float);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_tidal_attend_init(void) {
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(attend_kernel<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, AttSmem<64>::kBytes));
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(attend_kernel<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, AttSmem<128>::kBytes));
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(attend_kernel<256>, cudaFuncAttributeMaxDynamicSharedMemorySize, AttSmem<256>::kBytes));
    return 0;
}

int attn_tidal_mass_launch(int D, const TidalMassParams &p, int n_items, int n_kv_heads, cudaStream_t st) {
    if (D == 256)
        mass_kernel<256><<<dim3(n_items, n_kv_heads), kMassThreads, 0, st>>>(p);
    else if (D == 128)
        mass_kernel<128><<<dim3(n_items, n_kv_heads), kMassThreads, 0, st>>>(p);
    else
        mass_kernel<64><<<dim3(n_items, n_kv_heads), kMassThreads, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_tidal_select_launch(const TidalSelectParams &p, int n_rows, int n_kv_heads, cudaStream_t st) {
    select_kernel<<<dim3(n_rows, n_kv_heads), kSelThreads, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_tidal_attend_launch(int D, const TidalAttendParams &p, int n_items, int n_kv_heads, cudaStream_t st) {
    if (D == 256)
        attend_kernel<256><<<dim3(n_items, n_kv_heads), kAttThreads, AttSmem<256>::kBytes, st>>>(p);
    else if (D == 128)
        attend_kernel<128><<<dim3(n_items, n_kv_heads), kAttThreads, AttSmem<128>::kBytes, st>>>(p);
    else
        attend_kernel<64><<<dim3(n_items, n_kv_heads), kAttThreads, AttSmem<64>::kBytes, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_tidal_merge_launch(const TidalMergeParams &p, int n_rows, int n_kv_heads, cudaStream_t st) {
    merge_kernel<<<dim3(n_rows, n_kv_heads, p.D / 32), 128, 0, st>>>(p);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}
