/* AnchorAttention: per query head and per group of anchor_local queries,
 * 1. anchor pass: each query block attends the initial window
 *    [0, anchor_init) and its group's local window [g0, p] exactly; the
 *    running row max is the anchor;
 * 2. stripe selection: key j in [anchor_init, g0) is kept for the whole group
 *    if, for some query block b of the group, mean(q_b).k_j*scale + theta >=
 *    mean(anchor_b);
 * 3. the kept keys, gathered token by token, continue each block's online
 *    softmax.
 * The three key sets are disjoint, so every key is attended once or not at
 * all, at any length (no multiple-of-group requirement; the keys just before
 * a group are candidates like any other). Groups and blocks are aligned to
 * absolute positions; under chunked prefill a group's stripes are chosen from
 * the group's queries in the current chunk.
 *
 * One addition to the published method: the last query block of a call (the
 * end of the prompt, where a question sits, and the rows whose logits answer
 * it) also tests the candidates row by row, q_r.k_j*scale + theta >= m_r, and
 * attends the keys it finds beyond the group's stripes itself. The pooled
 * test averages q.k - m over a block's 128 rows, so a key that only the
 * question's few rows attend to scores like the filler around it and is
 * dropped for the whole group: a passkey 2K-4K tokens back was lost that way
 * at 93% density. Per-row scores of one block per call cost what FlexPrefill's
 * representative-query pass costs, and only that block attends the extra
 * keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

/* One call's sizes. */
typedef struct {
    const attn_shape_t *sh;
    const attn_policy_t *pol;
    const float *q;
    int64_t q_pos0, N;
    int B;        // query block
    int64_t A, L; // initial window, group (local window) length
    int max_blk;  // query blocks one group can touch
    const attn_kv_t *kv;
} anchor_ctx_t;

#define ANCHOR_CH 256 // keys per stripe-scoring pass

typedef struct {
    attn_tile_t *tiles; // (max_blk) one per query block of the group
    attn_tile_t pt;     // pooled (mean) queries of the group's blocks
    float *S;           // (max_blk rounded to 4, ANCHOR_CH) pooled scores
    float *Sr;          // (B rounded to 4, ANCHOR_CH) the call's last block's own scores
    float *abar;        // (max_blk) mean anchor of each block
    attn_range_t *sel;  // (N / 2 + 1) selected stripes
    attn_range_t *own;  // (N / 2 + 1) keys only the call's last block attends
} anchor_scratch_t;

static anchor_ctx_t anchor_ctx(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q,
                               int64_t q_pos0, const attn_kv_t *kv) {
    anchor_ctx_t c = {shape, pol, q, q_pos0, q_pos0 + n_q, pol->block > 0 ? pol->block : 128, 0, 0, 0, kv};
    c.A = pol->anchor_init > 0 ? pol->anchor_init : 0;
    c.L = pol->anchor_local >= c.B ? pol->anchor_local : c.B;
    c.max_blk = (int)((c.L + c.B - 1) / c.B) + 1;
    return c;
}

static size_t anchor_scratch_bytes(const anchor_ctx_t *c) {
    const int d = c->sh->head_dim;
    return attn_arena_need(sizeof(attn_tile_t) * c->max_blk) + (size_t)c->max_blk * attn_tile_bytes(c->B, d) +
           attn_tile_bytes(c->max_blk, d) +
           attn_arena_need(sizeof(float) * (size_t)((c->max_blk + 3) & ~3) * ANCHOR_CH) +
           attn_arena_need(sizeof(float) * (size_t)((c->B + 3) & ~3) * ANCHOR_CH) +
           attn_arena_need(sizeof(float) * c->max_blk) +
           2 * attn_arena_need(sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
}

static int anchor_scratch(const anchor_ctx_t *c, attn_arena_t *ar, anchor_scratch_t *x) {
    const int d = c->sh->head_dim;
    attn_arena_reset(ar);
    x->tiles = attn_arena_alloc(ar, sizeof(attn_tile_t) * c->max_blk);
    int rc = x->tiles ? 0 : LC_ENOMEM;
    for (int b = 0; !rc && b < c->max_blk; b++) rc = attn_tile_init(&x->tiles[b], ar, c->B, d);
    if (!rc) rc = attn_tile_init(&x->pt, ar, c->max_blk, d);
    x->S = attn_arena_alloc(ar, sizeof(float) * (size_t)((c->max_blk + 3) & ~3) * ANCHOR_CH);
    x->Sr = attn_arena_alloc(ar, sizeof(float) * (size_t)((c->B + 3) & ~3) * ANCHOR_CH);
    x->abar = attn_arena_alloc(ar, sizeof(float) * c->max_blk);
    x->sel = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
    x->own = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
    return rc || !x->S || !x->Sr || !x->abar || !x->sel || !x->own ? LC_ENOMEM : 0;
}

/* Step 1: each query block of group g (head h) attends the initial window and
 * the group's local window exactly; its mean row max is the anchor. Returns
 * the number of blocks. */
static int anchor_pass(const anchor_ctx_t *c, int h, int64_t g0, anchor_scratch_t *x) {
    const int H = c->sh->n_heads, kh = h / (H / c->sh->n_kv_heads), d = c->sh->head_dim, B = c->B;
    const int64_t q0 = g0 > c->q_pos0 ? g0 : c->q_pos0, q1 = g0 + c->L < c->N ? g0 + c->L : c->N;
    int nb = 0;
    for (int64_t p0 = q0; p0 < q1; nb++) {
        int64_t p1 = (p0 / B + 1) * B < q1 ? (p0 / B + 1) * B : q1;
        attn_tile_t *t = &x->tiles[nb];
        attn_tile_begin(t, (int)(p1 - p0));
        float *qbar = x->pt.q + (size_t)nb * d;
        memset(qbar, 0, sizeof(float) * d);
        for (int64_t p = p0; p < p1; p++) {
            const float *qr = c->q + ((size_t)(p - c->q_pos0) * H + h) * d;
            float *dst = t->q + (size_t)(p - p0) * d;
            for (int e = 0; e < d; e++) {
                dst[e] = qr[e] * c->sh->scale;
                qbar[e] += dst[e];
            }
            t->qpos[p - p0] = p;
        }
        for (int e = 0; e < d; e++) qbar[e] /= (float)(p1 - p0);
        attn_range_t rg[2];
        int nr = 0;
        if (g0 <= c->A) {
            rg[nr++] = (attn_range_t){0, p1};
        } else {
            rg[nr++] = (attn_range_t){0, c->A};
            rg[nr++] = (attn_range_t){g0, p1};
        }
        attn_tile_run(t, c->kv, kh, rg, nr);
        double am = 0;
        for (int r = 0; r < t->nr; r++) am += t->m[r];
        x->abar[nb] = (float)(am / t->nr);
        p0 = p1;
    }
    return nb;
}

/* Appends key j to a sorted range list. */
static void add_key(attn_range_t *rg, int *n, int64_t j) {
    if (*n > 0 && rg[*n - 1].hi == j)
        rg[*n - 1].hi = j + 1;
    else
        rg[(*n)++] = (attn_range_t){j, j + 1};
}

/* Step 2: the stripes over [A, g0): key j is kept when some block's pooled
 * query scores it within theta of that block's anchor. When the group holds
 * the call's last block (tail), that block's rows also test each key not
 * kept, each against its own anchor (its running row max), into x->own.
 * Returns the stripes; *n_own the extra keys. */
static int anchor_stripes(const anchor_ctx_t *c, int h, int64_t g0, int nb, int tail, anchor_scratch_t *x, int *n_own) {
    const int kh = h / (c->sh->n_heads / c->sh->n_kv_heads), d = c->sh->head_dim;
    const float theta = c->pol->theta;
    int n_sel = 0;
    *n_own = 0;
    if (g0 <= c->A) return 0;
    x->pt.nr = nb;
    for (int r = nb; r < ((nb + 3) & ~3); r++) memset(x->pt.q + (size_t)r * d, 0, sizeof(float) * d);
    attn_tile_t *last = tail && theta != INFINITY ? &x->tiles[nb - 1] : NULL;
    for (int64_t j0 = c->A; j0 < g0; j0 += ANCHOR_CH) {
        int64_t j1 = j0 + ANCHOR_CH < g0 ? j0 + ANCHOR_CH : g0;
        if (theta != INFINITY) attn_tile_scores(&x->pt, c->kv, kh, j0, j1, x->S, ANCHOR_CH);
        if (last) attn_tile_scores(last, c->kv, kh, j0, j1, x->Sr, ANCHOR_CH);
        for (int64_t j = j0; j < j1; j++) {
            int keep = theta == INFINITY;
            for (int b = 0; b < nb && !keep; b++) keep = x->S[(size_t)b * ANCHOR_CH + (j - j0)] + theta >= x->abar[b];
            if (keep) {
                add_key(x->sel, &n_sel, j);
                continue;
            }
            for (int r = 0; last && r < last->nr; r++)
                if (x->Sr[(size_t)r * ANCHOR_CH + (j - j0)] + theta >= last->m[r]) {
                    add_key(x->own, n_own, j);
                    break;
                }
        }
    }
    return n_sel;
}

attn_ws_t attn__anchor_ws(const attn_shape_t *shape, const attn_policy_t *pol, int n_q, int64_t q_pos0) {
    const anchor_ctx_t c = anchor_ctx(shape, pol, NULL, n_q, q_pos0, NULL);
    return (attn_ws_t){anchor_scratch_bytes(&c), 0};
}

int attn__prefill_anchor(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *arenas, const float *q,
                         int n_q, int64_t q_pos0, const attn_kv_t *kv, float *out, float *lse, double *computed) {
    const int64_t N = q_pos0 + n_q;
    if (n_q <= 0) return n_q == 0 ? 0 : LC_EINVAL;
    int rc = attn_check_args(shape, kv, N);
    if (rc || q_pos0 < 0 || !q || !out) return rc ? rc : LC_EINVAL;
    const anchor_ctx_t c = anchor_ctx(shape, pol, q, n_q, q_pos0, kv);
    const int H = shape->n_heads, d = shape->head_dim;
    const int64_t g_first = q_pos0 / c.L, g_last = (N - 1) / c.L;
    const int n_groups = (int)(g_last - g_first + 1), n_items = H * n_groups;
    int err = 0;
    double comp = 0;
#pragma omp parallel reduction(+ : comp)
    {
        anchor_scratch_t x;
        const int ok = anchor_scratch(&c, &arenas[attn_thread_num()], &x) == 0;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int h = it % H, kh = h / (H / shape->n_kv_heads);
            const int64_t g0 = (g_last - it / H) * c.L; // later groups first: they carry more keys
            const int nb = anchor_pass(&c, h, g0, &x);
            int n_own;
            const int n_sel = anchor_stripes(&c, h, g0, nb, g0 + c.L >= N, &x, &n_own);
            /* step 3: continue each block with the stripes (the call's last
             * block with its own keys too), finish, store */
            for (int b = 0; b < nb; b++) {
                attn_tile_t *t = &x.tiles[b];
                if (n_sel > 0) attn_tile_run(t, kv, kh, x.sel, n_sel);
                if (b == nb - 1 && n_own > 0) attn_tile_run(t, kv, kh, x.own, n_own);
                attn_tile_finish(t);
                for (int r = 0; r < t->nr; r++) {
                    size_t row = (size_t)(t->qpos[r] - q_pos0) * H + h;
                    memcpy(out + row * d, t->acc + (size_t)r * d, sizeof(float) * d);
                    if (lse) lse[row] = t->l[r];
                }
                comp += t->computed;
            }
        }
    }
    if (computed) *computed = comp;
    return err;
}

static void mark(uint8_t *f, const attn_range_t *rg, int n) {
    for (int i = 0; i < n; i++) memset(f + rg[i].lo, 1, (size_t)(rg[i].hi - rg[i].lo));
}

int attn__anchor_keys(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int n_q,
                      int64_t q_pos0, const attn_kv_t *kv, int h, int64_t g0, uint8_t *keep, uint8_t *own) {
    const int64_t N = q_pos0 + n_q;
    if (n_q <= 0 || q_pos0 < 0 || !q || !keep || !own || h < 0 || h >= shape->n_heads) return LC_EINVAL;
    int rc = attn_check_args(shape, kv, N);
    if (rc) return rc;
    const anchor_ctx_t c = anchor_ctx(shape, pol, q, n_q, q_pos0, kv);
    if (g0 < 0 || g0 % c.L || g0 >= N || g0 + c.L <= q_pos0) return LC_EINVAL;
    anchor_scratch_t x;
    if (anchor_scratch(&c, ar, &x)) return LC_ENOMEM;
    const int nb = anchor_pass(&c, h, g0, &x);
    int n_own;
    const int n_sel = anchor_stripes(&c, h, g0, nb, g0 + c.L >= N, &x, &n_own);
    memset(keep, 0, (size_t)N);
    memset(own, 0, (size_t)N);
    mark(keep, x.sel, n_sel);
    mark(own, x.own, n_own);
    return 0;
}
