/* AnchorAttention: per query head and per group of anchor_local queries
 * starting at g0,
 * 1. anchor pass: each query block attends the initial window
 *    [0, anchor_init) and the group's local window [lo, p] exactly, lo =
 *    g0 - anchor_lookback (the whole [0, p] when lo <= anchor_init); the
 *    running row max is the anchor;
 * 2. stripe selection: key j in [anchor_init, lo) is kept for the whole
 *    group if, for some query block b of the group, mean(q_b).k_j*scale +
 *    theta >= mean(anchor_b);
 * 3. the kept keys, gathered token by token, continue each block's online
 *    softmax.
 * The three key sets are disjoint, so every key is attended once or not at
 * all, at any length (no multiple-of-group requirement). Groups and blocks
 * are aligned to absolute positions; under chunked prefill a group's stripes
 * are chosen from the group's queries in the current chunk.
 *
 * Two additions to the published method, both for the rows a user's
 * question sits in:
 * - The lookback. In the paper a group's local window starts at the group,
 *   so the rows just after each boundary (every 2,048 positions) see nothing
 *   recent but what the pooled test keeps; a sentence cut by the boundary
 *   loses its first half. Starting the window anchor_lookback (1024) keys
 *   earlier gives every row at least that much exact recent context.
 * - The row-by-row test. The call's last B (128) rows, where they lie in
 *   its last group (the end of the prompt, where a question sits, and the
 *   rows whose logits answer it; the last B rows rather than the last
 *   block, whose few rows may hold only the end of the question), also test
 *   the candidates one by one, q_r.k_j*scale + theta >= m_r; each of the
 *   (at most two) blocks holding them attends the keys its tested rows find
 *   beyond the group's stripes. The pooled test averages q.k - m over a
 *   block's 128 rows, so a key that only the question's few rows attend to
 *   scores like the filler around it and is dropped for the whole group: a
 *   passkey 2K-4K tokens back was lost that way at 93% density. Per-row
 *   scores of B rows per call cost what FlexPrefill's representative-query
 *   pass costs.
 *
 * And one option for the heads the pooled test cannot see (anchor_probe > 0,
 * default off): heads whose rows each attend their own far keys (a
 * diagonal, not a stripe), so that no key scores near a block's anchor once
 * the block's queries are averaged. The group's last block in the call (the
 * probe) scores every candidate row by row, and for each row r the share of
 * its softmax mass over [0, lo) U [lo, p] that the stripes leave out,
 * missed_r / (missed_r + kept_r) with the anchor pass's own mass in kept_r;
 * when the mean share over the probe's rows exceeds anchor_probe, the head
 * attends every candidate of the group (that group and head become dense).
 * The probe costs a block's scores against the candidates, like the tail
 * test. */
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
    int B;            // query block
    int64_t A, L, LB; // initial window, group length, lookback of the local window
    int max_blk;      // query blocks one group can touch
    const attn_kv_t *kv;
} anchor_ctx_t;

#define ANCHOR_CH 256 // keys per stripe-scoring pass

typedef struct {
    attn_tile_t *tiles;        // (max_blk) one per query block of the group
    attn_tile_t pt;            // pooled (mean) queries of the group's blocks
    float *S;                  // (max_blk rounded to 4, ANCHOR_CH) pooled scores
    float *Sr[2];              // (B rounded to 4, ANCHOR_CH) each tail block's own scores
    float *abar;               // (max_blk) mean anchor of each block
    attn_range_t *sel;         // (N / 2 + 1) selected stripes
    attn_range_t *own[2];      // (N / 2 + 1) keys only tail block t_first + i attends
    double *p_kept, *p_missed; // (B) the probe's rows: softmax mass the stripes keep, leave out
    double share;              // the probe's mean missed share (NAN without a probe)
    int n_own[2];
    int t_first, nt; // the group's tail blocks: tiles t_first .. t_first + nt - 1
} anchor_scratch_t;

static anchor_ctx_t anchor_ctx(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q,
                               int64_t q_pos0, const attn_kv_t *kv) {
    anchor_ctx_t c = {shape, pol, q, q_pos0, q_pos0 + n_q, pol->block > 0 ? pol->block : 128, 0, 0, 0, 0, kv};
    c.A = pol->anchor_init > 0 ? pol->anchor_init : 0;
    c.LB = pol->anchor_lookback > 0 ? pol->anchor_lookback : 0;
    c.L = pol->anchor_local >= c.B ? pol->anchor_local : c.B;
    c.max_blk = (int)((c.L + c.B - 1) / c.B) + 1;
    return c;
}

static size_t anchor_scratch_bytes(const anchor_ctx_t *c) {
    const int d = c->sh->head_dim;
    return attn_arena_need(sizeof(attn_tile_t) * c->max_blk) + (size_t)c->max_blk * attn_tile_bytes(c->B, d) +
           attn_tile_bytes(c->max_blk, d) +
           attn_arena_need(sizeof(float) * (size_t)((c->max_blk + 3) & ~3) * ANCHOR_CH) +
           2 * attn_arena_need(sizeof(float) * (size_t)((c->B + 3) & ~3) * ANCHOR_CH) +
           attn_arena_need(sizeof(float) * c->max_blk) + 2 * attn_arena_need(sizeof(double) * c->B) +
           3 * attn_arena_need(sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
}

static int anchor_scratch(const anchor_ctx_t *c, attn_arena_t *ar, anchor_scratch_t *x) {
    const int d = c->sh->head_dim;
    attn_arena_reset(ar);
    x->tiles = attn_arena_alloc(ar, sizeof(attn_tile_t) * c->max_blk);
    int rc = x->tiles ? 0 : LC_ENOMEM;
    for (int b = 0; !rc && b < c->max_blk; b++) rc = attn_tile_init(&x->tiles[b], ar, c->B, d);
    if (!rc) rc = attn_tile_init(&x->pt, ar, c->max_blk, d);
    x->S = attn_arena_alloc(ar, sizeof(float) * (size_t)((c->max_blk + 3) & ~3) * ANCHOR_CH);
    for (int i = 0; i < 2; i++) {
        x->Sr[i] = attn_arena_alloc(ar, sizeof(float) * (size_t)((c->B + 3) & ~3) * ANCHOR_CH);
        x->own[i] = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
        if (!x->Sr[i] || !x->own[i]) rc = LC_ENOMEM;
    }
    x->abar = attn_arena_alloc(ar, sizeof(float) * c->max_blk);
    x->p_kept = attn_arena_alloc(ar, sizeof(double) * c->B);
    x->p_missed = attn_arena_alloc(ar, sizeof(double) * c->B);
    if (!x->p_kept || !x->p_missed) rc = LC_ENOMEM;
    x->sel = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(c->N / 2 + 1));
    return rc || !x->S || !x->abar || !x->sel ? LC_ENOMEM : 0;
}

/* The start of group g0's local window: keys below it (from A on) are candidates. */
static int64_t local_lo(const anchor_ctx_t *c, int64_t g0) { return g0 - c->LB > c->A ? g0 - c->LB : c->A; }

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
        const int64_t lo = local_lo(c, g0);
        if (lo <= c->A) {
            rg[nr++] = (attn_range_t){0, p1};
        } else {
            rg[nr++] = (attn_range_t){0, c->A};
            rg[nr++] = (attn_range_t){lo, p1};
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

/* Step 2: the stripes over [A, lo): key j is kept when some block's pooled
 * query scores it within theta of that block's anchor. When the group holds
 * the call's last block (tail), the call's last B rows test each key not
 * kept one by one, each against its own anchor (its running row max), into
 * x->own[i] for the block (tile t_first + i) they sit in. With a probe,
 * the group's last block also sums each row's softmax mass over the
 * candidates the stripes keep and leave out; past the probe's threshold the
 * group's head keeps every candidate (and no own keys). Returns the
 * stripes. */
static int anchor_stripes(const anchor_ctx_t *c, int h, int64_t g0, int nb, int tail, anchor_scratch_t *x) {
    const int kh = h / (c->sh->n_heads / c->sh->n_kv_heads), d = c->sh->head_dim;
    const float theta = c->pol->theta;
    const int64_t lo = local_lo(c, g0), tail_row = c->N - c->B; // rows from tail_row on test one by one
    int n_sel = 0;
    x->n_own[0] = x->n_own[1] = 0;
    x->t_first = nb;
    x->nt = 0;
    x->share = NAN;
    if (lo <= c->A) return 0;
    if (tail && theta != INFINITY)
        for (int b = nb - 1; b >= 0 && x->tiles[b].qpos[x->tiles[b].nr - 1] >= tail_row; b--) x->t_first = b;
    x->nt = nb - x->t_first;
    x->pt.nr = nb;
    /* the probe: the last block's tile; its scores are a tail block's when
     * it is one, else they take Sr[0] (no tail block then) */
    attn_tile_t *pb = c->pol->anchor_probe > 0 && theta != INFINITY ? &x->tiles[nb - 1] : NULL;
    const float *ps = x->Sr[x->nt ? x->nt - 1 : 0];
    if (pb)
        for (int r = 0; r < pb->nr; r++) x->p_kept[r] = pb->l[r], x->p_missed[r] = 0;
    for (int r = nb; r < ((nb + 3) & ~3); r++) memset(x->pt.q + (size_t)r * d, 0, sizeof(float) * d);
    for (int64_t j0 = c->A; j0 < lo; j0 += ANCHOR_CH) {
        int64_t j1 = j0 + ANCHOR_CH < lo ? j0 + ANCHOR_CH : lo;
        if (theta != INFINITY) attn_tile_scores(&x->pt, c->kv, kh, j0, j1, x->S, ANCHOR_CH);
        for (int i = 0; i < x->nt; i++)
            attn_tile_scores(&x->tiles[x->t_first + i], c->kv, kh, j0, j1, x->Sr[i], ANCHOR_CH);
        if (pb && !x->nt) attn_tile_scores(pb, c->kv, kh, j0, j1, x->Sr[0], ANCHOR_CH);
        for (int64_t j = j0; j < j1; j++) {
            int keep = theta == INFINITY;
            for (int b = 0; b < nb && !keep; b++) keep = x->S[(size_t)b * ANCHOR_CH + (j - j0)] + theta >= x->abar[b];
            if (pb) {
                double *mass = keep ? x->p_kept : x->p_missed;
                for (int r = 0; r < pb->nr; r++)
                    mass[r] += exp((double)ps[(size_t)r * ANCHOR_CH + (j - j0)] - pb->m[r]);
            }
            if (keep) {
                add_key(x->sel, &n_sel, j);
                continue;
            }
            for (int i = 0; i < x->nt; i++) {
                const attn_tile_t *t = &x->tiles[x->t_first + i];
                for (int r = 0; r < t->nr; r++)
                    if (t->qpos[r] >= tail_row && x->Sr[i][(size_t)r * ANCHOR_CH + (j - j0)] + theta >= t->m[r]) {
                        add_key(x->own[i], &x->n_own[i], j);
                        break;
                    }
            }
        }
    }
    if (pb) {
        double share = 0;
        for (int r = 0; r < pb->nr; r++) share += x->p_missed[r] / (x->p_missed[r] + x->p_kept[r]);
        x->share = share / pb->nr;
        if (x->share > c->pol->anchor_probe) { // the head attends every candidate
            x->sel[0] = (attn_range_t){c->A, lo};
            x->n_own[0] = x->n_own[1] = 0;
            return 1;
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
            const int n_sel = anchor_stripes(&c, h, g0, nb, g0 + c.L >= N, &x);
            /* step 3: continue each block with the stripes (the tail blocks
             * with their own keys too), finish, store */
            for (int b = 0; b < nb; b++) {
                attn_tile_t *t = &x.tiles[b];
                const int i = b - x.t_first;
                if (n_sel > 0) attn_tile_run(t, kv, kh, x.sel, n_sel);
                if (i >= 0 && x.n_own[i] > 0) attn_tile_run(t, kv, kh, x.own[i], x.n_own[i]);
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

static void mark(uint8_t *f, const attn_range_t *rg, int n, uint8_t bit) {
    for (int i = 0; i < n; i++)
        for (int64_t j = rg[i].lo; j < rg[i].hi; j++) f[j] |= bit;
}

int attn__anchor_keys(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int n_q,
                      int64_t q_pos0, const attn_kv_t *kv, int h, int64_t g0, uint8_t *keep, uint8_t *own,
                      double *probe_share) {
    const int64_t N = q_pos0 + n_q;
    if (n_q <= 0 || q_pos0 < 0 || !q || !keep || !own || h < 0 || h >= shape->n_heads) return LC_EINVAL;
    int rc = attn_check_args(shape, kv, N);
    if (rc) return rc;
    const anchor_ctx_t c = anchor_ctx(shape, pol, q, n_q, q_pos0, kv);
    if (g0 < 0 || g0 % c.L || g0 >= N || g0 + c.L <= q_pos0) return LC_EINVAL;
    anchor_scratch_t x;
    if (anchor_scratch(&c, ar, &x)) return LC_ENOMEM;
    const int nb = anchor_pass(&c, h, g0, &x);
    const int n_sel = anchor_stripes(&c, h, g0, nb, g0 + c.L >= N, &x);
    memset(keep, 0, (size_t)N);
    memset(own, 0, (size_t)N);
    mark(keep, x.sel, n_sel, 1);
    /* bit 1: the call's last block, bit 2: the block before it */
    for (int i = 0; i < x.nt; i++) {
        const int last = x.tiles[x.t_first + i].qpos[0] / c.B == (N - 1) / c.B;
        mark(own, x.own[i], x.n_own[i], last ? 1 : 2);
    }
    if (probe_share) *probe_share = x.share;
    return 0;
}
