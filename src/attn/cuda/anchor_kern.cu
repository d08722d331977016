// AnchorAttention's selection kernels (anchor_cuda.h says what each step
// computes; anchor.cu runs them): the anchor pass's block masks, the pooled
// queries and anchors, the stripe and own-key tests as bit sets (scores on
// the tensor cores), the whole kept key blocks as block masks for the dense
// kernel and the compaction of the other kept keys into ascending key
// lists (anchor_merge.cu holds the LSE merges of the passes and the pair
// count). No float atomics anywhere: every sum runs in a fixed order.
#include <math.h>

#include "attn/cuda/anchor.cuh"
#include "attn/cuda/sm90.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kScanThreads = 512;
constexpr int kSelThreads = 128; // four warps
constexpr int kSelSub = 64;      // keys per score tile (a sub-tile of the CTA's)
constexpr int kSelKR = 256;      // candidate keys per selection CTA

// The selection CTA's keys in shared memory: kSelKR rows of RS bf16. RS = D
// + 8 pads a row by 16 bytes, so ldmatrix's eight rows fall in distinct banks.
template <int D> struct SelSmem {
    static constexpr int kRS = D + 8;
    static constexpr int kBytes = kSelKR * kRS * 2;
};

// Row j of one head's K or V in the paged pool.
__device__ __forceinline__ const __nv_bfloat16 *pool_row(const __nv_bfloat16 *pool, const int32_t *pages, int ps,
                                                         int KH, int kh, int D, int64_t j) {
    return pool + (((size_t)pages[j / ps] * KH + kh) * ps + j % ps) * D;
}

// grid (nqb, H), 32 threads: row (h, qb) of the anchor pass's masks. Key
// block kb is on when it holds initial-window keys ([0, A)), local-window keys
// ([lo, qb]) or when the local window starts inside the initial window (then
// the CPU attends [0, p] whole), and is held; bits above the diagonal stay 0.
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
            if (kb <= qb && (all || kb < a_kb || kb >= g_kb) && (!sq.held || sq.held[kb])) bits |= 1u << b;
        }
        row[w] = bits;
    }
}

// grid (nqb, H), D threads: block bi's mean scaled query (thread e, rows in
// order: the CPU's f32 sum), stored as bf16 hi + lo (hi = bf16(x), lo =
// bf16(x - hi): an MMA over both keeps about 16 bits of the f32 mantissa, so
// the pooled scores match the CPU's f32 ones to far below a threshold's
// sensitivity), and its mean anchor (double, as the CPU).
template <int D> __global__ void pool_kernel(AncSeq sq, int H, float scale, AncWork w) {
    const int h = blockIdx.y, bi = blockIdx.x, e = threadIdx.x;
    const int b0 = (sq.qb0 + bi) * kAncB, r_lo = max(b0, sq.q_pos0) - sq.q_pos0,
              r_hi = min(b0 + kAncB, sq.N) - sq.q_pos0;
    float s = 0;
    for (int r = r_lo; r < r_hi; r++) s += __bfloat162float(w.q[((size_t)r * H + h) * D + e]) * scale;
    const float x = s / (float)(r_hi - r_lo);
    const __nv_bfloat16 hi = __float2bfloat16_rn(x);
    __nv_bfloat16 *qb = w.qbar + ((size_t)h * w.max_blk + bi) * 2 * D;
    qb[e] = hi;
    qb[D + e] = __float2bfloat16_rn(x - __bfloat162float(hi));
    if (e == 0) {
        double am = 0;
        for (int r = r_lo; r < r_hi; r++) am += w.rowmax[(size_t)r * H + h];
        w.abar[(size_t)h * w.max_blk + bi] = (float)(am / (r_hi - r_lo));
    }
}

// A 16-row m16n8k16 A fragment set (D / 16 k-steps) of bf16 rows: this
// lane's row g at pa, row g + 8 at pb (both already offset by its qd).
template <int D>
__device__ __forceinline__ void load_frag(uint32_t (&a)[D / 16][4], const __nv_bfloat16 *pa, const __nv_bfloat16 *pb) {
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        a[kk][0] = *reinterpret_cast<const uint32_t *>(pa + 16 * kk);
        a[kk][1] = *reinterpret_cast<const uint32_t *>(pb + 16 * kk);
        a[kk][2] = *reinterpret_cast<const uint32_t *>(pa + 16 * kk + 8);
        a[kk][3] = *reinterpret_cast<const uint32_t *>(pb + 16 * kk + 8);
    }
}

// A lane's hit bits of a 64-key score tile (bit 2 nt + p: key 8 nt + qd + p)
// as the tile's 64-bit set.
__device__ __forceinline__ unsigned long long spread(uint32_t m, int qd) {
    unsigned long long x = 0;
#pragma unroll
    for (int nt = 0; nt < kSelSub / 8; nt++) x |= (unsigned long long)((m >> (2 * nt)) & 3u) << (8 * nt + qd);
    return x;
}

// A warp's 64-bit set (key i of the tile = bit i) ORed over all its lanes.
__device__ __forceinline__ unsigned long long warp_or(unsigned long long x) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) x |= __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// s0, s1 (16 rows x 64 keys staged at shared address kb, rows of
// SelSmem<D>::kRS) = A0 K^T, A1 K^T: two row tiles per staged key fragment
// (half the ldmatrix traffic, twice the independent MMAs); s[nt]: keys 8 nt
// + qd + {0, 1}, rows g ([0..1]) and g + 8 ([2..3]) of the lane's quad.
template <int D>
__device__ __forceinline__ void score_tiles(uint32_t kb, int lane, const uint32_t (&a0)[D / 16][4],
                                            const uint32_t (&a1)[D / 16][4], float (&s0)[kSelSub / 8][4],
                                            float (&s1)[kSelSub / 8][4]) {
    constexpr int RS = SelSmem<D>::kRS;
    const int mat = lane >> 3, tk = (mat >> 1) * 8 + (lane & 7); // ldmatrix: keys +0 / +8 (mat / 2) x dims +0 / +8
#pragma unroll
    for (int nt = 0; nt < kSelSub / 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) s0[nt][e] = s1[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int jj = 0; jj < kSelSub / 16; jj++) {
            uint32_t r[4];
            ldmatrix_x4(r, kb + (uint32_t)((16 * jj + tk) * RS + 16 * kk + 8 * (mat & 1)) * 2);
            mma_bf16_16816(s0[2 * jj], a0[kk], r[0], r[1]);
            mma_bf16_16816(s0[2 * jj + 1], a0[kk], r[2], r[3]);
            mma_bf16_16816(s1[2 * jj], a1[kk], r[0], r[1]);
            mma_bf16_16816(s1[2 * jj + 1], a1[kk], r[2], r[3]);
        }
}

// grid (ceil((lo_last - A) / kSelKR), KH), kSelThreads, SelSmem<D>::kBytes:
// the candidate keys jc .. jc + 255 (jc = A + 256 x, below lo_last: the last
// group's lo, the largest) of kv head kh, staged once in shared memory as
// sub-tiles of 64 keys (each inside one page; the last may be cut at lo_last,
// which lies 128-aligned) and scored for every query head of kh and every
// group on mma.sync. Work unit u = gi * qph + hq (group-major, so that the
// last group's heavier units spread over the warps): warp u % 4 takes group
// gi of head h = kh * qph + hq, on the sub-tiles below the group's lo. Key j
// of [A, lo) is kept when some block b of the group in the chunk has
// qbar_b.k_j + theta >= abar_b (qbar as bf16 hi + lo, so the pooled score
// keeps f32 precision); in the group holding the chunk's last row, a key not
// kept is tail block t's own when some row r of that block among the chunk's
// last 128 has scale q_r.k_j + theta >= rowmax_r. A unit's words are written
// by its warp alone (the OR over its lanes): no atomics, no order. With held
// blocks (sq.held) the other keys are neither staged nor scored: no bits.
template <int D>
__global__ void __launch_bounds__(kSelThreads)
    select_kernel(AncSeq sq, int H, int KH, int ps, float scale, const __nv_bfloat16 *k, AncWork w) {
    constexpr int RS = SelSmem<D>::kRS;
    constexpr int kSubs = kSelKR / kSelSub;
    extern __shared__ __align__(16) uint8_t sel_smem[];
    __nv_bfloat16 *ks = reinterpret_cast<__nv_bfloat16 *>(sel_smem);
    const int kh = blockIdx.y, qph = H / KH, jc = sq.A + kSelKR * (int)blockIdx.x;
    const int lo_last = anc_lo(sq, (sq.g_first + sq.ng - 1) * sq.L);
    const int nsub = min(kSelKR, lo_last - jc) / kSelSub; // >= 2: lo_last - jc is a positive multiple of 128
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const bool all = isinf(sq.theta) && sq.theta > 0;
    if (!all) { // every 16-byte piece in flight at once (cp.async); a sub-tile's 64 rows lie in one page
        constexpr int kVecs = D / 8, kPer = kSelSub * kVecs / kSelThreads; // pieces of a sub-tile per thread
#pragma unroll
        for (int sub = 0; sub < kSubs; sub++) {
            if (sub >= nsub) break;
            if (!anc_held(sq, jc + kSelSub * sub)) continue; // another rank's keys: never scored
            const __nv_bfloat16 *kt = pool_row(k, sq.pages, ps, KH, kh, D, jc + kSelSub * sub);
#pragma unroll
            for (int i = 0; i < kPer; i++) {
                const int v = tid + kSelThreads * i, r = v / kVecs, x = (v % kVecs) * 8;
                cp_async16(smem_u32(ks + (kSelSub * sub + r) * RS + x), kt + (size_t)r * D + x, 16);
            }
        }
        cp_async_commit();
        cp_async_wait<0>();
    }
    __syncthreads();
    const float theta = sq.theta;
    const int g = lane >> 2, qd = (lane & 3) * 2;
    const uint32_t kb0 = smem_u32(ks);
    auto scores2 = [&](const uint32_t(&a0)[D / 16][4], const uint32_t(&a1)[D / 16][4], int sub,
                       float(&s0)[kSelSub / 8][4], float(&s1)[kSelSub / 8][4]) {
        score_tiles<D>(kb0 + (uint32_t)(sub * kSelSub * RS) * 2, lane, a0, a1, s0, s1);
    };
    const int n_units = sq.ng * qph;
    for (int u = warp; u < n_units; u += kSelThreads / 32) { // warp-uniform from here on
        const int gi = u / qph, h = kh * qph + u % qph;
        const int g0 = (sq.g_first + gi) * sq.L, lo = anc_lo(sq, g0);
        const int ns = lo > jc ? min(nsub, (lo - jc) / kSelSub) : 0; // sub-tiles below lo
        if (ns == 0) continue;
        uint32_t *keep = w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap + jc / 32;
        if (all) { // theta = inf: no tail blocks (n_ob = 0)
            if (lane < 2 * ns) keep[lane] = anc_held(sq, jc + 32 * lane) ? ~0u : 0u;
            continue;
        }
        // this lane's hits per sub-tile: bit 2 nt + p = key 8 nt + qd + p (either of its rows); spread() makes
        // the sub-tile's 64-bit set of them
        uint32_t hit[kSubs] = {};
        // pooled rows: the group's blocks in the chunk
        const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
        const int bi0 = q0 / kAncB - sq.qb0, nb = (q1 - 1) / kAncB - q0 / kAncB + 1;
        for (int mt = 0; 16 * mt < nb; mt++) {
            const int ra = 16 * mt + g, rb = ra + 8;
            const __nv_bfloat16 *pa = w.qbar + ((size_t)h * w.max_blk + bi0 + min(ra, nb - 1)) * 2 * D + qd;
            const __nv_bfloat16 *pb = w.qbar + ((size_t)h * w.max_blk + bi0 + min(rb, nb - 1)) * 2 * D + qd;
            const float aa = ra < nb ? w.abar[(size_t)h * w.max_blk + bi0 + ra] : INFINITY;
            const float ab = rb < nb ? w.abar[(size_t)h * w.max_blk + bi0 + rb] : INFINITY;
            uint32_t ahi[D / 16][4], alo[D / 16][4];
            load_frag<D>(ahi, pa, pb);
            load_frag<D>(alo, pa + D, pb + D);
#pragma unroll
            for (int sub = 0; sub < kSubs; sub++) {
                if (sub >= ns) break;
                if (!anc_held(sq, jc + kSelSub * sub)) continue; // no hits
                float s0[kSelSub / 8][4], s1[kSelSub / 8][4];
                scores2(ahi, alo, sub, s0, s1);
#pragma unroll
                for (int nt = 0; nt < kSelSub / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (s0[nt][e] + s1[nt][e] + theta >= (e < 2 ? aa : ab)) hit[sub] |= 1u << (2 * nt + (e & 1));
            }
        }
        unsigned long long kept[kSubs];
#pragma unroll
        for (int sub = 0; sub < kSubs; sub++) {
            if (sub >= ns) break;
            kept[sub] = warp_or(spread(hit[sub], qd));
            if (lane < 2) keep[2 * sub + lane] = (unsigned)(kept[sub] >> (32 * lane));
        }
        // the chunk's last 128 rows, one by one
        if (g0 + sq.L < sq.N || sq.n_ob == 0) continue;
        uint32_t own0[kSubs] = {}, own1[kSubs] = {}; // as hit, for each tail block
        const int r0 = anc_test_p0(sq) - sq.q_pos0, nr = sq.n_q - r0;
        // two row tiles at a time; a tile past the rows has only invalid rows (anchor +inf: no hits)
        for (int mt = 0; 16 * mt < nr; mt += 2) {
            uint32_t a[2][D / 16][4];
            float m[2][2];
            bool t[2][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
#pragma unroll
                for (int hb = 0; hb < 2; hb++) { // rows g and g + 8 of tile mt + i
                    const int r = r0 + 16 * (mt + i) + g + 8 * hb;
                    const bool v = r < sq.n_q;
                    m[i][hb] = v ? w.rowmax[(size_t)r * H + h] : INFINITY;
                    t[i][hb] = (sq.q_pos0 + r) / kAncB - sq.own_b0 > 0; // the row's tail block: 0 or 1
                }
                const int ra = r0 + 16 * (mt + i) + g, rb = ra + 8;
                load_frag<D>(a[i], w.q + ((size_t)(ra < sq.n_q ? ra : r0) * H + h) * D + qd,
                             w.q + ((size_t)(rb < sq.n_q ? rb : r0) * H + h) * D + qd);
            }
#pragma unroll
            for (int sub = 0; sub < kSubs; sub++) {
                if (sub >= ns) break;
                if (!anc_held(sq, jc + kSelSub * sub)) continue; // no hits
                float s[2][kSelSub / 8][4];
                scores2(a[0], a[1], sub, s[0], s[1]);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int nt = 0; nt < kSelSub / 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++)
                            if (s[i][nt][e] * scale + theta >= m[i][e >> 1]) {
                                const uint32_t bit = 1u << (2 * nt + (e & 1));
                                if (t[i][e >> 1])
                                    own1[sub] |= bit;
                                else
                                    own0[sub] |= bit;
                            }
            }
        }
        uint32_t *own = w.own_bits + (size_t)h * 2 * w.wcap + jc / 32;
#pragma unroll
        for (int sub = 0; sub < kSubs; sub++) {
            if (sub >= ns) break;
            const unsigned long long m0 = warp_or(spread(own0[sub], qd)) & ~kept[sub],
                                     m1 = warp_or(spread(own1[sub], qd)) & ~kept[sub];
            if (lane < 2) {
                own[2 * sub + lane] = (unsigned)(m0 >> (32 * lane));
                own[w.wcap + 2 * sub + lane] = (unsigned)(m1 >> (32 * lane));
            }
        }
    }
}

// grid (ng, H, anc_probe_splits(sq)), kSelThreads, 2 x 64 staged keys: the
// probe (anchor.c's method comment), after select_kernel, split over the
// candidates. Group gi's last block in the chunk (up to 128 rows: warp w
// takes rows 32 w .. 32 w + 31 as two row tiles) scores split z's candidates
// of [A, lo) (kProbeKeys of them from A + z kProbeKeys), 64 keys at a time
// staged by all threads (the next 64 loading while these are scored), and
// each row sums exp(score - rowmax) in double over the keys the stripes keep
// (keep bits) and over those they leave out, lane by lane in key order, then
// over its quad's four lanes in a fixed order, into the split's slot of
// probe_part (a split past lo writes zeros). probe_decide_kernel adds them.
// With held blocks (sq.held) only the held keys are staged and summed.
template <int D>
__global__ void __launch_bounds__(kSelThreads)
    probe_kernel(AncSeq sq, int H, int KH, int ps, float scale, const __nv_bfloat16 *k, AncWork w) {
    constexpr int RS = SelSmem<D>::kRS;
    extern __shared__ __align__(16) uint8_t sel_smem[];
    __nv_bfloat16 *ks = reinterpret_cast<__nv_bfloat16 *>(sel_smem);
    const int gi = blockIdx.x, h = blockIdx.y, z = blockIdx.z, S = gridDim.z, kh = h / (H / KH);
    const int g0 = (sq.g_first + gi) * sq.L, lo = anc_lo(sq, g0);
    if (lo <= sq.A) return; // no candidates (the whole CTA; probe_decide_kernel skips the group too)
    const int jb = sq.A + z * kProbeKeys, je = min(lo, jb + kProbeKeys);
    const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
    const int p0 = max((q1 - 1) / kAncB * kAncB, q0), nr = q1 - p0; // the probe's rows (positions p0 ..)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = (lane & 3) * 2;
    const int rb = 32 * warp;    // the warp's first probe row
    const bool active = rb < nr; // warp-uniform
    uint32_t a[2][D / 16][4];
    float m[2][2];
    double kept[2][2] = {}, missed[2][2] = {};
    if (active)
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int ra = rb + 16 * i + g, rr = ra + 8; // rows g and g + 8 of tile i
            m[i][0] = ra < nr ? w.rowmax[(size_t)(p0 - sq.q_pos0 + ra) * H + h] : INFINITY;
            m[i][1] = rr < nr ? w.rowmax[(size_t)(p0 - sq.q_pos0 + rr) * H + h] : INFINITY;
            load_frag<D>(a[i], w.q + ((size_t)(p0 - sq.q_pos0 + min(ra, nr - 1)) * H + h) * D + qd,
                         w.q + ((size_t)(p0 - sq.q_pos0 + min(rr, nr - 1)) * H + h) * D + qd);
        }
    const uint32_t *keep = w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap;
    // 64 keys in one page (pages of 64 or 128; j0 % 64 == 0) into buffer buf
    auto stage = [&](int j0, int buf) {
        constexpr int kVecs = D / 8, kPer = kSelSub * kVecs / kSelThreads;
        const __nv_bfloat16 *kt = pool_row(k, sq.pages, ps, KH, kh, D, j0);
#pragma unroll
        for (int i = 0; i < kPer; i++) {
            const int v = tid + kSelThreads * i, r = v / kVecs, x = (v % kVecs) * 8;
            cp_async16(smem_u32(ks + (buf * kSelSub + r) * RS + x), kt + (size_t)r * D + x, 16);
        }
        cp_async_commit();
    };
    // the held keys only (CTA-uniform): from j, the first key of a held block
    auto adv = [&](int j) {
        while (j < je && !anc_held(sq, j)) j = (j & ~(kAncB - 1)) + kAncB;
        return j;
    };
    int j0 = adv(jb);
    if (j0 < je) stage(j0, 0);
    for (int it = 0; j0 < je; it++) {
        const int buf = it & 1, jn = adv(j0 + kSelSub);
        if (jn < je) { // the next 64 in flight while these are scored
            stage(jn, buf ^ 1);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (active) {
            float s[2][kSelSub / 8][4];
            score_tiles<D>(smem_u32(ks + buf * kSelSub * RS), lane, a[0], a[1], s[0], s[1]);
            const unsigned long long kw = (unsigned long long)keep[j0 / 32] | (unsigned long long)keep[j0 / 32 + 1]
                                                                                  << 32;
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int nt = 0; nt < kSelSub / 8; nt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const double x = (double)expf(s[i][nt][e] * scale - m[i][e >> 1]); // invalid rows: 0
                        if (kw >> (8 * nt + qd + (e & 1)) & 1ull)
                            kept[i][e >> 1] += x;
                        else
                            missed[i][e >> 1] += x;
                    }
        }
        __syncthreads(); // this buffer's readers are done before the next stage overwrites it
        j0 = jn;
    }
    if (!active) return;
    double *part = w.probe_part + (((size_t)h * sq.ng + gi) * S + z) * kAncB * 2;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int hb = 0; hb < 2; hb++) {
            double kq = kept[i][hb], mq = missed[i][hb];
            kq += __shfl_xor_sync(0xffffffffu, kq, 1);
            mq += __shfl_xor_sync(0xffffffffu, mq, 1);
            kq += __shfl_xor_sync(0xffffffffu, kq, 2);
            mq += __shfl_xor_sync(0xffffffffu, mq, 2);
            const int r = rb + 16 * i + g + 8 * hb;
            if ((lane & 3) == 0 && r < nr) {
                part[2 * r] = kq;
                part[2 * r + 1] = mq;
            }
        }
}

// Group gi's probe rows: their first position p0 and count.
__device__ __forceinline__ int probe_span(const AncSeq &sq, int g0, int *p0) {
    const int q0 = max(g0, sq.q_pos0), q1 = min(g0 + sq.L, sq.N);
    *p0 = max((q1 - 1) / kAncB * kAncB, q0);
    return q1 - *p0;
}

// grid (ng, H), 128 threads: row r's (thread r's) kept and missed mass, its
// splits added in split order, into rows (H, ng, 128, 2): a rank's share of
// the probe's sums (the dist API), before the sum over the ranks.
__global__ void probe_rows_kernel(AncSeq sq, int H, int S, AncWork w, double *rows) {
    const int gi = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int g0 = (sq.g_first + gi) * sq.L;
    int p0;
    if (anc_lo(sq, g0) <= sq.A || tid >= probe_span(sq, g0, &p0)) return;
    const double *part = w.probe_part + ((size_t)h * sq.ng + gi) * S * kAncB * 2 + 2 * tid;
    double kq = 0, mq = 0;
    for (int z = 0; z < S; z++) {
        kq += part[(size_t)z * kAncB * 2];
        mq += part[(size_t)z * kAncB * 2 + 1];
    }
    double *o = rows + (((size_t)h * sq.ng + gi) * kAncB + tid) * 2;
    o[0] = kq;
    o[1] = mq;
}

// grid (ng, H), 128 threads: the probe's decision. Row r (thread r) adds its
// splits' kept and missed mass in split order (or, from ranks, the n_ranks
// ranks' sums of probe_rows_kernel in rank order), the anchor pass's own
// mass exp(lse1 - rowmax) counted kept, into its missed share; thread 0 sums
// the rows' shares in row order; past the probe's share the head keeps every
// (held) candidate of the group (the keep bits of [A, lo)) and, in the group
// with the tail blocks, no own keys.
__global__ void probe_decide_kernel(AncSeq sq, int H, int S, AncWork w, const double *ranks, int n_ranks,
                                    size_t rstride) {
    __shared__ double s_share[kAncB];
    __shared__ int s_fire;
    const int gi = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    const int g0 = (sq.g_first + gi) * sq.L, lo = anc_lo(sq, g0);
    if (lo <= sq.A) return; // no candidates
    int p0;
    const int nr = probe_span(sq, g0, &p0);
    if (tid < nr) {
        double kq = 0, mq = 0;
        if (ranks) {
            const double *o = ranks + (((size_t)h * sq.ng + gi) * kAncB + tid) * 2;
            for (int i = 0; i < n_ranks; i++) {
                kq += o[i * rstride];
                mq += o[i * rstride + 1];
            }
        } else {
            const double *part = w.probe_part + ((size_t)h * sq.ng + gi) * S * kAncB * 2 + 2 * tid;
            for (int z = 0; z < S; z++) {
                kq += part[(size_t)z * kAncB * 2];
                mq += part[(size_t)z * kAncB * 2 + 1];
            }
        }
        const size_t ri = (size_t)(p0 - sq.q_pos0 + tid) * H + h;
        kq += (double)expf(w.lse1[ri] - w.rowmax[ri]);
        s_share[tid] = mq / (mq + kq);
    }
    __syncthreads();
    if (tid == 0) {
        double t = 0;
        for (int r = 0; r < nr; r++) t += s_share[r];
        s_fire = t / nr > (double)sq.probe;
    }
    __syncthreads();
    if (!s_fire) return;
    uint32_t *kw = w.keep_bits + ((size_t)h * sq.ng + gi) * w.wcap;
    for (int wd = sq.A / 32 + tid; wd < lo / 32; wd += blockDim.x)
        if (anc_held(sq, 32 * wd)) kw[wd] = ~0u;
    if (g0 + sq.L >= sq.N && sq.n_ob > 0) // the tail blocks' own keys: none left
        for (int t = 0; t < 2; t++)
            for (int wd = sq.A / 32 + tid; wd < lo / 32; wd += blockDim.x)
                w.own_bits[((size_t)h * 2 + t) * w.wcap + wd] = 0u;
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


// The selection up to the probe's decision: pooling, the stripe and own-key
// tests and the probe's split sums (then, with probe_rows, their sums by row).
template <int D>
int select_part_d(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w,
                  double *probe_rows, cudaStream_t st) {
    const int H = sh.n_heads;
    pool_kernel<D><<<dim3(sq.nqb, H), D, 0, st>>>(sq, H, sh.scale, w);
    const int lo_last = anc_lo(sq, (sq.g_first + sq.ng - 1) * sq.L);
    if (lo_last > sq.A) { // lo_last - A: a multiple of 128
        CUDA_CHECK_RET(
            cudaFuncSetAttribute(select_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, SelSmem<D>::kBytes));
        select_kernel<D>
            <<<dim3((lo_last - sq.A + kSelKR - 1) / kSelKR, sh.n_kv_heads), kSelThreads, SelSmem<D>::kBytes, st>>>(
                sq, H, sh.n_kv_heads, sh.page_size, sh.scale, k, w);
        if (anc_probe_runs(sq)) {
            const int S = anc_probe_splits(sq);
            constexpr int kProbeSmem = SelSmem<D>::kBytes * 2 * kSelSub / kSelKR; // two stages of 64 keys
            if (kProbeSmem > 48 * 1024)                                           // (256 dims)
                CUDA_CHECK_RET(
                    cudaFuncSetAttribute(probe_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kProbeSmem));
            probe_kernel<D><<<dim3(sq.ng, H, S), kSelThreads, kProbeSmem, st>>>(sq, H, sh.n_kv_heads, sh.page_size,
                                                                                sh.scale, k, w);
            if (probe_rows) probe_rows_kernel<<<dim3(sq.ng, H), kAncB, 0, st>>>(sq, H, S, w, probe_rows);
        }
    }
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// The rest: the probe's decision (from the splits, or from ranks), the whole
// blocks, the lists.
int select_finish(const AncSeq &sq, int H, const AncWork &w, const double *ranks, int n_ranks, size_t rstride,
                  cudaStream_t st) {
    if (anc_probe_runs(sq))
        probe_decide_kernel<<<dim3(sq.ng, H), kAncB, 0, st>>>(sq, H, anc_probe_splits(sq), w, ranks, n_ranks, rstride);
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
    int rc = anc_select_part_launch(sq, sh, k, w, nullptr, st);
    return rc ? rc : select_finish(sq, sh.n_heads, w, nullptr, 0, 0, st);
}

int anc_select_part_launch(const AncSeq &sq, const attn_cuda_shape_t &sh, const __nv_bfloat16 *k, const AncWork &w,
                           double *probe_rows, cudaStream_t st) {
    switch (sh.head_dim) {
    case 256: return select_part_d<256>(sq, sh, k, w, probe_rows, st);
    case 128: return select_part_d<128>(sq, sh, k, w, probe_rows, st);
    default: return select_part_d<64>(sq, sh, k, w, probe_rows, st);
    }
}

int anc_select_finish_launch(const AncSeq &sq, int H, const AncWork &w, const double *probe_ranks, int n_ranks,
                             size_t rank_stride, cudaStream_t st) {
    return select_finish(sq, H, w, probe_ranks, n_ranks, rank_stride, st);
}
