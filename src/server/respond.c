/* JSON and SSE writers. The shapes follow the contract in
 * reference/openai-api.md; the `sparse_attention` usage echo is ours. */
#include "server/respond.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

/* ---- buffers ----------------------------------------------------------------- */
int srv_buf_append(srv_buf_t *b, const void *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return LC_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

void srv_buf_consume(srv_buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->data) b->data[b->len] = 0;
}

void srv_buf_free(srv_buf_t *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* ---- small helpers ----------------------------------------------------------- */
char *srv_utf8_dup(const char *s, size_t len) {
    char *out = malloc(len * 3 + 1), *o = out;
    if (!out) return NULL;
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        unsigned c = *p;
        int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && p + n <= end;
        for (int i = 1; ok && i < n; i++) ok = (p[i] & 0xC0) == 0x80;
        if (ok && n == 2) ok = c >= 0xC2;
        if (ok && n == 3) {
            unsigned cp = ((c & 0xF) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
            ok = cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
        }
        if (ok && n == 4) {
            unsigned cp = ((c & 7) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
            ok = cp >= 0x10000 && cp <= 0x10FFFF;
        }
        if (ok && c == 0) ok = 0; /* NUL would cut the string */
        if (ok) {
            memcpy(o, p, (size_t)n);
            o += n;
            p += n;
        } else {
            /* One U+FFFD per maximal ill-formed subpart (lead byte plus the
             * continuation bytes that follow it), as lossy decoders do. */
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
            for (int i = 1; i < n && p < end && (*p & 0xC0) == 0x80; i++) p++;
        }
    }
    *o = 0;
    return out;
}

const char *srv_finish_reason(sched_finish_t f) {
    switch (f) {
    case SCHED_FINISH_LENGTH: return "length";
    case SCHED_FINISH_ERROR: return "error";
    case SCHED_FINISH_NONE: return NULL;
    default: return "stop";
    }
}

const char *srv_prefill_name(int m) {
    static const char *const n[] = {"dense", "flexprefill", "anchor", "streaming"};
    return m >= 0 && m < 4 ? n[m] : "auto";
}

const char *srv_decode_name(int m) {
    static const char *const n[] = {"dense", "quest", "tidal", "streaming"};
    return m >= 0 && m < 4 ? n[m] : "auto";
}

static char *print_delete(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}


static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

/* A token's text as valid UTF-8 (malloc'd); "" for an unknown id. */
static char *piece_text(const srv_resp_ctx_t *c, int32_t id, size_t *raw_len) {
    size_t len = 0;
    const char *p = c->piece ? c->piece(c->piece_ud, id, &len) : NULL;
    if (!p) len = 0;
    if (raw_len) *raw_len = len;
    return srv_utf8_dup(p ? p : "", len);
}

static cJSON *bytes_array(const srv_resp_ctx_t *c, int32_t id) {
    size_t len = 0;
    const char *p = c->piece ? c->piece(c->piece_ud, id, &len) : NULL;
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; p && i < len; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)p[i]));
    return a;
}

/* ---- errors and models -------------------------------------------------------- */
/* Messages quote client bytes (an unknown key, a URL) cut to a fixed width,
 * which can split a UTF-8 character or carry bad bytes: cJSON would copy them
 * raw, so every string is made valid UTF-8 first. */
static cJSON *utf8_string(const char *s) {
    char *v = srv_utf8_dup(s, strlen(s));
    cJSON *o = cJSON_CreateString(v ? v : "");
    free(v);
    return o;
}

static cJSON *error_obj(const srv_error_t *e) {
    cJSON *root = cJSON_CreateObject(), *o = cJSON_AddObjectToObject(root, "error");
    cJSON_AddItemToObject(o, "message", utf8_string(e->message));
    cJSON_AddItemToObject(o, "type", utf8_string(e->type[0] ? e->type : "invalid_request_error"));
    cJSON_AddItemToObject(o, "param", e->param[0] ? utf8_string(e->param) : cJSON_CreateNull());
    cJSON_AddItemToObject(o, "code", e->code[0] ? utf8_string(e->code) : cJSON_CreateNull());
    return root;
}

char *srv_render_error(const srv_error_t *e) { return print_delete(error_obj(e)); }

char *srv_render_models(const char *served_name, int64_t created) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", served_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)created);
    cJSON_AddStringToObject(m, "owned_by", "lacuna");
    cJSON_AddItemToArray(data, m);
    return print_delete(root);
}

/* ---- logprobs ------------------------------------------------------------------ */
/* Completions: {tokens, token_logprobs, top_logprobs, text_offset}. */
static cJSON *completion_lps(const srv_resp_ctx_t *c, const sched_logprob_t *lps, int n, size_t offset0) {
    cJSON *o = cJSON_CreateObject();
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *tlp = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *top = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *off = cJSON_AddArrayToObject(o, "text_offset");
    size_t at = offset0;
    for (int i = 0; i < n; i++) {
        size_t raw;
        char *t = piece_text(c, lps[i].token, &raw);
        cJSON_AddItemToArray(toks, cJSON_CreateString(t ? t : ""));
        free(t);
        cJSON_AddItemToArray(tlp, num_or_null(lps[i].logprob));
        if (!isfinite(lps[i].logprob)) {
            cJSON_AddItemToArray(top, cJSON_CreateNull());
        } else {
            cJSON *m = cJSON_CreateObject();
            for (int k = 0; k < lps[i].n_top; k++) {
                char *tt = piece_text(c, lps[i].top_ids[k], NULL);
                if (tt && !cJSON_GetObjectItemCaseSensitive(m, tt))
                    cJSON_AddItemToObject(m, tt, num_or_null(lps[i].top_logprobs[k]));
                free(tt);
            }
            cJSON_AddItemToArray(top, m);
        }
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)at));
        at += raw;
    }
    return o;
}

/* Chat: {content:[{token, logprob, bytes, top_logprobs:[{token, logprob, bytes}]}], refusal}. */
static cJSON *chat_lps(const srv_resp_ctx_t *c, const sched_logprob_t *lps, int n) {
    cJSON *o = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        char *t = piece_text(c, lps[i].token, NULL);
        cJSON_AddStringToObject(e, "token", t ? t : "");
        free(t);
        cJSON_AddItemToObject(e, "logprob", num_or_null(lps[i].logprob));
        cJSON_AddItemToObject(e, "bytes", bytes_array(c, lps[i].token));
        cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < lps[i].n_top; k++) {
            cJSON *te = cJSON_CreateObject();
            char *tt = piece_text(c, lps[i].top_ids[k], NULL);
            cJSON_AddStringToObject(te, "token", tt ? tt : "");
            free(tt);
            cJSON_AddItemToObject(te, "logprob", num_or_null(lps[i].top_logprobs[k]));
            cJSON_AddItemToObject(te, "bytes", bytes_array(c, lps[i].top_ids[k]));
            cJSON_AddItemToArray(top, te);
        }
        cJSON_AddItemToArray(content, e);
    }
    cJSON_AddNullToObject(o, "refusal");
    return o;
}

static cJSON *usage_obj(const srv_usage_t *u) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "prompt_tokens", u->prompt_tokens);
    cJSON_AddNumberToObject(o, "completion_tokens", u->completion_tokens);
    cJSON_AddNumberToObject(o, "total_tokens", u->prompt_tokens + u->completion_tokens);
    cJSON *d = cJSON_AddObjectToObject(o, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", u->cached_tokens);
    cJSON *sa = cJSON_AddObjectToObject(o, "sparse_attention");
    cJSON_AddStringToObject(sa, "prefill", srv_prefill_name(u->prefill_method));
    cJSON_AddStringToObject(sa, "decode", srv_decode_name(u->decode_method));
    cJSON_AddItemToObject(sa, "prefill_density", num_or_null(u->prefill_density));
    cJSON_AddItemToObject(sa, "decode_density", num_or_null(u->decode_density));
    return o;
}

static cJSON *envelope(const srv_resp_ctx_t *c, int chunk) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", c->id);
    cJSON_AddStringToObject(root, "object",
                            c->kind == SRV_REQ_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                    : "text_completion");
    cJSON_AddNumberToObject(root, "created", (double)c->created);
    cJSON_AddStringToObject(root, "model", c->model);
    return root;
}

/* ---- non-streaming ---------------------------------------------------------------- */
char *srv_render_response(const srv_resp_ctx_t *c, const srv_choice_t *ch, int n, const srv_usage_t *u) {
    cJSON *root = envelope(c, 0);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    for (int i = 0; i < n; i++) {
        cJSON *o = cJSON_CreateObject();
        char *text = srv_utf8_dup(ch[i].text ? ch[i].text : "", ch[i].text ? ch[i].len : 0);
        cJSON_AddNumberToObject(o, "index", ch[i].index);
        if (c->kind == SRV_REQ_CHAT) {
            cJSON *m = cJSON_AddObjectToObject(o, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            if (ch[i].n_calls && !(text && text[0]))
                cJSON_AddNullToObject(m, "content");
            else
                cJSON_AddStringToObject(m, "content", text ? text : "");
            if (ch[i].n_calls) {
                cJSON *tc = cJSON_AddArrayToObject(m, "tool_calls");
                for (int k = 0; k < ch[i].n_calls; k++) {
                    char id[160];
                    snprintf(id, sizeof id, "%s_%d", ch[i].call_id ? ch[i].call_id : "call", k);
                    cJSON *e = cJSON_CreateObject(), *fn;
                    cJSON_AddStringToObject(e, "id", id);
                    cJSON_AddStringToObject(e, "type", "function");
                    fn = cJSON_AddObjectToObject(e, "function");
                    cJSON_AddItemToObject(fn, "name", utf8_string(ch[i].calls[k].name));
                    cJSON_AddItemToObject(fn, "arguments", utf8_string(ch[i].calls[k].arguments));
                    cJSON_AddItemToArray(tc, e);
                }
            }
            cJSON_AddItemToObject(o, "logprobs",
                                  ch[i].want_lps ? chat_lps(c, ch[i].lps, ch[i].n_lps) : cJSON_CreateNull());
        } else {
            cJSON_AddStringToObject(o, "text", text ? text : "");
            cJSON_AddItemToObject(o, "logprobs",
                                  ch[i].want_lps ? completion_lps(c, ch[i].lps, ch[i].n_lps, 0) : cJSON_CreateNull());
        }
        free(text);
        const char *fr = srv_finish_reason(ch[i].finish);
        if (ch[i].n_calls && ch[i].finish == SCHED_FINISH_STOP) fr = "tool_calls";
        cJSON_AddItemToObject(o, "finish_reason", fr ? cJSON_CreateString(fr) : cJSON_CreateNull());
        cJSON_AddItemToArray(choices, o);
    }
    if (u) cJSON_AddItemToObject(root, "usage", usage_obj(u));
    return print_delete(root);
}

/* ---- SSE ------------------------------------------------------------------------------ */
int srv_sse_json(srv_buf_t *out, const char *json) {
    if (!json) return LC_ENOMEM;
    int rc = srv_buf_append(out, "data: ", 6);
    if (!rc) rc = srv_buf_append(out, json, strlen(json));
    if (!rc) rc = srv_buf_append(out, "\n\n", 2);
    return rc;
}

static int sse_obj(srv_buf_t *out, cJSON *o) {
    char *s = print_delete(o);
    int rc = srv_sse_json(out, s);
    free(s);
    return rc;
}

int srv_sse_chunk(srv_buf_t *out, const srv_resp_ctx_t *c, int index, int role_first, const char *text, size_t len,
                  const sched_logprob_t *lps, int n_lps, int want_lps, size_t text_offset, sched_finish_t finish) {
    cJSON *root = envelope(c, 1);
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", index);
    char *t = srv_utf8_dup(text ? text : "", text ? len : 0);
    if (c->kind == SRV_REQ_CHAT) {
        cJSON *d = cJSON_AddObjectToObject(o, "delta");
        if (role_first) {
            cJSON_AddStringToObject(d, "role", "assistant");
            cJSON_AddStringToObject(d, "content", t ? t : "");
        } else if (finish == SCHED_FINISH_NONE || (t && *t)) {
            cJSON_AddStringToObject(d, "content", t ? t : "");
        }
        cJSON_AddItemToObject(o, "logprobs", want_lps && n_lps ? chat_lps(c, lps, n_lps) : cJSON_CreateNull());
    } else {
        cJSON_AddStringToObject(o, "text", t ? t : "");
        cJSON_AddItemToObject(o, "logprobs",
                              want_lps && n_lps ? completion_lps(c, lps, n_lps, text_offset) : cJSON_CreateNull());
    }
    free(t);
    const char *fr = srv_finish_reason(finish);
    cJSON_AddItemToObject(o, "finish_reason", fr ? cJSON_CreateString(fr) : cJSON_CreateNull());
    cJSON_AddItemToArray(choices, o);
    return sse_obj(out, root);
}

int srv_sse_usage(srv_buf_t *out, const srv_resp_ctx_t *c, const srv_usage_t *u) {
    cJSON *root = envelope(c, 1);
    cJSON_AddArrayToObject(root, "choices");
    cJSON_AddItemToObject(root, "usage", usage_obj(u));
    return sse_obj(out, root);
}

int srv_sse_error(srv_buf_t *out, const srv_error_t *e) { return sse_obj(out, error_obj(e)); }

static cJSON *chunk_choice(const srv_resp_ctx_t *c, int index, cJSON **root, cJSON **delta) {
    *root = envelope(c, 1);
    cJSON *choices = cJSON_AddArrayToObject(*root, "choices");
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", index);
    *delta = cJSON_AddObjectToObject(o, "delta");
    cJSON_AddItemToObject(o, "logprobs", cJSON_CreateNull());
    cJSON_AddItemToArray(choices, o);
    return o;
}

int srv_sse_tool_call(srv_buf_t *out, const srv_resp_ctx_t *c, int index, int call_index, const char *id,
                      const srv_call_t *call) {
    for (int part = 0; part < 2; part++) {
        cJSON *root, *delta;
        cJSON *o = chunk_choice(c, index, &root, &delta);
        cJSON *tc = cJSON_AddArrayToObject(delta, "tool_calls"), *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "index", call_index);
        if (part == 0) {
            cJSON_AddStringToObject(e, "id", id);
            cJSON_AddStringToObject(e, "type", "function");
        }
        cJSON *fn = cJSON_AddObjectToObject(e, "function");
        if (part == 0) cJSON_AddItemToObject(fn, "name", utf8_string(call->name));
        cJSON_AddItemToObject(fn, "arguments", part ? utf8_string(call->arguments) : cJSON_CreateString(""));
        cJSON_AddItemToArray(tc, e);
        cJSON_AddItemToObject(o, "finish_reason", cJSON_CreateNull());
        int rc = sse_obj(out, root);
        if (rc) return rc;
    }
    return 0;
}

int srv_sse_finish_reason(srv_buf_t *out, const srv_resp_ctx_t *c, int index, const char *reason) {
    cJSON *root, *delta;
    cJSON *o = chunk_choice(c, index, &root, &delta);
    cJSON_AddItemToObject(o, "finish_reason", reason ? cJSON_CreateString(reason) : cJSON_CreateNull());
    return sse_obj(out, root);
}

int srv_sse_done(srv_buf_t *out) { return srv_buf_append(out, "data: [DONE]\n\n", 14); }

int srv_sse_ping(srv_buf_t *out) { return srv_buf_append(out, ": ping\n\n", 8); }
