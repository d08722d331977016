/* Attention policy (defaults, names) and the per-sequence state (density
 * counters, TidalDecode's carried selections). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "attn/attn.h"
#include "attn/attn_int.h"
#include "common/status.h"

int64_t attn_flex_whole_from(const attn_policy_t *pol, int64_t prompt_end) {
    const int64_t B = pol->block > 0 ? pol->block : 128;
    return prompt_end > 0 ? (prompt_end > B ? prompt_end - B : 0) / B * B : INT64_MAX;
}

void attn_policy_default(attn_policy_t *p) {
    p->prefill = ATTN_PREFILL_DENSE;
    p->gamma = 0.9f;
    p->tau = 0.1f;
    p->min_budget = 1024;
    p->max_budget = 0;
    p->flex_select = ATTN_FLEX_TOKENS;
    p->theta = 12.0f;
    p->block = 128;
    p->anchor_init = 2048;
    p->anchor_local = 2048;
    p->anchor_lookback = 1024;
    p->anchor_probe = 0.01f;
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
static const char *const flex_select_names[] = {"tokens", "blocks"};

/* The index of s among names[0..n) (case-insensitive), or -1. */
static int name_index(const char *s, const char *const *names, int n) {
    for (int i = 0; s && i < n; i++)
        if (strcasecmp(s, names[i]) == 0) return i;
    return -1;
}

const char *attn_prefill_method_name(attn_prefill_method_t m) { return (unsigned)m < 4 ? prefill_names[m] : "unknown"; }
const char *attn_decode_method_name(attn_decode_method_t m) { return (unsigned)m < 4 ? decode_names[m] : "unknown"; }
const char *attn_flex_select_name(attn_flex_select_t s) { return (unsigned)s < 2 ? flex_select_names[s] : "unknown"; }

int attn_prefill_method_parse(const char *s, attn_prefill_method_t *out) {
    const int i = name_index(s, prefill_names, 4);
    if (i < 0) return LC_EINVAL;
    *out = (attn_prefill_method_t)i;
    return 0;
}

int attn_decode_method_parse(const char *s, attn_decode_method_t *out) {
    const int i = name_index(s, decode_names, 4);
    if (i < 0) return LC_EINVAL;
    *out = (attn_decode_method_t)i;
    return 0;
}

int attn_flex_select_parse(const char *s, attn_flex_select_t *out) {
    const int i = name_index(s, flex_select_names, 2);
    if (i < 0) return LC_EINVAL;
    *out = (attn_flex_select_t)i;
    return 0;
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
    st->tidal_cap = st->pol.decode_budget > 0 ? st->pol.decode_budget + 1 : 1;
    if (attn__state_reserve(st, 1)) goto fail;
    return st;
fail:
    attn_state_destroy(st);
    return NULL;
}

int attn__state_reserve(attn_state_t *st, int rows) {
    if (rows <= st->tidal_rows) return 0;
    const size_t KH = (size_t)st->shape.n_kv_heads;
    int64_t *pos = realloc(st->tidal_pos, (size_t)rows * KH * st->tidal_cap * sizeof *pos);
    if (!pos) return LC_ENOMEM;
    st->tidal_pos = pos;
    int *n = realloc(st->tidal_n, (size_t)rows * KH * sizeof *n);
    if (!n) return LC_ENOMEM;
    st->tidal_n = n;
    int64_t *nkv = realloc(st->tidal_nkv, (size_t)rows * sizeof *nkv);
    if (!nkv) return LC_ENOMEM;
    st->tidal_nkv = nkv;
    for (int r = st->tidal_rows; r < rows; r++) {
        st->tidal_nkv[r] = -1;
        memset(st->tidal_n + (size_t)r * KH, 0, KH * sizeof *n);
    }
    st->tidal_rows = rows;
    return 0;
}

void attn_state_destroy(attn_state_t *st) {
    if (!st) return;
    free(st->tidal_n);
    free(st->tidal_pos);
    free(st->tidal_nkv);
    free(st);
}

const attn_policy_t *attn_state_policy(const attn_state_t *st) { return &st->pol; }
const attn_stats_t *attn_state_stats(const attn_state_t *st) { return &st->stats; }
void attn_state_reset_stats(attn_state_t *st) { st->stats = (attn_stats_t){0}; }

attn_decode_method_t attn_decode_layer(const attn_policy_t *pol, int layer, int due, int *select) {
    *select = 0;
    if (!pol) return ATTN_DECODE_DENSE;
    attn_decode_method_t m = pol->decode;
    if (m != ATTN_DECODE_STREAMING && layer < pol->dense_layers) return ATTN_DECODE_DENSE;
    if (m == ATTN_DECODE_TIDAL) {
        if (layer < pol->tidal_select_layer) return ATTN_DECODE_DENSE;
        if (due || layer == pol->tidal_select_layer || layer == pol->tidal_reselect_layer) {
            *select = 1;
            return ATTN_DECODE_DENSE;
        }
    }
    return m;
}

int attn_decode_due(const attn_policy_t *pol, int layer, int sliding, int due) {
    if (!sliding) return 0;
    int sel;
    attn_decode_layer(pol, layer, 0, &sel);
    return due || sel;
}

void attn_state_count(attn_state_t *st, int generated, double computed, double total) {
    if (generated) {
        st->stats.decode_computed += computed;
        st->stats.decode_total += total;
    } else {
        st->stats.prefill_computed += computed;
        st->stats.prefill_total += total;
    }
}
