/* Scheduler internals shared by req.c, policy.c, sched.c and step.c. */
#ifndef LC_SCHED_INTERNAL_H
#define LC_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "kv/kv.h"
#include "model/exec.h"
#include "model/tokenizer.h"
#include "scheduler/sched.h"
#include "scheduler/stop.h"

/* ---- one choice (an independent sequence after the shared prompt) ----------- */
typedef struct {
    kv_seq_t kv;   // blocks of this choice (empty in the prompt phase)
    int32_t *toks; // (cap) prompt then generated tokens
    int n_gen;     // generated tokens (the last one is not yet in kv)
    sampler_t *sampler;
    tok_stream_t *detok;
    sched_stopm_t stopm;
    attn_state_t *attn;
    gram_matcher_t *gm;    // constrained decoding state, or NULL
    sched_finish_t finish; // NONE while running
    double t_last;         // time of the last token (ITL)
} sched_choice_t;

typedef enum {
    REQ_NEW = 0, // created, not submitted
    REQ_WAITING, // in the waiting queue (also after preemption)
    REQ_RUNNING,
    REQ_DONE,
} req_state_t;

struct sched_req {
    atomic_int refs;
    atomic_int cancel;
    uint64_t id;

    /* Parameters, deep copies owned by the request. */
    sched_params_t p;
    int32_t *prompt; // (n_prompt)
    char *stops[SCHED_MAX_STOP];
    int32_t *stop_ids;
    sampler_bias_t *bias;

    /* Event queue: any thread polls, the engine pushes. */
    pthread_mutex_t lock;
    sched_event_t *evq; // ring (evq_cap)
    int evq_head, evq_n, evq_cap;
    sched_usage_t usage; // under lock
    int wake_pending;    // engine only: events queued this step

    /* Engine thread only. */
    req_state_t state;
    int prompt_phase;    // 1: computing the shared prompt into pkv
    kv_seq_t pkv;        // the prompt's blocks before the fork
    attn_state_t *pattn; // prompt phase attention state
    attn_policy_t policy;
    sched_choice_t *ch; // (n_choices)
    int n_live;         // choices not finished
    int sampled_once;   // first tokens drawn (the prompt's logits are used)
    int prompt_lp_done;
    sched_logprob_t *prompt_lps; // (n_prompt) while gathering prompt logprobs
    int cached_tokens;
    int preemptions;
    uint64_t admit_seq; // admission order (preemption victim: the largest)
    double t_submit, t_sched, t_first;
};

/* req.c */
int sched__req_push(sched_req_t *r, sched_event_t *ev); // takes ev's heap parts
void sched__req_set_usage(sched_req_t *r, const sched_usage_t *u);
void sched__req_free_engine_state(sched_req_t *r); // samplers, streams, attn states

/* policy.c: "auto" resolved against the config for a prompt length. */
void sched__resolve_policy(const sched_config_t *c, const sched_attn_spec_t *spec, int n_prompt, attn_policy_t *out);
/* Prefix-cache salts (kv_seq_t.salt): a prompt's blocks get 0 under dense
 * prefill (exact K/V, shareable by any dense prompt), else a fingerprint of
 * the prefill method and knobs; generated tokens' blocks always a salt of
 * their own (different arithmetic, and the decode policy), so they are never
 * handed to a prompt. */
uint64_t sched__prefill_salt(const attn_policy_t *p);
uint64_t sched__decode_salt(const attn_policy_t *p);
/* Prompt positions a request may register in the prefix cache: all of them,
 * but under FlexPrefill only the whole chunks (of `chunk` rows) before the
 * one holding the prompt's last block of rows. Those rows attend every key
 * (attn_seq_t's prompt_end), so the K/V of their chunk (whose patterns their
 * queries help choose) is not what a longer prompt computes there. */
int64_t sched__prompt_shareable(const attn_policy_t *p, int64_t n_prompt, int64_t chunk);

/* ---- the engine ---------------------------------------------------------------- */
/* What one slice of the batch is for. */
struct sched_slot {
    sched_req_t *r;
    int choice; // -1: the prompt phase (pkv)
    int rows;   // logits rows (0, 1 or n_tok)
    /* A decode slice's draw, made before the serial pass over the slices
     * (drawn: 1 when res and rc hold it). */
    int drawn, rc;
    sampler_result_t res;
    /* A plain greedy draw (sampler_plain_greedy, no grammar, nothing banned)
     * asks the executor for the argmax of its row instead of the row; on a
     * GPU a plain temperature draw (sampler_plain_temperature) asks for the
     * token drawn there. */
    int32_t argmax;
};

/* A vector of requests with a fixed capacity, reserved at creation so that
 * the engine never allocates to move a request between queues (a failed
 * allocation there would lose a request). */
typedef struct {
    sched_req_t **v;
    int n, cap;
} sched_reqv_t;

struct sched {
    const model_t *model;
    const tok_t *tok;
    model_hparams_t hp;
    sched_config_t cfg;
    kv_pool_t *kv;
    model_exec_t *exec;
    int cp_decode_rows; // sharded generated rows the executor holds in one step (0: any number)
    int32_t eos[2];
    int n_eos;

    /* Shared with submitters: waiting queue and flags, under lock. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    sched_reqv_t waiting; // FIFO; index 0 is the head
    int draining, stop, thread_running;
    pthread_t thread;
    void (*heartbeat_cb)(void *);
    void *heartbeat_ud;

    /* Engine thread only. */
    sched_reqv_t running; // admission order
    uint64_t admit_counter;
    int32_t *btok;           // (max_batch_tokens) batch tokens
    model_seq_t *bseq;       // (max_batch_tokens) batch slices
    struct sched_slot *slot; // (max_batch_tokens) what each slice is for
    float *logits;           // scratch (rows, n_vocab)
    float *tmp;              // (n_vocab) one row for a choice's sampler
    size_t logits_cap;       // floats
    sched_reqv_t touched;    // requests with events this step
    double ms_per_row;       // measured cost of a batch row (EWMA over prompt-heavy steps); 0 = none yet
    /* Where the draw runs (output.c): the cost of a row's draw (EWMA; 0 =
     * none yet), the OpenMP regions in a row that were slower than the
     * engine thread alone, and the draws since the team last ran one. */
    double draw_row_s;
    int draw_losses, draw_serial_run;

    /* Metrics, under mlock. */
    pthread_mutex_t mlock;
    sched_metrics_t m;
    lc_hist_t h_ttft, h_itl, h_e2e, h_queue;
};

/* Reserves room for cap requests (creation only). 0 or LC_ENOMEM. */
int sched__reqv_reserve(sched_reqv_t *v, int cap);
/* Never allocate; LC_ENOMEM when the reserved room is full. */
int sched__reqv_push(sched_reqv_t *v, sched_req_t *r);
void sched__reqv_remove(sched_reqv_t *v, int i);
int sched__reqv_insert(sched_reqv_t *v, int i, sched_req_t *r);

/* step.c: a step is plan, forward, after_forward, sweep. tests/bench_sample
 * runs the same parts with synthetic logits in place of the forward pass. */
int sched__step(sched_t *s);
/* Handles cancellations, builds the step's batch (s->btok, bseq, slot) and
 * points each slice's logits into s->logits. Returns the slices (0: nothing
 * to run), or a negative status after failing the batch's requests; n_tok:
 * the batch's tokens, n_decode: how many of them are decode rows. */
int sched__plan(sched_t *s, int *n_tok, int *n_decode);
/* Wakes the requests that got events and drops the engine's reference to
 * finished ones. */
void sched__sweep(sched_t *s);
/* output.c */
void sched__finish_all(sched_t *s, sched_req_t *r, sched_finish_t f, int status);
/* Samples, emits and advances every slice of the step's n_seq slices:
 * sched__draw then sched__commit. */
void sched__after_forward(sched_t *s, int n_seq);
/* Draws the tokens of the slices that may draw apart from the others
 * (slot.drawn), in parallel. */
void sched__draw(sched_t *s, int n_seq);
/* In slice order: advances each slice's KV, draws what sched__draw left,
 * and emits tokens, text and finishes; now: the step's time (TTFT, ITL). */
void sched__commit(sched_t *s, int n_seq, double now);

#endif
