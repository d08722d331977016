// Context-parallel attention on the GPU kernels (cp_cuda.h): the plan, the
// pass-KV and pass-Q rings of a sharded prompt slice (dense and FlexPrefill;
// AnchorAttention's all-to-alls are ring_cuda_anchor.cu's),
// the timing, and the kernels they add to attn_cuda's: the LSE merges of
// ring steps and FlexPrefill's step masks. The sharded decode is
// ring_cuda_decode.cu's; ring_cuda.cuh has what both share.
#include "attn/cp/ring_cuda.cuh"

namespace {

// ---- kernels ----------------------------------------------------------------------------------

// One ring step's partials into the rows' running output, one warp per (row,
// head), rows [r0, rows) computed this step:
//   lse = log(exp(lse_run) + exp(lse_step)), acc = acc e^(lse_run - lse) + o e^(lse_step - lse)
// The first step sets acc = o (exactly); the last also writes out (bf16) and
// lse for every row. Fixed order, no atomics: the same bits every time.
__global__ void ring_merge_kernel(float *acc, float *run_lse, const __nv_bfloat16 *part_o, const float *part_lse,
                                  int64_t rows, int n_heads, int D, int64_t r0, int first, int last, __nv_bfloat16 *out,
                                  float *lse_out) {
    const int64_t rh = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (rh >= rows * n_heads) return;
    float *a = acc + rh * D;
    float lr = run_lse[rh];
    if (rh / n_heads >= r0) {
        const float lp = part_lse[rh];
        const __nv_bfloat16 *o = part_o + rh * D;
        if (first) {
            lr = lp;
            for (int d = lane; d < D; d += 32) a[d] = __bfloat162float(o[d]);
        } else {
            const float m = fmaxf(lr, lp), l = m + logf(expf(lr - m) + expf(lp - m));
            const float wa = expf(lr - l), wp = expf(lp - l);
            for (int d = lane; d < D; d += 32) a[d] = a[d] * wa + __bfloat162float(o[d]) * wp;
            lr = l;
        }
        __syncwarp();
        if (lane == 0) run_lse[rh] = lr;
    }
    if (last) {
        for (int d = lane; d < D; d += 32) out[rh * D + d] = __float2bfloat16_rn(a[d]);
        if (lse_out && lane == 0) lse_out[rh] = lr;
    }
}


// FlexPrefill: one ring step's masks from the whole one. A descriptor per
// (step, run): its view's query blocks i (global query block ig0 + i of the
// whole mask) against the view's key blocks kb (global block kbmap[kbm + kb]),
// at word offset off, H rows of n_qb x words each (attn_cuda.h's layout).
struct StepMask {
    int32_t off, n_qb, words, ig0, n_kb, kbm;
};

// grid (descriptors, H, most view query blocks), block 32: one lane a word.
__global__ void step_mask_kernel(const uint32_t *whole, int n_qb_w, int words_w, const StepMask *desc,
                                 const int32_t *kbmap, uint32_t *out) {
    const StepMask d = desc[blockIdx.x];
    const int h = blockIdx.y, i = blockIdx.z;
    if (i >= d.n_qb) return;
    const uint32_t *row = whole + ((size_t)h * n_qb_w + d.ig0 + i) * words_w;
    uint32_t *o = out + d.off + ((size_t)h * d.n_qb + i) * d.words;
    for (int w = threadIdx.x; w < d.words; w += 32) {
        uint32_t word = 0;
        for (int b = 0; b < 32 && w * 32 + b < d.n_kb; b++) {
            const int g = kbmap[d.kbm + w * 32 + b];
            word |= ((row[g >> 5] >> (g & 31)) & 1u) << b;
        }
        o[w] = word;
    }
}

// FlexPrefill: the pairs of this rank's query blocks (qbs[0 .. n), global)
// under the whole mask, all heads: every set block below the diagonal whole,
// the diagonal up to each row. Integer sums, so exact in any order.
__global__ void own_pairs_kernel(const uint32_t *whole, int n_qb_w, int words_w, int qb0, int64_t pos0, int64_t end,
                                 const int32_t *qbs, int n, int n_heads, unsigned long long *pairs) {
    unsigned long long acc = 0;
    for (int x = threadIdx.x; x < n * n_heads; x += blockDim.x) {
        const int qb = qbs[x % n], h = x / n;
        const int64_t p0 = (int64_t)qb * 128 > pos0 ? (int64_t)qb * 128 : pos0;
        const int64_t p1 = (int64_t)(qb + 1) * 128 < end ? (int64_t)(qb + 1) * 128 : end;
        const uint32_t *row = whole + ((size_t)h * n_qb_w + (qb - qb0)) * words_w;
        int below = 0;
        for (int w = 0; w < qb / 32; w++) below += __popc(row[w]);
        if (qb & 31) below += __popc(row[qb / 32] & ((1u << (qb & 31)) - 1u));
        acc += (unsigned long long)below * 128 * (p1 - p0) +
               (unsigned long long)((p1 - p0) * (p0 + p1 + 1 - 2 * (int64_t)qb * 128) / 2);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0 && acc) atomicAdd(pairs, acc);
}


} // namespace


extern "C" void cp_cuda_plan_destroy(cp_cuda_plan_t *p) {
    if (!p) return;
    if (p->up_pf) cudaEventSynchronize(p->up_pf), cudaEventDestroy(p->up_pf);
    if (p->up_dec) cudaEventSynchronize(p->up_dec), cudaEventDestroy(p->up_dec);
    for (int i = 0; i < 3 * CP_MAX_RANKS + 2; i++)
        if (p->ev[i]) cudaEventDestroy(p->ev[i]);
    for (int k = 0; k < CP_MAX_RANKS; k++) attn_cuda_plan_destroy(p->steps[k]), attn_cuda_plan_destroy(p->qsteps[k]);
    attn_cuda_plan_destroy(p->dec);
    attn_quest_plan_destroy(p->quest);
    cudaFree(p->quest_ws);
    attn_tidal_plan_destroy(p->tidal);
    cudaFree(p->tidal_ws), cudaFree(p->d_glse);
    free(p->h_held_pages);
    if (p->up_fx) cudaEventSynchronize(p->up_fx), cudaEventDestroy(p->up_fx);
    attn_cuda_flex_destroy(p->flex);
    cp_cuda__anchor_destroy(p);
    cudaFree(p->gmask), cudaFree(p->smask), cudaFree(p->d_fx), cudaFree(p->d_pairs);
    cudaFreeHost(p->h_fx), cudaFreeHost(p->h_pairs);
    free(p->h_held);
    cudaFreeHost(p->h_arena);
    cudaFree(p->d_arena);
    cudaFree(p->pack[0]), cudaFree(p->pack[1]);
    cudaFree(p->part_o), cudaFree(p->part_lse), cudaFree(p->acc), cudaFree(p->run_lse);
    cudaFree(p->qrecv[0]), cudaFree(p->qrecv[1]), cudaFree(p->qpart), cudaFree(p->qpartin);
    cudaFree(p->dec_ws), cudaFree(p->dq_all), cudaFree(p->dq_c), cudaFree(p->dmsg), cudaFree(p->dgath);
    free(p->h_idx);
    free(p->dec_row_owner);
    free(p->h_dec);
    free(p);
}

extern "C" int cp_cuda_plan_create(const attn_cuda_shape_t *shape, const cp_cuda_limits_t *lim, int rank, int n_ranks,
                                   cp_cuda_plan_t **out) {
    if (!shape || !lim || !out || n_ranks < 1 || n_ranks > CP_MAX_RANKS || rank < 0 || rank >= n_ranks)
        return LC_EINVAL;
    *out = nullptr;
    if (lim->flex < 0 || lim->flex > 1 || lim->quest < 0 || lim->quest > 1 || lim->tidal_budget < 0 ||
        lim->max_tokens < 0 || lim->max_rows < 0 || lim->max_pack_pages < 0 || lim->max_decode_seqs < 0 ||
        lim->max_decode_pages < 0 || lim->max_q_rows < 0 || (lim->max_q_rows > 0 && lim->max_tokens == 0) ||
        lim->max_anchor_rows < 0 || lim->max_anchor_rows > lim->max_tokens || lim->anchor_min_local < 0 ||
        lim->anchor_min_local % 128 || (lim->max_tokens == 0 && lim->max_decode_seqs == 0) ||
        lim->max_tokens > INT32_MAX || shape->page_size <= 0 || shape->n_heads <= 0 || shape->head_dim <= 0 ||
        shape->head_dim > kMergeMaxD || shape->n_kv_heads <= 0)
        return LC_EINVAL;
    cp_cuda_plan_t *p = (cp_cuda_plan_t *)calloc(1, sizeof *p);
    if (!p) return LC_ENOMEM;
    int rc = LC_ENOMEM;
    const int H = shape->n_heads, D = shape->head_dim, ps = shape->page_size;
    const int64_t blocks_max = (lim->max_tokens + ps - 1) / ps;
    p->shape = *shape;
    p->lim = *lim;
    p->rank = rank;
    p->n = n_ranks;
    p->page_bytes = (size_t)shape->n_kv_heads * ps * D * 2;
    p->maxp = lim->max_pack_pages ? lim->max_pack_pages : blocks_max;
    if (!p->lim.max_rows) p->lim.max_rows = lim->max_tokens;
    const int64_t max_dec = lim->max_decode_seqs;
    if (!p->lim.max_decode_pages) p->lim.max_decode_pages = max_dec * (blocks_max ? blocks_max : 1);
    p->off_dec_sel = (size_t)p->maxp;
    p->off_dec_cidx = p->off_dec_sel + (size_t)max_dec;
    p->off_dec_own = p->off_dec_cidx + (size_t)n_ranks * max_dec;
    p->off_t_sel = p->off_dec_own + (size_t)max_dec; // every row's query source, then every rank's row of it
    p->off_t_cidx = p->off_t_sel + (size_t)max_dec;
    p->arena_ints = p->off_t_cidx + (size_t)n_ranks * max_dec + 4;
    {
        const size_t scratch = (size_t)CP_RING_MAX_RUNS * p->maxp > (size_t)p->lim.max_decode_pages
                                   ? (size_t)CP_RING_MAX_RUNS * p->maxp
                                   : (size_t)p->lim.max_decode_pages;
        p->h_idx = (int32_t *)malloc(sizeof(int32_t) * (scratch + 1));
        p->dec_row_owner = (int *)malloc(sizeof(int) * (size_t)(max_dec + 1));
        p->h_dec = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * max_dec + 2));
        if (!p->h_idx || !p->dec_row_owner || !p->h_dec) goto fail;
    }
    rc = LC_EDEVICE;
    if (cudaMallocHost((void **)&p->h_arena, p->arena_ints * sizeof(int32_t)) != cudaSuccess) goto fail;
    CP_ALLOC(p->d_arena, p->arena_ints * sizeof(int32_t));
    if (cudaEventCreateWithFlags(&p->up_pf, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&p->up_dec, cudaEventDisableTiming) != cudaSuccess)
        goto fail;
    for (int i = 0; i < 3 * CP_MAX_RANKS + 2; i++)
        if ((i < 3 * n_ranks || i >= 3 * CP_MAX_RANKS) && cudaEventCreate(&p->ev[i]) != cudaSuccess) goto fail;
    if (lim->max_tokens > 0) {
        attn_cuda_shape_t ps_shape = *shape;
        ps_shape.n_pool_pages = p->maxp; // the steps read the packs
        attn_cuda_limits_t al = {CP_RING_MAX_RUNS, p->lim.max_rows, (int64_t)CP_RING_MAX_RUNS * p->maxp, 0};
        for (int k = 0; k < n_ranks; k++)
            if ((rc = attn_cuda_plan_create(&ps_shape, ATTN_CUDA_PREFILL, &al, &p->steps[k]))) goto fail;
        rc = LC_EDEVICE;
        const size_t rows = (size_t)p->lim.max_rows;
        CP_ALLOC(p->pack[0], 2 * (size_t)p->maxp * p->page_bytes);
        CP_ALLOC(p->pack[1], 2 * (size_t)p->maxp * p->page_bytes);
        CP_ALLOC(p->part_o, rows * H * D * 2);
        CP_ALLOC(p->part_lse, rows * H * sizeof(float));
        CP_ALLOC(p->acc, rows * H * D * sizeof(float));
        CP_ALLOC(p->run_lse, rows * H * sizeof(float));
    }
    if (lim->flex && lim->max_tokens > 0) { // FlexPrefill
        if ((rc = attn_cuda_flex_create(shape, 1, lim->max_tokens, lim->max_tokens, &p->flex))) goto fail;
        rc = LC_ENOMEM;
        const int64_t nkb = (lim->max_tokens - 1) / 128 + 1, words = (nkb + 31) / 32;
        const int64_t pack_kb = p->maxp * ps / 128 + 1, pack_words = (pack_kb + 31) / 32;
        p->gmask_cap = (size_t)H * nkb * words;
        p->smask_cap = (size_t)n_ranks * H * (p->lim.max_rows / 128 + CP_RING_MAX_RUNS) * pack_words;
        p->fx_kbmap = (size_t)6 * n_ranks * CP_RING_MAX_RUNS;
        p->fx_qbs = p->fx_kbmap + (size_t)n_ranks * (p->maxp + 1);
        p->fx_ints = p->fx_qbs + (size_t)(p->lim.max_rows / 128 + 2);
        if (!(p->h_held = (int32_t *)malloc(sizeof(int32_t) * (size_t)(2 * nkb + 2)))) goto fail;
        rc = LC_EDEVICE;
        if (cudaMallocHost((void **)&p->h_fx, sizeof(int32_t) * p->fx_ints) != cudaSuccess ||
            cudaMallocHost((void **)&p->h_pairs, sizeof(unsigned long long)) != cudaSuccess ||
            cudaEventCreateWithFlags(&p->up_fx, cudaEventDisableTiming) != cudaSuccess)
            goto fail;
        CP_ALLOC(p->d_fx, sizeof(int32_t) * p->fx_ints);
        CP_ALLOC(p->gmask, sizeof(uint32_t) * p->gmask_cap);
        CP_ALLOC(p->smask, sizeof(uint32_t) * p->smask_cap);
        CP_ALLOC(p->d_pairs, sizeof(unsigned long long));
        if (cudaMemset(p->d_pairs, 0, sizeof(unsigned long long)) != cudaSuccess) goto fail;
    }
    if (lim->max_anchor_rows > 0 && (rc = cp_cuda__anchor_create(p))) goto fail; // AnchorAttention
    if (lim->max_q_rows > 0) {                                                   // pass-Q: the steps read the pool
        attn_cuda_limits_t al = {CP_RING_MAX_RUNS, lim->max_q_rows, (int64_t)CP_RING_MAX_RUNS * p->maxp, 0};
        for (int k = 0; k < n_ranks; k++)
            if ((rc = attn_cuda_plan_create(shape, ATTN_CUDA_PREFILL, &al, &p->qsteps[k]))) goto fail;
        rc = LC_EDEVICE;
        CP_ALLOC(p->qrecv[0], (size_t)lim->max_q_rows * H * D * 2);
        CP_ALLOC(p->qrecv[1], (size_t)lim->max_q_rows * H * D * 2);
        CP_ALLOC(p->qpart, (size_t)n_ranks * q_msg(lim->max_q_rows, H, D));
        CP_ALLOC(p->qpartin, (size_t)n_ranks * q_msg(lim->max_q_rows, H, D));
    }
    if (max_dec > 0) {
        attn_cuda_limits_t al = {(int)max_dec, 0, p->lim.max_decode_pages, 0};
        if ((rc = attn_cuda_plan_create(shape, ATTN_CUDA_DECODE, &al, &p->dec))) goto fail;
        rc = LC_EDEVICE;
        // the split-K workspace of the largest batch (attn_cuda_plan's formula)
        p->dec_ws_cap = (size_t)max_dec * shape->n_kv_heads * ATTN_DEC_MAX_SPLITS * (H / shape->n_kv_heads) * (D + 1) *
                        sizeof(float);
        CP_ALLOC(p->dec_ws, p->dec_ws_cap);
        if (lim->quest) { // every sequence's whole page table on every rank
            const int64_t qpages = max_dec * (blocks_max ? blocks_max : 1);
            attn_cuda_limits_t ql = {(int)max_dec, 0, qpages, 0};
            if ((rc = attn_quest_plan_create(shape, &ql, &p->quest))) goto fail;
            rc = LC_ENOMEM;
            if (!(p->h_held_pages = (uint8_t *)malloc((size_t)qpages))) goto fail;
            rc = LC_EDEVICE;
            p->quest_ws_cap = ((size_t)qpages * shape->n_kv_heads * sizeof(float) + 255) / 256 * 256 + p->dec_ws_cap;
            CP_ALLOC(p->quest_ws, p->quest_ws_cap);
        }
        if (lim->tidal_budget > 0) {
            const int64_t tpages = max_dec * (blocks_max ? blocks_max : 1), KH = shape->n_kv_heads;
            attn_tidal_limits_t tl = {(int)max_dec, tpages, lim->tidal_budget, 0};
            if ((rc = attn_tidal_plan_create(shape, &tl, &p->tidal))) goto fail;
            rc = LC_ENOMEM;
            if (!p->h_held_pages && !(p->h_held_pages = (uint8_t *)malloc((size_t)tpages))) goto fail;
            rc = LC_EDEVICE;
            // its workspace: the masses (positions of every row, 16-byte runs) or the chunks' partials
            const size_t row_keys = (size_t)(blocks_max ? blocks_max : 1) * ps;
            const size_t mass = (size_t)max_dec * KH * ((row_keys + 3) & ~(size_t)3) * sizeof(float);
            const size_t att = (size_t)max_dec * KH * 64 * (H / KH) * (D + 1) * sizeof(float) + 1024;
            p->tidal_ws_cap = mass > att ? mass : att;
            CP_ALLOC(p->tidal_ws, p->tidal_ws_cap);
            CP_ALLOC(p->d_glse, (size_t)max_dec * H * sizeof(float));
        }
        const size_t qrow = (size_t)H * D * 2, msg = (size_t)max_dec * H * (D * 2 + sizeof(float));
        CP_ALLOC(p->dq_all, (size_t)n_ranks * max_dec * qrow);
        CP_ALLOC(p->dq_c, (size_t)max_dec * qrow);
        CP_ALLOC(p->dmsg, msg);
        CP_ALLOC(p->dgath, (size_t)n_ranks * msg);
    }
    *out = p;
    return 0;
fail:
    cudaGetLastError(); // a failed allocation must not linger as the last error
    if (rc == LC_EDEVICE) lc_log(LC_LOG_ERROR, "cp_cuda: cannot allocate rank %d's plan", rank);
    cp_cuda_plan_destroy(p);
    return rc;
}

// ---- prefill ------------------------------------------------------------------------------
// One ring step's batch: the runs (of one rank's rows) whose view of rank
// keys's pack has keys (a suffix of them, cp_ring_map.h), one attn_cuda
// sequence each, over the page ids pages[0 .. view's pages) (at most np) or,
// when pages is NULL, the visiting pack's 0, 1, ...; planned on plan when
// any run sees keys. *row0: the first such run's row (dflt when none),
// *pairs: the step's query-key pairs over all heads.
static int plan_step(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, const cp_ring_run_t *runs, int nr, int keys,
                     const int32_t *pages, int64_t np, attn_cuda_plan_t *plan, int64_t dflt, int64_t *row0,
                     double *pairs, void *stream) {
    const int64_t end = seq->pos0 + seq->n_tok;
    int32_t qi[CP_RING_MAX_RUNS + 1], ki[CP_RING_MAX_RUNS + 1], kl[CP_RING_MAX_RUNS], qp[CP_RING_MAX_RUNS],
        mo[CP_RING_MAX_RUNS];
    int m = 0, first = nr;
    double pr = 0;
    qi[0] = ki[0] = 0;
    for (int i = 0; i < nr; i++) {
        cp_ring_view_t v;
        int rc = cp_ring_view(seq->owner, p->shape.page_size, end, &runs[i], keys, &v);
        if (rc) return rc;
        if (v.kind == CP_PAIR_NONE) {
            if (m > 0) return LC_EINVAL; // not a suffix: an owner table cp_ring_map.h does not describe
            continue;
        }
        if (m == 0) first = i;
        if (pages && v.n_pages > np) return LC_EINVAL;
        qi[m + 1] = qi[m] + (int32_t)runs[i].n;
        ki[m + 1] = ki[m] + v.n_pages;
        if (pages)
            memcpy(p->h_idx + ki[m], pages, sizeof(int32_t) * (size_t)v.n_pages);
        else
            for (int32_t x = 0; x < v.n_pages; x++) p->h_idx[ki[m] + x] = x;
        kl[m] = v.kv_len;
        qp[m] = v.q_pos0;
        for (int64_t row = 0; row < runs[i].n; row++)
            pr += (double)(v.q_pos0 + row + 1 < v.kv_len ? v.q_pos0 + row + 1 : v.kv_len);
        if (p->sparse) { // the run's mask of this step, cut from the whole one by step_mask_kernel
            const int64_t off = runs[i].p0 % 128;
            if (v.kind == CP_PAIR_FULL) {
                qp[m] = v.kv_len + (int32_t)off; // view blocks are whole blocks
                if ((int64_t)qp[m] + runs[i].n > INT32_MAX) return LC_ERANGE;
            } else if (v.q_pos0 % 128 != off) {
                return LC_EINVAL; // a 128-position block split between ranks
            }
            const int n_qb = (int)((qp[m] + runs[i].n - 1) / 128 - qp[m] / 128 + 1), n_kb = (v.kv_len - 1) / 128 + 1;
            const int words = (n_kb + 31) / 32;
            const size_t need = (size_t)p->shape.n_heads * n_qb * words;
            if (p->smask_used + need > p->smask_cap || p->n_desc >= p->n * CP_RING_MAX_RUNS) return LC_ERANGE;
            StepMask *d = (StepMask *)p->h_fx + p->n_desc++;
            *d = {(int32_t)p->smask_used,
                  n_qb,
                  words,
                  (int32_t)(runs[i].p0 / 128 - p->g_qb0),
                  n_kb,
                  (int32_t)(p->fx_kbmap + (size_t)keys * (p->maxp + 1))};
            if (n_qb > p->max_desc_qb) p->max_desc_qb = n_qb;
            mo[m] = (int32_t)p->smask_used;
            p->smask_used += need;
        }
        m++;
    }
    *row0 = m ? runs[first].row0 : dflt;
    *pairs = pr * p->shape.n_heads;
    if (!m) return 0;
    attn_cuda_batch_t bt = {m, qi, ki, p->h_idx, kl, p->sparse ? mo : NULL, qp};
    return attn_cuda_plan(plan, &bt, stream, NULL);
}

// FlexPrefill's plan (pass-KV, after the runs): the distributed selection's
// sequence, every rank's 128-blocks in order (kbmap), this rank's query
// blocks; the steps' descriptors follow in plan_step. The fx arena is
// uploaded once the steps are planned (upload_fx).
static int plan_flex(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    const int ps = p->shape.page_size, n = p->n, r = p->rank;
    const int64_t end = seq->pos0 + seq->n_tok, nb = (end + ps - 1) / ps, nkb = (end - 1) / 128 + 1;
    if (ps > 128 || 128 % ps) return LC_EINVAL;
    const int per = 128 / ps; // pages per 128-block
    for (int64_t b = 0; b < nb; b++)
        if (seq->owner[b] != seq->owner[b - b % per]) return LC_EINVAL; // a block split between ranks
    if (p->up_fx_pending) {
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_fx));
        p->up_fx_pending = 0;
    }
    for (int j = 0; j < n; j++) {
        int32_t *km = p->h_fx + p->fx_kbmap + (size_t)j * (p->maxp + 1);
        int64_t c = 0;
        for (int64_t g = 0; g < nkb; g++)
            if (seq->owner[g * per] == j) km[c++] = (int32_t)g;
        if (c > p->maxp + 1) return LC_ERANGE;
    }
    p->g_qb0 = (int)(seq->pos0 / 128);
    p->g_nqb = (int)(nkb - p->g_qb0);
    p->g_words = (int)((nkb + 31) / 32);
    if ((size_t)p->shape.n_heads * p->g_nqb * p->g_words > p->gmask_cap) return LC_ERANGE;
    uint8_t *held = (uint8_t *)p->h_held;
    int32_t *qrows = p->h_held + (nkb + 3) / 4;
    int32_t *qbs = p->h_fx + p->fx_qbs;
    p->n_qbs = 0;
    for (int64_t g = 0; g < nkb; g++) {
        held[g] = seq->owner[g * per] == r;
        if (g < p->g_qb0) continue;
        qrows[g - p->g_qb0] = -1;
        if (!held[g]) continue;
        const int64_t pos = g * 128 > seq->pos0 ? g * 128 : seq->pos0;
        for (int i = 0; i < p->n_runs; i++)
            if (pos >= p->runs[i].p0 && pos < p->runs[i].p0 + p->runs[i].n)
                qrows[g - p->g_qb0] = (int32_t)(p->runs[i].row0 + pos - p->runs[i].p0);
        if (p->n_qbs >= (int)(p->lim.max_rows / 128 + 2)) return LC_ERANGE;
        qbs[p->n_qbs++] = (int32_t)g;
    }
    attn_cuda_flex_dist_seq_t d = {(int)seq->n_tok, (int)end, seq->blocks, held, qrows, *seq->flex};
    p->n_desc = 0;
    p->max_desc_qb = 0;
    p->smask_used = 0;
    return attn_cuda_flex_dist_plan(p->flex, &d, NULL, stream);
}

static int upload_fx(cp_cuda_plan_t *p, void *stream) {
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->d_fx, p->h_fx, sizeof(int32_t) * p->fx_ints, cudaMemcpyHostToDevice, st));
    CUDA_CHECK_RET(cudaEventRecord(p->up_fx, st));
    p->up_fx_pending = 1;
    return 0;
}

// Pass-Q's steps (the own blocks' page ids at h_arena[0 .. np)) and its
// all-to-all: step k attends the rows of rank visitor(r, k), run by run, to
// this rank's blocks in the pool (the runs that see any: a suffix).
static int plan_pass_q(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, int64_t np, void *stream) {
    const int ps = p->shape.page_size, n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int64_t end = seq->pos0 + seq->n_tok;
    size_t off = 0;
    for (int t = 0; t < n; t++) {
        p->q_soff[t] = off;
        p->q_sbytes[t] = q_msg(p->q_rows[t], H, D);
        off += p->q_sbytes[t];
        p->q_roff[t] = (size_t)t * q_msg(p->rows, H, D);
        p->q_rbytes[t] = q_msg(p->rows, H, D);
        // rank t's first computed row of the own rows: the first own run that sees t's blocks
        p->src.r0[t] = (int32_t)p->rows;
        for (int i = 0; i < p->n_runs; i++) {
            cp_ring_view_t v;
            int rc = cp_ring_view(seq->owner, ps, end, &p->runs[i], t, &v);
            if (rc) return rc;
            if (v.kind != CP_PAIR_NONE) {
                p->src.r0[t] = (int32_t)p->runs[i].row0;
                break;
            }
        }
    }
    for (int k = 0; k < n; k++) {
        const int org = cp_ring_visitor(r, k, n);
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nr = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, org, runs, CP_RING_MAX_RUNS);
        if (nr < 0) return nr;
        int rc = plan_step(p, seq, runs, nr, r, p->h_arena, np, p->qsteps[k], p->q_rows[org], &p->q_row0[k],
                           &p->step_pairs[k], stream);
        if (rc) return rc;
    }
    return 0;
}

extern "C" int cp_cuda_plan_prefill(cp_cuda_plan_t *p, const cp_cuda_seq_t *seq, void *stream) {
    if (!p || !seq || !seq->blocks || !seq->owner || !p->steps[0]) return LC_EINVAL;
    p->pf_planned = 0;
    const int ps = p->shape.page_size, n = p->n, r = p->rank;
    const int64_t end = seq->pos0 + seq->n_tok;
    if (seq->pos0 < 0 || seq->n_tok < 1) return LC_EINVAL;
    if (end > p->lim.max_tokens) return LC_ERANGE;
    const int64_t nb = (end + ps - 1) / ps;
    for (int64_t b = 0; b < nb; b++)
        if (seq->owner[b] >= n) return LC_EINVAL;
    int nr = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, r, p->runs, CP_RING_MAX_RUNS);
    if (nr < 0) return nr;
    p->n_runs = nr;
    p->rows = nr ? p->runs[nr - 1].row0 + p->runs[nr - 1].n : 0;
    if (p->rows > p->lim.max_rows) return LC_ERANGE;
    for (int j = 0; j < n; j++)
        if ((p->pack_pages[j] = cp_ring_pack(seq->owner, nb, j, NULL)) > p->maxp) return LC_ERANGE;
    // the ring: pass-Q where asked for (or, automatically, where the queries
    // weigh less than the KV) and its buffers hold every rank's rows
    int fits = p->lim.max_q_rows > 0;
    for (int t = 0; t < n; t++) {
        cp_ring_run_t runs[CP_RING_MAX_RUNS];
        const int nt = cp_ring_runs(seq->owner, ps, seq->pos0, seq->n_tok, t, runs, CP_RING_MAX_RUNS);
        if (nt < 0) return nt;
        p->q_rows[t] = nt ? runs[nt - 1].row0 + runs[nt - 1].n : 0;
        fits &= p->q_rows[t] <= p->lim.max_q_rows;
    }
    if (seq->mode < CP_CUDA_AUTO || seq->mode > CP_CUDA_PASS_Q) return LC_EINVAL;
    if (seq->flex && seq->mode == CP_CUDA_PASS_Q) return LC_EINVAL; // FlexPrefill rides the pass-KV ring
    if (seq->anchor && (seq->flex || seq->mode != CP_CUDA_AUTO)) return LC_EINVAL;
    if (seq->flex && !p->flex) return LC_ERANGE;
    p->anc_on = 0;
    if (seq->anchor) {
        int rc = cp_cuda__anchor_plan(p, seq, stream);
        if (rc) return rc;
        p->pass_q = p->sparse = 0;
        p->anc_on = 1;
        p->pf_planned = 1;
        return 0;
    }
    if (seq->mode == CP_CUDA_PASS_Q && !fits) return LC_ERANGE;
    p->pass_q = !seq->flex && (seq->mode == CP_CUDA_PASS_Q ||
                               (seq->mode == CP_CUDA_AUTO && fits &&
                                cp_pass_q_pays(seq->pos0, seq->n_tok, p->shape.n_heads, p->shape.n_kv_heads)));
    p->sparse = 0;

    cudaStream_t st = (cudaStream_t)stream;
    if (p->up_pf_pending) { // the pinned section may still be the source of the last upload
        CUDA_CHECK_RET(cudaEventSynchronize(p->up_pf));
        p->up_pf_pending = 0;
    }
    int64_t np = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (seq->owner[b] != r) continue;
        if (seq->blocks[b] < 0 || seq->blocks[b] >= p->shape.n_pool_pages) return LC_EINVAL;
        p->h_arena[np++] = seq->blocks[b];
    }
    if (np) {
        CUDA_CHECK_RET(cudaMemcpyAsync(p->d_arena, p->h_arena, sizeof(int32_t) * np, cudaMemcpyHostToDevice, st));
        CUDA_CHECK_RET(cudaEventRecord(p->up_pf, st));
        p->up_pf_pending = 1;
    }
    if (p->pass_q) {
        int rc = plan_pass_q(p, seq, np, stream);
        if (rc) return rc;
        p->pf_planned = 1;
        return 0;
    }

    if (seq->flex) {
        p->spos0 = seq->pos0;
        p->send = end;
        int rc = plan_flex(p, seq, stream);
        if (rc) return rc;
        p->sparse = 1;
    }
    // Each step's batch: this rank's runs that see the visiting pack's keys.
    for (int k = 0; k < n; k++) {
        int rc = plan_step(p, seq, p->runs, nr, cp_ring_visitor(r, k, n), NULL, 0, p->steps[k], p->rows,
                           &p->step_row0[k], &p->step_pairs[k], stream);
        if (rc) return rc;
    }
    if (p->sparse) {
        int rc = upload_fx(p, stream);
        if (rc) return rc;
    }
    p->pf_planned = 1;
    return 0;
}

extern "C" int cp_cuda_prefill_pass_q(const cp_cuda_plan_t *p) { return p && p->pf_planned ? p->pass_q : 0; }

extern "C" int64_t cp_cuda_prefill_rows(const cp_cuda_plan_t *p, int64_t *pos) {
    if (!p || !p->pf_planned) return 0;
    if (pos)
        for (int i = 0; i < p->n_runs; i++)
            for (int64_t t = 0; t < p->runs[i].n; t++) pos[p->runs[i].row0 + t] = p->runs[i].p0 + t;
    return p->rows;
}

static int collect_timing(cp_cuda_plan_t *p) {
    CUDA_CHECK_RET(cudaEventSynchronize(p->ev[3 * p->n - 1]));
    for (int k = 0; k < p->n; k++) {
        CUDA_CHECK_RET(cudaEventElapsedTime(&p->step_c[k], p->ev[3 * k], p->ev[3 * k + 1]));
        CUDA_CHECK_RET(cudaEventElapsedTime(&p->step_w[k], p->ev[3 * k + 1], p->ev[3 * k + 2]));
        p->t.compute_s += p->step_c[k] * 1e-3;
        p->t.wait_s += p->step_w[k] * 1e-3;
    }
    if (p->pass_q || p->sparse) { // pass-Q's all-to-all and merge, or FlexPrefill's selection
        float ms = 0;
        CUDA_CHECK_RET(cudaEventSynchronize(p->ev[3 * CP_MAX_RANKS + 1]));
        CUDA_CHECK_RET(cudaEventElapsedTime(&ms, p->ev[3 * CP_MAX_RANKS], p->ev[3 * CP_MAX_RANKS + 1]));
        p->t.collective_s += ms * 1e-3;
    }
    p->timed = 1;
    return 0;
}

// Pass-Q: the query rows go round the ring (to rank + 1, the next step's
// on their way during this step's compute, double-buffered); step k attends
// the rows of rank visitor(r, k) to this rank's blocks into their partials;
// then an all-to-all, and each rank merges its rows' N partials in rank order.
static int run_pass_q(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q, void *out,
                      float *lse) {
    const int n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    const size_t rowb = (size_t)H * D * 2;
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    for (int s = 0; s < n; s++) {
        const int org = cp_ring_visitor(r, s, n);
        const char *cur = s == 0 ? (const char *)q : (const char *)p->qrecv[(s - 1) & 1];
        cp_req_t rq = {-1};
        if (s < n - 1 && (rc = cp_sendrecv_start(c, cur, (size_t)p->q_rows[org] * rowb, nxt, p->qrecv[s & 1],
                                                 (size_t)p->q_rows[cp_ring_visitor(r, s + 1, n)] * rowb, prv, &rq)))
            return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s], st));
        const int64_t r0 = p->q_row0[s];
        if (r0 < p->q_rows[org]) {
            uint8_t *m = p->qpart + p->q_soff[org];
            attn_cuda_args_t a = {};
            a.q = cur + (size_t)r0 * rowb;
            a.out = m + (size_t)r0 * rowb;
            a.lse = (float *)(m + (size_t)p->q_rows[org] * rowb) + (size_t)r0 * H;
            a.k = k;
            a.v = v;
            if ((rc = attn_cuda_run(p->qsteps[s], &a, st))) return rc;
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 1], st));
        if (s < n - 1 && (rc = cp_wait(c, &rq))) return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 2], st));
        p->t.ring_steps++;
        p->t.steps_skipped += r0 >= p->q_rows[org];
        p->t.prefill_pairs += p->step_pairs[s];
    }
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS], st));
    if ((rc = cp_alltoallv(c, p->qpart, p->q_soff, p->q_sbytes, p->qpartin, p->q_roff, p->q_rbytes))) return rc;
    if (p->rows > 0) {
        passq_merge_kernel<<<warp_blocks(p->rows * H), 256, 0, st>>>(p->qpartin, p->q_rbytes[0], p->rows, H, D, p->src,
                                                                     n, (__nv_bfloat16 *)out, lse);
        CUDA_CHECK_RET(cudaGetLastError());
    }
    if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS + 1], st));
    return p->timing ? collect_timing(p) : 0;
}

extern "C" int cp_cuda_run_prefill(cp_cuda_plan_t *p, cp_comm_t *c, const void *k, const void *v, const void *q,
                                   void *out, float *lse) {
    if (!p || !c || !p->pf_planned || !k || !v || (p->rows > 0 && (!q || !out))) return LC_EINVAL;
    if (cp_comm_size(c) != p->n || cp_comm_rank(c) != p->rank) return LC_EINVAL;
    if (p->anc_on) return cp_cuda__anchor_run(p, c, k, v, q, out, lse);
    if (p->pass_q) return run_pass_q(p, c, k, v, q, out, lse);
    const int n = p->n, r = p->rank, H = p->shape.n_heads, D = p->shape.head_dim;
    const int nxt = (r + 1) % n, prv = (r + n - 1) % n;
    const size_t vo = (size_t)p->maxp * p->page_bytes; // V's offset in a pack
    cudaStream_t st = (cudaStream_t)cp_comm_stream(c);
    int rc;
    // FlexPrefill: the whole mask (collective), the steps' masks, the pairs
    if (p->sparse) {
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS], st));
        if ((rc = attn_cuda_flex_dist_select(p->flex, q, k, p->gmask, ring_sum, c, st))) return rc;
        if (p->n_desc > 0) {
            step_mask_kernel<<<dim3(p->n_desc, H, p->max_desc_qb), 32, 0, st>>>(
                p->gmask, p->g_nqb, p->g_words, (const StepMask *)p->d_fx, p->d_fx, p->smask);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->n_qbs > 0) {
            own_pairs_kernel<<<1, 256, 0, st>>>(p->gmask, p->g_nqb, p->g_words, p->g_qb0, p->spos0, p->send,
                                                p->d_fx + p->fx_qbs, p->n_qbs, H, p->d_pairs);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * CP_MAX_RANKS + 1], st));
    }
    // the own pack: K and V pages of the blocks this rank holds
    const int64_t own = p->pack_pages[r];
    if ((rc = gather_rows(p->pack[0], k, p->d_arena, own, p->page_bytes, st)) ||
        (rc = gather_rows((char *)p->pack[0] + vo, v, p->d_arena, own, p->page_bytes, st)))
        return rc;
    for (int s = 0; s < n; s++) {
        char *cur = (char *)p->pack[s & 1], *nx = (char *)p->pack[(s + 1) & 1];
        cp_req_t rk = {-1}, rv = {-1};
        if (s < n - 1) { // the next step's pack, on its way while this step computes
            const size_t sb = (size_t)p->pack_pages[cp_ring_visitor(r, s, n)] * p->page_bytes;
            const size_t rb = (size_t)p->pack_pages[cp_ring_visitor(r, s + 1, n)] * p->page_bytes;
            if ((rc = cp_sendrecv_start(c, cur, sb, nxt, nx, rb, prv, &rk)) ||
                (rc = cp_sendrecv_start(c, cur + vo, sb, nxt, nx + vo, rb, prv, &rv)))
                return rc;
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s], st));
        const int64_t r0 = p->step_row0[s];
        if (r0 < p->rows) {
            attn_cuda_args_t a = {(const char *)q + (size_t)r0 * H * D * 2,
                                  p->part_o + (size_t)r0 * H * D,
                                  p->part_lse + (size_t)r0 * H,
                                  cur,
                                  cur + vo,
                                  nullptr,
                                  0,
                                  0,
                                  p->sparse ? p->smask : nullptr,
                                  nullptr,
                                  p->sparse && s > 0};
            if ((rc = attn_cuda_run(p->steps[s], &a, st))) return rc;
        }
        if (p->rows > 0 && (r0 < p->rows || s == n - 1)) {
            ring_merge_kernel<<<warp_blocks(p->rows * H), 256, 0, st>>>(p->acc, p->run_lse, p->part_o, p->part_lse,
                                                                        p->rows, H, D, r0, s == 0, s == n - 1,
                                                                        (__nv_bfloat16 *)out, lse);
            CUDA_CHECK_RET(cudaGetLastError());
        }
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 1], st));
        if (s < n - 1 && ((rc = cp_wait(c, &rk)) || (rc = cp_wait(c, &rv)))) return rc;
        if (p->timing) CUDA_CHECK_RET(cudaEventRecord(p->ev[3 * s + 2], st));
        p->t.ring_steps++;
        p->t.steps_skipped += r0 >= p->rows;
        if (!p->sparse) p->t.prefill_pairs += p->step_pairs[s];
    }
    return p->timing ? collect_timing(p) : 0;
}

extern "C" int cp_cuda_sparse_pairs(cp_cuda_plan_t *p, void *stream, double *pairs) {
    if (!p || !pairs) return LC_EINVAL;
    *pairs = 0;
    if (!p->d_pairs) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    CUDA_CHECK_RET(cudaMemcpyAsync(p->h_pairs, p->d_pairs, sizeof(unsigned long long), cudaMemcpyDeviceToHost, st));
    CUDA_CHECK_RET(cudaStreamSynchronize(st));
    *pairs = (double)*p->h_pairs;
    return 0;
}

// ---- timing -------------------------------------------------------------------------------
extern "C" void cp_cuda_plan_timing_enable(cp_cuda_plan_t *p, int on) {
    if (p) p->timing = on != 0;
}
extern "C" const cp_timing_t *cp_cuda_plan_timing(const cp_cuda_plan_t *p) { return p ? &p->t : nullptr; }
extern "C" int cp_cuda_step_ms(const cp_cuda_plan_t *p, int k, float *compute_ms, float *wait_ms) {
    if (!p || !p->timed || k < 0 || k >= p->n) return -1;
    if (compute_ms) *compute_ms = p->step_c[k];
    if (wait_ms) *wait_ms = p->step_w[k];
    return 0;
}
