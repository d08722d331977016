// What the TidalDecode host code (tidal.cu) and its kernels (tidal_kern.cu)
// share: the work-split constants, the layout of the masses in the
// workspace, one parameter block per kernel and the launchers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

constexpr int kTidalMassChunk = 512;    // positions per mass CTA
constexpr int kTidalMaxSplits = 64;     // most attention chunks of one row
constexpr int kTidalMaxGroup = 16;      // query heads per kv head (the MMA's rows)
constexpr int kTidalAttSplitKeys = 128; // default smallest attention chunk of a row's list

// Floats of one (row, kv head)'s masses in the workspace (16-byte runs).
__host__ __device__ static inline int attn_tidal_mass_stride(int n) { return (n + 3) & ~3; }

// Rows are the plan's (tidal.cu): two int4 per row,
//   {kv_len, keep, kv_indptr, sel_base}, {mass_base, chunk_keys, n_chunks, part_base}.
struct TidalMassParams {
    const int4 *rows;          // (n_rows, 2)
    const int4 *items;         // (n_mass_items) {row, first position, 0, 0}
    const int32_t *kv_indices; // the step's page table (CSR by kv_indptr)
    const __nv_bfloat16 *q;    // (n_rows, n_heads, D)
    const __nv_bfloat16 *k;    // (n_pool_pages, n_kv_heads, page_size, D)
    const float *lse;          // (n_rows, n_heads) natural log
    float *mass;               // workspace, at mass_base
    unsigned *hist;            // (n_rows, n_kv_heads, 256)
    const int32_t *held;       // distributed: 1 for the pages this rank holds (others: mass 0, not counted)
    int n_heads, n_kv_heads, group, page_size;
    float scale;
};

struct TidalSelectParams {
    const int4 *rows;     // (n_rows, 2)
    const float *mass;    // workspace: the masses of row r, kv head h at mass_base + h * mass_stride(kv_len)
    const unsigned *hist; // (n_rows, n_kv_heads, 256) top-byte counts of the masses
    int32_t *sel;         // the selection: (row, kv head h)'s keep positions at sel_base + h * keep
    int n_kv_heads;
};

struct TidalAttendParams {
    const int4 *rows;               // (n_rows, 2)
    const int4 *items;              // (n_att_items) {row, chunk, 0, 0}
    const int32_t *kv_indices;      // the step's page table (CSR by kv_indptr)
    const int32_t *sel;             // as in TidalSelectParams
    const __nv_bfloat16 *q, *k, *v; // (n_rows, n_heads, D); (n_pool_pages, n_kv_heads, page_size, D) twice
    float *ws_o;                    // (n_parts, group, D) normalised chunk outputs
    float *ws_lse; // (n_parts, group) base-2 LSE of the scaled scores of each chunk (-inf: empty chunk)
    int n_heads, n_kv_heads, group, page_size;
    float scale_log2;
    // distributed: this rank's share of each (row, kv head)'s list, positions
    // ascending, at list + base[row] + kv_head * cap[row], count[row * KH +
    // kv_head] of them (dist_compact_kernel); NULL: one rank (sel and newest)
    const int32_t *list, *list_base, *list_cap, *count;
};

struct TidalCompactParams {
    const int4 *rows;      // (n_rows, 2)
    const int32_t *sel;    // the selection
    const int32_t *held;   // (pages) 1 where this rank holds the page
    const int32_t *lbase;  // (n_rows) first entry of the row's lists
    const int32_t *lcap;   // (n_rows) entries per kv head
    int32_t *list, *count; // out
    int n_kv_heads, page_size;
};

struct TidalMergeParams {
    const int4 *rows;           // (n_rows, 2)
    const float *ws_o, *ws_lse; // as in TidalAttendParams
    __nv_bfloat16 *out;         // (n_rows, n_heads, D)
    float *lse;                 // (n_rows, n_heads) or NULL
    int n_heads, n_kv_heads, group, D;
};

// Launchers (tidal_kern.cu), on stream; 0 or LC_EDEVICE. D is the head dim (64 or 128).
int attn_tidal_attend_init(void); // the attention kernel's shared memory limit, once per process is enough
int attn_tidal_mass_launch(int D, const TidalMassParams &p, int n_items, int n_kv_heads, cudaStream_t st);
int attn_tidal_select_launch(const TidalSelectParams &p, int n_rows, int n_kv_heads, cudaStream_t st);
int attn_tidal_attend_launch(int D, const TidalAttendParams &p, int n_items, int n_kv_heads, cudaStream_t st);
int attn_tidal_merge_launch(const TidalMergeParams &p, int n_rows, int n_kv_heads, cudaStream_t st);
// distributed: this rank's share of every (row, kv head)'s list (grid (n_rows, KH), one warp); the
// histograms to floats (to sum them over the ranks) and back
int attn_tidal_compact_launch(const TidalCompactParams &p, int n_rows, int n_kv_heads, cudaStream_t st);
int attn_tidal_hist_cast(unsigned *hist, float *f, size_t n, int to_float, cudaStream_t st);
