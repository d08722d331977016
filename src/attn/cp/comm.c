/* The communicator front (cp_comm.h): request slots, counters, and the
 * collectives every backend gets from its point-to-point transfers unless it
 * has its own (NCCL does). The generic collectives are simple on purpose:
 * ring allgather, a rank-ordered chain for the sum (the same bits on every
 * rank), a star broadcast and pairwise rounds for the all-to-all. They move
 * small things in the ring attention (LSE partials, selections, decode
 * partials); the bulk (KV, queries) goes through cp_sendrecv_start. */
#include <string.h>

#include "attn/cp/cp_comm_int.h"
#include "common/status.h"
#include "common/timeutil.h"

void cp__comm_init(cp_comm_t *c, const cp_comm_ops_t *ops, int rank, int size, void *impl) {
    c->ops = ops;
    c->rank = rank;
    c->size = size;
    c->busy = 0;
    c->scratch = NULL;
    c->scratch_cap = 0;
    memset(&c->st, 0, sizeof c->st);
    c->impl = impl;
}

void cp__comm_fini(cp_comm_t *c) {
    if (c->scratch) c->ops->free(c, c->scratch);
    c->scratch = NULL;
    c->scratch_cap = 0;
}

int cp_comm_rank(const cp_comm_t *c) { return c->rank; }
int cp_comm_size(const cp_comm_t *c) { return c->size; }
const char *cp_comm_kind(const cp_comm_t *c) { return c->ops->kind; }
void *cp_comm_stream(const cp_comm_t *c) { return c->stream; }
void cp_comm_stats(const cp_comm_t *c, cp_comm_stats_t *out) { *out = c->st; }

int cp_comm_reserve(cp_comm_t *c, size_t bytes) {
    if (bytes <= c->scratch_cap) return 0;
    void *p = c->ops->alloc(c, bytes);
    if (!p) return LC_ENOMEM;
    if (c->scratch) c->ops->free(c, c->scratch);
    c->scratch = p;
    c->scratch_cap = bytes;
    return 0;
}

/* ---- point to point --------------------------------------------------------------- */
int cp_sendrecv_start(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src,
                      cp_req_t *req) {
    req->slot = -1;
    if (dst >= c->size || src >= c->size || (dst >= 0 && sbytes && !sbuf) || (src >= 0 && rbytes && !rbuf))
        return LC_EINVAL;
    int slot = 0;
    while (slot < CP_MAX_PENDING && (c->busy >> slot & 1u)) slot++;
    if (slot == CP_MAX_PENDING) return LC_EBUSY;
    int rc = c->ops->start(c, sbuf, dst >= 0 ? sbytes : 0, dst, rbuf, src >= 0 ? rbytes : 0, src, slot);
    if (rc) return rc;
    c->busy |= 1u << slot;
    req->slot = slot;
    if (dst >= 0) c->st.bytes_sent += sbytes;
    if (src >= 0) c->st.bytes_recv += rbytes;
    c->st.transfers++;
    return 0;
}

int cp_wait(cp_comm_t *c, cp_req_t *req) {
    if (req->slot < 0) return 0;
    const int slot = req->slot;
    if (slot >= CP_MAX_PENDING || !(c->busy >> slot & 1u)) return LC_EINVAL;
    double t0 = lc_now_s();
    int rc = c->ops->wait(c, slot);
    c->st.wait_s += lc_now_s() - t0;
    c->busy &= ~(1u << slot);
    req->slot = -1;
    return rc;
}

int cp_sendrecv(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src) {
    cp_req_t r;
    int rc = cp_sendrecv_start(c, sbuf, sbytes, dst, rbuf, rbytes, src, &r);
    if (rc) return rc;
    return cp_wait(c, &r);
}

/* ---- collectives ---------------------------------------------------------------- */
/* Ring: at step k rank r forwards block (r - k) to r + 1 and receives block
 * (r - k - 1) from r - 1. */
static int gen_allgather(cp_comm_t *c, const void *sbuf, size_t bytes, void *rbuf) {
    const int n = c->size, r = c->rank;
    unsigned char *out = rbuf;
    int rc = c->ops->copy(c, out + (size_t)r * bytes, sbuf, bytes);
    for (int k = 0; !rc && k < n - 1; k++) {
        const int sb = ((r - k) % n + n) % n, rb = ((r - k - 1) % n + n) % n;
        rc = cp_sendrecv(c, out + (size_t)sb * bytes, bytes, (r + 1) % n, out + (size_t)rb * bytes, bytes,
                         (r + n - 1) % n);
    }
    return rc;
}

/* Chain in rank order, then a broadcast from the last rank. */
static int gen_allreduce(cp_comm_t *c, float *buf, size_t n) {
    const int N = c->size, r = c->rank;
    if (N == 1 || n == 0) return 0;
    int rc = cp_comm_reserve(c, n * sizeof(float));
    if (rc) return rc;
    if (r > 0) {
        if ((rc = cp_sendrecv(c, NULL, 0, -1, c->scratch, n * sizeof(float), r - 1))) return rc;
        if ((rc = c->ops->add(c, buf, c->scratch, n))) return rc;
    }
    if (r < N - 1 && (rc = cp_sendrecv(c, buf, n * sizeof(float), r + 1, NULL, 0, -1))) return rc;
    return cp_bcast(c, buf, n * sizeof(float), N - 1);
}

/* Star: the root starts a send to every rank, CP_MAX_PENDING - 1 at a time. */
static int gen_bcast(cp_comm_t *c, void *buf, size_t bytes, int root) {
    const int N = c->size, r = c->rank;
    if (N == 1) return 0;
    if (r != root) return cp_sendrecv(c, NULL, 0, -1, buf, bytes, root);
    cp_req_t req[CP_MAX_PENDING - 1];
    int rc = 0;
    for (int s0 = 0; s0 < N && !rc; s0 += CP_MAX_PENDING - 1) {
        int nq = 0;
        for (int s = s0; s < N && s < s0 + CP_MAX_PENDING - 1; s++) {
            if (s == root) continue;
            if ((rc = cp_sendrecv_start(c, buf, bytes, s, NULL, 0, -1, &req[nq]))) break;
            nq++;
        }
        for (int i = 0; i < nq; i++) {
            int w = cp_wait(c, &req[i]);
            rc = rc ? rc : w;
        }
    }
    return rc;
}

int cp_allgather(cp_comm_t *c, const void *sbuf, size_t bytes, void *rbuf) {
    double t0 = lc_now_s();
    int rc = c->ops->allgather ? c->ops->allgather(c, sbuf, bytes, rbuf) : gen_allgather(c, sbuf, bytes, rbuf);
    if (c->ops->allgather) c->st.wait_s += lc_now_s() - t0;
    return rc;
}

int cp_allreduce_sum(cp_comm_t *c, float *buf, size_t n) {
    double t0 = lc_now_s();
    int rc = c->ops->allreduce_sum ? c->ops->allreduce_sum(c, buf, n) : gen_allreduce(c, buf, n);
    if (c->ops->allreduce_sum) c->st.wait_s += lc_now_s() - t0;
    return rc;
}

int cp_bcast(cp_comm_t *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->size) return LC_EINVAL;
    double t0 = lc_now_s();
    int rc = c->ops->bcast ? c->ops->bcast(c, buf, bytes, root) : gen_bcast(c, buf, bytes, root);
    if (c->ops->bcast) c->st.wait_s += lc_now_s() - t0;
    return rc;
}

int cp_barrier(cp_comm_t *c) {
    double t0 = lc_now_s();
    int rc = c->ops->barrier(c);
    c->st.wait_s += lc_now_s() - t0;
    return rc;
}

/* Pairwise rounds: in round s rank r sends to r + s and receives from r - s;
 * all rounds are started before any is waited for. */
int cp_alltoallv(cp_comm_t *c, const void *sbuf, const size_t *soff, const size_t *sbytes, void *rbuf,
                 const size_t *roff, const size_t *rbytes) {
    const int N = c->size, r = c->rank;
    if (sbytes[r] != rbytes[r]) return LC_EINVAL;
    const unsigned char *in = sbuf;
    unsigned char *out = rbuf;
    int rc = sbytes[r] ? c->ops->copy(c, out + roff[r], in + soff[r], sbytes[r]) : 0;
    cp_req_t req[CP_MAX_PENDING - 1];
    for (int s0 = 1; s0 < N && !rc; s0 += CP_MAX_PENDING - 1) {
        int nq = 0;
        for (int s = s0; s < N && s < s0 + CP_MAX_PENDING - 1; s++) {
            const int dst = (r + s) % N, src = (r - s + N) % N;
            if ((rc = cp_sendrecv_start(c, in + soff[dst], sbytes[dst], dst, out + roff[src], rbytes[src], src,
                                        &req[nq])))
                break;
            nq++;
        }
        for (int i = 0; i < nq; i++) {
            int w = cp_wait(c, &req[i]);
            rc = rc ? rc : w;
        }
    }
    return rc;
}
