/* Communicators for context parallelism: N ranks that exchange buffers. One
 * interface, three backends: in-process threads on the CPU (this header),
 * NCCL and device-local ranks on one GPU (cp_comm_cuda.h, CUDA builds only).
 * The ring attention (cp_attn.h) reaches another rank's data only through
 * these calls.
 *
 * A rank's endpoint (cp_comm_t) belongs to one thread, the one that drives
 * that rank; the endpoints of a group are used concurrently, one thread each.
 * Every call is collective in the usual sense: a send is matched by the
 * peer's receive of the same size, posted in the same order between the two
 * ranks; a collective is called by every rank of the group with matching
 * arguments. A mismatch is LC_EINVAL on the CPU backend; on NCCL it hangs,
 * as NCCL does.
 *
 * Buffers live where the backend computes: host memory for threads, device
 * memory (of the rank's GPU) for NCCL and device-local. Ordering:
 *  - CPU: a call returns when its data has moved, except cp_sendrecv_start,
 *    which returns at once; cp_wait returns when the transfer is done (the
 *    receive buffer holds the data, the send buffer may be reused).
 *  - device backends: every call is ordered on the rank's stream
 *    (cp_comm_stream): the transfer reads the send buffer after the work the
 *    rank issued on its stream before the call, and work issued after
 *    cp_wait (or after a collective) sees the result. The host does not wait
 *    for the device; between start and wait the transfer runs on its own
 *    stream, overlapping the rank's compute.
 * Message sizes are the caller's to agree on: in the ring every rank knows
 * the layout, hence every message's size, without asking.
 *
 * Errors: 0 or a negative lc status (common/status.h); a device error is
 * LC_EDEVICE after a log line. */
#ifndef LC_ATTN_CP_COMM_H
#define LC_ATTN_CP_COMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Transfers one endpoint may have started and not waited for. */
#define CP_MAX_PENDING 16
/* Largest group (ranks) any backend accepts. */
#define CP_MAX_RANKS 64

typedef struct cp_comm cp_comm_t;

/* A started transfer; embedded by the caller, filled by cp_sendrecv_start. */
typedef struct {
    int slot; // backend's slot, -1 when nothing is pending
} cp_req_t;

int cp_comm_rank(const cp_comm_t *c);
int cp_comm_size(const cp_comm_t *c);
/* "threads", "nccl" or "device". */
const char *cp_comm_kind(const cp_comm_t *c);
/* The rank's stream (a cudaStream_t) on device backends; NULL on the CPU. */
void *cp_comm_stream(const cp_comm_t *c);

/* ---- point to point ----------------------------------------------------------- */
/* Starts sending sbytes of sbuf to rank dst and receiving rbytes into rbuf
 * from rank src; either half may be absent (dst < 0 or src < 0). A rank may
 * send to itself. sbuf and rbuf must not overlap. Returns at once. */
int cp_sendrecv_start(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src,
                      cp_req_t *req);
/* Completes a started transfer (see the ordering above); req->slot becomes -1. */
int cp_wait(cp_comm_t *c, cp_req_t *req);
/* Both in one. */
int cp_sendrecv(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src);

/* ---- collectives ------------------------------------------------------------- */
/* rbuf (size * bytes) receives every rank's sbuf, rank i's at i * bytes. */
int cp_allgather(cp_comm_t *c, const void *sbuf, size_t bytes, void *rbuf);
/* buf (n floats) becomes the sum over ranks, added in rank order
 * ((x0 + x1) + x2) + ... on the CPU, so every rank holds the same bits. */
int cp_allreduce_sum(cp_comm_t *c, float *buf, size_t n);
/* Every rank's buf receives root's. */
int cp_bcast(cp_comm_t *c, void *buf, size_t bytes, int root);
/* Rank r sends sbytes[s] bytes at sbuf + soff[s] to rank s and receives
 * rbytes[s] bytes from rank s at rbuf + roff[s] (s = 0 .. size-1, itself
 * included); sbytes[s] on r must equal rbytes[r] on s. */
int cp_alltoallv(cp_comm_t *c, const void *sbuf, const size_t *soff, const size_t *sbytes, void *rbuf,
                 const size_t *roff, const size_t *rbytes);
int cp_barrier(cp_comm_t *c);

/* Grows the endpoint's scratch (cp_allreduce_sum needs n floats) ahead of
 * time, so that later collectives allocate nothing. */
int cp_comm_reserve(cp_comm_t *c, size_t bytes);

/* Traffic and waiting since creation (this endpoint). wait_s: host time
 * spent in cp_wait and in collectives. */
typedef struct {
    uint64_t bytes_sent, bytes_recv, transfers;
    double wait_s;
} cp_comm_stats_t;
void cp_comm_stats(const cp_comm_t *c, cp_comm_stats_t *out);

/* ---- the CPU backend: one thread per rank in this process ------------------------ */
/* A group of n in-process ranks. A transfer is matched when both sides have
 * posted it; the thread that posts second copies the bytes (so while rank r
 * computes, its peers' posts move its data), and cp_wait blocks until the
 * copy is done. Collectives are built on the point-to-point calls. */
typedef struct cp_threads cp_threads_t;
/* NULL on OOM or n outside 1 .. CP_MAX_RANKS. */
cp_threads_t *cp_threads_create(int n);
/* Rank r's endpoint, owned by the group. */
cp_comm_t *cp_threads_comm(cp_threads_t *g, int r);
/* After every rank's thread has stopped using its endpoint. */
void cp_threads_destroy(cp_threads_t *g);
/* Fails every pending and later transfer, collective and barrier of the
 * group with LC_ECANCELED: a rank that fails inside a step calls it so that
 * its peers return instead of waiting for it. Any thread. */
void cp_threads_abort(cp_threads_t *g);
/* Clears an abort and every queue, once no rank is inside a call. */
void cp_threads_reset(cp_threads_t *g);

#ifdef __cplusplus
}
#endif
#endif
