/* The CPU executor: the batched forward pass on the host. All tokens of a
 * batch go through each weight matrix together (ops_matmul_w on the weights'
 * block format): prompt rows with the exact f32 kernels, generated rows with
 * the 8-bit activation kernels, each row's arithmetic its own. Attention is
 * planned once per step over every slice (attn_plan) and run per layer
 * (attn_run) on the f32 KV store this executor owns. The scratch, the store
 * and the plan's workspace are sized at creation or plan time; the layers of
 * a step allocate nothing. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/mem.h"
#include "common/status.h"
#include "kv/store.h"
#include "model/model_internal.h"

struct model_cpu {
    const model_t *m;
    int max_tokens, max_seqs;
    kv_store_t *store;
    int *lgroup, *lslot; // (n_layers) each layer's KV group and slot (model_kv_layers)
    attn_plan_t *plan;
    attn_seq_t *aseq;       // (max_seqs) the step's slices for the plan
    float *x;               // (T, n_embd) residual stream
    float *xb;              // (T, n_embd) normed input of a sub-layer
    float *q;               // (T, n_heads, head_dim)
    float *k;               // (T, n_kv_heads, head_dim)
    float *v;               // (T, n_kv_heads, head_dim)
    float *att;             // (T, n_heads, head_dim) attention output
    float *proj;            // (T, n_embd) output projection / FFN down result
    float *gate;            // (T, n_ff)
    float *up;              // (T, n_ff)
    int64_t *pos;           // (T) position of each token
    unsigned char *gen;     // (T) 1 where the token was generated (8-bit activation matmul)
    unsigned char *covered; // (T) batch validation scratch
    int *rows;              // (T) token indices whose logits are needed
    unsigned char *rgen;    // (T) kinds of those rows
    float **dst;            // (T) where each logits row goes
    float *lbuf;            // (MODEL_LOGIT_CHUNK, n_vocab) logits staging for multi-sequence batches
    model_attn_hook_cb hook;
    void *hook_ud;
    /* context parallelism (cp_n > 1): sequences whose KV reaches cp_min run
     * their attention on the rank threads (forward_cp.c) */
    int cp_n;
    int64_t cp_min;
    model_cp_t *cp;
    uint8_t *owner;     // (n_blocks) rank holding each store block
    int n_aseq, n_cseq; // the step's slices on the single-rank plan, and sharded
    cp_seq_t *cseq;     // (max_seqs) the sharded slices
    int *cidx;          // (max_seqs) their index in the batch
    uint8_t *sown;      // owners by sequence block of every sharded slice, back to back
    size_t cap_sown;
    pthread_mutex_t slock;           // guards what the metrics thread reads:
    int64_t kvb[MODEL_CP_MAX_RANKS]; // KV blocks in use per rank
    uint64_t sharded_rows;
};

/* ---- creation ------------------------------------------------------------------- */
model_cpu_t *model_cpu_create(const model_t *m, const kv_config_t *kvc, int max_tokens, int max_seqs, int cp_ranks,
                              int64_t cp_min_tokens) {
    if (!m || !kvc || max_tokens <= 0 || max_seqs <= 0 || cp_ranks > MODEL_CP_MAX_RANKS) return NULL;
    const model_hparams_t *hp = &m->hp;
    size_t T = (size_t)max_tokens, E = hp->n_embd, F = hp->n_ff;
    size_t QD = (size_t)hp->n_heads * hp->head_dim, KD = (size_t)hp->n_kv_heads * hp->head_dim;
    model_cpu_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->m = m;
    c->max_tokens = max_tokens;
    c->max_seqs = max_seqs;
    attn_shape_t shape = model_attn_shape(m);
    c->store = kv_store_create(kvc);
    c->lgroup = malloc((size_t)hp->n_layers * sizeof *c->lgroup);
    c->lslot = malloc((size_t)hp->n_layers * sizeof *c->lslot);
    if (c->lgroup && c->lslot) model_kv_layers(m, kvc, c->lgroup, c->lslot);
    c->plan = attn_plan_create(&shape, hp->n_layers);
    c->aseq = malloc((size_t)max_seqs * sizeof *c->aseq);
    c->x = lc_alloc64(T * E * sizeof(float));
    c->xb = lc_alloc64(T * E * sizeof(float));
    c->q = lc_alloc64(T * QD * sizeof(float));
    c->k = lc_alloc64(T * KD * sizeof(float));
    c->v = lc_alloc64(T * KD * sizeof(float));
    c->att = lc_alloc64(T * QD * sizeof(float));
    c->proj = lc_alloc64(T * E * sizeof(float));
    c->gate = lc_alloc64(T * F * sizeof(float));
    c->up = lc_alloc64(T * F * sizeof(float));
    c->pos = lc_alloc64(T * sizeof(int64_t));
    c->gen = lc_alloc64(T);
    c->covered = lc_alloc64(T);
    c->rows = lc_alloc64(T * sizeof(int));
    c->rgen = lc_alloc64(T);
    c->dst = lc_alloc64(T * sizeof(float *));
    c->lbuf = lc_alloc64((size_t)MODEL_LOGIT_CHUNK * hp->n_vocab * sizeof(float));
    pthread_mutex_init(&c->slock, NULL);
    if (!c->store || !c->lgroup || !c->lslot || !c->plan || !c->aseq || !c->x || !c->xb || !c->q || !c->k || !c->v ||
        !c->att || !c->proj || !c->gate || !c->up || !c->pos || !c->gen || !c->covered || !c->rows || !c->rgen ||
        !c->dst || !c->lbuf)
        goto fail;
    c->cp_n = cp_ranks > 1 ? cp_ranks : 1;
    c->cp_min = cp_min_tokens > 0 ? cp_min_tokens : 1;
    if (c->cp_n > 1) {
        c->cp = model_cp_create(&shape, hp, c->cp_n);
        c->owner = calloc((size_t)kvc->n_blocks, 1);
        c->cseq = calloc((size_t)max_seqs, sizeof *c->cseq);
        c->cidx = calloc((size_t)max_seqs, sizeof *c->cidx);
        if (!c->cp || !c->owner || !c->cseq || !c->cidx) goto fail;
    }
    return c;
fail:
    model_cpu_destroy(c);
    return NULL;
}

void model_cpu_destroy(model_cpu_t *c) {
    if (!c) return;
    kv_store_destroy(c->store);
    free(c->lgroup), free(c->lslot);
    attn_plan_destroy(c->plan);
    free(c->aseq);
    free(c->x), free(c->xb), free(c->q), free(c->k), free(c->v), free(c->att), free(c->proj);
    free(c->gate), free(c->up), free(c->pos), free(c->gen), free(c->covered), free(c->rows), free(c->rgen);
    free(c->dst), free(c->lbuf);
    model_cp_destroy(c->cp);
    free(c->owner), free(c->cseq), free(c->cidx), free(c->sown);
    pthread_mutex_destroy(&c->slock);
    free(c);
}

void model_cpu_set_attn_hook(model_cpu_t *c, model_attn_hook_cb cb, void *ud) {
    c->hook = cb;
    c->hook_ud = ud;
}

void model_cpu_copy_block(void *ud, int32_t dst, int32_t src) {
    model_cpu_t *c = ud;
    kv_store_copy(c->store, dst, src);
    if (c->owner) c->owner[dst] = c->owner[src];
}

/* ---- matmul ------------------------------------------------------------------- */
/* y = x · wᵀ for n rows, in runs of one kind: generated tokens (kind[r] = 1)
 * take the 8-bit activation kernels, prompt rows the exact f32 kernels. A
 * row's kind is a property of the row (did its own sequence generate the
 * token?), so its result depends only on its own sequence, never on what
 * else shares the batch.
 *   x: (n, w->cols)   y: (n, w->rows)   kind: (n) */
static int mm(float *y, const float *x, const ops_w_t *w, int n, const unsigned char *kind) {
    for (int r0 = 0; r0 < n;) {
        int r1 = r0 + 1;
        while (r1 < n && kind[r1] == kind[r0]) r1++;
        int rc = ops_matmul_w(y + (size_t)r0 * w->rows, x + (size_t)r0 * w->cols, w, r1 - r0,
                              kind[r0] ? OPS_MM_Q8 : OPS_MM_EXACT);
        if (rc) return rc;
        r0 = r1;
    }
    return 0;
}

/* mm for nw matrices on the same x (Q, K, V; gate, up) in one parallel
 * region per run of rows: the same results, fewer fork/joins per step.
 *   x: (n, w[i]->cols)   y[i]: (n, w[i]->rows) */
static int mm_n(int nw, float *const *y, const ops_w_t *const *w, const float *x, int n, const unsigned char *kind) {
    for (int r0 = 0; r0 < n;) {
        int r1 = r0 + 1;
        while (r1 < n && kind[r1] == kind[r0]) r1++;
        float *yr[OPS_MM_MAX_W];
        for (int i = 0; i < nw; i++) yr[i] = y[i] + (size_t)r0 * w[i]->rows;
        int rc =
            ops_matmul_w_multi(nw, yr, w, x + (size_t)r0 * w[0]->cols, r1 - r0, kind[r0] ? OPS_MM_Q8 : OPS_MM_EXACT);
        if (rc) return rc;
        r0 = r1;
    }
    return 0;
}

/* ---- attention ------------------------------------------------------------------ */
static attn_store_t store_view(model_cpu_t *c, int l) {
    const int slot = c->lslot[l];
    return (attn_store_t){
        .k = kv_store_k(c->store, slot),
        .v = kv_store_v(c->store, slot),
        .kmin = kv_store_kmin(c->store, slot),
        .kmax = kv_store_kmax(c->store, slot),
        .blk_stride = kv_store_block_stride(c->store),
        .sum_stride = kv_store_summary_stride(c->store),
        .block_size = kv_store_config(c->store)->block_size,
        .group = c->lgroup[l],
    };
}

/* ---- context parallelism ---------------------------------------------------------- */
static int sharded(const model_cpu_t *c, const model_seq_t *q) { return c->cp && q->pos0 + q->n_tok >= c->cp_min; }

/* Zig-zag units: whole blocks and whole blocks of a sparse prompt method,
 * so that every query block of the method lies on one rank. */
static int shard_align(int bs, const attn_state_t *st) {
    const attn_policy_t *pol = st ? attn_state_policy(st) : NULL;
    int m = pol && pol->block > 0 ? pol->block : 128, a = bs, b = m;
    while (b) {
        int t = a % b;
        a = b, b = t;
    }
    return bs / a * m;
}

/* The owners of a sharded slice's blocks by sequence block (so): earlier
 * blocks keep theirs; the blocks this step starts are dealt zig-zag (a
 * prompt slice) or in turn (generated tokens), and recorded per store
 * block of every layer group's table (a sequence block has one owner in all
 * of them). Group 0 keeps every position (kv.h). An unsharded slice's new
 * blocks belong to rank 0. */
static void assign_owners(model_cpu_t *c, const model_seq_t *q, uint8_t *so) {
    const kv_config_t *kc = kv_store_config(c->store);
    const int bs = kc->block_size, G = kv_config_groups(kc);
    const int64_t n_blk = (q->pos0 + q->n_tok + bs - 1) / bs, first = (q->pos0 + bs - 1) / bs;
    if (so) {
        const int32_t *blocks = q->kv->blocks;
        for (int64_t b = 0; b < n_blk; b++) so[b] = c->owner[blocks[b]];
        if (q->generated)
            for (int64_t b = first; b < n_blk; b++) so[b] = (uint8_t)cp_owner_next(c->cp_n, b);
        else
            cp_zigzag(c->cp_n, bs, shard_align(bs, q->attn), q->pos0, q->n_tok, so);
    }
    for (int g = 0; g < G; g++) {
        const int32_t *blocks = kv_seq_table(q->kv, g);
        for (int64_t b = first; b < n_blk; b++) c->owner[blocks[b]] = so ? so[b] : 0;
    }
}

/* Density counters of the sharded slices, from every rank's pairs. */
static void count_sharded(model_cpu_t *c, const model_batch_t *b) {
    const double H = c->m->hp.n_heads, L = c->m->hp.n_layers;
    uint64_t rows = 0;
    for (int i = 0; i < c->n_cseq; i++) {
        const model_seq_t *q = &b->seqs[c->cidx[i]];
        rows += (uint64_t)q->n_tok;
        if (!q->attn) continue;
        const double n = q->n_tok, q0 = (double)q->pos0;
        const double total = H * (n * q0 + 0.5 * n * (n + 1.0)) * L; // causal pairs, as the single-rank kernels count
        attn_state_count(q->attn, q->generated, model_cp_computed(c->cp, i), total);
    }
    pthread_mutex_lock(&c->slock);
    c->sharded_rows += rows;
    pthread_mutex_unlock(&c->slock);
}

void model_cpu_cp_account(model_cpu_t *c, const kv_pool_t *kv) {
    if (!c->cp) return;
    int64_t n[MODEL_CP_MAX_RANKS] = {0};
    const int64_t nb = kv_store_config(c->store)->n_blocks;
    for (int64_t b = 0; b < nb; b++)
        if (kv_pool_block_refs(kv, (int32_t)b) > 0) n[c->owner[b]]++;
    pthread_mutex_lock(&c->slock);
    memcpy(c->kvb, n, sizeof n);
    pthread_mutex_unlock(&c->slock);
}

void model_cpu_cp_stats(model_cpu_t *c, model_exec_cp_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->ranks = c->cp_n;
    if (!c->cp) return;
    out->min_tokens = c->cp_min;
    cp_timing_t t[MODEL_CP_MAX_RANKS];
    model_cp_timing(c->cp, t);
    pthread_mutex_lock(&c->slock);
    out->sharded_rows = c->sharded_rows;
    memcpy(out->kv_blocks, c->kvb, sizeof out->kv_blocks);
    pthread_mutex_unlock(&c->slock);
    for (int r = 0; r < c->cp_n; r++) {
        out->ring_steps[r] = t[r].ring_steps;
        out->steps_skipped[r] = t[r].steps_skipped;
        out->compute_s[r] = t[r].compute_s;
        out->wait_s[r] = t[r].wait_s;
        out->collective_s[r] = t[r].collective_s;
    }
}

/* Plans the step's attention: the single-rank plan over the unsharded
 * slices, the ranks' plans over the sharded ones. */
static int plan_attention(model_cpu_t *c, const model_batch_t *b) {
    const int bs = kv_store_config(c->store)->block_size;
    size_t need = 0;
    for (int s = 0; s < b->n_seqs; s++)
        if (sharded(c, &b->seqs[s])) need += (size_t)((b->seqs[s].pos0 + b->seqs[s].n_tok + bs - 1) / bs);
    if (need > c->cap_sown) {
        uint8_t *p = realloc(c->sown, need);
        if (!p) return LC_ENOMEM;
        c->sown = p;
        c->cap_sown = need;
    }
    size_t off = 0;
    c->n_aseq = c->n_cseq = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (!sharded(c, q)) {
            if (c->owner) assign_owners(c, q, NULL);
            c->aseq[c->n_aseq++] = (attn_seq_t){.tok0 = q->tok0,
                                                .n_tok = q->n_tok,
                                                .pos0 = q->pos0,
                                                .blocks = q->kv->blocks,
                                                .group_stride = (size_t)q->kv->cap,
                                                .state = q->attn,
                                                .decode = q->generated,
                                                .prompt_end = q->generated ? 0 : q->prompt_end};
            continue;
        }
        uint8_t *so = c->sown + off;
        off += (size_t)((q->pos0 + q->n_tok + bs - 1) / bs);
        assign_owners(c, q, so);
        c->cidx[c->n_cseq] = s;
        c->cseq[c->n_cseq++] = (cp_seq_t){.tok0 = q->tok0,
                                          .n_tok = q->n_tok,
                                          .pos0 = q->pos0,
                                          .blocks = q->kv->blocks,
                                          .group_stride = (size_t)q->kv->cap,
                                          .owner = so,
                                          .state = q->attn,
                                          .decode = q->generated,
                                          .prompt_end = q->generated ? 0 : q->prompt_end};
    }
    int rc = 0;
    if (c->n_aseq) {
        attn_batch_t ab = {.n_rows = b->n_tokens, .n_seqs = c->n_aseq, .seqs = c->aseq, .block_size = bs};
        rc = attn_plan(c->plan, &ab);
    }
    if (!rc && c->n_cseq) {
        cp_batch_t cb = {.n_rows = b->n_tokens, .n_seqs = c->n_cseq, .seqs = c->cseq, .block_size = bs};
#ifdef _OPENMP
        const int team = omp_get_max_threads();
#else
        const int team = 1;
#endif
        rc = model_cp_plan(c->cp, &cb, team);
    }
    return rc;
}

/* Writes the batch's K/V for layer l into the store (its group's blocks),
 * then runs attention for every slice into c->att. A sliding-window layer
 * (gemma3) attends its window whatever the slice's policy: the window is the
 * model's own. */
static int attention(model_cpu_t *c, const model_batch_t *b, int l) {
    const model_hparams_t *hp = &c->m->hp;
    size_t QD = (size_t)hp->n_heads * hp->head_dim, KD = (size_t)hp->n_kv_heads * hp->head_dim;
    const int group = c->lgroup[l], slot = c->lslot[l];
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        for (int i = 0; i < q->n_tok; i++) {
            size_t t = (size_t)q->tok0 + i;
            kv_store_write(c->store, q->kv, group, slot, q->pos0 + i, c->k + t * KD, c->v + t * KD);
        }
    }
    attn_store_t view = store_view(c, l);
    if (c->hook) {
        attn_shape_t shape = model_attn_shape(c->m);
        for (int s = 0; s < b->n_seqs; s++) {
            const model_seq_t *q = &b->seqs[s];
            attn_kv_t kv = {.k = view.k,
                            .v = view.v,
                            .kmin = view.kmin,
                            .kmax = view.kmax,
                            .blk_stride = view.blk_stride,
                            .sum_stride = view.sum_stride,
                            .blocks = kv_seq_table(q->kv, group),
                            .block_size = view.block_size,
                            .n_kv = q->pos0 + q->n_tok};
            c->hook(c->hook_ud, l, s, &shape, c->q + (size_t)q->tok0 * QD, q->n_tok, q->pos0, &kv);
        }
    }
    const int64_t window = c->m->hp.layer[l].window;
    int rc = c->n_aseq ? attn_run(c->plan, l, window, &view, c->q, c->att, NULL) : 0;
    if (!rc && c->n_cseq) rc = model_cp_run(c->cp, l, window, &view, c->q, c->att);
    return rc;
}

/* ---- logits ---------------------------------------------------------------------- */
/* Final norm and LM head for the rows some sequence asked for. Rows of all
 * sequences share each matmul (the LM head is the largest matrix: reading it
 * once per decode token of the batch would dominate), MODEL_LOGIT_CHUNK rows
 * at a time through a staging buffer; a single sequence writes directly. */
static int logits(model_cpu_t *c, const model_batch_t *b) {
    const model_t *m = c->m;
    int E = m->hp.n_embd, V = m->hp.n_vocab;
    int n = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        int cnt = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->logits_mode == MODEL_LOGITS_ALL ? q->n_tok : 0;
        for (int i = 0; i < cnt; i++) {
            c->rows[n] = q->tok0 + q->n_tok - cnt + i;
            c->dst[n] = q->logits + (size_t)i * V;
            n++;
        }
    }
    if (!n) return 0;
    for (int r = 0; r < n; r++) {
        ops_rmsnorm(c->xb + (size_t)r * E, c->x + (size_t)c->rows[r] * E, m->out_norm, 1, E, m->hp.rms_eps);
        c->rgen[r] = c->gen[c->rows[r]];
    }
    const float cap = m->hp.final_softcap;
    if (b->n_seqs == 1) {
        int rc = mm(c->dst[0], c->xb, &m->output, n, c->rgen);
        if (!rc && cap > 0) ops_softcap(c->dst[0], (size_t)n * V, cap);
        return rc;
    }
    for (int r0 = 0; r0 < n; r0 += MODEL_LOGIT_CHUNK) {
        int cnt = n - r0 < MODEL_LOGIT_CHUNK ? n - r0 : MODEL_LOGIT_CHUNK;
        int rc = mm(c->lbuf, c->xb + (size_t)r0 * E, &m->output, cnt, c->rgen + r0);
        if (rc) return rc;
        if (cap > 0) ops_softcap(c->lbuf, (size_t)cnt * V, cap);
        for (int i = 0; i < cnt; i++) memcpy(c->dst[r0 + i], c->lbuf + (size_t)i * V, (size_t)V * sizeof(float));
    }
    return 0;
}

/* ---- forward ------------------------------------------------------------------- */
int model__check_batch(const model_t *m, const kv_config_t *kvc, int max_tokens, const model_batch_t *b,
                       unsigned char *covered) {
    const model_hparams_t *hp = &m->hp;
    if (!b || b->n_tokens <= 0 || b->n_tokens > max_tokens || !b->tokens || b->n_seqs <= 0 || !b->seqs)
        return LC_EINVAL;
    for (int i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= hp->n_vocab) return LC_EINVAL;
    memset(covered, 0, (size_t)b->n_tokens);
    int n = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (q->n_tok <= 0 || q->tok0 < 0 || q->tok0 > b->n_tokens - q->n_tok || q->pos0 < 0 || !q->kv) return LC_EINVAL;
        if ((unsigned)q->logits_mode > MODEL_LOGITS_ALL || (q->logits_mode && !q->logits)) return LC_EINVAL;
        if ((int64_t)q->kv->n_blocks * kvc->block_size < q->pos0 + q->n_tok) return LC_EINVAL;
        if (q->kv->swa_lo > kv_config_swa_first(kvc, q->pos0)) return LC_EINVAL; // a window's blocks are gone
        for (int i = q->tok0; i < q->tok0 + q->n_tok; i++) {
            if (covered[i]) return LC_EINVAL;
            covered[i] = 1;
        }
        n += q->n_tok;
    }
    return n == b->n_tokens ? 0 : LC_EINVAL;
}

int model_cpu_forward(model_cpu_t *c, const model_batch_t *b) {
    if (b && b->n_seqs > c->max_seqs) return LC_EINVAL;
    int rc = model__check_batch(c->m, kv_store_config(c->store), c->max_tokens, b, c->covered);
    if (rc) return rc;
    const model_t *m = c->m;
    const model_hparams_t *hp = &m->hp;
    int T = b->n_tokens, E = hp->n_embd, F = hp->n_ff;

    for (int s = 0; s < b->n_seqs; s++)
        for (int i = 0; i < b->seqs[s].n_tok; i++) {
            c->pos[b->seqs[s].tok0 + i] = b->seqs[s].pos0 + i;
            c->gen[b->seqs[s].tok0 + i] = (unsigned char)(b->seqs[s].generated != 0);
        }
    if ((rc = plan_attention(c, b))) return rc;
    ops_embed(c->x, &m->tok_embd, b->tokens, T, hp->embd_scale);

    for (int l = 0; l < hp->n_layers; l++) {
        const model_layer_t *L = &m->layers[l];
        /* attention block */
        ops_rmsnorm(c->xb, c->x, L->attn_norm, T, E, hp->rms_eps);
        float *qkv[3] = {c->q, c->k, c->v};
        const ops_w_t *wqkv[3] = {&L->wq, &L->wk, &L->wv};
        if ((rc = mm_n(3, qkv, wqkv, c->xb, T, c->gen))) return rc;
        if (hp->qk_norm) { // gemma3
            ops_rmsnorm_heads(c->q, L->q_norm, T, hp->n_heads, hp->head_dim, hp->rms_eps);
            ops_rmsnorm_heads(c->k, L->k_norm, T, hp->n_kv_heads, hp->head_dim, hp->rms_eps);
        }
        const ops_rope_t *rope = hp->layer[l].window > 0 && m->rope_swa.cos ? &m->rope_swa : &m->rope;
        ops_rope(rope, c->q, T, c->pos, hp->n_heads, hp->head_dim, hp->rope_neox);
        ops_rope(rope, c->k, T, c->pos, hp->n_kv_heads, hp->head_dim, hp->rope_neox);
        if ((rc = attention(c, b, l))) return rc;
        if ((rc = mm(c->proj, c->att, &L->wo, T, c->gen))) return rc;
        if (hp->post_norms) ops_rmsnorm(c->proj, c->proj, L->post_attn_norm, T, E, hp->rms_eps);
        ops_add(c->x, c->proj, (size_t)T * E);
        /* feed-forward block (SwiGLU; gemma3: GeGLU) */
        ops_rmsnorm(c->xb, c->x, L->ffn_norm, T, E, hp->rms_eps);
        float *gu[2] = {c->gate, c->up};
        const ops_w_t *wgu[2] = {&L->w_gate, &L->w_up};
        if ((rc = mm_n(2, gu, wgu, c->xb, T, c->gen))) return rc;
        if (hp->ffn_geglu)
            ops_geglu_tanh(c->gate, c->up, (size_t)T * F);
        else
            ops_swiglu(c->gate, c->up, (size_t)T * F);
        if ((rc = mm(c->proj, c->gate, &L->w_down, T, c->gen))) return rc;
        if (hp->post_norms) ops_rmsnorm(c->proj, c->proj, L->post_ffn_norm, T, E, hp->rms_eps);
        ops_add(c->x, c->proj, (size_t)T * E);
    }
    if (c->n_cseq) count_sharded(c, b);
    return logits(c, b);
}
