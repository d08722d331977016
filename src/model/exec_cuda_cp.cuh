// What the CUDA executor's context parallelism shares between its files:
// exec_cuda_cp.cu (a step: rows, the ranks' plans and runs, accounting) and
// exec_cuda_cp_make.cu (creation, teardown, and the pools of ranks on GPUs
// of their own). Include after exec_cuda_int.cuh.
#pragma once

#include <pthread.h>

#include "model/exec_cuda_int.cuh"

extern "C" {
#include "attn/cp/cp_attn.h"
#include "attn/cp/cp_comm_cuda.h"
#include "attn/cp/cp_cuda.h"
#include "attn/cp/cp_team.h"
#include "common/mem.h"
#include "kv/kv.h"
}

#define CP_TIDAL_ROOM 4096   // TidalDecode budgets (positions) the ranks' plans hold
#define CP_ANCHOR_LOCAL 1024 // the anchor_local the ranks' plans are first made for (a smaller one: again)

enum { MODE_NONE = 0, MODE_RING = 1, MODE_DECODE = 2 };            // cp_mode of a slice
enum { DEC_DENSE = 0, DEC_QUEST = 1 };                             // the sharded dense and Quest rows' kind
enum { OP_DENSE = 0, OP_QUEST = 1, OP_SELECT = 2, OP_ATTEND = 3 }; // a layer's decode run

typedef struct {
    int s;                          // the batch slice
    int sparse;                     // 1: FlexPrefill or AnchorAttention
    int64_t off;                    // its first row in cq
    int64_t rank_off[CP_MAX_RANKS]; // rank r's rows from cq row off + rank_off[r]
    cp_cuda_seq_t seq;
    attn_cuda_flex_policy_t fpol;
    attn_cuda_anchor_policy_t apol;
    double pairs[CP_MAX_RANKS]; // the sparse pairs rank r computed in this step
} cp_slice_t;

struct model_cuda_cp {
    model_cuda_t *c;
    int n;
    int dev[CP_MAX_RANKS];                         // each rank's GPU (dev[0]: the executor's)
    int own;                                       // 1: parallel.devices given: ranks 1.. keep pools of their own
    char *pool[CP_MAX_RANKS];                      // rank r's K/V store (the layout of c->kv_mem; NULL: this GPU's)
    bf16_t *sq[CP_MAX_RANKS], *sout[CP_MAX_RANKS]; // (T, H d) on rank r's GPU: its rows' queries and outputs, staged
    int32_t *h_mir, *d_mir; // (T) the step's rows: the rank whose pool takes the row's K/V (0: none); pinned / device
    int mir_rows, n_mir;    // the step's rows, and how many go to a pool
    int64_t min_tokens;
    cp_dev_t *group;
    cp_cuda_plan_t *plans[CP_MAX_RANKS];  // prompt slices, dense and Quest decode rows
    cp_cuda_plan_t *tplans[CP_MAX_RANKS]; // TidalDecode rows (NULL without tidal_ok)
    cudaEvent_t ev_main, ev_rank[CP_MAX_RANKS];
    cp_team_t *team; // the rank threads
    int layer, op;   // their job: this layer's runs (op: the dense and Quest rows', top: TidalDecode's)
    int top;
    int last_global; // the last layer without a sliding window (the ranks read their pairs after it)
    int ring_mode;   // CP_CUDA_AUTO, or (LACUNA_CP_RING=kv or q, to measure) the ring every dense slice runs
    /* blocks */
    uint8_t *owner; // (n_pages + 1) the rank holding each page
    /* the step */
    uint8_t *mode;         // (max_seqs) MODE_* by slice
    cp_slice_t *pf;        // (max_seqs) the sharded prompt slices
    int n_pf, n_pf_sparse; // and how many run FlexPrefill or AnchorAttention
    int64_t pf_rows;       // their rows: cq rows 0 .. pf_rows - 1
    uint8_t *sown;         // owners by sequence block of the ring slices, back to back
    size_t cap_sown;
    int n_dec, dec_kind; // sharded generated rows (cq rows pf_rows ..); the kind of the first n_oth
    int n_oth;           // rows 0 .. n_oth - 1 dense or Quest (plans), the rest TidalDecode (tplans)
    int max_dec;         // the most the ranks' decode plans hold (model_exec_cp_stats_t.max_decode_rows)
    int *dec_seq;        // (T) their slices
    int *dec_off;        // (T) and rows in them (a recomputed slice of generated tokens has several)
    int32_t *dkv_len, *dindptr, *dblocks, *dbud, *dtidal, *ddl; // (T + 1) the decode batch (host)
    int32_t *tindptr; // (T + 1) the TidalDecode rows' block offsets, from their first
    uint8_t *downer;
    size_t cap_dblk;
    int32_t *qb_now, *qb_then; // (T + 1) Quest budgets of a layer, of the planned one (scratch)
    int dec_thr;               // Quest: the planned budgets are those of layer dec_thr (-1: dense)
    attn_policy_t tpol;        // TidalDecode: the rows' schedule
    int t_selected;            // a selection layer ran in this step
    int t_due;                 // a sliding layer was a selection layer: the next global layer selects
    int64_t *dcount;           // (T) Quest pages / TidalDecode positions per row, as planned
    double *dcomputed;         // (T) a decode row's pairs over the step's layers
    int32_t *h_idx, *d_idx;    // (T) the step's row of each cq row: pinned, device
    int64_t *pos;              // (T) a rank's rows' positions (scratch)
    bf16_t *cq, *cout;         // (T, H d) the sharded rows' queries and outputs
    double last_pairs[CP_MAX_RANKS];
    /* counters for the metrics thread */
    pthread_mutex_t slock;
    uint64_t sharded_rows;
    int64_t kvb[CP_MAX_RANKS];
    cp_timing_t t[CP_MAX_RANKS];
    int dirty; // a slice's plan failed after the last planned one: the ranks plan theirs again per layer
    int warned_anchor, warned_ring, warned_flex;
};

/* exec_cuda_cp.cu: the rank threads' operations (cp_team.h). */
cp_team_ops_t model_cuda__cp_team_ops(model_cuda_cp_t *x);
/* exec_cuda_cp_make.cu: after layer l's K/V write, the step's rows into
 * the pools of their own of the ranks holding their blocks (none without
 * parallel.devices). */
int model_cuda__cp_mirror(model_cuda_cp_t *x, int l);
