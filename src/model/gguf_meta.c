/* GGUF metadata accessors.
 *
 * Writers disagree on integer widths (the same key is u32 in one file and i32
 * or u64 in another), so the getters convert between any integer types when
 * the value fits instead of insisting on the stored type. Everything here reads
 * values that gguf.c already bounds-checked. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"
#include "model/gguf.h"
#include "model/gguf_internal.h"

/* A number read from a value of any numeric type. */
typedef struct {
    int kind; // 0 signed integer, 1 unsigned integer, 2 floating point
    int64_t i;
    uint64_t u;
    double f;
} num_t;

static int read_num(uint32_t type, const uint8_t *p, num_t *n) {
    memset(n, 0, sizeof *n);
    switch (type) {
    case GGUF_T_U8:
        n->kind = 1;
        n->u = p[0];
        return 0;
    case GGUF_T_U16:
        n->kind = 1;
        n->u = le16(p);
        return 0;
    case GGUF_T_U32:
        n->kind = 1;
        n->u = le32(p);
        return 0;
    case GGUF_T_U64:
        n->kind = 1;
        n->u = le64(p);
        return 0;
    case GGUF_T_I8: n->i = (int8_t)p[0]; return 0;
    case GGUF_T_I16: n->i = (int16_t)le16(p); return 0;
    case GGUF_T_I32: n->i = (int32_t)le32(p); return 0;
    case GGUF_T_I64: n->i = (int64_t)le64(p); return 0;
    case GGUF_T_F32: {
        uint32_t b = le32(p);
        float f;
        memcpy(&f, &b, 4);
        n->kind = 2;
        n->f = f;
        return 0;
    }
    case GGUF_T_F64: {
        uint64_t b = le64(p);
        memcpy(&n->f, &b, 8);
        n->kind = 2;
        return 0;
    }
    }
    return LC_EFORMAT;
}

static int num_to_i64(const num_t *n, int64_t *out) {
    if (n->kind == 2) return LC_EFORMAT;
    if (n->kind == 1) {
        if (n->u > (uint64_t)INT64_MAX) return LC_ERANGE;
        *out = (int64_t)n->u;
    } else {
        *out = n->i;
    }
    return 0;
}

static int num_to_f32(const num_t *n, float *out) {
    *out = n->kind == 2 ? (float)n->f : n->kind == 1 ? (float)n->u : (float)n->i;
    return 0;
}

static const gguf_kv_t *kv_get(const gguf_ctx_t *g, const char *key) {
    int64_t i = gguf_find_key(g, key);
    return i >= 0 ? &g->kvs[i] : NULL;
}

const char *gguf_vtype_name(uint32_t t) {
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

gguf_str_t gguf_key_name(const gguf_ctx_t *g, int64_t i) {
    gguf_str_t none = {"", 0};
    return i >= 0 && i < g->n_kv ? g->kvs[i].key : none;
}

gguf_vtype_t gguf_key_type(const gguf_ctx_t *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? g->kvs[i].type : (gguf_vtype_t)-1;
}

/* ---- scalars ----------------------------------------------------------------- */

int gguf_get_i64(const gguf_ctx_t *g, const char *key, int64_t *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    num_t n;
    if (!kv) return LC_ENOTFOUND;
    if (read_num(kv->type, kv->val, &n)) return LC_EFORMAT;
    return num_to_i64(&n, out);
}

int gguf_get_u32(const gguf_ctx_t *g, const char *key, uint32_t *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    num_t n;
    if (!kv) return LC_ENOTFOUND;
    if (read_num(kv->type, kv->val, &n) || n.kind == 2) return LC_EFORMAT;
    if (n.kind == 1 ? n.u > UINT32_MAX : (n.i < 0 || n.i > (int64_t)UINT32_MAX)) return LC_ERANGE;
    *out = n.kind == 1 ? (uint32_t)n.u : (uint32_t)n.i;
    return 0;
}

int gguf_get_f32(const gguf_ctx_t *g, const char *key, float *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    num_t n;
    if (!kv) return LC_ENOTFOUND;
    if (read_num(kv->type, kv->val, &n)) return LC_EFORMAT;
    return num_to_f32(&n, out);
}

int gguf_get_bool(const gguf_ctx_t *g, const char *key, int *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    num_t n;
    if (!kv) return LC_ENOTFOUND;
    if (kv->type == GGUF_T_BOOL) {
        *out = kv->val[0] != 0;
        return 0;
    }
    if (read_num(kv->type, kv->val, &n) || n.kind == 2) return LC_EFORMAT;
    *out = n.kind == 1 ? n.u != 0 : n.i != 0;
    return 0;
}

int gguf_get_str(const gguf_ctx_t *g, const char *key, gguf_str_t *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    if (!kv) return LC_ENOTFOUND;
    if (kv->type != GGUF_T_STRING) return LC_EFORMAT;
    out->ptr = (const char *)kv->val;
    out->len = kv->count;
    return 0;
}

/* ---- arrays ------------------------------------------------------------------ */

int gguf_get_arr(const gguf_ctx_t *g, const char *key, gguf_vtype_t *elem_type, uint64_t *count) {
    const gguf_kv_t *kv = kv_get(g, key);
    if (!kv) return LC_ENOTFOUND;
    if (kv->type != GGUF_T_ARRAY) return LC_EFORMAT;
    if (elem_type) *elem_type = kv->elem_type;
    if (count) *count = kv->count;
    return 0;
}

static gguf_str_t arr_str_at(const gguf_kv_t *kv, uint64_t i) {
    const uint8_t *p = kv->val + kv->str_off[i];
    gguf_str_t s = {(const char *)p + 8, le64(p)};
    return s;
}

/* Fetches array element i of a numeric array. */
static int arr_num(const gguf_ctx_t *g, const char *key, uint64_t i, num_t *n) {
    const gguf_kv_t *kv = kv_get(g, key);
    if (!kv) return LC_ENOTFOUND;
    if (kv->type != GGUF_T_ARRAY) return LC_EFORMAT;
    if (i >= kv->count) return LC_ERANGE;
    uint32_t sz = gguf__vtype_size(kv->elem_type);
    if (!sz || kv->elem_type == GGUF_T_BOOL) return LC_EFORMAT;
    return read_num(kv->elem_type, kv->val + i * sz, n);
}

int gguf_arr_str(const gguf_ctx_t *g, const char *key, uint64_t i, gguf_str_t *out) {
    const gguf_kv_t *kv = kv_get(g, key);
    if (!kv) return LC_ENOTFOUND;
    if (kv->type != GGUF_T_ARRAY || kv->elem_type != GGUF_T_STRING) return LC_EFORMAT;
    if (i >= kv->count) return LC_ERANGE;
    *out = arr_str_at(kv, i);
    return 0;
}

int gguf_arr_f32(const gguf_ctx_t *g, const char *key, uint64_t i, float *out) {
    num_t n;
    int rc = arr_num(g, key, i, &n);
    return rc ? rc : num_to_f32(&n, out);
}

int gguf_arr_i64(const gguf_ctx_t *g, const char *key, uint64_t i, int64_t *out) {
    num_t n;
    int rc = arr_num(g, key, i, &n);
    return rc ? rc : num_to_i64(&n, out);
}

/* ---- rendering ----------------------------------------------------------- */

/* Appends with snprintf semantics, never past len; *o may exceed len. */
static void put(char *buf, size_t len, size_t *o, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t len, size_t *o, const char *fmt, ...) {
    if (*o >= len) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *o, len - *o, fmt, ap);
    va_end(ap);
    if (k > 0) *o += (size_t)k;
}

/* A quoted string, escaped, cut to at most max bytes of the original. */
static void put_str(char *buf, size_t len, size_t *o, gguf_str_t s, size_t max) {
    put(buf, len, o, "\"");
    size_t n = s.len > max ? max : (size_t)s.len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '\n')
            put(buf, len, o, "\\n");
        else if (c == '\t')
            put(buf, len, o, "\\t");
        else if (c == '"' || c == '\\')
            put(buf, len, o, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            put(buf, len, o, "\\x%02x", c);
        else
            put(buf, len, o, "%c", c);
    }
    put(buf, len, o, s.len > n ? "\"... (%llu bytes)" : "\"", (unsigned long long)s.len);
}

static void put_num(char *buf, size_t len, size_t *o, uint32_t type, const uint8_t *p) {
    num_t n;
    if (type == GGUF_T_BOOL)
        put(buf, len, o, "%s", p[0] ? "true" : "false");
    else if (read_num(type, p, &n))
        put(buf, len, o, "?");
    else if (n.kind == 0)
        put(buf, len, o, "%lld", (long long)n.i);
    else if (n.kind == 1)
        put(buf, len, o, "%llu", (unsigned long long)n.u);
    else
        put(buf, len, o, "%.9g", n.f);
}

void gguf_format_value(const gguf_ctx_t *g, int64_t i, char *buf, size_t len) {
    size_t o = 0;
    if (!buf || len == 0) return;
    buf[0] = '\0';
    if (i < 0 || i >= g->n_kv) return;
    const gguf_kv_t *kv = &g->kvs[i];
    if (kv->type == GGUF_T_STRING) {
        gguf_str_t s = {(const char *)kv->val, kv->count};
        put_str(buf, len, &o, s, 80);
    } else if (kv->type != GGUF_T_ARRAY) {
        put_num(buf, len, &o, kv->type, kv->val);
    } else {
        put(buf, len, &o, "[%s x %llu]", gguf_vtype_name(kv->elem_type), (unsigned long long)kv->count);
        uint64_t shown = kv->count < 5 ? kv->count : 5;
        for (uint64_t k = 0; k < shown; k++) {
            put(buf, len, &o, k ? ", " : " ");
            if (kv->elem_type == GGUF_T_STRING)
                put_str(buf, len, &o, arr_str_at(kv, k), 24);
            else
                put_num(buf, len, &o, kv->elem_type, kv->val + k * gguf__vtype_size(kv->elem_type));
        }
        if (shown < kv->count) put(buf, len, &o, ", ...");
    }
    if (o >= len && len > 4) memcpy(buf + len - 4, "...", 4); // mark truncation
}
