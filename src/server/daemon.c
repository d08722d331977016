/* lacunad's life around the HTTP front end: configuration, model load,
 * signals and systemd notification. The listening socket comes up first
 * (answering 503 while the model loads, so health checks see progress);
 * READY=1 follows the load. SIGTERM drains; SIGHUP reloads keys, limits and
 * the log level. In the library so that tests reach it; main.c only calls
 * srv_configure and srv_serve. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/cpu.h"
#include "common/log.h"
#include "common/status.h"
#include "common/timeutil.h"
#include "config.h"
#include "ops/ops.h"
#include "server/server.h"

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#else
static int sd_notify(int unset, const char *state) { return 0; }
static int sd_notifyf(int unset, const char *fmt, ...) { return 0; }
#endif

void srv_log_request(srv_conn_t *k) {
    double now = lc_now_s();
    if (k->route == ROUTE_HEALTH || k->route == ROUTE_METRICS) {
        LC_DEBUG("req %s %s %d %.1fms", k->rid, k->path, k->status, (now - k->t0) * 1e3);
        return;
    }
    LC_INFO("req %s \"%s\" %d prompt=%d completion=%d cached=%d ttft=%.1fms total=%.1fms%s", k->rid, k->path, k->status,
            k->usage.prompt_tokens, k->usage.completion_tokens, k->usage.cached_tokens,
            k->t_first > 0 ? (k->t_first - k->t0) * 1e3 : 0.0, (now - k->t0) * 1e3,
            k->client_gone || k->status == 499 ? " client-gone" : "");
}

/* ---- settings that change live --------------------------------------------------------- */
static int apply_live(srv_t *s, const lc_config_t *c, char *err, size_t errlen) {
    char **keys;
    int n;
    if (lc_config_keys(c, &keys, &n, err, errlen)) return LC_EINVAL;
    srv_auth_set(&s->auth, keys, n);
    s->lim.max_n = c->max_n;
    s->lim.max_prompts = c->max_prompts;
    lc_log_level_t lvl;
    if (!lc_log_parse_level(c->log_level, &lvl)) lc_log_set_level(lvl);
    return 0;
}

static void on_sighup(uv_signal_t *h, int sig) {
    srv_t *s = h->data;
    sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)(lc_now_ns() / 1000));
    lc_config_t c;
    int action;
    char err[512];
    if (lc_config_from_args(&c, s->argc, s->argv, &action, err, sizeof(err)) || apply_live(s, &c, err, sizeof(err))) {
        LC_ERROR("reload failed, keeping the old settings: %s", err);
    } else {
        /* Live: keys, limits, log level, deadlines; the rest needs a restart. */
        s->cfg.max_body_bytes = c.max_body_bytes;
        s->cfg.request_deadline_s = c.request_deadline_s;
        s->cfg.keepalive_ping_s = c.keepalive_ping_s;
        s->cfg.max_n = c.max_n;
        s->cfg.max_prompts = c.max_prompts;
        s->cfg.auth_metrics = c.auth_metrics;
        snprintf(s->cfg.log_level, sizeof(s->cfg.log_level), "%s", c.log_level);
        LC_INFO("configuration reloaded (%d API key%s)", s->auth.n_keys, s->auth.n_keys == 1 ? "" : "s");
    }
    sd_notify(0, "READY=1\nSTATUS=serving");
}

/* ---- draining ------------------------------------------------------------------------------ */
static void on_drain_tick(uv_timer_t *t);

static void finish_shutdown(srv_t *s) {
    uv_timer_stop(&s->drain_timer);
    srv_http_stop(s);
    if (s->sched) sched_stop(s->sched);
    uv_signal_stop(&s->sig_term);
    uv_signal_stop(&s->sig_int);
    uv_signal_stop(&s->sig_hup);
    uv_close((uv_handle_t *)&s->wake, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    uv_close((uv_handle_t *)&s->sig_term, NULL);
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_hup, NULL);
    uv_close((uv_handle_t *)&s->mhd_poll, NULL);
    uv_close((uv_handle_t *)&s->mhd_timer, NULL);
    uv_close((uv_handle_t *)&s->sweep, NULL);
    uv_stop(s->loop);
}

static int busy(const srv_t *s) {
    for (const srv_conn_t *k = s->conns; k; k = k->next)
        if (!k->mhd_done && (k->route == ROUTE_COMPLETIONS || k->route == ROUTE_CHAT) && k->state != CONN_RECEIVING)
            return 1;
    return 0;
}

static void on_drain_tick(uv_timer_t *t) {
    srv_t *s = t->data;
    if (busy(s) && lc_now_s() < s->drain_deadline) return;
    if (busy(s))
        LC_WARN("drain timeout: cancelling the requests still running");
    else
        LC_INFO("drained; exiting");
    finish_shutdown(s);
}

static void on_sigterm(uv_signal_t *h, int sig) {
    srv_t *s = h->data;
    if (s->draining) {
        LC_WARN("second signal: exiting now");
        s->drain_deadline = 0;
        return;
    }
    s->draining = 1;
    s->drain_deadline = lc_now_s() + s->cfg.drain_timeout_s;
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    LC_INFO("signal %d: draining (up to %d s)", sig, s->cfg.drain_timeout_s);
    /* Stop accepting (new connections are refused; those already in the
     * backlog get 503); requests on connections already open get 503
     * "draining" and /health turns 503 so load balancers stop sending. */
    if (s->mhd) {
        s->listen_fd = MHD_quiesce_daemon(s->mhd);
        srv_http_close_listener(s);
    }
    if (s->sched) sched_drain(s->sched);
    uv_timer_start(&s->drain_timer, on_drain_tick, 0, 100);
}

/* ---- engine ------------------------------------------------------------------------------------ */
static void on_wake(uv_async_t *a) {
    srv_t *s = a->data;
    srv_gen_poll_all(s);
    srv_http_run(s);
}

static void heartbeat_cb(void *ud) { sd_notify(0, "WATCHDOG=1"); }

static void load_work(uv_work_t *w) {
    srv_t *s = w->data;
    s->model = model_load(s->cfg.model_path, s->load_err, sizeof(s->load_err));
    /* The token trie for response_format and forced tool calls: once per
     * model, shared read-only by every request. */
    if (s->model) s->gvocab = gram_vocab_create(model_tok(s->model));
}

static void sched_config_from(const lc_config_t *c, sched_config_t *sc) {
    sched_config_default(sc);
    snprintf(sc->device, sizeof sc->device, "%s", c->device);
    sc->block_size = c->block_size;
    sc->kv_gpu_fraction = c->kv_gpu_fraction;
    sc->gpu_fast_gemm = !c->deterministic;
    sc->gpu_no_graphs = !c->cuda_graphs;
    sc->target_step_ms = c->target_step_ms;
    sc->kv_blocks = c->kv_blocks;
    sc->kv_bytes = (size_t)c->kv_bytes;
    sc->max_batch_tokens = c->max_batch_tokens;
    sc->threads = c->threads;
    sc->max_running = c->max_running;
    sc->max_waiting = c->max_waiting;
    sc->prefill_chunk = c->prefill_chunk;
    sc->kv_watermark = c->kv_watermark;
    sc->enable_prefix_cache = c->prefix_cache;
    sc->kv_keep_sliding = c->kv_keep_sliding;
    attn_policy_default(&sc->attn_default);
    attn_prefill_method_parse(c->prefill_method, &sc->attn_default.prefill);
    attn_decode_method_parse(c->decode_method, &sc->attn_default.decode);
    sc->attn_default.gamma = (float)c->gamma;
    sc->attn_default.tau = (float)c->tau;
    sc->attn_default.theta = (float)c->theta;
    sc->attn_default.anchor_init = c->anchor_init;
    sc->attn_default.anchor_local = c->anchor_local;
    sc->attn_default.anchor_lookback = c->anchor_lookback;
    sc->attn_default.anchor_probe = (float)c->anchor_probe;
    sc->attn_default.min_budget = c->min_budget;
    attn_flex_select_parse(c->flex_select, &sc->attn_default.flex_select);
    sc->attn_default.decode_budget = c->decode_budget;
    sc->sparse_prefill_min_tokens = c->sparse_prefill_min_tokens;
    sc->sparse_decode_min_tokens = c->sparse_decode_min_tokens;
    sc->context_ranks = c->context;
    sc->context_min_tokens = c->context_min_tokens;
    snprintf(sc->context_devices, sizeof sc->context_devices, "%s", c->context_devices);
}

static void load_after(uv_work_t *w, int status) {
    srv_t *s = w->data;
    if (!s->model) {
        LC_ERROR("cannot load model %s: %s", s->cfg.model_path, s->load_err);
        s->exit_code = 1;
        finish_shutdown(s);
        return;
    }
    const model_hparams_t *hp = model_hparams(s->model);
    s->tok = model_tok(s->model);
    s->n_ctx = hp->n_ctx_train;
    s->n_vocab = hp->n_vocab;
    const chat_template_t *ct = model_chat_template(s->model);
    if (ct) s->chat = *ct;
    s->have_chat = ct != NULL;
    s->lim.tool_family = s->have_chat ? chat_family_name(s->chat.family) : "none";
    if (s->have_chat && chat_tool_syntax(&s->chat, &s->tool_syntax) == 0) s->lim.tool_syntax = &s->tool_syntax;
    if (s->gvocab)
        LC_INFO("constrained decoding: token trie of %d tokens, %.1f MiB", gram_vocab_n_tokens(s->gvocab),
                (double)gram_vocab_bytes(s->gvocab) / (1 << 20));
    sched_config_t sc;
    sched_config_from(&s->cfg, &sc);
    char err[512] = "";
    s->sched = sched_create(s->model, &sc, err, sizeof(err));
    if (!s->sched || sched_start(s->sched)) {
        LC_ERROR("cannot start the engine: %s", err);
        s->exit_code = 1;
        finish_shutdown(s);
        return;
    }
    sched_set_heartbeat_cb(s->sched, heartbeat_cb, s);
    s->loading = 0;
    LC_INFO("serving %s (%s, %d layers, ctx %d, chat template %s) on %s at http://%s:%d", s->served_name, hp->name,
            hp->n_layers, s->n_ctx, s->have_chat ? chat_family_name(s->chat.family) : "none", sched_device(s->sched),
            s->cfg.host, s->cfg.port);
    /* The engine thread's team: as configured, else what ops_cpu_init gives
     * any thread by default. */
    int nt = s->cfg.threads > 0 ? s->cfg.threads : ops_cpu_init(NULL, 0);
    const char *wp = getenv("OMP_WAIT_POLICY"), *spin = getenv("GOMP_SPINCOUNT");
    LC_INFO("cpu: %d engine thread%s, %s kernels, OpenMP wait: %s%s", nt, nt > 1 ? "s" : "",
            lc_cpu_level_name(lc_cpu_level()),
            wp     ? "OMP_WAIT_POLICY="
            : spin ? "GOMP_SPINCOUNT="
                   : "libgomp's default",
            wp     ? wp
            : spin ? spin
                   : "");
    sd_notifyf(0, "READY=1\nSTATUS=serving %s on %s:%d", s->served_name, s->cfg.host, s->cfg.port);
}

/* ---- start-up ---------------------------------------------------------------------------------- */
static void pick_served_name(srv_t *s) {
    if (s->cfg.served_name[0]) {
        snprintf(s->served_name, sizeof(s->served_name), "%s", s->cfg.served_name);
        return;
    }
    const char *base = strrchr(s->cfg.model_path, '/');
    base = base ? base + 1 : s->cfg.model_path;
    size_t n = strcspn(base, ".");
    snprintf(s->served_name, sizeof(s->served_name), "%.*s", (int)n, base);
}

int srv_configure(srv_t *s, int argc, char **argv) {
    char err[512] = "";
    int action = 0;
    if (lc_config_from_args(&s->cfg, argc, argv, &action, err, sizeof(err))) {
        fprintf(stderr, "lacunad: %s\n", err);
        return 2;
    }
    if (action == 2) {
        lc_config_usage(stdout, "lacunad");
        return 0;
    }
    if (action == 3) {
        printf("lacunad %s\n", PACKAGE_VERSION);
        return 0;
    }
    if (!s->cfg.model_path[0]) {
        fprintf(stderr, "lacunad: no model: set [model] path or pass --model\n");
        return 2;
    }
    if (apply_live(s, &s->cfg, err, sizeof(err))) {
        fprintf(stderr, "lacunad: %s\n", err);
        return 2;
    }
    if (action == 1) {
        if (access(s->cfg.model_path, R_OK)) {
            fprintf(stderr, "lacunad: model %s is not readable\n", s->cfg.model_path);
            return 2;
        }
        lc_config_print(&s->cfg, stdout);
        printf("# configuration OK (%d API key%s)\n", s->auth.n_keys, s->auth.n_keys == 1 ? "" : "s");
        return 0;
    }
    s->argc = argc;
    s->argv = argv;
    return SRV_SERVE;
}

/* The loop's handles and the listener; the model load is queued last. */
static int start(srv_t *s, char *err, size_t errlen) {
    signal(SIGPIPE, SIG_IGN);
    s->loop = uv_default_loop();
    s->loading = 1;
    s->created = lc_unix_time();
    pick_served_name(s);
    uv_timer_init(s->loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_async_init(s->loop, &s->wake, on_wake);
    s->wake.data = s;
    uv_signal_init(s->loop, &s->sig_term);
    uv_signal_init(s->loop, &s->sig_int);
    uv_signal_init(s->loop, &s->sig_hup);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_term, on_sigterm, SIGTERM);
    uv_signal_start(&s->sig_int, on_sigterm, SIGINT);
    uv_signal_start(&s->sig_hup, on_sighup, SIGHUP);
    int rc = srv_http_start(s, err, errlen);
    if (rc) return rc;
    LC_INFO("listening on http://%s:%d; loading %s", s->cfg.host, s->cfg.port, s->cfg.model_path);
    sd_notifyf(0, "STATUS=loading %s", s->cfg.model_path);
    s->load_work.data = s;
    uv_queue_work(s->loop, &s->load_work, load_work, load_after);
    return 0;
}

int srv_serve(srv_t *s) {
    char err[512] = "";
    if (start(s, err, sizeof(err))) {
        LC_ERROR("%s", err);
        return 1;
    }
    uv_run(s->loop, UV_RUN_DEFAULT);
    /* Let closed handles finish. */
    uv_run(s->loop, UV_RUN_NOWAIT);
    if (s->sched) sched_destroy(s->sched);
    gram_vocab_destroy(s->gvocab);
    s->gvocab = NULL;
    if (s->model) model_free(s->model);
    srv_auth_fini(&s->auth);
    return s->exit_code;
}
