/* See cp_team.h. */
#include "attn/cp/cp_team.h"

#include <pthread.h>
#include <stdlib.h>

#include "attn/cp/cp_comm.h"
#include "common/status.h"

typedef struct {
    cp_team_t *t;
    int rank;
} arg_t;

struct cp_team {
    int n, n_started;
    cp_team_ops_t ops;
    pthread_t th[CP_MAX_RANKS];
    arg_t args[CP_MAX_RANKS];
    pthread_mutex_t lock;
    pthread_cond_t go, done;
    unsigned gen; // the job's number: a rank runs each once
    int n_done, quit;
    int rc[CP_MAX_RANKS];
};

static void *rank_main(void *a) {
    cp_team_t *t = ((arg_t *)a)->t;
    const int r = ((arg_t *)a)->rank;
    if (t->ops.thread_init) t->ops.thread_init(t->ops.ctx, r);
    unsigned seen = 0;
    pthread_mutex_lock(&t->lock);
    for (;;) {
        while (t->gen == seen && !t->quit) pthread_cond_wait(&t->go, &t->lock);
        if (t->quit) break;
        seen = t->gen;
        pthread_mutex_unlock(&t->lock);
        const int rc = t->ops.job(t->ops.ctx, r);
        if (rc && t->ops.abort) t->ops.abort(t->ops.ctx);
        pthread_mutex_lock(&t->lock);
        t->rc[r] = rc;
        if (++t->n_done == t->n) pthread_cond_signal(&t->done);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

cp_team_t *cp_team_create(int n, const cp_team_ops_t *ops) {
    if (n < 1 || n > CP_MAX_RANKS || !ops || !ops->job) return NULL;
    cp_team_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->n = n;
    t->ops = *ops;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->go, NULL);
    pthread_cond_init(&t->done, NULL);
    for (int r = 0; r < n; r++) {
        t->args[r] = (arg_t){t, r};
        if (pthread_create(&t->th[r], NULL, rank_main, &t->args[r])) {
            cp_team_destroy(t);
            return NULL;
        }
        t->n_started++;
    }
    return t;
}

void cp_team_destroy(cp_team_t *t) {
    if (!t) return;
    pthread_mutex_lock(&t->lock);
    t->quit = 1;
    pthread_cond_broadcast(&t->go);
    pthread_mutex_unlock(&t->lock);
    for (int r = 0; r < t->n_started; r++) pthread_join(t->th[r], NULL);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->go);
    pthread_cond_destroy(&t->done);
    free(t);
}

int cp_team_run(cp_team_t *t) {
    pthread_mutex_lock(&t->lock);
    t->n_done = 0;
    t->gen++;
    pthread_cond_broadcast(&t->go);
    while (t->n_done < t->n) pthread_cond_wait(&t->done, &t->lock);
    pthread_mutex_unlock(&t->lock);
    int rc = 0;
    for (int r = 0; r < t->n; r++)
        if (t->rc[r] && (!rc || rc == LC_ECANCELED)) rc = t->rc[r]; // the cause, not its echoes
    return rc;
}
