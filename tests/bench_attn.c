/* Microbenchmark of the CPU attention kernels: one layer at 8K tokens with
 * SmolLM2-135M's attention shape (9 heads, 3 KV heads, d 64), synthetic
 * attention-like inputs (a sink, locality from rotary-like position features,
 * a few heavy key columns, noise). Prints time, reported density and relative
 * error ||o - o_dense|| / ||o_dense|| per method.
 * Usage: bench_attn [n_tokens] [reps]; BENCH_SHAPE=gemma for head_dim 256, 4 heads on 1 KV head */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn/attn.h"
#include "common/timeutil.h"

static uint64_t rs = 42;
static float urand(void) {
    rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((rs >> 40) / (double)(1 << 24));
}
static float nrand(void) {
    float u = urand() + 1e-7f, v = urand();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* SmolLM2's shape by default; BENCH_SHAPE=gemma: Gemma 3 270M's global
 * layers (4 heads on 1 KV head, d 256). */
static int H = 9, KH = 3, D = 64;
enum { BS = 16, DMAX = 256 };

/* Row vector for position p: noise + rotary-like features (locality) +
 * a shared direction per head (sink and heavy columns). */
static void feat(float *x, int64_t p, int head, float pos_amp, float dir_amp, float noise) {
    for (int c = 0; c < D; c++) x[c] = noise * nrand();
    for (int f = 0; f < 16; f++) {
        float w = powf(10000.0f, -(float)f / 16) * 4.0f;
        x[2 * f] += pos_amp * cosf(w * (float)p);
        x[2 * f + 1] += pos_amp * sinf(w * (float)p);
    }
    x[32 + head % 32] += dir_amp;
}

static double now(void) { return (double)lc_now_ns() * 1e-9; }

static double relerr(const float *o, const float *ref, size_t n) {
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        e += (double)(o[i] - ref[i]) * (o[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return sqrt(e / r);
}

int main(int argc, char **argv) {
    int64_t n = argc > 1 ? atoll(argv[1]) : 8192;
    int reps = argc > 2 ? atoi(argv[2]) : 1;
    if (getenv("BENCH_SHAPE") && !strcmp(getenv("BENCH_SHAPE"), "gemma")) H = 4, KH = 1, D = 256;
    attn_shape_t sh = {H, KH, D, 1.0f / sqrtf((float)D)};
    int nb = (int)((n + BS - 1) / BS);
    size_t bstride = (size_t)KH * BS * D, sstride = (size_t)KH * D;
    float *k = calloc(bstride * nb, sizeof(float)), *v = calloc(bstride * nb, sizeof(float));
    float *kmn = malloc(sizeof(float) * sstride * nb), *kmx = malloc(sizeof(float) * sstride * nb);
    int32_t *blocks = malloc(sizeof(int32_t) * nb);
    for (int i = 0; i < nb; i++) blocks[i] = i;
    for (int i = nb - 1; i > 0; i--) {
        int j = (int)(urand() * (i + 1)) % (i + 1), x = blocks[i];
        blocks[i] = blocks[j], blocks[j] = x;
    }
    float x[DMAX];
    for (int64_t p = 0; p < n; p++) {
        int b = blocks[p / BS], off = (int)(p % BS);
        for (int h = 0; h < KH; h++) {
            int heavy = p == 0 ? 2 : (urand() < 0.002f ? 1 : 0);
            feat(x, p, h, 1.6f, heavy == 2 ? 9.0f : heavy ? 6.0f : 0.0f, 1.0f);
            float *kd = k + b * bstride + (size_t)h * D * BS + off; // K transposed per block
            for (int c = 0; c < D; c++) kd[(size_t)c * BS] = x[c];
            for (int c = 0; c < D; c++) v[b * bstride + ((size_t)h * BS + off) * D + c] = nrand();
            float *mn = kmn + b * sstride + (size_t)h * D, *mx = kmx + b * sstride + (size_t)h * D;
            for (int c = 0; c < D; c++) {
                mn[c] = off == 0 || x[c] < mn[c] ? x[c] : mn[c];
                mx[c] = off == 0 || x[c] > mx[c] ? x[c] : mx[c];
            }
        }
    }
    attn_kv_t kv = {k, v, kmn, kmx, bstride, sstride, blocks, BS, n};
    float *q = malloc(sizeof(float) * n * H * D);
    for (int64_t p = 0; p < n; p++)
        for (int h = 0; h < H; h++)
            feat(q + ((size_t)p * H + h) * D, p, h / (H / KH), 1.6f * (1.0f + 0.3f * (h % 3)), 4.0f, 1.0f);
    float *ref = malloc(sizeof(float) * n * H * D), *out = malloc(sizeof(float) * n * H * D);
    float *lse = malloc(sizeof(float) * n * H);

    printf("n=%lld heads=%d kv_heads=%d d=%d block_size=%d threads=%s\n", (long long)n, H, KH, D, BS,
           getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "default");
    printf("| %-22s | %10s | %8s | %9s |\n", "method", "ms", "density", "relerr");
    printf("|------------------------|------------|----------|-----------|\n");
    /* prefill */
    double t0 = now();
    for (int r = 0; r < reps; r++) attn_prefill_dense(&sh, q, (int)n, 0, &kv, ref, lse);
    double td = (now() - t0) / reps;
    double gflop = 4.0 * H * D * (double)n * (n + 1) / 2 / 1e9;
    printf("| %-22s | %10.1f | %8.3f | %9.2e |   (%.1f GFLOP/s)\n", "prefill dense", td * 1e3, 1.0, 0.0, gflop / td);
    struct {
        const char *name;
        attn_prefill_method_t m;
        float gamma, theta;
    } pm[] = {{"prefill flex g.90", ATTN_PREFILL_FLEX, 0.9f, 12},
              {"prefill flex g.95", ATTN_PREFILL_FLEX, 0.95f, 12},
              {"prefill anchor th12", ATTN_PREFILL_ANCHOR, 0.9f, 12},
              {"prefill anchor th9", ATTN_PREFILL_ANCHOR, 0.9f, 9},
              {"prefill streaming", ATTN_PREFILL_STREAMING, 0.9f, 12}};
    for (size_t i = 0; i < sizeof pm / sizeof pm[0]; i++) {
        attn_policy_t pol;
        attn_policy_default(&pol);
        pol.prefill = pm[i].m;
        pol.gamma = pm[i].gamma;
        pol.theta = pm[i].theta;
        attn_state_t *st = attn_state_create(&sh, 30, &pol);
        t0 = now();
        for (int r = 0; r < reps; r++) attn_prefill(&sh, st, 0, q, (int)n, 0, &kv, out, lse);
        double t = (now() - t0) / reps;
        const attn_stats_t *s = attn_state_stats(st);
        printf("| %-22s | %10.1f | %8.3f | %9.2e |\n", pm[i].name, t * 1e3, s->prefill_computed / s->prefill_total,
               relerr(out, ref, (size_t)n * H * D));
        attn_state_destroy(st);
    }
    /* decode: the last position's query */
    const float *qd = q + (size_t)(n - 1) * H * D;
    float *dref = malloc(sizeof(float) * H * D), *dout = malloc(sizeof(float) * H * D), *dl = malloc(sizeof(float) * H);
    int dreps = reps * 50;
    t0 = now();
    for (int r = 0; r < dreps; r++) attn_decode_dense(&sh, qd, &kv, dref, dl);
    td = (now() - t0) / dreps;
    printf("| %-22s | %10.3f | %8.3f | %9.2e |\n", "decode dense", td * 1e3, 1.0, 0.0);
    struct {
        const char *name;
        attn_decode_method_t m;
        int budget;
    } dm[] = {{"decode quest b1024", ATTN_DECODE_QUEST, 1024},
              {"decode quest b512", ATTN_DECODE_QUEST, 512},
              {"decode tidal k256", ATTN_DECODE_TIDAL, 256},
              {"decode tidal k1024", ATTN_DECODE_TIDAL, 1024},
              {"decode streaming", ATTN_DECODE_STREAMING, 0}};
    for (size_t i = 0; i < sizeof dm / sizeof dm[0]; i++) {
        attn_policy_t pol;
        attn_policy_default(&pol);
        pol.decode = dm[i].m;
        pol.decode_budget = dm[i].budget;
        attn_state_t *st = attn_state_create(&sh, 30, &pol);
        double t = 0;
        for (int r = 0; r < dreps; r++) {
            if (dm[i].m == ATTN_DECODE_TIDAL) // selection layer, untimed; then a reuse layer
                attn_decode(&sh, st, pol.tidal_select_layer, qd, &kv, dout, dl);
            attn_state_reset_stats(st);
            t0 = now();
            attn_decode(&sh, st, 3, qd, &kv, dout, dl);
            t += now() - t0;
        }
        const attn_stats_t *s = attn_state_stats(st);
        printf("| %-22s | %10.3f | %8.3f | %9.2e |\n", dm[i].name, t / dreps * 1e3,
               s->decode_computed / s->decode_total, relerr(dout, dref, (size_t)H * D));
        attn_state_destroy(st);
    }
    free(k), free(v), free(kmn), free(kmx), free(blocks), free(q), free(ref), free(out), free(lse);
    free(dref), free(dout), free(dl);
    return 0;
}
