// The NCCL communicator (cp_comm_cuda.h): one rank per GPU. A started
// transfer runs on the endpoint's communication stream: it waits for an
// event recorded on the rank's stream at the start (the data is ready), runs
// ncclSend / ncclRecv in one group, and records an event cp_wait makes the
// rank's stream wait for; the rank's stream meanwhile runs the step's
// compute. Collectives are NCCL's, on the rank's stream. Built without NCCL,
// every entry point says LC_EUNSUPPORTED.
#include "config.h"

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "attn/cp/cp_comm_cuda.h"
#include "attn/cp/cp_comm_int.h"
#include "common/log.h"
#include "common/status.h"
#include "ops/cuda/cuda_check.cuh"

#ifdef HAVE_NCCL
#include <nccl.h>

#define NCCL_CHECK_RET(call)                                                                                           \
    do {                                                                                                               \
        ncclResult_t r_ = (call);                                                                                      \
        if (r_ != ncclSuccess) {                                                                                       \
            lc_log(LC_LOG_ERROR, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, ncclGetErrorString(r_));         \
            return LC_EDEVICE;                                                                                         \
        }                                                                                                              \
    } while (0)

struct nep_t {
    ncclComm_t comm;
    int device;
    cudaStream_t stream, comm_stream;
    cudaEvent_t ready[CP_MAX_PENDING], done[CP_MAX_PENDING];
    cp_comm_t c;
};

static nep_t *ep_of(cp_comm_t *c) { return (nep_t *)c->impl; }

static int nc_start(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src,
                    int slot) {
    nep_t *ep = ep_of(c);
    CUDA_CHECK_RET(cudaEventRecord(ep->ready[slot], ep->stream));
    CUDA_CHECK_RET(cudaStreamWaitEvent(ep->comm_stream, ep->ready[slot], 0));
    NCCL_CHECK_RET(ncclGroupStart());
    if (dst >= 0 && sbytes) NCCL_CHECK_RET(ncclSend(sbuf, sbytes, ncclUint8, dst, ep->comm, ep->comm_stream));
    if (src >= 0 && rbytes) NCCL_CHECK_RET(ncclRecv(rbuf, rbytes, ncclUint8, src, ep->comm, ep->comm_stream));
    NCCL_CHECK_RET(ncclGroupEnd());
    CUDA_CHECK_RET(cudaEventRecord(ep->done[slot], ep->comm_stream));
    return 0;
}

static int nc_wait(cp_comm_t *c, int slot) {
    nep_t *ep = ep_of(c);
    CUDA_CHECK_RET(cudaStreamWaitEvent(ep->stream, ep->done[slot], 0));
    return 0;
}

static int nc_copy(cp_comm_t *c, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src)
        CUDA_CHECK_RET(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ep_of(c)->stream));
    return 0;
}

static int nc_add(cp_comm_t *c, float *dst, const float *src, size_t n) { return cp__dev_add(dst, src, n, c->stream); }

static void *nc_alloc(cp_comm_t *c, size_t bytes) {
    void *p = NULL;
    return cudaMalloc(&p, bytes ? bytes : 16) == cudaSuccess ? p : NULL;
}
static void nc_free(cp_comm_t *c, void *p) { cudaFree(p); }

static int nc_allgather(cp_comm_t *c, const void *sbuf, size_t bytes, void *rbuf) {
    nep_t *ep = ep_of(c);
    NCCL_CHECK_RET(ncclAllGather(sbuf, rbuf, bytes, ncclUint8, ep->comm, ep->stream));
    return 0;
}

static int nc_allreduce(cp_comm_t *c, float *buf, size_t n) {
    nep_t *ep = ep_of(c);
    if (n) NCCL_CHECK_RET(ncclAllReduce(buf, buf, n, ncclFloat, ncclSum, ep->comm, ep->stream));
    return 0;
}

static int nc_bcast(cp_comm_t *c, void *buf, size_t bytes, int root) {
    nep_t *ep = ep_of(c);
    if (bytes) NCCL_CHECK_RET(ncclBroadcast(buf, buf, bytes, ncclUint8, root, ep->comm, ep->stream));
    return 0;
}

// One float all-reduced, then the host waits for the rank's stream.
static int nc_barrier(cp_comm_t *c) {
    int rc = cp_comm_reserve(c, sizeof(float));
    if (rc) return rc;
    if ((rc = nc_allreduce(c, (float *)c->scratch, 1))) return rc;
    CUDA_CHECK_RET(cudaStreamSynchronize(ep_of(c)->stream));
    return 0;
}

static const cp_comm_ops_t nccl_ops = {
    "nccl", nc_start, nc_wait, nc_copy, nc_add, nc_alloc, nc_free, nc_barrier, nc_allgather, nc_allreduce, nc_bcast,
};

// The endpoint around an initialised NCCL communicator.
static int ep_setup(nep_t *ep, int r, int n) {
    CUDA_CHECK_RET(cudaSetDevice(ep->device));
    CUDA_CHECK_RET(cudaStreamCreateWithFlags(&ep->stream, cudaStreamNonBlocking));
    CUDA_CHECK_RET(cudaStreamCreateWithFlags(&ep->comm_stream, cudaStreamNonBlocking));
    for (int s = 0; s < CP_MAX_PENDING; s++) {
        CUDA_CHECK_RET(cudaEventCreateWithFlags(&ep->ready[s], cudaEventDisableTiming));
        CUDA_CHECK_RET(cudaEventCreateWithFlags(&ep->done[s], cudaEventDisableTiming));
    }
    cp__comm_init(&ep->c, &nccl_ops, r, n, ep);
    ep->c.stream = ep->stream;
    return 0;
}

extern "C" int cp_nccl_available(void) { return 1; }

extern "C" void cp_nccl_destroy(cp_comm_t *c) {
    if (!c) return;
    nep_t *ep = (nep_t *)((char *)c - offsetof(nep_t, c)); // c->impl is unset when the set-up failed early
    cudaSetDevice(ep->device);
    if (ep->c.ops) cp__comm_fini(&ep->c);
    if (ep->stream) cudaStreamSynchronize(ep->stream), cudaStreamDestroy(ep->stream);
    if (ep->comm_stream) cudaStreamSynchronize(ep->comm_stream), cudaStreamDestroy(ep->comm_stream);
    for (int s = 0; s < CP_MAX_PENDING; s++) {
        if (ep->ready[s]) cudaEventDestroy(ep->ready[s]);
        if (ep->done[s]) cudaEventDestroy(ep->done[s]);
    }
    if (ep->comm) ncclCommDestroy(ep->comm);
    free(ep);
}

extern "C" int cp_nccl_create_local(int n, const int *devices, cp_comm_t **comms) {
    if (n < 1 || n > CP_MAX_RANKS || !comms) return LC_EINVAL;
    ncclComm_t nc[CP_MAX_RANKS];
    int dev[CP_MAX_RANKS];
    for (int r = 0; r < n; r++) dev[r] = devices ? devices[r] : r, comms[r] = NULL;
    NCCL_CHECK_RET(ncclCommInitAll(nc, n, dev));
    int rc = 0;
    for (int r = 0; r < n; r++) {
        nep_t *ep = (nep_t *)calloc(1, sizeof *ep);
        if (!ep) {
            ncclCommDestroy(nc[r]);
            rc = rc ? rc : LC_ENOMEM;
            continue;
        }
        ep->comm = nc[r];
        ep->device = dev[r];
        int e = ep_setup(ep, r, n);
        comms[r] = &ep->c;
        rc = rc ? rc : e;
    }
    if (rc)
        for (int r = 0; r < n; r++) cp_nccl_destroy(comms[r]), comms[r] = NULL;
    return rc;
}

extern "C" int cp_nccl_unique_id(unsigned char id[CP_NCCL_ID_BYTES]) {
    ncclUniqueId u;
    static_assert(sizeof u == CP_NCCL_ID_BYTES, "NCCL's unique id is 128 bytes");
    NCCL_CHECK_RET(ncclGetUniqueId(&u));
    memcpy(id, &u, sizeof u);
    return 0;
}

extern "C" int cp_nccl_create_rank(const unsigned char id[CP_NCCL_ID_BYTES], int r, int n, int device,
                                   cp_comm_t **out) {
    if (n < 1 || n > CP_MAX_RANKS || r < 0 || r >= n || !out) return LC_EINVAL;
    *out = NULL;
    ncclUniqueId u;
    memcpy(&u, id, sizeof u);
    CUDA_CHECK_RET(cudaSetDevice(device));
    nep_t *ep = (nep_t *)calloc(1, sizeof *ep);
    if (!ep) return LC_ENOMEM;
    ep->device = device;
    ncclResult_t nr = ncclCommInitRank(&ep->comm, n, u, r);
    if (nr != ncclSuccess) {
        lc_log(LC_LOG_ERROR, "ncclCommInitRank(rank %d of %d): %s", r, n, ncclGetErrorString(nr));
        free(ep);
        return LC_EDEVICE;
    }
    int rc = ep_setup(ep, r, n);
    if (rc) {
        cp_nccl_destroy(&ep->c);
        return rc;
    }
    *out = &ep->c;
    return 0;
}

#else // no NCCL in this build

extern "C" int cp_nccl_available(void) { return 0; }
extern "C" int cp_nccl_create_local(int n, const int *devices, cp_comm_t **comms) { return LC_EUNSUPPORTED; }
extern "C" int cp_nccl_unique_id(unsigned char id[CP_NCCL_ID_BYTES]) { return LC_EUNSUPPORTED; }
extern "C" int cp_nccl_create_rank(const unsigned char id[CP_NCCL_ID_BYTES], int r, int n, int device,
                                   cp_comm_t **out) {
    return LC_EUNSUPPORTED;
}
extern "C" void cp_nccl_destroy(cp_comm_t *c) {}

#endif
