/* Prefix cache: full blocks are named by a hash chain, h_i = H(h_{i-1},
 * tokens of block i), and kept in a hash table. A new sequence walks its
 * prompt's chain and takes every block it finds; the block's stored parent
 * hash and tokens are compared too, so a 64-bit collision can never hand out
 * wrong K/V. Unreferenced cached blocks sit on the pool's LRU list. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv_internal.h"

static uint64_t mix64(uint64_t x) { // splitmix64 finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static uint64_t block_hash(uint64_t parent, const int32_t *tok, int n) {
    uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < n; i++) h = mix64(h ^ ((uint64_t)(uint32_t)tok[i] + 0x632be59bd9b4e019ULL * (uint64_t)(i + 1)));
    return h ? h : 1; // 0 means "no parent"
}

static int32_t *btok(kv_pool_t *p, int32_t b) { return p->tokens + (size_t)b * p->cfg.block_size; }

static int32_t hash_find(kv_pool_t *p, uint64_t h, uint64_t parent, const int32_t *tok) {
    for (int32_t b = p->buckets[h & p->bucket_mask]; b >= 0; b = p->blk[b].hnext) {
        const kv_block_t *k = &p->blk[b];
        if (k->hash == h && k->parent == parent &&
            memcmp(btok(p, b), tok, (size_t)p->cfg.block_size * sizeof *tok) == 0)
            return b;
    }
    return -1;
}

static void hash_insert(kv_pool_t *p, int32_t b, uint64_t h, uint64_t parent, const int32_t *tok) {
    kv_block_t *k = &p->blk[b];
    k->hash = h;
    k->parent = parent;
    k->hashed = 1;
    memcpy(btok(p, b), tok, (size_t)p->cfg.block_size * sizeof *tok);
    int32_t *head = &p->buckets[h & p->bucket_mask];
    k->hnext = *head;
    *head = b;
}

void kv__hash_remove(kv_pool_t *p, int32_t b) {
    kv_block_t *k = &p->blk[b];
    if (!k->hashed) return;
    int32_t *link = &p->buckets[k->hash & p->bucket_mask];
    while (*link >= 0 && *link != b) link = &p->blk[*link].hnext;
    if (*link == b) *link = k->hnext;
    k->hnext = -1;
    k->hashed = 0;
}

int64_t kv_prefix_attach(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n) {
    if (n <= 0) return 0;
    p->queried_tokens += (uint64_t)n;
    if (s->n_blocks != 0) return 0;
    int bs = p->cfg.block_size;
    int64_t max_blocks = (n - 1) / bs; // leave at least one token to compute
    if (max_blocks <= 0) return 0;
    if (max_blocks > INT32_MAX) max_blocks = INT32_MAX;
    uint64_t parent = s->salt;
    int64_t i = 0;
    for (; i < max_blocks; i++) {
        const int32_t *tok = tokens + i * bs;
        uint64_t h = block_hash(parent, tok, bs);
        int32_t b = hash_find(p, h, parent, tok);
        if (b < 0) break;
        if (s->n_blocks == s->cap) {
            int cap = s->cap ? s->cap * 2 : 8;
            int32_t *nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
            if (!nb) break;
            s->blocks = nb;
            s->cap = cap;
        }
        if (p->blk[b].ref == 0) kv__lru_remove(p, b);
        p->blk[b].ref++;
        s->blocks[s->n_blocks++] = b;
        parent = h;
    }
    s->n_hashed = s->n_blocks;
    s->last_hash = parent;
    s->n_tokens = (int64_t)s->n_blocks * bs;
    p->hit_tokens += (uint64_t)s->n_tokens;
    return s->n_tokens;
}

void kv_prefix_commit(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n_valid) {
    int bs = p->cfg.block_size;
    int64_t full = n_valid / bs;
    if (full > s->n_blocks) full = s->n_blocks;
    for (int64_t i = s->n_hashed; i < full; i++) {
        int32_t b = s->blocks[i];
        const int32_t *tok = tokens + i * bs;
        uint64_t parent = i > 0 ? s->last_hash : s->salt;
        uint64_t h = block_hash(parent, tok, bs);
        kv_block_t *k = &p->blk[b];
        if (!k->hashed) {
            /* Another sequence may have registered identical contents first:
             * keep that one in the table; ours stays private but the chain
             * goes on (the hash is recorded for prepare_write's rollback). */
            if (hash_find(p, h, parent, tok) < 0)
                hash_insert(p, b, h, parent, tok);
            else {
                k->hash = h;
                k->parent = parent;
            }
        }
        s->n_hashed = (int)i + 1;
        s->last_hash = h;
    }
}

void kv_prefix_counters(const kv_pool_t *p, uint64_t *queried_tokens, uint64_t *hit_tokens) {
    if (queried_tokens) *queried_tokens = p->queried_tokens;
    if (hit_tokens) *hit_tokens = p->hit_tokens;
}
