/* Prometheus text rendering. Kept separate from the HTTP code so the exact
 * text is unit-tested (tests/check_server.c). */
#include "server/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/status.h"

static int out_printf(srv_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int out_printf(srv_buf_t *b, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0) return LC_EINVAL;
    return srv_buf_append(b, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static int gauge(srv_buf_t *b, const char *name, const char *help, const char *model, double v) {
    return out_printf(b, "# HELP lacuna:%s %s\n# TYPE lacuna:%s gauge\nlacuna:%s{model_name=\"%s\"} %.17g\n", name,
                      help, name, name, model, v);
}

static int counter(srv_buf_t *b, const char *name, const char *help, const char *model, double v) {
    return out_printf(b, "# HELP lacuna:%s %s\n# TYPE lacuna:%s counter\nlacuna:%s{model_name=\"%s\"} %.17g\n", name,
                      help, name, name, model, v);
}

static int histogram(srv_buf_t *b, const char *name, const char *help, const char *model, const lc_hist_snapshot_t *h) {
    int rc = out_printf(b, "# HELP lacuna:%s %s\n# TYPE lacuna:%s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds && !rc; i++) {
        cum += h->counts[i];
        rc = out_printf(b, "lacuna:%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model, h->bounds[i],
                        (unsigned long long)cum);
    }
    if (!rc)
        rc = out_printf(b, "lacuna:%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model,
                        (unsigned long long)h->count);
    if (!rc) rc = out_printf(b, "lacuna:%s_sum{model_name=\"%s\"} %.17g\n", name, model, h->sum);
    if (!rc) rc = out_printf(b, "lacuna:%s_count{model_name=\"%s\"} %llu\n", name, model, (unsigned long long)h->count);
    return rc;
}

/* One series per rank of a context-parallel executor. */
static int per_rank(srv_buf_t *b, const char *name, const char *type, const char *help, const char *model, int n,
                    const double *v) {
    int rc = out_printf(b, "# HELP lacuna:%s %s\n# TYPE lacuna:%s %s\n", name, help, name, type);
    for (int r = 0; r < n && !rc; r++)
        rc = out_printf(b, "lacuna:%s{model_name=\"%s\",rank=\"%d\"} %.17g\n", name, model, r, v[r]);
    return rc;
}

static int cp_metrics(srv_buf_t *b, const char *model, const model_exec_cp_stats_t *cp) {
    const int n = cp->ranks < MODEL_CP_MAX_RANKS ? cp->ranks : MODEL_CP_MAX_RANKS;
    double v[MODEL_CP_MAX_RANKS] = {0};
    int rc = gauge(b, "cp_ranks", "Context-parallel ranks.", model, n);
    rc |=
        counter(b, "cp_sharded_rows_total", "Batch rows whose attention ran sharded.", model, (double)cp->sharded_rows);
    for (int r = 0; r < n; r++) v[r] = (double)cp->kv_blocks[r];
    rc |= per_rank(b, "cp_kv_blocks", "gauge", "KV blocks in use held by each rank.", model, n, v);
    for (int r = 0; r < n; r++) v[r] = (double)cp->ring_steps[r];
    rc |= per_rank(b, "cp_ring_steps_total", "counter", "Ring steps run.", model, n, v);
    for (int r = 0; r < n; r++) v[r] = (double)cp->steps_skipped[r];
    rc |= per_rank(b, "cp_ring_steps_skipped_total", "counter", "Ring steps with nothing to compute (sparse).", model,
                   n, v);
    rc |= per_rank(b, "cp_compute_seconds_total", "counter", "Attention compute inside ring steps.", model, n,
                   cp->compute_s);
    rc |= per_rank(b, "cp_wait_seconds_total", "counter", "Waiting for a ring step's transfer after its compute.",
                   model, n, cp->wait_s);
    rc |= per_rank(b, "cp_collective_seconds_total", "counter",
                   "Halos, selections, all-to-alls and decode merges of the sharded attention.", model, n,
                   cp->collective_s);
    return rc;
}

int srv_metrics_render(srv_buf_t *b, const char *model, const sched_metrics_t *m, const srv_http_counts_t *h) {
    int rc = 0;
    rc |= gauge(b, "num_requests_running", "Requests in the running set.", model, m->running);
    rc |= gauge(b, "num_requests_waiting", "Requests waiting to be scheduled.", model, m->waiting);
    rc |= gauge(b, "kv_cache_usage_perc", "Fraction of KV blocks in use (0-1).", model, m->kv_usage);
    rc |= gauge(b, "kv_blocks_used", "KV blocks in use.", model, (double)m->kv_blocks_used);
    rc |= gauge(b, "kv_blocks_total", "KV blocks in the pool.", model, (double)m->kv_blocks_total);
    rc |= counter(b, "prompt_tokens_total", "Prompt tokens processed.", model, (double)m->prompt_tokens_total);
    rc |= counter(b, "generation_tokens_total", "Tokens generated.", model, (double)m->generation_tokens_total);
    rc |= counter(b, "num_preemptions_total", "Preemptions (recomputation).", model, (double)m->preemptions_total);
    rc |= counter(b, "engine_steps_total", "Engine steps run.", model, (double)m->steps_total);
    rc |= counter(b, "engine_forward_seconds_total", "Time in the executor's forward pass (logits on the host).", model,
                  m->forward_seconds);
    rc |= counter(b, "engine_sample_seconds_total", "Time sampling and emitting tokens after the forward pass.", model,
                  m->sample_seconds);
    rc |= counter(b, "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", model,
                  (double)m->prefix_queried_tokens);
    rc |= counter(b, "prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", model,
                  (double)m->prefix_hit_tokens);
    static const char *const reasons[] = {"none", "stop", "length", "cancelled", "error"};
    rc |= out_printf(b, "# HELP lacuna:request_success_total Finished requests by finish reason.\n"
                        "# TYPE lacuna:request_success_total counter\n");
    for (int i = 1; i < 5; i++)
        rc |= out_printf(b, "lacuna:request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %llu\n", model,
                         reasons[i], (unsigned long long)m->requests_finished[i]);
    rc |= histogram(b, "time_to_first_token_seconds", "Time to first token.", model, &m->ttft);
    rc |= histogram(b, "inter_token_latency_seconds", "Time between generated tokens.", model, &m->itl);
    rc |= histogram(b, "e2e_request_latency_seconds", "End-to-end request latency.", model, &m->e2e);
    rc |= histogram(b, "request_queue_time_seconds", "Time waiting before first scheduled.", model, &m->queue);
    double cnt = m->density_count ? (double)m->density_count : 0;
    rc |= out_printf(b, "# HELP lacuna:attention_density Mean fraction of query-key blocks computed.\n"
                        "# TYPE lacuna:attention_density gauge\n");
    rc |= out_printf(b, "lacuna:attention_density{model_name=\"%s\",phase=\"prefill\"} %.17g\n", model,
                     cnt ? m->prefill_density_sum / cnt : 1.0);
    rc |= out_printf(b, "lacuna:attention_density{model_name=\"%s\",phase=\"decode\"} %.17g\n", model,
                     m->decode_density_count ? m->decode_density_sum / (double)m->decode_density_count : 1.0);
    if (m->cp.ranks > 1) rc |= cp_metrics(b, model, &m->cp);
    if (h) {
        rc |= out_printf(b, "# HELP lacuna:http_requests_total HTTP responses by status code.\n"
                            "# TYPE lacuna:http_requests_total counter\n");
        for (int code = 100; code < 600; code++)
            if (h->by_code[code])
                rc |= out_printf(b, "lacuna:http_requests_total{code=\"%d\"} %llu\n", code,
                                 (unsigned long long)h->by_code[code]);
        rc |= out_printf(b,
                         "# HELP lacuna:http_connections_open Open HTTP connections.\n"
                         "# TYPE lacuna:http_connections_open gauge\nlacuna:http_connections_open %llu\n",
                         (unsigned long long)h->connections_open);
        rc |= out_printf(b,
                         "# HELP lacuna:http_streams_open Open SSE streams.\n"
                         "# TYPE lacuna:http_streams_open gauge\nlacuna:http_streams_open %llu\n",
                         (unsigned long long)h->streams_open);
        rc |= out_printf(b,
                         "# HELP lacuna:client_disconnects_total Requests cancelled because the client left.\n"
                         "# TYPE lacuna:client_disconnects_total counter\nlacuna:client_disconnects_total %llu\n",
                         (unsigned long long)h->cancelled_total);
    }
    return rc ? LC_ENOMEM : 0;
}
