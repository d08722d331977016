#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
int attn_prefill_anchor(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q,
                        int64_t q_pos0, const attn_kv_t *kv, float *out, float *lse, double *computed) {
    return attn_prefill_window(shape, q, n_q, q_pos0, kv, 0, ATTN_NO_WINDOW, out, lse, computed);
}
