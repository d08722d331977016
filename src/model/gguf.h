/* GGUF reader: maps a file (or takes a buffer) and validates every header
 * field, metadata entry and tensor record against its size before anything
 * else reads it. A malformed file is refused with a message that names what is
 * wrong; nothing past gguf_open trusts the file again.
 *
 * Also a minimal writer, used by `lacuna mkmodel` to produce test models. */
#ifndef LC_GGUF_H
#define LC_GGUF_H

#include <stddef.h>
#include <stdint.h>

/* ggml tensor type ids (subset we load). */
typedef enum {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q4_1 = 3,
    GGML_TYPE_Q5_0 = 6,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_Q4_K = 12,
    GGML_TYPE_Q6_K = 14,
    GGML_TYPE_BF16 = 30,
} ggml_type_t;

/* GGUF metadata value types. */
typedef enum {
    GGUF_T_U8 = 0,
    GGUF_T_I8 = 1,
    GGUF_T_U16 = 2,
    GGUF_T_I16 = 3,
    GGUF_T_U32 = 4,
    GGUF_T_I32 = 5,
    GGUF_T_F32 = 6,
    GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8,
    GGUF_T_ARRAY = 9,
    GGUF_T_U64 = 10,
    GGUF_T_I64 = 11,
    GGUF_T_F64 = 12,
} gguf_vtype_t;

/* A string inside the mapped file: not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} gguf_str_t;

typedef struct {
    gguf_str_t name;
    uint32_t n_dims;  // 1..4
    uint64_t dims[4]; // dims[0] is contiguous; unused dims are 1
    ggml_type_t type;
    uint64_t n_elements; // product of dims
    uint64_t nbytes;     // bytes of data in the file
    const void *data;    // points into the mapping; valid until gguf_close
    uint64_t offset;     // of data, relative to the data section
} gguf_tensor_t;

typedef struct gguf_ctx gguf_ctx_t;

/* Opens and validates a GGUF file (mmap, read-only). Returns NULL and writes a
 * message into err (if non-NULL) on any problem. */
gguf_ctx_t *gguf_open(const char *path, char *err, size_t errlen);
/* Same over a caller-owned buffer that must outlive the context (fuzzing). */
gguf_ctx_t *gguf_open_buffer(const void *buf, size_t len, char *err, size_t errlen);
void gguf_close(gguf_ctx_t *g);

uint32_t gguf_version(const gguf_ctx_t *g);
/* Alignment of tensor data (general.alignment, default 32). */
uint32_t gguf_alignment(const gguf_ctx_t *g);
/* File offset where the tensor data section starts, and the file size. */
uint64_t gguf_data_offset(const gguf_ctx_t *g);
uint64_t gguf_file_size(const gguf_ctx_t *g);

/* ---- metadata ------------------------------------------------------------ */
/* Index of a key, or -1. */
int64_t gguf_find_key(const gguf_ctx_t *g, const char *key);
int64_t gguf_n_keys(const gguf_ctx_t *g);
gguf_str_t gguf_key_name(const gguf_ctx_t *g, int64_t i);
gguf_vtype_t gguf_key_type(const gguf_ctx_t *g, int64_t i);
/* Typed getters return 0 on success, LC_ENOTFOUND if missing, LC_EFORMAT if the
 * stored type cannot convert, LC_ERANGE if an integer does not fit the
 * requested width (any integer width converts to any other if the value fits).
 * get_f32 also accepts f64 and integers; get_bool also accepts integers. */
int gguf_get_i64(const gguf_ctx_t *g, const char *key, int64_t *out);
int gguf_get_u32(const gguf_ctx_t *g, const char *key, uint32_t *out);
int gguf_get_f32(const gguf_ctx_t *g, const char *key, float *out);
int gguf_get_bool(const gguf_ctx_t *g, const char *key, int *out);
int gguf_get_str(const gguf_ctx_t *g, const char *key, gguf_str_t *out);
/* Arrays: element type and count; element access by index (strings or numbers).
 * Element getters return LC_ERANGE for i >= count, LC_EFORMAT for a wrong
 * element type; arr_i64 converts any integer element, arr_f32 any number. */
int gguf_get_arr(const gguf_ctx_t *g, const char *key, gguf_vtype_t *elem_type, uint64_t *count);
int gguf_arr_str(const gguf_ctx_t *g, const char *key, uint64_t i, gguf_str_t *out);
int gguf_arr_f32(const gguf_ctx_t *g, const char *key, uint64_t i, float *out);
int gguf_arr_i64(const gguf_ctx_t *g, const char *key, uint64_t i, int64_t *out);
/* Name of a value type ("u32", "string", "array"), or "?". */
const char *gguf_vtype_name(uint32_t t);
/* Human-readable rendering of a value (arrays summarised), for `lacuna inspect`. */
void gguf_format_value(const gguf_ctx_t *g, int64_t i, char *buf, size_t len);

/* ---- tensors ------------------------------------------------------------- */
int64_t gguf_n_tensors(const gguf_ctx_t *g);
const gguf_tensor_t *gguf_tensor(const gguf_ctx_t *g, int64_t i);
/* Tensor by name, or NULL. */
const gguf_tensor_t *gguf_find_tensor(const gguf_ctx_t *g, const char *name);
/* For the model loader: the tensor `name` with exactly the given shape
 * (n_dims dims; dims[0] contiguous). Returns NULL and writes "tensor 'x':
 * missing" or "tensor 'x': shape [a, b], expected [c, d]" into err otherwise. */
const gguf_tensor_t *gguf_expect_tensor(const gguf_ctx_t *g, const char *name, uint32_t n_dims, const uint64_t *dims,
                                        char *err, size_t errlen);

/* ---- types --------------------------------------------------------------- */
/* Name ("Q4_1"), or NULL for an unknown type. */
const char *ggml_type_name(uint32_t type);
/* Weights per block and bytes per block; 0 for unknown types. */
uint32_t ggml_block_size(uint32_t type);
uint32_t ggml_type_size(uint32_t type);
/* Bytes of n weights of `type`; 0 if the type is unknown or n is not a
 * multiple of its block size. */
uint64_t ggml_row_size(uint32_t type, uint64_t n);

/* ---- writer (tests and mkmodel) ------------------------------------------ */
/* Builds a GGUF v3 file in memory. Tensor data is aligned to 32 bytes, or to a
 * general.alignment set with gguf_writer_set_u32 (a power of two). Setters
 * return 0, LC_ENOMEM, or LC_EINVAL (duplicate key or tensor name, bad
 * shape/type/size). Not thread-safe. */
typedef struct gguf_writer gguf_writer_t;
/* Returns NULL on OOM; the caller frees with gguf_writer_destroy. */
gguf_writer_t *gguf_writer_create(void);
void gguf_writer_destroy(gguf_writer_t *w);
int gguf_writer_set_u32(gguf_writer_t *w, const char *key, uint32_t v);
int gguf_writer_set_i32(gguf_writer_t *w, const char *key, int32_t v);
int gguf_writer_set_f32(gguf_writer_t *w, const char *key, float v);
int gguf_writer_set_bool(gguf_writer_t *w, const char *key, int v);
int gguf_writer_set_str(gguf_writer_t *w, const char *key, const char *v);
int gguf_writer_set_arr_str(gguf_writer_t *w, const char *key, const char *const *v, uint64_t n);
int gguf_writer_set_arr_f32(gguf_writer_t *w, const char *key, const float *v, uint64_t n);
int gguf_writer_set_arr_i32(gguf_writer_t *w, const char *key, const int32_t *v, uint64_t n);
/* Adds a tensor; data (already in `type` layout, nbytes long) is copied. */
int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t n_dims, const uint64_t *dims, ggml_type_t type,
                           const void *data, size_t nbytes);
int gguf_writer_set_u64(gguf_writer_t *w, const char *key, uint64_t v);
/* Writes the file; returns 0 or a negative status (LC_EIO). */
int gguf_writer_write(gguf_writer_t *w, const char *path);
/* Serialises into a malloc'd buffer the caller frees; returns 0 or LC_ENOMEM. */
int gguf_writer_to_buffer(gguf_writer_t *w, void **buf, size_t *len);

#endif
