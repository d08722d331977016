// The CUDA executor: the forward pass of a batch on one GPU.
//
// Weights are dequantized once at load, on the host with the CPU's own
// dequantizers (one of each), to bf16 (not f16: the residual stream of larger
// models leaves f16's range; the tensor cores run both at one rate), and
// uploaded; Q, K, V and gate, up are fused into one matrix each. The residual
// stream stays in f32; RMSNorm writes bf16 rows for the matmuls (cuBLASLt,
// f32 accumulation); O and down projections add into the residual in their
// epilogue. Attention runs our kernels (attn/cuda) over a paged bf16 KV store:
// prompt rows through the prefill kernel, generated rows through the split-K
// decode kernel, each planned once per step.
//
// Rows. A step's rows are kept in attention order from the embedding on: the
// prompt rows first, then the generated rows. Each kind of row has its own
// matmul configuration (both batch-invariant by default; gemm.cu): prompt
// rows the wide one (no split-K; full speed for prefill-sized steps),
// generated rows the split one (enough CTAs to stream the weights at decode
// sizes). A row's kind, never its neighbours, decides its arithmetic.
//
// A step: host arrays (tokens, positions, the cache slot of each row, the
// CSR page tables) go to the GPU in one copy; every kernel of the step is
// queued on one stream; only the logits come back. Nothing is allocated per
// step unless a step needs more than any before it (decode workspaces, the
// sparse methods' objects and plans, created on first use and grown).
//
// CUDA graphs (piecewise, as vLLM does): a step of generated rows only runs
// padded to a bucket of rows (a spare KV page takes the padding rows' K and
// V), as n_layers + 1 captured graphs, the pieces between attention calls;
// the attention kernels launch between them with the step's own plan, so
// lengths and page tables change freely. Padding rows change nothing for the
// real rows (every kernel outside attention works row by row, and the split
// matmuls are batch-invariant), so graphs on and off give the same bits.
//
// Gemma 3: QK-norm runs in the QKV epilogue, the post-norms take the O and
// down projections from a scratch (proj) into the residual, GeGLU replaces
// SwiGLU, and the sliding layers attend through windowed plans of the same
// rows over their windows' pages. The store has the pool's layer groups
// (kv.h): a block is a page of each slot of one group, so a sliding group's
// blocks that its window left go back to the pool (exec_cuda_int.cuh).
// FlexPrefill, AnchorAttention, Quest and TidalDecode run on the global
// layers (a TidalDecode selection layer that slides hands its selection to
// the next global layer, as on the CPU).
//
// Context parallelism (parallel.context > 1): exec_cuda_cp.cu runs the
// global layers' attention of long sequences through the GPU ring over
// device-local ranks of this GPU, between the pieces like any attention
// call; their sliding layers attend their windows through the windowed
// plans with every other row.
#include "model/exec_cuda_int.cuh"

/* ---- weights ------------------------------------------------------------------------ */
/* f32 -> bf16, round to nearest even (NaN stays NaN). */
static inline bf16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

/* Rows [r0, r0+n) of w, expanded by the CPU's dequantizer and rounded, into
 * dst (device), through the stages (f32 host, bf16 pinned). */
static int upload_rows(const ops_w_t *w, int r0, int n, bf16_t *dst, bf16_t *stage, float *stage_f32) {
    const int cols = w->cols;
    const int per = (int)(STAGE_BYTES / sizeof(float) / (size_t)cols);
    for (int a = 0; a < n; a += per) {
        const int cnt = n - a < per ? n - a : per;
#pragma omp parallel for schedule(static)
        for (int r = 0; r < cnt; r++) {
            float *row = stage_f32 + (size_t)r * cols;
            ops_w_row_f32(w, r0 + a + r, row);
            for (int c = 0; c < cols; c++) stage[(size_t)r * cols + c] = to_bf16(row[c]);
        }
        CUDA_CHECK_RET(
            cudaMemcpy(dst + (size_t)a * cols, stage, (size_t)cnt * cols * sizeof(bf16_t), cudaMemcpyHostToDevice));
    }
    return 0;
}

/* A device matrix made of the rows of ws[0..nw) stacked (one input dimension). */
static int upload_stack(const ops_w_t *const *ws, int nw, bf16_t **out, bf16_t *stage, float *tmp) {
    size_t rows = 0;
    for (int i = 0; i < nw; i++) rows += (size_t)ws[i]->rows;
    CUDA_CHECK_RET(cudaMalloc((void **)out, rows * ws[0]->cols * sizeof(bf16_t)));
    size_t r = 0;
    for (int i = 0; i < nw; i++) {
        int rc = upload_rows(ws[i], 0, ws[i]->rows, *out + r * ws[0]->cols, stage, tmp);
        if (rc) return rc;
        r += (size_t)ws[i]->rows;
    }
    return 0;
}

static int upload_f32(const float *src, size_t n, float **out) {
    CUDA_CHECK_RET(cudaMalloc((void **)out, n * sizeof(float)));
    CUDA_CHECK_RET(cudaMemcpy(*out, src, n * sizeof(float), cudaMemcpyHostToDevice));
    return 0;
}

static int upload_weights(model_cuda_t *c) {
    const model_t *m = c->m;
    const model_hparams_t *hp = &m->hp;
    bf16_t *stage = NULL;
    float *tmp = (float *)malloc(STAGE_BYTES); // the f32 stage
    int rc = LC_ENOMEM;
    if (!tmp || cudaMallocHost((void **)&stage, STAGE_BYTES / 2) != cudaSuccess) goto done;
    if (!(c->layers = (layer_t *)calloc((size_t)hp->n_layers, sizeof *c->layers))) goto done;
    for (int l = 0; l < hp->n_layers; l++) {
        const model_layer_t *L = &m->layers[l];
        layer_t *G = &c->layers[l];
        const ops_w_t *qkv[3] = {&L->wq, &L->wk, &L->wv}, *gu[2] = {&L->w_gate, &L->w_up};
        const ops_w_t *o[1] = {&L->wo}, *dn[1] = {&L->w_down};
        if ((rc = upload_stack(qkv, 3, &G->wqkv, stage, tmp)) || (rc = upload_stack(o, 1, &G->wo, stage, tmp)) ||
            (rc = upload_stack(gu, 2, &G->wgu, stage, tmp)) || (rc = upload_stack(dn, 1, &G->wdown, stage, tmp)) ||
            (rc = upload_f32(L->attn_norm, (size_t)hp->n_embd, &G->attn_norm)) ||
            (rc = upload_f32(L->ffn_norm, (size_t)hp->n_embd, &G->ffn_norm)))
            goto done;
        if (hp->qk_norm && ((rc = upload_f32(L->q_norm, (size_t)hp->head_dim, &G->q_norm)) ||
                            (rc = upload_f32(L->k_norm, (size_t)hp->head_dim, &G->k_norm))))
            goto done;
        if (hp->post_norms && ((rc = upload_f32(L->post_attn_norm, (size_t)hp->n_embd, &G->post_attn_norm)) ||
                               (rc = upload_f32(L->post_ffn_norm, (size_t)hp->n_embd, &G->post_ffn_norm))))
            goto done;
    }
    {
        const ops_w_t *te[1] = {&m->tok_embd}, *ou[1] = {&m->output};
        if ((rc = upload_stack(te, 1, &c->tok_embd, stage, tmp))) goto done;
        if (m->output.data == m->tok_embd.data)
            c->output = c->tok_embd;
        else if ((rc = upload_stack(ou, 1, &c->output, stage, tmp)))
            goto done;
        if ((rc = upload_f32(m->out_norm, (size_t)hp->n_embd, &c->out_norm))) goto done;
        const size_t half = (size_t)m->rope.rot_dim / 2;
        c->n_table = m->rope.n_pos;
        if ((rc = upload_f32(m->rope.cos, (size_t)m->rope.n_pos * half, &c->rope_cos)) ||
            (rc = upload_f32(m->rope.sin, (size_t)m->rope.n_pos * half, &c->rope_sin)))
            goto done;
        if (m->rope_swa.cos && (m->rope_swa.n_pos != m->rope.n_pos || m->rope_swa.rot_dim != m->rope.rot_dim)) {
            rc = LC_EINVAL; // one table size for both bases (model_load makes them so)
            goto done;
        }
        if (m->rope_swa.cos && ((rc = upload_f32(m->rope_swa.cos, (size_t)m->rope.n_pos * half, &c->rope_swa_cos)) ||
                                (rc = upload_f32(m->rope_swa.sin, (size_t)m->rope.n_pos * half, &c->rope_swa_sin))))
            goto done;
    }
    rc = 0;
done:
    if (stage) cudaFreeHost(stage);
    free(tmp);
    return rc;
}

/* ---- creation ------------------------------------------------------------------------- */


static int alloc_step(model_cuda_t *c) {
    const model_hparams_t *hp = &c->m->hp;
    const size_t T = (size_t)c->max_tokens, E = hp->n_embd, F = hp->n_ff, HD = (size_t)hp->n_heads * hp->head_dim;
    CUDA_CHECK_RET(cudaMalloc((void **)&c->x, T * E * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->xb, T * E * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->qkv, T * qkv_dim(hp) * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->q, T * HD * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->att, T * HD * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMemset(c->att, 0, T * HD * sizeof(bf16_t))); // padding rows never see NaN
    CUDA_CHECK_RET(cudaMalloc((void **)&c->gu, T * 2 * F * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->h, T * F * sizeof(bf16_t)));
    if (hp->post_norms) CUDA_CHECK_RET(cudaMalloc((void **)&c->proj, T * E * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->logits, (size_t)LOGIT_CHUNK * hp->n_vocab * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_idx, ix_arrays(c) * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_pos, T * sizeof(int64_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_argmax, T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_argmax, T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_invt, T * sizeof(float)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_invt, T * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_u, T * sizeof(double)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_u, T * sizeof(double)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_idx, ix_arrays(c) * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_pos, T * sizeof(int64_t)));
    const size_t S = (size_t)c->max_seqs + 1;
    c->pf_q_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_len = (int32_t *)malloc(S * sizeof(int32_t));
    c->dec_kv_indptr = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->dec_kv_len = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->covered = (unsigned char *)malloc(T);
    c->lrow_seq = (int32_t *)malloc(T * sizeof(int32_t));
    c->lrow_j = (int32_t *)malloc(T * sizeof(int32_t));
    c->row0 = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_mask_off = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_flex = (uint8_t *)malloc(S);
    c->pf_fpol = (attn_cuda_flex_policy_t *)malloc(S * sizeof(attn_cuda_flex_policy_t));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_pairs, 2 * S * sizeof(unsigned long long)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_pairs, 2 * S * sizeof(unsigned long long)));
    c->pf_anc = (uint8_t *)malloc(S);
    c->pf_apol = (attn_cuda_anchor_policy_t *)malloc(S * sizeof(attn_cuda_anchor_policy_t));
    if (!c->pf_anc || !c->pf_apol) return LC_ENOMEM;
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_sum, 2 * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_sum, 2 * T * sizeof(int32_t)));
    int32_t **qa[5] = {&c->q_kv_indptr, &c->q_kv_len, &c->q_budget, &c->q_dl, &c->q_thr};
    for (int i = 0; i < 5; i++)
        if (!(*qa[i] = (int32_t *)malloc((2 * T + 4 + (size_t)c->m->hp.n_layers) * sizeof(int32_t)))) return LC_ENOMEM;
    int32_t **ta[3] = {&c->t_kv_indptr, &c->t_kv_len, &c->t_budget};
    for (int i = 0; i < 3; i++)
        if (!(*ta[i] = (int32_t *)malloc((T + 1) * sizeof(int32_t)))) return LC_ENOMEM;
    c->qp = (attn_quest_plan_t **)calloc((size_t)c->m->hp.n_layers + 2, sizeof *c->qp);
    c->pf_kvs = (const kv_seq_t **)calloc(S, sizeof *c->pf_kvs);
    c->dec_kvs = (const kv_seq_t **)calloc(T + 1, sizeof *c->dec_kvs);
    int32_t **wa[3] = {&c->w_kv_indptr, &c->w_kv_len, &c->w_first};
    for (int i = 0; i < 3; i++)
        if (!(*wa[i] = (int32_t *)malloc((T + S + 1) * sizeof(int32_t)))) return LC_ENOMEM;
    if (!c->pf_kvs || !c->dec_kvs) return LC_ENOMEM;
    if (!c->pf_q_indptr || !c->pf_kv_indptr || !c->pf_kv_len || !c->dec_kv_indptr || !c->dec_kv_len || !c->covered ||
        !c->lrow_seq || !c->lrow_j || !c->row0 || !c->qp || !c->pf_mask_off || !c->pf_flex || !c->pf_fpol)
        return LC_ENOMEM;
    return 0;
}

/* The KV store's pages: o->kv_blocks, else kv_gpu_fraction of the free
 * device memory (sets page_size, page_bytes and n_pages). */
static int size_kv(model_cuda_t *c, const model_exec_opts_t *o) {
    const model_hparams_t *hp = &c->m->hp;
    c->page_size = o->block_size > 0 ? o->block_size : GPU_BLOCK;
    const size_t page_bytes = (size_t)hp->n_kv_heads * c->page_size * hp->head_dim * sizeof(bf16_t);
    const size_t sum_bytes = (size_t)hp->n_kv_heads * hp->head_dim * sizeof(float) * 2; // Quest's min and max
    const size_t per_page = (page_bytes * 2 + sum_bytes) * (size_t)c->n_slots;
    c->page_bytes = page_bytes;
    if (o->kv_blocks > 0) { // blocks of every layer: as many of each group's
        c->n_pages = o->kv_blocks * kv_config_groups(&c->kvc);
    } else {
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK_RET(cudaMemGetInfo(&free_b, &total_b));
        const double frac = o->kv_gpu_fraction > 0 ? o->kv_gpu_fraction : 0.85;
        c->n_pages = (int64_t)((double)free_b * frac / (double)per_page) - 1;
    }
    return 0;
}

static attn_cuda_shape_t kv_shape(const model_cuda_t *c) {
    const model_hparams_t *hp = &c->m->hp;
    return attn_cuda_shape_t{hp->n_heads,  hp->n_kv_heads, hp->head_dim,
                             c->page_size, c->n_pages + 1, model_attn_shape(c->m).scale};
}

/* Sizes the KV store and creates the attention plans for it. */
static int alloc_kv(model_cuda_t *c, const model_exec_opts_t *o, char *err, size_t errlen) {
    const model_hparams_t *hp = &c->m->hp;
    int rc = size_kv(c, o);
    if (rc) return rc;
    const size_t page_bytes = c->page_bytes;
    if (c->n_pages < 1 || c->n_pages > INT32_MAX / 2) {
        snprintf(err, errlen, "no room for a KV store on the GPU");
        return LC_ENOMEM;
    }
    c->layer_bytes = (size_t)(c->n_pages + 1) * page_bytes;
    if (cudaMalloc(&c->kv_mem, c->layer_bytes * 2 * c->n_slots) != cudaSuccess) {
        snprintf(err, errlen, "cannot allocate a GPU KV store of %lld pages (%.1f GiB)", (long long)c->n_pages,
                 (double)c->layer_bytes * 2 * c->n_slots / (1 << 30));
        return LC_ENOMEM;
    }
    c->kvc.n_blocks = c->n_pages;
    c->sum_floats = (size_t)(c->n_pages + 1) * hp->n_kv_heads * hp->head_dim;
    if (cudaMalloc((void **)&c->kmin, c->sum_floats * sizeof(float) * c->n_slots) != cudaSuccess ||
        cudaMalloc((void **)&c->kmax, c->sum_floats * sizeof(float) * c->n_slots) != cudaSuccess) {
        snprintf(err, errlen, "cannot allocate the GPU page summaries for %lld pages", (long long)c->n_pages);
        return LC_ENOMEM;
    }
    const attn_cuda_shape_t sh = kv_shape(c);
    const int64_t pages_per_seq = ((int64_t)hp->n_ctx_train + c->page_size - 1) / c->page_size + 1;
    attn_cuda_limits_t pl = {c->max_seqs, c->max_tokens, pages_per_seq * c->max_seqs, 0};
    attn_cuda_limits_t dl = {c->max_tokens, c->max_tokens, pages_per_seq * c->max_tokens, 0};
    c->shape = sh;
    c->dec_lim = dl;
    rc = attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &pl, &c->pf_plan);
    if (!rc) rc = attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &dl, &c->dec_plan);
    if (!rc && c->window) { // the windowed plans list a window's pages (and a step's) per sequence
        const int64_t span = ((int64_t)c->window + WPLAN_ALIGN) / c->page_size + 4; // (generous: rounding)
        const attn_cuda_limits_t wpl = {c->max_seqs, c->max_tokens,
                                        (span + 1) * c->max_seqs + (c->max_tokens + c->page_size - 1) / c->page_size,
                                        0};
        const attn_cuda_limits_t wdl = {c->max_tokens, c->max_tokens, (span + 1) * c->max_tokens, 0};
        c->n_wplans = kv_config_groups(&c->kvc) > 1 ? c->kvc.n_groups - c->kvc.n_full_groups : 1;
        c->pf_plan_w = (attn_cuda_plan_t **)calloc((size_t)c->n_wplans, sizeof *c->pf_plan_w);
        c->dec_plan_w = (attn_cuda_plan_t **)calloc((size_t)c->n_wplans, sizeof *c->dec_plan_w);
        if (!c->pf_plan_w || !c->dec_plan_w) {
            c->n_wplans = 0;
            rc = LC_ENOMEM;
        }
        for (int w = 0; w < c->n_wplans && !rc; w++) {
            rc = attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &wpl, &c->pf_plan_w[w]);
            if (!rc) rc = attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &wdl, &c->dec_plan_w[w]);
        }
    }
    if (rc) {
        snprintf(err, errlen,
                 "the GPU attention kernels do not support this model (%d heads, %d KV heads, head_dim %d, "
                 "pages of %d): %s",
                 hp->n_heads, hp->n_kv_heads, hp->head_dim, c->page_size, lc_strerror(rc));
        return rc;
    }
    return 0;
}

/* The matmul modes of prompt and generated rows: batch-invariant unless
 * asked otherwise, wide for prompt rows and split for generated rows;
 * LACUNA_GPU_GEMM=wide|split|fast gives every row one mode (to measure them). */
static void gemm_modes(const model_exec_opts_t *o, model_cuda_t *c) {
    const char *e = getenv("LACUNA_GPU_GEMM");
    c->pf_mode = OPS_GEMM_INVARIANT_WIDE;
    c->dec_mode = OPS_GEMM_INVARIANT_SPLIT;
    if (o->gpu_fast_gemm || (e && !strcmp(e, "fast")))
        c->pf_mode = c->dec_mode = OPS_GEMM_FAST;
    else if (e && !strcmp(e, "wide"))
        c->dec_mode = OPS_GEMM_INVARIANT_WIDE;
    else if (e && !strcmp(e, "split"))
        c->pf_mode = OPS_GEMM_INVARIANT_SPLIT;
}

/* The sliding layers' window (one for all of them), 0 without them, -1
 * (and the reason in err) for what the GPU executor does not run. */
static int sliding_window(const model_t *m, char *err, size_t errlen) {
    const model_hparams_t *hp = &m->hp;
    int w = 0;
    for (int l = 0; l < hp->n_layers; l++) {
        const int lw = hp->layer[l].window;
        if (lw > 0 && w > 0 && lw != w) {
            snprintf(err, errlen, "'%s': sliding layers with different windows (%d, %d) run on the CPU only", hp->name,
                     w, lw);
            return -1;
        }
        if (lw > 0) w = lw;
    }
    return w;
}

extern "C" model_cuda_t *model_cuda_create(const model_t *m, int device, const model_exec_opts_t *o, kv_config_t *kvc,
                                           size_t *block_bytes, char *devname, size_t devlen, char *err,
                                           size_t errlen) {
    const int window = sliding_window(m, err, errlen);
    if (window < 0) return NULL;
    model_cuda_t *c = (model_cuda_t *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->m = m;
    c->window = window;
    /* the layer groups: the sliding layers' own unless kv_keep_sliding; the
     * global layers read one table (the first group's), so a model whose
     * global layers span several groups keeps every position */
    c->kvc = window > 0 && !o->kv_keep_sliding ? model_kv_config_grouped(m, 1, 1) : model_kv_config(m, 1, 1);
    if (kv_config_groups(&c->kvc) > 1 && c->kvc.n_full_groups != 1) c->kvc = model_kv_config(m, 1, 1);
    c->n_slots = m->hp.n_layers / kv_config_groups(&c->kvc);
    c->lgroup = (int *)calloc((size_t)m->hp.n_layers, sizeof(int));
    c->lslot = (int *)calloc((size_t)m->hp.n_layers, sizeof(int));
    if (!c->lgroup || !c->lslot) {
        snprintf(err, errlen, "out of memory");
        model_cuda_destroy(c);
        return NULL;
    }
    model_kv_layers(m, &c->kvc, c->lgroup, c->lslot);
    const int D = m->hp.head_dim, G = m->hp.n_heads / m->hp.n_kv_heads;
    c->tidal_ok = (D == 64 || D == 128 || D == 256) && G <= 16;           // the shapes tidal_cuda.h takes
    c->quest_ok = (D == 64 || D == 128 || D == 256) && G * D <= 16 * 128; // the shapes quest_cuda.h takes
    c->device = device;
    c->max_tokens = o->max_batch_tokens;
    c->max_seqs = o->max_seqs > 0 ? o->max_seqs : o->max_batch_tokens;
    char name[128] = "";
    ops_cuda_device_name(device, name, sizeof name);
    snprintf(devname, devlen, "cuda:%d (%s)", device, name);
    int rc = LC_EDEVICE;
    if (cudaSetDevice(device) != cudaSuccess || cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) {
        snprintf(err, errlen, "cannot open GPU %d", device);
        goto fail;
    }
    gemm_modes(o, c);
    c->use_graphs = !o->gpu_no_graphs;
    model_cuda__prof_create(c);
    if ((rc = ops_cuda_gemm_create((size_t)32 << 20, c->dec_mode, &c->gemm))) {
        snprintf(err, errlen, "cannot create the cuBLASLt handle");
        goto fail;
    }
    if ((rc = upload_weights(c))) {
        snprintf(err, errlen, "cannot upload the weights to GPU %d: %s", device, lc_strerror(rc));
        goto fail;
    }
    if ((rc = alloc_step(c))) {
        snprintf(err, errlen, "cannot allocate the GPU buffers for %d tokens", c->max_tokens);
        goto fail;
    }
    if (o->context_ranks > 1) {
        /* the ranks' plans first, for the pool the free memory would give
         * now (ids are checked against it); the pool then takes its share
         * of what they leave, which is no more pages */
        if ((rc = size_kv(c, o)) || c->n_pages < 1 || c->n_pages > INT32_MAX / 2) {
            snprintf(err, errlen, "no room for a KV store on the GPU");
            goto fail;
        }
        c->shape = kv_shape(c);
        if ((rc = model_cuda__cp_create(c, o->context_ranks, o->context_min_tokens, o->context_devices, err, errlen)))
            goto fail;
    }
    if ((rc = alloc_kv(c, o, err, errlen))) goto fail;
    if (o->context_ranks > 1) {
        if ((rc = model_cuda__cp_pools(c, err, errlen))) goto fail;
        const size_t len = strlen(devname);
        if (o->context_devices && *o->context_devices)
            snprintf(devname + len, devlen > len ? devlen - len : 0,
                     " (context parallel: %d ranks on GPUs %s from %lld tokens)", o->context_ranks, o->context_devices,
                     (long long)(o->context_min_tokens > 0 ? o->context_min_tokens : 1));
        else
            snprintf(devname + len, devlen > len ? devlen - len : 0,
                     " (context parallel: %d ranks on this GPU from %lld tokens)", o->context_ranks,
                     (long long)(o->context_min_tokens > 0 ? o->context_min_tokens : 1));
    }
    c->kvc.block_size = c->page_size;
    *kvc = c->kvc;
    *block_bytes = c->page_bytes * 2 * c->n_slots;
    LC_INFO("%s: weights in bf16, KV store %lld pages of %d tokens (%.1f GiB%s)", devname, (long long)c->n_pages,
            c->page_size, (double)c->layer_bytes * 2 * c->n_slots / (1 << 30),
            kv_config_groups(&c->kvc) > 1 ? "; sliding layers keep their windows" : "");
    return c;
fail:
    model_cuda_destroy(c);
    return NULL;
}

extern "C" void model_cuda_destroy(model_cuda_t *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    model_cuda__cp_destroy(c);
    model_cuda__prof_destroy(c);
    for (int b = 0; b < N_BUCKETS; b++) {
        if (!c->graphs[b]) continue;
        for (int i = 0; i <= c->m->hp.n_layers; i++)
            if (c->graphs[b][i]) cudaGraphExecDestroy(c->graphs[b][i]);
        free(c->graphs[b]);
    }
    if (c->layers)
        for (int l = 0; l < c->m->hp.n_layers; l++) {
            layer_t *G = &c->layers[l];
            cudaFree(G->attn_norm), cudaFree(G->ffn_norm), cudaFree(G->wqkv), cudaFree(G->wo), cudaFree(G->wgu);
            cudaFree(G->wdown), cudaFree(G->q_norm), cudaFree(G->k_norm), cudaFree(G->post_attn_norm);
            cudaFree(G->post_ffn_norm);
        }
    free(c->layers);
    if (c->output != c->tok_embd) cudaFree(c->output);
    cudaFree(c->tok_embd), cudaFree(c->out_norm), cudaFree(c->rope_cos), cudaFree(c->rope_sin);
    cudaFree(c->rope_swa_cos), cudaFree(c->rope_swa_sin), cudaFree(c->proj);
    cudaFree(c->kv_mem), cudaFree(c->dec_ws);
    attn_cuda_plan_destroy(c->pf_plan);
    attn_cuda_plan_destroy(c->dec_plan);
    for (int w = 0; w < c->n_wplans; w++) {
        attn_cuda_plan_destroy(c->pf_plan_w[w]);
        attn_cuda_plan_destroy(c->dec_plan_w[w]);
    }
    free(c->pf_plan_w), free(c->dec_plan_w), free(c->pf_kvs), free(c->dec_kvs), free(c->lgroup), free(c->lslot);
    free(c->w_kv_indptr), free(c->w_kv_len), free(c->w_first), free(c->w_indices);
    for (int i = 0; c->qp && i < c->n_qp; i++) attn_quest_plan_destroy(c->qp[i]);
    attn_cuda_flex_destroy(c->flex);
    attn_cuda_anchor_destroy(c->anc);
    free(c->pf_anc), free(c->pf_apol);
    attn_cuda_plan_destroy(c->t_dense);
    attn_tidal_plan_destroy(c->t_plan);
    cudaFree(c->t_lse), cudaFree(c->t_ws);
    free(c->t_kv_indptr), free(c->t_kv_len), free(c->t_budget);
    cudaFree(c->mask), cudaFree(c->d_pairs), cudaFreeHost(c->h_pairs);
    free(c->pf_mask_off), free(c->pf_flex), free(c->pf_fpol);
    free(c->qp);
    cudaFree(c->q_ws), cudaFree(c->kmin), cudaFree(c->kmax), cudaFree(c->d_sum), cudaFreeHost(c->h_sum);
    free(c->q_kv_indptr), free(c->q_kv_len), free(c->q_budget), free(c->q_dl), free(c->q_thr);
    cudaFree(c->x), cudaFree(c->xb), cudaFree(c->qkv), cudaFree(c->q), cudaFree(c->att);
    cudaFree(c->gu), cudaFree(c->h), cudaFree(c->logits), cudaFree(c->d_idx), cudaFree(c->d_pos);
    cudaFreeHost(c->h_idx), cudaFreeHost(c->h_pos), cudaFreeHost(c->h_argmax), cudaFree(c->d_argmax);
    cudaFreeHost(c->h_invt), cudaFree(c->d_invt), cudaFreeHost(c->h_u), cudaFree(c->d_u);
    free(c->pf_q_indptr), free(c->pf_kv_indptr), free(c->pf_kv_len), free(c->dec_kv_indptr), free(c->dec_kv_len);
    free(c->kv_indices), free(c->covered), free(c->lrow_seq), free(c->lrow_j), free(c->row0);
    ops_cuda_gemm_destroy(c->gemm);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

/* ---- the KV store ---------------------------------------------------------------------- */

extern "C" void model_cuda_copy_block(void *ud, int32_t dst, int32_t src) {
    model_cuda_t *c = (model_cuda_t *)ud;
    const size_t pb = c->page_bytes;
    cudaSetDevice(c->device);
    model_cuda__cp_copy_owner(c, dst, src);
    for (int sl = 0; sl < c->n_slots; sl++) // every slot: the block is the same page of each
        for (int kv = 0; kv < 2; kv++) {
            char *base = (char *)c->kv_mem + (size_t)(2 * sl + kv) * c->layer_bytes;
            if (cudaMemcpyAsync(base + (size_t)dst * pb, base + (size_t)src * pb, pb, cudaMemcpyDeviceToDevice,
                                c->stream) != cudaSuccess)
                LC_ERROR("cuda: copying KV block %d to %d failed", src, dst);
        }
    model_cuda__cp_copy_block(c, dst); // to the pool of the rank holding it, where it has one
}

/* Page-locked up to PINNED_MAX (a step's decode rows; echoing a long
 * prompt's log-probabilities may ask for gigabytes, which plain memory
 * serves better), plain memory beyond it or when pinning fails: the copies
 * work from either. */
#define PINNED_MAX ((size_t)256 << 20)
extern "C" float *model_cuda_host_alloc(model_cuda_t *c, size_t bytes) {
    void *p = NULL;
    cudaSetDevice(c->device);
    if (bytes <= PINNED_MAX && cudaMallocHost(&p, bytes ? bytes : 1) == cudaSuccess) return (float *)p;
    cudaGetLastError();
    return (float *)malloc(bytes ? bytes : 1);
}

extern "C" void model_cuda_host_free(model_cuda_t *c, float *p) {
    if (!p) return;
    cudaSetDevice(c->device);
    cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeHost) {
        cudaFreeHost(p);
        return;
    }
    cudaGetLastError();
    free(p);
}
