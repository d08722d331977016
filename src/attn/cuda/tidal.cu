// TidalDecode sparse decode on the GPU, host side: the plan (checks, the
// step's rows and work items in one pinned upload, the selection buffer) and
// the entry points of tidal_cuda.h. The kernels are tidal_kern.cu's.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/tidal.cuh"
#include "attn/cuda/tidal_cuda.h"
#include "ops/cuda/cuda_check.cuh"

namespace {

size_t round4(size_t n) { return (n + 3) & ~(size_t)3; }
size_t round256(size_t n) { return (n + 255) & ~(size_t)255; }

} // namespace

/* Per-step arrays in one int32 arena (pinned host copy, one upload), offsets
 * in int32 units, multiples of 4:
 *   rows (n_rows, 8): {kv_len, keep, kv_indptr, sel_base, mass_base, chunk_keys, n_chunks, part_base}
 *     sel_base, mass_base: first entry of the row's n_kv_heads lists of keep
 *     positions (and of masses, attn_tidal_mass_stride(kv_len) apart); -1 when the row
 *     keeps every position (no list: list index i is position i).
 *     chunk_keys, n_chunks: the attention's split of the row's list of at
 *     most keep + 1 entries; part_base: its first partial result
 *     ((row, kv head, chunk) is part_base + kv_head * n_chunks + chunk)
 *   mass_items (n_mass_items, 4): {row, first position, 0, 0}
 *   att_items (n_att_items, 4): {row, chunk, 0, 0}
 *   kv_indices (kv_indptr[n_rows]) */
struct attn_tidal_plan {
    attn_cuda_shape_t shape;
    attn_tidal_limits_t lim;
    int group, split_keys;
    int32_t *h_arena, *d_arena;
    size_t arena_ints;
    int32_t *h_rows;  // (max_rows, 8) host copy of the planned rows, for attn_tidal_selected
    int32_t *d_sel;   // (max_rows, n_kv_heads, max_budget) the selection
    unsigned *d_hist; // (max_rows, n_kv_heads, 256) top-byte histograms of a selection
    cudaEvent_t uploaded;
    int upload_pending;

    int planned, selected, n_rows, n_sparse, n_mass_items, n_att_items;
    size_t off_rows, off_mass_items, off_att_items, off_kv_indices;
    // distributed (attn_tidal_dist_plan): the held flags, each row's list
    // base and capacity in the arena; this rank's lists and counts; the
    // histograms as floats for their sum over the ranks
    int dist;
    size_t off_held, off_lbase, off_lcap, n_mass_floats;
    int32_t *d_list, *d_count;
    float *d_histf;
    size_t ws_mass, ws_att_o, ws_att, ws_all; // bytes: masses; partial outputs, then their LSEs
};

namespace {

int check_shape(const attn_cuda_shape_t *sh) {
    if (!sh || sh->n_heads <= 0 || sh->n_kv_heads <= 0 || sh->n_heads % sh->n_kv_heads != 0 || sh->n_pool_pages <= 0 ||
        !(sh->scale > 0.f) || !isfinite(sh->scale))
        return LC_EINVAL;
    if ((sh->head_dim != 64 && sh->head_dim != 128 && sh->head_dim != 256) ||
        (sh->page_size != 64 && sh->page_size != 128) || sh->n_heads / sh->n_kv_heads > kTidalMaxGroup)
        return LC_EUNSUPPORTED;
    return 0;
}

// The attention's chunk of a row's list of cnt entries: at least split
// entries, at most kTidalMaxSplits chunks, a multiple of 64 (the CTA's step).
// Depends on the row's own list length alone, never on the batch.
int chunk_keys_of(int split, int cnt) {
    int per = (cnt + kTidalMaxSplits - 1) / kTidalMaxSplits;
    per = (per + 63) / 64 * 64;
    return per > split ? per : split;
}
} // namespace

extern "C" int attn_tidal_plan_create(const attn_cuda_shape_t *shape, const attn_tidal_limits_t *lim,
                                      attn_tidal_plan_t **out) {
    if (!shape || !lim || !out) return LC_EINVAL;
    *out = nullptr;
    int rc = check_shape(shape);
    if (rc) return rc;
    if (lim->max_rows <= 0 || lim->max_pages <= 0 || lim->max_pages > INT32_MAX || lim->max_budget <= 0 ||
        lim->split_keys < 0 || lim->split_keys % 64 != 0)
        return LC_EINVAL;
    const int KH = shape->n_kv_heads;
    const size_t mr = (size_t)lim->max_rows, mp = (size_t)lim->max_pages;
    // selection entries and partial results are indexed with int32 in the rows
    if ((int64_t)lim->max_rows * KH * lim->max_budget > INT32_MAX ||
        (int64_t)lim->max_rows * KH * kTidalMaxSplits > INT32_MAX)
        return LC_ERANGE;
    int dev, major;
    CUDA_CHECK_RET(cudaGetDevice(&dev));
    CUDA_CHECK_RET(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    if (major < 9) { // built for sm_90 (mma.sync, cp.async and ldmatrix would do on sm_80)
        lc_log(LC_LOG_ERROR, "attn_tidal: the kernels need an sm_90 GPU (this one is sm_%d)", major);
        return LC_EUNSUPPORTED;
    }
    if ((rc = attn_tidal_attend_init())) return rc;

    attn_tidal_plan_t *p = (attn_tidal_plan_t *)calloc(1, sizeof *p);
    if (!p) return LC_ENOMEM;
    p->shape = *shape;
    p->lim = *lim;
    p->group = shape->n_heads / KH;
    p->split_keys = lim->split_keys ? lim->split_keys : kTidalAttSplitKeys;
    // mass items: at most one per 512 positions plus one partial per row
    const size_t mass_items = mp * (size_t)shape->page_size / kTidalMassChunk + mr;
    p->arena_ints = 8 * mr + 4 * mass_items + 4 * mr * kTidalMaxSplits + 2 * round4(mp) + 2 * round4(mr);
    const size_t sel_n = mr * KH * (size_t)lim->max_budget, hist_n = mr * KH * 256;
    rc = LC_ENOMEM;
    p->h_rows = (int32_t *)malloc(sizeof(int32_t) * 8 * mr);
    if (!p->h_rows) goto fail;
    if (cudaMallocHost((void **)&p->h_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_sel, sel_n * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_hist, hist_n * sizeof(unsigned)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_histf, hist_n * sizeof(float)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_count, mr * KH * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_list, mr * KH * ((size_t)lim->max_budget + 1) * sizeof(int32_t)) != cudaSuccess)
        goto fail;
    rc = LC_EDEVICE;
    if (cudaMemset(p->d_sel, 0, sel_n * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaEventCreateWithFlags(&p->uploaded, cudaEventDisableTiming) != cudaSuccess) goto fail;
    *out = p;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the last error
    attn_tidal_plan_destroy(p);
    return rc;
}

extern "C" void attn_tidal_plan_destroy(attn_tidal_plan_t *p) {
    if (!p) return;
    if (p->uploaded) {
        cudaEventSynchronize(p->uploaded);
        cudaEventDestroy(p->uploaded);
    }
    cudaFreeHost(p->h_arena);
    cudaFree(p->d_arena);
    cudaFree(p->d_sel);
    cudaFree(p->d_hist);
    cudaFree(p->d_histf);
    cudaFree(p->d_count);
    cudaFree(p->d_list);
    free(p->h_rows);
    free(p);
}

static int tidal_plan(attn_tidal_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget, const uint8_t *held,
                      void *stream, size_t *workspace_bytes) {
    if (!p || !b || !budget) return LC_EINVAL;
    p->planned = p->selected = 0;
    p->dist = held != nullptr;
    const int n = b->n_seqs, KH = p->shape.n_kv_heads, ps = p->shape.page_size, G = p->group;
    const int D = p->shape.head_dim;
    if (n < 0 || b->q_indptr || !b->kv_indptr || !b->kv_len) return LC_EINVAL;
    if (n > p->lim.max_rows) return LC_ERANGE;
    if (b->kv_indptr[0] != 0 || (n > 0 && !b->kv_indices && b->kv_indptr[n] > 0)) return LC_EINVAL;
    for (int r = 0; r < n; r++) {
        const int64_t np = (int64_t)b->kv_indptr[r + 1] - b->kv_indptr[r], len = b->kv_len[r];
        if (np < 0 || len < 1 || len > np * ps || budget[r] < 1) return LC_EINVAL;
        if (budget[r] < len && budget[r] > p->lim.max_budget) return LC_ERANGE;
        if (held && (budget[r] < len ? budget[r] + 1 : len) > p->lim.max_budget + 1) return LC_ERANGE; // its list
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
    p->off_rows = 0;
    p->off_mass_items = 8 * (size_t)n;
    int32_t *rows = h + p->off_rows, *mitems = h + p->off_mass_items;
    int64_t n_mass = 0, n_att = 0, sel_used = 0, mass_used = 0, parts = 0;
    int n_sparse = 0;
    for (int r = 0; r < n; r++) { // rows and mass items; attention items once their offset is known
        const int len = b->kv_len[r], keep = budget[r] < len ? budget[r] : len, all = keep == len;
        const int cnt = all ? len : keep + 1, ck = chunk_keys_of(p->split_keys, cnt);
        const int nc = (cnt + ck - 1) / ck;
        int32_t *ri = rows + 8 * r;
        ri[0] = len;
        ri[1] = keep;
        ri[2] = b->kv_indptr[r];
        ri[3] = all ? -1 : (int32_t)sel_used;
        ri[4] = all ? -1 : (int32_t)mass_used;
        ri[5] = ck;
        ri[6] = nc;
        ri[7] = (int32_t)parts;
        if (!all) {
            for (int p0 = 0; p0 < len; p0 += kTidalMassChunk, n_mass++) {
                int32_t *it = mitems + 4 * n_mass;
                it[0] = r;
                it[1] = p0;
                it[2] = it[3] = 0;
            }
            sel_used += (int64_t)KH * keep;
            mass_used += (int64_t)KH * attn_tidal_mass_stride(len);
            n_sparse++;
        }
        parts += (int64_t)KH * nc;
        if (mass_used > INT32_MAX) return LC_ERANGE;
    }
    p->off_att_items = p->off_mass_items + 4 * (size_t)n_mass;
    int32_t *aitems = h + p->off_att_items;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < rows[8 * r + 6]; c++, n_att++) {
            int32_t *it = aitems + 4 * n_att;
            it[0] = r;
            it[1] = c;
            it[2] = it[3] = 0;
        }
    p->off_kv_indices = p->off_att_items + 4 * (size_t)n_att;
    if (pages) memcpy(h + p->off_kv_indices, b->kv_indices, sizeof(int32_t) * (size_t)pages);
    memcpy(p->h_rows, rows, sizeof(int32_t) * 8 * (size_t)n);
    size_t used = p->off_kv_indices + round4((size_t)pages);
    if (held) { // the held flags (ids of pages held elsewhere: 0, never read); each row's list base and capacity
        p->off_held = used;
        p->off_lbase = p->off_held + round4((size_t)pages);
        p->off_lcap = p->off_lbase + round4((size_t)n);
        used = p->off_lcap + round4((size_t)n);
        for (int64_t i = 0; i < pages; i++) {
            h[p->off_held + i] = held[i] != 0;
            if (!held[i]) h[p->off_kv_indices + i] = 0;
        }
        int64_t lb = 0;
        for (int r = 0; r < n; r++) {
            const int len = b->kv_len[r], cnt = budget[r] < len ? budget[r] + 1 : len;
            h[p->off_lbase + r] = (int32_t)lb;
            h[p->off_lcap + r] = cnt;
            lb += (int64_t)KH * cnt;
        }
    }
    p->n_mass_floats = (size_t)mass_used;
    if (used > 0) {
        cudaStream_t st = (cudaStream_t)stream;
        CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena, h, used * sizeof(int32_t), cudaMemcpyHostToDevice, st));
        CUDA_CHECK_RET(cudaEventRecord(p->uploaded, st));
        p->upload_pending = 1;
    }
    p->n_rows = n;
    p->n_sparse = n_sparse;
    p->n_mass_items = (int)n_mass;
    p->n_att_items = (int)n_att;
    p->ws_mass = round256((size_t)mass_used * sizeof(float));
    p->ws_att_o = round256((size_t)parts * G * D * sizeof(float));
    p->ws_att = p->ws_att_o + round256((size_t)parts * G * sizeof(float));
    p->ws_all = p->ws_mass > p->ws_att ? p->ws_mass : p->ws_att;
    p->planned = 1;
    if (workspace_bytes) *workspace_bytes = p->ws_all;
    return 0;
}

static int check_ws(const attn_tidal_plan_t *p, const void *ws, size_t bytes) {
    if (bytes < p->ws_all || (p->ws_all > 0 && !ws) || ((uintptr_t)ws & 15)) return LC_EINVAL;
    return 0;
}

extern "C" int attn_tidal_plan(attn_tidal_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget, void *stream,
                               size_t *workspace_bytes) {
    return tidal_plan(p, b, budget, nullptr, stream, workspace_bytes);
}

extern "C" int attn_tidal_dist_plan(attn_tidal_plan_t *p, const attn_cuda_batch_t *b, const int32_t *budget,
                                    const uint8_t *held, void *stream, size_t *workspace_bytes) {
    if (!held) return LC_EINVAL;
    return tidal_plan(p, b, budget, held, stream, workspace_bytes);
}

static int tidal_select(attn_tidal_plan_t *p, const attn_tidal_select_args_t *a, attn_cuda_sum_fn sum, void *ctx,
                        void *stream) {
    if (!p || !a || !p->planned || !a->q || !a->k || !a->lse || p->dist != (sum != nullptr)) return LC_EINVAL;
    int rc = check_ws(p, a->workspace, a->workspace_bytes);
    if (rc) return rc;
    if (p->n_sparse > 0) {
        cudaStream_t st = (cudaStream_t)stream;
        const int KH = p->shape.n_kv_heads;
        const int4 *rows = reinterpret_cast<const int4 *>(p->d_arena + p->off_rows);
        CUDA_CHECK_RET(cudaMemsetAsync(p->d_hist, 0, (size_t)p->n_rows * KH * 256 * sizeof(unsigned), st));
        TidalMassParams mp;
        mp.rows = rows;
        mp.items = reinterpret_cast<const int4 *>(p->d_arena + p->off_mass_items);
        mp.kv_indices = p->d_arena + p->off_kv_indices;
        mp.q = static_cast<const __nv_bfloat16 *>(a->q);
        mp.k = static_cast<const __nv_bfloat16 *>(a->k);
        mp.lse = a->lse;
        mp.mass = static_cast<float *>(a->workspace);
        mp.hist = p->d_hist;
        mp.n_heads = p->shape.n_heads;
        mp.n_kv_heads = KH;
        mp.group = p->group;
        mp.page_size = p->shape.page_size;
        mp.scale = p->shape.scale;
        mp.held = p->dist ? p->d_arena + p->off_held : nullptr;
        rc = attn_tidal_mass_launch(p->shape.head_dim, mp, p->n_mass_items, KH, st);
        if (rc) return rc;
        if (p->dist) { // every position's mass and the histograms' counts, each from the rank holding it
            const size_t nh = (size_t)p->n_rows * KH * 256;
            if ((rc = sum(ctx, mp.mass, p->n_mass_floats)) ||
                (rc = attn_tidal_hist_cast(p->d_hist, p->d_histf, nh, 1, st)) || (rc = sum(ctx, p->d_histf, nh)) ||
                (rc = attn_tidal_hist_cast(p->d_hist, p->d_histf, nh, 0, st)))
                return rc;
        }
        TidalSelectParams sp;
        sp.rows = rows;
        sp.mass = mp.mass;
        sp.hist = p->d_hist;
        sp.sel = p->d_sel;
        sp.n_kv_heads = KH;
        if ((rc = attn_tidal_select_launch(sp, p->n_rows, KH, st))) return rc;
    }
    if (p->dist && p->n_rows > 0) { // this rank's share of every list
        TidalCompactParams cp;
        cp.rows = reinterpret_cast<const int4 *>(p->d_arena + p->off_rows);
        cp.sel = p->d_sel;
        cp.held = p->d_arena + p->off_held;
        cp.lbase = p->d_arena + p->off_lbase;
        cp.lcap = p->d_arena + p->off_lcap;
        cp.list = p->d_list;
        cp.count = p->d_count;
        cp.n_kv_heads = p->shape.n_kv_heads;
        cp.page_size = p->shape.page_size;
        if ((rc = attn_tidal_compact_launch(cp, p->n_rows, p->shape.n_kv_heads, (cudaStream_t)stream))) return rc;
    }
    p->selected = 1;
    return 0;
}

extern "C" int attn_tidal_select(attn_tidal_plan_t *p, const attn_tidal_select_args_t *a, void *stream) {
    return tidal_select(p, a, nullptr, nullptr, stream);
}

extern "C" int attn_tidal_dist_select(attn_tidal_plan_t *p, const attn_tidal_select_args_t *a, attn_cuda_sum_fn sum,
                                      void *ctx, void *stream) {
    if (!sum) return LC_EINVAL;
    return tidal_select(p, a, sum, ctx, stream);
}

extern "C" int attn_tidal_attend(const attn_tidal_plan_t *p, const attn_tidal_attend_args_t *a, void *stream) {
    if (!p || !a || !p->planned || !p->selected) return LC_EINVAL;
    if (!a->q || !a->out || !a->k || !a->v) return LC_EINVAL;
    int rc = check_ws(p, a->workspace, a->workspace_bytes);
    if (rc) return rc;
    if (p->n_rows == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    const int KH = p->shape.n_kv_heads, D = p->shape.head_dim;
    const int4 *rows = reinterpret_cast<const int4 *>(p->d_arena + p->off_rows);
    float *ws_o = static_cast<float *>(a->workspace);
    float *ws_lse = reinterpret_cast<float *>(static_cast<uint8_t *>(a->workspace) + p->ws_att_o);
    TidalAttendParams ap;
    ap.rows = rows;
    ap.items = reinterpret_cast<const int4 *>(p->d_arena + p->off_att_items);
    ap.kv_indices = p->d_arena + p->off_kv_indices;
    ap.sel = p->d_sel;
    ap.q = static_cast<const __nv_bfloat16 *>(a->q);
    ap.k = static_cast<const __nv_bfloat16 *>(a->k);
    ap.v = static_cast<const __nv_bfloat16 *>(a->v);
    ap.ws_o = ws_o;
    ap.ws_lse = ws_lse;
    ap.n_heads = p->shape.n_heads;
    ap.n_kv_heads = KH;
    ap.group = p->group;
    ap.page_size = p->shape.page_size;
    ap.scale_log2 = p->shape.scale * 1.4426950408889634f;
    ap.list = p->dist ? p->d_list : nullptr;
    ap.list_base = p->dist ? p->d_arena + p->off_lbase : nullptr;
    ap.list_cap = p->dist ? p->d_arena + p->off_lcap : nullptr;
    ap.count = p->dist ? p->d_count : nullptr;
    rc = attn_tidal_attend_launch(D, ap, p->n_att_items, KH, st);
    if (rc) return rc;
    TidalMergeParams mp;
    mp.rows = rows;
    mp.ws_o = ws_o;
    mp.ws_lse = ws_lse;
    mp.out = static_cast<__nv_bfloat16 *>(a->out);
    mp.lse = a->lse;
    mp.n_heads = p->shape.n_heads;
    mp.n_kv_heads = KH;
    mp.group = p->group;
    mp.D = D;
    return attn_tidal_merge_launch(mp, p->n_rows, KH, st);
}

extern "C" int attn_tidal_selected(const attn_tidal_plan_t *p, int row, int kv_head, int32_t *pos, int cap,
                                   void *stream) {
    if (!p || !p->planned || !p->selected || row < 0 || row >= p->n_rows || kv_head < 0 ||
        kv_head >= p->shape.n_kv_heads || !pos)
        return LC_EINVAL;
    const int32_t *ri = p->h_rows + 8 * (size_t)row;
    const int keep = ri[1];
    if (cap < keep) return LC_ERANGE;
    if (ri[3] < 0) { // every position
        for (int i = 0; i < keep; i++) pos[i] = i;
        return keep;
    }
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    const size_t o = (size_t)ri[3] + (size_t)kv_head * keep;
    CUDA_CHECK_RET(cudaMemcpy(pos, p->d_sel + o, sizeof(int32_t) * keep, cudaMemcpyDeviceToHost));
    return keep;
}

extern "C" int attn_tidal_count(const attn_tidal_plan_t *p, int row) {
    if (!p || !p->planned || row < 0 || row >= p->n_rows) return -1;
    return p->h_rows[8 * (size_t)row + 1];
}
