/* Constrained decoding: a context-free grammar over bytes, a per-vocabulary
 * token trie, and a matcher that says which tokens may come next.
 *
 * Three objects, with three lifetimes:
 * - gram_vocab_t: every token's bytes in a trie, built once per model and
 *   shared read-only by every request (any thread). Control tokens and
 *   tokens with no bytes are left out: they are never allowed by a grammar
 *   (end of sequence is decided by gram_matcher_can_end instead).
 * - gram_t: a compiled grammar (rules of alternatives of byte sets and rule
 *   references), immutable once built, reference-counted. It also holds a
 *   cache of token masks keyed by matcher state, shared by every matcher of
 *   the grammar under a mutex; a cached mask is exactly the mask the walk
 *   would compute, so sharing never changes an output.
 * - gram_matcher_t: the state of one sequence (a set of parse stacks, a
 *   nondeterministic pushdown automaton as in llama.cpp's grammar sampler),
 *   owned by one choice; not thread-safe.
 *
 * The mask of a state is a pure function of that state: it never depends on
 * what other sequences run, nor on the cache's contents.
 *
 * Grammars are built with gram_builder_* (json_schema.c compiles JSON
 * schemas into one); gram_builder_finish checks that every rule derives
 * some finite string, drops alternatives that cannot (so a matcher never
 * walks into a dead end), and refuses a rule that can reach itself without
 * consuming a byte (left recursion). */
#ifndef LC_GRAMMAR_H
#define LC_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>

struct tok;

/* ---- vocabulary ------------------------------------------------------------- */
typedef struct gram_vocab gram_vocab_t;

/* From a tokenizer: piece bytes of every non-control token. NULL on OOM. */
gram_vocab_t *gram_vocab_create(const struct tok *tok);
/* From plain arrays (tests, benchmarks): token i has bytes pieces[i][0..lens[i]);
 * a NULL piece or length 0 leaves token i out. NULL on OOM. */
gram_vocab_t *gram_vocab_create_from(int n_tokens, const char *const *pieces, const size_t *lens);
void gram_vocab_destroy(gram_vocab_t *v);
int gram_vocab_n_tokens(const gram_vocab_t *v);
size_t gram_vocab_bytes(const gram_vocab_t *v); // memory held, for logs

/* ---- building a grammar --------------------------------------------------------- */
typedef struct gram gram_t;
typedef struct gram_builder gram_builder_t;

/* Byte set: bit b of w[b >> 6] is set when byte b belongs. */
typedef struct {
    uint64_t w[4];
} gram_set_t;

void gram_set_add_range(gram_set_t *s, int lo, int hi); // inclusive

/* Size limits: a builder call that would pass one fails with LC_ETOOLONG. */
typedef struct {
    int max_rules; // default 65536
    int max_elems; // elements over all alternatives, default 1 << 20
} gram_limits_t;

/* NULL on OOM; lim may be NULL for the defaults. */
gram_builder_t *gram_builder_create(const gram_limits_t *lim);
void gram_builder_destroy(gram_builder_t *b);
/* A new rule with no alternatives yet; its id (>= 0) or a negative status. */
int gram_rule(gram_builder_t *b);
/* Starts a new alternative of rule; elements are appended to the rule's last
 * alternative. 0 or a negative status (also for every call below). */
int gram_alt(gram_builder_t *b, int rule);
int gram_add_byte(gram_builder_t *b, int rule, unsigned char c);
int gram_add_set(gram_builder_t *b, int rule, const gram_set_t *s);
int gram_add_bytes(gram_builder_t *b, int rule, const char *s, size_t n); // a literal
int gram_add_ref(gram_builder_t *b, int rule, int ref);
/* Validates and freezes the grammar whose start symbol is root. On failure
 * returns NULL with a status in *status (LC_EINVAL: the language is empty or
 * a rule is left-recursive or undefined; LC_ENOMEM) and a sentence in err.
 * The builder stays the caller's to destroy. */
gram_t *gram_builder_finish(gram_builder_t *b, int root, int *status, char *err, size_t errlen);

void gram_retain(gram_t *g);
void gram_release(gram_t *g); // NULL is fine
int gram_n_rules(const gram_t *g);
int gram_n_elems(const gram_t *g);

/* ---- matching -------------------------------------------------------------------- */
typedef struct gram_matcher gram_matcher_t;

/* A matcher at the start of g's language, for tokens of v (both must
 * outlive it). NULL on OOM. */
gram_matcher_t *gram_matcher_create(gram_t *g, const gram_vocab_t *v);
void gram_matcher_destroy(gram_matcher_t *m);

/* The tokens that can continue a valid prefix: bit t of bits (n_vocab bits,
 * (n_vocab + 63) / 64 words) is set when token t may come next. Tokens past
 * the vocabulary are cleared. Returns 0 or LC_ENOMEM. */
int gram_matcher_mask(gram_matcher_t *m, uint64_t *bits, int n_vocab);
/* Sets logits of the tokens the grammar forbids to -inf. End-of-sequence
 * tokens (eos) stay allowed exactly when the text so far is complete.
 * Returns 0, LC_ENOMEM, or LC_EINVAL when no token at all is allowed. */
int gram_matcher_apply(gram_matcher_t *m, float *logits, int n_vocab, const int32_t *eos, int n_eos);
/* Advances by a token's bytes. Returns 0, or LC_EINVAL when the token cannot
 * continue the prefix (the state is then unchanged), LC_ENOMEM. */
int gram_matcher_accept_token(gram_matcher_t *m, int32_t token);
int gram_matcher_accept_bytes(gram_matcher_t *m, const char *s, size_t n);
/* 1 when the bytes so far form a complete sentence of the language. */
int gram_matcher_can_end(const gram_matcher_t *m);
/* 1 when the sentence is complete and nothing may follow it. */
int gram_matcher_done(const gram_matcher_t *m);

/* Counters for benchmarks: masks served from the matcher's last state, from
 * the grammar's cache, and computed by walking the trie. */
typedef struct {
    uint64_t same_state, cache_hits, walks;
} gram_stats_t;
void gram_matcher_stats(const gram_matcher_t *m, gram_stats_t *out);

#endif
