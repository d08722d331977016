/* Building and checking grammars, and the per-vocabulary token trie.
 *
 * The builder keeps rules as lists of alternatives; gram_builder_finish
 * checks them and lays them out flat (gram_internal.h). The checks are
 * linear-time worklist passes, so a hostile grammar costs time in
 * proportion to its (bounded) size:
 * - productive rules: a rule is productive when one of its alternatives
 *   has only productive elements. Alternatives that are not are dropped,
 *   which is what guarantees that every state a matcher can reach has a
 *   completion (generation can always end);
 * - nullable rules, then left recursion: an edge r -> s when an
 *   alternative of r can reach a reference to s without consuming a byte;
 *   any cycle is refused, since expanding it would never stop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/gram_internal.h"
#include "model/tokenizer.h"

/* ============================================================================
 * Builder
 * ========================================================================== */
typedef struct {
    uint32_t *e;
    int n, cap;
} gvec_t;

typedef struct {
    gvec_t *alts;
    int n_alts, cap_alts;
} grule_t;

struct gram_builder {
    gram_limits_t lim;
    grule_t *rules;
    int n_rules, cap_rules;
    gram_set_t *sets;
    int n_sets, cap_sets;
    long n_elems;
};

void gram_set_add_range(gram_set_t *s, int lo, int hi) {
    for (int b = lo < 0 ? 0 : lo; b <= hi && b < 256; b++) s->w[b >> 6] |= 1ull << (b & 63);
}

static int grow(void **p, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int c = *cap ? *cap : 8;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * elem);
    if (!q) return LC_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

gram_builder_t *gram_builder_create(const gram_limits_t *lim) {
    gram_builder_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->lim.max_rules = lim && lim->max_rules > 0 ? lim->max_rules : 65536;
    b->lim.max_elems = lim && lim->max_elems > 0 ? lim->max_elems : 1 << 20;
    if (b->lim.max_elems > (1 << 28)) b->lim.max_elems = 1 << 28;
    return b;
}

void gram_builder_destroy(gram_builder_t *b) {
    if (!b) return;
    for (int r = 0; r < b->n_rules; r++) {
        for (int a = 0; a < b->rules[r].n_alts; a++) free(b->rules[r].alts[a].e);
        free(b->rules[r].alts);
    }
    free(b->rules);
    free(b->sets);
    free(b);
}

int gram_rule(gram_builder_t *b) {
    if (b->n_rules >= b->lim.max_rules) return LC_ETOOLONG;
    if (grow((void **)&b->rules, &b->cap_rules, b->n_rules + 1, sizeof *b->rules)) return LC_ENOMEM;
    memset(&b->rules[b->n_rules], 0, sizeof *b->rules);
    return b->n_rules++;
}

int gram_alt(gram_builder_t *b, int rule) {
    if (rule < 0 || rule >= b->n_rules) return LC_EINVAL;
    grule_t *r = &b->rules[rule];
    if (b->n_elems + 1 > b->lim.max_elems) return LC_ETOOLONG;
    if (grow((void **)&r->alts, &r->cap_alts, r->n_alts + 1, sizeof *r->alts)) return LC_ENOMEM;
    memset(&r->alts[r->n_alts++], 0, sizeof *r->alts);
    b->n_elems++; // its end marker
    return 0;
}

static int add_elem(gram_builder_t *b, int rule, uint32_t e) {
    if (rule < 0 || rule >= b->n_rules || b->rules[rule].n_alts == 0) return LC_EINVAL;
    if (b->n_elems + 1 > b->lim.max_elems) return LC_ETOOLONG;
    gvec_t *v = &b->rules[rule].alts[b->rules[rule].n_alts - 1];
    if (grow((void **)&v->e, &v->cap, v->n + 1, sizeof *v->e)) return LC_ENOMEM;
    v->e[v->n++] = e;
    b->n_elems++;
    return 0;
}

int gram_add_byte(gram_builder_t *b, int rule, unsigned char c) { return add_elem(b, rule, GE(GE_BYTE, c)); }

int gram_add_bytes(gram_builder_t *b, int rule, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int rc = gram_add_byte(b, rule, (unsigned char)s[i]);
        if (rc) return rc;
    }
    return 0;
}

int gram_add_set(gram_builder_t *b, int rule, const gram_set_t *s) {
    int k = 0;
    /* One-byte sets become bytes; equal sets are stored once (there are few:
     * the compiler uses a handful of character classes). */
    int cnt = 0, last = 0;
    for (int i = 0; i < 256; i++)
        if (s->w[i >> 6] >> (i & 63) & 1) cnt++, last = i;
    if (cnt == 1) return gram_add_byte(b, rule, (unsigned char)last);
    for (k = 0; k < b->n_sets; k++)
        if (!memcmp(&b->sets[k], s, sizeof *s)) break;
    if (k == b->n_sets) {
        if (b->n_sets >= (1 << 20)) return LC_ETOOLONG;
        if (grow((void **)&b->sets, &b->cap_sets, b->n_sets + 1, sizeof *b->sets)) return LC_ENOMEM;
        b->sets[b->n_sets++] = *s;
    }
    return add_elem(b, rule, GE(GE_SET, k));
}

int gram_add_ref(gram_builder_t *b, int rule, int ref) {
    if (ref < 0 || ref >= b->n_rules) return LC_EINVAL;
    return add_elem(b, rule, GE(GE_REF, ref));
}

/* ============================================================================
 * Finishing: productive, nullable, left recursion, layout
 * ========================================================================== */
/* The finishing passes' working state, freed by fin_free. Alternatives are
 * numbered over the whole grammar: rule r owns alt0[r] .. alt0[r + 1]. */
typedef struct {
    const gram_builder_t *b;
    int n_alts;
    int *alt0;  // (n_rules + 1) first alternative of each rule
    int *need;  // (n_alts) fixed_point's counter per alternative
    int *occ0;  // (n_rules + 2) rule s is referenced from occ[occ0[s] .. occ0[s + 1])
    int *occ;   // (references) the alternative holding each reference
    char *prod; // (n_rules) the rule derives some finite string
    char *null; // (n_rules) the rule derives the empty string, over kept alternatives
    char *keep; // (n_alts) every reference productive and no empty byte set
} gfin_t;

/* A need no number of decrements (one per reference) can bring to zero. */
#define NEED_NEVER (1 << 29)

static void fin_free(gfin_t *f) {
    free(f->alt0);
    free(f->need);
    free(f->occ0);
    free(f->occ);
    free(f->prod);
    free(f->null);
    free(f->keep);
}

static int set_empty(const gram_set_t *s) { return !(s->w[0] | s->w[1] | s->w[2] | s->w[3]); }

/* Worklist fixed point: rule r gets flag[r] = 1 when an alternative has
 * need[a] == 0, where need counts the references to rules without the flag
 * (NEED_NEVER for an alternative that can never qualify). */
static int fixed_point(const gfin_t *f, char *flag) {
    const int n_rules = f->b->n_rules, *alt0 = f->alt0;
    int *queue = malloc(sizeof(int) * (size_t)(n_rules + 1));
    if (!queue) return LC_ENOMEM;
    int qh = 0, qt = 0;
    for (int r = 0; r < n_rules; r++)
        for (int a = alt0[r]; a < alt0[r + 1] && !flag[r]; a++)
            if (f->need[a] == 0) {
                flag[r] = 1;
                queue[qt++] = r;
            }
    while (qh < qt) {
        int s = queue[qh++];
        for (int i = f->occ0[s]; i < f->occ0[s + 1]; i++) {
            int a = f->occ[i];
            if (--f->need[a] != 0) continue;
            /* the rule owning alternative a */
            int lo = 0, hi = n_rules - 1;
            while (lo < hi) {
                int mid = (lo + hi + 1) / 2;
                if (alt0[mid] <= a)
                    lo = mid;
                else
                    hi = mid - 1;
            }
            if (!flag[lo]) {
                flag[lo] = 1;
                queue[qt++] = lo;
            }
        }
    }
    free(queue);
    return 0;
}

/* Numbers the alternatives and lists, per rule, the alternatives that
 * reference it (a counting sort by the referenced rule). */
static int fin_index(gfin_t *f) {
    const gram_builder_t *b = f->b;
    int n_refs = 0;
    for (int r = 0; r < b->n_rules; r++) {
        f->n_alts += b->rules[r].n_alts;
        for (int a = 0; a < b->rules[r].n_alts; a++)
            for (int i = 0; i < b->rules[r].alts[a].n; i++) n_refs += GE_TYPE(b->rules[r].alts[a].e[i]) == GE_REF;
    }
    f->alt0 = malloc(sizeof(int) * (size_t)(b->n_rules + 1));
    f->need = malloc(sizeof(int) * (size_t)(f->n_alts + 1));
    f->occ0 = calloc((size_t)b->n_rules + 2, sizeof(int));
    f->occ = malloc(sizeof(int) * (size_t)(n_refs + 1));
    f->prod = calloc((size_t)b->n_rules + 1, 1);
    f->null = calloc((size_t)b->n_rules + 1, 1);
    if (!f->alt0 || !f->need || !f->occ0 || !f->occ || !f->prod || !f->null) return LC_ENOMEM;
    int k = 0;
    for (int r = 0; r < b->n_rules; r++) {
        f->alt0[r] = k;
        k += b->rules[r].n_alts;
        for (int a = 0; a < b->rules[r].n_alts; a++)
            for (int i = 0; i < b->rules[r].alts[a].n; i++) {
                uint32_t e = b->rules[r].alts[a].e[i];
                if (GE_TYPE(e) == GE_REF) f->occ0[GE_ARG(e) + 1]++;
            }
    }
    f->alt0[b->n_rules] = k;
    for (int r = 0; r < b->n_rules; r++) f->occ0[r + 1] += f->occ0[r];
    int *fill = calloc((size_t)b->n_rules + 1, sizeof(int));
    if (!fill) return LC_ENOMEM;
    for (int r = 0; r < b->n_rules; r++)
        for (int a = 0; a < b->rules[r].n_alts; a++)
            for (int i = 0; i < b->rules[r].alts[a].n; i++) {
                uint32_t e = b->rules[r].alts[a].e[i];
                if (GE_TYPE(e) == GE_REF) f->occ[f->occ0[GE_ARG(e)] + fill[GE_ARG(e)]++] = f->alt0[r] + a;
            }
    free(fill);
    return 0;
}

/* prod; LC_EINVAL when the root derives nothing finite. */
static int fin_productive(gfin_t *f, int root, char *err, size_t errlen) {
    const gram_builder_t *b = f->b;
    for (int r = 0; r < b->n_rules; r++)
        for (int a = 0; a < b->rules[r].n_alts; a++) {
            const gvec_t *v = &b->rules[r].alts[a];
            int n = 0, never = 0;
            for (int i = 0; i < v->n; i++) {
                uint32_t e = v->e[i];
                if (GE_TYPE(e) == GE_REF) n++;
                if (GE_TYPE(e) == GE_SET && set_empty(&b->sets[GE_ARG(e)])) never = 1;
            }
            f->need[f->alt0[r] + a] = never ? NEED_NEVER : n;
        }
    int rc = fixed_point(f, f->prod);
    if (rc) return rc;
    if (!f->prod[root]) {
        snprintf(err, errlen, "no finite value satisfies this schema (an empty enum, or references that only recurse)");
        return LC_EINVAL;
    }
    return 0;
}

static int fin_keep(gfin_t *f) {
    const gram_builder_t *b = f->b;
    f->keep = malloc((size_t)f->n_alts + 1);
    if (!f->keep) return LC_ENOMEM;
    for (int r = 0; r < b->n_rules; r++)
        for (int a = 0; a < b->rules[r].n_alts; a++) {
            const gvec_t *v = &b->rules[r].alts[a];
            int ok = 1;
            for (int i = 0; i < v->n && ok; i++) {
                uint32_t e = v->e[i];
                if (GE_TYPE(e) == GE_REF && !f->prod[GE_ARG(e)]) ok = 0;
                if (GE_TYPE(e) == GE_SET && set_empty(&b->sets[GE_ARG(e)])) ok = 0;
            }
            f->keep[f->alt0[r] + a] = (char)ok;
        }
    return 0;
}

/* null, over kept alternatives: a byte, or a dropped alternative, is never
 * nullable. */
static int fin_nullable(gfin_t *f) {
    const gram_builder_t *b = f->b;
    for (int r = 0; r < b->n_rules; r++)
        for (int a = 0; a < b->rules[r].n_alts; a++) {
            const gvec_t *v = &b->rules[r].alts[a];
            int n = 0, never = !f->keep[f->alt0[r] + a];
            for (int i = 0; i < v->n; i++) {
                if (GE_TYPE(v->e[i]) == GE_REF)
                    n++;
                else
                    never = 1;
            }
            f->need[f->alt0[r] + a] = never ? NEED_NEVER : n;
        }
    return fixed_point(f, f->null);
}

/* The target of rule r's edge number cur ("reaches without a byte"), or -1
 * past its last edge. Edges come in a fixed order of (kept alternative,
 * element) pairs: the leading references of an alternative, up to and
 * including the first one that is not nullable. */
static int nth_edge(const gfin_t *f, int r, int cur) {
    const grule_t *rule = &f->b->rules[r];
    int idx = 0;
    for (int a = 0; a < rule->n_alts; a++) {
        if (!f->keep[f->alt0[r] + a]) continue;
        const gvec_t *v = &rule->alts[a];
        for (int i = 0; i < v->n; i++) {
            if (GE_TYPE(v->e[i]) != GE_REF) break;
            if (idx++ == cur) return (int)GE_ARG(v->e[i]);
            if (!f->null[GE_ARG(v->e[i])]) break;
        }
    }
    return -1;
}

/* LC_EINVAL on a cycle of edges: an iterative DFS from every productive
 * rule, a stack entry being a rule and the number of its next edge. */
static int check_left_recursion(const gfin_t *f, char *err, size_t errlen) {
    const int n_rules = f->b->n_rules;
    int *color = calloc((size_t)n_rules + 1, sizeof(int));
    int *dfs = malloc(sizeof(int) * 2 * (size_t)(n_rules + 1));
    int rc = 0;
    if (!color || !dfs) {
        rc = LC_ENOMEM;
        goto out;
    }
    for (int s0 = 0; s0 < n_rules; s0++) {
        if (color[s0] || !f->prod[s0]) continue;
        dfs[0] = s0;
        dfs[1] = 0;
        color[s0] = 1;
        int sp = 1;
        while (sp > 0) {
            int r = dfs[2 * (sp - 1)], *cur = &dfs[2 * (sp - 1) + 1];
            int next = nth_edge(f, r, *cur);
            if (next < 0) {
                color[r] = 2;
                sp--;
                continue;
            }
            (*cur)++;
            if (color[next] == 1) {
                snprintf(err, errlen, "a reference cycle consumes no input (left recursion)");
                rc = LC_EINVAL;
                goto out;
            }
            if (color[next] == 0) {
                color[next] = 1;
                dfs[2 * sp] = next;
                dfs[2 * sp + 1] = 0;
                sp++;
            }
        }
    }
out:
    free(color);
    free(dfs);
    return rc;
}

/* The kept alternatives laid out flat (gram_internal.h); NULL on OOM. */
static gram_t *fin_layout(const gfin_t *f, int root) {
    const gram_builder_t *b = f->b;
    gram_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    atomic_init(&g->refs, 1);
    pthread_mutex_init(&g->lock, NULL);
    g->n_rules = b->n_rules;
    g->root = root;
    long ne = 0;
    int na = 0;
    for (int r = 0; r < b->n_rules; r++)
        for (int a = 0; a < b->rules[r].n_alts; a++)
            if (f->keep[f->alt0[r] + a]) ne += b->rules[r].alts[a].n + 1, na++;
    g->elems = malloc(sizeof(uint32_t) * (size_t)(ne + 1));
    g->alt_start = malloc(sizeof(uint32_t) * (size_t)(na + 1));
    g->rule_alt = malloc(sizeof(uint32_t) * (size_t)(b->n_rules + 1));
    g->sets = malloc(sizeof(gram_set_t) * (size_t)(b->n_sets + 1));
    if (!g->elems || !g->alt_start || !g->rule_alt || !g->sets) {
        gram_release(g);
        return NULL;
    }
    if (b->n_sets) memcpy(g->sets, b->sets, sizeof(gram_set_t) * (size_t)b->n_sets);
    g->n_sets = b->n_sets;
    int pos = 0, ai = 0;
    for (int r = 0; r < b->n_rules; r++) {
        const grule_t *rule = &b->rules[r];
        const char *keep = f->keep + f->alt0[r];
        g->rule_alt[r] = (uint32_t)ai;
        int last = -1;
        for (int a = 0; a < rule->n_alts; a++)
            if (keep[a]) last = a;
        for (int a = 0; a < rule->n_alts; a++) {
            if (!keep[a]) continue;
            g->alt_start[ai++] = (uint32_t)pos;
            if (rule->alts[a].n) // an empty alternative has no array
                memcpy(g->elems + pos, rule->alts[a].e, sizeof(uint32_t) * (size_t)rule->alts[a].n);
            pos += rule->alts[a].n;
            g->elems[pos++] = GE(a == last ? GE_END : GE_ALT, 0);
        }
    }
    g->rule_alt[b->n_rules] = (uint32_t)ai;
    g->elems[pos] = GE(GE_END, 0);
    g->n_elems = pos;
    return g;
}

gram_t *gram_builder_finish(gram_builder_t *b, int root, int *status, char *err, size_t errlen) {
    gfin_t f = {.b = b};
    gram_t *g = NULL;
    int rc;
    if (root < 0 || root >= b->n_rules) {
        snprintf(err, errlen, "grammar has no start rule");
        rc = LC_EINVAL;
        goto out;
    }
    if ((rc = fin_index(&f)) || (rc = fin_productive(&f, root, err, errlen)) || (rc = fin_keep(&f)) ||
        (rc = fin_nullable(&f)) || (rc = check_left_recursion(&f, err, errlen)))
        goto out;
    g = fin_layout(&f, root);
    if (!g) rc = LC_ENOMEM;
out:
    fin_free(&f);
    if (rc == LC_ENOMEM) snprintf(err, errlen, "out of memory");
    if (status) *status = rc;
    return g;
}

void gram_retain(gram_t *g) { atomic_fetch_add(&g->refs, 1); }

void gram_release(gram_t *g) {
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    for (int i = 0; g->cache && i < g->cache_cap; i++) {
        free(g->cache[i].key);
        free(g->cache[i].bits);
    }
    free(g->cache);
    pthread_mutex_destroy(&g->lock);
    free(g->elems);
    free(g->sets);
    free(g->alt_start);
    free(g->rule_alt);
    free(g);
}

int gram_n_rules(const gram_t *g) { return g->n_rules; }
int gram_n_elems(const gram_t *g) { return g->n_elems; }

/* ============================================================================
 * Vocabulary trie
 * ========================================================================== */
int gram_byte_class(unsigned char b) {
    if (b == '\t') return 1;
    if (b == '\n') return 2;
    if (b == '\r') return 3;
    if (b < 0x20) return 0;
    if (b == ' ') return 4;
    if (b == '"') return 5;
    if (b == '\\') return 6;
    if (b >= '0' && b <= '9') return 7;
    if (b >= 'a' && b <= 'z') return 8;
    if (b >= 'A' && b <= 'Z') return 9;
    if (b < 0x7F) return 10;
    if (b == 0x7F) return 11;
    if (b < 0xC0) return 12;
    if (b < 0xC2) return 13;
    if (b < 0xE0) return 14;
    if (b < 0xF0) return 15;
    if (b < 0xF5) return 16;
    return 17;
}

/* Tokens longer than this are left out of the trie (never allowed). */
#define GRAM_MAX_TOKEN_LEN 1024

/* qsort has no context argument; the vocabulary travels in a thread-local. */
static _Thread_local const gram_vocab_t *tl_sort_vocab;

static int cmp_tok(const void *pa, const void *pb) {
    const gram_vocab_t *v = tl_sort_vocab;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    uint32_t la = v->off[a + 1] - v->off[a], lb = v->off[b + 1] - v->off[b];
    int c = memcmp(v->blob + v->off[a], v->blob + v->off[b], la < lb ? la : lb);
    if (c) return c;
    if (la != lb) return la < lb ? -1 : 1;
    return a < b ? -1 : a > b;
}

gram_vocab_t *gram_vocab_create_from(int n_tokens, const char *const *pieces, const size_t *lens) {
    gram_vocab_t *v = calloc(1, sizeof *v);
    uint32_t *depth = NULL;
    if (!v || n_tokens < 0) goto fail;
    v->n_tokens = n_tokens;
    size_t total = 0;
    for (int t = 0; t < n_tokens; t++)
        if (pieces[t] && lens[t] > 0 && lens[t] <= GRAM_MAX_TOKEN_LEN) total += lens[t];
    if (total > UINT32_MAX) goto fail;
    v->off = malloc(sizeof(uint32_t) * ((size_t)n_tokens + 1));
    v->blob = malloc(total + 1);
    v->sorted = malloc(sizeof(int32_t) * ((size_t)n_tokens + 1));
    if (!v->off || !v->blob || !v->sorted) goto fail;
    uint32_t at = 0;
    for (int t = 0; t < n_tokens; t++) {
        v->off[t] = at;
        if (pieces[t] && lens[t] > 0 && lens[t] <= GRAM_MAX_TOKEN_LEN) {
            memcpy(v->blob + at, pieces[t], lens[t]);
            at += (uint32_t)lens[t];
            v->sorted[v->n_in++] = t;
            if ((int)lens[t] > v->max_len) v->max_len = (int)lens[t];
        }
    }
    v->off[n_tokens] = at;
    tl_sort_vocab = v;
    qsort(v->sorted, (size_t)v->n_in, sizeof *v->sorted, cmp_tok);

    /* Breadth-first: node i's children are appended as one run. */
    int cap = 1024;
    v->nodes = malloc(sizeof *v->nodes * (size_t)cap);
    depth = malloc(sizeof *depth * (size_t)cap);
    if (!v->nodes || !depth) goto fail;
    memset(&v->nodes[0], 0, sizeof v->nodes[0]);
    v->nodes[0].hi = (uint32_t)v->n_in;
    depth[0] = 0;
    v->n_nodes = 1;
    for (int i = 0; i < v->n_nodes; i++) {
        gram_trie_node_t nd = v->nodes[i];
        uint32_t d = depth[i], lo = nd.lo;
        while (lo < nd.hi && v->off[v->sorted[lo] + 1] - v->off[v->sorted[lo]] == d) lo++;
        v->nodes[i].n_end = lo - nd.lo;
        v->nodes[i].child = (uint32_t)v->n_nodes;
        int nc = 0;
        while (lo < nd.hi) {
            unsigned char c = v->blob[v->off[v->sorted[lo]] + d];
            uint32_t hi = lo + 1;
            while (hi < nd.hi && v->blob[v->off[v->sorted[hi]] + d] == c) hi++;
            if (v->n_nodes == cap) {
                cap *= 2;
                gram_trie_node_t *nn = realloc(v->nodes, sizeof *nn * (size_t)cap);
                uint32_t *nd2 = realloc(depth, sizeof *nd2 * (size_t)cap);
                if (nn) v->nodes = nn;
                if (nd2) depth = nd2;
                if (!nn || !nd2) goto fail;
            }
            gram_trie_node_t *ch = &v->nodes[v->n_nodes];
            memset(ch, 0, sizeof *ch);
            ch->lo = lo;
            ch->hi = hi;
            ch->byte = c;
            depth[v->n_nodes++] = d + 1;
            nc++;
            lo = hi;
        }
        v->nodes[i].n_child = (uint16_t)nc;
    }
    /* byte classes below each node, bottom-up (children follow parents) */
    for (int i = v->n_nodes - 1; i >= 0; i--) {
        gram_trie_node_t *nd = &v->nodes[i];
        uint32_t cls = 0;
        for (int c = 0; c < nd->n_child; c++) {
            const gram_trie_node_t *ch = &v->nodes[nd->child + (uint32_t)c];
            cls |= ch->cls | (1u << gram_byte_class(ch->byte));
        }
        nd->cls = cls;
    }
    free(depth);
    return v;
fail:
    free(depth);
    gram_vocab_destroy(v);
    return NULL;
}

gram_vocab_t *gram_vocab_create(const tok_t *tok) {
    int n = tok_n_vocab(tok);
    const char **p = calloc((size_t)n + 1, sizeof *p);
    size_t *l = calloc((size_t)n + 1, sizeof *l);
    gram_vocab_t *v = NULL;
    if (!p || !l) goto out;
    for (int t = 0; t < n; t++) {
        /* Control tokens are not text (the detokenizer drops them) and
         * end-of-sequence is decided by the grammar's completeness. */
        if (tok_is_control(tok, t) || t == tok_eos(tok) || t == tok_eot(tok)) continue;
        p[t] = tok_piece(tok, t, &l[t]);
    }
    v = gram_vocab_create_from(n, p, l);
out:
    free(p);
    free(l);
    return v;
}

void gram_vocab_destroy(gram_vocab_t *v) {
    if (!v) return;
    free(v->off);
    free(v->blob);
    free(v->sorted);
    free(v->nodes);
    free(v);
}

int gram_vocab_n_tokens(const gram_vocab_t *v) { return v->n_tokens; }

size_t gram_vocab_bytes(const gram_vocab_t *v) {
    return sizeof *v + (size_t)v->n_nodes * sizeof *v->nodes + ((size_t)v->n_tokens + 1) * 8 +
           (v->n_tokens ? v->off[v->n_tokens] : 0);
}
