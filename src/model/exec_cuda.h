/* The CUDA executor (exec_cuda.cu), behind model/exec.h: exec.c calls these.
 * Only built with CUDA. */
#ifndef LC_MODEL_EXEC_CUDA_H
#define LC_MODEL_EXEC_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "model/exec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct model_cuda model_cuda_t;

/* Uploads m's weights to GPU `device` (dequantized once to bf16), sizes the
 * KV store (o->kv_blocks, else o->kv_gpu_fraction of the free memory) and
 * the step's buffers. *kvc receives the pool configuration the store holds,
 * *block_bytes the store's bytes per block, devname "cuda:N (<name>)". NULL
 * with a message in err (no memory, a shape the kernels do not support). */
model_cuda_t *model_cuda_create(const model_t *m, int device, const model_exec_opts_t *o, kv_config_t *kvc,
                                size_t *block_bytes, char *devname, size_t devlen, char *err, size_t errlen);
void model_cuda_destroy(model_cuda_t *c);
/* Runs a batch; logits land in the slices' host buffers. 0, LC_EINVAL,
 * LC_ENOMEM or LC_EDEVICE (the step failed on the GPU; the executor stays
 * usable unless the device itself is lost). */
int model_cuda_forward(model_cuda_t *c, const model_batch_t *b);
/* Host memory for logits: page-locked (cudaMallocHost) up to 256 MiB, else
 * plain; NULL when none can be had. Free with model_cuda_host_free. */
float *model_cuda_host_alloc(model_cuda_t *c, size_t bytes);
void model_cuda_host_free(model_cuda_t *c, float *p);
/* NULL while the GPU works; once a step hit an error that sticks to the
 * device (an illegal address, a lost GPU: every later call fails too), the
 * reason. Such an executor never runs again. */
const char *model_cuda_failure(const model_cuda_t *c);
/* Context parallelism (parallel.context > 1): each rank's KV blocks in use
 * in kv (after a step), and the counters (model_exec_cp_stats). */
void model_cuda_cp_account(model_cuda_t *c, const kv_pool_t *kv);
void model_cuda_cp_stats(model_cuda_t *c, model_exec_cp_stats_t *out);
/* kv_copy_cb: copies block src to dst in every layer, ordered on the
 * executor's stream before any later step. */
void model_cuda_copy_block(void *c, int32_t dst, int32_t src);

#ifdef __cplusplus
}
#endif
#endif
