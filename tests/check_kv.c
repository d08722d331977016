/* Check suite for src/kv: block accounting, fork and copy-on-write, prefix
 * reuse with LRU eviction, key summaries, and a randomized sequence of
 * operations that checks the pool's invariants and every sequence's data
 * after each step. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv.h"
#include "kv/kv_internal.h"
#include "kv/store.h"

#define L 2
#define H 2
#define D 4
#define BS 4

/* The pool under test and the CPU store that holds its tensors, bound as an
 * executor binds them (copy-on-write copies through the store). g_cfg is its
 * configuration: one group of both layers, or (mkpool_swa) layer 0 global
 * and layer 1 sliding, each in a group of its own. */
static kv_store_t *g_st;
static kv_config_t g_cfg;

static kv_pool_t *mkpool_cfg(const kv_config_t *c) {
    g_cfg = *c;
    kv_pool_t *p = kv_pool_create(c);
    ck_assert_ptr_nonnull(p);
    g_st = kv_store_create(c);
    ck_assert_ptr_nonnull(g_st);
    kv_pool_bind(p, kv_store_copy_cb, g_st);
    return p;
}

static kv_pool_t *mkpool(int64_t n_blocks) {
    kv_config_t c = {.n_layers = L, .n_kv_heads = H, .head_dim = D, .block_size = BS, .n_blocks = n_blocks};
    return mkpool_cfg(&c);
}

#define SWA_KEEP 6 // a step from position p reads the sliding layer from p - 6 on
static kv_pool_t *mkpool_swa(int64_t n_blocks) {
    kv_config_t c = {.n_layers = L,
                     .n_kv_heads = H,
                     .head_dim = D,
                     .block_size = BS,
                     .n_blocks = n_blocks,
                     .n_groups = 2,
                     .n_full_groups = 1,
                     .swa_keep = SWA_KEEP};
    return mkpool_cfg(&c);
}

static void rmpool(kv_pool_t *p) {
    kv_pool_destroy(p);
    kv_store_destroy(g_st);
    g_st = NULL;
}

/* Layer l's group and slot under g_cfg. */
static int lgroup(int l) { return l / (L / kv_config_groups(&g_cfg)); }
static int lslot(int l) { return l % (L / kv_config_groups(&g_cfg)); }
static int sliding(int l) { return lgroup(l) >= (kv_config_groups(&g_cfg) > 1 ? g_cfg.n_full_groups : 1); }

/* The K/V a token at a position gets: a pure function of (token, pos, layer,
 * head, channel), so equal prefixes have equal K/V and any stray write shows. */
static float kval(int32_t tok, int64_t pos, int l, int h, int d) {
    return (float)(tok * 1000 + pos) + 0.1f * (float)l + 0.01f * (float)h + 0.001f * (float)d;
}

static void write_tok(kv_pool_t *p, kv_seq_t *s, int64_t pos, int32_t tok) {
    float k[H * D], v[H * D];
    for (int l = 0; l < L; l++) {
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++) {
                k[h * D + d] = kval(tok, pos, l, h, d);
                v[h * D + d] = -kval(tok, pos, l, h, d);
            }
        kv_store_write(g_st, s, lgroup(l), lslot(l), pos, k, v);
    }
}

static float read_k(kv_pool_t *p, const kv_seq_t *s, int l, int64_t pos, int h, int d) {
    int32_t b = kv_seq_table(s, lgroup(l))[pos / BS];
    return kv_store_k(g_st, lslot(l))[(size_t)b * kv_store_block_stride(g_st) + ((size_t)h * D + d) * BS + pos % BS];
}
static float read_v(kv_pool_t *p, const kv_seq_t *s, int l, int64_t pos, int h, int d) {
    int32_t b = kv_seq_table(s, lgroup(l))[pos / BS];
    return kv_store_v(g_st, lslot(l))[(size_t)b * kv_store_block_stride(g_st) + ((size_t)h * BS + pos % BS) * D + d];
}

/* Every position a later step may read holds its own K/V; a sliding
 * layer's table holds exactly [swa_lo, n_blocks), swa_lo no later than the
 * window of the next step needs. */
static int seq_ok(kv_pool_t *p, const kv_seq_t *s, const int32_t *toks) {
    if (s->swa_lo > kv_config_swa_first(&g_cfg, s->n_tokens)) return 0;
    for (int l = 0; l < L; l++) {
        if (!sliding(l)) continue;
        for (int i = 0; i < s->n_blocks; i++)
            if ((kv_seq_table(s, lgroup(l))[i] >= 0) != (i >= s->swa_lo)) return 0;
    }
    for (int64_t pos = 0; pos < s->n_tokens; pos++)
        for (int l = 0; l < L; l++) {
            if (sliding(l) && pos < (int64_t)s->swa_lo * BS) continue;
            for (int h = 0; h < H; h++)
                for (int d = 0; d < D; d++)
                    if (read_k(p, s, l, pos, h, d) != kval(toks[pos], pos, l, h, d) ||
                        read_v(p, s, l, pos, h, d) != -kval(toks[pos], pos, l, h, d))
                        return 0;
        }
    return 1;
}

/* Appends toks[s->n_tokens .. n) to s; 0 or LC_ENOSPC (s unchanged then). */
static int extend(kv_pool_t *p, kv_seq_t *s, const int32_t *toks, int64_t n) {
    int rc = kv_seq_reserve(p, s, n);
    if (rc) return rc;
    rc = kv_seq_prepare_write(p, s, s->n_tokens, n);
    if (rc) return rc;
    for (int64_t pos = s->n_tokens; pos < n; pos++) write_tok(p, s, pos, toks[pos]);
    s->n_tokens = n;
    return 0;
}

/* Drops cached block b from the prefix cache (as an eviction would). */
static void evict(kv_pool_t *p, int32_t b) {
    ck_assert_int_eq(p->blk[b].ref, 0);
    ck_assert(p->blk[b].hashed);
    kv__lru_remove(p, b);
    kv__hash_remove(p, b);
    p->free_stack[p->n_free++] = b;
}

START_TEST(test_alloc_free) {
    kv_pool_t *p = mkpool(8);
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    kv_seq_t s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_blocks_needed(p, &s, 10), 3);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 10), 0);
    ck_assert_int_eq(s.n_blocks, 3);
    ck_assert_int_eq(kv_pool_n_used(p), 3);
    ck_assert_int_eq(kv_pool_n_available(p), 5);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 12), 0); // same blocks
    ck_assert_int_eq(s.n_blocks, 3);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 40), LC_ENOSPC);
    ck_assert_int_eq(s.n_blocks, 3);
    ck_assert_int_eq(kv_pool_n_used(p), 3);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 32), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 0);
    kv_seq_release(p, &s);
    kv_seq_release(p, &s); // twice is safe
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    kv_config_t bad = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 1, .block_size = 0, .n_blocks = 4};
    ck_assert_ptr_null(kv_pool_create(&bad));
    rmpool(p);
}
END_TEST

START_TEST(test_fork_cow) {
    kv_pool_t *p = mkpool(8);
    int32_t toks[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    kv_seq_t a, b;
    kv_seq_init(&a);
    ck_assert_int_eq(extend(p, &a, toks, 6), 0); // block 0 full, block 1 half
    ck_assert_int_eq(kv_seq_fork(p, &a, &b), 0);
    ck_assert_int_eq(b.n_tokens, 6);
    ck_assert_int_eq(kv_pool_n_used(p), 2);
    ck_assert_int_eq(p->blk[a.blocks[0]].ref, 2);
    /* b writes position 6: only the shared partial block is copied. */
    int32_t tb[8] = {1, 2, 3, 4, 5, 6, 9, 9};
    ck_assert_int_eq(extend(p, &b, tb, 7), 0);
    ck_assert_int_eq(kv_pool_n_used(p), 3);
    ck_assert_int_eq(b.blocks[0], a.blocks[0]);
    ck_assert_int_ne(b.blocks[1], a.blocks[1]);
    ck_assert_int_eq(p->blk[a.blocks[1]].ref, 1);
    ck_assert_int_eq(p->blk[b.blocks[1]].ref, 1);
    ck_assert(seq_ok(p, &b, tb));
    /* a writes its own position 6 in place (now exclusive). */
    int32_t old = a.blocks[1];
    ck_assert_int_eq(extend(p, &a, toks, 7), 0);
    ck_assert_int_eq(a.blocks[1], old);
    ck_assert(seq_ok(p, &a, toks));
    ck_assert(seq_ok(p, &b, tb));
    /* The copy's summary covers slots 4..6 of b only (kmin of layer 0 head 0 d 0). */
    float mn = kv_store_kmin(g_st, 0)[(size_t)b.blocks[1] * kv_store_summary_stride(g_st)];
    float mx = kv_store_kmax(g_st, 0)[(size_t)b.blocks[1] * kv_store_summary_stride(g_st)];
    ck_assert_float_eq(mn, kval(5, 4, 0, 0, 0));
    ck_assert_float_eq(mx, kval(9, 6, 0, 0, 0));
    /* No space: prepare_write on a shared block fails and changes nothing. */
    kv_seq_t c, fill;
    ck_assert_int_eq(kv_seq_fork(p, &a, &c), 0);
    kv_seq_init(&fill);
    ck_assert_int_eq(kv_seq_reserve(p, &fill, 5 * BS), 0);
    ck_assert_int_eq(kv_pool_n_available(p), 0);
    ck_assert_int_eq(kv_seq_reserve(p, &c, 8), 0); // already covered
    ck_assert_int_eq(kv_seq_prepare_write(p, &c, 7, 8), LC_ENOSPC);
    ck_assert_int_eq(c.blocks[1], a.blocks[1]);
    kv_seq_release(p, &fill);
    kv_seq_release(p, &c);
    kv_seq_release(p, &a);
    kv_seq_release(p, &b);
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    rmpool(p);
}
END_TEST

START_TEST(test_prefix_reuse_lru) {
    kv_pool_t *p = mkpool(8);
    int32_t toks[13] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    kv_seq_t a, b;
    kv_seq_init(&a);
    ck_assert_int_eq(extend(p, &a, toks, 13), 0);
    kv_prefix_commit(p, &a, toks, 13);
    ck_assert_int_eq(a.n_hashed, 3);
    kv_seq_release(p, &a);
    ck_assert_int_eq(kv_pool_n_cached(p), 3);
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    ck_assert_int_eq(kv_pool_n_used(p), 0);

    /* 12 tokens: at least one left to compute, so two blocks. */
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 12, 0), 8);
    ck_assert_int_eq(b.n_tokens, 8);
    ck_assert_int_eq(kv_pool_n_cached(p), 1);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_release(p, &b);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 13, 0), 12);
    ck_assert(seq_ok(p, &b, toks));
    ck_assert_int_eq(extend(p, &b, toks, 13), 0);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_release(p, &b);
    /* A different token in block 1 breaks the chain after block 0. */
    int32_t t2[13];
    memcpy(t2, toks, sizeof t2);
    t2[5] = 99;
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, t2, 13, 0), 4);
    kv_seq_release(p, &b);
    /* Same tokens in block 1 but a different block 0: nothing matches. */
    t2[5] = 6;
    t2[0] = 77;
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, t2, 13, 0), 0);
    kv_seq_release(p, &b);
    uint64_t q, hit;
    kv_prefix_counters(p, &q, &hit);
    ck_assert_uint_eq(q, 12 + 13 + 13 + 13);
    ck_assert_uint_eq(hit, 8 + 12 + 4);

    /* LRU: a second chain cached more recently; then allocate 8 - 6 + 1
     * blocks: the first chain's tail is evicted before its head. */
    int32_t u[9] = {50, 51, 52, 53, 54, 55, 56, 57, 58};
    kv_seq_init(&a);
    ck_assert_int_eq(extend(p, &a, u, 9), 0);
    kv_prefix_commit(p, &a, u, 9);
    kv_seq_release(p, &a);
    ck_assert_int_eq(kv_pool_n_cached(p), 5);
    kv_seq_t big;
    kv_seq_init(&big);
    ck_assert_int_eq(kv_seq_reserve(p, &big, 4 * BS), 0); // 3 free + 1 eviction
    ck_assert_int_eq(kv_pool_n_cached(p), 4);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 13, 0), 8); // lost block 2 only
    kv_seq_release(p, &b);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, u, 9, 0), 8);
    kv_seq_release(p, &b);
    kv_pool_clear_cache(p);
    ck_assert_int_eq(kv_pool_n_cached(p), 0);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, u, 9, 0), 0);
    kv_seq_release(p, &big);
    ck_assert_int_eq(kv_pool_n_available(p), 8);
    rmpool(p);
}
END_TEST

START_TEST(test_summaries) {
    kv_pool_t *p = mkpool(4);
    kv_seq_t s;
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 7), 0);
    float keys[7][L][H * D];
    unsigned seed = 7;
    for (int pos = 0; pos < 7; pos++)
        for (int l = 0; l < L; l++) {
            float v[H * D] = {0};
            for (int i = 0; i < H * D; i++) keys[pos][l][i] = (float)(rand_r(&seed) % 2001 - 1000) / 10.0f;
            kv_store_write(g_st, &s, 0, l, pos, keys[pos][l], v);
        }
    for (int blk = 0; blk < 2; blk++)
        for (int l = 0; l < L; l++)
            for (int i = 0; i < H * D; i++) {
                float mn = FLT_MAX, mx = -FLT_MAX;
                for (int pos = blk * BS; pos < 7 && pos < (blk + 1) * BS; pos++) {
                    mn = fminf(mn, keys[pos][l][i]);
                    mx = fmaxf(mx, keys[pos][l][i]);
                }
                size_t off = (size_t)s.blocks[blk] * kv_store_summary_stride(g_st) + (size_t)i;
                ck_assert_float_eq(kv_store_kmin(g_st, l)[off], mn);
                ck_assert_float_eq(kv_store_kmax(g_st, l)[off], mx);
            }
    kv_seq_release(p, &s);
    /* A reused block gets a fresh summary. */
    kv_seq_init(&s);
    ck_assert_int_eq(kv_seq_reserve(p, &s, 1), 0);
    float k1[H * D], v1[H * D] = {0};
    for (int i = 0; i < H * D; i++) k1[i] = 3.0f;
    kv_store_write(g_st, &s, 0, 0, 0, k1, v1);
    ck_assert_float_eq(kv_store_kmin(g_st, 0)[(size_t)s.blocks[0] * kv_store_summary_stride(g_st)], 3.0f);
    ck_assert_float_eq(kv_store_kmax(g_st, 0)[(size_t)s.blocks[0] * kv_store_summary_stride(g_st)], 3.0f);
    kv_seq_release(p, &s);
    rmpool(p);
}
END_TEST

/* ---- randomized operations -------------------------------------------------- */
#define NSEQ 12
#define MAXTOK 64

typedef struct {
    int live;
    kv_seq_t kv;
    int32_t toks[MAXTOK];
} rseq_t;

static void check_invariants(kv_pool_t *p, rseq_t *seqs) {
    int64_t nb = kv_pool_n_blocks(p);
    int32_t *refs = calloc((size_t)nb, sizeof *refs);
    int64_t held = 0;
    for (int i = 0; i < NSEQ; i++) {
        if (!seqs[i].live) continue;
        for (int g = 0; g < kv_config_groups(&g_cfg); g++)
            for (int j = 0; j < seqs[i].kv.n_blocks; j++) {
                const int32_t b = kv_seq_table(&seqs[i].kv, g)[j];
                if (b < 0) continue;
                refs[b]++;
                held++;
            }
        ck_assert(seq_ok(p, &seqs[i].kv, seqs[i].toks));
    }
    int64_t used = 0, sum = 0;
    for (int64_t b = 0; b < nb; b++) {
        ck_assert_int_eq(p->blk[b].ref, refs[b]);
        used += refs[b] > 0;
        sum += p->blk[b].ref;
    }
    ck_assert_int_eq(sum, held);
    ck_assert_int_eq(kv_pool_n_used(p), used);
    ck_assert_int_eq(kv_pool_n_used(p) + kv_pool_n_available(p), nb);
    free(refs);
}

/* _i 0: one group; 1: a global and a sliding group (trimmed as the
 * scheduler trims: after each commit). */
START_TEST(test_random_ops) {
    const int swa = _i == 1;
    kv_pool_t *p = swa ? mkpool_swa(48) : mkpool(24);
    const int64_t nb = kv_pool_n_blocks(p);
    rseq_t seqs[NSEQ];
    memset(seqs, 0, sizeof seqs);
    unsigned seed = 12345;
    /* Few base prompts so that prefixes repeat. */
    int32_t base[3][MAXTOK];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < MAXTOK; j++) base[i][j] = (int32_t)(rand_r(&seed) % 5);
    int hits = 0, cows = 0;
    for (int op = 0; op < 4000; op++) {
        int i = rand_r(&seed) % NSEQ;
        rseq_t *s = &seqs[i];
        int what = rand_r(&seed) % 10;
        if (!s->live) {
            /* new sequence: a base prompt with a random tail, prefix attach */
            kv_seq_init(&s->kv);
            int bi = rand_r(&seed) % 3, keep = rand_r(&seed) % 24;
            for (int j = 0; j < MAXTOK; j++) s->toks[j] = j < keep ? base[bi][j] : (int32_t)(rand_r(&seed) % 5);
            int n = 1 + rand_r(&seed) % 24, align = rand_r(&seed) % 4 == 0 ? 3 * BS : 0;
            int64_t got = kv_prefix_attach(p, &s->kv, s->toks, n, align);
            hits += got > 0;
            ck_assert_int_lt(s->kv.n_tokens, n);
            ck_assert_int_eq(got % (align ? align : BS), 0);
            s->live = 1;
            if (extend(p, &s->kv, s->toks, n) == 0) {
                kv_prefix_commit(p, &s->kv, s->toks, s->kv.n_tokens);
                kv_seq_trim(p, &s->kv);
            }
        } else if (what < 5) {
            int64_t n = s->kv.n_tokens + 1 + rand_r(&seed) % 6;
            if (n > MAXTOK) n = MAXTOK;
            int64_t used = kv_pool_n_used(p);
            if (extend(p, &s->kv, s->toks, n) == 0) {
                kv_prefix_commit(p, &s->kv, s->toks, s->kv.n_tokens);
                kv_seq_trim(p, &s->kv);
            } else
                ck_assert_int_ge(kv_pool_n_used(p), used); // failed ops allocate nothing net
        } else if (what < 7) {
            int j = rand_r(&seed) % NSEQ;
            if (!seqs[j].live) {
                ck_assert_int_eq(kv_seq_fork(p, &s->kv, &seqs[j].kv), 0);
                memcpy(seqs[j].toks, s->toks, sizeof s->toks);
                /* the fork diverges after the shared part */
                for (int64_t k = s->kv.n_tokens; k < MAXTOK; k++) seqs[j].toks[k] = (int32_t)(rand_r(&seed) % 5);
                seqs[j].live = 1;
                cows += s->kv.n_tokens % BS != 0;
            }
        } else if (what < 9) {
            kv_seq_release(p, &s->kv);
            s->live = 0;
        } else if (rand_r(&seed) % 20 == 0) {
            kv_pool_clear_cache(p);
        }
        check_invariants(p, seqs);
    }
    ck_assert_int_gt(hits, 50);
    ck_assert_int_gt(cows, 20);
    for (int i = 0; i < NSEQ; i++)
        if (seqs[i].live) kv_seq_release(p, &seqs[i].kv);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    ck_assert_int_eq(kv_pool_n_available(p), nb);
    kv_pool_clear_cache(p);
    ck_assert_int_eq(p->n_free, nb);
    rmpool(p);
}
END_TEST

/* Sliding groups: a long sequence holds its global blocks and a window of
 * sliding ones; released blocks serve prefix hits only where the window
 * before the reuse point is still cached. */
START_TEST(test_sliding_groups) {
    kv_pool_t *p = mkpool_swa(64);
    int32_t toks[MAXTOK];
    for (int i = 0; i < MAXTOK; i++) toks[i] = 100 + i;
    kv_seq_t a, b;
    kv_seq_init(&a);
    /* Prompt in steps of 8, then decode steps of 1: the sliding table never
     * holds more than a window and a step. */
    for (int64_t n = 8; n <= 60; n += n < 40 ? 8 : 1) {
        ck_assert_int_eq(extend(p, &a, toks, n), 0);
        kv_prefix_commit(p, &a, toks, a.n_tokens);
        kv_seq_trim(p, &a);
        ck_assert(seq_ok(p, &a, toks));
        const int64_t held = a.n_blocks - a.swa_lo, step = n < 40 ? 8 : 1;
        ck_assert_int_le(held, (SWA_KEEP + step + BS - 1) / BS + 1);
        ck_assert_int_eq(kv_pool_n_used(p), a.n_blocks + held);
        /* what admission would ask for the next step */
        ck_assert_int_le(kv_seq_peak_needed(p, &a, n + step, step), 2 * ((step + BS - 1) / BS + 1));
    }
    ck_assert_int_eq(a.n_blocks, 15);
    ck_assert_int_eq(a.swa_lo, (60 - SWA_KEEP) / BS); // 13: blocks 13, 14 held
    ck_assert_int_eq(kv_pool_n_used(p), 15 + 2);
    /* A fork shares both tables. */
    ck_assert_int_eq(kv_seq_fork(p, &a, &b), 0);
    int32_t tb[MAXTOK];
    memcpy(tb, toks, sizeof tb);
    tb[60] = 7;
    ck_assert_int_eq(extend(p, &b, tb, 61), 0);
    ck_assert_int_eq(kv_pool_n_used(p), 15 + 2 + 2);
    ck_assert(seq_ok(p, &b, tb));
    ck_assert(seq_ok(p, &a, toks));
    kv_seq_release(p, &b);
    /* Released and cached: the whole prompt (less the last token) is reused. */
    const int32_t sw13 = kv_seq_table(&a, 1)[13];
    ck_assert_int_eq(kv_seq_table(&a, 1)[12], -1);
    kv_seq_release(p, &a);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 57, 0), 56);
    ck_assert_int_eq(b.swa_lo, (56 - SWA_KEEP) / BS);
    ck_assert(seq_ok(p, &b, toks));
    ck_assert_int_eq(extend(p, &b, toks, 57), 0);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_release(p, &b);
    /* Without sliding block 13 (positions 52..55) a prefix ending at 56
     * cannot continue (its window reaches back to 50); one ending at 52
     * needs blocks 11 and 12 only. With align 28, the next multiple down
     * is 28. */
    evict(p, sw13);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 57, 28), 28);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_release(p, &b);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 57, 0), 52);
    ck_assert_int_eq(b.swa_lo, (52 - SWA_KEEP) / BS);
    ck_assert(seq_ok(p, &b, toks));
    ck_assert_int_eq(extend(p, &b, toks, 60), 0);
    ck_assert(seq_ok(p, &b, toks));
    kv_prefix_commit(p, &b, toks, b.n_tokens); // block 13 is cached again
    kv_seq_release(p, &b);
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 57, 0), 56);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_release(p, &b);
    /* Truncating below the window a sequence holds keeps nothing. */
    kv_seq_init(&b);
    ck_assert_int_eq(kv_prefix_attach(p, &b, toks, 57, 40), 40);
    ck_assert(seq_ok(p, &b, toks));
    kv_seq_truncate(p, &b, 36);
    ck_assert_int_eq(b.n_tokens, 0);
    ck_assert_int_eq(b.n_blocks, 0);
    kv_seq_release(p, &b);
    /* Admission and capacity: a 60-token sequence in steps of 8 needs its 15
     * global blocks and (6 + 8) / 4 + 1 = 5 sliding ones at most. */
    ck_assert_int_eq(kv_peak_blocks(p, 52, 60, 1, 8), 15 + 5);
    ck_assert_int_eq(kv_peak_blocks(p, 52, 60, 2, 8), 13 + 2 * 2 + 2 * 5);
    ck_assert_int_eq(kv_pool_token_capacity(p, 8), (64 - 5) * BS);
    ck_assert_int_eq(kv_pool_n_used(p), 0);
    rmpool(p);
}
END_TEST

int main(void) {
    Suite *s = suite_create("kv");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_alloc_free);
    tcase_add_test(tc, test_fork_cow);
    tcase_add_test(tc, test_prefix_reuse_lru);
    tcase_add_test(tc, test_summaries);
    tcase_add_loop_test(tc, test_random_ops, 0, 2);
    tcase_add_test(tc, test_sliding_groups);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
