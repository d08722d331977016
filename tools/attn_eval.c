/* `lacuna attn-eval`: accuracy of the sparse attention methods on a real
 * model's activations. A dense prefill of a natural-text prompt runs through
 * the CPU executor with the attention hook set (model_exec_set_attn_hook); at each sampled layer the hook
 * holds every query (post-RoPE) while the paged cache holds K/V, and runs
 * dense attention and each sparse method/setting on them:
 *   relerr  = ||o - o_dense|| / ||o_dense|| (all queries and heads of the layer)
 *   recall  = dense softmax mass on the keys the method attended, per query
 *             row and head, which is exp(lse_method - lse_dense) since every
 *             kernel returns the LSE of the scores it computed (mean and
 *             5th percentile reported)
 *   density = computed / causal query-key pairs, as the engine reports it.
 * Prefill methods see the whole prompt as one chunk. Decode methods are
 * evaluated on the last --decode-rows prompt positions, each as one decode
 * step (keys 0..p) through every layer in order, so TidalDecode's selection
 * layer feeds the later layers as in the engine. The model's own forward
 * stays dense: each layer's inputs are exact. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "common/timeutil.h"
#include "model/exec.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "tools/cmds.h"

/* ---- settings ------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    int decode; // 0 prefill method, 1 decode method
    int method;
    float gamma, theta;
    int min_budget, anchor_win, window, budget;
    float probe;     // AnchorAttention's anchor_probe
    int flex_blocks; // FlexPrefill's flex_select "blocks"
} setting_t;

static const setting_t settings[] = {
    {"flexprefill g=0.90", 0, ATTN_PREFILL_FLEX, 0.90f, 0, 1024, 0, 0, 0, 0, 0},
    {"flexprefill g=0.95", 0, ATTN_PREFILL_FLEX, 0.95f, 0, 1024, 0, 0, 0, 0, 0},
    {"flexprefill g=0.99", 0, ATTN_PREFILL_FLEX, 0.99f, 0, 1024, 0, 0, 0, 0, 0},
    {"flexprefill g=0.90 min=256", 0, ATTN_PREFILL_FLEX, 0.90f, 0, 256, 0, 0, 0, 0, 0},
    {"flexprefill g=0.80 min=64", 0, ATTN_PREFILL_FLEX, 0.80f, 0, 64, 0, 0, 0, 0, 0},
    {"flexprefill g=0.70 min=64", 0, ATTN_PREFILL_FLEX, 0.70f, 0, 64, 0, 0, 0, 0, 0},
    {"flexprefill blocks g=0.90", 0, ATTN_PREFILL_FLEX, 0.90f, 0, 1024, 0, 0, 0, 0, 1},
    {"flexprefill blocks g=0.95", 0, ATTN_PREFILL_FLEX, 0.95f, 0, 1024, 0, 0, 0, 0, 1},
    {"flexprefill blocks g=0.99", 0, ATTN_PREFILL_FLEX, 0.99f, 0, 1024, 0, 0, 0, 0, 1},
    {"flexprefill blocks g=0.999", 0, ATTN_PREFILL_FLEX, 0.999f, 0, 1024, 0, 0, 0, 0, 1},
    {"flexprefill blocks g=0.90 min=256", 0, ATTN_PREFILL_FLEX, 0.90f, 0, 256, 0, 0, 0, 0, 1},
    {"anchor th=12", 0, ATTN_PREFILL_ANCHOR, 0, 12.0f, 0, 2048, 0, 0, 0, 0},
    {"anchor th=12 probe=0.01", 0, ATTN_PREFILL_ANCHOR, 0, 12.0f, 0, 2048, 0, 0, 0.01f, 0}, // the engine's defaults
    {"anchor th=12 probe=0.02", 0, ATTN_PREFILL_ANCHOR, 0, 12.0f, 0, 2048, 0, 0, 0.02f, 0},
    {"anchor th=16", 0, ATTN_PREFILL_ANCHOR, 0, 16.0f, 0, 2048, 0, 0, 0, 0},
    {"anchor th=12 win=512", 0, ATTN_PREFILL_ANCHOR, 0, 12.0f, 0, 512, 0, 0, 0, 0},
    {"anchor th=9 win=512", 0, ATTN_PREFILL_ANCHOR, 0, 9.0f, 0, 512, 0, 0, 0, 0},
    {"anchor th=6 win=512", 0, ATTN_PREFILL_ANCHOR, 0, 6.0f, 0, 512, 0, 0, 0, 0},
    {"streaming w=1024", 0, ATTN_PREFILL_STREAMING, 0, 0, 0, 0, 1024, 0, 0, 0},
    {"streaming w=2048", 0, ATTN_PREFILL_STREAMING, 0, 0, 0, 0, 2048, 0, 0, 0},
    {"quest B=256", 1, ATTN_DECODE_QUEST, 0, 0, 0, 0, 0, 256, 0, 0},
    {"quest B=512", 1, ATTN_DECODE_QUEST, 0, 0, 0, 0, 0, 512, 0, 0},
    {"quest B=1024", 1, ATTN_DECODE_QUEST, 0, 0, 0, 0, 0, 1024, 0, 0},
    {"quest B=2048", 1, ATTN_DECODE_QUEST, 0, 0, 0, 0, 0, 2048, 0, 0},
    {"tidal B=256", 1, ATTN_DECODE_TIDAL, 0, 0, 0, 0, 0, 256, 0, 0},
    {"tidal B=512", 1, ATTN_DECODE_TIDAL, 0, 0, 0, 0, 0, 512, 0, 0},
    {"tidal B=1024", 1, ATTN_DECODE_TIDAL, 0, 0, 0, 0, 0, 1024, 0, 0},
    {"tidal B=2048", 1, ATTN_DECODE_TIDAL, 0, 0, 0, 0, 0, 2048, 0, 0},
    {"streaming-decode w=1024", 1, ATTN_DECODE_STREAMING, 0, 0, 0, 0, 1024, 0, 0, 0},
};
#define N_SET (int)(sizeof settings / sizeof settings[0])

static void setting_policy(const setting_t *s, attn_policy_t *p) {
    attn_policy_default(p);
    if (s->decode) {
        p->decode = (attn_decode_method_t)s->method;
        if (s->budget) p->decode_budget = s->budget;
    } else {
        p->prefill = (attn_prefill_method_t)s->method;
        if (s->gamma > 0) p->gamma = s->gamma;
        if (s->theta > 0) p->theta = s->theta;
        if (s->min_budget) p->min_budget = s->min_budget;
        if (s->anchor_win) p->anchor_init = p->anchor_local = s->anchor_win;
        p->anchor_probe = s->probe;
        p->flex_select = s->flex_blocks ? ATTN_FLEX_BLOCKS : ATTN_FLEX_TOKENS;
    }
    if (s->window) p->window_tokens = s->window;
}

/* ---- accumulation ------------------------------------------------------------------------ */
typedef struct {
    double relerr_sum, recall_sum, p05_sum, dens_sum, secs;
    int layers;
} acc_t;

typedef struct {
    int n_layers, n_tok, dec_rows;
    int last;              // > 0: prefill metrics over the last `last` rows only (where a question sits)
    const char *only;      // comma-separated name prefixes of the settings to run; NULL: all
    const int *sample;     // (n_layers) 1 = evaluate prefill methods here
    attn_state_t **dstate; // (N_SET * dec_rows) decode states (NULL for prefill settings)
    acc_t acc[N_SET];
    double dense_secs;
    float *od, *ld, *o, *l; // (n_tok, H, d) / (n_tok, H) scratch
    float *rec;             // (n_tok * H) recall values
    FILE *csv;
    FILE *rows; // --rows: per prompt row, each sampled layer and prefill setting
    int err;
} eval_t;

static int cmp_f(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* One row and head's recall: the dense softmax mass on the keys the method
 * attended, from the two LSEs (0 when it attended none), at most 1. */
static float recall_of(float l, float ld) {
    const float x = l == -INFINITY ? 0.0f : expf(l - ld);
    return x > 1.0f ? 1.0f : x;
}

/* relerr over rows x heads, and recall mean / 5th percentile from the LSEs. */
static void compare(eval_t *e, size_t rows, int d, const float *od, const float *ld, const float *o, const float *l,
                    double *relerr, double *rmean, double *p05) {
    double num = 0, den = 0, rs = 0;
    for (size_t i = 0; i < rows * (size_t)d; i++) {
        double x = (double)o[i] - od[i];
        num += x * x;
        den += (double)od[i] * od[i];
    }
    for (size_t r = 0; r < rows; r++) {
        e->rec[r] = recall_of(l[r], ld[r]);
        rs += e->rec[r];
    }
    qsort(e->rec, rows, sizeof(float), cmp_f);
    *relerr = den > 0 ? sqrt(num / den) : 0;
    *rmean = rs / (double)rows;
    *p05 = e->rec[(size_t)(0.05 * (double)(rows - 1))];
}

/* --rows: each row's relative error over its heads and its lowest recall
 * (the 0..1 recall of its heads), for finding which rows a method loses. */
static void write_rows(const eval_t *e, int i, int layer, int H, int d) {
    const size_t HD = (size_t)H * d;
    for (int r = 0; r < e->n_tok; r++) {
        double num = 0, den = 0, rmin = 1;
        for (size_t j = 0; j < HD; j++) {
            const double x = (double)e->o[r * HD + j] - e->od[r * HD + j];
            num += x * x;
            den += (double)e->od[r * HD + j] * e->od[r * HD + j];
        }
        for (int h = 0; h < H; h++) {
            const float x = recall_of(e->l[(size_t)r * H + h], e->ld[(size_t)r * H + h]);
            if (x < rmin) rmin = x;
        }
        fprintf(e->rows, "\"%s\",%d,%d,%.6g,%.6g\n", settings[i].name, layer, r, den > 0 ? sqrt(num / den) : 0, rmin);
    }
}

/* Setting i is among those asked for (--only). */
static int selected(const eval_t *e, int i) {
    if (!e->only) return 1;
    const char *p = e->only;
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n && strncmp(settings[i].name, p, n) == 0) return 1;
        p += n + (p[n] == ',');
    }
    return 0;
}

static void hook(void *ud, int layer, int seq, const attn_shape_t *sh, const float *q, int n_tok, int64_t pos0,
                 const attn_kv_t *kv) {
    eval_t *e = ud;
    (void)seq;
    if (e->err || pos0 != 0 || n_tok != e->n_tok) return;
    const int H = sh->n_heads, d = sh->head_dim;
    /* prefill methods, at the sampled layers */
    if (e->sample[layer]) {
        double t = lc_now_s();
        if ((e->err = attn_prefill_dense(sh, q, n_tok, 0, kv, e->od, e->ld))) return;
        e->dense_secs += lc_now_s() - t;
        for (int i = 0; i < N_SET; i++) {
            if (settings[i].decode || !selected(e, i)) continue;
            attn_policy_t pol;
            setting_policy(&settings[i], &pol);
            attn_state_t *st = attn_state_create(sh, e->n_layers, &pol);
            if (!st) {
                e->err = LC_ENOMEM;
                return;
            }
            t = lc_now_s();
            e->err = attn_prefill(sh, st, layer, q, n_tok, 0, kv, e->o, e->l);
            double secs = lc_now_s() - t;
            const attn_stats_t *stt = attn_state_stats(st);
            double dens = stt->prefill_computed / stt->prefill_total;
            attn_state_destroy(st);
            if (e->err) return;
            double re, rm, p5;
            const size_t r0 = e->last > 0 && e->last < n_tok ? (size_t)(n_tok - e->last) : 0;
            compare(e, ((size_t)n_tok - r0) * H, d, e->od + r0 * H * d, e->ld + r0 * H, e->o + r0 * H * d,
                    e->l + r0 * H, &re, &rm, &p5);
            if (e->rows) write_rows(e, i, layer, H, d);
            acc_t *a = &e->acc[i];
            a->relerr_sum += re, a->recall_sum += rm, a->p05_sum += p5, a->secs += secs, a->dens_sum += dens;
            a->layers++;
            if (e->csv)
                fprintf(e->csv, "%d,prefill,\"%s\",%d,%.6g,%.6g,%.6g,%.6g,%.4f\n", n_tok, settings[i].name, layer, re,
                        rm, p5, dens, secs);
        }
    }
    /* decode methods, every layer, the last dec_rows positions */
    attn_kv_t v = *kv;
    for (int r = 0; r < e->dec_rows; r++) {
        int64_t p = n_tok - e->dec_rows + r;
        v.n_kv = p + 1;
        if ((e->err =
                 attn_decode_dense(sh, q + (size_t)p * H * d, &v, e->od + (size_t)r * H * d, e->ld + (size_t)r * H)))
            return;
    }
    for (int i = 0; i < N_SET; i++) {
        if (!settings[i].decode || !selected(e, i)) continue;
        for (int r = 0; r < e->dec_rows; r++) {
            int64_t p = n_tok - e->dec_rows + r;
            v.n_kv = p + 1;
            attn_state_t *st = e->dstate[(size_t)i * e->dec_rows + r];
            if ((e->err = attn_decode(sh, st, layer, q + (size_t)p * H * d, &v, e->o + (size_t)r * H * d,
                                      e->l + (size_t)r * H)))
                return;
        }
        double re, rm, p5;
        compare(e, (size_t)e->dec_rows * H, d, e->od, e->ld, e->o, e->l, &re, &rm, &p5);
        acc_t *a = &e->acc[i];
        a->relerr_sum += re, a->recall_sum += rm, a->p05_sum += p5, a->layers++;
        if (e->csv)
            fprintf(e->csv, "%d,decode,\"%s\",%d,%.6g,%.6g,%.6g,,\n", n_tok, settings[i].name, layer, re, rm, p5);
    }
}

/* ---- one prompt length ---------------------------------------------------------------------- */
static int eval_len(const model_t *m, const int32_t *ids, int n, const int *sample, int dec_rows, FILE *csv, FILE *rows,
                    int markdown, int last, const char *only) {
    const model_hparams_t *hp = model_hparams(m);
    const attn_shape_t sh = model_attn_shape(m);
    eval_t e = {.n_layers = hp->n_layers,
                .n_tok = n,
                .dec_rows = dec_rows,
                .last = last,
                .only = only,
                .sample = sample,
                .csv = csv,
                .rows = rows};
    size_t QD = (size_t)sh.n_heads * sh.head_dim;
    int rc = LC_ENOMEM;
    char err[256];
    model_exec_opts_t eo = {
        .device = "cpu", .max_batch_tokens = n, .max_seqs = 1, .kv_blocks = (n + 15) / 16 + 1, .kv_keep_sliding = 1};
    model_exec_t *ctx = model_exec_create(m, &eo, err, sizeof err);
    kv_config_t kc = ctx ? model_exec_kv_config(ctx) : (kv_config_t){0};
    kv_pool_t *kv = ctx ? kv_pool_create(&kc) : NULL;
    if (kv) model_exec_bind(ctx, kv);
    float *logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    e.od = malloc(sizeof(float) * n * QD), e.o = malloc(sizeof(float) * n * QD);
    e.ld = malloc(sizeof(float) * n * sh.n_heads), e.l = malloc(sizeof(float) * n * sh.n_heads);
    e.rec = malloc(sizeof(float) * n * sh.n_heads);
    e.dstate = calloc((size_t)N_SET * dec_rows, sizeof *e.dstate);
    kv_seq_t seq;
    kv_seq_init(&seq);
    if (!kv || !ctx || !logits || !e.od || !e.o || !e.ld || !e.l || !e.rec || !e.dstate) goto out;
    for (int i = 0; i < N_SET; i++) {
        if (!settings[i].decode || !selected(&e, i)) continue;
        attn_policy_t pol;
        setting_policy(&settings[i], &pol);
        for (int r = 0; r < dec_rows; r++)
            if (!(e.dstate[(size_t)i * dec_rows + r] = attn_state_create(&sh, hp->n_layers, &pol))) goto out;
    }
    if ((rc = kv_seq_reserve(kv, &seq, n)) || (rc = kv_seq_prepare_write(kv, &seq, 0, n))) goto out;
    model_exec_set_attn_hook(ctx, hook, &e);
    model_seq_t ms = {.tok0 = 0, .n_tok = n, .pos0 = 0, .kv = &seq, .logits_mode = MODEL_LOGITS_LAST, .logits = logits};
    model_batch_t b = {.n_tokens = n, .tokens = ids, .n_seqs = 1, .seqs = &ms};
    double t0 = lc_now_s();
    rc = model_exec_forward(ctx, kv, &b);
    if (!rc) rc = e.err;
    if (rc) goto out;
    int n_sample = 0;
    for (int l = 0; l < hp->n_layers; l++) n_sample += sample[l];
    fprintf(stderr, "attn-eval: %d tokens, %d sampled layers, %.1f s (dense attention %.2f s/layer)\n", n, n_sample,
            lc_now_s() - t0, e.dense_secs / (n_sample ? n_sample : 1));
    for (int i = 0; i < N_SET; i++) {
        const acc_t *a = &e.acc[i];
        if (!a->layers) continue;
        double dens = a->dens_sum / a->layers;
        if (settings[i].decode) { // the engine's figure: all layers, averaged over the decode rows
            dens = 0;
            for (int r = 0; r < dec_rows; r++) {
                const attn_stats_t *st = attn_state_stats(e.dstate[(size_t)i * dec_rows + r]);
                dens += st->decode_computed / st->decode_total / dec_rows;
            }
        }
        const char *fmt = markdown ? "| %d | %s | %.3f | %.4f | %.4f | %.4f | %s |\n"
                                   : "%6d  %-28s density %.3f  relerr %.4f  recall %.4f  p05 %.4f  %s\n";
        char msl[32] = "";
        if (!settings[i].decode) snprintf(msl, sizeof msl, "%.0f", 1e3 * a->secs / a->layers);
        printf(fmt, n, settings[i].name, dens, a->relerr_sum / a->layers, a->recall_sum / a->layers,
               a->p05_sum / a->layers, msl);
    }
    if (markdown)
        printf("| %d | dense | 1.000 | 0 | 1 | 1 | %.0f |\n", n, 1e3 * e.dense_secs / (n_sample ? n_sample : 1));
    fflush(stdout);
out:
    for (int i = 0; e.dstate && i < N_SET * dec_rows; i++) attn_state_destroy(e.dstate[i]);
    free(e.dstate);
    kv_seq_release(kv, &seq);
    kv_pool_destroy(kv);
    model_exec_destroy(ctx);
    free(logits), free(e.od), free(e.o), free(e.ld), free(e.l), free(e.rec);
    return rc;
}

/* ---- the command ---------------------------------------------------------------------------- */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    size_t k;
    while (b && (k = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += k;
        if (cap - n - 1 == 0) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    fclose(f);
    if (b) b[n] = 0;
    *len = n;
    return b;
}

static void eval_usage(FILE *f) {
    fprintf(f, "usage: lacuna attn-eval -m MODEL.gguf -f TEXT [-n 2048,4096,8192] [--layers LIST|all]\n"
               "                        [--decode-rows R] [--csv FILE] [--rows FILE] [--markdown] [--last N]\n"
               "                        [--only LIST] [--special]\n"
               "  -n LIST          prompt lengths in tokens (the text's first tokens)\n"
               "  --layers LIST    layers for the prefill methods (default every 4th and the last)\n"
               "  --decode-rows R  decode steps evaluated: the last R prompt positions (default 16)\n"
               "  --rows FILE      CSV of every prompt row's relative error and lowest recall over its heads,\n"
               "                   per sampled layer and prefill setting (which rows a method loses)\n"
               "  --last N         prefill metrics over the last N prompt rows only (a question at the end)\n"
               "  --only LIST      only the settings whose names start with one of LIST (comma-separated)\n"
               "  --special        special tokens in TEXT are tokens (a prompt rendered with its chat template)\n");
}

int cmd_attn_eval(int argc, char **argv) {
    const char *model_path = NULL, *file = NULL, *lens = "2048,4096,8192", *layers = NULL, *csv_path = NULL,
               *rows_path = NULL;
    int markdown = 0, dec_rows = 16, last = 0, special = 0;
    const char *only = NULL;
    enum { O_LAYERS = 256, O_ROWS, O_CSV, O_MD, O_LAST, O_ONLY, O_SPECIAL, O_ROWS_CSV };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"file", required_argument, 0, 'f'},
                                         {"layers", required_argument, 0, O_LAYERS},
                                         {"decode-rows", required_argument, 0, O_ROWS},
                                         {"csv", required_argument, 0, O_CSV},
                                         {"rows", required_argument, 0, O_ROWS_CSV},
                                         {"markdown", no_argument, 0, O_MD},
                                         {"last", required_argument, 0, O_LAST},
                                         {"only", required_argument, 0, O_ONLY},
                                         {"special", no_argument, 0, O_SPECIAL},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:f:n:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model_path = optarg; break;
        case 'f': file = optarg; break;
        case 'n': lens = optarg; break;
        case O_LAYERS: layers = optarg; break;
        case O_ROWS: dec_rows = atoi(optarg); break;
        case O_CSV: csv_path = optarg; break;
        case O_ROWS_CSV: rows_path = optarg; break;
        case O_MD: markdown = 1; break;
        case O_LAST: last = atoi(optarg); break;
        case O_ONLY: only = optarg; break;
        case O_SPECIAL: special = 1; break;
        case 'h': eval_usage(stdout); return 0;
        default: eval_usage(stderr); return 2;
        }
    }
    if (!model_path || !file || dec_rows < 1 || optind != argc) {
        eval_usage(stderr);
        return 2;
    }
    char err[512];
    size_t len = 0;
    char *text = slurp(file, &len);
    if (!text) {
        fprintf(stderr, "lacuna attn-eval: cannot read %s\n", file);
        return 1;
    }
    model_t *m = model_load(model_path, err, sizeof err);
    if (!m) {
        fprintf(stderr, "lacuna attn-eval: %s\n", err);
        free(text);
        return 1;
    }
    const model_hparams_t *hp = model_hparams(m);
    int rc = 1;
    tok_ids_t ids = {0};
    int *sample = calloc((size_t)hp->n_layers, sizeof *sample);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL, *rows = rows_path ? fopen(rows_path, "w") : NULL;
    if (!sample || (csv_path && !csv) || (rows_path && !rows)) goto out;
    if (csv) fprintf(csv, "tokens,kind,setting,layer,relerr,recall_mean,recall_p05,density,secs\n");
    if (rows) fprintf(rows, "setting,layer,row,relerr,recall_min\n");
    if (!layers) {
        for (int l = 0; l < hp->n_layers; l += 4) sample[l] = 1;
        sample[hp->n_layers - 1] = 1;
    } else if (strcmp(layers, "all") == 0) {
        for (int l = 0; l < hp->n_layers; l++) sample[l] = 1;
    } else {
        char *dup = strdup(layers), *save = NULL;
        for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save))
            if (atoi(t) >= 0 && atoi(t) < hp->n_layers) sample[atoi(t)] = 1;
        free(dup);
    }
    if (tok_encode(model_tok(m), text, len, tok_add_bos(model_tok(m)), special, &ids)) goto out;
    fprintf(stderr, "attn-eval: %s: %zu tokens of text\n", file, ids.n);
    if (markdown) {
        printf("| tokens | method | density | rel. error | mass recall | recall p05 | ms/layer |\n");
        printf("|---:|---|---:|---:|---:|---:|---:|\n");
    }
    char *dup = strdup(lens), *save = NULL;
    rc = 0;
    for (char *t = strtok_r(dup, ",", &save); t && !rc; t = strtok_r(NULL, ",", &save)) {
        int n = atoi(t);
        if (n < dec_rows + 1 || (size_t)n > ids.n || n > hp->n_ctx_train) {
            fprintf(stderr, "lacuna attn-eval: %d tokens: the text has %zu, the model %d\n", n, ids.n, hp->n_ctx_train);
            rc = LC_EINVAL;
            break;
        }
        if ((rc = eval_len(m, ids.ids, n, sample, dec_rows, csv, rows, markdown, last, only)))
            fprintf(stderr, "lacuna attn-eval: %s\n", lc_strerror(rc));
    }
    free(dup);
out:
    if (csv) fclose(csv);
    if (rows) fclose(rows);
    free(sample);
    tok_ids_free(&ids);
    model_free(m);
    free(text);
    return rc ? 1 : 0;
}
