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
// step unless a step needs more decode workspace than any before it.
//
// CUDA graphs (piecewise, as vLLM does): a step of generated rows only runs
// padded to a bucket of rows (a spare KV page takes the padding rows' K and
// V), as n_layers + 1 captured graphs, the pieces between attention calls;
// the attention kernels launch between them with the step's own plan, so
// lengths and page tables change freely. Padding rows change nothing for the
// real rows (every kernel outside attention works row by row, and the split
// matmuls are batch-invariant), so graphs on and off give the same bits.
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "attn/attn.h"
#include "attn/cuda/attn_cuda.h"
#include "attn/cuda/quest_cuda.h"
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
#define N_BUCKETS 16            // graph sizes (rows of a decode step): 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ...

static const int bucket_rows[N_BUCKETS] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 384, 512};

typedef uint16_t bf16_t;

typedef struct {
    float *attn_norm, *ffn_norm; // (n_embd)
    bf16_t *wqkv;                // (QKVD, n_embd): q rows, then k, then v
    bf16_t *wo;                  // (n_embd, n_heads * head_dim)
    bf16_t *wgu;                 // (2 n_ff, n_embd): gate rows, then up
    bf16_t *wdown;               // (n_embd, n_ff)
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
    /* KV store: per layer K and V, (n_pages, n_kv_heads, page_size, head_dim) bf16 */
    void *kv_mem;
    size_t layer_bytes; // one layer's K (or V): n_pages + 1 pages
    size_t page_bytes;  // one page of one layer's K (or V)
    int64_t n_pages;    // pages the block manager owns; page n_pages takes the graphs' padding rows
    int page_size;
    /* attention */
    attn_cuda_plan_t *pf_plan, *dec_plan;
    void *dec_ws;
    size_t dec_ws_bytes;
    attn_cuda_shape_t shape;
    attn_cuda_limits_t dec_lim;
    /* Quest decode (attn/cuda/quest_cuda.h): the per-channel key min and max
     * of every page a step writes, every layer, kept for any later Quest
     * step; one plan per dense-layer threshold a step needs (grown on demand) */
    float *kmin, *kmax;     // (L, n_pages + 1, n_kv_heads, head_dim)
    size_t sum_floats;      // one layer's
    int32_t *h_sum, *d_sum; // the step's written pages, then their valid tokens: (2, max_tokens), pinned / device
    attn_quest_plan_t **qp; // (n_layers + 2)
    int n_qp;
    void *q_ws;
    size_t q_ws_bytes;
    int32_t *q_kv_indptr, *q_kv_len, *q_budget, *q_dl, *q_thr; // host, (2 T + 4 + L)
    /* activations, for up to max_tokens rows */
    float *x;        // (T, E) residual stream
    bf16_t *xb;      // (T, E) normed rows
    float *qkv;      // (T, QKVD)
    bf16_t *q, *att; // (T, H d)
    float *gu;       // (T, 2F)
    bf16_t *h;       // (T, F)
    float *logits;   // (LOGIT_CHUNK, V)
    /* the step's index arrays: device, and their pinned host twin */
    int32_t *d_idx, *h_idx; // tok | kv_page | kv_slot | page length | lrows, each (T), by row
    int64_t *d_pos, *h_pos; // (T)
    int32_t *lrow_tok;      // (T) host: the batch token of each logits row (slice order)
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
    unsigned char *covered; // (T) batch validation
    char failure[256];      // set once the device is lost (model_cuda_failure)
};

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
    }
    rc = 0;
done:
    if (stage) cudaFreeHost(stage);
    free(tmp);
    return rc;
}

/* ---- creation ------------------------------------------------------------------------- */
/* The step's index arrays, each (max_tokens) int32, one after the other;
 * IX_PLEN: the valid tokens of the row's page once the row is written. */
enum { IX_TOK, IX_PAGE, IX_SLOT, IX_PLEN, IX_LROWS, IX_N };

static size_t qkv_dim(const model_hparams_t *hp) { return (size_t)(hp->n_heads + 2 * hp->n_kv_heads) * hp->head_dim; }

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
    CUDA_CHECK_RET(cudaMalloc((void **)&c->logits, (size_t)LOGIT_CHUNK * hp->n_vocab * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_idx, IX_N * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_pos, T * sizeof(int64_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_argmax, T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_argmax, T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_invt, T * sizeof(float)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_invt, T * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_u, T * sizeof(double)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_u, T * sizeof(double)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_idx, IX_N * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_pos, T * sizeof(int64_t)));
    const size_t S = (size_t)c->max_seqs + 1;
    c->pf_q_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_len = (int32_t *)malloc(S * sizeof(int32_t));
    c->dec_kv_indptr = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->dec_kv_len = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->covered = (unsigned char *)malloc(T);
    c->lrow_tok = (int32_t *)malloc(T * sizeof(int32_t));
    c->row0 = (int32_t *)malloc(S * sizeof(int32_t));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_sum, 2 * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_sum, 2 * T * sizeof(int32_t)));
    int32_t **qa[5] = {&c->q_kv_indptr, &c->q_kv_len, &c->q_budget, &c->q_dl, &c->q_thr};
    for (int i = 0; i < 5; i++)
        if (!(*qa[i] = (int32_t *)malloc((2 * T + 4 + (size_t)c->m->hp.n_layers) * sizeof(int32_t)))) return LC_ENOMEM;
    c->qp = (attn_quest_plan_t **)calloc((size_t)c->m->hp.n_layers + 2, sizeof *c->qp);
    if (!c->pf_q_indptr || !c->pf_kv_indptr || !c->pf_kv_len || !c->dec_kv_indptr || !c->dec_kv_len || !c->covered ||
        !c->lrow_tok || !c->row0 || !c->qp)
        return LC_ENOMEM;
    return 0;
}

/* Sizes the KV store and creates the attention plans for it. */
static int alloc_kv(model_cuda_t *c, const model_exec_opts_t *o, char *err, size_t errlen) {
    const model_hparams_t *hp = &c->m->hp;
    c->page_size = o->block_size > 0 ? o->block_size : GPU_BLOCK;
    const size_t page_bytes = (size_t)hp->n_kv_heads * c->page_size * hp->head_dim * sizeof(bf16_t);
    const size_t sum_bytes = (size_t)hp->n_kv_heads * hp->head_dim * sizeof(float) * 2; // Quest's min and max
    const size_t per_page = (page_bytes * 2 + sum_bytes) * (size_t)hp->n_layers;
    c->page_bytes = page_bytes;
    if (o->kv_blocks > 0) {
        c->n_pages = o->kv_blocks;
    } else {
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK_RET(cudaMemGetInfo(&free_b, &total_b));
        const double frac = o->kv_gpu_fraction > 0 ? o->kv_gpu_fraction : 0.85;
        c->n_pages = (int64_t)((double)free_b * frac / (double)per_page) - 1;
    }
    if (c->n_pages < 1 || c->n_pages > INT32_MAX / 2) {
        snprintf(err, errlen, "no room for a KV store on the GPU");
        return LC_ENOMEM;
    }
    c->layer_bytes = (size_t)(c->n_pages + 1) * page_bytes;
    if (cudaMalloc(&c->kv_mem, c->layer_bytes * 2 * hp->n_layers) != cudaSuccess) {
        snprintf(err, errlen, "cannot allocate a GPU KV store of %lld pages (%.1f GiB)", (long long)c->n_pages,
                 (double)c->layer_bytes * 2 * hp->n_layers / (1 << 30));
        return LC_ENOMEM;
    }
    c->sum_floats = (size_t)(c->n_pages + 1) * hp->n_kv_heads * hp->head_dim;
    if (cudaMalloc((void **)&c->kmin, c->sum_floats * sizeof(float) * hp->n_layers) != cudaSuccess ||
        cudaMalloc((void **)&c->kmax, c->sum_floats * sizeof(float) * hp->n_layers) != cudaSuccess) {
        snprintf(err, errlen, "cannot allocate the GPU page summaries for %lld pages", (long long)c->n_pages);
        return LC_ENOMEM;
    }
    attn_cuda_shape_t sh = {hp->n_heads,  hp->n_kv_heads, hp->head_dim,
                            c->page_size, c->n_pages + 1, model_attn_shape(c->m).scale};
    const int64_t pages_per_seq = ((int64_t)hp->n_ctx_train + c->page_size - 1) / c->page_size + 1;
    attn_cuda_limits_t pl = {c->max_seqs, c->max_tokens, pages_per_seq * c->max_seqs, 0};
    attn_cuda_limits_t dl = {c->max_tokens, c->max_tokens, pages_per_seq * c->max_tokens, 0};
    c->shape = sh;
    c->dec_lim = dl;
    int rc = attn_cuda_plan_create(&sh, ATTN_CUDA_PREFILL, &pl, &c->pf_plan);
    if (!rc) rc = attn_cuda_plan_create(&sh, ATTN_CUDA_DECODE, &dl, &c->dec_plan);
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

extern "C" model_cuda_t *model_cuda_create(const model_t *m, int device, const model_exec_opts_t *o, kv_config_t *kvc,
                                           size_t *block_bytes, char *devname, size_t devlen, char *err,
                                           size_t errlen) {
    if (m->hp.arch_id != MODEL_ARCH_LLAMA) {
        /* Gemma 3's QK-norm, post-norms, GeGLU, soft-capping and sliding
         * layers run on the CPU executor only (so far). */
        snprintf(err, errlen, "the CUDA executor runs llama-architecture models only; '%s' (%s) needs device=cpu",
                 m->hp.name, m->hp.arch);
        return NULL;
    }
    model_cuda_t *c = (model_cuda_t *)calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->m = m;
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
    if ((rc = alloc_kv(c, o, err, errlen))) goto fail;
    *kvc = model_kv_config(m, c->page_size, c->n_pages);
    *block_bytes = c->page_bytes * 2 * m->hp.n_layers;
    LC_INFO("%s: weights in bf16, KV store %lld pages of %d tokens (%.1f GiB)", devname, (long long)c->n_pages,
            c->page_size, (double)c->layer_bytes * 2 * m->hp.n_layers / (1 << 30));
    return c;
fail:
    model_cuda_destroy(c);
    return NULL;
}

extern "C" void model_cuda_destroy(model_cuda_t *c) {
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
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
            cudaFree(G->wdown);
        }
    free(c->layers);
    if (c->output != c->tok_embd) cudaFree(c->output);
    cudaFree(c->tok_embd), cudaFree(c->out_norm), cudaFree(c->rope_cos), cudaFree(c->rope_sin);
    cudaFree(c->kv_mem), cudaFree(c->dec_ws);
    attn_cuda_plan_destroy(c->pf_plan);
    attn_cuda_plan_destroy(c->dec_plan);
    for (int i = 0; c->qp && i < c->n_qp; i++) attn_quest_plan_destroy(c->qp[i]);
    free(c->qp);
    cudaFree(c->q_ws), cudaFree(c->kmin), cudaFree(c->kmax), cudaFree(c->d_sum), cudaFreeHost(c->h_sum);
    free(c->q_kv_indptr), free(c->q_kv_len), free(c->q_budget), free(c->q_dl), free(c->q_thr);
    cudaFree(c->x), cudaFree(c->xb), cudaFree(c->qkv), cudaFree(c->q), cudaFree(c->att);
    cudaFree(c->gu), cudaFree(c->h), cudaFree(c->logits), cudaFree(c->d_idx), cudaFree(c->d_pos);
    cudaFreeHost(c->h_idx), cudaFreeHost(c->h_pos), cudaFreeHost(c->h_argmax), cudaFree(c->d_argmax);
    cudaFreeHost(c->h_invt), cudaFree(c->d_invt), cudaFreeHost(c->h_u), cudaFree(c->d_u);
    free(c->pf_q_indptr), free(c->pf_kv_indptr), free(c->pf_kv_len), free(c->dec_kv_indptr), free(c->dec_kv_len);
    free(c->kv_indices), free(c->covered), free(c->lrow_tok), free(c->row0);
    ops_cuda_gemm_destroy(c->gemm);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

/* ---- the KV store ---------------------------------------------------------------------- */
static void *layer_k(const model_cuda_t *c, int l) { return (char *)c->kv_mem + (size_t)(2 * l) * c->layer_bytes; }
static void *layer_v(const model_cuda_t *c, int l) { return (char *)c->kv_mem + (size_t)(2 * l + 1) * c->layer_bytes; }

extern "C" void model_cuda_copy_block(void *ud, int32_t dst, int32_t src) {
    model_cuda_t *c = (model_cuda_t *)ud;
    const size_t pb = c->page_bytes;
    cudaSetDevice(c->device);
    for (int l = 0; l < c->m->hp.n_layers; l++)
        for (int kv = 0; kv < 2; kv++) {
            char *base = (char *)(kv ? layer_v(c, l) : layer_k(c, l));
            if (cudaMemcpyAsync(base + (size_t)dst * pb, base + (size_t)src * pb, pb, cudaMemcpyDeviceToDevice,
                                c->stream) != cudaSuccess)
                LC_ERROR("cuda: copying KV block %d to %d failed", src, dst);
        }
}

/* ---- a step ------------------------------------------------------------------------------- */

static int grow_indices(model_cuda_t *c, size_t n) {
    if (n <= c->cap_indices) return 0;
    int32_t *p = (int32_t *)realloc(c->kv_indices, n * sizeof(int32_t));
    if (!p) return LC_ENOMEM;
    c->kv_indices = p;
    c->cap_indices = n;
    return 0;
}

/* Host side of a step: the rows in attention order (prompt rows first, then
 * generated rows), both CSR views. rows: the rows the step computes (the
 * batch's tokens, or a graph bucket's padded count). */
typedef struct {
    int n_pf_seqs, n_pf_rows, n_dec; // n_dec: dense decode rows, then n_quest Quest rows
    int n_quest, n_thr;              // n_thr: the distinct dense_layers of the Quest rows (q_thr, ascending)
    int n_sum;                       // pages the step writes (h_sum)
    int rowwise;                     // 1: each row writes its own page (decode steps): summaries row by row
    int n_lrows;
    int rows, bucket; // bucket: the graph bucket's index, -1 without a graph
} step_t;

/* The Quest policy of a slice of generated rows, or NULL (dense decode). */
static const attn_policy_t *quest_policy(const model_seq_t *q) {
    const attn_policy_t *pol = q->generated && q->attn ? attn_state_policy(q->attn) : NULL;
    return pol && pol->decode == ATTN_DECODE_QUEST ? pol : NULL;
}

/* Row r computes batch token t of sequence q. */
static void put_row(model_cuda_t *c, const model_batch_t *b, const model_seq_t *q, int i, int r) {
    const int P = c->page_size, T = c->max_tokens;
    const int64_t pos = q->pos0 + i;
    c->h_idx[IX_TOK * T + r] = b->tokens[q->tok0 + i];
    c->h_pos[r] = pos;
    c->h_idx[IX_PAGE * T + r] = q->kv->blocks[pos / P];
    c->h_idx[IX_SLOT * T + r] = (int32_t)(pos % P);
    c->h_idx[IX_PLEN * T + r] = (int32_t)(pos % P) + 1;
}

/* The logits rows of slice q, whose first token sits at row r0. */
static void put_lrows(model_cuda_t *c, const model_seq_t *q, int r0, step_t *st) {
    const int cnt = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->logits_mode == MODEL_LOGITS_ALL ? q->n_tok : 0;
    for (int i = q->n_tok - cnt; i < q->n_tok; i++) {
        c->h_idx[IX_LROWS * c->max_tokens + st->n_lrows] = r0 + i;
        c->lrow_tok[st->n_lrows++] = q->tok0 + i;
    }
}

static int build_step(model_cuda_t *c, const model_batch_t *b, step_t *st) {
    const int P = c->page_size, T = c->max_tokens;
    memset(st, 0, sizeof *st);
    size_t pages = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t np = (q->pos0 + q->n_tok + P - 1) / P;
        pages += q->generated ? (size_t)np * q->n_tok : (size_t)np;
    }
    if (grow_indices(c, pages * 2 + 1)) return LC_ENOMEM;
    /* prompt slices: CSR rows and pages */
    int row = 0;
    size_t pf_pages = 0;
    c->pf_q_indptr[0] = c->pf_kv_indptr[0] = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (q->generated) continue;
        const int np = (int)((q->pos0 + q->n_tok + P - 1) / P);
        for (int i = 0; i < q->n_tok; i++) put_row(c, b, q, i, row + i);
        c->row0[s] = row;
        memcpy(c->kv_indices + pf_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
        pf_pages += (size_t)np;
        row += q->n_tok;
        c->pf_kv_len[st->n_pf_seqs] = (int32_t)(q->pos0 + q->n_tok);
        st->n_pf_seqs++;
        c->pf_q_indptr[st->n_pf_seqs] = row;
        c->pf_kv_indptr[st->n_pf_seqs] = (int32_t)pf_pages;
    }
    st->n_pf_rows = row;
    /* generated rows: one decode entry each, over the pages up to its
     * position; dense decode rows first, then Quest rows (their own CSR) */
    int32_t *dec_idx = c->kv_indices + pf_pages;
    size_t dec_pages = 0;
    c->dec_kv_indptr[0] = c->q_kv_indptr[0] = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int s = 0; s < b->n_seqs; s++) {
            const model_seq_t *q = &b->seqs[s];
            const attn_policy_t *pol = quest_policy(q);
            if (!q->generated || (pol != NULL) != pass) continue;
            c->row0[s] = row;
            for (int i = 0; i < q->n_tok; i++) {
                const int64_t len = q->pos0 + i + 1;
                const int np = (int)((len + P - 1) / P);
                put_row(c, b, q, i, row++);
                memcpy(dec_idx + dec_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
                dec_pages += (size_t)np;
                if (!pol) {
                    c->dec_kv_len[st->n_dec] = (int32_t)len;
                    st->n_dec++;
                    c->dec_kv_indptr[st->n_dec] = (int32_t)dec_pages;
                    continue;
                }
                const int e = st->n_quest++;
                c->q_kv_len[e] = (int32_t)len;
                c->q_kv_indptr[e + 1] = (int32_t)(dec_pages - (size_t)c->dec_kv_indptr[st->n_dec]);
                c->q_budget[e] = (int32_t)(((int64_t)pol->decode_budget + P - 1) / P);
                if (c->q_budget[e] < 1) c->q_budget[e] = 1;
                c->q_dl[e] = pol->dense_layers;
            }
        }
    /* Quest's thresholds: the distinct dense_layers, ascending */
    for (int e = 0; e < st->n_quest; e++) {
        int k = 0;
        while (k < st->n_thr && c->q_thr[k] < c->q_dl[e]) k++;
        if (k < st->n_thr && c->q_thr[k] == c->q_dl[e]) continue;
        memmove(c->q_thr + k + 1, c->q_thr + k, (size_t)(st->n_thr - k) * sizeof(int32_t));
        c->q_thr[k] = c->q_dl[e];
        st->n_thr++;
    }
    /* every page the step writes, with its valid tokens: the summaries Quest reads later */
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int64_t end = q->pos0 + q->n_tok;
        for (int64_t pg = q->pos0 / P; pg * P < end && st->n_sum < T; pg++) {
            c->h_sum[st->n_sum] = q->kv->blocks[pg];
            c->h_sum[T + st->n_sum] = (int32_t)(end - pg * P < P ? end - pg * P : P);
            st->n_sum++;
        }
    }
    /* the logits rows in slice order (the order of the slices' buffers) */
    for (int s = 0; s < b->n_seqs; s++) put_lrows(c, &b->seqs[s], c->row0[s], st);
    /* A step of one generated row per sequence writes one page per row, each
     * its own: the page summaries go row by row inside the pieces (and so
     * into the graphs). Such a step may run as graphs, padded to its bucket. */
    st->rows = row;
    st->bucket = -1;
    st->rowwise = st->n_pf_rows == 0;
    for (int s = 0; s < b->n_seqs && st->rowwise; s++) st->rowwise = b->seqs[s].n_tok == 1;
    if (c->use_graphs && st->rowwise)
        for (int k = 0; k < N_BUCKETS && bucket_rows[k] <= T; k++)
            if (bucket_rows[k] >= row) {
                st->bucket = k;
                break;
            }
    if (st->bucket >= 0)
        for (; row < bucket_rows[st->bucket]; row++) { // padding: token 0 at position 0 of the spare page
            c->h_idx[IX_TOK * T + row] = 0;
            c->h_pos[row] = 0;
            c->h_idx[IX_PAGE * T + row] = (int32_t)c->n_pages;
            c->h_idx[IX_SLOT * T + row] = 0;
            c->h_idx[IX_PLEN * T + row] = 1;
        }
    return 0;
}

/* Grows a device workspace (after the stream drains: the old one may be in use). */
static int grow_ws(model_cuda_t *c, void **ws, size_t *have, size_t need) {
    if (need <= *have) return 0;
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    cudaFree(*ws);
    *ws = NULL;
    *have = 0;
    CUDA_CHECK_RET(cudaMalloc(ws, need));
    *have = need;
    return 0;
}

/* Quest rows: plan j (0..n_thr) gives row e its budget when q_dl[e] <=
 * q_thr[j-1], else 0 (dense through the same kernels); layer l runs plan
 * j = the number of thresholds <= l. A row's arithmetic at a layer depends
 * on its own policy alone. */
static int plan_quest(model_cuda_t *c, const step_t *st) {
    const int32_t *idx =
        c->kv_indices + (c->dec_kv_indptr[st->n_dec] + (st->n_pf_seqs ? c->pf_kv_indptr[st->n_pf_seqs] : 0));
    int32_t *budget = c->q_budget + st->n_quest + 1; // scratch after the budgets (2 T + 4 + L entries)
    for (int j = 0; j <= st->n_thr; j++) {
        if (j >= c->n_qp) {
            int rc = attn_quest_plan_create(&c->shape, &c->dec_lim, &c->qp[c->n_qp]);
            if (rc) return rc;
            c->n_qp++;
        }
        for (int e = 0; e < st->n_quest; e++) budget[e] = j > 0 && c->q_dl[e] <= c->q_thr[j - 1] ? c->q_budget[e] : 0;
        attn_cuda_batch_t qb = {st->n_quest, NULL, c->q_kv_indptr, idx, c->q_kv_len};
        size_t ws = 0;
        int rc = attn_quest_plan(c->qp[j], &qb, budget, c->stream, &ws);
        if (!rc) rc = grow_ws(c, &c->q_ws, &c->q_ws_bytes, ws);
        if (rc) return rc;
    }
    return 0;
}

static int plan_attention(model_cuda_t *c, const step_t *st) {
    size_t ws = 0;
    if (st->n_sum && !st->rowwise)
        CUDA_CHECK_RET(cudaMemcpyAsync(c->d_sum, c->h_sum, 2 * (size_t)c->max_tokens * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, c->stream));
    if (st->n_quest) {
        int rc = plan_quest(c, st);
        if (rc) return rc;
    }
    if (st->n_pf_seqs) {
        attn_cuda_batch_t pb = {st->n_pf_seqs, c->pf_q_indptr, c->pf_kv_indptr, c->kv_indices, c->pf_kv_len};
        int rc = attn_cuda_plan(c->pf_plan, &pb, c->stream, &ws);
        if (rc) return rc;
    }
    if (st->n_dec) {
        const int32_t *dec_idx = c->kv_indices + c->pf_kv_indptr[st->n_pf_seqs];
        attn_cuda_batch_t db = {st->n_dec, NULL, c->dec_kv_indptr, dec_idx, c->dec_kv_len};
        int rc = attn_cuda_plan(c->dec_plan, &db, c->stream, &ws);
        if (!rc) rc = grow_ws(c, &c->dec_ws, &c->dec_ws_bytes, ws); // a larger split-K workspace than before
        if (rc) return rc;
    }
    return 0;
}

static int run_attention(model_cuda_t *c, const step_t *st, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const size_t HD = (size_t)hp->n_heads * hp->head_dim;
    attn_cuda_args_t a;
    memset(&a, 0, sizeof a);
    a.k = layer_k(c, l);
    a.v = layer_v(c, l);
    if (st->n_pf_seqs) {
        a.q = c->q;
        a.out = c->att;
        int rc = attn_cuda_run(c->pf_plan, &a, c->stream);
        if (rc) return rc;
    }
    if (st->n_dec) {
        a.q = c->q + (size_t)st->n_pf_rows * HD;
        a.out = c->att + (size_t)st->n_pf_rows * HD;
        a.workspace = c->dec_ws;
        a.workspace_bytes = c->dec_ws_bytes;
        int rc = attn_cuda_run(c->dec_plan, &a, c->stream);
        if (rc) return rc;
    }
    if (st->n_quest) {
        int j = 0;
        while (j < st->n_thr && c->q_thr[j] <= l) j++;
        attn_quest_args_t qa;
        memset(&qa, 0, sizeof qa);
        qa.q = c->q + (size_t)(st->n_pf_rows + st->n_dec) * HD;
        qa.out = c->att + (size_t)(st->n_pf_rows + st->n_dec) * HD;
        qa.k = a.k;
        qa.v = a.v;
        qa.kmin = c->kmin + (size_t)l * c->sum_floats;
        qa.kmax = c->kmax + (size_t)l * c->sum_floats;
        qa.workspace = c->q_ws;
        qa.workspace_bytes = c->q_ws_bytes;
        int rc = attn_quest_run(c->qp[j], &qa, c->stream);
        if (rc) return rc;
    }
    return 0;
}

/* Layer l's key summaries of the pages the step wrote (after its K/V are in
 * the pool, before any Quest row reads them). */
static int summarize(model_cuda_t *c, const step_t *st, int l) {
    if (!st->n_sum || st->rowwise) return 0; // rowwise: done inside the pieces
    return attn_quest_summarize(&c->shape, layer_k(c, l), c->d_sum, c->d_sum + c->max_tokens, st->n_sum,
                                c->kmin + (size_t)l * c->sum_floats, c->kmax + (size_t)l * c->sum_floats, c->stream);
}

/* D = A · Wᵀ over rows [0, rows): the first pf_rows (prompt rows) in the
 * prompt mode, the rest in the generated rows' mode; FAST: one call. */
static int gemm_rows(model_cuda_t *c, int rows, int pf_rows, int n, int k, const bf16_t *A, const bf16_t *W, void *D,
                     int d_f32, int acc) {
    if (c->pf_mode == c->dec_mode)
        return ops_cuda_gemm_as(c->gemm, c->dec_mode, rows, n, k, A, W, D, d_f32, acc, c->stream);
    int rc = 0;
    if (pf_rows > 0) rc = ops_cuda_gemm_as(c->gemm, c->pf_mode, pf_rows, n, k, A, W, D, d_f32, acc, c->stream);
    if (!rc && rows > pf_rows) {
        const size_t d_row = (size_t)n * (d_f32 ? sizeof(float) : sizeof(bf16_t));
        rc = ops_cuda_gemm_as(c->gemm, c->dec_mode, rows - pf_rows, n, k, A + (size_t)pf_rows * k, W,
                              (char *)D + (size_t)pf_rows * d_row, d_f32, acc, c->stream);
    }
    return rc;
}

/* Layer l up to attention: norm, QKV, RoPE and the cache write, and with
 * rowwise the key summaries of each row's page. */
static int layer_pre(model_cuda_t *c, int rows, int pf_rows, int rowwise, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const layer_t *G = &c->layers[l];
    const int E = hp->n_embd;
    int rc;
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->attn_norm, c->xb, rows, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = gemm_rows(c, rows, pf_rows, (int)qkv_dim(hp), E, c->xb, G->wqkv, c->qkv, 1, 0))) return rc;
    ops_cuda_qkv_t qp;
    memset(&qp, 0, sizeof qp);
    qp.n_heads = hp->n_heads;
    qp.n_kv_heads = hp->n_kv_heads;
    qp.head_dim = hp->head_dim;
    qp.rot_dim = c->m->rope.rot_dim;
    qp.neox = hp->rope_neox;
    qp.n_table = c->n_table;
    qp.freq_base = c->m->rope.freq_base;
    qp.freq_scale = c->m->rope.freq_scale;
    qp.q = c->q;
    qp.k_cache = layer_k(c, l);
    qp.v_cache = layer_v(c, l);
    qp.page_size = c->page_size;
    rc = ops_cuda_qkv_post(c->qkv, rows, c->d_pos, NULL, c->d_idx + IX_PAGE * c->max_tokens,
                           c->d_idx + IX_SLOT * c->max_tokens, c->rope_cos, c->rope_sin, &qp, c->stream);
    if (rc || !rowwise) return rc;
    return attn_quest_summarize(&c->shape, layer_k(c, l), c->d_idx + IX_PAGE * c->max_tokens,
                                c->d_idx + IX_PLEN * c->max_tokens, rows, c->kmin + (size_t)l * c->sum_floats,
                                c->kmax + (size_t)l * c->sum_floats, c->stream);
}

/* Layer l after attention: x += att · Woᵀ, then the FFN. */
static int layer_post(model_cuda_t *c, int rows, int pf_rows, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const layer_t *G = &c->layers[l];
    const int E = hp->n_embd, F = hp->n_ff, HD = hp->n_heads * hp->head_dim;
    int rc;
    if ((rc = gemm_rows(c, rows, pf_rows, E, HD, c->att, G->wo, c->x, 1, 1))) return rc;
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->ffn_norm, c->xb, rows, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = gemm_rows(c, rows, pf_rows, 2 * F, E, c->xb, G->wgu, c->gu, 1, 0))) return rc;
    if ((rc = ops_cuda_swiglu(c->gu, c->h, rows, F, c->stream))) return rc;
    return gemm_rows(c, rows, pf_rows, E, F, c->h, G->wdown, c->x, 1, 1);
}

/* Piece i of a step between attention calls: i = 0 embeds and runs layer
 * 0 up to attention; 0 < i < n_layers finishes layer i-1 and starts layer i;
 * i = n_layers finishes the last layer. */
static int piece(model_cuda_t *c, int rows, int pf_rows, int rowwise, int i) {
    const model_hparams_t *hp = &c->m->hp;
    int rc = 0;
    if (i == 0)
        rc = ops_cuda_embed(c->tok_embd, c->d_idx + IX_TOK * c->max_tokens, rows, hp->n_embd, 1.0f, c->x, c->stream);
    else
        rc = layer_post(c, rows, pf_rows, i - 1);
    if (!rc && i < hp->n_layers) rc = layer_pre(c, rows, pf_rows, rowwise, i);
    return rc;
}

/* The graphs of bucket k, captured on first use. A capture that fails turns
 * graphs off (the step then runs its kernels directly). */
static int capture_bucket(model_cuda_t *c, int k) {
    const int L = c->m->hp.n_layers, rows = bucket_rows[k];
    cudaGraphExec_t *g = (cudaGraphExec_t *)calloc((size_t)L + 1, sizeof *g);
    if (!g) return LC_ENOMEM;
    for (int i = 0; i <= L; i++) {
        cudaGraph_t graph = NULL;
        CUDA_CHECK_RET(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
        int rc = piece(c, rows, 0, 1, i);
        cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
        if (!rc && e == cudaSuccess) e = cudaGraphInstantiate(&g[i], graph, 0);
        if (graph) cudaGraphDestroy(graph);
        if (rc || e != cudaSuccess) {
            cudaGetLastError();
            LC_WARN("cuda: capturing the decode graph of %d rows failed (%s); steps run without graphs", rows,
                    rc ? lc_strerror(rc) : cudaGetErrorString(e));
            for (int j = 0; j <= L; j++)
                if (g[j]) cudaGraphExecDestroy(g[j]);
            free(g);
            c->use_graphs = 0;
            return 0;
        }
    }
    c->graphs[k] = g;
    return 0;
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

/* The slice of logits row i (slice order) and the row's index in it. */
static const model_seq_t *lrow_seq(const model_batch_t *b, const int32_t *lrow_tok, int i, int *j) {
    const int t = lrow_tok[i];
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (t < q->tok0 || t >= q->tok0 + q->n_tok || !q->logits_mode) continue;
        const int cntq = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->n_tok;
        *j = t - (q->tok0 + q->n_tok - cntq);
        return q;
    }
    return NULL;
}

static float *lrow_dst(const model_batch_t *b, const int32_t *lrow_tok, int i, int V) {
    int j;
    const model_seq_t *q = lrow_seq(b, lrow_tok, i, &j);
    return q->logits + (size_t)j * V;
}

/* 1 when logits row i only asked for its argmax. */
static int lrow_argmax_only(const model_batch_t *b, const int32_t *lrow_tok, int i) {
    int j;
    const model_seq_t *q = lrow_seq(b, lrow_tok, i, &j);
    return q->argmax && q->logits_mode == MODEL_LOGITS_LAST;
}

/* Final norm and LM head for the rows some slice asked for, LOGIT_CHUNK rows
 * a matmul, copied from the device to the slices' host buffers on the
 * stream: one copy per chunk when the buffers follow each other (the
 * scheduler's, page-locked: no host copy, no wait between chunks), else one
 * per row. Rows that asked only for their argmax send 4 bytes instead. */
static int logits(model_cuda_t *c, const model_batch_t *b, const step_t *st) {
    const model_hparams_t *hp = &c->m->hp;
    const int V = hp->n_vocab, E = hp->n_embd;
    const int32_t *d_lrows = c->d_idx + IX_LROWS * c->max_tokens;
    if (!st->n_lrows) return 0;
    float *base = lrow_dst(b, c->lrow_tok, 0, V);
    int contiguous = 1, n_argmax = 0, n_draw = 0;
    for (int i = 0; i < st->n_lrows; i++) {
        if (i && contiguous) contiguous = lrow_dst(b, c->lrow_tok, i, V) == base + (size_t)i * V;
        int j;
        const model_seq_t *q = lrow_seq(b, c->lrow_tok, i, &j);
        const int am = lrow_argmax_only(b, c->lrow_tok, i), dr = am && q->draw_temperature > 0;
        n_argmax += am;
        n_draw += dr;
        c->h_invt[i] = dr ? 1.0f / q->draw_temperature : 0.0f; // the host sampler's 1 / T
        c->h_u[i] = dr ? q->draw_u : 0.0;
    }
    if (n_draw) {
        CUDA_CHECK_RET(cudaMemcpyAsync(c->d_invt, c->h_invt, (size_t)st->n_lrows * sizeof(float),
                                       cudaMemcpyHostToDevice, c->stream));
        CUDA_CHECK_RET(
            cudaMemcpyAsync(c->d_u, c->h_u, (size_t)st->n_lrows * sizeof(double), cudaMemcpyHostToDevice, c->stream));
    }
    for (int r0 = 0; r0 < st->n_lrows; r0 += LOGIT_CHUNK) {
        const int cnt = st->n_lrows - r0 < LOGIT_CHUNK ? st->n_lrows - r0 : LOGIT_CHUNK;
        int rc = ops_cuda_rmsnorm_bf16(c->x, d_lrows + r0, c->out_norm, c->xb, cnt, E, hp->rms_eps, c->stream);
        if (!rc) rc = ops_cuda_gemm_as(c->gemm, c->dec_mode, cnt, V, E, c->xb, c->output, c->logits, 1, 0, c->stream);
        if (!rc && n_argmax) rc = ops_cuda_argmax_rows(c->logits, cnt, V, c->d_argmax + r0, c->stream);
        if (!rc && n_draw)
            rc = ops_cuda_sample_rows(c->logits, cnt, V, c->d_invt + r0, c->d_u + r0, c->d_argmax + r0, c->stream);
        if (rc) return rc;
        int need = 0; // rows of the chunk that want their logits
        for (int i = 0; i < cnt; i++) need += !lrow_argmax_only(b, c->lrow_tok, r0 + i);
        if (contiguous && need == cnt) {
            CUDA_CHECK_RET(cudaMemcpyAsync(base + (size_t)r0 * V, c->logits, (size_t)cnt * V * sizeof(float),
                                           cudaMemcpyDeviceToHost, c->stream));
            continue;
        }
        for (int i = 0; i < cnt && need; i++)
            if (!lrow_argmax_only(b, c->lrow_tok, r0 + i))
                CUDA_CHECK_RET(cudaMemcpyAsync(lrow_dst(b, c->lrow_tok, r0 + i, V), c->logits + (size_t)i * V,
                                               (size_t)V * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    }
    if (n_argmax) {
        CUDA_CHECK_RET(cudaMemcpyAsync(c->h_argmax, c->d_argmax, (size_t)st->n_lrows * sizeof(int32_t),
                                       cudaMemcpyDeviceToHost, c->stream));
        CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
        for (int i = 0; i < st->n_lrows; i++) {
            int j;
            const model_seq_t *q = lrow_seq(b, c->lrow_tok, i, &j);
            if (q->argmax && q->logits_mode == MODEL_LOGITS_LAST) *q->argmax = c->h_argmax[i];
        }
    }
    return 0;
}

/* The density counters: dense rows computed every pair; a Quest row, per
 * layer, the pages its plan attended (the newest one partly). */
static void count_attention(const model_cuda_t *c, const model_batch_t *b, const step_t *st) {
    const model_hparams_t *hp = &c->m->hp;
    const int P = c->page_size;
    int e = 0; // Quest entries, in slice order
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        const int quest = quest_policy(q) != NULL;
        const double n = q->n_tok, pairs = n * (double)q->pos0 + 0.5 * n * (n + 1.0);
        const double all = (double)hp->n_heads * hp->n_layers * pairs;
        if (!quest) {
            if (q->attn) attn_state_count(q->attn, q->generated, all, all);
            continue;
        }
        double computed = 0;
        for (int i = 0; i < q->n_tok; i++, e++) {
            const int64_t len = c->q_kv_len[e], np = (len + P - 1) / P;
            for (int l = 0; l < hp->n_layers; l++) {
                int j = 0;
                while (j < st->n_thr && c->q_thr[j] <= l) j++;
                const int64_t pages = attn_quest_count(c->qp[j], e);
                const double tok =
                    pages >= np || pages < 1 ? (double)len : (double)(pages - 1) * P + (double)(len - (np - 1) * P);
                computed += tok * hp->n_heads;
            }
        }
        attn_state_count(q->attn, 1, computed, all);
    }
}

extern "C" const char *model_cuda_failure(const model_cuda_t *c) { return c->failure[0] ? c->failure : NULL; }

/* After a failed step: drains the stream and clears a passing error; an
 * error that is still there afterwards sticks to the device. */
static void check_device(model_cuda_t *c) {
    cudaError_t e = cudaStreamSynchronize(c->stream);
    cudaGetLastError();
    if (e == cudaSuccess) return;
    cudaError_t again = cudaDeviceSynchronize();
    if (again == cudaSuccess) return;
    snprintf(c->failure, sizeof c->failure, "GPU %d is unusable after %s (%s)", c->device, cudaGetErrorName(again),
             cudaGetErrorString(again));
    LC_ERROR("cuda: %s; every request will fail until lacunad restarts", c->failure);
}

static int forward(model_cuda_t *c, const model_batch_t *b);

extern "C" int model_cuda_forward(model_cuda_t *c, const model_batch_t *b) {
    if (c->failure[0]) return LC_EDEVICE;
    int rc = forward(c, b);
    if (rc == LC_EDEVICE || rc == LC_ENOMEM) check_device(c);
    return rc;
}

static int forward(model_cuda_t *c, const model_batch_t *b) {
    const kv_config_t kvc = model_kv_config(c->m, c->page_size, c->n_pages);
    int rc = model__check_batch(c->m, &kvc, c->max_tokens, b, c->covered);
    if (rc) return rc;
    if (b->n_seqs > c->max_seqs) return LC_EINVAL;
    step_t st;
    if ((rc = build_step(c, b, &st))) return rc;
    CUDA_CHECK_RET(cudaSetDevice(c->device));
    if (st.bucket >= 0 && !c->graphs[st.bucket] && (rc = capture_bucket(c, st.bucket))) return rc;
    const cudaGraphExec_t *g = st.bucket >= 0 && c->use_graphs ? c->graphs[st.bucket] : NULL;
    const int rows = g ? bucket_rows[st.bucket] : st.rows;
    CUDA_CHECK_RET(cudaMemcpyAsync(c->d_idx, c->h_idx, IX_N * (size_t)c->max_tokens * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK_RET(
        cudaMemcpyAsync(c->d_pos, c->h_pos, (size_t)rows * sizeof(int64_t), cudaMemcpyHostToDevice, c->stream));
    if ((rc = plan_attention(c, &st))) return rc;
    const int L = c->m->hp.n_layers;
    for (int i = 0; i <= L; i++) {
        if (g)
            CUDA_CHECK_RET(cudaGraphLaunch(g[i], c->stream));
        else if ((rc = piece(c, rows, st.n_pf_rows, st.rowwise, i)))
            return rc;
        if (i < L && ((rc = summarize(c, &st, i)) || (rc = run_attention(c, &st, i)))) return rc;
    }
    if ((rc = logits(c, b, &st))) return rc;
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    count_attention(c, b, &st);
    return 0;
}
