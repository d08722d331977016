/* StreamingLLM: attention sinks plus a recent window, for prefill and decode.
 * The baseline sparse methods must beat on retrieval: it never sees the middle.
 * The window counts the query's own position: a row at p sees j < sink_tokens
 * and p - window_tokens < j <= p. */
#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

int attn_prefill_streaming(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                           const attn_kv_t *kv, float *out, float *lse, double *computed) {
    int64_t sink = pol->sink_tokens > 0 ? pol->sink_tokens : 0;
    int64_t win = pol->window_tokens > 0 ? pol->window_tokens : 1;
    return attn_prefill_window(shape, q, n_q, q_pos0, kv, sink, win, out, lse, computed);
}

int attn_decode_streaming(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, const attn_kv_t *kv,
                          float *out, float *lse, double *computed) {
    int rc = attn_check_args(shape, kv, kv ? kv->n_kv : 0);
    if (rc || !q || !out) return rc ? rc : LC_EINVAL;
    enum { MAXKH = 64 };
    const int KH = shape->n_kv_heads;
    if (KH > MAXKH) return LC_EINVAL;
    const int64_t n = kv->n_kv;
    int64_t sink = pol->sink_tokens > 0 ? pol->sink_tokens : 0;
    int64_t win = pol->window_tokens > 0 ? pol->window_tokens : 1;
    attn_range_t r[2];
    int nr = 0;
    if (n - win <= sink) {
        r[nr++] = (attn_range_t){0, n};
    } else {
        r[nr++] = (attn_range_t){0, sink};
        r[nr++] = (attn_range_t){n - win, n};
    }
    const attn_range_t *rg[MAXKH];
    int n_rg[MAXKH];
    for (int kh = 0; kh < KH; kh++) rg[kh] = r, n_rg[kh] = nr;
    return attn_decode_ranges(shape, q, kv, rg, n_rg, out, lse, computed);
}
