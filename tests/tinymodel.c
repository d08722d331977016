/* See tinymodel.h. */
#include "tinymodel.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/gguf.h"
#include "tools/mkmodel.h"

/* Irwin-Hall sums of four uniforms from a 64-bit LCG: reproducible, and
 * normal enough for weights. */
static float randn(uint64_t *rng) {
    double u = 0;
    for (int i = 0; i < 4; i++) {
        *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
        u += (double)(*rng >> 11) * 0x1.0p-53;
    }
    return (float)((u - 2.0) * 1.7320508);
}

/* A (rows, cols) f32 tensor of mean + std * N(0, 1). */
static void add_f32(gguf_writer_t *w, uint64_t *rng, const char *name, int rows, int cols, float mean, float std) {
    size_t n = (size_t)rows * (size_t)cols;
    float *f = malloc(n * sizeof *f);
    ck_assert_ptr_nonnull(f);
    for (size_t i = 0; i < n; i++) f[i] = mean + std * randn(rng);
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    ck_assert_int_eq(gguf_writer_add_tensor(w, name, rows == 1 ? 1 : 2, dims, GGML_TYPE_F32, f, n * sizeof *f), 0);
    free(f);
}

static void write_tiny(const tiny_opts_t *o, const char *path) {
    const int L = o->n_layers, E = o->n_embd, KVH = o->n_kv_heads, F = o->n_ff, HD = E / o->n_heads;
    gguf_writer_t *w = gguf_writer_create();
    ck_assert_ptr_nonnull(w);
    int V = mkmodel_synthetic_vocab(w);
    ck_assert_int_gt(V, 0);
    const int gemma = o->window > 0;
    const char *a = gemma ? "gemma3" : "llama";
    char k[96];
#define KEY(sfx) (snprintf(k, sizeof k, "%s." sfx, a), k)
    ck_assert_int_eq(gguf_writer_set_str(w, "general.architecture", a), 0);
    gguf_writer_set_str(w, "general.name", o->name);
    gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)o->n_ctx);
    gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)E);
    gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)L);
    gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)F);
    gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)o->n_heads);
    gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)KVH);
    gguf_writer_set_f32(w, KEY("rope.freq_base"), gemma ? 1e6f : 10000.0f);
    gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), gemma ? 1e-6f : 1e-5f);
    gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)HD);
    gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)V);
    if (gemma) {
        gguf_writer_set_u32(w, KEY("attention.key_length"), (uint32_t)HD);
        gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)HD);
        gguf_writer_set_u32(w, KEY("attention.sliding_window"), (uint32_t)o->window);
        gguf_writer_set_u32(w, KEY("attention.sliding_window_pattern"), (uint32_t)o->swa_pattern);
        if (o->final_softcap > 0) gguf_writer_set_f32(w, KEY("final_logit_softcapping"), o->final_softcap);
    }
#undef KEY
    uint64_t rng = o->seed;
    const float se = 1.0f / sqrtf((float)E), sf = 1.0f / sqrtf((float)F);
    add_f32(w, &rng, "token_embd.weight", V, E, 0, 1.0f);
    add_f32(w, &rng, "output_norm.weight", 1, E, 1.0f, 0.1f);
    add_f32(w, &rng, "output.weight", V, E, 0, 2.0f * se);
    for (int l = 0; l < L; l++) {
        char n[64];
#define T(sfx, r, c, mean, std) snprintf(n, sizeof n, "blk.%d." sfx ".weight", l), add_f32(w, &rng, n, r, c, mean, std)
        T("attn_norm", 1, E, 1.0f, 0.1f);
        T("attn_q", E, E, 0, o->qk_std * se);
        T("attn_k", HD * KVH, E, 0, o->qk_std * se);
        T("attn_v", HD * KVH, E, 0, 2.0f * se);
        T("attn_output", E, E, 0, 2.0f * se);
        T("ffn_norm", 1, E, 1.0f, 0.1f);
        T("ffn_gate", F, E, 0, se);
        T("ffn_up", F, E, 0, se);
        T("ffn_down", E, F, 0, sf);
        if (gemma) {
            T("attn_q_norm", 1, HD, 1.0f, 0.1f);
            T("attn_k_norm", 1, HD, 1.0f, 0.1f);
            T("post_attention_norm", 1, E, 1.0f, 0.1f);
            T("post_ffw_norm", 1, E, 1.0f, 0.1f);
        }
#undef T
    }
    ck_assert_int_eq(gguf_writer_write(w, path), 0);
    gguf_writer_destroy(w);
}

model_t *tiny_model_load(const tiny_opts_t *o) {
    char path[] = "/tmp/lacuna_tiny_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    write_tiny(o, path);
    char err[256];
    model_t *m = model_load(path, err, sizeof err);
    unlink(path);
    ck_assert_msg(m != NULL, "%s", err);
    return m;
}
