/* Private layout of model_t and model_ctx_t, shared by model_load.c and
 * forward.c. Nothing outside src/model/ includes this. */
#ifndef LC_MODEL_INTERNAL_H
#define LC_MODEL_INTERNAL_H

#include "attn/cp/cp_attn.h"
#include "model/exec.h"
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
    chat_template_t chat;       // the recognised chat template, when has_chat
    int has_chat;
    void **bufs; // (n_bufs) every weight and norm buffer, owned; freed by model_free
    int n_bufs, cap_bufs;
    size_t weight_bytes; // bytes held in bufs
    int f32_weights;     // load option: matrices expanded to f32
};

/* ---- executors (exec.c dispatches to them) ------------------------------------- */
/* The CPU executor (forward.c): scratch activations for up to max_tokens rows,
 * the f32 KV store, and the attention plan. */
typedef struct model_cpu model_cpu_t;
/* cp_ranks > 1: sequences whose KV reaches cp_min_tokens run sharded. */
model_cpu_t *model_cpu_create(const model_t *m, const kv_config_t *kvc, int max_tokens, int max_seqs, int cp_ranks,
                              int64_t cp_min_tokens);
void model_cpu_destroy(model_cpu_t *c);
int model_cpu_forward(model_cpu_t *c, const model_batch_t *b);
void model_cpu_set_attn_hook(model_cpu_t *c, model_attn_hook_cb cb, void *ud);
/* kv_copy_cb: copies a block of the CPU store. */
void model_cpu_copy_block(void *c, int32_t dst, int32_t src);

/* After a step: per-rank KV use from the pool's references (cp_ranks > 1). */
void model_cpu_cp_account(model_cpu_t *c, const kv_pool_t *kv);
void model_cpu_cp_stats(model_cpu_t *c, model_exec_cp_stats_t *out);

/* The rank threads of the CPU executor's context parallelism (forward_cp.c). */
typedef struct model_cp model_cp_t;
model_cp_t *model_cp_create(const attn_shape_t *shape, const model_hparams_t *hp, int n_ranks);
void model_cp_destroy(model_cp_t *cp);
/* Every rank plans b with an OpenMP team of team / n_ranks threads. */
int model_cp_plan(model_cp_t *cp, const cp_batch_t *b, int team);
int model_cp_run(model_cp_t *cp, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out);
/* Pairs computed for sequence i of the planned batch, all ranks. */
double model_cp_computed(const model_cp_t *cp, int i);
/* Each rank's counters as of the last job: out (n_ranks). */
void model_cp_timing(model_cp_t *cp, cp_timing_t *out);

#define MODEL_LOGIT_CHUNK 16

/* Checks a batch against the model and the pool: token ids in the vocabulary,
 * slices disjoint and covering, blocks reserved. covered: (n_tokens) scratch. */
int model__check_batch(const model_t *m, const kv_config_t *kvc, int max_tokens, const model_batch_t *b,
                       unsigned char *covered);

#endif
