/* Decode: every generated row of a step, of every sequence, in one pass per
 * layer. A row is one token at position n_kv - 1 attending to keys
 * 0..n_kv-1 under its sequence's decode method for this layer.
 *
 * Per (row, KV head) the method lists the keys (dense: all; sink + window;
 * Quest: the best pages; TidalDecode: the carried positions); the list is cut
 * into pieces of ATTN_PIECE positions, every piece of every row is one work
 * item for the team (so one long sequence fills the threads: split-K), and
 * the pieces merge by LSE in position order. A piece is computed exactly as a
 * prompt row's piece (attn_prefill_window), so a dense generated row and a
 * dense prompt row at the same position give the same bits. The split
 * depends only on the row's own keys, never on the batch or the threads. */
#include <math.h>
#include <string.h>

#include "attn/attn_int.h"
#include "common/status.h"

int attn__decode_rg_cap(const attn_policy_t *pol, int64_t n_kv, int block_size) {
    int cap = 2;
    if (pol && pol->decode == ATTN_DECODE_QUEST) {
        int64_t pages = attn__quest_budget_pages(pol, block_size);
        if (pages + 1 > cap) cap = (int)(pages + 1);
    }
    if (pol && pol->decode == ATTN_DECODE_TIDAL && pol->decode_budget + 1 > cap) cap = pol->decode_budget + 1;
    (void)n_kv;
    return cap;
}

size_t attn__decode_ws(const attn_shape_t *shape, const attn_policy_t *pol, int64_t n_kv, int block_size) {
    const int G = shape->n_heads / shape->n_kv_heads, d = shape->head_dim;
    size_t b = attn_tile_bytes(G, d) +
               attn_arena_need((size_t)attn__decode_rg_cap(pol, n_kv, block_size) * sizeof(attn_range_t));
    if (pol && pol->decode == ATTN_DECODE_QUEST) {
        int64_t pages = (n_kv + block_size - 1) / block_size;
        b += attn_arena_need((size_t)pages * sizeof(float)) +
             attn_arena_need((size_t)pages * (sizeof(float) + sizeof(int32_t))); // scores, then the sort
    }
    if (pol && pol->decode == ATTN_DECODE_TIDAL) // scores of the group, then the mass twice
        b += attn_arena_need((size_t)G * n_kv * sizeof(float)) + attn_arena_need((size_t)n_kv * 2 * sizeof(float));
    return b;
}

static attn_kv_t row_kv(const attn_plan_t *p, const attn_store_t *s, const attn_drow_t *dr) {
    return (attn_kv_t){.k = s->k,
                       .v = s->v,
                       .kmin = s->kmin,
                       .kmax = s->kmax,
                       .blk_stride = s->blk_stride,
                       .sum_stride = s->sum_stride,
                       .blocks = p->seqs[dr->seq].blocks + (size_t)s->group * p->seqs[dr->seq].group_stride,
                       .block_size = s->block_size,
                       .n_kv = dr->n_kv};
}

static const attn_policy_t *row_policy(const attn_plan_t *p, const attn_drow_t *dr) {
    const attn_state_t *st = p->seqs[dr->seq].state;
    return st ? &st->pol : NULL;
}

/* 1. the key ranges of every (row, KV head) */
static int select_ranges(attn_plan_t *p, int layer, int64_t window, const attn_store_t *store, const float *q) {
    const int KH = p->shape.n_kv_heads, H = p->shape.n_heads, d = p->shape.head_dim;
    const int n = p->n_drows * KH;
    int err = 0;
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
#pragma omp for schedule(dynamic, 4)
        for (int i = 0; i < n; i++) {
            const attn_drow_t *dr = &p->drows[i / KH];
            const int kh = i % KH;
            const attn_policy_t *pol = row_policy(p, dr);
            attn_range_t *rg = p->drg + p->drg_off[i];
            const attn_kv_t kv = row_kv(p, store, dr);
            int sel, nr = 0;
            switch (window > 0 ? ATTN_DECODE_DENSE : attn_decode_layer(pol, layer, dr->tidal_due, &sel)) {
            case ATTN_DECODE_STREAMING: {
                int64_t sink, win;
                attn__streaming_window(pol, &sink, &win);
                nr = attn_window_ranges(sink, win, dr->n_kv - 1, dr->n_kv - 1, rg);
                break;
            }
            case ATTN_DECODE_QUEST:
                attn_arena_reset(ar);
                nr = attn__quest_ranges(&p->shape, pol, ar, q + (size_t)dr->qrow * H * d, kh, &kv, rg);
                break;
            case ATTN_DECODE_TIDAL: nr = attn__tidal_ranges(p->seqs[dr->seq].state, dr->row, kh, dr->n_kv, rg); break;
            default: nr = 0; break;
            }
            if (nr == 0)
                nr = attn_window_ranges(0, window > 0 ? window : ATTN_NO_WINDOW, dr->n_kv - 1, dr->n_kv - 1, rg);
            if (nr < 0) {
#pragma omp atomic write
                err = nr;
                nr = 0;
            }
            p->drg_n[i] = nr;
        }
    }
    return err;
}

/* 2. the pieces of every (row, KV head), in position order */
static int list_items(attn_plan_t *p) {
    const int KH = p->shape.n_kv_heads, n = p->n_drows * KH;
    size_t it = 0;
    for (int i = 0; i < n; i++) {
        const attn_range_t *rg = p->drg + p->drg_off[i];
        p->dk_item0[i] = (int)it;
        p->dk_nitem[i] = 0;
        if (p->drg_n[i] == 0) continue;
        const int64_t k0 = rg[0].lo / ATTN_PIECE, k1 = (rg[p->drg_n[i] - 1].hi - 1) / ATTN_PIECE;
        for (int64_t k = k0; k <= k1; k++) {
            if (it >= p->cap_ditems) return LC_ENOMEM;
            p->ditems[it++] = (attn_ditem_t){.drow = i / KH, .kh = i % KH, .piece = k};
            p->dk_nitem[i]++;
        }
    }
    return (int)it;
}

/* 3. every piece through the tile engine, into dpart */
static int run_items(attn_plan_t *p, int64_t window, const attn_store_t *store, const float *q, int n_items) {
    const attn_shape_t *sh = &p->shape;
    const int H = sh->n_heads, KH = sh->n_kv_heads, G = H / KH, d = sh->head_dim;
    int err = 0;
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        int max_rg = 2;
        for (int i = 0; i < p->n_drows; i++) max_rg = p->drows[i].rg_cap > max_rg ? p->drows[i].rg_cap : max_rg;
        attn_range_t *prg = attn_arena_alloc(ar, (size_t)max_rg * sizeof *prg);
        const int ok = attn_tile_init(&t, ar, G, d) == 0 && prg;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_items; i++) {
            if (!ok) continue;
            const attn_ditem_t *di = &p->ditems[i];
            const attn_drow_t *dr = &p->drows[di->drow];
            const int k = di->drow * KH + di->kh;
            const attn_kv_t kv = row_kv(p, store, dr);
            const attn_policy_t *pol = row_policy(p, dr);
            const int np = attn_piece_ranges(p->drg + p->drg_off[k], p->drg_n[k], di->piece, prg);
            attn_tile_begin(&t, G);
            if (window > 0)
                t.window = window;
            else if (pol && pol->decode == ATTN_DECODE_STREAMING)
                attn__streaming_window(pol, &t.sink, &t.window);
            for (int g = 0; g < G; g++) {
                const float *qh = q + ((size_t)dr->qrow * H + di->kh * G + g) * d;
                for (int c = 0; c < d; c++) t.q[(size_t)g * d + c] = qh[c] * sh->scale;
                t.qpos[g] = dr->n_kv - 1;
            }
            attn_tile_run(&t, &kv, di->kh, prg, np);
            attn_tile_finish(&t);
            float *part = p->dpart + (size_t)i * G * (d + 1);
            memcpy(part, t.acc, (size_t)G * d * sizeof(float));
            memcpy(part + (size_t)G * d, t.l, (size_t)G * sizeof(float));
            p->dcomp[i] = t.computed;
        }
    }
    return err;
}

/* 4. pieces merged in order into out / lse */
static void merge_items(attn_plan_t *p, float *out, float *lse) {
    const int H = p->shape.n_heads, KH = p->shape.n_kv_heads, G = H / KH, d = p->shape.head_dim;
    const int n = p->n_drows * KH;
#pragma omp parallel for schedule(static) num_threads(p->n_threads)
    for (int i = 0; i < n; i++) {
        const attn_drow_t *dr = &p->drows[i / KH];
        const int kh = i % KH;
        for (int g = 0; g < G; g++) {
            float *o = out + ((size_t)dr->qrow * H + kh * G + g) * d, l = -INFINITY;
            memset(o, 0, (size_t)d * sizeof(float));
            for (int u = 0; u < p->dk_nitem[i]; u++) {
                const float *part = p->dpart + (size_t)(p->dk_item0[i] + u) * G * (d + 1);
                attn_merge_row(o, &l, part + (size_t)g * d, part[(size_t)G * d + g], d);
            }
            if (lse) lse[(size_t)dr->qrow * H + kh * G + g] = l;
        }
    }
}

/* 5. TidalDecode rows at a selection layer choose their positions */
static int tidal_selections(attn_plan_t *p, int layer, const attn_store_t *store, const float *q) {
    const int KH = p->shape.n_kv_heads, H = p->shape.n_heads, d = p->shape.head_dim;
    const int n = p->n_drows * KH;
    int err = 0, any = 0;
    for (int i = 0; i < p->n_drows && !any; i++) { // no parallel region in the common case: no such row
        const attn_policy_t *pol = row_policy(p, &p->drows[i]);
        if (pol && pol->decode == ATTN_DECODE_TIDAL) attn_decode_layer(pol, layer, p->drows[i].tidal_due, &any);
    }
    if (!any) return 0;
#pragma omp parallel num_threads(p->n_threads)
    {
        attn_arena_t *ar = &p->arenas[attn_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) {
            const attn_drow_t *dr = &p->drows[i / KH];
            const attn_policy_t *pol = row_policy(p, dr);
            int sel;
            if (!pol || pol->decode != ATTN_DECODE_TIDAL) continue;
            attn_decode_layer(pol, layer, dr->tidal_due, &sel);
            if (!sel) continue;
            attn_arena_reset(ar);
            const attn_kv_t kv = row_kv(p, store, dr);
            int rc = attn__tidal_select(p->seqs[dr->seq].state, ar, dr->row, i % KH, q + (size_t)dr->qrow * H * d, &kv);
            if (rc) {
#pragma omp atomic write
                err = rc;
            }
        }
    }
    return err;
}

int attn__decode_rows(attn_plan_t *p, int layer, int64_t window, const attn_store_t *store, const float *q, float *out,
                      float *lse) {
    if (p->n_drows == 0) return 0;
    int rc = select_ranges(p, layer, window, store, q);
    if (rc) return rc;
    const int n_items = list_items(p);
    if (n_items < 0) return n_items;
    if ((rc = run_items(p, window, store, q, n_items))) return rc;
    merge_items(p, out, lse);
    if (window == 0 && (rc = tidal_selections(p, layer, store, q))) return rc;
    for (int i = 0; i < p->n_drows; i++) // selections made, or handed on by a sliding layer
        p->drows[i].tidal_due = attn_decode_due(row_policy(p, &p->drows[i]), layer, window > 0, p->drows[i].tidal_due);
    for (int i = 0; i < n_items; i++) {
        attn_state_t *st = p->seqs[p->drows[p->ditems[i].drow].seq].state;
        if (st) st->stats.decode_computed += p->dcomp[i];
    }
    for (int i = 0; i < p->n_drows; i++) {
        attn_state_t *st = p->seqs[p->drows[i].seq].state;
        if (st) st->stats.decode_total += (double)p->shape.n_heads * (double)p->drows[i].n_kv;
    }
    return 0;
}
