// The GPU executor's step profile (LACUNA_CUDA_PROFILE=1): where the decode
// steps spend their time, on the host and on the GPU, logged when the
// executor goes. exec_cuda_step.cu marks the phases; see
// docs/operations.md.
#include "model/exec_cuda_int.cuh"

/* Where the decode steps (no prompt rows) spend their time: host phases by
 * the monotonic clock, GPU phases by events on the stream (before the
 * uploads, after the plans, after each piece and each attention call, after
 * the logits), summed over steps and reported when the executor goes. The
 * events cost a few µs of host time a layer; off, nothing is recorded. */
enum { HP_BUILD, HP_UPLOAD, HP_PLAN, HP_ENQUEUE, HP_LOGITS, HP_SYNC, HP_COUNT, HP_N };
enum { GP_PLAN, GP_PIECES, GP_ATTN, GP_LOGITS, GP_ALL, GP_N };

struct step_prof {
    int n_ev; // 2 (L + 1) + 2: start, planned, per piece and attention call, end
    cudaEvent_t *ev;
    double host[HP_N]; // seconds
    double gpu[GP_N];  // milliseconds
    double rows;       // decode rows, summed over steps
    double create;     // seconds creating sparse decode plans (all steps)
    long n_create;     // sparse decode plans created (all steps)
    long n_grow;       // workspaces grown (all steps)
    size_t grown;      // the largest size grown to
    long steps;
    struct timespec t[HP_N + 1];
};

double model_cuda__prof_now(const model_cuda_t *c) {
    if (!c->prof) return 0;
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

void model_cuda__prof_created(model_cuda_t *c, double t0) {
    if (!c->prof) return;
    c->prof->create += model_cuda__prof_now(c) - t0;
    c->prof->n_create++;
}

void model_cuda__prof_grow(model_cuda_t *c, size_t bytes) {
    if (!c->prof) return;
    c->prof->n_grow++;
    if (bytes > c->prof->grown) c->prof->grown = bytes;
}

static double ts_sec(const struct timespec *a, const struct timespec *b) {
    return (double)(b->tv_sec - a->tv_sec) + 1e-9 * (double)(b->tv_nsec - a->tv_nsec);
}

void model_cuda__prof_create(model_cuda_t *c) {
    const char *e = getenv("LACUNA_CUDA_PROFILE");
    if (!e || !*e || !strcmp(e, "0")) return;
    const int L = c->m->hp.n_layers;
    struct step_prof *p = (struct step_prof *)calloc(1, sizeof *p);
    if (p) p->ev = (cudaEvent_t *)calloc((size_t)2 * (L + 1) + 2, sizeof *p->ev);
    if (!p || !p->ev) {
        free(p);
        LC_WARN("cuda: no memory for the step profile; it stays off");
        return;
    }
    p->n_ev = 2 * (L + 1) + 2;
    for (int i = 0; i < p->n_ev; i++)
        if (cudaEventCreate(&p->ev[i]) != cudaSuccess) {
            LC_WARN("cuda: cannot create the step profile's events; it stays off");
            for (int j = 0; j < i; j++) cudaEventDestroy(p->ev[j]);
            free(p->ev);
            free(p);
            return;
        }
    c->prof = p;
}

void model_cuda__prof_destroy(model_cuda_t *c) {
    struct step_prof *p = c->prof;
    if (!p) return;
    if (p->steps) {
        const double n = (double)p->steps, L = c->m->hp.n_layers;
        double wall = 0;
        for (int i = 0; i < HP_N; i++) wall += p->host[i];
        LC_INFO("cuda profile: %ld decode steps, %.1f rows each; host ms/step: %.3f = build %.3f, upload %.3f, plan "
                "%.3f, enqueue %.3f, logits and wait %.3f, sync %.3f, count %.3f; GPU ms/step: %.3f = uploads and "
                "plans %.3f, pieces %.3f, attention %.3f (%.1f us a layer), logits %.3f",
                p->steps, p->rows / n, 1e3 * wall / n, 1e3 * p->host[HP_BUILD] / n, 1e3 * p->host[HP_UPLOAD] / n,
                1e3 * p->host[HP_PLAN] / n, 1e3 * p->host[HP_ENQUEUE] / n, 1e3 * p->host[HP_LOGITS] / n,
                1e3 * p->host[HP_SYNC] / n, 1e3 * p->host[HP_COUNT] / n, p->gpu[GP_ALL] / n, p->gpu[GP_PLAN] / n,
                p->gpu[GP_PIECES] / n, p->gpu[GP_ATTN] / n, 1e3 * p->gpu[GP_ATTN] / n / L, p->gpu[GP_LOGITS] / n);
        LC_INFO("cuda profile: over all steps: %ld sparse decode plans created in %.3f s, %ld workspaces grown "
                "(the largest to %zu bytes)",
                p->n_create, p->create, p->n_grow, p->grown);
    }
    for (int i = 0; i < p->n_ev; i++) cudaEventDestroy(p->ev[i]);
    free(p->ev);
    free(p);
    c->prof = NULL;
}

/* Host mark k (0: the step's start, k: the end of host phase k - 1). */
void model_cuda__prof_mark(model_cuda_t *c, int k) {
    if (c->prof) clock_gettime(CLOCK_MONOTONIC, &c->prof->t[k]);
}

/* Event i on the stream: 0 before the uploads, 1 after the plans, 2 + 2 i
 * after piece i, 3 + 2 i after attention call i, n_ev - 1 after the logits. */
void model_cuda__prof_event(model_cuda_t *c, int i) {
    if (c->prof) cudaEventRecord(c->prof->ev[i < 0 ? c->prof->n_ev - 1 : i], c->stream);
}

static float prof_ms(const struct step_prof *p, int a, int b) {
    float ms = 0;
    return cudaEventElapsedTime(&ms, p->ev[a], p->ev[b]) == cudaSuccess ? ms : 0.0f;
}

/* After the step's sync: adds a decode step's phases (decode: the step had
 * no prompt rows; rows: its rows, padding included). */
void model_cuda__prof_step(model_cuda_t *c, int decode, int rows) {
    struct step_prof *p = c->prof;
    if (!p || !decode) return;
    const int L = c->m->hp.n_layers, end = p->n_ev - 1;
    for (int i = 0; i < HP_N; i++) p->host[i] += ts_sec(&p->t[i], &p->t[i + 1]);
    p->gpu[GP_PLAN] += prof_ms(p, 0, 1);
    for (int i = 0; i <= L; i++) {
        p->gpu[GP_PIECES] += prof_ms(p, i ? 3 + 2 * (i - 1) : 1, 2 + 2 * i);
        if (i < L) p->gpu[GP_ATTN] += prof_ms(p, 2 + 2 * i, 3 + 2 * i);
    }
    p->gpu[GP_LOGITS] += prof_ms(p, 2 + 2 * L, end);
    p->gpu[GP_ALL] += prof_ms(p, 0, end);
    p->rows += rows;
    p->steps++;
}
