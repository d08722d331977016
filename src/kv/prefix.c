/* Prefix cache: full blocks are named by a hash chain, h_i = H(h_{i-1},
 * tokens of block i), and kept in a hash table, per layer group (block i of
 * every group has the same name). A new sequence walks its prompt's chain
 * and takes every block it finds; the block's stored parent hash, tokens
 * and group are compared too, so a 64-bit collision can never hand out
 * wrong K/V. Sliding groups need only the window before the reuse point, so
 * a prefix is reused up to the last point whose window is still cached.
 * Unreferenced cached blocks sit on the pool's LRU list. */
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

static uint64_t bucket_of(const kv_pool_t *p, uint64_t h, int g) {
    return (h ^ ((uint64_t)g * 0xd6e8feb86659fd93ULL)) & p->bucket_mask;
}

static int32_t hash_find(kv_pool_t *p, int g, uint64_t h, uint64_t parent, const int32_t *tok) {
    for (int32_t b = p->buckets[bucket_of(p, h, g)]; b >= 0; b = p->blk[b].hnext) {
        const kv_block_t *k = &p->blk[b];
        if (k->hash == h && k->parent == parent && k->group == g &&
            memcmp(btok(p, b), tok, (size_t)p->cfg.block_size * sizeof *tok) == 0)
            return b;
    }
    return -1;
}

static void hash_insert(kv_pool_t *p, int g, int32_t b, uint64_t h, uint64_t parent, const int32_t *tok) {
    kv_block_t *k = &p->blk[b];
    k->hash = h;
    k->parent = parent;
    k->group = g;
    k->hashed = 1;
    memcpy(btok(p, b), tok, (size_t)p->cfg.block_size * sizeof *tok);
    int32_t *head = &p->buckets[bucket_of(p, h, g)];
    k->hnext = *head;
    *head = b;
}

void kv__hash_remove(kv_pool_t *p, int32_t b) {
    kv_block_t *k = &p->blk[b];
    if (!k->hashed) return;
    int32_t *link = &p->buckets[bucket_of(p, k->hash, k->group)];
    while (*link >= 0 && *link != b) link = &p->blk[*link].hnext;
    if (*link == b) *link = k->hnext;
    k->hnext = -1;
    k->hashed = 0;
}

/* Takes a reference to cached or used block b. */
static void take(kv_pool_t *p, int32_t b) {
    if (p->blk[b].ref == 0) kv__lru_remove(p, b);
    p->blk[b].ref++;
}

/* The first i in [lo, hi) from the top whose block is missing in some
 * sliding group, or -1. h: (hi) the chain; tokens from 0. */
static int64_t swa_missing(kv_pool_t *p, const kv_seq_t *s, const uint64_t *h, const int32_t *tokens, int64_t lo,
                           int64_t hi) {
    const int bs = p->cfg.block_size;
    for (int64_t i = hi - 1; i >= lo; i--)
        for (int g = p->n_full; g < p->n_groups; g++)
            if (hash_find(p, g, h[i], i > 0 ? h[i - 1] : s->salt, tokens + i * bs) < 0) return i;
    return -1;
}

int64_t kv_prefix_attach(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n, int64_t align) {
    if (n <= 0) return 0;
    p->queried_tokens += (uint64_t)n;
    if (s->n_blocks != 0) return 0;
    const int bs = p->cfg.block_size;
    int64_t max_blocks = (n - 1) / bs; // leave at least one token to compute
    if (max_blocks <= 0) return 0;
    if (max_blocks > INT32_MAX / 2) max_blocks = INT32_MAX / 2;
    if (align <= 0) align = bs;
    uint64_t *h = malloc((size_t)max_blocks * sizeof *h);
    if (!h) return 0;
    /* The chain as far as every full group has it. */
    int64_t k = 0;
    for (uint64_t parent = s->salt; k < max_blocks; k++) {
        const int32_t *tok = tokens + k * bs;
        h[k] = block_hash(parent, tok, bs);
        int found = 1;
        for (int g = 0; g < p->n_full && found; g++) found = hash_find(p, g, h[k], parent, tok) >= 0;
        if (!found) break;
        parent = h[k];
    }
    /* The longest aligned prefix whose sliding window is cached too: a
     * block missing at i rules out every end above i (their windows reach
     * down to i at least), so the next candidate ends at i. */
    for (;;) {
        while (k > 0 && (k * bs) % align) k--;
        if (k == 0 || p->n_full == p->n_groups) break;
        const int64_t miss = swa_missing(p, s, h, tokens, kv__swa_first(p, k * bs), k);
        if (miss < 0) break;
        k = miss;
    }
    if (k > 0 && kv__grow_table(p, s, (int)k)) k = 0;
    const int64_t lo = kv__swa_first(p, k * bs);
    for (int64_t i = 0; i < k; i++) {
        const uint64_t parent = i > 0 ? h[i - 1] : s->salt;
        for (int g = 0; g < p->n_groups; g++) {
            int32_t b = -1;
            if (g < p->n_full || i >= lo) take(p, b = hash_find(p, g, h[i], parent, tokens + i * bs));
            kv_seq_table(s, g)[i] = b;
        }
    }
    s->n_blocks = (int)k;
    s->swa_lo = (int)lo;
    s->n_hashed = (int)k;
    s->last_hash = k > 0 ? h[k - 1] : s->salt;
    s->n_tokens = k * bs;
    p->hit_tokens += (uint64_t)s->n_tokens;
    free(h);
    return s->n_tokens;
}

void kv_prefix_commit(kv_pool_t *p, kv_seq_t *s, const int32_t *tokens, int64_t n_valid) {
    int bs = p->cfg.block_size;
    int64_t full = n_valid / bs;
    if (full > s->n_blocks) full = s->n_blocks;
    for (int64_t i = s->n_hashed; i < full; i++) {
        const int32_t *tok = tokens + i * bs;
        uint64_t parent = i > 0 ? s->last_hash : s->salt;
        uint64_t h = block_hash(parent, tok, bs);
        for (int g = 0; g < p->n_groups; g++) {
            const int32_t b = kv_seq_table(s, g)[i];
            if (b < 0) continue; // released (a sliding group's past)
            kv_block_t *k = &p->blk[b];
            if (k->hashed) continue;
            /* Another sequence may have registered identical contents first:
             * keep that one in the table; ours stays private but the chain
             * goes on (the hash is recorded for prepare_write's rollback). */
            if (hash_find(p, g, h, parent, tok) < 0) {
                hash_insert(p, g, b, h, parent, tok);
            } else {
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
