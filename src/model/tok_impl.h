/* Internals shared by the tokenizer's files (tokenizer.c, tok_bpe.c,
 * tok_spm.c, tok_util.c). Nothing outside src/model/tok*.c includes this. */
#ifndef LC_TOK_IMPL_H
#define LC_TOK_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "model/tokenizer.h"

enum { TOK_KIND_BPE = 1, TOK_KIND_SPM = 2 };
#define TOK_MAX_RE 3

struct tok {
    int kind;
    char model[16];
    char pre[32];
    int32_t n_vocab;

    /* All token strings live in two arenas: the stored text and the bytes it
     * decodes to (equal for SPM control tokens, different for Ġ forms). */
    char *text;
    uint32_t *text_off, *text_len; // (n_vocab)
    char *piece;
    uint32_t *piece_off, *piece_len; // (n_vocab)
    float *scores;                   // (n_vocab)
    uint8_t *types;                  // (n_vocab)

    /* Open-addressing hash: stored text -> id; -1 marks an empty slot. */
    int32_t *vocab_slots;
    uint32_t vocab_mask;

    /* BPE merges: (left id, right id) -> rank and merged id. */
    uint64_t *merge_keys; // (merge_mask + 1); UINT64_MAX empty
    int32_t *merge_rank, *merge_res;
    uint32_t merge_mask;

    /* Tokens matched literally before pre-tokenization, grouped by first
     * byte and longest first within a group: those starting with byte c are
     * specials[special_at[c] .. special_at[c + 1]). Gemma has 6,400 of
     * them, a quarter starting with '<' and some with ' ' or '\n': a scan
     * of all of them at every space would cost ~1 s per 32K-token prompt. */
    int32_t *specials;
    size_t n_specials;
    uint32_t special_at[257];

    int32_t byte_id[256]; // token of one raw byte (Ġ-char or <0xXX>), -1 none
    int32_t bos, eos, eot, pad, unk;
    int add_bos, add_space_prefix, ignore_merges;

    /* gpt2 pre-tokenizer: regexes applied in sequence, each splitting the
     * pieces of the previous one (matches and gaps both kept). */
    pcre2_code *re[TOK_MAX_RE];
    int n_re;
};

/* ---- tok_util.c ------------------------------------------------------------ */
/* Appends one id; 0 or LC_ENOMEM. */
int tok__push(tok_ids_t *v, int32_t id);
uint32_t tok__hash(const char *s, size_t len);
/* Stored text -> id, or -1. */
int32_t tok__lookup(const tok_t *t, const char *s, size_t len);

/* A growable binary min-heap of fixed-size items (the BPE and SentencePiece
 * merge queues). `less` orders items; `esz` <= TOK_HEAP_MAX_ITEM. */
#define TOK_HEAP_MAX_ITEM 32
typedef struct {
    unsigned char *a;
    size_t n, cap, esz;
    int (*less)(const void *x, const void *y);
} tok_heap_t;
/* 0 or LC_ENOMEM. */
int tok__heap_push(tok_heap_t *h, const void *item);
/* Removes the least item into *out; the heap must not be empty. */
void tok__heap_pop(tok_heap_t *h, void *out);


/* Appends UTF-8 to out from in[0..n), replacing each maximal ill-formed
 * subsequence with U+FFFD (Unicode's "maximal subpart" rule, as Rust's
 * from_utf8_lossy). Unless final, a trailing incomplete but still valid
 * prefix is not consumed: *used receives how many bytes were. */
int tok__utf8_lossy(lc_buf_t *out, const uint8_t *in, size_t n, int final, size_t *used);
/* Length of the UTF-8 sequence at s (1 for an invalid lead or truncation). */
size_t tok__utf8_len(const char *s, size_t n);
/* Encodes a code point; returns bytes written (1..4). */
int tok__utf8_put(uint32_t cp, char *out);

/* ---- tok_bpe.c ------------------------------------------------------------- */
/* Sets up the gpt2 pre-tokenizer named t->pre, byte_id, and the piece
 * arena; 0 or a status with err written. */
int tok__bpe_init(tok_t *t, char *err, size_t errlen);
void tok__bpe_fini(tok_t *t);
int tok__bpe_encode(const tok_t *t, const char *s, size_t len, tok_ids_t *out);
/* Decodes a Ġ-form token text into bytes (out holds at least len bytes). */
size_t tok__bpe_unmap(const char *text, size_t len, char *out);

/* ---- tok_spm.c ------------------------------------------------------------- */
int tok__spm_init(tok_t *t, char *err, size_t errlen);
/* prefix: add the dummy-prefix space before this fragment. */
int tok__spm_encode(const tok_t *t, const char *s, size_t len, int prefix, tok_ids_t *out);
/* Decodes a ▁-form token text into bytes (out holds at least len bytes). */
size_t tok__spm_unmap(const char *text, size_t len, char *out);

#endif
