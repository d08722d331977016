/* Requests: deep-copied parameters, reference counting, the cancel flag and
 * the thread-safe event queue between the engine and the HTTP loop. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "scheduler/sched_internal.h"

static atomic_uint_fast64_t g_next_id = 1;

const char *sched_finish_name(sched_finish_t f) {
    switch (f) {
    case SCHED_FINISH_STOP: return "stop";
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_CANCELLED: return "cancelled";
    case SCHED_FINISH_ERROR: return "error";
    default: return "none";
    }
}

void sched_event_clear(sched_event_t *ev) {
    if (!ev) return;
    free(ev->text);
    free(ev->prompt_lps);
    ev->text = NULL;
    ev->text_len = 0;
    ev->prompt_lps = NULL;
    ev->n_prompt_lps = 0;
}

sched_req_t *sched_req_create(const sched_params_t *p, int *status) {
    if (status) *status = LC_OK;
    if (!p || p->n_prompt < 1 || !p->prompt || p->n_choices < 1 || p->max_tokens < 0 || p->n_stop < 0 ||
        p->n_stop > SCHED_MAX_STOP || p->n_stop_token_ids < 0) {
        if (status) *status = LC_EINVAL;
        return NULL;
    }
    sched_req_t *r = calloc(1, sizeof *r);
    if (!r) goto oom;
    r->p = *p;
    if (p->grammar) gram_retain(p->grammar);
    pthread_mutex_init(&r->lock, NULL);
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancel, 0);
    r->id = atomic_fetch_add(&g_next_id, 1);
    kv_seq_init(&r->pkv);
    if (!(r->prompt = malloc((size_t)p->n_prompt * sizeof *r->prompt))) goto oom_r;
    memcpy(r->prompt, p->prompt, (size_t)p->n_prompt * sizeof *r->prompt);
    r->p.prompt = r->prompt;
    int ns = 0;
    for (int i = 0; i < p->n_stop; i++) {
        if (!p->stop[i] || !p->stop[i][0]) continue;
        if (!(r->stops[ns] = strdup(p->stop[i]))) goto oom_r;
        ns++;
    }
    for (int i = 0; i < SCHED_MAX_STOP; i++) r->p.stop[i] = r->stops[i];
    r->p.n_stop = ns;
    if (p->n_stop_token_ids > 0) {
        if (!(r->stop_ids = malloc((size_t)p->n_stop_token_ids * sizeof *r->stop_ids))) goto oom_r;
        memcpy(r->stop_ids, p->stop_token_ids, (size_t)p->n_stop_token_ids * sizeof *r->stop_ids);
    }
    r->p.stop_token_ids = r->stop_ids;
    if (p->sampling.n_logit_bias > 0 && p->sampling.logit_bias) {
        size_t sz = (size_t)p->sampling.n_logit_bias * sizeof *r->bias;
        if (!(r->bias = malloc(sz))) goto oom_r;
        memcpy(r->bias, p->sampling.logit_bias, sz);
    } else {
        r->p.sampling.n_logit_bias = 0;
    }
    r->p.sampling.logit_bias = r->bias;
    if (!(r->ch = calloc((size_t)p->n_choices, sizeof *r->ch))) goto oom_r;
    r->evq_cap = p->n_choices + 16; // the terminal events' room from the start (sched__req_push)
    if (!(r->evq = malloc((size_t)r->evq_cap * sizeof *r->evq))) goto oom_r;
    for (int c = 0; c < p->n_choices; c++) kv_seq_init(&r->ch[c].kv);
    r->usage.prompt_tokens = p->n_prompt;
    return r;
oom_r:
    sched_req_release(r);
oom:
    if (status) *status = LC_ENOMEM;
    return NULL;
}

void sched_req_retain(sched_req_t *r) { atomic_fetch_add(&r->refs, 1); }

void sched__req_free_engine_state(sched_req_t *r) {
    if (!r->ch) return;
    for (int c = 0; c < r->p.n_choices; c++) {
        sched_choice_t *ch = &r->ch[c];
        sampler_destroy(ch->sampler);
        ch->sampler = NULL;
        if (ch->detok) tok_stream_destroy(ch->detok);
        ch->detok = NULL;
        if (ch->attn) attn_state_destroy(ch->attn);
        ch->attn = NULL;
        gram_matcher_destroy(ch->gm);
        ch->gm = NULL;
        sched_stopm_fini(&ch->stopm);
        free(ch->toks);
        ch->toks = NULL;
    }
    if (r->pattn) attn_state_destroy(r->pattn);
    r->pattn = NULL;
    free(r->prompt_lps);
    r->prompt_lps = NULL;
}

void sched_req_release(sched_req_t *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    /* The engine released every block before dropping its reference. */
    sched__req_free_engine_state(r);
    free(r->ch);
    for (int i = 0; i < r->evq_n; i++) sched_event_clear(&r->evq[(r->evq_head + i) % r->evq_cap]);
    free(r->evq);
    free(r->prompt);
    for (int i = 0; i < SCHED_MAX_STOP; i++) free(r->stops[i]);
    free(r->stop_ids);
    free(r->bias);
    gram_release(r->p.grammar);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

void sched_req_cancel(sched_req_t *r) { atomic_store(&r->cancel, 1); }
uint64_t sched_req_id(const sched_req_t *r) { return r->id; }

int sched_req_poll(sched_req_t *r, sched_event_t *out, int max) {
    pthread_mutex_lock(&r->lock);
    int n = 0;
    while (n < max && r->evq_n > 0) {
        out[n++] = r->evq[r->evq_head];
        r->evq_head = (r->evq_head + 1) % r->evq_cap;
        r->evq_n--;
    }
    pthread_mutex_unlock(&r->lock);
    return n;
}

void sched_req_usage(sched_req_t *r, sched_usage_t *out) {
    pthread_mutex_lock(&r->lock);
    *out = r->usage;
    pthread_mutex_unlock(&r->lock);
}

/* Room for every FINISH and the DONE event is always kept free: only a token
 * or prompt-logprobs event can find the queue unable to grow, and then the
 * engine fails the request with events that fit. */
int sched__req_push(sched_req_t *r, sched_event_t *ev) {
    const int terminal = ev->kind == SCHED_EV_FINISH || ev->kind == SCHED_EV_DONE;
    pthread_mutex_lock(&r->lock);
    const int need = r->evq_n + 1 + (terminal ? 0 : r->p.n_choices + 1);
    if (need > r->evq_cap) {
        int cap = r->evq_cap * 2 > need ? r->evq_cap * 2 : need;
        sched_event_t *q = malloc((size_t)cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&r->lock);
            sched_event_clear(ev);
            return LC_ENOMEM;
        }
        for (int i = 0; i < r->evq_n; i++) q[i] = r->evq[(r->evq_head + i) % r->evq_cap];
        free(r->evq);
        r->evq = q;
        r->evq_cap = cap;
        r->evq_head = 0;
    }
    r->evq[(r->evq_head + r->evq_n) % r->evq_cap] = *ev;
    r->evq_n++;
    pthread_mutex_unlock(&r->lock);
    return 0;
}

void sched__req_set_usage(sched_req_t *r, const sched_usage_t *u) {
    pthread_mutex_lock(&r->lock);
    r->usage = *u;
    pthread_mutex_unlock(&r->lock);
}

/* ---- request vectors ------------------------------------------------------------ */
int sched__reqv_reserve(sched_reqv_t *v, int cap) {
    sched_req_t **nv = realloc(v->v, (size_t)cap * sizeof *nv);
    if (!nv) return LC_ENOMEM;
    v->v = nv;
    v->cap = cap;
    return 0;
}

int sched__reqv_insert(sched_reqv_t *v, int i, sched_req_t *r) {
    if (v->n == v->cap) return LC_ENOMEM;
    memmove(v->v + i + 1, v->v + i, (size_t)(v->n - i) * sizeof *v->v);
    v->v[i] = r;
    v->n++;
    return 0;
}

int sched__reqv_push(sched_reqv_t *v, sched_req_t *r) { return sched__reqv_insert(v, v->n, r); }

void sched__reqv_remove(sched_reqv_t *v, int i) {
    memmove(v->v + i, v->v + i + 1, (size_t)(v->n - i - 1) * sizeof *v->v);
    v->n--;
}
