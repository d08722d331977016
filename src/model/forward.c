/* The batched forward pass. All tokens of a batch go through each weight
 * matrix in one matmul (ops_matmul_w, reading the weights' block format);
 * attention runs per sequence slice over the paged KV cache (prefill or
 * decode kernel, the slice's own policy). Scratch lives in
 * model_ctx_t so that a step allocates nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/model_internal.h"

/* ---- scratch ------------------------------------------------------------------- */
static void *amalloc(size_t n) {
    void *p = NULL;
    return posix_memalign(&p, 64, n ? n : 64) ? NULL : p;
}

model_ctx_t *model_ctx_create(const model_t *m, int max_tokens) {
    if (!m || max_tokens <= 0) return NULL;
    const model_hparams_t *hp = &m->hp;
    size_t T = (size_t)max_tokens, E = hp->n_embd, F = hp->n_ff;
    size_t QD = (size_t)hp->n_heads * hp->head_dim, KD = (size_t)hp->n_kv_heads * hp->head_dim;
    model_ctx_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->m = m;
    c->max_tokens = max_tokens;
    c->x = amalloc(T * E * sizeof(float));
    c->xb = amalloc(T * E * sizeof(float));
    c->q = amalloc(T * QD * sizeof(float));
    c->k = amalloc(T * KD * sizeof(float));
    c->v = amalloc(T * KD * sizeof(float));
    c->att = amalloc(T * QD * sizeof(float));
    c->proj = amalloc(T * E * sizeof(float));
    c->gate = amalloc(T * F * sizeof(float));
    c->up = amalloc(T * F * sizeof(float));
    c->pos = amalloc(T * sizeof(int64_t));
    c->rows = amalloc(T * sizeof(int));
    c->lbuf = amalloc((size_t)MODEL_LOGIT_CHUNK * hp->n_vocab * sizeof(float));
    c->mark = amalloc(T);
    c->q8row = amalloc(T);
    c->dst = amalloc(T * sizeof(float *));
    if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->proj || !c->gate || !c->up || !c->pos ||
        !c->rows || !c->lbuf || !c->mark || !c->q8row || !c->dst) {
        model_ctx_destroy(c);
        return NULL;
    }
    return c;
}

void model_ctx_destroy(model_ctx_t *c) {
    if (!c) return;
    free(c->x), free(c->xb), free(c->q), free(c->k), free(c->v), free(c->att), free(c->proj);
    free(c->gate), free(c->up), free(c->pos), free(c->rows), free(c->lbuf), free(c->mark);
    free(c->q8row);
    free(c->dst);
    free(c);
}

void model_ctx_set_attn_hook(model_ctx_t *c, model_attn_hook_cb cb, void *ud) {
    c->hook = cb;
    c->hook_ud = ud;
}

/* ---- validation ---------------------------------------------------------------- */
static int check_batch(model_ctx_t *c, kv_pool_t *kv, const model_batch_t *b) {
    const model_hparams_t *hp = &c->m->hp;
    if (!kv || !b || b->n_tokens <= 0 || b->n_tokens > c->max_tokens || !b->tokens || b->n_seqs <= 0 || !b->seqs)
        return LC_EINVAL;
    const kv_config_t *cfg = kv_pool_config(kv);
    if (cfg->n_layers != hp->n_layers || cfg->n_kv_heads != hp->n_kv_heads || cfg->head_dim != hp->head_dim)
        return LC_EINVAL;
    for (int i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= hp->n_vocab) return LC_EINVAL;
    memset(c->mark, 0, (size_t)b->n_tokens);
    int covered = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (q->n_tok <= 0 || q->tok0 < 0 || q->tok0 > b->n_tokens - q->n_tok || q->pos0 < 0 || !q->kv) return LC_EINVAL;
        if (q->decode && q->n_tok != 1) return LC_EINVAL;
        if (q->logits_mode < 0 || q->logits_mode > 2 || (q->logits_mode && !q->logits)) return LC_EINVAL;
        if ((int64_t)q->kv->n_blocks * cfg->block_size < q->pos0 + q->n_tok) return LC_EINVAL;
        for (int i = q->tok0; i < q->tok0 + q->n_tok; i++) {
            if (c->mark[i]) return LC_EINVAL;
            c->mark[i] = 1;
        }
        covered += q->n_tok;
    }
    return covered == b->n_tokens ? 0 : LC_EINVAL;
}

/* ---- matmul ------------------------------------------------------------------- */
/* y = x · wᵀ for n rows, in runs of one kind: decode tokens (kind[r] = 1)
 * take the 8-bit activation kernels, prefill rows the exact f32 path. So a
 * row's result depends only on its own sequence's step, never on what else
 * shares the batch (continuous batching stays deterministic).
 *   x: (n, w->cols)   y: (n, w->rows)   kind: (n) */
static int mm(float *y, const float *x, const ops_w_t *w, int n, const unsigned char *kind) {
    for (int r0 = 0; r0 < n;) {
        int r1 = r0 + 1;
        while (r1 < n && kind[r1] == kind[r0]) r1++;
        int rc = ops_matmul_w(y + (size_t)r0 * w->rows, x + (size_t)r0 * w->cols, w, r1 - r0,
                              kind[r0] ? OPS_MM_Q8 : OPS_MM_F32);
        if (rc) return rc;
        r0 = r1;
    }
    return 0;
}

/* ---- attention ------------------------------------------------------------------ */
/* Writes the batch's K/V for layer l into the cache, then runs attention for
 * every slice into c->att. A sliding-window layer (gemma3) runs the sliding
 * kernels whatever the slice's policy: the window is the model's own. */
static int attention(model_ctx_t *c, kv_pool_t *kv, const model_batch_t *b, int l) {
    const model_hparams_t *hp = &c->m->hp;
    size_t QD = (size_t)hp->n_heads * hp->head_dim, KD = (size_t)hp->n_kv_heads * hp->head_dim;
    attn_shape_t shape = model_attn_shape(c->m);
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        for (int i = 0; i < q->n_tok; i++) {
            size_t t = (size_t)q->tok0 + i;
            kv_write(kv, q->kv, l, q->pos0 + i, c->k + t * KD, c->v + t * KD);
        }
    }
    attn_kv_t view = {
        .k = kv_layer_k(kv, l),
        .v = kv_layer_v(kv, l),
        .kmin = kv_layer_kmin(kv, l),
        .kmax = kv_layer_kmax(kv, l),
        .blk_stride = kv_block_stride(kv),
        .sum_stride = kv_summary_stride(kv),
        .block_size = kv_pool_config(kv)->block_size,
    };
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        view.blocks = q->kv->blocks;
        view.n_kv = q->pos0 + q->n_tok;
        const float *qr = c->q + (size_t)q->tok0 * QD;
        float *out = c->att + (size_t)q->tok0 * QD;
        int rc;
        if (c->hook) c->hook(c->hook_ud, l, s, &shape, qr, q->n_tok, q->pos0, &view);
        const int64_t win = hp->layer[l].window;
        if (win > 0)
            rc = q->decode ? attn_decode_sliding(&shape, qr, &view, win, out, NULL)
                           : attn_prefill_sliding(&shape, qr, q->n_tok, q->pos0, &view, win, out, NULL);
        else if (q->decode)
            rc = q->attn ? attn_decode(&shape, q->attn, l, qr, &view, out, NULL)
                         : attn_decode_dense(&shape, qr, &view, out, NULL);
        else
            rc = q->attn ? attn_prefill(&shape, q->attn, l, qr, q->n_tok, q->pos0, &view, out, NULL)
                         : attn_prefill_dense(&shape, qr, q->n_tok, q->pos0, &view, out, NULL);
        if (rc) return rc;
    }
    return 0;
}

/* ---- logits ---------------------------------------------------------------------- */
/* Final norm and LM head for the rows some sequence asked for. Rows of all
 * sequences share each matmul (the LM head is the largest matrix: reading it
 * once per decode token of the batch would dominate), MODEL_LOGIT_CHUNK rows
 * at a time through a staging buffer; a single sequence writes directly. */
static int logits(model_ctx_t *c, const model_batch_t *b) {
    const model_t *m = c->m;
    int E = m->hp.n_embd, V = m->hp.n_vocab;
    int n = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        int cnt = q->logits_mode == 1 ? 1 : q->logits_mode == 2 ? q->n_tok : 0;
        for (int i = 0; i < cnt; i++) {
            c->rows[n] = q->tok0 + q->n_tok - cnt + i;
            c->dst[n] = q->logits + (size_t)i * V;
            n++;
        }
    }
    if (!n) return 0;
    for (int r = 0; r < n; r++) {
        ops_rmsnorm(c->xb + (size_t)r * E, c->x + (size_t)c->rows[r] * E, m->out_norm, 1, E, m->hp.rms_eps);
        c->mark[r] = c->q8row[c->rows[r]]; // kinds of the gathered rows
    }
    const float cap = m->hp.final_softcap;
    if (b->n_seqs == 1) {
        int rc = mm(c->dst[0], c->xb, &m->output, n, c->mark);
        if (!rc && cap > 0) ops_softcap(c->dst[0], (size_t)n * V, cap);
        return rc;
    }
    for (int r0 = 0; r0 < n; r0 += MODEL_LOGIT_CHUNK) {
        int cnt = n - r0 < MODEL_LOGIT_CHUNK ? n - r0 : MODEL_LOGIT_CHUNK;
        int rc = mm(c->lbuf, c->xb + (size_t)r0 * E, &m->output, cnt, c->mark + r0);
        if (rc) return rc;
        if (cap > 0) ops_softcap(c->lbuf, (size_t)cnt * V, cap);
        for (int i = 0; i < cnt; i++) memcpy(c->dst[r0 + i], c->lbuf + (size_t)i * V, (size_t)V * sizeof(float));
    }
    return 0;
}

/* ---- forward ------------------------------------------------------------------- */
int model_forward(model_ctx_t *c, kv_pool_t *kv, const model_batch_t *b) {
    int rc = check_batch(c, kv, b);
    if (rc) return rc;
    const model_t *m = c->m;
    const model_hparams_t *hp = &m->hp;
    int T = b->n_tokens, E = hp->n_embd, F = hp->n_ff;

    for (int s = 0; s < b->n_seqs; s++)
        for (int i = 0; i < b->seqs[s].n_tok; i++) {
            c->pos[b->seqs[s].tok0 + i] = b->seqs[s].pos0 + i;
            c->q8row[b->seqs[s].tok0 + i] = (unsigned char)(b->seqs[s].decode != 0);
        }
    ops_embed(c->x, &m->tok_embd, b->tokens, T, hp->embd_scale);

    for (int l = 0; l < hp->n_layers; l++) {
        const model_layer_t *L = &m->layers[l];
        /* attention block */
        ops_rmsnorm(c->xb, c->x, L->attn_norm, T, E, hp->rms_eps);
        if ((rc = mm(c->q, c->xb, &L->wq, T, c->q8row))) return rc;
        if ((rc = mm(c->k, c->xb, &L->wk, T, c->q8row))) return rc;
        if ((rc = mm(c->v, c->xb, &L->wv, T, c->q8row))) return rc;
        if (hp->qk_norm) { // gemma3
            ops_rmsnorm_heads(c->q, L->q_norm, T, hp->n_heads, hp->head_dim, hp->rms_eps);
            ops_rmsnorm_heads(c->k, L->k_norm, T, hp->n_kv_heads, hp->head_dim, hp->rms_eps);
        }
        const ops_rope_t *rope = hp->layer[l].window > 0 && m->rope_swa.cos ? &m->rope_swa : &m->rope;
        ops_rope(rope, c->q, T, c->pos, hp->n_heads, hp->head_dim, hp->rope_neox);
        ops_rope(rope, c->k, T, c->pos, hp->n_kv_heads, hp->head_dim, hp->rope_neox);
        if ((rc = attention(c, kv, b, l))) return rc;
        if ((rc = mm(c->proj, c->att, &L->wo, T, c->q8row))) return rc;
        if (hp->post_norms) ops_rmsnorm(c->proj, c->proj, L->post_attn_norm, T, E, hp->rms_eps);
        ops_add(c->x, c->proj, (size_t)T * E);
        /* feed-forward block (SwiGLU; gemma3: GeGLU) */
        ops_rmsnorm(c->xb, c->x, L->ffn_norm, T, E, hp->rms_eps);
        if ((rc = mm(c->gate, c->xb, &L->w_gate, T, c->q8row))) return rc;
        if ((rc = mm(c->up, c->xb, &L->w_up, T, c->q8row))) return rc;
        if (hp->ffn_geglu)
            ops_geglu_tanh(c->gate, c->up, (size_t)T * F);
        else
            ops_swiglu(c->gate, c->up, (size_t)T * F);
        if ((rc = mm(c->proj, c->gate, &L->w_down, T, c->q8row))) return rc;
        if (hp->post_norms) ops_rmsnorm(c->proj, c->proj, L->post_ffn_norm, T, E, hp->rms_eps);
        ops_add(c->x, c->proj, (size_t)T * E);
    }
    return logits(c, b);
}
