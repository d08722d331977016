/* Structured output at the edge: response_format (text, json_object,
 * json_schema) and tools / tool_choice / parallel_tool_calls become native
 * fields and one compiled grammar, so that nothing past this file sees the
 * request's JSON. Also the table of OpenAI fields we do not implement: each
 * is refused with a 400 that names it, or listed as harmless and ignored. */
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "model/chat_json.h"
#include "model/json_schema.h"
#include "server/parse.h"

#define SRV_MAX_TOOLS 128

static int bad(srv_error_t *err, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(srv_error_t *err, const char *param, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_error_set(err, 400, "invalid_request_error", param, NULL, "%s", msg);
    return -1;
}

static const cJSON *field(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return (v && !cJSON_IsNull(v)) ? v : NULL;
}

/* ---- fields we do not implement ------------------------------------------------------ */
enum { F_CHAT = 1, F_COMPLETION = 2, F_BOTH = 3 };

static const struct {
    const char *name;
    int where;
    const char *why;
} refused[] = {
    {"audio", F_CHAT, "audio output is not supported"},
    {"prediction", F_CHAT, "predicted outputs are not supported"},
    {"functions", F_CHAT, "the deprecated 'functions' is not supported; use 'tools'"},
    {"function_call", F_CHAT, "the deprecated 'function_call' is not supported; use 'tool_choice'"},
    {"reasoning_effort", F_CHAT, "this model does not reason in a separate phase"},
    {"verbosity", F_CHAT, "'verbosity' is not supported"},
    {"web_search_options", F_CHAT, "web search is not supported"},
    {"best_of", F_CHAT, "'best_of' is a /v1/completions field"},
    {"echo", F_CHAT, "'echo' is a /v1/completions field"},
    {"suffix", F_CHAT, "'suffix' is a /v1/completions field"},
    {"max_completion_tokens", F_COMPLETION, "use 'max_tokens' on /v1/completions"},
    {"top_logprobs", F_COMPLETION, "use 'logprobs' (an integer) on /v1/completions"},
    {"tools", F_COMPLETION, "tools need a chat template; use /v1/chat/completions"},
    {"tool_choice", F_COMPLETION, "tools need a chat template; use /v1/chat/completions"},
    {"parallel_tool_calls", F_COMPLETION, "tools need a chat template; use /v1/chat/completions"},
    {"guided_json", F_BOTH, "use 'response_format' with a json_schema"},
    {"guided_regex", F_BOTH, "regular-expression constraints are not supported"},
    {"guided_choice", F_BOTH, "use 'response_format' with a json_schema enum"},
    {"guided_grammar", F_BOTH, "grammar constraints are not supported; use 'response_format'"},
    {"guided_decoding_backend", F_BOTH, "there is one decoding backend; use 'response_format'"},
    {"guided_whitespace_pattern", F_BOTH, "whitespace patterns are not supported"},
    {"structured_outputs", F_BOTH, "use 'response_format'"},
};

int srv__check_fields(const cJSON *o, srv_req_kind_t kind, srv_error_t *err) {
    int where = kind == SRV_REQ_CHAT ? F_CHAT : F_COMPLETION;
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if ((refused[i].where & where) && field(o, refused[i].name))
            return bad(err, refused[i].name, "Unsupported parameter: '%s' (%s).", refused[i].name, refused[i].why);
    /* harmless at their default values, refused otherwise */
    const cJSON *v;
    if ((v = field(o, "store")) && !cJSON_IsFalse(v))
        return bad(err, "store",
                   "Unsupported parameter: 'store' (completions are never stored; only false is accepted).");
    if ((v = field(o, "service_tier")) &&
        !(cJSON_IsString(v) && (!strcmp(v->valuestring, "auto") || !strcmp(v->valuestring, "default"))))
        return bad(err, "service_tier",
                   "Unsupported value for 'service_tier': only 'auto' and 'default' are accepted.");
    if ((v = field(o, "modalities")) && kind == SRV_REQ_CHAT) {
        const cJSON *e;
        int ok = cJSON_IsArray(v);
        cJSON_ArrayForEach(e, v) ok &= cJSON_IsString(e) && !strcmp(e->valuestring, "text");
        if (!ok) return bad(err, "modalities", "Unsupported value for 'modalities': only [\"text\"] is supported.");
    }
    return 0;
}

/* ---- response_format ----------------------------------------------------------------- */
static int schema_error(srv_error_t *err, const char *param, int st, const char *msg) {
    if (st == LC_ENOMEM) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    return bad(err, param, "Invalid schema for '%s': %s.", param, msg);
}

static int parse_response_format(const cJSON *o, srv_request_t *r, srv_error_t *err) {
    const cJSON *rf = field(o, "response_format");
    if (!rf) return 0;
    if (!cJSON_IsObject(rf))
        return bad(err, "response_format", "Invalid type for 'response_format': expected an object.");
    const cJSON *t = field(rf, "type"), *e;
    if (!t) return bad(err, "response_format.type", "Missing required parameter: 'response_format.type'.");
    if (!cJSON_IsString(t) || (strcmp(t->valuestring, "text") && strcmp(t->valuestring, "json_object") &&
                               strcmp(t->valuestring, "json_schema")))
        return bad(err, "response_format.type",
                   "Invalid value for 'response_format.type': expected one of text, json_object, json_schema.");
    const char *type = t->valuestring;
    cJSON_ArrayForEach(e, rf) {
        if (strcmp(e->string, "type") && !(strcmp(type, "json_schema") == 0 && !strcmp(e->string, "json_schema")))
            return bad(err, "response_format", "Unknown parameter: 'response_format.%.64s'.", e->string);
    }
    char msg[512] = "";
    int st = 0;
    if (!strcmp(type, "text")) return 0;
    if (!strcmp(type, "json_object")) {
        r->format = SRV_FMT_JSON_OBJECT;
        if (!(r->grammar = js_compile_any_object(&st, msg, sizeof msg)))
            return schema_error(err, "response_format", st, msg);
        return 0;
    }
    const cJSON *js = field(rf, "json_schema");
    if (!js)
        return bad(err, "response_format.json_schema", "Missing required parameter: 'response_format.json_schema'.");
    if (!cJSON_IsObject(js))
        return bad(err, "response_format.json_schema",
                   "Invalid type for 'response_format.json_schema': expected an object.");
    cJSON_ArrayForEach(e, js) {
        if (strcmp(e->string, "name") && strcmp(e->string, "description") && strcmp(e->string, "schema") &&
            strcmp(e->string, "strict"))
            return bad(err, "response_format.json_schema", "Unknown parameter: 'response_format.json_schema.%.64s'.",
                       e->string);
    }
    const cJSON *name = field(js, "name"), *desc = field(js, "description"), *strict = field(js, "strict");
    if (!name)
        return bad(err, "response_format.json_schema.name",
                   "Missing required parameter: 'response_format.json_schema.name'.");
    size_t nl = cJSON_IsString(name) ? strlen(name->valuestring) : 0;
    int name_ok = nl >= 1 && nl <= 64;
    for (size_t i = 0; name_ok && i < nl; i++) {
        char c = name->valuestring[i];
        name_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    }
    if (!name_ok)
        return bad(
            err, "response_format.json_schema.name",
            "Invalid value for 'response_format.json_schema.name': 1 to 64 characters of a-z, A-Z, 0-9, _ and -.");
    if (desc && !cJSON_IsString(desc))
        return bad(err, "response_format.json_schema.description",
                   "Invalid type for 'response_format.json_schema.description': expected a string.");
    if (strict && !cJSON_IsBool(strict))
        return bad(err, "response_format.json_schema.strict",
                   "Invalid type for 'response_format.json_schema.strict': expected a boolean.");
    const cJSON *schema = field(js, "schema");
    r->format = SRV_FMT_JSON_SCHEMA;
    cJSON *any = NULL;
    if (!schema) schema = any = cJSON_CreateTrue(); // no schema: any JSON value
    r->grammar = js_compile_schema(schema, "", &st, msg, sizeof msg);
    cJSON_Delete(any);
    if (!r->grammar) return schema_error(err, "response_format.json_schema.schema", st, msg);
    return 0;
}

/* ---- tools --------------------------------------------------------------------------- */
static int name_ok(const char *s) {
    size_t n = strlen(s);
    if (n < 1 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* The forced-call grammar: call_prefix NAME call_middle ARGS call_suffix,
 * one alternative per allowed tool. */
static int compile_forced(const cJSON *tools, const srv_limits_t *lim, srv_request_t *r, srv_error_t *err) {
    const chat_tool_syntax_t *sy = lim->tool_syntax;
    gram_builder_t *b = gram_builder_create(NULL);
    js_ctx_t *c = b ? js_ctx_create(b) : NULL;
    char msg[512] = "", param[64] = "tools";
    int rc = -1, st = LC_ENOMEM, root = c ? gram_rule(b) : -1;
    if (root < 0) goto oom;
    for (int i = 0; i < r->n_tools; i++) {
        if (r->tool_choice == SRV_TOOLS_NAMED && i != r->tool_named) continue;
        const cJSON *fn = field(cJSON_GetArrayItem(tools, i), "function");
        const cJSON *params = field(fn, "parameters");
        cJSON *empty = NULL;
        if (!params)
            params = empty = cJSON_Parse("{\"type\":\"object\",\"properties\":{},\"additionalProperties\":false}");
        snprintf(param, sizeof param, "tools[%d].function.parameters", i);
        int args = js_schema_rule(c, params, param, msg, sizeof msg);
        cJSON_Delete(empty);
        if (args < 0) {
            st = args;
            goto schema;
        }
        if (gram_alt(b, root) || gram_add_bytes(b, root, sy->call_prefix, strlen(sy->call_prefix)) ||
            gram_add_bytes(b, root, r->tools[i].name, strlen(r->tools[i].name)) ||
            gram_add_bytes(b, root, sy->call_middle, strlen(sy->call_middle)) || gram_add_ref(b, root, args) ||
            gram_add_bytes(b, root, sy->call_suffix, strlen(sy->call_suffix))) {
            snprintf(msg, sizeof msg, "the tool definitions are too large to compile");
            st = LC_ETOOLONG;
            goto schema;
        }
    }
    if (!(r->grammar = gram_builder_finish(b, root, &st, msg, sizeof msg))) goto schema;
    rc = 0;
    goto out;
schema:
    rc = schema_error(err, param, st, msg);
    goto out;
oom:
    srv_error_set(err, 500, "server_error", NULL, NULL, "Out of memory.");
out:
    js_ctx_destroy(c);
    gram_builder_destroy(b);
    return rc;
}

/* Checks tools[i] (t, i = r->n_tools) and appends it to r->tools: its name,
 * and its JSON rendered for the prompt from the request's own text (raw: the
 * tools array's bytes in the body). */
static int parse_tool(const cJSON *t, const char *raw, size_t raw_len, srv_request_t *r, srv_error_t *err) {
    int i = r->n_tools;
    char p[64];
    snprintf(p, sizeof p, "tools[%d]", i);
    if (!cJSON_IsObject(t)) return bad(err, p, "Invalid type for '%s': expected an object.", p);
    const cJSON *ty = field(t, "type"), *fn = field(t, "function"), *e;
    if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "function"))
        return bad(err, p, "Invalid value for '%s.type': only 'function' tools are supported.", p);
    if (!cJSON_IsObject(fn)) return bad(err, p, "Missing required parameter: '%s.function'.", p);
    cJSON_ArrayForEach(e, t) if (strcmp(e->string, "type") && strcmp(e->string, "function")) return bad(
        err, p, "Unknown parameter: '%s.%.64s'.", p, e->string);
    cJSON_ArrayForEach(
        e, fn) if (strcmp(e->string, "name") && strcmp(e->string, "description") && strcmp(e->string, "parameters") &&
                   strcmp(e->string, "strict")) return bad(err, p, "Unknown parameter: '%s.function.%.64s'.", p,
                                                           e->string);
    const cJSON *nm = field(fn, "name"), *pa = field(fn, "parameters"), *de = field(fn, "description"),
                *st = field(fn, "strict");
    if (!cJSON_IsString(nm) || !name_ok(nm->valuestring))
        return bad(err, p, "Invalid value for '%s.function.name': 1 to 64 characters of a-z, A-Z, 0-9, _ and -.", p);
    if (pa && !cJSON_IsObject(pa))
        return bad(err, p, "Invalid type for '%s.function.parameters': expected a JSON schema object.", p);
    if ((de && !cJSON_IsString(de)) || (st && !cJSON_IsBool(st)))
        return bad(err, p, "Invalid type in '%s.function': description is a string, strict a boolean.", p);
    for (int k = 0; k < i; k++)
        if (!strcmp(r->tools[k].name, nm->valuestring))
            return bad(err, p, "Invalid value for 'tools': the name '%s' is used twice.", nm->valuestring);
    const char *tv;
    size_t tl;
    if (chat_json_element(raw, raw_len, i, &tv, &tl) || chat_json_render(tv, tl, &r->tools[i].rendered))
        return bad(err, p,
                   "Invalid value for '%s': repeated keys, invalid UTF-8 or lone surrogates cannot be rendered into "
                   "the prompt.",
                   p);
    if (!(r->tools[i].name = strdup(nm->valuestring))) return bad(err, p, "out of memory");
    r->n_tools++;
    return 0;
}

/* The tools array (not NULL): its size, whether the model has a tool-call
 * format at all, then each tool. */
static int parse_tool_list(const cJSON *tools, const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r,
                           srv_error_t *err) {
    if (!cJSON_IsArray(tools)) return bad(err, "tools", "Invalid type for 'tools': expected an array.");
    int n = cJSON_GetArraySize(tools);
    if (n == 0) return bad(err, "tools", "Invalid value for 'tools': must contain at least one tool.");
    if (n > SRV_MAX_TOOLS) return bad(err, "tools", "Invalid value for 'tools': at most %d tools.", SRV_MAX_TOOLS);
    if (!lim || !lim->tool_syntax)
        return bad(err, "tools",
                   "'tools' is not supported by this model: its chat template (%s) has no tool-call format. "
                   "Serve a model whose template supports tools (such as Qwen2.5) or describe the tools in a "
                   "message.",
                   lim && lim->tool_family ? lim->tool_family : "none");
    const char *raw;
    size_t raw_len;
    if (chat_json_member(body, len, "tools", &raw, &raw_len))
        return bad(err, "tools", "Invalid value for 'tools': cannot read the array.");
    if (!(r->tools = calloc((size_t)n, sizeof *r->tools))) return bad(err, "tools", "out of memory");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        if (parse_tool(t, raw, raw_len, r, err)) return -1;
    }
    return 0;
}

/* tool_choice (not NULL) into r->tool_choice and r->tool_named, once
 * r->tools is known. */
static int parse_tool_choice(const cJSON *tc, srv_request_t *r, srv_error_t *err) {
    if (cJSON_IsString(tc)) {
        const char *s = tc->valuestring;
        if (!strcmp(s, "none"))
            r->tool_choice = SRV_TOOLS_NONE;
        else if (!strcmp(s, "auto"))
            r->tool_choice = r->n_tools ? SRV_TOOLS_AUTO : SRV_TOOLS_NONE;
        else if (!strcmp(s, "required"))
            r->tool_choice = SRV_TOOLS_REQUIRED;
        else
            return bad(err, "tool_choice",
                       "Invalid value for 'tool_choice': expected none, auto, required or a named function.");
    } else if (cJSON_IsObject(tc)) {
        const cJSON *ty = field(tc, "type"), *fn = field(tc, "function"), *nm = field(fn, "name");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "function") || !cJSON_IsString(nm))
            return bad(err, "tool_choice",
                       "Invalid value for 'tool_choice': expected {\"type\": \"function\", \"function\": "
                       "{\"name\": ...}}.");
        r->tool_choice = SRV_TOOLS_NAMED;
        r->tool_named = -1;
        for (int k = 0; k < r->n_tools; k++)
            if (!strcmp(r->tools[k].name, nm->valuestring)) r->tool_named = k;
        if (r->tool_named < 0)
            return bad(err, "tool_choice", "Invalid value for 'tool_choice': no tool is named '%.64s'.",
                       nm->valuestring);
    } else {
        return bad(err, "tool_choice", "Invalid type for 'tool_choice': expected a string or an object.");
    }
    if (r->tool_choice == SRV_TOOLS_REQUIRED && !r->n_tools)
        return bad(err, "tool_choice", "Invalid value for 'tool_choice': 'required' needs 'tools'.");
    return 0;
}

static int parse_tools(const cJSON *o, const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r,
                       srv_error_t *err) {
    const cJSON *tools = field(o, "tools"), *tc = field(o, "tool_choice"), *ptc = field(o, "parallel_tool_calls");
    r->parallel_tool_calls = 1;
    if (ptc) {
        if (!cJSON_IsBool(ptc))
            return bad(err, "parallel_tool_calls", "Invalid type for 'parallel_tool_calls': expected a boolean.");
        r->parallel_tool_calls = cJSON_IsTrue(ptc);
    }
    if (tools && parse_tool_list(tools, body, len, lim, r, err)) return -1;
    r->tool_choice = r->n_tools ? SRV_TOOLS_AUTO : SRV_TOOLS_NONE;
    if (tc && parse_tool_choice(tc, r, err)) return -1;
    if (r->tool_choice == SRV_TOOLS_REQUIRED || r->tool_choice == SRV_TOOLS_NAMED) {
        if (r->grammar)
            return bad(err, "response_format",
                       "'response_format' cannot be combined with a forced tool call (tool_choice required or a "
                       "named function).");
        return compile_forced(tools, lim, r, err);
    }
    if (r->tool_choice == SRV_TOOLS_AUTO && r->grammar)
        return bad(err, "response_format",
                   "'response_format' cannot be combined with tools the model may call (tool_choice auto); set "
                   "tool_choice to none, required or a named function.");
    return 0;
}

int srv__parse_format(const cJSON *o, const char *body, size_t len, const srv_limits_t *lim, srv_request_t *r,
                      srv_error_t *err) {
    if (parse_response_format(o, r, err) < 0) return -1;
    if (r->kind == SRV_REQ_CHAT && parse_tools(o, body, len, lim, r, err) < 0) return -1;
    return 0;
}

/* ---- tool calls in past assistant turns ------------------------------------------------ */
int srv__parse_msg_tool_calls(const cJSON *msg, int i, srv_message_t *m, srv_error_t *err) {
    const cJSON *tc = field(msg, "tool_calls");
    char p[64];
    snprintf(p, sizeof p, "messages[%d].tool_calls", i);
    if (!tc) return 0;
    if (strcmp(m->role, "assistant")) return bad(err, p, "Invalid parameter: only assistant messages have '%s'.", p);
    if (!cJSON_IsArray(tc)) return bad(err, p, "Invalid type for '%s': expected an array.", p);
    int n = cJSON_GetArraySize(tc);
    if (n == 0) return 0;
    if (!(m->tool_calls = calloc((size_t)n, sizeof *m->tool_calls))) return bad(err, p, "out of memory");
    const cJSON *c;
    cJSON_ArrayForEach(c, tc) {
        int k = m->n_tool_calls;
        const cJSON *ty = field(c, "type"), *fn = field(c, "function");
        const cJSON *nm = field(fn, "name"), *args = field(fn, "arguments");
        if (!cJSON_IsObject(c) || (ty && (!cJSON_IsString(ty) || strcmp(ty->valuestring, "function"))) ||
            !cJSON_IsString(nm) || !cJSON_IsString(args))
            return bad(err, p,
                       "Invalid value for '%s[%d]': expected {\"id\", \"type\": \"function\", \"function\": {\"name\", "
                       "\"arguments\"}} with string name and arguments.",
                       p, k);
        if (!name_ok(nm->valuestring))
            return bad(err, p,
                       "Invalid value for '%s[%d].function.name': 1 to 64 characters of a-z, A-Z, 0-9, _ and -.", p, k);
        if (chat_json_render(args->valuestring, strlen(args->valuestring), &m->tool_calls[k].arguments))
            return bad(err, p, "Invalid value for '%s[%d].function.arguments': not a JSON value.", p, k);
        if (!(m->tool_calls[k].name = strdup(nm->valuestring))) return bad(err, p, "out of memory");
        m->n_tool_calls++;
    }
    return 0;
}

void srv__free_format(srv_request_t *r) {
    gram_release(r->grammar);
    r->grammar = NULL;
    for (int i = 0; i < r->n_tools; i++) {
        free(r->tools[i].name);
        free(r->tools[i].rendered);
    }
    free(r->tools);
    r->tools = NULL;
    r->n_tools = 0;
}

void srv__free_message(srv_message_t *m) {
    free(m->role);
    free(m->content);
    for (int k = 0; k < m->n_tool_calls; k++) {
        free(m->tool_calls[k].name);
        free(m->tool_calls[k].arguments);
    }
    free(m->tool_calls);
    memset(m, 0, sizeof *m);
}
