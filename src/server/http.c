/* libmicrohttpd in external epoll mode on the libuv loop. MHD's epoll fd is
 * watched with a uv_poll; after every MHD_run the uv_timer is re-armed from
 * MHD_get_timeout. Connections waiting for the engine are suspended; the
 * engine's wake-up (uv_async) and a one-second sweep resume them. The sweep
 * also writes SSE keep-alives, notices clients that left while suspended
 * (which MHD cannot see), and enforces the absolute request deadline. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "server/server.h"

/* ---- driving MHD ------------------------------------------------------------ */
static void on_mhd_timer(uv_timer_t *t);

void srv_http_run(srv_t *s) {
    if (!s->mhd) return;
    MHD_run(s->mhd);
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(s->mhd, &ms) == MHD_YES)
        uv_timer_start(&s->mhd_timer, on_mhd_timer, ms, 0);
    else
        uv_timer_stop(&s->mhd_timer);
}

static void on_mhd_timer(uv_timer_t *t) { srv_http_run(t->data); }

static void on_mhd_poll(uv_poll_t *p, int status, int events) { srv_http_run(p->data); }

/* ---- connections ----------------------------------------------------------------- */
void srv_conn_resume(srv_conn_t *k) {
    if (k->suspended && k->c) {
        k->suspended = 0;
        MHD_resume_connection(k->c);
    }
}

void srv_conn_reply(srv_conn_t *k, int status, char *body, const char *type) {
    free(k->reply);
    k->reply = body;
    k->reply_type = type;
    k->status = status;
    k->state = CONN_REPLY;
    srv_conn_resume(k);
}

void srv_conn_error(srv_conn_t *k, const srv_error_t *e) {
    srv_conn_reply(k, e->status, srv_render_error(e), "application/json");
}

static void make_rid(srv_t *s, struct MHD_Connection *c, char *out, size_t n) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-request-id");
    if (h) {
        size_t len = strlen(h);
        int ok = len > 0 && len < 64;
        for (size_t i = 0; ok && i < len; i++)
            ok = (h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'z') || (h[i] >= 'A' && h[i] <= 'Z') ||
                 h[i] == '-' || h[i] == '_' || h[i] == '.';
        if (ok) {
            snprintf(out, n, "%s", h);
            return;
        }
    }
    uint64_t r = lc_now_ns() ^ ((uint64_t)lc_unix_time() << 20);
    snprintf(out, n, "%016llx%08llx", (unsigned long long)r, (unsigned long long)++s->seq);
}

static srv_sock_t *sock_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (srv_sock_t *)ci->socket_context : NULL;
}

static enum MHD_Result first_call(srv_conn_t *k, const char *url, const char *method) {
    srv_t *s = k->s;
    int method_ok = 0;
    const char *allow = NULL;
    srv_error_t e;
    k->route = srv_route_lookup(url, method, &method_ok, &allow);
    if (k->route == ROUTE_NONE) {
        srv_error_set(&e, 404, "invalid_request_error", NULL, "not_found", "Unknown route %s %.60s.", method, url);
        goto fail;
    }
    if (!method_ok) {
        srv_error_set(&e, 405, "invalid_request_error", NULL, "method_not_allowed",
                      "Method %s is not allowed for %.60s (allowed: %s).", method, url, allow);
        k->reply_type = allow; /* consumed by the 405 below */
        goto fail;
    }
    if (srv_route_needs_auth(s, k->route) &&
        !srv_auth_check(&s->auth, MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "Authorization"))) {
        const char *h = MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "Authorization");
        srv_error_set(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                      h ? "Incorrect API key provided." : "You didn't provide an API key.");
        goto fail;
    }
    const char *cl = MHD_lookup_connection_value(k->c, MHD_HEADER_KIND, "Content-Length");
    if (cl && strtoull(cl, NULL, 10) > (unsigned long long)s->cfg.max_body_bytes) {
        srv_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                      "Request body too large: the limit is %lld bytes.", s->cfg.max_body_bytes);
        goto fail;
    }
    return MHD_YES;
fail:
    k->status = e.status;
    k->state = CONN_DONE;
    char *body = srv_render_error(&e);
    enum MHD_Result rc = srv_queue(k, e.status, body, body ? strlen(body) : 0, "application/json");
    free(body);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
    srv_t *s = cls;
    srv_conn_t *k = *con_cls;
    if (!k) {
        k = calloc(1, sizeof(*k));
        if (!k) return MHD_NO;
        k->s = s;
        k->c = c;
        k->t0 = lc_now_s();
        snprintf(k->path, sizeof(k->path), "%s %.50s", method, url);
        make_rid(s, c, k->rid, sizeof(k->rid));
        k->next = s->conns;
        if (s->conns) s->conns->prev = k;
        s->conns = k;
        s->n_conns++;
        *con_cls = k;
        return first_call(k, url, method);
    }
    if (k->state == CONN_DONE) { /* error already queued: discard the body */
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->state == CONN_RECEIVING && *upload_size) {
        if (!k->too_large) {
            if (k->body.len + *upload_size > (size_t)s->cfg.max_body_bytes)
                k->too_large = 1;
            else if (srv_buf_append(&k->body, upload_data, *upload_size))
                return MHD_NO;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->state == CONN_RECEIVING) {
        srv_sock_t *sk = sock_of(c);
        if (sk) sk->busy = 1;
        if (k->too_large) {
            srv_error_t e;
            srv_error_set(&e, 413, "invalid_request_error", NULL, "request_too_large",
                          "Request body too large: the limit is %lld bytes.", s->cfg.max_body_bytes);
            k->status = 413;
            k->state = CONN_DONE;
            char *body = srv_render_error(&e);
            enum MHD_Result rc = srv_queue(k, 413, body, body ? strlen(body) : 0, "application/json");
            free(body);
            return rc;
        }
        return srv_route_dispatch(k);
    }
    if (k->state == CONN_REPLY) {
        k->state = CONN_DONE;
        const char *type = k->reply_type ? k->reply_type : "application/json";
        return srv_queue(k, k->status, k->reply ? k->reply : "", k->reply ? strlen(k->reply) : 0, type);
    }
    if (k->state == CONN_STREAMING) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, srv_gen_reader, k, NULL);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Type", "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "x-request-id", k->rid);
        k->status = 200;
        k->state = CONN_DONE;
        k->last_write = lc_now_s();
        s->http.streams_open++;
        k->stream_open = 1;
        s->http.by_code[200]++;
        enum MHD_Result rc = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        return rc;
    }
    /* WORKING or RUNNING and resumed early (sweep): wait again. */
    MHD_suspend_connection(c);
    k->suspended = 1;
    return MHD_YES;
}

enum MHD_Result srv_queue(srv_conn_t *k, int status, const char *body, size_t len, const char *type) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "x-request-id", k->rid);
    if (status == 405 && k->reply_type) MHD_add_response_header(r, "Allow", k->reply_type);
    if (status == 429 || status == 503) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", k->retry_after > 0 ? k->retry_after : 1);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    k->status = status;
    if (status >= 100 && status < 600) k->s->http.by_code[status]++;
    enum MHD_Result rc = MHD_queue_response(k->c, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static void conn_free(srv_conn_t *k) {
    srv_t *s = k->s;
    if (k->prev)
        k->prev->next = k->next;
    else if (s->conns == k)
        s->conns = k->next;
    if (k->next) k->next->prev = k->prev;
    s->n_conns--;
    srv_gen_free(k);
    srv_buf_free(&k->body);
    free(k->reply);
    free(k->work_json);
    free(k);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    srv_t *s = cls;
    srv_conn_t *k = *con_cls;
    srv_sock_t *sk = sock_of(c);
    if (sk) {
        sk->busy = 0;
        sk->since = lc_now_s();
    }
    if (!k) return;
    *con_cls = NULL;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        if (k->state != CONN_DONE || k->n_prompts) srv_gen_cancel(k);
        if (k->status == 200 || k->status == 0) k->status = 499; /* log: client closed */
    }
    if (k->stream_open) { /* also when the client left mid-stream (status 499 above) */
        k->stream_open = 0;
        s->http.streams_open--;
    }
    srv_log_request(k);
    k->mhd_done = 1;
    k->c = NULL;
    k->suspended = 0;
    if (!k->work_pending) conn_free(k);
}

/* Called by gen.c's after-work when the connection completed meanwhile. */
void srv_conn_work_done(srv_conn_t *k);
void srv_conn_work_done(srv_conn_t *k) {
    k->work_pending = 0;
    if (k->mhd_done) conn_free(k);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    srv_t *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        srv_sock_t *sk = calloc(1, sizeof(*sk));
        if (!sk) return;
        sk->c = c;
        sk->since = lc_now_s();
        sk->next = s->socks;
        if (s->socks) s->socks->prev = sk;
        s->socks = sk;
        *socket_context = sk;
        s->http.connections_open++;
    } else if (*socket_context) {
        srv_sock_t *sk = *socket_context;
        if (sk->prev)
            sk->prev->next = sk->next;
        else
            s->socks = sk->next;
        if (sk->next) sk->next->prev = sk->prev;
        free(sk);
        *socket_context = NULL;
        s->http.connections_open--;
    }
}

/* ---- the sweep ------------------------------------------------------------------- */
static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* 1 when the peer closed its end (a suspended connection cannot notice). */
static int peer_gone(struct MHD_Connection *c) {
    int fd = conn_fd(c);
    if (fd < 0) return 0;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static void on_sweep(uv_timer_t *t) {
    srv_t *s = t->data;
    double now = lc_now_s();
    int ping = now - s->last_ping >= s->cfg.keepalive_ping_s - 1e-3;
    if (ping) s->last_ping = now;
    for (srv_conn_t *k = s->conns; k; k = k->next) {
        if (!k->c || k->mhd_done) continue;
        if (k->suspended && !k->client_gone && peer_gone(k->c)) {
            k->client_gone = 1;
            srv_gen_cancel(k);
            if (k->state == CONN_WORKING || k->state == CONN_RUNNING) {
                srv_error_t e;
                srv_error_set(&e, 400, "invalid_request_error", NULL, NULL, "Client closed the connection.");
                srv_conn_error(k, &e);
            } else {
                k->stream_end = 1;
                srv_conn_resume(k);
            }
            continue;
        }
        if (k->state == CONN_DONE && k->req.stream && k->suspended && now - k->last_write >= s->cfg.keepalive_ping_s) {
            srv_sse_ping(&k->out);
            srv_conn_resume(k);
        }
    }
    for (srv_sock_t *sk = s->socks; sk; sk = sk->next) {
        if (!sk->busy && now - sk->since > s->cfg.request_deadline_s) {
            int fd = conn_fd(sk->c);
            if (fd >= 0) {
                LC_DEBUG("closing connection fd %d: no complete request within %d s", fd, s->cfg.request_deadline_s);
                shutdown(fd, SHUT_RDWR);
                sk->since = now; /* once */
            }
        }
    }
    srv_http_run(s);
}

/* ---- start / stop ---------------------------------------------------------------- */
int srv_http_start(srv_t *s, char *err, size_t errlen) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int rc;
    if (strchr(s->cfg.host, ':'))
        rc = uv_ip6_addr(s->cfg.host, s->cfg.port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(s->cfg.host, s->cfg.port, (struct sockaddr_in *)&ss);
    if (rc) {
        snprintf(err, errlen, "bad listen address %s", s->cfg.host);
        return LC_EINVAL;
    }
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* SO_REUSEPORT only when configured. Without the option MHD sets just
     * SO_REUSEADDR: a restart binds past old connections in TIME_WAIT, but a
     * second daemon on a port in use fails instead of silently taking half
     * of the connections. */
    struct MHD_OptionItem reuse[] = {
        {s->cfg.reuse_port ? MHD_OPTION_LISTENING_ADDRESS_REUSE : MHD_OPTION_END, 1, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    errno = 0;
    s->mhd = MHD_start_daemon(flags, (uint16_t)s->cfg.port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                              (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)s->cfg.max_connections_per_ip,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->cfg.connection_timeout_s,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
                              s, MHD_OPTION_ARRAY, reuse, MHD_OPTION_END);
    if (!s->mhd) {
        if (errno == EADDRINUSE) {
            snprintf(err, errlen,
                     "cannot listen on %s:%d: address already in use (another server holds the port; "
                     "[server] reuse_port = true lets daemons that all set it share one)",
                     s->cfg.host, s->cfg.port);
            return LC_EBUSY;
        }
        snprintf(err, errlen, "cannot listen on %s:%d: %s", s->cfg.host, s->cfg.port,
                 errno ? strerror(errno) : "libmicrohttpd refused to start");
        return LC_EIO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!di) {
        snprintf(err, errlen, "libmicrohttpd has no epoll fd");
        return LC_EIO;
    }
    if (s->cfg.port == 0) {
        const union MHD_DaemonInfo *pi = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
        if (pi) s->cfg.port = pi->port;
    }
    uv_poll_init(s->loop, &s->mhd_poll, di->epoll_fd);
    s->mhd_poll.data = s;
    uv_poll_start(&s->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_timer_init(s->loop, &s->mhd_timer);
    s->mhd_timer.data = s;
    uv_timer_init(s->loop, &s->sweep);
    s->sweep.data = s;
    uv_timer_start(&s->sweep, on_sweep, 1000, 1000);
    s->last_ping = lc_now_s();
    s->listen_fd = MHD_INVALID_SOCKET;
    srv_http_run(s);
    return 0;
}

void srv_http_close_listener(srv_t *s) {
    if (s->listen_fd == MHD_INVALID_SOCKET) return;
    static const char body[] = "{\"error\":{\"message\":\"The server is shutting down.\",\"type\":"
                               "\"service_unavailable\",\"param\":null,\"code\":\"draining\"}}";
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                      "Connection: close\r\nContent-Length: %zu\r\n\r\n",
                      sizeof(body) - 1);
    int n = 0;
    for (; n < 1024; n++) { /* bounded: the backlog is finite anyway */
        int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        /* Read what the client sent so far (closing with unread data sends
         * a reset that can discard our answer), then answer and close. */
        char junk[4096];
        while (recv(fd, junk, sizeof(junk), 0) > 0) {
        }
        if (send(fd, head, (size_t)hl, MSG_NOSIGNAL) == hl) send(fd, body, sizeof(body) - 1, MSG_NOSIGNAL);
        shutdown(fd, SHUT_WR);
        close(fd);
    }
    if (n) LC_INFO("draining: answered %d connection%s from the listen backlog with 503", n, n == 1 ? "" : "s");
    close(s->listen_fd);
    s->listen_fd = MHD_INVALID_SOCKET;
}

void srv_http_stop(srv_t *s) {
    if (!s->mhd) return;
    for (srv_conn_t *k = s->conns; k; k = k->next) {
        srv_gen_cancel(k);
        k->stream_end = 1;
        srv_conn_resume(k);
    }
    uv_poll_stop(&s->mhd_poll);
    uv_timer_stop(&s->mhd_timer);
    uv_timer_stop(&s->sweep);
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    if (s->listen_fd != MHD_INVALID_SOCKET) close(s->listen_fd);
    s->listen_fd = MHD_INVALID_SOCKET;
}
