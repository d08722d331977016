/* libFuzzer target: the request parsers (body → validated native request)
 * of /v1/completions, /v1/chat/completions, /tokenize and /detokenize over
 * arbitrary bytes. Every body must be either accepted with every field inside
 * its documented range, or refused with a 4xx whose rendered error object is
 * one line of valid UTF-8 JSON that cJSON reads back. The parsers need no
 * model: they are pure functions of (body, limits).
 *
 * The body is handed over NUL-terminated, as lacunad does (srv_buf_t keeps a
 * NUL after the data): parse.h states that contract. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "server/parse.h"
#include "server/respond.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        if (!(x)) __builtin_trap();                                                                                    \
    } while (0)

static int valid_utf8(const char *s) {
    size_t n = strlen(s);
    char *d = srv_utf8_dup(s, n);
    int ok = d && strcmp(d, s) == 0;
    free(d);
    return ok;
}

/* A refusal: a client error with a message, rendered as one line of JSON. */
static void check_error(const srv_error_t *e) {
    CHECK(e->status >= 400 && e->status < 500);
    CHECK(e->message[0]);
    char *j = srv_render_error(e);
    CHECK(j);
    CHECK(!strchr(j, '\n') && !strchr(j, '\r'));
    CHECK(valid_utf8(j));
    cJSON *o = cJSON_Parse(j);
    CHECK(o);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(o, "error");
    CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "message")));
    cJSON_Delete(o);
    free(j);
}

static void check_common(const srv_request_t *r, const srv_limits_t *lim) {
    CHECK(r->model);
    CHECK(r->n >= 1 && r->n <= lim->max_n);
    CHECK(r->best_of >= r->n && r->best_of <= lim->max_n);
    CHECK(!(r->stream && r->best_of > r->n));
    CHECK(r->min_tokens >= 0);
    CHECK(r->max_tokens < 0 || r->min_tokens <= r->max_tokens);
    CHECK(r->n_stop >= 0 && r->n_stop <= SCHED_MAX_STOP);
    for (int i = 0; i < r->n_stop; i++) CHECK(r->stop[i]);
    for (int i = 0; i < r->n_stop_token_ids; i++) CHECK(r->stop_token_ids[i] >= 0);
    const sampler_params_t *s = &r->sampling;
    CHECK(s->temperature >= 0 && s->temperature <= 2);
    CHECK(s->top_p >= 0 && s->top_p <= 1);
    CHECK(s->top_k >= 0);
    CHECK(s->min_p >= 0 && s->min_p <= 1);
    CHECK(s->repetition_penalty > 0 && s->repetition_penalty <= 10);
    CHECK(s->presence_penalty >= -2 && s->presence_penalty <= 2);
    CHECK(s->frequency_penalty >= -2 && s->frequency_penalty <= 2);
    CHECK(s->n_logit_bias >= 0 && (s->n_logit_bias == 0 || s->logit_bias));
    for (int i = 0; i < s->n_logit_bias; i++) {
        CHECK(s->logit_bias[i].token >= 0);
        CHECK(s->logit_bias[i].bias >= -100 && s->logit_bias[i].bias <= 100);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *body = malloc(size + 1);
    if (!body) return 0;
    memcpy(body, data, size);
    body[size] = 0;
    /* tools parse as for a template with tool support (Qwen2.5's syntax) */
    static chat_tool_syntax_t sy;
    chat_template_t ct;
    if (!sy.open_tag && (chat_template_from_name("qwen2.5", &ct) || chat_tool_syntax(&ct, &sy))) __builtin_trap();
    const srv_limits_t lim = {.max_n = 8, .max_prompts = 4, .tool_syntax = &sy, .tool_family = "qwen2.5"};
    srv_request_t r;
    srv_error_t e;

    memset(&e, 0, sizeof e);
    if (srv_parse_completion(body, size, &lim, &r, &e) == 0) {
        check_common(&r, &lim);
        CHECK(r.kind == SRV_REQ_COMPLETION);
        CHECK(r.max_tokens >= 0);
        CHECK(r.logprobs >= -1 && r.logprobs <= 5);
        CHECK(r.n_prompts >= 1);
        for (int i = 0; i < r.n_prompts; i++) {
            const srv_prompt_t *p = &r.prompts[i];
            CHECK(!p->text != !p->ids); /* exactly one */
            if (p->text) CHECK(strlen(p->text) == p->text_len);
            for (int k = 0; k < p->n_ids; k++) CHECK(p->ids[k] >= 0);
        }
        if (r.n_prompts > 1) CHECK(r.n_prompts <= lim.max_prompts);
    } else {
        check_error(&e);
    }
    srv_request_free(&r);

    memset(&e, 0, sizeof e);
    if (srv_parse_chat(body, size, &lim, &r, &e) == 0) {
        check_common(&r, &lim);
        CHECK(r.kind == SRV_REQ_CHAT);
        CHECK(r.logprobs >= -1 && r.logprobs <= 20);
        CHECK(r.n_messages >= 1);
        for (int i = 0; i < r.n_messages; i++) CHECK(r.messages[i].role && r.messages[i].content);
        /* a forced call or a response format always comes with its grammar */
        CHECK(!(r.tool_choice == SRV_TOOLS_REQUIRED || r.tool_choice == SRV_TOOLS_NAMED) || r.grammar);
        CHECK(r.format == SRV_FMT_TEXT || r.grammar);
        CHECK(r.tool_choice != SRV_TOOLS_NAMED || (r.tool_named >= 0 && r.tool_named < r.n_tools));
        for (int i = 0; i < r.n_tools; i++) CHECK(r.tools[i].name && r.tools[i].rendered);
    } else {
        check_error(&e);
    }
    srv_request_free(&r);

    srv_tokenize_req_t t;
    memset(&e, 0, sizeof e);
    if (srv_parse_tokenize(body, size, &t, &e) == 0) {
        CHECK((t.prompt != NULL) != (t.messages != NULL));
        CHECK(!t.messages || t.n_messages >= 1);
        CHECK(t.add_special_tokens == 0 || t.add_special_tokens == 1);
        for (int i = 0; i < t.n_messages; i++) CHECK(t.messages[i].role && t.messages[i].content);
    } else {
        check_error(&e);
    }
    srv_tokenize_req_free(&t);

    int32_t *ids = NULL;
    int n_ids = -1;
    memset(&e, 0, sizeof e);
    if (srv_parse_detokenize(body, size, &ids, &n_ids, &e) == 0) {
        CHECK(n_ids >= 0 && ids);
        for (int i = 0; i < n_ids; i++) CHECK(ids[i] >= 0);
    } else {
        CHECK(!ids && n_ids == 0);
        check_error(&e);
    }
    free(ids);
    free(body);
    return 0;
}
