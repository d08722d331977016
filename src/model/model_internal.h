/* Private layout of model_t and model_ctx_t, shared by model_load.c and
 * forward.c. Nothing outside src/model/ includes this. */
#ifndef LC_MODEL_INTERNAL_H
#define LC_MODEL_INTERNAL_H

#include "model/model.h"
#include "ops/ops.h"

/* One transformer block's weights, dequantized to f32 at load. Matrices are
 * (out, in) row-major, exactly the GGUF order (dims[0] = in is contiguous). */
typedef struct {
    float *attn_norm;  // (n_embd)
    float *wq;         // (n_heads * head_dim, n_embd)
    float *wk;         // (n_kv_heads * head_dim, n_embd)
    float *wv;         // (n_kv_heads * head_dim, n_embd)
    float *wo;         // (n_embd, n_heads * head_dim)
    float *ffn_norm;   // (n_embd)
    float *w_gate;     // (n_ff, n_embd)
    float *w_up;       // (n_ff, n_embd)
    float *w_down;     // (n_embd, n_ff)
} model_layer_t;

struct model {
    model_hparams_t hp;
    int rope_dim;          // rotated dims per head (rope.dimension_count)
    float *tok_embd;       // (n_vocab, n_embd)
    float *out_norm;       // (n_embd)
    float *output;         // (n_vocab, n_embd); aliases tok_embd when tied
    model_layer_t *layers; // (n_layers)
    ops_rope_t rope;       // tables for positions < max(n_ctx_train, 4096)
    tok_t *tok;            // owned
    int chat_tmpl;         // chat.h family or -1
    size_t weight_bytes;   // f32 bytes held
};

struct model_ctx {
    const model_t *m;
    int max_tokens;
    float *x;      // (T, n_embd) residual stream
    float *xb;     // (T, n_embd) normed input of a sub-layer
    float *q;      // (T, n_heads, head_dim)
    float *k;      // (T, n_kv_heads, head_dim)
    float *v;      // (T, n_kv_heads, head_dim)
    float *att;    // (T, n_heads, head_dim) attention output
    float *proj;   // (T, n_embd) output projection / FFN down result
    float *gate;   // (T, n_ff)
    float *up;     // (T, n_ff)
    int64_t *pos;  // (T) position of each token
    int *rows;     // (T) token indices whose logits are needed
    float *lbuf;   // (MODEL_LOGIT_CHUNK, n_vocab) logits staging for multi-sequence batches
    unsigned char *mark; // (T) batch coverage check
    float **dst;   // (T) where each logits row goes
    model_attn_hook_cb hook; // analysis hook or NULL
    void *hook_ud;
};

#define MODEL_LOGIT_CHUNK 16

#endif
