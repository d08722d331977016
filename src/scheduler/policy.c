/* Defaults and the per-request attention policy: a request's
 * `sparse_attention` spec with "auto" methods and unset numbers becomes a
 * resolved attn_policy_t. "auto" means dense below the configured prompt
 * length thresholds and the server's default sparse method above them. */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "scheduler/sched_internal.h"

void sched_config_default(sched_config_t *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->device, sizeof c->device, "cpu");
    c->block_size = 0;
    c->kv_gpu_fraction = 0.85;
    c->kv_blocks = 0;
    c->kv_bytes = (size_t)1 << 30;
    c->max_batch_tokens = 0; // the device's default (sched_create)
    c->max_running = 0;
    c->max_waiting = 256;
    c->prefill_chunk = 0;
    c->kv_watermark = 0.01;
    c->enable_prefix_cache = 1;
    attn_policy_default(&c->attn_default);
    c->attn_default.prefill = ATTN_PREFILL_FLEX;
    c->attn_default.decode = ATTN_DECODE_QUEST;
    c->sparse_prefill_min_tokens = 16384;
    c->sparse_decode_min_tokens = 8192;
    c->context_ranks = 1;
    c->context_min_tokens = 32768;
}

void sched_attn_spec_default(sched_attn_spec_t *s) {
    s->prefill = SCHED_METHOD_AUTO;
    s->decode = SCHED_METHOD_AUTO;
    s->gamma = s->tau = s->theta = -1.0f;
    s->min_budget = s->decode_budget = -1;
    s->flex_select = -1;
    s->anchor_init = s->anchor_local = s->anchor_lookback = -1;
    s->anchor_probe = -1.0f;
}

static int set_f(float v) { return !isnan(v) && v >= 0.0f; }

void sched__resolve_policy(const sched_config_t *c, const sched_attn_spec_t *spec, int n_prompt, attn_policy_t *out) {
    *out = c->attn_default;
    if (spec->prefill == SCHED_METHOD_AUTO)
        out->prefill = n_prompt >= c->sparse_prefill_min_tokens ? c->attn_default.prefill : ATTN_PREFILL_DENSE;
    else
        out->prefill = (attn_prefill_method_t)spec->prefill;
    /* The decode policy is fixed per request, chosen by the context the
     * request starts decoding with. */
    if (spec->decode == SCHED_METHOD_AUTO)
        out->decode = n_prompt >= c->sparse_decode_min_tokens ? c->attn_default.decode : ATTN_DECODE_DENSE;
    else
        out->decode = (attn_decode_method_t)spec->decode;
    if (set_f(spec->gamma)) out->gamma = spec->gamma;
    if (set_f(spec->tau)) out->tau = spec->tau;
    if (set_f(spec->theta)) out->theta = spec->theta;
    if (spec->min_budget >= 0) out->min_budget = spec->min_budget;
    if (spec->flex_select >= 0) out->flex_select = (attn_flex_select_t)spec->flex_select;
    if (spec->decode_budget >= 0) out->decode_budget = spec->decode_budget;
    if (spec->anchor_init >= 0) out->anchor_init = spec->anchor_init;
    if (spec->anchor_local > 0) out->anchor_local = spec->anchor_local;
    if (spec->anchor_lookback >= 0) out->anchor_lookback = spec->anchor_lookback;
    if (set_f(spec->anchor_probe)) out->anchor_probe = spec->anchor_probe;
}

/* ---- prefix-cache salts -------------------------------------------------------------- */
static uint64_t mix(uint64_t h, uint64_t x) {
    h ^= x + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 29);
}
static uint64_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

uint64_t sched__prefill_salt(const attn_policy_t *p) {
    uint64_t h = 0x5eed0001ULL;
    switch (p->prefill) {
    case ATTN_PREFILL_DENSE: return 0;
    case ATTN_PREFILL_FLEX:
        h = mix(mix(mix(mix(mix(mix(h, 1), fbits(p->gamma)), fbits(p->tau)), (uint64_t)p->min_budget),
                    (uint64_t)p->max_budget),
                (uint64_t)p->flex_select);
        break;
    case ATTN_PREFILL_ANCHOR:
        h = mix(mix(mix(mix(mix(mix(h, 2), fbits(p->theta)), (uint64_t)p->anchor_init), (uint64_t)p->anchor_local),
                    (uint64_t)p->anchor_lookback),
                fbits(p->anchor_probe));
        break;
    case ATTN_PREFILL_STREAMING: h = mix(mix(mix(h, 3), (uint64_t)p->sink_tokens), (uint64_t)p->window_tokens); break;
    }
    h = mix(h, (uint64_t)p->block);
    return h ? h : 1;
}

int64_t sched__prompt_shareable(const attn_policy_t *p, int64_t n_prompt, int64_t chunk) {
    if (p->prefill != ATTN_PREFILL_FLEX || chunk <= 0 || n_prompt <= 0) return n_prompt;
    return attn_flex_whole_from(p, n_prompt) / chunk * chunk;
}

uint64_t sched__decode_salt(const attn_policy_t *p) {
    /* Generated tokens never share blocks with prompts: their rows take the
     * 8-bit matmul, prompt rows the exact one. */
    uint64_t h = mix(sched__prefill_salt(p), 0x9e4e7a7edULL);
    if (p->decode == ATTN_DECODE_DENSE) return h ? h : 1;
    h = mix(mix(mix(h, 0xdec0de00ULL + (uint64_t)p->decode), (uint64_t)p->decode_budget), (uint64_t)p->dense_layers);
    if (p->decode == ATTN_DECODE_TIDAL)
        h = mix(mix(h, (uint64_t)p->tidal_select_layer), (uint64_t)p->tidal_reselect_layer);
    if (p->decode == ATTN_DECODE_STREAMING) h = mix(mix(h, (uint64_t)p->sink_tokens), (uint64_t)p->window_tokens);
    return h ? h : 1;
}
