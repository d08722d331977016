/* The CPU KV store: the tensors the block pool (kv.h) only accounts for. A
 * block holds the layers of one layer group (all layers when the model has
 * one group); slot i is the i-th layer of whichever group owns the block.
 * For each slot one K and one V array in f32,
 *   K[slot]: (n_blocks, n_kv_heads, head_dim, block_size)   keys transposed
 *   V[slot]: (n_blocks, n_kv_heads, block_size, head_dim)
 * so that the attention tiles read both in place: one head_dim element of 16
 * consecutive keys is one vector, one value row is contiguous. Per-block key
 * summaries (per-channel min and max over the block's written slots, for
 * Quest-style decode):
 *   kmin[slot], kmax[slot]: (n_blocks, n_kv_heads, head_dim).
 * Which group and slot a layer uses is the executor's map
 * (model_kv_layer); with one group, slot = layer. A GPU executor keeps its
 * own store (bf16, device memory, its kernels' layout); block ids mean the
 * same thing in both.
 *
 * Ownership: the CPU executor owns its store. Writing new K/V and copying a
 * block (copy-on-write, decided by the pool) are store operations; the pool
 * reaches the copy through the callback it is bound to. Not thread-safe:
 * only the engine thread touches a store. */
#ifndef LC_KV_STORE_H
#define LC_KV_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kv/kv.h"

typedef struct kv_store kv_store_t;

/* Layers a block holds: n_layers / n_groups. */
int kv_store_slots(const kv_config_t *cfg);
/* Bytes of tensor memory one block takes (its slots' K, V and summaries). */
size_t kv_store_block_bytes(const kv_config_t *cfg);
/* NULL on OOM or a bad config. */
kv_store_t *kv_store_create(const kv_config_t *cfg);
void kv_store_destroy(kv_store_t *st);
const kv_config_t *kv_store_config(const kv_store_t *st);

/* Base of a slot's arrays; block b starts at base + b * stride. */
float *kv_store_k(kv_store_t *st, int slot);
float *kv_store_v(kv_store_t *st, int slot);
float *kv_store_kmin(kv_store_t *st, int slot);
float *kv_store_kmax(kv_store_t *st, int slot);
size_t kv_store_block_stride(const kv_store_t *st);   // floats: n_kv_heads * block_size * head_dim
size_t kv_store_summary_stride(const kv_store_t *st); // floats: n_kv_heads * head_dim

/* Writes one token's K and V for the layer in `slot` of group `group` at
 * position pos of sequence s (its block in that group's table must be
 * reserved and writable) and folds the key into the block's summary; the
 * block's first position starts a fresh summary.
 *   k, v: (n_kv_heads, head_dim) */
void kv_store_write(kv_store_t *st, const kv_seq_t *s, int group, int slot, int64_t pos, const float *k,
                    const float *v);
/* Copies block src to dst in every slot (K, V, summaries). */
void kv_store_copy(kv_store_t *st, int32_t dst, int32_t src);
/* A kv_copy_cb for kv_pool_bind: ud is the store. */
void kv_store_copy_cb(void *ud, int32_t dst, int32_t src);

#endif
