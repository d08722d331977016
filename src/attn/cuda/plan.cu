// Host side of the GPU attention: plan objects, the per-step work lists and
// their upload, the tensor maps, and the public run entry point.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include "attn/cuda/plan.cuh"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kPrefillBM = ATTN_PF_BM, kPrefillBN = ATTN_PF_BN;

size_t round4(size_t n) { return (n + 3) & ~(size_t)3; }

int64_t max_items(const attn_cuda_plan_t *p) {
    if (p->kind == ATTN_CUDA_PREFILL) // query blocks aligned to positions: a partial one at each end
        return (p->lim.max_q_rows / kPrefillBM + 2 * (int64_t)p->lim.max_seqs) * p->shape.n_heads;
    return (int64_t)p->lim.max_seqs * p->shape.n_kv_heads * ATTN_DEC_MAX_SPLITS;
}

// Arena capacity in int32s for the plan's limits (each section 4-aligned).
size_t arena_capacity(const attn_cuda_plan_t *p) {
    const size_t s = (size_t)p->lim.max_seqs;
    return round4(s + 1) * 2 + round4(s) + 4 * s + 4 * (size_t)max_items(p) + round4((size_t)p->lim.max_pages);
}

struct PrefillItem {
    int32_t v[4]; // sequence, first row, head, KV tiles (the dense order's first key)
};

// The CTAs' launch order (results do not depend on it). Dense tiles: the
// most KV tiles first (the tail), then sequence, row, head, so that the CTAs
// running at once (a few query blocks, every head) walk the same KV tiles in
// step and find them in L2. Block-sparse tiles come first, by sequence, then
// head, then rows from the last: the CTAs running at once are then one
// head's query blocks, which share its vertical columns and most of its
// diagonals' blocks, where one query block's heads pick apart (32 heads,
// d 128, 128K: the block-sparse kernel went from 0.73-0.86 of the dense
// kernel's speed per computed block to 0.95-1.01; docs/benchmarks.md).
bool dense_item_before(const PrefillItem &a, const PrefillItem &b) {
    if (a.v[3] != b.v[3]) return a.v[3] > b.v[3];
    for (int i = 0; i < 3; i++)
        if (a.v[i] != b.v[i]) return a.v[i] < b.v[i];
    return false;
}

// Decode chunk of a sequence: at least split_keys keys, at most max_splits
// chunks, a multiple of the 64-key stage. Depends on kv_len and the plan's
// constants alone, never on the batch.
int decode_chunk_keys(int split_keys, int max_splits, int kv_len) {
    int per = (kv_len + max_splits - 1) / max_splits;
    per = (per + ATTN_KV_BOX - 1) / ATTN_KV_BOX * ATTN_KV_BOX;
    return per > split_keys ? per : split_keys;
}

int check_batch(const attn_cuda_plan_t *p, const attn_cuda_batch_t *b) {
    const int n = b->n_seqs;
    if (n < 0 || !b->kv_indptr || !b->kv_len || (n > 0 && !b->kv_indices && b->kv_indptr[n] > 0)) return LC_EINVAL;
    if (n > p->lim.max_seqs) return LC_ERANGE;
    if (p->kind == ATTN_CUDA_PREFILL ? !b->q_indptr : b->q_pos0 != nullptr) return LC_EINVAL;
    if (b->window < 0) return LC_EINVAL;
    if (b->window > 0 && b->mask_off)
        for (int s = 0; s < n; s++)
            if (b->mask_off[s] >= 0) return LC_EINVAL; // a window is dense
    if (b->kv_indptr[0] != 0 || (p->kind == ATTN_CUDA_PREFILL && b->q_indptr[0] != 0)) return LC_EINVAL;
    const int ps = p->shape.page_size;
    for (int s = 0; s < n; s++) {
        const int64_t np = (int64_t)b->kv_indptr[s + 1] - b->kv_indptr[s];
        const int64_t len = b->kv_len[s];
        if (np < 0 || len < 1 || len > np * ps) return LC_EINVAL;
        if (p->kind == ATTN_CUDA_PREFILL) {
            const int64_t nq = (int64_t)b->q_indptr[s + 1] - b->q_indptr[s];
            if (nq < 0 || (b->mask_off && b->mask_off[s] < -1)) return LC_EINVAL;
            if (!b->q_pos0 && nq > len) return LC_EINVAL;
            // An explicit query position: any rows at or past it (the kernels
            // index positions in int32).
            if (b->q_pos0 && (b->q_pos0[s] < 0 || (int64_t)b->q_pos0[s] + nq > INT32_MAX)) return LC_EINVAL;
        }
    }
    const int64_t pages = b->kv_indptr[n];
    if (pages > p->lim.max_pages) return LC_ERANGE;
    if (p->kind == ATTN_CUDA_PREFILL && b->q_indptr[n] > p->lim.max_q_rows) return LC_ERANGE;
    for (int64_t i = 0; i < pages; i++)
        if (b->kv_indices[i] < 0 || b->kv_indices[i] >= p->shape.n_pool_pages) return LC_EINVAL;
    return 0;
}

} // namespace

int attn_cuda_map_kv(const attn_cuda_plan_t *p, const void *base, CUtensorMap *map) {
    const attn_cuda_shape_t *sh = &p->shape;
    cuuint64_t dims[2] = {(cuuint64_t)sh->head_dim, (cuuint64_t)(sh->n_pool_pages * sh->n_kv_heads * sh->page_size)};
    cuuint64_t strides[1] = {(cuuint64_t)sh->head_dim * 2};
    cuuint32_t box[2] = {64, ATTN_KV_BOX}, estr[2] = {1, 1};
    CUresult r = p->encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void *>(base), dims, strides, box, estr,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        lc_log(LC_LOG_ERROR, "attn_cuda: encoding the KV tensor map failed (CUresult %d)", (int)r);
        return LC_EDEVICE;
    }
    return 0;
}

int attn_cuda_map_q(const attn_cuda_plan_t *p, const void *q, CUtensorMap *map) {
    const attn_cuda_shape_t *sh = &p->shape;
    cuuint64_t dims[3] = {(cuuint64_t)sh->head_dim, (cuuint64_t)sh->n_heads, (cuuint64_t)p->n_rows};
    cuuint64_t strides[2] = {(cuuint64_t)sh->head_dim * 2, (cuuint64_t)sh->head_dim * 2 * sh->n_heads};
    cuuint32_t box[3] = {64, 1, ATTN_PF_BM}, estr[3] = {1, 1, 1};
    CUresult r = p->encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void *>(q), dims, strides, box, estr,
                           CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                           CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        lc_log(LC_LOG_ERROR, "attn_cuda: encoding the query tensor map failed (CUresult %d)", (int)r);
        return LC_EDEVICE;
    }
    return 0;
}

extern "C" int attn_cuda_plan_create(const attn_cuda_shape_t *shape, attn_cuda_kind_t kind,
                                     const attn_cuda_limits_t *lim, attn_cuda_plan_t **out) {
    if (!shape || !lim || !out) return LC_EINVAL;
    *out = nullptr;
    if (kind != ATTN_CUDA_PREFILL && kind != ATTN_CUDA_DECODE) return LC_EINVAL;
    if (shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->n_heads % shape->n_kv_heads != 0 ||
        shape->n_pool_pages <= 0 || !(shape->scale > 0.f) || !isfinite(shape->scale))
        return LC_EINVAL;
    if (lim->max_seqs <= 0 || lim->max_pages <= 0 || (kind == ATTN_CUDA_PREFILL && lim->max_q_rows <= 0) ||
        lim->split_keys < 0 || lim->split_keys % ATTN_KV_BOX != 0 || lim->max_pages > INT32_MAX ||
        lim->max_q_rows > INT32_MAX)
        return LC_EINVAL;
    if ((shape->head_dim != 64 && shape->head_dim != 128 && shape->head_dim != 256) ||
        (shape->page_size != 64 && shape->page_size != 128))
        return LC_EUNSUPPORTED;
    if (kind == ATTN_CUDA_DECODE && shape->n_heads / shape->n_kv_heads > 16) return LC_EUNSUPPORTED;
    // Pool rows are addressed with 32-bit TMA coordinates.
    if (shape->n_pool_pages * shape->n_kv_heads * (int64_t)shape->page_size > INT32_MAX) return LC_EUNSUPPORTED;

    int dev, major, minor;
    CUDA_CHECK_RET(cudaGetDevice(&dev));
    CUDA_CHECK_RET(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    CUDA_CHECK_RET(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    // Prefill is built for sm_90a only (wgmma); decode needs sm_90's TMA.
    if (major < 9 || (kind == ATTN_CUDA_PREFILL && (major != 9 || minor != 0))) {
        lc_log(LC_LOG_ERROR, "attn_cuda: the %s kernel needs an sm_90 GPU (this one is sm_%d%d)",
               kind == ATTN_CUDA_PREFILL ? "prefill" : "decode", major, minor);
        return LC_EUNSUPPORTED;
    }

    attn_cuda_plan_t *p = (attn_cuda_plan_t *)calloc(1, sizeof *p);
    if (!p) return LC_ENOMEM;
    int rc = LC_EDEVICE;
    void *fn = nullptr;
    cudaDriverEntryPointQueryResult qres;
    p->shape = *shape;
    p->kind = kind;
    p->lim = *lim;
    p->group = shape->n_heads / shape->n_kv_heads;
    p->split_keys = lim->split_keys ? lim->split_keys : ATTN_DEC_SPLIT_KEYS;
    {
        // One long sequence's chunks fill one wave of the GPU (two decode CTAs
        // per SM) over its kv heads: a fuller last wave than a fixed 64 chunks
        // and longer pipelines per CTA. LACUNA_ATTN_DEC_SPLITS overrides it
        // (to measure). A property of the GPU and the model, not the batch.
        int sms = 0;
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        int ms = 2 * sms / shape->n_kv_heads;
        const char *e = getenv("LACUNA_ATTN_DEC_SPLITS");
        if (e && atoi(e) > 0) ms = atoi(e);
        p->max_splits = ms < 1 ? 1 : ms > ATTN_DEC_MAX_SPLITS ? ATTN_DEC_MAX_SPLITS : ms;
    }
    p->arena_ints = arena_capacity(p);
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &qres) !=
            cudaSuccess ||
        qres != cudaDriverEntryPointSuccess || !fn) {
        lc_log(LC_LOG_ERROR, "attn_cuda: the driver has no cuTensorMapEncodeTiled");
        goto fail;
    }
    p->encode = (attn_encode_tiled_fn)fn;
    if ((rc = kind == ATTN_CUDA_PREFILL ? attn_cuda_prefill_init() : attn_cuda_decode_init())) goto fail;
    if (kind == ATTN_CUDA_PREFILL && (rc = attn_cuda_prefill_mma_init())) goto fail;
    rc = LC_ENOMEM;
    if (cudaMallocHost((void **)&p->h_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&p->d_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    if (kind == ATTN_CUDA_DECODE) {
        size_t n = (size_t)lim->max_seqs * shape->n_kv_heads * sizeof(int);
        if (cudaMalloc((void **)&p->d_counters, n) != cudaSuccess) goto fail;
        rc = LC_EDEVICE;
        if (cudaMemset(p->d_counters, 0, n) != cudaSuccess) goto fail;
    }
    rc = LC_EDEVICE;
    if (cudaEventCreateWithFlags(&p->uploaded, cudaEventDisableTiming) != cudaSuccess) goto fail;
    *out = p;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the sticky-free last error
    attn_cuda_plan_destroy(p);
    return rc;
}

extern "C" void attn_cuda_plan_destroy(attn_cuda_plan_t *p) {
    if (!p) return;
    if (p->uploaded) {
        cudaEventSynchronize(p->uploaded);
        cudaEventDestroy(p->uploaded);
    }
    cudaFreeHost(p->h_arena);
    cudaFree(p->d_arena);
    cudaFree(p->d_counters);
    free(p);
}

extern "C" int attn_cuda_plan(attn_cuda_plan_t *p, const attn_cuda_batch_t *b, void *stream, size_t *workspace_bytes) {
    if (!p || !b) return LC_EINVAL;
    p->planned = 0;
    int rc = check_batch(p, b);
    if (rc) return rc;
    // The pinned arena may still be the source of the previous step's upload.
    if (p->upload_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(p->uploaded));
        p->upload_pending = 0;
    }
    const int n = b->n_seqs;
    int32_t *h = p->h_arena;
    size_t off = 0;
    p->off_q_indptr = off;
    off += round4(n + 1);
    p->off_kv_indptr = off;
    off += round4(n + 1);
    p->off_kv_len = off;
    off += round4(n);
    p->off_seq_info = off;
    off += 4 * (size_t)n;
    p->off_items = off;
    memcpy(h + p->off_kv_indptr, b->kv_indptr, sizeof(int32_t) * (n + 1));
    memcpy(h + p->off_kv_len, b->kv_len, sizeof(int32_t) * n);
    p->n_sparse = 0;
    p->sparse_qpos = 0;
    if (p->kind == ATTN_CUDA_PREFILL) {
        memcpy(h + p->off_q_indptr, b->q_indptr, sizeof(int32_t) * (n + 1));
        memset(h + p->off_seq_info, 0, sizeof(int32_t) * 4 * n);
        for (int s = 0; s < n; s++) {
            const int32_t mo = b->mask_off && b->q_indptr[s + 1] > b->q_indptr[s] ? b->mask_off[s] : -1;
            h[p->off_seq_info + 4 * s] = mo < 0 ? -1 : mo;
            h[p->off_seq_info + 4 * s + 1] =
                b->q_pos0 ? b->q_pos0[s] : b->kv_len[s] - (b->q_indptr[s + 1] - b->q_indptr[s]);
            p->n_sparse += mo >= 0;
            p->sparse_qpos |= mo >= 0 && b->q_pos0;
        }
    } else {
        for (int s = 0; s <= n; s++) h[p->off_q_indptr + s] = s;
    }

    int32_t *items = h + p->off_items;
    int64_t n_items = 0, n_partials = 0;
    if (p->kind == ATTN_CUDA_PREFILL) {
        // Query tiles follow 128-position blocks (the block-sparse masks' query
        // blocks): a chunk on an unaligned prefix starts with a partial tile.
        // A tile visits the KV tiles up to its last row's last visible key.
        for (int s = 0; s < n; s++) {
            const int nq = b->q_indptr[s + 1] - b->q_indptr[s], len = b->kv_len[s];
            const int pos0 = h[p->off_seq_info + 4 * s + 1];
            for (int row0 = 0; row0 < nq;) {
                const int room = kPrefillBM - (pos0 + row0) % kPrefillBM;
                const int rows = nq - row0 < room ? nq - row0 : room;
                const int last = pos0 + row0 + rows - 1 < len - 1 ? pos0 + row0 + rows - 1 : len - 1;
                // with a window, from the tile of the first row's first key
                const int first = b->window > 0 && pos0 + row0 - b->window + 1 > 0 ? pos0 + row0 - b->window + 1 : 0;
                const int tiles = last >= first ? last / kPrefillBN - first / kPrefillBN + 1 : 0;
                for (int hd = 0; hd < p->shape.n_heads; hd++, n_items++) {
                    int32_t *it = items + 4 * n_items;
                    it[0] = s;
                    it[1] = row0;
                    it[2] = hd;
                    it[3] = tiles;
                }
                row0 += rows;
            }
        }
        PrefillItem *pi = reinterpret_cast<PrefillItem *>(items);
        std::sort(pi, pi + n_items, [&](const PrefillItem &a, const PrefillItem &b) {
            const bool sa = h[p->off_seq_info + 4 * a.v[0]] >= 0, sb = h[p->off_seq_info + 4 * b.v[0]] >= 0;
            if (sa != sb) return sa;
            if (!sa) return dense_item_before(a, b);
            if (a.v[0] != b.v[0]) return a.v[0] < b.v[0];
            if (a.v[2] != b.v[2]) return a.v[2] < b.v[2];
            return a.v[1] > b.v[1];
        });
        p->n_rows = b->q_indptr[n];
    } else {
        // Sequences with larger chunks (the long ones) first; within, (kv head, chunk) order.
        int32_t *info = h + p->off_seq_info;
        for (int s = 0; s < n; s++) {
            // with a window, the chunks start at the stage of its first key
            const int lo = b->window > 0 && b->kv_len[s] > b->window ? b->kv_len[s] - b->window : 0;
            const int base = lo / ATTN_KV_BOX * ATTN_KV_BOX, keys = b->kv_len[s] - base;
            const int ck = decode_chunk_keys(p->split_keys, p->max_splits, keys);
            const int nc = (keys + ck - 1) / ck;
            info[4 * s] = ck;
            info[4 * s + 1] = nc;
            info[4 * s + 2] = nc > 1 ? (int32_t)n_partials : 0;
            info[4 * s + 3] = base;
            if (nc > 1) n_partials += (int64_t)nc * p->shape.n_kv_heads;
        }
        if (n_partials > INT32_MAX) return LC_ERANGE;
        int max_ck = 0;
        for (int s = 0; s < n; s++) max_ck = info[4 * s] > max_ck ? info[4 * s] : max_ck;
        // Few distinct chunk sizes: one pass per size, largest first (no sort per step).
        for (int ck = max_ck; ck > 0;) {
            int next = 0;
            for (int s = 0; s < n; s++) {
                if (info[4 * s] < ck && info[4 * s] > next) next = info[4 * s];
                if (info[4 * s] != ck) continue;
                for (int kh = 0; kh < p->shape.n_kv_heads; kh++)
                    for (int c = 0; c < info[4 * s + 1]; c++, n_items++) {
                        int32_t *it = items + 4 * n_items;
                        it[0] = s;
                        it[1] = kh;
                        it[2] = c;
                        it[3] = ck;
                    }
            }
            ck = next;
        }
        p->n_rows = n;
    }
    if (n_items > INT32_MAX) return LC_ERANGE;
    off += 4 * (size_t)n_items;
    p->off_kv_indices = off;
    const size_t pages = (size_t)b->kv_indptr[n];
    if (pages) memcpy(h + off, b->kv_indices, sizeof(int32_t) * pages);
    off += round4(pages);

    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena, h, off * sizeof(int32_t), cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->uploaded, st));
    p->upload_pending = 1;
    p->n_seqs = n;
    p->window = b->window;
    p->n_items = (int)n_items;
    p->n_partials = n_partials;
    p->ws_bytes = (size_t)n_partials * p->group * (p->shape.head_dim + 1) * sizeof(float);
    p->planned = 1;
    if (workspace_bytes) *workspace_bytes = p->ws_bytes;
    return 0;
}

extern "C" size_t attn_cuda_mask_words(int n_q, int kv_len, int n_heads) {
    if (n_q <= 0 || kv_len < n_q || n_heads <= 0) return 0;
    const int qb0 = (kv_len - n_q) / kPrefillBN, n_kb = (kv_len - 1) / kPrefillBN + 1;
    return (size_t)n_heads * (n_kb - qb0) * ((n_kb + 31) / 32);
}

extern "C" int attn_cuda_mask_pairs(const attn_cuda_plan_t *p, const uint32_t *block_mask, unsigned long long *pairs,
                                    void *stream) {
    if (!p || !p->planned || p->kind != ATTN_CUDA_PREFILL || !pairs || (p->n_sparse > 0 && !block_mask))
        return LC_EINVAL;
    if (p->sparse_qpos) return LC_EUNSUPPORTED; // the count assumes the default positions
    return attn_cuda_mask_pairs_launch(p, block_mask, pairs, (cudaStream_t)stream);
}

extern "C" int attn_cuda_run(const attn_cuda_plan_t *p, const attn_cuda_args_t *a, void *stream) {
    if (!p || !a || !p->planned) return LC_EINVAL;
    if (p->n_sparse > 0 && !a->block_mask) return LC_EINVAL;
    if (!a->q || !a->out || !a->k || !a->v || a->mask_only < 0 || a->mask_only > 2 ||
        ((a->rowmax || a->mask_only) && p->kind != ATTN_CUDA_PREFILL))
        return LC_EINVAL;
    if (a->workspace_bytes < p->ws_bytes || (p->ws_bytes > 0 && !a->workspace)) return LC_EINVAL;
    if (a->variant < 0 || a->variant >= attn_cuda_variant_count(p)) return LC_EINVAL;
    // TMA needs 16-byte aligned bases; the 4-byte stores need aligned outputs.
    if (((uintptr_t)a->q | (uintptr_t)a->k | (uintptr_t)a->v | (uintptr_t)a->out | (uintptr_t)a->workspace) & 15)
        return LC_EINVAL;
    cudaStream_t st = (cudaStream_t)stream;
    return p->kind == ATTN_CUDA_PREFILL ? attn_cuda_prefill_launch(p, a, st) : attn_cuda_decode_launch(p, a, st);
}

// head_dim 256 has the mma.sync kernel alone (a windowed step at 64 or 128
// dims takes it whatever the variant).
extern "C" int attn_cuda_variant_count(const attn_cuda_plan_t *p) {
    if (!p) return 0;
    if (p->kind == ATTN_CUDA_PREFILL && p->shape.head_dim == 256) return 1;
    return p->kind == ATTN_CUDA_PREFILL ? attn_cuda_prefill_variants() : attn_cuda_decode_variants();
}

extern "C" const char *attn_cuda_variant_name(const attn_cuda_plan_t *p, int variant) {
    if (!p) return NULL;
    if (p->kind == ATTN_CUDA_PREFILL && p->shape.head_dim == 256) return variant == 0 ? "mma.sync" : NULL;
    return p->kind == ATTN_CUDA_PREFILL ? attn_cuda_prefill_variant_name(variant)
                                        : attn_cuda_decode_variant_name(variant);
}
