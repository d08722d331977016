/* A loaded model of the Llama family or Gemma 3: hyper-parameters, weights
 * (kept in their GGUF block format; see ops_matmul_w), tokenizer and chat
 * template. A model_t is immutable after load and may be shared; the forward
 * pass runs in an executor (model/exec.h) on the CPU or a GPU. */
#ifndef LC_MODEL_H
#define LC_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"
#include "kv/kv.h"
#include "model/chat.h"

typedef struct tok tok_t;

typedef enum {
    MODEL_ARCH_LLAMA = 0, // pre-norm blocks, SwiGLU, one RoPE base, full causal attention
    MODEL_ARCH_GEMMA3,    // + scaled embeddings, QK-norm, post-norms, GeGLU, sliding-window layers
} model_arch_t;

/* What differs between layers: Gemma 3 alternates sliding-window (local)
 * and global layers, each kind with its own RoPE base and scaling. */
typedef struct {
    int window;            // > 0: a sliding layer, attending to the last `window` positions; 0: global
    float rope_theta;      // RoPE base of this layer
    float rope_freq_scale; // 1 / linear scaling factor of this layer (1 = none)
} model_layer_hp_t;

typedef struct {
    char arch[32]; // general.architecture: "llama" or "gemma3"
    model_arch_t arch_id;
    char name[128]; // general.name, or the file name
    int n_vocab;
    int n_embd;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int n_ff;
    int n_ctx_train; // context length the model was trained for
    float rms_eps;
    float rope_theta;
    float rope_freq_scale; // 1 / linear scaling factor (1 = none)
    int rope_neox;         // 0: adjacent pairs (llama GGUF), 1: NEOX halves
    int tied_embeddings;
    /* Architecture switches, all read or derived from the GGUF at load (the
     * llama values make them no-ops). */
    float embd_scale;              // token embeddings times this (gemma3: sqrt(n_embd)); 1: none
    float attn_scale;              // query scale: 1/sqrt(query_pre_attn_scalar) (gemma3) or 1/sqrt(head_dim)
    int qk_norm;                   // 1: per-head RMSNorm of q and k before RoPE (attn_q_norm, attn_k_norm)
    int post_norms;                // 1: RMSNorm of the attention and FFN outputs before each residual add
    int ffn_geglu;                 // 1: GeGLU with the tanh GELU; 0: SwiGLU
    float final_softcap;           // > 0: logits = c * tanh(logits / c); 0: none
    int sliding_window;            // window of the sliding layers; 0: every layer is global
    int swa_pattern;               // every swa_pattern-th layer is global, the others slide (0: none)
    float rope_theta_swa;          // RoPE base of the sliding layers
    const model_layer_hp_t *layer; // (n_layers) per-layer attention; owned by the model
} model_hparams_t;

typedef struct model model_t;

/* Loads a GGUF model. Returns NULL and a message in err on failure (bad file,
 * unsupported architecture, missing or misshapen tensor, bad tokenizer). A
 * chat template we do not recognise is not a failure: it is logged and
 * model_chat_template() returns NULL. */
model_t *model_load(const char *path, char *err, size_t errlen);

typedef struct {
    int f32_weights; // expand every matrix to f32 at load (4-8x the memory; A/B only)
} model_load_opts_t;
/* model_load with options; o may be NULL (defaults). */
model_t *model_load_ex(const char *path, const model_load_opts_t *o, char *err, size_t errlen);
/* Bytes of weights the model holds. */
size_t model_weight_bytes(const model_t *m);
void model_free(model_t *m);

const model_hparams_t *model_hparams(const model_t *m);
const tok_t *model_tok(const model_t *m);
/* The chat template recognised in the GGUF's tokenizer.chat_template (its
 * family and the default system message it inserts), or NULL when the model
 * has none we know. Owned by the model. */
const chat_template_t *model_chat_template(const model_t *m);
/* Attention shape of this model. */
attn_shape_t model_attn_shape(const model_t *m);
/* A kv_config_t for this model with the given block size and count: one
 * layer group, every layer keeping every position. */
kv_config_t model_kv_config(const model_t *m, int block_size, int64_t n_blocks);
/* The same with the sliding-window layers in groups of their own (kv.h), so
 * that their blocks are released once every window has passed them; one
 * group when no layer slides. */
kv_config_t model_kv_config_grouped(const model_t *m, int block_size, int64_t n_blocks);
/* The layer group and the slot in the group's blocks of every layer under
 * config c (one of the two above).  group, slot: (n_layers) */
void model_kv_layers(const model_t *m, const kv_config_t *c, int *group, int *slot);

#endif
