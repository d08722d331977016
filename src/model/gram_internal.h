/* Internals of the grammar engine shared by grammar.c (building, the
 * vocabulary trie) and gram_match.c (matching, masks, the mask cache). */
#ifndef LC_GRAM_INTERNAL_H
#define LC_GRAM_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "model/grammar.h"

/* ---- elements -------------------------------------------------------------------- */
/* A grammar is one flat array of 32-bit elements: the type in the top 3
 * bits, an argument below. Every alternative ends with ALT (another
 * alternative of the same rule follows) or END (the rule's last one). A
 * position is an index into this array. */
enum { GE_END = 0, GE_ALT = 1, GE_BYTE = 2, GE_SET = 3, GE_REF = 4 };
#define GE(t, a) (((uint32_t)(t) << 29) | (uint32_t)(a))
#define GE_TYPE(e) ((e) >> 29)
#define GE_ARG(e) ((e)&0x1FFFFFFFu)
#define GE_IS_END(e) (GE_TYPE(e) <= GE_ALT)

/* One cached mask: the serialized state it belongs to and its bits. */
typedef struct {
    uint64_t hash;
    uint32_t *key; // (key_len) NULL when the slot is free
    uint32_t key_len;
    uint64_t *bits; // (words)
} gram_cache_ent_t;

struct gram {
    atomic_int refs;
    uint32_t *elems; // (n_elems)
    int n_elems;
    gram_set_t *sets; // (n_sets) referenced by GE_SET
    int n_sets;
    uint32_t *alt_start; // (n_alts) position of each alternative's first element
    uint32_t *rule_alt;  // (n_rules + 1) rule r owns alt_start[rule_alt[r] .. rule_alt[r + 1])
    int n_rules;
    int root;

    /* Mask cache, keyed by serialized matcher state, for one vocabulary
     * (the first one a matcher used; others go uncached). */
    pthread_mutex_t lock;
    const gram_vocab_t *cache_vocab;
    gram_cache_ent_t *cache; // (cache_cap) open addressing, power of two
    int cache_cap;
    int cache_clock;
};

/* ---- the vocabulary trie ---------------------------------------------------------- */
/* Tokens sorted by their bytes; a trie node covers the contiguous range of
 * sorted tokens that start with its prefix. Children of a node are
 * contiguous and sorted by byte, and always come after their parent. */
typedef struct {
    uint32_t child; // index of the first child
    uint32_t lo;    // subtree: sorted[lo .. hi)
    uint32_t hi;
    uint32_t n_end; // tokens ending exactly here: sorted[lo .. lo + n_end)
    uint32_t cls;   // byte classes (gram_byte_class) of every edge below this node
    uint16_t n_child;
    uint8_t byte; // the edge into this node
} gram_trie_node_t;

struct gram_vocab {
    int n_tokens;    // ids 0 .. n_tokens - 1
    int n_in;        // tokens in the trie
    int32_t *sorted; // (n_in) token ids sorted by bytes
    uint32_t *off;   // (n_tokens + 1) token t's bytes are blob[off[t] .. off[t + 1]); empty: left out
    unsigned char *blob;
    gram_trie_node_t *nodes; // (n_nodes); node 0 is the root (the empty prefix)
    int n_nodes;
    int max_len; // longest token in bytes
};

/* Coarse byte classes for the subtree shortcut of the trie walk: a class
 * is "in" a set only when all of its bytes are. */
int gram_byte_class(unsigned char b);
#define GRAM_N_CLASSES 18

#endif
