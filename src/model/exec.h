/* The model executor: runs the forward pass of a loaded model on one device
 * (the CPU, or a CUDA GPU when the build has CUDA), and owns what lives on
 * that device: the weights in the device's format, the KV store (the tensors
 * of the host's block pool, kv.h), the attention plan and the scratch of a
 * step. The scheduler creates one at start from the configured device and
 * never learns which it got.
 *
 * A step: model_exec_forward(batch) takes the tokens of several sequences at
 * different positions (prompt chunks and generated tokens mixed), writes their
 * K/V into the store through each sequence's block table, runs attention with
 * each sequence's policy, and returns logits for the rows each sequence asks
 * for, on the host.
 *
 * Threads: an executor belongs to the thread that runs its steps (the engine
 * thread); create and destroy may happen elsewhere. Errors of a step (out of
 * memory, a device fault) come back as a status for that step; they never
 * abort the process. */
#ifndef LC_MODEL_EXEC_H
#define LC_MODEL_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "kv/kv.h"
#include "model/model.h"

typedef struct model_exec model_exec_t;

typedef struct {
    const char *device;   // "cpu", "cuda", "cuda:N" or "auto" (NULL: "cpu")
    int max_batch_tokens; // rows of one step
    int max_seqs;         // sequence slices of one step (0: max_batch_tokens)
    int block_size;       // KV tokens per block; 0: the device's choice (CPU 16, GPU 64)
    /* KV memory in blocks of block_size positions of every layer; 0: from
     * kv_bytes (CPU) or kv_gpu_fraction (GPU). With sliding-window layers in
     * groups of their own the pool has kv_blocks * n_groups smaller blocks
     * (the same memory; kv.h). */
    int64_t kv_blocks;
    /* 1 keeps every position of the sliding-window layers (one layer group,
     * as for a model without them): the reference the grouped layout is
     * tested against, and for tools that read every layer's whole cache. */
    int kv_keep_sliding;
    size_t kv_bytes;        // CPU: KV memory budget when kv_blocks is 0
    double kv_gpu_fraction; // GPU: fraction of the free device memory for KV (0: 0.85)
    int gpu_fast_gemm;      // GPU: 1 = cuBLASLt's fastest matmul per shape, not batch-invariant (0: invariant)
    int gpu_no_graphs;      // GPU: 1 = decode steps launch every kernel (0: as CUDA graphs; exec_cuda.cu)
    /* Context parallelism ([parallel] in lacuna.conf): a sequence whose KV
     * reaches context_min_tokens runs its attention sharded over
     * context_ranks ranks (attn/cp; on a GPU, device-local ranks of that
     * GPU: exec_cuda_cp.cu); 0 or 1: off. */
    int context_ranks;
    int64_t context_min_tokens;
    /* GPU, with context_ranks > 1: each rank's CUDA device ("0,1,2,3";
     * rank 0's must be the executor's). NULL or "": every rank on the
     * executor's GPU, sharing its KV pool. Given (repeats allowed, so
     * "0,0,0,0" tests the path on one GPU), ranks 1.. keep the blocks they
     * hold in pools of their own on their GPUs and attend there; the
     * executor's GPU still runs the rest of the step (exec_cuda_cp.cu). */
    const char *context_devices;
} model_exec_opts_t;

/* Creates an executor for m (which must outlive it). NULL with a message in
 * err: unknown or unavailable device, out of memory, a model the device
 * cannot run. */
model_exec_t *model_exec_create(const model_t *m, const model_exec_opts_t *o, char *err, size_t errlen);
/* Which device a spec (lc_device_spec_parse) gives m: *index = -1 for the
 * CPU, else the CUDA index. "auto" takes the first GPU when one is usable
 * and the GPU executor runs m's architecture. An explicit GPU that cannot be
 * had is an error (LC_EUNSUPPORTED, the reason in err): serving a GPU's load
 * from the CPU by surprise helps nobody. */
int model_exec_resolve(const model_t *m, const char *spec, int *index, char *err, size_t errlen);
void model_exec_destroy(model_exec_t *e);
/* "cpu" or "cuda:N (<GPU name>)". */
const char *model_exec_device(const model_exec_t *e);
int model_exec_is_gpu(const model_exec_t *e);
/* NULL while the device works; the reason once it is lost (a GPU error that
 * sticks: every later step would fail). */
const char *model_exec_failure(const model_exec_t *e);
/* The pool configuration the store holds: create the host pool from it.
 * Sliding-window layers (Gemma 3) sit in layer groups of their own (on
 * either device) unless kv_keep_sliding is set. */
kv_config_t model_exec_kv_config(const model_exec_t *e);
/* Bytes of store memory per block, bookkeeping included (metrics). */
size_t model_exec_kv_block_bytes(const model_exec_t *e);
/* Binds the host pool whose tensors this executor stores (sets its
 * copy-on-write callback). LC_EINVAL when its config differs. */
int model_exec_bind(model_exec_t *e, kv_pool_t *kv);

/* ---- a step ------------------------------------------------------------------- */
/* Which logits rows a sequence slice asks for. */
typedef enum {
    MODEL_LOGITS_NONE = 0,
    MODEL_LOGITS_LAST, // the slice's last token: (1, n_vocab)
    MODEL_LOGITS_ALL,  // every token (echo logprobs): (n_tok, n_vocab)
} model_logits_t;

/* One sequence's slice of a batch. Its tokens are batch->tokens[tok0 ..
 * tok0+n_tok) at positions pos0 .. pos0+n_tok-1, and the sequence's KV cache
 * already holds positions 0 .. pos0-1. Blocks for pos0+n_tok positions must be
 * reserved (kv_seq_reserve) and writable (kv_seq_prepare_write). */
typedef struct {
    int tok0;
    int n_tok;
    int64_t pos0;
    const kv_seq_t *kv;
    attn_state_t *attn; // per-sequence policy and state; NULL = dense
    /* 0: prompt tokens (exact matmul, the prefill method);
     * 1: tokens this sequence generated: each row runs as its decode step did
     *    (8-bit activation matmul, the decode method) — one row when decoding,
     *    several when recomputing after a preemption. */
    int generated;
    /* Prompt tokens: one past the prompt's last position (0: unknown), so
     * that the prefill method knows which rows end the prompt (attn_seq_t). */
    int64_t prompt_end;
    model_logits_t logits_mode;
    float *logits; // (1 or n_tok, n_vocab), host memory
    /* With MODEL_LOGITS_LAST, optional: the executor writes here the index of
     * the row's largest logit (ties to the lowest id, NaN as -inf; -1 when
     * no logit is above -inf) and may leave logits unwritten (a GPU then
     * sends 4 bytes instead of the row). For greedy draws with nothing to
     * apply to the row first (sampler_plain_greedy). */
    int32_t *argmax;
    /* With argmax, draw_temperature > 0: *argmax gets instead the token drawn
     * from softmax(row / draw_temperature) with the uniform draw_u, by the
     * rule of sampler_plain_temperature (-1 when nothing is allowed). */
    float draw_temperature;
    double draw_u;
} model_seq_t;

typedef struct {
    int n_tokens;
    const int32_t *tokens; // (n_tokens)
    int n_seqs;
    const model_seq_t *seqs; // (n_seqs); token slices are disjoint and cover the batch
} model_batch_t;

/* Runs the batch. Returns 0, LC_EINVAL (bad batch), LC_ENOMEM, LC_EDEVICE. */
int model_exec_forward(model_exec_t *e, kv_pool_t *kv, const model_batch_t *batch);
/* Host memory for the slices' logits: page-locked on a GPU, so the device
 * writes the rows straight into it (one copy per chunk of rows when the
 * slices' buffers follow each other in slice order, as the scheduler's do);
 * plain memory on the CPU. NULL when out of memory. Free with
 * model_exec_logits_free on the same executor. */
float *model_exec_logits_alloc(model_exec_t *e, size_t floats);
void model_exec_logits_free(model_exec_t *e, float *p);

/* ---- context parallelism ---------------------------------------------------------- */
#define MODEL_CP_MAX_RANKS 64
/* Where the sharded attention stands; each array has `ranks` entries. */
typedef struct {
    int ranks;                                  // 1: context parallelism off (nothing else is set)
    int64_t min_tokens;                         // sequences this long (KV after the step) are sharded
    int max_decode_rows;                        // sharded generated rows one step holds (0: any number)
    uint64_t sharded_rows;                      // batch rows whose attention ran sharded
    int64_t kv_blocks[MODEL_CP_MAX_RANKS];      // KV blocks in use each rank holds (after the last step)
    uint64_t ring_steps[MODEL_CP_MAX_RANKS];    // ring steps run
    uint64_t steps_skipped[MODEL_CP_MAX_RANKS]; // of which computed nothing (sparse)
    double compute_s[MODEL_CP_MAX_RANKS];       // attention compute inside ring steps
    double wait_s[MODEL_CP_MAX_RANKS];          // waiting for a step's transfer after its compute
    double collective_s[MODEL_CP_MAX_RANKS];    // halos, selections, all-to-alls, decode merges
} model_exec_cp_stats_t;
/* A snapshot; any thread. */
void model_exec_cp_stats(model_exec_t *e, model_exec_cp_stats_t *out);

/* Analysis hook (attn-eval; CPU only): called for every layer and every slice
 * of a batch after the slice's K/V for that layer are in the cache and before
 * its attention runs, with the slice's queries after RoPE and the cache view
 * the kernel will read (positions 0 .. pos0+n_tok-1; a sliding layer's view
 * holds only its window unless kv_keep_sliding). The hook may run kernels
 * on them but must not write either. NULL (the default) disables it.
 *   q: (n_tok, n_heads, head_dim)
 * Returns LC_EUNSUPPORTED on a GPU executor. */
typedef void (*model_attn_hook_cb)(void *ud, int layer, int seq, const attn_shape_t *shape, const float *q, int n_tok,
                                   int64_t pos0, const attn_kv_t *kv);
int model_exec_set_attn_hook(model_exec_t *e, model_attn_hook_cb cb, void *ud);

#endif
