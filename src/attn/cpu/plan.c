/* The CPU attention plan: one step's batch checked and copied, its generated
 * rows listed, and one workspace sized for the largest need of any sequence
 * of the batch (per thread: tiles and method scratch; shared: FlexPrefill's
 * masks; decode: ranges, work items and piece results). attn_run then walks
 * the prompt chunks one by one (each method parallel inside) and all
 * generated rows in one pass (decode.c), allocating nothing.
 *
 * The per-call kernels at the end (attn_prefill, attn_decode, ...) plan a
 * one-sequence batch per call for tests and tools. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn_int.h"
#include "common/mem.h"
#include "common/status.h"

attn_plan_t *attn_plan_create(const attn_shape_t *shape, int n_layers) {
    if (!shape || shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->head_dim <= 0 ||
        shape->n_heads % shape->n_kv_heads || n_layers <= 0)
        return NULL;
    attn_plan_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->shape = *shape;
    p->n_layers = n_layers;
    return p;
}

void attn_plan_destroy(attn_plan_t *p) {
    if (!p) return;
    free(p->seqs), free(p->drows), free(p->drg), free(p->drg_off), free(p->drg_n);
    free(p->dk_item0), free(p->dk_nitem), free(p->ditems), free(p->dcomp), free(p->dpart);
    free(p->ws), free(p->arenas);
    free(p);
}

size_t attn_plan_workspace(const attn_plan_t *p) { return p ? p->ws_cap : 0; }

static int check_batch(const attn_plan_t *p, const attn_batch_t *b) {
    if (!b || b->n_rows <= 0 || b->n_seqs <= 0 || !b->seqs || b->block_size <= 0) return LC_EINVAL;
    for (int i = 0; i < b->n_seqs; i++) {
        const attn_seq_t *s = &b->seqs[i];
        if (s->n_tok <= 0 || s->tok0 < 0 || s->tok0 > b->n_rows - s->n_tok || s->pos0 < 0 || !s->blocks)
            return LC_EINVAL;
        if (s->state &&
            (s->state->shape.n_heads != p->shape.n_heads || s->state->shape.n_kv_heads != p->shape.n_kv_heads ||
             s->state->shape.head_dim != p->shape.head_dim))
            return LC_EINVAL;
    }
    return 0;
}

/* Workspace of one prompt chunk. */
static attn_ws_t prefill_ws(const attn_shape_t *sh, const attn_seq_t *s) {
    const attn_policy_t *pol = s->state ? &s->state->pol : NULL;
    attn_ws_t w = {attn_prefill_window_ws(sh), 0}, m = {0, 0};
    if (pol && pol->prefill == ATTN_PREFILL_FLEX) m = attn__flex_ws(sh, pol, s->n_tok, s->pos0);
    if (pol && pol->prefill == ATTN_PREFILL_ANCHOR) m = attn__anchor_ws(sh, pol, s->n_tok, s->pos0);
    if (m.per_thread > w.per_thread) w.per_thread = m.per_thread;
    w.shared = m.shared;
    return w;
}

/* The generated rows and what decode needs for them. */
static int plan_decode(attn_plan_t *p, int block_size, size_t *per_thread) {
    const int KH = p->shape.n_kv_heads, G = p->shape.n_heads / KH, d = p->shape.head_dim;
    int n = 0;
    for (int i = 0; i < p->n_seqs; i++)
        if (p->seqs[i].decode) n += p->seqs[i].n_tok;
    size_t cap = (size_t)p->cap_drows;
    if (lc_grow((void **)&p->drows, &cap, (size_t)n, sizeof *p->drows)) return LC_ENOMEM;
    p->cap_drows = (int)cap;
    size_t n_rg = 0, n_items = 0;
    p->n_drows = 0;
    for (int i = 0; i < p->n_seqs; i++) {
        const attn_seq_t *s = &p->seqs[i];
        if (!s->decode) continue;
        const attn_policy_t *pol = s->state ? &s->state->pol : NULL;
        if (pol && pol->decode == ATTN_DECODE_TIDAL && attn__state_reserve(s->state, s->n_tok)) return LC_ENOMEM;
        for (int r = 0; r < s->n_tok; r++) {
            attn_drow_t *dr = &p->drows[p->n_drows++];
            dr->seq = i;
            dr->row = r;
            dr->n_kv = s->pos0 + r + 1;
            dr->qrow = s->tok0 + r;
            dr->tidal_due = 0;
            dr->rg_cap = attn__decode_rg_cap(pol, dr->n_kv, block_size);
            n_rg += (size_t)dr->rg_cap * KH;
            n_items += (size_t)KH * (size_t)((dr->n_kv - 1) / ATTN_PIECE + 1);
            size_t w = attn__decode_ws(&p->shape, pol, dr->n_kv, block_size);
            if (w > *per_thread) *per_thread = w;
        }
    }
    const size_t n_dk = (size_t)p->n_drows * KH;
    size_t c;
    if (lc_grow((void **)&p->drg, &p->cap_drg, n_rg, sizeof *p->drg)) return LC_ENOMEM;
    c = p->cap_dk;
    if (lc_grow((void **)&p->drg_off, &c, n_dk, sizeof *p->drg_off)) return LC_ENOMEM;
    c = p->cap_dk;
    if (lc_grow((void **)&p->drg_n, &c, n_dk, sizeof *p->drg_n)) return LC_ENOMEM;
    c = p->cap_dk;
    if (lc_grow((void **)&p->dk_item0, &c, n_dk, sizeof *p->dk_item0)) return LC_ENOMEM;
    c = p->cap_dk;
    if (lc_grow((void **)&p->dk_nitem, &c, n_dk, sizeof *p->dk_nitem)) return LC_ENOMEM;
    p->cap_dk = c;
    c = p->cap_ditems;
    if (lc_grow((void **)&p->ditems, &c, n_items, sizeof *p->ditems)) return LC_ENOMEM;
    c = p->cap_ditems;
    if (lc_grow((void **)&p->dcomp, &c, n_items, sizeof *p->dcomp)) return LC_ENOMEM;
    c = p->cap_ditems;
    if (lc_grow((void **)&p->dpart, &c, n_items, sizeof(float) * G * (d + 1))) return LC_ENOMEM;
    p->cap_ditems = c;
    size_t off = 0;
    for (int i = 0; i < p->n_drows; i++)
        for (int kh = 0; kh < KH; kh++) {
            p->drg_off[(size_t)i * KH + kh] = off;
            off += (size_t)p->drows[i].rg_cap;
        }
    return 0;
}

int attn_plan(attn_plan_t *p, const attn_batch_t *b) {
    if (!p) return LC_EINVAL;
    int rc = check_batch(p, b);
    if (rc) return rc;
    size_t cap = (size_t)p->cap_seqs;
    if (lc_grow((void **)&p->seqs, &cap, (size_t)b->n_seqs, sizeof *p->seqs)) return LC_ENOMEM;
    p->cap_seqs = (int)cap;
    memcpy(p->seqs, b->seqs, (size_t)b->n_seqs * sizeof *p->seqs);
    p->n_seqs = b->n_seqs;
    p->n_rows = b->n_rows;
    p->block_size = b->block_size;
    size_t per_thread = 0, shared = 0;
    for (int i = 0; i < b->n_seqs; i++) {
        if (b->seqs[i].decode) continue;
        attn_ws_t w = prefill_ws(&p->shape, &b->seqs[i]);
        if (w.per_thread > per_thread) per_thread = w.per_thread;
        if (w.shared > shared) shared = w.shared;
    }
    if ((rc = plan_decode(p, b->block_size, &per_thread))) return rc;
    const int nt = attn_max_threads();
    per_thread = attn_arena_need(per_thread);
    shared = attn_arena_need(shared);
    const size_t need = per_thread * (size_t)nt + shared;
    if (need > p->ws_cap || nt > p->n_threads) {
        free(p->ws);
        free(p->arenas);
        p->ws_cap = 0;
        p->n_threads = 0;
        if (posix_memalign((void **)&p->ws, 64, need ? need : 64)) return p->ws = NULL, LC_ENOMEM;
        if (!(p->arenas = calloc((size_t)nt, sizeof *p->arenas))) return LC_ENOMEM;
        p->ws_cap = need;
    }
    p->n_threads = nt;
    p->per_thread = per_thread;
    p->shared_bytes = shared;
    for (int t = 0; t < nt; t++) p->arenas[t] = (attn_arena_t){p->ws + (size_t)t * per_thread, per_thread, 0};
    p->shared = (attn_arena_t){p->ws + (size_t)nt * per_thread, shared, 0};
    return 0;
}

/* One prompt chunk with its sequence's prefill method (or the layer's window). */
static int run_prefill(attn_plan_t *p, const attn_seq_t *s, int64_t window, const attn_store_t *store, const float *q,
                       float *out, float *lse) {
    const attn_shape_t *sh = &p->shape;
    const size_t rs = (size_t)sh->n_heads * sh->head_dim;
    const attn_kv_t kv = {.k = store->k,
                          .v = store->v,
                          .kmin = store->kmin,
                          .kmax = store->kmax,
                          .blk_stride = store->blk_stride,
                          .sum_stride = store->sum_stride,
                          .blocks = s->blocks + (size_t)store->group * s->group_stride,
                          .block_size = store->block_size,
                          .n_kv = s->pos0 + s->n_tok};
    const float *qs = q + (size_t)s->tok0 * rs;
    float *os = out + (size_t)s->tok0 * rs, *ls = lse ? lse + (size_t)s->tok0 * sh->n_heads : NULL;
    const attn_policy_t *pol = s->state ? &s->state->pol : NULL;
    double computed = 0;
    int rc;
    switch (window > 0 ? ATTN_PREFILL_DENSE : pol ? pol->prefill : ATTN_PREFILL_DENSE) {
    case ATTN_PREFILL_FLEX:
        rc = attn__prefill_flex(sh, pol, p->arenas, &p->shared, qs, s->n_tok, s->pos0, s->prompt_end, &kv, os, ls,
                                &computed);
        break;
    case ATTN_PREFILL_ANCHOR:
        rc = attn__prefill_anchor(sh, pol, p->arenas, qs, s->n_tok, s->pos0, &kv, os, ls, &computed);
        break;
    case ATTN_PREFILL_STREAMING: {
        int64_t sink, win;
        attn__streaming_window(pol, &sink, &win);
        rc = attn_prefill_window(sh, p->arenas, qs, s->n_tok, s->pos0, &kv, sink, win, os, ls, &computed);
        break;
    }
    default:
        rc = attn_prefill_window(sh, p->arenas, qs, s->n_tok, s->pos0, &kv, 0, window > 0 ? window : ATTN_NO_WINDOW, os,
                                 ls, &computed);
        break;
    }
    if (rc == 0 && s->state) {
        const double n = s->n_tok, q0 = (double)s->pos0;
        s->state->stats.prefill_computed += computed;
        s->state->stats.prefill_total += (double)sh->n_heads * (n * q0 + 0.5 * n * (n + 1.0));
    }
    return rc;
}

int attn_run(attn_plan_t *p, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out,
             float *lse) {
    if (!p || !kv || !q || !out || layer < 0 || layer >= p->n_layers || !p->n_seqs || window < 0) return LC_EINVAL;
    if (kv->block_size != p->block_size || !kv->k || !kv->v || kv->group < 0) return LC_EINVAL;
    if (attn_max_threads() > p->n_threads) return LC_EINVAL; // the team grew since the plan
    for (int i = 0; i < p->n_seqs; i++) {
        if (p->seqs[i].decode) continue;
        int rc = run_prefill(p, &p->seqs[i], window, kv, q, out, lse);
        if (rc) return rc;
    }
    return attn__decode_rows(p, layer, window, kv, q, out, lse);
}

/* ---- per-call kernels -------------------------------------------------------------- */
static int run_one(const attn_shape_t *shape, attn_state_t *st, int layer, int64_t window, const float *q, int n_q,
                   int64_t q_pos0, const attn_kv_t *kv, float *out, float *lse, int decode) {
    if (!shape || !kv || !q || !out || n_q < 0 || q_pos0 < 0) return LC_EINVAL;
    if (n_q == 0) return 0;
    int rc = attn_check_args(shape, kv, q_pos0 + n_q);
    if (rc) return rc;
    attn_plan_t *p = attn_plan_create(shape, st ? st->n_layers : layer + 1);
    if (!p) return LC_ENOMEM;
    attn_seq_t s = {.tok0 = 0,
                    .n_tok = n_q,
                    .pos0 = q_pos0,
                    .blocks = kv->blocks,
                    .state = st,
                    .decode = decode,
                    .prompt_end = decode ? 0 : q_pos0 + n_q};
    attn_batch_t b = {.n_rows = n_q, .n_seqs = 1, .seqs = &s, .block_size = kv->block_size};
    attn_store_t store = {.k = kv->k,
                          .v = kv->v,
                          .kmin = kv->kmin,
                          .kmax = kv->kmax,
                          .blk_stride = kv->blk_stride,
                          .sum_stride = kv->sum_stride,
                          .block_size = kv->block_size};
    rc = attn_plan(p, &b);
    if (!rc) rc = attn_run(p, layer, window, &store, q, out, lse);
    attn_plan_destroy(p);
    return rc;
}

int attn_prefill(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, int n_q, int64_t q_pos0,
                 const attn_kv_t *kv, float *out, float *lse) {
    return run_one(shape, st, layer, 0, q, n_q, q_pos0, kv, out, lse, 0);
}

int attn_decode(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, const attn_kv_t *kv, float *out,
                float *lse) {
    if (!kv || kv->n_kv <= 0) return LC_EINVAL;
    return run_one(shape, st, layer, 0, q, 1, kv->n_kv - 1, kv, out, lse, 1);
}

int attn_prefill_dense(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                       float *out, float *lse) {
    return run_one(shape, NULL, 0, 0, q, n_q, q_pos0, kv, out, lse, 0);
}

int attn_decode_dense(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse) {
    if (!kv || kv->n_kv <= 0) return LC_EINVAL;
    return run_one(shape, NULL, 0, 0, q, 1, kv->n_kv - 1, kv, out, lse, 1);
}

int attn_prefill_sliding(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                         int64_t window, float *out, float *lse) {
    if (window <= 0) return LC_EINVAL;
    return run_one(shape, NULL, 0, window, q, n_q, q_pos0, kv, out, lse, 0);
}

int attn_decode_sliding(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, int64_t window, float *out,
                        float *lse) {
    if (!kv || kv->n_kv <= 0 || window <= 0) return LC_EINVAL;
    return run_one(shape, NULL, 0, window, q, 1, kv->n_kv - 1, kv, out, lse, 1);
}

void attn_merge(float *o1, float *lse1, const float *o2, const float *lse2, int rows, int head_dim) {
    for (int r = 0; r < rows; r++)
        attn_merge_row(o1 + (size_t)r * head_dim, &lse1[r], o2 + (size_t)r * head_dim, lse2[r], head_dim);
}
