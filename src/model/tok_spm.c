/* SentencePiece BPE ("llama" in GGUF): spaces become U+2581 (▁), an optional
 * dummy space leads the text, characters merge pairwise by the score of the
 * merged token (highest first), and whatever is not a token at the end falls
 * back to <0xXX> byte tokens. Follows llama.cpp's llm_tokenizer_spm, which
 * matches SentencePiece on Llama vocabularies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_impl.h"

static const char ws_mark[] = "\xe2\x96\x81"; // U+2581

int tok__spm_init(tok_t *t, char *err, size_t errlen) {
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof(s), "<0x%02X>", b);
        t->byte_id[b] = tok__lookup(t, s, 6);
    }
    (void)err;
    (void)errlen;
    return 0;
}

size_t tok__spm_unmap(const char *text, size_t len, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && memcmp(text + i, ws_mark, 3) == 0) {
            out[o++] = ' ';
            i += 3;
        } else {
            out[o++] = text[i++];
        }
    }
    return o;
}

typedef struct {
    float score;
    int32_t left, right;
    size_t size; // bytes of the merged text when queued; stale if changed
} spm_item_t;

typedef struct {
    const char *text; // start of this symbol in the escaped string
    size_t n;         // 0 once merged into its left neighbour
    int32_t prev, next;
} spm_sym_t;

typedef struct {
    const tok_t *t;
    spm_sym_t *sym;
    tok_heap_t heap; // of spm_item_t
} spm_ctx_t;

_Static_assert(sizeof(spm_item_t) <= TOK_HEAP_MAX_ITEM, "merge queue item too large");

static int item_less(const void *xp, const void *yp) {
    const spm_item_t *x = xp, *y = yp;
    return x->score > y->score || (x->score == y->score && x->left < y->left);
}

static int try_pair(spm_ctx_t *c, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    const spm_sym_t *a = &c->sym[l], *b = &c->sym[r];
    int32_t id = tok__lookup(c->t, a->text, a->n + b->n); // neighbours are contiguous
    if (id < 0) return 0;
    spm_item_t it = {c->t->scores[id], l, r, a->n + b->n};
    return tok__heap_push(&c->heap, &it);
}

int tok__spm_encode(const tok_t *t, const char *s, size_t len, int prefix, tok_ids_t *out) {
    int rc = LC_ENOMEM;
    spm_ctx_t c = {.t = t, .heap = {.esz = sizeof(spm_item_t), .less = item_less}};
    /* Escape: every space (and the dummy prefix) becomes ▁. */
    size_t cap = (len + 1) * 3;
    char *esc = malloc(cap);
    if (!esc) return LC_ENOMEM;
    size_t n = 0;
    if (prefix) memcpy(esc + n, ws_mark, 3), n += 3;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ')
            memcpy(esc + n, ws_mark, 3), n += 3;
        else
            esc[n++] = s[i];
    }
    c.sym = malloc((n ? n : 1) * sizeof(spm_sym_t));
    if (!c.sym) goto done;
    int32_t ns = 0;
    for (size_t i = 0; i < n; ns++) {
        size_t k = tok__utf8_len(esc + i, n - i);
        c.sym[ns] = (spm_sym_t){esc + i, k, ns - 1, -1};
        if (ns) c.sym[ns - 1].next = ns;
        i += k;
    }
    for (int32_t i = 0; i + 1 < ns; i++)
        if ((rc = try_pair(&c, i, i + 1))) goto done;
    while (c.heap.n) {
        spm_item_t it;
        tok__heap_pop(&c.heap, &it);
        spm_sym_t *a = &c.sym[it.left], *b = &c.sym[it.right];
        if (a->n == 0 || b->n == 0 || a->n + b->n != it.size) continue;
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) c.sym[b->next].prev = it.left;
        if ((rc = try_pair(&c, a->prev, it.left))) goto done;
        if ((rc = try_pair(&c, it.left, a->next))) goto done;
    }
    rc = 0;
    for (int32_t i = ns ? 0 : -1; i >= 0 && !rc; i = c.sym[i].next) {
        int32_t id = tok__lookup(t, c.sym[i].text, c.sym[i].n);
        if (id >= 0) {
            rc = tok__push(out, id);
            continue;
        }
        /* Not in the vocabulary: one byte token per byte, else unknown. */
        for (size_t k = 0; k < c.sym[i].n && !rc; k++) {
            int32_t b = t->byte_id[(uint8_t)c.sym[i].text[k]];
            if (b < 0) b = t->unk;
            if (b >= 0) rc = tok__push(out, b);
        }
    }
done:
    free(esc);
    free(c.sym);
    free(c.heap.a);
    return rc;
}
