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
// A step: host arrays (tokens, positions, the cache slot of each token, the
// attention row order, the CSR page tables) go to the GPU in one copy; every
// kernel of the step is queued on one stream; only the logits come back.
// Nothing is allocated per step unless a step needs more decode workspace
// than any before it.
#include <cuda_runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "attn/cuda/attn_cuda.h"
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
    /* weights */
    layer_t *layers;
    bf16_t *tok_embd, *output;  // (n_vocab, n_embd); output == tok_embd when tied
    float *out_norm;            // (n_embd)
    float *rope_cos, *rope_sin; // (n_table, rot_dim / 2)
    int64_t n_table;
    /* KV store: per layer K and V, (n_pages, n_kv_heads, page_size, head_dim) bf16 */
    void *kv_mem;
    size_t layer_bytes; // one layer's K (or V)
    int64_t n_pages;
    int page_size;
    /* attention */
    attn_cuda_plan_t *pf_plan, *dec_plan;
    void *dec_ws;
    size_t dec_ws_bytes;
    /* activations, for up to max_tokens rows */
    float *x;          // (T, E) residual stream
    bf16_t *xb;        // (T, E) normed rows
    float *qkv;        // (T, QKVD)
    bf16_t *q, *att_p; // (T, H d): attention order (prompt rows, then generated rows)
    bf16_t *att;       // (T, H d): token order
    float *gu;         // (T, 2F)
    bf16_t *h;         // (T, F)
    float *logits;     // (LOGIT_CHUNK, V)
    /* the step's index arrays: device, and their pinned host twin */
    int32_t *d_idx, *h_idx; // tok | perm | kv_page | kv_slot | lrows, each (T)
    int64_t *d_pos, *h_pos; // (T)
    float *h_logits;        // (LOGIT_CHUNK, V) pinned
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
/* The step's index arrays, each (max_tokens) int32, one after the other. */
enum { IX_TOK, IX_PERM, IX_PAGE, IX_SLOT, IX_LROWS, IX_N };

static size_t qkv_dim(const model_hparams_t *hp) { return (size_t)(hp->n_heads + 2 * hp->n_kv_heads) * hp->head_dim; }

static int alloc_step(model_cuda_t *c) {
    const model_hparams_t *hp = &c->m->hp;
    const size_t T = (size_t)c->max_tokens, E = hp->n_embd, F = hp->n_ff, HD = (size_t)hp->n_heads * hp->head_dim;
    CUDA_CHECK_RET(cudaMalloc((void **)&c->x, T * E * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->xb, T * E * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->qkv, T * qkv_dim(hp) * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->q, T * HD * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->att_p, T * HD * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->att, T * HD * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->gu, T * 2 * F * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->h, T * F * sizeof(bf16_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->logits, (size_t)LOGIT_CHUNK * hp->n_vocab * sizeof(float)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_idx, IX_N * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMalloc((void **)&c->d_pos, T * sizeof(int64_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_idx, IX_N * T * sizeof(int32_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_pos, T * sizeof(int64_t)));
    CUDA_CHECK_RET(cudaMallocHost((void **)&c->h_logits, (size_t)LOGIT_CHUNK * hp->n_vocab * sizeof(float)));
    const size_t S = (size_t)c->max_seqs + 1;
    c->pf_q_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_indptr = (int32_t *)malloc(S * sizeof(int32_t));
    c->pf_kv_len = (int32_t *)malloc(S * sizeof(int32_t));
    c->dec_kv_indptr = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->dec_kv_len = (int32_t *)malloc((T + 1) * sizeof(int32_t));
    c->covered = (unsigned char *)malloc(T);
    if (!c->pf_q_indptr || !c->pf_kv_indptr || !c->pf_kv_len || !c->dec_kv_indptr || !c->dec_kv_len || !c->covered)
        return LC_ENOMEM;
    return 0;
}

/* Sizes the KV store and creates the attention plans for it. */
static int alloc_kv(model_cuda_t *c, const model_exec_opts_t *o, char *err, size_t errlen) {
    const model_hparams_t *hp = &c->m->hp;
    c->page_size = o->block_size > 0 ? o->block_size : GPU_BLOCK;
    const size_t page_bytes = (size_t)hp->n_kv_heads * c->page_size * hp->head_dim * sizeof(bf16_t);
    const size_t per_page = page_bytes * 2 * (size_t)hp->n_layers;
    if (o->kv_blocks > 0) {
        c->n_pages = o->kv_blocks;
    } else {
        size_t free_b = 0, total_b = 0;
        CUDA_CHECK_RET(cudaMemGetInfo(&free_b, &total_b));
        const double frac = o->kv_gpu_fraction > 0 ? o->kv_gpu_fraction : 0.85;
        c->n_pages = (int64_t)((double)free_b * frac / (double)per_page);
    }
    if (c->n_pages < 1 || c->n_pages > INT32_MAX / 2) {
        snprintf(err, errlen, "no room for a KV store on the GPU");
        return LC_ENOMEM;
    }
    c->layer_bytes = (size_t)c->n_pages * page_bytes;
    if (cudaMalloc(&c->kv_mem, c->layer_bytes * 2 * hp->n_layers) != cudaSuccess) {
        snprintf(err, errlen, "cannot allocate a GPU KV store of %lld pages (%.1f GiB)", (long long)c->n_pages,
                 (double)c->layer_bytes * 2 * hp->n_layers / (1 << 30));
        return LC_ENOMEM;
    }
    attn_cuda_shape_t sh = {hp->n_heads,  hp->n_kv_heads, hp->head_dim,
                            c->page_size, c->n_pages,     model_attn_shape(c->m).scale};
    const int64_t pages_per_seq = ((int64_t)hp->n_ctx_train + c->page_size - 1) / c->page_size + 1;
    attn_cuda_limits_t pl = {c->max_seqs, c->max_tokens, pages_per_seq * c->max_seqs, 0};
    attn_cuda_limits_t dl = {c->max_tokens, c->max_tokens, pages_per_seq * c->max_tokens, 0};
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

/* The matmul mode: batch-invariant unless asked otherwise; which invariant
 * mode is LACUNA_GPU_GEMM's (split, wide; for measuring them), else split. */
static ops_cuda_gemm_mode_t gemm_mode(const model_exec_opts_t *o) {
    if (o->gpu_fast_gemm) return OPS_GEMM_FAST;
    const char *e = getenv("LACUNA_GPU_GEMM");
    if (e && !strcmp(e, "wide")) return OPS_GEMM_INVARIANT_WIDE;
    if (e && !strcmp(e, "fast")) return OPS_GEMM_FAST;
    return OPS_GEMM_INVARIANT_SPLIT;
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
    if ((rc = ops_cuda_gemm_create((size_t)32 << 20, gemm_mode(o), &c->gemm))) {
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
    *block_bytes = c->layer_bytes / (size_t)c->n_pages * 2 * m->hp.n_layers;
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
    cudaFree(c->x), cudaFree(c->xb), cudaFree(c->qkv), cudaFree(c->q), cudaFree(c->att_p), cudaFree(c->att);
    cudaFree(c->gu), cudaFree(c->h), cudaFree(c->logits), cudaFree(c->d_idx), cudaFree(c->d_pos);
    cudaFreeHost(c->h_idx), cudaFreeHost(c->h_pos), cudaFreeHost(c->h_logits);
    free(c->pf_q_indptr), free(c->pf_kv_indptr), free(c->pf_kv_len), free(c->dec_kv_indptr), free(c->dec_kv_len);
    free(c->kv_indices), free(c->covered);
    ops_cuda_gemm_destroy(c->gemm);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

/* ---- the KV store ---------------------------------------------------------------------- */
static void *layer_k(const model_cuda_t *c, int l) { return (char *)c->kv_mem + (size_t)(2 * l) * c->layer_bytes; }
static void *layer_v(const model_cuda_t *c, int l) { return (char *)c->kv_mem + (size_t)(2 * l + 1) * c->layer_bytes; }

extern "C" void model_cuda_copy_block(void *ud, int32_t dst, int32_t src) {
    model_cuda_t *c = (model_cuda_t *)ud;
    const size_t pb = c->layer_bytes / (size_t)c->n_pages;
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

/* Host side of a step: the token arrays, the attention row order (prompt rows
 * first, then generated rows) and both CSR views. */
typedef struct {
    int n_pf_seqs, n_pf_rows, n_dec;
    int n_lrows;
} step_t;

static int build_step(model_cuda_t *c, const model_batch_t *b, step_t *st) {
    const int P = c->page_size, T = c->max_tokens;
    int32_t *ix = c->h_idx;
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
        for (int i = 0; i < q->n_tok; i++) ix[IX_PERM * T + q->tok0 + i] = row + i;
        memcpy(c->kv_indices + pf_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
        pf_pages += (size_t)np;
        row += q->n_tok;
        c->pf_kv_len[st->n_pf_seqs] = (int32_t)(q->pos0 + q->n_tok);
        st->n_pf_seqs++;
        c->pf_q_indptr[st->n_pf_seqs] = row;
        c->pf_kv_indptr[st->n_pf_seqs] = (int32_t)pf_pages;
    }
    st->n_pf_rows = row;
    /* generated rows: one decode entry each, over the pages up to its position */
    int32_t *dec_idx = c->kv_indices + pf_pages;
    size_t dec_pages = 0;
    c->dec_kv_indptr[0] = 0;
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (!q->generated) continue;
        for (int i = 0; i < q->n_tok; i++) {
            const int64_t len = q->pos0 + i + 1;
            const int np = (int)((len + P - 1) / P);
            ix[IX_PERM * T + q->tok0 + i] = row++;
            memcpy(dec_idx + dec_pages, q->kv->blocks, (size_t)np * sizeof(int32_t));
            dec_pages += (size_t)np;
            c->dec_kv_len[st->n_dec] = (int32_t)len;
            st->n_dec++;
            c->dec_kv_indptr[st->n_dec] = (int32_t)dec_pages;
        }
    }
    /* per token: id, position, cache slot; the inverse order; logits rows */
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        for (int i = 0; i < q->n_tok; i++) {
            const int t = q->tok0 + i;
            const int64_t pos = q->pos0 + i;
            ix[IX_TOK * T + t] = b->tokens[t];
            c->h_pos[t] = pos;
            ix[IX_PAGE * T + t] = q->kv->blocks[pos / P];
            ix[IX_SLOT * T + t] = (int32_t)(pos % P);
        }
        const int cnt = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->logits_mode == MODEL_LOGITS_ALL ? q->n_tok : 0;
        for (int i = 0; i < cnt; i++) ix[IX_LROWS * T + st->n_lrows++] = q->tok0 + q->n_tok - cnt + i;
    }
    return 0;
}

static int plan_attention(model_cuda_t *c, const step_t *st) {
    size_t ws = 0;
    if (st->n_pf_seqs) {
        attn_cuda_batch_t pb = {st->n_pf_seqs, c->pf_q_indptr, c->pf_kv_indptr, c->kv_indices, c->pf_kv_len};
        int rc = attn_cuda_plan(c->pf_plan, &pb, c->stream, &ws);
        if (rc) return rc;
    }
    if (st->n_dec) {
        const int32_t *dec_idx = c->kv_indices + c->pf_kv_indptr[st->n_pf_seqs];
        attn_cuda_batch_t db = {st->n_dec, NULL, c->dec_kv_indptr, dec_idx, c->dec_kv_len};
        int rc = attn_cuda_plan(c->dec_plan, &db, c->stream, &ws);
        if (rc) return rc;
        if (ws > c->dec_ws_bytes) { // the only allocation of a step: a larger split-K workspace than before
            CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
            cudaFree(c->dec_ws);
            c->dec_ws = NULL;
            c->dec_ws_bytes = 0;
            CUDA_CHECK_RET(cudaMalloc(&c->dec_ws, ws));
            c->dec_ws_bytes = ws;
        }
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
        a.out = c->att_p;
        int rc = attn_cuda_run(c->pf_plan, &a, c->stream);
        if (rc) return rc;
    }
    if (st->n_dec) {
        a.q = c->q + (size_t)st->n_pf_rows * HD;
        a.out = c->att_p + (size_t)st->n_pf_rows * HD;
        a.workspace = c->dec_ws;
        a.workspace_bytes = c->dec_ws_bytes;
        int rc = attn_cuda_run(c->dec_plan, &a, c->stream);
        if (rc) return rc;
    }
    return 0;
}

static int layer_forward(model_cuda_t *c, const step_t *st, int T, int l) {
    const model_hparams_t *hp = &c->m->hp;
    const layer_t *G = &c->layers[l];
    const int E = hp->n_embd, F = hp->n_ff, HD = hp->n_heads * hp->head_dim;
    const int32_t *d_perm = c->d_idx + IX_PERM * c->max_tokens;
    int rc;
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->attn_norm, c->xb, T, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = ops_cuda_gemm(c->gemm, T, (int)qkv_dim(hp), E, c->xb, G->wqkv, c->qkv, 1, 0, c->stream))) return rc;
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
    if ((rc = ops_cuda_qkv_post(c->qkv, T, c->d_pos, d_perm, c->d_idx + IX_PAGE * c->max_tokens,
                                c->d_idx + IX_SLOT * c->max_tokens, c->rope_cos, c->rope_sin, &qp, c->stream)))
        return rc;
    if ((rc = run_attention(c, st, l))) return rc;
    /* back to token order, then x += att · Woᵀ */
    if ((rc = ops_cuda_gather_rows_bf16(c->att_p, d_perm, c->att, T, HD, c->stream))) return rc;
    if ((rc = ops_cuda_gemm(c->gemm, T, E, HD, c->att, G->wo, c->x, 1, 1, c->stream))) return rc;
    if ((rc = ops_cuda_rmsnorm_bf16(c->x, NULL, G->ffn_norm, c->xb, T, E, hp->rms_eps, c->stream))) return rc;
    if ((rc = ops_cuda_gemm(c->gemm, T, 2 * F, E, c->xb, G->wgu, c->gu, 1, 0, c->stream))) return rc;
    if ((rc = ops_cuda_swiglu(c->gu, c->h, T, F, c->stream))) return rc;
    return ops_cuda_gemm(c->gemm, T, E, F, c->h, G->wdown, c->x, 1, 1, c->stream);
}

/* Final norm and LM head for the rows some slice asked for, LOGIT_CHUNK rows
 * a matmul, copied to the slices' host buffers. */
static int logits(model_cuda_t *c, const model_batch_t *b, const step_t *st) {
    const model_hparams_t *hp = &c->m->hp;
    const int V = hp->n_vocab, E = hp->n_embd;
    const int32_t *lrows = c->h_idx + IX_LROWS * c->max_tokens;
    const int32_t *d_lrows = c->d_idx + IX_LROWS * c->max_tokens;
    /* where each row goes */
    int r = 0;
    for (int r0 = 0; r0 < st->n_lrows; r0 += LOGIT_CHUNK) {
        const int cnt = st->n_lrows - r0 < LOGIT_CHUNK ? st->n_lrows - r0 : LOGIT_CHUNK;
        int rc = ops_cuda_rmsnorm_bf16(c->x, d_lrows + r0, c->out_norm, c->xb, cnt, E, hp->rms_eps, c->stream);
        if (!rc) rc = ops_cuda_gemm(c->gemm, cnt, V, E, c->xb, c->output, c->logits, 1, 0, c->stream);
        if (rc) return rc;
        CUDA_CHECK_RET(cudaMemcpyAsync(c->h_logits, c->logits, (size_t)cnt * V * sizeof(float), cudaMemcpyDeviceToHost,
                                       c->stream));
        CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
        for (int i = 0; i < cnt; i++, r++) {
            const int t = lrows[r];
            for (int s = 0; s < b->n_seqs; s++) { // the slice holding token t
                const model_seq_t *q = &b->seqs[s];
                if (t < q->tok0 || t >= q->tok0 + q->n_tok || !q->logits_mode) continue;
                const int cntq = q->logits_mode == MODEL_LOGITS_LAST ? 1 : q->n_tok;
                const int j = t - (q->tok0 + q->n_tok - cntq);
                memcpy(q->logits + (size_t)j * V, c->h_logits + (size_t)i * V, (size_t)V * sizeof(float));
                break;
            }
        }
    }
    return 0;
}

/* Dense attention everywhere on the GPU (the sparse kernels are not there
 * yet): the density counters say so. */
static void count_dense(const model_batch_t *b, const model_hparams_t *hp) {
    for (int s = 0; s < b->n_seqs; s++) {
        const model_seq_t *q = &b->seqs[s];
        if (!q->attn) continue;
        const double n = q->n_tok, pairs = n * (double)q->pos0 + 0.5 * n * (n + 1.0);
        const double all = (double)hp->n_heads * hp->n_layers * pairs;
        attn_state_count(q->attn, q->generated, all, all);
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
    const int T = b->n_tokens;
    CUDA_CHECK_RET(cudaSetDevice(c->device));
    CUDA_CHECK_RET(cudaMemcpyAsync(c->d_idx, c->h_idx, IX_N * (size_t)c->max_tokens * sizeof(int32_t),
                                   cudaMemcpyHostToDevice, c->stream));
    CUDA_CHECK_RET(cudaMemcpyAsync(c->d_pos, c->h_pos, (size_t)T * sizeof(int64_t), cudaMemcpyHostToDevice, c->stream));
    if ((rc = plan_attention(c, &st))) return rc;
    const model_hparams_t *hp = &c->m->hp;
    if ((rc = ops_cuda_embed(c->tok_embd, c->d_idx + IX_TOK * c->max_tokens, T, hp->n_embd, 1.0f, c->x, c->stream)))
        return rc;
    for (int l = 0; l < hp->n_layers; l++)
        if ((rc = layer_forward(c, &st, T, l))) return rc;
    if ((rc = logits(c, b, &st))) return rc;
    CUDA_CHECK_RET(cudaStreamSynchronize(c->stream));
    count_dense(b, hp);
    return 0;
}
