/* Defaults and the per-request attention policy: a request's
 * `sparse_attention` spec with "auto" methods and unset numbers becomes a
 * resolved attn_policy_t. "auto" means dense below the configured prompt
 * length thresholds and the server's default sparse method above them. */
#include <math.h>
#include <string.h>

#include "scheduler/sched_internal.h"

void sched_config_default(sched_config_t *c) {
    memset(c, 0, sizeof *c);
    c->block_size = 16;
    c->kv_blocks = 0;
    c->kv_bytes = (size_t)1 << 30;
    c->max_batch_tokens = 2048;
    c->max_running = 64;
    c->max_waiting = 256;
    c->prefill_chunk = 512;
    c->kv_watermark = 0.01;
    c->enable_prefix_cache = 1;
    attn_policy_default(&c->attn_default);
    c->attn_default.prefill = ATTN_PREFILL_FLEX;
    c->attn_default.decode = ATTN_DECODE_QUEST;
    c->sparse_prefill_min_tokens = 16384;
    c->sparse_decode_min_tokens = 8192;
}

void sched_attn_spec_default(sched_attn_spec_t *s) {
    s->prefill = SCHED_METHOD_AUTO;
    s->decode = SCHED_METHOD_AUTO;
    s->gamma = s->tau = s->theta = -1.0f;
    s->min_budget = s->decode_budget = -1;
}

static int set_f(float v) { return !isnan(v) && v >= 0.0f; }

void sched__resolve_policy(const sched_config_t *c, const sched_attn_spec_t *spec, int n_prompt,
                           attn_policy_t *out) {
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
    if (spec->decode_budget >= 0) out->decode_budget = spec->decode_budget;
}
