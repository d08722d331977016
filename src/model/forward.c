/* The CPU executor: the batched forward pass on the host. All tokens of a
 * batch go through each weight matrix together (ops_matmul_w on the weights'
 * block format): prompt rows with the exact f32 kernels, generated rows with
 * the 8-bit activation kernels, each row's arithmetic its own. Attention is
 * planned once per step over every slice (attn_plan) and run per layer
 * (attn_run) on the f32 KV store this executor owns. The scratch, the store
 * and the plan's workspace are sized at creation or plan time; the layers of
 * a step allocate nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"
#include "common/status.h"
#include "kv/store.h"
#include "model/model_internal.h"

struct model_cpu {
    const model_t *m;
    int max_tokens, max_seqs;
    kv_store_t *store;
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
};

/* ---- creation ------------------------------------------------------------------- */
model_cpu_t *model_cpu_create(const model_t *m, const kv_config_t *kvc, int max_tokens, int max_seqs) {
    if (!m || !kvc || max_tokens <= 0 || max_seqs <= 0) return NULL;
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
    if (!c->store || !c->plan || !c->aseq || !c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->proj ||
        !c->gate || !c->up || !c->pos || !c->gen || !c->covered || !c->rows || !c->rgen || !c->dst || !c->lbuf) {
        model_cpu_destroy(c);
        return NULL;
    }
    return c;
}

void model_cpu_destroy(model_cpu_t *c) {
    if (!c) return;
    kv_store_destroy(c->store);
    attn_plan_destroy(c->plan);
    free(c->aseq);
    free(c->x), free(c->xb), free(c->q), free(c->k), free(c->v), free(c->att), free(c->proj);
    free(c->gate), free(c->up), free(c->pos), free(c->gen), free(c->covered), free(c->rows), free(c->rgen);
    free(c->dst), free(c->lbuf);
    free(c);
}

void model_cpu_set_attn_hook(model_cpu_t *c, model_attn_hook_cb cb, void *ud) {
    c->hook = cb;
    c->hook_ud = ud;
}

void model_cpu_copy_block(void *c, int32_t dst, int32_t src) { kv_store_copy(((model_cpu_t *)c)->store, dst, src); }

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
    return (attn_store_t){
        .k = kv_store_k(c->store, l),
        .v = kv_store_v(c->store, l),
        .kmin = kv_store_kmin(c->store, l),
        .kmax = kv_store_kmax(c->store, l),
        .blk_stride = kv_store_block_stride(c->store),
        .sum_stride = kv_store_summary_stride(c->store),
        .block_size = kv_store_config(c->store)->block_size,
    };
}

/* Plans the step's attention: one slice per sequence. */
static int plan_attention(model_cpu_t *c, const model_batch_t *b) {
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        c->aseq[s] = (attn_seq_t){.tok0 = q->tok0,
                                  .n_tok = q->n_tok,
                                  .pos0 = q->pos0,
                                  .blocks = q->kv->blocks,
                                  .state = q->attn,
                                  .decode = q->generated};
    }
    attn_batch_t ab = {.n_rows = b->n_tokens,
                       .n_seqs = b->n_seqs,
                       .seqs = c->aseq,
                       .block_size = kv_store_config(c->store)->block_size};
    return attn_plan(c->plan, &ab);
}

/* Writes the batch's K/V for layer l into the store, then runs attention for
 * every slice into c->att. A sliding-window layer (gemma3) attends its window
 * whatever the slice's policy: the window is the model's own. */
static int attention(model_cpu_t *c, const model_batch_t *b, int l) {
    const model_hparams_t *hp = &c->m->hp;
    size_t QD = (size_t)hp->n_heads * hp->head_dim, KD = (size_t)hp->n_kv_heads * hp->head_dim;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        for (int i = 0; i < q->n_tok; i++) {
            size_t t = (size_t)q->tok0 + i;
            kv_store_write(c->store, q->kv, l, q->pos0 + i, c->k + t * KD, c->v + t * KD);
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
                            .blocks = q->kv->blocks,
                            .block_size = view.block_size,
                            .n_kv = q->pos0 + q->n_tok};
            c->hook(c->hook_ud, l, s, &shape, c->q + (size_t)q->tok0 * QD, q->n_tok, q->pos0, &kv);
        }
    }
    return attn_run(c->plan, l, c->m->hp.layer[l].window, &view, c->q, c->att, NULL);
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
    return logits(c, b);
}
