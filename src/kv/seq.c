/* Per-sequence block tables: growth, release, fork and copy-on-write. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv_internal.h"

void kv_seq_init(kv_seq_t *s) { memset(s, 0, sizeof *s); }

void kv_seq_release(kv_pool_t *p, kv_seq_t *s) {
    /* Last block first, so that the LRU evicts the tails of cached chains
     * before their heads (a head's loss makes its tail unreachable). */
    for (int i = s->n_blocks - 1; i >= 0; i--) kv__unref_block(p, s->blocks[i]);
    free(s->blocks);
    uint64_t salt = s->salt;
    kv_seq_init(s);
    s->salt = salt;
}

void kv_seq_truncate(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens) {
    const int bs = p->cfg.block_size;
    if (n_tokens < 0 || n_tokens % bs || n_tokens > s->n_tokens) return;
    const int keep = (int)(n_tokens / bs);
    for (int i = s->n_blocks - 1; i >= keep; i--) kv__unref_block(p, s->blocks[i]);
    s->n_blocks = keep;
    s->n_tokens = n_tokens;
    if (s->n_hashed > keep) {
        s->n_hashed = keep;
        s->last_hash = keep > 0 ? p->blk[s->blocks[keep - 1]].hash : 0;
    }
}

static int grow_table(kv_seq_t *s, int want) {
    if (want <= s->cap) return 0;
    int cap = s->cap ? s->cap : 8;
    while (cap < want) cap *= 2;
    int32_t *nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
    if (!nb) return LC_ENOMEM;
    s->blocks = nb;
    s->cap = cap;
    return 0;
}

int64_t kv_seq_blocks_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens) {
    int64_t want = (n_tokens + p->cfg.block_size - 1) / p->cfg.block_size;
    return want > s->n_blocks ? want - s->n_blocks : 0;
}

int kv_seq_reserve(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens) {
    int64_t need = kv_seq_blocks_needed(p, s, n_tokens);
    if (need == 0) return 0;
    if (need > kv_pool_n_available(p)) return LC_ENOSPC;
    if (s->n_blocks + need > INT32_MAX) return LC_ENOSPC;
    int rc = grow_table(s, s->n_blocks + (int)need);
    if (rc) return rc;
    for (int64_t i = 0; i < need; i++) s->blocks[s->n_blocks++] = kv__alloc_block(p);
    return 0;
}

int kv_seq_fork(kv_pool_t *p, const kv_seq_t *src, kv_seq_t *dst) {
    kv_seq_init(dst);
    dst->salt = src->salt;
    int rc = grow_table(dst, src->n_blocks);
    if (rc) return rc;
    for (int i = 0; i < src->n_blocks; i++) {
        dst->blocks[i] = src->blocks[i];
        p->blk[src->blocks[i]].ref++;
    }
    dst->n_blocks = src->n_blocks;
    dst->n_tokens = src->n_tokens;
    dst->n_hashed = src->n_hashed;
    dst->last_hash = src->last_hash;
    return 0;
}

/* A block may be written in place only if this sequence alone holds it and
 * the prefix cache does not vouch for its contents. */
static int must_copy(const kv_pool_t *p, int32_t b) { return p->blk[b].ref > 1 || p->blk[b].hashed; }

int kv_seq_prepare_write(kv_pool_t *p, kv_seq_t *s, int64_t pos0, int64_t pos1) {
    if (pos1 <= pos0) return 0;
    int bs = p->cfg.block_size;
    int64_t i0 = pos0 / bs, i1 = (pos1 - 1) / bs;
    if (i1 >= s->n_blocks) return LC_EINVAL; // not reserved
    int64_t need = 0;
    for (int64_t i = i0; i <= i1; i++) need += must_copy(p, s->blocks[i]);
    if (need == 0) return 0;
    /* A copied block's old owner may be ourselves only (hashed, ref 1): its
     * unref then makes it available again, but count conservatively. */
    if (need > kv_pool_n_available(p)) return LC_ENOSPC;
    for (int64_t i = i0; i <= i1; i++) {
        int32_t old = s->blocks[i];
        if (!must_copy(p, old)) continue;
        int32_t nb = kv__alloc_block(p);
        if (p->copy) p->copy(p->copy_ud, nb, old);
        s->blocks[i] = nb;
        kv__unref_block(p, old);
        if (i < s->n_hashed) { // the chain is no longer ours from block i on
            s->n_hashed = (int)i;
            s->last_hash = i > 0 ? p->blk[s->blocks[i - 1]].hash : 0;
        }
    }
    return 0;
}
