/* Request validation for the OpenAI endpoints. Each field is read with a
 * typed getter that records the exact error (status 400, param name) on the
 * first problem, so a caller gets one precise message per bad request. A JSON
 * null always means "the default", as OpenAI's own server treats it. */
#include "server/parse.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

void srv_error_set(srv_error_t *e, int status, const char *type, const char *param, const char *code, const char *fmt,
                   ...) {
    if (!e) return;
    e->status = status;
    snprintf(e->type, sizeof(e->type), "%s", type ? type : "invalid_request_error");
    snprintf(e->param, sizeof(e->param), "%s", param ? param : "");
    snprintf(e->code, sizeof(e->code), "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

static void sampling_default(sampler_params_t *p) {
    memset(p, 0, sizeof(*p));
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->top_k = 0;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
}

/* ---- typed getters ------------------------------------------------------------ */
/* Each returns 1 when the field was present (not null) and valid, 0 when absent
 * or null, and -1 after filling err. */
static int bad(srv_error_t *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(srv_error_t *err, const char *param, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    srv_error_set(err, 400, "invalid_request_error", param, NULL, "%s", msg);
    return -1;
}
#define BAD(param, ...) bad(err, param, __VA_ARGS__)

static const cJSON *field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

static int is_integral(const cJSON *v) {
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && floor(v->valuedouble) == v->valuedouble;
}

static int get_num(const cJSON *o, const char *k, double lo, double hi, double *out, srv_error_t *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsNumber(v)) return BAD(k, "Invalid type for '%s': expected a number.", k);
    if (!(v->valuedouble >= lo && v->valuedouble <= hi))
        return BAD(k, "Invalid value for '%s': must be between %g and %g.", k, lo, hi);
    *out = v->valuedouble;
    return 1;
}

static int get_float(const cJSON *o, const char *k, double lo, double hi, float *out, srv_error_t *err) {
    double d = 0;
    int rc = get_num(o, k, lo, hi, &d, err);
    if (rc == 1) *out = (float)d;
    return rc;
}

static int get_int(const cJSON *o, const char *k, long long lo, long long hi, long long *out, srv_error_t *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!is_integral(v)) return BAD(k, "Invalid type for '%s': expected an integer.", k);
    /* (double)INT64_MAX rounds up to 2^63, which does not fit: converting
     * it would be undefined, so the range is checked as [-2^63, 2^63) first. */
    double d = v->valuedouble;
    if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0) || (long long)d < lo || (long long)d > hi)
        return BAD(k, "Invalid value for '%s': must be between %lld and %lld.", k, lo, hi);
    *out = (long long)d;
    return 1;
}

static int get_int32(const cJSON *o, const char *k, long long lo, long long hi, int *out, srv_error_t *err) {
    long long v;
    int rc = get_int(o, k, lo, hi, &v, err);
    if (rc == 1) *out = (int)v;
    return rc;
}

static int get_bool(const cJSON *o, const char *k, int *out, srv_error_t *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsBool(v)) return BAD(k, "Invalid type for '%s': expected a boolean.", k);
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 1;
}

static int get_str(const cJSON *o, const char *k, char **out, srv_error_t *err) {
    const cJSON *v = field(o, k);
    if (!v) return 0;
    if (!cJSON_IsString(v)) return BAD(k, "Invalid type for '%s': expected a string.", k);
    *out = strdup(v->valuestring);
    if (!*out) return BAD(k, "out of memory");
    return 1;
}

static int ids_from_array(const cJSON *a, const char *param, int32_t **out, int *n, srv_error_t *err) {
    int cnt = cJSON_GetArraySize(a);
    *out = malloc(sizeof(int32_t) * (size_t)(cnt ? cnt : 1));
    *n = 0;
    if (!*out) return BAD(param, "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, a) {
        if (!is_integral(t) || t->valuedouble < 0 || t->valuedouble > INT32_MAX)
            return BAD(param, "Invalid value for '%s': token ids must be non-negative integers.", param);
        (*out)[(*n)++] = (int32_t)t->valuedouble;
    }
    return 1;
}

/* ---- shared sampling fields ------------------------------------------------------------ */
static int parse_stop(const cJSON *o, srv_request_t *r, srv_error_t *err) {
    const cJSON *v = field(o, "stop");
    if (!v) return 0;
    if (cJSON_IsString(v)) {
        if (v->valuestring[0]) r->stop[r->n_stop++] = strdup(v->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(v)) return BAD("stop", "Invalid type for 'stop': expected a string or an array of strings.");
    if (cJSON_GetArraySize(v) > SCHED_MAX_STOP)
        return BAD("stop", "Invalid value for 'stop': at most %d stop sequences are allowed.", SCHED_MAX_STOP);
    const cJSON *s;
    cJSON_ArrayForEach(s, v) {
        if (!cJSON_IsString(s))
            return BAD("stop", "Invalid type for 'stop': expected a string or an array of strings.");
        if (s->valuestring[0]) r->stop[r->n_stop++] = strdup(s->valuestring);
    }
    return 0;
}

static int parse_logit_bias(const cJSON *o, srv_request_t *r, srv_error_t *err) {
    const cJSON *v = field(o, "logit_bias");
    if (!v) return 0;
    if (!cJSON_IsObject(v)) return BAD("logit_bias", "Invalid type for 'logit_bias': expected an object.");
    int cnt = cJSON_GetArraySize(v);
    if (cnt == 0) return 0;
    r->logit_bias = calloc((size_t)cnt, sizeof(sampler_bias_t));
    if (!r->logit_bias) return BAD("logit_bias", "out of memory");
    const cJSON *e;
    int i = 0;
    cJSON_ArrayForEach(e, v) {
        char *end = NULL;
        long long id = strtoll(e->string, &end, 10);
        if (!e->string[0] || *end || id < 0 || id > INT32_MAX)
            return BAD("logit_bias", "Invalid key in 'logit_bias': '%.64s' is not a token id.", e->string);
        if (!cJSON_IsNumber(e)) return BAD("logit_bias", "Invalid type for 'logit_bias' values: expected a number.");
        if (!(e->valuedouble >= -100 && e->valuedouble <= 100))
            return BAD("logit_bias", "Invalid value for 'logit_bias': biases must be between -100 and 100.");
        r->logit_bias[i].token = (int32_t)id;
        r->logit_bias[i].bias = (float)e->valuedouble;
        i++;
    }
    r->sampling.logit_bias = r->logit_bias;
    r->sampling.n_logit_bias = i;
    return 0;
}

static int method_index(const char *s, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(s, names[i])) return i;
    return -2;
}

static int parse_sparse(const cJSON *o, sched_attn_spec_t *a, srv_error_t *err) {
    /* Order matches attn_prefill_method_t / attn_decode_method_t. */
    static const char *const prefill[] = {"dense", "flexprefill", "anchor", "streaming"};
    static const char *const decode[] = {"dense", "quest", "tidal", "streaming"};
    static const char *const known[] = {"prefill", "decode",     "gamma",         "tau",
                                        "theta",   "min_budget", "decode_budget", "flex_select"};
    sched_attn_spec_default(a);
    const cJSON *v = field(o, "sparse_attention");
    if (!v) return 0;
    if (!cJSON_IsObject(v)) return BAD("sparse_attention", "Invalid type for 'sparse_attention': expected an object.");
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        int ok = 0;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) ok |= !strcmp(e->string, known[i]);
        if (!ok) return BAD("sparse_attention", "Unknown field 'sparse_attention.%.64s'.", e->string);
    }
    const cJSON *m = field(v, "prefill");
    if (m) {
        int idx = cJSON_IsString(m)
                      ? (strcmp(m->valuestring, "auto") ? method_index(m->valuestring, prefill, 4) : SCHED_METHOD_AUTO)
                      : -2;
        if (idx == -2)
            return BAD("sparse_attention.prefill",
                       "Invalid value for 'sparse_attention.prefill': expected one of auto, dense, flexprefill, "
                       "anchor, streaming.");
        a->prefill = idx;
    }
    m = field(v, "decode");
    if (m) {
        int idx = cJSON_IsString(m)
                      ? (strcmp(m->valuestring, "auto") ? method_index(m->valuestring, decode, 4) : SCHED_METHOD_AUTO)
                      : -2;
        if (idx == -2)
            return BAD("sparse_attention.decode",
                       "Invalid value for 'sparse_attention.decode': expected one of auto, dense, quest, tidal, "
                       "streaming.");
        a->decode = idx;
    }
    m = field(v, "flex_select");
    if (m) {
        attn_flex_select_t fs;
        if (!cJSON_IsString(m) || attn_flex_select_parse(m->valuestring, &fs))
            return BAD("sparse_attention.flex_select",
                       "Invalid value for 'sparse_attention.flex_select': expected one of tokens, blocks.");
        a->flex_select = (int)fs;
    }
    srv_error_t sub;
    if (get_float(v, "gamma", 1e-6, 1, &a->gamma, &sub) < 0 || get_float(v, "tau", 0, 1, &a->tau, &sub) < 0 ||
        get_float(v, "theta", 0, 1000, &a->theta, &sub) < 0 ||
        get_int32(v, "min_budget", 1, 1 << 30, &a->min_budget, &sub) < 0 ||
        get_int32(v, "decode_budget", 1, 1 << 30, &a->decode_budget, &sub) < 0) {
        *err = sub;
        snprintf(err->param, sizeof(err->param), "sparse_attention.%.40s", sub.param);
        /* Name the nested field in the message too. */
        char msg[512];
        const char *q = strstr(sub.message, sub.param);
        if (q) {
            snprintf(msg, sizeof(msg), "%.*ssparse_attention.%s", (int)(q - sub.message), sub.message, q);
            snprintf(err->message, sizeof(err->message), "%s", msg);
        }
        return -1;
    }
    return 0;
}

/* Fields both endpoints share. */
static int parse_common(const cJSON *o, const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "model");
    if (!m || cJSON_IsNull(m)) return BAD("model", "Missing required parameter: 'model'.");
    if (srv__check_fields(o, r->kind, err) < 0) return -1;
    if (get_str(o, "model", &r->model, err) < 0) return -1;
    int max_n = lim && lim->max_n > 0 ? lim->max_n : 128;
    sampler_params_t *s = &r->sampling;
    long long seed;
    int rc;
    if (get_float(o, "temperature", 0, 2, &s->temperature, err) < 0) return -1;
    if (get_float(o, "top_p", 0, 1, &s->top_p, err) < 0) return -1;
    if (get_int32(o, "top_k", -1, INT32_MAX, &s->top_k, err) < 0) return -1;
    if (s->top_k < 0) s->top_k = 0;
    if (get_float(o, "min_p", 0, 1, &s->min_p, err) < 0) return -1;
    if (get_float(o, "presence_penalty", -2, 2, &s->presence_penalty, err) < 0) return -1;
    if (get_float(o, "frequency_penalty", -2, 2, &s->frequency_penalty, err) < 0) return -1;
    if (get_float(o, "repetition_penalty", 0, 10, &s->repetition_penalty, err) < 0) return -1;
    if (s->repetition_penalty <= 0)
        return BAD("repetition_penalty", "Invalid value for 'repetition_penalty': must be greater than 0.");
    if ((rc = get_int(o, "seed", INT64_MIN, INT64_MAX, &seed, err)) < 0) return -1;
    if (rc == 1) {
        r->has_seed = 1;
        s->seed = (uint64_t)seed;
    }
    if (get_int32(o, "n", 1, max_n, &r->n, err) < 0) return -1;
    if (get_int32(o, "min_tokens", 0, INT32_MAX, &r->min_tokens, err) < 0) return -1;
    if (get_bool(o, "ignore_eos", &r->ignore_eos, err) < 0) return -1;
    if (get_bool(o, "stream", &r->stream, err) < 0) return -1;
    const cJSON *so = field(o, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) return BAD("stream_options", "Invalid type for 'stream_options': expected an object.");
        if (get_bool(so, "include_usage", &r->include_usage, err) < 0) {
            snprintf(err->param, sizeof(err->param), "stream_options.include_usage");
            return -1;
        }
    }
    if (parse_stop(o, r, err) < 0) return -1;
    const cJSON *st = field(o, "stop_token_ids");
    if (st) {
        if (!cJSON_IsArray(st))
            return BAD("stop_token_ids", "Invalid type for 'stop_token_ids': expected an array of integers.");
        if (ids_from_array(st, "stop_token_ids", &r->stop_token_ids, &r->n_stop_token_ids, err) < 0) return -1;
    }
    if (parse_logit_bias(o, r, err) < 0) return -1;
    if (parse_sparse(o, &r->attn, err) < 0) return -1;
    if (get_str(o, "user", &r->user, err) < 0) return -1;
    return 0;
}

static cJSON *parse_body(const char *body, size_t len, srv_error_t *err) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        srv_error_set(err, 400, "invalid_request_error", NULL, NULL,
                      "We could not parse the JSON body of your request.");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        srv_error_set(err, 400, "invalid_request_error", NULL, NULL, "The request body must be a JSON object.");
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static void request_init(srv_request_t *r, srv_req_kind_t kind) {
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->max_tokens = -1;
    r->n = 1;
    r->best_of = 0;
    r->logprobs = -1;
    r->add_special_tokens = -1;
    sampling_default(&r->sampling);
    sched_attn_spec_default(&r->attn);
}

void srv_request_free(srv_request_t *r) {
    if (!r) return;
    for (int i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (int i = 0; i < r->n_messages; i++) srv__free_message(&r->messages[i]);
    free(r->messages);
    srv__free_format(r);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop_token_ids);
    free(r->logit_bias);
    free(r->model);
    free(r->suffix);
    free(r->user);
    memset(r, 0, sizeof(*r));
}

/* ---- /v1/completions ------------------------------------------------------------------- */
static int parse_prompt(const cJSON *o, const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (!p || cJSON_IsNull(p)) return BAD("prompt", "Missing required parameter: 'prompt'.");
    const char *type_msg =
        "Invalid type for 'prompt': expected a string, an array of strings, an array of token ids or an array of "
        "token-id arrays.";
    int max_prompts = lim && lim->max_prompts > 0 ? lim->max_prompts : 1024;
    if (cJSON_IsString(p)) {
        r->prompts = calloc(1, sizeof(srv_prompt_t));
        if (!r->prompts) return BAD("prompt", "out of memory");
        r->n_prompts = 1;
        r->prompts[0].text = strdup(p->valuestring);
        r->prompts[0].text_len = strlen(p->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(p)) return BAD("prompt", "%s", type_msg);
    int cnt = cJSON_GetArraySize(p);
    if (cnt == 0) return BAD("prompt", "Invalid value for 'prompt': must not be empty.");
    const cJSON *first = p->child;
    if (cJSON_IsNumber(first)) { /* one prompt of token ids */
        r->prompts = calloc(1, sizeof(srv_prompt_t));
        if (!r->prompts) return BAD("prompt", "out of memory");
        r->n_prompts = 1;
        const cJSON *t;
        cJSON_ArrayForEach(t, p) if (!cJSON_IsNumber(t)) return BAD("prompt", "%s", type_msg);
        return ids_from_array(p, "prompt", &r->prompts[0].ids, &r->prompts[0].n_ids, err) < 0 ? -1 : 0;
    }
    if (cnt > max_prompts)
        return BAD("prompt", "Invalid value for 'prompt': at most %d prompts per request.", max_prompts);
    r->prompts = calloc((size_t)cnt, sizeof(srv_prompt_t));
    if (!r->prompts) return BAD("prompt", "out of memory");
    int want_str = cJSON_IsString(first);
    const cJSON *e;
    cJSON_ArrayForEach(e, p) {
        srv_prompt_t *pr = &r->prompts[r->n_prompts++];
        if (want_str && cJSON_IsString(e)) {
            pr->text = strdup(e->valuestring);
            pr->text_len = strlen(e->valuestring);
        } else if (!want_str && cJSON_IsArray(e)) {
            const cJSON *t;
            cJSON_ArrayForEach(t, e) if (!cJSON_IsNumber(t)) return BAD("prompt", "%s", type_msg);
            if (cJSON_GetArraySize(e) == 0) return BAD("prompt", "Invalid value for 'prompt': must not be empty.");
            if (ids_from_array(e, "prompt", &pr->ids, &pr->n_ids, err) < 0) return -1;
        } else {
            return BAD("prompt", "%s", type_msg);
        }
    }
    return 0;
}

static int check_counts(const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    int max_n = lim && lim->max_n > 0 ? lim->max_n : 128;
    if (r->best_of == 0) r->best_of = r->n;
    if (r->best_of < r->n) return BAD("best_of", "Invalid value for 'best_of': must be greater than or equal to 'n'.");
    if (r->best_of > max_n) return BAD("best_of", "Invalid value for 'best_of': must be between 1 and %d.", max_n);
    if (r->stream && r->best_of > r->n) return BAD("best_of", "'best_of' cannot be used with 'stream'.");
    if (r->max_tokens >= 0 && r->min_tokens > r->max_tokens)
        return BAD("min_tokens", "Invalid value for 'min_tokens': must not exceed 'max_tokens'.");
    return 0;
}

int srv_parse_completion(const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    request_init(r, SRV_REQ_COMPLETION);
    cJSON *o = parse_body(body, len, err);
    if (!o) return LC_EINVAL;
    int rc = -1;
    if (parse_common(o, lim, r, err) < 0) goto done;
    if (srv__parse_format(o, body, len, lim, r, err) < 0) goto done;
    if (parse_prompt(o, lim, r, err) < 0) goto done;
    if (r->model == NULL) goto done;
    r->max_tokens = 16;
    if (get_int32(o, "max_tokens", 0, INT32_MAX, &r->max_tokens, err) < 0) goto done;
    if (get_int32(o, "best_of", 1, INT32_MAX, &r->best_of, err) < 0) goto done;
    if (get_int32(o, "logprobs", 0, 5, &r->logprobs, err) < 0) goto done;
    if (get_bool(o, "echo", &r->echo, err) < 0) goto done;
    if (get_str(o, "suffix", &r->suffix, err) < 0) goto done;
    if (r->suffix && r->suffix[0]) {
        BAD("suffix", "'suffix' is not supported by this server.");
        goto done;
    }
    if (check_counts(lim, r, err) < 0) goto done;
    rc = 0;
done:
    cJSON_Delete(o);
    return rc ? LC_EINVAL : 0;
}

/* ---- /v1/chat/completions ------------------------------------------------------------------ */
static int parse_content(const cJSON *c, int i, char **out, srv_error_t *err) {
    char param[48];
    snprintf(param, sizeof(param), "messages[%d].content", i);
    if (!c || cJSON_IsNull(c)) {
        *out = strdup("");
        return 0;
    }
    if (cJSON_IsString(c)) {
        *out = strdup(c->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(c)) return BAD(param, "Invalid type for '%s': expected a string or an array of parts.", param);
    size_t total = 1;
    const cJSON *part;
    cJSON_ArrayForEach(part, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsObject(part) || !cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(tx))
            return BAD(param, "Invalid value for '%s': only text parts are supported.", param);
        total += strlen(tx->valuestring);
    }
    *out = malloc(total);
    if (!*out) return BAD(param, "out of memory");
    (*out)[0] = 0;
    cJSON_ArrayForEach(part, c) strcat(*out, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
    return 0;
}

static int parse_messages(const cJSON *o, srv_message_t **msgs, int *n, srv_error_t *err) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, "messages");
    if (!m || cJSON_IsNull(m)) return BAD("messages", "Missing required parameter: 'messages'.");
    if (!cJSON_IsArray(m)) return BAD("messages", "Invalid type for 'messages': expected an array.");
    int cnt = cJSON_GetArraySize(m);
    if (cnt == 0) return BAD("messages", "Invalid value for 'messages': must contain at least one message.");
    *msgs = calloc((size_t)cnt, sizeof(srv_message_t));
    if (!*msgs) return BAD("messages", "out of memory");
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool"};
    const cJSON *e;
    int i = 0;
    cJSON_ArrayForEach(e, m) {
        char param[48];
        snprintf(param, sizeof(param), "messages[%d]", i);
        if (!cJSON_IsObject(e)) return BAD(param, "Invalid type for '%s': expected an object.", param);
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        snprintf(param, sizeof(param), "messages[%d].role", i);
        if (!role) return BAD(param, "Missing required parameter: '%s'.", param);
        if (!cJSON_IsString(role) || method_index(role->valuestring, roles, 5) < 0)
            return BAD(param, "Invalid value for '%s': expected one of system, developer, user, assistant, tool.",
                       param);
        (*msgs)[i].role = strdup(role->valuestring);
        (*n)++;
        if (parse_content(cJSON_GetObjectItemCaseSensitive(e, "content"), i, &(*msgs)[i].content, err) < 0) return -1;
        if (srv__parse_msg_tool_calls(e, i, &(*msgs)[i], err) < 0) return -1;
        i++;
    }
    return 0;
}

int srv_parse_chat(const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    request_init(r, SRV_REQ_CHAT);
    cJSON *o = parse_body(body, len, err);
    if (!o) return LC_EINVAL;
    int rc = -1, lp = 0, top = -1, got;
    if (parse_common(o, lim, r, err) < 0) goto done;
    if (parse_messages(o, &r->messages, &r->n_messages, err) < 0) goto done;
    if (srv__parse_format(o, body, len, lim, r, err) < 0) goto done;
    if ((got = get_int32(o, "max_completion_tokens", 0, INT32_MAX, &r->max_tokens, err)) < 0) goto done;
    if (!got && get_int32(o, "max_tokens", 0, INT32_MAX, &r->max_tokens, err) < 0) goto done;
    if (get_bool(o, "logprobs", &lp, err) < 0) goto done;
    if ((got = get_int32(o, "top_logprobs", 0, 20, &top, err)) < 0) goto done;
    if (got && !lp) {
        BAD("top_logprobs", "Invalid value for 'top_logprobs': requires 'logprobs' to be true.");
        goto done;
    }
    r->logprobs = lp ? (top < 0 ? 0 : top) : -1;
    if (get_bool(o, "add_special_tokens", &r->add_special_tokens, err) < 0) goto done;
    if (check_counts(lim, r, err) < 0) goto done;
    rc = 0;
done:
    cJSON_Delete(o);
    return rc ? LC_EINVAL : 0;
}

/* ---- /tokenize and /detokenize ---------------------------------------------------------------- */
int srv_parse_tokenize(const char *body, size_t len, srv_tokenize_req_t *r, srv_error_t *err) {
    memset(r, 0, sizeof(*r));
    r->add_special_tokens = 1;
    cJSON *o = parse_body(body, len, err);
    if (!o) return LC_EINVAL;
    int rc = -1;
    if (get_str(o, "model", &r->model, err) < 0) goto done;
    if (get_bool(o, "add_special_tokens", &r->add_special_tokens, err) < 0) goto done;
    if (field(o, "messages")) {
        if (parse_messages(o, &r->messages, &r->n_messages, err) < 0) goto done;
    } else {
        const cJSON *p = field(o, "prompt");
        if (!p) {
            BAD("prompt", "Missing required parameter: 'prompt'.");
            goto done;
        }
        if (get_str(o, "prompt", &r->prompt, err) < 0) goto done;
    }
    rc = 0;
done:
    cJSON_Delete(o);
    return rc ? LC_EINVAL : 0;
}

void srv_tokenize_req_free(srv_tokenize_req_t *r) {
    free(r->prompt);
    for (int i = 0; i < r->n_messages; i++) srv__free_message(&r->messages[i]);
    free(r->messages);
    free(r->model);
    memset(r, 0, sizeof(*r));
}

int srv_parse_detokenize(const char *body, size_t len, int32_t **ids, int *n_ids, srv_error_t *err) {
    *ids = NULL;
    *n_ids = 0;
    cJSON *o = parse_body(body, len, err);
    if (!o) return LC_EINVAL;
    int rc = -1;
    const cJSON *t = field(o, "tokens");
    if (!t) {
        BAD("tokens", "Missing required parameter: 'tokens'.");
    } else if (!cJSON_IsArray(t)) {
        BAD("tokens", "Invalid type for 'tokens': expected an array of integers.");
    } else if (ids_from_array(t, "tokens", ids, n_ids, err) == 1) {
        rc = 0;
    }
    cJSON_Delete(o);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
    }
    return rc ? LC_EINVAL : 0;
}
