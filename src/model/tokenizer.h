/* Tokenizer: text <-> token ids for the vocabularies GGUF models carry.
 *
 * Two models: byte-level BPE ("gpt2", with a named pre-tokenizer that runs on
 * PCRE2) and SentencePiece BPE ("llama", score-ranked merges, byte fallback).
 * Output must match Hugging Face's tokenizer for the same model id for id;
 * tests/check_tokenizer.c holds us to that.
 *
 * A tok_t is immutable after creation and may be shared by any number of
 * threads; every call keeps its scratch memory on its own. */
#ifndef LC_TOKENIZER_H
#define LC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct tok tok_t;
struct gguf_ctx;

/* GGUF token types (tokenizer.ggml.token_type). */
enum {
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

/* Everything a tokenizer is built from, as plain arrays. Strings need not be
 * NUL-terminated (they may point into a GGUF mapping); all are copied, so the
 * spec may die right after tok_create. */
typedef struct {
    const char *model; // "gpt2" or "llama"
    const char *pre;   // gpt2 pre-tokenizer name; NULL means "default"
    uint32_t n_tokens;
    const char *const *tokens;  // (n_tokens) token text as stored (Ġ / ▁ forms)
    const uint32_t *token_lens; // (n_tokens) byte lengths; NULL: NUL-terminated
    const float *scores;        // (n_tokens) or NULL (all 0); SPM merge priority
    const int32_t *types;       // (n_tokens) TOK_TYPE_*, or NULL (all normal)
    uint32_t n_merges;
    const char *const *merges;       // (n_merges) "left right", rank = index (gpt2)
    const uint32_t *merge_lens;      // (n_merges) or NULL: NUL-terminated
    int32_t bos, eos, eot, pad, unk; // -1 when absent
    int add_bos;                     // default for callers that do not choose
    int add_space_prefix;            // SPM dummy prefix: 1, 0, or -1 for the default (1)
} tok_spec_t;

/* Builds a tokenizer from plain arrays. Returns NULL and writes a message into
 * err on an unknown model or pre-tokenizer, inconsistent arrays, or OOM. */
tok_t *tok_create(const tok_spec_t *spec, char *err, size_t errlen);
/* Reads the tokenizer.ggml.* keys of an open GGUF and calls tok_create. */
tok_t *tok_create_from_gguf(const struct gguf_ctx *g, char *err, size_t errlen);
void tok_destroy(tok_t *t);

int32_t tok_n_vocab(const tok_t *t);
int32_t tok_bos(const tok_t *t); // -1 if none
int32_t tok_eos(const tok_t *t); // -1 if none
int32_t tok_eot(const tok_t *t); // -1 if none
int tok_add_bos(const tok_t *t); // the model's default for add_bos
/* Name of the model ("gpt2"/"llama") and pre-tokenizer, for logs. */
const char *tok_model_name(const tok_t *t);
const char *tok_pre_name(const tok_t *t);

/* A growable id array owned by the caller: zero-initialise, pass to
 * tok_encode (which appends), release with tok_ids_free. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
} tok_ids_t;
void tok_ids_free(tok_ids_t *v);

/* Appends the ids of text[0..len) to out. parse_special: control tokens
 * written literally in the text become their ids (user-defined tokens always
 * do); otherwise they are tokenized as plain text. Returns 0, LC_ENOMEM or
 * LC_ETOOLONG (more than INT32_MAX bytes). Invalid UTF-8 is tokenized byte by
 * byte, never refused. */
int tok_encode(const tok_t *t, const char *text, size_t len, int add_bos, int parse_special, tok_ids_t *out);

/* Bytes a token stands for (a control token's own text); NULL for an id out of
 * range. Valid while t lives; not NUL-terminated, and possibly not valid
 * UTF-8 on its own (a byte-level token may hold half a character). */
const char *tok_piece(const tok_t *t, int32_t id, size_t *len);
/* The token's text exactly as stored in the vocabulary ("Ġthe", "▁the"). */
const char *tok_text(const tok_t *t, int32_t id, size_t *len);
int tok_type(const tok_t *t, int32_t id);       // TOK_TYPE_*, 0 for out of range
int tok_is_control(const tok_t *t, int32_t id); // type 3
int tok_is_special(const tok_t *t, int32_t id); // type 3 or 4
/* Id of the token whose stored text is exactly s[0..len), or -1. */
int32_t tok_find(const tok_t *t, const char *s, size_t len);

/* Decodes ids into valid UTF-8 (malformed bytes become U+FFFD, as Hugging
 * Face's lossy decode does). skip_special drops control tokens. *out is
 * malloc'd and NUL-terminated, owned by the caller. Returns 0, LC_ENOMEM, or
 * LC_EINVAL for an id out of range. */
int tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, char **out, size_t *out_len);

/* ---- incremental detokenizer ---------------------------------------------- */
/* Turns a stream of ids into text deltas that never split a UTF-8 character.
 * Bytes that can no longer complete a character come out as U+FFFD, so the
 * deltas concatenate to exactly tok_decode's result. One per request; not
 * thread-safe. Returns NULL on OOM. */
typedef struct tok_stream tok_stream_t;
tok_stream_t *tok_stream_create(const tok_t *t, int skip_special);
void tok_stream_destroy(tok_stream_t *s);
/* Feeds one id; *text and *len receive the bytes now complete (possibly none).
 * The pointer stays valid until the next call on s. Returns 0, LC_ENOMEM or
 * LC_EINVAL (id out of range; the stream is unchanged). */
int tok_stream_push(tok_stream_t *s, int32_t id, const char **text, size_t *len);
/* Emits what is still held (a dangling partial character as U+FFFD). */
int tok_stream_flush(tok_stream_t *s, const char **text, size_t *len);

#endif
