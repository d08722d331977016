/* One engine step: cancellations, batch building (running requests in
 * admission order, decodes and prefill chunks under the token budget, then
 * admission of waiting requests), the forward pass, and turning logits into
 * tokens, text and events.
 *
 * A request starts in the prompt phase: its prompt is computed, in chunks,
 * into pkv. When the prompt is complete every unfinished choice forks pkv
 * (the last partial block is copied on its first write) and, the first
 * time, each choice draws its first token from the prompt's last logits
 * with its own sampler. Choice c's sampler is seeded with seed + c, so an
 * explicit seed reproduces every choice.
 *
 * Preemption frees every block of the victim (the most recently admitted
 * request) and puts it back at the head of the waiting queue. Its generated
 * tokens, samplers, detokenizers and stop matchers are kept; on readmission
 * the prompt is recomputed into pkv, forked again, and each choice
 * recomputes its own generated tokens as a prefill chunk before it decodes
 * again, so its output is unchanged. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "scheduler/sched_internal.h"


/* ---- events -------------------------------------------------------------------- */
static void touch(sched_t *s, sched_req_t *r) {
    if (!r->wake_pending) sched__reqv_push(&s->touched, r);
}

static void push_ev(sched_t *s, sched_req_t *r, sched_event_t *ev) {
    touch(s, r);
    sched__req_push(r, ev);
    r->wake_pending = 1;
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

/* ---- first admission: per-choice state ---------------------------------------------- */
static int req_init_engine(sched_t *s, sched_req_t *r) {
    const model_hparams_t *hp = &s->hp;
    sched__resolve_policy(&s->cfg, &r->p.attn, r->p.n_prompt, &r->policy);
    attn_shape_t shape = model_attn_shape(s->model);
    if (!(r->pattn = attn_state_create(&shape, hp->n_layers, &r->policy))) return LC_ENOMEM;
    r->pkv.salt = sched__prefill_salt(&r->policy);
    if (r->p.prompt_logprobs >= 0 && !(r->prompt_lps = calloc((size_t)r->p.n_prompt, sizeof *r->prompt_lps)))
        return LC_ENOMEM;
    size_t cap = (size_t)r->p.n_prompt + (size_t)r->p.max_tokens + 1;
    for (int c = 0; c < r->p.n_choices; c++) {
        sched_choice_t *ch = &r->ch[c];
        if (!(ch->toks = malloc(cap * sizeof *ch->toks))) return LC_ENOMEM;
        memcpy(ch->toks, r->prompt, (size_t)r->p.n_prompt * sizeof *ch->toks);
        sampler_params_t sp = r->p.sampling;
        sp.seed = r->p.sampling.seed + (uint64_t)c;
        sp.n_logprobs = r->p.logprobs > 0 ? r->p.logprobs : 0;
        if (sp.n_logprobs > SAMPLER_MAX_LOGPROBS) sp.n_logprobs = SAMPLER_MAX_LOGPROBS;
        if (!(ch->sampler = sampler_create(&sp, hp->n_vocab, r->prompt, r->p.n_prompt))) return LC_ENOMEM;
        if (s->tok && !(ch->detok = tok_stream_create(s->tok, 1))) return LC_ENOMEM;
        sched_stopm_init(&ch->stopm, r->stops, r->p.n_stop);
        if (!(ch->attn = attn_state_create(&shape, hp->n_layers, &r->policy))) return LC_ENOMEM;
        if (r->p.grammar && !(ch->gm = gram_matcher_create(r->p.grammar, r->p.grammar_vocab))) return LC_ENOMEM;
    }
    r->n_live = r->p.n_choices;
    r->prompt_phase = 1;
    return 0;
}

/* ---- preemption ------------------------------------------------------------------- */
static void preempt(sched_t *s, int idx) {
    sched_req_t *r = s->running.v[idx];
    kv_seq_release(s->kv, &r->pkv);
    for (int c = 0; c < r->p.n_choices; c++) kv_seq_release(s->kv, &r->ch[c].kv);
    r->prompt_phase = 1;
    r->preemptions++;
    r->state = REQ_WAITING;
    sched__reqv_remove(&s->running, idx);
    pthread_mutex_lock(&s->lock);
    if (sched__reqv_insert(&s->waiting, 0, r)) LC_ERROR("sched: out of memory re-queueing a request");
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_lock(&s->mlock);
    s->m.preemptions_total++;
    pthread_mutex_unlock(&s->mlock);
    LC_DEBUG("sched: preempted request %llu", (unsigned long long)r->id);
}

/* ---- batch building -------------------------------------------------------------- */
typedef struct {
    int n_tok, n_seq, budget, preempted;
} batch_t;

static int lp_chunk_cap(const sched_t *s) {
    int cap = (int)((size_t)4 << 20) / (s->hp.n_vocab > 0 ? s->hp.n_vocab : 1);
    return cap < 1 ? 1 : cap;
}

/* Reserves and makes writable [kv->n_tokens, +n) for one slice. */
static int make_room(sched_t *s, kv_seq_t *kv, int n) {
    int rc = kv_seq_reserve(s->kv, kv, kv->n_tokens + n);
    if (rc) return rc;
    return kv_seq_prepare_write(s->kv, kv, kv->n_tokens, kv->n_tokens + n);
}

static void add_slice(sched_t *s, batch_t *b, sched_req_t *r, int choice, kv_seq_t *kv, const int32_t *toks, int n,
                      int logits_mode, int decode) {
    model_seq_t *ms = &s->bseq[b->n_seq];
    memset(ms, 0, sizeof *ms);
    ms->tok0 = b->n_tok;
    ms->n_tok = n;
    ms->pos0 = kv->n_tokens;
    ms->kv = kv;
    ms->attn = choice < 0 ? r->pattn : r->ch[choice].attn;
    ms->decode = decode;
    ms->logits_mode = logits_mode;
    memcpy(s->btok + b->n_tok, toks + kv->n_tokens, (size_t)n * sizeof *toks);
    s->slot[b->n_seq] = (struct sched_slot){.r = r, .choice = choice, .rows = logits_mode == 2 ? n : logits_mode};
    b->n_seq++;
    b->n_tok += n;
    b->budget -= n;
}

/* Removes r's slices (the last ones added) after r preempted itself. */
static void drop_slices(sched_t *s, batch_t *b, sched_req_t *r) {
    while (b->n_seq > 0 && s->slot[b->n_seq - 1].r == r) {
        b->n_seq--;
        b->n_tok -= s->bseq[b->n_seq].n_tok;
        b->budget += s->bseq[b->n_seq].n_tok;
    }
}

/* Index of the most recently admitted request still running, or -1. */
static int newest_live(const sched_t *s) {
    for (int i = s->running.n - 1; i >= 0; i--)
        if (s->running.v[i]->state != REQ_DONE) return i;
    return -1;
}

/* Gets room for a slice, preempting the newest running requests while the
 * pool is short. Returns 1 on success, 0 if r itself was preempted, or a
 * negative status. */
static int room_or_preempt(sched_t *s, batch_t *b, sched_req_t *r, kv_seq_t *kv, int n) {
    for (;;) {
        int rc = make_room(s, kv, n);
        if (rc == 0) return 1;
        if (rc != LC_ENOSPC) return rc;
        int victim = newest_live(s);
        sched_req_t *v = s->running.v[victim];
        if (v == r) drop_slices(s, b, r);
        preempt(s, victim);
        b->preempted = 1;
        if (v == r) return 0;
    }
}

/* Decode slices of r (choices with exactly one token pending). A decode
 * that finds no block preempts the newest running request, possibly r.
 * Returns 1 if r is still running, 0 if it was preempted, or a status. */
static int schedule_decodes(sched_t *s, batch_t *b, sched_req_t *r) {
    if (r->prompt_phase) return 1;
    for (int c = 0; c < r->p.n_choices && b->budget > 0; c++) {
        sched_choice_t *ch = &r->ch[c];
        if (ch->finish != SCHED_FINISH_NONE) continue;
        if (r->p.n_prompt + ch->n_gen - (int)ch->kv.n_tokens != 1) continue;
        int rc = room_or_preempt(s, b, r, &ch->kv, 1);
        if (rc <= 0) return rc;
        add_slice(s, b, r, c, &ch->kv, ch->toks, 1, 1, 1);
    }
    return 1;
}

/* Prefill chunks of r: its prompt, or (after a preemption) a choice's
 * generated tokens being recomputed. These never preempt: without blocks
 * they wait. Returns 0 or a negative status. */
static int schedule_prefills(sched_t *s, batch_t *b, sched_req_t *r) {
    if (r->prompt_phase) {
        int pending = r->p.n_prompt - (int)r->pkv.n_tokens;
        int want_lp = r->prompt_lps && !r->prompt_lp_done;
        int n = pending;
        if (n > s->cfg.prefill_chunk) n = s->cfg.prefill_chunk;
        if (want_lp && n > lp_chunk_cap(s)) n = lp_chunk_cap(s);
        if (n > b->budget) n = b->budget;
        if (n <= 0) return 0;
        int rc = make_room(s, &r->pkv, n);
        if (rc) return rc == LC_ENOSPC ? 0 : rc;
        int mode = want_lp ? 2 : (n == pending && !r->sampled_once ? 1 : 0);
        add_slice(s, b, r, -1, &r->pkv, r->prompt, n, mode, 0);
        return 0;
    }
    for (int c = 0; c < r->p.n_choices && b->budget > 0; c++) {
        sched_choice_t *ch = &r->ch[c];
        if (ch->finish != SCHED_FINISH_NONE) continue;
        int pending = r->p.n_prompt + ch->n_gen - (int)ch->kv.n_tokens;
        if (pending <= 1) continue;
        int n = pending;
        if (n > s->cfg.prefill_chunk) n = s->cfg.prefill_chunk;
        if (n > b->budget) n = b->budget;
        int rc = make_room(s, &ch->kv, n);
        if (rc) return rc == LC_ENOSPC ? 0 : rc;
        add_slice(s, b, r, c, &ch->kv, ch->toks, n, n == pending ? 1 : 0, 0);
    }
    return 0;
}

static int running_seqs(const sched_t *s) {
    int n = 0;
    for (int i = 0; i < s->running.n; i++) n += s->running.v[i]->n_live;
    return n;
}

/* Admits waiting requests (FIFO) while the budget, max_running and the KV
 * watermark allow. */
static int admit(sched_t *s, batch_t *b) {
    int64_t wm = (int64_t)ceil(s->cfg.kv_watermark * (double)kv_pool_n_blocks(s->kv));
    while (b->budget > 0) {
        pthread_mutex_lock(&s->lock);
        sched_req_t *r = s->waiting.n ? s->waiting.v[0] : NULL;
        pthread_mutex_unlock(&s->lock);
        if (!r) break;
        int first = r->ch[0].toks == NULL;
        int n_seq = first ? r->p.n_choices : r->n_live;
        if (s->running.n > 0 && running_seqs(s) + n_seq > s->cfg.max_running) break;
        if (first) {
            int rc = req_init_engine(s, r);
            if (rc) {
                pthread_mutex_lock(&s->lock);
                sched__reqv_remove(&s->waiting, 0);
                pthread_mutex_unlock(&s->lock);
                sched__finish_all(s, r, SCHED_FINISH_ERROR, rc);
                sched__reqv_push(&s->running, r); // swept as done
                continue;
            }
        }
        int64_t cached = 0;
        if (s->cfg.enable_prefix_cache && !r->prompt_lps && r->pkv.n_blocks == 0)
            cached = kv_prefix_attach(s->kv, &r->pkv, r->prompt, r->p.n_prompt);
        int64_t need = kv_seq_blocks_needed(s->kv, &r->pkv, r->p.n_prompt);
        int64_t avail = kv_pool_n_available(s->kv);
        if (need + (s->running.n > 0 ? wm : 0) > avail) {
            kv_seq_release(s->kv, &r->pkv);
            break;
        }
        pthread_mutex_lock(&s->lock);
        sched__reqv_remove(&s->waiting, 0);
        pthread_mutex_unlock(&s->lock);
        if (first) {
            r->cached_tokens = (int)cached;
            r->t_sched = lc_now_s();
            lc_hist_observe(&s->h_queue, r->t_sched - r->t_submit);
        }
        r->state = REQ_RUNNING;
        r->admit_seq = ++s->admit_counter;
        if (sched__reqv_push(&s->running, r)) return LC_ENOMEM;
        int rc = schedule_prefills(s, b, r);
        if (rc < 0) return rc;
    }
    return 0;
}

/* ---- after the forward pass ---------------------------------------------------------- */
static int is_in(int32_t t, const int32_t *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i] == t) return 1;
    return 0;
}

/* Samples choice c from logits (modified) and emits the token. */
static void sample_choice(sched_t *s, sched_req_t *r, int c, float *logits, double now) {
    sched_choice_t *ch = &r->ch[c];
    int32_t banned[2 + 64];
    int n_banned = 0;
    if (ch->n_gen < r->p.min_tokens) {
        if (!r->p.ignore_eos)
            for (int i = 0; i < s->n_eos; i++) banned[n_banned++] = s->eos[i];
        for (int i = 0; i < r->p.n_stop_token_ids && n_banned < (int)(sizeof banned / sizeof *banned); i++)
            banned[n_banned++] = r->stop_ids[i];
    }
    sampler_result_t res;
    /* The grammar's mask is a function of this choice's text alone. */
    int rc = ch->gm ? gram_matcher_apply(ch->gm, logits, s->hp.n_vocab, s->eos, s->n_eos) : 0;
    if (!rc) rc = sampler_sample(ch->sampler, logits, banned, n_banned, &res);
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
    size_t nv = (size_t)s->hp.n_vocab;
    const float *last = ms->logits + (ms->logits_mode == 2 ? (size_t)(ms->n_tok - 1) * nv : 0);
    for (int c = 0; c < r->p.n_choices; c++) {
        if (r->ch[c].finish != SCHED_FINISH_NONE) continue;
        memcpy(s->tmp, last, nv * sizeof *s->tmp);
        sample_choice(s, r, c, s->tmp, now);
    }
}

static void after_forward(sched_t *s, batch_t *b) {
    double now = lc_now_s();
    for (int i = 0; i < b->n_seq; i++) {
        model_seq_t *ms = &s->bseq[i];
        sched_req_t *r = s->slot[i].r;
        if (r->state == REQ_DONE) continue;
        if (s->slot[i].choice < 0) {
            r->pkv.n_tokens += ms->n_tok;
            if (s->cfg.enable_prefix_cache) kv_prefix_commit(s->kv, &r->pkv, r->prompt, r->pkv.n_tokens);
            if (ms->logits_mode == 2) prompt_rows_lp(s, r, ms);
            if (r->pkv.n_tokens == r->p.n_prompt) prompt_complete(s, r, ms, now);
        } else {
            sched_choice_t *ch = &r->ch[s->slot[i].choice];
            if (ch->finish != SCHED_FINISH_NONE) continue;
            ch->kv.n_tokens += ms->n_tok;
            if (s->cfg.enable_prefix_cache) kv_prefix_commit(s->kv, &ch->kv, ch->toks, ch->kv.n_tokens);
            if (ms->logits_mode) sample_choice(s, r, s->slot[i].choice, ms->logits, now);
        }
    }
}

/* ---- the step ------------------------------------------------------------------------- */
static void handle_cancels(sched_t *s) {
    for (int i = 0; i < s->running.n; i++) {
        sched_req_t *r = s->running.v[i];
        if (atomic_load(&r->cancel)) sched__finish_all(s, r, SCHED_FINISH_CANCELLED, 0);
    }
    for (;;) {
        sched_req_t *r = NULL;
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < s->waiting.n; i++)
            if (atomic_load(&s->waiting.v[i]->cancel)) {
                r = s->waiting.v[i];
                sched__reqv_remove(&s->waiting, i);
                break;
            }
        pthread_mutex_unlock(&s->lock);
        if (!r) break;
        sched__finish_all(s, r, SCHED_FINISH_CANCELLED, 0);
        sched__reqv_push(&s->running, r); // swept below as done
    }
}

/* Wakes touched requests and drops the engine's reference to finished ones. */
static void sweep(sched_t *s) {
    for (int i = 0; i < s->touched.n; i++) {
        sched_req_t *r = s->touched.v[i];
        r->wake_pending = 0;
        if (r->p.wake_cb) r->p.wake_cb(r->p.wake_ud);
    }
    s->touched.n = 0;
    for (int i = 0; i < s->running.n;) {
        sched_req_t *r = s->running.v[i];
        if (r->state != REQ_DONE) {
            i++;
            continue;
        }
        sched__reqv_remove(&s->running, i);
        sched__req_free_engine_state(r);
        sched_req_release(r);
    }
    int64_t used = kv_pool_n_used(s->kv), total = kv_pool_n_blocks(s->kv);
    pthread_mutex_lock(&s->mlock);
    s->m.running = s->running.n;
    s->m.kv_blocks_total = total;
    s->m.kv_blocks_used = used;
    s->m.kv_usage = total ? (double)used / (double)total : 0;
    kv_prefix_counters(s->kv, &s->m.prefix_queried_tokens, &s->m.prefix_hit_tokens);
    pthread_mutex_unlock(&s->mlock);
}

static int ensure_logits(sched_t *s, size_t floats) {
    if (floats <= s->logits_cap) return 0;
    float *l = realloc(s->logits, floats * sizeof *l);
    if (!l) return LC_ENOMEM;
    s->logits = l;
    s->logits_cap = floats;
    return 0;
}

int sched__step(sched_t *s) {
    handle_cancels(s);
    batch_t b = {.budget = s->cfg.max_batch_tokens};
    int rc = 0;
    /* Running decodes first, oldest first; then prefill chunks of running
     * requests; then new admissions (not in a step that had to preempt). */
    for (int i = 0; i < s->running.n && b.budget > 0; i++) {
        sched_req_t *r = s->running.v[i];
        if (r->state == REQ_DONE) continue;
        if ((rc = schedule_decodes(s, &b, r)) < 0) goto out;
    }
    for (int i = 0; i < s->running.n && b.budget > 0; i++) {
        sched_req_t *r = s->running.v[i];
        if (r->state == REQ_DONE) continue;
        if ((rc = schedule_prefills(s, &b, r)) < 0) goto out;
    }
    if (!b.preempted && (rc = admit(s, &b)) < 0) goto out;
    rc = 0;
    if (b.n_seq == 0) {
        /* Every running request waits for blocks that only another one
         * holds: give the pool to the older ones. */
        int live = 0;
        for (int i = 0; i < s->running.n; i++) live += s->running.v[i]->state != REQ_DONE;
        if (live > 1) preempt(s, newest_live(s));
        goto out;
    }

    size_t nv = (size_t)s->hp.n_vocab, rows = 0;
    for (int i = 0; i < b.n_seq; i++) rows += (size_t)s->slot[i].rows;
    if ((rc = ensure_logits(s, rows * nv))) goto fail;
    rows = 0;
    for (int i = 0; i < b.n_seq; i++) {
        s->bseq[i].logits = s->slot[i].rows ? s->logits + rows * nv : NULL;
        rows += (size_t)s->slot[i].rows;
    }
    model_batch_t mb = {.n_tokens = b.n_tok, .tokens = s->btok, .n_seqs = b.n_seq, .seqs = s->bseq};
    rc = model_forward(s->mctx, s->kv, &mb);
    if (rc) goto fail;
    after_forward(s, &b);
    rc = b.n_tok;
    goto out;
fail:
    LC_ERROR("sched: step failed: %s", lc_strerror(rc));
    for (int i = 0; i < b.n_seq; i++) sched__finish_all(s, s->slot[i].r, SCHED_FINISH_ERROR, rc);
out:
    sweep(s);
    return rc;
}
