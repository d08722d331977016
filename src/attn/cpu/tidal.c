/* TidalDecode-style position-persistent sparse decode. At the selection layer
 * and the re-selection layer a row runs full attention and, per KV head,
 * keeps the decode_budget positions with the largest attention mass summed
 * over the group's query heads (one selection shared by the group, so the
 * following layers read one gathered key set per KV head). Layers after it in
 * the same decode step attend only those positions plus the newest one.
 * A selection belongs to one row of one step: it is valid only while the
 * row's n_kv is unchanged; without one a layer runs dense. */
#include <math.h>
#include <string.h>

#include "attn/attn_int.h"
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

int64_t attn__tidal_pick(const float *mass, int64_t n, int64_t k, float *tmp, int64_t *pos) {
    memcpy(tmp, mass, sizeof(float) * n);
    float thr = kth_largest(tmp, n, k);
    int64_t cnt = 0, ties = 0;
    for (int64_t j = 0; j < n; j++) ties += mass[j] > thr;
    ties = k - ties; // how many entries equal to thr still fit
    for (int64_t j = 0; j < n && cnt < k; j++)
        if (mass[j] > thr || (mass[j] == thr && ties-- > 0)) pos[cnt++] = j;
    return cnt;
}

int attn__tidal_select(attn_state_t *st, attn_arena_t *ar, int row, int kh, const float *q, const attn_kv_t *kv) {
    const attn_shape_t *sh = &st->shape;
    const int KH = sh->n_kv_heads, G = sh->n_heads / KH, d = sh->head_dim;
    const int64_t n = kv->n_kv;
    int64_t k = st->pol.decode_budget < n ? st->pol.decode_budget : n;
    if (k < 1) k = 1;
    attn_tile_t t;
    float *S = attn_arena_alloc(ar, sizeof(float) * (size_t)G * n);
    float *mass = attn_arena_alloc(ar, sizeof(float) * (size_t)n * 2);
    if (attn_tile_init(&t, ar, G, d) || !S || !mass || row >= st->tidal_rows) return LC_ENOMEM;
    attn_tile_begin(&t, G);
    for (int g = 0; g < G; g++)
        for (int c = 0; c < d; c++) t.q[(size_t)g * d + c] = q[(size_t)(kh * G + g) * d + c] * sh->scale;
    attn_tile_scores(&t, kv, kh, 0, n, S, n);
    memset(mass, 0, sizeof(float) * n);
    for (int g = 0; g < G; g++) {
        float *s = S + (size_t)g * n, m = -INFINITY;
        for (int64_t j = 0; j < n; j++) m = s[j] > m ? s[j] : m;
        double l = 0;
        for (int64_t j = 0; j < n; j++) l += (s[j] = expf(s[j] - m));
        float inv = (float)(1.0 / l);
        for (int64_t j = 0; j < n; j++) mass[j] += s[j] * inv;
    }
    int64_t *pos = st->tidal_pos + ((size_t)row * KH + kh) * st->tidal_cap;
    st->tidal_n[(size_t)row * KH + kh] = (int)attn__tidal_pick(mass, n, k, mass + n, pos);
    if (kh == 0) st->tidal_nkv[row] = n; // every head of the row is chosen in the same pass
    return 0;
}

int attn__tidal_ranges(const attn_state_t *st, int row, int kh, int64_t n_kv, attn_range_t *rg) {
    const int KH = st->shape.n_kv_heads;
    if (row >= st->tidal_rows || st->tidal_nkv[row] != n_kv) return 0; // no selection: dense
    const int64_t *pos = st->tidal_pos + ((size_t)row * KH + kh) * st->tidal_cap;
    const int np = st->tidal_n[(size_t)row * KH + kh];
    const int64_t newest = n_kv - 1;
    int nr = 0;
    for (int i = 0; i <= np; i++) {
        int64_t p = i < np ? pos[i] : newest;
        if (nr > 0 && rg[nr - 1].hi > p) continue; // the newest position was selected already
        if (nr > 0 && rg[nr - 1].hi == p)
            rg[nr - 1].hi = p + 1;
        else
            rg[nr++] = (attn_range_t){p, p + 1};
    }
    return nr;
}
