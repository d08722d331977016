/* GGUF reader.
 *
 * A model file is untrusted input: it may come from anywhere and be truncated
 * or hostile. Everything is validated here, once, with overflow-safe arithmetic
 * (every length, count, type, dimension, offset and size is checked against
 * the bytes that remain), so that the loader and the kernels can trust the
 * gguf_tensor_t records and metadata they get back. Errors name the entry and
 * the numbers involved. Values are read byte by byte as little-endian, so the
 * reader never does an unaligned or out-of-bounds access whatever the input. */
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"
#include "model/gguf_internal.h"

/* ---- errors and little-endian reads --------------------------------------- */

static void seterr(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies an untrusted name into out for messages: at most 64 bytes, with
 * control and non-ASCII bytes shown as '?'. */
static const char *printable(gguf_str_t s, char out[80]) {
    size_t n = s.len > 64 ? 64 : (size_t)s.len, j = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        out[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (s.len > n) {
        memcpy(out + j, "...", 3);
        j += 3;
    }
    out[j] = '\0';
    return out;
}

typedef struct {
    const uint8_t *p;
    size_t n;
    size_t pos;
    char *err;
    size_t errlen;
} rd_t;

static size_t rd_left(const rd_t *r) { return r->n - r->pos; }

/* Fails unless k more bytes remain; `what` names the field for the message. */
static int rd_need(rd_t *r, uint64_t k, const char *ctx, const char *what) {
    if (k > rd_left(r)) {
        seterr(r->err, r->errlen, "%s%s at offset %zu needs %llu bytes, only %zu left (file truncated?)", ctx, what,
               r->pos, (unsigned long long)k, rd_left(r));
        return LC_EFORMAT;
    }
    return 0;
}

static int rd_u32(rd_t *r, uint32_t *v, const char *ctx, const char *what) {
    if (rd_need(r, 4, ctx, what)) return LC_EFORMAT;
    *v = le32(r->p + r->pos);
    r->pos += 4;
    return 0;
}

static int rd_u64(rd_t *r, uint64_t *v, const char *ctx, const char *what) {
    if (rd_need(r, 8, ctx, what)) return LC_EFORMAT;
    *v = le64(r->p + r->pos);
    r->pos += 8;
    return 0;
}

/* Reads a length-prefixed string of at most maxlen bytes (0 = no limit). */
static int rd_str(rd_t *r, gguf_str_t *s, uint64_t maxlen, const char *ctx, const char *what) {
    uint64_t len;
    if (rd_u64(r, &len, ctx, what)) return LC_EFORMAT;
    if (maxlen && len > maxlen) {
        seterr(r->err, r->errlen, "%s%s length %llu exceeds the limit of %llu", ctx, what, (unsigned long long)len,
               (unsigned long long)maxlen);
        return LC_EFORMAT;
    }
    if (len > rd_left(r)) {
        seterr(r->err, r->errlen, "%s%s length %llu exceeds the %zu bytes left in the file", ctx, what,
               (unsigned long long)len, rd_left(r));
        return LC_EFORMAT;
    }
    s->ptr = (const char *)r->p + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return 0;
}

/* ---- types ----------------------------------------------------------------- */

const char *ggml_type_name(uint32_t type) {
    switch (type) {
    case GGML_TYPE_F32: return "F32";
    case GGML_TYPE_F16: return "F16";
    case GGML_TYPE_BF16: return "BF16";
    case GGML_TYPE_Q4_0: return "Q4_0";
    case GGML_TYPE_Q4_1: return "Q4_1";
    case GGML_TYPE_Q5_0: return "Q5_0";
    case GGML_TYPE_Q8_0: return "Q8_0";
    case GGML_TYPE_Q4_K: return "Q4_K";
    case GGML_TYPE_Q6_K: return "Q6_K";
    }
    return NULL;
}

uint32_t ggml_block_size(uint32_t type) {
    switch (type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: return 1;
    case GGML_TYPE_Q4_0:
    case GGML_TYPE_Q4_1:
    case GGML_TYPE_Q5_0:
    case GGML_TYPE_Q8_0: return 32;
    case GGML_TYPE_Q4_K:
    case GGML_TYPE_Q6_K: return 256;
    }
    return 0;
}

uint32_t ggml_type_size(uint32_t type) {
    switch (type) {
    case GGML_TYPE_F32: return 4;
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: return 2;
    case GGML_TYPE_Q4_0: return 18;
    case GGML_TYPE_Q4_1: return 20;
    case GGML_TYPE_Q5_0: return 22;
    case GGML_TYPE_Q8_0: return 34;
    case GGML_TYPE_Q4_K: return 144;
    case GGML_TYPE_Q6_K: return 210;
    }
    return 0;
}

uint64_t ggml_row_size(uint32_t type, uint64_t n) {
    uint32_t bs = ggml_block_size(type), ts = ggml_type_size(type);
    if (!bs || n % bs) return 0;
    uint64_t blocks = n / bs;
    if (blocks > UINT64_MAX / ts) return 0;
    return blocks * ts;
}

/* ---- hashing of names ------------------------------------------------------ */

static uint64_t hash_bytes(const char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull; // FNV-1a
    for (uint64_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static int str_eq(gguf_str_t a, const char *p, uint64_t n) { return a.len == n && memcmp(a.ptr, p, n) == 0; }

/* Builds an index over n names; returns the index of a duplicate through *dup
 * (>= 0) or -1. Returns LC_ENOMEM on allocation failure. */
static int hash_build(int64_t n, gguf_str_t (*name_of)(const gguf_ctx_t *, int64_t), const gguf_ctx_t *g,
                      int64_t **table, uint64_t *cap, int64_t *dup) {
    uint64_t c = 16;
    while (c < (uint64_t)n * 2) c <<= 1;
    int64_t *t = malloc(c * sizeof *t);
    if (!t) return LC_ENOMEM;
    memset(t, 0xff, c * sizeof *t); // all -1
    *dup = -1;
    for (int64_t i = 0; i < n; i++) {
        gguf_str_t s = name_of(g, i);
        uint64_t h = hash_bytes(s.ptr, s.len) & (c - 1);
        while (t[h] >= 0) {
            if (str_eq(name_of(g, t[h]), s.ptr, s.len)) {
                *dup = i;
                break;
            }
            h = (h + 1) & (c - 1);
        }
        if (*dup >= 0) break;
        t[h] = i;
    }
    *table = t;
    *cap = c;
    return 0;
}

static int64_t hash_find(const int64_t *t, uint64_t cap, gguf_str_t (*name_of)(const gguf_ctx_t *, int64_t),
                         const gguf_ctx_t *g, const char *name) {
    if (!t) return -1;
    uint64_t n = strlen(name);
    uint64_t h = hash_bytes(name, n) & (cap - 1);
    while (t[h] >= 0) {
        if (str_eq(name_of(g, t[h]), name, n)) return t[h];
        h = (h + 1) & (cap - 1);
    }
    return -1;
}

static gguf_str_t kv_name_of(const gguf_ctx_t *g, int64_t i) { return g->kvs[i].key; }
static gguf_str_t tensor_name_of(const gguf_ctx_t *g, int64_t i) { return g->tensors[i].name; }

/* ---- parsing ------------------------------------------------------------- */

static int parse_kv(rd_t *r, int64_t idx, gguf_kv_t *kv) {
    char ctx[160], nm[80];
    snprintf(ctx, sizeof ctx, "metadata entry %lld: ", (long long)idx);
    if (rd_str(r, &kv->key, GGUF_MAX_KEY, ctx, "key")) return LC_EFORMAT;
    if (kv->key.len == 0) {
        seterr(r->err, r->errlen, "%sempty key", ctx);
        return LC_EFORMAT;
    }
    snprintf(ctx, sizeof ctx, "metadata key '%s': ", printable(kv->key, nm));
    uint32_t t;
    if (rd_u32(r, &t, ctx, "value type")) return LC_EFORMAT;
    if (t > GGUF_T_F64) {
        seterr(r->err, r->errlen, "%sunknown value type %u", ctx, t);
        return LC_EFORMAT;
    }
    kv->type = (gguf_vtype_t)t;
    if (t == GGUF_T_STRING) {
        gguf_str_t s;
        if (rd_str(r, &s, 0, ctx, "string")) return LC_EFORMAT;
        kv->val = (const uint8_t *)s.ptr;
        kv->count = s.len;
        return 0;
    }
    if (t != GGUF_T_ARRAY) {
        uint32_t sz = gguf__vtype_size(t);
        if (rd_need(r, sz, ctx, "value")) return LC_EFORMAT;
        kv->val = r->p + r->pos;
        if (t == GGUF_T_BOOL && kv->val[0] > 1) {
            seterr(r->err, r->errlen, "%sbool value %u is neither 0 nor 1", ctx, kv->val[0]);
            return LC_EFORMAT;
        }
        r->pos += sz;
        return 0;
    }
    uint32_t et;
    uint64_t count;
    if (rd_u32(r, &et, ctx, "array element type") || rd_u64(r, &count, ctx, "array count")) return LC_EFORMAT;
    if (et == GGUF_T_ARRAY) {
        seterr(r->err, r->errlen, "%snested arrays are not supported", ctx);
        return LC_EFORMAT;
    }
    if (et > GGUF_T_F64) {
        seterr(r->err, r->errlen, "%sunknown array element type %u", ctx, et);
        return LC_EFORMAT;
    }
    kv->elem_type = (gguf_vtype_t)et;
    kv->count = count;
    kv->val = r->p + r->pos;
    if (et != GGUF_T_STRING) {
        uint32_t sz = gguf__vtype_size(et);
        if (count > rd_left(r) / sz) {
            seterr(r->err, r->errlen, "%sarray of %llu %s elements exceeds the %zu bytes left in the file", ctx,
                   (unsigned long long)count, gguf_vtype_name(et), rd_left(r));
            return LC_EFORMAT;
        }
        if (et == GGUF_T_BOOL) {
            for (uint64_t i = 0; i < count; i++)
                if (kv->val[i] > 1) {
                    seterr(r->err, r->errlen, "%sbool element %llu is neither 0 nor 1", ctx, (unsigned long long)i);
                    return LC_EFORMAT;
                }
        }
        r->pos += (size_t)(count * sz);
        return 0;
    }
    if (count > rd_left(r) / 8) { // each string needs at least its length
        seterr(r->err, r->errlen, "%sarray of %llu strings exceeds the %zu bytes left in the file", ctx,
               (unsigned long long)count, rd_left(r));
        return LC_EFORMAT;
    }
    kv->str_off = malloc((count ? count : 1) * sizeof *kv->str_off);
    if (!kv->str_off) {
        seterr(r->err, r->errlen, "%sout of memory for %llu strings", ctx, (unsigned long long)count);
        return LC_ENOMEM;
    }
    size_t start = r->pos;
    for (uint64_t i = 0; i < count; i++) {
        gguf_str_t s;
        kv->str_off[i] = r->pos - start;
        if (rd_str(r, &s, 0, ctx, "array string")) return LC_EFORMAT;
    }
    return 0;
}

static int parse_tensor(rd_t *r, int64_t idx, gguf_tensor_t *t) {
    char ctx[160], nm[80];
    snprintf(ctx, sizeof ctx, "tensor info %lld: ", (long long)idx);
    if (rd_str(r, &t->name, GGUF_MAX_NAME, ctx, "name")) return LC_EFORMAT;
    if (t->name.len == 0) {
        seterr(r->err, r->errlen, "%sempty name", ctx);
        return LC_EFORMAT;
    }
    snprintf(ctx, sizeof ctx, "tensor '%s': ", printable(t->name, nm));
    if (rd_u32(r, &t->n_dims, ctx, "n_dims")) return LC_EFORMAT;
    if (t->n_dims < 1 || t->n_dims > 4) {
        seterr(r->err, r->errlen, "%sn_dims %u (must be 1..4)", ctx, t->n_dims);
        return LC_EFORMAT;
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < 4; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (rd_u64(r, &t->dims[d], ctx, "dimension")) return LC_EFORMAT;
        if (t->dims[d] == 0 || t->dims[d] > (uint64_t)INT64_MAX) {
            seterr(r->err, r->errlen, "%sdims[%u] = %llu is out of range", ctx, d, (unsigned long long)t->dims[d]);
            return LC_EFORMAT;
        }
        if (t->dims[d] > (uint64_t)INT64_MAX / n) {
            seterr(r->err, r->errlen, "%selement count overflows at dims[%u] = %llu", ctx, d,
                   (unsigned long long)t->dims[d]);
            return LC_EFORMAT;
        }
        n *= t->dims[d];
    }
    t->n_elements = n;
    uint32_t type;
    if (rd_u32(r, &type, ctx, "type")) return LC_EFORMAT;
    if (!ggml_type_name(type)) {
        seterr(r->err, r->errlen, "%sunknown or unsupported tensor type %u", ctx, type);
        return LC_EFORMAT;
    }
    t->type = (ggml_type_t)type;
    if (t->dims[0] % ggml_block_size(type)) {
        seterr(r->err, r->errlen, "%sdims[0] = %llu is not a multiple of the %s block size %u", ctx,
               (unsigned long long)t->dims[0], ggml_type_name(type), ggml_block_size(type));
        return LC_EFORMAT;
    }
    t->nbytes = ggml_row_size(type, n);
    if (t->nbytes == 0) {
        seterr(r->err, r->errlen, "%sbyte size of %llu elements overflows", ctx, (unsigned long long)n);
        return LC_EFORMAT;
    }
    if (rd_u64(r, &t->offset, ctx, "offset")) return LC_EFORMAT;
    return 0;
}

static int cmp_by_offset(const void *a, const void *b) {
    const gguf_tensor_t *x = *(const gguf_tensor_t *const *)a, *y = *(const gguf_tensor_t *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Places every tensor in the data section: aligned, inside the file, no
 * overlaps, unique names. */
static int place_tensors(gguf_ctx_t *g, char *err, size_t errlen) {
    char nm[80], nm2[80];
    uint64_t data_size = g->size > g->data_off ? g->size - g->data_off : 0;
    if (g->n_tensors > 0 && g->data_off > g->size) {
        seterr(err, errlen, "data section starts at offset %llu, past end of file (size %zu)",
               (unsigned long long)g->data_off, g->size);
        return LC_EFORMAT;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor_t *t = &g->tensors[i];
        if (t->offset % g->alignment) {
            seterr(err, errlen, "tensor '%s': offset %llu is not a multiple of the alignment %u",
                   printable(t->name, nm), (unsigned long long)t->offset, g->alignment);
            return LC_EFORMAT;
        }
        if (t->offset > data_size || t->nbytes > data_size - t->offset) {
            unsigned long long abs_off = t->offset <= UINT64_MAX - g->data_off ? t->offset + g->data_off : t->offset;
            seterr(err, errlen, "tensor '%s': data [offset %llu, %llu bytes] extends past end of file (size %zu)",
                   printable(t->name, nm), abs_off, (unsigned long long)t->nbytes, g->size);
            return LC_EFORMAT;
        }
        t->data = g->base + g->data_off + t->offset;
    }
    int64_t dup;
    if (hash_build(g->n_tensors, tensor_name_of, g, &g->t_hash, &g->t_hcap, &dup)) {
        seterr(err, errlen, "out of memory indexing %lld tensors", (long long)g->n_tensors);
        return LC_ENOMEM;
    }
    if (dup >= 0) {
        seterr(err, errlen, "duplicate tensor name '%s'", printable(g->tensors[dup].name, nm));
        return LC_EFORMAT;
    }
    if (g->n_tensors < 2) return 0;
    gguf_tensor_t **by_off = malloc((size_t)g->n_tensors * sizeof *by_off);
    if (!by_off) {
        seterr(err, errlen, "out of memory sorting %lld tensors", (long long)g->n_tensors);
        return LC_ENOMEM;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) by_off[i] = &g->tensors[i];
    qsort(by_off, (size_t)g->n_tensors, sizeof *by_off, cmp_by_offset);
    int rc = 0;
    for (int64_t i = 0; i + 1 < g->n_tensors; i++) {
        if (by_off[i]->offset + by_off[i]->nbytes > by_off[i + 1]->offset) { // both bounded by data_size
            seterr(err, errlen, "tensors '%s' and '%s' overlap", printable(by_off[i]->name, nm),
                   printable(by_off[i + 1]->name, nm2));
            rc = LC_EFORMAT;
            break;
        }
    }
    free(by_off);
    return rc;
}

/* Grows *arr (element size esz) so that index n fits; capacity doubles. */
static int grow(void **arr, int64_t *cap, int64_t n, size_t esz) {
    if (n < *cap) return 0;
    int64_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)c * esz);
    if (!p) return LC_ENOMEM;
    *arr = p;
    *cap = c;
    return 0;
}

static int parse(gguf_ctx_t *g, char *err, size_t errlen) {
    rd_t r = {g->base, g->size, 0, err, errlen};
    uint32_t magic;
    uint64_t n_tensors, n_kv;
    if (rd_u32(&r, &magic, "header: ", "magic")) return LC_EFORMAT;
    if (magic != GGUF_MAGIC) {
        seterr(err, errlen, "bad magic 0x%08x (not a GGUF file)", magic);
        return LC_EFORMAT;
    }
    if (rd_u32(&r, &g->version, "header: ", "version")) return LC_EFORMAT;
    if (g->version != 2 && g->version != 3) {
        seterr(err, errlen, "unsupported GGUF version %u (need 2 or 3)", g->version);
        return LC_EFORMAT;
    }
    if (rd_u64(&r, &n_tensors, "header: ", "tensor_count") || rd_u64(&r, &n_kv, "header: ", "kv_count"))
        return LC_EFORMAT;
    if (n_kv > rd_left(&r) / KV_MIN_BYTES) {
        seterr(err, errlen, "kv_count %llu is impossible in a file of %zu bytes (truncated?)", (unsigned long long)n_kv,
               g->size);
        return LC_EFORMAT;
    }
    if (n_tensors > rd_left(&r) / TI_MIN_BYTES) {
        seterr(err, errlen, "tensor_count %llu is impossible in a file of %zu bytes (truncated?)",
               (unsigned long long)n_tensors, g->size);
        return LC_EFORMAT;
    }
    // Arrays grow as entries are actually parsed, so a lying count costs
    // memory in proportion to the bytes really present.
    int64_t cap = 0;
    for (int64_t i = 0; i < (int64_t)n_kv; i++) {
        if (grow((void **)&g->kvs, &cap, i, sizeof *g->kvs)) goto oom;
        memset(&g->kvs[i], 0, sizeof g->kvs[i]);
        g->n_kv = i + 1;
        int rc = parse_kv(&r, i, &g->kvs[i]);
        if (rc) return rc;
    }
    int64_t dup;
    if (hash_build(g->n_kv, kv_name_of, g, &g->kv_hash, &g->kv_hcap, &dup)) goto oom;
    if (dup >= 0) {
        char nm[80];
        seterr(err, errlen, "duplicate metadata key '%s'", printable(g->kvs[dup].key, nm));
        return LC_EFORMAT;
    }
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (gguf_find_key(g, "general.alignment") >= 0) {
        int64_t a;
        int rc = gguf_get_i64(g, "general.alignment", &a);
        if (rc || a <= 0 || a > (1 << 30) || (a & (a - 1))) {
            char v[64];
            gguf_format_value(g, gguf_find_key(g, "general.alignment"), v, sizeof v);
            seterr(err, errlen, "general.alignment %s is not a power of two in 1..2^30", v);
            return LC_EFORMAT;
        }
        g->alignment = (uint32_t)a;
    }
    cap = 0;
    for (int64_t i = 0; i < (int64_t)n_tensors; i++) {
        if (grow((void **)&g->tensors, &cap, i, sizeof *g->tensors)) goto oom;
        memset(&g->tensors[i], 0, sizeof g->tensors[i]);
        g->n_tensors = i + 1;
        int rc = parse_tensor(&r, i, &g->tensors[i]);
        if (rc) return rc;
    }
    g->data_off = ((uint64_t)r.pos + g->alignment - 1) / g->alignment * g->alignment; // pos < 2^63
    return place_tensors(g, err, errlen);
oom:
    seterr(err, errlen, "out of memory");
    return LC_ENOMEM;
}

/* ---- open / close ----------------------------------------------------------- */

gguf_ctx_t *gguf_open_buffer(const void *buf, size_t len, char *err, size_t errlen) {
    gguf_ctx_t *g = calloc(1, sizeof *g);
    if (!g) {
        seterr(err, errlen, "out of memory");
        return NULL;
    }
    g->base = buf;
    g->size = len;
    if (!buf && len) {
        seterr(err, errlen, "NULL buffer");
        goto fail;
    }
    if (len > (size_t)INT64_MAX) {
        seterr(err, errlen, "file too large");
        goto fail;
    }
    if (parse(g, err, errlen)) goto fail;
    return g;
fail:
    gguf_close(g);
    return NULL;
}

gguf_ctx_t *gguf_open(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    void *map = NULL;
    size_t len = 0;
    if (fstat(fd, &st) != 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size == 0) {
        seterr(err, errlen, "%s: empty file", path);
        goto fail;
    }
    len = (size_t)st.st_size;
    map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        seterr(err, errlen, "%s: mmap: %s", path, strerror(errno));
        map = NULL;
        goto fail;
    }
    close(fd);
    fd = -1;
    gguf_ctx_t *g = gguf_open_buffer(map, len, err, errlen);
    if (!g) goto fail;
    g->map = map;
    g->map_len = len;
    return g;
fail:
    if (map) munmap(map, len);
    if (fd >= 0) close(fd);
    return NULL;
}

void gguf_close(gguf_ctx_t *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].str_off);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_hash);
    free(g->t_hash);
    if (g->map) munmap(g->map, g->map_len);
    free(g);
}

uint32_t gguf_version(const gguf_ctx_t *g) { return g->version; }
uint32_t gguf_alignment(const gguf_ctx_t *g) { return g->alignment; }
uint64_t gguf_data_offset(const gguf_ctx_t *g) { return g->data_off; }
uint64_t gguf_file_size(const gguf_ctx_t *g) { return g->size; }

/* ---- tensors ------------------------------------------------------------- */

int64_t gguf_n_tensors(const gguf_ctx_t *g) { return g->n_tensors; }

const gguf_tensor_t *gguf_tensor(const gguf_ctx_t *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_ctx_t *g, const char *name) {
    int64_t i = hash_find(g->t_hash, g->t_hcap, tensor_name_of, g, name);
    return i >= 0 ? &g->tensors[i] : NULL;
}

static void format_dims(char *buf, size_t len, uint32_t n_dims, const uint64_t *dims) {
    size_t o = 0;
    o += (size_t)snprintf(buf, len, "[");
    for (uint32_t d = 0; d < n_dims && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%llu", d ? ", " : "", (unsigned long long)dims[d]);
    if (o < len) snprintf(buf + o, len - o, "]");
}

const gguf_tensor_t *gguf_expect_tensor(const gguf_ctx_t *g, const char *name, uint32_t n_dims, const uint64_t *dims,
                                        char *err, size_t errlen) {
    const gguf_tensor_t *t = gguf_find_tensor(g, name);
    if (!t) {
        seterr(err, errlen, "tensor '%s': missing", name);
        return NULL;
    }
    int ok = t->n_dims == n_dims;
    for (uint32_t d = 0; ok && d < n_dims; d++) ok = t->dims[d] == dims[d];
    if (!ok) {
        char have[128], want[128];
        format_dims(have, sizeof have, t->n_dims, t->dims);
        format_dims(want, sizeof want, n_dims > 4 ? 4 : n_dims, dims);
        seterr(err, errlen, "tensor '%s': shape %s, expected %s", name, have, want);
        return NULL;
    }
    return t;
}

/* ---- metadata index (getters and formatting live in gguf_meta.c) ----------- */

int64_t gguf_n_keys(const gguf_ctx_t *g) { return g->n_kv; }

int64_t gguf_find_key(const gguf_ctx_t *g, const char *key) {
    return hash_find(g->kv_hash, g->kv_hcap, kv_name_of, g, key);
}
