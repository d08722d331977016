// The CUDA executor's internals, shared by exec_cuda.cu (weights, creation,
// the KV store, host buffers) and exec_cuda_step.cu (a step: rows, attention
// plans, the pieces and their graphs, logits and draws). See exec_cuda.cu.
#pragma once
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "attn/attn.h"
#include "attn/cuda/anchor_cuda.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/flex_cuda.h"
#include "attn/cuda/quest_cuda.h"
#include "attn/cuda/tidal_cuda.h"
#include "common/log.h"
#include "common/status.h"
#include "model/exec_cuda.h"
#include "model/model_internal.h"
#include "ops/cuda/cuda_ops.h"
}
#include "ops/cuda/cuda_check.cuh"

#define LOGIT_CHUNK 64          // logits rows per LM-head matmul
#define STAGE_BYTES (64u << 20) // pinned staging for weight upload
#define GPU_BLOCK 64            // KV tokens per page (the attention kernels take 64 or 128)
#define WPLAN_ALIGN 128         // windowed plans start their keys at a multiple of this (the prefill's query tiles)
#define N_BUCKETS 16            // graph sizes (rows of a decode step): 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ...

static const int bucket_rows[N_BUCKETS] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512};

typedef uint16_t bf16_t;

typedef struct {
    float *attn_norm, *ffn_norm; // (n_embd)
    bf16_t *wqkv;                // (QKVD, n_embd): q rows, then k, then v
    bf16_t *wo;                  // (n_embd, n_heads * head_dim)
    bf16_t *wgu;                 // (2 n_ff, n_embd): gate rows, then up
    bf16_t *wdown;               // (n_embd, n_ff)
    /* Gemma 3 (NULL otherwise) */
    float *q_norm, *k_norm;                // (head_dim) QK-norm
    float *post_attn_norm, *post_ffn_norm; // (n_embd) on the block outputs, before the residual add
} layer_t;

struct model_cuda {
    const model_t *m;
    int device, max_tokens, max_seqs;
    cudaStream_t stream;
    ops_cuda_gemm_t *gemm;
    ops_cuda_gemm_mode_t pf_mode, dec_mode; // prompt rows, generated rows (FAST: one call for all)
    /* weights */
    layer_t *layers;
    bf16_t *tok_embd, *output;  // (n_vocab, n_embd); output == tok_embd when tied
    float *out_norm;            // (n_embd)
    float *rope_cos, *rope_sin; // (n_table, rot_dim / 2)
    int64_t n_table;
    float *rope_swa_cos, *rope_swa_sin; // the sliding layers' base (Gemma 3), else NULL; n_table rows too
    /* KV store: per slot (layer of a group, kv.h) K and V, (n_pages + 1,
     * n_kv_heads, page_size, head_dim) bf16. With one layer group (a model
     * without sliding layers, or kv_keep_sliding) the slots are the layers
     * and a block is page b of every layer; with sliding groups (Gemma 3)
     * a block is page b of each slot, of the one group that holds it. */
    void *kv_mem;
    size_t layer_bytes; // one slot's K (or V): n_pages + 1 pages
    size_t page_bytes;  // one page of one slot's K (or V)
    int64_t n_pages;    // pages (blocks) the block manager owns; page n_pages takes the graphs' padding rows
    int page_size;
    kv_config_t kvc;     // the pool's configuration (n_blocks = n_pages)
    int n_slots;         // layers a block holds (n_layers / groups)
    int *lgroup, *lslot; // (n_layers) each layer's group and slot
    /* attention */
    attn_cuda_plan_t *pf_plan, *dec_plan;
    /* Sliding-window layers (Gemma 3): their window (one for all of them; 0:
     * none) and their windowed plans, the same rows over the pages of their
     * windows only, one plan pair per sliding group (its own block table;
     * one pair over the global table with one layer group): n_wplans. */
    int window;
    int n_wplans;
    attn_cuda_plan_t **pf_plan_w, **dec_plan_w; // (n_wplans)
    const kv_seq_t **pf_kvs, **dec_kvs;         // the step's prompt slices' and decode rows' tables (host)
    int32_t *w_kv_indptr, *w_kv_len, *w_first;  // the windowed CSR (host): pages, keys, first page of each entry
    int32_t *w_indices;
    size_t cap_w_indices;
    /* tidal_ok: TidalDecode's kernels take this shape (head_dim 64, 128 or
     * 256, at most 16 query heads a KV head); quest_ok: Quest's take it
     * (then the page summaries are kept). A slice whose method cannot run
     * decodes dense (a warning once). Every method runs Gemma 3's global
     * layers; its sliding layers attend their windows (a TidalDecode
     * selection layer among them hands the selection to the next global
     * layer, as on the CPU). */
    int tidal_ok, quest_ok;
    void *dec_ws;
    size_t dec_ws_bytes;
    attn_cuda_shape_t shape;
    attn_cuda_limits_t dec_lim;
    /* Quest decode (attn/cuda/quest_cuda.h): the per-channel key min and max
     * of every page a step writes, every layer, kept for any later Quest
     * step; one plan per dense-layer threshold a step needs (created on
     * demand, and created again larger when a step outgrows them) */
    float *kmin, *kmax;     // (L, n_pages + 1, n_kv_heads, head_dim)
    size_t sum_floats;      // one layer's
    int32_t *h_sum, *d_sum; // the step's written pages, then their valid tokens: (2, max_tokens), pinned / device
    attn_quest_plan_t **qp; // (n_layers + 2)
    int n_qp;
    attn_cuda_limits_t q_lim; // the plans' capacities: grown by use, at most dec_lim
    void *q_ws;
    size_t q_ws_bytes;
    int32_t *q_kv_indptr, *q_kv_len, *q_budget, *q_dl, *q_thr; // host, (2 T + 4 + L)
    /* FlexPrefill (attn/cuda/flex_cuda.h): the selection (created by the
     * first step that needs it), the step's block masks, and per prompt
     * slice its mask's offset, policy and the pairs its masks computed */
    attn_cuda_flex_t *flex;
    uint32_t *mask;
    size_t mask_bytes;
    int32_t *pf_mask_off;                  // (max_seqs) host, -1 dense
    uint8_t *pf_flex;                      // (max_seqs) host
    attn_cuda_flex_policy_t *pf_fpol;      // (max_seqs) host
    unsigned long long *d_pairs, *h_pairs; // (2 S) device, pinned: FlexPrefill's, then AnchorAttention's
    /* AnchorAttention (attn/cuda/anchor_cuda.h), created by the first step
     * that needs it for the smallest group it has seen: per prompt slice
     * whether it runs it and its policy. Its slices sit in the dense plan
     * with empty block masks (the diagonal tiles only), and the anchor run
     * writes their rows after the dense run. */
    attn_cuda_anchor_t *anc;
    int anc_min_local;
    uint8_t *pf_anc;                    // (max_seqs) host
    attn_cuda_anchor_policy_t *pf_apol; // (max_seqs) host
    /* TidalDecode (attn/cuda/tidal_cuda.h): the step's TidalDecode rows
     * share one layer schedule (the server's; a request sets its budget
     * only). A dense decode plan of their own runs their dense and selection
     * layers (with the LSE the selection needs), the tidal plan selects and
     * attends; both are created, and created again larger, on demand. */
    attn_cuda_plan_t *t_dense;
    attn_tidal_plan_t *t_plan;
    attn_tidal_limits_t t_lim; // the plans' capacities
    attn_policy_t t_pol;       // the step's schedule
    int t_selected;            // a selection ran in this step (later TidalDecode layers attend it)
    int t_due;                 // a sliding layer was a selection layer: the next global layer selects
    float *t_lse;              // (rows, n_heads) the dense pass's LSE at a selection layer
    void *t_ws;                // the tidal plan's workspace
    size_t t_lse_bytes, t_ws_bytes;
    int32_t *t_kv_indptr, *t_kv_len, *t_budget; // host (T + 1): the rows' CSR, lengths, budgets (positions)
    /* activations, for up to max_tokens rows */
    float *x;        // (T, E) residual stream
    bf16_t *xb;      // (T, E) normed rows
    float *qkv;      // (T, QKVD)
    bf16_t *q, *att; // (T, H d)
    float *gu;       // (T, 2F)
    float *proj;     // (T, E) a block's output before its post-norm (Gemma 3), else NULL
    bf16_t *h;       // (T, F)
    float *logits;   // (LOGIT_CHUNK, V)
    /* the step's index arrays: device, and their pinned host twin */
    int32_t *d_idx, *h_idx; // tok | kv_page | kv_slot | page length | lrows, each (T), by row
    int64_t *d_pos, *h_pos; // (T)
    int32_t *lrow_seq;      // (T) host: the slice of each logits row (slice order) ...
    int32_t *lrow_j;        // (T) ... and the row's index in the slice's logits
    int32_t *row0;          // (max_seqs) host: the first row of each slice
    int32_t *d_argmax;      // (T) the argmax (or draw) of each logits row
    int32_t *h_argmax;      // (T) pinned
    float *d_invt, *h_invt; // (T) 1 / temperature of a row drawn on the GPU, else 0; host twin pinned
    double *d_u, *h_u;      // (T) its uniform
    /* decode-step graphs: per bucket, n_layers + 1 pieces (NULL until captured) */
    int use_graphs;
    cudaGraphExec_t *graphs[N_BUCKETS];
    /* host scratch for the CSR views */
    int32_t *pf_q_indptr, *pf_kv_indptr, *pf_kv_len, *dec_kv_indptr, *dec_kv_len, *kv_indices;
    size_t cap_indices;
    unsigned char *covered;   // (T) batch validation
    struct model_cuda_cp *cp; // context parallelism (parallel.context > 1; exec_cuda_cp.cu), else NULL
    struct step_prof *prof;   // LACUNA_CUDA_PROFILE: where decode steps spend their time (NULL: off)
    char failure[256];        // set once the device is lost (model_cuda_failure)
    const char *stage;        // what the step was doing (a failed step's warning says)
};

/* Host side of a step: the rows in attention order (prompt rows first, then
 * generated rows), both CSR views. rows: the rows the step computes (the
 * batch's tokens, or a graph bucket's padded count). */
typedef struct {
    int n_pf_seqs, n_pf_rows, n_dec; // n_dec: dense decode rows, then n_quest Quest rows
    int n_quest, n_thr;              // n_thr: the distinct dense_layers of the Quest rows (q_thr, ascending)
    int n_flex;                      // prompt slices under FlexPrefill (block masks)
    int n_anchor;                    // prompt slices under AnchorAttention
    size_t mask_words;               // the step's block masks (FlexPrefill's, AnchorAttention's empty ones)
    int n_tidal;                     // TidalDecode rows (after the Quest rows; their own CSR)
    int n_wpf, n_wdec;               // the sliding layers' windowed plans: prompt entries and generated rows,
                                     // the sharded slices' (exec_cuda_cp.cu) after the others
    size_t t_idx0;                   // their first entry in kv_indices (absolute)
    int n_sum;                       // pages the step lists with their lengths (h_sum; none when rowwise)
    int rowwise;                     // 1: each row writes its own page (decode steps): summaries row by row
    int n_lrows;
    int rows, bucket; // bucket: the graph bucket's index, -1 without a graph
} step_t;

/* Plans the step's attention (exec_cuda_plan.cu): every plan its rows need,
 * created or grown on demand, and the workspaces they size. */
int model_cuda__plan_attention(model_cuda_t *c, const step_t *st);

/* Query-key pairs of rows at positions pos0 .. pos0 + n - 1 over the layers
 * and heads: every earlier key on a global layer (with globals), a sliding
 * layer's window (exec_cuda_step.cu). */
double model_cuda__dense_pairs(const model_cuda_t *c, int64_t pos0, int64_t n, int globals);

/* Context parallelism (exec_cuda_cp.cu; every call does nothing without
 * it): create once the KV store is sized, before it is allocated (ranks:
 * device-local ranks of this GPU, or of the GPUs `devices` lists, sharding
 * sequences whose KV reaches min_tokens), pools after it is allocated, and
 * destroy before it;
 * per step prepare (which slices are sharded: mode(s) MODE_* of the file;
 * owners, plans) before the rows are laid out, rows after (their gather
 * index), layer after each layer's single-rank attention, count after the
 * step drained; copy_owner for a block copied on write. */
typedef struct model_cuda_cp model_cuda_cp_t;
int model_cuda__cp_create(model_cuda_t *c, int ranks, int64_t min_tokens, const char *devices, char *err,
                          size_t errlen);
/* After the KV store: the pools of the ranks that keep their own (devices
 * given), each the store's size on its rank's GPU. */
int model_cuda__cp_pools(model_cuda_t *c, char *err, size_t errlen);
void model_cuda__cp_destroy(model_cuda_t *c);
int model_cuda__cp_mode(const model_cuda_t *c, int s); // 0: single-rank, 1: the ring, 2: a sharded decode row
int model_cuda__cp_prepare(model_cuda_t *c, const model_batch_t *b);
int model_cuda__cp_rows(model_cuda_t *c, const model_batch_t *b);
int model_cuda__cp_layer(model_cuda_t *c, int l);
void model_cuda__cp_count(model_cuda_t *c, const model_batch_t *b);
/* exec_cuda_step.cu: the AnchorAttention policy of a prompt slice the GPU can
 * run (windows of whole 128-position blocks; a warning once otherwise), or
 * NULL (dense prefill). */
const attn_policy_t *model_cuda__anchor_policy(const model_seq_t *q);
void model_cuda__cp_copy_owner(model_cuda_t *c, int32_t dst, int32_t src);
/* After block dst was copied in the store (stream order): the copy into the
 * pool of the rank holding it, when that rank keeps its own. */
void model_cuda__cp_copy_block(model_cuda_t *c, int32_t dst);

/* The step profile (exec_cuda_prof.cu): created from the environment,
 * reported and freed with the executor; every call does nothing when it is
 * off. A step calls mark 0..7 at its host phases' ends, event 0 before its
 * uploads, 1 after its plans, 2 + 2 i after piece i, 3 + 2 i after
 * attention call i and -1 after the logits, then step after its sync; now
 * and created time the creation of sparse decode plans, grow counts a
 * workspace grown to bytes (its new size). */
void model_cuda__prof_create(model_cuda_t *c);
void model_cuda__prof_destroy(model_cuda_t *c);
void model_cuda__prof_mark(model_cuda_t *c, int k);
void model_cuda__prof_event(model_cuda_t *c, int i);
void model_cuda__prof_step(model_cuda_t *c, int decode, int rows);
double model_cuda__prof_now(const model_cuda_t *c);
void model_cuda__prof_created(model_cuda_t *c, double t0);
void model_cuda__prof_grow(model_cuda_t *c, size_t bytes);

/* The step's index arrays, each (max_tokens) int32, one after the other;
 * IX_PAGE: the row's page in the first group's table (the other groups'
 * follow IX_LROWS: ix_page); IX_PLEN: the valid tokens of the row's page
 * once the row is written. */
enum { IX_TOK, IX_PAGE, IX_SLOT, IX_PLEN, IX_LROWS, IX_N };
static inline int ix_page(const model_cuda_t *c, int g) { return g == 0 ? IX_PAGE : IX_N + g - 1; }
static inline int ix_arrays(const model_cuda_t *c) { return IX_N + kv_config_groups(&c->kvc) - 1; }

static inline size_t qkv_dim(const model_hparams_t *hp) {
    return (size_t)(hp->n_heads + 2 * hp->n_kv_heads) * hp->head_dim;
}

/* Layer l's K and V pools (its slot's: n_pages + 1 pages each), and its
 * Quest page summaries (global layers only). */
static inline void *layer_k(const model_cuda_t *c, int l) {
    return (char *)c->kv_mem + (size_t)(2 * c->lslot[l]) * c->layer_bytes;
}
static inline void *layer_v(const model_cuda_t *c, int l) {
    return (char *)c->kv_mem + (size_t)(2 * c->lslot[l] + 1) * c->layer_bytes;
}
static inline size_t layer_sum(const model_cuda_t *c, int l) { return (size_t)c->lslot[l] * c->sum_floats; }
/* The windowed plan pair of sliding layer l. */
static inline int layer_wplan(const model_cuda_t *c, int l) {
    return kv_config_groups(&c->kvc) > 1 ? c->lgroup[l] - c->kvc.n_full_groups : 0;
}
