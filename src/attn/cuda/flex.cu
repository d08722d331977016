// FlexPrefill's selection on the GPU, host side: the workspace carved at
// create, the plan (checks, the selecting sequences' page tables in one
// pinned upload) and the entry points of flex_cuda.h. The kernels are
// flex_kern.cu's (the CPU reference is src/attn/cpu/flex.c).
//
// A step's selecting sequences run one after another over one workspace
// sized at create: each sequence's kernels are launched with the sequence's
// scalars in FlexParams, so a sequence's mask depends on nothing but its own
// inputs.
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cuda/flex.cuh"
#include "attn/cuda/flex_cuda.h"
#include "ops/cuda/cuda_check.cuh"

namespace {

constexpr int kB = kFlexBlock;

size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

int check_shape(const attn_cuda_shape_t *sh) {
    if (!sh || sh->n_heads <= 0 || sh->n_kv_heads <= 0 || sh->n_heads % sh->n_kv_heads != 0 || sh->n_pool_pages <= 0 ||
        !(sh->scale > 0.f) || !isfinite(sh->scale))
        return LC_EINVAL;
    if ((sh->head_dim != 64 && sh->head_dim != 128 && sh->head_dim != 256) ||
        (sh->page_size != 64 && sh->page_size != 128) || sh->n_heads > 65535)
        return LC_EUNSUPPORTED;
    return 0;
}

} // namespace

/* The selecting sequences of the planned step, in batch order. */
struct attn_cuda_flex_seq {
    int n_q, kv_len, qrow0, page_off;
    size_t mask_off;
    attn_cuda_flex_policy_t pol;
};

struct attn_cuda_flex {
    attn_cuda_shape_t shape;
    int max_seqs;
    int64_t max_q_rows, max_kv_len;
    int n_kb_max, n_qb_max;
    size_t pages_cap;
    int32_t *h_pages, *d_pages; // pinned / device: the selecting sequences' page tables (pages_cap), then a
                                // distributed plan's held tiles (n_kb_max) and query block rows (n_qb_max)
    int dist, n_tiles;          // the plan is attn_cuda_flex_dist_plan's: its one sequence, n_tiles tiles held
    cudaEvent_t uploaded;
    int upload_pending;
    struct attn_cuda_flex_seq *seqs; // (max_seqs)
    int n_sel, planned, last_small;
    void *ws;
    FlexParams base; // workspace views and shape; per-sequence fields filled at select
};

// The prefill kernel's mask layout (attn_cuda.h) is the one written here.
extern "C" size_t attn_cuda_flex_mask_words(int n_q, int kv_len, int n_heads) {
    return attn_cuda_mask_words(n_q, kv_len, n_heads);
}

extern "C" int attn_cuda_flex_create(const attn_cuda_shape_t *shape, int max_seqs, int64_t max_q_rows,
                                     int64_t max_kv_len, attn_cuda_flex_t **out) {
    if (!out) return LC_EINVAL;
    *out = nullptr;
    int rc = check_shape(shape);
    if (rc) return rc;
    if (max_seqs <= 0 || max_q_rows <= 0 || max_kv_len <= 0) return LC_EINVAL;
    if (max_kv_len > (INT32_MAX / 2) || max_q_rows > INT32_MAX / 2) return LC_ERANGE;
    attn_cuda_flex_t *f = (attn_cuda_flex_t *)calloc(1, sizeof *f);
    if (!f) return LC_ENOMEM;
    f->shape = *shape;
    f->max_seqs = max_seqs;
    f->max_q_rows = max_q_rows;
    f->max_kv_len = max_kv_len;
    const int H = shape->n_heads, KH = shape->n_kv_heads, D = shape->head_dim;
    const size_t N = (size_t)max_kv_len, nkb = (size_t)((max_kv_len - 1) / kB + 1);
    size_t nqb = (size_t)((max_q_rows + 126) / kB + 1);
    if (nqb > nkb) nqb = nkb;
    f->n_kb_max = (int)nkb;
    f->n_qb_max = (int)nqb;
    f->pages_cap = (size_t)max_seqs * ((N + shape->page_size - 1) / shape->page_size);
    FlexParams &b = f->base;
    b.sN = N;
    b.sKB = nkb;
    b.sCells = nqb * nkb;
    b.sQpool = nqb * D;
    // the workspace, carved in 256-byte pieces
    const size_t sizes[] = {
        sizeof(float) * H * D * kB,                           // qs
        sizeof(float) * H * nkb * kB,                         // pm
        sizeof(float) * H * nkb * kB,                         // pl
        sizeof(float) * H * kB,                               // mrow
        sizeof(float) * H * kB,                               // lrow
        sizeof(float) * H * N,                                // vert
        sizeof(float) * H * N,                                // slash
        sizeof(float) * H * nkb * 256,                        // part
        sizeof(float) * KH * nkb * D,                         // kpool
        sizeof(double) * H * nkb,                             // ahat
        sizeof(double) * H * nkb,                             // atrue
        sizeof(float) * H * nqb * D,                          // qpool
        sizeof(float) * H * b.sCells,                         // cells
        sizeof(int32_t) * H * (N + 1),                        // cnt
        sizeof(int32_t) * H * nkb,                            // colsel
        sizeof(int32_t) * H,                                  // branch
        sizeof(uint32_t) * H * 4,                             // thr
        sizeof(float) * kB * H * D,                           // qrep32
        sizeof(uint16_t) * kB * H * D,                        // qrep
        sizeof(unsigned long long) * H * kSelRing * kSelHist, // selhist
        sizeof(unsigned) * H,                                 // selbar
        sizeof(float) * H * nkb,                              // vpool
        sizeof(float) * H * nkb,                              // spool
    };
    const int n_parts = (int)(sizeof sizes / sizeof sizes[0]);
    size_t total = 0;
    for (int i = 0; i < n_parts; i++) total += align256(sizes[i]);
    rc = LC_ENOMEM;
    f->seqs = (struct attn_cuda_flex_seq *)calloc((size_t)max_seqs, sizeof *f->seqs);
    if (!f->seqs) goto fail;
    if (cudaMallocHost((void **)&f->h_pages, sizeof(int32_t) * (f->pages_cap + nkb + nqb)) != cudaSuccess) goto fail;
    if (cudaMalloc((void **)&f->d_pages, sizeof(int32_t) * (f->pages_cap + nkb + nqb)) != cudaSuccess) goto fail;
    if (cudaMalloc(&f->ws, total) != cudaSuccess) goto fail;
    {
        char *w = (char *)f->ws;
        void *parts[sizeof sizes / sizeof sizes[0]];
        for (int i = 0; i < n_parts; i++) {
            parts[i] = w;
            w += align256(sizes[i]);
        }
        b.qs = (float *)parts[0];
        b.pm = (float *)parts[1];
        b.pl = (float *)parts[2];
        b.mrow = (float *)parts[3];
        b.lrow = (float *)parts[4];
        b.vert = (float *)parts[5];
        b.slash = (float *)parts[6];
        b.part = (float *)parts[7];
        b.kpool = (float *)parts[8];
        b.ahat = (double *)parts[9];
        b.atrue = (double *)parts[10];
        b.qpool = (float *)parts[11];
        b.cells = (float *)parts[12];
        b.cnt = (int32_t *)parts[13];
        b.colsel = (int32_t *)parts[14];
        b.branch = (int32_t *)parts[15];
        b.thr = (uint32_t *)parts[16];
        b.qrep32 = (float *)parts[17];
        b.qrep = (__nv_bfloat16 *)parts[18];
        b.selhist = (unsigned long long *)parts[19];
        b.selbar = (unsigned *)parts[20];
        b.vpool = (float *)parts[21];
        b.spool = (float *)parts[22];
    }
    rc = LC_EDEVICE;
    if (cudaEventCreateWithFlags(&f->uploaded, cudaEventDisableTiming) != cudaSuccess) goto fail;
    if (attn_flex_kern_init() != 0) goto fail;
    if ((b.sel_ctas = attn_flex_sel_ctas(H)) < 1) goto fail;
    if ((b.score_ctas[0] = attn_flex_score_ctas(H, D, 0)) < 1 || (b.score_ctas[1] = attn_flex_score_ctas(H, D, 1)) < 1)
        goto fail;
    *out = f;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the last error
    attn_cuda_flex_destroy(f);
    return rc;
}

extern "C" void attn_cuda_flex_destroy(attn_cuda_flex_t *f) {
    if (!f) return;
    if (f->uploaded) {
        cudaEventSynchronize(f->uploaded);
        cudaEventDestroy(f->uploaded);
    }
    cudaFreeHost(f->h_pages);
    cudaFree(f->d_pages);
    cudaFree(f->ws);
    free(f->seqs);
    free(f);
}

static int is_small(const attn_cuda_flex_policy_t *pol, int n_q, int kv_len) {
    const int64_t small = 2 * kB > pol->min_budget ? 2 * kB : pol->min_budget;
    return n_q <= 0 || kv_len <= small; // attn__flex_is_small with block 128
}

extern "C" int attn_cuda_flex_plan(attn_cuda_flex_t *f, const attn_cuda_batch_t *b, const uint8_t *selects,
                                   const attn_cuda_flex_policy_t *pol, const int32_t *mask_off, size_t *mask_words,
                                   void *stream) {
    if (!f || !b || !selects || !pol || !mask_off) return LC_EINVAL;
    f->planned = 0;
    f->dist = 0;
    const int n = b->n_seqs, ps = f->shape.page_size, H = f->shape.n_heads;
    if (n < 0 || !b->q_indptr || !b->kv_indptr || !b->kv_len) return LC_EINVAL;
    if (b->q_indptr[0] != 0 || b->kv_indptr[0] != 0) return LC_EINVAL;
    if (n > 0 && !b->kv_indices && b->kv_indptr[n] > 0) return LC_EINVAL;
    int n_sel = 0;
    size_t pages = 0, words = 0;
    for (int s = 0; s < n; s++) {
        if (!selects[s]) continue;
        const int64_t np = (int64_t)b->kv_indptr[s + 1] - b->kv_indptr[s], len = b->kv_len[s];
        const int64_t nq = (int64_t)b->q_indptr[s + 1] - b->q_indptr[s];
        if (np < 0 || len < 1 || len > np * ps || nq < 0 || nq > len) return LC_EINVAL;
        const attn_cuda_flex_policy_t *pp = &pol[s];
        if (!(pp->gamma > 0.f) || isnan(pp->tau) || pp->min_budget < 0 || pp->max_budget < 0 || pp->prompt_end < 0 ||
            (unsigned)pp->blocks > 1 || mask_off[s] < 0)
            return LC_EINVAL;
        if (len > f->max_kv_len || nq > f->max_q_rows) return LC_ERANGE;
        if (nq == 0) continue; // no rows, no mask
        const int used = (int)((len + ps - 1) / ps);
        for (int j = 0; j < used; j++) {
            const int32_t pg = b->kv_indices[b->kv_indptr[s] + j];
            if (pg < 0 || pg >= f->shape.n_pool_pages) return LC_EINVAL;
        }
        if (n_sel >= f->max_seqs || pages + used > f->pages_cap) return LC_ERANGE;
        struct attn_cuda_flex_seq *q = &f->seqs[n_sel++];
        q->n_q = (int)nq;
        q->kv_len = (int)len;
        q->qrow0 = b->q_indptr[s];
        q->page_off = (int)pages;
        q->mask_off = (size_t)mask_off[s];
        q->pol = *pp;
        pages += used;
        const size_t end = q->mask_off + attn_cuda_flex_mask_words((int)nq, (int)len, H);
        words = end > words ? end : words;
    }
    if (f->upload_pending) { // the pinned table may still feed the previous step's upload
        CUDA_CHECK_RET(cudaEventSynchronize(f->uploaded));
        f->upload_pending = 0;
    }
    for (int s = 0, i = 0; s < n; s++) {
        if (!selects[s] || b->q_indptr[s + 1] == b->q_indptr[s]) continue;
        const struct attn_cuda_flex_seq *q = &f->seqs[i++];
        memcpy(f->h_pages + q->page_off, b->kv_indices + b->kv_indptr[s],
               sizeof(int32_t) * (size_t)((q->kv_len + ps - 1) / ps));
    }
    if (pages) {
        cudaStream_t st = (cudaStream_t)stream;
        CUDA_CHECK_RET(cudaMemcpyAsync(f->d_pages, f->h_pages, sizeof(int32_t) * pages, cudaMemcpyHostToDevice, st));
        CUDA_CHECK_RET(cudaEventRecord(f->uploaded, st));
        f->upload_pending = 1;
    }
    f->n_sel = n_sel;
    f->planned = 1;
    if (mask_words) *mask_words = words;
    return 0;
}

// One sequence's launch parameters.
static FlexParams seq_params(const attn_cuda_flex_t *f, const struct attn_cuda_flex_seq *sq, const void *q,
                             const void *k, uint32_t *mask) {
    const attn_cuda_shape_t &sh = f->shape;
    FlexParams p = f->base;
    p.q = (const __nv_bfloat16 *)q;
    p.k = (const __nv_bfloat16 *)k;
    p.pages = f->d_pages + sq->page_off;
    p.mask = mask + sq->mask_off;
    p.H = sh.n_heads;
    p.KH = sh.n_kv_heads;
    p.G = sh.n_heads / sh.n_kv_heads;
    p.D = sh.head_dim;
    p.ps = sh.page_size;
    p.N = sq->kv_len;
    p.n_q = sq->n_q;
    p.q_pos0 = sq->kv_len - sq->n_q;
    p.qrow0 = sq->qrow0;
    p.R = sq->n_q < kB ? sq->n_q : kB;
    p.P0 = p.N - p.R;
    p.rep_row0 = sq->qrow0 + sq->n_q - p.R;
    p.qb0 = p.q_pos0 / kB;
    p.n_kb = (p.N - 1) / kB + 1;
    p.n_qb = p.n_kb - p.qb0;
    p.words = (p.n_kb + 31) / 32;
    p.scale = sh.scale;
    p.gamma = sq->pol.gamma;
    p.tau = sq->pol.tau;
    p.lo = sq->pol.min_budget;
    p.hi = sq->pol.max_budget;
    p.blocks = sq->pol.blocks;
    p.whole_qb = sq->pol.prompt_end > 0 ? (sq->pol.prompt_end > kB ? sq->pol.prompt_end - kB : 0) / kB : INT_MAX;
    return p;
}

extern "C" int attn_cuda_flex_select(const attn_cuda_flex_t *f, const void *q, const void *k, uint32_t *mask,
                                     void *stream) {
    if (!f || !f->planned || f->dist) return LC_EINVAL;
    if (f->n_sel == 0) return 0;
    if (!q || !k || !mask) return LC_EINVAL;
    cudaStream_t st = (cudaStream_t)stream;
    for (int s = 0; s < f->n_sel; s++) {
        const struct attn_cuda_flex_seq *sq = &f->seqs[s];
        const FlexParams p = seq_params(f, sq, q, k, mask);
        if (is_small(&sq->pol, sq->n_q, sq->kv_len)) {
            const int rc = attn_flex_small_launch(p, st);
            if (rc) return rc;
            continue;
        }
        const int rc = attn_flex_select_launch(p, st);
        if (rc) return rc;
    }
    return 0;
}

/* ---- the selection spread over a ring's ranks --------------------------------------------- */
extern "C" int attn_cuda_flex_dist_plan(attn_cuda_flex_t *f, const attn_cuda_flex_dist_seq_t *d, size_t *mask_words,
                                        void *stream) {
    if (!f || !d || !d->pages || !d->held || !d->qrows) return LC_EINVAL;
    f->planned = 0;
    f->dist = 0;
    const int ps = f->shape.page_size, n_q = d->n_q, len = d->kv_len;
    const attn_cuda_flex_policy_t *pp = &d->pol;
    if (n_q < 1 || len < n_q || !(pp->gamma > 0.f) || isnan(pp->tau) || pp->min_budget < 0 || pp->max_budget < 0 ||
        pp->prompt_end < 0 || (unsigned)pp->blocks > 1)
        return LC_EINVAL;
    if (len > f->max_kv_len || n_q > f->max_q_rows || f->max_seqs < 1) return LC_ERANGE;
    const int n_kb = (len - 1) / kB + 1, qb0 = (len - n_q) / kB, n_qb = n_kb - qb0, used = (len + ps - 1) / ps;
    if ((size_t)used > f->pages_cap || n_qb > f->n_qb_max) return LC_ERANGE;
    if (f->upload_pending) { // the pinned table may still feed the previous step's upload
        CUDA_CHECK_RET(cudaEventSynchronize(f->uploaded));
        f->upload_pending = 0;
    }
    int32_t *tiles = f->h_pages + f->pages_cap, *qrows = tiles + f->n_kb_max;
    int nt = 0;
    for (int kb = 0; kb < n_kb; kb++) {
        if (d->held[kb] > 1) return LC_EINVAL;
        if (d->held[kb]) tiles[nt++] = kb;
        if (kb >= qb0 && (d->qrows[kb - qb0] >= 0) != (d->held[kb] != 0)) return LC_EINVAL; // rows where held
    }
    for (int j = 0; j < used; j++) {
        const int32_t pg = d->pages[j];
        if (d->held[j * ps / kB] && (pg < 0 || pg >= f->shape.n_pool_pages)) return LC_EINVAL;
        f->h_pages[j] = d->held[j * ps / kB] ? pg : 0;
    }
    memcpy(qrows, d->qrows, sizeof(int32_t) * (size_t)n_qb);
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(f->d_pages, f->h_pages, sizeof(int32_t) * used, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaMemcpyAsync(f->d_pages + f->pages_cap, tiles, sizeof(int32_t) * (size_t)(f->n_kb_max + n_qb),
                                   cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(f->uploaded, st));
    f->upload_pending = 1;
    struct attn_cuda_flex_seq *q = &f->seqs[0];
    q->n_q = n_q;
    q->kv_len = len;
    q->qrow0 = 0;
    q->page_off = 0;
    q->mask_off = 0;
    q->pol = *pp;
    f->n_sel = 1;
    f->n_tiles = nt;
    f->dist = 1;
    f->planned = 1;
    if (mask_words) *mask_words = attn_cuda_flex_mask_words(n_q, len, f->shape.n_heads);
    return 0;
}

extern "C" int attn_cuda_flex_dist_select(const attn_cuda_flex_t *f, const void *q, const void *k, uint32_t *mask,
                                          attn_cuda_sum_fn sum, void *ctx, void *stream) {
    if (!f || !f->planned || !f->dist || !k || !mask || !sum) return LC_EINVAL;
    const struct attn_cuda_flex_seq *sq = &f->seqs[0];
    cudaStream_t st = (cudaStream_t)stream;
    FlexParams p = seq_params(f, sq, q, k, mask);
    if (is_small(&sq->pol, sq->n_q, sq->kv_len)) return attn_flex_small_launch(p, st); // no sums: the same everywhere
    const int H = p.H, KH = p.KH, D = p.D;
    p.tiles = f->d_pages + f->pages_cap;
    p.n_tiles = f->n_tiles;
    p.qrows = p.tiles + f->n_kb_max;
    p.qown = (const __nv_bfloat16 *)q;
    p.q = p.qrep;
    p.rep_row0 = 0;
    // the spans the sums cover (every entry not held stays 0)
    const size_t n_rep = (size_t)p.R * H * D, n_ml = (size_t)H * p.n_kb * kB, n_part = (size_t)H * p.n_kb * 256;
    const size_t n_vert = (size_t)(H - 1) * p.sN + p.N, n_kpool = ((size_t)(KH - 1) * p.sKB + p.n_kb) * D;
    const size_t n_qpool = (size_t)(H - 1) * p.sQpool + (size_t)p.n_qb * D;
    int rc;
    CUDA_CHECK_RET(cudaMemsetAsync(p.pm, 0, sizeof(float) * n_ml, st));
    CUDA_CHECK_RET(cudaMemsetAsync(p.pl, 0, sizeof(float) * n_ml, st));
    CUDA_CHECK_RET(cudaMemsetAsync(p.vert, 0, sizeof(float) * n_vert, st));
    CUDA_CHECK_RET(cudaMemsetAsync(p.part, 0, sizeof(float) * n_part, st));
    CUDA_CHECK_RET(cudaMemsetAsync(p.kpool, 0, sizeof(float) * n_kpool, st));
    CUDA_CHECK_RET(cudaMemsetAsync(p.qpool, 0, sizeof(float) * n_qpool, st));
    if ((rc = attn_flex_dist_launch(p, 0, st)) || (rc = sum(ctx, p.qrep32, n_rep))) return rc;
    if ((rc = attn_flex_dist_launch(p, 1, st)) || (rc = sum(ctx, p.pm, n_ml)) || (rc = sum(ctx, p.pl, n_ml))) return rc;
    if ((rc = attn_flex_dist_launch(p, 2, st)) || (rc = sum(ctx, p.vert, n_vert)) || (rc = sum(ctx, p.part, n_part)) ||
        (rc = sum(ctx, p.kpool, n_kpool)) || (rc = sum(ctx, p.qpool, n_qpool)))
        return rc;
    return attn_flex_dist_launch(p, 3, st);
}

extern "C" int attn_cuda_flex_last_sums(const attn_cuda_flex_t *f, float *vert, float *slash, void *stream) {
    if (!f || !f->planned || !vert || !slash) return LC_EINVAL;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    if (f->n_sel == 0) return LC_EINVAL;
    const struct attn_cuda_flex_seq *sq = &f->seqs[f->n_sel - 1];
    if (is_small(&sq->pol, sq->n_q, sq->kv_len)) return LC_EINVAL;
    const size_t N = (size_t)sq->kv_len;
    const int H = f->shape.n_heads;
    CUDA_CHECK_RET(cudaMemcpy2D(vert, N * sizeof(float), f->base.vert, f->base.sN * sizeof(float), N * sizeof(float),
                                (size_t)H, cudaMemcpyDeviceToHost));
    CUDA_CHECK_RET(cudaMemcpy2D(slash, N * sizeof(float), f->base.slash, f->base.sN * sizeof(float), N * sizeof(float),
                                (size_t)H, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int attn_cuda_flex_last_branches(const attn_cuda_flex_t *f, int8_t *branch, void *stream) {
    if (!f || !f->planned || !branch) return LC_EINVAL;
    const int H = f->shape.n_heads;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)stream));
    if (f->n_sel == 0) return LC_EINVAL;
    const struct attn_cuda_flex_seq *sq = &f->seqs[f->n_sel - 1];
    if (is_small(&sq->pol, sq->n_q, sq->kv_len)) {
        memset(branch, -1, (size_t)H);
        return 0;
    }
    int32_t tmp[256];
    for (int h0 = 0; h0 < H; h0 += 256) {
        const int c = H - h0 < 256 ? H - h0 : 256;
        CUDA_CHECK_RET(cudaMemcpy(tmp, f->base.branch + h0, sizeof(int32_t) * c, cudaMemcpyDeviceToHost));
        for (int i = 0; i < c; i++) branch[h0 + i] = (int8_t)tmp[i];
    }
    return 0;
}
