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
 * the group's queries in the current chunk. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

int attn_prefill_anchor(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                        const attn_kv_t *kv, float *out, float *lse, double *computed) {
    const int64_t N = q_pos0 + n_q;
    if (n_q <= 0) return n_q == 0 ? 0 : LC_EINVAL;
    int rc = attn_check_args(shape, kv, N);
    if (rc || q_pos0 < 0 || !q || !out) return rc ? rc : LC_EINVAL;
    const int H = shape->n_heads, G = H / shape->n_kv_heads, d = shape->head_dim;
    const int B = pol->block > 0 ? pol->block : 128;
    const int64_t A = pol->anchor_init > 0 ? pol->anchor_init : 0;
    const int64_t L = pol->anchor_local >= B ? pol->anchor_local : B;
    const int64_t g_first = q_pos0 / L, g_last = (N - 1) / L;
    const int n_groups = (int)(g_last - g_first + 1), n_items = H * n_groups;
    const int max_blk = (int)((L + B - 1) / B) + 1; // query blocks one group can touch
    const int CH = 1024;
    const float theta = pol->theta;
    int err = 0;
    double comp = 0;
#pragma omp parallel reduction(+ : comp)
    {
        attn_tile_t **tiles = calloc((size_t)max_blk, sizeof *tiles);
        attn_tile_t *pt = attn_tile_alloc(max_blk, d); // pooled queries of the group
        float *S = malloc(sizeof(float) * (size_t)((max_blk + 3) & ~3) * CH);
        float *abar = malloc(sizeof(float) * max_blk);
        attn_range_t *sel = malloc(sizeof(attn_range_t) * (size_t)(N / 2 + 1));
        int ok = tiles && pt && S && abar && sel;
        for (int b = 0; ok && b < max_blk; b++) ok = (tiles[b] = attn_tile_alloc(B, d)) != NULL;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            const int h = it % H, kh = h / G;
            const int64_t g = g_last - it / H, g0 = g * L; // later groups first: they carry more keys
            int64_t q0 = g0 > q_pos0 ? g0 : q_pos0, q1 = g0 + L < N ? g0 + L : N;
            /* 1. anchor pass, one tile per absolute query block */
            int nb = 0;
            for (int64_t p0 = q0; p0 < q1; nb++) {
                int64_t p1 = (p0 / B + 1) * B < q1 ? (p0 / B + 1) * B : q1;
                attn_tile_t *t = tiles[nb];
                attn_tile_begin(t, (int)(p1 - p0));
                float *qbar = pt->q + (size_t)nb * d;
                memset(qbar, 0, sizeof(float) * d);
                for (int64_t p = p0; p < p1; p++) {
                    const float *qr = q + ((size_t)(p - q_pos0) * H + h) * d;
                    float *dst = t->q + (size_t)(p - p0) * d;
                    for (int e = 0; e < d; e++) {
                        dst[e] = qr[e] * shape->scale;
                        qbar[e] += dst[e];
                    }
                    t->qpos[p - p0] = p;
                }
                for (int e = 0; e < d; e++) qbar[e] /= (float)(p1 - p0);
                attn_range_t rg[2];
                int nr = 0;
                if (g0 <= A) {
                    rg[nr++] = (attn_range_t){0, p1};
                } else {
                    rg[nr++] = (attn_range_t){0, A};
                    rg[nr++] = (attn_range_t){g0, p1};
                }
                attn_tile_run(t, kv, kh, rg, nr, 0, -1);
                double am = 0;
                for (int r = 0; r < t->nr; r++) am += t->m[r];
                abar[nb] = (float)(am / t->nr);
                p0 = p1;
            }
            /* 2. stripes over [A, g0) */
            int n_sel = 0;
            if (g0 > A) {
                pt->nr = nb;
                for (int r = nb; r < ((nb + 3) & ~3); r++) memset(pt->q + (size_t)r * d, 0, sizeof(float) * d);
                for (int64_t j0 = A; j0 < g0; j0 += CH) {
                    int64_t j1 = j0 + CH < g0 ? j0 + CH : g0;
                    if (theta != INFINITY) attn_tile_scores(pt, kv, kh, j0, j1, S, CH);
                    for (int64_t j = j0; j < j1; j++) {
                        int keep = theta == INFINITY;
                        for (int b = 0; b < nb && !keep; b++) keep = S[(size_t)b * CH + (j - j0)] + theta >= abar[b];
                        if (!keep) continue;
                        if (n_sel > 0 && sel[n_sel - 1].hi == j)
                            sel[n_sel - 1].hi = j + 1;
                        else
                            sel[n_sel++] = (attn_range_t){j, j + 1};
                    }
                }
            }
            /* 3. continue each block with the stripes, finish, store */
            for (int b = 0; b < nb; b++) {
                attn_tile_t *t = tiles[b];
                if (n_sel > 0) attn_tile_run(t, kv, kh, sel, n_sel, 0, -1);
                attn_tile_finish(t);
                for (int r = 0; r < t->nr; r++) {
                    size_t row = (size_t)(t->qpos[r] - q_pos0) * H + h;
                    memcpy(out + row * d, t->acc + (size_t)r * d, sizeof(float) * d);
                    if (lse) lse[row] = t->l[r];
                }
                comp += t->computed;
            }
        }
        for (int b = 0; tiles && b < max_blk; b++) attn_tile_free(tiles[b]);
        free(tiles);
        attn_tile_free(pt);
        free(S), free(abar), free(sel);
    }
    if (computed) *computed = comp;
    return err;
}
