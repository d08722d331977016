/* Attention over the paged KV cache: dense and sparse prefill, dense and
 * sparse decode. The kernels know nothing about requests: they take plain
 * arrays (queries, block tables, lengths) and a per-sequence policy.
 *
 * Plan, then run. Once per step the executor plans over every sequence of
 * the batch (attn_plan): the batch is checked, per-sequence state is sized
 * and one workspace is sized and allocated. Then each layer runs
 * (attn_run) with that layer's store, queries, outputs and LSE. attn_run
 * allocates nothing. The per-call functions at the end (attn_prefill,
 * attn_decode, ...) plan a one-sequence batch on every call: tests and tools.
 *
 * Arithmetic (CPU). A row's result is a function of its query, its keys and
 * values, its policy and the CPU kernel set (common/cpu.h) only: never of the
 * other rows of its chunk or batch, the chunk boundaries or the thread count.
 * Dense attention (and the sink + window baseline) processes a row's keys in
 * pieces of ATTN_PIECE positions aligned to multiples of ATTN_PIECE, each
 * piece in tiles aligned to multiples of ATTN_BK, and merges the pieces in
 * order; so a prompt row and a generated row at the same position with the
 * same keys give the same bits, whichever kernel (prefill or decode) ran.
 *
 * Every kernel returns the per-row log-sum-exp of the scaled scores it
 * computed, so that partial results over disjoint key sets merge exactly
 * (chunked prefill, prefix reuse, context-parallel rings):
 *   o = sum_i exp(lse_i - lse) o_i,  lse = log sum_i exp(lse_i).
 *
 * Threading: a call uses the calling thread's OpenMP team; callers run one
 * call at a time per plan and per attn_state_t. */
#ifndef LC_ATTN_H
#define LC_ATTN_H

/* Keys per gathered tile and per piece (see the arithmetic above). */
#define ATTN_BK 64
#define ATTN_PIECE 1024

#include <stddef.h>
#include <stdint.h>

/* ---- shapes and views ------------------------------------------------------- */
typedef struct {
    int n_heads;    // query heads
    int n_kv_heads; // key/value heads (GQA: n_heads % n_kv_heads == 0)
    int head_dim;
    float scale; // usually 1/sqrt(head_dim)
} attn_shape_t;

/* One layer of one sequence's KV, paged. Block table entry i holds keys of
 * positions [i*block_size, (i+1)*block_size). */
typedef struct {
    const float *k;        // block b at k + b*blk_stride: (n_kv_heads, head_dim, block_size), transposed
    const float *v;        // block b at v + b*blk_stride: (n_kv_heads, block_size, head_dim)
    const float *kmin;     // block b at kmin + b*sum_stride: (n_kv_heads, head_dim); may be NULL
    const float *kmax;     // same as kmin
    size_t blk_stride;     // floats between consecutive blocks
    size_t sum_stride;     // floats between consecutive summaries
    const int32_t *blocks; // (ceil(n_kv / block_size)) block table
    int block_size;
    int64_t n_kv; // keys at positions 0..n_kv-1 are valid
} attn_kv_t;

/* ---- policy ------------------------------------------------------------------ */
typedef enum {
    ATTN_PREFILL_DENSE = 0,
    ATTN_PREFILL_FLEX,      // FlexPrefill
    ATTN_PREFILL_ANCHOR,    // AnchorAttention
    ATTN_PREFILL_STREAMING, // sinks + local window (baseline)
} attn_prefill_method_t;

typedef enum {
    ATTN_DECODE_DENSE = 0,
    ATTN_DECODE_QUEST,
    ATTN_DECODE_TIDAL,
    ATTN_DECODE_STREAMING,
} attn_decode_method_t;

/* FlexPrefill's rule for a vertical-slash head's blocks. */
typedef enum {
    ATTN_FLEX_TOKENS = 0, // the paper's: the fewest columns and diagonals covering gamma, every block they touch
    ATTN_FLEX_BLOCKS,     // the reference implementation's: (that column / diagonal count) / block + 1 blocks,
                          // the largest by block-pooled mass (flex.c)
} attn_flex_select_t;

/* A resolved policy: no "auto" here (the scheduler resolves auto per request). */
typedef struct {
    attn_prefill_method_t prefill;
    float gamma;                    // FlexPrefill coverage (0,1], default 0.9
    float tau;                      // FlexPrefill JS-divergence threshold, default 0.1
    int min_budget;                 // FlexPrefill min tokens per vertical-slash head, default 1024
    int max_budget;                 // FlexPrefill max tokens, 0 = none
    attn_flex_select_t flex_select; // FlexPrefill vertical-slash rule, default tokens
    float theta;                    // AnchorAttention threshold (nats), default 12; INFINITY = all keys
    int block;                      // sparse prefill block size, default 128
    int anchor_init;                // AnchorAttention initial window, default 2048
    int anchor_local;               // AnchorAttention local window/group, default 2048
    int anchor_lookback;            // AnchorAttention: a group's local window starts this far before it, default 1024
    float anchor_probe; // AnchorAttention: the probe's missed share above which a head attends every candidate
                        // of the group (anchor.c), default 0.01; 0 = no probe

    attn_decode_method_t decode;
    int decode_budget;        // tokens kept by Quest / TidalDecode, default 2048
    int dense_layers;         // first layers that stay dense for sparse decode, default 2
    int tidal_select_layer;   // TidalDecode: selection layer, default 2
    int tidal_reselect_layer; // TidalDecode: re-selection layer, default n_layers/2 (-1 = auto)

    int sink_tokens;   // StreamingLLM sinks, default 4
    int window_tokens; // StreamingLLM local window, default 1024
} attn_policy_t;

/* Fills the defaults listed above. */
void attn_policy_default(attn_policy_t *p);
/* FlexPrefill: the first position of the query blocks that attend every key
 * because they hold the prompt's last `block` rows (attn_seq_t's prompt_end;
 * INT64_MAX when it is 0, unknown). */
int64_t attn_flex_whole_from(const attn_policy_t *pol, int64_t prompt_end);
const char *attn_prefill_method_name(attn_prefill_method_t m);
const char *attn_decode_method_name(attn_decode_method_t m);
/* Parses "dense", "flexprefill", "anchor", "streaming" (prefill) and "dense",
 * "quest", "tidal", "streaming" (decode); returns 0 or LC_EINVAL. */
int attn_prefill_method_parse(const char *s, attn_prefill_method_t *out);
int attn_decode_method_parse(const char *s, attn_decode_method_t *out);
/* "tokens", "blocks". */
const char *attn_flex_select_name(attn_flex_select_t s);
int attn_flex_select_parse(const char *s, attn_flex_select_t *out);

/* ---- per-sequence state ------------------------------------------------------------ */
/* Density counters: query-key pairs computed vs. causal pairs, summed over
 * heads and layers. */
typedef struct {
    double prefill_computed, prefill_total;
    double decode_computed, decode_total;
} attn_stats_t;

/* Per-sequence attention state: the policy, density counters and the
 * cross-layer selection TidalDecode carries. Created by the scheduler with
 * the request; destroyed with it. */
typedef struct attn_state attn_state_t;
attn_state_t *attn_state_create(const attn_shape_t *shape, int n_layers, const attn_policy_t *policy);
void attn_state_destroy(attn_state_t *st);
const attn_policy_t *attn_state_policy(const attn_state_t *st);
const attn_stats_t *attn_state_stats(const attn_state_t *st);
void attn_state_reset_stats(attn_state_t *st);
/* TidalDecode's schedule, one rule for every executor and kernel set. The
 * method a generated row under pol (NULL: dense) runs at global layer
 * `layer`, and in *select whether it chooses TidalDecode's positions there,
 * after its dense attention; a TidalDecode layer before any selection of the
 * step runs dense. due: a selection handed on by sliding-window layers
 * (attn_decode_due), which this layer makes. */
attn_decode_method_t attn_decode_layer(const attn_policy_t *pol, int layer, int due, int *select);
/* The handover after layer (sliding: a sliding-window layer, which attends
 * its window whatever the policy): a sliding selection layer's choice is
 * due at the next global layer; a global layer makes what was due. Start a
 * step with 0. */
int attn_decode_due(const attn_policy_t *pol, int layer, int sliding, int due);
/* Adds query-key pairs to the decode (generated != 0) or prefill counters:
 * for executors whose attention runs outside these kernels (the GPU). */
void attn_state_count(attn_state_t *st, int generated, double computed, double total);

/* ---- plan and run ------------------------------------------------------------------ */
/* One layer's KV store as the kernels read it (f32 on the CPU). */
typedef struct {
    const float *k;    // block b at k + b*blk_stride: (n_kv_heads, head_dim, block_size), transposed
    const float *v;    // block b at v + b*blk_stride: (n_kv_heads, block_size, head_dim)
    const float *kmin; // block b at kmin + b*sum_stride: (n_kv_heads, head_dim); may be NULL
    const float *kmax; // same as kmin
    size_t blk_stride; // floats between consecutive blocks
    size_t sum_stride; // floats between consecutive summaries
    int block_size;
    int group; // which of each sequence's block tables indexes this store (attn_seq_t); 0 with one table
} attn_store_t;

/* One sequence's rows in a step. Rows tok0 .. tok0+n_tok-1 of the batch sit at
 * positions pos0 .. pos0+n_tok-1; after this step's K/V writes the keys
 * 0 .. pos0+n_tok-1 are valid, through `blocks`. */
typedef struct {
    int tok0;
    int n_tok;
    int64_t pos0;
    const int32_t *blocks; // (ceil((pos0 + n_tok) / block_size)) block table
    /* Sequences with several block tables (kv.h layer groups): the table of
     * a store of group g is blocks + g * group_stride. Entries a layer's
     * window never reaches may be -1 (released); they are never read. */
    size_t group_stride;
    attn_state_t *state; // policy, counters, selections; NULL = dense
    /* 0: prompt rows (the prefill method, causal over the chunk);
     * 1: generated tokens: each row attends as the decode step of its
     *    position did (the decode method with keys 0..pos) — one row when
     *    decoding, several when recomputing a preempted sequence. */
    int decode;
    /* Prompt rows: one past the prompt's last position when the caller
     * knows it (0: unknown). FlexPrefill's query blocks holding the prompt's
     * last `block` rows attend every key (a question at the end of the
     * prompt sits there; docs/sparse-attention.md, step 4). */
    int64_t prompt_end;
} attn_seq_t;

typedef struct {
    int n_rows; // rows of the batch (q, out, lse)
    int n_seqs;
    const attn_seq_t *seqs; // (n_seqs); row ranges disjoint
    int block_size;         // tokens per KV block of the store the run will read
} attn_batch_t;

typedef struct attn_plan attn_plan_t;
/* NULL on OOM or a bad shape. */
attn_plan_t *attn_plan_create(const attn_shape_t *shape, int n_layers);
void attn_plan_destroy(attn_plan_t *p);
/* Plans a step for the calling thread's OpenMP team: checks the batch, grows
 * the sequences' states and the workspace as needed (the only allocations).
 * The batch's arrays must stay valid until the last attn_run of the step.
 * Returns 0, LC_EINVAL (bad batch) or LC_ENOMEM. */
int attn_plan(attn_plan_t *p, const attn_batch_t *b);
/* Runs one layer of the planned step and adds to each state's density
 * counters. The store must hold the step's new K/V for this layer. A layer
 * with a sliding window (window > 0, the model's own: Gemma 3's local layers)
 * attends keys p - window < j <= p of a row at p whatever the sequences'
 * policies; 0 is the full causal span.
 *   q, out: (n_rows, n_heads, head_dim);  lse: (n_rows, n_heads) or NULL
 * Returns 0 or LC_EINVAL. */
int attn_run(attn_plan_t *p, int layer, int64_t window, const attn_store_t *kv, const float *q, float *out, float *lse);
/* Workspace bytes of the last plan (metrics, tests). */
size_t attn_plan_workspace(const attn_plan_t *p);

/* ---- per-call kernels (tests, tools) ------------------------------------------------ */
/* Each plans a one-sequence batch per call (allocates); same arithmetic as
 * attn_run. */
/* Prefill: n_q query rows at positions q_pos0..q_pos0+n_q-1 attend causally to
 * keys 0..q_pos0+n_q-1 (kv->n_kv must be >= q_pos0 + n_q). Uses the policy's
 * prefill method (st may be NULL for dense); the call's last row ends the
 * prompt (attn_seq_t's prompt_end).
 *   q:   (n_q, n_heads, head_dim)
 *   out: (n_q, n_heads, head_dim)
 *   lse: (n_q, n_heads) or NULL
 * Returns 0 or a negative status (LC_ENOMEM, LC_EINVAL). */
int attn_prefill(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, int n_q, int64_t q_pos0,
                 const attn_kv_t *kv, float *out, float *lse);

/* Decode: one query row at position kv->n_kv - 1 attends to keys 0..n_kv-1,
 * with the policy's decode method for this layer.
 *   q: (n_heads, head_dim); out: (n_heads, head_dim); lse: (n_heads) or NULL */
int attn_decode(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, const attn_kv_t *kv, float *out,
                float *lse);

/* Dense reference kernels (also the baselines). Same argument conventions. */
int attn_prefill_dense(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                       float *out, float *lse);
int attn_decode_dense(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse);

/* Sliding-window attention (the local layers of Gemma 3): a query at
 * position p sees keys p - window < j <= p, its own position included.
 * Part of the model, not a sparse method: no policy. Same argument
 * conventions as the dense kernels; window > 0. */
int attn_prefill_sliding(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                         int64_t window, float *out, float *lse);
int attn_decode_sliding(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, int64_t window, float *out,
                        float *lse);

/* Merges two partial results over disjoint key sets in place into (o1, lse1).
 * o: (rows, head_dim) per head flattened as (rows*heads, head_dim); lse (rows*heads). */
void attn_merge(float *o1, float *lse1, const float *o2, const float *lse2, int rows, int head_dim);

#endif
