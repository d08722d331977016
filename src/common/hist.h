/* Fixed-bucket histograms for latency metrics: per-bucket counts, sum and
 * count, which server/metrics.c renders in Prometheus shape (cumulative
 * buckets). Observation and snapshot are thread-safe. */
#ifndef LC_HIST_H
#define LC_HIST_H

#include <pthread.h>
#include <stdint.h>

#define LC_HIST_MAX_BUCKETS 24

typedef struct {
    int n_bounds;                             // finite upper bounds; +Inf is implicit
    double bounds[LC_HIST_MAX_BUCKETS];       // ascending, seconds
    uint64_t counts[LC_HIST_MAX_BUCKETS + 1]; // per bucket (not cumulative); last = +Inf
    double sum;
    uint64_t count;
} lc_hist_snapshot_t;

typedef struct {
    pthread_mutex_t lock;
    lc_hist_snapshot_t h;
} lc_hist_t;

/* bounds: ascending, at most LC_HIST_MAX_BUCKETS. */
void lc_hist_init(lc_hist_t *h, const double *bounds, int n_bounds);
void lc_hist_fini(lc_hist_t *h);
void lc_hist_observe(lc_hist_t *h, double v);
void lc_hist_snapshot(lc_hist_t *h, lc_hist_snapshot_t *out);

/* Standard bucket sets (seconds). */
extern const double LC_HIST_LATENCY_BOUNDS[]; // 1 ms .. 160 s
extern const int LC_HIST_LATENCY_N;
extern const double LC_HIST_ITL_BOUNDS[]; // 1 ms .. 10 s
extern const int LC_HIST_ITL_N;

#endif
