/* Context parallelism in the CPU executor: N rank threads, each with its
 * endpoint of a threads communicator (attn/cp/cp_comm.h) and its own plan
 * (attn/cp/cp_attn.h), driven by the engine thread one job at a time: plan
 * the step's sharded sequences, then run a layer. A rank thread's OpenMP
 * team is the engine's team divided by N, so the ranks together use the
 * threads the engine would.
 *
 * A rank that fails inside a job aborts the group so that its peers return
 * from their collectives instead of waiting for it; the engine resets the
 * group after the job, and the step fails with that status. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_comm.h"
#include "attn/cp/cp_team.h"
#include "common/status.h"
#include "model/model_internal.h"

enum { JOB_NONE, JOB_PLAN, JOB_RUN };

struct model_cp {
    int n;
    cp_threads_t *group;
    cp_plan_t **plans;
    cp_team_t *team_th; // the rank threads
    /* the job */
    int kind, team;
    const cp_batch_t *batch;
    int layer;
    int64_t window;
    attn_store_t store;
    const float *q;
    float *out;
    /* counters for the metrics thread */
    pthread_mutex_t slock;
    cp_timing_t *timing; // (n) as of the last job
};

/* Rank r's part of the job set in cp (cp_team_t's job). */
static int rank_job(void *ctx, int r) {
    model_cp_t *cp = ctx;
    if (cp->kind == JOB_PLAN) {
#ifdef _OPENMP
        omp_set_num_threads(cp->team);
#endif
        return cp_plan(cp->plans[r], cp->batch);
    }
    return cp_run(cp->plans[r], cp_threads_comm(cp->group, r), cp->layer, cp->window, &cp->store, cp->q, cp->out, NULL);
}

static void rank_abort(void *ctx) { cp_threads_abort(((model_cp_t *)ctx)->group); }

model_cp_t *model_cp_create(const attn_shape_t *shape, const model_hparams_t *hp, int n_ranks) {
    if (n_ranks < 2 || n_ranks > CP_MAX_RANKS) return NULL;
    model_cp_t *cp = calloc(1, sizeof *cp);
    int64_t *win = calloc((size_t)hp->n_layers, sizeof *win); // the layers' own windows
    if (!cp || !win) return free(cp), free(win), NULL;
    for (int l = 0; l < hp->n_layers; l++) win[l] = hp->layer[l].window;
    cp->n = n_ranks;
    pthread_mutex_init(&cp->slock, NULL);
    cp->group = cp_threads_create(n_ranks);
    cp->plans = calloc((size_t)n_ranks, sizeof *cp->plans);
    cp->timing = calloc((size_t)n_ranks, sizeof *cp->timing);
    if (!cp->group || !cp->plans || !cp->timing) goto fail;
    for (int r = 0; r < n_ranks; r++)
        if (!(cp->plans[r] = cp_plan_create(shape, hp->n_layers, r, n_ranks)) || cp_plan_windows(cp->plans[r], win))
            goto fail;
    const cp_team_ops_t ops = {rank_job, rank_abort, NULL, cp};
    if (!(cp->team_th = cp_team_create(n_ranks, &ops))) goto fail;
    free(win);
    return cp;
fail:
    free(win);
    model_cp_destroy(cp);
    return NULL;
}

void model_cp_destroy(model_cp_t *cp) {
    if (!cp) return;
    cp_team_destroy(cp->team_th);
    for (int r = 0; cp->plans && r < cp->n; r++) cp_plan_destroy(cp->plans[r]);
    cp_threads_destroy(cp->group);
    pthread_mutex_destroy(&cp->slock);
    free(cp->plans), free(cp->timing);
    free(cp);
}

/* Runs the job set in cp on every rank; the first failing status. */
static int dispatch(model_cp_t *cp) {
    const int rc = cp_team_run(cp->team_th);
    if (rc) cp_threads_reset(cp->group);
    pthread_mutex_lock(&cp->slock);
    for (int r = 0; r < cp->n; r++) cp->timing[r] = *cp_plan_timing(cp->plans[r]);
    pthread_mutex_unlock(&cp->slock);
    return rc;
}

int model_cp_plan(model_cp_t *cp, const cp_batch_t *b, int team) {
    cp->kind = JOB_PLAN;
    cp->batch = b;
    cp->team = team / cp->n > 0 ? team / cp->n : 1;
    return dispatch(cp);
}

int model_cp_run(model_cp_t *cp, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out) {
    cp->kind = JOB_RUN;
    cp->layer = layer;
    cp->window = window;
    cp->store = *kv;
    cp->q = q;
    cp->out = out;
    return dispatch(cp);
}

double model_cp_computed(const model_cp_t *cp, int i) {
    double s = 0;
    for (int r = 0; r < cp->n; r++) s += cp_plan_computed(cp->plans[r], i);
    return s;
}

void model_cp_timing(model_cp_t *cp, cp_timing_t *out) {
    pthread_mutex_lock(&cp->slock);
    memcpy(out, cp->timing, sizeof *out * (size_t)cp->n);
    pthread_mutex_unlock(&cp->slock);
}
