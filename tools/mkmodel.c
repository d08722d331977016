/* `lacuna mkmodel`: writes a tiny Llama GGUF with random weights, in any
 * supported tensor type, with either the synthetic vocabulary or one copied
 * from a real model. Tests build their models through mkmodel_write, or
 * (the engine suites, tests/tinymodel.c) through mkmodel_synthetic_vocab
 * with weights of their own. */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/quant.h"
#include "tools/cmds.h"
#include "tools/mkmodel.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void mkmodel_opts_default(mkmodel_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->n_layers = 2;
    o->n_embd = 64;
    o->n_heads = 4;
    o->n_kv_heads = 2;
    o->n_ff = 128;
    o->n_ctx = 2048;
    o->type = GGML_TYPE_F32;
    o->seed = 1;
    o->rope_theta = 10000.0f;
}

/* ---- random numbers -------------------------------------------------------------- */
/* splitmix64: the state is a counter advanced by GOLDEN per draw, so draw i
 * of a stream is reachable directly (tensors are drawn in parallel). */
#define GOLDEN 0x9e3779b97f4a7c15ull
static uint64_t mix(uint64_t *x) {
    uint64_t z = (*x += GOLDEN);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Approximately normal (sum of four uniforms, unit variance). */
static float randn(uint64_t *st) {
    double s = 0;
    for (int i = 0; i < 4; i++) s += (double)(mix(st) >> 11) * 0x1.0p-53;
    return (float)((s - 2.0) * sqrt(3.0));
}

/* ---- tensors ---------------------------------------------------------------------- */
/* Adds a tensor of rows x cols (cols contiguous) drawn as mean + std * N(0,1),
 * stored in `type`. */
static int add_tensor(gguf_writer_t *w, const char *name, int rows, int cols, uint32_t type, float mean, float std,
                      uint64_t *st, char *err, size_t errlen) {
    size_t n = (size_t)rows * cols;
    uint32_t bs = ggml_block_size(type), ts = ggml_type_size(type);
    if (!bs || cols % bs) {
        set_err(err, errlen, "tensor %s: row length %d is not a multiple of %s's block of %u", name, cols,
                ggml_type_name(type) ? ggml_type_name(type) : "?", bs);
        return LC_EINVAL;
    }
    float *f = malloc(n * sizeof *f);
    size_t nbytes = n / bs * ts;
    void *q = malloc(nbytes);
    int rc = LC_ENOMEM;
    if (!f || !q) goto out;
    /* Element i takes draws 4i..4i+3 of the stream: the same numbers in
     * any thread count. Rows quantize independently. */
    const uint64_t base = *st;
    const size_t row_bytes = (size_t)cols / bs * ts;
    rc = 0;
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 20)) reduction(| : rc)
    for (int r = 0; r < rows; r++) {
        float *fr = f + (size_t)r * cols;
        for (int c = 0; c < cols; c++) {
            uint64_t x = base + ((size_t)r * cols + c) * 4 * GOLDEN;
            fr[c] = mean + std * randn(&x);
        }
        rc |= quant_quantize(type, fr, (char *)q + (size_t)r * row_bytes, (size_t)cols);
    }
    *st = base + n * 4 * GOLDEN;
    if (rc) {
        rc = LC_EINVAL;
        set_err(err, errlen, "tensor %s: quantize failed", name);
        goto out;
    }
    uint64_t dims[2] = {(uint64_t)cols, (uint64_t)rows};
    rc = gguf_writer_add_tensor(w, name, rows == 1 ? 1 : 2, dims, type, q, nbytes);
out:
    if (rc == LC_ENOMEM) set_err(err, errlen, "out of memory");
    free(f);
    free(q);
    return rc;
}

/* ---- vocabulary from another model ------------------------------------------------ */
/* Copies every tokenizer.* key of src into w; returns the vocabulary size. */
static int copy_vocab(gguf_writer_t *w, const char *path, const char *skip, char *err, size_t errlen) {
    char gerr[256];
    gguf_ctx_t *g = gguf_open(path, gerr, sizeof gerr);
    if (!g) {
        set_err(err, errlen, "%s: %s", path, gerr);
        return LC_EFORMAT;
    }
    int rc = 0, n_vocab = -1;
    char key[256];
    for (int64_t i = 0; i < gguf_n_keys(g) && !rc; i++) {
        gguf_str_t k = gguf_key_name(g, i);
        if (k.len < 10 || k.len >= sizeof key || memcmp(k.ptr, "tokenizer.", 10)) continue;
        memcpy(key, k.ptr, k.len);
        key[k.len] = 0;
        if (skip && !strcmp(key, skip)) continue;
        gguf_vtype_t t = gguf_key_type(g, i);
        if (t == GGUF_T_STRING) {
            gguf_str_t s;
            char *v = NULL;
            if (!(rc = gguf_get_str(g, key, &s)) && (v = strndup(s.ptr, s.len)))
                rc = gguf_writer_set_str(w, key, v);
            else if (!rc)
                rc = LC_ENOMEM;
            free(v);
        } else if (t == GGUF_T_BOOL) {
            int b;
            if (!(rc = gguf_get_bool(g, key, &b))) rc = gguf_writer_set_bool(w, key, b);
        } else if (t == GGUF_T_F32 || t == GGUF_T_F64) {
            float f;
            if (!(rc = gguf_get_f32(g, key, &f))) rc = gguf_writer_set_f32(w, key, f);
        } else if (t == GGUF_T_ARRAY) {
            gguf_vtype_t et;
            uint64_t n;
            if ((rc = gguf_get_arr(g, key, &et, &n))) break;
            if (!strcmp(key, "tokenizer.ggml.tokens")) n_vocab = (int)n;
            if (et == GGUF_T_STRING) {
                char **v = calloc(n ? n : 1, sizeof *v);
                rc = v ? 0 : LC_ENOMEM;
                for (uint64_t j = 0; j < n && !rc; j++) {
                    gguf_str_t s;
                    if (!(rc = gguf_arr_str(g, key, j, &s)) && !(v[j] = strndup(s.ptr, s.len))) rc = LC_ENOMEM;
                }
                if (!rc) rc = gguf_writer_set_arr_str(w, key, (const char *const *)v, n);
                for (uint64_t j = 0; v && j < n; j++) free(v[j]);
                free(v);
            } else if (et == GGUF_T_F32 || et == GGUF_T_F64) {
                float *v = malloc((n ? n : 1) * sizeof *v);
                rc = v ? 0 : LC_ENOMEM;
                for (uint64_t j = 0; j < n && !rc; j++) rc = gguf_arr_f32(g, key, j, &v[j]);
                if (!rc) rc = gguf_writer_set_arr_f32(w, key, v, n);
                free(v);
            } else {
                int32_t *v = malloc((n ? n : 1) * sizeof *v);
                rc = v ? 0 : LC_ENOMEM;
                for (uint64_t j = 0; j < n && !rc; j++) {
                    int64_t x;
                    if (!(rc = gguf_arr_i64(g, key, j, &x))) v[j] = (int32_t)x;
                }
                if (!rc) rc = gguf_writer_set_arr_i32(w, key, v, n);
                free(v);
            }
        } else { // integers
            int64_t x;
            if (!(rc = gguf_get_i64(g, key, &x))) {
                if (x >= 0 && x <= UINT32_MAX)
                    rc = gguf_writer_set_u32(w, key, (uint32_t)x);
                else
                    rc = gguf_writer_set_i32(w, key, (int32_t)x);
            }
        }
        if (rc) set_err(err, errlen, "%s: copying %s: %s", path, key, lc_strerror(rc));
    }
    gguf_close(g);
    if (rc) return rc;
    if (n_vocab <= 0) {
        set_err(err, errlen, "%s: no tokenizer.ggml.tokens", path);
        return LC_EFORMAT;
    }
    return n_vocab;
}

/* ---- the model ----------------------------------------------------------------------- */
int mkmodel_write(const mkmodel_opts_t *o, const char *path, char *err, size_t errlen) {
    if (o->n_layers < 1 || o->n_embd < 2 || o->n_heads < 1 || o->n_kv_heads < 1 || o->n_ff < 1 || o->n_ctx < 1 ||
        o->head_dim < 0 || o->head_dim % 2 || o->window < 0 || o->swa_pattern < 0 ||
        (!o->head_dim && (o->n_embd % o->n_heads || (o->n_embd / o->n_heads) % 2)) || o->n_heads % o->n_kv_heads) {
        set_err(err, errlen,
                "bad dimensions: embd must split into heads of even size (or an even --head-dim); heads a multiple "
                "of kv-heads");
        return LC_EINVAL;
    }
    if (!ggml_block_size(o->type)) {
        set_err(err, errlen, "unknown tensor type %u", o->type);
        return LC_EINVAL;
    }
    gguf_writer_t *w = gguf_writer_create();
    if (!w) {
        set_err(err, errlen, "out of memory");
        return LC_ENOMEM;
    }
    const int gemma = o->window > 0;
    const char *a = gemma ? "gemma3" : "llama";
    int rc, E = o->n_embd, F = o->n_ff, HD = o->head_dim > 0 ? o->head_dim : E / o->n_heads, KD = HD * o->n_kv_heads;
    const int QD = HD * o->n_heads;
    int n_vocab =
        o->vocab_from
            ? copy_vocab(w, o->vocab_from, o->chat_template ? "tokenizer.chat_template" : NULL, err, errlen)
            : mkmodel_synthetic_vocab_tmpl(w, o->chat_template ? NULL : mkmodel_chatml_template, o->vocab_size);
    if (n_vocab >= 0 && o->chat_template &&
        (rc = gguf_writer_set_str(w, "tokenizer.chat_template", o->chat_template))) {
        set_err(err, errlen, "chat template: %s", lc_strerror(rc));
        goto out;
    }
    if (n_vocab < 0) {
        rc = n_vocab;
        if (!o->vocab_from) set_err(err, errlen, "synthetic vocabulary: %s", lc_strerror(rc));
        goto out;
    }
    char name[64], k[96];
    snprintf(name, sizeof name, "mkmodel-%s-L%d-E%d-%s", a, o->n_layers, E, ggml_type_name(o->type));
#define KEY(sfx) (snprintf(k, sizeof k, "%s." sfx, a), k)
    if ((rc = gguf_writer_set_str(w, "general.architecture", a)) ||
        (rc = gguf_writer_set_str(w, "general.name", name)) ||
        (rc = gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)o->n_ctx)) ||
        (rc = gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)E)) ||
        (rc = gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)o->n_layers)) ||
        (rc = gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)F)) ||
        (rc = gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)o->n_heads)) ||
        (rc = gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)o->n_kv_heads)) ||
        (rc = gguf_writer_set_f32(w, KEY("rope.freq_base"), o->rope_theta)) ||
        (rc = gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), gemma ? 1e-6f : 1e-5f)) ||
        (rc = gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)HD)) ||
        (rc = gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)n_vocab)) ||
        (gemma && ((rc = gguf_writer_set_u32(w, KEY("attention.key_length"), (uint32_t)HD)) ||
                   (rc = gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)HD)) ||
                   (rc = gguf_writer_set_u32(w, KEY("attention.sliding_window"), (uint32_t)o->window)) ||
                   (rc = gguf_writer_set_u32(w, KEY("attention.sliding_window_pattern"),
                                             (uint32_t)(o->swa_pattern > 0 ? o->swa_pattern : 6)))))) {
        set_err(err, errlen, "metadata: %s", lc_strerror(rc));
        goto out;
    }
#undef KEY
    /* Scales keep activations O(1) through the layers: weights ~ N(0, 1/in),
     * norms near 1, embeddings ~ N(0, 1). Tied embeddings, like SmolLM2. */
    uint64_t st = o->seed;
    float se = 1.0f / sqrtf((float)E), sf = 1.0f / sqrtf((float)F);
    if ((rc = add_tensor(w, "token_embd.weight", n_vocab, E, o->type, 0, 1.0f, &st, err, errlen)) ||
        (rc = add_tensor(w, "output_norm.weight", 1, E, GGML_TYPE_F32, 1.0f, 0.1f, &st, err, errlen)))
        goto out;
    for (int l = 0; l < o->n_layers; l++) {
        struct {
            const char *suffix;
            int rows, cols;
            float mean, std;
            int f32;
        } t[] = {
            {"attn_norm", 1, E, 1.0f, 0.1f, 1},
            {"attn_q", QD, E, 0, se, 0},
            {"attn_k", KD, E, 0, se, 0},
            {"attn_v", KD, E, 0, se, 0},
            {"attn_output", E, QD, 0, 1.0f / sqrtf((float)QD), 0},
            {"ffn_norm", 1, E, 1.0f, 0.1f, 1},
            {"ffn_gate", F, E, 0, se, 0},
            {"ffn_up", F, E, 0, se, 0},
            {"ffn_down", E, F, 0, sf, 0},
            /* gemma3 only */
            {"attn_q_norm", 1, HD, 1.0f, 0.1f, 1},
            {"attn_k_norm", 1, HD, 1.0f, 0.1f, 1},
            {"post_attention_norm", 1, E, 1.0f, 0.1f, 1},
            {"post_ffw_norm", 1, E, 1.0f, 0.1f, 1},
        };
        for (size_t i = 0; i < (gemma ? sizeof t / sizeof t[0] : 9); i++) {
            char tn[64];
            snprintf(tn, sizeof tn, "blk.%d.%s.weight", l, t[i].suffix);
            if ((rc = add_tensor(w, tn, t[i].rows, t[i].cols, t[i].f32 ? GGML_TYPE_F32 : o->type, t[i].mean, t[i].std,
                                 &st, err, errlen)))
                goto out;
        }
    }
    if ((rc = gguf_writer_write(w, path))) set_err(err, errlen, "%s: write failed: %s", path, lc_strerror(rc));
out:
    gguf_writer_destroy(w);
    return rc;
}

/* ---- command ------------------------------------------------------------------------- */
static int parse_type(const char *s, uint32_t *out) {
    static const struct {
        const char *name;
        uint32_t type;
    } types[] = {
        {"f32", GGML_TYPE_F32},   {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16},
        {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
        {"q5_0", GGML_TYPE_Q5_0}, {"q4_k", GGML_TYPE_Q4_K}, {"q6_k", GGML_TYPE_Q6_K},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, types[i].name)) {
            *out = types[i].type;
            return 0;
        }
    return -1;
}

static void mk_usage(FILE *f) {
    fprintf(f, "usage: lacuna mkmodel -o OUT.gguf [--layers N] [--embd N] [--heads N] [--kv-heads N] [--ff N]\n"
               "                      [--vocab-from MODEL.gguf | --vocab synthetic] [--ctx N] [--seed S]\n"
               "                      [--type f32|f16|bf16|q8_0|q4_0|q4_1|q4_k|q6_k] [--template chatml|qwen2.5]\n"
               "                      [--vocab-size N (synthetic vocabulary padded with random words)]\n"
               "                      [--window N [--swa-pattern K] (Gemma 3)] [--head-dim D]\n"
               "Writes a tiny random-weight Llama model (defaults: 2 layers, embd 64, 4 heads, 2 kv-heads,\n"
               "ff 128, ctx 2048, f32, seed 1, the synthetic byte-level BPE vocabulary); with --window a\n"
               "Gemma 3 model whose every K-th layer (default 6) is global, the others sliding over N\n"
               "positions; --head-dim: heads of D dims (default embd / heads).\n");
}

int cmd_mkmodel(int argc, char **argv) {
    mkmodel_opts_t o;
    mkmodel_opts_default(&o);
    const char *out = NULL;
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'},
        {"layers", required_argument, 0, 'L'},
        {"embd", required_argument, 0, 'E'},
        {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'K'},
        {"ff", required_argument, 0, 'F'},
        {"vocab-from", required_argument, 0, 'V'},
        {"vocab", required_argument, 0, 'v'},
        {"type", required_argument, 0, 't'},
        {"seed", required_argument, 0, 's'},
        {"ctx", required_argument, 0, 'c'},
        {"template", required_argument, 0, 'T'},
        {"vocab-size", required_argument, 0, 'N'},
        {"window", required_argument, 0, 'W'},
        {"swa-pattern", required_argument, 0, 'P'},
        {"head-dim", required_argument, 0, 'D'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "o:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'L': o.n_layers = atoi(optarg); break;
        case 'E': o.n_embd = atoi(optarg); break;
        case 'H': o.n_heads = atoi(optarg); break;
        case 'K': o.n_kv_heads = atoi(optarg); break;
        case 'F': o.n_ff = atoi(optarg); break;
        case 'c': o.n_ctx = atoi(optarg); break;
        case 's': o.seed = strtoull(optarg, NULL, 0); break;
        case 'V': o.vocab_from = optarg; break;
        case 'N': o.vocab_size = atoi(optarg); break;
        case 'W': o.window = atoi(optarg); break;
        case 'P': o.swa_pattern = atoi(optarg); break;
        case 'D': o.head_dim = atoi(optarg); break;
        case 'T':
            if (!strcmp(optarg, "chatml")) {
                o.chat_template = mkmodel_chatml_template;
            } else if (!strcmp(optarg, "qwen2.5")) {
                o.chat_template = mkmodel_qwen25_template;
            } else {
                fprintf(stderr, "lacuna mkmodel: --template takes chatml or qwen2.5\n");
                return 2;
            }
            break;
        case 'v':
            if (strcmp(optarg, "synthetic")) {
                fprintf(stderr, "lacuna mkmodel: --vocab takes only 'synthetic' (or use --vocab-from)\n");
                return 2;
            }
            o.vocab_from = NULL;
            break;
        case 't':
            if (parse_type(optarg, &o.type)) {
                fprintf(stderr, "lacuna mkmodel: unknown type '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': mk_usage(stdout); return 0;
        default: mk_usage(stderr); return 2;
        }
    }
    if (!out || optind != argc) {
        mk_usage(stderr);
        return 2;
    }
    char err[512];
    if (mkmodel_write(&o, out, err, sizeof err)) {
        fprintf(stderr, "lacuna mkmodel: %s\n", err);
        return 1;
    }
    return 0;
}
