/* Pool internals shared by pool.c, seq.c and prefix.c. Not a public header:
 * everything outside src/kv goes through kv.h. */
#ifndef LC_KV_INTERNAL_H
#define LC_KV_INTERNAL_H

#include "kv/kv.h"

/* Per-block bookkeeping. A block is in exactly one of three states:
 *   free:   ref == 0, !hashed, on the free stack;
 *   cached: ref == 0,  hashed, on the LRU list and in the hash table;
 *   used:   ref  > 0 (hashed or not; not on the LRU list). */
typedef struct {
    int32_t ref;
    int32_t hashed;             // registered in the hash table
    uint64_t hash;              // chain hash of this block (valid when hashed)
    uint64_t parent;            // chain hash of the previous block (collision check)
    int32_t group;              // layer group whose K/V it holds (valid when hashed)
    int32_t hnext;              // next block in the same hash bucket, -1 at end
    int32_t lru_prev, lru_next; // LRU links while cached, -1 at the ends
} kv_block_t;

struct kv_pool {
    kv_config_t cfg;
    int n_groups;    // kv_config_groups(&cfg)
    int n_full;      // full groups (n_groups when none slides)
    kv_copy_cb copy; // the store's block copy, or NULL
    void *copy_ud;

    kv_block_t *blk;     // (n_blocks)
    int32_t *tokens;     // (n_blocks, block_size) token ids of hashed blocks
    int32_t *free_stack; // (n_blocks)
    int64_t n_free;
    int64_t n_cached;
    int32_t lru_head, lru_tail; // oldest first

    int32_t *buckets; // (n_buckets) hash table heads, -1 empty
    uint64_t bucket_mask;

    uint64_t queried_tokens, hit_tokens;
};

/* pool.c */
int32_t kv__alloc_block(kv_pool_t *p);         // ref 1; -1 when none
void kv__unref_block(kv_pool_t *p, int32_t b); // to LRU (hashed) or free stack at ref 0
void kv__lru_remove(kv_pool_t *p, int32_t b);

/* prefix.c */
void kv__hash_remove(kv_pool_t *p, int32_t b);

/* seq.c: the first table entry a step starting at position pos reads in the
 * sliding groups (0 without them). */
int64_t kv__swa_first(const kv_pool_t *p, int64_t pos);
/* Grows s's tables to hold want entries each (regrouping them). 0 or LC_ENOMEM. */
int kv__grow_table(kv_pool_t *p, kv_seq_t *s, int want);

#endif
