// Context parallelism in the CUDA executor, its making (exec_cuda_cp.cu has
// the steps): the ranks' GPUs (parallel.devices), peer access, plans,
// streams, communicator and threads; teardown; the ranks' pools.
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
#include "model/exec_cuda_cp.cuh"

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
    const cp_team_ops_t ops = model_cuda__cp_team_ops(x);
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

int model_cuda__cp_mirror(model_cuda_cp_t *x, int l) {
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
