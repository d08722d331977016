/* One engine step: cancellations, batch building, admission of waiting
 * requests, the forward pass; output.c turns the logits into tokens and
 * events.
 *
 * Batch building. Running requests decode first, oldest first (one token per
 * live choice). Then prompt work — prompt chunks, and the recomputation of a
 * preempted choice's tokens — in admission order, then admissions (FIFO),
 * under two budgets: max_batch_tokens rows, and a prompt budget sized so a
 * step takes about target_step_ms (from the measured cost per row), so that
 * early requests start streaming early and decodes are never starved by a
 * long prompt. Prompts of equal length go in arrival order, each taking all
 * the room it can (so the first requests start streaming soon instead of all
 * finishing their prompts together); while a shorter prompt waits, no
 * request takes more than half of what is left, so a short prompt behind a
 * long one starts within a step or two.
 *
 * Determinism. Where a prompt is cut into chunks never changes a dense row's
 * result (attn.h: per-row arithmetic). Sparse prefill chooses its pattern per
 * chunk, and context parallelism deals each sharded chunk's blocks to the
 * ranks by the chunk, so a request with a sparse prefill method, or a prompt
 * long enough to be sharded, is cut only at multiples
 * of prefill_chunk (a chunk that does not fit waits for the next step) and
 * reuses cached prompt blocks only up to such a multiple (FlexPrefill
 * registers none of the chunk holding its prompt's last rows, which attend
 * every key: sched__prompt_shareable). Generated tokens go
 * through the decode arithmetic (8-bit matmul, the decode method), also when
 * recomputed, and their blocks are never shared with prompts.
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
 * recomputes its own generated tokens (as generated rows) before it decodes
 * again, so its output is unchanged. Under context parallelism a generated
 * row ran sharded when its KV reached context_min_tokens and on one rank
 * before: a recomputation is cut where that changes (the executors shard a
 * whole slice or none of it), and takes no more sharded rows than the
 * executor's decode plans hold beside the step's sharded decodes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "scheduler/sched_internal.h"

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
        sp.skip_logprob = r->p.logprobs < 0; // output.c reads them only when asked for
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

/* 1 when r's prompt chunks must end at multiples of prefill_chunk: a sparse
 * prefill method, or a prompt that context parallelism may shard (a sharded
 * slice deals its blocks to the ranks in its own zig-zag, and a row's sum
 * over the ranks' partials depends on who holds what). */
static int fixed_chunks(const sched_t *s, const sched_req_t *r) {
    const int64_t shard_from = s->cfg.context_min_tokens > 0 ? s->cfg.context_min_tokens : 1;
    return r->policy.prefill != ATTN_PREFILL_DENSE || (s->cfg.context_ranks > 1 && r->p.n_prompt >= shard_from);
}

/* 1 when a slice of generated rows ending at position end (exclusive) runs
 * sharded: its KV reaches context_min_tokens (forward.c, exec_cuda_cp.cu). */
static int sharded_end(const sched_t *s, int64_t end) {
    return s->cfg.context_ranks > 1 && end >= (s->cfg.context_min_tokens > 0 ? s->cfg.context_min_tokens : 1);
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
    int rc = sched__reqv_insert(&s->waiting, 0, r); // room reserved at creation: cannot fail
    pthread_mutex_unlock(&s->lock);
    if (rc) { // an invariant broke: fail the request rather than lose it
        LC_ERROR("sched: waiting queue full re-queueing request %llu", (unsigned long long)r->id);
        sched__finish_all(s, r, SCHED_FINISH_ERROR, rc);
        sched__reqv_push(&s->running, r);
    }
    pthread_mutex_lock(&s->mlock);
    s->m.preemptions_total++;
    pthread_mutex_unlock(&s->mlock);
    LC_DEBUG("sched: preempted request %llu", (unsigned long long)r->id);
}

/* ---- batch building -------------------------------------------------------------- */
typedef struct {
    int n_tok, n_seq;
    int budget;    // rows left under max_batch_tokens
    int pf_budget; // prompt rows left under the step-time target
    int pf_rows;   // prompt rows taken so far
    int cp_rows;   // sharded generated rows taken so far (context parallelism)
    int lp_rows;   // prompt rows whose logits go to the host for their log-probabilities
    int preempted;
} batch_t;

static int lp_chunk_cap(const sched_t *s) {
    int cap = (int)((size_t)4 << 20) / (s->hp.n_vocab > 0 ? s->hp.n_vocab : 1);
    return cap < 1 ? 1 : cap;
}

/* The chunk of a sparse prompt that asks for its log-probabilities: its
 * whole chunk's logits are held at once (the selection depends on the
 * chunk, so the rows cannot be cut at lp_chunk_cap), so at most 64 MiB of
 * them (prefill_chunk x a 262K vocabulary would be 4 GiB at a GPU's 4,096
 * rows), in whole 128-row blocks, at least one; a fixed size, so still a
 * function of the request alone. */
static int64_t lp_sparse_chunk(const sched_t *s) {
    int64_t rows = ((int64_t)64 << 20) / ((int64_t)sizeof(float) * (s->hp.n_vocab > 0 ? s->hp.n_vocab : 1));
    rows = rows / 128 * 128;
    if (rows < 128) rows = 128;
    return rows < s->cfg.prefill_chunk ? rows : s->cfg.prefill_chunk;
}

/* Rows of prompt log-probabilities one step holds (128 MiB of logits; a
 * slice past it waits for the next step unless it is the step's first). */
static int64_t lp_step_rows(const sched_t *s) {
    return ((int64_t)128 << 20) / ((int64_t)sizeof(float) * (s->hp.n_vocab > 0 ? s->hp.n_vocab : 1));
}

/* Reserves and makes writable [kv->n_tokens, +n) for one slice. */
static int make_room(sched_t *s, kv_seq_t *kv, int n) {
    int rc = kv_seq_reserve(s->kv, kv, kv->n_tokens + n);
    if (rc) return rc;
    return kv_seq_prepare_write(s->kv, kv, kv->n_tokens, kv->n_tokens + n);
}

/* Rows of a slice: the prompt's (prompt arithmetic) or a choice's generated
 * tokens (decode arithmetic, replays included). */
typedef enum { ROWS_PROMPT = 0, ROWS_GENERATED = 1 } rows_kind_t;

/* Choice c's next draw is the argmax of its row as it comes (draw() bans
 * EOS and stop ids only before min_tokens). */
static int plain_greedy(const sched_req_t *r, int c) {
    const sched_choice_t *ch = &r->ch[c];
    return !ch->gm && ch->sampler && sampler_plain_greedy(ch->sampler) && ch->n_gen >= r->p.min_tokens;
}

/* The same for a plain temperature draw (sampler_plain_temperature). */
static int plain_temperature(const sched_req_t *r, int c) {
    const sched_choice_t *ch = &r->ch[c];
    return !ch->gm && ch->sampler && sampler_plain_temperature(ch->sampler) && ch->n_gen >= r->p.min_tokens;
}

static void add_slice(sched_t *s, batch_t *b, sched_req_t *r, int choice, kv_seq_t *kv, const int32_t *toks, int n,
                      model_logits_t logits, rows_kind_t kind) {
    const int generated = kind == ROWS_GENERATED;
    model_seq_t *ms = &s->bseq[b->n_seq];
    memset(ms, 0, sizeof *ms);
    ms->tok0 = b->n_tok;
    ms->n_tok = n;
    ms->pos0 = kv->n_tokens;
    ms->kv = kv;
    ms->attn = choice < 0 ? r->pattn : r->ch[choice].attn;
    ms->generated = generated;
    ms->prompt_end = generated ? 0 : r->p.n_prompt;
    ms->logits_mode = logits;
    memcpy(s->btok + b->n_tok, toks + kv->n_tokens, (size_t)n * sizeof *toks);
    s->slot[b->n_seq] = (struct sched_slot){
        .r = r, .choice = choice, .rows = logits == MODEL_LOGITS_ALL ? n : logits == MODEL_LOGITS_LAST};
    /* The draw the executor can make instead of sending the row: a decode
     * row's, or a one-choice request's first token from its prompt's last row. */
    const int drawer = choice >= 0 ? choice : r->p.n_choices == 1 && !r->sampled_once ? 0 : -1;
    if (logits == MODEL_LOGITS_LAST && drawer >= 0) {
        sched_choice_t *ch = &r->ch[drawer];
        if (plain_greedy(r, drawer)) {
            ms->argmax = &s->slot[b->n_seq].argmax;
        } else if (plain_temperature(r, drawer) && model_exec_is_gpu(s->exec)) {
            /* drawn on the GPU with the uniform the sampler would have used */
            ms->argmax = &s->slot[b->n_seq].argmax;
            ms->draw_temperature = sampler_temperature(ch->sampler);
            ms->draw_u = sampler_peek_uniform(ch->sampler); // taken when the token is (output.c)
        }
    }
    b->n_seq++;
    b->n_tok += n;
    b->budget -= n;
    if (!generated || n > 1) {
        b->pf_budget -= n;
        b->pf_rows += n;
    }
}

/* Removes r's slices (the last ones added) after r preempted itself. */
static void drop_slices(sched_t *s, batch_t *b, sched_req_t *r) {
    while (b->n_seq > 0 && s->slot[b->n_seq - 1].r == r) {
        b->n_seq--;
        const model_seq_t *ms = &s->bseq[b->n_seq];
        b->n_tok -= ms->n_tok;
        b->budget += ms->n_tok;
        if (!ms->generated || ms->n_tok > 1) {
            b->pf_budget += ms->n_tok;
            b->pf_rows -= ms->n_tok;
        }
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
 * negative status (r's own failure, e.g. out of memory for its table). */
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

/* A request whose own slice could not be set up (out of memory) fails alone. */
static void fail_request(sched_t *s, batch_t *b, sched_req_t *r, int rc) {
    LC_ERROR("sched: request %llu: %s", (unsigned long long)r->id, lc_strerror(rc));
    drop_slices(s, b, r);
    sched__finish_all(s, r, SCHED_FINISH_ERROR, rc);
}

/* Decode slices of r (choices with exactly one token pending). A decode
 * that finds no block preempts the newest running request, possibly r. */
static void schedule_decodes(sched_t *s, batch_t *b, sched_req_t *r) {
    if (r->prompt_phase) return;
    for (int c = 0; c < r->p.n_choices && b->budget > 0; c++) {
        sched_choice_t *ch = &r->ch[c];
        if (ch->finish != SCHED_FINISH_NONE) continue;
        if (r->p.n_prompt + ch->n_gen - (int)ch->kv.n_tokens != 1) continue;
        int rc = room_or_preempt(s, b, r, &ch->kv, 1);
        if (rc < 0) return fail_request(s, b, r, rc);
        if (rc == 0) return;
        b->cp_rows += sharded_end(s, ch->kv.n_tokens + 1);
        add_slice(s, b, r, c, &ch->kv, ch->toks, 1, MODEL_LOGITS_LAST, ROWS_GENERATED);
    }
}

/* Prompt rows r may take now: its budget share, rounded to whole blocks when
 * cut; pending is what r has left, shortest what the shortest request
 * waiting behind it has left (0: none waits). */
static int prompt_take(const sched_t *s, const batch_t *b, int pending, int shortest) {
    int n = pending < s->cfg.prefill_chunk ? pending : s->cfg.prefill_chunk;
    int room = b->budget < b->pf_budget ? b->budget : b->pf_budget;
    if (shortest > 0 && shortest < pending && room > 2 * s->cfg.block_size) room /= 2;
    if (n > room) n = room / s->cfg.block_size * s->cfg.block_size;
    return n > 0 ? n : 0;
}

/* The next prompt chunk of r. Returns 0, or a negative status for r. */
static int schedule_prompt(sched_t *s, batch_t *b, sched_req_t *r, int shortest) {
    const int pending = r->p.n_prompt - (int)r->pkv.n_tokens;
    const int want_lp = r->prompt_lps && !r->prompt_lp_done;
    int n;
    if (fixed_chunks(s, r)) { // up to the next multiple of prefill_chunk, whole or not at all
        /* a prompt that asked for its log-probabilities holds fewer rows'
         * logits: a dense one (that may be sharded) their rows' cap, a sparse
         * one lp_sparse_chunk; its chunks still fixed */
        int64_t C = s->cfg.prefill_chunk;
        if (r->prompt_lps && r->policy.prefill == ATTN_PREFILL_DENSE && C > lp_chunk_cap(s)) C = lp_chunk_cap(s);
        if (r->prompt_lps && r->policy.prefill != ATTN_PREFILL_DENSE) C = lp_sparse_chunk(s);
        const int64_t end = (r->pkv.n_tokens / C + 1) * C;
        n = (int)((end < r->p.n_prompt ? end : r->p.n_prompt) - r->pkv.n_tokens);
        /* Over the step-time target only as the step's first prompt work: a
         * chunk that cannot be cut must not wait for the decodes to end. */
        if (n > b->budget || (n > b->pf_budget && b->pf_rows > 0)) n = 0;
    } else {
        n = prompt_take(s, b, pending, shortest);
        if (want_lp && n > lp_chunk_cap(s)) n = lp_chunk_cap(s);
    }
    if (n <= 0) return 0;
    if (want_lp && b->lp_rows > 0 && b->lp_rows + n > lp_step_rows(s)) return 0; // (its chunk, whole, next step)
    int rc = make_room(s, &r->pkv, n);
    if (rc) return rc == LC_ENOSPC ? 0 : rc;
    if (want_lp) b->lp_rows += n;
    model_logits_t mode = want_lp                            ? MODEL_LOGITS_ALL
                          : n == pending && !r->sampled_once ? MODEL_LOGITS_LAST
                                                             : MODEL_LOGITS_NONE;
    add_slice(s, b, r, -1, &r->pkv, r->prompt, n, mode, ROWS_PROMPT);
    return 0;
}

/* Recomputes a preempted choice's generated tokens (generated rows: the same
 * arithmetic as when they were decoded). Its last row samples the next
 * token, as the decode step would have. */
static int schedule_replays(sched_t *s, batch_t *b, sched_req_t *r, int shortest) {
    for (int c = 0; c < r->p.n_choices && b->budget > 0; c++) {
        sched_choice_t *ch = &r->ch[c];
        if (ch->finish != SCHED_FINISH_NONE) continue;
        int pending = r->p.n_prompt + ch->n_gen - (int)ch->kv.n_tokens;
        if (pending <= 1) continue;
        int n = prompt_take(s, b, pending, shortest);
        /* each row as it was decoded: one rank below the first sharded
         * position, sharded from it, within the executor's sharded rows */
        const int64_t pos0 = ch->kv.n_tokens, first = s->cfg.context_min_tokens > 0 ? s->cfg.context_min_tokens - 1 : 0;
        if (s->cfg.context_ranks > 1 && pos0 < first && pos0 + n > first) n = (int)(first - pos0);
        if (n > 0 && s->cp_decode_rows > 0 && sharded_end(s, pos0 + n) && n > s->cp_decode_rows - b->cp_rows)
            n = s->cp_decode_rows - b->cp_rows;
        if (n <= 0) return 0;
        int rc = make_room(s, &ch->kv, n);
        if (rc) return rc == LC_ENOSPC ? 0 : rc;
        if (sharded_end(s, pos0 + n)) b->cp_rows += n;
        add_slice(s, b, r, c, &ch->kv, ch->toks, n, n == pending ? MODEL_LOGITS_LAST : MODEL_LOGITS_NONE,
                  ROWS_GENERATED);
    }
    return 0;
}

static int has_prompt_work(const sched_req_t *r) {
    if (r->state == REQ_DONE) return 0;
    if (r->prompt_phase) return 1;
    for (int c = 0; c < r->p.n_choices; c++)
        if (r->ch[c].finish == SCHED_FINISH_NONE && r->p.n_prompt + r->ch[c].n_gen - r->ch[c].kv.n_tokens > 1) return 1;
    return 0;
}

/* Prompt rows r still needs (its prompt, or the longest replay of a choice);
 * a waiting request: its whole prompt. */
static int prompt_pending(const sched_req_t *r) {
    if (r->state == REQ_WAITING || r->prompt_phase)
        return r->p.n_prompt - (r->state == REQ_WAITING ? 0 : (int)r->pkv.n_tokens);
    int m = 0;
    for (int c = 0; c < r->p.n_choices; c++) {
        const sched_choice_t *ch = &r->ch[c];
        int p = r->p.n_prompt + ch->n_gen - (int)ch->kv.n_tokens;
        if (ch->finish == SCHED_FINISH_NONE && p > 1 && p > m) m = p;
    }
    return m;
}

/* The fewest prompt rows a request behind running.v[i] waits for: running
 * ones after it with prompt work, then (with_waiting) the waiting queue;
 * 0 when none. */
static int shortest_behind(sched_t *s, int i, int with_waiting) {
    int m = 0;
    for (int j = i + 1; j < s->running.n; j++)
        if (has_prompt_work(s->running.v[j])) {
            int p = prompt_pending(s->running.v[j]);
            if (p > 0 && (m == 0 || p < m)) m = p;
        }
    if (!with_waiting) return m;
    pthread_mutex_lock(&s->lock);
    for (int j = 0; j < s->waiting.n; j++) {
        int p = prompt_pending(s->waiting.v[j]);
        if (p > 0 && (m == 0 || p < m)) m = p;
    }
    pthread_mutex_unlock(&s->lock);
    return m;
}

static void schedule_prompt_work(sched_t *s, batch_t *b, int i, int with_waiting) {
    sched_req_t *r = s->running.v[i];
    const int shortest = shortest_behind(s, i, with_waiting);
    int rc = r->prompt_phase ? schedule_prompt(s, b, r, shortest) : schedule_replays(s, b, r, shortest);
    if (rc < 0) fail_request(s, b, r, rc);
}

static int running_seqs(const sched_t *s) {
    int n = 0;
    for (int i = 0; i < s->running.n; i++) n += s->running.v[i]->n_live;
    return n;
}

/* Attaches r's cached prompt prefix; for fixed chunks only up to a multiple
 * of prefill_chunk. Returns the tokens reused. */
static int64_t attach_prefix(sched_t *s, sched_req_t *r) {
    if (!s->cfg.enable_prefix_cache || r->prompt_lps || r->pkv.n_blocks != 0) return 0;
    return kv_prefix_attach(s->kv, &r->pkv, r->prompt, r->p.n_prompt, fixed_chunks(s, r) ? s->cfg.prefill_chunk : 0);
}

/* Admits waiting requests (FIFO) while the budgets, max_running and the KV
 * watermark allow. */
static void admit(sched_t *s, batch_t *b) {
    int64_t wm = (int64_t)ceil(s->cfg.kv_watermark * (double)kv_pool_n_blocks(s->kv));
    while (b->budget > 0 && b->pf_budget > 0) {
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
        int64_t cached = attach_prefix(s, r);
        int64_t need = kv_seq_peak_needed(s->kv, &r->pkv, r->p.n_prompt, s->cfg.prefill_chunk);
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
        sched__reqv_push(&s->running, r); // room reserved at creation
        schedule_prompt_work(s, b, s->running.n - 1, 1);
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

/* Once the executor's device is lost, every request ends with LC_EDEVICE
 * (nothing can run any more). Returns 1 when lost. */
static int device_lost(sched_t *s) {
    if (!model_exec_failure(s->exec)) return 0;
    for (int i = 0; i < s->running.n; i++)
        if (s->running.v[i]->state != REQ_DONE) sched__finish_all(s, s->running.v[i], SCHED_FINISH_ERROR, LC_EDEVICE);
    for (;;) {
        pthread_mutex_lock(&s->lock);
        sched_req_t *r = s->waiting.n ? s->waiting.v[0] : NULL;
        if (r) sched__reqv_remove(&s->waiting, 0);
        pthread_mutex_unlock(&s->lock);
        if (!r) break;
        sched__finish_all(s, r, SCHED_FINISH_ERROR, LC_EDEVICE);
        sched__reqv_push(&s->running, r); // swept below as done
    }
    return 1;
}

void sched__sweep(sched_t *s) {
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

/* The step's logits rows, from the executor (page-locked on a GPU: the
 * device copies into it directly); what it held is not kept. */
static int ensure_logits(sched_t *s, size_t floats) {
    if (floats <= s->logits_cap) return 0;
    model_exec_logits_free(s->exec, s->logits);
    s->logits = NULL;
    s->logits_cap = 0;
    float *l = model_exec_logits_alloc(s->exec, floats);
    if (!l) return LC_ENOMEM;
    s->logits = l;
    s->logits_cap = floats;
    return 0;
}

/* 1 when the engine holds one request (running or still waiting) and it
 * decodes nothing in this step: no stream to stall, no newcomer behind it. */
static int alone(sched_t *s, int n_decode) {
    if (n_decode > 0) return 0;
    pthread_mutex_lock(&s->lock);
    int live = s->waiting.n;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < s->running.n && live <= 1; i++) live += s->running.v[i]->state != REQ_DONE;
    return live <= 1;
}

/* Prompt rows a step may take: what fits the step-time target at the measured
 * cost per row (all of max_batch_tokens until a step was measured, or with
 * no target), never fewer than one block. A request alone takes its whole
 * chunk (prefill_chunk): the target protects other requests' latency, and
 * cutting a lone long prompt into steps of a few rows (a row's cost grows
 * with its context) only slows it: 3.5x on a 32K prompt on two cores. */
static int prompt_budget(sched_t *s, int n_decode) {
    if (s->cfg.target_step_ms <= 0 || s->ms_per_row <= 0 || alone(s, n_decode)) return s->cfg.max_batch_tokens;
    double rows = s->cfg.target_step_ms / s->ms_per_row - n_decode;
    int min = s->cfg.block_size;
    if (rows < min) return min;
    return rows > s->cfg.max_batch_tokens ? s->cfg.max_batch_tokens : (int)rows;
}

/* Fails every request of a batch whose step could not run. */
static void fail_batch(sched_t *s, int n_seq, int rc) {
    LC_ERROR("sched: step failed: %s", lc_strerror(rc));
    for (int i = 0; i < n_seq; i++) sched__finish_all(s, s->slot[i].r, SCHED_FINISH_ERROR, rc);
}

/* The step's logits rows could not be allocated: the requests that asked for
 * their prompt rows' logits (every row of a chunk, up to 128 MiB) fail, and
 * the step does not run, so that the others plan again without them (their
 * reservations stay; nothing was written). Returns how many requests failed:
 * 0 when no slice holds more than one row, and then the whole batch must. */
static int fail_prompt_logits(sched_t *s, int n_seq, int rc) {
    int failed = 0;
    for (int i = 0; i < n_seq; i++) {
        sched_req_t *r = s->slot[i].r;
        if (s->slot[i].rows <= 1 || r->state == REQ_DONE) continue;
        LC_ERROR("sched: request %llu: no room for its prompt rows' logits (%d rows): %s", (unsigned long long)r->id,
                 s->slot[i].rows, lc_strerror(rc));
        sched__finish_all(s, r, SCHED_FINISH_ERROR, rc);
        failed++;
    }
    return failed;
}

int sched__plan(sched_t *s, int *n_tok, int *n_decode) {
    handle_cancels(s);
    batch_t b = {.budget = s->cfg.max_batch_tokens};
    *n_tok = *n_decode = 0;
    if (device_lost(s)) return 0;
    /* Running decodes first, oldest first. */
    for (int i = 0; i < s->running.n && b.budget > 0; i++)
        if (s->running.v[i]->state != REQ_DONE) schedule_decodes(s, &b, s->running.v[i]);
    /* Prompt work of running requests in admission order, then admissions
     * (not in a step that had to preempt). */
    *n_decode = b.n_tok;
    b.pf_budget = prompt_budget(s, *n_decode);
    for (int i = 0; i < s->running.n && b.budget > 0 && b.pf_budget > 0; i++) {
        if (!has_prompt_work(s->running.v[i])) continue;
        schedule_prompt_work(s, &b, i, !b.preempted);
    }
    if (!b.preempted) admit(s, &b);
    if (b.n_seq == 0) {
        /* Every running request waits for blocks that only another one
         * holds: give the pool to the older ones. */
        int live = 0;
        for (int i = 0; i < s->running.n; i++) live += s->running.v[i]->state != REQ_DONE;
        if (live > 1) preempt(s, newest_live(s));
        return 0;
    }

    size_t nv = (size_t)s->hp.n_vocab, rows = 0;
    for (int i = 0; i < b.n_seq; i++) rows += (size_t)s->slot[i].rows;
    int rc = ensure_logits(s, rows * nv);
    if (rc) {
        if (fail_prompt_logits(s, b.n_seq, rc)) return 0;
        fail_batch(s, b.n_seq, rc);
        return rc;
    }
    rows = 0;
    for (int i = 0; i < b.n_seq; i++) {
        s->bseq[i].logits = s->slot[i].rows ? s->logits + rows * nv : NULL;
        rows += (size_t)s->slot[i].rows;
    }
    *n_tok = b.n_tok;
    return b.n_seq;
}

int sched__step(sched_t *s) {
    int n_tok, n_decode;
    const int n_seq = sched__plan(s, &n_tok, &n_decode);
    int rc = n_seq;
    if (n_seq <= 0) goto out;
    model_batch_t mb = {.n_tokens = n_tok, .tokens = s->btok, .n_seqs = n_seq, .seqs = s->bseq};
    const double t0 = lc_now_s();
    rc = model_exec_forward(s->exec, s->kv, &mb);
    if (rc) {
        fail_batch(s, n_seq, rc);
        goto out;
    }
    /* The cost of a row, from steps that are mostly prompt rows (decode rows
     * take cheaper kernels on the CPU). */
    if (2 * (n_tok - n_decode) >= n_tok) {
        const double ms = (lc_now_s() - t0) * 1e3 / n_tok;
        s->ms_per_row = s->ms_per_row > 0 ? 0.8 * s->ms_per_row + 0.2 * ms : ms;
    }
    const double t1 = lc_now_s();
    sched__after_forward(s, n_seq);
    const double t2 = lc_now_s();
    pthread_mutex_lock(&s->mlock);
    s->m.steps_total++;
    s->m.forward_seconds += t1 - t0;
    s->m.sample_seconds += t2 - t1;
    pthread_mutex_unlock(&s->mlock);
    rc = n_tok;
out:
    sched__sweep(s);
    return rc;
}
