/* The engine: request lifecycle, continuous batching with chunked prefill,
 * admission by free KV blocks, preemption by recomputation, cancellation,
 * stop conditions and per-request attention policy.
 *
 * Threads. sched_start() runs the step loop on its own engine thread. Other
 * threads (the HTTP loop) talk to it only through sched_submit(), the
 * per-request event queue (sched_req_poll) with its wake-up callback, and the
 * atomic cancel flag (sched_req_cancel). Without sched_start(), tests drive the
 * engine synchronously with sched_step().
 *
 * Ownership. A request is reference-counted: sched_req_create() returns one
 * reference for the caller; sched_submit() takes its own; each side drops its
 * reference with sched_req_release(). Only the engine frees KV blocks. */
#ifndef LC_SCHED_H
#define LC_SCHED_H

#include <stddef.h>
#include <stdint.h>

#include "attn/attn.h"
#include "common/hist.h"
#include "model/exec.h"
#include "model/grammar.h"
#include "model/model.h"
#include "model/sampler.h"

/* ---- configuration ------------------------------------------------------------------ */
typedef struct {
    char device[32];            // "cpu", "cuda", "cuda:N" or "auto" (model/exec.h)
    int block_size;             // KV tokens per block; 0: the device's choice (CPU 16, GPU 64)
    int64_t kv_blocks;          // KV memory in blocks of every layer (0: from kv_bytes / kv_gpu_fraction; exec.h)
    int kv_keep_sliding;        // 1: sliding-window layers keep every position (exec.h; tests, A/B)
    size_t kv_bytes;            // CPU: KV memory in bytes, when kv_blocks == 0
    double kv_gpu_fraction;     // GPU: fraction of free device memory for KV, when kv_blocks == 0
    int gpu_fast_gemm;          // GPU: 1 = cuBLASLt's fastest matmul per shape (not batch-invariant); 0 = invariant
    int gpu_no_graphs;          // GPU: 1 = no CUDA graphs for decode steps
    int max_batch_tokens;       // tokens per step (decode + prefill chunks); 0: 2048 on the CPU, 8192 on a GPU
    int max_running;            // sequences in the running set; 0: 64 on the CPU, 256 on a GPU
    int max_waiting;            // bounded waiting queue; submit fails beyond it, default 256
    int prefill_chunk;          // most prompt tokens of one request per step; 0: 512 on the CPU, 4096 on a GPU
    int target_step_ms;         // prompt rows per step sized to about this step time; < 0: only
                                // max_batch_tokens limits them; 0 (default): 250 on the CPU, 50 on a GPU
    double kv_watermark;        // fraction of blocks kept free at admission, default 0.01
    int enable_prefix_cache;    // default 1
    int threads;                // OpenMP threads of the engine's steps; 0 = OMP_NUM_THREADS or all CPUs
    int context_ranks;          // context parallelism: ranks (0 or 1: off; model/exec.h)
    int64_t context_min_tokens; // sequences this long run sharded, default 32768
    char context_devices[256];  // GPU: each rank's CUDA device ("": the executor's; model/exec.h)

    /* Attention: the default policy for "auto" and when it switches to sparse. */
    attn_policy_t attn_default;    // methods used when auto selects sparse
    int sparse_prefill_min_tokens; // auto: dense below this prompt length, default 16384
    int sparse_decode_min_tokens;  // auto: dense decode below this context, default 8192
} sched_config_t;

void sched_config_default(sched_config_t *c);

/* ---- requests -------------------------------------------------------------------------- */
typedef enum {
    SCHED_METHOD_AUTO = -1, // resolve from sched_config_t
} sched_method_auto_t;

/* The request's `sparse_attention` object, validated at the edge. Methods are
 * attn_*_method_t values or SCHED_METHOD_AUTO; numeric fields < 0 (or NaN)
 * mean "server default". */
typedef struct {
    int prefill; // attn_prefill_method_t or SCHED_METHOD_AUTO
    int decode;  // attn_decode_method_t or SCHED_METHOD_AUTO
    float gamma, tau, theta;
    int min_budget, decode_budget;
    int flex_select;                                // attn_flex_select_t, or < 0: the server's
    int anchor_init, anchor_local, anchor_lookback; // AnchorAttention's geometry (no HTTP field: `lacuna complete`'s)
    float anchor_probe;                             // AnchorAttention's probe (likewise)
} sched_attn_spec_t;

void sched_attn_spec_default(sched_attn_spec_t *s); // all auto / defaults

typedef enum {
    SCHED_FINISH_NONE = 0,
    SCHED_FINISH_STOP,      // EOS, stop token or stop string
    SCHED_FINISH_LENGTH,    // max_tokens or context length
    SCHED_FINISH_CANCELLED, // client gone / cancelled
    SCHED_FINISH_ERROR,     // engine error (status in the event)
} sched_finish_t;

const char *sched_finish_name(sched_finish_t f); // "stop", "length", "cancelled", "error"

#define SCHED_MAX_STOP 4

/* Everything the engine needs, in native types. sched_req_create copies it
 * (prompt, stop strings, logit bias), so the caller may free its copies. */
typedef struct {
    const int32_t *prompt; // (n_prompt) token ids, n_prompt >= 1
    int n_prompt;
    int n_choices;  // choices generated from the prompt (n or best_of), >= 1
    int max_tokens; // generated tokens per choice (>= 0; 0 = prefill only)
    int min_tokens; // EOS / stop tokens banned before this many
    int ignore_eos;
    const char *stop[SCHED_MAX_STOP]; // stop strings (NULL-terminated list or n_stop)
    int n_stop;
    const int32_t *stop_token_ids; // (n_stop_token_ids)
    int n_stop_token_ids;
    sampler_params_t sampling; // logit_bias pointer copied deeply
    int logprobs;              // top-n per generated token: -1 none, 0..20
    int prompt_logprobs;       // -1 none, else top-n for every prompt token (echo)
    sched_attn_spec_t attn;
    /* Constrained decoding (response_format, forced tool calls): a compiled
     * grammar every choice's text must follow, or NULL, and the vocabulary
     * its matchers use (must outlive the request). sched_req_create takes its
     * own reference to grammar. */
    gram_t *grammar;
    const gram_vocab_t *grammar_vocab;
    /* Called from the engine thread whenever events were queued (coalesced to
     * at most once per step). Must be cheap and non-blocking (uv_async_send). */
    void (*wake_cb)(void *ud);
    void *wake_ud;
} sched_params_t;

typedef struct sched_req sched_req_t;

typedef enum {
    SCHED_EV_TOKEN = 0,       // one generated token of one choice
    SCHED_EV_PROMPT_LOGPROBS, // logprobs of the prompt tokens (once, before tokens)
    SCHED_EV_FINISH,          // one choice finished (finish, status)
    SCHED_EV_DONE,            // every choice finished; usage is final; last event
} sched_ev_kind_t;

typedef struct {
    int32_t token;
    float logprob;
    int n_top;
    int32_t top_ids[SAMPLER_MAX_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_LOGPROBS];
} sched_logprob_t;

/* An event. Owned by the receiver after sched_req_poll; free the heap parts
 * with sched_event_clear. */
typedef struct {
    sched_ev_kind_t kind;
    int choice;
    /* TOKEN: the token, its logprobs (when asked) and the text that became
     * final with it. Text may be empty (a stop string might still match, or
     * half a UTF-8 character) or carry text held back from earlier tokens. */
    int32_t token;
    sched_logprob_t lp;
    int has_lp;
    char *text; // NUL-terminated, malloc'd (may be "")
    size_t text_len;
    /* PROMPT_LOGPROBS: n_prompt entries; entry 0 has no logprob (NaN). */
    sched_logprob_t *prompt_lps;
    int n_prompt_lps;
    /* FINISH */
    sched_finish_t finish;
    int status; // 0, or the error status for SCHED_FINISH_ERROR
} sched_event_t;

void sched_event_clear(sched_event_t *ev);

typedef struct {
    int prompt_tokens;
    int completion_tokens; // over all choices
    int cached_tokens;     // prompt tokens reused from the prefix cache
    int preemptions;
    /* Computed / causal query-key pairs over every head and layer of the
     * attention this request ran (1 = dense). Cached prefix tokens are not
     * counted (nothing was computed for them); recomputation after a
     * preemption is. NaN when the phase computed nothing (a prompt served
     * whole from the cache cannot happen, but max_tokens <= 1 has no decode). */
    double prefill_density;
    double decode_density;
    int prefill_method; // attn_prefill_method_t actually used
    int decode_method;  // attn_decode_method_t actually used
    double queue_s;     // submit -> first scheduled
    double ttft_s;      // submit -> first token
    double e2e_s;       // submit -> done
} sched_usage_t;

/* Creates a request (one caller reference). NULL on OOM. Validates nothing
 * that the edge validated; returns NULL with *status = LC_EINVAL for an
 * impossible combination (n_prompt < 1, n_choices < 1). */
sched_req_t *sched_req_create(const sched_params_t *p, int *status);
void sched_req_retain(sched_req_t *r);
void sched_req_release(sched_req_t *r);
/* Any thread: asks the engine to drop the request at its next step. */
void sched_req_cancel(sched_req_t *r);
/* Any thread: moves up to max queued events into out (oldest first). Returns
 * the number moved. */
int sched_req_poll(sched_req_t *r, sched_event_t *out, int max);
/* Usage; final once SCHED_EV_DONE was queued. */
void sched_req_usage(sched_req_t *r, sched_usage_t *out);
uint64_t sched_req_id(const sched_req_t *r);

/* ---- the engine ---------------------------------------------------------------------------- */
typedef struct sched sched_t;

/* Creates the engine for a loaded model (which must outlive it): the executor
 * on the configured device, its KV store and the host pool. NULL with a
 * message in err on failure. */
sched_t *sched_create(const model_t *model, const sched_config_t *cfg, char *err, size_t errlen);
/* Stops the thread if running, cancels whatever is left, frees everything. */
void sched_destroy(sched_t *s);

/* Queues a request. 0, LC_EBUSY (waiting queue full), LC_ETOOLONG (prompt +
 * max_tokens beyond the context or the KV pool), LC_ESHUTDOWN (draining),
 * LC_EINVAL (already submitted), LC_ENOMEM, LC_EDEVICE (the device is lost). */
int sched_submit(sched_t *s, sched_req_t *r);

/* Runs the engine thread. */
int sched_start(sched_t *s);
/* Stops accepting new requests (sched_submit returns LC_ESHUTDOWN). */
void sched_drain(sched_t *s);
/* Stops the engine thread after the current step; requests stay queued. */
void sched_stop(sched_t *s);
/* Synchronous step for tests (no thread): returns the number of tokens run,
 * 0 when idle, or a negative status. */
int sched_step(sched_t *s);
/* Synchronous: steps until no request is running or waiting. */
int sched_run_until_idle(sched_t *s);

/* Called by the engine loop once per step or idle wait (sd_notify WATCHDOG). */
void sched_set_heartbeat_cb(sched_t *s, void (*cb)(void *ud), void *ud);

/* ---- metrics -------------------------------------------------------------------------------- */
typedef struct {
    int running;
    int waiting;
    int64_t kv_blocks_total;
    int64_t kv_blocks_used;
    double kv_usage;        // used / total
    int64_t kv_block_bytes; // store memory per block, bookkeeping included
    uint64_t prompt_tokens_total;
    uint64_t generation_tokens_total;
    uint64_t preemptions_total;
    /* Where the engine thread's steps went: the executor's forward pass
     * (logits on the host included) and the sampling and event work after it. */
    uint64_t steps_total;
    double forward_seconds;
    double sample_seconds;
    uint64_t prefix_queried_tokens;
    uint64_t prefix_hit_tokens;
    uint64_t requests_finished[5]; // by sched_finish_t
    /* Sums of the usage densities over finished requests that ran that phase:
     * mean prefill density = prefill_density_sum / density_count, mean decode
     * density = decode_density_sum / decode_density_count. */
    double prefill_density_sum;
    double decode_density_sum;
    uint64_t density_count;        // requests in prefill_density_sum
    uint64_t decode_density_count; // requests in decode_density_sum
    lc_hist_snapshot_t ttft, itl, e2e, queue;
    model_exec_cp_stats_t cp; // context parallelism: per-rank KV and ring timing (ranks 1: off)
} sched_metrics_t;

void sched_metrics(sched_t *s, sched_metrics_t *out);
/* Tokens the whole KV pool holds (blocks x block size): a request that
 * needs more can never run. Fixed at creation; any thread. */
int64_t sched_kv_capacity(const sched_t *s);
/* The engine's KV pool, for tests that inspect its blocks and prefix cache;
 * not safe against a running engine thread. */
kv_pool_t *sched_kv(sched_t *s);
const model_t *sched_model(const sched_t *s);
/* The executor's device, "cpu" or "cuda:N (<name>)". */
const char *sched_device(const sched_t *s);
/* NULL while the device works; once it is lost (a GPU error that sticks),
 * the reason: every request then ends with LC_EDEVICE, sched_submit refuses
 * with LC_EDEVICE and the heartbeat stops (systemd's watchdog restarts the
 * daemon). */
const char *sched_failure(const sched_t *s);

#endif
