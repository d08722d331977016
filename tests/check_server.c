/* Check suite for src/server pieces that run without an engine: request
 * validation (table-driven: each bad body gets its exact status, param and
 * message), response and SSE writers, metrics text, auth and config; then
 * the HTTP listener itself (http.c, routes.c) on a loopback port with no
 * model loaded, the port-sharing rule, and the daemon's command line. */
#include <check.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/parse.h"
#include "server/respond.h"
#include "server/server.h"

static const srv_limits_t LIM = {.max_n = 8, .max_prompts = 4};

/* ---- parse: the good paths --------------------------------------------------- */
START_TEST(test_parse_completion_full) {
    const char *b = "{\"model\":\"m\",\"prompt\":\"hi\",\"max_tokens\":5,\"temperature\":0,\"top_p\":0.5,"
                    "\"n\":2,\"best_of\":3,\"logprobs\":2,\"echo\":true,\"stop\":[\"a\",\"b\"],"
                    "\"presence_penalty\":1,\"frequency_penalty\":-1,\"logit_bias\":{\"7\":-100,\"9\":5},"
                    "\"seed\":42,\"top_k\":40,\"min_p\":0.1,\"repetition_penalty\":1.1,\"ignore_eos\":true,"
                    "\"min_tokens\":2,\"stop_token_ids\":[3,4],\"unknown_field\":{\"x\":1},"
                    "\"sparse_attention\":{\"prefill\":\"flexprefill\",\"gamma\":0.95,\"decode\":\"quest\","
                    "\"decode_budget\":512,\"flex_select\":\"blocks\"}}";
    srv_request_t r;
    srv_error_t e;
    ck_assert_int_eq(srv_parse_completion(b, strlen(b), &LIM, &r, &e), 0);
    ck_assert_str_eq(r.model, "m");
    ck_assert_int_eq(r.n_prompts, 1);
    ck_assert_str_eq(r.prompts[0].text, "hi");
    ck_assert_int_eq(r.max_tokens, 5);
    ck_assert_float_eq(r.sampling.temperature, 0);
    ck_assert_int_eq(r.n, 2);
    ck_assert_int_eq(r.best_of, 3);
    ck_assert_int_eq(r.logprobs, 2);
    ck_assert_int_eq(r.echo, 1);
    ck_assert_int_eq(r.n_stop, 2);
    ck_assert_str_eq(r.stop[1], "b");
    ck_assert_int_eq(r.sampling.n_logit_bias, 2);
    ck_assert_int_eq(r.sampling.logit_bias[0].token, 7);
    ck_assert_float_eq(r.sampling.logit_bias[0].bias, -100);
    ck_assert_int_eq(r.has_seed, 1);
    ck_assert_uint_eq(r.sampling.seed, 42);
    ck_assert_int_eq(r.sampling.top_k, 40);
    ck_assert_int_eq(r.ignore_eos, 1);
    ck_assert_int_eq(r.min_tokens, 2);
    ck_assert_int_eq(r.n_stop_token_ids, 2);
    ck_assert_int_eq(r.attn.prefill, 1);
    ck_assert_int_eq(r.attn.decode, 1);
    ck_assert_int_eq(r.attn.decode_budget, 512);
    ck_assert(fabsf(r.attn.gamma - 0.95f) < 1e-6);
    ck_assert(r.attn.tau < 0);
    ck_assert_int_eq(r.attn.flex_select, ATTN_FLEX_BLOCKS);
    /* what the request does not set stays the engine's (sched_attn_spec_default) */
    ck_assert_int_eq(r.attn.anchor_init, -1);
    ck_assert_int_eq(r.attn.anchor_local, -1);
    ck_assert_int_eq(r.attn.anchor_lookback, -1);
    srv_request_free(&r);
}
END_TEST

START_TEST(test_parse_prompt_forms) {
    srv_request_t r;
    srv_error_t e;
    const char *a = "{\"model\":\"m\",\"prompt\":[\"x\",\"yz\"]}";
    ck_assert_int_eq(srv_parse_completion(a, strlen(a), &LIM, &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 2);
    ck_assert_str_eq(r.prompts[1].text, "yz");
    ck_assert_int_eq(r.max_tokens, 16);
    ck_assert_int_eq(r.best_of, 1);
    srv_request_free(&r);
    const char *b = "{\"model\":\"m\",\"prompt\":[1,2,3]}";
    ck_assert_int_eq(srv_parse_completion(b, strlen(b), &LIM, &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 1);
    ck_assert_int_eq(r.prompts[0].n_ids, 3);
    ck_assert_ptr_null(r.prompts[0].text);
    srv_request_free(&r);
    const char *c = "{\"model\":\"m\",\"prompt\":[[1,2],[3]],\"stream\":true,"
                    "\"stream_options\":{\"include_usage\":true}}";
    ck_assert_int_eq(srv_parse_completion(c, strlen(c), &LIM, &r, &e), 0);
    ck_assert_int_eq(r.n_prompts, 2);
    ck_assert_int_eq(r.prompts[1].ids[0], 3);
    ck_assert_int_eq(r.stream, 1);
    ck_assert_int_eq(r.include_usage, 1);
    srv_request_free(&r);
}
END_TEST

START_TEST(test_parse_chat) {
    srv_request_t r;
    srv_error_t e;
    const char *a = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"he\"},"
                    "{\"type\":\"text\",\"text\":\"llo\"}]}],\"max_completion_tokens\":7,\"max_tokens\":9,"
                    "\"logprobs\":true,\"top_logprobs\":3}";
    ck_assert_int_eq(srv_parse_chat(a, strlen(a), &LIM, &r, &e), 0);
    ck_assert_int_eq(r.n_messages, 2);
    ck_assert_str_eq(r.messages[1].content, "hello");
    ck_assert_int_eq(r.max_tokens, 7);
    ck_assert_int_eq(r.logprobs, 3);
    srv_request_free(&r);
    const char *b = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":9,"
                    "\"temperature\":null}";
    ck_assert_int_eq(srv_parse_chat(b, strlen(b), &LIM, &r, &e), 0);
    ck_assert_int_eq(r.max_tokens, 9);
    ck_assert_int_eq(r.logprobs, -1);
    ck_assert_float_eq(r.sampling.temperature, 1);
    srv_request_free(&r);
}
END_TEST

/* ---- parse: table of malformed requests ----------------------------------------------- */
typedef struct {
    int chat;
    const char *body;
    const char *param; // "" = null
    const char *message;
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {0, "{\"model\":\"m\",", "", "We could not parse the JSON body of your request."},
    {0, "[1,2]", "", "The request body must be a JSON object."},
    {0, "{\"prompt\":\"x\"}", "model", "Missing required parameter: 'model'."},
    {0, "{\"model\":\"m\"}", "prompt", "Missing required parameter: 'prompt'."},
    {0, "{\"model\":5,\"prompt\":\"x\"}", "model", "Invalid type for 'model': expected a string."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature",
     "Invalid type for 'temperature': expected a number."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"temperature\":2.5}", "temperature",
     "Invalid value for 'temperature': must be between 0 and 2."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"top_p\":1.5}", "top_p",
     "Invalid value for 'top_p': must be between 0 and 1."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens",
     "Invalid value for 'max_tokens': must be between 0 and 2147483647."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens",
     "Invalid type for 'max_tokens': expected an integer."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":9}", "n", "Invalid value for 'n': must be between 1 and 8."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":0}", "n", "Invalid value for 'n': must be between 1 and 8."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"n\":3,\"best_of\":2}", "best_of",
     "Invalid value for 'best_of': must be greater than or equal to 'n'."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"best_of\":2,\"stream\":true}", "best_of",
     "'best_of' cannot be used with 'stream'."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"logprobs\":6}", "logprobs",
     "Invalid value for 'logprobs': must be between 0 and 5."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"echo\":1}", "echo", "Invalid type for 'echo': expected a boolean."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop",
     "Invalid value for 'stop': at most 4 stop sequences are allowed."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"stop\":7}", "stop",
     "Invalid type for 'stop': expected a string or an array of strings."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"presence_penalty\":-3}", "presence_penalty",
     "Invalid value for 'presence_penalty': must be between -2 and 2."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"logit_bias\":{\"abc\":1}}", "logit_bias",
     "Invalid key in 'logit_bias': 'abc' is not a token id."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"logit_bias\":{\"5\":101}}", "logit_bias",
     "Invalid value for 'logit_bias': biases must be between -100 and 100."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"seed\":\"1\"}", "seed", "Invalid type for 'seed': expected an integer."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"stream\":\"yes\"}", "stream",
     "Invalid type for 'stream': expected a boolean."},
    {0, "{\"model\":\"m\",\"prompt\":[]}", "prompt", "Invalid value for 'prompt': must not be empty."},
    {0, "{\"model\":\"m\",\"prompt\":[\"a\",1]}", "prompt",
     "Invalid type for 'prompt': expected a string, an array of strings, an array of token ids or an array of "
     "token-id arrays."},
    {0, "{\"model\":\"m\",\"prompt\":[1,-2]}", "prompt",
     "Invalid value for 'prompt': token ids must be non-negative integers."},
    {0, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "prompt",
     "Invalid value for 'prompt': at most 4 prompts per request."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"suffix\":\"tail\"}", "suffix",
     "'suffix' is not supported by this server."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":{\"prefill\":\"magic\"}}", "sparse_attention.prefill",
     "Invalid value for 'sparse_attention.prefill': expected one of auto, dense, flexprefill, anchor, streaming."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":{\"gamma\":2}}", "sparse_attention.gamma",
     "Invalid value for 'sparse_attention.gamma': must be between 1e-06 and 1."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":{\"flex_select\":\"pooled\"}}",
     "sparse_attention.flex_select",
     "Invalid value for 'sparse_attention.flex_select': expected one of tokens, blocks."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":{\"flex_select\":1}}", "sparse_attention.flex_select",
     "Invalid value for 'sparse_attention.flex_select': expected one of tokens, blocks."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":{\"budget\":2}}", "sparse_attention",
     "Unknown field 'sparse_attention.budget'."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"sparse_attention\":\"dense\"}", "sparse_attention",
     "Invalid type for 'sparse_attention': expected an object."},
    {0, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":2,\"min_tokens\":3}", "min_tokens",
     "Invalid value for 'min_tokens': must not exceed 'max_tokens'."},
    {1, "{\"model\":\"m\"}", "messages", "Missing required parameter: 'messages'."},
    {1, "{\"model\":\"m\",\"messages\":[]}", "messages",
     "Invalid value for 'messages': must contain at least one message."},
    {1, "{\"model\":\"m\",\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "messages[0].role",
     "Invalid value for 'messages[0].role': expected one of system, developer, user, assistant, tool."},
    {1, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content",
     "Invalid type for 'messages[0].content': expected a string or an array of parts."},
    {1, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}", "top_logprobs",
     "Invalid value for 'top_logprobs': requires 'logprobs' to be true."},
    {1, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,\"top_logprobs\":21}",
     "top_logprobs", "Invalid value for 'top_logprobs': must be between 0 and 20."},
};

START_TEST(test_parse_bad_table) {
    const bad_case_t *c = &bad_cases[_i];
    srv_request_t r;
    srv_error_t e;
    memset(&e, 0, sizeof(e));
    int rc = c->chat ? srv_parse_chat(c->body, strlen(c->body), &LIM, &r, &e)
                     : srv_parse_completion(c->body, strlen(c->body), &LIM, &r, &e);
    ck_assert_msg(rc == LC_EINVAL, "case %d accepted: %s", _i, c->body);
    ck_assert_int_eq(e.status, 400);
    ck_assert_str_eq(e.type, "invalid_request_error");
    ck_assert_str_eq(e.param, c->param);
    ck_assert_str_eq(e.message, c->message);
    srv_request_free(&r);
}
END_TEST

START_TEST(test_parse_tokenize) {
    srv_tokenize_req_t t;
    srv_error_t e;
    const char *a = "{\"prompt\":\"hello\",\"add_special_tokens\":false}";
    ck_assert_int_eq(srv_parse_tokenize(a, strlen(a), &t, &e), 0);
    ck_assert_str_eq(t.prompt, "hello");
    ck_assert_int_eq(t.add_special_tokens, 0);
    srv_tokenize_req_free(&t);
    ck_assert_int_eq(srv_parse_tokenize("{}", 2, &t, &e), LC_EINVAL);
    ck_assert_str_eq(e.message, "Missing required parameter: 'prompt'.");
    srv_tokenize_req_free(&t);
    int32_t *ids;
    int n;
    const char *d = "{\"tokens\":[5,6,7]}";
    ck_assert_int_eq(srv_parse_detokenize(d, strlen(d), &ids, &n, &e), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[2], 7);
    free(ids);
    const char *bad = "{\"tokens\":[\"a\"]}";
    ck_assert_int_eq(srv_parse_detokenize(bad, strlen(bad), &ids, &n, &e), LC_EINVAL);
    ck_assert_str_eq(e.param, "tokens");
}
END_TEST

/* ---- writers ------------------------------------------------------------------------- */
static const char *fake_piece(void *ud, int32_t id, size_t *len) {
    static const char *const p[] = {"A", " b", "\xE2\x82", "c"};
    if (id < 0 || id > 3) return NULL;
    *len = strlen(p[id]);
    return p[id];
}

static srv_resp_ctx_t ctx(srv_req_kind_t k) {
    srv_resp_ctx_t c = {"cmpl-1", 1700000000, "tiny", k, fake_piece, NULL};
    return c;
}

START_TEST(test_error_json) {
    srv_error_t e;
    srv_error_set(&e, 404, "invalid_request_error", "model", "model_not_found", "The model `x` does not exist.");
    char *s = srv_render_error(&e);
    ck_assert_str_eq(s, "{\"error\":{\"message\":\"The model `x` does not exist.\",\"type\":\"invalid_request_error\","
                        "\"param\":\"model\",\"code\":\"model_not_found\"}}");
    free(s);
    srv_error_set(&e, 500, "server_error", NULL, NULL, "boom");
    s = srv_render_error(&e);
    ck_assert_str_eq(s, "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    free(s);
}
END_TEST

START_TEST(test_sse_framing) {
    srv_buf_t b = {0};
    srv_resp_ctx_t c = ctx(SRV_REQ_CHAT);
    ck_assert_int_eq(srv_sse_chunk(&b, &c, 0, 1, "", 0, NULL, 0, 0, 0, SCHED_FINISH_NONE), 0);
    ck_assert_int_eq(srv_sse_chunk(&b, &c, 0, 0, "line1\nline2", 11, NULL, 0, 0, 0, SCHED_FINISH_NONE), 0);
    ck_assert_int_eq(srv_sse_chunk(&b, &c, 0, 0, "", 0, NULL, 0, 0, 0, SCHED_FINISH_LENGTH), 0);
    srv_usage_t u = {3, 2, 1, 0, 0, 1.0, 1.0};
    ck_assert_int_eq(srv_sse_usage(&b, &c, &u), 0);
    ck_assert_int_eq(srv_sse_ping(&b), 0);
    ck_assert_int_eq(srv_sse_done(&b), 0);
    const char *want =
        "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"tiny\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,"
        "\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"tiny\","
        "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"line1\\nline2\"},\"logprobs\":null,"
        "\"finish_reason\":null}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"tiny\","
        "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n"
        "data: {\"id\":\"cmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"tiny\","
        "\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,"
        "\"prompt_tokens_details\":{\"cached_tokens\":1},\"sparse_attention\":{\"prefill\":\"dense\","
        "\"decode\":\"dense\",\"prefill_density\":1,\"decode_density\":1}}}\n\n"
        ": ping\n\n"
        "data: [DONE]\n\n";
    ck_assert_str_eq(b.data, want);
    /* Every event is exactly one line. */
    int events = 0;
    for (char *p = b.data; (p = strstr(p, "\n\n")); p += 2) events++;
    ck_assert_int_eq(events, 6);
    srv_buf_consume(&b, 6);
    ck_assert(!strncmp(b.data, "{\"id\"", 5));
    srv_buf_free(&b);
}
END_TEST

START_TEST(test_completion_logprobs) {
    srv_resp_ctx_t c = ctx(SRV_REQ_COMPLETION);
    sched_logprob_t lps[2] = {{0}};
    lps[0].token = 0;
    lps[0].logprob = NAN; /* echoed first prompt token */
    lps[1].token = 2;
    lps[1].logprob = -0.5f;
    lps[1].n_top = 2;
    lps[1].top_ids[0] = 2;
    lps[1].top_logprobs[0] = -0.5f;
    lps[1].top_ids[1] = 1;
    lps[1].top_logprobs[1] = -1.5f;
    srv_choice_t ch = {.index = 0,
                       .text = "A\xE2\x82",
                       .len = 3,
                       .lps = lps,
                       .n_lps = 2,
                       .want_lps = 1,
                       .finish = SCHED_FINISH_STOP,
                       .cum_logprob = -0.5};
    srv_usage_t u = {1, 1, 0, -1, -1, NAN, NAN};
    char *s = srv_render_response(&c, &ch, 1, &u);
    cJSON *o = cJSON_Parse(s);
    ck_assert_ptr_nonnull(o);
    cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "text")->valuestring, "A\xEF\xBF\xBD");
    ck_assert_str_eq(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "stop");
    cJSON *lp = cJSON_GetObjectItem(c0, "logprobs");
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), 0)));
    ck_assert(cJSON_IsNull(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0)));
    ck_assert_int_eq(cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "text_offset"), 1)->valueint, 1);
    cJSON *top1 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 1);
    ck_assert_int_eq(cJSON_GetArraySize(top1), 2);
    ck_assert_double_eq(cJSON_GetObjectItem(top1, " b")->valuedouble, -1.5);
    cJSON *usage = cJSON_GetObjectItem(o, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(usage, "total_tokens")->valueint, 2);
    ck_assert_str_eq(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion");
    cJSON_Delete(o);
    free(s);

    /* Chat logprobs carry the raw bytes of a half character. */
    c.kind = SRV_REQ_CHAT;
    s = srv_render_response(&c, &ch, 1, NULL);
    o = cJSON_Parse(s);
    c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *content = cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "logprobs"), "content");
    cJSON *bytes = cJSON_GetObjectItem(cJSON_GetArrayItem(content, 1), "bytes");
    ck_assert_int_eq(cJSON_GetArraySize(bytes), 2);
    ck_assert_int_eq(cJSON_GetArrayItem(bytes, 0)->valueint, 0xE2);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(c0, "message"), "role")->valuestring, "assistant");
    cJSON_Delete(o);
    free(s);
}
END_TEST

START_TEST(test_models_json) {
    char *s = srv_render_models("tiny", 5);
    ck_assert_str_eq(s, "{\"object\":\"list\",\"data\":[{\"id\":\"tiny\",\"object\":\"model\",\"created\":5,"
                        "\"owned_by\":\"lacuna\"}]}");
    free(s);
}
END_TEST

/* ---- metrics ---------------------------------------------------------------------------- */
START_TEST(test_metrics_text) {
    sched_metrics_t m;
    memset(&m, 0, sizeof(m));
    m.running = 2;
    m.waiting = 1;
    m.kv_blocks_used = 10;
    m.kv_blocks_total = 100;
    m.kv_usage = 0.1;
    m.kv_block_bytes = 4096;
    m.generation_tokens_total = 77;
    m.ttft.n_bounds = 2;
    m.ttft.bounds[0] = 0.1;
    m.ttft.bounds[1] = 1;
    m.ttft.counts[0] = 1;
    m.ttft.counts[1] = 2;
    m.ttft.counts[2] = 1;
    m.ttft.count = 4;
    m.ttft.sum = 3.5;
    srv_http_counts_t h;
    memset(&h, 0, sizeof(h));
    h.by_code[200] = 5;
    h.by_code[429] = 1;
    srv_buf_t b = {0};
    ck_assert_int_eq(srv_metrics_render(&b, "tiny", &m, &h), 0);
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:num_requests_running{model_name=\"tiny\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:num_requests_waiting{model_name=\"tiny\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:kv_blocks_used{model_name=\"tiny\"} 10\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:kv_cache_usage_perc{model_name=\"tiny\"} 0.1"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:kv_cache_used_bytes{model_name=\"tiny\"} 40960\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:generation_tokens_total{model_name=\"tiny\"} 77\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "# TYPE lacuna:time_to_first_token_seconds histogram\n"));
    ck_assert_ptr_nonnull(
        strstr(b.data, "lacuna:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"1\"} 3\n"));
    ck_assert_ptr_nonnull(
        strstr(b.data, "lacuna:time_to_first_token_seconds_bucket{model_name=\"tiny\",le=\"+Inf\"} 4\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:time_to_first_token_seconds_count{model_name=\"tiny\"} 4\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:attention_density{model_name=\"tiny\",phase=\"decode\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(b.data, "lacuna:http_requests_total{code=\"429\"} 1\n"));
    ck_assert_ptr_null(strstr(b.data, "code=\"404\""));
    for (const char *n = b.data; *n; n = strchr(n, '\n') + 1) /* no blank lines */
        ck_assert(*n != '\n');
    srv_buf_free(&b);
}
END_TEST

/* ---- auth -------------------------------------------------------------------------- */
START_TEST(test_auth) {
    ck_assert(srv_ct_equal("abc", 3, "abc", 3));
    ck_assert(!srv_ct_equal("abc", 3, "abd", 3));
    ck_assert(!srv_ct_equal("abc", 3, "abcd", 4));
    ck_assert(!srv_ct_equal("", 0, "a", 1));
    srv_auth_t a = {0};
    ck_assert(srv_auth_check(&a, NULL)); /* no keys: open */
    char **keys = malloc(2 * sizeof(char *));
    keys[0] = strdup("k1");
    keys[1] = strdup("secret-2");
    srv_auth_set(&a, keys, 2);
    ck_assert(!srv_auth_check(&a, NULL));
    ck_assert(!srv_auth_check(&a, "k1"));
    ck_assert(!srv_auth_check(&a, "Bearer k2"));
    ck_assert(!srv_auth_check(&a, "Bearer "));
    ck_assert(srv_auth_check(&a, "Bearer k1"));
    ck_assert(srv_auth_check(&a, "bearer secret-2"));
    srv_auth_fini(&a);
}
END_TEST

/* ---- config --------------------------------------------------------------------------- */
START_TEST(test_config) {
    char path[] = "/tmp/lacuna-conf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *ini = "[server]\nport = 9000\nmax_n = 4\napi_keys = a, b\nauth_metrics = yes\n"
                      "[model]\npath = /m.gguf\n[engine]\nkv_blocks = 64\n[attention]\ndecode = tidal\n"
                      "anchor_lookback = 512\nanchor_probe = 0.02\nflex_select = blocks\n";
    ck_assert_int_eq(write(fd, ini, strlen(ini)), (ssize_t)strlen(ini));
    close(fd);
    lc_config_t c;
    char err[256] = "";
    int action;
    char *argv1[] = {"lacunad",        "--config", path,    "--port=9100",
                     "--device",       "cuda:1",   "--set", "engine.max_running=8",
                     "--check-config", NULL};
    ck_assert_msg(lc_config_from_args(&c, 9, argv1, &action, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(action, 1);
    ck_assert_int_eq(c.port, 9100);
    ck_assert_int_eq(c.max_n, 4);
    ck_assert_int_eq(c.auth_metrics, 1);
    ck_assert_str_eq(c.model_path, "/m.gguf");
    ck_assert_str_eq(c.device, "cuda:1");
    ck_assert_int_eq(c.kv_blocks, 64);
    ck_assert_int_eq(c.max_running, 8);
    ck_assert_str_eq(c.decode_method, "tidal");
    ck_assert_int_eq(c.anchor_lookback, 512);
    ck_assert_double_eq(c.anchor_probe, 0.02);
    ck_assert_str_eq(c.flex_select, "blocks");
    ck_assert_int_eq(c.anchor_local, 2048);       /* default kept */
    ck_assert_int_eq(c.connection_timeout_s, 60); /* default kept */
    char **keys;
    int n;
    setenv("LACUNA_API_KEY", "envkey", 1);
    ck_assert_int_eq(lc_config_keys(&c, &keys, &n, err, sizeof(err)), 0);
    ck_assert_int_eq(n, 3);
    ck_assert_str_eq(keys[1], "b");
    ck_assert_str_eq(keys[2], "envkey");
    lc_config_keys_free(keys, n);
    unsetenv("LACUNA_API_KEY");
    /* --api-key replaces the file's list. */
    char *argv2[] = {"lacunad", "--config", path, "--api-key", "z", NULL};
    ck_assert_int_eq(lc_config_from_args(&c, 5, argv2, &action, err, sizeof(err)), 0);
    ck_assert_str_eq(c.api_keys, "z");
    /* Bad values are refused with the setting's name. */
    char *argv3[] = {"lacunad", "--port", "70000", NULL};
    ck_assert_int_eq(lc_config_from_args(&c, 3, argv3, &action, err, sizeof(err)), LC_EINVAL);
    ck_assert_str_eq(err, "[server] port: 70000 is out of range [0, 65535]");
    char *argv4[] = {"lacunad", "--device", "tpu", NULL};
    ck_assert_int_eq(lc_config_from_args(&c, 3, argv4, &action, err, sizeof(err)), LC_EINVAL);
    char *argv5[] = {"lacunad", "--set", "server.nope=1", NULL};
    ck_assert_int_eq(lc_config_from_args(&c, 3, argv5, &action, err, sizeof(err)), LC_ENOTFOUND);
    ck_assert_str_eq(err, "unknown setting [server] nope");
    /* parallel.devices: one CUDA index a rank */
    char *argv6[] = {"lacunad", "--set", "parallel.context=4", "--set", "parallel.devices=0,1,2,3", NULL};
    ck_assert_msg(lc_config_from_args(&c, 5, argv6, &action, err, sizeof(err)) == 0, "%s", err);
    ck_assert_str_eq(c.context_devices, "0,1,2,3");
    char *argv7[] = {"lacunad", "--set", "parallel.context=2", "--set", "parallel.devices=0,1,2", NULL};
    ck_assert_int_eq(lc_config_from_args(&c, 5, argv7, &action, err, sizeof(err)), LC_EINVAL);
    ck_assert_str_eq(err, "[parallel] devices lists 3 GPUs for context = 2 ranks");
    const char *bad[] = {"parallel.devices=0,x", "parallel.devices=0,", "parallel.devices=0,-1", "parallel.devices=0;1",
                         "parallel.devices=0,999"};
    for (int i = 0; i < 5; i++) {
        char *argv8[] = {"lacunad", "--set", "parallel.context=2", "--set", (char *)bad[i], NULL};
        ck_assert_int_eq(lc_config_from_args(&c, 5, argv8, &action, err, sizeof(err)), LC_EINVAL);
        ck_assert_msg(strstr(err, "[parallel] devices") != NULL, "%s: %s", bad[i], err);
    }
    /* The printed config round-trips through the loader. */
    lc_config_default(&c);
    c.port = 1234;
    FILE *f = fopen(path, "w");
    lc_config_print(&c, f);
    fclose(f);
    lc_config_t d;
    lc_config_default(&d);
    ck_assert_msg(lc_config_load_file(&d, path, err, sizeof(err)) != 0 || d.port == 1234, "%s", err);
    unlink(path);
}
END_TEST

START_TEST(test_shipped_conf) {
    const char *src = getenv("LACUNA_SRCDIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/conf/lacuna.conf", src ? src : ".");
    lc_config_t c;
    lc_config_default(&c);
    char err[256] = "";
    ck_assert_msg(lc_config_load_file(&c, path, err, sizeof(err)) == 0, "%s", err);
    ck_assert_msg(lc_config_validate(&c, err, sizeof(err)) == 0, "%s", err);
}
END_TEST

/* ---- the listener ---------------------------------------------------------------- */
/* A srv_t as lacunad has it while the model loads (no engine yet), listening
 * on a loopback port (0: any free one) of its own loop. */
static int listen_on(srv_t *s, uv_loop_t *loop, int port, int reuse, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    lc_config_default(&s->cfg);
    s->cfg.port = port;
    s->cfg.reuse_port = reuse;
    snprintf(s->cfg.api_keys, sizeof s->cfg.api_keys, "sk-unit");
    snprintf(s->cfg.model_path, sizeof s->cfg.model_path, "/models/tiny.gguf");
    snprintf(s->served_name, sizeof s->served_name, "tiny");
    char **keys;
    int n;
    ck_assert_int_eq(lc_config_keys(&s->cfg, &keys, &n, err, errlen), 0);
    srv_auth_set(&s->auth, keys, n);
    s->loop = loop;
    s->loading = 1;
    return srv_http_start(s, err, errlen);
}

/* Stops MHD and closes the handles; the closes complete on the next turn of
 * the loop (run it before reusing s). */
static void close_listener(srv_t *s) {
    srv_http_stop(s);
    uv_close((uv_handle_t *)&s->mhd_poll, NULL);
    uv_close((uv_handle_t *)&s->mhd_timer, NULL);
    uv_close((uv_handle_t *)&s->sweep, NULL);
    srv_auth_fini(&s->auth);
}

/* Sends one request (Connection: close) and turns the loop until the whole
 * response has arrived. Returns it, NUL-terminated (malloc'd). */
static char *roundtrip(srv_t *s, const char *request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->cfg.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(send(fd, request, strlen(request), 0), (ssize_t)strlen(request));
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(1, cap);
    double end = lc_now_s() + 10;
    for (;;) {
        uv_run(s->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(fd, out + len, cap - 1 - len, MSG_DONTWAIT);
        if (n == 0) break;
        if (n > 0) len += (size_t)n;
        ck_assert_msg(len < cap - 1 && lc_now_s() < end, "no complete response: %s", out);
        if (n < 0) usleep(1000);
    }
    close(fd);
    return out;
}

static char *get(srv_t *s, const char *method, const char *path, const char *key) {
    char req[512];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s%s%sContent-Length: 0\r\n\r\n",
             method, path, key ? "Authorization: Bearer " : "", key ? key : "", key ? "\r\n" : "");
    return roundtrip(s, req);
}

#define ASSERT_RESPONSE(r, status, ...)                                                                                \
    do {                                                                                                               \
        const char *want_[] = {__VA_ARGS__};                                                                           \
        ck_assert_msg(!strncmp(r, "HTTP/1.1 " status, 12), "want " status ", got: %s", r);                             \
        for (size_t i_ = 0; i_ < sizeof want_ / sizeof want_[0]; i_++)                                                 \
            ck_assert_msg(strstr(r, want_[i_]) != NULL, "'%s' missing in: %s", want_[i_], r);                          \
        free(r);                                                                                                       \
    } while (0)

/* Routing, auth, the loading state and the small endpoints, through the
 * real listener (MHD on a libuv loop). */
START_TEST(test_listener_routes) {
    lc_log_set_level(LC_LOG_ERROR);
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t s;
    char err[256] = "";
    ck_assert_msg(listen_on(&s, &loop, 0, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_gt(s.cfg.port, 0); // the port the kernel chose
    char *r = get(&s, "GET", "/health", NULL);
    ASSERT_RESPONSE(r, "503", "\"code\":\"model_loading\"", "x-request-id: ");
    r = get(&s, "GET", "/v1/models", NULL);
    ASSERT_RESPONSE(r, "401", "You didn't provide an API key.");
    r = get(&s, "GET", "/v1/models", "sk-wrong");
    ASSERT_RESPONSE(r, "401", "Incorrect API key provided.");
    r = get(&s, "GET", "/v1/models", "sk-unit");
    ASSERT_RESPONSE(r, "200", "\"id\":\"tiny\"");
    r = get(&s, "POST", "/v1/completions", "sk-unit");
    ASSERT_RESPONSE(r, "503", "\"code\":\"model_loading\"", "Retry-After: 1");
    r = get(&s, "POST", "/health", NULL);
    ASSERT_RESPONSE(r, "405", "Allow: GET", "method_not_allowed");
    r = get(&s, "GET", "/v2/nothing", "sk-unit");
    ASSERT_RESPONSE(r, "404", "Unknown route GET /v2/nothing.");
    r = get(&s, "GET", "/metrics", NULL);
    ASSERT_RESPONSE(r, "200", "lacuna:num_requests_running{model_name=\"tiny\"} 0");
    /* The listener counted what it answered. */
    ck_assert_uint_eq(s.http.by_code[401], 2);
    ck_assert_uint_eq(s.http.by_code[503], 2);
    close_listener(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* One daemon per port: a second listener on a port in use fails with a
 * clear message, unless both ask for SO_REUSEPORT. */
START_TEST(test_listener_port_in_use) {
    lc_log_set_level(LC_LOG_ERROR);
    uv_loop_t loop;
    uv_loop_init(&loop);
    srv_t a, b;
    char err[512] = "";
    ck_assert_msg(listen_on(&a, &loop, 0, 0, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(listen_on(&b, &loop, a.cfg.port, 0, err, sizeof err), LC_EBUSY);
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d: address already in use", a.cfg.port);
    ck_assert_msg(strstr(err, want) != NULL, "%s", err);
    srv_auth_fini(&b.auth);
    /* Asking for reuse on the second alone is not enough. */
    ck_assert_int_eq(listen_on(&b, &loop, a.cfg.port, 1, err, sizeof err), LC_EBUSY);
    srv_auth_fini(&b.auth);
    close_listener(&a);
    uv_run(&loop, UV_RUN_DEFAULT);

    ck_assert_msg(listen_on(&a, &loop, 0, 1, err, sizeof err) == 0, "%s", err);
    ck_assert_msg(listen_on(&b, &loop, a.cfg.port, 1, err, sizeof err) == 0, "%s", err);
    char *r = get(&b, "GET", "/health", NULL); // either daemon may answer: both are loading
    ASSERT_RESPONSE(r, "503", "model_loading");
    close_listener(&b);
    close_listener(&a);
    uv_run(&loop, UV_RUN_DEFAULT);
    ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

/* lacunad's command line up to the point where it would serve. */
START_TEST(test_daemon_configure) {
    srv_t *s = calloc(1, sizeof *s);
    char *version[] = {"lacunad", "--version", NULL};
    ck_assert_int_eq(srv_configure(s, 2, version), 0);
    memset(s, 0, sizeof *s);
    char *no_model[] = {"lacunad", "--port", "1", NULL};
    ck_assert_int_eq(srv_configure(s, 3, no_model), 2);
    memset(s, 0, sizeof *s);
    char *bad[] = {"lacunad", "--model", "m.gguf", "--port", "70000", NULL};
    ck_assert_int_eq(srv_configure(s, 5, bad), 2);
    memset(s, 0, sizeof *s);
    char *ok[] = {"lacunad", "--model", "m.gguf", "--reuse-port", "--api-key", "k1", NULL};
    ck_assert_int_eq(srv_configure(s, 6, ok), SRV_SERVE);
    ck_assert_int_eq(s->cfg.reuse_port, 1);
    ck_assert_int_eq(s->auth.n_keys, 1);
    ck_assert_int_eq(s->argc, 6);
    srv_auth_fini(&s->auth);
    free(s);
}
END_TEST

int main(void) {
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_parse_completion_full);
    tcase_add_test(tc, test_parse_prompt_forms);
    tcase_add_test(tc, test_parse_chat);
    tcase_add_loop_test(tc, test_parse_bad_table, 0, (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, test_parse_tokenize);
    tcase_add_test(tc, test_error_json);
    tcase_add_test(tc, test_sse_framing);
    tcase_add_test(tc, test_completion_logprobs);
    tcase_add_test(tc, test_models_json);
    tcase_add_test(tc, test_metrics_text);
    tcase_add_test(tc, test_auth);
    tcase_add_test(tc, test_config);
    tcase_add_test(tc, test_shipped_conf);
    suite_add_tcase(s, tc);
    TCase *th = tcase_create("http");
    tcase_add_test(th, test_listener_routes);
    tcase_add_test(th, test_listener_port_in_use);
    tcase_add_test(th, test_daemon_configure);
    suite_add_tcase(s, th);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
