// What FlexPrefill's host code (flex.cu) and its kernels (flex_kern.cu)
// share: the block size, the parameter block of one sequence's launches and
// the launchers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

constexpr int kFlexBlock = 128;                // block (and key tile, and most representative rows)
constexpr double kFlexFx = 1125899906842624.0; // 2^50: mass in fixed point, exact integer sums

// Order-preserving key of a float (larger value, larger key; -0 as +0).
static __device__ __forceinline__ uint32_t okey(float f) {
    const uint32_t u = __float_as_uint(f == 0.f ? 0.f : f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
// Mass in 2^-50 fixed point.
static __device__ __forceinline__ unsigned long long tofx(float v) {
    return v > 0.f ? __double2ull_rn((double)v * kFlexFx) : 0ull;
}

// The select's merged histograms: a level's 256 counts then 256 masses, in a
// ring of kSelRing levels per head (workspace selhist).
constexpr int kSelHist = 512;
constexpr int kSelRing = 3;

// One sequence's launch: its scalars and the workspace views.
struct FlexParams {
    const __nv_bfloat16 *q, *k;
    const int32_t *pages; // the sequence's page table
    uint32_t *mask;       // at the sequence's mask_off
    int H, KH, G, D, ps;
    int N, n_q, q_pos0, qrow0, R, P0; // P0 = N - R: position of representative row 0
    int qb0, n_kb, n_qb, words;
    float scale, gamma, tau;
    int lo, hi;   // vertical-slash budget clamp (hi 0: none)
    int blocks;   // vertical-slash heads keep block-pooled columns and diagonals (attn_cuda_flex_policy_t's)
    int whole_qb; // query blocks from this one on attend every key block (the prompt's last rows)
    int rep_row0; // row of q holding representative row 0 (qrow0 + n_q - R on one rank)
    // A selection spread over the ranks of a ring (attn_cuda_flex_dist_*): this
    // rank scores and pools only the key tiles it holds (tiles, n_tiles) and
    // pools the query blocks it holds from qown (qrows[i]: the row of query
    // block i's first position, -1 elsewhere); q is then the gathered
    // representative rows (qrep). NULL tiles and qrows: one rank, all of them.
    const int32_t *tiles, *qrows;
    int n_tiles;
    const __nv_bfloat16 *qown;
    // workspace (per head strides in elements)
    float *qs;            // (H, D, 128) representative rows, scaled, transposed; rows >= R zero
    float *pm, *pl;       // (H, n_kb_max, 128) tile row max / sum
    float *mrow, *lrow;   // (H, 128)
    float *vert, *slash;  // (H, Nmax)
    float *part;          // (H, n_kb_max, 256) slash partials
    float *kpool;         // (KH, n_kb_max, D)
    double *ahat, *atrue; // (H, n_kb_max)
    float *qpool;         // (H, n_qb_max, D)
    float *cells;         // (H, n_qb_max * n_kb_max): (n_qb, n_kb) dense per head
    int32_t *cnt;         // (H, Nmax + 1) selected diagonals before each offset
    int32_t *colsel;      // (H, n_kb_max)
    float *vpool, *spool; // (H, n_kb_max) blocks: pooled vertical mass per key block, slash per offset block
    int32_t *branch;      // (H) 1 query-aware, 0 vertical-slash
    uint32_t *thr;        // (H, 4) order keys: query-aware, vertical, slash thresholds
    float *qrep32;        // (128, H, D) dist: the representative rows this rank holds (0 elsewhere), then all
    __nv_bfloat16 *qrep;  // (128, H, D) dist: the same in bf16
    // the thresholds' radix select runs on sel_ctas CTAs a head, which merge
    // their histograms of each level in selhist and meet at selbar
    unsigned long long *selhist; // (H, kSelRing, kSelHist): a level's counts, then masses; zeroed by the launch
    unsigned *selbar;            // (H) arrivals at the head's barrier (zeroed by the launch)
    int sel_ctas;                // CTAs a head (>= 1; the thresholds do not depend on it)
    int score_ctas[2];           // score_kernel<0>, <1>'s CTAs a head (>= 1; the tables do not depend on it)
    size_t sN, sKB, sCells, sQpool;
};

// Launchers (flex_kern.cu), on stream; 0 or LC_EDEVICE.
int attn_flex_kern_init(void); // the score kernel's shared memory limit, before the first select
// score_kernel<mode>'s CTAs a head for H heads of head_dim D: one wave of this device
int attn_flex_score_ctas(int H, int D, int mode);
// the select's CTAs a head for H heads on this device (all of them resident at once)
int attn_flex_sel_ctas(int H);
// a small sequence's mask (every causal bit): grid (n_qb, H)
int attn_flex_small_launch(const FlexParams &p, cudaStream_t st);
// the whole selection of one sequence, its kernels in flex_kern.cu's order
int attn_flex_select_launch(const FlexParams &p, cudaStream_t st);
// its last steps (flex_sel.cu): the thresholds and the bits from the summaries
int attn_flex_choose_launch(const FlexParams &p, cudaStream_t st);
// The distributed selection, in phases around the caller's sums over the
// ranks (flex.cu): 0 the held representative rows into qrep32 (sum them);
// 1 their bf16 copy, the scores' row max and sum over the held tiles into
// zeroed pm, pl (sum them); 2 the probabilities over the held tiles, the
// held blocks' mean keys and query blocks' mean queries into zeroed vert,
// part, kpool, qpool (sum them); 3 the rest, as on one rank, into the mask.
int attn_flex_dist_launch(const FlexParams &p, int phase, cudaStream_t st);
