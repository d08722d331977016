/* Sliding-window layers of a sharded prompt slice: a halo, not a ring.
 *
 * A row at position x of a layer with window w reads keys (x - w, x]. A
 * rank's rows are runs of consecutive positions (its tiles), so what it
 * reads is, per tile, the blocks from the first row's x - w + 1 to the last
 * row: its own and the tail of whichever rank holds the positions before.
 * Every rank knows every rank's tiles (the layout), so each computes what
 * it sends without a request: one all-to-all of K blocks and one of V into
 * a pack holding exactly the blocks its rows read (own ones copied), then
 * one pass of the tile engine over it. The traffic is a window's worth of
 * KV per run of rows, where the pass-KV ring would move every block past
 * every rank.
 *
 * Blocks no row reads are never touched: with layer groups (kv.h) a sliding
 * group's table holds -1 where its blocks fell out of every window. The
 * lists are made at plan time for each window cp_plan_windows gave, since
 * a window decides them. */
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_int.h"
#include "common/status.h"
#include "common/timeutil.h"

/* Marks the blocks rank t's rows of sl read under window w. */
static void mark_window(const cp_slice_t *sl, int t, int64_t w, int bs, uint8_t *need) {
    memset(need, 0, (size_t)sl->n_blk);
    const cp_hold_t *h = &sl->hold[t];
    for (int i = 0; i < h->n_tiles; i++) {
        const int64_t first = h->qpos[h->tiles[i].i0], last = h->qpos[h->tiles[i].i1 - 1];
        const int64_t lo = first - w + 1 > 0 ? first - w + 1 : 0;
        for (int64_t b = lo / bs; b <= last / bs; b++) need[b] = 1;
    }
}

int cp__window_plan(cp_plan_t *p, cp_slice_t *sl, size_t *pack, size_t *stage) {
    const cp_seq_t *s = &p->seqs[sl->seq];
    const int N = p->n_ranks, r = p->rank, bs = p->block_size, nw = p->n_windows;
    const size_t stride = (size_t)p->shape.n_kv_heads * bs * p->shape.head_dim;
    *pack = *stage = 0;
    if (!nw) return 0;
    uint8_t *need = malloc((size_t)sl->n_blk);
    if (!need) return LC_ENOMEM;
    int n_need[CP_MAX_WINDOWS] = {0}, n_send[CP_MAX_WINDOWS] = {0}, n_rg[CP_MAX_WINDOWS] = {0};
    size_t bytes = 64;
    for (int wi = 0; wi < nw; wi++) {
        for (int t = 0; t < N; t++) {
            mark_window(sl, t, p->windows[wi], bs, need);
            for (int b = 0; b < sl->n_blk; b++) {
                if (!need[b]) continue;
                if (t == r) {
                    n_need[wi]++;
                    if (b == 0 || !need[b - 1]) n_rg[wi]++;
                } else if (s->owner[b] == r) {
                    n_send[wi]++;
                }
            }
        }
        bytes += sizeof(attn_range_t) * (size_t)n_rg[wi] + sizeof(int) * 2 * (size_t)(N + 1) +
                 sizeof(int32_t) * ((size_t)sl->n_blk + n_need[wi] + n_send[wi]);
    }
    unsigned char *m = calloc(1, bytes);
    if (!m) return free(need), LC_ENOMEM;
    sl->mem3 = m;
    for (int wi = 0; wi < nw; wi++) { // 8-byte members first
        sl->win[wi].rg = (attn_range_t *)m;
        m += sizeof(attn_range_t) * (size_t)n_rg[wi];
    }
    for (int wi = 0; wi < nw; wi++) {
        cp_win_t *x = &sl->win[wi];
        x->need_from = (int *)m, m += sizeof(int) * (size_t)(N + 1);
        x->send_to = (int *)m, m += sizeof(int) * (size_t)(N + 1);
        x->ltbl = (int32_t *)m, m += sizeof(int32_t) * (size_t)sl->n_blk;
        x->need = (int32_t *)m, m += sizeof(int32_t) * (size_t)n_need[wi];
        x->send_blk = (int32_t *)m, m += sizeof(int32_t) * (size_t)n_send[wi];
        /* what this rank's rows read, grouped by holder; their positions */
        mark_window(sl, r, p->windows[wi], bs, need);
        for (int src = 0; src < N; src++) {
            x->need_from[src] = x->n_need;
            for (int b = 0; b < sl->n_blk; b++)
                if (need[b] && s->owner[b] == src) {
                    x->ltbl[b] = x->n_need;
                    x->need[x->n_need++] = b;
                }
        }
        x->need_from[N] = x->n_need;
        for (int b = 0; b < sl->n_blk; b++) {
            if (!need[b]) continue;
            const int64_t lo = (int64_t)b * bs, hi = lo + bs < sl->n_kv ? lo + bs : sl->n_kv;
            if (x->n_rg > 0 && x->rg[x->n_rg - 1].hi == lo)
                x->rg[x->n_rg - 1].hi = hi;
            else
                x->rg[x->n_rg++] = (attn_range_t){lo, hi};
        }
        /* what the others' rows read of this rank's blocks */
        int ns = 0;
        for (int t = 0; t < N; t++) {
            x->send_to[t] = ns;
            if (t == r) continue;
            mark_window(sl, t, p->windows[wi], bs, need);
            for (int b = 0; b < sl->n_blk; b++)
                if (need[b] && s->owner[b] == r) x->send_blk[ns++] = b;
        }
        x->send_to[N] = ns;
        if ((size_t)x->n_need * stride * 2 > *pack) *pack = (size_t)x->n_need * stride * 2;
        if ((size_t)ns * stride * 2 > *stage) *stage = (size_t)ns * stride * 2;
    }
    free(need);
    return 0;
}

int cp__window_run(cp_plan_t *p, cp_comm_t *c, const cp_slice_t *sl, int wi, const attn_store_t *kv, const float *q,
                   float *out, float *lse) {
    const int N = p->n_ranks, r = p->rank, H = p->shape.n_heads, d = p->shape.head_dim;
    const cp_win_t *x = &sl->win[wi];
    const cp_hold_t *me = &sl->hold[r];
    const size_t stride = (size_t)p->shape.n_kv_heads * p->block_size * d;
    const int ns = x->send_to[N];
    float *vpack = p->pack + (size_t)x->n_need * stride, *sendk = p->stage, *sendv = p->stage + (size_t)ns * stride;
    cp__gather_rows(p, sl, q);
    /* own blocks into the pack, the sends onto the stage, then the halo */
    double t0 = lc_now_s();
    const size_t o0 = (size_t)x->need_from[r];
    cp__copy_blocks(p, sl, kv, x->need + o0, x->need_from[r + 1] - x->need_from[r], p->pack + o0 * stride,
                    vpack + o0 * stride);
    cp__copy_blocks(p, sl, kv, x->send_blk, ns, sendk, sendv);
    size_t *soff = p->a2a, *sbytes = soff + N, *roff = sbytes + N, *rbytes = roff + N;
    for (int t = 0; t < N; t++) {
        soff[t] = sizeof(float) * stride * (size_t)x->send_to[t];
        sbytes[t] = sizeof(float) * stride * (size_t)(x->send_to[t + 1] - x->send_to[t]);
        roff[t] = sizeof(float) * stride * (size_t)x->need_from[t];
        rbytes[t] = t == r ? 0 : sizeof(float) * stride * (size_t)(x->need_from[t + 1] - x->need_from[t]);
    }
    int rc = cp_alltoallv(c, sendk, soff, sbytes, p->pack, roff, rbytes);
    if (!rc) rc = cp_alltoallv(c, sendv, soff, sbytes, vpack, roff, rbytes);
    p->timing.collective_s += lc_now_s() - t0;
    if (rc || me->nq == 0) return rc;
    /* the rank's rows over the pack, in one pass */
    const attn_kv_t view = {.k = p->pack,
                            .v = vpack,
                            .blk_stride = stride,
                            .blocks = x->ltbl,
                            .block_size = p->block_size,
                            .n_kv = sl->n_kv};
    const size_t rs = (size_t)H * d;
    t0 = lc_now_s();
    rc = cp__attend(p, p->qbuf, me->qpos, me->tiles, me->n_tiles, &view, x->rg, x->n_rg, 0, p->windows[wi], 0, p->acc,
                    p->acc + (size_t)me->nq * rs, &p->computed[sl->seq]);
    p->timing.compute_s += lc_now_s() - t0;
    if (!rc) cp__scatter_rows(p, sl, p->acc, out, lse);
    return rc;
}
