/* TidalDecode-style position-persistent sparse decode. At the selection layer
 * and the re-selection layer the step runs full attention and, per KV head,
 * keeps the decode_budget positions with the largest attention mass summed
 * over the group's query heads (one selection shared by the group, so the
 * following layers read one gathered key set per KV head). Layers after it in
 * the same decode step attend only those positions plus the newest one.
 * A selection belongs to one step: it is valid only while n_kv is unchanged;
 * without one a layer runs dense. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

/* k-th largest value of x[0..n) (x is reordered). */
static float kth_largest(float *x, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float piv = x[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (x[i] > piv) i++;
            while (x[j] < piv) j--;
            if (i <= j) {
                float tmp = x[i];
                x[i] = x[j], x[j] = tmp;
                i++, j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return x[want];
}

/* Chooses st's positions for every KV head from the query q. */
static int tidal_select(attn_state_t *st, const float *q, const attn_kv_t *kv) {
    const attn_shape_t *sh = &st->shape;
    const int KH = sh->n_kv_heads, G = sh->n_heads / KH, d = sh->head_dim;
    const int64_t n = kv->n_kv;
    int64_t k = st->pol.decode_budget < n ? st->pol.decode_budget : n;
    if (k < 1) k = 1;
    int err = 0;
#pragma omp parallel for schedule(static)
    for (int kh = 0; kh < KH; kh++) {
        attn_tile_t *t = attn_tile_alloc(G, d);
        float *S = malloc(sizeof(float) * (size_t)G * n), *mass = malloc(sizeof(float) * (size_t)n * 2);
        if (!t || !S || !mass) {
#pragma omp atomic write
            err = LC_ENOMEM;
            goto next;
        }
        attn_tile_begin(t, G);
        for (int g = 0; g < G; g++)
            for (int c = 0; c < d; c++) t->q[(size_t)g * d + c] = q[(size_t)(kh * G + g) * d + c] * sh->scale;
        attn_tile_scores(t, kv, kh, 0, n, S, n);
        memset(mass, 0, sizeof(float) * n);
        for (int g = 0; g < G; g++) {
            float *s = S + (size_t)g * n, m = -INFINITY;
            for (int64_t j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
            double l = 0;
            for (int64_t j = 0; j < n; j++) l += (s[j] = expf(s[j] - m));
            float inv = (float)(1.0 / l);
            for (int64_t j = 0; j < n; j++) mass[j] += s[j] * inv;
        }
        float *tmp = mass + n;
        memcpy(tmp, mass, sizeof(float) * n);
        float thr = kth_largest(tmp, n, k);
        int64_t *pos = st->tidal_pos + (size_t)kh * st->tidal_cap;
        int64_t cnt = 0, ties = 0;
        for (int64_t j = 0; j < n; j++) ties += mass[j] > thr;
        ties = k - ties; // how many entries equal to thr still fit
        for (int64_t j = 0; j < n && cnt < k; j++)
            if (mass[j] > thr || (mass[j] == thr && ties-- > 0)) pos[cnt++] = j;
        st->tidal_n[kh] = (int)cnt;
    next:
        attn_tile_free(t);
        free(S);
        free(mass);
    }
    st->tidal_nkv = err ? -1 : n;
    return err;
}

int attn_decode_tidal(attn_state_t *st, int select, const float *q, const attn_kv_t *kv, float *out, float *lse,
                      double *computed) {
    const attn_shape_t *sh = &st->shape;
    int rc = attn_check_args(sh, kv, kv ? kv->n_kv : 0);
    if (rc || !q || !out) return rc ? rc : LC_EINVAL;
    enum { MAXKH = 64 };
    const int KH = sh->n_kv_heads;
    if (KH > MAXKH) return LC_EINVAL;
    if (select) {
        rc = attn_decode_dense_count(sh, q, kv, out, lse, computed);
        return rc ? rc : tidal_select(st, q, kv);
    }
    if (st->tidal_nkv != kv->n_kv) return attn_decode_dense_count(sh, q, kv, out, lse, computed);
    attn_range_t *buf = malloc(sizeof(attn_range_t) * ((size_t)st->tidal_cap + 1) * KH);
    if (!buf) return LC_ENOMEM;
    const attn_range_t *rg[MAXKH];
    int n_rg[MAXKH];
    const int64_t newest = kv->n_kv - 1;
    for (int kh = 0; kh < KH; kh++) {
        attn_range_t *r = buf + (size_t)kh * (st->tidal_cap + 1);
        const int64_t *pos = st->tidal_pos + (size_t)kh * st->tidal_cap;
        int nr = 0;
        for (int i = 0; i <= st->tidal_n[kh]; i++) {
            int64_t p = i < st->tidal_n[kh] ? pos[i] : newest;
            if (nr > 0 && r[nr - 1].hi > p) continue; // the newest position was selected already
            if (nr > 0 && r[nr - 1].hi == p)
                r[nr - 1].hi = p + 1;
            else
                r[nr++] = (attn_range_t){p, p + 1};
        }
        rg[kh] = r;
        n_rg[kh] = nr;
    }
    rc = attn_decode_ranges(sh, q, kv, rg, n_rg, out, lse, computed);
    free(buf);
    return rc;
}
