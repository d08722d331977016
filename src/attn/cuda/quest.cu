// Quest sparse decode on the GPU: key summaries per page, page scores, an
// exact top-k without a sort, and attention over the chosen pages through the
// dense split-K decode kernel (quest_cuda.h has the contract).
//
// Attention reuses decode.cu unchanged by viewing the pool with one kv head:
// page' = page * n_kv_heads + kv_head addresses the same (page, head) tile of
// the (n_pool_pages, n_kv_heads, page_size, head_dim) layout, and each
// (sequence, kv head) becomes a sequence' of G query heads whose rows in q,
// out and lse are where they already are. An inner dense decode plan over
// those sequences' is planned with the step (its lengths are known on the
// host: B pages, or all of them); its device page table is then written by
// the selection kernel at every layer, in stream order after the plan's
// upload.
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/plan.cuh"
#include "attn/cuda/quest_cuda.h"
#include "attn/cuda/radix.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kScorePages = 128; // pages per scoring CTA (one per thread)
constexpr int kScoreChunk = 32;  // channels per shared-memory tile of the summaries
constexpr int kScoreParts = 4;   // threads per page, each summing its share of the query heads
constexpr int kSelThreads = 256;
constexpr int kSelRegs = 8;          // scores a selection thread keeps in registers: 2,048 pages a (sequence, kv head)
constexpr int kQuestSplitKeys = 256; // default split-K chunk of the attention
constexpr int kMaxGroup = 16;

size_t round4(size_t n) { return (n + 3) & ~(size_t)3; }
size_t round256(size_t n) { return (n + 255) & ~(size_t)255; }

} // namespace

/* Per-step arrays in one int32 arena (pinned host copy, one upload), offsets
 * in int32 units, multiples of 4:
 *   seq_info (n_seqs, 8): {n_pages, count, score_base, sel_base, kv_indptr, kv_len, 0, 0}
 *     n_pages = ceil(kv_len / page_size); count = pages attended per kv head
 *     (B, or n_pages when dense); score_base: first score of the sequence
 *     (its n_kv_heads rows of n_pages-1 scores), sel_base: first entry of its
 *     n_kv_heads lists of count pages in the selection and the inner table
 *   items (n_items, 4): {seq, first page, 0, 0} scoring work, 128 pages each
 *   kv_indices (kv_indptr[n_seqs]) */
struct attn_quest_plan {
    attn_cuda_shape_t shape;
    attn_cuda_limits_t lim;
    int group;
    attn_cuda_plan_t *inner; // dense decode over sequences' = (sequence, kv head)
    int32_t *h_arena, *d_arena;
    size_t arena_ints;
    int32_t *h_in_indptr; // (max_seqs * n_kv_heads + 1) inner CSR
    int32_t *h_in_len;    // (max_seqs * n_kv_heads)
    int32_t *h_in_zero;   // (max_pages * n_kv_heads) zeros: the inner table before the selection fills it
    int32_t *h_count;     // (max_seqs) pages per kv head
    int32_t *h_sel_base;  // (max_seqs)
    int32_t *d_sel;       // (max_pages * n_kv_heads) logical page indices of the last run's selection
    cudaEvent_t uploaded;
    int upload_pending;

    int planned, n_seqs, n_items;
    int dist; // planned by attn_quest_dist_plan: the held flags at off_held
    size_t off_seq_info, off_items, off_kv_indices, off_held;
    size_t n_scores;          // floats at the workspace's start
    size_t ws_scores, ws_all; // bytes
};

namespace {

struct SelectParams {
    const int4 *seq_info;      // (n_seqs, 2) as int4 pairs
    const int32_t *kv_indices; // (total pages)
    const float *scores;       // workspace
    int32_t *sel;              // logical page ids, at sel_base + kv_head * count
    int32_t *inner_idx;        // inner plan's page table (page * n_kv_heads + kv_head), same positions
    int n_kv_heads;
};

struct ScoreParams {
    const int4 *seq_info;
    const int4 *items;
    const int32_t *kv_indices;
    const int32_t *held;    // distributed: 1 where this rank holds the page (the others score 0); NULL: every page
    const __nv_bfloat16 *q; // (n_seqs, n_heads, D)
    const float *kmin;      // (n_pool_pages, n_kv_heads, D)
    const float *kmax;
    float *scores;
    int n_heads, n_kv_heads, group, D;
};

/* ---- summaries ---------------------------------------------------------------------- */

// Thread c of the block: min and max of channel c over the page's first len tokens.
__device__ __forceinline__ void summarize_page(const __nv_bfloat16 *k, int page, int len, int kvh, int n_kv_heads,
                                               int page_size, int D, float *kmin, float *kmax) {
    const int c = threadIdx.x;
    const size_t tile = ((size_t)page * n_kv_heads + kvh);
    const __nv_bfloat16 *src = k + tile * page_size * D + c;
    float mn = INFINITY, mx = -INFINITY;
    for (int t = 0; t < len; t++) {
        const float x = __bfloat162float(src[(size_t)t * D]);
        mn = fminf(mn, x);
        mx = fmaxf(mx, x);
    }
    kmin[tile * D + c] = mn;
    kmax[tile * D + c] = mx;
}

// grid (n, n_kv_heads), block D
__global__ void summarize_list_kernel(const __nv_bfloat16 *k, const int32_t *pages, const int32_t *page_len,
                                      int n_kv_heads, int page_size, float *kmin, float *kmax) {
    const int len = min(max(page_len[blockIdx.x], 1), page_size);
    summarize_page(k, pages[blockIdx.x], len, blockIdx.y, n_kv_heads, page_size, blockDim.x, kmin, kmax);
}

// grid (n_seqs, n_kv_heads), block D: each sequence's newest page (where
// this rank holds it, when distributed: held not NULL)
__global__ void summarize_newest_kernel(const __nv_bfloat16 *k, const int4 *seq_info, const int32_t *kv_indices,
                                        const int32_t *held, int n_kv_heads, int page_size, float *kmin, float *kmax) {
    const int4 a = seq_info[2 * blockIdx.x], b = seq_info[2 * blockIdx.x + 1];
    const int np = a.x, kvptr = b.x, len = b.y - (np - 1) * page_size;
    if (held && !held[kvptr + np - 1]) return;
    summarize_page(k, kv_indices[kvptr + np - 1], len, blockIdx.y, n_kv_heads, page_size, blockDim.x, kmin, kmax);
}

/* ---- scores ------------------------------------------------------------------------- */

// grid (n_items, n_kv_heads), block kScorePages * kScoreParts: thread r +
// kScorePages j scores page p0 + r (not the newest) for its kv head's query
// heads j, j + kScoreParts, ... (with one thread per page, one warp per
// scheduler left the kernel waiting on each dependent step), the page's
// maximum over the parts last. Per query head the sum runs channel by
// channel with rounded products and adds (never fused), the max over heads
// last: attn__quest_bound's arithmetic, so the scores are the CPU's bit for
// bit (the max over heads in another order can differ only in the sign of a
// zero, which the selection's order keys do not see).
template <int MAXG> __global__ void __launch_bounds__(kScorePages *kScoreParts) score_kernel(const ScoreParams p) {
    __shared__ float s_q[kMaxGroup * 128];
    __shared__ float s_mn[kScorePages][kScoreChunk + 1]; // +1: thread r reads row r, conflict-free
    __shared__ float s_mx[kScorePages][kScoreChunk + 1];
    __shared__ int s_pool[kScorePages];
    __shared__ float s_best[kScoreParts][kScorePages];
    constexpr int kHeads = (MAXG + kScoreParts - 1) / kScoreParts; // query heads per thread, at most
    const int4 it = p.items[blockIdx.x];
    const int seq = it.x, p0 = it.y, kvh = blockIdx.y, tid = threadIdx.x, r = tid % kScorePages,
              part = tid / kScorePages;
    const int4 ia = p.seq_info[2 * seq], ib = p.seq_info[2 * seq + 1];
    const int n = ia.x - 1, rows = min(kScorePages, n - p0), G = p.group, D = p.D;
    const __nv_bfloat16 *qg = p.q + ((size_t)seq * p.n_heads + (size_t)kvh * G) * D;
    for (int e = tid; e < G * D; e += kScorePages * kScoreParts) s_q[e] = __bfloat162float(qg[e]);
    if (tid < rows) s_pool[tid] = p.held && !p.held[ib.x + p0 + tid] ? -1 : p.kv_indices[ib.x + p0 + tid];
    float ub[kHeads];
#pragma unroll
    for (int i = 0; i < kHeads; i++) ub[i] = 0.f;
    // A tile's pieces (float4 of kmin and kmax), this thread's at e = tid + i * kThreads: the next tile's
    // loads are in flight while this one is scored.
    constexpr int kThreads = kScorePages * kScoreParts, kPieces = kScorePages * (kScoreChunk / 4) / kThreads;
    float4 la[kPieces], lb[kPieces];
    auto fetch = [&](int c0) {
#pragma unroll
        for (int i = 0; i < kPieces; i++) {
            const int e = tid + i * kThreads, rr = e / (kScoreChunk / 4), c4 = (e % (kScoreChunk / 4)) * 4;
            if (rr < rows && s_pool[rr] >= 0) {
                const size_t src = ((size_t)s_pool[rr] * p.n_kv_heads + kvh) * D + c0 + c4;
                la[i] = *reinterpret_cast<const float4 *>(p.kmin + src);
                lb[i] = *reinterpret_cast<const float4 *>(p.kmax + src);
            } else { // a page held elsewhere: summaries 0, score 0 (its holder's score after the sum)
                la[i] = lb[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
    };
    __syncthreads(); // s_pool and s_q written
    fetch(0);
    for (int c0 = 0; c0 < D; c0 += kScoreChunk) {
        if (c0) __syncthreads(); // the previous tile consumed
#pragma unroll
        for (int i = 0; i < kPieces; i++) {
            const int e = tid + i * kThreads, rr = e / (kScoreChunk / 4), c4 = (e % (kScoreChunk / 4)) * 4;
            if (rr < rows) {
                s_mn[rr][c4] = la[i].x;
                s_mn[rr][c4 + 1] = la[i].y;
                s_mn[rr][c4 + 2] = la[i].z;
                s_mn[rr][c4 + 3] = la[i].w;
                s_mx[rr][c4] = lb[i].x;
                s_mx[rr][c4 + 1] = lb[i].y;
                s_mx[rr][c4 + 2] = lb[i].z;
                s_mx[rr][c4 + 3] = lb[i].w;
            }
        }
        if (c0 + kScoreChunk < D) fetch(c0 + kScoreChunk);
        __syncthreads();
        if (r < rows && part < G) {
            for (int c = 0; c < kScoreChunk; c++) {
                const float mn = s_mn[r][c], mx = s_mx[r][c];
#pragma unroll
                for (int i = 0; i < kHeads; i++) {
                    const int g = part + kScoreParts * i;
                    if (g < G) {
                        const float qc = s_q[g * D + c0 + c];
                        const float a = __fmul_rn(qc, mx), z = __fmul_rn(qc, mn);
                        ub[i] = __fadd_rn(ub[i], a > z ? a : z);
                    }
                }
            }
        }
    }
    float best = -INFINITY; // this part's heads, in head order
#pragma unroll
    for (int i = 0; i < kHeads; i++)
        if (part + kScoreParts * i < G) best = ub[i] > best ? ub[i] : best;
    s_best[part][r] = best;
    __syncthreads();
    if (part == 0 && r < rows) { // max over the parts (-inf for a part with no head)
#pragma unroll
        for (int j = 1; j < kScoreParts; j++) best = s_best[j][r] > best ? s_best[j][r] : best;
        p.scores[(size_t)ia.z + (size_t)kvh * n + p0 + r] = best;
    }
}

/* ---- selection ---------------------------------------------------------------------- */

// The keys of one (sequence, kv head): its n page scores as order keys, the
// ones past n as 0. kReg: all n (<= kSelRegs x kSelThreads) sit in registers,
// loaded once (key i = r[i / kSelThreads] of thread i % kSelThreads); else
// each pass reads them again from the workspace, four chunks' loads in flight.
template <bool kReg> struct SelKeys {
    const float *sc;
    int n;
    uint32_t r[kReg ? kSelRegs : 1];
    __device__ __forceinline__ void load(int tid) {
        if constexpr (kReg) {
#pragma unroll
            for (int j = 0; j < kSelRegs; j++) {
                const int i = j * kSelThreads + tid;
                r[j] = i < n ? order_key(sc[i]) : 0u;
            }
        }
    }
    // f(key, i) for this thread's key of every chunk that holds keys, in
    // chunk order; the whole block calls f alike (on the last chunk i may
    // pass n, with key 0).
    template <class F> __device__ __forceinline__ void each(int tid, F f) const {
        if constexpr (kReg) {
#pragma unroll
            for (int j = 0; j < kSelRegs; j++)
                if (j * kSelThreads < n) f(r[j], j * kSelThreads + tid);
        } else {
            for (int base = 0; base < n; base += 4 * kSelThreads) {
                uint32_t u[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const int i = base + j * kSelThreads + tid;
                    u[j] = i < n ? order_key(sc[i]) : 0u;
                }
#pragma unroll
                for (int j = 0; j < 4; j++)
                    if (base + j * kSelThreads < n) f(u[j], base + j * kSelThreads + tid);
            }
        }
    }
};

// The selection of one (sequence, kv head) of n scored pages (all but the
// newest), keep of them (0 < keep < n + 1): the threshold T is the keep-th
// largest key, found one byte at a time from the top (a 256-bin histogram of
// the keys matching the bytes fixed so far); the selection is every key > T
// plus the first (in page order) keys == T up to keep, i.e. the CPU's sort
// by (score descending, page ascending) cut at keep. A block-wide scan in
// page order writes them ascending.
template <bool kReg>
__device__ __forceinline__ void select_pages(const SelectParams &p, const float *sc, int n, int keep, size_t o,
                                             int kvptr, int kvh) {
    __shared__ unsigned hist[256];
    __shared__ int s_bin, s_k;
    __shared__ int w_eq[kSelThreads / 32], w_sel[kSelThreads / 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, KH = p.n_kv_heads;
    SelKeys<kReg> keys;
    keys.sc = sc;
    keys.n = n;
    keys.load(tid);
    uint32_t prefix = 0, mask = 0;
    int k = keep; // rank wanted among the keys matching prefix, from the top (1-based)
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = tid; i < 256; i += kSelThreads) hist[i] = 0;
        __syncthreads();
        // Scores crowd into few bins (the high bytes of similar floats): one
        // atomic per distinct bin and warp, not one per key. A warp's lanes
        // are all in or all out of a chunk (kSelThreads is a multiple of 32).
        keys.each(tid, [&](uint32_t u, int i) {
            hist_add(hist, i < n && (u & mask) == prefix ? (u >> shift) & 255u : 256u, lane);
        });
        __syncthreads();
        if (warp == 0) radix_pick_bin(hist, lane, k, &s_bin, &s_k);
        __syncthreads();
        prefix |= (uint32_t)s_bin << shift;
        mask |= 255u << shift;
        k = s_k;
    }
    const uint32_t T = prefix;
    const int need_eq = k; // keys equal to T to take, earliest first
    int eq_before = 0, sel_before = 0;
    const unsigned lt_mask = (1u << lane) - 1u;
    // in page order, a chunk of kSelThreads at a time (block-uniform: the
    // loop ends on shared counts)
    keys.each(tid, [&](uint32_t u, int i) {
        if (sel_before >= keep) return;
        const bool gt = i < n && u > T, eq = i < n && u == T;
        const unsigned be = __ballot_sync(0xffffffffu, eq);
        if (lane == 0) w_eq[warp] = __popc(be);
        __syncthreads();
        int eq_rank = eq_before + __popc(be & lt_mask), eq_tot = 0;
        for (int w = 0; w < kSelThreads / 32; w++) {
            if (w < warp) eq_rank += w_eq[w];
            eq_tot += w_eq[w];
        }
        const bool take = gt || (eq && eq_rank < need_eq);
        const unsigned bs = __ballot_sync(0xffffffffu, take);
        if (lane == 0) w_sel[warp] = __popc(bs);
        __syncthreads();
        int pos = sel_before + __popc(bs & lt_mask), sel_tot = 0;
        for (int w = 0; w < kSelThreads / 32; w++) {
            if (w < warp) pos += w_sel[w];
            sel_tot += w_sel[w];
        }
        if (take) {
            p.sel[o + pos] = i;
            p.inner_idx[o + pos] = p.kv_indices[kvptr + i] * KH + kvh;
        }
        eq_before += eq_tot;
        sel_before += sel_tot;
        __syncthreads(); // w_eq, w_sel read by all before the next chunk writes them
    });
}

// grid (n_seqs, n_kv_heads), block kSelThreads. Dense: every page. Sparse:
// select_pages over the scored pages, with the keys in registers when they
// fit; the newest page goes last.
__global__ void __launch_bounds__(kSelThreads) select_kernel(const SelectParams p) {
    const int seq = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x;
    const int4 ia = p.seq_info[2 * seq], ib = p.seq_info[2 * seq + 1];
    const int np = ia.x, count = ia.y, kvptr = ib.x;
    const size_t o = (size_t)ia.w + (size_t)kvh * count;
    const int KH = p.n_kv_heads;
    if (count == np) { // dense
        for (int j = tid; j < np; j += kSelThreads) {
            p.sel[o + j] = j;
            p.inner_idx[o + j] = p.kv_indices[kvptr + j] * KH + kvh;
        }
        return;
    }
    const int n = np - 1, keep = count - 1;
    const float *sc = p.scores + (size_t)ia.z + (size_t)kvh * n;
    if (keep > 0) {
        if (n <= kSelRegs * kSelThreads)
            select_pages<true>(p, sc, n, keep, o, kvptr, kvh);
        else
            select_pages<false>(p, sc, n, keep, o, kvptr, kvh);
    }
    if (tid == 0) {
        p.sel[o + keep] = np - 1;
        p.inner_idx[o + keep] = p.kv_indices[kvptr + np - 1] * KH + kvh;
    }
}

// Distributed: grid (n_seqs, n_kv_heads), one warp. The selection's pages
// this rank holds, in order, become the inner sequence's table, and its
// length their keys (the newest page's own count when held): the decode
// kernel then reads only this rank's share (possibly none: output 0, LSE
// -inf), planned at the whole selection's length.
__global__ void compact_kernel(const SelectParams p, const int32_t *held, int page_size, int32_t *inner_len) {
    const int seq = blockIdx.x, kvh = blockIdx.y, lane = threadIdx.x;
    const int4 ia = p.seq_info[2 * seq], ib = p.seq_info[2 * seq + 1];
    const int np = ia.x, count = ia.y, kvptr = ib.x, len = ib.y;
    const size_t o = (size_t)ia.w + (size_t)kvh * count;
    int c = 0;
    bool newest = false;
    for (int j0 = 0; j0 < count; j0 += 32) {
        const int j = j0 + lane;
        const int pg = j < count ? p.sel[o + j] : 0;
        const bool h = j < count && held[kvptr + pg];
        const unsigned b = __ballot_sync(0xffffffffu, h);
        if (h) {
            p.inner_idx[o + c + __popc(b & ((1u << lane) - 1u))] = p.kv_indices[kvptr + pg] * p.n_kv_heads + kvh;
            if (pg == np - 1) newest = true;
        }
        c += __popc(b);
    }
    newest = __any_sync(0xffffffffu, newest);
    if (lane == 0)
        inner_len[seq * p.n_kv_heads + kvh] =
            newest ? (c - 1) * page_size + (len - (np - 1) * page_size) : c * page_size;
}

/* ---- launchers ---------------------------------------------------------------------- */

template <int MAXG> int launch_score(const ScoreParams &sp, int n_items, int n_kv_heads, cudaStream_t st) {
    score_kernel<MAXG><<<dim3(n_items, n_kv_heads), kScorePages * kScoreParts, 0, st>>>(sp);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

int check_shape(const attn_cuda_shape_t *sh) {
    if (!sh || sh->n_heads <= 0 || sh->n_kv_heads <= 0 || sh->n_heads % sh->n_kv_heads != 0 || sh->n_pool_pages <= 0 ||
        !(sh->scale > 0.f) || !isfinite(sh->scale))
        return LC_EINVAL;
    // the scoring CTA stages a kv head's queries: at most kMaxGroup of 128 dims (8 of 256)
    if ((sh->head_dim != 64 && sh->head_dim != 128 && sh->head_dim != 256) ||
        (sh->page_size != 64 && sh->page_size != 128) || sh->n_heads / sh->n_kv_heads * sh->head_dim > kMaxGroup * 128)
        return LC_EUNSUPPORTED;
    // page' = page * n_kv_heads + kv_head stays an int32
    if (sh->n_pool_pages * (int64_t)sh->n_kv_heads > INT32_MAX) return LC_EUNSUPPORTED;
    return 0;
}

} // namespace

extern "C" int attn_quest_summarize(const attn_cuda_shape_t *shape, const void *k, const int32_t *pages,
                                    const int32_t *page_len, int n, float *kmin, float *kmax, void *stream) {
    int rc = check_shape(shape);
    if (rc) return rc;
    if (n < 0 || (n > 0 && (!k || !pages || !page_len || !kmin || !kmax))) return LC_EINVAL;
    if (n == 0) return 0;
    summarize_list_kernel<<<dim3(n, shape->n_kv_heads), shape->head_dim, 0, (cudaStream_t)stream>>>(
        (const __nv_bfloat16 *)k, pages, page_len, shape->n_kv_heads, shape->page_size, kmin, kmax);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

extern "C" int attn_quest_summarize_newest(const attn_quest_plan_t *p, const void *k, float *kmin, float *kmax,
                                           void *stream) {
    if (!p || !p->planned || !k || !kmin || !kmax) return LC_EINVAL;
    if (p->n_seqs == 0) return 0;
    summarize_newest_kernel<<<dim3(p->n_seqs, p->shape.n_kv_heads), p->shape.head_dim, 0, (cudaStream_t)stream>>>(
        (const __nv_bfloat16 *)k, reinterpret_cast<const int4 *>(p->d_arena + p->off_seq_info),
        p->d_arena + p->off_kv_indices, p->dist ? p->d_arena + p->off_held : nullptr, p->shape.n_kv_heads,
        p->shape.page_size, kmin, kmax);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

extern "C" int attn_quest_plan_create(const attn_cuda_shape_t *shape, const attn_cuda_limits_t *lim,
                                      attn_quest_plan_t **out) {
    if (!shape || !lim || !out) return LC_EINVAL;
    *out = nullptr;
    int rc = check_shape(shape);
    if (rc) return rc;
    if (lim->max_seqs <= 0 || lim->max_pages <= 0 || lim->split_keys < 0 || lim->split_keys % ATTN_KV_BOX != 0)
        return LC_EINVAL;
    const int KH = shape->n_kv_heads;
    if (lim->max_pages * KH > INT32_MAX || (int64_t)lim->max_seqs * KH > INT32_MAX / 2) return LC_ERANGE;

    attn_quest_plan_t *p = (attn_quest_plan_t *)calloc(1, sizeof *p);
    if (!p) return LC_ENOMEM;
    p->shape = *shape;
    p->lim = *lim;
    p->group = shape->n_heads / KH;
    const size_t ms = (size_t)lim->max_seqs, mp = (size_t)lim->max_pages;
    p->arena_ints = 8 * ms + 4 * (mp / kScorePages + ms) + 2 * round4(mp); // ..., kv_indices, held
    attn_cuda_shape_t ish = *shape; // one kv head, G query heads, pages (page, kv head)
    ish.n_heads = p->group;
    ish.n_kv_heads = 1;
    ish.n_pool_pages = shape->n_pool_pages * KH;
    attn_cuda_limits_t il = {};
    il.max_seqs = (int)(ms * KH);
    il.max_q_rows = il.max_seqs;
    il.max_pages = (int64_t)mp * KH;
    il.split_keys = lim->split_keys ? lim->split_keys : kQuestSplitKeys;
    if ((rc = attn_cuda_plan_create(&ish, ATTN_CUDA_DECODE, &il, &p->inner))) goto fail;
    rc = LC_ENOMEM;
    p->h_in_indptr = (int32_t *)malloc(sizeof(int32_t) * (ms * KH + 1));
    p->h_in_len = (int32_t *)malloc(sizeof(int32_t) * ms * KH);
    p->h_in_zero = (int32_t *)calloc(mp * KH, sizeof(int32_t));
    p->h_count = (int32_t *)malloc(sizeof(int32_t) * ms);
    p->h_sel_base = (int32_t *)malloc(sizeof(int32_t) * ms);
    if (!p->h_in_indptr || !p->h_in_len || !p->h_in_zero || !p->h_count || !p->h_sel_base) goto fail;
    if (cudaMallocHost((void **)&p->h_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_sel, mp * KH * sizeof(int32_t)) != cudaSuccess) goto fail;
    rc = LC_EDEVICE;
    if (cudaEventCreateWithFlags(&p->uploaded, cudaEventDisableTiming) != cudaSuccess) goto fail;
    *out = p;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the last error
    attn_quest_plan_destroy(p);
    return rc;
}

extern "C" void attn_quest_plan_destroy(attn_quest_plan_t *p) {
    if (!p) return;
    if (p->uploaded) {
        cudaEventSynchronize(p->uploaded);
        cudaEventDestroy(p->uploaded);
    }
    attn_cuda_plan_destroy(p->inner);
    cudaFreeHost(p->h_arena);
    cudaFree(p->d_arena);
    cudaFree(p->d_sel);
    free(p->h_in_indptr);
    free(p->h_in_len);
    free(p->h_in_zero);
    free(p->h_count);
    free(p->h_sel_base);
    free(p);
}

static int quest_plan(attn_quest_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget_pages,
                      const uint8_t *held, void *stream, size_t *workspace_bytes) {
    if (!p || !b || !budget_pages) return LC_EINVAL;
    p->planned = 0;
    p->dist = held != nullptr;
    const int n = b->n_seqs, KH = p->shape.n_kv_heads, ps = p->shape.page_size;
    if (n < 0 || b->q_indptr || !b->kv_indptr || !b->kv_len) return LC_EINVAL;
    if (n > p->lim.max_seqs) return LC_ERANGE;
    if (n > 0 && !b->kv_indices && b->kv_indptr[n] > 0) return LC_EINVAL;
    if (b->kv_indptr[0] != 0) return LC_EINVAL;
    for (int s = 0; s < n; s++) {
        const int64_t np = (int64_t)b->kv_indptr[s + 1] - b->kv_indptr[s], len = b->kv_len[s];
        if (np < 0 || len < 1 || len > np * ps || budget_pages[s] < 0) return LC_EINVAL;
    }
    const int64_t pages = b->kv_indptr[n];
    if (pages > p->lim.max_pages) return LC_ERANGE;
    for (int64_t i = 0; i < pages; i++)
        if ((!held || held[i]) && (b->kv_indices[i] < 0 || b->kv_indices[i] >= p->shape.n_pool_pages)) return LC_EINVAL;
    if (p->upload_pending) { // the pinned arena may still feed the previous step's upload
        CUDA_CHECK_RET(cudaEventSynchronize(p->uploaded));
        p->upload_pending = 0;
    }

    int32_t *h = p->h_arena;
    p->off_seq_info = 0;
    p->off_items = 8 * (size_t)n;
    int32_t *info = h + p->off_seq_info, *items = h + p->off_items;
    int64_t n_items = 0, score_base = 0, sel = 0;
    p->h_in_indptr[0] = 0;
    for (int s = 0; s < n; s++) {
        const int len = b->kv_len[s], np = (len + ps - 1) / ps, B = budget_pages[s];
        const int dense = B == 0 || np <= B, count = dense ? np : B;
        int32_t *si = info + 8 * s;
        si[0] = np;
        si[1] = count;
        si[2] = (int32_t)score_base;
        si[3] = (int32_t)sel;
        si[4] = b->kv_indptr[s];
        si[5] = len;
        si[6] = si[7] = 0;
        p->h_count[s] = count;
        p->h_sel_base[s] = (int32_t)sel;
        if (!dense) {
            for (int p0 = 0; p0 < np - 1; p0 += kScorePages, n_items++) {
                int32_t *it = items + 4 * n_items;
                it[0] = s;
                it[1] = p0;
                it[2] = it[3] = 0;
            }
            score_base += (int64_t)KH * (np - 1);
        }
        for (int kh = 0; kh < KH; kh++) {
            const int i = s * KH + kh;
            p->h_in_indptr[i + 1] = p->h_in_indptr[i] + count;
            p->h_in_len[i] = (count - 1) * ps + (len - (np - 1) * ps);
        }
        sel += (int64_t)KH * count;
    }
    if (score_base > INT32_MAX) return LC_ERANGE;
    p->off_kv_indices = p->off_items + 4 * (size_t)n_items;
    p->off_held = p->off_kv_indices + round4((size_t)pages);
    if (pages) memcpy(h + p->off_kv_indices, b->kv_indices, sizeof(int32_t) * (size_t)pages);
    for (int64_t i = 0; held && i < pages; i++) { // pages held elsewhere: flag 0, id 0 (never read)
        h[p->off_held + i] = held[i] != 0;
        if (!held[i]) h[p->off_kv_indices + i] = 0;
    }
    const size_t used = held ? p->off_held + round4((size_t)pages) : p->off_held;
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena, h, used * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->uploaded, st));
    p->upload_pending = 1;

    // The inner plan: lengths now, page ids (zeros here) written by the selection at each layer.
    attn_cuda_batch_t ib = {};
    ib.n_seqs = n * KH;
    ib.kv_indptr = p->h_in_indptr;
    ib.kv_indices = p->h_in_zero;
    ib.kv_len = p->h_in_len;
    size_t ws_inner = 0;
    int rc = attn_cuda_plan(p->inner, &ib, stream, &ws_inner);
    if (rc) return rc;
    p->n_seqs = n;
    p->n_items = (int)n_items;
    p->n_scores = (size_t)score_base;
    p->ws_scores = round256(p->n_scores * sizeof(float));
    p->ws_all = p->ws_scores + ws_inner;
    p->planned = 1;
    if (workspace_bytes) *workspace_bytes = p->ws_all;
    return 0;
}

extern "C" int attn_quest_plan(attn_quest_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget_pages,
                               void *stream, size_t *workspace_bytes) {
    return quest_plan(p, b, budget_pages, nullptr, stream, workspace_bytes);
}

extern "C" int attn_quest_dist_plan(attn_quest_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget_pages,
                                    const uint8_t *held, void *stream, size_t *workspace_bytes) {
    if (!held) return LC_EINVAL;
    return quest_plan(p, b, budget_pages, held, stream, workspace_bytes);
}

static int quest_run(const attn_quest_plan_t *p, const attn_quest_args_t *a, attn_cuda_sum_fn sum, void *ctx,
                     void *stream) {
    if (!p || !a || !p->planned || p->dist != (sum != nullptr)) return LC_EINVAL;
    if (!a->q || !a->out || !a->k || !a->v || !a->kmin || !a->kmax) return LC_EINVAL;
    if (a->workspace_bytes < p->ws_all || (p->ws_all > 0 && !a->workspace)) return LC_EINVAL;
    if (((uintptr_t)a->workspace | (uintptr_t)a->kmin | (uintptr_t)a->kmax) & 15) return LC_EINVAL;
    if (p->n_seqs == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    const int KH = p->shape.n_kv_heads, G = p->group;
    const int4 *seq_info = reinterpret_cast<const int4 *>(p->d_arena + p->off_seq_info);
    const int32_t *kv_indices = p->d_arena + p->off_kv_indices;
    float *scores = static_cast<float *>(a->workspace);
    int rc;
    if (p->n_items > 0) {
        ScoreParams sp;
        sp.seq_info = seq_info;
        sp.items = reinterpret_cast<const int4 *>(p->d_arena + p->off_items);
        sp.kv_indices = kv_indices;
        sp.held = p->dist ? p->d_arena + p->off_held : nullptr;
        sp.q = static_cast<const __nv_bfloat16 *>(a->q);
        sp.kmin = a->kmin;
        sp.kmax = a->kmax;
        sp.scores = scores;
        sp.n_heads = p->shape.n_heads;
        sp.n_kv_heads = KH;
        sp.group = G;
        sp.D = p->shape.head_dim;
        rc = G <= 2   ? launch_score<2>(sp, p->n_items, KH, st)
             : G <= 4 ? launch_score<4>(sp, p->n_items, KH, st)
             : G <= 8 ? launch_score<8>(sp, p->n_items, KH, st)
                      : launch_score<16>(sp, p->n_items, KH, st);
        if (rc) return rc;
    }
    if (p->dist && p->n_scores > 0 && (rc = sum(ctx, scores, p->n_scores))) return rc; // every page's score
    SelectParams sl;
    sl.seq_info = seq_info;
    sl.kv_indices = kv_indices;
    sl.scores = scores;
    sl.sel = p->d_sel;
    sl.inner_idx = attn_cuda_plan_dev_kv_indices(p->inner);
    sl.n_kv_heads = KH;
    select_kernel<<<dim3(p->n_seqs, KH), kSelThreads, 0, st>>>(sl);
    CUDA_CHECK_RET(cudaGetLastError());
    if (p->dist) {
        compact_kernel<<<dim3(p->n_seqs, KH), 32, 0, st>>>(sl, p->d_arena + p->off_held, p->shape.page_size,
                                                           p->inner->d_arena + p->inner->off_kv_len);
        CUDA_CHECK_RET(cudaGetLastError());
    }

    attn_cuda_args_t ia = {};
    ia.q = a->q;
    ia.out = a->out;
    ia.lse = a->lse;
    ia.k = a->k;
    ia.v = a->v;
    ia.workspace = p->ws_all > p->ws_scores ? static_cast<uint8_t *>(a->workspace) + p->ws_scores : nullptr;
    ia.workspace_bytes = p->ws_all - p->ws_scores;
    ia.variant = 0;
    return attn_cuda_run(p->inner, &ia, stream);
}

extern "C" int attn_quest_run(const attn_quest_plan_t *p, const attn_quest_args_t *a, void *stream) {
    return quest_run(p, a, nullptr, nullptr, stream);
}

extern "C" int attn_quest_dist_run(const attn_quest_plan_t *p, const attn_quest_args_t *a, attn_cuda_sum_fn sum,
                                   void *ctx, void *stream) {
    if (!sum) return LC_EINVAL;
    return quest_run(p, a, sum, ctx, stream);
}

extern "C" int attn_quest_selected(const attn_quest_plan_t *p, int seq, int kv_head, int32_t *pages, int cap,
                                   void *stream) {
    if (!p || !p->planned || seq < 0 || seq >= p->n_seqs || kv_head < 0 || kv_head >= p->shape.n_kv_heads || !pages)
        return LC_EINVAL;
    const int count = p->h_count[seq];
    if (cap < count) return LC_ERANGE;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    const size_t o = (size_t)p->h_sel_base[seq] + (size_t)kv_head * count;
    CUDA_CHECK_RET(cudaMemcpy(pages, p->d_sel + o, sizeof(int32_t) * count, cudaMemcpyDeviceToHost));
    return count;
}

extern "C" int attn_quest_count(const attn_quest_plan_t *p, int seq) {
    if (!p || !p->planned || seq < 0 || seq >= p->n_seqs) return -1;
    return p->h_count[seq];
}
