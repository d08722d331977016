// Context parallelism in the CUDA executor (parallel.context = N on a GPU):
// a sequence whose KV reaches parallel.context_min_tokens runs its attention
// through the GPU ring (attn/cp/cp_cuda.h) over N device-local ranks of the
// executor's GPU (cp_comm_cuda.h), the rest of the step as before.
//
// What a step does with its sharded slices:
//  - before the rows are laid out (model_cuda__cp_prepare): which slices are
//    sharded; the owners of the blocks the step starts (a prompt slice's
//    zig-zag, in units of 128 positions so that the sparse methods' blocks
//    lie on one rank; a generated token's block in turn, by 128-position
//    unit; an unsharded slice's blocks to rank 0); every rank's plans: each
//    prompt slice's ring (FlexPrefill or AnchorAttention where the request
//    asked for it, else dense; pass-Q on a long cached prefix where it pays;
//    AnchorAttention's exchange is its own, cp_cuda.h) and the decode plans
//    of the sharded generated rows (the dense and Quest rows together, the
//    TidalDecode rows on plans of their own, so that no row's arithmetic
//    depends on the methods of the rows beside it). A slice whose ring cannot be planned (beyond the
//    plans' room, or a sparse method's block split by an earlier owner) runs
//    on the single-rank kernels instead (one GPU holds every rank's blocks)
//    or dense, with a warning once;
//  - the rows (model_cuda__cp_rows): the sharded slices' rows sit after the
//    single-rank plans' rows of their kind (prompt rows, generated rows),
//    so those plans' CSR stays contiguous; a gather index maps each
//    rank's rows (in the ring's order) to the step's rows;
//  - a sliding-window layer (Gemma 3's) runs no ring: the windowed
//    single-rank plans (exec_cuda_plan.cu) continue over the sharded rows,
//    since a row reads no more than its window and every rank's pages are in
//    this GPU's pool; a sliding group's blocks are held by the rank holding
//    the global block of the same positions (share_windows), so /metrics'
//    per-rank KV stays true to the positions each rank holds;
//  - every global layer (model_cuda__cp_layer), after the single-rank attention on
//    the executor's stream: the sharded rows' queries are gathered, the
//    rank threads (one per rank: the device communicator matches transfers
//    on the host) run the layer's ring and decode on their streams after an
//    event of the executor's stream, and the executor's stream waits for
//    their events before scattering the outputs back. Several sharded prompt
//    slices in one step run one after another, each rank planning each
//    again (plans hold one sequence);
//  - after the step (model_cuda__cp_count): density per request from the
//    ranks' pairs (FlexPrefill and AnchorAttention: the pairs counted on the
//    device; Quest and TidalDecode: their plans' counts), per-rank KV blocks
//    and ring timing for /metrics.
//
// exec_cuda_cp_make.cu makes the ranks (and, with parallel.devices, their
// pools on their GPUs); exec_cuda_cp.cuh has the state both files share.
#include "model/exec_cuda_cp.cuh"

/* ---- gather / scatter ----------------------------------------------------------------- */
/* dst row j = src row idx[j] (gather) or dst row idx[j] = src row j
 * (scatter); rows of `vecs` 16-byte vectors. */
static __global__ void rows_kernel(const uint4 *src, uint4 *dst, const int32_t *idx, int vecs, int scatter) {
    const int64_t j = blockIdx.x;
    const int64_t from = scatter ? j : idx[j], to = scatter ? idx[j] : j;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) dst[to * vecs + i] = src[from * vecs + i];
}

static int move_rows(const model_cuda_cp_t *x, const bf16_t *src, bf16_t *dst, int64_t rows, int scatter) {
    const model_hparams_t *hp = &x->c->m->hp;
    const int vecs = (int)((size_t)hp->n_heads * hp->head_dim * sizeof(bf16_t) / 16);
    if (rows <= 0) return 0;
    rows_kernel<<<(unsigned)rows, 128, 0, x->c->stream>>>((const uint4 *)src, (uint4 *)dst, x->d_idx, vecs, scatter);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

/* ---- rank threads ----------------------------------------------------------------------- */
/* A rank with a pool of its own works on copies of its rows in its GPU's
 * memory (sq, sout): its prompt rows and every decode row in (a rank reads
 * the rows it holds and the decode rows it owns), then the rows it writes
 * out (its prompt rows, the decode rows it owns), on its stream.
 * out = 0: in; 1: out. */
static int stage_rows(model_cuda_cp_t *x, int r, int out, cudaStream_t st) {
    const model_cuda_t *c = x->c;
    const size_t HD = (size_t)c->m->hp.n_heads * c->m->hp.head_dim, B = HD * sizeof(bf16_t);
    bf16_t *from = out ? x->sout[r] : x->cq, *to = out ? x->cout : x->sq[r];
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const int64_t end = i + 1 < x->n_pf ? x->pf[i + 1].off : x->pf_rows;
        const int64_t row = sl->off + sl->rank_off[r], last = r + 1 < x->n ? sl->off + sl->rank_off[r + 1] : end;
        if (last > row)
            CUDA_CHECK_RET(
                cudaMemcpyAsync(to + row * HD, from + row * HD, (size_t)(last - row) * B, cudaMemcpyDefault, st));
    }
    if (!x->n_dec) return 0;
    if (!out)
        return cudaMemcpyAsync(to + x->pf_rows * HD, from + x->pf_rows * HD, (size_t)x->n_dec * B, cudaMemcpyDefault,
                               st) == cudaSuccess
                   ? 0
                   : LC_EDEVICE;
    for (int i = 0; i < x->n_dec; i++) {
        const int own =
            i < x->n_oth ? cp_cuda_decode_owner(x->plans[r], i) : cp_cuda_decode_owner(x->tplans[r], i - x->n_oth);
        const size_t at = (size_t)(x->pf_rows + i) * HD;
        if (own == r) CUDA_CHECK_RET(cudaMemcpyAsync(to + at, from + at, B, cudaMemcpyDefault, st));
    }
    return 0;
}

static int run_rank(model_cuda_cp_t *x, int r) {
    model_cuda_t *c = x->c;
    const int l = x->layer;
    const size_t HD = (size_t)c->m->hp.n_heads * c->m->hp.head_dim;
    cp_cuda_plan_t *p = x->plans[r];
    cp_comm_t *cm = cp_dev_comm(x->group, r);
    cudaStream_t st = (cudaStream_t)cp_comm_stream(cm);
    const void *k = layer_k(c, l), *v = layer_v(c, l);
    if (x->pool[r]) { // the same layout, its own memory
        k = x->pool[r] + ((const char *)k - (const char *)c->kv_mem);
        v = x->pool[r] + ((const char *)v - (const char *)c->kv_mem);
    }
    CUDA_CHECK_RET(cudaStreamWaitEvent(st, x->ev_main, 0));
    bf16_t *cq = x->cq, *cout = x->cout;
    int rc = 0;
    if (x->sq[r]) {
        cq = x->sq[r], cout = x->sout[r];
        if ((rc = stage_rows(x, r, 0, st))) return rc;
    }
    const char *what = "a prompt slice's plan";
    for (int i = 0; i < x->n_pf && !rc; i++) {
        cp_slice_t *sl = &x->pf[i];
        what = "a prompt slice's plan";
        if ((x->n_pf > 1 || x->dirty) && (rc = cp_cuda_plan_prefill(p, &sl->seq, st))) break;
        const size_t row = (size_t)(sl->off + sl->rank_off[r]);
        what = "a prompt slice";
        rc = cp_cuda_run_prefill(p, cm, k, v, cq + row * HD, cout + row * HD, NULL);
        if (!rc && sl->sparse) { // the pairs of this slice (the plan counts since its creation)
            double now = 0;
            if (x->n_pf_sparse > 1 || l == x->last_global) {
                if ((rc = cp_cuda_sparse_pairs(p, st, &now))) break;
                sl->pairs[r] += now - x->last_pairs[r];
                x->last_pairs[r] = now;
            }
        }
    }
    bf16_t *q = cq + (size_t)x->pf_rows * HD, *o = cout + (size_t)x->pf_rows * HD;
    if (!rc && x->n_oth) { // the dense and Quest rows
        what = x->op == OP_QUEST ? "the Quest decode rows" : "the dense decode rows";
        if (x->op == OP_QUEST)
            rc = cp_cuda_run_decode_kv(p, cm, k, v, c->kmin + layer_sum(c, l), c->kmax + layer_sum(c, l), q, o, NULL);
        else
            rc = cp_cuda_run_decode(p, cm, k, v, q, o, NULL);
    }
    if (!rc && x->n_dec > x->n_oth) { // the TidalDecode rows, after them
        cp_cuda_plan_t *tp = x->tplans[r];
        what = "the TidalDecode rows";
        q += (size_t)x->n_oth * HD, o += (size_t)x->n_oth * HD;
        if (x->top == OP_DENSE)
            rc = cp_cuda_run_decode(tp, cm, k, v, q, o, NULL);
        else
            rc = cp_cuda_run_decode_tidal(tp, cm, k, v, q, o, NULL, x->top == OP_SELECT);
    }
    if (!rc && x->sq[r]) what = "the rows' way back", rc = stage_rows(x, r, 1, st);
    if (rc) LC_WARN("cuda: context-parallel rank %d, layer %d, %s: %s", r, l, what, lc_strerror(rc));
    if (!rc) CUDA_CHECK_RET(cudaEventRecord(x->ev_rank[r], st));
    return rc;
}

static int rank_job(void *ctx, int r) { return run_rank((model_cuda_cp_t *)ctx, r); }
// the peers return from their transfers instead of waiting for a failed rank
static void rank_abort(void *ctx) { cp_dev_abort(((model_cuda_cp_t *)ctx)->group); }
static void rank_init(void *ctx, int r) { cudaSetDevice(((model_cuda_cp_t *)ctx)->dev[r]); }
cp_team_ops_t model_cuda__cp_team_ops(model_cuda_cp_t *x) { return cp_team_ops_t{rank_job, rank_abort, rank_init, x}; }

/* Runs layer l on every rank; the first failing rank's status. */
static int run_ranks(model_cuda_cp_t *x, int l, int op, int top) {
    x->layer = l;
    x->op = op;
    x->top = top;
    const int rc = cp_team_run(x->team);
    if (rc) cp_dev_reset(x->group); // the step fails; the next one starts clean
    return rc;
}

/* ---- a step ------------------------------------------------------------------------------- */
/* Makes rank r's GPU current for the engine thread's calls into its plans
 * (on_rank(x, 0): the executor's again). */
static void on_rank(const model_cuda_cp_t *x, int r) {
    if (x->own && x->dev[r] != x->dev[0]) cudaSetDevice(x->dev[r]);
    if (x->own && r == 0) cudaSetDevice(x->dev[0]);
}
int model_cuda__cp_mode(const model_cuda_t *c, int s) { return c->cp ? c->cp->mode[s] : MODE_NONE; }

static const attn_policy_t *policy(const model_seq_t *q) { return q->attn ? attn_state_policy(q->attn) : NULL; }

/* A prompt slice on the ring: owners dealt, every rank planned, the rows
 * counted; MODE_NONE when its ring cannot be planned. */
static int plan_ring(model_cuda_cp_t *x, const model_seq_t *q, int s, uint8_t *so) {
    const attn_policy_t *pol = policy(q);
    cp_slice_t *sl = &x->pf[x->n_pf];
    memset(sl, 0, sizeof *sl);
    sl->s = s;
    sl->seq = cp_cuda_seq_t{q->pos0, q->n_tok, q->kv->blocks, so, x->ring_mode, NULL, NULL};
    const attn_policy_t *ap = pol && pol->prefill == ATTN_PREFILL_ANCHOR ? model_cuda__anchor_policy(q) : NULL;
    if (pol && pol->prefill == ATTN_PREFILL_FLEX) {
        sl->fpol = attn_cuda_flex_policy_t{pol->gamma,
                                           pol->tau,
                                           pol->min_budget,
                                           pol->max_budget,
                                           (int)(q->prompt_end > INT32_MAX ? 0 : q->prompt_end),
                                           pol->flex_select == ATTN_FLEX_BLOCKS};
        sl->seq.flex = &sl->fpol;
        sl->seq.mode = CP_CUDA_AUTO; // (pass-KV)
        sl->sparse = 1;
    } else if (ap) {
        sl->seq.mode = CP_CUDA_AUTO; // (its own exchange)
        sl->apol = attn_cuda_anchor_policy_t{ap->theta, ap->anchor_init, ap->anchor_local, ap->anchor_lookback,
                                             ap->anchor_probe};
        sl->seq.anchor = &sl->apol;
        sl->sparse = 1;
    }
    int rc = 0;
    for (int r = 0; r < x->n && !rc; r++) {
        cp_cuda_plan_t *p = x->plans[r];
        void *st = cp_comm_stream(cp_dev_comm(x->group, r));
        on_rank(x, r);
        rc = cp_cuda_plan_prefill(p, &sl->seq, st);
        on_rank(x, 0);
        if (rc == LC_EINVAL && sl->seq.flex) { // a 128-position block split by earlier owners: the dense ring
            if (!x->warned_flex++)
                LC_WARN("cuda: a sharded FlexPrefill prompt whose cached blocks split a 128-position block between "
                        "ranks prefills dense");
            sl->seq.flex = NULL;
            sl->sparse = 0;
            r = -1, rc = 0; // plan every rank again, dense
        }
    }
    if (rc == LC_EINVAL || rc == LC_ERANGE) {
        x->dirty = 1;
        if (sl->seq.anchor ? !x->warned_anchor++ : !x->warned_ring++)
            LC_WARN("cuda: a sharded %sslice (%lld tokens at %lld) does not fit the ring's plans (%s%s): it runs on "
                    "the single-rank kernels",
                    sl->seq.anchor ? "AnchorAttention " : "", (long long)q->n_tok, (long long)q->pos0, lc_strerror(rc),
                    sl->seq.anchor ? "; a 128-position block split between ranks, or no memory for its anchor_local"
                                   : "");
        return MODE_NONE;
    }
    if (rc) return rc;
    int64_t row = 0;
    for (int r = 0; r < x->n; r++) {
        sl->rank_off[r] = row;
        row += cp_cuda_prefill_rows(x->plans[r], NULL);
    }
    if (row != q->n_tok) return LC_EINVAL; // the ranks' rows cover the slice
    sl->off = x->pf_rows;
    /* cq row -> the slice's row (the step's row is added once the rows are laid out) */
    for (int r = 0; r < x->n; r++) {
        const int64_t nr = cp_cuda_prefill_rows(x->plans[r], x->pos);
        for (int64_t i = 0; i < nr; i++) x->h_idx[sl->off + sl->rank_off[r] + i] = (int32_t)(x->pos[i] - q->pos0);
    }
    x->pf_rows += q->n_tok;
    x->n_pf_sparse += sl->sparse;
    x->n_pf++;
    return MODE_RING;
}

/* The Quest budgets of layer l (dense below each row's dense_layers). */
static int quest_budgets(const model_cuda_cp_t *x, int l, int32_t *out) {
    int any = 0;
    for (int i = 0; i < x->n_oth; i++) {
        out[i] = x->ddl[i] >= 0 && l >= x->ddl[i] ? x->dbud[i] : 0;
        any |= out[i] > 0;
    }
    return any;
}

/* Plans the sharded dense and Quest rows on every rank (budgets: Quest's,
 * or NULL). */
static int plan_decode(model_cuda_cp_t *x, const int32_t *budget) {
    cp_cuda_dec_batch_t b = {x->n_oth, x->dkv_len, x->dindptr, x->dblocks, x->downer, budget, NULL};
    for (int r = 0; r < x->n; r++) {
        on_rank(x, r);
        int rc = cp_cuda_plan_decode(x->plans[r], &b, cp_comm_stream(cp_dev_comm(x->group, r)));
        on_rank(x, 0);
        if (rc) return rc;
    }
    for (int i = 0; budget && i < x->n_oth; i++) x->dcount[i] = budget[i] ? cp_cuda_decode_count(x->plans[0], i) : -1;
    return 0;
}

/* Plans the sharded TidalDecode rows (n_oth ..) on every rank's own plan. */
static int plan_tidal(model_cuda_cp_t *x) {
    const int n = x->n_dec - x->n_oth, b0 = x->dindptr[x->n_oth];
    for (int j = 0; j <= n; j++) x->tindptr[j] = x->dindptr[x->n_oth + j] - b0;
    cp_cuda_dec_batch_t b = {n,    x->dkv_len + x->n_oth, x->tindptr, x->dblocks + b0, x->downer + b0,
                             NULL, x->dtidal + x->n_oth};
    for (int r = 0; r < x->n; r++) {
        on_rank(x, r);
        int rc = cp_cuda_plan_decode(x->tplans[r], &b, cp_comm_stream(cp_dev_comm(x->group, r)));
        on_rank(x, 0);
        if (rc) return rc;
    }
    for (int j = 0; j < n; j++) x->dcount[x->n_oth + j] = cp_cuda_decode_count(x->tplans[0], j);
    return 0;
}

/* The sharded generated rows (a decode row, or each row of a recomputed
 * slice): the dense and Quest rows first, then the TidalDecode rows (in
 * batch order within each), their batches and plans. */
static int is_tidal(const model_cuda_cp_t *x, const model_seq_t *q) {
    const attn_policy_t *pol = q->attn ? attn_state_policy(q->attn) : NULL;
    return pol && pol->decode == ATTN_DECODE_TIDAL && x->c->tidal_ok;
}

static int plan_dec_rows(model_cuda_cp_t *x, const model_batch_t *b) {
    model_cuda_t *c = x->c;
    const int P = c->page_size;
    size_t blocks = 0;
    int k = 0;
    for (int pass = 0; pass < 2; pass++) // (qb_now, qb_then: scratch here)
        for (int i = 0; i < x->n_dec; i++)
            if (is_tidal(x, &b->seqs[x->dec_seq[i]]) == pass)
                x->qb_then[k] = x->dec_seq[i], x->qb_now[k++] = x->dec_off[i];
    for (int i = 0; i < x->n_dec; i++) {
        x->dec_seq[i] = x->qb_then[i];
        x->dec_off[i] = x->qb_now[i];
        blocks += (size_t)((b->seqs[x->dec_seq[i]].pos0 + x->dec_off[i] + 1 + P - 1) / P);
    }
    if (blocks > x->cap_dblk) {
        int32_t *nb = (int32_t *)realloc(x->dblocks, blocks * sizeof(int32_t));
        if (!nb) return LC_ENOMEM;
        x->dblocks = nb;
        uint8_t *no = (uint8_t *)realloc(x->downer, blocks);
        if (!no) return LC_ENOMEM;
        x->downer = no;
        x->cap_dblk = blocks;
    }
    x->dindptr[0] = 0;
    x->n_oth = x->n_dec;
    int quest = 0;
    for (int i = 0; i < x->n_dec; i++) {
        const model_seq_t *q = &b->seqs[x->dec_seq[i]];
        const attn_policy_t *pol = q->attn ? attn_state_policy(q->attn) : NULL;
        const int64_t len = q->pos0 + x->dec_off[i] + 1, nb = (len + P - 1) / P;
        x->dkv_len[i] = (int32_t)len;
        for (int64_t j = 0; j < nb; j++) {
            x->dblocks[x->dindptr[i] + j] = q->kv->blocks[j];
            x->downer[x->dindptr[i] + j] = x->owner[q->kv->blocks[j]];
        }
        x->dindptr[i + 1] = (int32_t)(x->dindptr[i] + nb);
        x->ddl[i] = -1;
        x->dtidal[i] = 1;
        x->dbud[i] = 0;
        if (pol && pol->decode == ATTN_DECODE_QUEST && c->quest_ok) {
            int64_t bud = ((int64_t)pol->decode_budget + P - 1) / P;
            x->dbud[i] = (int32_t)(bud < 1 ? 1 : bud);
            x->ddl[i] = pol->dense_layers;
            quest = 1;
        }
        if (is_tidal(x, q)) {
            if (x->n_oth == x->n_dec) x->n_oth = i, x->tpol = *pol;
            if (pol->dense_layers != x->tpol.dense_layers || pol->tidal_select_layer != x->tpol.tidal_select_layer ||
                pol->tidal_reselect_layer != x->tpol.tidal_reselect_layer)
                return LC_EINVAL; // the scheduler gives every request the server's schedule
            x->dtidal[i] = pol->decode_budget > 0 ? pol->decode_budget : 1; // beyond the room: LC_ERANGE
        }
        x->dcount[i] = -1;
        x->dcomputed[i] = 0;
    }
    x->t_selected = x->t_due = 0;
    x->dec_thr = -1;
    x->dec_kind = quest ? DEC_QUEST : DEC_DENSE;
    int rc = 0;
    if (x->n_oth && x->dec_kind == DEC_QUEST) {
        const int any = quest_budgets(x, 0, x->qb_now);
        x->dec_thr = any ? 0 : -1;
        rc = plan_decode(x, any ? x->qb_now : NULL);
    } else if (x->n_oth) {
        rc = plan_decode(x, NULL);
    }
    if (!rc && x->n_dec > x->n_oth) rc = plan_tidal(x);
    return rc;
}

/* The sliding groups' blocks k in [first, nb) of a sequence: held by the
 * rank holding its global block k (the same positions). Their attention
 * does not travel: every rank's pages are in this GPU's pool, and the
 * sliding layers run the windowed single-rank plans over every row (a row
 * reads no more than a window); the owners keep /metrics' per-rank KV true
 * to the positions each rank holds. */
static void share_windows(model_cuda_cp_t *x, const kv_seq_t *kv, int64_t first, int64_t nb) {
    const kv_config_t *kc = &x->c->kvc;
    for (int g = kc->n_full_groups; kv_config_groups(kc) > 1 && g < kc->n_groups; g++) {
        const int32_t *t = kv_seq_table(kv, g);
        for (int64_t k = first; k < nb; k++)
            if (t[k] >= 0) x->owner[t[k]] = x->owner[kv->blocks[k]];
    }
}

int model_cuda__cp_prepare(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    const int P = c->page_size, per = 128 / P;
    x->n_pf = x->n_pf_sparse = x->n_dec = x->n_oth = x->dirty = 0;
    x->pf_rows = 0;
    size_t need = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        need += (size_t)((q->pos0 + q->n_tok + P - 1) / P);
    }
    if (lc_grow((void **)&x->sown, &x->cap_sown, need + 1, 1)) return LC_ENOMEM;
    size_t off = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t nb = (q->pos0 + q->n_tok + P - 1) / P, first = (q->pos0 + P - 1) / P;
        const int32_t *blocks = q->kv->blocks;
        x->mode[s] = MODE_NONE;
        if (q->pos0 + q->n_tok < x->min_tokens) {
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = 0;
        } else if (q->generated) {
            /* decode rows (several when recomputed: each as it was decoded,
             * sched.h): a new block in turn, by 128-position unit */
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = (uint8_t)cp_owner_next(x->n, k / per);
            for (int i = 0; i < q->n_tok; i++, x->n_dec++) x->dec_seq[x->n_dec] = s, x->dec_off[x->n_dec] = i;
            x->mode[s] = MODE_DECODE;
        } else {
            uint8_t *so = x->sown + off;
            off += (size_t)nb;
            for (int64_t k = 0; k < nb; k++) so[k] = x->owner[blocks[k]];
            cp_zigzag(x->n, P, 128, q->pos0, q->n_tok, so);
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = so[k];
            const int m = plan_ring(x, q, s, so);
            if (m < 0) return m;
            x->mode[s] = (uint8_t)m;
        }
        share_windows(x, q->kv, first, nb);
    }
    if (x->n_dec) {
        int rc = plan_dec_rows(x, b);
        if (rc == LC_ERANGE || rc == LC_EINVAL) { // beyond the plans' room: the single-rank kernels
            if (!x->warned_ring++)
                LC_WARN("cuda: %d sharded decode rows do not fit the ring's plans (%s): they run on the single-rank "
                        "kernels",
                        x->n_dec, lc_strerror(rc));
            for (int i = 0; i < x->n_dec; i++) x->mode[x->dec_seq[i]] = MODE_NONE;
            x->n_dec = x->n_oth = 0;
        } else if (rc) {
            return rc;
        }
    }
    return 0;
}

int model_cuda__cp_rows(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    if (x->own) { // every row written into a block held by a rank with its own pool, sharded or not
        const int T = c->max_tokens;
        x->mir_rows = b->n_tokens;
        x->n_mir = 0;
        for (int i = 0; i < b->n_tokens; i++) {
            const int r = x->owner[c->h_idx[IX_PAGE * T + i]];
            x->h_mir[i] = x->pool[r] ? r : 0;
            x->n_mir += x->h_mir[i] > 0;
        }
        if (x->n_mir)
            CUDA_CHECK_RET(cudaMemcpyAsync(x->d_mir, x->h_mir, (size_t)b->n_tokens * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, c->stream));
    }
    if (!x->n_pf && !x->n_dec) return 0;
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const int64_t n = b->seqs[sl->s].n_tok;
        for (int64_t j = 0; j < n; j++) x->h_idx[sl->off + j] += c->row0[sl->s];
    }
    for (int i = 0; i < x->n_dec; i++) x->h_idx[x->pf_rows + i] = c->row0[x->dec_seq[i]] + x->dec_off[i];
    CUDA_CHECK_RET(cudaMemcpyAsync(x->d_idx, x->h_idx, (size_t)(x->pf_rows + x->n_dec) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
    return 0;
}

/* The decode runs of layer l: the dense and Quest rows' (op), re-planning
 * Quest's budgets where they change, and the TidalDecode rows' (top). */
static int decode_op(model_cuda_cp_t *x, int l, int *op, int *top) {
    *op = *top = OP_DENSE;
    if (x->n_dec > x->n_oth) {
        int sel; // a selection layer is dense (with the selection after it; t_due: a sliding one's, made here)
        const int tidal = attn_decode_layer(&x->tpol, l, x->t_due, &sel) == ATTN_DECODE_TIDAL;
        x->t_due = attn_decode_due(&x->tpol, l, 0, x->t_due);
        if (sel) {
            *top = OP_SELECT;
            x->t_selected = 1;
        } else if (tidal && x->t_selected) {
            *top = OP_ATTEND;
        }
    }
    if (!x->n_oth || x->dec_kind != DEC_QUEST) return 0;
    const int any = quest_budgets(x, l, x->qb_now);
    int rc = 0, changed = any != (x->dec_thr >= 0);
    if (!changed && any) {
        quest_budgets(x, x->dec_thr, x->qb_then);
        changed = memcmp(x->qb_now, x->qb_then, sizeof(int32_t) * (size_t)x->n_oth) != 0;
    }
    if (changed) {
        rc = plan_decode(x, any ? x->qb_now : NULL);
        x->dec_thr = any ? l : -1;
    }
    *op = any ? OP_QUEST : OP_DENSE;
    return rc;
}

int model_cuda__cp_layer(model_cuda_t *c, int l) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    int rc;
    if (c->m->hp.layer[l].window <= 0 && (rc = model_cuda__cp_mirror(x, l)))
        return rc; // the ranks read global layers only
    if (!x->n_pf && !x->n_dec) return 0;
    const int64_t rows = x->pf_rows + x->n_dec;
    int op = OP_DENSE, top = OP_DENSE;
    if (c->m->hp.layer[l].window > 0) { // a sliding layer: the windowed plans ran every row (share_windows)
        if (x->n_dec > x->n_oth) x->t_due = attn_decode_due(&x->tpol, l, 1, x->t_due); // the next global layer selects
        for (int i = 0; i < x->n_dec; i++)
            x->dcomputed[i] += (double)(x->dkv_len[i] < c->window ? x->dkv_len[i] : c->window) * c->m->hp.n_heads;
        return 0;
    }
    if (x->n_dec && (rc = decode_op(x, l, &op, &top))) {
        LC_WARN("cuda: layer %d: the sharded decode rows' plan (Quest's budgets) failed: %s", l, lc_strerror(rc));
        return rc;
    }
    /* Quest pairs of this layer per row (the plan's count as planned now) */
    for (int i = 0; i < x->n_dec; i++) {
        const int64_t len = x->dkv_len[i], np = (len + c->page_size - 1) / c->page_size;
        double tok = (double)len;
        const int o = i < x->n_oth ? op : top;
        if (o == OP_QUEST && x->dbud[i] && l >= x->ddl[i] && x->ddl[i] >= 0) {
            const int64_t pages = x->dcount[i];
            if (pages >= 1 && pages < np)
                tok = (double)(pages - 1) * c->page_size + (double)(len - (np - 1) * c->page_size);
        }
        if (o == OP_ATTEND && x->dcount[i] >= 0) tok = (double)x->dcount[i] + (x->dcount[i] < len);
        x->dcomputed[i] += tok * c->m->hp.n_heads;
    }
    if ((rc = move_rows(x, c->q, x->cq, rows, 0))) return rc;
    CUDA_CHECK_RET(cudaEventRecord(x->ev_main, c->stream));
    if ((rc = run_ranks(x, l, op, top))) {
        LC_WARN("cuda: layer %d: a context-parallel rank failed (%d prompt slices, %d decode rows, %d TidalDecode): %s",
                l, x->n_pf, x->n_oth, x->n_dec - x->n_oth, lc_strerror(rc));
        return rc;
    }
    for (int r = 0; r < x->n; r++) CUDA_CHECK_RET(cudaStreamWaitEvent(c->stream, x->ev_rank[r], 0));
    return move_rows(x, x->cout, c->att, rows, 1);
}

/* After the step (the stream drained): the sharded slices' density and the
 * counters. */
void model_cuda__cp_count(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    const model_hparams_t *hp = &c->m->hp;
    uint64_t rows = 0;
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const model_seq_t *q = &b->seqs[sl->s];
        rows += (uint64_t)q->n_tok;
        if (!q->attn) continue;
        const double n = q->n_tok,
                     all = (double)hp->n_heads * hp->n_layers * (n * (double)q->pos0 + 0.5 * n * (n + 1.0));
        double computed = c->window ? model_cuda__dense_pairs(c, q->pos0, q->n_tok, 1) : all;
        if (sl->sparse) { // the global layers' pairs the ranks counted, the sliding layers' windows beside them
            computed = c->window ? model_cuda__dense_pairs(c, q->pos0, q->n_tok, 0) : 0;
            for (int r = 0; r < x->n; r++) computed += sl->pairs[r];
        }
        attn_state_count(q->attn, q->generated, computed, all);
    }
    for (int i = 0; i < x->n_dec; i++) {
        const model_seq_t *q = &b->seqs[x->dec_seq[i]];
        rows++;
        if (!q->attn) continue;
        const double all = (double)hp->n_heads * hp->n_layers * (double)(q->pos0 + x->dec_off[i] + 1);
        attn_state_count(q->attn, 1, x->dcomputed[i], all);
    }
    pthread_mutex_lock(&x->slock);
    x->sharded_rows += rows;
    for (int r = 0; r < x->n; r++) {
        x->t[r] = *cp_cuda_plan_timing(x->plans[r]);
        if (!x->tplans[r]) continue;
        const cp_timing_t *t = cp_cuda_plan_timing(x->tplans[r]);
        x->t[r].compute_s += t->compute_s;
        x->t[r].wait_s += t->wait_s;
        x->t[r].collective_s += t->collective_s;
        x->t[r].decode_pairs += t->decode_pairs;
    }
    pthread_mutex_unlock(&x->slock);
}

extern "C" void model_cuda_cp_account(model_cuda_t *c, const kv_pool_t *kv) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    int64_t n[CP_MAX_RANKS] = {0};
    for (int64_t p = 0; p < c->n_pages; p++)
        if (kv_pool_block_refs(kv, (int32_t)p) > 0) n[x->owner[p]]++;
    pthread_mutex_lock(&x->slock);
    memcpy(x->kvb, n, sizeof(int64_t) * (size_t)x->n);
    pthread_mutex_unlock(&x->slock);
}

extern "C" void model_cuda_cp_stats(model_cuda_t *c, model_exec_cp_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->ranks = 1;
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    out->ranks = x->n;
    out->min_tokens = x->min_tokens;
    out->max_decode_rows = x->max_dec;
    pthread_mutex_lock(&x->slock);
    out->sharded_rows = x->sharded_rows;
    for (int r = 0; r < x->n; r++) {
        out->kv_blocks[r] = x->kvb[r];
        out->ring_steps[r] = x->t[r].ring_steps;
        out->steps_skipped[r] = x->t[r].steps_skipped;
        out->compute_s[r] = x->t[r].compute_s;
        out->wait_s[r] = x->t[r].wait_s;
        out->collective_s[r] = x->t[r].collective_s;
    }
    pthread_mutex_unlock(&x->slock);
}
