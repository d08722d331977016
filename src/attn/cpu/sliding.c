/* Sliding-window attention: the local layers of models like Gemma 3 attend
 * to the last `window` positions only. A thin front over the sink+window
 * drivers that StreamingLLM uses (sink 0): the model's own attention, not a
 * sparse approximation, so it keeps no density counters and ignores the
 * request's sparse policy. */
#include "attn/attn.h"
#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

int attn_prefill_sliding(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                         int64_t window, float *out, float *lse) {
    if (window <= 0) return LC_EINVAL;
    return attn_prefill_window(shape, q, n_q, q_pos0, kv, 0, window, out, lse, NULL);
}

int attn_decode_sliding(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, int64_t window, float *out,
                        float *lse) {
    int rc = attn_check_args(shape, kv, kv ? kv->n_kv : 0);
    if (rc || !q || !out || window <= 0) return rc ? rc : LC_EINVAL;
    enum { MAXKH = 64 };
    const int KH = shape->n_kv_heads;
    if (KH > MAXKH) return LC_EINVAL;
    attn_range_t r = {kv->n_kv > window ? kv->n_kv - window : 0, kv->n_kv};
    const attn_range_t *rg[MAXKH];
    int n_rg[MAXKH];
    for (int kh = 0; kh < KH; kh++) rg[kh] = &r, n_rg[kh] = 1;
    return attn_decode_ranges(shape, q, kv, rg, n_rg, out, lse, NULL);
}
