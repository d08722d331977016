// Dense decode over the paged bf16 cache (sm_90: TMA, mbarriers, mma.sync):
// one query token per sequence, split-K over fixed key chunks so that one long
// sequence fills the GPU.
//
// One CTA per plan item (sequence, kv head, key chunk). The G query heads of
// the kv head share every K/V read: a producer warp streams the chunk in
// stages of 64 keys (one TMA box per 64-dim half of K and of V, inside one
// page) into a three-stage ring; four consumer warps take 16 keys of each
// stage and run S = Q K^T and O += P V on mma.sync (m16n8k16, the G heads as
// the 16 rows: tensor cores are idle here anyway, the kernel reads memory),
// with an online softmax per warp. The four warps' partials combine in shared
// memory in a fixed order.
//
// A sliding window (the plan's) starts chunk 0 at the 64-key stage of the
// window's first key (seq_info.w) and masks the keys before it.
//
// A sequence with one chunk writes its output directly. Otherwise each chunk
// writes (O, LSE) to the workspace; the last chunk of a (sequence, kv head) to
// finish (an arrival counter in the plan, reset by that CTA) merges them in
// chunk order, so the result does not depend on which CTA came last.
#include <climits>

#include "attn/cuda/plan.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kStageKeys = ATTN_KV_BOX; // 64 keys per stage
constexpr int kStages = 3;
constexpr int kWarps = 4; // consumer warps, 16 keys of each stage apiece
constexpr int kThreads = (kWarps + 1) * 32;
constexpr int kBarConsumers = 1; // named barrier of the consumer warps
constexpr float kLn2 = 0.69314718056f;

struct DecodeParams {
    const int32_t *kv_indptr;  // (n_seqs+1)
    const int32_t *kv_indices; // page ids
    const int32_t *kv_len;     // (n_seqs)
    const int4 *items;         // (n_items) {seq, kv head, chunk, chunk_keys}
    const int4 *seq_info;      // (n_seqs) {chunk_keys, n_chunks, first partial, first key of chunk 0}
    const __nv_bfloat16 *q;    // (n_seqs, n_heads, D)
    __nv_bfloat16 *out;        // (n_seqs, n_heads, D)
    float *lse;                // (n_seqs, n_heads) or NULL
    float *ws_o;               // (n_partials, group, D) normalised chunk outputs
    float *ws_lse;             // (n_partials, group) base-2 LSE of the scaled scores of each chunk
    int *counters;             // (n_seqs, n_kv_heads) chunks finished, back to 0 after the merge
    int n_heads, n_kv_heads, group, page_size;
    int window; // > 0: the query at kv_len - 1 sees keys from kv_len - window on
    int fresh;  // >= 0 (a programmatic dependent launch): stages of keys below kv_len - fresh load before the
                // previous kernel has completed; < 0: nothing before it
    float scale_log2;
};

template <int D> struct DecodeSmem {
    static constexpr int kHalf = kStageKeys * 128; // 64 keys x 64 dims, 128-byte swizzle
    static constexpr int kKV = (D / 64) * kHalf;   // one stage of K (or V)
    static constexpr int kK = 0, kV = kStages * kKV;
    static constexpr int kBar = 2 * kStages * kKV;   // full[3], empty[3]
    static constexpr int kM = kBar + 64;             // float [kWarps][16]: each warp's row max
    static constexpr int kL = kM + kWarps * 16 * 4;  // float [kWarps][16]: each warp's row sum
    static constexpr int kML = kL + kWarps * 16 * 4; // float [2][16]: combined max, sum
    static constexpr int kW = kML + 2 * 16 * 4;      // float [16][ATTN_DEC_MAX_SPLITS]: merge weights
    static constexpr int kFlag = kW + 16 * ATTN_DEC_MAX_SPLITS * 4;
    static constexpr int kBytes = kFlag + 16;
    static constexpr int kAlloc = kBytes + 1024;
    static_assert(kWarps * 16 * D * 4 <= kBar, "the warps' O partials reuse the stage buffers");
};

// Built with -DATTN_DEC_TRACE (tests/gpu/trace_decode.py, not the library the
// executor links), each CTA writes the global timer at its phases: entry, its
// first TMA issued, its first stage arrived, its stages consumed, its partial
// written, its merge done (the merging CTA only), and its SM.
#ifdef ATTN_DEC_TRACE
constexpr int kTraceCtas = 4096;
__device__ unsigned long long g_dec_trace[kTraceCtas * 8];
__device__ __forceinline__ void dec_trace(int i) {
    if (blockIdx.x >= kTraceCtas) return;
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    g_dec_trace[blockIdx.x * 8 + i] = t;
    if (i == 0) {
        unsigned sm;
        asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
        g_dec_trace[blockIdx.x * 8 + 6] = sm;
        g_dec_trace[blockIdx.x * 8 + 5] = 0;
    }
}
#define DEC_TRACE(i) dec_trace(i)
#else
#define DEC_TRACE(i) ((void)0)
#endif

__device__ __forceinline__ uint32_t ld_u32(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

// Programmatic dependent launch (sm_90): a kernel launched with it may start
// while the stream's previous kernel finishes. griddepcontrol.wait returns once
// that kernel has completed and its writes are visible (at once without such a
// launch); launch_dependents lets the next such kernel start its CTAs as SMs free.
__device__ __forceinline__ void griddep_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void griddep_launch_dependents() {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// Two CTAs an SM up to 128 dims; at 256 one (the stages and a 256-dim O).
template <int D>
__global__ void __launch_bounds__(kThreads, D == 256 ? 1 : 2)
    decode_kernel(const __grid_constant__ CUtensorMap tm_k, const __grid_constant__ CUtensorMap tm_v,
                  const DecodeParams p) {
    using L = DecodeSmem<D>;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *sm = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
    uint8_t *sK = sm + L::kK, *sV = sm + L::kV;
    uint64_t *full = reinterpret_cast<uint64_t *>(sm + L::kBar), *empty = full + kStages;
    float *sm_m = reinterpret_cast<float *>(sm + L::kM), *sm_l = reinterpret_cast<float *>(sm + L::kL);
    float *sm_M = reinterpret_cast<float *>(sm + L::kML), *sm_L = sm_M + 16;
    float *sm_w = reinterpret_cast<float *>(sm + L::kW);
    int *sm_flag = reinterpret_cast<int *>(sm + L::kFlag);
    if (threadIdx.x == 0) DEC_TRACE(0);
    griddep_launch_dependents();

    const int4 it = p.items[blockIdx.x];
    const int seq = it.x, kvh = it.y, chunk = it.z;
    const int4 si = p.seq_info[seq];
    const int chunk_keys = si.x, n_chunks = si.y;
    const int kv_len = p.kv_len[seq];
    const int key_begin = si.w + chunk * chunk_keys, key_end = min(kv_len, key_begin + chunk_keys);
    const int key_lo = p.window > 0 ? kv_len - p.window : 0; // keys below it are masked
    const int n_stages = (key_end - key_begin + kStageKeys - 1) / kStageKeys;
    const int G = p.group;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    if (threadIdx.x == 0) {
        for (int s = 0; s < kStages; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], kWarps);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (warp == kWarps) { // ---- producer -----------------------------------------------------
        // The warp reads the page ids of 32 stages at once (one round trip
        // instead of one per stage before each load); lane 0 issues the loads.
        // Under a programmatic dependent launch the first stages whose keys the
        // previous kernel cannot be writing (below kv_len - fresh) load before
        // it has completed; the plan (the page ids) was written before it.
        const int32_t *pages = p.kv_indices + p.kv_indptr[seq];
        const int early_end = p.fresh >= 0 ? kv_len - p.fresh : INT_MIN;
        bool waited = false;
        int page = 0;
        for (int i = 0; i < n_stages; i++) {
            if ((i & 31) == 0 && i + lane < n_stages) page = pages[(key_begin + (i + lane) * kStageKeys) / p.page_size];
            const int pg = __shfl_sync(0xffffffffu, page, i & 31);
            if (lane == 0) {
                const int st = i % kStages, key0 = key_begin + i * kStageKeys;
                const int row = (pg * p.n_kv_heads + kvh) * p.page_size + key0 % p.page_size;
                if (!waited && (i >= kStages || key0 + kStageKeys > early_end)) {
                    griddep_wait();
                    waited = true;
                }
                mbar_wait(&empty[st], ((i / kStages) & 1) ^ 1);
                mbar_arrive_expect_tx(&full[st], 2 * L::kKV);
#pragma unroll
                for (int h = 0; h < D / 64; h++) {
                    tma_load_2d(sK + st * L::kKV + h * L::kHalf, &tm_k, &full[st], h * 64, row);
                    tma_load_2d(sV + st * L::kKV + h * L::kHalf, &tm_v, &full[st], h * 64, row);
                }
                if (i == 0) DEC_TRACE(1);
            }
            __syncwarp();
        }
        return;
    }

    // ---- consumers: rows of the MMAs are query heads g_a = lane/4 and g_a + 8 ----------------
    const int g_a = lane >> 2, g_b = g_a + 8, qd = (lane & 3) * 2;
    const float sl2 = p.scale_log2;
    uint32_t qa[D / 16][4];
    griddep_wait(); // q, the outputs and the workspace belong to the previous kernels until they complete
    {
        const __nv_bfloat16 *qh = p.q + ((size_t)seq * p.n_heads + (size_t)kvh * G) * D + qd;
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
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.f, l_b = 0.f;
    // ldmatrix row addresses: lane l feeds row l%8 of matrix l/8.
    const int mat = lane >> 3, r8 = lane & 7;

    for (int i = 0; i < n_stages; i++) {
        const int st = i % kStages;
        mbar_wait(&full[st], (i / kStages) & 1);
        if (i == 0 && threadIdx.x == 0) DEC_TRACE(2);
        const int k0 = key_begin + i * kStageKeys + 16 * warp;
        const int nv = key_end - k0, nlo = key_lo - k0; // valid keys of this warp's 16: [nlo, nv)
        if (nv > 0 && nlo < 16 && nlo < nv) {
            // S (16 heads x 16 keys) = Q K^T; matrices: keys 0-7/8-15 (mat/2) x dims +0/+8 (mat%2)
            float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            const uint32_t kb = smem_u32(sK + st * L::kKV);
            const int tk = 16 * warp + (mat >> 1) * 8 + r8;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                uint32_t r[4];
                ldmatrix_x4(r, kb + (kk / 4) * L::kHalf + sw128(tk, (kk % 4) * 2 + (mat & 1)));
                mma_bf16_16816(s[0], qa[kk], r[0], r[1]);
                mma_bf16_16816(s[1], qa[kk], r[2], r[3]);
            }
            // s[n][0..1]: head g_a, keys 8n+qd+{0,1}; s[n][2..3]: head g_b
            if (nv < 16 || nlo > 0)
#pragma unroll
                for (int n = 0; n < 2; n++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int k = 8 * n + qd + (e & 1);
                        if (k >= nv || k < nlo) s[n][e] = -INFINITY;
                    }
            float mx_a = fmaxf(m_a, fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1])));
            float mx_b = fmaxf(m_b, fmaxf(fmaxf(s[0][2], s[0][3]), fmaxf(s[1][2], s[1][3])));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
            mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
            mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
            // a warp's keys are never all masked (nlo < nv), so the max is finite
            const float sc_a = fast_exp2((m_a - mx_a) * sl2), sc_b = fast_exp2((m_b - mx_b) * sl2);
            const float base_a = mx_a * sl2, base_b = mx_b * sl2;
            m_a = mx_a;
            m_b = mx_b;
#pragma unroll
            for (int n = 0; n < 2; n++) {
                s[n][0] = fast_exp2(fmaf(s[n][0], sl2, -base_a));
                s[n][1] = fast_exp2(fmaf(s[n][1], sl2, -base_a));
                s[n][2] = fast_exp2(fmaf(s[n][2], sl2, -base_b));
                s[n][3] = fast_exp2(fmaf(s[n][3], sl2, -base_b));
            }
            l_a = l_a * sc_a + (s[0][0] + s[0][1] + s[1][0] + s[1][1]);
            l_b = l_b * sc_b + (s[0][2] + s[0][3] + s[1][2] + s[1][3]);
            const uint32_t pa[4] = {pack_bf16(s[0][0], s[0][1]), pack_bf16(s[0][2], s[0][3]),
                                    pack_bf16(s[1][0], s[1][1]), pack_bf16(s[1][2], s[1][3])};
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                o[n][0] *= sc_a;
                o[n][1] *= sc_a;
                o[n][2] *= sc_b;
                o[n][3] *= sc_b;
            }
            // O (16 heads x D) += P V; transposed matrices: keys 0-7/8-15 (mat%2) x dims +0/+8 (mat/2)
            const uint32_t vb = smem_u32(sV + st * L::kKV);
            const int tv = 16 * warp + (mat & 1) * 8 + r8;
#pragma unroll
            for (int nd = 0; nd < D / 16; nd++) {
                uint32_t r[4];
                ldmatrix_x4_trans(r, vb + (nd / 4) * L::kHalf + sw128(tv, (nd % 4) * 2 + (mat >> 1)));
                if (nv < 16) { // V rows past kv_len may hold anything, NaN included: P = 0 is not enough
                    r[0] = keep_keys(r[0], qd, nv);
                    r[1] = keep_keys(r[1], 8 + qd, nv);
                    r[2] = keep_keys(r[2], qd, nv);
                    r[3] = keep_keys(r[3], 8 + qd, nv);
                }
                mma_bf16_16816(o[2 * nd], pa, r[0], r[1]);
                mma_bf16_16816(o[2 * nd + 1], pa, r[2], r[3]);
            }
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[st]);
    }

    if (threadIdx.x == 0) DEC_TRACE(3);
    // ---- combine the four warps (fixed order) ------------------------------------------------
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
    if ((lane & 3) == 0) {
        sm_m[warp * 16 + g_a] = m_a;
        sm_l[warp * 16 + g_a] = l_a;
        sm_m[warp * 16 + g_b] = m_b;
        sm_l[warp * 16 + g_b] = l_b;
    }
    named_sync(kBarConsumers, kWarps * 32); // also: every warp is done with the stage buffers
    float M_a = -INFINITY, M_b = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
        M_a = fmaxf(M_a, sm_m[w * 16 + g_a]);
        M_b = fmaxf(M_b, sm_m[w * 16 + g_b]);
    }
    // A warp without keys has m = -inf: factor 0. A chunk without keys (a
    // sequence shorter than its plan: a ring rank's share of a Quest
    // selection, quest.cu) has M = -inf: output 0, LSE -inf.
    const float f_a = M_a == -INFINITY ? 0.f : fast_exp2((m_a - M_a) * sl2),
                f_b = M_b == -INFINITY ? 0.f : fast_exp2((m_b - M_b) * sl2);
    float *sm_o = reinterpret_cast<float *>(sm); // [kWarps][16][D], over the stage buffers (rows < G written)
    if (g_a < G)
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *reinterpret_cast<float2 *>(sm_o + (warp * 16 + g_a) * D + 8 * n + qd) =
                make_float2(o[n][0] * f_a, o[n][1] * f_a);
    if (g_b < G)
#pragma unroll
        for (int n = 0; n < D / 8; n++)
            *reinterpret_cast<float2 *>(sm_o + (warp * 16 + g_b) * D + 8 * n + qd) =
                make_float2(o[n][2] * f_b, o[n][3] * f_b);
    if (warp == 0 && (lane & 3) == 0) {
        float L_a = 0.f, L_b = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            if (M_a > -INFINITY) L_a += fast_exp2((sm_m[w * 16 + g_a] - M_a) * sl2) * sm_l[w * 16 + g_a];
            if (M_b > -INFINITY) L_b += fast_exp2((sm_m[w * 16 + g_b] - M_b) * sl2) * sm_l[w * 16 + g_b];
        }
        sm_M[g_a] = M_a;
        sm_L[g_a] = L_a;
        sm_M[g_b] = M_b;
        sm_L[g_b] = L_b;
    }
    named_sync(kBarConsumers, kWarps * 32);

    const int tid = threadIdx.x;
    const size_t head0 = (size_t)seq * p.n_heads + (size_t)kvh * G; // first query head of the group
    const int64_t part = (int64_t)si.z + (int64_t)kvh * n_chunks;   // partial index of chunk 0
    for (int e = tid; e < G * D; e += kWarps * 32) {
        const int g = e / D, d = e % D;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) v += sm_o[(w * 16 + g) * D + d];
        v = sm_L[g] > 0.f ? v / sm_L[g] : 0.f;
        if (n_chunks == 1)
            p.out[(head0 + g) * D + d] = __float2bfloat16_rn(v);
        else
            p.ws_o[((part + chunk) * G + g) * D + d] = v;
    }
    if (tid < G) {
        const float lse2 = sm_M[tid] * sl2 + log2f(sm_L[tid]);
        if (n_chunks == 1) {
            if (p.lse) p.lse[head0 + tid] = lse2 * kLn2;
        } else {
            p.ws_lse[(part + chunk) * G + tid] = lse2;
        }
    }
    if (tid == 0) DEC_TRACE(4);
    if (n_chunks == 1) return;

    // ---- the last chunk to finish merges all chunks in order -------------------------------------
    __threadfence();
    named_sync(kBarConsumers, kWarps * 32);
    if (tid == 0) *sm_flag = atomicAdd(&p.counters[seq * p.n_kv_heads + kvh], 1) == n_chunks - 1;
    named_sync(kBarConsumers, kWarps * 32);
    if (!*sm_flag) return;
    __threadfence();
    // The chunks' LSEs, one load per thread (a serial loop would wait an L2
    // round trip per chunk), then each head's weights from shared memory.
    for (int e = tid; e < G * n_chunks; e += kWarps * 32) {
        const int g = e / n_chunks, c = e % n_chunks;
        sm_w[g * ATTN_DEC_MAX_SPLITS + c] = __ldcg(&p.ws_lse[(part + c) * G + g]);
    }
    named_sync(kBarConsumers, kWarps * 32);
    // Each head's weights on one warp (heads warp, warp + 4, ...): a lane
    // takes chunks lane and lane + 32, max and sum by shuffles in a fixed
    // tree (a serial loop on G threads was a few microseconds of the tail).
    static_assert(ATTN_DEC_MAX_SPLITS <= 64, "two chunks a lane");
    for (int g = warp; g < G; g += kWarps) {
        float *wg = sm_w + g * ATTN_DEC_MAX_SPLITS;
        const float a = lane < n_chunks ? wg[lane] : -INFINITY, b = lane + 32 < n_chunks ? wg[lane + 32] : -INFINITY;
        float mx = fmaxf(a, b);
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const bool any = mx > -INFINITY; // some chunk had keys
        const float ea = any && lane < n_chunks ? exp2f(a - mx) : 0.f,
                    eb = any && lane + 32 < n_chunks ? exp2f(b - mx) : 0.f;
        float sum = ea + eb;
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
        const float inv = any ? 1.f / sum : 0.f;
        if (lane < n_chunks) wg[lane] = ea * inv;
        if (lane + 32 < n_chunks) wg[lane + 32] = eb * inv;
        if (lane == 0 && p.lse) p.lse[head0 + g] = (mx + log2f(sum)) * kLn2;
    }
    named_sync(kBarConsumers, kWarps * 32);
    // Four dims a thread (G x D / 4 <= 512 float4: one or a few per thread),
    // sixteen chunks' loads in flight: this merge is the kernel's serial tail
    // at batch 1. Each dim still sums its chunks in chunk order.
    for (int e = tid; e < G * D / 4; e += kWarps * 32) {
        const int g = e / (D / 4), d = 4 * (e % (D / 4));
        const float4 *src = reinterpret_cast<const float4 *>(p.ws_o + (part * G + g) * D + d);
        const float *w = sm_w + g * ATTN_DEC_MAX_SPLITS;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 16
        for (int c = 0; c < n_chunks; c++) {
            const float4 x = __ldcg(src + (size_t)c * G * D / 4);
            v.x += w[c] * x.x;
            v.y += w[c] * x.y;
            v.z += w[c] * x.z;
            v.w += w[c] * x.w;
        }
        __nv_bfloat16 *o = p.out + (head0 + g) * D + d;
        *reinterpret_cast<__nv_bfloat162 *>(o) = __floats2bfloat162_rn(v.x, v.y);
        *reinterpret_cast<__nv_bfloat162 *>(o + 2) = __floats2bfloat162_rn(v.z, v.w);
    }
    if (tid == 0) p.counters[seq * p.n_kv_heads + kvh] = 0;
    if (tid == 0) DEC_TRACE(5);
}

template <int D> int set_smem() {
    CUDA_CHECK_RET(
        cudaFuncSetAttribute(decode_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, DecodeSmem<D>::kAlloc));
    return 0;
}

template <int D>
int launch_decode(const CUtensorMap &mk, const CUtensorMap &mv, const DecodeParams &dp, int n_items,
                  cudaStream_t stream) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    cfg.gridDim = dim3(n_items);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = DecodeSmem<D>::kAlloc;
    cfg.stream = stream;
    if (dp.fresh >= 0) {
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
    }
    CUDA_CHECK_RET(cudaLaunchKernelEx(&cfg, decode_kernel<D>, mk, mv, dp));
    return 0;
}

} // namespace

int attn_cuda_decode_init(void) {
    int rc;
    if ((rc = set_smem<64>()) || (rc = set_smem<128>()) || (rc = set_smem<256>())) return rc;
    return 0;
}

#ifdef ATTN_DEC_TRACE
extern "C" int attn_cuda_decode_trace(unsigned long long *host, int n_ctas) {
    if (n_ctas > kTraceCtas) n_ctas = kTraceCtas;
    CUDA_CHECK_RET(cudaDeviceSynchronize());
    CUDA_CHECK_RET(cudaMemcpyFromSymbol(host, g_dec_trace, (size_t)n_ctas * 8 * sizeof(unsigned long long)));
    return n_ctas;
}
#endif

int attn_cuda_decode_variants(void) { return 1; }
const char *attn_cuda_decode_variant_name(int v) { return v == 0 ? "split-K mma.sync" : NULL; }

int attn_cuda_decode_launch(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, cudaStream_t stream) {
    if (p->n_items == 0) return 0;
    CUtensorMap mk, mv;
    int rc;
    if ((rc = attn_cuda_map_kv(p, a->k, &mk)) || (rc = attn_cuda_map_kv(p, a->v, &mv))) return rc;
    const int32_t *d = p->d_arena;
    const int D = p->shape.head_dim, G = p->group;
    DecodeParams dp;
    dp.kv_indptr = d + p->off_kv_indptr;
    dp.kv_indices = d + p->off_kv_indices;
    dp.kv_len = d + p->off_kv_len;
    dp.items = reinterpret_cast<const int4 *>(d + p->off_items);
    dp.seq_info = reinterpret_cast<const int4 *>(d + p->off_seq_info);
    dp.q = static_cast<const __nv_bfloat16 *>(a->q);
    dp.out = static_cast<__nv_bfloat16 *>(a->out);
    dp.lse = a->lse;
    dp.ws_o = static_cast<float *>(a->workspace);
    dp.ws_lse = dp.ws_o ? dp.ws_o + (size_t)p->n_partials * G * D : nullptr;
    dp.counters = p->d_counters;
    dp.n_heads = p->shape.n_heads;
    dp.n_kv_heads = p->shape.n_kv_heads;
    dp.group = G;
    dp.page_size = p->shape.page_size;
    dp.window = p->window;
    dp.fresh = a->pdl_fresh > 0 ? a->pdl_fresh : -1;
    dp.scale_log2 = p->shape.scale * 1.4426950408889634f;
    if (D == 256) return launch_decode<256>(mk, mv, dp, p->n_items, stream);
    if (D == 128) return launch_decode<128>(mk, mv, dp, p->n_items, stream);
    return launch_decode<64>(mk, mv, dp, p->n_items, stream);
}
