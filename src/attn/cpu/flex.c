/* FlexPrefill: per query head, a block-sparse pattern chosen from the exact
 * attention of a few representative queries, then block-sparse attention on
 * the shared tile engine (so LSE comes out and chunked prefill composes).
 *
 * Choices where the paper leaves room:
 * - Representative queries: the last `block` rows of the *current chunk*
 *   (the whole prompt's last block is not known yet under chunked prefill);
 *   each chunk chooses its pattern from its own last block, against all keys
 *   written so far.
 * - Blocks are aligned to absolute positions (block i = [i*B, (i+1)*B)), so a
 *   chunk may start or end inside a block; the diagonal block of query block i
 *   is key block i.
 * - JS divergence uses natural logarithms (D = sqrt(JSD) <= sqrt(ln 2)).
 * - A slash offset s adds, per query block, the (at most two) key blocks the
 *   diagonal j = p - s crosses for the block's rows p.
 * - The vertical and slash budgets are token counts clamped to
 *   [min_budget, max_budget] each (max_budget 0: no cap).
 * Inputs with at most max(2 blocks, min_budget) keys run dense. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

typedef struct {
    float v;
    int64_t i;
} vi_t;

static int cmp_vi_desc(const void *a, const void *b) {
    float x = ((const vi_t *)a)->v, y = ((const vi_t *)b)->v;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Fewest of the largest entries of x[0..n) whose sum reaches gamma * total,
 * clamped to [lo, hi]; their indices go to idx (sorted by value). */
static int64_t take_mass(const float *x, int64_t n, double gamma, int64_t lo, int64_t hi, vi_t *tmp, int64_t *idx) {
    double total = 0;
    for (int64_t i = 0; i < n; i++) {
        tmp[i] = (vi_t){x[i], i};
        total += x[i];
    }
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_vi_desc);
    int64_t cnt = 0;
    double cum = 0;
    while (cnt < n && (gamma >= 1.0 || cum < gamma * total)) cum += tmp[cnt++].v;
    if (cnt < lo) cnt = lo;
    if (hi > 0 && cnt > hi) cnt = hi;
    if (cnt > n) cnt = n;
    for (int64_t i = 0; i < cnt; i++) idx[i] = tmp[i].i;
    return cnt;
}

static double jsd(const double *p, const double *q, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) {
        double m = 0.5 * (p[i] + q[i]);
        if (p[i] > 0) s += 0.5 * p[i] * log(p[i] / m);
        if (q[i] > 0) s += 0.5 * q[i] * log(q[i] / m);
    }
    return s > 0 ? s : 0;
}

typedef struct {
    const attn_shape_t *sh;
    const attn_policy_t *pol;
    const float *q;
    int n_q;
    int64_t q_pos0, N; // N: keys visible to the chunk's last query
    int B, qb0, n_qb, n_kb;
    const attn_kv_t *kv;
} flex_ctx_t;

/* Decides head h's block mask: mask (n_qb, n_kb), 1 = compute. */
static int flex_pattern(const flex_ctx_t *c, int h, uint8_t *mask) {
    const int d = c->sh->head_dim, KH = c->sh->n_kv_heads, G = c->sh->n_heads / KH, kh = h / G, B = c->B;
    const int64_t N = c->N;
    const int R = c->n_q < B ? c->n_q : B, CH = 1024;
    int rc = LC_ENOMEM;
    attn_tile_t *t = attn_tile_alloc(R > B ? R : B, d);
    float *S = malloc(sizeof(float) * (size_t)R * CH);
    float *vert = calloc((size_t)N, sizeof(float)), *slash = calloc((size_t)N, sizeof(float));
    float *kpool = calloc((size_t)c->n_kb * d, sizeof(float));
    double *ahat = malloc(sizeof(double) * c->n_kb), *atrue = calloc((size_t)c->n_kb, sizeof(double));
    vi_t *tmp = malloc(sizeof(vi_t) * (size_t)(N > (int64_t)c->n_qb * c->n_kb ? N : (int64_t)c->n_qb * c->n_kb));
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)N);
    float *m = malloc(sizeof(float) * R), *l = malloc(sizeof(float) * R);
    if (!t || !S || !vert || !slash || !kpool || !ahat || !atrue || !tmp || !idx || !m || !l) goto done;
    memset(mask, 0, (size_t)c->n_qb * c->n_kb);

    /* 1. exact attention of the representative rows (two passes over keys) */
    attn_tile_begin(t, R);
    const int r0 = c->n_q - R;
    for (int r = 0; r < R; r++)
        for (int e = 0; e < d; e++)
            t->q[(size_t)r * d + e] = c->q[((size_t)(r0 + r) * c->sh->n_heads + h) * d + e] * c->sh->scale;
    for (int r = 0; r < R; r++) m[r] = -INFINITY, l[r] = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t j0 = 0; j0 < N; j0 += CH) {
            int64_t j1 = j0 + CH < N ? j0 + CH : N;
            attn_tile_scores(t, c->kv, kh, j0, j1, S, CH);
            for (int r = 0; r < R; r++) {
                int64_t p = c->q_pos0 + r0 + r, jmax = p + 1 < j1 ? p + 1 : j1;
                float *s = S + (size_t)r * CH;
                if (jmax <= j0) continue;
                if (pass == 0) {
                    float mx = attn_row_max(s, jmax - j0);
                    mx = mx > m[r] ? mx : m[r];
                    float sum = attn_row_exp_sum(s, jmax - j0, mx);
                    l[r] = (m[r] == -INFINITY ? 0 : l[r] * expf(m[r] - mx)) + sum;
                    m[r] = mx;
                } else {
                    const float w = 1.0f / (l[r] * R);
                    attn_row_exp_sum(s, jmax - j0, m[r]);
                    for (int64_t j = j0; j < jmax; j++) vert[j] += s[j - j0] * w;
                    for (int64_t j = j0; j < jmax; j++) slash[p - j] += s[j - j0] * w;
                }
            }
        }

    /* 2. pattern decision: estimated vs. true key-block distribution */
    for (int64_t j = 0; j < N; j++) {
        const float *kr = attn_kv_krow(c->kv, kh, d, j);
        float *dst = kpool + (size_t)(j / B) * d;
        for (int e = 0; e < d; e++) dst[e] += kr[e];
        atrue[j / B] += vert[j];
    }
    for (int kb = 0; kb < c->n_kb; kb++) {
        int64_t cnt = (int64_t)(kb + 1) * B < N ? B : N - (int64_t)kb * B;
        for (int e = 0; e < d; e++) kpool[(size_t)kb * d + e] /= (float)cnt;
    }
    double mx = -INFINITY, sum = 0;
    for (int kb = 0; kb < c->n_kb; kb++) {
        double s = 0;
        for (int e = 0; e < d; e++) {
            double qm = 0;
            for (int r = 0; r < R; r++) qm += t->q[(size_t)r * d + e];
            s += qm / R * kpool[(size_t)kb * d + e];
        }
        ahat[kb] = s;
        mx = s > mx ? s : mx;
    }
    for (int kb = 0; kb < c->n_kb; kb++) sum += (ahat[kb] = exp(ahat[kb] - mx));
    for (int kb = 0; kb < c->n_kb; kb++) ahat[kb] /= sum;
    double D = sqrt(jsd(ahat, atrue, c->n_kb));

    if (D < c->pol->tau) {
        /* 3a. query-aware: pooled-query x pooled-key block scores */
        int64_t np = 0;
        for (int i = 0; i < c->n_qb; i++) {
            int qb = c->qb0 + i;
            int64_t p0 = (int64_t)qb * B > c->q_pos0 ? (int64_t)qb * B : c->q_pos0;
            int64_t p1 = (int64_t)(qb + 1) * B < N ? (int64_t)(qb + 1) * B : N;
            float qp[512];
            int dd = d < 512 ? d : 512;
            for (int e = 0; e < dd; e++) {
                double a = 0;
                for (int64_t p = p0; p < p1; p++) a += c->q[((size_t)(p - c->q_pos0) * c->sh->n_heads + h) * d + e];
                qp[e] = (float)(a / (double)(p1 - p0) * c->sh->scale);
            }
            double rm = -INFINITY, rs = 0;
            int64_t base = np;
            for (int kb = 0; kb <= qb; kb++) {
                double s = 0;
                for (int e = 0; e < dd; e++) s += qp[e] * kpool[(size_t)kb * d + e];
                tmp[np++] = (vi_t){(float)s, (int64_t)i * c->n_kb + kb};
                rm = s > rm ? s : rm;
            }
            for (int64_t u = base; u < np; u++) rs += (tmp[u].v = (float)exp(tmp[u].v - rm));
            for (int64_t u = base; u < np; u++) tmp[u].v = (float)(tmp[u].v / rs / c->n_qb);
        }
        qsort(tmp, (size_t)np, sizeof *tmp, cmp_vi_desc);
        double cum = 0;
        for (int64_t u = 0; u < np && (c->pol->gamma >= 1.0f || cum < c->pol->gamma); u++) {
            cum += tmp[u].v;
            mask[tmp[u].i] = 1;
        }
    } else {
        /* 3b. vertical-slash */
        int64_t lo = c->pol->min_budget, hi = c->pol->max_budget;
        int64_t nv = take_mass(vert, N, c->pol->gamma, lo, hi, tmp, idx);
        for (int64_t u = 0; u < nv; u++) {
            int kb = (int)(idx[u] / B);
            for (int i = 0; i < c->n_qb; i++)
                if (c->qb0 + i >= kb) mask[(size_t)i * c->n_kb + kb] = 1;
        }
        int64_t ns = take_mass(slash, N, c->pol->gamma, lo, hi, tmp, idx);
        for (int64_t u = 0; u < ns; u++) {
            int64_t s = idx[u];
            for (int i = 0; i < c->n_qb; i++) {
                int qb = c->qb0 + i;
                int64_t p0 = (int64_t)qb * B > c->q_pos0 ? (int64_t)qb * B : c->q_pos0;
                int64_t p1 = (int64_t)(qb + 1) * B - 1 < N - 1 ? (int64_t)(qb + 1) * B - 1 : N - 1;
                if (p1 - s < 0) continue;
                int64_t j0 = p0 - s > 0 ? p0 - s : 0;
                for (int64_t kb = j0 / B; kb <= (p1 - s) / B; kb++) mask[(size_t)i * c->n_kb + kb] = 1;
            }
        }
    }
    /* 4. sink and diagonal always */
    for (int i = 0; i < c->n_qb; i++) mask[(size_t)i * c->n_kb] = mask[(size_t)i * c->n_kb + c->qb0 + i] = 1;
    rc = 0;
done:
    attn_tile_free(t);
    free(S), free(vert), free(slash), free(kpool), free(ahat), free(atrue), free(tmp), free(idx), free(m), free(l);
    return rc;
}

int attn_prefill_flex(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                      const attn_kv_t *kv, float *out, float *lse, double *computed) {
    const int B = pol->block > 0 ? pol->block : 128;
    const int64_t N = q_pos0 + n_q;
    int64_t small = 2 * (int64_t)B > pol->min_budget ? 2 * (int64_t)B : pol->min_budget;
    if (n_q <= 0 || N <= small)
        return attn_prefill_window(shape, q, n_q, q_pos0, kv, 0, ATTN_NO_WINDOW, out, lse, computed);
    int rc = attn_check_args(shape, kv, N);
    if (rc || q_pos0 < 0 || !q || !out) return rc ? rc : LC_EINVAL;
    const int H = shape->n_heads, G = H / shape->n_kv_heads, d = shape->head_dim;
    flex_ctx_t c = {shape, pol, q, n_q, q_pos0, N, B, (int)(q_pos0 / B), 0, (int)((N - 1) / B) + 1, kv};
    c.n_qb = c.n_kb - c.qb0;
    size_t msz = (size_t)c.n_qb * c.n_kb;
    uint8_t *mask = malloc(msz * H);
    if (!mask) return LC_ENOMEM;
    int err = 0;
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < H; h++) {
        int e = flex_pattern(&c, h, mask + msz * h);
        if (e) {
#pragma omp atomic write
            err = e;
        }
    }
    double comp = 0;
    const int n_items = H * c.n_qb;
    if (err) goto done;
#pragma omp parallel reduction(+ : comp)
    {
        attn_tile_t *t = attn_tile_alloc(B, d);
        attn_range_t *rg = malloc(sizeof(attn_range_t) * c.n_kb);
        if (!t || !rg) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!t || !rg) continue;
            int i = c.n_qb - 1 - it / H, h = it % H, qb = c.qb0 + i;
            int64_t p0 = (int64_t)qb * B > q_pos0 ? (int64_t)qb * B : q_pos0;
            int64_t p1 = (int64_t)(qb + 1) * B < N ? (int64_t)(qb + 1) * B : N;
            const uint8_t *mrow = mask + msz * h + (size_t)i * c.n_kb;
            int nr = 0;
            for (int kb = 0; kb <= qb; kb++) {
                if (!mrow[kb]) continue;
                int64_t lo = (int64_t)kb * B, hi = lo + B < p1 ? lo + B : p1;
                if (nr > 0 && rg[nr - 1].hi == lo)
                    rg[nr - 1].hi = hi;
                else
                    rg[nr++] = (attn_range_t){lo, hi};
            }
            int rows = (int)(p1 - p0);
            attn_tile_begin(t, rows);
            for (int r = 0; r < rows; r++) {
                const float *qr = q + ((size_t)(p0 + r - q_pos0) * H + h) * d;
                for (int e = 0; e < d; e++) t->q[(size_t)r * d + e] = qr[e] * shape->scale;
                t->qpos[r] = p0 + r;
            }
            attn_tile_run(t, kv, h / G, rg, nr, 0, -1);
            attn_tile_finish(t);
            for (int r = 0; r < rows; r++) {
                size_t row = (size_t)(p0 + r - q_pos0) * H + h;
                memcpy(out + row * d, t->acc + (size_t)r * d, sizeof(float) * d);
                if (lse) lse[row] = t->l[r];
            }
            comp += t->computed;
        }
        attn_tile_free(t);
        free(rg);
    }
done:
    free(mask);
    if (computed) *computed = comp;
    return err;
}
