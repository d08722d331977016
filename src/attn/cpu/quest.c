/* Quest-style sparse decode: a page is one KV block; its per-channel key
 * min/max give an upper bound of q.k over the page,
 *   ub = sum_c max(q_c * max_c, q_c * min_c).
 * Per KV head we keep the newest page plus the top (B - 1) other pages, B =
 * ceil(decode_budget / block_size). GQA: a page's score for a KV head is the
 * max of the bound over the group's query heads (scale is common to the
 * group, so the bounds are comparable), keeping any page some head needs.
 * Without summaries (kmin/kmax NULL) or when every page fits, runs dense.
 * Ties keep the earlier page, so the selection is a function of the scores. */
#include <math.h>
#include <stdlib.h>

#include "attn/attn_int.h"
#include "common/status.h"

typedef struct {
    float score;
    int32_t page;
} page_score_t;

static int cmp_score_desc(const void *a, const void *b) {
    const page_score_t *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return x->page - y->page;
}
static int cmp_page_asc(const void *a, const void *b) {
    return ((const page_score_t *)a)->page - ((const page_score_t *)b)->page;
}

float attn__quest_bound(const float *q, int G, int d, const float *mn, const float *mx) {
    float best = -INFINITY;
    for (int g = 0; g < G; g++) {
        const float *qh = q + (size_t)g * d;
        float ub = 0.0f;
        for (int c = 0; c < d; c++) {
            float a = qh[c] * mx[c], z = qh[c] * mn[c];
            ub += a > z ? a : z;
        }
        best = ub > best ? ub : best;
    }
    return best;
}

int attn__quest_select(const float *score, int64_t n, int bs, int64_t budget_pages, void *tmp, attn_range_t *rg) {
    const int64_t n_pages = (n + bs - 1) / bs;
    page_score_t *s = tmp;
    for (int64_t pg = 0; pg < n_pages - 1; pg++) s[pg] = (page_score_t){score[pg], (int32_t)pg};
    const int64_t keep = budget_pages - 1;
    qsort(s, (size_t)(n_pages - 1), sizeof *s, cmp_score_desc);
    s[keep] = (page_score_t){0, (int32_t)(n_pages - 1)};
    qsort(s, (size_t)keep + 1, sizeof *s, cmp_page_asc);
    int nr = 0;
    for (int64_t i = 0; i <= keep; i++) {
        int64_t lo = (int64_t)s[i].page * bs, hi = lo + bs < n ? lo + bs : n;
        if (nr > 0 && rg[nr - 1].hi == lo)
            rg[nr - 1].hi = hi;
        else
            rg[nr++] = (attn_range_t){lo, hi};
    }
    return nr;
}

int attn__quest_ranges(const attn_shape_t *shape, const attn_policy_t *pol, attn_arena_t *ar, const float *q, int kh,
                       const attn_kv_t *kv, attn_range_t *rg) {
    const int G = shape->n_heads / shape->n_kv_heads, d = shape->head_dim, bs = kv->block_size;
    const int64_t n = kv->n_kv, n_pages = (n + bs - 1) / bs;
    const int64_t budget_pages = attn__quest_budget_pages(pol, bs);
    if (!kv->kmin || !kv->kmax || n_pages <= budget_pages) return 0; // dense
    float *score = attn_arena_alloc(ar, sizeof(float) * (size_t)n_pages);
    void *tmp = attn_arena_alloc(ar, sizeof(page_score_t) * (size_t)n_pages);
    if (!score || !tmp) return LC_ENOMEM;
    for (int64_t pg = 0; pg < n_pages - 1; pg++) { // the newest page is always kept
        int64_t b = kv->blocks[pg];
        score[pg] =
            attn__quest_bound(q + (size_t)kh * G * d, G, d, kv->kmin + (size_t)b * kv->sum_stride + (size_t)kh * d,
                              kv->kmax + (size_t)b * kv->sum_stride + (size_t)kh * d);
    }
    return attn__quest_select(score, n, bs, budget_pages, tmp, rg);
}

int64_t attn__quest_budget_pages(const attn_policy_t *pol, int bs) {
    int64_t budget_pages = ((int64_t)pol->decode_budget + bs - 1) / bs;
    return budget_pages < 1 ? 1 : budget_pages;
}
