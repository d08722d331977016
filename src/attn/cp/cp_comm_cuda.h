/* The device communicators (CUDA builds only): the C boundary of
 * comm_dev.cu and comm_nccl.cu. Both give cp_comm_t endpoints (cp_comm.h)
 * whose buffers are device memory and whose calls are ordered on the rank's
 * stream (cp_comm_stream); each endpoint is driven by one host thread, which
 * must have the rank's device current (cudaSetDevice) when it calls.
 *
 * Device-local: N ranks on ONE GPU, each with its own stream and a copy
 * stream. A transfer is matched on the host when both ranks have posted it
 * (as the threads backend does); the rank that posts second issues one
 * device-to-device copy on the receiver's copy stream, after the sender's
 * and the receiver's earlier work (events recorded at their posts), and
 * cp_wait makes the rank's stream wait for the copy. So the whole ring runs,
 * with real overlap of copies and compute, on a single GPU.
 *
 * NCCL: one rank per GPU. In one process, cp_nccl_create_local makes the
 * communicators of n local GPUs (ncclCommInitAll), to be driven by one
 * thread each; across hosts each process joins with the unique id that rank
 * 0 made (cp_nccl_unique_id), exchanged by the caller. Point-to-point
 * transfers run on a communication stream of their own (ncclSend/ncclRecv
 * in a group) between two events on the rank's stream; the collectives are
 * NCCL's, on the rank's stream.
 *
 * All return 0 or a negative lc status; LC_EUNSUPPORTED for NCCL in a build
 * without it, LC_EDEVICE after a log line for a CUDA or NCCL error. */
#ifndef LC_ATTN_CP_COMM_CUDA_H
#define LC_ATTN_CP_COMM_CUDA_H

#include "attn/cp/cp_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device-local -------------------------------------------------------------------- */
typedef struct cp_dev cp_dev_t;
/* n ranks (1 .. CP_MAX_RANKS) on GPU `device`; NULL on an error (logged). */
cp_dev_t *cp_dev_create(int n, int device);
/* n ranks, rank r on GPU devices[r] (repeats allowed): each rank's streams,
 * events and buffers on its GPU, a transfer between two GPUs a peer copy
 * on the receiver's copy stream (the caller enables peer access between
 * them). One process driving several GPUs without NCCL; NULL on an error. */
cp_dev_t *cp_dev_create_on(int n, const int *devices);
cp_comm_t *cp_dev_comm(cp_dev_t *g, int r);
/* After every rank's work has been waited for. */
void cp_dev_destroy(cp_dev_t *g);
/* As cp_threads_abort and cp_threads_reset (cp_comm.h): abort fails every
 * pending and later transfer and barrier of the group with LC_ECANCELED (a
 * rank that fails inside a step calls it, so that its peers return instead
 * of waiting for it; any thread); reset clears the abort and the queues
 * once no rank is inside a call. Copies already issued still run on the
 * device. */
void cp_dev_abort(cp_dev_t *g);
void cp_dev_reset(cp_dev_t *g);

/* ---- NCCL ------------------------------------------------------------------------------ */
/* 1 when the build has NCCL. */
int cp_nccl_available(void);
/* n ranks on local GPUs devices[0 .. n) (NULL: 0 .. n-1); comms[r] for rank r. */
int cp_nccl_create_local(int n, const int *devices, cp_comm_t **comms);
#define CP_NCCL_ID_BYTES 128
/* Rank 0's id for a group spanning processes or hosts. */
int cp_nccl_unique_id(unsigned char id[CP_NCCL_ID_BYTES]);
/* Joins the group of `id` as rank r of n on `device`; blocks until all joined. */
int cp_nccl_create_rank(const unsigned char id[CP_NCCL_ID_BYTES], int r, int n, int device, cp_comm_t **out);
void cp_nccl_destroy(cp_comm_t *c);

/* ---- shared by the two backends (comm_dev.cu) --------------------------------------- */
/* dst[i] = src[i] + dst[i] on stream (a cudaStream_t). */
int cp__dev_add(float *dst, const float *src, size_t n, void *stream);

#ifdef __cplusplus
}
#endif
#endif
