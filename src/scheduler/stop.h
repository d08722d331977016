/* Stop-string matching over detokenized text. Text arrives in deltas that
 * may split a stop string anywhere; whatever might still be the start of a
 * stop string is held back, and a matched stop string (with everything after
 * it) is never released. Internal to the scheduler; kept apart so that it can
 * be tested on plain strings. */
#ifndef LC_SCHED_STOP_H
#define LC_SCHED_STOP_H

#include <stddef.h>

/* A growable text buffer; zero-initialise, free .s when done. */
typedef struct {
    char *s; // NUL-terminated when non-NULL
    size_t len, cap;
} sched_text_t;

int sched_text_append(sched_text_t *t, const char *s, size_t n); // 0 or LC_ENOMEM

typedef struct {
    char *const *stops; // (n_stops) NUL-terminated, borrowed; empty strings ignored
    int n_stops;
    sched_text_t held; // text not yet released
} sched_stopm_t;

void sched_stopm_init(sched_stopm_t *m, char *const *stops, int n_stops);
void sched_stopm_fini(sched_stopm_t *m);
/* Adds text[0..n). Appends to out the text that can no longer be part of a
 * stop string. Returns 1 when a stop string matched (out then ends right
 * before it and nothing more is ever released), 0 if not, LC_ENOMEM. */
int sched_stopm_push(sched_stopm_t *m, const char *text, size_t n, sched_text_t *out);
/* End of generation: releases everything held into out. */
int sched_stopm_flush(sched_stopm_t *m, sched_text_t *out);

#endif
