/* Prometheus text exposition for GET /metrics: the engine's counters and
 * histograms (sched_metrics_t) plus the HTTP front end's own counters, with
 * names mirroring vLLM's under the `lacuna:` prefix. */
#ifndef SRV_METRICS_H
#define SRV_METRICS_H

#include <stdint.h>

#include "scheduler/sched.h"
#include "server/respond.h"

/* HTTP status classes the front end counts (loop thread only). */
#define SRV_HTTP_CODES(X) X(200) X(400) X(401) X(404) X(405) X(408) X(413) X(429) X(500) X(503)

typedef struct {
    uint64_t by_code[600];     // index: status code
    uint64_t connections_open; // gauge
    uint64_t streams_open;     // gauge
    uint64_t cancelled_total;  // requests cancelled by a client disconnect
} srv_http_counts_t;

/* Appends the exposition to out. 0 or LC_ENOMEM. */
int srv_metrics_render(srv_buf_t *out, const char *model_name, const sched_metrics_t *m, const srv_http_counts_t *h);

#endif
