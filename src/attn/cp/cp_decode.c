/* Decode over a sharded KV cache: every generated row of every sharded
 * sequence of the step, one set of collectives per layer.
 *
 * 1. The row's owner shares its query (an all-reduce of a zeroed table in
 *    which each owner filled its rows: x + 0 = x, exact).
 * 2. The keys a row attends are chosen globally, as the single-rank kernels
 *    choose them: Quest from the page bounds, which each rank computes for
 *    its own pages and one all-reduce assembles (the same bits, so the same
 *    pages); TidalDecode at its selection layers from the attention mass,
 *    whose normalisation (row max, then the sum of exp) comes from
 *    all-gathered per-rank parts, and the mass itself from one all-reduce.
 * 3. Each rank attends the chosen keys it holds (a partial with its LSE).
 * 4. One all-gather of the partials; the owner merges them in rank order and
 *    writes the row.
 * The TidalDecode selection lives in the plan for the rest of the step, as
 * the single-rank one lives in the sequence's state for the same step. */
#include <math.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "common/status.h"
#include "common/timeutil.h"

static int is_quest(const attn_policy_t *pol) { return pol && pol->decode == ATTN_DECODE_QUEST; }
static int is_tidal(const attn_policy_t *pol) { return pol && pol->decode == ATTN_DECODE_TIDAL; }

int cp__decode_plan(cp_plan_t *p, size_t *per_thread) {
    const int N = p->n_ranks, H = p->shape.n_heads, KH = p->shape.n_kv_heads, G = H / KH, d = p->shape.head_dim;
    const int bs = p->block_size;
    int n = 0;
    for (int i = 0; i < p->n_seqs; i++)
        if (p->seqs[i].decode) n += p->seqs[i].n_tok;
    size_t cap = (size_t)p->cap_drows;
    if (lc_grow((void **)&p->drows, &cap, (size_t)n, sizeof *p->drows)) return LC_ENOMEM;
    p->cap_drows = (int)cap;
    p->n_drows = 0;
    p->tidal_cap = 1;
    size_t n_rg = 0, n_qs = 0, n_tm = 0;
    int64_t max_kv = 1;
    int max_sel = 2, max_own = 1;
    for (int i = 0; i < p->n_seqs; i++) {
        const cp_seq_t *s = &p->seqs[i];
        if (!s->decode) continue;
        const attn_policy_t *pol = s->state ? &s->state->pol : NULL;
        for (int r = 0; r < s->n_tok; r++) {
            cp_drow_t *dr = &p->drows[p->n_drows++];
            memset(dr, 0, sizeof *dr);
            dr->seq = i;
            dr->row = r;
            dr->qrow = s->tok0 + r;
            dr->n_kv = s->pos0 + r + 1;
            const int64_t n_blk = (dr->n_kv + bs - 1) / bs;
            for (int64_t b = 0; b < n_blk; b++)
                if (s->owner[b] >= N) return LC_EINVAL;
            dr->owner = s->owner[n_blk - 1];
            dr->pol = pol;
            dr->tidal_due = 0;
            int own = 0;
            for (int64_t b = 0; b < n_blk; b++)
                if (s->owner[b] == p->rank && (b == 0 || s->owner[b - 1] != p->rank)) own++;
            dr->rg0 = n_rg;
            n_rg += (size_t)own;
            if (own > max_own) max_own = own;
            if (dr->n_kv > max_kv) max_kv = dr->n_kv;
            if (is_quest(pol)) {
                dr->qs_off = n_qs;
                n_qs += (size_t)KH * n_blk;
                int64_t bp = attn__quest_budget_pages(pol, bs);
                if (bp + 1 > max_sel) max_sel = (int)(bp + 1);
            }
            if (is_tidal(pol)) {
                dr->tm_off = n_tm;
                n_tm += (size_t)KH * dr->n_kv;
                int c = pol->decode_budget > 0 ? pol->decode_budget + 1 : 2;
                if (c > p->tidal_cap) p->tidal_cap = c;
                if (c + 1 > max_sel) max_sel = c + 1;
            }
        }
    }
    if (!n) return 0;
    const size_t nd = (size_t)n;
    if (lc_grow((void **)&p->drg, &p->cap_drg, n_rg, sizeof *p->drg) ||
        lc_grow((void **)&p->dq, &p->cap_dq, nd * H * d, sizeof(float)) ||
        lc_grow((void **)&p->dpart, &p->cap_dpart, nd * H * (d + 1), sizeof(float)) ||
        lc_grow((void **)&p->dall, &p->cap_dall, (size_t)N * nd * H * (d + 1), sizeof(float)) ||
        lc_grow((void **)&p->dqs, &p->cap_dqs, n_qs, sizeof(float)) ||
        lc_grow((void **)&p->dtm, &p->cap_dtm, n_tm, sizeof(float)) ||
        lc_grow((void **)&p->dmax, &p->cap_dmax, (size_t)3 * (N + 1) * nd * H + 2, sizeof(float)) ||
        lc_grow((void **)&p->dsel, &p->cap_dsel, nd * KH * p->tidal_cap, sizeof(int64_t)) ||
        lc_grow((void **)&p->dseln, &p->cap_dseln, nd * KH, sizeof(int)))
        return LC_ENOMEM;
    for (int i = 0; i < p->n_drows; i++) { // this rank's ranges of each row
        cp_drow_t *dr = &p->drows[i];
        const uint8_t *ow = p->seqs[dr->seq].owner;
        for (int64_t b = 0; b * bs < dr->n_kv; b++) {
            if (ow[b] != p->rank) continue;
            const int64_t lo = b * bs, hi = lo + bs < dr->n_kv ? lo + bs : dr->n_kv;
            if (dr->n_rg > 0 && p->drg[dr->rg0 + dr->n_rg - 1].hi == lo)
                p->drg[dr->rg0 + dr->n_rg - 1].hi = hi;
            else
                p->drg[dr->rg0 + dr->n_rg++] = (attn_range_t){lo, hi};
        }
    }
    /* per thread: a tile of one GQA group, two range lists, and the larger
     * of Quest's sort and TidalDecode's scores */
    const int64_t pages = (max_kv + bs - 1) / bs;
    size_t w = attn_tile_bytes(G, d) + 2 * attn_arena_need(sizeof(attn_range_t) * (size_t)(max_sel + max_own + 4));
    size_t extra = attn_arena_need((size_t)pages * 8);
    if (n_tm) {
        size_t t = attn_arena_need(sizeof(float) * (size_t)G * max_kv) + attn_arena_need(sizeof(float) * max_kv);
        if (t > extra) extra = t;
    }
    if (w + extra > *per_thread) *per_thread = w + extra;
    return 0;
}

/* ---- selection ----------------------------------------------------------------------- */
/* x ∩ y of sorted disjoint lists into out; returns the count. */
static int intersect(const attn_range_t *x, int nx, const attn_range_t *y, int ny, attn_range_t *out) {
    int i = 0, j = 0, m = 0;
    while (i < nx && j < ny) {
        int64_t lo = x[i].lo > y[j].lo ? x[i].lo : y[j].lo, hi = x[i].hi < y[j].hi ? x[i].hi : y[j].hi;
        if (lo < hi) {
            if (m > 0 && out[m - 1].hi == lo)
                out[m - 1].hi = hi;
            else
                out[m++] = (attn_range_t){lo, hi};
        }
        if (x[i].hi < y[j].hi)
            i++;
        else
            j++;
    }
    return m;
}

/* The global key ranges of row dr for KV head kh at this layer, and the mask. */
static int row_ranges(cp_plan_t *p, const cp_drow_t *dr, int kh, int64_t window, const attn_store_t *kv,
                      attn_arena_t *ar, attn_range_t *rg, int64_t *sink, int64_t *win) {
    const int bs = p->block_size, KH = p->shape.n_kv_heads;
    const int64_t n = dr->n_kv;
    *sink = 0;
    *win = ATTN_NO_WINDOW;
    if (window > 0) {
        *win = window;
        rg[0] = (attn_range_t){n - window > 0 ? n - window : 0, n};
        return 1;
    }
    switch (dr->meth) {
    case ATTN_DECODE_STREAMING: {
        attn__streaming_window(dr->pol, sink, win);
        const int64_t wlo = n - *win > 0 ? n - *win : 0;
        if (wlo <= *sink) break;
        int nr = 0;
        if (*sink > 0) rg[nr++] = (attn_range_t){0, *sink};
        rg[nr++] = (attn_range_t){wlo, n};
        return nr;
    }
    case ATTN_DECODE_QUEST: {
        const int64_t n_pages = (n + bs - 1) / bs, bp = attn__quest_budget_pages(dr->pol, bs);
        if (!kv->kmin || !kv->kmax || n_pages <= bp) break;
        void *tmp = attn_arena_alloc(ar, (size_t)n_pages * 8);
        if (!tmp) return LC_ENOMEM;
        return attn__quest_select(p->dqs + dr->qs_off + (size_t)kh * n_pages, n, bs, bp, tmp, rg);
    }
    case ATTN_DECODE_TIDAL: {
        if (!dr->sel_valid) break;
        const size_t i = (size_t)(dr - p->drows) * KH + kh;
        const int64_t *pos = p->dsel + i * p->tidal_cap;
        const int np = p->dseln[i];
        int nr = 0;
        for (int u = 0; u <= np; u++) { // the carried positions and the newest one
            int64_t x = u < np ? pos[u] : n - 1;
            if (nr > 0 && rg[nr - 1].hi > x) continue;
            if (nr > 0 && rg[nr - 1].hi == x)
                rg[nr - 1].hi = x + 1;
            else
                rg[nr++] = (attn_range_t){x, x + 1};
        }
        return nr;
    }
    default: break;
    }
    rg[0] = (attn_range_t){0, n};
    return 1;
}

/* Quest: every rank's page bounds into the shared table, then one sum. */
static int quest_scores(cp_plan_t *p, cp_comm_t *c, const attn_store_t *kv) {
    const int KH = p->shape.n_kv_heads, G = p->shape.n_heads / KH, d = p->shape.head_dim, bs = p->block_size;
    if (!kv->kmin || !kv->kmax) return 0; // no summaries: dense on every rank alike
    size_t total = 0;
    for (int i = 0; i < p->n_drows; i++) {
        const cp_drow_t *dr = &p->drows[i];
        if (dr->meth == ATTN_DECODE_QUEST) total = dr->qs_off + (size_t)KH * ((dr->n_kv + bs - 1) / bs);
    }
    if (!total) return 0;
    memset(p->dqs, 0, sizeof(float) * total);
#pragma omp parallel for schedule(dynamic, 1) num_threads(p->n_threads)
    for (int i = 0; i < p->n_drows; i++) {
        const cp_drow_t *dr = &p->drows[i];
        if (dr->meth != ATTN_DECODE_QUEST) continue;
        const cp_seq_t *s = &p->seqs[dr->seq];
        const int64_t n_pages = (dr->n_kv + bs - 1) / bs;
        for (int kh = 0; kh < KH; kh++)
            for (int64_t pg = 0; pg < n_pages - 1; pg++) { // the newest page is always kept
                if (s->owner[pg] != p->rank) continue;
                const size_t b = (size_t)cp__table(s, kv)[pg];
                p->dqs[dr->qs_off + (size_t)kh * n_pages + pg] = attn__quest_bound(
                    p->dq + ((size_t)i * KH + kh) * G * d, G, d, kv->kmin + b * kv->sum_stride + (size_t)kh * d,
                    kv->kmax + b * kv->sum_stride + (size_t)kh * d);
            }
    }
    return cp_allreduce_sum(c, p->dqs, total);
}

/* Scores of the GQA group of row i, KV head kh, against this rank's keys of
 * the row, through the tile engine (as the single-rank selection computes
 * them): S (G, n_kv), only the columns of own keys written. */
static void group_scores(cp_plan_t *p, const cp_drow_t *dr, int i, int kh, const attn_kv_t *kvv, attn_tile_t *t,
                         float *S) {
    const int KH = p->shape.n_kv_heads, G = p->shape.n_heads / KH, d = p->shape.head_dim;
    attn_tile_begin(t, G);
    for (int g = 0; g < G; g++)
        for (int e = 0; e < d; e++)
            t->q[(size_t)g * d + e] = p->dq[((size_t)i * KH * G + kh * G + g) * d + e] * p->shape.scale;
    const attn_range_t *own = p->drg + dr->rg0;
    for (int u = 0; u < dr->n_rg; u++) attn_tile_scores(t, kvv, kh, own[u].lo, own[u].hi, S + own[u].lo, dr->n_kv);
}

/* TidalDecode at a selection layer: the mass of every position, normalised
 * over all ranks' keys, then the same choice on every rank. */
static int tidal_select(cp_plan_t *p, cp_comm_t *c, const attn_store_t *kv) {
    const int N = p->n_ranks, H = p->shape.n_heads, KH = p->shape.n_kv_heads, G = H / KH;
    const size_t nd = (size_t)p->n_drows;
    int any = 0;
    for (int i = 0; i < p->n_drows; i++) any |= is_tidal(p->drows[i].pol) && p->drows[i].sel;
    if (!any) return 0;
    float *mx = p->dmax;                                               // (nd, H) own maxima
    float *mx_all = mx + nd * H;                                       // (N, nd, H)
    double *sm = (double *)(p->dmax + (nd * H * (N + 1) + 1) / 2 * 2); // (nd, H) own sums
    double *sm_all = sm + nd * H;                                      // (N, nd, H)
    int err = 0;
    size_t tm_total = 0; // every TidalDecode row's table, selecting at this layer or not
    for (int i = 0; i < p->n_drows; i++)
        if (is_tidal(p->drows[i].pol) && p->drows[i].tm_off + (size_t)KH * p->drows[i].n_kv > tm_total)
            tm_total = p->drows[i].tm_off + (size_t)KH * p->drows[i].n_kv;
    for (int pass = 0; pass < 3; pass++) {
#pragma omp parallel num_threads(p->n_threads)
        {
            attn_arena_t *ar = &p->arenas[attn_thread_num()];
            attn_arena_reset(ar);
            attn_tile_t t;
            const int ok = attn_tile_init(&t, ar, G, p->shape.head_dim) == 0;
            float *S = NULL;
#pragma omp for schedule(dynamic, 1)
            for (int it = 0; it < p->n_drows * KH; it++) {
                const int i = it / KH, kh = it % KH;
                const cp_drow_t *dr = &p->drows[i];
                if (!is_tidal(dr->pol) || !dr->sel) continue;
                const int64_t n = dr->n_kv;
                size_t mark = ar->used;
                S = ok ? attn_arena_alloc(ar, sizeof(float) * (size_t)G * n) : NULL;
                if (!S) {
#pragma omp atomic write
                    err = LC_ENOMEM;
                    continue;
                }
                const attn_kv_t kvv = {.k = kv->k,
                                       .v = kv->v,
                                       .blk_stride = kv->blk_stride,
                                       .blocks = cp__table(&p->seqs[dr->seq], kv),
                                       .block_size = p->block_size,
                                       .n_kv = n};
                group_scores(p, dr, i, kh, &kvv, &t, S);
                const attn_range_t *own = p->drg + dr->rg0;
                for (int g = 0; g < G; g++) {
                    const size_t hi = (size_t)i * H + kh * G + g;
                    const float *s = S + (size_t)g * n;
                    if (pass == 0) {
                        float m = -INFINITY;
                        for (int u = 0; u < dr->n_rg; u++)
                            for (int64_t j = own[u].lo; j < own[u].hi; j++) m = s[j] > m ? s[j] : m;
                        mx[hi] = m;
                    } else if (pass == 1) {
                        double l = 0;
                        for (int u = 0; u < dr->n_rg; u++)
                            for (int64_t j = own[u].lo; j < own[u].hi; j++) l += expf(s[j] - mx[hi]);
                        sm[hi] = l;
                    }
                }
                if (pass == 2) {
                    float *mass = p->dtm + dr->tm_off + (size_t)kh * n;
                    for (int g = 0; g < G; g++) {
                        const size_t hi = (size_t)i * H + kh * G + g;
                        const float *s = S + (size_t)g * n, inv = (float)(1.0 / sm[hi]);
                        for (int u = 0; u < dr->n_rg; u++)
                            for (int64_t j = own[u].lo; j < own[u].hi; j++) mass[j] += expf(s[j] - mx[hi]) * inv;
                    }
                }
                ar->used = mark;
            }
        }
        if (err) return err;
        int rc = 0;
        if (pass == 0) {
            rc = cp_allgather(c, mx, sizeof(float) * nd * H, mx_all);
            for (size_t x = 0; !rc && x < nd * H; x++) {
                float m = -INFINITY;
                for (int r = 0; r < N; r++) m = mx_all[(size_t)r * nd * H + x] > m ? mx_all[(size_t)r * nd * H + x] : m;
                mx[x] = m;
            }
        } else if (pass == 1) {
            rc = cp_allgather(c, sm, sizeof(double) * nd * H, sm_all);
            for (size_t x = 0; !rc && x < nd * H; x++) {
                double l = 0;
                for (int r = 0; r < N; r++) l += sm_all[(size_t)r * nd * H + x];
                sm[x] = l;
            }
            memset(p->dtm, 0, sizeof(float) * tm_total); // the mass tables, before pass 2
        } else {
            rc = cp_allreduce_sum(c, p->dtm, tm_total);
        }
        if (rc) return rc;
    }
    /* the same choice on every rank */
    for (int i = 0; i < p->n_drows; i++) {
        cp_drow_t *dr = &p->drows[i];
        if (!is_tidal(dr->pol) || !dr->sel) continue;
        const int64_t n = dr->n_kv;
        int64_t k = dr->pol->decode_budget < n ? dr->pol->decode_budget : n;
        if (k < 1) k = 1;
        float *tmp = (float *)p->arenas[0].base; // the first arena is idle between parallel regions
        if (p->per_thread < sizeof(float) * (size_t)n) return LC_ENOMEM;
        for (int kh = 0; kh < KH; kh++) {
            const size_t x = (size_t)i * KH + kh;
            p->dseln[x] =
                (int)attn__tidal_pick(p->dtm + dr->tm_off + (size_t)kh * n, n, k, tmp, p->dsel + x * p->tidal_cap);
        }
        dr->sel_valid = 1;
    }
    return 0;
}

/* ---- run ---------------------------------------------------------------------------------- */
int cp__decode_run(cp_plan_t *p, cp_comm_t *c, int layer, int64_t window, const attn_store_t *kv, const float *q,
                   float *out, float *lse) {
    if (!p->n_drows) return 0;
    const int N = p->n_ranks, H = p->shape.n_heads, KH = p->shape.n_kv_heads, G = H / KH, d = p->shape.head_dim;
    const size_t nd = (size_t)p->n_drows, rs = (size_t)H * d;
    double t0 = lc_now_s();
    /* 1. queries from their owners */
    memset(p->dq, 0, sizeof(float) * nd * rs);
    for (int i = 0; i < p->n_drows; i++)
        if (p->drows[i].owner == p->rank) memcpy(p->dq + i * rs, q + (size_t)p->drows[i].qrow * rs, sizeof(float) * rs);
    int rc = cp_allreduce_sum(c, p->dq, nd * rs);
    if (rc) return rc;
    /* 2. this layer's methods and global selections */
    for (int i = 0; i < p->n_drows; i++) {
        cp_drow_t *dr = &p->drows[i];
        dr->sel = 0;
        if (window > 0) { // the model's own window: dense; a selection due here moves to the next global layer
            dr->meth = ATTN_DECODE_DENSE;
        } else {
            dr->meth = (int)attn_decode_layer(dr->pol, layer, dr->tidal_due, &dr->sel);
        }
        dr->tidal_due = attn_decode_due(dr->pol, layer, window > 0, dr->tidal_due);
    }
    if ((rc = quest_scores(p, c, kv))) return rc;
    p->timing.collective_s += lc_now_s() - t0;
    /* 3. partials over own keys */
    const double t1 = lc_now_s();
    float *po = p->dpart, *pl = p->dpart + nd * rs;
    int err = 0;
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        int cap = 4;
        for (int i = 0; i < p->n_drows; i++) cap = p->drows[i].n_rg > cap ? p->drows[i].n_rg : cap;
        cap += p->tidal_cap + 4;
        for (int i = 0; i < p->n_drows; i++)
            if (is_quest(p->drows[i].pol)) {
                int64_t bp = attn__quest_budget_pages(p->drows[i].pol, p->block_size) + 2;
                cap = cap > bp + p->drows[i].n_rg + 4 ? cap : (int)(bp + p->drows[i].n_rg + 4);
            }
        attn_range_t *grg = attn_arena_alloc(ar, sizeof *grg * (size_t)cap);
        attn_range_t *mine = attn_arena_alloc(ar, sizeof *mine * (size_t)cap);
        const int ok = attn_tile_init(&t, ar, G, d) == 0 && grg && mine;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
        const size_t mark = ar->used;
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < p->n_drows * KH; it++) {
            if (!ok) continue;
            const int i = it / KH, kh = it % KH;
            const cp_drow_t *dr = &p->drows[i];
            int64_t sink, win;
            ar->used = mark;
            int ng = row_ranges(p, dr, kh, window, kv, ar, grg, &sink, &win);
            if (ng < 0) {
#pragma omp atomic write
                err = ng;
                continue;
            }
            const int nm = intersect(grg, ng, p->drg + dr->rg0, dr->n_rg, mine);
            for (int g = 0; g < G; g++) {
                memset(po + ((size_t)i * H + kh * G + g) * d, 0, sizeof(float) * d);
                pl[(size_t)i * H + kh * G + g] = -INFINITY;
            }
            if (nm == 0) continue;
            const attn_kv_t kvv = {.k = kv->k,
                                   .v = kv->v,
                                   .blk_stride = kv->blk_stride,
                                   .blocks = cp__table(&p->seqs[dr->seq], kv),
                                   .block_size = p->block_size,
                                   .n_kv = dr->n_kv};
            attn_tile_begin(&t, G);
            t.sink = sink;
            t.window = win;
            for (int g = 0; g < G; g++) {
                for (int e = 0; e < d; e++)
                    t.q[(size_t)g * d + e] = p->dq[((size_t)i * H + kh * G + g) * d + e] * p->shape.scale;
                t.qpos[g] = dr->n_kv - 1;
            }
            attn_tile_run(&t, &kvv, kh, mine, nm);
            attn_tile_finish(&t);
            for (int g = 0; g < G; g++) {
                memcpy(po + ((size_t)i * H + kh * G + g) * d, t.acc + (size_t)g * d, sizeof(float) * d);
                pl[(size_t)i * H + kh * G + g] = t.l[g];
            }
#pragma omp atomic
            p->computed[dr->seq] += t.computed;
        }
    }
    if (err) return err;
    const double t2 = lc_now_s();
    p->timing.compute_s += t2 - t1;
    /* TidalDecode's selection layers choose for the layers after them */
    if ((rc = tidal_select(p, c, kv))) return rc;
    /* 4. every rank's partials; owners merge in rank order */
    if ((rc = cp_allgather(c, p->dpart, sizeof(float) * nd * H * (d + 1), p->dall))) return rc;
    const size_t psz = nd * H * (d + 1);
    for (int i = 0; i < p->n_drows; i++) {
        const cp_drow_t *dr = &p->drows[i];
        if (dr->owner != p->rank) continue;
        float *o = out + (size_t)dr->qrow * rs;
        for (int h = 0; h < H; h++) {
            float l = -INFINITY, *oh = o + (size_t)h * d;
            memset(oh, 0, sizeof(float) * d);
            for (int r = 0; r < N; r++) {
                const float *src = p->dall + (size_t)r * psz;
                attn_merge_row(oh, &l, src + ((size_t)i * H + h) * d, src[nd * rs + (size_t)i * H + h], d);
            }
            if (lse) lse[(size_t)dr->qrow * H + h] = l;
        }
    }
    p->timing.collective_s += lc_now_s() - t2;
    return 0;
}
