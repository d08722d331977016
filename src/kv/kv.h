/* Paged KV cache, the host side: the block manager of one pool of fixed-size
 * blocks (reference counts, free list, LRU), per-sequence block tables, and a
 * prefix cache of full blocks. It holds no tensors: the executor's store does
 * (kv/store.h on the CPU, device memory on a GPU), indexed by the same block
 * ids. When the pool decides a copy-on-write it asks the store to copy through
 * the callback it is bound to (kv_pool_bind), at once, so the copy is ordered
 * before any later write.
 *
 * Ownership: the pool owns its bookkeeping. A block is referenced by every
 * sequence whose table holds it; at refcount 0 a hashed (full, registered)
 * block stays cached and is evicted LRU when a new block is needed, an
 * unhashed one goes straight back to the free list. Not thread-safe: only the
 * engine thread touches a pool. */
#ifndef LC_KV_H
#define LC_KV_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layers;
    int n_kv_heads;
    int head_dim;
    int block_size;   // tokens per block (16 on CPU)
    int64_t n_blocks; // pool capacity
} kv_config_t;

typedef struct kv_pool kv_pool_t;

/* A sequence's block table. Embedded by the caller; kv_seq_init/kv_seq_release. */
typedef struct {
    int32_t *blocks; // (cap) block ids; the first n_blocks are valid
    int n_blocks;
    int cap;
    int64_t n_tokens;   // positions covered by reserved blocks that hold valid K/V
    int n_hashed;       // leading blocks registered in the prefix cache
    uint64_t last_hash; // hash chain value of block n_hashed-1 (0 when none)
    /* Root of the prefix hash chain. Sequences with different salts never
     * share cached blocks (the scheduler salts K/V computed with sparse
     * attention, so exact requests never reuse approximate K/V). Set by the
     * owner; kept by kv_seq_release, copied by kv_seq_fork. */
    uint64_t salt;
} kv_seq_t;

/* Host bytes of one block's bookkeeping (the store's tensors are extra). */
size_t kv_block_bytes(const kv_config_t *cfg);

/* Returns NULL on OOM or a bad config. */
kv_pool_t *kv_pool_create(const kv_config_t *cfg);
/* Copies block src to dst in the store (every layer). */
typedef void (*kv_copy_cb)(void *ud, int32_t dst, int32_t src);
/* Binds the store that holds the pool's tensors: copy-on-write calls cb.
 * Unbound (NULL), copy-on-write only moves the bookkeeping (tests). */
void kv_pool_bind(kv_pool_t *p, kv_copy_cb cb, void *ud);
void kv_pool_destroy(kv_pool_t *p);
const kv_config_t *kv_pool_config(const kv_pool_t *p);

/* Counts: total blocks; blocks with refcount > 0; blocks allocatable now
 * (free list plus evictable cached blocks). */
int64_t kv_pool_n_blocks(const kv_pool_t *p);
int64_t kv_pool_n_used(const kv_pool_t *p);
int64_t kv_pool_n_available(const kv_pool_t *p);
/* References to block b (0: free or only cached); 0 for an id outside the
 * pool. The executor's per-rank KV accounting (context parallelism). */
int32_t kv_pool_block_refs(const kv_pool_t *p, int32_t b);
/* Blocks held only by the prefix cache (refcount 0, hashed). */
int64_t kv_pool_n_cached(const kv_pool_t *p);
/* Drops every cached unreferenced block (tests; memory pressure). */
void kv_pool_clear_cache(kv_pool_t *p);

/* ---- sequences ------------------------------------------------------------- */
void kv_seq_init(kv_seq_t *s);
/* Unreferences every block and frees the table. Safe to call twice. */
void kv_seq_release(kv_pool_t *p, kv_seq_t *s);
/* Makes sure blocks exist for positions [0, n_tokens). Allocates (evicting
 * cached blocks LRU) as needed. Returns LC_ENOSPC and leaves s unchanged if the
 * pool cannot supply them. Does not change s->n_tokens. */
int kv_seq_reserve(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens);
/* Blocks kv_seq_reserve would need to allocate to reach n_tokens. */
int64_t kv_seq_blocks_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens);
/* Before writing positions [pos0, pos1): any block in that range shared with
 * another sequence or vouched for by the prefix cache is replaced by a copy
 * (copy-on-write, through the bound store). LC_ENOSPC if no block is free. */
int kv_seq_prepare_write(kv_pool_t *p, kv_seq_t *s, int64_t pos0, int64_t pos1);
/* Keeps positions [0, n_tokens) (n_tokens a multiple of block_size, at most
 * s->n_tokens) and unreferences the blocks after them. */
void kv_seq_truncate(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens);
/* dst shares src's blocks (refcounts raised); dst must be freshly initialised. */
int kv_seq_fork(kv_pool_t *p, const kv_seq_t *src, kv_seq_t *dst);

/* ---- prefix cache -------------------------------------------------------------- */
/* Looks up the longest chain of cached full blocks matching tokens[0..n) and
 * appends them to the empty sequence s (refcount raised), leaving at least one
 * token uncovered so the caller still computes logits. Returns the number of
 * tokens reused (a multiple of block_size). */
int64_t kv_prefix_attach(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n);
/* Registers s's full blocks covering tokens[0..n_valid) (whose K/V are now
 * written) in the prefix cache. tokens are the sequence's tokens from 0. */
void kv_prefix_commit(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n_valid);
/* Lifetime counters for metrics: lookups (queried tokens) and hits (reused tokens). */
void kv_prefix_counters(const kv_pool_t *p, uint64_t *queried_tokens, uint64_t *hit_tokens);

#endif
