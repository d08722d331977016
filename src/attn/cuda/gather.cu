// Token-gather attention on mma.sync (gather_cuda.h has the contract).
//
// One CTA per (128-row tile, head), eight warps of 16 rows. Each warp keeps
// its rows' Q as m16n8k16 A fragments in registers (at 256 dims in shared
// memory, read by ldmatrix), its O (16 x D, f32) and the online-softmax
// state (m, l) of its two rows per thread. The CTA walks
// the tile's list 64 entries at a time: warp w gathers entries 8 w .. 8 w +
// 7 of the next 64 (K and V rows, cp.async from their pages) into the other
// stage while all eight warps compute on this one; entries past the list are
// zero-filled and their scores masked, so stale shared memory never reaches
// an output. 128 rows share each staged key (twice the reuse of 64-row
// tiles, at the same eight warps per SM: one CTA of up to 255 registers).
#include <math.h>

#include "attn/cuda/gather_cuda.h"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kTileRows = 16 * kWarps;    // rows (positions) per CTA
constexpr int kKeys = 64;                 // listed keys per shared-memory stage
constexpr int kLoadRows = kKeys / kWarps; // entries each warp gathers per stage
constexpr float kLn2 = 0.69314718056f;

struct GatherParams {
    const __nv_bfloat16 *q, *k, *v;
    const int32_t *pages, *list, *count;
    int64_t list_stride;
    int n_lists, n_rows, pos0, tile0, group, g_first;
    int split_len; // 0: whole lists; else the least entries of a part (part blockIdx.z of gridDim.z)
    float *out, *lse;
    int n_heads, n_kv_heads, q_per_kv, page_size;
    float scale_log2;
};

// Two stages of K[64][RS] and V[64][RS] bf16. RS = D + 8 pads a row by 16
// bytes, so the eight rows one ldmatrix reads fall in distinct banks. At 256
// dims the tile's Q (128 rows of RS) follows them: beside a 256-dim O, Q's
// fragments do not fit the registers, so the warps read them by ldmatrix.
template <int D> struct GatherSmem {
    static constexpr bool kQInSmem = D > 128;
    static constexpr int kRS = D + 8;
    static constexpr int kTile = kKeys * kRS; // one K or V stage, bf16
    static constexpr int kQ = 2 * 2 * kTile;  // Q's offset (bf16 elements)
    static constexpr int kBytes = (kQ + (kQInSmem ? kTileRows * kRS : 0)) * 2;
    static_assert(kBytes <= 227 * 1024, "shared memory of one CTA");
};

__device__ __forceinline__ uint32_t ld_u32(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

// grid (tiles, n_heads, parts), block kThreads.
template <int D> __global__ void __launch_bounds__(kThreads, 1) gather_kernel(const GatherParams p) {
    using L = GatherSmem<D>;
    extern __shared__ __align__(16) uint8_t smem_raw[];
    __nv_bfloat16 *sm = reinterpret_cast<__nv_bfloat16 *>(smem_raw);
    const int h = blockIdx.y, kvh = h / p.q_per_kv, H = p.n_heads, KH = p.n_kv_heads, ps = p.page_size;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int t_pos = p.tile0 + kTileRows * (int)blockIdx.x; // position of the tile's first row slot
    const int gi = p.group ? t_pos / p.group - p.g_first : 0;
    const size_t li = (size_t)h * p.n_lists + gi;
    const int n_all = p.count[li], z = blockIdx.z;
    int first = 0, n = n_all;
    if (p.split_len) {
        const int per = max(p.split_len, ((n_all + (int)gridDim.z - 1) / (int)gridDim.z + kKeys - 1) / kKeys * kKeys);
        first = min(n_all, z * per);
        n = min(n_all - first, per);
    }
    const int32_t *list = p.list + li * p.list_stride + first;
    float *const out = p.out + (size_t)z * p.n_rows * H * D, *const lse = p.lse + (size_t)z * p.n_rows * H;

    // This thread's rows: MMA rows g and g + 8 of its warp's 16 (row indices of the call).
    const int g = lane >> 2, qd = (lane & 3) * 2;
    const int r_a = t_pos + 16 * warp + g - p.pos0, r_b = r_a + 8;
    const bool v_a = r_a >= 0 && r_a < p.n_rows, v_b = r_b >= 0 && r_b < p.n_rows;
    float *o_a = out + ((size_t)(v_a ? r_a : 0) * H + h) * D + qd;
    float *o_b = out + ((size_t)(v_b ? r_b : 0) * H + h) * D + qd;
    if (n <= 0) { // nothing to attend: weight 0 in any merge
#pragma unroll
        for (int nn = 0; nn < D / 8; nn++) {
            if (v_a) *reinterpret_cast<float2 *>(o_a + 8 * nn) = make_float2(0.f, 0.f);
            if (v_b) *reinterpret_cast<float2 *>(o_b + 8 * nn) = make_float2(0.f, 0.f);
        }
        if ((lane & 3) == 0 && v_a) lse[(size_t)r_a * H + h] = -INFINITY;
        if ((lane & 3) == 0 && v_b) lse[(size_t)r_b * H + h] = -INFINITY;
        return;
    }

    // Q as A fragments (rows outside the call are zero: finite scores, never stored):
    // in registers, or at 256 dims the warp's 16 rows in shared memory (each warp its own).
    constexpr int kQK = L::kQInSmem ? 1 : D / 16;
    uint32_t qa[kQK][4];
    if constexpr (L::kQInSmem) {
        __nv_bfloat16 *sq = sm + L::kQ + 16 * warp * L::kRS;
#pragma unroll
        for (int i = 0; i < 16 * D / 8 / 32; i++) { // 16-byte pieces of the warp's 16 rows
            const int v = lane + 32 * i, rr = v / (D / 8), x = (v % (D / 8)) * 8, r = t_pos + 16 * warp + rr - p.pos0;
            uint4 val = make_uint4(0, 0, 0, 0);
            if (r >= 0 && r < p.n_rows) val = *reinterpret_cast<const uint4 *>(p.q + ((size_t)r * H + h) * D + x);
            *reinterpret_cast<uint4 *>(sq + rr * L::kRS + x) = val;
        }
        __syncwarp();
    } else {
        const __nv_bfloat16 *qp_a = p.q + ((size_t)(v_a ? r_a : 0) * H + h) * D + qd;
        const __nv_bfloat16 *qp_b = p.q + ((size_t)(v_b ? r_b : 0) * H + h) * D + qd;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            qa[kk][0] = v_a ? ld_u32(qp_a + 16 * kk) : 0u;
            qa[kk][1] = v_b ? ld_u32(qp_b + 16 * kk) : 0u;
            qa[kk][2] = v_a ? ld_u32(qp_a + 16 * kk + 8) : 0u;
            qa[kk][3] = v_b ? ld_u32(qp_b + 16 * kk + 8) : 0u;
        }
    }
    // ldmatrix of a Q fragment: rows +0 / +8 (mat % 2) x dims +0 / +8 (mat / 2) of the warp's 16
    const uint32_t qsm =
        smem_u32(sm + L::kQ + (16 * warp + (lane >> 3 & 1) * 8 + (lane & 7)) * L::kRS + 8 * (lane >> 4));
    float o[D / 8][4];
#pragma unroll
    for (int nn = 0; nn < D / 8; nn++) o[nn][0] = o[nn][1] = o[nn][2] = o[nn][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    const float sl2 = p.scale_log2;
    const int mat = lane >> 3, r8 = lane & 7; // ldmatrix: lane l addresses row l % 8 of matrix l / 8

    // Stage st <- list entries 64 it .. 64 it + 63; warp w copies entries kLoadRows w .. + kLoadRows - 1.
    auto issue = [&](int it, int st) {
        const int e0 = kKeys * it + kLoadRows * warp;
        int64_t off = -1; // lanes below kLoadRows: element offset of entry e0 + lane in the pool
        if (lane < kLoadRows && e0 + lane < n) {
            const int pos = __ldg(list + e0 + lane);
            off = (((int64_t)__ldg(p.pages + pos / ps) * KH + kvh) * ps + pos % ps) * D;
        }
        __nv_bfloat16 *tk = sm + st * 2 * L::kTile, *tv = tk + L::kTile;
        constexpr int kVecs = D / 8, kRows = 32 / kVecs; // 16-byte vectors per row, rows per pass
#pragma unroll
        for (int r0 = 0; r0 < kLoadRows; r0 += kRows) {
            const int r = r0 + lane / kVecs, x = (lane % kVecs) * 8, row = kLoadRows * warp + r;
            const int64_t src = __shfl_sync(0xffffffffu, off, r);
            cp_async16(smem_u32(tk + row * L::kRS + x), src >= 0 ? p.k + src + x : p.k, src >= 0 ? 16 : 0);
            cp_async16(smem_u32(tv + row * L::kRS + x), src >= 0 ? p.v + src + x : p.v, src >= 0 ? 16 : 0);
        }
        cp_async_commit();
    };

    const int n_it = (n + kKeys - 1) / kKeys;
    issue(0, 0);
    for (int it = 0; it < n_it; it++) {
        const int st = it & 1;
        if (it + 1 < n_it) {
            issue(it + 1, st ^ 1); // read in iteration it - 1, released by its closing __syncthreads
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();                           // every warp's copies of stage st landed
        const int nv = min(kKeys, n - kKeys * it); // valid entries of the stage (>= 1)
        const uint32_t kb = smem_u32(sm + st * 2 * L::kTile), vb = kb + L::kTile * 2;

        // S (16 rows x 64 keys) = Q K^T; s[nt]: keys 8 nt + qd + {0, 1}, rows g ([0..1]) and g + 8 ([2..3]).
        // ldmatrix matrices: keys +0 / +8 of a 16 (mat / 2) x dims +0 / +8 (mat % 2).
        float s[kKeys / 8][4];
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; nt++) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
        const int tk = (mat >> 1) * 8 + r8;
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            uint32_t(&a)[4] = qa[L::kQInSmem ? 0 : kk];
            if constexpr (L::kQInSmem) ldmatrix_x4(a, qsm + 32 * kk);
#pragma unroll
            for (int j = 0; j < kKeys / 16; j++) {
                uint32_t r[4];
                ldmatrix_x4(r, kb + (uint32_t)((16 * j + tk) * L::kRS + 16 * kk + 8 * (mat & 1)) * 2);
                mma_bf16_16816(s[2 * j], a, r[0], r[1]);
                mma_bf16_16816(s[2 * j + 1], a, r[2], r[3]);
            }
        }
        if (nv < kKeys)
#pragma unroll
            for (int nt = 0; nt < kKeys / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (8 * nt + qd + (e & 1) >= nv) s[nt][e] = -INFINITY;

        // Online softmax of the two rows (a quad of lanes shares a row).
        float mx_a = m_a, mx_b = m_b;
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; nt++) {
            mx_a = fmaxf(mx_a, fmaxf(s[nt][0], s[nt][1]));
            mx_b = fmaxf(mx_b, fmaxf(s[nt][2], s[nt][3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
        // entry 0 of the stage is valid, so the max is finite; the first stage's factor is exp2(-inf) = 0
        const float sc_a = fast_exp2((m_a - mx_a) * sl2), sc_b = fast_exp2((m_b - mx_b) * sl2);
        const float base_a = mx_a * sl2, base_b = mx_b * sl2;
        m_a = mx_a;
        m_b = mx_b;
        float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; nt++) {
            s[nt][0] = fast_exp2(fmaf(s[nt][0], sl2, -base_a));
            s[nt][1] = fast_exp2(fmaf(s[nt][1], sl2, -base_a));
            s[nt][2] = fast_exp2(fmaf(s[nt][2], sl2, -base_b));
            s[nt][3] = fast_exp2(fmaf(s[nt][3], sl2, -base_b));
            sum_a += s[nt][0] + s[nt][1];
            sum_b += s[nt][2] + s[nt][3];
        }
        l_a = l_a * sc_a + sum_a;
        l_b = l_b * sc_b + sum_b;
#pragma unroll
        for (int nn = 0; nn < D / 8; nn++) {
            o[nn][0] *= sc_a;
            o[nn][1] *= sc_a;
            o[nn][2] *= sc_b;
            o[nn][3] *= sc_b;
        }

        // O (16 x D) += P V, 16 keys per k-step; P's A fragment from s[2 ks], s[2 ks + 1].
        // Transposed matrices: keys +0 / +8 (mat % 2) x dims +0 / +8 (mat / 2). Zero-filled V rows meet P = 0.
        const int tv = (mat & 1) * 8 + r8;
#pragma unroll
        for (int ks = 0; ks < kKeys / 16; ks++) {
            const uint32_t pa[4] = {pack_bf16(s[2 * ks][0], s[2 * ks][1]), pack_bf16(s[2 * ks][2], s[2 * ks][3]),
                                    pack_bf16(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                                    pack_bf16(s[2 * ks + 1][2], s[2 * ks + 1][3])};
#pragma unroll
            for (int nd = 0; nd < D / 16; nd++) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, vb + (uint32_t)((16 * ks + tv) * L::kRS + 16 * nd + 8 * (mat >> 1)) * 2);
                mma_bf16_16816(o[2 * nd], pa, r[0], r[1]);
                mma_bf16_16816(o[2 * nd + 1], pa, r[2], r[3]);
            }
        }
        __syncthreads(); // stage st read by every warp before iteration it + 1 refills it
    }

    // ---- epilogue: the quad's partial sums, normalised O (f32) and the LSE -----------------------
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    const float inv_a = 1.f / l_a, inv_b = 1.f / l_b; // l >= 1: the row's max key contributes exp2(0)
#pragma unroll
    for (int nn = 0; nn < D / 8; nn++) {
        if (v_a) *reinterpret_cast<float2 *>(o_a + 8 * nn) = make_float2(o[nn][0] * inv_a, o[nn][1] * inv_a);
        if (v_b) *reinterpret_cast<float2 *>(o_b + 8 * nn) = make_float2(o[nn][2] * inv_b, o[nn][3] * inv_b);
    }
    if ((lane & 3) == 0 && v_a) lse[(size_t)r_a * H + h] = (m_a * sl2 + __log2f(l_a)) * kLn2;
    if ((lane & 3) == 0 && v_b) lse[(size_t)r_b * H + h] = (m_b * sl2 + __log2f(l_b)) * kLn2;
}

template <int D> int launch(const GatherParams &gp, int n_tiles, int n_split, cudaStream_t st) {
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(gather_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, GatherSmem<D>::kBytes));
    gather_kernel<D><<<dim3(n_tiles, gp.n_heads, n_split), kThreads, GatherSmem<D>::kBytes, st>>>(gp);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

} // namespace

extern "C" int attn_cuda_gather(const attn_cuda_shape_t *sh, const attn_cuda_gather_args_t *a, void *stream) {
    if (!sh || !a || !a->q || !a->k || !a->v || !a->pages || !a->list || !a->count || !a->out || !a->lse)
        return LC_EINVAL;
    if (sh->n_heads <= 0 || sh->n_kv_heads <= 0 || sh->n_heads % sh->n_kv_heads || sh->n_heads > 65535 ||
        a->n_rows < 0 || a->pos0 < 0 || a->n_lists <= 0 || a->list_stride < 0 || a->group < 0 || a->group % kTileRows ||
        a->g_first < 0 || a->n_split < 0 || a->n_split > 65535 ||
        (a->n_split > 1 && (a->split_len <= 0 || a->split_len % kKeys)))
        return LC_EINVAL;
    if ((sh->head_dim != 64 && sh->head_dim != 128 && sh->head_dim != 256) ||
        (sh->page_size != 64 && sh->page_size != 128))
        return LC_EUNSUPPORTED;
    if (((uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v | (uintptr_t)a->out) & 15) return LC_EINVAL;
    if (a->n_rows == 0) return 0;
    GatherParams gp;
    gp.q = static_cast<const __nv_bfloat16 *>(a->q);
    gp.k = static_cast<const __nv_bfloat16 *>(a->k);
    gp.v = static_cast<const __nv_bfloat16 *>(a->v);
    gp.pages = a->pages;
    gp.list = a->list;
    gp.count = a->count;
    gp.list_stride = a->list_stride;
    gp.n_lists = a->n_lists;
    gp.n_rows = a->n_rows;
    gp.pos0 = a->pos0;
    gp.tile0 = a->pos0 / kTileRows * kTileRows;
    gp.group = a->group;
    gp.g_first = a->g_first;
    gp.split_len = a->n_split > 1 ? a->split_len : 0;
    gp.out = a->out;
    gp.lse = a->lse;
    gp.n_heads = sh->n_heads;
    gp.n_kv_heads = sh->n_kv_heads;
    gp.q_per_kv = sh->n_heads / sh->n_kv_heads;
    gp.page_size = sh->page_size;
    gp.scale_log2 = sh->scale * 1.4426950408889634f;
    const int n_tiles = (a->pos0 + a->n_rows - 1) / kTileRows - a->pos0 / kTileRows + 1;
    cudaStream_t st = (cudaStream_t)stream;
    const int n_split = a->n_split > 1 ? a->n_split : 1;
    switch (sh->head_dim) {
    case 256: return launch<256>(gp, n_tiles, n_split, st);
    case 128: return launch<128>(gp, n_tiles, n_split, st);
    default: return launch<64>(gp, n_tiles, n_split, st);
    }
}
