#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
int attn_decode_quest(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, const attn_kv_t *kv,
                      float *out, float *lse, double *computed) {
    return attn_decode_dense_count(shape, q, kv, out, lse, computed);
}
