/* Check suite for src/model GGUF and quant code.
 *
 * The reader is the daemon's first line of defence against bad model files,
 * so most of this file feeds it broken input: every truncation point of a
 * small file, a table of hand-built corruptions (each must be refused with a
 * message naming the problem), and random byte flips (must never crash).
 * Writer output is read back key by key and tensor by tensor. Quantization
 * tests live in check_gguf_quant.c and join this suite. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/status.h"
#include "model/gguf.h"
#include "ops/ops.h"
#include "testutil.h"

TCase *quant_tcase(void);

/* Opens bytes from an exact-size heap copy, so that any read past the end is
 * caught by sanitizers/valgrind. Returns the context; *copy must be freed
 * after gguf_close. */
static gguf_ctx_t *open_copy(const void *buf, size_t len, void **copy, char *err, size_t errlen) {
    *copy = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(*copy);
    if (len) memcpy(*copy, buf, len);
    err[0] = '\0';
    return gguf_open_buffer(*copy, len, err, errlen);
}

/* ---- writer round trip ---------------------------------------------------- */

static const char *const k_tokens[] = {"<|endoftext|>", "hello", "", "w\xc3\xb6rld"};
static const float k_scores[] = {0.0f, -1.5f, 3.25f, -1e30f};
static const int32_t k_types[] = {3, 1, 1, 6};

/* A small model with every value type the writer offers and one tensor per
 * supported type; tensor data is a byte pattern seeded by the tensor index. */
static gguf_writer_t *make_writer(void) {
    gguf_writer_t *w = gguf_writer_create();
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    ck_assert_int_eq(gguf_writer_set_u32(w, "llama.block_count", 30), 0);
    ck_assert_int_eq(gguf_writer_set_i32(w, "tokenizer.ggml.bos_token_id", -7), 0);
    ck_assert_int_eq(gguf_writer_set_u64(w, "llama.context_length", 8192), 0);
    ck_assert_int_eq(gguf_writer_set_u64(w, "test.huge", UINT64_MAX), 0);
    ck_assert_int_eq(gguf_writer_set_f32(w, "llama.rope.freq_base", 100000.0f), 0);
    ck_assert_int_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1), 0);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", k_tokens, 4), 0);
    ck_assert_int_eq(gguf_writer_set_arr_f32(w, "tokenizer.ggml.scores", k_scores, 4), 0);
    ck_assert_int_eq(gguf_writer_set_arr_i32(w, "tokenizer.ggml.token_type", k_types, 4), 0);
    static const struct {
        const char *name;
        ggml_type_t type;
        uint32_t n_dims;
        uint64_t dims[4];
    } ts[] = {
        {"token_embd.weight", GGML_TYPE_Q8_0, 2, {64, 3}},       {"blk.0.attn_norm.weight", GGML_TYPE_F32, 1, {7}},
        {"blk.0.attn_q.weight", GGML_TYPE_Q4_1, 2, {32, 2}},     {"blk.0.attn_k.weight", GGML_TYPE_Q4_0, 3, {32, 1, 2}},
        {"blk.0.attn_v.weight", GGML_TYPE_F16, 4, {3, 2, 1, 2}}, {"blk.0.ffn_up.weight", GGML_TYPE_BF16, 1, {5}},
        {"blk.0.ffn_gate.weight", GGML_TYPE_Q4_K, 2, {256, 2}},  {"blk.0.ffn_down.weight", GGML_TYPE_Q6_K, 1, {256}},
    };
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        uint64_t n = 1;
        for (uint32_t d = 0; d < ts[i].n_dims; d++) n *= ts[i].dims[d];
        size_t nb = ggml_row_size(ts[i].type, n);
        uint8_t *data = malloc(nb);
        for (size_t b = 0; b < nb; b++) data[b] = (uint8_t)(b * 7 + i * 31);
        ck_assert_int_eq(gguf_writer_add_tensor(w, ts[i].name, ts[i].n_dims, ts[i].dims, ts[i].type, data, nb), 0);
        free(data);
    }
    return w;
}

static size_t make_good(uint8_t **buf) {
    gguf_writer_t *w = make_writer();
    size_t len;
    ck_assert_int_eq(gguf_writer_to_buffer(w, (void **)buf, &len), 0);
    gguf_writer_destroy(w);
    return len;
}

static void check_str(gguf_str_t s, const char *want) {
    ck_assert_uint_eq(s.len, strlen(want));
    ck_assert(memcmp(s.ptr, want, s.len) == 0);
}

START_TEST(test_roundtrip) {
    char path[] = "/tmp/check_gguf_XXXXXX", err[256];
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    gguf_writer_t *w = make_writer();
    ck_assert_int_eq(gguf_writer_write(w, path), 0);
    gguf_writer_destroy(w);
    gguf_ctx_t *g = gguf_open(path, err, sizeof err);
    ck_assert_msg(g != NULL, "open failed: %s", err);
    unlink(path);

    ck_assert_uint_eq(gguf_version(g), 3);
    ck_assert_uint_eq(gguf_alignment(g), 32);
    ck_assert_int_eq(gguf_n_keys(g), 10);
    check_str(gguf_key_name(g, 0), "general.architecture");
    ck_assert_int_eq(gguf_key_type(g, 1), GGUF_T_U32);
    ck_assert_int_eq(gguf_find_key(g, "tokenizer.ggml.scores"), 8);
    ck_assert_int_eq(gguf_find_key(g, "tokenizer.ggml"), -1);

    gguf_str_t s;
    ck_assert_int_eq(gguf_get_str(g, "general.architecture", &s), 0);
    check_str(s, "llama");
    // Integers convert across widths when they fit, and only then.
    uint32_t u;
    int64_t i64;
    ck_assert_int_eq(gguf_get_u32(g, "llama.block_count", &u), 0);
    ck_assert_uint_eq(u, 30);
    ck_assert_int_eq(gguf_get_i64(g, "llama.block_count", &i64), 0);
    ck_assert_int_eq(i64, 30);
    ck_assert_int_eq(gguf_get_u32(g, "llama.context_length", &u), 0);
    ck_assert_uint_eq(u, 8192);
    ck_assert_int_eq(gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &i64), 0);
    ck_assert_int_eq(i64, -7);
    ck_assert_int_eq(gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), LC_ERANGE);
    ck_assert_int_eq(gguf_get_i64(g, "test.huge", &i64), LC_ERANGE);
    ck_assert_int_eq(gguf_get_u32(g, "test.huge", &u), LC_ERANGE);
    ck_assert_int_eq(gguf_get_u32(g, "general.architecture", &u), LC_EFORMAT);
    ck_assert_int_eq(gguf_get_u32(g, "llama.rope.freq_base", &u), LC_EFORMAT);
    ck_assert_int_eq(gguf_get_u32(g, "no.such.key", &u), LC_ENOTFOUND);
    ck_assert_int_eq(gguf_get_str(g, "llama.block_count", &s), LC_EFORMAT);
    float f;
    ck_assert_int_eq(gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    ck_assert_float_eq(f, 100000.0f);
    ck_assert_int_eq(gguf_get_f32(g, "llama.block_count", &f), 0);
    ck_assert_float_eq(f, 30.0f);
    int b = 0;
    ck_assert_int_eq(gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    ck_assert_int_eq(b, 1);

    gguf_vtype_t et;
    uint64_t count;
    ck_assert_int_eq(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &count), 0);
    ck_assert_int_eq(et, GGUF_T_STRING);
    ck_assert_uint_eq(count, 4);
    for (uint64_t k = 0; k < 4; k++) {
        ck_assert_int_eq(gguf_arr_str(g, "tokenizer.ggml.tokens", k, &s), 0);
        check_str(s, k_tokens[k]);
        ck_assert_int_eq(gguf_arr_f32(g, "tokenizer.ggml.scores", k, &f), 0);
        ck_assert_float_eq(f, k_scores[k]);
        ck_assert_int_eq(gguf_arr_i64(g, "tokenizer.ggml.token_type", k, &i64), 0);
        ck_assert_int_eq(i64, k_types[k]);
    }
    ck_assert_int_eq(gguf_arr_str(g, "tokenizer.ggml.tokens", 4, &s), LC_ERANGE);
    ck_assert_int_eq(gguf_arr_f32(g, "tokenizer.ggml.tokens", 0, &f), LC_EFORMAT);
    ck_assert_int_eq(gguf_arr_i64(g, "tokenizer.ggml.scores", 0, &i64), LC_EFORMAT);
    ck_assert_int_eq(gguf_arr_str(g, "llama.block_count", 0, &s), LC_EFORMAT);
    ck_assert_int_eq(gguf_get_arr(g, "llama.block_count", &et, &count), LC_EFORMAT);

    char v[256];
    gguf_format_value(g, gguf_find_key(g, "llama.block_count"), v, sizeof v);
    ck_assert_str_eq(v, "30");
    gguf_format_value(g, gguf_find_key(g, "general.architecture"), v, sizeof v);
    ck_assert_str_eq(v, "\"llama\"");
    gguf_format_value(g, gguf_find_key(g, "tokenizer.ggml.bos_token_id"), v, sizeof v);
    ck_assert_str_eq(v, "-7");
    gguf_format_value(g, gguf_find_key(g, "tokenizer.ggml.add_bos_token"), v, sizeof v);
    ck_assert_str_eq(v, "true");
    gguf_format_value(g, gguf_find_key(g, "tokenizer.ggml.token_type"), v, sizeof v);
    ck_assert_str_eq(v, "[i32 x 4] 3, 1, 1, 6");
    gguf_format_value(g, gguf_find_key(g, "tokenizer.ggml.tokens"), v, sizeof v);
    ck_assert_str_eq(v, "[string x 4] \"<|endoftext|>\", \"hello\", \"\", \"w\xc3\xb6rld\"");
    gguf_format_value(g, gguf_find_key(g, "tokenizer.ggml.tokens"), v, 12); // truncation stays terminated
    ck_assert_uint_eq(strlen(v), 11);

    ck_assert_int_eq(gguf_n_tensors(g), 8);
    const gguf_tensor_t *t = gguf_find_tensor(g, "blk.0.attn_v.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_ptr_eq(t, gguf_tensor(g, 4));
    ck_assert_int_eq(t->type, GGML_TYPE_F16);
    ck_assert_uint_eq(t->n_dims, 4);
    ck_assert_uint_eq(t->dims[0], 3);
    ck_assert_uint_eq(t->dims[3], 2);
    ck_assert_uint_eq(t->n_elements, 12);
    ck_assert_uint_eq(t->nbytes, 24);
    for (int64_t k = 0; k < gguf_n_tensors(g); k++) {
        t = gguf_tensor(g, k);
        ck_assert_uint_eq(t->offset % 32, 0);
        ck_assert_uint_eq(t->nbytes, ggml_row_size(t->type, t->n_elements));
        const uint8_t *d = t->data;
        for (uint64_t x = 0; x < t->nbytes; x++) ck_assert_uint_eq(d[x], (uint8_t)(x * 7 + (uint64_t)k * 31));
    }
    t = gguf_find_tensor(g, "token_embd.weight");
    ck_assert_uint_eq(t->nbytes, 2 * 3 * 34);
    ck_assert_uint_eq(t->n_dims, 2);
    ck_assert_uint_eq(t->dims[2], 1);
    ck_assert_ptr_null(gguf_find_tensor(g, "output.weight"));
    ck_assert_ptr_null(gguf_tensor(g, 8));

    uint64_t want[2] = {64, 3}, wrong[2] = {3, 64};
    ck_assert_ptr_eq(gguf_expect_tensor(g, "token_embd.weight", 2, want, err, sizeof err), t);
    ck_assert_ptr_null(gguf_expect_tensor(g, "token_embd.weight", 2, wrong, err, sizeof err));
    ck_assert_str_eq(err, "tensor 'token_embd.weight': shape [64, 3], expected [3, 64]");
    ck_assert_ptr_null(gguf_expect_tensor(g, "output.weight", 2, want, err, sizeof err));
    ck_assert_str_eq(err, "tensor 'output.weight': missing");
    gguf_close(g);
}
END_TEST

START_TEST(test_writer_rejects) {
    gguf_writer_t *w = gguf_writer_create();
    uint8_t data[64] = {0};
    uint64_t d32[1] = {32}, d48[1] = {48}, d5[5] = {1, 1, 1, 1, 1}, d0[2] = {32, 0};
    ck_assert_int_eq(gguf_writer_set_u32(w, "a", 1), 0);
    ck_assert_int_eq(gguf_writer_set_str(w, "a", "x"), LC_EINVAL); // duplicate key
    ck_assert_int_eq(gguf_writer_set_u32(w, "", 1), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "t", 1, d32, GGML_TYPE_Q8_0, data, 34), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "t", 1, d32, GGML_TYPE_Q8_0, data, 34), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", 1, d32, GGML_TYPE_Q8_0, data, 33), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", 1, d48, GGML_TYPE_Q8_0, data, 51), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", 5, d5, GGML_TYPE_F32, data, 4), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", 2, d0, GGML_TYPE_F32, data, 0), LC_EINVAL);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", 1, d32, (ggml_type_t)7, data, 24), LC_EINVAL); // Q5_1: not ours
    gguf_writer_destroy(w);
}
END_TEST

START_TEST(test_writer_alignment) {
    gguf_writer_t *w = gguf_writer_create();
    uint8_t data[40] = {0};
    uint64_t d10[1] = {10};
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 64), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "a", 1, d10, GGML_TYPE_F32, data, 40), 0);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "b", 1, d10, GGML_TYPE_F32, data, 40), 0);
    void *buf, *copy;
    size_t len;
    char err[256];
    ck_assert_int_eq(gguf_writer_to_buffer(w, &buf, &len), 0);
    gguf_writer_destroy(w);
    gguf_ctx_t *g = open_copy(buf, len, &copy, err, sizeof err);
    ck_assert_msg(g != NULL, "%s", err);
    ck_assert_uint_eq(gguf_alignment(g), 64);
    ck_assert_uint_eq(gguf_data_offset(g) % 64, 0);
    ck_assert_uint_eq(gguf_find_tensor(g, "b")->offset, 64);
    gguf_close(g);
    free(copy);
    free(buf);
}
END_TEST

/* ---- truncation and random damage ------------------------------------------ */

START_TEST(test_truncation) {
    uint8_t *good;
    size_t len = make_good(&good);
    char err[256];
    void *copy;
    gguf_ctx_t *g = open_copy(good, len, &copy, err, sizeof err);
    ck_assert_msg(g != NULL, "%s", err);
    // Only padding after the last tensor's data may be cut.
    uint64_t end = 0;
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        if (t->offset + t->nbytes > end) end = t->offset + t->nbytes;
    }
    end += gguf_data_offset(g);
    gguf_close(g);
    free(copy);
    ck_assert_uint_lt(end, len); // the padding case is exercised too
    for (size_t k = 0; k < len; k++) {
        g = open_copy(good, k, &copy, err, sizeof err);
        if (k < end) {
            ck_assert_msg(g == NULL, "truncated at %zu of %zu bytes but opened", k, len);
            ck_assert_msg(err[0] != '\0', "no message at %zu", k);
        } else {
            ck_assert_msg(g != NULL, "cut padding at %zu refused: %s", k, err);
        }
        gguf_close(g);
        free(copy);
    }
    g = open_copy(good, 20, &copy, err, sizeof err);
    ck_assert_ptr_null(g);
    ck_assert_msg(strstr(err, "truncated") != NULL, "%s", err);
    free(copy);
    free(good);
}
END_TEST

/* Touches everything a context exposes; with sanitizers this proves the
 * pointers it hands out stay inside the buffer. */
static unsigned walk(const gguf_ctx_t *g, const uint8_t *buf, size_t len) {
    unsigned sum = 0;
    char v[128];
    for (int64_t i = 0; i < gguf_n_keys(g); i++) {
        gguf_format_value(g, i, v, sizeof v);
        sum += (unsigned char)v[0];
    }
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_t *t = gguf_tensor(g, i);
        const uint8_t *d = t->data;
        ck_assert(d >= buf && t->nbytes <= len && d - buf <= (ptrdiff_t)(len - t->nbytes));
        sum += d[0] + d[t->nbytes - 1];
    }
    return sum;
}

START_TEST(test_random_damage) {
    uint8_t *good;
    size_t len = make_good(&good);
    uint8_t *bad = malloc(len);
    char err[256];
    gguf_ctx_t *g0 = gguf_open_buffer(good, len, err, sizeof err);
    ck_assert_ptr_nonnull(g0);
    size_t meta_end = (size_t)gguf_data_offset(g0);
    gguf_close(g0);
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    int opened = 0;
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(bad, good, len);
        int flips = 1 + iter % 4;
        for (int f = 0; f < flips; f++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(seed >> 33) % len;
            // Aim most damage at the header and infos, where it matters.
            if (iter % 3) at %= meta_end;
            bad[at] = (uint8_t)(seed >> 17);
        }
        gguf_ctx_t *g = gguf_open_buffer(bad, len, err, sizeof err);
        if (g) {
            opened++;
            walk(g, bad, len);
            gguf_close(g);
        } else {
            ck_assert(err[0] != '\0');
        }
    }
    ck_assert_int_gt(opened, 0); // flips inside tensor data must still load
    free(bad);
    free(good);
}
END_TEST

/* ---- hand-built corrupt files ------------------------------------------------ */

/* Which field of the reference file a case overrides. */
typedef enum {
    F_NONE,
    F_MAGIC,
    F_VERSION,
    F_NTENSORS,
    F_NKV,
    F_KEYLEN,
    F_STRLEN,
    F_VTYPE,
    F_ELEMTYPE,
    F_ARRCOUNT,
    F_BOOL,
    F_DUPKEY,
    F_ALIGN,
    F_ALIGN_STR,
    F_NAMELEN,
    F_NDIMS,
    F_DIM0,
    F_DIM1,
    F_TTYPE,
    F_OFFSET,
    F_DUPNAME,
} field_t;

typedef struct {
    uint8_t p[4096];
    size_t n;
} raw_t;

static void raw_bytes(raw_t *r, const void *b, size_t n) {
    ck_assert_uint_le(r->n + n, sizeof r->p);
    memcpy(r->p + r->n, b, n);
    r->n += n;
}
static void raw_u32(raw_t *r, uint32_t v) {
    for (int i = 0; i < 4; i++) r->p[r->n++] = (uint8_t)(v >> (8 * i));
}
static void raw_u64(raw_t *r, uint64_t v) {
    raw_u32(r, (uint32_t)v);
    raw_u32(r, (uint32_t)(v >> 32));
}
static void raw_str(raw_t *r, const char *s) {
    raw_u64(r, strlen(s));
    raw_bytes(r, s, strlen(s));
}

/* The reference file, written field by field independently of the writer:
 * 4 or 5 keys (string, u32, string array, bool, optional alignment) and two
 * tensors, "a.weight" F32 [32] at 0 and "b.weight" Q4_0 [64, 2] at 128.
 * Field f takes value v. */
static void build(raw_t *r, field_t f, uint64_t v) {
#define OR(field, dflt) (f == (field) ? v : (uint64_t)(dflt))
    r->n = 0;
    int has_align = f == F_ALIGN || f == F_ALIGN_STR;
    raw_u32(r, (uint32_t)OR(F_MAGIC, 0x46554747u));
    raw_u32(r, (uint32_t)OR(F_VERSION, 3));
    raw_u64(r, OR(F_NTENSORS, 2));
    raw_u64(r, OR(F_NKV, 4 + has_align));
    if (f == F_KEYLEN) {
        raw_u64(r, v);
        raw_bytes(r, "general.architecture", 20);
    } else {
        raw_str(r, "general.architecture");
    }
    raw_u32(r, GGUF_T_STRING);
    raw_u64(r, OR(F_STRLEN, 5));
    raw_bytes(r, "llama", 5);
    raw_str(r, "llama.block_count");
    raw_u32(r, (uint32_t)OR(F_VTYPE, GGUF_T_U32));
    raw_u32(r, 30);
    raw_str(r, "tokenizer.ggml.tokens");
    raw_u32(r, GGUF_T_ARRAY);
    raw_u32(r, (uint32_t)OR(F_ELEMTYPE, GGUF_T_STRING));
    raw_u64(r, OR(F_ARRCOUNT, 2));
    raw_str(r, "a");
    raw_str(r, "bc");
    raw_str(r, f == F_DUPKEY ? "llama.block_count" : "general.flag");
    raw_u32(r, GGUF_T_BOOL);
    uint8_t bv = (uint8_t)OR(F_BOOL, 1);
    raw_bytes(r, &bv, 1);
    if (has_align) {
        raw_str(r, "general.alignment");
        if (f == F_ALIGN_STR) {
            raw_u32(r, GGUF_T_STRING);
            raw_str(r, "32");
        } else {
            raw_u32(r, GGUF_T_U32);
            raw_u32(r, (uint32_t)v);
        }
    }
    raw_str(r, "a.weight");
    raw_u32(r, 1);
    raw_u64(r, 32);
    raw_u32(r, GGML_TYPE_F32);
    raw_u64(r, 0);
    if (f == F_NAMELEN) {
        raw_u64(r, v);
        raw_bytes(r, "b.weight", 8);
    } else {
        raw_str(r, f == F_DUPNAME ? "a.weight" : "b.weight");
    }
    uint64_t nd = OR(F_NDIMS, 2);
    raw_u32(r, (uint32_t)nd);
    for (uint64_t d = 0; d < (nd > 4 ? 2 : nd); d++) raw_u64(r, d == 0 ? OR(F_DIM0, 64) : d == 1 ? OR(F_DIM1, 2) : 1);
    raw_u32(r, (uint32_t)OR(F_TTYPE, GGML_TYPE_Q4_0));
    raw_u64(r, OR(F_OFFSET, 128));
    size_t align = f == F_ALIGN && v >= 32 && v <= 256 && !(v & (v - 1)) ? (size_t)v : 32;
    while (r->n % align) r->p[r->n++] = 0;
    for (int i = 0; i < 128 + 72; i++) r->p[r->n++] = (uint8_t)i;
#undef OR
}

static const struct {
    field_t f;
    uint64_t v;
    const char *expect; // NULL: must open
} k_cases[] = {
    {F_NONE, 0, NULL},
    {F_ALIGN, 32, NULL},
    {F_ALIGN, 64, NULL},
    {F_MAGIC, 0x46554746u, "bad magic 0x46554746"},
    {F_MAGIC, 0, "not a GGUF file"},
    {F_VERSION, 1, "unsupported GGUF version 1"},
    {F_VERSION, 4, "unsupported GGUF version 4"},
    {F_NTENSORS, 1ull << 40, "tensor_count 1099511627776 is impossible"},
    {F_NTENSORS, UINT64_MAX, "tensor_count 18446744073709551615 is impossible"},
    {F_NTENSORS, 3, "tensor info 2: "},
    {F_NKV, 1ull << 40, "kv_count 1099511627776 is impossible"},
    {F_NKV, 0, "tensor 'general.architecture': n_dims 8"}, // keys misread as tensor infos
    {F_KEYLEN, 1ull << 40, "metadata entry 0: key length 1099511627776 exceeds the limit"},
    {F_KEYLEN, 4000, "metadata entry 0: key length 4000 exceeds the"},
    {F_KEYLEN, 0, "metadata entry 0: empty key"},
    {F_STRLEN, UINT64_MAX, "metadata key 'general.architecture': string length 18446744073709551615 exceeds"},
    {F_VTYPE, 13, "metadata key 'llama.block_count': unknown value type 13"},
    {F_VTYPE, 0xFFFFFFFFu, "unknown value type 4294967295"},
    {F_ELEMTYPE, GGUF_T_ARRAY, "metadata key 'tokenizer.ggml.tokens': nested arrays are not supported"},
    {F_ELEMTYPE, 77, "unknown array element type 77"},
    {F_ARRCOUNT, 1ull << 60, "array of 1152921504606846976 strings exceeds"},
    {F_ARRCOUNT, 3, "metadata entry 3: key length"},          // reads the next key as a string
    {F_ELEMTYPE, GGUF_T_U64, "metadata entry 3: key length"}, // strings reread as two u64s
    {F_BOOL, 2, "metadata key 'general.flag': bool value 2 is neither 0 nor 1"},
    {F_DUPKEY, 0, "duplicate metadata key 'llama.block_count'"},
    {F_ALIGN, 0, "general.alignment 0 is not a power of two"},
    {F_ALIGN, 48, "general.alignment 48 is not a power of two"},
    {F_ALIGN, 1u << 31, "general.alignment 2147483648 is not a power of two"},
    {F_ALIGN_STR, 0, "general.alignment \"32\" is not a power of two"},
    {F_NAMELEN, 0, "tensor info 1: empty name"},
    {F_NAMELEN, 1ull << 62, "tensor info 1: name length 4611686018427387904 exceeds the limit"},
    {F_NDIMS, 0, "tensor 'b.weight': n_dims 0 (must be 1..4)"},
    {F_NDIMS, 5, "tensor 'b.weight': n_dims 5 (must be 1..4)"},
    {F_DIM0, 0, "tensor 'b.weight': dims[0] = 0 is out of range"},
    {F_DIM1, 0, "tensor 'b.weight': dims[1] = 0 is out of range"},
    {F_DIM1, 1ull << 63, "dims[1] = 9223372036854775808 is out of range"},
    {F_DIM1, 1ull << 58, "tensor 'b.weight': element count overflows at dims[1] = 288230376151711744"},
    {F_DIM1, 1ull << 40, "tensor 'b.weight': data [offset "},
    {F_DIM0, 48, "tensor 'b.weight': dims[0] = 48 is not a multiple of the Q4_0 block size 32"},
    {F_TTYPE, 99, "tensor 'b.weight': unknown or unsupported tensor type 99"},
    {F_TTYPE, 7, "unknown or unsupported tensor type 7"}, // Q5_1: real ggml type, not ours
    {F_TTYPE, GGML_TYPE_Q4_K, "dims[0] = 64 is not a multiple of the Q4_K block size 256"},
    {F_OFFSET, 100, "tensor 'b.weight': offset 100 is not a multiple of the alignment 32"},
    {F_OFFSET, 96, "tensors 'a.weight' and 'b.weight' overlap"},
    {F_OFFSET, 160, "tensor 'b.weight': data [offset "},
    {F_OFFSET, UINT64_MAX - 31, "extends past end of file (size "},
    {F_DUPNAME, 0, "duplicate tensor name 'a.weight'"},
};

START_TEST(test_corrupt_table) {
    raw_t r;
    char err[512];
    void *copy;
    build(&r, F_NONE, 0);
    size_t good_len = r.n;
    for (size_t i = 0; i < sizeof k_cases / sizeof k_cases[0]; i++) {
        build(&r, k_cases[i].f, k_cases[i].v);
        gguf_ctx_t *g = open_copy(r.p, r.n, &copy, err, sizeof err);
        if (!k_cases[i].expect) {
            ck_assert_msg(g != NULL, "case %zu refused: %s", i, err);
            ck_assert_int_eq(gguf_n_tensors(g), 2);
            const gguf_tensor_t *b = gguf_find_tensor(g, "b.weight");
            ck_assert_uint_eq(b->nbytes, 72);
            ck_assert_uint_eq(((const uint8_t *)b->data)[0], 128);
        } else {
            ck_assert_msg(g == NULL, "case %zu (%s) was accepted", i, k_cases[i].expect);
            ck_assert_msg(strstr(err, k_cases[i].expect) != NULL, "case %zu: want \"%s\", got \"%s\"", i,
                          k_cases[i].expect, err);
        }
        gguf_close(g);
        free(copy);
    }
    // The full message format for data past the end, numbers included.
    build(&r, F_OFFSET, 160);
    gguf_ctx_t *g = open_copy(r.p, r.n, &copy, err, sizeof err);
    ck_assert_ptr_null(g);
    char want[200];
    snprintf(want, sizeof want, "tensor 'b.weight': data [offset %zu, 72 bytes] extends past end of file (size %zu)",
             good_len - 200 + 160, good_len);
    ck_assert_str_eq(err, want);
    free(copy);
    // Version 2 has the same layout.
    build(&r, F_VERSION, 2);
    g = open_copy(r.p, r.n, &copy, err, sizeof err);
    ck_assert_msg(g != NULL, "%s", err);
    ck_assert_uint_eq(gguf_version(g), 2);
    gguf_close(g);
    free(copy);
}
END_TEST

START_TEST(test_open_errors) {
    char err[512];
    ck_assert_ptr_null(gguf_open("/nonexistent/model.gguf", err, sizeof err));
    ck_assert_msg(strstr(err, "/nonexistent/model.gguf") != NULL, "%s", err);
    ck_assert_ptr_null(gguf_open("/tmp", err, sizeof err));
    ck_assert_msg(strstr(err, "not a regular file") != NULL, "%s", err);
    char path[] = "/tmp/check_gguf_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_ptr_null(gguf_open(path, err, sizeof err));
    ck_assert_msg(strstr(err, "empty file") != NULL, "%s", err);
    unlink(path);
    ck_assert_ptr_null(gguf_open_buffer(NULL, 0, NULL, 0)); // no message buffer is fine
}
END_TEST

/* ---- the real default model (left out, and the program SKIPs, when absent) ------- */
static const char *g_model_path; // tu_model_path(), set in main()

START_TEST(test_real_model) {
    const char *path = g_model_path;
    char err[512], name[64];
    gguf_ctx_t *g = gguf_open(path, err, sizeof err);
    ck_assert_msg(g != NULL, "%s: %s", path, err);
    gguf_str_t s;
    uint32_t u;
    float f;
    ck_assert_int_eq(gguf_get_str(g, "general.architecture", &s), 0);
    check_str(s, "llama");
    static const struct {
        const char *key;
        uint32_t v;
    } ints[] = {
        {"llama.block_count", 30},          {"llama.embedding_length", 576},      {"llama.feed_forward_length", 1536},
        {"llama.attention.head_count", 9},  {"llama.attention.head_count_kv", 3}, {"llama.context_length", 8192},
        {"llama.rope.dimension_count", 64}, {"tokenizer.ggml.bos_token_id", 1},   {"tokenizer.ggml.eos_token_id", 2},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        ck_assert_msg(gguf_get_u32(g, ints[i].key, &u) == 0, "%s", ints[i].key);
        ck_assert_uint_eq(u, ints[i].v);
    }
    ck_assert_int_eq(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), 0);
    ck_assert_float_eq_tol(f, 1e-5f, 1e-9f);
    ck_assert_int_eq(gguf_get_f32(g, "llama.rope.freq_base", &f), 0);
    ck_assert_float_eq(f, 100000.0f);
    ck_assert_int_eq(gguf_get_str(g, "tokenizer.ggml.model", &s), 0);
    check_str(s, "gpt2");
    uint64_t count;
    ck_assert_int_eq(gguf_get_arr(g, "tokenizer.ggml.tokens", NULL, &count), 0);
    ck_assert_uint_eq(count, 49152);
    ck_assert_int_eq(gguf_arr_str(g, "tokenizer.ggml.tokens", 1, &s), 0);
    check_str(s, "<|im_start|>");

    ck_assert_int_eq(gguf_n_tensors(g), 272);
    ck_assert_ptr_null(gguf_find_tensor(g, "output.weight")); // tied embeddings
    uint64_t embd[2] = {576, 49152}, norm[1] = {576};
    const gguf_tensor_t *t = gguf_expect_tensor(g, "token_embd.weight", 2, embd, err, sizeof err);
    ck_assert_msg(t != NULL, "%s", err);
    ck_assert_int_eq(t->type, GGML_TYPE_Q8_0);
    ck_assert_int_eq(gguf_expect_tensor(g, "output_norm.weight", 1, norm, err, sizeof err)->type, GGML_TYPE_F32);
    static const char *const mats[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (int l = 0; l < 30; l++) {
        for (size_t m = 0; m < 7; m++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, mats[m]);
            ck_assert_msg(gguf_find_tensor(g, name) && gguf_find_tensor(g, name)->type == GGML_TYPE_Q4_1, "%s", name);
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        ck_assert_int_eq(gguf_expect_tensor(g, name, 1, norm, err, sizeof err)->type, GGML_TYPE_F32);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        ck_assert_int_eq(gguf_expect_tensor(g, name, 1, norm, err, sizeof err)->type, GGML_TYPE_F32);
    }
    // Values and sums from the gguf Python package's dequantizer.
    static const struct {
        const char *name;
        float first[3], last;
        double sum;
    } ref[] = {
        {"token_embd.weight",
         {-0.10654449462890625f, 0.032978057861328125f, 0.048198699951171875f},
         -0.0417022705078125f,
         -15353.04449415207},
        {"blk.0.attn_q.weight",
         {-0.0963134765625f, 0.1573486328125f, -0.0963134765625f},
         -0.255859375f,
         59.22322082519531},
        {"blk.29.ffn_down.weight",
         {-0.2733154296875f, 0.186279296875f, 0.186279296875f},
         0.056640625f,
         49.83570861816406},
        {"output_norm.weight", {1.7578125f, 1.8203125f, 1.78125f}, 1.984375f, 1038.33203125},
    };
    for (size_t i = 0; i < sizeof ref / sizeof ref[0]; i++) {
        t = gguf_find_tensor(g, ref[i].name);
        float *y = malloc(t->n_elements * sizeof *y);
        ck_assert_int_eq(ops_w_dequantize((int)t->type, t->data, y, t->n_elements), 0);
        for (int k = 0; k < 3; k++) ck_assert_float_eq(y[k], ref[i].first[k]);
        ck_assert_float_eq(y[t->n_elements - 1], ref[i].last);
        double sum = 0;
        for (uint64_t k = 0; k < t->n_elements; k++) sum += y[k];
        ck_assert_double_eq_tol(sum, ref[i].sum, 1e-6 * fabs(ref[i].sum) + 1e-3);
        free(y);
    }
    gguf_close(g);
}
END_TEST

int main(void) {
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_writer_alignment);
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_random_damage);
    tcase_add_test(tc, test_corrupt_table);
    tcase_add_test(tc, test_open_errors);
    if ((g_model_path = tu_model_path())) tcase_add_test(tc, test_real_model);
    suite_add_tcase(s, tc);
    suite_add_tcase(s, quant_tcase());
    return tu_run(s);
}
