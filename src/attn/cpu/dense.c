/* Dense prefill and decode over the paged KV cache (the baselines every
 * sparse method is measured against), and the LSE merge of partial results. */
#include <math.h>
#include <string.h>

#include "attn/attn.h"
#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

int attn_prefill_dense(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                       float *out, float *lse) {
    return attn_prefill_window(shape, q, n_q, q_pos0, kv, 0, ATTN_NO_WINDOW, out, lse, NULL);
}

int attn_decode_dense_count(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse,
                            double *computed) {
    int rc = attn_check_args(shape, kv, kv ? kv->n_kv : 0);
    if (rc || !q || !out) return rc ? rc : LC_EINVAL;
    enum { MAXKH = 64 };
    const int KH = shape->n_kv_heads;
    if (KH > MAXKH) return LC_EINVAL;
    attn_range_t all = {0, kv->n_kv};
    const attn_range_t *rg[MAXKH];
    int n_rg[MAXKH];
    for (int kh = 0; kh < KH; kh++) rg[kh] = &all, n_rg[kh] = 1;
    return attn_decode_ranges(shape, q, kv, rg, n_rg, out, lse, computed);
}

int attn_decode_dense(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse) {
    return attn_decode_dense_count(shape, q, kv, out, lse, NULL);
}

void attn_merge(float *o1, float *lse1, const float *o2, const float *lse2, int rows, int head_dim) {
    for (int r = 0; r < rows; r++) {
        float a = lse1[r], b = lse2[r];
        float *x = o1 + (size_t)r * head_dim;
        const float *y = o2 + (size_t)r * head_dim;
        if (b == -INFINITY) continue;
        if (a == -INFINITY) {
            memcpy(x, y, (size_t)head_dim * sizeof(float));
            lse1[r] = b;
            continue;
        }
        float m = a > b ? a : b;
        float wa = expf(a - m), wb = expf(b - m), s = wa + wb;
        wa /= s, wb /= s;
        for (int c = 0; c < head_dim; c++) x[c] = wa * x[c] + wb * y[c];
        lse1[r] = m + logf(s);
    }
}
