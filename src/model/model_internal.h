/* Private layout of model_t and model_ctx_t, shared by model_load.c and
 * forward.c. Nothing outside src/model/ includes this. */
#ifndef LC_MODEL_INTERNAL_H
#define LC_MODEL_INTERNAL_H

#include "model/model.h"
#include "ops/ops.h"

/* One transformer block's weights. Matrices stay in their GGUF block format
 * (ops_w_t: (out, in) rows, dims[0] = in contiguous, exactly the file's
 * order) in buffers the model owns; norms are f32. */
typedef struct {
    float *attn_norm; // (n_embd)
    ops_w_t wq;       // (n_heads * head_dim, n_embd)
    ops_w_t wk;       // (n_kv_heads * head_dim, n_embd)
    ops_w_t wv;       // (n_kv_heads * head_dim, n_embd)
    ops_w_t wo;       // (n_embd, n_heads * head_dim)
    float *ffn_norm;  // (n_embd)
    ops_w_t w_gate;   // (n_ff, n_embd)
    ops_w_t w_up;     // (n_ff, n_embd)
    ops_w_t w_down;   // (n_embd, n_ff)
    /* gemma3 only (NULL otherwise) */
    float *q_norm;         // (head_dim) per-head RMSNorm of q
    float *k_norm;         // (head_dim) per-head RMSNorm of k
    float *post_attn_norm; // (n_embd) on the attention output, before the residual add
    float *post_ffn_norm;  // (n_embd) on the FFN output, before the residual add
} model_layer_t;

struct model {
    model_hparams_t hp;
    int rope_dim;               // rotated dims per head (rope.dimension_count)
    ops_w_t tok_embd;           // (n_vocab, n_embd); rows expanded per token
    float *out_norm;            // (n_embd)
    ops_w_t output;             // (n_vocab, n_embd); shares tok_embd's data when tied
    model_layer_t *layers;      // (n_layers)
    ops_rope_t rope;            // tables for positions < max(n_ctx_train, 4096), global layers
    ops_rope_t rope_swa;        // the same for the sliding layers' base (gemma3); unused when cos is NULL
    model_layer_hp_t *layer_hp; // (n_layers) what hp.layer points to
    tok_t *tok;                 // owned
    int chat_tmpl;              // chat.h family or -1
    void **bufs;                // (n_bufs) every weight and norm buffer, owned; freed by model_free
    int n_bufs, cap_bufs;
    size_t weight_bytes; // bytes held in bufs
    int f32_weights;     // load option: matrices expanded to f32
};

struct model_ctx {
    const model_t *m;
    int max_tokens;
    float *x;                // (T, n_embd) residual stream
    float *xb;               // (T, n_embd) normed input of a sub-layer
    float *q;                // (T, n_heads, head_dim)
    float *k;                // (T, n_kv_heads, head_dim)
    float *v;                // (T, n_kv_heads, head_dim)
    float *att;              // (T, n_heads, head_dim) attention output
    float *proj;             // (T, n_embd) output projection / FFN down result
    float *gate;             // (T, n_ff)
    float *up;               // (T, n_ff)
    int64_t *pos;            // (T) position of each token
    int *rows;               // (T) token indices whose logits are needed
    float *lbuf;             // (MODEL_LOGIT_CHUNK, n_vocab) logits staging for multi-sequence batches
    unsigned char *mark;     // (T) batch coverage check, then the kinds of the logits rows
    unsigned char *q8row;    // (T) 1 where the row is a decode token (8-bit activation matmul)
    float **dst;             // (T) where each logits row goes
    model_attn_hook_cb hook; // analysis hook or NULL
    void *hook_ud;
};

#define MODEL_LOGIT_CHUNK 16

#endif
