// The CUDA executor's attention plans for a step (exec_cuda_step.cu builds
// the step): dense prefill and decode, Quest, TidalDecode, FlexPrefill and
// AnchorAttention, and the device workspaces they need. Plans and workspaces
// are created by the first step that needs them and created again larger
// only when a step outgrows them.
#include "model/exec_cuda_int.cuh"

/* Grows a device workspace (after the stream drains: the old one may be in
 * use) to need plus an eighth, in 256 KiB units, so that a decode whose
 * split-K workspace grows with its length grows it rarely; to need alone
 * when that larger one cannot be had. */
static int grow_ws(model_cuda_t *c, void **ws, size_t *have, size_t need) {
    if (need <= *have) return 0;
    const size_t unit = (size_t)256 << 10, want = (need + need / 8 + unit - 1) / unit * unit;
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    cudaFree(*ws);
    *ws = NULL;
    *have = 0;
    if (cudaMalloc(ws, want) != cudaSuccess) {
        cudaGetLastError(); // a failed allocation must not linger as the last error
        CUDA_CHECK_RET(cudaMalloc(ws, need));
        *have = need;
    } else {
        *have = want;
    }
    model_cuda__prof_grow(c, *have);
    return 0;
}

/* Rounds n up to a power of two, at least lo (capacities that grow rarely). */
static int64_t grow_cap(int64_t n, int64_t have, int64_t lo) {
    int64_t c = have > lo ? have : lo;
    while (c < n) c *= 2;
    return c;
}

/* Makes room for the step's Quest rows: the plans' capacities (q_lim) grow
 * by doubling to what the step needs, at most the decode limits; outgrown
 * plans are destroyed (after the stream drains: a running step may still
 * read them) and created again by plan_quest. Sized by use, a plan's
 * creation costs what the batch needs, not what max_tokens long sequences
 * would. LC_ERANGE, before anything is torn down, past the decode limits. */
static int fit_quest(model_cuda_t *c, const step_t *st) {
    const int n = st->n_quest;
    const int64_t pages = c->q_kv_indptr[n];
    attn_cuda_limits_t *ql = &c->q_lim;
    if (n <= ql->max_seqs && pages <= ql->max_pages) return 0;
    const attn_cuda_limits_t *dl = &c->dec_lim;
    if (n > dl->max_seqs || pages > dl->max_pages) return LC_ERANGE;
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    for (int j = 0; j < c->n_qp; j++) {
        attn_quest_plan_destroy(c->qp[j]);
        c->qp[j] = NULL;
    }
    c->n_qp = 0;
    const int64_t seqs = grow_cap(n, ql->max_seqs, 4), cap_pages = grow_cap(pages, ql->max_pages, 64);
    ql->max_seqs = ql->max_q_rows = (int)(seqs < dl->max_seqs ? seqs : dl->max_seqs);
    ql->max_pages = cap_pages < dl->max_pages ? cap_pages : dl->max_pages;
    ql->split_keys = dl->split_keys;
    return 0;
}

/* Quest rows: plan j (0..n_thr) gives row e its budget when q_dl[e] <=
 * q_thr[j-1], else 0 (dense through the same kernels); layer l runs plan
 * j = the number of thresholds <= l. A row's arithmetic at a layer depends
 * on its own policy alone (the plans' capacities change none of it). */
static int plan_quest(model_cuda_t *c, const step_t *st) {
    const int32_t *idx =
        c->kv_indices + (c->dec_kv_indptr[st->n_dec] + (st->n_pf_seqs ? c->pf_kv_indptr[st->n_pf_seqs] : 0));
    int32_t *budget = c->q_budget + st->n_quest + 1; // scratch after the budgets (2 T + 4 + L entries)
    int rc = fit_quest(c, st);
    if (rc) return rc;
    for (int j = 0; j <= st->n_thr; j++) {
        if (j >= c->n_qp) {
            const double t0 = model_cuda__prof_now(c);
            rc = attn_quest_plan_create(&c->shape, &c->q_lim, &c->qp[c->n_qp]);
            model_cuda__prof_created(c, t0);
            if (rc) return rc;
            c->n_qp++;
        }
        for (int e = 0; e < st->n_quest; e++) budget[e] = j > 0 && c->q_dl[e] <= c->q_thr[j - 1] ? c->q_budget[e] : 0;
        attn_cuda_batch_t qb = {st->n_quest, NULL, c->q_kv_indptr, idx, c->q_kv_len};
        size_t ws = 0;
        rc = attn_quest_plan(c->qp[j], &qb, budget, c->stream, &ws);
        if (!rc) rc = grow_ws(c, &c->q_ws, &c->q_ws_bytes, ws);
        if (rc) return rc;
    }
    return 0;
}

/* The keys a sequence may reach: the model's context, at most the KV store. */
static int64_t max_context(const model_cuda_t *c) {
    const int64_t store = c->n_pages * c->page_size;
    return c->m->hp.n_ctx_train > 0 && c->m->hp.n_ctx_train < store ? c->m->hp.n_ctx_train : store;
}

/* The step's sparse prompt slices: the masks' room (empty unless FlexPrefill
 * selects into them), the pairs counters, FlexPrefill's selection and
 * AnchorAttention's plan, each object created on first use. */
static int plan_sparse_prefill(model_cuda_t *c, const step_t *st, const attn_cuda_batch_t *pb) {
    int rc = grow_ws(c, (void **)&c->mask, &c->mask_bytes, st->mask_words * sizeof(uint32_t));
    if (rc) return rc;
    CUDA_CHECK_RET(cudaMemsetAsync(c->mask, 0, st->mask_words * sizeof(uint32_t), c->stream));
    CUDA_CHECK_RET(
        cudaMemsetAsync(c->d_pairs, 0, 2 * ((size_t)c->max_seqs + 1) * sizeof(unsigned long long), c->stream));
    if (st->n_flex) {
        if (!c->flex && (rc = attn_cuda_flex_create(&c->shape, c->max_seqs, c->max_tokens, max_context(c), &c->flex)))
            return rc;
        size_t words = 0;
        if ((rc = attn_cuda_flex_plan(c->flex, pb, c->pf_flex, c->pf_fpol, c->pf_mask_off, &words, c->stream)))
            return rc;
    }
    if (st->n_anchor) {
        int local = c->anc_min_local;
        for (int e = 0; e < st->n_pf_seqs; e++)
            if (c->pf_anc[e] && (local == 0 || c->pf_apol[e].anchor_local < local)) local = c->pf_apol[e].anchor_local;
        if (c->anc && local < c->anc_min_local) { // a smaller group than the workspace was sized for
            CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
            attn_cuda_anchor_destroy(c->anc);
            c->anc = NULL;
        }
        if (!c->anc) {
            if ((rc = attn_cuda_anchor_create(&c->shape, c->max_seqs, c->max_tokens, max_context(c), local, &c->anc)))
                return rc;
            c->anc_min_local = local;
        }
        if ((rc = attn_cuda_anchor_plan(c->anc, pb, c->pf_anc, c->pf_apol, c->stream))) return rc;
    }
    return 0;
}


/* TidalDecode rows: their dense decode plan and their tidal plan, created
 * again larger when the step outgrows them; the workspaces and the LSE. */
static int plan_tidal(model_cuda_t *c, const step_t *st) {
    const int n = st->n_tidal;
    const int64_t pages = c->t_kv_indptr[n];
    int64_t budget = 1;
    for (int e = 0; e < n; e++)
        if (c->t_budget[e] < c->t_kv_len[e] && c->t_budget[e] > budget) budget = c->t_budget[e];
    attn_tidal_limits_t *lim = &c->t_lim;
    if (!c->t_plan || n > lim->max_rows || pages > lim->max_pages || budget > lim->max_budget) {
        CUDA_CHECK_RET(cudaStreamSynchronize(c->stream)); // the old plans may still be read
        attn_cuda_plan_destroy(c->t_dense);
        attn_tidal_plan_destroy(c->t_plan);
        c->t_dense = NULL;
        c->t_plan = NULL;
        lim->max_rows = (int)grow_cap(n, lim->max_rows, 16);
        lim->max_pages = grow_cap(pages, lim->max_pages, 1024);
        lim->max_budget = (int)grow_cap(budget, lim->max_budget, 256);
        lim->split_keys = 0;
        const attn_cuda_limits_t dl = {lim->max_rows, lim->max_rows, lim->max_pages, 0};
        const double t0 = model_cuda__prof_now(c);
        int rc = attn_cuda_plan_create(&c->shape, ATTN_CUDA_DECODE, &dl, &c->t_dense);
        if (!rc) rc = attn_tidal_plan_create(&c->shape, lim, &c->t_plan);
        model_cuda__prof_created(c, t0);
        if (rc) {
            lim->max_rows = 0; // created again by the next step that needs them
            return rc;
        }
    }
    attn_cuda_batch_t tb = {n, NULL, c->t_kv_indptr, c->kv_indices + st->t_idx0, c->t_kv_len, NULL};
    size_t ws = 0;
    int rc = attn_cuda_plan(c->t_dense, &tb, c->stream, &ws);
    if (!rc) rc = grow_ws(c, &c->dec_ws, &c->dec_ws_bytes, ws);
    if (!rc) rc = attn_tidal_plan(c->t_plan, &tb, c->t_budget, c->stream, &ws);
    if (!rc) rc = grow_ws(c, &c->t_ws, &c->t_ws_bytes, ws);
    if (!rc) rc = grow_ws(c, (void **)&c->t_lse, &c->t_lse_bytes, (size_t)n * c->m->hp.n_heads * sizeof(float));
    c->t_selected = c->t_due = 0;
    return rc;
}

/* The windowed CSR of n entries (prompt slices with q_indptr, or decode
 * rows without) over the pages of their windows: an entry's keys start at
 * its first row's window start rounded down to WPLAN_ALIGN (so the kernels
 * tile it as they would from key 0, bit for bit), and its page list and
 * length start there too. The page ids come per plan (wplan_pages). */
static int wplan_csr(model_cuda_t *c, int n, const int32_t *q_indptr, const int32_t *kv_len) {
    const int P = c->page_size;
    size_t pages = 0;
    c->w_kv_indptr[0] = 0;
    for (int e = 0; e < n; e++) {
        const int64_t len = kv_len[e], rows = q_indptr ? q_indptr[e + 1] - q_indptr[e] : 1;
        const int64_t lo = len - rows - c->window + 1; // the first row's first key
        const int64_t first = lo > 0 ? lo / WPLAN_ALIGN * WPLAN_ALIGN / P : 0, np = (len + P - 1) / P;
        c->w_first[e] = (int32_t)first;
        c->w_kv_len[e] = (int32_t)(len - first * P);
        pages += (size_t)(np - first);
        c->w_kv_indptr[e + 1] = (int32_t)pages;
    }
    if (pages > c->cap_w_indices) {
        int32_t *p = (int32_t *)realloc(c->w_indices, pages * sizeof(int32_t));
        if (!p) return LC_ENOMEM;
        c->w_indices = p;
        c->cap_w_indices = pages;
    }
    return 0;
}

/* Plan w's page ids for the CSR of wplan_csr (the entries' tables): a
 * sliding group's own table, or the one table with one layer group. An entry
 * the window no longer needs (-1: released) takes the spare page: the
 * kernels read from the window's 64-key stage on, never below it. */
static void wplan_pages(model_cuda_t *c, int w, int n, const kv_seq_t *const *kvs) {
    const int g = kv_config_groups(&c->kvc) > 1 ? c->kvc.n_full_groups + w : 0; // (one sliding group: w = 0)
    for (int e = 0; e < n; e++) {
        const int32_t *t = kv_seq_table(kvs[e], g) + c->w_first[e];
        int32_t *dst = c->w_indices + c->w_kv_indptr[e];
        for (int32_t i = 0; i < c->w_kv_indptr[e + 1] - c->w_kv_indptr[e]; i++)
            dst[i] = t[i] >= 0 ? t[i] : (int32_t)c->n_pages;
    }
}

/* The sliding layers' plans: the prompt slices and every generated row over
 * their windows (the sharded ones' too), one plan pair per sliding group. */
static int plan_windows(model_cuda_t *c, const step_t *st) {
    size_t ws = 0;
    int rc = 0;
    if (st->n_wpf) {
        if ((rc = wplan_csr(c, st->n_wpf, c->pf_q_indptr, c->pf_kv_len))) return rc;
        attn_cuda_batch_t pb = {st->n_wpf, c->pf_q_indptr, c->w_kv_indptr, c->w_indices, c->w_kv_len, NULL};
        pb.window = c->window;
        for (int w = 0; w < c->n_wplans && !rc; w++) {
            wplan_pages(c, w, st->n_wpf, c->pf_kvs);
            rc = attn_cuda_plan(c->pf_plan_w[w], &pb, c->stream, &ws);
        }
    }
    const int n = st->n_wdec; // the dense rows, the Quest rows, the TidalDecode rows, the sharded rows
    if (rc || !n) return rc;
    if ((rc = wplan_csr(c, n, NULL, c->dec_kv_len))) return rc;
    attn_cuda_batch_t db = {n, NULL, c->w_kv_indptr, c->w_indices, c->w_kv_len};
    db.window = c->window;
    for (int w = 0; w < c->n_wplans && !rc; w++) {
        wplan_pages(c, w, n, c->dec_kvs);
        rc = attn_cuda_plan(c->dec_plan_w[w], &db, c->stream, &ws);
        if (!rc) rc = grow_ws(c, &c->dec_ws, &c->dec_ws_bytes, ws); // the dense plan's too
    }
    return rc;
}

int model_cuda__plan_attention(model_cuda_t *c, const step_t *st) {
    size_t ws = 0;
    if (st->n_sum)
        CUDA_CHECK_RET(cudaMemcpyAsync(c->d_sum, c->h_sum, 2 * (size_t)c->max_tokens * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, c->stream));
    if (st->n_quest) {
        int rc = plan_quest(c, st);
        if (rc) return rc;
    }
    if (st->n_tidal) {
        int rc = plan_tidal(c, st);
        if (rc) return rc;
    }
    if (st->n_pf_seqs) {
        const int sparse = st->n_flex || st->n_anchor;
        attn_cuda_batch_t pb = {st->n_pf_seqs, c->pf_q_indptr, c->pf_kv_indptr,
                                c->kv_indices, c->pf_kv_len,   sparse ? c->pf_mask_off : NULL};
        int rc = attn_cuda_plan(c->pf_plan, &pb, c->stream, &ws);
        if (!rc && sparse) rc = plan_sparse_prefill(c, st, &pb);
        if (rc) return rc;
    }
    const int32_t *dec_idx = c->kv_indices + (st->n_pf_seqs ? c->pf_kv_indptr[st->n_pf_seqs] : 0);
    if (st->n_dec) {
        attn_cuda_batch_t db = {st->n_dec, NULL, c->dec_kv_indptr, dec_idx, c->dec_kv_len};
        int rc = attn_cuda_plan(c->dec_plan, &db, c->stream, &ws);
        if (!rc) rc = grow_ws(c, &c->dec_ws, &c->dec_ws_bytes, ws); // a larger split-K workspace than before
        if (rc) return rc;
    }
    return c->window ? plan_windows(c, st) : 0; // (the sparse methods run on the global layers)
}
