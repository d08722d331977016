/* Internals shared by the GGUF reader (gguf.c) and its metadata accessors
 * (gguf_meta.c). Not for use outside src/model/gguf*.c. */
#ifndef LC_GGUF_INTERNAL_H
#define LC_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"

#define GGUF_MAGIC 0x46554747u // "GGUF" little-endian
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_KEY 65535u // bytes in a metadata key
#define GGUF_MAX_NAME 1024u // bytes in a tensor name (ggml uses 63)
#define KV_MIN_BYTES 13u    // key len(8) + 1 byte + type(4)
#define TI_MIN_BYTES 33u    // name len(8) + 1 + n_dims(4) + dim(8) + type(4) + offset(8)

typedef struct {
    gguf_str_t key;
    gguf_vtype_t type;
    gguf_vtype_t elem_type; // arrays only
    uint64_t count;         // arrays: elements; strings: bytes
    const uint8_t *val;     // scalar bytes, string bytes, or first array element
    uint64_t *str_off;      // string arrays: offset of each element's length prefix from val
} gguf_kv_t;

struct gguf_ctx {
    const uint8_t *base; // whole file
    size_t size;
    void *map; // non-NULL when we own an mmap of map_len bytes
    size_t map_len;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off;
    gguf_kv_t *kvs;
    int64_t n_kv;
    gguf_tensor_t *tensors;
    int64_t n_tensors;
    int64_t *kv_hash; // open addressing: index or -1; capacity kv_hcap (power of two)
    uint64_t kv_hcap;
    int64_t *t_hash;
    uint64_t t_hcap;
};

static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | ((uint64_t)le32(p + 4) << 32); }

/* Bytes of one fixed-size metadata value; 0 for strings, arrays and unknown. */
static inline uint32_t gguf__vtype_size(uint32_t t) {
    switch (t) {
    case GGUF_T_U8:
    case GGUF_T_I8:
    case GGUF_T_BOOL: return 1;
    case GGUF_T_U16:
    case GGUF_T_I16: return 2;
    case GGUF_T_U32:
    case GGUF_T_I32:
    case GGUF_T_F32: return 4;
    case GGUF_T_U64:
    case GGUF_T_I64:
    case GGUF_T_F64: return 8;
    }
    return 0;
}

#endif
