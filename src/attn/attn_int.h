/* Internal to src/attn: the per-sequence state and the entry points of each
 * method, dispatched from policy.c. Not for other modules. */
#ifndef LC_ATTN_INT_H
#define LC_ATTN_INT_H

#include "attn/attn.h"

struct attn_state {
    attn_shape_t shape;
    int n_layers;
    attn_policy_t pol;
    attn_stats_t stats;
    // TidalDecode: positions chosen at the last selection layer, per KV head,
    // sorted ascending; valid while tidal_nkv equals the current n_kv.
    int64_t *tidal_pos; // (n_kv_heads, tidal_cap)
    int *tidal_n;       // (n_kv_heads)
    int tidal_cap;
    int64_t tidal_nkv; // -1: no selection yet
};

/* Each returns 0 or a negative status; *computed receives the visible
 * query-key pairs the call attended, summed over query heads. */
int attn_prefill_flex(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                      const attn_kv_t *kv, float *out, float *lse, double *computed);
int attn_prefill_anchor(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                        const attn_kv_t *kv, float *out, float *lse, double *computed);
int attn_prefill_streaming(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, int n_q, int64_t q_pos0,
                           const attn_kv_t *kv, float *out, float *lse, double *computed);
int attn_decode_streaming(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, const attn_kv_t *kv,
                          float *out, float *lse, double *computed);
int attn_decode_quest(const attn_shape_t *shape, const attn_policy_t *pol, const float *q, const attn_kv_t *kv,
                      float *out, float *lse, double *computed);
/* select != 0: full attention, then refresh st's selection; else attend the
 * saved selection (full attention when there is none for this n_kv). */
int attn_decode_tidal(attn_state_t *st, int select, const float *q, const attn_kv_t *kv, float *out, float *lse,
                      double *computed);
int attn_decode_dense_count(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse,
                            double *computed);

#endif
