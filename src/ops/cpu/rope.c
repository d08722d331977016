/* Rotary position embedding with precomputed cos/sin tables. Llama GGUFs
 * rotate adjacent pairs (the converter permuted Q/K rows for that); NEOX
 * models rotate the two halves of each head. Picking the wrong variant gives
 * fluent-looking garbage, so the caller takes it from the model's metadata. */
#include <math.h>
#include <stdlib.h>

#include "common/status.h"
#include "ops/ops.h"
#include "ops/cpu/par.h"

static double rope_angle(const ops_rope_t *r, int64_t pos, int i) {
    double inv = pow((double)r->freq_base, -2.0 * i / (double)r->rot_dim);
    return (double)pos * (double)r->freq_scale * inv;
}

int ops_rope_init(ops_rope_t *r, int rot_dim, int n_pos, float freq_base, float freq_scale) {
    r->cos = r->sin = NULL;
    if (rot_dim <= 0 || (rot_dim & 1) || n_pos < 0 || !(freq_base > 0) || !(freq_scale > 0)) return LC_EINVAL;
    r->rot_dim = rot_dim;
    r->n_pos = n_pos;
    r->freq_base = freq_base;
    r->freq_scale = freq_scale;
    int half = rot_dim / 2;
    size_t n = (size_t)n_pos * half;
    r->cos = malloc((n ? n : 1) * sizeof(float));
    r->sin = malloc((n ? n : 1) * sizeof(float));
    if (!r->cos || !r->sin) {
        ops_rope_fini(r);
        return LC_ENOMEM;
    }
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            double a = rope_angle(r, p, i);
            r->cos[(size_t)p * half + i] = (float)cos(a);
            r->sin[(size_t)p * half + i] = (float)sin(a);
        }
    return 0;
}

void ops_rope_fini(ops_rope_t *r) {
    free(r->cos);
    free(r->sin);
    r->cos = r->sin = NULL;
}

OPS_WIDE static void rope_row(const ops_rope_t *r, float *x, int64_t pos, int n_heads, int head_dim, int neox) {
    const int half = r->rot_dim / 2;
    float cbuf[512], sbuf[512]; // on-the-fly rows beyond the table (head_dim <= 1024)
    const float *c, *s;
    if (pos >= 0 && pos < r->n_pos) {
        c = r->cos + (size_t)pos * half;
        s = r->sin + (size_t)pos * half;
    } else {
        for (int i = 0; i < half && i < 512; i++) {
            double a = rope_angle(r, pos, i);
            cbuf[i] = (float)cos(a);
            sbuf[i] = (float)sin(a);
        }
        c = cbuf;
        s = sbuf;
    }
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        if (neox) {
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * c[i] - b * s[i];
                v[i + half] = a * s[i] + b * c[i];
            }
        } else {
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }
}

void ops_rope(const ops_rope_t *r, float *x, int n, const int64_t *pos, int n_heads, int head_dim, int neox) {
    // rows are independent: a prompt chunk's split over the team
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (ops__par_worth((size_t)n * n_heads * head_dim) && n > 1 &&               \
                                              !omp_in_parallel())
#endif
    for (int t = 0; t < n; t++) rope_row(r, x + (size_t)t * n_heads * head_dim, pos[t], n_heads, head_dim, neox);
}
