// Context parallelism in the CUDA executor (parallel.context = N on a GPU):
// a sequence whose KV reaches parallel.context_min_tokens runs its attention
// through the GPU ring (attn/cp/cp_cuda.h) over N device-local ranks of the
// executor's GPU (cp_comm_cuda.h), the rest of the step as before.
//
// What a step does with its sharded slices:
//  - before the rows are laid out (model_cuda__cp_prepare): which slices are
//    sharded; the owners of the blocks the step starts (a prompt slice's
//    zig-zag, in units of 128 positions so that the sparse methods' blocks
//    lie on one rank; a generated token's block in turn, by 128-position
//    unit; an unsharded slice's blocks to rank 0); every rank's plans: each
//    prompt slice's ring (FlexPrefill or AnchorAttention where the request
//    asked for it, else dense; pass-Q on a long cached prefix where it pays;
//    AnchorAttention's exchange is its own, cp_cuda.h) and the decode plans
//    of the sharded generated rows (the dense and Quest rows together, the
//    TidalDecode rows on plans of their own, so that no row's arithmetic
//    depends on the methods of the rows beside it). A slice whose ring cannot be planned (beyond the
//    plans' room, or a sparse method's block split by an earlier owner) runs
//    on the single-rank kernels instead (one GPU holds every rank's blocks)
//    or dense, with a warning once;
//  - the rows (model_cuda__cp_rows): the sharded slices' rows sit after the
//    single-rank plans' rows of their kind (prompt rows, generated rows),
//    so those plans' CSR stays contiguous; a gather index maps each
//    rank's rows (in the ring's order) to the step's rows;
//  - a sliding-window layer (Gemma 3's) runs no ring: the windowed
//    single-rank plans (exec_cuda_plan.cu) continue over the sharded rows,
//    since a row reads no more than its window and every rank's pages are in
//    this GPU's pool; a sliding group's blocks are held by the rank holding
//    the global block of the same positions (share_windows), so /metrics'
//    per-rank KV stays true to the positions each rank holds;
//  - every global layer (model_cuda__cp_layer), after the single-rank attention on
//    the executor's stream: the sharded rows' queries are gathered, the
//    rank threads (one per rank: the device communicator matches transfers
//    on the host) run the layer's ring and decode on their streams after an
//    event of the executor's stream, and the executor's stream waits for
//    their events before scattering the outputs back. Several sharded prompt
//    slices in one step run one after another, each rank planning each
//    again (plans hold one sequence);
//  - after the step (model_cuda__cp_count): density per request from the
//    ranks' pairs (FlexPrefill and AnchorAttention: the pairs counted on the
//    device; Quest and TidalDecode: their plans' counts), per-rank KV blocks
//    and ring timing for /metrics.
//
// Without parallel.devices all ranks share this GPU's pool, so a page id is
// valid on every rank. With it (model_exec_opts_t.context_devices), rank r
// runs on its listed GPU: its streams, plans and communicator endpoint
// there (cp_dev_create_on: peer copies between GPUs), and ranks 1.. keep
// the blocks they hold in a pool of their own there, with the store's page
// ids: after each global layer's K/V write the rows written into a block a
// rank >= 1 holds are copied to its pool (mirror_kernel, on this GPU's
// stream, peer writes), as is a block copied on write. Rank 0 attends from
// this GPU's pool. This GPU still writes every row into its own pool and
// runs the rest of the step, so any slice can still fall back to the
// single-rank kernels. Such a rank works on copies of its rows' queries
// and outputs on its GPU (stage_rows). Not yet done: pools of their own
// size (each is the store's), and the ranks' own layers (docs/scaling.md,
// "One GPU per rank").
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

/* ---- gather / scatter ----------------------------------------------------------------- */
/* dst row j = src row idx[j] (gather) or dst row idx[j] = src row j
 * (scatter); rows of `vecs` 16-byte vectors. */
static __global__ void rows_kernel(const uint4 *src, uint4 *dst, const int32_t *idx, int vecs, int scatter) {
    const int64_t j = blockIdx.x;
    const int64_t from = scatter ? j : idx[j], to = scatter ? idx[j] : j;
    for (int i = threadIdx.x; i < vecs; i += blockDim.x) dst[to * vecs + i] = src[from * vecs + i];
}

static int move_rows(const model_cuda_cp_t *x, const bf16_t *src, bf16_t *dst, int64_t rows, int scatter) {
    const model_hparams_t *hp = &x->c->m->hp;
    const int vecs = (int)((size_t)hp->n_heads * hp->head_dim * sizeof(bf16_t) / 16);
    if (rows <= 0) return 0;
    rows_kernel<<<(unsigned)rows, 128, 0, x->c->stream>>>((const uint4 *)src, (uint4 *)dst, x->d_idx, vecs, scatter);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

/* ---- rank threads ----------------------------------------------------------------------- */
/* A rank with a pool of its own works on copies of its rows in its GPU's
 * memory (sq, sout): its prompt rows and every decode row in (a rank reads
 * the rows it holds and the decode rows it owns), then the rows it writes
 * out (its prompt rows, the decode rows it owns), on its stream.
 * out = 0: in; 1: out. */
static int stage_rows(model_cuda_cp_t *x, int r, int out, cudaStream_t st) {
    const model_cuda_t *c = x->c;
    const size_t HD = (size_t)c->m->hp.n_heads * c->m->hp.head_dim, B = HD * sizeof(bf16_t);
    bf16_t *from = out ? x->sout[r] : x->cq, *to = out ? x->cout : x->sq[r];
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const int64_t end = i + 1 < x->n_pf ? x->pf[i + 1].off : x->pf_rows;
        const int64_t row = sl->off + sl->rank_off[r], last = r + 1 < x->n ? sl->off + sl->rank_off[r + 1] : end;
        if (last > row)
            CUDA_CHECK_RET(
                cudaMemcpyAsync(to + row * HD, from + row * HD, (size_t)(last - row) * B, cudaMemcpyDefault, st));
    }
    if (!x->n_dec) return 0;
    if (!out)
        return cudaMemcpyAsync(to + x->pf_rows * HD, from + x->pf_rows * HD, (size_t)x->n_dec * B, cudaMemcpyDefault,
                               st) == cudaSuccess
                   ? 0
                   : LC_EDEVICE;
    for (int i = 0; i < x->n_dec; i++) {
        const int own =
            i < x->n_oth ? cp_cuda_decode_owner(x->plans[r], i) : cp_cuda_decode_owner(x->tplans[r], i - x->n_oth);
        const size_t at = (size_t)(x->pf_rows + i) * HD;
        if (own == r) CUDA_CHECK_RET(cudaMemcpyAsync(to + at, from + at, B, cudaMemcpyDefault, st));
    }
    return 0;
}

static int run_rank(model_cuda_cp_t *x, int r) {
    model_cuda_t *c = x->c;
    const int l = x->layer;
    const size_t HD = (size_t)c->m->hp.n_heads * c->m->hp.head_dim;
    cp_cuda_plan_t *p = x->plans[r];
    cp_comm_t *cm = cp_dev_comm(x->group, r);
    cudaStream_t st = (cudaStream_t)cp_comm_stream(cm);
    const void *k = layer_k(c, l), *v = layer_v(c, l);
    if (x->pool[r]) { // the same layout, its own memory
        k = x->pool[r] + ((const char *)k - (const char *)c->kv_mem);
        v = x->pool[r] + ((const char *)v - (const char *)c->kv_mem);
    }
    CUDA_CHECK_RET(cudaStreamWaitEvent(st, x->ev_main, 0));
    bf16_t *cq = x->cq, *cout = x->cout;
    int rc = 0;
    if (x->sq[r]) {
        cq = x->sq[r], cout = x->sout[r];
        if ((rc = stage_rows(x, r, 0, st))) return rc;
    }
    const char *what = "a prompt slice's plan";
    for (int i = 0; i < x->n_pf && !rc; i++) {
        cp_slice_t *sl = &x->pf[i];
        what = "a prompt slice's plan";
        if ((x->n_pf > 1 || x->dirty) && (rc = cp_cuda_plan_prefill(p, &sl->seq, st))) break;
        const size_t row = (size_t)(sl->off + sl->rank_off[r]);
        what = "a prompt slice";
        rc = cp_cuda_run_prefill(p, cm, k, v, cq + row * HD, cout + row * HD, NULL);
        if (!rc && sl->sparse) { // the pairs of this slice (the plan counts since its creation)
            double now = 0;
            if (x->n_pf_sparse > 1 || l == x->last_global) {
                if ((rc = cp_cuda_sparse_pairs(p, st, &now))) break;
                sl->pairs[r] += now - x->last_pairs[r];
                x->last_pairs[r] = now;
            }
        }
    }
    bf16_t *q = cq + (size_t)x->pf_rows * HD, *o = cout + (size_t)x->pf_rows * HD;
    if (!rc && x->n_oth) { // the dense and Quest rows
        what = x->op == OP_QUEST ? "the Quest decode rows" : "the dense decode rows";
        if (x->op == OP_QUEST)
            rc = cp_cuda_run_decode_kv(p, cm, k, v, c->kmin + layer_sum(c, l), c->kmax + layer_sum(c, l), q, o, NULL);
        else
            rc = cp_cuda_run_decode(p, cm, k, v, q, o, NULL);
    }
    if (!rc && x->n_dec > x->n_oth) { // the TidalDecode rows, after them
        cp_cuda_plan_t *tp = x->tplans[r];
        what = "the TidalDecode rows";
        q += (size_t)x->n_oth * HD, o += (size_t)x->n_oth * HD;
        if (x->top == OP_DENSE)
            rc = cp_cuda_run_decode(tp, cm, k, v, q, o, NULL);
        else
            rc = cp_cuda_run_decode_tidal(tp, cm, k, v, q, o, NULL, x->top == OP_SELECT);
    }
    if (!rc && x->sq[r]) what = "the rows' way back", rc = stage_rows(x, r, 1, st);
    if (rc) LC_WARN("cuda: context-parallel rank %d, layer %d, %s: %s", r, l, what, lc_strerror(rc));
    if (!rc) CUDA_CHECK_RET(cudaEventRecord(x->ev_rank[r], st));
    return rc;
}

static int rank_job(void *ctx, int r) { return run_rank((model_cuda_cp_t *)ctx, r); }
// the peers return from their transfers instead of waiting for a failed rank
static void rank_abort(void *ctx) { cp_dev_abort(((model_cuda_cp_t *)ctx)->group); }
static void rank_init(void *ctx, int r) { cudaSetDevice(((model_cuda_cp_t *)ctx)->dev[r]); }

/* Runs layer l on every rank; the first failing rank's status. */
static int run_ranks(model_cuda_cp_t *x, int l, int op, int top) {
    x->layer = l;
    x->op = op;
    x->top = top;
    const int rc = cp_team_run(x->team);
    if (rc) cp_dev_reset(x->group); // the step fails; the next one starts clean
    return rc;
}

/* ---- creation ------------------------------------------------------------------------------ */
/* parallel.devices: ranks GPU indices separated by commas, the first the
 * executor's; into dev. */
static int parse_devices(const char *spec, int ranks, int self, int *dev, char *err, size_t errlen) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess) cudaGetLastError(), n_dev = 0;
    const char *p = spec;
    int n = 0;
    while (*p) {
        char *end;
        const long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= n_dev || n >= ranks || (*end && *end != ',') || (*end == ',' && !end[1])) {
            snprintf(err, errlen,
                     "parallel.devices = %s: want %d CUDA device indices separated by commas, each below %d (the "
                     "GPUs here)",
                     spec, ranks, n_dev);
            return LC_EINVAL;
        }
        dev[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    if (n != ranks) {
        snprintf(err, errlen, "parallel.devices = %s: %d devices for parallel.context = %d ranks", spec, n, ranks);
        return LC_EINVAL;
    }
    if (dev[0] != self) {
        snprintf(err, errlen, "parallel.devices = %s: rank 0 must be on the executor's GPU (%d)", spec, self);
        return LC_EINVAL;
    }
    return 0;
}

/* Peer access both ways between GPUs a and b (nothing when a == b). */
static int enable_peers(int a, int b, char *err, size_t errlen) {
    if (a == b) return 0;
    int ab = 0, ba = 0;
    if (cudaDeviceCanAccessPeer(&ab, a, b) != cudaSuccess || cudaDeviceCanAccessPeer(&ba, b, a) != cudaSuccess || !ab ||
        !ba) {
        cudaGetLastError();
        snprintf(err, errlen, "parallel.devices: GPUs %d and %d cannot reach each other's memory (peer access)", a, b);
        return LC_EUNSUPPORTED;
    }
    for (int k = 0; k < 2; k++) {
        const int from = k ? b : a, to = k ? a : b;
        cudaSetDevice(from);
        const cudaError_t e = cudaDeviceEnablePeerAccess(to, 0);
        if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) {
            cudaGetLastError();
            snprintf(err, errlen, "parallel.devices: peer access from GPU %d to %d: %s", from, to,
                     cudaGetErrorString(e));
            return LC_EDEVICE;
        }
        cudaGetLastError();
    }
    return 0;
}

int model_cuda__cp_create(model_cuda_t *c, int ranks, int64_t min_tokens, const char *devices, char *err,
                          size_t errlen) {
    const model_hparams_t *hp = &c->m->hp;
    if (ranks > CP_MAX_RANKS || ranks > MODEL_CP_MAX_RANKS) {
        snprintf(err, errlen, "parallel.context = %d: at most %d ranks", ranks, CP_MAX_RANKS);
        return LC_EINVAL;
    }
    int dev[CP_MAX_RANKS];
    for (int r = 0; r < ranks; r++) dev[r] = c->device;
    const int own = devices && *devices;
    if (own) {
        int rc = parse_devices(devices, ranks, c->device, dev, err, errlen);
        for (int r = 1; !rc && r < ranks; r++) rc = enable_peers(c->device, dev[r], err, errlen);
        cudaSetDevice(c->device);
        if (rc) return rc;
    }
    if (c->page_size > 128 || 128 % c->page_size) {
        snprintf(err, errlen, "parallel.context needs GPU pages that divide 128 positions (pages of %d)", c->page_size);
        return LC_EINVAL;
    }
    model_cuda_cp_t *x = (model_cuda_cp_t *)calloc(1, sizeof *x);
    if (!x) return LC_ENOMEM;
    c->cp = x;
    x->c = c;
    x->n = ranks;
    x->own = own;
    memcpy(x->dev, dev, sizeof(int) * (size_t)ranks);
    x->min_tokens = min_tokens > 0 ? min_tokens : 1;
    for (int l = 0; l < hp->n_layers; l++)
        if (hp->layer[l].window <= 0) x->last_global = l;
    const char *e = getenv("LACUNA_CP_RING");
    x->ring_mode = e && !strcmp(e, "kv") ? CP_CUDA_PASS_KV : e && !strcmp(e, "q") ? CP_CUDA_PASS_Q : CP_CUDA_AUTO;
    pthread_mutex_init(&x->slock, NULL);
    const int S = c->max_seqs, T = c->max_tokens;
    const size_t HD = (size_t)hp->n_heads * hp->head_dim;
    x->owner = (uint8_t *)calloc((size_t)c->n_pages + 1, 1);
    x->mode = (uint8_t *)calloc((size_t)S, 1);
    x->pf = (cp_slice_t *)calloc((size_t)S, sizeof *x->pf);
    /* decode rows: a step's generated rows (recomputed slices have several) */
    x->dec_seq = (int *)calloc((size_t)T + 1, sizeof(int));
    x->dec_off = (int *)calloc((size_t)T + 1, sizeof(int));
    x->dcount = (int64_t *)calloc((size_t)T + 1, sizeof(int64_t));
    x->dcomputed = (double *)calloc((size_t)T + 1, sizeof(double));
    x->pos = (int64_t *)calloc((size_t)T + 1, sizeof(int64_t));
    int32_t **ia[8] = {&x->dkv_len, &x->dindptr, &x->dbud, &x->dtidal, &x->ddl, &x->qb_now, &x->qb_then, &x->tindptr};
    for (int i = 0; i < 8; i++) *ia[i] = (int32_t *)calloc((size_t)T + 1, sizeof(int32_t));
    if (!x->owner || !x->mode || !x->pf || !x->dec_seq || !x->dec_off || !x->dcount || !x->dcomputed || !x->dkv_len ||
        !x->dindptr || !x->dbud || !x->dtidal || !x->ddl || !x->qb_now || !x->qb_then || !x->tindptr || !x->pos) {
        snprintf(err, errlen, "out of memory");
        return LC_ENOMEM;
    }
    if (cudaMallocHost((void **)&x->h_idx, (size_t)T * sizeof(int32_t)) != cudaSuccess ||
        cudaMalloc((void **)&x->d_idx, (size_t)T * sizeof(int32_t)) != cudaSuccess ||
        (own && (cudaMallocHost((void **)&x->h_mir, (size_t)T * sizeof(int32_t)) != cudaSuccess ||
                 cudaMalloc((void **)&x->d_mir, (size_t)T * sizeof(int32_t)) != cudaSuccess)) ||
        cudaMalloc((void **)&x->cq, (size_t)T * HD * sizeof(bf16_t)) != cudaSuccess ||
        cudaMalloc((void **)&x->cout, (size_t)T * HD * sizeof(bf16_t)) != cudaSuccess ||
        cudaEventCreateWithFlags(&x->ev_main, cudaEventDisableTiming) != cudaSuccess) {
        cudaGetLastError();
        snprintf(err, errlen, "cannot allocate the context-parallel buffers on GPU %d", c->device);
        return LC_ENOMEM;
    }
    for (int r = 0; r < ranks; r++) { // recorded on the rank's stream: on its GPU
        cudaSetDevice(x->dev[r]);
        const cudaError_t e = cudaEventCreateWithFlags(&x->ev_rank[r], cudaEventDisableTiming);
        cudaSetDevice(c->device);
        if (e != cudaSuccess) {
            snprintf(err, errlen, "cannot create CUDA events");
            return LC_EDEVICE;
        }
    }
    x->group = own ? cp_dev_create_on(ranks, x->dev) : cp_dev_create(ranks, c->device);
    cudaSetDevice(c->device);
    if (!x->group) {
        snprintf(err, errlen, "cannot create %d device-local ranks (rank 0 on GPU %d)", ranks, c->device);
        return LC_EDEVICE;
    }
    /* Each rank's plan: the model's context, its share of a step's rows;
     * decode rows: at most the sequences of min_tokens the store holds (and
     * max_seqs). */
    const int64_t store = c->n_pages * c->page_size;
    const int64_t ctx = hp->n_ctx_train > 0 && hp->n_ctx_train < store ? hp->n_ctx_train : store;
    int64_t dec = store / x->min_tokens + 1;
    if (dec > S) dec = S;
    x->max_dec = (int)dec;
    /* A rank's rows of one slice (of at most T rows): two zig-zag chunks of
     * ceil(units / 2N) units of 128 positions, and a unit begun earlier. */
    const int64_t units = (T + 127) / 128 + 2, rows = (2 * ((units + 2 * ranks - 1) / (2 * ranks)) + 2) * 128;
    cp_cuda_limits_t lim;
    memset(&lim, 0, sizeof lim);
    lim.max_tokens = ctx;
    lim.max_rows = rows < T ? rows : T;
    if (lim.max_rows > ctx) lim.max_rows = ctx;
    lim.max_q_rows = lim.max_rows;
    lim.max_decode_seqs = (int)dec;
    lim.flex = 1;
    lim.max_anchor_rows = lim.max_rows < T ? T : lim.max_rows; // every row of a slice on every rank
    if (lim.max_anchor_rows > ctx) lim.max_anchor_rows = ctx;
    lim.anchor_min_local = CP_ANCHOR_LOCAL;
    lim.quest = 1;
    /* TidalDecode rows decode on plans of their own (a step's dense and
     * Quest rows beside them keep theirs: no row's arithmetic depends on
     * its neighbours' methods); their prefill room is one run's worth */
    cp_cuda_limits_t tlim;
    memset(&tlim, 0, sizeof tlim);
    tlim.max_tokens = ctx;
    tlim.max_rows = 128;
    tlim.max_pack_pages = 1;
    tlim.max_decode_seqs = (int)dec;
    tlim.tidal_budget = CP_TIDAL_ROOM;
    for (int r = 0; r < ranks; r++) {
        cudaSetDevice(x->dev[r]); // a rank's plans live on its GPU
        int rc = cp_cuda_plan_create(&c->shape, &lim, r, ranks, &x->plans[r]);
        if (!rc && c->tidal_ok) rc = cp_cuda_plan_create(&c->shape, &tlim, r, ranks, &x->tplans[r]);
        cudaSetDevice(c->device);
        if (rc) {
            snprintf(err, errlen,
                     "cannot create context-parallel rank %d's plan for %lld positions (%s): lower "
                     "engine.kv_gpu_fraction or parallel.context",
                     r, (long long)ctx, lc_strerror(rc));
            return rc;
        }
        cp_cuda_plan_timing_enable(x->plans[r], 1);
    }
    /* what a user with several GPUs would otherwise assume */
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess) cudaGetLastError(), n_dev = 1;
    if (own)
        LC_INFO("cuda: parallel.context = %d on GPUs %s (rank 0 on this one, which runs the rest of the step)", ranks,
                devices);
    else if (n_dev > 1)
        LC_WARN("cuda: parallel.context = %d runs its %d ranks on GPU %d alone, not on this machine's %d GPUs: one GPU "
                "per rank is not built yet, and ranks sharing a GPU are no faster than context = 1",
                ranks, ranks, c->device, n_dev);
    else
        LC_INFO("cuda: parallel.context = %d: %d ranks share GPU %d (they exercise the ring; they are no faster than "
                "context = 1)",
                ranks, ranks, c->device);
    const cp_team_ops_t ops = {rank_job, rank_abort, rank_init, x};
    if (!(x->team = cp_team_create(ranks, &ops))) {
        snprintf(err, errlen, "cannot start the context-parallel rank threads");
        return LC_ENOMEM;
    }
    return 0;
}

void model_cuda__cp_destroy(model_cuda_t *c) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    cp_team_destroy(x->team);
    for (int r = 0; r < x->n; r++) {
        cudaSetDevice(x->dev[r]);
        cudaDeviceSynchronize();
        cp_cuda_plan_destroy(x->plans[r]);
        cp_cuda_plan_destroy(x->tplans[r]);
        if (x->ev_rank[r]) cudaEventDestroy(x->ev_rank[r]);
        if (x->pool[r]) cudaFree(x->pool[r]);
        if (x->sq[r]) cudaFree(x->sq[r]);
        if (x->sout[r]) cudaFree(x->sout[r]);
    }
    cudaSetDevice(c->device);
    if (x->group) cp_dev_destroy(x->group);
    cudaSetDevice(c->device);
    cudaFreeHost(x->h_mir), cudaFree(x->d_mir);
    if (x->ev_main) cudaEventDestroy(x->ev_main);
    cudaFreeHost(x->h_idx), cudaFree(x->d_idx), cudaFree(x->cq), cudaFree(x->cout);
    free(x->owner), free(x->mode), free(x->pf), free(x->dec_seq), free(x->dec_off), free(x->dcount), free(x->dcomputed);
    free(x->dkv_len), free(x->dindptr), free(x->dbud), free(x->dtidal), free(x->ddl), free(x->dblocks);
    free(x->qb_now), free(x->qb_then), free(x->tindptr), free(x->pos);
    free(x->downer), free(x->sown);
    pthread_mutex_destroy(&x->slock);
    free(x);
    c->cp = NULL;
}

void model_cuda__cp_copy_owner(model_cuda_t *c, int32_t dst, int32_t src) {
    if (c->cp) c->cp->owner[dst] = c->cp->owner[src];
}

int model_cuda__cp_pools(model_cuda_t *c, char *err, size_t errlen) {
    model_cuda_cp_t *x = c->cp;
    if (!x || !x->own) return 0;
    const size_t bytes = c->layer_bytes * 2 * c->n_slots;
    const size_t rows = (size_t)c->max_tokens * c->m->hp.n_heads * c->m->hp.head_dim * sizeof(bf16_t);
    for (int r = 1; r < x->n; r++) {
        cudaSetDevice(x->dev[r]);
        cudaError_t e = cudaMalloc((void **)&x->pool[r], bytes);
        if (e == cudaSuccess) e = cudaMalloc((void **)&x->sq[r], rows);
        if (e == cudaSuccess) e = cudaMalloc((void **)&x->sout[r], rows);
        cudaSetDevice(c->device);
        if (e != cudaSuccess) {
            cudaGetLastError();
            snprintf(err, errlen,
                     "parallel.devices: no room for rank %d's KV pool (%.1f MiB, the store's size) on GPU %d%s", r,
                     (double)bytes / (1 << 20), x->dev[r],
                     x->dev[r] == c->device ? ": ranks sharing the executor's GPU need engine.kv_blocks set low" : "");
            return LC_ENOMEM;
        }
    }
    return 0;
}

void model_cuda__cp_copy_block(model_cuda_t *c, int32_t dst) {
    model_cuda_cp_t *x = c->cp;
    if (!x || !x->own || !x->pool[x->owner[dst]]) return;
    char *to = x->pool[x->owner[dst]];
    const size_t pb = c->page_bytes, off = (size_t)dst * pb;
    for (size_t part = 0; part < (size_t)2 * c->n_slots; part++) {
        const size_t at = part * c->layer_bytes + off;
        if (cudaMemcpyAsync(to + at, (char *)c->kv_mem + at, pb, cudaMemcpyDefault, c->stream) != cudaSuccess)
            LC_ERROR("cuda: copying KV block %d to rank %d's pool failed", dst, x->owner[dst]);
    }
}

/* The K and V rows a step wrote into blocks that ranks with pools of their
 * own hold, from this GPU's pool into theirs (the same page ids): block i
 * takes row i when mir[i] > 0; K and V of one slot at k and v (byte
 * offsets of the store), a row's n_kv_heads x head_dim bf16 per page slot. */
typedef struct {
    char *pool[CP_MAX_RANKS];
} pools_t;
static __global__ void mirror_kernel(const __grid_constant__ pools_t to, const char *from, const int32_t *mir,
                                     const int32_t *page, const int32_t *slot, size_t k, size_t v, int kh, int ps,
                                     int d) {
    const int i = blockIdx.x, r = mir[i];
    if (r <= 0) return;
    const size_t row = (size_t)d * sizeof(bf16_t), head = (size_t)ps * row, pg = (size_t)kh * head;
    const size_t base = (size_t)page[i] * pg + (size_t)slot[i] * row;
    for (int h = 0; h < kh; h++)
        for (size_t b = threadIdx.x * 16; b < row; b += blockDim.x * 16) {
            const size_t o = base + (size_t)h * head + b;
            *(uint4 *)(to.pool[r] + k + o) = *(const uint4 *)(from + k + o);
            *(uint4 *)(to.pool[r] + v + o) = *(const uint4 *)(from + v + o);
        }
}

static int mirror_layer(model_cuda_cp_t *x, int l) {
    model_cuda_t *c = x->c;
    if (!x->own || !x->n_mir) return 0;
    pools_t to;
    memcpy(to.pool, x->pool, sizeof to.pool);
    const int T = c->max_tokens;
    const size_t k = (const char *)layer_k(c, l) - (const char *)c->kv_mem,
                 v = (const char *)layer_v(c, l) - (const char *)c->kv_mem;
    mirror_kernel<<<(unsigned)x->mir_rows, 64, 0, c->stream>>>(to, (const char *)c->kv_mem, x->d_mir,
                                                               c->d_idx + IX_PAGE * T, c->d_idx + IX_SLOT * T, k, v,
                                                               c->m->hp.n_kv_heads, c->page_size, c->m->hp.head_dim);
    CUDA_CHECK_RET(cudaGetLastError());
    return 0;
}

/* ---- a step ------------------------------------------------------------------------------- */
/* Makes rank r's GPU current for the engine thread's calls into its plans
 * (on_rank(x, 0): the executor's again). */
static void on_rank(const model_cuda_cp_t *x, int r) {
    if (x->own && x->dev[r] != x->dev[0]) cudaSetDevice(x->dev[r]);
    if (x->own && r == 0) cudaSetDevice(x->dev[0]);
}
int model_cuda__cp_mode(const model_cuda_t *c, int s) { return c->cp ? c->cp->mode[s] : MODE_NONE; }

static const attn_policy_t *policy(const model_seq_t *q) { return q->attn ? attn_state_policy(q->attn) : NULL; }

/* A prompt slice on the ring: owners dealt, every rank planned, the rows
 * counted; MODE_NONE when its ring cannot be planned. */
static int plan_ring(model_cuda_cp_t *x, const model_seq_t *q, int s, uint8_t *so) {
    const attn_policy_t *pol = policy(q);
    cp_slice_t *sl = &x->pf[x->n_pf];
    memset(sl, 0, sizeof *sl);
    sl->s = s;
    sl->seq = cp_cuda_seq_t{q->pos0, q->n_tok, q->kv->blocks, so, x->ring_mode, NULL, NULL};
    const attn_policy_t *ap = pol && pol->prefill == ATTN_PREFILL_ANCHOR ? model_cuda__anchor_policy(q) : NULL;
    if (pol && pol->prefill == ATTN_PREFILL_FLEX) {
        sl->fpol = attn_cuda_flex_policy_t{pol->gamma,
                                           pol->tau,
                                           pol->min_budget,
                                           pol->max_budget,
                                           (int)(q->prompt_end > INT32_MAX ? 0 : q->prompt_end),
                                           pol->flex_select == ATTN_FLEX_BLOCKS};
        sl->seq.flex = &sl->fpol;
        sl->seq.mode = CP_CUDA_AUTO; // (pass-KV)
        sl->sparse = 1;
    } else if (ap) {
        sl->seq.mode = CP_CUDA_AUTO; // (its own exchange)
        sl->apol = attn_cuda_anchor_policy_t{ap->theta, ap->anchor_init, ap->anchor_local, ap->anchor_lookback,
                                             ap->anchor_probe};
        sl->seq.anchor = &sl->apol;
        sl->sparse = 1;
    }
    int rc = 0;
    for (int r = 0; r < x->n && !rc; r++) {
        cp_cuda_plan_t *p = x->plans[r];
        void *st = cp_comm_stream(cp_dev_comm(x->group, r));
        on_rank(x, r);
        rc = cp_cuda_plan_prefill(p, &sl->seq, st);
        on_rank(x, 0);
        if (rc == LC_EINVAL && sl->seq.flex) { // a 128-position block split by earlier owners: the dense ring
            if (!x->warned_flex++)
                LC_WARN("cuda: a sharded FlexPrefill prompt whose cached blocks split a 128-position block between "
                        "ranks prefills dense");
            sl->seq.flex = NULL;
            sl->sparse = 0;
            r = -1, rc = 0; // plan every rank again, dense
        }
    }
    if (rc == LC_EINVAL || rc == LC_ERANGE) {
        x->dirty = 1;
        if (sl->seq.anchor ? !x->warned_anchor++ : !x->warned_ring++)
            LC_WARN("cuda: a sharded %sslice (%lld tokens at %lld) does not fit the ring's plans (%s%s): it runs on "
                    "the single-rank kernels",
                    sl->seq.anchor ? "AnchorAttention " : "", (long long)q->n_tok, (long long)q->pos0, lc_strerror(rc),
                    sl->seq.anchor ? "; a 128-position block split between ranks, or no memory for its anchor_local"
                                   : "");
        return MODE_NONE;
    }
    if (rc) return rc;
    int64_t row = 0;
    for (int r = 0; r < x->n; r++) {
        sl->rank_off[r] = row;
        row += cp_cuda_prefill_rows(x->plans[r], NULL);
    }
    if (row != q->n_tok) return LC_EINVAL; // the ranks' rows cover the slice
    sl->off = x->pf_rows;
    /* cq row -> the slice's row (the step's row is added once the rows are laid out) */
    for (int r = 0; r < x->n; r++) {
        const int64_t nr = cp_cuda_prefill_rows(x->plans[r], x->pos);
        for (int64_t i = 0; i < nr; i++) x->h_idx[sl->off + sl->rank_off[r] + i] = (int32_t)(x->pos[i] - q->pos0);
    }
    x->pf_rows += q->n_tok;
    x->n_pf_sparse += sl->sparse;
    x->n_pf++;
    return MODE_RING;
}

/* The Quest budgets of layer l (dense below each row's dense_layers). */
static int quest_budgets(const model_cuda_cp_t *x, int l, int32_t *out) {
    int any = 0;
    for (int i = 0; i < x->n_oth; i++) {
        out[i] = x->ddl[i] >= 0 && l >= x->ddl[i] ? x->dbud[i] : 0;
        any |= out[i] > 0;
    }
    return any;
}

/* Plans the sharded dense and Quest rows on every rank (budgets: Quest's,
 * or NULL). */
static int plan_decode(model_cuda_cp_t *x, const int32_t *budget) {
    cp_cuda_dec_batch_t b = {x->n_oth, x->dkv_len, x->dindptr, x->dblocks, x->downer, budget, NULL};
    for (int r = 0; r < x->n; r++) {
        on_rank(x, r);
        int rc = cp_cuda_plan_decode(x->plans[r], &b, cp_comm_stream(cp_dev_comm(x->group, r)));
        on_rank(x, 0);
        if (rc) return rc;
    }
    for (int i = 0; budget && i < x->n_oth; i++) x->dcount[i] = budget[i] ? cp_cuda_decode_count(x->plans[0], i) : -1;
    return 0;
}

/* Plans the sharded TidalDecode rows (n_oth ..) on every rank's own plan. */
static int plan_tidal(model_cuda_cp_t *x) {
    const int n = x->n_dec - x->n_oth, b0 = x->dindptr[x->n_oth];
    for (int j = 0; j <= n; j++) x->tindptr[j] = x->dindptr[x->n_oth + j] - b0;
    cp_cuda_dec_batch_t b = {n,    x->dkv_len + x->n_oth, x->tindptr, x->dblocks + b0, x->downer + b0,
                             NULL, x->dtidal + x->n_oth};
    for (int r = 0; r < x->n; r++) {
        on_rank(x, r);
        int rc = cp_cuda_plan_decode(x->tplans[r], &b, cp_comm_stream(cp_dev_comm(x->group, r)));
        on_rank(x, 0);
        if (rc) return rc;
    }
    for (int j = 0; j < n; j++) x->dcount[x->n_oth + j] = cp_cuda_decode_count(x->tplans[0], j);
    return 0;
}

/* The sharded generated rows (a decode row, or each row of a recomputed
 * slice): the dense and Quest rows first, then the TidalDecode rows (in
 * batch order within each), their batches and plans. */
static int is_tidal(const model_cuda_cp_t *x, const model_seq_t *q) {
    const attn_policy_t *pol = q->attn ? attn_state_policy(q->attn) : NULL;
    return pol && pol->decode == ATTN_DECODE_TIDAL && x->c->tidal_ok;
}

static int plan_dec_rows(model_cuda_cp_t *x, const model_batch_t *b) {
    model_cuda_t *c = x->c;
    const int P = c->page_size;
    size_t blocks = 0;
    int k = 0;
    for (int pass = 0; pass < 2; pass++) // (qb_now, qb_then: scratch here)
        for (int i = 0; i < x->n_dec; i++)
            if (is_tidal(x, &b->seqs[x->dec_seq[i]]) == pass)
                x->qb_then[k] = x->dec_seq[i], x->qb_now[k++] = x->dec_off[i];
    for (int i = 0; i < x->n_dec; i++) {
        x->dec_seq[i] = x->qb_then[i];
        x->dec_off[i] = x->qb_now[i];
        blocks += (size_t)((b->seqs[x->dec_seq[i]].pos0 + x->dec_off[i] + 1 + P - 1) / P);
    }
    if (blocks > x->cap_dblk) {
        int32_t *nb = (int32_t *)realloc(x->dblocks, blocks * sizeof(int32_t));
        if (!nb) return LC_ENOMEM;
        x->dblocks = nb;
        uint8_t *no = (uint8_t *)realloc(x->downer, blocks);
        if (!no) return LC_ENOMEM;
        x->downer = no;
        x->cap_dblk = blocks;
    }
    x->dindptr[0] = 0;
    x->n_oth = x->n_dec;
    int quest = 0;
    for (int i = 0; i < x->n_dec; i++) {
        const model_seq_t *q = &b->seqs[x->dec_seq[i]];
        const attn_policy_t *pol = q->attn ? attn_state_policy(q->attn) : NULL;
        const int64_t len = q->pos0 + x->dec_off[i] + 1, nb = (len + P - 1) / P;
        x->dkv_len[i] = (int32_t)len;
        for (int64_t j = 0; j < nb; j++) {
            x->dblocks[x->dindptr[i] + j] = q->kv->blocks[j];
            x->downer[x->dindptr[i] + j] = x->owner[q->kv->blocks[j]];
        }
        x->dindptr[i + 1] = (int32_t)(x->dindptr[i] + nb);
        x->ddl[i] = -1;
        x->dtidal[i] = 1;
        x->dbud[i] = 0;
        if (pol && pol->decode == ATTN_DECODE_QUEST && c->quest_ok) {
            int64_t bud = ((int64_t)pol->decode_budget + P - 1) / P;
            x->dbud[i] = (int32_t)(bud < 1 ? 1 : bud);
            x->ddl[i] = pol->dense_layers;
            quest = 1;
        }
        if (is_tidal(x, q)) {
            if (x->n_oth == x->n_dec) x->n_oth = i, x->tpol = *pol;
            if (pol->dense_layers != x->tpol.dense_layers || pol->tidal_select_layer != x->tpol.tidal_select_layer ||
                pol->tidal_reselect_layer != x->tpol.tidal_reselect_layer)
                return LC_EINVAL; // the scheduler gives every request the server's schedule
            x->dtidal[i] = pol->decode_budget > 0 ? pol->decode_budget : 1; // beyond the room: LC_ERANGE
        }
        x->dcount[i] = -1;
        x->dcomputed[i] = 0;
    }
    x->t_selected = x->t_due = 0;
    x->dec_thr = -1;
    x->dec_kind = quest ? DEC_QUEST : DEC_DENSE;
    int rc = 0;
    if (x->n_oth && x->dec_kind == DEC_QUEST) {
        const int any = quest_budgets(x, 0, x->qb_now);
        x->dec_thr = any ? 0 : -1;
        rc = plan_decode(x, any ? x->qb_now : NULL);
    } else if (x->n_oth) {
        rc = plan_decode(x, NULL);
    }
    if (!rc && x->n_dec > x->n_oth) rc = plan_tidal(x);
    return rc;
}

/* The sliding groups' blocks k in [first, nb) of a sequence: held by the
 * rank holding its global block k (the same positions). Their attention
 * does not travel: every rank's pages are in this GPU's pool, and the
 * sliding layers run the windowed single-rank plans over every row (a row
 * reads no more than a window); the owners keep /metrics' per-rank KV true
 * to the positions each rank holds. */
static void share_windows(model_cuda_cp_t *x, const kv_seq_t *kv, int64_t first, int64_t nb) {
    const kv_config_t *kc = &x->c->kvc;
    for (int g = kc->n_full_groups; kv_config_groups(kc) > 1 && g < kc->n_groups; g++) {
        const int32_t *t = kv_seq_table(kv, g);
        for (int64_t k = first; k < nb; k++)
            if (t[k] >= 0) x->owner[t[k]] = x->owner[kv->blocks[k]];
    }
}

int model_cuda__cp_prepare(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    const int P = c->page_size, per = 128 / P;
    x->n_pf = x->n_pf_sparse = x->n_dec = x->n_oth = x->dirty = 0;
    x->pf_rows = 0;
    size_t need = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        need += (size_t)((q->pos0 + q->n_tok + P - 1) / P);
    }
    if (lc_grow((void **)&x->sown, &x->cap_sown, need + 1, 1)) return LC_ENOMEM;
    size_t off = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t nb = (q->pos0 + q->n_tok + P - 1) / P, first = (q->pos0 + P - 1) / P;
        const int32_t *blocks = q->kv->blocks;
        x->mode[s] = MODE_NONE;
        if (q->pos0 + q->n_tok < x->min_tokens) {
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = 0;
        } else if (q->generated) {
            /* decode rows (several when recomputed: each as it was decoded,
             * sched.h): a new block in turn, by 128-position unit */
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = (uint8_t)cp_owner_next(x->n, k / per);
            for (int i = 0; i < q->n_tok; i++, x->n_dec++) x->dec_seq[x->n_dec] = s, x->dec_off[x->n_dec] = i;
            x->mode[s] = MODE_DECODE;
        } else {
            uint8_t *so = x->sown + off;
            off += (size_t)nb;
            for (int64_t k = 0; k < nb; k++) so[k] = x->owner[blocks[k]];
            cp_zigzag(x->n, P, 128, q->pos0, q->n_tok, so);
            for (int64_t k = first; k < nb; k++) x->owner[blocks[k]] = so[k];
            const int m = plan_ring(x, q, s, so);
            if (m < 0) return m;
            x->mode[s] = (uint8_t)m;
        }
        share_windows(x, q->kv, first, nb);
    }
    if (x->n_dec) {
        int rc = plan_dec_rows(x, b);
        if (rc == LC_ERANGE || rc == LC_EINVAL) { // beyond the plans' room: the single-rank kernels
            if (!x->warned_ring++)
                LC_WARN("cuda: %d sharded decode rows do not fit the ring's plans (%s): they run on the single-rank "
                        "kernels",
                        x->n_dec, lc_strerror(rc));
            for (int i = 0; i < x->n_dec; i++) x->mode[x->dec_seq[i]] = MODE_NONE;
            x->n_dec = x->n_oth = 0;
        } else if (rc) {
            return rc;
        }
    }
    return 0;
}

int model_cuda__cp_rows(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    if (x->own) { // every row written into a block held by a rank with its own pool, sharded or not
        const int T = c->max_tokens;
        x->mir_rows = b->n_tokens;
        x->n_mir = 0;
        for (int i = 0; i < b->n_tokens; i++) {
            const int r = x->owner[c->h_idx[IX_PAGE * T + i]];
            x->h_mir[i] = x->pool[r] ? r : 0;
            x->n_mir += x->h_mir[i] > 0;
        }
        if (x->n_mir)
            CUDA_CHECK_RET(cudaMemcpyAsync(x->d_mir, x->h_mir, (size_t)b->n_tokens * sizeof(int32_t),
                                           cudaMemcpyHostToDevice, c->stream));
    }
    if (!x->n_pf && !x->n_dec) return 0;
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const int64_t n = b->seqs[sl->s].n_tok;
        for (int64_t j = 0; j < n; j++) x->h_idx[sl->off + j] += c->row0[sl->s];
    }
    for (int i = 0; i < x->n_dec; i++) x->h_idx[x->pf_rows + i] = c->row0[x->dec_seq[i]] + x->dec_off[i];
    CUDA_CHECK_RET(cudaMemcpyAsync(x->d_idx, x->h_idx, (size_t)(x->pf_rows + x->n_dec) * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
    return 0;
}

/* The decode runs of layer l: the dense and Quest rows' (op), re-planning
 * Quest's budgets where they change, and the TidalDecode rows' (top). */
static int decode_op(model_cuda_cp_t *x, int l, int *op, int *top) {
    *op = *top = OP_DENSE;
    if (x->n_dec > x->n_oth) {
        int sel; // a selection layer is dense (with the selection after it; t_due: a sliding one's, made here)
        const int tidal = attn_decode_layer(&x->tpol, l, x->t_due, &sel) == ATTN_DECODE_TIDAL;
        x->t_due = attn_decode_due(&x->tpol, l, 0, x->t_due);
        if (sel) {
            *top = OP_SELECT;
            x->t_selected = 1;
        } else if (tidal && x->t_selected) {
            *top = OP_ATTEND;
        }
    }
    if (!x->n_oth || x->dec_kind != DEC_QUEST) return 0;
    const int any = quest_budgets(x, l, x->qb_now);
    int rc = 0, changed = any != (x->dec_thr >= 0);
    if (!changed && any) {
        quest_budgets(x, x->dec_thr, x->qb_then);
        changed = memcmp(x->qb_now, x->qb_then, sizeof(int32_t) * (size_t)x->n_oth) != 0;
    }
    if (changed) {
        rc = plan_decode(x, any ? x->qb_now : NULL);
        x->dec_thr = any ? l : -1;
    }
    *op = any ? OP_QUEST : OP_DENSE;
    return rc;
}

int model_cuda__cp_layer(model_cuda_t *c, int l) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return 0;
    int rc;
    if (c->m->hp.layer[l].window <= 0 && (rc = mirror_layer(x, l))) return rc; // the ranks read global layers only
    if (!x->n_pf && !x->n_dec) return 0;
    const int64_t rows = x->pf_rows + x->n_dec;
    int op = OP_DENSE, top = OP_DENSE;
    if (c->m->hp.layer[l].window > 0) { // a sliding layer: the windowed plans ran every row (share_windows)
        if (x->n_dec > x->n_oth) x->t_due = attn_decode_due(&x->tpol, l, 1, x->t_due); // the next global layer selects
        for (int i = 0; i < x->n_dec; i++)
            x->dcomputed[i] += (double)(x->dkv_len[i] < c->window ? x->dkv_len[i] : c->window) * c->m->hp.n_heads;
        return 0;
    }
    if (x->n_dec && (rc = decode_op(x, l, &op, &top))) {
        LC_WARN("cuda: layer %d: the sharded decode rows' plan (Quest's budgets) failed: %s", l, lc_strerror(rc));
        return rc;
    }
    /* Quest pairs of this layer per row (the plan's count as planned now) */
    for (int i = 0; i < x->n_dec; i++) {
        const int64_t len = x->dkv_len[i], np = (len + c->page_size - 1) / c->page_size;
        double tok = (double)len;
        const int o = i < x->n_oth ? op : top;
        if (o == OP_QUEST && x->dbud[i] && l >= x->ddl[i] && x->ddl[i] >= 0) {
            const int64_t pages = x->dcount[i];
            if (pages >= 1 && pages < np)
                tok = (double)(pages - 1) * c->page_size + (double)(len - (np - 1) * c->page_size);
        }
        if (o == OP_ATTEND && x->dcount[i] >= 0) tok = (double)x->dcount[i] + (x->dcount[i] < len);
        x->dcomputed[i] += tok * c->m->hp.n_heads;
    }
    if ((rc = move_rows(x, c->q, x->cq, rows, 0))) return rc;
    CUDA_CHECK_RET(cudaEventRecord(x->ev_main, c->stream));
    if ((rc = run_ranks(x, l, op, top))) {
        LC_WARN("cuda: layer %d: a context-parallel rank failed (%d prompt slices, %d decode rows, %d TidalDecode): %s",
                l, x->n_pf, x->n_oth, x->n_dec - x->n_oth, lc_strerror(rc));
        return rc;
    }
    for (int r = 0; r < x->n; r++) CUDA_CHECK_RET(cudaStreamWaitEvent(c->stream, x->ev_rank[r], 0));
    return move_rows(x, x->cout, c->att, rows, 1);
}

/* After the step (the stream drained): the sharded slices' density and the
 * counters. */
void model_cuda__cp_count(model_cuda_t *c, const model_batch_t *b) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    const model_hparams_t *hp = &c->m->hp;
    uint64_t rows = 0;
    for (int i = 0; i < x->n_pf; i++) {
        const cp_slice_t *sl = &x->pf[i];
        const model_seq_t *q = &b->seqs[sl->s];
        rows += (uint64_t)q->n_tok;
        if (!q->attn) continue;
        const double n = q->n_tok,
                     all = (double)hp->n_heads * hp->n_layers * (n * (double)q->pos0 + 0.5 * n * (n + 1.0));
        double computed = c->window ? model_cuda__dense_pairs(c, q->pos0, q->n_tok, 1) : all;
        if (sl->sparse) { // the global layers' pairs the ranks counted, the sliding layers' windows beside them
            computed = c->window ? model_cuda__dense_pairs(c, q->pos0, q->n_tok, 0) : 0;
            for (int r = 0; r < x->n; r++) computed += sl->pairs[r];
        }
        attn_state_count(q->attn, q->generated, computed, all);
    }
    for (int i = 0; i < x->n_dec; i++) {
        const model_seq_t *q = &b->seqs[x->dec_seq[i]];
        rows++;
        if (!q->attn) continue;
        const double all = (double)hp->n_heads * hp->n_layers * (double)(q->pos0 + x->dec_off[i] + 1);
        attn_state_count(q->attn, 1, x->dcomputed[i], all);
    }
    pthread_mutex_lock(&x->slock);
    x->sharded_rows += rows;
    for (int r = 0; r < x->n; r++) {
        x->t[r] = *cp_cuda_plan_timing(x->plans[r]);
        if (!x->tplans[r]) continue;
        const cp_timing_t *t = cp_cuda_plan_timing(x->tplans[r]);
        x->t[r].compute_s += t->compute_s;
        x->t[r].wait_s += t->wait_s;
        x->t[r].collective_s += t->collective_s;
        x->t[r].decode_pairs += t->decode_pairs;
    }
    pthread_mutex_unlock(&x->slock);
}

extern "C" void model_cuda_cp_account(model_cuda_t *c, const kv_pool_t *kv) {
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    int64_t n[CP_MAX_RANKS] = {0};
    for (int64_t p = 0; p < c->n_pages; p++)
        if (kv_pool_block_refs(kv, (int32_t)p) > 0) n[x->owner[p]]++;
    pthread_mutex_lock(&x->slock);
    memcpy(x->kvb, n, sizeof(int64_t) * (size_t)x->n);
    pthread_mutex_unlock(&x->slock);
}

extern "C" void model_cuda_cp_stats(model_cuda_t *c, model_exec_cp_stats_t *out) {
    memset(out, 0, sizeof *out);
    out->ranks = 1;
    model_cuda_cp_t *x = c->cp;
    if (!x) return;
    out->ranks = x->n;
    out->min_tokens = x->min_tokens;
    out->max_decode_rows = x->max_dec;
    pthread_mutex_lock(&x->slock);
    out->sharded_rows = x->sharded_rows;
    for (int r = 0; r < x->n; r++) {
        out->kv_blocks[r] = x->kvb[r];
        out->ring_steps[r] = x->t[r].ring_steps;
        out->steps_skipped[r] = x->t[r].steps_skipped;
        out->compute_s[r] = x->t[r].compute_s;
        out->wait_s[r] = x->t[r].wait_s;
        out->collective_s[r] = x->t[r].collective_s;
    }
    pthread_mutex_unlock(&x->slock);
}
