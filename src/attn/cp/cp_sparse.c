/* Sparse prompt methods inside the pass-KV ring.
 *
 * AnchorAttention (attn/cpu/anchor.c has the single-rank kernel and the
 * method). Its three key sets per query block are the initial window
 * [0, A), the group's local window [lo, p] (lo = g0 - lookback) and the
 * stripes chosen in [A, lo) from the group's pooled queries and anchors.
 * Here:
 * 1. halo: each rank fetches the blocks of the two windows its query blocks
 *    need and does not hold (one all-to-all for K, one for V; every rank
 *    knows every rank's needs from the layout, so no request travels);
 * 2. anchor pass: each rank runs its blocks over the two windows exactly as
 *    the single-rank kernel does (same keys, same tiles: the same bits),
 *    keeping the result as the first partial, and the pooled query and mean
 *    anchor of every block go to every rank (one all-reduce of a table each
 *    block's owner fills);
 * 3. the ring: at each step a rank scores the visiting keys of [A, lo) with
 *    its groups' pooled queries (all the group's blocks, whichever rank holds
 *    them), keeps those within theta of some anchor, and attends its blocks
 *    to them; a step that keeps nothing computes nothing more.
 *    The call's last B rows (those in the last group) also test the
 *    visiting candidates one by one against their own anchors (their maxima
 *    over the windows, kept by their blocks' owners at step 2), and each of
 *    the (at most two) blocks holding them attends the keys only its tested
 *    rows find, as the single-rank kernel does.
 * With a probe (anchor_probe > 0), between steps 2 and 3: every group's
 * probe block (its last block of the call) goes to every rank with its
 * rows' maxima and sums over the windows (one all-reduce of a table its
 * owner fills); each rank scores the candidates it holds with every probe
 * row, summing each row's mass over the keys the stripes keep and leave out
 * (doubles), and the sums are gathered, so that every rank takes the single-
 * rank kernel's decision per (group, head): past the probe's share the head
 * attends every visiting candidate in the ring (and no own keys).
 * The stripes are the single-rank kernel's, key for key; the output differs
 * from it by the order of the LSE merges only (and a probe's sums by their
 * order: a decision could differ only at the probe's value to double
 * rounding).
 *
 * The query blocks of a slice must each lie on one rank: the zig-zag units
 * (cp_zigzag's align) are multiples of the method's block. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "common/status.h"
#include "common/timeutil.h"

#define ANCHOR_CH 1024 // keys per stripe-scoring call

typedef struct {
    int64_t B, A, L, LB;
    int max_blk;
} anchor_geo_t;

static anchor_geo_t geo(const attn_policy_t *pol) {
    anchor_geo_t g;
    g.B = pol->block > 0 ? pol->block : 128;
    g.A = pol->anchor_init > 0 ? pol->anchor_init : 0;
    g.L = pol->anchor_local >= g.B ? pol->anchor_local : g.B;
    g.LB = pol->anchor_lookback > 0 ? pol->anchor_lookback : 0;
    g.max_blk = (int)((g.L + g.B - 1) / g.B) + 1;
    return g;
}

/* The start of group g0's local window (the single-rank kernel's local_lo). */
static int64_t local_lo(const anchor_geo_t *ge, int64_t g0) { return g0 - ge->LB > ge->A ? g0 - ge->LB : ge->A; }

/* 1 when the policy runs the probe. */
static int probe_on(const attn_policy_t *pol) { return pol->anchor_probe > 0 && pol->theta != INFINITY; }

/* The groups of the slice's query blocks (all ranks'), from the first's. */
static int n_groups(const cp_slice_t *sl) {
    return sl->n_qblk ? (int)(sl->qblk[sl->n_qblk - 1].g - sl->qblk[0].g + 1) : 0;
}

/* Groups of this rank's blocks: own[0 .. n_own) index qblk; a group's own
 * blocks are consecutive, and all its blocks (any rank) are qblk[q0 .. q0+nq). */
typedef struct {
    int64_t g;
    int own0, n_own; // in the own list
    int q0, nq;      // in qblk
} agroup_t;

typedef struct {
    int *own; // (n_own) qblk indices held by this rank
    int n_own;
    agroup_t *grp;
    int n_grp;
} anchor_own_t;

/* Marks the blocks rank t's query blocks read in the two windows. */
static void mark_needs(const cp_slice_t *sl, const anchor_geo_t *ge, int t, int bs, uint8_t *need) {
    memset(need, 0, (size_t)sl->n_blk);
    for (int i = 0; i < sl->n_qblk; i++) {
        const cp_qblk_t *qb = &sl->qblk[i];
        if (qb->owner != t) continue;
        const int64_t wl = local_lo(ge, qb->g * ge->L);
        int64_t lo[2] = {0, wl}, hi[2] = {wl <= ge->A ? qb->p1 : ge->A, qb->p1};
        for (int w = 0; w < (wl <= ge->A ? 1 : 2); w++)
            for (int64_t b = lo[w] / bs; b * bs < hi[w]; b++) need[b] = 1;
    }
}

int cp__anchor_plan(cp_plan_t *p, cp_slice_t *sl, size_t *stage, size_t *per_thread) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const int N = p->n_ranks, r = p->rank, bs = p->block_size, H = p->shape.n_heads, d = p->shape.head_dim;
    const anchor_geo_t ge = geo(sl->pol);
    /* the query blocks */
    int n_qblk = 0;
    for (int64_t g = s->pos0 / ge.L; g * ge.L < sl->n_kv; g++) {
        const int64_t q0 = g * ge.L > s->pos0 ? g * ge.L : s->pos0,
                      q1 = (g + 1) * ge.L < sl->n_kv ? (g + 1) * ge.L : sl->n_kv;
        for (int64_t p0 = q0; p0 < q1; p0 = (p0 / ge.B + 1) * ge.B) n_qblk++;
    }
    /* the halo and send lists, counted */
    uint8_t *need = malloc((size_t)sl->n_blk);
    if (!need) return LC_ENOMEM;
    size_t n_halo = 0, n_send = 0;
    /* the query blocks are needed before the needs: a first allocation for them */
    sl->mem2 = malloc(sizeof(cp_qblk_t) * (size_t)n_qblk + sizeof(int32_t) * sl->n_blk + 64);
    if (!sl->mem2) return free(need), LC_ENOMEM;
    sl->qblk = sl->mem2;
    sl->n_qblk = 0;
    for (int64_t g = s->pos0 / ge.L; g * ge.L < sl->n_kv; g++) {
        const int64_t q0 = g * ge.L > s->pos0 ? g * ge.L : s->pos0,
                      q1 = (g + 1) * ge.L < sl->n_kv ? (g + 1) * ge.L : sl->n_kv;
        for (int64_t p0 = q0; p0 < q1;) {
            const int64_t p1 = (p0 / ge.B + 1) * ge.B < q1 ? (p0 / ge.B + 1) * ge.B : q1;
            const int o = s->owner[p0 / bs];
            for (int64_t b = p0 / bs; b * bs < p1; b++)
                if (s->owner[b] != o) return free(need), LC_EINVAL; // a block split between ranks
            const cp_hold_t *h = &sl->hold[o];
            int lo = 0, hi = h->nq; // the row of p0 in the owner's list
            while (lo < hi) {
                int mid = (lo + hi) / 2;
                if (h->qpos[mid] < p0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            sl->qblk[sl->n_qblk++] = (cp_qblk_t){p0, p1, g, o, lo};
            p0 = p1;
        }
    }
    for (int t = 0; t < N; t++) {
        mark_needs(sl, &ge, t, bs, need);
        for (int b = 0; b < sl->n_blk; b++) {
            if (!need[b] || s->owner[b] == t) continue;
            if (t == r) n_halo++;
            if (s->owner[b] == r) n_send++;
        }
    }
    /* the rest of the arrays, behind the query blocks */
    const size_t head = sizeof(cp_qblk_t) * (size_t)n_qblk;
    void *m2 =
        realloc(sl->mem2, head + sizeof(int32_t) * (sl->n_blk + n_halo + n_send) + sizeof(int) * 2 * (N + 1) + 64);
    if (!m2) return free(need), LC_ENOMEM;
    sl->mem2 = m2;
    sl->qblk = m2;
    unsigned char *m = (unsigned char *)m2 + head;
    sl->ltbl = (int32_t *)m, m += sizeof(int32_t) * sl->n_blk;
    sl->halo = (int32_t *)m, m += sizeof(int32_t) * n_halo;
    sl->send_blk = (int32_t *)m, m += sizeof(int32_t) * n_send;
    sl->halo_from = (int *)m, m += sizeof(int) * (N + 1);
    sl->send_to = (int *)m;
    const cp_hold_t *me = &sl->hold[r];
    for (int b = 0; b < sl->n_blk; b++) sl->ltbl[b] = s->owner[b] == r ? me->tbl[b] : 0;
    /* halo grouped by source; sends grouped by destination */
    sl->n_halo = 0;
    mark_needs(sl, &ge, r, bs, need);
    for (int src = 0; src < N; src++) {
        sl->halo_from[src] = sl->n_halo;
        for (int b = 0; b < sl->n_blk; b++)
            if (need[b] && s->owner[b] == src && src != r) {
                sl->ltbl[b] = me->nb + sl->n_halo;
                sl->halo[sl->n_halo++] = b;
            }
    }
    sl->halo_from[N] = sl->n_halo;
    int ns = 0;
    for (int t = 0; t < N; t++) {
        sl->send_to[t] = ns;
        if (t == r) continue;
        mark_needs(sl, &ge, t, bs, need);
        for (int b = 0; b < sl->n_blk; b++)
            if (need[b] && s->owner[b] == r) sl->send_blk[ns++] = b;
    }
    sl->send_to[N] = ns;
    free(need);
    const size_t stride = (size_t)p->shape.n_kv_heads * bs * d;
    *stage = (size_t)n_qblk * H * (d + 1) + (size_t)ns * stride * 2 + (size_t)n_qblk * 8 + 16 + // + own and group lists
             (size_t)2 * H * ge.B + 4; // the tail blocks' row anchors
    if (probe_on(sl->pol)) { // the probe rows, the mass sums (this rank's, every rank's: doubles), the decisions
        const size_t rows = (size_t)n_groups(sl) * H * ge.B;
        *stage += rows * (d + 2) + 2 * rows * 2 * (size_t)(N + 1) + (size_t)n_groups(sl) * 3 * 2 +
                  (size_t)n_groups(sl) * H + 64;
    }
    /* per thread: a block's tile, the pooled tile, its scores, the kept
     * stripes and the candidate ranges */
    int max_rg = 1;
    for (int t = 0; t < N; t++) max_rg = sl->hold[t].n_rg > max_rg ? sl->hold[t].n_rg : max_rg;
    *per_thread = 3 * attn_tile_bytes((int)ge.B, d) + attn_tile_bytes(ge.max_blk, d) +
                  attn_arena_need(sizeof(float) * (size_t)((ge.max_blk + 3) & ~3) * ANCHOR_CH) +
                  2 * attn_arena_need(sizeof(float) * (size_t)((ge.B + 3) & ~3) * ANCHOR_CH) +
                  3 * attn_arena_need(sizeof(attn_range_t) * (size_t)(sl->n_kv / 2 + 2)) +
                  attn_arena_need(sizeof(attn_range_t) * (size_t)(max_rg + 2)) + 6 * 64;
    return 0;
}

/* ---- run ------------------------------------------------------------------------------- */
typedef struct {
    anchor_geo_t ge;
    const cp_slice_t *sl;
    float *table; // (n_qblk, H, d + 1): pooled query (scaled), then the mean anchor
    int *own;     // (n_own) this rank's blocks
    int n_own;
    agroup_t *grp;
    int n_grp;
    int kept;      // stripes kept at this step, over all groups (skip accounting)
    float *tail_m; // (2, H, B) the tail blocks' row maxima over the windows (their owners'), slot is_tail - 1
    /* the probe (probe_on): per group of the slice (gi = g - the first
     * group), its blocks in qblk (gq0, gnq) and per head its probe rows:
     * scaled query, max and sum over the windows (pq, d + 2 floats a row);
     * each row's mass kept and left out by the stripes over this rank's
     * candidates (psum), every rank's (pall); fire: the head keeps every
     * candidate */
    int probe, n_gall;
    int *gq0, *gnq;      // (n_gall)
    float *pq;           // (n_gall, H, B, d + 2)
    double *psum, *pall; // (n_gall, H, B, 2), (n_ranks, ...)
    uint8_t *fire;       // (n_gall, H)
} anchor_ctx_t;

/* 1 when qblk[bi] is the call's last query block, 2 the block before it,
 * when that block holds some of the call's last B rows and lies in the last
 * group (the single-rank kernel's tail blocks, whose rows from n_kv - B on
 * test the candidates one by one); else 0. */
static int is_tail(const anchor_ctx_t *x, int bi) {
    const cp_qblk_t *qb = &x->sl->qblk[bi];
    const int64_t n = x->sl->n_kv;
    if (qb->g * x->ge.L + x->ge.L < n || qb->p1 - 1 < n - x->ge.B) return 0;
    return qb->p0 / x->ge.B == (n - 1) / x->ge.B ? 1 : 2;
}

/* Appends key j to a sorted range list. */
static void add_key(attn_range_t *rg, int *n, int64_t j) {
    if (*n > 0 && rg[*n - 1].hi == j)
        rg[*n - 1].hi = j + 1;
    else
        rg[(*n)++] = (attn_range_t){j, j + 1};
}


/* Step 2: this rank's blocks over the two windows of lview; the partial to
 * acc, the pooled query and anchor to the table. */
static int anchor_pass(cp_plan_t *p, anchor_ctx_t *x, const attn_kv_t *lview) {
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim;
    const cp_slice_t *sl = x->sl;
    const cp_hold_t *me = &sl->hold[p->rank];
    float *acc = p->acc, *al = p->acc + (size_t)me->nq * H * d;
    const int n_items = x->n_own * H;
    int err = 0;
    double comp = 0;
#pragma omp parallel num_threads(p->n_threads) reduction(+ : comp)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        const int ok = attn_tile_init(&t, ar, (int)x->ge.B, d) == 0;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int h = it % H, bi = x->own[x->n_own - 1 - it / H]; // later blocks first
            const cp_qblk_t *qb = &sl->qblk[bi];
            const int64_t wl = local_lo(&x->ge, qb->g * x->ge.L);
            const int nr = (int)(qb->p1 - qb->p0);
            float *qbar = x->table + ((size_t)bi * H + h) * (d + 1);
            attn_tile_begin(&t, nr);
            memset(qbar, 0, sizeof(float) * d);
            for (int i = 0; i < nr; i++) {
                const float *qr = p->qbuf + ((size_t)(qb->i0 + i) * H + h) * d;
                float *dst = t.q + (size_t)i * d;
                for (int e = 0; e < d; e++) {
                    dst[e] = qr[e] * sh->scale;
                    qbar[e] += dst[e];
                }
                t.qpos[i] = qb->p0 + i;
            }
            for (int e = 0; e < d; e++) qbar[e] /= (float)nr;
            attn_range_t rg[2];
            int n_rg = 0;
            if (wl <= x->ge.A) {
                rg[n_rg++] = (attn_range_t){0, qb->p1};
            } else {
                rg[n_rg++] = (attn_range_t){0, x->ge.A};
                rg[n_rg++] = (attn_range_t){wl, qb->p1};
            }
            attn_tile_run(&t, lview, h / G, rg, n_rg);
            double am = 0;
            for (int i = 0; i < t.nr; i++) am += t.m[i];
            qbar[d] = (float)(am / t.nr);
            const int tl = is_tail(x, bi);
            if (tl) memcpy(x->tail_m + ((size_t)(tl - 1) * H + h) * x->ge.B, t.m, sizeof(float) * (size_t)t.nr);
            if (x->probe && (bi + 1 == sl->n_qblk || sl->qblk[bi + 1].g != qb->g)) { // the group's probe block
                float *pr = x->pq + ((size_t)(qb->g - sl->qblk[0].g) * H + h) * x->ge.B * (d + 2);
                for (int i = 0; i < nr; i++) {
                    memcpy(pr + (size_t)i * (d + 2), t.q + (size_t)i * d, sizeof(float) * d);
                    pr[(size_t)i * (d + 2) + d] = t.m[i];
                    pr[(size_t)i * (d + 2) + d + 1] = t.l[i];
                }
            }
            attn_tile_finish(&t);
            for (int i = 0; i < nr; i++) {
                const size_t row = (size_t)(qb->i0 + i) * H + h;
                memcpy(acc + row * d, t.acc + (size_t)i * d, sizeof(float) * d);
                al[row] = t.l[i];
            }
            comp += t.computed;
        }
    }
    p->computed[sl->seq] += comp;
    return err;
}

/* The probe over the candidates this rank holds (lview): per group and head,
 * each probe row's mass exp(s - m) over the keys the stripes keep and over
 * those they leave out, into psum. */
static int probe_sums(cp_plan_t *p, anchor_ctx_t *x, const attn_kv_t *lview) {
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim, B = (int)x->ge.B;
    const cp_slice_t *sl = x->sl;
    const cp_hold_t *me = &sl->hold[p->rank];
    const float theta = sl->pol->theta;
    const int n_items = x->n_gall * H;
    int err = 0;
    memset(x->psum, 0, sizeof(double) * (size_t)n_items * B * 2);
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t pt, tp;
        int ok = attn_tile_init(&pt, ar, x->ge.max_blk, d) == 0 && attn_tile_init(&tp, ar, B, d) == 0;
        float *S = attn_arena_alloc(ar, sizeof(float) * (size_t)((x->ge.max_blk + 3) & ~3) * ANCHOR_CH);
        float *Sr = attn_arena_alloc(ar, sizeof(float) * (size_t)((B + 3) & ~3) * ANCHOR_CH);
        ok = ok && S && Sr;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            const int gi = it / H, h = it % H;
            const int64_t g = sl->qblk[0].g + gi, wl = local_lo(&x->ge, g * x->ge.L);
            if (!ok || wl <= x->ge.A) continue;
            const int q0 = x->gq0[gi], nq = x->gnq[gi];
            const cp_qblk_t *pb = &sl->qblk[q0 + nq - 1];
            const int nr = (int)(pb->p1 - pb->p0);
            const float *pr = x->pq + (size_t)it * B * (d + 2);
            double *sum = x->psum + (size_t)it * B * 2;
            attn_tile_begin(&pt, nq);
            for (int b = 0; b < nq; b++)
                memcpy(pt.q + (size_t)b * d, x->table + ((size_t)(q0 + b) * H + h) * (d + 1), sizeof(float) * d);
            attn_tile_begin(&tp, nr);
            for (int r = 0; r < nr; r++) memcpy(tp.q + (size_t)r * d, pr + (size_t)r * (d + 2), sizeof(float) * d);
            for (int u = 0; u < me->n_rg; u++) {
                const int64_t lo = me->rg[u].lo > x->ge.A ? me->rg[u].lo : x->ge.A,
                              hi = me->rg[u].hi < wl ? me->rg[u].hi : wl;
                for (int64_t j0 = lo; j0 < hi; j0 += ANCHOR_CH) {
                    const int64_t j1 = j0 + ANCHOR_CH < hi ? j0 + ANCHOR_CH : hi;
                    attn_tile_scores(&pt, lview, h / G, j0, j1, S, ANCHOR_CH);
                    attn_tile_scores(&tp, lview, h / G, j0, j1, Sr, ANCHOR_CH);
                    for (int64_t j = j0; j < j1; j++) {
                        int keep = 0;
                        for (int b = 0; b < nq && !keep; b++)
                            keep = S[(size_t)b * ANCHOR_CH + (j - j0)] + theta >=
                                   x->table[((size_t)(q0 + b) * H + h) * (d + 1) + d];
                        for (int r = 0; r < nr; r++)
                            sum[2 * r + !keep] +=
                                exp((double)Sr[(size_t)r * ANCHOR_CH + (j - j0)] - pr[(size_t)r * (d + 2) + d]);
                    }
                }
            }
        }
    }
    return err;
}

/* Every rank's sums (pall, rank order) into the decisions: per group and
 * head, the mean over the probe rows of missed / (missed + kept), the
 * windows' own sum counted kept, against the probe. */
static void probe_decide(const cp_plan_t *p, anchor_ctx_t *x) {
    const int H = p->shape.n_heads, d = p->shape.head_dim, B = (int)x->ge.B, N = p->n_ranks;
    const cp_slice_t *sl = x->sl;
    const size_t per_rank = (size_t)x->n_gall * H * B * 2;
    for (int it = 0; it < x->n_gall * H; it++) {
        const int gi = it / H;
        const cp_qblk_t *pb = &sl->qblk[x->gq0[gi] + x->gnq[gi] - 1];
        const int nr = (int)(pb->p1 - pb->p0);
        double share = 0;
        for (int r = 0; r < nr; r++) {
            double kept = x->pq[((size_t)it * B + r) * (d + 2) + d + 1], missed = 0;
            for (int t = 0; t < N; t++) {
                const double *s = x->pall + t * per_rank + ((size_t)it * B + r) * 2;
                kept += s[0];
                missed += s[1];
            }
            share += missed / (missed + kept);
        }
        x->fire[it] = local_lo(&x->ge, (sl->qblk[0].g + gi) * x->ge.L) > x->ge.A && share / nr > sl->pol->anchor_probe;
    }
}

/* Step 3 at one ring step: stripes of the visiting keys, then the blocks. */
static int anchor_step(cp_plan_t *p, const cp_slice_t *sl, int src, const attn_kv_t *view, void *ud) {
    anchor_ctx_t *x = ud;
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, G = H / sh->n_kv_heads, d = sh->head_dim;
    const cp_hold_t *me = &sl->hold[p->rank], *hs = &sl->hold[src];
    const float theta = sl->pol->theta;
    float *acc = p->acc, *al = p->acc + (size_t)me->nq * H * d;
    const int n_items = x->n_grp * H;
    int err = 0, kept = 0;
    double comp = 0;
    if (hs->n_rg == 0 || me->nq == 0) return 0;
#pragma omp parallel num_threads(p->n_threads) reduction(+ : comp, kept)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t, pt, tt[2];
        const int rows4 = (x->ge.max_blk + 3) & ~3;
        int ok = attn_tile_init(&t, ar, (int)x->ge.B, d) == 0 && attn_tile_init(&pt, ar, x->ge.max_blk, d) == 0;
        float *S = attn_arena_alloc(ar, sizeof(float) * (size_t)rows4 * ANCHOR_CH), *Sr[2];
        attn_range_t *sel = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(sl->n_kv / 2 + 2)), *xo[2];
        for (int k = 0; k < 2; k++) {
            ok = ok && attn_tile_init(&tt[k], ar, (int)x->ge.B, d) == 0;
            Sr[k] = attn_arena_alloc(ar, sizeof(float) * (size_t)((x->ge.B + 3) & ~3) * ANCHOR_CH);
            xo[k] = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(sl->n_kv / 2 + 2));
            ok = ok && Sr[k] && xo[k];
        }
        attn_range_t *cand = attn_arena_alloc(ar, sizeof(attn_range_t) * (size_t)(hs->n_rg + 2));
        ok = ok && S && sel && cand;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int h = it % H, kh = h / G;
            const agroup_t *gr = &x->grp[x->n_grp - 1 - it / H];
            const int64_t wl = local_lo(&x->ge, gr->g * x->ge.L);
            if (wl <= x->ge.A) continue; // the windows cover every key
            /* candidates: the visiting keys in [A, wl) */
            int nc = 0;
            for (int u = 0; u < hs->n_rg; u++) {
                int64_t lo = hs->rg[u].lo > x->ge.A ? hs->rg[u].lo : x->ge.A,
                        hi = hs->rg[u].hi < wl ? hs->rg[u].hi : wl;
                if (lo < hi) cand[nc++] = (attn_range_t){lo, hi};
            }
            if (!nc) continue;
            /* the tail blocks this rank holds in this group: their rows test the candidates too */
            int tbi[2] = {-1, -1}, n_xo[2] = {0, 0};
            const int all = theta == INFINITY || (x->probe && x->fire[(gr->g - sl->qblk[0].g) * H + h]);
            for (int ob = 0; !all && ob < gr->n_own; ob++) {
                const int bi = x->own[gr->own0 + ob], tl = is_tail(x, bi);
                if (!tl) continue;
                tbi[tl - 1] = bi;
                cp__load_block(p, &sl->qblk[bi], h, &tt[tl - 1]);
            }
            int n_sel = 0;
            if (all) {
                memcpy(sel, cand, sizeof *cand * (size_t)nc);
                n_sel = nc;
            } else {
                attn_tile_begin(&pt, gr->nq);
                for (int b = 0; b < gr->nq; b++)
                    memcpy(pt.q + (size_t)b * d, x->table + ((size_t)(gr->q0 + b) * H + h) * (d + 1),
                           sizeof(float) * d);
                for (int u = 0; u < nc; u++)
                    for (int64_t j0 = cand[u].lo; j0 < cand[u].hi; j0 += ANCHOR_CH) {
                        const int64_t j1 = j0 + ANCHOR_CH < cand[u].hi ? j0 + ANCHOR_CH : cand[u].hi;
                        attn_tile_scores(&pt, view, kh, j0, j1, S, ANCHOR_CH);
                        for (int k = 0; k < 2; k++)
                            if (tbi[k] >= 0) attn_tile_scores(&tt[k], view, kh, j0, j1, Sr[k], ANCHOR_CH);
                        for (int64_t j = j0; j < j1; j++) {
                            int keep = 0;
                            for (int b = 0; b < gr->nq && !keep; b++)
                                keep = S[(size_t)b * ANCHOR_CH + (j - j0)] + theta >=
                                       x->table[((size_t)(gr->q0 + b) * H + h) * (d + 1) + d];
                            if (keep) {
                                add_key(sel, &n_sel, j);
                                continue;
                            }
                            for (int k = 0; k < 2; k++) {
                                const float *tm = x->tail_m + ((size_t)k * H + h) * x->ge.B;
                                for (int r = 0; tbi[k] >= 0 && r < tt[k].nr; r++)
                                    if (tt[k].qpos[r] >= sl->n_kv - x->ge.B &&
                                        Sr[k][(size_t)r * ANCHOR_CH + (j - j0)] + theta >= tm[r]) {
                                        add_key(xo[k], &n_xo[k], j);
                                        break;
                                    }
                            }
                        }
                    }
            }
            if (!n_sel && !n_xo[0] && !n_xo[1]) continue;
            kept += n_sel + n_xo[0] + n_xo[1];
            for (int ob = 0; ob < gr->n_own; ob++) {
                const int bi = x->own[gr->own0 + ob];
                const cp_qblk_t *qb = &sl->qblk[bi];
                const int k = bi == tbi[0] ? 0 : bi == tbi[1] ? 1 : -1, extra = k >= 0 && n_xo[k] > 0;
                if (!n_sel && !extra) continue;
                cp__load_block(p, qb, h, &t);
                if (n_sel) attn_tile_run(&t, view, kh, sel, n_sel);
                if (extra) attn_tile_run(&t, view, kh, xo[k], n_xo[k]);
                attn_tile_finish(&t);
                cp__merge_block(p, qb, h, &t, acc, al);
                comp += t.computed;
            }
        }
    }
    p->computed[sl->seq] += comp;
    if (!kept) p->timing.steps_skipped++;
    return err;
}

int cp__anchor_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, const attn_store_t *kv, const float *q, float *out,
                   float *lse) {
    const int N = p->n_ranks, r = p->rank, H = p->shape.n_heads, d = p->shape.head_dim;
    const cp_hold_t *me = &sl->hold[r];
    const size_t stride = (size_t)p->shape.n_kv_heads * p->block_size * d;
    const int nb_tot = me->nb + sl->n_halo;
    anchor_ctx_t x = {.ge = geo(sl->pol), .sl = sl};
    /* the stage: the pooled table, own and group lists, the halo sends */
    x.table = p->stage;
    float *sendk = x.table + (size_t)sl->n_qblk * H * (d + 1);
    const int ns = sl->send_to[N];
    float *sendv = sendk + (size_t)ns * stride;
    x.own = (int *)(sendv + (size_t)ns * stride);
    x.grp = (agroup_t *)(((uintptr_t)(x.own + sl->n_qblk) + 15) & ~(uintptr_t)15);
    x.tail_m = (float *)(((uintptr_t)(x.grp + sl->n_qblk) + 15) & ~(uintptr_t)15);
    x.probe = probe_on(sl->pol);
    if (x.probe) {
        const size_t rows = (size_t)n_groups(sl) * H * x.ge.B;
        x.n_gall = n_groups(sl);
        x.pq = x.tail_m + (size_t)2 * H * x.ge.B;
        x.psum = (double *)(((uintptr_t)(x.pq + rows * (d + 2)) + 15) & ~(uintptr_t)15);
        x.pall = x.psum + rows * 2;
        x.gq0 = (int *)(x.pall + rows * 2 * N);
        x.gnq = x.gq0 + x.n_gall;
        x.fire = (uint8_t *)(x.gnq + x.n_gall);
        for (int i = 0; i < sl->n_qblk; i++) {
            const int gi = (int)(sl->qblk[i].g - sl->qblk[0].g);
            if (i == 0 || sl->qblk[i - 1].g != sl->qblk[i].g) x.gq0[gi] = i, x.gnq[gi] = 0;
            x.gnq[gi]++;
        }
        memset(x.pq, 0, sizeof(float) * rows * (d + 2));
    }
    for (int i = 0; i < sl->n_qblk; i++) {
        if (sl->qblk[i].owner != r) continue;
        const int64_t g = sl->qblk[i].g;
        if (!x.n_grp || x.grp[x.n_grp - 1].g != g) {
            int q0 = i;
            while (q0 > 0 && sl->qblk[q0 - 1].g == g) q0--;
            int q1 = i;
            while (q1 < sl->n_qblk && sl->qblk[q1].g == g) q1++;
            x.grp[x.n_grp++] = (agroup_t){g, x.n_own, 0, q0, q1 - q0};
        }
        x.grp[x.n_grp - 1].n_own++;
        x.own[x.n_own++] = i;
    }
    cp__gather_rows(p, sl, q);
    cp__pack_own(p, sl, kv, nb_tot);
    /* 1. the halo */
    double t0 = lc_now_s();
    cp__copy_blocks(p, sl, kv, sl->send_blk, ns, sendk, sendv);
    size_t *soff = p->a2a, *sbytes = soff + N, *roff = sbytes + N, *rbytes = roff + N;
    for (int t = 0; t < N; t++) {
        soff[t] = sizeof(float) * stride * (size_t)sl->send_to[t];
        sbytes[t] = sizeof(float) * stride * (size_t)(sl->send_to[t + 1] - sl->send_to[t]);
        roff[t] = sizeof(float) * stride * (size_t)(me->nb + sl->halo_from[t]);
        rbytes[t] = sizeof(float) * stride * (size_t)(sl->halo_from[t + 1] - sl->halo_from[t]);
    }
    int rc = cp_alltoallv(c, sendk, soff, sbytes, p->pack, roff, rbytes);
    if (!rc) rc = cp_alltoallv(c, sendv, soff, sbytes, p->pack + (size_t)nb_tot * stride, roff, rbytes);
    p->timing.collective_s += lc_now_s() - t0;
    if (rc) return rc;
    /* 2. anchors over the windows; every block's pooled query and anchor to every rank */
    const attn_kv_t lview = {.k = p->pack,
                             .v = p->pack + (size_t)nb_tot * stride,
                             .blk_stride = stride,
                             .blocks = sl->ltbl,
                             .block_size = p->block_size,
                             .n_kv = sl->n_kv};
    cp__init_acc(p->acc, (size_t)me->nq, (size_t)H * d, H);
    memset(x.table, 0, sizeof(float) * (size_t)sl->n_qblk * H * (d + 1));
    t0 = lc_now_s();
    if ((rc = anchor_pass(p, &x, &lview))) return rc;
    const double t1 = lc_now_s();
    p->timing.compute_s += t1 - t0;
    rc = cp_allreduce_sum(c, x.table, (size_t)sl->n_qblk * H * (d + 1));
    if (!rc && x.probe) rc = cp_allreduce_sum(c, x.pq, (size_t)x.n_gall * H * x.ge.B * (d + 2));
    p->timing.collective_s += lc_now_s() - t1;
    if (rc) return rc;
    if (x.probe) { // the probe's sums over every rank's candidates, then the same decisions on every rank
        const size_t bytes = sizeof(double) * (size_t)x.n_gall * H * x.ge.B * 2;
        double t2 = lc_now_s();
        if ((rc = probe_sums(p, &x, &lview))) return rc;
        const double t3 = lc_now_s();
        p->timing.compute_s += t3 - t2;
        rc = cp_allgather(c, x.psum, bytes, x.pall);
        p->timing.collective_s += lc_now_s() - t3;
        if (rc) return rc;
        probe_decide(p, &x);
    }
    /* 3. the ring */
    if ((rc = cp__ring_kv(p, c, sl, anchor_step, &x))) return rc;
    cp__scatter_rows(p, sl, p->acc, out, lse);
    return 0;
}
