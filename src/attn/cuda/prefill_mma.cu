// Causal prefill on mma.sync (FlashAttention-2's design on Hopper's TMA):
// the kernel for what the wgmma kernel (prefill.cu) does not take, head_dim
// 256 (Gemma 3) and sliding windows (attn_cuda_batch_t.window).
//
// One CTA per (sequence, 128-row query block, head) tile of the plan's work
// list, as prefill.cu. The tile's queries come in once by TMA; the tile's
// keys come in stages of 64 (one TMA box per 64-dim half of K and of V,
// inside one page) into two buffers, thread 0 issuing stage i + 1 while
// stage i is computed, from the stage of the last visible key down to the
// stage of the first: key 0, or with a window the first row's first key
// (position - window + 1). Eight warps of 16 query rows each run S = Q K^T
// and O += P V on mma.sync (m16n8k16, bf16 in, f32 accumulation) over every
// stage, with the online softmax in registers; Q and K come from shared
// memory by ldmatrix (Q does not fit the registers beside a 256-dim O). No
// producer warp: a ninth warp would cap the registers at 168 a thread, too
// few for a 256-dim O without spilling.
//
// A stage is masked per element where it crosses some row's causal limit or
// window start (a select: a NaN score of a stale slot is dropped too); V
// rows past kv_len are zeroed in the fragments, so stale or NaN slots never
// reach an output. Keys below a window's start but inside the sequence are
// real cache entries (finite): P = 0 removes them.
//
// Block-sparse sequences (FlexPrefill's masks, attn_cuda.h) visit their
// diagonal block's stages, then both stages of every set bit below it, from
// high to low; the loads and the warps walk the same sequence. With
// mask_only (AnchorAttention's whole kept blocks) the set bits alone.
#include "attn/cuda/plan.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int BM = ATTN_PF_BM;          // query rows per tile
constexpr int kStageKeys = ATTN_KV_BOX; // 64 keys per stage
constexpr int kStages = 2;
constexpr int kWarps = BM / 16; // 16 rows apiece
constexpr int kThreads = kWarps * 32;


// Operand tiles of R rows x D dims as D/64 halves of R rows x 128 bytes in
// the 128-byte swizzle (the TMA boxes' layout), half h at h * R * 128.
template <int D> struct MmaSmem {
    static constexpr int kHalfQ = BM * 128, kHalfKV = kStageKeys * 128;
    static constexpr int kQ = 0;
    static constexpr int kKV = (D / 64) * kHalfKV; // one stage of K (or V)
    static constexpr int kK = (D / 64) * kHalfQ;
    static constexpr int kV = kK + kStages * kKV;
    static constexpr int kBar = kV + kStages * kKV; // q, full[2]
    static constexpr int kBytes = kBar + 8 * 8;
    static constexpr int kAlloc = kBytes + 1024;
    static_assert(kAlloc <= 227 * 1024, "shared memory of one CTA");
};

// The walk over a tile's stages (see the top): the stage after st, the
// 128-key block blk holding it; mrow NULL for a dense tile.
__device__ __forceinline__ void next_stage(const uint32_t *mrow, int &st, int &blk) {
    if (mrow && st == 2 * blk) {
        blk = prev_set_bit(mrow, blk - 1);
        st = 2 * blk + 1;
    } else {
        st--;
    }
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_mma_kernel(const __grid_constant__ CUtensorMap tm_q, const __grid_constant__ CUtensorMap tm_k,
                       const __grid_constant__ CUtensorMap tm_v, const PrefillParams p) {
    using L = MmaSmem<D>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *sm = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t *sQ = sm + L::kQ, *sK = sm + L::kK, *sV = sm + L::kV;
    uint64_t *bar_q = reinterpret_cast<uint64_t *>(sm + L::kBar), *full = bar_q + 1;

    const int4 it = p.items[blockIdx.x];
    const int seq = it.x, row0 = it.y, head = it.z, kvh = head / p.group;
    const int kv_len = p.kv_len[seq];
    const int q0 = p.q_indptr[seq], nq = p.q_indptr[seq + 1] - q0;
    const int pos0 = p.seq_info[seq].y + row0;       // position of tile row 0
    const int rows = min(BM - pos0 % BM, nq - row0); // valid rows of the tile
    // The tile's keys: up to its last row's last visible key, from its first
    // row's first (0 without a window). None when the window ends before
    // the keys do (rows placed far past them by q_pos0).
    const int hi = min(pos0 + rows - 1, kv_len - 1);
    const int lo = p.window > 0 ? max(0, pos0 - p.window + 1) : 0;
    const int st_hi = hi / kStageKeys;
    int n_stages = hi >= lo ? st_hi - lo / kStageKeys + 1 : 0;
    // A block-sparse tile: its mask row (attn_cuda.h), the diagonal block's
    // stages and both stages of each set bit below it. With mask_only the
    // set bits alone, below the tile's own query block (mask_only 2: the
    // diagonal block too when its bit is set); then a tile may visit none.
    const uint32_t *mrow = nullptr;
    int first_st = st_hi; // the walk's first stage
    if (p.mask && p.seq_info[seq].x >= 0 && n_stages > 0) {
        const int qpos = p.seq_info[seq].y, qb0 = qpos / BM, n_qb = (qpos + nq - 1) / BM - qb0 + 1;
        const int words = ((kv_len - 1) / BM + 1 + 31) / 32, diag = st_hi / 2;
        mrow = p.mask + p.seq_info[seq].x + ((size_t)head * n_qb + (pos0 / BM - qb0)) * words;
        const bool skip_diag = p.mask_only == 1 || (p.mask_only == 2 && !(mrow[diag >> 5] >> (diag & 31) & 1u));
        if (skip_diag) {
            const int t_first = min(diag + 1, pos0 / BM); // exclusive
            const int nb = count_bits_below(mrow, t_first);
            n_stages = 2 * nb;
            if (nb) first_st = 2 * prev_set_bit(mrow, t_first - 1) + 1;
        } else {
            n_stages = st_hi - 2 * diag + 1 + 2 * count_bits_below(mrow, diag);
        }
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    // ---- the loads: thread 0 issues Q and stage 0 now, stage i + 1 at iteration i ---------------
    const int32_t *pages = p.kv_indices + p.kv_indptr[seq];
    int ld_stage = first_st, ld_blk = first_st / 2; // thread 0's walk, one stage ahead of the warps'
    auto issue = [&](int i) {                       // stage i of the walk into buffer i % 2
        const int st = i % kStages, key0 = ld_stage * kStageKeys;
        const int row = (pages[key0 / p.page_size] * p.n_kv_heads + kvh) * p.page_size + key0 % p.page_size;
        mbar_arrive_expect_tx(&full[st], 2 * L::kKV);
#pragma unroll
        for (int h = 0; h < D / 64; h++) {
            tma_load_2d(sK + st * L::kKV + h * L::kHalfKV, &tm_k, &full[st], h * 64, row);
            tma_load_2d(sV + st * L::kKV + h * L::kHalfKV, &tm_v, &full[st], h * 64, row);
        }
        if (i + 1 < n_stages) next_stage(mrow, ld_stage, ld_blk);
    };
    if (threadIdx.x == 0) {
        mbar_init(bar_q, 1);
        for (int s = 0; s < kStages; s++) mbar_init(&full[s], 1);
        mbar_fence_init();
        if (n_stages > 0) { // (a CTA must not leave with a load in flight)
            mbar_arrive_expect_tx(bar_q, (D / 64) * L::kHalfQ);
#pragma unroll
            for (int h = 0; h < D / 64; h++) tma_load_3d(sQ + h * L::kHalfQ, &tm_q, bar_q, h * 64, head, q0 + row0);
            issue(0);
        }
    }
    __syncthreads();

    // ---- warp w owns tile rows 16 w + g and 16 w + g + 8 (g = lane / 4) ----------------------------
    const int g = lane >> 2, qd = (lane & 3) * 2;
    const int r_a = 16 * warp + g, r_b = r_a + 8;
    // Each row's visible keys [lo_x, hi_x]; a padding row sees none.
    const int t_a = pos0 + r_a, t_b = pos0 + r_b;
    const int hi_a = r_a < rows ? min(t_a, kv_len - 1) : -1, hi_b = r_b < rows ? min(t_b, kv_len - 1) : -1;
    const int lo_a = p.window > 0 ? t_a - p.window + 1 : 0, lo_b = p.window > 0 ? t_b - p.window + 1 : 0;
    // The warp's rows together: stages outside [w_lo, w_hi] hold nothing for
    // it; inside [w_lo_all, w_hi_all] a stage is visible to every row.
    const int last = min(16 * warp + 15, rows - 1);
    const bool active = 16 * warp < rows;
    const int w_hi = active ? min(pos0 + last, kv_len - 1) : -1;
    const int w_lo = p.window > 0 ? pos0 + 16 * warp - p.window + 1 : 0;
    const int w_hi_all = min(pos0 + 16 * warp, kv_len - 1);
    const int w_lo_all = p.window > 0 ? pos0 + last - p.window + 1 : 0;
    const float sl2 = p.scale_log2;
    const int mat = lane >> 3, r8 = lane & 7;

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    const uint32_t qbase = smem_u32(sQ);
    if (n_stages > 0) mbar_wait(bar_q, 0);

    for (int i = 0, stage = first_st, blk = first_st / 2; i < n_stages; i++) {
        const int st = i % kStages, key0 = stage * kStageKeys;
        if (i + 1 < n_stages) next_stage(mrow, stage, blk);
        // buffer (i + 1) % 2 held stage i - 1, which every warp is done with (the barrier below)
        if (threadIdx.x == 0 && i + 1 < n_stages) issue(i + 1);
        mbar_wait(&full[st], (i / kStages) & 1);
        if (active && key0 <= w_hi && key0 + kStageKeys - 1 >= w_lo) {
            // S (16 rows x 64 keys) = Q K^T; s[n]: keys 8n..8n+7 of the stage
            float s[8][4];
#pragma unroll
            for (int n = 0; n < 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
            const uint32_t kb = smem_u32(sK + st * L::kKV);
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t qa[4];
                ldmatrix_x4(qa, qbase + (kk / 4) * L::kHalfQ +
                                    sw128(16 * warp + (mat & 1) * 8 + r8, (kk % 4) * 2 + (mat >> 1)));
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint32_t r[4];
                    ldmatrix_x4(r, kb + (kk / 4) * L::kHalfKV +
                                       sw128(16 * j + (mat >> 1) * 8 + r8, (kk % 4) * 2 + (mat & 1)));
                    mma_bf16_16816(s[2 * j], qa, r[0], r[1]);
                    mma_bf16_16816(s[2 * j + 1], qa, r[2], r[3]);
                }
            }
            // s[n][0..1]: row a, keys key0 + 8n + qd + {0,1}; s[n][2..3]: row b
            if (key0 + kStageKeys - 1 > w_hi_all || key0 < w_lo_all)
#pragma unroll
                for (int n = 0; n < 8; n++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int k = key0 + 8 * n + qd + e;
                        if (k > hi_a || k < lo_a) s[n][e] = -INFINITY;
                        if (k > hi_b || k < lo_b) s[n][2 + e] = -INFINITY;
                    }
            float mx_a = m_a, mx_b = m_b;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                mx_a = fmaxf(mx_a, fmaxf(s[n][0], s[n][1]));
                mx_b = fmaxf(mx_b, fmaxf(s[n][2], s[n][3]));
            }
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            // A row with every key masked so far keeps max -inf: 0 as its base.
            const float sc_a = mx_a == -INFINITY ? 1.f : fast_exp2((m_a - mx_a) * sl2);
            const float sc_b = mx_b == -INFINITY ? 1.f : fast_exp2((m_b - mx_b) * sl2);
            const float base_a = mx_a == -INFINITY ? 0.f : mx_a * sl2, base_b = mx_b == -INFINITY ? 0.f : mx_b * sl2;
            m_a = mx_a;
            m_b = mx_b;
            float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
            for (int n = 0; n < 8; n++) {
                s[n][0] = fast_exp2(fmaf(s[n][0], sl2, -base_a));
                s[n][1] = fast_exp2(fmaf(s[n][1], sl2, -base_a));
                s[n][2] = fast_exp2(fmaf(s[n][2], sl2, -base_b));
                s[n][3] = fast_exp2(fmaf(s[n][3], sl2, -base_b));
                sum_a += s[n][0] + s[n][1];
                sum_b += s[n][2] + s[n][3];
            }
            l_a = l_a * sc_a + sum_a;
            l_b = l_b * sc_b + sum_b;
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                o[n][0] *= sc_a;
                o[n][1] *= sc_a;
                o[n][2] *= sc_b;
                o[n][3] *= sc_b;
            }
            // O (16 rows x D) += P V, 16 keys a k-step; V rows past kv_len may hold NaN
            const uint32_t vb = smem_u32(sV + st * L::kKV);
#pragma unroll
            for (int kc = 0; kc < 4; kc++) {
                const int nv = kv_len - (key0 + 16 * kc); // valid keys of these 16
                if (nv <= 0) break;
                const uint32_t pa[4] = {pack_bf16(s[2 * kc][0], s[2 * kc][1]), pack_bf16(s[2 * kc][2], s[2 * kc][3]),
                                        pack_bf16(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                        pack_bf16(s[2 * kc + 1][2], s[2 * kc + 1][3])};
                const int tv = 16 * kc + (mat & 1) * 8 + r8;
#pragma unroll
                for (int nd = 0; nd < D / 16; nd++) {
                    uint32_t r[4];
                    ldmatrix_x4_trans(r, vb + (nd / 4) * L::kHalfKV + sw128(tv, (nd % 4) * 2 + (mat >> 1)));
                    if (nv < 16) {
                        r[0] = keep_keys(r[0], qd, nv);
                        r[1] = keep_keys(r[1], 8 + qd, nv);
                        r[2] = keep_keys(r[2], qd, nv);
                        r[3] = keep_keys(r[3], 8 + qd, nv);
                    }
                    mma_bf16_16816(o[2 * nd], pa, r[0], r[1]);
                    mma_bf16_16816(o[2 * nd + 1], pa, r[2], r[3]);
                }
            }
        }
        __syncthreads(); // buffer st is free for stage i + 2
    }

    // ---- epilogue: normalise, write O (bf16), the LSE and the row max of the valid rows ---------
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    // row a holds o[n][0..1], row b (8 rows on) o[n][2..3]
#pragma unroll
    for (int x = 0; x < 2; x++) {
        const int r = x ? r_b : r_a;
        const float l = x ? l_b : l_a, m = x ? m_b : m_a, inv = l > 0.f ? 1.f / l : 0.f;
        if (r >= rows) continue;
        const size_t row = (size_t)q0 + row0 + r;
        __nv_bfloat16 *op = p.out + (row * p.n_heads + head) * D + qd;
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *reinterpret_cast<uint32_t *>(op + 8 * n) = pack_bf16(o[n][2 * x] * inv, o[n][2 * x + 1] * inv);
        constexpr float kLn2 = 0.69314718056f;
        if (p.lse && (lane & 3) == 0)
            p.lse[row * p.n_heads + head] = l > 0.f ? (m * sl2 + __log2f(l)) * kLn2 : -INFINITY;
        if (p.rowmax && (lane & 3) == 0) p.rowmax[row * p.n_heads + head] = m * sl2 * kLn2;
    }
}

template <int D> int set_smem() {
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(prefill_mma_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, MmaSmem<D>::kAlloc));
    return 0;
}

template <int D>
int launch(const CUtensorMap &mq, const CUtensorMap &mk, const CUtensorMap &mv, const PrefillParams &mp, int n_items,
           cudaStream_t stream) {
    prefill_mma_kernel<D><<<n_items, kThreads, MmaSmem<D>::kAlloc, stream>>>(mq, mk, mv, mp);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

} // namespace

int attn_cuda_prefill_mma_init(void) {
    int rc;
    if ((rc = set_smem<64>()) || (rc = set_smem<128>()) || (rc = set_smem<256>())) return rc;
    return 0;
}

int attn_cuda_prefill_mma_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream) {
    if (p->n_items == 0) return 0;
    CUtensorMap mq, mk, mv;
    int rc;
    if ((rc = attn_cuda_map_q(p, a->q, &mq)) || (rc = attn_cuda_map_kv(p, a->k, &mk)) ||
        (rc = attn_cuda_map_kv(p, a->v, &mv)))
        return rc;
    const PrefillParams mp = attn_cuda_prefill_params(p, a);
    switch (p->shape.head_dim) {
    case 256: return launch<256>(mq, mk, mv, mp, p->n_items, stream);
    case 128: return launch<128>(mq, mk, mv, mp, p->n_items, stream);
    default: return launch<64>(mq, mk, mv, mp, p->n_items, stream);
    }
}
