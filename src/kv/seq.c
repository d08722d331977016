/* Per-sequence block tables, one per layer group: growth, release, fork,
 * copy-on-write, and the trimming of the sliding groups' tables. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv_internal.h"

static int64_t n_table_blocks(const kv_pool_t *p, int64_t n_tokens) {
    return (n_tokens + p->cfg.block_size - 1) / p->cfg.block_size;
}

int64_t kv__swa_first(const kv_pool_t *p, int64_t pos) { return kv_config_swa_first(&p->cfg, pos); }

/* Blocks one sliding group holds at most while a sequence grows in steps of
 * at most `step` positions: a step [q, q + step) reads from q - swa_keep on. */
static int64_t swa_span(const kv_pool_t *p, int64_t step) {
    if (step < 1) step = 1;
    return (p->cfg.swa_keep + step + p->cfg.block_size - 1) / p->cfg.block_size + 1;
}

void kv_seq_init(kv_seq_t *s) { memset(s, 0, sizeof *s); }

void kv_seq_release(kv_pool_t *p, kv_seq_t *s) {
    /* Last block first, so that the LRU evicts the tails of cached chains
     * before their heads (a head's loss makes its tail unreachable). */
    for (int i = s->n_blocks - 1; i >= 0; i--)
        for (int g = 0; g < p->n_groups; g++) {
            const int32_t b = kv_seq_table(s, g)[i];
            if (b >= 0) kv__unref_block(p, b);
        }
    free(s->blocks);
    uint64_t salt = s->salt;
    kv_seq_init(s);
    s->salt = salt;
}

void kv_seq_trim(kv_pool_t *p, kv_seq_t *s) {
    int64_t lo = kv__swa_first(p, s->n_tokens);
    if (lo > s->n_blocks) lo = s->n_blocks;
    /* Oldest first: the LRU then evicts the blocks furthest from the
     * sequence's end, which only a short prefix could reuse, first. */
    for (int i = s->swa_lo; i < lo; i++)
        for (int g = p->n_full; g < p->n_groups; g++) {
            int32_t *t = kv_seq_table(s, g);
            if (t[i] >= 0) kv__unref_block(p, t[i]);
            t[i] = -1;
        }
    if (lo > s->swa_lo) s->swa_lo = (int)lo;
}

void kv_seq_truncate(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens) {
    const int bs = p->cfg.block_size;
    if (n_tokens < 0 || n_tokens % bs || n_tokens > s->n_tokens) return;
    if (s->swa_lo > kv__swa_first(p, n_tokens)) n_tokens = 0; // its window is gone
    const int keep = (int)(n_tokens / bs);
    for (int i = s->n_blocks - 1; i >= keep; i--)
        for (int g = 0; g < p->n_groups; g++) {
            const int32_t b = kv_seq_table(s, g)[i];
            if (b >= 0) kv__unref_block(p, b);
        }
    s->n_blocks = keep;
    s->n_tokens = n_tokens;
    if (s->swa_lo > keep) s->swa_lo = keep;
    if (s->n_hashed > keep) {
        s->n_hashed = keep;
        s->last_hash = keep > 0 ? p->blk[s->blocks[keep - 1]].hash : 0;
    }
}

int kv__grow_table(kv_pool_t *p, kv_seq_t *s, int want) {
    if (want <= s->cap) return 0;
    int cap = s->cap ? s->cap : 8;
    while (cap < want) cap *= 2;
    const int G = p->n_groups;
    int32_t *nb;
    if (G == 1) {
        nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
        if (!nb) return LC_ENOMEM;
    } else { // regroup: group g moves from g * old cap to g * cap
        nb = malloc((size_t)G * (size_t)cap * sizeof *nb);
        if (!nb) return LC_ENOMEM;
        for (int g = 0; g < G && s->n_blocks > 0; g++)
            memcpy(nb + (size_t)g * cap, kv_seq_table(s, g), (size_t)s->n_blocks * sizeof *nb);
        free(s->blocks);
    }
    s->blocks = nb;
    s->cap = cap;
    return 0;
}

int64_t kv_seq_blocks_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens) {
    int64_t want = n_table_blocks(p, n_tokens);
    return want > s->n_blocks ? (want - s->n_blocks) * p->n_groups : 0;
}

int64_t kv_seq_peak_needed(const kv_pool_t *p, const kv_seq_t *s, int64_t n_tokens, int64_t step) {
    const int64_t want = n_table_blocks(p, n_tokens);
    int64_t need = want > s->n_blocks ? (want - s->n_blocks) * p->n_full : 0;
    if (p->n_full < p->n_groups) {
        int64_t peak = swa_span(p, step), held = s->n_blocks - s->swa_lo;
        if (peak > want) peak = want;
        if (peak > held) need += (peak - held) * (p->n_groups - p->n_full);
    }
    return need;
}

int64_t kv_peak_blocks(const kv_pool_t *p, int64_t n_shared, int64_t n_total, int n_seqs, int64_t step) {
    const int64_t bs = p->cfg.block_size, shared = n_shared / bs;
    int64_t per = n_table_blocks(p, n_total) - shared;
    if (per < 1) per = 1;
    int64_t need = (shared + (int64_t)n_seqs * per) * p->n_full;
    if (p->n_full < p->n_groups) {
        int64_t win = swa_span(p, step), all = n_table_blocks(p, n_total);
        need += (int64_t)n_seqs * (win < all ? win : all) * (p->n_groups - p->n_full);
    }
    return need;
}

int64_t kv_pool_token_capacity(const kv_pool_t *p, int64_t step) {
    if (p->n_full == 0) return INT64_MAX / 2;
    int64_t left = p->cfg.n_blocks;
    if (p->n_full < p->n_groups) left -= swa_span(p, step) * (p->n_groups - p->n_full);
    return left > 0 ? left / p->n_full * p->cfg.block_size : 0;
}

int kv_seq_reserve(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens) {
    kv_seq_trim(p, s);
    const int64_t need = kv_seq_blocks_needed(p, s, n_tokens);
    if (need == 0) return 0;
    if (need > kv_pool_n_available(p)) return LC_ENOSPC;
    const int64_t want = n_table_blocks(p, n_tokens);
    if (want > INT32_MAX) return LC_ENOSPC;
    int rc = kv__grow_table(p, s, (int)want);
    if (rc) return rc;
    for (int i = s->n_blocks; i < want; i++)
        for (int g = 0; g < p->n_groups; g++) kv_seq_table(s, g)[i] = kv__alloc_block(p);
    s->n_blocks = (int)want;
    return 0;
}

int kv_seq_fork(kv_pool_t *p, const kv_seq_t *src, kv_seq_t *dst) {
    kv_seq_init(dst);
    dst->salt = src->salt;
    int rc = kv__grow_table(p, dst, src->n_blocks);
    if (rc) return rc;
    for (int g = 0; g < p->n_groups; g++) {
        const int32_t *st = kv_seq_table(src, g);
        int32_t *dt = kv_seq_table(dst, g);
        for (int i = 0; i < src->n_blocks; i++) {
            dt[i] = st[i];
            if (st[i] >= 0) p->blk[st[i]].ref++;
        }
    }
    dst->n_blocks = src->n_blocks;
    dst->n_tokens = src->n_tokens;
    dst->n_hashed = src->n_hashed;
    dst->last_hash = src->last_hash;
    dst->swa_lo = src->swa_lo;
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
    for (int g = 0; g < p->n_groups; g++)
        for (int64_t i = i0; i <= i1; i++) {
            const int32_t b = kv_seq_table(s, g)[i];
            if (b < 0) return LC_EINVAL; // released: this range is no longer writable
            need += must_copy(p, b);
        }
    if (need == 0) return 0;
    /* A copied block's old owner may be ourselves only (hashed, ref 1): its
     * unref then makes it available again, but count conservatively. */
    if (need > kv_pool_n_available(p)) return LC_ENOSPC;
    for (int g = 0; g < p->n_groups; g++) {
        int32_t *t = kv_seq_table(s, g);
        for (int64_t i = i0; i <= i1; i++) {
            int32_t old = t[i];
            if (!must_copy(p, old)) continue;
            int32_t nb = kv__alloc_block(p);
            if (p->copy) p->copy(p->copy_ud, nb, old);
            t[i] = nb;
            kv__unref_block(p, old);
            if (i < s->n_hashed) { // the chain is no longer ours from block i on
                s->n_hashed = (int)i;
                s->last_hash = i > 0 ? p->blk[s->blocks[i - 1]].hash : 0;
            }
        }
    }
    return 0;
}
