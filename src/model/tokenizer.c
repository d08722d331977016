/* Tokenizer core: building the vocabulary tables, splitting text around
 * special tokens, decoding, and the incremental detokenizer. The two models'
 * own algorithms live in tok_bpe.c and tok_spm.c. */
#include "model/tokenizer.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_impl.h"

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ============================================================================
 * Construction
 * ========================================================================== */

static size_t spec_len(const char *const *s, const uint32_t *lens, uint32_t i) { return lens ? lens[i] : strlen(s[i]); }

static int32_t valid_id(const tok_t *t, int32_t id) { return id >= 0 && id < t->n_vocab ? id : -1; }

/* Specials grouped by first byte, longer first within a group so that
 * "<|im_start|>" beats a hypothetical "<|im"; ties by id. Keys pack (first
 * byte, inverted length, id) so no sort context is needed. */
static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int build_pieces(tok_t *t) {
    /* A piece is never longer than its text: Ġ-chars and ▁ shrink, <0xXX>
     * becomes one byte. */
    uint64_t total = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) total += t->text_len[i];
    t->piece = malloc(total + 1);
    t->piece_off = malloc((size_t)t->n_vocab * sizeof(uint32_t));
    t->piece_len = malloc((size_t)t->n_vocab * sizeof(uint32_t));
    if (!t->piece || !t->piece_off || !t->piece_len) return LC_ENOMEM;
    uint32_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s = t->text + t->text_off[i];
        size_t n = t->text_len[i], m;
        char *dst = t->piece + off;
        int ty = t->types[i];
        if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED || ty == TOK_TYPE_UNKNOWN) {
            memcpy(dst, s, n);
            m = n;
        } else if (t->kind == TOK_KIND_BPE) {
            m = tok__bpe_unmap(s, n, dst);
        } else if (ty == TOK_TYPE_BYTE && n == 6 && memcmp(s, "<0x", 3) == 0) {
            dst[0] = (char)strtol(s + 3, NULL, 16);
            m = 1;
        } else {
            m = tok__spm_unmap(s, n, dst);
        }
        t->piece_off[i] = off;
        t->piece_len[i] = (uint32_t)m;
        off += (uint32_t)m;
    }
    return 0;
}

/* Each step below returns 0 or a status with a message in err. */
static int oom(char *err, size_t errlen) {
    set_err(err, errlen, "out of memory building the tokenizer");
    return LC_ENOMEM;
}

/* The tokenizer model (gpt2: byte-level BPE, llama: SentencePiece) and the
 * pre-tokenizer's name. */
static int set_kind(tok_t *t, const tok_spec_t *spec, char *err, size_t errlen) {
    const char *model = spec->model ? spec->model : "";
    if (strcmp(model, "gpt2") == 0) {
        t->kind = TOK_KIND_BPE;
    } else if (strcmp(model, "llama") == 0) {
        t->kind = TOK_KIND_SPM;
    } else {
        set_err(err, errlen, "unsupported tokenizer model '%s' (supported: gpt2, llama)", model);
        return LC_EUNSUPPORTED;
    }
    snprintf(t->model, sizeof(t->model), "%s", model);
    snprintf(t->pre, sizeof(t->pre), "%s", spec->pre && *spec->pre ? spec->pre : "default");
    return 0;
}

/* Every token's text into one arena, with its type and score. */
static int copy_vocab(tok_t *t, const tok_spec_t *spec, char *err, size_t errlen) {
    if (spec->n_tokens == 0 || spec->n_tokens >= INT32_MAX || !spec->tokens) {
        set_err(err, errlen, "tokenizer has no tokens");
        return LC_EINVAL;
    }
    t->n_vocab = (int32_t)spec->n_tokens;
    size_t n = spec->n_tokens;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += spec_len(spec->tokens, spec->token_lens, (uint32_t)i);
    if (total >= UINT32_MAX) {
        set_err(err, errlen, "tokenizer vocabulary too large");
        return LC_EINVAL;
    }
    t->text = malloc(total + 1);
    t->text_off = malloc(n * sizeof(uint32_t));
    t->text_len = malloc(n * sizeof(uint32_t));
    t->scores = calloc(n, sizeof(float));
    t->types = malloc(n);
    if (!t->text || !t->text_off || !t->text_len || !t->scores || !t->types) return oom(err, errlen);
    uint32_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = spec_len(spec->tokens, spec->token_lens, (uint32_t)i);
        memcpy(t->text + off, spec->tokens[i], l);
        t->text_off[i] = off;
        t->text_len[i] = (uint32_t)l;
        off += (uint32_t)l;
        t->types[i] = spec->types ? (uint8_t)spec->types[i] : TOK_TYPE_NORMAL;
        if (spec->scores) t->scores[i] = spec->scores[i];
    }
    return 0;
}

/* The text -> id hash, at most half full. A duplicated text maps to its last
 * id, as Hugging Face's vocab dict and llama.cpp's map do. */
static int build_vocab_hash(tok_t *t, char *err, size_t errlen) {
    uint32_t cap = 64;
    while (cap < 2 * (uint64_t)t->n_vocab) cap *= 2;
    t->vocab_mask = cap - 1;
    t->vocab_slots = malloc((size_t)cap * sizeof(int32_t));
    if (!t->vocab_slots) return oom(err, errlen);
    memset(t->vocab_slots, 0xff, (size_t)cap * sizeof(int32_t));
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        uint32_t l = t->text_len[id], i = tok__hash(s, l) & t->vocab_mask;
        for (;; i = (i + 1) & t->vocab_mask) {
            int32_t o = t->vocab_slots[i];
            if (o < 0 || (t->text_len[o] == l && memcmp(t->text + t->text_off[o], s, l) == 0)) {
                t->vocab_slots[i] = id;
                break;
            }
        }
    }
    return 0;
}

/* The control and user-defined tokens matched literally before
 * pre-tokenization, longest first, and the bytes they can start with. */
static int build_specials(tok_t *t, char *err, size_t errlen) {
    uint64_t *keys = malloc((size_t)t->n_vocab * sizeof(uint64_t));
    t->specials = malloc((size_t)t->n_vocab * sizeof(int32_t));
    if (!keys || !t->specials) {
        free(keys);
        return oom(err, errlen);
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        int ty = t->types[id];
        if ((ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED) && t->text_len[id] > 0) {
            uint64_t first = (uint8_t)t->text[t->text_off[id]];
            uint64_t inv = 0xFFFFFF - (t->text_len[id] < 0xFFFFFF ? t->text_len[id] : 0xFFFFFF);
            keys[t->n_specials++] = first << 56 | inv << 32 | (uint32_t)id;
        }
    }
    qsort(keys, t->n_specials, sizeof(uint64_t), cmp_u64);
    for (size_t k = 0, c = 0; k <= t->n_specials; k++) {
        size_t first = k < t->n_specials ? (size_t)(keys[k] >> 56) : 256;
        while (c <= first) t->special_at[c++] = (uint32_t)k;
        if (k < t->n_specials) t->specials[k] = (int32_t)(uint32_t)keys[k];
    }
    free(keys);
    return 0;
}

/* BOS/EOS/EOT/PAD/UNK (ids outside the vocabulary become -1) and the
 * encoding flags. */
static void set_special_ids(tok_t *t, const tok_spec_t *spec) {
    t->bos = valid_id(t, spec->bos);
    t->eos = valid_id(t, spec->eos);
    t->eot = valid_id(t, spec->eot);
    t->pad = valid_id(t, spec->pad);
    t->unk = valid_id(t, spec->unk);
    t->add_bos = spec->add_bos && t->bos >= 0;
    t->add_space_prefix = spec->add_space_prefix < 0 ? 1 : spec->add_space_prefix;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
}

/* BPE merges "a b" as (id of a, id of b) -> (rank, id of ab), in an
 * open-addressing table; the first rank of a repeated pair wins. Merges
 * whose parts or result are not in the vocabulary are skipped (Hugging Face
 * refuses such files). */
static int build_merges(tok_t *t, const tok_spec_t *spec, char *err, size_t errlen) {
    uint32_t mcap = 64;
    while (mcap < 2 * (uint64_t)spec->n_merges) mcap *= 2;
    t->merge_mask = mcap - 1;
    t->merge_keys = malloc((size_t)mcap * sizeof(uint64_t));
    t->merge_rank = malloc((size_t)mcap * sizeof(int32_t));
    t->merge_res = malloc((size_t)mcap * sizeof(int32_t));
    if (!t->merge_keys || !t->merge_rank || !t->merge_res) return oom(err, errlen);
    memset(t->merge_keys, 0xff, (size_t)mcap * sizeof(uint64_t));
    char *buf = NULL;
    size_t bufcap = 0;
    for (uint32_t r = 0; r < spec->n_merges; r++) {
        const char *m = spec->merges[r];
        size_t ml = spec_len(spec->merges, spec->merge_lens, r);
        const char *sp = ml > 1 ? memchr(m + 1, ' ', ml - 1) : NULL;
        if (!sp) continue;
        size_t la = (size_t)(sp - m), lb = ml - la - 1;
        int32_t a = tok__lookup(t, m, la), b = tok__lookup(t, sp + 1, lb);
        if (ml > bufcap) {
            char *nb = realloc(buf, ml * 2);
            if (!nb) {
                free(buf);
                return oom(err, errlen);
            }
            buf = nb;
            bufcap = ml * 2;
        }
        memcpy(buf, m, la);
        memcpy(buf + la, sp + 1, lb);
        int32_t res = tok__lookup(t, buf, la + lb);
        if (a < 0 || b < 0 || res < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        uint32_t i = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merge_mask;
        while (t->merge_keys[i] != UINT64_MAX && t->merge_keys[i] != key) i = (i + 1) & t->merge_mask;
        if (t->merge_keys[i] == key) continue;
        t->merge_keys[i] = key;
        t->merge_rank[i] = (int32_t)r;
        t->merge_res[i] = res;
    }
    free(buf);
    return 0;
}

tok_t *tok_create(const tok_spec_t *spec, char *err, size_t errlen) {
    tok_t *t = calloc(1, sizeof(*t));
    int rc = t ? 0 : oom(err, errlen);
    if (!rc) rc = set_kind(t, spec, err, errlen);
    if (!rc) rc = copy_vocab(t, spec, err, errlen);
    if (!rc) rc = build_vocab_hash(t, err, errlen);
    if (!rc) rc = build_specials(t, err, errlen);
    if (!rc) {
        set_special_ids(t, spec);
        rc = t->kind == TOK_KIND_BPE ? tok__bpe_init(t, err, errlen) : tok__spm_init(t, err, errlen);
    }
    /* Merges after the tables they index. */
    if (!rc && t->kind == TOK_KIND_BPE) rc = build_merges(t, spec, err, errlen);
    if (!rc && build_pieces(t)) rc = oom(err, errlen);
    if (!rc) return t;
    tok_destroy(t);
    return NULL;
}

void tok_destroy(tok_t *t) {
    if (!t) return;
    tok__bpe_fini(t);
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->scores);
    free(t->types);
    free(t->vocab_slots);
    free(t->merge_keys);
    free(t->merge_rank);
    free(t->merge_res);
    free(t->specials);
    free(t);
}

/* ============================================================================
 * Accessors
 * ========================================================================== */

int32_t tok_n_vocab(const tok_t *t) { return t->n_vocab; }
int32_t tok_bos(const tok_t *t) { return t->bos; }
int32_t tok_eos(const tok_t *t) { return t->eos; }
int32_t tok_eot(const tok_t *t) { return t->eot; }
int tok_add_bos(const tok_t *t) { return t->add_bos; }
const char *tok_model_name(const tok_t *t) { return t->model; }
const char *tok_pre_name(const tok_t *t) { return t->pre; }

const char *tok_piece(const tok_t *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    *len = t->piece_len[id];
    return t->piece + t->piece_off[id];
}

const char *tok_text(const tok_t *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    *len = t->text_len[id];
    return t->text + t->text_off[id];
}

int tok_type(const tok_t *t, int32_t id) { return id >= 0 && id < t->n_vocab ? t->types[id] : 0; }
int tok_is_control(const tok_t *t, int32_t id) { return tok_type(t, id) == TOK_TYPE_CONTROL; }
int tok_is_special(const tok_t *t, int32_t id) {
    int ty = tok_type(t, id);
    return ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED;
}

int32_t tok_find(const tok_t *t, const char *s, size_t len) { return tok__lookup(t, s, len); }

/* ============================================================================
 * Encoding
 * ========================================================================== */

/* Longest special token starting exactly at s, or -1. Control tokens count
 * only when parse_special; user-defined ones always (as Hugging Face treats
 * non-special added tokens, and llama.cpp user-defined ones). */
static int32_t match_special(const tok_t *t, const char *s, size_t n, int parse_special) {
    for (uint32_t k = t->special_at[(uint8_t)s[0]]; k < t->special_at[(uint8_t)s[0] + 1]; k++) {
        int32_t id = t->specials[k];
        uint32_t l = t->text_len[id];
        if (l > n || (!parse_special && t->types[id] == TOK_TYPE_CONTROL)) continue;
        if (memcmp(s, t->text + t->text_off[id], l) == 0) return id;
    }
    return -1;
}

static int encode_fragment(const tok_t *t, const char *s, size_t n, int prefix, tok_ids_t *out) {
    if (t->kind == TOK_KIND_BPE) return tok__bpe_encode(t, s, n, out);
    return tok__spm_encode(t, s, n, prefix && t->add_space_prefix, out);
}

int tok_encode(const tok_t *t, const char *text, size_t len, int add_bos, int parse_special, tok_ids_t *out) {
    if (len > INT32_MAX) return LC_ETOOLONG;
    size_t n0 = out->n;
    int rc = 0;
    if (add_bos && t->bos >= 0 && (rc = tok__push(out, t->bos))) goto fail;
    /* SPM adds its dummy prefix at the start and after each special token
     * (llama.cpp's rule). */
    int prefix = 1;
    size_t start = 0, i = 0;
    while (i < len) {
        int32_t sid = -1;
        uint8_t c = (uint8_t)text[i];
        if (t->special_at[c] < t->special_at[c + 1]) sid = match_special(t, text + i, len - i, parse_special);
        if (sid < 0) {
            i++;
            continue;
        }
        if (i > start) {
            if ((rc = encode_fragment(t, text + start, i - start, prefix, out))) goto fail;
        }
        if ((rc = tok__push(out, sid))) goto fail;
        prefix = 1;
        i += t->text_len[sid];
        start = i;
    }
    if (len > start && (rc = encode_fragment(t, text + start, len - start, prefix, out))) goto fail;
    return 0;
fail:
    out->n = n0;
    return rc;
}

/* ============================================================================
 * Decoding
 * ========================================================================== */

/* The bytes one id contributes, after skip_special and SPM's removal of the
 * dummy prefix from the first text token. *first tracks that position. */
static const char *emit_piece(const tok_t *t, int32_t id, int skip_special, int *first, size_t *len) {
    const char *p = t->piece + t->piece_off[id];
    size_t n = t->piece_len[id];
    if (t->types[id] == TOK_TYPE_CONTROL) {
        if (skip_special) n = 0;
    } else if (*first) {
        *first = 0;
        if (t->kind == TOK_KIND_SPM && t->add_space_prefix && n && p[0] == ' ') {
            p++;
            n--;
        }
    }
    *len = n;
    return p;
}

int tok_decode(const tok_t *t, const int32_t *ids, size_t n, int skip_special, char **out, size_t *out_len) {
    lc_buf_t raw = {0}, res = {0};
    int rc = 0, first = 1;
    *out = NULL;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            rc = LC_EINVAL;
            goto fail;
        }
        size_t l;
        const char *p = emit_piece(t, ids[i], skip_special, &first, &l);
        if ((rc = lc_buf_put(&raw, p, l))) goto fail;
    }
    size_t used;
    if ((rc = lc_buf_put(&res, "", 0))) goto fail;
    if ((rc = tok__utf8_lossy(&res, (const uint8_t *)raw.p, raw.n, 1, &used))) goto fail;
    free(raw.p);
    *out = res.p;
    if (out_len) *out_len = res.n;
    return 0;
fail:
    free(raw.p);
    free(res.p);
    return rc;
}

/* ============================================================================
 * Incremental detokenizer
 * ========================================================================== */

struct tok_stream {
    const tok_t *t;
    int skip_special, first;
    uint8_t pend[8]; // an incomplete character carried over (at most 3 bytes)
    size_t n_pend;
    lc_buf_t out; // bytes handed out by the last call
    lc_buf_t scratch;
};

tok_stream_t *tok_stream_create(const tok_t *t, int skip_special) {
    tok_stream_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->t = t;
    s->skip_special = skip_special;
    s->first = 1;
    return s;
}

void tok_stream_destroy(tok_stream_t *s) {
    if (!s) return;
    free(s->out.p);
    free(s->scratch.p);
    free(s);
}

static int stream_emit(tok_stream_t *s, const char *p, size_t n, int final, const char **text, size_t *len) {
    int rc;
    s->out.n = 0;
    s->scratch.n = 0;
    if ((rc = lc_buf_put(&s->out, "", 0))) return rc;
    if ((rc = lc_buf_put(&s->scratch, s->pend, s->n_pend))) return rc;
    if ((rc = lc_buf_put(&s->scratch, p, n))) return rc;
    size_t used;
    if ((rc = tok__utf8_lossy(&s->out, (const uint8_t *)s->scratch.p, s->scratch.n, final, &used))) return rc;
    s->n_pend = s->scratch.n - used; // < 4: only a valid prefix is ever held back
    memcpy(s->pend, s->scratch.p + used, s->n_pend);
    *text = s->out.p;
    *len = s->out.n;
    return 0;
}

int tok_stream_push(tok_stream_t *s, int32_t id, const char **text, size_t *len) {
    if (id < 0 || id >= s->t->n_vocab) return LC_EINVAL;
    size_t n;
    const char *p = emit_piece(s->t, id, s->skip_special, &s->first, &n);
    return stream_emit(s, p, n, 0, text, len);
}

int tok_stream_flush(tok_stream_t *s, const char **text, size_t *len) { return stream_emit(s, "", 0, 1, text, len); }
