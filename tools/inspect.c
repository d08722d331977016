/* `lacuna inspect`: shows what a GGUF file holds, through the same validating
 * reader the daemon uses, then loads it as the daemon does and prints the
 * hyper-parameters the loader derived (per layer for models whose layers
 * differ), so a file that inspects cleanly also loads (and a bad one fails
 * here with the loader's message). */
#include <stdio.h>
#include <string.h>

#include "model/gguf.h"
#include "model/model.h"
#include "tools/cmds.h"

/* The model as loaded: what the forward pass will run. */
static int print_model(const char *path) {
    char err[512];
    model_t *m = model_load(path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "lacuna inspect: cannot load the model: %s\n", err);
        return 1;
    }
    const model_hparams_t *hp = model_hparams(m);
    printf("\nmodel as loaded: %s (%s)\n", hp->name, hp->arch);
    printf("  layers %d, embedding %d, heads %d (kv %d) x %d, ffn %d (%s), vocab %d%s, context %d\n", hp->n_layers,
           hp->n_embd, hp->n_heads, hp->n_kv_heads, hp->head_dim, hp->n_ff, hp->ffn_geglu ? "GeGLU-tanh" : "SwiGLU",
           hp->n_vocab, hp->tied_embeddings ? " (tied output)" : "", hp->n_ctx_train);
    printf("  rms eps %g, rope %s, query scale %g, embedding scale %g, qk-norm %s, post-norms %s\n", hp->rms_eps,
           hp->rope_neox ? "neox" : "adjacent pairs", hp->attn_scale, hp->embd_scale, hp->qk_norm ? "yes" : "no",
           hp->post_norms ? "yes" : "no");
    if (hp->final_softcap > 0) printf("  final logit soft-cap %g\n", hp->final_softcap);
    int n_sliding = 0;
    for (int l = 0; l < hp->n_layers; l++) n_sliding += hp->layer[l].window > 0;
    if (!n_sliding) {
        printf("  attention: all %d layers global, rope base %g", hp->n_layers, hp->rope_theta);
        if (hp->rope_freq_scale != 1.0f) printf(" scale 1/%g", 1.0 / hp->rope_freq_scale);
        printf("\n");
    } else {
        printf("  attention: %d global, %d sliding (window %d; each %d-th layer is global)\n", hp->n_layers - n_sliding,
               n_sliding, hp->sliding_window, hp->swa_pattern);
        for (int l = 0; l < hp->n_layers; l++) {
            const model_layer_hp_t *L = &hp->layer[l];
            printf("  layer %2d: %-7s rope base %g", l, L->window > 0 ? "sliding" : "global", L->rope_theta);
            if (L->rope_freq_scale != 1.0f) printf(" scale 1/%g", 1.0 / L->rope_freq_scale);
            if (L->window > 0) printf(", window %d", L->window);
            printf("\n");
        }
    }
    model_free(m);
    return 0;
}

int cmd_inspect(int argc, char **argv) {
    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(argc == 2 ? stdout : stderr, "usage: lacuna inspect MODEL.gguf\n");
        return argc == 2 ? 0 : 2;
    }
    char err[512];
    gguf_ctx_t *g = gguf_open(argv[1], err, sizeof err);
    if (!g) {
        fprintf(stderr, "lacuna inspect: %s: %s\n", argv[1], err);
        return 1;
    }
    printf("file: %s\nGGUF version: %u\nfile size: %llu bytes\nalignment: %u\ndata offset: %llu\n\n", argv[1],
           gguf_version(g), (unsigned long long)gguf_file_size(g), gguf_alignment(g),
           (unsigned long long)gguf_data_offset(g));

    printf("metadata (%lld keys):\n", (long long)gguf_n_keys(g));
    for (int64_t i = 0; i < gguf_n_keys(g); i++) {
        char val[512];
        gguf_str_t k = gguf_key_name(g, i);
        gguf_format_value(g, i, val, sizeof val);
        printf("  %-40.*s %-7s %s\n", (int)k.len, k.ptr, gguf_vtype_name(gguf_key_type(g, i)), val);
    }

    printf("\ntensors (%lld):\n  %-32s %-5s %-24s %12s %12s\n", (long long)gguf_n_tensors(g), "name", "type", "dims",
           "bytes", "offset");
    uint64_t params = 0, bytes = 0;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        char dims[96];
        size_t o = 0;
        for (uint32_t d = 0; d < t->n_dims; d++)
            o += (size_t)snprintf(dims + o, sizeof dims - o, "%s%llu", d ? " x " : "", (unsigned long long)t->dims[d]);
        printf("  %-32.*s %-5s %-24s %12llu %12llu\n", (int)t->name.len, t->name.ptr, ggml_type_name(t->type), dims,
               (unsigned long long)t->nbytes, (unsigned long long)t->offset);
        params += t->n_elements;
        bytes += t->nbytes;
    }
    printf("\nparameters: %llu (%.1fM), tensor data: %llu bytes\n", (unsigned long long)params, params / 1e6,
           (unsigned long long)bytes);
    gguf_close(g);
    return print_model(argv[1]);
}
