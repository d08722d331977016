/* See store.h: the CPU executor's K/V tensors and key summaries. */
#include "kv/store.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "common/mem.h"

struct kv_store {
    kv_config_t cfg;
    size_t blk_stride;    // floats per block per layer
    size_t sum_stride;    // floats per block summary
    int n_slots;          // layers per block
    float **k, **v;       // (n_slots) -> (n_blocks, blk_stride)
    float **kmin, **kmax; // (n_slots) -> (n_blocks, sum_stride)
};

int kv_store_slots(const kv_config_t *c) { return c->n_layers / kv_config_groups(c); }

size_t kv_store_block_bytes(const kv_config_t *c) {
    size_t kvf = (size_t)c->n_kv_heads * (size_t)c->block_size * (size_t)c->head_dim;
    size_t sumf = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    return (size_t)kv_store_slots(c) * (2 * kvf + 2 * sumf) * sizeof(float);
}

/* Cache-line aligned, so that the kernels' 64-byte loads of K groups and V
 * rows never straddle two lines. */
static float **alloc_layers(int n_layers, size_t n_floats) {
    float **a = calloc((size_t)n_layers, sizeof *a);
    if (!a) return NULL;
    for (int l = 0; l < n_layers; l++)
        if (!(a[l] = lc_alloc64(n_floats * sizeof(float)))) {
            for (int j = 0; j < l; j++) free(a[j]);
            free(a);
            return NULL;
        }
    return a;
}

static void free_layers(float **a, int n_layers) {
    if (!a) return;
    for (int l = 0; l < n_layers; l++) free(a[l]);
    free(a);
}

kv_store_t *kv_store_create(const kv_config_t *cfg) {
    if (!kv_config_valid(cfg)) return NULL;
    kv_store_t *st = calloc(1, sizeof *st);
    if (!st) return NULL;
    st->cfg = *cfg;
    st->n_slots = kv_store_slots(cfg);
    st->blk_stride = (size_t)cfg->n_kv_heads * (size_t)cfg->block_size * (size_t)cfg->head_dim;
    st->sum_stride = (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim;
    const size_t nb = (size_t)cfg->n_blocks;
    if (!(st->k = alloc_layers(st->n_slots, nb * st->blk_stride)) ||
        !(st->v = alloc_layers(st->n_slots, nb * st->blk_stride)) ||
        !(st->kmin = alloc_layers(st->n_slots, nb * st->sum_stride)) ||
        !(st->kmax = alloc_layers(st->n_slots, nb * st->sum_stride))) {
        kv_store_destroy(st);
        return NULL;
    }
    return st;
}

void kv_store_destroy(kv_store_t *st) {
    if (!st) return;
    free_layers(st->k, st->n_slots);
    free_layers(st->v, st->n_slots);
    free_layers(st->kmin, st->n_slots);
    free_layers(st->kmax, st->n_slots);
    free(st);
}

const kv_config_t *kv_store_config(const kv_store_t *st) { return &st->cfg; }
float *kv_store_k(kv_store_t *st, int slot) { return st->k[slot]; }
float *kv_store_v(kv_store_t *st, int slot) { return st->v[slot]; }
float *kv_store_kmin(kv_store_t *st, int slot) { return st->kmin[slot]; }
float *kv_store_kmax(kv_store_t *st, int slot) { return st->kmax[slot]; }
size_t kv_store_block_stride(const kv_store_t *st) { return st->blk_stride; }
size_t kv_store_summary_stride(const kv_store_t *st) { return st->sum_stride; }

void kv_store_write(kv_store_t *st, const kv_seq_t *s, int group, int slot, int64_t pos, const float *k,
                    const float *v) {
    const int bs = st->cfg.block_size, hd = st->cfg.head_dim;
    const int32_t b = kv_seq_table(s, group)[pos / bs];
    const int at = (int)(pos % bs);
    float *kb = st->k[slot] + (size_t)b * st->blk_stride, *vb = st->v[slot] + (size_t)b * st->blk_stride;
    float *mn = st->kmin[slot] + (size_t)b * st->sum_stride, *mx = st->kmax[slot] + (size_t)b * st->sum_stride;
    for (int h = 0; h < st->cfg.n_kv_heads; h++) {
        const float *kh = k + (size_t)h * hd;
        float *kcol = kb + (size_t)h * hd * bs + at;
        for (int d = 0; d < hd; d++) kcol[(size_t)d * bs] = kh[d];
        memcpy(vb + ((size_t)h * bs + at) * hd, v + (size_t)h * hd, (size_t)hd * sizeof(float));
        float *mnh = mn + (size_t)h * hd, *mxh = mx + (size_t)h * hd;
        if (at == 0) {
            memcpy(mnh, kh, (size_t)hd * sizeof(float));
            memcpy(mxh, kh, (size_t)hd * sizeof(float));
            continue;
        }
        for (int d = 0; d < hd; d++) {
            if (kh[d] < mnh[d]) mnh[d] = kh[d];
            if (kh[d] > mxh[d]) mxh[d] = kh[d];
        }
    }
}

void kv_store_copy(kv_store_t *st, int32_t dst, int32_t src) {
    for (int l = 0; l < st->n_slots; l++) {
        memcpy(st->k[l] + (size_t)dst * st->blk_stride, st->k[l] + (size_t)src * st->blk_stride,
               st->blk_stride * sizeof(float));
        memcpy(st->v[l] + (size_t)dst * st->blk_stride, st->v[l] + (size_t)src * st->blk_stride,
               st->blk_stride * sizeof(float));
        memcpy(st->kmin[l] + (size_t)dst * st->sum_stride, st->kmin[l] + (size_t)src * st->sum_stride,
               st->sum_stride * sizeof(float));
        memcpy(st->kmax[l] + (size_t)dst * st->sum_stride, st->kmax[l] + (size_t)src * st->sum_stride,
               st->sum_stride * sizeof(float));
    }
}

void kv_store_copy_cb(void *ud, int32_t dst, int32_t src) { kv_store_copy(ud, dst, src); }
