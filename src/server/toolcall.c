/* The tool-call splitter (toolcall.h). */
#include "server/toolcall.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"

void srv_tp_init(srv_tp_t *t, const chat_tool_syntax_t *sy) {
    memset(t, 0, sizeof *t);
    t->sy = sy;
}

void srv_tp_free(srv_tp_t *t) { srv_buf_free(&t->held); }

void srv_tp_out_free(srv_tp_out_t *o) {
    srv_buf_free(&o->content);
    for (int i = 0; i < o->n_calls; i++) {
        free(o->calls[i].name);
        free(o->calls[i].arguments);
    }
    free(o->calls);
    memset(o, 0, sizeof *o);
}

static const char *find(const char *s, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* A call body -> (name, arguments), or 0 when it is not a call. */
static int parse_call(const char *body, size_t n, srv_tp_out_t *out) {
    cJSON *j = cJSON_ParseWithLength(body, n);
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(j, "name");
    const cJSON *args = cJSON_GetObjectItemCaseSensitive(j, "arguments");
    if (!cJSON_IsObject(j) || !cJSON_IsString(nm) || !(cJSON_IsObject(args) || cJSON_IsString(args))) {
        cJSON_Delete(j);
        return 0;
    }
    if (out->n_calls == out->cap_calls) {
        int cap = out->cap_calls ? out->cap_calls * 2 : 4;
        srv_call_t *c = realloc(out->calls, sizeof *c * (size_t)cap);
        if (!c) {
            cJSON_Delete(j);
            return LC_ENOMEM;
        }
        out->calls = c;
        out->cap_calls = cap;
    }
    srv_call_t *c = &out->calls[out->n_calls];
    c->name = strdup(nm->valuestring);
    c->arguments = cJSON_IsString(args) ? strdup(args->valuestring) : cJSON_PrintUnformatted(args);
    cJSON_Delete(j);
    if (!c->name || !c->arguments) {
        free(c->name);
        free(c->arguments);
        return LC_ENOMEM;
    }
    out->n_calls++;
    return 1;
}

static int as_content(srv_tp_t *t, const char *body, size_t n, int closed, srv_tp_out_t *out) {
    int rc = srv_buf_append(&out->content, t->sy->open_tag, strlen(t->sy->open_tag));
    if (!rc) rc = srv_buf_append(&out->content, body, n);
    if (!rc && closed) rc = srv_buf_append(&out->content, t->sy->close_tag, strlen(t->sy->close_tag));
    return rc;
}

int srv_tp_feed(srv_tp_t *t, const char *text, size_t len, srv_tp_out_t *out) {
    if (srv_buf_append(&t->held, text, len)) return LC_ENOMEM;
    const char *open = t->sy->open_tag, *close = t->sy->close_tag;
    for (;;) {
        const char *h = t->held.data ? t->held.data : "";
        size_t n = t->held.len;
        if (!t->in_call) {
            const char *at = find(h, n, open);
            if (at) {
                if (srv_buf_append(&out->content, h, (size_t)(at - h))) return LC_ENOMEM;
                srv_buf_consume(&t->held, (size_t)(at - h) + strlen(open));
                t->in_call = 1;
                continue;
            }
            /* keep the longest tail that could still start the tag */
            size_t keep = 0, ol = strlen(open);
            for (size_t k = ol - 1; k > 0; k--)
                if (k <= n && !memcmp(h + n - k, open, k)) {
                    keep = k;
                    break;
                }
            if (srv_buf_append(&out->content, h, n - keep)) return LC_ENOMEM;
            srv_buf_consume(&t->held, n - keep);
            return 0;
        }
        const char *at = find(h, n, close);
        if (!at) return 0;
        size_t bl = (size_t)(at - h);
        int rc = parse_call(h, bl, out);
        if (rc < 0) return rc;
        if (rc == 0 && as_content(t, h, bl, 1, out)) return LC_ENOMEM;
        srv_buf_consume(&t->held, bl + strlen(close));
        t->in_call = 0;
    }
}

int srv_tp_finish(srv_tp_t *t, srv_tp_out_t *out) {
    const char *h = t->held.data ? t->held.data : "";
    int rc = 0;
    if (t->in_call) {
        rc = parse_call(h, t->held.len, out);
        if (rc == 0) rc = as_content(t, h, t->held.len, 0, out);
    } else {
        rc = srv_buf_append(&out->content, h, t->held.len);
    }
    srv_buf_consume(&t->held, t->held.len);
    t->in_call = 0;
    return rc < 0 ? rc : 0;
}
