/* INTERIM: a minimal dense attention over the paged layout of attn.h, linked
 * only into the model tests and tools until the attn branch is merged. Not
 * part of liblacuna; delete once attn lands. */
#include <math.h>
#include <stdlib.h>

#include "attn/attn.h"
#include "common/status.h"

static void one_row(const attn_shape_t *sh, const float *q, const attn_kv_t *kv, int64_t n_keys, float *out,
                    float *lse)
{
    int D = sh->head_dim, G = sh->n_heads / sh->n_kv_heads;
    float *sc = malloc((size_t)(n_keys ? n_keys : 1) * sizeof(float));
    for (int h = 0; h < sh->n_heads; h++) {
        int kh = h / G;
        const float *qh = q + (size_t)h * D;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n_keys; j++) {
            int32_t b = kv->blocks[j / kv->block_size];
            int slot = (int)(j % kv->block_size);
            const float *k = kv->k + (size_t)b * kv->blk_stride + ((size_t)kh * kv->block_size + slot) * D;
            float d = 0;
            for (int i = 0; i < D; i++) d += qh[i] * k[i];
            sc[j] = d * sh->scale;
            if (sc[j] > mx) mx = sc[j];
        }
        double sum = 0;
        for (int64_t j = 0; j < n_keys; j++) sum += (sc[j] = expf(sc[j] - mx));
        float *o = out + (size_t)h * D;
        for (int i = 0; i < D; i++) o[i] = 0;
        for (int64_t j = 0; j < n_keys; j++) {
            int32_t b = kv->blocks[j / kv->block_size];
            int slot = (int)(j % kv->block_size);
            const float *v = kv->v + (size_t)b * kv->blk_stride + ((size_t)kh * kv->block_size + slot) * D;
            float w = (float)(sc[j] / sum);
            for (int i = 0; i < D; i++) o[i] += w * v[i];
        }
        if (lse) lse[h] = mx + (float)log(sum);
    }
    free(sc);
}

int attn_prefill_dense(const attn_shape_t *shape, const float *q, int n_q, int64_t q_pos0, const attn_kv_t *kv,
                       float *out, float *lse)
{
    size_t QD = (size_t)shape->n_heads * shape->head_dim;
    for (int r = 0; r < n_q; r++)
        one_row(shape, q + r * QD, kv, q_pos0 + r + 1, out + r * QD, lse ? lse + (size_t)r * shape->n_heads : NULL);
    return 0;
}

int attn_decode_dense(const attn_shape_t *shape, const float *q, const attn_kv_t *kv, float *out, float *lse)
{
    one_row(shape, q, kv, kv->n_kv, out, lse);
    return 0;
}

int attn_prefill(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, int n_q, int64_t q_pos0,
                 const attn_kv_t *kv, float *out, float *lse)
{
    return attn_prefill_dense(shape, q, n_q, q_pos0, kv, out, lse);
}

int attn_decode(const attn_shape_t *shape, attn_state_t *st, int layer, const float *q, const attn_kv_t *kv,
                float *out, float *lse)
{
    return attn_decode_dense(shape, q, kv, out, lse);
}
