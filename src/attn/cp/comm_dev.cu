// The device-local communicator: N ranks on one GPU, or on several GPUs of
// this process (cp_dev_create_on: copies between them are peer copies)
// (cp_comm_cuda.h). Each
// ordered pair of ranks is a channel with queues of posted sends and
// receives, matched on the host under the group's lock as in the threads
// backend; the poster that completes a match issues the copy: on the
// receiver's copy stream, after the two events recorded on the ranks'
// streams at their posts, then one "done" event per half. cp_wait blocks the
// host only until the peer has posted, then orders the rank's stream after
// its half's event. Also the add kernel both device backends use for the
// generic all-reduce.
#include <cuda_runtime.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_comm_cuda.h"
#include "attn/cp/cp_comm_int.h"
#include "ops/cuda/cuda_check.cuh"

// ---- the add kernel ----------------------------------------------------------------------
static __global__ void add_kernel(float *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = src[i] + dst[i];
}

extern "C" int cp__dev_add(float *dst, const float *src, size_t n, void *stream) {
    if (!n) return 0;
    size_t blocks = (n + 255) / 256;
    if (blocks > 1024) blocks = 1024;
    add_kernel<<<(unsigned)blocks, 256, 0, (cudaStream_t)stream>>>(dst, src, n);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

// ---- the group ------------------------------------------------------------------------------
struct dhalf_t {
    const void *sbuf;
    void *rbuf;
    size_t bytes;
    int owner;         // rank that posted it
    int posted;        // 0: this half is absent from the transfer
    cudaEvent_t ready; // recorded on the owner's stream at the post
    cudaEvent_t done;  // recorded after the copy
    int issued, err;
};

struct dq_t {
    dhalf_t *q[CP_MAX_PENDING];
    int head, n;
};

struct dslot_t {
    dhalf_t send, recv;
};

struct dep_t {
    cp_dev_t *g;
    int device; // the rank's GPU: its streams, events and buffers
    cudaStream_t stream, copy;
    dslot_t slots[CP_MAX_PENDING];
};

struct cp_dev {
    int n;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    dq_t *sends, *recvs; // (n, n): [src * n + dst]
    cp_comm_t *comms;
    dep_t *eps;
    int barrier_count;
    unsigned barrier_gen;
    int aborted; // cp_dev_abort: every wait returns LC_ECANCELED
};

static void dq_push(dq_t *q, dhalf_t *h) { q->q[(q->head + q->n++) % CP_MAX_PENDING] = h; }
static dhalf_t *dq_pop(dq_t *q) {
    if (!q->n) return NULL;
    dhalf_t *h = q->q[q->head];
    q->head = (q->head + 1) % CP_MAX_PENDING;
    q->n--;
    return h;
}

// Issues the copy of a matched pair on the receiver's copy stream, then
// marks both halves issued.
static void issue(cp_dev_t *g, dhalf_t *s, dhalf_t *r) {
    int err = s->bytes != r->bytes ? LC_EINVAL : 0;
    cudaStream_t cs = g->eps[r->owner].copy;
    if (!err) {
        // on the receiver's GPU (the poster's again after); from another GPU
        // a peer copy (cudaMemcpyDefault: the pointers say where)
        int cur = 0;
        cudaError_t e = cudaGetDevice(&cur);
        if (e == cudaSuccess) e = cudaSetDevice(g->eps[r->owner].device);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(cs, s->ready, 0);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(cs, r->ready, 0);
        if (e == cudaSuccess && s->bytes) e = cudaMemcpyAsync(r->rbuf, s->sbuf, s->bytes, cudaMemcpyDefault, cs);
        if (e == cudaSuccess) e = cudaEventRecord(r->done, cs);
        const dep_t *se = &g->eps[s->owner];
        if (se->device == g->eps[r->owner].device) {
            if (e == cudaSuccess) e = cudaEventRecord(s->done, cs);
        } else { // an event is recorded on its own GPU's streams: the sender's copy stream, after the copy
            if (e == cudaSuccess) e = cudaSetDevice(se->device);
            if (e == cudaSuccess) e = cudaStreamWaitEvent(se->copy, r->done, 0);
            if (e == cudaSuccess) e = cudaEventRecord(s->done, se->copy);
        }
        if (e == cudaSuccess) e = cudaSetDevice(cur);
        if (e != cudaSuccess) {
            lc_log(LC_LOG_ERROR, "device-local transfer %d -> %d: %s", s->owner, r->owner, cudaGetErrorString(e));
            err = LC_EDEVICE;
        }
    }
    pthread_mutex_lock(&g->lock);
    s->err = r->err = err;
    s->issued = r->issued = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static int dev_start(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src,
                     int slot) {
    dep_t *ep = (dep_t *)c->impl;
    cp_dev_t *g = ep->g;
    dslot_t *sl = &ep->slots[slot];
    dhalf_t *hs = &sl->send, *hr = &sl->recv;
    hs->sbuf = sbuf, hs->bytes = sbytes, hs->owner = c->rank, hs->posted = dst >= 0, hs->issued = dst < 0;
    hr->rbuf = rbuf, hr->bytes = rbytes, hr->owner = c->rank, hr->posted = src >= 0, hr->issued = src < 0;
    hs->err = hr->err = 0;
    if (dst >= 0) CUDA_CHECK_RET(cudaEventRecord(hs->ready, ep->stream));
    if (src >= 0) CUDA_CHECK_RET(cudaEventRecord(hr->ready, ep->stream));
    dhalf_t *m1s = NULL, *m1r = NULL, *m2s = NULL, *m2r = NULL;
    pthread_mutex_lock(&g->lock);
    if (g->aborted) {
        hs->issued = hr->issued = 1;
        hs->err = hr->err = LC_ECANCELED;
        pthread_mutex_unlock(&g->lock);
        return 0; // the wait reports it
    }
    if (dst >= 0) {
        if ((m1r = dq_pop(&g->recvs[(size_t)c->rank * g->n + dst])))
            m1s = hs;
        else
            dq_push(&g->sends[(size_t)c->rank * g->n + dst], hs);
    }
    if (src >= 0) {
        if ((m2s = dq_pop(&g->sends[(size_t)src * g->n + c->rank])))
            m2r = hr;
        else
            dq_push(&g->recvs[(size_t)src * g->n + c->rank], hr);
    }
    pthread_mutex_unlock(&g->lock);
    if (m1s) issue(g, m1s, m1r);
    if (m2s) issue(g, m2s, m2r);
    return 0;
}

static int dev_wait(cp_comm_t *c, int slot) {
    dep_t *ep = (dep_t *)c->impl;
    cp_dev_t *g = ep->g;
    dslot_t *sl = &ep->slots[slot];
    pthread_mutex_lock(&g->lock);
    while ((!sl->send.issued || !sl->recv.issued) && !g->aborted) pthread_cond_wait(&g->cond, &g->lock);
    const int cut = !sl->send.issued || !sl->recv.issued;
    pthread_mutex_unlock(&g->lock);
    if (cut) return LC_ECANCELED;
    if (sl->send.err || sl->recv.err) return sl->send.err ? sl->send.err : sl->recv.err;
    if (sl->send.posted) CUDA_CHECK_RET(cudaStreamWaitEvent(ep->stream, sl->send.done, 0));
    if (sl->recv.posted) CUDA_CHECK_RET(cudaStreamWaitEvent(ep->stream, sl->recv.done, 0));
    return 0;
}

static int dev_copy(cp_comm_t *c, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src)
        CUDA_CHECK_RET(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, (cudaStream_t)c->stream));
    return 0;
}

static int dev_add(cp_comm_t *c, float *dst, const float *src, size_t n) { return cp__dev_add(dst, src, n, c->stream); }

static void *dev_alloc(cp_comm_t *c, size_t bytes) {
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess) return NULL;
    return p;
}
static void dev_free(cp_comm_t *c, void *p) { cudaFree(p); }

// The rank's work done, then a host barrier.
static int dev_barrier(cp_comm_t *c) {
    cp_dev_t *g = ((dep_t *)c->impl)->g;
    CUDA_CHECK_RET(cudaStreamSynchronize((cudaStream_t)c->stream));
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

static const cp_comm_ops_t dev_ops = {
    "device", dev_start, dev_wait, dev_copy, dev_add, dev_alloc, dev_free, dev_barrier, NULL, NULL, NULL,
};

extern "C" cp_dev_t *cp_dev_create(int n, int device) {
    int devices[CP_MAX_RANKS];
    if (n < 1 || n > CP_MAX_RANKS) return NULL;
    for (int r = 0; r < n; r++) devices[r] = device;
    return cp_dev_create_on(n, devices);
}

extern "C" cp_dev_t *cp_dev_create_on(int n, const int *devices) {
    if (n < 1 || n > CP_MAX_RANKS || !devices) return NULL;
    for (int r = 0; r < n; r++)
        if (cudaSetDevice(devices[r]) != cudaSuccess) {
            cudaGetLastError();
            lc_log(LC_LOG_ERROR, "device-local communicator: no device %d", devices[r]);
            return NULL;
        }
    cp_dev_t *g = (cp_dev_t *)calloc(1, sizeof *g);
    if (!g) return NULL;
    g->n = n;
    g->sends = (dq_t *)calloc((size_t)n * n, sizeof *g->sends);
    g->recvs = (dq_t *)calloc((size_t)n * n, sizeof *g->recvs);
    g->comms = (cp_comm_t *)calloc((size_t)n, sizeof *g->comms);
    g->eps = (dep_t *)calloc((size_t)n, sizeof *g->eps);
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    if (!g->sends || !g->recvs || !g->comms || !g->eps) goto fail;
    for (int r = 0; r < n; r++) {
        dep_t *ep = &g->eps[r];
        ep->g = g;
        ep->device = devices[r];
        if (cudaSetDevice(ep->device) != cudaSuccess ||
            cudaStreamCreateWithFlags(&ep->stream, cudaStreamNonBlocking) != cudaSuccess ||
            cudaStreamCreateWithFlags(&ep->copy, cudaStreamNonBlocking) != cudaSuccess)
            goto fail;
        for (int s = 0; s < CP_MAX_PENDING; s++) {
            dhalf_t *h[2] = {&ep->slots[s].send, &ep->slots[s].recv};
            for (int k = 0; k < 2; k++)
                if (cudaEventCreateWithFlags(&h[k]->ready, cudaEventDisableTiming) != cudaSuccess ||
                    cudaEventCreateWithFlags(&h[k]->done, cudaEventDisableTiming) != cudaSuccess)
                    goto fail;
        }
        cp__comm_init(&g->comms[r], &dev_ops, r, n, ep);
        g->comms[r].stream = ep->stream;
    }
    cudaSetDevice(devices[0]);
    return g;
fail:
    lc_log(LC_LOG_ERROR, "device-local communicator: cannot create %d ranks (rank 0 on device %d)", n, devices[0]);
    cp_dev_destroy(g);
    return NULL;
}

extern "C" void cp_dev_abort(cp_dev_t *g) {
    pthread_mutex_lock(&g->lock);
    g->aborted = 1;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

extern "C" void cp_dev_reset(cp_dev_t *g) {
    pthread_mutex_lock(&g->lock);
    memset(g->sends, 0, sizeof *g->sends * (size_t)g->n * g->n);
    memset(g->recvs, 0, sizeof *g->recvs * (size_t)g->n * g->n);
    g->barrier_count = 0;
    g->aborted = 0;
    pthread_mutex_unlock(&g->lock);
}

extern "C" cp_comm_t *cp_dev_comm(cp_dev_t *g, int r) { return g && r >= 0 && r < g->n ? &g->comms[r] : NULL; }

extern "C" void cp_dev_destroy(cp_dev_t *g) {
    if (!g) return;
    int cur = 0;
    cudaGetDevice(&cur);
    for (int r = 0; g->eps && r < g->n; r++) {
        dep_t *ep = &g->eps[r];
        if (ep->g) cudaSetDevice(ep->device);
        if (g->comms && g->comms[r].ops) cp__comm_fini(&g->comms[r]);
        if (ep->stream) cudaStreamSynchronize(ep->stream), cudaStreamDestroy(ep->stream);
        if (ep->copy) cudaStreamSynchronize(ep->copy), cudaStreamDestroy(ep->copy);
        for (int s = 0; s < CP_MAX_PENDING; s++) {
            dhalf_t *h[2] = {&ep->slots[s].send, &ep->slots[s].recv};
            for (int k = 0; k < 2; k++) {
                if (h[k]->ready) cudaEventDestroy(h[k]->ready);
                if (h[k]->done) cudaEventDestroy(h[k]->done);
            }
        }
    }
    cudaSetDevice(cur);
    pthread_mutex_destroy(&g->lock);
    pthread_cond_destroy(&g->cond);
    free(g->sends), free(g->recvs), free(g->comms), free(g->eps);
    free(g);
}
