/* The matcher: a set of parse stacks advanced byte by byte, and the token
 * mask computed by walking the vocabulary trie.
 *
 * Stacks are hash-consed linked lists: node (pos, next) is "at grammar
 * position pos, then continue with stack next", node 0 the empty stack.
 * Equal stacks are the same node, so a state (the sorted ids of its stacks
 * whose top is a byte or a byte set, plus an "a complete sentence ends
 * here" flag) compares with memcmp. The walk over the trie creates nodes
 * speculatively; they are dropped again (the newest nodes head their hash
 * chains, so truncation is exact) when the walk ends.
 *
 * The cost of a mask. Three shortcuts keep it far below a decode step:
 * - the matcher keeps the mask of its state; inside a string or a run of
 *   digits the state after a token is often the state before it;
 * - the grammar caches masks by serialized state (shared by every matcher
 *   of the grammar, e.g. the n choices of a request);
 * - on a walk, the bytes that lead from the walk's start state back to
 *   itself (string characters, digits) are known: a trie subtree whose
 *   edges all fall in those byte classes is accepted whole, without
 *   visiting it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gram_internal.h"

/* A state with more stacks than this keeps the first ones (in canonical
 * order): every kept stack is still completable, so generation stays valid
 * and deterministic; the language only narrows. Reached only by schemas
 * with many overlapping anyOf branches. */
#define GRAM_MAX_STACKS 1024
/* States whose serialized form is longer than this (deep nesting) are not
 * cached: their masks are computed each time. */
#define GRAM_MAX_KEY 4096
/* Compaction of the node table once it holds this many nodes more than the
 * live state needs. */
#define GRAM_COMPACT_SLACK 65536

struct gram_matcher {
    gram_t *g;
    const gram_vocab_t *v;
    /* hash-consed nodes; node 0 is the empty stack */
    uint32_t *npos, *nnext, *nchain, *stamp; // (ncap)
    uint32_t nn, ncap;
    uint32_t *bucket; // (nbucket) heads of the hash chains
    uint32_t nbucket; // power of two
    uint32_t cur_stamp;
    /* the state */
    uint32_t *st; // (n_st) sorted ready stacks
    int n_st, cap_st;
    int acc;
    /* scratch: states along the walk, and the expansion worklist */
    uint32_t *arena;
    size_t arena_n, arena_cap;
    uint32_t *work; // (pos, cont) pairs
    size_t work_cap;
    /* masks */
    int words;
    uint64_t *bits; // (words) the mask of the current state when bits_ok
    int bits_ok;
    uint32_t *key;
    size_t key_cap;
    gram_stats_t stats;
    uint32_t compact_at; // node count that triggers the next compaction
};

/* ---- nodes ------------------------------------------------------------------------- */
static uint32_t hash2(uint32_t a, uint32_t b) {
    uint64_t h = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
    return (uint32_t)(h >> 32);
}

static int rehash(gram_matcher_t *m, uint32_t nb) {
    uint32_t *bk = malloc(sizeof *bk * nb);
    if (!bk) return LC_ENOMEM;
    memset(bk, 0xFF, sizeof *bk * nb);
    /* increasing ids: the newest node ends up at the head of its chain */
    for (uint32_t id = 1; id < m->nn; id++) {
        uint32_t h = hash2(m->npos[id], m->nnext[id]) & (nb - 1);
        m->nchain[id] = bk[h];
        bk[h] = id;
    }
    free(m->bucket);
    m->bucket = bk;
    m->nbucket = nb;
    return 0;
}

/* The node (pos, next), created if needed; UINT32_MAX on OOM. */
static uint32_t intern(gram_matcher_t *m, uint32_t pos, uint32_t next) {
    uint32_t h = hash2(pos, next) & (m->nbucket - 1);
    for (uint32_t id = m->bucket[h]; id != UINT32_MAX; id = m->nchain[id])
        if (m->npos[id] == pos && m->nnext[id] == next) return id;
    if (m->nn == m->ncap) {
        if (m->ncap >= (1u << 30)) return UINT32_MAX;
        uint32_t cap = m->ncap * 2;
        uint32_t *a = realloc(m->npos, sizeof *a * cap);
        if (a) m->npos = a;
        uint32_t *b = realloc(m->nnext, sizeof *b * cap);
        if (b) m->nnext = b;
        uint32_t *c = realloc(m->nchain, sizeof *c * cap);
        if (c) m->nchain = c;
        uint32_t *d = realloc(m->stamp, sizeof *d * cap);
        if (d) m->stamp = d;
        if (!a || !b || !c || !d) return UINT32_MAX;
        m->ncap = cap;
    }
    uint32_t id = m->nn++;
    m->npos[id] = pos;
    m->nnext[id] = next;
    m->stamp[id] = 0;
    if (m->nn > m->nbucket) {
        if (rehash(m, m->nbucket * 2)) {
            m->nn--;
            return UINT32_MAX;
        }
        return id;
    }
    m->nchain[id] = m->bucket[h];
    m->bucket[h] = id;
    return id;
}

/* Drops every node created after mark (they head their chains). */
static void truncate_nodes(gram_matcher_t *m, uint32_t mark) {
    while (m->nn > mark) {
        uint32_t id = --m->nn;
        uint32_t h = hash2(m->npos[id], m->nnext[id]) & (m->nbucket - 1);
        m->bucket[h] = m->nchain[id];
    }
}

/* ---- expansion ------------------------------------------------------------------------ */
static int push_work(gram_matcher_t *m, size_t *n, uint32_t pos, uint32_t cont) {
    if (*n + 2 > m->work_cap) {
        size_t cap = m->work_cap ? m->work_cap * 2 : 256;
        uint32_t *w = realloc(m->work, sizeof *w * cap);
        if (!w) return LC_ENOMEM;
        m->work = w;
        m->work_cap = cap;
    }
    m->work[(*n)++] = pos;
    m->work[(*n)++] = cont;
    return 0;
}

static int arena_reserve(gram_matcher_t *m, size_t extra) {
    if (m->arena_n + extra <= m->arena_cap) return 0;
    size_t cap = m->arena_cap ? m->arena_cap : 1024;
    while (cap < m->arena_n + extra) cap *= 2;
    uint32_t *a = realloc(m->arena, sizeof *a * cap);
    if (!a) return LC_ENOMEM;
    m->arena = a;
    m->arena_cap = cap;
    return 0;
}

static void next_stamp(gram_matcher_t *m) {
    if (++m->cur_stamp == 0) {
        memset(m->stamp, 0, sizeof *m->stamp * m->ncap);
        m->cur_stamp = 1;
    }
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Runs the worklist (n entries pushed by the caller under the current
 * stamp) and appends the ready stacks, sorted, at the arena's end. Returns
 * their count (>= 0) and sets *acc, or a negative status. */
static int closure(gram_matcher_t *m, size_t n, int *acc) {
    const gram_t *g = m->g;
    size_t start = m->arena_n;
    int cnt = 0;
    *acc = 0;
    while (n > 0) {
        uint32_t cont = m->work[--n], pos = m->work[--n];
        uint32_t id = intern(m, pos, cont);
        if (id == UINT32_MAX) return LC_ENOMEM;
        if (m->stamp[id] == m->cur_stamp) continue;
        m->stamp[id] = m->cur_stamp;
        uint32_t e = g->elems[pos];
        switch (GE_TYPE(e)) {
        case GE_END:
        case GE_ALT:
            if (cont == 0) {
                *acc = 1;
            } else if (m->stamp[cont] != m->cur_stamp) {
                if (push_work(m, &n, m->npos[cont], m->nnext[cont])) return LC_ENOMEM;
            }
            break;
        case GE_BYTE:
        case GE_SET:
            if (cnt >= GRAM_MAX_STACKS) break;
            if (arena_reserve(m, 1)) return LC_ENOMEM;
            m->arena[m->arena_n++] = id;
            cnt++;
            break;
        default: { // GE_REF: continue after the reference (a tail call needs no frame)
            uint32_t c2 = cont;
            if (!GE_IS_END(g->elems[pos + 1]) && (c2 = intern(m, pos + 1, cont)) == UINT32_MAX) return LC_ENOMEM;
            uint32_t r = GE_ARG(e);
            /* pushed in reverse so that the first alternative is expanded first */
            for (uint32_t a = g->rule_alt[r + 1]; a > g->rule_alt[r]; a--)
                if (push_work(m, &n, g->alt_start[a - 1], c2)) return LC_ENOMEM;
            break;
        }
        }
    }
    if (cnt > 1) qsort(m->arena + start, (size_t)cnt, sizeof *m->arena, cmp_u32);
    return cnt;
}

static int elem_matches(const gram_t *g, uint32_t e, unsigned char b) {
    if (GE_TYPE(e) == GE_BYTE) return GE_ARG(e) == b;
    const gram_set_t *s = &g->sets[GE_ARG(e)];
    return (int)(s->w[b >> 6] >> (b & 63) & 1);
}

/* The state after byte b from in[0..n) (in may point into the arena):
 * appended at the arena's end. Returns the stack count or a status. */
static int advance(gram_matcher_t *m, size_t in_off, int n, unsigned char b, int *acc) {
    size_t w = 0;
    next_stamp(m);
    for (int i = 0; i < n; i++) {
        uint32_t id = m->arena[in_off + (size_t)i];
        uint32_t pos = m->npos[id];
        if (elem_matches(m->g, m->g->elems[pos], b) && push_work(m, &w, pos + 1, m->nnext[id])) return LC_ENOMEM;
    }
    /* the closure pops from the end: reverse to expand in state order */
    for (size_t i = 0, j = w; i + 2 < j; i += 2, j -= 2) {
        uint32_t p = m->work[i], c = m->work[i + 1];
        m->work[i] = m->work[j - 2];
        m->work[i + 1] = m->work[j - 1];
        m->work[j - 2] = p;
        m->work[j - 1] = c;
    }
    return closure(m, w, acc);
}

/* Union of the bytes any stack of a state accepts. */
static void first_bytes(const gram_matcher_t *m, const uint32_t *st, int n, gram_set_t *u) {
    memset(u, 0, sizeof *u);
    for (int i = 0; i < n; i++) {
        uint32_t e = m->g->elems[m->npos[st[i]]];
        if (GE_TYPE(e) == GE_BYTE)
            u->w[GE_ARG(e) >> 6] |= 1ull << (GE_ARG(e) & 63);
        else
            for (int k = 0; k < 4; k++) u->w[k] |= m->g->sets[GE_ARG(e)].w[k];
    }
}

/* ---- lifecycle --------------------------------------------------------------------------- */
gram_matcher_t *gram_matcher_create(gram_t *g, const gram_vocab_t *v) {
    gram_matcher_t *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->g = g;
    m->v = v;
    m->ncap = 1024;
    m->npos = malloc(sizeof *m->npos * m->ncap);
    m->nnext = malloc(sizeof *m->nnext * m->ncap);
    m->nchain = malloc(sizeof *m->nchain * m->ncap);
    m->stamp = calloc(m->ncap, sizeof *m->stamp);
    m->words = (v->n_tokens + 63) / 64;
    m->bits = calloc((size_t)m->words + 1, sizeof *m->bits);
    if (!m->npos || !m->nnext || !m->nchain || !m->stamp || !m->bits || rehash(m, 1024)) goto fail;
    m->npos[0] = UINT32_MAX; // the empty stack
    m->nnext[0] = 0;
    m->nn = 1;
    m->cur_stamp = 1;
    m->compact_at = GRAM_COMPACT_SLACK;
    /* start: the root rule's alternatives, each continuing with nothing */
    size_t w = 0;
    next_stamp(m);
    for (uint32_t a = g->rule_alt[g->root + 1]; a > g->rule_alt[g->root]; a--)
        if (push_work(m, &w, g->alt_start[a - 1], 0)) goto fail;
    m->arena_n = 0;
    int n = closure(m, w, &m->acc);
    if (n < 0) goto fail;
    m->st = malloc(sizeof *m->st * ((size_t)n + 1));
    if (!m->st) goto fail;
    memcpy(m->st, m->arena, sizeof *m->st * (size_t)n);
    m->n_st = m->cap_st = n;
    gram_retain(g);
    return m;
fail:
    m->g = NULL;
    gram_matcher_destroy(m);
    return NULL;
}

void gram_matcher_destroy(gram_matcher_t *m) {
    if (!m) return;
    if (m->g) gram_release(m->g);
    free(m->npos);
    free(m->nnext);
    free(m->nchain);
    free(m->stamp);
    free(m->bucket);
    free(m->st);
    free(m->arena);
    free(m->work);
    free(m->bits);
    free(m->key);
    free(m);
}

int gram_matcher_can_end(const gram_matcher_t *m) { return m->acc; }
int gram_matcher_done(const gram_matcher_t *m) { return m->acc && m->n_st == 0; }
void gram_matcher_stats(const gram_matcher_t *m, gram_stats_t *out) { *out = m->stats; }

/* ---- advancing ------------------------------------------------------------------------------ */
/* Rebuilds the node table with only the nodes the state uses. Nodes are
 * re-created in id order, and a node's next is older than the node, so the
 * mapping is one pass. */
static int compact(gram_matcher_t *m) {
    uint32_t *map = calloc(m->nn, sizeof *map);
    char *live = calloc(m->nn, 1);
    uint32_t *np = malloc(sizeof *np * m->ncap), *nx = malloc(sizeof *nx * m->ncap);
    int rc = LC_ENOMEM;
    if (!map || !live || !np || !nx) goto out;
    for (int i = 0; i < m->n_st; i++)
        for (uint32_t id = m->st[i]; id && !live[id]; id = m->nnext[id]) live[id] = 1;
    uint32_t k = 1;
    np[0] = UINT32_MAX;
    nx[0] = 0;
    for (uint32_t id = 1; id < m->nn; id++) {
        if (!live[id]) continue;
        np[k] = m->npos[id];
        nx[k] = map[m->nnext[id]];
        map[id] = k++;
    }
    for (int i = 0; i < m->n_st; i++) m->st[i] = map[m->st[i]];
    free(m->npos);
    free(m->nnext);
    m->npos = np;
    m->nnext = nx;
    np = nx = NULL;
    m->nn = k;
    memset(m->stamp, 0, sizeof *m->stamp * m->ncap);
    m->cur_stamp = 1;
    rc = rehash(m, m->nbucket);
    qsort(m->st, (size_t)m->n_st, sizeof *m->st, cmp_u32);
out:
    free(map);
    free(live);
    free(np);
    free(nx);
    return rc;
}

int gram_matcher_accept_bytes(gram_matcher_t *m, const char *s, size_t len) {
    if (len == 0) return 0;
    uint32_t mark = m->nn;
    m->arena_n = 0;
    if (arena_reserve(m, (size_t)m->n_st)) return LC_ENOMEM;
    memcpy(m->arena, m->st, sizeof *m->st * (size_t)m->n_st);
    m->arena_n = (size_t)m->n_st;
    size_t off = 0;
    int n = m->n_st, acc = m->acc;
    for (size_t i = 0; i < len; i++) {
        if (n == 0) {
            truncate_nodes(m, mark);
            return LC_EINVAL;
        }
        size_t next_off = m->arena_n;
        n = advance(m, off, n, (unsigned char)s[i], &acc);
        if (n < 0) {
            truncate_nodes(m, mark);
            return n;
        }
        /* keep only the newest state at the front of the arena */
        memmove(m->arena, m->arena + next_off, sizeof *m->arena * (size_t)n);
        m->arena_n = (size_t)n;
        off = 0;
    }
    if (n == 0 && !acc) {
        truncate_nodes(m, mark);
        return LC_EINVAL;
    }
    int same = n == m->n_st && acc == m->acc && !memcmp(m->arena, m->st, sizeof *m->st * (size_t)n);
    if (n > m->cap_st) {
        uint32_t *st = realloc(m->st, sizeof *st * (size_t)n);
        if (!st) return LC_ENOMEM;
        m->st = st;
        m->cap_st = n;
    }
    memcpy(m->st, m->arena, sizeof *m->st * (size_t)n);
    m->n_st = n;
    m->acc = acc;
    if (!same) m->bits_ok = 0;
    /* Garbage from expansions accumulates; rebuild now and then. */
    if (m->nn > m->compact_at) {
        int rc = compact(m);
        if (rc) return rc;
        m->compact_at = m->nn * 2 > GRAM_COMPACT_SLACK ? m->nn * 2 : GRAM_COMPACT_SLACK;
    }
    return 0;
}

int gram_matcher_accept_token(gram_matcher_t *m, int32_t token) {
    const gram_vocab_t *v = m->v;
    if (token < 0 || token >= v->n_tokens) return LC_EINVAL;
    uint32_t len = v->off[token + 1] - v->off[token];
    if (len == 0) return LC_EINVAL;
    return gram_matcher_accept_bytes(m, (const char *)v->blob + v->off[token], len);
}

/* ---- the trie walk ------------------------------------------------------------------------------ */
typedef struct {
    gram_matcher_t *m;
    uint64_t *bits;
    size_t root_off; // the start state in the arena
    int root_n;
    uint32_t fixed_cls; // byte classes leading from the start state back to it
} walk_t;

static void set_range(const gram_vocab_t *v, uint64_t *bits, uint32_t lo, uint32_t hi) {
    for (uint32_t i = lo; i < hi; i++) {
        int32_t t = v->sorted[i];
        bits[t >> 6] |= 1ull << (t & 63);
    }
}

static int walk(walk_t *w, uint32_t node, size_t off, int n, int acc) {
    gram_matcher_t *m = w->m;
    const gram_vocab_t *v = m->v;
    const gram_trie_node_t *nd = &v->nodes[node];
    if (nd->n_end && (n > 0 || acc)) set_range(v, w->bits, nd->lo, nd->lo + nd->n_end);
    if (n == 0 || nd->n_child == 0) return 0;
    if (w->fixed_cls && node != 0 && (nd->cls & ~w->fixed_cls) == 0 && n == w->root_n &&
        !memcmp(m->arena + off, m->arena + w->root_off, sizeof *m->arena * (size_t)n)) {
        set_range(v, w->bits, nd->lo + nd->n_end, nd->hi);
        return 0;
    }
    gram_set_t u;
    first_bytes(m, m->arena + off, n, &u);
    for (uint32_t c = nd->child; c < nd->child + nd->n_child; c++) {
        unsigned char b = v->nodes[c].byte;
        if (!(u.w[b >> 6] >> (b & 63) & 1)) continue;
        size_t mark = m->arena_n;
        int acc2, n2 = advance(m, off, n, b, &acc2);
        if (n2 < 0) return n2;
        int rc = walk(w, c, mark, n2, acc2);
        m->arena_n = mark;
        if (rc) return rc;
    }
    return 0;
}

/* Byte classes c such that every byte of c leads from the start state back
 * to exactly the start state. */
static int fixed_classes(walk_t *w, uint32_t *out) {
    gram_matcher_t *m = w->m;
    gram_set_t u, fixed = {{0}};
    first_bytes(m, m->arena + w->root_off, w->root_n, &u);
    for (int b = 0; b < 256; b++) {
        if (!(u.w[b >> 6] >> (b & 63) & 1)) continue;
        size_t mark = m->arena_n;
        int acc2, n2 = advance(m, w->root_off, w->root_n, (unsigned char)b, &acc2);
        if (n2 < 0) return n2;
        if (n2 == w->root_n && acc2 == m->acc &&
            !memcmp(m->arena + mark, m->arena + w->root_off, sizeof *m->arena * (size_t)n2))
            fixed.w[b >> 6] |= 1ull << (b & 63);
        m->arena_n = mark;
    }
    uint32_t cls_all = 0, cls_out = 0;
    for (int b = 0; b < 256; b++) {
        int c = gram_byte_class((unsigned char)b);
        cls_all |= 1u << c;
        if (!(fixed.w[b >> 6] >> (b & 63) & 1)) cls_out |= 1u << c;
    }
    *out = cls_all & ~cls_out;
    return 0;
}

static int compute_mask(gram_matcher_t *m, uint64_t *bits) {
    memset(bits, 0, sizeof *bits * (size_t)m->words);
    uint32_t mark = m->nn;
    m->arena_n = 0;
    if (arena_reserve(m, (size_t)m->n_st)) return LC_ENOMEM;
    memcpy(m->arena, m->st, sizeof *m->st * (size_t)m->n_st);
    m->arena_n = (size_t)m->n_st;
    walk_t w = {.m = m, .bits = bits, .root_off = 0, .root_n = m->n_st};
    int rc = m->n_st ? fixed_classes(&w, &w.fixed_cls) : 0;
    if (!rc) rc = walk(&w, 0, 0, m->n_st, m->acc);
    truncate_nodes(m, mark);
    m->stats.walks++;
    return rc;
}

/* ---- the mask cache -------------------------------------------------------------------------------- */
/* Serializes the state: acc, count, then each stack's positions top to
 * bottom with its depth first. Returns the length, or 0 when too long. */
static size_t serialize(gram_matcher_t *m) {
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            if (n > GRAM_MAX_KEY) return 0;
            if (n > m->key_cap) {
                uint32_t *k = realloc(m->key, sizeof *k * n);
                if (!k) return 0;
                m->key = k;
                m->key_cap = n;
            }
        }
        size_t at = 0;
        if (pass) m->key[at] = (uint32_t)m->acc, m->key[at + 1] = (uint32_t)m->n_st;
        at += 2;
        for (int i = 0; i < m->n_st; i++) {
            size_t d0 = at++;
            uint32_t d = 0;
            for (uint32_t id = m->st[i]; id; id = m->nnext[id], d++, at++)
                if (pass) m->key[at] = m->npos[id];
            if (pass) m->key[d0] = d;
            if (at > GRAM_MAX_KEY + 1) return 0;
        }
        n = at;
    }
    return n;
}

static uint64_t hash_key(const uint32_t *k, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ k[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

#define GRAM_CACHE_BYTES ((size_t)4 << 20)
#define GRAM_CACHE_PROBE 8

/* 1 and the mask in bits on a hit, 0 on a miss. */
static int cache_get(gram_matcher_t *m, uint64_t h, size_t klen, uint64_t *bits) {
    gram_t *g = m->g;
    int hit = 0;
    pthread_mutex_lock(&g->lock);
    if (g->cache && g->cache_vocab == m->v) {
        for (int i = 0; i < GRAM_CACHE_PROBE && !hit; i++) {
            gram_cache_ent_t *e = &g->cache[(h + (uint64_t)i) & (uint64_t)(g->cache_cap - 1)];
            if (e->key && e->hash == h && e->key_len == klen && !memcmp(e->key, m->key, sizeof *m->key * klen)) {
                memcpy(bits, e->bits, sizeof *bits * (size_t)m->words);
                hit = 1;
            }
        }
    }
    pthread_mutex_unlock(&g->lock);
    return hit;
}

static void cache_put(gram_matcher_t *m, uint64_t h, size_t klen, const uint64_t *bits) {
    gram_t *g = m->g;
    pthread_mutex_lock(&g->lock);
    if (!g->cache_vocab) g->cache_vocab = m->v;
    if (g->cache_vocab != m->v) goto out;
    if (!g->cache) {
        size_t per = sizeof *bits * (size_t)m->words + 64;
        int cap = 16;
        while (cap < 1024 && (size_t)cap * 2 * per <= GRAM_CACHE_BYTES) cap *= 2;
        if (!(g->cache = calloc((size_t)cap, sizeof *g->cache))) goto out;
        g->cache_cap = cap;
    }
    gram_cache_ent_t *e = NULL;
    for (int i = 0; i < GRAM_CACHE_PROBE && !e; i++) {
        gram_cache_ent_t *s = &g->cache[(h + (uint64_t)i) & (uint64_t)(g->cache_cap - 1)];
        if (!s->key) e = s;
    }
    if (!e) e = &g->cache[(h + (uint64_t)(g->cache_clock++ % GRAM_CACHE_PROBE)) & (uint64_t)(g->cache_cap - 1)];
    uint32_t *k = malloc(sizeof *k * klen);
    uint64_t *b = e->bits ? e->bits : malloc(sizeof *b * (size_t)m->words);
    if (!k || !b) {
        free(k);
        if (!e->bits) free(b);
        goto out;
    }
    free(e->key);
    memcpy(k, m->key, sizeof *k * klen);
    memcpy(b, bits, sizeof *b * (size_t)m->words);
    e->key = k;
    e->key_len = (uint32_t)klen;
    e->hash = h;
    e->bits = b;
out:
    pthread_mutex_unlock(&g->lock);
}

/* Makes m->bits the mask of the current state. */
static int current_mask(gram_matcher_t *m) {
    if (m->bits_ok) {
        m->stats.same_state++;
        return 0;
    }
    size_t klen = serialize(m);
    uint64_t h = klen ? hash_key(m->key, klen) : 0;
    if (klen && cache_get(m, h, klen, m->bits)) {
        m->stats.cache_hits++;
    } else {
        int rc = compute_mask(m, m->bits);
        if (rc) return rc;
        if (klen) cache_put(m, h, klen, m->bits);
    }
    m->bits_ok = 1;
    return 0;
}

int gram_matcher_mask(gram_matcher_t *m, uint64_t *bits, int n_vocab) {
    int rc = current_mask(m);
    if (rc) return rc;
    int words = (n_vocab + 63) / 64;
    for (int i = 0; i < words; i++) bits[i] = i < m->words ? m->bits[i] : 0;
    /* bits past either vocabulary are cleared */
    int lim = n_vocab < m->v->n_tokens ? n_vocab : m->v->n_tokens;
    for (int t = lim; t < words * 64; t++) bits[t >> 6] &= ~(1ull << (t & 63));
    return 0;
}

int gram_matcher_apply(gram_matcher_t *m, float *logits, int n_vocab, const int32_t *eos, int n_eos) {
    int rc = current_mask(m);
    if (rc) return rc;
    float keep[8];
    int ne = n_eos < 8 ? n_eos : 8, allowed = 0;
    for (int i = 0; i < ne; i++) keep[i] = eos[i] >= 0 && eos[i] < n_vocab ? logits[eos[i]] : 0;
    int lim = n_vocab < m->v->n_tokens ? n_vocab : m->v->n_tokens;
    for (int w = 0; w * 64 < n_vocab; w++) {
        uint64_t word = 0;
        if (w * 64 < lim) {
            word = m->bits[w];
            if (lim - w * 64 < 64) word &= (1ull << (lim - w * 64)) - 1;
        }
        int end = n_vocab - w * 64 < 64 ? n_vocab - w * 64 : 64;
        if (word) allowed = 1;
        if (end == 64 && word == ~0ull) continue;
        for (int b = 0; b < end; b++)
            if (!(word >> b & 1)) logits[w * 64 + b] = -INFINITY;
    }
    if (m->acc)
        for (int i = 0; i < ne; i++)
            if (eos[i] >= 0 && eos[i] < n_vocab) {
                logits[eos[i]] = keep[i];
                allowed = 1;
            }
    return allowed ? 0 : LC_EINVAL;
}
