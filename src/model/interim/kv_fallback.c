/* INTERIM: a trivial KV pool (free list, no prefix cache, no sharing) with
 * kv.h's layout, linked only into the model tests and tools until the engine
 * branch is merged. Not part of liblacuna; delete once kv lands. */
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "kv/kv.h"

struct kv_pool {
    kv_config_t cfg;
    float **k, **v, **kmin, **kmax; // (n_layers) each
    int32_t *free_list;
    int64_t n_free;
};

kv_pool_t *kv_pool_create(const kv_config_t *cfg)
{
    kv_pool_t *p = calloc(1, sizeof *p);
    p->cfg = *cfg;
    int L = cfg->n_layers;
    p->k = calloc(L, sizeof(float *)), p->v = calloc(L, sizeof(float *));
    p->kmin = calloc(L, sizeof(float *)), p->kmax = calloc(L, sizeof(float *));
    size_t bs = kv_block_stride(p), ss = kv_summary_stride(p);
    for (int l = 0; l < L; l++) {
        p->k[l] = calloc(cfg->n_blocks * bs, sizeof(float));
        p->v[l] = calloc(cfg->n_blocks * bs, sizeof(float));
        p->kmin[l] = calloc(cfg->n_blocks * ss, sizeof(float));
        p->kmax[l] = calloc(cfg->n_blocks * ss, sizeof(float));
    }
    p->free_list = malloc(cfg->n_blocks * sizeof(int32_t));
    for (int64_t i = 0; i < cfg->n_blocks; i++) p->free_list[i] = (int32_t)(cfg->n_blocks - 1 - i);
    p->n_free = cfg->n_blocks;
    return p;
}

void kv_pool_destroy(kv_pool_t *p)
{
    if (!p) return;
    for (int l = 0; l < p->cfg.n_layers; l++) free(p->k[l]), free(p->v[l]), free(p->kmin[l]), free(p->kmax[l]);
    free(p->k), free(p->v), free(p->kmin), free(p->kmax), free(p->free_list), free(p);
}

const kv_config_t *kv_pool_config(const kv_pool_t *p) { return &p->cfg; }
float *kv_layer_k(kv_pool_t *p, int l) { return p->k[l]; }
float *kv_layer_v(kv_pool_t *p, int l) { return p->v[l]; }
float *kv_layer_kmin(kv_pool_t *p, int l) { return p->kmin[l]; }
float *kv_layer_kmax(kv_pool_t *p, int l) { return p->kmax[l]; }
size_t kv_block_stride(const kv_pool_t *p) { return (size_t)p->cfg.n_kv_heads * p->cfg.block_size * p->cfg.head_dim; }
size_t kv_summary_stride(const kv_pool_t *p) { return (size_t)p->cfg.n_kv_heads * p->cfg.head_dim; }

void kv_seq_init(kv_seq_t *s) { memset(s, 0, sizeof *s); }

void kv_seq_release(kv_pool_t *p, kv_seq_t *s)
{
    for (int i = 0; i < s->n_blocks; i++) p->free_list[p->n_free++] = s->blocks[i];
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

int kv_seq_reserve(kv_pool_t *p, kv_seq_t *s, int64_t n_tokens)
{
    int64_t need = (n_tokens + p->cfg.block_size - 1) / p->cfg.block_size;
    if (need - s->n_blocks > p->n_free) return LC_ENOSPC;
    if (need > s->cap) {
        s->cap = (int)need * 2;
        s->blocks = realloc(s->blocks, s->cap * sizeof(int32_t));
    }
    while (s->n_blocks < need) s->blocks[s->n_blocks++] = p->free_list[--p->n_free];
    return 0;
}

int kv_seq_prepare_write(kv_pool_t *p, kv_seq_t *s, int64_t pos0, int64_t pos1) { return 0; }

void kv_write(kv_pool_t *p, const kv_seq_t *s, int layer, int64_t pos, const float *k, const float *v)
{
    int B = p->cfg.block_size, D = p->cfg.head_dim;
    int32_t b = s->blocks[pos / B];
    int slot = (int)(pos % B);
    for (int h = 0; h < p->cfg.n_kv_heads; h++) {
        size_t off = (size_t)b * kv_block_stride(p) + ((size_t)h * B + slot) * D;
        memcpy(p->k[layer] + off, k + (size_t)h * D, D * sizeof(float));
        memcpy(p->v[layer] + off, v + (size_t)h * D, D * sizeof(float));
    }
}
