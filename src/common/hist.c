/* Histogram storage behind a mutex: observations come from the engine thread,
 * snapshots from the loop thread rendering /metrics. */
#include "common/hist.h"

#include <string.h>

const double LC_HIST_LATENCY_BOUNDS[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25, 0.5,
                                         0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0};
const int LC_HIST_LATENCY_N = (int)(sizeof LC_HIST_LATENCY_BOUNDS / sizeof LC_HIST_LATENCY_BOUNDS[0]);
const double LC_HIST_ITL_BOUNDS[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                     0.3,   0.4,   0.5,  0.75,  1.0,  2.5,   5.0, 10.0};
const int LC_HIST_ITL_N = (int)(sizeof LC_HIST_ITL_BOUNDS / sizeof LC_HIST_ITL_BOUNDS[0]);

void lc_hist_init(lc_hist_t *h, const double *bounds, int n_bounds) {
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->lock, NULL);
    if (n_bounds > LC_HIST_MAX_BUCKETS) n_bounds = LC_HIST_MAX_BUCKETS;
    h->h.n_bounds = n_bounds;
    memcpy(h->h.bounds, bounds, (size_t)n_bounds * sizeof *bounds);
}

void lc_hist_fini(lc_hist_t *h) { pthread_mutex_destroy(&h->lock); }

void lc_hist_observe(lc_hist_t *h, double v) {
    pthread_mutex_lock(&h->lock);
    int i = 0;
    while (i < h->h.n_bounds && v > h->h.bounds[i]) i++;
    h->h.counts[i]++;
    h->h.sum += v;
    h->h.count++;
    pthread_mutex_unlock(&h->lock);
}

void lc_hist_snapshot(lc_hist_t *h, lc_hist_snapshot_t *out) {
    pthread_mutex_lock(&h->lock);
    *out = h->h;
    pthread_mutex_unlock(&h->lock);
}
