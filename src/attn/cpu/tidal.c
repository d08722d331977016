#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
int attn_decode_tidal(attn_state_t *st, int select, const float *q, const attn_kv_t *kv, float *out, float *lse,
                      double *computed) {
    return attn_decode_dense_count(&st->shape, q, kv, out, lse, computed);
}
