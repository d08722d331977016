/* Small helpers for the tokenizer: id vectors, byte buffers, the vocabulary
 * hash, and a lossy UTF-8 scanner. The scanner is the one place that decides
 * how malformed bytes become U+FFFD, so that tok_decode and the incremental
 * detokenizer can never disagree. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/tok_impl.h"

int tok__push(tok_ids_t *v, int32_t id) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = realloc(v->ids, cap * sizeof(*p));
        if (!p) return LC_ENOMEM;
        v->ids = p;
        v->cap = cap;
    }
    v->ids[v->n++] = id;
    return 0;
}

void tok_ids_free(tok_ids_t *v) {
    if (!v) return;
    free(v->ids);
    v->ids = NULL;
    v->n = v->cap = 0;
}

/* FNV-1a: short keys, good enough spread for power-of-two tables. */
uint32_t tok__hash(const char *s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)s[i];
        h *= 16777619u;
    }
    return h;
}

int32_t tok__lookup(const tok_t *t, const char *s, size_t len) {
    uint32_t i = tok__hash(s, len) & t->vocab_mask;
    for (;;) {
        int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (t->text_len[id] == len && memcmp(t->text + t->text_off[id], s, len) == 0) return id;
        i = (i + 1) & t->vocab_mask;
    }
}

int tok__utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Expected length of a sequence led by c and the allowed range of its second
 * byte (the tight ranges exclude overlongs, surrogates and > U+10FFFF);
 * 0 for a byte that cannot lead. */
static int utf8_lead(uint8_t c, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) {
        *lo = 0xA0;
        return 3;
    }
    if (c == 0xED) {
        *hi = 0x9F;
        return 3;
    }
    if (c >= 0xE1 && c <= 0xEF) return 3;
    if (c == 0xF0) {
        *lo = 0x90;
        return 4;
    }
    if (c >= 0xF1 && c <= 0xF3) return 4;
    if (c == 0xF4) {
        *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Returns the sequence length at in (complete and valid), or 0 with *bad set
 * to the length of the maximal ill-formed subpart, or 0 with *bad = 0 when
 * the bytes run out while the sequence is still a valid prefix. */
static size_t utf8_scan(const uint8_t *in, size_t n, size_t *bad) {
    uint8_t lo, hi;
    int need = utf8_lead(in[0], &lo, &hi);
    *bad = 0;
    if (need == 0) {
        *bad = 1;
        return 0;
    }
    for (int k = 1; k < need; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t c = in[k];
        uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
        if (c < l || c > h) {
            *bad = (size_t)k;
            return 0;
        }
    }
    return (size_t)need;
}

size_t tok__utf8_len(const char *s, size_t n) {
    size_t bad, k = utf8_scan((const uint8_t *)s, n, &bad);
    return k ? k : 1;
}

int tok__utf8_lossy(lc_buf_t *out, const uint8_t *in, size_t n, int final, size_t *used) {
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    size_t i = 0, run = 0; // run: start of the pending stretch of valid bytes
    int rc = 0;
    while (i < n) {
        if (in[i] < 0x80) {
            i++;
            continue;
        }
        size_t bad, k = utf8_scan(in + i, n - i, &bad);
        if (k) {
            i += k;
            continue;
        }
        if ((rc = lc_buf_put(out, in + run, i - run))) return rc;
        if (bad == 0 && !final) {
            *used = i; // a character still being completed
            return 0;
        }
        if ((rc = lc_buf_put(out, fffd, 3))) return rc;
        i += bad ? bad : n - i;
        run = i;
    }
    if ((rc = lc_buf_put(out, n > run ? (const void *)(in + run) : "", n - run)))
        return rc; // in may be NULL when n is 0
    *used = n;
    return 0;
}

/* ---- merge queue --------------------------------------------------------- */
#define HEAP_AT(h, i) ((h)->a + (size_t)(i) * (h)->esz)

int tok__heap_push(tok_heap_t *h, const void *item) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        unsigned char *a = realloc(h->a, cap * h->esz);
        if (!a) return LC_ENOMEM;
        h->a = a;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0 && h->less(item, HEAP_AT(h, (i - 1) / 2))) {
        memcpy(HEAP_AT(h, i), HEAP_AT(h, (i - 1) / 2), h->esz);
        i = (i - 1) / 2;
    }
    memcpy(HEAP_AT(h, i), item, h->esz);
    return 0;
}

void tok__heap_pop(tok_heap_t *h, void *out) {
    unsigned char last[TOK_HEAP_MAX_ITEM];
    memcpy(out, HEAP_AT(h, 0), h->esz);
    memcpy(last, HEAP_AT(h, --h->n), h->esz);
    size_t i = 0, n = h->n;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const void *best = last;
        if (l < n && h->less(HEAP_AT(h, l), best)) m = l, best = HEAP_AT(h, l);
        if (l + 1 < n && h->less(HEAP_AT(h, l + 1), best)) m = l + 1;
        if (m == i) break;
        memcpy(HEAP_AT(h, i), HEAP_AT(h, m), h->esz);
        i = m;
    }
    if (n) memcpy(HEAP_AT(h, i), last, h->esz);
}
