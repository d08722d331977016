/* Tiny random-weight Llama (or Gemma 3) GGUF models for tests and
 * benchmarks (`lacuna mkmodel`). The
 * writer is a function so that the Check suites can make their own models
 * without running the CLI. */
#ifndef LC_TOOLS_MKMODEL_H
#define LC_TOOLS_MKMODEL_H

#include <stddef.h>
#include <stdint.h>

struct gguf_writer;

typedef struct {
    int n_layers;              // default 2
    int n_embd;                // default 64
    int n_heads;               // default 4
    int n_kv_heads;            // default 2
    int n_ff;                  // default 128
    int n_ctx;                 // context_length, default 2048
    uint32_t type;             // ggml type of the 2-D weights, default F32
    uint64_t seed;             // default 1
    float rope_theta;          // default 10000
    const char *vocab_from;    // copy tokenizer.* from this GGUF; NULL = synthetic
    const char *chat_template; // tokenizer.chat_template text; NULL = the vocabulary's own
    int vocab_size;            // synthetic vocabulary padded to this many tokens; 0 = its natural size
    /* > 0: a Gemma 3 (gemma3) model: QK-norm, post-norms, GeGLU, scaled
     * embeddings, every swa_pattern-th layer global (default 6) and the
     * others sliding over the last `window` positions */
    int window, swa_pattern;
    int head_dim; // 0: n_embd / n_heads
} mkmodel_opts_t;

void mkmodel_opts_default(mkmodel_opts_t *o);
/* Writes the model to path. Returns 0, or a negative status with a message in
 * err (bad dimensions for the type, unreadable vocab source, I/O). */
int mkmodel_write(const mkmodel_opts_t *o, const char *path, char *err, size_t errlen);

/* Adds the synthetic byte-level BPE vocabulary (gpt2, pre "smollm", ChatML
 * template, <|endoftext|> <|im_start|> <|im_end|> as ids 0..2) to w and
 * returns its size, or a negative status. */
int mkmodel_synthetic_vocab(struct gguf_writer *w);
/* The same with another chat template (NULL: none), padded to n_vocab tokens
 * when n_vocab is larger than its natural size: distinct random words
 * (mostly with a leading space) without merges, so that the vocabulary has
 * the size and rough shape of a large model's (benchmarks of per-token
 * work over the vocabulary). */
int mkmodel_synthetic_vocab_tmpl(struct gguf_writer *w, const char *chat_template, int n_vocab);

/* SmolLM2-135M-Instruct's tokenizer.chat_template, verbatim. */
extern const char mkmodel_chatml_template[];
/* Qwen2.5-Instruct's template (tools, <tool_call>), verbatim as
 * tests/fixtures/qwen2.5_chat_template.jinja. */
extern const char mkmodel_qwen25_template[];

#endif
