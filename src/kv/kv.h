/* Paged KV cache, the host side: the block manager of one pool of fixed-size
 * blocks (reference counts, free list, LRU), per-sequence block tables, and a
 * prefix cache of full blocks. It holds no tensors: the executor's store does
 * (kv/store.h on the CPU, device memory on a GPU), indexed by the same block
 * ids. When the pool decides a copy-on-write it asks the store to copy through
 * the callback it is bound to (kv_pool_bind), at once, so the copy is ordered
 * before any later write.
 *
 * Layer groups. A model whose layers all attend the whole context (llama)
 * has one group: a block holds block_size positions of every layer. A model
 * with sliding-window layers (Gemma 3: 15 of 18 layers see only the last 512
 * positions) splits its layers into n_groups groups of equal size
 * (n_layers / n_groups layers each): groups [0, n_full_groups) hold global
 * layers, the others sliding ones. A block then holds block_size positions
 * of one group's layers, every group draws from the one pool (one budget),
 * and a sequence keeps one block table per group. A sliding group's table
 * keeps only the blocks a later step can still read: once no step from the
 * sequence's next position on reads a block (kv_seq_trim, with swa_keep),
 * the block is released (cached for prefix reuse while unevicted) and its
 * table entry becomes -1. So a long sequence costs its global layers' blocks
 * plus a window's worth of each sliding group.
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
    /* Layer groups (see above); 0 means 1: one group of every layer, no
     * sliding groups (and the fields below unused). */
    int n_groups;      // divides n_layers; a block holds n_layers / n_groups layers
    int n_full_groups; // groups [0, n_full_groups) keep every position
    /* Sliding groups: a step whose first new position is p reads no key of
     * a sliding layer below p - swa_keep (the window less one, plus what the
     * kernels' tile alignment reads before it). > 0 when there are sliding
     * groups. */
    int64_t swa_keep;
} kv_config_t;

typedef struct kv_pool kv_pool_t;

/* A sequence's block tables, one per layer group. Embedded by the caller;
 * kv_seq_init/kv_seq_release. */
typedef struct {
    /* (n_groups, cap) block ids: group g's table at blocks + g * cap
     * (kv_seq_table); the first n_blocks entries of each are valid, except
     * that a sliding group's entries below swa_lo are -1 (released). With
     * one group, blocks is simply the table. */
    int32_t *blocks;
    int n_blocks;
    int cap;
    int swa_lo;         // sliding groups hold entries [swa_lo, n_blocks); 0 without sliding groups
    int64_t n_tokens;   // positions covered by reserved blocks that hold valid K/V
    int n_hashed;       // leading blocks registered in the prefix cache
    uint64_t last_hash; // hash chain value of block n_hashed-1 (0 when none)
    /* Root of the prefix hash chain. Sequences with different salts never
     * share cached blocks (the scheduler salts K/V computed with sparse
     * attention, so exact requests never reuse approximate K/V). Set by the
     * owner; kept by kv_seq_release, copied by kv_seq_fork. */
    uint64_t salt;
} kv_seq_t;

static inline int kv_config_groups(const kv_config_t *c) { return c->n_groups > 1 ? c->n_groups : 1; }
/* The first table entry that a step whose first new position is pos reads in
 * the sliding groups (0 without them): earlier entries may be released. */
static inline int64_t kv_config_swa_first(const kv_config_t *c, int64_t pos) {
    if (kv_config_groups(c) == 1 || c->n_full_groups >= c->n_groups) return 0;
    const int64_t lo = pos - c->swa_keep;
    return lo > 0 ? lo / c->block_size : 0;
}
/* Group g's block table of s (valid entries [0, s->n_blocks)). */
static inline int32_t *kv_seq_table(const kv_seq_t *s, int g) { return s->blocks + (size_t)g * (size_t)s->cap; }

/* 1 when c is usable: positive sizes, groups that divide the layers, a
 * swa_keep when some group slides. */
int kv_config_valid(const kv_config_t *c);
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
/* Makes sure blocks exist for positions [0, n_tokens) in every group (from
 * swa_lo in the sliding groups). Trims first (kv_seq_trim), then allocates
 * (evicting cached blocks LRU) as needed. Returns LC_ENOSPC and allocates
 * nothing if the pool cannot supply them. Does not change s->n_tokens. */
int kv_seq_reserve(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens);
/* Blocks kv_seq_reserve would need to allocate to reach n_tokens (every
 * group's new entries; before trimming). */
int64_t kv_seq_blocks_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens);
/* Releases the sliding groups' blocks that no step from position
 * s->n_tokens on reads (their entries become -1). No-op without sliding
 * groups. Call it once s->n_tokens has advanced (after kv_prefix_commit, so
 * that the released full blocks stay in the prefix cache). */
void kv_seq_trim(kv_pool_t *p, kv_seq_t *s);
/* Blocks s needs beyond those it holds to grow to n_tokens in steps of at
 * most `step` positions, at its peak (full groups: every block; sliding
 * groups: a window and a step). Admission control. */
int64_t kv_seq_peak_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens, int64_t step);
/* Blocks n_seqs sequences hold at their peak when they share their first
 * n_shared positions (the prompt, forked) and each grows to n_total in steps
 * of at most `step` positions. */
int64_t kv_peak_blocks(const kv_pool_t *p, int64_t n_shared, int64_t n_total, int n_seqs, int64_t step);
/* Positions one sequence can grow to in the whole pool, in steps of at most
 * `step` (INT64_MAX / 2 when only sliding groups exist). */
int64_t kv_pool_token_capacity(const kv_pool_t *p, int64_t step);
/* Before writing positions [pos0, pos1): any block in that range shared with
 * another sequence or vouched for by the prefix cache is replaced by a copy
 * (copy-on-write, through the bound store). LC_ENOSPC if no block is free. */
int kv_seq_prepare_write(kv_pool_t *p, kv_seq_t *s, int64_t pos0, int64_t pos1);
/* Keeps positions [0, n_tokens) (n_tokens a multiple of block_size, at most
 * s->n_tokens) and unreferences the blocks after them. If a sliding group no
 * longer holds the window that position n_tokens needs, keeps nothing. */
void kv_seq_truncate(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens);
/* dst shares src's blocks (refcounts raised); dst must be freshly initialised. */
int kv_seq_fork(kv_pool_t *p, const kv_seq_t *src, kv_seq_t *dst);

/* ---- prefix cache -------------------------------------------------------------- */
/* Looks up the longest chain of cached full blocks matching tokens[0..n) and
 * appends them to the empty sequence s (refcount raised), leaving at least one
 * token uncovered so the caller still computes logits. The length reused is a
 * multiple of `align` (and of block_size; align 0: block_size alone), and the
 * sliding groups must still hold the window it continues from: a prefix
 * whose window blocks were evicted is reused only up to where they last are.
 * Returns the number of tokens reused. */
int64_t kv_prefix_attach(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n, int64_t align);
/* Registers s's full blocks covering tokens[0..n_valid) (whose K/V are now
 * written) in the prefix cache. tokens are the sequence's tokens from 0. */
void kv_prefix_commit(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n_valid);
/* Lifetime counters for metrics: lookups (queried tokens) and hits (reused tokens). */
void kv_prefix_counters(const kv_pool_t *p, uint64_t *queried_tokens, uint64_t *hit_tokens);

#endif
