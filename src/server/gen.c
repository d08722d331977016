/* Generation requests: tokenize (thread pool), submit one engine request
 * per prompt, turn engine events into SSE chunks or a final JSON body.
 *
 * Wake-ups: every engine request's wake_cb does uv_async_send on the one
 * srv_t handle (which lives as long as the loop), so a late wake-up never
 * touches freed memory. The async handler drains the events of every active
 * request; calls coalesce, so it always drains everything queued. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "server/server.h"

void srv_conn_work_done(srv_conn_t *k);

/* ---- engine → loop ------------------------------------------------------------------- */
static void wake_cb(void *ud) { uv_async_send(&((srv_t *)ud)->wake); }
static int choice_index(const srv_conn_t *k, int g);

static const char *piece_cb(void *ud, int32_t id, size_t *len) { return tok_piece(ud, id, len); }

static void resp_ctx(const srv_conn_t *k, srv_resp_ctx_t *c) {
    c->id = k->id;
    c->created = k->created;
    c->model = k->s->served_name;
    c->kind = k->req.kind;
    c->piece = piece_cb;
    c->piece_ud = (void *)k->s->tok;
}

/* ---- tokenization (thread pool) ------------------------------------------------------------ */
int srv_render_chat(const srv_t *s, const srv_message_t *msgs, int n, const srv_tool_t *tools_in, int n_tools,
                    char **text, char *err, size_t errlen) {
    chat_msg_t *m = calloc((size_t)n + 1, sizeof(*m));
    chat_msg_calls_t *calls = calloc((size_t)n + 1, sizeof(*calls));
    const char **tools = calloc((size_t)n_tools + 1, sizeof(*tools));
    int n_calls = 0, rc = LC_ENOMEM;
    for (int j = 0; j < n; j++) n_calls += msgs[j].n_tool_calls;
    chat_tool_call_t *tc = calloc((size_t)n_calls + 1, sizeof(*tc));
    *text = NULL;
    if (!m || !calls || !tools || !tc) goto out;
    for (int j = 0, at = 0; j < n; j++) {
        m[j].role = msgs[j].role;
        m[j].content = msgs[j].content;
        calls[j].calls = tc + at;
        calls[j].n = (size_t)msgs[j].n_tool_calls;
        for (int q = 0; q < msgs[j].n_tool_calls; q++, at++) {
            tc[at].name = msgs[j].tool_calls[q].name;
            tc[at].arguments = msgs[j].tool_calls[q].arguments;
        }
    }
    for (int j = 0; j < n_tools; j++) tools[j] = tools_in[j].rendered;
    rc = chat_render_tools(&s->chat, m, calls, (size_t)n, tools, (size_t)n_tools, 1, text, err, errlen);
out:
    free(m);
    free(calls);
    free(tools);
    free(tc);
    return rc;
}

/* 400 context_length_exceeded: n_prompt tokens of the prompt (`what`: "prompt"
 * or "messages") and n_completion more pass the model's context; param is the
 * request field blamed. */
static void context_error(srv_conn_t *k, const char *param, const char *what, long long n_prompt,
                          long long n_completion) {
    srv_error_set(&k->err, 400, "invalid_request_error", param, "context_length_exceeded",
                  "This model's maximum context length is %d tokens. However, you requested %lld tokens "
                  "(%lld in the %s, %lld in the completion). Please reduce the length of the %s or "
                  "completion.",
                  k->s->n_ctx, n_prompt + n_completion, n_prompt, what, n_completion, what);
}

static void gen_work(uv_work_t *w) {
    srv_conn_t *k = w->data;
    srv_t *s = k->s;
    srv_request_t *r = &k->req;
    int n = r->kind == SRV_REQ_CHAT ? 1 : r->n_prompts;
    k->pids = calloc((size_t)n, sizeof(int32_t *));
    k->pn = calloc((size_t)n, sizeof(int));
    k->echo = calloc((size_t)n, sizeof(char *));
    k->echo_len = calloc((size_t)n, sizeof(size_t));
    if (!k->pids || !k->pn || !k->echo || !k->echo_len) goto oom;
    k->n_prompts = n;
    for (int i = 0; i < n; i++) {
        tok_ids_t ids = {0};
        if (r->kind == SRV_REQ_CHAT) {
            if (!s->have_chat) {
                srv_error_set(&k->err, 400, "invalid_request_error", "messages", NULL,
                              "This model has no chat template; use /v1/completions.");
                k->has_err = 1;
                return;
            }
            char *text = NULL, cerr[256] = "";
            int rc = srv_render_chat(s, r->messages, r->n_messages, r->tools, r->n_tools, &text, cerr, sizeof(cerr));
            if (rc == LC_ENOMEM) goto oom;
            if (rc) {
                srv_error_set(&k->err, 400, "invalid_request_error", "messages", NULL, "%s",
                              cerr[0] ? cerr : "Cannot render the messages.");
                k->has_err = 1;
                return;
            }
            int add_bos = r->add_special_tokens != 0 && tok_add_bos(s->tok) && !chat_renders_bos(&s->chat);
            rc = tok_encode(s->tok, text, strlen(text), add_bos, 1, &ids);
            free(text);
            if (rc) goto oom;
        } else if (r->prompts[i].text) {
            if (tok_encode(s->tok, r->prompts[i].text, r->prompts[i].text_len, tok_add_bos(s->tok), 1, &ids)) goto oom;
            if (r->echo) {
                k->echo[i] = strdup(r->prompts[i].text);
                k->echo_len[i] = r->prompts[i].text_len;
            }
        } else {
            for (int j = 0; j < r->prompts[i].n_ids; j++) {
                if (r->prompts[i].ids[j] >= s->n_vocab) {
                    srv_error_set(&k->err, 400, "invalid_request_error", "prompt", NULL,
                                  "Invalid value for 'prompt': token id %d is out of range (vocabulary size %d).",
                                  r->prompts[i].ids[j], s->n_vocab);
                    k->has_err = 1;
                    return;
                }
            }
            ids.ids = malloc(sizeof(int32_t) * (size_t)r->prompts[i].n_ids);
            if (!ids.ids) goto oom;
            memcpy(ids.ids, r->prompts[i].ids, sizeof(int32_t) * (size_t)r->prompts[i].n_ids);
            ids.n = (size_t)r->prompts[i].n_ids;
            if (r->echo && tok_decode(s->tok, ids.ids, ids.n, 0, &k->echo[i], &k->echo_len[i])) k->echo[i] = NULL;
        }
        k->pids[i] = ids.ids;
        k->pn[i] = (int)ids.n;
        const char *param = r->kind == SRV_REQ_CHAT ? "messages" : "prompt";
        if (ids.n == 0) {
            srv_error_set(&k->err, 400, "invalid_request_error", param, NULL, "The prompt is empty.");
            k->has_err = 1;
            return;
        }
        long long want = (long long)ids.n + (r->max_tokens >= 0 ? r->max_tokens : 0);
        if ((long long)ids.n >= s->n_ctx || want > s->n_ctx) {
            context_error(k, param, param, (long long)ids.n, r->max_tokens >= 0 ? r->max_tokens : 0);
            k->has_err = 1;
            return;
        }
    }
    return;
oom:
    srv_error_set(&k->err, 500, "server_error", NULL, NULL, "Out of memory.");
    k->has_err = 1;
}

/* The engine's parameters for prompt i; -1 with k->err set when the request
 * cannot be served. */
static int prompt_params(srv_conn_t *k, int i, sched_params_t *p) {
    srv_t *s = k->s;
    srv_request_t *r = &k->req;
    memset(p, 0, sizeof(*p));
    p->prompt = k->pids[i];
    p->n_prompt = k->pn[i];
    p->n_choices = r->best_of;
    p->max_tokens = r->max_tokens >= 0 ? r->max_tokens : s->n_ctx - k->pn[i];
    p->min_tokens = r->min_tokens;
    p->ignore_eos = r->ignore_eos;
    for (int j = 0; j < r->n_stop; j++) p->stop[j] = r->stop[j];
    p->n_stop = r->n_stop;
    p->stop_token_ids = r->stop_token_ids;
    p->n_stop_token_ids = r->n_stop_token_ids;
    p->sampling = r->sampling;
    int lp = r->logprobs;
    if (lp < 0 && r->best_of > r->n) lp = 0; /* best_of ranks by cumulative logprob */
    p->logprobs = lp;
    p->sampling.n_logprobs = lp > 0 ? lp : 0;
    p->prompt_logprobs = r->echo && r->logprobs >= 0 ? r->logprobs : -1;
    p->attn = r->attn;
    p->grammar = r->grammar;
    p->grammar_vocab = s->gvocab;
    if (r->grammar && !s->gvocab) {
        srv_error_set(&k->err, 500, "server_error", NULL, NULL,
                      "Constrained decoding is unavailable (out of memory at load).");
        return -1;
    }
    /* parallel_tool_calls false: the first call ends the choice */
    if (r->tool_choice == SRV_TOOLS_AUTO && !r->parallel_tool_calls && s->lim.tool_syntax) {
        if (p->n_stop == SCHED_MAX_STOP) {
            srv_error_set(&k->err, 400, "invalid_request_error", "stop", NULL,
                          "With parallel_tool_calls false at most %d stop sequences are allowed.", SCHED_MAX_STOP - 1);
            return -1;
        }
        p->stop[p->n_stop++] = s->lim.tool_syntax->close_tag;
    }
    p->wake_cb = wake_cb;
    p->wake_ud = s;
    return 0;
}

/* The error of a refused sched_submit (st != 0) of prompt i. */
static void submit_error(srv_conn_t *k, int i, const sched_params_t *p, int st) {
    srv_t *s = k->s;
    if (st == LC_EBUSY) {
        srv_error_set(&k->err, 429, "rate_limit_exceeded", NULL, "server_overloaded",
                      "The server is overloaded; retry shortly.");
        k->retry_after = 1;
    } else if (st == LC_ESHUTDOWN) {
        srv_error_set(&k->err, 503, "service_unavailable", NULL, "draining", "The server is shutting down.");
    } else if (st == LC_EDEVICE) {
        srv_error_set(&k->err, 503, "service_unavailable", NULL, "device_failed", "The engine's device failed: %s.",
                      sched_failure(s->sched) ? sched_failure(s->sched) : "device error");
    } else if (st == LC_ETOOLONG && k->pn[i] + p->max_tokens > s->n_ctx) {
        context_error(k, "max_tokens", "prompt", k->pn[i], p->max_tokens);
    } else if (st == LC_ETOOLONG) {
        /* Within the model's context, but more than the whole KV pool holds: say
         * so, since retrying cannot help and the operator can raise kv_bytes. */
        long long cap = (long long)sched_kv_capacity(s->sched);
        srv_error_set(&k->err, 400, "invalid_request_error", "max_tokens", "context_length_exceeded",
                      "This request needs up to %d tokens of KV cache (%d in the prompt, %d in the completion, "
                      "%d choice(s)) but this server's KV cache holds %lld tokens in all. Reduce max_tokens or "
                      "n, or ask the operator to raise [engine] kv_bytes.",
                      k->pn[i] + p->max_tokens, k->pn[i], p->max_tokens, p->n_choices, cap);
    } else {
        srv_error_set(&k->err, 500, "server_error", NULL, NULL, "Cannot submit the request: %s.", lc_strerror(st));
    }
}

/* One engine request for prompt i, in k->sr[i]; -1 with k->err set. */
static int submit_prompt(srv_conn_t *k, int i) {
    sched_params_t p;
    if (prompt_params(k, i, &p)) return -1;
    int st = 0;
    k->sr[i] = sched_req_create(&p, &st);
    if (!k->sr[i]) {
        srv_error_set(&k->err, 500, "server_error", NULL, NULL, "Cannot create the request: %s.", lc_strerror(st));
        return -1;
    }
    st = sched_submit(k->s->sched, k->sr[i]);
    if (st) {
        submit_error(k, i, &p, st);
        sched_req_release(k->sr[i]);
        k->sr[i] = NULL;
        return -1;
    }
    return 0;
}

/* Every choice's start: its tool-call splitter, and the echoed prompt. */
static void init_choices(srv_conn_t *k) {
    srv_t *s = k->s;
    srv_request_t *r = &k->req;
    /* Tool calls are split out of chat text when the model may make them. */
    int tools_on = r->kind == SRV_REQ_CHAT && r->n_tools && r->tool_choice != SRV_TOOLS_NONE && s->lim.tool_syntax;
    for (int g = 0; g < k->n_ch && tools_on; g++) {
        k->ch[g].tp_on = 1;
        srv_tp_init(&k->ch[g].tp, s->lim.tool_syntax);
        snprintf(k->ch[g].call_id, sizeof k->ch[g].call_id, "call_%.64s_%d", k->rid, choice_index(k, g));
    }
    /* Echo text leads every choice. */
    for (int g = 0; g < k->n_ch; g++) {
        int i = g / r->best_of;
        if (k->echo[i] && !r->stream) srv_buf_append(&k->ch[g].text, k->echo[i], k->echo_len[i]);
        k->ch[g].text_offset = 0;
    }
}

static int submit_all(srv_conn_t *k) {
    srv_t *s = k->s;
    srv_request_t *r = &k->req;
    k->sr = calloc((size_t)k->n_prompts, sizeof(sched_req_t *));
    k->n_ch = k->n_prompts * r->best_of;
    k->ch = calloc((size_t)k->n_ch, sizeof(srv_gen_choice_t));
    if (!k->sr || !k->ch) {
        srv_error_set(&k->err, 500, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    if (!r->has_seed) r->sampling.seed = lc_now_ns() ^ (++s->seq * 0x9E3779B97F4A7C15ull);
    for (int i = 0; i < k->n_prompts; i++)
        if (submit_prompt(k, i)) return -1;
    init_choices(k);
    return 0;
}

static void gen_after(uv_work_t *w, int status) {
    srv_conn_t *k = w->data;
    srv_t *s = k->s;
    if (k->mhd_done || k->client_gone) {
        srv_conn_work_done(k);
        return;
    }
    k->work_pending = 0;
    if (!k->has_err && (s->draining || !s->sched)) {
        srv_error_set(&k->err, 503, "service_unavailable", NULL, "draining", "The server is shutting down.");
        k->has_err = 1;
    }
    if (!k->has_err && submit_all(k)) {
        k->has_err = 1;
        srv_gen_cancel(k);
    }
    if (k->has_err) {
        srv_conn_error(k, &k->err);
    } else if (k->req.stream) {
        k->state = CONN_STREAMING;
        srv_conn_resume(k);
    } else {
        k->state = CONN_RUNNING; /* stays suspended until every choice is done */
    }
    srv_http_run(s);
}

enum MHD_Result srv_gen_start(srv_conn_t *k) {
    srv_t *s = k->s;
    snprintf(k->id, sizeof(k->id), "%s%s", k->req.kind == SRV_REQ_CHAT ? "chatcmpl-" : "cmpl-", k->rid);
    k->created = lc_unix_time();
    k->work.data = k;
    k->work_pending = 1;
    k->state = CONN_WORKING;
    (void)s;
    uv_queue_work(s->loop, &k->work, gen_work, gen_after);
    MHD_suspend_connection(k->c);
    k->suspended = 1;
    return MHD_YES;
}

/* ---- events ------------------------------------------------------------------------------- */
static int choice_index(const srv_conn_t *k, int g) {
    int per = k->req.best_of, i = g / per, j = g % per;
    return i * k->req.n + j;
}

static void push_lp(srv_gen_choice_t *c, const sched_logprob_t *lp) {
    if (c->n_lps == c->cap_lps) {
        int cap = c->cap_lps ? c->cap_lps * 2 : 16;
        sched_logprob_t *n = realloc(c->lps, sizeof(*n) * (size_t)cap);
        if (!n) return;
        c->lps = n;
        c->cap_lps = cap;
    }
    c->lps[c->n_lps++] = *lp;
}

static void add_usage(srv_conn_t *k, sched_req_t *r) {
    sched_usage_t u;
    sched_req_usage(r, &u);
    srv_usage_t *o = &k->usage;
    int first = o->prompt_tokens == 0;
    o->prompt_tokens += u.prompt_tokens;
    o->completion_tokens += u.completion_tokens;
    o->cached_tokens += u.cached_tokens;
    o->prefill_method = u.prefill_method;
    o->decode_method = u.decode_method;
    o->prefill_density = first ? u.prefill_density : fmin(o->prefill_density, u.prefill_density);
    o->decode_density = first ? u.decode_density : fmin(o->decode_density, u.decode_density);
}

/* Streams chat choice g's opening {"role": "assistant"} delta, once. */
static void send_role(srv_conn_t *k, int g, const srv_resp_ctx_t *c) {
    if (k->ch[g].role_sent) return;
    srv_sse_chunk(&k->out, c, choice_index(k, g), 1, "", 0, NULL, 0, 0, 0, SCHED_FINISH_NONE);
    k->ch[g].role_sent = 1;
}

/* Streams one event's worth of output for choice g. */
static void stream_delta(srv_conn_t *k, int g, const char *text, size_t len, const sched_logprob_t *lps, int n_lps,
                         sched_finish_t finish) {
    srv_resp_ctx_t c;
    resp_ctx(k, &c);
    srv_gen_choice_t *ch = &k->ch[g];
    int want = k->req.logprobs >= 0;
    if (k->req.kind == SRV_REQ_CHAT) send_role(k, g, &c);
    srv_sse_chunk(&k->out, &c, choice_index(k, g), 0, text, len, lps, n_lps, want, ch->text_offset, finish);
    ch->text_offset += len;
}

/* Chat with tools: text of choice g through its splitter; streaming emits
 * the content and every call completed so far. */
static void tools_text(srv_conn_t *k, int g, const char *text, size_t len, int finish, const sched_logprob_t *lps,
                       int n_lps) {
    srv_gen_choice_t *ch = &k->ch[g];
    srv_tp_out_t o = {0}, *out = k->req.stream ? &o : &ch->tpo; // streaming: only what this event completes
    if (finish)
        srv_tp_finish(&ch->tp, out);
    else
        srv_tp_feed(&ch->tp, text, len, out);
    if (!k->req.stream) return;
    if (o.content.len || n_lps)
        stream_delta(k, g, o.content.data ? o.content.data : "", o.content.len, lps, n_lps, SCHED_FINISH_NONE);
    srv_resp_ctx_t c;
    resp_ctx(k, &c);
    if (o.n_calls) send_role(k, g, &c);
    for (int q = 0; q < o.n_calls; q++) {
        char id[160];
        snprintf(id, sizeof id, "%s_%d", ch->call_id, ch->n_calls_sent);
        srv_sse_tool_call(&k->out, &c, choice_index(k, g), ch->n_calls_sent++, id, &o.calls[q]);
    }
    srv_tp_out_free(&o);
}

/* The error a choice that failed in the engine reports: a lost device says
 * why (503: another replica can serve), anything else is a 500. */
static void generation_error(srv_t *s, int status, srv_error_t *e) {
    const char *lost = status == LC_EDEVICE && s->sched ? sched_failure(s->sched) : NULL;
    if (lost)
        srv_error_set(e, 503, "service_unavailable", NULL, "device_failed", "Generation failed: %s.", lost);
    else
        srv_error_set(e, 500, "server_error", NULL, NULL, "Generation failed: %s.", lc_strerror(status));
}

static void handle_event(srv_conn_t *k, int i, sched_event_t *ev) {
    srv_request_t *r = &k->req;
    int per = r->best_of;
    switch (ev->kind) {
    case SCHED_EV_PROMPT_LOGPROBS:
        for (int j = 0; j < per; j++) {
            srv_gen_choice_t *ch = &k->ch[i * per + j];
            for (int t = 0; t < ev->n_prompt_lps; t++) push_lp(ch, &ev->prompt_lps[t]);
            if (r->stream) {
                stream_delta(k, i * per + j, k->echo[i] ? k->echo[i] : "", k->echo[i] ? k->echo_len[i] : 0,
                             ev->prompt_lps, ev->n_prompt_lps, SCHED_FINISH_NONE);
                ch->n_lps = 0;
            }
        }
        if (r->stream && k->echo[i]) {
            free(k->echo[i]); /* sent */
            k->echo[i] = NULL;
        }
        break;
    case SCHED_EV_TOKEN: {
        if (ev->choice < 0 || ev->choice >= per) break;
        int g = i * per + ev->choice;
        srv_gen_choice_t *ch = &k->ch[g];
        if (k->t_first == 0) k->t_first = lc_now_s();
        if (r->stream && k->echo[i]) { /* echo without prompt logprobs: send the prompt first */
            for (int j = 0; j < per; j++)
                stream_delta(k, i * per + j, k->echo[i], k->echo_len[i], NULL, 0, SCHED_FINISH_NONE);
            free(k->echo[i]);
            k->echo[i] = NULL;
        }
        ch->n_tokens++;
        if (ev->has_lp) {
            ch->cum_logprob += ev->lp.logprob;
            if (r->logprobs >= 0) push_lp(ch, &ev->lp);
        }
        if (ch->tp_on) {
            tools_text(k, g, ev->text ? ev->text : "", ev->text_len, 0, ch->lps, r->stream ? ch->n_lps : 0);
            if (r->stream) ch->n_lps = 0;
        } else if (r->stream) {
            if (ev->text_len || (ev->has_lp && r->logprobs >= 0))
                stream_delta(k, g, ev->text, ev->text_len, ch->lps, ch->n_lps, SCHED_FINISH_NONE);
            ch->n_lps = 0;
        } else {
            srv_buf_append(&ch->text, ev->text ? ev->text : "", ev->text_len);
        }
        break;
    }
    case SCHED_EV_FINISH: {
        if (ev->choice < 0 || ev->choice >= per) break;
        int g = i * per + ev->choice;
        k->ch[g].finish = ev->finish;
        if (k->ch[g].tp_on) tools_text(k, g, "", 0, 1, NULL, 0);
        if (r->stream && k->echo[i] && k->ch[g].n_tokens == 0)
            stream_delta(k, g, k->echo[i], k->echo_len[i], NULL, 0, SCHED_FINISH_NONE);
        if (r->stream && ev->finish == SCHED_FINISH_ERROR) {
            srv_error_t e;
            generation_error(k->s, ev->status, &e);
            srv_sse_error(&k->out, &e);
        } else if (r->stream && k->ch[g].n_calls_sent && ev->finish == SCHED_FINISH_STOP) {
            srv_resp_ctx_t c;
            resp_ctx(k, &c);
            srv_sse_finish_reason(&k->out, &c, choice_index(k, g), "tool_calls");
        } else if (r->stream) {
            stream_delta(k, g, "", 0, NULL, 0, ev->finish);
        }
        if (ev->finish == SCHED_FINISH_ERROR && !k->has_err) {
            generation_error(k->s, ev->status, &k->err);
            k->has_err = 1;
        }
        break;
    }
    case SCHED_EV_DONE:
        add_usage(k, k->sr[i]);
        k->n_done++;
        break;
    }
}

static int cmp_cum(const void *a, const void *b) {
    const srv_gen_choice_t *x = *(srv_gen_choice_t *const *)a, *y = *(srv_gen_choice_t *const *)b;
    return x->cum_logprob < y->cum_logprob ? 1 : x->cum_logprob > y->cum_logprob ? -1 : 0;
}

static void finish_nonstream(srv_conn_t *k) {
    srv_request_t *r = &k->req;
    if (k->has_err) {
        srv_conn_error(k, &k->err);
        return;
    }
    int n_out = k->n_prompts * r->n, per = r->best_of;
    srv_choice_t *out = calloc((size_t)n_out, sizeof(*out));
    srv_gen_choice_t **sorted = calloc((size_t)per, sizeof(*sorted));
    if (!out || !sorted) {
        free(out);
        free(sorted);
        srv_error_set(&k->err, 500, "server_error", NULL, NULL, "Out of memory.");
        srv_conn_error(k, &k->err);
        return;
    }
    for (int i = 0; i < k->n_prompts; i++) {
        for (int j = 0; j < per; j++) sorted[j] = &k->ch[i * per + j];
        if (per > r->n) qsort(sorted, (size_t)per, sizeof(*sorted), cmp_cum);
        for (int j = 0; j < r->n; j++) {
            srv_choice_t *o = &out[i * r->n + j];
            o->index = i * r->n + j;
            o->text = sorted[j]->text.data;
            o->len = sorted[j]->text.len;
            o->lps = sorted[j]->lps;
            o->n_lps = sorted[j]->n_lps;
            o->want_lps = r->logprobs >= 0;
            o->finish = sorted[j]->finish;
            if (sorted[j]->tp_on) {
                o->text = sorted[j]->tpo.content.data;
                o->len = sorted[j]->tpo.content.len;
                o->calls = sorted[j]->tpo.calls;
                o->n_calls = sorted[j]->tpo.n_calls;
                o->call_id = sorted[j]->call_id;
            }
        }
    }
    srv_resp_ctx_t c;
    resp_ctx(k, &c);
    char *body = srv_render_response(&c, out, n_out, &k->usage);
    free(out);
    free(sorted);
    srv_conn_reply(k, 200, body, "application/json");
}

static void poll_conn(srv_conn_t *k) {
    sched_event_t ev[32];
    int any = 0;
    for (int i = 0; i < k->n_prompts; i++) {
        if (!k->sr || !k->sr[i]) continue;
        int n;
        while ((n = sched_req_poll(k->sr[i], ev, 32)) > 0) {
            any = 1;
            for (int e = 0; e < n; e++) {
                handle_event(k, i, &ev[e]);
                sched_event_clear(&ev[e]);
            }
        }
    }
    if (!any) return;
    if (k->n_done == k->n_prompts) {
        if (k->req.stream) {
            if (k->req.include_usage) {
                srv_resp_ctx_t c;
                resp_ctx(k, &c);
                srv_sse_usage(&k->out, &c, &k->usage);
            }
            srv_sse_done(&k->out);
            k->stream_end = 1;
        } else if (k->state == CONN_RUNNING) {
            finish_nonstream(k);
            return;
        }
    }
    if (k->req.stream && k->out.len) srv_conn_resume(k);
}

void srv_gen_poll_all(srv_t *s) {
    for (srv_conn_t *k = s->conns; k; k = k->next)
        if (k->sr && !k->client_gone && !k->mhd_done && k->n_done < k->n_prompts) poll_conn(k);
}

/* ---- SSE content reader -------------------------------------------------------------------- */
ssize_t srv_gen_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    srv_conn_t *k = cls;
    if (k->out.len) {
        size_t n = k->out.len < max ? k->out.len : max;
        memcpy(buf, k->out.data, n);
        srv_buf_consume(&k->out, n);
        k->last_write = lc_now_s();
        return (ssize_t)n;
    }
    if (k->stream_end) return MHD_CONTENT_READER_END_OF_STREAM;
    if (k->client_gone) return MHD_CONTENT_READER_END_WITH_ERROR;
    MHD_suspend_connection(k->c);
    k->suspended = 1;
    return 0;
}

/* ---- cancel / free ------------------------------------------------------------------------- */
void srv_gen_cancel(srv_conn_t *k) {
    if (!k->sr) return;
    int any = 0;
    for (int i = 0; i < k->n_prompts; i++)
        if (k->sr[i] && k->n_done < k->n_prompts) {
            sched_req_cancel(k->sr[i]);
            any = 1;
        }
    if (any && !k->has_err) {
        k->s->http.cancelled_total++;
        k->has_err = 2; /* counted once */
    }
}

void srv_gen_free(srv_conn_t *k) {
    if (k->sr) {
        for (int i = 0; i < k->n_prompts; i++) {
            if (!k->sr[i]) continue;
            sched_req_cancel(k->sr[i]);
            sched_event_t ev[16];
            int n;
            while ((n = sched_req_poll(k->sr[i], ev, 16)) > 0)
                for (int e = 0; e < n; e++) sched_event_clear(&ev[e]);
            sched_req_release(k->sr[i]);
        }
        free(k->sr);
    }
    for (int i = 0; i < k->n_prompts; i++) {
        if (k->pids) free(k->pids[i]);
        if (k->echo) free(k->echo[i]);
    }
    free(k->pids);
    free(k->pn);
    free(k->echo);
    free(k->echo_len);
    for (int g = 0; g < k->n_ch; g++) {
        srv_buf_free(&k->ch[g].text);
        free(k->ch[g].lps);
        srv_tp_free(&k->ch[g].tp);
        srv_tp_out_free(&k->ch[g].tpo);
    }
    free(k->ch);
    srv_buf_free(&k->out);
    srv_request_free(&k->req);
    k->sr = NULL;
    k->pids = NULL;
    k->echo = NULL;
    k->ch = NULL;
    k->n_prompts = 0;
}
