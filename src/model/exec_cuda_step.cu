// The CUDA executor's step (exec_cuda.cu says how a step runs): the rows in
// attention order, the attention calls (their plans: exec_cuda_plan.cu), the
// pieces between attention calls and their decode graphs, logits and the
// draws made on the GPU, the density counters, the device's failure.
#include "model/exec_cuda_int.cuh"

/* ---- a step ------------------------------------------------------------------------------- */

static int grow_indices(model_cuda_t *c, size_t n) {
    if (n <= c->cap_indices) return 0;
    int32_t *p = (int32_t *)realloc(c->kv_indices, n * sizeof(int32_t));
    if (!p) return LC_ENOMEM;
    c->kv_indices = p;
    c->cap_indices = n;
    return 0;
}


/* A slice's policy, or NULL. The prefill methods run every model (on Gemma
 * 3's global layers), Quest and TidalDecode every shape their kernels take
 * (quest_ok, tidal_ok): other slices decode dense (a warning once; the
 * density reports what ran). */
static const attn_policy_t *policy(const model_cuda_t *c, const model_seq_t *q) {
    const attn_policy_t *pol = q->attn ? attn_state_policy(q->attn) : NULL;
    if (!pol || !q->generated || pol->decode == ATTN_DECODE_DENSE) return pol;
    if (pol->decode == ATTN_DECODE_QUEST ? c->quest_ok : c->tidal_ok) return pol;
    static int warned; // the engine thread's
    if (!warned++)
        LC_WARN("cuda: %s's kernels do not run %s (head_dim %d%s) yet: such requests decode dense on the GPU "
                "(device = cpu runs the method)",
                attn_decode_method_name(pol->decode), c->m->hp.name, c->m->hp.head_dim,
                c->window ? ", sliding-window layers" : "");
    return NULL;
}

/* The Quest policy of a slice of generated rows, or NULL (dense decode). */
static const attn_policy_t *quest_policy(const model_cuda_t *c, const model_seq_t *q) {
    const attn_policy_t *pol = q->generated ? policy(c, q) : NULL;
    return pol && pol->decode == ATTN_DECODE_QUEST ? pol : NULL;
}

/* The TidalDecode policy of a slice of generated rows, or NULL. */
static const attn_policy_t *tidal_policy(const model_cuda_t *c, const model_seq_t *q) {
    const attn_policy_t *pol = q->generated ? policy(c, q) : NULL;
    return pol && pol->decode == ATTN_DECODE_TIDAL ? pol : NULL;
}

/* 1 when two policies decode layer by layer alike (TidalDecode's schedule). */
static int same_schedule(const attn_policy_t *a, const attn_policy_t *b) {
    return a->dense_layers == b->dense_layers && a->tidal_select_layer == b->tidal_select_layer &&
           a->tidal_reselect_layer == b->tidal_reselect_layer;
}

/* The AnchorAttention policy of a prompt slice the GPU can run (windows of
 * whole 128-position blocks), or NULL (dense prefill, and density 1 says so).
 * The sharded slices' too (exec_cuda_cp.cu). */
const attn_policy_t *model_cuda__anchor_policy(const model_seq_t *q) {
    const attn_policy_t *pol = !q->generated && q->attn ? attn_state_policy(q->attn) : NULL;
    if (!pol || pol->prefill != ATTN_PREFILL_ANCHOR) return NULL;
    if ((pol->block <= 0 || pol->block == 128) && pol->anchor_init >= 0 && pol->anchor_init % 128 == 0 &&
        pol->anchor_local >= 128 && pol->anchor_local % 128 == 0 && pol->anchor_lookback >= 0 &&
        pol->anchor_lookback % 128 == 0)
        return pol;
    static int warned; // the engine thread's
    if (!warned++)
        LC_WARN("cuda: AnchorAttention needs blocks of 128 and windows of whole blocks on a GPU "
                "(anchor_init %d, anchor_local %d, anchor_lookback %d): such prompts prefill dense",
                pol->anchor_init, pol->anchor_local, pol->anchor_lookback);
    return NULL;
}

/* The FlexPrefill policy of a prompt slice, or NULL (dense prefill). */
static const attn_policy_t *flex_policy(const model_cuda_t *c, const model_seq_t *q) {
    const attn_policy_t *pol = !q->generated ? policy(c, q) : NULL;
    return pol && pol->prefill == ATTN_PREFILL_FLEX ? pol : NULL;
}

/* Row r computes batch token t of sequence q. */
static void put_row(model_cuda_t *c, const model_batch_t *b, const model_seq_t *q, int i, int r) {
    const int P = c->page_size, T = c->max_tokens;
    const int64_t pos = q->pos0 + i;
    c->h_idx[IX_TOK * T + r] = b->tokens[q->tok0 + i];
    c->h_pos[r] = pos;
    for (int g = 0; g < kv_config_groups(&c->kvc); g++)
        c->h_idx[ix_page(c, g) * T + r] = kv_seq_table(q->kv, g)[pos / P];
    c->h_idx[IX_SLOT * T + r] = (int32_t)(pos % P);
    c->h_idx[IX_PLEN * T + r] = (int32_t)(pos % P) + 1;
}

/* The logits rows of slice s, whose first token sits at row r0. */
static void put_lrows(model_cuda_t *c, const model_batch_t *b, int s, int r0, step_t *st) {
    const model_seq_t *q = &b->seqs[s];
    const int cnt = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->logits_mode == MODEL_LOGITS_ALL ? q->n_tok : 0;
    for (int i = q->n_tok - cnt; i < q->n_tok; i++) {
        c->h_idx[IX_LROWS * c->max_tokens + st->n_lrows] = r0 + i;
        c->lrow_seq[st->n_lrows] = s;
        c->lrow_j[st->n_lrows++] = i - (q->n_tok - cnt);
    }
}

static int build_step(model_cuda_t *c, const model_batch_t *b, step_t *st) {
    const int P = c->page_size, T = c->max_tokens;
    memset(st, 0, sizeof *st);
    size_t pages = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t np = (q->pos0 + q->n_tok + P - 1) / P;
        pages += q->generated ? (size_t)np * q->n_tok : (size_t)np;
    }
    if (grow_indices(c, pages * 2 + 1)) return LC_ENOMEM;
    /* prompt slices: CSR rows and pages */
    int row = 0;
    size_t pf_pages = 0, words = 0;
    c->pf_q_indptr[0] = c->pf_kv_indptr[0] = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (q->generated || model_cuda__cp_mode(c, s)) continue;
        const int np = (int)((q->pos0 + q->n_tok + P - 1) / P);
        for (int i = 0; i < q->n_tok; i++) put_row(c, b, q, i, row + i);
        c->row0[s] = row;
        c->pf_kvs[st->n_pf_seqs] = q->kv;
        memcpy(c->kv_indices + pf_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
        pf_pages += (size_t)np;
        row += q->n_tok;
        c->pf_kv_len[st->n_pf_seqs] = (int32_t)(q->pos0 + q->n_tok);
        const attn_policy_t *fp = flex_policy(c, q), *ap = fp ? NULL : model_cuda__anchor_policy(q);
        const int e = st->n_pf_seqs;
        c->pf_flex[e] = fp != NULL;
        c->pf_anc[e] = ap != NULL;
        c->pf_mask_off[e] = -1;
        if (fp || ap) { // FlexPrefill's masks; AnchorAttention's stay empty (its own run writes its rows)
            if (words > INT32_MAX) return LC_ERANGE;
            c->pf_mask_off[e] = (int32_t)words;
            words += attn_cuda_mask_words(q->n_tok, c->pf_kv_len[e], c->m->hp.n_heads);
        }
        if (fp) {
            if (q->prompt_end > INT32_MAX) return LC_ERANGE;
            c->pf_fpol[e] = attn_cuda_flex_policy_t{fp->gamma,
                                                    fp->tau,
                                                    fp->min_budget,
                                                    fp->max_budget,
                                                    q->generated ? 0 : (int)q->prompt_end,
                                                    fp->flex_select == ATTN_FLEX_BLOCKS};
            st->n_flex++;
        }
        if (ap) {
            c->pf_apol[e] = attn_cuda_anchor_policy_t{ap->theta, ap->anchor_init, ap->anchor_local, ap->anchor_lookback,
                                                      ap->anchor_probe};
            st->n_anchor++;
        }
        st->n_pf_seqs++;
        c->pf_q_indptr[st->n_pf_seqs] = row;
        c->pf_kv_indptr[st->n_pf_seqs] = (int32_t)pf_pages;
    }
    /* sharded prompt slices (exec_cuda_cp.cu): prompt rows after the plan's;
     * on the sliding layers they attend their windows through the windowed
     * plan, which continues over them (every rank's pages are in this pool) */
    st->n_wpf = st->n_pf_seqs;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (q->generated || !model_cuda__cp_mode(c, s)) continue;
        for (int i = 0; i < q->n_tok; i++) put_row(c, b, q, i, row + i);
        c->row0[s] = row;
        row += q->n_tok;
        c->pf_kvs[st->n_wpf] = q->kv;
        c->pf_kv_len[st->n_wpf] = (int32_t)(q->pos0 + q->n_tok);
        c->pf_q_indptr[++st->n_wpf] = row;
    }
    st->n_pf_rows = row;
    st->mask_words = words;
    /* generated rows: one decode entry each, over the pages up to its
     * position; dense decode rows first, then Quest rows, then TidalDecode
     * rows (each kind its own CSR) */
    int32_t *dec_idx = c->kv_indices + pf_pages;
    size_t dec_pages = 0;
    c->dec_kv_indptr[0] = c->q_kv_indptr[0] = c->t_kv_indptr[0] = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int s = 0; s < b->n_seqs; s++) {
            const model_seq_t *q = &b->seqs[s];
            const attn_policy_t *pol = quest_policy(c, q), *tpol = tidal_policy(c, q);
            if (!q->generated || model_cuda__cp_mode(c, s) || (pol ? 1 : tpol ? 2 : 0) != pass) continue;
            if (pass == 2 && !st->n_tidal) {
                st->t_idx0 = pf_pages + dec_pages;
                c->t_pol = *tpol;
            }
            /* the scheduler gives every request the server's schedule */
            if (pass == 2 && !same_schedule(&c->t_pol, tpol)) return LC_EINVAL;
            c->row0[s] = row;
            for (int i = 0; i < q->n_tok; i++) {
                const int64_t len = q->pos0 + i + 1;
                const int np = (int)((len + P - 1) / P);
                put_row(c, b, q, i, row++);
                memcpy(dec_idx + dec_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
                dec_pages += (size_t)np;
                if (tpol) {
                    const int e = st->n_tidal++;
                    /* the sliding layers' windowed plan continues over them (after the Quest rows) */
                    c->dec_kv_len[st->n_dec + st->n_quest + e] = (int32_t)len;
                    c->dec_kvs[st->n_dec + st->n_quest + e] = q->kv;
                    c->t_kv_len[e] = (int32_t)len;
                    c->t_kv_indptr[e + 1] = (int32_t)(pf_pages + dec_pages - st->t_idx0);
                    c->t_budget[e] = tpol->decode_budget > 0 ? tpol->decode_budget : 1;
                    continue;
                }
                if (!pol) {
                    c->dec_kvs[st->n_dec] = q->kv;
                    c->dec_kv_len[st->n_dec] = (int32_t)len;
                    st->n_dec++;
                    c->dec_kv_indptr[st->n_dec] = (int32_t)dec_pages;
                    continue;
                }
                const int e = st->n_quest++;
                c->q_kv_len[e] = (int32_t)len;
                c->q_kv_indptr[e + 1] = (int32_t)(dec_pages - (size_t)c->dec_kv_indptr[st->n_dec]);
                /* the dense rows' CSR continued over the Quest rows: the sliding layers' windowed plan */
                c->dec_kv_len[st->n_dec + e] = (int32_t)len;
                c->dec_kvs[st->n_dec + e] = q->kv;
                c->dec_kv_indptr[st->n_dec + e + 1] = (int32_t)dec_pages;
                c->q_budget[e] = (int32_t)(((int64_t)pol->decode_budget + P - 1) / P);
                if (c->q_budget[e] < 1) c->q_budget[e] = 1;
                c->q_dl[e] = pol->dense_layers;
            }
        }
    /* sharded generated slices (exec_cuda_cp.cu): the last rows, and the
     * windowed decode plan's last entries */
    st->n_wdec = st->n_dec + st->n_quest + st->n_tidal;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (!q->generated || !model_cuda__cp_mode(c, s)) continue;
        c->row0[s] = row;
        for (int i = 0; i < q->n_tok; i++) {
            put_row(c, b, q, i, row++);
            c->dec_kvs[st->n_wdec] = q->kv;
            c->dec_kv_len[st->n_wdec++] = (int32_t)(q->pos0 + i + 1);
        }
    }
    /* Quest's thresholds: the distinct dense_layers, ascending */
    for (int e = 0; e < st->n_quest; e++) {
        int k = 0;
        while (k < st->n_thr && c->q_thr[k] < c->q_dl[e]) k++;
        if (k < st->n_thr && c->q_thr[k] == c->q_dl[e]) continue;
        memmove(c->q_thr + k + 1, c->q_thr + k, (size_t)(st->n_thr - k) * sizeof(int32_t));
        c->q_thr[k] = c->q_dl[e];
        st->n_thr++;
    }
    /* A step of one generated row per sequence writes one page per row, each
     * its own: the page summaries go row by row inside the pieces (and so
     * into the graphs). Such a step may run as graphs, padded to its bucket.
     * Other steps list every page they write, with its valid tokens. */
    st->rowwise = st->n_pf_rows == 0;
    for (int s = 0; s < b->n_seqs && st->rowwise; s++) st->rowwise = b->seqs[s].n_tok == 1;
    for (int s = 0; s < b->n_seqs && !st->rowwise; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t end = q->pos0 + q->n_tok;
        for (int64_t pg = q->pos0 / P; pg * P < end && st->n_sum < T; pg++) {
            c->h_sum[st->n_sum] = q->kv->blocks[pg];
            c->h_sum[T + st->n_sum] = (int32_t)(end - pg * P < P ? end - pg * P : P);
            st->n_sum++;
        }
    }
    /* the logits rows in slice order (the order of the slices' buffers) */
    for (int s = 0; s < b->n_seqs; s++) put_lrows(c, b, s, c->row0[s], st);
    st->rows = row;
    st->bucket = -1;
    if (c->use_graphs && st->rowwise)
        for (int k = 0; k < N_BUCKETS && bucket_rows[k] <= T; k++)
            if (bucket_rows[k] >= row) {
                st->bucket = k;
                break;
            }
    if (st->bucket >= 0)
        for (; row < bucket_rows[st->bucket]; row++) { // padding: token 0 at position 0 of the spare page
            c->h_idx[IX_TOK * T + row] = 0;
            c->h_pos[row] = 0;
            for (int g = 0; g < kv_config_groups(&c->kvc); g++) c->h_idx[ix_page(c, g) * T + row] = (int32_t)c->n_pages;
            c->h_idx[IX_SLOT * T + row] = 0;
            c->h_idx[IX_PLEN * T + row] = 1;
        }
    return 0;
}

/* TidalDecode rows at layer l: the selection's positions once chosen in
 * this step, else dense (and at a selection layer, the choice after it). */
static int run_tidal(model_cuda_t *c, const step_t *st, int l, const attn_cuda_args_t *layer) {
    const size_t HD = (size_t)c->m->hp.n_heads * c->m->hp.head_dim;
    const size_t r0 = (size_t)(st->n_pf_rows + st->n_dec + st->n_quest) * HD;
    int sel; // (a sliding selection layer's choice is made here: t_due)
    const attn_decode_method_t m = attn_decode_layer(&c->t_pol, l, c->t_due, &sel);
    c->t_due = attn_decode_due(&c->t_pol, l, 0, c->t_due);
    if (m == ATTN_DECODE_TIDAL && c->t_selected) {
        attn_tidal_attend_args_t ta = {c->q + r0, c->att + r0, NULL, layer->k, layer->v, c->t_ws, c->t_ws_bytes};
        return attn_tidal_attend(c->t_plan, &ta, c->stream);
    }
    attn_cuda_args_t a = *layer;
    a.q = c->q + r0;
    a.out = c->att + r0;
    a.lse = sel ? c->t_lse : NULL;
    a.workspace = c->dec_ws;
    a.workspace_bytes = c->dec_ws_bytes;
    int rc = attn_cuda_run(c->t_dense, &a, c->stream);
    if (rc || !sel) return rc;
    attn_tidal_select_args_t sa = {c->q + r0, layer->k, c->t_lse, c->t_ws, c->t_ws_bytes};
    c->t_selected = 1;
    return attn_tidal_select(c->t_plan, &sa, c->stream);
}

static int run_attention(model_cuda_t *c, const step_t *st, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const size_t HD = (size_t)hp->n_heads * hp->head_dim;
    attn_cuda_args_t a;
    memset(&a, 0, sizeof a);
    a.k = layer_k(c, l);
    a.v = layer_v(c, l);
    if (hp->layer[l].window > 0) { // a sliding layer: every row dense over its window (no sparse slice here)
        const int w = layer_wplan(c, l);
        int rc = 0;
        if (st->n_wpf) {
            a.q = c->q;
            a.out = c->att;
            rc = attn_cuda_run(c->pf_plan_w[w], &a, c->stream);
        }
        if (!rc && st->n_wdec) { // every generated row (sparse: on the global layers)
            a.q = c->q + (size_t)st->n_pf_rows * HD;
            a.out = c->att + (size_t)st->n_pf_rows * HD;
            a.workspace = c->dec_ws;
            a.workspace_bytes = c->dec_ws_bytes;
            rc = attn_cuda_run(c->dec_plan_w[w], &a, c->stream);
        }
        if (st->n_tidal)
            c->t_due = attn_decode_due(&c->t_pol, l, 1, c->t_due); // a selection layer: the next global one
        return rc;
    }
    if (st->n_pf_seqs) {
        a.q = c->q;
        a.out = c->att;
        int rc = 0;
        if (st->n_flex) // this layer's masks, from its queries and keys
            rc = attn_cuda_flex_select(c->flex, c->q, a.k, c->mask, c->stream);
        if (st->n_flex || st->n_anchor) a.block_mask = c->mask;
        if (!rc) rc = attn_cuda_run(c->pf_plan, &a, c->stream);
        /* (this counts the AnchorAttention slices' diagonal tiles too, into
         * entries count_attention does not read for them) */
        if (!rc && st->n_flex) rc = attn_cuda_mask_pairs(c->pf_plan, c->mask, c->d_pairs, c->stream);
        a.block_mask = NULL;
        if (!rc && st->n_anchor) { // its slices' rows, over the dense run's (empty-mask) ones
            rc = attn_cuda_anchor_run(c->anc, c->q, a.k, a.v, c->att, NULL, c->stream);
            if (!rc) rc = attn_cuda_anchor_pairs(c->anc, c->d_pairs + c->max_seqs + 1, c->stream);
        }
        if (rc) return rc;
    }
    if (st->n_dec) {
        a.q = c->q + (size_t)st->n_pf_rows * HD;
        a.out = c->att + (size_t)st->n_pf_rows * HD;
        a.workspace = c->dec_ws;
        a.workspace_bytes = c->dec_ws_bytes;
        int rc = attn_cuda_run(c->dec_plan, &a, c->stream);
        if (rc) return rc;
    }
    if (st->n_quest) {
        int j = 0;
        while (j < st->n_thr && c->q_thr[j] <= l) j++;
        attn_quest_args_t qa;
        memset(&qa, 0, sizeof qa);
        qa.q = c->q + (size_t)(st->n_pf_rows + st->n_dec) * HD;
        qa.out = c->att + (size_t)(st->n_pf_rows + st->n_dec) * HD;
        qa.k = a.k;
        qa.v = a.v;
        qa.kmin = c->kmin + layer_sum(c, l);
        qa.kmax = c->kmax + layer_sum(c, l);
        qa.workspace = c->q_ws;
        qa.workspace_bytes = c->q_ws_bytes;
        int rc = attn_quest_run(c->qp[j], &qa, c->stream);
        if (rc) return rc;
    }
    if (st->n_tidal) return run_tidal(c, st, l, &a);
    return 0;
}

/* Layer l's key summaries of the pages the step wrote (after its K/V are in
 * the pool, before any Quest row reads them); a sliding layer's are never
 * read (Quest selects on the global layers). */
static int summarize(model_cuda_t *c, const step_t *st, int l) {
    if (!st->n_sum || !c->quest_ok || c->m->hp.layer[l].window > 0)
        return 0; // none listed: a rowwise step did it inside the pieces
    return attn_quest_summarize(&c->shape, layer_k(c, l), c->d_sum, c->d_sum + c->max_tokens, st->n_sum,
                                c->kmin + layer_sum(c, l), c->kmax + layer_sum(c, l), c->stream);
}

/* D = A · Wᵀ over rows [0, rows): the first pf_rows (prompt rows) in the
 * prompt mode, the rest in the generated rows' mode; FAST: one call. */
static int gemm_rows(model_cuda_t *c, int rows, int pf_rows, int n, int k, const bf16_t *A, const bf16_t *W, void *D,
                     int d_f32, int acc) {
    if (c->pf_mode == c->dec_mode)
        return ops_cuda_gemm_as(c->gemm, c->dec_mode, rows, n, k, A, W, D, d_f32, acc, c->stream);
    int rc = 0;
    if (pf_rows > 0) rc = ops_cuda_gemm_as(c->gemm, c->pf_mode, pf_rows, n, k, A, W, D, d_f32, acc, c->stream);
    if (!rc && rows > pf_rows) {
        const size_t d_row = (size_t)n * (d_f32 ? sizeof(float) : sizeof(bf16_t));
        rc = ops_cuda_gemm_as(c->gemm, c->dec_mode, rows - pf_rows, n, k, A + (size_t)pf_rows * k, W,
                              (char *)D + (size_t)pf_rows * d_row, d_f32, acc, c->stream);
    }
    return rc;
}

/* Layer l up to attention: norm, QKV, RoPE and the cache write, and with
 * rowwise the key summaries of each row's page. */
static int layer_pre(model_cuda_t *c, int rows, int pf_rows, int rowwise, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const layer_t *G = &c->layers[l];
    const int E = hp->n_embd;
    int rc;
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->attn_norm, c->xb, rows, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = gemm_rows(c, rows, pf_rows, (int)qkv_dim(hp), E, c->xb, G->wqkv, c->qkv, 1, 0))) return rc;
    ops_cuda_qkv_t qp;
    memset(&qp, 0, sizeof qp);
    qp.n_heads = hp->n_heads;
    qp.n_kv_heads = hp->n_kv_heads;
    qp.head_dim = hp->head_dim;
    const int swa = hp->layer[l].window > 0 && c->rope_swa_cos; // the sliding layers' RoPE base
    const ops_rope_t *rope = swa ? &c->m->rope_swa : &c->m->rope;
    qp.rot_dim = rope->rot_dim;
    qp.neox = hp->rope_neox;
    qp.n_table = c->n_table;
    qp.freq_base = rope->freq_base;
    qp.freq_scale = rope->freq_scale;
    qp.q_norm = G->q_norm;
    qp.k_norm = G->k_norm;
    qp.norm_eps = hp->rms_eps;
    qp.q = c->q;
    qp.k_cache = layer_k(c, l);
    qp.v_cache = layer_v(c, l);
    qp.page_size = c->page_size;
    const int32_t *pages = c->d_idx + (size_t)ix_page(c, c->lgroup[l]) * c->max_tokens; // its group's table
    rc = ops_cuda_qkv_post(c->qkv, rows, c->d_pos, NULL, pages, c->d_idx + IX_SLOT * c->max_tokens,
                           swa ? c->rope_swa_cos : c->rope_cos, swa ? c->rope_swa_sin : c->rope_sin, &qp, c->stream);
    if (rc || !rowwise || !c->quest_ok || hp->layer[l].window > 0) return rc; // (Quest's summaries: where it runs)
    return attn_quest_summarize(&c->shape, layer_k(c, l), pages, c->d_idx + IX_PLEN * c->max_tokens, rows,
                                c->kmin + layer_sum(c, l), c->kmax + layer_sum(c, l), c->stream);
}

/* Layer l after attention: x += att · Woᵀ, then the FFN. */
static int layer_post(model_cuda_t *c, int rows, int pf_rows, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const layer_t *G = &c->layers[l];
    const int E = hp->n_embd, F = hp->n_ff, HD = hp->n_heads * hp->head_dim;
    int rc;
    /* the O and down projections add into the residual in their epilogue;
     * with post-norms (Gemma 3) they go to proj, whose norm is added */
    if (G->post_attn_norm) {
        if ((rc = gemm_rows(c, rows, pf_rows, E, HD, c->att, G->wo, c->proj, 1, 0)) ||
            (rc = ops_cuda_rmsnorm_add(c->x, c->proj, G->post_attn_norm, rows, E, hp->rms_eps, c->stream)))
            return rc;
    } else if ((rc = gemm_rows(c, rows, pf_rows, E, HD, c->att, G->wo, c->x, 1, 1))) {
        return rc;
    }
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->ffn_norm, c->xb, rows, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = gemm_rows(c, rows, pf_rows, 2 * F, E, c->xb, G->wgu, c->gu, 1, 0))) return rc;
    if ((rc = hp->ffn_geglu ? ops_cuda_geglu(c->gu, c->h, rows, F, c->stream)
                            : ops_cuda_swiglu(c->gu, c->h, rows, F, c->stream)))
        return rc;
    if (!G->post_ffn_norm) return gemm_rows(c, rows, pf_rows, E, F, c->h, G->wdown, c->x, 1, 1);
    if ((rc = gemm_rows(c, rows, pf_rows, E, F, c->h, G->wdown, c->proj, 1, 0))) return rc;
    return ops_cuda_rmsnorm_add(c->x, c->proj, G->post_ffn_norm, rows, E, hp->rms_eps, c->stream);
}

/* Piece i of a step between attention calls: i = 0 embeds and runs layer
 * 0 up to attention; 0 < i < n_layers finishes layer i-1 and starts layer i;
 * i = n_layers finishes the last layer. */
static int piece(model_cuda_t *c, int rows, int pf_rows, int rowwise, int i) {
    const model_hparams_t *hp = &c->m->hp;
    int rc = 0;
    if (i == 0)
        rc = ops_cuda_embed(c->tok_embd, c->d_idx + IX_TOK * c->max_tokens, rows, hp->n_embd, hp->embd_scale, c->x,
                            c->stream);
    else
        rc = layer_post(c, rows, pf_rows, i - 1);
    if (!rc && i < hp->n_layers) rc = layer_pre(c, rows, pf_rows, rowwise, i);
    return rc;
}

/* The graphs of bucket k, captured on first use. A capture that fails turns
 * graphs off (the step then runs its kernels directly). */
static int capture_bucket(model_cuda_t *c, int k) {
    const int L = c->m->hp.n_layers, rows = bucket_rows[k];
    cudaGraphExec_t *g = (cudaGraphExec_t *)calloc((size_t)L + 1, sizeof *g);
    if (!g) return LC_ENOMEM;
    for (int i = 0; i <= L; i++) {
        cudaGraph_t graph = NULL;
        CUDA_CHECK_RET(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
        int rc = piece(c, rows, 0, 1, i);
        cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
        if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&g[i], graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (rc || e != cudaSuccess) {
            cudaGetLastError();
            LC_WARN("cuda: capturing the decode graph of %d rows failed (%s); steps run without graphs", rows,
                    rc ? lc_strerror(rc) : cudaGetErrorString(e));
            for (int j = 0; j <= L; j++)
                if (g[j]) cudaGraphExecDestroy(g[j]);
            free(g);
            c->use_graphs = 0;
            return 0;
        }
    }
    c->graphs[k] = g;
    return 0;
}

/* The slice of logits row i (slice order) and the row's index in it. */
static const model_seq_t *lrow_slice(const model_cuda_t *c, const model_batch_t *b, int i, int *j) {
    *j = c->lrow_j[i];
    return &b->seqs[c->lrow_seq[i]];
}

static float *lrow_dst(const model_cuda_t *c, const model_batch_t *b, int i, int V) {
    int j;
    const model_seq_t *q = lrow_slice(c, b, i, &j);
    return q->logits + (size_t)j * V;
}

/* 1 when logits row i only asked for its argmax (or a draw). */
static int lrow_argmax_only(const model_cuda_t *c, const model_batch_t *b, int i) {
    int j;
    const model_seq_t *q = lrow_slice(c, b, i, &j);
    return q->argmax && q->logits_mode == MODEL_LOGITS_LAST;
}

/* Final norm and LM head for the rows some slice asked for, LOGIT_CHUNK rows
 * a matmul, copied from the device to the slices' host buffers on the
 * stream: one copy per chunk when the buffers follow each other (the
 * scheduler's, page-locked: no host copy, no wait between chunks), else one
 * per row. Rows that asked only for their argmax send 4 bytes instead. */
static int logits(model_cuda_t *c, const model_batch_t *b, const step_t *st) {
    const model_hparams_t *hp = &c->m->hp;
    const int V = hp->n_vocab, E = hp->n_embd;
    const int32_t *d_lrows = c->d_idx + IX_LROWS * c->max_tokens;
    if (!st->n_lrows) return 0;
    float *base = lrow_dst(c, b, 0, V);
    int contiguous = 1, n_argmax = 0, n_draw = 0;
    for (int i = 0; i < st->n_lrows; i++) {
        if (i && contiguous) contiguous = lrow_dst(c, b, i, V) == base + (size_t)i * V;
        int j;
        const model_seq_t *q = lrow_slice(c, b, i, &j);
        const int am = lrow_argmax_only(c, b, i), dr = am && q->draw_temperature > 0;
        n_argmax += am;
        n_draw += dr;
        c->h_invt[i] = dr ? 1.0f / q->draw_temperature : 0.0f; // the host sampler's 1 / T
        c->h_u[i] = dr ? q->draw_u : 0.0;
    }
    if (n_draw) {
        CUDA_CHECK_RET(cudaMemcpyAsync(c->d_invt, c->h_invt, (size_t)st->n_lrows * sizeof(float),
                                       cudaMemcpyHostToDevice, c->stream));
        CUDA_CHECK_RET(
            cudaMemcpyAsync(c->d_u, c->h_u, (size_t)st->n_lrows * sizeof(double), cudaMemcpyHostToDevice, c->stream));
    }
    for (int r0 = 0; r0 < st->n_lrows; r0 += LOGIT_CHUNK) {
        const int cnt = st->n_lrows - r0 < LOGIT_CHUNK ? st->n_lrows - r0 : LOGIT_CHUNK;
        int rc = ops_cuda_rmsnorm_bf16(c->x, d_lrows + r0, c->out_norm, c->xb, cnt, E, hp->rms_eps, c->stream);
        if (!rc) rc = ops_cuda_gemm_as(c->gemm, c->dec_mode, cnt, V, E, c->xb, c->output, c->logits, 1, 0, c->stream);
        if (!rc && hp->final_softcap > 0)
            rc = ops_cuda_softcap(c->logits, (size_t)cnt * V, hp->final_softcap, c->stream);
        if (!rc && n_argmax) rc = ops_cuda_argmax_rows(c->logits, cnt, V, c->d_argmax + r0, c->stream);
        if (!rc && n_draw)
            rc = ops_cuda_sample_rows(c->logits, cnt, V, c->d_invt + r0, c->d_u + r0, c->d_argmax + r0, c->stream);
        if (rc) return rc;
        int need = 0; // rows of the chunk that want their logits
        for (int i = 0; i < cnt; i++) need += !lrow_argmax_only(c, b, r0 + i);
        if (contiguous && need == cnt) {
            CUDA_CHECK_RET(cudaMemcpyAsync(base + (size_t)r0 * V, c->logits, (size_t)cnt * V * sizeof(float),
                                           cudaMemcpyDeviceToHost, c->stream));
            continue;
        }
        for (int i = 0; i < cnt && need; i++)
            if (!lrow_argmax_only(c, b, r0 + i))
                CUDA_CHECK_RET(cudaMemcpyAsync(lrow_dst(c, b, r0 + i, V), c->logits + (size_t)i * V,
                                               (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    }
    if (n_argmax) {
        CUDA_CHECK_RET(cudaMemcpyAsync(c->h_argmax, c->d_argmax, (size_t)st->n_lrows * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
        for (int i = 0; i < st->n_lrows; i++) {
            int j;
            const model_seq_t *q = lrow_slice(c, b, i, &j);
            if (q->argmax && q->logits_mode == MODEL_LOGITS_LAST) *q->argmax = c->h_argmax[i];
        }
    }
    return 0;
}

/* TidalDecode row e's keys over the step's layers: every key at a dense or
 * selection layer, the kept positions and the newest one after a selection
 * (counted as extra whenever the row keeps fewer than all: an upper bound by
 * one key per layer and head when the selection already holds it); a
 * sliding layer its window (a selection layer there: at the next global
 * layer, as run_tidal does). */
static double tidal_computed(const model_cuda_t *c, int e) {
    const model_hparams_t *hp = &c->m->hp;
    const int64_t len = c->t_kv_len[e], keep = attn_tidal_count(c->t_plan, e);
    double tok = 0;
    int selected = 0, due = 0, sel;
    for (int l = 0; l < hp->n_layers; l++) {
        const int sliding = hp->layer[l].window > 0;
        const attn_decode_method_t m = attn_decode_layer(&c->t_pol, l, due, &sel);
        due = attn_decode_due(&c->t_pol, l, sliding, due);
        if (sliding) {
            tok += (double)(len < c->window ? len : c->window);
            continue;
        }
        const int sparse = m == ATTN_DECODE_TIDAL && selected;
        tok += sparse && keep >= 0 ? (double)keep + (keep < len) : (double)len;
        selected |= sel;
    }
    return tok * hp->n_heads;
}

/* (A row at p sees min(p + 1, window) keys of a sliding layer.) */
double model_cuda__dense_pairs(const model_cuda_t *c, int64_t pos0, int64_t n, int globals) {
    const model_hparams_t *hp = &c->m->hp;
    const double lo = (double)pos0 + 1, hi = (double)(pos0 + n); // keys of the first and last row
    const double causal = 0.5 * (lo + hi) * (double)n, W = c->window;
    double win = causal; // sum of min(a, W) over a = lo .. hi
    if (W > 0 && hi > W) win = lo >= W ? W * (double)n : 0.5 * (lo + W) * (W - lo + 1) + W * (hi - W);
    double pairs = 0;
    for (int l = 0; l < hp->n_layers; l++) pairs += hp->layer[l].window > 0 ? win : globals ? causal : 0;
    return pairs * hp->n_heads;
}

/* The density counters: dense rows computed every pair (a sliding layer its
 * window's); a FlexPrefill slice
 * what its masks selected, an AnchorAttention slice what its windows, stripes
 * and own keys held (both counted on the GPU over the layers); a Quest row,
 * per layer, the pages its plan attended (the newest one partly); a
 * TidalDecode row what its selection kept. */
static void count_attention(const model_cuda_t *c, const model_batch_t *b, const step_t *st) {
    const model_hparams_t *hp = &c->m->hp;
    const int P = c->page_size;
    int e = 0, f = 0, t = 0; // Quest entries, prompt slices, TidalDecode entries, in slice order
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (model_cuda__cp_mode(c, s)) continue; // counted by model_cuda__cp_count
        const int quest = quest_policy(c, q) != NULL;
        const double n = q->n_tok, pairs = n * (double)q->pos0 + 0.5 * n * (n + 1.0);
        const double all = (double)hp->n_heads * hp->n_layers * pairs;
        const double dense = c->window ? model_cuda__dense_pairs(c, q->pos0, q->n_tok, 1) : all;
        if (!q->generated) { // (a sparse method's pairs: the global layers'; the sliding layers' windows beside them)
            const double windows = model_cuda__dense_pairs(c, q->pos0, q->n_tok, 0);
            const double computed = c->pf_flex[f]  ? (double)c->h_pairs[f] + windows
                                    : c->pf_anc[f] ? (double)c->h_pairs[c->max_seqs + 1 + f] + windows
                                                   : dense;
            if (q->attn) attn_state_count(q->attn, 0, computed, all);
            f++;
            continue;
        }
        if (!quest && tidal_policy(c, q)) {
            double computed = 0;
            for (int i = 0; i < q->n_tok; i++) computed += tidal_computed(c, t++);
            attn_state_count(q->attn, 1, computed, all);
            continue;
        }
        if (!quest) {
            if (q->attn) attn_state_count(q->attn, q->generated, dense, all);
            continue;
        }
        double computed = 0;
        for (int i = 0; i < q->n_tok; i++, e++) {
            const int64_t len = c->q_kv_len[e], np = (len + P - 1) / P;
            for (int l = 0; l < hp->n_layers; l++) {
                if (hp->layer[l].window > 0) { // a sliding layer: its window, dense
                    computed += (double)(len < c->window ? len : c->window) * hp->n_heads;
                    continue;
                }
                int j = 0;
                while (j < st->n_thr && c->q_thr[j] <= l) j++;
                const int64_t pages = attn_quest_count(c->qp[j], e);
                const double tok =
                    pages >= np || pages < 1 ? (double)len : (double)(pages - 1) * P + (double)(len - (np - 1) * P);
                computed += tok * hp->n_heads;
            }
        }
        attn_state_count(q->attn, 1, computed, all);
    }
}

extern "C" const char *model_cuda_failure(const model_cuda_t *c) { return c->failure[0] ? c->failure : NULL; }

/* After a failed step: drains the stream and clears a passing error; an
 * error that is still there afterwards sticks to the device. */
static void check_device(model_cuda_t *c) {
    cudaError_t e = cudaStreamSynchronize(c->stream);
    cudaGetLastError();
    if (e == cudaSuccess) return;
    cudaError_t again = cudaDeviceSynchronize();
    if (again == cudaSuccess) return;
    snprintf(c->failure, sizeof c->failure, "GPU %d is unusable after %s (%s)", c->device, cudaGetErrorName(again),
             cudaGetErrorString(again));
    LC_ERROR("cuda: %s; every request will fail until lacunad restarts", c->failure);
}

static int forward(model_cuda_t *c, const model_batch_t *b);

extern "C" int model_cuda_forward(model_cuda_t *c, const model_batch_t *b) {
    if (c->failure[0]) return LC_EDEVICE;
    c->stage = "checks";
    int rc = forward(c, b);
    if (rc) LC_WARN("cuda: a step failed in %s: %s", c->stage, lc_strerror(rc));
    if (rc == LC_EDEVICE || rc == LC_ENOMEM) check_device(c);
    return rc;
}

static int forward(model_cuda_t *c, const model_batch_t *b) {
    int rc = model__check_batch(c->m, &c->kvc, c->max_tokens, b, c->covered);
    if (rc) return rc;
    if (b->n_seqs > c->max_seqs) return LC_EINVAL;
    step_t st;
    model_cuda__prof_mark(c, 0);
    CUDA_CHECK_RET(cudaSetDevice(c->device));
    c->stage = "the context-parallel plans";
    if ((rc = model_cuda__cp_prepare(c, b))) return rc;
    c->stage = "the step's layout";
    if ((rc = build_step(c, b, &st))) return rc;
    if (st.bucket >= 0 && !c->graphs[st.bucket] && (rc = capture_bucket(c, st.bucket))) return rc;
    const cudaGraphExec_t *g = st.bucket >= 0 && c->use_graphs ? c->graphs[st.bucket] : NULL;
    const int rows = g ? bucket_rows[st.bucket] : st.rows;
    model_cuda__prof_mark(c, 1);
    model_cuda__prof_event(c, 0);
    const size_t pitch = (size_t)c->max_tokens * sizeof(int32_t); // each index array's first rows
    CUDA_CHECK_RET(cudaMemcpy2DAsync(c->d_idx, pitch, c->h_idx, pitch, (size_t)rows * sizeof(int32_t),
                                     (size_t)ix_arrays(c), cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK_RET(
        cudaMemcpyAsync(c->d_pos, c->h_pos, (size_t)rows * sizeof(int64_t), cudaMemcpyHostToDevice, c->stream));
    model_cuda__prof_mark(c, 2);
    c->stage = "the attention plans";
    if ((rc = model_cuda__plan_attention(c, &st)) || (rc = model_cuda__cp_rows(c, b))) return rc;
    c->stage = "a layer";
    model_cuda__prof_mark(c, 3);
    model_cuda__prof_event(c, 1);
    const int L = c->m->hp.n_layers;
    for (int i = 0; i <= L; i++) {
        if (g)
            CUDA_CHECK_RET(cudaGraphLaunch(g[i], c->stream));
        else if ((rc = piece(c, rows, st.n_pf_rows, st.rowwise, i)))
            return rc;
        model_cuda__prof_event(c, 2 + 2 * i);
        if (i < L && ((rc = summarize(c, &st, i)) || (rc = run_attention(c, &st, i)) ||
                      (c->stage = "a layer's context-parallel attention", rc = model_cuda__cp_layer(c, i))))
            return rc;
        c->stage = "a layer";
        if (i < L) model_cuda__prof_event(c, 3 + 2 * i);
    }
    model_cuda__prof_mark(c, 4);
    c->stage = "the logits";
    if (st.n_flex || st.n_anchor)
        CUDA_CHECK_RET(cudaMemcpyAsync(c->h_pairs, c->d_pairs,
                                       2 * ((size_t)c->max_seqs + 1) * sizeof(unsigned long long),
                                       cudaMemcpyDeviceToHost, c->stream));
    if ((rc = logits(c, b, &st))) return rc;
    model_cuda__prof_event(c, -1);
    model_cuda__prof_mark(c, 5);
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    model_cuda__prof_mark(c, 6);
    count_attention(c, b, &st);
    model_cuda__cp_count(c, b);
    model_cuda__prof_mark(c, 7);
    model_cuda__prof_step(c, st.n_pf_rows == 0, st.rows);
    return 0;
}
