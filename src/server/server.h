/* lacunad's shared state: the loop, MHD, the engine, and one srv_conn_t per
 * HTTP request in flight. Internal to src/server (http.c, routes.c, gen.c,
 * daemon.c; all in the library, where tests/check_server.c reaches them)
 * and main.c, lacunad's entry point; everything here runs on the loop thread
 * unless a comment says otherwise. */
#ifndef SRV_SERVER_H
#define SRV_SERVER_H

#include <microhttpd.h>
#include <stdint.h>
#include <uv.h>

#include "common/config.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "scheduler/sched.h"
#include "server/auth.h"
#include "server/metrics.h"
#include "server/parse.h"
#include "server/respond.h"
#include "server/toolcall.h"

typedef enum {
    ROUTE_NONE = 0,
    ROUTE_COMPLETIONS,
    ROUTE_CHAT,
    ROUTE_MODELS,
    ROUTE_HEALTH,
    ROUTE_METRICS,
    ROUTE_TOKENIZE,
    ROUTE_DETOKENIZE,
} srv_route_t;

typedef enum {
    CONN_RECEIVING = 0, // body arriving
    CONN_WORKING,       // tokenizing on the thread pool (suspended)
    CONN_RUNNING,       // in the engine (non-streaming: suspended until done)
    CONN_STREAMING,     // SSE response queued; content reader feeds from out
    CONN_REPLY,         // a response body is ready; queue it on the next call
    CONN_DONE,          // response queued
} srv_conn_state_t;

/* One choice being generated (g = prompt * best_of + choice). */
typedef struct {
    srv_buf_t text;
    sched_logprob_t *lps; // (n_lps) prompt entries first with echo
    int n_lps, cap_lps;
    int n_tokens;
    double cum_logprob;
    sched_finish_t finish;
    int role_sent;      // chat stream: first delta written
    size_t text_offset; // completions stream: bytes already sent
    /* chat with tools: the text split into content and calls */
    int tp_on;
    srv_tp_t tp;
    srv_tp_out_t tpo;  // non-streaming: everything; streaming: scratch
    int n_calls_sent;  // streaming
    char call_id[112]; // "call_<request id>_<choice index>"
} srv_gen_choice_t;

typedef struct srv srv_t;

/* One HTTP request (MHD's con_cls). Freed when MHD reported completion and no
 * thread-pool work refers to it. */
typedef struct srv_conn {
    srv_t *s;
    struct MHD_Connection *c;
    struct srv_conn *prev, *next; // s->conns
    char rid[72];
    char path[64];
    srv_route_t route;
    double t0;
    srv_conn_state_t state;
    int suspended;
    int mhd_done;     // completed callback ran
    int work_pending; // uv_work in flight
    int client_gone;
    int stream_open; // counted in http.streams_open until completion
    int status;      // for the log line and metrics
    srv_buf_t body;
    int too_large;

    /* reply (CONN_REPLY) */
    char *reply;
    const char *reply_type;
    int retry_after;

    /* generation */
    srv_request_t req;
    int32_t **pids; // (n_prompts) tokenized prompts
    int *pn;
    char **echo; // (n_prompts) prompt text for echo, or NULL
    size_t *echo_len;
    int n_prompts;
    sched_req_t **sr;     // (n_prompts)
    int n_done;           // sched requests that reported DONE
    srv_gen_choice_t *ch; // (n_prompts * best_of)
    int n_ch;
    srv_usage_t usage;
    srv_error_t err;
    int has_err;
    char id[96]; // cmpl-… / chatcmpl-…
    int64_t created;
    double t_first; // first token seen
    srv_buf_t out;  // SSE bytes not yet handed to MHD
    int stream_end; // everything, [DONE] included, is in out
    double last_write;
    uv_work_t work;
    /* tokenize / detokenize results */
    char *work_json;
} srv_conn_t;

/* Per-socket bookkeeping for the absolute request deadline. */
typedef struct srv_sock {
    struct srv_sock *prev, *next;
    struct MHD_Connection *c;
    double since; // connection start or end of the last response
    int busy;     // a full request was received; response pending
} srv_sock_t;

struct srv {
    uv_loop_t *loop;
    struct MHD_Daemon *mhd;
    MHD_socket listen_fd;
    uv_poll_t mhd_poll;
    uv_timer_t mhd_timer;
    uv_timer_t sweep;
    uv_async_t wake;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_work_t load_work;

    lc_config_t cfg;
    int argc;
    char **argv;
    srv_auth_t auth;
    srv_limits_t lim;

    model_t *model;
    sched_t *sched;
    const tok_t *tok;
    chat_template_t chat;
    int have_chat;
    chat_tool_syntax_t tool_syntax; // when chat_supports_tools(&chat)
    gram_vocab_t *gvocab;           // the model's token trie for constrained decoding (built at load)
    char served_name[LC_CONFIG_STR];
    char load_err[512];
    int n_ctx;
    int n_vocab;
    int64_t created;

    int loading;
    int draining;
    int stopping;
    double drain_deadline;
    double last_ping;
    int exit_code;

    srv_conn_t *conns; // requests in flight
    int n_conns;
    srv_sock_t *socks;
    srv_http_counts_t http;
    uint64_t seq;
};

/* http.c */
int srv_http_start(srv_t *s, char *err, size_t errlen);
void srv_http_run(srv_t *s); // MHD_run + re-arm the timer
void srv_http_stop(srv_t *s);
/* Draining: MHD is quiesced; answer the connections already waiting in the
 * listen backlog with 503 and close the listener, so later clients are
 * refused at once instead of being reset when the process exits. */
void srv_http_close_listener(srv_t *s);
void srv_conn_resume(srv_conn_t *k); // resume if suspended (caller runs srv_http_run)
void srv_conn_reply(srv_conn_t *k, int status, char *body, const char *type); // CONN_REPLY + resume
void srv_conn_error(srv_conn_t *k, const srv_error_t *e);

/* routes.c: a complete request arrived (body in k->body). Queues a response
 * or suspends. */
enum MHD_Result srv_route_dispatch(srv_conn_t *k);
srv_route_t srv_route_lookup(const char *url, const char *method, int *method_ok, const char **allow);
int srv_route_needs_auth(const srv_t *s, srv_route_t r);
enum MHD_Result srv_queue(srv_conn_t *k, int status, const char *body, size_t len, const char *type);

/* gen.c: generation jobs. srv_render_chat renders messages (with their past
 * tool calls) and tool definitions with the model's chat template: 0, or a
 * status with err filled (LC_ENOMEM, LC_EINVAL, LC_EUNSUPPORTED). */
int srv_render_chat(const srv_t *s, const srv_message_t *msgs, int n, const srv_tool_t *tools, int n_tools, char **text,
                    char *err, size_t errlen);
enum MHD_Result srv_gen_start(srv_conn_t *k); // parse done; tokenizes on the pool
void srv_gen_poll_all(srv_t *s);              // drain engine events (async handler)
void srv_gen_cancel(srv_conn_t *k);           // client gone
void srv_gen_free(srv_conn_t *k);
ssize_t srv_gen_reader(void *cls, uint64_t pos, char *buf, size_t max);

/* daemon.c: lacunad's life; main() calls srv_configure, then srv_serve. */
#define SRV_SERVE (-1)
/* Reads the command line into s->cfg (s zeroed). Handles what needs no
 * server (--help, --version, --check-config, bad settings: messages on
 * stdout / stderr) and returns the exit status, or SRV_SERVE to go on with
 * srv_serve. */
int srv_configure(srv_t *s, int argc, char **argv);
/* On the default libuv loop: listens, loads the model, serves until a signal
 * has drained the server, frees what s holds. Returns the exit status (1
 * when the listener or the model failed). */
int srv_serve(srv_t *s);
/* The access-log line of a finished request (http.c calls it). */
void srv_log_request(srv_conn_t *k);

#endif
