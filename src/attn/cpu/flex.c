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
 * - The query blocks holding the prompt's last B rows (when the caller says
 *   where the prompt ends) attend every key block: a question at the end of
 *   the prompt sits there, and at gamma 0.9 a head's selection may leave a
 *   tenth of its mass out.
 * - The vertical and slash budgets are token counts clamped to
 *   [min_budget, max_budget] each (max_budget 0: no cap); flex_select
 *   "blocks" instead takes the reference implementation's block counts of
 *   block-pooled columns and diagonals (flex_vertical_slash_blocks).
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
    int B, R, qb0, n_qb, n_kb;
    int64_t whole_qb; // query blocks from this one on attend every key (the prompt's last B rows)
    const attn_kv_t *kv;
    const float *qpool; // (n_qb, n_heads, head_dim) scaled mean query per block, or NULL: from q
} flex_ctx_t;

#define FLEX_CH 1024 // keys per score pass of the representative rows

/* One head's pattern scratch, carved from the thread's arena. */
typedef struct {
    attn_tile_t t; // the representative rows, scaled
    float *S;      // (R, FLEX_CH) scores of a key chunk
    float *vert;   // (N) mean attention of each key
    float *slash;  // (N) mean attention of each diagonal offset
    float *kpool;  // (n_kb, d) mean key of each block
    double *ahat;  // (n_kb) estimated block distribution
    double *atrue; // (n_kb) true block distribution
    vi_t *tmp;     // (max(N, n_qb * n_kb)) sort buffer
    int64_t *idx;  // (N)
    float *m, *l;  // (R) running max and sum of the representative rows
} flex_scratch_t;

static size_t flex_scratch_bytes(const flex_ctx_t *c) {
    const int d = c->sh->head_dim;
    const int64_t N = c->N, cells = (int64_t)c->n_qb * c->n_kb;
    return attn_tile_bytes(c->R, d) + attn_arena_need(sizeof(float) * (size_t)c->R * FLEX_CH) +
           2 * attn_arena_need(sizeof(float) * (size_t)N) + attn_arena_need(sizeof(float) * (size_t)c->n_kb * d) +
           2 * attn_arena_need(sizeof(double) * c->n_kb) +
           attn_arena_need(sizeof(vi_t) * (size_t)(N > cells ? N : cells)) +
           attn_arena_need(sizeof(int64_t) * (size_t)N) + 2 * attn_arena_need(sizeof(float) * c->R);
}

static int flex_scratch(const flex_ctx_t *c, attn_arena_t *ar, flex_scratch_t *x) {
    const int d = c->sh->head_dim;
    const int64_t N = c->N, cells = (int64_t)c->n_qb * c->n_kb;
    attn_arena_reset(ar);
    int rc = attn_tile_init(&x->t, ar, c->R, d);
    x->S = attn_arena_alloc(ar, sizeof(float) * (size_t)c->R * FLEX_CH);
    x->vert = attn_arena_alloc(ar, sizeof(float) * (size_t)N);
    x->slash = attn_arena_alloc(ar, sizeof(float) * (size_t)N);
    x->kpool = attn_arena_alloc(ar, sizeof(float) * (size_t)c->n_kb * d);
    x->ahat = attn_arena_alloc(ar, sizeof(double) * c->n_kb);
    x->atrue = attn_arena_alloc(ar, sizeof(double) * c->n_kb);
    x->tmp = attn_arena_alloc(ar, sizeof(vi_t) * (size_t)(N > cells ? N : cells));
    x->idx = attn_arena_alloc(ar, sizeof(int64_t) * (size_t)N);
    x->m = attn_arena_alloc(ar, sizeof(float) * c->R);
    x->l = attn_arena_alloc(ar, sizeof(float) * c->R);
    if (rc || !x->S || !x->vert || !x->slash || !x->kpool || !x->ahat || !x->atrue || !x->tmp || !x->idx || !x->m ||
        !x->l)
        return LC_ENOMEM;
    memset(x->vert, 0, sizeof(float) * (size_t)N);
    memset(x->slash, 0, sizeof(float) * (size_t)N);
    memset(x->kpool, 0, sizeof(float) * (size_t)c->n_kb * d);
    memset(x->atrue, 0, sizeof(double) * c->n_kb);
    return 0;
}

/* Step 1: exact attention of the representative rows (the chunk's last
 * block) in two passes over the keys, summed into vertical and slash mass. */
static void flex_representative(const flex_ctx_t *c, int h, flex_scratch_t *x) {
    const int d = c->sh->head_dim, G = c->sh->n_heads / c->sh->n_kv_heads, kh = h / G, R = c->R;
    const int64_t N = c->N;
    attn_tile_begin(&x->t, R);
    const int r0 = c->n_q - R;
    for (int r = 0; r < R; r++)
        for (int e = 0; e < d; e++)
            x->t.q[(size_t)r * d + e] = c->q[((size_t)(r0 + r) * c->sh->n_heads + h) * d + e] * c->sh->scale;
    for (int r = 0; r < R; r++) x->m[r] = -INFINITY, x->l[r] = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int64_t j0 = 0; j0 < N; j0 += FLEX_CH) {
            int64_t j1 = j0 + FLEX_CH < N ? j0 + FLEX_CH : N;
            attn_tile_scores(&x->t, c->kv, kh, j0, j1, x->S, FLEX_CH);
            for (int r = 0; r < R; r++) {
                int64_t p = c->q_pos0 + r0 + r, jmax = p + 1 < j1 ? p + 1 : j1;
                float *s = x->S + (size_t)r * FLEX_CH;
                if (jmax <= j0) continue;
                if (pass == 0) {
                    float mx = attn_row_max(s, jmax - j0);
                    mx = mx > x->m[r] ? mx : x->m[r];
                    float sum = attn_row_exp_sum(s, jmax - j0, mx);
                    x->l[r] = (x->m[r] == -INFINITY ? 0 : x->l[r] * expf(x->m[r] - mx)) + sum;
                    x->m[r] = mx;
                } else {
                    const float w = 1.0f / (x->l[r] * R);
                    attn_row_exp_sum(s, jmax - j0, x->m[r]);
                    for (int64_t j = j0; j < jmax; j++) x->vert[j] += s[j - j0] * w;
                    for (int64_t j = j0; j < jmax; j++) x->slash[p - j] += s[j - j0] * w;
                }
            }
        }
}

/* Step 2a: the sum of each key block's keys, in position order. */
static void flex_key_sums(const flex_ctx_t *c, int h, flex_scratch_t *x) {
    const int d = c->sh->head_dim, G = c->sh->n_heads / c->sh->n_kv_heads, kh = h / G, B = c->B;
    const int bs = c->kv->block_size;
    for (int64_t j = 0; j < c->N; j++) {
        const float *kc = attn_kv_kcol(c->kv, kh, d, j);
        float *dst = x->kpool + (size_t)(j / B) * d;
        for (int e = 0; e < d; e++) dst[e] += kc[(size_t)e * bs];
    }
}

/* Step 2b: JS distance between the estimated block distribution (mean query
 * against mean keys) and the true one (vertical mass per block). */
static double flex_divergence(const flex_ctx_t *c, flex_scratch_t *x) {
    const int d = c->sh->head_dim, B = c->B, R = c->R;
    const int64_t N = c->N;
    for (int64_t j = 0; j < N; j++) x->atrue[j / B] += x->vert[j];
    for (int kb = 0; kb < c->n_kb; kb++) {
        int64_t cnt = (int64_t)(kb + 1) * B < N ? B : N - (int64_t)kb * B;
        for (int e = 0; e < d; e++) x->kpool[(size_t)kb * d + e] /= (float)cnt;
    }
    double mx = -INFINITY, sum = 0;
    for (int kb = 0; kb < c->n_kb; kb++) {
        double s = 0;
        for (int e = 0; e < d; e++) {
            double qm = 0;
            for (int r = 0; r < R; r++) qm += x->t.q[(size_t)r * d + e];
            s += qm / R * x->kpool[(size_t)kb * d + e];
        }
        x->ahat[kb] = s;
        mx = s > mx ? s : mx;
    }
    for (int kb = 0; kb < c->n_kb; kb++) sum += (x->ahat[kb] = exp(x->ahat[kb] - mx));
    for (int kb = 0; kb < c->n_kb; kb++) x->ahat[kb] /= sum;
    return sqrt(jsd(x->ahat, x->atrue, c->n_kb));
}

/* Step 3a, query-aware heads: pooled-query x pooled-key block scores, the
 * largest until their mass reaches gamma. */
static void flex_query_aware(const flex_ctx_t *c, int h, flex_scratch_t *x, uint8_t *mask, attn_flex_trace_t *tr) {
    const int d = c->sh->head_dim, B = c->B;
    int64_t np = 0;
    for (int i = 0; i < c->n_qb; i++) {
        int qb = c->qb0 + i;
        int64_t p0 = (int64_t)qb * B > c->q_pos0 ? (int64_t)qb * B : c->q_pos0;
        int64_t p1 = (int64_t)(qb + 1) * B < c->N ? (int64_t)(qb + 1) * B : c->N;
        float qp[512];
        int dd = d < 512 ? d : 512;
        if (c->qpool)
            memcpy(qp, c->qpool + ((size_t)i * c->sh->n_heads + h) * d, sizeof(float) * dd);
        else
            attn__flex_pool_query(c->sh, c->q, c->q_pos0, p0, p1, h, qp);
        double rm = -INFINITY, rs = 0;
        int64_t base = np;
        for (int kb = 0; kb <= qb; kb++) {
            double s = 0;
            for (int e = 0; e < dd; e++) s += qp[e] * x->kpool[(size_t)kb * d + e];
            x->tmp[np++] = (vi_t){(float)s, (int64_t)i * c->n_kb + kb};
            rm = s > rm ? s : rm;
        }
        for (int64_t u = base; u < np; u++) rs += (x->tmp[u].v = (float)exp(x->tmp[u].v - rm));
        for (int64_t u = base; u < np; u++) x->tmp[u].v = (float)(x->tmp[u].v / rs / c->n_qb);
    }
    if (tr && tr->cells)
        for (int64_t u = 0; u < np; u++) tr->cells[x->tmp[u].i] = x->tmp[u].v;
    qsort(x->tmp, (size_t)np, sizeof *x->tmp, cmp_vi_desc);
    double cum = 0;
    for (int64_t u = 0; u < np && (c->pol->gamma >= 1.0f || cum < c->pol->gamma); u++) {
        cum += x->tmp[u].v;
        mask[x->tmp[u].i] = 1;
        if (tr) tr->thr_qa = x->tmp[u].v;
    }
}

/* Step 3b, vertical-slash heads: the fewest columns and diagonals whose mass
 * reaches gamma, as blocks. */
static void flex_vertical_slash(const flex_ctx_t *c, flex_scratch_t *x, uint8_t *mask, attn_flex_trace_t *tr) {
    const int B = c->B;
    int64_t lo = c->pol->min_budget, hi = c->pol->max_budget;
    int64_t nv = take_mass(x->vert, c->N, c->pol->gamma, lo, hi, x->tmp, x->idx);
    if (tr) tr->thr_v = nv > 0 ? x->tmp[nv - 1].v : -1.0f;
    for (int64_t u = 0; u < nv; u++) {
        int kb = (int)(x->idx[u] / B);
        for (int i = 0; i < c->n_qb; i++)
            if (c->qb0 + i >= kb) mask[(size_t)i * c->n_kb + kb] = 1;
    }
    int64_t ns = take_mass(x->slash, c->N, c->pol->gamma, lo, hi, x->tmp, x->idx);
    if (tr) tr->thr_s = ns > 0 ? x->tmp[ns - 1].v : -1.0f;
    for (int64_t u = 0; u < ns; u++) {
        int64_t s = x->idx[u];
        for (int i = 0; i < c->n_qb; i++) {
            int qb = c->qb0 + i;
            int64_t p0 = (int64_t)qb * B > c->q_pos0 ? (int64_t)qb * B : c->q_pos0;
            int64_t p1 = (int64_t)(qb + 1) * B - 1 < c->N - 1 ? (int64_t)(qb + 1) * B - 1 : c->N - 1;
            if (p1 - s < 0) continue;
            int64_t j0 = p0 - s > 0 ? p0 - s : 0;
            for (int64_t kb = j0 / B; kb <= (p1 - s) / B; kb++) mask[(size_t)i * c->n_kb + kb] = 1;
        }
    }
}

/* Mass in 2^-50 fixed point: a block's pooled sum is exact, so the same in
 * any order of summation (the GPU's too). */
static uint64_t flex_fx(float v) { return v > 0.f ? (uint64_t)nearbyint((double)v * 1125899906842624.0) : 0; }

/* flex_select "blocks": how many pooled columns (or diagonals) to keep: the
 * tokens of x that cover gamma, / B, + 1, clamped to the budgets in blocks
 * (rounded up) and to the n_kb there are. */
static int64_t flex_block_count(const flex_ctx_t *c, const float *x, flex_scratch_t *s) {
    const int64_t B = c->B, n = take_mass(x, c->N, c->pol->gamma, 0, 0, s->tmp, s->idx);
    const int64_t lo = (c->pol->min_budget + B - 1) / B,
                  hi = c->pol->max_budget > 0 ? (c->pol->max_budget + B - 1) / B : 0;
    int64_t nb = n / B + 1;
    if (nb < lo) nb = lo;
    if (hi > 0 && nb > hi) nb = hi;
    return nb < c->n_kb ? nb : c->n_kb;
}

/* x summed over blocks of B entries into pool (n_kb), entry 0 +inf (kept
 * first); returns the k-th largest. */
static float flex_pool_thr(const flex_ctx_t *c, const float *x, int64_t k, float *pool, vi_t *tmp) {
    for (int b = 0; b < c->n_kb; b++) {
        uint64_t a = 0;
        for (int64_t j = (int64_t)b * c->B; j < (int64_t)(b + 1) * c->B && j < c->N; j++) a += flex_fx(x[j]);
        pool[b] = b == 0 ? INFINITY : (float)(double)a;
        tmp[b] = (vi_t){pool[b], b};
    }
    qsort(tmp, (size_t)c->n_kb, sizeof *tmp, cmp_vi_desc);
    return tmp[k - 1].v;
}

/* Step 3b with flex_select "blocks", the reference implementation's rule:
 * flex_block_count's number of the block-pooled columns and of the pooled
 * diagonals (offset block o: offsets [o*B, (o+1)*B)), the largest (all ties
 * at the last one), key block 0 and offset block 0 among them. Pooled
 * column block kb adds (qb, kb) to every query block qb >= kb; offset block
 * o adds (qb, qb - o). The blocks a mass spread over many columns of few
 * blocks needs are few; a kept diagonal adds one block per query block row. */
static void flex_vertical_slash_blocks(const flex_ctx_t *c, flex_scratch_t *x, uint8_t *mask, attn_flex_trace_t *tr) {
    float *vp = (float *)x->ahat, *sp = (float *)x->atrue; // free after the divergence
    const float tv = flex_pool_thr(c, x->vert, flex_block_count(c, x->vert, x), vp, x->tmp);
    const float ts = flex_pool_thr(c, x->slash, flex_block_count(c, x->slash, x), sp, x->tmp);
    if (tr) tr->thr_v = tv, tr->thr_s = ts;
    for (int i = 0; i < c->n_qb; i++) {
        const int qb = c->qb0 + i;
        uint8_t *m = mask + (size_t)i * c->n_kb;
        for (int kb = 0; kb <= qb; kb++) m[kb] |= vp[kb] >= tv || sp[qb - kb] >= ts;
    }
}

/* Steps 2b to 4 on the summaries in x (representative rows in x->t, vertical
 * and slash mass, key sums): head h's block mask. */
static void flex_decide(const flex_ctx_t *c, int h, flex_scratch_t *x, uint8_t *mask, attn_flex_trace_t *tr) {
    const double dist = flex_divergence(c, x);
    if (tr) {
        tr->dist = dist;
        tr->branch = dist < c->pol->tau;
        tr->thr_qa = tr->thr_v = tr->thr_s = -1.0f;
        if (tr->vert) memcpy(tr->vert, x->vert, sizeof(float) * (size_t)c->N);
        if (tr->slash) memcpy(tr->slash, x->slash, sizeof(float) * (size_t)c->N);
        if (tr->cells) memset(tr->cells, 0, sizeof(float) * (size_t)c->n_qb * c->n_kb);
    }
    if (dist < c->pol->tau)
        flex_query_aware(c, h, x, mask, tr);
    else if (c->pol->flex_select == ATTN_FLEX_BLOCKS)
        flex_vertical_slash_blocks(c, x, mask, tr);
    else
        flex_vertical_slash(c, x, mask, tr);
    /* step 4: sink and diagonal always; and (ours) the query blocks holding
     * the prompt's last B rows attend every key block (a question at the
     * prompt's end sits there) */
    for (int i = 0; i < c->n_qb; i++) {
        uint8_t *m = mask + (size_t)i * c->n_kb;
        m[0] = m[c->qb0 + i] = 1;
        if (c->qb0 + i >= c->whole_qb) memset(m, 1, (size_t)(c->qb0 + i + 1));
    }
}

/* Decides head h's block mask: mask (n_qb, n_kb), 1 = compute. */
static int flex_pattern(const flex_ctx_t *c, int h, attn_arena_t *ar, uint8_t *mask, attn_flex_trace_t *tr) {
    flex_scratch_t x;
    int rc = flex_scratch(c, ar, &x);
    if (rc) return rc;
    memset(mask, 0, (size_t)c->n_qb * c->n_kb);
    flex_representative(c, h, &x);
    flex_key_sums(c, h, &x);
    flex_decide(c, h, &x, mask, tr);
    return 0;
}

/* Block-sparse attention over the masks: one item per (query block, head). */
static int flex_compute(const flex_ctx_t *c, attn_arena_t *arenas, const uint8_t *mask, float *out, float *lse,
                        double *computed) {
    const int H = c->sh->n_heads, G = H / c->sh->n_kv_heads, d = c->sh->head_dim, B = c->B;
    const size_t msz = (size_t)c->n_qb * c->n_kb;
    const int n_items = H * c->n_qb;
    int err = 0;
    double comp = 0;
#pragma omp parallel reduction(+ : comp)
    {
        attn_arena_t *ar = &arenas[attn_thread_num()];
        attn_arena_reset(ar);
        attn_tile_t t;
        attn_range_t *rg = attn_arena_alloc(ar, sizeof(attn_range_t) * c->n_kb);
        const int ok = attn_tile_init(&t, ar, B, d) == 0 && rg;
        if (!ok) {
#pragma omp atomic write
            err = LC_ENOMEM;
        }
#pragma omp for schedule(dynamic, 1)
        for (int it = 0; it < n_items; it++) {
            if (!ok) continue;
            int i = c->n_qb - 1 - it / H, h = it % H, qb = c->qb0 + i;
            int64_t p0 = (int64_t)qb * B > c->q_pos0 ? (int64_t)qb * B : c->q_pos0;
            int64_t p1 = (int64_t)(qb + 1) * B < c->N ? (int64_t)(qb + 1) * B : c->N;
            const uint8_t *mrow = mask + msz * h + (size_t)i * c->n_kb;
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
            attn_tile_begin(&t, rows);
            for (int r = 0; r < rows; r++) {
                const float *qr = c->q + ((size_t)(p0 + r - c->q_pos0) * H + h) * d;
                for (int e = 0; e < d; e++) t.q[(size_t)r * d + e] = qr[e] * c->sh->scale;
                t.qpos[r] = p0 + r;
            }
            attn_tile_run(&t, c->kv, h / G, rg, nr);
            attn_tile_finish(&t);
            for (int r = 0; r < rows; r++) {
                size_t row = (size_t)(p0 + r - c->q_pos0) * H + h;
                memcpy(out + row * d, t.acc + (size_t)r * d, sizeof(float) * d);
                if (lse) lse[row] = t.l[r];
            }
            comp += t.computed;
        }
    }
    *computed = comp;
    return err;
}

/* prompt_end: attn_seq_t's (0: unknown). */
static flex_ctx_t flex_ctx(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                           int64_t prompt_end, const attn_kv_t *kv) {
    const int B = pol->block > 0 ? pol->block : 128;
    const int64_t N = q_pos0 + n_q;
    flex_ctx_t c = {
        shape,     pol, q,   n_q, q_pos0, N, B, n_q < B ? n_q : B, (int)(q_pos0 / B), 0, (int)((N - 1) / B) + 1,
        INT64_MAX, kv,  NULL};
    c.n_qb = c.n_kb - c.qb0;
    if (prompt_end > 0) c.whole_qb = attn_flex_whole_from(pol, prompt_end) / B;
    return c;
}

int attn__flex_is_small(const attn_policy_t *pol, int n_q, int64_t q_pos0) {
    const int B = pol->block > 0 ? pol->block : 128;
    int64_t small = 2 * (int64_t)B > pol->min_budget ? 2 * (int64_t)B : pol->min_budget;
    return n_q <= 0 || q_pos0 + n_q <= small;
}

attn_ws_t attn__flex_ws(const attn_shape_t *shape, const attn_policy_t *pol, int n_q, int64_t q_pos0) {
    attn_ws_t w = {attn_prefill_window_ws(shape), 0};
    if (attn__flex_is_small(pol, n_q, q_pos0)) return w;
    flex_ctx_t c = flex_ctx(shape, pol, NULL, n_q, q_pos0, 0, NULL);
    size_t pat = flex_scratch_bytes(&c);
    size_t comp = attn_tile_bytes(c.B, shape->head_dim) + attn_arena_need(sizeof(attn_range_t) * c.n_kb);
    w.per_thread = pat > comp ? pat : comp;
    w.shared = attn_arena_need((size_t)c.n_qb * c.n_kb * shape->n_heads);
    return w;
}

int attn__prefill_flex(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *arenas, attn_arena_t *shared,
                       const float *q, int n_q, int64_t q_pos0, int64_t prompt_end, const attn_kv_t *kv, float *out,
                       float *lse, double *computed) {
    if (attn__flex_is_small(pol, n_q, q_pos0))
        return attn_prefill_window(shape, arenas, q, n_q, q_pos0, kv, 0, ATTN_NO_WINDOW, out, lse, computed);
    const int64_t N = q_pos0 + n_q;
    int rc = attn_check_args(shape, kv, N);
    if (rc || q_pos0 < 0 || !q || !out) return rc ? rc : LC_EINVAL;
    const int H = shape->n_heads;
    const flex_ctx_t c = flex_ctx(shape, pol, q, n_q, q_pos0, prompt_end, kv);
    const size_t msz = (size_t)c.n_qb * c.n_kb;
    attn_arena_reset(shared);
    uint8_t *mask = attn_arena_alloc(shared, msz * H);
    if (!mask) return LC_ENOMEM;
    int err = 0;
#pragma omp parallel
    {
        attn_arena_t *ar = &arenas[attn_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int h = 0; h < H; h++) {
            int e = flex_pattern(&c, h, ar, mask + msz * h, NULL);
            if (e) {
#pragma omp atomic write
                err = e;
            }
        }
    }
    double comp = 0;
    if (!err) err = flex_compute(&c, arenas, mask, out, lse, &comp);
    if (computed) *computed = comp;
    return err;
}

/* ---- the pattern from summaries (the context-parallel ring) -------------------------- */
void attn__flex_pool_query(const attn_shape_t *sh, const float *q, int64_t q_pos0, int64_t p0, int64_t p1, int h,
                           float *qp) {
    const int d = sh->head_dim, dd = d < 512 ? d : 512;
    for (int e = 0; e < dd; e++) {
        double a = 0;
        for (int64_t p = p0; p < p1; p++) a += q[((size_t)(p - q_pos0) * sh->n_heads + h) * d + e];
        qp[e] = (float)(a / (double)(p1 - p0) * sh->scale);
    }
}

int attn__flex_pattern_from(const attn_shape_t *sh, const attn_policy_t *pol, int n_q, int64_t q_pos0,
                            int64_t prompt_end, int h, const float *rep, const float *vert, const float *slash,
                            const float *ksum, const float *qpool, attn_arena_t *ar, uint8_t *mask) {
    flex_ctx_t c = flex_ctx(sh, pol, NULL, n_q, q_pos0, prompt_end, NULL);
    c.qpool = qpool;
    flex_scratch_t x;
    int rc = flex_scratch(&c, ar, &x);
    if (rc) return rc;
    const int d = sh->head_dim;
    attn_tile_begin(&x.t, c.R);
    for (int r = 0; r < c.R; r++)
        for (int e = 0; e < d; e++) x.t.q[(size_t)r * d + e] = rep[(size_t)r * d + e] * sh->scale;
    memcpy(x.vert, vert, sizeof(float) * (size_t)c.N);
    memcpy(x.slash, slash, sizeof(float) * (size_t)c.N);
    memcpy(x.kpool, ksum, sizeof(float) * (size_t)c.n_kb * d);
    memset(mask, 0, (size_t)c.n_qb * c.n_kb);
    flex_decide(&c, h, &x, mask, NULL);
    return 0;
}

/* ---- the masks alone (the GPU selection's reference) --------------------------------- */
int attn__flex_masks(const attn_shape_t *sh, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int n_q,
                     int64_t q_pos0, int64_t prompt_end, const attn_kv_t *kv, uint8_t *masks,
                     attn_flex_trace_t *trace) {
    if (!sh || !pol || !ar || !masks || n_q <= 0 || q_pos0 < 0) return LC_EINVAL;
    const flex_ctx_t c = flex_ctx(sh, pol, q, n_q, q_pos0, prompt_end, kv);
    const size_t msz = (size_t)c.n_qb * c.n_kb;
    if (attn__flex_is_small(pol, n_q, q_pos0)) {
        for (int h = 0; h < sh->n_heads; h++)
            for (int i = 0; i < c.n_qb; i++)
                for (int kb = 0; kb < c.n_kb; kb++) masks[msz * h + (size_t)i * c.n_kb + kb] = kb <= c.qb0 + i;
        return 0;
    }
    int rc = attn_check_args(sh, kv, c.N);
    if (rc || !q) return rc ? rc : LC_EINVAL;
    for (int h = 0; h < sh->n_heads; h++)
        if ((rc = flex_pattern(&c, h, ar, masks + msz * h, trace ? &trace[h] : NULL))) return rc;
    return 0;
}
