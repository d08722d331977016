/* Internal to src/attn/cp: what a communicator backend provides. The
 * generic layer (comm.c) owns request slots, statistics and the collectives
 * a backend does not implement natively, built from its point-to-point
 * transfers and two local primitives (copy, add) that run where the buffers
 * live. */
#ifndef LC_ATTN_CP_COMM_INT_H
#define LC_ATTN_CP_COMM_INT_H

#include "attn/cp/cp_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *kind;
    /* Point to point: start the halves given (dst/src < 0: absent) in request
     * slot `slot` of the endpoint; wait completes that slot. */
    int (*start)(cp_comm_t *c, const void *sbuf, size_t sbytes, int dst, void *rbuf, size_t rbytes, int src, int slot);
    int (*wait)(cp_comm_t *c, int slot);
    /* Local primitives in the backend's memory, ordered like a transfer:
     * dst = src (bytes); dst[i] = src[i] + dst[i] (n floats). */
    int (*copy)(cp_comm_t *c, void *dst, const void *src, size_t bytes);
    int (*add)(cp_comm_t *c, float *dst, const float *src, size_t n);
    /* Scratch memory of the backend (host or device). */
    void *(*alloc)(cp_comm_t *c, size_t bytes);
    void (*free)(cp_comm_t *c, void *p);
    int (*barrier)(cp_comm_t *c);
    /* Native collectives; NULL: the generic ones (comm.c). */
    int (*allgather)(cp_comm_t *c, const void *sbuf, size_t bytes, void *rbuf);
    int (*allreduce_sum)(cp_comm_t *c, float *buf, size_t n);
    int (*bcast)(cp_comm_t *c, void *buf, size_t bytes, int root);
} cp_comm_ops_t;

struct cp_comm {
    const cp_comm_ops_t *ops;
    int rank, size;
    void *stream;  // device backends: the rank's cudaStream_t
    uint32_t busy; // request slots in use (bit i: slot i)
    void *scratch; // backend memory for the generic collectives
    size_t scratch_cap;
    cp_comm_stats_t st;
    void *impl; // the backend's state
};

/* Sets up the generic fields (busy, scratch, stats). */
void cp__comm_init(cp_comm_t *c, const cp_comm_ops_t *ops, int rank, int size, void *impl);
/* Frees the generic scratch (through ops->free). */
void cp__comm_fini(cp_comm_t *c);

#ifdef __cplusplus
}
#endif
#endif
