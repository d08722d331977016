/* Loading a Llama-family or Gemma 3 GGUF: hyper-parameters from the
 * metadata, every tensor's shape checked against them, weight matrices copied
 * in their block format (the matmul reads them in place; see ops_matmul_w),
 * or expanded to f32 on request. Also owns the accessors of model_t. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/mem.h"
#include "common/status.h"
#include "model/gguf.h"
#include "model/model_internal.h"
#include "model/tokenizer.h"
#include "model/chat.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- metadata --------------------------------------------------------------- */
/* Reads "<arch>.<suffix>" as an integer; required keys fail when missing. */
static int get_int(const gguf_ctx_t *g, const char *arch, const char *suffix, int required, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out, char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int64_t v;
    int rc = gguf_get_i64(g, key, &v);
    if (rc == LC_ENOTFOUND && !required) {
        *out = def;
        return 0;
    }
    if (rc) {
        set_err(err, errlen, "metadata %s: %s", key, rc == LC_ENOTFOUND ? "missing" : "not an integer");
        return LC_EFORMAT;
    }
    if (v < lo || v > hi) {
        set_err(err, errlen, "metadata %s = %lld out of range [%lld, %lld]", key, (long long)v, (long long)lo,
                (long long)hi);
        return LC_EFORMAT;
    }
    *out = v;
    return 0;
}

static int get_float(const gguf_ctx_t *g, const char *arch, const char *suffix, float def, float *out, char *err,
                     size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = gguf_get_f32(g, key, out);
    if (rc == LC_ENOTFOUND) {
        *out = def;
        return 0;
    }
    if (rc || !isfinite(*out)) {
        set_err(err, errlen, "metadata %s: not a finite number", key);
        return LC_EFORMAT;
    }
    return 0;
}

/* Fails with the key's name when "<arch>.<suffix>" is absent. */
static int require_key(const gguf_ctx_t *g, const char *arch, const char *suffix, char *err, size_t errlen) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (gguf_find_key(g, key) >= 0) return 0;
    set_err(err, errlen, "metadata %s: missing", key);
    return LC_EFORMAT;
}

/* The switches of the Gemma 3 architecture (llama: all off). The GGUF
 * states the shapes, the window, the norm epsilon and the global RoPE base
 * (read_hparams requires them); what llama.cpp's converter does not write is
 * fixed by the architecture, as llama.cpp and transformers fix it, and read
 * when a file does state it: the local RoPE base (10,000), the layer
 * pattern (read_window) and the final logit soft-cap (none). The query
 * scale is 1/sqrt(query_pre_attn_scalar) where that scalar is the head size,
 * except for the 27B model (62 layers: n_embd / n_heads), again as both
 * references have it. Attention-logit soft-capping (Gemma 2) is refused. */
static int read_gemma(const gguf_ctx_t *g, model_hparams_t *hp, char *err, size_t errlen) {
    hp->embd_scale = 1.0f;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->rope_theta_swa = hp->rope_theta;
    if (hp->arch_id != MODEL_ARCH_GEMMA3) return 0;
    const char *a = hp->arch;
    int rc;
    hp->embd_scale = sqrtf((float)hp->n_embd);
    hp->qk_norm = 1;
    hp->post_norms = 1;
    hp->ffn_geglu = 1;
    float qscalar = hp->n_layers == 62 ? (float)hp->n_embd / (float)hp->n_heads : (float)hp->head_dim;
    hp->attn_scale = 1.0f / sqrtf(qscalar);
    if ((rc = get_float(g, a, "rope.freq_base_swa", 10000.0f, &hp->rope_theta_swa, err, errlen))) return rc;
    if ((rc = get_float(g, a, "final_logit_softcapping", 0.0f, &hp->final_softcap, err, errlen))) return rc;
    float attn_cap;
    if ((rc = get_float(g, a, "attn_logit_softcapping", 0.0f, &attn_cap, err, errlen))) return rc;
    if (attn_cap != 0.0f) {
        set_err(err, errlen, "metadata %s.attn_logit_softcapping = %g: unsupported", a, attn_cap);
        return LC_EUNSUPPORTED;
    }
    if (!(hp->rope_theta_swa > 0) || !(hp->final_softcap >= 0)) {
        set_err(err, errlen, "bad %s.rope.freq_base_swa or %s.final_logit_softcapping", a, a);
        return LC_EFORMAT;
    }
    return 0;
}

/* A GGUF string into a fixed buffer, cut to fit. */
static void copy_str(char *dst, size_t cap, gguf_str_t s) {
    if (s.len >= cap) s.len = cap - 1;
    memcpy(dst, s.ptr, s.len);
    dst[s.len] = 0;
}

/* general.architecture (one we run) and general.name, when stated. */
static int read_arch(const gguf_ctx_t *g, model_hparams_t *hp, char *err, size_t errlen) {
    gguf_str_t s;
    if (gguf_get_str(g, "general.architecture", &s)) {
        set_err(err, errlen, "metadata general.architecture missing");
        return LC_EFORMAT;
    }
    copy_str(hp->arch, sizeof hp->arch, s);
    if (strcmp(hp->arch, "llama") == 0) {
        hp->arch_id = MODEL_ARCH_LLAMA;
    } else if (strcmp(hp->arch, "gemma3") == 0) {
        hp->arch_id = MODEL_ARCH_GEMMA3;
    } else {
        set_err(err, errlen, "unsupported architecture '%s' (llama, gemma3)", hp->arch);
        return LC_EUNSUPPORTED;
    }
    if (!gguf_get_str(g, "general.name", &s)) copy_str(hp->name, sizeof hp->name, s);
    return 0;
}

/* Reads an integer key into field, returning from the caller on failure
 * (rc, v, g, a, err and errlen come from the caller's scope). */
#define GI(suffix, req, def, lo, hi, field)                                                                            \
    do {                                                                                                               \
        if ((rc = get_int(g, a, suffix, req, def, lo, hi, &v, err, errlen))) return rc;                                \
        field = (int)v;                                                                                                \
    } while (0)

/* Gemma 3's sliding window: a value size equal to the key size, the window
 * and its layer pattern. */
static int read_window(const gguf_ctx_t *g, model_hparams_t *hp, char *err, size_t errlen) {
    const char *a = hp->arch;
    int64_t v;
    int rc, vlen;
    GI("attention.value_length", 1, 0, 2, 1024, vlen);
    if (vlen != hp->head_dim) {
        set_err(err, errlen, "metadata %s.attention.value_length %d differs from key_length %d (unsupported)", a, vlen,
                hp->head_dim);
        return LC_EUNSUPPORTED;
    }
    GI("attention.sliding_window", 1, 0, 1, 1 << 30, hp->sliding_window);
    /* Not written by llama.cpp's converter for Gemma 3, which fixes it
     * for the architecture (every 6th layer global; transformers'
     * Gemma3TextConfig the same): read when a file states it. */
    GI("attention.sliding_window_pattern", 0, 6, 1, 1024, hp->swa_pattern);
    return 0;
}

/* The shapes: widths, layers, heads, head and RoPE dimensions. */
static int read_shapes(const gguf_ctx_t *g, model_t *m, char *err, size_t errlen) {
    model_hparams_t *hp = &m->hp;
    const int gemma = hp->arch_id == MODEL_ARCH_GEMMA3;
    const char *a = hp->arch;
    int64_t v;
    int rc;
    GI("embedding_length", 1, 0, 1, 1 << 16, hp->n_embd);
    GI("block_count", 1, 0, 1, 1024, hp->n_layers);
    GI("feed_forward_length", 1, 0, 1, 1 << 18, hp->n_ff);
    GI("attention.head_count", 1, 0, 1, 1024, hp->n_heads);
    /* Gemma's GGUFs state every attention shape; llama's may leave the KV
     * heads, the context and the head size to their defaults. */
    GI("attention.head_count_kv", gemma, hp->n_heads, 1, 1024, hp->n_kv_heads);
    GI("context_length", gemma, 4096, 1, 1 << 30, hp->n_ctx_train);
    if (!gemma && hp->n_embd % hp->n_heads) {
        set_err(err, errlen, "embedding_length %d not divisible by head_count %d", hp->n_embd, hp->n_heads);
        return LC_EFORMAT;
    }
    GI("attention.key_length", gemma, hp->n_embd / hp->n_heads, 2, 1024, hp->head_dim);
    if (gemma && (rc = read_window(g, hp, err, errlen))) return rc;
    GI("rope.dimension_count", 0, hp->head_dim, 2, hp->head_dim, m->rope_dim);
    if (hp->n_heads % hp->n_kv_heads) {
        set_err(err, errlen, "head_count %d not a multiple of head_count_kv %d", hp->n_heads, hp->n_kv_heads);
        return LC_EFORMAT;
    }
    if (hp->head_dim % 2 || m->rope_dim % 2) {
        set_err(err, errlen, "head dimension %d / rope dimension %d must be even", hp->head_dim, m->rope_dim);
        return LC_EFORMAT;
    }
    return 0;
}
#undef GI

/* The RMS norm epsilon and the RoPE base (both required for Gemma). */
static int read_norm_rope(const gguf_ctx_t *g, model_hparams_t *hp, char *err, size_t errlen) {
    const char *a = hp->arch;
    int rc;
    if (hp->arch_id == MODEL_ARCH_GEMMA3 &&
        ((rc = require_key(g, a, "attention.layer_norm_rms_epsilon", err, errlen)) ||
         (rc = require_key(g, a, "rope.freq_base", err, errlen))))
        return rc;
    if ((rc = get_float(g, a, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->rms_eps, err, errlen))) return rc;
    if ((rc = get_float(g, a, "rope.freq_base", 10000.0f, &hp->rope_theta, err, errlen))) return rc;
    if (!(hp->rms_eps >= 0) || !(hp->rope_theta > 0)) {
        set_err(err, errlen, "bad rms epsilon or rope.freq_base");
        return LC_EFORMAT;
    }
    return 0;
}

/* Linear RoPE scaling only; other schemes would silently change outputs. */
static int read_rope_scaling(const gguf_ctx_t *g, model_hparams_t *hp, char *err, size_t errlen) {
    const char *a = hp->arch;
    int rc;
    hp->rope_freq_scale = 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    float factor = 1.0f;
    gguf_str_t s;
    if (!gguf_get_str(g, key, &s)) {
        if (s.len == 6 && !memcmp(s.ptr, "linear", 6)) {
            if ((rc = get_float(g, a, "rope.scaling.factor", 1.0f, &factor, err, errlen))) return rc;
        } else if (!(s.len == 4 && !memcmp(s.ptr, "none", 4))) {
            set_err(err, errlen, "unsupported rope scaling '%.*s'", (int)s.len, s.ptr);
            return LC_EUNSUPPORTED;
        }
    } else if ((rc = get_float(g, a, "rope.scale_linear", 1.0f, &factor, err, errlen))) {
        return rc;
    }
    if (!(factor > 0)) {
        set_err(err, errlen, "bad rope scaling factor %g", factor);
        return LC_EFORMAT;
    }
    hp->rope_freq_scale = 1.0f / factor;
    return 0;
}

static int read_hparams(const gguf_ctx_t *g, model_t *m, char *err, size_t errlen) {
    model_hparams_t *hp = &m->hp;
    int rc;
    if ((rc = read_arch(g, hp, err, errlen)) || (rc = read_shapes(g, m, err, errlen)) ||
        (rc = read_norm_rope(g, hp, err, errlen)) || (rc = read_gemma(g, hp, err, errlen)) ||
        (rc = read_rope_scaling(g, hp, err, errlen)))
        return rc;
    /* llama GGUFs: Q/K rows were permuted for adjacent-pair rotation; gemma
     * GGUFs keep Hugging Face's order and rotate halves. */
    hp->rope_neox = hp->arch_id == MODEL_ARCH_GEMMA3;
    return 0;
}

/* Per-layer attention: Gemma 3's local layers slide over the window with
 * their own RoPE base and no scaling (the scaling of the larger models is
 * for the global layers only, as in llama.cpp and transformers). */
static int layer_hparams(model_t *m, char *err, size_t errlen) {
    model_hparams_t *hp = &m->hp;
    m->layer_hp = calloc((size_t)hp->n_layers, sizeof *m->layer_hp);
    if (!m->layer_hp) {
        set_err(err, errlen, "out of memory");
        return LC_ENOMEM;
    }
    for (int l = 0; l < hp->n_layers; l++) {
        model_layer_hp_t *L = &m->layer_hp[l];
        int sliding = hp->sliding_window > 0 && hp->swa_pattern > 0 && (l + 1) % hp->swa_pattern != 0;
        L->window = sliding ? hp->sliding_window : 0;
        L->rope_theta = sliding ? hp->rope_theta_swa : hp->rope_theta;
        L->rope_freq_scale = sliding ? 1.0f : hp->rope_freq_scale;
    }
    hp->layer = m->layer_hp;
    return 0;
}

/* ---- tensors ------------------------------------------------------------------ */
/* Takes ownership of p (a weight buffer) so that model_free releases it.
 * Returns p, or NULL after freeing it when the list cannot grow. */
static void *own(model_t *m, void *p) {
    if (!p) return NULL;
    if (m->n_bufs == m->cap_bufs) {
        int cap = m->cap_bufs ? 2 * m->cap_bufs : 64;
        void **nb = realloc(m->bufs, (size_t)cap * sizeof *nb);
        if (!nb) {
            free(p);
            return NULL;
        }
        m->bufs = nb;
        m->cap_bufs = cap;
    }
    m->bufs[m->n_bufs++] = p;
    return p;
}

/* Finds `name` and checks its shape is exactly dims[0..n_dims) and its type
 * one the matmul reads. NULL with a message otherwise. */
static const gguf_tensor_t *find_tensor(const gguf_ctx_t *g, const char *name, uint32_t n_dims, const int64_t *dims,
                                        char *err, size_t errlen) {
    const gguf_tensor_t *t = gguf_find_tensor(g, name);
    if (!t) {
        set_err(err, errlen, "tensor %s missing", name);
        return NULL;
    }
    int ok = 1;
    for (uint32_t i = 0; i < 4; i++) {
        uint64_t want = i < n_dims ? (uint64_t)dims[i] : 1;
        uint64_t have = i < t->n_dims ? t->dims[i] : 1;
        if (want != have) ok = 0;
    }
    if (!ok) {
        char have[96] = "", want[96] = "";
        size_t hl = 0, wl = 0;
        for (uint32_t i = 0; i < t->n_dims && hl < sizeof have; i++)
            hl += snprintf(have + hl, sizeof have - hl, "%s%llu", i ? ", " : "", (unsigned long long)t->dims[i]);
        for (uint32_t i = 0; i < n_dims && wl < sizeof want; i++)
            wl += snprintf(want + wl, sizeof want - wl, "%s%lld", i ? ", " : "", (long long)dims[i]);
        set_err(err, errlen, "tensor %s has shape [%s], expected [%s]", name, have, want);
        return NULL;
    }
    if (!ops_w_row_bytes((int)t->type, (int)dims[0])) {
        set_err(err, errlen, "tensor %s: unsupported type %s (%u) for rows of %lld", name,
                ggml_type_name(t->type) ? ggml_type_name(t->type) : "?", (unsigned)t->type, (long long)dims[0]);
        return NULL;
    }
    return t;
}

/* Loads a (rows, cols) matrix (dims {cols, rows}) into w, kept in its file
 * format (packed by ops_w_pack where the type has packed kernels); every
 * value is expanded once to check it is finite. With f32 set, the matrix is
 * stored expanded instead (type OPS_W_F32). */
static int load_mat(const gguf_ctx_t *g, model_t *m, const char *name, int64_t cols, int64_t rows, int f32, ops_w_t *w,
                    char *err, size_t errlen) {
    const int64_t dims[2] = {cols, rows};
    const gguf_tensor_t *t = find_tensor(g, name, rows > 1 ? 2 : 1, dims, err, errlen);
    if (!t) return LC_EFORMAT;
    const size_t rb = ops_w_row_bytes((int)t->type, (int)cols);
    if ((uint64_t)rb * (uint64_t)rows != t->nbytes) {
        set_err(err, errlen, "tensor %s: %llu bytes of data, expected %llu", name, (unsigned long long)t->nbytes,
                (unsigned long long)rb * (unsigned long long)rows);
        return LC_EFORMAT;
    }
    ops_w_t src = {.type = (int)t->type, .rows = (int)rows, .cols = (int)cols, .row_bytes = rb, .data = t->data};
    *w = src;
    if (f32) w->type = OPS_W_F32, w->row_bytes = (size_t)cols * sizeof(float);
    size_t bytes = w->row_bytes * (size_t)rows;
    uint8_t *dst = own(m, lc_alloc64(bytes));
    float *row = f32 ? NULL : malloc((size_t)cols * sizeof(float));
    if (!dst || (!f32 && !row)) {
        free(row);
        set_err(err, errlen, "tensor %s: out of memory (%zu bytes)", name, bytes);
        return LC_ENOMEM;
    }
    if (!f32) memcpy(dst, t->data, bytes);
    for (int64_t r = 0; r < rows; r++) {
        float *v = f32 ? (float *)(void *)(dst + (size_t)r * w->row_bytes) : row;
        ops_w_row_f32(&src, (int)r, v);
        for (int64_t i = 0; i < cols; i++)
            if (!isfinite(v[i])) {
                free(row);
                set_err(err, errlen, "tensor %s: non-finite value at element %llu", name,
                        (unsigned long long)(r * cols + i));
                return LC_EFORMAT;
            }
    }
    free(row);
    w->data = dst;
    m->weight_bytes += bytes;
    /* 16 rows interleaved for the CPU's decode kernels; ops_w_row_f32 (the
     * CUDA executor's upload) reads either layout */
    if (!f32 && ops_w_pack(w) < 0) {
        set_err(err, errlen, "tensor %s: out of memory packing it", name);
        return LC_ENOMEM;
    }
    return 0;
}

/* A norm vector, expanded to f32. */
static float *load_vec(const gguf_ctx_t *g, model_t *m, const char *name, int64_t n, char *err, size_t errlen) {
    ops_w_t w;
    if (load_mat(g, m, name, n, 1, 1, &w, err, errlen)) return NULL;
    return (float *)(uintptr_t)w.data;
}

static int load_weights(const gguf_ctx_t *g, model_t *m, char *err, size_t errlen) {
    const model_hparams_t *hp = &m->hp;
    const gguf_tensor_t *te = gguf_find_tensor(g, "token_embd.weight");
    if (!te || te->n_dims != 2) {
        set_err(err, errlen, "tensor token_embd.weight %s", te ? "is not 2-D" : "missing");
        return LC_EFORMAT;
    }
    if (te->dims[1] < 1 || te->dims[1] > (1u << 24)) {
        set_err(err, errlen, "tensor token_embd.weight: bad vocabulary size %llu", (unsigned long long)te->dims[1]);
        return LC_EFORMAT;
    }
    m->hp.n_vocab = (int)te->dims[1];
    int64_t vs;
    char key[96];
    snprintf(key, sizeof key, "%s.vocab_size", hp->arch);
    if (!gguf_get_i64(g, key, &vs) && vs != hp->n_vocab) {
        set_err(err, errlen, "metadata %s = %lld but token_embd.weight has %d rows", key, (long long)vs, hp->n_vocab);
        return LC_EFORMAT;
    }
    int64_t E = hp->n_embd, V = hp->n_vocab, F = hp->n_ff;
    int64_t QD = (int64_t)hp->n_heads * hp->head_dim, KD = (int64_t)hp->n_kv_heads * hp->head_dim;
    const int f32 = m->f32_weights;
    int rc;
#define MAT(dst, name, cols, rows)                                                                                     \
    do {                                                                                                               \
        if ((rc = load_mat(g, m, name, cols, rows, f32, &(dst), err, errlen))) return rc;                              \
    } while (0)
#define VEC(dst, name, n)                                                                                              \
    do {                                                                                                               \
        if (!((dst) = load_vec(g, m, name, n, err, errlen))) return LC_EFORMAT;                                        \
    } while (0)
    MAT(m->tok_embd, "token_embd.weight", E, V);
    VEC(m->out_norm, "output_norm.weight", E);
    if (gguf_find_tensor(g, "output.weight")) {
        MAT(m->output, "output.weight", E, V);
        m->hp.tied_embeddings = 0;
    } else {
        m->output = m->tok_embd;
        m->hp.tied_embeddings = 1;
    }
    m->layers = calloc((size_t)hp->n_layers, sizeof *m->layers);
    if (!m->layers) {
        set_err(err, errlen, "out of memory");
        return LC_ENOMEM;
    }
    char name[96];
    for (int l = 0; l < hp->n_layers; l++) {
        model_layer_t *L = &m->layers[l];
#define LN(KIND, field, suffix, ...)                                                                                   \
    do {                                                                                                               \
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix);                                                    \
        KIND(L->field, name, __VA_ARGS__);                                                                             \
    } while (0)
        LN(VEC, attn_norm, "attn_norm", E);
        LN(MAT, wq, "attn_q", E, QD);
        LN(MAT, wk, "attn_k", E, KD);
        LN(MAT, wv, "attn_v", E, KD);
        LN(MAT, wo, "attn_output", QD, E);
        LN(VEC, ffn_norm, "ffn_norm", E);
        LN(MAT, w_gate, "ffn_gate", E, F);
        LN(MAT, w_up, "ffn_up", E, F);
        LN(MAT, w_down, "ffn_down", F, E);
        if (hp->qk_norm) {
            LN(VEC, q_norm, "attn_q_norm", hp->head_dim);
            LN(VEC, k_norm, "attn_k_norm", hp->head_dim);
        }
        if (hp->post_norms) {
            LN(VEC, post_attn_norm, "post_attention_norm", E);
            LN(VEC, post_ffn_norm, "post_ffw_norm", E);
        }
#undef LN
    }
#undef MAT
#undef VEC
    return 0;
}

/* ---- public ------------------------------------------------------------------- */
model_t *model_load(const char *path, char *err, size_t errlen) { return model_load_ex(path, NULL, err, errlen); }

size_t model_weight_bytes(const model_t *m) { return m->weight_bytes; }

model_t *model_load_ex(const char *path, const model_load_opts_t *o, char *err, size_t errlen) {
    char gerr[256] = "";
    gguf_ctx_t *g = gguf_open(path, gerr, sizeof gerr);
    if (!g) {
        set_err(err, errlen, "%s: %s", path, gerr);
        return NULL;
    }
    model_t *m = calloc(1, sizeof *m);
    char merr[256] = "";
    if (!m) {
        snprintf(merr, sizeof merr, "out of memory");
        goto fail;
    }
    m->f32_weights = o ? o->f32_weights : 0;
    const char *base = strrchr(path, '/');
    snprintf(m->hp.name, sizeof m->hp.name, "%s", base ? base + 1 : path);
    if (read_hparams(g, m, merr, sizeof merr)) goto fail;
    if (layer_hparams(m, merr, sizeof merr)) goto fail;
    if (load_weights(g, m, merr, sizeof merr)) goto fail;
    int n_pos = m->hp.n_ctx_train > 4096 ? m->hp.n_ctx_train : 4096;
    if (n_pos > (1 << 20)) n_pos = 1 << 20;
    if (ops_rope_init(&m->rope, m->rope_dim, n_pos, m->hp.rope_theta, m->hp.rope_freq_scale) ||
        (m->hp.sliding_window > 0 && ops_rope_init(&m->rope_swa, m->rope_dim, n_pos, m->hp.rope_theta_swa, 1.0f))) {
        snprintf(merr, sizeof merr, "out of memory (rope tables)");
        goto fail;
    }
    m->tok = tok_create_from_gguf(g, merr, sizeof merr);
    if (!m->tok) goto fail;
    if (tok_n_vocab(m->tok) > m->hp.n_vocab) {
        snprintf(merr, sizeof merr, "tokenizer has %d tokens but the embedding only %d rows", tok_n_vocab(m->tok),
                 m->hp.n_vocab);
        goto fail;
    }
    {
        /* No usable template is not fatal here: the caller reports it, or
         * falls back to a family of its choice (model_chat_template() = NULL). */
        gguf_str_t ts = {0};
        char cerr[128];
        int have = gguf_get_str(g, "tokenizer.chat_template", &ts) == 0;
        if (chat_template_detect(have ? ts.ptr : NULL, have ? (size_t)ts.len : 0, &m->chat, cerr, sizeof cerr) == 0)
            m->has_chat = 1;
        else
            LC_WARN("%s: %s", m->hp.name, cerr);
    }
    gguf_close(g);
    return m;
fail:
    set_err(err, errlen, "%s: %s", path, merr);
    model_free(m);
    gguf_close(g);
    return NULL;
}

void model_free(model_t *m) {
    if (!m) return;
    for (int i = 0; i < m->n_bufs; i++) free(m->bufs[i]);
    free(m->bufs);
    free(m->layers);
    free(m->layer_hp);
    ops_rope_fini(&m->rope);
    ops_rope_fini(&m->rope_swa);
    if (m->tok) tok_destroy(m->tok);
    free(m);
}

const model_hparams_t *model_hparams(const model_t *m) { return &m->hp; }
const tok_t *model_tok(const model_t *m) { return m->tok; }
const chat_template_t *model_chat_template(const model_t *m) { return m->has_chat ? &m->chat : NULL; }

attn_shape_t model_attn_shape(const model_t *m) {
    attn_shape_t s = {
        .n_heads = m->hp.n_heads,
        .n_kv_heads = m->hp.n_kv_heads,
        .head_dim = m->hp.head_dim,
        .scale = m->hp.attn_scale,
    };
    return s;
}

kv_config_t model_kv_config(const model_t *m, int block_size, int64_t n_blocks) {
    kv_config_t c = {
        .n_layers = m->hp.n_layers,
        .n_kv_heads = m->hp.n_kv_heads,
        .head_dim = m->hp.head_dim,
        .block_size = block_size,
        .n_blocks = n_blocks,
    };
    return c;
}

static int gcd(int a, int b) {
    while (b) {
        int t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Groups of g = gcd(global, sliding) layers: global/g groups of global
 * layers first, then sliding/g groups of sliding layers. A step reads a
 * sliding layer's keys from its first row's window start, rounded down to
 * the attention tiles' alignment (attn.h: ATTN_BK). */
kv_config_t model_kv_config_grouped(const model_t *m, int block_size, int64_t n_blocks) {
    kv_config_t c = model_kv_config(m, block_size, n_blocks);
    const model_hparams_t *hp = &m->hp;
    int n_swa = 0, window = 0;
    for (int l = 0; l < hp->n_layers; l++)
        if (hp->layer[l].window > 0) {
            n_swa++;
            if (hp->layer[l].window > window) window = hp->layer[l].window;
        }
    if (n_swa == 0) return c;
    const int g = gcd(hp->n_layers - n_swa, n_swa);
    c.n_groups = hp->n_layers / g;
    c.n_full_groups = (hp->n_layers - n_swa) / g;
    c.swa_keep = (int64_t)window - 1 + (ATTN_BK - 1);
    return c;
}

void model_kv_layers(const model_t *m, const kv_config_t *c, int *group, int *slot) {
    const model_hparams_t *hp = &m->hp;
    const int G = kv_config_groups(c), per = hp->n_layers / G;
    int n_full = 0, n_swa = 0;
    for (int l = 0; l < hp->n_layers; l++) {
        if (G == 1) {
            group[l] = 0, slot[l] = l;
        } else if (hp->layer[l].window > 0) {
            group[l] = c->n_full_groups + n_swa / per, slot[l] = n_swa % per;
            n_swa++;
        } else {
            group[l] = n_full / per, slot[l] = n_full % per;
            n_full++;
        }
    }
}
