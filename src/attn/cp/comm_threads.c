/* The CPU communicator: n ranks in this process, one thread each. Each
 * ordered pair of ranks (src -> dst) is a channel with a queue of posted
 * sends and a queue of posted receives; a post that finds its counterpart
 * at the head of the other queue is a match, and the posting thread copies
 * the bytes (outside the lock) and marks both halves done. So nothing moves
 * until both sides have posted, nothing waits for a copy thread, and the
 * data of a transfer is read from the sender's buffer exactly once, as a
 * device copy or an NCCL send would read it.
 *
 * One mutex and one condition variable serve the group: transfers here are a
 * few per ring step, and the copies run unlocked. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_comm_int.h"
#include "common/status.h"

/* One half of a transfer. */
typedef struct {
    const void *sbuf; // send half
    void *rbuf;       // receive half
    size_t bytes;
    int done; // 1: copied (or failed)
    int err;
} half_t;

/* A queue of posted halves waiting for their counterpart. */
typedef struct {
    half_t *q[CP_MAX_PENDING];
    int head, n;
} hq_t;

typedef struct {
    hq_t sends, recvs;
} chan_t;

/* A request slot: its send and receive halves (either may be unused). */
typedef struct {
    half_t send, recv;
    int has_send, has_recv;
} slot_t;

typedef struct {
    cp_threads_t *g;
    slot_t slots[CP_MAX_PENDING];
} ep_t;

struct cp_threads {
    int n;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    chan_t *chan; // (n, n): chan[src * n + dst]
    cp_comm_t *comms;
    ep_t *eps;
    int barrier_count;
    unsigned barrier_gen;
    int aborted; // cp_threads_abort: every wait returns LC_ECANCELED
};

static void hq_push(hq_t *q, half_t *h) { q->q[(q->head + q->n++) % CP_MAX_PENDING] = h; }
static half_t *hq_pop(hq_t *q) {
    if (!q->n) return NULL;
    half_t *h = q->q[q->head];
    q->head = (q->head + 1) % CP_MAX_PENDING;
    q->n--;
    return h;
}

/* Copies a matched pair outside the lock, then marks both done. */
static void complete(cp_threads_t *g, half_t *s, half_t *r) {
    int err = s->bytes != r->bytes ? LC_EINVAL : 0;
    if (!err && s->bytes) memcpy(r->rbuf, s->sbuf, s->bytes);
    pthread_mutex_lock(&g->lock);
    s->err = r->err = err;
    s->done = r->done = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static int th_start(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src,
                    int slot) {
    ep_t *ep = c->impl;
    cp_threads_t *g = ep->g;
    slot_t *sl = &ep->slots[slot];
    sl->has_send = dst >= 0;
    sl->has_recv = src >= 0;
    sl->send = (half_t){.sbuf = sbuf, .bytes = sbytes, .done = !sl->has_send};
    sl->recv = (half_t){.rbuf = rbuf, .bytes = rbytes, .done = !sl->has_recv};
    half_t *ms = NULL, *mr = NULL, *ps = NULL, *pr = NULL; // matches: (my send, peer recv), (peer send, my recv)
    pthread_mutex_lock(&g->lock);
    if (g->aborted) {
        sl->send.done = sl->recv.done = 1;
        sl->send.err = sl->recv.err = LC_ECANCELED;
        pthread_mutex_unlock(&g->lock);
        return 0; // the wait reports it
    }
    if (sl->has_send) {
        chan_t *ch = &g->chan[(size_t)c->rank * g->n + dst];
        if ((pr = hq_pop(&ch->recvs)))
            ms = &sl->send;
        else
            hq_push(&ch->sends, &sl->send);
    }
    if (sl->has_recv) {
        chan_t *ch = &g->chan[(size_t)src * g->n + c->rank];
        if ((ps = hq_pop(&ch->sends)))
            mr = &sl->recv;
        else
            hq_push(&ch->recvs, &sl->recv);
    }
    pthread_mutex_unlock(&g->lock);
    if (ms) complete(g, ms, pr);
    if (mr) complete(g, ps, mr);
    return 0;
}

static int th_wait(cp_comm_t *c, int slot) {
    ep_t *ep = c->impl;
    cp_threads_t *g = ep->g;
    slot_t *sl = &ep->slots[slot];
    pthread_mutex_lock(&g->lock);
    while ((!sl->send.done || !sl->recv.done) && !g->aborted) pthread_cond_wait(&g->cond, &g->lock);
    const int cut = !sl->send.done || !sl->recv.done;
    pthread_mutex_unlock(&g->lock);
    if (cut) return LC_ECANCELED;
    return sl->send.err ? sl->send.err : sl->recv.err;
}

static int th_copy(cp_comm_t *c, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memmove(dst, src, bytes);
    return 0;
}

static int th_add(cp_comm_t *c, float *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i] + dst[i];
    return 0;
}

static void *th_alloc(cp_comm_t *c, size_t bytes) { return malloc(bytes ? bytes : 1); }
static void th_free(cp_comm_t *c, void *p) { free(p); }

/* A generation-counted barrier on the group lock: moves no data. */
static int th_barrier(cp_comm_t *c) {
    cp_threads_t *g = ((ep_t *)c->impl)->g;
    pthread_mutex_lock(&g->lock);
    unsigned gen = g->barrier_gen;
    if (++g->barrier_count == g->n) {
        g->barrier_count = 0;
        g->barrier_gen++;
        pthread_cond_broadcast(&g->cond);
    } else {
        while (gen == g->barrier_gen && !g->aborted) pthread_cond_wait(&g->cond, &g->lock);
    }
    const int cut = gen == g->barrier_gen && g->aborted;
    pthread_mutex_unlock(&g->lock);
    return cut ? LC_ECANCELED : 0;
}

static const cp_comm_ops_t threads_ops = {
    .kind = "threads",
    .start = th_start,
    .wait = th_wait,
    .copy = th_copy,
    .add = th_add,
    .alloc = th_alloc,
    .free = th_free,
    .barrier = th_barrier,
};

cp_threads_t *cp_threads_create(int n) {
    if (n < 1 || n > CP_MAX_RANKS) return NULL;
    cp_threads_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->n = n;
    g->chan = calloc((size_t)n * n, sizeof *g->chan);
    g->comms = calloc((size_t)n, sizeof *g->comms);
    g->eps = calloc((size_t)n, sizeof *g->eps);
    if (!g->chan || !g->comms || !g->eps) {
        free(g->chan), free(g->comms), free(g->eps), free(g);
        return NULL;
    }
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    for (int r = 0; r < n; r++) {
        g->eps[r].g = g;
        cp__comm_init(&g->comms[r], &threads_ops, r, n, &g->eps[r]);
        g->comms[r].stream = NULL;
    }
    return g;
}

cp_comm_t *cp_threads_comm(cp_threads_t *g, int r) { return g && r >= 0 && r < g->n ? &g->comms[r] : NULL; }

void cp_threads_destroy(cp_threads_t *g) {
    if (!g) return;
    for (int r = 0; r < g->n; r++) cp__comm_fini(&g->comms[r]);
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cond);
    free(g->chan), free(g->comms), free(g->eps);
    free(g);
}

void cp_threads_abort(cp_threads_t *g) {
    pthread_mutex_lock(&g->lock);
    g->aborted = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

void cp_threads_reset(cp_threads_t *g) {
    pthread_mutex_lock(&g->lock);
    memset(g->chan, 0, sizeof *g->chan * (size_t)g->n * g->n);
    g->barrier_count = 0;
    g->aborted = 0;
    for (int r = 0; r < g->n; r++) g->comms[r].busy = 0;
    pthread_mutex_unlock(&g->lock);
}
