// Dense causal prefill over the paged bf16 cache, sm_90a, FlashAttention-3's
// design: one CTA per (sequence, 128-row query block, head) tile of the plan's
// work list; a producer warp loads Q once and K/V tiles of 128 keys (two TMA
// boxes of 64 keys per 64-dim half, each box inside one page) into a two-stage
// ring; two consumer warpgroups of 64 query rows each run S = Q K^T and
// O += P V on wgmma (Q, K, V from shared memory, P from registers), with the
// online softmax in registers.
//
// Default variant: intra-warpgroup overlap (the QK^T of tile i is issued with
// the PV of tile i-1, whose softmax ran meanwhile) and ping-pong scheduling of
// the two consumer warpgroups (named barriers let one warpgroup issue its
// GEMMs while the other runs its softmax). Variants 1 and 2 drop these for
// ablation and as simpler references.
//
// Query tiles follow 128-position blocks, so only a tile's diagonal KV tile
// (the first visited) crosses the diagonal; it is masked by position (a row
// placed past the keys by q_pos0 sees every key: its limit is the last). KV
// tiles are visited from the diagonal down to key 0, or, for a block-sparse
// sequence (attn_cuda.h), the diagonal and then the tiles whose mask bits are
// set, from high to low (the producer and the consumers count the same bits). The last tile of a sequence may hold
// keys past kv_len (a page's unused slots, or a box that was not loaded):
// their scores are masked and their V rows zeroed in shared memory, so stale
// or NaN slots never reach an output.
#include "attn/cuda/plan.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int BM = ATTN_PF_BM, BN = ATTN_PF_BN;
[[maybe_unused]] constexpr int kBox = ATTN_KV_BOX;
constexpr int kStages = 2;
constexpr int kThreads = 384;                 // producer warpgroup + two consumer warpgroups
[[maybe_unused]] constexpr int kBarVZero = 1; // named barriers: both consumers after zeroing V rows
[[maybe_unused]] constexpr int kBarSched = 2; // 2, 3: consumer warpgroup 0, 1 may issue its GEMMs


// Shared memory: operand tiles of R rows x D dims are stored as D/64 halves of
// R rows x 128 bytes in the 128-byte swizzle, half h at h * R * 128.
template <int D> struct PrefillSmem {
    static constexpr int kQBytes = BM * D * 2, kKVBytes = BN * D * 2;
    static constexpr int kQ = 0;
    static constexpr int kK = kQ + kQBytes;
    static constexpr int kV = kK + kStages * kKVBytes;
    static constexpr int kBar = kV + kStages * kKVBytes; // q, k_full[2], k_empty[2], v_full[2], v_empty[2]
    static constexpr int kBytes = kBar + 16 * 8;
    static constexpr int kAlloc = kBytes + 1024; // room to align the base to 1024
};

#if LC_SM90A
// Causal mask of one KV tile: keys past each row's position get -inf (a
// select, so a NaN score of a stale slot is dropped too).
template <int D> __device__ __forceinline__ void mask_tile(float (&s)[BN / 2], int lim_a, int lim_b, int qd) {
#pragma unroll
    for (int j = 0; j < BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int c = 8 * j + qd + e;
            if (c > lim_a) s[4 * j + e] = -INFINITY;
            if (c > lim_b) s[4 * j + 2 + e] = -INFINITY;
        }
}

// Online softmax of one tile for this thread's two rows (a: S[4j], S[4j+1];
// b: S[4j+2], S[4j+3]); s becomes P (unnormalised, fp32); returns the factors
// that rescale the earlier O and l.
__device__ __forceinline__ void softmax_tile(float (&s)[BN / 2], float &m_a, float &m_b, float &l_a, float &l_b,
                                             float sl2, float &sc_a, float &sc_b) {
    float mx_a = m_a, mx_b = m_b;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        mx_a = fmaxf(mx_a, fmaxf(s[4 * j], s[4 * j + 1]));
        mx_b = fmaxf(mx_b, fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    // A row with every key masked so far keeps max -inf: use 0 as its base.
    sc_a = mx_a == -INFINITY ? 1.f : fast_exp2((m_a - mx_a) * sl2);
    sc_b = mx_b == -INFINITY ? 1.f : fast_exp2((m_b - mx_b) * sl2);
    const float base_a = mx_a == -INFINITY ? 0.f : mx_a * sl2;
    const float base_b = mx_b == -INFINITY ? 0.f : mx_b * sl2;
    m_a = mx_a;
    m_b = mx_b;
    float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
    for (int j = 0; j < BN / 8; j++) {
        s[4 * j] = fast_exp2(fmaf(s[4 * j], sl2, -base_a));
        s[4 * j + 1] = fast_exp2(fmaf(s[4 * j + 1], sl2, -base_a));
        s[4 * j + 2] = fast_exp2(fmaf(s[4 * j + 2], sl2, -base_b));
        s[4 * j + 3] = fast_exp2(fmaf(s[4 * j + 3], sl2, -base_b));
        sum_a += s[4 * j] + s[4 * j + 1];
        sum_b += s[4 * j + 2] + s[4 * j + 3];
    }
    l_a = l_a * sc_a + sum_a;
    l_b = l_b * sc_b + sum_b;
}

// P (accumulator layout) to bf16 A-operand fragments, 16 keys per k-step.
__device__ __forceinline__ void p_to_frag(const float (&s)[BN / 2], uint32_t (&pf)[BN / 16][4]) {
#pragma unroll
    for (int k = 0; k < BN / 16; k++) {
        pf[k][0] = pack_bf16(s[8 * k], s[8 * k + 1]);
        pf[k][1] = pack_bf16(s[8 * k + 2], s[8 * k + 3]);
        pf[k][2] = pack_bf16(s[8 * k + 4], s[8 * k + 5]);
        pf[k][3] = pack_bf16(s[8 * k + 6], s[8 * k + 7]);
    }
}

template <int D> __device__ __forceinline__ void rescale_o(float (&o)[D / 2], float sc_a, float sc_b) {
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        o[4 * j] *= sc_a;
        o[4 * j + 1] *= sc_a;
        o[4 * j + 2] *= sc_b;
        o[4 * j + 3] *= sc_b;
    }
}

// One warp's share of releasing a stage: every warp arrives once its own
// wgmma reads are complete (the empty barriers count 8 consumer warps).
__device__ __forceinline__ void release(uint64_t *bar) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) mbar_arrive(bar);
}
#endif

template <int D, bool kOverlap, bool kPingpong>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                   const __grid_constant__ CUtensorMap tm_v, const PrefillParams p) {
#if LC_SM90A
    using L = PrefillSmem<D>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *sm = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t *sQ = sm + L::kQ, *sK = sm + L::kK, *sV = sm + L::kV;
    uint64_t *bars = reinterpret_cast<uint64_t *>(sm + L::kBar);
    uint64_t *bar_q = bars, *k_full = bars + 1, *k_empty = bars + 3, *v_full = bars + 5, *v_empty = bars + 7;

    const int4 it = p.items[blockIdx.x];
    const int seq = it.x, head = it.z, kvh = head / p.group;
    const int kv_len = p.kv_len[seq];
    const int q0 = p.q_indptr[seq], nq = p.q_indptr[seq + 1] - q0;
    const int row0 = it.y;                           // the tile's first query row within the sequence
    const int pos0 = p.seq_info[seq].y + row0;       // position of tile row 0 (kv_len - nq + row0 by default)
    const int rows = min(BM - pos0 % BM, nq - row0); // valid rows of the tile (one 128-position block)
    // A row at position t sees keys 0 .. min(t, kv_len - 1): rows past the
    // keys (q_pos0, attn_cuda.h) see them all. Every row's last visible key
    // lies in the first tile visited, so only that tile is masked.
    const int n_tiles = min(pos0 + rows - 1, kv_len - 1) / BN + 1; // the last is the diagonal tile
    // Block-sparse: this tile's mask row; the diagonal plus the set bits below
    // it, or with mask_only the set bits alone (then no tile visited crosses
    // the diagonal, and a row may visit none).
    // The query blocks of the masks start at the sequence's first row's
    // (q_pos0's) and end at its last row's; with mask_only the candidates
    // are the set bits below the tile's own query block (every tile, for
    // rows placed past the keys).
    const uint32_t *mrow = nullptr;
    int n_iter = n_tiles, t_first = n_tiles - 1;
    bool skip_diag = false;
    if (p.mask && p.seq_info[seq].x >= 0) {
        const int qpos = p.seq_info[seq].y, qb0 = qpos / BN, n_qb = (qpos + nq - 1) / BN - qb0 + 1;
        const int words = ((kv_len - 1) / BN + 1 + 31) / 32;
        mrow = p.mask + p.seq_info[seq].x + ((size_t)head * n_qb + (pos0 / BN - qb0)) * words;
        // mask_only 2: the diagonal block too, when its bit is set (a context-parallel rank's share)
        skip_diag = p.mask_only == 1 || (p.mask_only == 2 && !(mrow[(n_tiles - 1) >> 5] >> ((n_tiles - 1) & 31) & 1u));
        if (skip_diag) t_first = min(n_tiles, pos0 / BN); // exclusive: the first tile is the bit below it
        n_iter = (skip_diag ? 0 : 1) + count_bits_below(mrow, skip_diag ? t_first : n_tiles - 1);
    }
    const bool diag_masked = !skip_diag && (min(pos0, kv_len - 1) + 1) / BN < n_tiles; // crosses some row's diagonal

    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wg = threadIdx.x >> 7;
    if (threadIdx.x == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < kStages; s++) {
            mbar_init(&k_full[s], 1);
            mbar_init(&v_full[s], 1);
            mbar_init(&k_empty[s], 8);
            mbar_init(&v_empty[s], 8);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) { // ---- producer ---------------------------------------------------------
        setmaxnreg_dec<24>();
        if (warp == 0 && lane == 0) {
            mbar_arrive_expect_tx(bar_q, BM * D * 2);
#pragma unroll
            for (int h = 0; h < D / 64; h++) tma_load_3d(sQ + h * BM * 128, &tm_q, bar_q, h * 64, head, q0 + row0);
            const int32_t *pages = p.kv_indices + p.kv_indptr[seq];
            for (int i = 0, t = t_first; i < n_iter; i++) {
                if (i > 0 || skip_diag) t = mrow ? prev_set_bit(mrow, t - 1) : t - 1;
                const int st = i % kStages;
                const uint32_t ph = (i / kStages) & 1;
                const int nb = min(BN / kBox, (kv_len - t * BN + kBox - 1) / kBox); // boxes holding valid keys
                const uint32_t bytes = nb * kBox * D * 2;
                int rowk[BN / kBox];
#pragma unroll
                for (int b = 0; b < BN / kBox; b++) {
                    const int key0 = t * BN + b * kBox;
                    rowk[b] = b < nb
                                  ? (pages[key0 / p.page_size] * p.n_kv_heads + kvh) * p.page_size + key0 % p.page_size
                                  : 0;
                }
                mbar_wait(&k_empty[st], ph ^ 1);
                mbar_arrive_expect_tx(&k_full[st], bytes);
                for (int b = 0; b < nb; b++)
#pragma unroll
                    for (int h = 0; h < D / 64; h++)
                        tma_load_2d(sK + st * L::kKVBytes + h * BN * 128 + b * kBox * 128, &tm_k, &k_full[st], h * 64,
                                    rowk[b]);
                mbar_wait(&v_empty[st], ph ^ 1);
                mbar_arrive_expect_tx(&v_full[st], bytes);
                for (int b = 0; b < nb; b++)
#pragma unroll
                    for (int h = 0; h < D / 64; h++)
                        tma_load_2d(sV + st * L::kKVBytes + h * BN * 128 + b * kBox * 128, &tm_v, &v_full[st], h * 64,
                                    rowk[b]);
            }
        }
    } else { // ---- consumers (setmaxnreg needs the roles as the two branches of one if/else)
        setmaxnreg_inc<240>();
        const int cw = wg - 1;                                   // consumer warpgroup: tile rows 64*cw ..
        const int r_a = 64 * cw + 16 * (warp & 3) + (lane >> 2); // tile row of s[4j], s[4j+1]; r_a + 8 for s[4j+2..3]
        const int qd = (lane & 3) * 2;
        const int lim_a0 = min(pos0 + r_a, kv_len - 1), lim_b0 = min(pos0 + r_a + 8, kv_len - 1); // their last keys
        const float sl2 = p.scale_log2;

        float o[D / 2], s[BN / 2];
        uint32_t pf[BN / 16][4];
        float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f, sc_a, sc_b;
#pragma unroll
        for (int i = 0; i < D / 2; i++) o[i] = 0.f;

        const uint32_t q_base = smem_u32(sQ) + cw * 64 * 128;
        auto issue_qk = [&](int st) {
            const uint32_t k_base = smem_u32(sK) + st * L::kKVBytes;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                const int h = kk / 4, w = kk % 4;
                wgmma_ss_m64n128k16(s, wgmma_desc(q_base + h * BM * 128 + w * 32, 16, 1024),
                                    wgmma_desc(k_base + h * BN * 128 + w * 32, 16, 1024), kk > 0);
            }
        };
        auto issue_pv = [&](int st) {
            const uint32_t v_base = smem_u32(sV) + st * L::kKVBytes;
#pragma unroll
            for (int kt = 0; kt < BN / 16; kt++) {
                const uint64_t db = wgmma_desc(v_base + kt * 16 * 128, BN * 128, 1024);
                if constexpr (D == 128)
                    wgmma_rs_m64n128k16_tb(o, pf[kt], db, 1);
                else
                    wgmma_rs_m64n64k16_tb(o, pf[kt], db, 1);
            }
        };
        auto masked_softmax = [&](bool diag) {
            if (diag && diag_masked) mask_tile<D>(s, lim_a0 - (n_tiles - 1) * BN, lim_b0 - (n_tiles - 1) * BN, qd);
            softmax_tile(s, m_a, m_b, l_a, l_b, sl2, sc_a, sc_b);
        };
        // Rows of the first tile (the last keys) past kv_len: zero their V rows
        // once the tile has landed (both warpgroups share the stage).
        auto zero_tail_v = [&]() {
            const int z0 = kv_len - (n_tiles - 1) * BN;
            if (z0 >= BN || skip_diag) return; // (without the diagonal every tile visited is whole)
            mbar_wait(&v_full[0], 0);
            const int n = (BN - z0) * (D / 8);
            for (int c = threadIdx.x - 128; c < n; c += 256) {
                const int r = z0 + c / (D / 8), k = c % (D / 8);
                *reinterpret_cast<uint4 *>(sV + (k / 8) * BN * 128 + r * 128 + (k % 8) * 16) = make_uint4(0, 0, 0, 0);
            }
            fence_proxy_async();
            named_sync(kBarVZero, 256);
        };

        if (kPingpong && cw == 0 && n_iter > 0) named_arrive(kBarSched, 256); // warpgroup 0 takes the first turn
        mbar_wait(bar_q, 0);

        if (n_iter == 0) {
            // mask_only and no bit set: out 0, lse -inf (l = 0 below)
        } else if constexpr (kOverlap) {
            mbar_wait(&k_full[0], 0);
            wgmma_fence();
            issue_qk(0);
            wgmma_commit();
            wgmma_wait<0>();
            reg_fence(s);
            release(&k_empty[0]);
            masked_softmax(true);
            p_to_frag(s, pf);
            zero_tail_v();
            for (int i = 1; i < n_iter; i++) {
                const int st = i % kStages, pst = (i - 1) % kStages;
                mbar_wait(&k_full[st], (i / kStages) & 1);
                if (kPingpong) named_sync(kBarSched + cw, 256);
                reg_fence(o);
                reg_fence(pf);
                wgmma_fence();
                issue_qk(st);
                wgmma_commit();
                mbar_wait(&v_full[pst], ((i - 1) / kStages) & 1);
                wgmma_fence();
                issue_pv(pst);
                wgmma_commit();
                if (kPingpong) named_arrive(kBarSched + (1 - cw), 256);
                wgmma_wait<1>();
                reg_fence(s);
                release(&k_empty[st]);
                masked_softmax(false);
                wgmma_wait<0>();
                reg_fence(o);
                reg_fence(pf);
                release(&v_empty[pst]);
                p_to_frag(s, pf);
                rescale_o<D>(o, sc_a, sc_b);
            }
            const int il = n_iter - 1, st = il % kStages;
            mbar_wait(&v_full[st], (il / kStages) & 1);
            reg_fence(o);
            reg_fence(pf);
            wgmma_fence();
            issue_pv(st);
            wgmma_commit();
            wgmma_wait<0>();
            reg_fence(o);
            release(&v_empty[st]);
            if (kPingpong && cw == 0) named_sync(kBarSched, 256); // takes warpgroup 1's last arrival
        } else {
            for (int i = 0; i < n_iter; i++) {
                const int st = i % kStages;
                const uint32_t ph = (i / kStages) & 1;
                mbar_wait(&k_full[st], ph);
                wgmma_fence();
                issue_qk(st);
                wgmma_commit();
                wgmma_wait<0>();
                reg_fence(s);
                release(&k_empty[st]);
                masked_softmax(i == 0);
                rescale_o<D>(o, sc_a, sc_b);
                p_to_frag(s, pf);
                if (i == 0) zero_tail_v();
                mbar_wait(&v_full[st], ph);
                reg_fence(o);
                reg_fence(pf);
                wgmma_fence();
                issue_pv(st);
                wgmma_commit();
                wgmma_wait<0>();
                reg_fence(o);
                release(&v_empty[st]);
            }
        }

        // ---- epilogue: normalise, write O (bf16) and the LSE of the valid rows --------------
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
        l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
        l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
        const float inv_a = l_a > 0.f ? 1.f / l_a : 0.f, inv_b = l_b > 0.f ? 1.f / l_b : 0.f;
        const size_t g_a = (size_t)q0 + row0 + r_a, g_b = g_a + 8;
        if (r_a < rows) {
            __nv_bfloat16 *op = p.out + (g_a * p.n_heads + head) * D + qd;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                *reinterpret_cast<uint32_t *>(op + 8 * j) = pack_bf16(o[4 * j] * inv_a, o[4 * j + 1] * inv_a);
            if (p.lse && (lane & 3) == 0) p.lse[g_a * p.n_heads + head] = (m_a * sl2 + __log2f(l_a)) * 0.69314718056f;
            if (p.rowmax && (lane & 3) == 0) p.rowmax[g_a * p.n_heads + head] = m_a * sl2 * 0.69314718056f;
        }
        if (r_a + 8 < rows) {
            __nv_bfloat16 *op = p.out + (g_b * p.n_heads + head) * D + qd;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                *reinterpret_cast<uint32_t *>(op + 8 * j) = pack_bf16(o[4 * j + 2] * inv_b, o[4 * j + 3] * inv_b);
            if (p.lse && (lane & 3) == 0) p.lse[g_b * p.n_heads + head] = (m_b * sl2 + __log2f(l_b)) * 0.69314718056f;
            if (p.rowmax && (lane & 3) == 0) p.rowmax[g_b * p.n_heads + head] = m_b * sl2 * 0.69314718056f;
        }
    }
#else
    __trap();
#endif
}

const char *const kVariantNames[] = {"wgmma overlap+pingpong", "wgmma overlap", "wgmma plain"};
constexpr int kNumVariants = sizeof kVariantNames / sizeof kVariantNames[0];

template <int D, bool kOverlap, bool kPingpong> int set_smem() {
    CUDA_CHECK_RET(cudaFuncSetAttribute(prefill_kernel<D, kOverlap, kPingpong>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, PrefillSmem<D>::kAlloc));
    return 0;
}

template <int D>
int launch_prefill(int variant, const CUtensorMap &mq, const CUtensorMap &mk, const CUtensorMap &mv,
                   const PrefillParams &pp, int n_items, cudaStream_t stream) {
    const int smem = PrefillSmem<D>::kAlloc;
    switch (variant) {
    case 0: prefill_kernel<D, true, true><<<n_items, kThreads, smem, stream>>>(mq, mk, mv, pp); break;
    case 1: prefill_kernel<D, true, false><<<n_items, kThreads, smem, stream>>>(mq, mk, mv, pp); break;
    default: prefill_kernel<D, false, false><<<n_items, kThreads, smem, stream>>>(mq, mk, mv, pp); break;
    }
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// Pairs a block-sparse sequence computes: one CTA per sequence, a thread per
// (head, query block) row of its masks; integer sums (exact, any order).
__global__ void mask_pairs_kernel(const int32_t *q_indptr, const int32_t *kv_len, const int4 *seq_info,
                                  const uint32_t *mask, int n_heads, unsigned long long *pairs) {
    const int s = blockIdx.x, off = seq_info[s].x;
    if (off < 0) return;
    const int len = kv_len[s], nq = q_indptr[s + 1] - q_indptr[s], pos_first = len - nq;
    const int qb0 = pos_first / BN, n_kb = (len - 1) / BN + 1, n_qb = n_kb - qb0, words = (n_kb + 31) / 32;
    unsigned long long acc = 0;
    for (int r = threadIdx.x; r < n_heads * n_qb; r += blockDim.x) {
        const int qb = qb0 + r % n_qb;
        const int p0 = max(qb * BN, pos_first), p1 = min((qb + 1) * BN, len); // the rows' positions [p0, p1)
        const uint32_t *row = mask + off + (size_t)r * words;                 // r = head * n_qb + (qb - qb0)
        int below = 0;
        for (int w = 0; w < qb / 32; w++) below += __popc(row[w]);
        if (qb & 31) below += __popc(row[qb / 32] & ((1u << (qb & 31)) - 1u));
        // every selected block below the diagonal: BN keys per row; the diagonal: keys up to each row
        acc += (unsigned long long)below * BN * (p1 - p0) +
               (unsigned long long)(p1 - p0) * (p0 + p1 + 1 - 2 * qb * BN) / 2;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0 && acc) atomicAdd(pairs + s, acc);
}

} // namespace

int attn_cuda_mask_pairs_launch(const attn_cuda_plan_t *p, const uint32_t *mask, unsigned long long *pairs,
                                cudaStream_t stream) {
    if (p->n_sparse == 0) return 0;
    const int32_t *d = p->d_arena;
    mask_pairs_kernel<<<p->n_seqs, 256, 0, stream>>>(d + p->off_q_indptr, d + p->off_kv_len,
                                                     reinterpret_cast<const int4 *>(d + p->off_seq_info), mask,
                                                     p->shape.n_heads, pairs);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int attn_cuda_prefill_init(void) {
    int rc;
    if ((rc = set_smem<64, true, true>()) || (rc = set_smem<64, true, false>()) ||
        (rc = set_smem<64, false, false>()) || (rc = set_smem<128, true, true>()) ||
        (rc = set_smem<128, true, false>()) || (rc = set_smem<128, false, false>()))
        return rc;
    return 0;
}

int attn_cuda_prefill_variants(void) { return kNumVariants; }
const char *attn_cuda_prefill_variant_name(int v) { return v >= 0 && v < kNumVariants ? kVariantNames[v] : NULL; }

PrefillParams attn_cuda_prefill_params(const attn_cuda_plan_t *p, const attn_cuda_args_t *a) {
    const int32_t *d = p->d_arena;
    PrefillParams pp;
    pp.q_indptr = d + p->off_q_indptr;
    pp.kv_indptr = d + p->off_kv_indptr;
    pp.kv_indices = d + p->off_kv_indices;
    pp.kv_len = d + p->off_kv_len;
    pp.items = reinterpret_cast<const int4 *>(d + p->off_items);
    pp.seq_info = reinterpret_cast<const int4 *>(d + p->off_seq_info);
    pp.mask = p->n_sparse > 0 ? a->block_mask : nullptr;
    pp.out = static_cast<__nv_bfloat16 *>(a->out);
    pp.lse = a->lse;
    pp.rowmax = a->rowmax;
    pp.n_heads = p->shape.n_heads;
    pp.n_kv_heads = p->shape.n_kv_heads;
    pp.group = p->group;
    pp.page_size = p->shape.page_size;
    pp.mask_only = a->mask_only;
    pp.window = p->window;
    pp.scale_log2 = p->shape.scale * 1.4426950408889634f;
    return pp;
}

int attn_cuda_prefill_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream) {
    if (p->shape.head_dim == 256 || p->window > 0) return attn_cuda_prefill_mma_launch(p, a, stream);
    if (p->n_items == 0) return 0;
    CUtensorMap mq, mk, mv;
    int rc;
    if ((rc = attn_cuda_map_q(p, a->q, &mq)) || (rc = attn_cuda_map_kv(p, a->k, &mk)) ||
        (rc = attn_cuda_map_kv(p, a->v, &mv)))
        return rc;
    const PrefillParams pp = attn_cuda_prefill_params(p, a);
    if (p->shape.head_dim == 128) return launch_prefill<128>(a->variant, mq, mk, mv, pp, p->n_items, stream);
    return launch_prefill<64>(a->variant, mq, mk, mv, pp, p->n_items, stream);
}
