/* Attention policy (defaults, names), per-sequence state (density counters,
 * TidalDecode's carried selection) and the dispatch of attn_prefill /
 * attn_decode to the method each policy names. */
#include <math.h>
#include <stdlib.h>
#include <strings.h>

#include "attn/attn.h"
#include "attn/attn_int.h"
#include "attn/cpu/kern.h"
#include "common/status.h"

void attn_policy_default(attn_policy_t *p) {
    p->prefill = ATTN_PREFILL_DENSE;
    p->gamma = 0.9f;
    p->tau = 0.1f;
    p->min_budget = 1024;
    p->max_budget = 0;
    p->theta = 12.0f;
    p->block = 128;
    p->anchor_init = 2048;
    p->anchor_local = 2048;
    p->decode = ATTN_DECODE_DENSE;
    p->decode_budget = 2048;
    p->dense_layers = 2;
    p->tidal_select_layer = 2;
    p->tidal_reselect_layer = -1;
    p->sink_tokens = 4;
    p->window_tokens = 1024;
}

static const char *const prefill_names[] = {"dense", "flexprefill", "anchor", "streaming"};
static const char *const decode_names[] = {"dense", "quest", "tidal", "streaming"};

const char *attn_prefill_method_name(attn_prefill_method_t m) { return (unsigned)m < 4 ? prefill_names[m] : "unknown"; }
const char *attn_decode_method_name(attn_decode_method_t m) { return (unsigned)m < 4 ? decode_names[m] : "unknown"; }

int attn_prefill_method_parse(const char *s, attn_prefill_method_t *out) {
    for (int i = 0; s && i < 4; i++)
        if (strcasecmp(s, prefill_names[i]) == 0) {
            *out = (attn_prefill_method_t)i;
            return 0;
        }
    return LC_EINVAL;
}

int attn_decode_method_parse(const char *s, attn_decode_method_t *out) {
    for (int i = 0; s && i < 4; i++)
        if (strcasecmp(s, decode_names[i]) == 0) {
            *out = (attn_decode_method_t)i;
            return 0;
        }
    return LC_EINVAL;
}

/* ---- state ------------------------------------------------------------------------ */
attn_state_t *attn_state_create(const attn_shape_t *shape, int n_layers, const attn_policy_t *policy) {
    if (!shape || shape->n_kv_heads <= 0 || n_layers <= 0) return NULL;
    attn_state_t *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->shape = *shape;
    st->n_layers = n_layers;
    if (policy)
        st->pol = *policy;
    else
        attn_policy_default(&st->pol);
    if (st->pol.tidal_reselect_layer < 0) st->pol.tidal_reselect_layer = n_layers / 2;
    st->tidal_nkv = -1;
    st->tidal_cap = st->pol.decode_budget > 0 ? st->pol.decode_budget + 1 : 1;
    st->tidal_n = calloc((size_t)shape->n_kv_heads, sizeof(int));
    st->tidal_pos = malloc((size_t)shape->n_kv_heads * st->tidal_cap * sizeof(int64_t));
    if (!st->tidal_n || !st->tidal_pos) goto fail;
    return st;
fail:
    attn_state_destroy(st);
    return NULL;
}

void attn_state_destroy(attn_state_t *st) {
    if (!st) return;
    free(st->tidal_n);
    free(st->tidal_pos);
    free(st);
}

const attn_policy_t *attn_state_policy(const attn_state_t *st) { return &st->pol; }
const attn_stats_t *attn_state_stats(const attn_state_t *st) { return &st->stats; }
void attn_state_reset_stats(attn_state_t *st) { st->stats = (attn_stats_t){0}; }

/* ---- dispatch ---------------------------------------------------------------------- */
int attn_prefill(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, int n_q, int64_t q_pos0,
                 const attn_kv_t *kv, float *out, float *lse) {
    double computed = 0;
    int rc;
    const attn_policy_t *pol = st ? &st->pol : NULL;
    switch (pol ? pol->prefill : ATTN_PREFILL_DENSE) {
    case ATTN_PREFILL_FLEX: rc = attn_prefill_flex(shape, pol, q, n_q, q_pos0, kv, out, lse, &computed); break;
    case ATTN_PREFILL_ANCHOR: rc = attn_prefill_anchor(shape, pol, q, n_q, q_pos0, kv, out, lse, &computed); break;
    case ATTN_PREFILL_STREAMING:
        rc = attn_prefill_streaming(shape, pol, q, n_q, q_pos0, kv, out, lse, &computed);
        break;
    default: rc = attn_prefill_window(shape, q, n_q, q_pos0, kv, 0, ATTN_NO_WINDOW, out, lse, &computed); break;
    }
    if (rc == 0 && st) {
        st->stats.prefill_computed += computed;
        st->stats.prefill_total += (double)shape->n_heads * ((double)n_q * q_pos0 + 0.5 * n_q * (n_q + 1.0));
    }
    return rc;
}

int attn_decode(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, const attn_kv_t *kv, float *out,
                float *lse) {
    double computed = 0;
    int rc;
    const attn_policy_t *pol = st ? &st->pol : NULL;
    attn_decode_method_t m = pol ? pol->decode : ATTN_DECODE_DENSE;
    if (m != ATTN_DECODE_STREAMING && pol && layer < pol->dense_layers) m = ATTN_DECODE_DENSE;
    switch (m) {
    case ATTN_DECODE_QUEST: rc = attn_decode_quest(shape, pol, q, kv, out, lse, &computed); break;
    case ATTN_DECODE_TIDAL:
        if (layer < pol->tidal_select_layer)
            rc = attn_decode_dense_count(shape, q, kv, out, lse, &computed);
        else
            rc = attn_decode_tidal(st, layer == pol->tidal_select_layer || layer == pol->tidal_reselect_layer, q, kv,
                                   out, lse, &computed);
        break;
    case ATTN_DECODE_STREAMING: rc = attn_decode_streaming(shape, pol, q, kv, out, lse, &computed); break;
    default: rc = attn_decode_dense_count(shape, q, kv, out, lse, &computed); break;
    }
    if (rc == 0 && st) {
        st->stats.decode_computed += computed;
        st->stats.decode_total += (double)shape->n_heads * (double)kv->n_kv;
    }
    return rc;
}
