/* Who holds what, and the plan of one rank: the zig-zag assignment of a
 * prompt slice's blocks, every rank's KV blocks and query rows of each
 * sharded slice (all ranks know all of it, so no message sizes are ever
 * exchanged), the tiles the rank's queries are cut into, and every buffer
 * the layers of the step will use, sized here once. */
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "attn/cp/cp_ring_map.h"
#include "common/status.h"

void cp_zigzag(int n_ranks, int block_size, int align, int64_t pos0, int64_t n_tok, uint8_t *owner) {
    if (n_ranks < 1 || block_size < 1 || n_tok <= 0 || pos0 < 0) return;
    if (align < block_size) align = block_size;
    align -= align % block_size;
    const int64_t bs = block_size, end = pos0 + n_tok;
    const int64_t b_first = (pos0 + bs - 1) / bs, b_end = (end + bs - 1) / bs;
    const int64_t u0 = pos0 / align, U = (end - 1) / align - u0 + 1;
    const int keep = pos0 % align ? owner[(pos0 - 1) / bs] : -1; // the unit began in an earlier slice
    for (int64_t b = b_first; b < b_end; b++) {
        const int64_t u = b * bs / align;
        if (keep >= 0 && u == u0) {
            owner[b] = (uint8_t)keep;
            continue;
        }
        const int64_t i = (u - u0) * 2 * n_ranks / U;
        owner[b] = (uint8_t)(i < n_ranks ? i : 2 * n_ranks - 1 - i);
    }
}

int cp__bq(const attn_shape_t *sh) {
    const int G = sh->n_heads / sh->n_kv_heads;
    return G <= 2 ? 48 : G <= 4 ? 32 : 16; // as the single-rank prefill tiles
}

/* ---- creation -------------------------------------------------------------------------- */
cp_plan_t *cp_plan_create(const attn_shape_t *shape, int n_layers, int rank, int n_ranks) {
    if (!shape || shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->head_dim <= 0 ||
        shape->n_heads % shape->n_kv_heads || n_layers <= 0 || n_ranks < 1 || n_ranks > CP_MAX_RANKS || rank < 0 ||
        rank >= n_ranks)
        return NULL;
    cp_plan_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->shape = *shape;
    p->n_layers = n_layers;
    p->rank = rank;
    p->n_ranks = n_ranks;
    return p;
}

static void free_slices(cp_plan_t *p) {
    for (int i = 0; i < p->n_slices; i++) free(p->slices[i].mem), free(p->slices[i].mem2), free(p->slices[i].mem3);
    p->n_slices = 0;
}

void cp_plan_destroy(cp_plan_t *p) {
    if (!p) return;
    free_slices(p);
    free(p->slices), free(p->seqs), free(p->computed), free(p->drows);
    free(p->pack), free(p->rbuf[0]), free(p->rbuf[1]), free(p->qbuf), free(p->qrecv[0]), free(p->qrecv[1]);
    free(p->part), free(p->partin), free(p->acc), free(p->stage), free(p->a2a);
    free(p->drg), free(p->dq), free(p->dpart), free(p->dall), free(p->dqs), free(p->dtm), free(p->dmax);
    free(p->dsel), free(p->dseln);
    free(p->ws), free(p->arenas);
    free(p);
}

void cp_plan_force_mode(cp_plan_t *p, int mode) { p->force_mode = mode; }

int cp_plan_windows(cp_plan_t *p, const int64_t *layer_window) {
    if (!p || !layer_window) return LC_EINVAL;
    int n = 0;
    int64_t w[CP_MAX_WINDOWS];
    for (int l = 0; l < p->n_layers; l++) {
        if (layer_window[l] < 0) return LC_EINVAL;
        if (!layer_window[l]) continue;
        int k = 0;
        while (k < n && w[k] != layer_window[l]) k++;
        if (k < n) continue;
        if (n == CP_MAX_WINDOWS) return LC_EUNSUPPORTED;
        w[n++] = layer_window[l];
    }
    memcpy(p->windows, w, sizeof(int64_t) * (size_t)n);
    p->n_windows = n;
    return 0;
}
double cp_plan_computed(const cp_plan_t *p, int i) { return i >= 0 && i < p->n_seqs ? p->computed[i] : 0; }
const cp_timing_t *cp_plan_timing(const cp_plan_t *p) { return &p->timing; }

size_t cp_plan_bytes(const cp_plan_t *p) {
    return sizeof(float) * (p->cap_pack + 2 * p->cap_rbuf + p->cap_qbuf + 2 * p->cap_qrecv + p->cap_part +
                            p->cap_partin + p->cap_acc + p->cap_stage + p->cap_dq + p->cap_dpart + p->cap_dall +
                            p->cap_dqs + p->cap_dtm + p->cap_dmax) +
           p->ws_cap;
}

/* ---- slices ------------------------------------------------------------------------------- */
/* Every rank's holdings of slice sl (sequence s of the batch). */
static int plan_slice(cp_plan_t *p, cp_slice_t *sl, const cp_seq_t *s) {
    const int N = p->n_ranks, bs = p->block_size, BQ = cp__bq(&p->shape);
    sl->n_kv = s->pos0 + s->n_tok;
    sl->n_blk = (int)((sl->n_kv + bs - 1) / bs);
    for (int b = 0; b < sl->n_blk; b++)
        if (s->owner[b] >= N) return LC_EINVAL;
    /* counts per rank: blocks, ranges, rows, tiles */
    int nb[CP_MAX_RANKS] = {0}, nrg[CP_MAX_RANKS] = {0}, nq[CP_MAX_RANKS] = {0}, nt[CP_MAX_RANKS] = {0};
    for (int b = 0; b < sl->n_blk; b++) {
        const int o = s->owner[b];
        nb[o]++;
        if (b == 0 || s->owner[b - 1] != o) nrg[o]++;
    }
    for (int64_t x = s->pos0; x < sl->n_kv;) { // runs of rows on one rank
        const int o = s->owner[x / bs];
        int64_t y = x + 1;
        while (y < sl->n_kv && s->owner[y / bs] == o) y++;
        nq[o] += (int)(y - x);
        nt[o] += (int)((y - x + BQ - 1) / BQ);
        x = y;
    }
    size_t bytes = sizeof(cp_hold_t) * N;
    for (int r = 0; r < N; r++)
        bytes += sizeof(int32_t) * ((size_t)nb[r] + sl->n_blk) + sizeof(attn_range_t) * nrg[r] +
                 sizeof(int64_t) * nq[r] + sizeof(cp_tile_t) * nt[r] + 64;
    unsigned char *m = calloc(1, bytes);
    if (!m) return LC_ENOMEM;
    sl->mem = m;
    sl->hold = (cp_hold_t *)m;
    m += sizeof(cp_hold_t) * N;
    for (int r = 0; r < N; r++) { // 8-byte members first
        cp_hold_t *h = &sl->hold[r];
        h->rg = (attn_range_t *)m, m += sizeof(attn_range_t) * nrg[r];
        h->qpos = (int64_t *)m, m += sizeof(int64_t) * nq[r];
    }
    for (int r = 0; r < N; r++) {
        cp_hold_t *h = &sl->hold[r];
        h->tiles = (cp_tile_t *)m, m += sizeof(cp_tile_t) * nt[r];
        h->blk = (int32_t *)m, m += sizeof(int32_t) * nb[r];
        h->tbl = (int32_t *)m, m += sizeof(int32_t) * sl->n_blk;
    }
    for (int b = 0; b < sl->n_blk; b++) {
        cp_hold_t *h = &sl->hold[s->owner[b]];
        const int64_t lo = (int64_t)b * bs, hi = lo + bs < sl->n_kv ? lo + bs : sl->n_kv;
        h->tbl[b] = h->nb;
        h->blk[h->nb++] = b;
        if (h->n_rg > 0 && h->rg[h->n_rg - 1].hi == lo)
            h->rg[h->n_rg - 1].hi = hi;
        else
            h->rg[h->n_rg++] = (attn_range_t){lo, hi};
    }
    for (int64_t x = s->pos0; x < sl->n_kv;) {
        const int o = s->owner[x / bs];
        cp_hold_t *h = &sl->hold[o];
        int64_t y = x + 1;
        while (y < sl->n_kv && s->owner[y / bs] == o) y++;
        for (int64_t t = x; t < y; t += BQ) {
            const int n = (int)(y - t < BQ ? y - t : BQ);
            h->tiles[h->n_tiles++] = (cp_tile_t){h->nq, h->nq + n};
            for (int i = 0; i < n; i++) h->qpos[h->nq++] = t + i;
        }
        x = y;
    }
    return 0;
}

/* pass-Q when the queries (and the partials coming back) weigh less than
 * the KV that pass-KV would move; sparse prompt methods need pass-KV. */
static int choose_mode(const cp_plan_t *p, const cp_seq_t *s, const attn_policy_t *pol) {
    const int sparse = pol && (pol->prefill == ATTN_PREFILL_FLEX || pol->prefill == ATTN_PREFILL_ANCHOR);
    if (p->force_mode == CP_PASS_Q && !sparse) return CP_PASS_Q;
    if (p->force_mode) return CP_PASS_KV;
    if (sparse) return CP_PASS_KV;
    return cp_pass_q_pays(s->pos0, s->n_tok, p->shape.n_heads, p->shape.n_kv_heads) ? CP_PASS_Q : CP_PASS_KV;
}

static int check_batch(const cp_plan_t *p, const cp_batch_t *b) {
    if (!b || b->n_rows <= 0 || b->n_seqs <= 0 || !b->seqs || b->block_size <= 0) return LC_EINVAL;
    for (int i = 0; i < b->n_seqs; i++) {
        const cp_seq_t *s = &b->seqs[i];
        if (s->n_tok <= 0 || s->tok0 < 0 || s->tok0 > b->n_rows - s->n_tok || s->pos0 < 0 || !s->blocks || !s->owner)
            return LC_EINVAL;
        if (s->state &&
            (s->state->shape.n_heads != p->shape.n_heads || s->state->shape.n_kv_heads != p->shape.n_kv_heads ||
             s->state->shape.head_dim != p->shape.head_dim))
            return LC_EINVAL;
    }
    return 0;
}

int cp_plan(cp_plan_t *p, const cp_batch_t *b) {
    if (!p) return LC_EINVAL;
    int rc = check_batch(p, b);
    if (rc) return rc;
    const int N = p->n_ranks, H = p->shape.n_heads, KH = p->shape.n_kv_heads, d = p->shape.head_dim;
    free_slices(p);
    size_t cap = (size_t)p->cap_seqs;
    if (lc_grow((void **)&p->seqs, &cap, (size_t)b->n_seqs, sizeof *p->seqs)) return LC_ENOMEM;
    cap = (size_t)p->cap_seqs;
    if (lc_grow((void **)&p->computed, &cap, (size_t)b->n_seqs, sizeof *p->computed)) return LC_ENOMEM;
    p->cap_seqs = (int)cap;
    memcpy(p->seqs, b->seqs, sizeof *p->seqs * (size_t)b->n_seqs);
    memset(p->computed, 0, sizeof *p->computed * (size_t)b->n_seqs);
    p->n_seqs = b->n_seqs;
    p->n_rows = b->n_rows;
    p->block_size = b->block_size;
    int n_sl = 0;
    for (int i = 0; i < b->n_seqs; i++) n_sl += !b->seqs[i].decode;
    cap = (size_t)p->cap_slices;
    if (lc_grow((void **)&p->slices, &cap, (size_t)n_sl, sizeof *p->slices)) return LC_ENOMEM;
    p->cap_slices = (int)cap;

    const size_t stride = (size_t)KH * p->block_size * d;
    size_t need_pack = 0, need_rbuf = 0, need_q = 0, need_qrecv = 0, need_part = 0, need_partin = 0, need_acc = 0;
    size_t need_stage = 0, per_thread = 0;
    int max_rg = 1;
    for (int i = 0; i < b->n_seqs; i++) {
        const cp_seq_t *s = &b->seqs[i];
        if (s->decode) continue;
        cp_slice_t *sl = &p->slices[p->n_slices];
        memset(sl, 0, sizeof *sl);
        sl->seq = i;
        sl->pol = s->state ? &s->state->pol : NULL;
        if ((rc = plan_slice(p, sl, s))) return rc;
        p->n_slices++;
        sl->mode = choose_mode(p, s, sl->pol);
        const cp_hold_t *me = &sl->hold[p->rank];
        size_t max_nb = 0, max_nq = 0, sum_nq = 0;
        for (int r = 0; r < N; r++) {
            if (r != p->rank && (size_t)sl->hold[r].nb > max_nb) max_nb = (size_t)sl->hold[r].nb;
            if ((size_t)sl->hold[r].nq > max_nq) max_nq = (size_t)sl->hold[r].nq;
            sum_nq += (size_t)sl->hold[r].nq;
            if (sl->hold[r].n_rg > max_rg) max_rg = sl->hold[r].n_rg;
        }
        if (sl->pol && sl->pol->prefill == ATTN_PREFILL_ANCHOR) {
            size_t st = 0, pt = 0;
            if ((rc = cp__anchor_plan(p, sl, &st, &pt))) return rc;
            if (st > need_stage) need_stage = st;
            if (pt > per_thread) per_thread = pt;
        } else if (sl->pol && sl->pol->prefill == ATTN_PREFILL_FLEX) {
            size_t st = 0, pt = 0;
            if ((rc = cp__flex_plan(p, sl, &st, &pt))) return rc;
            if (st > need_stage) need_stage = st;
            if (pt > per_thread) per_thread = pt;
        }
        /* the sliding windows' fetches; the packs of pass-KV (sparse
         * methods included), the queries and running outputs of every
         * slice; pass-Q's buffers where a slice chose it */
        size_t wpk = 0, wst = 0;
        if ((rc = cp__window_plan(p, sl, &wpk, &wst))) return rc;
        if (wpk > need_pack) need_pack = wpk;
        if (wst > need_stage) need_stage = wst;
        const size_t pk = ((size_t)me->nb + (size_t)sl->n_halo) * stride * 2;
        if (pk > need_pack) need_pack = pk;
        if (max_nb * stride * 2 > need_rbuf) need_rbuf = max_nb * stride * 2;
        if ((size_t)me->nq * H * d > need_q) need_q = (size_t)me->nq * H * d;
        if ((size_t)me->nq * H * (d + 1) > need_acc) need_acc = (size_t)me->nq * H * (d + 1);
        if (sl->mode == CP_PASS_Q) {
            if (max_nq * H * d > need_qrecv) need_qrecv = max_nq * H * d;
            if (sum_nq * H * (d + 1) > need_part) need_part = sum_nq * H * (d + 1);
            if ((size_t)N * me->nq * H * (d + 1) > need_partin) need_partin = (size_t)N * me->nq * H * (d + 1);
        }
    }
    /* decode rows */
    if ((rc = cp__decode_plan(p, &per_thread))) return rc;

    const int G = H / KH, BQ = cp__bq(&p->shape);
    size_t pt_dense = attn_tile_bytes(BQ * G, d) + attn_arena_need(sizeof(attn_range_t) * (size_t)(2 * max_rg + 4));
    if (pt_dense > per_thread) per_thread = pt_dense;
    if (lc_grow((void **)&p->pack, &p->cap_pack, need_pack, sizeof(float)) ||
        lc_grow((void **)&p->qbuf, &p->cap_qbuf, need_q, sizeof(float)) ||
        lc_grow((void **)&p->acc, &p->cap_acc, need_acc, sizeof(float)) ||
        lc_grow((void **)&p->part, &p->cap_part, need_part, sizeof(float)) ||
        lc_grow((void **)&p->partin, &p->cap_partin, need_partin, sizeof(float)) ||
        lc_grow((void **)&p->stage, &p->cap_stage, need_stage, sizeof(float)) ||
        lc_grow((void **)&p->a2a, &p->cap_a2a, (size_t)4 * N, sizeof(size_t)))
        return LC_ENOMEM;
    size_t c0 = p->cap_rbuf, c1 = p->cap_rbuf;
    if (lc_grow((void **)&p->rbuf[0], &c0, need_rbuf, sizeof(float)) ||
        lc_grow((void **)&p->rbuf[1], &c1, need_rbuf, sizeof(float)))
        return LC_ENOMEM;
    p->cap_rbuf = c0;
    c0 = c1 = p->cap_qrecv;
    if (lc_grow((void **)&p->qrecv[0], &c0, need_qrecv, sizeof(float)) ||
        lc_grow((void **)&p->qrecv[1], &c1, need_qrecv, sizeof(float)))
        return LC_ENOMEM;
    p->cap_qrecv = c0;

    const int nt = attn_max_threads();
    per_thread = attn_arena_need(per_thread);
    const size_t ws = per_thread * (size_t)nt;
    if (ws > p->ws_cap || nt > p->n_threads) {
        free(p->ws);
        free(p->arenas);
        p->ws_cap = 0;
        p->n_threads = 0;
        if (posix_memalign((void **)&p->ws, 64, ws ? ws : 64)) return p->ws = NULL, LC_ENOMEM;
        if (!(p->arenas = calloc((size_t)nt, sizeof *p->arenas))) return LC_ENOMEM;
        p->ws_cap = ws;
    }
    p->n_threads = nt;
    p->per_thread = per_thread;
    for (int t = 0; t < nt; t++) p->arenas[t] = (attn_arena_t){p->ws + (size_t)t * per_thread, per_thread, 0};
    return 0;
}
