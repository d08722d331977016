/* Byte-level BPE ("gpt2" in GGUF): a pre-tokenizer splits text with one or
 * more PCRE2 regexes, each piece's bytes become GPT-2's printable stand-in
 * characters, and merges are applied lowest rank first. This reproduces
 * Hugging Face's ByteLevel + BPE pipeline for the pre-tokenizers we name. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_impl.h"

/* ============================================================================
 * GPT-2 byte <-> code point map
 * ========================================================================== */

/* Printable Latin-1 bytes stand for themselves; the other 68 bytes (0-32,
 * 127-160, 173) take code points 256.. in byte order. */
static uint32_t byte_cp(uint8_t b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256u + b;
    if (b <= 160) return 256u + 33 + (b - 127u);
    return 256u + 67; // 173, soft hyphen
}

static int cp_byte(uint32_t cp) {
    if (cp < 256) {
        uint8_t b = (uint8_t)cp;
        return byte_cp(b) == cp ? (int)b : -1;
    }
    uint32_t n = cp - 256;
    if (n <= 32) return (int)n;
    if (n <= 66) return (int)(n - 33 + 127);
    if (n == 67) return 173;
    return -1;
}

/* Decodes the next code point; invalid bytes yield UINT32_MAX. */
static uint32_t next_cp(const uint8_t *s, size_t n, size_t *adv) {
    size_t k = tok__utf8_len((const char *)s, n);
    *adv = k;
    if (k == 1) return s[0] < 0x80 ? s[0] : UINT32_MAX;
    uint32_t cp = s[0] & (0x7F >> k);
    for (size_t i = 1; i < k; i++) cp = (cp << 6) | (s[i] & 0x3F);
    return cp;
}

size_t tok__bpe_unmap(const char *text, size_t len, char *out) {
    const uint8_t *s = (const uint8_t *)text;
    size_t o = 0, adv;
    for (size_t i = 0; i < len; i += adv) {
        int b = cp_byte(next_cp(s + i, len - i, &adv));
        if (b < 0) {
            /* Not a byte-level token: Hugging Face keeps its raw text. */
            memcpy(out, text, len);
            return len;
        }
        out[o++] = (char)b;
    }
    return o;
}

/* ============================================================================
 * Pre-tokenizers
 * ========================================================================== */

/* Hugging Face's regexes run on Oniguruma, whose \s is Unicode White_Space.
 * PCRE2's \s (even with UCP) lacks U+0085, so we spell the class out. */
#define WS "\\x{09}-\\x{0D}\\x{85}\\p{Z}"

static const char re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";
static const char re_llama3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" WS
                                "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+";
/* Digits(individual_digits=true): every numeric character on its own. */
static const char re_digit[] = "\\p{N}";

static const struct {
    const char *name;
    const char *re[TOK_MAX_RE];
    int ignore_merges;
} pre_table[] = {
    {"default", {re_gpt2}, 0},
    {"gpt2", {re_gpt2}, 0},
    /* SmolLM2's tokenizer.json: Sequence[Digits(individual), ByteLevel]. */
    {"smollm", {re_digit, re_gpt2}, 0},
    {"starcoder", {re_digit, re_gpt2}, 0},
    {"refact", {re_digit, re_gpt2}, 0},
    /* Llama 3's tokenizer.json sets ignore_merges: whole-word vocabulary hits
     * win over merging. */
    {"llama-bpe", {re_llama3}, 1},
    {"llama3", {re_llama3}, 1},
};

int tok__bpe_init(tok_t *t, char *err, size_t errlen) {
    size_t k, n = sizeof(pre_table) / sizeof(pre_table[0]);
    for (k = 0; k < n; k++)
        if (strcmp(pre_table[k].name, t->pre) == 0) break;
    if (k == n) {
        snprintf(err, errlen,
                 "unsupported pre-tokenizer '%s' for gpt2 (supported: default, gpt2, smollm, "
                 "starcoder, refact, llama-bpe)",
                 t->pre);
        return LC_EUNSUPPORTED;
    }
    t->ignore_merges = pre_table[k].ignore_merges;
    for (int i = 0; i < TOK_MAX_RE && pre_table[k].re[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        /* MATCH_INVALID_UTF: arbitrary bytes are matched, never refused, and
         * the subject is not re-validated on every call (that would make a
         * long prompt quadratic). */
        pcre2_code *re = pcre2_compile((PCRE2_SPTR)pre_table[k].re[i], PCRE2_ZERO_TERMINATED,
                                       PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (!re) {
            snprintf(err, errlen, "pre-tokenizer regex failed to compile (PCRE2 error %d at %zu)", ec, (size_t)eo);
            return LC_EINVAL;
        }
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // the interpreter is the fallback
        t->re[t->n_re++] = re;
    }
    for (int b = 0; b < 256; b++) {
        char u[4];
        int l = tok__utf8_put(byte_cp((uint8_t)b), u);
        t->byte_id[b] = tok__lookup(t, u, (size_t)l);
    }
    return 0;
}

void tok__bpe_fini(tok_t *t) {
    for (int i = 0; i < t->n_re; i++) pcre2_code_free(t->re[i]);
    t->n_re = 0;
}

/* ============================================================================
 * Merging
 * ========================================================================== */

typedef struct {
    int32_t rank, left; // order: rank, then position (Hugging Face's order)
    int32_t idl, idr;   // the pair as it was when queued; stale if changed
} bpe_item_t;

/* Per-call scratch, grown as needed and freed at the end of the call. */
typedef struct {
    const tok_t *t;
    pcre2_match_data *md;
    tok_ids_t *out;
    int32_t *id, *next, *prev;
    size_t cap;
    tok_heap_t heap; // of bpe_item_t
    char *map;       // byte-level form of a word (ignore_merges lookups)
    size_t cap_map;
} bpe_ctx_t;

static int merge_find(const tok_t *t, int32_t a, int32_t b, int32_t *rank, int32_t *res) {
    if (a < 0 || b < 0) return 0;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    uint32_t i = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->merge_mask;
    for (;; i = (i + 1) & t->merge_mask) {
        if (t->merge_keys[i] == UINT64_MAX) return 0;
        if (t->merge_keys[i] == key) {
            *rank = t->merge_rank[i];
            *res = t->merge_res[i];
            return 1;
        }
    }
}

_Static_assert(sizeof(bpe_item_t) <= TOK_HEAP_MAX_ITEM, "merge queue item too large");

static int item_less(const void *xp, const void *yp) {
    const bpe_item_t *x = xp, *y = yp;
    return x->rank < y->rank || (x->rank == y->rank && x->left < y->left);
}

static int heap_push(bpe_ctx_t *c, int32_t left, int32_t right) {
    int32_t rank, res;
    if (!merge_find(c->t, c->id[left], c->id[right], &rank, &res)) return 0;
    bpe_item_t it = {rank, left, c->id[left], c->id[right]};
    return tok__heap_push(&c->heap, &it);
}

static int emit(bpe_ctx_t *c, int32_t id) {
    /* A byte the vocabulary has no token for (SmolLM2 lacks some C0 control
     * bytes) is dropped, as Hugging Face's byte-level BPE does: mapping it to
     * an unknown id would put <|endoftext|> into the prompt. */
    return id < 0 ? 0 : tok__push(c->out, id);
}

static int bpe_word(bpe_ctx_t *c, const char *s, size_t n) {
    const tok_t *t = c->t;
    int rc;
    if (n == 0) return 0;
    if (n == 1) return emit(c, t->byte_id[(uint8_t)s[0]]);
    if (t->ignore_merges) {
        if (n * 2 > c->cap_map) {
            char *m = realloc(c->map, n * 2);
            if (!m) return LC_ENOMEM;
            c->map = m;
            c->cap_map = n * 2;
        }
        size_t l = 0;
        for (size_t i = 0; i < n; i++) l += (size_t)tok__utf8_put(byte_cp((uint8_t)s[i]), c->map + l);
        int32_t id = tok__lookup(t, c->map, l);
        if (id >= 0) return tok__push(c->out, id);
    }
    if (n > c->cap) {
        size_t cap = n < 256 ? 256 : n;
        int32_t *a = realloc(c->id, cap * sizeof(int32_t));
        if (a) c->id = a;
        int32_t *b = realloc(c->next, cap * sizeof(int32_t));
        if (b) c->next = b;
        int32_t *p = realloc(c->prev, cap * sizeof(int32_t));
        if (p) c->prev = p;
        if (!a || !b || !p) return LC_ENOMEM;
        c->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        c->id[i] = t->byte_id[(uint8_t)s[i]];
        c->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        c->prev[i] = (int32_t)i - 1;
    }
    c->heap.n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if ((rc = heap_push(c, (int32_t)i, (int32_t)i + 1))) return rc;
    while (c->heap.n) {
        bpe_item_t it;
        tok__heap_pop(&c->heap, &it);
        int32_t l = it.left, r = c->next[l];
        /* Dead left symbols have id -2; a changed pair means a stale entry. */
        if (c->id[l] != it.idl || r < 0 || c->id[r] != it.idr) continue;
        int32_t rank, res;
        merge_find(t, it.idl, it.idr, &rank, &res);
        c->id[l] = res;
        c->id[r] = -2;
        c->next[l] = c->next[r];
        if (c->next[r] >= 0) c->prev[c->next[r]] = l;
        if (c->prev[l] >= 0 && (rc = heap_push(c, c->prev[l], l))) return rc;
        if (c->next[l] >= 0 && (rc = heap_push(c, l, c->next[l]))) return rc;
    }
    for (int32_t i = 0; i >= 0; i = c->next[i])
        if ((rc = emit(c, c->id[i]))) return rc;
    return 0;
}

/* Splits s with regex `stage` (matches and the gaps between them are both
 * pieces) and hands each piece to the next stage, the last stage to BPE. */
static int split(bpe_ctx_t *c, int stage, const char *s, size_t n) {
    if (stage == c->t->n_re) return bpe_word(c, s, n);
    const pcre2_code *re = c->t->re[stage];
    size_t pos = 0, gap = 0;
    int rc;
    uint32_t opts = 0;
    while (pos < n) {
        int m = pcre2_match(re, (PCRE2_SPTR)s, n, pos, opts, c->md, NULL);
        if (m == PCRE2_ERROR_JIT_STACKLIMIT && !opts) {
            opts = PCRE2_NO_JIT; // pathological input: retry on the interpreter
            continue;
        }
        if (m < 0) break; // no match (or a matcher limit): the rest is one gap
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me <= ms) { // cannot happen with our regexes; never loop on it
            pos = ms + tok__utf8_len(s + ms, n - ms);
            continue;
        }
        if (ms > gap && (rc = split(c, stage + 1, s + gap, ms - gap))) return rc;
        if ((rc = split(c, stage + 1, s + ms, me - ms))) return rc;
        pos = gap = me;
    }
    if (n > gap) return split(c, stage + 1, s + gap, n - gap);
    return 0;
}

int tok__bpe_encode(const tok_t *t, const char *s, size_t len, tok_ids_t *out) {
    bpe_ctx_t c = {.t = t, .out = out, .heap = {.esz = sizeof(bpe_item_t), .less = item_less}};
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) return LC_ENOMEM;
    int rc = split(&c, 0, s, len);
    pcre2_match_data_free(c.md);
    free(c.id);
    free(c.next);
    free(c.prev);
    free(c.heap.a);
    free(c.map);
    return rc;
}
