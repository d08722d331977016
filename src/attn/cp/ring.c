/* The rings of a sharded prompt slice, and cp_run's dispatch.
 *
 * Pass-KV: a rank packs the KV blocks it holds (K blocks, then V blocks, in
 * the store's per-block layout, so the tile engine reads a pack exactly as
 * it reads the store) and the packs go round the ring: at step k rank r
 * holds the pack of rank r - k. Before computing on it, r starts sending it
 * to r + 1 and receiving the next one from r - 1 into the other buffer; it
 * waits for that transfer only after the compute. Each step's partial folds
 * into the rows' running output by LSE, in step order.
 *
 * Pass-Q: the query rows go round instead; each rank attends the visiting
 * rows to the blocks it holds and keeps the partial, and one all-to-all
 * brings every row its N partials, merged in rank order.
 *
 * The compute of a step (cp__attend) is the single-rank tile engine over
 * the key ranges the source holds, causal by absolute position (the tile
 * masks keys after a row), parallel over (KV head, query tile). */
#include <math.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "common/status.h"
#include "common/timeutil.h"

/* ---- the compute of a step ------------------------------------------------------------ */
/* The part of rg that rows at positions first..last may see under a sink +
 * window mask: keys <= last, and j < sink or j > first - window. */
static int clip_ranges(const attn_range_t *rg, int n, int64_t sink, int64_t window, int64_t first, int64_t last,
                       attn_range_t *out) {
    attn_range_t win[2];
    int nw = 0;
    const int64_t wlo = window >= ATTN_NO_WINDOW ? 0 : first - window + 1;
    if (wlo <= sink) {
        win[nw++] = (attn_range_t){0, last + 1};
    } else {
        if (sink > 0) win[nw++] = (attn_range_t){0, sink};
        win[nw++] = (attn_range_t){wlo, last + 1};
    }
    int m = 0;
    for (int w = 0; w < nw; w++)
        for (int i = 0; i < n; i++) {
            int64_t lo = rg[i].lo > win[w].lo ? rg[i].lo : win[w].lo, hi = rg[i].hi < win[w].hi ? rg[i].hi : win[w].hi;
            if (lo >= hi) continue;
            if (m > 0 && out[m - 1].hi == lo)
                out[m - 1].hi = hi;
            else
                out[m++] = (attn_range_t){lo, hi};
        }
    return m;
}

int cp__attend(cp_plan_t *p, const float *q, const int64_t *qpos, const cp_tile_t *tiles, int n_tiles,
               const attn_kv_t *kv, const attn_range_t *rg, int n_rg, int64_t sink, int64_t window, int merge, float *o,
               float *lse, double *computed) {
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, KH = sh->n_kv_heads, G = H / KH, d = sh->head_dim;
    const int n_items = KH * n_tiles;
    int err = 0;
    double comp = 0;
    if (n_items == 0) return 0;
#pragma omp parallel num_threads(p->n_threads) reduction(+ : comp)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        attn_range_t *crg = attn_arena_alloc(ar, sizeof *crg * (size_t)(2 * n_rg + 4));
        const int ok = attn_tile_init(&t, ar, cp__bq(sh) * G, d) == 0 && crg;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int kh = it % KH;
            const cp_tile_t *tl = &tiles[n_tiles - 1 - it / KH]; // later tiles (more keys) first
            const int nq = tl->i1 - tl->i0;
            const int nc = clip_ranges(rg, n_rg, sink, window, qpos[tl->i0], qpos[tl->i1 - 1], crg);
            if (nc == 0) {
                if (merge) continue;
                for (int i = tl->i0; i < tl->i1; i++)
                    for (int g = 0; g < G; g++) {
                        memset(o + ((size_t)i * H + kh * G + g) * d, 0, sizeof(float) * d);
                        lse[(size_t)i * H + kh * G + g] = -INFINITY;
                    }
                continue;
            }
            attn_tile_begin(&t, nq * G);
            t.sink = sink;
            t.window = window;
            for (int i = 0; i < nq; i++)
                for (int g = 0; g < G; g++) {
                    const float *qh = q + ((size_t)(tl->i0 + i) * H + kh * G + g) * d;
                    float *dst = t.q + (size_t)(i * G + g) * d;
                    for (int e = 0; e < d; e++) dst[e] = qh[e] * sh->scale;
                    t.qpos[i * G + g] = qpos[tl->i0 + i];
                }
            attn_tile_run(&t, kv, kh, crg, nc);
            attn_tile_finish(&t);
            for (int i = 0; i < nq; i++)
                for (int g = 0; g < G; g++) {
                    const size_t row = (size_t)(tl->i0 + i) * H + kh * G + g;
                    const int r = i * G + g;
                    if (merge) {
                        attn_merge_row(o + row * d, &lse[row], t.acc + (size_t)r * d, t.l[r], d);
                    } else {
                        memcpy(o + row * d, t.acc + (size_t)r * d, sizeof(float) * d);
                        lse[row] = t.l[r];
                    }
                }
            comp += t.computed;
        }
    }
    if (computed) *computed += comp;
    return err;
}

/* ---- packs ----------------------------------------------------------------------------------- */
attn_kv_t cp__pack_view(const cp_plan_t *p, const cp_slice_t *sl, int s, const float *pack, int nb_tot,
                        size_t blk_stride) {
    return (attn_kv_t){.k = pack,
                       .v = pack + (size_t)nb_tot * blk_stride,
                       .blk_stride = blk_stride,
                       .blocks = sl->hold[s].tbl,
                       .block_size = p->block_size,
                       .n_kv = sl->n_kv};
}

void cp__copy_blocks(const cp_plan_t *p, const cp_slice_t *sl, const attn_store_t *kv, const int32_t *list, int n,
                     float *k_dst, float *v_dst) {
    const int32_t *blocks = cp__table(&p->seqs[sl->seq], kv);
    const size_t stride = (size_t)p->shape.n_kv_heads * p->block_size * p->shape.head_dim;
#pragma omp parallel for schedule(static) num_threads(p->n_threads)
    for (int i = 0; i < n; i++) {
        const size_t id = (size_t)blocks[list[i]];
        memcpy(k_dst + (size_t)i * stride, kv->k + id * kv->blk_stride, sizeof(float) * stride);
        memcpy(v_dst + (size_t)i * stride, kv->v + id * kv->blk_stride, sizeof(float) * stride);
    }
}

void cp__pack_own(cp_plan_t *p, const cp_slice_t *sl, const attn_store_t *kv, int nb_tot) {
    const cp_hold_t *me = &sl->hold[p->rank];
    const size_t stride = (size_t)p->shape.n_kv_heads * p->block_size * p->shape.head_dim;
    cp__copy_blocks(p, sl, kv, me->blk, me->nb, p->pack, p->pack + (size_t)nb_tot * stride);
}

/* ---- rows ------------------------------------------------------------------------------------ */
void cp__gather_rows(const cp_plan_t *p, const cp_slice_t *sl, const float *q) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const cp_hold_t *me = &sl->hold[p->rank];
    const size_t rs = (size_t)p->shape.n_heads * p->shape.head_dim;
    for (int i = 0; i < me->nq; i++)
        memcpy(p->qbuf + (size_t)i * rs, q + (size_t)(s->tok0 + me->qpos[i] - s->pos0) * rs, sizeof(float) * rs);
}

/* Own rows' outputs (acc: (nq, H, d) then lse (nq, H)) to out and lse. */
void cp__scatter_rows(const cp_plan_t *p, const cp_slice_t *sl, const float *acc, float *out, float *lse) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const cp_hold_t *me = &sl->hold[p->rank];
    const int H = p->shape.n_heads;
    const size_t rs = (size_t)H * p->shape.head_dim;
    const float *al = acc + (size_t)me->nq * rs;
    for (int i = 0; i < me->nq; i++) {
        const size_t row = (size_t)(s->tok0 + me->qpos[i] - s->pos0);
        memcpy(out + row * rs, acc + (size_t)i * rs, sizeof(float) * rs);
        if (lse) memcpy(lse + row * H, al + (size_t)i * H, sizeof(float) * H);
    }
}

void cp__load_block(const cp_plan_t *p, const cp_qblk_t *qb, int h, attn_tile_t *t) {
    const int H = p->shape.n_heads, d = p->shape.head_dim, nr = (int)(qb->p1 - qb->p0);
    attn_tile_begin(t, nr);
    for (int i = 0; i < nr; i++) {
        const float *qr = p->qbuf + ((size_t)(qb->i0 + i) * H + h) * d;
        for (int e = 0; e < d; e++) t->q[(size_t)i * d + e] = qr[e] * p->shape.scale;
        t->qpos[i] = qb->p0 + i;
    }
}

void cp__merge_block(const cp_plan_t *p, const cp_qblk_t *qb, int h, const attn_tile_t *t, float *acc, float *al) {
    const int H = p->shape.n_heads, d = p->shape.head_dim;
    for (int i = 0; i < t->nr; i++) {
        const size_t row = (size_t)(qb->i0 + i) * H + h;
        attn_merge_row(acc + row * d, &al[row], t->acc + (size_t)i * d, t->l[i], d);
    }
}

void cp__init_acc(float *acc, size_t rows, size_t rs, int H) {
    if (!rows) return; // a rank that holds no row of the slice has no buffer yet
    memset(acc, 0, sizeof(float) * rows * rs);
    for (size_t i = 0; i < rows * H; i++) acc[rows * rs + i] = -INFINITY;
}

/* The mask a slice's dense rows use at this layer. */
static void dense_mask(const cp_slice_t *sl, int64_t window, int64_t *sink, int64_t *win) {
    *sink = 0;
    *win = ATTN_NO_WINDOW;
    if (window > 0)
        *win = window;
    else if (sl->pol && sl->pol->prefill == ATTN_PREFILL_STREAMING)
        attn__streaming_window(sl->pol, sink, win);
}

/* ---- pass-KV ------------------------------------------------------------------------------- */
int cp__ring_kv(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, cp_step_cb cb, void *ud) {
    const int N = p->n_ranks, r = p->rank;
    const size_t stride = (size_t)p->shape.n_kv_heads * p->block_size * p->shape.head_dim;
    const int nb_own_tot = sl->hold[r].nb + sl->n_halo;
    int rc = 0;
    for (int k = 0; k < N && !rc; k++) {
        const int src = (r - k + N) % N;
        const cp_hold_t *hs = &sl->hold[src];
        float *cur = k == 0 ? p->pack : p->rbuf[(k - 1) & 1];
        const int cur_tot = k == 0 ? nb_own_tot : hs->nb;
        cp_req_t rk = {-1}, rv = {-1};
        if (k < N - 1) { // the next pack moves while this one is used
            const int nsrc = (r - k - 1 + N) % N;
            const size_t nb_n = (size_t)sl->hold[nsrc].nb, nb_c = (size_t)hs->nb;
            float *nxt = p->rbuf[k & 1];
            rc = cp_sendrecv_start(c, cur, sizeof(float) * nb_c * stride, (r + 1) % N, nxt,
                                   sizeof(float) * nb_n * stride, (r + N - 1) % N, &rk);
            if (!rc)
                rc = cp_sendrecv_start(c, cur + (size_t)cur_tot * stride, sizeof(float) * nb_c * stride, (r + 1) % N,
                                       nxt + nb_n * stride, sizeof(float) * nb_n * stride, (r + N - 1) % N, &rv);
        }
        const double t0 = lc_now_s();
        if (!rc) {
            const attn_kv_t view = cp__pack_view(p, sl, src, cur, cur_tot, stride);
            rc = cb(p, sl, src, &view, ud);
        }
        const double t1 = lc_now_s();
        int w1 = cp_wait(c, &rk), w2 = cp_wait(c, &rv);
        rc = rc ? rc : w1 ? w1 : w2;
        p->timing.compute_s += t1 - t0;
        p->timing.wait_s += lc_now_s() - t1;
        p->timing.ring_steps++;
    }
    return rc;
}

typedef struct {
    int64_t sink, window;
} dense_ud_t;

static int dense_step(cp_plan_t *p, const cp_slice_t *sl, int src, const attn_kv_t *view, void *ud) {
    const dense_ud_t *u = ud;
    const cp_hold_t *me = &sl->hold[p->rank], *hs = &sl->hold[src];
    if (me->nq == 0 || hs->n_rg == 0) return 0;
    const size_t rs = (size_t)p->shape.n_heads * p->shape.head_dim;
    return cp__attend(p, p->qbuf, me->qpos, me->tiles, me->n_tiles, view, hs->rg, hs->n_rg, u->sink, u->window, 1,
                      p->acc, p->acc + (size_t)me->nq * rs, &p->computed[sl->seq]);
}

static int pass_kv(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, int64_t window, const attn_store_t *kv,
                   const float *q, float *out, float *lse) {
    dense_ud_t u;
    dense_mask(sl, window, &u.sink, &u.window);
    const cp_hold_t *me = &sl->hold[p->rank];
    cp__gather_rows(p, sl, q);
    cp__init_acc(p->acc, (size_t)me->nq, (size_t)p->shape.n_heads * p->shape.head_dim, p->shape.n_heads);
    cp__pack_own(p, sl, kv, me->nb + sl->n_halo);
    int rc = cp__ring_kv(p, c, sl, dense_step, &u);
    if (!rc) cp__scatter_rows(p, sl, p->acc, out, lse);
    return rc;
}

/* ---- pass-Q ---------------------------------------------------------------------------------- */
static int pass_q(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, int64_t window, const attn_store_t *kv,
                  const float *q, float *out, float *lse) {
    const int N = p->n_ranks, r = p->rank, H = p->shape.n_heads, d = p->shape.head_dim;
    const cp_seq_t *s = &p->seqs[sl->seq];
    const cp_hold_t *me = &sl->hold[r];
    const size_t rs = (size_t)H * d, prs = (size_t)H * (d + 1);
    int64_t sink, win;
    dense_mask(sl, window, &sink, &win);
    cp__gather_rows(p, sl, q);
    const attn_kv_t local = {.k = kv->k,
                             .v = kv->v,
                             .blk_stride = kv->blk_stride,
                             .blocks = cp__table(s, kv),
                             .block_size = p->block_size,
                             .n_kv = sl->n_kv};
    size_t *soff = p->a2a, *sbytes = soff + N, *roff = sbytes + N, *rbytes = roff + N;
    size_t off = 0;
    for (int t = 0; t < N; t++) {
        soff[t] = off * sizeof(float);
        sbytes[t] = (size_t)sl->hold[t].nq * prs * sizeof(float);
        off += (size_t)sl->hold[t].nq * prs;
        roff[t] = (size_t)t * me->nq * prs * sizeof(float);
        rbytes[t] = (size_t)me->nq * prs * sizeof(float);
    }
    int rc = 0;
    for (int k = 0; k < N && !rc; k++) {
        const int org = (r - k + N) % N;
        const cp_hold_t *ho = &sl->hold[org];
        const float *cur = k == 0 ? p->qbuf : p->qrecv[(k - 1) & 1];
        cp_req_t rq = {-1};
        if (k < N - 1) {
            const int nxt = (r - k - 1 + N) % N;
            rc = cp_sendrecv_start(c, cur, sizeof(float) * ho->nq * rs, (r + 1) % N, p->qrecv[k & 1],
                                   sizeof(float) * sl->hold[nxt].nq * rs, (r + N - 1) % N, &rq);
        }
        const double t0 = lc_now_s();
        float *po = (float *)((char *)p->part + soff[org]);
        if (!rc && ho->nq > 0)
            rc = cp__attend(p, cur, ho->qpos, ho->tiles, ho->n_tiles, &local, me->rg, me->n_rg, sink, win, 0, po,
                            po + (size_t)ho->nq * rs, &p->computed[sl->seq]);
        const double t1 = lc_now_s();
        int w = cp_wait(c, &rq);
        rc = rc ? rc : w;
        p->timing.compute_s += t1 - t0;
        p->timing.wait_s += lc_now_s() - t1;
        p->timing.ring_steps++;
    }
    if (rc) return rc;
    const double t0 = lc_now_s();
    rc = cp_alltoallv(c, p->part, soff, sbytes, p->partin, roff, rbytes);
    p->timing.collective_s += lc_now_s() - t0;
    if (rc) return rc;
    /* own rows: the partials of ranks 0 .. N-1 in order */
    float *acc = p->acc, *al = acc + (size_t)me->nq * rs;
    cp__init_acc(acc, (size_t)me->nq, rs, H);
    for (int t = 0; t < N; t++) {
        const float *po = p->partin + (size_t)t * me->nq * prs, *pl = po + (size_t)me->nq * rs;
        for (size_t i = 0; i < (size_t)me->nq * H; i++) attn_merge_row(acc + i * d, &al[i], po + i * d, pl[i], d);
    }
    cp__scatter_rows(p, sl, acc, out, lse);
    return 0;
}

/* ---- run --------------------------------------------------------------------------------------- */
int cp_run(cp_plan_t *p, cp_comm_t *c, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out,
           float *lse) {
    if (!p || !c || !kv || !q || !out || layer < 0 || layer >= p->n_layers || window < 0 || !p->n_seqs)
        return LC_EINVAL;
    if (cp_comm_size(c) != p->n_ranks || cp_comm_rank(c) != p->rank || kv->block_size != p->block_size || !kv->k ||
        !kv->v)
        return LC_EINVAL;
    if (kv->blk_stride < (size_t)p->shape.n_kv_heads * p->block_size * p->shape.head_dim) return LC_EINVAL;
    if (attn_max_threads() > p->n_threads) return LC_EINVAL;
    int wi = -1;
    if (window > 0) { // the layer's own window: planned (cp_plan_windows)
        for (int k = 0; k < p->n_windows; k++)
            if (p->windows[k] == window) wi = k;
        if (wi < 0) return LC_EINVAL;
    }
    for (int i = 0; i < p->n_slices; i++) {
        const cp_slice_t *sl = &p->slices[i];
        int rc;
        if (wi >= 0)
            rc = cp__window_run(p, c, sl, wi, kv, q, out, lse);
        else if (window == 0 && sl->pol && sl->pol->prefill == ATTN_PREFILL_ANCHOR)
            rc = cp__anchor_run(p, c, sl, kv, q, out, lse);
        else if (window == 0 && sl->pol && sl->pol->prefill == ATTN_PREFILL_FLEX && sl->n_qblk)
            rc = cp__flex_run(p, c, sl, kv, q, out, lse);
        else if (sl->mode == CP_PASS_Q)
            rc = pass_q(p, c, sl, window, kv, q, out, lse);
        else
            rc = pass_kv(p, c, sl, window, kv, q, out, lse);
        if (rc) return rc;
    }
    return cp__decode_run(p, c, layer, window, kv, q, out, lse);
}
