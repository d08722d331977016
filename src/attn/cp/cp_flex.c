/* FlexPrefill inside the pass-KV ring (attn/cpu/flex.c has the method and
 * the single-rank kernel). The pattern of a prompt slice comes from its last
 * block of rows (the representative rows) attending every key, from the
 * mean key of every key block and the mean query of every query block. Each
 * rank computes its part of these summaries on the keys and rows it holds:
 * 1. the representative rows go to every rank (an all-reduce of a table
 *    their owners fill);
 * 2. their attention over each rank's keys: the row maxima (all-gathered),
 *    then the sums of exp (all-gathered, added in rank order), then each
 *    rank's share of the vertical and slash mass;
 * 3. the mass, the key sums of every key block and the mean query of every
 *    query block in one all-reduce;
 * 4. every rank runs the single-rank pattern search on the summaries
 *    (attn__flex_pattern_from) for every head: the same mask everywhere;
 * 5. the ring: each rank attends its query blocks to the masked key blocks of
 *    the visiting pack; a step whose pack holds none computes nothing.
 * The key sums and mean queries are the single-rank kernel's bits (a key
 * block and a query block each lie on one rank); the mass rests on a
 * normalisation summed in another order, so the mask can differ from the
 * single-rank one only where a cut-off falls within rounding of a candidate.
 * Slices at most max(2 blocks, min_budget) long run dense, as in one rank. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "common/status.h"
#include "common/timeutil.h"

#define FLEX_CH 1024 // keys per score call of the representative rows

typedef struct {
    int B, R, qb0, n_qb, n_kb;
    int64_t N;
} flex_geo_t;

static flex_geo_t geo(const attn_policy_t *pol, int64_t pos0, int n_tok) {
    flex_geo_t g;
    g.B = pol->block > 0 ? pol->block : 128;
    g.N = pos0 + n_tok;
    g.R = n_tok < g.B ? n_tok : g.B;
    g.qb0 = (int)(pos0 / g.B);
    g.n_kb = (int)((g.N - 1) / g.B) + 1;
    g.n_qb = g.n_kb - g.qb0;
    return g;
}

/* The stage: offsets in floats. */
typedef struct {
    size_t rep, mx, l, vert, slash, ksum, qpool, mask, own, end;
} flex_stage_t;

static flex_stage_t stage_layout(const cp_plan_t *p, const flex_geo_t *g) {
    const size_t H = (size_t)p->shape.n_heads, KH = (size_t)p->shape.n_kv_heads, d = (size_t)p->shape.head_dim;
    const size_t N = (size_t)p->n_ranks;
    flex_stage_t s;
    s.rep = 0;                                        // (H, R, d) unscaled
    s.mx = s.rep + H * g->R * d;                      // (N + 1, H, R): own, then every rank's
    s.l = s.mx + (N + 1) * H * g->R;                  // (N + 1, H, R)
    s.vert = s.l + (N + 1) * H * g->R;                // (H, N_keys)
    s.slash = s.vert + H * (size_t)g->N;              // (H, N_keys)
    s.ksum = s.slash + H * (size_t)g->N;              // (KH, n_kb, d)
    s.qpool = s.ksum + KH * g->n_kb * d;              // (n_qb, H, d)
    s.mask = s.qpool + (size_t)g->n_qb * H * d;       // (H, n_qb, n_kb) bytes
    s.own = s.mask + (H * g->n_qb * g->n_kb + 3) / 4; // (n_qb) ints: own query blocks
    s.end = s.own + (size_t)g->n_qb + 4;
    return s;
}

int cp__flex_plan(cp_plan_t *p, cp_slice_t *sl, size_t *stage, size_t *per_thread) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const int bs = p->block_size, d = p->shape.head_dim;
    const flex_geo_t g = geo(sl->pol, s->pos0, s->n_tok);
    sl->n_qblk = 0;
    if (attn__flex_is_small(sl->pol, s->n_tok, s->pos0)) return 0; // dense
    if (!(sl->mem2 = malloc(sizeof(cp_qblk_t) * (size_t)g.n_qb))) return LC_ENOMEM;
    sl->qblk = sl->mem2;
    for (int i = 0; i < g.n_qb; i++) {
        const int64_t qb = g.qb0 + i;
        const int64_t p0 = qb * g.B > s->pos0 ? qb * g.B : s->pos0, p1 = (qb + 1) * g.B < g.N ? (qb + 1) * g.B : g.N;
        const int o = s->owner[p0 / bs];
        for (int64_t b = p0 / bs; b * bs < p1; b++)
            if (s->owner[b] != o) return LC_EINVAL; // a block split between ranks
        const cp_hold_t *h = &sl->hold[o];
        int lo = 0, hi = h->nq;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (h->qpos[mid] < p0)
                lo = mid + 1;
            else
                hi = mid;
        }
        sl->qblk[sl->n_qblk++] = (cp_qblk_t){p0, p1, i, o, lo};
    }
    *stage = stage_layout(p, &g).end;
    attn_ws_t w = attn__flex_ws(&p->shape, sl->pol, s->n_tok, s->pos0);
    size_t pt = attn_tile_bytes(g.R, d) + attn_arena_need(sizeof(float) * (size_t)g.R * FLEX_CH);
    /* a ring step: the tile, a query block's key blocks and their cut by
     * the visiting rank's ranges (flex_step) */
    int max_rg = 0;
    for (int r = 0; r < p->n_ranks; r++) max_rg = sl->hold[r].n_rg > max_rg ? sl->hold[r].n_rg : max_rg;
    size_t comp = attn_tile_bytes(g.B, d) + attn_arena_need(sizeof(attn_range_t) * (size_t)(g.n_kb + 2)) +
                  attn_arena_need(sizeof(attn_range_t) * (size_t)(g.n_kb + max_rg + 2));
    pt = pt > comp ? pt : comp;
    *per_thread = w.per_thread > pt ? w.per_thread : pt;
    return 0;
}

/* ---- the summaries ----------------------------------------------------------------------- */
typedef struct {
    flex_geo_t g;
    flex_stage_t o;
    const cp_slice_t *sl;
    int *own; // this rank's query blocks (qblk indices)
    int n_own;
    uint8_t *mask;
} flex_ctx_t;

/* One pass of the representative rows of every head over this rank's keys:
 * 0: row maxima; 1: sums of exp; 2: vertical and slash mass. */
static int rep_pass(cp_plan_t *p, flex_ctx_t *x, const attn_kv_t *kv, int pass) {
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim, R = x->g.R;
    const int64_t N = x->g.N;
    const cp_hold_t *me = &x->sl->hold[p->rank];
    float *st = p->stage, *mx = st + x->o.mx, *lsum = st + x->o.l;
    const float *gm = mx, *gl = lsum; // passes 1 and 2 read the global maxima and sums there
    int err = 0;
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        float *S = NULL;
        int ok = attn_tile_init(&t, ar, R, d) == 0 && (S = attn_arena_alloc(ar, sizeof(float) * (size_t)R * FLEX_CH));
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int h = 0; h < H; h++) {
            if (!ok) continue;
            attn_tile_begin(&t, R);
            for (int r = 0; r < R; r++)
                for (int e = 0; e < d; e++)
                    t.q[(size_t)r * d + e] = st[x->o.rep + ((size_t)h * R + r) * d + e] * sh->scale;
            float *vert = st + x->o.vert + (size_t)h * N, *slash = st + x->o.slash + (size_t)h * N;
            for (int r = 0; r < R; r++) {
                if (pass == 0) mx[(size_t)h * R + r] = -INFINITY;
                if (pass == 1) lsum[(size_t)h * R + r] = 0;
            }
            for (int u = 0; u < me->n_rg; u++)
                for (int64_t j0 = me->rg[u].lo; j0 < me->rg[u].hi; j0 += FLEX_CH) {
                    const int64_t j1 = j0 + FLEX_CH < me->rg[u].hi ? j0 + FLEX_CH : me->rg[u].hi;
                    attn_tile_scores(&t, kv, h / G, j0, j1, S, FLEX_CH);
                    for (int r = 0; r < R; r++) {
                        const int64_t pos = N - R + r, jmax = pos + 1 < j1 ? pos + 1 : j1;
                        float *s = S + (size_t)r * FLEX_CH;
                        const size_t hr = (size_t)h * R + r;
                        if (jmax <= j0) continue;
                        if (pass == 0) {
                            const float m = attn_row_max(s, jmax - j0);
                            mx[hr] = m > mx[hr] ? m : mx[hr];
                        } else if (pass == 1) {
                            lsum[hr] += attn_row_exp_sum(s, jmax - j0, gm[hr]);
                        } else {
                            const float w = 1.0f / (gl[hr] * R);
                            attn_row_exp_sum(s, jmax - j0, gm[hr]);
                            for (int64_t j = j0; j < jmax; j++) vert[j] += s[j - j0] * w;
                            for (int64_t j = j0; j < jmax; j++) slash[pos - j] += s[j - j0] * w;
                        }
                    }
                }
        }
    }
    return err;
}

/* Steps 1-3: every rank ends with the same summaries in the stage. */
static int summaries(cp_plan_t *p, cp_comm_t *c, flex_ctx_t *x, const attn_kv_t *kv, const float *q) {
    const cp_seq_t *s = &p->seqs[x->sl->seq];
    const attn_shape_t *sh = &p->shape;
    const int N = p->n_ranks, H = sh->n_heads, KH = sh->n_kv_heads, d = sh->head_dim, R = x->g.R, B = x->g.B;
    const int bs = p->block_size;
    const size_t HR = (size_t)H * R;
    float *st = p->stage;
    /* 1. the representative rows */
    memset(st + x->o.rep, 0, sizeof(float) * HR * d);
    for (int r = 0; r < R; r++) {
        const int64_t pos = x->g.N - R + r;
        if (s->owner[pos / bs] != p->rank) continue;
        const float *qr = q + (size_t)(s->tok0 + pos - s->pos0) * H * d;
        for (int h = 0; h < H; h++)
            memcpy(st + x->o.rep + ((size_t)h * R + r) * d, qr + (size_t)h * d, sizeof(float) * d);
    }
    int rc = cp_allreduce_sum(c, st + x->o.rep, HR * d);
    /* 2. maxima, then sums, then mass */
    float *mx = st + x->o.mx, *lsum = st + x->o.l;
    if (!rc) rc = rep_pass(p, x, kv, 0);
    if (!rc) rc = cp_allgather(c, mx, sizeof(float) * HR, mx + HR); // every rank's (N, H, R) after the own
    if (rc) return rc;
    for (size_t i = 0; i < HR; i++) { // the global maxima over the own
        float m = -INFINITY;
        for (int r = 0; r < N; r++) m = mx[HR + (size_t)r * HR + i] > m ? mx[HR + (size_t)r * HR + i] : m;
        mx[i] = m;
    }
    if ((rc = rep_pass(p, x, kv, 1))) return rc;
    if ((rc = cp_allgather(c, lsum, sizeof(float) * HR, lsum + HR))) return rc;
    for (size_t i = 0; i < HR; i++) { // the sums, in rank order
        float l = 0;
        for (int r = 0; r < N; r++) l += lsum[HR + (size_t)r * HR + i];
        lsum[i] = l;
    }
    const size_t tail = x->o.mask - x->o.vert; // vert, slash, ksum, qpool
    memset(st + x->o.vert, 0, sizeof(float) * tail);
    if ((rc = rep_pass(p, x, kv, 2))) return rc;
    /* 3. key sums of own key blocks (position order), mean queries of own query blocks */
    const cp_hold_t *me = &x->sl->hold[p->rank];
    for (int kh = 0; kh < KH; kh++) {
        float *ks = st + x->o.ksum + (size_t)kh * x->g.n_kb * d;
        for (int u = 0; u < me->n_rg; u++)
            for (int64_t j = me->rg[u].lo; j < me->rg[u].hi; j++) {
                const float *kc = attn_kv_kcol(kv, kh, d, j);
                float *dst = ks + (size_t)(j / B) * d;
                for (int e = 0; e < d; e++) dst[e] += kc[(size_t)e * bs];
            }
    }
    const float *qs = q + (size_t)s->tok0 * H * d;
    for (int i = 0; i < x->n_own; i++) {
        const cp_qblk_t *qb = &x->sl->qblk[x->own[i]];
        for (int h = 0; h < H; h++)
            attn__flex_pool_query(sh, qs, s->pos0, qb->p0, qb->p1, h, st + x->o.qpool + ((size_t)qb->g * H + h) * d);
    }
    return cp_allreduce_sum(c, st + x->o.vert, tail);
}

/* Step 4: every head's mask, on every rank. */
static int masks(cp_plan_t *p, flex_ctx_t *x) {
    const cp_seq_t *s = &p->seqs[x->sl->seq];
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim, R = x->g.R;
    const float *st = p->stage;
    const size_t msz = (size_t)x->g.n_qb * x->g.n_kb;
    int err = 0;
#pragma omp parallel for schedule(dynamic, 1) num_threads(p->n_threads)
    for (int h = 0; h < H; h++) {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        int rc = attn__flex_pattern_from(
            sh, x->sl->pol, s->n_tok, s->pos0, s->prompt_end, h, st + x->o.rep + (size_t)h * R * d,
            st + x->o.vert + (size_t)h * x->g.N, st + x->o.slash + (size_t)h * x->g.N,
            st + x->o.ksum + (size_t)(h / G) * x->g.n_kb * d, st + x->o.qpool, ar, x->mask + msz * h);
        if (rc) {
#pragma omp atomic write
            err = rc;
        }
    }
    return err;
}

/* ---- the ring ------------------------------------------------------------------------------ */
static int flex_step(cp_plan_t *p, const cp_slice_t *sl, int src, const attn_kv_t *view, void *ud) {
    flex_ctx_t *x = ud;
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim, B = x->g.B;
    const cp_hold_t *me = &sl->hold[p->rank], *hs = &sl->hold[src];
    float *acc = p->acc, *al = p->acc + (size_t)me->nq * H * d;
    const size_t msz = (size_t)x->g.n_qb * x->g.n_kb;
    const int n_items = x->n_own * H;
    int err = 0, used = 0;
    double comp = 0;
    if (hs->n_rg == 0 || me->nq == 0) return 0;
#pragma omp parallel num_threads(p->n_threads) reduction(+ : comp, used)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        attn_range_t *blk = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(x->g.n_kb + 2));
        attn_range_t *rg = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(x->g.n_kb + hs->n_rg + 2));
        const int ok = attn_tile_init(&t, ar, B, d) == 0 && blk && rg;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int h = it % H;
            const cp_qblk_t *qb = &sl->qblk[x->own[x->n_own - 1 - it / H]]; // later blocks first
            const int qbi = x->g.qb0 + (int)qb->g;
            const uint8_t *mrow = x->mask + msz * h + (size_t)qb->g * x->g.n_kb;
            int nb = 0;
            for (int kb = 0; kb <= qbi; kb++) {
                if (!mrow[kb]) continue;
                int64_t lo = (int64_t)kb * B, hi = lo + B < qb->p1 ? lo + B : qb->p1;
                if (nb > 0 && blk[nb - 1].hi == lo)
                    blk[nb - 1].hi = hi;
                else
                    blk[nb++] = (attn_range_t){lo, hi};
            }
            /* ∩ the visiting keys */
            int n = 0, a = 0, b = 0;
            while (a < nb && b < hs->n_rg) {
                int64_t lo = blk[a].lo > hs->rg[b].lo ? blk[a].lo : hs->rg[b].lo;
                int64_t hi = blk[a].hi < hs->rg[b].hi ? blk[a].hi : hs->rg[b].hi;
                if (lo < hi) rg[n++] = (attn_range_t){lo, hi};
                if (blk[a].hi < hs->rg[b].hi)
                    a++;
                else
                    b++;
            }
            if (!n) continue;
            used++;
            cp__load_block(p, qb, h, &t);
            attn_tile_run(&t, view, h / G, rg, n);
            attn_tile_finish(&t);
            cp__merge_block(p, qb, h, &t, acc, al);
            comp += t.computed;
        }
    }
    p->computed[sl->seq] += comp;
    if (!used) p->timing.steps_skipped++;
    return err;
}

int cp__flex_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, const attn_store_t *kv, const float *q, float *out,
                 float *lse) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const int H = p->shape.n_heads, d = p->shape.head_dim;
    const cp_hold_t *me = &sl->hold[p->rank];
    flex_ctx_t x = {.g = geo(sl->pol, s->pos0, s->n_tok), .sl = sl};
    x.o = stage_layout(p, &x.g);
    x.mask = (uint8_t *)(p->stage + x.o.mask);
    x.own = (int *)(p->stage + x.o.own);
    for (int i = 0; i < sl->n_qblk; i++)
        if (sl->qblk[i].owner == p->rank) x.own[x.n_own++] = i;
    cp__gather_rows(p, sl, q);
    const attn_kv_t local = {.k = kv->k,
                             .v = kv->v,
                             .blk_stride = kv->blk_stride,
                             .blocks = cp__table(s, kv),
                             .block_size = p->block_size,
                             .n_kv = sl->n_kv};
    double t0 = lc_now_s();
    int rc = summaries(p, c, &x, &local, q);
    if (!rc) rc = masks(p, &x);
    p->timing.collective_s += lc_now_s() - t0;
    if (rc) return rc;
    cp__init_acc(p->acc, (size_t)me->nq, (size_t)H * d, H);
    cp__pack_own(p, sl, kv, me->nb + sl->n_halo);
    if ((rc = cp__ring_kv(p, c, sl, flex_step, &x))) return rc;
    cp__scatter_rows(p, sl, p->acc, out, lse);
    return 0;
}
