/* Stop-string hold-back matcher (see stop.h). Every delta is checked against
 * the whole held tail, so a stop string split over several tokens is found;
 * since earlier pushes found no complete match, any match ends in the newest
 * delta, and the earliest-starting match wins, as OpenAI's API does. */
#include "scheduler/stop.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

int sched_text_append(sched_text_t *t, const char *s, size_t n) {
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 32;
        while (cap < t->len + n + 1) cap *= 2;
        char *ns = realloc(t->s, cap);
        if (!ns) return LC_ENOMEM;
        t->s = ns;
        t->cap = cap;
    }
    if (n) memcpy(t->s + t->len, s, n);
    t->len += n;
    t->s[t->len] = 0;
    return 0;
}

void sched_stopm_init(sched_stopm_t *m, char *const *stops, int n_stops) {
    memset(m, 0, sizeof *m);
    m->stops = stops;
    m->n_stops = n_stops;
}

void sched_stopm_fini(sched_stopm_t *m) {
    free(m->held.s);
    memset(m, 0, sizeof *m);
}

/* Consumes the first n bytes of the held text. */
static void held_drop(sched_text_t *h, size_t n) {
    memmove(h->s, h->s + n, h->len - n + 1);
    h->len -= n;
}

int sched_stopm_push(sched_stopm_t *m, const char *text, size_t n, sched_text_t *out) {
    if (m->n_stops == 0) return sched_text_append(out, text, n);
    if (sched_text_append(&m->held, text, n)) return LC_ENOMEM;
    sched_text_t *h = &m->held;
    /* A complete match: the earliest start over all stop strings. */
    size_t best = SIZE_MAX;
    for (int i = 0; i < m->n_stops; i++) {
        size_t sl = strlen(m->stops[i]);
        if (sl == 0 || sl > h->len) continue;
        const char *hit = memmem(h->s, h->len, m->stops[i], sl);
        if (hit && (size_t)(hit - h->s) < best) best = (size_t)(hit - h->s);
    }
    if (best != SIZE_MAX) {
        int rc = sched_text_append(out, h->s, best);
        h->len = 0;
        h->s[0] = 0;
        m->n_stops = 0; // finished: nothing more is matched or released
        return rc ? rc : 1;
    }
    /* Keep the longest tail that is a proper prefix of some stop string. */
    size_t keep_from = h->len;
    for (size_t i = 0; i < h->len && keep_from == h->len; i++) {
        size_t tail = h->len - i;
        for (int j = 0; j < m->n_stops; j++) {
            size_t sl = strlen(m->stops[j]);
            if (tail < sl && memcmp(h->s + i, m->stops[j], tail) == 0) {
                keep_from = i;
                break;
            }
        }
    }
    if (keep_from == 0) return 0;
    if (sched_text_append(out, h->s, keep_from)) return LC_ENOMEM;
    held_drop(h, keep_from);
    return 0;
}

int sched_stopm_flush(sched_stopm_t *m, sched_text_t *out) {
    int rc = 0;
    if (m->held.len) rc = sched_text_append(out, m->held.s, m->held.len);
    m->held.len = 0;
    if (m->held.s) m->held.s[0] = 0;
    return rc;
}
