/* After the forward pass: logits become tokens (each choice's own sampler),
 * text (detokenizer and stop strings) and events; prompts that completed
 * fork into their choices; finished requests release their blocks and report
 * usage. Engine thread only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "scheduler/sched_internal.h"

/* ---- events -------------------------------------------------------------------- */
/* Queues ev for r and marks r to be woken at the end of the step (touched
 * has room for every request the engine holds: reserved at creation). A
 * token event that finds no memory fails the request instead: its
 * FINISH and DONE events always have room (req.c keeps it). */
static void finish_choice(sched_t *s, sched_req_t *r, int c, sched_finish_t f, int status);

static void push_ev(sched_t *s, sched_req_t *r, sched_event_t *ev) {
    const int terminal = ev->kind == SCHED_EV_FINISH || ev->kind == SCHED_EV_DONE;
    if (!r->wake_pending && sched__reqv_push(&s->touched, r) == 0) r->wake_pending = 1;
    if (sched__req_push(r, ev) == 0 || terminal) return;
    LC_ERROR("sched: out of memory queueing an event of request %llu", (unsigned long long)r->id);
    sched__finish_all(s, r, SCHED_FINISH_ERROR, LC_ENOMEM);
}

static void fill_usage(sched_req_t *r, sched_usage_t *u, double now) {
    sched_req_usage(r, u);
    u->prompt_tokens = r->p.n_prompt;
    u->completion_tokens = 0;
    for (int c = 0; c < r->p.n_choices; c++) u->completion_tokens += r->ch[c].n_gen;
    u->cached_tokens = r->cached_tokens;
    u->preemptions = r->preemptions;
    attn_stats_t st = {0};
    const attn_stats_t *a;
    if (r->pattn && (a = attn_state_stats(r->pattn))) st = *a;
    for (int c = 0; c < r->p.n_choices; c++) {
        if (!r->ch[c].attn || !(a = attn_state_stats(r->ch[c].attn))) continue;
        st.prefill_computed += a->prefill_computed;
        st.prefill_total += a->prefill_total;
        st.decode_computed += a->decode_computed;
        st.decode_total += a->decode_total;
    }
    u->prefill_density = st.prefill_total > 0 ? st.prefill_computed / st.prefill_total : NAN;
    u->decode_density = st.decode_total > 0 ? st.decode_computed / st.decode_total : NAN;
    u->prefill_method = (int)r->policy.prefill;
    u->decode_method = (int)r->policy.decode;
    u->queue_s = r->t_sched > 0 ? r->t_sched - r->t_submit : 0;
    u->ttft_s = r->t_first > 0 ? r->t_first - r->t_submit : 0;
    u->e2e_s = now - r->t_submit;
}

static void request_done(sched_t *s, sched_req_t *r) {
    double now = lc_now_s();
    kv_seq_release(s->kv, &r->pkv);
    sched_usage_t u;
    fill_usage(r, &u, now);
    sched__req_set_usage(r, &u);
    sched_event_t ev = {.kind = SCHED_EV_DONE};
    push_ev(s, r, &ev);
    r->state = REQ_DONE;
    /* The request's overall outcome: an error or cancellation wins. */
    sched_finish_t f = r->ch[0].finish;
    for (int c = 0; c < r->p.n_choices; c++)
        if (r->ch[c].finish == SCHED_FINISH_ERROR || r->ch[c].finish == SCHED_FINISH_CANCELLED) f = r->ch[c].finish;
    pthread_mutex_lock(&s->mlock);
    s->m.requests_finished[f]++;
    if (!isnan(u.prefill_density)) {
        s->m.prefill_density_sum += u.prefill_density;
        s->m.density_count++;
    }
    if (!isnan(u.decode_density)) {
        s->m.decode_density_sum += u.decode_density;
        s->m.decode_density_count++;
    }
    pthread_mutex_unlock(&s->mlock);
    lc_hist_observe(&s->h_e2e, u.e2e_s);
}

static void finish_choice(sched_t *s, sched_req_t *r, int c, sched_finish_t f, int status) {
    sched_choice_t *ch = &r->ch[c];
    if (ch->finish != SCHED_FINISH_NONE) return;
    ch->finish = f;
    kv_seq_release(s->kv, &ch->kv);
    sched_event_t ev = {.kind = SCHED_EV_FINISH, .choice = c, .finish = f, .status = status};
    push_ev(s, r, &ev);
    if (--r->n_live == 0) request_done(s, r);
}

void sched__finish_all(sched_t *s, sched_req_t *r, sched_finish_t f, int status) {
    if (r->state == REQ_DONE) return;
    if (r->n_live == 0) r->n_live = r->p.n_choices; // never (fully) admitted
    for (int c = 0; c < r->p.n_choices; c++) finish_choice(s, r, c, f, status);
    kv_seq_release(s->kv, &r->pkv);
}

/* ---- after the forward pass ---------------------------------------------------------- */
static int is_in(int32_t t, const int32_t *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i] == t) return 1;
    return 0;
}

/* Draws choice c's next token from logits (modified): a function of the
 * choice's own state alone (its sampler, its grammar matcher), so choices
 * without a grammar draw in parallel. */
static int draw(const sched_t *s, sched_req_t *r, int c, float *logits, sampler_result_t *res) {
    sched_choice_t *ch = &r->ch[c];
    int32_t banned[2 + 64];
    int n_banned = 0;
    if (ch->n_gen < r->p.min_tokens) {
        if (!r->p.ignore_eos)
            for (int i = 0; i < s->n_eos; i++) banned[n_banned++] = s->eos[i];
        for (int i = 0; i < r->p.n_stop_token_ids && n_banned < (int)(sizeof banned / sizeof *banned); i++)
            banned[n_banned++] = r->stop_ids[i];
    }
    /* The grammar's mask is a function of this choice's text alone. */
    int rc = ch->gm ? gram_matcher_apply(ch->gm, logits, s->hp.n_vocab, s->eos, s->n_eos) : 0;
    if (!rc) rc = sampler_sample(ch->sampler, logits, banned, n_banned, res);
    return rc;
}

/* A plain greedy draw whose argmax the executor found, or a plain
 * temperature draw it made with the sampler's next uniform (now taken);
 * -1: nothing allowed, as sampler_sample says it. */
static int take_argmax(sched_req_t *r, int c, const model_seq_t *ms, int32_t a, sampler_result_t *res) {
    if (ms->draw_temperature > 0) sampler_skip_uniform(r->ch[c].sampler);
    memset(res, 0, sizeof *res);
    if (a < 0) return LC_EINVAL;
    res->token = a;
    res->logprob = NAN;
    return 0;
}

/* Emits choice c's drawn token (rc: the draw's status) and everything it
 * ends. */
static void commit_choice(sched_t *s, sched_req_t *r, int c, int rc, const sampler_result_t *drawn, double now) {
    sched_choice_t *ch = &r->ch[c];
    sampler_result_t res = *drawn;
    if (rc) {
        finish_choice(s, r, c, SCHED_FINISH_ERROR, rc);
        return;
    }
    int32_t t = res.token;
    int is_eos = is_in(t, s->eos, s->n_eos);
    if (ch->gm && !is_eos && (rc = gram_matcher_accept_token(ch->gm, t))) {
        finish_choice(s, r, c, SCHED_FINISH_ERROR, rc);
        return;
    }
    ch->toks[r->p.n_prompt + ch->n_gen] = t;
    ch->n_gen++;
    sampler_accept(ch->sampler, t);
    if (r->t_first == 0) {
        r->t_first = now;
        lc_hist_observe(&s->h_ttft, now - r->t_submit);
    }
    if (ch->t_last > 0) lc_hist_observe(&s->h_itl, now - ch->t_last);
    ch->t_last = now;
    pthread_mutex_lock(&s->mlock);
    s->m.generation_tokens_total++;
    pthread_mutex_unlock(&s->mlock);

    sched_finish_t f = SCHED_FINISH_NONE;
    sched_text_t out = {0};
    int matched = 0;
    /* Under a grammar, EOS is allowed only once the text is complete, and
     * ends the choice even with ignore_eos. */
    if (((!r->p.ignore_eos || ch->gm) && is_eos) || is_in(t, r->stop_ids, r->p.n_stop_token_ids)) {
        f = SCHED_FINISH_STOP; // the stop token's own text is never returned
    } else if (ch->detok) {
        const char *txt;
        size_t len;
        if (tok_stream_push(ch->detok, t, &txt, &len) == 0 && len)
            matched = sched_stopm_push(&ch->stopm, txt, len, &out) == 1;
        if (matched) f = SCHED_FINISH_STOP;
    }
    if (f == SCHED_FINISH_NONE && ch->gm && gram_matcher_done(ch->gm)) f = SCHED_FINISH_STOP; // nothing may follow
    if (f == SCHED_FINISH_NONE && (ch->n_gen >= r->p.max_tokens || r->p.n_prompt + ch->n_gen >= s->hp.n_ctx_train))
        f = SCHED_FINISH_LENGTH;
    if (f != SCHED_FINISH_NONE && !matched) {
        /* Nothing can match any more: release what was held. */
        const char *txt;
        size_t len;
        if (ch->detok && tok_stream_flush(ch->detok, &txt, &len) == 0 && len)
            matched = sched_stopm_push(&ch->stopm, txt, len, &out) == 1;
        if (!matched) sched_stopm_flush(&ch->stopm, &out);
    }
    sched_event_t ev = {.kind = SCHED_EV_TOKEN, .choice = c, .token = t};
    if (!out.s) sched_text_append(&out, "", 0);
    ev.text = out.s;
    ev.text_len = out.len;
    if (r->p.logprobs >= 0) {
        ev.has_lp = 1;
        ev.lp.token = t;
        ev.lp.logprob = res.logprob;
        ev.lp.n_top = res.n_top;
        memcpy(ev.lp.top_ids, res.top_ids, sizeof res.top_ids);
        memcpy(ev.lp.top_logprobs, res.top_logprobs, sizeof res.top_logprobs);
    }
    push_ev(s, r, &ev);
    if (f != SCHED_FINISH_NONE) finish_choice(s, r, c, f, 0);
}

static void prompt_rows_lp(sched_t *s, sched_req_t *r, const model_seq_t *ms) {
    int nv = s->hp.n_vocab, top = r->p.prompt_logprobs;
    if (top > SAMPLER_MAX_LOGPROBS) top = SAMPLER_MAX_LOGPROBS;
    if (ms->pos0 == 0) {
        r->prompt_lps[0] = (sched_logprob_t){.token = r->prompt[0], .logprob = NAN};
    }
    for (int j = 0; j < ms->n_tok; j++) {
        int64_t pos = ms->pos0 + j + 1;
        if (pos >= r->p.n_prompt) break;
        sampler_result_t res;
        sampler_logprobs_of(ms->logits + (size_t)j * nv, nv, r->prompt[pos], top, &res);
        sched_logprob_t *lp = &r->prompt_lps[pos];
        lp->token = res.token;
        lp->logprob = res.logprob;
        lp->n_top = res.n_top;
        memcpy(lp->top_ids, res.top_ids, sizeof res.top_ids);
        memcpy(lp->top_logprobs, res.top_logprobs, sizeof res.top_logprobs);
    }
}

static void prompt_complete(sched_t *s, sched_req_t *r, const model_seq_t *ms, double now) {
    if (r->prompt_lps && !r->prompt_lp_done) {
        r->prompt_lp_done = 1;
        sched_event_t ev = {
            .kind = SCHED_EV_PROMPT_LOGPROBS, .prompt_lps = r->prompt_lps, .n_prompt_lps = r->p.n_prompt};
        r->prompt_lps = NULL; // the event owns it now
        push_ev(s, r, &ev);
    }
    for (int c = 0; c < r->p.n_choices; c++) {
        if (r->ch[c].finish != SCHED_FINISH_NONE) continue;
        kv_seq_t *ck = &r->ch[c].kv;
        int rc = kv_seq_fork(s->kv, &r->pkv, ck);
        if (rc) {
            finish_choice(s, r, c, SCHED_FINISH_ERROR, rc);
            continue;
        }
        /* Generated tokens under a sparse decode policy start a chain of
         * their own (the prompt's blocks stay shared and cached as they are). */
        uint64_t salt = sched__decode_salt(&r->policy);
        if (salt != ck->salt) {
            ck->salt = salt;
            ck->n_hashed = 0;
            ck->last_hash = 0;
        }
    }
    kv_seq_release(s->kv, &r->pkv);
    r->prompt_phase = 0;
    if (r->sampled_once || r->state == REQ_DONE) return;
    r->sampled_once = 1;
    pthread_mutex_lock(&s->mlock);
    s->m.prompt_tokens_total += (uint64_t)r->p.n_prompt;
    pthread_mutex_unlock(&s->mlock);
    if (r->p.max_tokens == 0) {
        for (int c = 0; c < r->p.n_choices; c++) finish_choice(s, r, c, SCHED_FINISH_LENGTH, 0);
        return;
    }
    if (ms->argmax) { // one choice, drawn by the executor (step.c)
        sampler_result_t res;
        const int rc = take_argmax(r, 0, ms, *ms->argmax, &res);
        if (r->ch[0].finish == SCHED_FINISH_NONE) commit_choice(s, r, 0, rc, &res, now);
        return;
    }
    size_t nv = (size_t)s->hp.n_vocab;
    const float *last = ms->logits + (ms->logits_mode == 2 ? (size_t)(ms->n_tok - 1) * nv : 0);
    for (int c = 0; c < r->p.n_choices; c++) {
        if (r->ch[c].finish != SCHED_FINISH_NONE) continue;
        memcpy(s->tmp, last, nv * sizeof *s->tmp);
        sampler_result_t res;
        int rc = draw(s, r, c, s->tmp, &res);
        commit_choice(s, r, c, rc, &res, now);
    }
}

/* 1 when slice i is a live choice's row to sample that may be drawn apart
 * from the others (no grammar: a grammar's mask cache is shared by the
 * request's choices). */
static int parallel_draw(const sched_t *s, int i) {
    const sched_req_t *r = s->slot[i].r;
    if (s->slot[i].choice < 0 || r->state == REQ_DONE || !s->bseq[i].logits_mode) return 0;
    const sched_choice_t *ch = &r->ch[s->slot[i].choice];
    return ch->finish == SCHED_FINISH_NONE && !ch->gm;
}

/* Whether n rows' draws go to the OpenMP team of `team` threads. Waking the
 * team is not free: after a GPU's forward pass of a few milliseconds its
 * threads sleep, and a region ends only when the last of them has woken and
 * arrived, however little work was left for it. On the 2-vCPU VM, with
 * libgomp's spin of 30,000 that lacunad sets, that took ~1 ms, longer than
 * the engine thread alone drawing 64 greedy rows of 49,152
 * (tests/bench_sample -g 4; docs/benchmarks.md). So after DRAW_LOSSES
 * regions in a row that took longer than the rows would have alone (at the
 * measured cost of a row), the engine thread draws alone, and every
 * DRAW_PROBE draws it lets the team try again, so that a machine where
 * waking is cheap again is noticed; one slow region (a thread descheduled
 * for a moment) changes nothing. */
#define DRAW_LOSSES 3
#define DRAW_PROBE 64
static int draw_in_team(const sched_t *s, int n, int team) {
    if (n < 4 || team < 2) return 0;
    return s->draw_losses < DRAW_LOSSES || s->draw_serial_run >= DRAW_PROBE;
}

void sched__draw(sched_t *s, int n_seq) {
    /* Decode rows draw first (a pass over the vocabulary each); everything
     * with an order (events, finishing, the prefix cache) follows in slice
     * order. Each row is drawn by one thread with its choice's own sampler,
     * so whether the team helps never changes a token. */
    int n_par = 0;
    for (int i = 0; i < n_seq; i++) n_par += (s->slot[i].drawn = parallel_draw(s, i));
    if (n_par == 0) return;
#ifdef _OPENMP
    const int team = omp_get_max_threads();
#else
    const int team = 1;
#endif
    const int par = draw_in_team(s, n_par, team);
    double work = 0;
    const double t0 = lc_now_s();
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : work) if (par)
    for (int i = 0; i < n_seq; i++) {
        if (!s->slot[i].drawn) continue;
        const double a = lc_now_s();
        if (s->bseq[i].argmax)
            s->slot[i].rc =
                take_argmax(s->slot[i].r, s->slot[i].choice, &s->bseq[i], s->slot[i].argmax, &s->slot[i].res);
        else
            s->slot[i].rc = draw(s, s->slot[i].r, s->slot[i].choice, s->bseq[i].logits, &s->slot[i].res);
        work += lc_now_s() - a;
    }
    const double wall = lc_now_s() - t0, row = work / n_par;
    s->draw_row_s = s->draw_row_s > 0 ? 0.8 * s->draw_row_s + 0.2 * row : row;
    if (!par) {
        s->draw_serial_run++;
        return;
    }
    s->draw_losses = wall > n_par * s->draw_row_s ? s->draw_losses + 1 : 0;
    s->draw_serial_run = 0;
}

void sched__commit(sched_t *s, int n_seq, double now) {
    for (int i = 0; i < n_seq; i++) {
        model_seq_t *ms = &s->bseq[i];
        sched_req_t *r = s->slot[i].r;
        if (r->state == REQ_DONE) continue;
        if (s->slot[i].choice < 0) {
            r->pkv.n_tokens += ms->n_tok;
            if (s->cfg.enable_prefix_cache) {
                const int64_t shareable = sched__prompt_shareable(&r->policy, r->p.n_prompt, s->cfg.prefill_chunk);
                kv_prefix_commit(s->kv, &r->pkv, r->prompt, r->pkv.n_tokens < shareable ? r->pkv.n_tokens : shareable);
            }
            kv_seq_trim(s->kv, &r->pkv); // sliding-window blocks no later step reads
            if (ms->logits_mode == 2) prompt_rows_lp(s, r, ms);
            if (r->pkv.n_tokens == r->p.n_prompt) prompt_complete(s, r, ms, now);
        } else {
            sched_choice_t *ch = &r->ch[s->slot[i].choice];
            if (ch->finish != SCHED_FINISH_NONE) continue;
            ch->kv.n_tokens += ms->n_tok;
            if (s->cfg.enable_prefix_cache) kv_prefix_commit(s->kv, &ch->kv, ch->toks, ch->kv.n_tokens);
            kv_seq_trim(s->kv, &ch->kv);
            if (!ms->logits_mode) continue;
            sampler_result_t res;
            int rc = s->slot[i].drawn ? s->slot[i].rc
                     : ms->argmax     ? take_argmax(r, s->slot[i].choice, ms, s->slot[i].argmax, &res)
                                      : draw(s, r, s->slot[i].choice, ms->logits, &res);
            commit_choice(s, r, s->slot[i].choice, rc, s->slot[i].drawn ? &s->slot[i].res : &res, now);
        }
    }
}

void sched__after_forward(sched_t *s, int n_seq) {
    const double now = lc_now_s();
    sched__draw(s, n_seq);
    sched__commit(s, n_seq, now);
}
