/* The block pool: the free stack, the LRU list of cached unreferenced blocks
 * and the allocator that evicts from it. Sequences (seq.c) and the prefix
 * cache (prefix.c) build on the primitives here. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv_internal.h"

size_t kv_block_bytes(const kv_config_t *c) {
    return sizeof(kv_block_t) + (size_t)c->block_size * sizeof(int32_t) + 3 * sizeof(int32_t);
}

kv_pool_t *kv_pool_create(const kv_config_t *cfg) {
    if (!cfg || cfg->n_layers <= 0 || cfg->n_kv_heads <= 0 || cfg->head_dim <= 0 || cfg->block_size <= 0 ||
        cfg->n_blocks <= 0 || cfg->n_blocks > INT32_MAX / 2)
        return NULL;
    kv_pool_t *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->cfg = *cfg;
    int64_t nb = cfg->n_blocks;
    p->blk = calloc((size_t)nb, sizeof *p->blk);
    p->tokens = calloc((size_t)nb * (size_t)cfg->block_size, sizeof *p->tokens);
    p->free_stack = malloc((size_t)nb * sizeof *p->free_stack);
    uint64_t nbk = 16;
    while (nbk < (uint64_t)nb * 2) nbk <<= 1;
    p->buckets = malloc(nbk * sizeof *p->buckets);
    if (!p->blk || !p->tokens || !p->free_stack || !p->buckets) goto fail;
    p->bucket_mask = nbk - 1;
    for (uint64_t i = 0; i < nbk; i++) p->buckets[i] = -1;
    /* Stack order: block 0 is handed out first. */
    for (int64_t i = 0; i < nb; i++) {
        p->free_stack[i] = (int32_t)(nb - 1 - i);
        p->blk[i].hnext = p->blk[i].lru_prev = p->blk[i].lru_next = -1;
    }
    p->n_free = nb;
    p->lru_head = p->lru_tail = -1;
    return p;
fail:
    kv_pool_destroy(p);
    return NULL;
}

void kv_pool_destroy(kv_pool_t *p) {
    if (!p) return;
    free(p->blk);
    free(p->tokens);
    free(p->free_stack);
    free(p->buckets);
    free(p);
}

const kv_config_t *kv_pool_config(const kv_pool_t *p) { return &p->cfg; }
int64_t kv_pool_n_blocks(const kv_pool_t *p) { return p->cfg.n_blocks; }
int64_t kv_pool_n_used(const kv_pool_t *p) { return p->cfg.n_blocks - p->n_free - p->n_cached; }
int32_t kv_pool_block_refs(const kv_pool_t *p, int32_t b) { return b >= 0 && b < p->cfg.n_blocks ? p->blk[b].ref : 0; }
int64_t kv_pool_n_available(const kv_pool_t *p) { return p->n_free + p->n_cached; }
int64_t kv_pool_n_cached(const kv_pool_t *p) { return p->n_cached; }

void kv_pool_bind(kv_pool_t *p, kv_copy_cb cb, void *ud) {
    p->copy = cb;
    p->copy_ud = ud;
}

/* ---- LRU of cached blocks --------------------------------------------------- */
static void lru_push_tail(kv_pool_t *p, int32_t b) {
    kv_block_t *k = &p->blk[b];
    k->lru_next = -1;
    k->lru_prev = p->lru_tail;
    if (p->lru_tail >= 0)
        p->blk[p->lru_tail].lru_next = b;
    else
        p->lru_head = b;
    p->lru_tail = b;
    p->n_cached++;
}

void kv__lru_remove(kv_pool_t *p, int32_t b) {
    kv_block_t *k = &p->blk[b];
    if (k->lru_prev >= 0)
        p->blk[k->lru_prev].lru_next = k->lru_next;
    else
        p->lru_head = k->lru_next;
    if (k->lru_next >= 0)
        p->blk[k->lru_next].lru_prev = k->lru_prev;
    else
        p->lru_tail = k->lru_prev;
    k->lru_prev = k->lru_next = -1;
    p->n_cached--;
}

void kv_pool_clear_cache(kv_pool_t *p) {
    while (p->lru_head >= 0) {
        int32_t b = p->lru_head;
        kv__lru_remove(p, b);
        kv__hash_remove(p, b);
        p->free_stack[p->n_free++] = b;
    }
}

/* ---- allocation ------------------------------------------------------------- */
int32_t kv__alloc_block(kv_pool_t *p) {
    int32_t b;
    if (p->n_free > 0) {
        b = p->free_stack[--p->n_free];
    } else if (p->lru_head >= 0) {
        b = p->lru_head; // least recently used cached block
        kv__lru_remove(p, b);
        kv__hash_remove(p, b);
    } else {
        return -1;
    }
    p->blk[b].ref = 1;
    return b;
}

void kv__unref_block(kv_pool_t *p, int32_t b) {
    kv_block_t *k = &p->blk[b];
    if (--k->ref > 0) return;
    if (k->hashed)
        lru_push_tail(p, b);
    else
        p->free_stack[p->n_free++] = b;
}
