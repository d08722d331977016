/* Tiny random-weight Llama (or Gemma 3) models for the engine suites
 * (check_sched, check_sparse): mkmodel's synthetic vocabulary with f32
 * weights drawn here.
 * The output matrix is untied, so that the next token depends on the whole
 * context rather than echoing the last one: a wrong K/V anywhere shows up
 * in the outputs. */
#ifndef LC_TESTS_TINYMODEL_H
#define LC_TESTS_TINYMODEL_H

#include <stdint.h>

#include "model/model.h"

typedef struct {
    const char *name; // general.name
    int n_layers, n_embd, n_heads, n_kv_heads, n_ff, n_ctx;
    uint64_t seed;
    /* Standard deviation of attn_q and attn_k in units of 1/sqrt(n_embd)
     * (2; larger makes the attention more peaked). */
    float qk_std;
    /* > 0: a Gemma 3 (gemma3) model instead: QK-norm, post-norms, GeGLU,
     * scaled embeddings, every swa_pattern-th layer global and the others
     * sliding over the last `window` positions; head_dim = n_embd / n_heads. */
    int window, swa_pattern;
    float final_softcap; // gemma3: final_logit_softcapping (0: none)
} tiny_opts_t;

/* Writes the model to a temporary file, loads it and removes the file; the
 * same options give the same weights. Fails the calling test (ck_assert) on
 * any error. Free with model_free. */
model_t *tiny_model_load(const tiny_opts_t *o);

#endif
