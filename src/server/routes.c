/* Routing and the small endpoints: /v1/models, /health, /metrics,
 * /tokenize, /detokenize. Generation endpoints are handed to gen.c after
 * their bodies validate. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "server/server.h"

#include <cjson/cJSON.h>

static const struct {
    const char *path, *method;
    srv_route_t route;
} routes[] = {
    {"/v1/completions", "POST", ROUTE_COMPLETIONS},
    {"/v1/chat/completions", "POST", ROUTE_CHAT},
    {"/v1/models", "GET", ROUTE_MODELS},
    {"/health", "GET", ROUTE_HEALTH},
    {"/metrics", "GET", ROUTE_METRICS},
    {"/tokenize", "POST", ROUTE_TOKENIZE},
    {"/detokenize", "POST", ROUTE_DETOKENIZE},
};

srv_route_t srv_route_lookup(const char *url, const char *method, int *method_ok, const char **allow) {
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (strcmp(url, routes[i].path)) continue;
        *allow = routes[i].method;
        *method_ok = !strcmp(method, routes[i].method) || (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"));
        return routes[i].route;
    }
    return ROUTE_NONE;
}

int srv_route_needs_auth(const srv_t *s, srv_route_t r) {
    if (r == ROUTE_HEALTH || r == ROUTE_METRICS) return s->cfg.auth_metrics;
    return 1;
}

static enum MHD_Result reply_error(srv_conn_t *k, const srv_error_t *e) {
    char *body = srv_render_error(e);
    k->state = CONN_DONE;
    enum MHD_Result rc = srv_queue(k, e->status, body ? body : "", body ? strlen(body) : 0, "application/json");
    free(body);
    return rc;
}

static enum MHD_Result reply_json(srv_conn_t *k, int status, char *body) {
    k->state = CONN_DONE;
    enum MHD_Result rc = srv_queue(k, status, body ? body : "{}", body ? strlen(body) : 2, "application/json");
    free(body);
    return rc;
}

/* 503 while loading or draining; NULL when the engine is serving. */
static int unavailable(srv_t *s, srv_error_t *e) {
    if (s->loading) {
        srv_error_set(e, 503, "service_unavailable", NULL, "model_loading", "The model is loading; retry shortly.");
        return 1;
    }
    if (s->draining) {
        srv_error_set(e, 503, "service_unavailable", NULL, "draining", "The server is shutting down.");
        return 1;
    }
    if (s->sched && sched_failure(s->sched)) {
        srv_error_set(e, 503, "service_unavailable", NULL, "device_failed", "The engine's device failed: %s.",
                      sched_failure(s->sched));
        return 1;
    }
    if (!s->sched) {
        srv_error_set(e, 503, "service_unavailable", NULL, "model_unavailable", "No model is loaded: %s",
                      s->load_err[0] ? s->load_err : "unknown error");
        return 1;
    }
    return 0;
}

/* ---- tokenize / detokenize on the thread pool ------------------------------------------ */
typedef struct {
    srv_conn_t *k;
    srv_tokenize_req_t treq;
    int32_t *ids;
    int n_ids;
} tok_job_t;

static void tokenize_work(uv_work_t *w) {
    srv_conn_t *k = w->data;
    srv_t *s = k->s;
    tok_job_t *j = (tok_job_t *)k->work_json; /* job parked here while in flight */
    srv_error_t e;
    cJSON *o = cJSON_CreateObject();
    if (k->route == ROUTE_TOKENIZE) {
        char *text = NULL;
        int add_bos = j->treq.add_special_tokens && tok_add_bos(s->tok);
        if (j->treq.messages) {
            char cerr[256];
            if (!s->have_chat ||
                srv_render_chat(s, j->treq.messages, j->treq.n_messages, NULL, 0, &text, cerr, sizeof(cerr))) {
                free(text);
                text = NULL;
            }
            if (s->have_chat && chat_renders_bos(&s->chat)) add_bos = 0;
        } else {
            text = strdup(j->treq.prompt);
        }
        tok_ids_t ids = {0};
        if (!text || tok_encode(s->tok, text, strlen(text), add_bos, 1, &ids)) {
            srv_error_set(&e, 400, "invalid_request_error", "messages", NULL, "Cannot tokenize the input.");
            cJSON_Delete(o);
            o = NULL;
            free(k->reply);
            k->reply = srv_render_error(&e);
            k->status = 400;
        } else {
            cJSON *a = cJSON_AddArrayToObject(o, "tokens");
            for (size_t i = 0; i < ids.n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids.ids[i]));
            cJSON_AddNumberToObject(o, "count", (double)ids.n);
            cJSON_AddNumberToObject(o, "max_model_len", s->n_ctx);
        }
        tok_ids_free(&ids);
        free(text);
    } else {
        char *text = NULL;
        size_t len = 0;
        if (tok_decode(s->tok, j->ids, (size_t)j->n_ids, 0, &text, &len)) {
            srv_error_set(&e, 400, "invalid_request_error", "tokens", NULL,
                          "Invalid value for 'tokens': token ids must be below %d.", s->n_vocab);
            cJSON_Delete(o);
            o = NULL;
            free(k->reply);
            k->reply = srv_render_error(&e);
            k->status = 400;
        } else {
            char *u = srv_utf8_dup(text, len);
            cJSON_AddStringToObject(o, "prompt", u ? u : "");
            free(u);
        }
        free(text);
    }
    if (o) {
        free(k->reply);
        k->reply = cJSON_PrintUnformatted(o);
        k->status = 200;
        cJSON_Delete(o);
    }
}

void srv_conn_work_done(srv_conn_t *k);

static void tokenize_after(uv_work_t *w, int status) {
    srv_conn_t *k = w->data;
    tok_job_t *j = (tok_job_t *)k->work_json;
    srv_tokenize_req_free(&j->treq);
    free(j->ids);
    free(j);
    k->work_json = NULL;
    if (!k->mhd_done) {
        char *body = k->reply;
        k->reply = NULL;
        srv_conn_reply(k, k->status ? k->status : 500, body, "application/json");
        srv_http_run(k->s);
    }
    srv_conn_work_done(k);
}

static enum MHD_Result start_tokenize(srv_conn_t *k) {
    srv_t *s = k->s;
    srv_error_t e;
    if (unavailable(s, &e)) return reply_error(k, &e);
    tok_job_t *j = calloc(1, sizeof(*j));
    if (!j) return MHD_NO;
    int rc = k->route == ROUTE_TOKENIZE
                 ? srv_parse_tokenize(k->body.data ? k->body.data : "", k->body.len, &j->treq, &e)
                 : srv_parse_detokenize(k->body.data ? k->body.data : "", k->body.len, &j->ids, &j->n_ids, &e);
    if (rc) {
        srv_tokenize_req_free(&j->treq);
        free(j->ids);
        free(j);
        return reply_error(k, &e);
    }
    k->work_json = (char *)j;
    k->work.data = k;
    k->work_pending = 1;
    k->state = CONN_WORKING;
    uv_queue_work(s->loop, &k->work, tokenize_work, tokenize_after);
    MHD_suspend_connection(k->c);
    k->suspended = 1;
    return MHD_YES;
}

/* ---- dispatch ---------------------------------------------------------------------------- */
enum MHD_Result srv_route_dispatch(srv_conn_t *k) {
    srv_t *s = k->s;
    srv_error_t e;
    switch (k->route) {
    case ROUTE_HEALTH:
        if (unavailable(s, &e)) return reply_error(k, &e);
        return reply_json(k, 200, strdup("{\"status\":\"ok\"}"));
    case ROUTE_MODELS: return reply_json(k, 200, srv_render_models(s->served_name, s->created));
    case ROUTE_METRICS: {
        sched_metrics_t m;
        memset(&m, 0, sizeof(m));
        if (s->sched) sched_metrics(s->sched, &m);
        srv_buf_t b = {0};
        srv_metrics_render(&b, s->served_name, &m, &s->http);
        k->state = CONN_DONE;
        enum MHD_Result rc = srv_queue(k, 200, b.data ? b.data : "", b.len, "text/plain; version=0.0.4");
        srv_buf_free(&b);
        return rc;
    }
    case ROUTE_TOKENIZE:
    case ROUTE_DETOKENIZE: return start_tokenize(k);
    case ROUTE_COMPLETIONS:
    case ROUTE_CHAT: {
        if (unavailable(s, &e)) {
            k->retry_after = 1;
            return reply_error(k, &e);
        }
        const char *b = k->body.data ? k->body.data : "";
        int rc = k->route == ROUTE_CHAT ? srv_parse_chat(b, k->body.len, &s->lim, &k->req, &e)
                                        : srv_parse_completion(b, k->body.len, &s->lim, &k->req, &e);
        if (rc) return reply_error(k, &e);
        const char *base = strrchr(s->cfg.model_path, '/');
        base = base ? base + 1 : s->cfg.model_path;
        if (strcmp(k->req.model, s->served_name) && strcmp(k->req.model, base)) {
            srv_error_set(&e, 404, "invalid_request_error", "model", "model_not_found",
                          "The model `%.200s` does not exist.", k->req.model);
            return reply_error(k, &e);
        }
        return srv_gen_start(k);
    }
    default:
        srv_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown route.");
        return reply_error(k, &e);
    }
}
