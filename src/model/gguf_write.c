/* GGUF v3 writer.
 *
 * `lacuna mkmodel` and the tests need real GGUF files without Python; this
 * builds one in memory (metadata, tensor infos, aligned data) and writes it out
 * in one go. It refuses what the reader would refuse (duplicate names, bad
 * shapes, sizes that do not match the type), so anything it writes loads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/status.h"
#include "model/gguf.h"
#include "model/gguf_internal.h"

typedef struct {
    char *key;
    lc_buf_t val; // type u32 followed by the encoded value
} wkv_t;

typedef struct {
    char *name;
    uint32_t n_dims;
    uint64_t dims[4];
    ggml_type_t type;
    void *data;
    size_t nbytes;
} wtensor_t;

struct gguf_writer {
    wkv_t *kvs;
    size_t n_kv, cap_kv;
    wtensor_t *tensors;
    size_t n_tensors, cap_tensors;
    uint32_t alignment;
};

/* ---- byte buffer ------------------------------------------------------------ */

static void buf_u32(lc_buf_t *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    lc_buf_put(b, x, 4);
}

static void buf_u64(lc_buf_t *b, uint64_t v) {
    buf_u32(b, (uint32_t)v);
    buf_u32(b, (uint32_t)(v >> 32));
}

static void buf_str(lc_buf_t *b, const char *s) {
    size_t n = strlen(s);
    buf_u64(b, n);
    lc_buf_put(b, s, n);
}

/* ---- building ---------------------------------------------------------------- */

gguf_writer_t *gguf_writer_create(void) {
    gguf_writer_t *w = calloc(1, sizeof *w);
    if (w) w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_destroy(gguf_writer_t *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kvs[i].key);
        free(w->kvs[i].val.p);
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->kvs);
    free(w->tensors);
    free(w);
}

/* Appends a key; returns its value buffer (already holding `type`) or NULL
 * with *rc set. */
static lc_buf_t *add_kv(gguf_writer_t *w, const char *key, uint32_t type, int *rc) {
    *rc = LC_EINVAL;
    if (!key || !*key) return NULL;
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kvs[i].key, key) == 0) return NULL;
    *rc = LC_ENOMEM;
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        wkv_t *p = realloc(w->kvs, cap * sizeof *p);
        if (!p) return NULL;
        w->kvs = p;
        w->cap_kv = cap;
    }
    wkv_t *kv = &w->kvs[w->n_kv];
    memset(kv, 0, sizeof *kv);
    if (!(kv->key = strdup(key))) return NULL;
    buf_u32(&kv->val, type);
    w->n_kv++;
    *rc = 0;
    return &kv->val;
}

/* Checks the value buffer after encoding; drops the key on OOM. */
static int done_kv(gguf_writer_t *w, lc_buf_t *b) {
    if (!b->oom) return 0;
    wkv_t *kv = &w->kvs[--w->n_kv];
    free(kv->key);
    free(kv->val.p);
    return LC_ENOMEM;
}

int gguf_writer_set_u32(gguf_writer_t *w, const char *key, uint32_t v) {
    int rc;
    lc_buf_t *b = add_kv(w, key, GGUF_T_U32, &rc);
    if (!b) return rc;
    buf_u32(b, v);
    // A valid alignment also governs how this writer lays out the data; an
    // invalid one is written as-is so that tests can produce bad files.
    if (strcmp(key, "general.alignment") == 0 && v && !(v & (v - 1)) && v <= (1u << 30)) w->alignment = v;
    return done_kv(w, b);
}

int gguf_writer_set_i32(gguf_writer_t *w, const char *key, int32_t v) {
    int rc;
    lc_buf_t *b = add_kv(w, key, GGUF_T_I32, &rc);
    if (!b) return rc;
    buf_u32(b, (uint32_t)v);
    return done_kv(w, b);
}

int gguf_writer_set_u64(gguf_writer_t *w, const char *key, uint64_t v) {
    int rc;
    lc_buf_t *b = add_kv(w, key, GGUF_T_U64, &rc);
    if (!b) return rc;
    buf_u64(b, v);
    return done_kv(w, b);
}

int gguf_writer_set_f32(gguf_writer_t *w, const char *key, float v) {
    int rc;
    uint32_t bits;
    lc_buf_t *b = add_kv(w, key, GGUF_T_F32, &rc);
    if (!b) return rc;
    memcpy(&bits, &v, 4);
    buf_u32(b, bits);
    return done_kv(w, b);
}

int gguf_writer_set_bool(gguf_writer_t *w, const char *key, int v) {
    int rc;
    uint8_t x = v ? 1 : 0;
    lc_buf_t *b = add_kv(w, key, GGUF_T_BOOL, &rc);
    if (!b) return rc;
    lc_buf_put(b, &x, 1);
    return done_kv(w, b);
}

int gguf_writer_set_str(gguf_writer_t *w, const char *key, const char *v) {
    int rc;
    if (!v) return LC_EINVAL;
    lc_buf_t *b = add_kv(w, key, GGUF_T_STRING, &rc);
    if (!b) return rc;
    buf_str(b, v);
    return done_kv(w, b);
}

int gguf_writer_set_arr_str(gguf_writer_t *w, const char *key, const char *const *v, uint64_t n) {
    int rc;
    for (uint64_t i = 0; i < n; i++)
        if (!v[i]) return LC_EINVAL;
    lc_buf_t *b = add_kv(w, key, GGUF_T_ARRAY, &rc);
    if (!b) return rc;
    buf_u32(b, GGUF_T_STRING);
    buf_u64(b, n);
    for (uint64_t i = 0; i < n; i++) buf_str(b, v[i]);
    return done_kv(w, b);
}

int gguf_writer_set_arr_f32(gguf_writer_t *w, const char *key, const float *v, uint64_t n) {
    int rc;
    lc_buf_t *b = add_kv(w, key, GGUF_T_ARRAY, &rc);
    if (!b) return rc;
    buf_u32(b, GGUF_T_F32);
    buf_u64(b, n);
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &v[i], 4);
        buf_u32(b, bits);
    }
    return done_kv(w, b);
}

int gguf_writer_set_arr_i32(gguf_writer_t *w, const char *key, const int32_t *v, uint64_t n) {
    int rc;
    lc_buf_t *b = add_kv(w, key, GGUF_T_ARRAY, &rc);
    if (!b) return rc;
    buf_u32(b, GGUF_T_I32);
    buf_u64(b, n);
    for (uint64_t i = 0; i < n; i++) buf_u32(b, (uint32_t)v[i]);
    return done_kv(w, b);
}

int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t n_dims, const uint64_t *dims, ggml_type_t type,
                           const void *data, size_t nbytes) {
    if (!name || !*name || strlen(name) > GGUF_MAX_NAME || n_dims < 1 || n_dims > 4 || !dims) return LC_EINVAL;
    uint64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (dims[d] == 0 || dims[d] > (uint64_t)INT64_MAX / n) return LC_EINVAL;
        n *= dims[d];
    }
    if (!ggml_type_name(type) || dims[0] % ggml_block_size(type)) return LC_EINVAL;
    if (ggml_row_size(type, n) != nbytes || (!data && nbytes)) return LC_EINVAL;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return LC_EINVAL;
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        wtensor_t *p = realloc(w->tensors, cap * sizeof *p);
        if (!p) return LC_ENOMEM;
        w->tensors = p;
        w->cap_tensors = cap;
    }
    wtensor_t *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->data = malloc(nbytes ? nbytes : 1);
    if (!t->name || !t->data) {
        free(t->name);
        free(t->data);
        return LC_ENOMEM;
    }
    memcpy(t->data, data, nbytes);
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < 4; d++) t->dims[d] = d < n_dims ? dims[d] : 1;
    t->type = type;
    t->nbytes = nbytes;
    w->n_tensors++;
    return 0;
}

/* ---- output --------------------------------------------------------------- */

static void buf_pad(lc_buf_t *b, uint32_t alignment) {
    static const uint8_t zeros[64];
    while (b->n % alignment) {
        size_t k = alignment - b->n % alignment;
        lc_buf_put(b, zeros, k < sizeof zeros ? k : sizeof zeros);
        if (b->oom) return;
    }
}

int gguf_writer_to_buffer(gguf_writer_t *w, void **out, size_t *out_len) {
    lc_buf_t b = {0};
    buf_u32(&b, GGUF_MAGIC);
    buf_u32(&b, 3);
    buf_u64(&b, w->n_tensors);
    buf_u64(&b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        buf_str(&b, w->kvs[i].key);
        lc_buf_put(&b, w->kvs[i].val.p, w->kvs[i].val.n);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        buf_str(&b, t->name);
        buf_u32(&b, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) buf_u64(&b, t->dims[d]);
        buf_u32(&b, (uint32_t)t->type);
        buf_u64(&b, off);
        off += (t->nbytes + w->alignment - 1) / w->alignment * w->alignment;
    }
    buf_pad(&b, w->alignment);
    for (size_t i = 0; i < w->n_tensors; i++) {
        lc_buf_put(&b, w->tensors[i].data, w->tensors[i].nbytes);
        buf_pad(&b, w->alignment);
    }
    if (b.oom) {
        free(b.p);
        return LC_ENOMEM;
    }
    *out = b.p;
    *out_len = b.n;
    return 0;
}

int gguf_writer_write(gguf_writer_t *w, const char *path) {
    void *buf;
    size_t len;
    int rc = gguf_writer_to_buffer(w, &buf, &len);
    if (rc) return rc;
    FILE *f = fopen(path, "wb");
    if (!f) {
        rc = LC_EIO;
        goto fail;
    }
    if (fwrite(buf, 1, len, f) != len) rc = LC_EIO;
    if (fclose(f) != 0) rc = LC_EIO;
    if (rc) remove(path);
fail:
    free(buf);
    return rc;
}
