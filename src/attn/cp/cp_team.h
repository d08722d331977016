/* A team of rank threads: one host thread per rank of a context-parallel
 * group, each running the caller's job for its rank when the driving thread
 * asks, all of them at once (their collectives meet each other), the driver
 * waiting until every rank is done. The CPU executor (model/forward_cp.c)
 * and the CUDA executor (model/exec_cuda_cp.cu) drive their ranks with it.
 *
 * A rank whose job fails calls the team's abort (the communicator's, so
 * that its peers return from their transfers instead of waiting for it);
 * cp_team_run then returns the first cause in rank order (a status other
 * than LC_ECANCELED, the peers' echo), and the caller resets its
 * communicator before the next job. */
#ifndef LC_ATTN_CP_TEAM_H
#define LC_ATTN_CP_TEAM_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int (*job)(void *ctx, int rank);          // the job of one rank: 0 or a negative lc status
    void (*abort)(void *ctx);                 // on a failing job (any rank thread); may be NULL
    void (*thread_init)(void *ctx, int rank); // once, on the rank's thread before its first job; may be NULL
    void *ctx;
} cp_team_ops_t;

typedef struct cp_team cp_team_t;

/* n rank threads (1 .. CP_MAX_RANKS); NULL when they cannot start. */
cp_team_t *cp_team_create(int n, const cp_team_ops_t *ops);
/* Stops and joins the threads (between jobs). */
void cp_team_destroy(cp_team_t *t);
/* Runs the job on every rank and waits; 0 or the first cause. */
int cp_team_run(cp_team_t *t);

#ifdef __cplusplus
}
#endif
#endif
